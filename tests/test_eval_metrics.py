"""EPIC metrics against hand-computed expectations (ties, empty subsets, classes absent from a subset)."""

import math

import numpy as np
import pytest

from leap_cli.evaluate import metrics as M


def test_rank_ties_put_higher_class_first():
    ranks = M.rank_classes(np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0]]))
    assert ranks.tolist() == [[2, 1, 0, 3], [3, 2, 1, 0]]


def test_topk_tie_decides_hit():
    # label 0 tied with 4 others behind the best class: ranked last of the tie -> outside the top 5
    ranks = M.rank_classes(np.array([[0, 0, 9, 0, 0, 0.0]]))
    assert M.topk_accuracy(ranks, np.array([0]), (1, 5)) == [0.0, 0.0]
    assert M.topk_accuracy(ranks, np.array([1]), (1, 5)) == [0.0, 1.0]
    assert M.topk_accuracy(ranks[:0], np.array([], int)) is None


def test_action_scores_softmax_after_top_n():
    verbs = np.array([[0.0, 2.0, 1.0]])
    nouns = np.array([[3.0, 0.0, 1.0, 2.0]])
    v, n, p = M.action_scores(verbs, nouns, top_n=2)
    # top-2 verbs (1, 2) and nouns (0, 3), each softmaxed over those two only
    pv = np.array([math.e ** 2, math.e]) / (math.e ** 2 + math.e)
    pn = np.array([math.e ** 3, math.e ** 2]) / (math.e ** 3 + math.e ** 2)
    # (1,3) and (2,0) tie at pv0*pn1 == pv1*pn0: the later pair in the verb-major grid, (2,0), goes first
    assert v.tolist() == [[1, 2]] and n.tolist() == [[0, 0]]
    np.testing.assert_allclose(p[0], [pv[0] * pn[0], pv[1] * pn[0]])
    assert M.action_id(v, n).tolist() == [[1000, 2000]]


def test_action_scores_top100_on_epic_sizes():
    rng = np.random.default_rng(0)
    verbs, nouns = rng.normal(size=(3, 97)), rng.normal(size=(3, 300))
    v, n, p = M.action_scores(verbs, nouns)
    assert v.shape == n.shape == p.shape == (3, 100)
    assert np.all(np.diff(p, axis=1) <= 0)
    for i in range(3):
        top_n = np.sort(nouns[i])[::-1][:100]
        pv = np.exp(verbs[i] - verbs[i].max()) / np.exp(verbs[i] - verbs[i].max()).sum()  # all 97 verbs kept
        pn_den = np.exp(top_n - top_n.max()).sum()
        for j in (0, 57, 99):
            expected = pv[v[i, j]] * np.exp(nouns[i, n[i, j]] - top_n.max()) / pn_den
            assert p[i, j] == pytest.approx(expected)
    # chunked processing gives the same result
    for a, b in zip((v, n, p), M.action_scores(verbs, nouns, chunk=2)):
        np.testing.assert_array_equal(a, b)
    # the best pair is the best verb with the best noun
    assert v[:, 0].tolist() == verbs.argmax(1).tolist() and n[:, 0].tolist() == nouns.argmax(1).tolist()
    # a true action outside the 100 kept pairs never counts
    worst_v, worst_n = verbs[0].argmin(), nouns[0].argmin()
    ranks = M.rank_action_lists(M.action_id(v, n), p)
    assert M.topk_accuracy(ranks[:1], np.array([M.action_id(worst_v, worst_n)]), (1, 5)) == [0.0, 0.0]


def _recognition_case():
    verb = np.array([[5, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5], [0, 0, 0, 0, 0, 3], [0, 0, 9, 0, 0, 0]], float)
    noun = np.array([[0, 0, 0, 10, 0, 0], [10, 0, 0, 0, 0, 0], [0, 5, 0, 0, 0, 0], [7, 0, 0, 0, 0, 1]], float)
    vl, nl = [0, 0, 5, 1], [3, 2, 1, 0]
    return verb, noun, vl, nl, ["P01", "P01", "P02", "P02"]


