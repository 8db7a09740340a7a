"""The ``leap extract`` stage: every segment of a split -> one descriptor record (JSONL, resumable).

Segments are grouped by video, so each worker opens a video once and decodes only the frames the components
ask for. Each record is appended (and fsynced) as soon as it is finished; a re-run skips finished segments,
``retry_errors`` redoes those with a failed component. A component's exception becomes ``status: error`` with
the message, and the run goes on. With ``workers > 1`` whole videos are handed to worker processes.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from leap_cli.common import ShardSpec, normalize_split
from leap_cli.epic.annotations import Segment
from leap_cli.epic.layout import DatasetLayout
from leap_cli.errors import LeapError
from leap_cli.extract.base import COMPONENTS, Component, SegmentContext, error
from leap_cli.extract.describe import render_clip
from leap_cli.io import JsonlAppender, atomic_write_json, read_jsonl

log = logging.getLogger(__name__)


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
    camera_source: str = "auto"  # auto (COLMAP poses where they exist, else visual odometry) | vo | colmap
    object_frames: int = 6
    detector_weights: Path | None = None
    detector_labels: Path | None = None
    detector_arch: str = "fasterrcnn_resnet50_fpn_v2"
    clip_weights: Path | None = None  # a local CLIP checkpoint, or "openai" (open_clip's own download)
    clip_arch: str = "ViT-B-16"
    audio_model: Path | None = None
    audio_labels: Path | None = None
    device: str = "cpu"

    def __post_init__(self):
        unknown = [c for c in self.components if c not in COMPONENTS]
        if unknown:
            raise LeapError(f"unknown component(s) {', '.join(unknown)}", fix=f"choose from {', '.join(COMPONENTS)}")


@dataclass
class ExtractSummary:
    out: Path
    segments: int = 0  # in the split (after sharding)
    done_before: int = 0
    written: int = 0
    counts: dict[str, dict[str, int]] = field(default_factory=lambda: {c: {"ok": 0, "unavailable": 0, "error": 0}
                                                                       for c in COMPONENTS})
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    errors: list[str] = field(default_factory=list)  # "narration_id component: message"
    wall: float = 0.0
    interrupted: bool = False

    def add(self, record: dict, timings: dict[str, float]) -> None:
        self.written += 1
        for name, comp in record["components"].items():
            self.counts[name][comp["status"]] += 1
            if comp["status"] == "error":
                self.errors.append(f"{record['narration_id']} {name}: {comp['data'].get('error', '')}")
        for name, sec in timings.items():
            self.seconds[name] += sec


def build_components(cfg: ExtractConfig) -> list[Component]:
    """The chosen components, models loaded once (per worker)."""
    from leap_cli.extract.audio import AudioComponent
    from leap_cli.extract.camera import CameraComponent
    from leap_cli.extract.hands import HandsComponent
    from leap_cli.extract.narration import NarrationComponent
    from leap_cli.extract.objects import FasterRCNNDetector, ObjectsComponent

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
            out.append(NarrationComponent())
        elif name == "audio":
            model = None
            if cfg.audio_model is not None:
                from leap_cli.extract.audio_cnn14 import AudioTagger
                model = AudioTagger(cfg.audio_model, cfg.audio_labels, device=cfg.device)
            out.append(AudioComponent(model))
        elif name == "camera":
            out.append(CameraComponent(frames=cfg.camera_frames, fov_deg=cfg.fov_deg, source=cfg.camera_source))
        elif name == "objects":
            det = None
            if cfg.detector_weights is not None:
                det = FasterRCNNDetector(cfg.detector_weights, labels=cfg.detector_labels, arch=cfg.detector_arch,
                                         score_threshold=cfg.object_threshold, device=cfg.device,
                                         keep_unmapped=namer is not None)
            out.append(ObjectsComponent(det, frames=cfg.object_frames, score_threshold=cfg.object_threshold,
                                        hand_threshold=cfg.hand_threshold, namer=namer))
        elif name == "hands":
            out.append(HandsComponent(hand_threshold=cfg.hand_threshold, object_threshold=cfg.object_threshold,
                                      namer=namer))
    return out


def _plain(x):
    """numpy scalars/arrays -> JSON types."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


class _LazyVideo:
    """Opens the video on the first frame request; an open failure is remembered and re-raised per segment."""

    def __init__(self, layout: DatasetLayout, video_id: str, fps: float):
        self.layout, self.video_id, self.fps = layout, video_id, fps
        self.reader = None
        self.failure: LeapError | None = None

    def read(self, numbers: list[int], short_side: int, record: str) -> np.ndarray:
        from leap_cli.media.video import open_video

        if self.failure is not None:
            raise self.failure
        if self.reader is None:
            try:
                self.reader = open_video(self.layout, self.video_id, self.fps, record=record)
            except LeapError as e:
                self.failure = e
                raise
        n = getattr(self.reader, "num_frames", None)
        if n:
            numbers = [min(max(1, x), n) for x in numbers]
        return self.reader.read_frames(numbers, short_side or None)

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()


def describe_video(layout: DatasetLayout, segments: list[Segment], components: list[Component],
                   fps: float) -> list[tuple[dict, dict[str, float]]]:
    """Records (and per-component seconds) for the segments of one video, in order."""
    return list(iter_video(layout, segments, components, fps))


