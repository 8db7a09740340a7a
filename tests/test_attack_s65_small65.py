"""Small user-facing defects (helper small65, session 65).

Found and fixed (each test below failed before its fix):
- extract's summary named, on its ``first:`` line, whichever failing segment a worker finished first: under
  ``--workers 2`` two identical runs could print different lines. It names the first failing segment in the split's
  order now (one kept per reason, replaced when an earlier one arrives), whatever the worker count; so do its
  "e.g." line and the 3 segments named per distinct component error.
- submit's refusal of mixed action scores read "(1 of 5 have them; these have them)": now "(1 segment of 5 has them:
  this one)", "(4 segments of 5 have them; this one lacks them)", and no "these" where another problem's are listed.
- ``leap show --run`` of a checkpoint saved before checkpoints kept their provenance showed the run's
  provenance.json (begun by a later resume, on later shards) as what it was trained on: now "unknown (best.pt, step
  N, ...)".
- a held server's "answers again" warning said "N s since its last reply" of the reply before the one just come;
  UniFormerV2 loading said "1 model keys missing", "resized {}", and named the file twice in read errors (no fix);
  leap ablate's header did not count its runs, and "unknown program source(s) ['tru']"; "unknown component(s)",
  "1 CUDA device(s)", "start at most 1 process(es)", "(1 bytes)".
Right as they were (pinned here): the hold's first warning (counts, what happens, when the stage stops); show of a
checkpoint that keeps its provenance, or of a run with no provenance.json.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from leap_cli.errors import LeapError
from tests.procs import leap_here
from tests.test_attack_s64_redownload64 import CUT, _ok, _workdir, kitchens  # noqa: F401 (a fixture)


# ---------------------------------------------------------------- extract: the summary's first: line, in split order

def _first_lines(said: str) -> list[str]:
    return [x.strip() for x in said.splitlines() if x.strip().startswith(("first: ", "e.g. "))]


def test_extracts_first_line_names_the_first_failing_segment_in_split_order(kitchens, tmp_path, monkeypatch,  # noqa: F811
                                                                            capsys):
    """--workers 2 with the results arriving last first (the order two workers may finish in) says what --workers 1
    says: the first segment past the cut (P01_02_3), not the last to be cut off."""
    import leap_cli.extract.runner as runner

    leap = leap_here(monkeypatch, capsys)
    one = _workdir(kitchens, tmp_path / "one")
    said_one = _ok(leap("extract", "--workdir", one, "--split", "val", "--workers", "1"))
    real = runner.pool_results

    def last_first(pool, results, *a, **kw):  # every result, then handed on in reverse
        return iter(list(real(pool, results, *a, **kw))[::-1])

    monkeypatch.setattr(runner, "pool_results", last_first)
    two = _workdir(kitchens, tmp_path / "two")
    said_two = _ok(leap("extract", "--workdir", two, "--split", "val", "--workers", "2"))
    first = _first_lines(said_one)
    assert len(first) == 1 and f"{CUT}.MP4 [{CUT}_3]: the window ends" in first[0], said_one
    assert [x.replace(str(two), str(one)) for x in _first_lines(said_two)] == first, said_two


def test_extracts_error_examples_are_the_first_in_split_order(tmp_path):
    """The 3 segments named per distinct error are the split's first 3 with it, in any order of arrival; a summary
    told no order (a caller of its own) keeps the arrival order."""
    from leap_cli.extract.runner import ExtractSummary

    ids = [f"P01_01_{i}" for i in range(6)]

    def record(nid):
        return {"narration_id": nid, "components": {
            "audio": {"status": "error", "data": {"error": "damaged", "detail": "P01_01.wav: damaged"}},
            "camera": {"status": "unavailable", "data": {"reason": f"ends {nid[-1]} s early"}}}}

    s = ExtractSummary(out=tmp_path / "x.jsonl", order={k: i for i, k in enumerate(ids)})
    for k in reversed(ids):
        s.add(record(k), {})
    (g,) = s.errors.values()
    assert g["segments"] == ids[:3] and g["n_segments"] == 6
    assert s.unavailable_first == {"camera: ends N s early": "camera: ends 0 s early"}
    s = ExtractSummary(out=tmp_path / "x.jsonl")
    for k in reversed(ids):
        s.add(record(k), {})
    assert next(iter(s.errors.values()))["segments"] == ids[::-1][:3]
    assert s.unavailable_first == {"camera: ends N s early": "camera: ends 5 s early"}


# ---------------------------------------------------------------- submit: action scores on some segments but not all

@pytest.mark.parametrize("lacking, said", [
    (["c"], "(4 segments of 5 have them; this one lacks them): c"),
    (["c", "d"], "(3 segments of 5 have them; these 2 lack them): c, d"),
    (["b", "c", "d", "e"], "(1 segment of 5 has them: this one): a"),
    (["c", "d", "e"], "(2 segments of 5 have them: these): a, b")])
def test_the_mixed_action_refusal_says_which_segments_it_lists(lacking, said):
    """It said "(1 of 5 have them; these have them)" and "(4 of 5 have them; these have none)"."""
    from leap_cli import submit as sub
    from tests.test_eval_submit import _test_scores

    ids = ["a", "b", "c", "d", "e"]
    doc = sub.make_submission(_test_scores(97, 300, ids), "anticipation", sls_pt=1, sls_tl=1, sls_td=1,
                              with_actions=True)
    for nid in lacking:
        del doc["results"][nid]["action"]
    with pytest.raises(LeapError) as e:
        sub.check_submission(doc, ids, 97, 300)
    assert e.value.message.endswith(f"with action scores on some segments but not all {said}"), e.value.message


def test_the_mixed_action_refusal_lists_no_segments_it_does_not_name():
    """Where another problem's segments are the ones listed, the 'also' part says the count alone."""
    from leap_cli import submit as sub
    from tests.test_eval_submit import _test_scores

    ids = ["a", "b", "c"]
    doc = sub.make_submission(_test_scores(97, 300, ids), "anticipation", sls_pt=1, sls_tl=1, sls_td=1,
                              with_actions=True)
    del doc["results"]["c"]["action"]
    doc["results"]["a"]["verb"] = []
    with pytest.raises(LeapError) as e:
        sub.check_submission(doc, ids, 97, 300)
    assert e.value.message.endswith("; also: action scores on some segments but not all (2 segments of 3 have "
                                    "them)"), e.value.message


