"""The Batch API path's request files and result ingest (leap_cli/programs/batch.py), where a mistake is silent:
a request file the Batch API refuses or answers differently, a downloaded result file overwritten, an errored
result kept as a program, a record made from the cache beside the one it replaces."""

import dataclasses
import json
from collections import Counter

import pytest

from leap_cli.errors import LeapError
from leap_cli.io import read_jsonl
from leap_cli.programs.batch import BatchPart, ingest_batch, write_batch_file
from leap_cli.programs.generate import GenerateConfig, generate_programs
from tests.programs_llm_server import Reply, ScriptedServer, completion, narration_id_of
from tests.test_programs_generate import (N_SEGMENTS, batch_results, config, good_programs, records,  # noqa: F401
                                          results_file, workdir)


def test_each_request_line_is_the_shape_the_batch_api_takes(workdir, tmp_path):
    """Every line is {custom_id, method: POST, url, body}, and the body asks for the strict schema as a live request
    does: a line the Batch API refuses fails the whole batch a day later, and one without the schema is answered
    with free text, paid and invalid."""
    cfg = GenerateConfig(workdir=workdir, split="val", model="gpt-test")
    batch = tmp_path / "batch.jsonl"
    assert write_batch_file(cfg, batch) == N_SEGMENTS
    for line in read_jsonl(batch):
        assert set(line) == {"custom_id", "method", "url", "body"}, line.keys()
        assert line["method"] == "POST" and line["url"] == "/v1/chat/completions"
        fmt = line["body"]["response_format"]
        assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True, fmt
        assert fmt["json_schema"]["name"] == "action_program" and fmt["json_schema"]["schema"]


def test_extra_body_fields_go_into_every_request_body(workdir, tmp_path):
    """--extra-body is part of the settings the ingest checks the results against and caches them under: a
    request body without it was answered with the model's defaults (another reasoning effort) and cached as if
    it were the asked one's."""
    cfg = GenerateConfig(workdir=workdir, split="val", model="gpt-test", extra_body={"reasoning_effort": "low"})
    batch = tmp_path / "batch.jsonl"
    assert write_batch_file(cfg, batch) == N_SEGMENTS
    assert all(line["body"].get("reasoning_effort") == "low" for line in read_jsonl(batch))


def test_split_files_stay_under_batch_max_mb_read_as_10_6_bytes(workdir, tmp_path):
    """--batch-max-mb is MB of 10^6 bytes (the smaller reading of the Batch API's 200 MB): read as MiB, a file
    could be up to 4.9% over the limit and be refused."""
    cfg = GenerateConfig(workdir=workdir, split="val", model="gpt-test")
    whole = tmp_path / "whole.jsonl"
    assert write_batch_file(cfg, whole) == N_SEGMENTS
    lines = whole.read_bytes().splitlines(keepends=True)
    three = sum(map(len, lines[:3]))
    max_mb = three / 1_040_000  # three lines fit in as many MiB, not in as many MB
    assert sum(map(len, lines[:2])) <= max_mb * 1e6 < three <= max_mb * 1_048_576
    parts: list[BatchPart] = []
    assert write_batch_file(cfg, tmp_path / "batch.jsonl", parts=parts, max_mb=max_mb) == N_SEGMENTS
    files = [p for p in parts if not p.removed]
    assert all(p.bytes <= max_mb * 1e6 for p in files), files
    assert b"".join(p.path.read_bytes() for p in files) == b"".join(lines)


def test_a_downloaded_result_file_is_never_taken_for_a_request_file(workdir, good_programs, tmp_path):
    """A Batch output file (custom_id and response, no body) holds paid results: a --batch-file to its name, or
    one whose earlier parts it seems to be, must refuse or leave it, not overwrite or remove it."""
    cfg = GenerateConfig(workdir=workdir, split="val", model="gpt-test")
    batch = tmp_path / "batch.jsonl"
    assert write_batch_file(cfg, batch) == N_SEGMENTS
    lines = batch_results(batch, lambda i, nid: {"response": {
        "status_code": 200, "body": completion(json.dumps(good_programs[nid]))}})
    text = "".join(json.dumps(x) + "\n" for x in lines)
    results = tmp_path / "results.jsonl"
    results.write_text(text)
    with pytest.raises(LeapError, match="not Batch requests"):
        write_batch_file(cfg, results)
    assert results.read_text() == text
    beside = tmp_path / "batch-1-of-2.jsonl"  # (a name an earlier split --batch-file to batch.jsonl wrote)
    beside.write_text(text)
    assert write_batch_file(cfg, batch) == N_SEGMENTS
    assert beside.read_text() == text
    assert ingest_batch(cfg, results) == {"valid": N_SEGMENTS}


