"""Anticipation as in the paper: three contiguous clips of 256 source frames, the last ending tau_a before the
action, read through the one timing rule (epic.timing.clip_windows_before / FrameClock), for both clocks (an MP4's
frames at its true fps, EPIC's rgb_frames numbering at 60/s or 50/s); on real EPIC CSV rows and in shard samples."""

import csv
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from leap_cli.epic.annotations import Annotations
from leap_cli.epic.timing import MP4, RGB_FRAMES, FrameClock, clip_windows_before, epic_frame_rate, parse_timestamp
from leap_cli.shards.dataset import ShardDataset, collate_clips
from leap_cli.shards.format import iter_tar_samples
from leap_cli.shards.writer import ShardSettings, plan_samples
from tests.conftest import EPIC_EXCERPT
from tests.test_shards import TRAIN, W, H, build, colour, make_root

CLOCKS = (MP4, RGB_FRAMES)


def real_rows():
    """Segments of the attributed EPIC excerpt: the train CSV (59.94 fps videos) and the timing rows (59.94, 50,
    29.97, 47.95 and 90 fps), with each video's true fps."""
    ann = Annotations(EPIC_EXCERPT)
    segs = [s for s in ann.segments("train") if s.video_id in ann.video_info]
    fps = {s.video_id: ann.video_info[s.video_id].fps for s in segs}
    for r in csv.DictReader(open(EPIC_EXCERPT / "timing_rows.csv")):
        segs.append(SimpleNamespace(narration_id=r["narration_id"], video_id=r["video_id"],
                                    start=parse_timestamp(r["start_timestamp"]), stop=parse_timestamp(r["stop_timestamp"]),
                                    start_frame=int(r["start_frame"]), stop_frame=int(r["stop_frame"])))
        fps[r["video_id"]] = float(r["fps"])
    return segs, fps


def check_clips(meta: dict, clock: FrameClock, seg, tau_a: float, span: int, n: int = 3) -> None:
    """The sample's clips, checked against the clock: contiguous, ``span`` source frames each, the newest ending
    ``tau_a`` before the action as this source numbers it, and the frames of each clip exactly those that start
    in its ``[start, stop)``."""
    clips = meta["clips"]
    assert len(clips) == n
    action = seg.start if clock.kind == MP4 else clock.time_of(seg.start_frame)  # the CSV column on rgb_frames
    end = action - tau_a
    assert clips[-1]["stop"] == pytest.approx(end, abs=1e-6)
    for a, b in zip(clips, clips[1:]):
        assert a["stop"] == b["start"] and a["last_frame"] + 1 == b["first_frame"]  # contiguous, no frame shared
    for c in clips:
        assert c["last_frame"] - c["first_frame"] + 1 == span  # span frames of the source
        assert c["stop"] - c["start"] == pytest.approx(span / clock.rate, abs=1e-5)
        # (the record rounds times to 1e-6 s; a frame lasts over 1e-2 s)
        assert clock.time_of(c["first_frame"] - 1) < c["start"] <= clock.time_of(c["first_frame"]) + 1e-6
        assert clock.time_of(c["last_frame"]) < c["stop"] <= clock.time_of(c["last_frame"] + 1) + 1e-6
        if c["present"]:
            assert all(max(1, c["first_frame"]) <= i <= c["last_frame"] for i in c["frame_indices"])
            assert c["padded_frames"] == max(0, 1 - c["first_frame"])
        else:
            assert c["last_frame"] < 1 and c["frame_indices"] == []
    # nothing at or after action - tau_a is read: the last frame read starts before it, the next one does not
    last = clips[-1]["last_frame"]
    assert clock.time_of(last) < end <= clock.time_of(last + 1) + 1e-9  # end is exact here, not rounded
    if clock.kind == RGB_FRAMES:  # whole frames of EPIC's numbering: tau_a x rate frames lie between clip and action
        assert seg.start_frame - last - 1 == round(tau_a * clock.rate)
    else:  # the frames of the video that start before ts - tau_a, counted independently of the timing module
        assert last == math.ceil(round((seg.start - tau_a) * clock.fps, 6))


