"""Score a scores file against an annotations folder: the ``metrics.json`` of ``leap evaluate``.

``metrics.json``::

    {"split": "val", "task": "recognition", "segments": 9668, "not_scored": 0,
     "recognition": {"all": {"verb": {"top1", "top5"}, ...}, "tail": {...}, "unseen": {...}},   # or
     "anticipation": {"overall": {"verb": {"mt5r"}, ...}, "unseen": {...}, "tail": {...}},
     "programs": {"steps": {"s_verb", "obj_a", "obj_b", "hand", "structure", "markers", "segments", "positions"},
                  "step_conditions": {"pre"|"post"|"all": {"micro_f1", "macro_f1"}, "rows", "base_rate", "chance_f1"},
                  "conditions": {"pre": {"micro_f1", "macro_f1"}, "post": {...}}},   # when the file has them
     "meta": {...}}

Values are fractions in [0, 1] (the table multiplies by 100). Like the official recognition evaluator, the
segments scored are those of the file; segments of the split the file lacks are counted in ``not_scored``.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from leap_cli.common import check_task, counted
from leap_cli.epic.annotations import TAIL_NOUNS, TAIL_VERBS, UNSEEN, Annotations
from leap_cli.errors import LeapError
from leap_cli.evaluate import metrics as M

log = logging.getLogger(__name__)
_warned: set = set()  # the missing subset lists already named (once per process)


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def check_scorable(annotations: Annotations, split: str, ids: list[str], classes: tuple[int, int],
                   source: str, ids_source: str | None = None) -> dict:
    """The split's segments by narration id, once scores of ``ids`` with ``classes`` (verbs, nouns) can be scored
    against them: every id in the split, as many classes as the class files (what `leap submit` demands too).
    ``leap evaluate --run`` asks this of the checkpoint (``source``) and the shards (``ids_source``) before the
    model runs."""
    from leap_cli.submit import class_counts

    segments = {s.narration_id: s for s in annotations.segments(split)}
    unknown = [i for i in ids if i not in segments]
    if unknown:
        raise LeapError(f"{counted(len(unknown), 'narration id')} {'is' if len(unknown) == 1 else 'are'} not in the "
                        f"{split} annotations, e.g. "
                        f"{', '.join(unknown[:5])}", path=ids_source or source,
                        fix=f"give the {split} split's shards (--shards DIR), or the annotations they were built from"
                        if ids_source else f"score the {split} split, or pass the annotations the scores were made for")
    for name, n, count in zip(("verb", "noun"), classes, class_counts(annotations)):
        if n != count:
            raise LeapError(f"{name}_output has {n} classes, the class file needs {count} (max id + 1)",
                            path=source, fix="score with a model built for these annotations' classes")
    return segments


def _why_not_scored(segments: dict, scored: set, meta: dict) -> str:
    """Of the split's segments without scores, which build-shards skipped (the scores of ``leap evaluate`` list
    them, ``meta.skipped``) and which the shards do not hold at all (rows added to the split's CSV since they were
    built): the first need their videos, the second the shards built again. Nothing where the scores do not say."""
    if not isinstance(meta.get("skipped"), list):
        return ""
    skipped = set(meta["skipped"])
    missing = [k for k in segments if k not in scored]
    by_build = sum(k in skipped for k in missing)
    parts = [f"{by_build} skipped by build-shards (its manifest says why)"] if by_build else []
    rest = [k for k in missing if k not in skipped]
    if rest:
        parts.append(f"{len(rest)} not in the shards at all (e.g. {rest[0]}: rows added to the split's CSV since the "
                     "shards were built; leap build-shards --force builds them again with these)")
    return ": " + "; ".join(parts)


def evaluate_scores(scores: dict, annotations: Annotations, split: str = "val", task: str = "recognition",
                    *, source: str = "<scores>") -> dict:
    """Metrics of a normalized scores dict (see ``scores.load_scores``) against the labels of ``split``."""
    check_task(task)
    ids = scores["narration_id"]
    verb, noun = _np(scores["verb_output"]).astype(np.float64), _np(scores["noun_output"]).astype(np.float64)
    segments = check_scorable(annotations, split, ids, (verb.shape[1], noun.shape[1]), source)
    segs = [segments[i] for i in ids]
    unlabelled = [s.narration_id for s in segs if not s.has_labels]
    if unlabelled:
        raise LeapError(f"the {split} split has no labels (e.g. {unlabelled[0]})", path=annotations.split_path(split),
                        fix="metrics need a labelled split such as val; use `leap submit` for test scores")
    vl = np.array([s.verb_class for s in segs], dtype=np.int64)
    nl = np.array([s.noun_class for s in segs], dtype=np.int64)
    for name, out in zip(("verb", "noun"), (verb, noun)):
        bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
        if len(bad):
            ids = ", ".join(segs[i].narration_id for i in bad[:5]) + (", ..." if len(bad) > 5 else "")
            raise LeapError(f"{name}_output holds NaN or infinity for {counted(len(bad), 'segment')}: {ids}", path=source,
                            fix="check the model's outputs")
    for name in (TAIL_VERBS, TAIL_NOUNS, UNSEEN.get(split)):
        path = annotations.folder / name if name else None
        if path and not path.exists() and path not in _warned:  # else null subsets look like empty ones
            _warned.add(path)
            log.warning("%s not found: the %s metrics are null (n/a)", path, "unseen" if name in UNSEEN.values()
                        else "tail")
    kw = dict(tail_verbs=annotations.tail_verbs, tail_nouns=annotations.tail_nouns,
              unseen_participants=annotations.unseen_participants(split))
    participants = [s.participant_id for s in segs]
    result: dict = {"split": split, "task": task, "segments": len(ids), "not_scored": len(segments) - len(ids)}
    if result["not_scored"]:
        log.warning("%s of %s %s not in %s%s", counted(result["not_scored"], "segment"), split,
                    "is" if result["not_scored"] == 1 else "are", source,
                    _why_not_scored(segments, set(ids), scores.get("meta") or {}))
    if task == "recognition":
        result["recognition"] = M.recognition_metrics(verb, noun, vl, nl, participants, **kw)
    else:
        act = scores.get("action")
        actions = (_np(act["ids"]), _np(act["scores"])) if act else None
        result["anticipation"] = M.anticipation_metrics(verb, noun, vl, nl, participants, actions=actions, **kw)
    program = scores.get("program") or {}
    if "target_steps" in program and "steps" in program:
        valid = _np(program.get("has_program", np.ones(len(ids), bool))).astype(bool)
        result["programs"] = {"steps": M.program_step_metrics(_np(program["steps"]), _np(program["target_steps"]),
                                                              valid, program.get("end_ids"))}
        if "step_conditions" in program and "target_step_conditions" in program:
            result["programs"]["step_conditions"] = M.step_condition_metrics(
                _np(program["step_conditions"]), _np(program["target_step_conditions"]), _np(program["target_steps"]),
                valid, program.get("end_ids"))
        if "conditions" in program and "target_conditions" in program:
            result["programs"]["conditions"] = M.condition_metrics(_np(program["conditions"]),
                                                                   _np(program["target_conditions"]), valid)
    if scores.get("meta"):
        result["meta"] = scores["meta"]
    return result


def metric_rows(result: dict) -> list[tuple[str, str, str, str]]:
    """(group, subset, task, value in %) rows for the terminal table."""
    def pct(v):
        return "n/a" if v is None else f"{100 * v:.2f}"

    rows = []
    for group in ("recognition", "anticipation"):
        for subset, tasks in result.get(group, {}).items():
            for task, vals in tasks.items():
                for k, v in vals.items():
                    rows.append((group, subset, f"{task} {k}", pct(v)))
    prog = result.get("programs", {})
    for k in ("s_verb", "obj_a", "obj_b", "hand", "structure", "markers"):
        if k in prog.get("steps", {}):
            rows.append(("programs", "valid programs", k, pct(prog["steps"][k])))
    for side, vals in prog.get("conditions", {}).items():
        for k, v in vals.items():
            rows.append(("programs", "valid programs", f"{side} {k}", pct(v)))
    step_conds = prog.get("step_conditions", {})
    for side in ("pre", "post", "all"):
        if side in step_conds:
            rows.append(("programs", "per step", f"{side} micro_f1", pct(step_conds[side]["micro_f1"])))
    if "chance_f1" in step_conds:
        rows.append(("programs", "per step", "chance micro_f1 (all)", pct(step_conds["chance_f1"])))
    return rows
