"""DataLoader workers killed for real (SIGKILL, SIGBUS, SIGSEGV) under `leap train` and `leap evaluate` on a small
synthetic kitchen: as their loader starts, mid-epoch, two at once, under gradient accumulation, during validation,
then `--resume`; and the main process stopped (SIGINT, SIGTERM) as a worker dies. Each death must be one line, exit 2,
within seconds of the kill, with no process of the run left and no multiprocessing folder (pymp-*) left in TMPDIR.

Found (all fixed in leap_cli/shards/dataset.py):
- a worker that died before torch had registered the workers' pids (its iterator forks them one by one, then tells
  its SIGCHLD check their pids) was heard by no one: the main process waited LOADER_TIMEOUT (900 s) for its batch,
  without a word (train's first epoch, each validation, evaluate; about one early kill in five here). ``Guarded``
  now looks at the workers once their pids are registered;
- a worker killed as the run stopped at a signal's step boundary (its death kept, no batch awaited): last.pt saved,
  then the exit waited for ever for the live worker (which ignores SIGTERM): the kept error's traceback held the
  frames, and so the loaders' iterators, which torch never shut down. The death is kept without its traceback;
- a death whose SIGCHLD came in an at-fork callback (logging's, as the validation loader forks) printed "Exception
  ignored in ..." and torch's error's traceback above the line.
Fixed in cli after the helper's strict xfail: evaluate's stop (SIGINT; SIGTERM, which cli makes a KeyboardInterrupt)
heard in an at-fork callback as the workers are forked was dropped by Python as unraisable, and evaluate went on and
exited 0 (cli now sends a dropped stop again).
Seen once, not explained and not seen again in 9 runs: the validation case of the first test (train.epochs=1) said
its line and had not exited 30 s later. Seen and left (not leap's): torch's own line from a worker's SIGBUS/SIGSEGV handler ("ERROR: Unexpected bus error
..."), written with its C string's NUL."""

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

from tests.kitchens import kitchen_copy
from tests.test_attack_kill_resume import leap, workdir_from

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
       "NO_COLOR": "1", "COLUMNS": "200"}
ENV.pop("LEAP_PROGRESS_EVERY", None)
TRAIN = ("--config", "tiny-synthetic-short", "--name", "r", "--set", "data.batch_size=2", "--set", "train.log_every=1",
         "--set", "data.num_workers=2")
NO_VAL = ("--set", 'data.val=""')
PROMPT = 5.0  # seconds from a kill to the exit, at most (the main process waits DEATH_SHOWS, 2 s, at worst)


def _with_val(wd: Path) -> tuple:
    """Validation each epoch over the 6 training clips, one a batch (more batches than the workers fetch ahead)."""
    return ("--set", "train.eval_every_epochs=1", "--set", "data.eval_batch_size=1", "--set",
            f"data.val={wd / 'shards' / 'train'}")


# gradient accumulation over the epoch's 3 batches (a step an epoch), validation and last.pt at each step
RESUMED = (*TRAIN, "--set", "train.epochs=3", "--set", "optim.accum_steps=3", "--set", "train.checkpoint_every=1")


@pytest.fixture(scope="module")
def kitchen(tmp_path_factory):
    """A 2-video synthetic kitchen (6 training clips) sharded, and its run ``r`` of RESUMED, never stopped."""
    wd = tmp_path_factory.mktemp("kitchen")
    kitchen_copy(tmp_path_factory, wd / "kitchen", "--videos", 2, "--segments", 6)
    steps = [("extract", "--split", "train", "--workers", 2),
             ("generate-programs", "--split", "train", "--backend", "offline"), ("build-shards", "--split", "train"),
             ("train", *RESUMED, *_with_val(wd))]
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
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**ENV, "TMPDIR": str(tmp)},
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


def _evaluate(kitchen: Path, out: Path) -> tuple:
    """leap evaluate of the kitchen's run on its 6 training clips, one a batch, with 2 workers."""
    return ("evaluate", "--workdir", kitchen, "--run", kitchen / "runs" / "r", "--split", "train", "--checkpoint",
            "last", "--batch-size", "1", "--workers", "2", "--out", out)


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