# ---------------------------------------------------------------- show --run: a checkpoint of a leap before provenance

def _shown_provenance(monkeypatch, tmp_path, ckpt: dict, run_file: dict | None) -> str:
    """What ``leap show --run``'s first line says the predicting checkpoint (``ckpt``, as best.pt) was trained on,
    the run's provenance.json holding ``run_file``."""
    import json
    import os

    from rich.console import Console

    import leap_cli.commands.show as show_cmd
    import leap_cli.report.predicted as predicted
    import leap_cli.train.checkpoint as checkpoint

    run = tmp_path / "run"
    run.mkdir()
    if run_file is not None:
        (run / "provenance.json").write_text(json.dumps(run_file))
    monkeypatch.setattr(checkpoint, "resolve_checkpoint", lambda run, which: Path(run) / "checkpoints" / "best.pt")
    monkeypatch.setattr(checkpoint, "load_checkpoint", lambda source: ckpt)

    def skipped(source, nid, shards):  # (the line before the prediction is what is looked at)
        raise predicted.SkippedSegment(nid, "x", shards)

    monkeypatch.setattr(predicted, "predicted_program", skipped)
    console = Console(width=1000, record=True, file=open(os.devnull, "w"), color_system=None)  # noqa: SIM115
    monkeypatch.setattr(show_cmd, "console", console)
    show_cmd._show_prediction(run, "P01_01_5", tmp_path / "work", None, "val")
    (line,) = [x for x in console.export_text().splitlines() if "trained on programs:" in x]
    return line.split("trained on programs: ", 1)[1]


def _programs(model: str) -> dict:
    return {"train": {"programs": {"records": 3, "valid": 3, "with_program": 3, "sha256": model,
                                   "made_by": [{"backend": "openai", "model": model, "records": 3, "valid": 3}]}}}


