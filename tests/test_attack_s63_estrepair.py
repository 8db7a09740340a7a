"""`leap generate-programs --dry-run`'s estimate counts repair turns (``programs.estimate.RepairTurns``): at the
rate measured on the paid turns of the program cache's call log (its ``round`` column), this output's records
first, else the model's in the cache; with nothing paid yet it counts none and states the most they cost (every
reply needing its --repair-rounds turns); with --repair-rounds 0 there are none. Before, the estimate counted no
repair turn and said only that they "come on top"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from leap_cli.programs.estimate import CostEstimate, FRAMING, measured_repairs
from leap_cli.programs.generate import TYPICAL_FINDING, estimate_cost, generate_programs, repair_message
from leap_cli.programs.estimate import text_tokens
from leap_cli.programs.store import ProgramStore
from tests.program_helpers import server_config as config
from tests.programs_llm_server import Reply, ScriptedServer, completion, narration_id_of
from tests.test_programs_estimate import offline_config as _offline_config
from tests.test_programs_generate import N_SEGMENTS, good_programs, workdir  # noqa: F401 (the fixtures)

REPO = Path(__file__).resolve().parents[1]


def offline_config(workdir, **kw):
    """The estimate's settings (no server, no key) at prices that give figures of dollars, not of cents."""
    return _offline_config(workdir, **{"price_in": 1000.0, "price_out": 2000.0, **kw})


def _script(good_programs, bad: set[str]):  # noqa: F811
    """The first reply of the segments in ``bad`` fails validation (a verb no class has), its repair is valid;
    first turns report 1,000 prompt and 200 completion tokens, repair turns 1,500 and 300."""
    def reply(body, n):
        nid = narration_id_of(body)
        program = json.loads(json.dumps(good_programs[nid]))
        repair = n > 0
        if nid in bad and not repair:
            program["steps"][0]["verb"] = "teleport"
        usage = dict(prompt_tokens=1500, completion_tokens=300) if repair else {}
        return Reply(raw=json.dumps(completion(json.dumps(program), body.get("model", "m"), **usage)))
    return reply


def _paid_run(workdir, good_programs, n_bad=2, limit=4):  # noqa: F811
    ids = sorted(good_programs)
    with ScriptedServer(_script(good_programs, set(ids[:n_bad]))) as server:
        result = generate_programs(config(workdir, server, limit=limit))
        assert result.statuses == {"valid": limit}
        return server


def test_the_rate_and_sizes_are_those_of_this_outputs_paid_turns(workdir, good_programs):  # noqa: F811
    server = _paid_run(workdir, good_programs)
    assert len(server.requests) == 6  # 4 first turns, 2 repair turns
    est = estimate_cost(offline_config(workdir))
    # the figures the estimate had keep their values: the first requests' reply is the mean of all paid replies
    assert (est.pending, est.asked, est.reply_from) == (2, 2, "the mean of the 6 replies this output has paid for")
    assert est.reply_tokens == pytest.approx((4 * 200 + 2 * 300) / 6)
    first = offline_config(workdir).cost({"prompt_tokens": est.prompt_tokens, "completion_tokens": est.reply_tokens})
    assert est.cost() == pytest.approx(2 * first)
    r = est.repairs
    assert r.rate == pytest.approx(0.5) and r.source == "2 repair turns to the 4 first replies paid for this output's records"
    assert r.extra_prompt == pytest.approx(500) and r.reply_tokens == pytest.approx(300)  # 1,500 - 1,000; the repairs'
    assert est.repair_requests == pytest.approx(0.5 * (N_SEGMENTS - 4))
    one = offline_config(workdir).cost({"prompt_tokens": est.prompt_tokens + 500, "completion_tokens": 300})
    assert est.repair_cost() == pytest.approx(one * est.repair_requests) and est.repair_cost() > 0
    text = "\n".join(est.lines())
    assert "repair turns: ~0.500 per request (2 repair turns to the 4 first replies paid for this output's records; " \
           "--repair-rounds 1): ~1 more requests" in text
    assert f"~{est.cost() + est.repair_cost():,.2f} USD live (~{est.repair_cost():,.2f} of it repair turns)" in text
    assert f"~{est.cost() / 2 + est.repair_cost():,.2f} through --batch-file" in text
    assert "come on top" not in text and "count no repair" not in text
    # --limit counts the repairs of the requests it leaves
    assert estimate_cost(offline_config(workdir, limit=1)).repair_requests == pytest.approx(0.5)
    # the run then sends what was estimated, where its replies fail as often (1 of the 2 left)
    with ScriptedServer(_script(good_programs, {sorted(good_programs)[4]})) as server:
        assert generate_programs(config(workdir, server)).statuses == {"valid": 2}
    assert len(server.requests) == est.asked + est.repair_requests == 3


