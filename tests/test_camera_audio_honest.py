"""EPIC Fields poses, odometry that never upscales, and audio that says "don't know" on a kitchen's background."""

from __future__ import annotations

import json

import numpy as np
import pytest

from leap_cli.epic.annotations import Segment
from leap_cli.errors import LeapError
from leap_cli.extract.audio import analyse
from leap_cli.extract.base import SegmentContext
from leap_cli.extract.camera import CameraComponent, read_colmap_images, read_epic_fields
from tests.extract_signals import SR, rot_y, sound
from tests.test_extract_components import _Layout, _r_to_quat, _views


def _fields_json(path, n_frames=100, skip=()):
    images = {}
    for n in range(1, n_frames + 1):
        if n in skip:
            continue
        rw = rot_y(min(n, 30) - 1.0).T  # world->camera of a camera yawing right 1 deg per frame
        q, t = _r_to_quat(rw), -rw @ np.array([n * 0.05, 0.0, 0.0])
        images[f"frame_{n:010d}.jpg"] = [*map(float, q), *map(float, t)]
    doc = {"camera": {"id": 1, "model": "OPENCV", "width": 456, "height": 256,
                      "params": [220.0, 220.0, 228.0, 128.0, -0.02, 0.004, 0.0, 0.0]},
           "images": images, "points": [[0.1, 0.2, 0.3, 255, 0, 0]]}
    path.write_text(json.dumps(doc, indent=1))
    return path


def _still_ctx(tmp_path, poses, seg, fps):
    """A segment of a still camera's frames (for odometry), with the EPIC Fields file ``poses``."""
    views = _views([np.eye(3)] * 3)
    return SegmentContext(layout=_Layout(tmp_path, poses=poses), segment=seg, fps=fps,
                          read_frames=lambda nums, side: views[[0] * len(nums)])


def test_epic_fields_json_gives_motion_and_says_so(tmp_path):
    path = _fields_json(tmp_path / "P01_01.json", skip=range(40, 101))
    poses, camera = read_epic_fields(path)
    assert len(poses) == 39 and np.allclose(poses[10][1], [0.5, 0, 0])
    assert camera["model"] == "OPENCV" and len(camera["params"]) == 8
    seg = Segment("P01_01_0", "P01", "P01_01", 0.0, 1.2, 1, 30)
    rec = CameraComponent().describe(SegmentContext(layout=_Layout(tmp_path, poses=path), segment=seg, fps=25.0))
    assert rec["source"] == "epic-fields:P01_01.json" and rec["data"]["method"] == "epic-fields"
    assert rec["text"].startswith("turns head right about 30 deg")
    assert rec["data"]["camera_model"]["params"][4] == -0.02  # the distortion travels with the record
    # frames the reconstruction did not register: visual odometry, and the record says why
    late = Segment("P01_01_9", "P01", "P01_01", 2.0, 3.0, 51, 75)
    rec = CameraComponent(frames=3).describe(_still_ctx(tmp_path, path, late, 25.0))
    assert rec["data"]["method"] == "visual-odometry"
    assert rec["data"]["poses_skipped"] == "fewer than 2 registered frames in the segment"


def test_pose_times_count_frames_as_epic_names_them(tmp_path):
    """EPIC Fields names frames in EPIC's numbering (60 per second for a 29.97 fps video, as the CSV columns),
    so a turn registered from frame 91 on starts 1.5 s into the video, not 90 / 29.97 = 3.0 s."""
    images = {}
    for n in range(61, 122, 2):  # every second frame registered, 1.0-2.0 s
        rw = rot_y(max(0, n - 91) * 1.0).T  # still until frame 91, then yawing right 1 deg per frame
        images[f"frame_{n:010d}.jpg"] = [*map(float, _r_to_quat(rw)), 0.0, 0.0, 0.0]
    path = tmp_path / "P01_01.json"
    path.write_text(json.dumps({"camera": {"model": "PINHOLE", "width": 456, "height": 256,
                                           "params": [220.0, 220.0, 228.0, 128.0]}, "images": images}))
    seg = Segment("P01_01_0", "P01", "P01_01", 1.0, 2.0, 61, 121)
    rec = CameraComponent(frames=31).describe(SegmentContext(layout=_Layout(tmp_path, poses=path), segment=seg,
                                                             fps=29.97))
    assert rec["data"]["method"] == "epic-fields"
    steps = rec["data"]["steps"]
    assert steps[-1]["stop"] == pytest.approx(1.0, abs=0.02)  # frame 121 at (121 - 1) / 60 = 2.0 s
    turning = [st for st in steps if abs(st["yaw"]) > 0.5]
    assert turning and turning[0]["start"] == pytest.approx(0.5, abs=0.02)  # frame 91: 1.5 s, 0.5 s in


