"""Mutation run (s69) over the paid path of ``leap generate-programs``: ``programs/backends.py`` (retries, backoff,
holds), ``programs/http.py``, ``programs/batch.py`` (Batch API requests and their ledger) and
``programs/estimate.py`` (--dry-run's costs). Each test kills a mutant the suite let live."""

import asyncio
import json

import pytest

from leap_cli.programs.backends import BackendError, OpenAIBackend, Request, RetryPolicy
from leap_cli.programs.estimate import CostEstimate, RepairTurns
from tests.programs_llm_server import Reply, ScriptedServer


def _estimate(**kw):
    def price(usage):  # USD per token: 1 prompt, 0.25 cached, 2 reply
        cached = usage["cached_tokens"]
        return (usage["prompt_tokens"] - cached) * 1.0 + cached * 0.25 + usage["completion_tokens"] * 2.0

    return CostEstimate(**{**dict(split="val", pending=10, answered=4, prompt_tokens=2000.0, prefix_tokens=1024,
                                  reply_tokens=100.0, reply_from="the exemplar programs' mean", max_tokens=1000,
                                  price=price, prices="test prices"), **kw})


def test_measured_repair_turns_read_their_prefix_from_the_cache_in_the_cached_figure():
    """The "with the prefix cached" total of a run whose repair rate is measured counts its repair turns' static
    prefix as cached too, as it does the first requests' (mutant: the repair turns at the uncached price there)."""
    est = _estimate(repairs=RepairTurns(2, 0.5, "1 repair turn to the 2 first replies paid for its records", 300.0,
                                        120.0))
    live, cached = est.repair_cost(), est.repair_cost(cached_prefix=True)
    assert 0 < cached < live
    text = "\n".join(est.lines())
    assert f"~{est.cost(cached_prefix=True) + cached:,.2f} with the prefix cached" in text
    assert f"~{est.cost() + live:,.2f} USD live (~{live:,.2f} of it repair turns)" in text


# ---- batch ---------------------------------------------------------------------------------------------------------

from leap_cli.programs.batch import ingest_batch, write_batch_file  # noqa: E402
from leap_cli.programs.generate import GenerateConfig  # noqa: E402
from tests.programs_llm_server import completion  # noqa: E402
from tests.test_programs_generate import (N_SEGMENTS, batch_results, good_programs, records,  # noqa: E402,F401
                                          results_file, workdir)


def test_a_valid_batch_result_is_not_marked_as_waiting_for_a_repair_turn(workdir, good_programs, tmp_path):
    """Only a result that failed validation waits for the repair turn a live run would have asked
    (``repair_pending``); a valid one is done (mutant: every reply of a run with --repair-rounds was marked)."""
    cfg = GenerateConfig(workdir=workdir, split="val", model="gpt-test", repair_rounds=2)
    assert write_batch_file(cfg, tmp_path / "batch.jsonl") == N_SEGMENTS

    def reply(i, nid):
        program = json.loads(json.dumps(good_programs[nid]))
        if i == 0:
            program["steps"][0]["verb"] = "juggle-not-a-verb"
        return {"response": {"status_code": 200, "body": completion(json.dumps(program))}}

    lines = batch_results(tmp_path / "batch.jsonl", reply)
    assert ingest_batch(cfg, results_file(tmp_path / "out.jsonl", lines)) == {"valid": N_SEGMENTS - 1, "invalid": 1}
    marked = {r["status"]: r["provenance"].get("repair_pending") for r in records(workdir)}
    assert marked == {"valid": None, "invalid": True}


def test_a_batch_generation_broken_off_with_no_reply_tokens_is_still_in_the_ledger(workdir, good_programs, tmp_path):
    """A Batch result the server broke off (finish_reason "error") before its first reply token bills its prompt all
    the same: it is in the --max-cost ledger with the others (mutant: a result was counted only where it had reply
    tokens)."""
    cfg = GenerateConfig(workdir=workdir, split="val", model="gpt-test", price_in=2.0, price_out=8.0)
    write_batch_file(cfg, tmp_path / "batch.jsonl")

    def reply(i, nid):
        body = completion(json.dumps(good_programs[nid]), completion_tokens=0 if i == 0 else 200)
        if i == 0:
            body["choices"][0]["finish_reason"] = "error"
        return {"response": {"status_code": 200, "body": body}}

    spent = {}
    counts = ingest_batch(cfg, results_file(tmp_path / "out.jsonl", batch_results(tmp_path / "batch.jsonl", reply)),
                          spent=spent)
    assert counts == {"valid": N_SEGMENTS - 1, "failed": 1}
    usages = [{"prompt_tokens": 1000, "completion_tokens": 0}] + [{"prompt_tokens": 1000, "completion_tokens": 200}] * (
        N_SEGMENTS - 1)
    assert spent["requests"] == N_SEGMENTS
    assert spent["cost"] == pytest.approx(sum(cfg.cost(u) for u in usages) / 2)
