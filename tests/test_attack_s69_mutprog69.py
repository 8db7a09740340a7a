"""Session 69's mutation run over leap_cli/programs/{targets,vocab,checker,validate,store,provenance}.py: tests that
kill the mutants the suite let live (each asserts behaviour a mutant changed)."""

from pathlib import Path

import pytest

from leap_cli.epic.classes import ClassVocab
from leap_cli.errors import LeapError
from leap_cli.programs.targets import DEFAULT_MAX_CONDITIONS, DEFAULT_MAX_ROUTINES, END, IGNORE, STEP, TargetVocab, encode_program
from leap_cli.programs.validate import Labels
from leap_cli.programs.vocab import resolve_object
from tests.program_helpers import cond, sub

ROOT = Path(__file__).resolve().parent.parent
CLASSES = Path(__file__).parent / "data" / "epic100"


@pytest.fixture(scope="module")
def classes():
    return (ClassVocab.from_csv(CLASSES / "EPIC_100_verb_classes.csv", "verb"),
            ClassVocab.from_csv(CLASSES / "EPIC_100_noun_classes.csv", "noun"))


def _program(steps, pre=(), post=()):
    return {"action": {"narration": "wash plate", "verb": "wash", "noun": "plate"}, "pre": list(pre),
            "post": list(post), "steps": steps}


# ---- targets.py ----

def test_token_lists_that_do_not_end_with_end_are_refused(classes):
    v = TargetVocab.build([], *classes)
    for name in ("step_verbs", "objects", "hands", "structure"):
        m = v.to_manifest()
        m[name] = m[name][:-1]  # END cut off
        with pytest.raises(LeapError, match=name):
            TargetVocab.from_manifest(m)
        m[name] = []
        with pytest.raises(LeapError, match=name):
            TargetVocab.from_manifest(m)


def test_a_vocabulary_read_back_without_class_files_encodes_by_key_and_equals_the_built_one(classes):
    verbs, nouns = classes
    prog = _program([sub("take", "plate", "sponge"), sub("put", "plate")], pre=[cond("dirty", "plate")])
    built = TargetVocab.build([prog], verbs, nouns)
    back = TargetVocab.from_manifest(built.to_manifest())  # no class files: the keys alone
    assert back == built
    assert encode_program(prog, back) == encode_program(prog, built)
    with pytest.raises(LeapError, match="does not resolve"):
        back.verb_id(END)  # END is no verb
    with pytest.raises(LeapError, match="does not resolve"):
        back.object_id(END)


def test_object_synonyms_resolve_through_the_class_files(classes):
    verbs, nouns = classes
    v = TargetVocab.build([], verbs, nouns)
    assert v.object_id("chopping board") == v.objects.index("board:chopping")
    assert v.object_id("kitchen towel") == v.objects.index(nouns.keys[resolve_object("kitchen towel", nouns)])
    with pytest.raises(LeapError, match="zorblax"):
        v.object_id("zorblax")


def test_conditions_are_ranked_by_frequency_not_by_name(classes):
    verbs, nouns = classes
    rare, common = cond("clean", "plate"), cond("wet", "plate")  # 'clean' sorts first, 'wet' is said more often
    progs = [_program([sub("wash", "plate")], pre=[rare], post=[common]), _program([sub("wash", "plate")], post=[common])]
    v = TargetVocab.build(progs, verbs, nouns)
    assert v.conditions == ["wet(plate)", "clean(plate)"]
    assert TargetVocab.build(progs, verbs, nouns, max_conditions=1).conditions == ["wet(plate)"]


def test_a_condition_outside_the_vocabulary_is_dropped_and_a_repeated_one_counted_once(classes):
    verbs, nouns = classes
    v = TargetVocab.build([_program([sub("wash", "plate")], pre=[cond("dirty", "plate")])], verbs, nouns)
    step = {**sub("wash", "plate"), "pre": [cond("dirty", "plate"), cond("full", "sink"), cond("dirty", "plate")]}
    enc = encode_program(_program([step], pre=[cond("full", "sink")]), v)
    assert enc["step_pre"][0] == [v.conditions.index("dirty(plate)")]
    assert enc["pre"] == []


