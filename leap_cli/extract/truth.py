"""Compare descriptor records with the synthetic kitchen's ground truth (``ground-truth/segments.jsonl``).

Only the measuring reads the truth; no extractor does. Figures (``score``):

- camera: the yaw direction of head turns (per segment with a turn: the estimated yaw change over each true
  turn has the true sign), overall and per method the camera component used (EPIC Fields poses, COLMAP poses,
  visual odometry); segments past the end of a truncated video are counted apart (nothing may be invented);
  the size of the turns read (``turn_windows``): over the camera's steps that a true turn overlaps, the estimated
  yaw against the true yaw change between the first step's start and the last one's stop, for the windows that
  hold each turn or shake of the video they touch whole (a shake returns to where it started): a step that
  straddles a turn's start or end holds all of its rotation there, so no share of a step is counted;
- audio, on a 0.05 s grid over each segment: per category, precision and recall of the predicted sound against
  the true sounds of the video (a segment also hears the end of the previous one's); the false-event rate:
  the share of background-only time (no kitchen sound within ``MARGIN`` s, only room tone, fan, hum, music,
  babble) where an event is predicted, with the predicted categories and the background layers present when it happens;
- hands: for each true contact, the IoU of its interval with the best predicted contact of the same hand, and
  the contact-state accuracy (in contact or not, per hand on the 0.05 s grid); whether the contact's object
  is named right;
- objects: precision and recall of the names the objects component gives against the nouns truly visible.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from statistics import median

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


MIN_TURN = 5.0  # degrees: a window whose true net yaw is smaller has no size to read (turns are 8-20 deg)


def video_turns(truth: dict[str, dict]) -> dict[str, list[tuple[float, float, float | None]]]:
    """Every true head turn and shake of each video in absolute seconds, with the yaw it leaves (deg, right
    positive; a shake's is 0: it returns to where it started; None: a turn of unknown size)."""
    out: dict[str, list] = {}
    for seg in truth.values():
        for ev in seg.get("camera", []):
            if ev["motion"] in ("turn_left", "turn_right", "shake"):
                deg = 0.0 if ev["motion"] == "shake" else ev.get("degrees")
                net = -deg if ev["motion"] == "turn_left" and deg is not None else deg
                out.setdefault(seg["video_id"], []).append((seg["start"] + ev["start"], seg["start"] + ev["stop"], net))
    return out


def turn_windows(steps: list[dict], seg: dict, turns: list[tuple[float, float, float | None]]
                 ) -> list[tuple[float, float]] | None:
    """(estimated, true) yaw over the steps each of the segment's true turns overlaps (one pair per window),
    for windows that hold every turn or shake of the video they touch whole and a net turn of ``MIN_TURN`` or
    more; None: no turn's window does (another motion runs over its edge, the turn runs past the last step, a
    turn's size is not known, or turns cancel out)."""
    out: dict[tuple[float, float], tuple[float, float]] = {}
    skipped = False
    for ev in seg.get("camera", []):
        if ev["motion"] not in ("turn_left", "turn_right"):
            continue
        cover = [st for st in steps if st["stop"] > ev["start"] and st["start"] < ev["stop"]]
        w0 = seg["start"] + cover[0]["start"] if cover else 0.0
        w1 = seg["start"] + cover[-1]["stop"] if cover else 0.0
        touched = [(a, b, net) for a, b, net in turns if b > w0 and a < w1]
        # (times are rounded to the ms in the records and the truth)
        if not cover or any(a < w0 - 1e-3 or b > w1 + 1e-3 or net is None for a, b, net in touched):
            skipped = True
            continue
        true = sum(net for _, _, net in touched)
        if abs(true) < MIN_TURN:
            skipped = True
            continue
        out[(w0, w1)] = (sum(st["yaw"] for st in cover), true)
    return None if skipped and not out else list(out.values())


def base_name(label: str) -> str:
    """'board:chopping' -> 'board' (EPIC noun keys carry a qualifier after the colon)."""
    return label.split(":")[0].strip().lower()


GRID = 0.05  # seconds
MARGIN = 0.25  # background-only time keeps this far from any true sound (half the DSP rules' analysis window)


def video_sounds(truth: dict[str, dict]) -> dict[str, list[tuple[float, float, str]]]:
    """Every true kitchen sound of each video in absolute seconds (the truth's "silence" is no sound)."""
    out: dict[str, list] = {}
    for seg in truth.values():
        for ev in seg.get("sound", []):
            if ev["label"] != "silence":
                out.setdefault(seg["video_id"], []).append((seg["start"] + ev["start"], seg["start"] + ev["stop"],
                                                            ev["label"]))
    return out


def _covering(events: list[dict], t: float) -> str | None:
    for e in events:
        if e["start"] <= t < e["stop"]:
            return e["label"]
    return None


TURN_SIGN = {"turn_right": 1, "turn_left": -1}  # of the yaw read over the turn (0 deg has none: no turn was read)


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def _in_contact(contacts: list[dict], t: float) -> bool:
    return any(c["start"] <= t < c["stop"] for c in contacts)


def score(records: list[dict], truth: dict[str, dict]) -> dict:
    from leap_cli.extract.audio import NOT_EVENTS

    sounds = video_sounds(truth)
    turns_of = video_turns(truth)
    yaw: Counter = Counter()  # (method, ok) -> segments
    sizes: dict[str, list[float]] = {}  # method -> estimated / true yaw per window of whole turns
    sizes_skipped = 0  # segments with a turn none of whose windows holds its motions whole
    past_end = past_end_invented = 0
    a_pred: Counter = Counter()
    a_true: Counter = Counter()
    a_hit: Counter = Counter()
    bg_steps = bg_false = 0
    false_as: Counter = Counter()
    false_under: Counter = Counter()
    ious: list[float] = []
    contact_named = contact_total = 0
    state_ok = state_total = 0
    obj_true = obj_found = obj_named_total = obj_named_right = 0
    for r in records:
        t = truth.get(r["narration_id"])
        if t is None:
            continue
        comps = r["components"]
        cam = comps.get("camera")
        if t.get("past_end_of_video"):
            past_end += 1
            past_end_invented += bool(cam and cam["status"] == "ok" and cam["data"].get("method") ==
                                      "visual-odometry")
        turns = [c for c in t.get("camera", []) if c["motion"] in ("turn_left", "turn_right")]
        if cam and cam["status"] == "ok" and turns and not t.get("past_end_of_video"):
            ok = all(_sign(yaw_over(cam["data"]["steps"], c["start"], c["stop"])) == TURN_SIGN[c["motion"]]
                     for c in turns)
            yaw[(cam["data"].get("method", "?"), ok)] += 1
            windows = turn_windows(cam["data"]["steps"], t, turns_of.get(t["video_id"], []))
            if windows is None:
                sizes_skipped += 1
            for est, true in windows or []:
                sizes.setdefault(cam["data"].get("method", "?"), []).append(est / true)
        aud = comps.get("audio")
        duration = t["stop"] - t["start"]
        steps = [i * GRID + GRID / 2 for i in range(int(duration / GRID))]
        if aud and aud["status"] == "ok":
            events = sounds.get(t["video_id"], [])
            for x in steps:
                now = {lab for s, e, lab in events if s <= t["start"] + x < e}
                near = any(s - MARGIN <= t["start"] + x < e + MARGIN for s, e, _ in events)
                got = _covering(aud["data"]["events"], x)
                got = None if got in NOT_EVENTS else got
                for lab in now:
                    a_true[lab] += 1
                    a_hit[lab] += got == lab
                if got:
                    a_pred[got] += 1
                if not near:
                    bg_steps += 1
                    if got:
                        bg_false += 1
                        false_as[got] += 1
                        for ly in t.get("background", []):
                            if ly["start"] <= x < ly["stop"] and ly["label"] != "room_tone":
                                false_under[ly["label"]] += 1
        hands = comps.get("hands")
        if hands and hands["status"] == "ok":
            est = {h["hand"]: h["contacts"] for h in hands["data"]["hands"]}
            for c in t.get("contacts", []):
                cands = est.get(c["hand"], [])
                best = max(cands, key=lambda e: _iou((e["start"], e["stop"]), (c["start"], c["stop"])), default=None)
                ious.append(_iou((best["start"], best["stop"]), (c["start"], c["stop"])) if best else 0.0)
                contact_total += 1
                contact_named += bool(best) and base_name(best["object"]) == base_name(c["object"])
            for side in ("left", "right"):
                true_c = [c for c in t.get("contacts", []) if c["hand"] == side]
                for x in steps:
                    state_total += 1
                    state_ok += _in_contact(true_c, x) == _in_contact(est.get(side, []), x)
        objs = comps.get("objects")
        if objs and objs["status"] == "ok":
            named = {base_name(o["label"]) for o in objs["data"]["objects"]}
            visible = {base_name(o) for o in t.get("objects", [])}
            obj_true += len(visible)
            obj_found += len(visible & named)
            obj_named_total += len(named)
            obj_named_right += len(named & visible)
    frac = lambda a, b: round(a / b, 4) if b else None  # noqa: E731
    methods = sorted({m for m, _ in yaw})
    yaw_all = sum(yaw.values())
    categories = sorted(set(a_true) | set(a_pred))
    return {
        "yaw_direction": {"segments": yaw_all, "correct": frac(sum(n for (_, ok), n in yaw.items() if ok), yaw_all),
                          "by_method": {m: {"segments": yaw[(m, True)] + yaw[(m, False)],
                                            "correct": frac(yaw[(m, True)], yaw[(m, True)] + yaw[(m, False)])}
                                        for m in methods}},
        "turn_size": {**_ratios([r for rs in sizes.values() for r in rs]), "segments_skipped": sizes_skipped,
                      "by_method": {m: _ratios(rs) for m, rs in sorted(sizes.items())}},
        "past_end_of_video": {"segments": past_end, "camera_invented": past_end_invented},
        "audio": {"per_category": {c: {"precision": frac(a_hit[c], a_pred[c]), "recall": frac(a_hit[c], a_true[c]),
                                       "true_seconds": round(a_true[c] * GRID, 1),
                                       "predicted_seconds": round(a_pred[c] * GRID, 1)} for c in categories},
                  "background_seconds": round(bg_steps * GRID, 1),
                  "false_event_rate": frac(bg_false, bg_steps),
                  "false_events_as": {k: round(v * GRID, 1) for k, v in false_as.most_common()},
                  "false_events_under": {k: round(v * GRID, 1) for k, v in false_under.most_common()}},
        "hand_contacts": {"contacts": contact_total,
                          "mean_iou": round(sum(ious) / len(ious), 4) if ious else None,
                          "iou_at_least_0.5": frac(sum(i >= 0.5 for i in ious), len(ious)),
                          "state_accuracy": frac(state_ok, state_total),
                          "object_named": frac(contact_named, contact_total)},
        "objects": {"true_objects": obj_true, "recall": frac(obj_found, obj_true),
                    "names_given": obj_named_total, "precision": frac(obj_named_right, obj_named_total)}}


def _ratios(ratios: list[float]) -> dict:
    """The windows' estimated / true yaw: how many, their median and the share read within a factor 1.25."""
    return {"windows": len(ratios), "median_ratio": round(median(ratios), 4) if ratios else None,
            "within_1.25x": round(sum(0.8 <= r <= 1.25 for r in ratios) / len(ratios), 4) if ratios else None}
