"""Generation against a real local chat-completions server: retries, repairs, cache, resume, cost, Batch."""

import dataclasses
import json
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest

from leap_cli.errors import LeapError
from leap_cli.io import read_jsonl
from leap_cli.programs.batch import ingest_batch, write_batch_file
from leap_cli.programs.generate import GenerateConfig, generate_programs
from leap_cli.programs.offline import _sub_actions, offline_program
from leap_cli.programs.prompt import clip_info, load_exemplars, narration_record
from leap_cli.programs.store import ProgramStore
from tests.program_helpers import excerpt_annotations, excerpt_programs, server_config
from tests.programs_llm_server import Reply, ScriptedServer, completion, narration_id_of

DATA = Path(__file__).parent / "data" / "epic"
CLASSES = Path(__file__).parent / "data" / "epic100"  # the foundation's copy of EPIC's class files
N_SEGMENTS = 6


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    excerpt_annotations(tmp_path, rows=N_SEGMENTS)
    monkeypatch.setenv("LEAP_TEST_KEY", "sk-test-secret-never-logged")
    return tmp_path


@pytest.fixture(scope="module")
def good_programs():
    """A valid program per segment of the excerpt (the offline generator's, so we know they validate)."""
    return excerpt_programs(N_SEGMENTS)


config = server_config


def records(workdir):
    return read_jsonl(workdir / "programs" / "val.jsonl")


def test_valid_replies_cache_and_resume(workdir, good_programs):
    script = lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))  # noqa: E731
    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server))
        assert s.statuses["valid"] == N_SEGMENTS and len(server.requests) == N_SEGMENTS
        # Structured Outputs with the strict schema were requested
        assert server.requests[0]["response_format"]["type"] == "json_schema"
        assert server.requests[0]["response_format"]["json_schema"]["strict"] is True
        assert s.usage == {"prompt_tokens": 1000 * N_SEGMENTS, "completion_tokens": 200 * N_SEGMENTS, "cached_tokens": 0}
        assert s.cost == pytest.approx(N_SEGMENTS * (1000 * 1.0 + 200 * 2.0) / 1e6)
        recs = records(workdir)
        assert sorted(r["narration_id"] for r in recs) == sorted(good_programs)
        assert all(r["provenance"]["backend"] == "openai" and r["provenance"]["attempts"] == 1 for r in recs)
        # re-run: resumes, zero requests, no duplicates
        s2 = generate_programs(config(workdir, server))
        assert s2.resumed == N_SEGMENTS and s2.total == 0 and len(server.requests) == N_SEGMENTS
        assert len(records(workdir)) == N_SEGMENTS
        # output deleted: every reply comes from the SQLite cache, still zero requests
        (workdir / "programs" / "val.jsonl").unlink()
        s3 = generate_programs(config(workdir, server))
        assert s3.cache_hits == N_SEGMENTS and s3.requests == 0 and len(server.requests) == N_SEGMENTS
        assert all(r["status"] == "valid" and r["provenance"]["cached"] for r in records(workdir))
    with ProgramStore(workdir / "programs" / "cache.sqlite") as store:
        calls = store.calls()
        assert len(calls) == 2 * N_SEGMENTS and sum(c["cached"] for c in calls) == N_SEGMENTS
        assert all(c["prompt_hash"] and c["outcome"] == "valid" for c in calls)
        # a reply from the cache is logged without a second copy of its text
        assert all((c["response"] is None) == bool(c["cached"]) for c in calls)
    # the key is never written anywhere
    for path in (workdir / "programs").iterdir():
        assert b"sk-test-secret" not in path.read_bytes()


def test_non_json_gets_one_repair_then_invalid(workdir):
    with ScriptedServer(lambda body, n: Reply("Sure! Here is the program: take the plate.")) as server:
        s = generate_programs(config(workdir, server, limit=2))
        assert s.statuses["invalid"] == 2 and len(server.requests) == 4  # one repair round each
        repair = server.requests[-1]["messages"][-1]["content"]
        assert "not JSON" in repair
    for r in records(workdir):
        assert r["status"] == "invalid" and r["program"] is None and "not JSON" in r["errors"][0]["message"]
        assert r["provenance"]["rounds"] == 2


def test_schema_violation_repaired(workdir, good_programs):
    def script(body, n):
        program = dict(good_programs[narration_id_of(body)])
        if n == 0:
            program.pop("post")  # violates the schema
            program["steps"] = [dict(program["steps"][0], verb="teleport")]
        return Reply(json.dumps(program))

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, limit=3))
        assert s.statuses["valid"] == 3 and len(server.requests) == 6
        second = [b for b in server.requests if len(b["messages"]) > len(server.requests[0]["messages"])]
        assert len(second) == 3
        assert "post" in second[0]["messages"][-1]["content"]
        assert second[0]["messages"][-2]["role"] == "assistant"
    assert all(r["status"] == "valid" and r["provenance"]["rounds"] == 2 for r in records(workdir))


def test_semantic_violation_kept_when_not_repaired(workdir, good_programs):
    def script(body, n):
        program = json.loads(json.dumps(good_programs[narration_id_of(body)]))
        program["steps"][0]["verb"] = "teleport"
        return Reply(json.dumps(program))

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, limit=1))
        assert s.statuses["invalid"] == 1 and len(server.requests) == 2
    (rec,) = records(workdir)
    assert rec["program"] is not None and rec["errors"][0]["pointer"] == "/steps/0/verb"


def test_429_retry_after_is_honoured(workdir, good_programs):
    def script(body, n):
        if n == 0:
            return Reply(status=429, headers={"Retry-After": "0.3"})
        return Reply(json.dumps(good_programs[narration_id_of(body)]))

    with ScriptedServer(script) as server:
        # backoff of 30 s: only Retry-After (0.3 s) lets this finish quickly
        t0 = time.monotonic()
        s = generate_programs(config(workdir, server, limit=1, backoff=30.0, max_backoff=60.0))
        elapsed = time.monotonic() - t0
        assert s.statuses["valid"] == 1 and len(server.requests) == 2
        assert server.times[1] - server.times[0] >= 0.29 and elapsed < 10
    assert records(workdir)[0]["provenance"]["attempts"] == 2


def test_500_retried_then_fails_after_max_retries(workdir, good_programs):
    def script(body, n):
        nid = narration_id_of(body)
        if nid == "P01_11_0" or n == 0:
            return Reply(status=500)
        return Reply(json.dumps(good_programs[nid]))

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, limit=2, max_retries=2, concurrency=1))
        assert s.statuses == {"failed": 1, "valid": 1}
        assert server.calls_for("P01_11_0") == 3 and server.calls_for("P01_11_1") == 2
    by_id = {r["narration_id"]: r for r in records(workdir)}
    assert by_id["P01_11_0"]["status"] == "failed" and "500" in by_id["P01_11_0"]["errors"][0]["message"]
    assert by_id["P01_11_0"]["provenance"]["attempts"] == 3
    assert len(records(workdir)) == 2
    # a plain re-run keeps the failed record; --retry-failed redoes it (and only it) once the server is healthy
    with ScriptedServer(lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))) as server:
        s = generate_programs(config(workdir, server))
        assert s.resumed == 2 and server.calls_for("P01_11_0") == 0 and len(server.requests) == N_SEGMENTS - 2
        s = generate_programs(config(workdir, server, retry_failed=True))
        assert s.statuses == {"valid": 1} and server.calls_for("P01_11_0") == 1
    recs = records(workdir)
    assert len(recs) == N_SEGMENTS and all(r["status"] == "valid" for r in recs)


def test_retry_errors_with_a_limit_keeps_the_failed_records_it_does_not_redo(workdir, good_programs):
    # (a 400 of its own fails its record; a 500, or the same 400, for every request stops the stage:
    # test_programs_endpoints.py)
    refused = lambda body, n: Reply(status=400, raw=json.dumps(  # noqa: E731
        {"error": {"message": f"the prompt of {narration_id_of(body)} is too long"}}))
    with ScriptedServer(refused) as server:
        s = generate_programs(config(workdir, server, limit=3, max_retries=0))
        assert s.statuses == {"failed": 3}
    with ScriptedServer(lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))) as server:
        s = generate_programs(config(workdir, server, retry_failed=True, limit=1))
        assert s.statuses == {"valid": 1} and len(server.requests) == 1
    assert sorted(r["status"] for r in records(workdir)) == ["failed", "failed", "valid"]


def test_retry_invalid_asks_again_for_the_invalid_records_only(workdir, good_programs):
    """An endpoint that answered with nothing (a misconfigured local server) gave invalid records whose replies
    were cached: --retry-errors, a new --out and --force all replayed them. --retry-invalid asks again for
    those records (their new replies replace the cached ones); the valid ones are neither redone nor asked."""
    with ScriptedServer(lambda body, n: Reply("")) as server:
        s = generate_programs(config(workdir, server, limit=2, repair_rounds=0))
        assert s.statuses == {"invalid": 2}
    with ScriptedServer(lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))) as server:
        s = generate_programs(config(workdir, server, limit=1, repair_rounds=0))  # one new segment
        assert s.statuses == {"valid": 1} and len(server.requests) == 1
        s = generate_programs(config(workdir, server, retry_failed=True, repair_rounds=0))
        assert s.statuses.get("invalid", 0) == 0 and len(server.requests) == 1 + N_SEGMENTS - 3  # not the invalid
        assert sum(r["status"] == "invalid" for r in records(workdir)) == 2
        s = generate_programs(config(workdir, server, retry_invalid=True, repair_rounds=0))
        assert s.statuses == {"valid": 2} and len(server.requests) == N_SEGMENTS and s.cache_hits == 0
    assert len(records(workdir)) == N_SEGMENTS and {r["status"] for r in records(workdir)} == {"valid"}
    with ScriptedServer(lambda body, n: Reply(status=500)) as server:  # their new replies are what the cache holds
        s = generate_programs(config(workdir, server, out=workdir / "again.jsonl", repair_rounds=0))
        assert s.statuses == {"valid": N_SEGMENTS} and not server.requests


def test_slow_reply_times_out_and_is_retried(workdir, good_programs):
    def script(body, n):
        return Reply(json.dumps(good_programs[narration_id_of(body)]), delay=1.5 if n == 0 else 0.0)

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, limit=1, timeout=0.4))
        assert s.statuses["valid"] == 1 and len(server.requests) == 2
    assert records(workdir)[0]["provenance"]["attempts"] == 2


def test_json_mode_fallback_when_structured_outputs_refused(workdir, good_programs):
    def script(body, n):
        if body["response_format"]["type"] == "json_schema":
            return Reply(status=400, raw=json.dumps({"error": {"message": "response_format json_schema not supported"}}))
        return Reply(json.dumps(good_programs[narration_id_of(body)]))

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, limit=2, concurrency=1))
        assert s.statuses["valid"] == 2
        assert [b["response_format"]["type"] for b in server.requests] == ["json_schema", "json_object", "json_object"]
        # a new run asks for Structured Outputs until it learns the refusal again: every reply (also those asked
        # for after the switch) is found under the settings asked for, none is paid twice
        # resumed: the refusal is learnt again (one more refused request), the next four are asked after it
        s = generate_programs(config(workdir, server, limit=6, concurrency=1))
        assert s.statuses["valid"] == 4 and len(server.requests) == 8
        s = generate_programs(config(workdir, server, limit=6, concurrency=1, out=workdir / "again.jsonl"))
        assert s.cache_hits == 6 and len(server.requests) == 8


def test_max_cost_stops_cleanly(workdir, good_programs):
    script = lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))  # noqa: E731
    with ScriptedServer(script) as server:
        # each call costs (1000*1 + 200*2)/1e6 = 0.0014 $
        s = generate_programs(config(workdir, server, concurrency=1, max_cost=0.003))
        assert s.stopped and "max-cost" in s.stopped
        assert len(records(workdir)) == 3 == len(server.requests)
        s2 = generate_programs(config(workdir, server, concurrency=1))
        assert s2.resumed == 3 and len(records(workdir)) == N_SEGMENTS


def test_max_cost_stop_line_counts_the_replies_in_flight(workdir, good_programs):
    """The stop line said what was spent when the cap was reached, before the replies then in flight came in
    (QA: "$0.0900 spent" beside the summary's $0.1350): it gives the run's final spend, as the summary does."""
    script = lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]), delay=0.0 if n == 0 else 0.5)  # noqa: E731
    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, concurrency=3, max_cost=0.001))
        assert len(server.requests) == 3 == len(records(workdir))  # the first reply reached the cap; two in flight
        assert s.cost == pytest.approx(3 * 0.0014)
        assert f"${s.spent_before + s.cost:.4f} spent on val.jsonl so far, ${s.cost:.4f} in this run" in s.stopped


def test_max_cost_holds_back_repair_turns_too(workdir, good_programs):
    """The cap was asked only before a segment's first request: segments started before it was reached sent their
    repair turns after it (QA: $24 spent under --max-cost 5 at --concurrency 8, each first reply needing a repair).
    Now no request goes out past the cap; a segment whose repair was held back stays pending, its first reply
    cached, so the rerun with a raised cap sends only the repair."""
    def script(body, n):
        program = dict(good_programs[narration_id_of(body)])
        if n == 0:
            program["steps"] = [dict(program["steps"][0], verb="teleport")]  # invalid: repaired in round 2
        return Reply(json.dumps(program), delay=0.3 if n == 0 else 0.0)

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, concurrency=3, limit=3, max_cost=0.001))
        assert s.stopped and len(server.requests) == 3  # the three first requests, in flight at the cap; no repair
        assert not records(workdir) and s.cost == pytest.approx(3 * 0.0014)
        s = generate_programs(config(workdir, server, concurrency=3, limit=3))
        assert len(server.requests) == 6 and s.cache_hits == 3  # the repairs alone
    assert [r["provenance"]["rounds"] for r in records(workdir)] == [2, 2, 2]
    assert all(r["status"] == "valid" for r in records(workdir))


def test_backend_calls_count_what_the_server_got(workdir):
    """Requests that stopped the stage (a refused key, here) were left out of "backend calls (incl. retries)"
    (QA: the server got 4, the summary said 0)."""
    def script(body, n):
        return Reply(status=401, raw=json.dumps({"error": {"message": "Incorrect API key provided"}}), delay=0.2)

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, concurrency=3), reraise=False)
        assert s.error is not None and "API key" in s.error.message
        assert len(server.requests) >= 1 and s.requests == len(server.requests)


def test_missing_key_is_a_leap_error(workdir, monkeypatch):
    monkeypatch.delenv("LEAP_TEST_KEY")
    with ScriptedServer(lambda b, n: Reply("{}")) as server, pytest.raises(LeapError, match="LEAP_TEST_KEY"):
        generate_programs(config(workdir, server))


def test_an_output_that_is_done_needs_no_key(workdir, good_programs, monkeypatch):
    """A pipeline run again where the key is not set (a GPU node's job) stopped at generate-programs with "no API
    key" though every program was made: with nothing pending it says so and goes on; anything pending (here one
    segment, and --retry-invalid's) still asks for the key before a record is touched, and --force at once."""
    bad = list(good_programs)[0]
    with ScriptedServer(lambda body, n: Reply("not json" if narration_id_of(body) == bad else
                                              json.dumps(good_programs[narration_id_of(body)]))) as server:
        cfg = config(workdir, server, repair_rounds=0)
        assert generate_programs(cfg).statuses == {"valid": N_SEGMENTS - 1, "invalid": 1}
        monkeypatch.delenv("LEAP_TEST_KEY")
        before = cfg.out_path.read_bytes()
        s = generate_programs(cfg)
        assert s.total == 0 and s.resumed == N_SEGMENTS and s.requests == 0
        assert s.spent_before > 0  # (the ledger's, as a run with its key says)
        for other in (dict(retry_invalid=True), dict(force=True)):
            with pytest.raises(LeapError, match="no API key: the environment variable LEAP_TEST_KEY is not set"):
                generate_programs(dataclasses.replace(cfg, **other))
            assert cfg.out_path.read_bytes() == before
        lines = before.splitlines(keepends=True)
        cfg.out_path.write_bytes(b"".join(lines[1:]))
        with pytest.raises(LeapError, match="LEAP_TEST_KEY"):
            generate_programs(cfg)
        assert len(server.requests) == N_SEGMENTS


def test_a_missing_key_touches_no_file(workdir, tmp_path, monkeypatch):
    """A run that stops on a missing key wrote the output's settings first (and the cache, the lock, an empty
    output): after a --batch-file of another model, the keyless run's default model was recorded, and the batch's
    results were then refused at the ingest or kept as of other settings."""
    monkeypatch.delenv("LEAP_TEST_KEY")
    cfg = GenerateConfig(workdir=workdir, split="val", model="gpt-batch")
    assert write_batch_file(cfg, tmp_path / "b.jsonl") == N_SEGMENTS
    before = {p.name: p.read_bytes() for p in (workdir / "programs").iterdir()}
    live = dataclasses.replace(cfg, backend="openai", model="gpt-other", api_key_env="LEAP_TEST_KEY",
                               base_url="http://127.0.0.1:9")
    with pytest.raises(LeapError, match="no API key"):
        generate_programs(live)
    assert {p.name: p.read_bytes() for p in (workdir / "programs").iterdir()} == before


def test_an_output_that_is_only_its_settings_is_protected(workdir, good_programs, tmp_path):
    """--batch-file leaves the output as its settings file until the ingest: a second --batch-file (or a live run)
    of other settings replaced them without a word, and the first batch's results were then of other settings.
    Given both batches' results at once, the output's own win in either order; a paid result from which no
    record is made is in the ledger all the same."""
    cfg = GenerateConfig(workdir=workdir, split="val", model="gpt-test")
    old = tmp_path / "old.jsonl"
    assert write_batch_file(dataclasses.replace(cfg, temperature=0.5), old) == N_SEGMENTS
    with pytest.raises(LeapError, match="other settings.*--temperature"):
        write_batch_file(cfg, tmp_path / "new.jsonl")
    assert write_batch_file(dataclasses.replace(cfg, force=True), tmp_path / "new.jsonl") == N_SEGMENTS

    def results(batch, tag):
        return [{**x, "id": f"{tag}_{i}"} for i, x in enumerate(batch_results(batch, lambda i, nid: {"response": {
            "status_code": 200, "body": completion(json.dumps(good_programs[nid]), prompt_tokens=100)}}))]

    both = results(old, "old") + results(tmp_path / "new.jsonl", "new")
    counts = ingest_batch(cfg, results_file(tmp_path / "r.jsonl", both))
    assert counts == {"valid": N_SEGMENTS, "superseded": N_SEGMENTS}, counts
    assert not any(r["provenance"].get("other_settings") for r in records(workdir))
    assert len(cache_rows(cfg)) == N_SEGMENTS
    with ProgramStore(cfg.cache_path) as store:
        assert store.spent(cfg.out_path)["requests"] == 2 * N_SEGMENTS
    # the same segments' results of a batch submitted twice: no record made, paid all the same (once)
    again = results_file(tmp_path / "again.jsonl", results(tmp_path / "new.jsonl", "twice"))
    assert ingest_batch(cfg, again) == ingest_batch(cfg, again) == {"already_present": N_SEGMENTS}
    with ProgramStore(cfg.cache_path) as store:
        assert store.spent(cfg.out_path)["requests"] == 3 * N_SEGMENTS


def test_batch_file_and_ingest(workdir, good_programs, tmp_path):
    cfg = GenerateConfig(workdir=workdir, split="val", model="gpt-test")
    batch = tmp_path / "batch.jsonl"
    assert write_batch_file(cfg, batch) == N_SEGMENTS
    reqs = read_jsonl(batch)
    # NARRATION_ID@CLIP_HASH@KEY: the clip a request was made from, and the head of its cache key, come back with
    # its result
    assert {r["custom_id"].partition("@")[0] for r in reqs} == set(good_programs)
    assert all([len(part) for part in r["custom_id"].split("@")[1:]] == [16, 16] for r in reqs)
    assert all(r["url"] == "/v1/chat/completions" and r["body"]["model"] == "gpt-test" for r in reqs)
    assert all(r["body"]["max_completion_tokens"] == cfg.max_tokens and "max_tokens" not in r["body"] for r in reqs)
    results = []
    for i, r in enumerate(reqs):
        nid = r["custom_id"].partition("@")[0]
        content = json.dumps(good_programs[nid]) if i % 3 else "not json"
        resp = {"status_code": 200, "body": completion(content)} if i != 1 else {"status_code": 500, "body": {}}
        results.append({"id": f"batch_req_{i}", "custom_id": r["custom_id"], "response": resp, "error": None})
    out = tmp_path / "results.jsonl"
    out.write_text("".join(json.dumps(x) + "\n" for x in results))
    counts = ingest_batch(cfg, out)
    assert counts == {"valid": 3, "invalid": 2, "failed": 1}
    recs = records(workdir)
    assert len(recs) == N_SEGMENTS and all(r["provenance"]["backend"] == "openai-batch" for r in recs)
    assert ingest_batch(cfg, out) == {"already_present": N_SEGMENTS}
    # the output is the openai backend's (cfg left the backend at its offline default): an offline run is refused
    settings = json.loads(Path(str(cfg.out_path) + ".settings.json").read_text())
    assert settings["backend"] == "openai" and settings["model"] == "gpt-test", settings
    with pytest.raises(LeapError, match="other settings|--force"):
        generate_programs(GenerateConfig(workdir=workdir, split="val", retry_failed=True))


def batch_results(batch, reply):
    """The Batch output of the requests in ``batch``: ``reply(i, narration_id)`` -> a line's response (or error)."""
    return [{"id": f"batch_req_{i}", "custom_id": r["custom_id"], **reply(i, r["custom_id"].partition("@")[0])}
            for i, r in enumerate(read_jsonl(batch))]


def cache_rows(cfg):
    import sqlite3

    with ProgramStore(cfg.cache_path):  # (its buffered rows are on disk once it is closed)
        pass
    db = sqlite3.connect(cfg.cache_path)
    try:
        return db.execute("SELECT key, response, prompt_tokens, completion_tokens, cut FROM cache ORDER BY key"
                          ).fetchall()
    finally:
        db.close()


def test_ingested_batch_replies_are_cached_so_a_live_run_of_the_same_settings_pays_nothing(workdir, good_programs,
                                                                                            tmp_path):
    """A Batch API reply is paid as a live one is: ingested, it goes into the program cache under the key a live run
    of the same settings looks up, so that a live run over the same segments after the output is lost (or with
    another --out, or --force) sends no request (it asked for every one of them again: paid twice)."""
    with ScriptedServer(lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))) as server:
        cfg = config(workdir, server)
        batch = tmp_path / "batch.jsonl"
        assert write_batch_file(cfg, batch) == N_SEGMENTS
        results = results_file(tmp_path / "results.jsonl", batch_results(batch, lambda i, nid: {"response": {
            "status_code": 200, "body": completion(json.dumps(good_programs[nid]), prompt_tokens=900 + i)}}))
        assert ingest_batch(cfg, results) == {"valid": N_SEGMENTS}
        ingested = {r["narration_id"]: r["program"] for r in records(workdir)}
        rows = cache_rows(cfg)
        assert len(rows) == N_SEGMENTS and sorted(r[2] for r in rows) == [900 + i for i in range(N_SEGMENTS)]
        with ProgramStore(cfg.cache_path) as store:
            spent = store.spent(cfg.out_path)
        # the same results again: nothing more in the cache, nor in the ledger
        assert ingest_batch(cfg, results) == {"already_present": N_SEGMENTS}
        assert cache_rows(cfg) == rows
        with ProgramStore(cfg.cache_path) as store:
            assert store.spent(cfg.out_path) == spent
        # another --out, then the output lost: each live run is answered from the cache
        other = dataclasses.replace(cfg, out=tmp_path / "other.jsonl")
        s = generate_programs(other)
        assert len(server.requests) == 0 and s.requests == 0 and s.cache_hits == N_SEGMENTS
        assert {r["narration_id"]: r["program"] for r in read_jsonl(other.out_path)} == ingested == good_programs
        cfg.out_path.unlink()
        s = generate_programs(cfg)
        assert len(server.requests) == 0 and s.cache_hits == N_SEGMENTS and s.statuses == {"valid": N_SEGMENTS}
        assert {r["narration_id"]: r["program"] for r in records(workdir)} == ingested
        # other settings are another key: asked for
        s = generate_programs(dataclasses.replace(cfg, out=tmp_path / "warm.jsonl", temperature=0.5))
        assert len(server.requests) == N_SEGMENTS and s.cache_hits == 0


