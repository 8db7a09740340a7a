"""EPIC-KITCHENS-100 metrics, computed as the official evaluators compute them, plus program metrics.

Recognition (epic-kitchens/C1-Action-Recognition, ``evaluate.py``): verb, noun and action top-1/top-5
accuracy over all scored segments; top-1 over the *tail* subset (a verb segment is tail when its verb class
is in ``EPIC_100_tail_verbs.csv``, a noun segment likewise, an action segment when its verb OR its noun is
tail) and over segments of *unseen* participants.

Anticipation (epic-kitchens/C3-Action-Anticipation): class-mean top-5 recall: for each class present in the
(sub)set, the fraction of its segments whose class is in the top 5, averaged over those classes; overall,
unseen and tail (same subsets as above).

Action scores (both tasks): softmax over each segment's top-100 verb scores and over its top-100 noun scores
(the official code applies the softmax *after* keeping the top 100, so with 300 nouns it is a softmax over the
100 best), the outer product of the two, and the 100 best (verb, noun) pairs kept. An action is identified by
``verb * 1000 + noun``. A true action outside those 100 pairs is never counted as correct. (C1's evaluator
calls SciPy's ``softmax`` without an axis, normalising over all segments at once; C3 normalises per segment.
Rankings, hence metrics, are the same; we normalise per segment, which is also what a submission carries.)

Ranking and ties: classes are ranked by descending score; equal scores rank the *higher* class id (or, for
action pairs, the later pair) first (``argsort(kind="stable")[::-1]``). The official code calls
``argsort()[::-1]`` with NumPy's default sort, which is not stable: on tied scores its order depends on the
NumPy build, so its top-k can differ from ours there. Without ties the two agree exactly. Scores are kept as
given (float64 stays float64); ``leap evaluate`` computes the classifiers in fp32 even under bf16 autocast,
since bf16 logits (8 bits of mantissa) tie often.

Empty subsets (no unseen participants, no tail class among the labels) give ``None`` where the official code
raises or drops the entry.

Programs (LEAP): S-Verb, Obj(A) and Obj(B) accuracy, compared position by position over the *true*
sub-action rows (positions before the END row, padding and marker rows excluded) of the segments with a valid
program; structure accuracy (the kind token -- ``<step>`` or a loop / conditional / routine marker -- over all
rows before END) and marker accuracy (over the marker rows alone); per-row condition F1 (micro and macro, over
the rows before END, with the base rate of the targets and the F1 of always predicting every condition);
pre/post-condition micro F1 (pooled TP/FP/FN) and macro F1 (mean F1 over the condition classes that occur in
the truth or the prediction of the evaluated segments), predictions thresholded at 0.5.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

import numpy as np

ACTION_VERB_MULTIPLIER = 1000
TOP_N_ACTIONS = 100
IGNORE_INDEX = -100


_ACTION_KEY = re.compile(r"(0|[1-9][0-9]*),(0|[1-9][0-9]*)")


def action_key_pair(key: str) -> tuple[int, int] | None:
    """(verb, noun) of a challenge file's action key, exactly as written ("7,12"); None for a sign, a blank, a
    leading zero or other digits (which int() takes, giving one action two keys) and for a noun id past
    ``action_id``'s room for it (``0,1005`` is action 1005, verb 1 noun 5)."""
    m = _ACTION_KEY.fullmatch(key) if isinstance(key, str) else None
    if m is None or int(m[2]) >= ACTION_VERB_MULTIPLIER:
        return None
    return int(m[1]), int(m[2])


def action_id(verb: np.ndarray | int, noun: np.ndarray | int) -> np.ndarray | int:
    """EPIC's action id: ``verb * 1000 + noun``."""
    return verb * ACTION_VERB_MULTIPLIER + noun


def rank_classes(scores: np.ndarray) -> np.ndarray:
    """[N, C] scores -> [N, C] class ids from best to worst (ties: higher id first)."""
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [N, C], got shape {scores.shape}")
    return np.argsort(scores, axis=-1, kind="stable")[:, ::-1]


