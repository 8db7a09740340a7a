"""The program cache's journal (``programs/store.py``, ``journal=True``): a reply buffered in memory for the next
batch is also in a file of its process, so that a killed process loses no paid reply nor its spend, and a run that
ends normally leaves nothing behind."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from leap_cli.programs.store import ProgramStore

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import sys, time
from leap_cli.programs.store import ProgramStore
s = ProgramStore(sys.argv[1], commit_every=3600, background=True, journal=True)
for i in range(3):
    s.add_spend("val.jsonl", 0.5, {"prompt_tokens": 10, "completion_tokens": 2}, commit=False)
    s.put(f"k{i}", f"paid reply {i}", {"prompt_tokens": 10, "completion_tokens": 2}, "m", commit=False)
print("buffered", flush=True)
time.sleep(600)
"""


def _child(path: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"})
    assert p.stdout.readline() == "buffered\n"
    return p


def _rows(path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute(sql).fetchall()


def test_replies_of_a_killed_process_are_taken_by_the_next_store(tmp_path):
    path = tmp_path / "cache.sqlite"
    p = _child(path)
    try:
        assert _rows(path, "SELECT key FROM cache") == []  # only in the child's memory and its journal
        # the child still runs: its journal is its own, not taken by another process opening the cache
        other = ProgramStore(path)
        assert other.replayed == 0 and other.get("k0") is None
        other.close()
        assert len(list((tmp_path / "cache.sqlite.unwritten").iterdir())) == 1
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(30)
    s = ProgramStore(path)
    try:
        assert s.replayed == 3
        assert s.get("k2") == ("paid reply 2", {"prompt_tokens": 10, "completion_tokens": 2}, "m", False)
        spent = s.spent("val.jsonl")
        assert (spent["cost"], spent["requests"], spent["prompt_tokens"]) == (1.5, 3, 30)
    finally:
        s.close()
    assert not (tmp_path / "cache.sqlite.unwritten").exists()
    again = ProgramStore(path)  # taken once: the spend is not counted again
    assert again.replayed == 0 and again.spent("val.jsonl")["requests"] == 3
    again.close()


def journal_folder(path: Path) -> tuple[str, Path]:
    """A store made at ``path`` and closed: val.jsonl's ledger key, and the (new) folder of its unwritten journal."""
    first = ProgramStore(path)
    key = first.ledger_key("val.jsonl")
    first.close()
    folder = path.parent / f"{path.name}.unwritten"
    folder.mkdir()
    return key, folder


def test_a_line_cut_by_the_kill_is_left_out_and_the_rest_taken(tmp_path):
    path = tmp_path / "cache.sqlite"
    key, folder = journal_folder(path)
    whole = json.dumps(["c", "k", "reply", 7, 3, "m", time.time(), None, 0])
    (folder / "1-dead-1.jsonl").write_text(whole + "\n" + json.dumps(["l", key, 0.25, 7, 3, 1]) + "\n"
                                           + whole.replace('"k"', '"k2"')[:25])
    s = ProgramStore(path)
    try:
        assert s.replayed == 1 and s.get("k")[0] == "reply" and s.get("k2") is None
        assert s.spent("val.jsonl")["cost"] == 0.25
    finally:
        s.close()
    assert not folder.exists()


def test_a_run_that_ends_leaves_no_journal_and_counts_its_spend_once(tmp_path):
    path = tmp_path / "cache.sqlite"
    s = ProgramStore(path, commit_every=3600, background=True, journal=True)
    s.put("a", "first", {}, "m", commit=False)
    s.add_spend("out.jsonl", 1.0, {}, commit=False)
    first = list((tmp_path / "cache.sqlite.unwritten").iterdir())
    assert len(first) == 1 and json.loads(first[0].read_text().splitlines()[0])[:3] == ["c", "a", "first"]
    s.commit()  # the batch is written: its journal file goes, the next reply starts another
    assert not first[0].exists()
    s.put("b", "second", {}, "m", commit=False)
    s.add_spend("out.jsonl", 2.0, {}, commit=False)
    second = list((tmp_path / "cache.sqlite.unwritten").iterdir())
    assert len(second) == 1 and second != first
    s.close()
    assert not (tmp_path / "cache.sqlite.unwritten").exists()
    s = ProgramStore(path)
    assert s.replayed == 0 and s.spent("out.jsonl")["cost"] == 3.0 and s.get("b")[0] == "second"
    s.close()


def test_a_failed_batch_keeps_its_journal_for_the_next_run(tmp_path):
    """A full disk at the last commit: the replies stay in the journal and the next run takes them."""
    from leap_cli.errors import LeapError

    path = tmp_path / "cache.sqlite"
    s = ProgramStore(path, commit_every=3600, journal=True)
    s.put("k", "paid reply", {}, "m", commit=False)
    good, s._wdb = s._wdb, sqlite3.connect(":memory:")
    s._wdb.close()
    try:
        s.close()
    except LeapError:
        pass
    else:
        raise AssertionError("the commit did not fail")
    good.close()
    assert len(list((tmp_path / "cache.sqlite.unwritten").iterdir())) == 1
    s = ProgramStore(path)
    assert s.replayed == 1 and s.get("k")[0] == "paid reply"
    s.close()


def test_a_journal_that_cannot_be_written_is_said_once_and_the_replies_still_cached(tmp_path, caplog):
    path = tmp_path / "cache.sqlite"
    s = ProgramStore(path, commit_every=3600, journal=True)
    (tmp_path / "cache.sqlite.unwritten").write_text("a file in the folder's place")
    s.put("a", "first", {}, "m", commit=False)
    s.put("b", "second", {}, "m", commit=False)
    s.close()
    said = [r.getMessage() for r in caplog.records if "cache.sqlite.unwritten" in r.getMessage()]
    assert len(said) == 1 and "a killed run may pay again" in said[0]
    assert _rows(path, "SELECT key FROM cache ORDER BY key") == [("a",), ("b",)]


def test_journal_files_take_the_umask(tmp_path):
    path = tmp_path / "cache.sqlite"
    old = os.umask(0o077)
    try:
        s = ProgramStore(path, commit_every=3600, journal=True)
        s.put("a", "first", {}, "m", commit=False)
        (f,) = (tmp_path / "cache.sqlite.unwritten").iterdir()
        assert f.stat().st_mode & 0o777 == 0o600
        s.close()
    finally:
        os.umask(old)


def test_lines_of_another_shape_are_left_out(tmp_path):
    """A hand-edited or foreign file in the folder: its lines that are no row are skipped, the cache opens."""
    path = tmp_path / "cache.sqlite"
    ProgramStore(path).close()
    folder = tmp_path / "cache.sqlite.unwritten"
    folder.mkdir()
    (folder / "x.jsonl").write_text("5\n[]\n{\"c\": 1}\n" + json.dumps(["c", "k", "r", {}, 0, "m", 1.0, None, 0])
                                    + "\n" + json.dumps(["l", "o", "1", 0, 0, 1]) + "\n"
                                    + json.dumps(["c", "ok", "r", 1, 2, "m", 1.0, None, 0]) + "\n")
    s = ProgramStore(path)
    assert s.replayed == 1 and s.get("k") is None and s.get("ok")[0] == "r"
    s.close()