def test_ingested_batch_replies_are_cached_as_a_live_run_caches_them(workdir, good_programs, tmp_path):
    """A failed or expired result is not cached (a live run asks for it); an invalid reply is, and a live run
    repairs it (only the repair turn is sent); a reply cut at the token limit is not (the limit it was asked with is
    not known at the ingest: --max-tokens may have been raised since, and a cut reply cached under the higher
    limit's key said to raise it again); a result asked for before its clip changed is not (its prompt is not the
    one of now); a record that stays (ingested again) has its reply cached where the key holds none."""
    ids = []

    def reply(i, nid):
        ids.append(nid)
        if i == 0:
            return {"response": {"status_code": 500, "body": {}}}
        if i == 1:
            return {"response": None, "error": {"code": "batch_expired", "message": "expired"}}
        if i == 2:
            return {"response": {"status_code": 200, "body": completion("not json")}}
        if i == 3:
            cut = completion(json.dumps(good_programs[nid])[:150])
            cut["choices"][0]["finish_reason"] = "length"
            return {"response": {"status_code": 200, "body": cut}}
        return {"response": {"status_code": 200, "body": completion(json.dumps(good_programs[nid]))}}

    with ScriptedServer(lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))) as server:
        cfg = config(workdir, server)
        batch = tmp_path / "batch.jsonl"
        write_batch_file(cfg, batch)
        lines = batch_results(batch, reply)
        assert ingest_batch(cfg, results_file(tmp_path / "results.jsonl", lines)) == {"valid": 2, "invalid": 2,
                                                                                   "failed": 2}
        rows = cache_rows(cfg)
        assert len(rows) == 3 and [r[4] for r in rows] == [0, 0, 0]
        cfg.out_path.unlink()
        s = generate_programs(cfg)
        asked = [narration_id_of(b) for b in server.requests]
        assert sorted(asked) == sorted([ids[0], ids[1], ids[2], ids[3]]) and s.cache_hits == 3, asked
        repair = next(b for b in server.requests if narration_id_of(b) == ids[2])
        assert repair["messages"][-2] == {"role": "assistant", "content": "not json"}
        assert all(r["status"] == "valid" for r in records(workdir))
    # a record that stays (ingested again) has its reply cached where the key holds none (ingested by a leap that
    # cached no Batch reply); a result asked for before its clip changed is kept as that clip's program, not cached
    fresh = tmp_path / "fresh"
    shutil.copytree(workdir / "kitchen", fresh / "kitchen")
    with ScriptedServer(lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))) as server:
        cfg = config(fresh, server)
        write_batch_file(cfg, batch)
        csv = fresh / "kitchen" / "annotations" / "EPIC_100_validation.csv"
        rows = csv.read_text().splitlines()
        narration = rows[1].split(",")[8]
        rows[1] = rows[1].replace(f",{narration},", f",{narration} again,", 1)  # changed while the batch ran
        csv.write_text("\n".join(rows) + "\n")
        changed = rows[1].split(",")[0]
        valid = results_file(tmp_path / "valid.jsonl", batch_results(batch, lambda i, nid: {"response": {
            "status_code": 200, "body": completion(json.dumps(good_programs[nid]))}}))
        counts = ingest_batch(cfg, valid)
        assert counts["valid"] == N_SEGMENTS and counts["asked_before_the_clip_changed"] == 1
        assert not counts["other_settings"]  # (its prompt changed with its clip, not with the settings)
        assert len(cache_rows(cfg)) == N_SEGMENTS - 1
        for path in cfg.cache_path.parent.glob("cache.sqlite*"):  # (a cache lost, or a leap's before this)
            path.unlink()
        assert ingest_batch(cfg, valid) == {"already_present": N_SEGMENTS}
        assert len(cache_rows(cfg)) == N_SEGMENTS - 1
        s = generate_programs(dataclasses.replace(cfg, out=tmp_path / "again.jsonl"))
        assert [narration_id_of(b) for b in server.requests] == [changed] and s.cache_hits == N_SEGMENTS - 1


def test_an_ingested_reply_not_known_valid_leaves_a_valid_cached_reply_under_its_key(workdir, good_programs, tmp_path):
    # a live run's valid reply cached under the key a Batch request of the same settings is cached under: an
    # unparsable Batch reply replacing it would make the next live run over that segment pay for a repair
    with ScriptedServer(lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))) as server:
        cfg = config(workdir, server)
        batch = tmp_path / "batch.jsonl"
        assert write_batch_file(cfg, batch) == N_SEGMENTS
        assert generate_programs(dataclasses.replace(cfg, out=tmp_path / "live.jsonl")).statuses == {
            "valid": N_SEGMENTS}
        rows = cache_rows(cfg)
        assert len(rows) == N_SEGMENTS
        lines = batch_results(batch, lambda i, nid: {"response": {"status_code": 200, "body": completion("not json")}})
        assert ingest_batch(cfg, results_file(tmp_path / "results.jsonl", lines)) == {"invalid": N_SEGMENTS}
        assert cache_rows(cfg) == rows


def test_of_two_equal_batch_results_for_a_segment_the_first_is_written(workdir, good_programs, tmp_path):
    # (as ingest_batch's comment says: the first of equals)
    cfg = GenerateConfig(workdir=workdir, split="val", model="gpt-test")
    batch = tmp_path / "batch.jsonl"
    assert write_batch_file(cfg, batch) == N_SEGMENTS
    line = batch_results(batch, lambda i, nid: {"response": {
        "status_code": 200, "body": completion(json.dumps(good_programs[nid]))}})[0]
    both = [{**line, "id": "batch_req_first"}, {**line, "id": "batch_req_second"}]
    assert ingest_batch(cfg, results_file(tmp_path / "results.jsonl", both)) == {"valid": 1, "superseded": 1}
    (rec,) = records(workdir)
    assert rec["provenance"]["batch_request_id"] == "batch_req_first"


def test_a_batch_file_asks_nothing_whose_reply_is_in_the_cache(workdir, good_programs, tmp_path):
    """--batch-file after the output was lost (or with --force, or another --out) wrote a request for every
    segment whose paid reply was in the program cache: submitted, each was paid again. Now their records are made
    from the cache as a live run makes them, with the repair turns that are cached (a record a live run repaired
    was written invalid from its first reply), and no request is written for them; --limit counts the requests;
    with --retry-invalid a segment whose record would be invalid is asked anew in the same run."""
    fixed, broken, fine = list(good_programs)[:3]  # first reply invalid then repaired; invalid twice; valid

    def reply(body, n):
        nid = narration_id_of(body)
        return Reply("not json" if nid == broken or nid == fixed and n == 0 else json.dumps(good_programs[nid]))

    with ScriptedServer(reply) as server:
        cfg = config(workdir, server, limit=3, repair_rounds=1)
        s = generate_programs(cfg)
        assert s.statuses == {"valid": 2, "invalid": 1} and len(server.requests) == 5
        live = {r["narration_id"]: r for r in records(workdir)}
    cfg = dataclasses.replace(cfg, limit=None, base_url=None)
    cfg.out_path.unlink()  # (the output lost)
    batch, stats = tmp_path / "batch.jsonl", Counter()
    assert write_batch_file(cfg, batch, stats) == N_SEGMENTS - 3
    assert {r["custom_id"].partition("@")[0] for r in read_jsonl(batch)} == set(good_programs) - {fixed, broken, fine}
    assert stats["cached_valid"] == 2 and stats["cached_invalid"] == 1
    made = {r["narration_id"]: r for r in records(workdir)}
    assert {k: (r["status"], r["program"]) for k, r in made.items()} == {
        k: (r["status"], r["program"]) for k, r in live.items()}
    assert all(r["provenance"]["cached"] for r in made.values()) and made[fixed]["provenance"]["rounds"] == 2
    # run again: the records made are kept, the others asked for again (the file replaced)
    assert write_batch_file(cfg, batch) == N_SEGMENTS - 3
    # --retry-invalid asks for the invalid record anew (its cached replies are the invalid ones)
    assert write_batch_file(dataclasses.replace(cfg, retry_invalid=True), batch) == N_SEGMENTS - 2
    # the output lost again: --limit counts requests (the cached segments on the way are written too), and
    # --retry-invalid asks in the same run for the segment whose record from the cache would be invalid
    cfg.out_path.unlink()
    stats = Counter()
    assert write_batch_file(dataclasses.replace(cfg, limit=2, retry_invalid=True), batch, stats) == 2
    assert [r["custom_id"].partition("@")[0] for r in read_jsonl(batch)] == [broken, list(good_programs)[3]]
    assert stats["cached_valid"] == 2 and not stats["cached_invalid"]
    assert {r["narration_id"] for r in records(workdir)} == {fixed, fine}
    # a refusal after records were made from the cache says they are kept
    (tmp_path / "split-1-of-3.jsonl").write_text("not a batch file\n")
    with pytest.raises(LeapError, match=r"holds something else than Batch requests: nothing was written \(1 record "
                                        r"made from the program cache before that is kept in"):
        write_batch_file(cfg, tmp_path / "split.jsonl", max_requests=1)
    assert {r["narration_id"] for r in records(workdir)} == {fixed, fine, broken}


def test_a_batch_file_holds_the_output_while_it_writes(workdir, tmp_path, monkeypatch):
    """A live run (or a second --batch-file) started on the output while --batch-file chose and wrote its requests
    asked for the same segments (paid twice), and the cache's records then failed on the lock after the request
    file was in place: the output is locked from the settings check to the end."""
    import leap_cli.programs.batch as batch
    from leap_cli.io import OutputLock

    cfg = GenerateConfig(workdir=workdir, split="val", model="gpt-test")
    real, tried = batch._write_parts, []

    def during(path, lines, *args):
        with pytest.raises(LeapError, match="another leap process is writing this file"):
            OutputLock(cfg.out_path).acquire().release()
        tried.append(path)
        return real(path, lines, *args)

    monkeypatch.setattr(batch, "_write_parts", during)
    assert write_batch_file(cfg, tmp_path / "b.jsonl") == N_SEGMENTS and tried
    OutputLock(cfg.out_path).acquire().release()  # (released at the end)


def test_an_ingest_of_other_settings_caches_nothing(workdir, good_programs, tmp_path, caplog):
    """A Batch result goes into the program cache only under the key it was asked with (its head is in the
    custom_id): ingested with --force under other settings (here another temperature), it was cached under the
    ingest's key, and a live run of those settings took a reply it never asked for as its own. Its record is
    written all the same (paid), marked, and a valid result of the output's settings ingested later replaces it
    (the output's own batch's results were dropped as already present)."""
    with ScriptedServer(lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))) as server:
        cfg = config(workdir, server)
        batch = tmp_path / "batch.jsonl"
        assert write_batch_file(cfg, batch) == N_SEGMENTS
        lines = batch_results(batch, lambda i, nid: {"response": {
            "status_code": 200, "body": completion(json.dumps(good_programs[nid]))}})
        other = dataclasses.replace(cfg, temperature=0.7, force=True)
        assert write_batch_file(other, tmp_path / "other.jsonl") == N_SEGMENTS  # (the output's settings now)
        assert "held no record, only its settings file: Batch requests written with those settings may be out" \
            in caplog.text
        counts = ingest_batch(other, results_file(tmp_path / "results.jsonl", lines))
        assert counts == {"valid": N_SEGMENTS, "other_settings": N_SEGMENTS} and cache_rows(cfg) == []
        assert all(r["provenance"]["other_settings"] for r in records(workdir))
        s = generate_programs(dataclasses.replace(other, out=tmp_path / "live.jsonl", force=False))
        assert s.cache_hits == 0 and len(server.requests) == N_SEGMENTS
        # the output's own batch's results replace them, are cached, and enter the ledger
        own = batch_results(tmp_path / "other.jsonl", lambda i, nid: {"response": {
            "status_code": 200, "body": completion(json.dumps(good_programs[nid]), prompt_tokens=100)}})
        own = [{**x, "id": f"own_{i}"} for i, x in enumerate(own)]
        other = dataclasses.replace(other, force=False)
        with ProgramStore(cfg.cache_path) as store:
            before = store.spent(cfg.out_path)["requests"]
        assert ingest_batch(other, results_file(tmp_path / "own.jsonl", own)) == {"valid": N_SEGMENTS}
        assert not any(r["provenance"].get("other_settings") for r in records(workdir))
        assert len(records(workdir)) == N_SEGMENTS and len(cache_rows(cfg)) == N_SEGMENTS
        with ProgramStore(cfg.cache_path) as store:
            assert store.spent(cfg.out_path)["requests"] == before + N_SEGMENTS
    # a custom_id leap did not write is refused, nothing ingested
    bad = [{**lines[0], "custom_id": lines[0]["custom_id"] + "@more"}]
    with pytest.raises(LeapError, match=r"\[line 1\]: custom_id '.*@more' is not one leap wrote"):
        ingest_batch(other, results_file(tmp_path / "bad.jsonl", bad))
    # results named as an older leap named them (no key) are cached under the ingest's key, as before
    fresh = tmp_path / "fresh"
    shutil.copytree(workdir / "kitchen", fresh / "kitchen")
    cfg = dataclasses.replace(cfg, workdir=fresh)
    assert write_batch_file(cfg, batch) == N_SEGMENTS
    old = [{**x, "custom_id": x["custom_id"].rpartition("@")[0]} for x in lines]
    assert ingest_batch(cfg, results_file(tmp_path / "old.jsonl", old)) == {"valid": N_SEGMENTS}
    assert len(cache_rows(cfg)) == N_SEGMENTS


def test_a_run_over_the_segments_of_a_batch_not_ingested_is_warned(workdir, good_programs, tmp_path, caplog):
    """A live run (or another --batch-file) over an output whose Batch requests are out asked for their segments
    again without a word: a batch submitted paid for them twice. Their segments are recorded beside the output
    until they are answered, and a run that pays for any of them is warned (not one answered from the cache); a
    damaged record is ignored."""
    ok = lambda i, nid: {"response": {"status_code": 200, "body": completion(json.dumps(good_programs[nid]))}}  # noqa: E731
    with ScriptedServer(lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))) as server:
        cfg = config(workdir, server)
        assert write_batch_file(cfg, tmp_path / "b.jsonl") == N_SEGMENTS
        pending = workdir / "programs" / "val.jsonl.batch.json"
        assert sorted(json.loads(pending.read_text())["ids"]) == sorted(good_programs)
        caplog.clear()
        generate_programs(dataclasses.replace(cfg, limit=2))
        assert f"this run asks for 2 segments whose Batch requests were written for {cfg.out_path} (" in caplog.text
        assert "paid twice" in caplog.text and "delete it if that batch was never submitted" in caplog.text
        assert len(json.loads(pending.read_text())["ids"]) == N_SEGMENTS - 2  # (answered by the live run)
        caplog.clear()
        assert write_batch_file(cfg, tmp_path / "b2.jsonl") == N_SEGMENTS - 2
        assert f"b2.jsonl asks for {N_SEGMENTS - 2} segments whose Batch requests" in caplog.text
        lines = batch_results(tmp_path / "b2.jsonl", ok)
        lines[0] = {**lines[0], "response": {"status_code": 500, "body": {}}}  # (one failed)
        assert ingest_batch(cfg, results_file(tmp_path / "r.jsonl", lines)) == {"valid": N_SEGMENTS - 3, "failed": 1}
        assert not pending.exists(), pending.read_text()
        # a --retry-errors batch's segment stays recorded through a plain --batch-file and the same ingest again
        failed = lines[0]["custom_id"].partition("@")[0]
        assert write_batch_file(dataclasses.replace(cfg, retry_failed=True), tmp_path / "b3.jsonl") == 1
        assert write_batch_file(cfg, tmp_path / "b4.jsonl") == 0
        ingest_batch(cfg, tmp_path / "r.jsonl")
        assert json.loads(pending.read_text())["ids"] == [failed]
        # a live run answered from the cache pays nothing: not warned; a damaged record is ignored
        retry = [{**x, "id": "retry"} for x in batch_results(tmp_path / "b3.jsonl", ok)]
        assert ingest_batch(cfg, results_file(tmp_path / "r3.jsonl", retry)) == {"valid": 1}
        assert not pending.exists(), pending.read_text()
        pending.write_text('{"ids": [{"a": 1}, ["x"]], "files": 5}')
        caplog.clear()
        s = generate_programs(dataclasses.replace(cfg, out=tmp_path / "other.jsonl"))
        assert s.cache_hits == N_SEGMENTS and "Batch requests were written" not in caplog.text
        assert write_batch_file(dataclasses.replace(cfg, retry_failed=True), tmp_path / "b5.jsonl") == 0


def test_a_retry_batch_whose_results_failed_again_is_not_pending(workdir, good_programs, tmp_path):
    """A --batch-file --retry-invalid batch whose results failed again (HTTP 500) leaves the invalid records as they
    were: their segments stayed recorded as waiting for a batch, the ingest said they had "no result yet" (ingest
    the error file) and the next --batch-file warned "paid twice" (a code review). The same first results again
    do not take a segment off while its retry batch is out."""
    from leap_cli.programs.generate import batch_pending

    cfg = GenerateConfig(workdir=workdir, split="val", model="gpt-test")
    write_batch_file(cfg, tmp_path / "b.jsonl")
    lines = batch_results(tmp_path / "b.jsonl", lambda i, nid: {"response": {"status_code": 200, "body": completion(
        "not json" if i < 2 else json.dumps(good_programs[nid]))}})
    first = results_file(tmp_path / "r.jsonl", lines)
    ingest_batch(cfg, first)
    retry = dataclasses.replace(cfg, retry_invalid=True)
    assert write_batch_file(retry, tmp_path / "b2.jsonl") == 2
    asked = sorted(batch_pending(cfg.out_path)["ids"])
    assert len(asked) == 2
    ingest_batch(cfg, first)  # (the first batch's results again: the retry batch is still out)
    assert sorted(batch_pending(cfg.out_path)["ids"]) == asked
    again = [{"id": f"req2_{i}", "custom_id": r["custom_id"], "response": {"status_code": 500, "body": {}}}
             for i, r in enumerate(read_jsonl(tmp_path / "b2.jsonl"))]
    assert ingest_batch(retry, results_file(tmp_path / "r2.jsonl", again)) == {"failed": 2}
    assert batch_pending(cfg.out_path)["ids"] == []


def test_an_ingest_at_a_raised_token_limit_is_of_these_settings(workdir, good_programs, tmp_path):
    """--max-tokens may be raised on a resume (a reply not cut at the old limit is the one the higher limit gives):
    results of requests written at the lower limit, ingested at the higher, are of the output's settings, cached
    under the higher limit's key (they were all marked of other settings, and none cached)."""
    low = GenerateConfig(workdir=workdir, split="val", model="gpt-test", max_tokens=1000)
    assert write_batch_file(low, tmp_path / "b.jsonl") == N_SEGMENTS
    lines = batch_results(tmp_path / "b.jsonl", lambda i, nid: {"response": {
        "status_code": 200, "body": completion(json.dumps(good_programs[nid]))}})
    high = dataclasses.replace(low, max_tokens=2000)
    assert ingest_batch(high, results_file(tmp_path / "r.jsonl", lines)) == {"valid": N_SEGMENTS}
    assert len(cache_rows(high)) == N_SEGMENTS


def test_a_batch_file_ends_a_record_whose_repair_turn_is_not_cached(workdir, good_programs, tmp_path):
    """A cached first reply that is invalid, whose repair turn was never asked (a live run without repair rounds):
    the record made from the cache is invalid, unrepaired, as a Batch result is; nothing is asked for it."""
    first = list(good_programs)[0]
    with ScriptedServer(lambda body, n: Reply("not json")) as server:
        generate_programs(config(workdir, server, limit=1, repair_rounds=0))
        cfg = config(workdir, server, repair_rounds=1, out=tmp_path / "other.jsonl")
    stats = Counter()
    assert write_batch_file(cfg, tmp_path / "b.jsonl", stats) == N_SEGMENTS - 1
    (record,) = read_jsonl(cfg.out_path)
    assert record["narration_id"] == first and record["status"] == "invalid" and stats["cached_invalid"] == 1
    assert record["provenance"]["rounds"] == 1 and record["provenance"]["cached"]


def test_cli_says_what_the_cache_answered_and_what_it_did_not_cache(workdir, good_programs, tmp_path):
    from typer.testing import CliRunner

    from leap_cli.cli import app

    with ScriptedServer(lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))) as server:
        generate_programs(config(workdir, server, limit=2))
    (workdir / "programs" / "val.jsonl").unlink()
    base = ["generate-programs", "--workdir", str(workdir), "--split", "val", "--model", "test-model"]
    res = CliRunner().invoke(app, base + ["--batch-file", str(tmp_path / "b.jsonl")])
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and "2 segments' replies were in the program cache (an earlier run or ingest): no " \
        "request for them; their records written to" in said and "(valid 2)" in said, said
    assert f"wrote {N_SEGMENTS - 2} Batch API requests" in said, said
    lines = batch_results(tmp_path / "b.jsonl", lambda i, nid: {"response": {
        "status_code": 200, "body": completion(json.dumps(good_programs[nid]))}})
    res = CliRunner().invoke(app, base + ["--temperature", "0.5", "--force", "--ingest-batch",
                                          str(results_file(tmp_path / "r.jsonl", lines))])
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and f"ingested {N_SEGMENTS - 2} results" in said and "other_settings 4" not in said, said
    assert f"note: {N_SEGMENTS - 2} of the records written were asked for with other settings" in said, said


def test_cli_a_batch_file_whose_cached_records_all_failed_exits_3(workdir, tmp_path):
    """--batch-file that wrote no request, and whose records made from the cache were all invalid, exited 0 with
    only their count: the records are listed as a live run lists them, and with no request written it is a
    stage where every record failed (exit 3); with requests written it exits 0."""
    from typer.testing import CliRunner

    from leap_cli.cli import app

    base = ["generate-programs", "--workdir", str(workdir), "--split", "val", "--model", "test-model",
            "--repair-rounds", "0", "--batch-file", str(tmp_path / "b.jsonl")]
    with ScriptedServer(lambda body, n: Reply("not json")) as server:
        generate_programs(config(workdir, server, limit=2, repair_rounds=0))
        res = CliRunner().invoke(app, base + ["--out", str(tmp_path / "some.jsonl")])
        said = " ".join(res.output.split())
        assert res.exit_code == 0 and f"wrote {N_SEGMENTS - 2} Batch API requests" in said, said
        assert "generate-programs --batch-file: all 2 records failed (by cause):" in said, said
        generate_programs(config(workdir, server, repair_rounds=0))
    res = CliRunner().invoke(app, base + ["--out", str(tmp_path / "all.jsonl")])
    said = " ".join(res.output.split())
    assert res.exit_code == 3 and f"all {N_SEGMENTS} records failed (by cause):" in said, said
    assert "no request to write: every pending segment's reply was in the program cache" in said, said


