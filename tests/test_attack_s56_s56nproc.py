"""Attack (helper s56nproc): a stage whose worker processes cannot start (a process limit, `ulimit -u`, RLIMIT_NPROC,
too small for its workers) and `leap evaluate` whose DataLoader worker is killed mid-run.

RLIMIT_NPROC counts every process *and thread* of a user, and root is exempt from it (the kernel skips the check for
uid 0 whatever the capabilities: a root `ulimit -u 1` still forks). Two ways are used here:

- a real limit: the stage runs as an unused uid with `ulimit -u N`, keeping only the capabilities to read and write
  files (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, ambient: the venv's Python lives under /root); skipped where this
  process cannot do that (not root, no CAP_SETUID). There fork() fails with EAGAIN, and a *thread* that cannot start
  fails with RuntimeError("can't start new thread"), in the stage's process or in its workers;
- a sitecustomize on PYTHONPATH (deterministic): multiprocessing's ``Process.start`` raises BlockingIOError(EAGAIN)
  after N starts in the stage's process (what fork() says under the limit), a worker's N+1th thread does not start,
  or the first worker started is SIGKILLed after the stage's process has taken N items from a worker queue; and
  the stage's process can be given the CPU before its first worker (one CPU, SCHED_FIFO), which makes certain the
  race that a real limit shows now and then (a worker SIGTERMed before it has run).

Expected (docs/troubleshooting.md, options.md): one line saying what failed and what to do (fewer --workers, or a
higher `ulimit -u`), a non-zero exit, no traceback, no hang (every run has a timeout), no worker left behind, no
half-written output, and a rerun (without the limit, or with fewer workers) that finishes the work.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.procs import alive_after

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
       "NO_COLOR": "1", "COLUMNS": "200"}
ENV.pop("LEAP_PROGRESS_EVERY", None)
FPS = 10.0  # the videos' fps; rgb_frames and frame columns count at 60/s, as EPIC's (epic_frame_rate)
SEGMENTS = [(0.2, 0.9, "take", 0, "plate", 2), (1.1, 1.9, "wash", 2, "cup", 13), (2.1, 2.9, "take", 0, "plate", 2)]
VIDEOS = ("P01_01", "P01_02")
MINI = ("model: {img_size: 32, num_frames: 4, options: {decoder_dim: 32, decoder_heads: 2}}\n"
        "data: {batch_size: 2, eval_batch_size: 2}\ntrain: {epochs: 1, log_every: 1, threads: 1}\n")
SHARDS = ["--frames", "4", "--short-side", "32", "--max-count", "2"]
LIMIT_S = 6  # seconds a build-shards run that cannot start its workers may take (it ends in about 1 s)

# In the stage's process (not its workers): S56_FAIL_AFTER_STARTS=k makes multiprocessing's k+1th Process.start raise
# EAGAIN; S56_KILL_AFTER_GETS=k SIGKILLs the first process started once k items came from a multiprocessing Queue.
# In its forked children: S56_CHILD_THREADS=k makes the k+1th thread fail to start. S56_STARTED lists the pids started.
# S56_WAIT_FILE: import torch, then wait for that file before the command starts (an evaluation started before its
# run is trained, a rerun before the run it follows has ended: the file's time is its CPUs').
HOOK = r'''
import errno, os, signal
_fail = int(os.environ.get("S56_FAIL_AFTER_STARTS", "-1"))
_kill = int(os.environ.get("S56_KILL_AFTER_GETS", "-1"))
_threads = int(os.environ.get("S56_CHILD_THREADS", "-1"))
_me = os.getpid()
if os.environ.get("S56_STARTED") and (_fail >= 0 or _kill >= 0 or _threads >= 0):
    import multiprocessing.process as _mpp
    _started = []
    _start = _mpp.BaseProcess.start

    def start(self):
        if os.getpid() != _me:
            return _start(self)
        if 0 <= _fail <= len(_started):
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        if os.environ.get("S56_CHILD_RUNS_LATER") and not _started:
            # (this process and its first worker on one CPU, this one first: the worker runs only once this process
            # waits; SCHED_RESET_ON_FORK: the worker is an ordinary process)
            try:
                os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
                os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(1))
            except (OSError, AttributeError):
                open(os.environ["S56_STARTED"] + ".unscheduled", "w").close()
        _start(self)
        _started.append(self.pid)
        with open(os.environ["S56_STARTED"], "a") as f:
            f.write(f"{self.pid}\n")

    _mpp.BaseProcess.start = start
    if _kill >= 0:
        import multiprocessing.queues as _mpq
        _get, _gets = _mpq.Queue.get, [0]

        def get(self, *a, **k):
            got = _get(self, *a, **k)
            if os.getpid() == _me:
                _gets[0] += 1
                if _gets[0] == _kill and _started:
                    # (written before the kill: torch's SIGCHLD handler can raise in this thread right after it)
                    with open(os.environ["S56_STARTED"] + ".killed", "w") as f:
                        f.write(f"{_started[0]}\n")
                    os.kill(_started[0], signal.SIGKILL)
            return got

        _mpq.Queue.get = get
    if _threads >= 0:
        import threading as _th
        _tstart, _count = _th.Thread.start, [0]

        def tstart(self):
            if os.getpid() != _me:
                _count[0] += 1
                if _count[0] > _threads:
                    raise RuntimeError("can't start new thread")
            return _tstart(self)

        _th.Thread.start = tstart
if os.environ.get("S56_WAIT_FILE"):  # (the stage's own first import done while it waits for its input)
    import time
    import torch  # noqa: F401
    _until = time.monotonic() + 120
    while not os.path.exists(os.environ["S56_WAIT_FILE"]):
        if time.monotonic() > _until:  # (the test that started it is gone)
            os._exit(99)
        time.sleep(0.02)
'''

# Run argv[3:] as uid argv[1] under RLIMIT_NPROC argv[2], with only the capabilities to read and write files; exit
# 97 where that cannot be done here.
AS_USER = r'''
import ctypes, os, resource, sys
try:
    libc = ctypes.CDLL(None, use_errno=True)
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
    assert libc.prctl(8, 1, 0, 0, 0) == 0  # PR_SET_KEEPCAPS
    uid = int(sys.argv[1])
    os.setgroups([]); os.setgid(uid); os.setuid(uid)
    mask = (1 << 1) | (1 << 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
    assert libc.capset(ctypes.byref(Header(0x20080522, 0)), (Data * 2)(Data(mask, mask, mask), Data(0, 0, 0))) == 0
    for cap in (1, 2):
        assert libc.prctl(47, 2, cap, 0, 0) == 0  # PR_CAP_AMBIENT_RAISE
    resource.setrlimit(resource.RLIMIT_NPROC, (int(sys.argv[2]),) * 2)
except (AssertionError, OSError, AttributeError, ValueError):
    sys.exit(97)
os.execv(sys.argv[3], sys.argv[3:])
'''


def leap(*args) -> list[str]:
    return [PY, "-m", "leap_cli", *map(str, args)]


def said(err: str) -> list[str]:
    """What a run said on stderr, less warnings and build-shards' progress line."""
    return [x for x in err.splitlines() if x.strip() and not x.startswith("WARNING ")
            and not re.match(r"build-shards \w+: reading", x)]


