"""Camera component, checked against geometry and file formats: angle signs, motion words and their thresholds,
COLMAP / EPIC Fields poses, where in the kitchen, and odometry's pose from matches of a known motion."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from leap_cli.epic.annotations import Segment
from leap_cli.extract.base import SegmentContext
from leap_cli.extract.camera import (CameraComponent, _colmap_name, angles, intrinsics, motion_label,
                                     phases_from_steps, phases_text, read_colmap_images, read_epic_fields,
                                     read_poses, relative_pose, where_in_kitchen)
from tests.extract_signals import rot_x, rot_y
from tests.test_extract_components import _Layout, _views


def rot_z(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])


def _quat(axis, deg):
    """COLMAP's quaternion (qw, qx, qy, qz) of a rotation by ``deg`` about ``axis`` (Hamilton convention)."""
    n = np.asarray(axis, float) / np.linalg.norm(axis)
    h = math.radians(deg) / 2
    return (math.cos(h), *(n * math.sin(h)))


def _rodrigues(axis, deg):
    n = np.asarray(axis, float) / np.linalg.norm(axis)
    return cv2.Rodrigues(n * math.radians(deg))[0]


def _quat_of(r):
    """The quaternion of a rotation matrix, through its axis and angle (cv2.Rodrigues)."""
    v = cv2.Rodrigues(np.asarray(r, float))[0].ravel()
    deg = math.degrees(np.linalg.norm(v))
    return _quat(v if deg else [1, 0, 0], deg)


def _steps(*rows, dt=0.25):
    """Steps of ``dt`` seconds from (yaw, pitch, roll) rows."""
    return [{"start": i * dt, "stop": (i + 1) * dt, "yaw": y, "pitch": p, "roll": r}
            for i, (y, p, r) in enumerate(rows)]


# --- angles and intrinsics ------------------------------------------------------------------------------------

def test_angles_follow_the_documented_signs_for_each_axis():
    """Camera frame x right, y down, z forward; r_cam holds camera-2's axes in camera-1's. Turning right puts the
    new forward axis at +x (yaw > 0); looking up puts it at -y (pitch > 0); tilting clockwise puts the new right
    axis at +y, down (roll > 0)."""
    for deg in (20.0, -35.0):
        assert np.allclose(angles(rot_y(deg)), (deg, 0, 0), atol=1e-9)
        assert np.allclose(angles(rot_x(deg)), (0, deg, 0), atol=1e-9)
        assert np.allclose(angles(rot_z(deg)), (0, 0, deg), atol=1e-9)
    forward = rot_y(20)[:, 2]
    assert forward[0] > 0  # the convention spelled out: yaw 20 looks to the right
    assert rot_x(15)[1, 2] < 0 and rot_z(10)[1, 0] > 0  # looks up (-y); the right axis dips down (+y)


def test_pitch_after_a_turn_is_the_pitch_not_shrunk_by_the_yaw():
    """Yaw then pitch (R = Ry(yaw) Rx(pitch)): the new forward axis is (cos p sin y, -sin p, cos p cos y), so the
    pitch is read against the horizontal length of that axis, not its z alone."""
    for yaw, pitch in ((40.0, 25.0), (-70.0, -30.0), (120.0, 10.0)):
        y, p, _ = angles(rot_y(yaw) @ rot_x(pitch))
        assert y == pytest.approx(yaw, abs=1e-6) and p == pytest.approx(pitch, abs=1e-6)


def test_roll_after_a_turn_or_a_look_is_the_roll():
    """Roll is the last angle of the same Ry Rx Rz decomposition as yaw and pitch: turning right 30 deg then looking
    down 20 deg holds no roll (atan2(-r01, r11) read 10.3 deg there), and a 20 deg tilt after a 60 deg turn is 20
    (it read ~10)."""
    for yaw, pitch, roll in ((30.0, -20.0, 0.0), (60.0, 0.0, 20.0), (0.0, 40.0, 20.0), (25.0, 15.0, -10.0)):
        y, p, r = angles(rot_y(yaw) @ rot_x(pitch) @ rot_z(roll))
        assert (y, p) == pytest.approx((yaw, pitch), abs=1e-6)
        assert r == pytest.approx(roll, abs=1e-6)


