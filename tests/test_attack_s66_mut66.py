"""Gaps a hand-made mutation run over evaluate/scores.py, evaluate/scoring.py, evaluate/inference.py,
epic/annotations.py and epic/info.py found: behaviour no fast test held (each test fails on the mutant named)."""

import json
import pickle

import numpy as np
import pytest
import torch

from leap_cli.epic.annotations import Annotations
from leap_cli.errors import LeapError
from leap_cli.evaluate.scores import load_scores, normalize_scores
from leap_cli.evaluate.scoring import check_scorable, evaluate_scores
from tests.test_eval_submit import NN, NV, VAL, ann_dir  # noqa: F401 (fixture)

# ---------------------------------------------------------------------------------------------------------------
# evaluate/scoring.py and evaluate/scores.py


def _near_tie(dtype=torch.float64):
    """Scores where segment 0's true verb (0) leads class 2 by 1e-9: a lead float32 rounds away (ties rank the
    higher id first), so the segment is right only while the scores stay float64."""
    verb = torch.full((4, NV), -1.0, dtype=dtype)
    noun = torch.full((4, NN), -1.0, dtype=dtype)
    verb[0, 0], verb[0, 2] = 1.0 + 1e-9, 1.0
    verb[1:, 3] = 0.0  # (no segment's class: the others are wrong)
    return [r[0] for r in VAL], verb, noun


def test_float64_scores_are_ranked_at_float64(tmp_path, ann_dir):
    """(mutants: scoring casting to float32; scores.py turning a float64 tensor or array into float32)"""
    ids, verb, noun = _near_tie()
    ann = Annotations(ann_dir)
    direct = evaluate_scores({"narration_id": ids, "verb_output": verb, "noun_output": noun}, ann, "val")
    assert direct["recognition"]["all"]["verb"]["top1"] == 0.25
    torch.save({"narration_id": ids, "verb_output": verb, "noun_output": noun}, tmp_path / "t.pt")
    with open(tmp_path / "a.pkl", "wb") as f:
        pickle.dump({"narration_id": np.array(ids), "verb_output": verb.numpy(), "noun_output": noun.numpy()}, f)
    for name in ("t.pt", "a.pkl"):
        loaded = load_scores(tmp_path / name)
        assert loaded["verb_output"].dtype == torch.float64, name
        assert evaluate_scores(loaded, ann, "val")["recognition"]["all"]["verb"]["top1"] == 0.25, name


def test_unknown_shard_ids_name_the_shards_and_how_to_give_the_right_ones(ann_dir):
    """`leap evaluate --run` checks the shards' ids before the model runs: the error is the shards', not the
    checkpoint's. (mutant: the checkpoint named)"""
    with pytest.raises(LeapError) as e:
        check_scorable(Annotations(ann_dir), "val", ["P09_01_0"], (NV, NN), "runs/r/checkpoints/best.pt",
                       "work/shards/val")
    assert e.value.path == "work/shards/val" and "--shards" in e.value.fix, (e.value.path, e.value.fix)


def _challenge(tmp_path, verbs: int, nouns: int, actions: list[str]):
    """A one-segment anticipation challenge JSON with the given action keys."""
    doc = {"challenge": "action_anticipation", "results": {"P01_01_0": {
        "verb": {str(i): 0.1 for i in range(verbs)}, "noun": {str(i): 0.1 for i in range(nouns)},
        "action": {k: 1.0 - 0.001 * j for j, k in enumerate(actions)}}}}
    path = tmp_path / "a.json"
    path.write_text(json.dumps(doc))
    return path


def test_an_action_one_past_the_last_class_is_refused(tmp_path):
    """(mutant: ``v > verbs or n > nouns``, an off-by-one that let verb id V of a file of V verbs through)"""
    with pytest.raises(LeapError, match="the action 2,0 is outside the file's 2 verb and 2 noun classes"):
        load_scores(_challenge(tmp_path, 2, 2, ["0,0", "0,1", "1,0", "2,0"]))
    with pytest.raises(LeapError, match="the action 1,2 is outside"):
        load_scores(_challenge(tmp_path, 2, 2, ["0,0", "0,1", "1,0", "1,2"]))
    assert load_scores(_challenge(tmp_path, 2, 2, ["0,0", "0,1", "1,0", "1,1"]))["action"]["ids"].tolist() == [
        [0, 1, 1000, 1001]]


