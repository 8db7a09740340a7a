"""Synthetic kitchens built once per test session and copied into the tests that read them.

A kitchen costs about 5 s of CPU to build (10-15 s under the suite's load), and some forty modules build one in
their fixtures, many with the same options. Here each distinct kitchen is built once per test session, under a
lock in a folder the pytest-xdist workers share (as conftest's ``demo``), and each caller gets its own copy (the
tests may change their kitchen's files). A copy is what a build into its folder would have made: no file of a
kitchen names its folder except the marker's summary, which is rewritten to name the copy.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parents[1]


def kitchen_copy(tmp_path_factory, out: Path, *demo_data_args) -> Path:
    """``out`` holding the kitchen that ``leap demo-data --out OUT <demo_data_args>`` makes (``out`` is made; it may
    exist, empty). Built by that command once per session per distinct arguments."""
    args = [str(a) for a in demo_data_args]

    def build(kitchen: Path) -> None:
        r = subprocess.run([sys.executable, "-m", "leap_cli", "demo-data", "--out", str(kitchen), *args],
                           capture_output=True, text=True, cwd=ROOT, timeout=600,
                           env={**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "COLUMNS": "200"})
        if r.returncode != 0:
            pytest.fail(f"leap demo-data {' '.join(args)} failed ({r.returncode}):\n{r.stdout[-3000:]}{r.stderr[-3000:]}",
                        pytrace=False)

    return _copy(tmp_path_factory, Path(out), {"demo-data": args}, build)


def config_kitchen_copy(tmp_path_factory, out: Path, cfg, *, truncated: bool = True) -> Path:
    """``out`` holding the kitchen ``build_kitchen(out, cfg)`` makes (a KitchenConfig; ``truncated=False``: with
    ``KitchenConfig.truncated_video`` patched to cut no video short). Built in this process once per session."""
    from leap_cli.synth.kitchen import KitchenConfig, build_kitchen

    def build(kitchen: Path) -> None:
        with pytest.MonkeyPatch.context() as mp:
            if not truncated:
                mp.setattr(KitchenConfig, "truncated_video", lambda self: None)
            build_kitchen(kitchen, cfg)

    return _copy(tmp_path_factory, Path(out), {"config": asdict(cfg), "truncated": truncated}, build)


def _copy(tmp_path_factory, out: Path, what: dict, build: Callable[[Path], None]) -> Path:
    from leap_cli.io import atomic_write_json
    from leap_cli.synth.kitchen import KITCHEN_VERSION, MARKER

    key = hashlib.sha256(json.dumps({**what, "version": KITCHEN_VERSION}, sort_keys=True).encode()).hexdigest()[:16]
    shared = os.environ.get("PYTEST_XDIST_WORKER") is not None  # (the workers of one session share basetemp's parent)
    cache = (tmp_path_factory.getbasetemp().parent if shared else tmp_path_factory.getbasetemp()) / "kitchens"
    cache.mkdir(exist_ok=True)
    kitchen, done = cache / key / "kitchen", cache / key / "done"
    with open(cache / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # (held by the worker building it: the others wait here)
        if not done.exists():
            if kitchen.exists():  # (a build that failed before)
                shutil.rmtree(kitchen)
            kitchen.parent.mkdir(exist_ok=True)
            build(kitchen)
            done.write_text(json.dumps(what) + "\n")
    shutil.copytree(kitchen, out, dirs_exist_ok=True)
    marker = json.loads((out / MARKER).read_text(encoding="utf-8"))
    marker["summary"]["out"] = str(out)
    atomic_write_json(out / MARKER, marker)
    return out