def one_clear_line(rc, err: str, option: str = "--workers") -> bool:
    """One line, exit 2, no traceback, naming the workers and both ways out (fewer of them, a higher ulimit -u)."""
    lines = said(err)
    return (rc == 2 and len(lines) == 1 and "Traceback" not in err and "worker" in lines[0].lower()
            and "ulimit -u" in lines[0] and option in lines[0])


def uid_tasks(uid: int) -> list[int]:
    """The live (not zombie) processes of ``uid``."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                status = (d / "status").read_text()
            except OSError:
                continue
            if f"\nUid:\t{uid}\t" in status and "\nState:\tZ" not in status:
                found.append(int(d.name))
    return found


class Run:
    """A leap command in a session of its own, its stdout/stderr in files (read while it runs)."""

    def __init__(self, cmd, tmp: Path, name: str, env: dict):
        self.err_path, self.started = tmp / f"{name}.err", tmp / f"{name}.started"
        env = {**env, "S56_STARTED": str(self.started)}
        with open(tmp / f"{name}.out", "wb") as out, open(self.err_path, "wb") as err:
            self.p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=ROOT, start_new_session=True)
        self.t0 = time.monotonic()
        self.rc: int | None = None
        self.hung = False

    @property
    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait(self, timeout: float = 60) -> int | None:
        """The exit status, or None where the run was still going after ``timeout`` s from its start (then killed
        with its process group)."""
        if self.rc is None and not self.hung:
            try:
                self.rc = self.p.wait(max(0.1, timeout - (time.monotonic() - self.t0)))
            except subprocess.TimeoutExpired:
                self.stop()
        return self.rc

    def stop(self) -> None:
        self.hung = True
        with_pids = self.pids()
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in with_pids:  # (workers in a session of their own would outlive the group)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.p.wait()

    def pids(self) -> list[int]:
        try:
            return [int(x) for x in self.started.read_text().split()]
        except OSError:
            return []


def _kitchen(root: Path) -> Path:
    """Two videos as rgb_frames folders, three segments each, all six in the train split."""
    import cv2
    import numpy as np

    from leap_cli.epic.timing import epic_frame_rate, format_timestamp

    ann = root / "annotations"
    ann.mkdir(parents=True)
    epic = ROOT / "tests" / "data" / "epic100"
    for f in ("EPIC_100_verb_classes.csv", "EPIC_100_noun_classes.csv"):
        shutil.copy(epic / f, ann / f)
    rate = epic_frame_rate(FPS)
    head = ("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,"
            "stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes")
    rows = []
    for v, vid in enumerate(VIDEOS):
        for i, (a, b, verb, vc, noun, nc) in enumerate(SEGMENTS):
            rows.append(f"{vid}_{i},P01,{vid},{format_timestamp(a)},{format_timestamp(a)},{format_timestamp(b)},"
                        f"{max(1, int(a * rate + 1e-6))},{int(b * rate + 1e-6)},{verb} {noun},{verb},{vc},{noun},{nc},"
                        f"['{noun}'],[{nc}]")
        d = root / "P01" / "rgb_frames" / vid
        d.mkdir(parents=True)
        for n in range(1, int(3 * rate) + 1):
            img = np.zeros((24, 32, 3), np.uint8)
            img[:] = ((n * 8) % 256, 60 + 90 * v, 255 - (n // 32 * 24) % 256)
            cv2.imwrite(str(d / f"frame_{n:010d}.jpg"), img)
    (ann / "EPIC_100_train.csv").write_text("\n".join([head] + rows) + "\n")
    (ann / "EPIC_100_validation.csv").write_text(head + "\n")
    (ann / "EPIC_100_video_info.csv").write_text(
        "video_id,duration,fps,resolution\n" + "".join(f"{v},3.0,{FPS},32x24\n" for v in VIDEOS))
    return root


def _evaluate(wd: Path, out: Path) -> list[str]:
    return leap("evaluate", "--workdir", wd, "--split", "train", "--workers", 2, "--batch-size", 1, "--out", out)


def _build_shards(wd: Path, out: Path) -> list[str]:
    return leap("build-shards", "--workdir", wd, "--split", "train", "--workers", 2, *SHARDS, "--out", out)


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@pytest.fixture(scope="module")
def runs():
    """The kitchen, its train shards (3 tars of 2 samples) and a one-epoch run; the failing runs are started in the
    background as soon as their inputs are there, and each test waits for its own (the file's time is the CPUs')."""
    # (in a folder of /tmp that the other uid may read and write: click's --workdir check and leap's are access(),
    # which does not take the capabilities of a process whose real uid is not root, and pytest's folders are 0700)
    base = Path(tempfile.mkdtemp(prefix="leap-s56nproc-", dir="/tmp" if os.path.isdir("/tmp") else None))
    os.chmod(base, 0o777)
    tmp = base / "tmp"
    tmp.mkdir()
    env = {**ENV, "TMPDIR": str(tmp)}
    hook = base / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    hooked = {**env, "PYTHONPATH": f"{hook}{os.pathsep}{ROOT}"}
    wd = base / "wd"
    _kitchen(wd / "kitchen")
    logs = base / "logs"
    logs.mkdir()
    r: dict = {"wd": wd, "env": env, "hooked": hooked, "logs": logs, "base": base, "limit": {}}
    for d in (base, *base.rglob("*")):
        os.chmod(d, 0o777 if d.is_dir() else 0o666)
    try:
        _start(r)
        yield r
    finally:
        if "stop" in r:
            r["stop"].set()
            r["chain"].join(LIMIT_S + 5)
        for x in [*r.values(), *(v[0] for v in r["limit"].values())]:
            if isinstance(x, Run) and x.p.poll() is None:
                x.stop()
        shutil.rmtree(base, ignore_errors=True)


def _start(r: dict) -> None:
    """The runs in the background, the shards and the run of one epoch here."""
    base, wd, logs, hooked = r["base"], r["wd"], r["logs"], r["hooked"]
    # extract --workers 2 (a spawned pool) whose second worker cannot start
    r["extract"] = Run(leap("extract", "--workdir", wd, "--split", "train", "--workers", 2), logs, "extract",
                       {**hooked, "S56_FAIL_AFTER_STARTS": "1"})
    _limit_runs(r)
    # build-shards --workers 2 whose second worker cannot fork, the first not yet run when the Pool SIGTERMs it
    r["race"] = Run(_build_shards(wd, base / "bs-race"), logs, "bs-race",
                    {**hooked, "S56_FAIL_AFTER_STARTS": "1", "S56_CHILD_RUNS_LATER": "1"})
    from leap_cli.shards.writer import ShardSettings, build_split

    build_split(wd / "kitchen", "train", workdir=wd, settings=ShardSettings(split="train", frames=4, short_side=32,
                                                                            max_count=2))
    if _cpus() >= 2:  # (evaluate starts at most one DataLoader worker per CPU)
        trained = {**hooked, "S56_WAIT_FILE": str(base / "trained")}
        r["eval_kill"] = Run(_evaluate(wd, base / "ev-kill"), logs, "eval-kill",
                             {**trained, "S56_KILL_AFTER_GETS": "2"})
        r["eval_hang"] = Run(_evaluate(wd, base / "ev-hang"), logs, "eval-hang", {**trained, "S56_CHILD_THREADS": "1"})
        r["eval_eagain"] = Run(_evaluate(wd, base / "ev-eagain"), logs, "eval-eagain",
                               {**trained, "S56_FAIL_AFTER_STARTS": "1"})
        _eval_rerun(r)
    from typer.testing import CliRunner

    from leap_cli.cli import app

    (base / "mini.yaml").write_text(MINI)
    res = CliRunner().invoke(app, ["train", "--config", str(base / "mini.yaml"), "--workdir", str(wd), "--name", "r"])
    assert res.exit_code == 0, res.output[-2000:]
    (base / "trained").touch()
    r["stop"] = threading.Event()
    r["chain"] = threading.Thread(target=_reruns, args=(r,), daemon=True)
    r["chain"].start()


def _limit_runs(r: dict) -> None:
    """build-shards --workers 2 (a forked pool) as an unused uid under a real ulimit -u 3: both workers fork, then
    the pool's own threads cannot start. (Under ulimit -u 2 the second fork fails with EAGAIN, as the hook below
    makes it fail; such a run also met the race of a test further below, now and then.)"""
    if sys.platform == "linux" and os.geteuid() == 0:
        base = r["base"]
        wrapper = base / "as_user.py"
        wrapper.write_text(AS_USER)
        uids = [u for u in range(64100, 64200) if not uid_tasks(u)][:1]
        for n, uid in zip((3,), uids):
            r["limit"][n] = (Run([PY, str(wrapper), str(uid), str(n)] + _build_shards(r["wd"], base / f"bs{n}"),
                                 r["logs"], f"bs{n}", r["env"]), base / f"bs{n}", uid)
    r["limit_started"] = True


def _reruns(r: dict) -> None:
    """Each rerun as soon as its failed run has ended, into the same output, after noting what that run left there
    (the tests read the note): the file's time is its CPUs', and the reruns fill the time the evaluations leave."""
    base = r["base"]
    todo = {"eval": "eval_kill" in r, "extract": True, "shards": bool(r["limit"])}
    deadline = time.monotonic() + 90
    while any(todo.values()) and time.monotonic() < deadline and not r["stop"].is_set():
        if todo["eval"] and r["eval_kill"].p.poll() is not None:
            out = base / "ev-kill"
            r["eval_kill_left"] = sorted(os.listdir(out)) if out.is_dir() else []
            _eval_rerun(r)
            (base / "kill-ended").touch()
            todo["eval"] = False
        if todo["extract"] and r["extract"].p.poll() is not None:
            out = r["wd"] / "descriptors" / "train.jsonl"
            r["extract_left"] = out.read_bytes() if out.exists() else b""
            _extract_rerun(r)
            todo["extract"] = False
        if todo["shards"] and all(run.p.poll() is not None or time.monotonic() - run.t0 > LIMIT_S
                                  for run, _, _ in r["limit"].values()):
            for run, _, _ in r["limit"].values():
                run.wait(LIMIT_S)  # (at once: ended, or over its time and stopped here)
            r["limit_left"] = {n: (out / "manifest.json").exists() for n, (_, out, _) in r["limit"].items()}
            if not any(run.rc == 97 for run, _, _ in r["limit"].values()):
                _shards_rerun(r)
            todo["shards"] = False
        time.sleep(0.05)


def _noted(runs, key: str, timeout: float = 10):
    """What ``_reruns`` noted of a failed run's output before its rerun (None: nothing noted in ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while key not in runs and runs["chain"].is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    return runs.get(key)


