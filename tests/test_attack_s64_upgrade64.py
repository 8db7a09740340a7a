"""Upgrade journey (helper "upgrade64"): a work directory written by an older leap, gone on with today's.

Checked by hand against real checkouts of 44944fc (2026-12-06 00:15) and c72952e (2026-12-04 10:00) on demo
kitchens of 3 videos x 6 and x 16 segments: extract, generate-programs (offline, and an OpenAI-compatible server on
127.0.0.1), validate-programs, build-shards, train --stop-after, evaluate with the old leap, each killed (SIGKILL)
mid-extract and mid-generate too, then every stage again with today's leap. What it found wrong: c72952e built
kitchen version 6 (5ed13fa made it 7, other frames for the same CSVs); today's demo-data rebuilt that kitchen
saying only 'built in 2.8s', and then extract kept the records (keyed by the annotations, which did not change;
only the camera of odometry records made again) and build-shards the shards ('built before with these settings
and inputs'), all made from the old videos. A test cannot check out old code: the old kitchen is today's with the
marker an earlier KITCHEN_VERSION wrote.
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


def test_leap_demo_over_an_older_leaps_kitchen_starts_over_and_its_rebuild_says_nothing_stale(monkeypatch, capsys,
                                                                                               tmp_path, caplog):
    """``leap demo`` meets the older kitchen first (check_demo): it warns, removes the records made from it and runs
    demo-data with --force; that rebuild must not then tell of records kept (there are none)."""
    from leap_cli.demo import DemoConfig, check_demo
    from leap_cli.synth.kitchen import KitchenConfig, build_kitchen

    work = tmp_path / "work"
    code, text, err = leap_main(monkeypatch, capsys, "demo-data", "--workdir", str(work), "--videos", "3",
                                "--segments", "2", "--seed", "4")
    assert code == 0, text + err
    _as_an_older_leap_built_it(work / "kitchen")
    records = work / "descriptors" / "train.jsonl"
    records.parent.mkdir()
    records.write_text('{"narration_id": "P01_01_0"}\n')  # (what extract made from the old kitchen)
    cfg = check_demo(DemoConfig(workdir=work, videos=3, segments=2, seed=4, train_overrides=("data.batch_size=1",)))
    assert cfg.force and not records.exists()
    assert "built by another leap" in caplog.text
    from leap_cli.synth.kitchen import KITCHEN_VERSION  # (both versions named)
    assert f"(kitchen version {KITCHEN_VERSION - 1}; this leap's is {KITCHEN_VERSION})" in caplog.text
    summary = build_kitchen(work / "kitchen", KitchenConfig(videos=3, seed=4, segments_per_video=2), force=cfg.force)
    assert not summary.skipped and summary.replaced_version is None
