"""Scoring of object names against truth and against narrations (benchmarks/bench_naming.py)."""

from __future__ import annotations

from leap_cli.epic.annotations import Segment
from leap_cli.epic.classes import ClassVocab
from leap_cli.extract.naming_score import score_against_narration, score_against_truth
from tests.conftest import EPIC_EXCERPT


def _rec(nid, contacts, objects=()):
    return {"narration_id": nid, "components": {
        "hands": {"status": "ok", "data": {"hands": [{"hand": "right", "contacts": contacts},
                                                     {"hand": "left", "contacts": []}]}},
        "objects": {"status": "ok", "data": {"objects": [{"label": o} for o in objects]}}}}


def test_held_and_segment_objects_precision_recall():
    truth = {"a": {"contacts": [{"hand": "right", "start": 0.0, "stop": 1.0, "object": "knife"},
                                {"hand": "right", "start": 1.5, "stop": 2.0, "object": "board:chopping"}],
                   "objects": ["knife", "carrot"]},
             "b": {"contacts": [{"hand": "left", "start": 0.0, "stop": 1.0, "object": "cup"}], "objects": ["cup"]}}
    records = [_rec("a", [{"start": 0.1, "stop": 0.9, "object": "knife", "named_by": "narration-prior"},
                          {"start": 1.5, "stop": 2.0, "object": "board", "named_by": "narration-prior"},
                          {"start": 3.0, "stop": 3.5, "object": "plate", "named_by": "narration-prior"}],
                    objects=("object", "carrot")),
               _rec("b", [{"start": 0.0, "stop": 1.0, "object": "object", "named_by": None}])]  # wrong hand, unnamed
    fig = score_against_truth(records, truth)
    held = fig["held"]
    assert held["named_contacts"] == 3 and held["precision"] == round(2 / 3, 4)
    assert held["true_contacts"] == 3 and held["recall"] == round(2 / 3, 4)
    assert held["confusions"] == {"(no true contact)->plate": 1} and held["named_by"] == {"narration-prior": 3}
    seg = fig["segment_objects"]  # a: {knife, board, plate, carrot} vs {knife, carrot, board}; b: {} vs {cup}
    assert (seg["names"], seg["precision"], seg["true_objects"], seg["recall"]) == (4, 0.75, 4, 0.75)


def test_clip_names_against_narration_nouns():
    vocab = ClassVocab.from_csv(EPIC_EXCERPT / "EPIC_100_noun_classes.csv", "noun")
    knife, carrot = vocab.resolve("knife"), vocab.resolve("carrot")
    seg = Segment("a", "P01", "P01_01", 0, 2, 1, 100, noun="carrot", noun_class=carrot, all_noun_classes=(carrot, knife))
    names = lambda *ns: [{"noun": n, "score": 0.1} for n in ns]  # noqa: E731
    records = [_rec("a", [{"start": 0, "stop": 1, "object": "x", "named_by": "clip:ViT-B-16:f",
                           "names_without_prior": names("knife", "cup")},
                          {"start": 1, "stop": 2, "object": "x", "named_by": "clip:ViT-B-16:f",
                           "names_without_prior": names("cup", "plate", "bowl", "pan", "carrot", "knife")},
                          {"start": 2, "stop": 3, "object": "x", "named_by": "narration-prior"}])]
    fig = score_against_narration(records, {"a": seg}, vocab)
    assert fig == {"contacts": 2, "top1": 0.5, "top5": 1.0, "named_by": {"clip:ViT-B-16:f": 2}}
