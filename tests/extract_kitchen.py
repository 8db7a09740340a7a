"""A tiny EPIC-layout data set built by the extract tests: one 6 s video with known camera motion, sound and
hand contacts, and one video whose media are missing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

from leap_cli.epic.hand_objects import BBox, FrameDetections, HandDetection, HandSide, HandState, ObjectDetection, write_hand_objects
from leap_cli.extract.camera import intrinsics
from leap_cli.media.write import write_mp4
from tests.extract_signals import SR, rot_x, rot_y, rotated_views, sound, textured

FPS = 50  # EPIC counts the frames of a 50 fps video as the video does (epic_frame_rate)
W, H = 192, 144
HEADER = ("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,"
          "stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes\n")
# (id, start s, stop s, narration, verb, vclass, noun, nclass); truth: camera, sound
SEGMENTS = [("P01_01_0", 0.0, 2.0, "cut carrot", "cut", 7, "carrot", 23, "still", "chopping"),
            ("P01_01_1", 2.0, 4.0, "wash knife", "wash", 2, "knife", 4, "turn_right", "running_water"),
            ("P01_01_2", 4.0, 6.0, "fry onion", "fry", 9, "onion", 30, "look_down", "sizzling"),
            ("P01_02_0", 0.0, 1.0, "open door", "open", 3, "door", 3, None, None)]
KNIFE = BBox(0.70, 0.50, 0.85, 0.70)
BOARD = BBox(0.30, 0.55, 0.60, 0.80)
RIGHT_HAND = BBox(0.60, 0.60, 0.75, 0.85)
CONTACT = (0.4, 1.6)  # right hand holds the knife, seconds


def _ts(sec: float) -> str:
    return f"00:00:{sec:05.2f}"


def orientation(t: float) -> np.ndarray:
    """Camera orientation at time t: still, then 20 deg to the right over 2-4 s, then 15 deg down over 4-6 s."""
    yaw = 20.0 * min(max(t - 2.0, 0.0), 2.0) / 2.0
    pitch = -15.0 * min(max(t - 4.0, 0.0), 2.0) / 2.0
    return rot_y(yaw) @ rot_x(pitch)


def build(root: Path) -> Path:
    ann = root / "annotations"
    ann.mkdir(parents=True)
    rows = []
    for nid, a, b, nar, verb, vc, noun, nc, *_ in SEGMENTS:
        vid = nid.rsplit("_", 1)[0]
        rows.append(f"{nid},P01,{vid},{_ts(a)},{_ts(a)},{_ts(b)},{int(a * FPS) + 1},{int(b * FPS)},{nar},{verb},{vc},"
                    f"{noun},{nc},['{noun}'],[{nc}]\n")
    (ann / "EPIC_100_train.csv").write_text(HEADER + "".join(rows))
    test_header = "narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,stop_frame\n"
    (ann / "EPIC_100_test_timestamps.csv").write_text(
        test_header + f"P01_01_100,P01,P01_01,{_ts(0)},{_ts(0.0)},{_ts(2.0)},1,50\n")
    (ann / "EPIC_100_video_info.csv").write_text(
        f"video_id,duration,fps,resolution\nP01_01,6.0,{FPS},{W}x{H}\nP01_02,1.0,{FPS},{W}x{H}\n")
    # video with known camera motion
    k = intrinsics(W, H, 90.0)
    tex = textured(W, H, seed=3)
    times = [(i + 0.5) / FPS for i in range(6 * FPS)]
    frames = rotated_views(tex, k, [orientation(t) for t in times], W, H)
    (root / "P01" / "videos").mkdir(parents=True)
    write_mp4(root / "P01" / "videos" / "P01_01.MP4", list(frames), FPS)
    # audio: chopping, water, sizzling
    rng = np.random.default_rng(0)
    audio = np.concatenate([sound(SEGMENTS[i][-1], 2.0, rng) for i in range(3)])
    (root / "P01" / "audio").mkdir(parents=True)
    sf.write(root / "P01" / "audio" / "P01_01.wav", audio, SR)
    # hand-object detections on every frame; labelled object detections every frame
    dets, labelled = [], []
    for n in range(1, 6 * FPS + 1):
        t = (n - 1) / FPS
        touching = CONTACT[0] <= t < CONTACT[1]
        cx, cy = RIGHT_HAND.center
        off = (KNIFE.center[0] - cx, KNIFE.center[1] - cy) if touching else (0.0, 0.0)
        hands = [HandDetection(RIGHT_HAND, 0.95, HandState.PORTABLE_OBJECT if touching else HandState.NO_CONTACT,
                               off, HandSide.RIGHT),
                 HandDetection(BBox(0.1, 0.6, 0.25, 0.85), 0.3, HandState.STATIONARY_OBJECT, (0.1, 0.0), HandSide.LEFT)]
        dets.append(FrameDetections("P01_01", n, hands, [ObjectDetection(KNIFE, 0.9)]))
        objs = [{"label": "board", "bbox": vars(BOARD), "score": 0.8}]
        if t < 2.0:
            objs.append({"label": "knife", "bbox": vars(KNIFE), "score": 0.9})
        labelled.append({"video_id": "P01_01", "frame_number": n, "objects": objs})
    write_hand_objects(root / "hand-objects" / "P01" / "P01_01.jsonl", dets)
    (root / "object-detections" / "P01").mkdir(parents=True)
    (root / "object-detections" / "P01" / "P01_01.jsonl").write_text("".join(json.dumps(d) + "\n" for d in labelled))
    return root


def count_describes(monkeypatch) -> "Counter[str]":
    """How often each extract component's ``describe`` runs in this process (``--workers 1``), by its name."""
    from collections import Counter

    from leap_cli.extract.audio import AudioComponent
    from leap_cli.extract.camera import CameraComponent
    from leap_cli.extract.hands import HandsComponent
    from leap_cli.extract.narration import NarrationComponent
    from leap_cli.extract.objects import ObjectsComponent

    seen: Counter = Counter()
    for cls in (NarrationComponent, AudioComponent, CameraComponent, ObjectsComponent, HandsComponent):
        def counted(self, ctx, _real=cls.describe):
            seen[self.name] += 1
            return _real(self, ctx)
        monkeypatch.setattr(cls, "describe", counted)
    return seen


