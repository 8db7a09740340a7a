"""Mutation-found gaps in the program cache's journal (``programs/store.py``, ``journal=True``) and in
``shards.dataset.shard_loader``: each test passes on leap's code and fails on a mutant the existing tests let
through (named in its docstring)."""

from __future__ import annotations

import gc
import json
import logging
import os
import sqlite3
import time
from pathlib import Path

import pytest

from leap_cli.errors import LeapError
from leap_cli.programs import store as store_mod
from leap_cli.programs.store import ProgramStore
from tests.test_attack_h8mut import eval_shards  # noqa: F401 (the fixture: 2 videos x 2 segments in shards)


def _fds() -> int:
    """This process's open descriptors, once what earlier tests left to the garbage collector is closed."""
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


def _journal(tmp_path: Path) -> Path:
    return tmp_path / "cache.sqlite.unwritten"


def _row(key: str, reply: str = "reply") -> list:
    return ["c", key, reply, 7, 3, "m", time.time(), None, 0]


def _dead_file(tmp_path: Path, lines: list) -> Path:
    """A journal file as a killed process leaves it (nobody holds its lock)."""
    folder = _journal(tmp_path)
    folder.mkdir(exist_ok=True)
    f = folder / "1-dead-1.jsonl"
    f.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return f


@pytest.fixture
def path(tmp_path):
    p = tmp_path / "cache.sqlite"
    ProgramStore(p).close()
    return p


@pytest.mark.parametrize("background", [False, True])
def test_many_batches_leave_no_descriptor_open(tmp_path, background):
    """generate-programs writes a batch every 0.5 s for hours: a journal file's descriptor not closed once its batch
    is written (mutant: ``_drop`` without ``os.close``) ends the run at the limit of open files (EMFILE)."""
    s = ProgramStore(tmp_path / "cache.sqlite", commit_every=3600, background=background, journal=True)
    try:
        s.put("warm", "x", {}, "m", commit=False)
        s.commit()
        before = _fds()
        for i in range(200):
            s.put(f"k{i}", f"reply {i}", {"prompt_tokens": 1}, "m", commit=False)
            s.add_spend("val.jsonl", 0.01, {"prompt_tokens": 1}, commit=False)
            s.commit()
        assert _fds() == before
    finally:
        s.close()
    assert not _journal(tmp_path).exists()


def test_replaying_a_killed_runs_journal_leaves_no_descriptor_open(path):
    """Opening the cache takes a killed run's journal files: each one's descriptor is closed after (mutant:
    ``_replay`` without ``os.close(fd)`` leaks one per file, for the whole run)."""
    folder = _journal(path.parent)
    folder.mkdir()
    for i in range(20):
        (folder / f"1-dead-{i}.jsonl").write_text(json.dumps(_row(f"k{i}")) + "\n")
    before = _fds()
    s = ProgramStore(path)
    assert s.replayed == 20
    s.close()
    assert _fds() == before


def test_a_failed_close_closes_the_descriptors_of_the_files_it_keeps(tmp_path):
    """A full disk at the last commit keeps the journal files for the next run, and still closes their
    descriptors (mutant: ``close`` that skips them leaks them into a long-lived process, e.g. the tests, a
    notebook)."""
    path = tmp_path / "cache.sqlite"
    before = _fds()
    s = ProgramStore(path, commit_every=3600, journal=True)
    for i in range(5):
        s.put(f"k{i}", "paid", {}, "m", commit=False)
    good, s._wdb = s._wdb, sqlite3.connect(":memory:")
    s._wdb.close()
    with pytest.raises(LeapError):
        s.close()
    good.close()
    assert _fds() == before
    assert len(list(_journal(tmp_path).iterdir())) == 1


def test_a_store_without_journal_never_makes_the_folder(tmp_path):
    """``journal=False`` (every command but generate-programs: stats, ingest, the demo): no
    ``cache.sqlite.unwritten/`` appears, not even while the store is open (mutant: the journal always on; the
    folder then shows up next to the cache of a read-only command and stays if it is killed)."""
    s = ProgramStore(tmp_path / "cache.sqlite", commit_every=3600)
    s.put("a", "reply", {}, "m", commit=False)
    s.add_spend("val.jsonl", 1.0, {}, commit=False)
    assert not _journal(tmp_path).exists()
    s.commit()
    s.put("b", "reply", {}, "m")
    assert not _journal(tmp_path).exists()
    s.close()
    assert sorted(p.name for p in tmp_path.iterdir() if "unwritten" in p.name) == []