def test_without_this_outputs_turns_the_models_in_the_cache_are_measured(workdir, good_programs):  # noqa: F811
    _paid_run(workdir, good_programs, n_bad=1)
    other = workdir / "programs" / "other.jsonl"  # another output on the same cache and model: its paid turns
    est = estimate_cost(offline_config(workdir, out=other))
    assert est.repairs.rate == pytest.approx(0.25) and (est.answered, est.asked) == (4, N_SEGMENTS - 4)
    assert est.repairs.source == "1 repair turn to the 4 first replies paid for test-model in the program cache"
    assert est.repair_requests == pytest.approx(0.25 * (N_SEGMENTS - 4))
    assert "~0.5 more requests" in "\n".join(est.lines())
    # another model has paid nothing: no rate is made up, the most is said
    assert estimate_cost(offline_config(workdir, out=other, model="another-model")).repairs.rate is None
    # --repair-rounds 2: the measured rate counts turns 1 and 2 (none of turn 2 was needed here)
    assert estimate_cost(offline_config(workdir, out=other, repair_rounds=2)).repairs.rate == pytest.approx(0.25)


def test_a_fresh_output_counts_none_and_states_the_most(workdir):  # noqa: F811
    est = estimate_cost(offline_config(workdir))
    none = estimate_cost(offline_config(workdir, repair_rounds=0))
    assert est.repairs.rate is None and est.cost() == none.cost()
    lines = est.lines()
    cost_line = [ln for ln in lines if ln.startswith("  cost at")]
    today = (f"  cost at {est.prices}: ~{none.cost():,.2f} USD live, ~{none.cost(cached_prefix=True):,.2f} with the "
             f"prefix cached, ~{none.cost() / 2:,.2f} through --batch-file (half price)")  # (the line before)
    assert none.cost() > 10 and len(cost_line) == 1 and cost_line[0].startswith(
        today + ", counting no repair turn: nothing is paid yet to measure how many replies fail validation; at most ")
    findings = text_tokens(repair_message([TYPICAL_FINDING]))
    assert est.repairs.extra_prompt == pytest.approx(est.reply_tokens + findings + FRAMING)
    assert est.repair_requests == N_SEGMENTS
    bound = lines[-1]
    assert bound.startswith(f"  repair turns: if every reply needed its 1 (--repair-rounds), {N_SEGMENTS} more "
                            f"requests, prompt ~{est.prompt_tokens + est.repairs.extra_prompt:,.0f} tokens")
    assert f"at most ~{est.repair_cost():,.2f} USD more live" in bound
    one = offline_config(workdir).cost({"prompt_tokens": est.prompt_tokens + est.repairs.extra_prompt,
                                        "completion_tokens": est.reply_tokens})
    assert est.repair_cost() == pytest.approx(one * N_SEGMENTS)
    # two rounds: twice the turns, the second re-sending two replies and their findings
    two = estimate_cost(offline_config(workdir, repair_rounds=2))
    assert two.repair_requests == 2 * N_SEGMENTS
    assert two.repairs.extra_prompt == pytest.approx(1.5 * (est.reply_tokens + findings + FRAMING))
    assert "if every reply needed its 2 (--repair-rounds), 12 more requests" in two.lines()[-1]


