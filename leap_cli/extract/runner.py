"""The ``leap extract`` stage: every segment of a split -> one descriptor record (JSONL, resumable).

Segments are taken video by video, so a video is opened once (per worker), and each segment is decoded once: the
frames every component and the frame cache will ask for are decoded in one pass (``_Video``), through the timing
rule (``leap_cli.epic.timing``). A segment whose window is not fully inside the decodable video gets its
frame-reading components ``unavailable`` with the reason (never a clamped or invented frame). Each record is
appended (flushed) as soon as it is finished, and fsynced at most every ``SYNC_EVERY`` seconds and at the end; a
re-run skips finished segments, ``retry_errors`` redoes those with a failed component or whose video file could
not be read (``_retry``), a record made from an MP4 whose size differs now (downloaded again) is made again
(``DatasetLayout.replaced_test``), and a record some parts of which an earlier leap made otherwise has only those
made again (``_parts_to_make``; its other components are read back from the output, ``_EarlierLines``). A component's
exception becomes ``status: error`` with a path-free message, and the run goes on. With ``workers > 1`` each segment is a task of its own (so Ctrl-C keeps every finished segment)
and the workers die with the parent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing as mp
import os
import re
import sys
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from leap_cli.common import (ShardSpec, new_pool, normalize_split, pool_results, pool_worker_ready, rerun,
                             start_pool_worker, start_worker, stop_pool, warn_small_address_space)
from leap_cli.epic.annotations import VIDEO_INFO, Segment, made_from_other_annotations
from leap_cli.epic.layout import DatasetLayout
from leap_cli.epic.timing import MP4, RGB_FRAMES, FrameClock
from leap_cli.errors import LeapError
from leap_cli.extract.base import (COMPONENTS, NO_CAMERA_POSES, NO_POSES, STATUSES, Component, FramesUnavailable,
                                   SegmentContext, error, outdated_parts, record_versions, unavailable)
from leap_cli.extract.cache import FrameCache
from leap_cli.extract.describe import render_clip
from leap_cli.extracted import EARLIER_FRAME_CACHE, config_path, read_settings
from leap_cli.io import JsonlAppender, OutputLock, atomic_write_json, remove_dead_temps
from leap_cli.outcome import Outcome
from leap_cli.published import missing_file_fix

log = logging.getLogger(__name__)

SYNC_EVERY = 1.0  # seconds between fsyncs of the output (one per record cost ~3 ms: a quarter of a 144p decode)


@dataclass(frozen=True)
class ExtractConfig:
    """Everything the stage needs; built by ``leap extract`` from its options."""

    data: Path
    split: str
    out: Path
    annotations: Path | None = None
    components: tuple[str, ...] = COMPONENTS
    workers: int = 1
    shard: ShardSpec = ShardSpec()
    retry_errors: bool = False
    limit: int | None = None  # first N segments after sharding (quick looks)
    hand_threshold: float = 0.5
    object_threshold: float = 0.5
    camera_frames: int = 9
    fov_deg: float = 90.0
    camera_source: str = "auto"  # auto (EPIC Fields or COLMAP poses where they exist, else visual odometry) | vo | colmap
    object_frames: int = 6
    detector_weights: Path | None = None
    detector_labels: Path | None = None
    detector_arch: str = "fasterrcnn_resnet50_fpn_v2"
    clip_weights: Path | None = None  # a local CLIP checkpoint, or "openai" (open_clip's own download)
    clip_arch: str = "ViT-B-16"
    audio_model: Path | None = None
    audio_labels: Path | None = None
    device: str = "cpu"
    # The frame cache (see extract/cache.py): build-shards' recognition frames, encoded from extract's own decode.
    frame_cache: Path | None = None  # None: no cache
    cache_frames: int = 16  # = build-shards --frames
    cache_short_side: int = 256  # = build-shards --short-side
    cache_quality: int = 90  # = build-shards --jpeg-quality

    def __post_init__(self):
        unknown = [c for c in self.components if c not in COMPONENTS]
        if unknown:
            raise LeapError(f"unknown {'component' if len(unknown) == 1 else 'components'} {', '.join(unknown)}",
                            fix=f"choose from {', '.join(COMPONENTS)}")
        if self.frame_cache is not None:  # (the CLI's own limits, for a config built through the API)
            for name, value, low, high in (("cache_frames", self.cache_frames, 1, None),
                                           ("cache_short_side", self.cache_short_side, 16, None),
                                           ("cache_quality", self.cache_quality, 1, 100)):
                if value < low or (high is not None and value > high):
                    raise LeapError(f"{name}={value} is out of range",
                                    fix=(f"use {low}..{high}" if high else f"use at least {low}") +
                                    ", or frame_cache=None for no frame cache")

    def check_options(self) -> None:
        """The choices and files the chosen components will use, checked before anything is written: with
        --force the output is started over first, and a typo in a weights path must not cost it."""
        if "camera" in self.components:
            from leap_cli.extract.camera import CameraComponent

            CameraComponent(source=self.camera_source)  # refuses an unknown --camera-source
        files = []  # (option, path, a name that is not a file)
        if "objects" in self.components and self.detector_weights is not None:
            files += [("--detector-weights", self.detector_weights, "coco"),
                      ("--detector-labels", self.detector_labels, None)]
        if {"objects", "hands"} & set(self.components):
            files.append(("--clip-weights", self.clip_weights, "openai"))
        if "audio" in self.components and self.audio_model is not None:
            files += [("--audio-model", self.audio_model, None), ("--audio-labels", self.audio_labels, None)]
        for option, path, name in files:
            if path is not None and str(path) != name and not Path(path).is_file():
                raise LeapError(f"{option}: " + ("a folder, not a weights file" if Path(path).is_dir()
                                                 else "file not found"), path=path,
                                fix=missing_file_fix(path, "give the path of a local file"
                                                     + (f", or {name!r}" if name else "")))
        if self.audio_labels is not None and self.audio_model is None:
            raise LeapError("--audio-labels is for --audio-model (the signal-processing classifier has its own "
                            "classes)", fix="add --audio-model CNN14.pth, or drop --audio-labels")
        if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", self.device):
            raise LeapError(f"--device {self.device!r} is not a device", fix="use --device cpu, cuda, cuda:N or mps")


ERROR_EXAMPLES = 3  # narration ids named per distinct error message in the summary


@dataclass
class ExtractSummary:
    out: Path
    segments: int = 0  # in the split (after sharding)
    done_before: int = 0
    retryable: int = 0  # records of earlier runs that --retry-errors would redo (a component failed, or its video)
    reannotated: int = 0  # records of earlier runs made from other annotations (``made_from_other_annotations``)
    reannotated_example: str = ""  # the first of them, with what differs
    # records of earlier runs made from an MP4 whose size differs now (``DatasetLayout.replaced_test``): made again
    replaced: int = 0
    replaced_files: list[Path] = field(default_factory=list)  # their files (MP4s, audio files), the first first
    replaced_example: str = ""  # the first file, with its sizes
    outdated: int = 0  # records of earlier runs with a part another leap made otherwise (``base.outdated``): made again
    outdated_example: str = ""  # the first of them, with its parts' numbers
    outdated_whole: int = 0  # of them, those made whole again (``_parts_to_make``: None)
    outdated_whole_why: Counter = field(default_factory=Counter)  # of those, how many for each cause (``WHOLE``)
    # of the others, how many records each component is made again in (those parts only), "text" those whose clip text
    # alone is rendered again
    outdated_made: Counter = field(default_factory=Counter)
    annotations: str = ""  # the split CSV's name, for the summary
    written: int = 0
    counts: dict[str, dict[str, int]] = field(default_factory=lambda: {c: {"ok": 0, "unavailable": 0, "error": 0}
                                                                       for c in COMPONENTS})
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    # one entry per distinct error message (a damaged file of a video fails two components of each of its
    # segments with one message): {"components": [...], "segments": [first narration ids], "count": n,
    # "n_segments": n}
    errors: dict[str, dict] = field(default_factory=dict)
    # "component: reason" (its numbers as N, so that the segments past one video's end count as one reason)
    unavailable: Counter = field(default_factory=Counter)  # -> segments
    # -> the first such reason, numbers and all, and its first detail: first in the split's order (``order``), not
    # in the order the records arrive (--workers finish them in any order), so that two runs say the same
    unavailable_first: dict[str, str] = field(default_factory=dict)
    unavailable_detail: dict[str, str] = field(default_factory=dict)
    order: dict[str, int] = field(default_factory=dict)  # narration id -> its place in the split (unknown: last)
    # (kind, reason key) -> the place of the segment kept
    _first_at: dict[tuple[str, str], int] = field(default_factory=dict, init=False, repr=False)
    outcome: Outcome = field(default_factory=lambda: Outcome("extract"))  # a record fails when a component errs
    wall: float = 0.0
    interrupted: bool = False

    @property
    def error_count(self) -> int:
        return sum(g["count"] for g in self.errors.values())

    def _error(self, narration_id: str, component: str, detail: str) -> None:
        g = self.errors.setdefault(detail, {"components": [], "segments": [], "count": 0, "n_segments": 0,
                                            "last": None})
        g["count"] += 1
        if component not in g["components"]:
            g["components"].append(component)
        if g["last"] != narration_id:  # a record's components come one after another
            g["n_segments"] += 1
            g["last"] = narration_id
            g["segments"] = sorted(g["segments"] + [narration_id], key=self._at)[:ERROR_EXAMPLES]  # (split order)

    def _at(self, narration_id: str) -> int:
        return self.order.get(narration_id, len(self.order))

    def _keep_first(self, kind: str, key: str, text: str, narration_id: str) -> None:
        """The reason (``kind`` "reason") or detail ("detail") of ``key`` is ``text`` where it has none yet or holds
        a segment's that comes later in the split."""
        kept = self.unavailable_first if kind == "reason" else self.unavailable_detail
        at = self._at(narration_id)
        if key not in kept or at < self._first_at[kind, key]:
            kept[key], self._first_at[kind, key] = text, at

    def add(self, record: dict, timings: dict[str, float], made: tuple[str, ...] | None = None) -> None:
        """Count a record written now; ``made``: the components made now where the others were kept (the part
        remake of an outdated record), whose statuses alone are counted."""
        self.written += 1
        self.outcome.attempt()
        causes = []
        for name, comp in record["components"].items():
            if made is not None and name not in made:
                continue
            self.counts[name][comp["status"]] += 1
            if comp["status"] == "error":
                msg = comp["data"].get("error", "")
                self._error(record["narration_id"], name, comp["data"].get("detail", msg))
                causes.append(f"{name}: {msg}")
            elif comp["status"] == "unavailable":
                reason = f"{name}: {comp['data'].get('reason', '')}"
                key = _NUMBER.sub("N", reason)
                self.unavailable[key] += 1
                self._keep_first("reason", key, reason, record["narration_id"])
                if "detail" in comp["data"]:
                    self._keep_first("detail", key, comp["data"]["detail"], record["narration_id"])
        if causes:
            self.outcome.fail(causes[0])
        for name, sec in timings.items():
            self.seconds[name] += sec


