"""``leap build-shards``: segments -> WebDataset-style tar shards + ``manifest.json``.

One sample per segment (key = narration id). Workers decode and JPEG-encode frames one video at a time;
the parent writes the samples in annotation order (videos in first-appearance order, segments by start
time), so the bytes never depend on the number of workers. A shard is written to a temporary name and
renamed when complete; each completed shard is appended to ``.progress{suffix}.jsonl``, so a re-run
keeps complete shards (after checking their size) and redoes the unfinished one. A segment skipped because its video
could not be read is recorded with the video's size and mtime (``video_stat``); a re-run tries it again, into new
shards, once the file has changed (a video downloaded again). Each sample's entry keeps the hash of its program record
(``program_hash``): a re-run whose program records alone changed rewrites only the shards of the samples whose records
did, copying their frames (``_renew``); each shard's record keeps the size of each MP4 its samples were read from
(``video_sizes``): a re-run takes the samples of a video whose size differs now (downloaded again) out of their shards
and writes them from the new file (``_drop_replaced``; the records of an earlier leap, which kept none, take the sizes
their tars and extract's frame cache tell, ``_sizes_read``), first into the shards that left empty
(``_ShardSink._refill``).

Sample ``json`` (see ``docs/shards.md``)::

    {"narration_id", "video", "participant", "start", "stop", "fps", "narration", "verb", "noun",
     "verb_class", "noun_class" (null on test), "task", "frame_indices": [T 1-based frame numbers],
     "has_program": bool, "targets": {"steps": [[v, a, b], ...], "pre": [ids], "post": [ids]} | null,
     anticipation: "observed": {"start", "stop"} (seconds, the current clip s_i), "context": [{"key", "present",
     "frame_indices"}] (s_{i-2}, s_{i-1}), "clips": [{"start", "stop", "first_frame", "last_frame", "present",
     "padded_frames", "frame_indices"}] (s_{i-2} .. s_i, context_mode "clips")}
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import os
import zlib
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import numpy as np

from leap_cli.common import (ShardSpec, check_task, counted, merged_input, new_pool, pool_results,
                             pool_worker_ready, start_pool_worker, start_worker, stop_pool, warn_small_address_space)
from leap_cli.epic.annotations import Segment
from leap_cli.epic.layout import file_stat
from leap_cli.epic.timing import MP4, FrameClock, clip_windows_before, pick_frames
from leap_cli.errors import LeapError
from leap_cli.extract.cache import FrameCache, recognition_frames
from leap_cli.io import (JsonlAppender, OutputLock, ShardReaders, atomic_write_json, iter_jsonl, json_line,
                         read_jsonl, sha256_file, shard_parts, shell_word, stable_hash, with_path, writer_of)
from leap_cli.media.video import PAST_END, stored_side, stored_size
from leap_cli.media.write import encode_jpeg
from leap_cli.programs.provenance import MadeBy, prompt_version
from leap_cli.shards.format import (FORMAT, RULES, build_command, check_key, check_part_count, differ_note, frame_field,
                                    frames_crc, jpeg_size, made_with, manifest_name, sample_bytes, said, shard_name,
                                    tar_end)

log = logging.getLogger(__name__)


class FrameReader(Protocol):
    width: int  # of the source's frames, from its header
    height: int

    def read_frames(self, indices: list[int], short_side: int | None = None) -> np.ndarray:  # [T,H,W,3] uint8 RGB
        ...


FrameOpener = Callable[[str], FrameReader]  # video_id -> reader (must be picklable for --workers > 1)


class TargetEncoder(Protocol):
    """Program -> training targets; ``manifest()`` is the vocabulary stored under ``"targets"``."""

    def encode(self, program: dict, key: str | None = None) -> dict: ...

    def manifest(self) -> dict: ...


@dataclass(frozen=True)
class ShardSettings:
    split: str
    task: str = "recognition"  # or "anticipation"
    frames: int = 16
    short_side: int = 256
    jpeg_quality: int = 90
    max_shard_size: int = 1 << 30
    max_count: int = 0  # 0: no limit
    tau_a: float = 1.0  # anticipation: the observed clips end tau_a seconds before the action
    tau_o: float = 2.0  # anticipation, context_mode "segments": length of the observed window
    context: int = 2  # anticipation: clips stored before the current one (s_{i-2}, s_{i-1})
    context_mode: str = "clips"  # "clips": contiguous span_frames windows (the paper); "segments": previous segments
    span_frames: int = 256  # anticipation, "clips": source frames each clip spans

    def __post_init__(self):
        check_task(self.task)
        if self.frames < 1 or self.short_side < 16 or not 1 <= self.jpeg_quality <= 100:
            raise LeapError("--frames must be >= 1, --short-side >= 16 and --jpeg-quality in 1..100")
        if self.max_shard_size < 1 or self.max_count < 0:
            raise LeapError("--max-shard-size must be positive and --max-count >= 0")
        if not (math.isfinite(self.tau_a) and math.isfinite(self.tau_o)) or self.tau_a < 0 or self.tau_o <= 0 \
                or self.context < 0:  # (inf reached the frame arithmetic: an OverflowError traceback)
            raise LeapError("--tau-a must be >= 0, --tau-o > 0 (both finite seconds) and --context >= 0")
        if self.context_mode not in ("clips", "segments") or self.span_frames < 1:
            raise LeapError(f"anticipation context {self.context_mode!r} / span {self.span_frames}",
                            fix="use --anticipation-context clips (the paper's contiguous clips) or segments, and a "
                                "positive --span-frames")


def segment_frame_indices(first: int, last: int, count: int) -> list[int]:
    """``count`` 1-based frame numbers at the centres of ``count`` equal chunks of [first, last]."""
    return pick_frames(first, last, count, "uniform")


# Where --anticipation-context segments ends the observed window, since 2026-12-06: tau_a before the action's start
# in the source's numbering (on rgb_frames the start of its CSV start_frame, as clips mode; it was tau_a before the
# timestamp there, 1-2 frames later; on an MP4 both are the timestamp). Shards of the earlier rule hold no such
# setting: a resume of them over rgb_frames is refused, not mixed (``_rule_of``).
OBSERVED_END = "action start in the source's numbering"


def made_settings(settings: ShardSettings, *, rule: bool = True) -> dict:
    """The settings a build's samples were made with, as its hash, progress records and manifest keep them: the
    options, and for the segments context (with ``rule``) the rule that ends its observed window (``OBSERVED_END``)."""
    out = asdict(settings)
    if settings.task == "anticipation" and settings.context_mode == "segments" and rule:
        out["observed_end"] = OBSERVED_END
    return out


def _rule_of(out: Path, progress_path: Path, overwrite: bool, frame_folders: bool, suffix: str) -> bool:
    """Whether a build keeps ``OBSERVED_END`` (``made_settings``' ``rule``): always, but where what is in ``out``
    was built by a leap before the rule (progress records or manifests without it, of any ``--shard`` part: a part
    begun today beside an earlier leap's part would not merge with it; with ``overwrite``, those of the other parts
    only, which a part's --force keeps) and no video of the split is read from ``rgb_frames`` (on MP4s the rule
    changed no sample: such a folder resumes, and its parts merge)."""
    if frame_folders or (overwrite and not suffix):
        return True
    mine = {progress_path, out / manifest_name(suffix), out / manifest_name()} if overwrite else set()
    for path in sorted(out.glob(".progress*.jsonl")):
        if path in mine:
            continue
        try:
            recs = [r for r in read_jsonl(path) if isinstance(r, dict)]
        except LeapError:
            recs = []
        if any("settings.observed_end" not in (r.get("made_with") or {}) for r in recs):
            return False
    for path in out.glob("manifest*.json"):
        if path in mine:
            continue
        try:
            m = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(m, dict) and isinstance(m.get("settings"), dict) and "observed_end" not in m["settings"]:
            return False
    return True


@dataclass
class SampleJob:
    key: str
    frames: list[int]  # observed frames
    context: list[list[int] | None] = field(default_factory=list)  # oldest first; None: absent
    # what must lie inside the video's decodable frames (checked once it is open, ``VideoJob.clock``): the
    # segment's span (recognition), else the last frame of the observed window (anticipation)
    segment: Segment | None = None
    last: int | None = None


@dataclass
class VideoJob:
    video_id: str
    samples: list[SampleJob]
    clock: FrameClock | None = None  # the timing rule of the video's source (its frames counted once open)


def plan_samples(segments: list[Segment], fps: Callable[[str], float], settings: ShardSettings,
                 clock: Callable[[str], FrameClock] | None = None,
                 frame_count: Callable[[str], int | None] | None = None
                 ) -> tuple[list[VideoJob], dict[str, dict], list[dict]]:
    """Which frames each sample stores. Returns (jobs by video in order, per-key sampling record, skipped).

    ``clock(video_id)`` is the timing rule of the video's source (default: an MP4 at ``fps(video_id)``);
    ``frame_count(video_id)``: the frames its source decodes (None: not known), asked only of a video with a
    segment that stops within two frames of its length in the video info, where a stop less than a frame past
    the end ends at its last frame (``FrameClock.segment_span``) as extract, which opens it, takes it."""
    clock = clock or (lambda vid: FrameClock(MP4, fps(vid)))
    by_video: dict[str, list[Segment]] = {}
    for s in segments:
        by_video.setdefault(s.video_id, []).append(s)
    jobs, records, skipped = [], {}, []
    T = settings.frames
    for vid, segs in by_video.items():
        segs = sorted(segs, key=lambda s: (s.start, s.stop, s.narration_id))
        try:
            ck = clock(vid)
        except LeapError as e:  # no fps for the video (an id the video info does not know): its segments are
            skipped += [{"narration_id": s.narration_id, "reason": f"no timing: {e.message} ({e.fix})",
                         "cause": "no timing: the video is not in the video info"} for s in segs]
            continue  # skipped and listed, the other videos go on
        if (frame_count is not None and ck.num_frames is None and ck.duration is not None
                and max(s.stop for s in segs) > ck.duration - 2 / ck.rate and (n := frame_count(vid))):
            ck = ck.with_frames(n)
        samples = []
        for i, s in enumerate(segs):
            check_key(s.narration_id)
            if settings.task == "recognition":
                # The timing rule (epic/timing.py), as extract's frame cache uses it: an MP4's frames from the
                # timestamps through its fps, an rgb_frames folder's from the CSV columns as EPIC numbers them.
                idx = recognition_frames(ck, s, T)
                samples.append(SampleJob(s.narration_id, idx, segment=s))
                records[s.narration_id] = {"frame_indices": idx}
                continue
            if settings.context_mode == "clips":
                job, rec = _plan_clips(s, ck, settings)
                samples.append(job)
                records[s.narration_id] = rec
                continue
            # tau_a before the action's start in the source's numbering, as clips mode takes it (on rgb_frames its
            # CSV start_frame, 1-2 frames before the timestamp: the timestamp ended it 2-3 frames after clips mode)
            obs_end_t = ck.start_time(s) - settings.tau_a
            if obs_end_t < 0:
                # Nothing can be observed before the action (it starts less than tau_a into the video), yet the
                # challenge wants a score for it: store black frames, no context, and say so in the record.
                samples.append(SampleJob(s.narration_id, [], [None] * settings.context))
                records[s.narration_id] = {"frame_indices": [], "observed": None, "blank": True,
                                           "context": [{"key": None, "present": False, "frame_indices": []}
                                                       for _ in range(settings.context)]}
                continue
            # The frame shown at obs_end_t starts at or before it: never a frame after the window.
            last = ck.frame_at(obs_end_t)
            first = ck.frame_at(max(0.0, obs_end_t - settings.tau_o))
            idx = segment_frame_indices(first, last, T)
            ctx_jobs, ctx_rec = [], []
            for j in range(settings.context, 0, -1):  # oldest first
                p = segs[i - j] if i - j >= 0 else None
                pa, pb = ck.segment_span(p) if p is not None else (0, 0)
                if p is None or pa > last:
                    ctx_jobs.append(None)
                    ctx_rec.append({"key": p.narration_id if p else None, "present": False, "frame_indices": []})
                    continue
                cidx = segment_frame_indices(pa, min(pb, last), T)
                ctx_jobs.append(cidx)
                ctx_rec.append({"key": p.narration_id, "present": True, "frame_indices": cidx})
            samples.append(SampleJob(s.narration_id, idx, ctx_jobs, last=last))
            records[s.narration_id] = {"frame_indices": idx, "blank": False,
                                       "observed": {"start": round(max(0.0, obs_end_t - settings.tau_o), 6),
                                                    "stop": round(obs_end_t, 6)},
                                       "context": ctx_rec}
        if samples:
            jobs.append(VideoJob(vid, samples, ck))
    return jobs, records, skipped


def _plan_clips(s: Segment, clock: FrameClock, settings: ShardSettings) -> tuple[SampleJob, dict]:
    """Anticipation as in the paper: clips s_{i-C} .. s_i of ``span_frames`` source frames each, contiguous, the
    last ending ``tau_a`` before the action, in the numbering of the video's source (the timing rule,
    ``epic.timing.clip_windows_before``). A clip wholly before the video is absent (masked); one that starts before
    it repeats frame 1 for the missing part (padded). No observable frame at all: a blank sample, as in "segments"."""
    T, C = settings.frames, settings.context
    windows = clip_windows_before(clock, s, settings.tau_a, clips=C + 1, frames=settings.span_frames, n=T)
    clips, jobs = [], []
    for w in windows:
        present = w.last >= 1
        idx = [max(1, i) for i in w.frames] if present else []
        clips.append({"start": round(w.start, 6), "stop": round(w.stop, 6), "first_frame": w.first,
                      "last_frame": w.last, "present": present, "padded_frames": max(0, 1 - w.first) if present else 0,
                      "frame_indices": idx})
        jobs.append(idx or None)
    current = clips[-1]
    context = [{"key": None, "present": c["present"], "frame_indices": c["frame_indices"]} for c in clips[:-1]]
    if not current["present"]:
        return (SampleJob(s.narration_id, [], [None] * C),
                {"frame_indices": [], "observed": None, "blank": True, "clips": clips,
                 "context": [dict(c, present=False, frame_indices=[]) for c in context]})
    return (SampleJob(s.narration_id, current["frame_indices"], jobs[:-1], last=current["last_frame"]),
            {"frame_indices": current["frame_indices"], "observed": {"start": current["start"], "stop": current["stop"]},
             "blank": False, "clips": clips, "context": context})


@dataclass
class Skipped:
    """Why a sample was not written: ``reason`` is the full line (file and fix) for the manifest, ``cause`` its
    path-free gist (the summary counts skips by it), ``stat`` ``{"video_stat": [size, mtime_ns] or None}`` of the
    video before it was read (empty where the opener cannot tell), and for files of an rgb_frames folder at fault
    ``frame_files`` (``_frame_file_stat``), so a re-run tries again once the file changes."""

    reason: str
    cause: str
    stat: dict = field(default_factory=dict)

    def entry(self, key: str) -> dict:
        return {"narration_id": key, "reason": self.reason, "cause": self.cause, **self.stat}


def _gist(e: Exception) -> str:
    """A failure in a few path-free words that skips of one kind share: a ``VideoUnreadable``'s gist (its message
    without frame numbers), another ``LeapError``'s message, else the exception's type."""
    if isinstance(e, LeapError):
        return getattr(e, "gist", e.message)
    return f"frames unreadable ({type(e).__name__})"


def _source_of(video_stat: list[int] | None) -> list[int] | None:
    """The ``[size, mtime_ns]`` a frame cache keeps of its source (``DatasetLayout.source_stat``) of a skip record's
    ``video_stat`` (which adds the change time: a chmod must not make extract's whole cache unusable)."""
    return video_stat[:2] if video_stat else video_stat


def cache_entries_usable(cache: FrameCache, opener: FrameOpener, video_id: str) -> bool:
    """Whether the frame cache's entries of the video may be copied into shards: entries made from another
    source (another --data with these video ids, a video replaced since) are not (they were copied as if they
    were this video's frames), nor an rgb_frames video's of a leap that cached damaged frames."""
    stat = getattr(opener, "video_stat", None)
    return cache.same_source(video_id, _source_of(stat(video_id) if stat is not None else None),
                             frames=getattr(opener, "is_mp4", None) is not None and not opener.is_mp4(video_id))


def encode_video(job: VideoJob, opener: FrameOpener, settings: ShardSettings, cache: FrameCache | None = None,
                 seen: dict | None = None) -> list[tuple[str, dict[str, bytes] | Skipped]]:
    """Read and JPEG-encode the frames of every sample of one video. Returns [(key, {field: bytes} | Skipped)];
    ``seen`` gets ``video_stat``, the video's ``file_stat`` taken before it was read (where the opener tells it).

    Frames are stored at ``settings.short_side``, or at the source's own size where its short side is no larger
    (never upscaled). A sample's observed frames found in ``cache`` (written by ``leap extract`` from its own decode,
    at these settings) are copied as they are; the video is opened only for what the cache does not hold."""
    import cv2

    cv2.setNumThreads(1)
    out: list[tuple[str, dict | str]] = []
    state: dict = {}

    stat = getattr(opener, "video_stat", None)

    def reader():
        if "reader" not in state:
            # taken before reading: a file replaced meanwhile is seen as changed by the next run
            state["stat"] = {"video_stat": stat(job.video_id)} if stat is not None else {}
            try:
                state["reader"] = opener(job.video_id)
            except Exception as e:  # noqa: BLE001 - any failure to open becomes a listed skip of its samples
                state["reader"] = None
                state["why"] = Skipped(f"video {job.video_id} cannot be opened: {e}", _gist(e),
                                       {**state["stat"], **_frame_file_stat(e)})
        if state["reader"] is None:
            raise _Skip(state["why"])
        return state["reader"]

    def opened(s: SampleJob):
        """The reader and the last frame of the sample's window (None: not known), once the window is known to end
        inside the frames that decode: a segment past a short frames folder or a cut file is skipped as extract
        skips it, whatever frames it samples (it was kept where every sampled frame came before the end), with
        extract's reason."""
        r = reader()
        frames = getattr(r, "num_frames", None)  # (None: a reader that cannot tell, nothing checked)
        if job.clock is None or not frames or (s.segment is None and s.last is None):
            return r, None
        ck = job.clock.with_frames(frames)
        last = ck.segment_span(s.segment)[1] if s.segment is not None else s.last
        if why := ck.check(1, last):
            where = LeapError(why, path=getattr(r, "path", None), record=s.key).one_line()
            raise _Skip(Skipped(f"frames unreadable: {where}", PAST_END, state["stat"]))
        return r, last

    usable = (cache is not None and cache.short_side == settings.short_side
              and cache.quality == settings.jpeg_quality and cache_entries_usable(cache, opener, job.video_id))
    if usable and getattr(opener, "is_mp4", lambda v: False)(job.video_id):
        try:  # opened first (its header): an MP4 the stages leave out, such as one at another rate than video_info
            reader()  # says, is skipped whole, not packed from frames an earlier leap cached of it
        except _Skip:
            usable = False
    for s in job.samples:
        try:
            fields: dict[str, bytes] = {}
            clips = [(None, s.frames)] + [(c, idx) for c, idx in enumerate(s.context) if idx]
            if not s.frames:  # anticipation before the video's first tau_a seconds: a black observed clip
                r, _ = opened(s)
                w, h = stored_size(r.width, r.height, settings.short_side)
                black = encode_jpeg(np.zeros((h, w, 3), np.uint8), settings.jpeg_quality)
                fields.update({frame_field(i): black for i in range(settings.frames)})
                clips = clips[1:]
            for ctx, idx in clips:
                cached = cache.load(job.video_id, s.key, list(idx)) if usable and ctx is None else None
                if cached is not None:
                    for i, jpg in enumerate(cached):
                        fields[frame_field(i, ctx)] = jpg
                    continue
                r, last = opened(s)
                if hasattr(r, "record"):
                    r.record = s.key  # its errors name this segment (they named the video)
                # an MP4's header may count frames a cut file does not hold: the window's last frame is decoded
                # too, as extract's reads of the whole window do (a few frames more of the same pass)
                end = [last] if ctx is None and last is not None and job.clock.kind == MP4 and last > max(idx) else []
                frames = r.read_frames(list(idx) + end, stored_side(r.width, r.height, settings.short_side))
                if frames is None or len(frames) != len(idx) + len(end):
                    raise ValueError(f"got {0 if frames is None else len(frames)} of {len(idx)} frames")
                frames = frames[:len(idx)]
                for i, fr in enumerate(frames):
                    fields[frame_field(i, ctx)] = encode_jpeg(fr, settings.jpeg_quality)
            out.append((s.key, fields))
        except _Skip as e:
            out.append((s.key, e.args[0]))
        except Exception as e:  # noqa: BLE001 - unreadable frames: the segment is skipped and listed
            what = e.one_line() if isinstance(e, LeapError) else f"{type(e).__name__}: {e}"  # (not a class name)
            out.append((s.key, Skipped(f"frames unreadable: {what}", _gist(e),
                                       {**state.get("stat", {}), **_frame_file_stat(e)})))
    close = getattr(state.get("reader"), "close", None)
    if close:
        close()
    if seen is not None:
        seen.update(state.get("stat", {}))
    return out


def _encode(job: VideoJob, opener: FrameOpener, settings: ShardSettings, cache: FrameCache | None
            ) -> tuple[list[tuple[str, dict[str, bytes] | Skipped]], int | None]:
    """``encode_video``'s samples, and the size of the MP4 their frames were read from (None: an rgb_frames folder,
    which has no single size, or an opener that cannot tell): what the shard's progress record keeps of it
    (``video_sizes``, ``_drop_replaced``)."""
    seen: dict = {}
    out = encode_video(job, opener, settings, cache, seen)
    st = seen.get("video_stat")
    return out, (st[0] if st and job.clock is not None and job.clock.kind == MP4 else None)


class _Skip(Exception):
    pass


def _frame_file_stat(e: Exception) -> dict:
    """For a skip caused by files of the video's rgb_frames folder (``VideoUnreadable.files``: damaged, missing,
    unreadable, of another size than the others): ``frame_files`` {name: ``file_stat``}, so that a re-run tries the
    segment again once one is replaced (``LayoutOpener.frame_stat``)."""
    files = {Path(f).name: file_stat(f) for f in getattr(e, "files", None) or ()}
    return {"frame_files": files} if files else {}


_worker_ctx: dict = {}


def _init_worker(opener: FrameOpener, settings: ShardSettings, cache: FrameCache | None, parent: int) -> None:
    import leap_cli.media.video as video

    start_worker(parent)
    video.DECODE_THREADS = 1  # workers are the parallelism: FFmpeg's frame threads cost ~25% more CPU per frame
    _worker_ctx["opener"] = opener
    _worker_ctx["settings"] = settings
    _worker_ctx["cache"] = cache


def _work(job: VideoJob) -> tuple[list[tuple[str, dict[str, bytes] | Skipped]], int | None]:
    pool_worker_ready()
    return _encode(job, _worker_ctx["opener"], _worker_ctx["settings"], _worker_ctx.get("cache"))


@dataclass
class BuildResult:
    out: Path
    manifest: dict
    written_now: int = 0
    resumed_shards: int = 0  # shards kept from before this run (as they were, or rewritten in place)
    written_shards: int = 0  # tars written now with samples not in a shard before (``_ShardSink``)
    rewritten_shards: int = 0  # tars of kept shards written again now (``_renew``, ``_drop_replaced``), not new ones
    notes: list[str] = field(default_factory=list)
    manifest_was_missing: bool = False  # the manifest (of the part) was not there when this run began
    rewritten: bool = False  # shards were written again with their samples' new programs (``_renew``)
    renewed: bool = False  # shards of other program records took these (``_renew``), rewritten or kept as they were


def _labels(seg: Segment, fps: float | None) -> dict:
    return {"narration_id": seg.narration_id, "video": seg.video_id, "participant": seg.participant_id,
            "start": seg.start, "stop": seg.stop, "fps": fps, "narration": seg.narration, "verb": seg.verb,
            "noun": seg.noun, "verb_class": seg.verb_class, "noun_class": seg.noun_class}


def match_programs(records: list[dict], split_ids: set[str], path: Path | str) -> tuple[dict[str, dict], dict]:
    """Program records by narration id, and a report of ids that are not in the split.
    No id in common with a non-empty file is an error (the file of another split)."""
    by_id = {r["narration_id"]: r for r in records if "narration_id" in r}
    unknown = sorted(k for k in by_id if k not in split_ids)
    made = MadeBy()  # (the counts per generator: their records and valid sum to the file's)
    for k, r in by_id.items():
        made.add(r, k in split_ids and r.get("status") == "valid")
    by_generator = made.summary()
    report = {"records": len(by_id), "matched": len(by_id) - len(unknown), "unknown_ids": len(unknown),
              "unknown_examples": unknown[:10], "valid": sum(g["valid"] for g in by_generator),
              "made_by": by_generator}
    if by_id and not report["matched"]:
        raise LeapError(f"none of the {len(by_id)} narration ids in the program file belong to this split "
                        f"(e.g. {unknown[0]})", path=path, fix="pass the program file of this split with --programs")
    return by_id, report  # (the ids not in the split: a note of the build's summary, said once)


class _ShardSink:
    """Writes samples in order into rolling shards; records each completed shard in the progress file. The kept
    shards left empty (``_drop_replaced`` took out the samples of a video downloaded again) are filled first, each
    at its own index (``_refill``), so that they do not pile up, one or two a download; then new shards follow the
    kept ones. ``begin_rewrite`` is called before a kept shard is filled (readers refused, the manifests naming its
    old bytes deleted), as before any rewrite in place."""

    def __init__(self, out: Path, split: str, suffix: str, settings: ShardSettings, progress: JsonlAppender,
                 settings_hash: str, kept: list[dict], made: dict[str, str], made_settings: dict, inputs: dict,
                 begin_rewrite: Callable[[], None]):
        self.out, self.split, self.suffix, self.settings = out, split, suffix, settings
        self.begin_rewrite = begin_rewrite
        self.progress, self.settings_hash, self.made = progress, settings_hash, made
        self.made_settings, self.inputs = made_settings, inputs  # (the options, rules and inputs, in words)
        self.kept = list(kept)
        self._empty = [r for r in kept if not r["samples"]]  # (their indices are filled first)
        self.index = len(kept)  # the next new shard's
        self._slot: dict | None = None  # the empty shard being filled, else None: a new shard at ``index``
        self._f = None
        self._tmp: Path | None = None
        self._samples: list[dict] = []
        self._sizes: dict[str, int] = {}  # video -> size of the MP4 its samples here were read from
        self._skipped: list[dict] = []
        self._bytes = 0
        self.completed: list[dict] = []

    def _open(self) -> None:
        self._slot = self._empty.pop(0) if self._empty else None
        if self._slot:  # (a run that took out no sample, such as one writing skips retried, had not begun one)
            self.begin_rewrite()
        name = shard_name(self.split, self._at(), self.suffix)
        self._tmp = self.out / (f".{name}.update" if self._slot else f".{name}.partial")
        self._f = open(self._tmp, "wb")
        self._samples, self._sizes, self._bytes = [], {}, 0

    def add(self, key: str, data: bytes, info: dict, video_size: int | None = None) -> None:
        s = self.settings
        if self._f is not None and self._samples and (
                (s.max_count and len(self._samples) >= s.max_count)
                or self._bytes + len(data) + 1024 > s.max_shard_size):
            self._close()
        if self._f is None:
            self._open()
        self._samples.append({"key": key, "offset": self._bytes, "size": len(data), "crc32": zlib.crc32(data), **info})
        if video_size is not None:
            self._sizes[info["video"]] = video_size
        try:
            self._f.write(data)
        except OSError as e:  # a full disk: the line names the shard (a write on an open file names none)
            raise with_path(e, self.out / shard_name(self.split, self._at(), self.suffix))
        self._bytes += len(data)

    def skip(self, entry: dict) -> None:
        self._skipped.append(entry)

    def _at(self) -> int:
        """The index of the shard being written."""
        return self._slot["index"] if self._slot else self.index

    def _close(self) -> None:
        name = shard_name(self.split, self._at(), self.suffix)
        final = self.out / name
        try:
            self._f.write(tar_end())
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
        except OSError as e:
            raise with_path(e, final)
        self._f = None
        if not self._slot:
            os.replace(self._tmp, final)
        done = self._tmp if self._slot else final
        rec = {"name": name, "index": self._at(), "settings_hash": self.settings_hash, "count": len(self._samples),
               "bytes": done.stat().st_size, "sha256": sha256_file(done), "samples": self._samples,
               # (an empty shard filled keeps the skips recorded with it)
               "skipped": (self._slot["skipped"] if self._slot else []) + self._skipped, "made_with": self.made,
               # (MP4s only: a re-run takes out the samples of a video whose size differs now, _drop_replaced)
               **({"video_sizes": dict(sorted(self._sizes.items()))} if self._sizes else {}),
               "settings": self.made_settings,  # (in words: the command to resume it, ``begun_options``)
               "inputs": self.inputs}
        if self._slot:
            self._refill(rec)
        else:
            self.progress.write(rec)
            self.index += 1
        self.completed.append(rec)
        self._skipped = []

    def _refill(self, rec: dict) -> None:
        """Commit the empty shard filled as ``_renew`` commits a rewrite: its tar written to ``.NAME.update``
        (``_close``), the progress file written again with its record, then the rename over the empty tar; a kill
        between the two is finished by the next run (``_renew``), one before is dropped (the shard empty again)."""
        from leap_cli.io import atomic_write_text

        records = {r["index"]: r for r in self.kept + self.completed}
        records[rec["index"]] = rec
        self.kept = [r if r["index"] != rec["index"] else rec for r in self.kept]
        path = self.progress.path
        self.progress.close()  # (the appender's file is replaced: opened again)
        atomic_write_text(path, "".join(json_line(records[i]) for i in sorted(records)))
        self.progress = JsonlAppender(path, key="name", keep_records=True)
        os.replace(self._tmp, self.out / rec["name"])
        self._slot = None

    def finish(self) -> list[dict]:
        """Close the last shard; skips after it are returned (they belong to no shard)."""
        if self._f is not None:
            self._close()
        rest, self._skipped = self._skipped, []
        return rest

    def abort(self) -> None:
        if self._f is not None:
            try:
                self._f.close()  # flushes what is buffered: fails again on a full disk
            except OSError:
                pass
            self._f = None
            if self._tmp and self._tmp.exists():
                self._tmp.unlink()


def _intact(out: Path, done: list[dict]) -> list[dict]:
    """The progress records ``done`` (in index order) up to the first whose tar is not there whole: a run keeps
    those and redoes the rest."""
    kept: list[dict] = []
    for r in done:
        path = out / r["name"]
        if r["index"] != len(kept) or not path.exists() or path.stat().st_size != r["bytes"]:
            break
        kept.append(r)
    return kept


def _resume(out: Path, progress_path: Path, settings_hash: str, prefix: str,
            retry: Callable[[dict], bool] = lambda skip: False,
            changed_keys: Callable[[list[dict]], list[str]] = lambda other: [],
            renew: Callable[[list[dict]], bool] | None = None) -> tuple[JsonlAppender, list[dict]]:
    """Open the progress file; keep the complete shards that are intact (from the first damaged one on, redo).
    A kept shard's skips for which ``retry(skip)`` holds are dropped from its record: their segments are to do.
    ``changed_keys(records)``: the settings that differ from those the progress records of other settings (or
    the part's manifest) were made with, for the refusal (empty: not known). ``renew(records)``, under the
    progress file's lock: brings records made from other programs up to these (``_renew``); True where it
    rewrote the progress file."""
    from leap_cli.io import atomic_write_text

    appender = JsonlAppender(progress_path, key="name", keep_records=True)
    done: list[dict] = sorted(appender.records.values(), key=lambda r: r["index"])
    try:
        renewed = renew is not None and renew(done)
    except BaseException:
        appender.close()
        raise
    if renewed:  # (nothing was appended to the file it replaced: closed, and the new one opened)
        appender.close()
        appender = JsonlAppender(progress_path, key="name", keep_records=True)
        done = sorted(appender.records.values(), key=lambda r: r["index"])
    if other := [r for r in done if r["settings_hash"] != settings_hash]:
        appender.close()
        keys = changed_keys(other)
        from leap_cli.shards.format import PACKING

        if keys and all(k in PACKING for k in keys):  # (given otherwise: left out, a re-run packs as the build began)
            from leap_cli.io import part_of

            part, m = progress_path.name[len(".progress"):-len(".jsonl")], part_of(progress_path.name)
            again = build_command(out, *(("--shard", f"{m[0]}/{m[1]}") if m else ()), part=part)
            raise LeapError("the folder's tars are packed otherwise " + differ_note([said(k) for k in keys])
                            + ": a folder keeps one packing, which its manifest records", path=out,
                            fix=f"run {again} (its own packing, which a re-run without "
                                f"{' or '.join(said(k) for k in keys)} takes), or pass --force to repack every shard "
                                "(each sample made again), or another --out")
        raise LeapError("the folder holds shards built from other inputs or settings"
                        + (" " + differ_note([said(k) for k in keys]) if keys else "")
                        + (": its samples hold the program ids of the target vocabulary they were built with, so "
                           "they are rebuilt, not updated" if "targets" in keys else ""), path=out,
                        fix="pass --force to delete them and rebuild, or another --out")
    kept = _intact(out, done)
    retried = {x["narration_id"] for r in kept for x in r["skipped"] if retry(x)}
    if retried:
        kept = [dict(r, skipped=[x for x in r["skipped"] if x["narration_id"] not in retried]) for r in kept]
    if len(kept) < len(done) or retried:
        appender.close()
        atomic_write_text(progress_path, "".join(json_line(r) for r in kept))
        appender = JsonlAppender(progress_path, key="name", keep_records=True)
    for stray in out.glob(f".{prefix}-*.tar.partial"):
        stray.unlink()
    return appender, kept


def build_again(split: str) -> str:
    """What the notes of programs still to come say to run once they are there: build-shards again, which rewrites
    only the shards of the samples whose programs changed (``_renew``); for the training split, whose target
    vocabulary is built from its programs, new records that change it make that run a refusal (``--force``)."""
    return ("build-shards again (it rewrites the shards of the samples whose programs changed"
            + ("; where the new records change the training split's target vocabulary it refuses, and --force "
               "rebuilds" if split == "train" else "") + ")")


def program_hash(record: dict | None) -> str | None:
    """What a sample took from its program record, as its entry in a shard's progress record keeps it: 16 hex of
    the record without its ``provenance`` (``programs_digest``'s line of it); None: no record."""
    if record is None:
        return None
    return stable_hash({k: v for k, v in record.items() if k != "provenance"})[:16]


def _renew(out: Path, progress_path: Path, prefix: str, done: list[dict], settings_hash: str, made: dict[str, str],
           program_of: Callable[[str], str | None], target_of: Callable[[str], dict | None],
           begin_rewrite: Callable[[], None], notes: list[str], inputs: dict | None = None,
           rewritten: set[str] | None = None) -> bool:
    """Bring the progress records ``done`` up to this run's program records where nothing else changed (their
    ``made_with`` differs from ``made`` in ``sources.programs`` alone): a shard none of whose samples' programs
    changed (``program_of(key)`` against its entry's ``program``) takes this run's settings hash as it is; one
    holding such samples is written again by ``_rewrite_shard`` (their targets, from ``target_of``; the frames
    copied), after ``begin_rewrite()`` (the folder held for writing, its manifest deleted). Each rewrite is
    committed as: ``.NAME.update`` written, the progress file written with its new record, then renamed over the
    tar; a rewrite a kill interrupted is finished here first (its record committed) or dropped (not). A shard
    damaged (cut short, or a sample's CRC-32) is left with those after it to be decoded again, as ``_resume`` does,
    after ``begin_rewrite()`` where their samples' targets change. Records of
    a leap that kept no ``program`` per sample get it where their shards were made from these programs (their
    settings hash is this run's). The records of other programs take this run's ``inputs`` (the command that
    resumes the build, ``format.begun_options``, names the program file they take, not the one they were built
    from), those still to rewrite too. Returns whether the progress file was written; what was done is added to
    ``notes``, the names of the tars renamed over to ``rewritten``."""
    from leap_cli.io import atomic_write_text

    rewritten = set() if rewritten is None else rewritten  # (the names of the tars renamed over here)
    by_name = {r["name"]: r for r in done}
    for p in sorted(out.glob(f".{prefix}-*.tar.update")):
        r = by_name.get(p.name[1:-len(".update")])
        if r is not None and p.stat().st_size == r["bytes"] and sha256_file(p) == r["sha256"]:
            begin_rewrite()
            os.replace(p, out / r["name"])
            rewritten.add(r["name"])
        else:
            p.unlink()
    other = [r for r in done if r["settings_hash"] != settings_hash]
    if any(not isinstance(was := r.get("made_with"), dict) or {k for k in was.keys() | made.keys()
                                                                if was.get(k) != made.get(k)} != {"sources.programs"}
           for r in other):
        return False  # (refused by _resume, naming what differs)
    records = _intact(out, done)  # (as _resume keeps them)
    if any("program" not in x for r in records if r["settings_hash"] != settings_hash for x in r["samples"]):
        raise LeapError("the folder holds shards built from other inputs or settings (the programs differ) by a leap "
                        "that kept no program per sample: which of their samples changed is not known", path=out,
                        fix="run build-shards once with the program file they were built from (it gives them their "
                            "programs, rebuilding nothing), then with these; or pass --force to rebuild them (a later "
                            "change of programs then rewrites only the shards of the samples it changes), or another "
                            "--out")
    upgraded = False
    rewrite: list[tuple[int, dict[str, str | None]]] = []  # (index, {key: its program hash now}) of the changed
    for i, r in enumerate(records):
        if r["settings_hash"] == settings_hash:
            if any("program" not in x for x in r["samples"]):
                records[i] = dict(r, samples=[x if "program" in x else dict(x, program=program_of(x["key"]))
                                              for x in r["samples"]])
                upgraded = True
            continue
        changed = {x["key"]: now for x in r["samples"] if x["program"] != (now := program_of(x["key"]))}
        if inputs is not None:
            records[i] = r = dict(r, inputs=inputs)
        if changed:
            rewrite.append((i, changed))
        else:
            records[i] = dict(r, settings_hash=settings_hash, made_with=made)
    if not (upgraded or other or rewrite):
        return False
    if any(x.get("program", "") != program_of(x["key"]) for r in done[len(records):]
           if r["settings_hash"] != settings_hash for x in r["samples"]):
        begin_rewrite()  # (shards after a damaged one, redone from the videos with other targets than it names)

    def commit() -> None:
        atomic_write_text(progress_path, "".join(json_line(r) for r in records))

    commit()
    if other and not rewrite:
        notes.append("the program file changed since these shards were built, but not for a sample they hold: "
                     "they are kept")
    replaced = 0
    for n, (i, changed) in enumerate(rewrite):
        try:
            new = _rewrite_shard(out, records[i], changed, target_of)
        except ValueError:  # (a sample's bytes are not those its record says: redone from the videos, as _resume
            begin_rewrite()  # redoes a damaged shard and those after it, with other targets than the manifest names)
            records = records[:i]
            commit()
            rewrite = rewrite[:n]
            break
        update = out / f".{new['name']}.update"
        if new["sha256"] == records[i]["sha256"]:  # (no target changed: an invalid record now failed, say)
            update.unlink()
        else:
            try:
                begin_rewrite()
            except BaseException:  # (a training reads the folder: refused, its old tar kept)
                update.unlink()
                raise
        records[i] = dict(new, settings_hash=settings_hash, made_with=made)
        commit()
        if update.exists():
            os.replace(update, out / new["name"])
            rewritten.add(new["name"])
            replaced += 1
    if rewrite:
        notes.append(f"the programs of {counted(sum(len(c) for _, c in rewrite), 'sample')} already written changed, "
                     f"in {counted(len(rewrite), 'shard')} (e.g. {next(iter(rewrite[0][1]))}): "
                     + (f"{'it was' if replaced == 1 else f'{replaced} were'} rewritten with the new program targets, "
                        "the frames copied as they were (no video decoded again)" if replaced else
                        "no target changed, no shard rewritten"))
    return True


def _renewed(out: Path, progress_path: Path, prefix: str, done: list[dict], settings_hash: str, made: dict[str, str],
             program_of: Callable[[str], str | None], target_of: Callable[[str], dict | None],
             begin_rewrite: Callable[[], None], notes: list[str], inputs: dict | None,
             mp4_stat: Callable[[str], tuple[Path, int, int] | None] | None,
             cache: FrameCache | None = None, rewritten: set[str] | None = None) -> bool:
    """``_resume``'s ``renew``: ``_renew`` (the programs, and a rewrite a kill interrupted), then ``_drop_replaced``
    over the records it leaves (where the opener can stat MP4s; ``cache``: the frame cache build-shards reads, for an
    earlier leap's records, ``_sizes_read``); the names of the tars they rewrite go to ``rewritten``. Whether the
    progress file was written."""
    renewed = _renew(out, progress_path, prefix, done, settings_hash, made, program_of, target_of, begin_rewrite,
                     notes, inputs, rewritten)
    if mp4_stat is None:
        return renewed
    if renewed:  # (the records as _renew wrote them: the last of each name, as the appender reads them)
        last = {r["name"]: r for r in read_jsonl(progress_path) if isinstance(r, dict) and "name" in r}
        done = sorted(last.values(), key=lambda r: r["index"])
    return (_drop_replaced(out, progress_path, done, settings_hash, mp4_stat, begin_rewrite, notes, cache, rewritten)
            or renewed)


def _rewrite_shard(out: Path, record: dict, changed: dict[str, str | None],
                   target_of: Callable[[str], dict | None],
                   drop: frozenset[str] | set[str] = frozenset()) -> dict:
    """The shard of ``record`` written again into ``.NAME.update`` (fsync'ed) with the samples of ``changed`` (key
    -> program hash now) given their targets now: of each, its ``json`` alone is made again, its frames are copied
    as the tar holds them. Returns the shard's new record (its bytes, sha256 and samples' entries). ValueError: a
    sample's bytes are not those its entry says (the shard is damaged)."""
    from leap_cli.shards.format import group_sample, parse_members

    name = record["name"]
    tmp = out / f".{name}.update"
    samples, pos = [], 0
    try:
        with open(out / name, "rb") as src, open(tmp, "wb") as dst:
            for x in record["samples"]:
                src.seek(x["offset"])
                data = src.read(x["size"])
                if len(data) != x["size"] or (x.get("crc32") is not None and zlib.crc32(data) != x["crc32"]):
                    raise ValueError(f"{name}: sample {x['key']} is damaged")
                if x["key"] in drop:  # (taken out: _drop_replaced)
                    continue
                x = dict(x)
                if x["key"] in changed:
                    key, fields = group_sample(parse_members(data))
                    rec = json.loads(fields["json"])
                    tgt = target_of(key)
                    rec["has_program"], rec["targets"] = tgt is not None, tgt
                    fields["json"] = json.dumps(rec, ensure_ascii=False, sort_keys=True).encode("utf-8")
                    data = sample_bytes(key, fields)
                    x.update(has_program=tgt is not None, program=changed[key])
                x.update(offset=pos, size=len(data), crc32=zlib.crc32(data))
                samples.append(x)
                dst.write(data)
                pos += len(data)
            dst.write(tar_end())
            dst.flush()
            os.fsync(dst.fileno())
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise with_path(e, out / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dict(record, bytes=tmp.stat().st_size, sha256=sha256_file(tmp), samples=samples)


def _drop_replaced(out: Path, progress_path: Path, done: list[dict], settings_hash: str,
                   mp4_stat: Callable[[str], tuple[Path, int, int] | None], begin_rewrite: Callable[[], None],
                   notes: list[str], cache: FrameCache | None = None, rewritten: set[str] | None = None) -> bool:
    """Take out of their shards the samples read from an MP4 whose size differs now from the one their shard's
    progress record keeps (``video_sizes``: the video downloaded again since), so that they are to do and are written
    from the new file into new shards. Its mtime alone is no reason (a copy), nor a video not there now; a record
    that keeps no size (a leap before 2026-12-07) first takes the sizes ``_sizes_read`` tells (written once, with
    the rewrites' commit), and an rgb_frames folder, which has none, is kept. Each such shard is written again
    without them by ``_rewrite_shard`` (the other samples' bytes copied; a shard left empty is kept, an empty tar
    the readers pass over, until the sink fills it: ``_ShardSink._refill``) and committed as ``_renew`` commits a
    rewrite (``.NAME.update``, then the progress file, then the rename; its first run finishes a kill's), after
    ``begin_rewrite()``. Only over the intact records of this run's settings (others are refused by ``_resume``).
    One ``mp4_stat`` per video. Returns whether the progress file was written; the note is added to ``notes``, the
    names of the tars renamed over to ``rewritten``."""
    from leap_cli.io import atomic_write_text

    if any(r["settings_hash"] != settings_hash for r in done):
        return False
    records = _intact(out, done)  # (as _resume keeps them)
    now: dict[str, tuple[Path, int, int] | None] = {}
    drop: list[tuple[int, dict[str, tuple[int, int]]]] = []  # (index, {video: (size kept, size now)})
    adopted = False
    for i, r in enumerate(records):
        held = r.get("video_sizes")
        if not isinstance(held, dict):  # (a leap before 2026-12-07: the sizes read, where known, taken once)
            for vid in dict.fromkeys(x["video"] for x in r["samples"] if x.get("video")):
                if vid not in now:
                    now[vid] = mp4_stat(vid)
            held = _sizes_read(out / r["name"], {x["video"] for x in r["samples"] if x.get("video")}, now, cache)
            if not held:  # (none known: kept as it was, asked again by the next run)
                continue
            records[i] = dict(r, video_sizes=held)
            adopted = True
        moved = {}
        for vid, was in held.items():
            if vid not in now:
                now[vid] = mp4_stat(vid)
            if now[vid] is not None and now[vid][1] != was:
                moved[vid] = (was, now[vid][1])
        if moved:
            drop.append((i, moved))

    def commit() -> None:
        atomic_write_text(progress_path, "".join(json_line(r) for r in records))

    if not drop:
        if adopted:
            commit()
        return adopted

    begin_rewrite()  # (the manifest names the old bytes: deleted first, readers refused from here)
    taken, videos = 0, {}
    for i, moved in drop:
        keys = {x["key"] for x in records[i]["samples"] if x.get("video") in moved}
        try:
            new = _rewrite_shard(out, records[i], {}, lambda key: None, drop=keys)
        except ValueError:  # (a sample's bytes are not those its record says: redone from the videos, as _resume
            records = records[:i]  # redoes a damaged shard and those after it)
            commit()
            break
        sizes = {v: size for v, size in records[i]["video_sizes"].items() if v not in moved}
        records[i] = {**{k: v for k, v in new.items() if k != "video_sizes"}, "count": len(new["samples"]),
                      **({"video_sizes": sizes} if sizes else {})}
        commit()
        os.replace(out / f".{new['name']}.update", out / new["name"])
        if rewritten is not None:
            rewritten.add(new["name"])
        taken += len(keys)
        videos.update(moved)
    if taken:
        vid, (was, size) = next(iter(videos.items()))
        more = len(videos) - 1
        notes.append(f"{counted(taken, 'sample')} {'was' if taken == 1 else 'were'} written from a video that has "
                     f"changed since ({now[vid][0]}: size {was} -> {size} bytes"
                     + (f", and {counted(more, 'other video')}" if more else "")
                     + "): taken out of their shards, to be made again from the new file")  # (its skips said apart)
    return True


def _sizes_read(tar: Path, videos: set[str], now: dict[str, tuple[Path, int, int] | None],
                cache: FrameCache | None) -> dict[str, int]:
    """For the progress record of ``tar`` made by a leap that kept no ``video_sizes`` (before 2026-12-07): the size of
    each MP4 of ``videos`` its samples were read from, as far as is known (``now``: ``mp4_stat`` of each). Where the
    frame cache build-shards reads tells another size (``FrameCache.made_from_size``: its entries' source, or the
    source that a claim after the tar was written replaced), that one (the samples are then taken out and written
    again); else, where the MP4 is older than the tar (it was there, unchanged, before the tar was written), its size
    now; else (newer: a file downloaded again since, or a copy that gave every file a new mtime) none, the video's
    samples kept unchecked. An rgb_frames folder or a video not there now has none either. One stat of the tar."""
    try:
        written = tar.stat().st_mtime_ns
    except OSError:
        return {}
    sizes = {}
    for vid in sorted(videos):
        if (st := now.get(vid)) is None:
            continue
        older = len(st) > 2 and st[2] < written  # (an opener's mp4_stat without the mtime: not known)
        was = cache.made_from_size(vid, st[1], written) if cache is not None else None
        if was is not None or older:
            sizes[vid] = st[1] if was is None else was
    return sizes


@contextmanager
def _folder_lock(folder: Path):
    """An exclusive flock on the folder itself, waited for, held for a moment: the check of the parts' count and the
    progress file that marks this part begun, as one step; a part's deletion of the manifests before its first
    rewrite (``begin_rewrite``) and another part's merge of the parts' manifests into ``manifest.json``, each as one
    step (the merge read a part's manifest, the part deleted it and ``manifest.json`` and rewrote its tar, and the
    merge wrote a ``manifest.json`` naming the part's old bytes). No file of its own in the folder; a file system
    that locks no folder takes none."""
    import fcntl

    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        fd = None
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:
                pass
        yield
    finally:
        if fd is not None:
            os.close(fd)


def build_shards(segments: list[Segment], *, out: str | Path, **kw) -> BuildResult:
    """Write the shards of ``segments`` into ``out`` and return the manifest (``_build_shards``); no shard is
    written or deleted while a leap train or evaluate reads the folder (``io.ShardReaders``)."""
    gate = ShardReaders(Path(out))
    Path(out).mkdir(parents=True, exist_ok=True)
    gate.make_files()
    try:
        return _build_shards(segments, out=out, gate=gate, **kw)
    finally:
        gate.release()


def _build_shards(segments: list[Segment], *, out: str | Path, settings: ShardSettings, opener: FrameOpener,
                  fps: Callable[[str], float], programs: list[dict] | None = None,
                  programs_path: str | Path | None = None, targets: TargetEncoder | None = None,
                  sources: dict | None = None, workers: int = 1, shard: ShardSpec = ShardSpec(),
                  overwrite: bool = False, progress: Callable[[int, int], None] | None = None,
                  clock: Callable[[str], FrameClock] | None = None, cache: FrameCache | None = None,
                  program_failures: list[dict] | None = None, adopt: dict | None = None,
                  gate: ShardReaders, inputs: dict | None = None) -> BuildResult:
    """Write the shards of ``segments`` into ``out`` and return the manifest.

    ``clock(video_id)``: the timing rule of each video's source (default: an MP4 at ``fps``); ``cache``:
    extract's frame cache, read instead of decoding where it holds a sample's frames.

    ``programs`` are program records (None: no program file, every sample ``has_program: false``);
    ``targets`` encodes valid programs; ``program_failures`` (``programs.report.revalidated``'s) are listed in the
    manifest under ``programs.failed_validation``; ``sources`` (hashes of the inputs) goes into the manifest and the
    settings hash, so a re-run with other inputs refuses to mix shards; ``adopt``: sources as an earlier leap
    hashed them, kept where this folder's shards were built with them (``_adopted``). ``progress(done, total)``
    is called after each segment.
    """
    out = Path(out)  # (made by build_shards)
    notes: list[str] = []
    selected = shard.select(segments, key=lambda s: s.video_id)
    by_key = {s.narration_id: s for s in selected}
    if len(by_key) != len(selected):
        dup = Counter(s.narration_id for s in selected).most_common(1)[0][0]
        raise LeapError(f"narration id {dup} appears twice in the split", record=dup, fix="remove the duplicate row")
    prog_by_id: dict[str, dict] = {}
    prog_report = None
    if programs is not None:
        prog_by_id, prog_report = match_programs(programs, {s.narration_id for s in segments},
                                                 programs_path or "programs")
        prog_report["prompt_version"] = prompt_version(programs_path)
        prog_report["failed_validation"] = list(program_failures or [])
        if prog_report["unknown_ids"]:
            notes.append(f"{prog_report['unknown_ids']} program records name narration ids not in the split "
                         f"(e.g. {', '.join(prog_report['unknown_examples'][:3])})")
        lacking = [s.narration_id for s in selected if s.narration_id not in prog_by_id]
        if lacking:  # (a program file merged from some of its parts, a generation stopped early: said only in a count)
            from leap_cli.io import part_of

            part = part_of(programs_path) if programs_path and shard.count == 1 else None  # (not a part of its own)
            one = len(lacking) == 1
            notes.append(f"{len(lacking)} of the {counted(len(selected), 'segment')} {'has' if one else 'have'} no "
                         f"record in {programs_path or 'the program file'} (e.g. {lacking[0]}): "
                         f"{'its sample has' if one else 'their samples have'} no program target; "
                         + (f"it is generate-programs' part {part[0]}/{part[1]}: give the merged file "
                            f"(or build-shards --shard i/{part[1]} with each part's), then "
                            f"{build_again(settings.split)}" if part is not None else
                            f"generate-programs makes {'it' if one else 'them'} (then {build_again(settings.split)})"))
    else:
        notes.append("no program file: every sample has has_program: false")
    targets_manifest = targets.manifest() if targets is not None else None

    from leap_cli.epic.timing import RGB_FRAMES

    def frame_folders(video_id: str) -> bool:
        try:
            return clock is not None and clock(video_id).kind == RGB_FRAMES
        except LeapError:  # (no fps: its segments are skipped)
            return False

    progress_path = out / f".progress{shard.suffix}.jsonl"
    # (over the split's videos, not the part's: every --shard part keeps the same settings, or they are not merged)
    settings_made = made_settings(settings, rule=settings.task != "anticipation" or settings.context_mode != "segments"
                                  or _rule_of(out, progress_path, overwrite,
                                              any(frame_folders(v) for v in {s.video_id for s in segments}),
                                              shard.suffix))

    def hash_of(sources: dict) -> str:
        return stable_hash({"format": FORMAT, "settings": settings_made, "upscale": False, "sources": sources,
                            "targets": targets_manifest, "shard": [shard.index, shard.count]})

    missing_manifest = not (out / manifest_name(shard.suffix)).exists()
    sources = _adopted(out, progress_path, out / manifest_name(shard.suffix), dict(sources or {}), adopt, hash_of,
                       overwrite)
    settings_hash = hash_of(sources)

    now = made_with({"format": FORMAT, "split": settings.split, "task": settings.task, "targets": targets_manifest,
                     "settings": json.loads(json.dumps(settings_made)), "sources": sources})
    if shard.count == 1 and not overwrite and (
            done := _built_in_parts(out, now, _video_changed(opener, by_key), getattr(opener, "mp4_stat", None))):
        return done

    def frame_count(video_id: str) -> int | None:
        try:
            reader = opener(video_id)
        except Exception:  # noqa: BLE001 - not counted: encode_video says why it cannot be read
            return None
        close = getattr(reader, "close", None)
        try:
            return getattr(reader, "num_frames", None)
        finally:
            if close:
                close()

    jobs, sampling, skipped = plan_samples(selected, fps, settings, clock, frame_count)

    with _folder_lock(out):  # (two parts of other counts that start together: one sees the other's progress file)
        check_part_count(out, shard.count)  # before --force deletes anything (it deleted the parts' merged manifest)
        if overwrite:  # under the lock: never the shards of a build still running, nor of a training
            gate.write()
            with OutputLock(progress_path):
                merged_manifest = [out / manifest_name()] if shard.count > 1 else []  # it names this part's old tars
                for p in (list(out.glob(f"leap-{settings.split}{shard.suffix}-*.tar"))
                          + [progress_path, out / manifest_name(shard.suffix)] + merged_manifest):
                    if p.exists():
                        p.unlink()
        progress_path.touch()  # this part begun, for check_part_count (the appender opens it below)
    video_changed = _video_changed(opener, by_key)
    retried: set[str] = set()  # skips tried again: their video changed since

    def changed(skip: dict) -> bool:
        if video_changed(skip):
            retried.add(skip["narration_id"])
            return True
        return False

    made = {k: stable_hash(v)[:16] for k, v in now.items()}  # each key's value as a shard's progress record holds it

    def changed_keys(other: list[dict]) -> list[str]:
        """What differs from what the shards of other settings were made with: their progress records' (a run
        killed before the part's manifest was written), else the part's last manifest."""
        was = next((r["made_with"] for r in other if isinstance(r.get("made_with"), dict)), None)
        if was is not None:  # (a key an earlier leap did not keep is not compared, but a rule's: its absence is the
            return sorted(k for k in made if (k in was or k in RULES) and was.get(k) != made[k])  # old rule)
        try:
            old = json.loads((out / manifest_name(shard.suffix)).read_text())
        except (OSError, ValueError):
            return []
        was = made_with(old)
        return sorted(k for k in now if (k in was or k in RULES) and was.get(k) != now[k])

    hashes: dict[str, str | None] = {}

    def program_of(key: str) -> str | None:
        if key not in hashes:
            hashes[key] = program_hash(prog_by_id.get(key))
        return hashes[key]

    def target_of(key: str) -> dict | None:
        """The sample's program targets (None: no valid program)."""
        prog = prog_by_id.get(key)
        if prog is not None and prog.get("status") == "valid" and prog.get("program") and targets:
            return targets.encode(prog["program"], key)
        return None

    rewriting: list[Path] = []  # the manifests deleted before the first shard is rewritten (they name its old bytes)

    def begin_rewrite() -> None:
        if not rewriting:
            gate.write()  # (readers refused from here; released by build_shards)
            rewriting.extend([out / manifest_name(shard.suffix)] + ([out / manifest_name()] if shard.count > 1 else []))
            with _folder_lock(out):  # (not amid another part's merge, which read this part's manifest: _folder_lock)
                for p in rewriting:
                    p.unlink(missing_ok=True)

    prefix = f"leap-{settings.split}{shard.suffix}"
    renewed: list[bool] = []  # (records of other programs were brought up to these: not the inputs of before)
    rewritten: set[str] = set()  # the kept shards' tars written again in place (the summary's "rewritten")

    def renew(done: list[dict]) -> bool:
        if _renewed(out, progress_path, prefix, done, settings_hash, made, program_of, target_of, begin_rewrite,
                    notes, inputs, getattr(opener, "mp4_stat", None), cache, rewritten):
            renewed.append(any(r["settings_hash"] != settings_hash for r in done))
            return True
        return False

    appender, kept = _resume(out, progress_path, settings_hash, prefix, changed, changed_keys, renew)
    done_keys = {x["key"] for r in kept for x in r["samples"]} | {x["narration_id"] for r in kept for x in r["skipped"]}

    # Skips found while planning are reported in segment order along with the frame failures.
    plan_skips = {x["narration_id"]: x for x in skipped}
    todo_jobs = []
    for job in jobs:
        rest = [s for s in job.samples if s.key not in done_keys]
        if rest:
            todo_jobs.append(VideoJob(job.video_id, rest, job.clock))
    total = len(selected)
    done_count = len(done_keys)
    if progress:
        progress(done_count, total)

    if todo_jobs:
        try:
            gate.write()
        except BaseException:
            appender.close()
            raise
    sink = _ShardSink(out, settings.split, shard.suffix, settings, appender, settings_hash, kept, made,
                      settings_made, inputs or {}, begin_rewrite)
    written = 0

    def emit_plan_skips(video_id: str) -> None:
        nonlocal done_count
        for x in [x for k, x in plan_skips.items() if by_key[k].video_id == video_id and k not in done_keys]:
            sink.skip(x)
            done_count += 1
        for k in [k for k, x in plan_skips.items() if by_key[k].video_id == video_id]:
            del plan_skips[k]

    try:
        results: Iterable
        if workers > 1 and len(todo_jobs) > 1:
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
            warn_small_address_space(min(workers, len(todo_jobs)))
            pool = new_pool(ctx, min(workers, len(todo_jobs)), start_pool_worker,
                            (_init_worker, opener, settings, cache, os.getpid()))
            results = pool_results(pool, pool.imap(_work, todo_jobs, chunksize=1))
        else:
            pool = None
            results = (_encode(j, opener, settings, cache) for j in todo_jobs)
        try:
            for job, (encoded, video_size) in zip(todo_jobs, results):
                emit_plan_skips(job.video_id)
                for key, fields in encoded:
                    seg = by_key[key]
                    if isinstance(fields, Skipped):
                        sink.skip(fields.entry(key))
                    else:
                        rec = _labels(seg, fps(seg.video_id) if _has_fps(fps, seg.video_id) else None)
                        rec["task"] = settings.task
                        rec.update(sampling[key])
                        tgt = target_of(key)
                        rec["has_program"] = tgt is not None
                        rec["targets"] = tgt
                        fields["json"] = json.dumps(rec, ensure_ascii=False, sort_keys=True).encode("utf-8")
                        entry = {"verb_class": seg.verb_class, "noun_class": seg.noun_class,
                                 "has_program": tgt is not None, "video": seg.video_id,
                                 "frame_size": list(jpeg_size(fields[frame_field(0)])),
                                 "frames_crc32": frames_crc(fields),  # (the frames alone: samples_provenance)
                                 "program": program_of(key)}  # (what a later run compares: _renew)
                        if rec.get("blank"):  # (anticipation: no frame to observe before the action)
                            entry["blank"] = True
                        sink.add(key, sample_bytes(key, fields), entry, video_size)
                        written += 1
                    done_count += 1
                    if progress:
                        progress(done_count, total)
            if pool is not None:  # (stop_pool on the way out of every build waited out its 10 s grace: --workers 2
                pool.close()  # took 11.6 s where 1 took 2.5)
                pool.join()
        except BaseException:
            if pool is not None:
                stop_pool(pool)
            raise
        for vid in sorted({by_key[k].video_id for k in plan_skips}):
            emit_plan_skips(vid)
        trailing = sink.finish()
        shards = sorted({r["index"]: r for r in kept + sink.completed}.values(), key=lambda r: r["index"])  # (refilled)
        if trailing and shards:  # skips after the last shard go with it, so a re-run does not read them again
            from leap_cli.io import atomic_write_text

            shards[-1] = dict(shards[-1], skipped=shards[-1]["skipped"] + trailing)
            trailing = []
            atomic_write_text(progress_path, "".join(json_line(r) for r in shards))
    except BaseException:
        sink.abort()
        sink.progress.close()  # (the appender, opened again where an empty shard was filled)
        raise
    sink.progress.close()
    if progress:
        progress(total, total)

    if retried:  # (it said "nothing new to write" after opening their videos again)
        one = len(retried) == 1
        notes.append(f"{counted(len(retried), 'segment')} skipped before {'was' if one else 'were'} tried again: "
                     f"{'its' if one else 'their'} video, or a frame file {'its' if one else 'their'} skip named, "
                     "changed since (or the skip was recorded by an earlier leap, which kept less of the files)")
    manifest = _manifest(settings, shards, trailing, sources, targets_manifest, prog_report, shard, len(selected),
                         settings_made)
    atomic_write_json(out / manifest_name(shard.suffix), manifest, if_changed=True)
    if shard.count > 1:  # the job that completes the set writes the merged manifest.json
        from leap_cli.shards.format import MANIFEST, PartsDiffer, merge_parts

        # the parts' manifests read and the merged one written with no part's rewrite begun meanwhile (_folder_lock)
        with _folder_lock(out):
            try:
                merged = merge_parts(out, current=manifest_name(shard.suffix))
            except PartsDiffer as e:
                def programs_of(i: int):
                    try:
                        return json.loads((out / manifest_name(f".shard{i}of{shard.count}")).read_text())["sources"][
                            "programs"]
                    except (OSError, ValueError, KeyError, TypeError):
                        return None

                # (a part an earlier leap built from these programs, hashing the file, is rebuilt, as the error says;
                # the others' commands name this run's inputs: those a part began with may name the old program file)
                if getattr(e, "keys", None) != ["sources.programs"] or any(
                        v is not None and v == (adopt or {}).get("programs")
                        for v in [sources.get("programs")] + [programs_of(i) for i in e.parts]):
                    raise  # this part is kept; the set is not one split's shards until the others agree
                notes.append(f"part {shard.index}/{shard.count} done with these programs; manifest.json is written "
                             f"once the other parts have them too: "
                             + " and ".join(build_command(out, "--shard", f"{i}/{shard.count}", inputs=inputs,
                                                          part=f".shard{i}of{shard.count}") for i in e.parts)
                             + " (each rewrites only its shards whose samples' programs changed)")
            except LeapError:
                notes.append(f"part {shard.index}/{shard.count} done; manifest.json is written when all parts are")
            else:
                wrote = atomic_write_json(out / MANIFEST, merged, if_changed=True)
                notes.append(f"all {shard.count} parts done: merged manifest.json "
                             + ("written" if wrote else "as it was (nothing changed)"))
    new = {r["name"] for r in sink.completed}
    return BuildResult(out, manifest, written_now=written, resumed_shards=len(kept), written_shards=len(new),
                       rewritten_shards=len(rewritten - new), notes=notes,
                       manifest_was_missing=missing_manifest, rewritten=bool(rewriting), renewed=any(renewed))


def _video_changed(opener, segments: dict[str, Segment]) -> Callable[[dict], bool]:
    """A test of a skip record: whether it was made when its video was another file (downloaded again since, or
    there at last), or when the frame file it names was (``_frame_file_stat``). Each video's stat is read once."""
    stat = getattr(opener, "video_stat", None)
    frame_stat = getattr(opener, "frame_stat", None)
    stats: dict[str, list[int] | None] = {}

    def changed(skip: dict) -> bool:
        seg = segments.get(skip.get("narration_id")) if isinstance(skip, dict) else None
        if stat is None or seg is None or "video_stat" not in skip:
            return False
        if seg.video_id not in stats:
            stats[seg.video_id] = stat(seg.video_id)
        if stats[seg.video_id] != skip["video_stat"]:
            return True
        files = skip.get("frame_files")
        if files is None and str(skip.get("cause", "")).startswith("a frame file"):
            return True  # (an earlier leap's skip of a frame file kept no stat of it: tried once more, to know)
        return frame_stat is not None and isinstance(files, dict) and any(
            frame_stat(seg.video_id, str(name)) != held for name, held in files.items())

    return changed


def _built_in_parts(out: Path, now: dict, video_changed: Callable[[dict], bool],
                    mp4_stat: Callable[[str], tuple[Path, int, int] | None] | None = None) -> BuildResult | None:
    """A build without --shard over a folder whose --shard i/n parts are all done (manifest.json merged) from what
    this build would make them from (``now``: ``made_with``): nothing to do, as extract and generate-programs say on
    their merged files (the README's loop over the splits was refused after a sharded build). Parts all done from
    other inputs or settings, or holding skips whose video has changed since (a re-download the parts would try
    again), or samples read from an MP4 whose size differs now (``mp4_stat``: ``_drop_replaced``, which the parts'
    runs do), are a LeapError saying so; None otherwise: the caller refuses the parts as before."""
    from leap_cli.shards.format import MANIFEST, PACKING, part_counts

    counts = part_counts(out)
    if len(counts) != 1 or (out / ".progress.jsonl").exists():
        return None
    ((n, found),) = counts.items()
    if n < 2 or len(found) != n or any(count != n for _, count, _ in shard_parts(out / ".progress.jsonl")):
        return None
    try:
        merged = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(merged, dict) or len(merged.get("parts") or []) != n:
        return None
    was = made_with(merged)
    differ = sorted(k for k, v in now.items() if k not in PACKING and was.get(k) != v)
    if differ == ["sources.programs"]:  # (each part takes them, rewriting only its shards whose samples' changed)
        raise LeapError(f"holds this split built in {n} parts (--shard i/{n}, all done) from other programs", path=out,
                        fix=f"run build-shards --shard i/{n} for each part: each rewrites only its shards whose "
                            "samples' programs changed")
    if differ:
        raise LeapError(f"holds this split built in {n} parts (--shard i/{n}, all done) from other inputs or settings "
                        + differ_note([said(k) for k in differ]), path=out,
                        fix=f"rebuild each part with --force --shard i/{n}, or build into another --out (or delete the "
                            "folder to build it without --shard)")
    retry = []  # the parts holding a skip whose video changed since (re-downloaded): a part's run tries it again
    moved = []  # those holding samples read from an MP4 whose size differs now: a part's run writes them again
    sizes: dict[str, int | None] = {}

    def size_now(vid: str) -> int | None:
        if vid not in sizes:
            sizes[vid] = (mp4_stat(vid) or (None, None))[1] if mp4_stat is not None else None
        return sizes[vid]

    for i, path in sorted(found.items()):
        try:
            skipped = json.loads(path.read_text()).get("skipped") or []
        except (OSError, ValueError, AttributeError):
            continue
        if any(video_changed(x) for x in skipped):
            retry.append(i)
        elif mp4_stat is not None and any(
                isinstance(held := r.get("video_sizes"), dict)
                and any(size_now(v) not in (None, was) for v, was in held.items())
                for r in _records_of(out / f".progress.shard{i}of{n}.jsonl")):
            moved.append(i)
    if retry or moved:
        what = [f"part(s) {', '.join(map(str, parts))} {did} has changed since" for parts, did in (
            (retry, "skipped segments whose video"), (moved, "hold samples written from a video that")) if parts]
        retry = sorted(retry + moved)
        raise LeapError(f"holds this split built in {n} parts, and {' and '.join(what)} (downloaded again?)", path=out,
                        fix=" and ".join(build_command(out, "--shard", f"{i}/{n}", part=f".shard{i}of{n}") for i in retry)
                            + " tries them again")
    return BuildResult(out, merged, notes=[f"built before in {n} parts (--shard i/{n}), all done and merged into "
                                           "manifest.json with these settings and inputs: nothing new to write"])


def _records_of(progress_path: Path) -> list[dict]:
    """The records of a progress file ([] where it cannot be read: the part's own run says why)."""
    try:
        return [r for r in read_jsonl(progress_path) if isinstance(r, dict)]
    except (LeapError, OSError):
        return []


def _has_fps(fps: Callable[[str], float], vid: str) -> bool:
    try:
        fps(vid)
        return True
    except LeapError:
        return False


def _manifest(settings: ShardSettings, shards: list[dict], trailing: list[dict], sources: dict,
              targets_manifest: dict | None, prog_report: dict | None, shard: ShardSpec, segments: int,
              settings_made: dict) -> dict:
    samples = [x for r in shards for x in r["samples"]]
    skipped = [x for r in shards for x in r["skipped"]] + trailing
    hist = {}
    for name in ("verb_class", "noun_class"):
        c = Counter(x[name] for x in samples if x[name] is not None)
        hist[name] = {str(k): v for k, v in sorted(c.items())}
    with_prog = sum(1 for x in samples if x["has_program"])
    blank = sum(1 for x in samples if x.get("blank"))
    sampling = ("centres of T equal chunks of the observed clip (anticipation) (1-based frames)"
                if settings.task == "anticipation" else "centres of T equal chunks of the segment (1-based frames)")
    return {
        "format": FORMAT,
        "split": settings.split,
        "task": settings.task,
        "settings": {**settings_made, "sampling": sampling,
                     "jpeg": "RGB, short side resized to short_side by the frame reader, never upscaled: a source "
                             "whose short side is no larger is stored at its own size (frame_sizes)"},
        "part": {"index": shard.index, "count": shard.count},
        "counts": {"segments": segments, "samples": len(samples), "skipped": len(skipped),
                   "with_program": with_prog, "without_program": len(samples) - with_prog, "shards": len(shards),
                   **({"blank": blank} if settings.task == "anticipation" else {})},
        "histograms": hist,
        "frame_sizes": frame_sizes(samples),
        "targets": targets_manifest,
        "sources": sources,
        "programs": prog_report,
        "shards": [{"name": r["name"], "count": r["count"], "bytes": r["bytes"], "sha256": r["sha256"],
                    "keys": [x["key"] for x in r["samples"]], "offsets": [x["offset"] for x in r["samples"]],
                    "sizes": [x["size"] for x in r["samples"]],
                    # CRC-32 of each sample's bytes (None: written before leap stored them), checked at every read
                    "crc32s": [x.get("crc32") for x in r["samples"]],
                    # of each sample's frames alone (None: written before leap stored them): samples_provenance
                    "frames_crc32s": [x.get("frames_crc32") for x in r["samples"]]} for r in shards],
        "skipped": skipped,
    }


def frame_sizes(samples: list[dict]) -> dict[str, list[int]]:
    """{video: [width, height]} of the stored frames, from the samples' records (first sample of each video)."""
    out: dict[str, list[int]] = {}
    for x in samples:
        if x.get("video") is not None and x.get("frame_size"):
            out.setdefault(x["video"], x["frame_size"])
    return dict(sorted(out.items()))


def read_programs(path: str | Path | None) -> list[dict] | None:
    """The program records of ``path`` as generate-programs leaves them: of the lines of one narration id, the last
    (a line replaced by a later run); lines that are not records are kept for re-validation to name them."""
    if path is None or not Path(path).exists():
        return None
    records = read_jsonl(path)
    last = {r["narration_id"]: i for i, r in enumerate(records)
            if isinstance(r, dict) and isinstance(r.get("narration_id"), str)}
    return [r for i, r in enumerate(records)
            if not (isinstance(r, dict) and isinstance(r.get("narration_id"), str)) or last[r["narration_id"]] == i]


def input_hashes(files: dict[str, Path | None]) -> dict[str, Any]:
    """sha256 of each existing source file (annotations, class lists) for the manifest."""
    return {name: (sha256_file(p) if p is not None and Path(p).exists() else None) for name, p in files.items()}


def programs_digest(records: list) -> str:
    """sha256 of what shards take from program records (``read_programs``'): each record without its
    ``provenance`` (when, how fast, by which request it was made), in narration-id order. The same programs
    generated again (from the cache, by another worker count, in another order) are the same input: hashing the
    file's bytes refused to resume or merge shards built from them."""
    return _digest({k: v for k, v in r.items() if k != "provenance"} if isinstance(r, dict) else r for r in records)


def _digest(items) -> str:
    """sha256 of the items' canonical JSON lines, sorted: the same items in any order are the same input."""
    import hashlib

    h = hashlib.sha256()
    for line in sorted(json.dumps(x, sort_keys=True, separators=(",", ":"), ensure_ascii=False) for x in items):
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()


def _adopted(out: Path, progress_path: Path, own: Path, sources: dict, adopt: dict | None,
             hash_of: Callable[[dict], str], overwrite: bool) -> dict:
    """``sources`` with some of ``adopt``'s values (as an earlier leap hashed those inputs: the program file's or
    the split CSV's bytes; a folder built in between has one of each) where this part's shards were built with them
    (its progress names their settings hash), or, for a part built anew (none yet, or ``overwrite``), where the
    folder's other parts were (a manifest beside it holds their values and none holds ``sources``'): the folder
    resumes and its parts merge as before. Else ``sources``."""
    from itertools import combinations

    keys = sorted(k for k, v in (adopt or {}).items() if sources.get(k) != v)
    candidates = [sources] + [{**sources, **{k: adopt[k] for k in chosen}}  # (this leap's own values first)
                              for n in range(1, len(keys) + 1) for chosen in combinations(keys, n)]
    if len(candidates) == 1:
        return sources
    if not overwrite and progress_path.exists():
        try:
            built = {r.get("settings_hash") for r in read_jsonl(progress_path) if isinstance(r, dict)}
        except LeapError:
            built = set()  # (a damaged progress file: _resume says so)
        for c in candidates:
            if hash_of(c) in built:
                return c
    made = []
    for path in out.glob("manifest*.json"):
        if path == own and overwrite:  # (rebuilt now)
            continue
        try:
            made.append(json.loads(path.read_text()).get("sources") or {})
        except (OSError, ValueError, AttributeError):
            continue
    for c in candidates:
        if any(all(m.get(k) == c.get(k) for k in keys) for m in made):
            return c
    # no build holds all of one candidate's values: the one that agrees with a build on most inputs (an earlier
    # leap's hash of an unchanged CSV is kept), so that the refusal names only the inputs that changed
    return max(candidates, key=lambda c: max((sum(m.get(k) == c.get(k) for k in keys) for m in made), default=0))


def annotations_digest(segments: list[Segment]) -> str:
    """sha256 of what shards take from the split CSV: each segment's row as read (``Segment.to_dict``, without the
    narration timestamp, which no sample holds), in narration-id order. The CSV saved again with the same values
    (other quoting, line ends, decimals, row order) is the same input: hashing its bytes refused the shards."""
    # (the fields as they are: JSON writes the tuples as lists, as to_dict would; its deep copy was 4.6 s of 5.5 at 67k)
    return _digest({k: v for k, v in vars(s).items() if k != "narration_timestamp"} for s in segments)


# ---- from a dataset root: what ``leap build-shards`` calls --------------------------------------------


class LayoutOpener:
    """Picklable ``video_id -> frame reader`` over a dataset root (MP4, else rgb_frames)."""

    def __init__(self, root: str | Path, annotations_dir: str | Path, fps: dict[str, float] | None = None,
                 beside: tuple[Path, ...] = ()):
        self.root, self.annotations_dir, self.fps = Path(root), Path(annotations_dir), dict(fps or {})
        self.beside = tuple(Path(p) for p in beside)  # (``DatasetLayout.beside``)

    def _layout(self):
        from leap_cli.epic.layout import DatasetLayout

        return DatasetLayout(self.root, self.annotations_dir, self.beside)

    def __call__(self, video_id: str) -> FrameReader:
        from leap_cli.media.video import open_video

        return open_video(self._layout(), video_id, self.fps.get(video_id))

    def is_mp4(self, video_id: str) -> bool:
        """Whether the video's frames come from an MP4 (else an rgb_frames folder, or nothing)."""
        return self._layout().video_path(video_id) is not None

    def video_stat(self, video_id: str) -> list[int] | None:
        """``file_stat`` of the video's source, its MP4 or rgb_frames folder (``DatasetLayout.source_stat`` and the
        inode's change time: a fix that keeps size and mtime, such as chmod a+r or the frames' tar extracted again,
        which sets the folder's mtime back, still changes it, so a skip for it is tried again)."""
        return self._layout().video_stat(video_id)

    def mp4_stat(self, video_id: str) -> tuple[Path, int, int] | None:
        """The video's MP4, its size and mtime_ns (None: it has none now, an rgb_frames folder, or it cannot be
        stat'ed)."""
        path = self._layout().video_path(video_id)
        stat = file_stat(path) if path is not None else None
        return (path, stat[0], stat[1]) if stat is not None else None

    def frame_stat(self, video_id: str, name: str) -> list[int] | None:
        """``file_stat`` of the file ``name`` in the video's rgb_frames folder (None: no such folder or file)."""
        folder = self._layout().frames_dir(video_id)
        return file_stat(folder / Path(name).name) if folder is not None else None


class ProgramTargets:
    """``TargetEncoder`` over the programs engineer's ``TargetVocab``/``encode_program``. A program that
    does not encode (a verb or object outside the class files) gets no targets and is counted."""

    def __init__(self, vocab):
        self.vocab = vocab
        self.failed: list[dict] = []
        self.cut: list[tuple[str | None, int]] = []  # (sample key, its rows): longer than max_steps, so cut
        # condition mentions of the encoded programs, and those outside the vocabulary (left out of the targets)
        self.conditions, self.dropped, self.dropped_example = 0, 0, None

    def encode(self, program: dict, key: str | None = None) -> dict | None:
        from leap_cli.programs.targets import encode_program, iter_tokens

        try:
            encoded = encode_program(program, self.vocab, self.vocab.max_steps)
        except LeapError as e:
            self.failed.append({"narration": (program.get("action") or {}).get("narration"), "error": e.message})
            return None
        tokens = list(iter_tokens(program.get("steps") or []))
        if len(tokens) + 1 > len(encoded["steps"]):  # (+ END)
            self.cut.append((key, len(tokens) + 1))
        conds = [c for _, _, pre, post in tokens for c in (pre or []) + (post or [])]
        conds += (program.get("pre") or []) + (program.get("post") or [])
        missing = [c for c in conds if self.vocab.condition_id(c) is None]
        self.conditions += len(conds)
        self.dropped += len(missing)
        if missing and self.dropped_example is None:
            self.dropped_example = (key, missing[0])
        return encoded

    def manifest(self) -> dict:
        return self.vocab.to_manifest()


def programs_behind_clips(programs: list[dict], prog_path: Path, descriptors: Path,
                          segments: dict[str, Segment]) -> list[str]:
    """The narration ids of the program records whose clip (``provenance.clip_hash``, generate-programs' own
    ``clip_hash``) is not the one ``descriptors`` holds now: extract made their records again since. Only where the
    program file says it was made from descriptors of the settings ``descriptors`` has (else it was made from
    another file, or the narrations alone, and nothing is compared); [] where either file is not there. Without
    ``descriptors``, its ``--shard`` parts are read (extract's parts of a job array, left unmerged: build-shards
    needs only the programs merged)."""
    from leap_cli.io import stored_settings
    from leap_cli.programs.provenance import clip_hash_of, descriptor_settings

    files = [descriptors] if descriptors.is_file() else [p for _, _, p in shard_parts(descriptors) if p.is_file()]
    if not files:
        return []
    try:
        made_from = (stored_settings(prog_path) or {}).get("descriptors")
        extracted = descriptor_settings(descriptors)
    except LeapError:
        return []
    if not isinstance(made_from, dict) or made_from != extracted:
        return []
    wanted = {r.get("narration_id"): r["provenance"]["clip_hash"] for r in programs
              if isinstance(r, dict) and isinstance(r.get("provenance"), dict) and "clip_hash" in r["provenance"]}
    if not wanted:  # (records of a leap that kept no clip hash: the descriptor file is not read)
        return []
    texts: dict[str, object] = {}
    try:
        for path in files:
            for _, r in iter_jsonl(path):  # (a line cut by a crash is dropped; extract cuts it on its next open)
                if isinstance(r, dict) and r.get("narration_id") in wanted:
                    texts[r["narration_id"]] = r.get("text")  # (the last record of an id is its record)
    except (LeapError, OSError, UnicodeDecodeError):  # (extract and generate-programs say what is wrong with it)
        return []
    return [nid for nid, h in wanted.items()
            if nid in texts and nid in segments and clip_hash_of(texts[nid], segments[nid]) != h]


def _generate_command(split: str, workdir: Path, data: str | Path, annotations: str | Path | None,
                      programs: Path) -> str:
    """The ``leap generate-programs`` that makes ``programs`` (of ``split``) again from the work directory's
    descriptors, with the inputs build-shards was given otherwise than by default."""
    from leap_cli.common import DEFAULT_WORKDIR

    words = ["leap generate-programs --split", split]
    if os.path.abspath(workdir) != os.path.abspath(DEFAULT_WORKDIR):
        words += ["--workdir", shell_word(workdir)]
    if annotations is not None:
        words += ["--annotations", shell_word(annotations)]
    elif os.path.abspath(data) != os.path.abspath(workdir / "kitchen"):
        words += ["--data", shell_word(data)]
    if os.path.abspath(programs) != os.path.abspath(workdir / "programs" / f"{split}.jsonl"):
        words += ["--out", shell_word(programs)]
    return " ".join(words)


def default_out(workdir: str | Path, split: str, task: str) -> Path:
    check_task(task)  # (any other word was read as anticipation's folder)
    return Path(workdir) / "shards" / (split if task == "recognition" else f"{split}-anticipation")


def build_split(data: str | Path, split: str, *, workdir: str | Path, settings: ShardSettings,
                programs_path: str | Path | None = None, out: str | Path | None = None,
                annotations: str | Path | None = None, vocab_manifest: str | Path | None = None,
                max_steps: int | None = None, max_conditions: int | None = None, workers: int = 1,
                shard: ShardSpec = ShardSpec(), overwrite: bool = False,
                progress: Callable[[int, int], None] | None = None,
                frame_cache: str | Path | None = None) -> BuildResult:
    """Resolve the inputs of one split (defaults under ``workdir``), build the target vocabulary and write
    the shards. The vocabulary comes from ``vocab_manifest`` when given, else (val/test) from the train
    shards' manifest when it exists so ids agree between splits, else from the train programs."""
    from leap_cli.epic.layout import DatasetLayout
    from leap_cli.epic.annotations import NOUN_CLASSES, VERB_CLASSES
    from leap_cli.programs.targets import DEFAULT_MAX_CONDITIONS, DEFAULT_MAX_STEPS, TargetVocab

    layout = DatasetLayout.open(data, annotations)
    ann = layout.annotations()
    if not ann.has_split(split):
        raise LeapError(f"no annotation file for split {split}", path=ann.split_path(split),
                        fix="check --data/--annotations or the split name")
    segments = ann.segments(split)
    workdir = Path(workdir)
    out = Path(out) if out else default_out(workdir, split, settings.task)
    prog_path = merged_input(programs_path or workdir / "programs" / f"{split}.jsonl")
    if programs_path and not prog_path.exists():
        raise LeapError("program file not found", path=prog_path, fix="run leap generate-programs or fix --programs")
    programs = read_programs(prog_path)
    digest = programs_digest(programs) if programs is not None else None
    notes: list[str] = []
    if programs is not None and (who := writer_of(prog_path)):  # (samples of the rest would have no program)
        notes.append(f"{prog_path} is still being written by {who}: its {counted(len(programs), 'record')} so far "
                     f"{'is' if len(programs) == 1 else 'are'} used; "
                     f"once generate-programs has finished, run {build_again(split)}")
    from leap_cli.programs.generate import batch_pending, batch_pending_path

    pending = batch_pending(prog_path)
    have = {r.get("narration_id") for r in programs or () if isinstance(r, dict)}
    if waiting := set(pending["ids"]) - have:  # (a --batch-file run's segments: "no program file" alone did not say
        # that their programs are on their way)
        one = len(waiting) == 1
        notes.append(f"the program{'' if one else 's'} of {counted(len(waiting), 'segment')} wait{'s' if one else ''} "
                     f"in Batch requests written {pending['written']} ({batch_pending_path(prog_path).name}): "
                     f"{'its sample has' if one else 'their samples have'} no program target; ingest the "
                     f"batch's results (leap generate-programs --ingest-batch FILE), then {build_again(split)}")
    failures: list[dict] = []
    if programs is not None:
        # "valid" in a file is not trusted (a tampered or hand-edited file, another split's programs): each is checked
        # again with generate-programs' own validation (programs.validate.check_program, the segment's labels included)
        from leap_cli.programs.report import revalidated

        lines = len(programs)
        programs, failures = revalidated(programs, ann.verbs, ann.nouns, {s.narration_id: s for s in segments})
        if lines and not programs:  # (descriptors given as --programs: every sample would train without a program)
            raise LeapError(f"no program record among its {counted(lines, 'line')}: {failures[0]['reason']}",
                            path=prog_path,
                            fix="give --programs the output of leap generate-programs (programs/SPLIT.jsonl)")
        if failures:
            shown = "; ".join(f"{x['narration_id'] or prog_path.name}: {x['reason']}" for x in failures[:3])
            notes.append(f"{counted(len(failures), 'program record')} failed re-validation (listed in the manifest "
                         "under programs.failed_validation; "
                         f"{'its sample has' if len(failures) == 1 else 'their samples have'} no program): {shown}"
                         + (" ..." if len(failures) > 3 else ""))

    descriptors = workdir / "descriptors" / f"{split}.jsonl"
    if programs and (behind := programs_behind_clips(programs, prog_path, descriptors,
                                                      {s.narration_id: s for s in segments})):
        # (a video downloaded again: extract --retry-errors made its records again, and the samples it had skipped
        # were written now with the programs of the cut video's clip text, without a word)
        held = descriptors if descriptors.is_file() else f"the --shard parts of {descriptors}"
        one = len(behind) == 1
        notes.append(f"{counted(len(behind), 'program record')} of {prog_path} {'was' if one else 'were'} made from a "
                     f"clip text that {held} no longer holds (e.g. {behind[0]}: extract made its record again, as "
                     f"after a video downloaded again): {'its sample carries' if one else 'their samples carry'} the "
                     "old clip's program; run "
                     f"{_generate_command(split, workdir, data, annotations, prog_path)} (it asks again for those "
                     f"alone), then {build_again(split)}")
    vocab = None
    # the training shards of the same task: an anticipation split's vocabulary is train-anticipation's (the
    # recognition shards' may come from other programs or --max-conditions)
    train_manifest = (Path(vocab_manifest) if vocab_manifest
                      else default_out(workdir, "train", settings.task) / "manifest.json")
    in_parts = False  # the training shards' parts are all done, their merged manifest.json not (yet) written
    if split != "train" and not vocab_manifest and not train_manifest.exists():
        if (who := writer_of(train_manifest.parent / ".progress.jsonl")) is not None:  # (a build of the whole split,
            # running: this split got the class files' vocabulary, which training then refused beside theirs)
            raise LeapError(f"the training shards are being built ({who}), no manifest.json yet: this split's target "
                            "vocabulary must be theirs", path=train_manifest.parent,
                            fix="build this split once that build is done, or give --vocab the manifest.json of the "
                                "training shards to share")
        done = shard_parts(train_manifest)
        begun = done + shard_parts(train_manifest.parent / ".progress.jsonl")
        n = max((n for _, n, _ in begun), default=0)
        in_parts = bool(done) and {i for i, k, _ in done if k == n} == set(range(n))
        if begun and not in_parts:  # (two Slurm arrays at once: the val shards got the class files' vocabulary)
            finished = sum(k == n for _, k, _ in done)
            raise LeapError(f"the training shards are still in --shard parts ({finished} of {n} done, no merged "
                            "manifest.json yet): this split's target vocabulary must be theirs",
                            path=train_manifest.parent,
                            fix="build this split once every training part is done (the last one writes "
                                "manifest.json), or give --vocab the manifest.json of the training shards to share")
    if vocab_manifest or (split != "train" and (train_manifest.exists() or in_parts)):
        from leap_cli.shards.format import load_manifest

        try:
            m, _ = load_manifest(train_manifest)
        except LeapError as e:
            if not vocab_manifest:
                raise
            raise LeapError(f"--vocab: {e.message}", path=train_manifest,
                            fix="give --vocab the manifest.json of the training shards whose vocabulary these shards "
                                "share (e.g. WORKDIR/shards/train/manifest.json)") from None
        if m.get("targets"):
            vocab = TargetVocab.from_manifest(m["targets"], ann.verbs, ann.nouns)
            notes.append(f"target vocabulary from {train_manifest}")
            # (unheard before: a val build with --max-steps 3 kept the training shards' 6 steps without a word)
            other = []
            if max_steps is not None and max_steps != vocab.max_steps:
                other.append(f"--max-steps {max_steps} (it holds {vocab.max_steps})")
            if max_conditions is not None and max_conditions < len(vocab.conditions):
                other.append(f"--max-conditions {max_conditions} (it holds {len(vocab.conditions)})")
            if other:
                raise LeapError(f"{' and '.join(other)}: this build shares the target vocabulary of {train_manifest}, "
                                "so that program ids agree with the training shards'",
                                fix="drop the option, or build the training shards with it first (then this split)")
    vocab_note = None  # what this run builds with: said otherwise when it built nothing
    if vocab is None and programs is not None:
        train_prog = prog_path if split == "train" else workdir / "programs" / "train.jsonl"
        source = read_programs(train_prog) if split != "train" else programs
        if source is not None and split != "train":
            from leap_cli.programs.report import revalidated

            train = {s.narration_id: s for s in ann.segments("train")} if ann.has_split("train") else None
            source = revalidated(source, ann.verbs, ann.nouns, train)[0]
        if source is None:
            source, train_prog = programs, prog_path
            notes.append(f"no train programs or train shards manifest: condition vocabulary built from {prog_path}; "
                         "ids may not agree with the train shards")
        vocab = TargetVocab.build([r.get("program") for r in source if r.get("status") == "valid"], ann.verbs,
                                  ann.nouns, max_steps=max_steps or DEFAULT_MAX_STEPS,
                                  max_conditions=max_conditions or DEFAULT_MAX_CONDITIONS)
        vocab_note = f"target vocabulary built from {train_prog}: {len(vocab.conditions)} conditions"
        notes.append(vocab_note)
    if vocab is None:  # no programs anywhere: the class vocabularies still size the model's heads
        vocab = TargetVocab.build([], ann.verbs, ann.nouns, max_steps=max_steps or DEFAULT_MAX_STEPS, max_conditions=0)
        notes.append("no programs: target vocabulary from the class files only (no conditions)")
    targets = ProgramTargets(vocab)

    fps_map = {v: i.fps for v, i in ann.video_info.items()} if (ann.folder / "EPIC_100_video_info.csv").exists() else {}

    def fps(video_id: str) -> float:
        if video_id in fps_map:
            return fps_map[video_id]
        return ann.fps(video_id)

    sources = input_hashes({"verb_classes": ann.folder / VERB_CLASSES, "noun_classes": ann.folder / NOUN_CLASSES})
    sources["annotations"] = annotations_digest(segments)
    sources["programs"] = digest
    # shards built by an earlier leap hashed the files: the program file (before 2026-12-03), the split CSV (until
    # the same day)
    adopt = {"annotations": sha256_file(ann.split_path(split)),
             **({"programs": sha256_file(prog_path)} if digest is not None else {})}
    from leap_cli.epic.timing import RGB_FRAMES

    def clock(video_id: str) -> FrameClock:
        info = ann.video_info.get(video_id) if fps_map else None  # (its length: a source shorter is cut short)
        return FrameClock(MP4 if layout.video_path(video_id) is not None or layout.frames_dir(video_id) is None
                          else RGB_FRAMES, fps(video_id), duration=info.duration if info else None)

    opener = LayoutOpener(layout.root, layout.annotations_dir, fps_map, layout.beside)
    cache_dir = Path(frame_cache) if frame_cache else workdir / "frame-cache"
    said = len(notes)  # the notes of the frame cache follow: a run that builds nothing leaves them out
    cache = None
    if settings.task == "recognition" and cache_dir.is_dir():
        cache = FrameCache(cache_dir, settings.frames, settings.short_side, settings.jpeg_quality)
        # an entry of this split's (the other splits' say nothing of whether this one was extracted), else any
        # entry at these settings, to tell the two notes apart
        entry = next((p for seg in segments if (p := cache.path(seg.video_id, seg.narration_id)).exists()), None)
        ours = entry is not None
        entry = entry or next(cache_dir.glob(f"*/*{cache.suffix}"), None)
        held = cache.frame_count(entry) if entry is not None else None
        if entry is not None and held is not None and held != settings.frames:  # the name does not say the count
            notes.append(f"extract's frame cache {cache_dir} holds {counted(held, 'frame')} per segment, these shards take "
                         f"{settings.frames}: every sample is decoded; extract with --cache-frames {settings.frames} "
                         "to share one decode")
            cache = None
        elif entry is None and next(cache_dir.glob("*/*.jpgs"), None) is None:  # (its settings are not the cause)
            notes.append(f"extract's frame cache {cache_dir} holds no frames at all (extract decoded no video into "
                         "it): every sample is decoded")
            cache = None
        elif entry is None:  # no entry made at these settings
            fix = (f"extract with --cache-frames {settings.frames} --cache-short-side {settings.short_side}"
                   if settings.jpeg_quality == FrameCache.quality else
                   f"extract caches at JPEG quality {FrameCache.quality}: build with --jpeg-quality {FrameCache.quality}")
            notes.append(f"extract's frame cache {cache_dir} holds no frames at these shards' settings (short side "
                         f"{settings.short_side}, JPEG quality {settings.jpeg_quality}): every sample is decoded; "
                         f"{fix} to share one decode")
            cache = None
        elif not ours:
            notes.append(f"extract's frame cache {cache_dir} holds no frames of the {split} split: every sample is "
                         f"decoded (leap extract --split {split} first shares one decode)")
            cache = None
        else:
            notes.append(f"frames read from extract's frame cache {cache_dir} where it holds them")
            # (this part's videos that are there: a missing one is skipped, not decoded)
            mine = {seg.video_id for seg in shard.select(segments, key=lambda seg: seg.video_id)}
            passed = sorted(v for v in mine if next((cache_dir / v).glob(f"*{cache.suffix}"), None) is not None
                            and opener.video_stat(v) is not None and not cache_entries_usable(cache, opener, v))
            if passed:
                notes.append(f"extract's frame cache {cache_dir} holds entries of {counted(len(passed), 'video')} "
                             f"({', '.join(passed[:3])}{', ...' if len(passed) > 3 else ''}) made from another source "
                             "or, for an rgb_frames folder, by a leap before 2026-12-03: their samples are decoded "
                             "from the videos instead (the same shards; only the decode is not shared)")
    cache_notes = notes[said:]
    # the inputs given otherwise than by default, for the command that resumes the build (``format.begun_options``)
    given = {"--workdir": workdir, "--data": data if os.path.abspath(data) != os.path.abspath(workdir / "kitchen") else None,
             "--annotations": annotations, "--programs": programs_path, "--vocab": vocab_manifest,
             "--max-steps": max_steps, "--max-conditions": max_conditions}
    inputs = {k: os.path.abspath(v) if isinstance(v, (str, Path)) else v for k, v in given.items() if v is not None}
    result = build_shards(segments, out=out, settings=settings, opener=opener,
                          fps=fps, programs=programs, programs_path=prog_path, targets=targets, sources=sources,
                          workers=workers, shard=shard, overwrite=overwrite, progress=progress, clock=clock,
                          cache=cache, program_failures=failures, adopt=adopt, inputs=inputs)
    if targets is not None and targets.failed:
        notes.append(f"{len(targets.failed)} valid programs could not be encoded (e.g. {targets.failed[0]['error']})")
    if targets is not None and targets.cut:  # (a val program longer than the training ones: an <if> left open)
        cut_key, rows = targets.cut[0]
        notes.append(f"programs longer than the target vocabulary's max_steps ({targets.vocab.max_steps} rows, from "
                     f"the training programs or --max-steps): {len(targets.cut)} (e.g. {cut_key}: {rows} rows); their "
                     "targets are cut there, control flow left open, and the sequence metrics score the cut targets "
                     f"(to keep them whole: the training shards with --max-steps {max(r for _, r in targets.cut)}, "
                     "then these, and a model trained on them)")
    if targets is not None and targets.dropped:  # (a val program's conditions the training ones never had)
        from leap_cli.programs.vocab import condition_string

        where, cond = targets.dropped_example
        notes.append(f"conditions outside the target vocabulary ({len(targets.vocab.conditions)}, those of the "
                     f"training programs, the most frequent where --max-conditions cut them): {targets.dropped} of the "
                     f"programs' {targets.conditions} condition mentions are left out of the targets (e.g. "
                     f"{condition_string(cond)} of {where}), and the condition metrics do not score them")
    if not result.written_now and (result.resumed_shards or result.manifest.get("parts")):  # every shard was there
        notes = [n for n in notes if n != vocab_note and n not in cache_notes]  # (nothing was read or built now)
    if not result.written_now and result.resumed_shards and not result.rewritten and not result.renewed:
        one = result.resumed_shards == 1
        notes.append(("the 1 shard was" if one else f"all {result.resumed_shards} shards were")
                     + " built before with these settings and inputs"
                     + (f" ({vocab_note.replace('built from', 'from')})" if vocab_note else "")
                     + (f": only {'its' if one else 'their'} manifest was missing (a run stopped before it), "
                        "written now"
                        if result.manifest_was_missing else
                        f": nothing new to write (--force builds {'it' if one else 'them'} again)"))
    result.notes = notes + result.notes
    return result
