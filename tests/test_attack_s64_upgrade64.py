"""Upgrade journey (helper "upgrade64"): a work directory written by an older leap, gone on with today's.

Checked by hand against real checkouts of 44944fc (2026-12-06 00:15) and c72952e (2026-12-04 10:00) on demo
kitchens of 3 videos x 6 and x 16 segments: extract, generate-programs (offline, and an OpenAI-compatible server on
127.0.0.1), validate-programs, build-shards, train --stop-after, evaluate with the old leap, each killed (SIGKILL)
mid-extract and mid-generate too, then every stage again with today's leap. A test cannot check out old code: the
old files are built here from today's by the documented differences (a kitchen marker of an earlier
KITCHEN_VERSION, camera records of version 1).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from tests.procs import leap_main


def _kitchen(monkeypatch, capsys, out: Path) -> None:
    code, text, err = leap_main(monkeypatch, capsys, "demo-data", "--out", str(out), "--videos", "1",
                                "--segments", "2", "--seed", "4")
    assert code == 0, text + err


def _as_an_older_leap_built_it(out: Path) -> int:
    """The kitchen's marker as a leap of the previous KITCHEN_VERSION wrote it (its hash covers the version)."""
    from leap_cli.io import stable_hash
    from leap_cli.synth.kitchen import KITCHEN_VERSION, MARKER, KitchenConfig

    marker = json.loads((out / MARKER).read_text())
    cfg = KitchenConfig(**marker["config"])
    assert marker["hash"] == cfg.hash()  # (the documented hash: config and version)
    old = KITCHEN_VERSION - 1
    marker.update(version=old, hash=stable_hash({"config": asdict(cfg), "version": old}))
    (out / MARKER).write_text(json.dumps(marker))
    return old


def test_demo_data_rebuilding_an_older_leaps_kitchen_says_the_work_made_from_it_is_kept(monkeypatch, capsys, tmp_path):
    """demo-data over a kitchen an older leap built (another KITCHEN_VERSION, same options) rebuilds it, as it
    should; but extract keeps its records (keyed by the annotations, which need not change), build-shards its shards
    ('built before with these settings and inputs'): the rebuild must say so and what to run. It said only
    'built in 2.8s'."""
    from leap_cli.synth.kitchen import KITCHEN_VERSION

    out = tmp_path / "work" / "kitchen"
    _kitchen(monkeypatch, capsys, out)
    old = _as_an_older_leap_built_it(out)
    code, text, err = leap_main(monkeypatch, capsys, "demo-data", "--out", str(out), "--videos", "1",
                                "--segments", "2", "--seed", "4")
    said = " ".join((text + err).split())
    assert code == 0, said
    assert f"kitchen version {old}" in said and f"{KITCHEN_VERSION}" in said, said
    assert f"delete {tmp_path / 'work' / 'descriptors'}" not in said  # (--out given: the work directory is not known)
    assert "descriptors" in said and "--force" in said and "extract" in said, said
    # the same options again: nothing rebuilt, nothing said
    code, text, err = leap_main(monkeypatch, capsys, "demo-data", "--out", str(out), "--videos", "1",
                                "--segments", "2", "--seed", "4")
    assert code == 0 and "kitchen version" not in text + err, text + err
