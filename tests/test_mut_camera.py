"""Mutation-testing gaps of leap_cli/extract/camera.py (camera motion from visual odometry or EPIC Fields / COLMAP
poses): odometry's pair estimate (too few matches, inlier counts, the best rotation where rays fit no rotation),
motion-label precedence on equal speeds, the axes a pose step's translation is given in, where_in_kitchen's
one-place case, the pose readers' errors, and which source describe() uses (vo, auto without poses or frames).
One strict xfail records a known limit kept for its cost: a fast head roll of one view is taken as a cut."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from leap_cli.epic.annotations import Segment
from leap_cli.errors import LeapError
from leap_cli.extract.base import SegmentContext
from leap_cli.extract.camera import (CameraComponent, _rotation_between, angles, intrinsics, motion_label,
                                     read_colmap_images, read_epic_fields, relative_pose, where_in_kitchen)
from tests.extract_signals import rot_x, rot_y
from tests.test_camera_odometry import K640, _describe, _project, _rotation_matches, _write_json_poses, rot_z
from tests.test_extract_components import _Layout, _views


def test_a_pair_with_fewer_than_12_matches_claims_no_motion():
    """Eleven matches of a clear 6 deg turn are too few to trust: the step is no rotation and no model; twelve
    are enough."""
    p1, p2 = _rotation_matches(rot_y(6.0), n=12, seed=8)
    est = relative_pose(None, None, K640, None, matches=(p1[:11], p2[:11]))
    assert est["model"] is None and est["t"] is None and est["matches"] == 11
    assert np.allclose(est["r_cam"], np.eye(3))
    est = relative_pose(None, None, K640, None, matches=(p1, p2))
    assert est["model"] == "homography" and angles(est["r_cam"])[0] == pytest.approx(6.0, abs=0.1)


def test_equal_speeds_on_two_axes_name_the_turn_then_the_look():
    """Head turns come first on a tie (yaw before pitch before roll), whatever the signs."""
    assert motion_label(10, 10, 0, 5) == "turn_right" and motion_label(-10, 10, -10, 5) == "turn_left"
    assert motion_label(0, 10, 10, 5) == "look_up" and motion_label(0, -10, -10, 5) == "look_down"


def test_a_pose_steps_translation_is_in_the_axes_it_starts_from(tmp_path):
    """A step from a camera looking along world +z to one turned 90 deg right (looking along +x), its centre moving
    along world +z: it walked forward, as seen from where it started (odometry's convention: camera-1 axes),
    though the turned camera would call that motion left."""
    c2w = {1: np.eye(3), 2: rot_y(90.0)}
    centres = {1: [0.0, 0.0, 0.0], 2: [0.0, 0.0, 0.2]}
    rec = _describe(tmp_path, _write_json_poses(tmp_path / "P01_01.json", c2w, centres), 1, 2, frames=2)
    [step] = rec["data"]["steps"]
    assert np.allclose(step["translation"], [0, 0, 1], atol=1e-3)
    assert step["yaw"] == pytest.approx(90.0, abs=0.01)
    assert rec["data"]["translation_direction"] == "forward"


def test_centres_that_differ_by_rounding_only_are_one_place():
    """A rotation-only reconstruction whose camera centres scatter by float rounding (nanometres) is one place,
    not a kitchen to place the segment in."""
    centres = np.random.default_rng(9).normal(0.0, 1e-9, (20, 3))
    data, text = where_in_kitchen(centres, centres[:3].mean(axis=0))
    assert data == {"distance_from_centre": 0.0, "along_main_axis": None, "time_share_nearby": 1.0}
    assert "one place" in text


@pytest.mark.parametrize("doc", [{"camera": {}}, [1, 2], {"images": [[1, 0, 0, 0, 0, 0, 0]]}])
def test_an_epic_fields_file_without_an_images_object_is_a_clear_error(tmp_path, doc):
    path = tmp_path / "P01_01.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(LeapError, match='no "images" object') as e:
        read_epic_fields(path)
    assert e.value.fix and "images" in e.value.fix


def _images_bin(names):
    """COLMAP's images.bin (WriteImagesBinary) of identity poses, no 2D points."""
    blob = struct.pack("<Q", len(names))
    for i, name in enumerate(names, start=1):
        blob += struct.pack("<I7dI", i, 1, 0, 0, 0, 0, 0, 0, 1) + name.encode() + b"\0" + struct.pack("<Q", 0)
    return blob


def test_a_cut_short_images_bin_names_the_image_it_stopped_in(tmp_path):
    blob = _images_bin(["frame_0000000001.jpg", "frame_0000000002.jpg", "frame_0000000003.jpg"])
    path = tmp_path / "images.bin"
    path.write_bytes(blob)
    assert sorted(read_colmap_images(path)) == [1, 2, 3]
    path.write_bytes(blob[:-30])  # the third image's name and point count are missing
    with pytest.raises(LeapError, match="cut short") as e:
        read_colmap_images(path)
    assert e.value.record == "image 3 of 3"


def test_without_poses_or_frames_the_camera_is_unavailable_not_an_error(tmp_path):
    seg = Segment("P01_01_0", "P01", "P01_01", 0.0, 2.0, 1, 100)
    rec = CameraComponent().describe(SegmentContext(layout=_Layout(tmp_path), segment=seg, fps=50.0))
    assert rec["status"] == "unavailable"
    assert rec["data"]["reason"] == "no video or frames for this segment"


def test_source_vo_uses_odometry_even_where_poses_exist(tmp_path):
    """``source="vo"`` (--camera-source vo) ignores the video's poses: odometry, and no "poses_skipped"."""
    path = _write_json_poses(tmp_path / "P01_01.json", {n: rot_y(2.0 * n) for n in range(1, 10)})
    seg = Segment("P01_01_0", "P01", "P01_01", 0.0, 0.16, 1, 9)
    views = _views([np.eye(3)] * 3)

    def ctx():
        return SegmentContext(layout=_Layout(tmp_path, poses=path), segment=seg, fps=50.0,
                              read_frames=lambda nums, side: views[[0] * len(nums)])

    assert CameraComponent(frames=3).describe(ctx())["data"]["method"] == "epic-fields"
    rec = CameraComponent(frames=3, source="vo").describe(ctx())
    assert rec["status"] == "ok" and rec["data"]["method"] == "visual-odometry"
    assert "poses_skipped" not in rec["data"] and "where" not in rec["data"]


def test_odometry_without_poses_says_why_poses_were_not_used(tmp_path):
    seg = Segment("P01_01_0", "P01", "P01_01", 0.0, 0.16, 1, 9)
    views = _views([np.eye(3)] * 3)
    rec = CameraComponent(frames=3).describe(SegmentContext(layout=_Layout(tmp_path), segment=seg, fps=50.0,
                                                            read_frames=lambda nums, side: views[[0] * len(nums)]))
    assert rec["data"]["method"] == "visual-odometry"
    assert rec["data"]["poses_skipped"] == "no poses for this video"


def test_an_unknown_camera_source_is_refused():
    with pytest.raises(LeapError, match="unknown camera source 'colmp'") as e:
        CameraComponent(source="colmp")
    assert "auto, vo or colmap" in e.value.fix


def test_the_rotation_between_rays_is_the_best_rotation_where_a_reflection_fits_better():
    """Where the rays are mirrored (no rotation maps them), the answer is still the rotation that fits them best:
    turning it by a degree about any axis fits them worse."""
    k = intrinsics(192, 144, 90.0)
    p1 = np.random.default_rng(2).uniform(10, 180, (40, 2))
    rays = (np.linalg.inv(k) @ np.column_stack([p1, np.ones(40)]).T).T
    rays /= np.linalg.norm(rays, axis=1)[:, None]
    mirror = np.diag([1.0, -1.0, 1.0]) @ rot_y(5.0)
    target = (mirror @ rays.T).T
    best = _rotation_between(p1, _project(k, target), k)

    def fit(r):
        return float(np.einsum("ij,ij->", (r @ rays.T).T, target))

    for nudge in (rot_x(1.0), rot_x(-1.0), rot_y(1.0), rot_y(-1.0), rot_z(1.0), rot_z(-1.0)):
        assert fit(best) >= fit(nudge @ best)


def test_an_essential_step_counts_its_inliers_not_all_matches():
    """A walk past a near scene with a fifth of the matches wrong: the step's ``matches`` is how many the
    essential matrix explains."""
    rng = np.random.default_rng(7)
    z = rng.uniform(2.0, 6.0, 200)
    pts = np.column_stack([rng.uniform(-0.8, 0.8, 200) * z, rng.uniform(-0.6, 0.6, 200) * z, z])
    p1, p2 = _project(K640, pts), _project(K640, (rot_y(2.0).T @ (pts - [0.4, 0.0, 0.1]).T).T)
    bad = rng.random(len(p1)) < 0.2
    p2[bad] = np.column_stack([rng.uniform(0, 640, bad.sum()), rng.uniform(0, 480, bad.sum())])
    est = relative_pose(None, None, K640, None, matches=(p1, p2))
    assert est["model"] == "essential"
    assert (~bad).sum() - 5 <= est["matches"] <= (~bad).sum() + 5 and est["matches"] < len(p1)


def test_a_broken_epic_fields_json_names_its_line_as_the_record(tmp_path):
    path = tmp_path / "P01_01.json"
    path.write_text('{\n  "images": {\n    "frame_0000000001.jpg": [1, 0, 0, 0, 0, 0, 0]\n  \n')
    try:
        json.loads(path.read_text())
    except json.JSONDecodeError as err:
        line = err.lineno
    with pytest.raises(LeapError, match=f"not JSON: .* at line {line}") as e:
        read_epic_fields(path)
    assert e.value.record == f"line {line}" and e.value.path == str(path)


@pytest.mark.xfail(strict=True, reason="a known limit, kept for its cost: phase correlation (shifts only) scores a "
                   "fast roll of one view under CUT_RESPONSE, so the pair is a cut and ORB, which reads the roll, is "
                   "not tried (trying it on every cut or blur costs ~10-20 ms a pair; docs/extract.md)")
def test_a_fast_head_tilt_of_one_view_is_a_tilt_not_a_cut():
    """The same view rolled 35 deg between two sampled frames (0.25 s): ORB matching reads it (~34.6 deg), but
    the pair is called a cut and the segment "holds still"."""
    views = _views([np.eye(3), rot_z(35.0)])
    seg = Segment("P01_01_0", "P01", "P01_01", 0.0, 0.5, 1, 3)
    ctx = SegmentContext(layout=_Layout(Path(".")), segment=seg, fps=4.0,
                         read_frames=lambda nums, side: views[[n - 1 for n in nums]])
    assert ctx.segment_frames(2) == [1, 2]
    rec = CameraComponent(frames=2, source="vo").describe(ctx)
    assert rec["data"]["steps"][0]["roll"] == pytest.approx(35.0, abs=2.0)
    assert rec["text"].startswith("tilts head right")
