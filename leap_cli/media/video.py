"""Video frames by 1-based frame index, from an MP4 (OpenCV) or an EPIC ``rgb_frames/`` folder.

Both readers have the same face: ``.fps``, ``.num_frames``, ``.width``, ``.height`` and
``read_frames(frames, short_side=None) -> uint8 [T, H, W, 3]`` (RGB, in the order asked for).

``VideoReader`` seeks to the first frame it needs (``CAP_PROP_POS_FRAMES``) and then ``grab()``s forward,
decoding to RGB (``retrieve()``) only the frames asked for; a long gap between two wanted frames is
crossed by seeking again. ``seek=False`` decodes from the start instead (the benchmark's baseline).
A truncated or corrupt file gives a ``LeapError`` (the grab loop is bounded by the frames wanted).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Sequence

import cv2
import numpy as np

from leap_cli.epic.timing import frame_filename, time_to_frame
from leap_cli.errors import LeapError

if TYPE_CHECKING:
    from leap_cli.epic.layout import DatasetLayout

log = logging.getLogger(__name__)

# Re-seek instead of grabbing through a gap longer than this many frames (a seek costs about one GOP of decoding).
SEEK_GAP = 64


class FrameSource(Protocol):
    fps: float
    num_frames: int
    width: int
    height: int

    def read_frames(self, frames: Sequence[int], short_side: int | None = None) -> np.ndarray: ...


def resize_short_side(image: np.ndarray, short_side: int | None) -> np.ndarray:
    """Resize so the shorter side is ``short_side`` pixels (aspect kept); None keeps the size."""
    if not short_side:
        return image
    h, w = image.shape[:2]
    if min(h, w) == short_side:
        return image
    if h <= w:
        size = (max(1, round(w * short_side / h)), short_side)
    else:
        size = (short_side, max(1, round(h * short_side / w)))
    interp = cv2.INTER_AREA if short_side < min(h, w) else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interp)


def _check_frames(frames: Sequence[int], num_frames: int, path: Path, record: str | None) -> list[int]:
    wanted = sorted({int(f) for f in frames})
    if not wanted:
        raise LeapError("no frames requested", path=path, record=record)
    if wanted[0] < 1:
        raise LeapError(f"frame {wanted[0]} requested; frame numbers are 1-based", path=path, record=record)
    if num_frames > 0 and wanted[-1] > num_frames:
        raise LeapError(f"frame {wanted[-1]} requested but the video has {num_frames} frames", path=path,
                        record=record, fix="check the segment's stop time against the video's length and fps")
    return wanted


class _Output:
    """Fills ``[T, H, W, 3]`` in the requested order as frames arrive (no second copy, repeats allowed)."""

    def __init__(self, frames: Sequence[int]):
        self.slots: dict[int, list[int]] = {}
        for i, f in enumerate(frames):
            self.slots.setdefault(int(f), []).append(i)
        self.n = len(frames)
        self.array: np.ndarray | None = None

    def put(self, frame: int, image: np.ndarray) -> None:
        if self.array is None:
            self.array = np.empty((self.n, *image.shape), np.uint8)
        for i in self.slots[frame]:
            self.array[i] = image


class VideoReader:
    """An MP4 opened with OpenCV. Use as a context manager; ``record`` names the segment in errors."""

    def __init__(self, path: str | Path, *, record: str | None = None, seek_gap: int = SEEK_GAP):
        self.path = Path(path)
        self.record = record
        self.seek_gap = seek_gap
        if not self.path.is_file():
            raise LeapError("video not found", path=self.path, record=record,
                            fix="download the video or its rgb_frames, or drop the segment")
        self._cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        if not self._cap.isOpened():
            self._cap.release()
            raise LeapError("cannot open the video (truncated or not a video file?)", path=self.path, record=record,
                            fix="re-download or re-encode the file")
        self.fps = float(self._cap.get(cv2.CAP_PROP_FPS)) or 0.0
        self.num_frames = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.width = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if self.fps <= 0 or self.num_frames <= 0 or self.width <= 0 or self.height <= 0:
            self.close()
            raise LeapError(f"video reports fps={self.fps}, frames={self.num_frames}, "
                            f"size={self.width}x{self.height}", path=self.path, record=record,
                            fix="the file is damaged; re-download or re-encode it")
        self._next = 1  # 1-based index of the frame the next grab() returns

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def _seek(self, frame: int) -> None:
        if frame == self._next:
            return
        ok = self._cap.set(cv2.CAP_PROP_POS_FRAMES, frame - 1)  # OpenCV counts from 0
        if not ok:
            raise LeapError(f"cannot seek to frame {frame}", path=self.path, record=self.record,
                            fix="the file may be truncated; re-download or re-encode it")
        landed = int(self._cap.get(cv2.CAP_PROP_POS_FRAMES)) + 1
        if landed != frame:
            # An inexact seek (odd timestamps): decode from the start instead of returning the wrong frame.
            log.warning("%s: seek to frame %d landed on %d; decoding from the start", self.path, frame, landed)
            self._rewind()
            return
        self._next = frame

    def _grab(self, target: int) -> None:
        """Grab (demux + decode, no colour conversion) until the next frame is ``target``."""
        while self._next < target:  # bounded: at most target - _next iterations
            if not self._cap.grab():
                self._fail(self._next)
            self._next += 1

    def _fail(self, frame: int):
        raise LeapError(f"the video ends or is corrupt at frame {frame} (of {self.num_frames} announced)",
                        path=self.path, record=self.record, fix="the file is truncated; re-download or re-encode it")

    def read_frames(self, frames: Sequence[int], short_side: int | None = None, *, seek: bool = True) -> np.ndarray:
        """Frames ``frames`` (1-based, any order, repeats allowed) as uint8 RGB ``[T, H, W, 3]``.

        ``seek=False`` decodes from the first frame of the file (slow late in long videos; for benchmarks).
        """
        if self._cap is None:
            raise LeapError("reader is closed", path=self.path, record=self.record)
        wanted = _check_frames(frames, self.num_frames, self.path, self.record)
        out = _Output(frames)
        if not seek:
            self._rewind()
        for f in wanted:
            if seek and (f < self._next or f - self._next > self.seek_gap):
                self._seek(f)
            elif f < self._next:
                self._rewind()
            self._grab(f)
            if not self._cap.grab():
                self._fail(f)
            self._next += 1
            ok, bgr = self._cap.retrieve()
            if not ok or bgr is None:
                self._fail(f)
            out.put(f, cv2.cvtColor(resize_short_side(bgr, short_side), cv2.COLOR_BGR2RGB))
        return out.array

    def _rewind(self) -> None:
        # Reopen rather than seek: the honest "decode from the start" baseline.
        self._cap.release()
        self._cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        if not self._cap.isOpened():
            raise LeapError("cannot reopen the video", path=self.path, record=self.record)
        self._next = 1


class FramesFolderReader:
    """An EPIC ``rgb_frames/P01_01/`` folder of 1-based ``frame_0000000001.jpg`` files at ``fps``."""

    def __init__(self, folder: str | Path, fps: float, *, record: str | None = None):
        self.path = Path(folder)
        self.record = record
        if not self.path.is_dir():
            raise LeapError("frames folder not found", path=self.path, record=record,
                            fix="extract the video's rgb_frames there or provide the MP4")
        if fps is None or fps <= 0:
            raise LeapError(f"no fps for the frames folder (got {fps})", path=self.path, record=record,
                            fix="add the video to EPIC_100_video_info.csv")
        self.fps = float(fps)
        names = sorted(p.name for p in self.path.glob("frame_*.jpg"))
        if not names:
            raise LeapError("frames folder holds no frame_*.jpg files", path=self.path, record=record)
        self.num_frames = int(names[-1][len("frame_"):-len(".jpg")])
        first = self._load(int(names[0][len("frame_"):-len(".jpg")]))
        self.height, self.width = first.shape[:2]

    def __enter__(self) -> "FramesFolderReader":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def close(self) -> None:
        pass

    def _load(self, frame: int) -> np.ndarray:
        p = self.path / frame_filename(frame)
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if bgr is None:
            raise LeapError("frame missing or unreadable", path=p, record=self.record,
                            fix="re-extract the rgb_frames of this video")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def read_frames(self, frames: Sequence[int], short_side: int | None = None, **_: object) -> np.ndarray:
        wanted = _check_frames(frames, self.num_frames, self.path, self.record)
        out = _Output(frames)
        for f in wanted:
            out.put(f, resize_short_side(self._load(f), short_side))
        return out.array


def open_video(layout: "DatasetLayout", video_id: str, fps: float | None = None, *,
               record: str | None = None) -> VideoReader | FramesFolderReader:
    """The MP4 of ``video_id`` if present, else its ``rgb_frames`` folder (fps from ``fps`` or video_info).

    ``record`` (e.g. the narration_id) is named in errors; the paths looked for are named when neither exists.
    """
    record = record or video_id
    mp4 = layout.video_path(video_id)
    if mp4 is not None:
        return VideoReader(mp4, record=record)
    frames = layout.frames_dir(video_id)
    if frames is not None:
        if fps is None:
            fps = layout.annotations().fps(video_id)
        return FramesFolderReader(frames, fps, record=record)
    part = layout.participant(video_id)
    looked = [layout.root / part / "videos" / f"{video_id}.MP4", layout.root / part / "rgb_frames" / video_id]
    raise LeapError(f"no video for {video_id}: looked for {looked[0]} and {looked[1]}/", path=looked[0], record=record,
                    fix="download the MP4 or the rgb_frames, or leave this video out")


def sample_frame_indices(start: float, stop: float, fps: float, num_frames: int, mode: str = "uniform",
                         rng: np.random.Generator | None = None, max_frame: int | None = None) -> list[int]:
    """``num_frames`` 1-based frame indices inside ``[start, stop)`` seconds.

    ``uniform``: the centre of each of ``num_frames`` equal chunks (TSN test-time sampling);
    ``random``: a random frame in each chunk (TSN training sampling, needs ``rng``);
    ``consecutive``: ``num_frames`` consecutive frames centred in the window.
    Indices are clamped to ``[1, max_frame]`` (repeats happen when the window is shorter than ``num_frames``).
    """
    if num_frames < 1:
        raise ValueError("num_frames must be >= 1")
    first = time_to_frame(start, fps)
    last = max(first, time_to_frame(stop, fps) - 1 if stop > start else first)
    span = last - first + 1
    if mode == "uniform":
        idx = [first + int(math.floor((i + 0.5) * span / num_frames)) for i in range(num_frames)]
    elif mode == "random":
        if rng is None:
            raise ValueError("mode='random' needs rng")
        idx = []
        for i in range(num_frames):
            lo = first + int(math.floor(i * span / num_frames))
            hi = max(lo, first + int(math.floor((i + 1) * span / num_frames)) - 1)
            idx.append(int(rng.integers(lo, hi + 1)))
    elif mode == "consecutive":
        centre = first + span // 2
        idx = [centre - num_frames // 2 + i for i in range(num_frames)]
    else:
        raise ValueError(f"unknown sampling mode {mode!r} (uniform, random, consecutive)")
    top = max_frame if max_frame else max(idx)
    return [min(max(1, i), top) for i in idx]


def read_window(reader: VideoReader | FramesFolderReader, start: float, stop: float, num_frames: int,
                short_side: int | None = None, mode: str = "uniform",
                rng: np.random.Generator | None = None) -> np.ndarray:
    """``num_frames`` frames of the window ``[start, stop)`` seconds as uint8 RGB ``[T, H, W, 3]``."""
    frames = sample_frame_indices(start, stop, reader.fps, num_frames, mode, rng, max_frame=reader.num_frames)
    return reader.read_frames(frames, short_side)