@pytest.mark.parametrize("kind", CLOCKS)
def test_clips_on_real_csv_rows_follow_the_timing_rule(kind):
    segs, fps = real_rows()
    rates = {round(f, 2) for f in fps.values()}
    assert {59.94, 50.0, 29.97, 47.95, 90.0} <= rates
    settings = ShardSettings(split="train", task="anticipation", frames=8)
    _, records, _ = plan_samples(segs, fps.__getitem__, settings, clock=lambda v: FrameClock(kind, fps[v]))
    checked = 0
    for s in segs:
        clock = FrameClock(kind, fps[s.video_id])
        rec = records[s.narration_id]
        check_clips(rec, clock, s, 1.0, 256)
        # the record is what the one function says
        windows = clip_windows_before(clock, s, 1.0, clips=3, frames=256, n=8)
        assert [(c["first_frame"], c["last_frame"]) for c in rec["clips"]] == [(w.first, w.last) for w in windows]
        if rec.get("blank"):
            assert rec["clips"][-1]["last_frame"] < 1
            continue
        assert rec["frame_indices"] == rec["clips"][-1]["frame_indices"] and len(rec["frame_indices"]) == 8
        assert [c["frame_indices"] for c in rec["context"]] == [c["frame_indices"] for c in rec["clips"][:2]]
        checked += 1
    assert checked >= 18
    # P01_01_1 starts at 4.37 s: s_i holds the 256 frames up to 3.37 s, s_{i-1} and s_{i-2} lie before the video
    rec = records["P01_01_1"]
    assert [c["present"] for c in rec["clips"]] == [False, False, True] and rec["clips"][2]["padded_frames"] > 0
    assert [c["present"] for c in rec["context"]] == [False, False]
    # tau_a is configurable
    _, rec2, _ = plan_samples(segs, fps.__getitem__, ShardSettings(split="train", task="anticipation", tau_a=0.5),
                              clock=lambda v: FrameClock(kind, fps[v]))
    p = next(s for s in segs if s.narration_id == "P01_01_10")
    check_clips(rec2["P01_01_10"], FrameClock(kind, fps["P01_01"]), p, 0.5, 256)


def test_the_two_clocks_differ_where_epic_counts_at_60():
    """On a 59.94 fps video 20 min in, EPIC's numbering runs 0.1% ahead of the MP4's frames: the same action's
    clips have other frame numbers, each right for its own source."""
    segs, fps = real_rows()
    s = next(s for s in segs if abs(fps[s.video_id] - 59.94) < 0.01 and s.start > 1000)
    mp4 = clip_windows_before(FrameClock(MP4, fps[s.video_id]), s, 1.0)
    rgb = clip_windows_before(FrameClock(RGB_FRAMES, fps[s.video_id]), s, 1.0)
    assert rgb[-1].last - mp4[-1].last >= s.start * 0.06 - 3  # 60 - 59.94 frames a second
    assert FrameClock(RGB_FRAMES, fps[s.video_id]).rate == epic_frame_rate(fps[s.video_id]) == 60.0