def _rerun(runs, key: str, cmd: list[str], env: dict) -> Run:
    """The rerun ``key``, started in the background by ``_reruns`` (or here, by the first to ask)."""
    if key not in runs:
        runs[key] = Run(cmd, runs["logs"], key, env)
    return runs[key]


def _extract_rerun(runs) -> Run:  # (what the advice should say: fewer workers, under the same limit)
    return _rerun(runs, "extract_rerun", leap("extract", "--workdir", runs["wd"], "--split", "train", "--workers", 1),
                  {**runs["hooked"], "S56_FAIL_AFTER_STARTS": "1"})


def _limited(runs) -> dict:
    _noted(runs, "limit_started", 60)
    got = runs["limit"]
    if not got:
        pytest.skip("needs root on Linux, to run the stage as another uid under a real RLIMIT_NPROC")
    for run, _, _ in got.values():
        run.wait(LIMIT_S)
    if any(run.rc == 97 for run, _, _ in got.values()):
        pytest.skip("cannot run as another uid with file capabilities here")
    return got


def _shards_rerun(runs) -> Run:
    return _rerun(runs, "shards_rerun", _build_shards(runs["wd"], runs["base"] / "bs3"), runs["env"])


def _need_eval(runs, key):
    if key not in runs:
        pytest.skip("evaluate starts one DataLoader worker per CPU: two are needed")
    return runs[key]


