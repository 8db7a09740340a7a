"""Session 61, goal 2 (issue 15): the visual odometry's tracker (``camera.Tracker``) made cheaper must still follow
the motions that its cheap paths could miss.

Guards what a cheaper tracker can get wrong, on synthetic textured frames (exact integer or sub-pixel shifts):
- a segment's first pair moving beyond the pyramid's reach (a turn under way when the segment starts) is followed,
  at its full size, with enough tracks for a rotation of the right sign;
- motion that starts after still pairs (where the tracker may first track without a pyramid) is read at its
  full size, not under-read by a search that cannot reach it;
- a sub-pixel drift after still pairs is measured as it is;
- a cut at a segment's first pair leaves no motion behind it: the next pair starts from none.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from leap_cli.extract import camera

W, H = 256, 144


def _texture(seed: int, width: int = W + 200) -> np.ndarray:
    """A grey scene wider than a frame: blurred noise (corners and gradients everywhere, as LK likes)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (H // 4 + 1, width // 4 + 1)).astype(np.float32)
    img = cv2.resize(base, (width, H + 4), interpolation=cv2.INTER_CUBIC)[:H]
    img = cv2.GaussianBlur(img, (0, 0), 1.0)
    return np.clip(img, 0, 255).astype(np.uint8)


def _view(tex: np.ndarray, x: float) -> np.ndarray:
    """The frame whose left edge is at ``x`` in the scene (sub-pixel by an affine warp)."""
    if float(x).is_integer():
        return np.ascontiguousarray(tex[:, int(x):int(x) + W])
    m = np.float32([[1, 0, -x], [0, 1, 0]])
    return cv2.warpAffine(tex, m, (W, H), flags=cv2.INTER_LINEAR)


def _flow(p1: np.ndarray, p2: np.ndarray) -> np.ndarray:
    return np.median(p2 - p1, axis=0)


@pytest.fixture(autouse=True)
def _one_thread():
    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    yield
    cv2.setNumThreads(before)


def _orb():
    return cv2.ORB_create(nfeatures=300, edgeThreshold=15, patchSize=15, fastThreshold=10)


def test_a_segments_first_pair_beyond_the_pyramids_reach_is_followed_at_its_full_size():
    tex = _texture(1)
    g1, g2 = _view(tex, 20), _view(tex, 60)  # the view moves 40 px right: the image content 40 px left
    tracker = camera.Tracker(_orb())
    p1, p2 = tracker.pair(g1, g2)
    assert len(p1) >= camera.MIN_TRACKED
    assert tracker.paths[0] in ("lk+prior", "lk+shift")  # started from phase correlation's shift, not ORB
    np.testing.assert_allclose(_flow(p1, p2), [-40.0, 0.0], atol=0.5)
    k = camera.intrinsics(W, H, 90.0)
    est = camera.relative_pose(g1, g2, k, None, matches=(p1, p2))
    yaw, pitch, _ = camera.angles(est["r_cam"])
    assert est["model"] == "homography"
    assert 12.0 < yaw < 22.0 and abs(pitch) < 2.0  # content moving left: the head turns right (atan(40/128) ~ 17)


@pytest.mark.parametrize("step", [3.0, 6.0, 12.0, 20.0])
def test_motion_starting_after_still_pairs_is_read_at_its_full_size(step):
    tex = _texture(2)
    frames = [_view(tex, 50), _view(tex, 50), _view(tex, 50), _view(tex, 50 + step)]
    tracker = camera.Tracker(_orb())
    flows = []
    for a, b in zip(frames, frames[1:]):
        p1, p2 = tracker.pair(a, b)
        assert len(p1) >= camera.MIN_TRACKED, tracker.paths
        flows.append(_flow(p1, p2))
    np.testing.assert_allclose(flows[0], [0, 0], atol=0.05)
    np.testing.assert_allclose(flows[1], [0, 0], atol=0.05)
    np.testing.assert_allclose(flows[2], [-step, 0.0], atol=0.3)
    # every kept track of the last pair moved with the scene: none was left short of the motion by a search that
    # could not reach it
    assert np.abs((p2 - p1)[:, 0] + step).max() < 1.0


def test_a_subpixel_drift_after_still_pairs_is_measured_as_it_is():
    tex = _texture(3)
    xs = [40.0, 40.0, 40.4, 40.8]
    frames = [_view(tex, x) for x in xs]
    tracker = camera.Tracker(_orb())
    got = []
    for a, b in zip(frames, frames[1:]):
        p1, p2 = tracker.pair(a, b)
        assert len(p1) >= camera.MIN_TRACKED
        got.append(_flow(p1, p2)[0])
    np.testing.assert_allclose(got, [0.0, -0.4, -0.4], atol=0.1)


def test_a_cut_at_a_segments_first_pair_leaves_no_motion_for_the_next_pair():
    a = _view(_texture(4), 0)
    b_tex = _texture(5)
    b1, b2 = _view(b_tex, 30), _view(b_tex, 32)
    tracker = camera.Tracker(_orb())
    p1, _ = tracker.pair(a, b1)
    assert tracker.paths == ["cut"] and len(p1) == 0
    assert tracker._flow is None  # no motion carried: none was measured (a shift of unrelated frames is no motion)
    p1, p2 = tracker.pair(b1, b2)
    assert tracker.paths[1] == "lk"  # from no motion: nothing carried over from the unrelated frames
    assert len(p1) >= camera.MIN_TRACKED
    np.testing.assert_allclose(_flow(p1, p2), [-2.0, 0.0], atol=0.1)