def test_intrinsics_from_the_horizontal_field_of_view():
    """f = (width / 2) / tan(fov / 2) for both axes (square pixels); principal point at the frame's centre."""
    assert np.allclose(intrinsics(640, 480, 90.0), [[320, 0, 320], [0, 320, 240], [0, 0, 1]])
    f = 100 / math.tan(math.radians(30))
    assert np.allclose(intrinsics(200, 100, 60.0), [[f, 0, 100], [0, f, 50], [0, 0, 1]])


# --- odometry's pose from matches of a known motion -------------------------------------------------------------

K640 = intrinsics(640, 480, 90.0)


def _project(k, pts_cam):
    p = (k @ pts_cam.T).T
    return p[:, :2] / p[:, 2:]


def _rotation_matches(r_cam, n=150, seed=1, k=K640):
    """Matches of a camera rotating by r_cam (camera-2 axes in camera-1 axes) before a far scene: a direction d
    in camera-1 axes is r_cam^T d in camera-2 axes."""
    rng = np.random.default_rng(seed)
    p1 = np.column_stack([rng.uniform(60, 580, n), rng.uniform(60, 420, n)])
    rays = (np.linalg.inv(k) @ np.column_stack([p1, np.ones(n)]).T).T
    return p1, _project(k, (r_cam.T @ rays.T).T)


def test_a_small_head_turn_is_a_turn_and_a_subpixel_jitter_is_still():
    """Half a degree of yaw moves a 640-px frame (f = 320) by ~2.8 px, 2 deg by ~11 px: turns, not "still";
    matches moving by under half a pixel (the median) are still."""
    for yaw in (0.5, 2.0):
        p1, p2 = _rotation_matches(rot_y(yaw))
        est = relative_pose(None, None, K640, None, matches=(p1, p2))
        assert est["model"] == "homography" and est["t"] is None
        assert angles(est["r_cam"])[0] == pytest.approx(yaw, abs=0.05)
    jitter = np.random.default_rng(3).uniform(-0.3, 0.3, p1.shape)
    est = relative_pose(None, None, K640, None, matches=(p1, p1 + jitter))
    assert est["model"] == "still" and np.allclose(est["r_cam"], np.eye(3))


def test_the_rotation_between_rays_is_a_rotation_even_where_a_reflection_fits_better():
    from leap_cli.extract.camera import _rotation_between

    k = intrinsics(192, 144, 90.0)
    p1 = np.random.default_rng(2).uniform(10, 180, (40, 2))
    rays = (np.linalg.inv(k) @ np.column_stack([p1, np.ones(40)]).T).T
    r = rot_y(7.0) @ rot_x(-3.0) @ rot_z(2.0)
    assert np.allclose(_rotation_between(p1, _project(k, (r @ rays.T).T), k), r, atol=1e-9)
    mirror = np.diag([-1.0, 1.0, 1.0])  # left and right swapped about the optical axis: no rotation does that
    best = _rotation_between(p1, _project(k, (mirror @ rays.T).T), k)
    assert np.linalg.det(best) == pytest.approx(1.0) and np.allclose(best @ best.T, np.eye(3), atol=1e-9)


def test_small_turns_of_the_kitchens_frames_read_their_size():
    """Turns of 1 and 2 deg move the kitchen's 192x144 frames (f = 96) by ~1.7 and ~3.4 px. Tracked on the
    rendered frames, the rotation fitted to the homography's inliers as rays (3 unknowns) reads them within 10%;
    orthonormalising the homography itself (8 unknowns, whose perspective terms take up the tracker's small
    errors) read the 1 deg turns 0.69 of their size (median), and the kitchen's turns ~7% small overall."""
    from leap_cli.extract.camera import Tracker
    from leap_cli.synth.render import Renderer, make_panorama

    w, h = 192, 144
    renderer = Renderer(w, h, {}, {}, {}, make_panorama(np.random.default_rng(0), w, h), np.zeros((8, 3), np.int16))
    k, orb = intrinsics(w, h, 90.0), cv2.ORB_create(300)
    for turn in (1.0, 2.0):
        ratios = []
        for yaw in np.linspace(-30.0, 30.0, 12):
            g1, g2 = (cv2.cvtColor(renderer.view(float(yaw + d), -3.0), cv2.COLOR_RGB2GRAY) for d in (0.0, turn))
            est = relative_pose(g1, g2, k, orb, matches=Tracker(orb).pair(g1, g2))
            ratios.append(angles(est["r_cam"])[0] / turn)
        assert 0.9 <= np.median(ratios) <= 1.1, (turn, ratios)