def _eval_rerun(runs) -> Run:
    return _rerun(runs, "eval_rerun", _evaluate(runs["wd"], runs["base"] / "ev-kill"),
                  {**runs["hooked"], "S56_WAIT_FILE": str(runs["base"] / "kill-ended")})


def _scored(out: Path) -> list[str]:
    from leap_cli.evaluate.scores import load_scores

    return list(load_scores(out / "scores.pt")["narration_id"])


def _train_keys(wd: Path) -> list[str]:
    from leap_cli.shards.format import load_manifest

    m, _ = load_manifest(wd / "shards" / "train")
    return [k for s in m["shards"] for k in s["keys"]]


# ---- extract (a spawned process pool) ----------------------------------------------------------------------------

def test_extract_whose_second_worker_cannot_start_stops_without_traceback_or_a_worker_left(runs):
    run = runs["extract"]
    assert run.wait(60) is not None, "extract hung: " + run.err[-1500:]
    assert run.rc != 0 and "Traceback" not in run.err and len(said(run.err)) == 1, (run.rc, run.err[-2000:])
    assert run.pids() and not alive_after(run.pids(), 5.0), "the worker that started is left behind"
    left = _noted(runs, "extract_left")
    assert left is not None and (not left or left.endswith(b"\n")), "a record cut short"


