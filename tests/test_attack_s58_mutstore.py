"""Gaps found by a hand-made mutation run over the program store (``leap_cli/programs/store.py``), the lean HTTP
client (``leap_cli/programs/http.py``), the dry-run estimate (``leap_cli/programs/estimate.py``) and the challenge
submission files (``leap_cli/submit.py``): each test kills a mutant that every other test let live."""

import gzip
import json
import os
import sqlite3
import time
import zlib

import pytest

from leap_cli import submit as sub
from leap_cli.errors import LeapError
from leap_cli.programs import store as store_mod
from leap_cli.programs.store import ProgramStore
from tests.test_mut_http_store import _store_whose_first_write_waits_then_fails


# ---- store.py -------------------------------------------------------------------------------------------------

def test_a_read_only_cache_is_said_to_need_write_access_not_to_be_moved_aside(tmp_path):
    """A cache SQLite finds read-only (its folder or files not writable: root ignores the mode, so said directly)
    asks for write access; the generic advice (move it aside, a new cache starts) would lose the ledger's spend."""
    with ProgramStore(tmp_path / "cache.sqlite") as store:
        err = store._damaged("opened", sqlite3.OperationalError("attempt to write a readonly database"))
    assert "writable" in err.fix and "move it aside" not in err.fix


class _FailingWal(sqlite3.Connection):
    """A connection whose switch to WAL fails as ``error`` says (counted in ``tries``)."""
    tries = 0
    error = "disk I/O error"

    def execute(self, sql, *args):
        if sql.startswith("PRAGMA journal_mode"):
            type(self).tries += 1
            raise sqlite3.OperationalError(self.error)
        return super().execute(sql, *args)


def test_a_wal_switch_that_fails_for_another_reason_than_a_lock_is_not_retried(tmp_path, monkeypatch):
    """Only "database is locked" is waited out (parts of a job array switching a new file at once); any other
    failure of the switch (here a disk error) is said at once, not after TIMEOUT seconds of retries."""
    real = sqlite3.connect
    monkeypatch.setattr(store_mod.sqlite3, "connect", lambda *a, **kw: real(*a, factory=_FailingWal, **kw))
    monkeypatch.setattr(ProgramStore, "TIMEOUT", 0.5)
    _FailingWal.tries = 0
    t = time.monotonic()
    with pytest.raises(LeapError) as e:
        ProgramStore(tmp_path / "cache.sqlite")
    assert _FailingWal.tries == 1 and time.monotonic() - t < 0.4
    assert "disk I/O error" in str(e.value)


def _journal(path, *rows):
    """A journal file of a dead process beside the cache ``path``, holding ``rows``."""
    d = path.with_name(path.name + ".unwritten")
    d.mkdir(exist_ok=True)
    f = d / "999999-dead-1.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


def _db_rows(path, sql):
    with sqlite3.connect(path) as db:
        return db.execute(sql).fetchall()


def test_journals_in_an_unwritable_folder_are_left_alone_not_counted_again_each_open(tmp_path, monkeypatch):
    """Taken into the database but not deletable (a folder not writable), a journal's spend would be added again by
    every later open: it is left for a run that can delete it (root ignores modes: the check is stood in for)."""
    path = tmp_path / "cache.sqlite"
    ProgramStore(path).close()
    f = _journal(path, ["c", "k", "reply", 10, 2, "m", 1.0, None, 0], ["l", "out.jsonl", 0.5, 10, 2, 1])
    real = os.access
    monkeypatch.setattr(store_mod.os, "access", lambda p, mode: not str(p).endswith(".unwritten") and real(p, mode))
    with ProgramStore(path) as store:
        assert store.replayed == 0 and store.get("k") is None
    assert f.exists() and _db_rows(path, "SELECT * FROM ledger") == []


def test_a_spend_buffered_alone_is_written_by_the_timer(tmp_path):
    """``tick`` writes what is buffered once due, a ledger spend with no reply or call beside it too (a killed run
    would lose it, and --max-cost would not count it)."""
    path = tmp_path / "cache.sqlite"
    store = ProgramStore(path, commit_every=0.05)
    try:
        store.add_spend(tmp_path / "out.jsonl", 0.25, {"prompt_tokens": 10, "completion_tokens": 2}, commit=False)
        time.sleep(0.06)
        store.tick()
        assert _db_rows(path, "SELECT out, cost, requests FROM ledger") == [("out.jsonl", 0.25, 1)]
    finally:
        store.close()


def _call(store, nid, **kw):
    store.log_call(**{"narration_id": nid, "backend": "openai", "model": "m", "prompt_hash": "p", "cache_key": "k",
                      "round": 0, "response": "r", "usage": {}, "latency": 0.1, "attempts": 1, "cached": False,
                      "outcome": "ok", **kw})


def test_the_calls_of_a_failed_background_write_are_logged_by_a_later_one(tmp_path):
    """The call log's rows of a write that failed go back into the buffer, before those logged meanwhile, as the
    replies and spend do."""
    path = tmp_path / "cache.sqlite"
    store, release = _store_whose_first_write_waits_then_fails(path, fail=True)
    _call(store, "a")  # due at once: handed to the writer thread, which fails it
    release.set()
    store._flush.exception(5)
    with pytest.raises(LeapError, match="disk is full"):
        _call(store, "b")
    store.close()
    assert [r[0] for r in _db_rows(path, "SELECT narration_id FROM calls ORDER BY id")] == ["a", "b"]


