"""A hand-made mutation run over session 67's own changes to leap_cli/ (``git diff 3c7d1c6``: shards/dataset.py's
watch_workers handler, Guarded._failed, DEATH_SHOWS, _kill_workers(children=) and the post-start dead-worker check;
cli.py's _redeliver_dropped_stops; epic/hand_objects.py's _frame_number; epic/classes.py's read_csv;
programs/prompt.py's _PATH; evaluate/scores.py's nested ids; media/video.py's _fail; programs/validate.py's
consistent(); train/checkpoint.py). 87 mutants: 82 killed (36 of them only by this file), 5 left (a poll interval
and the redelivery timer's delay: timing only; the fast one-byte path of _frame_number's key dropped, the counter's
reset per _main, the timer's daemon flag: equivalent for a real run). Found: no fault.

What this file kills that survived before: _frame_number's one-byte fast paths taken for 0x80 (a continuation
byte), IndexError not tolerated after a frame number, the truncation check dropped, 0 for an absent number, a
fixed32 skipped as 8 bytes, a negative number unsigned; read_csv's leading spaces kept and cells past the header
stripped (a list); a path through two spaced folders cut at the second, a lowercase drive letter; _check_crcs
letting zipfile's RuntimeError (an encrypted entry) through; the death wait not ending as the death shows; a lost
batch not killing the process's other children; the post-start dead-worker check dropped, looking at the persistent
iterator only, or its words changed; an OSError "timed out" said as the loader's timeout, and the timeout said as
a lost batch; a loader without workers waiting or wrapping its error; the SIGCHLD handler's WorkerDied (kept with
its traceback, not quieted, torch's error raised as it was); the redelivery hook's conditions, count and signal;
narration ids nested past row 0 or of two columns."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from leap_cli.common import LeapError
from leap_cli.epic.hand_objects import _frame_number
from leap_cli.shards import dataset as D
from tests.test_s67_worker_deaths import _Loader as _PersistentLoader, _Worker


def _v(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _frame(n: int) -> bytes:
    return b"\x10" + _v(n)


@pytest.mark.parametrize("msg, number", [
    (_v(16 << 3) + _v(5) + _frame(7), 7),  # (a two-byte key, 0x80 0x01: field 16)
    (b"\x0a" + _v(128) + b"\x00" * 128 + _frame(7), 7),  # (a two-byte length, 0x80 0x01)
    (bytes([3 << 3 | 5]) + b"\x01\x02\x03\x04" + _frame(7), 7),  # (a fixed32: 4 bytes)
    (bytes([4 << 3 | 1]) + b"\x00" * 8 + _frame(7), 7),  # (a fixed64: 8 bytes)
    (_frame(7) + b"\x0a", 7),  # (damage after the number: a length that is not there)
    (_frame(7) + b"\x0a\x05ab", 7),  # (damage after the number: a field cut short)
    (b"", 0), (b"\x0a\x00", 0)])  # (proto3 omits a frame number 0)
def test_the_frame_number_of_a_message(msg, number):
    assert _frame_number(msg) == number


@pytest.mark.parametrize("msg", [b"\x0a\x0aab", b"\x0a", bytes([3 << 3 | 5]) + b"\x01", b"\x0f"])
def test_a_message_damaged_before_any_frame_number_raises(msg):
    with pytest.raises((ValueError, IndexError)):  # (both said by HandObjectFrames as the message's damage)
        _frame_number(msg)


def test_csv_cells_lose_leading_spaces_too(tmp_path):
    """("a, b": a space after each comma, as some tools write CSV.)"""
    from leap_cli.epic.classes import read_csv

    path = tmp_path / "EPIC_100_validation.csv"
    path.write_text("narration_id, participant_id\n  P01_101_0,\tP01\n", encoding="utf-8")
    assert read_csv(path, ("narration_id", "participant_id")) == [{"narration_id": "P01_101_0",
                                                                    "participant_id": "P01"}]


def test_a_path_through_two_folders_with_spaces_is_stripped_whole():
    from leap_cli.programs.prompt import strip_paths

    assert strip_paths("not in /Volumes/My Passport/EPIC Kitchens/P01/x.wav, said") == "not in <path>, said"
    assert strip_paths("in D:\\My Data\\EPIC Kitchens\\P01.MP4 now") == "in <path> now"


def test_an_encrypted_archive_is_left_to_torch_load(tmp_path):
    """zipfile raises RuntimeError (no NotImplementedError) for an entry it needs a password for."""
    import zipfile

    from leap_cli.train.checkpoint import _check_crcs

    path = tmp_path / "last.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"x" * 100)
    raw = bytearray(path.read_bytes())
    for sig, flags in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # (the encrypted bit of each header's flags)
        at = raw.index(sig) + flags
        raw[at] |= 1
    path.write_bytes(bytes(raw))
    with zipfile.ZipFile(path) as z, pytest.raises(RuntimeError):
        z.testzip()
    assert _check_crcs(path) is None


class _Loader:
    """A persistent loader whose iterator hands ``batches`` batches, then raises ``exc`` (None: ends)."""

    def __init__(self, exc: BaseException | None, workers: list, batches: int = 1):
        self.num_workers, self.dataset, self.exc, self.batches = len(workers), None, exc, batches
        self._iterator = type("It", (), {"_workers": workers})()

    def __iter__(self):
        return self._batches()

    def _batches(self):
        for _ in range(self.batches):
            yield {"narration_id": ["a"]}
        if self.exc is not None:
            raise self.exc


def test_the_wait_for_a_death_ends_as_it_shows(monkeypatch):
    monkeypatch.setattr(D, "DEATH_SHOWS", 6.0)
    workers = [_Worker(101, 0.3), _Worker(102, None)]
    batches = iter(D.Guarded(_Loader(EOFError(), workers), "--workers"))
    next(batches)
    t = time.monotonic()
    with pytest.raises(LeapError, match="pid 101"):
        next(batches)
    assert time.monotonic() - t < 3


def test_a_worker_dead_as_its_loader_started_is_said_before_any_batch():
    workers = [_Worker(101, 0.0), _Worker(102, None)]
    batches = iter(D.Guarded(_Loader(None, workers, batches=3), "--workers"))
    with pytest.raises(LeapError, match="pid 101"):
        next(batches)
    assert workers[1].killed


def test_an_oserror_that_says_timed_out_goes_on_as_it_is(monkeypatch):
    """(Only torch's RuntimeError "timed out" is the loader's timeout: a socket's TimeoutError is no lost batch.)"""
    monkeypatch.setattr(D, "DEATH_SHOWS", 0.1)
    workers = [_Worker(101, None)]
    batches = iter(D.Guarded(_Loader(TimeoutError("timed out"), workers), "--workers"))
    next(batches)
    with pytest.raises(TimeoutError):
        next(batches)
    assert workers[0].killed


def test_a_lost_batch_stops_the_processes_other_children(monkeypatch):
    """The stage stops on a lost batch (EOFError): its exit would wait for every child that ignores SIGTERM."""
    monkeypatch.setattr(D, "DEATH_SHOWS", 0.1)
    other = multiprocessing.get_context("fork").Process(target=time.sleep, args=(30,), daemon=True)
    other.start()
    try:
        workers = [_Worker(101, None)]
        batches = iter(D.Guarded(_Loader(EOFError(), workers), "--workers"))
        next(batches)
        with pytest.raises(LeapError, match="lost on its way"):
            next(batches)
        other.join(5)
        assert workers[0].killed and not other.is_alive()
    finally:
        if other.is_alive():
            other.kill()
        other.join(5)


def test_a_dropped_stop_is_sent_again_once_each_in_this_process_only(monkeypatch):
    """cli's ``sys.unraisablehook``: a dropped KeyboardInterrupt is sent again as the stop that came (its signal),
    at most _REDELIVER times; any other unraisable, or one in a forked child, goes to the hook before."""
    import os
    import signal
    import sys
    import types

    from leap_cli import cli

    before = []
    monkeypatch.setattr(sys, "unraisablehook", before.append)
    for key, value in (("pid", os.getpid()), ("stop_signal", signal.SIGUSR1), ("redelivered", 0)):
        monkeypatch.setitem(cli._state, key, value)
    got = []
    previous = signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))
    try:
        cli._redeliver_dropped_stops()
        hook = sys.unraisablehook
        cli._redeliver_dropped_stops()
        assert sys.unraisablehook is hook, "installed twice: each dropped stop would be sent again twice"
        dropped = types.SimpleNamespace(exc_value=KeyboardInterrupt())
        hook(dropped)
        end = time.monotonic() + 5
        while not got and time.monotonic() < end:
            time.sleep(0.01)
        time.sleep(0.2)
        assert got == [signal.SIGUSR1] and before == [] and cli._state["redelivered"] == 1
        other = types.SimpleNamespace(exc_value=ValueError())
        hook(other)
        cli._state["redelivered"] = cli._REDELIVER
        hook(dropped)
        cli._state["redelivered"], cli._state["pid"] = 0, os.getpid() + 1
        hook(dropped)
        time.sleep(0.2)
        assert before == [other, dropped, dropped] and got == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_narration_ids_nested_past_the_first_row_are_refused():
    import numpy as np

    from leap_cli.evaluate.scores import normalize_scores

    raw = {"narration_id": ["P01_101_0", ["P01_101_1"]], "verb_output": np.zeros((2, 97)),
           "noun_output": np.zeros((2, 300))}
    with pytest.raises(LeapError, match=r"row 1 holds \['P01_101_1'\]"):
        normalize_scores(raw, "results.pkl")


