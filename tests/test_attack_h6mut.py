"""Mutation run (helper h6, session 51) over this session's changes to ``leap generate-programs``: a reply cached at
an earlier --max-tokens taken on a resume that raised it, the warning before the first request of what a rerun asks
again, the --dry-run cost estimate, and the secrets of --base-url and of a proxy. Each test here kills mutants the
nearest tests let live (flipped comparisons, a dropped ``keep=False``, a dropped filter); each was checked to pass on
the real code and fail on its mutants."""

from __future__ import annotations

import json
import logging

import pytest

from leap_cli.io import settings_path
from leap_cli.programs.generate import asked_token_limit, estimate_cost, generate_programs
from tests.program_helpers import server_config as config
from tests.test_attack_h1money import descriptors, invalid, out_file
from tests.programs_llm_server import Reply, ScriptedServer, completion, narration_id_of
from tests.test_programs_generate import N_SEGMENTS, good_programs, workdir  # noqa: F401 (the fixtures)
from tests.test_programs_estimate import offline_config


def snapshot(folder):
    """Every file of ``folder`` with its bytes (cache.sqlite and its -wal/-shm included)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# --- the warning before the first request: what a rerun asks again for ----------------------------------------------

def test_the_warning_counts_only_the_records_this_rerun_asks_again_for(workdir, good_programs, caplog):  # noqa: F811
    """One failed record (HTTP 500) and one invalid one: a plain rerun asks for neither and warns of nothing; with
    --retry-invalid the warning says 1 invalid and no failed; with --retry-errors too, both, each with its flag."""
    bad, broken = sorted(good_programs)[:2]

    def script(body, n):
        nid = narration_id_of(body)
        if nid == broken:
            return Reply(status=500, content="down")
        return Reply(json.dumps(invalid(good_programs[nid]) if nid == bad else good_programs[nid]))

    def warned() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "asked for again" in r.getMessage()]

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, repair_rounds=0, max_retries=0))
        assert s.statuses == {"valid": N_SEGMENTS - 2, "invalid": 1, "failed": 1}
        caplog.clear()
        with caplog.at_level(logging.INFO):
            generate_programs(config(workdir, server, repair_rounds=0, max_retries=0))
        assert warned() == []  # nothing asked again: nothing said
        caplog.clear()
        with caplog.at_level(logging.INFO):
            generate_programs(config(workdir, server, repair_rounds=0, max_retries=0, retry_invalid=True))
        [rec] = warned()
        said = rec.getMessage()
        assert rec.levelno == logging.WARNING
        assert "1 invalid (--retry-invalid" in said and "failed" not in said, said
        caplog.clear()
        with caplog.at_level(logging.INFO):
            generate_programs(config(workdir, server, repair_rounds=0, max_retries=0, retry_invalid=True,
                                     retry_failed=True))
        said = " ".join(r.getMessage() for r in warned())
        assert "1 failed (--retry-errors)" in said and "1 invalid (--retry-invalid" in said, said
        # --limit 1: the warning counts what this run asks for, not what later runs will
        caplog.clear()
        with caplog.at_level(logging.INFO):
            generate_programs(config(workdir, server, repair_rounds=0, max_retries=0, retry_invalid=True,
                                     retry_failed=True, limit=1))
        said = " ".join(r.getMessage() for r in warned())
        assert ("1 failed (--retry-errors)" in said) != ("1 invalid (--retry-invalid" in said), said


# --- a reply cached at another --max-tokens ------------------------------------------------------------------------

def test_a_lowered_max_tokens_does_not_take_the_replies_of_the_higher_limit(workdir, good_programs):  # noqa: F811
    """A reply not cut at 4000 tokens may be cut at 2000: a run at a lower limit (--force: a resume refuses it) asks
    again, and the estimate counts those requests (only a raised limit may take the earlier limit's uncut replies)."""
    def script(body, n):
        nid = narration_id_of(body)
        return Reply(raw=json.dumps(completion(json.dumps(good_programs[nid]), completion_tokens=3000)))

    with ScriptedServer(script) as server:
        assert generate_programs(config(workdir, server, max_tokens=4000)).statuses == {"valid": N_SEGMENTS}
        out_file(workdir).unlink()  # (its settings file stays: it says 4000)
        generate_programs(config(workdir, server, max_tokens=2000, force=True))
        assert len(server.requests) == 2 * N_SEGMENTS, "a reply of 3000 tokens was taken under --max-tokens 2000"
    out_file(workdir).unlink()
    est = estimate_cost(offline_config(workdir, max_tokens=1000))  # (the settings file says 2000 now)
    assert (est.pending, est.answered) == (N_SEGMENTS, 0)


def test_the_estimate_at_a_raised_max_tokens_counts_the_earlier_replies_free_and_writes_nothing(
        workdir, good_programs):  # noqa: F811
    """--dry-run at a raised --max-tokens: the replies cached at the earlier limit (not cut) are answered free, the
    cut one is a request; and the estimate writes nothing (not even the cache's copy under the new limit's key)."""
    cut_id = sorted(good_programs)[0]

    def script(body, n):
        nid = narration_id_of(body)
        if nid == cut_id:
            data = completion(json.dumps(good_programs[nid])[:150])
            data["choices"][0]["finish_reason"] = "length"
            return Reply(raw=json.dumps(data))
        return Reply(json.dumps(good_programs[nid]))

    fresh = estimate_cost(offline_config(workdir, repair_rounds=0)).prompt_tokens
    with ScriptedServer(script) as server:
        generate_programs(config(workdir, server, repair_rounds=0))
    out_file(workdir).unlink()  # the output lost, its settings (2000) kept
    before = snapshot(workdir / "programs")
    est = estimate_cost(offline_config(workdir, max_tokens=4000, repair_rounds=0))
    assert (est.pending, est.answered, est.asked) == (N_SEGMENTS, N_SEGMENTS - 1, 1)
    # the mean prompt is that of the one request (not spread over the free ones)
    assert est.prompt_tokens == pytest.approx(fresh, rel=0.2)
    est = estimate_cost(offline_config(workdir, max_tokens=4000, repair_rounds=0))  # the same again: nothing kept
    assert (est.pending, est.answered, est.asked) == (N_SEGMENTS, N_SEGMENTS - 1, 1)
    assert snapshot(workdir / "programs") == before


def test_the_estimate_of_an_output_only_a_batch_file_began_takes_its_earlier_limit(workdir, good_programs,
                                                                                    tmp_path):  # noqa: F811
    """--batch-file records the settings before the programs file exists: the estimate at a raised limit reads that
    earlier limit too (the cached replies answered free)."""
    from leap_cli.programs.batch import write_batch_file

    with ScriptedServer(lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))) as server:
        generate_programs(config(workdir, server, repair_rounds=0))
    out_file(workdir).unlink()
    settings_path(out_file(workdir)).unlink()
    write_batch_file(offline_config(workdir, repair_rounds=0), tmp_path / "b.jsonl")  # all from the cache
    assert settings_path(out_file(workdir)).exists()
    out_file(workdir).unlink(missing_ok=True)
    est = estimate_cost(offline_config(workdir, max_tokens=4000, repair_rounds=0))
    assert (est.pending, est.answered) == (N_SEGMENTS, N_SEGMENTS)


