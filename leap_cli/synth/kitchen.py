"""The synthetic kitchen: a small EPIC-KITCHENS-100-layout data set with known truth, built from a seed.

By default the kitchen is *honest*: it publishes only what EPIC publishes. ``build_kitchen(out,
KitchenConfig(videos=8, seed=0))`` writes::

    OUT/P01/videos/P01_01.MP4            small MP4 (mpeg4 video at EPIC's frame rates: 59.94, 50, 29.97; 16 kHz
                                         AAC audio track); one video is a truncated copy (its last segments lie
                                         past the end of the file)
    OUT/P01/audio/P01_01.wav             the same sound as 16-bit WAV (sample_rate, default 24 kHz), events over a
                                         real background (room tone, fan, fridge hum, music, babble)
    OUT/annotations/EPIC_100_*.csv       train, validation, test_timestamps, verb/noun classes (real EPIC rows),
                                         tail verbs/nouns, unseen participant ids, video_info (EPIC's columns);
                                         start_frame/stop_frame counted as EPIC counts them (``epic_frame_rate``)
    OUT/hand-objects/P01/P01_01.pkl      unlabelled hand-object detections in EPIC's format (serialized protobufs),
                                         the truth degraded as the 100DOH detector errs (``synth/detector.py``)
    OUT/poses/P01_01.json                EPIC Fields' per-video JSON (camera, images, points) for some videos only
                                         (P.._01, P.._03, ...), with registration gaps
    OUT/ground-truth/                    the truth, which no extractor reads:
        segments.jsonl                   per segment: verb, noun, visible objects, sound events, background layers,
                                         camera motion, hand contacts (times relative to the segment start), program
        frames/P01_01.jsonl              per video frame: yaw, pitch, roll (degrees), true hand and object boxes
        audio/P01_01.json                the background layers of the video (label, start, stop, level_db)
    OUT/.leap-kitchen.json               marker: the config and its hash, "complete": true written last (a rebuild
                                         is skipped when it matches; an interrupted build is redone)

``KitchenConfig(honest=False)`` (``leap demo-data --clean``) builds the old clean kitchen for debugging: the
truth as hand-object files, labelled ``object-detections/P01/P01_01.jsonl``, COLMAP ``poses/P01_01/images.txt``,
a faint room tone, 29.97/50 fps and no truncated video. Boxes are ``{"left", "top", "right", "bottom"}`` in
[0, 1]. The same seed gives the same CSV, WAV, hand-object, pose and ground-truth bytes.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from leap_cli.epic import annotations as A
from leap_cli.epic.hand_objects import write_hand_objects
from leap_cli.epic.timing import csv_frame, format_timestamp, frame_filename
from leap_cli.errors import LeapError
from leap_cli.io import OutputLock, atomic_write_bytes, atomic_write_json, atomic_write_text, stable_hash
from leap_cli.media.audio import resample
from leap_cli.media.write import Mp4Writer
from leap_cli.synth.plan import PlannedSegment, VideoPlan, camera_track, plan_video
from leap_cli.synth.render import BASE_W, FOV_DEG, SKINS, Renderer, make_hand, make_panorama, make_sprites
from leap_cli.synth.detector import Detector, TrueHand, truth_detections
from leap_cli.synth.sound import render_audio, render_background
from leap_cli.synth.world import POUR_INTO, class_file, true_program, vocabularies

log = logging.getLogger(__name__)

MARKER = ".leap-kitchen.json"
LOCK = ".leap-kitchen.lock"  # held while the kitchen is built (OutputLock): the clearing leaves it
KITCHEN_VERSION = 7  # bump when the output changes for the same config (6: EPIC's frame columns; 7: frames of
# a pinhole camera, as the poses' intrinsics say)
NTSC_30 = 30000 / 1001
NTSC_60 = 60000 / 1001
# Frame rates EPIC-KITCHENS-100 videos really have (EPIC_100_video_info.csv: 423 at 59.94, 268 at 50, a few at
# 29.97), cycled over the videos; of 8 videos the 29.97 one is the test video.
FPS_CYCLE = (NTSC_60, 50.0, NTSC_60, NTSC_60, 50.0, NTSC_60, NTSC_60, NTSC_30)
CLEAN_FPS_CYCLE = (NTSC_30, NTSC_30, 50.0, NTSC_30)
TRUNCATED_SEGMENTS = 3  # segments of the truncated video that start past (or run over) the end of its file
MP4_AUDIO_RATE = 16000  # the MP4's AAC track (the WAV keeps cfg.sample_rate)


@dataclass(frozen=True)
class KitchenConfig:
    """What to build. Unknown keys are errors (a frozen dataclass); the hash of this decides rebuilds."""

    videos: int = 8
    seed: int = 0
    segments_per_video: int = 48
    width: int = 192
    height: int = 144
    sample_rate: int = 24000
    audio_in_mp4: bool = True
    fps: tuple[float, ...] | None = None  # default FPS_CYCLE (honest) or CLEAN_FPS_CYCLE
    honest: bool = True  # False: the clean debugging kitchen (truth as detections, labelled boxes, COLMAP poses)

    def __post_init__(self):
        if self.videos < 1:
            raise LeapError(f"--videos must be at least 1 (got {self.videos})")
        if self.segments_per_video < 2:
            raise LeapError(f"segments_per_video must be at least 2 (got {self.segments_per_video})")
        if self.width < 64 or self.height < 48 or self.width % 2 or self.height % 2:
            raise LeapError(f"frame size {self.width}x{self.height}: need even sizes of at least 64x48")

    def hash(self) -> str:
        return stable_hash({"config": asdict(self), "version": KITCHEN_VERSION})

    @property
    def rates(self) -> tuple[float, ...]:
        return self.fps or (FPS_CYCLE if self.honest else CLEAN_FPS_CYCLE)

    def segments_past_end(self) -> dict[str, int]:
        """{split: segments of the truncated video that lie past (or run over) the end of its file}, at least:
        build-shards skips them (``_VideoBuilder.build`` cuts the file inside the TRUNCATED_SEGMENTS-th segment from
        the end; an earlier one that overlaps it may run past the cut too)."""
        cut = self.truncated_video()
        if cut is None or self.segments_per_video <= TRUNCATED_SEGMENTS:
            return {}
        return {assign_videos(self)[cut].split: TRUNCATED_SEGMENTS}

    def truncated_video(self) -> int | None:
        """Index of the video whose MP4 is a truncated copy (honest kitchens of 2 videos or more): the first
        labelled video without poses (so nothing legitimately describes the missing part), else the second."""
        if not self.honest or self.videos < 2:
            return None
        entries = assign_videos(self)
        return next((i for i, e in enumerate(entries)
                     if e.split != "test" and int(e.video_id.split("_")[1]) % 2 == 0), 1)


def epic_frame_rate(fps: float) -> float:
    """The rate at which EPIC's ``start_frame``/``stop_frame`` (and its ``rgb_frames``, hand-object and EPIC Fields
    frame numbers) count: 50 for the 50 fps videos, 60 for the others (59.94, 29.97, 47.95 and 90 fps videos
    all count at 60 in EPIC_100_validation.csv)."""
    return 50.0 if abs(fps - 50.0) < 0.01 else 60.0


@dataclass
class VideoEntry:
    video_id: str
    participant_id: str
    split: str  # train | val | test
    fps: float


@dataclass
class KitchenSummary:
    out: Path
    config: KitchenConfig
    videos: list[dict] = field(default_factory=list)  # video_id, split, fps, frames, duration, segments
    seconds: float = 0.0
    skipped: bool = False
    # the KITCHEN_VERSION of the finished kitchen of another leap rebuilt ("unknown": its marker names none that is one)
    replaced_version: int | str | None = None

    def segments(self, split: str | None = None) -> int:
        return sum(v["segments"] for v in self.videos if split is None or v["split"] == split)

    def to_dict(self) -> dict:
        return {"out": str(self.out), "videos": self.videos, "seconds": round(self.seconds, 2)}

    def render(self):
        """A rich table: one row per video, and the totals."""
        from rich.table import Table

        kind = "honest: the truth in ground-truth/ only" if self.config.honest else "clean (debugging: publishes the truth)"
        title = f"Synthetic kitchen {self.out} (seed {self.config.seed}, {kind})"
        if self.skipped:
            title += " - already built, skipped (use --force to rebuild)"
        table = Table(title=title)
        for col in ("video", "split", "fps", "frames", "seconds", "segments"):
            table.add_column(col, justify="left" if col in ("video", "split") else "right")
        for v in self.videos:
            frames = str(v["frames"]) + (f" (file cut at {v['truncated_at']:.1f} s)" if "truncated_at" in v else "")
            table.add_row(v["video_id"], v["split"], f"{v['fps']:.2f}", frames, f"{v['duration']:.1f}",
                          str(v["segments"]))
        counts = ", ".join(f"{s} {self.segments(s)}" for s in ("train", "val", "test"))
        cut = [v["video_id"] for v in self.videos if "truncated_at" in v]
        table.caption = (f"{self.segments()} segments ({counts}); "
                         + (f"{cut[0]} is cut short on purpose, as a broken download would be (the stages say so); "
                            if cut else "")
                         + (f"built in {self.seconds:.1f}s" if not self.skipped else "nothing rebuilt"))
        return table


def assign_videos(cfg: KitchenConfig) -> list[VideoEntry]:
    """Participants and splits: most videos train; validation has a seen participant and, from 4 videos on,
    an unseen one; from 3 videos on the last one is test."""
    n = cfg.videos
    n_test = 0 if n < 3 else max(1, round(n * 0.125))
    n_val = 0 if n < 2 else max(1, round(n * 0.25))
    n_train = n - n_val - n_test
    n_seen = max(1, min(3, n_train))  # participants with training videos
    counters: dict[str, int] = {}
    entries: list[VideoEntry] = []

    def add(participant: str, split: str) -> None:
        counters[participant] = counters.get(participant, 0) + 1
        vid = f"{participant}_{counters[participant]:02d}"
        entries.append(VideoEntry(vid, participant, split, cfg.rates[len(entries) % len(cfg.rates)]))

    for i in range(n_train):
        add(f"P{i % n_seen + 1:02d}", "train")
    for i in range(n_val):
        unseen = n >= 4 and i == n_val - 1
        add(f"P{n_seen + 1:02d}" if unseen else f"P{(n_train + i) % n_seen + 1:02d}", "val")
    for i in range(n_test):
        add(f"P{(i + 1) % n_seen + 1:02d}", "test")
    return entries


def _unit(b: tuple, w: int, h: int) -> tuple[float, float, float, float]:
    return (b[0] / w, b[1] / h, b[2] / w, b[3] / h)


def _box(b: tuple, w: int, h: int) -> dict:
    return {"left": round(b[0] / w, 4), "top": round(b[1] / h, 4), "right": round(b[2] / w, 4),
            "bottom": round(b[3] / h, 4)}


def _csv(rows: list[dict], columns: tuple[str, ...] | list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: r[c] for c in columns})
    return buf.getvalue()


def _quaternion(r: np.ndarray) -> tuple[float, float, float, float]:
    """(qw, qx, qy, qz) of a 3x3 rotation matrix."""
    tr = r[0, 0] + r[1, 1] + r[2, 2]
    if tr > 0:
        s = math.sqrt(tr + 1.0) * 2
        return (0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s)
    i = int(np.argmax([r[0, 0], r[1, 1], r[2, 2]]))
    j, k = (i + 1) % 3, (i + 2) % 3
    s = math.sqrt(1.0 + r[i, i] - r[j, j] - r[k, k]) * 2
    q = [0.0, 0.0, 0.0, 0.0]
    q[0] = (r[k, j] - r[j, k]) / s
    q[1 + i] = 0.25 * s
    q[1 + j] = (r[j, i] + r[i, j]) / s
    q[1 + k] = (r[k, i] + r[i, k]) / s
    return tuple(q)  # type: ignore[return-value]


def world_to_camera(yaw: float, pitch: float) -> np.ndarray:
    """COLMAP's world-to-camera rotation (camera x right, y down, z forward) for a head turned ``yaw`` degrees
    to the right and ``pitch`` degrees up from the world axes."""
    a, b = math.radians(yaw), math.radians(pitch)
    ry = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return (ry @ rx).T


def _pose(yaw: float, pitch: float) -> tuple[float, ...]:
    q = _quaternion(world_to_camera(yaw, pitch))
    return tuple(-x for x in q) if q[0] < 0 else q


def epic_frames(n_frames: int, fps: float) -> list[tuple[int, int]]:
    """(EPIC frame number, 0-based video frame it holds) for every EPIC-numbered frame inside the video, as ffmpeg's
    ``-r 60`` made them: each video frame goes to the EPIC frame nearest its time (half-way: the later one) and
    stays until the next."""
    rate = epic_frame_rate(fps)
    count = int(math.floor(n_frames / fps * rate - 1e-6)) + 1
    return [(n, min(n_frames - 1, int(math.ceil((n - 0.5) / rate * fps - 1e-6)) - 1)) for n in range(1, count + 1)]


def colmap_images_txt(frames: list[tuple[int, float, float]]) -> str:
    """COLMAP ``images.txt`` of (frame number, yaw, pitch) rows (the clean kitchen's poses)."""
    lines = ["# Image list with two lines of data per image:",
             "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
             "#   POINTS2D[] as (X, Y, POINT3D_ID)",
             f"# Number of images: {len(frames)}, mean observations per image: 0"]
    for i, (number, yaw, pitch) in enumerate(frames):
        q = _pose(yaw, pitch)
        lines.append(f"{i + 1} {q[0]:.9f} {q[1]:.9f} {q[2]:.9f} {q[3]:.9f} 0 0 0 1 {frame_filename(number)}")
        lines.append("")
    return "\n".join(lines) + "\n"


def epic_fields_json(frames: list[tuple[int, float, float]], width: int, height: int, fov_deg: float,
                     rng: np.random.Generator) -> dict:
    """EPIC Fields' per-video JSON: ``camera`` (COLMAP's OPENCV model: width, height, params fx, fy, cx, cy, k1,
    k2, p1, p2), ``images`` {frame name: [qw, qx, qy, qz, tx, ty, tz]} (world to camera) and ``points``
    [[x, y, z, r, g, b]]. Like a real reconstruction it registers a subset of the frames (every second one,
    with gaps of 0.5-3 s where registration failed), with orientation noise of a few tenths of a degree and a
    head that sways a few centimetres."""
    f = (width / 2) / math.tan(math.radians(fov_deg) / 2)
    camera = {"id": 1, "model": "OPENCV", "width": width, "height": height,
              "params": [round(f, 3), round(f, 3), width / 2, height / 2, -0.021, 0.004, 0.0003, -0.0002]}
    images: dict[str, list[float]] = {}
    gap_until = -1
    for number, yaw, pitch in frames:
        if number % 2:
            continue
        if number < gap_until:
            continue
        if rng.random() < 0.004:  # registration fails for a while
            gap_until = number + int(rng.uniform(30, 180))
            continue
        y, p = yaw + float(rng.normal(0, 0.3)), pitch + float(rng.normal(0, 0.3))
        q = _pose(y, p)
        r = world_to_camera(y, p)
        t60 = number / 60.0
        centre = np.array([0.05 * math.sin(t60 / 7), 0.01 * math.sin(t60 / 3), 0.05 * math.cos(t60 / 11)])
        t = -r @ centre
        images[frame_filename(number)] = [round(float(v), 7) for v in (*q, *t)]
    pts = rng.normal(0, 1, (300, 3))
    pts = pts / np.linalg.norm(pts, axis=1, keepdims=True) * rng.uniform(1.5, 4.0, (300, 1))
    colours = rng.integers(0, 256, (300, 3))
    points = [[round(float(a), 4) for a in p] + [int(c) for c in col] for p, col in zip(pts, colours)]
    return {"camera": camera, "images": images, "points": points}


def _runs(flags: list[bool], t0: float, fps: float) -> list[tuple[float, float]]:
    """Contiguous runs of True in per-frame flags as (start, stop) seconds relative to ``t0``."""
    out, start = [], None
    for i, f in enumerate(flags + [False]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            out.append((start, i))
            start = None
    return [(round(a / fps, 3), round(b / fps, 3)) for a, b in out]


class _VideoBuilder:
    def __init__(self, cfg: KitchenConfig, entry: VideoEntry, out: Path, sprites, rotated, verbs, nouns):
        self.cfg, self.entry, self.out = cfg, entry, out
        self.verbs, self.nouns = verbs, nouns
        seed = int(stable_hash([cfg.seed, entry.video_id])[:12], 16)
        self.rng = np.random.default_rng(seed)
        prng = np.random.default_rng(int(stable_hash([cfg.seed, entry.participant_id])[:12], 16))
        self.skin = SKINS[int(prng.integers(len(SKINS)))]
        pano = make_panorama(prng, cfg.width, cfg.height)
        scale = cfg.width / BASE_W
        hands = {"left": make_hand("left", self.skin, scale), "right": make_hand("right", self.skin, scale)}
        noise = self.rng.integers(0, 60, size=(cfg.height * 8, 3)).astype(np.int16)
        self.renderer = Renderer(cfg.width, cfg.height, sprites, rotated, hands, pano, noise)
        self.sprites = sprites
        # separate streams, so the detector's errors, the background and the poses do not change the script
        self.aux_rng = {k: np.random.default_rng(int(stable_hash([cfg.seed, entry.video_id, k])[:12], 16))
                        for k in ("detector", "background", "poses")}
        self.truncated = False

    def build(self) -> tuple[dict, list[dict], list[dict]]:
        cfg, e = self.cfg, self.entry
        honest = cfg.honest
        plan = plan_video(e.video_id, e.fps, cfg.segments_per_video, self.rng)
        n_frames = int(round(plan.duration * e.fps))
        duration = n_frames / e.fps
        track = camera_track(plan, n_frames, self.rng)
        anchors = []
        for seg in plan.segments:
            f = min(n_frames - 1, int(seg.start * e.fps))
            anchors.append(self.renderer.anchor(track[f, 0], track[f, 1], seg.place))
        background, layers = (render_background(plan.duration, cfg.sample_rate, self.aux_rng["background"])
                              if honest else (None, []))
        audio = render_audio(plan, cfg.sample_rate, self.rng, background)
        # the truncated copy: the file ends inside the TRUNCATED_SEGMENTS-th segment from the end
        n_write = n_frames
        if self.truncated and len(plan.segments) > TRUNCATED_SEGMENTS:
            cut = plan.segments[-TRUNCATED_SEGMENTS]
            n_write = max(1, int((cut.start + 0.5 * cut.duration) * e.fps))
        part = self.out / e.participant_id
        video_path = part / "videos" / f"{e.video_id}.MP4"
        writer = Mp4Writer(video_path, cfg.width, cfg.height, e.fps, codec="mpeg4", bit_rate=500_000,
                           gop=int(round(e.fps)), audio_rate=MP4_AUDIO_RATE if cfg.audio_in_mp4 else None)
        frames_gt: list[str] = []
        true_hands: list[list[TrueHand]] = []
        obj_lines: list[str] = []
        active_per_frame: list[int] = []
        per_frame_contacts: list[list[tuple[str, str]]] = []
        per_frame_labels: list[set[str]] = []
        W, H = cfg.width, cfg.height
        segs = plan.segments
        first_open = 0
        try:
            for i in range(n_frames):
                t = i / e.fps
                while first_open < len(segs) and segs[first_open].stop <= t:
                    first_open += 1
                active = -1
                for k in range(first_open, len(segs)):
                    if segs[k].start > t:
                        break
                    if segs[k].start <= t < segs[k].stop:
                        active = k  # the latest-starting segment wins where two overlap
                seg = segs[active] if active >= 0 else None
                frame, objects, hands = self.renderer.frame(t, float(track[i, 0]), float(track[i, 1]), seg,
                                                            anchors[active] if active >= 0 else None, self.skin)
                if i < n_write:
                    writer.write(frame)
                active_per_frame.append(active)
                frames_gt.append(self._frame_record(i + 1, track[i], objects, hands, W, H))
                boxes = {lab: b for lab, b in objects}
                true_hands.append([TrueHand(h.side, _unit(b, W, H),
                                            _unit(boxes[h.contact], W, H) if h.contact in boxes else None,
                                            h.stationary) for h, b in hands])
                if not honest:
                    obj_lines.append(json.dumps({"video_id": e.video_id, "frame_number": i + 1, "objects": [
                        {"label": lab, "bbox": _box(b, W, H), "score": 0.9} for lab, b in objects]}))
                per_frame_contacts.append([(h.side, h.contact) for h, _ in hands if h.contact])
                per_frame_labels.append({lab for lab, _ in objects})
            sound = audio[:int(round(n_write / e.fps * cfg.sample_rate))]
            writer.close(resample(sound, cfg.sample_rate, MP4_AUDIO_RATE) if cfg.audio_in_mp4 else None)
        except BaseException:
            writer.abort()
            raise
        import soundfile as sf

        from leap_cli.common import stops_held

        buf = io.BytesIO()
        with stops_held():  # (a stop as soundfile closes its handle: media/audio.py's read_audio)
            sf.write(buf, audio, cfg.sample_rate, format="WAV", subtype="PCM_16")
        atomic_write_bytes(part / "audio" / f"{e.video_id}.wav", buf.getvalue())
        # hand-object files and poses are numbered as EPIC numbers its frames (epic_frame_rate), and cover the
        # whole video even where the user's copy is truncated (EPIC made them from the full video)
        numbered = epic_frames(n_frames, e.fps)
        detector = Detector(self.aux_rng["detector"])
        hand_objects = [detector.frame(e.video_id, n, true_hands[i]) if honest
                        else truth_detections(e.video_id, n, true_hands[i]) for n, i in numbered]
        write_hand_objects(self.out / "hand-objects" / e.participant_id / f"{e.video_id}.pkl", hand_objects)
        truth_dir = self.out / "ground-truth"
        if not honest:
            atomic_write_text(self.out / "object-detections" / e.participant_id / f"{e.video_id}.jsonl",
                              "\n".join(obj_lines) + "\n")
        atomic_write_text(truth_dir / "frames" / f"{e.video_id}.jsonl", "\n".join(frames_gt) + "\n")
        if honest:
            atomic_write_json(truth_dir / "audio" / f"{e.video_id}.json", {"video_id": e.video_id, "layers": layers})
        if int(e.video_id.split("_")[1]) % 2 == 1:  # poses for some videos, as EPIC Fields has for some
            rows = [(n, float(track[i, 0]), float(track[i, 1])) for n, i in numbered]
            if honest:
                atomic_write_json(self.out / "poses" / f"{e.video_id}.json",
                                  epic_fields_json(rows, W, H, FOV_DEG, self.aux_rng["poses"]))
            else:
                atomic_write_text(self.out / "poses" / e.video_id / "images.txt", colmap_images_txt(rows))
        rows, truth = self._segments(plan, active_per_frame, per_frame_contacts, per_frame_labels, layers,
                                     n_write / e.fps if n_write < n_frames else None)
        info = {"video_id": e.video_id, "duration": f"{duration:.6f}", "fps": repr(float(e.fps)),
                "resolution": f"{W}x{H}"}
        summary = {"video_id": e.video_id, "split": e.split, "fps": e.fps, "frames": n_write,
                   "duration": round(duration, 3), "segments": len(rows)}
        if n_write < n_frames:
            summary["truncated_at"] = round(n_write / e.fps, 3)
        return {"info": info, "summary": summary}, rows, truth

    def _frame_record(self, number, cam, objects, hands, W, H) -> str:
        return json.dumps({
            "frame_number": number, "yaw": round(float(cam[0]), 3), "pitch": round(float(cam[1]), 3),
            "roll": round(float(cam[2]), 3),
            "hands": [{"side": h.side, "bbox": _box(b, W, H), "contact": h.contact,
                       "contact_state": ("stationary" if h.stationary else "portable") if h.contact else "none"}
                      for h, b in hands],
            "objects": [{"label": lab, "bbox": _box(b, W, H)} for lab, b in objects]})

    def _segments(self, plan: VideoPlan, active, contacts, labels, layers: list[dict],
                  truncated_at: float | None) -> tuple[list[dict], list[dict]]:
        e = self.entry
        rate = epic_frame_rate(e.fps)
        rows, truth = [], []
        for k, seg in enumerate(plan.segments):
            nid = f"{e.video_id}_{k}"
            narration, nouns = self._narration(seg)
            verb_class = self.verbs.resolve_or_raise(seg.verb_form)
            noun_classes = [self.nouns.resolve_or_raise(n) for n in nouns]
            nts = "" if seg.narration_delay is None else format_timestamp(max(0.0, seg.start + seg.narration_delay), 3)
            rows.append({
                "narration_id": nid, "participant_id": e.participant_id, "video_id": e.video_id,
                "narration_timestamp": nts, "start_timestamp": format_timestamp(seg.start),
                "stop_timestamp": format_timestamp(seg.stop), "start_frame": csv_frame(seg.start, rate),
                "stop_frame": csv_frame(seg.stop, rate), "narration": narration, "verb": seg.verb_form,
                "verb_class": verb_class, "noun": nouns[0], "noun_class": noun_classes[0],
                "all_nouns": repr(nouns), "all_noun_classes": repr(noun_classes), "split": e.split})
            frames = [i for i, a in enumerate(active) if a == k]
            f0 = frames[0] if frames else 0
            seen: list[str] = []
            for i in frames:
                for lab in sorted(labels[i]):
                    if lab not in seen:
                        seen.append(lab)
            contact_list = []
            pairs = sorted({c for i in frames for c in contacts[i]})
            for side, obj in pairs:
                flags = [(side, obj) in contacts[i] for i in range(f0, f0 + len(frames))]
                for a, b in _runs(flags, 0.0, e.fps):
                    base = f0 / e.fps - seg.start
                    contact_list.append({"hand": side, "object": obj, "start": round(max(0.0, base + a), 3),
                                         "stop": round(min(seg.duration, base + b), 3)})
            sounds = [{"label": ev.label, "start": round(ev.start - seg.start, 3), "stop": round(ev.stop - seg.start, 3)}
                      for ev in seg.sound]
            sounds += [{"label": "speech", "start": round(max(0.0, ev.start - seg.start), 3),
                        "stop": round(min(seg.stop, ev.stop) - seg.start, 3)}
                       for ev in plan.speech if ev.start < seg.stop and ev.stop > seg.start]
            camera = [{"motion": ev.motion, "start": round(ev.start - seg.start, 3), "stop": round(ev.stop - seg.start, 3),
                       "degrees": ev.degrees} for ev in seg.camera]
            background = [{"label": ly["label"], "start": round(max(0.0, ly["start"] - seg.start), 3),
                           "stop": round(min(seg.stop, ly["stop"]) - seg.start, 3), "level_db": ly["level_db"]}
                          for ly in layers if ly["start"] < seg.stop and ly["stop"] > seg.start]
            extra = {"background": background} if self.cfg.honest else {}
            if truncated_at is not None and seg.stop > truncated_at:
                extra["past_end_of_video"] = True  # the file ends at truncated_at: the video part is unavailable
            truth.append({
                "narration_id": nid, "video_id": e.video_id, "split": e.split, "start": seg.start, "stop": seg.stop,
                "verb": seg.verb, "noun": seg.noun, "verb_class": verb_class, "noun_class": noun_classes[0],
                "objects": seen, "sound": sounds, "camera": camera, "contacts": contact_list,
                "program": true_program(seg.verb, seg.noun, narration, verb_class, noun_classes[0]), **extra})
        return rows, truth

    @staticmethod
    def _narration(seg: PlannedSegment) -> tuple[str, list[str]]:
        if seg.verb == "pour":
            return f"{seg.narration} into {POUR_INTO}", [seg.noun_form, POUR_INTO]
        return seg.narration, [seg.noun_form]


def _tail(counts: dict[int, int], ids: list[int], share: float = 0.2) -> list[int]:
    """Classes that together hold the rarest ``share`` of training instances (EPIC's idea of the tail)."""
    order = sorted(ids, key=lambda c: (-counts.get(c, 0), c))
    total = sum(counts.values()) or 1
    cum, head = 0, []
    for c in order:
        if cum >= (1 - share) * total:
            break
        cum += counts.get(c, 0)
        head.append(c)
    return sorted(c for c in ids if c not in head)


def _write_annotations(out: Path, entries: list[VideoEntry], rows: list[dict], infos: list[dict]) -> None:
    ann = out / "annotations"
    by_split = {s: [r for r in rows if r["split"] == s] for s in ("train", "val", "test")}
    atomic_write_text(ann / A.SPLIT_FILES["train"], _csv(by_split["train"], A.LABELLED_COLUMNS))
    atomic_write_text(ann / A.SPLIT_FILES["val"], _csv(by_split["val"], A.LABELLED_COLUMNS))
    atomic_write_text(ann / A.SPLIT_FILES["test"], _csv(by_split["test"], A.TEST_COLUMNS))
    for name in (A.VERB_CLASSES, A.NOUN_CLASSES):
        atomic_write_bytes(ann / name, class_file(name).read_bytes())
    verbs, nouns = vocabularies()
    vcount: dict[int, int] = {}
    ncount: dict[int, int] = {}
    for r in by_split["train"]:
        vcount[r["verb_class"]] = vcount.get(r["verb_class"], 0) + 1
        ncount[r["noun_class"]] = ncount.get(r["noun_class"], 0) + 1
    atomic_write_text(ann / A.TAIL_VERBS, "verb\n" + "".join(f"{c}\n" for c in _tail(vcount, verbs.ids)))
    atomic_write_text(ann / A.TAIL_NOUNS, "noun\n" + "".join(f"{c}\n" for c in _tail(ncount, nouns.ids)))
    train_people = {e.participant_id for e in entries if e.split == "train"}
    for split in ("val", "test"):
        unseen = sorted({e.participant_id for e in entries if e.split == split} - train_people)
        atomic_write_text(ann / A.UNSEEN[split], "participant_id\n" + "".join(f"{p}\n" for p in unseen))
    atomic_write_text(ann / A.VIDEO_INFO, _csv(infos, ("video_id", "duration", "fps", "resolution")))


OUTPUT_DIRS = ("annotations", "hand-objects", "object-detections", "poses", "ground-truth")


def _clear(out: Path) -> None:
    marker = out / MARKER
    if marker.exists():
        marker.unlink()
    for p in out.iterdir():
        if p.name in OUTPUT_DIRS or (p.is_dir() and p.name.startswith("P") and p.name[1:].isdigit()):
            shutil.rmtree(p)


def read_marker(out: Path) -> dict | None:
    marker = Path(out) / MARKER
    if not marker.exists():
        return None
    try:
        held = json.loads(marker.read_text())
    except (OSError, ValueError):  # (not JSON, or not text: bytes of another file)
        return None
    return held if isinstance(held, dict) else None  # (JSON of another kind: no marker of ours, as one not JSON)


def built_version(marker: dict | None) -> int | None:
    """The KITCHEN_VERSION a kitchen's marker (``read_marker``) names; None where it names none that is one."""
    version = marker.get("version") if marker else None
    return version if isinstance(version, int) and not isinstance(version, bool) else None


def build_kitchen(out: Path, cfg: KitchenConfig = KitchenConfig(), force: bool = False,
                  on_video: Callable[[int, int, str], None] | None = None) -> KitchenSummary:
    """Build the synthetic kitchen into ``out`` (skipped when ``out`` already holds this config's kitchen).

    ``on_video(done, total, video_id)`` is called after each video (for a progress bar).
    """
    out = Path(out)
    if (done := _built(out, cfg, force)) is not None:  # (before the lock: a kitchen on read-only storage is read)
        return done
    # (two builds of one folder at once: the second's clearing deleted the first's videos under it)
    with OutputLock(out, lock_path=out / LOCK,
                    fix="wait for it to finish (it builds this kitchen), or give this one another --out"):
        return _build_kitchen(out, cfg, force, on_video)


def _built(out: Path, cfg: KitchenConfig, force: bool) -> KitchenSummary | None:
    """The summary of the kitchen ``out`` holds already at this config (None: to build)."""
    marker = read_marker(out)
    if marker and marker.get("complete") and marker.get("hash") == cfg.hash() and not force:
        log.info("%s already holds this kitchen; skipping", out)
        return KitchenSummary(out, cfg, marker.get("summary", {}).get("videos", []), skipped=True)
    return None


def _build_kitchen(out: Path, cfg: KitchenConfig, force: bool,
                   on_video: Callable[[int, int, str], None] | None) -> KitchenSummary:
    if (done := _built(out, cfg, force)) is not None:  # (finished by another build since the look above)
        return done
    marker = read_marker(out)
    replaced = None  # (another leap's finished kitchen: what the stages made from it is not all remade)
    if not force and marker and marker.get("complete") and marker.get("version") != KITCHEN_VERSION:
        replaced = "unknown" if (was := built_version(marker)) is None else was
    if out.exists() and any(p.name != LOCK for p in out.iterdir()):
        if marker is None and not force:
            raise LeapError("the folder is not empty and holds no synthetic kitchen", path=out,
                            fix="choose an empty or new --out folder, or pass --force to overwrite it")
        _clear(out)
    out.mkdir(parents=True, exist_ok=True)
    # Mark the folder as ours before writing, so an interrupted build is rebuilt next time without --force.
    atomic_write_json(out / MARKER, {"hash": cfg.hash(), "config": asdict(cfg), "version": KITCHEN_VERSION,
                                     "complete": False})
    t0 = time.perf_counter()
    scale = cfg.width / BASE_W
    sprites, rotated = make_sprites(scale)
    verbs, nouns = vocabularies()
    entries = assign_videos(cfg)
    rows: list[dict] = []
    truth: list[dict] = []
    infos: list[dict] = []
    summary = KitchenSummary(out, cfg, replaced_version=replaced)
    for i, entry in enumerate(entries):
        builder = _VideoBuilder(cfg, entry, out, sprites, rotated, verbs, nouns)
        builder.truncated = i == cfg.truncated_video()
        meta, r, tr = builder.build()
        rows += r
        truth += tr
        infos.append(meta["info"])
        summary.videos.append(meta["summary"])
        log.info("kitchen: %s done (%d segments)", entry.video_id, len(r))
        if on_video:
            on_video(i + 1, len(entries), entry.video_id)
    _write_annotations(out, entries, rows, infos)
    atomic_write_text(out / "ground-truth" / "segments.jsonl", "".join(json.dumps(t) + "\n" for t in truth))
    summary.seconds = time.perf_counter() - t0
    atomic_write_json(out / MARKER, {"hash": cfg.hash(), "config": asdict(cfg), "version": KITCHEN_VERSION,
                                     "complete": True, "summary": summary.to_dict()})
    return summary
