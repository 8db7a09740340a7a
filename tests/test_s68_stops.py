"""A DataLoader worker's death heard at any moment of the main process's wait for a batch (``Guarded``): raised
before another batch is handed on, never kept unsaid while the main process waits for the dead worker's batch."""

from __future__ import annotations

import linecache
import sys

import pytest

from leap_cli.errors import LeapError
from leap_cli.shards import dataset
from leap_cli.shards.dataset import _DIED, Guarded, WorkerDied


class _Loader:
    """A loader with workers whose batches come at once (no process: the death is heard by the trace below); each
    batch says whether the death had been heard when it was asked for (``state["heard"]``)."""

    num_workers = 2
    dataset = None

    def __init__(self, state: dict):
        self.state = state

    def __iter__(self):
        return ({"i": i, "asked_after": self.state["heard"]} for i in range(3))


def _heard_at(line: int) -> tuple[bool, list, BaseException | None]:
    """Iterate a Guarded loader, a worker's death heard (as ``watch_workers``' SIGCHLD handler does: kept, and raised
    where a batch is awaited) at the ``line``-th line run in ``dataset``'s code. Whether it was heard, the batches
    asked of the workers after it, and what ended the iteration."""
    code = {f.__code__ for f in vars(dataset).values() if callable(f) and hasattr(f, "__code__")}
    code |= {f.__code__ for f in vars(Guarded).values() if hasattr(f, "__code__")}
    state = {"lines": 0, "heard": False}

    def hear():
        error = WorkerDied("DataLoader worker (pid 1) is killed by signal: Killed.")
        _DIED["error"] = _DIED["error"] or error
        state["heard"] = True
        if _DIED["waiting"]:
            raise error

    def local(frame, event, arg):  # (not at a `try:`, a line no signal handler runs at: it runs no code)
        if event == "line" and not state["heard"] and \
                linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip() != "try:":
            state["lines"] += 1
            if state["lines"] == line:
                hear()
        return local

    def trace(frame, event, arg):
        return local if frame.f_code in code else None

    after, ended = [], None
    _DIED.update(error=None, waiting=False)
    sys.settrace(trace)
    try:
        for batch in Guarded(_Loader(state), "--workers"):
            if batch["asked_after"]:  # (the one in hand as it was heard may go on: it came whole)
                after.append(batch)
    except LeapError as e:
        ended = e
    finally:
        sys.settrace(None)
        _DIED.update(error=None, waiting=False)
    return state["heard"], after, ended


def test_a_death_heard_at_any_line_of_the_wait_stops_before_another_batch_is_awaited(monkeypatch):
    """Was: a death heard between the look for a kept one and the flag that has the handler raise it was kept and
    not raised; the main process then waited LOADER_TIMEOUT (900 s) for the dead worker's batch (seen once in 100
    process-group SIGTERMs of evaluate)."""
    monkeypatch.setattr(dataset, "_kill_workers", lambda workers, children=True: None)  # (no process to kill)
    heard_at = []
    for line in range(1, 400):
        heard, after, ended = _heard_at(line)
        if not heard:
            break
        heard_at.append((line, ended))
        assert not after, (line, after)
        assert ended is None or "killed by SIGKILL" in str(ended), (line, ended)  # (None: heard after the last
    said = [line for line, ended in heard_at if ended is not None]  # batch; kept for the next epoch's start)
    assert len(said) > 20  # (the start, the look after it, and the batches' waits were all tried)


def test_a_death_heard_as_a_stop_leaves_is_kept_not_raised_in_the_stops_way(monkeypatch):
    """Was: the SIGCHLD handler raised the death inside the clean-up of code a stop's KeyboardInterrupt was leaving
    (a queue's feeder thread starting as evaluate's loader started: the thread's Condition lost its lock, and
    evaluate ended with "RuntimeError: release unlocked lock" and a traceback, exit 1, in 1 of 85 process-group
    SIGTERMs). The death is kept for the next wait; the stop goes on."""
    import signal

    import torch
    from torch.utils.data._utils import signal_handling

    installed = []
    monkeypatch.setattr(signal_handling, "_SIGCHLD_handler_set", False)
    monkeypatch.setattr(signal, "signal", lambda sig, handler: installed.append(handler))
    monkeypatch.setattr(signal, "getsignal", lambda sig: signal.SIG_DFL)

    def fails():
        raise RuntimeError("DataLoader worker (pid 7) is killed by signal: Terminated. ")

    monkeypatch.setattr(torch._C, "_error_if_any_worker_fails", fails)
    dataset.watch_workers()
    handler, = installed
    _DIED.update(error=None, waiting=True)
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            handler(signal.SIGCHLD, None)  # (no error: the stop goes on)
        assert isinstance(_DIED["error"], WorkerDied)
        _DIED["error"] = None
        with pytest.raises(WorkerDied, match="Terminated"):  # (no stop on its way: raised where it is awaited)
            handler(signal.SIGCHLD, None)
    finally:
        _DIED.update(error=None, waiting=False)