def test_recognition_metrics_hand_computed():
    verb, noun, vl, nl, parts = _recognition_case()
    m = M.recognition_metrics(verb, noun, vl, nl, parts, tail_verbs={5}, tail_nouns={2}, unseen_participants={"P02"})
    assert m["all"]["verb"] == {"top1": 0.5, "top5": 0.75}
    assert m["all"]["noun"] == {"top1": 0.75, "top5": 1.0}
    assert m["all"]["action"] == {"top1": 0.5, "top5": 0.5}
    assert m["tail"] == {"verb": {"top1": 1.0}, "noun": {"top1": 0.0}, "action": {"top1": 0.5}}
    assert m["unseen"] == {"verb": {"top1": 0.5}, "noun": {"top1": 1.0}, "action": {"top1": 0.5}}


def test_topk_counts_the_first_k_ranks_only():
    """A label ranked exactly k+1-th is a miss at k (the recognition case ranks its top-1 misses 3rd or lower)."""
    ranks = np.array([[4, 2, 0, 1, 3, 5, 6], [0, 1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1, 0]])
    labels = np.array([2, 5, 6])  # ranked 2nd, 6th, 1st
    assert M.topk_accuracy(ranks, labels, (1, 2, 5)) == [pytest.approx(1 / 3), pytest.approx(2 / 3),
                                                          pytest.approx(2 / 3)]


def test_recognition_empty_subsets_are_none():
    verb, noun, vl, nl, parts = _recognition_case()
    m = M.recognition_metrics(verb, noun, vl, nl, parts, tail_verbs=set(), tail_nouns={2}, unseen_participants={"P99"})
    assert m["unseen"]["verb"]["top1"] is None and m["unseen"]["action"]["top1"] is None
    assert m["tail"]["verb"]["top1"] is None
    assert m["tail"]["action"]["top1"] == 0.0  # only the noun-tail segment s1 remains


def _hit(label, c=8):
    row = np.zeros(c)
    row[label] = 1.0
    return row


def _miss(label, c=8):
    row = np.ones(c)
    row[label] = 0.0
    return row


def test_anticipation_class_mean_recall():
    vl = [0, 0, 1, 2, 2]
    verb = np.stack([_hit(0), _miss(0), _hit(1), _hit(2), _hit(2)])
    noun = np.stack([_hit(3)] * 5)
    nl = [3] * 5
    parts = ["P01", "P02", "P02", "P01", "P01"]
    m = M.anticipation_metrics(verb, noun, vl, nl, parts, tail_verbs={1, 2}, tail_nouns=set(),
                               unseen_participants={"P02"})
    # class 0: 1/2, class 1: 1, class 2: 1 -> 2.5/3 (plain accuracy would be 0.8)
    assert m["overall"]["verb"]["mt5r"] == pytest.approx(2.5 / 3)
    assert m["overall"]["noun"]["mt5r"] == 1.0
    assert m["overall"]["action"]["mt5r"] == pytest.approx(2.5 / 3)
    # unseen holds classes 0 (miss) and 1 (hit); class 2 is absent and not averaged in
    assert m["unseen"]["verb"]["mt5r"] == 0.5
    assert m["tail"]["verb"]["mt5r"] == 1.0
    assert m["tail"]["noun"]["mt5r"] is None
    assert m["tail"]["action"]["mt5r"] == 1.0


def test_anticipation_recall_counts_ranks_two_to_five():
    """Mean top-5 recall: a label ranked 2nd (top-1 would miss it) is recalled."""
    verb = np.array([[0, 9, 8, 7, 6.0, 0, 0, 0]])
    m = M.anticipation_metrics(verb, verb, [2], [2], ["P01"], tail_verbs=set(), tail_nouns=set(),
                               unseen_participants=set())
    assert m["overall"]["verb"]["mt5r"] == 1.0
    verb[0, 2] = -1.0  # now ranked last
    m = M.anticipation_metrics(verb, verb, [2], [2], ["P01"], tail_verbs=set(), tail_nouns=set(),
                               unseen_participants=set())
    assert m["overall"]["verb"]["mt5r"] == 0.0


