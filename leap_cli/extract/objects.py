"""Objects component: which objects are in the segment, where, for how long, how confidently.

Sources, in order of preference:
1. ``--detector-weights PATH``: a torchvision Faster R-CNN (built with ``weights=None``, then the local state dict
   loaded exactly; class names from the checkpoint's ``classes`` entry or ``--detector-labels FILE``, one name per
   line, index 0 the background) run on ``frames`` frames sampled through the segment.
2. The data set's labelled object detections (``object-detections/P01/P01_01.jsonl``).
3. The object boxes of EPIC's hand-object detections (unlabelled: reported as "object").
Position is the third of the frame holding the box centre; "near" a hand when its centre is within 0.25 of a
detected hand's centre (hands from the hand-object file).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import numpy as np

from leap_cli.epic.hand_objects import BBox
from leap_cli.errors import LeapError
from leap_cli.extract.base import Component, SegmentContext, result, unavailable
from leap_cli.extract.detections import (LabelledBox, in_segment, position_word, video_hand_objects,
                                         video_object_detections)

log = logging.getLogger(__name__)

DETECTOR_ARCHS = ("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_fpn",
                  "fasterrcnn_mobilenet_v3_large_320_fpn")


def read_labels_file(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise LeapError("detector labels file not found", path=path, fix="one class name per line, background first")
    names = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if len(names) < 2:
        raise LeapError("detector labels file holds fewer than 2 names", path=path,
                        fix="one class name per line, index 0 the background")
    return names


class FasterRCNNDetector:
    """A torchvision Faster R-CNN loaded from a local checkpoint (``{'model': state_dict, 'classes': [...]}``,
    ``{'model': ...}`` or a plain state dict)."""

    def __init__(self, weights: str | Path, *, labels: str | Path | None = None,
                 arch: str = "fasterrcnn_resnet50_fpn", score_threshold: float = 0.5, device: str = "cpu"):
        import torch
        import torchvision.models.detection as det

        from leap_cli.extract.weights import load_checkpoint, load_exact, unwrap_state_dict

        if arch not in DETECTOR_ARCHS:
            raise LeapError(f"unknown detector architecture {arch!r}", fix=f"use one of {', '.join(DETECTOR_ARCHS)}")
        ckpt = load_checkpoint(weights, "detector")
        classes = None
        if isinstance(ckpt, dict):
            classes = ckpt.get("classes") or ckpt.get("labels")
            arch = ckpt.get("arch", arch) if isinstance(ckpt.get("arch"), str) else arch
        if labels is not None:
            classes = read_labels_file(labels)
        if not classes:
            raise LeapError("the detector checkpoint holds no class names", path=weights,
                            fix="pass --detector-labels FILE (one name per line, background first)")
        state = unwrap_state_dict(ckpt, weights, "detector")
        head = state.get("roi_heads.box_predictor.cls_score.weight")
        if head is not None and head.shape[0] != len(classes):
            raise LeapError(f"the detector predicts {head.shape[0]} classes but {len(classes)} names were given",
                            path=weights, fix="pass the labels file that belongs to these weights")
        self.classes = list(classes)
        self.model = getattr(det, arch)(weights=None, weights_backbone=None, num_classes=len(self.classes))
        load_exact(self.model, state, weights, "detector")
        self.model.eval().to(device)
        self.device = device
        self.score_threshold = score_threshold
        self.arch = arch
        self._torch = torch

    def __call__(self, frames: np.ndarray) -> list[list[LabelledBox]]:
        """Detect on [T,H,W,3] uint8 RGB frames; boxes come back as fractions of the frame."""
        torch = self._torch
        t, h, w, _ = frames.shape
        images = [torch.from_numpy(f).permute(2, 0, 1).float().div(255).to(self.device) for f in frames]
        with torch.inference_mode():
            outs = self.model(images)
        res = []
        for o in outs:
            boxes = []
            for (x0, y0, x1, y1), lab, sc in zip(o["boxes"].tolist(), o["labels"].tolist(), o["scores"].tolist()):
                if sc >= self.score_threshold and 0 < lab < len(self.classes):
                    boxes.append(LabelledBox(self.classes[lab], BBox(x0 / w, y0 / h, x1 / w, y1 / h), float(sc)))
            res.append(boxes)
        return res


def summarise_objects(per_frame: dict[int, list[LabelledBox]], ctx: SegmentContext, hands_by_frame: dict | None,
                      score_threshold: float, hand_threshold: float = 0.5) -> tuple[list[dict], list[dict]]:
    """Per label: first/last time seen, share of frames, mean confidence, position, nearest hand."""
    numbers = sorted(per_frame)
    times = {n: ctx.frame_time(n) for n in numbers}
    step = float(np.median(np.diff([times[n] for n in numbers]))) if len(numbers) > 1 else 1.0 / ctx.fps
    seen: dict[str, list] = defaultdict(list)
    for n in numbers:
        best: dict[str, LabelledBox] = {}
        for b in per_frame[n]:
            if b.score >= score_threshold and (b.label not in best or b.score > best[b.label].score):
                best[b.label] = b
        for label, b in best.items():
            near = None
            if hands_by_frame and n in hands_by_frame:
                cx, cy = b.bbox.center
                cands = [(float(np.hypot(cx - h.bbox.center[0], cy - h.bbox.center[1])), h.side.name.lower())
                         for h in hands_by_frame[n].hands if h.score >= hand_threshold]
                cands = [c for c in cands if c[0] < 0.25]
                near = min(cands)[1] if cands else None
            seen[label].append((n, b, near))
    duration = round(ctx.segment.duration, 3)
    objects, timeline = [], []
    for label, hits in seen.items():
        xs = [b.bbox.center[0] for _, b, _ in hits]
        nears = [x for _, _, x in hits if x]
        near = max(set(nears), key=nears.count) if nears else None
        start = max(0.0, times[hits[0][0]])
        stop = round(min(times[hits[-1][0]] + step, duration), 3)
        obj = {"label": label, "start": round(start, 3), "stop": stop,
               "share": round(len(hits) / len(numbers), 3),
               "score": round(float(np.mean([b.score for _, b, _ in hits])), 3),
               "position": position_word(float(np.mean(xs))), "near_hand": near}
        objects.append(obj)
    objects.sort(key=lambda o: (o["start"], -o["share"]))
    for o in objects:
        where = o["position"] + (f", near the {o['near_hand']} hand" if o["near_hand"] else "")
        timeline.append({"start": o["start"], "stop": o["stop"], "text": f"{o['label']} visible ({where})"})
    return objects, timeline


def objects_text(objects: list[dict]) -> str:
    if not objects:
        return "no objects detected"
    parts = []
    for o in objects:
        where = o["position"] + (f", near {o['near_hand']} hand" if o["near_hand"] else "")
        parts.append(f"{o['label']} ({where}; {o['start']:.1f}-{o['stop']:.1f} s, {o['share']:.0%} of frames, "
                     f"conf {o['score']:.2f})")
    return "; ".join(parts)


class ObjectsComponent(Component):
    name = "objects"

    def __init__(self, detector: FasterRCNNDetector | None = None, frames: int = 6, score_threshold: float = 0.5,
                 hand_threshold: float = 0.5):
        self.detector = detector
        self.hand_threshold = hand_threshold
        self.frames = frames
        self.score_threshold = score_threshold
        self.needs_frames = detector is not None

    def describe(self, ctx: SegmentContext) -> dict:
        s = ctx.segment
        hands = None
        try:
            hands = video_hand_objects(ctx.video_cache, ctx.layout, s.video_id)
        except LeapError:
            if self.detector is None and ctx.layout.object_detections_path(s.video_id) is None:
                raise  # the hand-object file is our only source: its error is this component's error
            log.warning("hand-object file of %s unreadable: objects are not matched to hands", s.video_id)
        if self.detector is not None:
            if ctx.read_frames is None:
                return unavailable(f"detector:{self.detector.arch}", "no video frames for this segment")
            numbers = ctx.segment_frames(self.frames)
            boxes = self.detector(ctx.read_frames(numbers, 0))
            per_frame = dict(zip(numbers, boxes))
            source = f"detector:{self.detector.arch}"
        else:
            labelled = video_object_detections(ctx.video_cache, ctx.layout, s.video_id)
            if labelled is not None:
                source = f"object-detections:{ctx.video_cache[('object_detections_path', s.video_id)].name}"
                per_frame = {n: labelled[n] for n in in_segment(labelled, s.start_frame, s.stop_frame)}
            elif hands is not None:
                source = f"hand-objects:{ctx.video_cache[('hand_objects_path', s.video_id)].name}"
                per_frame = {n: [LabelledBox("object", o.bbox, o.score) for o in hands[n].objects]
                             for n in in_segment(hands, s.start_frame, s.stop_frame)}
            else:
                return unavailable("none", "no detector weights and no detection files for this video")
        if not per_frame:
            return unavailable(source, "no detection frames inside the segment")
        objects, timeline = summarise_objects(per_frame, ctx, hands, self.score_threshold, self.hand_threshold)
        data = {"frames": len(per_frame), "score_threshold": self.score_threshold, "objects": objects,
                "timeline": timeline}
        return result("ok", source, data, objects_text(objects))

    def close(self) -> None:
        self.detector = None
