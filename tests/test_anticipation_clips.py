"""Anticipation as in the paper: three contiguous clips of 256 source frames, the last ending tau_a before the
action, read through the one timing rule (epic.timing); on real EPIC CSV rows and in the shards' samples."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from leap_cli.epic.annotations import Annotations
from leap_cli.epic.timing import anticipation_windows, window_frames
from leap_cli.shards.dataset import ShardDataset, collate_clips
from leap_cli.shards.format import iter_tar_samples
from leap_cli.shards.writer import ShardSettings, plan_samples
from tests.test_shards import FPS, TRAIN, build, colour, make_root

EPIC = Path(__file__).parent / "data" / "epic100"


def check_clips(meta: dict, start: float, fps: float, tau_a: float, span: int, n: int = 3) -> None:
    clips = meta["clips"]
    assert len(clips) == n
    assert clips[-1]["stop"] == pytest.approx(start - tau_a, abs=1e-6)  # the last clip ends tau_a before the action
    for a, b in zip(clips, clips[1:]):
        assert a["stop"] == b["start"] and a["last_frame"] + 1 == b["first_frame"]  # contiguous, no frame shared
    for c in clips:
        assert c["last_frame"] - c["first_frame"] + 1 == span  # span source frames at the video's own fps
        assert (c["start"], c["stop"]) == pytest.approx((c["start"], c["start"] + span / fps), abs=1e-6)
        assert (c["first_frame"], c["last_frame"]) == window_frames(c["start"], c["stop"], fps)
        if c["present"]:
            assert all(max(1, c["first_frame"]) <= i <= c["last_frame"] for i in c["frame_indices"])
    # nothing at or after ts - tau_a is read: the last frame starts before it
    assert (clips[-1]["last_frame"] - 1) / fps < start - tau_a
    assert clips[-1]["last_frame"] / fps >= start - tau_a - 1e-6


def test_windows_on_real_csv_rows_follow_the_timing_rule():
    ann = Annotations(EPIC)
    segs = [s for s in ann.segments("train") if s.video_id in ann.video_info][:12]
    fps = {s.video_id: ann.video_info[s.video_id].fps for s in segs}
    assert any(abs(f - 59.94) < 0.01 for f in fps.values())  # EPIC's 59.94 fps videos
    settings = ShardSettings(split="train", task="anticipation", frames=8)
    _, records, _ = plan_samples(segs, fps.__getitem__, settings)
    checked = 0
    for s in segs:
        rec = records[s.narration_id]
        check_clips(rec, s.start, fps[s.video_id], 1.0, 256)
        windows = anticipation_windows(fps[s.video_id], s.start, 1.0)
        assert [(c["start"], c["stop"]) for c in rec["clips"]] == [(round(a, 6), round(b, 6)) for a, b in windows]
        if rec.get("blank"):
            assert s.start < 1.0 + 1 / fps[s.video_id]
            continue
        assert rec["frame_indices"] == rec["clips"][-1]["frame_indices"] and len(rec["frame_indices"]) == 8
        assert [c["frame_indices"] for c in rec["context"]] == [c["frame_indices"] for c in rec["clips"][:2]]
        checked += 1
    assert checked >= 8
    # P01_01_1 starts at 4.37 s: s_i holds the 256 frames up to 3.37 s, s_{i-1} and s_{i-2} lie before the video
    rec = records["P01_01_1"]
    assert [c["present"] for c in rec["clips"]] == [False, False, True] and rec["clips"][2]["padded_frames"] > 0
    assert [c["present"] for c in rec["context"]] == [False, False]
    # tau_a is configurable
    _, rec2, _ = plan_samples(segs, fps.__getitem__, ShardSettings(split="train", task="anticipation", tau_a=0.5))
    check_clips(rec2["P01_01_10"], 24.97, fps["P01_01"], 0.5, 256)


def test_shard_sample_stores_exactly_the_clips(tmp_path):
    root = make_root(tmp_path / "kitchen")
    span = 8  # 0.8 s at the test root's 10 fps (its videos are 6 s long)
    r = build(root, tmp_path, task="anticipation", tau_a=1.0, context=2, span_frames=span)
    starts = {f"{v}_{i}": s for v in ("P01_01", "P01_02") for i, s in enumerate(x[1] for x in TRAIN if x[0] == v)}
    seen = set()
    for shard in r.manifest["shards"]:
        for key, fields in iter_tar_samples(r.out / shard["name"]):
            meta = json.loads(fields["json"])
            check_clips(meta, starts[key], FPS, 1.0, span)
            seen.add(key)
            if meta.get("blank"):
                continue
            stored = [("", meta["clips"][2])] + [(f"c{c}.", meta["clips"][c]) for c in range(2)]
            for prefix, clip in stored:
                assert (f"{prefix}f000.jpg" in fields) == clip["present"]
                for t, frame in enumerate(clip["frame_indices"]):
                    img = cv2.imdecode(np.frombuffer(fields[f"{prefix}f{t:03d}.jpg"], np.uint8), cv2.IMREAD_COLOR)
                    want = colour(meta["video"], frame)[0]  # red channel encodes the frame number
                    assert abs(int(img[..., 2].mean()) - want) <= 3, (key, prefix, t, frame)
    assert seen == set(starts)
    metas = {k: json.loads(f["json"]) for s in r.manifest["shards"] for k, f in iter_tar_samples(r.out / s["name"])}
    # P01_01_3 starts at 4.5 s: clips [1.1, 1.9), [1.9, 2.7), [2.7, 3.5) -> frames 12-19, 20-27, 28-35
    assert [(c["first_frame"], c["last_frame"]) for c in metas["P01_01_3"]["clips"]] == [(12, 19), (20, 27), (28, 35)]
    # P01_01_1 starts at 1.6 s: only s_i (0.6 s: 6 frames and 2 padded) exists; the other two are masked
    assert [c["present"] for c in metas["P01_01_1"]["clips"]] == [False, False, True]
    assert metas["P01_01_1"]["clips"][2]["padded_frames"] == 2
    ds = ShardDataset(r.out, train=False, num_frames=2, img_size=16)
    b = collate_clips(list(ds))
    i = b["narration_id"].index("P01_01_1")
    assert b["context_mask"][i].tolist() == [False, False] and b["context_video"][i].abs().sum() == 0
    j = b["narration_id"].index("P01_01_3")
    assert b["context_mask"][j].tolist() == [True, True]
