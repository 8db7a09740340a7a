"""Resume, summary, cost and provenance details of ``leap generate-programs`` that a mutation run over
programs/generate.py and programs/provenance.py found no test for: what a rerun keeps, counts and pays."""

import json
from collections import Counter
from pathlib import Path

import pytest

from leap_cli.errors import LeapError
from leap_cli.io import read_jsonl, settings_path
from leap_cli.programs.generate import GenerateConfig, generate_programs
from leap_cli.programs.prompt import narration_record
from tests.program_helpers import server_config
from tests.programs_llm_server import Reply, ScriptedServer, narration_id_of
from tests.test_programs_generate import N_SEGMENTS, good_programs, workdir  # noqa: F401 (the fixtures)

DATA = Path(__file__).parent / "data" / "epic"
config = server_config


def out_file(workdir) -> Path:
    return workdir / "programs" / "val.jsonl"


def records(workdir):
    return read_jsonl(out_file(workdir))


def invalid(program: dict) -> dict:
    """``program`` with a verb no class has: parses, fails validation (a repair turn follows)."""
    program = json.loads(json.dumps(program))
    program["steps"][0]["verb"] = "teleport"
    return program


# --- cost ------------------------------------------------------------------------------------------------------

def test_prompt_tokens_from_the_providers_cache_are_priced_at_the_cached_price():
    cfg = GenerateConfig(price_in=1.0, price_out=2.0, price_cached_in=0.5)
    assert cfg.cost({"prompt_tokens": 1000, "cached_tokens": 400, "completion_tokens": 200}) == \
        pytest.approx((600 * 1.0 + 400 * 0.5 + 200 * 2.0) / 1e6)
    # a cached count over the prompt's (an endpoint's odd report) prices no more tokens than the prompt had
    assert cfg.cost({"prompt_tokens": 1000, "cached_tokens": 5000, "completion_tokens": 0}) == \
        pytest.approx(1000 * 0.5 / 1e6)
    # without --price-cached-in the cached tokens cost what the others do
    assert GenerateConfig(price_in=1.0).cost({"prompt_tokens": 1000, "cached_tokens": 400}) == pytest.approx(1000 / 1e6)


def test_max_cost_counts_what_earlier_runs_spent_on_the_output(workdir, good_programs):
    """The cap is the output file's across runs (the ledger): a rerun with the same cap asks nothing more."""
    script = lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))  # noqa: E731
    with ScriptedServer(script) as server:
        # each call costs (1000*1 + 200*2)/1e6 = 0.0014 $; the cap is reached exactly after two
        s = generate_programs(config(workdir, server, concurrency=1, max_cost=0.0028))
        assert len(server.requests) == 2 == len(records(workdir)) and s.stopped
        s = generate_programs(config(workdir, server, concurrency=1, max_cost=0.0028))
        assert len(server.requests) == 2 and s.total == N_SEGMENTS - 2 and not s.statuses
        assert s.spent_before == pytest.approx(0.0028) and s.stopped and "max-cost 0.0028 reached" in s.stopped
        s = generate_programs(config(workdir, server, concurrency=1, max_cost=0.0042))  # raised: one more
        assert len(server.requests) == 3 == len(records(workdir))



def test_past_max_cost_the_replies_the_cache_holds_are_still_written(workdir, good_programs):
    """A rerun over the cap wrote nothing, not even the segments whose replies were paid for and cached (an output
    lost or set aside by --force keeps its ledger; a run killed before it wrote its last replies): they cost nothing
    now. The rest stays pending, and no request goes out."""
    script = lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))  # noqa: E731
    with ScriptedServer(script) as server:
        generate_programs(config(workdir, server, concurrency=1, limit=4))
        assert len(server.requests) == 4 and len(records(workdir)) == 4
        out_file(workdir).unlink()  # (its 0.0056 $ stay in the ledger)
        s = generate_programs(config(workdir, server, concurrency=2, max_cost=0.0028))
        assert len(server.requests) == 4 and s.cache_hits == 4 and len(records(workdir)) == 4
        assert s.stopped and "max-cost 0.0028 reached" in s.stopped
        assert s.statuses == {"valid": 4}
        s = generate_programs(config(workdir, server, concurrency=2, max_cost=0.0028))
        assert len(server.requests) == 4 and not s.statuses and s.stopped and len(records(workdir)) == 4


# --- a record's provenance --------------------------------------------------------------------------------------

def test_a_paid_reply_is_not_marked_cached_and_a_cached_one_is(workdir, good_programs):
    script = lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))  # noqa: E731
    with ScriptedServer(script) as server:
        generate_programs(config(workdir, server, limit=2))
        assert [r["provenance"]["cached"] for r in records(workdir)] == [False, False]
        out_file(workdir).unlink()
        s = generate_programs(config(workdir, server, limit=2))
        assert s.cache_hits == 2 and len(server.requests) == 2
        assert [r["provenance"]["cached"] for r in records(workdir)] == [True, True]


