"""Worker processes that die (commit 33ec4c1): DataLoader workers killed during train's validation and mid-epoch
under gradient accumulation, normal runs that must never trip the new SIGCHLD handler (1 and 3 workers, validation
workers ending each epoch, two runs in one process), and pool_results with a slow task."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from leap_cli.common import pool_results, pool_worker_ready, start_pool_worker
from tests.kitchens import kitchen_copy
from tests.test_attack_kill_resume import leap, workdir_from

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
       "NO_COLOR": "1", "COLUMNS": "200"}
ENV.pop("LEAP_PROGRESS_EVERY", None)
TRAIN = ("--config", "tiny-synthetic-short", "--name", "r", "--set", "data.batch_size=2", "--set", "train.log_every=1")


@pytest.fixture(scope="module")
def kitchen(tmp_path_factory):
    """A 2-video synthetic kitchen with train and val extracted, programmed (offline) and sharded."""
    wd = tmp_path_factory.mktemp("kitchen")
    # (the leap processes' temporary files in pytest's folder: a DataLoader worker killed here leaves its
    # multiprocessing folder, a socket in it, behind)
    ENV["TMPDIR"] = str(tmp_path_factory.mktemp("tmp"))
    kitchen_copy(tmp_path_factory, wd / "kitchen", "--videos", 2, "--segments", 6)
    steps = []
    for split in ("train", "val"):
        steps += [("extract", "--split", split, "--workers", 2),
                  ("generate-programs", "--split", split, "--backend", "offline"),
                  ("build-shards", "--split", split)]
    for stage, *extra in steps:
        r = subprocess.run(leap(stage, "--workdir", wd, *extra), capture_output=True, text=True, env=ENV, cwd=ROOT,
                           timeout=120)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return wd


def _kids(pid: int) -> list[int]:
    try:
        ks = [int(k) for k in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    out = []
    for k in ks:
        try:
            if b"resource_tracker" not in Path(f"/proc/{k}/cmdline").read_bytes():
                out.append(k)
        except OSError:
            pass
    return out


def _run_and_kill(cmd, pick, sig=signal.SIGKILL, timeout=30.0):
    """Run ``cmd``; send ``sig`` once to the pid ``pick(kids)`` returns: (exit status or None for a hang, stderr,
    the pid killed)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, cwd=ROOT,
                         start_new_session=True)
    killed = None
    t = time.monotonic()
    try:
        while p.poll() is None and time.monotonic() - t < timeout:
            if killed is None:
                k = pick(_kids(p.pid))
                if k:
                    os.kill(k, sig)
                    killed = k
            time.sleep(0.002)
        try:
            _, err = p.communicate(timeout=max(1.0, timeout - (time.monotonic() - t)))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            _, err = p.communicate()
            return None, err.decode(errors="replace"), killed
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
    return p.returncode, err.decode(errors="replace"), killed


def _said(err: str) -> list[str]:
    return [x for x in err.splitlines() if x.strip() and not x.startswith("WARNING ") and not x.startswith("ERROR: ")]


def _metrics(wd: Path) -> list[dict]:
    return [json.loads(x) for x in (wd / "runs" / "r" / "metrics.jsonl").read_text().splitlines() if x.strip()]


def test_validation_worker_killed_during_train_keeps_the_epochs_steps(kitchen, tmp_path):
    """Was wrong: a validation DataLoader worker killed during train's validation stopped train in one line but no
    last.pt was saved (the epoch's steps were lost; docs: train saves last.pt at the step where it stopped)."""
    wd = workdir_from(kitchen, tmp_path / "wd", "shards", "programs")
    seen: dict = {}

    def pick(kids):
        if "train" not in seen:
            if len(kids) >= 2:  # the persistent training workers
                seen["train"] = set(kids)
            return None
        new = [k for k in kids if k not in seen["train"]]  # a validation worker
        return new[0] if new else None

    rc, err, killed = _run_and_kill(leap("train", "--workdir", wd, *TRAIN, "--set", "train.epochs=4",
                                         "--set", "train.eval_every_epochs=1", "--set", "data.num_workers=2"), pick)
    assert rc is not None, "train hung: " + err[-1500:]
    said = _said(err)
    assert rc == 2 and "Traceback" not in err and len(said) == 1 and f"pid {killed}" in said[0], err[-1500:]
    assert (wd / "runs" / "r" / "checkpoints" / "last.pt").exists(), "the epoch's steps were lost"


