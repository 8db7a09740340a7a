"""What every descriptor component shares: the result record, the per-segment context, the component face.

A component turns one segment into ``{"status": "ok"|"unavailable"|"error", "source": str, "data": {...},
"text": str}``. ``data["timeline"]`` (optional) lists ``{"start", "stop", "text"}`` events in seconds relative
to the segment start; ``describe.render_clip`` merges the timelines of all components into the clip text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from leap_cli.epic.annotations import Segment
from leap_cli.epic.layout import DatasetLayout
from leap_cli.epic.timing import FrameClock, Window, epic_frame_rate

COMPONENTS = ("narration", "audio", "camera", "objects", "hands")
STATUSES = ("ok", "unavailable", "error")
# What made each part of a record (a record's "versions"; "text": describe.render_clip): a change of leap that
# changes what a part writes for the same input raises its number, and a resume makes again the parts of an earlier
# number (``outdated``; the record's other components are kept and its text rendered again from them, runner's
# ``_parts_to_make``; a record a later number made is made whole again): an output never mixes two leaps' parts.
# A record without "versions" (a leap before 2026-12-05 17:36 UTC) is taken as version 1 of every part.
# camera 2: the odometry of 2026-12-07 (calm pairs tracked on the frame alone, ORB's matches checked against phase
# correlation's shift, unmatched pairs inside a turn filled from their neighbours) reads other degrees on some
# segments.
VERSIONS = {"narration": 1, "audio": 1, "camera": 2, "objects": 1, "hands": 1, "text": 1}
# A raise that changed only some of its part's records: (part, number) -> whether a component the number before made
# reads otherwise now. The others are not made again (nor is their clip text, which generate-programs would ask
# about again); camera 2 changed the odometry, not poses read from EPIC Fields or COLMAP, nor a camera unavailable.
CHANGED = {("camera", 2): lambda comp: str(comp.get("source", "")).startswith("orb-vo")}


def record_versions(components) -> dict[str, int]:
    """The ``versions`` of a record holding ``components`` (their names) and the clip text."""
    return {**{c: VERSIONS[c] for c in components if c in VERSIONS}, "text": VERSIONS["text"]}


def outdated(record: dict) -> list[str]:
    """The parts of ``record`` (components it holds, and its text) made by another number than this leap's
    ``VERSIONS`` (an earlier leap's, or after a downgrade a later one's), as "camera 1 -> 2"."""
    return [f"{k} {was} -> {now}" for k, (was, now) in outdated_parts(record).items()]


def outdated_parts(record: dict) -> dict[str, tuple[int, int]]:
    """``outdated`` as {part: (the record's number, this leap's)}."""
    held = record.get("versions") if isinstance(record.get("versions"), dict) else {}
    comps = record.get("components") if isinstance(record.get("components"), dict) else {}
    was = {k: v if type(v) is int else 1 for k, v in held.items()}  # (not a number: as a record without one)
    return {k: (was.get(k, 1), v) for k, v in record_versions(comps).items()
            if was.get(k, 1) != v and _changed(k, was.get(k, 1), v, comps.get(k))}


def _changed(part: str, was: int, now: int, comp) -> bool:
    """Whether ``part`` of number ``was`` reads otherwise at ``now`` (``CHANGED``; a downgrade: always)."""
    comp = comp if isinstance(comp, dict) else {}
    return was > now or any(CHANGED.get((part, n), lambda _: True)(comp) for n in range(was + 1, now + 1))


def result(status: str, source: str, data: dict | None = None, text: str = "") -> dict:
    """One component's record."""
    assert status in STATUSES, status
    return {"status": status, "source": source, "data": data or {}, "text": text}


# Why the camera was described without poses (``--retry-errors`` redoes such records once poses are placed):
NO_POSES = "no poses for this video"  # data.poses_skipped of odometry (camera source auto)
NO_CAMERA_POSES = "no camera poses for this video"  # data.reason of an unavailable camera (camera source colmap)


def unavailable(source: str, why: str, cause: str | None = None, detail: str | None = None) -> dict:
    """``why`` goes into the clip text: say what is missing, never a local path or a tool's error text.
    ``cause`` "video": the video file could not be read (missing, unreadable, truncated), which a new copy of
    the file may change (``leap extract --retry-errors`` redoes such records). ``detail``: the one-line error
    with the file and the fix, for the user (``data["detail"]``, as ``error`` keeps it)."""
    return result("unavailable", source, {"reason": why, **({"cause": cause} if cause else {}),
                                          **({"detail": detail} if detail else {})}, f"unavailable ({why})")