def test_a_head_turn_with_some_bad_matches_is_still_a_rotation():
    """A pure rotation with a third of the matches wrong: the homography explains all the good ones (under 70% of
    the matches), the essential matrix cannot do better than it by much: the rotation is the homography's."""
    r = rot_y(-8.0) @ rot_x(3.0)
    p1, p2 = _rotation_matches(r, n=150, seed=4)
    rng = np.random.default_rng(5)
    bad = rng.random(len(p1)) < 0.35
    p2 = p2.copy()
    p2[bad] = np.column_stack([rng.uniform(0, 640, bad.sum()), rng.uniform(0, 480, bad.sum())])
    est = relative_pose(None, None, K640, None, matches=(p1, p2))
    assert est["model"] == "homography"
    assert np.allclose(angles(est["r_cam"])[:2], (-8.0, 3.0), atol=0.3)
    # the step's ``matches`` is how many the rotation explains (a wrong match may land near its right place)
    assert (~bad).sum() <= est["matches"] <= (~bad).sum() + 3 and est["matches"] < len(p1)


@pytest.mark.parametrize("centre,yaw", [((0.4, 0.0, 0.0), 3.0), ((0.0, 0.0, 0.5), -4.0), ((-0.4, 0.0, 0.1), 0.0)])
def test_essential_matrix_gives_the_direction_the_camera_moves_and_its_turn(centre, yaw):
    """A near scene (depths 2-6) and a camera whose centre moves to ``centre`` (camera-1 axes) while turning by
    ``yaw``: a point X (camera-1 axes) is r_cam^T (X - C) in camera-2 axes. The essential matrix wins (parallax)
    and gives the turn's sign and the camera centre's direction of travel, not recoverPose's t."""
    rng = np.random.default_rng(7)
    n = 200
    z = rng.uniform(2.0, 6.0, n)
    x = rng.uniform(-0.8, 0.8, n) * z
    y = rng.uniform(-0.6, 0.6, n) * z
    pts = np.column_stack([x, y, z])
    c = np.array(centre)
    r_cam = rot_y(yaw)
    p1, p2 = _project(K640, pts), _project(K640, (r_cam.T @ (pts - c).T).T)
    est = relative_pose(None, None, K640, None, matches=(p1, p2))
    assert est["model"] == "essential"
    assert np.allclose(est["t"], c / np.linalg.norm(c), atol=0.05)
    assert angles(est["r_cam"])[0] == pytest.approx(yaw, abs=0.3)


# --- motion labels, phases and words --------------------------------------------------------------------------

def test_motion_label_names_the_dominant_axis_and_its_sign():
    assert motion_label(10, 0, 0, 5) == "turn_right" and motion_label(-10, 3, 2, 5) == "turn_left"
    assert motion_label(1, 10, 0, 5) == "look_up" and motion_label(1, -10, 3, 5) == "look_down"
    assert motion_label(0, 0, 10, 5) == "tilt_right" and motion_label(2, 1, -10, 5) == "tilt_left"
    assert motion_label(10, 0, 20, 5) == "tilt_right"  # roll dominates a smaller yaw
    assert motion_label(-10, 0, -20, 5) == "tilt_left"
    assert motion_label(4.9, -4.9, 4.9, 5) == "still"


def test_a_rotation_at_exactly_the_rate_is_turning():
    """Labels count speeds of at least ``rate`` (>=) as turning."""
    assert motion_label(5.0, 0, 0, 5.0) == "turn_right"
    assert motion_label(0, 0, -5.0, 5.0) == "tilt_left"