def test_without_a_writer_thread_the_next_batch_is_in_a_journal_file_too(tmp_path):
    """``background=False``: after a commit the next reply goes to a new journal file that the next run can
    take (mutant: the written batch's descriptor kept, the reply appended to the deleted file: a kill then loses
    it and the resume pays again)."""
    path = tmp_path / "cache.sqlite"
    s = ProgramStore(path, commit_every=3600, journal=True)
    try:
        s.put("a", "first", {}, "m", commit=False)
        s.commit()
        s.put("b", "second", {}, "m", commit=False)
        s.add_spend(tmp_path / "val.jsonl", 0.5, {}, commit=False)
        (f,) = _journal(tmp_path).iterdir()
        kinds = [json.loads(x)[:2] for x in f.read_text().splitlines()]
        assert kinds == [["c", "b"], ["l", "val.jsonl"]]
    finally:
        s.close()


def test_journal_files_take_0666_less_a_usual_umask(tmp_path):
    """Under umask 022 a journal file is 0644 as every file leap writes (mutant: created 0600, the next run of a
    colleague in the group cannot read, hence cannot take, a killed run's replies)."""
    old = os.umask(0o022)
    try:
        s = ProgramStore(tmp_path / "cache.sqlite", commit_every=3600, journal=True)
        s.put("a", "first", {}, "m", commit=False)
        (f,) = _journal(tmp_path).iterdir()
        assert f.stat().st_mode & 0o777 == 0o644
        s.close()
    finally:
        os.umask(old)


def test_journal_file_is_named_after_its_process(tmp_path):
    """The docstring's "a file of this process": its name starts with the pid, so that two processes (shards)
    never pick one name (mutant: the pid dropped, two processes with the same object address collide and the
    second runs without a journal)."""
    s = ProgramStore(tmp_path / "cache.sqlite", commit_every=3600, journal=True)
    try:
        s.put("a", "first", {}, "m", commit=False)
        (f,) = _journal(tmp_path).iterdir()
        assert f.name.startswith(f"{os.getpid()}-") and f.suffix == ".jsonl"
    finally:
        s.close()


def test_a_folder_taken_away_between_mkdir_and_open_is_made_again(tmp_path, monkeypatch, caplog):
    """Another process's ``close`` removes the empty folder between this one's mkdir and its file's creation: the
    file is made on a second try and the journal stays on (mutant: one try: a warning and no journal)."""
    real_open, calls = os.open, []

    def flaky(p, flags, *a):
        if str(p).endswith(".jsonl") and not calls:
            calls.append(p)
            os.rmdir(_journal(tmp_path))
            raise FileNotFoundError(2, "No such file or directory", str(p))
        return real_open(p, flags, *a)

    s = ProgramStore(tmp_path / "cache.sqlite", commit_every=3600, journal=True)
    monkeypatch.setattr(store_mod.os, "open", flaky)
    with caplog.at_level(logging.WARNING):
        s.put("a", "first", {}, "m", commit=False)
    monkeypatch.undo()
    try:
        assert calls and s._journal and not [r for r in caplog.records if "unwritten" in r.getMessage()]
        assert len(list(_journal(tmp_path).iterdir())) == 1
    finally:
        s.close()


def test_a_journal_file_written_and_deleted_meanwhile_is_not_taken_again(path, monkeypatch):
    """Two processes open the cache at once after a kill: one takes the dead run's file and deletes it while the
    other waits for its lock. The second skips it (``st_nlink == 0``) and opens normally (mutant: no check: it
    counts the spend a second time and then stops with a FileNotFoundError traceback at the unlink)."""
    f = _dead_file(path.parent, [_row("k"), ["l", "val.jsonl", 0.25, 7, 3, 1]])
    real = store_mod.fcntl.flock

    def other_process_took_it(fd, op):
        if f.exists():  # (the other process's unlink, while this one waited for the lock)
            os.unlink(f)
        return real(fd, op)

    monkeypatch.setattr(store_mod.fcntl, "flock", other_process_took_it)
    s = ProgramStore(path)
    monkeypatch.undo()
    try:
        assert s.replayed == 0 and s.spent(path.parent / "val.jsonl")["cost"] == 0.0
    finally:
        s.close()


def test_a_folder_or_unreadable_entry_in_the_journal_folder_does_not_stop_the_cache(path):
    """Something in ``cache.sqlite.unwritten/`` that is no file (a folder a user made): it is passed over and the
    cache opens, the files beside it taken (mutant: only a vanished file passed over; the cache cannot open)."""
    _dead_file(path.parent, [_row("k")])
    (_journal(path.parent) / "0-a-folder").mkdir()
    s = ProgramStore(path)
    try:
        assert s.replayed == 1 and s.get("k")[0] == "reply"
    finally:
        s.close()


