"""Objects component: which objects are in the segment, where, for how long, how confidently.

Sources, in order of preference:
1. A torchvision Faster R-CNN (``--detector-arch``, default ``fasterrcnn_resnet50_fpn_v2``) run on ``frames``
   frames sampled through the segment, batched: ``--detector-weights coco`` takes torchvision's own COCO_V1
   weights (downloaded once into the torch hub cache, ``$TORCH_HOME/hub/checkpoints/``; offline, the error names
   the file to place there), ``--detector-weights FILE`` a local checkpoint. COCO classes are mapped to EPIC nouns
   (``resources/coco_epic_nouns.csv``); classes with no EPIC counterpart are dropped, unless a CLIP namer names
   their boxes. Other checkpoints bring their class names (``classes`` entry or ``--detector-labels FILE``).
2. The data set's labelled object detections (``object-detections/P01/P01_01.jsonl``).
3. The object boxes of EPIC's hand-object detections: unlabelled ("object"), or named by CLIP (``naming.py``).
Position is the third of the frame holding the box centre; "near" a hand when its centre is within 0.25 of a
detected hand's centre (hands from the hand-object file). The detector's boxes of a segment are left in the
video cache for the hands component, whose contact boxes borrow their labels.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter, defaultdict
from functools import lru_cache
from pathlib import Path

import numpy as np

from leap_cli.epic.hand_objects import BBox
from leap_cli.epic.timing import epic_frame_rate
from leap_cli.errors import LeapError
from leap_cli.extract.base import Component, SegmentContext, result, unavailable
from leap_cli.extract.detections import (LabelledBox, in_segment, position_word, video_hand_objects,
                                         video_object_detections)
from leap_cli.extract.naming import mean_names, narration_nouns
from leap_cli.io import read_utf8

log = logging.getLogger(__name__)

DETECTOR_ARCHS = ("fasterrcnn_resnet50_fpn_v2", "fasterrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v3_large_fpn",
                  "fasterrcnn_mobilenet_v3_large_320_fpn")
DEFAULT_DETECTOR = "fasterrcnn_resnet50_fpn_v2"  # COCO box AP 46.7, against 37.0 for the v1 ResNet-50 FPN


@lru_cache(maxsize=1)
def coco_epic_map() -> dict[str, str]:
    """COCO category -> EPIC noun key, from the data file shipped with leap (unlisted COCO classes: no EPIC noun)."""
    from importlib import resources

    text = resources.files("leap_cli.resources").joinpath("coco_epic_nouns.csv").read_text(encoding="utf-8")
    return {r["coco"]: r["epic_noun"] for r in csv.DictReader(text.splitlines())}


def read_labels_file(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise LeapError("detector labels file not found", path=path, fix="one class name per line, background first")
    names = [ln.strip() for ln in read_utf8(path, "the detector labels file").splitlines() if ln.strip()]
    if len(names) < 2:
        raise LeapError("detector labels file holds fewer than 2 names", path=path,
                        fix="one class name per line, index 0 the background")
    return names


def uses_coco_download(weights) -> bool:
    """``--detector-weights coco`` (or no file at all): torchvision's own COCO weights."""
    return weights is None or (str(weights) == "coco" and not Path(weights).is_file())


