"""Per-video detection files: EPIC hand-object detections and labelled object-detection JSONL.

Labelled object detections (``ROOT/object-detections/P01/P01_01.jsonl``), one line per frame::

    {"video_id": "P01_01", "frame_number": 12,
     "objects": [{"label": "plate", "bbox": {"left": .1, "top": .2, "right": .3, "bottom": .4}, "score": 0.93}]}

Box coordinates are fractions of the frame width/height in [0, 1], as in EPIC's hand-object files.
"""

from __future__ import annotations

import json
from bisect import bisect_left, bisect_right
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from leap_cli.epic.hand_objects import BBox, FrameDetections, frame_number_of, open_hand_objects
from leap_cli.errors import LeapError

LABELLED_FORMAT = ('one JSON object per line: {"video_id": "P01_01", "frame_number": 12, "objects": '
                   '[{"label": "plate", "bbox": {"left": 0.1, "top": 0.2, "right": 0.3, "bottom": 0.4}, '
                   '"score": 0.93}]} with box coordinates in [0, 1]')


@dataclass
class LabelledBox:
    label: str
    bbox: BBox
    score: float
    names: list[tuple[str, float]] | None = None  # CLIP's top names (noun key, score), when a namer saw the box


def read_object_detections(path: str | Path) -> dict[int, list[LabelledBox]]:
    """Read a labelled object-detection JSONL into {frame_number: [boxes]}; a malformed line is a LeapError."""
    path = Path(path)
    frames: dict[int, list[LabelledBox]] = ByFrame()
    try:
        # (a BOM dropped; not splitlines: a label may hold a U+2028)
        lines = path.read_text(encoding="utf-8-sig").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise LeapError(f"cannot read object detections ({type(e).__name__})", path=path,
                        fix=f"expected {LABELLED_FORMAT}") from None
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            if not isinstance(d, dict) or not isinstance(d.get("objects"), list):
                raise ValueError('no "objects" list')
            n = frame_number_of(d["frame_number"])
            boxes = []
            for o in d["objects"]:
                b = o["bbox"]
                vals = [float(b[k]) for k in ("left", "top", "right", "bottom")]
                if not all(-0.1 <= v <= 1.1 for v in vals):  # pixels, not fractions of the frame
                    raise ValueError("box coordinates outside [0, 1]")
                box = BBox(*(min(max(v, 0.0), 1.0) for v in vals))  # boxes cut by the frame edge
                if o["label"] is None or not str(o["label"]).strip():  # (was the object "None" in the clip text)
                    raise ValueError("a box with no label (null or empty)")
                boxes.append(LabelledBox(str(o["label"]), box, float(o.get("score", 1.0))))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise LeapError(f"line {i} is not a frame of labelled detections ({type(e).__name__}: {e})",
                            path=path, record=f"line {i}", fix=f"expected {LABELLED_FORMAT}") from None
        frames.setdefault(n, []).extend(boxes)
    return frames


def video_hand_objects(cache: dict, layout, video_id: str) -> Mapping[int, FrameDetections] | None:
    """The video's hand-object detections by frame number, opened once per video (None when absent); a
    ``.pkl``'s frames are decoded as segments look them up (``open_hand_objects``)."""
    key = ("hand_objects", video_id)
    if key not in cache:
        p = layout.hand_objects_path(video_id)
        cache[("hand_objects_path", video_id)] = p
        try:
            frames = None if p is None else open_hand_objects(p, video_id)
            # a .jsonl's plain dict gets sorted frame numbers too (bisection per segment, not a scan)
            cache[key] = frames if frames is None or hasattr(frames, "keys_sorted") else ByFrame(frames)
        except LeapError as e:
            cache[key] = e  # read once per video; every segment reports the same error
    if isinstance(cache[key], LeapError):
        raise cache[key]
    return cache[key]


def video_object_detections(cache: dict, layout, video_id: str) -> dict[int, list[LabelledBox]] | None:
    """The video's labelled object detections by frame number, read once per video (None when absent)."""
    key = ("object_detections", video_id)
    if key not in cache:
        p = layout.object_detections_path(video_id)
        cache[("object_detections_path", video_id)] = p
        try:
            cache[key] = None if p is None else read_object_detections(p)
        except LeapError as e:
            cache[key] = e
    if isinstance(cache[key], LeapError):
        raise cache[key]
    return cache[key]


class ByFrame(dict):
    """{frame number: detections} whose sorted frame numbers (``keys_sorted``) let ``in_segment`` find the
    frames of a segment by bisection (EPIC files hold every frame of an hour-long video; a linear scan per
    segment would be quadratic)."""

    _keys: list[int] | None = None

    @property
    def keys_sorted(self) -> list[int]:
        if self._keys is None or len(self._keys) != len(self):
            self._keys = sorted(self)
        return self._keys


def in_segment(frames: Mapping[int, object], start_frame: int, stop_frame: int) -> list[int]:
    """Frame numbers of ``frames`` inside [start_frame, stop_frame] (by bisection where ``frames`` keeps its
    frame numbers sorted: ``ByFrame``, ``HandObjectFrames``)."""
    keys = getattr(frames, "keys_sorted", None)
    if keys is not None:
        return keys[bisect_left(keys, start_frame):bisect_right(keys, stop_frame)]
    return sorted(n for n in frames if start_frame <= n <= stop_frame)


def position_word(x: float) -> str:
    """Left / centre / right third of the frame."""
    return "left" if x < 1 / 3 else "right" if x > 2 / 3 else "centre"


def contains(b: BBox, x: float, y: float) -> bool:
    return b.left <= x <= b.right and b.top <= y <= b.bottom