def test_a_repaired_records_usage_is_that_of_both_rounds(workdir, good_programs):
    def script(body, n):
        program = good_programs[narration_id_of(body)]
        return Reply(json.dumps(invalid(program) if n == 0 else program))

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, limit=1))
        assert s.statuses == {"valid": 1} and len(server.requests) == 2
    (rec,) = records(workdir)
    assert rec["provenance"]["rounds"] == 2 and rec["provenance"]["attempts"] == 2
    assert rec["provenance"]["usage"] == {"prompt_tokens": 2000, "completion_tokens": 400}


def test_a_repair_turn_that_fails_keeps_the_first_rounds_program_as_invalid(workdir, good_programs):
    """A repair reply that is not JSON, or a repair request that failed for good, leaves the record invalid with
    the program of the round before (paid for, and --retry-invalid asks again), not failed without one."""
    first = list(good_programs)[:2]

    def script(body, n):
        nid = narration_id_of(body)
        if n == 0:
            return Reply(json.dumps(invalid(good_programs[nid])))
        if nid == first[0]:
            return Reply("Sorry, I cannot help with that program.")
        return Reply(status=400, raw=json.dumps({"error": {"message": f"the prompt of {nid} is too long"}}))

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, limit=2, max_retries=0, concurrency=1))
        assert len(server.requests) == 4
    assert s.statuses == {"invalid": 2} and len(s.failures) == 2
    by_id = {r["narration_id"]: r for r in records(workdir)}
    for nid in first:
        assert by_id[nid]["status"] == "invalid"
        assert by_id[nid]["program"] == invalid(good_programs[nid])
    assert "too long" in by_id[first[1]]["errors"][-1]["message"]


# --- what a rerun keeps and counts --------------------------------------------------------------------------------

def _offline_output(workdir):
    """A finished offline output (with its settings file), returned as its records."""
    s = generate_programs(GenerateConfig(workdir=workdir, split="val"))
    assert s.statuses == {"valid": N_SEGMENTS}
    return records(workdir)


def _write(workdir, recs):
    out_file(workdir).write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_records_without_provenance_or_outside_the_input_are_kept_and_not_counted(workdir):
    """Records an earlier leap wrote without provenance are resumed as they are; a record of a segment the input
    no longer holds is neither counted as resumed nor lost."""
    recs = _offline_output(workdir)
    for r in recs:
        r.pop("provenance")
    extra = dict(recs[0], narration_id="P99_99_9")
    _write(workdir, recs + [extra])
    s = generate_programs(GenerateConfig(workdir=workdir, split="val"))
    assert s.total == 0 and s.resumed == N_SEGMENTS and s.reclipped == 0 and not s.resumed_not_valid
    assert records(workdir) == recs + [extra]


def test_a_record_twice_is_counted_by_its_last_line(workdir):
    """A file holding a key twice (a run killed before its rewrite): the last line is the record, so a failed
    line followed by a valid one is not a failed record to retry, and an old line of a changed clip followed by
    a line of the clip as it is now is not a changed clip."""
    recs = _offline_output(workdir)
    a, b = recs[0], recs[1]
    failed_a = {"narration_id": a["narration_id"], "status": "failed", "program": None, "errors": [],
                "provenance": a["provenance"]}
    stale_b = {**b, "status": "failed", "provenance": {**b["provenance"], "clip_hash": "0" * 16}}
    _write(workdir, [failed_a, stale_b] + recs)
    s = generate_programs(GenerateConfig(workdir=workdir, split="val"))
    assert s.total == 0 and s.resumed == N_SEGMENTS
    assert s.reclipped == 0 and not s.resumed_not_valid
    assert records(workdir) == recs  # (rewritten to the last line of each)


def test_records_redone_with_retry_errors_are_not_counted_among_the_resumed_failed(workdir, good_programs):
    failing = list(good_programs)[0]

    def script(body, n):
        nid = narration_id_of(body)
        if nid == failing:
            return Reply(status=400, raw=json.dumps({"error": {"message": f"the prompt of {nid} is too long"}}))
        return Reply(json.dumps(good_programs[nid]))

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, limit=3, max_retries=0))
        assert s.statuses == {"failed": 1, "valid": 2}
        s = generate_programs(config(workdir, server, limit=0))  # a rerun that only resumes says the failed one
        assert s.resumed == 3 and s.resumed_not_valid == Counter({"failed": 1}) and s.total == 0
    with ScriptedServer(lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))) as server:
        s = generate_programs(config(workdir, server, limit=1, retry_failed=True))
        assert s.statuses == {"valid": 1} and server.calls_for(failing) == 1
        assert s.resumed == 2 and not s.resumed_not_valid


