"""Session 69 (desc69): frame numbers of user-supplied JSONL detection files that are not whole numbers; the clip
text's part keys (``render_parts`` against ``parse_clip_text``); and a mutation run over ``extract/truth.py`` and
``extract/camera.py``. Each test was seen failing on the old code or on the mutant it names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from leap_cli.epic.hand_objects import FrameDetections, read_hand_objects
from leap_cli.errors import LeapError
from leap_cli.extract.base import COMPONENTS, result
from leap_cli.extract.describe import clip_parts, parse_clip_text, render_clip, render_parts
from leap_cli.extract.detections import read_object_detections


# ---- frame numbers that are not whole numbers ----

def _labelled(tmp_path: Path, frame) -> Path:
    p = tmp_path / "P01_01.jsonl"
    p.write_text(json.dumps({"video_id": "P01_01", "frame_number": 1, "objects": []}) + "\n"
                 + json.dumps({"video_id": "P01_01", "frame_number": frame, "objects": [
                     {"label": "cup", "bbox": {"left": 0.1, "top": 0.2, "right": 0.3, "bottom": 0.4}}]}) + "\n",
                 encoding="utf-8")
    return p


def _hands(tmp_path: Path, frame) -> Path:
    p = tmp_path / "P01_01.jsonl"
    d = FrameDetections("P01_01", 1).to_dict()
    p.write_text(json.dumps(d) + "\n" + json.dumps({**d, "frame_number": frame}) + "\n", encoding="utf-8")
    return p


@pytest.mark.parametrize("frame", [12.7, 12.5, 0.5, True])
def test_a_labelled_detection_frame_number_with_a_fraction_is_refused(tmp_path, frame):
    """``int(12.7)`` filed the line's boxes under frame 12 without a word; the line is named instead."""
    path = _labelled(tmp_path, frame)
    with pytest.raises(LeapError, match=r"line 2 is not a frame of labelled detections .*not a whole number") as e:
        read_object_detections(path)
    assert e.value.record == "line 2" and Path(e.value.path) == path


@pytest.mark.parametrize("frame", [12.7, 3.25, False])
def test_a_hand_object_frame_number_with_a_fraction_is_refused(tmp_path, frame):
    path = _hands(tmp_path, frame)
    with pytest.raises(LeapError, match=r"line 2 is not a frame of detections .*not a whole number") as e:
        read_hand_objects(path)
    assert e.value.record == "line 2" and Path(e.value.path) == path


def test_a_whole_float_frame_number_as_pandas_writes_it_is_read_as_that_frame(tmp_path):
    """12.0 (a pandas column with a gap is float) and "12" are frame 12, an int (segments bisect ints)."""
    for frame in (12.0, "12", 12):
        frames = read_object_detections(_labelled(tmp_path, frame))
        assert sorted(frames) == [1, 12] and all(type(n) is int for n in frames)
        got = read_hand_objects(_hands(tmp_path, frame))
        assert [f.frame_number for f in got] == [1, 12] and type(got[1].frame_number) is int


# ---- the clip text's part keys ----

def test_every_part_key_clip_parts_can_make_parses_back():
    """``render_parts`` writes ``Key: text.`` for any key, where ``parse_clip_text`` refuses a prefix with ``_``
    or digits; the keys that reach it come only from ``clip_parts``: "clip", "timeline" and ``COMPONENTS``
    (a stored record's component under another name is not rendered), so no such key reaches it."""
    comps = {name: result("ok", "x", {"timeline": [{"start": 0.1, "stop": 0.4, "text": f"{name} event"}]},
                          f"{name} text") for name in COMPONENTS}
    comps["hand_pose_2"] = result("ok", "x", {"timeline": [{"start": 0.0, "stop": 1.0, "text": "pose"}]}, "pose")
    parts = clip_parts(0.0, 1.0, comps)
    assert set(parts) == {"clip", "timeline", *COMPONENTS}
    text = render_clip(0.0, 1.0, comps)
    assert parse_clip_text(text) == parts and render_parts(parse_clip_text(text)) == text
    assert "pose" not in text