@pytest.mark.parametrize("stage,sig", [("evaluate", "SIGBUS"), ("validation", "SIGSEGV")])  # (train's first epoch:
# the same start, of its persistent workers; the file's time)
def test_a_worker_dead_before_torch_registered_its_pid_is_said_at_once(kitchen, tmp_path, tmp, stage, sig):
    """Was: no line, and the main process waited for the dead worker's batch LOADER_TIMEOUT (900 s)."""
    if stage == "evaluate":
        args = _evaluate(kitchen, tmp_path / "out")
    else:
        wd = workdir_from(kitchen, tmp_path / "wd", "shards", "programs")
        args = ("train", "--workdir", wd, *TRAIN, "--set", "train.epochs=1", *_with_val(wd))
        # (validation of more batches than its workers fetch ahead: the live worker waits for its next batch's index;
        # where it had none left, it ended, and that child's exit made torch's SIGCHLD check find the dead one)
    killed = tmp_path / "killed"
    code = KILLED_BEFORE_REGISTERED.format(sig=sig, nth=1 if stage == "evaluate" else 2, killed=str(killed))
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
    r = _run([sys.executable, "-c", KILLED_IN_A_FORK, "train", "--workdir", wd, *TRAIN, "--set", "train.epochs=1",
              *_with_val(wd)], tmp, lambda kids, pid: None, timeout=30)
    said = _said(r["err"])
    assert r["rc"] == 2 and "Traceback" not in r["err"] and "Exception ignored" not in r["err"], r["err"][-1500:]
    assert len(said) == 1 and "killed by" in said[0], r["err"][-1500:]
    assert not r["left"] and not r["temps"], (r["left"], r["temps"])


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def test_evaluate_workers_killed_at_random_moments_each_said_at_once(kitchen, tmp_path, tmp):
    """leap evaluate --workers 2 again and again, one or both workers killed (SIGKILL, SIGBUS, SIGSEGV) from the
    moment the first is forked to its batches (the early kills met the race of the first test about one time in
    five), for 5 s and 3 runs at least."""
    rng = random.Random(67)
    sigs = [signal.SIGKILL, signal.SIGBUS, signal.SIGSEGV]
    end, runs, deaths = time.monotonic() + 5, 0, 0
    while time.monotonic() < end or runs < 3:
        sig, both, delay = sigs[runs % 3], rng.random() < 0.3, rng.choice([0.0, 0.0, rng.uniform(0, 0.3)])
        first: list = []

        def pick(kids, pid):
            kids = [k for k in kids if _comm(k) == "pt_data_worker"]  # (not a fork about to run git)
            if kids and not first:
                first.append(time.monotonic())
            if kids and time.monotonic() - first[0] >= delay and (len(kids) >= 2 or not both):
                return [(k, sig) for k in (kids[:2] if both else kids[:1])]
            return None

        shutil.rmtree(tmp_path / "out", ignore_errors=True)
        r = _run(leap(*_evaluate(kitchen, tmp_path / "out")), tmp, pick)
        what = f"run {runs}: {signal.Signals(sig).name} {'both' if both else 'one'} after {delay:.2f} s"
        runs += 1
        if r["rc"] == 0:  # (it ended first: every segment scored)
            assert (tmp_path / "out" / "metrics.json").exists() and not r["left"] and not r["temps"], what
            continue
        deaths += 1
        _died(r, what)
    assert deaths >= runs // 2, (deaths, runs)


