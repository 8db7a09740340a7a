"""Mutation run of session 53's changes: tests that kill the mutants the session's own tests let live.
Covers the 200-reply checks (_json_object, reply_problem's redaction), --retry-errors with --retry-invalid on a
repair_failed record, writer_of / refuse_beside_a_live_writer with an unnamed holder, the open-files teardown hook,
the worker's lost-batch line and record_provenance's label check."""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import types

import pytest

from leap_cli.errors import LeapError
from leap_cli.programs.backends import _json_object, reply_problem
from leap_cli.programs.generate import generate_programs
from tests.programs_llm_server import ScriptedServer, narration_id_of
from tests.test_attack_s53_s53attack import (  # noqa: F401 (fixtures)
    ROWS, broken_off, config, good, good_reply, records, repair_failed_output, trained, workdir)


# ---- a 200 body: what is a chat completion ----------------------------------------------------------------------

@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"null", b"[" * 100000 + b"]" * 100000, b"\xff\xfe{",
                                  b"{\"a\": 1", b""])
def test_a_200_body_that_is_no_json_object_is_none_never_an_exception(body):
    assert _json_object(body) is None


def test_a_200_body_that_is_an_object_is_that_object():
    assert _json_object(b'{"choices": []}') == {"choices": []}


def test_an_error_in_the_first_choice_is_said_without_the_api_key():
    data = {"choices": [{"message": {"content": "x"}, "finish_reason": "stop",
                         "error": {"message": "upstream refused Authorization: Bearer sk-live-abcdef0123456789"}}]}
    problem = reply_problem(data)
    assert problem and "sk-live-abcdef0123456789" not in problem and "upstream refused" in problem


@pytest.mark.parametrize("finish", ["error", "insufficient_system_resource", "abort"])  # OpenRouter, DeepSeek, vLLM
def test_each_broken_off_finish_reason_is_a_problem_and_stop_or_length_is_not(finish):
    choice = {"message": {"content": "{}"}, "finish_reason": finish}
    assert "broke the reply off" in reply_problem({"choices": [choice]})
    for fine in ("stop", "length", None, "tool_calls"):
        assert reply_problem({"choices": [{**choice, "finish_reason": fine}]}) is None


def test_a_first_choice_without_a_message_is_a_problem_even_when_it_finished():
    assert "no message" in reply_problem({"choices": [{"finish_reason": "stop", "text": "{}"}]})
    assert "no message" in reply_problem({"choices": [{"message": "{}", "finish_reason": "stop"}]})


# ---- --retry-errors together with --retry-invalid on a repair_failed record ----------------------------------------

def test_retry_errors_with_retry_invalid_asks_a_repair_failed_record_from_the_start_and_says_so(workdir, good,
                                                                                                  caplog):
    """--retry-invalid asks every invalid record again, its cached replies unused: the warning says that, not that
    only the repair turn is sent."""
    target, sizes = repair_failed_output(workdir, good)
    caplog.clear()
    with ScriptedServer(lambda body, n: good_reply(good, body)) as server:
        generate_programs(config(workdir, server, repair_rounds=2, retry_failed=True, retry_invalid=True))
        assert [len(b["messages"]) for b in server.requests] == [sizes[0]]
    said = " ".join(r.getMessage() for r in caplog.records if "asked for again" in r.getMessage())
    assert "1 invalid (--retry-invalid" in said and "repair turn" not in said, said
    rec = records(workdir)[target]
    assert rec["status"] == "valid" and "repair_failed" not in rec["provenance"]


def test_which_records_retry_errors_and_retry_invalid_redo():
    """--retry-errors: the failed records and the invalid ones whose repair turn's request failed, never a plain
    invalid one (its rounds were answered and paid) nor a valid one; --retry-invalid: every invalid one; a Batch
    file's run (retry_repairs=False): no repair_failed one."""
    from leap_cli.programs.generate import GenerateConfig

    failed, valid = {"status": "failed"}, {"status": "valid", "provenance": {"repair_failed": True}}
    plain, repair = {"status": "invalid", "provenance": {"rounds": 2}}, {"status": "invalid",
                                                                       "provenance": {"repair_failed": True}}
    cases = {(True, False, True): [True, False, False, True], (True, False, False): [True, False, False, False],
             (False, True, True): [False, False, True, True], (False, False, True): [False, False, False, False]}
    for (errors, invalid, repairs), want in cases.items():
        cfg = GenerateConfig(retry_failed=errors, retry_invalid=invalid, retry_repairs=repairs)
        assert [cfg.redo(r) for r in (failed, valid, plain, repair)] == want, (errors, invalid, repairs)
    assert GenerateConfig().retry_repairs is True