_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])")  # a number on its own (not the 100 of EPIC_100_...)


def build_components(cfg: ExtractConfig) -> list[Component]:
    """The chosen components, models loaded once (per worker). Each component's module is imported only when it
    is chosen, so a spawned worker pays for no import it does not use."""
    namer = None
    if cfg.clip_weights is not None and {"objects", "hands"} & set(cfg.components):
        from leap_cli.extract.naming import ClipNamer
        namer = ClipNamer(cfg.clip_weights, arch=cfg.clip_arch, device=cfg.device,
                          cache_dir=Path(cfg.out).parent / "cache")
    out: list[Component] = []
    for name in COMPONENTS:
        if name not in cfg.components:
            continue
        if name == "narration":
            from leap_cli.extract.narration import NarrationComponent

            out.append(NarrationComponent())
        elif name == "audio":
            from leap_cli.extract.audio import AudioComponent

            model = None
            if cfg.audio_model is not None:
                from leap_cli.extract.audio_cnn14 import AudioTagger
                model = AudioTagger(cfg.audio_model, cfg.audio_labels, device=cfg.device)
            out.append(AudioComponent(model))
        elif name == "camera":
            from leap_cli.extract.camera import CameraComponent

            out.append(CameraComponent(frames=cfg.camera_frames, fov_deg=cfg.fov_deg, source=cfg.camera_source))
        elif name == "objects":
            from leap_cli.extract.objects import FasterRCNNDetector, ObjectsComponent

            det = None
            if cfg.detector_weights is not None:
                det = FasterRCNNDetector(cfg.detector_weights, labels=cfg.detector_labels, arch=cfg.detector_arch,
                                         score_threshold=cfg.object_threshold, device=cfg.device,
                                         keep_unmapped=namer is not None)
            out.append(ObjectsComponent(det, frames=cfg.object_frames, score_threshold=cfg.object_threshold,
                                        hand_threshold=cfg.hand_threshold, namer=namer))
        elif name == "hands":
            from leap_cli.extract.hands import HandsComponent

            out.append(HandsComponent(hand_threshold=cfg.hand_threshold, object_threshold=cfg.object_threshold,
                                      namer=namer))
    return out


