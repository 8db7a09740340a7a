"""Hand-object contact component, from EPIC's hand-object detections (Shan et al. 2020).

Per frame a hand has a side, a contact state (NO_CONTACT, SELF_CONTACT, ANOTHER_PERSON, PORTABLE_OBJECT,
STATIONARY_OBJECT) and ``object_offset``, the vector from the hand box centre to the centre of the object it
touches (fractions of the frame). Hands scoring under ``hand_threshold`` (default 0.5) are ignored. For each
hand the frames in contact with an object (portable or stationary) form intervals (gaps up to ``max_gap``
seconds are bridged, intervals shorter than ``min_duration`` dropped); each interval names the object: the
object box nearest to the offset point, named by the labelled object detections when the data set has them.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from leap_cli.epic.hand_objects import BBox, HandState
from leap_cli.errors import LeapError
from leap_cli.extract.base import Component, SegmentContext, result, unavailable
from leap_cli.extract.detections import contains, in_segment, video_hand_objects, video_object_detections

CONTACT_STATES = (HandState.PORTABLE_OBJECT, HandState.STATIONARY_OBJECT)


def _nearest_box(boxes: list, x: float, y: float, get=lambda b: b):
    """The box containing (x, y) with the nearest centre, else the nearest centre within 0.15 of the frame."""
    best, best_d = None, None
    for b in boxes:
        bb = get(b)
        cx, cy = bb.center
        d = float(np.hypot(cx - x, cy - y)) - (1.0 if contains(bb, x, y) else 0.0)
        if best_d is None or d < best_d:
            best, best_d = b, d
    if best is None or best_d > 0.15:
        return None
    return best


def contact_intervals(times: list[float], in_contact: list[bool], step: float, *, max_gap: float,
                      min_duration: float, end: float) -> list[tuple[int, int]]:
    """Indices [i, j] of runs of contact frames, bridging gaps up to ``max_gap`` seconds."""
    runs: list[list[int]] = []
    for i, c in enumerate(in_contact):
        if not c:
            continue
        if runs and times[i] - times[runs[-1][1]] <= max_gap + step * 1.01:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    out = []
    for i, j in runs:
        if min(times[j] + step, end) - times[i] >= min_duration:
            out.append((i, j))
    return out


class HandsComponent(Component):
    name = "hands"

    def __init__(self, hand_threshold: float = 0.5, object_threshold: float = 0.5, max_gap: float = 0.25,
                 min_duration: float = 0.15):
        self.hand_threshold = hand_threshold
        self.object_threshold = object_threshold
        self.max_gap = max_gap
        self.min_duration = min_duration

    def describe(self, ctx: SegmentContext) -> dict:
        s = ctx.segment
        frames = video_hand_objects(ctx.video_cache, ctx.layout, s.video_id)
        if frames is None:
            return unavailable("none", "no hand-object detections for this video")
        source = f"hand-objects:{ctx.video_cache[('hand_objects_path', s.video_id)].name}"
        naming_error = None
        try:
            labelled = video_object_detections(ctx.video_cache, ctx.layout, s.video_id) or {}
        except LeapError as e:  # contacts are still right; objects stay unnamed, and the record says why
            labelled, naming_error = {}, e.one_line()
        numbers = in_segment(frames, s.start_frame, s.stop_frame)
        if not numbers:
            return unavailable(source, "no detection frames inside the segment")
        times = [ctx.frame_time(n) for n in numbers]
        step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0 / ctx.fps
        duration = round(s.duration, 3)
        hands_data, timeline, phrases = [], [], []
        for side in ("left", "right"):
            states, names, seen = [], [], 0
            for n in numbers:
                fr = frames[n]
                hs = [h for h in fr.hands if h.side.name.lower() == side and h.score >= self.hand_threshold]
                h = max(hs, key=lambda h: h.score) if hs else None
                seen += h is not None
                if h is None or h.state not in CONTACT_STATES:
                    states.append(None)
                    names.append(None)
                    continue
                states.append(h.state.name.lower())
                names.append(self._object_name(h, fr, labelled.get(n, [])))
            runs = contact_intervals(times, [x is not None for x in states], step, max_gap=self.max_gap,
                                     min_duration=self.min_duration, end=duration)
            contacts = []
            for i, j in runs:
                named = Counter(x for x in names[i:j + 1] if x)
                obj = named.most_common(1)[0][0] if named else "object"
                state = Counter(x for x in states[i:j + 1] if x).most_common(1)[0][0]
                start, stop = max(0.0, times[i]), round(min(times[j] + step, duration), 3)
                contacts.append({"start": round(start, 3), "stop": stop, "object": obj,
                                 "state": state.replace("_object", "")})
                timeline.append({"start": round(start, 3), "stop": stop,
                                 "text": f"{side} hand touches {obj}"})
            hands_data.append({"hand": side, "visible_share": round(seen / len(numbers), 3),
                               "contacts": contacts})
            if contacts:
                phrases.append(f"{side} hand: " + ", ".join(
                    f"{c['object']} {c['start']:.1f}-{c['stop']:.1f} s" for c in contacts))
            elif seen:
                phrases.append(f"{side} hand free")
            else:
                phrases.append(f"{side} hand not seen")
        data = {"frames": len(numbers), "hand_threshold": self.hand_threshold, "hands": hands_data,
                "timeline": timeline}
        if naming_error:
            data["object_names_unavailable"] = naming_error
        return result("ok", source, data, "; ".join(phrases))

    def _object_name(self, hand, frame, labelled: list) -> str | None:
        cx, cy = hand.bbox.center
        x, y = cx + hand.object_offset[0], cy + hand.object_offset[1]
        objects = [o for o in frame.objects if o.score >= self.object_threshold]
        box: BBox | None = None
        if objects:
            o = _nearest_box(objects, x, y, get=lambda o: o.bbox)
            box = o.bbox if o is not None else None
        if labelled:
            if box is not None:
                best = max(labelled, key=lambda lb: lb.bbox.iou(box))
                if best.bbox.iou(box) >= 0.3:
                    return best.label
            lb = _nearest_box(labelled, x, y, get=lambda lb: lb.bbox)
            return lb.label if lb is not None else None
        return "object" if box is not None else None