def test_a_worker_killed_at_a_random_moment_of_training_then_resume_gives_the_unstopped_weights(kitchen, tmp_path,
                                                                                               tmp):
    """A training or validation worker killed (3 steps of accumulation over 3 batches an epoch, validation and last.pt
    at each step): one line, then --resume ends with the weights, optimizer state and metrics log of the run that
    never stopped."""
    import json

    import torch

    from tests.test_attack_kill_resume import _same_training

    wd = workdir_from(kitchen, tmp_path / "wd", "shards", "programs")
    metrics = wd / "runs" / "r" / "metrics.jsonl"
    rng = random.Random()
    want, sig = rng.randint(0, 4), rng.choice([signal.SIGKILL, signal.SIGBUS, signal.SIGSEGV])

    def pick(kids, pid):
        kids = [k for k in kids if _comm(k) == "pt_data_worker"]
        done = metrics.read_bytes().count(b"\n") if metrics.exists() else 0
        return [(rng.choice(kids), sig)] if kids and done >= want else None

    args = ("train", "--workdir", wd, *RESUMED, *_with_val(wd))
    r = _run(leap(*args), tmp, pick)
    what = f"{signal.Signals(sig).name} after {want} records"
    if r["rc"] != 0:
        _died(r, what)
        r = subprocess.run(leap(*args, "--resume"), capture_output=True, text=True, env={**ENV, "TMPDIR": str(tmp)},
                           cwd=ROOT, timeout=60)
        assert r.returncode == 0, what + r.stderr[-1500:]
    ck = wd / "runs" / "r" / "checkpoints" / "last.pt"
    ref = kitchen / "runs" / "r"
    _same_training(torch.load(ck, map_location="cpu", weights_only=True),
                   torch.load(ref / "checkpoints" / "last.pt", map_location="cpu", weights_only=True))
    steps = [(m["split"], m["step"]) for m in map(json.loads, metrics.read_text().splitlines())]
    assert steps == [(m["split"], m["step"]) for m in map(json.loads, (ref / "metrics.jsonl").read_text().splitlines())]