def test_repair_rounds_0_counts_no_repair_turn(workdir, good_programs):  # noqa: F811
    _paid_run(workdir, good_programs)  # (the cache holds paid repair turns; another --out: no refusal to word it)
    est = estimate_cost(offline_config(workdir, repair_rounds=0, out=workdir / "programs" / "other.jsonl"))
    assert est.asked and est.repairs is None and est.repair_requests == 0 and est.repair_cost() == 0
    assert not any("repair" in ln for ln in est.lines())
    assert est.lines()[-1].endswith(f"at most {est.cost(reply_tokens=est.max_tokens):,.2f} live if every reply ran to "
                                    "--max-tokens")


def test_a_store_with_no_prompt_tokens_adds_up_the_replies_and_findings(tmp_path):
    """Turns logged through the store's API (an endpoint that counts no prompt tokens): the repair prompt is the
    first prompt, the first reply and its findings, per round; turns past --repair-rounds are not counted, nor
    cache hits and failed requests (the reply before a failed one still asks its repair turn)."""
    with ProgramStore(tmp_path / "cache.sqlite") as store:
        def log(nid, rnd, completion_tokens, error=None, cached=False, response="{}"):
            store.log_call(narration_id=nid, backend="openai", model="m", prompt_hash="h", cache_key=f"{nid}{rnd}",
                           round=rnd, response=response, usage={"completion_tokens": completion_tokens}, latency=0.1,
                           attempts=1, cached=cached, outcome="invalid" if error else "valid", error=error)

        for i in range(4):
            log(f"a{i}", 0, 100, error="x" * 400 if i < 2 else None)
        log("a0", 1, 150, error="y" * 400)
        log("a0", 2, 150)
        log("a1", 1, 0, response=None)  # a failed request
        log("a2", 0, 100, cached=True)  # a cache hit
        log("other", 0, 100)
        rows = store.paid_turns("openai", "m", 1)
    assert sorted((r[0], r[1]) for r in rows) == [("a0", 0), ("a0", 1), ("a1", 0), ("a2", 0), ("a3", 0),
                                                  ("other", 0)]
    r = measured_repairs([t for t in rows if t[0] != "other"], 1, 20, "its records")
    # (a1's first reply asked a repair turn too: its request failed, and --retry-errors sends it again)
    assert r.rate == pytest.approx(0.5) and r.reply_tokens == 150
    assert r.extra_prompt == pytest.approx(100 + 20 + 100 + FRAMING)  # the first reply, the frame, 400 chars / 4
    assert measured_repairs([("a", 1, 0, 0, None)], 1, 20, "x") is None  # no first reply paid: no rate


def test_the_estimate_without_repairs_says_nothing_of_them():
    est = CostEstimate("val", 10, 4, 2000.0, 1024, 100.0, "the exemplar programs' mean", 1000,
                       lambda u: u["prompt_tokens"] + 2 * u["completion_tokens"], "test prices")
    assert est.repair_requests == 0 and not any("repair" in ln for ln in est.lines())


def test_dry_run_prints_the_measured_repair_turns(workdir, good_programs):  # noqa: F811
    _paid_run(workdir, good_programs)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1", "COLUMNS": "300"}
    cmd = [sys.executable, "-m", "leap_cli", "generate-programs", "--workdir", str(workdir), "--split", "val",
           "--backend", "openai", "--model", "test-model", "--api-key-env", "LEAP_NO_SUCH_KEY", "--dry-run"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    said = " ".join(r.stderr.split())
    assert "repair turns: ~0.500 per request (2 repair turns to the 4 first replies paid for this output's " \
           "records; --repair-rounds 1): ~1 more requests, prompt ~" in said
    assert "of it repair turns" in said