def test_extract_worker_that_cannot_start_is_said_with_what_to_do(runs):
    """Was wrong: extract --workers 2 whose worker cannot start (fork/spawn EAGAIN under ulimit -u) says only
    'Resource temporarily unavailable (check that path and run the same command again)': no worker, no
    --workers, no ulimit -u, a path that is not there (cli._main's OSError branch, os_error_line)."""
    run = runs["extract"]
    assert run.wait(60) is not None
    assert one_clear_line(run.rc, run.err), run.err[-2000:]


# ---- evaluate (DataLoader workers, forked) ---------------------------------------------------------------------------

def test_evaluate_whose_second_loader_worker_cannot_start_stops_and_writes_nothing(runs):
    run = _need_eval(runs, "eval_eagain")
    assert run.wait(60) is not None, "evaluate hung: " + run.err[-1500:]
    assert run.rc == 2, (run.rc, run.err[-2000:])
    assert [x for x in said(run.err) if x.startswith("error:")], run.err[-2000:]
    assert not (runs["base"] / "ev-eagain" / "scores.pt").exists()
    assert run.pids() and not alive_after(run.pids(), 5.0), "the loader worker that started is left behind"


def test_evaluate_loader_worker_that_cannot_start_is_one_clear_line(runs):
    """Was wrong: after leap's line came torch's "Exception ignored in _MultiProcessingDataLoaderIter.__del__ ...
    AttributeError: _workers_status" traceback (its iterator half-made); the teardown is quiet after EAGAIN too."""
    run = _need_eval(runs, "eval_eagain")
    assert run.wait(60) is not None
    assert one_clear_line(run.rc, run.err), run.err[-2000:]