def test_shard_samples_store_exactly_the_clips_for_both_clocks(tmp_path):
    """A root whose P01_01 is an rgb_frames folder numbered as EPIC numbers it (a 29.97 fps video counted at 60/s)
    and whose P01_02 is a 29.97 fps MP4: each sample's clips follow its own source's clock, and the stored JPEGs
    are those frames."""
    from leap_cli.media.write import Mp4Writer

    fps = 29.97
    root = make_root(tmp_path / "kitchen", fps=fps, epic=True)
    shutil.rmtree(root / "P01" / "rgb_frames" / "P01_02")
    (root / "P01" / "videos").mkdir(parents=True)
    w = Mp4Writer(root / "P01" / "videos" / "P01_02.MP4", W, H, fps, bit_rate=2_000_000)
    for n in range(1, round(6 * fps) + 1):
        img = np.zeros((H, W, 3), np.uint8)
        img[:] = colour("P01_02", n)
        w.write(img)
    w.close()
    span = 24  # 0.4 s of rgb_frames at 60/s, 0.8 s of the MP4 (the root's videos are 6 s long)
    r = build(root, tmp_path, task="anticipation", tau_a=1.0, context=2, span_frames=span)
    assert not r.manifest["skipped"]
    rows = {row["narration_id"]: row for row in csv.DictReader(open(root / "annotations" / "EPIC_100_train.csv"))}
    clocks = {"P01_01": FrameClock(RGB_FRAMES, fps), "P01_02": FrameClock(MP4, fps)}
    seen = set()
    for shard in r.manifest["shards"]:
        for key, fields in iter_tar_samples(r.out / shard["name"]):
            meta = json.loads(fields["json"])
            row = rows[key]
            seg = SimpleNamespace(start=parse_timestamp(row["start_timestamp"]), start_frame=int(row["start_frame"]))
            check_clips(meta, clocks[meta["video"]], seg, 1.0, span)
            seen.add(key)
            if meta["blank"]:  # (in every anticipation sample, clips mode too)
                continue
            stored = [("", meta["clips"][2])] + [(f"c{c}.", meta["clips"][c]) for c in range(2)]
            for prefix, clip in stored:
                assert (f"{prefix}f000.jpg" in fields) == clip["present"]
                for t, frame in enumerate(clip["frame_indices"]):
                    img = cv2.imdecode(np.frombuffer(fields[f"{prefix}f{t:03d}.jpg"], np.uint8), cv2.IMREAD_COLOR)
                    want = np.array(colour(meta["video"], frame))[::-1]  # BGR; R and B encode the frame number
                    assert np.abs(img.astype(int).mean((0, 1)) - want).max() <= 4, (key, prefix, t, frame)
    assert seen == {f"{v}_{i}" for v in ("P01_01", "P01_02") for i in range(sum(1 for x in TRAIN if x[0] == v))}
    metas = {k: json.loads(f["json"]) for s in r.manifest["shards"] for k, f in iter_tar_samples(r.out / s["name"])}
    # P01_01_3 starts at 4.5 s, EPIC's start_frame 270 (which starts at 269/60 s): frames 210..269 are tau_a's 60
    # frames before it, the clips the 72 frames before those
    assert [(c["first_frame"], c["last_frame"]) for c in metas["P01_01_3"]["clips"]] == [(138, 161), (162, 185),
                                                                                         (186, 209)]
    # P01_02_2 starts at 3.8 s of the MP4: the frames starting before 2.8 s at 29.97/s are 1..84
    assert metas["P01_02_2"]["clips"][2]["last_frame"] == 84
    # P01_01_1 starts at 1.6 s (start_frame 96): s_i is frames 12..35; P01_02_1 at 2.2 s: s_i is 13..36 of the
    # MP4, s_{i-1} -11..12 (12 padded), s_{i-2} wholly before the video (masked)
    assert [(c["first_frame"], c["present"]) for c in metas["P01_01_1"]["clips"]] == [(-36, False), (-12, True),
                                                                                      (12, True)]
    assert metas["P01_01_1"]["clips"][1]["padded_frames"] == 13
    assert [(c["first_frame"], c["present"]) for c in metas["P01_02_1"]["clips"]] == [(-35, False), (-11, True),
                                                                                      (13, True)]
    ds = ShardDataset(r.out, train=False, num_frames=2, img_size=16)
    b = collate_clips(list(ds))
    i = b["narration_id"].index("P01_02_1")
    assert b["context_mask"][i].tolist() == [False, True] and b["context_video"][i, 0].abs().sum() == 0
    j = b["narration_id"].index("P01_01_3")
    assert b["context_mask"][j].tolist() == [True, True]