def test_a_reply_the_writer_thread_is_writing_is_read_back_meanwhile(tmp_path):
    """A cached reply handed to the writer thread and not yet in the database is found by ``get`` (else the same
    request is sent, and paid, again)."""
    path = tmp_path / "cache.sqlite"
    store, release = _store_whose_first_write_waits_then_fails(path, fail=False)
    try:
        store.put("k", "paid reply", {"prompt_tokens": 5, "completion_tokens": 1}, "m")  # handed to the thread
        assert store._flush is not None and not store._flush.done()
        assert store.get("k") == ("paid reply", {"prompt_tokens": 5, "completion_tokens": 1}, "m", False)
    finally:
        release.set()
        store.close()


def test_spent_counts_the_spend_still_buffered(tmp_path):
    """``spent`` (what --max-cost compares) includes the spend not yet due for writing."""
    out = tmp_path / "out.jsonl"
    with ProgramStore(tmp_path / "cache.sqlite", commit_every=3600) as store:
        store.add_spend(out, 0.5, {"prompt_tokens": 7, "completion_tokens": 3}, commit=False)
        store.add_spend(out, 0.25, {"prompt_tokens": 1}, 2)  # (not due either)
        assert store.spent(out) == {"cost": 0.75, "prompt_tokens": 8, "completion_tokens": 3, "requests": 3}


# ---- http.py --------------------------------------------------------------------------------------------------

def test_two_transfer_codings_are_undone_last_applied_first():
    """'Transfer-Encoding: deflate, gzip, chunked': deflate was applied first, then gzip; undone gzip first."""
    from leap_cli.programs.http import Response
    from tests.test_mut_http_store import _answer, _post_all

    body = b'{"choices": []}'
    z = gzip.compress(zlib.compress(body))
    raw = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: deflate, gzip, chunked\r\n\r\n" + b"%x\r\n" % len(z) + z
           + b"\r\n0\r\n\r\n")
    out, *_ = _post_all(_answer(raw), n=1)
    assert isinstance(out[0], Response) and out[0].body == body, out[0]


# ---- submit.py ------------------------------------------------------------------------------------------------

def test_examples_say_more_only_beyond_those_shown():
    assert sub._examples(["a", "b", "c", "d", "e"]) == "a, b, c, d, e"
    assert sub._examples(list("abcdef")) == "a, b, c, d, e ... (+1 more)"
    assert sub._examples(["x", "y", "z"], 3) == "x, y, z"


def test_an_empty_results_object_is_said_to_miss_every_test_segment():
    """No entry at all: the test split's ids have no scores (not 'none of the 0 narration ids is in ...')."""
    doc = {"version": "0.2", "challenge": "action_recognition", "sls_pt": 0, "sls_tl": 0, "sls_td": 0, "results": {}}
    with pytest.raises(LeapError, match=r"2 narration ids of .* have no scores: a, b"):
        sub.check_submission(doc, ["a", "b"], 3, 4)


def test_a_first_entry_that_is_no_object_counts_as_one_without_actions():
    """The first entry decides whether actions go on every segment; one that is not an object has none, so the
    entries after it that carry actions are said too (in the refusal's 'also')."""
    scores = {"verb": {"0": 0.0}, "noun": {str(i): 0.0 for i in range(100)}}
    acts = {f"0,{i}": 0.0 for i in range(100)}
    doc = {"version": "0.2", "challenge": "action_anticipation", "sls_pt": 0, "sls_tl": 0, "sls_td": 0,
           "results": {"a": [], "b": {**scores, "action": acts}}}
    said = "entries that are not objects: a; also: action scores on some segments but not all \\("
    with pytest.raises(LeapError, match=said):
        sub.check_submission(doc, ["a", "b"], 1, 100)


def test_a_streamed_check_refuses_properties_or_entries_without_a_comma_between_them(tmp_path):
    """The entry-at-a-time check parses as json.loads (the server's parse) does: two properties, or two entries of
    results, with no comma between them are not valid JSON."""
    import zipfile

    entry = '{"verb": {"0": 0.5}, "noun": {"0": 0.5}}'
    good = ('{"version": "0.2", "challenge": "action_recognition", "sls_pt": 0, "sls_tl": 0, "sls_td": 0, '
            f'"results": {{"a": {entry}, "b": {entry}}}}}')
    for text, ok in ((good, True), (good.replace('"0.2", "challenge"', '"0.2" "challenge"'), False),
                     (good.replace('}, "b"', '} "b"'), False)):
        path = tmp_path / "s.zip"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("test.json", text)
        if ok:
            assert sub._check_streamed(path, ["a", "b"], 1, 1)["segments"] == 2
        else:
            with pytest.raises(LeapError, match="not valid JSON"):
                sub._check_streamed(path, ["a", "b"], 1, 1)