def test_training_worker_killed_at_an_epochs_start_with_accumulation_then_resume_finishes_in_order(kitchen, tmp_path):
    """accum_steps 2 (one step per epoch here): a worker killed as an epoch ends/starts: one line, exit 2, no hang;
    --resume goes on from the last.pt saved at a step boundary and the run ends with each step logged once.

    Was wrong: a persistent training worker killed at an epoch's start: torch's iter(loader) (_reset) raised
    'DataLoader worker exited unexpectedly' outside Guarded's try (a traceback, the other workers not killed), or
    waited for the dead worker for ever: train hung."""
    wd = workdir_from(kitchen, tmp_path / "wd", "shards", "programs")
    args = (*TRAIN, "--set", "train.epochs=6", "--set", "optim.accum_steps=2", "--set", "data.val=null",
            "--set", "data.num_workers=2")
    metrics = wd / "runs" / "r" / "metrics.jsonl"

    def pick(kids):
        if metrics.exists() and metrics.read_bytes().count(b"\n") >= 1 and len(kids) >= 2:
            return kids[0]
        return None

    rc, err, killed = _run_and_kill(leap("train", "--workdir", wd, *args), pick, timeout=40)
    assert rc is not None, "train hung: " + err[-1500:]
    if rc == 0:
        pytest.skip("the run ended before the kill")
    said = _said(err)
    assert rc == 2 and "Traceback" not in err and len(said) == 1 and "killed by SIGKILL" in said[0], err[-1500:]
    import torch

    ck = torch.load(wd / "runs" / "r" / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert ck["data_position"]["batches"] % 2 == 0  # (a step boundary: never half a step's micro-batches)
    r = subprocess.run(leap("train", "--workdir", wd, *args, "--resume"), capture_output=True, text=True, env=ENV,
                       cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr[-1500:]
    recs = [m for m in _metrics(wd) if m["split"] == "train"]
    steps = [m["step"] for m in recs]
    assert steps == list(range(1, len(steps) + 1)), steps
    epochs = [m["epoch"] for m in recs]
    assert epochs == sorted(epochs) and epochs[-1] == 5, epochs
    final = torch.load(wd / "runs" / "r" / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert final["step"] == steps[-1] and final["epoch"] == 6


@pytest.mark.parametrize("workers", [3])
def test_normal_runs_with_validation_workers_each_epoch_never_trip_the_handler(kitchen, tmp_path, workers):
    wd = workdir_from(kitchen, tmp_path / "wd", "shards", "programs")
    r = subprocess.run(leap("train", "--workdir", wd, *TRAIN, "--set", "train.epochs=2",
                            "--set", "train.eval_every_epochs=1", "--set", f"data.num_workers={workers}"),
                       capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=90)
    assert r.returncode == 0 and "worker" not in r.stderr.lower(), r.stderr[-1500:]
    assert [m["epoch"] for m in _metrics(wd) if m["split"] == "val"] == [0, 1]


def test_two_runs_in_one_process_with_a_non_loader_child_ending_mid_run(kitchen, tmp_path):
    """leap ablate's pattern: loop.main twice in one process; a child that is no DataLoader worker (a checker
    subprocess) exits with an error while a loader runs: never a false 'worker died'."""
    wd = workdir_from(kitchen, tmp_path / "wd", "shards", "programs")
    code = f"""
import subprocess, sys
from leap_cli.train.config import load_config
from leap_cli.train.loop import main
import leap_cli.train.loop as loop
cfg = load_config("tiny-synthetic-short", ["train.epochs=2", "data.batch_size=2", "train.eval_every_epochs=1",
                                           "data.num_workers=2"])
kids = []
def on_step(rec):
    kids.append(subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"]))
for name in ("a", "b"):
    res = main(cfg, workdir={str(wd)!r}, name=name, on_step=on_step)
    print(name, res.steps, res.epochs)
for k in kids:
    k.wait()
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=90)
    assert r.returncode == 0 and "worker" not in r.stderr.lower(), r.stderr[-2000:]
    lines = r.stdout.split("\n")
    a = [x for x in lines if x.startswith("a ")]
    b = [x for x in lines if x.startswith("b ")]
    assert a and b and a[0].split()[1:] == b[0].split()[1:] and a[0].split()[2] == "2", r.stdout


def _task(x: float) -> float:
    pool_worker_ready()
    time.sleep(x)
    return x


def test_a_slow_pool_task_is_not_a_dead_worker():
    pool = multiprocessing.get_context("fork").Pool(2, initializer=start_pool_worker, initargs=(int, 0))
    try:
        assert sorted(pool_results(pool, pool.imap_unordered(_task, [2.6, 0.1, 0.1]), poll=0.5)) == [0.1, 0.1, 2.6]
    finally:
        pool.terminate()
        pool.join()