def test_show_of_a_checkpoint_older_than_the_runs_provenance_says_unknown(monkeypatch, tmp_path):
    """best.pt of a leap before checkpoints kept their provenance, in a run that a newer leap resumed since (its
    provenance.json began at that resume, on today's shards): show presented the file's programs as best.pt's."""
    run_file = {**_programs("gpt-4o"), "earlier": [{"unknown": "steps 1-25, trained before runs kept provenance.json"}]}
    said = _shown_provenance(monkeypatch, tmp_path, {"step": 20, "config": {"data": {}}}, run_file)
    assert said.startswith("unknown") and "gpt-4o" not in said, said
    assert "best.pt" in said and "step 20" in said and "provenance.json" in said, said


@pytest.mark.parametrize("case", ["kept", "no file"])
def test_show_of_a_checkpoint_that_keeps_its_provenance_or_of_a_run_without_the_file(monkeypatch, tmp_path, case):
    """A checkpoint's own copy is what it says (the run's file names later programs); no file at all: unknown."""
    if case == "kept":
        said = _shown_provenance(monkeypatch, tmp_path, {"step": 20, "config": {}, **{"provenance": _programs("m1")}},
                                 _programs("m2"))
        assert said.startswith("openai m1") and "m2" not in said, said
    else:
        said = _shown_provenance(monkeypatch, tmp_path, {"step": 20, "config": {}}, None)
        assert said.startswith("unknown (a run of a leap before runs kept provenance.json)"), said


# ---------------------------------------------------------------- generate-programs: a held server's lines

def test_a_held_servers_warnings_say_what_happens_and_when_it_answers_again(monkeypatch, caplog):
    """Two requests failed for good after replies hold the server; its next reply lifts the hold. The second line
    said "(held 0 s, 0 s since its last reply)" of the previous reply, as if the one just come were not one."""
    import asyncio
    import logging

    from leap_cli.programs.backends import BackendError, OpenAIBackend, RetryPolicy
    from tests.programs_llm_server import Reply, ScriptedServer
    from tests.test_mut_backends import _request

    monkeypatch.setenv("LEAP_TEST_KEY", "sk-s65")

    def script(req, n):  # 2 replies, 2 requests failed for good (2 attempts each), then replies again
        return Reply("{}") if len(server.requests) <= 2 or len(server.requests) > 6 else Reply(status=500)

    async def run(url):
        backend = OpenAIBackend("m", base_url=url, api_key_env="LEAP_TEST_KEY", concurrency=2,
                                retry=RetryPolicy(max_retries=1, base_delay=0.01, max_delay=0.02))
        try:
            for i in range(5):
                try:
                    await backend.complete(_request(i))
                except BackendError:
                    pass
        finally:
            await backend.aclose()
        return backend

    with caplog.at_level(logging.INFO, logger="leap_cli.programs.backends"), ScriptedServer(script) as server:
        backend = asyncio.run(run(server.base_url))
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert backend.holds == 1 and len(said) == 2, said
    assert said[0].startswith("2 requests in a row failed for good (") and "after 2 replies: holding the others" in \
        said[0] and "the stage stops after 10 min without a reply" in said[0], said
    assert said[1].startswith("the server answers again after ") and " s without a reply (held " in said[1], said
    assert said[1].endswith("back to 2 requests in flight") and "since its last reply" not in said[1], said


# ---------------------------------------------------------------- UniFormerV2 weights: the loading lines

def test_weight_loading_lines_count_in_words_and_name_the_file_once(tmp_path, caplog):
    """A checkpoint of a tiny model lacking one tensor: "1 model key missing" (was "1 model keys"), and the info
    line counts in words (was "loaded 37 tensors ...; resized {}; dropped 0; initialised 0"); a file that holds no
    dict names its path once and says what to give (it named the path twice, with no fix)."""
    import logging

    import torch

    from leap_cli.model import build_model
    from leap_cli.model.uniformerv2 import load_pretrained
    from tests.test_model import tiny_args

    state = build_model(tiny_args()).state_dict()
    gone = "backbone.ln_pre.bias"
    assert gone in state
    torch.save({k: v for k, v in state.items() if k != gone}, tmp_path / "cut.pth")
    with caplog.at_level(logging.INFO, logger="leap_cli.model.uniformerv2"):
        report = load_pretrained(build_model(tiny_args()), tmp_path / "cut.pth")
    assert report.missing == [gone]
    said = [r.getMessage() for r in caplog.records]
    assert any(x.startswith(f"1 model key missing from {tmp_path / 'cut.pth'}, left at initialisation: {gone}")
               for x in said), said
    (loaded,) = [x for x in said if x.startswith("loaded ")]
    assert f"tensors from {tmp_path / 'cut.pth'} (" in loaded and "resized: none" in loaded, loaded
    assert re.search(r"; dropped \d+ keys; 0 tensors initialised", loaded) and "{}" not in loaded, loaded
    torch.save([torch.zeros(3)], tmp_path / "list.pth")
    with pytest.raises(LeapError) as e:
        load_pretrained(build_model(tiny_args()), tmp_path / "list.pth")
    line = e.value.one_line()
    assert line.count(str(tmp_path / "list.pth")) == 1 and "holds a list, not a state dict" in line, line
    assert e.value.fix and "state dict saved with torch.save" in e.value.fix, line
    (tmp_path / "bad.pth").write_bytes(b"\x80\x02garbage, not a pickle")
    with pytest.raises(LeapError) as e:
        load_pretrained(build_model(tiny_args()), tmp_path / "bad.pth")
    assert e.value.one_line().count(str(tmp_path / "bad.pth")) == 1 and "cannot read checkpoint" in e.value.message


