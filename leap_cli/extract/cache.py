"""The frame cache: build-shards' recognition frames, JPEG-encoded by ``leap extract`` from its own decode.

Extract and build-shards need frames of the same segments. Decoding a 1080p H.264 segment twice costs twice the
CPU, so extract (which decodes the segment anyway) also encodes the ``frames`` frames build-shards will store
(the same timing rule, short side and JPEG quality) and writes them to ``ROOT/VIDEO/NARRATION_ID.v3.s256q90.jpgs``;
build-shards copies these JPEG bytes into its samples instead of decoding the video again, and decodes only the
segments it finds no (or a different) cache entry for. The bytes are those build-shards would write itself.

Frames are never upscaled: a source whose short side is at most ``short_side`` is stored at its own size
(``media.video.stored_side``). Entries are named ``.v3.``: earlier entries (``.npz`` NumPy archives; before
``.v2.``, small sources upscaled) are not read, and extract deletes a segment's old entry when it writes the new one.

An entry is one file: ``MAGIC``, the frame count (uint32), per frame its number (int64) and JPEG size (uint32),
then the JPEG bytes one after the other (little-endian; no zip archive to build, as ``np.savez`` did), then
``TRAILER`` and the CRC-32 of everything before it (entries written before the trailer existed have none and are
read as before). It is written atomically (temporary name, then rename); a segment whose frames are unavailable
gets none, and a damaged or truncated entry, or one whose bytes no longer match its CRC (changed on disk: copied
into the shards, its frames failed check-shards, and rebuilding copied them again), is not used (build-shards
decodes that segment instead). Each video folder's ``source.json`` records ``[size, mtime_ns]`` of the source its
entries were made from (``DatasetLayout.source_stat``): build-shards uses no entry of another source, and
extract deletes them (``FrameCache.claim``); nor, for an rgb_frames folder, entries without ``FRAMES_CHECKED``. A
claim that replaces a source of another size notes it (``REPLACED``): with ``source_stat`` it tells extract and
build-shards which records and shards an earlier leap, which kept no size, made from a video downloaded again since
(``made_from_size``).
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from leap_cli.epic.timing import FrameClock
from leap_cli.io import atomic_write_bytes, atomic_write_text

RECOGNITION_SAMPLING = "uniform"  # build-shards' recognition frames: centres of T equal chunks of the segment
MAGIC = b"LEAPJPG3"
_COUNT = struct.Struct("<I")
_ENTRY = struct.Struct("<qI")  # frame number, JPEG size
TRAILER = b"CRC3"  # then the CRC-32 (uint32) of the entry's bytes before the trailer
SOURCE = "source.json"  # per video folder: {"source_stat": [size, mtime_ns]} of the video the entries come from
# source.json's mark of entries made by a leap that refuses a damaged rgb_frames JPEG (since 2026-12-03; an earlier
# one cached such a frame with its rest grey): an rgb_frames video's entries without it are not used, and extract
# replaces them
FRAMES_CHECKED = "frames_checked"
# source.json's note of the source a claim replaced by one of another size (since 2026-12-07): {"source_stat": [size,
# mtime_ns], "claimed_ns": when}, so that what was made from it by a leap that kept no size is still known after the
# claim (``made_from_size``: a run killed after it leaves some of the video's records or shards to tell)
REPLACED = "replaced"


def _count(head: bytes) -> int | None:
    """The frame count of an entry that starts with ``head``, None when it is no entry."""
    if len(head) < len(MAGIC) + _COUNT.size or not head.startswith(MAGIC):
        return None
    return _COUNT.unpack_from(head, len(MAGIC))[0]


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

    @property
    def suffix(self) -> str:
        """The end of every entry's name: the format and the settings it was made with (``.v3.s256q90.jpgs``)."""
        return f".v3.s{self.short_side}q{self.quality}.jpgs"

    def path(self, video_id: str, key: str) -> Path:
        return self.root / video_id / f"{key}{self.suffix}"

    def superseded(self, video_id: str, key: str) -> list[Path]:
        """The names earlier versions gave this entry (``.npz`` archives), which nothing reads any more."""
        tail = f"s{self.short_side}q{self.quality}.npz"
        return [self.root / video_id / f"{key}.{tail}", self.root / video_id / f"{key}.v2.{tail}"]

    def frames_of(self, ctx) -> list[int]:
        return recognition_frames(ctx.clock, ctx.segment, self.frames)

    def store(self, ctx, segment) -> bool:
        """Encode and write the segment's frames (read through ``ctx.images_at_most``: served from extract's one
        decode). False when the frames are unavailable."""
        from leap_cli.extract.base import FramesUnavailable
        from leap_cli.media.write import encode_jpeg

        if ctx.read_frames is None:
            return False
        numbers = self.frames_of(ctx)
        path = self.path(segment.video_id, segment.narration_id)
        if self.holds(path, numbers):
            return True
        try:  # never upscaled (``stored_side``); the decoder's BGR images, encoded as they are (the same bytes)
            images = ctx.images_at_most(numbers, self.short_side, "bgr")
        except FramesUnavailable:
            return False
        blobs = [encode_jpeg(im, self.quality, colour="bgr") for im in images]
        header = MAGIC + _COUNT.pack(len(blobs)) + b"".join(_ENTRY.pack(n, len(b)) for n, b in zip(numbers, blobs))
        crc = zlib.crc32(header)
        for blob in blobs:
            crc = zlib.crc32(blob, crc)
        # one join of all the pieces: the body joined, then copied again with the header and with the trailer (each
        # copy in fresh memory) cost ~1.2 ms of CPU an entry at 360p (a sixth of its 16 JPEG encodings), this 0.03 ms
        atomic_write_bytes(path, b"".join([header, *blobs, TRAILER, _COUNT.pack(crc)]))
        for old in self.superseded(segment.video_id, segment.narration_id):
            old.unlink(missing_ok=True)  # its replacement is written: the old entry's disk space comes back
        return True

    def _record(self, video_id: str) -> dict:
        """The video's ``source.json`` ({} where there is none, or it cannot be read)."""
        try:
            record = json.loads((self.root / video_id / SOURCE).read_text())
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def source_of(self, video_id: str) -> list[int] | None:
        """The ``[size, mtime_ns]`` of the source the video's entries were made from (``DatasetLayout.source_stat``),
        None where not recorded (entries of an earlier leap) or unreadable."""
        held = self._record(video_id).get("source_stat")
        return held if isinstance(held, list) else None

    def claim(self, video_id: str, stat: list[int] | None, frames: bool = False) -> None:
        """Extract, before a video's first segment: record the source its entries come from, after deleting the
        entries made from another one (a video replaced since, or another dataset with these video ids: extract
        kept them as done and build-shards copied them), and, for an rgb_frames folder (``frames``), those an
        earlier leap made (``FRAMES_CHECKED``)."""
        if stat is None:
            return
        record = self._record(video_id)
        held = self.source_of(video_id)
        if held == stat and (not frames or record.get(FRAMES_CHECKED)):
            return
        if held is not None or frames:  # (an rgb_frames video's entries of a leap before source.json too)
            for old in (self.root / video_id).glob(f"*{self.suffix}"):
                old.unlink(missing_ok=True)
        replaced = {"source_stat": held, "claimed_ns": time.time_ns()} if held and held[0] != stat[0] else \
            record.get(REPLACED) if held and held[0] == stat[0] else None  # (a copy's new mtime keeps the note)
        atomic_write_text(self.root / video_id / SOURCE, json.dumps(
            {"source_stat": stat, FRAMES_CHECKED: True, **({REPLACED: replaced} if replaced else {})}) + "\n")

    def made_from_size(self, video_id: str, size: int, since_ns: int | None = None) -> int | None:
        """For what keeps no size of the MP4 it was made from (descriptor records and shards of a leap before
        2026-12-07): the size other than ``size`` (the MP4's now) that the video's ``source.json`` says it was made
        from, else None (not known, or the same: kept). Its ``source_stat`` where entries at these settings are there
        (extract made them, and the records beside them, from that source; a folder holding only other settings'
        entries was claimed by another run); else that of the source a claim replaced (``REPLACED``), where the claim
        came after ``since_ns`` (a shard's tar mtime; None: any, a record that keeps no size predates a claim of a
        leap that keeps one). A copy (new mtimes, the same sizes) is no change."""
        record = self._record(video_id)
        held = record.get("source_stat")
        if isinstance(held, list) and held and isinstance(held[0], int) and held[0] != size \
                and next((self.root / video_id).glob(f"*{self.suffix}"), None) is not None:
            return held[0]
        replaced = record.get(REPLACED)
        if not isinstance(replaced, dict) or not isinstance(was := replaced.get("source_stat"), list) or not was \
                or not isinstance(was[0], int) or was[0] == size:
            return None
        when = replaced.get("claimed_ns")
        return was[0] if since_ns is None or (isinstance(when, int) and when > since_ns) else None

    def same_source(self, video_id: str, stat: list[int] | None, frames: bool = False) -> bool:
        """Whether the video's entries were made from the source of this ``stat`` (true where either is not
        known: entries of an earlier leap, a video with no source), for an rgb_frames folder (``frames``) by a leap
        that refuses damaged frames (``FRAMES_CHECKED``)."""
        if frames and not self._record(video_id).get(FRAMES_CHECKED):
            return False
        held = self.source_of(video_id)
        return held is None or stat is None or held == stat

    @staticmethod
    def holds(path: Path, frames: list[int]) -> bool:
        """Whether the entry at ``path`` is there with these frame numbers (its header only: an entry made for other
        times of the segment, from another version of the annotations, is replaced; ``load`` checks the rest)."""
        try:
            with open(path, "rb") as f:
                head = f.read(len(MAGIC) + _COUNT.size + len(frames) * _ENTRY.size)
        except OSError:
            return False
        if _count(head) != len(frames) or len(head) < len(MAGIC) + _COUNT.size + len(frames) * _ENTRY.size:
            return False
        return [_ENTRY.unpack_from(head, len(MAGIC) + _COUNT.size + i * _ENTRY.size)[0]
                for i in range(len(frames))] == list(frames)

    @staticmethod
    def frame_count(path: Path) -> int | None:
        """How many frames an entry holds (its header), None when it cannot be read."""
        try:
            with open(path, "rb") as f:
                return _count(f.read(len(MAGIC) + _COUNT.size))
        except OSError:
            return None

    def load(self, video_id: str, key: str, frames: list[int]) -> list[bytes] | None:
        """The JPEG bytes of ``frames`` for segment ``key``, or None when there is no matching entry."""
        path = self.path(video_id, key)
        if not path.is_file():
            return None
        try:
            blob = path.read_bytes()
        except OSError:
            return None
        count = _count(blob)
        if count is None:
            return None  # a damaged entry: decode instead
        at = len(MAGIC) + _COUNT.size + count * _ENTRY.size
        if count != len(frames) or at > len(blob):
            return None
        entries = [_ENTRY.unpack_from(blob, len(MAGIC) + _COUNT.size + i * _ENTRY.size) for i in range(count)]
        end = at + sum(size for _, size in entries)
        if [n for n, _ in entries] != list(frames):
            return None
        if len(blob) == end + len(TRAILER) + _COUNT.size and blob[end:end + len(TRAILER)] == TRAILER:
            if _COUNT.unpack_from(blob, end + len(TRAILER))[0] != zlib.crc32(memoryview(blob)[:end]):
                return None  # changed on disk since it was written
        elif len(blob) != end:  # (an entry of an earlier leap has no trailer)
            return None
        out = []
        for _, size in entries:
            out.append(blob[at:at + size])
            at += size
        return out