def test_decode_row_of_narrower_and_out_of_range_rows(classes):
    verbs, nouns = classes
    v = TargetVocab.build([], verbs, nouns)
    take, tap = v.verb_id("take"), v.object_id("tap")
    right = v.hands.index("right")
    assert v.decode_row([take, tap, v.object_none, right]) == "take(tap) [right]"  # no structure column: a step
    assert v.decode_row([take, tap, v.object_none]) == "take(tap)"
    assert v.decode_row([take, tap, v.object_none, right, len(v.structure)]) == "take(tap) [right]"  # unknown kind
    assert v.decode_row([IGNORE] * 4 + [v.structure.index("<loop>")]) == "<loop>"
    assert v.decode_row([take, tap, v.object_none, v.hands.index("left"), v.step_kind]) == "take(tap) [left]"
    assert v.decode_row([take, tap, v.object_none, len(v.hands), v.step_kind]) == "take(tap)"  # no such hand


def test_build_skips_entries_that_hold_no_program(classes):
    verbs, nouns = classes
    prog = _program([sub("take", "plate")], pre=[cond("dirty", "plate")])
    assert TargetVocab.build([None, {}, prog], verbs, nouns) == TargetVocab.build([prog], verbs, nouns)


def test_the_documented_default_caps_are_the_code_s():
    import inspect

    doc = (ROOT / "docs" / "programs.md").read_text()
    assert f"max_conditions={DEFAULT_MAX_CONDITIONS}, max_routines={DEFAULT_MAX_ROUTINES})" in doc
    params = inspect.signature(TargetVocab.build).parameters
    assert (params["max_conditions"].default, params["max_routines"].default) == (DEFAULT_MAX_CONDITIONS,
                                                                                  DEFAULT_MAX_ROUTINES)


# ---- vocab.py ----

def test_condition_string_keeps_hands_as_hands_and_reads_extra_or_unknown_args_as_objects(classes, tmp_path):
    from leap_cli.programs.vocab import condition_string

    nouns_csv = tmp_path / "nouns.csv"  # a class file where a hand's name is also an object's synonym
    nouns_csv.write_text('id,key,instances,category\n0,hand,"[\'hand\', \'left\']",hand\n'
                         '1,board:chopping,"[\'board:chopping\', \'chopping board\']",utensils\n')
    nouns = ClassVocab.from_csv(nouns_csv, "noun")
    assert condition_string(cond("holding", "left", "chopping board"), nouns) == "holding(left,board:chopping)"
    assert condition_string(cond("in", "left", "chopping board"), nouns) == "in(hand,board:chopping)"
    # an unknown predicate, or more args than the predicate takes: the args are objects, nothing raises
    assert condition_string(cond("shiny", "chopping board"), nouns) == "shiny(board:chopping)"
    assert condition_string(cond("open", "chopping board", "left"), nouns) == "open(board:chopping,hand)"
    assert condition_string(cond("open", "chopping board", neg=True), nouns) == "not open(board:chopping)"


def test_an_object_of_several_words_resolves_whole_first_then_by_its_head_noun(classes):
    from leap_cli.programs.vocab import object_key

    verbs, nouns = classes
    assert nouns.resolve("dirty plate") is None  # (only the head noun resolves)
    assert resolve_object("dirty plate", nouns) == nouns.resolve("plate")
    assert object_key("dirty plate", nouns) == "plate"
    # a whole form that is a class of its own is not read as its head noun's
    assert nouns.resolve("kitchen towel") is not None and nouns.resolve("kitchen towel") != nouns.resolve("towel")
    assert resolve_object("kitchen towel", nouns) == nouns.resolve("kitchen towel")
    assert resolve_object("zorblax thing", nouns) is None
    assert object_key("Zorblax", nouns) == "zorblax" and object_key("Zorblax", None) == "zorblax"