def test_validation_shards_of_another_task_or_fewer_context_clips_are_refused_before_training(tmp_path, caplog):
    """An anticipation run validated on recognition shards (no gap, no context) without a word, and chose best.pt
    on them; validation shards with fewer context clips failed after a whole epoch, before any checkpoint. Shards
    with more context clips than the model takes feed it their latest."""
    from leap_cli.errors import LeapError
    from leap_cli.train.config import load_config
    from leap_cli.train.data import ShardSource
    from leap_cli.train.distributed import DistInfo

    root = make_root(tmp_path / "kitchen")
    train = build(root, tmp_path, task="anticipation", context=2, span_frames=8).out
    rec = build(root, tmp_path / "r").out
    fewer = build(root, tmp_path / "c1", task="anticipation", context=1, span_frames=8).out
    cfg = load_config("tiny-synthetic", ["data.task=anticipation", "model.anticipation_context=2", "model.num_frames=4",
                                         "model.img_size=32", "data.batch_size=2"])
    with pytest.raises(LeapError, match=r"the validation shards are for recognition, the training shards for "
                                        r"anticipation \(build the val shards for anticipation"):
        ShardSource(train, rec, cfg, DistInfo())
    with pytest.raises(LeapError, match=r"the shards hold 1 context clip before each action, the model takes 2 "
                                        r"\(rebuild them with --context 2, or set model.anticipation_context 1\)"):
        ShardSource(train, fewer, cfg, DistInfo())
    with caplog.at_level("WARNING"):
        source = ShardSource(train, train, cfg, DistInfo())
        assert source.val is not None and "observe otherwise" not in caplog.text
        assert source.timing == {"tau_a": 1.0, "context_mode": "clips", "span_frames": 8}  # kept in checkpoints
        # validation shards of another anticipation time chose best.pt without a word
        later = build(root, tmp_path / "t2", task="anticipation", context=2, span_frames=8, tau_a=2.0).out
        ShardSource(train, later, cfg, DistInfo())
    assert ("the validation shards observe otherwise than the training shards (tau_a 2.0 s, clips of 8 source "
            "frames, training: tau_a 1.0 s, clips of 8 source frames)") in caplog.text


def test_segments_shards_of_the_earlier_observed_end_are_warned_of_beside_the_new_rule(tmp_path, caplog):
    """Was wrong: the timing compared between training and validation shards (and kept in checkpoints) left out
    ``settings.observed_end``, so training shards of a leap before the segments context's window-end rule (on
    rgb_frames their observed window ends 1-2 frames later) and validation shards of the new rule, or the other
    way round, were used together without a word; shards with the same rule still meet in silence."""
    import logging

    from leap_cli.shards.dataset import anticipation_timing, same_timing, timing_change
    from leap_cli.train.config import load_config
    from leap_cli.train.data import ShardSource
    from leap_cli.train.distributed import DistInfo

    root = make_root(tmp_path / "kitchen")
    new = build(root, tmp_path / "new", task="anticipation", context=2, context_mode="segments").out
    old = tmp_path / "old"
    shutil.copytree(new, old)
    m = json.loads((old / "manifest.json").read_text())
    del m["settings"]["observed_end"]  # as a leap before 2026-12-06 wrote it
    (old / "manifest.json").write_text(json.dumps(m))
    was, now = anticipation_timing(m), anticipation_timing(json.loads((new / "manifest.json").read_text()))
    assert was["observed_end"] is None and now["observed_end"] and was != now
    assert timing_change(was, now).startswith("another end of the observed window")
    # a run's checkpoint keeps the timing of its training shards: one of today's leap knows their rule (None for the
    # earlier one) and is compared on it; one of a leap that kept no rule is not (its rule is not known)
    assert not same_timing(was, now) and not same_timing(now, was) and same_timing(now, dict(now))
    assert same_timing({k: v for k, v in was.items() if k != "observed_end"}, now)
    cfg = load_config("tiny-synthetic", ["data.task=anticipation", "model.anticipation_context=2", "model.num_frames=4",
                                         "model.img_size=32", "data.batch_size=2"])
    for train, val, warned in ((new, new, False), (old, old, False), (old, new, True), (new, old, True)):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            ShardSource(train, val, cfg, DistInfo())
        assert ("observe otherwise" in caplog.text) == warned, (train.name, val.name, caplog.text)
        if warned:
            assert "measure another end of the observed window (on rgb_frames videos" in caplog.text
            assert "ending tau_a before the timestamp (leap before 2026-12-06" in caplog.text


