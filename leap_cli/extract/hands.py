"""Hand-object contact component, from EPIC's hand-object detections (Shan et al. 2020).

Per frame a hand has a side, a contact state (NO_CONTACT, SELF_CONTACT, ANOTHER_PERSON, PORTABLE_OBJECT,
STATIONARY_OBJECT) and ``object_offset``, the vector from the hand box centre to the centre of the object it
touches (fractions of the frame). Hands scoring ``hand_threshold`` (default 0.5) or less are ignored (EPIC's
``get_hand_object_interactions`` skips them). For each
hand the frames in contact with an object (portable or stationary) form intervals (gaps up to ``max_gap``
seconds are bridged, intervals shorter than ``min_duration`` dropped); the contact box of a frame is the object
box (score >= ``object_threshold``) whose centre is nearest the offset point, as EPIC's
``FrameDetections.get_hand_object_interactions`` matches them. Each interval names its object, and says what named
it (``named_by``):

1. ``object-detections``: the data set's labelled detections at the contact box, when it has them;
2. ``detector:...``: the objects component's detector boxes that overlap the contact box (IoU >= 0.3) lend
   their label;
3. ``clip:...``: CLIP's zero-shot name of the contact box's crop on up to ``clip_frames`` frames of the
   interval, with the narration's nouns as a prior (``naming.py``); ``names`` keeps the top names and scores,
   ``names_without_prior`` CLIP's own (what ``benchmarks/bench_naming.py epic`` measures against narrations);
4. ``narration-prior``: without weights, the narration noun that fits the contact (``naming.prior_name``);
5. else "object".
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from leap_cli.epic.hand_objects import BBox, HandState
from leap_cli.epic.timing import epic_frame_rate
from leap_cli.errors import LeapError
from leap_cli.extract.base import Component, SegmentContext, result, unavailable
from leap_cli.extract.detections import contains, in_segment, video_hand_objects, video_object_detections
from leap_cli.extract.naming import mean_names, narration_nouns, prior_name
from leap_cli.extract.objects import noun_vocab, spread

CONTACT_STATES = (HandState.PORTABLE_OBJECT, HandState.STATIONARY_OBJECT)


def _nearest_box(boxes: list, x: float, y: float, get=lambda b: b):
    """The box containing (x, y) with the nearest centre, else the nearest centre within 0.15 of the frame (the
    labelled detection that names a contact whose box none overlaps)."""
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


def contacts_timeline(hands: list[dict]) -> list[dict]:
    """The clip text's timeline events of the hands' contacts (``data["hands"]``)."""
    return [{"start": c["start"], "stop": c["stop"], "text": f"{h['hand']} hand touches {c['object']}"}
            for h in hands for c in h["contacts"]]


def hands_text(hands: list[dict]) -> str:
    """The clip text's Hands part: each hand's contacts, else free (seen) or not seen."""
    phrases = []
    for h in hands:
        if h["contacts"]:
            phrases.append(f"{h['hand']} hand: " + ", ".join(
                f"{c['object']} {c['start']:.1f}-{c['stop']:.1f} s" for c in h["contacts"]))
        else:
            phrases.append(f"{h['hand']} hand {'free' if h['visible_share'] else 'not seen'}")
    return "; ".join(phrases)


class HandsComponent(Component):
    name = "hands"

    def __init__(self, hand_threshold: float = 0.5, object_threshold: float = 0.5, max_gap: float = 0.25,
                 min_duration: float = 0.15, namer=None, clip_frames: int = 3, use_prior: bool = True):
        self.hand_threshold = hand_threshold
        self.object_threshold = object_threshold
        self.max_gap = max_gap
        self.min_duration = min_duration
        self.namer = namer
        self.clip_frames = clip_frames
        self.use_prior = use_prior
        self.needs_frames = namer is not None
        self._vocabs: dict = {}

    def describe(self, ctx: SegmentContext) -> dict:
        s = ctx.segment
        frames = video_hand_objects(ctx.video_cache, ctx.layout, s.video_id)
        if frames is None:
            return unavailable("none", "no hand-object detections for this video")
        source = f"hand-objects:{ctx.video_cache[('hand_objects_path', s.video_id)].name}"
        naming_error = None
        try:
            found = video_object_detections(ctx.video_cache, ctx.layout, s.video_id)
            labelled = found or {}
        except LeapError as e:  # contacts are still right; objects stay unnamed, and the record says why
            found, labelled, naming_error = {}, {}, e.one_line()
        numbers = in_segment(frames, s.start_frame, s.stop_frame)
        if not numbers:
            return unavailable(source, "no detection frames inside the segment")
        times = [ctx.epic_frame_time(n) for n in numbers]  # hand-object boxes count frames as EPIC does
        step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0 / epic_frame_rate(ctx.fps)
        duration = round(s.duration, 3)
        vocab = noun_vocab(ctx, self._vocabs)
        detector = ctx.video_cache.get(("detector_boxes", s.narration_id))
        hands_data = []
        for side in ("left", "right"):
            states, names, boxes, seen = [], [], [], 0
            for n in numbers:
                fr = frames[n]
                hs = [h for h in fr.hands if h.side.name.lower() == side and h.score > self.hand_threshold]
                h = max(hs, key=lambda h: h.score) if hs else None
                seen += h is not None
                if h is None or h.state not in CONTACT_STATES:
                    states.append(None)
                    names.append(None)
                    boxes.append(None)
                    continue
                states.append(h.state.name.lower())
                box, label = self._contact_box(h, fr, labelled.get(n, []))
                names.append(label)
                boxes.append(box)
            runs = contact_intervals(times, [x is not None for x in states], step, max_gap=self.max_gap,
                                     min_duration=self.min_duration, end=duration)
            contacts = []
            for i, j in runs:
                state = Counter(x for x in states[i:j + 1] if x).most_common(1)[0][0].replace("_object", "")
                contact = self._name_contact(ctx, numbers[i:j + 1], names[i:j + 1], boxes[i:j + 1], state,
                                             vocab, detector)
                start, stop = max(0.0, times[i]), round(min(times[j] + step, duration), 3)
                contacts.append({"start": round(start, 3), "stop": stop, "object": contact.pop("object"),
                                 "state": state, **contact})
            # a hand seen at all keeps a share above 0 (hands_text says "free", not "not seen")
            share = max(round(seen / len(numbers), 3), 0.001) if seen else 0.0
            hands_data.append({"hand": side, "visible_share": share, "contacts": contacts})
        data = {"frames": len(numbers), "hand_threshold": self.hand_threshold, "hands": hands_data,
                "timeline": contacts_timeline(hands_data)}
        if naming_error:
            data["object_names_unavailable"] = naming_error
        elif found is None and any(h["contacts"] for h in hands_data):  # (extract --retry-errors names them again
            data["named_without_detections"] = True  # once the labelled detections are placed)
        return result("ok", source, data, hands_text(hands_data))

    def _contact_box(self, hand, frame, labelled: list) -> tuple[BBox | None, str | None]:
        """The object box whose centre is nearest the hand's offset point (EPIC's ``get_hand_object_interactions``:
        no containment rule, no distance cap), and its name from labelled detections."""
        cx, cy = hand.bbox.center
        x, y = cx + hand.object_offset[0], cy + hand.object_offset[1]
        objects = [o for o in frame.objects if o.score >= self.object_threshold]
        box = min((o.bbox for o in objects), key=lambda b: (b.center[0] - x) ** 2 + (b.center[1] - y) ** 2,
                  default=None)
        if labelled:
            if box is not None:
                best = max(labelled, key=lambda lb: lb.bbox.iou(box))
                if best.bbox.iou(box) >= 0.3:
                    return box, best.label
            lb = _nearest_box(labelled, x, y, get=lambda lb: lb.bbox)
            return box, (lb.label if lb is not None else None)
        return box, None

    def _name_contact(self, ctx: SegmentContext, numbers: list[int], names: list, boxes: list, state: str,
                      vocab, detector) -> dict:
        """``object`` and ``named_by`` (and CLIP's ``names``) of one contact interval."""
        named = Counter(x for x in names if x)
        if named:
            return {"object": named.most_common(1)[0][0], "named_by": "object-detections"}
        with_box = [(n, b) for n, b in zip(numbers, boxes) if b is not None]
        if detector is not None and with_box:
            det_source, per_frame = detector
            votes: Counter = Counter()
            for n, dets in per_frame.items():  # each detector frame against the nearest frame's contact box
                if not numbers[0] <= n <= numbers[-1]:
                    continue
                _, box = min(with_box, key=lambda nb: abs(nb[0] - n))
                best = max((d for d in dets if d.label), key=lambda d: d.bbox.iou(box), default=None)
                if best is not None and best.bbox.iou(box) >= 0.3:
                    votes[best.label] += 1
            if votes:
                return {"object": votes.most_common(1)[0][0], "named_by": det_source}
        if self.namer is not None and vocab is not None and with_box and ctx.read_frames is not None:
            picked = spread(with_box, self.clip_frames)
            images = ctx.read_epic_frames([n for n, _ in picked], 0)
            with_prior, alone = self.namer.name_boxes_both(list(images), [b for _, b in picked], vocab,
                                                           prior=narration_nouns(ctx.segment, vocab))
            top, clip_only = mean_names(with_prior), mean_names(alone)
            if top:
                return {"object": top[0][0], "named_by": self.namer.source,
                        "names": [{"noun": n, "score": sc} for n, sc in top],
                        "names_without_prior": [{"noun": n, "score": sc} for n, sc in clip_only]}
        guess = prior_name(ctx.segment, vocab, state) if self.use_prior else None
        if guess is not None:
            return {"object": guess, "named_by": "narration-prior"}
        return {"object": "object", "named_by": None}

    def close(self) -> None:
        self.namer = None
