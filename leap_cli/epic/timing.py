"""EPIC timestamps (``HH:MM:SS.ff``) and frame index <-> time through a video's fps.

Frame files are 1-based (``frame_0000000001.jpg`` is the frame at t=0), as are EPIC's
``start_frame``/``stop_frame`` columns.
"""

from __future__ import annotations

import math
import re

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


def frame_to_time(frame: int, fps: float) -> float:
    """Start time of 1-based frame ``frame``."""
    if frame < 1:
        raise ValueError("frame indices are 1-based")
    return (frame - 1) / fps


def frame_filename(frame: int) -> str:
    return f"frame_{frame:010d}.jpg"


def window_frames(start: float, stop: float, fps: float) -> tuple[int, int]:
    """The 1-based frames that START in the window ``[start, stop)``: ``(first, last)``, inclusive. Windows that
    meet share no frame and leave none out; a window of ``n / fps`` seconds holds ``n`` frames. Times before
    the video's start give indices below 1 (the caller pads them)."""
    def boundary(t: float) -> int:  # frames starting before t
        x = t * fps
        return math.ceil(x - 1e-6) if abs(x - round(x)) > 1e-6 else int(round(x))

    return boundary(start) + 1, boundary(stop)


def anticipation_windows(video_fps: float, ts: float, tau_a: float = 1.0, n_clips: int = 3,
                         span_frames: int = 256) -> list[tuple[float, float]]:
    """The observed clips of the anticipation task (LEAP / EPIC-KITCHENS-100): ``n_clips`` contiguous windows
    of ``span_frames`` source frames each (at the video's own fps), the last ending ``tau_a`` seconds before
    the action starts at ``ts``. ``[(start_s, stop_s), ...]``, oldest first; starts may be negative (before
    the video). Frames of a window: ``window_frames(start_s, stop_s, video_fps)``."""
    end = ts - tau_a
    span = span_frames / video_fps
    return [(end - (n_clips - k) * span, end - (n_clips - 1 - k) * span) for k in range(n_clips)]