class _Epoch:
    """A loader's iterator of its own (not persistent): its workers are its own, the loader keeps none."""

    def __init__(self, workers: list):
        self._workers = workers

    def __iter__(self):
        return self

    def __next__(self):
        return {"narration_id": ["a"]}


def test_a_worker_dead_as_a_loader_without_persistent_workers_started_is_said():
    workers = [_Worker(101, 0.0), _Worker(102, None)]
    loader = type("L", (), {"num_workers": 2, "dataset": None, "_iterator": None,
                            "__iter__": lambda self: _Epoch(workers)})()
    with pytest.raises(LeapError, match="pid 101"):
        next(iter(D.Guarded(loader, "--workers")))


_HANDLER = r"""
import signal, sys, types
import torch
from torch.utils.data._utils import signal_handling
from leap_cli.shards import dataset as D

signal_handling._SIGCHLD_handler_set = False
before = []
sys.unraisablehook = before.append
def fails():
    raise RuntimeError("DataLoader worker (pid 5) is killed by signal: Killed.")
torch._C._error_if_any_worker_fails = fails
D.watch_workers()
handler = signal.getsignal(signal.SIGCHLD)
handler(signal.SIGCHLD, sys._getframe())
kept = D._DIED["error"]
assert type(kept) is D.WorkerDied and kept.__traceback__ is None and "pid 5" in str(kept), repr(kept)
sys.unraisablehook(types.SimpleNamespace(exc_value=D.WorkerDied("x")))
sys.unraisablehook(types.SimpleNamespace(exc_value=ValueError("y")))
assert [type(u.exc_value) for u in before] == [ValueError], before
D._DIED["waiting"] = True
try:
    handler(signal.SIGCHLD, None)
except D.WorkerDied as e:
    assert e.__cause__ is None and e.__suppress_context__, e
else:
    raise AssertionError("not raised as a WorkerDied")
print("ok")
"""


