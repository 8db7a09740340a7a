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


def test_program_post_is_encoded_from_post_not_pre(classes):
    """The program-level ``post`` target holds the ids of the program's post-conditions: one read from ``pre``
    trains the model to predict the start state as the goal."""
    verbs, nouns = classes
    program = {"pre": [cond("in", "plate", "sink")],
               "post": [cond("clean", "plate"), cond("holding", "right", "plate", neg=True)],
               "steps": [sub("wash", "plate")]}
    vocab = TargetVocab.build([program], verbs, nouns)
    enc = encode_program(program, vocab)
    assert enc["pre"] == [vocab.conditions.index("in(plate,sink)")]
    assert sorted(enc["post"]) == sorted([vocab.conditions.index("clean(plate)"),
                                          vocab.conditions.index("not holding(right,plate)")])


def test_end_row_holds_the_last_id_of_every_vocabulary(classes):
    """END is the last id of each target vocabulary, the hand column too (not "none", a real hand value)."""
    verbs, nouns = classes
    vocab = TargetVocab.build([PROGRAM], verbs, nouns)
    v, a, b, hand, kind = vocab.end_row
    assert hand == vocab.hands.index(END) == len(vocab.hands) - 1 != vocab.hands.index("none")
    assert (v, a, b, kind) == (len(vocab.step_verbs) - 1, len(vocab.objects) - 1, len(vocab.objects) - 1,
                               len(vocab.structure) - 1)


def test_a_sub_action_without_hand_encodes_as_none(classes):
    """A sub-action whose hand is None or absent is the "none" hand, not a guessed "right"."""
    verbs, nouns = classes
    no_hand = dict(sub("take", "plate"), hand=None)
    absent = {k: v for k, v in sub("take", "plate").items() if k != "hand"}
    program = {"pre": [], "post": [], "steps": [no_hand, absent]}
    vocab = TargetVocab.build([program], verbs, nouns)
    rows = encode_program(program, vocab)["steps"]
    assert rows[0][3] == rows[1][3] == vocab.hands.index("none")
    assert vocab.hand_id(None) == vocab.hands.index("none")


def test_default_hands_order_is_fixed():
    """A vocabulary (or an older manifest) without ``hands`` gets left, right, both, either, none, END in this
    order: another order would shift the hand ids a trained checkpoint predicts."""
    expected = ["left", "right", "both", "either", "none", END]
    assert TargetVocab(["take", END], ["plate", "none", END], []).hands == expected
    manifest = {"max_steps": 4, "step_verbs": ["take", END], "objects": ["plate", "none", END], "conditions": []}
    assert TargetVocab.from_manifest(manifest).hands == expected


def test_sized_max_steps_is_capped_at_48(classes):
    """A very long training program sizes the vocabulary to at most 48 rows (MAX_STEPS_CAP), and its target is
    cut there with END last."""
    from leap_cli.programs.targets import MAX_STEPS_CAP
    verbs, nouns = classes
    long = {"pre": [], "post": [], "steps": [sub("take", "plate")] * 60}
    vocab = TargetVocab.build([long], verbs, nouns)
    assert MAX_STEPS_CAP == 48 and vocab.max_steps == 48
    rows = encode_program(long, vocab)["steps"]
    assert len(rows) == 48 and rows[-1] == vocab.end_row


def _subset(kind, keys):
    return ClassVocab(kind, dict(keys), {i: [] for i in keys}, {i: "" for i in keys})


def test_subset_class_file_keeps_the_epic_class_id_as_index():
    """With a class file that lists only some ids, the index stays the EPIC class id: the gaps hold
    "<unused-ID>", so "knife" (class 5) is object 5, not 2."""
    verbs = _subset("verb", {0: "take", 3: "wash"})
    nouns = _subset("noun", {0: "tap", 1: "spoon", 5: "knife"})
    vocab = TargetVocab.build([], verbs, nouns)
    assert vocab.objects == ["tap", "spoon", "<unused-2>", "<unused-3>", "<unused-4>", "knife", "none", END]
    assert vocab.objects[5] == "knife" and vocab.object_id("knife") == 5 and len(vocab.objects) == 5 + 1 + 2
    assert vocab.step_verbs == ["take", "<unused-1>", "<unused-2>", "wash", END] and vocab.verb_id("wash") == 3


