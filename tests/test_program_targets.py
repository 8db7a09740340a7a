from pathlib import Path

import pytest

from leap_cli.epic.classes import ClassVocab
from leap_cli.errors import LeapError
from leap_cli.programs.targets import END, TargetVocab, encode_program, flatten_program
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
    vocab = TargetVocab.build([PROGRAM, PROGRAM, {"pre": [cond("open", "fridge")], "post": []}], verbs, nouns, max_steps=8)
    assert vocab.step_verbs[-1] == END and len(vocab.step_verbs) == len(verbs) + 1
    assert vocab.objects[-2:] == ["none", END]
    # most frequent first
    assert vocab.conditions[-1] == "open(fridge)"
    assert "not holding(right,plate)" in vocab.conditions
    enc = encode_program(PROGRAM, vocab)
    take, scrub, turn_on, wash, put = (verbs.resolve(v) for v in ("take", "scrub", "turn-on", "wash", "put"))
    plate, sponge, tap, water, rack = (nouns.resolve(n) for n in ("plate", "sponge", "tap", "water", "rack:drying"))
    none = vocab.object_none
    assert enc["steps"] == [[take, plate, none], [scrub, plate, sponge], [turn_on, tap, none], [wash, plate, water],
                            [take, plate, none], [put, plate, rack], vocab.end_triple]
    assert enc["pre"] == [vocab.conditions.index("in(plate,sink)"), vocab.conditions.index("dirty(plate)")]
    assert len(enc["post"]) == 2


def test_truncation_keeps_end_and_manifest_roundtrip(classes):
    verbs, nouns = classes
    vocab = TargetVocab.build([PROGRAM], verbs, nouns, max_steps=3, max_conditions=2)
    assert len(vocab.conditions) == 2
    enc = encode_program(PROGRAM, vocab)
    assert len(enc["steps"]) == 3 and enc["steps"][-1] == vocab.end_triple
    again = TargetVocab.from_manifest(vocab.to_manifest(), verbs, nouns)
    assert encode_program(PROGRAM, again) == enc
    assert again.model_program_args() == {"step_verbs": len(verbs) + 1, "objects": len(nouns) + 2,
                                          "conditions": 2, "max_steps": 3}


def test_unknown_verb_is_an_error(classes):
    verbs, nouns = classes
    vocab = TargetVocab.build([], verbs, nouns)
    bad = {"pre": [], "post": [], "steps": [sub("teleport", "plate")]}
    with pytest.raises(LeapError, match="teleport"):
        encode_program(bad, vocab)
