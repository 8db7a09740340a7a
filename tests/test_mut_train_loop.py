"""Training-loop behaviour (leap_cli/train/loop.py) that a mutation run found no test pinning: what metrics.jsonl's
train rows say (window averages, the last step, clipped steps, no partial rows), validation's loss and top-5, the
error of training data that runs out, the epoch count of a max_steps run, a resumed run's best.pt, last.pt and
warnings."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from leap_cli.errors import LeapError
from leap_cli.io import read_jsonl
from leap_cli.train import distributed
from leap_cli.train.checkpoint import load_checkpoint, save_checkpoint
from leap_cli.train.loop import main
from tests.test_train import MemorySource, N, V, make_batch, tiny_config

DETERMINISTIC = ("model.options={decoder_dropout: 0.0, drop_path_rate: 0.0, cls_dropout: 0.0, "
                 "decoder_label_forcing: 0.0}")


def _train_rows(run: Path) -> list[dict]:
    return [r for r in read_jsonl(run / "metrics.jsonl") if r["split"] == "train"]


# ------------------------------------------------------------------------------------------ metrics.jsonl
def test_a_train_row_averages_its_log_window_and_partial_steps_stay_out_of_the_file(tmp_path: Path) -> None:
    """log_every=2 writes, at steps 2 and 4, the mean of the two steps' loss and gradient norm (log_every may
    change on --resume: it does not change what is computed); the steps between reach on_step only, as partial."""
    one = main(tiny_config("train.max_steps=4"), workdir=tmp_path, name="one", source=MemorySource(val=False))
    seen: list[dict] = []
    main(tiny_config("train.max_steps=4", "train.log_every=2"), workdir=tmp_path, name="two",
         source=MemorySource(val=False), on_step=seen.append)
    each = _train_rows(one.run_dir)
    assert [r["step"] for r in each] == [1, 2, 3, 4]
    rows = _train_rows(tmp_path / "runs/two")
    assert [r["step"] for r in rows] == [2, 4] and not any("partial" in r for r in rows)
    for row, pair in zip(rows, (each[:2], each[2:])):
        for key in ("loss", "grad_norm"):
            assert row[key] == pytest.approx((pair[0][key] + pair[1][key]) / 2, rel=1e-4), key
    assert [(r["step"], bool(r.get("partial"))) for r in seen] == [(1, True), (2, False), (3, True), (4, False)]
    assert seen[0]["loss"] == pytest.approx(each[0]["loss"], rel=1e-4)


def test_the_runs_last_step_is_logged_whatever_log_every(tmp_path: Path) -> None:
    main(tiny_config("train.max_steps=5", "train.log_every=2"), workdir=tmp_path, name="r",
         source=MemorySource(val=False))
    assert [r["step"] for r in _train_rows(tmp_path / "runs/r")] == [2, 4, 5]


@pytest.mark.parametrize("clip,counts", [("1e-9", [2, 2]), ("0", [0, 0]), ("1e9", [0, 0])])
def test_clipped_steps_counts_the_clipped_steps_of_each_row(tmp_path: Path, clip: str, counts: list) -> None:
    main(tiny_config("train.max_steps=4", "train.log_every=2", f"optim.grad_clip={clip}"), workdir=tmp_path,
         name="r", source=MemorySource(val=False))
    assert [r["clipped_steps"] for r in _train_rows(tmp_path / "runs/r")] == counts


def test_the_logged_loss_of_accumulated_micro_batches_is_their_mean(tmp_path: Path) -> None:
    """Two identical micro-batches (optim.accum_steps=2) log the loss one of them logs alone (summed, the
    train loss in metrics.jsonl and TensorBoard read accum_steps times too high)."""

    class Repeated(MemorySource):
        def train_batches(self, epoch: int, skip: int = 0):
            for _ in range(skip, self.batches_per_epoch):
                yield make_batch(torch.Generator().manual_seed(5), self.batch)

    for name, accum in (("one", 1), ("two", 2)):
        main(tiny_config("train.max_steps=1", f"optim.accum_steps={accum}", DETERMINISTIC), workdir=tmp_path,
             name=name, source=Repeated(batches_per_epoch=2, val=False))
    (one,), (two,) = (_train_rows(tmp_path / "runs" / name) for name in ("one", "two"))
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-4) and one["loss"] > 0


# ------------------------------------------------------------------------------------------ validation
def test_validation_loss_is_per_labelled_sample_and_top5_counts_any_of_five(monkeypatch) -> None:
    import leap_cli.train.loop as loop

    def fixed(model, batch, cfg):
        B = batch["video"].shape[0]
        verb = torch.arange(V, 0, -1).float().repeat(B, 1)       # verbs ranked 0, 1, 2, 3, 4
        noun = torch.arange(N, 0, -1).float().repeat(B, 1)       # nouns ranked 0 .. 6
        return batch["loss"], {}, {"verb": verb, "noun": noun}

    monkeypatch.setattr(loop, "forward_loss", fixed)
    batches = [{"video": torch.zeros(2, 1), "verb_class": torch.tensor([4, -1]), "noun_class": torch.tensor([0, 0]),
                "loss": torch.tensor(1.0)},
               {"video": torch.zeros(3, 1), "verb_class": torch.tensor([0, 1, 2]),
                "noun_class": torch.tensor([4, 5, 6]), "loss": torch.tensor(3.0)}]
    out = loop.evaluate(torch.nn.Linear(1, 1), batches, tiny_config(), distributed.DistInfo())
    assert (out["n"], out["seen"]) == (4, 5)
    assert out["loss"] == pytest.approx((1 * 1.0 + 3 * 3.0) / 4)  # not the mean of the batches' losses (2.0)
    assert out["verb_top1"] == pytest.approx(25.0) and out["verb_top5"] == pytest.approx(100.0)
    assert out["noun_top1"] == pytest.approx(25.0) and out["noun_top5"] == pytest.approx(50.0)


def test_a_validation_that_sees_fewer_samples_than_the_shards_hold_is_said(tmp_path: Path, caplog) -> None:
    class Counted(MemorySource):
        val_size = 9  # MemorySource's validation holds 6

    with caplog.at_level(logging.WARNING):
        main(tiny_config("train.max_steps=4"), workdir=tmp_path, name="r", source=Counted())
    assert "validation saw 6 samples, the val shards hold 9" in caplog.text


# ------------------------------------------------------------------------------------------ the run's length, errors
def test_max_steps_that_do_not_fill_the_last_epoch_still_train_them_all(tmp_path: Path) -> None:
    r = main(tiny_config("train.max_steps=3"), workdir=tmp_path, name="r", source=MemorySource(batches_per_epoch=2))
    assert (r.steps, r.epochs) == (3, 2)
    assert [v["epoch"] for v in read_jsonl(r.run_dir / "metrics.jsonl") if v["split"] == "val"] == [0, 1]


def test_training_data_that_runs_out_names_the_batches_read_and_the_epoch(tmp_path: Path) -> None:
    class Short(MemorySource):  # says 4 batches an epoch, gives 3 (the shards changed under the run)
        def train_batches(self, epoch: int, skip: int = 0):
            yield from list(super().train_batches(epoch, skip))[:3 - skip]

    with pytest.raises(LeapError, match=r"ran out after 3 of 4 batches in epoch 0") as e:
        main(tiny_config("train.max_steps=4", "optim.accum_steps=2"), workdir=tmp_path, name="r",
             source=Short(val=False))
    assert "rebuild them" in e.value.fix


# ------------------------------------------------------------------------------------------ resume
def test_a_resumed_run_that_had_finished_does_not_write_last_pt_again(tmp_path: Path) -> None:
    """(a UniFormerV2-L last.pt with its optimizer is several GB: a requeue of a finished job rewrote it)"""
    main(tiny_config("train.max_steps=2"), workdir=tmp_path, name="r", source=MemorySource(val=False))
    last = tmp_path / "runs/r/checkpoints/last.pt"
    before = last.stat()
    done = main(tiny_config("train.max_steps=2"), workdir=tmp_path, name="r", source=MemorySource(val=False),
                resume=True)
    after = last.stat()
    assert done.steps == 2 and (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_resume_from_a_checkpoint_whose_best_pt_was_chosen_by_another_metric_chooses_it_anew(
        tmp_path: Path, caplog) -> None:
    cfg = tiny_config("train.max_steps=4")
    main(cfg, workdir=tmp_path, name="r", source=MemorySource(batches_per_epoch=2), stop_at_step=2)
    last = tmp_path / "runs/r/checkpoints/last.pt"
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["best_key"] == "action_top1"
    ckpt.update(best_key="action_mt5r", best_metric=1e9)  # a figure action top-1 never reaches
    save_checkpoint(last, ckpt)
    with caplog.at_level(logging.WARNING):
        main(cfg, workdir=tmp_path, name="r", source=MemorySource(batches_per_epoch=2), resume=True)
    assert "best.pt was chosen by action_mt5r; from now on by action_top1" in caplog.text
    best = load_checkpoint(tmp_path / "runs/r/checkpoints/best.pt")
    assert best["step"] == 4 and best["best_metric"] <= 100.0


def _resume_with_edited(tmp_path: Path, caplog, stop: int, **edits) -> str:
    cfg = tiny_config("train.max_steps=4")
    main(cfg, workdir=tmp_path, name="r", source=MemorySource(val=False), stop_at_step=stop)
    last = tmp_path / "runs/r/checkpoints/last.pt"
    ckpt = torch.load(last, weights_only=True)
    for key, value in edits.items():
        ckpt[key].update(value)
    save_checkpoint(last, ckpt)
    with caplog.at_level(logging.WARNING):
        main(cfg, workdir=tmp_path, name="r", source=MemorySource(val=False), resume=True)
    return caplog.text


def test_a_resume_whose_checkpoint_was_compiled_says_it_is_not_bit_for_bit(tmp_path: Path, caplog) -> None:
    text = _resume_with_edited(tmp_path, caplog, 2, numerics={"compile": True})
    assert "resumed with model.compile False (was True)" in text


def test_a_resume_mid_epoch_from_an_older_data_order_is_said(tmp_path: Path, caplog) -> None:
    text = _resume_with_edited(tmp_path, caplog, 1, data_position={"order": 1})
    assert "ordered an epoch's batches otherwise: the rest of epoch 1" in text


def test_a_resume_at_an_epochs_end_from_an_older_data_order_is_not_said(tmp_path: Path, caplog) -> None:
    text = _resume_with_edited(tmp_path, caplog, 4, data_position={"order": 1})  # (4 steps: one whole epoch)
    assert "ordered an epoch's batches otherwise" not in text


def test_a_changed_epoch_count_on_resume_suggests_training_on_from_the_weights(tmp_path: Path) -> None:
    main(tiny_config("train.epochs=1"), workdir=tmp_path, name="r", source=MemorySource(val=False))
    with pytest.raises(LeapError, match=r"train\.epochs: 1 -> 2") as e:
        main(tiny_config("train.epochs=2"), workdir=tmp_path, name="r", source=MemorySource(val=False), resume=True)
    assert "model.pretrained=" in e.value.fix
    with pytest.raises(LeapError, match=r"train\.max_steps") as e:  # the length in steps as well: still longer
        main(tiny_config("train.epochs=2", "train.max_steps=3"), workdir=tmp_path, name="r",
             source=MemorySource(val=False), resume=True)
    assert "model.pretrained=" in e.value.fix
    with pytest.raises(LeapError, match=r"optim\.lr") as e:  # another change as well: a longer run is not all
        main(tiny_config("train.epochs=2", "optim.lr=2e-3"), workdir=tmp_path, name="r",
             source=MemorySource(val=False), resume=True)
    assert "model.pretrained=" not in e.value.fix


def test_validation_of_fewer_than_five_classes_counts_them_all_in_top5(monkeypatch) -> None:
    import leap_cli.train.loop as loop

    def three(model, batch, cfg):
        B = batch["video"].shape[0]
        return torch.tensor(1.0), {}, {"verb": torch.tensor([[3.0, 2.0, 1.0]]).repeat(B, 1),
                                       "noun": torch.tensor([[1.0, 2.0]]).repeat(B, 1)}

    monkeypatch.setattr(loop, "forward_loss", three)
    batch = {"video": torch.zeros(2, 1), "verb_class": torch.tensor([0, 2]), "noun_class": torch.tensor([0, 1])}
    out = loop.evaluate(torch.nn.Linear(1, 1), [batch], tiny_config(), distributed.DistInfo())
    assert out["verb_top1"] == pytest.approx(50.0) and out["verb_top5"] == out["noun_top5"] == pytest.approx(100.0)


def test_a_validation_without_labelled_samples_is_recorded_and_picks_no_best_pt(tmp_path: Path) -> None:
    class Unlabelled(MemorySource):
        def val_batches(self):
            return [{**b, "verb_class": torch.full_like(b["verb_class"], -1),
                     "noun_class": torch.full_like(b["noun_class"], -1)} for b in super().val_batches()]

    r = main(tiny_config("train.max_steps=4"), workdir=tmp_path, name="r", source=Unlabelled())
    assert r.steps == 4 and r.last_eval == {"n": 0, "seen": 6}
    assert [v for v in read_jsonl(r.run_dir / "metrics.jsonl") if v["split"] == "val"] == [
        {"split": "val", "step": 4, "epoch": 0, "n": 0, "seen": 6}]
    assert not (r.run_dir / "checkpoints/best.pt").exists()


def test_an_fp16_runs_loss_scale_resumes_where_it_was(tmp_path: Path) -> None:
    """(fp16's first steps overflow and halve the scale: a resume that started the scaler anew took other steps)"""
    cfg = tiny_config("train.max_steps=3", "train.precision=fp16")
    main(cfg, workdir=tmp_path, name="full", source=MemorySource(val=False))
    main(cfg, workdir=tmp_path, name="split", source=MemorySource(val=False), stop_at_step=1)
    main(cfg, workdir=tmp_path, name="split", source=MemorySource(val=False), resume=True)
    a, b = (torch.load(tmp_path / "runs" / n / "checkpoints/last.pt", weights_only=True) for n in ("full", "split"))
    assert a["scaler"] and a["scaler"] == b["scaler"]
    assert [r["loss"] for r in _train_rows(tmp_path / "runs/full")] == pytest.approx(
        [r["loss"] for r in _train_rows(tmp_path / "runs/split")], rel=1e-5)


def test_each_resume_on_other_programs_keeps_all_the_earlier_ones_oldest_first(tmp_path: Path) -> None:
    from leap_cli.train.loop import record_provenance

    def prov(model: str) -> dict:
        return {"train": {"shards": "s", "programs": {"records": 1, "sha256": f"hash of {model}'s", "made_by": [
            {"backend": "openai", "model": model, "records": 1, "valid": 1}]}}, "val": None}

    record_provenance(tmp_path, prov("a"), resumed=False)
    record_provenance(tmp_path, prov("b"), resumed=True)
    now = record_provenance(tmp_path, prov("c"), resumed=True)
    assert now["train"] == prov("c")["train"]
    assert [e["train"]["programs"]["sha256"] for e in now["earlier"]] == ["hash of a's", "hash of b's"]


def test_anticipation_aggregates_no_program_where_the_run_has_no_program_heads(tmp_path: Path) -> None:
    """model.anticipation_aggregate pools the decoded program: without program heads there is none to pool."""
    from tests.test_train import AnticipationSource

    cfg = tiny_config("train.max_steps=1", "data.task=anticipation", "model.anticipation_context=2",
                      "model.anticipation_aggregate=true", "loss.program_loss=false")
    result = main(cfg, workdir=tmp_path, name="ant", source=AnticipationSource())
    assert result.model_args["anticipation"]["aggregate"] is False and result.model_args["program"] is None


def test_resume_with_force_starts_a_run_with_last_pt_over_under_a_changed_config(tmp_path: Path) -> None:
    """(a requeue that always passes --resume, told --force: the run starts over, its checkpoint is not read)"""
    main(tiny_config("train.max_steps=2"), workdir=tmp_path, name="r", source=MemorySource(val=False))
    starts: list[dict] = []
    again = main(tiny_config("train.max_steps=2", "optim.lr=2e-3"), workdir=tmp_path, name="r",
                 source=MemorySource(val=False), resume=True, force=True, on_start=starts.append)
    assert starts[0]["start_step"] == 0 and again.steps == 2
    assert load_checkpoint(tmp_path / "runs/r/checkpoints/last.pt")["config"]["optim"]["lr"] == 2e-3