def _plain(x):
    """numpy scalars/arrays -> JSON types."""
    t = type(x)
    if t is float or t is str or t is int or t is bool or x is None:  # most of a record: no isinstance chain
        return x
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


def _refcounts(images: dict) -> list[tuple[np.ndarray, int]]:
    """Each value of ``images`` with its reference count as counted here (compare with ``_ALONE``)."""
    return [(im, sys.getrefcount(im)) for im in images.values()]


_ALONE = _refcounts({0: np.empty(0)})[0][1]  # the count of an image only its dict holds (measured, not assumed)


class _Video:
    """One video's frames for the segments of a worker: opened on the first frame request, checked against the
    timing rule, decoded once per segment.

    Before a segment's components run, ``plan`` lists every (frame, short side) they and the frame cache will
    want; the first request then decodes all of them in one pass (``reader.decode``) and later requests are
    served from memory. A segment whose window is not fully inside the decodable video, a truncated or corrupt
    file, or a video that is not there raise ``FramesUnavailable`` (with a reason that names no path): no frame
    is ever clamped or invented.
    """

    def __init__(self, layout: DatasetLayout, video_id: str, fps: float | None, duration: float | None = None):
        self.layout, self.video_id = layout, video_id
        mp4 = layout.video_path(video_id)
        kind = MP4 if mp4 is not None else RGB_FRAMES
        self.mp4_size = layout.mp4_size(video_id)  # what a record made from it keeps (``made_from``): one stat
        self.asked = False  # whether its frames (or header) were asked for: ``_open`` was called
        self._audio_size: int | None | bool = False  # its audio file's size (None: no file; False: not looked)
        self.reader = None
        self.failure: FramesUnavailable | None = None  # raised again by every later request
        if fps is None:  # not in EPIC_100_video_info.csv: an MP4 says its own fps; a frames folder cannot
            if kind == MP4:
                try:
                    self._open(video_id)
                    fps = self.reader.fps
                except FramesUnavailable:
                    pass
            elif layout.frames_dir(video_id) is not None:
                self.failure = FramesUnavailable("no fps for the video in EPIC_100_video_info.csv", video=False)
        self.fps_known = bool(fps)  # (EPIC's frame numbers, the detection and pose files', cannot be timed without)
        self.fps = fps or 50.0  # 50 only stands in where no frame can be read anyway
        if duration is None:  # video_info's length: a file shorter than it is cut short (FrameClock.cut_short)
            try:
                info = layout.annotations().video_info.get(video_id)
            except LeapError:
                info = None
            duration = info.duration if info else None
        self.clock = FrameClock(kind, self.fps, self.reader.num_frames if self.reader else None, duration)
        self.cache: dict = {}  # per-video state shared by components (ctx.video_cache)
        self._memo: dict[tuple[int, int | None], np.ndarray] = {}
        self._plan: dict[int, set[int | None]] = {}
        # the last segment's images that nothing holds any more, by short side (None: full size), free to decode
        # and resize into
        self._spare: dict[int | None, list[np.ndarray]] = {}
        self._full: tuple[int, int, int] | None = None  # the shape of a full-size image
        self._segment: Segment | None = None
        self.decoded = 0  # frames decoded (for the benchmark)
        self.decode_seconds = 0.0  # wall time spent decoding (the summary shows it apart from the components)

    def _open(self, record: str) -> None:
        from leap_cli.media.video import FPS_MISMATCH, VideoUnreadable, open_video

        self.asked = True
        if self.failure is not None:
            raise FramesUnavailable(self.failure.reason, self.failure.video, self.failure.detail)
        if self.reader is None:
            try:
                # (a failure to open is the video's, kept for its every segment: named by the video, not by the
                # segment that asked first)
                self.reader = open_video(self.layout, self.video_id, getattr(self, "fps", None), record=self.video_id,
                                         narration_id=record)
            except VideoUnreadable as e:
                self.failure = FramesUnavailable(e.message, detail=e.one_line())
                # (said once per video; a video at another rate than video_info's is said even where no component
                # reads its frames: the frame cache, and so build-shards, leave it out)
                (log.warning if e.gist == FPS_MISMATCH else log.info)("%s", e.one_line())
                raise FramesUnavailable(e.message, detail=e.one_line()) from None
            if hasattr(self, "clock"):
                self.clock = self.clock.with_frames(self.reader.num_frames)

    def made_from(self, comps: dict[str, dict]) -> int | None:
        """The MP4's size (bytes) where a segment's ``comps`` were made from it (its frames or header were asked for,
        or the audio read from its track), else None (no MP4; an rgb_frames folder: no single file to stat)."""
        if self.mp4_size is None:
            return None
        return self.mp4_size if self.asked or ("audio" in comps and self.audio_from(comps) is None) else None

    def audio_from(self, comps: dict[str, dict]) -> int | None:
        """The size (bytes) of the audio file a segment's audio was read from (``comps`` holds it; the file goes
        before the MP4's track: ``media.audio.audio_source``), else None. One stat per video."""
        if "audio" not in comps:
            return None
        if self._audio_size is False:
            self._audio_size = self.layout.audio_size(self.video_id)
        return self._audio_size

    def _where(self, reason: str, seg: Segment) -> str:
        """``reason`` with the file and the segment (the component's detail): the summary's first line of a cut
        file named no video, so a user of hundreds could not tell which one to download again."""
        return LeapError(reason, path=getattr(self.reader, "path", None), record=seg.narration_id).one_line()

    def size(self, seg: Segment) -> tuple[int, int]:
        """(width, height) of the video's frames, from its header (the reader is opened, nothing decoded)."""
        self._open(seg.narration_id)
        return self.reader.width, self.reader.height

    def start_segment(self, seg: Segment, plan: dict[int, set[int | None]]) -> None:
        """Forget the last segment's frames; those of its images that nothing else holds any more (``_ALONE``: a
        component that kept one keeps it intact) are decoded (``VideoReader.decode``'s ``into``) or resized into
        again."""
        old, self._segment, self._plan, self._memo = self._memo, seg, plan, {}
        self._spare = {}
        for (_, side), (im, refs) in zip(old, _refcounts(old)):
            if refs == _ALONE and (side is not None or im.shape == self._full):
                self._spare.setdefault(side, []).append(im)

    def _buffer(self, side: int | None = None) -> np.ndarray | None:
        spare = self._spare.get(side)
        return spare.pop() if spare else None

    def _decode(self, wanted: dict[int, set[int | None]], record: str) -> None:
        from leap_cli.media.video import VideoUnreadable, resize_short_side

        t0 = time.perf_counter()
        self.reader.record = record  # its errors name the segment being read (not the first the video served)
        try:
            self._full = (self.reader.height, self.reader.width, 3)
            for f, bgr in self.reader.decode(sorted(wanted), into=self._buffer):
                self.decoded += 1
                for side in wanted[f]:  # BGR, as decoded: converted on reading
                    self._memo[(f, side)] = resize_short_side(bgr, side, self._buffer(side) if side else None)
                # only shrunk: the next frame is decoded into it (no new page faults), where no free one is left
                # (a frames folder's reader decodes into none: one image is kept, not the segment's)
                if not self._spare.get(None) and all(self._memo[(f, side)] is not bgr for side in wanted[f]):
                    self._spare[None] = [bgr]
        except VideoUnreadable as e:
            log.info("%s", e.one_line())
            raise FramesUnavailable(e.message, detail=e.one_line()) from None
        finally:
            self.decode_seconds += time.perf_counter() - t0

    def read(self, numbers: list[int], short_side: int | None, seg: Segment) -> np.ndarray:
        """``numbers`` at ``short_side`` as RGB ``[T, H, W, 3]`` (``SegmentContext.read_frames``)."""
        import cv2

        images = self.images(numbers, short_side, seg)
        out = np.empty((len(images), *images[0].shape), np.uint8)
        for i, im in enumerate(images):
            cv2.cvtColor(im, cv2.COLOR_BGR2RGB, dst=out[i])  # converted straight into the array: no np.stack
        return out

    def images(self, numbers: list[int], short_side: int | None, seg: Segment) -> list[np.ndarray]:
        """``numbers`` at ``short_side`` as the decoded BGR images, not copied (``SegmentContext.read_images``)."""
        self._open(seg.narration_id)
        reason = self.clock.check(*self.clock.segment_span(seg))  # the whole window must be decodable
        if reason:  # past the end the file announces: the annotation and the file disagree, which is not news,
            # unless the file is shorter than video_info says (a truncated download: --retry-errors once replaced)
            raise FramesUnavailable(reason, video=self.clock.cut_short(), detail=self._where(reason, seg))
        side = short_side or None
        bad = [n for n in numbers if n < 1 or n > self.clock.num_frames]
        if bad:
            why = self.clock.check(min(numbers), max(numbers)) or "frames outside the video"
            raise FramesUnavailable(why, video=self.clock.cut_short(), detail=self._where(why, seg))
        missing = {n for n in numbers if (n, side) not in self._memo}
        if missing:
            wanted: dict[int, set[int | None]] = {n: {side} for n in missing}
            if seg is self._segment and self._plan:  # the first request decodes everything planned, in one pass
                for f, sides in self._plan.items():
                    if 1 <= f <= self.clock.num_frames:
                        wanted.setdefault(f, set()).update(s for s in sides if (f, s) not in self._memo)
                self._plan = {}
            self._decode(wanted, seg.narration_id)
        return [self._memo[(n, side)] for n in numbers]

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None