@pytest.mark.parametrize("rows,motion,axis,degrees,text", [
    ([(0, 4, 0)] * 4, "look_up", "pitch", 16.0, "looks up about 15 deg"),
    ([(0, -3, 0)] * 4, "look_down", "pitch", 12.0, "looks down about 10 deg"),
    ([(0, 0, 3)] * 4, "tilt_right", "roll", 12.0, "tilts head right about 10 deg"),
    ([(0, 0, -6)] * 3, "tilt_left", "roll", 18.0, "tilts head left about 20 deg"),
    ([(-4, 0, 0)] * 3, "turn_left", "yaw", 12.0, "turns head left about 10 deg"),
])
def test_a_phase_sums_its_steps_on_its_own_axis(rows, motion, axis, degrees, text):
    """Equal neighbours merge: the phase spans them, sums each angle, and its degrees are those of its axis."""
    phases = phases_from_steps(_steps(*rows))
    assert [p["motion"] for p in phases] == [motion]
    ph = phases[0]
    assert (ph["start"], ph["stop"]) == (0.0, 0.25 * len(rows))
    assert ph["degrees"] == degrees
    assert ph[axis] == pytest.approx(sum(r[("yaw", "pitch", "roll").index(axis)] for r in rows))
    assert phases_text(phases) == text


def test_turning_rate_threshold_is_5_deg_per_second():
    """A slow drift (3.6 deg/s, 7.2 deg over 2 s) is holding still; 8 deg/s (8 deg over 1 s) is a turn."""
    assert phases_text(phases_from_steps(_steps(*[(0.9, 0, 0)] * 8))) == "holds still"
    phases = phases_from_steps(_steps(*[(2.0, 0, 0)] * 4))
    assert [p["motion"] for p in phases] == ["turn_right"] and phases[0]["degrees"] == 8.0
    assert phases_text(phases) == "turns head right about 10 deg"
    # the rate is per second: the same 2 deg over 0.5 s steps (4 deg/s) is still
    assert phases_text(phases_from_steps(_steps(*[(2.0, 0, 0)] * 4, dt=0.5))) == "holds still"


def test_a_turn_of_exactly_5_deg_in_all_is_a_turn():
    """Phases turning *less* than 5 deg in all are still; 5.0 deg is a turn."""
    phases = phases_from_steps(_steps((2.5, 0, 0), (2.5, 0, 0), (0, 0, 0)))
    assert [p["motion"] for p in phases] == ["turn_right", "still"]
    assert phases_text(phases) == "turns head right about 5 deg"
    phases = phases_from_steps(_steps((2.4, 0, 0), (2.4, 0, 0), (0, 0, 0)))
    assert phases_text(phases) == "holds still"


def test_a_turn_rounding_to_0_deg_still_says_about_5():
    phases = phases_from_steps(_steps((2.0, 0, 0), (0, 0, 0)), min_degrees=1.0)
    assert phases[0]["degrees"] == 2.0 and phases_text(phases) == "turns head right about 5 deg"


@pytest.mark.parametrize("t,word", [([0, 1, 0], "down"), ([0, -1, 0], "up"), ([0, 0, 1], "forward"),
                                    ([0, 0, -1], "backward"), ([-0.2, 0.1, -0.9], "backward"),
                                    ([-0.9, 0.0, 0.3], "left")])
def test_direction_of_travel_words(t, word):
    """Camera axes: x right, y down, z forward; the largest component (by size, whatever its sign) names it."""
    steps = _steps((0, 0, 0), (0, 0, 0))
    for st in steps:
        st["translation"] = t
    rec = CameraComponent(frames=3)._summary(steps, np.eye(3), "orb-vo:3 frames")
    assert rec["data"]["translation_direction"] == word and rec["text"] == f"holds still; moves {word}"


# --- COLMAP and EPIC Fields poses -----------------------------------------------------------------------------

