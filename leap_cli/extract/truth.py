"""Compare descriptor records with the synthetic kitchen's ground truth (``ground-truth/segments.jsonl``).

Figures: the yaw direction of head turns (per segment with a turn: the estimated yaw change over each true
turn has the true sign), the dominant audio category against the true sound covering most of the segment,
hand-contact intervals (IoU of each true contact with the best estimated one of the same hand, and whether it
names the same object), and whether every true visible object is named by the objects component.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from leap_cli.io import read_jsonl


def load_truth(root: str | Path) -> dict[str, dict]:
    return {r["narration_id"]: r for r in read_jsonl(Path(root) / "ground-truth" / "segments.jsonl")}


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def _iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    inter = _overlap(*a, *b)
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def yaw_over(steps: list[dict], t0: float, t1: float) -> float:
    """Estimated yaw change during [t0, t1] (steps weighted by their overlap with it)."""
    total = 0.0
    for st in steps:
        d = st["stop"] - st["start"]
        if d > 0:
            total += st["yaw"] * _overlap(st["start"], st["stop"], t0, t1) / d
    return total


def true_sound(seg: dict) -> str | None:
    cover = Counter()
    for s in seg.get("sound", []):
        cover[s["label"]] += s["stop"] - s["start"]
    loud = {k: v for k, v in cover.items() if k != "silence"}
    pool = loud or cover
    return max(pool, key=pool.get) if pool else None


def base_name(label: str) -> str:
    """'board:chopping' -> 'board' (EPIC noun keys carry a qualifier after the colon)."""
    return label.split(":")[0].strip().lower()


def score(records: list[dict], truth: dict[str, dict]) -> dict:
    yaw_total = yaw_ok = 0
    audio_total = audio_ok = 0
    confusion: Counter = Counter()
    ious: list[float] = []
    contact_named = contact_total = 0
    obj_total = obj_named = 0
    for r in records:
        t = truth.get(r["narration_id"])
        if t is None:
            continue
        comps = r["components"]
        cam = comps.get("camera")
        turns = [c for c in t.get("camera", []) if c["motion"] in ("turn_left", "turn_right")]
        if cam and cam["status"] == "ok" and turns:
            yaw_total += 1
            ok = all((yaw_over(cam["data"]["steps"], c["start"], c["stop"]) > 0) == (c["motion"] == "turn_right")
                     for c in turns)
            yaw_ok += ok
        aud = comps.get("audio")
        want = true_sound(t)
        if aud and aud["status"] == "ok" and want:
            audio_total += 1
            got = aud["data"].get("dominant")
            audio_ok += got == want
            confusion[(want, got)] += 1
        hands = comps.get("hands")
        if hands and hands["status"] == "ok":
            est = {h["hand"]: h["contacts"] for h in hands["data"]["hands"]}
            for c in t.get("contacts", []):
                cands = est.get(c["hand"], [])
                best = max(cands, key=lambda e: _iou((e["start"], e["stop"]), (c["start"], c["stop"])), default=None)
                ious.append(_iou((best["start"], best["stop"]), (c["start"], c["stop"])) if best else 0.0)
                contact_total += 1
                contact_named += bool(best) and base_name(best["object"]) == base_name(c["object"])
        objs = comps.get("objects")
        if objs and objs["status"] == "ok":
            named = {base_name(o["label"]) for o in objs["data"]["objects"]}
            for o in t.get("objects", []):
                obj_total += 1
                obj_named += base_name(o) in named
    frac = lambda a, b: round(a / b, 4) if b else None  # noqa: E731
    return {"yaw_direction": {"segments": yaw_total, "correct": frac(yaw_ok, yaw_total)},
            "audio_category": {"segments": audio_total, "correct": frac(audio_ok, audio_total),
                               "confusions": {f"{a}->{b}": n for (a, b), n in confusion.most_common() if a != b}},
            "hand_contacts": {"contacts": contact_total,
                              "mean_iou": round(sum(ious) / len(ious), 4) if ious else None,
                              "iou_at_least_0.7": frac(sum(i >= 0.7 for i in ious), len(ious)),
                              "object_named": frac(contact_named, contact_total)},
            "objects": {"true_objects": obj_total, "named": frac(obj_named, obj_total)}}