def _planned_frames(ctx: SegmentContext, components: list[Component], cache: "FrameCache | None"
                    ) -> dict[int, set[int | None]]:
    """Every (frame, short side) the components and the frame cache will ask for in this segment."""
    plan: dict[int, set[int | None]] = {}
    for comp in components:
        try:
            wanted = comp.frames_wanted(ctx)
        except FramesUnavailable:  # the video cannot be opened: its reads will say so
            wanted = []
        for numbers, side in wanted:
            for n in numbers:
                plan.setdefault(n, set()).add(side or None)
    if cache is not None:
        numbers = cache.frames_of(ctx)
        if not cache.holds(cache.path(ctx.segment.video_id, ctx.segment.narration_id), numbers):
            try:
                side = ctx.side_at_most(cache.short_side)  # never above the source's size
            except FramesUnavailable:
                side = None
            for n in numbers:
                plan.setdefault(n, set()).add(side)
    return plan


@contextlib.contextmanager
def _cache_writes(cache: "FrameCache"):
    """A full disk (or quota, or file-size limit) or a folder not ours under the frame cache: the cache is
    extract's gift to build-shards, not its output, so the way on without it is named too."""
    import errno

    try:
        yield
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            first = "free space there, or give --frame-cache a folder on another disk"
        elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):  # (another's work directory, a read-only one)
            first = "give --frame-cache a folder you can write"
        else:
            raise
        raise LeapError(f"{e.strerror or os.strerror(e.errno)} (writing extract's frame cache)",
                        path=e.filename or cache.root,
                        fix=f"{first}, or --frame-cache none (the cache only spares build-shards a decode of the "
                            f"videos), then run {rerun('the same command again')}: the finished records are kept"
                        ) from None