def test_limit_0_asks_for_nothing(workdir):
    s = generate_programs(GenerateConfig(workdir=workdir, split="val", limit=0))
    assert s.total == 0 and not s.statuses
    assert not out_file(workdir).exists() or not records(workdir)


def test_a_newer_leaps_rendering_of_a_narration_only_clip_is_no_changed_clip(workdir, monkeypatch):
    """A narration-only record's text is leap's rendering of the labels: another rendering (a newer leap) is not
    a changed clip, so it does not make (and pay for) every program again."""
    import leap_cli.programs.generate as generate

    _offline_output(workdir)
    monkeypatch.setattr(generate, "narration_record",
                        lambda seg: {**narration_record(seg), "text": "rendered otherwise: " + str(seg.narration)})
    s = generate_programs(GenerateConfig(workdir=workdir, split="val"))
    assert s.reclipped == 0 and s.resumed == N_SEGMENTS and s.total == 0


def test_the_last_descriptor_record_of_an_id_twice_feeds_the_prompt(workdir):
    """extract --retry-errors appends a segment's record again: the later one is the clip's."""
    from leap_cli.programs.generate import dry_run

    nid = "P01_11_0"
    desc = workdir / "descriptors" / "val.jsonl"
    desc.parent.mkdir(parents=True)
    recs = [{"narration_id": nid, "video_id": "P01_11", "text": f"CLIP-TEXT-{what}", "components": {}}
            for what in ("OLD", "NEW")]
    desc.write_text("".join(json.dumps(r) + "\n" for r in recs))
    prompt = dry_run(GenerateConfig(workdir=workdir, split="val"), nid)
    assert "CLIP-TEXT-NEW" in prompt and "CLIP-TEXT-OLD" not in prompt


def test_a_resume_with_other_repair_rounds_is_refused(workdir):
    _offline_output(workdir)
    with pytest.raises(LeapError):
        generate_programs(GenerateConfig(workdir=workdir, split="val", repair_rounds=0))
    assert json.loads(settings_path(out_file(workdir)).read_text())["repair_rounds"] == 1


# --- exit status ----------------------------------------------------------------------------------------------------

def test_cli_a_run_whose_records_are_all_invalid_exits_3(workdir):
    from typer.testing import CliRunner

    from leap_cli.cli import app

    with ScriptedServer(lambda body, n: Reply("not a program")) as server:
        res = CliRunner().invoke(app, ["generate-programs", "--workdir", str(workdir), "--split", "val", "--backend",
                                       "openai", "--model", "m", "--base-url", server.base_url, "--api-key-env",
                                       "LEAP_TEST_KEY", "--repair-rounds", "0", "--limit", "2"])
    said = " ".join(res.output.split())
    assert res.exit_code == 3, said
    assert "all 2 records failed" in said, said


# --- provenance.py ------------------------------------------------------------------------------------------------

def test_made_by_and_its_counts():
    from leap_cli.programs.provenance import MadeBy, generator_text, made_by, made_by_text

    assert made_by({"provenance": {"backend": "", "model": ""}}) == (None, None)
    assert made_by({"provenance": {"backend": "openai", "model": 4}}) == ("openai", None)
    assert generator_text("openai", None) == "openai" and generator_text(None, None) == "?"
    m = MadeBy()
    m.add({"provenance": {"backend": "offline", "model": "offline-v5"}}, True)
    for valid in (True, False, False):
        m.add({"provenance": {"backend": "openai", "model": "gpt-4o"}}, valid)
    m.add({"narration_id": "hand-written"}, True)
    assert m.summary() == [{"backend": "openai", "model": "gpt-4o", "records": 3, "valid": 1},
                           {"backend": None, "model": None, "records": 1, "valid": 1},
                           {"backend": "offline", "model": "offline-v5", "records": 1, "valid": 1}]
    assert m.backends() == {"offline": 1, "openai": 3, "?": 1}
    assert made_by_text(m.summary()) == "openai gpt-4o: 1 valid of 3; ?: 1 valid of 1; offline offline-v5: 1 valid of 1"
    assert made_by_text([]) == "none" and made_by_text(None) == "unknown"