# ---- extract/truth.py: mutants the truth's own tests let live ----

def _seg(nid: str, start: float = 10.0, stop: float = 13.0, **kw) -> dict:
    return {"narration_id": nid, "video_id": "P01_01", "start": start, "stop": stop, **kw}


def _turn(start: float, stop: float, degrees: float | None = 10.0, motion: str = "turn_right") -> dict:
    return {"motion": motion, "start": start, "stop": stop, **({} if degrees is None else {"degrees": degrees})}


STEPS = [{"start": 0.0, "stop": 1.0, "yaw": 3.0}, {"start": 1.0, "stop": 2.0, "yaw": 10.0},
         {"start": 2.0, "stop": 3.0, "yaw": 7.0}]


def _windows(seg: dict, *others: dict) -> list | None:
    from leap_cli.extract.truth import turn_windows, video_turns

    truth = {s["narration_id"]: s for s in (seg, *others)}
    return turn_windows(STEPS, seg, video_turns(truth).get("P01_01", []))


def test_a_step_that_only_touches_a_turn_is_not_in_its_window():
    """A step ending where the turn starts (or starting where it stops) holds none of it. Mutant: ``>=`` /
    ``<=`` in the cover test took both neighbours into the window (3 + 10 + 7 read for 10)."""
    assert _windows(_seg("a", start=0.0, camera=[_turn(1.0, 2.0)])) == [(10.0, 10.0)]


def test_a_turn_a_rounding_millisecond_outside_its_window_is_still_whole():
    """Times are rounded to the ms in records and truth: another turn of the video 0.5 ms over the window's edge
    is held whole and counted. Mutant: the 1e-3 tolerance dropped (the window skipped)."""
    seg = _seg("a", start=0.0, camera=[_turn(1.2, 1.8)])
    assert _windows(seg, _seg("b", start=0.0, camera=[_turn(0.9995, 1.1, 2.0)])) == [(10.0, 12.0)]
    assert _windows(seg, _seg("b", start=0.0, camera=[_turn(1.9, 2.0005, 2.0)])) == [(10.0, 12.0)]
    assert _windows(seg, _seg("b", start=0.0, camera=[_turn(1.9, 2.002, 2.0)])) is None  # over it: skipped


def test_turns_on_either_side_of_a_window_edge_are_each_whole_in_their_own_window():
    """Two turns meeting at 1.0 s, one per step: each window holds its own turn; the other, which only touches
    the window's edge, is not over it. Mutant: ``>=`` / ``<=`` in the touched test (both windows skipped)."""
    seg = _seg("a", start=0.0, camera=[_turn(0.0, 1.0, 3.0, "turn_right"), _turn(1.0, 2.0, 10.0)])
    # the first turn (3 deg) is under MIN_TURN: only the second has a size to read
    assert _windows(seg) == [(10.0, 10.0)]
    seg = _seg("a", start=0.0, camera=[_turn(0.0, 1.0, 6.0), _turn(1.0, 2.0, 10.0)])
    assert _windows(seg) == [(3.0, 6.0), (10.0, 10.0)]


def test_a_net_turn_of_exactly_min_turn_has_a_size():
    """``MIN_TURN`` or more is read ("a window whose true net yaw is smaller has no size"). Mutant: ``<=``."""
    from leap_cli.extract.truth import MIN_TURN

    assert _windows(_seg("a", start=0.0, camera=[_turn(1.0, 2.0, MIN_TURN)])) == [(10.0, MIN_TURN)]


def test_a_segment_keeps_the_windows_it_can_read_when_another_of_its_turns_is_skipped():
    """None only where no window of the segment can be read. Mutant: None as soon as one was skipped."""
    seg = _seg("a", start=0.0, camera=[_turn(1.0, 2.0), _turn(3.5, 3.9)])  # the second runs past the last step
    assert _windows(seg) == [(10.0, 10.0)]
    assert _windows(_seg("a", start=0.0, camera=[_turn(3.5, 3.9)])) is None