# ---------------------------------------------------------------- leap ablate: the header and its refusals

def test_ablates_header_says_the_runs_it_will_train(tmp_path, monkeypatch):
    """The header counts the runs (cells x seeds: the help's "30 runs at the defaults"); it said "10 videos x 40
    segments, 3 seeds" and left the user to count the cells."""
    from tests.test_commands_shards_data_ablate import _fake_ablation, flat, invoke

    _fake_ablation(monkeypatch)
    out = flat(invoke("ablate", "--workdir", tmp_path).output)
    assert f"ablation in {tmp_path}: 30 runs (10 cells x 3 seeds) on a kitchen of 10 videos of 40 segments" in out
    out = flat(invoke("ablate", "--workdir", tmp_path, "--seeds", "1", "--sources", "none", "--videos", "2",
                      "--no-anticipation").output)
    assert "1 run (1 cell x 1 seed) on a kitchen of 2 videos of 40 segments" in out, out


@pytest.mark.parametrize("sources, said", [(("tru",), "unknown --sources tru ("),
                                           (("tru", "nne"), "unknown --sources nne, tru ("),
                                           ((), "no program source given (--sources) (")])
def test_ablates_unknown_sources_read_as_one_line_with_the_option(sources, said):
    """It said "unknown program source(s) ['tru']" (a Python list, "(s)"), and "unknown program source(s) []" of
    none at all."""
    from leap_cli.train.ablate import AblateConfig

    with pytest.raises(LeapError) as e:
        AblateConfig(sources=sources)
    assert e.value.one_line().startswith(said) and "use some of truth, offline, none" in e.value.fix, e.value


# ---------------------------------------------------------------- "(s)" and "1 bytes" on the way

def test_one_unknown_component_one_cuda_device_and_a_one_byte_cut_read_in_the_singular(tmp_path, monkeypatch, caplog):
    """They said "unknown component(s) x", "this machine has 1 CUDA device(s)" / "start at most 1 process(es)", and
    "dropping a truncated last line (1 bytes)"."""
    import logging

    import torch

    from leap_cli.extract.runner import ExtractConfig
    from leap_cli.io import read_jsonl
    from leap_cli.train import distributed

    with pytest.raises(LeapError) as e:
        ExtractConfig(data=tmp_path, split="val", out=tmp_path / "d.jsonl", components=("narration", "sound"))
    assert e.value.message == "unknown component sound", e.value
    with pytest.raises(LeapError) as e:
        ExtractConfig(data=tmp_path, split="val", out=tmp_path / "d.jsonl", components=("sound", "smell"))
    assert e.value.message == "unknown components sound, smell", e.value
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(LeapError) as e:
        distributed.pick_device("cuda", 1)
    assert e.value.message.endswith("this machine has 1 CUDA device") and "(s)" not in e.value.one_line(), e.value
    assert e.value.fix.startswith("start at most 1 process per node"), e.value.fix
    p = tmp_path / "r.jsonl"
    p.write_text('{"narration_id": "a"}\n{')
    with caplog.at_level(logging.WARNING):
        assert [r["narration_id"] for r in read_jsonl(p)] == ["a"]
    assert f"{p}: dropping a truncated last line (1 byte)" in caplog.text, caplog.text
