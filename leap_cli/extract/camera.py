"""Camera-motion component: visual odometry between frames sampled through the segment, or COLMAP poses.

Visual odometry: ``frames`` frames (default 9) are decoded at ``short_side`` pixels; a few corners are tracked
through them (``Tracker``: pyramidal Lucas-Kanade, carried from frame to frame; phase correlation gives the start
for large motion; ORB matching only where tracking fails on frames that share a view, none across a cut); the essential matrix (USAC) and ``recoverPose`` give
the rotation and the direction of translation. Intrinsics are assumed from the frame size: principal point at the centre and a
horizontal field of view of ``fov_deg`` (default 90 deg, close to EPIC's GoPro linear view after undistortion).
When the motion is (nearly) a pure rotation the essential matrix is degenerate, so, as ORB-SLAM does at
initialisation, a homography is fitted as well; when it explains at least 70% as many matches as the essential
matrix (head turns dominate egocentric motion, and a far or planar scene leaves E ambiguous),
the rotation is the one that best maps its inliers' rays from one frame to the next (``_rotation_between``) and no
translation is reported. A pair left unmatched (a cut, a blur) between matched pairs gets the rotation
interpolated between them (``_fill_unmatched``, ``model: "filled"``).

Angles (degrees, camera frame, x right, y down, z forward): yaw > 0 turns right, pitch > 0 looks up, roll > 0
tilts clockwise. Steps are merged into phrases: "turns head left about 30 deg, then looks down about 15 deg".

Frames are never upscaled for odometry: they are read at ``short_side`` or at the video's own size when that
is smaller (the size comes from the video's header, ``SegmentContext.frame_size``; without it, from the first
read of each video).

Poses: EPIC Fields' per-video JSON (``poses/P01_01.json``: ``camera`` with COLMAP's camera model, size and
parameters incl. distortion, ``images`` {frame name: [qw, qx, qy, qz, tx, ty, tz]} world-to-camera, ``points``)
or COLMAP's ``poses/P01_01/images.txt`` (or ``images.bin``). The poses of the frames inside the segment give the
same angles, and the camera centres give where the camera is relative to the rest of the video. With the default
``source="auto"``, a video without poses, or a segment with fewer than two registered frames, uses visual
odometry; ``data["method"]`` says which was used (``epic-fields``, ``colmap`` or ``visual-odometry``) and
``data["poses_skipped"]`` why poses were not.
"""

from __future__ import annotations

import json
import math
import mmap
import re
import struct
from pathlib import Path

import cv2
import numpy as np

from leap_cli.errors import LeapError
from leap_cli.extract.base import NO_CAMERA_POSES, NO_POSES, Component, SegmentContext, result

H_RATIO = 0.7  # homography when its inliers reach this share of the essential matrix's (head turns)
TURN_RATE = 5.0  # deg/s: slower rotation counts as holding still
MIN_DEGREES = 5.0  # a phase turning less than this in all is still


def intrinsics(width: int, height: int, fov_deg: float) -> np.ndarray:
    f = (width / 2) / math.tan(math.radians(fov_deg) / 2)
    return np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], dtype=np.float64)


