"""Attack on session 53's third round (helper attack3): the program cache opened or written while another process
holds it locked (a write transaction, an EXCLUSIVE locking mode), the "repair" kind of not-valid record in the resumed
counts, notes and warnings of live, --batch-file, --retry-invalid and validate-programs runs with failed, invalid and
repair_failed records mixed, and the trained-on line after program changes and relabels mixed."""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from leap_cli.errors import LeapError
from leap_cli.io import read_jsonl
from tests.program_helpers import excerpt_annotations, excerpt_programs, server_config
from tests.programs_llm_server import Reply, ScriptedServer, narration_id_of

# ---- the program cache held locked by another process -------------------------------------------------------------

HOLDERS = {
    # a write transaction held open (an sqlite3 shell, a hung process) on a cache this leap made
    "write": "db.execute('BEGIN IMMEDIATE')",
    # a new file another process is making (its first transaction, before any journal_mode switch)
    "new": "db.execute('BEGIN EXCLUSIVE'); db.execute('CREATE TABLE x (a)')",
    # a connection in locking_mode=EXCLUSIVE (as on a file system without shared memory): it keeps its lock for good
    "exclusive": "db.execute('PRAGMA journal_mode=DELETE'); db.execute('PRAGMA locking_mode=EXCLUSIVE'); "
                 "db.execute('BEGIN EXCLUSIVE'); db.execute('SELECT * FROM sqlite_master').fetchall(); "
                 "db.execute('COMMIT')",
}