def test_colmap_quaternions_are_read_as_hamilton_and_normalised(tmp_path):
    """images.txt: IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME, then a line of points. The rotation of a
    quaternion about an oblique axis equals Rodrigues' of that axis and angle; a quaternion not of unit length (a
    rounded or scaled one) is the same rotation; the centre is -R^T t."""
    axis, deg = [1.0, 2.0, -0.5], 37.0
    q = _quat(axis, deg)
    t = [0.3, -1.2, 2.5]
    lines = ["# Image list with two lines of data per image:",
             "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
             f"1 {' '.join(map(str, q))} {' '.join(map(str, t))} 1 frame_0000000011.jpg",
             "10.5 20.5 -1 30.5 40.5 7",
             f"2 {' '.join(str(2.0 * v) for v in q)} {' '.join(map(str, t))} 1 frame_0000000012.jpg",
             ""]
    path = tmp_path / "images.txt"
    path.write_text("\n".join(lines) + "\n")
    poses = read_colmap_images(path)
    r = _rodrigues(axis, deg)
    assert sorted(poses) == [11, 12]
    for n in (11, 12):
        assert np.allclose(poses[n][0], r, atol=1e-9)
        assert np.allclose(poses[n][1], -r.T @ np.array(t), atol=1e-9)


def test_epic_fields_camera_keeps_only_what_describes_it(tmp_path):
    path = tmp_path / "P01_01.json"
    path.write_text(json.dumps({"camera": {"id": 3, "model": "PINHOLE", "width": 456, "height": 256,
                                           "params": [220.0, 220.0, 228.0, 128.0]},
                                "images": {"frame_0000000005.jpg": [*_quat([0, 1, 0], 90), 0, 0, 1]}}))
    poses, camera = read_epic_fields(path)
    assert camera == {"model": "PINHOLE", "width": 456, "height": 256, "params": [220.0, 220.0, 228.0, 128.0]}
    # world->camera yawing 90 deg: t = (0, 0, 1) puts the centre at -R^T t = (1, 0, 0) rotated back: (1, 0, 0)
    assert np.allclose(poses[5][1], -rot_y(90).T @ [0, 0, 1])


def test_colmap_label_is_named_from_the_videos_nearest_folder():
    assert _colmap_name(Path("/data/P01_01/poses/P01_01/sparse/0/images.bin"), "P01_01") == \
        "P01_01/sparse/0/images.bin"
    assert _colmap_name(Path("/data/recon/images.txt"), "P01_01") == "recon/images.txt"


def _write_json_poses(path, c2w_by_frame, centres=None):
    """EPIC Fields JSON of cameras with camera->world rotations ``c2w_by_frame`` {frame: R} and centres."""
    images = {}
    for n, c2w in c2w_by_frame.items():
        w2c = c2w.T
        c = np.zeros(3) if centres is None else np.asarray(centres[n], float)
        images[f"frame_{n:010d}.jpg"] = [*map(float, _quat_of(w2c)), *map(float, -w2c @ c)]
    path.write_text(json.dumps({"camera": {"model": "PINHOLE", "width": 456, "height": 256,
                                           "params": [220.0, 220.0, 228.0, 128.0]}, "images": images}))
    return path


def _describe(tmp_path, path, start_frame, stop_frame, frames=9, fps=50.0):
    """describe() on a segment of EPIC frames start_frame..stop_frame of a 50 fps video (EPIC: 50 frames/s)."""
    seg = Segment("P01_01_0", "P01", "P01_01", (start_frame - 1) / 50, (stop_frame - 1) / 50, start_frame, stop_frame)
    return CameraComponent(frames=frames).describe(SegmentContext(layout=_Layout(tmp_path, poses=path), segment=seg,
                                                                  fps=fps))


def test_total_rotation_composes_turn_then_look_in_order(tmp_path):
    """A head that turns right 30 deg, then looks down 20 deg (camera->world Ry(yaw) Rx(pitch)): in all, the last
    camera's axes in the first's are Ry(30) Rx(-20), whose angles are yaw 30, pitch -20 exactly."""
    c2w = {n: rot_y(7.5 * min(n - 1, 4)) @ rot_x(-5.0 * max(n - 5, 0)) for n in range(1, 10)}
    rec = _describe(tmp_path, _write_json_poses(tmp_path / "P01_01.json", c2w), 1, 9)
    assert rec["status"] == "ok" and rec["data"]["method"] == "epic-fields"
    total = rec["data"]["total"]
    assert (total["yaw"], total["pitch"], total["roll"]) == (30.0, -20.0, 0.0)
    assert [p["motion"] for p in rec["data"]["phases"]] == ["turn_right", "look_down"]


