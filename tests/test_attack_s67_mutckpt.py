"""Gaps a hand-made mutation run over train/checkpoint.py, programs/validate.py and programs/provenance.py found:
behaviour no fast test held (each test names the mutants it kills), and three bugs, fixed:

- validate: a pre or post saying not open(x) and not closed(x) (complements: the chaining takes each as the other's
  fact) was valid; it is a contradiction now (not empty and not full, no complements, stay valid);
- checkpoint: a resume on a machine with fewer GPUs than the one that saved the checkpoint handed torch a CUDA
  generator state for a GPU not there (torch's IndexError stopped the resume; read from torch's source, no GPU
  here to see it);
- checkpoint: a torch file whose zip headers zipfile cannot check (one byte of a member's compression method
  damaged) or a foreign zip with damaged deflate data went out of the CRC check as a NotImplementedError or
  zlib.error traceback; torch.load's one-line error now says it.
"""

import logging
from pathlib import Path

import pytest
import torch

from leap_cli.errors import LeapError
from leap_cli.programs import provenance as prov
from leap_cli.programs.validate import validate_semantics
from leap_cli.train.checkpoint import load_checkpoint, load_model, resolve_checkpoint, save_checkpoint
from tests.test_checkpoint_inference import _ckpt, _two_checkpoints, tiny  # noqa: F401 (fixture)
from tests.test_programs_validate import C, S, messages, nouns, prog, verbs  # noqa: F401 (fixtures)

# ---------------------------------------------------------------------------------------------------------------
# train/checkpoint.py


@pytest.mark.parametrize("held", ["model_args and model", torch.zeros(3), {"model_args": {}}])
def test_a_file_that_is_no_checkpoint_dict_is_refused_in_one_line(tmp_path: Path, held) -> None:
    """A file holding a string, a bare tensor or a dict without weights is no leap checkpoint: one LeapError, not a
    TypeError or a KeyError in load_model. (mutants: the dict check dropped; the 'model' check dropped)"""
    torch.save(held, tmp_path / "x.pt")
    with pytest.raises(LeapError, match="not a leap checkpoint"):
        load_checkpoint(tmp_path / "x.pt")


def test_a_folder_given_as_the_checkpoint_file_is_not_found(tmp_path: Path) -> None:
    """(mutant: ``is_file`` as ``exists``: a folder was read by torch.load and called a corrupt file)"""
    with pytest.raises(LeapError, match="checkpoint not found"):
        load_checkpoint(tmp_path)


def test_best_falls_back_to_last_with_a_warning_and_the_checkpoints_folder_is_a_run(tmp_path: Path, caplog) -> None:
    """A run without validation has no best.pt: best (the default) takes last.pt and says so; last does not take
    best.pt; the checkpoints folder itself resolves as its run does; ``which`` is best or last only, a file too.
    (mutants: the fallback for 'last' instead of 'best'; the checkpoints folder not taken as the
    run's; the check of ``which`` dropped)"""
    _, last = _two_checkpoints(tmp_path / "run")
    folder = tmp_path / "run" / "checkpoints"
    (folder / "best.pt").unlink()
    with caplog.at_level(logging.WARNING):
        assert resolve_checkpoint(tmp_path / "run") == folder / "last.pt"
    assert "no best.pt" in caplog.text
    assert resolve_checkpoint(folder, "last") == folder / "last.pt"
    model, ckpt = load_model(folder)
    assert ckpt["step"] == 9 and all(torch.equal(v, last[k]) for k, v in model.state_dict().items())
    (folder / "last.pt").rename(folder / "best.pt")
    with pytest.raises(LeapError, match="no last.pt checkpoint"):
        resolve_checkpoint(tmp_path / "run", "last")
    with pytest.raises(LeapError, match="which must be 'best' or 'last'"):
        resolve_checkpoint(folder / "best.pt", "middle")


