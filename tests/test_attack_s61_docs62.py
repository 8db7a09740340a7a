"""Helper docs62: the documentation session 61 changed on 2026-12-07 (``git diff 198a197 -- docs README.md``) read
as a researcher reads it, each claim checked against leap's behaviour as a user would see it.

* docs/extract.md, "Visual odometry" (``camera.Tracker``): corners refilled under half of TRACK_POINTS; a
  segment's first pair started from the quarter-size phase correlation's shift where its peak is at least 0.3;
  after a pair that moved under 1 px LK on the frame alone, then on all 3 levels where that keeps under 16 corners or
  moves more than 1 px; corners found anew and tracked from phase correlation's shift before ORB; ORB's matches kept
  only where at least half move with that shift; no ORB where its peak is under 0.3 (a cut). The tracker's choices
  are watched through ``_lk``, ``_detect``, ``_orb_matches`` and ``cv2.phaseCorrelate`` (its path and its calls),
  on exact translations of a textured image.
* docs/shards.md, the ``observed_end`` paragraph, and the timing warnings of docs/train.md and
  docs/evaluate-submit.md: validation shards with the key beside training shards without it (and the other way) are
  warned of, a checkpoint trained on shards without it evaluated on shards with it is warned of, as another end of
  the observed window; a checkpoint of a leap before 2026-12-07 (no key at all) is not compared on it; a resume
  (training) on shards of the other rule is refused, as another span is.
* README.md and docs/: no passage still describes the behaviour before (refill at 60%, "the first pair finds the
  motion by phase correlation", "build them with the same build-shards options").
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from leap_cli.extract import camera
from leap_cli.extract.camera import Tracker
from tests.test_attack_s61_goal2 import _one_thread  # noqa: F401  (autouse: OpenCV on one thread, as extract)

ROOT = Path(__file__).resolve().parents[1]


# ---- docs/extract.md: the visual odometry bullets ---------------------------------------------------------------

W, H = 256, 144


def _texture(seed: int = 0, w: int = W + 200, h: int = H + 200) -> np.ndarray:
    """A grey image of random blocks, smoothed a little (good corners everywhere)."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w), 128, np.uint8)
    for _ in range(600):
        x, y = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
        s = int(rng.integers(3, 12))
        img[y:y + s, x:x + s] = int(rng.integers(0, 256))
    return cv2.GaussianBlur(img, (3, 3), 0)


TEX = _texture()