def test_cli_an_ingest_says_the_segments_whose_results_are_not_in(workdir, good_programs, tmp_path):
    """OpenAI writes the requests that failed or expired to a batch's error file: ingesting only the outputs said
    nothing of those segments, and the next --batch-file's "not ingested yet" warning was the first word."""
    from typer.testing import CliRunner

    from leap_cli.cli import app

    base = ["generate-programs", "--workdir", str(workdir), "--split", "val", "--model", "test-model"]
    res = CliRunner().invoke(app, base + ["--batch-file", str(tmp_path / "b.jsonl")])
    said = " ".join(res.output.split())
    assert "then run this command with --ingest-batch RESULTS.jsonl (and --ingest-batch ERRORS.jsonl, the batch's " \
        "error file, where it has one) in place of --batch-file" in said, said
    lines = batch_results(tmp_path / "b.jsonl", lambda i, nid: {"response": {
        "status_code": 200, "body": completion(json.dumps(good_programs[nid]))}})
    res = CliRunner().invoke(app, base + ["--ingest-batch", str(results_file(tmp_path / "r.jsonl", lines[2:]))])
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and "note: 2 segments of the Batch requests written for" in said, said
    assert "the requests in a batch's error file" in said, said
    res = CliRunner().invoke(app, base + ["--ingest-batch", str(results_file(tmp_path / "e.jsonl", lines[:2]))])
    assert res.exit_code == 0 and "no result yet" not in res.output, res.output


def test_batch_settings_are_recorded_when_the_requests_are_written(workdir, good_programs, tmp_path):
    """The ingest must use the settings the requests were written with; a bad line refuses the whole file before a
    record is written; a cut reply and a line without a status say so."""
    cfg = GenerateConfig(workdir=workdir, split="val", model="gpt-test", limit=3)
    batch = tmp_path / "batch.jsonl"
    assert write_batch_file(cfg, batch) == 3
    ids = [r["custom_id"] for r in read_jsonl(batch)]  # NARRATION_ID@CLIP_HASH
    nids = [i.partition("@")[0] for i in ids]
    cut = completion(json.dumps(good_programs[nids[1]])[:150])
    cut["choices"][0]["finish_reason"] = "length"
    lines = [{"id": "r0", "custom_id": ids[0], "response": {"status_code": 200,
                                                             "body": completion(json.dumps(good_programs[nids[0]]))}},
             {"id": "r1", "custom_id": ids[1], "response": {"status_code": 200, "body": cut}},
             {"id": "r2", "custom_id": ids[2], "response": {"body": {}}}]
    results = tmp_path / "results.jsonl"
    with pytest.raises(LeapError, match="other settings.*model"):  # the file does not exist yet: the sidecar speaks
        ingest_batch(dataclasses.replace(cfg, model="gpt-other"), results_file(results, lines))
    with pytest.raises(LeapError, match=r"\[line 2\]: custom_id 'P99_01_0' is not a segment of the val split's CSV "
                                        r"now \(nothing was ingested\).*the --split and the CSV.*delete that result's "
                                        r"line"):  # (a result of another split's batch: it said only "removed since")
        ingest_batch(cfg, results_file(results, lines[:1] + [{**lines[1], "custom_id": "P99_01_0"}]))
    assert not cfg.out_path.exists()
    # (ingested at a raised limit: the cut reply's finding says the limit it was asked with, and the Batch way back)
    raised = dataclasses.replace(cfg, max_tokens=3000)
    assert ingest_batch(raised, results_file(results, lines)) == {"valid": 1, "invalid": 1, "failed": 1}
    by_id = {r["narration_id"]: r for r in records(workdir)}
    assert by_id[nids[1]]["errors"][0]["message"].startswith(
        "the reply stopped at the token limit (--max-tokens 2000; a reasoning model's hidden reasoning counts too): "
        "write the requests again (--batch-file) with --max-tokens 4000 --retry-invalid")
    assert "no response.status_code" in by_id[nids[2]]["errors"][0]["message"]
    # an output made by another backend is refused when the requests are written, not after they are paid
    offline = GenerateConfig(workdir=workdir, split="val", out=tmp_path / "offline.jsonl")
    generate_programs(offline)
    with pytest.raises(LeapError, match="other settings"):
        write_batch_file(dataclasses.replace(offline, model="gpt-test"), tmp_path / "b2.jsonl")


def results_file(path, lines):
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_cli_batch_modes_are_openai_and_refuse_another_backend(workdir, tmp_path):
    from typer.testing import CliRunner

    from leap_cli.cli import app

    base = ["generate-programs", "--workdir", str(workdir), "--split", "val", "--batch-file", str(tmp_path / "b.jsonl")]
    res = CliRunner().invoke(app, base + ["--backend", "offline"])  # cli.main prints a LeapError as one line
    assert isinstance(res.exception, LeapError) and "--backend offline has no Batch API" in str(res.exception)
    res = CliRunner().invoke(app, base + ["--model", "gpt-test"])
    assert res.exit_code == 0, res.output
    assert {r["body"]["model"] for r in read_jsonl(tmp_path / "b.jsonl")} == {"gpt-test"}
    # both at once: the requests were written and the results left out (submitted, paid again)
    res = CliRunner().invoke(app, base + ["--model", "gpt-test", "--ingest-batch", str(tmp_path / "b.jsonl")])
    assert isinstance(res.exception, LeapError) and "--batch-file and --ingest-batch are two runs" in str(
        res.exception)
    res = CliRunner().invoke(app, ["generate-programs", "--workdir", str(workdir), "--split", "val", "--ingest-batch",
                                   "-", "--ingest-batch", "-"], input="")
    assert isinstance(res.exception, LeapError) and "stdin can be read once" in str(res.exception)
    # an ingest where every result failed exits 3, as every stage where all records failed
    failed = [{"id": f"r{i}", "custom_id": r["custom_id"], "response": {"status_code": 500, "body": {}}}
              for i, r in enumerate(read_jsonl(tmp_path / "b.jsonl"))]
    # (a segment's second failed result, superseded, is no record of its own: it made the count N+1 and exit 0)
    ingest = ["generate-programs", "--workdir", str(workdir), "--split", "val", "--model", "gpt-test", "--ingest-batch",
              str(results_file(tmp_path / "out.jsonl", failed + failed[:1]))]
    res = CliRunner().invoke(app, ingest)
    assert res.exit_code == 3 and f"all {N_SEGMENTS} records failed" in res.output, res.output
    # why, as a live run says it (QA: "1 x failed (see leap validate-programs)" and no cause)
    first = failed[0]["custom_id"].partition("@")[0]
    assert f"{first}: batch request failed: HTTP 500" in res.output and "see leap validate-programs" not in \
        res.output.split(f"all {N_SEGMENTS} records failed")[1], res.output
    # a batch file with no request says so, and what would ask for the failed ones (it said "submit it")
    res = CliRunner().invoke(app, base + ["--model", "gpt-test"])
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and "no request to write: every segment has a record in" in said, said
    assert f"{N_SEGMENTS} of the records done before are failed" in said and "--retry-errors" in said
    # --limit 0 and an empty part say so (QA: "every segment has a record" of 16 pending and no output file)
    other = ["generate-programs", "--workdir", str(workdir), "--split", "val", "--model", "gpt-test", "--out",
             str(tmp_path / "new.jsonl"), "--batch-file", str(tmp_path / "b0.jsonl")]
    res = CliRunner().invoke(app, other + ["--limit", "0"])
    assert f"no request to write: --limit 0 ({N_SEGMENTS} segments pending)" in " ".join(res.output.split())
    res = CliRunner().invoke(app, other + ["--shard", "5/6"])  # (fewer videos than parts)
    assert "no request to write: the input holds no segment (part 5/6)" in " ".join(res.output.split()), res.output
    res = CliRunner().invoke(app, other + ["--limit", "1"])  # (it said "wrote 1 Batch API requests")
    assert "wrote 1 Batch API request to" in " ".join(res.output.split()), res.output
    # the parts of a sharded run write a file each, as --out does (a Slurm array wrote one file over another)
    for part in ("0/2", "1/2"):
        res = CliRunner().invoke(app, other + ["--shard", part])
        assert res.exit_code == 0, res.output
    got = [read_jsonl(tmp_path / f"b0.shard{i}of2.jsonl") for i in (0, 1)]
    assert len(got[0]) + len(got[1]) == N_SEGMENTS


def test_batch_requests_over_one_files_limits_go_into_several_files(workdir, good_programs, tmp_path, caplog):
    """The Batch API takes 50,000 requests and 200 MB per input file: EPIC's train split (67k requests, 1.4 GB)
    went into one file the API refuses. Over either limit the requests are split into FILE-I-of-N files with the
    same lines; a rerun removes the files of an earlier one that are not its own."""
    from typer.testing import CliRunner

    from leap_cli.cli import app
    from leap_cli.programs.batch import BatchPart

    cfg = GenerateConfig(workdir=workdir, split="val", model="gpt-test")
    whole = tmp_path / "whole.jsonl"
    assert write_batch_file(cfg, whole) == N_SEGMENTS
    lines = whole.read_bytes().splitlines(keepends=True)
    batch, parts = tmp_path / "batch.jsonl", []
    batch.write_bytes(lines[0])  # an earlier --batch-file's
    kept = {n: tmp_path / n for n in ("batch-01-of-03.jsonl", "batch-5-of-3.jsonl", "batch-notes.jsonl")}
    for p in kept.values():  # names leap never writes, and a file of its name that holds no requests: kept
        p.write_bytes(lines[0])
    kept["records"] = tmp_path / "batch-1-of-9.jsonl"
    kept["records"].write_text('{"narration_id": "P01_11_0", "status": "valid"}\n')
    assert write_batch_file(cfg, batch, parts=parts, max_requests=4) == N_SEGMENTS
    names = [tmp_path / "batch-1-of-2.jsonl", tmp_path / "batch-2-of-2.jsonl"]
    assert parts == [BatchPart(names[0], 4, sum(map(len, lines[:4]))), BatchPart(names[1], 2, sum(map(len, lines[4:]))),
                     BatchPart(batch, 0, 0, removed=True)]
    assert b"".join(p.read_bytes() for p in names) == b"".join(lines) and not batch.exists()
    assert all(p.exists() for p in kept.values())
    # a file of program records, or the programs output itself, is refused, not replaced (it destroyed them)
    for target in (kept["records"], cfg.out_path):
        with pytest.raises(LeapError, match="--batch-file names (a file whose lines are not Batch requests|the "
                                            "programs output)"):
            write_batch_file(cfg, target, max_requests=4)
    assert kept["records"].read_text().startswith('{"narration_id"') and not cfg.out_path.exists()
    with pytest.raises(LeapError, match="is no limit"):
        write_batch_file(cfg, batch, max_mb=float("inf"))
    # by size: each file holds as many lines as fit (the next file's first line would not), at least one; one line
    # over the limit alone is warned of
    parts, most = [], len(lines[0]) + len(lines[1])
    with caplog.at_level("WARNING"):
        write_batch_file(cfg, batch, parts=parts, max_mb=most / 1e6)
    assert ("larger than --batch-max-mb" in caplog.text) == (max(map(len, lines)) > most)
    files = [p for p in parts if not p.removed]
    assert len(files) > 2 and all(p.bytes <= most or p.requests == 1 for p in files), files
    assert all(a.bytes + len(b.path.read_bytes().splitlines(keepends=True)[0]) > most for a, b in zip(files, files[1:]))
    assert b"".join(p.path.read_bytes() for p in files) == b"".join(lines)
    assert {p.path for p in parts if p.removed} == set(names) and not any(n.exists() for n in names)
    # the CLI names every file; a rerun that fits one file removes the parts; the limits need --batch-file
    base = ["generate-programs", "--workdir", str(workdir), "--split", "val", "--model", "gpt-test",
            "--batch-file", str(batch)]
    res = CliRunner().invoke(app, base + ["--batch-max-requests", "5"])
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and f"wrote {N_SEGMENTS} Batch API requests to 2 files (at most 5 requests" in said, said
    packed = "".join(res.output.split())  # (rich wraps long paths anywhere)
    assert "batch-1-of-2.jsonl:5requests" in packed and "batch-2-of-2.jsonl:1request," in packed, said
    assert "ingest their outputs in one run, and each batch's error file where it has one: this command with " \
           "--ingest-batch RESULTS-1.jsonl --ingest-batch RESULTS-2.jsonl ... in place of --batch-file" in said
    assert "batch-3-of-3.jsonl,anearlier" in packed
    res = CliRunner().invoke(app, base)
    said = " ".join(res.output.split())
    assert f"wrote {N_SEGMENTS} Batch API requests to {batch}" in said and "removed" in said, said
    assert batch.read_bytes() == b"".join(lines) and sorted(p.name for p in tmp_path.glob("batch*")) == sorted(
        ["batch.jsonl", *(p.name for p in kept.values())])
    res = CliRunner().invoke(app, base[:-2] + ["--batch-max-mb", "1"])
    assert isinstance(res.exception, LeapError) and "--batch-max-mb sizes the files of --batch-file" in str(res.exception)
    # the outputs of the parts' batches ingest in one run; a bad line is named by its file and line
    write_batch_file(cfg, batch, max_requests=4)
    outs = []
    for name in names:
        results = [{"id": f"r_{r['custom_id']}", "custom_id": r["custom_id"], "response": {
            "status_code": 200, "body": completion(json.dumps(good_programs[r["custom_id"].partition("@")[0]]))}}
            for r in read_jsonl(name)]
        outs.append(results_file(tmp_path / f"out-{name.name}", results))
    # a raw U+2028 inside a JSON string is no end of line (splitlines() cut the line there: "not JSON")
    outs[1].write_text("".join(json.dumps(dict(x, note="a\u2028b"), ensure_ascii=False) + "\n"
                               for x in read_jsonl(outs[1])), encoding="utf-8")
    assert "\u2028" in outs[1].read_text(encoding="utf-8")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n" + outs[1].read_text().replace('"custom_id": "', '"custom_id": "X', 1))
    ingest = base[:-2] + ["--ingest-batch", str(outs[0]), "--ingest-batch", str(bad)]
    res = CliRunner().invoke(app, ingest)
    assert isinstance(res.exception, LeapError) and res.exception.path == str(bad) and res.exception.record == "line 2"
    assert not (workdir / "programs" / "val.jsonl").exists()
    # a download cut short (its last line without its end): said as such ("line 4 is not JSON" before)
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(outs[0].read_bytes()[:-40])
    res = CliRunner().invoke(app, ingest[:-3] + [str(cut)])
    assert isinstance(res.exception, LeapError) and "its last line (line 4) is cut short" in str(res.exception)
    assert "download the batch's output file again" in res.exception.fix
    cut.write_bytes(outs[0].read_bytes().split(b"\n")[0][:-40])  # (a one-result batch's: line 1)
    res = CliRunner().invoke(app, ingest[:-3] + [str(cut)])
    assert isinstance(res.exception, LeapError) and "its last line (line 1) is cut short" in str(res.exception)
    cut.write_bytes(outs[0].read_bytes()[:-40] + "é".encode()[:1])  # (inside a character: "not UTF-8" before)
    res = CliRunner().invoke(app, ingest[:-3] + [str(cut)])
    assert isinstance(res.exception, LeapError) and "cut short, inside a character" in str(res.exception)
    # (the command that wrote them, --batch-max-requests and all, with --ingest-batch in place of --batch-file, as
    # its last line says: it was refused, "--batch-max-requests sizes the files of --batch-file")
    res = CliRunner().invoke(app, ingest[:-1] + [str(outs[1]), "--batch-max-requests", "4"])
    assert res.exit_code == 0 and f"ingested {N_SEGMENTS} results" in res.output and f"valid {N_SEGMENTS}" in res.output
    # what it cost, at half the prices (1000 prompt and 200 completion tokens each at 0.15 and 0.60 USD per 1M)
    cost = N_SEGMENTS * (1000 * 0.15 + 200 * 0.60) / 1e6 / 2
    assert f"cost: ${cost:.4f} for {N_SEGMENTS} requests at the Batch API's price" in " ".join(res.output.split())
    res = CliRunner().invoke(app, ingest[:-1] + [str(outs[1])])  # (it said "ingested" of nothing written)
    assert f"nothing new in {N_SEGMENTS} results for" in " ".join(res.output.split()), res.output
    assert "cost:" not in res.output  # (nothing paid now)
    # "-" reads stdin (it said "not found" of /dev/stdin and of a pipe); a folder is said to be one
    res = CliRunner().invoke(app, ingest[:-4] + ["--ingest-batch", "-"], input=outs[0].read_text())
    assert "nothing new in 4 results for" in " ".join(res.output.split()), res.output
    res = CliRunner().invoke(app, ingest[:-4] + ["--ingest-batch", str(tmp_path)])
    assert "is a folder, not a Batch output file" in str(res.exception)
    assert len(records(workdir)) == N_SEGMENTS
    # ... given twice (or cat'ed): one request's result once, the others said repeated; the ledger counts it once
    from leap_cli.programs.store import ProgramStore

    again = dataclasses.replace(cfg, out=tmp_path / "twice.jsonl")
    assert ingest_batch(again, [outs[0], outs[0]]) == {"valid": 4, "repeated": 4}
    with ProgramStore(again.cache_path) as store:
        assert store.spent(again.out_path)["requests"] == 4, store.spent(again.out_path)
    # an ingest run again does not validate the results of records that stay (34 s, 1.9 GB at EPIC's size)
    import leap_cli.programs.generate as generate

    def no(*a, **k):
        raise AssertionError("validated a result of a record that stays")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(generate.ProgramGenerator, "verify_here", no)
        assert ingest_batch(again, [outs[0]]) == {"already_present": 4}
    # an invalid result ingested again with --retry-invalid is the record it made: not written again, not paid
    # again (the ledger grew at each such ingest, and "all 1 records failed" exited 3)
    invalid = dataclasses.replace(cfg, out=tmp_path / "invalid.jsonl", retry_invalid=True)
    bad = results_file(tmp_path / "bad-result.jsonl", [dict(read_jsonl(outs[0])[0], response={
        "status_code": 200, "body": completion("not a program")})])
    assert ingest_batch(invalid, bad) == {"invalid": 1}
    assert ingest_batch(invalid, bad) == {"already_present": 1}
    # the reply of another request (a --batch-file --retry-invalid batch's) replaces the invalid record without
    # --retry-invalid at the ingest: paid to replace it, it was left out and not in the ledger (QA)
    with ProgramStore(invalid.cache_path) as store:
        assert store.spent(invalid.out_path)["requests"] == 1
    retry = results_file(tmp_path / "retry.jsonl", [dict(read_jsonl(outs[0])[0], id="batch_req_retry")])
    assert ingest_batch(dataclasses.replace(invalid, retry_invalid=False), retry) == {"valid": 1}
    with ProgramStore(invalid.cache_path) as store:
        assert store.spent(invalid.out_path)["requests"] == 2
    # a request id written as a number by one file and as a string by another is one request
    numbered = dataclasses.replace(cfg, out=tmp_path / "numbered.jsonl")
    line = dict(read_jsonl(bad)[0], id=7, response={"status_code": 500, "body": {}})
    assert ingest_batch(numbered, results_file(tmp_path / "n1.jsonl", [line])) == {"failed": 1}
    assert ingest_batch(numbered, results_file(tmp_path / "n2.jsonl", [dict(line, id="7")])) == {"already_present": 1}
    assert ingest_batch(again, outs) == {"already_present": 4, "valid": 2}
    # lines without a request id (a compatible server's) are one result when the line is the same
    plain = results_file(tmp_path / "plain.jsonl", [{k: v for k, v in x.items() if k != "id"}
                                                     for x in read_jsonl(outs[0])])
    other = dataclasses.replace(cfg, out=tmp_path / "plain-out.jsonl")
    assert ingest_batch(other, [plain, plain]) == {"valid": 4, "repeated": 4}


def paid_results(cfg: GenerateConfig, good_programs: dict, tmp_path: Path) -> Path:
    """A Batch request file for every segment of ``cfg``'s output, and its results file: each a valid program with
    its request id (``batch_req_I``)."""
    write_batch_file(cfg, tmp_path / "b.jsonl")
    return results_file(tmp_path / "out.jsonl", [
        {"id": f"batch_req_{i}", "custom_id": r["custom_id"], "response": {"status_code": 200, "body": completion(
            json.dumps(good_programs[r["custom_id"].partition("@")[0]]))}}
        for i, r in enumerate(read_jsonl(tmp_path / "b.jsonl"))])


def test_force_over_paid_batch_programs_keeps_them_and_the_ledger_counts_each_request_once(workdir, good_programs,
                                                                                             tmp_path, caplog):
    """--force over an output of Batch API programs deleted them, and the Batch replies are in no cache: going back
    paid again (QA). The old output is kept beside it; its results ingested again are not added to the ledger a
    second time."""
    from leap_cli.programs.store import ProgramStore

    cfg = GenerateConfig(workdir=workdir, split="val", model="gpt-test")
    results = paid_results(cfg, good_programs, tmp_path)
    assert ingest_batch(cfg, results) == {"valid": N_SEGMENTS}
    paid = cfg.out_path.read_bytes()
    with caplog.at_level("WARNING"):
        generate_programs(GenerateConfig(workdir=workdir, split="val", force=True))  # offline, over the paid ones
    (aside,) = cfg.out_path.parent.glob("val.before-force-*[0-9].jsonl")
    assert aside.read_bytes() == paid and f"held {N_SEGMENTS} programs made by an LLM (paid)" in caplog.text
    assert json.loads(Path(str(aside) + ".settings.json").read_text())["backend"] == "openai"  # (moved back: as made)
    assert {r["provenance"]["backend"] for r in read_jsonl(cfg.out_path)} == {"offline"}
    spent = {}
    assert ingest_batch(dataclasses.replace(cfg, force=True), results, spent=spent) == {"valid": N_SEGMENTS}
    assert spent["requests"] == 0 and spent["cost"] == 0
    with ProgramStore(cfg.cache_path) as store:
        assert store.spent(cfg.out_path)["requests"] == N_SEGMENTS  # (it was 2 x N_SEGMENTS)
    # a second --force within the second keeps the first one's file (it was replaced); a damaged output is kept too
    generate_programs(GenerateConfig(workdir=workdir, split="val", force=True))
    assert len(list(cfg.out_path.parent.glob("val.before-force-*.jsonl"))) == 2
    cfg.out_path.write_text(cfg.out_path.read_text() + "{not json\n" + cfg.out_path.read_text())
    generate_programs(GenerateConfig(workdir=workdir, split="val", max_sub_actions=12, force=True))
    assert len(list(cfg.out_path.parent.glob("val.before-force-*.jsonl"))) == 3 and "held programs made by" in caplog.text
    # an offline output started over is deleted as before: nothing paid in it
    generate_programs(GenerateConfig(workdir=workdir, split="val", out=tmp_path / "o.jsonl"))
    caplog.clear()
    generate_programs(GenerateConfig(workdir=workdir, split="val", out=tmp_path / "o.jsonl", max_sub_actions=12,
                                     force=True))
    assert not list(tmp_path.glob("o.before-force-*")) and "--force" not in caplog.text
    assert {r["provenance"]["backend"] for r in read_jsonl(tmp_path / "o.jsonl")} == {"offline"}


