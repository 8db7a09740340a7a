"""`leap evaluate`'s count of the split's segments without scores says which build-shards skipped (their videos
need fixing) and which the shards do not hold at all (annotation rows added since the shards were built)."""

import logging

from leap_cli.epic.annotations import Annotations
from leap_cli.evaluate.scoring import evaluate_scores
from tests.test_eval_submit import _val_scores, ann_dir  # noqa: F401 (fixture)
from tests.test_mut_scoring_vocab_info import _add_val_rows, _scores


def test_unscored_segments_are_told_apart(ann_dir, caplog):
    _add_val_rows(ann_dir, [("P01_01_7", "P01", "take", 0, "plate", 3), ("P01_01_8", "P01", "take", 0, "plate", 3)])
    ids, verb, noun = _val_scores()
    skipped = ids[3]  # build-shards skipped it; P01_01_7 and _8 came into the CSV after the build
    with caplog.at_level(logging.WARNING):
        r = evaluate_scores(_scores(ids[:3], verb[:3], noun[:3], meta={"skipped": [skipped]}), Annotations(ann_dir),
                            "val", source="scores.pt")
    assert r["not_scored"] == 3
    said = " ".join(caplog.text.split())
    assert ("3 segments of val are not in scores.pt: 1 skipped by build-shards (its manifest says why); 2 not in "
            "the shards at all (e.g. P01_01_7: rows added to the split's CSV since the shards were built") in said, said


def test_scores_that_do_not_list_the_skipped_say_only_the_count(ann_dir, caplog):
    ids, verb, noun = _val_scores()
    with caplog.at_level(logging.WARNING):
        evaluate_scores(_scores(ids[:3], verb[:3], noun[:3], meta={"task": "recognition"}), Annotations(ann_dir),
                        "val", source="other.pkl")
    assert "1 segment of val is not in other.pkl\n" in caplog.text, caplog.text
