"""Shard reading and planning a mutation run found no test pinning: block order by seed and epoch, rank slices,
per-sample augmentation, unlabelled samples, and the previous segment in time as anticipation context."""
import json
from types import SimpleNamespace

import numpy as np
import pytest

import leap_cli.shards.dataset as dataset_mod
from leap_cli.epic.annotations import Segment
from leap_cli.shards.dataset import ShardDataset
from leap_cli.shards.format import iter_tar_samples
from leap_cli.shards.writer import ShardSettings, plan_samples
from tests.test_shards import built, root  # noqa: F401


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