def camera_reads_otherwise(monkeypatch, words: str, narration_id: str | None = None) -> None:
    """The camera component's text ends with ``words`` (on ``narration_id``'s segment, else wherever it read the
    motion): the odometry of another leap, which read the same video otherwise."""
    from leap_cli.extract.camera import CameraComponent

    real = CameraComponent.describe

    def other(self, ctx):
        rec = real(self, ctx)
        if rec["status"] == "ok" if narration_id is None else ctx.segment.narration_id == narration_id:
            rec["text"] += words
        return rec
    monkeypatch.setattr(CameraComponent, "describe", other)


ALL_COMPONENTS = ("narration", "audio", "camera", "objects", "hands")


def kitchen_config(root: Path, out: Path, **kw):
    """extract's settings for this kitchen's train split into ``out``: every component, no frame cache (``kw``
    overrides)."""
    from leap_cli.extract.runner import ExtractConfig

    return ExtractConfig(data=root, split="train", out=out, components=kw.pop("components", ALL_COMPONENTS),
                         frame_cache=kw.pop("frame_cache", None), **kw)


def earlier_camera_output(root: Path, out: Path) -> str:
    """The text of the output an earlier leap wrote into ``out`` (camera version 1, whose odometry wrote another
    text)."""
    import pytest

    from leap_cli.extract import base
    from leap_cli.extract.runner import run_extract

    mp = pytest.MonkeyPatch()
    try:
        mp.setitem(base.VERSIONS, "camera", 1)
        camera_reads_otherwise(mp, ", as the odometry of 2026-12-05 read it")
        assert run_extract(kitchen_config(root, out)).written == 4
    finally:
        mp.undo()
    return out.read_text()
