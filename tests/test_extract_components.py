"""The five descriptor components on signals, frames and detections the tests generate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from leap_cli.epic.annotations import Segment
from leap_cli.epic.hand_objects import BBox, FrameDetections, HandDetection, HandSide, HandState, ObjectDetection
from leap_cli.errors import LeapError
from leap_cli.extract.audio import AudioComponent, analyse, dominant_sound, merge_windows
from leap_cli.extract.base import SegmentContext
from leap_cli.extract.camera import (CameraComponent, angles, intrinsics, phases_from_steps, phases_text,
                                     read_colmap_images, relative_pose)
from leap_cli.extract.describe import render_clip
from leap_cli.extract.detections import read_object_detections
from leap_cli.extract.hands import HandsComponent
from leap_cli.extract.narration import NarrationComponent
from leap_cli.extract.objects import ObjectsComponent
from tests.extract_signals import SR, rot_x, rot_y, rotated_views, sound, textured


def _segment(start=0.0, stop=2.0, fps=50.0, labelled=True, video_id="P01_01") -> Segment:
    kw = dict(narration="cut carrot", verb="cut", verb_class=7, noun="carrot", noun_class=23,
              all_nouns=("carrot", "board"), all_noun_classes=(23, 40)) if labelled else {}
    return Segment("P01_01_0", "P01", video_id, start, stop, int(start * fps) + 1, int(stop * fps), **kw)


class _Layout:
    """Just enough of DatasetLayout for components that read per-video files."""

    def __init__(self, root: Path, hand_objects=None, detections=None, poses=None):
        self.root = root
        self._h, self._d, self._p = hand_objects, detections, poses

    def hand_objects_path(self, vid):
        return self._h

    def object_detections_path(self, vid):
        return self._d

    def poses_path(self, vid):
        return self._p


# --- narration -------------------------------------------------------------------------------------------

def test_narration_ok_and_unavailable_on_test():
    ctx = SegmentContext(layout=None, segment=_segment(), fps=25)
    rec = NarrationComponent().describe(ctx)
    assert rec["status"] == "ok" and rec["data"]["verb_class"] == 7 and "board" in rec["text"]
    rec = NarrationComponent().describe(SegmentContext(layout=None, segment=_segment(labelled=False), fps=25))
    assert rec["status"] == "unavailable" and "test" in rec["data"]["reason"]


# --- audio -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["silence", "running_water", "sizzling", "chopping", "clatter", "scraping",
                                  "rustling", "speech"])
def test_audio_category_of_each_kitchen_sound(kind):
    hits = 0
    for seed in range(3):
        a = analyse(sound(kind, 2.5, np.random.default_rng(100 + seed)), SR)
        hits += dominant_sound(a["events"]) == kind
    assert hits >= 2, kind


def test_audio_event_times_are_relative_to_the_segment():
    rng = np.random.default_rng(1)
    y = np.concatenate([sound("silence", 1.0, rng), sound("chopping", 2.0, rng), sound("silence", 1.0, rng)])
    a = analyse(y, SR)
    chop = [e for e in a["events"] if e["label"] == "chopping"]
    assert len(chop) == 1
    assert abs(chop[0]["start"] - 1.0) <= 0.3 and abs(chop[0]["stop"] - 3.0) <= 0.3
    assert a["events"][0]["label"] == "silence" and a["events"][-1]["label"] == "silence"
    assert all(1.0 - 0.1 <= t <= 3.1 for t in a["onsets"]) and len(a["onsets"]) >= 5
    assert len(a["loudness_db"]) == 16 and max(a["loudness_db"]) > -30 > min(a["loudness_db"])


def test_audio_component_unavailable_without_audio():
    from leap_cli.media.audio import AudioUnavailable

    def no_audio(sr):
        raise AudioUnavailable("no audio for P01_01", path="x.wav")

    ctx = SegmentContext(layout=None, segment=_segment(), fps=25, read_audio=no_audio)
    rec = AudioComponent().describe(ctx)
    assert rec["status"] == "unavailable" and "no audio" in rec["text"]
    ctx.read_audio = lambda sr: sound("running_water", 2.0, np.random.default_rng(0))
    rec = AudioComponent().describe(ctx)
    assert rec["status"] == "ok" and rec["data"]["dominant"] == "running_water" and "running water" in rec["text"]


def test_a_one_window_blip_inside_a_sound_is_absorbed():
    """One window of another label between two of the same sound (a chop that reads as speech) is part of that
    sound: one event over all three windows, not three events in the clip text."""
    events = merge_windows(["chopping", "speech", "chopping"], [0.0, 0.375, 0.625], [0.375, 0.625, 1.0])
    assert events == [{"label": "chopping", "start": 0.0, "stop": 1.0}]
    # two windows of it are no blip
    events = merge_windows(["chopping", "speech", "speech", "chopping"], [0.0, 0.375, 0.625, 0.875],
                           [0.375, 0.625, 0.875, 1.0])
    assert [e["label"] for e in events] == ["chopping", "speech", "chopping"]


def test_the_windows_tile_the_segment_from_0_s_to_its_end():
    """Each window speaks for its central part, the first from the segment's start: a sound from the first
    instant would be said to start 0.125 s in."""
    from leap_cli.extract.audio import analyse_windows

    w = analyse_windows(sound("chopping", 2.0, np.random.default_rng(0)), SR)
    spans = w["window_spans"]
    assert spans[0] == (0.0, 0.375) and spans[-1][1] == 2.0
    assert all(a[1] == pytest.approx(b[0]) for a, b in zip(spans, spans[1:]))
    assert analyse(sound("running_water", 2.0, np.random.default_rng(0)), SR)["events"][0]["start"] == 0.0


def test_the_dominant_sound_is_a_kitchen_sound_heard_even_briefly():
    """Background and silence are no sound: half a second of chopping in two seconds of background is the
    segment's sound; only a segment of none is "background"."""
    events = [{"label": "background", "start": 0.0, "stop": 2.0}, {"label": "chopping", "start": 2.0, "stop": 2.5},
              {"label": "silence", "start": 2.5, "stop": 3.0}]
    assert dominant_sound(events) == "chopping"
    assert dominant_sound([events[0], events[2]]) == "background"