def error(source: str, exc: BaseException) -> dict:
    """A failed component. The clip text and ``data["error"]`` carry only a path-free cause (a ``LeapError``'s
    message, else the exception type); ``data["detail"]`` keeps the full one-line error for the user."""
    if hasattr(exc, "one_line"):
        msg, detail = scrub_paths(exc.message), exc.one_line()
    else:
        msg, detail = f"internal error ({type(exc).__name__})", f"{type(exc).__name__}: {exc}"
    return result("error", source, {"error": msg, "detail": detail}, f"error ({msg})")


_QUOTED_PATH = re.compile(r"""(['"])(?:[A-Za-z]:)?[\\/][^'"]*[\\/]([^'"\\/]+)\1""")
# (an absolute path starts the text or follows a space, "(", "[", "=" or ",": "duration/fps/resolution" and a
# URL's "//host/a" are no paths)
_PATH = re.compile(r"""(?<![^\s(\[=,])(?:[A-Za-z]:)?(?:[\\/][^\\/\s'"]+)+[\\/]([^\\/\s'"]+)""")


def scrub_paths(text: str) -> str:
    """``text`` with every absolute path cut to its file name (clip texts must not reveal the file layout)."""
    return _PATH.sub(r"\1", _QUOTED_PATH.sub(r"\1\2\1", text))


FrameReader = Callable[[list[int], int], np.ndarray]  # (1-based frame numbers, short side) -> [T,H,W,3] uint8
# (1-based frame numbers, short side or None) -> the decoded BGR images [H,W,3] uint8, one per number (not copied)
ImageReader = Callable[[list[int], "int | None"], list[np.ndarray]]