@pytest.mark.parametrize("line", [
    ["c", "short", "reply", 7, 3, "m", 1.0, None],  # a row of 7 values (another leap's, a hand edit)
    ["c", "nul", None, 7, 3, "m", 1.0, None, 0],  # no reply text (the cache's response is NOT NULL)
    ["c", "num", 5, 7, 3, "m", 1.0, None, 0],  # a reply that is no text
])
def test_a_malformed_cache_line_is_skipped_not_a_cache_that_cannot_open(path, line):
    """A journal line of another shape is left out and the rest taken (mutants: the row length checked with >=, or
    the reply's type not checked: SQLite refuses the row and every run says the cache "cannot be opened")."""
    _dead_file(path.parent, [line, _row("ok")])
    s = ProgramStore(path)
    try:
        assert s.replayed == 1 and s.get("ok")[0] == "reply" and s.get(line[1]) is None
    finally:
        s.close()


def test_a_replay_whose_write_fails_keeps_the_file_for_the_next_run(path):
    """The journal's rows are written into the database before its file goes: a write that fails (a full disk;
    here a trigger that refuses it) leaves the file, and a later run takes the replies (mutant: unlink before the
    transaction: the paid replies and their spend are lost)."""
    f = _dead_file(path.parent, [_row("k"), ["l", "val.jsonl", 0.25, 7, 3, 1]])
    with sqlite3.connect(path) as db:
        db.execute("CREATE TRIGGER refuse BEFORE INSERT ON cache BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END")
    with pytest.raises(LeapError):
        ProgramStore(path)
    assert f.exists()
    with sqlite3.connect(path) as db:
        db.execute("DROP TRIGGER refuse")
    s = ProgramStore(path)
    try:
        assert s.replayed == 1 and s.get("k")[0] == "reply" and s.spent(path.parent / "val.jsonl")["cost"] == 0.25
    finally:
        s.close()
    assert not _journal(path.parent).exists()


def test_the_folder_goes_once_its_files_are_taken_while_the_store_is_open(path):
    """Opening the cache after a kill takes the journal and removes the emptied folder at once, not only at close
    (mutant: kept until close; a run killed again leaves an empty folder)."""
    _dead_file(path.parent, [_row("k")])
    s = ProgramStore(path)
    try:
        assert s.replayed == 1 and not _journal(path.parent).exists()
    finally:
        s.close()


def test_a_failed_background_batch_then_a_good_one_leaves_no_journal_and_counts_spend_once(tmp_path):
    """With the writer thread, a batch that fails (a lock past the timeout, a full disk for a moment) goes back to
    the buffers with its journal file; the next good commit writes it and deletes the file (mutant: the files not
    restored: they stay, and the next run counts their spend a second time)."""
    path = tmp_path / "cache.sqlite"
    s = ProgramStore(path, commit_every=3600, background=True, journal=True)
    s.put("a", "first", {}, "m", commit=False)
    s.add_spend(tmp_path / "val.jsonl", 1.0, {"prompt_tokens": 3}, commit=False)
    good, s._wdb = s._wdb, sqlite3.connect(":memory:", check_same_thread=False)
    s._wdb.close()
    with pytest.raises(LeapError):
        s.commit()
    s._wdb = good
    s.put("b", "second", {}, "m", commit=False)
    s.add_spend(tmp_path / "val.jsonl", 2.0, {"prompt_tokens": 4}, commit=False)
    s.close()
    assert not _journal(tmp_path).exists()
    again = ProgramStore(path)
    try:
        assert again.replayed == 0
        spent = again.spent(tmp_path / "val.jsonl")
        assert (spent["cost"], spent["prompt_tokens"], spent["requests"]) == (3.0, 7, 2)
        assert again.get("a")[0] == "first" and again.get("b")[0] == "second"
    finally:
        again.close()