def test_a_contact_of_no_length_against_the_same_estimate_scores_zero_not_a_crash():
    """``_iou`` of two intervals of no length: 0, not ZeroDivisionError. Mutant: ``union >= 0``."""
    from leap_cli.extract.truth import score

    truth = {"a": _seg("a", contacts=[{"hand": "right", "start": 1.0, "stop": 1.0, "object": "cup"}])}
    rec = {"narration_id": "a", "components": {"hands": {"status": "ok", "data": {"hands": [
        {"hand": "right", "contacts": [{"start": 1.0, "stop": 1.0, "object": "cup"}]}]}}}}
    hc = score([rec], truth)["hand_contacts"]
    assert hc["contacts"] == 1 and hc["mean_iou"] == 0.0 and hc["object_named"] == 1.0


def _cam(yaw: float, method: str = "visual-odometry") -> dict:
    return {"method": method, "steps": [{"start": 0.0, "stop": 3.0, "yaw": yaw}]}


def _rec(nid: str, **components) -> dict:
    return {"narration_id": nid, "components": {k: {"status": "ok", "data": v} for k, v in components.items()}}


def test_a_camera_that_read_no_yaw_got_no_turn_right():
    """"The estimated yaw change over each true turn has the true sign": 0 has none. It was counted a left turn
    read right (``> 0`` against "is it a right turn"), so an odometry whose pairs all went unmatched (each left at
    0 deg) scored every left turn correct. Mutant ``>= 0``: it scored every right turn correct instead."""
    from leap_cli.extract.truth import score

    for motion in ("turn_left", "turn_right"):
        s = score([_rec("a", camera=_cam(0.0))], {"a": _seg("a", camera=[_turn(0.5, 1.5, 10.0, motion)])})
        assert s["yaw_direction"]["segments"] == 1 and s["yaw_direction"]["correct"] == 0.0, motion
    s = score([_rec("a", camera=_cam(-2.0))], {"a": _seg("a", camera=[_turn(0.5, 1.5, 10.0, "turn_left")])})
    assert s["yaw_direction"]["correct"] == 1.0


def test_past_the_end_only_visual_odometry_is_counted_as_inventing_motion():
    """Mutant: the method compared against another name (the truth's test had one of each, which kept the count)."""
    from leap_cli.extract.truth import score

    truth = {n: _seg(n, past_end_of_video=True) for n in "abc"}
    for method, invented in (("epic-fields", 0), ("colmap", 0), ("visual-odometry", 3)):
        s = score([_rec(n, camera=_cam(1.0, method)) for n in "abc"], truth)
        assert s["past_end_of_video"] == {"segments": 3, "camera_invented": invented}, method


def test_an_audio_event_is_heard_up_to_but_not_at_its_stop():
    """The 0.05 s grid's point at 0.025 s is after an event of 0.0-0.025 s. Mutant: ``<=`` at the stop."""
    from leap_cli.extract.truth import score

    truth = {"a": _seg("a", sound=[])}
    s = score([_rec("a", audio={"events": [{"label": "chopping", "start": 0.0, "stop": 0.025}]})], truth)
    assert s["audio"]["per_category"] == {} and s["audio"]["false_event_rate"] == 0.0
    s = score([_rec("a", audio={"events": [{"label": "chopping", "start": 0.0, "stop": 0.026}]})], truth)
    assert s["audio"]["per_category"]["chopping"]["predicted_seconds"] == pytest.approx(0.1)


