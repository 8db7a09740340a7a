"""Session 62, helper attack: attacks on the session's changes (camera records version 2, the fill of unmatched
odometry pairs, ``generate-programs --dry-run --narration-id`` reading one segment's lines).

Was wrong (seen failing on the code before the fix): ``camera._fill_unmatched`` filled only the pairs the tracker
left without matches ("cut", "orb-rejected"), not every pair with ``model: null`` as docs/extract.md says: a flat
grey frame inside a turn (a hand over the lens) cut the pair into it but left the pair out of it ("none": no corners
to track) at 0 deg, and a nearly black frame tracked corners no model fitted (both pairs ``model: null``, 0 deg):
an 8-pair turn of 64 deg read 56 and 48.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from leap_cli.errors import LeapError
from leap_cli.extract import base
from leap_cli.extract.camera import PairEstimate, _fill_unmatched, angles
from leap_cli.programs.generate import GenerateConfig, _setup, dry_run
from tests.test_attack_s61_goal2 import _one_thread  # noqa: F401  (autouse: OpenCV on one thread, as extract)
from tests.test_attack_s61_vo63 import _blocks, _noise, _rot, _segment, _views
from tests.test_attack_s62_dryrun import kitchen, record, write  # noqa: F401  (kitchen: a fixture)

W, H = 427, 240


# ---- _fill_unmatched: every unmatched pair, not only the tracker's cuts --------------------------------------------

@pytest.mark.parametrize("make,seed", [(_blocks, 41), (_noise, 42)])
@pytest.mark.parametrize("frame", ["grey", "dark"])
def test_a_flat_or_dark_frame_inside_a_turn_is_filled_on_both_sides(make, seed, frame):
    """Was wrong: a turn of 8 deg a pair, its 5th frame flat grey or at 2% brightness: the pairs touching it read
    0 deg where the tracker did not call them a cut (grey: the pair out of it, "none"; dark: both, tracked
    corners no model fits): 56 and 48 of 64 deg."""
    views = _views(make(W, H, seed), [_rot(8.0 * i) for i in range(9)], W, H)
    views[4] = np.full_like(views[4], 128) if frame == "grey" else (views[4] * 0.02).astype(views[4].dtype)
    got, models, paths = _segment(views)
    assert models[3:5] == ["filled"] * 2, (paths, models)
    assert [round(g[0]) for g in got] == [8] * 8, (np.round(got, 1).tolist(), paths)


def _pair(yaw: float | None, model: str = "homography") -> PairEstimate:
    """A matched pair turning ``yaw`` deg, or an unmatched one (None)."""
    if yaw is None:
        return PairEstimate(r_cam=np.eye(3), t=None, matches=3, model=None)
    t = np.array([0.0, 0.0, 1.0]) if model == "essential" else None
    return PairEstimate(r_cam=_rot(yaw), t=t, matches=40, model=model)


def _yaws(estimates) -> list[float]:
    return [angles(e["r_cam"])[0] for e in estimates]


def test_the_fill_interpolates_by_position_between_the_nearest_matched_pairs():
    """Two unmatched pairs between turns of 3 and 12 deg read 6 and 9 (a third and two thirds of the way), not
    the far pairs' degrees, nor one value for both; the edge pairs (one side only) stay unmatched at 0, with
    their own match counts; the filled ones say ``matches: 0`` and have no translation (not their neighbour's)."""
    est = [_pair(None), _pair(30.0), _pair(3.0, "essential"), _pair(None), _pair(None), _pair(12.0, "essential"),
           _pair(-20.0), _pair(None)]
    _fill_unmatched(est)
    assert [e["model"] for e in est] == [None, "homography", "essential", "filled", "filled", "essential",
                                         "homography", None]
    assert _yaws(est) == pytest.approx([0, 30, 3, 6, 9, 12, -20, 0], abs=0.01)
    assert [e["matches"] for e in est] == [3, 40, 40, 0, 0, 40, 40, 3]
    assert est[3]["t"] is None and est[4]["t"] is None


def test_alternating_matched_and_unmatched_pairs_and_two_frame_segments():
    est = [_pair(2.0), _pair(None), _pair(4.0), _pair(None), _pair(10.0)]
    _fill_unmatched(est)
    assert _yaws(est) == pytest.approx([2, 3, 4, 7, 10], abs=0.01)
    for one in ([_pair(None)], [_pair(5.0)], []):  # a segment of 2 frames (or 1): nothing to fill from
        before = [dict(e) for e in one]
        _fill_unmatched(one)
        assert [e["model"] for e in one] == [e["model"] for e in before]


# ---- extract's camera 2, then generate-programs: asked again only where the clip text changed ----------------------

def test_after_the_camera_upgrade_programs_are_made_again_only_where_the_clip_text_changed(tmp_path, monkeypatch):
    """A resume over camera-1 records makes those of the odometry again (the note's count); generate-programs then
    makes again only the program of the segment whose clip text the new odometry changed, not all of them (paid
    calls with an LLM); with no text changed, none."""
    from leap_cli.extract.runner import ExtractConfig, run_extract
    from leap_cli.programs.generate import generate_programs
    from tests.extract_kitchen import build, camera_reads_otherwise

    root = build(tmp_path / "root")
    for name in ("EPIC_100_verb_classes.csv", "EPIC_100_noun_classes.csv"):  # (for generate-programs)
        shutil.copy(Path(__file__).parent / "data" / "epic100" / name, root / "annotations" / name)
    out = tmp_path / "w" / "descriptors" / "train.jsonl"
    cfg = ExtractConfig(data=root, split="train", out=out, components=("narration", "camera"), frame_cache=None)
    gen = GenerateConfig(workdir=tmp_path / "w", split="train", data=root)
    monkeypatch.setitem(base.VERSIONS, "camera", 1)  # (a leap of 2026-12-05)
    assert run_extract(cfg).written == 4
    first = generate_programs(gen)
    assert first.statuses["valid"] == 4
    monkeypatch.setitem(base.VERSIONS, "camera", 2)
    camera_reads_otherwise(monkeypatch, ", then steadies", "P01_01_1")  # (today's odometry reads one segment otherwise)
    s = run_extract(cfg)  # (P01_02_0's camera is unavailable, no video: camera 2 leaves it as it read)
    assert (s.outdated, s.written) == (3, 3)
    recs = {r["narration_id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert {k: r["versions"]["camera"] for k, r in recs.items()} == {**dict.fromkeys(recs, 2), "P01_02_0": 1}
    again = generate_programs(gen)
    assert (again.resumed, again.reclipped, sum(again.statuses.values())) == (3, 1, 1), again
    assert (s := run_extract(cfg)).written == 0 and s.outdated == 0  # (made once)
    assert generate_programs(gen).resumed == 4


# ---- --dry-run --narration-id: the whole read's prompt from files as other writers left them -----------------------

def test_crlf_lines_compact_separators_and_other_key_order_give_the_whole_reads_prompt(kitchen):  # noqa: F811
    workdir, ids, desc = kitchen
    recs = [dict(reversed(record(nid).items())) for nid in ids]  # (narration_id last)
    desc.write_bytes(b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\r\n" for r in recs))
    cfg = GenerateConfig(workdir=workdir, split="val")
    for nid in ("P01_11_1", "P01_11_10", ids[-1]):
        prompt = dry_run(cfg, nid)
        assert prompt == dry_run(cfg, nid, setup=_setup(cfg)) and f"CLIP-TEXT-{nid}\n" in prompt


def test_a_descriptors_path_given_and_an_id_with_characters_json_escapes(kitchen, tmp_path):  # noqa: F811
    """--descriptors FILE elsewhere; an id holding a quote and a backslash (escaped in the line) is found."""
    workdir, ids, _ = kitchen
    odd = 'P01_11_"1\\'
    csv = workdir / "kitchen" / "annotations" / "EPIC_100_validation.csv"
    csv.write_text(csv.read_text().replace("P01_11_101,", '"P01_11_""1\\",'))
    ids = [odd if nid == "P01_11_101" else nid for nid in ids]
    other = tmp_path / "elsewhere.jsonl"
    write(other, [record(nid) for nid in ids])
    cfg = GenerateConfig(workdir=workdir, split="val", descriptors=other)
    prompt = dry_run(cfg, odd)
    assert prompt == dry_run(cfg, odd, setup=_setup(cfg)) and f"CLIP-TEXT-{odd}\n" in prompt


def test_a_part_of_a_sharded_run_finds_a_segment_of_the_splits_second_video(tmp_path, caplog):
    """--shard 1/2 with --narration-id: the split's videos are dealt in the split's order (P01_11 to part 0,
    P01_12 to part 1), not in the order of the one segment read; the one record read is not said to leave the
    part's other segments without a program."""
    from leap_cli.common import ShardSpec
    from tests.program_helpers import excerpt_annotations

    ann = excerpt_annotations(tmp_path)
    rows = [line.split(",") for line in (ann / "EPIC_100_validation.csv").read_text().splitlines()[1:]]
    nid = next(r[0] for r in rows if r[2] == "P01_12")
    desc = tmp_path / "descriptors" / "val.jsonl"
    desc.parent.mkdir()
    write(desc, [record(r[0], video_id=r[2]) for r in rows])
    part = GenerateConfig(workdir=tmp_path, split="val", shard=ShardSpec(1, 2))
    with caplog.at_level(logging.WARNING):
        assert f"CLIP-TEXT-{nid}\n" in dry_run(part, nid)
    assert not caplog.text, caplog.text
    with pytest.raises(LeapError, match=f"segment {nid} is not in the input"):
        dry_run(GenerateConfig(workdir=tmp_path, split="val", shard=ShardSpec(0, 2)), nid)


def test_a_record_naming_the_id_in_another_field_is_not_warned_of(kitchen, caplog):  # noqa: F811
    """The line of P01_11_10, whose field "previous" names P01_11_1, is parsed but is not the segment's record: no word
    of records outside the split (the whole read says nothing either)."""
    workdir, ids, desc = kitchen
    write(desc, [record(nid, previous="P01_11_1") if nid == "P01_11_10" else record(nid) for nid in ids])
    cfg = GenerateConfig(workdir=workdir, split="val")
    with caplog.at_level(logging.WARNING):
        assert "CLIP-TEXT-P01_11_1\n" in dry_run(cfg, "P01_11_1")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