@pytest.mark.parametrize("walk,word", [((1, 0, 0), "forward"), ((-1, 0, 0), "backward"), ((0, 0, -1), "right")])
def test_pose_translation_is_in_the_cameras_own_axes(tmp_path, walk, word):
    """A camera turned 90 deg right (its forward axis is world +x, its right axis world -z) walking along world
    ``walk``: forward along +x, backward along -x, to its right along -z."""
    c2w = {n: rot_y(90.0) for n in range(1, 10)}
    centres = {n: 0.1 * n * np.array(walk, float) for n in range(1, 10)}
    rec = _describe(tmp_path, _write_json_poses(tmp_path / "P01_01.json", c2w, centres), 1, 9)
    assert rec["data"]["translation_direction"] == word
    assert all(np.allclose(st["translation"], {"forward": [0, 0, 1], "backward": [0, 0, -1],
                                               "right": [1, 0, 0]}[word], atol=1e-3)
               for st in rec["data"]["steps"])


def test_poses_keep_about_frames_poses_spread_through_the_segment(tmp_path):
    c2w = {n: rot_y(2.0 * n) for n in range(1, 11)}
    rec = _describe(tmp_path, _write_json_poses(tmp_path / "P01_01.json", c2w), 1, 10, frames=3)
    steps = rec["data"]["steps"]
    assert rec["data"]["registered_frames"] == 10 and len(steps) == 2
    assert steps[0]["start"] == 0.0 and steps[-1]["stop"] == pytest.approx(9 / 50)
    assert sum(st["yaw"] for st in steps) == pytest.approx(18.0, abs=0.01)


def test_the_segments_last_frame_counts_as_inside(tmp_path):
    """Registered frames exactly at the segment's first and last frames are two: enough for a step."""
    c2w = {1: np.eye(3), 11: rot_y(10.0), 40: rot_y(20.0)}
    rec = _describe(tmp_path, _write_json_poses(tmp_path / "P01_01.json", c2w), 1, 11)
    assert rec["status"] == "ok" and rec["data"]["registered_frames"] == 2
    assert rec["data"]["steps"][0]["yaw"] == pytest.approx(10.0, abs=0.01)


def test_where_is_the_mean_of_the_segments_centres_among_all_the_videos(tmp_path):
    """Centres at x = 0..10 (frames 1..11): mean 5, spread sqrt(mean((x - 5)^2)) = sqrt(10). A segment over the
    frames at x = 8, 9, 10 sits at x = 9: 4 / sqrt(10) = 1.26 spreads out, toward the edge; within half a spread
    (1.58) of x = 9 lie x = 8, 9, 10: 3 of 11."""
    c2w = {n: np.eye(3) for n in range(1, 12)}
    centres = {n: [float(n - 1), 0.0, 0.0] for n in range(1, 12)}
    rec = _describe(tmp_path, _write_json_poses(tmp_path / "P01_01.json", c2w, centres), 9, 11)
    where = rec["data"]["where"]
    assert where["distance_from_centre"] == pytest.approx(round(4 / math.sqrt(10), 2))
    assert where["time_share_nearby"] == pytest.approx(round(3 / 11, 3))
    assert where["along_main_axis"] == pytest.approx(0.9)  # from the video's first frame's end
    assert "toward the edge of" in rec["text"] and "90% along the main axis" in rec["text"]


@pytest.mark.parametrize("backwards", [False, True])
@pytest.mark.parametrize("order", ["frames", "reversed"])
def test_along_the_main_axis_runs_from_where_the_video_starts(tmp_path, backwards, order):
    """Where along the main axis was measured from whichever end SVD's arbitrary sign picked (0.1 or 0.9 for the
    same segment; it may differ between machines' libraries, and the clip text, hence the prompt's cache key, with
    it). It runs from the end of the video's first frame, whether the video walks +x or -x, and whatever order the
    pose file lists the frames in."""
    frames = list(range(1, 12)) if order == "frames" else list(range(11, 0, -1))
    c2w = {n: np.eye(3) for n in frames}
    centres = {n: [float(10 - (n - 1) if backwards else n - 1), 0.0, 0.0] for n in frames}
    rec = _describe(tmp_path, _write_json_poses(tmp_path / "P01_01.json", c2w, centres), 9, 11)
    assert rec["data"]["where"]["along_main_axis"] == pytest.approx(0.9)
    for sign in (1.0, -1.0):  # the axis as SVD may give it: either sign, the same answer
        pts = np.array([[sign * x, 0.0, 0.0] for x in range(11)])
        assert where_in_kitchen(pts, pts[9])[0]["along_main_axis"] == 0.9