def test_turn_size_ratios_take_the_median_and_the_band_holds_its_ends():
    """Mutants: the mean for the median; ``<`` for ``<=`` at 0.8 and 1.25."""
    from leap_cli.extract.truth import _ratios

    assert _ratios([1.0, 1.0, 4.0])["median_ratio"] == 1.0
    assert _ratios([8.0 / 10.0, 12.5 / 10.0]) == {"windows": 2, "median_ratio": pytest.approx(1.025),
                                                  "within_1.25x": 1.0}
    assert _ratios([0.79, 1.26])["within_1.25x"] == 0.0
    assert _ratios([]) == {"windows": 0, "median_ratio": None, "within_1.25x": None}


def test_a_hand_is_in_contact_from_the_contacts_first_instant():
    """On the grid (0.025, 0.075, ... s) a true contact starting at 0.025 s is on at 0.025 s, as an estimate
    starting earlier is. Mutant: ``<`` at the start (the state there read wrong)."""
    from leap_cli.extract.truth import score

    truth = {"a": _seg("a", start=0.0, stop=1.0,
                       contacts=[{"hand": "right", "start": 0.025, "stop": 1.0, "object": "cup"}])}
    est = {"hands": [{"hand": "right", "contacts": [{"start": 0.0, "stop": 1.0, "object": "cup"}]}]}
    assert score([_rec("a", hands=est)], truth)["hand_contacts"]["state_accuracy"] == 1.0


def test_no_contact_measured_is_none_not_zero():
    """Mutant: ``mean_iou`` 0.0 where no true contact was measured."""
    from leap_cli.extract.truth import score

    hc = score([_rec("a", hands={"hands": []})], {"a": _seg("a")})["hand_contacts"]
    assert hc["contacts"] == 0 and hc["mean_iou"] is None and hc["object_named"] is None


def test_a_shake_has_no_window_of_its_own():
    """Only turns have windows; a shake counts only inside a turn's window. Mutant: a shake's window read too (it
    held another segment's turn whole: a second window)."""
    seg = _seg("a", start=0.0, camera=[_turn(1.2, 1.8), {"motion": "shake", "start": 2.2, "stop": 2.4}])
    assert _windows(seg, _seg("b", start=0.0, camera=[_turn(2.5, 2.8, 6.0)])) == [(10.0, 10.0)]


# ---- extract/camera.py: mutants the camera's own tests let live ----

def _steps(*rows, dt: float = 1.0) -> list[dict]:
    return [{"start": i * dt, "stop": (i + 1) * dt, "yaw": y, "pitch": p, "roll": r}
            for i, (y, p, r) in enumerate(rows)]


def test_six_degrees_a_second_over_a_second_is_a_turn():
    """``TURN_RATE`` 5 deg/s: a 6 deg/s turn of 6 deg is a turn. Mutant: the rate raised to 8 (held still)."""
    from leap_cli.extract.camera import phases_from_steps

    assert [p["motion"] for p in phases_from_steps(_steps((6.0, 0, 0)))] == ["turn_right"]
    assert [p["motion"] for p in phases_from_steps(_steps((4.5, 0, 0), (4.5, 0, 0)))] == ["still"]


def test_the_inverse_intrinsics_of_any_k():
    """``_k_inv``'s closed form holds for ``intrinsics``' K (square pixels), and any other K goes through the full
    inverse. Mutants: the closed form for every K; cy divided by fx."""
    from leap_cli.extract.camera import _k_inv, intrinsics

    for k in (intrinsics(456, 256, 90.0), np.array([[300.0, 0, 200], [0, 250.0, 120], [0, 0, 1]]),
              np.array([[300.0, 2.0, 200], [0, 250.0, 120], [0, 0, 1]])):
        assert np.allclose(_k_inv(k) @ k, np.eye(3), atol=1e-12)