def iter_video(layout: DatasetLayout, segments: list[Segment], components: list[Component], fps: float,
               cache: "FrameCache | None" = None, made: dict[str, tuple[str, ...]] | None = None):
    """``describe_segment`` of each segment of one video, in order; ``made``: narration id -> the components to make
    of that segment (absent: all)."""
    video = _Video(layout, segments[0].video_id, fps)
    try:
        for seg in segments:
            yield describe_segment(video, seg, components, cache, (made or {}).get(seg.narration_id))
    finally:
        video.close()


def describe_segment(video: _Video, seg: Segment, components: list[Component],
                     cache: "FrameCache | None" = None, made: tuple[str, ...] | None = None
                     ) -> tuple[dict, dict[str, float]]:
    """One segment's record and per-component seconds. Components read frames through ``video`` (one decode
    for all of them); ``cache`` (build-shards' recognition frames) is filled from the same decode. ``made``: only
    these components (a part remake, ``_parts_to_make``): the record holds them alone, and the frame cache is
    filled only where one of them decodes frames anyway (a missing entry is otherwise left to build-shards'
    decode, as a kept record's is)."""
    from leap_cli.media.audio import read_segment_audio

    if made is not None:
        components = [c for c in components if c.name in made]
        if not any(getattr(c, "needs_frames", False) for c in components):
            cache = None
    layout = video.layout
    if cache is not None or any(getattr(c, "needs_frames", False) for c in components):
        # opened before the windows are planned: the clock then counts the frames that decode, and a stop less than
        # a frame past the video's end ends at its last frame (the video's first segment asked one frame past it)
        with contextlib.suppress(FramesUnavailable):
            video._open(seg.narration_id)
    ctx = SegmentContext(
        layout=layout, segment=seg, fps=video.fps, fps_known=video.fps_known, video_cache=video.cache,
        clock=video.clock,
        read_frames=lambda nums, side: video.read(list(nums), side, seg),
        read_images=lambda nums, side: video.images(list(nums), side, seg),
        read_audio=lambda sr: read_segment_audio(
            layout, seg.video_id, seg.start, max(seg.stop, seg.start + 0.05), sr, record=seg.narration_id),
        frame_size=lambda: video.size(seg))
    if cache is not None and "frame-cache source" not in video.cache:  # once per video, before its entries are read
        with _cache_writes(cache):  # (its folder or source.json: the first write into the cache)
            cache.claim(seg.video_id, layout.source_stat(seg.video_id), frames=layout.video_path(seg.video_id) is None)
        video.cache["frame-cache source"] = True
    video.start_segment(seg, _planned_frames(ctx, components, cache))
    comps, timings = {}, {}
    decode0 = video.decode_seconds
    for comp in components:
        t0, d0 = time.perf_counter(), video.decode_seconds
        try:
            comps[comp.name] = _plain(comp.describe(ctx))
        except FramesUnavailable as e:
            comps[comp.name] = unavailable(getattr(comp, "source", "video"), e.reason, "video" if e.video else None,
                                           e.detail)
        except Exception as e:  # noqa: BLE001 - one component's failure must not stop the run
            if not isinstance(e, LeapError):
                log.warning("%s %s failed", seg.narration_id, comp.name, exc_info=True)
            comps[comp.name] = error(getattr(comp, "source", comp.name), e)
        timings[comp.name] = time.perf_counter() - t0 - (video.decode_seconds - d0)
    if cache is not None:
        t0, d0 = time.perf_counter(), video.decode_seconds
        with _cache_writes(cache):
            cache.store(ctx, seg)
        timings["frame-cache"] = time.perf_counter() - t0 - (video.decode_seconds - d0)
    timings["decode"] = video.decode_seconds - decode0
    return segment_record(seg, comps, video.made_from(comps), video.audio_from(comps)), timings


def segment_record(seg: Segment, comps: dict[str, dict], video_size: int | None = None,
                   audio_size: int | None = None) -> dict:
    """The record of ``seg`` holding ``comps``, its clip text and versions; ``video_size``, ``audio_size``: those of
    the MP4 and the audio file they were made from (``_Video.made_from``, ``_Video.audio_from``; a rerun makes the
    record again once a file's size differs: ``DatasetLayout.replaced_test``)."""
    return {"narration_id": seg.narration_id, "video_id": seg.video_id, "start": round(seg.start, 3),
            "stop": round(seg.stop, 3), "start_frame": int(seg.start_frame), "stop_frame": int(seg.stop_frame),
            "annotation_hash": seg.annotation_hash, **({} if video_size is None else {"video_size": video_size}),
            **({} if audio_size is None else {"audio_size": audio_size}),
            "components": comps, "text": render_clip(seg.start, seg.stop, comps), "versions": record_versions(comps)}


# --- worker processes ---------------------------------------------------------------------------------------
# Each task is one segment, so the parent writes every finished segment as it arrives (Ctrl-C keeps them all).
# A worker keeps its last videos open, so consecutive segments of a video do not reopen it.
_W: dict = {}
_OPEN_VIDEOS = 2


