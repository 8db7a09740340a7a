"""The frame cache: build-shards' recognition frames, JPEG-encoded by ``leap extract`` from its own decode.

Extract and build-shards need frames of the same segments. Decoding a 1080p H.264 segment twice costs twice the
CPU, so extract (which decodes the segment anyway) also encodes the ``frames`` frames build-shards will store
(the same timing rule, short side and JPEG quality) and writes them to ``ROOT/VIDEO/NARRATION_ID.v2.s256q90.npz``;
build-shards copies these JPEG bytes into its samples instead of decoding the video again, and decodes only the
segments it finds no (or a different) cache entry for. The bytes are those build-shards would write itself.

Frames are never upscaled: a source whose short side is at most ``short_side`` is stored at its own size
(``media.video.stored_side``). Entries are named ``.v2.`` since then: the entries of earlier versions (small
sources upscaled) are not read.

An entry is written atomically (temporary name, then rename); a segment whose frames are unavailable gets none.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leap_cli.epic.timing import FrameClock

RECOGNITION_SAMPLING = "uniform"  # build-shards' recognition frames: centres of T equal chunks of the segment


def recognition_frames(clock: FrameClock, segment, count: int) -> list[int]:
    """The ``count`` frames build-shards stores for a segment (the timing rule, centres of equal chunks)."""
    return list(clock.segment_window(segment, count, RECOGNITION_SAMPLING).frames)


@dataclass(frozen=True)
class FrameCache:
    root: Path
    frames: int = 16
    short_side: int = 256
    quality: int = 90

    @classmethod
    def from_config(cls, cfg) -> "FrameCache | None":
        root = getattr(cfg, "frame_cache", None)
        if root is None or not getattr(cfg, "cache_frames", 0):
            return None
        return cls(Path(root), cfg.cache_frames, cfg.cache_short_side, cfg.cache_quality)

    def path(self, video_id: str, key: str) -> Path:
        return self.root / video_id / f"{key}.v2.s{self.short_side}q{self.quality}.npz"

    def frames_of(self, ctx) -> list[int]:
        return recognition_frames(ctx.clock, ctx.segment, self.frames)

    def store(self, ctx, segment) -> bool:
        """Encode and write the segment's frames (read through ``ctx.read_frames``: served from extract's one
        decode). False when the frames are unavailable."""
        from leap_cli.extract.base import FramesUnavailable
        from leap_cli.media.write import encode_jpeg

        if ctx.read_frames is None:
            return False
        numbers = self.frames_of(ctx)
        path = self.path(segment.video_id, segment.narration_id)
        if path.exists():
            return True
        try:
            images = ctx.read_at_most(numbers, self.short_side)  # never upscaled (``stored_side``)
        except FramesUnavailable:
            return False
        blobs = [encode_jpeg(im, self.quality) for im in images]
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, frames=np.asarray(numbers, np.int64),
                         sizes=np.asarray([len(b) for b in blobs], np.int64),
                         data=np.frombuffer(b"".join(blobs), np.uint8))
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return True

    def load(self, video_id: str, key: str, frames: list[int]) -> list[bytes] | None:
        """The JPEG bytes of ``frames`` for segment ``key``, or None when there is no matching entry."""
        path = self.path(video_id, key)
        if not path.is_file():
            return None
        try:
            with np.load(path) as z:
                stored, sizes, data = z["frames"].tolist(), z["sizes"].tolist(), z["data"].tobytes()
        except (OSError, ValueError, KeyError):
            return None  # a damaged entry: decode instead
        if stored != list(frames) or sum(sizes) != len(data):
            return None
        out, at = [], 0
        for n in sizes:
            out.append(data[at:at + n])
            at += n
        return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