@pytest.mark.parametrize("step", [sub(END, "plate"), sub("take", END), sub("put", "plate", END)])
def test_end_is_not_a_step_verb_or_object(classes, step):
    """"<end>" written as a verb or object in a program is refused: encoding it would put END mid-sequence."""
    verbs, nouns = classes
    vocab = TargetVocab.build([], verbs, nouns)
    with pytest.raises(LeapError, match="<end>"):
        encode_program({"pre": [], "post": [], "steps": [step]}, vocab)


def test_equally_frequent_conditions_are_ordered_alphabetically(classes):
    """Conditions with the same count are ordered by name, so the vocabulary (and its ids) does not depend on the
    order of the programs or of their conditions."""
    verbs, nouns = classes
    p1 = {"pre": [cond("open", "fridge"), cond("closed", "tap")], "post": [], "steps": [sub("take", "plate")]}
    p2 = {"pre": [cond("visible", "plate")], "post": [cond("dirty", "plate")], "steps": [sub("take", "plate")]}
    vocab = TargetVocab.build([p1, p2], verbs, nouns)
    assert vocab.conditions == ["closed(tap)", "dirty(plate)", "open(fridge)", "visible(plate)"]
    assert TargetVocab.build([p2, p1], verbs, nouns).conditions == vocab.conditions


def test_routine_names_are_capped_most_frequent_first(classes):
    """``max_routines`` keeps that many ``<call:NAME>`` tokens: the most frequent, ties by name."""
    verbs, nouns = classes

    def prog(name):
        return {"pre": [], "post": [], "steps": [{"type": "routine", "name": name, "steps": [sub("take", "plate")]}]}

    programs = [prog("r2"), prog("r1"), prog("r0"), prog("r2")]
    vocab = TargetVocab.build(programs, verbs, nouns, max_routines=2)
    assert [k for k in vocab.structure if k.startswith("<call:")] == ["<call:r2>", "<call:r0>"]
    assert vocab.structure[-1] == END


def test_empty_object_b_is_none(classes):
    """An empty ``object_b`` ("") is "no object B", like None."""
    verbs, nouns = classes
    vocab = TargetVocab.build([], verbs, nouns)
    assert vocab.object_id("") == vocab.object_id(None) == vocab.object_none
    row = encode_program({"pre": [], "post": [], "steps": [sub("take", "plate", "")]}, vocab)["steps"][0]
    assert row[2] == vocab.object_none


def test_max_steps_below_one_is_refused(classes):
    """A target must hold at least the END row: a vocabulary of max_steps 0, or a negative limit, is an error, not
    an empty or END-less target."""
    verbs, nouns = classes
    program = {"pre": [], "post": [], "steps": [sub("take", "plate")]}
    with pytest.raises(LeapError, match="at least 1"):
        encode_program(program, TargetVocab.build([program], verbs, nouns, max_steps=0))
    for limit in (0, -1):  # (an explicit 0 fell back to the vocabulary's limit)
        with pytest.raises(LeapError, match="at least 1"):
            encode_program(program, TargetVocab.build([program], verbs, nouns), max_steps=limit)
    assert encode_program(program, TargetVocab.build([program], verbs, nouns), max_steps=1)["steps"] == [
        TargetVocab.build([program], verbs, nouns).end_row]


def test_decode_row_shows_end_alone(classes):
    """A row whose verb is END reads "<end>", not "<end>(tap)": the END row, a predicted <step> row with the END
    verb and a former triple row."""
    verbs, nouns = classes
    vocab = TargetVocab.build([PROGRAM], verbs, nouns)
    tap, right = vocab.object_id("tap"), vocab.hands.index("right")
    assert vocab.decode_row(vocab.end_row) == END
    assert vocab.decode_row([vocab.verb_end, tap, vocab.object_none, right, vocab.step_kind]) == END
    assert vocab.decode_row(vocab.end_triple) == END
    assert vocab.decode_row([vocab.verb_id("take"), tap, vocab.object_none, right, vocab.step_kind]) == "take(tap) [right]"