class FasterRCNNDetector:
    """A torchvision Faster R-CNN: torchvision's COCO weights through its weights API (``weights="coco"``), or a
    local checkpoint (``{'model': state_dict, 'classes': [...]}``, ``{'model': ...}`` or a plain state dict; a
    plain 91-class state dict is taken as COCO). ``model_kwargs`` go to the builder (``min_size``, ...)."""

    def __init__(self, weights: str | Path | None = "coco", *, labels: str | Path | None = None,
                 arch: str = DEFAULT_DETECTOR, score_threshold: float = 0.5, device: str = "cpu",
                 batch_size: int = 8, keep_unmapped: bool = False, **model_kwargs):
        import torch
        import torchvision.models.detection as det

        from leap_cli.extract.weights import (load_checkpoint, load_exact, load_torchvision_coco,
                                              torchvision_coco_weights, unwrap_state_dict)

        if arch not in DETECTOR_ARCHS:
            raise LeapError(f"unknown detector architecture {arch!r}", fix=f"use one of {', '.join(DETECTOR_ARCHS)}")
        if uses_coco_download(weights):
            state, classes, path = load_torchvision_coco(arch)
            self.weights_name = "coco_v1"
        else:
            path = Path(weights)
            ckpt = load_checkpoint(path, "detector")
            classes = None
            if isinstance(ckpt, dict):
                classes = ckpt.get("classes") or ckpt.get("labels")
                arch = ckpt.get("arch", arch) if isinstance(ckpt.get("arch"), str) else arch
            state = unwrap_state_dict(ckpt, path, "detector")
            self.weights_name = path.name
        if labels is not None:
            classes = read_labels_file(labels)
        head = state.get("roi_heads.box_predictor.cls_score.weight")
        coco = list(torchvision_coco_weights(arch)[0].meta["categories"])
        if not classes and head is not None and head.shape[0] == len(coco):
            classes = coco  # torchvision's own checkpoint files carry no names
        if not classes:
            raise LeapError("the detector checkpoint holds no class names", path=path,
                            fix="pass --detector-labels FILE (one name per line, background first)")
        if head is not None and head.shape[0] != len(classes):
            raise LeapError(f"the detector predicts {head.shape[0]} classes but {len(classes)} names were given",
                            path=path, fix="pass the labels file that belongs to these weights")
        self.classes = list(classes)
        # COCO names become EPIC nouns; a COCO class without one is dropped (None), or kept unnamed ("") for a
        # CLIP namer when keep_unmapped.
        if self.classes == coco:
            cmap = coco_epic_map()
            self.labels = [cmap.get(c, "" if keep_unmapped and c not in ("__background__", "N/A") else None)
                           for c in self.classes]
        else:
            self.labels = list(self.classes)
        self.model = getattr(det, arch)(weights=None, weights_backbone=None, num_classes=len(self.classes),
                                        **model_kwargs)
        if not any(k.endswith("num_batches_tracked") for k in state):
            # built from pretrained weights: torchvision's builders then use FrozenBatchNorm2d (its COCO_V1 files
            # of the v1 ResNet-50 FPN and the MobileNets), with eps 0 for the v1 ResNet-50 COCO file
            v1_coco = arch == "fasterrcnn_resnet50_fpn" and self.classes == coco
            freeze_batch_norm(self.model, eps=0.0 if v1_coco else 1e-5)
        try:
            load_exact(self.model, state, path, "detector")
        except LeapError as e:  # the weights of another of the architectures (torch hub's v1 file, the default v2)
            other = _matching_arch(det, state, len(self.classes), arch, model_kwargs)
            if other is None:
                raise
            raise LeapError(f"the detector checkpoint is a {other}, not a {arch}", path=path,
                            fix=f"add --detector-arch {other}") from e
        self.model.eval().to(device)
        self.device = device
        self.score_threshold = score_threshold
        self.batch_size = batch_size
        self.arch = arch
        self.source = f"detector:{arch}:{self.weights_name}"
        self._torch = torch

    def __call__(self, frames: np.ndarray) -> list[list[LabelledBox]]:
        """Detect on [T,H,W,3] uint8 RGB frames, ``batch_size`` at a time; boxes come back as fractions of the
        frame, labelled with EPIC nouns ("" for a box a namer should name)."""
        torch = self._torch
        t, h, w, _ = frames.shape
        res = []
        for i in range(0, t, self.batch_size):
            images = [torch.from_numpy(f).permute(2, 0, 1).float().div(255).to(self.device)
                      for f in frames[i:i + self.batch_size]]  # [3, H, W] each
            with torch.inference_mode():
                outs = self.model(images)
            for o in outs:
                boxes = []
                for (x0, y0, x1, y1), lab, sc in zip(o["boxes"].tolist(), o["labels"].tolist(),
                                                     o["scores"].tolist()):
                    if sc >= self.score_threshold and 0 < lab < len(self.labels) and self.labels[lab] is not None:
                        boxes.append(LabelledBox(self.labels[lab], BBox(x0 / w, y0 / h, x1 / w, y1 / h), float(sc)))
                res.append(boxes)
        return res


