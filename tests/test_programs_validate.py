"""Schema, semantic validation, exemplar library, prompts, the offline generator and the CLI of the programs stage."""

import copy
import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from typer.testing import CliRunner

from leap_cli.resources import resource_dir
from leap_cli.cli import app
from leap_cli.epic.annotations import Segment, read_segments
from leap_cli.epic.classes import ClassVocab
from leap_cli.errors import LeapError
from leap_cli.programs.offline import OfflineError, offline_program
from leap_cli.programs.prompt import ClipInfo, PromptBuilder, clip_info, load_exemplars, load_system_prompt, \
    narration_record, select_exemplars
from leap_cli.programs.schema import load_schema, strict_schema, validate_program
from leap_cli.programs.validate import Labels, check_program, validate_semantics
from tests.program_helpers import excerpt_annotations

DATA = Path(__file__).parent / "data" / "epic"
CLASSES = Path(__file__).parent / "data" / "epic100"  # the foundation's copy of EPIC's class files


@pytest.fixture(scope="module")
def verbs():
    return ClassVocab.from_csv(CLASSES / "EPIC_100_verb_classes.csv", "verb")


@pytest.fixture(scope="module")
def nouns():
    return ClassVocab.from_csv(CLASSES / "EPIC_100_noun_classes.csv", "noun")


@pytest.fixture(scope="module")
def exemplars():
    return load_exemplars()


def C(p, *a, neg=False):
    return {"predicate": p, "args": list(a), "negated": neg}


def S(verb, a, b=None, pre=(), post=(), hand="right"):
    return {"type": "sub_action", "verb": verb, "object_a": a, "object_b": b, "hand": hand, "pre": list(pre),
            "post": list(post), "purpose": ""}


def prog(steps, pre=(), post=(), verb="wash", noun="plate"):
    return {"action": {"narration": f"{verb} {noun}", "verb": verb, "noun": noun, "verb_class": None, "noun_class": None},
            "pre": list(pre), "post": list(post), "steps": steps}


def messages(findings):
    return [(f.pointer, f.message) for f in findings]


# ---- exemplar library ----

def test_every_exemplar_is_valid(exemplars, verbs, nouns):
    assert len(exemplars) >= 30
    assert len({e.verb_class for e in exemplars}) >= 20
    strict = Draft202012Validator(strict_schema())
    kinds = set()
    for e in exemplars:
        a = e.program["action"]
        assert a["verb_class"] == verbs.resolve(a["verb"]) and a["noun_class"] == nouns.resolve(a["noun"]), e.id
        assert check_program(e.program, verbs, nouns, Labels(a["verb_class"], a["noun_class"])) == [], e.id
        assert not list(strict.iter_errors(e.program)), e.id
        kinds |= {s["type"] for s in e.program["steps"]}
    assert {"loop", "conditional", "routine"} <= kinds


# ---- schema ----