def top_classes(scores: np.ndarray, k: int) -> np.ndarray:
    """``rank_classes(scores)[:, :k]`` (the same order, ties included) without sorting every class: the k best
    are found by partition and only they are sorted (the action combination keeps 100 of 10,000 pairs)."""
    scores = np.asarray(scores)
    n, c = scores.shape
    if k >= c:
        return rank_classes(scores)[:, :k]
    kth = np.partition(scores, c - k, axis=1)[:, c - k:c - k + 1]  # each row's k-th best value
    mask = scores >= kth
    exact = mask.sum(axis=1) == k  # else a tie at the k-th value (or NaN): that row is ranked whole
    out = np.empty((n, k), np.int64)
    if exact.any():
        idx = np.nonzero(mask[exact])[1].reshape(-1, k)  # ascending ids, so a stable sort keeps rank_classes' ties
        best = np.take_along_axis(scores[exact], idx, axis=1)
        out[exact] = np.take_along_axis(idx, np.argsort(best, axis=1, kind="stable")[:, ::-1], axis=1)
    if not exact.all():
        out[~exact] = rank_classes(scores[~exact])[:, :k]
    return out


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def action_scores(verb_scores: np.ndarray, noun_scores: np.ndarray, top_n: int = TOP_N_ACTIONS,
                  chunk: int = 512) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The official action combination. Returns (verbs, nouns, probs), each [N, K] with K = min(top_n,
    kept verbs * kept nouns), pairs ordered from the most to the least probable. Segments are processed
    ``chunk`` at a time (the joint matrix is [chunk, 100, 100])."""
    verb_scores, noun_scores = np.asarray(verb_scores, np.float64), np.asarray(noun_scores, np.float64)
    if len(verb_scores) > chunk:
        parts = [action_scores(verb_scores[i:i + chunk], noun_scores[i:i + chunk], top_n, chunk)
                 for i in range(0, len(verb_scores), chunk)]
        return tuple(np.concatenate([p[j] for p in parts]) for j in range(3))  # type: ignore[return-value]
    n = verb_scores.shape[0]
    rows = np.arange(n)[:, None]
    top_v = top_classes(verb_scores, top_n)  # [N, Kv]
    top_n_ = top_classes(noun_scores, top_n)  # [N, Kn]
    pv = softmax(verb_scores[rows, top_v])  # [N, Kv]
    pn = softmax(noun_scores[rows, top_n_])  # [N, Kn]
    joint = (pv[:, :, None] * pn[:, None, :]).reshape(n, -1)  # [N, Kv*Kn]
    order = top_classes(joint, top_n)  # [N, K]
    vi, ni = np.unravel_index(order, (top_v.shape[1], top_n_.shape[1]))
    return top_v[rows, vi], top_n_[rows, ni], joint[rows, order]


def rank_action_lists(action_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Rank each segment's scored action ids (the official dict-of-actions ranking): [N, K] -> [N, K]."""
    action_ids = np.asarray(action_ids)
    order = rank_classes(np.asarray(scores))
    return action_ids[np.arange(len(action_ids))[:, None], order]


def topk_accuracy(ranks: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5)) -> list[float] | None:
    """Fraction of segments whose label is among the first k ranked classes, for each k (None if empty)."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return None
    hits = ranks[:, :max(ks)] == labels.reshape(-1, 1)
    return [float(hits[:, :k].any(axis=1).mean()) for k in ks]


def mean_topk_recall(ranks: np.ndarray, labels: np.ndarray, k: int = 5) -> float | None:
    """Class-mean top-k recall over the classes present in ``labels`` (None if empty)."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return None
    hits = (ranks[:, :k] == labels.reshape(-1, 1)).any(axis=1)
    return float(np.mean([hits[labels == c].mean() for c in np.unique(labels)]))


def _subsets(verb_labels: np.ndarray, noun_labels: np.ndarray, participants: Sequence[str],
             tail_verbs: Iterable[int], tail_nouns: Iterable[int],
             unseen_participants: Iterable[str]) -> dict[str, dict[str, np.ndarray]]:
    tv = np.isin(verb_labels, np.fromiter(tail_verbs, dtype=np.int64))
    tn = np.isin(noun_labels, np.fromiter(tail_nouns, dtype=np.int64))
    unseen = np.isin(np.asarray(participants, dtype=object), np.asarray(list(unseen_participants), dtype=object))
    return {"unseen": {"verb": unseen, "noun": unseen, "action": unseen},
            "tail": {"verb": tv, "noun": tn, "action": tv | tn}}