# --- camera ----------------------------------------------------------------------------------------------

W, H = 192, 144


def _views(rotations):
    k = intrinsics(W, H, 90.0)
    return rotated_views(textured(W, H, seed=5), k, rotations, W, H)


@pytest.mark.parametrize("yaw,pitch", [(6, 0), (-6, 0), (0, 5), (0, -5)])
def test_relative_pose_sign_of_yaw_and_pitch(yaw, pitch):
    import cv2

    views = _views([np.eye(3), rot_y(yaw) @ rot_x(pitch)])
    g = [cv2.cvtColor(v, cv2.COLOR_RGB2GRAY) for v in views]
    est = relative_pose(g[0], g[1], intrinsics(W, H, 90.0), cv2.ORB_create(800, edgeThreshold=15, patchSize=15))
    y, p, _ = angles(est["r_cam"])
    assert abs(y - yaw) < 1.5 and abs(p - pitch) < 1.5


def test_camera_component_words_for_turn_then_look_down():
    # 9 samples over 2 s: 4 steps turning right 30 deg in all, then 4 steps looking down 20 deg in all
    rots = [rot_y(7.5 * min(i, 4)) @ rot_x(-5.0 * max(i - 4, 0)) for i in range(9)]
    frames = _views(rots)
    # 9 evenly spread samples need frames 1..9: at 4 fps the MP4 frames shown in [0, 2.25) s (the timing rule
    # reads an MP4's frames from the timestamps, not from the CSV frame columns)
    seg = _segment(0.0, 2.25, fps=4.0)
    seg = Segment(seg.narration_id, "P01", "P01_01", 0.0, 2.25, 1, 10)
    ctx = SegmentContext(layout=_Layout(Path(".")), segment=seg, fps=4.0,
                         read_frames=lambda nums, side: frames[[n - 1 for n in nums]])
    rec = CameraComponent(frames=9).describe(ctx)
    assert rec["status"] == "ok", rec
    assert rec["text"].startswith("turns head right about 30 deg, then looks down about 20 deg"), rec["text"]
    assert [p["motion"] for p in rec["data"]["phases"]] == ["turn_right", "look_down"]
    assert abs(rec["data"]["total"]["yaw"] - 30) < 4


def test_a_frame_showing_at_the_segments_start_is_at_0_s():
    """The frame showing at the start began up to a frame before it: the clip text (the LLM's input) said
    "[-0.0-0.2 s] turns head left"."""
    ctx = SegmentContext(layout=None, segment=_segment(0.1, 2.0, fps=4.0), fps=4.0)
    assert ctx.frame_time(1) == 0.0 and ctx.frame_time(2) == 0.15  # MP4 frames at 0.0 and 0.25 s
    assert ctx.epic_frame_time(6) == 0.0 and ctx.epic_frame_time(8) == pytest.approx(0.017)  # EPIC's, 60/s


