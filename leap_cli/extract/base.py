"""What every descriptor component shares: the result record, the per-segment context, the component face.

A component turns one segment into ``{"status": "ok"|"unavailable"|"error", "source": str, "data": {...},
"text": str}``. ``data["timeline"]`` (optional) lists ``{"start", "stop", "text"}`` events in seconds relative
to the segment start; ``describe.render_clip`` merges the timelines of all components into the clip text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from leap_cli.epic.annotations import Segment
from leap_cli.epic.layout import DatasetLayout

COMPONENTS = ("narration", "audio", "camera", "objects", "hands")
STATUSES = ("ok", "unavailable", "error")


def result(status: str, source: str, data: dict | None = None, text: str = "") -> dict:
    """One component's record."""
    assert status in STATUSES, status
    return {"status": status, "source": source, "data": data or {}, "text": text}


def unavailable(source: str, why: str) -> dict:
    return result("unavailable", source, {"reason": why}, f"unavailable ({why})")


def error(source: str, exc: BaseException) -> dict:
    msg = f"{type(exc).__name__}: {exc}" if not hasattr(exc, "one_line") else exc.one_line()
    return result("error", source, {"error": msg}, f"error ({msg})")


FrameReader = Callable[[list[int], int], np.ndarray]  # (1-based frame numbers, short side) -> [T,H,W,3] uint8


@dataclass
class SegmentContext:
    """What a component may use for one segment: the layout, the video's fps, and lazy media access.

    ``read_frames`` decodes only the frames asked for (the runner opens each video once per worker);
    ``read_audio(sample_rate)`` returns the segment's mono samples (float32) or raises ``AudioUnavailable``.
    """

    layout: DatasetLayout
    segment: Segment
    fps: float
    read_frames: FrameReader | None = None
    read_audio: Callable[[int], np.ndarray] | None = None
    video_cache: dict[str, Any] = field(default_factory=dict)  # per-video state shared by components

    def frame_time(self, frame_number: int) -> float:
        """Seconds from the segment start to a (1-based) frame."""
        return round((frame_number - 1) / self.fps - self.segment.start, 3)

    def segment_frames(self, count: int) -> list[int]:
        """``count`` frame numbers spread evenly through the segment (inclusive of both ends)."""
        a, b = self.segment.start_frame, max(self.segment.stop_frame, self.segment.start_frame)
        if count <= 1 or b == a:
            return [a]
        return sorted({int(round(x)) for x in np.linspace(a, b, count)})


class Component:
    """Base class: ``name``, ``source`` (what the data came from) and ``describe(ctx) -> record``."""

    name: str = ""
    needs_frames: bool = False
    needs_audio: bool = False

    def describe(self, ctx: SegmentContext) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Free per-run resources (models)."""


def ensure_path(p: str | Path | None) -> Path | None:
    return None if p is None else Path(p)
