"""The offline generator over the synthetic kitchen: valid programs for every labelled segment, and agreement."""


import pytest

from leap_cli.epic.annotations import Annotations
from leap_cli.io import read_jsonl
from leap_cli.programs.agreement import aggregate, compare_programs
from leap_cli.programs.generate import GenerateConfig, generate_programs
from leap_cli.programs.targets import TargetVocab, encode_program
from leap_cli.programs.validate import Labels, check_program
from leap_cli.synth.kitchen import KitchenConfig, build_kitchen


@pytest.fixture(scope="module")
def kitchen_workdir(tmp_path_factory):
    work = tmp_path_factory.mktemp("programs-kitchen")
    build_kitchen(work / "kitchen", KitchenConfig(videos=4, segments_per_video=12, width=64, height=48))
    return work


def test_offline_programs_valid_over_the_kitchen(kitchen_workdir):
    ann = Annotations(kitchen_workdir / "kitchen" / "annotations")
    truth = {t["narration_id"]: t for t in read_jsonl(kitchen_workdir / "kitchen" / "ground-truth" / "segments.jsonl")}
    pairs = []
    valid_programs = []
    for split in ("train", "val"):
        if not ann.has_split(split) or not ann.segments(split):
            continue
        s = generate_programs(GenerateConfig(workdir=kitchen_workdir, split=split))
        recs = read_jsonl(kitchen_workdir / "programs" / f"{split}.jsonl")
        assert len(recs) == len(ann.segments(split)) == s.total
        for r in recs:
            seg = next(x for x in ann.segments(split) if x.narration_id == r["narration_id"])
            assert r["status"] == "valid", (r["narration_id"], r["errors"])
            assert check_program(r["program"], ann.verbs, ann.nouns, Labels(seg.verb_class, seg.noun_class)) == []
            valid_programs.append(r["program"])
            pairs.append(compare_programs(r["program"], truth[r["narration_id"]]["program"], ann.verbs, ann.nouns))
    assert pairs
    agg = aggregate(pairs)
    # the action verb is always among the sub-action verbs of a valid offline program
    assert 0 < agg["verbs"]["recall"] <= 1 and 0 <= agg["exact_sequence"] <= 1
    # the kitchen's subset class files (non-contiguous EPIC ids) still give targets indexed by EPIC class id
    vocab = TargetVocab.build(valid_programs, ann.verbs, ann.nouns)
    assert len(vocab.step_verbs) == max(ann.verbs.ids) + 2
    for p in valid_programs:
        enc = encode_program(p, vocab)
        assert enc["steps"][-1] == vocab.end_row and len(enc["steps"]) <= vocab.max_steps
        assert all(vocab.step_verbs[v] in ann.verbs.keys.values() for v, *_ in enc["steps"][:-1] if v != -100)


def test_agreement_counts():
    from leap_cli.epic.classes import ClassVocab
    from pathlib import Path

    CLASSES = Path(__file__).parent / "data" / "epic100"  # noqa: N806
    verbs = ClassVocab.from_csv(CLASSES / "EPIC_100_verb_classes.csv", "verb")
    nouns = ClassVocab.from_csv(CLASSES / "EPIC_100_noun_classes.csv", "noun")

    def sub(v, a, b=None):
        return {"type": "sub_action", "verb": v, "object_a": a, "object_b": b, "pre": [], "post": []}

    true = {"steps": [sub("take", "knife"), {"type": "loop", "until": {}, "steps": [sub("cut", "onion", "knife")]}]}
    pred = {"steps": [sub("grasp", "knife"), sub("slice", "onion", "spoon"), sub("put", "knife")]}
    c = compare_programs(pred, true, verbs, nouns)
    assert c["triples"] == (1, 3, 2) and c["verbs"] == (2, 3, 2) and c["objects"] == (3, 4, 3) and not c["exact"]
    agg = aggregate([c, compare_programs(true, true, verbs, nouns)])
    assert agg["exact_sequence"] == 0.5 and agg["triples"]["recall"] == pytest.approx(3 / 4)


def test_offline_valid_for_every_action_the_kitchen_can_narrate():
    """Every (verb form, noun form) pair of the kitchen's world, with its visible objects as detections, and
    with hand contacts (tool in the right or the left hand, the noun in both) and objects near the hands."""
    from leap_cli.epic.annotations import Segment
    from leap_cli.programs.offline import offline_program
    from leap_cli.programs.prompt import clip_info, load_exemplars, narration_record
    from leap_cli.synth.world import NOUN_FORMS, POUR_FROM, TOOLS, VERBS, narration_noun, visible_objects, vocabularies

    verbs, nouns = vocabularies()
    ex = load_exemplars()
    n = 0
    for spec in VERBS.values():
        for form in spec.forms:
            for noun in spec.nouns:
                for nform in NOUN_FORMS.get(noun, (noun,)):
                    narration = f"{form.replace('-', ' ')} {narration_noun(nform)}"
                    seg = Segment("s", "P01", "P01_01", 0, 1, 1, 2, 0, narration, form, verbs.resolve(spec.key), nform,
                                  nouns.resolve(noun), (nform,), (nouns.resolve(noun),))
                    objs = visible_objects(spec.key, noun)
                    tool = TOOLS.get(spec.key) or (POUR_FROM.get(noun) if spec.key == "pour" else None)
                    variants = [([], [])]
                    for th, nh in (("right", "left"), ("left", "right")):
                        contacts = [(noun, nh, 2.0)] + ([(tool, th, 2.5)] if tool else [])
                        variants.append((contacts, [(o, th if o == tool else nh, 0.9) for o in objs]))
                    variants.append(([(noun, "left", 1.0), (noun, "right", 1.0)], []))
                    for contacts, near in variants:
                        info = clip_info(narration_record(seg), seg)
                        info.objects, info.contacts, info.near_hands = objs, contacts, near
                        p = offline_program(info, ex, verbs, nouns)
                        assert check_program(p, verbs, nouns, Labels(seg.verb_class, seg.noun_class)) == [], \
                            (narration, contacts)
                        n += 1
    assert n > 400


def test_kitchen_true_programs_pass_the_validator(kitchen_workdir):
    """The kitchen's ground-truth programs obey the rules generated ones are held to (chaining, reachable loops)."""
    ann = Annotations(kitchen_workdir / "kitchen" / "annotations")
    truth = read_jsonl(kitchen_workdir / "kitchen" / "ground-truth" / "segments.jsonl")
    labelled = [t for t in truth if t.get("verb_class") is not None]
    assert labelled
    for t in labelled:
        findings = check_program(t["program"], ann.verbs, ann.nouns, Labels(t["verb_class"], t["noun_class"]))
        assert findings == [], (t["narration_id"], t["verb"], findings)
