"""DataLoader workers killed for real (SIGKILL, SIGBUS, SIGSEGV) under `leap train` and `leap evaluate` on the small
synthetic kitchen: as their loader starts, mid-epoch, two at once, while a checkpoint is written, under gradient
accumulation, during validation, then `--resume`; and the main process stopped (SIGINT, SIGTERM) while its workers
run. Each death must be one line, exit 2, within seconds of the kill, with no worker left running and no
multiprocessing folder (pymp-*) left in TMPDIR.

Found: a worker that died before torch had registered the workers' pids (its iterator forks them one by one, then
tells its SIGCHLD check their pids) was heard by no one: its SIGCHLD came when the check knew no worker, and the
main process waited LOADER_TIMEOUT (900 s) for its batch, with nothing said (train's first epoch, each validation,
evaluate; about one early kill in five here). Fixed in ``Guarded``: the workers are looked at once their pids are
registered."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_attack_kill_resume import leap, workdir_from

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
       "NO_COLOR": "1", "COLUMNS": "200"}
ENV.pop("LEAP_PROGRESS_EVERY", None)
TRAIN = ("--config", "tiny-synthetic-short", "--name", "r", "--set", "data.batch_size=2", "--set", "train.log_every=1",
         "--set", "data.num_workers=2")
NO_VAL = ("--set", 'data.val=""')
PROMPT = 5.0  # seconds from a kill to the exit, at most (the main process waits DEATH_SHOWS, 2 s, at worst)


@pytest.fixture(scope="module")
def kitchen(tmp_path_factory):
    """A 2-video synthetic kitchen (6 training clips, 3 validation clips), sharded, with a run of one epoch."""
    wd = tmp_path_factory.mktemp("kitchen")
    steps = [("demo-data", "--videos", 2, "--segments", 6)]
    for split in ("train", "val"):
        steps += [("extract", "--split", split, "--workers", 2),
                  ("generate-programs", "--split", split, "--backend", "offline"),
                  ("build-shards", "--split", split)]
    steps.append(("train", *TRAIN[:2], "--name", "ref", *TRAIN[4:6], "--set", "train.epochs=1", *NO_VAL))
    env = {**ENV, "TMPDIR": str(tmp_path_factory.mktemp("tmp"))}
    for stage, *extra in steps:
        r = subprocess.run(leap(stage, "--workdir", wd, *extra), capture_output=True, text=True, env=env, cwd=ROOT,
                           timeout=120)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return wd


@pytest.fixture
def tmp():
    """A TMPDIR for one run, short enough for the workers' sockets (leap moves a deeper one's files to /tmp)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="d67-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _workers(pid: int) -> list[int]:
    """The forked children of ``pid`` (its DataLoader workers; not git, not multiprocessing's resource tracker)."""
    try:
        me = Path(f"/proc/{pid}/cmdline").read_bytes()
        kids = [int(k) for k in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    out = []
    for k in kids:
        try:
            if Path(f"/proc/{k}/cmdline").read_bytes() == me:
                out.append(k)
        except OSError:
            pass
    return out


def _group(pgid: int) -> list[int]:
    """The live processes of the process group ``pgid`` (a run started in its own session)."""
    out = []
    for q in Path("/proc").iterdir():
        if q.name.isdigit():
            try:
                stat = (q / "stat").read_text()
                fields = stat[stat.rindex(")") + 2:].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    out.append(int(q.name))
            except (OSError, ValueError):
                pass
    return out


def _run(cmd, tmp: Path, pick, timeout: float = 20.0) -> dict:
    """Run ``cmd`` in its own session with TMPDIR ``tmp``; ``pick(workers, pid)`` returns the (pid, signal)s to send
    once, or None. The exit status (None: still running at ``timeout``), stderr, what was sent, the seconds from the
    sending to the exit, the processes of the run left running and what the run left in ``tmp``."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**ENV, "TMPDIR": str(tmp)},
                         cwd=ROOT, start_new_session=True)
    sent, at, t = None, None, time.monotonic()
    try:
        while p.poll() is None and time.monotonic() - t < timeout:
            if sent is None:
                sent = pick(_workers(p.pid), p.pid)
                if sent:
                    for pid, sig in sent:
                        os.kill(pid, sig)
                    at = time.monotonic()
            time.sleep(0.002)
        p.wait(max(0.1, timeout - (time.monotonic() - t)))
    except subprocess.TimeoutExpired:
        pass
    finally:
        rc, end = p.poll(), time.monotonic()
        time.sleep(0.2)  # (a worker killed with its parent: PR_SET_PDEATHSIG)
        left = _group(p.pid)
        if p.poll() is None or left:
            os.killpg(p.pid, signal.SIGKILL)
        err = p.communicate()[1].decode(errors="replace")
    return {"rc": rc, "err": err, "sent": sent, "took": None if at is None else end - at, "ended": end, "left": left,
            "temps": sorted(q.name for q in tmp.iterdir() if q.name.startswith(("pymp-", "torch_shm", "torch-shm")))}


def _said(err: str) -> list[str]:
    """stderr less the log's lines and torch's own line from a worker's SIGBUS/SIGSEGV handler (written with its
    string's NUL)."""
    return [x for x in err.replace("\0", "").splitlines()
            if x.strip() and not x.startswith(("WARNING ", "ERROR: Unexpected"))]


def _died(r: dict, what: str = "") -> None:
    """``r`` is one death said as it should be: one line, exit 2, promptly, nothing left behind."""
    said = _said(r["err"])
    assert r["rc"] is not None, f"{what}: still running after the kill: " + r["err"][-1500:]
    assert r["rc"] == 2 and "Traceback" not in r["err"] and len(said) == 1, f"{what}: {r['rc']} " + r["err"][-1500:]
    assert "DataLoader worker" in said[0] and "killed by" in said[0], f"{what}: " + said[0]
    assert r["took"] < PROMPT, f"{what}: exited {r['took']:.1f} s after the kill"
    assert not r["left"], f"{what}: processes left running: {r['left']}"
    assert not r["temps"], f"{what}: left in TMPDIR: {r['temps']}"


# The worker killed, and seen dead, right before torch registers the workers' pids for its SIGCHLD check (the
# moment a fork of the next worker takes on a loaded machine), at the loader's start number NTH of the process; the
# kill's time goes to the file KILLED.
KILLED_BEFORE_REGISTERED = """
import os, signal, sys, time
from torch.utils.data._utils import signal_handling
register = signal_handling._set_worker_pids
calls = []
def killed_first(key, pids):
    calls.append(key)
    if len(calls) == {nth}:
        with open({killed!r}, "w") as f:
            f.write(repr(time.monotonic()))
        os.kill(pids[0], signal.{sig})
        end = time.monotonic() + 5
        while time.monotonic() < end and open(f"/proc/{{pids[0]}}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
            time.sleep(0.01)
        time.sleep(0.2)  # (its SIGCHLD handled)
    register(key, pids)
signal_handling._set_worker_pids = killed_first
from leap_cli.cli import main
sys.argv = ["leap", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("stage,sig", [("evaluate", "SIGKILL"), ("train", "SIGBUS"), ("validation", "SIGSEGV")])
def test_a_worker_dead_before_torch_registered_its_pid_is_said_at_once(kitchen, tmp_path, tmp, stage, sig):
    """Was: no line, and the main process waited for the dead worker's batch LOADER_TIMEOUT (900 s)."""
    if stage == "evaluate":
        args = ("evaluate", "--workdir", kitchen, "--run", kitchen / "runs" / "ref", "--split", "train",
                "--checkpoint", "last", "--batch-size", "1", "--workers", "2", "--out", tmp_path / "out")
    else:
        wd = workdir_from(kitchen, tmp_path / "wd", "shards", "programs")
        args = ("train", "--workdir", wd, *TRAIN, "--set", "train.epochs=2",
                *(NO_VAL if stage == "train" else ("--set", "train.eval_every_epochs=1", "--set", "data.eval_batch_size=1",
                                                   "--set", f"data.val={wd / 'shards' / 'train'}")))
        # (validation over the 6 training clips, one a batch: the live worker waits for its next batch's index;
        # over the 3 validation clips it ended, and that child's exit made the SIGCHLD check find the dead one)
    killed = tmp_path / "killed"
    code = KILLED_BEFORE_REGISTERED.format(sig=sig, nth=2 if stage == "validation" else 1, killed=str(killed))
    r = _run([sys.executable, "-c", code, *map(str, args)], tmp, lambda kids, pid: None, timeout=30)
    r["took"] = r["ended"] - float(killed.read_text())
    _died(r, stage)
    assert f"was killed by {sig}" in _said(r["err"])[0], r["err"][-1500:]


# At the NTH step boundary (GracefulStop's look): a training worker killed, then a SIGTERM to the process, the two a
# moment apart (a job's OOM kill and its scheduler's stop; torchrun's SIGTERM to a rank whose worker it brought down)
KILLED_WITH_A_STOP = """
import multiprocessing, os, signal, sys, time
import leap_cli.train.loop as loop
look = loop.GracefulStop.__call__
calls = []
def stop_with_a_death(self):
    calls.append(1)
    if len(calls) == {nth}:
        worker = multiprocessing.active_children()[0]
        with open({killed!r}, "w") as f:
            f.write(repr(time.monotonic()))
        os.kill(worker.pid, signal.SIGKILL)
        time.sleep(0.3)  # (its SIGCHLD handled, no batch awaited)
        os.kill(os.getpid(), signal.{sig})
        time.sleep(0.1)
    return look(self)
loop.GracefulStop.__call__ = stop_with_a_death
from leap_cli.cli import main
sys.argv = ["leap", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("sig,nth,step", [("SIGTERM", 3, 2), ("SIGINT", 5, 3)])  # (mid-epoch; at an epoch's end)
def test_a_worker_killed_as_the_run_stops_at_a_signal_lets_it_exit(kitchen, tmp_path, tmp, sig, nth, step):
    """Was: the run stopped at the step boundary (last.pt saved), then its exit waited for ever for the live worker
    (multiprocessing's exit joins its children; the worker ignores SIGTERM)."""
    wd = workdir_from(kitchen, tmp_path / "wd", "shards", "programs")
    killed = tmp_path / "killed"
    code = KILLED_WITH_A_STOP.format(sig=sig, nth=nth, killed=str(killed))
    r = _run([sys.executable, "-c", code, "train", "--workdir", wd, *TRAIN, "--set", "train.epochs=4", *NO_VAL], tmp,
             lambda kids, pid: None, timeout=30)
    assert r["rc"] is not None, "still running after the kill and the stop: " + r["err"][-1500:]
    took = r["ended"] - float(killed.read_text())
    assert r["rc"] == {"SIGTERM": 143, "SIGINT": 130}[sig] and "Traceback" not in r["err"], r["err"][-1500:]
    assert took < PROMPT and not r["left"] and not r["temps"], (took, r["left"], r["temps"])
    import torch

    ck = torch.load(wd / "runs" / "r" / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert ck["step"] == step, ck["step"]  # (the stop's step boundary)


# A training worker killed as the validation loader forks its first worker, its SIGCHLD heard in Python code run by
# the fork (an at-fork callback: logging's lock release is one; here one that waits for the SIGCHLD)
KILLED_IN_A_FORK = """
import multiprocessing, os, signal, sys, time
from leap_cli.shards import dataset
done = []
def after_fork():
    if dataset._DIED["waiting"] and len(multiprocessing.active_children()) >= 2 and not done:
        done.append(1)
        os.kill(multiprocessing.active_children()[0].pid, signal.SIGKILL)
        end = time.monotonic() + 1
        while time.monotonic() < end:
            time.sleep(0.01)
os.register_at_fork(after_in_parent=after_fork)
from leap_cli.cli import main
sys.argv = ["leap", *sys.argv[1:]]
main()
"""


def test_a_worker_death_heard_in_an_at_fork_callback_is_one_line(kitchen, tmp_path, tmp):
    """Was: "Exception ignored in: <function _releaseLock ...>" and torch's RuntimeError's traceback above the line
    (the SIGCHLD handler raised where Python cannot raise: seen under a SIGINT during validation's start)."""
    wd = workdir_from(kitchen, tmp_path / "wd", "shards", "programs")
    r = _run([sys.executable, "-c", KILLED_IN_A_FORK, "train", "--workdir", wd, *TRAIN, "--set", "train.epochs=2",
              "--set", "train.eval_every_epochs=1"], tmp, lambda kids, pid: None, timeout=30)
    said = _said(r["err"])
    assert r["rc"] == 2 and "Traceback" not in r["err"] and "Exception ignored" not in r["err"], r["err"][-1500:]
    assert len(said) == 1 and "killed by" in said[0], r["err"][-1500:]
    assert not r["left"] and not r["temps"], (r["left"], r["temps"])