# evaluate's stop (Ctrl-C; SIGTERM, which cli turns into a KeyboardInterrupt) heard as a loader forks its workers, in
# Python code the fork runs (an at-fork callback: logging's lock release is one; here one that waits for the signal)
STOPPED_IN_A_FORK = """
import os, signal, sys, time
done = []
def after_fork():
    if not done:
        done.append(1)
        os.kill(os.getpid(), signal.{sig})
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            time.sleep(0.01)
os.register_at_fork(after_in_parent=after_fork)
from leap_cli.cli import main
sys.argv = ["leap", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("sig, rc", [("SIGTERM", 143), ("SIGINT", 130)])
def test_evaluate_stopped_as_it_forks_its_workers_stops(kitchen, tmp_path, tmp, sig, rc):
    """Was (seen as a strict xfail, fixed in cli by sending a dropped stop again): a SIGINT/SIGTERM whose
    KeyboardInterrupt is raised in an at-fork callback (logging's, as evaluate forks its DataLoader workers) is
    dropped by Python as unraisable ('Exception ignored in ... KeyboardInterrupt'): evaluate went on to the end and
    exited 0 (3 of 6 early SIGINTs, 4 of 6 SIGTERMs)."""
    r = _run([sys.executable, "-c", STOPPED_IN_A_FORK.format(sig=sig), *map(str, _evaluate(kitchen, tmp_path / "o"))],
             tmp, lambda kids, pid: None, timeout=30)
    assert r["rc"] == rc and "KeyboardInterrupt" not in r["err"], f"{r['rc']} " + r["err"][-1500:]
    assert not r["left"] and not r["temps"], (r["left"], r["temps"])



# A process group's stop (SIGTERM: Slurm's preemption, `timeout`, `docker stop`; SIGINT: Ctrl-C) that reaches
# evaluate as it starts its DataLoader workers: as the first worker is forked (in an at-fork callback, where Python
# cannot raise the stop's KeyboardInterrupt), or inside torch's start once every worker is forked.
GROUP_STOPPED_AS_WORKERS_START = """
import os, signal, sys, time
from torch.utils.data._utils import signal_handling
done = []
def stop():
    if not done:
        done.append(1)
        os.killpg(0, signal.{sig})
        time.sleep(0.3)  # (a worker that has not yet ignored the signal dies of it meanwhile, if it can)
if "{at}" == "fork":
    os.register_at_fork(after_in_parent=stop)
else:
    register = signal_handling._set_worker_pids
    def stopped(key, pids):
        register(key, pids)
        stop()
    signal_handling._set_worker_pids = stopped
from leap_cli.cli import main
sys.argv = ["leap", *sys.argv[1:]]
main()
"""

# The stop and a worker's death (by SIGKILL: the kernel's out-of-memory killer) as the loader starts, the death heard
# only as the start's clean-up joins the workers: the stop wins.
STOP_AND_A_DEATH_AS_WORKERS_START = """
import os, signal, sys, time
from torch.utils.data._utils import signal_handling
register = signal_handling._set_worker_pids
def stopped(key, pids):
    register(key, pids)
    heard = signal.signal(signal.SIGCHLD, lambda *a: None)  # (the death not heard yet)
    os.kill(pids[0], signal.SIGKILL)
    end = time.monotonic() + 5
    while time.monotonic() < end and open(f"/proc/{pids[0]}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.01)
    signal.signal(signal.SIGCHLD, heard)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.3)
signal_handling._set_worker_pids = stopped
from leap_cli.cli import main
sys.argv = ["leap", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("script, rc", [
    (GROUP_STOPPED_AS_WORKERS_START.format(sig="SIGTERM", at="fork"), 143),
    (GROUP_STOPPED_AS_WORKERS_START.format(sig="SIGINT", at="fork"), 130),
    (GROUP_STOPPED_AS_WORKERS_START.format(sig="SIGTERM", at="registered"), 143),
    (STOP_AND_A_DEATH_AS_WORKERS_START, 143)], ids=["sigterm-fork", "sigint-fork", "sigterm-registered", "and-a-death"])
def test_a_process_groups_stop_as_workers_start_is_a_stop(kitchen, tmp_path, tmp, script, rc):
    """Was: exit 2 and "DataLoader worker (pid N) is killed by signal: Terminated." (use fewer workers ...), in 5 of
    12 SIGTERMs to evaluate's process group as its workers started (a scheduler that requeues a preempted job by its
    exit status, 143, took it for a failure); in 2 of 200 a hang for ever (the stop's KeyboardInterrupt raised inside
    a queue's ``with`` block left its lock held) and once "RuntimeError: release unlocked lock" with a traceback."""
    r = _run([sys.executable, "-c", script, *map(str, _evaluate(kitchen, tmp_path / "o"))], tmp,
             lambda kids, pid: None, timeout=30)
    said = _said(r["err"])
    assert r["rc"] == rc and "Traceback" not in r["err"], f"{r['rc']} " + r["err"][-1500:]
    assert len(said) == 1 and said[0].startswith("stopped by SIGTERM" if rc == 143 else "interrupted"), said
    assert not r["left"] and not r["temps"], (r["left"], r["temps"])


# The same group's SIGTERM reaching a worker after torch has set its own SIGTERM handler in it (which ends a worker
# signalled by any process but its parent) and before ``loader_worker_init`` has it ignore the signal.
WORKER_STOPPED_BEFORE_IT_IGNORES = """
import os, signal, sys, time
from torch.utils.data._utils import signal_handling
install = signal_handling._set_worker_signal_handlers
def installed(*args):
    install(*args)
    try:
        os.close(os.open({flag!r}, os.O_CREAT | os.O_EXCL))  # (the first worker only)
    except FileExistsError:
        return
    os.kill(os.getppid(), signal.SIGTERM)  # (the group's stop: the main process's, and this worker's)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.3)
signal_handling._set_worker_signal_handlers = installed
from leap_cli.cli import main
sys.argv = ["leap", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("stage", ["train", "evaluate"])
def test_a_groups_sigterm_in_a_worker_before_it_ignores_it_is_the_stop(kitchen, tmp_path, tmp, stage):
    """Was: `leap train` exited 2, "a DataLoader worker (pid N) was killed by SIGTERM" after "SIGTERM received:
    stopping at the next step boundary", in 4 of 14 SIGTERMs to its process group as its workers started (torch's
    handler in the worker ended it before ``loader_worker_init`` could ignore the signal). The workers now take the
    stop signals only once they ignore them."""
    args = (_evaluate(kitchen, tmp_path / "o") if stage == "evaluate" else
            ("train", "--workdir", kitchen, *TRAIN, "--name", "g", "--set", "train.epochs=1", *NO_VAL))
    script = WORKER_STOPPED_BEFORE_IT_IGNORES.format(flag=str(tmp_path / "signalled"))
    r = _run([sys.executable, "-c", script, *map(str, args)], tmp, lambda kids, pid: None, timeout=40)
    assert (tmp_path / "signalled").exists()
    assert r["rc"] == 143 and "Traceback" not in r["err"] and "DataLoader worker" not in r["err"], \
        f"{r['rc']} " + r["err"][-1500:]
    assert not r["left"] and not r["temps"], (r["left"], r["temps"])
