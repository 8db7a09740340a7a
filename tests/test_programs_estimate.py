"""`leap generate-programs --dry-run` with an LLM: what the run would ask for and cost, said before it is paid
(``programs.estimate``), read from the input, the output and the program cache without writing anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from leap_cli.programs.estimate import cacheable, chat_tokens, text_tokens
from leap_cli.programs.generate import estimate_cost, generate_programs
from tests.program_helpers import server_config as config
from tests.programs_llm_server import Reply, ScriptedServer, narration_id_of
from tests.test_programs_generate import N_SEGMENTS, good_programs, records, workdir  # noqa: F401 (the fixtures)

REPO = Path(__file__).resolve().parents[1]


def offline_config(workdir, **kw):
    """The estimate's settings: an LLM that is never reached (no server, no key)."""
    from leap_cli.programs.generate import GenerateConfig

    return GenerateConfig(**{**dict(workdir=workdir, split="val", backend="openai", model="test-model",
                                    base_url="http://127.0.0.1:9/v1", api_key_env="LEAP_NO_SUCH_KEY",
                                    price_in=1.0, price_out=2.0), **kw})


def test_token_rules():
    assert text_tokens("") == 1 and text_tokens("abcdefgh") == 2
    assert chat_tokens([{"role": "user", "content": "abcdefgh"}]) == 2 + 3 + 3
    assert [cacheable(t) for t in (1023, 1024, 1151, 1152, 5000)] == [0, 1024, 1024, 1152, 4992]


def test_a_fresh_output_is_every_segment_at_the_exemplars_reply_size(workdir):
    est = estimate_cost(offline_config(workdir))
    assert (est.pending, est.answered, est.asked) == (N_SEGMENTS, 0, N_SEGMENTS)
    assert est.prompt_tokens > 500 and est.reply_from == "the exemplar programs' mean" and est.reply_tokens > 50
    # the cost is the run's own pricing (GenerateConfig.cost) per request, times the requests
    cfg = offline_config(workdir)
    one = cfg.cost({"prompt_tokens": est.prompt_tokens, "completion_tokens": est.reply_tokens})
    assert est.cost() == pytest.approx(one * N_SEGMENTS)
    assert est.cost(reply_tokens=est.max_tokens) > est.cost()
    assert not (workdir / "programs").exists()  # nothing written, no key needed
    assert estimate_cost(offline_config(workdir, limit=2)).pending == 2


def test_resumed_and_cached_segments_are_not_counted_as_paid(workdir, good_programs):  # noqa: F811
    first = sorted(good_programs)[0]

    def reply(body, n):  # the first segment's reply fails validation (a verb no class has): an invalid record
        program = json.loads(json.dumps(good_programs[narration_id_of(body)]))
        if narration_id_of(body) == first:
            program["steps"][0]["verb"] = "teleport"
        return Reply(json.dumps(program))

    with ScriptedServer(reply) as server:
        assert generate_programs(config(workdir, server, limit=2, repair_rounds=0)).statuses == {"valid": 1,
                                                                                                 "invalid": 1}
    out = workdir / "programs" / "val.jsonl"
    before = {p.name: p.stat().st_mtime_ns for p in out.parent.iterdir()}
    est = estimate_cost(offline_config(workdir, repair_rounds=0))
    assert (est.pending, est.answered) == (N_SEGMENTS - 2, 0)  # the two done are resumed, not pending
    # the reply size is what this output's replies were (the ledger), not the exemplars'
    assert est.reply_from == "the mean of the 2 replies this output has paid for"
    assert est.reply_tokens == 200  # (the scripted server's completion_tokens)
    # --retry-invalid asks for the invalid one again, not from the cache
    est = estimate_cost(offline_config(workdir, repair_rounds=0, retry_invalid=True))
    assert (est.pending, est.answered) == (N_SEGMENTS - 1, 0)
    out.unlink()  # the output lost: its two prompts are in the program cache, free
    est = estimate_cost(offline_config(workdir, repair_rounds=0))
    assert (est.pending, est.answered, est.asked) == (N_SEGMENTS, 2, N_SEGMENTS - 2)
    assert "(2 answered by the program cache, free)" in est.lines()[0]
    # the reads changed no file
    assert {p.name: p.stat().st_mtime_ns for p in out.parent.iterdir()} == {k: v for k, v in before.items()
                                                                         if k != out.name}


