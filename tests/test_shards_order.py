"""Shard reading and planning a mutation run found no test pinning: block order by seed and epoch, rank slices,
per-sample augmentation (shared by a sample's context clips), unlabelled samples, the previous segment in time as
anticipation context, and the skips a re-run ends on."""
import json
import shutil
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

import leap_cli.shards.dataset as dataset_mod
from leap_cli.epic.annotations import Segment
from leap_cli.shards.dataset import ShardDataset
from leap_cli.shards.format import iter_tar_samples
from leap_cli.shards.writer import ShardSettings, plan_samples
from tests.test_shards import build, built, epic_root, make_root, root  # noqa: F401


def test_the_block_order_follows_seed_and_epoch(built):
    _, work = built
    out = work / "shards" / "train"

    def order(seed, epoch):
        return ShardDataset(out, train=True, num_frames=2, img_size=16, seed=seed, epoch=epoch, block=1).epoch_order()

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)


@pytest.mark.parametrize("world", [1, 2, 3, 4, 5])
def test_rank_slices_partition_the_epoch_order(world):
    for n in range(0, 14):
        order = list(range(n))
        parts = [ShardDataset.rank_slice(SimpleNamespace(world_size=world, rank=r, pad=False), order)
                 for r in range(world)]
        assert [e for p in parts for e, _ in p] == order
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_each_sample_of_an_epoch_draws_its_own_augmentation(built, monkeypatch):
    _, work = built
    boxes = []
    real = dataset_mod.random_resized_box
    monkeypatch.setattr(dataset_mod, "random_resized_box", lambda *a, **k: boxes.append(real(*a, **k)) or boxes[-1])
    list(ShardDataset(work / "shards" / "train", train=True, num_frames=2, img_size=16, shuffle_buffer=1))
    assert len(boxes) == 7 and len({tuple(np.asarray(b).ravel().tolist()) for b in boxes}) > 1


def test_a_sample_without_labels_has_class_minus_one(built):
    m, work = built
    out = work / "shards" / "train"
    ds = ShardDataset(out, train=False, num_frames=2, img_size=16)
    key, fields = next(iter_tar_samples(out / ds.shards[0]["name"]))
    meta = json.loads(fields["json"])
    meta["verb_class"] = meta["noun_class"] = None  # a test-split segment
    fields["json"] = json.dumps(meta).encode()
    s = ds.make_sample(fields, None)
    assert s["verb_class"] == -1 and s["noun_class"] == -1


def test_segments_context_is_the_previous_segment_in_time_whatever_the_csv_order():
    def seg(i, start):
        return Segment(f"P01_01_{i}", "P01", "P01_01", start, start + 1.0, int(start * 10) + 1, int(start * 10) + 10)

    segs = [seg(0, 5.0), seg(1, 2.0), seg(2, 8.0)]  # CSV order is not time order
    s = ShardSettings(split="train", task="anticipation", frames=2, context=1, context_mode="segments",
                      tau_a=0.5, tau_o=1.0)
    _, records, _ = plan_samples(segs, lambda v: 10.0, s)
    assert records["P01_01_0"]["context"][0]["key"] == "P01_01_1"
    assert records["P01_01_2"]["context"][0]["key"] == "P01_01_0"


def test_a_previous_segment_that_starts_after_the_observed_window_is_no_context():
    """Anticipation must not see the future: at 10 fps with tau_a 1 s, an action at 5.0 s is observed up to frame
    41 (4.0 s); a previous segment starting at 4.15 s (frame 42) is absent, not stored from its first frame."""
    def seg(i, start, stop):
        return Segment(f"P01_01_{i}", "P01", "P01_01", start, stop, int(start * 10) + 1, int(stop * 10))

    segs = [seg(0, 1.0, 3.0), seg(1, 4.15, 6.0), seg(2, 5.0, 7.0)]
    s = ShardSettings(split="train", task="anticipation", frames=2, context=2, context_mode="segments",
                      tau_a=1.0, tau_o=1.0)
    _, records, _ = plan_samples(segs, lambda v: 10.0, s)
    rec = records["P01_01_2"]
    last = 41  # (the frame shown at 4.0 s: EPIC's frame n spans [(n - 1) / fps, n / fps))
    assert rec["observed"]["stop"] == 4.0 and max(rec["frame_indices"]) <= last
    assert [c["present"] for c in rec["context"]] == [True, False]  # (oldest first)
    assert all(f <= last for c in rec["context"] for f in c["frame_indices"])


