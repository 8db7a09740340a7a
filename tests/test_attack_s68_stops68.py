"""Stop signals from a user's side, around the starts of workers that hold them (``common.stops_held``) and leap's
entry point, which sets stop handlers before the CLI loads (``entry.main``), on a small synthetic kitchen: `leap train`
stopped by a process group's SIGTERM/SIGINT around its validations (whose loader forks its workers each time), then
``--resume``; jobs started with SIGINT ignored (a background job of a script) or SIGHUP ignored (nohup); a second stop
while the first is held or handled; the `leap` entry stopped in its first moments; evaluate stopped with a worker
stalled (SIGSTOP).

Found (fixed in leap_cli/shards/dataset.py): `leap evaluate --workers 2` with a worker stalled (SIGSTOP; so would be a
worker that no longer runs) and then Ctrl-C or SIGTERM said its stop line and never exited (2 of 2 tries, each
stopped by hand 20 s later): Python's exit terminates its daemonic children with SIGTERM and joins them, and a
DataLoader worker ignores SIGTERM (``loader_worker_init``); a second Ctrl-C was ignored too (cli ignores stops once
the command is done). The workers still alive at the exit are now killed.
Left (strict xfail): `leap train` started with SIGINT ignored (a background job of a non-interactive shell) takes
SIGINT all the same: ``GracefulStop`` (train/loop.py) sets its handler over SIG_IGN, and a Ctrl-C meant for the
foreground job stopped the training (exit 130).
Tried and found sound: 28 stops of train around its validations (SIGTERM, SIGINT, some twice 0-1.6 s apart), each
resumed to the weights and metrics log of the run never stopped; 25 double stops of evaluate and 20 of extract
--workers 2 as their workers started (one line, exit 130/143, nothing left running); 140 stops of the `leap` entry in
its first 0.8 s (one line, 129/130/143, nothing written where it had not started). A SIGTERM that comes after train's
summary (the ~1 s of its exit) is ignored and the run exits 0: by design (cli), the run is complete.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_attack_kill_resume import _same_training, leap, workdir_from
from tests.test_attack_s67_deaths67 import RESUMED, _comm, _group, _with_val, kitchen  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
       "NO_COLOR": "1", "COLUMNS": "200"}
ENV.pop("LEAP_PROGRESS_EVERY", None)
EXIT = {signal.SIGTERM: 143, signal.SIGINT: 130, signal.SIGHUP: 129}
PROMPT = 5.0  # seconds from a stop to the exit, at most
STALLED = 20.0  # (with a stalled worker: torch's iterator joins it twice for 5 s as it is shut down)
ENTRY = "import sys; sys.argv[0] = 'leap'; from leap_cli.entry import main; main()"  # (the `leap` script's code)


def _bit(sig: int) -> int:
    return 1 << (sig - 1)


def _status(pid: int) -> dict | None:
    """SigIgn, SigBlk and SigCgt of ``pid`` (masks), or None once it is gone."""
    try:
        rows = dict(x.split(":\t", 1) for x in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in x)
        return {k: int(rows[k], 16) for k in ("SigIgn", "SigBlk", "SigCgt")}
    except (OSError, KeyError, ValueError):
        return None


def _kids(pid: int) -> list[int]:
    try:
        return [int(k) for k in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _loader_workers(pid: int) -> list[int]:
    return [k for k in _kids(pid) if _comm(k) == "pt_data_worker"]


def _start(cmd, tmp: Path, ignored: tuple = ()) -> subprocess.Popen:
    """``cmd`` in a session of its own, the stop signals as a terminal's job has them, less ``ignored`` (SIG_IGN)."""
    def signals():
        for s in EXIT:
            signal.signal(s, signal.SIG_IGN if s in ignored else signal.SIG_DFL)

    return subprocess.Popen([str(c) for c in cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**ENV, "TMPDIR": str(tmp)}, cwd=ROOT, preexec_fn=signals, start_new_session=True)


def _end(p: subprocess.Popen, since: float, timeout: float = PROMPT) -> dict:
    """Wait for ``p`` at most ``timeout`` s from ``since``; its status (None: still running), stderr, the seconds it
    took and the processes of its group left running (all killed then)."""
    try:
        p.wait(max(0.1, since + timeout - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    rc, took = p.poll(), time.monotonic() - since
    time.sleep(0.2)  # (a worker killed with its parent)
    left = _group(p.pid)
    if rc is None or left:
        os.killpg(p.pid, signal.SIGKILL)
    err = p.communicate()[1].decode(errors="replace")
    return {"rc": rc, "err": err, "took": took, "left": left}


def _said(err: str) -> list[str]:
    return [x for x in err.splitlines() if x.strip() and not x.startswith("WARNING ")]


def _stopped(r: dict, sig: int, what: str = "") -> None:
    """``r`` is a stop said as it should be: its exit status, one line, no traceback, promptly, nothing left."""
    assert r["rc"] is not None, f"{what}: still running {r['took']:.1f} s after the stop: " + r["err"][-1500:]
    assert r["rc"] == EXIT[sig] and "Traceback" not in r["err"], f"{what}: exit {r['rc']}: " + r["err"][-1500:]
    assert len(_said(r["err"])) == 1, f"{what}: " + r["err"][-1500:]
    assert not r["left"], f"{what}: processes left running: {r['left']}"


def _evaluate(kitchen: Path, out: Path) -> list:
    return leap("evaluate", "--workdir", kitchen, "--run", kitchen / "runs" / "r", "--split", "train", "--checkpoint",
                "last", "--batch-size", "1", "--workers", "2", "--out", out)


def _when(p: subprocess.Popen, ready, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not ready():
        assert p.poll() is None, f"ended (exit {p.returncode}) before the moment came: " + p.stderr.read().decode()[-800:]
        assert time.monotonic() < end, "the moment never came"
        time.sleep(0.001)


# --- (5) a stalled worker ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stalled(kitchen, tmp_path_factory):
    """`leap evaluate --workers 2` with a worker stalled (SIGSTOP), then Ctrl-C to its process group."""
    tmp = tmp_path_factory.mktemp("stalled")
    p = _start(_evaluate(kitchen, tmp / "out"), tmp)
    _when(p, lambda: _loader_workers(p.pid))
    os.kill(_loader_workers(p.pid)[0], signal.SIGSTOP)
    time.sleep(0.3)
    os.killpg(p.pid, signal.SIGINT)
    return _end(p, time.monotonic(), STALLED)


def test_evaluate_stopped_with_a_stalled_worker_exits(stalled):
    """Was: the stop line, then no exit (Python's exit terminates its daemonic children with SIGTERM, which a
    DataLoader worker ignores, and joins them: a stalled one never ended); a second Ctrl-C was ignored too."""
    _stopped(stalled, signal.SIGINT, "Ctrl-C with a stalled worker")


@pytest.mark.xfail(strict=True, reason="torch's iterator joins a stalled worker twice for 5 s "
                   "(MP_STATUS_CHECK_INTERVAL) before the stop's line")
def test_evaluate_stopped_with_a_stalled_worker_exits_promptly(stalled):
    assert stalled["took"] < PROMPT, stalled["took"]