def test_a_reingest_of_results_an_older_leap_ingested_adds_nothing_to_the_ledger(workdir, good_programs, tmp_path):
    """An ingest by a leap before the ledger kept request ids (cache schema 8) added the results' cost; the same
    results ingested again by this one were all already present and added again (--max-cost then stopped a run
    early): the request ids of the records present count as in the ledger."""
    import sqlite3

    from leap_cli.programs.store import ProgramStore

    cfg = GenerateConfig(workdir=workdir, split="val", model="gpt-test")
    results = paid_results(cfg, good_programs, tmp_path)
    assert ingest_batch(cfg, results) == {"valid": N_SEGMENTS}
    with ProgramStore(cfg.cache_path) as store:
        spent = store.spent(cfg.out_path)
    with sqlite3.connect(cfg.cache_path) as db:  # (as an older leap left it: the cost, not the ids)
        db.execute("DELETE FROM batch_paid")
    added = {}
    assert ingest_batch(cfg, results, spent=added) == {"already_present": N_SEGMENTS}
    assert added["requests"] == 0 and added["cost"] == 0
    with ProgramStore(cfg.cache_path) as store:
        assert store.spent(cfg.out_path) == spent


def test_an_ingest_stopped_part_way_has_the_cost_of_every_paid_result_in_the_ledger(workdir, good_programs,
                                                                                      tmp_path, monkeypatch):
    """The results' cost went into the ledger after the last record was written: an ingest stopped part way
    (Ctrl-C, SIGTERM, a full disk) counted none, and its rerun found their records present (QA at EPIC's train
    size: $21.72 of $26.66 in the ledger after a Ctrl-C and a rerun). Every paid result is counted before a record
    is written."""
    from leap_cli.io import JsonlAppender

    cfg = GenerateConfig(workdir=workdir, split="val", model="gpt-test")
    results = paid_results(cfg, good_programs, tmp_path)
    write, n = JsonlAppender.write, [0]

    def stop_after_two(self, record):
        if n[0] == 2:
            raise KeyboardInterrupt
        n[0] += 1
        return write(self, record)

    monkeypatch.setattr(JsonlAppender, "write", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        ingest_batch(cfg, results)
    monkeypatch.setattr(JsonlAppender, "write", write)
    made = [r["narration_id"] for r in read_jsonl(cfg.out_path)]
    pending = Path(str(cfg.out_path) + ".batch.json")
    assert len(made) == 2 and not set(made) & set(json.loads(pending.read_text())["ids"])  # (taken off at the stop)
    # the two records made before the stop as invalid ones (their results' replies were not programs): the rerun
    # finds them present, and their segments were still said to wait for a batch (a later --batch-file warned
    # "paid twice")
    cfg.out_path.write_text("".join(json.dumps({**r, "status": "invalid"}) + "\n" for r in read_jsonl(cfg.out_path)))
    pending.write_text(json.dumps({**json.loads(pending.read_text()), "ids": made + ["x"],
                                   "written": "2026-01-01T00:00:00Z"}))  # (before the records: the seconds differ)
    assert ingest_batch(cfg, results) == {"already_present": 2, "valid": N_SEGMENTS - 2}
    with ProgramStore(cfg.cache_path) as store:
        assert store.spent(cfg.out_path)["requests"] == N_SEGMENTS
    assert json.loads(pending.read_text())["ids"] == ["x"]


def test_batch_file_refusals_and_dev_paths(workdir, tmp_path, monkeypatch):
    """A folder is refused before any request is made (it failed at the end with a raw OSError); a name the split
    files need that holds something else is refused with nothing written; a blank first line is no empty file; a
    regular file under /dev (/dev/shm) is a file, split and replaced, not a stream appended to."""
    from leap_cli.programs.batch import batch_stream, is_batch_input

    cfg = GenerateConfig(workdir=workdir, split="val", model="gpt-test")
    with pytest.raises(LeapError, match="is a folder"):
        write_batch_file(cfg, tmp_path)
    (tmp_path / "loop.jsonl").symlink_to(tmp_path / "loop.jsonl")  # (a traceback: "Symlink loop from ...")
    with pytest.raises(LeapError, match="a symbolic link that points to itself"):
        write_batch_file(cfg, tmp_path / "loop.jsonl")
    with monkeypatch.context() as m:  # Python 3.13's resolve(strict=False) returns a loop without raising
        m.setattr(Path, "resolve", lambda self, strict=False: Path(os.path.abspath(self)))
        with pytest.raises(LeapError, match="a symbolic link that points to itself"):
            write_batch_file(cfg, tmp_path / "loop.jsonl")
    # ... and beside the output, it stopped the sweep of an earlier run's files without a word
    parts: list = []
    write_batch_file(cfg, tmp_path / "q.jsonl", max_requests=4)
    write_batch_file(cfg, tmp_path / "q.jsonl", parts=parts)
    assert {p.path.name for p in parts if p.removed} == {"q-1-of-2.jsonl", "q-2-of-2.jsonl"}
    (tmp_path / "b-2-of-2.jsonl").write_text('{"narration_id": "x", "status": "valid"}\n')
    with pytest.raises(LeapError, match="holds something else than Batch requests: nothing was written") as e:
        write_batch_file(cfg, tmp_path / "b.jsonl", max_requests=4)
    assert e.value.path == str(tmp_path / "b-2-of-2.jsonl") and not (tmp_path / "b-1-of-2.jsonl").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".b.jsonl")]  # no temp file left
    (tmp_path / "blank.jsonl").write_text('\n{"narration_id": "x", "status": "valid"}\n')
    (tmp_path / "empty.jsonl").write_text("")
    assert not is_batch_input(tmp_path / "blank.jsonl") and is_batch_input(tmp_path / "empty.jsonl")
    assert batch_stream(Path("/dev/stdout")) and batch_stream(Path("/proc/self/fd/1")) and batch_stream(Path("/dev/null"))
    assert not batch_stream(tmp_path / "b.jsonl")
    if Path("/dev/shm").is_dir():
        shm = Path("/dev/shm") / f"leap-test-{os.getpid()}.jsonl"
        try:
            assert not batch_stream(shm)
            for _ in range(2):
                assert write_batch_file(cfg, shm) == N_SEGMENTS
            assert len(read_jsonl(shm)) == N_SEGMENTS  # (twice appended: 12)
        finally:
            shm.unlink(missing_ok=True)


def test_batch_requests_to_dev_stdout_are_the_whole_output(workdir, tmp_path):
    """`--batch-file /dev/stdout > f`: the CLI's messages sat at the top of f and cut its first request; they go
    to stderr, and stdout holds the requests alone, redirected to a file or to a pipe."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "leap_cli", "generate-programs", "--workdir", str(workdir), "--split", "val",
           "--model", "gpt-test", "--batch-file", "/dev/stdout", "--batch-max-requests", "2"]
    env = {**os.environ, "PYTHONPATH": str(root), "NO_COLOR": "1"}
    with open(tmp_path / "out.jsonl", "w") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.PIPE, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    got = read_jsonl(tmp_path / "out.jsonl")
    assert len(got) == N_SEGMENTS and all("custom_id" in x for x in got), got
    assert "is a stream, written unsplit" in r.stderr and f"wrote {N_SEGMENTS} Batch API requests" in r.stderr
    assert "split it into files within the limits, submit each" in " ".join(r.stderr.split()), r.stderr
    assert Path("/dev/stdout").is_symlink() or Path("/dev/stdout").exists()
    piped = subprocess.run(cmd[:-3] + ["-"] + cmd[-2:], capture_output=True, text=True, env=env, timeout=300)  # "-"
    assert piped.returncode == 0 and piped.stdout.count("\n") == N_SEGMENTS, piped.stderr
    assert [json.loads(x)["custom_id"] for x in piped.stdout.splitlines()] == [x["custom_id"] for x in got]
    # a reader that leaves early (`| head -c 100`): said, not a silent exit 1 with half the requests taken
    p = subprocess.Popen(cmd[:-3] + ["-"] + cmd[-2:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=300) == 2 and "its reader left after 0 of the requests" in err, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_a_symlinked_batch_file_is_written_through_and_a_fifo_gets_every_request(workdir, tmp_path, caplog):
    """Split requests named after a symbolic link deleted the link (as root, /dev/stdout itself); a stream is
    written unsplit, with a warning when it is over the limits."""
    import threading

    cfg = GenerateConfig(workdir=workdir, split="val", model="gpt-test")
    here = tmp_path / "o"
    real = here / "real"
    real.mkdir(parents=True)
    (here / "link.jsonl").symlink_to(real / "target.jsonl")
    parts: list = []
    assert write_batch_file(cfg, here / "link.jsonl", parts=parts, max_requests=4) == N_SEGMENTS
    assert (here / "link.jsonl").is_symlink() and [p.path for p in parts] == [
        real / "target-1-of-2.jsonl", real / "target-2-of-2.jsonl"]
    fifo = here / "fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    with caplog.at_level("WARNING"):
        assert write_batch_file(cfg, fifo, max_requests=4) == N_SEGMENTS
    reader.join(10)
    assert got and got[0].count(b"\n") == N_SEGMENTS and "is a stream, written unsplit" in caplog.text
    assert sorted(p.name for p in here.iterdir()) == ["fifo", "link.jsonl", "real"]


def start_cli(workdir, server, concurrency: int):
    """``leap generate-programs`` in a process of its own (to be sent signals), against ``server``."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "leap_cli", "generate-programs", "--workdir", str(workdir), "--split", "val",
           "--backend", "openai", "--model", "m", "--base-url", server.base_url, "--api-key-env", "LEAP_TEST_KEY",
           "--concurrency", str(concurrency)]
    return subprocess.Popen(cmd, cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def wait_until(done) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not done():
        time.sleep(0.02)


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_ctrl_c_keeps_finished_records(workdir, good_programs, signame):
    """Ctrl-C, or SIGTERM (Slurm's preemption, scancel): the records written are kept, the ledger counts every
    paid request, and the rerun resumes."""
    import signal

    script = lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]), delay=0.3)  # noqa: E731
    out = workdir / "programs" / "val.jsonl"
    with ScriptedServer(script) as server:
        proc = start_cli(workdir, server, 1)
        wait_until(lambda: out.exists() and len(out.read_text().splitlines()) >= 2)
        proc.send_signal(getattr(signal, signame))
        stdout, err = proc.communicate(timeout=30)
        assert proc.returncode == 128 + getattr(signal, signame), err
        assert ("stopped by SIGTERM" if signame == "SIGTERM" else "interrupted") in err.decode()
        # the summary of what was done and spent is shown before it stops (it printed none: the cost of a paid
        # run's stretch went unsaid)
        shown = " ".join(stdout.decode().split())
        assert "segments done in this run" in shown and "estimated cost of this run" in shown, shown
        kept = read_jsonl(out)
        assert 2 <= len(kept) < N_SEGMENTS and all(r["status"] == "valid" for r in kept)
        assert out.read_text().endswith("\n")
        with ProgramStore(workdir / "programs" / "cache.sqlite") as store:
            assert store.spent(out)["requests"] >= len(kept)  # (the reply in flight may be paid too)
        n_before = len(server.requests)
        s = generate_programs(config(workdir, server, model="m"))  # the same settings: resumes
        assert s.resumed == len(kept) and s.total == N_SEGMENTS - len(kept)
        assert len(server.requests) - n_before <= N_SEGMENTS - len(kept) + 1  # at most the interrupted one again
    recs = records(workdir)
    assert len(recs) == N_SEGMENTS == len({r["narration_id"] for r in recs})


def test_ctrl_c_while_a_fatal_error_waits_for_the_replies_in_flight(workdir, good_programs):
    """A refused key while replies were on the wire, then Ctrl-C during that wait: no summary, exit 2 (the
    error's) instead of the signal's 130."""
    import signal

    first = sorted(good_programs)[0]

    def script(body, n):
        if narration_id_of(body) == first:
            return Reply(status=401, raw=json.dumps({"error": {"message": "Incorrect API key provided"}}), delay=0.1)
        return Reply(json.dumps(good_programs[narration_id_of(body)]), delay=2.0)

    with ScriptedServer(script) as server:
        proc = start_cli(workdir, server, 3)
        wait_until(lambda: len(server.requests) >= 3)
        time.sleep(0.6)  # the 401 is in: the stage waits for the other two
        proc.send_signal(signal.SIGINT)
        stdout, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    shown = " ".join(stdout.decode().split())
    assert "segments done in this run" in shown and "estimated cost of this run" in shown, (shown, err)
    assert sorted(r["status"] for r in records(workdir)) == ["valid", "valid"]  # the replies in flight, kept


def test_sigkill_never_loses_a_paid_reply(workdir, good_programs):
    """A run killed (SIGKILL) while a repair round is in flight kept the first round's paid reply only in the
    store's buffer (committed every 0.5 s): the resumed run asked for it again and the ledger (--max-cost) never
    counted it. A reply that was paid for is in the cache and the ledger before the next request goes out."""
    import os
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    first = sorted(good_programs)[0]
    proc: list[subprocess.Popen] = []
    rounds: list[int] = []  # the repair round of every request for the first clip

    def script(body, n):
        rnd = sum(m["role"] == "user" and m["content"].startswith("Your program has these problems")
                  for m in body["messages"])
        rounds.append(rnd)
        if rnd == 0:
            return Reply("not a program")  # round 0: invalid, the run asks again (round 1)
        if len(rounds) == 2:  # round 1 of the first run: the process dies before it gets the reply
            proc[0].send_signal(signal.SIGKILL)
            proc[0].wait(timeout=30)
        return Reply(json.dumps(good_programs[narration_id_of(body)]))

    with ScriptedServer(script) as server:
        cmd = [sys.executable, "-m", "leap_cli", "generate-programs", "--workdir", str(workdir), "--split", "val",
               "--backend", "openai", "--model", "m", "--base-url", server.base_url, "--api-key-env", "LEAP_TEST_KEY",
               "--concurrency", "1", "--limit", "1", "--price-in", "1", "--price-out", "2"]
        proc.append(subprocess.Popen(cmd, cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        proc[0].communicate(timeout=60)
        assert proc[0].returncode == -signal.SIGKILL and rounds == [0, 1]
        with ProgramStore(workdir / "programs" / "cache.sqlite") as store:
            assert store.spent(workdir / "programs" / "val.jsonl")["requests"] == 1  # round 0 was paid for
        s = generate_programs(config(workdir, server, model="m", limit=1, concurrency=1))
        assert s.cache_hits == 1 and rounds == [0, 1, 1]  # round 0 from the cache, only round 1 asked again
    assert [r["narration_id"] for r in records(workdir)] == [first]


def test_store_migrates_an_old_database(tmp_path):
    import sqlite3

    from leap_cli.programs.store import MIGRATIONS

    path = tmp_path / "cache.sqlite"
    db = sqlite3.connect(path)
    db.execute(MIGRATIONS[0])
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO cache VALUES ('k', 'reply', 1, 2, 'm', 0)")
    db.commit()
    db.close()
    with ProgramStore(path) as store:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert store.get("k") == ("reply", {"prompt_tokens": 1, "completion_tokens": 2}, "m", False)
        store.log_call(narration_id="n", backend="b", model="m", prompt_hash="h", cache_key="k", round=0,
                       response="r", usage={}, latency=0.1, attempts=1, cached=False, outcome="valid")
        assert store.calls("n")[0]["outcome"] == "valid"
        # a capped run's check of the model's latest paid reply walks an index back from the newest call, not
        # the whole call log (0.2 s at 200k calls, once per run, on a new model)
        plan = " ".join(r[-1] for r in store.db.execute("EXPLAIN QUERY PLAN " + store._LAST_PAID_SQL, ("b", "m")))
        assert "USING INDEX calls_by_model" in plan and "TEMP B-TREE" not in plan, plan
        assert store.last_paid_tokens("b", "m") == 0 and store.last_paid_tokens("b", "other") is None


def test_offline_refuses_a_split_without_narrations_or_labels(workdir):
    """EPIC's test split: the offline generator wrote every record failed and exited 3."""
    ann = workdir / "kitchen" / "annotations"
    rows = (DATA / "EPIC_100_validation_excerpt.csv").read_text().splitlines()[:4]
    cols = 8  # the test-timestamps file has the first 8 columns only
    (ann / "EPIC_100_test_timestamps.csv").write_text(
        "\n".join(",".join(r.split(",")[:cols]) for r in rows) + "\n")
    with pytest.raises(LeapError, match="the offline backend makes a program from a clip's narration or labels, and "
                                        "the test split has neither") as e:
        generate_programs(GenerateConfig(workdir=workdir, split="test"))
    assert "training and submission need no test programs" in e.value.fix
    assert not (workdir / "programs" / "test.jsonl").exists()


def test_backoff_and_retry_after_parsing():
    import email.utils

    from leap_cli.programs.backends import RetryPolicy, parse_retry_after

    policy = RetryPolicy(max_retries=5, base_delay=1.0, max_delay=10.0, jitter=0.25)
    for attempt, nominal in ((0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (6, 10.0)):
        delays = [policy.delay(attempt, None) for _ in range(50)]
        assert all(0.75 * nominal <= d <= 1.25 * nominal for d in delays)
        assert len(set(delays)) > 1  # jittered
    assert policy.delay(0, 3.0) == 3.0 and policy.delay(0, 99.0) == 10.0
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= parse_retry_after({"retry-after": when}) <= 31
    assert parse_retry_after({}) is None and parse_retry_after({"retry-after": "soon"}) is None


def test_refused_key_stops_the_stage(workdir):
    with ScriptedServer(lambda body, n: Reply(status=401)) as server, pytest.raises(LeapError, match="LEAP_TEST_KEY"):
        generate_programs(config(workdir, server))
    assert len(server.requests) <= 4  # at most one per worker, no retries
    assert not (workdir / "programs" / "val.jsonl").exists() or records(workdir) == []
    with ScriptedServer(lambda body, n: Reply(status=404)) as server, pytest.raises(LeapError, match="--model"):
        generate_programs(config(workdir, server, concurrency=1))


def test_shards_split_by_video_and_merge_by_concatenation(workdir):
    from leap_cli.common import ShardSpec

    ann = workdir / "kitchen" / "annotations"
    lines = (DATA / "EPIC_100_validation_excerpt.csv").read_text().splitlines()
    rows = [lines[0]] + [ln.replace("P01_11", "P01_12", 2) if i % 2 else ln for i, ln in enumerate(lines[1:13])]
    (ann / "EPIC_100_validation.csv").write_text("\n".join(rows) + "\n")
    parts = []
    for i in range(2):
        s = generate_programs(GenerateConfig(workdir=workdir, split="val", shard=ShardSpec(i, 2)))
        assert s.out.name == f"val.shard{i}of2.jsonl"
        parts.append(read_jsonl(s.out))
    ids = [[r["narration_id"] for r in p] for p in parts]
    assert ids[0] and ids[1] and not set(ids[0]) & set(ids[1]) and len(ids[0]) + len(ids[1]) == 12
    videos = [{i.rsplit("_", 1)[0] for i in x} for x in ids]
    assert not videos[0] & videos[1]  # a video's segments stay in one shard


def test_descriptor_records_feed_the_prompt(workdir, good_programs):
    from leap_cli.programs.generate import dry_run

    desc = workdir / "descriptors" / "val.jsonl"
    desc.parent.mkdir(parents=True)
    recs = []
    for nid in list(good_programs)[:2]:
        recs.append({"narration_id": nid, "video_id": "P01_11", "text": f"CLIP-TEXT-{nid}",
                     "components": {"objects": {"status": "ok", "source": "object-detections", "text": "",
                                                "data": {"objects": [{"label": "sponge"}]}}}})
    desc.write_text("".join(json.dumps(r) + "\n" for r in recs))
    prompt = dry_run(GenerateConfig(workdir=workdir, split="val"), recs[1]["narration_id"])
    assert f"CLIP-TEXT-{recs[1]['narration_id']}" in prompt and "Objects detected: sponge" in prompt
    # labels still come from the annotations
    assert "verb_class" in prompt.split("===== user =====")[-1]
    # without --narration-id: the first segment a run would send, not one that already has its record
    assert f"CLIP-TEXT-{recs[0]['narration_id']}" in dry_run(GenerateConfig(workdir=workdir, split="val"))
    s = generate_programs(GenerateConfig(workdir=workdir, split="val", limit=1))
    assert f"CLIP-TEXT-{recs[1]['narration_id']}" in dry_run(GenerateConfig(workdir=workdir, split="val"))
    s = generate_programs(GenerateConfig(workdir=workdir, split="val"))
    assert s.source.startswith("descriptors") and s.statuses == {"valid": 1}
    with pytest.raises(LeapError, match="every segment of the input has its record"):
        dry_run(GenerateConfig(workdir=workdir, split="val"))
    with pytest.raises(LeapError, match="not found"):
        generate_programs(GenerateConfig(workdir=workdir, split="val", descriptors=workdir / "missing.jsonl"))


def test_resuming_with_other_settings_is_refused_like_the_other_stages(workdir, good_programs, tmp_path):
    """generate-programs goes through io.check_settings: a re-run whose backend, model, prompt (k, exemplar
    library, ...) differ from the output's is refused with the keys named, --force starts over, the same
    settings resume."""
    from leap_cli.io import settings_path
    from tests.test_cli import leap

    out = workdir / "programs" / "val.jsonl"
    script = lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))  # noqa: E731
    with ScriptedServer(script) as server:
        generate_programs(config(workdir, server, limit=2))
        stored = json.loads(settings_path(out).read_text())
        assert stored["backend"] == "openai" and stored["model"] == "test-model" and stored["k"] == 4
        for change, key in ((dict(model="other-model"), "model"), (dict(k=2), "k"), (dict(temperature=0.7), "--temperature"),
                            (dict(backend="offline"), "backend")):
            with pytest.raises(LeapError, match=f"other settings \\({key}") as e:
                generate_programs(config(workdir, server, **change))
            assert "--force" in e.value.fix and str(out) in str(e.value)
        assert len(records(workdir)) == 2  # nothing was added by the refused runs
        s = generate_programs(config(workdir, server, concurrency=1, price_in=5.0))  # not output settings: resumes
        assert s.resumed == 2 and len(records(workdir)) == N_SEGMENTS
    # the exemplar library is part of the settings (offline too): a changed exemplar is refused, --force starts over
    generate_programs(GenerateConfig(workdir=workdir, split="val", out=tmp_path / "off.jsonl", limit=3))
    lib = tmp_path / "lib"
    shutil.copytree(Path(load_exemplars.__code__.co_filename).parents[1] / "resources" / "prompts" / "exemplars", lib)
    first = sorted(lib.glob("*.json"))[0]
    ex = json.loads(first.read_text())
    ex["text"] = ex["text"] + " Sound: tap running."
    first.write_text(json.dumps(ex))
    with pytest.raises(LeapError, match="exemplars"):
        generate_programs(GenerateConfig(workdir=workdir, split="val", out=tmp_path / "off.jsonl", exemplars=lib))
    args = ["generate-programs", "--workdir", str(workdir), "--split", "val", "--out", str(tmp_path / "off.jsonl"),
            "--exemplars", str(lib)]
    res = leap(*args)  # the CLI's one-line user error, exit status 2
    # (the key said as the option that sets it)
    assert res.returncode == 2 and "other settings (--exemplars (the library's hash): " in res.stderr + res.stdout and "--force" in res.stderr
    assert len(read_jsonl(tmp_path / "off.jsonl")) == 3
    res = leap(*args, "--force")
    assert res.returncode == 0, res.stderr
    assert len(read_jsonl(tmp_path / "off.jsonl")) == N_SEGMENTS  # started over: every segment, not 3 kept + 3 new
    assert json.loads(settings_path(tmp_path / "off.jsonl").read_text())["exemplars"] != stored["exemplars"]


def test_requests_in_flight_never_exceed_concurrency(workdir, good_programs):
    """Twice as many workers as slots (half wait with their prompt built): still at most --concurrency requests
    in flight, and every slot is used."""
    import threading

    lock, state = threading.Lock(), {"now": 0, "max": 0}

    def script(body, n):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.1)
        with lock:
            state["now"] -= 1
        return Reply(json.dumps(good_programs[narration_id_of(body)]))

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, concurrency=2))
    assert s.statuses["valid"] == N_SEGMENTS and len(server.requests) == N_SEGMENTS
    assert state["max"] == 2