def _matching_arch(det, state: dict, num_classes: int, tried: str, model_kwargs: dict) -> str | None:
    """The detector architecture (of ``DETECTOR_ARCHS``) whose parameters ``state`` has, key for key and shape for
    shape, other than ``tried``; None when none has."""
    theirs = {k: v.shape for k, v in state.items() if not k.endswith("num_batches_tracked")}
    for name in DETECTOR_ARCHS:
        if name == tried:
            continue
        own = getattr(det, name)(weights=None, weights_backbone=None, num_classes=num_classes, **model_kwargs)
        if {k: v.shape for k, v in own.state_dict().items() if not k.endswith("num_batches_tracked")} == theirs:
            return name
    return None


def freeze_batch_norm(module, eps: float) -> None:
    """Replace every BatchNorm2d of ``module`` by torchvision's FrozenBatchNorm2d, as its detection builders build
    a model for pretrained weights (``norm_layer=FrozenBatchNorm2d``)."""
    from torch import nn
    from torchvision.ops import FrozenBatchNorm2d

    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d(child.num_features, eps=eps))
        else:
            freeze_batch_norm(child, eps)


def summarise_objects(per_frame: dict[int, list[LabelledBox]], ctx: SegmentContext, hands_by_frame: dict | None,
                      score_threshold: float, hand_threshold: float = 0.5) -> tuple[list[dict], list[dict]]:
    """Per label: first/last time seen, share of frames, mean confidence, position, nearest hand. Frames are
    named in EPIC's numbering, as the hand-object boxes are."""
    numbers = sorted(per_frame)
    times = {n: ctx.epic_frame_time(n) for n in numbers}
    one = 1.0 / epic_frame_rate(ctx.fps)  # one frame in EPIC's numbering
    step = float(np.median(np.diff([times[n] for n in numbers]))) if len(numbers) > 1 else one
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
                         for h in hands_by_frame[n].hands if h.score > hand_threshold]
                cands = [c for c in cands if c[0] < 0.25]
                near = min(cands)[1] if cands else None
            seen[label].append((n, b, near))
    duration = round(ctx.segment.duration, 3)
    objects = []
    for label, hits in seen.items():
        xs = [b.bbox.center[0] for _, b, _ in hits]
        named = [b.names for _, b, _ in hits if b.names]
        nears = [x for _, _, x in hits if x]
        # the hand it was near most often; a tie goes to the hand it was near first (a max over a set broke ties
        # by the process's string hashing: another clip text from run to run)
        near = Counter(nears).most_common(1)[0][0] if nears else None
        start = max(0.0, times[hits[0][0]])
        stop = round(min(times[hits[-1][0]] + step, duration), 3)
        obj = {"label": label, "start": round(start, 3), "stop": stop,
               "share": round(len(hits) / len(numbers), 3),
               "score": round(float(np.mean([b.score for _, b, _ in hits])), 3),
               "position": position_word(float(np.mean(xs))), "near_hand": near}
        if named:
            obj["names"] = [{"noun": n, "score": sc} for n, sc in mean_names(named)]
        objects.append(obj)
    objects = order_objects(objects)
    return objects, objects_timeline(objects)


def order_objects(objects: list[dict]) -> list[dict]:
    """Objects in the order the clip text lists them: first seen first, then most seen."""
    return sorted(objects, key=lambda o: (o["start"], -o["share"]))


