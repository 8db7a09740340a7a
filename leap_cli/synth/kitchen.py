"""The synthetic kitchen: a small EPIC-KITCHENS-100-layout data set with known truth, built from a seed.

``build_kitchen(out, KitchenConfig(videos=8, seed=0))`` writes::

    OUT/P01/videos/P01_01.MP4            small MP4 (mpeg4 video at an EPIC frame rate, 16 kHz AAC audio track)
    OUT/P01/audio/P01_01.wav             the same sound as 16-bit WAV (sample_rate, default 24 kHz)
    OUT/annotations/EPIC_100_*.csv       train, validation, test_timestamps, verb/noun classes (real EPIC rows),
                                         tail verbs/nouns, unseen participant ids, video_info (EPIC's columns)
    OUT/hand-objects/P01/P01_01.pkl      per-frame hand-object detections in EPIC's format (serialized protobufs)
    OUT/object-detections/P01/P01_01.jsonl  labelled boxes per frame
    OUT/poses/P01_01/images.txt          COLMAP camera orientation per frame (videos P.._01, P.._03, ...)
    OUT/ground-truth/segments.jsonl      per segment: verb, noun, visible objects, sound events, camera motion,
                                         hand contacts (times relative to the segment start) and the true program
    OUT/ground-truth/frames/P01_01.jsonl per frame: yaw, pitch, roll (degrees), hand and object boxes
    OUT/.leap-kitchen.json               marker: the config and its hash, "complete": true written last (a rebuild
                                         is skipped when it matches; an interrupted build is redone)

Boxes are ``{"left", "top", "right", "bottom"}`` in [0, 1]. The same seed gives the same CSV, WAV,
hand-object and ground-truth bytes.
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
from leap_cli.epic.hand_objects import (BBox, FrameDetections, HandDetection, HandSide, HandState, ObjectDetection,
                                        write_hand_objects)
from leap_cli.epic.timing import format_timestamp, frame_filename, time_to_frame
from leap_cli.errors import LeapError
from leap_cli.io import atomic_write_bytes, atomic_write_json, atomic_write_text, stable_hash
from leap_cli.media.audio import resample
from leap_cli.media.write import Mp4Writer
from leap_cli.synth.plan import PlannedSegment, VideoPlan, camera_track, plan_video
from leap_cli.synth.render import BASE_W, SKINS, Renderer, make_hand, make_panorama, make_sprites
from leap_cli.synth.sound import render_audio
from leap_cli.synth.world import POUR_INTO, class_file, true_program, vocabularies

log = logging.getLogger(__name__)

MARKER = ".leap-kitchen.json"
KITCHEN_VERSION = 1  # bump when the output changes for the same config
NTSC_30 = 30000 / 1001
NTSC_60 = 60000 / 1001
# Frame rates EPIC-KITCHENS-100 videos really have (see EPIC_100_video_info.csv), cycled over the videos.
FPS_CYCLE = (NTSC_30, NTSC_30, 50.0, NTSC_30)
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
    fps: tuple[float, ...] = FPS_CYCLE

    def __post_init__(self):
        if self.videos < 1:
            raise LeapError(f"--videos must be at least 1 (got {self.videos})")
        if self.segments_per_video < 2:
            raise LeapError(f"segments_per_video must be at least 2 (got {self.segments_per_video})")
        if self.width < 64 or self.height < 48 or self.width % 2 or self.height % 2:
            raise LeapError(f"frame size {self.width}x{self.height}: need even sizes of at least 64x48")

    def hash(self) -> str:
        return stable_hash({"config": asdict(self), "version": KITCHEN_VERSION})


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

    def segments(self, split: str | None = None) -> int:
        return sum(v["segments"] for v in self.videos if split is None or v["split"] == split)

    def to_dict(self) -> dict:
        return {"out": str(self.out), "videos": self.videos, "seconds": round(self.seconds, 2)}

    def render(self):
        """A rich table: one row per video, and the totals."""
        from rich.table import Table

        title = f"Synthetic kitchen {self.out} (seed {self.config.seed})"
        if self.skipped:
            title += " - already built, skipped (use --force to rebuild)"
        table = Table(title=title)
        for col in ("video", "split", "fps", "frames", "seconds", "segments"):
            table.add_column(col, justify="left" if col in ("video", "split") else "right")
        for v in self.videos:
            table.add_row(v["video_id"], v["split"], f"{v['fps']:.2f}", str(v["frames"]), f"{v['duration']:.1f}",
                          str(v["segments"]))
        counts = ", ".join(f"{s} {self.segments(s)}" for s in ("train", "val", "test"))
        table.caption = (f"{self.segments()} segments ({counts}); "
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
        entries.append(VideoEntry(vid, participant, split, cfg.fps[len(entries) % len(cfg.fps)]))

    for i in range(n_train):
        add(f"P{i % n_seen + 1:02d}", "train")
    for i in range(n_val):
        unseen = n >= 4 and i == n_val - 1
        add(f"P{n_seen + 1:02d}" if unseen else f"P{(n_train + i) % n_seen + 1:02d}", "val")
    for i in range(n_test):
        add(f"P{(i + 1) % n_seen + 1:02d}", "test")
    return entries


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


def colmap_images_txt(track: np.ndarray) -> str:
    lines = ["# Image list with two lines of data per image:",
             "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
             "#   POINTS2D[] as (X, Y, POINT3D_ID)",
             f"# Number of images: {len(track)}, mean observations per image: 0"]
    for i, (yaw, pitch, _roll) in enumerate(track):
        q = _quaternion(world_to_camera(float(yaw), float(pitch)))
        if q[0] < 0:
            q = tuple(-x for x in q)
        lines.append(f"{i + 1} {q[0]:.9f} {q[1]:.9f} {q[2]:.9f} {q[3]:.9f} 0 0 0 1 {frame_filename(i + 1)}")
        lines.append("")
    return "\n".join(lines) + "\n"


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

    def build(self) -> tuple[dict, list[dict], list[dict]]:
        cfg, e = self.cfg, self.entry
        plan = plan_video(e.video_id, e.fps, cfg.segments_per_video, self.rng)
        n_frames = int(round(plan.duration * e.fps))
        duration = n_frames / e.fps
        track = camera_track(plan, n_frames, self.rng)
        anchors = []
        for seg in plan.segments:
            f = min(n_frames - 1, int(seg.start * e.fps))
            anchors.append(self.renderer.anchor(track[f, 0], track[f, 1], seg.place))
        audio = render_audio(plan, cfg.sample_rate, self.rng)
        part = self.out / e.participant_id
        video_path = part / "videos" / f"{e.video_id}.MP4"
        writer = Mp4Writer(video_path, cfg.width, cfg.height, e.fps, codec="mpeg4", bit_rate=500_000,
                           gop=int(round(e.fps)), audio_rate=MP4_AUDIO_RATE if cfg.audio_in_mp4 else None)
        frames_gt: list[str] = []
        hand_objects: list[FrameDetections] = []
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
                writer.write(frame)
                active_per_frame.append(active)
                frames_gt.append(self._frame_record(i + 1, track[i], objects, hands, W, H))
                hand_objects.append(self._detections(i + 1, objects, hands, W, H))
                obj_lines.append(json.dumps({"video_id": e.video_id, "frame_number": i + 1, "objects": [
                    {"label": lab, "bbox": _box(b, W, H), "score": round(float(0.75 + 0.24 * self.rng.random()), 3)}
                    for lab, b in objects]}))
                per_frame_contacts.append([(h.side, h.contact) for h, _ in hands if h.contact])
                per_frame_labels.append({lab for lab, _ in objects})
            writer.close(resample(audio, cfg.sample_rate, MP4_AUDIO_RATE) if cfg.audio_in_mp4 else None)
        except BaseException:
            writer.abort()
            raise
        import soundfile as sf

        buf = io.BytesIO()
        sf.write(buf, audio, cfg.sample_rate, format="WAV", subtype="PCM_16")
        atomic_write_bytes(part / "audio" / f"{e.video_id}.wav", buf.getvalue())
        write_hand_objects(self.out / "hand-objects" / e.participant_id / f"{e.video_id}.pkl", hand_objects)
        atomic_write_text(self.out / "object-detections" / e.participant_id / f"{e.video_id}.jsonl",
                          "\n".join(obj_lines) + "\n")
        atomic_write_text(self.out / "ground-truth" / "frames" / f"{e.video_id}.jsonl", "\n".join(frames_gt) + "\n")
        if int(e.video_id.split("_")[1]) % 2 == 1:  # COLMAP poses for some videos, as EPIC Fields has for some
            atomic_write_text(self.out / "poses" / e.video_id / "images.txt", colmap_images_txt(track))
        rows, truth = self._segments(plan, active_per_frame, per_frame_contacts, per_frame_labels)
        info = {"video_id": e.video_id, "duration": f"{duration:.6f}", "fps": repr(float(e.fps)),
                "resolution": f"{W}x{H}"}
        summary = {"video_id": e.video_id, "split": e.split, "fps": e.fps, "frames": n_frames,
                   "duration": round(duration, 3), "segments": len(rows)}
        return {"info": info, "summary": summary}, rows, truth

    def _frame_record(self, number, cam, objects, hands, W, H) -> str:
        return json.dumps({
            "frame_number": number, "yaw": round(float(cam[0]), 3), "pitch": round(float(cam[1]), 3),
            "roll": round(float(cam[2]), 3),
            "hands": [{"side": h.side, "bbox": _box(b, W, H), "contact": h.contact,
                       "contact_state": ("stationary" if h.stationary else "portable") if h.contact else "none"}
                      for h, b in hands],
            "objects": [{"label": lab, "bbox": _box(b, W, H)} for lab, b in objects]})

    def _detections(self, number, objects, hands, W, H) -> FrameDetections:
        boxes = {lab: b for lab, b in objects}
        det_hands, det_objects = [], []
        for h, b in hands:
            hb = BBox(*(v for v in _box(b, W, H).values()))
            state, offset = HandState.NO_CONTACT, (0.0, 0.0)
            if h.contact and h.contact in boxes:
                ob = BBox(*(v for v in _box(boxes[h.contact], W, H).values()))
                state = HandState.STATIONARY_OBJECT if h.stationary else HandState.PORTABLE_OBJECT
                offset = (round(ob.center[0] - hb.center[0], 4), round(ob.center[1] - hb.center[1], 4))
                det_objects.append(ObjectDetection(ob, round(float(0.7 + 0.29 * self.rng.random()), 3)))
            det_hands.append(HandDetection(hb, round(float(0.8 + 0.19 * self.rng.random()), 3), state, offset,
                                           HandSide.LEFT if h.side == "left" else HandSide.RIGHT))
        return FrameDetections(self.entry.video_id, number, det_hands, det_objects)

    def _segments(self, plan: VideoPlan, active, contacts, labels) -> tuple[list[dict], list[dict]]:
        e = self.entry
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
                "stop_timestamp": format_timestamp(seg.stop), "start_frame": time_to_frame(seg.start, e.fps),
                "stop_frame": time_to_frame(seg.stop, e.fps), "narration": narration, "verb": seg.verb_form,
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
            truth.append({
                "narration_id": nid, "video_id": e.video_id, "split": e.split, "start": seg.start, "stop": seg.stop,
                "verb": seg.verb, "noun": seg.noun, "verb_class": verb_class, "noun_class": noun_classes[0],
                "objects": seen, "sound": sounds, "camera": camera, "contacts": contact_list,
                "program": true_program(seg.verb, seg.noun, narration, verb_class, noun_classes[0])})
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
        return json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def build_kitchen(out: Path, cfg: KitchenConfig = KitchenConfig(), force: bool = False,
                  on_video: Callable[[int, int, str], None] | None = None) -> KitchenSummary:
    """Build the synthetic kitchen into ``out`` (skipped when ``out`` already holds this config's kitchen).

    ``on_video(done, total, video_id)`` is called after each video (for a progress bar).
    """
    out = Path(out)
    marker = read_marker(out)
    if marker and marker.get("complete") and marker.get("hash") == cfg.hash() and not force:
        log.info("%s already holds this kitchen; skipping", out)
        s = KitchenSummary(out, cfg, marker.get("summary", {}).get("videos", []), skipped=True)
        return s
    if out.exists() and any(out.iterdir()):
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
    summary = KitchenSummary(out, cfg)
    for i, entry in enumerate(entries):
        meta, r, tr = _VideoBuilder(cfg, entry, out, sprites, rotated, verbs, nouns).build()
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
