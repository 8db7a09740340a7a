"""An invalid Batch result never had the repair turn a live request gets (a Batch request asks none): it is marked
``provenance.repair_pending``, and a live ``--retry-errors`` run sends only that turn, the first reply read from the
cache (``--retry-invalid`` would pay for the first reply again)."""

import copy
import json

from leap_cli.io import read_jsonl
from leap_cli.programs.batch import ingest_batch, write_batch_file
from leap_cli.programs.generate import GenerateConfig, generate_programs, not_valid_kind
from tests.programs_llm_server import Reply, ScriptedServer, completion, narration_id_of
from tests.test_programs_generate import (N_SEGMENTS, batch_results, config, good_programs, records,  # noqa: F401
                                          results_file, workdir)


def _wrong(program: dict) -> dict:
    bad = copy.deepcopy(program)
    bad["steps"][0]["verb"] = "juggle-not-a-verb"
    return bad


def test_an_invalid_batch_result_gets_its_repair_turn_from_a_live_retry_errors(workdir, good_programs, tmp_path):
    cfg = GenerateConfig(workdir=workdir, split="val", model="gpt-test")
    assert write_batch_file(cfg, tmp_path / "batch.jsonl") == N_SEGMENTS
    first = {}

    def reply(i, nid):
        text = json.dumps(_wrong(good_programs[nid]) if i == 0 else good_programs[nid])
        first[nid] = text
        return {"response": {"status_code": 200, "body": completion(text)}}

    lines = batch_results(tmp_path / "batch.jsonl", reply)
    assert ingest_batch(cfg, results_file(tmp_path / "out.jsonl", lines)) == {"valid": N_SEGMENTS - 1, "invalid": 1}
    bad = [r for r in records(workdir) if r["status"] == "invalid"]
    assert len(bad) == 1 and bad[0]["provenance"]["repair_pending"] is True and not_valid_kind(bad[0]) == "repair"
    nid = bad[0]["narration_id"]

    script = lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))  # noqa: E731
    with ScriptedServer(script) as server:
        generate_programs(config(workdir, server, model="gpt-test", retry_failed=True))
        assert len(server.requests) == 1  # the repair turn only: the first reply is the cached Batch result's
        sent = server.requests[0]["messages"]
    assert sent[-2] == {"role": "assistant", "content": first[nid]} and sent[-1]["role"] == "user"
    now = {r["narration_id"]: r for r in read_jsonl(workdir / "programs" / "val.jsonl")}
    assert now[nid]["status"] == "valid" and now[nid]["provenance"]["rounds"] == 2


def test_a_batch_result_cut_at_the_token_limit_is_not_marked(workdir, good_programs, tmp_path):
    """A reply cut at the token limit gets no repair turn live either (the longer prompt would be cut the same)."""
    cfg = GenerateConfig(workdir=workdir, split="val", model="gpt-test")
    write_batch_file(cfg, tmp_path / "batch.jsonl")

    def reply(i, nid):
        body = completion(json.dumps(good_programs[nid])[:40] if i == 0 else json.dumps(good_programs[nid]))
        if i == 0:
            body["choices"][0]["finish_reason"] = "length"
        return {"response": {"status_code": 200, "body": body}}

    ingest_batch(cfg, results_file(tmp_path / "out.jsonl", batch_results(tmp_path / "batch.jsonl", reply)))
    bad = [r for r in records(workdir) if r["status"] == "invalid"]
    assert len(bad) == 1 and "repair_pending" not in bad[0]["provenance"] and not_valid_kind(bad[0]) == "invalid"