# ---- a live writer beside: a lock held by a process that did not write its name ------------------------------------

@contextlib.contextmanager
def _bare_flock(lock_path):
    """The lock held as an older leap (or another tool) holds it: flocked, no 'PID HOST' written in it."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


def test_writer_of_is_none_where_nobody_holds_the_lock_and_says_who_does(tmp_path):
    from leap_cli.io import OutputLock, writer_of

    out = tmp_path / "val.jsonl"
    assert writer_of(out) is None  # no lock file
    with _bare_flock(out.with_name("val.jsonl.lock")):
        assert writer_of(out) == "another leap process"  # (its holder wrote no name)
    assert writer_of(out) is None  # let go: nobody holds it
    with OutputLock(out):
        assert writer_of(out) == f"process {os.getpid()} on {__import__('socket').gethostname()}"


def test_a_writer_whose_lock_names_no_process_still_refuses_the_other_run(tmp_path):
    from leap_cli.io import refuse_beside_a_live_writer

    whole = tmp_path / "programs" / "val.jsonl"
    part = whole.with_name("val.shard1of2.jsonl")
    with _bare_flock(whole.with_name("val.jsonl.lock")):
        with pytest.raises(LeapError) as e:
            refuse_beside_a_live_writer(part)
        line = e.value.one_line()
        assert "without --shard is writing val.jsonl (another leap process):" in line, line
    with _bare_flock(part.with_name(part.name + ".lock")):
        with pytest.raises(LeapError) as e:
            refuse_beside_a_live_writer(whole)
        line = e.value.one_line()
        assert "part 1/2 of it is being made by a --shard run (another leap process):" in line, line
    refuse_beside_a_live_writer(whole)
    refuse_beside_a_live_writer(part)


# ---- the open-files limit: the teardown hook; a worker's lost batch in one line ------------------------------------

def test_the_teardown_hook_drops_only_attribute_and_os_errors(monkeypatch):
    import sys

    from leap_cli.cli import _quiet_teardown

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(type(u.exc_value)))
    _quiet_teardown()
    for exc in (AttributeError("x"), OSError(24, "Too many open files"), ValueError("y"), RuntimeError("z")):
        sys.unraisablehook(types.SimpleNamespace(exc_value=exc, exc_type=type(exc), exc_traceback=None,
                                                 err_msg=None, object=None))
    assert seen == [ValueError, RuntimeError]


def test_a_batch_a_worker_cannot_hand_over_is_one_line_on_stderr_and_the_worker_ends(capsys, monkeypatch):
    from leap_cli.shards.dataset import LOST_BATCH_EXIT, _batch_not_handed_over

    exits: list = []
    monkeypatch.setattr(os, "_exit", exits.append)  # (the worker's end, here in the test's process)
    _batch_not_handed_over(OSError(24, "Too many open files"), object())
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("leap: a DataLoader worker could not hand a batch")
    assert "Too many open files" in err and "Traceback" not in err
    assert exits == [LOST_BATCH_EXIT]


class _FailingStart:
    """A loader whose iterator starts a worker, then fails (the open-files limit reached before the next)."""
    num_workers = 2
    dataset = None

    def __init__(self):
        self.child = None

    def __iter__(self):
        import multiprocessing
        import time

        self.child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,), daemon=True)
        self.child.start()
        raise OSError(24, "Too many open files")


def test_a_guarded_loader_whose_start_fails_leaves_no_worker_running():
    from leap_cli.shards.dataset import Guarded

    loader = _FailingStart()
    try:
        with pytest.raises(OSError):
            next(iter(Guarded(loader, "--workers")))
        loader.child.join(5)
        assert not loader.child.is_alive()
    finally:
        if loader.child is not None and loader.child.is_alive():
            loader.child.kill()
            loader.child.join(5)


# ---- resume: record_provenance's labels ----------------------------------------------------------------------------

def _prov(sha="a" * 64, labels=None):
    train = {"programs": {"sha256": sha}}
    if labels is not None:
        train["labels"] = labels
    return {"train": train}


def test_a_resume_of_a_run_from_before_labels_were_kept_is_not_a_relabelling(tmp_path, caplog):
    from leap_cli.train.loop import record_provenance

    record_provenance(tmp_path, _prov(), resumed=False)  # (written by a leap that kept no labels)
    caplog.set_level(logging.WARNING)
    held = record_provenance(tmp_path, _prov(labels={"annotations": "h1", "noun_classes": "h2"}), resumed=True)
    assert "earlier" not in held and not [r for r in caplog.records if "labels" in r.getMessage()]


def test_a_resume_on_relabelled_shards_names_what_changed_and_keeps_the_earlier_part(tmp_path, caplog):
    from leap_cli.train.loop import record_provenance

    record_provenance(tmp_path, _prov(labels={"annotations": "h1", "noun_classes": "h2"}), resumed=False)
    caplog.set_level(logging.WARNING)
    held = record_provenance(tmp_path, _prov(labels={"annotations": "h1", "noun_classes": "NEW"}), resumed=True)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "EPIC_100_noun_classes.csv changed" in said and "annotation rows" not in said, said
    assert [e["train"]["labels"]["noun_classes"] for e in held["earlier"]] == ["h2"]
    caplog.clear()  # the same labels again: nothing said, nothing more kept
    held = record_provenance(tmp_path, _prov(labels={"annotations": "h1", "noun_classes": "NEW"}), resumed=True)
    assert len(held["earlier"]) == 1 and not caplog.records


# ---- the cache's migrations ---------------------------------------------------------------------------------------

def test_a_cache_opened_again_is_at_the_last_version_and_opens_a_third_time(tmp_path):
    import sqlite3

    from leap_cli.programs.store import MIGRATIONS, ProgramStore

    path = tmp_path / "cache.sqlite"
    for _ in range(3):
        with contextlib.closing(ProgramStore(path)):
            pass
        with contextlib.closing(sqlite3.connect(path)) as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


# ---- evaluate: fewer segments scored than the manifest lists -------------------------------------------------------

def test_evaluate_that_scored_fewer_segments_than_the_manifest_is_one_error_line_not_exit_0(trained, monkeypatch,
                                                                                              capsys):
    """A lost batch (a worker at the open-files limit) left part of the split scored: an error naming the count and
    ulimit, exit 2, never scores of part of the split with exit 0."""
    from leap_cli.evaluate import inference
    from tests.procs import leap_main

    real = inference.predict

    def lossy(*a, **kw):  # the last segment's batch lost on its way
        scores = real(*a, **kw)
        return {k: (v[:-1] if hasattr(v, "__len__") else v) for k, v in scores.items()}

    monkeypatch.setattr(inference, "predict", lossy)
    monkeypatch.chdir(trained)
    code, out, err = leap_main(monkeypatch, capsys, "evaluate", "--split", "val", "--run", "work/runs/r",
                               "--workdir", "work", "--data", "kitchen", "--out", "ev_lossy")
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "shards manifest lists 2" in errors[0], out + err
    assert "ulimit -Hn" in err and "Traceback" not in err


def test_a_cache_migrated_by_another_process_while_this_one_waits_opens_without_redoing_it(tmp_path):
    """Another part of a job array holds the write lock, its migrations not committed: this open read version 0,
    waits for the lock, and must read the version again under it (not run CREATE TABLE cache a second time)."""
    import sqlite3
    import threading
    import time

    from leap_cli.programs.store import MIGRATIONS, ProgramStore

    path = tmp_path / "cache.sqlite"
    other = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    other.execute("PRAGMA journal_mode=WAL")
    other.execute("BEGIN IMMEDIATE")
    for sql in MIGRATIONS:
        other.execute(sql)
    other.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
    outcome = []

    def open_it():
        try:
            with contextlib.closing(ProgramStore(path)):
                outcome.append("opened")
        except Exception as e:  # noqa: BLE001 (what the test reports)
            outcome.append(repr(e))

    t = threading.Thread(target=open_it)
    t.start()
    time.sleep(0.5)  # (bounded: where the open has not reached the lock yet, it simply finds the tables made)
    other.execute("COMMIT")
    other.close()
    t.join(30)
    assert outcome == ["opened"]