def test_a_resume_of_a_raised_run_that_stopped_early_still_takes_the_first_limits_replies(workdir,
                                                                                          good_programs):  # noqa: F811
    """Every reply cached at 2000 (not cut), the output lost; a run at 4000 stops after 2 segments (here --limit 2:
    as a Ctrl-C or a --max-cost stop); its resume at the same 4000 must not buy the other 4 again. Was wrong: the
    earlier limit was read from the settings file alone, which the raised run rewrote at its start (the program
    cache now records every limit an output was asked with)."""
    with ScriptedServer(lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))) as server:
        generate_programs(config(workdir, server))
        out_file(workdir).unlink()
        generate_programs(config(workdir, server, max_tokens=4000, limit=2))
        assert len(server.requests) == N_SEGMENTS  # the 2 from the cache (verified OK)
        s = generate_programs(config(workdir, server, max_tokens=4000))
        assert s.statuses == {"valid": N_SEGMENTS - 2}
        assert len(server.requests) == N_SEGMENTS, f"{len(server.requests) - N_SEGMENTS} replies paid again"


@pytest.mark.parametrize("stored, want", [(2000, 2000), (True, None), ("2000", None), (None, None)])
def test_asked_token_limit_reads_only_an_int(tmp_path, stored, want):
    """A settings file whose max_tokens is no int (hand-edited, or a bool) is no earlier limit (a str compared with
    --max-tokens would raise)."""
    out = tmp_path / "val.jsonl"
    settings_path(out).write_text(json.dumps({"params": {"max_tokens": stored}}))
    assert asked_token_limit(out) == want
    assert asked_token_limit(tmp_path / "none.jsonl") is None