def test_more_action_scores_than_the_evaluator_takes_are_refused(tmp_path):
    """EPIC's evaluator takes exactly 100 actions a segment; 101 are refused as 99 are. (mutant: only fewer)"""
    keys = [f"{v},{n}" for v in range(11) for n in range(10)]
    assert load_scores(_challenge(tmp_path, 11, 10, keys[:100]))["action"]["ids"].shape == (1, 100)
    for k in (99, 101):
        with pytest.raises(LeapError, match=f"{k} action scores, where EPIC's anticipation evaluator takes exactly 100"):
            load_scores(_challenge(tmp_path, 11, 10, keys[:k]))


def test_scores_of_three_dimensions_are_refused_with_their_shape():
    """(mutant: ``ndim < 2``: [N, V, 1] outputs, an unsqueezed model head, read as scores)"""
    ids = [r[0] for r in VAL]
    with pytest.raises(LeapError, match=r"verb_output has shape \(4, 6, 1\), expected \[N, classes\]"):
        normalize_scores({"narration_id": ids, "verb_output": torch.zeros(4, NV, 1), "noun_output": torch.zeros(4, NN)})


def test_saved_scores_keep_the_program_and_meta(tmp_path):
    """`leap evaluate --scores` recomputes program figures from the file: save_scores must write them.
    (mutant: save_scores dropping ``program``)"""
    from leap_cli.evaluate.scores import save_scores

    ids = [r[0] for r in VAL]
    prog = {"steps": torch.zeros(4, 2, 3, dtype=torch.long), "target_steps": torch.full((4, 2, 3), -100),
            "end_ids": [1, 2, 2]}
    save_scores(tmp_path / "scores.pt", ids, torch.zeros(4, NV), torch.zeros(4, NN), program=prog,
                meta={"task": "recognition"})
    back = load_scores(tmp_path / "scores.pt")
    assert back["program"]["end_ids"] == [1, 2, 2] and torch.equal(back["program"]["target_steps"],
                                                                   prog["target_steps"])
    assert back["meta"] == {"task": "recognition"}


@pytest.mark.parametrize("content, says", [
    ({"challenge": "action_recognition", "results": {}}, "a challenge JSON needs a non-empty 'results' object"),
    ([{"narration_id": "a"}, 3], "a list of results must hold one dict per segment"),
])
def test_empty_results_and_lists_of_non_dicts_are_one_line_saying_so(tmp_path, content, says):
    """(mutants: the emptiness check dropped (a StopIteration traceback), the per-entry dict check dropped)"""
    if isinstance(content, dict):
        (tmp_path / "s.json").write_text(json.dumps(content))
        path = tmp_path / "s.json"
    else:
        torch.save(content, tmp_path / "s.pt")
        path = tmp_path / "s.pt"
    with pytest.raises(LeapError) as e:
        load_scores(path)
    assert e.value.message == says, e.value.message


def test_a_file_without_narration_ids_and_a_class_given_twice_are_named(tmp_path):
    """(mutants: narration_id left out of the required keys (a KeyError); the largest id named, not the twice-given)"""
    torch.save({"verb_output": torch.zeros(2, NV), "noun_output": torch.zeros(2, NN)}, tmp_path / "s.pt")
    with pytest.raises(LeapError) as e:
        load_scores(tmp_path / "s.pt")
    assert e.value.message == "missing key narration_id", e.value.message
    doc = {"results": {"P01_01_0": {"verb": {"0": 1, "00": 2, "1": 3, "2": 4}, "noun": {"0": 1}}}}
    (tmp_path / "s.json").write_text(json.dumps(doc))
    with pytest.raises(LeapError) as e:
        load_scores(tmp_path / "s.json")
    assert e.value.message == "verb class id 0 is given more than once" and e.value.record == "P01_01_0", e.value