def angles(r_cam: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of a camera rotation (camera-2 axes expressed in camera-1 axes), the angles of
    its yaw-then-pitch-then-roll decomposition ``Ry(yaw) Rx(pitch) Rz(roll)``."""
    yaw = math.degrees(math.atan2(r_cam[0, 2], r_cam[2, 2]))
    pitch = math.degrees(math.atan2(-r_cam[1, 2], math.hypot(r_cam[0, 2], r_cam[2, 2])))
    roll = math.degrees(math.atan2(r_cam[1, 0], r_cam[1, 1]))
    return yaw, pitch, roll


def _k_inv(k: np.ndarray) -> np.ndarray:
    """The inverse of intrinsics without skew (``intrinsics``), in closed form (np.linalg.inv's overhead is
    ~20 us, per frame pair)."""
    if k[0, 1] or k[1, 0] or k[2, 0] or k[2, 1] or k[2, 2] != 1:
        return np.linalg.inv(k)
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    return np.array([[1 / fx, 0, -cx / fx], [0, 1 / fy, -cy / fy], [0, 0, 1]])


def _unit_rays(p: np.ndarray, k_inv: np.ndarray) -> np.ndarray:
    """Unit rays [N, 3] of pixel positions ``p`` [N, 2] (``k_inv``: the inverse intrinsics)."""
    r = np.ones((len(p), 3))
    r[:, :2] = p
    r = r @ k_inv.T
    r /= np.sqrt(np.einsum("ij,ij->i", r, r))[:, None]
    return r


def _rotation_between(p1: np.ndarray, p2: np.ndarray, k: np.ndarray) -> np.ndarray:
    """The rotation R that best maps the rays of pixels ``p1`` onto those of ``p2`` (least squares on unit
    rays: Kabsch / Wahba). A head turn has 3 unknowns; orthonormalising ``K^-1 H K`` instead let the
    homography's 8 take up the tracker's small errors (1 deg turns of 192x144 frames read ~0.7 deg)."""
    ki = _k_inv(k)
    a, b = _unit_rays(p1, ki), _unit_rays(p2, ki)
    _, u, vt = cv2.SVDecomp(b.T @ a)
    if cv2.determinant(u @ vt) < 0:  # (the best rotation, not a reflection)
        u[:, 2] *= -1
    return u @ vt


class PairEstimate(dict):
    """{"r_cam": 3x3, "t": unit 3-vector or None, "matches": n,
    "model": "essential"|"homography"|"still"|"filled"|None}."""


_MATCHER = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True)

# The tracker (see ``Tracker``): a few well-spread corners carried from frame to frame by pyramidal Lucas-Kanade.
# A rotation needs few correspondences; each corner costs two small LK solves (forward and back), so the cost per
# segment is set by these numbers, not by the frame size.
TRACK_POINTS = 48  # corners tracked per frame pair
TRACK_REFILL = 0.5  # detect anew when fewer than this share of TRACK_POINTS survive
LK_WINDOW = 9  # pixels (per pyramid level)
LK_LEVELS = 3  # pyramid levels above the image: follows ~LK_WINDOW/2 * 2**LK_LEVELS pixels of motion
LK_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 10, 0.03)
STILL_FLOW = 1.0  # px: after a pair that moved less, LK first tries STILL_LEVELS pyramid levels
STILL_LEVELS = 0
MIN_TRACKED = 16  # fewer tracked corners: try the global shift as a starting guess, then ORB matching
DETECT_HALF_FROM = 60  # corners are found on the half-size frame where its short side is at least this
CUT_RESPONSE = 0.3  # phase correlation's peak under this where tracking failed: unrelated frames, no ORB search
# Robust fits: OpenCV's USAC_FAST (SPRT rejects bad hypotheses early) costs a third of RANSAC on a good pair
# (0.07 ms instead of 0.25 for H on the kitchen's 192x144 frames) and a fiftieth of it on a pair of unrelated
# frames, where RANSAC runs all its 2000 iterations (~40 ms for H, ~90 ms for E).
FIT = cv2.USAC_FAST
E_MAX_ITERS = 300  # bounds E's cost on unrelated frames (~6 ms); a good pair stops far earlier


def _mid(x: np.ndarray) -> np.ndarray:
    """The (upper) median along the first axis: np.partition, without np.median's overhead (~0.1 ms a call,
    twice per frame pair)."""
    k = len(x) // 2
    return np.partition(x, k, axis=0)[k]


def _lk(g1: np.ndarray, g2: np.ndarray, pts: np.ndarray, shift: np.ndarray | None = None, levels: int = LK_LEVELS
        ) -> tuple[np.ndarray, np.ndarray]:
    """(positions in g2, kept mask) of ``pts`` (N,1,2 float32) tracked from g1 to g2, kept where tracking back
    lands within a pixel of the start. ``shift`` (dx, dy): where to start looking (large motion); ``levels``:
    the pyramid levels above the image without a shift (0: the image alone, for motion under a pixel or two)."""
    win = (LK_WINDOW, LK_WINDOW)
    if shift is None:
        nxt, st, _ = cv2.calcOpticalFlowPyrLK(g1, g2, pts, None, winSize=win, maxLevel=levels,
                                              criteria=LK_CRITERIA)
        back, st2, _ = cv2.calcOpticalFlowPyrLK(g2, g1, nxt, None, winSize=win, maxLevel=levels,
                                                criteria=LK_CRITERIA)
    else:
        guess = (pts + shift.astype(np.float32)).astype(np.float32)
        flag = cv2.OPTFLOW_USE_INITIAL_FLOW
        levels = LK_LEVELS - 1  # from a start near the answer the coarsest level is not needed
        nxt, st, _ = cv2.calcOpticalFlowPyrLK(g1, g2, pts, guess, winSize=win, maxLevel=levels,
                                              criteria=LK_CRITERIA, flags=flag)
        back, st2, _ = cv2.calcOpticalFlowPyrLK(g2, g1, nxt, (nxt - shift).astype(np.float32), winSize=win,
                                                maxLevel=levels, criteria=LK_CRITERIA, flags=flag)
    err = back - pts
    ok = (st.ravel() == 1) & (st2.ravel() == 1) & ((err * err).sum(axis=2).ravel() < 1.0)
    return nxt, ok


def global_shift(g1: np.ndarray, g2: np.ndarray) -> tuple[np.ndarray, float]:
    """The dominant image translation (dx, dy) from g1 to g2 (phase correlation at half size): where LK starts
    looking when the motion is too large for its pyramid (fast head turns); and the strength of its peak (0-1:
    ~0.6 for two views of one scene shifted, ~0.2 for unrelated frames, see ``CUT_RESPONSE``)."""
    a = cv2.pyrDown(g1).astype(np.float32)
    b = cv2.pyrDown(g2).astype(np.float32)
    (dx, dy), response = cv2.phaseCorrelate(a, b, cv2.createHanningWindow(a.shape[::-1], cv2.CV_32F))
    return np.array([dx, dy]) * 2.0, float(response)


def _coarse_shift(g1: np.ndarray, g2: np.ndarray) -> np.ndarray | None:
    """The dominant image translation (dx, dy) from g1 to g2 by phase correlation at quarter size (~0.08 ms at
    256x144 against ~0.25 at half size): only a start for LK, whose pyramid follows the rest. None where its peak is
    under ``CUT_RESPONSE``: the shift of unrelated frames is noise, and LK started there kept corners that moved by
    it (a cut read as a turn)."""
    a = cv2.pyrDown(cv2.pyrDown(g1)).astype(np.float32)
    b = cv2.pyrDown(cv2.pyrDown(g2)).astype(np.float32)
    (dx, dy), response = cv2.phaseCorrelate(a, b, cv2.createHanningWindow(a.shape[::-1], cv2.CV_32F))
    return np.array([dx, dy]) * 4.0 if response >= CUT_RESPONSE else None


def _agrees(moves: np.ndarray, shift: np.ndarray | None, side: int) -> bool:
    """Whether at least half of the matches' motions ``moves`` (N,2) lie within a tenth of the short ``side`` (at
    least ``LK_WINDOW`` px) of ``shift``, the frames' global shift by phase correlation (None: not known, agrees).
    ORB matches a blurred frame's few features at random: at 427x240 they read 14-170 deg turns between frames whose
    common view phase correlation still finds, unmoved."""
    if shift is None or not len(moves):
        return True
    near = np.hypot(*(moves - np.asarray(shift, dtype=np.float64)).T) <= max(LK_WINDOW, side / 10)
    return 2 * int(near.sum()) >= len(moves)


def _orb_matches(g1: np.ndarray, g2: np.ndarray, orb) -> tuple[np.ndarray, np.ndarray]:
    """ORB keypoints of both frames matched by cross-checked Hamming distance (the slow path)."""
    k1, d1 = orb.detectAndCompute(g1, None)
    k2, d2 = orb.detectAndCompute(g2, None)
    if d1 is None or d2 is None or len(k1) < 8 or len(k2) < 8:
        return np.zeros((0, 2)), np.zeros((0, 2))
    matches = _MATCHER.match(d1, d2)
    return (np.float64([k1[m.queryIdx].pt for m in matches]).reshape(-1, 2),
            np.float64([k2[m.trainIdx].pt for m in matches]).reshape(-1, 2))


def _staying(shape: tuple[int, int], shift: np.ndarray | None) -> np.ndarray | None:
    """The mask (uint8) of the pixels that a motion by ``shift`` (dx, dy) keeps inside a frame of ``shape``
    (with LK's window as a margin); None (everywhere) without a shift or where it would leave too little."""
    if shift is None:
        return None
    h, w = shape
    dx, dy = float(shift[0]), float(shift[1])
    x0, x1 = max(0, math.ceil(-dx) + LK_WINDOW), min(w, math.floor(w - dx) - LK_WINDOW)
    y0, y1 = max(0, math.ceil(-dy) + LK_WINDOW), min(h, math.floor(h - dy) - LK_WINDOW)
    if x1 - x0 < w // 4 or y1 - y0 < h // 4:
        return None
    mask = np.zeros((h, w), np.uint8)
    mask[y0:y1, x0:x1] = 255
    return mask


class Tracker:
    """Correspondences between consecutive frames of one segment, cheaply.

    About ``TRACK_POINTS`` Shi-Tomasi corners (spread at least 1/24 of the short side apart) are tracked by
    pyramidal Lucas-Kanade with a forward-backward check, and the survivors are carried on into the next pair
    (KLT: corners are detected again only when too few survive). While the image moves by more than the
    pyramid follows easily (a head turn going on), LK starts from the last pair's motion; a segment's first pair
    starts from the shift phase correlation finds at quarter size (a turn under way when the segment begins).
    After a pair that moved under ``STILL_FLOW`` pixels LK first tracks on the image alone (``STILL_LEVELS``),
    and again on all levels where that keeps too few corners or finds them moving more. Where tracking keeps
    fewer than ``MIN_TRACKED`` (motion beyond the pyramid's reach, a turn that stopped, low texture), LK starts
    again from the global shift found by phase correlation (or from none), and only if that fails too are ORB
    features matched (the slow path), unless phase correlation found no common view (peak under
    ``CUT_RESPONSE``: a cut, a blur): the pair is left unmatched ("cut", tracked no further) and the motion
    carries on to the next, as it does past a pair whose ORB matches are rejected ("orb-rejected", ``_agrees``)
    and past a frame with too few corners to track ("none").
    During a turn, corners the motion carries out of view are dropped and new ones are found where they stay."""

    def __init__(self, orb, points: int = TRACK_POINTS, min_tracked: int = MIN_TRACKED):
        self.orb, self.points, self.min_tracked = orb, points, min_tracked
        self._pts: np.ndarray | None = None  # corners carried into the next pair
        self._flow: np.ndarray | None = None  # the last pair's median motion (dx, dy)
        self.paths: list[str] = []  # per pair: "lk", "lk+prior", "lk+shift", "orb", "orb-rejected", "cut" or "none"

    def _detect(self, g: np.ndarray, shift: np.ndarray | None = None) -> np.ndarray:
        """Corners of ``g``; with ``shift`` (the motion expected), only where they stay in view after it."""
        mask = _staying(g.shape, shift)
        if min(g.shape) >= 2 * DETECT_HALF_FROM:  # corners of the half-size image: a third of the CPU
            small = cv2.pyrDown(g)
            if mask is not None:
                mask = cv2.resize(mask, small.shape[::-1], interpolation=cv2.INTER_NEAREST)
            found = cv2.goodFeaturesToTrack(small, maxCorners=self.points, qualityLevel=0.01,
                                            minDistance=max(3, min(small.shape) // 24), mask=mask)
            return found * 2.0 if found is not None else np.zeros((0, 1, 2), np.float32)  # pyrDown keeps even pixels
        found = cv2.goodFeaturesToTrack(g, maxCorners=self.points, qualityLevel=0.01,
                                        minDistance=max(3, min(g.shape) // 24), mask=mask)
        return found if found is not None else np.zeros((0, 1, 2), np.float32)

    def _unmatched(self, path: str, carried: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """No matches for this pair (``path``: why); a turn under the blur goes on: the next pair starts from the
        motion ``carried`` into this one."""
        self.paths.append(path)
        self._flow = carried
        return np.zeros((0, 2)), np.zeros((0, 2))

    def pair(self, g1: np.ndarray, g2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = g1.shape
        pts, prior = self._pts, self._flow
        carried = prior  # the motion carried in (kept on over a cut)
        self._pts, self._flow = None, None
        big = LK_WINDOW / 2  # motion the pyramid follows from a zero start without trouble
        if pts is None and prior is None and not self.paths:  # a segment's first pair: a turn may be under way
            prior = _coarse_shift(g1, g2)
        guess = prior if prior is not None and math.hypot(float(prior[0]), float(prior[1])) > big else None
        if pts is not None and guess is not None:  # corners the turn carries out of view cannot be tracked
            moved = pts[:, 0] + guess.astype(np.float32)
            pts = pts[(moved[:, 0] >= 0) & (moved[:, 1] >= 0) & (moved[:, 0] < w) & (moved[:, 1] < h)]
        fresh = pts is None or len(pts) < TRACK_REFILL * self.points
        if fresh:
            pts = self._detect(g1, guess)
        if len(pts) < 8:  # a flat frame (a hand over the lens): nothing to track
            return self._unmatched("none", carried)
        calm = guess is None and prior is not None and math.hypot(float(prior[0]), float(prior[1])) < STILL_FLOW
        nxt, ok = _lk(g1, g2, pts, guess, STILL_LEVELS if calm else LK_LEVELS)
        if calm:  # tracked anew on all levels where the motion grew (or too few tracks were kept)
            d = (nxt - pts).reshape(-1, 2)[ok]
            if len(d) < self.min_tracked or _mid((d * d).sum(axis=1)) > STILL_FLOW * STILL_FLOW:
                nxt, ok = _lk(g1, g2, pts, guess)
        path = "lk" if guess is None else "lk+prior"
        response, seen = 1.0, None
        if ok.sum() < self.min_tracked:
            shift, response = global_shift(g1, g2)
            seen = shift  # (ORB's matches are held to it below)
            if math.hypot(float(shift[0]), float(shift[1])) <= big:
                shift = None
            if response >= CUT_RESPONSE and (shift is not None or guess is not None or not fresh):
                # a large motion LK missed, a turn that stopped, or too few of the corners carried on (frames with
                # no common view: a cut, below)
                pts2 = pts if fresh and guess is None else self._detect(g1, shift)
                nxt2, ok2 = _lk(g1, g2, pts2, shift)
                if ok2.sum() > ok.sum():
                    pts, nxt, ok, path = pts2, nxt2, ok2, "lk" if shift is None else "lk+shift"
        p1 = pts.reshape(-1, 2)[ok].astype(np.float64)
        p2 = nxt.reshape(-1, 2)[ok].astype(np.float64)
        if len(p1) < self.min_tracked and response < CUT_RESPONSE:
            return self._unmatched("cut", carried)  # unrelated frames (a cut, a blur): no search can match them
        if len(p1) < self.min_tracked:
            q1, q2 = _orb_matches(g1, g2, self.orb)
            if len(q1) > len(p1) and not _agrees(q2 - q1, seen, min(h, w)):
                # matches of a blur: most move otherwise than the frames' common view
                return self._unmatched("orb-rejected", carried)
            if len(q1) > len(p1):
                self.paths.append("orb")
                return q1, q2  # the next pair detects corners anew, from no prior
        inside = ok & (nxt[:, 0, 0] >= 0) & (nxt[:, 0, 1] >= 0) & (nxt[:, 0, 0] < w) & (nxt[:, 0, 1] < h)
        self._pts = nxt[inside]
        if len(p1):
            self._flow = _mid(p2 - p1)
        self.paths.append(path)
        return p1, p2


def correspondences(g1: np.ndarray, g2: np.ndarray, orb, min_matches: int = MIN_TRACKED
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Matched points (N,2) of two grey frames (one pair of a ``Tracker``)."""
    return Tracker(orb, min_tracked=min_matches).pair(g1, g2)


def relative_pose(g1: np.ndarray, g2: np.ndarray, k: np.ndarray, orb, *,
                  matches: tuple[np.ndarray, np.ndarray] | None = None) -> PairEstimate:
    """Camera rotation (and translation direction) from frame 1 to frame 2 (grey images); ``matches``: the
    correspondences found already (a ``Tracker``'s)."""
    p1, p2 = matches if matches is not None else correspondences(g1, g2, orb)
    if len(p1) < 12:
        return PairEstimate(r_cam=np.eye(3), t=None, matches=len(p1), model=None)
    d = p1 - p2
    if _mid((d * d).sum(axis=1)) < 0.25:  # no parallax and no rotation (median motion under 0.5 px): still
        return PairEstimate(r_cam=np.eye(3), t=None, matches=len(p1), model="still")
    h, h_mask = cv2.findHomography(p1, p2, FIT, 3.0)
    h_in = int(h_mask.sum()) if h_mask is not None else 0
    if h is not None and h_in >= H_RATIO * len(p1):
        e, e_mask, e_in, e_ok = None, None, 0, False  # E cannot have more inliers than matches: H wins anyway
    else:
        e, e_mask = cv2.findEssentialMat(p1, p2, k, method=FIT, prob=0.999, threshold=1.0,
                                         maxIters=E_MAX_ITERS)
        e_ok = e is not None and e.shape == (3, 3)
        e_in = int(e_mask.sum()) if e_ok and e_mask is not None else 0
    if h is not None and h_in >= H_RATIO * e_in:
        inl = h_mask.ravel().astype(bool)
        r = _rotation_between(p1[inl], p2[inl], k)  # maps camera-1 rays to camera-2 rays
        return PairEstimate(r_cam=r.T, t=None, matches=h_in, model="homography")
    if not e_ok:
        return PairEstimate(r_cam=np.eye(3), t=None, matches=len(p1), model=None)
    _, r, t, _ = cv2.recoverPose(e, p1, p2, k, mask=e_mask)
    # recoverPose: x2 = R x1 + t. The camera's own rotation is R^T, its centre moves by -R^T t.
    c = -(r.T @ t).ravel()
    return PairEstimate(r_cam=r.T, t=c / (np.linalg.norm(c) or 1), matches=e_in, model="essential")


def _fill_unmatched(estimates: list[PairEstimate]) -> None:
    """Give each unmatched pair (``model: None``) that has matched pairs on both sides the rotation interpolated
    between the nearest of them (rotation vectors, by position; ``model: "filled"``, no translation). One blurred
    frame leaves both pairs touching it unmatched: counting them as 0 deg read a 6-pair turn at 2/3 of its degrees.
    Every unmatched pair, not only those the tracker cut ("cut", "orb-rejected"): a flat grey frame (a hand over
    the lens) has no corners to track on to the next ("none"), and a nearly black one tracks corners no model fits;
    left at 0 they read a turn of 8 pairs at 7/8 and 6/8 of its degrees.
    A run of unmatched pairs at the segment's start or end is left at 0: with one side only a turn cannot be told from
    a turn that stopped, and on the synthetic kitchen such pairs are cuts at a segment's edge (filling them from the
    one matched side carried turns on into the cut)."""
    matched = [i for i, e in enumerate(estimates) if e["model"] is not None]
    for i in (i for i, e in enumerate(estimates) if e["model"] is None):
        before = max((j for j in matched if j < i), default=None)
        after = min((j for j in matched if j > i), default=None)
        if before is None or after is None:
            continue
        share = (i - before) / (after - before)
        v = (1 - share) * cv2.Rodrigues(estimates[before]["r_cam"])[0] + share * cv2.Rodrigues(
            estimates[after]["r_cam"])[0]
        estimates[i] = PairEstimate(r_cam=cv2.Rodrigues(v)[0], t=None, matches=0, model="filled")


def odometry(greys: list[np.ndarray], k: np.ndarray, orb) -> tuple[list[PairEstimate], list[str]]:
    """The estimate of each consecutive pair of a segment's grey frames (one ``Tracker`` through them, unmatched
    pairs filled from their neighbours: ``_fill_unmatched``) and the tracker's paths."""
    tracker = Tracker(orb)
    estimates = [relative_pose(a, b, k, orb, matches=tracker.pair(a, b)) for a, b in zip(greys, greys[1:])]
    _fill_unmatched(estimates)
    return estimates, tracker.paths


def motion_label(yaw: float, pitch: float, roll: float, threshold: float) -> str:
    """The dominant rotation of a step (angles and threshold in the same unit)."""
    if max(abs(yaw), abs(pitch), abs(roll)) < threshold:
        return "still"
    if abs(yaw) >= abs(pitch) and abs(yaw) >= abs(roll):
        return "turn_right" if yaw > 0 else "turn_left"
    if abs(pitch) >= abs(roll):
        return "look_up" if pitch > 0 else "look_down"
    return "tilt_right" if roll > 0 else "tilt_left"


PHRASES = {"turn_left": "turns head left", "turn_right": "turns head right", "look_up": "looks up",
           "look_down": "looks down", "tilt_left": "tilts head left", "tilt_right": "tilts head right"}


_AXIS = {"turn_left": "yaw", "turn_right": "yaw", "look_up": "pitch", "look_down": "pitch", "tilt_left": "roll",
         "tilt_right": "roll"}


def _merge(labelled: list[tuple[str, dict]]) -> list[dict]:
    phases: list[dict] = []
    for label, st in labelled:
        if phases and phases[-1]["motion"] == label:
            ph = phases[-1]
            ph["stop"] = st["stop"]
            for a in ("yaw", "pitch", "roll"):
                ph[a] = round(ph[a] + st[a], 2)
        else:
            phases.append({"motion": label, "start": st["start"], "stop": st["stop"],
                           **{a: round(st[a], 2) for a in ("yaw", "pitch", "roll")}})
    for ph in phases:
        axis = _AXIS.get(ph["motion"])
        ph["degrees"] = round(abs(ph[axis]), 1) if axis else 0.0
    return phases


def phases_from_steps(steps: list[dict], rate: float = TURN_RATE, min_degrees: float = MIN_DEGREES) -> list[dict]:
    """Label each step by its dominant rotation speed (>= ``rate`` deg/s), merge equal neighbours, and call
    phases turning less than ``min_degrees`` in all still."""
    labelled = []
    for st in steps:
        dt = max(st["stop"] - st["start"], 1e-3)
        labelled.append((motion_label(st["yaw"] / dt, st["pitch"] / dt, st["roll"] / dt, rate), st))
    phases = _merge(labelled)
    small = {id(p) for p in phases if p["motion"] != "still" and p["degrees"] < min_degrees}
    if small:
        relabelled = []
        for label, st in labelled:
            ph = next(p for p in phases if p["start"] <= st["start"] and st["stop"] <= p["stop"])
            relabelled.append(("still" if id(ph) in small else label, st))
        phases = _merge(relabelled)
    return phases


def phases_text(phases: list[dict]) -> str:
    moving = [p for p in phases if p["motion"] != "still"]
    if not moving:
        return "holds still"
    words = []
    for p in phases:
        if p["motion"] == "still":
            if p is not phases[0] and p is not phases[-1]:
                words.append("pauses")
            continue
        deg = 5 * round(p["degrees"] / 5)
        words.append(f"{PHRASES[p['motion']]} about {max(deg, 5):.0f} deg")
    return ", then ".join(words)


def _direction_word(c: np.ndarray) -> str:
    x, y, z = c
    axis = int(np.argmax(np.abs(c)))
    return [("right" if x > 0 else "left"), ("down" if y > 0 else "up"), ("forward" if z > 0 else "backward")][axis]


# --- COLMAP -----------------------------------------------------------------------------------------------

def _quat_to_r(qw: float, qx: float, qy: float, qz: float) -> np.ndarray:
    n = math.sqrt(qw * qw + qx * qx + qy * qy + qz * qz) or 1.0
    w, x, y, z = qw / n, qx / n, qy / n, qz / n
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def _pose(name: str, qw: float, qx: float, qy: float, qz: float, tx: float, ty: float, tz: float
          ) -> tuple[int, tuple[np.ndarray, np.ndarray]]:
    """(frame number, (R world->camera, camera centre in world)) of a world-to-camera pose; the frame number is
    the last integer in the image name (``frame_0000000123.jpg``)."""
    r = _quat_to_r(qw, qx, qy, qz)
    return int(re.findall(r"\d+", Path(name).stem)[-1]), (r, -r.T @ np.array([tx, ty, tz]))


def read_colmap_images(path: str | Path) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{frame number: (R world->camera, camera centre in world)} from COLMAP's ``images.txt`` or ``images.bin``.

    Each image takes two lines: ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`` then its 2D points. Errors name
    the line as an editor counts it (comment lines included)."""
    path = Path(path)
    if path.suffix.lower() == ".bin":
        return _read_colmap_images_bin(path)
    poses: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    lines = [(n, ln) for n, ln in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
             if not ln.startswith("#")]
    i = 0
    while i < len(lines):
        number, line = lines[i]
        parts = line.split()
        if not parts:
            i += 1
            continue
        try:
            frame, poses[frame] = _pose(parts[9], *(float(v) for v in parts[1:8]))
        except (ValueError, IndexError, TypeError):
            raise LeapError(f"line {number} is not an image pose", path=path, record=f"line {number}",
                            fix="expected COLMAP images.txt: IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME, "
                                "then a line of 2D points") from None
        i += 2
    return poses


def _colmap_name(path: Path, video_id: str) -> str:
    """A COLMAP file named from the video's folder on: ``P01_01/images.bin``, ``P01_01/sparse/0/images.bin``."""
    parts = path.parts
    at = max((i for i, p in enumerate(parts[:-1]) if p == video_id), default=len(parts) - 2)
    return "/".join(parts[at:])


def _read_colmap_images_bin(path: Path) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """COLMAP's ``images.bin`` (``WriteImagesBinary``, little-endian): uint64 number of images; per image uint32
    IMAGE_ID, 4 doubles QW QX QY QZ, 3 doubles TX TY TZ, uint32 CAMERA_ID, NAME ending in a zero byte, uint64
    number of 2D points, then per point 2 doubles X Y and an int64 POINT3D_ID. The points are skipped, never read
    (the file is mapped): EPIC Fields' dense registrations hold thousands per frame."""
    poses: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    image = count = 0
    try:
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            (count,) = struct.unpack_from("<Q", data, 0)
            at = 8
            for image in range(1, count + 1):
                values = struct.unpack_from("<I7dI", data, at)
                end = data.find(b"\0", at + 64)
                if end < 0:
                    raise ValueError
                (points,) = struct.unpack_from("<Q", data, end + 1)
                frame, poses[frame] = _pose(data[at + 64:end].decode("utf-8"), *values[1:8])
                at = end + 9 + 24 * points
            if at != len(data):
                raise ValueError
    except (ValueError, IndexError, struct.error):  # mmap: ValueError on an empty file
        raise LeapError("cut short or not a COLMAP images.bin", path=path,
                        record=f"image {image} of {count}" if image else None,
                        fix="copy the reconstruction again, or give its images.txt") from None
    return poses


def read_epic_fields(path: str | Path) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], dict]:
    """EPIC Fields' per-video JSON -> ({frame number: (R world->camera, camera centre)}, camera).

    ``camera``: {"id", "model" (COLMAP's, e.g. OPENCV), "width", "height", "params" (OPENCV: fx, fy, cx, cy,
    k1, k2, p1, p2)}; ``images``: {frame name: [qw, qx, qy, qz, tx, ty, tz]}; ``points`` is not needed here."""
    path = Path(path)
    fix = ('expected EPIC Fields JSON: {"camera": {"model", "width", "height", "params"}, '
           '"images": {"frame_0000000001.jpg": [qw, qx, qy, qz, tx, ty, tz], ...}, "points": [...]}')
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LeapError(f"not JSON: {e.msg} at line {e.lineno} column {e.colno}", path=path,
                        record=f"line {e.lineno}", fix=fix) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), dict):
        raise LeapError('no "images" object of frame poses', path=path, fix=fix)
    camera = doc.get("camera") if isinstance(doc.get("camera"), dict) else {}
    poses: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for name, pose in doc["images"].items():
        try:
            frame, poses[frame] = _pose(name, *(float(v) for v in pose))
        except (ValueError, TypeError, IndexError):
            raise LeapError(f"image {name!r} has no pose of 7 numbers", path=path, record=str(name), fix=fix) from None
    return poses, {k: camera[k] for k in ("model", "width", "height", "params") if k in camera}


def read_poses(path: str | Path) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], str, dict]:
    """(poses, method, camera) of an EPIC Fields JSON or a COLMAP images.txt / images.bin."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        poses, camera = read_epic_fields(path)
        return poses, "epic-fields", camera
    return read_colmap_images(path), "colmap", {}


def where_in_kitchen(centres: np.ndarray, seg_centre: np.ndarray) -> tuple[dict, str]:
    """Where the segment's camera is relative to all camera centres of the video (``centres`` in frame order)."""
    mean = centres.mean(axis=0)
    spread = float(np.sqrt(((centres - mean) ** 2).sum(axis=1).mean()))
    if spread < 1e-6:
        return ({"distance_from_centre": 0.0, "along_main_axis": None, "time_share_nearby": 1.0},
                "the reconstruction puts every frame of this video at one place (rotation only)")
    dist = float(np.linalg.norm(seg_centre - mean)) / spread
    radius = 0.5 * spread
    share = float((np.linalg.norm(centres - seg_centre, axis=1) < radius).mean())
    # the main axis of movement through the kitchen: where along it the segment is, from the end nearer the video's
    # first frame (0) to the other (1). (SVD's sign of the axis is arbitrary, and may differ between machines'
    # libraries: the clip text, and the prompt's cache key, with it.)
    _, _, vt = np.linalg.svd(centres - mean, full_matrices=False)
    axis = vt[0] if (centres[-1] - centres[0]) @ vt[0] >= 0 else -vt[0]
    proj = (centres - mean) @ axis
    lo, hi = float(proj.min()), float(proj.max())
    along = float(((seg_centre - mean) @ axis - lo) / ((hi - lo) or 1.0))
    place = "near the middle of" if dist < 0.6 else "toward the edge of" if dist < 1.5 else "far out from"
    data = {"distance_from_centre": round(dist, 2), "along_main_axis": round(along, 2),
            "time_share_nearby": round(share, 3)}
    text = (f"camera {place} the area it covers in this video ({dist:.1f} spreads from its centre, "
            f"{along:.0%} along the main axis; {share:.0%} of the video is spent nearby)")
    return data, text


class CameraComponent(Component):
    name = "camera"
    needs_frames = True

    def __init__(self, frames: int = 9, short_side: int = 240, fov_deg: float = 90.0, orb_features: int = 300,
                 source: str = "auto", max_uncovered_s: float = 0.25):
        if source not in ("auto", "vo", "colmap"):
            raise LeapError(f"unknown camera source {source!r}", fix="use auto, vo or colmap")
        self.source = source  # auto: EPIC Fields or COLMAP poses where they exist, else visual odometry
        # auto: poses whose first registered frame comes later than this after the segment's start, or whose last
        # comes earlier before its end (in all), leave odometry to describe the segment
        self.max_uncovered_s = max_uncovered_s
        self.frames = frames
        self.short_side = short_side
        self.fov_deg = fov_deg
        self.orb = cv2.ORB_create(nfeatures=orb_features, edgeThreshold=15, patchSize=15, fastThreshold=10)

    def describe(self, ctx: SegmentContext) -> dict:
        s = ctx.segment
        poses_path = None if self.source == "vo" else ctx.layout.poses_path(s.video_id)
        skipped = uncovered = None
        if poses_path is not None:
            rec = self._from_poses(ctx, poses_path)
            uncovered = rec["data"].get("uncovered_s", 0.0) if rec["status"] == "ok" else None
            if self.source == "colmap" or (rec["status"] == "ok" and (uncovered <= self.max_uncovered_s or
                                                                        ctx.read_frames is None)):
                return rec
            # auto: the reconstruction skipped this segment's frames, or those at its start or end where a head
            # turn may lie (EPIC Fields registers a subset): odometry
            skipped = rec["data"]["reason"] if rec["status"] != "ok" else (
                f"the registered frames leave {uncovered:.2f} s of the segment uncovered")
        elif self.source == "auto":
            skipped = NO_POSES
        if self.source == "colmap":
            return result("unavailable", "none", {"reason": NO_CAMERA_POSES}, f"unavailable ({NO_CAMERA_POSES})")
        if ctx.read_frames is None:
            return result("unavailable", "none", {"reason": "no video or frames for this segment"},
                          "unavailable (no video or frames for this segment)")
        numbers = ctx.segment_frames(self.frames)
        greys = self._read(ctx, numbers)
        h, w = greys[0].shape
        k = intrinsics(w, h, self.fov_deg)
        steps, total = [], np.eye(3)
        for i, est in enumerate(odometry(greys, k, self.orb)[0], start=1):
            total = total @ est["r_cam"]
            yaw, pitch, roll = angles(est["r_cam"])
            step = {"start": ctx.frame_time(numbers[i - 1]), "stop": ctx.frame_time(numbers[i]),
                    "yaw": round(yaw, 2), "pitch": round(pitch, 2), "roll": round(roll, 2),
                    "matches": est["matches"], "model": est["model"]}
            if est["t"] is not None:
                step["translation"] = [round(float(v), 3) for v in est["t"]]
            steps.append(step)
        extra = {"method": "visual-odometry", "fov_deg": self.fov_deg, "frame_size": [w, h]}
        if skipped:
            extra["poses_skipped"] = skipped
            if uncovered is not None:  # poses there, but leaving too much of the segment without a frame
                extra["uncovered_s"] = uncovered
        return self._summary(steps, total, f"orb-vo:{len(numbers)} frames", extra=extra)

    def frames_wanted(self, ctx: SegmentContext) -> list[tuple[list[int], int | None]]:
        return [(ctx.segment_frames(self.frames), ctx.side_at_most(self.short_side))]

    def _read(self, ctx: SegmentContext, numbers: list[int]) -> list[np.ndarray]:
        """Grey frames at ``short_side``, or at the video's own size where that is smaller (never upscaled),
        converted from the decoder's images (no RGB copy in between)."""
        return ctx.images_at_most(numbers, self.short_side, "gray")

    def _summary(self, steps: list[dict], total: np.ndarray, source: str, extra: dict | None = None,
                 where: tuple[dict, str] | None = None) -> dict:
        phases = phases_from_steps(steps)
        yaw, pitch, roll = angles(total)
        text = phases_text(phases)
        # translation only where the essential matrix won on at least half the steps (else the motion is rotation)
        trans = [np.array(st["translation"]) for st in steps if "translation" in st]
        if len(trans) < max(1, len(steps) / 2):
            trans = []
        data = {"steps": steps, "phases": phases,
                "total": {"yaw": round(yaw, 1), "pitch": round(pitch, 1), "roll": round(roll, 1)},
                "timeline": [{"start": p["start"], "stop": p["stop"],
                              "text": phases_text([p])} for p in phases if p["motion"] != "still"],
                **(extra or {})}
        if trans:
            mean = np.mean(trans, axis=0)
            if np.linalg.norm(mean) > 0.5:  # consistent direction across steps
                data["translation_direction"] = _direction_word(mean)
                text += f"; moves {data['translation_direction']}"
        if where is not None:
            data["where"] = where[0]
            text += f"; {where[1]}"
        return result("ok", source, data, text)

    def _from_poses(self, ctx: SegmentContext, path: Path) -> dict:
        s = ctx.segment
        key = ("poses", s.video_id)
        if key not in ctx.video_cache:
            ctx.video_cache[key] = read_poses(path)
        poses, method, camera = ctx.video_cache[key]
        label = f"{method}:{path.name}" if method == "epic-fields" else f"colmap:{_colmap_name(path, s.video_id)}"
        inside = sorted(n for n in poses if s.start_frame <= n <= s.stop_frame)
        if len(inside) < 2:
            return result("unavailable", label, {"reason": "fewer than 2 registered frames in the segment"},
                          "unavailable (fewer than 2 registered frames in the segment)")
        # keep about self.frames poses spread through the segment
        idx = np.unique(np.linspace(0, len(inside) - 1, min(self.frames, len(inside))).round().astype(int))
        chosen = [inside[i] for i in idx]
        steps, total = [], np.eye(3)
        for a, b in zip(chosen, chosen[1:]):
            ra, ca = poses[a]
            rb, cb = poses[b]
            r_cam = ra @ rb.T  # camera-b axes in camera-a axes
            total = total @ r_cam
            yaw, pitch, roll = angles(r_cam)
            move = ra @ (cb - ca)
            # pose frames are named in EPIC's numbering (as the CSV columns), not the MP4's own frames
            step = {"start": ctx.epic_frame_time(a), "stop": ctx.epic_frame_time(b), "yaw": round(yaw, 2),
                    "pitch": round(pitch, 2), "roll": round(roll, 2), "model": "colmap"}
            if np.linalg.norm(move) > 1e-9:
                step["translation"] = [round(float(v), 3) for v in move / np.linalg.norm(move)]
            steps.append(step)
        centres = np.array([poses[n][1] for n in sorted(poses)])
        seg_centre = np.mean([poses[n][1] for n in inside], axis=0)
        first, last = ctx.epic_frame_time(inside[0]), ctx.epic_frame_time(inside[-1])
        uncovered = max(0.0, first) + max(0.0, round(s.stop - s.start, 3) - last)
        extra = {"method": method, "registered_frames": len(inside), "uncovered_s": round(uncovered, 3)}
        if camera:
            extra["camera_model"] = camera
        return self._summary(steps, total, label, extra=extra, where=where_in_kitchen(centres, seg_centre))
