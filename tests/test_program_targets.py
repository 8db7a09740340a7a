from pathlib import Path

import pytest

from leap_cli.epic.classes import ClassVocab
from leap_cli.errors import LeapError
from leap_cli.programs.targets import END, IGNORE, TargetVocab, encode_program, flatten_program
from tests.program_helpers import cond, sub

DATA = Path(__file__).parent / "data" / "epic"
CLASSES = Path(__file__).parent / "data" / "epic100"  # the foundation's copy of EPIC's class files


@pytest.fixture(scope="module")
def classes():
    return (ClassVocab.from_csv(CLASSES / "EPIC_100_verb_classes.csv", "verb"),
            ClassVocab.from_csv(CLASSES / "EPIC_100_noun_classes.csv", "noun"))


PROGRAM = {
    "action": {"narration": "wash plate", "verb": "wash", "noun": "plate", "verb_class": 2, "noun_class": 2},
    "pre": [cond("in", "plate", "sink"), cond("dirty", "plate")],
    "post": [cond("clean", "plate"), cond("holding", "right", "plate", neg=True)],
    "steps": [
        sub("pick-up", "plate"),
        {"type": "loop", "until": cond("clean", "plate"), "steps": [sub("scrub", "plate", "sponge")]},
        {"type": "conditional", "if": cond("closed", "tap"), "then": [sub("switch-on", "tap")],
         "else": [sub("wait", "tap")]},
        {"type": "routine", "name": "rinse", "steps": [sub("rinse", "plate", "water"), sub("grasp", "plate")]},
        sub("put", "plate", "rack:drying"),
    ],
}


def test_flatten_rule_order():
    flat = flatten_program(PROGRAM)
    assert [s["verb"] for s in flat] == ["pick-up", "scrub", "switch-on", "rinse", "grasp", "put"]


def test_encode_resolves_synonyms_primitives_and_end(classes):
    verbs, nouns = classes
    vocab = TargetVocab.build([PROGRAM, PROGRAM, {"pre": [cond("open", "fridge")], "post": []}], verbs, nouns, max_steps=16)
    assert vocab.step_verbs[-1] == END and len(vocab.step_verbs) == len(verbs) + 1
    assert vocab.objects[-2:] == ["none", END]
    # most frequent first
    assert vocab.conditions[-1] == "open(fridge)"
    assert "not holding(right,plate)" in vocab.conditions
    enc = encode_program(PROGRAM, vocab)
    take, scrub, turn_on, wash, put, wait = (verbs.resolve(v) for v in ("take", "scrub", "turn-on", "wash", "put", "wait"))
    plate, sponge, tap, water, rack = (nouns.resolve(n) for n in ("plate", "sponge", "tap", "water", "rack:drying"))
    none, right = vocab.object_none, vocab.hands.index("right")
    k = {t: vocab.structure.index(t) for t in ("<step>", "<loop>", "</loop>", "<if>", "<else>", "</if>",
                                               "<call:rinse>", "</routine>")}
    m = [IGNORE] * 4
    # the structure is kept: loop and conditional markers with both branches, the routine as a call
    assert enc["steps"] == [
        [take, plate, none, right, k["<step>"]],
        m + [k["<loop>"]], [scrub, plate, sponge, right, k["<step>"]], m + [k["</loop>"]],
        m + [k["<if>"]], [turn_on, tap, none, right, k["<step>"]], m + [k["<else>"]],
        [wait, tap, none, right, k["<step>"]], m + [k["</if>"]],
        m + [k["<call:rinse>"]], [wash, plate, water, right, k["<step>"]], [take, plate, none, right, k["<step>"]],
        m + [k["</routine>"]],
        [put, plate, rack, right, k["<step>"]], vocab.end_row]
    assert vocab.end_row[:3] == vocab.end_triple and vocab.max_steps == 16
    assert enc["pre"] == [vocab.conditions.index("in(plate,sink)"), vocab.conditions.index("dirty(plate)")]
    assert len(enc["post"]) == 2
    # the marker rows carry their condition; sub-actions their own (none here); one list per row
    assert len(enc["step_pre"]) == len(enc["steps"])
    assert enc["step_pre"][1] == [vocab.conditions.index("clean(plate)")]
    assert enc["step_pre"][4] == [vocab.conditions.index("closed(tap)")]
    assert enc["step_pre"][0] == [] and enc["step_post"][-1] == []


def test_a_conditional_without_else_has_no_else_row(classes):
    """A conditional whose else branch is absent or empty encodes <if> ... </if> alone: an <else> row there would be
    a structure target no program holds, scored against every such prediction."""
    verbs, nouns = classes
    program = {"pre": [], "post": [], "steps": [
        {"type": "conditional", "if": cond("closed", "tap"), "then": [sub("switch-on", "tap")]},
        {"type": "conditional", "if": cond("open", "fridge"), "then": [sub("close", "fridge")], "else": []}]}
    vocab = TargetVocab.build([program], verbs, nouns, max_steps=16)
    kinds = [vocab.structure[row[-1]] for row in encode_program(program, vocab)["steps"]]
    assert kinds == ["<if>", "<step>", "</if>", "<if>", "<step>", "</if>", END]


def test_vocabulary_is_sized_from_the_training_programs(classes):
    verbs, nouns = classes
    vocab = TargetVocab.build([PROGRAM], verbs, nouns)
    assert vocab.max_steps == len(encode_program(PROGRAM, TargetVocab.build([PROGRAM], verbs, nouns, max_steps=99))["steps"])
    assert vocab.max_steps == 15 and vocab.structure[-2:] == ["<call:rinse>", END]
    step = dict(sub("take", "plate"), pre=[cond("visible", "plate")], post=[cond("holding", "right", "plate")])
    small = {"pre": [], "post": [], "steps": [step]}
    v2 = TargetVocab.build([small], verbs, nouns)
    assert v2.max_steps == 2 and "<call:rinse>" not in v2.structure
    assert set(v2.conditions) == {"visible(plate)", "holding(right,plate)"}  # step conditions are in the vocabulary
    enc = encode_program(small, v2)
    assert enc["step_pre"] == [[v2.conditions.index("visible(plate)")], []]
    assert enc["step_post"] == [[v2.conditions.index("holding(right,plate)")], []]
    assert enc["pre"] == [] and enc["post"] == []
    # a routine whose name the training programs never used becomes the generic call token
    enc = encode_program(PROGRAM, v2, max_steps=16)
    assert v2.structure[enc["steps"][9][4]] == "<call>"


def test_truncation_keeps_end_and_manifest_roundtrip(classes):
    verbs, nouns = classes
    vocab = TargetVocab.build([PROGRAM], verbs, nouns, max_steps=3, max_conditions=2)
    assert len(vocab.conditions) == 2
    enc = encode_program(PROGRAM, vocab)
    assert len(enc["steps"]) == 3 and enc["steps"][-1] == vocab.end_row
    again = TargetVocab.from_manifest(vocab.to_manifest(), verbs, nouns)
    assert encode_program(PROGRAM, again) == enc
    assert again.model_program_args() == {"step_verbs": len(verbs) + 1, "objects": len(nouns) + 2,
                                          "conditions": 2, "max_steps": 3, "hands": 6,
                                          "structure": len(vocab.structure)}


def test_unknown_verb_is_an_error(classes):
    verbs, nouns = classes
    vocab = TargetVocab.build([], verbs, nouns)
    bad = {"pre": [], "post": [], "steps": [sub("teleport", "plate")]}
    with pytest.raises(LeapError, match="teleport"):
        encode_program(bad, vocab)