@dataclass
class SegmentContext:
    """What a component may use for one segment: the layout, the video's fps, and lazy media access.

    ``clock`` is the timing rule for the video's source (``leap_cli.epic.timing.FrameClock``: MP4 frames at the
    true fps, or EPIC's ``rgb_frames`` numbering); ``segment_frames`` and ``frame_time`` go through it.
    ``read_frames`` decodes only the frames asked for (the runner opens each video once per worker) and raises
    ``FramesUnavailable`` when the segment's window is not fully inside the decodable video;
    ``read_audio(sample_rate)`` returns the segment's mono samples (float32) or raises ``AudioUnavailable``.
    ``frame_size()`` gives the source's (width, height) from its header (``FramesUnavailable`` as for reads), so
    a component can choose the size it reads at before anything is decoded. ``read_images`` (the runner's) gives
    the decoder's BGR images as they are, a list with no stacking copy and no colour conversion;
    ``images_at_most`` reads through it where it is there (in the colour a component works in) and through
    ``read_frames`` where it is not.
    """

    layout: DatasetLayout
    segment: Segment
    fps: float
    read_frames: FrameReader | None = None
    read_audio: Callable[[int], np.ndarray] | None = None
    video_cache: dict[str, Any] = field(default_factory=dict)  # per-video state shared by components
    clock: FrameClock | None = None  # None: an MP4 at ``fps`` (what a bare context in a test means)
    frame_size: Callable[[], tuple[int, int]] | None = None  # (width, height) of the source's frames, no decoding
    read_images: ImageReader | None = None  # the decoded BGR images, uncopied (the runner's; see images_at_most)
    fps_known: bool = True  # False: no row in EPIC_100_video_info.csv and no MP4 to say it (``fps`` stands in)

    def __post_init__(self):
        if self.clock is None:
            self.clock = FrameClock("mp4", self.fps)

    def frame_time(self, frame_number: int) -> float:
        """Seconds from the segment start to a (1-based) frame of the source (the numbers ``segment_frames``
        gives and ``read_frames`` takes); 0 for the frame showing at the start, which began up to a frame
        before it (a clip text said "[-0.0-0.2 s] turns head left")."""
        return max(0.0, round(self.clock.time_of(frame_number) - self.segment.start, 3))

    def epic_frame_time(self, frame_number: int) -> float:
        """Seconds from the segment start to a frame in EPIC's numbering (the CSV columns, the hand-object
        files: 60 per second, 50 for the 50 fps videos); 0 for a frame that began before the start.
        ``FramesUnavailable`` where the video's fps is not known (the rate of its numbering is not either)."""
        if not self.fps_known:
            raise FramesUnavailable("no fps for the video in EPIC_100_video_info.csv: its frame numbers cannot be "
                                    "timed", video=False)
        return max(0.0, round((frame_number - 1) / epic_frame_rate(self.fps) - self.segment.start, 3))

    def side_at_most(self, short_side: int | None) -> int | None:
        """The short side to read at for frames of at most ``short_side`` pixels: ``short_side`` where the source
        (its header size, ``frame_size``) is larger, None (as they are) where it is not: never upscaled. None too
        when the size is unknown (no ``frame_size``): ``read_at_most`` then shrinks after reading."""
        if not short_side or self.frame_size is None:
            return None
        from leap_cli.media.video import stored_side

        return stored_side(*self.frame_size(), short_side)

    def read_at_most(self, numbers: list[int], short_side: int | None) -> np.ndarray:
        """``read_frames`` at ``side_at_most(short_side)``: frames never upscaled. Without ``frame_size`` (a bare
        context) the frames are read as they are and shrunk here where larger."""
        if self.frame_size is not None or not short_side:
            return self.read_frames(numbers, self.side_at_most(short_side))
        from leap_cli.media.video import stored_side
        from leap_cli.media.video import resize_short_side

        frames = self.read_frames(numbers, None)
        side = stored_side(frames.shape[2], frames.shape[1], short_side)
        return frames if side is None else np.stack([resize_short_side(f, side) for f in frames])

    def images_at_most(self, numbers: list[int], short_side: int | None, colour: str = "rgb") -> list[np.ndarray]:
        """The frames ``read_at_most`` reads (never upscaled), as a list of images in ``colour`` ("rgb", "bgr" or
        "gray", ``media.video.as_colour``). From ``read_images`` where the runner gives it: the decoder's BGR
        images, converted only where ``colour`` asks (a "bgr" reader gets them as they are, not copied: it must
        not write into them); else from ``read_at_most``."""
        from leap_cli.media.video import as_colour

        if self.read_images is not None and (self.frame_size is not None or not short_side):
            return [as_colour(im, colour, "bgr") for im in self.read_images(numbers, self.side_at_most(short_side))]
        return [as_colour(im, colour, "rgb") for im in self.read_at_most(numbers, short_side)]

    def read_epic_frames(self, numbers: list[int], short_side: int) -> np.ndarray:
        """``read_frames`` for frames named in EPIC's numbering (hand-object boxes, poses, the CSV columns):
        each is read as the source frame that EPIC's frame holds (``FrameClock.from_epic``)."""
        return self.read_frames([self.clock.from_epic(n) for n in numbers], short_side)

    def window(self, count: int | None = None, mode: str = "spread") -> Window:
        """The segment's window in the source's frames (``count`` samples of it), and whether it is decodable."""
        return self.clock.segment_window(self.segment, count, mode)

    def segment_frames(self, count: int) -> list[int]:
        """``count`` source frame numbers spread evenly through the segment (inclusive of both ends)."""
        return list(self.window(max(1, count)).frames)


class FramesUnavailable(Exception):
    """The segment's frames cannot be had (its window is past the end of the video, the file is truncated or
    corrupt, there is no video): the runner reports the component as ``unavailable`` with ``reason``.
    ``video``: the file could not be read (missing, unreadable, truncated), so a new copy may remove the cause
    (``--retry-errors`` redoes these); False for a window past the end the file announces, or no fps.
    ``detail``: the one-line error with the file and the fix, where the reader gave one."""

    def __init__(self, reason: str, video: bool = True, detail: str | None = None):
        self.reason = reason
        self.video = video
        self.detail = detail
        super().__init__(reason)


class Component:
    """Base class: ``name``, ``source`` (what the data came from) and ``describe(ctx) -> record``."""

    name: str = ""
    needs_frames: bool = False

    def describe(self, ctx: SegmentContext) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def frames_wanted(self, ctx: SegmentContext) -> list[tuple[list[int], int | None]]:
        """The (frame numbers, short side) reads ``describe`` will make, so the runner decodes them all in one
        pass. The default covers a component that reads ``ctx.segment_frames(self.frames)`` at
        ``self.short_side`` (0/None: full size); a component that reads other frames overrides it (a read
        that was not announced still works, at the cost of another decode)."""
        if not self.needs_frames or not getattr(self, "frames", 0):
            return []
        return [(ctx.segment_frames(self.frames), getattr(self, "short_side", None) or None)]

    def close(self) -> None:
        """Free per-run resources (models)."""