def _mixed_script(good_programs):
    """Replies of every kind, by segment: valid; schema-invalid then repaired; semantically invalid twice; not JSON."""
    order = sorted(good_programs)

    def script(body, n):
        nid = narration_id_of(body)
        program = json.loads(json.dumps(good_programs[nid]))
        kind = order.index(nid) % 4
        if kind == 1 and n == 0:
            program.pop("post")
        elif kind == 2:
            program["steps"][0]["verb"] = "teleport"
        elif kind == 3:
            return Reply("Sure! Here is the program: take the plate.")
        return Reply(json.dumps(program))
    return script


def _comparable(recs):
    out = {}
    for r in recs:
        prov = {k: v for k, v in r["provenance"].items() if k not in ("seconds", "created")}
        out[r["narration_id"]] = {**r, "provenance": prov}
    return out


def test_checks_in_the_child_process_give_the_same_records(workdir, good_programs, monkeypatch):
    from leap_cli.programs.checker import RemoteChecker

    counts = []
    real_close = RemoteChecker.aclose

    async def aclose(self):
        await real_close(self)
        counts.append((self.remote, self.local, self.ended))
    monkeypatch.setattr(RemoteChecker, "aclose", aclose)
    results = {}
    for mode in (False, True):
        out = workdir / "programs" / f"val-{mode}.jsonl"
        with ScriptedServer(_mixed_script(good_programs)) as server:
            s = generate_programs(config(workdir, server, out=out, check_process=mode, repair_rounds=1))
        assert s.statuses == {"valid": 4, "invalid": 2}, s.statuses  # 6 segments: kinds 0, 1, 2, 3, 0, 1
        results[mode] = _comparable(read_jsonl(out))
        (workdir / "programs" / "cache.sqlite").unlink()  # the second run asks the server again
    assert results[True] == results[False]
    (remote, local, ended), = counts  # one child, for the run that asked for it; it checked every reply
    assert remote == 10 and local == 0 and ended  # 6 first replies + 4 repair rounds (kinds 1, 2, 3, 1)


def test_a_checker_process_that_dies_leaves_no_reply_unchecked(good_programs, caplog):
    import asyncio

    from leap_cli.epic.classes import ClassVocab
    from leap_cli.programs.checker import RemoteChecker
    from leap_cli.programs.reply import verify_reply
    from leap_cli.programs.validate import Labels

    verbs = ClassVocab.from_csv(CLASSES / "EPIC_100_verb_classes.csv", "verb")
    nouns = ClassVocab.from_csv(CLASSES / "EPIC_100_noun_classes.csv", "noun")
    texts = [json.dumps(p) for p in good_programs.values()] + ["not json", json.dumps({"action": 1})]
    bad = json.loads(texts[0])
    bad["steps"][0]["verb"] = "teleport"
    texts.append(json.dumps(bad))
    labels = [Labels(1, 2), Labels(None, None)]
    want = [verify_reply(t, verbs, nouns, lab, 24) for t in texts for lab in labels]
    assert any(f for _, f in want) and any(not f for _, f in want)

    async def run():
        checker = RemoteChecker(verbs, nouns, 24)
        await checker.start()
        assert checker.ready and not checker.ended
        first = await asyncio.gather(*(checker.check(t, lab) for t in texts for lab in labels))
        assert checker.remote == len(want) and checker.local == 0
        # the child is killed while a batch is on its way: those replies are checked here instead
        pending = [asyncio.ensure_future(checker.check(t, lab)) for t in texts for lab in labels]
        await asyncio.sleep(0)  # the batch is written
        checker.transport.kill()
        second = await asyncio.gather(*pending)
        third = await asyncio.gather(*(checker.check(t, lab) for t in texts for lab in labels))
        await checker.aclose()
        return first, second, third, checker

    first, second, third, checker = asyncio.run(run())
    assert first == want and second == want and third == want
    assert checker.ended and checker.local >= len(want)
    assert "checker process ended" in caplog.text


def test_the_checker_process_starts_only_where_it_pays(monkeypatch):
    from leap_cli.programs import generate as g

    class B:
        name = "openai"
    monkeypatch.setattr(g, "usable_cpus", lambda: 2)
    cfg = GenerateConfig(backend="openai", concurrency=32)
    assert g.use_check_process(cfg, B(), 1000)
    assert not g.use_check_process(cfg, B(), g.CHECK_PROCESS_MIN - 1)  # a short run: not worth a process
    assert not g.use_check_process(GenerateConfig(backend="openai", concurrency=4), B(), 1000)
    B.name = "offline"
    assert not g.use_check_process(cfg, B(), 1000)  # the offline backend makes its programs on the loop
    B.name = "openai"
    monkeypatch.setattr(g, "usable_cpus", lambda: 1)
    assert not g.use_check_process(cfg, B(), 1000)  # one CPU: the child would take the loop's
    assert g.use_check_process(GenerateConfig(concurrency=1, check_process=True), B(), 1)  # asked for


@pytest.mark.parametrize("check_process", [False, True])
def test_a_reply_of_endless_brackets_is_one_finding_not_a_crash(workdir, good_programs, check_process):
    """An LLM that repeats '[' until max_tokens: deeper than Python's recursion limit, which json.loads, the
    record's json.dumps and pickle all hit."""
    first = sorted(good_programs)[0]

    def script(body, n):
        nid = narration_id_of(body)
        if nid == first or n == 0:
            return Reply('{"steps": ' + "[" * 3000)
        return Reply(json.dumps(good_programs[nid]))

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, limit=3, check_process=check_process))
    assert s.statuses == {"valid": 2, "invalid": 1}
    recs = {r["narration_id"]: r for r in records(workdir)}
    assert recs[first]["program"] is None and "3001 levels deep" in recs[first]["errors"][0]["message"]


def test_json_depth_skips_brackets_inside_strings():
    from leap_cli.programs.reply import MAX_DEPTH, json_depth, parse_reply

    assert json_depth('{"a": [1, {"b": "]]]}}}[[[[\\"[["}]}') == 3
    text = '{"a": "' + "[" * 200 + '"}'  # many brackets, all in a string: an ordinary (schema-invalid) object
    assert parse_reply(text)[0] == {"a": "[" * 200}
    deep = '{"a": ' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1)
    assert parse_reply(deep)[0] is None
    ok = '{"a": ' * MAX_DEPTH + "1" + "}" * MAX_DEPTH
    assert parse_reply(ok)[0] is not None


def test_reply_text_reads_content_parts_and_refusals(workdir, good_programs):
    from leap_cli.programs.backends import reply_text

    msg = lambda **m: {"choices": [{"index": 0, "message": {"role": "assistant", **m}}]}  # noqa: E731
    assert reply_text(msg(content="{}")) == "{}"
    assert reply_text(msg(content=[{"type": "text", "text": '{"a": '}, {"type": "image"}, {"type": "text", "text": "1}"}])) == '{"a": 1}'
    assert reply_text(msg(content=None, refusal="I cannot help with that.")) == "(refused) I cannot help with that."
    from leap_cli.programs.reply import parse_reply
    assert parse_reply("(refused) I cannot help with that.")[1][0].message == "the model refused: I cannot help with that."
    assert parse_reply("  \n")[1][0].message == "the reply is empty (no content)"
    # the think tags in any case; braces in the prose before the program (the first object that parses is taken)
    assert parse_reply('<THINK>the {plan}</THINK>\n{"a": 1}')[0] == {"a": 1}
    assert parse_reply('Using the {verb} and {noun} slots, here it is: {"a": 1} done')[0] == {"a": 1}
    assert "not JSON" in parse_reply("see {verb} and {noun}")[1][0].message
    assert reply_text(msg(content=None)) == "" and reply_text({"choices": []}) == "" and reply_text({}) == ""
    assert reply_text(msg(content={"a": 1})) == '{"a": 1}'  # a server that sent the JSON as an object

    def script(body, n):  # a server that sends the content as a list of parts
        data = completion("x")
        data["choices"][0]["message"]["content"] = [{"type": "text", "text": json.dumps(good_programs[narration_id_of(body)])}]
        return Reply(raw=json.dumps(data))

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, limit=2))
    assert s.statuses == {"valid": 2}


def test_a_stuck_checker_process_is_stopped_and_its_checks_done_here(good_programs, caplog, monkeypatch):
    import asyncio
    import os
    import signal

    from leap_cli.epic.classes import ClassVocab
    from leap_cli.programs import checker as checker_module
    from leap_cli.programs.reply import verify_reply
    from leap_cli.programs.validate import Labels

    monkeypatch.setattr(checker_module, "STALL_S", 0.4)
    verbs = ClassVocab.from_csv(CLASSES / "EPIC_100_verb_classes.csv", "verb")
    nouns = ClassVocab.from_csv(CLASSES / "EPIC_100_noun_classes.csv", "noun")
    texts = [json.dumps(p) for p in good_programs.values()]
    want = [verify_reply(t, verbs, nouns, Labels(1, 2), 24) for t in texts]

    async def run():
        checker = checker_module.RemoteChecker(verbs, nouns, 24)
        await checker.start()
        assert checker.ready
        os.kill(checker.transport.get_pid(), signal.SIGSTOP)  # alive, but answers nothing
        got = await asyncio.wait_for(asyncio.gather(*(checker.check(t, Labels(1, 2)) for t in texts)), 10)
        await checker.aclose()
        return got, checker

    got, checker = asyncio.run(run())
    assert got == want and checker.ended and checker.remote == 0 and checker.local == len(texts)
    assert "answered no check" in caplog.text and "exit code" not in caplog.text


def test_token_counts_in_another_form_are_read_or_zero():
    from leap_cli.programs.backends import reply_usage

    assert reply_usage({"usage": {"prompt_tokens": 10, "completion_tokens": 3,
                                  "prompt_tokens_details": {"cached_tokens": 4}}}) == {
        "prompt_tokens": 10, "completion_tokens": 3, "cached_tokens": 4}
    # a lax server: numbers as strings or floats, nulls, junk, a missing or odd usage
    assert reply_usage({"usage": {"prompt_tokens": "12", "completion_tokens": 5.0}}) == {
        "prompt_tokens": 12, "completion_tokens": 5}
    for odd in ({"usage": {"prompt_tokens": None, "completion_tokens": "many", "prompt_tokens_details": [1]}},
                {"usage": {"prompt_tokens": float("nan"), "completion_tokens": -3}}, {"usage": "n/a"}, {},
                {"usage": {"prompt_tokens": True, "completion_tokens": 1e300}}):
        assert reply_usage(odd) == {"prompt_tokens": 0, "completion_tokens": 0}


def test_a_model_that_refuses_max_tokens_and_temperature_is_sent_what_it_takes(workdir, good_programs, caplog):
    """GPT-5-era OpenAI models answer 400 to max_tokens and to a temperature other than 1 (their exact errors)."""
    def error(param, message):
        return Reply(status=400, raw=json.dumps({"error": {"message": message, "type": "invalid_request_error",
                                                           "param": param, "code": "unsupported_parameter"}}))

    def script(body, n):
        if "max_tokens" in body:
            return error("max_tokens", "Unsupported parameter: 'max_tokens' is not supported with this model. "
                                       "Use 'max_completion_tokens' instead.")
        if body.get("temperature", 1) != 1:
            return error("temperature", "Unsupported value: 'temperature' does not support 0 with this model. "
                                        "Only the default (1) value is supported.")
        assert body["max_completion_tokens"] == 2000
        return Reply(json.dumps(good_programs[narration_id_of(body)]))

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, limit=4, concurrency=1))
        assert s.statuses == {"valid": 4}
        assert len(server.requests) == 4 + 2  # one refusal of each parameter, then every request as the model takes it
        assert "max_completion_tokens instead" in caplog.text and "only its default temperature" in caplog.text
        (workdir / "programs" / "val.jsonl").unlink()
        (workdir / "programs" / "val.jsonl.settings.json").unlink(missing_ok=True)
        s = generate_programs(config(workdir, server, limit=4, concurrency=1))  # the cache keys did not change
        assert s.cache_hits == 4 and len(server.requests) == 6


def test_other_400s_still_fail_the_record(workdir):
    def script(body, n):  # (each its own: the same 400 for every request stops the stage)
        return Reply(status=400, raw=json.dumps({"error": {"message": f"Invalid 'messages[1].content': too long "
                                                                      f"({narration_id_of(body)}).",
                                                           "param": "messages", "code": "invalid_value"}}))

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, limit=2))
        assert s.statuses == {"failed": 2} and len(server.requests) == 2


def test_a_reply_cut_at_the_token_limit_says_so(workdir, good_programs):
    def script(body, n):
        data = completion(json.dumps(good_programs[narration_id_of(body)])[:200])  # cut mid-program
        data["choices"][0]["finish_reason"] = "length"
        assert body["max_tokens"] == 300
        return Reply(raw=json.dumps(data))

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, limit=1, max_tokens=300))
    assert s.statuses == {"invalid": 1}
    (rec,) = records(workdir)
    assert rec["errors"][0]["message"].startswith("the reply stopped at the token limit (--max-tokens 300;")
    assert "not JSON" in rec["errors"][1]["message"]


def test_extra_body_fields_are_sent_and_are_part_of_the_settings(workdir, good_programs):
    script = lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))  # noqa: E731
    extra = {"chat_template_kwargs": {"enable_thinking": False}, "reasoning_effort": "low"}
    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, limit=2, extra_body=extra))
        assert s.statuses == {"valid": 2}
        assert all(b["chat_template_kwargs"] == {"enable_thinking": False} and b["reasoning_effort"] == "low"
                   for b in server.requests)
        with pytest.raises(LeapError, match="other settings|extra_body"):  # the output holds replies to the other body
            generate_programs(config(workdir, server, limit=3))
        s = generate_programs(config(workdir, server, limit=2, out=workdir / "other.jsonl",
                                     extra_body={"reasoning_effort": "high"}))
        assert s.cache_hits == 0 and len(server.requests) == 4  # another body: replies are not reused
        s = generate_programs(config(workdir, server, limit=2, out=workdir / "again.jsonl", extra_body=extra))
        assert s.cache_hits == 2 and len(server.requests) == 4
    with pytest.raises(LeapError, match="may not replace the messages"):
        generate_programs(config(workdir, server, extra_body={"messages": []}))
    with pytest.raises(LeapError, match="asks for a streamed reply"):  # (every reply failed "not JSON: a web page?")
        generate_programs(config(workdir, server, extra_body={"stream": True}))


@pytest.mark.parametrize("refusal", ["max_tokens", "temperature", "response_format"])
def test_a_refusal_seen_by_every_request_in_flight_fails_none(workdir, good_programs, refusal):
    """Six requests are on the wire when the first 400 comes back: the switch is made once and each of the six is
    sent again as the model takes it (not failed because another request made the switch first)."""
    def script(body, n):
        if refusal == "max_tokens" and "max_tokens" in body:
            return Reply(status=400, delay=0.2, raw=json.dumps({"error": {
                "message": "Unsupported parameter: 'max_tokens' is not supported with this model.", "param": "max_tokens"}}))
        if refusal == "temperature" and "temperature" in body:
            return Reply(status=400, delay=0.2, raw=json.dumps({"error": {
                "message": "Unsupported value: 'temperature' does not support 0 with this model.", "param": "temperature"}}))
        if refusal == "response_format" and body["response_format"]["type"] == "json_schema":
            return Reply(status=400, delay=0.2, raw=json.dumps({"error": {"message": "response_format json_schema not supported"}}))
        return Reply(json.dumps(good_programs[narration_id_of(body)]))

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, limit=6, concurrency=6))
        assert s.statuses == {"valid": 6}, s.failures
        assert len(server.requests) == 12  # six refused, six sent again


def test_failures_are_counted_by_cause_not_by_where_the_json_broke():
    from leap_cli.commands.programs import failure_cause
    from leap_cli.programs.reply import parse_reply

    a = parse_reply('{"sub_actions": "take')[1][0].message
    b = parse_reply('{"sub_actions": [{"verb": "take", "object_a": "knife"}, "cut')[1][0].message
    assert a != b and "at at" not in a and "line 1 column" in a  # the record says where
    assert failure_cause(a) == failure_cause(b) == "the reply is not JSON (Unterminated string starting at)"
    assert failure_cause("HTTP 503 after 4 attempts: upstream busy") == "HTTP 503"
    # a thinking model that never answered: one cause, not one per reply's length (QA: 16 causes of "1 x")
    from leap_cli.programs.reply import REASONING_ONLY

    thought = [parse_reply(f"{REASONING_ONLY}reasoning_content {n}")[1][0].message for n in (1460, 2210)]
    assert thought[0] != thought[1] and failure_cause(thought[0]) == failure_cause(thought[1])


def test_descriptors_of_another_split_are_refused(workdir, tmp_path, caplog):
    from leap_cli.epic.annotations import read_segments

    segs = read_segments(DATA / "EPIC_100_validation_excerpt.csv")[:N_SEGMENTS]
    other = [{"narration_id": f"P99_01_{i}", "video_id": "P99_01", "text": "take knife"} for i in range(3)]
    mine = [{"narration_id": s.narration_id, "video_id": s.video_id, "text": s.narration} for s in segs[:2]]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in other))
    with pytest.raises(LeapError, match="none of the 3 descriptor records is a segment of split val"):
        generate_programs(GenerateConfig(workdir=workdir, split="val", descriptors=path))
    path.write_text("".join(json.dumps(r) + "\n" for r in other + mine))
    s = generate_programs(GenerateConfig(workdir=workdir, split="val", descriptors=path))
    assert sum(s.statuses.values()) == 2 and "3 descriptor records are not segments of split val" in caplog.text
    assert sorted(r["narration_id"] for r in records(workdir)) == sorted(r["narration_id"] for r in mine)


def test_the_offline_generator_fills_no_cache(workdir):
    """Deterministic and ~2 ms a program: its replies cost a cache row and a call-log row each (~3.4 kB a record,
    more than the programs file) and saved nothing; nor is there a cost to keep, so there is no cache.sqlite."""
    s = generate_programs(GenerateConfig(workdir=workdir, split="val"))
    assert s.statuses == {"valid": N_SEGMENTS}
    assert not list((workdir / "programs").glob("cache.sqlite*"))
    first = {r["narration_id"]: r["program"] for r in records(workdir)}
    (workdir / "programs" / "val.jsonl").unlink()
    again = generate_programs(GenerateConfig(workdir=workdir, split="val"))  # made again, the same
    assert again.statuses == {"valid": N_SEGMENTS} and again.cache_hits == 0
    assert {r["narration_id"]: r["program"] for r in records(workdir)} == first


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_stop_signal_lets_the_requests_in_flight_finish(workdir, good_programs, signame):
    """Ctrl-C or SIGTERM sent every request in flight again on the resume (up to --concurrency paid twice per
    preemption): the first signal lets them finish and keeps their replies, so the runs together ask once per
    segment."""
    import signal

    script = lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]), delay=0.5)  # noqa: E731
    out = workdir / "programs" / "val.jsonl"
    with ScriptedServer(script) as server:
        proc = start_cli(workdir, server, 2)
        wait_until(lambda: out.exists() and len(out.read_text().splitlines()) >= 2)
        time.sleep(0.1)  # the next two requests are on the wire
        proc.send_signal(getattr(signal, signame))
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 128 + getattr(signal, signame), err
        again = "Ctrl-C again" if signame == "SIGINT" else "SIGTERM again"  # (a scheduler sends no Ctrl-C)
        window = "1" if signame == "SIGINT" else "5"
        assert (f"stopping: waiting up to 20 s for 2 requests in flight; {again} after {window} s to abandon them"
                in err.decode())
        kept = read_jsonl(out)
        assert len(kept) == 4 and len(server.requests) == 4
        s = generate_programs(config(workdir, server, model="m"))
        assert s.resumed == 4 and s.statuses == {"valid": N_SEGMENTS - 4}
        assert len(server.requests) == N_SEGMENTS  # not one paid twice
        with ProgramStore(workdir / "programs" / "cache.sqlite") as store:
            assert store.spent(out)["requests"] == N_SEGMENTS


def test_a_second_stop_signal_abandons_the_requests_in_flight(workdir, good_programs):
    """... but not the same signal again at once: Slurm or a wrapper forwarding its own signal delivers two, and
    the requests in flight were abandoned and paid again (QA; train already took them as one stop)."""
    import signal

    script = lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]), delay=10)  # noqa: E731
    with ScriptedServer(script) as server:
        proc = start_cli(workdir, server, 2)
        wait_until(lambda: len(server.requests) >= 2)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # (not at once: the kernel would merge the two)
        proc.send_signal(signal.SIGTERM)  # the same stop, twice
        time.sleep(1.0)
        assert proc.poll() is None  # still waiting for the requests in flight
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert time.monotonic() - start < 5
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert "abandoned 2 requests in flight" in err.decode()
        # (and the second SIGTERM said it was the same stop: QA pressed Ctrl-C again and heard nothing)
        assert "the same stop: still waiting for 2 requests in flight; SIGTERM again after 5 s abandons" in \
            " ".join(err.decode().split())
        assert len(server.requests) == 2


def test_the_cache_is_created_as_the_umask_says(workdir, good_programs):
    """SQLite creates its file 0644 whatever the umask: a group sharing the work directory (umask 002) could not
    write the cache and ledger of a run it resumes, while every other file leap writes is 0664 there."""
    import os
    import stat

    script = lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))  # noqa: E731
    old = os.umask(0o002)
    try:
        with ScriptedServer(script) as server:
            generate_programs(config(workdir, server, limit=1))
    finally:
        os.umask(old)
    for name in ("val.jsonl", "cache.sqlite"):
        assert stat.S_IMODE((workdir / "programs" / name).stat().st_mode) == 0o664, name