def test_a_homography_with_exactly_h_ratio_of_the_essentials_inliers_wins(monkeypatch):
    """"homography when its inliers reach this share of the essential matrix's": 14 of 20 at 0.7 reach it.
    Mutant: ``>`` (the essential matrix won)."""
    import cv2

    from leap_cli.extract import camera

    n = 30
    p1 = np.random.default_rng(6).uniform(20, 430, (n, 2))
    h_mask = np.zeros((n, 1), np.uint8)
    h_mask[:14] = 1
    e_mask = np.zeros((n, 1), np.uint8)
    e_mask[:20] = 1
    monkeypatch.setattr(cv2, "findHomography", lambda *a, **k: (np.eye(3), h_mask))
    monkeypatch.setattr(cv2, "findEssentialMat",
                        lambda *a, **k: (np.array([[0.0, 0, 0], [0, 0, -1], [0, 1, 0]]), e_mask))
    est = camera.relative_pose(None, None, camera.intrinsics(456, 256, 90.0), None, matches=(p1, p1 + [3.0, 0.0]))
    assert est["model"] == "homography" and est["matches"] == 14


def test_along_the_main_axis_whichever_sign_svd_gives_its_axis(monkeypatch):
    """The axis is turned to run from the video's first frame's end whatever sign SVD picks (it may differ between
    machines' libraries). Mutant: SVD's axis as given (0.1 where it flips)."""
    from leap_cli.extract import camera

    pts = np.array([[float(x), 0.3 * (x % 2), 0.0] for x in range(11)])
    svd = np.linalg.svd
    got = []
    for sign in (1.0, -1.0):
        monkeypatch.setattr(camera.np.linalg, "svd", lambda a, s=sign, **k: tuple(s * m if i != 1 else m
                                                                                  for i, m in enumerate(svd(a, **k))))
        got.append(camera.where_in_kitchen(pts, pts[9])[0]["along_main_axis"])
    monkeypatch.setattr(camera.np.linalg, "svd", svd)
    assert got == [0.9, 0.9]


def test_where_in_kitchen_on_a_small_scale_and_at_half_a_spread():
    """A reconstruction's scale is arbitrary: centres 1 mm apart still run 0..1 along the axis. A centre exactly
    half a spread away is not nearby (``<``). Mutants: the axis's span widened by 1e-3; ``<=``."""
    from leap_cli.extract.camera import where_in_kitchen

    tiny = np.array([[0.001 * x, 0.0, 0.0] for x in range(11)])
    assert where_in_kitchen(tiny, tiny[10])[0]["along_main_axis"] == 1.0
    two = np.array([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # spread 1
    assert where_in_kitchen(two, np.array([-0.5, 0.0, 0.0]))[0]["time_share_nearby"] == 0.0


def test_an_unknown_camera_source_is_refused_even_empty():
    from leap_cli.extract.camera import CameraComponent

    for source in ("", "epic", "VO"):
        with pytest.raises(LeapError, match="unknown camera source"):
            CameraComponent(source=source)


def test_poses_that_stay_in_one_place_give_no_direction_of_travel(tmp_path):
    """A camera that only turns moves nowhere: its steps have no translation (not a unit vector of 0 / 0).
    Mutant: a translation on every step."""
    from tests.test_camera_odometry import _describe, _write_json_poses, rot_y

    rec = _describe(tmp_path, _write_json_poses(tmp_path / "P01_01.json", {n: rot_y(2.0 * n) for n in range(1, 10)}),
                    1, 9)
    assert rec["status"] == "ok" and all("translation" not in st for st in rec["data"]["steps"])
    assert "translation_direction" not in rec["data"]


def test_corners_are_looked_for_where_a_large_motion_keeps_a_quarter_of_the_frame():
    """``_staying``: a shift of 150 px of a 256 px frame keeps 88 px (more than a quarter) in view: corners are
    found only there. Mutant: half the frame asked (no mask: corners found where they leave the view)."""
    from leap_cli.extract.camera import LK_WINDOW, _staying

    mask = _staying((144, 256), np.array([150.0, 0.0]))
    assert mask is not None and mask[:, 256 - 150 - LK_WINDOW:].max() == 0 and mask[20:-20, 20:90].min() == 255
    assert _staying((144, 256), np.array([200.0, 0.0])) is None  # 38 px: too little to track in