# ---- validate.py ----

def _step(verb, a, b=None, pre=(), post=(), hand="right"):
    return {**sub(verb, a, b), "hand": hand, "pre": list(pre), "post": list(post)}


def _findings(classes, steps, pre=(), post=()):
    from leap_cli.programs.validate import validate_semantics

    return {(f.pointer, f.message) for f in validate_semantics(_program(steps, pre, post), *classes)}


def test_holding_with_both_hands_needs_both_hands(classes):
    bad = _findings(classes, [_step("take", "plate", pre=[cond("holding", "both", "plate")])])
    assert [p for p, _ in bad] == ["/steps/0/pre/0"]
    ok = _findings(classes, [_step("take", "plate", pre=[cond("holding", "both", "plate")])],
                   pre=[cond("holding", "left", "plate"), cond("holding", "right", "plate")])
    assert ok == set()
    one = _findings(classes, [_step("take", "plate", pre=[cond("holding", "both", "plate")])],
                    pre=[cond("holding", "left", "plate")])
    assert [p for p, _ in one] == ["/steps/0/pre/0"]


def test_an_empty_then_branch_is_a_finding_even_with_an_else(classes):
    steps = [{"type": "conditional", "if": cond("dirty", "plate"), "then": [], "else": [_step("wash", "plate")]}]
    assert ("/steps/0/then", "empty then branch") in _findings(classes, steps)


def test_objects_of_a_step_precondition_are_checked_against_the_class_files(classes):
    f = _findings(classes, [_step("wash", "plate", pre=[cond("holding", "right", "zorblax", neg=True)])])
    assert [p for p, _ in f] == ["/steps/0/pre/0/args/1"] and "zorblax" in next(iter(f))[1]


def test_the_steps_after_an_empty_loop_are_still_checked(classes):
    f = _findings(classes, [{"type": "loop", "until": cond("clean", "plate"), "steps": []}, _step("frobnicate", "plate")])
    assert {p for p, _ in f} >= {"/steps/0/steps", "/steps/1/verb"}


def test_a_program_without_any_sub_action_is_a_finding(classes):
    steps = [{"type": "conditional", "if": cond("dirty", "plate"), "then": [], "else": []}]
    assert ("/steps", "the program has no sub-action") in _findings(classes, steps)


def test_a_step_precondition_that_contradicts_itself_is_said(classes):
    f = _findings(classes, [_step("wash", "plate", pre=[cond("dirty", "plate"), cond("clean", "plate")])],
                  pre=[cond("dirty", "plate")])
    assert any(p == "/steps/0/pre/1" and "contradicts /steps/0/pre/0" in m for p, m in f)



def test_a_release_with_both_hands_frees_each_hand(classes):
    steps = [_step("put", "plate", hand="both", pre=[cond("holding", "both", "plate")],
                   post=[cond("holding", "both", "plate", neg=True)]),
             _step("take", "cup", pre=[cond("holding", "left", "plate", neg=True),
                                       cond("holding", "either", "plate", neg=True)])]
    assert _findings(classes, steps, pre=[cond("holding", "both", "plate")]) == set()
    either = [_step("put", "plate", post=[cond("holding", "either", "plate", neg=True)]),
              _step("take", "cup", pre=[cond("holding", "right", "plate", neg=True)])]
    assert _findings(classes, either, pre=[cond("holding", "right", "plate")]) == set()


def test_the_else_branch_is_checked(classes):
    steps = [{"type": "conditional", "if": cond("dirty", "plate"), "then": [_step("wash", "plate")],
              "else": [_step("frobnicate", "plate")]}]
    assert {p for p, _ in _findings(classes, steps)} == {"/steps/0/else/0/verb"}


def test_the_sub_action_limit_is_inclusive(classes):
    from leap_cli.programs.validate import validate_semantics

    prog = _program([_step("wash", "plate")] * 3)
    assert validate_semantics(prog, *classes, max_sub_actions=3) == []
    assert [f.pointer for f in validate_semantics(prog, *classes, max_sub_actions=2)] == ["/steps"]