def test_where_in_kitchen_middle_edge_and_far():
    centres = np.array([[float(x), 0.0, 0.0] for x in range(11)])  # spread sqrt(10) = 3.16
    data, text = where_in_kitchen(centres, np.array([5.0, 0.0, 0.0]))
    assert data == {"distance_from_centre": 0.0, "along_main_axis": 0.5, "time_share_nearby": round(3 / 11, 3)}
    assert text.startswith("camera near the middle of")
    data, text = where_in_kitchen(centres, np.array([8.0, 0.0, 0.0]))  # 3 / 3.16 = 0.95 spreads
    assert data["distance_from_centre"] == 0.95 and text.startswith("camera toward the edge of")
    data, text = where_in_kitchen(centres, np.array([10.0, 0.0, 0.0]))  # 5 / 3.16 = 1.58 spreads
    assert data["distance_from_centre"] == 1.58 and text.startswith("camera far out from")
    assert data["along_main_axis"] == 1.0 and data["time_share_nearby"] == round(2 / 11, 3)
    data, text = where_in_kitchen(np.zeros((5, 3)), np.zeros(3))
    assert data["along_main_axis"] is None and "one place" in text


# --- frames asked for ------------------------------------------------------------------------------------------

def test_frames_wanted_are_the_frames_read_at_the_short_side_never_upscaled():
    seg = Segment("P01_01_0", "P01", "P01_01", 0.0, 2.0, 1, 100)
    for size, side in (((1920, 1080), 240), ((456, 256), 240), ((320, 180), None)):
        ctx = SegmentContext(layout=None, segment=seg, fps=50.0, frame_size=lambda size=size: size)
        [(numbers, short)] = CameraComponent(frames=9).frames_wanted(ctx)
        assert short == side
        assert len(numbers) == 9 and numbers == ctx.segment_frames(9)
        assert numbers[0] == 1 and numbers[-1] >= 99


def test_inconsistent_directions_of_travel_are_no_walk():
    """Steps moving right and then back-left-down average to (0.2, 0.4, 0), shorter than 0.5: no direction."""
    steps = _steps((0, 0, 0), (0, 0, 0))
    steps[0]["translation"], steps[1]["translation"] = [1.0, 0.0, 0.0], [-0.6, 0.8, 0.0]
    rec = CameraComponent(frames=3)._summary(steps, np.eye(3), "orb-vo:3 frames")
    assert "translation_direction" not in rec["data"] and rec["text"] == "holds still"


def test_the_timeline_lists_the_moving_phases_only():
    steps = _steps((0, 0, 0), (0, 0, 0), (-4, 0, 0), (-4, 0, 0), (0, 0, 0), (0, 3, 0), (0, 3, 0))
    rec = CameraComponent(frames=8)._summary(steps, np.eye(3), "orb-vo:8 frames")
    assert [p["motion"] for p in rec["data"]["phases"]] == ["still", "turn_left", "still", "look_up"]
    assert rec["data"]["timeline"] == [{"start": 0.5, "stop": 1.0, "text": "turns head left about 10 deg"},
                                       {"start": 1.25, "stop": 1.75, "text": "looks up about 5 deg"}]


def test_poses_leaving_exactly_the_allowed_time_uncovered_are_used(tmp_path):
    """``max_uncovered_s``: odometry only where the registered frames leave *more* than it uncovered. At 59.94 fps
    EPIC counts 60 frames a second: registered from frame 16 on, (16 - 1) / 60 = 0.25 s of a 1 s segment is
    uncovered, the default allowance."""
    c2w = {n: rot_y(0.5 * (n - 16)) for n in range(16, 62)}
    path = _write_json_poses(tmp_path / "P01_01.json", c2w)
    seg = Segment("P01_01_0", "P01", "P01_01", 0.0, 1.0, 1, 61)
    views = _views([np.eye(3)] * 3)

    def ctx():
        return SegmentContext(layout=_Layout(tmp_path, poses=path), segment=seg, fps=59.94,
                              read_frames=lambda nums, side: views[[0] * len(nums)])

    rec = CameraComponent(frames=5).describe(ctx())
    assert rec["data"]["method"] == "epic-fields" and rec["data"]["uncovered_s"] == 0.25
    rec = CameraComponent(frames=5, max_uncovered_s=0.24).describe(ctx())
    assert rec["data"]["method"] == "visual-odometry"