def _pan(step: int, n: int, w: int = 256, h: int = 144) -> list[np.ndarray]:
    """Grey views of a wide texture panning left by ``step`` px per frame (a fast head turn at small frames)."""
    wide = textured(450, h // 2, seed=3)[:h]
    return [np.ascontiguousarray(wide[:, 400 - step * i:400 - step * i + w]) for i in range(n)]


def test_tracker_follows_a_fast_pan_with_corners_that_stay_in_view():
    import cv2

    import leap_cli.extract.camera as cam

    views = _pan(60, 6)  # 60 px per frame: beyond LK's pyramid from a zero start
    tr = cam.Tracker(cv2.ORB_create(300))
    for a, b in zip(views, views[1:]):
        p1, p2 = tr.pair(a, b)
        assert len(p1) >= cam.MIN_TRACKED and np.allclose(np.median(p2 - p1, axis=0), [60, 0], atol=0.5)
    # the first pair starts from phase correlation's shift at quarter size, the others from the last pair's motion
    assert tr.paths == ["lk+prior"] * 5
    # a pan that starts after a still pair: LK from no motion misses it, and tracks again from the global shift
    tr = cam.Tracker(cv2.ORB_create(300))
    for a, b in zip([views[0]] + views, [views[0]] + views[1:3]):
        p1, p2 = tr.pair(a, b)
    assert tr.paths == ["lk", "lk+shift", "lk+prior"]
    assert np.allclose(np.median(p2 - p1, axis=0), [60, 0], atol=0.5)
    # new corners are found only where the motion keeps them in view: none in the 60 px that leave the frame
    mask = cam._staying((144, 256), np.array([60.0, 0.0]))
    assert mask[:, 256 - 60 - cam.LK_WINDOW:].max() == 0 and mask[20:-20, 20:150].min() == 255


def test_unrelated_frames_are_a_cut_not_an_orb_search(monkeypatch):
    """Tracking fails and phase correlation finds no common shift (a scene cut, a blur): the pair is marked
    unmatched without the slow ORB search, and the turn's motion carries on into the next pair."""
    import cv2

    import leap_cli.extract.camera as cam

    def no_orb(*a):
        raise AssertionError("ORB searched on unrelated frames")

    monkeypatch.setattr(cam, "_orb_matches", no_orb)
    views = _pan(60, 5)
    other = textured(256, 144, seed=9)[:144, :256].copy()
    assert cam.global_shift(views[1], other)[1] < cam.CUT_RESPONSE < cam.global_shift(views[0], views[1])[1]
    tr = cam.Tracker(cv2.ORB_create(300))
    tr.pair(views[0], views[1])
    p1, _ = tr.pair(views[1], other)
    assert len(p1) == 0 and tr.paths[-1] == "cut"
    est = relative_pose(views[1], other, intrinsics(256, 144, 90.0), None, matches=(p1, p1))
    assert est["model"] is None and np.allclose(est["r_cam"], np.eye(3))  # the step says nothing turned
    tr.pair(views[2], views[3])
    assert tr.paths[-1] == "lk+prior"


def test_camera_still_and_small_jitter_is_still():
    steps = [{"start": i * 0.25, "stop": (i + 1) * 0.25, "yaw": 0.3 * (-1) ** i, "pitch": 0.1, "roll": 0.0}
             for i in range(8)]
    assert phases_text(phases_from_steps(steps)) == "holds still"


def test_a_turn_of_under_5_deg_in_all_is_holding_still():
    """A step fast enough to count as turning, but 2 deg in all (odometry's noise on a held head): still."""
    steps = [{"start": i * 0.25, "stop": (i + 1) * 0.25, "yaw": -2.0 if i == 3 else 0.0, "pitch": 0.0, "roll": 0.0}
             for i in range(8)]
    phases = phases_from_steps(steps)
    assert [(p["motion"], p["start"], p["stop"]) for p in phases] == [("still", 0.0, 2.0)]
    assert phases_text(phases) == "holds still"


def test_pauses_are_said_between_turns_only():
    """Holding still before the first turn or after the last is no pause (a single turn would read "pauses, then
    turns head left ..., then pauses"); between two turns it is one."""
    def steps(*yaws):
        return [{"start": i * 0.25, "stop": (i + 1) * 0.25, "yaw": y, "pitch": 0.0, "roll": 0.0}
                for i, y in enumerate(yaws)]

    phases = phases_from_steps(steps(0, 0, -10, -10, -10, 0, 0))
    assert [p["motion"] for p in phases] == ["still", "turn_left", "still"]
    assert phases_text(phases) == "turns head left about 30 deg"
    phases = phases_from_steps(steps(-10, -10, -10, 0, 0, 10, 10))
    assert phases_text(phases) == "turns head left about 30 deg, then pauses, then turns head right about 20 deg"


def test_camera_moves_only_where_most_steps_give_a_translation():
    """Odometry's essential matrix gives a direction of travel on the steps it wins; on fewer than half
    of them the motion is rotation (the homography won), and one step's direction is no walk across the kitchen."""
    def summary(with_translation):
        steps = [{"start": i * 0.25, "stop": (i + 1) * 0.25, "yaw": 0.0, "pitch": 0.0, "roll": 0.0} for i in range(4)]
        for st in steps[:with_translation]:
            st["translation"] = [1.0, 0.0, 0.0]
        return CameraComponent(frames=5)._summary(steps, np.eye(3), "orb-vo:5 frames")

    rec = summary(1)
    assert rec["text"] == "holds still" and "translation_direction" not in rec["data"]
    rec = summary(2)
    assert rec["text"] == "holds still; moves right" and rec["data"]["translation_direction"] == "right"


def test_colmap_poses_give_motion_and_place(tmp_path):
    lines = ["# Image list with two lines of data per image:"]
    for n in range(1, 101):  # camera yaws right 1 deg per frame over frames 1..30, walks along x over the video
        r = rot_y(min(n, 30) - 1.0)  # camera->world rotation
        centre = np.array([n * 0.05, 0.0, 0.0])
        rw = r.T  # world->camera
        t = -rw @ centre
        q = _r_to_quat(rw)
        lines.append(f"{n} {q[0]} {q[1]} {q[2]} {q[3]} {t[0]} {t[1]} {t[2]} 1 frame_{n:010d}.jpg")
        lines.append("")
    poses_dir = tmp_path / "poses" / "P01_01"
    poses_dir.mkdir(parents=True)
    (poses_dir / "images.txt").write_text("\n".join(lines) + "\n")
    poses = read_colmap_images(poses_dir / "images.txt")
    assert len(poses) == 100 and np.allclose(poses[10][1], [0.5, 0, 0])
    seg = Segment("P01_01_0", "P01", "P01_01", 0.0, 1.2, 1, 30)
    ctx = SegmentContext(layout=_Layout(tmp_path, poses=poses_dir / "images.txt"), segment=seg, fps=50.0)
    rec = CameraComponent().describe(ctx)
    assert rec["source"].startswith("colmap") and rec["text"].startswith("turns head right about 30 deg")
    assert rec["data"]["where"]["along_main_axis"] < 0.2  # the start of the walk
    assert "toward the edge" in rec["text"] or "far out" in rec["text"]
    # a segment the reconstruction did not register: odometry in auto mode, unavailable when COLMAP is forced
    late = Segment("P01_01_9", "P01", "P01_01", 10.0, 11.0, 251, 275)
    views = _views([np.eye(3)] * 3)
    ctx = SegmentContext(layout=_Layout(tmp_path, poses=poses_dir / "images.txt"), segment=late, fps=50.0,
                         read_frames=lambda nums, side: views[[0] * len(nums)])
    assert CameraComponent(frames=3).describe(ctx)["source"].startswith("orb-vo")
    assert CameraComponent(source="colmap").describe(ctx)["status"] == "unavailable"
    with pytest.raises(LeapError, match="images.txt"):
        (poses_dir / "images.txt").write_text("1 0.1 0.2 banana\n\n")
        read_colmap_images(poses_dir / "images.txt")



def test_colmap_binary_images_give_the_poses_of_images_txt(tmp_path):
    """COLMAP, and so the EPIC Fields pipeline, writes images.bin by default: it was ignored ("no camera poses")."""
    import struct

    from leap_cli.epic.layout import DatasetLayout

    rows = []
    for n in range(1, 41):  # as above: yaws right 1 deg per frame over frames 1..30; some images with 2D points
        rw = rot_y(min(n, 30) - 1.0).T
        rows.append((n, *_r_to_quat(rw), *(-rw @ np.array([n * 0.05, 0.0, 0.0])), 1, f"frame_{n:010d}.jpg",
                     [(1.5 * n, 2.0, n if k else -1) for k in range(n % 3)]))
    txt = tmp_path / "txt" / "images.txt"
    txt.parent.mkdir()
    txt.write_text("".join(" ".join(map(str, r[:10])) + "\n" + " ".join(f"{x} {y} {i}" for x, y, i in r[10]) + "\n"
                           for r in rows))
    blob = struct.pack("<Q", len(rows))  # COLMAP's WriteImagesBinary, little-endian
    for image_id, *pose, camera_id, name, points in rows:
        blob += struct.pack("<I7dI", image_id, *pose, camera_id) + name.encode() + b"\0"
        blob += struct.pack("<Q", len(points)) + b"".join(struct.pack("<ddq", *p) for p in points)
    binary = tmp_path / "poses" / "P01_01" / "images.bin"
    binary.parent.mkdir(parents=True)
    binary.write_bytes(blob)
    assert DatasetLayout(tmp_path, tmp_path).poses_path("P01_01") == binary
    # where COLMAP's mapper writes its first model (poses/VIDEO/sparse/0/): found, and named from the video on
    mapper = tmp_path / "mapper"
    (mapper / "poses" / "P01_01" / "sparse" / "0").mkdir(parents=True)
    (mapper / "poses" / "P01_01" / "sparse" / "0" / "images.bin").write_bytes(blob)
    in_sparse = DatasetLayout(mapper, mapper).poses_path("P01_01")
    assert in_sparse == mapper / "poses" / "P01_01" / "sparse" / "0" / "images.bin"
    seg = Segment("P01_01_0", "P01", "P01_01", 0.0, 1.2, 1, 30)
    rec = CameraComponent(source="colmap").describe(SegmentContext(layout=_Layout(mapper, poses=in_sparse),
                                                                   segment=seg, fps=50.0))
    assert rec["status"] == "ok" and rec["source"] == "colmap:P01_01/sparse/0/images.bin", rec
    from_txt, from_bin = read_colmap_images(txt), read_colmap_images(binary)
    assert len(from_bin) == 40 and from_bin.keys() == from_txt.keys()
    assert all(np.allclose(from_bin[n][k], from_txt[n][k]) for n in from_txt for k in (0, 1))
    seg = Segment("P01_01_0", "P01", "P01_01", 0.0, 1.2, 1, 30)
    rec = CameraComponent(source="colmap").describe(SegmentContext(layout=_Layout(tmp_path, poses=binary), segment=seg,
                                                                   fps=50.0))
    assert rec["source"] == "colmap:P01_01/images.bin" and rec["text"].startswith("turns head right about 30 deg")
    for damaged in (blob[:5], blob[:100], blob[:-1], blob + b"\0"):
        binary.write_bytes(damaged)
        with pytest.raises(LeapError, match="images.bin") as e:
            read_colmap_images(binary)
        assert "\n" not in str(e.value)


def _r_to_quat(r):
    w = np.sqrt(max(0.0, 1 + r[0, 0] + r[1, 1] + r[2, 2])) / 2
    return (w, (r[2, 1] - r[1, 2]) / (4 * w), (r[0, 2] - r[2, 0]) / (4 * w), (r[1, 0] - r[0, 1]) / (4 * w))


# --- hands and objects ---------------------------------------------------------------------------------------

KNIFE = BBox(0.70, 0.50, 0.85, 0.70)
RIGHT = BBox(0.60, 0.60, 0.75, 0.85)


def _hand_frames(contact=(0.5, 1.5), fps=50.0, seconds=2.0, score=0.9):
    out = []
    for n in range(1, int(seconds * fps) + 1):
        t = (n - 1) / fps
        on = contact[0] <= t < contact[1]
        off = (KNIFE.center[0] - RIGHT.center[0], KNIFE.center[1] - RIGHT.center[1]) if on else (0.0, 0.0)
        hands = [HandDetection(RIGHT, score, HandState.PORTABLE_OBJECT if on else HandState.NO_CONTACT, off,
                               HandSide.RIGHT)]
        out.append(FrameDetections("P01_01", n, hands, [ObjectDetection(KNIFE, 0.9)]))
    return out


def _write(tmp_path, frames, labelled=None):
    from leap_cli.epic.hand_objects import write_hand_objects

    hp = tmp_path / "hand.pkl"
    write_hand_objects(hp, frames)
    dp = None
    if labelled is not None:
        dp = tmp_path / "dets.jsonl"
        dp.write_text("".join(json.dumps(x) + "\n" for x in labelled))
    return _Layout(tmp_path, hand_objects=hp, detections=dp)


def _iou(a, b):
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    return inter / (max(a[1], b[1]) - min(a[0], b[0]))


def test_hand_contact_interval_and_object_name(tmp_path):
    labelled = [{"video_id": "P01_01", "frame_number": n, "objects": [
        {"label": "knife", "bbox": vars(KNIFE), "score": 0.9}]} for n in range(1, 101)]
    layout = _write(tmp_path, _hand_frames((0.5, 1.5)), labelled)
    ctx = SegmentContext(layout=layout, segment=_segment(0.0, 2.0), fps=50.0)
    rec = HandsComponent().describe(ctx)
    right = next(h for h in rec["data"]["hands"] if h["hand"] == "right")
    assert len(right["contacts"]) == 1
    c = right["contacts"][0]
    assert c["object"] == "knife" and c["state"] == "portable"
    assert _iou((c["start"], c["stop"]), (0.5, 1.5)) >= 0.9
    assert "right hand: knife 0.5-1.5 s" in rec["text"] and "left hand not seen" in rec["text"]


def test_a_hand_seen_in_one_frame_of_a_long_segment_is_free_with_a_share_above_0(tmp_path):
    """The Hands text says "free" for a hand seen at all, "not seen" for one never seen: the share recorded
    agrees (it rounded to 0.0 for one frame in more than 2000)."""
    frames = [FrameDetections("P01_01", n, [], [ObjectDetection(KNIFE, 0.9)]) for n in range(1, 2501)]
    frames[0] = FrameDetections("P01_01", 1, [HandDetection(RIGHT, 0.9, HandState.NO_CONTACT, (0.0, 0.0),
                                                            HandSide.RIGHT)], [])
    layout = _write(tmp_path, frames)
    rec = HandsComponent().describe(SegmentContext(layout=layout, segment=_segment(0.0, 50.0), fps=50.0))
    share = {h["hand"]: h["visible_share"] for h in rec["data"]["hands"]}
    assert rec["text"] == "left hand not seen; right hand free" and share == {"left": 0.0, "right": 0.001}


def test_hand_threshold_drops_weak_hands(tmp_path):
    layout = _write(tmp_path, _hand_frames(score=0.3))
    rec = HandsComponent().describe(SegmentContext(layout=layout, segment=_segment(), fps=50.0))
    assert all(not h["contacts"] for h in rec["data"]["hands"])
    rec = HandsComponent(hand_threshold=0.2).describe(SegmentContext(layout=layout, segment=_segment(), fps=50.0))
    right = next(h for h in rec["data"]["hands"] if h["hand"] == "right")
    assert right["contacts"][0]["object"] == "object"  # unlabelled box without labelled detections
    # a hand counts above the threshold, as in EPIC's get_hand_object_interactions (skips score <= threshold)
    layout = _write(tmp_path / "at", _hand_frames(score=0.5))
    rec = HandsComponent(hand_threshold=0.5).describe(SegmentContext(layout=layout, segment=_segment(), fps=50.0))
    assert all(not h["contacts"] for h in rec["data"]["hands"])
    rec = HandsComponent(hand_threshold=0.49).describe(SegmentContext(layout=layout, segment=_segment(), fps=50.0))
    assert any(h["contacts"] for h in rec["data"]["hands"])


def test_contact_box_is_the_object_centre_nearest_the_offset_point_as_epic_matches_them():
    """EPIC's ``FrameDetections.get_hand_object_interactions``: among objects of score >= object_threshold, the one
    whose centre is nearest the hand centre + ``object_offset``: a box that merely contains the point does not win,
    and there is no distance cap."""
    hand = lambda dx, dy: HandDetection(BBox(0.30, 0.55, 0.40, 0.75), 0.9, HandState.PORTABLE_OBJECT, (dx, dy),
                                        HandSide.RIGHT)  # centre (0.35, 0.65)
    cup = ObjectDetection(BBox(0.45, 0.45, 0.55, 0.55), 0.9)  # centre (0.50, 0.50)
    board = ObjectDetection(BBox(0.30, 0.40, 0.90, 0.90), 0.9)  # centre (0.60, 0.65), contains (0.44, 0.50)
    faint = ObjectDetection(BBox(0.42, 0.48, 0.46, 0.52), 0.4)  # under object_threshold
    box = lambda h, objects: HandsComponent()._contact_box(h, FrameDetections("P01_01", 1, [h], objects), [])[0]
    assert box(hand(0.09, -0.15), [cup, board, faint]) == cup.bbox  # point (0.44, 0.50): 0.06 from the cup
    assert box(hand(-0.05, -0.15), [cup]) == cup.bbox  # point (0.30, 0.50): 0.2 from the only object
    assert box(hand(0.09, -0.15), [faint]) is None


def test_a_labelled_box_names_the_contact_only_where_it_overlaps_the_contact_box_or_lies_near_it():
    """EPIC's labelled boxes cover the whole scene: the one that names the object in the hand overlaps the
    contact box (IoU >= 0.3), or has its centre within 0.15 of the contact point. A board that merely touches
    the knife's box, its centre far off, would name the knife "board"."""
    from leap_cli.extract.detections import LabelledBox

    knife = ObjectDetection(BBox(0.10, 0.10, 0.50, 0.50), 0.9)  # the contact box
    hand = HandDetection(BBox(0.10, 0.50, 0.30, 0.70), 0.9, HandState.PORTABLE_OBJECT, (0.08, -0.30),
                         HandSide.RIGHT)  # contact point (0.28, 0.30)
    board = LabelledBox("board", BBox(0.32, 0.32, 0.92, 0.92), 0.9)  # IoU 0.07, centre 0.47 from the point
    pan = LabelledBox("pan", BBox(0.30, 0.10, 0.70, 0.50), 0.9)  # IoU 1/3, centre 0.22 from the point
    spoon = LabelledBox("spoon", BBox(0.33, 0.36, 0.37, 0.40), 0.9)  # IoU 0.01, centre 0.11 from the point
    assert board.bbox.iou(knife.bbox) < 0.1 and pan.bbox.iou(knife.bbox) >= 0.3

    def name(*labelled):
        return HandsComponent()._contact_box(hand, FrameDetections("P01_01", 1, [hand], [knife]), list(labelled))

    assert name(board) == (knife.bbox, None)
    assert name(board, pan) == (knife.bbox, "pan")
    assert name(board, spoon) == (knife.bbox, "spoon")


def test_flickering_contact_is_bridged_up_to_max_gap_and_short_contacts_are_dropped():
    """The detector's contact state flickers from frame to frame: at 50 fps a gap of up to ``max_gap`` (0.25 s)
    joins two runs into one contact, a longer one leaves two; a run shorter than ``min_duration`` (0.15 s) is
    dropped, each run counting its last frame's duration, up to the segment's end."""
    from leap_cli.extract.hands import contact_intervals

    comp = HandsComponent()
    assert (comp.max_gap, comp.min_duration) == (0.25, 0.15)  # the values the cases below sit either side of
    times = [round(n / 50, 3) for n in range(100)]  # a 2 s segment's frames: 0.00-1.98 s

    def runs(*frames, end=2.0):
        on = [any(a <= i <= b for a, b in frames) for i in range(len(times))]
        return contact_intervals(times, on, 0.02, max_gap=comp.max_gap, min_duration=comp.min_duration, end=end)

    assert runs((0, 24), (37, 74)) == [(0, 74)]  # 0.24 s off (0.50-0.72 s): the longest gap under max_gap
    assert runs((0, 24), (40, 74)) == [(0, 24), (40, 74)]  # 0.30 s off
    assert runs((0, 24), (60, 64)) == [(0, 24)]  # 5 frames: 0.10 s of contact
    assert runs((0, 24), (60, 67)) == [(0, 24), (60, 67)]  # 8 frames: 0.16 s (1.20-1.36 s)
    assert runs((92, 99)) == [(92, 99)]  # the last 8 frames: 1.84-2.00 s
    assert runs((92, 99), end=1.98) == []  # ... of a segment ending at 1.98 s: 0.14 s in it


def test_the_strongest_of_two_hands_of_one_side_is_the_hand(tmp_path):
    """The detector can box one side twice in a frame (the hand and a second box on the wrist or another
    person's hand): the more confident box is the hand; a weak box saying NO_CONTACT would hide the contact."""
    frames = _hand_frames()
    for f in frames:
        f.hands.insert(0, HandDetection(BBox(0.20, 0.60, 0.35, 0.85), 0.6, HandState.NO_CONTACT, (0.0, 0.0),
                                        HandSide.RIGHT))
    assert [(h.score, h.state) for h in frames[40].hands] == [(0.6, HandState.NO_CONTACT),
                                                              (0.9, HandState.PORTABLE_OBJECT)]
    rec = HandsComponent().describe(SegmentContext(layout=_write(tmp_path, frames), segment=_segment(), fps=50.0))
    (c,) = next(h for h in rec["data"]["hands"] if h["hand"] == "right")["contacts"]
    assert _iou((c["start"], c["stop"]), (0.5, 1.5)) >= 0.9, c


def test_a_contact_to_the_segments_end_stops_at_its_end(tmp_path):
    """A segment's stop falls between two frames: a contact held to the end stops at the segment's duration,
    not a frame after its last frame began (past the clip the text describes)."""
    layout = _write(tmp_path, _hand_frames((1.0, 2.0)))
    seg = Segment("P01_01_0", "P01", "P01_01", 0.0, 1.97, 1, 99)  # frames 1-99: 0.00-1.96 s
    rec = HandsComponent().describe(SegmentContext(layout=layout, segment=seg, fps=50.0))
    (c,) = next(h for h in rec["data"]["hands"] if h["hand"] == "right")["contacts"]
    assert (c["start"], c["stop"]) == (1.0, 1.97)


def test_detector_frames_outside_a_contact_do_not_name_it(tmp_path):
    """The objects component's detector sees frames spread over the whole segment: those before or after a
    contact show what lies there then (the board the knife was put down on), and do not vote for its name."""
    from leap_cli.extract.detections import LabelledBox

    ctx = SegmentContext(layout=_write(tmp_path, _hand_frames((0.5, 1.0))), segment=_segment(), fps=50.0)
    # the contact: frames 26-50; one detector frame inside it, five outside, all boxing the knife's place
    boxes = {n: [LabelledBox("knife" if n == 38 else "board", KNIFE, 0.9)] for n in (1, 20, 38, 60, 80, 100)}
    ctx.video_cache[("detector_boxes", ctx.segment.narration_id)] = ("detector:test", boxes)
    rec = HandsComponent().describe(ctx)
    (c,) = next(h for h in rec["data"]["hands"] if h["hand"] == "right")["contacts"]
    assert (c["object"], c["named_by"]) == ("knife", "detector:test"), c


def test_objects_from_labelled_detections(tmp_path):
    board = {"left": 0.3, "top": 0.5, "right": 0.5, "bottom": 0.8}
    labelled = [{"video_id": "P01_01", "frame_number": n, "objects":
                 [{"label": "knife", "bbox": vars(KNIFE), "score": 0.8}]
                 + ([{"label": "board", "bbox": board, "score": 0.6}] if n > 50 else [])
                 + [{"label": "ghost", "bbox": board, "score": 0.2}]} for n in range(1, 101)]
    layout = _write(tmp_path, _hand_frames(), labelled)
    rec = ObjectsComponent().describe(SegmentContext(layout=layout, segment=_segment(), fps=50.0))
    assert rec["status"] == "ok" and rec["source"].startswith("object-detections")
    objs = {o["label"]: o for o in rec["data"]["objects"]}
    assert set(objs) == {"knife", "board"}  # the 0.2-score ghost is under the threshold
    assert objs["knife"]["position"] == "right" and objs["knife"]["near_hand"] == "right"
    assert objs["board"]["position"] == "centre" and abs(objs["board"]["start"] - 1.0) < 0.05
    assert objs["knife"]["share"] == 1.0 and objs["board"]["share"] == 0.5


def test_objects_fall_back_to_unlabelled_hand_object_boxes(tmp_path):
    layout = _write(tmp_path, _hand_frames())
    rec = ObjectsComponent().describe(SegmentContext(layout=layout, segment=_segment(), fps=50.0))
    assert rec["source"].startswith("hand-objects") and rec["data"]["objects"][0]["label"] == "object"


def test_detections_file_in_the_wrong_format_names_file_and_format(tmp_path):
    bad = tmp_path / "P01_01.jsonl"
    bad.write_text('{"video_id": "P01_01", "frame": 3, "boxes": []}\n')
    with pytest.raises(LeapError) as e:
        read_object_detections(bad)
    msg = e.value.one_line()
    assert str(bad) in msg and "line 1" in msg and '"objects"' in msg and "expected" in msg
    bad.write_text('{"video_id": "P01_01", "frame_number": 3, "objects": [{"label": "cup", "bbox": '
                   '{"left": 10, "top": 20, "right": 300, "bottom": 200}}]}\n')
    with pytest.raises(LeapError, match=r"outside \[0, 1\]"):
        read_object_detections(bad)


# --- clip text -------------------------------------------------------------------------------------------

def test_render_clip_orders_by_time_and_names_unavailable():
    comps = {
        "narration": {"status": "ok", "source": "annotations", "data": {}, "text": '"cut carrot"'},
        "audio": {"status": "ok", "source": "dsp-rules", "data": {"timeline": [
            {"start": 1.0, "stop": 2.0, "text": "sound: rhythmic chopping"}]}, "text": "chopping 1.0-2.0 s"},
        "camera": {"status": "unavailable", "source": "none", "data": {"reason": "no video"}, "text": ""},
        "hands": {"status": "ok", "source": "hand-objects", "data": {"timeline": [
            {"start": 0.2, "stop": 1.8, "text": "right hand touches knife"}]}, "text": "right hand: knife"},
        "objects": {"status": "error", "source": "x", "data": {"error": "boom"}, "text": ""},
    }
    text = render_clip(3.0, 5.0, comps)
    assert text.index("right hand touches knife") < text.index("rhythmic chopping")
    assert "\nCamera: unavailable (no video).\n" in text and text.endswith("\nObjects: error (boom).\nHands: right hand: knife.")
    assert text.splitlines()[0] == "Clip 3.00-5.00 s (2.0 s long)." and 'Narration: "cut carrot".' in text


def test_audio_of_a_very_short_segment_is_empty_not_an_error():
    ctx = SegmentContext(layout=None, segment=_segment(0.0, 0.05), fps=25,
                         read_audio=lambda sr: np.zeros(int(0.05 * sr), np.float32))
    rec = AudioComponent().describe(ctx)
    assert rec["status"] == "ok" and rec["data"]["events"] == [] and rec["text"] == "no audio in the segment"


def test_hand_contacts_of_a_29_97_fps_video_are_timed_in_epic_numbering(tmp_path):
    """EPIC's hand-object boxes of a 29.97 fps video count frames at 60 per second: the contact at 0.5-1.5 s is
    reported there, not at twice its time."""
    layout = _write(tmp_path, _hand_frames(fps=60.0))
    rec = HandsComponent().describe(SegmentContext(layout=layout, segment=_segment(fps=60.0), fps=29.97))
    (c,) = next(h for h in rec["data"]["hands"] if h["hand"] == "right")["contacts"]
    assert _iou((c["start"], c["stop"]), (0.5, 1.5)) >= 0.9, c


@pytest.mark.parametrize("suffix", [".jsonl", ".pkl"])
def test_hand_objects_of_either_format_find_a_segments_frames_by_bisection(tmp_path, suffix):
    """An hour of frames: both formats must give ``in_segment`` sorted frame numbers (a scan per segment would
    be quadratic over a video), and the same frames as a scan."""
    from types import SimpleNamespace

    from leap_cli.epic.hand_objects import write_hand_objects
    from leap_cli.extract.detections import in_segment, video_hand_objects

    path = tmp_path / f"P01_01{suffix}"
    numbers = list(range(1, 3000, 3))
    write_hand_objects(path, [FrameDetections("P01_01", n, [], []) for n in reversed(numbers)])
    frames = video_hand_objects({}, SimpleNamespace(hand_objects_path=lambda video_id: path), "P01_01")
    assert frames.keys_sorted == numbers
    assert in_segment(frames, 100, 200) == [n for n in numbers if 100 <= n <= 200]


def test_the_hand_an_object_is_near_does_not_depend_on_the_process(tmp_path):
    """An object near each hand equally often got the hand a max over a set picked: by the process's string
    hashing (PYTHONHASHSEED), so extract's clip text changed from run to run. The tie goes to the first."""
    import os
    import subprocess
    import sys

    script = """
from types import SimpleNamespace as NS
from leap_cli.epic.hand_objects import BBox
from leap_cli.extract.detections import LabelledBox
from leap_cli.extract.objects import summarise_objects

box = lambda x: BBox(x, 0.4, x + 0.1, 0.5)
per_frame = {n: [LabelledBox("cup", box(0.45), 0.9)] for n in (1, 2, 3, 4)}
hand = lambda side, x: NS(bbox=box(x), score=0.9, side=NS(name=side))
hands = {1: NS(hands=[hand("LEFT", 0.4)]), 2: NS(hands=[hand("RIGHT", 0.5)]),
         3: NS(hands=[hand("RIGHT", 0.5)]), 4: NS(hands=[hand("LEFT", 0.4)])}
ctx = NS(epic_frame_time=lambda n: n / 60, fps=60.0, segment=NS(duration=1.0))
print(summarise_objects(per_frame, ctx, hands, 0.5)[0][0]["near_hand"])
"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    seen = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(seed), "PYTHONPATH": root}).stdout.strip()
            for seed in range(1, 9)}
    assert seen == {"left"}


def test_an_object_is_near_a_hand_only_within_a_quarter_frame_of_a_confident_hand():
    """The clip text's "near the right hand": a hand a quarter of the frame away or more is not near, nor is a
    box the hand detector is unsure of (score 0.5 or less, which the hands component ignores too)."""
    from types import SimpleNamespace as NS

    from leap_cli.extract.detections import LabelledBox
    from leap_cli.extract.objects import summarise_objects

    cup = {1: [LabelledBox("cup", BBox(0.45, 0.40, 0.55, 0.50), 0.9)]}  # centre (0.50, 0.45)
    ctx = NS(epic_frame_time=lambda n: n / 60, fps=60.0, segment=NS(duration=1.0))

    def near(cx, cy, score=0.9):
        hand = NS(bbox=BBox(cx - 0.05, cy - 0.05, cx + 0.05, cy + 0.05), score=score, side=NS(name="RIGHT"))
        return summarise_objects(cup, ctx, {1: NS(hands=[hand])}, 0.5)[0][0]["near_hand"]

    assert near(0.60, 0.45) == "right"  # 0.1 away
    assert near(0.50, 0.95) is None  # 0.5 away
    assert near(0.60, 0.45, score=0.3) is None