def _worker_init(cfg: ExtractConfig, parent: int) -> None:
    start_worker(parent)
    import cv2

    import leap_cli.media.video as video

    cv2.setNumThreads(1)  # workers are the parallelism
    video.DECODE_THREADS = 1
    if cfg.detector_weights is not None or cfg.audio_model is not None or cfg.clip_weights is not None:
        import torch

        torch.set_num_threads(1)
    _W["cfg"] = cfg
    _W["layout"] = DatasetLayout.open(cfg.data, cfg.annotations)
    _W["components"] = build_components(cfg)
    _W["cache"] = FrameCache.from_config(cfg)
    _W["videos"] = {}


def _worker_segment(job: tuple[Segment, float | None, tuple[str, ...] | None]) -> tuple[dict, dict[str, float]]:
    pool_worker_ready()
    seg, fps, made = job
    videos: dict[str, _Video] = _W["videos"]
    video = videos.pop(seg.video_id, None) or _Video(_W["layout"], seg.video_id, fps)
    videos[seg.video_id] = video  # most recent last
    while len(videos) > _OPEN_VIDEOS:
        videos.pop(next(iter(videos))).close()
    return describe_segment(video, seg, _W["components"], _W["cache"], made)


@contextmanager
def _spawn_without_main():
    """While workers are spawned, hide the parent's ``__main__`` (the ``leap`` console script, a benchmark) so
    a spawned worker does not import it again: a worker needs only this module (its functions are pickled by
    reference), and re-running ``leap``'s script imports the whole CLI (typer, rich: ~0.2 s CPU per worker)."""
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main is not None and k in main.__dict__}
    if main is not None:
        main.__dict__.pop("__file__", None)
        main.__spec__ = None  # multiprocessing reads it: None and no __file__ mean nothing to import
    try:
        yield
    finally:
        if main is not None:
            main.__dict__.pop("__spec__", None)
            main.__dict__.update(saved)


@contextmanager
def _opencv_one_thread():
    """OpenCV on one thread while extract runs in this process, as in a worker: on the camera's small frames
    (odometry, corners) its thread pool costs more CPU than it saves (~20% of the odometry's CPU)."""
    import cv2

    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def _retry(component: dict) -> bool:
    """A component ``--retry-errors`` redoes: failed, or unavailable because of the video file (a re-downloaded
    file may now be read); not one unavailable for a cause a new file does not change (a window past the end the
    file announces). Those made without a file that is placed since: ``retry_test``."""
    status = component.get("status")
    data = component.get("data")
    return status == "error" or (status == "unavailable" and isinstance(data, dict) and data.get("cause") == "video")


def retry_test(layout: DatasetLayout) -> Callable[[dict], bool]:
    """Whether ``--retry-errors`` redoes a record (the output file's own scan asks it, once per record): a component
    ``_retry`` redoes, a video's audio that nothing held (an rgb_frames folder, an MP4 without a track) once
    an audio file is placed or an MP4 with a track, or a component made without a published file (hand-object
    boxes, detections, poses) once it is placed (looked for once per video)."""
    from leap_cli.media.audio import NO_AUDIO_FILE, has_audio_track

    placed: dict[str, bool] = {}

    def audio_placed(record: dict) -> bool:
        audio = (record.get("components") or {}).get("audio")
        data = audio.get("data") if isinstance(audio, dict) else None
        if not isinstance(data, dict) or (data.get("cause") != NO_AUDIO_FILE and not (
                "cause" not in data and data.get("reason") == "the video has no audio track")):  # (leap before
            return False  # 2026-12-04 gave an MP4 without a track no cause)
        video_id = str(record.get("video_id"))
        if video_id not in placed:
            mp4 = layout.video_path(video_id)
            placed[video_id] = layout.audio_path(video_id) is not None or (mp4 is not None and has_audio_track(mp4))
        return placed[video_id]

    there: dict[tuple[str, str], bool] = {}

    def file_there(kind: str, video_id: str) -> bool:  # (looked for once per video)
        if (kind, video_id) not in there:
            find = {"hand-objects": layout.hand_objects_path, "detections": layout.object_detections_path,
                    "poses": layout.poses_path}[kind]
            there[kind, video_id] = find(video_id) is not None
        return there[kind, video_id]

    def file_placed(record: dict) -> bool:
        """A component made without a file that is there now: hands without hand-object boxes (or whose contacts
        were named without labelled detections, there now), objects without any detection file (or from the
        unlabelled hand-object boxes, where labelled detections are there now), the camera by odometry (or none)
        for want of poses."""
        comps, video_id = record.get("components") or {}, str(record.get("video_id"))
        hands, objects, camera = (c if isinstance(c := comps.get(n), dict) else {}
                                  for n in ("hands", "objects", "camera"))
        if hands.get("status") == "unavailable" and hands.get("source") == "none" \
                and file_there("hand-objects", video_id):
            return True
        if isinstance(hands.get("data"), dict) and hands["data"].get("named_without_detections") \
                and file_there("detections", video_id):
            return True
        source = str(objects.get("source") or "")
        if objects.get("status") == "unavailable" and source == "none" and (
                file_there("detections", video_id) or file_there("hand-objects", video_id)):
            return True
        if source.startswith("hand-objects:") and file_there("detections", video_id):
            return True
        data = camera.get("data") if isinstance(camera.get("data"), dict) else {}
        no_poses = data.get("poses_skipped") == NO_POSES or (
            camera.get("status") == "unavailable" and data.get("reason") == NO_CAMERA_POSES)
        return no_poses and file_there("poses", video_id)

    def to_retry(record: dict) -> bool:
        return any(isinstance(c, dict) and _retry(c) for c in (record.get("components") or {}).values()) \
            or audio_placed(record) or file_placed(record)

    return to_retry


