"""tests/kitchens.py: a kitchen copied from the session's build is the one `leap demo-data` makes in its folder."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.kitchens import kitchen_copy

ROOT = Path(__file__).resolve().parents[1]
ARGS = ("--videos", "1", "--segments", "2", "--seed", "3")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_copied_kitchen_is_the_one_demo_data_builds_in_its_folder_and_each_copy_is_its_own(tmp_path,
                                                                                           tmp_path_factory):
    from leap_cli.synth.kitchen import LOCK, MARKER

    fresh = tmp_path / "fresh" / "kitchen"
    r = subprocess.run([sys.executable, "-m", "leap_cli", "demo-data", "--out", str(fresh), *ARGS], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    first = kitchen_copy(tmp_path_factory, tmp_path / "a" / "kitchen", *ARGS)
    (first / "annotations" / "EPIC_100_train.csv").write_text("changed\n")  # (a test breaking its copy)
    second = kitchen_copy(tmp_path_factory, tmp_path / "b" / "kitchen", *ARGS)

    want, got = _files(fresh), _files(second)
    assert sorted(got) == sorted(want)
    assert [n for n in want if n not in (MARKER, LOCK) and got[n] != want[n]] == []
    marker, built = json.loads(got[MARKER]), json.loads(want[MARKER])
    assert marker["summary"]["out"] == str(second)  # (its own folder, not the session's build)
    for m in (marker, built):
        m["summary"].pop("out"), m["summary"].pop("seconds")
    assert marker == built
