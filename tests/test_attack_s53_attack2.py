"""Attack on session 53's second round (helper attack2): train --resume's labels provenance (record_provenance and
what show/train then print), the program cache's one-transaction migration opened by several processes at once,
the refusal of a --shard part beside a live whole run (and the reverse) with stale and held lock files, and the
tokens of billed failed 200s against --max-cost."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import multiprocessing
import os
import sqlite3
from pathlib import Path

import pytest

from leap_cli.errors import LeapError

# ---- train --resume: what the shards' labels were made from (record_provenance) ---------------------------------


def _prov(annotations: str, verbs: str = "v1", extra: dict | None = None, programs: str = "P") -> dict:
    labels = {"annotations": annotations, "verb_classes": verbs, "noun_classes": "n1", **(extra or {})}
    return {"train": {"shards": "s", "programs": {"records": 1, "sha256": programs, "made_by": [
        {"backend": "openai", "model": "gpt-4o", "records": 1, "valid": 1}]}, "labels": labels}, "val": None}


def test_a_resume_of_a_run_begun_before_labels_were_kept_is_not_warned(tmp_path: Path, caplog) -> None:
    from leap_cli.train.loop import record_provenance

    old = _prov("a")
    del old["train"]["labels"]  # (provenance.json as the leap before this change wrote it)
    (tmp_path / "provenance.json").write_text(json.dumps(old))
    with caplog.at_level(logging.WARNING):
        now = record_provenance(tmp_path, _prov("a"), resumed=True)
    assert "other labels" not in caplog.text and "not those the run was trained on" not in caplog.text
    assert "earlier" not in now and now["train"]["labels"]["annotations"] == "a"
    with caplog.at_level(logging.WARNING):  # the same shards again: nothing said, nothing kept as earlier
        assert record_provenance(tmp_path, _prov("a"), resumed=True) == now
    assert "other labels" not in caplog.text


def test_a_change_of_the_class_files_only_names_that_file_and_keeps_the_earlier_labels(tmp_path: Path,
                                                                                      caplog) -> None:
    from leap_cli.train.loop import record_provenance

    record_provenance(tmp_path, _prov("a"), resumed=False)
    with caplog.at_level(logging.WARNING):
        now = record_provenance(tmp_path, _prov("a", verbs="v2"), resumed=True)
    assert "EPIC_100_verb_classes.csv changed" in caplog.text
    assert "annotation rows" not in caplog.text and "noun" not in caplog.text
    assert "not those the run was trained on" not in caplog.text  # (the programs are the same)
    assert [e["train"]["labels"]["verb_classes"] for e in now["earlier"]] == ["v1"]
    assert json.loads((tmp_path / "provenance.json").read_text()) == now


def test_a_relabel_only_resume_does_not_claim_other_programs_in_the_trained_on_line(tmp_path: Path) -> None:
    """Was wrong: after a resume on relabelled shards (same programs) the 'trained on programs' line of train/show
    says 'before a resume on other programs' naming the very same programs."""
    from leap_cli.programs.provenance import run_programs_text
    from leap_cli.train.loop import record_provenance

    record_provenance(tmp_path, _prov("a"), resumed=False)
    now = record_provenance(tmp_path, _prov("b"), resumed=True)  # a corrected CSV, the same programs
    assert now["earlier"]  # (kept: the labels changed)
    assert "other programs" not in run_programs_text(now), run_programs_text(now)


def test_a_labels_key_this_leap_does_not_know_does_not_stop_the_resume(tmp_path: Path) -> None:
    """Was wrong: a provenance.json whose train.labels holds a key this leap does not know (a newer leap's, an edit)
    makes train --resume stop with KeyError (loop.record_provenance: SOURCE_NAMES[k])."""
    from leap_cli.train.loop import record_provenance

    record_provenance(tmp_path, _prov("a", extra={"narration_classes": "x"}), resumed=False)
    now = record_provenance(tmp_path, _prov("a"), resumed=True)
    assert now["train"]["labels"]["annotations"] == "a"


def test_labels_provenance_of_a_manifest_without_sources_is_none_and_a_resume_from_it_is_quiet(tmp_path: Path,
                                                                                              caplog) -> None:
    from leap_cli.shards.format import labels_provenance
    from leap_cli.train.loop import record_provenance

    assert labels_provenance({}) is None and labels_provenance({"sources": {"programs": "p"}}) is None
    assert labels_provenance({"sources": {"annotations": "a"}}) == {"annotations": "a", "verb_classes": None,
                                                                    "noun_classes": None}
    unknown = _prov("a")
    unknown["train"]["labels"] = None  # (shards of an earlier leap: their manifest keeps no sources)
    record_provenance(tmp_path, unknown, resumed=False)
    with caplog.at_level(logging.WARNING):
        now = record_provenance(tmp_path, _prov("a"), resumed=True)
    assert "other labels" not in caplog.text and "earlier" not in now


# ---- the program cache's migration, one transaction -------------------------------------------------------------


def _open_store(path: str, start, out) -> None:
    from leap_cli.programs.store import ProgramStore

    start.wait(30)
    try:
        store = ProgramStore(path)
        store.close()
        out.put("ok")
    except BaseException as e:  # noqa: BLE001 (reported to the test)
        out.put(f"{type(e).__name__}: {e}")


@pytest.mark.parametrize("version", [0, 1, 4, 6])
def test_an_older_cache_opened_by_several_processes_at_once_is_migrated_once(tmp_path: Path, version: int) -> None:
    from leap_cli.programs.store import MIGRATIONS, ProgramStore

    path = tmp_path / "cache.sqlite"
    db = sqlite3.connect(path)  # a cache an older leap left at `version` (in WAL mode, as leap opens it), a reply in it
    db.execute("PRAGMA journal_mode=WAL")
    for sql in MIGRATIONS[:version]:
        db.execute(sql)
    if version:
        db.execute("INSERT INTO cache (key, response, prompt_tokens, completion_tokens, model, created) "
                   "VALUES ('k', 'r', 1, 2, 'm', 0)")
    db.execute(f"PRAGMA user_version = {version}")
    db.commit()
    db.close()
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_open_store, args=(str(path), start, out)) for _ in range(4)]
    for p in procs:
        p.start()
    start.set()
    said = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    assert said == ["ok"] * 4, said
    with contextlib.closing(ProgramStore(path)) as store:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        if version:
            assert store.get("k") is not None  # (the old reply kept)


def test_parts_creating_the_cache_at_once_never_fail_on_database_is_locked(tmp_path: Path) -> None:
    """Was wrong: parts of a job array opening a NEW cache.sqlite at once still fail, ~1 start in 8: 'cannot be
    opened (database is locked) (move it aside...)' from ProgramStore._connect's PRAGMA journal_mode=WAL (no busy
    wait there)."""
    ctx = multiprocessing.get_context("fork")
    for trial in range(40):  # (stops at the first start in which a part fails; ~1 in 8 failed before the fix)
        path = tmp_path / str(trial) / "programs" / "cache.sqlite"
        start, out = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_open_store, args=(str(path), start, out)) for _ in range(8)]
        for p in procs:
            p.start()
        start.set()
        said = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(30)
        assert said == ["ok"] * 8, f"start {trial}: {said}"


# ---- a --shard part beside a live run without --shard (io.refuse_beside_a_live_writer) --------------------------


@contextlib.contextmanager
def _held(lock: Path):
    """The flock a live run holds on ``lock`` (another open file description: it conflicts even in this process)."""
    lock.write_text(f"{os.getpid()} host\n")
    fd = os.open(lock, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        yield
    finally:
        os.close(fd)


def test_stale_lock_files_of_finished_parts_and_runs_refuse_nothing(tmp_path: Path) -> None:
    from leap_cli.io import refuse_beside_a_live_writer

    out = tmp_path / "train.jsonl"
    for name in ("train.jsonl.lock", "train.shard0of2.jsonl.lock", "train.shard1of2.jsonl.lock"):
        (tmp_path / name).write_text("12345 elsewhere\n")  # (left by runs that ended)
    refuse_beside_a_live_writer(out)
    refuse_beside_a_live_writer(tmp_path / "train.shard0of2.jsonl")
    (tmp_path / "train.shard1of2.jsonl.lock").chmod(0o444)  # (left read-only: another user's umask)
    refuse_beside_a_live_writer(out)


def test_a_whole_run_is_refused_beside_a_live_part_and_a_part_beside_a_live_whole_run(tmp_path: Path) -> None:
    from leap_cli.io import refuse_beside_a_live_writer

    out = tmp_path / "train.jsonl"
    with _held(tmp_path / "train.shard1of3.jsonl.lock"):
        with pytest.raises(LeapError) as e:
            refuse_beside_a_live_writer(out)
        said = e.value.one_line() if hasattr(e.value, "one_line") else str(e.value)
        assert "1/3" in said and "\n" not in str(e.value)
        refuse_beside_a_live_writer(tmp_path / "train.shard0of3.jsonl")  # a part beside a part: each its own
        refuse_beside_a_live_writer(tmp_path / "val.jsonl")  # another output
    with _held(tmp_path / "train.jsonl.lock"):
        with pytest.raises(LeapError, match="without --shard is writing train.jsonl"):
            refuse_beside_a_live_writer(tmp_path / "train.shard2of3.jsonl")
        refuse_beside_a_live_writer(out)  # (its own lock is the run's business: OutputLock)
    refuse_beside_a_live_writer(tmp_path / "train.shard2of3.jsonl")  # that run ended


def test_output_names_with_shard_in_odd_places_are_not_taken_for_parts(tmp_path: Path) -> None:
    from leap_cli.io import part_of, refuse_beside_a_live_writer

    assert part_of("my.shard.jsonl") is None and part_of("shard1of4.jsonl") is None
    with _held(tmp_path / "my.jsonl.lock"), _held(tmp_path / "my.shard.jsonl.lock"):
        refuse_beside_a_live_writer(tmp_path / "my.shard.jsonl")


def test_the_probe_of_a_lock_leaves_it_free_for_its_own_run(tmp_path: Path) -> None:
    from leap_cli.io import OutputLock, writer_of

    out = tmp_path / "train.jsonl"
    out.with_name("train.jsonl.lock").write_text("")
    assert writer_of(out) is None and writer_of(tmp_path / "none") is None
    taken = OutputLock(out)
    taken.acquire()
    try:
        assert writer_of(out) is not None  # (the run's own holder line)
    finally:
        taken.release()
    assert writer_of(out) is None
    with OutputLock(out):  # the probes took nothing from the run that came next
        pass


# ---- a billed failed 200 and --max-cost --------------------------------------------------------------------------


def test_billed_failed_200s_after_a_reply_stop_the_run_at_the_max_cost(tmp_path: Path, monkeypatch) -> None:
    """The first request answered (so that the run of failures is not taken for a broken server), then only failed
    200s whose usage the provider bills: --max-cost counts them and no request goes out past the cap."""
    from leap_cli.programs.generate import generate_programs
    from leap_cli.programs.store import ProgramStore
    from tests.program_helpers import excerpt_annotations, excerpt_programs, server_config
    from tests.programs_llm_server import Reply, ScriptedServer, completion, narration_id_of

    excerpt_annotations(tmp_path, rows=6)
    good = excerpt_programs(6)
    monkeypatch.setenv("LEAP_TEST_KEY", "sk-test-attack2")
    seen: list[str] = []

    def script(body, n):  # each request: 1000 in, 200 out, $0.0014 at 1 and 2 USD per million
        seen.append(narration_id_of(body))
        if len(seen) == 1:
            return Reply(json.dumps(good[seen[0]]))
        data = completion("{}", body.get("model", "m"))
        data["choices"][0]["finish_reason"] = "error"
        return Reply(raw=json.dumps(data))

    with ScriptedServer(script) as server:
        s = generate_programs(server_config(tmp_path, server, concurrency=1, max_retries=0, max_cost=0.004))
        sent = len(server.requests)
    assert sent == 3, sent  # the third took it over the cap: no fourth
    assert s.cost == pytest.approx(3 * 0.0014)
    assert "--max-cost" in (s.stopped or ""), s.stopped
    with contextlib.closing(ProgramStore(tmp_path / "programs" / "cache.sqlite")) as store:
        ledger = store.spent(tmp_path / "programs" / "val.jsonl")
    assert ledger["cost"] == pytest.approx(3 * 0.0014) and ledger["requests"] == 3
    with ScriptedServer(script) as server:  # the rerun: the ledger is over the cap, nothing sent
        s = generate_programs(server_config(tmp_path, server, concurrency=1, max_retries=0, max_cost=0.004,
                                            retry_failed=True))
        assert server.requests == []
    assert "--max-cost" in (s.stopped or "")


# ---- --batch-file --retry-errors and a record whose repair turn's request failed --------------------------------

from tests.test_attack_s53_s53attack import good, repair_failed_output, workdir  # noqa: E402,F401 (the fixtures)


def test_batch_file_retry_errors_says_what_to_do_about_the_repair_failed_record_it_leaves(workdir, good,  # noqa: F811
                                                                                         tmp_path) -> None:
    """Was wrong: --batch-file --retry-errors leaves a repair_failed record to a live run but its note says only
    'invalid: add --retry-invalid' (which pays its first reply again); nothing says a live --retry-errors sends just
    its repair turn."""
    from collections import Counter

    from leap_cli.commands.programs import not_valid_notes
    from leap_cli.programs.batch import write_batch_file
    from tests.program_helpers import server_config
    from tests.programs_llm_server import ScriptedServer

    repair_failed_output(workdir, good)
    stats = Counter()
    with ScriptedServer(lambda body, n: None) as server:
        n = write_batch_file(server_config(workdir, server, concurrency=1, repair_rounds=2, retry_failed=True),
                             tmp_path / "b.jsonl", stats)
        assert server.requests == []
    assert n == 0  # (no Batch request: it asks no repair turn)
    notes = not_valid_notes(stats)
    assert any("--retry-errors" in line for line in notes), notes


# ---- a DataLoader worker's feeder errors (loader_worker_init) ---------------------------------------------------


def _worker_feeds_an_unpicklable(err_path: str, done) -> None:
    import multiprocessing.queues
    import threading

    import sys

    sys.stderr = open(err_path, "w", buffering=1)  # noqa: SIM115 (this child's, until it ends)
    from leap_cli.shards.dataset import loader_worker_init

    loader_worker_init(0)
    done.put(multiprocessing.queues.Queue._on_queue_feeder_error.__name__)
    done.close()
    done.join_thread()
    q = multiprocessing.get_context("fork").Queue()
    q.put(threading.Lock())  # (cannot be pickled: the feeder thread's error, which ends the worker)
    q.close()
    q.join_thread()


def test_a_worker_feeder_error_is_one_line_naming_it_and_the_main_process_is_unchanged(tmp_path: Path) -> None:
    import multiprocessing.queues

    from leap_cli.shards.dataset import LOST_BATCH_EXIT

    before = multiprocessing.queues.Queue.__dict__["_on_queue_feeder_error"]
    ctx = multiprocessing.get_context("fork")
    done = ctx.Queue()
    p = ctx.Process(target=_worker_feeds_an_unpicklable, args=(str(tmp_path / "err"), done))
    p.start()
    assert done.get(timeout=60) == "_batch_not_handed_over"
    p.join(30)
    assert p.exitcode == LOST_BATCH_EXIT  # (the main process sees the worker's end, not a batch that never comes)
    said = (tmp_path / "err").read_text()
    lines = [line for line in said.splitlines() if line.strip()]
    assert len(lines) == 1 and "could not hand a batch over" in lines[0] and "TypeError" in lines[0], said
    assert "lock" in lines[0].lower() and "Traceback" not in said
    assert multiprocessing.queues.Queue.__dict__["_on_queue_feeder_error"] is before  # (this process: as it was)


def test_a_cache_of_a_newer_leap_opens_and_keeps_its_version(tmp_path: Path) -> None:
    from leap_cli.programs.store import MIGRATIONS, ProgramStore

    path = tmp_path / "cache.sqlite"
    with contextlib.closing(ProgramStore(path)) as store:
        store.put("k", "r", {"prompt_tokens": 1, "completion_tokens": 2}, "m")
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 3}")  # (a newer leap's migrations ran on it)
    db.commit()
    db.close()
    with contextlib.closing(ProgramStore(path)) as store:
        assert store.get("k") is not None
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) + 3