def test_each_pair_of_class_files_resolves_with_its_own_verbs(classes, tmp_path):
    from leap_cli.programs.validate import validate_semantics

    verbs, nouns = classes
    few = tmp_path / "verbs.csv"  # the same nouns, other verbs (no 'wash')
    few.write_text('id,key,instances,category\n0,take,"[\'take\', \'grab\']",retrieve\n')
    other = ClassVocab.from_csv(few, "verb")
    prog = _program([_step("wash", "plate")])
    prog["action"] = {"narration": "take plate", "verb": "take", "noun": "plate"}
    assert validate_semantics(prog, verbs, nouns) == []
    assert [f.pointer for f in validate_semantics(prog, other, nouns)] == ["/steps/0/verb"]
    assert validate_semantics(prog, verbs, nouns) == []

# ---- store.py ----

def _store_args():
    return dict(backend="openai", model="m", prompt_hash="p", cache_key="k", round=0, response="{}", latency=0.1,
                attempts=1, cached=False, outcome="valid")


def test_a_call_keeps_both_token_counts_and_a_missing_one_is_zero(tmp_path):
    from leap_cli.programs.store import ProgramStore

    with ProgramStore(tmp_path / "cache.sqlite") as s:
        s.log_call(narration_id="a", usage={"prompt_tokens": 5, "completion_tokens": 7}, **_store_args())
        s.log_call(narration_id="b", usage={}, **_store_args())
        rows = {r["narration_id"]: (r["prompt_tokens"], r["completion_tokens"]) for r in s.calls()}
    assert rows == {"a": (5, 7), "b": (0, 0)}


def test_a_spend_added_without_commit_false_is_in_the_database_at_once(tmp_path):
    from leap_cli.programs.store import ProgramStore

    out = tmp_path / "programs" / "val.jsonl"
    s = ProgramStore(tmp_path / "cache.sqlite")
    try:
        s.add_spend(out, 0.25, {"prompt_tokens": 10, "completion_tokens": 4})
        other = ProgramStore(tmp_path / "cache.sqlite")  # another process's view: what is on disk
        try:
            assert other.spent(out) == {"cost": 0.25, "prompt_tokens": 10, "completion_tokens": 4, "requests": 1}
        finally:
            other.close()
    finally:
        s.close()


def test_a_valid_program_with_no_condition_anywhere_keeps_its_targets(classes):
    """The brief's known issue ("programs stored valid with neither open nor closed conditions lose their targets"):
    such a program stays valid on re-validation and encodes to its full token sequence, alone in its vocabulary or
    beside programs with conditions."""
    from leap_cli.programs.report import revalidated
    from leap_cli.shards.writer import ProgramTargets

    verbs, nouns = classes
    bare = _program([_step("take", "plate"), {"type": "loop", "until": None, "steps": [_step("wash", "plate")]},
                     {"type": "conditional", "if": None, "then": [_step("put", "plate")], "else": []}])
    bare["steps"][1].pop("until")
    bare["steps"][2].pop("if")
    plain = _program([_step("take", "plate"), _step("put", "plate")])
    plain["action"].update(verb_class=verbs.resolve("wash"), noun_class=nouns.resolve("plate"))
    other = _program([_step("wash", "plate", post=[cond("clean", "plate")])], post=[cond("clean", "plate")])
    recs, failures = revalidated([{"narration_id": "x", "status": "valid", "program": plain}], verbs, nouns)
    assert failures == [] and recs[0]["status"] == "valid"
    for programs in ([plain], [plain, other]):
        targets = ProgramTargets(TargetVocab.build(programs, verbs, nouns))
        enc = targets.encode(plain, "x")
        assert enc is not None and targets.failed == [] and targets.cut == []
        assert [r[0] for r in enc["steps"]] == [targets.vocab.verb_id("take"), targets.vocab.verb_id("put"),
                                                targets.vocab.verb_end]
        assert enc["pre"] == enc["post"] == [] and enc["step_pre"] == enc["step_post"] == [[], [], []]
    # markers whose condition is missing keep their rows (no condition), the sequence is not cut
    v = TargetVocab.build([bare], verbs, nouns)
    enc = encode_program(bare, v)
    kinds = [v.structure[r[4]] for r in enc["steps"]]
    assert kinds == [STEP, "<loop>", STEP, "</loop>", "<if>", STEP, "</if>", END] and v.max_steps == len(kinds)