def objects_timeline(objects: list[dict]) -> list[dict]:
    """The clip text's timeline events of the objects seen."""
    timeline = []
    for o in objects:
        where = o["position"] + (f", near the {o['near_hand']} hand" if o["near_hand"] else "")
        timeline.append({"start": o["start"], "stop": o["stop"], "text": f"{o['label']} visible ({where})"})
    return timeline


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
                 hand_threshold: float = 0.5, namer=None):
        self.detector = detector
        self.namer = namer
        self.hand_threshold = hand_threshold
        self.frames = frames
        self.score_threshold = score_threshold
        self.needs_frames = detector is not None or namer is not None
        self._vocabs: dict = {}

    def describe(self, ctx: SegmentContext) -> dict:
        s = ctx.segment
        hands = None
        try:
            hands = video_hand_objects(ctx.video_cache, ctx.layout, s.video_id)
        except LeapError:
            if self.detector is None and ctx.layout.object_detections_path(s.video_id) is None:
                raise  # the hand-object file is our only source: its error is this component's error
            log.warning("hand-object file of %s unreadable: objects are not matched to hands", s.video_id)
        images = None
        if self.detector is not None:
            if ctx.read_frames is None:
                return unavailable(self.detector.source, "no video frames for this segment")
            numbers = ctx.segment_frames(self.frames)
            frames = ctx.read_frames(numbers, 0)
            # keyed by EPIC's frame numbers, as the hand-object boxes they are matched with
            numbers = [ctx.clock.to_epic(n) for n in numbers]
            images = dict(zip(numbers, frames))
            per_frame = dict(zip(numbers, self.detector(frames)))
            # the detector's own labels, for the hands component (CLIP may name the unlabelled ones below)
            ctx.video_cache[("detector_boxes", s.narration_id)] = (self.detector.source, {
                n: [LabelledBox(b.label, b.bbox, b.score) for b in boxes if b.label] for n, boxes in per_frame.items()})
            source = self.detector.source
        else:
            labelled = video_object_detections(ctx.video_cache, ctx.layout, s.video_id)
            if labelled is not None:
                source = f"object-detections:{ctx.video_cache[('object_detections_path', s.video_id)].name}"
                per_frame = {n: labelled[n] for n in in_segment(labelled, s.start_frame, s.stop_frame)}
            elif hands is not None:
                source = f"hand-objects:{ctx.video_cache[('hand_objects_path', s.video_id)].name}"
                numbers = in_segment(hands, s.start_frame, s.stop_frame)
                if self.namer is not None:  # CLIP sees ``frames`` frames spread through the segment
                    numbers = spread(numbers, self.frames)
                per_frame = {n: [LabelledBox("object", o.bbox, o.score) for o in hands[n].objects]
                             for n in numbers}
            else:
                return unavailable("none", "no detector weights and no detection files for this video")
        if not per_frame:
            return unavailable(source, "no detection frames inside the segment")
        data = {"frames": len(per_frame), "score_threshold": self.score_threshold}
        if self.namer is not None:
            why = self._name_boxes(ctx, per_frame, images)
            if why:
                data["names_unavailable"] = why
            else:
                data["named_by"] = self.namer.source
            for n in per_frame:  # a detector box of a COCO class without an EPIC noun that CLIP did not name
                per_frame[n] = [b for b in per_frame[n] if b.label]
        objects, timeline = summarise_objects(per_frame, ctx, hands, self.score_threshold, self.hand_threshold)
        data.update({"objects": objects, "timeline": timeline})
        return result("ok", source, data, objects_text(objects))

    def _name_boxes(self, ctx: SegmentContext, per_frame: dict[int, list[LabelledBox]],
                    images: dict[int, np.ndarray] | None) -> str | None:
        """CLIP names for the boxes over the threshold (unlabelled ones take the top name); a reason when not."""
        vocab = noun_vocab(ctx, self._vocabs)
        if vocab is None:
            return "no noun classes (EPIC_100_noun_classes.csv) in the annotations folder"
        if ctx.read_frames is None:
            return "no video frames for this segment"
        todo = [(n, b) for n in sorted(per_frame) for b in per_frame[n] if b.score >= self.score_threshold]
        if not todo:
            return None
        if images is None:
            numbers = sorted({n for n, _ in todo})
            images = dict(zip(numbers, ctx.read_epic_frames(numbers, 0)))
        names = self.namer.name_boxes([images[n] for n, _ in todo], [b.bbox for _, b in todo], vocab,
                                      prior=narration_nouns(ctx.segment, vocab))
        for (_, b), nm in zip(todo, names):
            b.names = nm
            if b.label in ("", "object") and nm:
                b.label = nm[0][0]
        return None

    def close(self) -> None:
        self.detector = None
        self.namer = None


def spread(numbers: list[int], count: int) -> list[int]:
    """``count`` of ``numbers`` spread evenly (all of them when fewer)."""
    if len(numbers) <= count:
        return list(numbers)
    return [numbers[int(round(i))] for i in np.linspace(0, len(numbers) - 1, count)]


def noun_vocab(ctx: SegmentContext, cache: dict):
    """The data set's noun classes (read once per annotations folder), or None when it has none."""
    key = str(getattr(ctx.layout, "annotations_dir", ""))
    if key not in cache:
        try:
            cache[key] = ctx.layout.annotations().nouns
        except (LeapError, AttributeError, OSError):
            cache[key] = None
    return cache[key]