def test_anticipation_uses_given_action_scores():
    verb = np.stack([_hit(0), _hit(1)])
    noun = np.stack([_hit(2), _hit(2)])
    # submitted action lists: segment 0 ranks its true action (0,2) 6th, segment 1 first
    ids = np.array([[5, 6, 7, 8, 9, 2], [1002, 5, 6, 7, 8, 9]])
    sc = np.array([[.6, .5, .4, .3, .2, .1], [.6, .5, .4, .3, .2, .1]])
    m = M.anticipation_metrics(verb, noun, [0, 1], [2, 2], ["P01", "P01"], tail_verbs=set(), tail_nouns=set(),
                               unseen_participants=set(), actions=(ids, sc))
    assert m["overall"]["action"]["mt5r"] == 0.5
    assert m["overall"]["verb"]["mt5r"] == 1.0


def test_program_step_metrics():
    P = -100
    end = (9, 9, 9)
    true = np.array([[[1, 2, 3], [4, 5, 6], [9, 9, 9], [P, P, P]],
                     [[1, 1, 1], [9, 9, 9], [P, P, P], [P, P, P]],
                     [[2, 2, 2], [9, 9, 9], [P, P, P], [P, P, P]]])
    pred = np.array([[[1, 2, 3], [4, 0, 6], [1, 1, 1], [7, 7, 7]],
                     [[0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]],
                     [[3, 0, 2], [9, 9, 9], [0, 0, 0], [0, 0, 0]]])
    m = M.program_step_metrics(pred, true, np.array([True, False, True]), end)
    assert m["positions"] == 3 and m["segments"] == 2
    assert m["s_verb"] == pytest.approx(2 / 3) and m["obj_a"] == pytest.approx(1 / 3) and m["obj_b"] == 1.0
    # a prediction shorter than the truth counts the missing positions as wrong
    short = M.program_step_metrics(pred[:, :1], true, np.array([True, False, True]), end)
    assert short["s_verb"] == pytest.approx(1 / 3) and short["obj_b"] == pytest.approx(2 / 3)
    none = M.program_step_metrics(pred, true, np.zeros(3, bool), end)
    assert none["s_verb"] is None and none["positions"] == 0


def test_condition_f1_micro_macro():
    true = np.array([[1, 0, 0, 1], [1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], float)
    probs = np.array([[.9, .6, .1, .9], [.4, .7, .2, .1], [.1, .8, .3, .4], [0, 0, 0, 0]])
    m = M.condition_metrics(probs, true, np.array([True, True, True, False]))
    # pre: class 0 tp1 fn1 -> 2/3; class 1 tp1 fp2 -> 1/2; micro tp2 fp2 fn1 -> 4/7
    assert m["pre"]["micro_f1"] == pytest.approx(4 / 7)
    assert m["pre"]["macro_f1"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    # post: class 0 never true nor predicted -> left out of the macro mean
    assert m["post"] == {"micro_f1": 1.0, "macro_f1": 1.0}
    empty = M.f1_scores(np.zeros((2, 2), bool), np.zeros((2, 2), bool))
    assert empty == {"micro_f1": None, "macro_f1": None}
    # a class always missed (true, never predicted: tp 0, fn 1) counts in the macro mean with F1 0
    assert M.f1_scores(np.array([[False, True]]), np.array([[True, True]])) == {"micro_f1": pytest.approx(2 / 3),
                                                                                 "macro_f1": 0.5}
    # a class predicted but never true (tp 0, fp 1) counts too: "classes seen in truth or prediction"
    assert M.f1_scores(np.array([[True, True]]), np.array([[True, False]]))["macro_f1"] == 0.5
    # a probability of exactly the threshold is a positive
    at = M.condition_metrics(np.array([[0.5, 0.0]]), np.array([[1.0, 0.0]]), np.array([True]))
    assert at["pre"]["micro_f1"] == 1.0


@pytest.mark.parametrize("values", ["continuous", "few", "many"])
def test_top_classes_is_rank_classes_cut_ties_included(values):
    """The action combination keeps 100 of 10,000 pairs: found by partition, in rank_classes' order exactly
    (ties: the higher id first), also where the 100th value is tied."""
    from leap_cli.evaluate.metrics import top_classes

    rng = np.random.default_rng(0)
    scores = {"continuous": rng.standard_normal((200, 500)), "few": rng.integers(0, 4, (200, 500)).astype(float),
              "many": rng.integers(0, 200, (200, 500)).astype(np.float32)}[values]
    for k in (1, 5, 100, 499, 500, 600):
        assert np.array_equal(top_classes(scores, k), M.rank_classes(scores)[:, :k]), k