def test_dry_run_prints_the_prompt_on_stdout_and_the_estimate_on_stderr(workdir):  # noqa: F811
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1", "COLUMNS": "300"}
    env.pop("LEAP_NO_SUCH_KEY", None)
    cmd = [sys.executable, "-m", "leap_cli", "generate-programs", "--workdir", str(workdir), "--split", "val",
           "--backend", "openai", "--model", "test-model", "--api-key-env", "LEAP_NO_SUCH_KEY", "--dry-run"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Write its action program." in r.stdout and "estimate:" not in r.stdout
    said = " ".join(r.stderr.split())
    assert f"estimate: {N_SEGMENTS} segments of val pending: {N_SEGMENTS} requests" in said
    assert "USD live" in said and "--batch-file (half price)" in said and "at most --max-tokens 2,000" in said
    # the offline generator costs nothing: no estimate
    r = subprocess.run(cmd[:8] + ["--dry-run"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "estimate:" not in r.stderr


def test_dry_run_refuses_a_base_url_with_credentials_as_the_run_does(workdir):  # noqa: F811
    """The estimate was printed for a `--base-url` holding a user and password, which the run then refused."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1", "COLUMNS": "300"}
    cmd = [sys.executable, "-m", "leap_cli", "generate-programs", "--workdir", str(workdir), "--split", "val",
           "--backend", "openai", "--model", "test-model", "--api-key-env", "LEAP_NO_SUCH_KEY", "--dry-run",
           "--base-url", "https://me:hunter2secret@llm.example.org/v1"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert "--base-url holds a user name or password" in r.stderr and "hunter2secret" not in r.stderr


def test_an_output_of_other_settings_is_said_refused_and_estimated_anew(workdir, good_programs):  # noqa: F811
    """The estimate counted what a resume would ask for under another --model, which the run then refused
    (settings differ): it says the refusal, and counts what --force (or another --out) asks for; with --force
    it is counted without a word. Nothing is written: the output and its settings stay as they were."""
    reply = lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))  # noqa: E731
    with ScriptedServer(reply) as server:
        assert generate_programs(config(workdir, server, limit=3)).statuses == {"valid": 3}
    folder = workdir / "programs"
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and "sqlite" not in p.name}
    assert estimate_cost(offline_config(workdir)).pending == N_SEGMENTS - 3  # the same settings: a resume
    est = estimate_cost(offline_config(workdir, model="another-model"))
    assert est.refused and "was started with other settings" in est.refused and "another-model" in est.refused
    assert (est.pending, est.answered) == (N_SEGMENTS, 0)  # another model: no reply of the cache is its
    assert est.lines()[0].startswith("estimate: a run with these options is refused: ")
    forced = estimate_cost(offline_config(workdir, model="another-model", force=True))
    assert forced.refused is None and (forced.pending, forced.answered) == (N_SEGMENTS, 0)
    # the first model again with --force and no change of settings: a resume (nothing is started over)
    assert estimate_cost(offline_config(workdir, force=True)).pending == N_SEGMENTS - 3
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and "sqlite" not in p.name} == before


def test_retry_invalid_asks_anew_for_a_record_the_cache_alone_makes_invalid(workdir, good_programs):  # noqa: F811
    """A clip answered invalid, changed (answered valid), then changed back: a --retry-invalid run made its record
    from the cached invalid reply again, unasked (its record was valid when the run began, so not one of the
    output's invalid ones). Now the run asks anew, and the dry run's estimate counts that request."""
    csv = workdir / "kitchen" / "annotations" / "EPIC_100_validation.csv"
    lines = csv.read_text().splitlines()
    nid, narration = lines[2].split(",")[0], lines[2].split(",")[8]
    bad = {"on": True}

    def script(body, n):
        program = json.loads(json.dumps(good_programs[narration_id_of(body)]))
        if narration_id_of(body) == nid and bad["on"]:
            program["steps"][0]["verb"] = "teleport"  # parses, fails validation
        return Reply(json.dumps(program))

    def clip(text):
        lines[2] = lines[2].replace(lines[2].split(",")[8], text, 1)
        csv.write_text("\n".join(lines) + "\n")

    with ScriptedServer(script) as server:
        run = lambda **kw: generate_programs(config(workdir, server, data=workdir / "kitchen",  # noqa: E731
                                                    repair_rounds=0, **kw))
        assert run().statuses == {"valid": N_SEGMENTS - 1, "invalid": 1}
        bad["on"] = False
        clip(f"{narration} again")
        assert run().statuses == {"valid": 1}
        clip(narration)  # back: the first prompt, whose invalid reply is cached
        plain = estimate_cost(offline_config(workdir, data=workdir / "kitchen", repair_rounds=0))
        retry = estimate_cost(offline_config(workdir, data=workdir / "kitchen", repair_rounds=0, retry_invalid=True))
        assert (plain.pending, plain.answered, retry.pending, retry.answered) == (1, 1, 1, 0)
        asked = len(server.requests)
        assert run(retry_invalid=True).statuses == {"valid": 1}
        assert [narration_id_of(b) for b in server.requests[asked:]] == [nid]
    assert {r["narration_id"]: r["status"] for r in records(workdir)}[nid] == "valid"