@pytest.mark.parametrize("words, sig", [
    ("DataLoader worker (pid 41) is killed by signal: Terminated. ", "SIGTERM"),
    ("DataLoader worker (pid 41) is killed by signal: Killed.", "SIGKILL"),
    ("DataLoader worker (pid 41) is killed by signal: Bus error. It is possible that dataloader's workers are out of "
     "shared memory.", "SIGBUS"),
])
def test_a_death_in_torchs_words_is_said_in_leaps(monkeypatch, words, sig):
    """A worker's death known only by torch's error (not of the loader awaited, or not reaped yet) was said in
    torch's words ("is killed by signal: Terminated."), another in leap's ("was killed by SIGTERM"): one wording."""
    monkeypatch.setattr(dataset, "_kill_workers", lambda workers, children=True: None)
    said = str(dataset._died_error(RuntimeError(words), "--workers", []))
    assert said.startswith(f"a DataLoader worker (pid 41) was killed by {sig} ("), said
    assert ("/dev/shm" in said) is (sig == "SIGBUS") and ("out-of-memory" in said) is (sig == "SIGKILL")


def test_a_stop_as_a_loader_starts_is_raised_once_it_has_started():
    """Was: the stop's KeyboardInterrupt came wherever the main process was in torch's start, and could leave a
    queue's lock held (the stop then hung for ever as the workers were stopped) or break a thread's start. It is
    raised once the start is done (its handler restored), never inside it."""
    import os
    import signal
    import time

    done = []

    class Loader:
        num_workers = 2

        def __iter__(self):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # (where Python would raise it)
            done.append(1)
            return iter([])

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        dataset._start(Loader())
    assert done == [1]
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.parametrize("sig, rc, said", [("SIGTERM", 143, "stopped by SIGTERM"), ("SIGHUP", 129, "stopped by SIGHUP")])
def test_a_stop_while_leap_loads_is_one_line(tmp_path, sig, rc, said):
    """Was: a SIGTERM or SIGHUP as `leap` loaded its CLI (before cli's main() set the stage's handlers) ended the
    process without a word (a scheduler's log showed nothing). The `leap` script's entry sets them first."""
    import os
    import signal
    import subprocess
    from pathlib import Path

    script = f"""
import importlib.abc, os, runpy, signal, sys
class Stop(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "typer":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.{sig})
        return None
sys.meta_path.insert(0, Stop())
sys.argv[0] = "leap"
runpy.run_module("leap_cli", run_name="__main__")
"""
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", script, "extract", "--workdir", str(tmp_path)], capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(root)}, cwd=root, timeout=60,
                       preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))  # (not nohup's, as in CI)
    assert r.returncode == rc and r.stderr.strip() == f"{said}: the command had not started: nothing was written", \
        (r.returncode, r.stderr[-800:])
    assert not any(tmp_path.iterdir())


def test_a_sigterm_while_torch_loads_is_taken_once_it_has_loaded(tmp_path):
    """Was: a SIGTERM as a stage imported torch (evaluate's first second) raised its KeyboardInterrupt inside
    torch's C++ start-up (``torch._C._c10d_init`` runs Python code), which ended the process in C++'s terminate:
    "terminate called after throwing an instance of 'pybind11::error_already_set'", SIGABRT, exit 134 (3 of ~430
    SIGTERMs to evaluate's process group). The stop is taken once the import is done. (A stand-in `torch` package
    that signals itself as it loads.)"""
    import os
    import subprocess
    from pathlib import Path

    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("import os, signal, time\nos.kill(os.getpid(), signal.SIGTERM)\n"
                                      "time.sleep(0.3)\nLOADED = True\n")
    script = f"""
import os, signal, sys
from leap_cli import cli
cli._state["pid"] = os.getpid()
signal.signal(signal.SIGTERM, cli._on_sigterm)
sys.path.insert(0, {str(tmp_path / "fake")!r})
try:
    import torch
    import time
    time.sleep(1)
    print("not stopped")
except KeyboardInterrupt:
    print("stopped", getattr(sys.modules.get("torch"), "LOADED", False))
"""
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(root)}, cwd=tmp_path, timeout=60)
    assert r.stdout.strip() == "stopped True", (r.stdout, r.stderr[-800:])