def test_evaluate_with_a_loader_worker_killed_mid_run_stops_in_one_line_and_writes_no_scores(runs):
    run = _need_eval(runs, "eval_kill")
    assert run.wait(60) is not None, "evaluate hung after its worker was killed: " + run.err[-1500:]
    lines = said(run.err)
    assert run.rc == 2 and "Traceback" not in run.err and len(lines) == 1, (run.rc, run.err[-2000:])
    assert "worker" in lines[0] and "SIGKILL" in lines[0] and "again" in lines[0], lines
    killed = Path(f"{run.started}.killed")
    assert [int(x) for x in killed.read_text().split()] == run.pids()[:1], "the kill did not come mid-run"
    assert run.err_path.stat().st_mtime - killed.stat().st_mtime < 10, "the error came long after the kill"
    left = _noted(runs, "eval_kill_left")
    assert left is not None and "scores.pt" not in left and "metrics.json" not in left, left
    assert len(run.pids()) == 2 and not alive_after(run.pids(), 5.0), "a loader worker is left behind"


# ---- build-shards (a forked pool) under a real ulimit -u -----------------------------------------------------------

def test_build_shards_under_a_real_process_limit_stops_writes_no_manifest_and_leaves_no_worker(runs):
    """(A run that hung here met the race of the test below: it is said there.)"""
    got = _limited(runs)
    left = _noted(runs, "limit_left")
    for n, (run, out, uid) in got.items():
        if run.rc is not None:
            assert run.rc != 0, (n, run.err[-1500:])
            # (the limit is what stopped it: the system's words, or leap's line naming the limit)
            assert re.search(r"Resource temporarily unavailable|can't start new thread|ulimit -u", run.err), run.err
        assert left is not None and left[n] is False, f"ulimit -u {n}: a manifest was written"
        assert not alive_after(uid_tasks(uid), 5.0), f"ulimit -u {n}: a worker is left behind"