def test_the_context_clips_of_a_sample_share_its_crop_and_colour_change(epic_root, tmp_path):
    """Training augmentation draws one crop and one colour jitter per sample, applied to its context clips too
    (docs/shards.md): with every frame the same picture, each present context clip equals the current clip."""
    r = build(epic_root, tmp_path, task="anticipation", tau_a=1.0, tau_o=1.0, context=2,
              context_mode="segments")
    ds = ShardDataset(r.out, train=True, num_frames=2, img_size=16, color_jitter=0.4, scale=(0.1, 0.5))
    fields = dict(iter_tar_samples(r.out / ds.shards[0]["name"]))["P01_01_2"]  # both previous segments present
    assert [c["present"] for c in json.loads(fields["json"])["context"]] == [True, True]
    y, x = np.mgrid[0:32, 0:48]
    picture = np.stack([x * 5, y * 7, (x * y) % 256], -1).astype(np.uint8)  # no two crops look alike
    jpeg = cv2.imencode(".jpg", picture)[1].tobytes()
    fields = {k: jpeg if k.endswith(".jpg") else v for k, v in fields.items()}
    crops = set()
    for seed in range(4):
        s = ds.make_sample(fields, np.random.default_rng(seed))
        assert s["context_mask"].tolist() == [True, True]
        for c in range(2):
            assert torch.equal(s["context_video"][c], s["video"])
        crops.add(s["video"].numpy().tobytes())
    assert len(crops) == 4  # (each sample its own)


def test_a_video_still_unreadable_at_the_end_of_a_rerun_keeps_its_skip_record(tmp_path, monkeypatch):
    """The last video's segments, tried again because the video changed and skipped again in a run that writes no
    sample (so no shard to hold their skips), are recorded with the last kept shard: the next run neither reads
    them again nor forgets them, and once the video is readable it writes them."""
    from leap_cli.shards.writer import LayoutOpener

    root = make_root(tmp_path / "k")
    for n in range(46, 59):  # P01_01_3 (4.5-5.8 s): a skip the last shard already holds, kept as it was
        (root / "P01" / "rgb_frames" / "P01_01" / f"frame_{n:010d}.jpg").write_bytes(b"not a jpeg")
    frames = root / "P01" / "rgb_frames" / "P01_02"  # the last video
    frames.rename(tmp_path / "P01_02")
    skips = ["P01_01_3", "P01_02_0", "P01_02_1", "P01_02_2"]
    first = build(root, tmp_path / "w")
    assert first.written_now == 3 and [x["narration_id"] for x in first.manifest["skipped"]] == skips
    frames.mkdir()  # there now, but with no frame in it: tried again, still skipped
    again = build(root, tmp_path / "w")
    assert again.written_now == 0 and [x["narration_id"] for x in again.manifest["skipped"]] == skips
    assert any("3 segments skipped before were tried again" in n for n in again.notes)
    progress = [json.loads(line) for line in (again.out / ".progress.jsonl").read_text().splitlines()]
    assert [x["narration_id"] for x in progress[-1]["skipped"]] == skips
    assert progress[-1]["skipped"][1]["video_stat"] is not None  # (the empty folder's, compared next time)
    opened, real = [], LayoutOpener.__call__
    monkeypatch.setattr(LayoutOpener, "__call__", lambda self, vid: opened.append(vid) or real(self, vid))
    same = build(root, tmp_path / "w")
    assert same.written_now == 0 and not opened and same.manifest["skipped"] == again.manifest["skipped"]
    assert not any("tried again" in n for n in same.notes)
    frames.rmdir()
    shutil.move(tmp_path / "P01_02", frames)
    done = build(root, tmp_path / "w")
    assert done.written_now == 3 and [x["narration_id"] for x in done.manifest["skipped"]] == ["P01_01_3"]
    assert done.manifest["counts"]["samples"] == 6