def run_extract(cfg: ExtractConfig, *, on_start: Callable[[int, int], None] | None = None,
                on_record: Callable[[dict], None] | None = None, lock: OutputLock | None = None) -> ExtractSummary:
    """Run the stage. ``on_start(total, already_done)`` and ``on_record(record)`` feed a progress bar; ``lock``: the
    output's lock, held since its settings were checked (the appender takes it over)."""
    split = normalize_split(cfg.split)
    layout = DatasetLayout.open(cfg.data, cfg.annotations)
    ann = layout.annotations()
    segments = cfg.shard.select(ann.segments(split), key=lambda s: s.video_id)
    if cfg.limit is not None:
        segments = segments[:cfg.limit]
    if (ann.folder / VIDEO_INFO).exists():  # a row that cannot be parsed: one line naming it before any work, as
        _ = ann.video_info  # in build-shards and info (it was "no fps for VIDEO in the video info" of every video)
    summary = ExtractSummary(out=cfg.out, segments=len(segments), annotations=ann.split_path(split).name,
                             order={s.narration_id: i for i, s in enumerate(segments)})
    for note in ann.row_notes(segments):
        log.warning("%s: %s", ann.split_path(split).name, note)
    atomic_write_json(config_path(cfg.out), _settings_file(cfg),
                      if_changed=True)  # (a rerun with the same options leaves it untouched)
    by_id = {s.narration_id: s for s in segments}
    reannotated: dict[str, str] = {}  # narration id -> what differs
    remade: dict[str, str] = {}  # narration id -> its parts another leap made otherwise (``outdated``)
    parts: dict[str, tuple[str, ...]] = {}  # of them, those made in part: narration id -> the components made
    whole: dict[str, str] = {}  # the others, made whole: narration id -> why (a ``WHOLE`` key)
    kept_retry: set[str] = set()  # of those, the ones whose kept components --retry-errors would redo
    replaced: dict[str, tuple[Path, int, int]] = {}  # narration id -> (file, size kept, size now): made again
    to_retry = retry_test(layout)
    cache = FrameCache.from_config(cfg)
    # (redo runs as the output is opened, before any video's cache is claimed anew: the cache tells the size an earlier
    # leap's records were made from, and its note of a claim's replaced source tells it after a kill)
    video_replaced = layout.replaced_test(cache.made_from_size if cache is not None else None)

    def redo(record: dict) -> bool:  # asked of each key's lines in turn: the last one decides
        key = record.get("narration_id")
        seg = by_id.get(key)
        parts.pop(key, None)
        whole.pop(key, None)
        kept_retry.discard(key)
        if seg is not None and (why := made_from_other_annotations(record, seg)):
            reannotated[seg.narration_id] = why
            remade.pop(key, None)  # (an earlier line of the key an earlier leap made: this one decides)
            replaced.pop(key, None)
            return True
        reannotated.pop(key, None)
        if seg is not None and (files := video_replaced(record, seg)):  # (made whole: every part read the old file)
            replaced[seg.narration_id] = files
            remade.pop(key, None)
            return True
        replaced.pop(key, None)
        if seg is not None and (old := outdated_parts(record)):
            remade[seg.narration_id] = ", ".join(f"{k} {was} -> {now}" for k, (was, now) in old.items())
            retried = cfg.retry_errors and to_retry(record)
            made = None if retried else _parts_to_make(record, old, cfg)
            if made is None:
                whole[seg.narration_id] = "retry" if retried else \
                    "later" if any(was > now for was, now in old.values()) else "kept"
            else:
                parts[seg.narration_id] = made
                kept = {k: v for k, v in record["components"].items() if k not in made}
                if not cfg.retry_errors and to_retry({**record, "components": kept}):
                    kept_retry.add(seg.narration_id)
            return True
        remade.pop(key, None)
        return cfg.retry_errors and to_retry(record)

    t_start = time.perf_counter()
    if cache is not None:  # (a killed worker's temp file in a video folder that this run does not write again)
        for vid in dict.fromkeys(s.video_id for s in segments):
            remove_dead_temps(cache.root / vid)
    with JsonlAppender(cfg.out, replace_keys=redo, sync_every=SYNC_EVERY,
                       count=None if cfg.retry_errors else to_retry, lock=lock) as appender, \
            _EarlierLines(cfg.out, set(parts)) as earlier:
        todo = [s for s in segments if s.narration_id not in appender]
        summary.done_before = len(segments) - len(todo)
        summary.reannotated = len(reannotated)
        summary.reannotated_example = next((f"{k}: {why}" for k, why in reannotated.items()), "")
        summary.replaced = len(replaced)
        videos = {file: (was, now) for file, was, now in replaced.values()}
        summary.replaced_files = list(videos)
        summary.replaced_example = next((f"{file}: size {was} -> {now} bytes" for file, (was, now) in videos.items()),
                                        "")
        summary.outdated = len(remade)
        summary.outdated_example = next((f"{k}: {why}" for k, why in remade.items()), "")
        summary.outdated_whole = len(whole)
        summary.outdated_whole_why = Counter(whole.values())
        summary.outdated_made = Counter(c for made in parts.values() for c in (made or ("text",)))
        made_again = set(reannotated) | set(replaced) | set(remade)
        summary.retryable = len(((appender.counted - made_again) | kept_retry).intersection(
            s.narration_id for s in segments))  # (--limit, --shard; those made again now for other annotations, a
        # replaced video or another leap's parts are not left to --retry-errors, but for the parts a part remake keeps)
        if on_start:
            on_start(len(segments), summary.done_before)

        def take(record: dict, timings: dict[str, float]) -> None:
            made = parts.get(record["narration_id"])
            if made is not None:  # the outdated parts made now, the record's others as an earlier run wrote them
                seg = by_id[record["narration_id"]]
                old = earlier.get(seg.narration_id)
                record = segment_record(seg, _merged(old, record["components"]),
                                        old.get("video_size", record.get("video_size")),
                                        old.get("audio_size", record.get("audio_size")))
            if appender.write(record):
                summary.add(record, timings, made)
                if on_record:
                    on_record(record)

        try:
            for s in todo:  # only the clip text outdated: rendered again from the record's components, nothing run
                if parts.get(s.narration_id) == ():
                    take(segment_record(s, {}), {})
            todo = [s for s in todo if parts.get(s.narration_id) != ()]
            by_video: dict[str, list[Segment]] = {}
            for s in todo:
                by_video.setdefault(s.video_id, []).append(s)
            fps = {vid: _fps(ann, vid) for vid in by_video}
            # the components this run makes: a resume that makes only some parts again loads no other's model
            wanted = set(cfg.components) if any(s.narration_id not in parts for s in todo) else \
                {c for s in todo for c in parts[s.narration_id]}
            run_cfg = replace(cfg, components=tuple(c for c in cfg.components if c in wanted))
            if todo and (cfg.workers <= 1 or len(todo) <= 1):
                components = build_components(run_cfg)
                try:
                    with _opencv_one_thread():
                        for vid, segs in by_video.items():
                            for record, timings in iter_video(layout, segs, components, fps[vid], cache, parts):
                                take(record, timings)
                finally:
                    for c in components:
                        c.close()
            elif todo:
                ctx = mp.get_context("spawn")
                warn_small_address_space(min(cfg.workers, len(todo)))
                with _spawn_without_main():
                    pool = new_pool(ctx, min(cfg.workers, len(todo)), start_pool_worker,
                                    (_worker_init, run_cfg, os.getpid()))
                try:
                    # One task per segment, video by video (a worker keeps its last videos open); each finished
                    # segment is written as it arrives.
                    jobs = [(s, fps[vid], parts.get(s.narration_id)) for vid, segs in by_video.items() for s in segs]
                    for record, timings in pool_results(pool, pool.imap_unordered(_worker_segment, jobs,
                                                                                  chunksize=1)):
                        take(record, timings)
                    pool.close()
                    pool.join()
                except BaseException:
                    stop_pool(pool)
                    raise
        except KeyboardInterrupt:  # finished records are on disk; the caller reports and exits
            summary.interrupted = True
        finally:
            summary.wall = time.perf_counter() - t_start
    return summary