def test_build_shards_under_a_real_process_limit_says_one_line(runs):
    """Was wrong: build-shards --workers 2 under a real ulimit -u 3: the workers fork but the pool's threads
    cannot: RuntimeError: can't start new thread, a 40-line traceback and exit 1 (writer._build_shards'
    ctx.Pool; extract's pool the same at some limits)."""
    got = _limited(runs)
    bad = {n: said(run.err)[-3:] for n, (run, _, _) in got.items() if not one_clear_line(run.rc, run.err)}
    assert not bad, bad


def test_build_shards_whose_first_worker_gets_the_pools_sigterm_before_it_runs_does_not_hang(runs):
    """Was wrong (a hang): multiprocessing's Pool.__init__ SIGTERMed the worker it had started and joined it without
    a bound; a SIGTERM that reaches the fresh fork before it has run is dropped (CPython's after-fork step clears
    the signal leap's inherited handler had caught), and the stage waited for ever holding its output's lock (2 of
    4-6 runs under a real ulimit -u 2 on one CPU). ``common.new_pool`` SIGKILLs them."""
    run = runs["race"]
    rc = run.wait(LIMIT_S)
    if Path(f"{run.started}.unscheduled").exists():
        pytest.skip("cannot give the stage a real-time policy here (CAP_SYS_NICE)")
    assert rc is not None, "build-shards hung joining the worker that started: " + run.err[-1500:]
    assert one_clear_line(rc, run.err), run.err[-2000:]


# ---- the reruns (started in the background once their failed run ended) ------------------------------------

def test_extract_rerun_with_one_worker_under_the_same_limit_writes_every_record(runs):
    assert runs["extract"].wait(60) is not None, "extract hung"  # (run alone: the rerun only once the failed run ended)
    run = _extract_rerun(runs)
    assert run.wait(60) == 0, run.err[-2000:]
    out = runs["wd"] / "descriptors" / "train.jsonl"
    ids = [json.loads(line)["narration_id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == sorted(f"{v}_{i}" for v in VIDEOS for i in range(len(SEGMENTS)))


def test_build_shards_rerun_without_the_limit_builds_the_same_shards(runs):
    _limited(runs)
    _noted(runs, "limit_left")
    run = _shards_rerun(runs)
    assert run.wait(60) == 0, run.err[-2000:]
    out, ref = runs["base"] / "bs3", runs["wd"] / "shards" / "train"
    tars = sorted(p.name for p in ref.glob("*.tar"))
    assert len(tars) == 3 and sorted(p.name for p in out.glob("*.tar")) == tars
    assert all((out / t).read_bytes() == (ref / t).read_bytes() for t in tars)


def test_evaluate_rerun_after_the_kill_scores_every_segment_once(runs):
    _need_eval(runs, "eval_kill").wait(60)
    _noted(runs, "eval_kill_left")
    run = _eval_rerun(runs)
    assert run.wait(90) == 0, run.err[-2000:]
    assert sorted(_scored(runs["base"] / "ev-kill")) == sorted(_train_keys(runs["wd"]))


def test_evaluate_whose_loader_worker_cannot_start_a_thread_does_not_hang(runs):
    """Was wrong (a hang): the worker said "leap: a DataLoader worker could not hand a batch over" and the main
    process waited LOADER_TIMEOUT (900 s) for the lost batch; the worker now ends (LOST_BATCH_EXIT), which the main
    process sees at once."""
    run = _need_eval(runs, "eval_hang")
    deadline = time.monotonic() + 60
    while run.p.poll() is None and "could not hand a batch over" not in run.err and time.monotonic() < deadline:
        time.sleep(0.05)
    seen = run.err_path.stat().st_mtime  # (when the line was written: the run started long before this test)
    while run.p.poll() is None and time.time() < seen + 2:
        time.sleep(0.05)
    hung = run.p.poll() is None
    if hung:
        run.stop()
    assert not hung, "evaluate still waiting 2 s after its worker lost a batch: " + run.err[-1500:]
    errors = [x for x in said(run.err) if not x.startswith("leap: a DataLoader worker")]  # (the workers' own lines)
    assert run.p.returncode == 2 and "Traceback" not in run.err and len(errors) == 1, run.err[-2000:]
    assert not (runs["base"] / "ev-hang" / "scores.pt").exists()
