"""Attack (helper mut57): a hand-made mutation run over session 57's code (`git diff 38f55d2 8fefc30 -- leap_cli`):
common.py's new_pool and _pool_class (its __init__ and _repopulate_pool overrides, the worker-handler's stop, the
threading.excepthook filter), _kill_all, _pool_results' dead-worker test, rerun's command from sys.argv;
shards/dataset.py's LOST_BATCH_EXIT, _batch_not_handed_over, _worker_error, _died_error's lost-batch branch,
_lost_fix and Guarded's use of it; cli.py's quiet teardown after EAGAIN and "can't start new thread"; media/audio.py's
MAX_SAMPLE in _finite; media/dsp.py's hann_stft scale; commands/evaluate.py's _submit_command (shell_word);
programs/generate.py's `held` message; shards/transforms.py's lazy torch import.

70 mutants by hand (common.py: 23 new_pool/_pool_class/_kill_all, 4 _pool_results, 4 rerun; dataset.py: 17;
cli.py: 4; audio.py: 6; dsp.py: 3; evaluate.py: 4; generate.py: 3; transforms.py: 2), each run against
test_attack_s57_s57attack.py, test_worker_failures.py, test_attack_s56_s56nproc.py (pool), test_attack_s53_mut53.py,
test_attack_s53_attack2.py (dataset), test_cli_conventions.py, test_mut_shards_writer.py (rerun),
test_attack_s57_mut56.py, test_attack_s56_s56audio.py, test_dsp.py, test_audio_events.py (media),
test_attack_s57_docs57.py, test_late_commands.py, test_eval_e2e.py and the other _submit_command tests (evaluate),
test_programs_generate_resume.py -k settings, test_shards.py -k torch, test_mut_scoring_vocab_info.py.
Killed before: 41. Survivors: 29. Killed by this file: 20 (context=ctx dropped; the excepthook filter's thread name,
OSError narrowed to BlockingIOError, its RuntimeError case, its call of the hook before; ``except Exception`` in the
__init__ override; the change_notifier's put, the workers' join, the kill before the handler's stop; one try around
_kill_all's loop; ``if not dead: continue`` dropped and ``pid not in now`` alone; LOST_BATCH_EXIT = 1; _worker_error
without EOFError or without Python's hook; Guarded's two fixes unformatted; the teardown dropped after "can't start
new thread" or put after sys.exit; the batch record's presence for its ids). Equivalent: 9 -
- _pool_class without functools.cache: each pool wraps threading.excepthook once more with the same filter and
  builds the same class: what a thread's error prints and how a pool stops are unchanged;
- the handler's join(5) dropped: told TERMINATE and woken before the kill, it leaves its loop without maintaining the
  pool again (the loop tests the state after each wake);
- ``except Exception`` in the _repopulate_pool override: a KeyboardInterrupt there reaches the __init__ override's
  ``except BaseException``, which kills and joins the same workers;
- _pool_results with ``p.exitcode is not None`` alone, or ``p.exitcode`` truthy: a worker gone from ``_pool`` was
  joined by the worker-handler (its exitcode is set), and CPython removes an ended worker before it tries to start its
  replacement, so the pid test sees an exit 0 too;
- rerun taking the command from sys.argv even where the CLI passed it: the CLI's command is that same first word
  (leap's own options before it are flags);
- _batch_not_handed_over without its flush, or with the flush before the print: stderr is line-buffered (Python
  3.9+), and the line ends with a newline;
- ``< MAX_SAMPLE`` for ``<=``: a sample of exactly 1e20 is no more damage than one just under it.
No bug found in leap's code here.

Each test below fails on at least one surviving mutant (named in its docstring) and passes on the code. Every pool
is made in a Python of its own (a fork of pytest-xdist's worker could hang), all started at once from a module
fixture, each bounded.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.procs import ScriptJob, leap_main
from tests.test_programs_generate import workdir  # noqa: F401 (the fixture)

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
       "NO_COLOR": "1", "COLUMNS": "200"}

# leap's pool (new_pool) in a Python of its own, one case per run; prints one JSON line.
POOL = r'''
import errno, json, multiprocessing, os, sys, threading, time
import multiprocessing.pool as mpool
import multiprocessing.process as mproc
from leap_cli.common import _pool_class, new_pool, start_worker
from tests.procs import running

MARK = {}


def marked(_):
    return MARK.get("set")  # (set in the parent after its import: a forked worker has it, a spawned one not)


def hook():
    """Threads that fail once _pool_class has installed its threading.excepthook: which reach the hook before."""
    seen = []
    threading.excepthook = lambda a: seen.append(f"{a.thread.name}: {type(a.exc_value).__name__}")
    _pool_class()
    for name, exc in [("Thread-1 (work)", OSError(errno.EIO, "Input/output error")),
                      ("Thread-2 (_handle_workers)", BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")),
                      ("Thread-3 (_handle_workers)", OSError(errno.ENOMEM, "Cannot allocate memory")),
                      ("Thread-4 (_handle_workers)", RuntimeError("can't start new thread")),
                      ("Thread-5 (_handle_workers)", ValueError("a bug"))]:
        def boom(exc=exc):
            raise exc

        t = threading.Thread(target=boom, name=name)
        t.start()
        t.join()
    return seen


def context():
    MARK["set"] = "the parent's"
    pool = new_pool(multiprocessing.get_context("spawn"), 1, start_worker, (os.getpid(),))
    return {"worker saw": pool.apply_async(marked, (0,)).get(60)}  # (its worker dies with this process)


def thread(which, exc, slow_kill):
    """A pool of 2 whose thread running Pool.<which> cannot start (``exc``); ``slow_kill``: the main thread loses
    the CPU for 0.3 s after each SIGKILL it sends (a loaded machine)."""
    target, tstart, pstart, pkill = getattr(mpool.Pool, which), threading.Thread.start, mproc.BaseProcess.start, \
        mproc.BaseProcess.kill
    started = []

    def recording(self):
        pstart(self)
        started.append(self.pid)

    def failing(self):
        if getattr(self, "_target", None) == target:
            raise exc
        return tstart(self)

    def killing(self):
        pkill(self)
        if slow_kill:
            time.sleep(0.3)

    threading.Thread.start, mproc.BaseProcess.start, mproc.BaseProcess.kill = failing, recording, killing
    t = time.monotonic()
    try:
        new_pool(multiprocessing.get_context("fork"), 2, start_worker, (os.getpid(),))
        error = None
    except BaseException as e:
        error = type(e).__name__
    finally:
        threading.Thread.start, mproc.BaseProcess.start, mproc.BaseProcess.kill = tstart, pstart, pkill
    seconds = time.monotonic() - t
    reaped = [p for p in started if not os.path.exists(f"/proc/{p}")]  # (at once: SIGKILLed and joined)
    time.sleep(0.5)
    alive = running(started)
    return {"error": error, "seconds": seconds, "started": len(started), "reaped": len(reaped), "alive": alive,
            "threads": sorted(t.name for t in threading.enumerate() if t is not threading.main_thread())}


if __name__ == "__main__":
    how = sys.argv[1]
    if how == "hook":
        got = hook()
    elif how == "context":
        got = context()
    elif how == "interrupt":
        got = thread("_handle_tasks", KeyboardInterrupt(), False)
    elif how == "slow":
        got = thread("_handle_results", RuntimeError("can't start new thread"), True)
    else:  # (a DataLoader worker's start, then errors that end its main thread, as sys.excepthook sees them)
        import io
        from leap_cli.shards.dataset import loader_worker_init

        loader_worker_init(0)
        got = {}
        for key, exc in (("eof", EOFError("connection closed")), ("value", ValueError("a bug"))):
            sys.stderr = io.StringIO()
            sys.excepthook(type(exc), exc, None)
            got[key], sys.stderr = sys.stderr.getvalue(), sys.__stderr__
    print(json.dumps(got), flush=True)
    sys.stdout.flush()
    os._exit(0)  # (the workers die with this process: start_worker's PR_SET_PDEATHSIG)
'''


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    base = tmp_path_factory.mktemp("mut57")
    jobs = {how: ScriptJob(base, f"pool:{how}", POOL, how, env=ENV)
            for how in ("loader", "context", "hook", "interrupt", "slow")}
    try:
        yield jobs
    finally:
        for job in jobs.values():
            job.stop()


# ---- common: new_pool and _pool_class ------------------------------------------------------------------------------

def test_the_pool_hook_quiets_only_the_worker_handlers_start_failures(pools):
    """_pool_class's threading.excepthook drops the worker-handler thread's OSError (EAGAIN, ENOMEM: fork under
    ulimit -u or a memory cap) and "can't start new thread"; any other thread's error, and the handler's other
    errors, go to the hook before (mutants: the thread-name test dropped, BlockingIOError for OSError, the
    RuntimeError case dropped, the hook before never called)."""
    assert pools["hook"].result() == ["Thread-1 (work): OSError", "Thread-5 (_handle_workers): ValueError"]


def test_new_pool_starts_its_workers_by_the_context_it_is_given(pools):
    """extract and check-shards give a spawn context (check-shards' workers need no torch; extract's must not
    inherit the stage's threads); a forked worker would see the parent's state (mutant: ``context=ctx`` dropped:
    multiprocessing's default, fork on Linux)."""
    assert pools["context"].result() == {"worker saw": None}


def test_a_ctrl_c_while_the_pool_starts_its_threads_leaves_no_worker_or_thread(pools):
    """Ctrl-C (KeyboardInterrupt) that lands in Pool.__init__ as it starts its task-handler thread: the error goes
    on, the two workers are SIGKILLed and reaped, the worker-handler thread stopped (mutant: ``except Exception`` in
    the __init__ override: the workers and the thread were left running)."""
    got = pools["interrupt"].result()
    assert got["error"] == "KeyboardInterrupt" and got["started"] == 2, got
    assert got["alive"] == [] and got["threads"] == [], got


def test_a_pool_whose_thread_cannot_start_on_a_loaded_machine_stops_at_once_and_reaps_its_workers(pools):
    """The result-handler thread cannot start ("can't start new thread"), and the main thread loses the CPU after
    each SIGKILL it sends: the worker-handler thread is stopped before the workers are killed (else it starts their
    replacements, left running), it is woken to see that (else new_pool waits 5 s in its join), and every worker is
    reaped before the error goes on (mutants: the kill before the handler's stop, the change_notifier's put dropped,
    the workers' join dropped: zombies until the next start)."""
    got = pools["slow"].result()
    assert got["error"] == "RuntimeError" and got["started"] == 2, got
    assert got["alive"] == [] and got["threads"] == [], got
    assert got["seconds"] < 3, got  # (2 kills of 0.3 s each; a 5 s join is a hang here)
    assert got["reaped"] == 2, got


def test_kill_all_goes_on_past_a_process_it_cannot_kill():
    """``_kill_all``: "started or not" - a Process never started has no Popen (its kill raises AttributeError);
    the ones after it are still killed (mutant: one try around the whole loop)."""
    import multiprocessing

    from leap_cli.common import _kill_all

    killed = []
    never = multiprocessing.get_context("fork").Process(target=print)  # (not started: kill() raises)
    ok = types.SimpleNamespace(kill=lambda: killed.append("ok"))
    _kill_all([never, ok])
    assert killed == ["ok"]


def test_pool_results_waits_through_polls_where_no_worker_died():
    """A task slower than the poll: each timeout with every known worker alive is waited through; a worker that
    ended is dead whether the pool has taken it out of ``_pool`` yet or not (mutants: ``if not dead: continue``
    dropped: "a worker process died (it ended)" after the first poll; ``pid not in now`` alone)."""
    import multiprocessing

    from leap_cli.common import pool_results

    class Results:
        def __init__(self):
            self.calls = 0

        def next(self, timeout):
            self.calls += 1
            if self.calls <= 3:
                raise multiprocessing.TimeoutError
            if self.calls <= 5:
                return self.calls
            raise StopIteration

    worker = types.SimpleNamespace(pid=12345, exitcode=None)
    pool = types.SimpleNamespace(_pool=[worker])
    assert list(pool_results(pool, Results(), poll=0.01)) == [4, 5]
    worker.exitcode = -signal.SIGKILL  # (then it dies: said at the next poll)
    from leap_cli.errors import LeapError

    with pytest.raises(LeapError, match=r"a worker process died \(killed by SIGKILL\)"):
        list(pool_results(pool, Results(), poll=0.01))


# ---- dataset: the DataLoader worker's hooks and the lost batch's line ----------------------------------------------

def test_a_loader_workers_excepthook_drops_connection_errors_and_shows_any_other(capsys):
    """``_worker_error`` (sys.excepthook in a DataLoader worker): OSError and EOFError of the resource sharer's
    connections are dropped; any other error is Python's traceback (mutants: EOFError left out, the traceback of
    the others never printed)."""
    from leap_cli.shards.dataset import _worker_error

    for exc in (EOFError(), ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")):
        _worker_error(type(exc), exc, None)
    assert capsys.readouterr().err == ""
    try:
        raise ValueError("a bug in the worker")
    except ValueError as e:
        _worker_error(ValueError, e, e.__traceback__)
    err = capsys.readouterr().err
    assert "Traceback" in err and "ValueError: a bug in the worker" in err, err


def test_a_loader_worker_installs_its_excepthook(pools):
    """``loader_worker_init`` makes ``_worker_error`` the worker's sys.excepthook: there an EOFError prints
    nothing, a ValueError its traceback (mutant: the hook not installed)."""
    got = pools["loader"].result()
    assert got["eof"] == "" and "ValueError: a bug" in got["value"], got


class _Worker:
    def __init__(self, pid: int, exitcode: int | None):
        self.pid, self.exitcode, self.killed = pid, exitcode, False

    def is_alive(self) -> bool:
        return self.exitcode is None and not self.killed

    def kill(self) -> None:
        self.killed = True

    def join(self, timeout=None) -> None:
        pass


@pytest.fixture
def evaluate_argv(monkeypatch):
    from leap_cli.common import NEXT_RUN
    from leap_cli.shards import dataset

    monkeypatch.setattr(sys, "argv", ["leap", "evaluate", "--workers", "2"])
    monkeypatch.delitem(NEXT_RUN, "train", raising=False)
    monkeypatch.setitem(dataset._DIED, "error", None)
    monkeypatch.setitem(dataset._DIED, "waiting", False)
    return dataset


def test_a_worker_that_exited_with_status_1_is_not_a_lost_batch(evaluate_argv):
    """Status 1 is any Python error's; only LOST_BATCH_EXIT says the worker could not hand a batch over (mutant:
    LOST_BATCH_EXIT = 1)."""
    died = RuntimeError("DataLoader worker (pid 7) exited unexpectedly with exit code 1")
    line = evaluate_argv._died_error(died, "--workers", [_Worker(7, 1)]).one_line()
    assert "could not hand a batch over" not in line and "exited unexpectedly" in line, line


def test_the_lost_batch_is_named_though_another_worker_ended_too(evaluate_argv):
    """Two workers ended (one after a batch it could not hand over, one with an error): the line names the lost
    batch and its advice, which the worker's own line above explains (mutant: ``all`` for ``any``)."""
    lost = evaluate_argv.LOST_BATCH_EXIT
    died = RuntimeError("DataLoader worker (pid 8) exited unexpectedly with exit code 1")
    line = evaluate_argv._died_error(died, "--workers", [_Worker(8, 1), _Worker(9, lost)]).one_line()
    assert "(pid 9) could not hand a batch over" in line and "--workers" in line, line


def test_the_lost_batch_line_kills_the_other_workers_and_forgets_the_error(evaluate_argv):
    """Before the lost batch's line: the loader's live workers are killed (they ignore SIGTERM) and the kept error
    is cleared (a later loader in the same Python would raise it again) (mutants: the branch before the kill, before
    the clear)."""
    evaluate_argv._DIED["error"] = RuntimeError("DataLoader worker (pid 9) exited unexpectedly with exit code 75")
    live = _Worker(10, None)
    line = evaluate_argv._died_error(evaluate_argv._DIED["error"], "--workers",
                                     [_Worker(9, evaluate_argv.LOST_BATCH_EXIT), live]).one_line()
    assert "could not hand a batch over" in line, line
    assert live.killed and evaluate_argv._DIED["error"] is None


class _Loader:
    """A DataLoader with workers whose iterator gives one batch, then raises ``exc``."""

    def __init__(self, exc: BaseException):
        self.num_workers, self.exc, self.dataset = 2, exc, None

    def __iter__(self):
        yield {"narration_id": ["a"]}
        raise self.exc


@pytest.mark.parametrize("exc, said", [(EOFError(), "lost on its way to the main process"),
                                       (RuntimeError("DataLoader timed out after 900 seconds"), "no batch came")])
def test_guarded_says_a_lost_batch_with_its_option_and_the_rerun(evaluate_argv, exc, said):
    """Guarded's EOFError and timeout lines: the advice names the stage's option and how to run again (mutants:
    the unformatted _LOST_FIX: "{option}" and "{again}" printed as they are)."""
    from leap_cli.errors import LeapError

    batches = iter(evaluate_argv.Guarded(_Loader(exc), "--workers"))
    assert next(batches) == {"narration_id": ["a"]}
    with pytest.raises(LeapError) as e:
        next(batches)
    line = e.value.one_line()
    assert said in line and "fewer workers (--workers)" in line and "run the same command again" in line, line
    assert "{" not in line, line


# ---- cli: the quiet teardown after a process limit -----------------------------------------------------------------

def _unraisable(exc: BaseException):
    return types.SimpleNamespace(exc_value=exc, exc_type=type(exc), exc_traceback=None, err_msg=None, object=None)


@pytest.mark.parametrize("exc", [BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable"),
                                 RuntimeError("can't start new thread")])
def test_after_a_process_or_thread_limit_the_half_built_objects_teardown_is_quiet(monkeypatch, capsys, exc):
    """After the one line for EAGAIN or "can't start new thread" (a loader's workers that could not start), the
    "Exception ignored in ... __del__" AttributeErrors and OSErrors are dropped, any other still shown (mutants:
    EAGAIN left out of the errnos, the teardown dropped after the thread's line or put after sys.exit)."""
    from leap_cli import cli

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(type(u.exc_value)))

    def boom(ctx):
        raise exc

    monkeypatch.setattr(cli, "_note_options", boom)
    code, _, err = leap_main(monkeypatch, capsys, "info")
    assert code == 2 and "Traceback" not in err, err
    for e in (AttributeError("'_MultiProcessingDataLoaderIter' object has no attribute '_shutdown'"),
              OSError(errno.EBADF, "Bad file descriptor"), ValueError("a bug")):
        sys.unraisablehook(_unraisable(e))
    assert seen == [ValueError]


# ---- media: huge float samples -------------------------------------------------------------------------------------

def _float_wav(path: Path, y: np.ndarray, rate: int = 48000) -> Path:
    sf.write(path, y.astype(np.float32), rate, subtype="FLOAT")
    return path


def _noise() -> np.ndarray:
    return (0.1 * np.random.default_rng(57).standard_normal(96000)).astype(np.float32)


@pytest.mark.parametrize("value", [-3.39e38, 1e30])
def test_a_huge_sample_of_either_sign_is_read_as_silence_and_said(tmp_path, caplog, value):
    """A float WAV's damaged samples, negative near float32's lowest (bytes FF7F7F7F) or 1e30 (over MAX_SAMPLE,
    1e20): silence, counted in the warning; the 16 kHz samples finite (mutants: np.abs dropped: -3.4e38 passed
    and overflowed to -inf; MAX_SAMPLE raised to 1e38: 1e30 gave a loudness of 580 dB)."""
    from leap_cli.media import audio

    y = _noise()
    y[40000:40100] = value
    with caplog.at_level(logging.WARNING, logger="leap_cli.media.audio"), np.errstate(all="ignore"):
        got = audio.read_audio(_float_wav(tmp_path / "P01_05.wav", y), 0.0, 2.0, record="P01_05_0")
    assert np.isfinite(got).all() and np.abs(got).max() < 10, float(np.abs(got).max())
    assert "100 audio samples are not a number (NaN, infinite, or over 1e+20)" in caplog.text, caplog.text


def test_int32_scaled_float_samples_are_sound_not_damage(tmp_path, caplog):
    """int32 PCM written as floats (up to 2.1e9) is loud, not damaged: kept and not warned about (mutant:
    MAX_SAMPLE = 1e5)."""
    from leap_cli.media import audio

    y = np.clip(_noise() * 1e10, -2.1e9, 2.1e9)
    with caplog.at_level(logging.WARNING, logger="leap_cli.media.audio"):
        got = audio.read_audio(_float_wav(tmp_path / "P01_06.wav", y), 0.0, 2.0, record="P01_06_0")
    assert "not a number" not in caplog.text, caplog.text
    assert np.abs(got).max() > 1e8, float(np.abs(got).max())


# ---- generate-programs: an output of only its settings -------------------------------------------------------------

def test_an_unreadable_batch_record_beside_a_settings_only_output_claims_no_requests_out(workdir):
    """OUT.batch.json that cannot be read (hand-edited, cut off: "deleting it is safe") lists no Batch request, so
    the refusal of other settings must not say requests "are out" (mutant: the file's presence for its ids)."""
    from leap_cli.errors import LeapError
    from leap_cli.programs.generate import GenerateConfig, batch_pending_path, generate_programs

    assert generate_programs(GenerateConfig(workdir=workdir, split="val")).statuses
    out = workdir / "programs" / "val.jsonl"
    out.write_text("")  # (its settings file kept: a run stopped before its first record)
    batch_pending_path(out).write_text('{"ids": ["P01_01_0"')  # (cut off)
    with pytest.raises(LeapError) as e:
        generate_programs(GenerateConfig(workdir=workdir, split="val", repair_rounds=0))
    said = e.value.one_line()
    assert "a run stopped before its first program" in said and "are out" not in said, said