def test_batch_results_redo_the_failed_records(workdir, good_programs, tmp_path):
    """--batch-file --retry-errors wrote no request for the failed records, and the ingest of paid results for
    them said already_present and kept the failed records: only a live --retry-errors (twice the price) could
    redo them."""
    cfg = GenerateConfig(workdir=workdir, split="val", model="gpt-test")
    assert write_batch_file(cfg, tmp_path / "b1.jsonl") == N_SEGMENTS
    # (results named by the narration id alone, as a batch file of a leap before clip hashes asked)
    nids = [r["custom_id"].partition("@")[0] for r in read_jsonl(tmp_path / "b1.jsonl")]
    ok = lambda nid: {"custom_id": nid, "response": {"status_code": 200,  # noqa: E731
                                                      "body": completion(json.dumps(good_programs[nid]))}}
    expired = [{"custom_id": nid, "response": None, "error": {"code": "batch_expired", "message": "expired"}}
               for nid in nids[:2]]
    first = results_file(tmp_path / "out1.jsonl", expired + [ok(nid) for nid in nids[2:]])
    assert ingest_batch(cfg, first) == {"failed": 2, "valid": N_SEGMENTS - 2}
    assert write_batch_file(cfg, tmp_path / "b2.jsonl") == 0
    retry = dataclasses.replace(cfg, retry_failed=True)
    assert write_batch_file(retry, tmp_path / "b2.jsonl") == 2
    assert [r["custom_id"].partition("@")[0] for r in read_jsonl(tmp_path / "b2.jsonl")] == nids[:2]
    assert ingest_batch(cfg, first) == {"already_present": N_SEGMENTS}  # a failure again replaces nothing
    # a resubmitted request that fails once more (another request id) is a failure of this ingest, listed: it was
    # counted already_present, as if it were fine (QA)
    again = [dict(x, id=f"batch_req_{i}") for i, x in enumerate(expired[:1])]
    failures: list = []
    assert ingest_batch(cfg, results_file(tmp_path / "again.jsonl", again), failures) == {"failed": 1}
    assert failures == [(nids[0], "batch request failed: expired")]
    (rec,) = [r for r in records(workdir) if r["narration_id"] == nids[0]]
    assert rec["status"] == "failed" and rec["provenance"]["batch_request_id"] == "batch_req_0"  # (the newer)
    assert ingest_batch(cfg, results_file(tmp_path / "again.jsonl", again)) == {"already_present": 1}
    # the expired line and the retry's newer failure in one file (an expired batch's lines and the retry's output,
    # as docs/programs.md suggests): the newer error is kept (the expired one was chosen, already_present)
    newer = {"custom_id": nids[0], "id": "batch_req_9",
             "response": {"status_code": 500, "body": {"error": {"message": "server error"}}}}
    assert ingest_batch(cfg, results_file(tmp_path / "both.jsonl", expired[:1] + [newer])) == {
        "failed": 1, "superseded": 1}
    (rec,) = [r for r in records(workdir) if r["narration_id"] == nids[0]]
    assert rec["provenance"]["batch_request_id"] == "batch_req_9" and "HTTP 500: server error" in str(rec["errors"])
    # ... also given in the other order (the retry's output file before the expired batch's): the request that ran
    newest = dict(newer, id="batch_req_10")
    assert ingest_batch(cfg, [results_file(tmp_path / "retry.jsonl", [newest]),
                              results_file(tmp_path / "expired.jsonl", expired[:1])]) == {"failed": 1, "superseded": 1}
    (rec,) = [r for r in records(workdir) if r["narration_id"] == nids[0]]
    assert rec["provenance"]["batch_request_id"] == "batch_req_10", rec
    # a result line without an id (a compatible server's) with another error is told apart by its error
    no_id = {"custom_id": nids[0], "response": None, "error": {"message": "cancelled"}}
    assert ingest_batch(cfg, results_file(tmp_path / "no_id.jsonl", [no_id])) == {"failed": 1}
    assert ingest_batch(cfg, results_file(tmp_path / "no_id.jsonl", [no_id])) == {"already_present": 1}
    # a status code written as a string by some servers is read as the number
    as_text = [dict(ok(nid), response=dict(ok(nid)["response"], status_code="200")) for nid in nids[:2]]
    assert ingest_batch(cfg, results_file(tmp_path / "out2.jsonl", as_text)) == {"valid": 2}
    recs = records(workdir)
    assert len(recs) == N_SEGMENTS and {r["status"] for r in recs} == {"valid"}
    assert write_batch_file(retry, tmp_path / "b3.jsonl") == 0
    # --retry-invalid: requests for the invalid records too, and their results replace them at the ingest
    other = dataclasses.replace(cfg, out=workdir / "programs" / "other.jsonl")
    again = dataclasses.replace(other, retry_invalid=True)
    empty = {"custom_id": nids[0], "response": {"status_code": 200, "body": completion("")}}
    assert ingest_batch(other, results_file(tmp_path / "out3.jsonl", [empty])) == {"invalid": 1}
    assert write_batch_file(other, tmp_path / "b4.jsonl") == N_SEGMENTS - 1
    assert write_batch_file(again, tmp_path / "b5.jsonl") == N_SEGMENTS
    assert ingest_batch(other, results_file(tmp_path / "out4.jsonl", [ok(nids[0])])) == {"already_present": 1,
                                                                                         "invalid_kept": 1}
    assert ingest_batch(again, results_file(tmp_path / "out4.jsonl", [ok(nids[0])])) == {"valid": 1}
    assert [r["status"] for r in read_jsonl(other.out_path)] == ["valid"]
    # a 200 result without a completion (an error object) is a failed request, as live, not an empty invalid reply
    err = {"custom_id": nids[1], "response": {"status_code": 200, "body": {"error": {"message": "out of memory"}}}}
    assert ingest_batch(other, results_file(tmp_path / "out5.jsonl", [err])) == {"failed": 1}
    rec = [r for r in read_jsonl(other.out_path) if r["narration_id"] == nids[1]][0]
    assert "out of memory" in rec["errors"][0]["message"]
    # one file holding an expired batch's errors, then the retry's results for the same segments (cat of both):
    # the failures were written and the paid results counted already present; and a per-request 400's reason
    # was left out of its record
    third = dataclasses.replace(cfg, out=workdir / "programs" / "third.jsonl")
    bad = {"custom_id": nids[2], "response": {"status_code": 400, "body": {"error": {
        "message": "Invalid schema for response_format 'action_program'"}}}}
    both = results_file(tmp_path / "out6.jsonl", expired + [ok(nid) for nid in nids[2:]] + [ok(nid) for nid in nids[:2]])
    assert ingest_batch(third, both) == {"valid": N_SEGMENTS, "superseded": 2}
    assert {r["status"] for r in read_jsonl(third.out_path)} == {"valid"}
    # a batch's output and its --retry-invalid batch's in one file: the valid result after an invalid one was
    # counted already present, and no ingest could ever write it
    fourth = dataclasses.replace(cfg, out=workdir / "programs" / "fourth.jsonl")
    empty_then_ok = [{"custom_id": nids[0], "response": {"status_code": 200, "body": completion("")}}, ok(nids[0])]
    assert ingest_batch(fourth, results_file(tmp_path / "out8.jsonl", empty_then_ok)) == {"valid": 1, "superseded": 1}
    assert [r["status"] for r in read_jsonl(fourth.out_path)] == ["valid"]
    assert ingest_batch(other, results_file(tmp_path / "out7.jsonl", [bad])) == {"failed": 1}
    rec = [r for r in read_jsonl(other.out_path) if r["narration_id"] == nids[2]][0]
    assert rec["errors"][0]["message"] == ("batch request failed: HTTP 400: Invalid schema for response_format "
                                           "'action_program'")


def test_descriptors_extracted_anew_with_other_settings_are_refused(workdir, good_programs):
    """A resume onto descriptors re-extracted with other settings (extract --force --components narration,audio)
    mixed programs of two kinds of clip text without a word."""
    from leap_cli.epic.annotations import read_segments
    from leap_cli.io import settings_path

    desc = workdir / "descriptors" / "val.jsonl"
    desc.parent.mkdir(parents=True)
    segs = read_segments(workdir / "kitchen" / "annotations" / "EPIC_100_validation.csv")
    desc.write_text("".join(json.dumps(narration_record(s)) + "\n" for s in segs))
    extracted = {"components": ["narration", "audio", "camera", "objects", "hands"], "hand_threshold": 0.5}
    settings_path(desc).write_text(json.dumps({**extracted, "split": "val"}))
    generate_programs(GenerateConfig(workdir=workdir, split="val", limit=2))
    settings_path(desc).write_text(json.dumps({**extracted, "components": ["narration", "audio"], "split": "val"}))
    with pytest.raises(LeapError, match=r"the descriptors' extract components: \[.*\] -> \['narration', 'audio'\]") as e:
        generate_programs(GenerateConfig(workdir=workdir, split="val"))
    # (extract's settings, not this command's: the way back is extract's or --force)
    assert e.value.fix.startswith("the descriptors were extracted again with other settings since: --force makes")
    assert len(records(workdir)) == 2
    # a programs file whose settings were kept before the descriptors' were adopts those of now
    sidecar = settings_path(workdir / "programs" / "val.jsonl")
    old = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({k: v for k, v in old.items() if k != "descriptors"}))
    s = generate_programs(GenerateConfig(workdir=workdir, split="val"))
    assert s.resumed == 2 and json.loads(sidecar.read_text())["descriptors"]["components"] == ["narration", "audio"]


def test_programs_made_before_the_descriptors_were_extracted_say_so(workdir, good_programs):
    """Was wrong (QA): generate-programs run before extract (the narrations alone), then again after it, was
    refused with "the descriptors were extracted again with other settings since", of descriptors extracted for
    the first time, and advised extracting "with the settings the output was made from" (there were none)."""
    from leap_cli.epic.annotations import read_segments
    from leap_cli.io import settings_path

    generate_programs(GenerateConfig(workdir=workdir, split="val", limit=2))
    desc = workdir / "descriptors" / "val.jsonl"
    desc.parent.mkdir(parents=True)
    segs = read_segments(workdir / "kitchen" / "annotations" / "EPIC_100_validation.csv")
    desc.write_text("".join(json.dumps(narration_record(s)) + "\n" for s in segs))
    extracted = {"components": ["narration", "audio", "camera", "objects", "hands"], "hand_threshold": 0.5,
                 "object_threshold": 0.5, "camera_frames": 9, "camera_source": "auto", "fov_deg": 90.0}
    settings_path(desc).write_text(json.dumps({**extracted, "split": "val"}))
    with pytest.raises(LeapError) as e:
        generate_programs(GenerateConfig(workdir=workdir, split="val"))
    # (the extract settings are not spelt out in the line: they were none before)
    assert "the descriptors' extract settings: 'narration-only' -> {6 settings}" in e.value.message, e.value.message
    assert e.value.fix.startswith("the programs were made from the narrations alone, before the descriptors were "
                                  "extracted: --force makes the programs anew from them"), e.value.fix
    assert "extract again" not in e.value.fix
    s = generate_programs(GenerateConfig(workdir=workdir, split="val", force=True))
    assert s.resumed == 0 and sum(s.statuses.values()) == len(segs) == len(records(workdir))


def test_the_program_is_found_after_thinking_and_around_prose():
    from leap_cli.programs.reply import parse_reply

    program = '{"a": 1, "b": "{not this}"}'
    for text in (f"<think>\nThe user wants {{a program}}.\n</think>\n\n{program}",  # a thinking model, no parser
                 f"<think>plan</think>\n```json\n{program}\n```",
                 f"The template opened the block; {{this}} is thinking\n</think>\n{program}",  # DeepSeek-R1's
                 f"Here is the action program:\n\n{program}\n\nLet me know if you need more.",
                 f"Here it is:\n```json\n{program}\n```\nIt takes the plate first.",
                 f"```\n{program}\n```\nOne sentence after.", f"```json{program}```",
                 f"{program}<|im_end|>", f"{program}\n{program}"):
        assert parse_reply(text) == ({"a": 1, "b": "{not this}"}, []), text
    # what is not one object is still said so
    assert parse_reply('[{"a": 1}]')[1][0].message == "the reply is JSON but not an object (list)"
    assert parse_reply("take the plate")[1][0].message.startswith("the reply is not JSON (Expecting value")
    assert parse_reply('prose {"a": [1,')[1][0].message.startswith("the reply is not JSON")
    assert parse_reply("<think>the budget ran out here")[1][0].message.startswith(
        "the reply is only the model's thinking")


def test_a_program_after_thinking_or_in_prose_costs_no_repair_turn(workdir, good_programs):
    def script(body, n):
        program = json.dumps(good_programs[narration_id_of(body)])
        return Reply(f"<think>\nThe user wants {{a program}}.\n</think>\n\nHere it is:\n```json\n{program}\n```\nDone.")

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, limit=2))
        assert s.statuses == {"valid": 2} and len(server.requests) == 2


@pytest.mark.parametrize("body", [
    {"error": {"message": "json: cannot unmarshal array into Go value", "type": "api_error"}},  # Ollama
    {"error": "model requires more system memory (12.0 GiB) than is available"},
    {"choices": []}, {"id": "x"}, {"choices": [{"index": 0, "finish_reason": "stop"}]}])
def test_a_200_reply_without_a_completion_is_a_failed_request_not_cached(workdir, good_programs, body):
    # one segment's reply is the error (a server failing every request this way stops the stage: test_programs_endpoints)
    healthy, broken = [], sorted(good_programs)[0]

    def script(b, n):
        nid = narration_id_of(b)
        return Reply(json.dumps(good_programs[nid])) if healthy or nid != broken else Reply(raw=json.dumps(body))

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, limit=2, concurrency=1))
        assert s.statuses == {"failed": 1, "valid": 1} and len(server.requests) == 2  # no repair turn
        (r,) = [r for r in records(workdir) if r["status"] == "failed"]
        message = r["errors"][0]["message"]
        assert message.startswith("request failed: the endpoint")
        if "error" in body:
            assert str(body["error"])[-20:-2] in message or body["error"]["message"] in message
        with ProgramStore(workdir / "programs" / "cache.sqlite") as store:
            assert store.db.execute("SELECT COUNT(*) FROM cache").fetchone()[0] == 1  # the valid reply's only
        healthy.append(1)
        s = generate_programs(config(workdir, server, limit=2, retry_failed=True))
        assert s.statuses == {"valid": 2} and len(server.requests) == 4


def test_a_reply_cut_at_the_token_limit_gets_no_repair_turn_also_from_the_cache(workdir, good_programs):
    def script(body, n):
        data = completion(json.dumps(good_programs[narration_id_of(body)])[:200])
        data["choices"][0]["finish_reason"] = "length"
        return Reply(raw=json.dumps(data))

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, limit=2))
        assert s.statuses == {"invalid": 2} and len(server.requests) == 2
        (workdir / "programs" / "val.jsonl").unlink()
        s = generate_programs(config(workdir, server, limit=2))
        assert s.cache_hits == 2 and len(server.requests) == 2
    for r in records(workdir):
        assert r["errors"][0]["message"].startswith("the reply stopped at the token limit")
        assert r["provenance"]["rounds"] == 1


@pytest.mark.parametrize("field,content", [("reasoning_content", None), ("reasoning_content", ""),
                                           ("reasoning", None)])
def test_a_reply_that_only_thought_names_the_cause_and_gets_no_repair_turn(workdir, good_programs, field, content):
    def script(body, n):
        data = completion("x")
        thinking = json.dumps(good_programs[narration_id_of(body)])
        data["choices"][0]["message"].update({"content": content, field: thinking})
        return Reply(raw=json.dumps(data))

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, limit=2))
        assert s.statuses == {"invalid": 2} and len(server.requests) == 2
    for r in records(workdir):
        assert r["program"] is None  # the thinking is not taken for the program
        message = r["errors"][0]["message"]
        assert f"characters in {field}" in message and "enable_thinking" in message and "--max-tokens" in message


def test_a_reply_that_never_closed_its_think_block_gets_no_repair_turn(workdir):  # noqa: F811
    """A thinking model on a server without a reasoning parser that spent its answer thinking (an unclosed
    <think>, not cut at the token limit) got a repair turn, which it spent thinking again."""
    with ScriptedServer(lambda body, n: Reply("<think>\nFirst, the clip shows a hand reaching for")) as server:
        s = generate_programs(config(workdir, server, limit=2))
        assert s.statuses == {"invalid": 2} and len(server.requests) == 2
    for r in records(workdir):
        assert r["errors"][0]["message"].startswith("the reply is only the model's thinking")


def test_a_refusal_is_invalid_with_its_words_and_gets_no_repair_turn(workdir):  # noqa: F811
    """Structured Outputs' refusal (``message.refusal``, content null) got a repair turn quoting "the model
    refused": a second paid request that the model declined alike."""
    def script(body, n):
        data = completion("x")
        data["choices"][0]["message"].update({"content": None, "refusal": "I'm sorry, I cannot help with that."})
        return Reply(raw=json.dumps(data))

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, limit=2))
        assert s.statuses == {"invalid": 2} and len(server.requests) == 2
    for r in records(workdir):
        assert r["errors"][0]["message"] == "the model refused: I'm sorry, I cannot help with that."
        assert r["provenance"]["rounds"] == 1


def test_a_reply_the_content_filter_stopped_names_it_and_gets_no_repair_turn(workdir):  # noqa: F811
    """finish_reason "content_filter" with no content (OpenAI, Azure) was "the reply is empty (no content)" and
    got a paid repair turn, which the filter stops alike (QA)."""
    def script(body, n):
        data = completion("x")
        data["choices"][0].update({"finish_reason": "content_filter", "message": {"role": "assistant", "content": None}})
        return Reply(raw=json.dumps(data))

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, limit=2))
        assert s.statuses == {"invalid": 2} and len(server.requests) == 2
    for r in records(workdir):
        assert r["errors"][0]["message"].startswith("the provider's content filter stopped the reply")
        assert r["provenance"]["rounds"] == 1


def test_an_endpoint_that_reports_no_usage_is_warned_of_once(workdir, good_programs, caplog):
    from leap_cli.programs.backends import reply_usage

    assert reply_usage({"usage": {"input_tokens": 7, "output_tokens": 3}}) == {
        "prompt_tokens": 7, "completion_tokens": 3}
    # one count left out beside the total: the other from it (the completion was counted 0, free, unsaid)
    assert reply_usage({"usage": {"prompt_tokens": 1000, "total_tokens": 1200}}) == {
        "prompt_tokens": 1000, "completion_tokens": 200}
    assert reply_usage({"usage": {"completion_tokens": 200, "total_tokens": 1200}}) == {
        "prompt_tokens": 1000, "completion_tokens": 200}
    assert reply_usage({"usage": {"total_tokens": 1200}}) == {"prompt_tokens": 0, "completion_tokens": 0}

    def script(body, n):
        data = completion(json.dumps(good_programs[narration_id_of(body)]))
        del data["usage"]
        return Reply(raw=json.dumps(data))

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, limit=3))
    assert s.statuses == {"valid": 3}
    assert caplog.text.count("the endpoint reports no token usage: the cost estimate cannot work") == 1
    # with --max-cost, which it cannot keep, no request more is sent (QA: all sent, "$0.0000" spent, exit 0)
    with ScriptedServer(script) as server:  # (a user error, exit 2: the same command would stop alike)
        s = generate_programs(config(workdir, server, limit=3, concurrency=1, max_cost=5.0, out=workdir / "cap.jsonl",
                                     model="other"), reraise=False)
    assert len(server.requests) == 1 and s.statuses == {"valid": 1} and s.stopped is None
    assert "--max-cost 5 cannot be kept: the endpoint reports no token usage" in s.error.message
    assert "run without --max-cost" in s.error.one_line()
    assert "nor can --max-cost: no more requests are sent" in caplog.text
    with ScriptedServer(script) as server:  # the same command again: the call log says so before any request
        with pytest.raises(LeapError, match=r"cannot be kept: the endpoint reports no token usage \(its last reply, "
                                            r"in an earlier run, had none\)"):
            generate_programs(config(workdir, server, limit=3, concurrency=1, max_cost=5.0, out=workdir / "cap.jsonl",
                                     model="other"))
    assert not server.requests
    # a run without the cap whose reply comes with its counts: the cap works again (the latest reply decides)
    priced = lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))  # noqa: E731
    with ScriptedServer(priced) as server:
        generate_programs(config(workdir, server, limit=2, concurrency=1, out=workdir / "cap.jsonl", model="other"))
        n = len(server.requests)
        s = generate_programs(config(workdir, server, limit=3, concurrency=1, max_cost=5.0, out=workdir / "cap.jsonl",
                                     model="other"))
        assert s.stopped is None and s.error is None and s.statuses == {"valid": 3} and len(server.requests) == n + 3
    # the offline generator has no cost to count: --max-cost leaves it be (review: it stopped after one record)
    s = generate_programs(GenerateConfig(workdir=workdir, split="val", max_cost=0.0, out=workdir / "offline.jsonl",
                                         limit=3))  # (also a cap of 0: QA, it stopped at 0 of 40)
    assert s.stopped is None and s.statuses == {"valid": 3}

    # a completion of 0 beside a prompt count is a count (an empty reply the content filter stopped): priced
    def filtered(body, n):
        data = completion("x")
        data["choices"][0].update({"finish_reason": "content_filter", "message": {"role": "assistant", "content": None}})
        data["usage"] = {"prompt_tokens": 1000, "completion_tokens": 0, "total_tokens": 1000}
        return Reply(raw=json.dumps(data))

    caplog.clear()
    with ScriptedServer(filtered) as server:
        s = generate_programs(config(workdir, server, limit=3, concurrency=1, max_cost=5.0, out=workdir / "f.jsonl",
                                     model="filtered"))
    assert s.stopped is None and len(server.requests) == 3 and s.cost == pytest.approx(3 * 0.001)
    assert "no completion tokens" not in caplog.text and "cannot work" not in caplog.text  # (it said "cannot work")

    def prompt_only(body, n):  # the prompt's count alone: the completion was counted free without a word
        data = completion(json.dumps(good_programs[narration_id_of(body)]))
        data["usage"] = {"prompt_tokens": 1000}
        return Reply(raw=json.dumps(data))

    caplog.clear()
    with ScriptedServer(prompt_only) as server:
        generate_programs(config(workdir, server, limit=4, out=workdir / "p.jsonl"))  # (3 from the cache)
    assert caplog.text.count("the endpoint reports no completion tokens for a reply with text: the cost estimate "
                             "counts the prompt tokens only") == 1


def test_cached_prompt_tokens_are_kept_in_the_record_and_the_cache(workdir, good_programs):
    def script(body, n):
        data = completion(json.dumps(good_programs[narration_id_of(body)]))
        data["usage"]["prompt_tokens_details"] = {"cached_tokens": 640}
        return Reply(raw=json.dumps(data))

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, limit=1))
        assert s.usage["cached_tokens"] == 640  # (the summary shows them: the cost counted them, unsaid)
        (workdir / "programs" / "val.jsonl").unlink()
        s = generate_programs(config(workdir, server, limit=1))
        assert s.cache_hits == 1
    (rec,) = records(workdir)
    assert rec["provenance"]["usage"] == {"prompt_tokens": 1000, "completion_tokens": 200, "cached_tokens": 640}


def test_the_token_limit_finding_says_how_to_redo_only_the_cut_records(workdir, good_programs, caplog):
    """Its advice, followed as written: the cut record is asked again with a larger budget and the valid ones are
    not bought again. Raising --max-tokens on a resume was refused as other settings (and --force bought every
    reply again); a reply that was not cut at the old limit is the one the new limit gives."""
    cut_one = sorted(good_programs)[0]

    def script(body, n):
        nid = narration_id_of(body)
        data = completion(json.dumps(good_programs[nid]))
        if nid == cut_one and body["max_tokens"] < 4000:
            data = completion(json.dumps(good_programs[nid])[:100])
            data["choices"][0]["finish_reason"] = "length"
        return Reply(raw=json.dumps(data))

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, max_tokens=2000))
        assert s.statuses == {"valid": N_SEGMENTS - 1, "invalid": 1}
        (rec,) = [r for r in records(workdir) if r["status"] == "invalid"]
        message = rec["errors"][0]["message"]
        assert "rerun with --max-tokens 4000 --retry-invalid" in message and len(server.requests) == N_SEGMENTS
        s = generate_programs(config(workdir, server, max_tokens=4000, retry_invalid=True))
        assert s.statuses == {"valid": 1} and s.resumed == N_SEGMENTS - 1 and len(server.requests) == N_SEGMENTS + 1
        # the other settings still refuse a resume, and so does a lower limit (it would cut what it did not)
        with pytest.raises(LeapError, match="other settings"):
            generate_programs(config(workdir, server, max_tokens=4000, temperature=0.5))
        with pytest.raises(LeapError, match=r"--max-tokens: 4000 -> 3000"):
            generate_programs(config(workdir, server, max_tokens=3000))
    assert all(r["status"] == "valid" for r in records(workdir)) and len(records(workdir)) == N_SEGMENTS