def iter_video(layout: DatasetLayout, segments: list[Segment], components: list[Component], fps: float):
    from leap_cli.media.audio import read_segment_audio

    video = _LazyVideo(layout, segments[0].video_id, fps)
    cache: dict = {}
    try:
        for seg in segments:
            ctx = SegmentContext(
                layout=layout, segment=seg, fps=fps, video_cache=cache,
                read_frames=lambda nums, side, s=seg: video.read(nums, side, s.narration_id),
                read_audio=lambda sr, s=seg: read_segment_audio(
                    layout, s.video_id, s.start, max(s.stop, s.start + 0.05), sr, record=s.narration_id))
            comps, timings = {}, {}
            for comp in components:
                t0 = time.perf_counter()
                try:
                    comps[comp.name] = _plain(comp.describe(ctx))
                except Exception as e:  # noqa: BLE001 - one component's failure must not stop the run
                    if not isinstance(e, LeapError):
                        log.warning("%s %s failed", seg.narration_id, comp.name, exc_info=True)
                    comps[comp.name] = error(getattr(comp, "source", comp.name), e)
                timings[comp.name] = time.perf_counter() - t0
            record = {"narration_id": seg.narration_id, "video_id": seg.video_id, "start": round(seg.start, 3),
                      "stop": round(seg.stop, 3), "components": comps,
                      "text": render_clip(seg.start, seg.stop, comps)}
            yield record, timings
    finally:
        video.close()


# --- worker processes ---------------------------------------------------------------------------------------
_W: dict = {}


def _worker_init(cfg: ExtractConfig) -> None:
    import signal

    import cv2

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it keeps what is written and stops the pool

    cv2.setNumThreads(1)  # workers are the parallelism
    if cfg.detector_weights is not None or cfg.audio_model is not None or cfg.clip_weights is not None:
        import torch

        torch.set_num_threads(1)
    _W["cfg"] = cfg
    _W["layout"] = DatasetLayout.open(cfg.data, cfg.annotations)
    _W["components"] = build_components(cfg)


def _worker_video(job: tuple[list[Segment], float]) -> list[tuple[dict, dict[str, float]]]:
    segments, fps = job
    return describe_video(_W["layout"], segments, _W["components"], fps)


def _error_ids(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {r["narration_id"] for r in read_jsonl(path)
            if any(c.get("status") == "error" for c in r.get("components", {}).values())}


def run_extract(cfg: ExtractConfig, *, on_start: Callable[[int, int], None] | None = None,
                on_record: Callable[[dict], None] | None = None) -> ExtractSummary:
    """Run the stage. ``on_start(total, already_done)`` and ``on_record(record)`` feed a progress bar."""
    split = normalize_split(cfg.split)
    layout = DatasetLayout.open(cfg.data, cfg.annotations)
    ann = layout.annotations()
    segments = cfg.shard.select(ann.segments(split), key=lambda s: s.video_id)
    if cfg.limit is not None:
        segments = segments[:cfg.limit]
    summary = ExtractSummary(out=cfg.out, segments=len(segments))
    atomic_write_json(config_path(cfg.out), {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()})
    replace = _error_ids(cfg.out) if cfg.retry_errors else set()
    t_start = time.perf_counter()
    with JsonlAppender(cfg.out, replace_keys=replace) as appender:
        todo = [s for s in segments if s.narration_id not in appender]
        summary.done_before = len(segments) - len(todo)
        if on_start:
            on_start(len(segments), summary.done_before)
        by_video: dict[str, list[Segment]] = {}
        for s in todo:
            by_video.setdefault(s.video_id, []).append(s)
        jobs = [(segs, _fps(ann, vid)) for vid, segs in by_video.items()]

        def take(record: dict, timings: dict[str, float]) -> None:
            if appender.write(record):
                summary.add(record, timings)
                if on_record:
                    on_record(record)

        try:
            if cfg.workers <= 1 or len(jobs) <= 1:
                components = build_components(cfg)
                try:
                    for segs, fps in jobs:
                        for record, timings in iter_video(layout, segs, components, fps):
                            take(record, timings)
                finally:
                    for c in components:
                        c.close()
            else:
                ctx = mp.get_context("spawn")
                pool = ctx.Pool(min(cfg.workers, len(jobs)), initializer=_worker_init, initargs=(cfg,))
                try:
                    # longest videos first so the last worker is not left with a long tail
                    order = sorted(jobs, key=lambda j: -len(j[0]))
                    for results in pool.imap_unordered(_worker_video, order):
                        for record, timings in results:
                            take(record, timings)
                    pool.close()
                except BaseException:
                    pool.terminate()
                    raise
                finally:
                    pool.join()
        except KeyboardInterrupt:  # finished records are on disk; the caller reports and exits
            summary.interrupted = True
        finally:
            summary.wall = time.perf_counter() - t_start
    return summary


def config_path(out: Path) -> Path:
    """The resolved config written next to the output: ``train.jsonl`` -> ``train.config.json``."""
    return Path(out).with_suffix(".config.json")


def _fps(ann, video_id: str) -> float:
    try:
        return float(ann.fps(video_id))
    except LeapError:
        log.warning("no fps for %s in the video info; assuming 50", video_id)
        return 50.0