def test_a_store_opened_while_another_starts_a_journal_file_leaves_that_file(tmp_path, monkeypatch):
    """Shard A starts a batch's journal file (create, then lock) and shard B opens the cache in between: B's replay
    finds the file unlocked, takes its no rows and deletes it, and A then locks and appends to a deleted file. A's
    replies of that batch were in no file on disk: a kill before the batch was written lost them and the resume
    paid for them again (found here at e888a46; fixed in 4773780: ``_journal_file`` checks ``st_nlink`` after its
    lock and makes another file). The window is microseconds per batch; here it is held open."""
    path = tmp_path / "cache.sqlite"
    before = _fds()
    a = ProgramStore(path, commit_every=3600, journal=True)
    real, opened = store_mod.fcntl.flock, []

    def another_process_opens_the_cache(fd, op):
        if not opened:
            opened.append(True)
            ProgramStore(path).close()  # shard B starting
        return real(fd, op)

    monkeypatch.setattr(store_mod.fcntl, "flock", another_process_opens_the_cache)
    try:
        a.put("k", "paid reply", {}, "m", commit=False)
        monkeypatch.undo()
        files = list(_journal(tmp_path).iterdir()) if _journal(tmp_path).exists() else []
        assert len(files) == 1 and json.loads(files[0].read_text())[:3] == ["c", "k", "paid reply"]
    finally:
        monkeypatch.undo()
        a.close()
    assert _fds() == before  # (the taken file's descriptor closed too)


def test_a_journal_folder_removed_during_the_run_does_not_stop_the_next_batch(tmp_path):
    """A user (or a cleanup script) deletes ``cache.sqlite.unwritten/`` while generate-programs runs: the batch
    whose file is gone is still written and the run goes on (mutant: the unlink's error not caught: an OSError
    traceback from the writer, and the batch written twice)."""
    import shutil

    path = tmp_path / "cache.sqlite"
    for background in (False, True):
        s = ProgramStore(path, commit_every=3600, background=background, journal=True)
        s.put(f"k{background}", "paid", {}, "m", commit=False)
        s.add_spend(tmp_path / "val.jsonl", 1.0, {}, commit=False)
        shutil.rmtree(_journal(tmp_path))
        s.commit()
        s.close()
    s = ProgramStore(path)
    try:
        assert s.get("kFalse")[0] == s.get("kTrue")[0] == "paid"
        assert s.spent(tmp_path / "val.jsonl")["requests"] == 2
    finally:
        s.close()


# --- shards.dataset.shard_loader: the one DataLoader of train and evaluate ------------------------------------------

