"""Video frames by 1-based frame index, from an MP4 (OpenCV) or an EPIC ``rgb_frames/`` folder.

Both readers have the same face: ``.fps``, ``.num_frames``, ``.width``, ``.height`` and
``read_frames(frames, short_side=None) -> uint8 [T, H, W, 3]`` (RGB, in the order asked for).

``VideoReader`` seeks to the first frame it needs (``CAP_PROP_POS_FRAMES``) and then ``grab()``s forward,
decoding to RGB (``retrieve()``) only the frames asked for; a long gap between two wanted frames is
crossed by seeking again. ``seek=False`` decodes from the start instead (the benchmark's baseline).
A truncated or corrupt file gives a ``VideoUnreadable`` (a ``LeapError`` whose ``message`` names no path; the
grab loop is bounded by the frames wanted). ``decodable_frames`` finds how many frames a file really decodes.

This module knows frame numbers only: which frames show a time window is the timing rule of
``leap_cli.epic.timing`` (media never imports from epic).
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import cv2
import numpy as np

from leap_cli.epic.timing import frame_filename
from leap_cli.errors import LeapError

if TYPE_CHECKING:
    from leap_cli.epic.layout import DatasetLayout

log = logging.getLogger(__name__)

# Re-seek instead of grabbing through a gap longer than this many frames (a seek costs about one GOP of decoding).
SEEK_GAP = 64
# FFmpeg decoding threads per reader (None: FFmpeg's choice, one per core). Worker processes set 1: they are the
# parallelism, and one thread decodes H.264 at about 3/4 of the CPU of frame-threaded decoding.
DECODE_THREADS: int | None = None
# Videos of at most this many pixels a frame decode on one thread whatever DECODE_THREADS says: on 256x144 MPEG-4,
# FFmpeg's threads took 1.6-2x the CPU of one thread for the same wall time (bench_decode.py, 2026-12-01); on
# 1080p H.264 they cost ~5% more CPU and shorten the wall time.
SMALL_FRAME = 640 * 480


def _capture(path: Path, threads: int | None) -> cv2.VideoCapture:
    params = [cv2.CAP_PROP_N_THREADS, threads] if threads else []
    return cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, params)


def permission_denied(path: str | Path) -> bool:
    """Whether this process may not read ``path`` (its permissions), which a decoder reports as a file it cannot
    open, like a truncated one: said apart, since the fix is not a new download."""
    import os

    try:
        os.close(os.open(path, os.O_RDONLY))
    except PermissionError:
        return True
    except OSError:
        return False
    return False


DENIED = ("the file cannot be read: permission denied",
          "make it readable by this user (e.g. chmod a+r), then run the stage again (extract: with --retry-errors)")


class VideoUnreadable(LeapError):
    """The video (or the frames asked for) cannot be decoded: missing, truncated, corrupt, or past its end.
    ``message`` says what, without paths or tool texts (it may go into a clip text); ``path`` names the file;
    ``gist`` is the message without its numbers (frame numbers, counts), so failures of one kind count as one cause."""

    def __init__(self, message: str, *, gist: str | None = None, files: list[Path] | None = None, **where):
        super().__init__(message, **where)
        self.gist = gist or message
        # the rgb_frames files at fault (FramesFolderReader's): build-shards keeps their stats, to try again once one
        # changes (a frame copied over in place changes neither the folder's size nor its times)
        self.files = list(files or ())


def stored_side(width: int, height: int, short_side: int) -> int | None:
    """The short side to store (or read) a source's frames at: ``short_side``, or None (the frames as they are)
    where the source's short side is no larger: frames are never upscaled."""
    return short_side if min(width, height) > short_side else None


