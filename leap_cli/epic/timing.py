"""EPIC timestamps (``HH:MM:SS.ff``), frame index <-> time, and THE timing rule (``FrameClock``): which frames of
a source (an MP4 or an EPIC ``rgb_frames`` folder) show a segment or any time window. See docs/media.md.

Frame files are 1-based (``frame_0000000001.jpg`` is the frame at t=0), as are EPIC's
``start_frame``/``stop_frame`` columns.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_TS = re.compile(r"^(\d+):([0-5]?\d):([0-5]?\d(?:\.\d+)?)$")


def parse_timestamp(text: str) -> float:
    """``00:01:06.08`` -> 66.08 seconds. Raises ValueError on anything else."""
    m = _TS.match(text.strip())
    if not m:
        raise ValueError(f"timestamp {text!r} is not HH:MM:SS.ff")
    h, mnt, s = m.groups()
    return int(h) * 3600 + int(mnt) * 60 + float(s)


def format_timestamp(seconds: float, decimals: int = 2) -> str:
    """66.08 -> ``00:01:06.08`` (EPIC's own formatting: 2 decimals for start/stop)."""
    if seconds < 0:
        raise ValueError("negative time")
    scale = 10 ** decimals
    total = round(seconds * scale)
    h, rem = divmod(total, 3600 * scale)
    m, rem = divmod(rem, 60 * scale)
    s, frac = divmod(rem, scale)
    return f"{h:02d}:{m:02d}:{s:02d}.{frac:0{decimals}d}"


def time_to_frame(seconds: float, fps: float) -> int:
    """The 1-based index of the frame shown at ``seconds``."""
    return int(math.floor(seconds * fps + 1e-6)) + 1


def csv_frame(seconds: float, rate: float) -> int:
    """EPIC's ``start_frame``/``stop_frame`` column of a time printed with 2 decimals, at EPIC's ``rate``
    (``epic_frame_rate``): floor(timestamp x rate), at least 1 (EPIC_100_validation.csv: P01_11_1 at 1.56 s is
    frame 93, P01_11_0 at 0.00 s frame 1). The frame *shown* then is one later (``time_to_frame``)."""
    return max(1, int(math.floor(round(seconds, 2) * rate + 1e-6)))


def frame_to_time(frame: int, fps: float) -> float:
    """Start time of 1-based frame ``frame``."""
    if frame < 1:
        raise ValueError("frame indices are 1-based")
    return (frame - 1) / fps


def frame_filename(frame: int) -> str:
    """The file name of 1-based frame ``frame`` in an EPIC ``rgb_frames`` folder."""
    return f"frame_{frame:010d}.jpg"


# --- the one timing rule: which source frames show a time window ---------------------------------------------
#
# Two numberings exist for one EPIC video:
# - the MP4's own frames, at the video's true fps (EPIC_100_video_info.csv: 59.94, 50, 29.97, 47.95, 90);
# - EPIC's numbering (the ``start_frame``/``stop_frame`` columns, the ``rgb_frames`` folders and the hand-object
#   files), which counts at 50 per second for the 50 fps videos and at 60 per second for all others (the
#   EPIC-55 recordings at 59.94, 29.97, 47.95 and 90 fps). Checked on every row of EPIC_100_validation.csv and
#   EPIC_100_test_timestamps.csv: ``start_frame == floor(start_timestamp * rate)`` (or one less, from rounding
#   of the 2-decimal timestamps); their 59.94 fps MP4 frames drift from these numbers by 0.1% (1 s per 1000 s).
# Everything that turns a time into a frame number (extract, build-shards, show) goes through ``FrameClock``.

MP4, RGB_FRAMES = "mp4", "rgb_frames"


def epic_frame_rate(fps: float) -> float:
    """The rate at which EPIC's frame columns and ``rgb_frames`` count for a video of true ``fps``."""
    return 50.0 if abs(float(fps) - 50.0) < 0.5 else 60.0


# How many frames a row's start_frame/stop_frame may differ from floor(timestamp x rate) before the two are said to
# disagree: EPIC's own rows differ by at most 1 (the 2-decimal rounding), on all of EPIC_100_validation.csv and
# EPIC_100_test_timestamps.csv
COLUMNS_TOLERANCE = 2


def columns_disagree(start: float, stop: float, start_frame: int, stop_frame: int, fps: float) -> str | None:
    """Where a row's frame columns and timestamps name different frames (an edited CSV: an MP4 is cut by the
    timestamps, an ``rgb_frames`` folder by the frame columns, so the two sources would show different clips),
    what differs; None where they agree as EPIC's rows do."""
    rate = epic_frame_rate(fps)
    for col, frame, t in (("start_frame", start_frame, start), ("stop_frame", stop_frame, stop)):
        if abs(frame - csv_frame(t, rate)) > COLUMNS_TOLERANCE:
            return (f"{col} {frame} but its timestamp {format_timestamp(t)} is frame {csv_frame(t, rate)} at "
                    f"{rate:g}/s")
    return None


class WindowOutside(ValueError):
    """A window is not fully inside the decodable video (``reason`` says why, without paths)."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class Window:
    """Frames of one time window in a source's numbering.

    ``frames``: 1-based frame numbers (in time order); ``times``: the start time of each frame (seconds);
    ``inside``: whether every frame of the window ``[first, last]`` exists in the decodable video;
    ``reason``: why not (None when inside). ``first``/``last`` bound the whole window (not only the samples).
    """

    start: float
    stop: float
    first: int
    last: int
    frames: tuple[int, ...]
    times: tuple[float, ...]
    inside: bool
    reason: str | None = None

    def require(self) -> "Window":
        """The window itself, or ``WindowOutside`` when it is not fully inside the decodable video."""
        if not self.inside:
            raise WindowOutside(self.reason or "outside the video")
        return self


# How far a video's decodable length may fall short of EPIC_100_video_info.csv's duration before it counts as cut
# short (``leap info``, ``FrameClock.cut_short``)
LENGTH_TOLERANCE_S = 0.1


@dataclass(frozen=True)
class FrameClock:
    """How one source numbers its frames, and how many it can decode.

    ``kind``: ``"mp4"`` (frames at the true ``fps``) or ``"rgb_frames"`` (EPIC's numbering, at
    ``epic_frame_rate(fps)``). Both are 1-based: frame k starts at (k-1)/rate. A segment's span in EPIC's
    numbering is its CSV columns as they are (they run about one frame earlier than ``frame_at`` of the
    timestamps: EPIC floors ``t * rate``).
    ``num_frames``: frames the source can decode (None: not known yet, no end check).
    ``duration``: the video's length per EPIC_100_video_info.csv (None: unknown): where the frames that decode
    fall short of it (``cut_short``), a window past their end is the file's fault, not the annotation's.
    """

    kind: str
    fps: float
    num_frames: int | None = None
    duration: float | None = None

    def __post_init__(self):
        if self.kind not in (MP4, RGB_FRAMES):
            raise ValueError(f"unknown frame source kind {self.kind!r}")
        if not self.fps or self.fps <= 0:
            raise ValueError(f"fps must be positive (got {self.fps})")

    @property
    def rate(self) -> float:
        """Frames per second of this source's numbering."""
        return float(self.fps) if self.kind == MP4 else epic_frame_rate(self.fps)

    def with_frames(self, num_frames: int | None) -> "FrameClock":
        return FrameClock(self.kind, self.fps, num_frames, self.duration)

    def frame_at(self, seconds: float) -> int:
        """The frame shown at ``seconds`` (its start time is at or before it)."""
        return time_to_frame(seconds, self.rate)

    def from_epic(self, epic_frame: int) -> int:
        """This source's frame that EPIC's frame ``epic_frame`` holds (EPIC's numbering: the CSV columns,
        ``rgb_frames``, hand-object boxes and EPIC Fields poses). EPIC made its frames with ffmpeg's output ``-r 60``
        (``-r 50``), which puts each MP4 frame in the EPIC frame nearest its time (``to_epic``; one exactly half-way
        in the later one) and repeats it until the next: EPIC's frame n holds the last MP4 frame that starts before
        n's time plus half an EPIC frame; past the MP4's last frame (``-r 60`` writes a few more frames than the
        video's length: their boxes exist too) it repeats that last frame. The same number for ``rgb_frames``."""
        if self.kind == RGB_FRAMES:
            return int(epic_frame)
        frame = int(math.ceil((epic_frame - 0.5 - 1e-6) * self.fps / epic_frame_rate(self.fps)))
        return min(frame, self.num_frames) if self.num_frames else frame

    def to_epic(self, frame: int) -> int:
        """EPIC's frame nearest in time to this source's ``frame``, the one ffmpeg put it in: ``from_epic`` undoes
        it, except for the frames ffmpeg dropped from videos of more frames per second than EPIC counts (90 fps)."""
        if self.kind == RGB_FRAMES:
            return int(frame)
        return int(math.floor((frame - 1) * epic_frame_rate(self.fps) / self.fps + 0.5 + 1e-6)) + 1

    def time_of(self, frame: int) -> float:
        """Start time (seconds) of ``frame`` (frame 1 starts at 0, in both numberings)."""
        return (frame - 1) / self.rate

    def last_before(self, seconds: float) -> int:
        """The last frame that starts strictly before ``seconds`` (0 when none)."""
        k = self.frame_at(seconds)
        return k - 1 if self.time_of(k) >= seconds - 1e-9 else k

    def segment_span(self, segment) -> tuple[int, int]:
        """First and last frame (inclusive) of a segment: for an MP4 from its timestamps through the fps (the
        frame shown at the start to the last frame that starts before the stop), for ``rgb_frames`` its CSV
        ``start_frame``/``stop_frame`` columns as EPIC numbers them."""
        if self.kind == RGB_FRAMES:
            a = int(segment.start_frame)
            return a, max(a, int(segment.stop_frame))
        a = self.frame_at(segment.start)
        b = max(a, self.last_before(segment.stop))
        if (self.num_frames is not None and b == self.num_frames + 1 and not self.cut_short()
                and segment.stop - self.time_of(b) < 1 / self.rate):
            # a stop less than a frame past the video's end (EPIC's timestamps are rounded to 10 ms: P29_05_563
            # stops 13 ms after its video's 1821.737 s) ends at the last frame: nothing past it was filmed
            b = max(a, self.num_frames)
        return a, b

    def check(self, first: int, last: int) -> str | None:
        """Why frames ``first..last`` are not all decodable (None: they are)."""
        if first < 1:
            return f"the window starts {self._secs(1 - first)} before the video"
        if self.num_frames is not None and last > self.num_frames:
            end = self.time_of(self.num_frames + 1)
            again = ("the frames folder is short of frames (extract its rgb_frames tar again)" if self.kind == RGB_FRAMES
                     else "the file is cut short (download it again)")
            cut = f"; EPIC_100_video_info.csv gives {self.duration:.2f} s: {again}" if self.cut_short() else ""
            return (f"the window ends {self._secs(last - self.num_frames)} after the decodable end of the video "
                    f"({end:.2f} s, {self.num_frames} frames){cut}")
        return None

    def cut_short(self) -> bool:
        """Whether the frames that decode end more than ``LENGTH_TOLERANCE_S`` before the video's length in
        EPIC_100_video_info.csv (a truncated copy: a new one may hold the rest; ``leap info`` lists these)."""
        return (self.duration is not None and self.num_frames is not None
                and self.num_frames / self.rate < self.duration - LENGTH_TOLERANCE_S)

    def _secs(self, frames: int) -> str:
        return f"{frames / self.rate:.2f} s"

    def span_window(self, first: int, last: int, n: int | None = None, mode: str = "uniform", *,
                    start: float | None = None, stop: float | None = None, rng=None) -> Window:
        """The window of frames ``first..last``; ``n`` samples of it (None: every frame), see ``pick_frames``."""
        frames = tuple(range(first, last + 1)) if n is None else tuple(pick_frames(first, last, n, mode, rng))
        reason = self.check(first, last)
        return Window(self.time_of(first) if start is None else start,
                      self.time_of(last + 1) if stop is None else stop, first, last, frames,
                      tuple(round(self.time_of(f), 6) for f in frames), reason is None, reason)

    def start_time(self, segment) -> float:
        """When a segment's action starts in this numbering: its timestamp on an MP4; on ``rgb_frames`` the start
        of its CSV ``start_frame`` (EPIC's numbering, as ``segment_span`` takes it; 1-2 frames before the
        timestamp, since EPIC floors ``t * rate``)."""
        return self.time_of(int(segment.start_frame)) if self.kind == RGB_FRAMES else float(segment.start)

    def segment_window(self, segment, n: int | None = None, mode: str = "uniform", rng=None) -> Window:
        """A segment's window (see ``segment_span``) and ``n`` frames of it."""
        a, b = self.segment_span(segment)
        return self.span_window(a, b, n, mode, start=segment.start, stop=segment.stop, rng=rng)

    def window(self, start_s: float, stop_s: float, n: int | None = None, mode: str = "uniform", rng=None) -> Window:
        """The frames shown during ``[start_s, stop_s)``: from the frame shown at ``start_s`` to the last that
        starts before ``stop_s``; ``n`` samples of them (None: all)."""
        if stop_s < start_s:
            raise ValueError(f"window stops ({stop_s}) before it starts ({start_s})")
        first = self.frame_at(start_s)  # before the video too: frame 0 starts 1/rate before frame 1
        last = max(first, self.last_before(stop_s))
        return self.span_window(first, last, n, mode, start=start_s, stop=stop_s, rng=rng)


def pick_frames(first: int, last: int, n: int, mode: str = "uniform", rng=None) -> list[int]:
    """``n`` frame numbers from ``first..last`` (inclusive); repeats when the span is shorter than ``n``.

    ``uniform``: the centre of each of ``n`` equal chunks (TSN test-time sampling, build-shards);
    ``spread``: evenly from ``first`` to ``last`` inclusive of both ends, deduplicated (extract's components);
    ``random``: a random frame in each chunk (TSN training, needs ``rng``);
    ``consecutive``: ``n`` consecutive frames centred in the span (its end frames repeated in a shorter one).
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    last = max(first, last)
    span = last - first + 1
    if mode == "uniform":
        return [first + min(span - 1, int((k + 0.5) * span / n)) for k in range(n)]
    if mode == "spread":
        if n == 1 or span == 1:
            return [first]
        return sorted({int(round(first + (last - first) * k / (n - 1))) for k in range(n)})
    if mode == "random":
        if rng is None:
            raise ValueError("mode='random' needs rng")
        out = []
        for k in range(n):
            lo = first + int(math.floor(k * span / n))
            hi = max(lo, first + int(math.floor((k + 1) * span / n)) - 1)
            out.append(int(rng.integers(lo, hi + 1)))
        return out
    if mode == "consecutive":
        centre = first + span // 2
        return [min(last, max(first, centre - n // 2 + k)) for k in range(n)]
    raise ValueError(f"unknown sampling mode {mode!r} (uniform, spread, random, consecutive)")


def frames_for_window(clock: FrameClock, start_s: float, stop_s: float, n: int | None = None,
                      mode: str = "uniform", rng=None) -> Window:
    """``n`` frames (None: all) of ``[start_s, stop_s)`` in ``clock``'s numbering, and whether the window is
    fully inside the decodable video (``Window.inside``/``.reason``; ``.require()`` raises ``WindowOutside``)."""
    return clock.window(start_s, stop_s, n, mode, rng)


def clip_windows_before(clock: FrameClock, action_start, tau_a: float, *, clips: int = 3, frames: int = 256,
                        n: int | None = None, mode: str = "uniform", rng=None) -> list[Window]:
    """THE anticipation rule: ``clips`` contiguous clips of ``frames`` source frames each (in ``clock``'s numbering),
    oldest first, the newest ending ``tau_a`` seconds before the action starts.

    ``action_start``: seconds, or a segment (anything with ``start`` and ``start_frame``), whose start is
    ``clock.start_time(segment)``: its timestamp on an MP4, the start of its CSV ``start_frame`` on ``rgb_frames``.
    With ``end = action_start - tau_a``, the newest clip's last frame is the last frame that starts before ``end``
    (nothing at or after it is read), and clip c holds every frame of its span: no gaps, no overlap. Clip c's
    ``start``/``stop`` are ``end - (clips - c) * frames / rate`` and ``end - (clips - 1 - c) * frames / rate``;
    its frames are exactly those that start in ``[start, stop)``. ``n`` samples of each clip (None: all its
    frames, see ``pick_frames``); frame numbers below 1 are kept (the caller pads them).

    A clip that starts before the video or ends past its decodable end has ``inside=False`` and a reason.
    """
    if clips < 1 or frames < 1 or tau_a < 0:
        raise ValueError("clips and frames must be >= 1 and tau_a >= 0")
    t = float(action_start) if isinstance(action_start, (int, float)) else clock.start_time(action_start)
    end_t = t - tau_a
    end = clock.last_before(end_t)
    span = frames / clock.rate
    out = []
    for c in range(clips):
        last = end - (clips - 1 - c) * frames
        out.append(clock.span_window(last - frames + 1, last, n, mode, start=end_t - (clips - c) * span,
                                     stop=end_t - (clips - 1 - c) * span, rng=rng))
    return out