def test_training_folders_of_two_window_end_rules_are_refused_with_a_command_that_rebuilds_the_older(tmp_path):
    """Was wrong: data.train naming a segments-context folder of the earlier window-end rule beside one of today's
    was refused with "build them with the same build-shards options as the first folder", which no option does;
    the fix is now the command that builds the older folder again (pasted, the two then train together)."""
    import shlex

    from leap_cli.errors import LeapError
    from leap_cli.shards.format import load_folders
    from tests.test_attack_s61_attack62 import pasted

    root = make_root(tmp_path / "kitchen")
    work = tmp_path / "w"
    train = build(root, work, task="anticipation", context=1, context_mode="segments").out
    val = build(root, work, split="val", task="anticipation", context=1, context_mode="segments").out
    m = json.loads((val / "manifest.json").read_text())
    del m["settings"]["observed_end"]  # as a leap before 2026-12-06 wrote it
    (val / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(LeapError) as e:
        load_folders([train, val])
    command = e.value.fix.partition(": ")[2]
    assert e.value.fix.startswith(f"build {val} again with this leap") and command.endswith("--force"), e.value.fix
    assert "--split val --task anticipation" in command and "--anticipation-context segments" in command, command
    code, text = pasted(command, tmp_path)
    assert code == 0, text[-2000:]
    assert load_folders([train, val])[0]["counts"]["samples"] > 0


def test_training_folders_built_with_other_options_are_refused_with_the_command_that_builds_one_like_the_other(
        tmp_path):
    """Was wrong: data.train naming a val folder built with --frames 8 beside train shards of --frames 4 was told to
    "build them with the same build-shards options as the first folder", naming none: the fix is now the command
    that builds the val folder again with the train folder's values of the options that differ (pasted, the two
    then train together)."""
    from leap_cli.errors import LeapError
    from leap_cli.shards.format import load_folders
    from tests.test_attack_s61_attack62 import pasted

    root = make_root(tmp_path / "kitchen")
    work = tmp_path / "w"
    train = build(root, work, context=0).out  # (a recognition build of the command line keeps no context)
    val = build(root, work, split="val", frames=8, context=0).out
    with pytest.raises(LeapError) as e:
        load_folders([train, val])
    assert "(--frames differs)" in str(e.value), str(e.value)
    command = e.value.fix.partition(": ")[2]
    assert e.value.fix.startswith(f"build {val} again with the first folder's options"), e.value.fix
    assert "--split val" in command and "--frames 4" in command and command.endswith("--force"), command
    code, text = pasted(command, tmp_path)
    assert code == 0, text[-2000:]
    assert load_folders([train, val])[0]["counts"]["samples"] > 0


def test_more_context_clips_than_the_model_takes_feed_it_the_latest():
    """Shards built with --context 3 failed every step of a model of 2 ("context_video holds 3 clips"). The clips
    kept are the latest, those closest to the action (the gate is opened: at its zero start no clip shows)."""
    import torch

    from leap_cli.model import build_model
    from tests.test_model import make_batch, tiny_args, unzero_

    torch.manual_seed(0)
    model = build_model(tiny_args(anticipation={"context": 2, "aggregate": True})).eval()
    unzero_(model)
    batch = make_batch(context=3)
    mask = torch.tensor([[True, False, True], [True, True, False]])
    with torch.no_grad():
        three = model(batch["video"], batch["program_steps"], batch["context_video"], mask)
        two = model(batch["video"], batch["program_steps"], batch["context_video"][:, 1:], mask[:, 1:])
        oldest = model(batch["video"], batch["program_steps"], batch["context_video"][:, :2], mask[:, :2])
    assert torch.equal(three["verb"], two["verb"]) and torch.equal(three["noun"], two["noun"])
    assert not torch.allclose(three["verb"], oldest["verb"])  # the context clips reach the action feature