def test_a_tensor_of_another_shape_is_refused_unless_partial(tmp_path: Path, tiny, caplog) -> None:
    """A checkpoint whose verb head has another shape (weights of a model with more classes) is refused, naming the
    tensor and both shapes; --allow-partial-load loads the rest with a warning and leaves that one at its
    initialisation. (mutant: the misfit passed on to load_state_dict, which raises a RuntimeError even with
    strict=False; dropping the misfits from the refusal is equivalent: a tensor left out is a missing key)"""
    ckpt = _ckpt(tiny)
    w = ckpt["model"]["verb_head.weight"]
    ckpt["model"] = {**ckpt["model"], "verb_head.weight": torch.zeros(w.shape[0] + 2, *w.shape[1:])}
    save_checkpoint(tmp_path / "other.pt", ckpt)
    with pytest.raises(LeapError, match=r"of another shape \['verb_head.weight \(" + str(w.shape[0] + 2)):
        load_model(tmp_path / "other.pt")
    with caplog.at_level(logging.WARNING):
        model, _ = load_model(tmp_path / "other.pt", allow_partial=True)
    assert "missing from the checkpoint or of another shape" in caplog.text
    assert model.verb_head.weight.shape == w.shape and torch.equal(model.noun_head.weight, tiny.noun_head.weight)


def test_model_args_that_build_no_model_are_one_line(tmp_path: Path, tiny) -> None:
    """(mutant: build_model's error not turned into a LeapError naming the file and model_args)"""
    ckpt = _ckpt(tiny)
    ckpt["model_args"] = {**ckpt["model_args"], "decoder_heads": 3}  # (32 does not split in 3 heads)
    save_checkpoint(tmp_path / "edited.pt", ckpt)
    with pytest.raises(LeapError, match="model_args do not build a model") as e:
        load_model(tmp_path / "edited.pt")
    assert e.value.record == "model_args" and e.value.path == str(tmp_path / "edited.pt")


def test_a_resume_on_fewer_gpus_restores_the_states_of_the_gpus_there(monkeypatch) -> None:
    """A checkpoint of a machine with three GPUs holds three CUDA generator states; torch.cuda.set_rng_state_all
    takes the third for a device that a two-GPU machine does not have (``default_generators[2]``: an IndexError,
    "tuple index out of range", so the resume crashed). The states of the GPUs there are restored, the others left
    out. (Found reading torch/cuda/random.py; no GPU here: torch's call is stood in for.)"""
    from leap_cli.train.checkpoint import rng_state, set_rng_state

    state = rng_state()
    state["cuda"] = [torch.full((16,), i, dtype=torch.uint8) for i in range(3)]
    given = []

    def set_all(states):
        states = list(states)
        if len(states) > torch.cuda.device_count():
            raise IndexError("tuple index out of range")
        given.extend(states)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_all)
    set_rng_state(state)
    assert len(given) == 2 and all(torch.equal(g, s) for g, s in zip(given, state["cuda"]))