# Why an outdated record is made whole again (``_parts_to_make`` None, or --retry-errors), as the note says it
WHOLE = {"later": "a later leap's part in them", "kept": "a component to keep that cannot be read as it is",
         "retry": "a failure --retry-errors redoes"}


def _parts_to_make(record: dict, old: dict[str, tuple[int, int]], cfg: ExtractConfig) -> tuple[str, ...] | None:
    """The components a resume makes again of ``record``, whose parts ``old`` (``outdated_parts``) another leap made:
    the outdated ones, and with them those whose output reads theirs (with ``--detector-weights`` the hands name
    their contacts by the boxes the objects' detector found in the segment: the two are made together); () where
    only the clip text is outdated. The record's other components are kept and its text rendered again from them
    all. None: the record is made whole again: a part a later leap made (this leap cannot tell what else it wrote
    otherwise), components other than this run's (``--components``), or a kept one that cannot be rendered."""
    if any(was > now for was, now in old.values()):
        return None
    comps = record.get("components")
    if not isinstance(comps, dict) or set(comps) != set(cfg.components):
        return None
    made = {p for p in old if p in comps}
    if cfg.detector_weights is not None and made & {"objects", "hands"}:
        made |= {"objects", "hands"} & set(comps)
    kept = {k: v for k, v in comps.items() if k not in made}
    if not all(isinstance(c, dict) and c.get("status") in STATUSES for c in kept.values()):
        return None
    try:
        render_clip(0.0, 1.0, kept)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return tuple(c for c in COMPONENTS if c in made)


def _merged(old: dict, made: dict[str, dict]) -> dict[str, dict]:
    """The components of record ``old`` with those ``made`` now in their place, in ``COMPONENTS`` order."""
    comps = {**old["components"], **made}
    return {c: comps[c] for c in COMPONENTS if c in comps}


class _EarlierLines:
    """The records of ``keys`` in a JSONL output as the appender opened it (one line each), read again when asked:
    only their byte offsets are kept (a day's records would not fit in memory); the appender drops those lines
    only when it closes."""

    _KEY = re.compile(rb'^\{"narration_id": ("(?:[^"\\]|\\.)*")')  # (how json_line writes a record's start)

    def __init__(self, path: Path, keys: set[str]):
        self._at: dict[str, int] = {}
        self._f = open(path, "rb") if keys else None
        start = 0
        for raw in self._f or ():
            m = self._KEY.match(raw)
            key = json.loads(m.group(1)) if m else json.loads(raw).get("narration_id") if raw.strip() else None
            if key in keys:
                self._at[key] = start
            start += len(raw)

    def get(self, key: str) -> dict:
        self._f.seek(self._at[key])
        return json.loads(self._f.readline())

    def __enter__(self) -> "_EarlierLines":
        return self

    def __exit__(self, *exc) -> None:
        if self._f is not None:
            self._f.close()


def _settings_file(cfg: ExtractConfig) -> dict:
    """What ``config_path(cfg.out)`` holds (read by the later stages: ``leap_cli.extracted``): the resolved options as
    plain JSON values, the folder this run is in (``cwd``: its relative paths are of it), and, where this run writes
    no frame cache, the folder an earlier one wrote that is there (``EARLIER_FRAME_CACHE``): build-shards still copies
    its frames (``extract --frame-cache none`` after a full disk made it decode every sample again)."""
    held = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
    held["cwd"] = os.getcwd()
    earlier = read_settings(config_path(cfg.out)) if FrameCache.from_config(cfg) is None else None
    if earlier is not None and (folder := earlier.frame_cache()) is not None and folder.is_dir():
        held[EARLIER_FRAME_CACHE] = str(folder)
    return held


def _fps(ann, video_id: str) -> float | None:
    """The video's fps from EPIC_100_video_info.csv; None when it is not there (an MP4 then gives its own)."""
    try:
        return float(ann.fps(video_id))
    except LeapError:
        log.warning("no fps for %s in the video info; an MP4's own fps is used, an rgb_frames folder is "
                    "unavailable", video_id)
        return None
