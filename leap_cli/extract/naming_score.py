"""How well descriptor records name objects: against the synthetic kitchen's truth, and against EPIC's narrations.

``score_against_truth``: *held objects* are the hands component's contacts. A named contact (not "object") is
right when the true contact of the same hand that overlaps it most in time holds the object of that name
(precision); a true contact is found when such a named contact exists (recall). *Segment objects*: every name in
the objects and hands records of a segment against the true objects of the segment (visible or held); micro
precision and recall over segments. Names compare by their head noun ('board:chopping' == 'board').

``score_against_narration``: on real data without truth, the held object's CLIP names (``names_without_prior``,
so the narration is not scored against itself) against the segment's noun classes: top-1 and top-5 per contact.
"""

from __future__ import annotations

from collections import Counter

from leap_cli.extract.truth import base_name


def _overlap(a: dict, b: dict) -> float:
    return max(0.0, min(a["stop"], b["stop"]) - max(a["start"], b["start"]))


def _frac(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def _contacts(record: dict) -> dict[str, list[dict]]:
    hands = record.get("components", {}).get("hands")
    if not hands or hands.get("status") != "ok":
        return {}
    return {h["hand"]: h["contacts"] for h in hands["data"]["hands"]}


def record_names(record: dict) -> set[str]:
    """Every object name a record gives (objects labels and contact objects), "object" left out."""
    names = {base_name(c["object"]) for cs in _contacts(record).values() for c in cs}
    objs = record.get("components", {}).get("objects")
    if objs and objs.get("status") == "ok":
        names |= {base_name(o["label"]) for o in objs["data"].get("objects", [])}
    names.discard("object")
    return names


def score_against_truth(records: list[dict], truth: dict[str, dict]) -> dict:
    named = named_right = true_contacts = found = 0
    seg_named = seg_right = seg_true = 0
    by_source: Counter = Counter()
    confusions: Counter = Counter()
    for r in records:
        t = truth.get(r["narration_id"])
        if t is None:
            continue
        est = _contacts(r)
        true = t.get("contacts", [])
        for hand, cs in est.items():
            mine = [c for c in true if c["hand"] == hand]
            for c in cs:
                if base_name(c["object"]) == "object":
                    continue
                named += 1
                by_source[c.get("named_by") or "none"] += 1
                best = max(mine, key=lambda x: _overlap(x, c), default=None)
                truth_name = base_name(best["object"]) if best and _overlap(best, c) > 0 else "(no true contact)"
                named_right += truth_name == base_name(c["object"])
                if truth_name != base_name(c["object"]):
                    confusions[f"{truth_name}->{base_name(c['object'])}"] += 1
        for c in true:
            true_contacts += 1
            found += any(_overlap(e, c) > 0 and base_name(e["object"]) == base_name(c["object"])
                         for e in est.get(c["hand"], []))
        names = record_names(r)
        want = {base_name(o) for o in t.get("objects", [])} | {base_name(c["object"]) for c in true}
        seg_named += len(names)
        seg_right += len(names & want)
        seg_true += len(want)
    return {"held": {"named_contacts": named, "precision": _frac(named_right, named),
                     "true_contacts": true_contacts, "recall": _frac(found, true_contacts),
                     "named_by": dict(by_source), "confusions": dict(confusions.most_common(8))},
            "segment_objects": {"names": seg_named, "precision": _frac(seg_right, seg_named),
                                "true_objects": seg_true, "recall": _frac(seg_right, seg_true)}}


def score_against_narration(records: list[dict], segments: dict, vocab, field: str = "names_without_prior") -> dict:
    """Top-1/top-5 of each CLIP-named contact against its segment's noun classes (``segments``: by narration id)."""
    contacts = top1 = top5 = 0
    model: Counter = Counter()
    for r in records:
        seg = segments.get(r["narration_id"])
        if seg is None:
            continue
        nouns = {c for c in (seg.noun_class, *seg.all_noun_classes) if c is not None}
        for cs in _contacts(r).values():
            for c in cs:
                names = [n["noun"] for n in c.get(field) or []]
                if not names:
                    continue
                ids = [vocab.resolve(n) for n in names]
                contacts += 1
                model[c.get("named_by")] += 1
                top1 += ids[0] in nouns
                top5 += any(i in nouns for i in ids[:5])
    return {"contacts": contacts, "top1": _frac(top1, contacts), "top5": _frac(top5, contacts),
            "named_by": dict(model)}