def _ranks_and_labels(verb_scores, noun_scores, verb_labels, noun_labels, actions=None):
    """Ranks per task. ``actions`` = (action_ids [N,K], scores [N,K]) overrides the verb x noun combination
    (anticipation submissions may carry their own 100 action scores)."""
    if actions is None:
        v, n, p = action_scores(verb_scores, noun_scores)
        actions = (action_id(v, n), p)
    ranks = {"verb": rank_classes(verb_scores), "noun": rank_classes(noun_scores),
             "action": rank_action_lists(*actions)}
    labels = {"verb": np.asarray(verb_labels), "noun": np.asarray(noun_labels),
              "action": action_id(np.asarray(verb_labels), np.asarray(noun_labels))}
    return ranks, labels


def recognition_metrics(verb_scores: np.ndarray, noun_scores: np.ndarray, verb_labels: Sequence[int],
                        noun_labels: Sequence[int], participants: Sequence[str], *, tail_verbs: Iterable[int],
                        tail_nouns: Iterable[int], unseen_participants: Iterable[str]) -> dict:
    """``{"all": {task: {"top1", "top5"}}, "tail": {task: {"top1"}}, "unseen": {task: {"top1"}}}`` as fractions;
    a subset without segments holds None."""
    ranks, labels = _ranks_and_labels(verb_scores, noun_scores, verb_labels, noun_labels)
    out: dict = {"all": {}}
    for task in ("verb", "noun", "action"):
        acc = topk_accuracy(ranks[task], labels[task], (1, 5))
        out["all"][task] = {"top1": acc[0], "top5": acc[1]} if acc else {"top1": None, "top5": None}
    for name, masks in _subsets(labels["verb"], labels["noun"], participants, tail_verbs, tail_nouns,
                                unseen_participants).items():
        out[name] = {}
        for task in ("verb", "noun", "action"):
            m = masks[task]
            acc = topk_accuracy(ranks[task][m], labels[task][m], (1,))
            out[name][task] = {"top1": acc[0] if acc else None}
    return out