def test_no_batch_warning_for_segments_the_earlier_limits_replies_answer(workdir, good_programs, caplog):  # noqa: F811
    """Batch requests out for every segment, their replies cached at the earlier --max-tokens (not cut): a run at a
    raised limit pays for none of them, so it does not warn that they would be paid twice."""
    from leap_cli.programs.generate import batch_pending_path

    with ScriptedServer(lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))) as server:
        generate_programs(config(workdir, server))
        out_file(workdir).unlink()
        batch_pending_path(out_file(workdir)).write_text(json.dumps(
            {"written": "2026-01-01T00:00:00Z", "files": ["b.jsonl"], "ids": sorted(good_programs)}))
        caplog.clear()
        with caplog.at_level(logging.INFO):
            s = generate_programs(config(workdir, server, max_tokens=4000))
        assert s.statuses == {"valid": N_SEGMENTS} and len(server.requests) == N_SEGMENTS
    assert "Batch requests were written" not in caplog.text, caplog.text


# --- the estimate's arithmetic and lines -----------------------------------------------------------------------------

def _cfg(**kw):
    from leap_cli.programs.generate import GenerateConfig

    return GenerateConfig(**{**dict(workdir=".", split="val", backend="openai", model="m", price_in=1.0, price_out=2.0,
                                    price_cached_in=0.5), **kw})


def test_the_estimates_costs_are_of_the_paid_requests_only():
    """10,000 pending, 4,000 answered by the cache: 6,000 requests of 2,000 prompt tokens (1,024 of them a cacheable
    prefix) and 300 reply tokens, at 1 / 0.5 / 2 USD per 1M tokens."""
    from leap_cli.programs.estimate import CostEstimate

    cfg = _cfg()
    est = CostEstimate("val", 10_000, 4_000, 2000.0, 1024, 300.0, "the exemplar programs' mean", 2000, cfg.cost, "P")
    assert est.asked == 6_000
    assert est.cost() == pytest.approx(6_000 * (2000 * 1 + 300 * 2) / 1e6)  # 15.60: no prefix read from a cache
    assert est.cost(cached_prefix=True) == pytest.approx(6_000 * (976 * 1 + 1024 * 0.5 + 300 * 2) / 1e6)
    said = " ".join(" ".join(est.lines()).split())
    assert said.startswith("estimate: 10,000 segments of val pending (4,000 answered by the program cache, free): "
                           "6,000 requests"), said
    assert "1,024 a static prefix" in said
    assert "~15.60 USD live, ~12.53 with the prefix cached, ~7.80 through --batch-file (half price)" in said, said
    assert "at most 36.00 live if every reply ran to --max-tokens" in said, said
    none = CostEstimate("val", 10, 0, 900.0, 0, 300.0, "x", 2000, cfg.cost, "P")
    assert "none a provider's prompt caching reuses" in " ".join(none.lines())


def test_an_estimate_all_answered_by_the_cache_says_so_and_no_cost():
    from leap_cli.programs.estimate import CostEstimate

    est = CostEstimate("val", 3, 3, 0.0, 0, 300.0, "x", 2000, _cfg().cost, "P")
    assert est.lines() == ["estimate: 3 segments of val pending (3 answered by the program cache, free): 0 requests"]
    assert est.cost() == 0
    assert CostEstimate("val", 0, 0, 0.0, 0, 0.0, "x", 2000, _cfg().cost, "P").lines() == [
        "estimate: nothing pending in val: a run would ask for nothing"]


def test_the_estimate_says_the_cached_input_price_given(workdir):  # noqa: F811
    est = estimate_cost(offline_config(workdir, price_cached_in=0.25))
    assert est.prices.startswith("1 / 0.25 / 2 USD per 1M tokens"), est.prices
    assert estimate_cost(offline_config(workdir)).prices.startswith("1 / 1 / 2 USD"), est.prices