@contextlib.contextmanager
def _held(path: Path, how: str):
    code = ("import sqlite3, sys, time\ndb = sqlite3.connect(sys.argv[1], isolation_level=None)\n" + HOLDERS[how]
            + "\nprint('ready', flush=True)\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture()
def short_timeout(monkeypatch):
    from leap_cli.programs.store import ProgramStore

    monkeypatch.setattr(ProgramStore, "TIMEOUT", 0.5)
    return ProgramStore


@pytest.mark.parametrize("how", ["new", "exclusive"])
def test_a_cache_another_process_keeps_locked_is_said_locked_within_the_timeout_not_damaged(tmp_path, short_timeout,
                                                                                          how):
    path = tmp_path / "cache.sqlite"
    if how == "exclusive":
        with contextlib.closing(short_timeout(path)):  # a cache made by leap, then held in EXCLUSIVE mode
            pass
    with _held(path, how):
        t = time.monotonic()
        with pytest.raises(LeapError) as e:
            short_timeout(path)
        took = time.monotonic() - t
    said = str(e.value)
    assert took < 5, took  # (the WAL switch's retries end at the timeout, not for ever)
    assert "locked" in said and "another process" in said and str(path) in said
    assert "move it aside" not in said and "\n" not in said
    with contextlib.closing(short_timeout(path)) as store:  # the lock gone: the cache opens and keeps what it holds
        store.put("k", "{}", {"prompt_tokens": 1}, "m")
        store.commit()
        assert store.get("k")[0] == "{}"


def test_a_write_to_a_cache_another_process_keeps_locked_says_locked_not_disk_full(tmp_path, short_timeout):
    """Was wrong: a write to a cache another process keeps locked says 'free disk space, lift a quota ... or make
    the folder writable' (store._unwritten), not locked."""
    path = tmp_path / "cache.sqlite"
    store = short_timeout(path)
    try:
        with _held(path, "write"):
            with pytest.raises(LeapError) as e:
                store.put("k", "{}", {"prompt_tokens": 1}, "m")  # (commit_every 0: written at once)
        said = str(e.value)
        assert "locked" in said and str(path) in said
        assert "another process" in said and "free disk space" not in said, said
    finally:
        with contextlib.suppress(Exception):
            store.close()


# ---- failed, invalid and repair_failed records mixed (generate.not_valid_kind) -------------------------------------

ROWS = 4
NGINX_502 = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    excerpt_annotations(tmp_path, rows=ROWS)
    monkeypatch.setenv("LEAP_TEST_KEY", "sk-test-attack3")
    return tmp_path


@pytest.fixture(scope="module")
def good():
    return excerpt_programs(ROWS)


def _records(workdir) -> dict:
    return {r["narration_id"]: r for r in read_jsonl(workdir / "programs" / "val.jsonl")}


def _good(good, body) -> Reply:
    return Reply(json.dumps(good[narration_id_of(body)]))


def _bad(good, body) -> Reply:
    program = dict(good[narration_id_of(body)])
    program.pop("post")
    return Reply(json.dumps(program))


def mixed_output(workdir, good) -> dict:
    """An output of one record of each: failed (a 502), invalid (every round fails the schema), repair_failed (the
    second repair turn's request gets a 502) and valid; {kind: narration id}."""
    from leap_cli.programs.generate import generate_programs

    failed, invalid, repair, valid = sorted(good)

    def script(body, n):
        nid = narration_id_of(body)
        if nid == failed or (nid == repair and n >= 2):
            return Reply(status=502, raw=NGINX_502)
        return _bad(good, body) if nid in (invalid, repair) else _good(good, body)

    with ScriptedServer(script) as server:
        s = generate_programs(server_config(workdir, server, concurrency=1, max_retries=0, repair_rounds=2))
    assert s.statuses == {"valid": 1, "invalid": 2, "failed": 1}
    recs = _records(workdir)
    assert recs[repair]["provenance"].get("repair_failed") is True
    assert not recs[invalid]["provenance"].get("repair_failed")
    return {"failed": failed, "invalid": invalid, "repair": repair, "valid": valid}


def _cli(monkeypatch, capsys, workdir, server, *extra):
    from tests.procs import leap_main

    code, out, err = leap_main(monkeypatch, capsys, "generate-programs", "--workdir", str(workdir), "--split", "val",
                               "--backend", "openai", "--model", "test-model", "--base-url", server.base_url,
                               "--api-key-env", "LEAP_TEST_KEY", "--max-retries", "0", "--backoff", "0.01",
                               "--concurrency", "1", "--repair-rounds", "2", *extra)
    return code, " ".join((out + err).split())


def test_a_rerun_of_a_mixed_output_resumes_all_and_counts_the_repair_failed_one_as_invalid(workdir, good, monkeypatch,
                                                                                           capsys):
    from leap_cli.programs.generate import generate_programs

    mixed_output(workdir, good)
    with ScriptedServer(lambda body, n: _good(good, body)) as server:
        s = generate_programs(server_config(workdir, server, concurrency=1, repair_rounds=2))
        assert server.requests == []
    assert s.resumed == ROWS and s.resumed_not_valid == Counter({"failed": 1, "invalid": 1, "repair": 1})
    with ScriptedServer(lambda body, n: _good(good, body)) as server:
        code, said = _cli(monkeypatch, capsys, workdir, server)
        assert server.requests == []
    assert "Traceback" not in said
    assert "4 (1 failed, 2 invalid)" in said, said  # (the summary's resumed line: repair_failed is invalid)
    # one note each, each naming its own way out
    assert "1 of the records done before is failed" in said and "--retry-errors to ask for it again" in said
    assert "is invalid with a repair turn to ask (its request failed" in said
    assert "1 of the records done before is invalid: add --retry-invalid" in said


def test_retry_errors_on_a_mixed_output_sends_the_failed_one_and_the_repair_turn_only(workdir, good, caplog):
    from leap_cli.programs.generate import generate_programs

    ids = mixed_output(workdir, good)
    caplog.clear()
    with ScriptedServer(lambda body, n: _good(good, body)) as server, caplog.at_level(logging.WARNING):
        s = generate_programs(server_config(workdir, server, concurrency=1, repair_rounds=2, retry_failed=True))
        asked = Counter(narration_id_of(b) for b in server.requests)
    assert asked == Counter({ids["failed"]: 1, ids["repair"]: 1})  # (the plain invalid one is not paid again)
    said = " ".join(r.getMessage() for r in caplog.records if "asked for again" in r.getMessage())
    assert "1 failed (--retry-errors)" in said and "1 invalid with a repair turn to ask (its request failed" in said, \
        said
    assert "--retry-invalid" not in said
    assert s.resumed == 2 and s.resumed_not_valid == Counter({"invalid": 1})
    recs = _records(workdir)
    assert recs[ids["failed"]]["status"] == recs[ids["repair"]]["status"] == "valid"
    assert recs[ids["invalid"]]["status"] == "invalid"


def test_retry_invalid_on_a_mixed_output_asks_both_invalid_ones_anew_and_keeps_the_failed_one(workdir, good, caplog):
    from leap_cli.programs.generate import generate_programs

    ids = mixed_output(workdir, good)
    caplog.clear()
    with ScriptedServer(lambda body, n: _good(good, body)) as server, caplog.at_level(logging.WARNING):
        s = generate_programs(server_config(workdir, server, concurrency=1, repair_rounds=2, retry_invalid=True))
        asked = Counter(narration_id_of(b) for b in server.requests)
        sizes = {len(b["messages"]) for b in server.requests}
    assert asked == Counter({ids["invalid"]: 1, ids["repair"]: 1}) and len(sizes) == 1  # (both from the start)
    said = " ".join(r.getMessage() for r in caplog.records if "asked for again" in r.getMessage())
    assert "2 invalid (--retry-invalid: not answered from the cache)" in said, said
    assert "repair turn" not in said
    assert s.resumed == 2 and s.resumed_not_valid == Counter({"failed": 1})
    assert {nid: r["status"] for nid, r in _records(workdir).items()} == {
        ids["failed"]: "failed", ids["invalid"]: "valid", ids["repair"]: "valid", ids["valid"]: "valid"}


def test_a_batch_file_of_a_mixed_output_notes_each_kind_and_writes_no_request(workdir, good, tmp_path, monkeypatch,
                                                                            capsys):
    mixed_output(workdir, good)
    batch = tmp_path / "batch.jsonl"
    with ScriptedServer(lambda body, n: _good(good, body)) as server:
        code, said = _cli(monkeypatch, capsys, workdir, server, "--batch-file", str(batch))
        assert server.requests == []
    assert "Traceback" not in said, said
    assert not batch.exists() or batch.read_text() == ""
    assert "is failed (see leap validate-programs)" in said
    assert ("is invalid with a repair turn to ask (its request failed, or the reply came from a Batch, which asks "
            "none): a run with --retry-errors (without --batch-file)") in said
    assert "1 of the records done before is invalid: add --retry-invalid" in said


def test_a_batch_file_with_retry_errors_writes_the_failed_one_and_leaves_the_repair_failed_one(workdir, good, tmp_path,
                                                                                             monkeypatch, capsys):
    ids = mixed_output(workdir, good)
    batch = tmp_path / "batch.jsonl"
    with ScriptedServer(lambda body, n: _good(good, body)) as server:
        code, said = _cli(monkeypatch, capsys, workdir, server, "--batch-file", str(batch), "--retry-errors")
        assert server.requests == []
    assert "Traceback" not in said, said
    lines = [json.loads(x) for x in batch.read_text().splitlines()]
    asked = [narration_id_of(x["body"]) for x in lines]
    assert asked == [ids["failed"]], asked
    assert "is invalid with a repair turn to ask (its request failed" in said  # (still to do, by a live run)
    assert _records(workdir)[ids["repair"]]["provenance"]["repair_failed"] is True


def test_validate_programs_counts_a_repair_failed_record_as_invalid(workdir, good, monkeypatch, capsys):
    from tests.procs import leap_main

    mixed_output(workdir, good)
    code, out, err = leap_main(monkeypatch, capsys, "validate-programs", str(workdir / "programs" / "val.jsonl"),
                               "--workdir", str(workdir), "--strict")
    said = " ".join((out + err).split())
    assert code == 1 and "Traceback" not in said, said
    assert "--strict: 2 invalid, 1 failed" in said, said
    report = json.loads((workdir / "programs" / "val.report.json").read_text())
    assert report["statuses"]["invalid"] == 2 and report["statuses"]["failed"] == 1


def test_a_repair_failed_record_keeps_the_program_of_the_last_round_answered(workdir, good):
    """(docs/programs.md says "the first round's program": that is so with the default --repair-rounds 1; with more,
    the record keeps the last answered round's program, and every round's findings before the failed request's.)"""
    from leap_cli.programs.generate import generate_programs

    target = sorted(good)[0]

    def script(body, n):
        nid = narration_id_of(body)
        if nid != target:
            return _good(good, body)
        if n >= 2:
            return Reply(status=502, raw=NGINX_502)
        program = {**good[nid], "round": n}  # (not allowed by the schema: each answered round is invalid)
        return Reply(json.dumps(program))

    with ScriptedServer(script) as server:
        generate_programs(server_config(workdir, server, concurrency=1, max_retries=0, repair_rounds=2))
    rec = _records(workdir)[target]
    assert rec["status"] == "invalid" and rec["provenance"]["repair_failed"] is True
    assert rec["program"]["round"] == 1
    assert "502 Bad Gateway" in rec["errors"][-1]["message"] and len(rec["errors"]) >= 2


# ---- the trained-on line after program changes and relabels mixed (provenance.run_programs_text) -------------------

def _prov(annotations: str, programs: str, model: str) -> dict:
    labels = {"annotations": annotations, "verb_classes": "v1", "noun_classes": "n1"}
    return {"train": {"shards": "s", "programs": {"records": 2, "valid": 2, "sha256": programs, "made_by": [
        {"backend": "openai", "model": model, "records": 2, "valid": 2}]}, "labels": labels}, "val": None}


def test_programs_and_relabels_mixed_name_each_earlier_program_set_once_in_order(tmp_path):
    from leap_cli.programs.provenance import run_programs_text
    from leap_cli.train.loop import record_provenance

    steps = [("a", "A", "model-a"), ("b", "A", "model-a"), ("b", "B", "model-b"), ("c", "B", "model-b")]
    record_provenance(tmp_path, _prov(*steps[0]), resumed=False)
    for step in steps[1:]:
        now = record_provenance(tmp_path, _prov(*step), resumed=True)
    assert [(e["train"]["labels"]["annotations"], e["train"]["programs"]["sha256"]) for e in now["earlier"]] == [
        ("a", "A"), ("b", "A"), ("b", "B")]  # (every part of the run kept)
    text = run_programs_text(now)
    assert text.startswith("openai model-b") and text.count("model-a") == 1 and text.count("model-b") == 1, text
    assert "before a resume on other programs: openai model-a" in text and "; then" not in text, text
    now = record_provenance(tmp_path, _prov("c", "C", "model-c"), resumed=True)  # a third program set
    text = run_programs_text(now)
    tail = text.split("before a resume on other programs: ")[1]
    assert tail.split("; then ") == ["openai model-a: 2 valid of 2", "openai model-b: 2 valid of 2"], text
    now = record_provenance(tmp_path, _prov("d", "A", "model-a"), resumed=True)  # back to the first set: said again
    tail = run_programs_text(now).split("before a resume on other programs: ")[1]
    assert [p.split(":")[0] for p in tail.split("; then ")] == ["openai model-a", "openai model-b", "openai model-c"]