def test_replies_are_in_the_cache_and_the_ledger_while_a_slow_request_is_still_out(workdir, good_programs):
    """The store wrote its buffered rows only when the next row came: with a slow server, replies received
    seconds before a kill -9 were missing from the cache and the ledger (--max-cost under-counted them, and a run
    to another --out or with --force paid for them again). It now writes them within about commit_every."""
    import sqlite3
    import threading

    from leap_cli.epic.annotations import read_segments

    slow = read_segments(workdir / "kitchen" / "annotations" / "EPIC_100_validation.csv")[2].narration_id  # 3rd asked

    def script(body, n):
        nid = narration_id_of(body)
        return Reply(json.dumps(good_programs[nid]), delay=1.8 if nid == slow else 0.0)

    out = workdir / "programs" / "val.jsonl"
    with ScriptedServer(script) as server:
        cfg = config(workdir, server, limit=3, concurrency=3, timeout=5.0)
        run = threading.Thread(target=generate_programs, args=(cfg,))
        run.start()
        try:
            t0 = time.monotonic()
            while (not out.exists() or len(out.read_text().splitlines()) < 2) and time.monotonic() - t0 < 10:
                time.sleep(0.02)
            assert len(out.read_text().splitlines()) == 2  # the two quick ones written, the slow one still out
            time.sleep(1.0)
            assert run.is_alive()
            db = sqlite3.connect(workdir / "programs" / "cache.sqlite")
            cached = db.execute("SELECT COUNT(*) FROM cache").fetchone()[0]
            requests = db.execute("SELECT requests FROM ledger").fetchone()
            db.close()
            assert cached == 2 and requests == (2,), (cached, requests)
        finally:
            run.join(30)
    assert len(records(workdir)) == 3


def test_no_more_workers_than_records(workdir, monkeypatch):
    """--concurrency 1000000 started two million asyncio workers, also with nothing left to do (60 s, 1.8 GB)."""
    import asyncio

    started = []
    ensure_future = asyncio.ensure_future
    monkeypatch.setattr(asyncio, "ensure_future", lambda coro: started.append(1) or ensure_future(coro))
    s = generate_programs(GenerateConfig(workdir=workdir, split="val", concurrency=1_000_000))
    assert s.statuses["valid"] == N_SEGMENTS and len(started) <= 2 * N_SEGMENTS + 2  # + the flusher and watcher
    started.clear()
    assert generate_programs(GenerateConfig(workdir=workdir, split="val", concurrency=1_000_000)).resumed == N_SEGMENTS
    assert len(started) <= 4


def test_parts_of_a_sharded_run_are_named_not_passed_over(workdir):
    """After `extract --shard i/2` runs, generate-programs went on from the narrations alone (with an LLM: paying
    for prompts without descriptors), build-shards without programs, validate-programs said "not found"."""
    from tests.test_cli import leap

    (workdir / "descriptors").mkdir()
    (workdir / "descriptors" / "val.shard1of2.jsonl").write_text("")
    with pytest.raises(LeapError, match=r"val\.jsonl: not found, but parts of it from --shard runs are there "
                                        r"\(1 of 2\).*once every part is done, merge them: cat .*val\.shard\*of2\.jsonl"):
        generate_programs(GenerateConfig(workdir=workdir, split="val"))
    (workdir / "programs").mkdir()
    for i in (0, 1, 2):
        (workdir / "programs" / f"val.shard{i}of3.jsonl").write_text("")
    (workdir / "programs" / "val.shard0of3.jsonl.settings.json").write_text("{}")  # sidecars are not parts
    for args in (("validate-programs", "--split", "val"), ("build-shards", "--split", "val")):
        r = leap(*args, "--workdir", str(workdir))
        assert r.returncode == 2 and "not found, but parts of it from --shard runs are there (3 of 3)" in r.stderr


def test_a_part_of_extract_feeds_the_same_part_of_generation(workdir, caplog):
    """`generate-programs --descriptors train.shard1of3.jsonl --shard 1/3` (Slurm arrays chaining part i into part i)
    did nothing: the part's own videos were dealt into three again. Parts now follow the split's annotation order,
    as extract's do, whatever order the input holds them in; a duplicated id takes its last record."""
    from leap_cli.common import ShardSpec
    from leap_cli.epic.annotations import read_segments
    from leap_cli.programs.generate import load_inputs

    ann = workdir / "kitchen" / "annotations"
    lines = (DATA / "EPIC_100_validation_excerpt.csv").read_text().splitlines()
    rows = [lines[0]] + [ln.replace("P01_11", f"P01_1{1 + i % 3}", 2) for i, ln in enumerate(lines[1:13])]
    (ann / "EPIC_100_validation.csv").write_text("\n".join(rows) + "\n")
    segs = read_segments(ann / "EPIC_100_validation.csv")
    desc = workdir / "descriptors"
    desc.mkdir()

    def record(s, text="clip"):
        return {"narration_id": s.narration_id, "video_id": s.video_id, "start": s.start, "stop": s.stop,
                "text": text, "components": {}}

    parts = [ShardSpec(i, 3).select(segs, key=lambda s: s.video_id) for i in range(3)]  # extract's parts
    for i, part in enumerate(parts):
        (desc / f"val.shard{i}of3.jsonl").write_text("".join(json.dumps(record(s)) + "\n" for s in part))
    for i, part in enumerate(parts):  # not merged yet: --shard i/3 alone takes extract's part i (QA: it said to
        inputs = load_inputs(GenerateConfig(workdir=workdir, split="val", shard=ShardSpec(i, 3)))  # merge first)
        assert {r["narration_id"] for r in inputs.records} == {s.narration_id for s in part}, i
        assert inputs.source.endswith(f"val.shard{i}of3.jsonl"), inputs.source
    # extract's own part 1 not there, the others are: that part is named (was: "once every part is done, merge")
    (desc / "val.shard1of3.jsonl").rename(desc / "aside.jsonl")
    with pytest.raises(LeapError, match=r"extract's part 1/3 of the val split is not there") as e:
        load_inputs(GenerateConfig(workdir=workdir, split="val", shard=ShardSpec(1, 3)))
    assert "leap extract --split val --shard 1/3" in e.value.fix
    (desc / "aside.jsonl").rename(desc / "val.shard1of3.jsonl")
    merged = desc / "val.jsonl"  # merged in another order than the annotation's
    merged.write_text("".join((desc / f"val.shard{i}of3.jsonl").read_text() for i in (2, 0, 1)))
    for i, part in enumerate(parts):
        want = {s.narration_id for s in part}
        assert want
        got = generate_programs(GenerateConfig(workdir=workdir, split="val", shard=ShardSpec(i, 3),
                                               descriptors=desc / f"val.shard{i}of3.jsonl"))
        assert {r["narration_id"] for r in read_jsonl(got.out)} == want, i
        inputs = load_inputs(GenerateConfig(workdir=workdir, split="val", shard=ShardSpec(i, 3)))
        assert {r["narration_id"] for r in inputs.records} == want, i
    # an array script's index off by one (part 0's descriptors for --shard 1/3): an empty part, exit 0, before
    with pytest.raises(LeapError, match=r"val.shard0of3.jsonl: is extract's part 0/3, and this run is --shard 1/3.*"
                                        r"--descriptors .*val.shard1of3.jsonl"):
        load_inputs(GenerateConfig(workdir=workdir, split="val", shard=ShardSpec(1, 3),
                                   descriptors=desc / "val.shard0of3.jsonl"))
    with merged.open("a") as f:  # an id twice (a merge of overlapping parts): the later record is the one used
        f.write(json.dumps(record(segs[0], "NEWER")) + "\n")
    with caplog.at_level("WARNING"):
        inputs = load_inputs(GenerateConfig(workdir=workdir, split="val"))
    assert [r["text"] for r in inputs.records if r["narration_id"] == segs[0].narration_id] == ["NEWER"]
    assert len(inputs.records) == 12 and "1 narration ids appear more than once" in caplog.text


def test_a_merge_of_some_parts_only_is_refused_and_a_stale_one_warned_of(workdir, caplog):
    """`cat` of 2 of 3 parts (or before the last was done) went on with two thirds of the split, exit 0; a part run
    again after the merge (--retry-errors) was not taken in, without a word."""
    import os

    from leap_cli.common import merged_input

    desc = workdir / "descriptors"
    desc.mkdir()
    for i in range(3):
        (desc / f"val.shard{i}of3.jsonl").write_text("".join(f'{{"narration_id": "P01_11_{i}{k}"}}\n' for k in range(4)))
    merged = desc / "val.jsonl"
    merged.write_text((desc / "val.shard0of3.jsonl").read_text() + (desc / "val.shard1of3.jsonl").read_text())
    with pytest.raises(LeapError, match=r"val\.jsonl: lacks 4 records that its --shard parts of 3 beside it hold \(e\.g\. "
                                        r"P01_11_20\): it was merged before every part was done.*merge again once every "
                                        r"part is done: cat .*val\.shard\*of3\.jsonl > "):
        generate_programs(GenerateConfig(workdir=workdir, split="val"))
    with pytest.raises(LeapError, match=r"lacks 4 records"):  # a path given is checked as the default is
        generate_programs(GenerateConfig(workdir=workdir, split="val", descriptors=merged))
    # a part that ends without a newline: `cat` glued two records into one line; said so
    part0 = desc / "val.shard0of3.jsonl"
    kept = part0.read_text()
    part0.write_text(kept.rstrip("\n"))
    merged.write_text("".join((desc / f"val.shard{i}of3.jsonl").read_text() for i in range(3)))
    with pytest.raises(LeapError, match=r"val\.shard0of3\.jsonl ends without a newline, so `cat` joined its last "
                                        r"record to the next part's first \(end it with a newline \(echo >> .*val\.shard0of3\.jsonl\)"):
        merged_input(merged)
    # a part whose job was killed while writing its last record: a newline would make that a line of broken JSON
    part0.write_text(kept.rstrip("\n")[:-20])
    merged.write_text("".join((desc / f"val.shard{i}of3.jsonl").read_text() for i in range(3)))
    with pytest.raises(LeapError, match=r"val\.shard0of3\.jsonl ends in a record cut short .*\(run part 0/3 again with "
                                        r"the command that wrote it .*then merge again"):
        merged_input(merged)
    part0.write_text(kept)
    # a part holding a record twice (a run stopped while redoing it): the merge, rid of it later, has every id
    with (desc / "val.shard1of3.jsonl").open("a") as f:
        f.write('{"narration_id": "P01_11_10"}\n')
    merged.write_text("".join((desc / f"val.shard{i}of3.jsonl").read_text() for i in range(3) if i != 1)
                      + "".join(f'{{"narration_id": "P01_11_1{k}"}}\n' for k in range(4)))
    assert merged_input(merged) == merged
    merged.write_text("".join((desc / f"val.shard{i}of3.jsonl").read_text() for i in range(3)).rstrip("\n"))
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert merged_input(merged) == merged and not caplog.records  # complete (its last line has no newline)
        os.utime(desc / "val.shard2of3.jsonl", ns=(merged.stat().st_mtime_ns + 10**9,) * 2)
        (desc / "val.shard1of3.jsonl").unlink()
        merged_input(merged)
    assert "val.shard2of3.jsonl written after it" in caplog.text and "part 1 of --shard i/3 is not beside it" in caplog.text
    with merged.open("a") as f:  # an unsharded run on the merge added records since: more than the parts is fine
        f.write('\n{"narration_id": "P01_11_99"}\n')
    assert merged_input(merged) == merged


def test_a_run_without_shard_beside_the_parts_of_its_output_is_refused(workdir):
    """`generate-programs --split val` (or extract) without --shard, where the parts of a sharded run of it were
    not merged, did the whole split again (paid prompts included)."""
    from tests.test_cli import leap

    programs = workdir / "programs"
    programs.mkdir()
    (programs / "val.shard0of2.jsonl").write_text('{"narration_id": "P01_11_0"}\n')
    with pytest.raises(LeapError, match=r"val\.jsonl: not there, but parts of it from --shard runs are \(1 of 2\): "
                                        r"this run without --shard would do the whole split again.*cat .*"
                                        r"val\.shard\*of2\.jsonl > .*val\.jsonl.*--shard i/2.*--force"):
        generate_programs(GenerateConfig(workdir=workdir, split="val"))
    assert not (programs / "val.jsonl").exists()
    s = generate_programs(GenerateConfig(workdir=workdir, split="val", force=True))  # asked for: done whole
    assert len(read_jsonl(s.out)) == N_SEGMENTS
    (workdir / "descriptors").mkdir()
    (workdir / "descriptors" / "val.shard1of2.jsonl").write_text("")
    r = leap("extract", "--split", "val", "--workdir", str(workdir), "--components", "narration")
    assert r.returncode == 2 and "val.jsonl: not there, but parts of it from --shard runs are (1 of 2)" in r.stderr


def test_descriptors_merged_from_parts_of_other_settings_are_refused(workdir):
    """Parts extracted with other --components merged silently; the programs recorded the descriptors' settings
    as unknown."""
    from leap_cli.io import settings_path

    desc = workdir / "descriptors"
    desc.mkdir()
    for i, comps in enumerate((["narration", "camera"], ["narration"])):
        part = desc / f"val.shard{i}of2.jsonl"
        part.write_text(f'{{"narration_id": "P01_11_{i}", "video_id": "P01_11", "text": "x", "components": {{}}}}\n')
        settings_path(part).write_text(json.dumps({"components": comps, "split": "val"}))
    (desc / "val.jsonl").write_text("".join((desc / f"val.shard{i}of2.jsonl").read_text() for i in range(2)))
    with pytest.raises(LeapError, match=r"merged from --shard parts made with other settings: val\.shard1of2\.jsonl "
                                        r"against val\.shard0of2\.jsonl: components"):
        generate_programs(GenerateConfig(workdir=workdir, split="val"))


def test_validating_a_part_counts_the_coverage_of_that_part(workdir):
    """`validate-programs val.shard0of2.jsonl` gave the coverage over the whole split (50% for a complete part)."""
    from leap_cli.common import ShardSpec
    from tests.test_cli import leap

    ann = workdir / "kitchen" / "annotations"
    lines = (DATA / "EPIC_100_validation_excerpt.csv").read_text().splitlines()
    rows = [lines[0]] + [ln.replace("P01_11", "P01_12", 2) if i % 2 else ln for i, ln in enumerate(lines[1:13])]
    (ann / "EPIC_100_validation.csv").write_text("\n".join(rows) + "\n")
    s = generate_programs(GenerateConfig(workdir=workdir, split="val", shard=ShardSpec(0, 2)))
    n = len(read_jsonl(s.out))
    r = leap("validate-programs", str(s.out), "--workdir", str(workdir))
    assert r.returncode == 0, r.stderr
    report = json.loads(s.out.with_name("val.shard0of2.report.json").read_text())
    assert report["coverage"]["segments"] == n < 12 and report["coverage"]["fraction"] == 1.0
    assert "annotated segments of part(s) 0/2 of the split" in " ".join(r.stdout.split())


def test_a_part_begun_with_another_dealing_of_the_videos_is_refused(workdir):
    """Parts begun by leap before parts followed the annotation order hold other videos: resuming one with this
    leap redid some records (paid) and left others undone, silently."""
    from leap_cli.common import ShardSpec
    from leap_cli.epic.annotations import read_segments

    ann = workdir / "kitchen" / "annotations"
    lines = (DATA / "EPIC_100_validation_excerpt.csv").read_text().splitlines()
    rows = [lines[0]] + [ln.replace("P01_11", f"P01_1{1 + i % 3}", 2) for i, ln in enumerate(lines[1:13])]
    (ann / "EPIC_100_validation.csv").write_text("\n".join(rows) + "\n")
    segs = read_segments(ann / "EPIC_100_validation.csv")
    theirs = [s for s in segs if s.video_id == "P01_12"]  # video 1 of 3: part 1 now, part 0 as an old leap dealt it
    (workdir / "programs").mkdir()
    part = workdir / "programs" / "val.shard0of3.jsonl"
    part.write_text("".join(json.dumps({"narration_id": s.narration_id, "status": "failed", "program": None,
                                        "errors": []}) + "\n" for s in theirs))
    with pytest.raises(LeapError, match=r"holds 4 records of videos outside part 0/3 \(e\.g\. P01_12_.*merge the "
                                        r"parts there are \(cat .*val\.shard\*of3\.jsonl > .*val\.jsonl\)"):
        generate_programs(GenerateConfig(workdir=workdir, split="val", shard=ShardSpec(0, 3)))
    assert generate_programs(GenerateConfig(workdir=workdir, split="val", shard=ShardSpec(1, 3))).out.exists()


def test_the_model_that_served_a_reply_is_kept_beside_the_one_asked_for(workdir, good_programs, tmp_path):
    """Live records kept only the model asked for (the dated snapshot that answered was lost), Batch records only
    the served one."""
    def script(body, n):
        return Reply(raw=json.dumps(completion(json.dumps(good_programs[narration_id_of(body)]),
                                               model="test-model-2026-01-01")))

    with ScriptedServer(script) as server:
        generate_programs(config(workdir, server, limit=2))
        generate_programs(config(workdir, server, limit=2, out=workdir / "again.jsonl"))  # from the cache
    for recs in (records(workdir), read_jsonl(workdir / "again.jsonl")):
        assert [(r["provenance"]["model"], r["provenance"]["served_model"]) for r in recs] == \
            [("test-model", "test-model-2026-01-01")] * 2
    cfg = GenerateConfig(workdir=workdir, split="val", model="gpt-test", out=workdir / "batch.jsonl", limit=1)
    write_batch_file(cfg, tmp_path / "b.jsonl")
    nid = read_jsonl(tmp_path / "b.jsonl")[0]["custom_id"]
    line = {"custom_id": nid, "response": {"status_code": 200, "body": completion(
        json.dumps(good_programs[nid.partition("@")[0]]), model="gpt-test-2026-01-01")}}
    ingest_batch(cfg, results_file(tmp_path / "o.jsonl", [line]))
    (rec,) = read_jsonl(workdir / "batch.jsonl")
    assert (rec["provenance"]["model"], rec["provenance"]["served_model"]) == ("gpt-test", "gpt-test-2026-01-01")


def test_a_full_output_disk_keeps_the_paid_replies_and_their_spend(workdir, good_programs, monkeypatch):
    """The output's disk full (ENOSPC on a write of --out): the error ended the stage before the program cache
    was committed, so its paid replies were asked (and paid) again and --max-cost's ledger missed their spend."""
    import errno

    from leap_cli.io import JsonlAppender
    from leap_cli.programs.store import ProgramStore

    write = JsonlAppender.write
    calls = {"n": 0}

    def full(self, record):
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(self, record)

    monkeypatch.setattr(JsonlAppender, "write", full)
    script = lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))  # noqa: E731
    with ScriptedServer(script) as server:
        with pytest.raises(OSError, match="No space left"):
            generate_programs(config(workdir, server, concurrency=1))
        paid = len(server.requests)
        monkeypatch.setattr(JsonlAppender, "write", write)
        with ProgramStore(workdir / "programs" / "cache.sqlite") as store:
            assert store.spent(workdir / "programs" / "val.jsonl")["requests"] == paid >= 3
        s = generate_programs(config(workdir, server, concurrency=1))  # the space freed: the rest, none paid twice
        assert s.cache_hits >= 1 and len(server.requests) == N_SEGMENTS
    assert len(records(workdir)) == N_SEGMENTS


def test_descriptors_short_of_the_split_are_said_and_so_is_an_extract_still_writing_them(workdir, caplog):
    """generate-programs took a descriptors file an extract was still writing (or had stopped early) without a
    word, exited 0, and build-shards then packed the split with programs for part of it."""
    from leap_cli.epic.annotations import read_segments
    from leap_cli.io import OutputLock

    segs = read_segments(workdir / "kitchen" / "annotations" / "EPIC_100_validation.csv")
    path = workdir / "descriptors" / "val.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(narration_record(s)) + "\n" for s in segs[:3]))
    offline = GenerateConfig(workdir=workdir, split="val")
    with caplog.at_level("WARNING"):
        generate_programs(offline)
    assert (f"{path} holds 3 of the {N_SEGMENTS} segments of val: the other {N_SEGMENTS - 3} get no program in this "
            "run; finish extract (an extract stopped early: run it again), then this command again") in caplog.text
    caplog.clear()
    with OutputLock(path), caplog.at_level("WARNING"):  # as a running extract holds it
        generate_programs(offline)
    assert f"{path} is still being written by process {os.getpid()} on " in caplog.text
    assert "wait for extract to finish, then this command again" in caplog.text
    caplog.clear()
    path.write_text("".join(json.dumps(narration_record(s)) + "\n" for s in segs))
    with caplog.at_level("WARNING"):
        generate_programs(offline)
    assert "segments of val" not in caplog.text
    # a part of extract's given without --shard: said as such (QA: "finish extract (an extract stopped early)")
    part = path.with_name("val.shard0of2.jsonl")
    part.write_text("".join(json.dumps(narration_record(s)) + "\n" for s in segs[:3]))
    caplog.clear()
    with caplog.at_level("WARNING"):
        generate_programs(dataclasses.replace(offline, descriptors=part, out=workdir / "programs" / "part.jsonl"))
    assert "it is extract's part 0/2: pass --shard 0/2 (this part's programs, beside the other parts') or the merged " \
           "file, then this command again" in caplog.text, caplog.text
    from leap_cli.common import ShardSpec

    caplog.clear()  # given with its --shard, and short of the part's segments: an extract part stopped early (review)
    with caplog.at_level("WARNING"):
        generate_programs(dataclasses.replace(offline, descriptors=part, shard=ShardSpec(0, 2),
                                              out=workdir / "programs" / "part.jsonl"))
    assert "finish extract (an extract stopped early" in caplog.text and "pass --shard" not in caplog.text, caplog.text


def test_offline_programs_ask_nothing_of_an_object_it_cannot_be_or_do():
    """On real narrations the nearest exemplar was copied whatever it asked of the renamed objects: "put
    tablecloth into cupboard" got the toaster's lever and switched_on(cupboard), "wipe counter" took the counter
    in hand. Of EPIC's noun categories only appliances are switched on or off, and the fixed furniture (the
    counter, a cupboard, a sink) and hands are not held; such exemplars are passed over (the next, else a
    one-step program, whose purpose is the narration)."""
    from leap_cli.epic.annotations import read_segments
    from leap_cli.epic.classes import ClassVocab
    from leap_cli.programs.validate import check_program, Labels

    verbs = ClassVocab.from_csv(CLASSES / "EPIC_100_verb_classes.csv", "verb")
    nouns = ClassVocab.from_csv(CLASSES / "EPIC_100_noun_classes.csv", "noun")
    ex = load_exemplars()
    checked = switched = 0
    for s in read_segments(DATA / "EPIC_100_validation_excerpt.csv"):
        p = offline_program(clip_info(narration_record(s), s), ex, verbs, nouns)
        assert not check_program(p, verbs, nouns, Labels(s.verb_class, s.noun_class)), s.narration
        for sub in _sub_actions(p["steps"]):
            for c in sub["pre"] + sub["post"]:
                cid = nouns.resolve(c["args"][-1 if c["predicate"] == "holding" else 0])
                if c["predicate"] in ("switched_on", "switched_off") and not c["negated"]:
                    switched += 1
                    assert nouns.categories[cid] == "appliances", (s.narration, c)
                if c["predicate"] == "holding" and not c["negated"]:
                    # (offline-v5: nor a large appliance, "move things in the fridge" held the fridge)
                    assert nouns.keys[cid] not in ("top", "cupboard", "drawer", "sink", "shelf", "hand", "fridge",
                                                   "dishwasher", "oven", "hob", "freezer", "microwave"), (s.narration, c)
        checked += 1
    assert checked == 199 and switched > 10  # (the taps of "turn on tap" are still switched)