def test_a_fresh_outputs_reply_estimate_is_the_exemplar_programs_in_the_form_the_prompt_shows(workdir):  # noqa: F811
    """The prompt shows the exemplar replies as compact JSON (the replies follow that form): the estimate's reply
    tokens are the mean of the exemplar programs in that form, not pretty-printed."""
    from leap_cli.programs.estimate import text_tokens
    from leap_cli.programs.generate import _setup
    from leap_cli.programs.prompt import clip_info

    cfg = offline_config(workdir)
    inputs, exemplars, builder = _setup(cfg)
    rec = inputs.records[0]
    shown = [m["content"] for m in builder.messages(clip_info(rec, inputs.segments.get(rec["narration_id"])))
             if m["role"] == "assistant"]
    assert shown and all(c == json.dumps(json.loads(c), separators=(",", ":")) for c in shown)
    compact = [text_tokens(json.dumps(e.program, separators=(",", ":"))) for e in exemplars]
    assert estimate_cost(cfg).reply_tokens == pytest.approx(sum(compact) / len(compact))


# --- secrets of --base-url and of a proxy ----------------------------------------------------------------------------

@pytest.mark.parametrize("url", ["https://someuser@llm.example/v1", " https://someuser:Pa55word-h6mut@llm.example/v1 ",
                                 "https://someuser:Pa55word-h6mut@llm.example/v1?key=QUERYTOKEN-h6mut"])
def test_a_base_url_with_a_user_name_is_refused_naming_neither_it_nor_a_query_token(url):
    """A user name alone is refused too (leap would not send it), also with spaces around the URL; the message shows
    the URL without its credentials and with its query's values redacted."""
    from leap_cli.errors import LeapError
    from leap_cli.programs.backends import url_secrets

    with pytest.raises(LeapError) as e:
        url_secrets(url)
    said = str(e.value)
    assert "--base-url holds a user name or password" in said
    assert "someuser" not in said and "Pa55word-h6mut" not in said and "QUERYTOKEN-h6mut" not in said, said
    assert "llm.example/v1" in said


def test_a_proxys_percent_encoded_password_is_redacted_as_sent(monkeypatch):
    """HTTPS_PROXY's password is percent-encoded in the URL; what is sent (and may be echoed) is the decoded one."""
    from leap_cli.programs.http import HTTPClient
    from leap_cli.programs.redact import redact

    monkeypatch.setenv("HTTPS_PROXY", "http://me:h6%40proxy-pass@proxy.example:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    HTTPClient("https://api.example.com/v1", {})
    assert "h6@proxy-pass" not in redact("407: bad password h6@proxy-pass")


def test_an_error_in_a_200_reply_is_redacted_before_it_is_cut_at_300():
    """The key at character 280 of the error: cut first, its head would be no registered secret any more."""
    from leap_cli.programs.backends import reply_problem
    from leap_cli.programs.redact import register_secret

    key = "9c1e5a7b3d2f4e6a8c0b1d3f5a7c9e2b"  # no "sk-": only the registered secret redacts it
    register_secret(key)
    said = reply_problem({"error": {"message": "y" * 279 + f" {key} rejected"}})
    assert said.startswith("the endpoint answered 200 with an error: ")
    assert not [key[i:i + 12] for i in range(len(key) - 11) if key[i:i + 12] in said], said


def test_a_redirects_location_is_redacted_in_the_error_itself(workdir, good_programs):  # noqa: F811
    """The LeapError a redirect stops the stage with (what a caller of generate_programs gets, and logs) holds no key
    that its Location carries, not only the CLI's printed line."""
    from leap_cli.errors import LeapError
    from leap_cli.programs.redact import register_secret

    key = "9d2f6b8a4c3e5f7b9d1c2e4a6b8d0f3c"
    register_secret(key)
    loc = f"https://gateway.example/v1/chat/completions?api-key={key}"
    with ScriptedServer(lambda body, n: Reply(status=301, raw="", headers={"Location": loc})) as server:
        with pytest.raises(LeapError) as e:
            generate_programs(config(workdir, server, max_retries=0))
    said = str(e.value)
    assert "redirect" in said and "gateway.example" in said and key[:12] not in said, said


def test_a_batch_file_at_a_raised_max_tokens_answers_from_the_earlier_limits_replies(workdir, good_programs,
                                                                                      tmp_path):  # noqa: F811
    """--batch-file at a raised --max-tokens after the output was lost: the replies cached at the earlier limit (not
    cut) make the records, no Batch request is written for them (they would be paid again); a second raise finds
    them too (kept under the middle limit's key)."""
    from leap_cli.programs.batch import write_batch_file

    with ScriptedServer(lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))) as server:
        generate_programs(config(workdir, server, repair_rounds=0))
    for limit in (4000, 8000):
        out_file(workdir).unlink()
        path = tmp_path / f"b{limit}.jsonl"
        write_batch_file(offline_config(workdir, max_tokens=limit, repair_rounds=0), path)
        requests = path.read_text().splitlines() if path.exists() else []
        assert requests == [], f"{len(requests)} Batch requests at --max-tokens {limit}"
        assert len(out_file(workdir).read_text().splitlines()) == N_SEGMENTS


