"""Training behaviour a mutation run found no test pinning: the step's learning rate and clipping, validation's
action top-1, which checkpoint is best, when validation runs, config refusals, the data order, and no global RNG
drawn."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from leap_cli.errors import LeapError
from leap_cli.io import read_jsonl
from leap_cli.train import distributed
from leap_cli.train.checkpoint import load_checkpoint
from leap_cli.train.config import load_config
from leap_cli.train.loop import main
from leap_cli.train.optim import CosineWithWarmup
from tests.test_train import MemorySource, V, N, tiny_config, shard_work  # noqa: F401


def test_each_step_applies_the_clipped_gradient_at_its_scheduled_lr(tmp_path: Path, monkeypatch) -> None:
    import leap_cli.train.loop as loop

    seen = []
    real = loop.build_optimizer

    def spy(model, ocfg):
        opt = real(model, ocfg)

        def pre(o, args, kwargs):
            norms = [p.grad.norm() for g in o.param_groups for p in g["params"] if p.grad is not None]
            top = max(o.param_groups, key=lambda g: g["lr_scale"])
            seen.append((float(torch.stack(norms).norm()), top["lr"] / top["lr_scale"]))
        opt.register_step_pre_hook(pre)
        return opt

    monkeypatch.setattr(loop, "build_optimizer", spy)
    cfg = tiny_config("train.max_steps=4", "optim.warmup_steps=2", "optim.grad_clip=0.01", "optim.min_lr_ratio=0")
    main(cfg, workdir=tmp_path, name="r", source=MemorySource(val=False))
    ref = CosineWithWarmup(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), peak_lr=1e-3, total=4,
                           warmup=2, min_lr_ratio=0.0)
    assert [lr for _, lr in seen] == pytest.approx([1e-3 * ref.factor(k) for k in range(4)])
    assert len(seen) == 4 and all(0 < n <= 0.01 * (1 + 1e-4) for n, _ in seen)


def test_validation_action_top1_needs_verb_and_noun_right(monkeypatch) -> None:
    import leap_cli.train.loop as loop

    def fixed(model, batch, cfg):
        B = batch["video"].shape[0]
        verb, noun = torch.zeros(B, V), torch.zeros(B, N)
        verb[:, 0], noun[:, 1] = 5.0, 5.0  # always predicts verb 0, noun 1
        return torch.tensor(1.0), {}, {"verb": verb, "noun": noun}

    monkeypatch.setattr(loop, "forward_loss", fixed)
    batch = {"video": torch.zeros(4, 1), "verb_class": torch.tensor([0, 0, 2, -1]),
             "noun_class": torch.tensor([1, 3, 1, 1])}
    out = loop.evaluate(torch.nn.Linear(1, 1), [batch], tiny_config(), distributed.DistInfo())
    assert out["n"] == 3 and out["seen"] == 4
    assert out["verb_top1"] == pytest.approx(200 / 3) and out["noun_top1"] == pytest.approx(200 / 3)
    assert out["action_top1"] == pytest.approx(100 / 3)


def _scripted_eval(monkeypatch, values):
    import leap_cli.train.loop as loop

    it = iter(values)

    def fake(model, batches, cfg, info, should_stop=None):
        action, verb = next(it)
        return {"n": 3, "seen": 3, "loss": 1.0, "action_top1": action, "verb_top1": verb, "noun_top1": 0.0,
                "verb_top5": 0.0, "noun_top5": 0.0}

    monkeypatch.setattr(loop, "evaluate", fake)


def test_best_pt_is_the_first_best_action_top1_also_across_a_resume(tmp_path: Path, monkeypatch) -> None:
    # epochs of 2 steps: action top-1 10, 30, 30 (a tie), 20; verb top-1 rises all along
    _scripted_eval(monkeypatch, [(10.0, 50.0), (30.0, 10.0), (30.0, 90.0), (20.0, 95.0)])
    cfg = tiny_config("train.max_steps=8")
    source = MemorySource(batches_per_epoch=2)
    main(cfg, workdir=tmp_path, name="r", source=source, stop_at_step=4)
    main(cfg, workdir=tmp_path, name="r", source=source, resume=True)
    best = load_checkpoint(tmp_path / "runs/r/checkpoints/best.pt")
    assert best["best_metric"] == 30.0 and best["step"] == 4 and best["best_key"] == "action_top1"


def test_the_last_epoch_is_validated_whatever_eval_every_epochs(tmp_path: Path) -> None:
    cfg = tiny_config("train.max_steps=6", "train.eval_every_epochs=2")  # 3 epochs of 2 steps
    main(cfg, workdir=tmp_path, name="r", source=MemorySource(batches_per_epoch=2))
    vals = [r["epoch"] for r in read_jsonl(tmp_path / "runs/r/metrics.jsonl") if r["split"] == "val"]
    assert vals == [1, 2]


@pytest.mark.parametrize("override", ["loss.program_loss='false'", "model.compile=1", "train.epochs=2.5",
                                      "data.batch_size=0", "optim.accum_steps=0", "model.num_frames=0",
                                      "optim.eps=0", "loss.condition_pos_weight=0"])
def test_config_values_of_the_wrong_type_or_at_an_open_bound_are_refused(override: str) -> None:
    with pytest.raises(LeapError, match=r"config key '.*': |wrong type"):
        load_config(None, [override])


def test_a_set_value_may_hold_an_equals_sign() -> None:
    cfg = load_config(None, ["model.pretrained=/w/lr=3e-4/last.pt"])
    assert cfg.model.pretrained == "/w/lr=3e-4/last.pt"


def test_the_training_order_follows_train_seed_and_data_shuffle_buffer(shard_work: Path) -> None:
    from leap_cli.train.data import ShardSource

    def order(*sets: str) -> list[str]:
        cfg = load_config(None, ["model.img_size=32", "model.num_frames=4", "data.batch_size=2", *sets])
        src = ShardSource(shard_work / "shards" / "train", None, cfg, distributed.DistInfo())
        plan = src.train.consumer_plan()
        return [src.train.shards[s]["keys"][p] for _, ((s, p), _) in plan]

    base = order("data.shuffle_buffer=8")  # (8 samples: one block of 32, so the buffer is the shuffle)
    assert base != order("data.shuffle_buffer=8", "train.seed=1")
    assert base != order("data.shuffle_buffer=0")


def test_a_signal_in_an_epochs_last_step_does_not_start_validation(tmp_path: Path, monkeypatch) -> None:
    """(single process, evaluate's own stop check hides it; under DDP evaluate has no stop check and the whole
    validation ran before the stop)"""
    import signal

    import leap_cli.train.loop as loop
    from tests.test_train import SignalSource

    calls = []
    monkeypatch.setattr(loop, "evaluate", lambda *a, **k: calls.append(1) or None)
    part = main(tiny_config("train.max_steps=8"), workdir=tmp_path, name="cut",
                source=SignalSource(signal.SIGTERM, 4, batches_per_epoch=4))
    assert part.interrupted == "SIGTERM" and part.steps == 4 and not calls


def test_validation_draws_no_global_rng(tmp_path, shard_work, monkeypatch):  # noqa: F811
    """Validation that drew from torch's, NumPy's or Python's global generator would make a run's training after
    it depend on whether (and how often) it validated, and a resume differ from an unbroken run."""
    import leap_cli.train.loop as loop
    real = loop.evaluate
    changed = []

    def spy(*a, **k):
        before = (torch.get_rng_state().clone(), np.random.get_state()[1].copy(), random.getstate())
        out = real(*a, **k)
        after = (torch.get_rng_state(), np.random.get_state()[1], random.getstate())
        changed.append((not torch.equal(before[0], after[0]), not np.array_equal(before[1], after[1]), before[2] != after[2]))
        return out
    monkeypatch.setattr(loop, "evaluate", spy)
    cfg = load_config(None, ["model.img_size=32", "model.num_frames=4", "data.batch_size=2", "data.eval_batch_size=3",
                             "train.max_steps=4", "data.num_workers=2", f"data.train={shard_work}/shards/train",
                             f"data.val={shard_work}/shards/val", "model.options={decoder_dropout: 0.3, drop_path_rate: 0.2}"])
    loop.main(cfg, workdir=tmp_path, name="r")
    assert changed and not any(any(c) for c in changed)


def test_training_draws_no_global_numpy_or_python_rng(tmp_path, shard_work, monkeypatch):  # noqa: F811
    """The data order and augmentation come from their own seeded generators (the checkpoint keeps torch's state
    only): a draw from NumPy's or Python's global one would not be the same after a resume."""
    import leap_cli.train.loop as loop
    real = loop.train_one_epoch
    changed = []

    def spy(*a, **k):
        before = (np.random.get_state()[1].copy(), random.getstate())
        out = real(*a, **k)
        changed.append((not np.array_equal(before[0], np.random.get_state()[1]), before[1] != random.getstate()))
        return out
    monkeypatch.setattr(loop, "train_one_epoch", spy)
    cfg = load_config(None, ["model.img_size=32", "model.num_frames=4", "data.batch_size=2", "train.max_steps=8",
                             "data.num_workers=2", "data.color_jitter=0.3", f"data.train={shard_work}/shards/train",
                             "data.val=", "model.options={decoder_dropout: 0.3, drop_path_rate: 0.2}"])
    loop.main(cfg, workdir=tmp_path, name="r")
    assert changed and not any(any(c) for c in changed)


def test_accumulation_that_does_not_divide_an_epoch_trains_every_epoch(tmp_path: Path) -> None:
    """5 batches an epoch with accum_steps 2: 2 optimizer steps per epoch (the fifth batch left out); counting 3
    per epoch asked for batches the epoch does not have ("training data ran out")."""
    r = main(tiny_config("train.epochs=2", "optim.accum_steps=2"), workdir=tmp_path, name="r",
             source=MemorySource(batches_per_epoch=5, val=False))
    assert (r.steps, r.epochs) == (4, 2)
