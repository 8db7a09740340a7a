"""Hand-object detections as a real 100DOH detector (Shan et al. 2020) would give them for the kitchen's frames.

EPIC-KITCHENS-100 publishes the output of that detector: per frame, hand boxes with a side, a score, a contact
state and an offset to the object in contact, and unlabelled boxes of the objects in contact. The detector errs,
so the kitchen degrades its truth the way it does (rates below are the defaults of ``DetectorNoise``; seeded):

- missed hands, in bursts (a two-state chain: a hand is lost with probability ``miss_start`` per frame and
  stays lost with ``miss_stay``); some true hands come back with a score under 0.5;
- box jitter (each edge moves by a normal draw with ``box_jitter`` of the box's width/height);
- false positive hands (``false_hand`` per frame: a box below the top 30% of the frame, score 0.5-0.8);
- hand side swaps (``side_swap`` per hand and frame);
- contact states that flicker: a true contact is reported as no contact in bursts (``contact_drop_start`` /
  ``contact_drop_stay``), portable and stationary are confused (``state_confusion``), a free hand is reported
  in contact now and then (``false_contact``);
- object boxes of contacts missed (``object_miss``), jittered more than hands (``object_jitter``), false
  positive object boxes (``false_object``), and offsets off by a normal draw (``offset_noise``).

No labels come out: what the boxes are stays in the kitchen's ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from leap_cli.epic.hand_objects import BBox, FrameDetections, HandDetection, HandSide, HandState, ObjectDetection


@dataclass(frozen=True)
class DetectorNoise:
    miss_start: float = 0.04
    miss_stay: float = 0.6
    low_score: float = 0.03
    box_jitter: float = 0.05
    false_hand: float = 0.03
    side_swap: float = 0.02
    contact_drop_start: float = 0.06
    contact_drop_stay: float = 0.5
    state_confusion: float = 0.12
    false_contact: float = 0.03
    object_miss: float = 0.1
    object_jitter: float = 0.08
    false_object: float = 0.04
    offset_noise: float = 0.02


@dataclass
class TrueHand:
    """One hand in one frame as the kitchen drew it: box in [0, 1], side, contact (object box or None)."""

    side: str
    box: tuple[float, float, float, float]
    contact_box: tuple[float, float, float, float] | None = None
    stationary: bool = False


_SMALLEST = 0.005  # a published box's least width and height


def _clip_box(l: float, t: float, r: float, b: float) -> BBox:
    """The box cut to the image, at least ``_SMALLEST`` a side (a sliver at the right or bottom edge, or a box
    wholly past it, grows inwards: it was widened past 1.0)."""
    l, r = sorted((min(max(l, 0.0), 1.0), min(max(r, 0.0), 1.0)))
    t, b = sorted((min(max(t, 0.0), 1.0), min(max(b, 0.0), 1.0)))
    l, t = min(l, 1.0 - _SMALLEST), min(t, 1.0 - _SMALLEST)
    return BBox(round(l, 4), round(t, 4), round(max(r, l + _SMALLEST), 4), round(max(b, t + _SMALLEST), 4))


def _center(box) -> tuple[float, float]:
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


class Detector:
    """Degrades the truth frame by frame (call ``frame`` in frame order: misses and drops run in bursts)."""

    def __init__(self, rng: np.random.Generator, noise: DetectorNoise = DetectorNoise()):
        self.rng = rng
        self.noise = noise
        self.missing = {"left": False, "right": False}
        self.dropping = {"left": False, "right": False}

    def _jitter(self, box, share: float) -> BBox:
        w, h = box[2] - box[0], box[3] - box[1]
        d = self.rng.normal(0.0, share, 4) * np.array([w, h, w, h])
        return _clip_box(*(float(v) for v in np.asarray(box) + d))

    def _random_box(self, lo: float, hi: float) -> BBox:
        r = self.rng
        w, h = float(r.uniform(lo, hi)), float(r.uniform(lo, hi))
        x, y = float(r.uniform(0, 1 - w)), float(r.uniform(0.3, 1 - h))
        return _clip_box(x, y, x + w, y + h)

    def frame(self, video_id: str, number: int, hands: list[TrueHand]) -> FrameDetections:
        r, n = self.rng, self.noise
        out_hands: list[HandDetection] = []
        out_objects: list[ObjectDetection] = []
        for h in hands:
            gone = self.missing[h.side]
            gone = r.random() < (n.miss_stay if gone else n.miss_start)
            self.missing[h.side] = gone
            if gone:
                continue
            hb = self._jitter(h.box, n.box_jitter)
            score = float(r.uniform(0.25, 0.5)) if r.random() < n.low_score else float(r.uniform(0.7, 0.99))
            side = h.side if r.random() >= n.side_swap else ("left" if h.side == "right" else "right")
            state, offset = HandState.NO_CONTACT, (0.0, 0.0)
            if h.contact_box is not None:
                drop = self.dropping[h.side]
                drop = r.random() < (n.contact_drop_stay if drop else n.contact_drop_start)
                self.dropping[h.side] = drop
                if not drop:
                    stationary = h.stationary != (r.random() < n.state_confusion)
                    state = HandState.STATIONARY_OBJECT if stationary else HandState.PORTABLE_OBJECT
                    (ox, oy), (hx, hy) = _center(h.contact_box), hb.center
                    offset = (round(ox - hx + float(r.normal(0, n.offset_noise)), 4),
                              round(oy - hy + float(r.normal(0, n.offset_noise)), 4))
                    if r.random() >= n.object_miss:
                        out_objects.append(ObjectDetection(self._jitter(h.contact_box, n.object_jitter),
                                                           round(float(r.uniform(0.55, 0.98)), 3)))
            else:
                self.dropping[h.side] = False
                if r.random() < n.false_contact:
                    state = HandState.PORTABLE_OBJECT
                    offset = (round(float(r.normal(0, 0.08)), 4), round(float(r.normal(-0.05, 0.05)), 4))
            out_hands.append(HandDetection(hb, round(score, 3), state, offset,
                                           HandSide.LEFT if side == "left" else HandSide.RIGHT))
        if r.random() < n.false_hand:
            out_hands.append(HandDetection(self._random_box(0.08, 0.18), round(float(r.uniform(0.5, 0.8)), 3),
                                           HandState.NO_CONTACT, (0.0, 0.0),
                                           HandSide.LEFT if r.random() < 0.5 else HandSide.RIGHT))
        if r.random() < n.false_object:
            out_objects.append(ObjectDetection(self._random_box(0.05, 0.25), round(float(r.uniform(0.5, 0.75)), 3)))
        return FrameDetections(video_id, number, out_hands, out_objects)


def truth_detections(video_id: str, number: int, hands: list[TrueHand]) -> FrameDetections:
    """The clean kitchen's detections: the truth itself (for debugging only, ``leap demo-data --clean``)."""
    det_hands, det_objects = [], []
    for h in hands:
        hb = _clip_box(*h.box)
        state, offset = HandState.NO_CONTACT, (0.0, 0.0)
        if h.contact_box is not None:
            ob = _clip_box(*h.contact_box)
            state = HandState.STATIONARY_OBJECT if h.stationary else HandState.PORTABLE_OBJECT
            offset = (round(ob.center[0] - hb.center[0], 4), round(ob.center[1] - hb.center[1], 4))
            det_objects.append(ObjectDetection(ob, 0.9))
        det_hands.append(HandDetection(hb, 0.95, state, offset, HandSide.LEFT if h.side == "left" else HandSide.RIGHT))
    return FrameDetections(video_id, number, det_hands, det_objects)