def test_a_result_line_with_an_error_is_failed_even_with_a_200_response(workdir, good_programs, tmp_path):
    """A result line that carries an error is a failed request whatever its response says: taken as valid, it was
    counted done and never asked for again (and no cache entry was made of it, as of a failure)."""
    cfg = GenerateConfig(workdir=workdir, split="val", model="gpt-test")
    batch = tmp_path / "batch.jsonl"
    assert write_batch_file(cfg, batch) == N_SEGMENTS
    lines = batch_results(batch, lambda i, nid: {"response": {
        "status_code": 200, "body": completion(json.dumps(good_programs[nid]))}, "error": None})
    lines[0]["error"] = {"code": "server_error", "message": "the request failed part way"}
    assert ingest_batch(cfg, results_file(tmp_path / "r.jsonl", lines)) == {"valid": N_SEGMENTS - 1, "failed": 1}
    rec = {r["narration_id"]: r for r in records(workdir)}[lines[0]["custom_id"].partition("@")[0]]
    assert rec["status"] == "failed" and "the request failed part way" in rec["errors"][0]["message"]
    assert write_batch_file(dataclasses.replace(cfg, retry_failed=True), tmp_path / "b2.jsonl") == 1


def test_a_record_made_from_the_cache_replaces_the_record_it_answers(workdir, good_programs, tmp_path):
    """--batch-file --retry-errors answers a failed segment from the program cache: the record made replaces the
    failed one, not a second line beside it (the output held two records of one segment, a failed and a valid)."""
    with ScriptedServer(lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))) as server:
        cfg = config(workdir, server)
        assert generate_programs(cfg).statuses["valid"] == N_SEGMENTS
    recs = records(workdir)
    nid = recs[0]["narration_id"]
    recs[0] = {**recs[0], "status": "failed", "program": None,
               "errors": [{"pointer": "", "message": "HTTP 500 (a failure of an earlier run)"}]}
    cfg.out_path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    stats = Counter()
    assert write_batch_file(dataclasses.replace(cfg, retry_failed=True), tmp_path / "b.jsonl", stats) == 0
    assert stats["cached_valid"] == 1
    ids = [r["narration_id"] for r in records(workdir)]
    assert sorted(ids) == sorted(good_programs), ids
    assert {r["narration_id"]: r for r in records(workdir)}[nid]["status"] == "valid"


@pytest.mark.parametrize("fmt, sent", [("none", None), ("json_object", {"type": "json_object"})])
def test_the_response_format_asked_is_the_one_in_the_bodies(workdir, tmp_path, fmt, sent):
    """--response-format none/json_object (a provider without Structured Outputs): a body asking for another format
    is refused by that provider, or answered in a format the ingest's settings (and cache key) do not say."""
    cfg = GenerateConfig(workdir=workdir, split="val", model="gpt-test", response_format=fmt)
    batch = tmp_path / "batch.jsonl"
    assert write_batch_file(cfg, batch) == N_SEGMENTS
    assert all(line["body"].get("response_format") == sent for line in read_jsonl(batch))


def test_a_valid_retry_reply_replaces_the_invalid_one_in_the_cache(workdir, good_programs, tmp_path):
    """An ingested invalid reply is cached; the valid reply of its --retry-invalid batch must replace it there: left
    invalid, every later --batch-file --retry-invalid over those segments (the output lost, another --out) asks
    for it again, paid again."""
    cfg = GenerateConfig(workdir=workdir, split="val", model="gpt-test")
    batch = tmp_path / "batch.jsonl"
    assert write_batch_file(cfg, batch) == N_SEGMENTS
    lines = batch_results(batch, lambda i, nid: {"response": {
        "status_code": 200, "body": completion(json.dumps(good_programs[nid]) if i else "not json")}})
    assert ingest_batch(cfg, results_file(tmp_path / "r1.jsonl", lines)) == {"valid": N_SEGMENTS - 1, "invalid": 1}
    retry_cfg = dataclasses.replace(cfg, retry_invalid=True)
    assert write_batch_file(retry_cfg, tmp_path / "retry.jsonl") == 1
    retry = [{**x, "id": "retry_0"} for x in batch_results(tmp_path / "retry.jsonl", lambda i, nid: {"response": {
        "status_code": 200, "body": completion(json.dumps(good_programs[nid]))}})]
    assert ingest_batch(retry_cfg, results_file(tmp_path / "r2.jsonl", retry)) == {"valid": 1}
    stats = Counter()
    other = dataclasses.replace(retry_cfg, out=tmp_path / "other.jsonl")
    assert write_batch_file(other, tmp_path / "again.jsonl", stats) == 0
    assert stats["cached_valid"] == N_SEGMENTS, stats


def test_a_failed_result_that_was_billed_is_in_the_ledger(workdir, good_programs, tmp_path):
    """A 200 result without a completion (no choices) that reports usage was billed: it is a failed record, and its
    cost goes into the ledger (--max-cost's) like any other paid result, not left out because it failed."""
    cfg = GenerateConfig(workdir=workdir, split="val", model="gpt-test", price_in=1.0, price_out=2.0)
    batch = tmp_path / "batch.jsonl"
    assert write_batch_file(cfg, batch) == N_SEGMENTS

    def reply(i, nid):
        body = completion(json.dumps(good_programs[nid]), prompt_tokens=1000, completion_tokens=200)
        if i == 0:
            body["choices"] = []
        return {"response": {"status_code": 200, "body": body}}

    spent = {}
    assert ingest_batch(cfg, results_file(tmp_path / "r.jsonl", batch_results(batch, reply)), spent=spent) == {
        "valid": N_SEGMENTS - 1, "failed": 1}
    assert spent["requests"] == N_SEGMENTS, spent
    assert spent["cost"] == pytest.approx(N_SEGMENTS * (1000 * 1.0 + 200 * 2.0) / 1e6 / 2)