def test_a_purpose_written_anew_says_where_the_step_puts_its_object_and_a_blank_narration_is_none():
    """Purposes written from the step joined object B with "with" whatever its role ("lift the bowl with the
    top" for a bowl put on the counter); a narration of spaces was kept as the action's narration."""
    from leap_cli.epic.annotations import read_segments
    from leap_cli.epic.classes import ClassVocab
    from leap_cli.programs.offline import _preposition

    step = {"object_a": "plate", "object_b": "fridge", "post": [{"predicate": "in", "args": ["plate", "fridge"],
                                                                "negated": False}]}
    assert _preposition(step) == "into"
    assert _preposition({**step, "post": [{"predicate": "on", "args": ["plate", "fridge"], "negated": False}]}) == "onto"
    assert _preposition({**step, "post": [{"predicate": "in", "args": ["plate", "fridge"], "negated": True}]}) == "with"
    verbs = ClassVocab.from_csv(CLASSES / "EPIC_100_verb_classes.csv", "verb")
    nouns = ClassVocab.from_csv(CLASSES / "EPIC_100_noun_classes.csv", "noun")
    (seg,) = [s for s in read_segments(DATA / "EPIC_100_validation_excerpt.csv") if s.narration_id == "P01_11_146"]
    p = offline_program(clip_info(narration_record(seg), seg), load_exemplars(), verbs, nouns)
    assert "insert the plate into the fridge" in [s["purpose"] for s in _sub_actions(p["steps"])]
    blank = dataclasses.replace(seg, narration="   ")
    p = offline_program(clip_info(narration_record(blank), blank), load_exemplars(), verbs, nouns)
    assert p["action"]["narration"] == f"{verbs.keys[seg.verb_class]} {nouns.keys[seg.noun_class]}"


def test_the_narrations_nouns_take_their_roles_from_the_words_before_them():
    """Roles went by noun order: "move pasta from pan to tupperware" moved the pasta to the pan, "put plate and
    spoon in dishwasher" lowered the plate onto the spoon (QA on real narrations)."""
    from leap_cli.programs.offline import _by_role as order, _role_ranks

    def _by_role(narration, forms):
        return order(_role_ranks(narration, forms))

    assert _by_role("move pasta from pan to tupperware", ["pasta", "pan", "tupperware"]) == ["tupperware", "pasta", "pan"]
    assert _by_role("put plate and spoon in dishwasher", ["plate", "spoon", "dishwasher"]) == ["dishwasher", "plate", "spoon"]
    assert _by_role("move broccoli from chopping board to pan", ["broccoli", "board:chopping", "pan"]) == \
        ["pan", "broccoli", "board:chopping"]
    assert _by_role("wash plate", ["plate"]) == ["plate"] and _by_role(None, ["plate"]) == ["plate"]
    # where it comes from is what a pour holds and tilts, where it goes the pour's second object
    from leap_cli.epic.classes import ClassVocab

    verbs = ClassVocab.from_csv(CLASSES / "EPIC_100_verb_classes.csv", "verb")
    nouns = ClassVocab.from_csv(CLASSES / "EPIC_100_noun_classes.csv", "noun")
    from leap_cli.epic.annotations import read_segments

    seg = read_segments(DATA / "EPIC_100_validation_excerpt.csv")[0]
    pour = dataclasses.replace(seg, narration="pour olive oil and thyme from plate to dough", verb="pour",
                               noun="oil", verb_class=verbs.resolve("pour"), noun_class=nouns.resolve("oil"),
                               all_nouns=("oil", "thyme", "plate", "dough"))
    p = offline_program(clip_info(narration_record(pour), pour), load_exemplars(), verbs, nouns)
    steps = [(x["verb"], x["object_a"], x["object_b"]) for x in _sub_actions(p["steps"])]
    assert ("tilt", "plate", "dough") in steps and ("pour", "oil", "dough") in steps, steps


def test_a_resume_after_the_bundled_generator_changed_says_what_force_costs(workdir):
    """Programs made by an earlier leap's offline generator or exemplar library were refused on resume with "use
    the old settings", which a user cannot get back; --force remakes them at no cost (offline), or asks again only
    for the prompts the library changes (an LLM: the rest come from the program cache)."""
    from leap_cli.io import settings_path

    offline = GenerateConfig(workdir=workdir, split="val", limit=2)
    generate_programs(offline)
    sidecar = settings_path(offline.out_path)
    old = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**old, "model": "offline-v3", "exemplars": "0123456789abcdef"}))
    with pytest.raises(LeapError) as e:
        generate_programs(dataclasses.replace(offline, limit=3))
    assert "the offline generator: 'offline-v3' -> " in e.value.message  # (not --model, which it ignores)
    assert e.value.fix.startswith("the offline generator or its exemplar library changed (a newer leap, or "
                                  "--exemplars): --force makes the programs anew, at no cost")
    sidecar.write_text(json.dumps({**old, "repair_rounds": 9}))  # another setting of the user's: as before
    with pytest.raises(LeapError) as e:
        generate_programs(dataclasses.replace(offline, limit=3))
    assert "use the old settings" in e.value.fix


def test_limit_takes_the_split_order_whatever_the_descriptor_order(workdir):
    """extract with --workers 2 appends records as segments finish: --limit N took the file's first N, so the
    segments chosen depended on extract's worker count. The split's order decides."""
    from leap_cli.epic.annotations import read_segments

    segs = read_segments(workdir / "kitchen" / "annotations" / "EPIC_100_validation.csv")
    desc = workdir / "descriptors" / "val.jsonl"
    desc.parent.mkdir(parents=True)
    desc.write_text("".join(json.dumps(narration_record(s)) + "\n" for s in [segs[3], segs[0], segs[5], segs[1],
                                                                            segs[2], segs[4]]))
    generate_programs(GenerateConfig(workdir=workdir, split="val", backend="offline", limit=3))
    assert [r["narration_id"] for r in records(workdir)] == [s.narration_id for s in segs[:3]]


def test_a_program_of_a_clip_that_changed_since_is_made_again(workdir, good_programs, tmp_path):
    """Resume kept a program by its narration id alone: after extract made a record again from another version of
    the annotations (or the labels changed), the old clip's program was kept, and trained on."""
    script = lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))  # noqa: E731
    csv = workdir / "kitchen" / "annotations" / "EPIC_100_validation.csv"
    lines = csv.read_text().splitlines()
    nid, narration = lines[2].split(",")[0], lines[2].split(",")[8]
    with ScriptedServer(script) as server:
        cfg = config(workdir, server, data=workdir / "kitchen")
        generate_programs(cfg)
        before = {r["narration_id"]: r for r in records(workdir)}
        assert all(r["provenance"]["clip_hash"] for r in before.values())
        lines[2] = lines[2].replace(f",{narration},", f",{narration} again,", 1)  # the narration, fixed
        csv.write_text("\n".join(lines) + "\n")
        s = generate_programs(cfg)
        assert s.reclipped == 1 and s.total == 1 and s.resumed == N_SEGMENTS - 1 and len(server.requests) == \
            N_SEGMENTS + 1 and f"{narration} again" in json.dumps(server.requests[-1]["messages"])
        after = {r["narration_id"]: r for r in records(workdir)}
        assert len(records(workdir)) == N_SEGMENTS and after[nid]["provenance"]["clip_hash"] != \
            before[nid]["provenance"]["clip_hash"]
        assert all(after[k] == before[k] for k in before if k != nid)
        assert generate_programs(cfg).total == 0  # made once
        # the Batch API's requests: the segment whose clip changed is asked for again
        other = lines[3].split(",")[0]
        lines[3] = lines[3].replace(f",{lines[3].split(',')[8]},", f",{lines[3].split(',')[8]} too,", 1)
        csv.write_text("\n".join(lines) + "\n")
        batch = tmp_path / "batch.jsonl"
        assert write_batch_file(dataclasses.replace(cfg, backend="openai"), batch) == 1
        assert read_jsonl(batch)[0]["custom_id"].partition("@")[0] == other
    # a record of a leap that kept no clip hash is compared by its prompt (narration-only: made from the CSV as it is
    # now): the one whose narration changed since is asked for again, the others are taken as they are
    out = workdir / "programs" / "val.jsonl"
    recs = records(workdir)
    for r in recs:
        r["provenance"].pop("clip_hash")
    out.write_text("".join(json.dumps(r) + "\n" for r in recs))
    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, data=workdir / "kitchen"))
        assert s.reclipped == 1 and s.total == 1 and [narration_id_of(b) for b in server.requests] == [other]


def test_a_program_whose_descriptor_record_was_made_again_is_made_again(workdir):
    """The descriptor record's text is what changes when extract makes a record again (its labels may not)."""
    from leap_cli.epic.annotations import read_segments

    segs = read_segments(workdir / "kitchen" / "annotations" / "EPIC_100_validation.csv")
    desc = workdir / "descriptors" / "val.jsonl"
    desc.parent.mkdir(parents=True)
    recs = [{**narration_record(s), "text": f"Narration: {s.narration}. Audio: silence."} for s in segs]
    desc.write_text("".join(json.dumps(r) + "\n" for r in recs))
    cfg = GenerateConfig(workdir=workdir, split="val", data=workdir / "kitchen")
    assert generate_programs(cfg).total == N_SEGMENTS
    recs[1]["text"] = recs[1]["text"].replace("silence", "running water")  # extract made it again
    desc.write_text("".join(json.dumps(r) + "\n" for r in recs))
    s = generate_programs(cfg)
    assert s.reclipped == 1 and s.total == 1 and s.resumed == N_SEGMENTS - 1
    assert generate_programs(cfg).total == 0


def test_programs_of_an_earlier_leap_are_made_again_once_their_descriptor_record_is(workdir):
    """A program of a leap before clip hashes has none to compare: after extract made its descriptor record again
    (from a new version of the CSV) it was resumed, stale, without a word."""
    from leap_cli.epic.annotations import read_segments

    segs = read_segments(workdir / "kitchen" / "annotations" / "EPIC_100_validation.csv")
    desc = workdir / "descriptors" / "val.jsonl"
    desc.parent.mkdir(parents=True)
    recs = [{**narration_record(s), "text": f"Narration: {s.narration}."} for s in segs]  # (as a leap before wrote)
    desc.write_text("".join(json.dumps(r) + "\n" for r in recs))
    cfg = GenerateConfig(workdir=workdir, split="val", data=workdir / "kitchen")
    generate_programs(cfg)
    out = workdir / "programs" / "val.jsonl"
    old = records(workdir)
    for r in old:
        del r["provenance"]["clip_hash"]
    out.write_text("".join(json.dumps(r) + "\n" for r in old))
    assert generate_programs(cfg).total == 0  # resumed as they are
    recs[2] = {**recs[2], "annotation_hash": segs[2].annotation_hash, "start_frame": segs[2].start_frame,
               "stop_frame": segs[2].stop_frame}  # made again by extract since, the same clip (--retry-errors)
    desc.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert generate_programs(cfg).reclipped == 0  # its prompt is the one the program was asked with
    recs[2]["text"] += " Audio: running water."  # made again with a component that failed before
    desc.write_text("".join(json.dumps(r) + "\n" for r in recs))
    s = generate_programs(cfg)
    assert s.reclipped == 1 and s.total == 1 and "clip_hash" in records(workdir)[-1]["provenance"]


def _descriptors_as_extract_writes_them(workdir):
    """The split CSV and its segments, with WORKDIR/descriptors/val.jsonl holding a record of each as extract
    writes them (their annotation hash)."""
    from leap_cli.epic.annotations import read_segments

    csv = workdir / "kitchen" / "annotations" / "EPIC_100_validation.csv"
    segs = read_segments(csv)
    desc = workdir / "descriptors" / "val.jsonl"
    desc.parent.mkdir(parents=True)
    desc.write_text("".join(json.dumps({**narration_record(s), "text": "t", "annotation_hash": s.annotation_hash})
                            + "\n" for s in segs))
    return csv, segs


def test_descriptor_records_of_other_annotations_are_left_out_before_any_request(workdir, caplog):
    """Run before extract made them again, a changed clip was asked for from the old text with the new labels, and
    paid for once more after extract. The others go on; all of them is a refusal."""
    csv, segs = _descriptors_as_extract_writes_them(workdir)
    cfg = GenerateConfig(workdir=workdir, split="val", data=workdir / "kitchen", limit=1)
    generate_programs(cfg)
    lines = csv.read_text().splitlines()
    narration = lines[3].split(",")[8]
    csv.write_text("\n".join(lines[:3] + [lines[3].replace(f",{narration},", f",{narration} again,", 1)]
                             + lines[4:]) + "\n")
    s = generate_programs(dataclasses.replace(cfg, limit=None))
    assert s.total == N_SEGMENTS - 2 and segs[2].narration_id not in {r["narration_id"] for r in records(workdir)}
    assert (f"1 descriptor records were made from other annotations than EPIC_100_validation.csv holds now (e.g. "
            f"{segs[2].narration_id}: its narration or labels differs): left out of this run; run leap extract --split "
            "val") in caplog.text
    csv.write_text("\n".join([lines[0]] + [ln.replace(f",{ln.split(',')[8]},", f",{ln.split(',')[8]} too,", 1)
                                            for ln in lines[1:]]) + "\n")
    with pytest.raises(LeapError, match=rf"all {N_SEGMENTS} descriptor records were made from other annotations"):
        generate_programs(cfg)


def test_a_batch_result_asked_for_before_its_clip_changed_is_asked_for_again(workdir, good_programs, tmp_path):
    cfg = GenerateConfig(workdir=workdir, split="val", model="gpt-test", data=workdir / "kitchen")
    write_batch_file(cfg, tmp_path / "b1.jsonl")
    ids = [r["custom_id"] for r in read_jsonl(tmp_path / "b1.jsonl")]
    csv = workdir / "kitchen" / "annotations" / "EPIC_100_validation.csv"
    lines = csv.read_text().splitlines()
    narration = lines[1].split(",")[8]
    lines[1] = lines[1].replace(f",{narration},", f",{narration} again,", 1)  # changed while the batch ran
    csv.write_text("\n".join(lines) + "\n")
    ok = lambda cid: {"custom_id": cid, "response": {"status_code": 200,  # noqa: E731
                                                      "body": completion(json.dumps(good_programs[cid.split("@")[0]]))}}
    counts = ingest_batch(cfg, results_file(tmp_path / "o1.jsonl", [ok(c) for c in ids]))
    assert counts["asked_before_the_clip_changed"] == 1 and counts["valid"] == N_SEGMENTS
    again = read_jsonl(tmp_path / "b2.jsonl") if write_batch_file(cfg, tmp_path / "b2.jsonl") else []
    assert [r["custom_id"].partition("@")[0] for r in again] == [ids[0].partition("@")[0]]
    assert again[0]["custom_id"] != ids[0]  # the new clip's
    # both batches' results in one file: the new clip's (invalid) is written, not the old one's (valid)
    bad = {"custom_id": again[0]["custom_id"], "response": {"status_code": 200, "body": completion("not json")}}
    counts = ingest_batch(dataclasses.replace(cfg, retry_invalid=True),
                          results_file(tmp_path / "o2.jsonl", [ok(ids[0]), bad]))
    assert counts == {"invalid": 1, "superseded": 1}, counts
    counts = ingest_batch(dataclasses.replace(cfg, retry_invalid=True),
                          results_file(tmp_path / "o2.jsonl", [ok(again[0]["custom_id"])]))
    assert counts == {"valid": 1} and not write_batch_file(cfg, tmp_path / "b3.jsonl")
    # a batch file of a leap before (the narration id alone) is still read
    other = dataclasses.replace(cfg, out=workdir / "programs" / "other.jsonl")
    assert ingest_batch(other, results_file(tmp_path / "o3.jsonl", [ok(c.partition("@")[0]) for c in ids])) == \
        {"valid": N_SEGMENTS}


def test_batch_results_for_descriptor_records_of_other_annotations_say_to_extract_first(workdir, tmp_path):
    """The CSV changed while a batch ran: its results were refused as "not a segment of the input" (the records
    left out), with the advice to ingest with the same --split."""
    csv, segs = _descriptors_as_extract_writes_them(workdir)
    cfg = GenerateConfig(workdir=workdir, split="val", model="gpt-test", data=workdir / "kitchen")
    write_batch_file(cfg, tmp_path / "b.jsonl")
    ids = [r["custom_id"] for r in read_jsonl(tmp_path / "b.jsonl")]
    lines = csv.read_text().splitlines()
    narration = lines[1].split(",")[8]
    csv.write_text("\n".join([lines[0], lines[1].replace(f",{narration},", f",{narration} again,", 1)] + lines[2:])
                   + "\n")
    result = {"custom_id": ids[0], "response": {"status_code": 200, "body": completion("{}")}}
    with pytest.raises(LeapError, match=r"its descriptor record was made from other annotations .*run leap extract"):
        ingest_batch(cfg, results_file(tmp_path / "o.jsonl", [result]))


def test_a_narration_only_program_of_an_earlier_leap_is_made_again_when_its_prompt_changed(workdir):
    cfg = GenerateConfig(workdir=workdir, split="val", data=workdir / "kitchen")
    generate_programs(cfg)
    out = workdir / "programs" / "val.jsonl"
    old = records(workdir)
    for r in old:
        del r["provenance"]["clip_hash"]  # (as a leap before clip hashes wrote them)
    out.write_text("".join(json.dumps(r) + "\n" for r in old))
    assert generate_programs(cfg).total == 0
    csv = workdir / "kitchen" / "annotations" / "EPIC_100_validation.csv"
    lines = csv.read_text().splitlines()
    narration = lines[1].split(",")[8]
    csv.write_text("\n".join([lines[0], lines[1].replace(f",{narration},", f",{narration} again,", 1)] + lines[2:])
                   + "\n")
    s = generate_programs(cfg)
    assert s.reclipped == 1 and s.total == 1


def test_a_file_holding_a_record_twice_counts_its_last_line_in_batch_mode(workdir, good_programs, tmp_path):
    """A run killed before the rewrite that drops a redone record's old line leaves both lines; a live run keeps
    the last, but --batch-file asked again (paid) for a record remade since its clip changed, and --ingest replaced
    it, because the old line's clip was another. --dry-run showed no prompt of a clip that changed."""
    from leap_cli.programs.generate import dry_run

    script = lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))  # noqa: E731
    csv = workdir / "kitchen" / "annotations" / "EPIC_100_validation.csv"
    lines = csv.read_text().splitlines()
    nid, narration = lines[2].split(",")[0], lines[2].split(",")[8]
    out = workdir / "programs" / "val.jsonl"
    with ScriptedServer(script) as server:
        cfg = config(workdir, server, data=workdir / "kitchen")
        generate_programs(cfg)
        old = next(r for r in records(workdir) if r["narration_id"] == nid)
        lines[2] = lines[2].replace(f",{narration},", f",{narration} again,", 1)
        csv.write_text("\n".join(lines) + "\n")
        assert f"{narration} again" in dry_run(cfg)  # the prompt a run sends first (it showed none was left)
        assert generate_programs(cfg).reclipped == 1
    kept = out.read_text().splitlines()
    out.write_text(json.dumps(old) + "\n" + "\n".join(kept) + "\n")  # (the old line, as a kill leaves it)
    batch_cfg = dataclasses.replace(cfg, backend="openai")
    assert write_batch_file(batch_cfg, tmp_path / "b.jsonl") == 0
    new = next(r for r in read_jsonl(out) if r["narration_id"] == nid and r != old)
    ok = {"custom_id": f"{nid}@{new['provenance']['clip_hash']}",
          "response": {"status_code": 200, "body": completion(json.dumps(good_programs[nid]))}}
    assert ingest_batch(batch_cfg, results_file(tmp_path / "o.jsonl", [ok])) == {"already_present": 1}


def test_no_paid_request_is_sent_while_the_disk_is_nearly_full(workdir, good_programs, monkeypatch):
    """A rerun on the disk a run had filled sent its requests, then failed to write their replies (the cache's
    commit, the output): each rerun paid again for the same segments, and left the spend out of --max-cost's
    ledger. A run stops asking when the disk gets that full, and writes the replies in flight."""
    import shutil

    real = shutil.disk_usage
    low = [True]
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1 << 20) if low[0] else real(p))

    def script(body, n):
        if len(server.requests) == 2:  # the disk fills while the run goes on
            low[0] = True
        return Reply(json.dumps(good_programs[narration_id_of(body)]), delay=0.35)

    with ScriptedServer(script) as server:
        cfg = config(workdir, server, concurrency=1)
        with pytest.raises(LeapError, match=r"only 1\.0 MiB free on the disk holding this folder: no request was sent"):
            generate_programs(cfg)
        assert not server.requests
        low[0] = False
        with pytest.raises(LeapError, match="no more requests were sent .the programs so far are kept"):
            generate_programs(cfg)
        sent = len(server.requests)
        assert 2 <= sent < N_SEGMENTS and len(records(workdir)) == sent  # (each paid reply is written)
        low[0] = False
        assert generate_programs(cfg).total == N_SEGMENTS - sent and len(server.requests) == N_SEGMENTS
        low[0] = True  # a run its cache answers whole sends no request: it is not refused
        s = generate_programs(dataclasses.replace(cfg, out=workdir / "programs" / "copy.jsonl"))
        assert s.cache_hits == N_SEGMENTS and len(server.requests) == N_SEGMENTS
    # the offline backend pays nothing: it runs on
    low[0] = True
    s = generate_programs(GenerateConfig(workdir=workdir, split="val", out=workdir / "programs" / "offline.jsonl"))
    assert s.statuses["valid"] + s.statuses["invalid"] == N_SEGMENTS


def test_a_cache_that_cannot_be_made_leaves_no_settings_file_holding_the_output(workdir, good_programs, monkeypatch):
    # a new output whose cache.sqlite cannot be made (a full disk): the run fails before any record, and leaves no
    # settings file that a later run of other settings would take for a --batch-file's, held for its Batch results
    import leap_cli.programs.generate as generate
    from leap_cli.io import settings_path

    def no_room(*args, **kwargs):
        raise LeapError("cannot make the program cache: database or disk is full", path=args[0])

    script = lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))  # noqa: E731
    with ScriptedServer(script) as server:
        monkeypatch.setattr(generate, "ProgramStore", no_room)
        with pytest.raises(LeapError, match="disk is full"):
            generate_programs(config(workdir, server))
        out = workdir / "programs" / "val.jsonl"
        assert not settings_path(out).exists() and not (out.exists() and out.stat().st_size)
        monkeypatch.setattr(generate, "ProgramStore", ProgramStore)
        s = generate_programs(config(workdir, server, model="another-model"))  # (other settings: not refused)
        assert s.statuses["valid"] == N_SEGMENTS