def stored_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) of the stored frames of a ``width`` x ``height`` source (``resize_short_side``'s rounding)."""
    if stored_side(width, height, short_side) is None:
        return width, height
    if height <= width:
        return max(1, round(width * short_side / height)), short_side
    return short_side, max(1, round(height * short_side / width))


def resize_short_side(image: np.ndarray, short_side: int | None, out: np.ndarray | None = None) -> np.ndarray:
    """Resize so the shorter side is ``short_side`` pixels (aspect kept); None keeps the size.

    Shrinking halves the image with ``INTER_AREA`` (2x2 block means: OpenCV's fast path) while it stays at least
    twice the target, then interpolates the remaining factor (< 2) bilinearly: the anti-aliasing of ``INTER_AREA``
    straight to the target at about a fifth of its CPU on 1080p frames (1.5 ms instead of 9).

    ``out``: a free image to write the result into where it has the result's shape (reused memory: a new 455x256
    image costs ~85 page faults, a third of its resize's CPU); a new one is made where it has not, and the halving
    steps make their own."""
    if not short_side:
        return image
    h, w = image.shape[:2]
    if min(h, w) == short_side:
        return image
    if h <= w:
        size = (max(1, round(w * short_side / h)), short_side)
    else:
        size = (short_side, max(1, round(h * short_side / w)))
    if short_side > min(h, w):
        return cv2.resize(image, size, dst=out, interpolation=cv2.INTER_LINEAR)
    while min(h, w) >= 2 * short_side and h % 2 == 0 and w % 2 == 0:
        h, w = h // 2, w // 2
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    if min(h, w) == short_side:
        return image
    if min(h, w) < 2 * short_side:
        return cv2.resize(image, size, dst=out, interpolation=cv2.INTER_LINEAR)
    return cv2.resize(image, size, dst=out, interpolation=cv2.INTER_AREA)  # odd sizes: no halving


def to_rgb(bgr: np.ndarray, short_side: int | None) -> np.ndarray:
    """A decoded BGR image, resized to ``short_side`` (None: as is), as RGB: what every reader returns."""
    return cv2.cvtColor(resize_short_side(bgr, short_side), cv2.COLOR_BGR2RGB)


COLOURS = ("rgb", "bgr", "gray")
_FROM = {("bgr", "rgb"): cv2.COLOR_BGR2RGB, ("rgb", "bgr"): cv2.COLOR_RGB2BGR, ("bgr", "gray"): cv2.COLOR_BGR2GRAY,
         ("rgb", "gray"): cv2.COLOR_RGB2GRAY}


def as_colour(image: np.ndarray, colour: str, source: str = "bgr") -> np.ndarray:
    """``image`` (``source``: "bgr", OpenCV's decoded order, or "rgb") in ``colour`` ("rgb", "bgr" or "gray"):
    the image itself, no copy, where the orders agree. Grey from BGR or from RGB is the same image."""
    if colour == source:
        return image
    if (source, colour) not in _FROM:
        raise ValueError(f"cannot convert {source} to {colour}; colours are {', '.join(COLOURS)}")
    return cv2.cvtColor(image, _FROM[(source, colour)])


PAST_END = "frames requested past the end of the video"  # (the gist a summary counts these by)


def _check_frames(frames: Sequence[int], num_frames: int, path: Path, record: str | None) -> list[int]:
    wanted = sorted({int(f) for f in frames})
    if not wanted:
        raise LeapError("no frames requested", path=path, record=record)
    if wanted[0] < 1:
        raise LeapError(f"frame {wanted[0]} requested; frame numbers are 1-based", path=path, record=record)
    if num_frames > 0 and wanted[-1] > num_frames:
        raise VideoUnreadable(f"frame {wanted[-1]} requested but the video has {num_frames} frames", path=path,
                              gist=PAST_END,
                              record=record, fix="leap info compares each video's decodable length with "
                              "EPIC_100_video_info.csv (a file cut short: download it again); else check the "
                              "segment's times against the video's length and fps")
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
    """An MP4 opened with OpenCV. Use as a context manager; ``record`` names the segment in errors;
    ``frames_beside``: the video's rgb_frames folder, which the fix of a damaged file names (the MP4 is read first)."""

    def __init__(self, path: str | Path, *, record: str | None = None, seek_gap: int = SEEK_GAP,
                 frames_beside: Path | None = None):
        self.path = Path(path)
        self.record = record
        self.seek_gap = seek_gap
        self.frames_beside = frames_beside
        if not self.path.is_file():
            raise VideoUnreadable("video not found", path=self.path, record=record,
                                  fix="download the video or its rgb_frames, or drop the segment")
        self._threads = 1  # opened on one thread (a cheap probe of the size); reopened below for large frames
        self._cap = _capture(self.path, self._threads)
        if not self._cap.isOpened():
            self._cap.release()
            if permission_denied(self.path):
                raise VideoUnreadable(DENIED[0], path=self.path, record=record, fix=DENIED[1])
            raise VideoUnreadable("the video cannot be opened (truncated or not a video file)", path=self.path,
                                  record=record, fix=self._redo("re-download or re-encode the file"))
        self.fps = float(self._cap.get(cv2.CAP_PROP_FPS)) or 0.0
        self.num_frames = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.width = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if self.fps <= 0 or self.num_frames <= 0 or self.width <= 0 or self.height <= 0:
            self.close()
            raise VideoUnreadable(f"video reports fps={self.fps}, frames={self.num_frames}, "
                            f"size={self.width}x{self.height}", gist="the video reports no fps, frames or size",
                            path=self.path, record=record,
                            fix=self._redo("the file is damaged; re-download or re-encode it"))
        if DECODE_THREADS != 1 and self.width * self.height > SMALL_FRAME:
            self._threads = DECODE_THREADS
            self._rewind()
        self._next = 1  # 1-based index of the frame the next grab() returns
        self._from_start = True  # the frames since the last rewind were decoded in order from the file's start
        self._dead_from: int | None = None  # the first frame that decoding from the start could not reach

    def _redo(self, fix: str) -> str:
        """The fix of a damaged file, naming the rgb_frames folder beside it where there is one."""
        if self.frames_beside is None:
            return fix
        return f"{fix}; or move the MP4 away to read the video's rgb_frames folder beside it ({self.frames_beside})"

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
            raise VideoUnreadable(f"cannot seek to frame {frame}", gist="cannot seek in the video", path=self.path,
                                  record=self.record,
                                  fix=self._redo("the file may be truncated; re-download or re-encode it"))
        landed = int(self._cap.get(cv2.CAP_PROP_POS_FRAMES)) + 1
        if landed != frame:
            if self._dead_from is not None and frame >= self._dead_from:
                # a file cut short (its index announces frames its data lacks): decoding from the start failed
                # there already, for an earlier segment; not again for every later one (minutes per segment on
                # an hour of 1080p, and a warning each)
                self._fail(self._dead_from)
            # An inexact seek (odd timestamps): decode from the start instead of returning the wrong frame.
            log.warning("%s: seek to frame %d landed on %d; decoding from the start", self.path, frame, landed)
            self._rewind()
            return
        self._next = frame
        self._from_start = False

    def _grab(self, target: int) -> None:
        """Grab (demux + decode, no colour conversion) until the next frame is ``target``."""
        while self._next < target:  # bounded: at most target - _next iterations
            if not self._cap.grab():
                self._fail(self._next)
            self._next += 1

    def _fail(self, frame: int):
        if self._from_start:  # (after an exact seek, frames past a corrupt stretch may still be reached)
            self._dead_from = frame if self._dead_from is None else min(self._dead_from, frame)
        # where the capture stands is unknown now (a failed grab() of a corrupt stretch has gone on through packets
        # it could not decode): the next frame asked for is sought, not grabbed towards (frames shifted by the failed
        # grabs came back silently as the frames asked for)
        self._next = math.inf
        raise VideoUnreadable(f"the video ends or is corrupt at frame {frame} (of {self.num_frames} announced)",
                              gist="the video ends early or is corrupt",
                              path=self.path, record=self.record,
                              fix=self._redo("the file is truncated; re-download or re-encode it"))

    def decode(self, frames: Sequence[int], *, seek: bool = True,
               into: Callable[[], np.ndarray | None] | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """``(frame, BGR image at full size)`` for each distinct frame of ``frames``, in increasing order, each
        decoded once (one pass through the file; a gap over ``seek_gap`` frames is crossed by seeking).

        ``into()``, where given, is asked for an array to write each image into (a free ``[H, W, 3]`` uint8 one
        from an earlier decode, or None for a new one): reused memory costs no page faults, where each kept frame
        in fresh memory costs one per 4 kB page (~27 at 256x144)."""
        if self._cap is None:
            raise LeapError("reader is closed", path=self.path, record=self.record)
        wanted = _check_frames(frames, self.num_frames, self.path, self.record)
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
            buffer = into() if into is not None else None
            ok, bgr = self._cap.retrieve() if buffer is None else self._cap.retrieve(buffer)
            if not ok or bgr is None:
                self._fail(f)
            yield f, bgr

    def read_frames(self, frames: Sequence[int], short_side: int | None = None, *, seek: bool = True) -> np.ndarray:
        """Frames ``frames`` (1-based, any order, repeats allowed) as uint8 RGB ``[T, H, W, 3]``.

        ``seek=False`` decodes from the first frame of the file (slow late in long videos; for benchmarks).
        """
        out = _Output(frames)
        for f, bgr in self.decode(frames, seek=seek):
            out.put(f, to_rgb(bgr, short_side))
        return out.array

    def _rewind(self) -> None:
        # Reopen rather than seek: the honest "decode from the start" baseline.
        self._cap.release()
        self._cap = _capture(self.path, self._threads)
        if not self._cap.isOpened():
            raise VideoUnreadable("the video cannot be reopened", path=self.path, record=self.record)
        self._next = 1
        self._from_start = True


_FRAMES_REDO = "re-extract the rgb_frames of this video"
# a video's frames as stored, never turned by an EXIF orientation tag (a frame has none; one that did would no
# longer have the size its header, and the video's other frames, give)
_IMREAD = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
_FRAMES_DENIED = ("make the folder and its frames readable by this user (e.g. chmod -R a+rX {folder}), then run the "
                  "stage again (extract: with --retry-errors)")

# libjpeg's warnings (it prints the first of an image only): those that mean the image data is damaged (bad
# Huffman codes, data that ends inside a scan, a broken scan) leave the rest of the picture grey, or with restart
# markers (as FFmpeg's frames, EPIC's, have) a band of it; "N extraneous bytes before marker 0xXX" is padding
# where at most a few bytes come before a real marker of the file's layout (the end, 0xd9, a table, a scan's
# start: some encoders pad there), and damage otherwise (before a restart marker, 0xd0-0xd7, the scan lost its
# place; before a "marker" that is no marker, garbage ended on an 0xff).
_LIBJPEG = re.compile(r"(Corrupt JPEG data|Premature end of JPEG file|Invalid SOS parameters|Inconsistent progression"
                      r" sequence|Warning: (unknown JFIF revision|thumbnail image size)|JFIF extension marker|"
                      r"Unknown Adobe color transform|Unsupported marker type|Huffman)")
_EXTRANEOUS = re.compile(r"(\d+) extraneous bytes before marker 0x([0-9a-fA-F]{2})")
_PADDING = 8  # extraneous bytes before a marker of the layout still taken for padding
# the markers a file's layout has between its parts: frame and table headers (0xc0-0xcf), the end (0xd9), a scan's
# start (0xda), quantisation tables (0xdb), the restart interval (0xdd), application segments and comments
_LAYOUT_MARKERS = {*range(0xC0, 0xD0), 0xD9, 0xDA, 0xDB, 0xDD, *range(0xE0, 0xF0), 0xFE}


def _jpeg_damage(line: str) -> bool:
    """Whether libjpeg's warning ``line`` says the image data is damaged (``_LIBJPEG``)."""
    extra = _EXTRANEOUS.search(line)
    if extra:
        return int(extra.group(2), 16) not in _LAYOUT_MARKERS or int(extra.group(1)) > _PADDING
    return line.startswith(("Corrupt JPEG data", "Premature end of JPEG file", "Invalid SOS parameters",
                            "Inconsistent progression sequence")) or "Huffman" in line


# start-of-frame markers (baseline, progressive, lossless, arithmetic): their segment holds the image's size
_SOF = {*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC}


def _jpeg_header(data: bytes) -> tuple[tuple[int, int] | None, bool]:
    """((height, width) or None, cut short) of a JPEG (``data`` starts with its 0xffd8), from its marker segments
    alone, walked to the first scan (an APP1's thumbnail, a whole JPEG of its own, is passed over): the size from
    its start-of-frame segment, and whether the file ends before its end marker (after the first scan, the first
    0xffd9 is the image's end: scans and the tables between them hold none; bytes after it are no harm)."""
    i, n, size = 2, len(data), None
    while i + 4 <= n:
        if data[i] != 0xFF:
            return size, False  # not a layout this walk knows: the decoder says what it makes of it
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0xDA:
            return size, data.find(b"\xff\xd9", i) < 0
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # (markers without a length)
            i += 2
        else:
            if marker in _SOF and i + 9 <= n:
                size = (int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big"))
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return size, True  # the headers run past the end of the file


class _JpegWarnings:
    """``cv2.imdecode`` of a JPEG with libjpeg's warnings: OpenCV decodes a file with corrupt data without an error
    (the rest of the image grey) and libjpeg says so only on the process's stderr ("Corrupt JPEG data: premature end
    of data segment"). During the decode, stderr (fd 2) goes to a file of this process's own; what came is read
    back: libjpeg's damage warnings are returned, any other line (another thread's) is written to stderr as it was.
    A few microseconds a frame."""

    def __init__(self):
        import threading

        self._lock = threading.Lock()
        self._pid: int | None = None
        self._sink: int | None = None

    def _file(self) -> int:
        if self._pid != os.getpid():  # a forked worker gets a file of its own, not its parent's (a shared offset)
            import fcntl

            if hasattr(os, "memfd_create"):
                fd = os.memfd_create("leap-libjpeg")
            else:
                import tempfile

                fd = os.dup(tempfile.TemporaryFile().fileno())
            # above stdin/out/err: with stderr closed (2>&-, a daemon) the new file would be fd 2 itself, for good
            self._sink = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
            os.close(fd)
            self._pid = os.getpid()
        return self._sink

    def decode(self, data: bytes) -> tuple[np.ndarray | None, str | None]:
        """(BGR image or None, libjpeg's damage warning or None)."""
        buf = np.frombuffer(data, np.uint8)
        with self._lock:
            try:
                sink = self._file()
            except OSError:  # (no file to be had: the decode alone)
                return cv2.imdecode(buf, _IMREAD), None
            try:
                saved = os.dup(2)
            except OSError:  # stderr closed: it is closed again after
                saved = None
            try:
                os.dup2(sink, 2)
                try:
                    bgr = cv2.imdecode(buf, _IMREAD)
                finally:
                    if saved is None:
                        os.close(2)
                    else:
                        os.dup2(saved, 2)
            finally:
                if saved is not None:
                    os.close(saved)
            if not os.fstat(sink).st_size:
                return bgr, None
            os.lseek(sink, 0, os.SEEK_SET)
            said = b""
            while chunk := os.read(sink, 65536):
                said += chunk
            os.ftruncate(sink, 0)
            os.lseek(sink, 0, os.SEEK_SET)
        damage, other = None, []
        for line in said.decode("utf-8", "replace").splitlines(keepends=True):
            if not _LIBJPEG.match(line):  # (another thread's line: written back to stderr)
                other.append(line)
            elif damage is None and _jpeg_damage(line):
                damage = line.strip()
        if other:
            try:
                os.write(2, "".join(other).encode())
            except OSError:  # (stderr closed, or a pipe whose reader is gone: the lines were for nobody)
                pass
        return bgr, damage


_jpeg = _JpegWarnings()


_FRAME_NAME = re.compile(r"frame_([0-9]{10})\.jpg")  # as frame_filename names them


class FramesFolderReader:
    """An EPIC ``rgb_frames/P01_01/`` folder of 1-based ``frame_0000000001.jpg`` files at ``fps``."""

    def __init__(self, folder: str | Path, fps: float, *, record: str | None = None):
        self.path = Path(folder)
        self.record = record
        if not self.path.is_dir():
            raise VideoUnreadable("frames folder not found", path=self.path, record=record,
                            fix="extract the video's rgb_frames there or provide the MP4")
        if fps is None or fps <= 0:
            raise LeapError(f"no fps for the frames folder (got {fps})", path=self.path, record=record,
                            fix="add the video to EPIC_100_video_info.csv")
        self.fps = float(fps)
        # frame_NNNNNNNNNN.jpg only, by number: another file there (a file manager's "frame_0000000003 (copy).jpg")
        # is no frame, and no crash
        frames = sorted(int(m[1]) for p in self.path.glob("frame_*.jpg") if (m := _FRAME_NAME.fullmatch(p.name)))
        if not frames:
            if not os.access(self.path, os.R_OK | os.X_OK):  # (glob finds nothing in a folder it may not list)
                raise VideoUnreadable("the frames folder cannot be read: permission denied", path=self.path,
                                      record=record, fix=_FRAMES_DENIED.format(folder=self.path))
            raise VideoUnreadable("the frames folder holds no frame_*.jpg files", path=self.path, record=record)
        self.num_frames = frames[-1]
        self.height = self.width = 0
        # the frames' size: the one most of the first, middle and last frames have (a single odd frame 1 made
        # every other frame of the video "of another size"), read from their headers (a damaged frame still has
        # its size, and is refused only where a segment reads it); where they do not all agree (or one cannot be
        # read), frames 2-8 too, and the size most of them have
        numbers = list(dict.fromkeys((frames[0], frames[len(frames) // 2], frames[-1], *frames[1:8])))
        sizes: dict[tuple[int, int], list[int]] = {}
        error: VideoUnreadable | None = None
        for i, f in enumerate(numbers):
            if i >= 3 and len(sizes) == 1 and len(next(iter(sizes.values()))) > 1:  # (else frames 2-8 too)
                break
            try:
                sizes.setdefault(self._size(f), []).append(f)
            except VideoUnreadable as e:
                error = error or e
        if not sizes:
            raise error
        (self.height, self.width), sized_by = max(sizes.items(), key=lambda kv: len(kv[1]))
        self.sized_by = sorted(sized_by)

    def __enter__(self) -> "FramesFolderReader":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def close(self) -> None:
        pass

    def _refuse(self, frame: int, message: str, gist: str, fix: str = _FRAMES_REDO, *,
                files: Sequence[Path] = ()) -> VideoUnreadable:
        """The error of frame ``frame``'s file (and of ``files``, the others at fault)."""
        p = self.path / frame_filename(frame)
        return VideoUnreadable(message, gist=gist, path=p, record=self.record, fix=fix, files=[p, *files])

    def _read(self, frame: int) -> bytes:
        try:
            data = (self.path / frame_filename(frame)).read_bytes()
        except FileNotFoundError:
            raise self._refuse(frame, f"frame {frame} is missing", "a frame file is missing") from None
        except PermissionError:
            raise self._refuse(frame, f"frame {frame} cannot be read: permission denied",
                               "a frame file cannot be read: permission denied",
                               _FRAMES_DENIED.format(folder=self.path)) from None
        except OSError as e:  # (an I/O error of a failing disk)
            raise self._refuse(frame, f"frame {frame} cannot be read ({e.strerror or e})",
                               "a frame file cannot be read") from None
        if not data:
            raise self._refuse(frame, f"frame {frame} is an empty file", "a frame file is empty")
        return data

    def _size(self, frame: int) -> tuple[int, int]:
        """(height, width) of frame ``frame``: from its JPEG header, else (another format) decoded."""
        data = self._read(frame)
        size = _jpeg_header(data)[0] if data[:2] == b"\xff\xd8" else None
        if not (size and all(size)):  # (a height of 0: given later, by a DNL marker)
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), _IMREAD)
            if bgr is None:
                raise self._refuse(frame, f"frame {frame} is not an image OpenCV can read",
                                   "a frame file is not a readable image")
            size = bgr.shape[:2]
        return size

    def _load(self, frame: int) -> np.ndarray:
        """Frame ``frame`` (BGR)."""
        data = self._read(frame)
        if data[:2] == b"\xff\xd8" and _jpeg_header(data)[1]:  # (OpenCV fills the rest grey without a word)
            raise self._refuse(frame, f"frame {frame} is cut short (a truncated JPEG)", "a frame file is cut short",
                               _FRAMES_REDO + " (or its tar: a download cut short)")
        bgr, damage = _jpeg.decode(data)
        if bgr is None:
            raise self._refuse(frame, f"frame {frame} is not an image OpenCV can read",
                               "a frame file is not a readable image")
        if damage is not None:  # decoded, the rest of the picture grey: not a frame to learn from
            raise self._refuse(frame, f"frame {frame} is corrupt (libjpeg: {damage})", "a frame file is corrupt",
                               _FRAMES_REDO + " (or its tar: a damaged download or disk)")
        if bgr.shape[:2] != (self.height, self.width):  # one clip's frames are stacked
            seen = ", ".join(map(str, self.sized_by))
            raise self._refuse(frame, f"frame {frame} is {bgr.shape[1]}x{bgr.shape[0]}, the video's frames "
                               f"{self.width}x{self.height} (frame{'s' * (len(self.sized_by) > 1)} {seen})",
                               "a frame file has another size than the video's others",  # (any may be the odd one)
                               files=[self.path / frame_filename(f) for f in self.sized_by])
        return bgr

    def decode(self, frames: Sequence[int], **_: object) -> Iterator[tuple[int, np.ndarray]]:
        for f in _check_frames(frames, self.num_frames, self.path, self.record):
            yield f, self._load(f)

    def read_frames(self, frames: Sequence[int], short_side: int | None = None, **_: object) -> np.ndarray:
        out = _Output(frames)
        for f, bgr in self.decode(frames):
            out.put(f, to_rgb(bgr, short_side))
        return out.array


# A container's frame rate within this share of EPIC_100_video_info.csv's is the same video's (59.94 read as 60);
# beyond it the file is another encoding (25 fps for 59.94), whose frame numbers the timing rule would misread.
FPS_TOLERANCE = 0.02
FPS_MISMATCH = "the video's fps is not video_info's"  # its gist


def open_video(layout: "DatasetLayout", video_id: str, fps: float | None = None, *,
               record: str | None = None, narration_id: str | None = None) -> VideoReader | FramesFolderReader:
    """The MP4 of ``video_id`` if present, else its ``rgb_frames`` folder (fps from ``fps`` or video_info).

    ``record`` (e.g. the narration_id) is named in errors; the paths looked for are named when neither exists,
    and where ``narration_id`` (a segment of the video's, default ``record``) names another video that is there,
    the typo it suggests.
    """
    record = record or video_id
    mp4 = layout.video_path(video_id)
    if mp4 is not None:
        reader = VideoReader(mp4, record=record, frames_beside=layout.frames_dir(video_id))
        if fps and abs(reader.fps / fps - 1) > FPS_TOLERANCE:
            reader.close()
            raise VideoUnreadable(f"the file runs at {reader.fps:.2f} fps, EPIC_100_video_info.csv gives {fps:g}: its "
                                  "frames would be read at the wrong times", gist=FPS_MISMATCH,
                                  path=mp4, record=record,
                                  fix="use EPIC's original video (this is a copy encoded at another rate, and the "
                                      "frame numbers of EPIC's CSVs, hand-object boxes and poses count at the "
                                      "original's); then `leap extract --retry-errors` and `leap build-shards --force` "
                                      "read it")
        return reader
    frames, tar = layout.frames_dir(video_id), layout.frames_tar(video_id)
    if frames is not None and tar is None:  # (an empty folder beside the tar: the extraction not done)
        if fps is None:
            fps = layout.annotations().fps(video_id)
        return FramesFolderReader(frames, fps, record=record)
    if tar is not None:
        raise VideoUnreadable("rgb_frames not extracted from their tar", path=tar, record=record,
                              fix=f"extract them: {layout.untar_command(video_id)}")
    for p in layout.broken_links(video_id):  # (a dataset linked from storage that is not mounted, or moved)
        raise VideoUnreadable(f"the video is a link to {os.readlink(p)}, which is not there", path=p, record=record,
                              gist="the video is a link to a missing file",
                              fix="mount or restore what the link points to, or link the video again")
    typo = typo_hint(layout, video_id, narration_id or record)
    mp4 = layout.videos_folders(video_id)[0] / f"{video_id}.MP4"
    raise VideoUnreadable("no video file or rgb_frames folder", path=mp4, record=record,
                          fix=f"looked for {layout.looked_for(video_id)}: download the MP4 or the rgb_frames, or leave "
                              f"this video out{typo}")


def typo_hint(layout: "DatasetLayout", video_id: str, narration_id: str | None) -> str:
    """For a video that is not there: where its segment's narration id names another video that is (EPIC's ids
    are VIDEO_N), a hint of a typo in the row's video_id ("; ..."), else ""."""
    named = narration_id.rsplit("_", 1)[0] if narration_id and "_" in narration_id else None
    if not named or named == video_id or not (layout.video_path(named) or layout.frames_dir(named)):
        return ""
    return f"; the narration id {narration_id} names video {named}, which is there: a typo in the row's video_id?"


def decodable_frames(path: str | Path) -> tuple[int, int]:
    """(frames the container announces, frames that really decode) for an MP4.

    Decodes the last announced frame (one seek); when that fails, finds the last decodable frame by bisection
    (about log2(frames) seeks, each decoding at most one GOP). Raises ``VideoUnreadable`` when the file does not
    open at all.
    """
    with VideoReader(path) as probe:
        announced = probe.num_frames

    def ok(frame: int) -> bool:
        try:
            with VideoReader(path) as r:
                r.read_frames([frame])
            return True
        except LeapError:
            return False

    if ok(announced):
        return announced, announced
    lo, hi = 0, announced  # lo decodes (0: none known), hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return announced, lo