def test_strict_variant_follows_structured_outputs_rules():
    Draft202012Validator.check_schema(load_schema())
    strict = strict_schema()
    Draft202012Validator.check_schema(strict)
    text = json.dumps(strict)
    for kw in ("prefixItems", "minItems", "maxItems", "pattern", "minLength", '"$schema"'):
        assert kw not in text

    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "object":
                assert node["additionalProperties"] is False
                assert sorted(node["required"]) == sorted(node["properties"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(strict)
    # the optional fields of a sub-action became nullable
    assert {"type": "null"} in strict["$defs"]["sub_action"]["properties"]["purpose"]["anyOf"]


def test_schema_findings_name_the_place(exemplars):
    p = copy.deepcopy(next(e.program for e in exemplars if e.id == "wash-plate"))
    p["steps"][2]["steps"][0]["type"] = "jump"
    p["pre"][0]["predicate"] = "inside"
    p["steps"][0]["hand"] = "middle"
    p["post"][0]["args"] = ["plate", "sink"]
    got = dict(messages(validate_program(p)))
    assert "/steps/2/steps/0/type" in got and "jump" in got["/steps/2/steps/0/type"]
    assert "inside" in got["/pre/0/predicate"]
    assert "middle" in got["/steps/0/hand"]
    assert got["/post/0/args"] == "has 2 items, more than the 1 allowed"
    assert validate_program([1])[0].pointer == ""


def test_nesting_deeper_than_three_is_refused():
    inner = S("wash", "plate", post=[C("clean", "plate")])
    p = prog([{"type": "loop", "until": C("clean", "plate"), "steps": [
        {"type": "routine", "name": "a", "steps": [{"type": "routine", "name": "b", "steps": [inner]}]}]}])
    assert validate_program(p)  # depth 4
    p["steps"][0]["steps"][0]["steps"] = [inner]
    assert validate_program(p) == []  # depth 3


# ---- semantics ----

def test_vocabulary_and_primitives(verbs, nouns):
    p = prog([S("reach", "plate", post=[C("touching", "right", "plate")]),
              S("teleport", "plate"), S("wash", "unobtainium"), S("rinse", "chopping board", "kitchen towel")])
    got = messages(validate_semantics(p, verbs, nouns))
    assert [ptr for ptr, _ in got] == ["/steps/1/verb", "/steps/2/object_a"]


def test_labels_must_match(verbs, nouns):
    p = prog([S("wash", "plate")], verb="rinse", noun="plate")
    assert validate_semantics(p, verbs, nouns, Labels(2, 2)) == []
    got = dict(messages(validate_semantics(p, verbs, nouns, Labels(3, 4))))
    assert set(got) == {"/action/verb", "/action/noun"}
    p["action"]["verb_class"] = 7
    assert "/action/verb_class" in dict(messages(validate_semantics(p, verbs, nouns)))


def test_a_noun_class_that_is_not_the_nouns_class_is_a_finding(verbs, nouns):
    """A program whose action carries the wrong EPIC noun class would train the noun head on it."""
    p = prog([S("wash", "plate")], verb="rinse", noun="plate")
    p["action"]["noun_class"] = 2  # plate's class
    assert validate_semantics(p, verbs, nouns) == []
    p["action"]["noun_class"] = 7
    got = dict(messages(validate_semantics(p, verbs, nouns)))
    assert set(got) == {"/action/noun_class"} and "not the class of 'plate' (2)" in got["/action/noun_class"]


def test_chaining_preconditions(verbs, nouns):
    take = S("take", "knife", pre=[C("visible", "knife")], post=[C("holding", "right", "knife")])
    cut = S("cut", "onion", "knife", pre=[C("holding", "right", "knife")], post=[C("cut", "onion")])
    assert validate_semantics(prog([take, cut], pre=[C("visible", "knife")], post=[C("cut", "onion")]), verbs, nouns) == []
    got = messages(validate_semantics(prog([cut, take], pre=[C("visible", "knife")]), verbs, nouns))
    assert got[0][0] == "/steps/0/pre/0" and "does not hold" in got[0][1]
    # holding(either, x) is satisfied by the right hand; not holding(left, knife) holds when unknown
    either = S("cut", "onion", "knife", pre=[C("holding", "either", "knife"), C("holding", "left", "knife", neg=True)])
    assert validate_semantics(prog([take, either], pre=[C("visible", "knife")]), verbs, nouns) == []
    # the program's post must hold at the end; asserting clean retracts dirty
    wash = S("wash", "plate", post=[C("clean", "plate")])
    got = messages(validate_semantics(prog([wash], pre=[C("dirty", "plate")], post=[C("dirty", "plate")]), verbs, nouns))
    assert got == [("/post/0", "postcondition dirty(plate) does not hold after the last step")]
    # a negated precondition that fails does so because its fact holds, not for want of an earlier step
    shut = S("close", "fridge", pre=[C("open", "fridge", neg=True)], post=[C("closed", "fridge")])
    got = messages(validate_semantics(prog([shut], pre=[C("open", "fridge")], verb="close", noun="fridge"), verbs, nouns))
    assert ("/steps/0/pre/0", "precondition not open(fridge) does not hold: open(fridge) holds here (the program's pre "
            "or an earlier step makes it true)") in got
    # a list of conditions that contradicts itself was valid (QA: pre [closed(fridge), open(fridge)])
    got = messages(validate_semantics(prog([shut], pre=[C("closed", "fridge"), C("open", "fridge")], verb="close",
                                           noun="fridge"), verbs, nouns))
    assert ("/pre/1", "open(fridge) contradicts /pre/0 (closed) of the same list: they cannot hold at once") in got
    both = S("take", "knife", post=[C("holding", "right", "knife"), C("holding", "right", "knife", neg=True)])
    got = messages(validate_semantics(prog([both]), verbs, nouns))
    assert ("/steps/0/post/1", "not holding(right, knife) contradicts /steps/0/post/0 of the same list") in got
    # two names of one class clash only through it: said (QA: in(pasta, pan:frying), not in(pasta, saucepan))
    pour = S("pour", "pasta", "pan:frying", post=[C("in", "pasta", "pan:frying"), C("in", "pasta", "saucepan", neg=True)])
    got = dict(messages(validate_semantics(prog([pour]), verbs, nouns)))
    assert got["/steps/0/post/1"].endswith("of the same list (saucepan and pan:frying are one EPIC class, pan)")


def test_loops_and_conditionals(verbs, nouns):
    scrub = S("scrub", "plate", post=[C("wet", "plate")])
    loop = {"type": "loop", "until": C("clean", "plate"), "steps": [scrub]}
    got = messages(validate_semantics(prog([loop]), verbs, nouns))
    assert got[0][0] == "/steps/0/until" and "never reached" in got[0][1]
    # a body that consumes its own precondition cannot repeat
    use = S("use", "sponge", pre=[C("wet", "sponge")], post=[C("dry", "sponge"), C("clean", "plate")])
    got = messages(validate_semantics(prog([{"type": "loop", "until": C("clean", "plate"), "steps": [use]}],
                                           pre=[C("wet", "sponge")]), verbs, nouns))
    assert got and got[0][0] == "/steps/0/steps/0/pre/0"
    # both branches are simulated; only facts both establish survive
    cond = {"type": "conditional", "if": C("closed", "fridge"),
            "then": [S("open", "fridge", pre=[C("closed", "fridge")], post=[C("open", "fridge"), C("touching", "right", "fridge")])],
            "else": []}
    after = S("take", "milk", pre=[C("open", "fridge")], post=[C("holding", "right", "milk")])
    assert validate_semantics(prog([cond, after]), verbs, nouns) == []  # else: not closed == open
    after_touch = S("take", "milk", pre=[C("touching", "right", "fridge")])
    assert messages(validate_semantics(prog([cond, after_touch]), verbs, nouns))[0][0] == "/steps/1/pre/0"
    # empty loop / routine / too long
    empty = prog([{"type": "routine", "name": "x", "steps": []}, {"type": "loop", "until": C("clean", "plate"), "steps": []}])
    assert {p for p, _ in messages(validate_semantics(empty, verbs, nouns))} >= {"/steps/0/steps", "/steps/1/steps"}
    long = prog([S("wash", "plate")] * 5)
    assert messages(validate_semantics(long, verbs, nouns, max_sub_actions=4))[-1][0] == "/steps"


def test_a_loops_until_is_reached_only_by_a_post_of_the_same_sign(verbs, nouns):
    """until not full(pot) is not reached by a body that only fills the pot."""
    fill = S("fill", "pot", post=[C("full", "pot")])
    loop = {"type": "loop", "until": C("full", "pot", neg=True), "steps": [fill]}
    got = messages(validate_semantics(prog([loop], verb="fill", noun="pot"), verbs, nouns))
    assert [p for p, _ in got] == ["/steps/0/until"] and "never reached" in got[0][1]
    loop["until"] = C("full", "pot")
    assert validate_semantics(prog([loop], verb="fill", noun="pot"), verbs, nouns) == []


def test_holding_with_both_hands_and_letting_go_with_one(verbs, nouns):
    """holding(both, pot) satisfies a later holding(left, pot); after not holding(left, pot) the pot is no longer
    held with both hands (two-handed carries of pans and pots are common in EPIC)."""
    lift = S("lift", "pot", post=[C("holding", "both", "pot")], hand="both")
    left = S("carry", "pot", pre=[C("holding", "left", "pot")], hand="left")
    assert validate_semantics(prog([lift, left], verb="lift", noun="pot"), verbs, nouns) == []
    release = S("let-go", "pot", post=[C("holding", "left", "pot", neg=True)], hand="left")
    both = S("carry", "pot", pre=[C("holding", "both", "pot")], hand="both")
    got = messages(validate_semantics(prog([lift, release, both], verb="lift", noun="pot"), verbs, nouns))
    assert got == [("/steps/2/pre/0", "precondition holding(both, pot) does not hold: no earlier step or program "
                                      "precondition establishes it")]


# ---- prompts ----

def test_prompt_has_instructions_vocabulary_exemplars_and_clip(exemplars, verbs, nouns):
    info = ClipInfo("P01_01_7", "Narration: rinse bowl. Sound: running water.", "rinse bowl", "rinse", "bowl", 2, 7)
    chosen = select_exemplars(info, exemplars, 3)
    # the same verb class ranks first, then the same noun class (bowl)
    assert len(chosen) == 3 and [e.id for e in chosen[:2]] == ["wash-plate", "empty-bowl"]
    msgs = PromptBuilder(verbs, nouns, exemplars, load_system_prompt(), k=2).messages(info)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert "holding(hand, object)" in msgs[0]["content"] and "board:chopping" in msgs[0]["content"]
    assert "Sound: running water" in msgs[-1]["content"] and "verb_class 2" in msgs[-1]["content"]
    assert json.loads(msgs[2]["content"])["action"]["verb_class"] == 2


def _rendered(span: str, narration: str, verb: str, noun: str, rest: str) -> str:
    """A clip text in extract's rendering (``extract.describe``)."""
    return f'Clip {span}.\nNarration: "{narration}" (verb: {verb}, noun: {noun}).\n{rest}'


def test_exemplars_are_chosen_by_narration_not_by_long_clip_text(exemplars, verbs, nouns):
    from leap_cli.extract.describe import parse_clip_text
    from leap_cli.programs.prompt import Exemplar, clip_narration, exemplar_narration

    sink_scene = ("Timeline: [0.0-2.0 s] sink visible (centre); [0.0-2.0 s] tap visible (left); [0.2-1.8 s] sponge "
                  "visible (centre, near the right hand); [0.5-2.0 s] sound: running water.\n"
                  "Audio: running water 0.5-2.0 s.\nObjects: sink (centre); tap (left); sponge (centre, near right hand).")
    wash = next(e for e in exemplars if e.id == "wash-plate")
    right = Exemplar("zz-wash-plate", "wash plate", _rendered("0.00-2.00 s (2.0 s long)", "wash plate", "wash", "plate",
                                                             "Camera: looks down about 10 deg."), wash.program)
    fridge = next(e for e in exemplars if e.program["action"]["verb"] == "open")
    # a long clip text that shares nearly every word with the clip's, for another action
    lookalike = Exemplar("aa-open-cupboard", "open cupboard", _rendered("0.00-2.00 s (2.0 s long)", "open cupboard",
                                                                        "open", "cupboard", sink_scene), fridge.program)
    for e in (right, lookalike):
        assert parse_clip_text(e.text)["narration"]  # both are extract renderings
    assert exemplar_narration(lookalike).verb == "open" and exemplar_narration(right).noun == "plate"
    clip_text = _rendered("10.00-12.00 s (2.0 s long)", "wash plate", "wash", "plate", sink_scene)
    # labels without class ids (a descriptor file from elsewhere): the verb and noun keys decide
    info = ClipInfo("P01_01_9", clip_text, "wash plate", "wash", "plate")
    assert [e.id for e in select_exemplars(info, [lookalike, right], 1)] == ["zz-wash-plate"]
    # no labels at all: the narration is read back from the clip text itself
    bare = ClipInfo("P01_01_9", clip_text)
    assert (clip_narration(bare).verb, clip_narration(bare).noun) == ("wash", "plate")
    assert [e.id for e in select_exemplars(bare, [lookalike, right], 1)] == ["zz-wash-plate"]
    # in the whole library too, with class ids: every chosen exemplar of the verb class first, each group by id
    library = exemplars + [lookalike]
    full = ClipInfo("P01_01_9", clip_text, "wash plate", "wash", "plate", verbs.resolve("wash"), nouns.resolve("plate"))
    chosen = select_exemplars(full, library, 4)
    assert chosen[0].id == "wash-plate" and lookalike not in chosen
    assert chosen == select_exemplars(full, list(reversed(library)), 4)  # deterministic whatever the input order
    ordered = PromptBuilder(verbs, nouns, library, load_system_prompt(), k=4).ordered_exemplars(full)
    same = [e.verb_class == full.verb_class for e in ordered]
    assert same == sorted(same, reverse=True) and any(same)
    group = [e.id for e in ordered if e.verb_class == full.verb_class]
    assert group == sorted(group)


def test_detected_objects_reach_the_clip(exemplars):
    rec = {"narration_id": "x", "video_id": "P01_01", "start": 0, "stop": 1, "text": "A hand near a bowl.",
           "components": {"objects": {"status": "ok", "source": "dets", "text": "",
                                      "data": {"objects": [{"label": "bowl", "score": 0.9}, {"label": "spoon"}]}}}}
    info = clip_info(rec)
    assert info.objects == ["bowl", "spoon"] and info.verb is None


# ---- offline generator ----

def test_offline_valid_on_annotation_excerpt(exemplars, verbs, nouns):
    segs = read_segments(DATA / "EPIC_100_validation_excerpt.csv")
    for seg in segs:
        p = offline_program(clip_info(narration_record(seg), seg), exemplars, verbs, nouns)
        assert check_program(p, verbs, nouns, Labels(seg.verb_class, seg.noun_class)) == [], seg.narration_id


def test_offline_renaming_and_templates(exemplars, verbs, nouns):
    def run(narration, verb, noun, all_nouns, objects=(), near=()):
        seg = Segment("s", "P01", "P01_01", 0, 1, 1, 2, 0, narration, verb, verbs.resolve(verb), noun,
                      nouns.resolve(noun), tuple(all_nouns), tuple(nouns.resolve(n) for n in all_nouns))
        info = clip_info(narration_record(seg), seg)
        info.objects = list(objects)
        info.near_hands = list(near)
        p = offline_program(info, exemplars, verbs, nouns)
        assert check_program(p, verbs, nouns, Labels(seg.verb_class, seg.noun_class)) == [], narration
        return p

    p = run("wash sponge", "wash", "sponge", ["sponge"])  # the plate exemplar uses a sponge: names are swapped
    objs = {s["object_a"] for s in p["steps"] if s["type"] == "sub_action"}
    assert "sponge" in objs
    p = run("pour oil into pan", "pour", "oil", ["oil", "pan"])
    assert any(s.get("object_b") == "pan" for s in p["steps"] if s["type"] == "sub_action")
    # no exemplar for sharpen: a one-step template, object B from the objects near a hand, not any detection
    p = run("sharpen knife", "sharpen", "knife", ["knife"], objects=["bowl", "whetstone"], near=[("whetstone", "left", 0.9)])
    assert p["steps"][0]["verb"] == "sharpen" and p["steps"][0]["object_b"] == "whetstone"
    assert p["steps"][0]["hand"] == "right"  # no hand is known to touch anything
    p = run("sharpen knife", "sharpen", "knife", ["knife"], objects=["bowl", "whetstone"])
    assert p["steps"][0]["object_b"] is None
    with pytest.raises(OfflineError):
        offline_program(ClipInfo("t", ""), exemplars, verbs, nouns)



def descriptor_record(narration, verb, noun, all_nouns, verbs, nouns, contacts=(), objects=()):
    """A descriptor record as ``leap extract`` writes it: narration, objects (label, share, near_hand) and hands
    (per-hand contact intervals naming the object); ``contacts`` are (hand, object, start, stop)."""
    hands = [{"hand": side, "visible_share": 1.0,
              "contacts": [{"start": a, "stop": b, "object": o, "state": "portable"}
                           for h, o, a, b in contacts if h == side]} for side in ("left", "right")]
    objs = [{"label": lab, "start": 0.0, "stop": 3.0, "share": share, "score": 0.9, "position": "centre",
             "near_hand": near} for lab, near, share in objects]
    comps = {
        "narration": {"status": "ok", "source": "annotations", "text": f"Narration: {narration}.",
                      "data": {"narration": narration, "verb": verb, "noun": noun, "verb_class": verbs.resolve(verb),
                               "noun_class": nouns.resolve(noun), "all_nouns": list(all_nouns)}},
        "objects": {"status": "ok", "source": "object-detections:P01_01.jsonl", "text": "objects",
                    "data": {"frames": 6, "score_threshold": 0.5, "objects": objs, "timeline": []}},
        "hands": {"status": "ok", "source": "hand-objects:P01_01.pkl", "text": "hands",
                  "data": {"frames": 60, "hand_threshold": 0.5, "hands": hands, "timeline": []}},
    }
    record = {"narration_id": "P01_01_0", "video_id": "P01_01", "start": 0.0, "stop": 3.0, "components": comps,
              "text": f"Narration: {narration}. Hands and objects."}
    schema = json.loads((resource_dir("schemas") / "descriptors.schema.json").read_text())
    assert list(Draft202012Validator(schema).iter_errors(record)) == []
    return record


def _subs(steps):
    for s in steps:
        if s["type"] == "sub_action":
            yield s
        else:
            for k in ("steps", "then", "else"):
                yield from _subs(s.get(k) or [])


def _conds(p):
    out = list(p["pre"]) + list(p["post"])
    for s in _subs(p["steps"]):
        out += list(s["pre"]) + list(s["post"])
    return out


def test_offline_tool_and_hand_from_hand_contacts(exemplars, verbs, nouns):
    """The tool (object B, holding() argument) is what a hand touches, never merely a detected object, and
    holding()/the sub-action's hand name the hand that touches it."""
    def gen(record):
        info = clip_info(record)
        p = offline_program(info, exemplars, verbs, nouns)
        assert check_program(p, verbs, nouns, Labels(info.verb_class, info.noun_class)) == []
        return p

    detections = [("carrot", "left", 0.9), ("knife", "right", 0.9), ("plate", None, 0.9), ("bowl", None, 0.8)]
    for tool_hand, other in (("right", "left"), ("left", "right")):
        rec = descriptor_record("cut carrot", "cut", "carrot", ["carrot"], verbs, nouns,
                                contacts=[(tool_hand, "knife", 0.2, 3.0), (other, "carrot", 0.1, 3.0)],
                                objects=detections)
        p = gen(rec)
        cuts = [s for s in _subs(p["steps"]) if verbs.resolve(s["verb"]) == verbs.resolve("cut")]
        assert cuts and all(s["object_a"] == "carrot" and s["object_b"] == "knife" for s in cuts), cuts
        assert all(s["hand"] == tool_hand for s in cuts)
        holds = {(c["args"][0], c["args"][1]) for c in _conds(p) if c["predicate"] == "holding" and not c["negated"]}
        assert (tool_hand, "knife") in holds and (other, "knife") not in holds
        assert (other, "carrot") in holds or not any(o == "carrot" for _, o in holds)
        used = {x for s in _subs(p["steps"]) for x in (s["object_a"], s["object_b"])}
        assert not used & {"plate", "bowl"}  # detected, but no hand near them

    # "mix pan" while the right hand holds a spatula: mix(pan, spatula), no arbitrary detected object
    rec = descriptor_record("mix pan", "mix", "pan", ["pan"], verbs, nouns, contacts=[("right", "spatula", 0.0, 4.0)],
                            objects=[("carrot", None, 0.9), ("board:chopping", None, 0.9), ("spatula", "right", 0.9)])
    p = gen(rec)
    mixes = [s for s in _subs(p["steps"]) if verbs.resolve(s["verb"]) == verbs.resolve("mix")]
    assert mixes and all((s["object_a"], s["object_b"], s["hand"]) == ("pan", "spatula", "right") for s in mixes)
    used = {x for s in _subs(p["steps"]) for x in (s["object_a"], s["object_b"])}
    assert not used & {"carrot", "board:chopping"}
    assert not {a for c in _conds(p) for a in c["args"]} & {"carrot", "board:chopping"}
    # an object near a hand stands in for the tool when no contact is named; with nothing known, the
    # exemplar's plausible tool (a spoon to stir with) stays
    rec = descriptor_record("mix pan", "mix", "pan", ["pan"], verbs, nouns,
                            objects=[("carrot", None, 0.9), ("spatula", "left", 0.9)])
    assert {s["object_b"] for s in _subs(gen(rec)["steps"]) if s["verb"] in ("stir", "mix")} == {"spatula"}
    rec = descriptor_record("mix pan", "mix", "pan", ["pan"], verbs, nouns, objects=[("carrot", None, 0.9)])
    assert {s["object_b"] for s in _subs(gen(rec)["steps"]) if s["verb"] in ("stir", "mix")} == {"spoon"}
    # the narration's second noun is where the liquid goes; the hand holds the vessel poured from
    rec = descriptor_record("pour oil into pan", "pour", "oil", ["oil", "pan"], verbs, nouns,
                            contacts=[("left", "bottle", 0.0, 2.0)], objects=[("plate", None, 0.9)])
    p = gen(rec)
    pours = [s for s in _subs(p["steps"]) if s["object_a"] == "oil"]
    assert pours and all(s["object_b"] == "pan" for s in pours)
    assert ("left", "bottle") in {tuple(c["args"]) for c in _conds(p) if c["predicate"] == "holding"}


def test_offline_noun_from_hand_contacts(exemplars, verbs, nouns):
    """With a verb but no narrated noun, the action noun is the object a hand touches, not the first detection."""
    from leap_cli.programs.offline import clip_noun

    info = ClipInfo("t", "", verb="take", verb_class=verbs.resolve("take"), objects=["plate", "onion"],
                    contacts=[("onion", "left", 1.2), ("object", "right", 3.0)])
    assert clip_noun(info, nouns) == nouns.resolve("onion")
    p = offline_program(info, exemplars, verbs, nouns)
    assert p["action"]["noun"] == "onion" and check_program(p, verbs, nouns) == []
    assert all(c["args"][0] == "left" for c in _conds(p) if c["predicate"] in ("holding", "touching"))
    info = ClipInfo("t", "", verb="take", verb_class=verbs.resolve("take"), objects=["plate", "onion"])
    assert clip_noun(info, nouns) == nouns.resolve("plate")


# ---- CLI ----

@pytest.fixture()
def kitchen(tmp_path):
    excerpt_annotations(tmp_path, 30)
    return tmp_path


def test_cli_generate_validate_and_strict(kitchen):
    runner = CliRunner()
    r = runner.invoke(app, ["generate-programs", "--workdir", str(kitchen), "--split", "validation", "--dry-run"],
                      env={"COLUMNS": "40"})
    assert r.exit_code == 0 and "===== system =====" in r.output and "Clip P01_11_0:" in r.output
    from leap_cli.programs.generate import GenerateConfig, dry_run

    # the prompt as it is sent, not wrapped at the terminal's width (an exemplar's JSON was cut mid-word)
    assert r.output.rstrip("\n") == dry_run(GenerateConfig(workdir=kitchen, split="val"))
    assert not (kitchen / "programs" / "val.jsonl").exists()
    r = runner.invoke(app, ["generate-programs", "--workdir", str(kitchen), "--split", "val"])
    assert r.exit_code == 0, r.output
    assert "narration-only" in r.output
    assert "prompt / completion tokens" not in r.output and "cost" not in r.output  # (offline: rows of zeros)
    out = kitchen / "programs" / "val.jsonl"
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(recs) == 30 and all(x["status"] == "valid" and x["provenance"]["backend"] == "offline" for x in recs)
    r = runner.invoke(app, ["validate-programs", "--workdir", str(kitchen), "--strict", str(out)])
    assert r.exit_code == 0, r.output
    rep = json.loads((kitchen / "programs" / "val.report.json").read_text())
    assert rep["statuses"] == {"valid": 30, "invalid": 0, "failed": 0} and rep["coverage"]["fraction"] == 1.0
    assert sum(rep["histograms"]["steps"].values()) == 30 and rep["histograms"]["verbs"]
    # the histogram of flattened sub-actions per program was labelled "steps" (a program's steps are fewer)
    k, n = next(iter(rep["histograms"]["steps"].items()))
    assert f"sub-actions per program (count: programs): {k} {n}" in r.output
    # the terminal shows 8 of a histogram and says how many more the report holds (it cut them without a word)
    n_objects = len(rep["histograms"]["objects"])
    assert n_objects > 8 and f", ... ({n_objects - 8} more in the report)" in " ".join(r.output.split())
    # the same records in another order (two --shard parts, a merge) give the same histograms, ties by name
    from leap_cli.programs.report import validate_records

    vocab = [ClassVocab.from_csv(kitchen / "kitchen" / "annotations" / f"EPIC_100_{k}_classes.csv", k)
             for k in ("verb", "noun")]
    (kitchen / "rev.jsonl").write_text("".join(json.dumps(x) + "\n" for x in reversed(recs)))
    hists = [validate_records([p], *vocab)["histograms"] for p in (out, kitchen / "rev.jsonl")]
    assert [list(h[k].items()) for h in hists for k in ("verbs", "objects", "predicates")][:3] == \
        [list(h[k].items()) for h in hists for k in ("verbs", "objects", "predicates")][3:]
    counts = list(hists[0]["objects"].items())
    assert any(a[1] == b[1] for a, b in zip(counts, counts[1:]))  # (ties there are, to order)
    # break one record: the report flags it and --strict exits 1
    intact = copy.deepcopy(recs[0])
    recs[0]["program"]["steps"][0]["verb"] = "teleport"
    recs.append(dict(recs[1]))
    out.write_text("".join(json.dumps(x) + "\n" for x in recs))
    r = runner.invoke(app, ["validate-programs", "--workdir", str(kitchen), "--strict", str(out)])
    assert r.exit_code == 1 and "--strict: 1 invalid" in r.output  # (it exited 1 without a word of why)
    rep = json.loads((kitchen / "programs" / "val.report.json").read_text())
    assert rep["statuses"]["invalid"] == 1 and rep["duplicates"] == 1 and rep["status_changed_on_revalidation"] == 1
    assert rep["errors"][0]["errors"][0]["pointer"] == "/steps/0/verb"
    # the last line of a narration id counts, also across files (as generate-programs reads them when it resumes)
    fixed = kitchen / "programs" / "val.fixed.jsonl"
    fixed.write_text(json.dumps(intact) + "\n")
    r = runner.invoke(app, ["validate-programs", "--workdir", str(kitchen), "--strict", str(out), str(fixed)])
    assert r.exit_code == 0, r.output
    rep = json.loads((kitchen / "programs" / "val.report.json").read_text())
    assert rep["statuses"]["invalid"] == 0 and rep["records"] == 30 and rep["duplicates"] == 2
    r = runner.invoke(app, ["validate-programs", "--workdir", str(kitchen), "--strict", str(fixed), str(out)])
    assert r.exit_code == 1 and json.loads((kitchen / "programs" / "val.report.json").read_text())["statuses"][
        "invalid"] == 1
    # a record stored invalid whose program passes now was counted valid, where build-shards leaves it out
    fixed.write_text(json.dumps({**intact, "status": "invalid"}) + "\n")
    r = runner.invoke(app, ["validate-programs", "--workdir", str(kitchen), "--strict", str(out), str(fixed)])
    assert r.exit_code == 1
    rep = json.loads((kitchen / "programs" / "val.report.json").read_text())
    assert rep["statuses"]["invalid"] == 1 and rep["coverage"]["valid"] == 29
    assert "stored invalid, though its checks pass now: build-shards uses only records stored valid" in \
        rep["errors"][0]["errors"][0]["message"]


def test_paths_with_brackets_print_as_text(kitchen):
    """A path is printed as text, not read as rich markup (a closing tag in it was a MarkupError)."""
    runner = CliRunner()
    assert runner.invoke(app, ["generate-programs", "--workdir", str(kitchen), "--split", "val"]).exit_code == 0
    report = kitchen / "[/x]" / "val.report.json"
    r = runner.invoke(app, ["validate-programs", "--workdir", str(kitchen), "--split", "val", "--report", str(report)])
    assert r.exit_code == 0, r.output
    assert "[/x]" in "".join(r.output.split()) and report.exists()


def test_narration_id_without_dry_run_generates_nothing(kitchen):
    """--narration-id only means something with --dry-run; alone it was ignored and every segment generated."""
    r = CliRunner().invoke(app, ["generate-programs", "--workdir", str(kitchen), "--split", "val",
                                 "--narration-id", "P01_11_0"])
    assert r.exit_code != 0 and "--dry-run" in str(r.exception)
    assert not (kitchen / "programs" / "val.jsonl").exists()


def test_lines_that_are_not_records_are_listed_and_the_rest_validated(kitchen):
    runner = CliRunner()
    assert runner.invoke(app, ["generate-programs", "--workdir", str(kitchen), "--split", "val"]).exit_code == 0
    out = kitchen / "programs" / "val.jsonl"
    lines = out.read_text().splitlines()
    lines[1:1] = ["[1, 2, 3]"]
    lines[3:3] = ["7", '{"narration_id": "P01_11_0"}']  # no status
    out.write_text("\n".join(lines) + "\n")
    r = runner.invoke(app, ["validate-programs", "--workdir", str(kitchen), str(out)])
    assert r.exit_code == 0, r.output
    assert f"{out}[line2]notaprogramrecord" in "".join(r.output.split())  # rich wraps long lines
    rep = json.loads((kitchen / "programs" / "val.report.json").read_text())
    assert [m["line"] for m in rep["malformed"]] == [2, 4, 5] and rep["statuses"]["valid"] == 30
    assert runner.invoke(app, ["validate-programs", "--workdir", str(kitchen), "--strict", str(out)]).exit_code == 1
    out.write_text("[1]\n7\n")  # nothing could be validated
    assert runner.invoke(app, ["validate-programs", "--workdir", str(kitchen), str(out)]).exit_code == 3
    out.write_text("")  # nothing at all: not a pass with 0 records
    r = runner.invoke(app, ["validate-programs", "--workdir", str(kitchen), str(out)])
    assert r.exit_code == 3 and "no program record in" in r.output, r.output
    assert "coverage" not in r.output  # the one line, not a table of zeros above it



def test_lines_that_are_not_json_are_listed_and_the_rest_validated(kitchen):
    """A line that is not JSON, not UTF-8 or nested too deeply was a LeapError (exit 2) that stopped the run;
    it is listed under malformed like any other line that is not a record, and so is a truncated last line."""
    runner = CliRunner()
    assert runner.invoke(app, ["generate-programs", "--workdir", str(kitchen), "--split", "val"]).exit_code == 0
    out = kitchen / "programs" / "val.jsonl"
    lines = out.read_bytes().splitlines()
    lines[5:5] = [b"not json {", b"", b'{"narration_id": "\xff\xfe"}',
                  b"[" * 100000 + b"]" * 100000, b'{"narration_id": "broken']  # (parts joined before one finished)
    out.write_bytes(b"\n".join(lines) + b"\n")
    r = runner.invoke(app, ["validate-programs", "--workdir", str(kitchen), str(out)])
    assert r.exit_code == 0, r.output
    assert f"{out}[line6]notvalidJSON" in "".join(r.output.split())
    rep = json.loads((kitchen / "programs" / "val.report.json").read_text())
    assert [(m["line"], m["problem"].split(" (")[0]) for m in rep["malformed"]] == [
        (6, "not valid JSON"), (8, "not UTF-8 text"), (9, "JSON nested too deeply"), (10, "line cut short after "
                                                                                       "column 24")]
    assert rep["malformed"][0]["problem"] == "not valid JSON (Expecting value at column 1)"  # ("... at, column 1")
    assert rep["statuses"]["valid"] == 30 and rep["records"] == 30
    assert runner.invoke(app, ["validate-programs", "--workdir", str(kitchen), "--strict", str(out)]).exit_code == 1
    # a truncated last line (a write cut short) is listed too, so that --strict does not pass a damaged file
    good = b"".join(x + b"\n" for x in lines[:5] + lines[10:])
    out.write_bytes(good[:-20])
    r = runner.invoke(app, ["validate-programs", "--workdir", str(kitchen), str(out)])
    assert r.exit_code == 0, r.output
    rep = json.loads((kitchen / "programs" / "val.report.json").read_text())
    assert [m["line"] for m in rep["malformed"]] == [30] and "truncated" in rep["malformed"][0]["problem"]
    assert rep["statuses"]["valid"] == 29
    assert runner.invoke(app, ["validate-programs", "--workdir", str(kitchen), "--strict", str(out)]).exit_code == 1
    out.write_bytes(b"not json\n\xff\n")  # nothing could be validated: exit 3, as documented
    r = runner.invoke(app, ["validate-programs", "--workdir", str(kitchen), str(out)])
    assert r.exit_code == 3, r.output


@pytest.fixture()
def two_splits(kitchen):
    """The kitchen with a train split of 10 segments (ids that are not in its 30 validation segments) and the
    offline programs of both splits."""
    ann = kitchen / "kitchen" / "annotations"
    rows = (Path(__file__).parent / "data" / "epic" / "EPIC_100_validation_excerpt.csv").read_text().splitlines()
    (ann / "EPIC_100_train.csv").write_text("\n".join([rows[0]] + rows[41:51]) + "\n")
    runner = CliRunner()
    for split in ("train", "val"):
        r = runner.invoke(app, ["generate-programs", "--workdir", str(kitchen), "--split", split])
        assert r.exit_code == 0, r.output
    return kitchen


def test_coverage_counts_only_segments_of_the_split(two_splits):
    """Coverage counted every valid record: val.jsonl --split train was 30/10 (300%). Records not in the split
    are counted apart, with examples, and --strict fails on them."""
    runner, programs = CliRunner(), two_splits / "programs"
    # a file none of whose records is of the split is refused, as build-shards refuses it, and no report is
    # written (its report beside it, val.report.json, was replaced by one that counted none of its records)
    r = runner.invoke(app, ["validate-programs", "--workdir", str(two_splits), "--split", "train",
                            str(programs / "val.jsonl")])
    assert r.exit_code == 1 and isinstance(r.exception, LeapError), r.output
    msg = r.exception.one_line()
    assert "none of the 30 records is a segment of the train split (e.g. P01_11_0" in msg, msg
    assert "--split val, the split their name says" in msg, msg
    assert not (programs / "train.report.json").exists() and not (programs / "val.report.json").exists()
    r = runner.invoke(app, ["validate-programs", "--workdir", str(two_splits), "--split", "train",
                            str(programs / "train.jsonl"), str(programs / "val.jsonl")])
    assert r.exit_code == 0, r.output
    assert "30 records are not segments of the train split" in " ".join(r.output.split())
    rep = json.loads((programs / "train.report.json").read_text())
    cov = rep["coverage"]
    assert (cov["valid"], cov["segments"], cov["fraction"], cov["not_in_split"]) == (10, 10, 1.0, 30)
    assert cov["not_in_split_examples"][0] == "P01_11_0" and len(cov["not_in_split_examples"]) == 10
    assert rep["statuses"]["valid"] == 40  # the records themselves are still validated
    r = runner.invoke(app, ["validate-programs", "--workdir", str(two_splits), "--split", "train", "--strict",
                            str(programs / "train.jsonl"), str(programs / "val.jsonl")])
    assert r.exit_code == 1, r.output
    cov = json.loads((programs / "train.report.json").read_text())["coverage"]
    assert (cov["valid"], cov["segments"], cov["not_in_split"]) == (10, 10, 30)
    r = runner.invoke(app, ["validate-programs", "--workdir", str(two_splits), "--strict", str(programs / "train.jsonl")])
    assert r.exit_code == 0, r.output
    assert json.loads((programs / "train.report.json").read_text())["coverage"]["not_in_split"] == 0


def test_files_of_different_splits_are_refused(two_splits):
    """The split was taken from the first file's name alone: train.jsonl val.jsonl reported 40/10 (400%)."""
    programs = two_splits / "programs"
    r = CliRunner().invoke(app, ["validate-programs", "--workdir", str(two_splits), str(programs / "train.jsonl"),
                                 str(programs / "val.jsonl")])
    assert r.exit_code != 0 and "different splits" in str(r.exception) and "--split" in str(r.exception)
    assert not (programs / "train.report.json").exists()

def test_compiled_checker_agrees_with_jsonschema(exemplars):
    import random

    from tests.program_schema_reference import validate_program_reference

    rng = random.Random(0)
    junk = [None, 3, -1, 2.5, True, "", "X", "plate", "right", "sub_action", "loop", [], {}, ["a"], ["left", "plate", "x"]]

    def nodes(x, path=()):
        yield path, x
        if isinstance(x, dict):
            for k, v in x.items():
                yield from nodes(v, path + (k,))
        elif isinstance(x, list):
            for i, v in enumerate(x):
                yield from nodes(v, path + (i,))

    def get(x, path):
        for p in path:
            x = x[p]
        return x

    disagreements = checked = invalid = 0
    for e in exemplars:
        for _ in range(20):
            p = copy.deepcopy(e.program)
            for _ in range(rng.randint(1, 2)):
                paths = [q for q, _ in nodes(p) if q]
                path = rng.choice(paths)
                parent = get(p, path[:-1])
                r = rng.random()
                if r < 0.25 and isinstance(parent, dict):
                    parent.pop(path[-1])
                elif r < 0.35 and isinstance(parent, dict):
                    parent["extra"] = 1
                elif r < 0.45 and isinstance(parent, list):
                    parent.append(copy.deepcopy(parent[0]) if parent else 1)
                else:
                    parent[path[-1]] = copy.deepcopy(rng.choice(junk))
            fast, ref = validate_program(p), validate_program_reference(p)
            checked += 1
            invalid += bool(ref)
            disagreements += bool(fast) != bool(ref)
            if bool(fast) != bool(ref):
                print(p, fast, ref)
    assert checked >= 800 and invalid > checked // 2 and disagreements == 0


def test_exemplar_index_chooses_what_the_score_defines(exemplars):
    """``ExemplarIndex`` scores only exemplars sharing a verb, noun or word with the clip; its choice must equal
    ranking every exemplar by the documented score (4 * same verb + 2 * same noun + Jaccard of words, ties by
    id), for labelled clips, clips known only by their keys, and clips known only by their narration text."""
    from leap_cli.programs.prompt import clip_narration, exemplar_narration

    def same(a_cls, b_cls, a_key, b_key):
        if a_cls is not None and b_cls is not None:
            return a_cls == b_cls
        return bool(a_key) and bool(b_key) and a_key.lower() == b_key.lower()

    def by_definition(info, library, k):
        clip = clip_narration(info)

        def score(e):
            n = exemplar_narration(e)
            s = 4.0 * same(clip.verb_class, n.verb_class, clip.verb, n.verb)
            s += 2.0 * same(clip.noun_class, n.noun_class, clip.noun, n.noun)
            if clip.words and n.words:
                s += len(clip.words & n.words) / len(clip.words | n.words)
            return s
        return sorted(library, key=lambda e: (-score(e), e.id))[:k]

    segments = read_segments(DATA / "EPIC_100_validation_excerpt.csv")
    # a library whose second half lost its class ids: the keys decide there
    library = exemplars[:30] + [e.__class__(e.id, e.narration, e.text, {**e.program, "action": {
        k: v for k, v in e.program["action"].items() if k not in ("verb_class", "noun_class")}}) for e in exemplars[30:]]
    checked = 0
    for s in segments:
        for info in (clip_info(narration_record(s), s), ClipInfo(s.narration_id, "", s.narration, s.verb, s.noun),
                     ClipInfo(s.narration_id, f"Narration: {s.narration}.")):
            for k in (1, 4):
                assert [e.id for e in select_exemplars(info, library, k)] == \
                    [e.id for e in by_definition(info, library, k)], (s.narration_id, info.text, k)
                checked += 1
    assert checked == len(segments) * 6
    # narrations mixing two exemplars' words: the Jaccard term decides between exemplars of equal labels
    for a in exemplars[:20]:
        for b in exemplars[20:40]:
            info = ClipInfo("P01_01_0", f"Narration: {a.narration} {b.narration.split()[-1]}.")
            assert [e.id for e in select_exemplars(info, library, 4)] == [e.id for e in by_definition(info, library, 4)]


def test_offline_leaves_out_objects_a_smaller_class_list_lacks(tmp_path, exemplars, verbs):
    """With a class list that lacks an exemplar's object (the synthetic kitchen's has no handle) and a clip that
    names no other, the object and its steps are left out: it became the list's first unused class (the tap:
    'grasp(tap) open(fridge, tap)' for 'open fridge')."""
    keys = {"tap", "spoon", "plate", "cupboard", "knife", "pan", "bowl", "drawer", "sponge", "glass", "fridge", "cup"}
    rows = (CLASSES / "EPIC_100_noun_classes.csv").read_text().splitlines()
    (tmp_path / "nouns.csv").write_text("\n".join([rows[0]] + [r for r in rows[1:] if r.split(",")[1] in keys]) + "\n")
    small = ClassVocab.from_csv(tmp_path / "nouns.csv", "noun")
    record = descriptor_record("open fridge", "open", "fridge", ["fridge"], verbs, small,
                               contacts=[("right", "fridge", 0.3, 1.7)])
    info = clip_info(record)
    p = offline_program(info, exemplars, verbs, small)
    assert check_program(p, verbs, small, Labels(info.verb_class, info.noun_class)) == []
    objects = {s["object_a"] for s in _subs(p["steps"])} | {s["object_b"] for s in _subs(p["steps"])} - {None}
    objects |= {a for c in _conds(p) for a in c["args"] if a not in ("left", "right", "both", "either")}
    assert objects == {"fridge"}, p
    assert any(c["predicate"] == "open" and not c["negated"] for c in p["post"])
    # where the clip has an object for it, the exemplar's object is renamed to that one as before
    record = descriptor_record("open fridge", "open", "fridge", ["fridge"], verbs, small,
                               contacts=[("right", "fridge", 0.3, 1.7), ("left", "cup", 0.0, 1.0)])
    p = offline_program(clip_info(record), exemplars, verbs, small)
    assert "cup" in {s["object_a"] for s in _subs(p["steps"])}


def test_control_characters_in_records_are_shown_not_sent(kitchen):
    """A failed record's message with ESC sequences reached the terminal raw, piped or not."""
    runner = CliRunner()
    assert runner.invoke(app, ["generate-programs", "--workdir", str(kitchen), "--split", "val"]).exit_code == 0
    out = kitchen / "programs" / "val.jsonl"
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    recs[1] = {**recs[1], "status": "failed", "program": None,
               "errors": [{"pointer": "", "message": "boom \x1b[41mBG\x1b[0m \x9b2J\x07"}]}
    out.write_text("".join(json.dumps(x) + "\n" for x in recs))
    r = runner.invoke(app, ["validate-programs", "--workdir", str(kitchen), str(out)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert not any(c in r.output for c in "\x1b\x9b\x07")
    assert "boom \\x1b[41mBG\\x1b[0m \\x9b2J\\x07" in r.output


def test_records_of_another_shape_are_listed_and_the_rest_validated(kitchen):
    """A string provenance, errors that are strings or lack a pointer: one such record stopped the report (and
    its page) with a traceback. They are listed as lines that are not records, like any other."""
    runner = CliRunner()
    assert runner.invoke(app, ["generate-programs", "--workdir", str(kitchen), "--split", "val"]).exit_code == 0
    out = kitchen / "programs" / "val.jsonl"
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    failed = {"status": "failed", "program": None}
    recs[0] = {**recs[0], "provenance": "offline"}
    recs[1] = {**recs[1], **failed, "errors": ["timeout"]}
    recs[2] = {**recs[2], **failed, "errors": [{"message": "timeout"}]}
    recs[3] = {**recs[3], "errors": "oops"}
    recs[4] = {**recs[4], "provenance": {"backend": ["offline"]}}
    out.write_text("".join(json.dumps(x) + "\n" for x in recs))
    for show in ("10", "0"):
        r = runner.invoke(app, ["validate-programs", "--workdir", str(kitchen), str(out), "--show", show,
                                "--html", str(kitchen / "page.html")])
        assert r.exit_code == 0 and r.exception is None, r.output
    rep = json.loads((kitchen / "programs" / "val.report.json").read_text())
    assert [(m["line"], m["problem"]) for m in rep["malformed"]] == [
        (1, "not a program record (provenance is a str, not an object)"),
        (2, "not a program record (errors[0] is a str, not an object with pointer and message)"),
        (3, "not a program record (errors[0] has no pointer string)"),
        (4, "not a program record (errors is a str, not a list)"),
        (5, "not a program record (provenance.backend is a list, not a string)")]
    assert rep["statuses"]["valid"] == 25


def test_the_page_and_the_report_never_replace_an_input(kitchen):
    """--html FILE.jsonl replaced the programs with the page, and --html REPORT.json the report just written;
    also through a symlink or a hard link."""
    import os

    runner = CliRunner()
    assert runner.invoke(app, ["generate-programs", "--workdir", str(kitchen), "--split", "val"]).exit_code == 0
    out = kitchen / "programs" / "val.jsonl"
    before = out.read_bytes()
    (kitchen / "link.html").symlink_to(out)
    os.link(out, kitchen / "hard.html")
    for args in (["--html", str(out)], ["--html", str(kitchen / "link.html")], ["--html", str(kitchen / "hard.html")],
                 ["--html", str(kitchen / "programs" / "val.report.json")],
                 ["--html", str(kitchen / "programs" / "x" / ".." / "val.report.json")], ["--report", str(out)]):
        r = runner.invoke(app, ["validate-programs", "--workdir", str(kitchen), str(out), *args])
        assert r.exit_code != 0 and "would write over" in str(r.exception), (args, r.output)
    assert out.read_bytes() == before and not (kitchen / "programs" / "val.report.json").exists()
    csv = kitchen / "kitchen" / "annotations" / "EPIC_100_noun_classes.csv"  # not read by this command: a typo
    table = csv.read_bytes()
    for option in ("--html", "--report"):
        r = runner.invoke(app, ["validate-programs", "--workdir", str(kitchen), str(out), option, str(csv)])
        assert r.exit_code != 0 and "which is not a" in str(r.exception), (option, r.output)
    assert csv.read_bytes() == table


def test_offline_failures_are_not_called_requests(kitchen, monkeypatch):
    """A test segment (no narration, no labels) with the offline backend was written "request failed: no verb
    known ...": no request is made."""
    head = "narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,stop_frame"
    (kitchen / "kitchen" / "annotations" / "EPIC_100_test_timestamps.csv").write_text(
        head + "\nP01_12_0,P01,P01_12,00:00:01.00,00:00:01.00,00:00:02.00,61,120\n")
    desc = kitchen / "descriptors" / "test.jsonl"  # what extract writes for a test segment: no narration
    desc.parent.mkdir(parents=True, exist_ok=True)
    desc.write_text(json.dumps({"narration_id": "P01_12_0", "video_id": "P01_12", "start": 1.0, "stop": 2.0,
                                "text": "Audio: water running.", "components": {
                                    "narration": {"status": "unavailable", "source": "annotations",
                                                  "data": {"reason": "test split"}, "text": "unavailable"},
                                    "audio": {"status": "ok", "source": "x", "data": {}, "text": "water running"}}})
                    + "\n")
    # refused up front: every record failed ("no verb known"), exit 3 after writing them all
    r = CliRunner().invoke(app, ["generate-programs", "--workdir", str(kitchen), "--split", "test"])
    assert r.exit_code == 1 and isinstance(r.exception, LeapError), r.output
    assert "the test split has neither" in str(r.exception) and "--backend openai" in str(r.exception)
    assert not (kitchen / "programs" / "test.jsonl").exists()
    # a clip the offline generator makes nothing of (here: made so) is a failed record, without "request"
    import leap_cli.programs.offline as offline

    def nothing(*a, **k):
        raise offline.OfflineError("no verb known for this clip")

    monkeypatch.setattr(offline, "offline_program", nothing)
    r = CliRunner().invoke(app, ["generate-programs", "--workdir", str(kitchen), "--split", "val", "--limit", "1",
                                 "--out", str(kitchen / "programs" / "one.jsonl")])
    assert r.exit_code == 3, r.output  # every record failed
    (rec,) = [json.loads(x) for x in (kitchen / "programs" / "one.jsonl").read_text().splitlines()]
    message = rec["errors"][0]["message"]
    assert rec["status"] == "failed" and message.startswith("the offline backend made no program: no verb known")


def test_a_file_of_another_kind_is_one_line(kitchen):
    """The descriptors given as FILES printed each line as "not a program record", a table of zeros, "delete or
    fix those lines", and wrote a report into the descriptors folder; a checkpoint, 24,711 malformed lines."""
    runner = CliRunner()
    d = kitchen / "descriptors" / "val.jsonl"
    d.parent.mkdir(parents=True, exist_ok=True)
    d.write_text(json.dumps({"narration_id": "P01_11_0", "video_id": "P01_11", "start": 0.0, "stop": 1.0,
                             "text": "t", "components": {}}) + "\n")
    r = runner.invoke(app, ["validate-programs", "--workdir", str(kitchen), str(d)])
    assert r.exit_code != 0 and "holds descriptor records (leap extract writes them), not program records" in str(
        r.exception), r.output
    assert not (kitchen / "descriptors" / "val.report.json").exists()
    pt = kitchen / "val.jsonl"
    pt.write_bytes(b"PK\x03\x04\x00\x00" + b"x" * 100)
    r = runner.invoke(app, ["validate-programs", "--workdir", str(kitchen), str(pt)])
    assert r.exit_code != 0 and "binary data" in str(r.exception), r.output


def test_offline_program_of_a_narration_over_the_schemas_limit_is_valid(exemplars, verbs, nouns):
    """A narration over 200 characters was copied into action.narration: the offline backend's own program
    failed the schema."""
    narration = "turn off hob " + "é" * 300
    info = ClipInfo("P01_01_2", "", narration=narration, verb="turn-off", verb_class=verbs.resolve("turn-off"),
                    noun="hob", noun_class=nouns.resolve("hob"))
    p = offline_program(info, exemplars, verbs, nouns)
    assert check_program(p, verbs, nouns) == []
    assert p["action"]["narration"].startswith("turn off hob") and len(p["action"]["narration"]) <= 200
    short = offline_program(ClipInfo("x", "", narration="turn off hob", verb="turn-off",
                                     verb_class=verbs.resolve("turn-off"), noun="hob", noun_class=nouns.resolve("hob")),
                            exemplars, verbs, nouns)
    assert short["action"]["narration"] == "turn off hob"


def test_the_page_shows_what_the_terminal_does(two_splits):
    """The page named no file and left out the lines that are not records and the records of another split (a
    file of garbage looked like a healthy empty one); its table of findings stopped at 200 rows unsaid; the
    control-flow chart mixed steps with programs under raw keys; coverage said "segments" when it was over the
    records."""
    from leap_cli.report.programs_html import programs_report_html

    runner, programs = CliRunner(), two_splits / "programs"
    val = programs / "val.jsonl"
    recs = [json.loads(x) for x in val.read_text().splitlines()]
    bad = []
    for i in range(250):  # invalid: an unknown verb
        r = copy.deepcopy(recs[i % len(recs)])
        r["narration_id"] = f"P99_{i:05d}"
        r["program"]["steps"][0]["verb"] = "flibber"
        bad.append(r)
    val.write_text("".join(json.dumps(x) + "\n" for x in recs + bad) + "not json\n")
    page = two_splits / "page.html"
    r = runner.invoke(app, ["validate-programs", "--workdir", str(two_splits), "--split", "train",
                            str(programs / "train.jsonl"), str(val), "--html", str(page)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "... and 240 more records with findings" in r.output
    assert "coverage: valid programs over the annotated segments of the split" in r.output
    text = page.read_text()
    assert f"<code>{val}</code>" in text
    assert "280 records are not segments of the train split" in text and "<code>P01_11_0</code>" in text
    assert "Lines that are not program records (1)" in text and "not valid JSON" in text
    assert "Records with findings (250, the first 200 shown)" in text and text.count("<tr><td>P99_") == 200
    assert "programs_with" not in text and "Valid programs with at least one" in text
    assert ">loops<" not in text  # under "Valid programs with at least one" the bars read "loops": one loops
    rep = json.loads((programs / "train.report.json").read_text())
    rep["coverage"]["of"] = "records"
    assert "over 10 records" in programs_report_html(rep) and "labels" in programs_report_html(rep)


def test_the_summary_stays_readable_in_a_narrow_terminal(kitchen):
    """At 60 columns the summary's numbers were cut to "1…" and its headers to "…"."""
    runner = CliRunner()
    assert runner.invoke(app, ["generate-programs", "--workdir", str(kitchen), "--split", "val"]).exit_code == 0
    r = runner.invoke(app, ["validate-programs", "--workdir", str(kitchen), "--split", "val"], env={"COLUMNS": "40"})
    assert r.exit_code == 0, r.output
    assert "…" not in r.output and "30/30 (100.0%)" in r.output
    assert any(line.split() == ["│", "records", "│", "30", "│"] for line in r.output.splitlines()), r.output


def test_schema_findings_stay_one_short_line(exemplars):
    """A program of too many steps was named with the whole array (a line of thousands of characters), a long
    purpose with the whole string, and control flow nested too deep as "type 'loop' is not one of sub_action"."""
    wash = next(e for e in exemplars if e.id == "wash-plate").program
    many = {**copy.deepcopy(wash), "steps": copy.deepcopy(wash["steps"]) * 13}
    from leap_cli.programs.schema import load_schema

    most = load_schema()["properties"]["steps"]["maxItems"]
    (f,) = validate_program(many)
    assert (f.pointer, f.message) == ("/steps", f"has {len(many['steps'])} items, more than the {most} allowed")
    long = copy.deepcopy(wash)
    long["steps"][0]["purpose"] = "x" * 500
    (f,) = validate_program(long)
    assert f.message.endswith("... is 500 characters long, more than the 200 allowed") and len(f.message) < 130
    until = {"predicate": "clean", "args": ["plate"], "negated": False}
    nest = {"type": "routine", "name": "r", "steps": copy.deepcopy(wash["steps"][:1])}
    for _ in range(3):
        nest = {"type": "loop", "until": until, "steps": [nest]}
    deep = {**copy.deepcopy(wash), "steps": [nest]}
    assert any("control flow is nested deeper than allowed" in f.message for f in validate_program(deep))