def test_a_checkpoint_whose_zip_headers_are_damaged_is_one_line(tmp_path: Path) -> None:
    """The CRC-32 check reads the archive with zipfile, which raises more than BadZipFile: one byte of the central
    directory changed (the member's compression method: NotImplementedError) or a foreign zip's damaged deflate
    data (zlib.error) went out as a traceback. What zipfile cannot check is left to torch.load, whose error on these
    is a LeapError naming the file."""
    import struct
    import zipfile

    torch.save({"model": {"w": torch.zeros(100)}, "model_args": {}}, tmp_path / "a.pt")
    b = bytearray((tmp_path / "a.pt").read_bytes())
    i = b.find(b"PK\x01\x02")  # the first member's central directory entry
    b[i + 10:i + 12] = struct.pack("<H", 99)  # its compression method
    (tmp_path / "method.pt").write_bytes(bytes(b))
    with zipfile.ZipFile(tmp_path / "deflate.pt", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x/data.pkl", b"a" * 10000)
    b = bytearray((tmp_path / "deflate.pt").read_bytes())
    b[40:44] = b"\xff\xff\xff\xff"  # inside the compressed data
    (tmp_path / "deflate.pt").write_bytes(bytes(b))
    for name in ("method.pt", "deflate.pt"):
        with pytest.raises(LeapError, match="cannot read checkpoint") as e:
            load_checkpoint(tmp_path / name)
        assert e.value.path == str(tmp_path / name)


# ---------------------------------------------------------------------------------------------------------------
# programs/validate.py


@pytest.fixture
def vocab(verbs, nouns):
    return verbs, nouns


def _pot(vocab, *steps):
    return messages(validate_semantics(prog(list(steps), verb="lift", noun="pot"), *vocab))


def _hold(hand, neg=False, obj="pot"):
    return S("lift" if not neg else "let-go", obj, post=[C("holding", hand, obj, neg=neg)], hand=hand)


def _needs(hand, neg=False, obj="pot"):
    return S("carry", obj, pre=[C("holding", hand, obj, neg=neg)], hand=hand)


def test_which_hands_hold_after_holds_and_lets_go(vocab) -> None:
    """The hands' bookkeeping, one rule each. (mutants: 'either' not satisfied by 'both'; 'both' satisfied by one
    hand; not holding(both) leaving the hands that held it each; the other hand of a 'both' hold swapped; an
    'either' hold kept after one hand lets go)"""
    assert _pot(vocab, _hold("both"), _needs("either")) == []
    assert _pot(vocab, _hold("left"), _needs("both"))[0][0] == "/steps/1/pre/0"
    assert _pot(vocab, _hold("left"), _hold("right"), _needs("both")) == []
    # said of each hand, then let go with both: neither holds it any more
    assert _pot(vocab, _hold("left"), _hold("right"), _hold("both", neg=True), _needs("left"))[0][0] == "/steps/3/pre/0"
    assert _pot(vocab, _hold("left"), _hold("right"), _hold("both", neg=True), _needs("either", neg=True)) == []
    # the left hand lets go of a two-handed hold: the right keeps it, the left does not
    assert _pot(vocab, _hold("both"), _hold("left", neg=True), _needs("right")) == []
    assert _pot(vocab, _hold("both"), _hold("left", neg=True), _needs("left"))[0][0] == "/steps/2/pre/0"
    # held with either hand, then the left lets go: which one held it is not known, so no longer held for sure
    assert _pot(vocab, _hold("either"), _hold("left", neg=True), _needs("either"))[0][0] == "/steps/2/pre/0"


def test_a_precondition_failing_in_both_passes_of_a_loop_is_one_finding(vocab) -> None:
    """The second pass of a loop checks its body again: a finding of both passes is said once. (mutant: findings
    not deduplicated)"""
    body = S("scrub", "plate", pre=[C("wet", "sponge")], post=[C("clean", "plate")])
    got = messages(validate_semantics(prog([{"type": "loop", "until": C("clean", "plate"), "steps": [body]}]),
                                      *vocab))
    assert got == [("/steps/0/steps/0/pre/0", "precondition wet(sponge) does not hold: no earlier step or program "
                                              "precondition establishes it")]


def test_each_condition_contradicting_the_first_saying_is_named(vocab) -> None:
    """A list says open(fridge), then not open(fridge) twice: each of the two contradicts the first, which stands.
    (mutant: the later saying overwrote the first: the third condition, agreeing with the second, went unsaid)"""
    shut = S("close", "fridge", post=[C("closed", "fridge")])
    pre = [C("open", "fridge"), C("open", "fridge", neg=True), C("open", "fridge", neg=True)]
    got = messages(validate_semantics(prog([shut], pre=pre, verb="close", noun="fridge"), *vocab))
    assert [(p, m) for p, m in got if "contradicts" in m] == [
        ("/pre/1", "not open(fridge) contradicts /pre/0 of the same list"),
        ("/pre/2", "not open(fridge) contradicts /pre/0 of the same list")]


def test_a_sub_actions_second_object_and_its_own_pre_are_checked(vocab) -> None:
    """(mutants: object_b's vocabulary check dropped; the check of a sub-action's pre against itself dropped)"""
    put = S("put", "plate", "flibbertigibbet", pre=[C("open", "fridge"), C("closed", "fridge")])
    got = messages(validate_semantics(prog([put], pre=[C("open", "fridge")], verb="put", noun="plate"), *vocab))
    assert ("/steps/0/object_b", "object 'flibbertigibbet' is not an EPIC noun class (key or synonym)") in got
    assert any(p == "/steps/0/pre/1" and "contradicts /steps/0/pre/0 (open)" in m for p, m in got), got


def test_an_empty_loop_is_one_finding(vocab) -> None:
    """(mutant: an empty loop went on to be run: its until was also 'never reached')"""
    loop = {"type": "loop", "until": C("clean", "plate"), "steps": []}
    got = messages(validate_semantics(prog([S("wash", "plate"), loop]), *vocab))
    assert got == [("/steps/1/steps", "empty loop")]


def test_a_loops_until_holds_after_it_whatever_its_last_pass_left(vocab) -> None:
    """A loop whose body fills the pot only when the tap is on ends with full(pot): it ran until so. (mutant: the
    until not asserted after the loop: the program's post full(pot) was said not to hold)"""
    fill = S("fill", "pot", post=[C("full", "pot")])
    loop = {"type": "loop", "until": C("full", "pot"),
            "steps": [{"type": "conditional", "if": C("switched_on", "tap"), "then": [fill], "else": []}]}
    assert validate_semantics(prog([loop], post=[C("full", "pot")], verb="fill", noun="pot"), *vocab) == []


def test_a_loops_until_reached_in_an_else_branch_and_an_empty_then(vocab) -> None:
    """(mutants: the sub-actions of a loop's else branches not searched for its until; the empty then branch not
    said, which the schema refuses before but validate_semantics itself promises)"""
    fill = S("fill", "pot", post=[C("full", "pot")])
    wait = S("wait", "pot")
    loop = {"type": "loop", "until": C("full", "pot"),
            "steps": [{"type": "conditional", "if": C("switched_on", "tap", neg=True), "then": [wait], "else": [fill]}]}
    assert validate_semantics(prog([loop], verb="fill", noun="pot"), *vocab) == []
    empty = {"type": "conditional", "if": C("switched_on", "tap"), "then": [], "else": [fill]}
    assert messages(validate_semantics(prog([wait, empty], verb="fill", noun="pot"), *vocab)) == [
        ("/steps/1/then", "empty then branch")]


def test_not_open_and_not_closed_in_one_list_contradict(vocab) -> None:
    """open and closed are complements (``vocab.COMPLEMENTS``: the chaining takes not open(fridge) as
    closed(fridge)), so a pre saying not open(fridge) and not closed(fridge) says closed and open at once. It was
    valid: the state then held open(fridge) from the later condition, whatever the first said. empty/full are no
    complements (a pot can be half full): not empty and not full together stay valid. (mutants of the fix: the
    negated clash taken from OPPOSITES; either sign clashing; the positive clash taken from COMPLEMENTS)"""
    shut = S("close", "fridge", post=[C("closed", "fridge")])
    pre = [C("open", "fridge", neg=True), C("closed", "fridge", neg=True)]
    got = messages(validate_semantics(prog([shut], pre=pre, verb="close", noun="fridge"), *vocab))
    assert ("/pre/1", "not closed(fridge) contradicts /pre/0 (not open) of the same list: they cannot hold at "
                      "once") in got, got
    fill = S("fill", "pot", post=[C("full", "pot")])
    half = [C("empty", "pot", neg=True), C("full", "pot", neg=True)]
    assert validate_semantics(prog([fill], pre=half, verb="fill", noun="pot"), *vocab) == []
    # (a complement said with the other sign agrees; empty and full said both still contradict)
    agree = [C("closed", "fridge", neg=True), C("open", "fridge"), C("closed", "fridge"), C("open", "fridge", neg=True)]
    got = messages(validate_semantics(prog([shut], pre=agree[:2], verb="close", noun="fridge"), *vocab))
    assert not any("contradicts" in m for _, m in got), got
    got = messages(validate_semantics(prog([shut], pre=agree[2:], verb="close", noun="fridge"), *vocab))
    assert not any("contradicts" in m for _, m in got), got
    got = messages(validate_semantics(prog([fill], pre=[C("empty", "pot"), C("full", "pot")], verb="fill", noun="pot"),
                                      *vocab))
    assert ("/pre/1", "full(pot) contradicts /pre/0 (empty) of the same list: they cannot hold at once") in got


def test_the_programs_own_pre_and_post_are_checked(vocab) -> None:
    """(mutants: the program's post not checked against itself; the objects of the program's pre, or of its post,
    not checked)"""
    wash = S("wash", "plate", post=[C("clean", "plate")])
    got = messages(validate_semantics(prog([wash], pre=[C("visible", "flibbertigibbet")],
                                           post=[C("clean", "plate"), C("dirty", "plate"), C("visible", "gizmo")]),
                                      *vocab))
    assert ("/pre/0/args/0", "object 'flibbertigibbet' is not an EPIC noun class (key or synonym)") in got
    assert ("/post/2/args/0", "object 'gizmo' is not an EPIC noun class (key or synonym)") in got
    assert any(p == "/post/1" and "contradicts /post/0 (clean)" in m for p, m in got), got


def test_the_default_limit_is_24_sub_actions_and_none_is_a_finding(vocab) -> None:
    """(mutants: the limit compared with >=; the default limit 25; no finding for a program without a sub-action,
    which the schema refuses before but validate_semantics itself promises)"""
    wash = S("wash", "plate")
    assert validate_semantics(prog([wash] * 24), *vocab) == []
    assert messages(validate_semantics(prog([wash] * 25), *vocab)) == [
        ("/steps", "25 sub-actions when flattened, more than the limit of 24")]
    assert messages(validate_semantics(prog([]), *vocab)) == [("/steps", "the program has no sub-action")]


def test_an_action_noun_outside_the_classes_is_a_finding(vocab) -> None:
    """(mutant: the action's noun not checked against the noun classes)"""
    got = messages(validate_semantics(prog([S("wash", "plate")], noun="gizmo"), *vocab))
    assert got == [("/action/noun", "object 'gizmo' is not an EPIC noun class (key or synonym)")]


# ---------------------------------------------------------------------------------------------------------------
# programs/provenance.py


def test_a_clip_hash_is_the_one_earlier_program_files_hold() -> None:
    """A program record's clip_hash is compared with the one of now by build-shards and by a resumed
    generate-programs: another length or another hash of the same text would call every paid program of an earlier
    leap made from another clip (redone or refused). (mutant: the hash cut to 15 characters)"""
    assert prov.clip_hash_of("Clip 0.00-2.00 s.", None) == "6cd1dedbdd075a56"
    assert prov.clip_hash_of(None, None) == "95cb9b4f84ceff13"


def test_a_shards_folders_programs_line() -> None:
    """What ``leap show`` and train say of a shards folder's programs: who made how many valid of how many, the
    prompt version; the lines of manifests of an earlier leap, and of a build without programs. (mutants: the prompt
    version left out; valid and records swapped; "none" for 0 records of an earlier leap's manifest, which says
    nothing of who made them; made_by_text's "unknown" and "none" dropped)"""
    rows = [{"backend": "openai", "model": "gpt-4o-mini", "records": 240, "valid": 230},
            {"backend": "offline", "model": "offline-v5", "records": 8, "valid": 8}]
    summary = {"records": 248, "valid": 238, "made_by": rows, "prompt_version": 3}
    assert prov.programs_text(summary) == ("openai gpt-4o-mini: 230 valid of 240; offline offline-v5: 8 valid of 8, "
                                           "prompt v3")
    assert prov.programs_text({**summary, "prompt_version": None}).endswith("offline-v5: 8 valid of 8")
    assert prov.programs_text({"records": 0, "valid": 0, "made_by": [], "prompt_version": None}).startswith("none")
    assert prov.programs_text({"records": 5, "valid": 4, "made_by": None}).startswith("4 valid of 5, made by unknown")
    assert prov.programs_text(None).startswith("unknown")
    assert prov.programs_text({"records": 0, "valid": 0, "made_by": None}).startswith("0 valid of 0, made by unknown")
    assert (prov.made_by_text(None), prov.made_by_text([])) == ("unknown", "none")


def _rec(backend=None, model=None):
    return {"provenance": {"backend": backend, "model": model}}


def test_records_per_generator_are_counted_sorted_and_summed_per_backend() -> None:
    """validate-programs' report and build-shards' manifest: records and valid ones per generator, the most records
    first, ties by backend then model; the backends' totals sum every model of one backend. (mutants: every record
    counted valid; the fewest first; ties left in insertion order; a backend's total that of its last model only)"""
    made = prov.MadeBy()
    for backend, model, valid in [("openai", "gpt-4o", True), ("openai", "gpt-4o-mini", False),
                                  ("openai", "gpt-4o-mini", True), ("offline", "offline-v5", True),
                                  ("anthropic", "claude", True), (None, None, False)]:
        made.add(_rec(backend, model), valid)
    assert made.summary() == [
        {"backend": "openai", "model": "gpt-4o-mini", "records": 2, "valid": 1},
        {"backend": None, "model": None, "records": 1, "valid": 0},
        {"backend": "anthropic", "model": "claude", "records": 1, "valid": 1},
        {"backend": "offline", "model": "offline-v5", "records": 1, "valid": 1},
        {"backend": "openai", "model": "gpt-4o", "records": 1, "valid": 1}]
    assert made.backends() == {"openai": 3, "offline": 1, "anthropic": 1, "?": 1}


def test_made_by_says_none_for_what_a_record_does_not_say_as_a_string() -> None:
    """(mutants: an empty backend or model kept as ''; a provenance that is no object read as one)"""
    assert prov.made_by(_rec("", "")) == (None, None)
    assert prov.made_by({"provenance": ["openai"]}) == (None, None)
    assert prov.made_by({"provenance": {"backend": "openai", "model": 4}}) == ("openai", None)
    assert prov.generator_text(*prov.made_by(_rec("", ""))) == "?"


def test_the_prompt_version_of_a_program_file(tmp_path: Path) -> None:
    """From its settings file; None for no path, a boolean, or a settings file that cannot be read (not this stage's
    to refuse). (mutants: a None path read; True taken as version 1; a damaged settings file raised)"""
    from leap_cli.io import settings_path

    programs = tmp_path / "programs.jsonl"
    programs.write_text("")
    assert prov.prompt_version(None) is None
    settings_path(programs).write_text('{"prompt_version": 4}')
    assert prov.prompt_version(programs) == 4
    settings_path(programs).write_text('{"prompt_version": true}')
    assert prov.prompt_version(programs) is None
    settings_path(programs).write_text('{"prompt_version": ')
    assert prov.prompt_version(programs) is None


def test_a_runs_provenance_file_that_is_no_object_is_none(tmp_path: Path) -> None:
    """(mutants: a JSON list returned as the provenance; a file that is not JSON raised)"""
    (tmp_path / prov.RUN_PROVENANCE).write_text("[1, 2]")
    assert prov.read_run_provenance(tmp_path) is None
    (tmp_path / prov.RUN_PROVENANCE).write_text("{not json")
    assert prov.read_run_provenance(tmp_path) is None
    (tmp_path / prov.RUN_PROVENANCE).write_text('{"train": {}}')
    assert prov.read_run_provenance(tmp_path) == {"train": {}}
    assert prov.read_run_provenance(tmp_path / "nowhere") is None


def _programs(sha, backend="openai", model="gpt-4o-mini", records=4, version=3, rows=None):
    return {"records": records, "valid": records, "sha256": sha, "prompt_version": version,
            "made_by": rows if rows is not None else [{"backend": backend, "model": model, "records": records,
                                                         "valid": records}]}


def test_a_runs_programs_line_names_validation_only_where_made_otherwise() -> None:
    """(mutants: validation named where made alike; a missing validation named as unknown; the generators compared
    in the rows' order; the prompt version left out of the comparison; a run without its train entry read)"""
    a = {"backend": "openai", "model": "gpt-4o", "records": 2, "valid": 2}
    b = {"backend": "offline", "model": "offline-v5", "records": 2, "valid": 1}
    train = _programs("t", rows=[a, b])
    line = prov.run_programs_text({"train": {"programs": train}})
    assert line == "openai gpt-4o: 2 valid of 2; offline offline-v5: 1 valid of 2, prompt v3"
    alike = {"train": {"programs": train}, "val": {"programs": _programs("v", rows=[dict(b, records=9), a])}}
    assert prov.run_programs_text(alike) == line
    other_prompt = {"train": {"programs": train}, "val": {"programs": _programs("v", rows=[a, b], version=4)}}
    assert prov.run_programs_text(other_prompt) == line + " (validation: " + line.replace("v3", "v4") + ")"
    assert prov.run_programs_text({"val": {"programs": train}}).startswith("unknown")


def test_a_runs_earlier_program_sets_are_named_once_each_in_order() -> None:
    """Resumes on other programs: each set the steps before were trained on, once, oldest first; the first of two
    unknown earlier entries is named. (mutants: each entry compared with the run's set, not the next one's; no entry
    compared; the order reversed; the last unknown entry named)"""
    run = {"train": {"programs": _programs("C", model="m3")},
           "earlier": [{"train": {"programs": _programs("A", model="m1")}},
                       {"train": {"programs": _programs("A", model="m1", records=6)}},
                       {"train": {"programs": _programs("B", model="m2")}},
                       {"unknown": "steps 1-3"}, {"unknown": "steps 4-5"}]}
    assert prov.run_programs_text(run) == (
        "openai m3: 4 valid of 4, prompt v3; before a resume on other programs: openai m1: 6 valid of 6, prompt v3; "
        "then openai m2: 4 valid of 4, prompt v3; before a resume: unknown (steps 1-3)")