def _reclipped_invalid(workdir, good_programs, server_log):
    """An invalid record whose clip changed and changed back: its prompt's (invalid) reply is in the cache."""
    ids = sorted(good_programs)
    bad = ids[0]
    descriptors(workdir, ids)

    def script(body, n):
        server_log.append(narration_id_of(body))
        nid = narration_id_of(body)
        return Reply(json.dumps(invalid(good_programs[nid]) if nid == bad else good_programs[nid]))

    with ScriptedServer(script) as server:
        generate_programs(config(workdir, server, repair_rounds=0))
        descriptors(workdir, ids, changed=[bad])
        generate_programs(config(workdir, server, repair_rounds=0))
    descriptors(workdir, ids)  # back as it was: the first prompt's reply is cached
    return script


def test_the_estimate_of_a_reclipped_invalid_record_whose_prompt_is_cached_is_free(workdir, good_programs):  # noqa: F811
    asked: list = []
    script = _reclipped_invalid(workdir, good_programs, asked)
    assert len(asked) == N_SEGMENTS + 1
    est = estimate_cost(offline_config(workdir, repair_rounds=0))
    assert (est.pending, est.answered, est.asked) == (1, 1, 0)
    with ScriptedServer(script) as server:  # and the run agrees: nothing paid
        generate_programs(config(workdir, server, repair_rounds=0))
    assert len(asked) == N_SEGMENTS + 1


def test_with_retry_invalid_the_estimate_and_the_run_agree_on_a_reclipped_invalid_record(workdir,
                                                                                         good_programs):  # noqa: F811
    """Was wrong: with --retry-invalid the estimate counted an invalid record whose clip changed (and changed back)
    as a paid request, while the run makes such a record again as any reclipped one (from the cache)."""
    asked: list = []
    script = _reclipped_invalid(workdir, good_programs, asked)
    est = estimate_cost(offline_config(workdir, repair_rounds=0, retry_invalid=True))
    with ScriptedServer(script) as server:
        generate_programs(config(workdir, server, repair_rounds=0, retry_invalid=True))
    assert est.asked == len(asked) - (N_SEGMENTS + 1), "the estimate and the run disagree"


def test_a_reply_that_reached_the_earlier_limit_is_asked_again_at_a_raised_one(workdir, good_programs):  # noqa: F811
    """A cache row of a leap before rows kept "cut" reads as not cut: one whose completion reached the earlier
    limit is taken as cut there (asked again at the raised limit), the others are taken."""
    long_one, just_under = sorted(good_programs)[:2]

    def script(body, n):
        nid = narration_id_of(body)
        tokens = 200 if n else {long_one: 2000, just_under: 1999}.get(nid, 200)  # (no finish_reason "length":
        # an old row's look; 1999 of 2000 was not cut)
        return Reply(raw=json.dumps(completion(json.dumps(good_programs[nid]), completion_tokens=tokens)))

    with ScriptedServer(script) as server:
        generate_programs(config(workdir, server))
        out_file(workdir).unlink()
        assert generate_programs(config(workdir, server, max_tokens=4000)).statuses == {"valid": N_SEGMENTS}
        assert [narration_id_of(b) for b in server.requests[N_SEGMENTS:]] == [long_one]