def test_a_stopped_run_s_journaled_spend_is_taken_whole_and_summed(tmp_path):
    import json

    from leap_cli.programs.store import ProgramStore

    from tests.test_programs_store_journal import journal_folder

    path = tmp_path / "cache.sqlite"
    key, folder = journal_folder(path)
    (folder / "1-dead-1.jsonl").write_text("".join(json.dumps(["l", key, 0.25, p, c, 1]) + "\n"
                                                   for p, c in ((7, 3), (5, 2))))
    s = ProgramStore(path)
    try:
        assert s.spent("val.jsonl") == {"cost": 0.5, "prompt_tokens": 12, "completion_tokens": 5, "requests": 2}
    finally:
        s.close()


def test_token_limits_are_kept_per_output_lowest_first(tmp_path):
    from leap_cli.programs.store import ProgramStore

    with ProgramStore(tmp_path / "cache.sqlite") as s:
        for limit in (800, 200, 800):
            s.note_token_limit(tmp_path / "val.jsonl", limit)
        s.note_token_limit(tmp_path / "train.jsonl", 50)
        assert s.token_limits(tmp_path / "val.jsonl") == [200, 800]
        assert s.token_limits(tmp_path / "test.jsonl") == []


def test_two_journaled_replies_of_the_same_text_are_both_taken(tmp_path):
    import json

    from leap_cli.programs.store import ProgramStore

    path = tmp_path / "cache.sqlite"
    ProgramStore(path).close()
    folder = tmp_path / "cache.sqlite.unwritten"
    folder.mkdir()
    rows = [["c", k, "the same reply", 7, 3, "m", 1.0, None, 0] for k in ("k1", "k2")]
    (folder / "1-dead-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = ProgramStore(path)
    try:
        assert s.replayed == 2
        assert s.get("k1")[0] == s.get("k2")[0] == "the same reply"
    finally:
        s.close()



def test_paid_turns_are_the_paid_replies_of_the_backend_and_model_up_to_the_round(tmp_path):
    from leap_cli.programs.store import ProgramStore

    base = {k: v for k, v in _store_args().items() if k not in ("round", "cached", "response", "backend", "model")}
    with ProgramStore(tmp_path / "cache.sqlite") as s:
        for nid, rnd, cached, response, model in (("a", 0, False, "{}", "m"), ("a", 1, False, "{}", "m"),
                                                  ("a", 2, False, "{}", "m"), ("b", 0, True, "{}", "m"),
                                                  ("c", 0, False, None, "m"), ("d", 0, False, "{}", "other")):
            s.log_call(narration_id=nid, backend="openai", model=model, round=rnd, cached=cached, response=response,
                       usage={"prompt_tokens": 10 + rnd, "completion_tokens": 3}, error="bad" if rnd else None,
                       **base)
        turns = s.paid_turns("openai", "m", 1)
        assert sorted(turns) == [("a", 0, 10, 3, None), ("a", 1, 11, 3, 3)]
        assert s.last_paid_tokens("openai", "m") == 12 and s.last_paid_tokens("openai", "x") is None


@pytest.mark.parametrize("error, says", [("disk I/O error", "nothing was asked yet"),
                                         ("database is locked", "run the same command again")])
def test_a_token_limit_that_cannot_be_written_says_why_and_what_is_kept(tmp_path, error, says):
    import sqlite3

    from leap_cli.programs.store import ProgramStore

    class Failing:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def execute(self, *a):
            raise sqlite3.OperationalError(error)

    s = ProgramStore(tmp_path / "cache.sqlite")
    try:
        s._wdb = Failing()
        with pytest.raises(LeapError) as e:
            s.note_token_limit(tmp_path / "val.jsonl", 100)
        assert error in e.value.message and says in str(e.value.fix)
        if "locked" in error:  # a lock is no damage: nothing says to move the cache aside
            assert "another process kept it locked" in e.value.message and "move it aside" not in str(e.value.fix)
    finally:
        s._wdb = s.db
        s.close()



def test_missing_token_counts_are_zero_in_the_cache_the_ledger_and_a_batch_spend(tmp_path):
    from leap_cli.programs.store import ProgramStore

    out = tmp_path / "val.jsonl"
    with ProgramStore(tmp_path / "cache.sqlite") as s:
        assert s.spent(out) == {"cost": 0.0, "prompt_tokens": 0, "completion_tokens": 0, "requests": 0}
        s.put("k0", "reply", {}, "m")
        s.put("k1", "reply", {"prompt_tokens": 0, "completion_tokens": 0}, "m")
        assert s.get("k0")[1] == s.get("k1")[1] == {"prompt_tokens": 0, "completion_tokens": 0}
        s.add_spend(out, 0.5, {})
        assert s.spent(out) == {"cost": 0.5, "prompt_tokens": 0, "completion_tokens": 0, "requests": 1}
        s.add_batch_spend(out, [("r1", 0.25, {}), (None, 0.25, {"completion_tokens": 2})])
        assert s.spent(out) == {"cost": 1.0, "prompt_tokens": 0, "completion_tokens": 2, "requests": 3}


def test_a_store_keeps_no_journal_unless_asked(tmp_path):
    from leap_cli.programs.store import ProgramStore

    s = ProgramStore(tmp_path / "cache.sqlite", commit_every=3600)
    try:
        s.put("k", "reply", {"prompt_tokens": 1}, "m", commit=False)
        s.add_spend(tmp_path / "val.jsonl", 0.1, {}, commit=False)
        assert not (tmp_path / "cache.sqlite.unwritten").exists()
    finally:
        s.close()


def test_replay_takes_the_files_after_a_locked_one_and_skips_rows_of_another_shape(tmp_path, caplog):
    import fcntl
    import json
    import logging

    from leap_cli.programs.store import ProgramStore

    path = tmp_path / "cache.sqlite"
    ProgramStore(path).close()
    folder = tmp_path / "cache.sqlite.unwritten"
    folder.mkdir()
    row = ["c", "k", "reply", 7, 3, "m", 1.0, None, 0]
    (folder / "1-live-1.jsonl").write_text(json.dumps(row) + "\n")  # its process still runs (locked)
    (folder / "2-dead-1.jsonl").write_text(json.dumps([*row[:1], "k2", *row[2:]]) + "\n"
                                           + json.dumps([*row[:1], 5, *row[2:]]) + "\n")  # (a key that is no text)
    with open(folder / "1-live-1.jsonl") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with caplog.at_level(logging.INFO, logger="leap_cli.programs.store"):
            s = ProgramStore(path)
        try:
            assert s.replayed == 1 and s.get("k2")[0] == "reply" and s.get("k") is None and s.get(5) is None
        finally:
            s.close()
    assert "took 1 reply of a stopped run" in caplog.text
    assert sorted(p.name for p in folder.iterdir()) == ["1-live-1.jsonl"]


def test_labels_are_values():
    assert Labels(1, 2) == Labels(1, 2) and len({Labels(1, 2), Labels(1, 2), Labels()}) == 2
    with pytest.raises(AttributeError):
        Labels(1, 2).verb_class = 3

# ---- provenance.py ----

def test_descriptor_settings_leave_out_the_split_and_the_model_files(tmp_path):
    import json

    from leap_cli.io import settings_path
    from leap_cli.programs.provenance import descriptor_settings

    out = tmp_path / "descriptors" / "val.jsonl"
    out.parent.mkdir()
    assert descriptor_settings(out) is None
    settings_path(out).write_text(json.dumps({"split": "val", "files": {"model": [1, 2]}, "frames": 8, "model": "x"}))
    assert descriptor_settings(out) == {"frames": 8, "model": "x"}
    settings_path(out).write_text(json.dumps({"frames": 8}))  # (neither kept: nothing to leave out)
    assert descriptor_settings(out) == {"frames": 8}


def test_programs_text_of_a_build_without_a_program_file_and_a_run_trained_on_other_generators():
    from leap_cli.programs.provenance import programs_text, run_programs_text

    assert programs_text({"records": 0, "valid": 0, "made_by": []}).startswith("none (")
    assert programs_text({"records": 2, "valid": 1, "made_by": []}) == "none"  # records, but nobody said who made them
    offline = {"records": 8, "valid": 8, "made_by": [{"backend": "offline", "model": "offline-v5", "records": 8,
                                                      "valid": 8}]}
    llm = {"records": 8, "valid": 7, "made_by": [{"backend": "openai", "model": "gpt-4o-mini", "records": 8,
                                                  "valid": 7}], "prompt_version": 3}
    same = run_programs_text({"train": {"programs": offline}, "val": {"programs": dict(offline, valid=6)}})
    assert same == "offline offline-v5: 8 valid of 8"  # made alike: the counts alone differ
    other = run_programs_text({"train": {"programs": offline}, "val": {"programs": llm}})
    assert other == "offline offline-v5: 8 valid of 8 (validation: openai gpt-4o-mini: 7 valid of 8, prompt v3)"
    unknown = run_programs_text({"train": {"programs": {"records": 8, "valid": 8, "made_by": None}},
                                 "val": {"programs": llm}})
    assert "(validation: openai gpt-4o-mini" in unknown
    batch = {**llm, "made_by": [{**llm["made_by"][0], "backend": "openai-batch"}]}  # one model, another backend
    assert "(validation: openai-batch gpt-4o-mini" in run_programs_text({"train": {"programs": llm},
                                                                         "val": {"programs": batch}})


# ---- checker.py ----

def _reply(classes):
    import json

    verbs, nouns = classes
    text = json.dumps(_program([_step("wash", "plate")]))
    return text, Labels(verbs.resolve("wash"), nouns.resolve("plate"))


def test_a_stuck_checker_is_said_once_and_a_killed_one_with_its_exit_code(classes, monkeypatch, caplog):
    import asyncio
    import logging
    import os
    import signal

    from leap_cli.programs import checker as checker_module
    from leap_cli.programs.reply import verify_reply

    verbs, nouns = classes
    text, labels = _reply(classes)
    want = verify_reply(text, verbs, nouns, labels, 4)
    monkeypatch.setattr(checker_module, "STALL_S", 1.5)  # (the first check, answered by the child, is well within it)

    async def run(stall: bool):
        checker = checker_module.RemoteChecker(verbs, nouns, 4)
        await checker.start()
        assert checker.ready
        first = await checker.check(text, labels)  # (answered by the child)
        if stall:
            os.kill(checker.transport.get_pid(), signal.SIGSTOP)
            got = await asyncio.wait_for(checker.check(text, labels), 10)
        else:
            checker.transport.kill()
            for _ in range(200):
                if checker.ended:
                    break
                await asyncio.sleep(0.05)
            got = await checker.check(text, labels)
        await checker.aclose()
        return first, got, checker

    with caplog.at_level(logging.WARNING, logger="leap_cli.programs.checker"):
        first, got, checker = asyncio.run(run(True))
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert first == got == want and checker.remote == 1 and checker.local == 1
    assert len(said) == 1 and "answered no check" in said[0], said  # the stop, not also "the process ended"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="leap_cli.programs.checker"):
        first, got, checker = asyncio.run(run(False))
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert first == got == want and checker.remote == 1 and checker.local == 1
    assert len(said) == 1 and f"exit code {-signal.SIGKILL}" in said[0], said