def test_odometry_total_composes_turn_then_look_in_order():
    """Odometry's steps compose in order: turn right 30 deg, then look down 20 deg, is Ry(30) Rx(-20) in all (the
    other order would read yaw 31.6, pitch -17.2)."""
    rots = [rot_y(7.5 * min(i, 4)) @ rot_x(-5.0 * max(i - 4, 0)) for i in range(9)]
    frames = _views(rots)
    seg = Segment("P01_01_0", "P01", "P01_01", 0.0, 2.25, 1, 10)
    ctx = SegmentContext(layout=_Layout(Path(".")), segment=seg, fps=4.0,
                         read_frames=lambda nums, side: frames[[n - 1 for n in nums]])
    rec = CameraComponent(frames=9, source="vo").describe(ctx)
    total = rec["data"]["total"]
    assert total["yaw"] == pytest.approx(30.0, abs=1.0) and total["pitch"] == pytest.approx(-20.0, abs=1.0)


def test_a_json_pose_file_is_epic_fields_whatever_the_case_of_its_suffix(tmp_path):
    path = tmp_path / "P01_01.JSON"
    path.write_text(json.dumps({"images": {"frame_0000000001.jpg": [1, 0, 0, 0, 0, 0, 0]}}))
    poses, method, camera = read_poses(path)
    assert method == "epic-fields" and list(poses) == [1] and camera == {}


def test_blank_lines_between_colmap_records_are_skipped(tmp_path):
    """COLMAP's reader skips empty lines before an image line; a hand-edited file with blank lines between records
    or at its end reads the same (an image's own empty points line is still its second line)."""
    q1, q2 = _quat([0, 1, 0], 10), _quat([1, 0, 0], -5)
    text = ("# header\n\n"
            f"1 {' '.join(map(str, q1))} 0 0 0 1 frame_0000000001.jpg\n\n\n\n"
            f"2 {' '.join(map(str, q2))} 1 0 0 1 frame_0000000002.jpg\n1.0 2.0 -1\n\n\n")
    path = tmp_path / "images.txt"
    path.write_text(text)
    poses = read_colmap_images(path)
    assert sorted(poses) == [1, 2]
    assert np.allclose(poses[1][0], _rodrigues([0, 1, 0], 10)) and np.allclose(poses[2][0], _rodrigues([1, 0, 0], -5))


def test_a_turn_is_not_still_because_some_matches_stay_put():
    """The still test is on the median motion: a 3 deg turn (~17 px at f = 320) where a fifth of the matches do not
    move (an overlay, the wearer's own body) is a turn, not "still"."""
    p1, p2 = _rotation_matches(rot_y(3.0), n=150, seed=6)
    p2 = p2.copy()
    p2[::5] = p1[::5]
    est = relative_pose(None, None, K640, None, matches=(p1, p2))
    assert est["model"] == "homography"
    assert angles(est["r_cam"])[0] == pytest.approx(3.0, abs=0.2)


def test_a_single_registered_frame_gives_no_pose_motion(tmp_path):
    """Motion needs two registered frames in the segment: one is "unavailable" (odometry in auto mode)."""
    c2w = {5: np.eye(3), 40: rot_y(20.0)}
    path = _write_json_poses(tmp_path / "P01_01.json", c2w)
    seg = Segment("P01_01_0", "P01", "P01_01", 0.0, 0.4, 1, 21)
    rec = CameraComponent(source="colmap").describe(SegmentContext(layout=_Layout(tmp_path, poses=path), segment=seg,
                                                                   fps=50.0))
    assert rec["status"] == "unavailable"
    assert rec["data"]["reason"] == "fewer than 2 registered frames in the segment"