class _Clips:
    """A map-style stand-in for a ShardDataset: samples of the shape ``collate_clips`` stacks; each sample's
    narration id says how SIGTERM is handled in the process that made it (a worker or the main one)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        import signal

        import torch

        return {"video": torch.zeros(2, 3, 4, 4), "verb_class": i, "noun_class": 0, "has_program": True,
                "program_steps": torch.zeros(2), "conditions": torch.zeros(2), "step_conditions": torch.zeros(2),
                "narration_id": f"{i}:{signal.getsignal(signal.SIGTERM) == signal.SIG_IGN}"}


def test_shard_loader_makes_leaps_batches_of_the_asked_size_and_passes_its_options():
    """train's loaders ask for drop_last (every training step on a full batch), a seeded generator and pinned
    memory, evaluate's for its --batch-size; each batch is ``collate_clips``' (``padding`` added, ids a list)
    (mutants: the options dropped, the batch size not passed, torch's default collate)."""
    import torch

    from leap_cli.shards.dataset import collate_clips, loader_worker_init, shard_loader

    loader = shard_loader(_Clips(5), batch_size=2, workers=0, drop_last=True)
    assert loader.collate_fn is collate_clips and loader.worker_init_fn is loader_worker_init
    assert loader.timeout == 0 and loader.num_workers == 0
    batches = list(loader)
    assert [b["verb_class"].tolist() for b in batches] == [[0, 1], [2, 3]]  # the fifth dropped
    assert batches[0]["padding"].dtype == torch.bool and batches[0]["padding"].tolist() == [False, False]
    assert [len(b["narration_id"]) for b in batches] == [2, 2]
    assert len(list(shard_loader(_Clips(5), batch_size=2, workers=0))) == 3


def test_shard_loader_workers_leave_sigterm_to_the_main_process():
    """With workers, each one starts through ``loader_worker_init``: a process group's SIGTERM (timeout, Slurm's
    scancel) is the main process's to handle, so leap evaluate stops with its one line and 143, not torch's
    "DataLoader worker exited unexpectedly" (mutant: no worker_init_fn); and the wait for a batch is finite."""
    from leap_cli.shards.dataset import LOADER_TIMEOUT, shard_loader

    loader = shard_loader(_Clips(2), batch_size=2, workers=1)
    assert loader.num_workers == 1 and loader.timeout == LOADER_TIMEOUT
    (batch,) = list(loader)
    assert batch["narration_id"] == ["0:True", "1:True"]



def test_train_loader_through_shard_loader_keeps_drop_last_the_seed_and_persistent_workers(eval_shards):  # noqa: F811
    """train's training loader drops the odd last batch, draws its order from a generator seeded by train.seed
    (exact resume) and keeps its workers across epochs; the validation one keeps every sample and no workers
    (mutant: drop_last not passed on to ``shard_loader``)."""
    from leap_cli.train.config import load_config
    from leap_cli.train.data import ShardSource
    from leap_cli.train.distributed import DistInfo

    sets = ["model.num_frames=4", "model.img_size=32", "data.batch_size=1", "data.eval_batch_size=1",
            "data.num_workers=1", "train.seed=7"]
    src = ShardSource(eval_shards, eval_shards, load_config("tiny-synthetic", sets), DistInfo())
    train = src._loader("train", src.train, 3, True)
    assert train.drop_last is True and train.batch_size == 3 and train.persistent_workers is True
    assert train.generator.initial_seed() == 7 and train.pin_memory is False
    val = src._loader("val", src.val, 3, False)
    assert val.drop_last is False and val.persistent_workers is False


def test_a_new_journal_file_whose_lock_another_replay_holds_waits_for_it(tmp_path, monkeypatch, caplog):
    """Shard B's replay holds the lock of shard A's new (empty) journal file for a moment, then deletes it: A waits
    for the lock, sees the file gone and makes another; its journal stays on (mutant: a non-blocking lock there: a
    warning and no journal for the rest of A's run)."""
    import fcntl
    import threading

    path = tmp_path / "cache.sqlite"
    a = ProgramStore(path, commit_every=3600, journal=True)
    real, held = store_mod.fcntl.flock, []

    def replay_of_another_process(fd, op):
        if not held:
            f = next(_journal(tmp_path).iterdir())
            other = os.open(f, os.O_RDWR)
            real(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held.append(f)

            def finish():
                time.sleep(0.2)
                os.unlink(f)
                os.close(other)

            threading.Thread(target=finish).start()
        return real(fd, op)

    monkeypatch.setattr(store_mod.fcntl, "flock", replay_of_another_process)
    try:
        with caplog.at_level(logging.WARNING):
            a.put("k", "paid reply", {}, "m", commit=False)
        monkeypatch.undo()
        assert held and a._journal and not [r for r in caplog.records if "unwritten" in r.getMessage()]
        (f,) = _journal(tmp_path).iterdir()
        assert f != held[0] and json.loads(f.read_text())[:3] == ["c", "k", "paid reply"]
    finally:
        monkeypatch.undo()
        a.close()


def test_an_empty_journal_file_of_a_stopped_run_goes_with_its_folder(path):
    """A run stopped between making its journal file and writing its first row leaves an empty file: the next open
    deletes it and the folder (mutant: skipped but kept: the folder stays beside the cache for good)."""
    folder = _journal(path.parent)
    folder.mkdir()
    (folder / "1-dead-1.jsonl").write_bytes(b"")
    s = ProgramStore(path)
    assert s.replayed == 0
    s.close()
    assert not folder.exists()


def test_a_served_model_name_with_half_a_character_is_cached_and_journaled(tmp_path):
    """The model name a server answers with comes from its JSON, as the reply does: a lone surrogate in it is
    U+FFFD, so that neither the journal (only OSError caught: a UnicodeEncodeError traceback out of the
    generator's bookkeeping) nor SQLite refuses the row."""
    s = ProgramStore(tmp_path / "cache.sqlite", commit_every=3600, journal=True)
    s.put("k", "reply", {}, json.loads('"model-\\ud83d"'), commit=False)
    assert s._journal and len(list((tmp_path / "cache.sqlite.unwritten").iterdir())) == 1
    s.close()
    s = ProgramStore(tmp_path / "cache.sqlite")
    assert s.get("k")[2] == "model-\ufffd"
    s.close()


def test_spend_on_an_output_path_of_non_utf8_bytes_is_written(tmp_path):
    """``--out`` under a folder whose name is not UTF-8 (a Latin-1 file system, a copied archive). Was wrong: the
    spend's ledger row could not be encoded for SQLite, and the commit (every batch, then close) raised a bare
    UnicodeEncodeError; the batch's replies were never written. The key holds the name's bytes escaped."""
    out = tmp_path / "v\udcff.jsonl"
    s = ProgramStore(tmp_path / "cache.sqlite", commit_every=3600)
    s.put("k", "paid reply", {}, "m", commit=False)
    s.add_spend(out, 1.0, {}, commit=False)
    s.close()
    s = ProgramStore(tmp_path / "cache.sqlite")
    try:
        assert s.spent(out)["cost"] == 1.0 and s.get("k")[0] == "paid reply"
        assert s.ledger_key(out) == "v\\xff.jsonl" and s.spent(tmp_path / "v.jsonl")["cost"] == 0
    finally:
        s.close()