def test_the_sigchld_handler_keeps_a_worker_death_without_its_frames_and_quiets_it():
    """(A process of its own: the handler replaces the process's SIGCHLD handler and torch's flag.)"""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, PYTHONPATH=str(Path(D.__file__).resolve().parents[2]))
    run = subprocess.run([sys.executable, "-c", _HANDLER], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def test_a_row_with_an_empty_cell_past_the_header_is_read(tmp_path):
    """(csv gives the extra cells as a list under the key None: no text to strip. An empty one, a trailing comma as
    some tools write, is read; one with text is refused, test_s67_small.)"""
    from leap_cli.epic.classes import read_csv

    path = tmp_path / "EPIC_100_validation.csv"
    path.write_text("narration_id,participant_id\nP01_101_0 ,P01, \n", encoding="utf-8")
    rows = read_csv(path, ("narration_id", "participant_id"))
    assert rows[0]["narration_id"] == "P01_101_0" and rows[0]["participant_id"] == "P01"


def test_a_lowercase_drive_letter_is_a_path():
    from leap_cli.programs.prompt import strip_paths

    assert strip_paths("cannot open c:\\My Data\\P01\\P01_11.MP4: gone") == "cannot open <path>: gone"


def test_a_negative_frame_number_is_read_as_decoding_reads_it():
    assert _frame_number(_frame(2 ** 64 - 1)) == -1


def _NoWorkers(exc: BaseException, where: str):
    """A loader without workers whose epoch raises ``exc`` at its start ("start") or after one batch."""
    return _PersistentLoader(exc, where, [])


@pytest.mark.parametrize("where", ["start", "batch"])
@pytest.mark.parametrize("exc", [EOFError, lambda: ConnectionResetError(104, "reset")])
def test_a_loader_without_workers_lets_its_error_go_on_at_once(where, exc):
    """No worker to have died or lost a batch: the error is the dataset's own, without the wait for a death."""
    error = exc()
    batches = iter(D.Guarded(_NoWorkers(error, where), "--workers"))
    if where == "batch":
        next(batches)
    t = time.monotonic()
    with pytest.raises(type(error)):
        next(batches)
    assert time.monotonic() - t < 1


def test_torchs_error_for_a_dead_worker_is_said_as_its_death_though_none_shows_dead(monkeypatch):
    monkeypatch.setattr(D, "DEATH_SHOWS", 0.1)
    workers = [_Worker(101, None)]
    batches = iter(D.Guarded(_Loader(RuntimeError("DataLoader worker (pid 101) is killed by signal: Killed."),
                                     workers), "--workers"))
    next(batches)
    with pytest.raises(LeapError, match="pid 101"):
        next(batches)
    assert workers[0].killed


def test_a_loader_timeout_is_said_as_no_batch_in_its_time(monkeypatch):
    monkeypatch.setattr(D, "DEATH_SHOWS", 0.1)
    workers = [_Worker(101, None)]
    error = RuntimeError(f"DataLoader timed out after {D.LOADER_TIMEOUT} seconds")
    batches = iter(D.Guarded(_Loader(error, workers), "--workers"))
    next(batches)
    with pytest.raises(LeapError, match=f"no batch came from the DataLoader's workers in {D.LOADER_TIMEOUT} s"):
        next(batches)
    assert workers[0].killed


def test_narration_ids_of_two_columns_are_refused():
    import numpy as np

    from leap_cli.evaluate.scores import normalize_scores

    raw = {"narration_id": [("P01_101_0", "open door"), ("P01_101_1", "close door")],
           "verb_output": np.zeros((2, 97)), "noun_output": np.zeros((2, 300))}
    with pytest.raises(LeapError, match="not one id per row"):
        normalize_scores(raw, "results.pkl")


class _Exited(_Worker):
    @property
    def exitcode(self):
        return None if self.is_alive() else 1


def test_a_worker_that_exited_with_an_error_as_its_loader_started_is_said_with_its_code():
    workers = [_Exited(101, 0.0), _Worker(102, None)]
    with pytest.raises(LeapError) as e:
        next(iter(D.Guarded(_Loader(None, workers, batches=3), "--workers")))
    assert "DataLoader worker (pid 101) exited unexpectedly with exit code 1" in e.value.one_line(), e.value.one_line()