def test_poses_that_leave_the_segments_end_unregistered_give_way_to_odometry(tmp_path):
    """A reconstruction that stops registering halfway through a segment would miss a turn in its second half: the
    default camera uses odometry there and says why; ``source="colmap"`` keeps the poses."""
    path = _fields_json(tmp_path / "P01_01.json", skip=range(31, 101))  # frames 1-30: the first 0.5 s
    seg = Segment("P01_01_0", "P01", "P01_01", 0.0, 1.0, 1, 60)

    def ctx():
        return _still_ctx(tmp_path, path, seg, 59.94)

    rec = CameraComponent(frames=3).describe(ctx())
    assert rec["data"]["method"] == "visual-odometry"
    assert rec["data"]["poses_skipped"] == "the registered frames leave 0.52 s of the segment uncovered"
    assert rec["data"]["uncovered_s"] == pytest.approx(0.517, abs=0.01)  # as docs/extract.md says (it was text only)
    rec = CameraComponent(frames=3, source="colmap").describe(ctx())
    assert rec["data"]["method"] == "epic-fields" and rec["data"]["uncovered_s"] == pytest.approx(0.517, abs=0.01)
    # poses over the whole segment are used
    full = _fields_json(tmp_path / "P01_01.json", n_frames=100)
    assert full and CameraComponent(frames=3).describe(ctx())["data"]["method"] == "epic-fields"


def test_poses_that_leave_the_segments_start_unregistered_give_way_to_odometry(tmp_path):
    """As at the end: a reconstruction that registers a segment's frames only from 1 s in would miss a turn at its
    start; the uncovered time counts the start's gap too."""
    path = _fields_json(tmp_path / "P01_01.json", n_frames=100, skip=range(1, 61))  # frames 61-100: from 1.0 s
    seg = Segment("P01_01_0", "P01", "P01_01", 0.0, 1.5, 1, 90)
    rec = CameraComponent(frames=3).describe(_still_ctx(tmp_path, path, seg, 59.94))
    assert rec["data"]["method"] == "visual-odometry"
    assert rec["data"]["poses_skipped"] == "the registered frames leave 1.02 s of the segment uncovered"
    assert rec["data"]["uncovered_s"] == pytest.approx(1.017, abs=0.01)


def test_a_pose_images_frame_number_is_the_last_number_in_its_name(tmp_path):
    """Frames extracted per video are often named with the video first (P01_01_frame_0000000123.jpg): the frame
    is the last number, not the participant's 01."""
    path = tmp_path / "P01_01.json"
    pose = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    path.write_text(json.dumps({"images": {"P01_01_frame_0000000123.jpg": pose, "P01_01_frame_0000000124.jpg": pose}}))
    poses, _ = read_epic_fields(path)
    assert sorted(poses) == [123, 124]


def test_pose_file_errors_name_the_line_an_editor_shows(tmp_path):
    bad = tmp_path / "P01_01.json"
    bad.write_text('{\n  "camera": {},\n  "images": {\n    "frame_0000000001.jpg": [1, 0, 0, 0, 0, 0, 0],\n  }\n}\n')
    try:  # the line Python's json names: the next "}" (5) before 3.13, the trailing comma itself (4) from it
        json.loads(bad.read_text())
    except json.JSONDecodeError as e:
        line = e.lineno
    assert line in (4, 5)
    with pytest.raises(LeapError, match=f"line {line}"):
        read_epic_fields(bad)
    bad.write_text(json.dumps({"images": {"frame_0000000001.jpg": [1, 0, 0]}}))
    with pytest.raises(LeapError, match="frame_0000000001.jpg"):
        read_epic_fields(bad)
    txt = tmp_path / "images.txt"
    txt.write_text("# Image list\n# IMAGE_ID, QW, ...\n# Number of images: 2\n"
                   "1 1 0 0 0 0 0 0 1 frame_0000000001.jpg\n\n2 1 0 banana\n\n")
    with pytest.raises(LeapError, match="line 6"):  # comments counted: line 6 in an editor
        read_colmap_images(txt)