def test_prompt_version_and_run_provenance(tmp_path):
    from leap_cli.programs.provenance import prompt_version, read_run_provenance, run_programs_text

    assert prompt_version(None) is None
    programs = tmp_path / "val.jsonl"
    programs.write_text("")
    settings_path(programs).write_text(json.dumps({"prompt_version": True}))
    assert prompt_version(programs) is None
    settings_path(programs).write_text(json.dumps({"prompt_version": 3}))
    assert prompt_version(programs) == 3

    (tmp_path / "provenance.json").write_text("[1, 2]")
    assert read_run_provenance(tmp_path) is None
    made = {"records": 2, "valid": 2, "made_by": [{"backend": "openai", "model": "gpt-4o", "records": 2, "valid": 2}]}
    same = {"train": {"programs": made}, "val": {"programs": {**made, "records": 1, "valid": 1}}}
    assert run_programs_text(same) == "openai gpt-4o: 2 valid of 2"  # (validation by the same generator: not said)
    other = {**same, "val": {"programs": {"records": 1, "valid": 1, "made_by": [
        {"backend": "offline", "model": "offline-v5", "records": 1, "valid": 1}]}}}
    assert run_programs_text(other) == "openai gpt-4o: 2 valid of 2 (validation: offline offline-v5: 1 valid of 1)"


def test_a_clip_with_nothing_to_describe_is_failed_without_a_request(workdir):
    """EPIC's test split read narration-only (no descriptors): no text, labels or detections to ask about. Such
    records are failed (no reply; --retry-errors redoes them once extract has run), not invalid, and cost nothing."""
    ann = workdir / "kitchen" / "annotations"
    rows = (DATA / "EPIC_100_validation_excerpt.csv").read_text().splitlines()[:4]
    (ann / "EPIC_100_test_timestamps.csv").write_text("\n".join(",".join(r.split(",")[:8]) for r in rows) + "\n")
    with ScriptedServer(lambda body, n: Reply(status=500)) as server:
        s = generate_programs(config(workdir, server, split="test"))
        assert not server.requests
    assert s.statuses == {"failed": 3} and s.cost == 0
    recs = read_jsonl(workdir / "programs" / "test.jsonl")
    assert [r["status"] for r in recs] == ["failed"] * 3 and "nothing to describe" in recs[0]["errors"][0]["message"]


def test_a_keyless_rerun_of_a_done_output_makes_no_cache(workdir, good_programs, monkeypatch):
    """Nothing pending and no key set (a pipeline rerun on a GPU node): the run touches no cache it lacks."""
    with ScriptedServer(lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))) as server:
        cfg = config(workdir, server)
        assert generate_programs(cfg).statuses == {"valid": N_SEGMENTS}
        cfg.cache_path.unlink()
        monkeypatch.delenv("LEAP_TEST_KEY")
        s = generate_programs(cfg)
        assert s.total == 0 and s.resumed == N_SEGMENTS and len(server.requests) == N_SEGMENTS
    assert not cfg.cache_path.exists()


def test_segments_a_live_run_did_not_answer_stay_recorded_as_asked_in_a_batch(workdir, tmp_path):
    """A live run over the segments of Batch requests still out takes off the list only those it answered with a
    valid program: an invalid or failed record is what a --retry-errors/--retry-invalid run asks for again, and
    that run must still be warned that the batch, if submitted, pays for them too."""
    from leap_cli.programs.batch import write_batch_file
    from leap_cli.programs.generate import batch_pending

    with ScriptedServer(lambda body, n: Reply("not json")) as server:
        cfg = config(workdir, server, repair_rounds=0)
        assert write_batch_file(cfg, tmp_path / "b.jsonl") == N_SEGMENTS
        s = generate_programs(config(workdir, server, repair_rounds=0, limit=2))
        assert s.statuses == {"invalid": 2}
    assert len(batch_pending(cfg.out_path)["ids"]) == N_SEGMENTS


def test_an_output_of_only_its_settings_is_refused_naming_batch_requests_only_where_they_were_written(workdir,
                                                                                                      tmp_path):
    """Was wrong: an output that is only its settings file (a live run stopped before its first program) was
    refused, for other settings, with "Batch requests written with those settings may be out" where no --batch-file
    had ever been written for it."""
    from leap_cli.programs.batch import write_batch_file
    from leap_cli.programs.generate import batch_pending_path

    _offline_output(workdir)
    out_file(workdir).write_text("")  # (its settings file kept: a run stopped before its first record)
    with pytest.raises(LeapError) as e:
        generate_programs(GenerateConfig(workdir=workdir, split="val", repair_rounds=0))
    said = e.value.one_line()
    assert "a run stopped before its first program" in said and "are out" not in said, said
    with ScriptedServer(lambda body, n: Reply("not json")) as server:
        cfg = config(workdir, server, repair_rounds=0, force=True)
        assert write_batch_file(cfg, tmp_path / "b.jsonl") == N_SEGMENTS
        assert batch_pending_path(cfg.out_path).exists()
        with pytest.raises(LeapError) as e:
            generate_programs(config(workdir, server, repair_rounds=1))
    said = e.value.one_line()
    assert "Batch requests written with those settings are out" in said, said