def anticipation_metrics(verb_scores: np.ndarray, noun_scores: np.ndarray, verb_labels: Sequence[int],
                         noun_labels: Sequence[int], participants: Sequence[str], *, tail_verbs: Iterable[int],
                         tail_nouns: Iterable[int], unseen_participants: Iterable[str],
                         actions: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """``{"overall"|"unseen"|"tail": {task: {"mt5r"}}}``: class-mean top-5 recall as fractions."""
    ranks, labels = _ranks_and_labels(verb_scores, noun_scores, verb_labels, noun_labels, actions)
    out: dict = {"overall": {t: {"mt5r": mean_topk_recall(ranks[t], labels[t])} for t in ranks}}
    for name, masks in _subsets(labels["verb"], labels["noun"], participants, tail_verbs, tail_nouns,
                                unseen_participants).items():
        out[name] = {t: {"mt5r": mean_topk_recall(ranks[t][masks[t]], labels[t][masks[t]])} for t in ranks}
    return out


def program_step_metrics(pred_steps: np.ndarray, true_steps: np.ndarray, valid: np.ndarray,
                         end_ids: Sequence[int] | None = None) -> dict:
    """S-Verb / Obj(A) / Obj(B) accuracy over the positions of the true sub-action sequences.

    ``pred_steps``/``true_steps``: [N, L, 3] (verb, object_a, object_b) ids; truth padded with -100 and
    ended by the END triple ``end_ids`` (excluded from the count); ``valid``: [N] segments with a valid program.
    A prediction shorter than L is padded with -1 (never correct)."""
    pred, true = np.asarray(pred_steps), np.asarray(true_steps)
    valid = np.asarray(valid, dtype=bool)
    n, length = true.shape[:2]
    if pred.shape[1] < length:
        pad = np.full((n, length - pred.shape[1], 3), -1, dtype=pred.dtype)
        pred = np.concatenate([pred, pad], axis=1)
    pred = pred[:, :length]
    before_end = true[..., -1] != IGNORE_INDEX  # [N, L]: rows of the true sequence (padding excluded)
    if end_ids is not None:
        is_end = np.all(true[..., :3] == np.asarray(end_ids).reshape(1, 1, 3), axis=-1)
        # positions from the first END on are not part of the sequence
        before_end &= np.cumsum(is_end, axis=1) == 0
    before_end &= valid[:, None]
    counted = before_end & (true[..., 0] != IGNORE_INDEX)  # sub-action rows (marker rows hold -100 here)
    total = int(counted.sum())
    out = {"segments": int(valid.sum()), "positions": total}
    for j, name in enumerate(("s_verb", "obj_a", "obj_b")):
        out[name] = float((pred[..., j] == true[..., j])[counted].mean()) if total else None
    if true.shape[-1] >= 5 and pred.shape[-1] >= 5:
        # structure: the kind token (<step> or a loop / conditional / routine marker) row by row
        rows = int(before_end.sum())
        kind_ok = pred[..., 4] == true[..., 4]
        out["structure"] = float(kind_ok[before_end].mean()) if rows else None
        markers = before_end & (true[..., 0] == IGNORE_INDEX)
        out["marker_rows"] = int(markers.sum())
        out["markers"] = float(kind_ok[markers].mean()) if markers.any() else None
        out["hand"] = float((pred[..., 3] == true[..., 3])[counted].mean()) if total else None
    return out


def step_condition_metrics(pred_probs: np.ndarray, true: np.ndarray, true_steps: np.ndarray, valid: np.ndarray,
                           end_ids: Sequence[int] | None = None, threshold: float = 0.5) -> dict:
    """Per-row condition F1 over the rows of the true sequences (before END, valid programs), row by row.
    ``pred_probs``/``true``: [N, L, 2P] (pre columns then post columns). Also the base rate (fraction of
    positive entries) and the F1 of always predicting every condition, the chance level of the micro F1."""
    pred_probs, true, steps = np.asarray(pred_probs), np.asarray(true), np.asarray(true_steps)
    valid = np.asarray(valid, dtype=bool)
    length = min(pred_probs.shape[1], true.shape[1], steps.shape[1])
    pred_probs, true, steps = pred_probs[:, :length], true[:, :length], steps[:, :length]
    rows = (steps[..., -1] != IGNORE_INDEX) & valid[:, None]
    if end_ids is not None:
        is_end = np.all(steps[..., :3] == np.asarray(end_ids).reshape(1, 1, 3), axis=-1)
        rows &= np.cumsum(is_end, axis=1) == 0
    half = true.shape[-1] // 2
    pred = pred_probs[rows] >= threshold  # [R, 2P]
    truth = true[rows] > 0.5
    rate = float(truth.mean()) if truth.size else None
    return {"rows": int(rows.sum()), "pre": f1_scores(pred[:, :half], truth[:, :half]),
            "post": f1_scores(pred[:, half:], truth[:, half:]), "all": f1_scores(pred, truth),
            "base_rate": rate, "chance_f1": (2 * rate / (1 + rate)) if rate else None}


def f1_scores(pred: np.ndarray, true: np.ndarray) -> dict:
    """Micro and macro F1 of multi-label predictions (bool [N, P]); macro over classes seen in truth or prediction."""
    pred, true = np.asarray(pred, bool), np.asarray(true, bool)
    tp = (pred & true).sum(axis=0).astype(np.float64)
    fp = (pred & ~true).sum(axis=0).astype(np.float64)
    fn = (~pred & true).sum(axis=0).astype(np.float64)
    denom = 2 * tp.sum() + fp.sum() + fn.sum()
    micro = float(2 * tp.sum() / denom) if denom else None
    active = (tp + fp + fn) > 0
    macro = float(np.mean(2 * tp[active] / (2 * tp[active] + fp[active] + fn[active]))) if active.any() else None
    return {"micro_f1": micro, "macro_f1": macro}


def condition_metrics(pred_probs: np.ndarray, true: np.ndarray, valid: np.ndarray,
                      threshold: float = 0.5) -> dict:
    """Pre- and post-condition F1. ``pred_probs``/``true``: [N, 2P] (pre columns then post columns)."""
    pred_probs, true = np.asarray(pred_probs), np.asarray(true)
    valid = np.asarray(valid, dtype=bool)
    half = true.shape[1] // 2
    pred = pred_probs[valid] >= threshold
    truth = true[valid] > 0.5
    return {"pre": f1_scores(pred[:, :half], truth[:, :half]), "post": f1_scores(pred[:, half:], truth[:, half:])}