def test_odometry_never_upscales(tmp_path):
    """Frames smaller than short_side are read at their own size; larger ones at short_side."""
    asked = []
    for size in ((144, 192), (480, 640)):
        views = _views([rot_y(2.0 * i) for i in range(3)])
        big = np.stack([np.kron(v, np.ones((size[0] // v.shape[0], size[1] // v.shape[1], 1), np.uint8))
                        for v in views]) if size[0] > views.shape[1] else views

        def read(nums, side, big=big):
            asked.append(side)
            if not side or side >= min(big.shape[1:3]):
                return big[:len(nums)]
            import cv2

            return np.stack([cv2.resize(f, (round(f.shape[1] * side / f.shape[0]), side)) for f in big[:len(nums)]])

        comp = CameraComponent(frames=3, source="vo")
        for header in (True, False):  # the runner's contexts know the header size; a bare one does not
            for start in (0.0, 1.0):
                seg = Segment("P01_01_0", "P01", "P01_01", start, start + 1.0, int(start * 25) + 1, int(start * 25) + 25)
                size = (lambda big=big: (big.shape[2], big.shape[1])) if header else None
                rec = comp.describe(SegmentContext(layout=_Layout(tmp_path), segment=seg, fps=25.0, read_frames=read,
                                                   frame_size=size))
                assert rec["status"] == "ok"
                assert min(rec["data"]["frame_size"]) == min(min(big.shape[1:3]), 240)
                assert comp.frames_wanted(SegmentContext(layout=_Layout(tmp_path), segment=seg, fps=25.0,
                                                         frame_size=size))[0][1] == (
                    240 if header and min(size()) > 240 else None)
    # with the header size: small frames as they are, large ones at 240; without it, read as they are, then shrunk
    assert asked == [None, None, None, None, 240, 240, None, None]


def _fan(seconds, rng, level_db=-35.0):
    from scipy.signal import butter, lfilter

    b, a = butter(2, 1500 / (SR / 2), "low")
    x = lfilter(b, a, rng.standard_normal(int(seconds * SR))) + 0.3 * np.sin(2 * np.pi * 120 * np.arange(int(seconds * SR)) / SR)
    return (x / np.sqrt(np.mean(x ** 2)) * 10 ** (level_db / 20)).astype(np.float32)


def _hum(seconds, level_db=-38.0):
    t = np.arange(int(seconds * SR)) / SR
    x = sum(np.sin(2 * np.pi * 50 * k * t) / k for k in range(1, 6))
    return (x / np.sqrt(np.mean(x ** 2)) * 10 ** (level_db / 20)).astype(np.float32)


def _music(seconds, rng, level_db=-30.0):
    t = np.arange(int(SR / 2)) / SR
    blocks = []
    for _ in range(int(seconds * 2)):
        notes = rng.choice(220.0 * 2 ** (np.arange(8) / 6), 3, replace=False)
        blocks.append(sum(np.sin(2 * np.pi * f * k * t) / k ** 1.5 for f in notes for k in (1, 2, 3)) * np.exp(-3 * t))
    x = np.concatenate(blocks)
    return (x / np.sqrt(np.mean(x ** 2)) * 10 ** (level_db / 20)).astype(np.float32)


@pytest.mark.parametrize("kind", ["fan", "hum", "music"])
def test_audio_says_background_not_a_kitchen_sound(kind):
    """The issue's cases: fan-like noise at -35 dBFS (was running water), a 50 Hz hum (was scraping), music (was
    rustling). Most of the time must come out as background, not as an event."""
    rng = np.random.default_rng(7)
    y = {"fan": lambda: _fan(4.0, rng), "hum": lambda: _hum(4.0), "music": lambda: _music(4.0, rng)}[kind]()
    a = analyse(y, SR)
    event_time = sum(e["stop"] - e["start"] for e in a["events"] if e["label"] not in ("background", "silence"))
    assert event_time <= 1.0, a["events"]
    ungated = analyse(y, SR, gate=False)  # the rules alone do call it something
    assert sum(e["stop"] - e["start"] for e in ungated["events"] if e["label"] != "silence") > event_time


def test_audio_still_hears_a_sound_over_the_background():
    rng = np.random.default_rng(3)
    y = _fan(3.0, rng) + sound("running_water", 3.0, rng, level_db=-18.0)
    a = analyse(y, SR)
    assert sum(e["stop"] - e["start"] for e in a["events"] if e["label"] == "running_water") >= 2.0, a["events"]


def test_odometry_plans_its_reads_at_the_sources_size_capped(tmp_path):
    """With the source's size known from its header, the camera announces (and reads) frames at short side 240
    only when the source is larger, else at the source's own size (0/None): never above the source's short side."""
    seg = Segment("P01_01_0", "P01", "P01_01", 0.0, 1.0, 1, 25)
    for size, want in (((192, 144), None), ((256, 240), None), ((1920, 1080), 240), ((1080, 1920), 240)):
        ctx = SegmentContext(layout=_Layout(tmp_path), segment=seg, fps=25.0, frame_size=lambda size=size: size)
        [(numbers, side)] = CameraComponent(frames=5, source="vo").frames_wanted(ctx)
        assert len(numbers) == 5 and side == want, (size, side)


def test_audio_gate_thresholds_are_per_category():
    """Each category is gated by its own calibrated threshold; a calibration with one global threshold (the
    older format) still applies it to every category."""
    from leap_cli.extract.audio import analyse_windows, calibration, category_thresholds, confidence, gated_labels

    rng = np.random.default_rng(3)
    y = np.concatenate([_fan(2.0, rng) + sound("running_water", 2.0, rng, level_db=-18.0),
                        sound("chopping", 2.0, rng, level_db=-18.0)])
    w = analyse_windows(y, SR)
    cal = calibration()
    labels, feats = w["window_labels"], w["window_features"]
    events = {lab for lab in labels if lab not in ("background", "silence")}
    assert len(events) >= 2, labels
    kept, gated = sorted(events)[:2]
    top = max(confidence(ft, cal) for ft in feats) + 1.0
    out = gated_labels(labels, feats, cal, {kept: 0.0, gated: top})
    assert kept in out and gated not in out
    assert [o for o, lab in zip(out, labels) if lab != gated] == [lab for lab in labels if lab != gated]
    legacy = {k: v for k, v in cal.items() if k != "thresholds"} | {"threshold": top}
    assert set(category_thresholds(legacy).values()) == {top}
    assert all(lab in ("background", "silence") for lab in gated_labels(labels, feats, legacy))
