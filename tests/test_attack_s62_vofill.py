"""Session 62, helper vofill: an unmatched frame pair ("cut", "orb-rejected") filled from the matched pairs around it
(``camera._fill_unmatched``), beyond what test_attack_s62_vocarry.py pins (a blurred frame inside a steady turn, a
blurred frame while the camera holds still).

Frames are the synthetic rotations of session 61's vo63 tests (a far textured plane, 90 deg field of view, at the
component's own 427x240), read as ``CameraComponent.describe`` reads a segment (``camera.odometry``); one frame is
blurred at sigma 8 (ORB's matches rejected) or taken from another plane (a cut).

Was wrong (each seen failing on the code before the fill): an unmatched pair counted no rotation wherever it lay, so
an accelerating turn lost the two pairs around a blurred frame, and the record said nothing of which pairs were
guessed. Guarded: a pair with a matched pair on one side only (a cut at the segment's start or end) stays unmatched
(the synthetic kitchen's edge pairs are true cuts between places; filled from the one matched side they read turns
going on into the cut), and a true cut between two still views reads nothing.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from leap_cli.epic.annotations import Segment
from leap_cli.extract.base import SegmentContext
from leap_cli.extract.camera import CameraComponent
from tests.test_attack_s61_goal2 import _one_thread  # noqa: F401  (autouse: OpenCV on one thread, as extract)
from tests.test_attack_s61_vo63 import _blocks, _noise, _rot, _segment, _truth, _views
from tests.test_extract_components import _Layout

W, H = 427, 240
TEXTURES = [(_blocks, 41), (_noise, 42)]


def _blur(frames: list[np.ndarray], at: int) -> list[np.ndarray]:
    frames[at] = cv2.GaussianBlur(frames[at], (0, 0), 8)
    return frames


@pytest.mark.parametrize("make,seed", TEXTURES)
def test_an_accelerating_turn_is_filled_by_interpolation_not_by_zero(make, seed):
    """Was wrong: a turn speeding up 2, 4, ... 12 deg a pair with its 4th frame blurred read 0 for the pairs of 6 and
    8 deg; they are interpolated between the matched pairs on either side (6 and 8, where a mean reads 7 and 7)."""
    yaws = [0, 2, 6, 12, 20, 30, 42]
    got, models, paths = _segment(_blur(_views(make(W, H, seed), [_rot(y) for y in yaws], W, H), 3))
    assert paths[2:4] == ["orb-rejected"] * 2 and models[2:4] == ["filled"] * 2, (paths, models)
    np.testing.assert_allclose(got, _truth([_rot(y) for y in yaws]), atol=0.3)


@pytest.mark.parametrize("make,seed", TEXTURES)
def test_a_cut_between_two_still_views_reads_no_turn(make, seed):
    """Guard: a true cut (another place) inside a segment whose camera holds still on both sides is filled from
    still neighbours: 0 deg, no phantom turn."""
    frames = _views(make(W, H, seed), [_rot()] * 3, W, H) + _views(make(W, H, seed + 100), [_rot()] * 3, W, H)
    got, models, paths = _segment(frames)
    assert paths[2] == "cut" and models[2] == "filled", (paths, models)
    assert np.abs(got).max() < 0.05, np.round(got, 2).tolist()


@pytest.mark.parametrize("make,seed", TEXTURES)
@pytest.mark.parametrize("where", ["start", "end"])
def test_a_cut_at_the_segments_edge_is_not_filled_from_one_side(make, seed, where):
    """Guard: a turn of 6 deg a pair with a frame of another place at the segment's first or last frame: the cut
    pair has matched pairs on one side only and keeps no rotation (``model: null``); the turn reads its size."""
    turn = _views(make(W, H, seed), [_rot(y) for y in (0, 6, 12, 18, 24)], W, H)
    other = _views(make(W, H, seed + 100), [_rot()], W, H)
    frames = other + turn if where == "start" else turn + other
    got, models, paths = _segment(frames)
    cut = 0 if where == "start" else len(got) - 1
    assert paths[cut] == "cut" and models[cut] is None and max(abs(v) for v in got[cut]) == 0.0, (got, paths)
    assert sum(g[0] for g in got) == pytest.approx(24.0, abs=0.5)


def test_a_segment_of_cuts_only_reads_nothing():
    """Guard: unrelated frames throughout (no matched pair anywhere): nothing to fill from, every pair unmatched."""
    frames = [_views((_blocks if i % 2 else _noise)(W, H, 60 + i), [_rot()], W, H)[0] for i in range(5)]
    got, models, paths = _segment(frames)
    assert paths == ["cut"] * 4 and models == [None] * 4 and not np.any(got), (got, paths)


def test_the_record_names_the_filled_pairs_and_counts_their_turn():
    """Was wrong: ``describe``'s steps of a 9-frame segment turning 8 deg a pair, its 5th frame blurred, read 0 deg
    for the two pairs touching it (total 48 of 64 deg, "turns head right about 25 deg, then pauses, then turns head
    right about 25 deg": a pause that was not). Now those steps read the turn with ``model: "filled"``, ``matches:
    0`` and no translation; the others are untouched."""
    views = _blur(_views(_noise(W, H, 42), [_rot(8.0 * i) for i in range(9)], W, H), 4)
    frames = np.stack([cv2.cvtColor(v, cv2.COLOR_GRAY2RGB) for v in views])
    seg = Segment("P01_01_0", "P01", "P01_01", 0.0, 2.25, 1, 10)
    ctx = SegmentContext(layout=_Layout(Path(".")), segment=seg, fps=4.0,
                         read_frames=lambda nums, side: frames[[n - 1 for n in nums]])
    rec = CameraComponent(frames=9, source="vo").describe(ctx)
    steps = rec["data"]["steps"]
    assert [st["model"] for st in steps] == ["homography"] * 3 + ["filled"] * 2 + ["homography"] * 3, steps
    for st in steps[3:5]:
        assert st["matches"] == 0 and "translation" not in st and st["yaw"] == pytest.approx(8.0, abs=0.5), st
    assert rec["data"]["total"]["yaw"] == pytest.approx(64.0, abs=1.0)
    assert rec["text"] == "turns head right about 65 deg", rec["text"]