def _view(dx: float = 0.0, dy: float = 0.0, tex: np.ndarray = TEX) -> np.ndarray:
    """The W x H view of ``tex`` whose content has moved by (dx, dy) pixels (a camera pan: integer shifts exact)."""
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    big = cv2.warpAffine(tex, m, tex.shape[::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return np.ascontiguousarray(big[100:100 + H, 100:100 + W])


class Watch:
    """Records the tracker's LK calls (levels, whether started from a shift), detections and ORB searches."""

    def __init__(self, monkeypatch):
        self.lk: list[tuple[int, object]] = []
        self.detect: list[object] = []
        self.orb = 0
        self.phase: list[tuple[int, int]] = []
        lk, detect, orb, phase = camera._lk, Tracker._detect, camera._orb_matches, cv2.phaseCorrelate

        def _lk(g1, g2, pts, shift=None, levels=camera.LK_LEVELS):
            self.lk.append((levels if shift is None else camera.LK_LEVELS - 1,
                            None if shift is None else tuple(float(v) for v in shift)))
            return lk(g1, g2, pts, shift, levels)

        def _detect(tracker, g, shift=None):
            self.detect.append(None if shift is None else tuple(float(v) for v in shift))
            return detect(tracker, g, shift)

        def _orb(*a):
            self.orb += 1
            return orb(*a)

        def _phase(a, b, *rest):
            self.phase.append(a.shape)
            return phase(a, b, *rest)

        monkeypatch.setattr(camera, "_lk", _lk)
        monkeypatch.setattr(Tracker, "_detect", _detect)
        monkeypatch.setattr(camera, "_orb_matches", _orb)
        monkeypatch.setattr(camera.cv2, "phaseCorrelate", _phase)

    def clear(self):
        self.lk.clear(), self.detect.clear(), self.phase.clear()
        self.orb = 0


def _tracker() -> Tracker:
    return Tracker(cv2.ORB_create(300))


def test_a_segments_first_pair_starts_from_the_quarter_size_shift_of_a_turn_under_way(monkeypatch):
    """extract.md: "A segment's first pair starts from the shift phase correlation finds on quarter-size frames (a
    turn may be under way), where its peak is at least 0.3". A 24 px pan at the first pair: phase correlation runs
    on 64x36 frames and LK starts from ~24 px (2 levels), and the motion is read."""
    watch = Watch(monkeypatch)
    t = _tracker()
    p1, p2 = t.pair(_view(0), _view(24))
    assert watch.phase[0] == (H // 4, W // 4), watch.phase
    assert watch.lk[0][1] is not None and abs(watch.lk[0][1][0] - 24) < 2 and abs(watch.lk[0][1][1]) < 2, watch.lk
    assert watch.lk[0][0] == 2
    assert t.paths == ["lk+prior"]
    assert len(p1) >= camera.MIN_TRACKED
    assert np.allclose(np.median(p2 - p1, axis=0), [24, 0], atol=0.5)


def test_a_first_pair_of_unrelated_frames_takes_no_start_from_the_quarter_size_shift(monkeypatch):
    """"where its peak is at least 0.3 (below that the shift of unrelated frames is noise)": two unrelated
    textures: the quarter-size peak is under 0.3, no LK call starts from a shift, and the pair is left unmatched
    (a cut), with no ORB search."""
    g1, g2 = _view(tex=_texture(1)), _view(tex=_texture(2))
    a = cv2.pyrDown(cv2.pyrDown(g1)).astype(np.float32)
    b = cv2.pyrDown(cv2.pyrDown(g2)).astype(np.float32)
    _, peak = cv2.phaseCorrelate(a, b, cv2.createHanningWindow(a.shape[::-1], cv2.CV_32F))
    assert peak < camera.CUT_RESPONSE
    assert camera._coarse_shift(g1, g2) is None
    watch = Watch(monkeypatch)
    t = _tracker()
    p1, _ = t.pair(g1, g2)
    assert all(shift is None for _, shift in watch.lk), watch.lk
    assert t.paths == ["cut"] and len(p1) == 0 and watch.orb == 0


def test_after_a_calm_pair_lk_tracks_on_the_frame_alone(monkeypatch):
    """extract.md: "After a pair that moved less than 1 px LK tracks on the frame alone (no pyramid ...)": the
    second pair of a still camera is one LK call on level 0 only, the corners carried on (no detection)."""
    watch = Watch(monkeypatch)
    t = _tracker()
    t.pair(_view(0), _view(0.3))
    watch.clear()
    p1, p2 = t.pair(_view(0.3), _view(0.6))
    assert watch.lk == [(0, None)], watch.lk
    assert watch.detect == []
    assert t.paths[-1] == "lk" and len(p1) >= camera.MIN_TRACKED
    assert np.allclose(np.median(p2 - p1, axis=0), [0.3, 0], atol=0.15)


@pytest.mark.parametrize("px", [3.0, 20.0])
def test_after_a_calm_pair_a_motion_over_1px_is_tracked_again_on_all_3_levels(monkeypatch, px):
    """"... and again on all 3 levels where that keeps fewer than 16 corners or their median motion is over 1 px":
    a still pair then a 3 px (or 20 px) jump: LK on level 0, then on 3 levels, and the jump is read."""
    watch = Watch(monkeypatch)
    t = _tracker()
    t.pair(_view(0), _view(0.2))
    watch.clear()
    p1, p2 = t.pair(_view(0.2), _view(0.2 + px))
    assert watch.lk[:2] == [(0, None), (3, None)], watch.lk
    assert len(p1) >= camera.MIN_TRACKED
    assert np.allclose(np.median(p2 - p1, axis=0), [px, 0], atol=0.3)


def test_after_a_pair_that_moved_over_1px_lk_uses_the_pyramid_at_once(monkeypatch):
    """The frame alone is for calm pairs only: after a 2 px pair the next is one LK call on 3 levels."""
    watch = Watch(monkeypatch)
    t = _tracker()
    t.pair(_view(0), _view(2))
    watch.clear()
    t.pair(_view(2), _view(4))
    assert watch.lk == [(3, None)], watch.lk


@pytest.mark.parametrize("kept, detected", [(24, False), (23, True)])
def test_corners_are_detected_again_only_when_fewer_than_half_survive(monkeypatch, kept, detected):
    """extract.md: "carried from frame to frame, detected again only when fewer than half survive" (of 48): 24
    carried corners are tracked as they are, 23 are replaced by a new detection."""
    t = _tracker()
    g1, g2 = _view(0), _view(2)
    corners = cv2.goodFeaturesToTrack(g1, maxCorners=kept, qualityLevel=0.01, minDistance=6)
    assert corners is not None and len(corners) == kept
    t._pts, t._flow, t.paths = corners.astype(np.float32), np.array([2.0, 0.0]), ["lk"]
    watch = Watch(monkeypatch)
    p1, _ = t.pair(g1, g2)
    assert bool(watch.detect) is detected, watch.detect
    assert len(p1) >= camera.MIN_TRACKED


def test_where_carried_corners_fail_lk_starts_again_from_corners_found_anew_before_any_orb(monkeypatch):
    """extract.md: "Where LK keeps fewer than 16 corners it starts again, from corners found anew, from the global
    shift found by phase correlation ... Only then are ORB features matched": 30 corners carried from a calm pair
    meet a 60 px jump (beyond LK's pyramid from a zero start): new corners are found where they stay in view after
    phase correlation's shift, LK starts from that shift, the jump is read and ORB is not searched."""
    t = _tracker()
    g1, g2 = _view(0), _view(60)
    corners = cv2.goodFeaturesToTrack(g1, maxCorners=30, qualityLevel=0.01, minDistance=6)
    t._pts, t._flow, t.paths = corners.astype(np.float32), np.array([0.2, 0.0]), ["lk"]
    watch = Watch(monkeypatch)
    p1, p2 = t.pair(g1, g2)
    assert len(watch.detect) == 1 and watch.detect[0] is not None and abs(watch.detect[0][0] - 60) < 2, watch.detect
    assert watch.lk[-1][1] is not None and abs(watch.lk[-1][1][0] - 60) < 2, watch.lk
    assert watch.orb == 0 and t.paths[-1] == "lk+shift"
    assert len(p1) >= camera.MIN_TRACKED
    assert np.allclose(np.median(p2 - p1, axis=0), [60, 0], atol=0.5)


def _failing_lk(monkeypatch):
    """LK that keeps no corner (tracking failed), so that the pair reaches phase correlation and ORB."""
    monkeypatch.setattr(camera, "_lk", lambda g1, g2, pts, shift=None, levels=3: (pts, np.zeros(len(pts), bool)))


@pytest.mark.parametrize("agreeing, path", [(10, "orb"), (9, "orb-rejected")])
def test_orbs_matches_are_kept_only_where_at_least_half_move_with_the_shift(monkeypatch, agreeing, path):
    """extract.md: ORB's matches are "kept only where at least half of them move with that shift (within a tenth of
    the short side ...) such a pair is left unmatched": of 20 matches, 10 moving with phase correlation's shift are
    kept (all 20 returned), 9 leave the pair unmatched (no points, path orb-rejected)."""
    _failing_lk(monkeypatch)
    monkeypatch.setattr(camera, "global_shift", lambda g1, g2: (np.array([30.0, 0.0]), 0.8))
    rng = np.random.default_rng(5)
    q1 = rng.uniform(20, 120, (20, 2))
    moves = np.tile([30.0, 0.0], (20, 1))
    moves[agreeing:] = [[-40.0, 25.0]] * (20 - agreeing)  # far from the shift (more than 24 px of a 240 side)
    monkeypatch.setattr(camera, "_orb_matches", lambda g1, g2, orb: (q1, q1 + moves))
    t = _tracker()
    g = _view(0, tex=_texture(3, W + 200, 240 + 200))[:, :]
    g = np.ascontiguousarray(cv2.resize(g, (427, 240)))
    p1, _ = t.pair(g, g)
    assert t.paths == [path]
    assert len(p1) == (20 if path == "orb" else 0)


def test_the_agreement_tolerance_is_a_tenth_of_the_short_side_at_the_components_size():
    """"within a tenth of the short side": 24 px at 240 (the component's size); the tracker's own floor is LK's
    9 px window, which binds on frames under 90 px only."""
    shift = np.array([0.0, 0.0])
    assert camera._agrees(np.array([[23.9, 0.0]] * 2), shift, 240)
    assert not camera._agrees(np.array([[24.1, 0.0]] * 2), shift, 240)
    assert camera._agrees(np.array([[8.9, 0.0]] * 2), shift, 60)
    assert not camera._agrees(np.array([[9.1, 0.0]] * 2), shift, 60)


def test_no_orb_where_phase_correlations_peak_is_under_0_3_and_the_motion_carries_on(monkeypatch):
    """extract.md: "not when phase correlation's peak is under 0.3 (CUT_RESPONSE): ... the pair is left unmatched
    (model: null, no rotation counted) and the next pair starts from the motion before it"."""
    t = _tracker()
    t._pts, t._flow, t.paths = None, np.array([12.0, 0.0]), ["lk+prior"]
    with monkeypatch.context() as m:
        _failing_lk(m)
        m.setattr(camera, "global_shift", lambda g1, g2: (np.array([0.0, 0.0]), 0.29))
        called = []
        m.setattr(camera, "_orb_matches", lambda *a: called.append(1) or (np.zeros((0, 2)), np.zeros((0, 2))))
        p1, p2 = t.pair(_view(0), _view(12))
    assert t.paths == ["lk+prior", "cut"] and len(p1) == 0 and not called
    k = camera.intrinsics(W, H, 90.0)
    assert camera.relative_pose(_view(0), _view(12), k, None, matches=(p1, p2))["model"] is None
    watch = Watch(monkeypatch)
    t.pair(_view(12), _view(24))
    assert watch.lk[0][1] is not None and abs(watch.lk[0][1][0] - 12) < 1e-6, watch.lk


# ---- docs/shards.md, train.md, evaluate-submit.md: observed_end in the timing warnings ---------------------------

SEG = {"tau_a": 1.0, "context_mode": "segments", "tau_o": 1.0}


@pytest.fixture(scope="module")
def segments_shards(tmp_path_factory) -> Path:
    """Anticipation shards of the segments context (with settings.observed_end) on the tiny rgb_frames root."""
    from tests.test_shards import build, make_root

    tmp = tmp_path_factory.mktemp("docs62")
    root = make_root(tmp / "kitchen")
    return build(root, tmp / "w", task="anticipation", context=1, context_mode="segments").out


def _without_the_key(folder: Path, to: Path) -> Path:
    """A copy of ``folder`` as a leap before 2026-12-06 left it (no settings.observed_end: an MP4 folder resumed)."""
    shutil.copytree(folder, to)
    m = json.loads((to / "manifest.json").read_text())
    del m["settings"]["observed_end"]
    (to / "manifest.json").write_text(json.dumps(m))
    return to


def _source(train: Path, val: Path | None):
    from leap_cli.train.config import load_config
    from leap_cli.train.data import ShardSource
    from leap_cli.train.distributed import DistInfo

    cfg = load_config("tiny-synthetic", ["model.num_frames=4", "model.img_size=32", "data.batch_size=2",
                                         "data.task=anticipation", "model.anticipation_context=1"])
    return ShardSource(train, val, cfg, DistInfo())


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("keyless", ["val", "train"])
def test_training_warns_of_validation_shards_of_the_other_window_end_rule(segments_shards, tmp_path, caplog,
                                                                          keyless):
    """train.md: validation shards that observe otherwise than the training shards ("another --tau-a, span, context
    mode or settings.observed_end") are warned of; shards.md: "training and evaluation warn where shards with the
    key meet shards without it". The warning says what the figures measure: another end of the observed window."""
    old = _without_the_key(segments_shards, tmp_path / "old")
    train, val = (segments_shards, old) if keyless == "val" else (old, segments_shards)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _source(train, val)
    text = _flat(caplog.text)
    assert "the validation shards observe otherwise than the training shards" in text, text
    assert "another end of the observed window" in text, text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _source(segments_shards, segments_shards)
    assert "observe otherwise" not in caplog.text


def test_evaluate_warns_a_run_trained_on_shards_without_the_key_and_not_a_checkpoint_before_it(
        segments_shards, tmp_path, caplog):
    """evaluate-submit.md: shards that observe otherwise than the run's training shards ("... or
    settings.observed_end, kept in the checkpoint as shards_timing") are scored with a warning, "for another end of
    the observed window"; shards.md: "a checkpoint of a leap before 2026-12-07 kept no rule and is not compared on
    it" (whichever rule the shards hold)."""
    from leap_cli.evaluate.inference import _same_timing
    from leap_cli.shards.dataset import anticipation_timing

    manifest = json.loads((segments_shards / "manifest.json").read_text())
    timing = anticipation_timing(manifest)
    assert timing["observed_end"]
    old = _without_the_key(segments_shards, tmp_path / "old")
    old_manifest = json.loads((old / "manifest.json").read_text())
    trained_on_old = {**timing, "observed_end": None}  # a run of today's leap on shards without the key
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _same_timing(trained_on_old, manifest, segments_shards)
    text = _flat(caplog.text)
    assert "observe otherwise than the run's training shards" in text and "another end of the observed window" in text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _same_timing(dict(timing), old_manifest, old)  # a run on today's shards, shards of the earlier rule
    assert "another end of the observed window" in _flat(caplog.text)
    before = {k: v for k, v in timing.items() if k != "observed_end"}  # a checkpoint of a leap before 2026-12-07
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _same_timing(before, manifest, segments_shards)
        _same_timing(before, old_manifest, old)
        _same_timing(dict(timing), manifest, segments_shards)
    assert "otherwise" not in caplog.text, caplog.text


def test_a_resume_on_shards_of_the_other_window_end_rule_is_refused_as_for_another_span(segments_shards, tmp_path):
    """shards.md says training "warns" where shards with the key meet a run trained on shards without it, "as for
    another span": a resume is refused, as it is for another span (train.md's --resume refuses other training
    shards): guarded here, the wording is in the report. A checkpoint before 2026-12-07 resumes."""
    from leap_cli.errors import LeapError
    from leap_cli.train.loop import _same_training_data

    s = _source(segments_shards, None)
    ckpt = {"shards_timing": {**s.timing, "observed_end": None},
            "data_position": {"batches_per_epoch": s.batches_per_epoch}}
    with pytest.raises(LeapError) as e:
        _same_training_data(ckpt, s, tmp_path / "last.pt", None)
    assert "leap before 2026-12-06" in str(e.value)
    ckpt["shards_timing"] = {k: v for k, v in s.timing.items() if k != "observed_end"}
    _same_training_data(ckpt, s, tmp_path / "last.pt", None)


# ---- README.md and docs/: no passage of the behaviour before ---------------------------------------------------

def _docs() -> dict[str, str]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return {p.name: _flat(p.read_text()) for p in files}


@pytest.mark.parametrize("old", [
    r"fewer than 60 ?% survive", r"the first pair finds the motion by phase correlation",
    r"with the same (`?leap )?`?build-shards`? options", r"build them with the same",
    r"(first|segment's first) pair starts from (the )?(half-size|phase correlation at half)"])
def test_no_doc_still_describes_the_behaviour_before(old):
    hits = [name for name, text in _docs().items() if re.search(old, text, re.IGNORECASE)]
    assert not hits, hits


def test_the_odometry_constants_the_docs_name_are_the_trackers():
    """The numbers of extract.md's bullets are the code's: 48 corners, refill under half, 9-px window, 3 levels,
    16 corners, 1 px, 0.3, no pyramid on calm pairs."""
    text = _docs()["extract.md"]
    assert (camera.TRACK_POINTS, camera.TRACK_REFILL, camera.LK_WINDOW, camera.LK_LEVELS) == (48, 0.5, 9, 3)
    assert (camera.MIN_TRACKED, camera.STILL_FLOW, camera.STILL_LEVELS, camera.CUT_RESPONSE) == (16, 1.0, 0, 0.3)
    for words in ("48 Shi-Tomasi corners", "fewer than half survive", "9-px window, 3 levels", "fewer than 16 corners",
                  "moved less than 1 px", "peak is under 0.3 (`CUT_RESPONSE`)", "at least half of them move"):
        assert words in text, words


def test_training_folders_of_both_window_end_rules_are_refused_not_warned(segments_shards, tmp_path):
    """data.train naming a folder with the key and one without (train + val of two leaps) is refused before
    training, with a fix that builds the keyless one again (not the warning shards.md's "training ... warn" says)."""
    from leap_cli.errors import LeapError
    from leap_cli.shards.format import load_folders

    old = _without_the_key(segments_shards, tmp_path / "old")
    m = json.loads((old / "manifest.json").read_text())  # (other segment keys: a folder of another split)
    for s in m["shards"]:
        s["keys"] = [f"other-{k}" for k in s["keys"]]
    (old / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(LeapError) as e:
        load_folders([segments_shards, old])
    text = _flat(f"{e.value} {e.value.fix}")
    assert "where the observed window ends" in text and "build" in text and str(old) in text, text


def _observed_end_paragraph() -> str:
    text = _docs()["shards.md"]
    start = text.index("`settings.observed_end` names this rule")
    return text[start:text.index("the context clips are", start)]


def test_the_observed_end_paragraph_says_training_refuses_a_resume_and_mixed_training_folders():
    """Was wrong: docs/shards.md: 'training and evaluation warn where shards with the key meet shards without it, or
    a run trained on them': a resume (loop._same_training_data) and a data.train list of both rules
    (format.load_folders) are refused. The paragraph says training "warns" where shards of the two rules meet;
    training warns of validation shards only, and refuses a resume on shards of the other rule (options.md:64 says
    so for another timing) and training folders of both rules (tests above)."""
    paragraph = _observed_end_paragraph()
    assert re.search(r"training\b.*\brefus", paragraph), paragraph
