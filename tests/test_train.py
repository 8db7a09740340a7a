"""leap train: config errors, optimizer groups and schedule, checkpoint round trip, exact resume, DDP gradients."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from leap_cli.errors import LeapError
from leap_cli.io import read_jsonl
from leap_cli.resources import bundled_configs
from leap_cli.train import distributed
from leap_cli.train.checkpoint import load_checkpoint, load_model
from leap_cli.train.config import Config, load_config
from leap_cli.train.loop import forward_loss, main, model_args_for, prepare_model, seed_everything, wrap_model
from leap_cli.train.optim import CosineWithWarmup, build_optimizer
from tests.procs import spawn_ranks

torch.set_num_threads(1)

V, N, L, P = 5, 7, 4, 3          # verbs, nouns, program steps, conditions
TARGETS = {"max_steps": L, "step_verbs": [f"v{i}" for i in range(V)], "objects": [f"o{i}" for i in range(N + 1)],
           "conditions": [f"c{i}" for i in range(P)]}


def make_batch(g: torch.Generator, batch: int, frames: int = 4, size: int = 32) -> dict:
    """A batch in the shards reader's collated format (COMMON.md), with a learnable verb/noun signal."""
    verb = torch.randint(0, V, (batch,), generator=g)
    noun = torch.randint(0, N, (batch,), generator=g)
    video = torch.randn(batch, 3, frames, size, size, generator=g) * 0.5
    video[:, 0] += verb[:, None, None, None].float() * 0.3
    steps = torch.full((batch, L, 3), -100, dtype=torch.long)
    steps[:, 0] = torch.stack([verb, noun, torch.full_like(noun, N)], 1)
    steps[:, 1] = torch.tensor([V - 1, N, N])  # END triple
    return {"video": video, "verb_class": verb, "noun_class": noun,
            "has_program": torch.ones(batch, dtype=torch.bool), "program_steps": steps,
            "conditions": (torch.rand(batch, 2 * P, generator=g) > 0.5).float(),
            "narration_id": [f"P01_01_{i}" for i in range(batch)]}


class MemorySource:
    """A DataSource of fixed synthetic batches: the same epoch gives the same batches (like shuffled shards)."""

    num_verbs, num_nouns, program_targets = V, N, TARGETS

    def __init__(self, batches_per_epoch: int = 4, batch: int = 2, val: bool = True):
        self.batches_per_epoch, self.batch, self.val = batches_per_epoch, batch, val

    def train_batches(self, epoch: int, skip: int = 0):
        g = torch.Generator().manual_seed(1000 + epoch)
        for i in range(self.batches_per_epoch):
            b = make_batch(g, self.batch)
            if i >= skip:
                yield b

    def val_batches(self):
        if not self.val:
            return None
        g = torch.Generator().manual_seed(7)
        return [make_batch(g, 3) for _ in range(2)]


def tiny_config(*extra: str) -> Config:
    sets = ["model.img_size=32", "model.num_frames=4", "data.batch_size=2", "train.log_every=1",
            "optim.lr=1e-3", "optim.warmup_steps=2", "optim.grad_clip=1.0", "optim.layer_decay=0.8",
            "loss.label_smoothing=0.1", *extra]
    return load_config(None, sets)


# ---------------------------------------------------------------------------------------------- config
def test_a_section_with_its_keys_commented_out_keeps_the_bases(tmp_path: Path) -> None:
    """`train:` with every key below it commented out replaced the base's train section with the defaults (10
    epochs instead of the base's 60, and its checkpoint and evaluation cadence), without a word."""
    path = tmp_path / "mine.yaml"
    path.write_text("base: tiny-synthetic\ntrain:\n  # epochs: 30\noptim:\n  lr: 0.002\n")
    cfg, base = load_config(path), load_config("tiny-synthetic")
    assert cfg.train == base.train and cfg.optim.lr == 0.002


@pytest.mark.parametrize("text,line,key", [("train:\n  epochs: 1\ntrain:\n  log_every: 3\n", 3, "train"),
                                           ("data: {batch_size: 8, batch_size: 0}\n", 1, "batch_size")])
def test_a_key_given_twice_in_a_config_is_refused(tmp_path: Path, text: str, line: int, key: str) -> None:
    """PyYAML keeps the last of two equal keys: a second train: section dropped the first's epochs unseen."""
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(LeapError, match=f"key '{key}' appears twice in one mapping") as e:
        load_config(path)
    assert e.value.record == f"line {line}" and e.value.fix == "merge the two into one"
    path.write_text("# a config still to write\n")  # (it trained on every default)
    with pytest.raises(LeapError, match="the config file is empty"):
        load_config(path)
    # YAML's merge key is no key given twice: its keys may be overridden, as YAML has it
    path.write_text("base: tiny-synthetic-short\noptim:\n  <<: {lr: 0.002, weight_decay: 0.02}\n"
                    "  weight_decay: 0.01\n")
    cfg = load_config(path)
    assert (cfg.optim.lr, cfg.optim.weight_decay) == (0.002, 0.01)


def test_unknown_config_key_names_key_and_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lr: 1.0e-3\n  learning_rate: 3\n")
    with pytest.raises(LeapError) as e:
        load_config(path)
    assert "optim.learning_rate" in str(e.value) and str(path) in str(e.value)
    path.write_text("optimizer:\n  lr: 1\n")
    with pytest.raises(LeapError, match="unknown config section 'optimizer'"):
        load_config(path)
    with pytest.raises(LeapError, match="train.epoch"):
        load_config(None, ["train.epoch=3"])
    with pytest.raises(LeapError, match="wrong type"):
        load_config(None, ["optim.lr=fast"])


def test_config_mistakes_name_the_file_the_place_and_the_type(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("base: tiny-synthtic\n")  # a typo in the base's name
    with pytest.raises(LeapError) as e:
        load_config(path)
    assert e.value.path == str(path) and e.value.record == "base" and "'tiny-synthtic' not found" in e.value.message
    path.write_text("model:\n  num_frames: 4\n   img_size: 32\n")  # one space too many
    with pytest.raises(LeapError, match="not valid YAML") as e:
        load_config(path)
    assert e.value.path == str(path) and e.value.record == "line 3"
    with pytest.raises(LeapError) as e:
        load_config(None, ["model.num_frames=four"])
    assert "(expected int)" in e.value.message and "<class" not in e.value.message


def test_overrides_and_repo_configs_load() -> None:
    cfg = load_config(None, ["optim.lr=3e-4", "loss.program_loss=false", "optim.betas=[0.9, 0.95]"])
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.loss.program_loss is False and cfg.optim.betas == (0.9, 0.95)
    configs = bundled_configs()
    assert len(configs) >= 3, "bundled configs missing"
    for path in configs:
        load_config(path)  # every shipped config is valid


def test_options_overrides_merge_and_a_section_that_is_not_a_mapping_is_one_line(tmp_path: Path) -> None:
    """--set model.options={drop_path_rate: 0.2} replaced the config's whole options (its decoder settings lost
    without a word), model.options.KEY=VALUE was refused, and `optim: 3` in a file was a TypeError traceback."""
    base = load_config("tiny-synthetic-short").model.options
    assert len(base) >= 2
    key = next(iter(base))
    for override in (f"model.options={{{key}: 7}}", f"model.options.{key}=7"):
        got = load_config("tiny-synthetic-short", [override]).model.options
        assert got == {**base, key: 7}, override
    bad = tmp_path / "bad.yaml"
    for text in ("base: tiny-synthetic-short\noptim: 3\n", "model: [1, 2]\n"):
        bad.write_text(text)
        with pytest.raises(LeapError, match="must be a mapping of keys") as e:
            load_config(bad)
        assert e.value.path == str(bad)
    with pytest.raises(LeapError, match="'optim.lr' has the wrong type"):  # a key of a value that is no mapping
        load_config(None, ["optim.lr.x=1"])


def test_compile_key_is_model_compile_and_train_compile_still_reads(tmp_path: Path) -> None:
    """``model.compile`` (read by `leap train` and `leap evaluate`); ``train.compile``, its old name, in a config
    file or a checkpoint's config, still sets it; the two disagreeing is an error naming both."""
    import yaml

    from leap_cli.train.config import config_from_dict, dump_config

    (tmp_path / "old.yaml").write_text("train: {compile: true, epochs: 2}\n")
    cfg = load_config(tmp_path / "old.yaml")
    assert cfg.model.compile is True and cfg.train.epochs == 2
    dumped = yaml.safe_load(dump_config(cfg))
    assert dumped["model"]["compile"] is True and "compile" not in dumped["train"]
    old = load_config(None).to_dict()
    old["model"].pop("compile")
    old["train"]["compile"] = True
    assert config_from_dict(old).model.compile is True
    assert load_config(None, ["model.compile=true"]).model.compile is True
    assert load_config(None).model.compile is False
    # an override, or a file over its base, wins whichever name each uses
    assert load_config(tmp_path / "old.yaml", ["model.compile=false"]).model.compile is False
    assert load_config(None, ["train.compile=true"]).model.compile is True
    (tmp_path / "child.yaml").write_text("base: old.yaml\nmodel: {compile: false}\n")
    assert load_config(tmp_path / "child.yaml").model.compile is False
    # both names in one file, disagreeing: an error naming both and the file
    (tmp_path / "both.yaml").write_text("train: {compile: true}\nmodel: {compile: false}\n")
    with pytest.raises(LeapError, match="'train.compile' .* and 'model.compile' .* disagree"):
        load_config(tmp_path / "both.yaml")


def test_config_base_and_weight_family_presets(tmp_path: Path) -> None:
    """``base:`` merges key by key (model.options too); the family presets set the official architecture and
    normalisation in model_args (so in every checkpoint)."""
    from leap_cli.train.config import backbone_options

    (tmp_path / "mine.yaml").write_text("base: uniformerv2-b16-k710\nmodel: {options: {drop_path_rate: 0.3}}\n"
                                        "optim: {lr: 1.0e-4}\n")
    cfg = load_config(tmp_path / "mine.yaml")
    base = load_config("uniformerv2-b16-epic")
    assert cfg.model.weights == "k710" and cfg.optim.lr == pytest.approx(1e-4)
    assert cfg.optim.layer_decay == base.optim.layer_decay and cfg.data.num_workers == base.data.num_workers
    assert cfg.model.options == {**base.model.options, "drop_path_rate": 0.3}
    opts = backbone_options(cfg.model)
    assert (opts["no_lmhra"], opts["temporal_downsample"], opts["mean"], opts["std"]) == (True, False, [0.45] * 3,
                                                                                         [0.225] * 3)
    ssv2 = backbone_options(load_config("uniformerv2-l14-ssv2").model)
    assert ssv2["return_list"] == list(range(8, 24)) and ssv2["no_lmhra"] is False
    (tmp_path / "loop.yaml").write_text("base: loop\n")
    with pytest.raises(LeapError, match="loops"):
        load_config(tmp_path / "loop.yaml")
    with pytest.raises(LeapError, match="model.weights"):
        load_config(None, ["model.weights=k999"])


# ---------------------------------------------------------------------------------------------- optimizer
def test_param_groups_layer_decay_and_no_decay() -> None:
    cfg = tiny_config()
    model = __import__("leap_cli.model", fromlist=["build_model"]).build_model(model_args_for(cfg, MemorySource()))
    opt = build_optimizer(model, cfg.optim)
    by_name = {n: g for g in opt.param_groups for n in g["names"]}
    assert len(by_name) == sum(1 for _ in model.parameters())
    blocks = 3  # uniformerv2_tiny
    assert by_name["verb_head.weight"]["lr_scale"] == pytest.approx(1.0)
    assert by_name["backbone.conv1.weight"]["lr_scale"] == pytest.approx(0.8 ** (blocks + 1))
    name = "backbone.transformer.resblocks.1.attn.in_proj_weight"
    if name in by_name:
        assert by_name[name]["lr_scale"] == pytest.approx(0.8 ** 2)
    for n, g in by_name.items():
        no_decay = n.endswith("bias") or "ln_" in n or "embedding" in n or "token" in n
        if no_decay:
            assert g["weight_decay"] == 0.0, n
    assert by_name["verb_head.weight"]["weight_decay"] > 0


def test_cosine_schedule_with_warmup() -> None:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = CosineWithWarmup(opt, peak_lr=1.0, total=10, warmup=2, min_lr_ratio=0.1)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs[0] < lrs[1] < lrs[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


# ---------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_weights_only(tmp_path: Path) -> None:
    cfg = tiny_config("train.max_steps=2")
    result = main(cfg, workdir=tmp_path, name="rt", source=MemorySource())
    run = tmp_path / "runs" / "rt"
    assert (run / "config.yaml").is_file() and (run / "metrics.jsonl").is_file()
    raw = torch.load(run / "checkpoints" / "last.pt", weights_only=True)  # only tensors and primitives
    assert raw["step"] == 2 and raw["config"]["optim"]["lr"] == pytest.approx(1e-3)
    assert set(raw) >= {"model", "model_args", "optimizer", "scheduler", "scaler", "epoch", "best_metric", "rng",
                        "data_position"}
    model, ckpt = load_model(run, which="last")
    for k, v in model.state_dict().items():
        assert torch.equal(v, raw["model"][k]), k
    assert ckpt["model_args"] == result.model_args
    # the normalisation is in every checkpoint, also the builder's default (QA: a tiny run's had none, though
    # docs/model.md said so)
    from leap_cli.model.uniformerv2 import CLIP_MEAN, CLIP_STD

    assert raw["model_args"]["mean"] == list(CLIP_MEAN) and raw["model_args"]["std"] == list(CLIP_STD)
    best, _ = load_model(run / "checkpoints" / "best.pt")
    assert not best.training
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(LeapError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


def test_metrics_lines_are_strict_json(tmp_path: Path) -> None:
    """An fp16 step's infinite gradient norm went into metrics.jsonl as Infinity, which jq refuses (QA)."""
    import json

    from leap_cli.train.loop import _Metrics

    metrics = _Metrics(tmp_path, None)
    metrics.write({"split": "train", "step": 1, "loss": 0.5, "grad_norm": float("inf"), "lr": float("nan")})
    metrics.close()

    def refuse(name):
        raise ValueError(f"{name} in metrics.jsonl")

    (line,) = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(line, parse_constant=refuse) == {"split": "train", "step": 1, "loss": 0.5, "grad_norm": None,
                                                       "lr": None}


def test_resume_is_exact(tmp_path: Path) -> None:
    """6 steps in one run == 3 steps, stop, resume 3 (crossing an epoch boundary with validation)."""
    cfg = tiny_config("train.max_steps=6", "optim.accum_steps=2", "train.checkpoint_every=2",
                      "model.options={decoder_dropout: 0.3, drop_path_rate: 0.2}")
    source = MemorySource(batches_per_epoch=8)  # 4 optimizer steps per epoch
    main(cfg, workdir=tmp_path, name="full", source=source)
    part = main(cfg, workdir=tmp_path, name="split", source=source, stop_at_step=3)
    assert part.steps == 3
    mid = torch.load(tmp_path / "runs/split/checkpoints/last.pt", weights_only=True)
    assert mid["data_position"] == {"epoch": 0, "batches": 6, "world_size": 1, "order": 2, "batches_per_epoch": 8}
    with pytest.raises(LeapError, match="--resume"):
        main(cfg, workdir=tmp_path, name="split", source=source)
    # a checkpoint of a leap that left the default normalisation out of model_args resumes as before
    mid["model_args"] = {k: v for k, v in mid["model_args"].items() if k not in ("mean", "std")}
    torch.save(mid, tmp_path / "runs/split/checkpoints/last.pt")
    resumed = main(cfg, workdir=tmp_path, name="split", source=source, resume=True)
    assert resumed.steps == 6
    a = torch.load(tmp_path / "runs/full/checkpoints/last.pt", weights_only=True)
    b = torch.load(tmp_path / "runs/split/checkpoints/last.pt", weights_only=True)
    for k in a["model"]:
        assert torch.allclose(a["model"][k].float(), b["model"][k].float(), atol=1e-6, rtol=0), k
    assert a["best_metric"] == pytest.approx(b["best_metric"])
    lines_a = (tmp_path / "runs/full/metrics.jsonl").read_text().splitlines()
    lines_b = (tmp_path / "runs/split/metrics.jsonl").read_text().splitlines()
    assert len(lines_a) == len(lines_b)


def test_accumulated_micro_batches_average_their_gradients(tmp_path: Path) -> None:
    """optim.accum_steps=2 over two identical micro-batches takes the step one of them takes alone: each
    micro-batch's loss is divided by accum_steps (summed, the gradient, the logged grad_norm and optim.grad_clip's
    threshold were accum_steps times off)."""

    class Repeated(MemorySource):
        def train_batches(self, epoch: int, skip: int = 0):
            for i in range(skip, self.batches_per_epoch):
                yield make_batch(torch.Generator().manual_seed(5), self.batch)

    deterministic = ("model.options={decoder_dropout: 0.0, drop_path_rate: 0.0, cls_dropout: 0.0, "
                     "decoder_label_forcing: 0.0}")
    source = Repeated(batches_per_epoch=2, val=False)
    for name, accum in (("one", 1), ("two", 2)):
        main(tiny_config("train.max_steps=1", f"optim.accum_steps={accum}", "optim.grad_clip=0", deterministic),
             workdir=tmp_path, name=name, source=source)
    norms = [next(r["grad_norm"] for r in read_jsonl(tmp_path / "runs" / name / "metrics.jsonl") if "grad_norm" in r)
             for name in ("one", "two")]
    assert norms[1] == pytest.approx(norms[0], rel=1e-4) and norms[0] > 0
    a, b = (torch.load(tmp_path / "runs" / name / "checkpoints/last.pt", weights_only=True)["model"]
            for name in ("one", "two"))
    weights = [k for k in a if "running_" not in k and "num_batches_tracked" not in k]  # (BatchNorm's statistics
    assert len(weights) > 100 and all(  # saw two forward passes)
        torch.allclose(a[k].float(), b[k].float(), atol=1e-6, rtol=1e-5) for k in weights)


def test_resume_after_a_kill_between_validation_and_checkpoint_writes_each_row_once(tmp_path: Path) -> None:
    """Killed after an epoch's validation row was written but before the epoch-end last.pt (which still holds
    the position before validation): the resumed run validates that epoch again, and metrics.jsonl held its
    row twice (a plot or a report read two validations of one epoch)."""
    cfg = tiny_config("train.max_steps=8", "train.checkpoint_every=4")
    source = MemorySource(batches_per_epoch=4)  # 4 optimizer steps per epoch: last.pt at step 4, then validation

    def killed(rec: dict) -> None:
        raise SystemExit(137)  # dies right after the row is on disk, as a SIGKILL there would

    main(cfg, workdir=tmp_path, name="full", source=source)
    with pytest.raises(SystemExit):
        main(cfg, workdir=tmp_path, name="split", source=source, on_eval=killed)
    mid = torch.load(tmp_path / "runs/split/checkpoints/last.pt", weights_only=True)
    assert mid["data_position"] == {"epoch": 0, "batches": 4, "world_size": 1, "order": 2, "batches_per_epoch": 4}
    # (the position before validation)
    main(cfg, workdir=tmp_path, name="split", source=source, resume=True)

    def rows(name: str) -> list[tuple]:
        return [(r["split"], r["step"], r["epoch"]) for r in read_jsonl(tmp_path / "runs" / name / "metrics.jsonl")]

    assert rows("split") == rows("full") and rows("full").count(("val", 4, 0)) == 1


def test_no_program_loss_builds_no_program_heads(tmp_path: Path) -> None:
    cfg = tiny_config("train.max_steps=1", "loss.program_loss=false")
    result = main(cfg, workdir=tmp_path, name="base", source=MemorySource(val=False))
    assert result.model_args["program"] is None
    assert not (tmp_path / "runs/base/checkpoints/best.pt").exists()


# ---------------------------------------------------------------------------------------------- DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n.removeprefix("module."): p.grad.detach().clone() for n, p in model.named_parameters()
            if p.grad is not None}


def _ddp_batches() -> list[dict]:
    """Three steps, the second without any program (the program heads sit out its loss), the targets without the
    hand and kind columns (their heads sit out every step): DDP, which searches for no unused parameters, would
    stop at the next step if a head got no gradient."""
    g = torch.Generator().manual_seed(5)
    batches = [make_batch(g, 4) for _ in range(3)]
    batches[1]["has_program"][:] = False
    return batches


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    cfg = tiny_config("model.options={decoder_dropout: 0.0, decoder_label_forcing: 0.0}")
    info = distributed.setup("cpu")
    try:
        from leap_cli.model import build_model

        seed_everything(0)
        args = model_args_for(cfg, MemorySource())
        model = prepare_model(build_model(args), cfg, info)
        ddp = wrap_model(model, cfg, info)
        for batch in _ddp_batches():  # gradients add up over the steps
            half = {k: v[rank * 2:(rank + 1) * 2] for k, v in batch.items()}
            loss, _, _ = forward_loss(ddp, half, cfg)
            loss.backward()
        torch.save(_grads(ddp), out.format(rank=rank))
    finally:
        distributed.cleanup()


def test_ddp_two_processes_match_one_process(tmp_path: Path) -> None:
    out = str(tmp_path / "grads{rank}.pt")
    spawn_ranks(_ddp_worker, (2, _free_port(), out), [out.format(rank=r) for r in range(2)])
    from leap_cli.model import build_model

    cfg = tiny_config("model.options={decoder_dropout: 0.0, decoder_label_forcing: 0.0}")
    seed_everything(0)
    model = build_model(model_args_for(cfg, MemorySource()))
    for batch in _ddp_batches():
        loss, _, _ = forward_loss(model, batch, cfg)
        loss.backward()
    ref = _grads(model)
    for rank in (0, 1):
        got = torch.load(out.format(rank=rank), weights_only=True)
        assert set(got) == set(ref)
        for k in ref:
            assert torch.allclose(got[k], ref[k], atol=1e-5, rtol=1e-4), k


# ---------------------------------------------------------------------------------------------- real shards + CLI
FPS = 10.0
EPIC = Path(__file__).parent / "data" / "epic100"
COLUMNS = ("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,"
           "stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes")
# (verb, verb_class, noun, noun_class): two actions the tiny model can tell apart by colour
ACTIONS = [("take", 0, "plate", 2), ("wash", 2, "cup", 13)]


def _kitchen(root: Path) -> Path:
    """A minimal EPIC-layout root with rgb_frames: each action has its own flat colour."""
    import cv2
    import numpy as np
    from leap_cli.epic.timing import format_timestamp, time_to_frame

    ann = root / "annotations"
    ann.mkdir(parents=True)
    for f in ("EPIC_100_verb_classes.csv", "EPIC_100_noun_classes.csv"):
        (ann / f).write_bytes((EPIC / f).read_bytes())
    rows = {"train": [], "validation": []}
    for split, vid, count in (("train", "P01_01", 8), ("validation", "P01_02", 4)):
        d = root / "P01" / "rgb_frames" / vid
        d.mkdir(parents=True)
        for i in range(count):
            verb, vc, noun, nc = ACTIONS[i % 2]
            start, stop = i * 1.0 + 0.1, i * 1.0 + 0.9
            rows[split].append(f"{vid}_{i},P01,{vid},{format_timestamp(start)},{format_timestamp(start)},"
                               f"{format_timestamp(stop)},{time_to_frame(start, FPS)},{time_to_frame(stop, FPS)},"
                               f"{verb} {noun},{verb},{vc},{noun},{nc},['{noun}'],[{nc}]")
        for n in range(1, count * 10 + 1):
            img = np.zeros((24, 32, 3), np.uint8)
            img[:] = (200, 40, 40) if ((n - 1) // 10) % 2 == 0 else (40, 40, 200)
            cv2.imwrite(str(d / f"frame_{n:010d}.jpg"), img)
    (ann / "EPIC_100_train.csv").write_text("\n".join([COLUMNS] + rows["train"]) + "\n")
    (ann / "EPIC_100_validation.csv").write_text("\n".join([COLUMNS] + rows["validation"]) + "\n")
    (ann / "EPIC_100_video_info.csv").write_text(
        "video_id,duration,fps,resolution\n" + "".join(f"{v},8.0,{FPS},32x24\n" for v in ("P01_01", "P01_02")))
    return root


def _program(verb: str, noun: str) -> dict:
    step = {"type": "sub_action", "verb": verb, "object_a": noun, "object_b": None, "hand": "right", "pre": [],
            "post": [], "purpose": ""}
    cond = {"predicate": "holding", "args": ["right", noun], "negated": False}
    return {"action": {"narration": f"{verb} {noun}", "verb": verb, "noun": noun, "verb_class": None,
                       "noun_class": None}, "pre": [cond], "post": [cond], "steps": [step]}


@pytest.fixture(scope="module")
def shard_work(tmp_path_factory) -> Path:
    import json

    from leap_cli.shards.writer import ShardSettings, build_split

    root = _kitchen(tmp_path_factory.mktemp("kitchen"))
    work = tmp_path_factory.mktemp("work")
    (work / "programs").mkdir()
    # made by two generators (what the shards' manifest and a run's provenance.json count; the shards are the same)
    made = {"backend": "offline", "model": "offline-v5"}, {"backend": "openai", "model": "gpt-4o"}
    recs = [{"narration_id": f"P01_01_{i}", "status": "valid", "program": _program(ACTIONS[i % 2][0], ACTIONS[i % 2][2]),
             "errors": [], "provenance": made[i >= 6]} for i in range(8)]
    (work / "programs" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    for split in ("train", "val"):
        build_split(root, split, workdir=work, settings=ShardSettings(split=split, frames=4, short_side=32))
    return work


def test_cli_train_on_shards_stop_and_resume(shard_work: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from leap_cli.cli import app

    cfg = tmp_path / "mini.yaml"
    cfg.write_text("model: {img_size: 32, num_frames: 4, options: {decoder_dim: 32}}\n"
                   "data: {batch_size: 4, eval_batch_size: 4}\n"
                   "train: {epochs: 2, log_every: 1}\n")
    args = ["train", "--config", str(cfg), "--workdir", str(shard_work), "--set", "optim.lr=1e-3"]
    r = CliRunner().invoke(app, args + ["--stop-after", "1"])
    assert r.exit_code == 0, r.output
    # a pause said as such (the summary gave the steps made, no "of 4", no word of --resume)
    assert ("paused at step 1 of 4 (--stop-after): continue with the same command with --resume, and a --stop-after "
            "past 1 or none") in " ".join(r.output.split())
    run = shard_work / "runs" / "mini"
    assert torch.load(run / "checkpoints/last.pt", weights_only=True)["step"] == 1
    r = CliRunner().invoke(app, args + ["--resume", "--stop-after", "1"])  # counts from the run's start
    assert "the run is at step 1 already" in " ".join(r.output.split()) and r.exit_code == 0, r.output
    r = CliRunner().invoke(app, args + ["--resume"])
    assert r.exit_code == 0, r.output
    last = torch.load(run / "checkpoints/last.pt", weights_only=True)
    assert last["step"] == 4 and last["model_args"]["program"]["max_steps"] >= 2
    assert last["model_args"]["num_verbs"] == 97 and last["model_args"]["num_nouns"] == 300
    assert (run / "checkpoints/best.pt").is_file()
    vals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"val"' in x]
    assert [v["epoch"] for v in vals] == [0, 1] and all(v["n"] == 4 for v in vals)
    r = CliRunner().invoke(app, ["train", "--config", str(cfg), "--workdir", str(shard_work), "--set", "optim.lrr=1"])
    assert r.exit_code != 0 and "optim.lrr" in str(r.exception or r.output)


def test_a_run_keeps_what_made_its_programs_and_its_evaluation_says_it(shard_work: Path, tmp_path: Path) -> None:
    """A run trained on offline programs and one trained on gpt-4o's could not be told apart from their run
    directories. runs/NAME/provenance.json (and the checkpoints) say which shards and what made their programs,
    `leap train` and `leap show --run` say it in a line, and evaluate's metrics.json carries it in meta."""
    from typer.testing import CliRunner

    from leap_cli.cli import app

    cfg = tmp_path / "prov.yaml"
    cfg.write_text("model: {img_size: 32, num_frames: 4, options: {decoder_dim: 32}}\n"
                   "data: {batch_size: 4, eval_batch_size: 4}\ntrain: {epochs: 1, max_steps: 1, threads: 1}\n")
    r = CliRunner().invoke(app, ["train", "--config", str(cfg), "--workdir", str(shard_work), "--name", "prov"])
    assert r.exit_code == 0, r.output
    said = "trained on programs: offline offline-v5: 6 valid of 6; openai gpt-4o: 2 valid of 2"
    assert said in " ".join(r.output.split())
    assert "(validation: none (the shards were built without a program file))" in " ".join(r.output.split())
    run = shard_work / "runs" / "prov"
    prov = json.loads((run / "provenance.json").read_text())
    train = json.loads((shard_work / "shards" / "train" / "manifest.json").read_text())
    assert prov["train"]["shards"] == str(shard_work / "shards" / "train")
    assert prov["train"]["programs"] == {
        "records": 8, "valid": 8, "with_program": 8, "prompt_version": None, "sha256": train["sources"]["programs"],
        "made_by": [{"backend": "offline", "model": "offline-v5", "records": 6, "valid": 6},
                    {"backend": "openai", "model": "gpt-4o", "records": 2, "valid": 2}]}
    assert prov["val"]["shards"] == str(shard_work / "shards" / "val") and prov["val"]["programs"]["made_by"] == []
    assert load_checkpoint(run / "checkpoints" / "last.pt")["provenance"] == prov
    r = CliRunner().invoke(app, ["show", "P01_01_0", "--workdir", str(shard_work), "--split", "train", "--run",
                                 str(run)], env={"COLUMNS": "300"})
    assert r.exit_code == 0, r.output
    assert said in " ".join(r.output.split())
    root = _kitchen(tmp_path / "kitchen")  # (the fixture's annotations, made again: evaluate scores against them)
    r = CliRunner().invoke(app, ["evaluate", "--split", "val", "--run", str(run), "--data", str(root),
                                 "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert json.loads((run / "eval" / "val" / "metrics.json").read_text())["meta"]["provenance"] == prov


def test_shards_of_an_earlier_leap_without_the_programs_provenance_still_train(shard_work: Path, tmp_path: Path) -> None:
    """A manifest written before it said what made its programs trains as before; the run says "unknown"."""
    import shutil

    from leap_cli.programs.provenance import read_run_provenance, run_programs_text

    shards = tmp_path / "shards"
    shutil.copytree(shard_work / "shards" / "train", shards)
    m = json.loads((shards / "manifest.json").read_text())
    for key in ("made_by", "prompt_version"):
        m["programs"].pop(key, None)
    (shards / "manifest.json").write_text(json.dumps(m))
    result = main(tiny_config(f"data.train={shards}", "data.val=", "train.max_steps=1",
                              "model.options={decoder_dim: 32}"), workdir=tmp_path, name="old")
    assert result.steps == 1 and result.model_args["program"] is not None
    prov = read_run_provenance(tmp_path / "runs" / "old")
    assert prov["train"]["programs"]["made_by"] is None and prov["train"]["programs"]["valid"] == 8
    assert prov["val"] is None
    assert "made by unknown" in run_programs_text(prov)
    assert run_programs_text(None).startswith("unknown")  # a run of an earlier leap: no provenance.json


def test_a_resume_on_shards_of_other_programs_is_said_and_the_run_keeps_both(tmp_path: Path, caplog) -> None:
    from leap_cli.train.loop import record_provenance

    def prov(model: str, made_by: bool = True, val=None) -> dict:
        return {"train": {"shards": "s", "programs": {"records": 1, "sha256": f"hash of {model}'s", "made_by": [
            {"backend": "openai", "model": model, "records": 1, "valid": 1}] if made_by else None}}, "val": val}

    assert record_provenance(tmp_path, prov("gpt-4o", made_by=False), resumed=False) == prov("gpt-4o", made_by=False)
    # the same programs described more fully (shards of an earlier leap built again, as its note advises), other
    # validation shards, the shards moved: written as they are now, nothing said
    assert record_provenance(tmp_path, prov("gpt-4o"), resumed=True) == prov("gpt-4o")
    assert record_provenance(tmp_path, prov("gpt-4o", val={"shards": "v", "programs": None}), resumed=True)["val"]
    assert record_provenance(tmp_path, {**prov("gpt-4o"), "train": {**prov("gpt-4o")["train"], "shards": "moved"}},
                             resumed=True)["train"]["shards"] == "moved"
    assert "not those the run was trained on" not in caplog.text
    with caplog.at_level(logging.WARNING):
        now = record_provenance(tmp_path, prov("gpt-4o-mini"), resumed=True)
    assert "not those the run was trained on so far" in caplog.text and "openai gpt-4o: 1 valid of 1" in caplog.text
    assert now["earlier"][0]["train"]["programs"] == prov("gpt-4o")["train"]["programs"]
    from leap_cli.programs.provenance import run_programs_text  # (the line train and show print says both)

    assert run_programs_text(now).endswith("; before a resume on other programs: openai gpt-4o: 1 valid of 1"), \
        run_programs_text(now)
    assert json.loads((tmp_path / "provenance.json").read_text()) == now
    assert record_provenance(tmp_path, prov("gpt-4o-mini"), resumed=True) == now  # (kept on the next resume)
    assert record_provenance(tmp_path, prov("x"), resumed=False) == prov("x")  # a run started over: anew


def test_a_resume_without_provenance_json_takes_the_checkpoints_copy_or_says_the_steps_before_are_unknown(
        tmp_path: Path, caplog) -> None:
    """A checkpoint of a leap before runs kept provenance.json (none beside it, none in it): the file was started at
    the resume as if the whole run had trained on the shards of now. The file deleted: the checkpoint's copy."""
    from leap_cli.programs.provenance import run_programs_text
    from leap_cli.train.loop import record_provenance

    def prov(model: str) -> dict:
        return {"train": {"shards": "s", "programs": {"records": 1, "sha256": f"hash of {model}'s", "made_by": [
            {"backend": "openai", "model": model, "records": 1, "valid": 1}]}}, "val": None}

    old_run, lost, fresh = tmp_path / "old", tmp_path / "lost", tmp_path / "fresh"
    for d in (old_run, lost, fresh):
        d.mkdir()
    with caplog.at_level(logging.WARNING):
        now = record_provenance(old_run, prov("gpt-4o"), resumed=True, checkpoint={"step": 25})
    assert "resumed at step 25 from a checkpoint of a leap before runs kept provenance.json" in caplog.text
    assert now["earlier"] == [{"unknown": "steps 1-25, trained before runs kept provenance.json"}]
    assert run_programs_text(now).endswith("; before a resume: unknown (steps 1-25, trained before runs kept "
                                           "provenance.json)"), run_programs_text(now)
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # the next resume keeps it, and says nothing more
        again = record_provenance(old_run, prov("gpt-4o"), resumed=True, checkpoint={"step": 50, "provenance": now})
    assert again == now and not caplog.text
    # the file deleted: the checkpoint's copy is what the run was trained on so far
    with caplog.at_level(logging.WARNING):
        now = record_provenance(lost, prov("gpt-4o-mini"), resumed=True,
                                checkpoint={"step": 40, "provenance": prov("gpt-4o")})
    assert "not those the run was trained on so far" in caplog.text
    assert now["earlier"] == [prov("gpt-4o")]
    # --resume of a run that had saved nothing: nothing before it
    assert record_provenance(fresh, prov("gpt-4o"), resumed=True, checkpoint=None) == prov("gpt-4o")


def test_a_model_section_that_does_not_build_names_the_file_and_the_section(shard_work: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from leap_cli.cli import app

    cfg = tmp_path / "odd.yaml"
    cfg.write_text("model: {img_size: 32, num_frames: 3}\ndata: {batch_size: 4}\ntrain: {epochs: 1}\n")
    for extra, says in (([], "num_frames 3 must be even"),
                        (["--set", "model.num_frames=4", "--set", "model.options={bogus: 1}"], "bogus")):
        r = CliRunner().invoke(app, ["train", "--config", str(cfg), "--workdir", str(shard_work), *extra])
        e = r.exception
        assert isinstance(e, LeapError) and e.path == str(cfg) and e.record == "model", (extra, e)
        assert says in e.message and e.fix
    assert not (shard_work / "runs" / "odd" / "checkpoints" / "last.pt").exists()


def test_shards_without_programs_train_without_program_heads(shard_work: Path, tmp_path: Path) -> None:
    """Shards with no valid program (no generate-programs run): L_CE only, and no program head is built that
    nothing would train (it used to build zero-sized condition heads)."""
    from leap_cli.shards.writer import ShardSettings, build_split

    root = _kitchen(tmp_path / "kitchen")
    build_split(root, "train", workdir=tmp_path, settings=ShardSettings(split="train", frames=4, short_side=32))
    cfg = tiny_config(f"data.train={tmp_path / 'shards' / 'train'}", "train.max_steps=1")
    result = main(cfg, workdir=tmp_path, name="noprog")
    assert result.model_args["program"] is None
    # the same config on shards with programs builds the heads
    cfg = tiny_config(f"data.train={shard_work / 'shards' / 'train'}", "train.max_steps=1",
                      "model.options={decoder_dim: 32}")
    assert main(cfg, workdir=tmp_path, name="prog").model_args["program"] is not None


def test_resume_on_real_shards_is_exact_with_num_workers_0(shard_work: Path) -> None:
    """The shards reader in the main process (data.num_workers 0, the default): 12 steps in one run give the same
    weights as 5 steps, stop (mid-epoch 1), resume. The epoch order used to depend on how often the dataset had
    been iterated in this process (an uninterrupted run shuffled epoch e as 2e, a resumed one as e)."""
    cfg = load_config(None, ["model.img_size=32", "model.num_frames=4", "data.batch_size=2", "data.eval_batch_size=4",
                             "data.num_workers=0", "data.color_jitter=0.2", "data.shuffle_buffer=4", "train.epochs=3",
                             "train.log_every=1", "optim.lr=1e-3", "optim.warmup_steps=2",
                             "model.options={decoder_dim: 32, drop_path_rate: 0.2}"])
    full = main(cfg, workdir=shard_work, name="exact-full")
    assert full.steps == 12
    assert main(cfg, workdir=shard_work, name="exact-split", stop_at_step=5).steps == 5
    assert main(cfg, workdir=shard_work, name="exact-split", resume=True).steps == 12
    a = torch.load(shard_work / "runs/exact-full/checkpoints/last.pt", weights_only=True)
    b = torch.load(shard_work / "runs/exact-split/checkpoints/last.pt", weights_only=True)
    for k in a["model"]:
        assert torch.allclose(a["model"][k].float(), b["model"][k].float(), atol=1e-6, rtol=0), k


@pytest.mark.parametrize("workers", [2, 3])
def test_an_epochs_batches_do_not_depend_on_num_workers(shard_work: Path, workers: int) -> None:
    """Batches are formed before they are handed to the DataLoader workers: the steps per epoch, the order and
    the augmentation are those of num_workers 0 (so num_workers may change on --resume). Each worker used to
    batch its own slice and drop its own last partial batch (8 clips, batch 2, 3 workers: 3 batches, not 4)."""
    from leap_cli.train.data import ShardSource

    def epoch(num_workers: int) -> tuple[int, list[dict], list[list[str]]]:
        cfg = load_config(None, ["model.img_size=32", "model.num_frames=4", "data.batch_size=2",
                                 "data.eval_batch_size=3", "data.shuffle_buffer=4", "data.color_jitter=0.2",
                                 f"data.num_workers={num_workers}"])
        source = ShardSource(shard_work / "shards" / "train", shard_work / "shards" / "val", cfg,
                             distributed.DistInfo())
        val = [b["narration_id"] for b in source.val_batches()]
        assert not list(source.train_batches(2, source.batches_per_epoch))  # resumed at its end (a signal there)
        return source.batches_per_epoch, list(source.train_batches(1)), val

    n0, want, val0 = epoch(0)
    n, got, val = epoch(workers)
    assert n == n0 == len(want) == len(got) == 4
    for a, b in zip(want, got):
        assert a["narration_id"] == b["narration_id"] and torch.equal(a["video"], b["video"])
    # validation too (its loss is a mean over batches: the workers' contiguous slices gave it other batches)
    assert val == val0 and len(val0) > 1


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_epoch_does_not_read_the_batches_it_had_seen(shard_work: Path, workers: int) -> None:
    """A resume mid-epoch starts at the batch where the run stopped: the same batches as the rest of the full
    epoch, and the batches before it are neither read nor decoded (they used to be read, decoded and dropped:
    up to an epoch of EPIC's shards re-read after a crash)."""
    from leap_cli.train.data import ShardSource

    cfg = load_config(None, ["model.img_size=32", "model.num_frames=4", "data.batch_size=2", "data.shuffle_buffer=4",
                             "data.color_jitter=0.2", f"data.num_workers={workers}"])
    full = list(ShardSource(shard_work / "shards" / "train", None, cfg, distributed.DistInfo()).train_batches(1))
    source = ShardSource(shard_work / "shards" / "train", None, cfg, distributed.DistInfo())
    made = []
    real = source.train.make_sample
    source.train.make_sample = lambda fields, rng: made.append(1) or real(fields, rng)  # seen in this process only
    rest = list(source.train_batches(1, skip=3))
    assert len(full) == 4 and len(rest) == 1
    assert rest[0]["narration_id"] == full[3]["narration_id"] and torch.equal(rest[0]["video"], full[3]["video"])
    if workers == 0:
        assert len(made) == 2  # one batch of 2 samples decoded, not 4 batches
    # the next epoch starts from its first batch again
    assert [b["narration_id"] for b in source.train_batches(2)] == [
        b["narration_id"] for b in ShardSource(shard_work / "shards" / "train", None, cfg,
                                               distributed.DistInfo()).train_batches(2)]


def test_torchrun_two_cpu_processes_train_and_only_rank0_writes(shard_work: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    cfg = tmp_path / "ddp.yaml"
    cfg.write_text("model: {img_size: 32, num_frames: 4, options: {decoder_dim: 32}}\n"
                   "data: {batch_size: 2, eval_batch_size: 4}\noptim: {accum_steps: 2}\n"
                   "train: {epochs: 1, log_every: 1, threads: 1}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "leap_cli", "train", "--config", str(cfg), "--workdir", str(shard_work), "--name", "ddp"]
    r = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("optimizer steps") == 1  # one summary: rank 0's
    ckpt = torch.load(shard_work / "runs/ddp/checkpoints/last.pt", weights_only=True)
    assert ckpt["step"] == 1  # 8 samples / (2 processes x batch 2 x 2 accumulated micro-batches)
    assert not any("CPUSyncBatchNorm" in k for k in ckpt["model"])
    vals = [json.loads(x) for x in (shard_work / "runs/ddp/metrics.jsonl").read_text().splitlines() if '"val"' in x]
    assert len(vals) == 1 and vals[0]["n"] == 4  # every val sample counted once over both ranks


def test_pretrained_backbone_is_loaded_before_training(tmp_path: Path) -> None:
    """model.pretrained: a local file in the official UniFormerV2 key layout initialises the backbone."""
    from leap_cli.model import build_model

    # the official layout with local blocks and temporal downsampling is the SSv2 family (Kinetics normalisation)
    cfg = tiny_config("train.max_steps=1", "optim.lr=0.0", "optim.weight_decay=0.0", "model.weights=ssv2")
    torch.manual_seed(123)
    donor = build_model(model_args_for(cfg, MemorySource()))
    weights = {k: v for k, v in donor.state_dict().items() if k.startswith("backbone.")}
    torch.save(weights, tmp_path / "uniformerv2_tiny.pth")
    with pytest.raises(LeapError, match="ssv2 family.*uniformerv2-\\*-ssv2 preset"):
        main(tiny_config(f"model.pretrained={tmp_path / 'uniformerv2_tiny.pth'}"), workdir=tmp_path, name="wrong",
             source=MemorySource(val=False))
    cfg = tiny_config("train.max_steps=1", "optim.lr=0.0", "optim.weight_decay=0.0", "model.weights=ssv2",
                      f"model.pretrained={tmp_path / 'uniformerv2_tiny.pth'}")
    starts = []
    main(cfg, workdir=tmp_path, name="pre", source=MemorySource(val=False), on_start=starts.append)
    # the start says what the load did (it was said only under -v)
    assert starts[0]["pretrained"].startswith(f"{tmp_path / 'uniformerv2_tiny.pth'} (uniformerv2): ")
    assert starts[0]["pretrained"].endswith(", 0 missing, 0 unexpected") and " 0 loaded" not in starts[0]["pretrained"]
    got = torch.load(tmp_path / "runs/pre/checkpoints/last.pt", weights_only=True)["model"]
    params = [k for k, v in weights.items() if v.is_floating_point() and "running" not in k]
    assert params and all(torch.equal(got[k], weights[k]) for k in params)


def test_resume_refuses_a_changed_config_unless_forced(tmp_path: Path) -> None:
    cfg = tiny_config("train.max_steps=2")
    main(cfg, workdir=tmp_path, name="r", source=MemorySource(val=False), stop_at_step=1)
    changed = tiny_config("train.max_steps=2", "loss.label_smoothing=0.0", "train.threads=1")
    with pytest.raises(LeapError, match=r"loss\.label_smoothing: 0\.1 -> 0\.0\); resuming") as e:
        main(changed, workdir=tmp_path, name="r", source=MemorySource(val=False), resume=True)
    assert "threads" not in str(e.value) and "--force" in str(e.value)
    assert torch.load(tmp_path / "runs/r/checkpoints/last.pt", weights_only=True)["step"] == 1  # untouched
    # a key that only changes how the run goes may change, in a checkpoint whose config names compile by its old
    # name (train.compile, before it moved to model.compile) too
    from leap_cli.train.checkpoint import save_checkpoint

    old = torch.load(tmp_path / "runs/r/checkpoints/last.pt", weights_only=True)
    old["config"]["train"]["compile"] = old["config"]["model"].pop("compile")
    save_checkpoint(tmp_path / "runs/r/checkpoints/last.pt", old)
    ok = main(tiny_config("train.max_steps=2", "train.threads=1"), workdir=tmp_path, name="r",
              source=MemorySource(val=False), resume=True)
    assert ok.steps == 2
    fresh = main(changed, workdir=tmp_path, name="r", source=MemorySource(val=False), force=True)
    assert fresh.steps == 2
    ckpt = torch.load(tmp_path / "runs/r/checkpoints/last.pt", weights_only=True)
    assert ckpt["config"]["loss"]["label_smoothing"] == 0.0


def test_the_resume_hint_is_a_command_that_resumes_the_run(tmp_path: Path) -> None:
    """The hint was "resume with the run's config.yaml": --config runs/r/config.yaml alone resumed a run named
    `config` (the file's stem)."""
    main(tiny_config("train.max_steps=2"), workdir=tmp_path, name="r", source=MemorySource(val=False), stop_at_step=1)
    with pytest.raises(LeapError) as e:
        main(tiny_config("train.max_steps=3"), workdir=tmp_path, name="r", source=MemorySource(val=False), resume=True)
    config, workdir, name = re.search(r"--config (\S+) --workdir (\S+) --name (\S+) --resume", e.value.fix).groups()
    assert Path(config) == tmp_path / "runs/r/config.yaml" and Path(workdir) == tmp_path and name == "r"
    assert main(load_config(config), workdir=workdir, name=name, source=MemorySource(val=False), resume=True).steps == 2
    # a longer run asked of it: the refusal also says how to train on from its weights, and that way works
    last = tmp_path / "runs/r/checkpoints/last.pt"
    with pytest.raises(LeapError) as e:
        main(tiny_config("train.max_steps=3"), workdir=tmp_path, name="r", source=MemorySource(val=False), resume=True)
    assert f"start a run of another --name with --set model.pretrained={last}" in e.value.fix, e.value.fix
    on = main(tiny_config("train.max_steps=1", f"model.pretrained={last}"), workdir=tmp_path, name="r2",
              source=MemorySource(val=False))
    assert on.steps == 1
    with pytest.raises(LeapError) as e:  # another change than the length: no such advice
        main(tiny_config("train.max_steps=2", "loss.label_smoothing=0.2"), workdir=tmp_path, name="r",
             source=MemorySource(val=False), resume=True)
    assert "model.pretrained" not in e.value.fix and "--force" in e.value.fix


def test_a_start_or_resume_that_is_refused_leaves_no_run_folder(tmp_path: Path) -> None:
    for resume in (False, True):
        with pytest.raises(LeapError, match="no shards manifest") as e:  # a start on a work dir without shards
            main(tiny_config("train.max_steps=1"), workdir=tmp_path, name="new", resume=resume)
        assert not (tmp_path / "runs").exists()
        # a --resume that found no run says so too (a mistyped --workdir was told to build shards there)
        assert ("--resume found no run 'new' in" in e.value.fix) == resume, e.value.fix
        assert ("--resume found no run" in str(e.value)) == resume


def test_resume_of_a_run_stopped_before_its_folder_was_made_starts_it(tmp_path: Path, caplog) -> None:
    """A job killed in its first seconds (torch imported, the config, weights and shards checked) leaves no
    runs/NAME/, and its requeue's --resume was refused at every requeue ("no checkpoint to resume"), though the
    README says a requeue script may always pass --resume: it starts from step 0, saying so with the runs there
    (in case --name is not the run's)."""
    main(tiny_config("train.max_steps=1"), workdir=tmp_path, name="other", source=MemorySource(val=False))
    starts: list[dict] = []
    res = main(tiny_config("train.max_steps=2"), workdir=tmp_path, name="new", source=MemorySource(val=False),
               resume=True, on_start=starts.append)
    assert res.steps == 2 and starts[0]["start_step"] == 0 and (tmp_path / "runs/new/checkpoints/last.pt").exists()
    assert "no run 'new' to resume" in caplog.text and "starting it from step 0" in caplog.text
    assert "runs with a checkpoint there: other" in caplog.text


def test_resume_of_a_run_stopped_before_its_first_checkpoint_starts_it(tmp_path: Path, caplog) -> None:
    """A preemption in a run's first checkpoint_every steps left runs/NAME/ without last.pt, and the requeue's
    `--resume` (README: after a preemption, the same command with --resume) was refused: the job never ran."""
    (tmp_path / "runs" / "r" / "checkpoints").mkdir(parents=True)  # what a SIGKILL before the first save leaves
    (tmp_path / "runs" / "r" / "metrics.jsonl").write_text('{"split": "train", "step": 10, "loss": 3.2}\n')
    starts: list[dict] = []
    res = main(tiny_config("train.max_steps=2"), workdir=tmp_path, name="r", source=MemorySource(val=False),
               resume=True, on_start=starts.append)
    assert res.steps == 2 and starts[0]["start_step"] == 0
    assert "holds no checkpoint yet" in caplog.text and (tmp_path / "runs/r/checkpoints/last.pt").exists()
    assert '"loss": 3.2' not in (tmp_path / "runs/r/metrics.jsonl").read_text()  # the killed start's lines go


def test_resume_of_a_finished_run_without_last_pt_is_refused(tmp_path: Path) -> None:
    """A finished run whose last.pt was deleted (to save space) kept best.pt and metrics.jsonl: --resume retrained
    it from step 0, even under another config, replacing both."""
    main(tiny_config("train.max_steps=2"), workdir=tmp_path, name="r", source=MemorySource(val=True))
    (tmp_path / "runs/r/checkpoints/last.pt").unlink()
    best = (tmp_path / "runs/r/checkpoints/best.pt").read_bytes()
    with pytest.raises(LeapError, match=r"no checkpoints/last.pt to resume, but holds best.pt") as e:
        main(tiny_config("train.max_steps=2", "train.seed=7"), workdir=tmp_path, name="r",
             source=MemorySource(val=True), resume=True)
    assert "--force" in e.value.fix
    with pytest.raises(LeapError, match="already holds a checkpoint"):  # nor does a plain start replace it
        main(tiny_config("train.max_steps=2", "train.seed=7"), workdir=tmp_path, name="r", source=MemorySource(val=True))
    assert (tmp_path / "runs/r/checkpoints/best.pt").read_bytes() == best
    res = main(tiny_config("train.max_steps=2", "train.seed=7"), workdir=tmp_path, name="r",
               source=MemorySource(val=True), resume=True, force=True)  # --resume --force: over
    assert res.steps == 2 and (tmp_path / "runs/r/checkpoints/best.pt").read_bytes() != best


def test_a_resume_is_told_where_it_starts(tmp_path: Path) -> None:
    main(tiny_config("train.max_steps=6"), workdir=tmp_path, name="r", source=MemorySource(val=False), stop_at_step=5)
    starts: list[dict] = []
    main(tiny_config("train.max_steps=6"), workdir=tmp_path, name="r", source=MemorySource(val=False), resume=True,
         on_start=starts.append)
    # 4 batches per epoch: step 5 is the second epoch's (epoch 1) second batch
    assert (starts[0]["start_step"], starts[0]["start_epoch"], starts[0]["start_batches"]) == (5, 1, 1)


def test_a_dataloader_worker_leaves_the_stop_signal_to_the_trainer() -> None:
    """With data.num_workers=2, one Ctrl-C printed "SIGINT received: stopping ..." three times: the forked
    workers kept the trainer's handler."""
    import os
    import signal

    from leap_cli.train import distributed
    from leap_cli.train.loop import GracefulStop

    with GracefulStop(distributed.DistInfo()) as stop:
        pid = os.fork()
        if pid == 0:  # the child: a worker forked by the DataLoader
            os.kill(os.getpid(), signal.SIGINT)
            os._exit(3 if stop.received is None else 4)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 3 and stop.received is None
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.received == "SIGINT"


def test_a_sigterm_right_after_the_first_is_the_same_stop(monkeypatch) -> None:
    """Slurm signals every process of a job step and torchrun forwards its SIGTERM too: a rank got two at once and
    stopped at once, without saving last.pt (3 of 6 tries). A second SIGINT, or a SIGTERM later, still stops at
    once."""
    import os
    import signal

    from leap_cli.train import distributed
    from leap_cli.train.loop import GracefulStop

    with GracefulStop(distributed.DistInfo()) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # torchrun's copy
        assert stop.received == "SIGTERM"
        monkeypatch.setattr(GracefulStop, "SAME_STOP_SECONDS", 0.0)  # (as if 5 s had passed)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
    with GracefulStop(distributed.DistInfo()) as stop:  # scancel --signal=INT: two SIGINTs at once, one stop
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.received == "SIGINT"
        monkeypatch.setattr(GracefulStop, "SAME_SIGINT_SECONDS", 0.0)  # (a person's second Ctrl-C, a second later)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    # under DDP a rank may learn of the stop from another rank first (their signals a moment apart): its own
    # SIGTERM then is the same stop too
    from types import SimpleNamespace

    monkeypatch.setattr(GracefulStop, "SAME_STOP_SECONDS", 5.0)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    for sent in ("SIGINT", "SIGTERM"):  # the other rank's signal is this rank's too (it exited 143 for a SIGINT)
        monkeypatch.setattr(torch.distributed, "all_reduce",
                            lambda t, op=None: t.fill_(float(GracefulStop.SIGNALS.index(sent) + 1)))
        for own in (signal.SIGTERM, signal.SIGINT):
            with GracefulStop(SimpleNamespace(is_main=False, world_size=2, device="cpu")) as stop:
                assert stop() and stop.received == sent
                os.kill(os.getpid(), own)  # the same stop, and the rank's exit status is its own signal's
                assert stop.received == signal.Signals(own).name


def test_resume_without_the_pretrained_set_is_accepted(tmp_path: Path) -> None:
    """README's resume (`--set model.pretrained=FILE` to start, `--resume` without it) was refused ("model.pretrained:
    FILE -> None"): a resume takes the weights from last.pt, so the file may be left out; what the run computes may
    still not change, and the run keeps the record of the weights it started from."""
    from leap_cli.train.checkpoint import save_checkpoint

    main(tiny_config("train.max_steps=2"), workdir=tmp_path, name="r", source=MemorySource(val=False), stop_at_step=1)
    last = tmp_path / "runs/r/checkpoints/last.pt"
    started = torch.load(last, weights_only=True)  # as if started with --set model.pretrained=... (the file is gone)
    started["config"]["model"].update(pretrained="/weights/k710_uniformerv2_b16_8x224.pyth", allow_partial_load=True)
    save_checkpoint(last, started)
    with pytest.raises(LeapError, match=r"optim\.lr: 0\.001 -> 0\.002\); resuming") as e:
        main(tiny_config("train.max_steps=2", "optim.lr=2e-3"), workdir=tmp_path, name="r",
             source=MemorySource(val=False), resume=True)
    assert "pretrained" not in str(e.value)
    done = main(tiny_config("train.max_steps=2"), workdir=tmp_path, name="r", source=MemorySource(val=False),
                resume=True)
    assert done.steps == 2
    model = torch.load(last, weights_only=True)["config"]["model"]
    assert model["pretrained"] == "/weights/k710_uniformerv2_b16_8x224.pyth" and model["allow_partial_load"]
    assert "k710_uniformerv2_b16_8x224.pyth" in (tmp_path / "runs/r/config.yaml").read_text()


def test_resume_with_another_thread_count_says_it_is_not_bit_for_bit(tmp_path: Path, caplog) -> None:
    """train.threads may change on --resume (it says how fast, not what), but the float sums then add up in
    another order: the weights drift by ~1e-4 from an uninterrupted run's. It was silent; now a warning says so
    (and a resume with the same threads says nothing)."""
    t = torch.get_num_threads()
    main(tiny_config("train.max_steps=3", "train.threads=1"), workdir=tmp_path, name="r",
         source=MemorySource(val=False), stop_at_step=1)
    assert torch.load(tmp_path / "runs/r/checkpoints/last.pt", weights_only=True)["numerics"] == {
        "device": "cpu", "threads": 1, "compile": False}
    try:
        with caplog.at_level(logging.WARNING):
            main(tiny_config("train.max_steps=3", "train.threads=2"), workdir=tmp_path, name="r",
                 source=MemorySource(val=False), resume=True, stop_at_step=2)
        assert "resumed with CPU threads 2 (was 1): the run goes on within float rounding, not bit for bit" in \
            caplog.text
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            main(tiny_config("train.max_steps=3", "train.threads=2"), workdir=tmp_path, name="r",
                 source=MemorySource(val=False), resume=True)
        assert "bit for bit" not in caplog.text
    finally:
        torch.set_num_threads(t)


def test_a_checkpoint_whose_tensors_do_not_fit_its_model_args_is_one_line(tmp_path: Path, caplog) -> None:
    """model_args edited (num_verbs 20) with the old weights left: load_state_dict(strict=False) still raised
    on the shapes (a traceback, also with --allow-partial-load, which is meant for weights that do not fit)."""
    from leap_cli.train.checkpoint import save_checkpoint

    main(tiny_config("train.max_steps=1"), workdir=tmp_path, name="r", source=MemorySource(val=False))
    last = tmp_path / "runs/r/checkpoints/last.pt"
    ckpt = torch.load(last, weights_only=True)
    ckpt["model_args"]["num_verbs"] = V + 3
    save_checkpoint(tmp_path / "edited.pt", ckpt)
    with pytest.raises(LeapError, match=rf"of another shape \['verb_head.weight \({V}, ") as e:
        load_model(tmp_path / "edited.pt")
    assert "model_args were edited" in e.value.fix
    with caplog.at_level(logging.WARNING):
        model, _ = load_model(tmp_path / "edited.pt", allow_partial=True)
    assert model.verb_head.weight.shape[0] == V + 3 and "of another shape (left at initialisation)" in caplog.text
    ckpt["model_args"]["num_verbs"] = "many"
    save_checkpoint(tmp_path / "garbled.pt", ckpt)
    with pytest.raises(LeapError, match="model_args.num_verbs must be a positive integer"):
        load_model(tmp_path / "garbled.pt")


def test_resume_on_training_shards_that_are_not_the_runs_is_refused(tmp_path: Path) -> None:
    """data.train may change on --resume (the same shards moved), but shards of another size re-laid the schedule
    (a 2-step run resumed as "step 1 of 6") and anticipation shards of another tau_a went on silently."""
    from leap_cli.train.checkpoint import save_checkpoint

    main(tiny_config("train.max_steps=4"), workdir=tmp_path, name="r", source=MemorySource(batches_per_epoch=4),
         stop_at_step=1)
    with pytest.raises(LeapError, match="give 6 batches per epoch, the run's gave 4: resuming would change") as e:
        main(tiny_config("train.max_steps=4"), workdir=tmp_path, name="r", source=MemorySource(batches_per_epoch=6),
             resume=True)
    assert "model.pretrained=" in e.value.fix and e.value.record == "data.train"
    last = tmp_path / "runs/r/checkpoints/last.pt"
    ckpt = torch.load(last, weights_only=True)
    ckpt["shards_timing"] = {"tau_a": 2.0, "context_mode": "clips", "span_frames": 256}
    save_checkpoint(last, ckpt)
    source = MemorySource(batches_per_epoch=4)
    source.timing = {"tau_a": 1.0, "context_mode": "clips", "span_frames": 256}
    with pytest.raises(LeapError, match=r"observe tau_a 1.0 s, clips of 256 source frames, the run's observed tau_a 2.0"):
        main(tiny_config("train.max_steps=4"), workdir=tmp_path, name="r", source=source, resume=True)
    source.timing = ckpt["shards_timing"]  # the same shards elsewhere: resumed
    assert main(tiny_config("train.max_steps=4"), workdir=tmp_path, name="r", source=source, resume=True).steps == 4


def test_a_loss_that_is_not_finite_names_the_step_it_computes(tmp_path: Path) -> None:
    """It named the steps done before (step 0 for the first) and advised enabling optim.grad_clip, on."""
    class NaNSource(MemorySource):
        def train_batches(self, epoch: int, skip: int = 0):
            for b in super().train_batches(epoch, skip):
                b["video"] = torch.full_like(b["video"], float("nan"))
                yield b

    with pytest.raises(LeapError, match=r"loss is nan at step 1") as e:
        main(tiny_config("train.max_steps=2"), workdir=tmp_path, name="n", source=NaNSource(val=False))
    assert "grad_clip" not in e.value.fix and "lower optim.lr" in e.value.fix


def test_a_warmup_past_the_run_and_a_program_loss_without_heads_are_said(tmp_path: Path, caplog) -> None:
    """Both trained without a word: the peak learning rate never reached, the program loss not applied."""
    with caplog.at_level(logging.WARNING):
        main(tiny_config("train.max_steps=2", "optim.warmup_steps=1000", "model.program_heads=false"),
             workdir=tmp_path, name="w", source=MemorySource(val=False))
    assert "optim.warmup_steps 1000 reaches past the run's 2 steps" in caplog.text
    assert "model.program_heads is false: loss.program_loss has no heads to train" in caplog.text


def test_resume_by_another_number_of_processes_is_refused(tmp_path: Path) -> None:
    """A run started by torchrun on 8 processes and resumed by one (README's old resume line) would replay another
    data order from another position, with a smaller batch per step: refused, naming both counts."""
    from leap_cli.train.checkpoint import save_checkpoint

    main(tiny_config("train.max_steps=2"), workdir=tmp_path, name="r", source=MemorySource(val=False), stop_at_step=1)
    last = tmp_path / "runs/r/checkpoints/last.pt"
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["data_position"]["world_size"] == 1
    ckpt["data_position"]["world_size"] = 8
    save_checkpoint(last, ckpt)
    with pytest.raises(LeapError, match=r"trained by 8 process\(es\) and is resumed by 1") as e:
        main(tiny_config("train.max_steps=2"), workdir=tmp_path, name="r", source=MemorySource(val=False), resume=True)
    assert e.value.record == "world_size" and "--nproc_per_node" in e.value.fix
    del ckpt["data_position"]["world_size"]  # a checkpoint from before the count was kept: resumed as before
    save_checkpoint(last, ckpt)
    assert main(tiny_config("train.max_steps=2"), workdir=tmp_path, name="r", source=MemorySource(val=False),
                resume=True).steps == 2


class SignalSource(MemorySource):
    """Sends a signal to this process while the loop reads the given batch (as Slurm's preemption would)."""

    def __init__(self, signum: int | None, at_batch: int, **kw):
        super().__init__(**kw)
        self.signum, self.at_batch, self.seen = signum, at_batch, 0

    def train_batches(self, epoch: int, skip: int = 0):
        for b in super().train_batches(epoch, skip):
            self.seen += 1
            if self.signum is not None and self.seen == self.at_batch:
                os.kill(os.getpid(), self.signum)
            yield b


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_signal_saves_a_resumable_checkpoint_at_the_step_boundary(tmp_path: Path, signame: str) -> None:
    import signal

    cfg = tiny_config("train.max_steps=6", "optim.accum_steps=2")
    before = signal.getsignal(signal.SIGTERM)
    full = main(cfg, workdir=tmp_path, name="full", source=MemorySource(batches_per_epoch=8, val=False))
    # the signal lands in the middle of step 2's accumulation (batch 3 of 4): step 2 still completes
    part = main(cfg, workdir=tmp_path, name="cut", source=SignalSource(getattr(signal, signame), 3,
                                                                       batches_per_epoch=8, val=False))
    assert part.interrupted == signame and part.steps == 2
    assert signal.getsignal(signal.SIGTERM) == before  # handlers restored
    ckpt = torch.load(tmp_path / "runs/cut/checkpoints/last.pt", weights_only=True)
    assert ckpt["step"] == 2 and ckpt["data_position"] == {"epoch": 0, "batches": 4, "world_size": 1, "order": 2, "batches_per_epoch": 8}
    done = main(cfg, workdir=tmp_path, name="cut", source=MemorySource(batches_per_epoch=8, val=False), resume=True)
    assert done.steps == 6 and done.interrupted is None and full.steps == 6
    a = torch.load(tmp_path / "runs/full/checkpoints/last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "runs/cut/checkpoints/last.pt", weights_only=True)["model"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6, rtol=0), k


class ValSignalSource(MemorySource):
    """Sends a signal while validation reads its first batch, once."""

    def __init__(self, signum: int, **kw):
        super().__init__(**kw)
        self.signum, self.sent = signum, False

    def val_batches(self):
        for i, b in enumerate(super().val_batches()):
            if i == 0 and not self.sent:
                self.sent = True
                os.kill(os.getpid(), self.signum)
            yield b


@pytest.mark.parametrize("where", ["last step", "validation"])
def test_a_signal_at_an_epochs_end_stops_before_validating_and_resume_validates(tmp_path: Path, where) -> None:
    """A signal in an epoch's last step ran the whole validation before stopping (minutes on EPIC's val, past a
    scheduler's grace period), and one during validation waited for its end: the run stops at the epoch's end
    without validating, and --resume validates it first, as the uninterrupted run did."""
    import signal

    cfg = tiny_config("train.max_steps=8")
    full = main(cfg, workdir=tmp_path, name="full", source=MemorySource(batches_per_epoch=4))
    source = (SignalSource(signal.SIGTERM, 4, batches_per_epoch=4) if where == "last step" else
              ValSignalSource(signal.SIGTERM, batches_per_epoch=4))
    part = main(cfg, workdir=tmp_path, name="cut", source=source)
    assert part.interrupted == "SIGTERM" and part.steps == 4
    lines = [json.loads(x) for x in (tmp_path / "runs/cut/metrics.jsonl").read_text().splitlines()]
    assert not [x for x in lines if x["split"] == "val"]
    ckpt = torch.load(tmp_path / "runs/cut/checkpoints/last.pt", weights_only=True)
    assert ckpt["data_position"] == {"epoch": 0, "batches": 4, "world_size": 1, "order": 2, "batches_per_epoch": 4}
    done = main(cfg, workdir=tmp_path, name="cut", source=MemorySource(batches_per_epoch=4), resume=True)
    assert done.steps == 8 and full.steps == 8
    val = [[{k: v for k, v in json.loads(x).items() if k != "seconds"}
            for x in (tmp_path / f"runs/{name}/metrics.jsonl").read_text().splitlines() if '"val"' in x]
           for name in ("full", "cut")]
    assert len(val[0]) == 2 and val[0] == val[1]
    a = torch.load(tmp_path / "runs/full/checkpoints/last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "runs/cut/checkpoints/last.pt", weights_only=True)["model"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6, rtol=0), k


class AnticipationSource(MemorySource):
    """Batches with the anticipation fields: 2 context clips, the oldest one absent in half the samples."""

    def train_batches(self, epoch: int, skip: int = 0):
        for batch in super().train_batches(epoch, skip):
            B = batch["video"].shape[0]
            batch["context_video"] = torch.randn(B, 2, *batch["video"].shape[1:])
            batch["context_mask"] = torch.tensor([[i % 2 == 0, True] for i in range(B)])
            yield batch

    def val_batches(self):
        return None


def test_anticipation_keeps_as_best_pt_the_best_validation_mean_top5_recall(tmp_path: Path) -> None:
    """The anticipation challenge ranks by class-mean top-5 recall (action); best.pt was picked by action top-1."""

    class WithVal(AnticipationSource):
        def val_batches(self):
            batches = MemorySource.val_batches(self)
            for b in batches:
                b["context_video"] = torch.zeros(len(b["video"]), 2, *b["video"].shape[1:])
                b["context_mask"] = torch.ones(len(b["video"]), 2, dtype=torch.bool)
            return batches

    cfg = tiny_config("train.max_steps=6", "data.task=anticipation", "model.anticipation_context=2", "optim.lr=1e-2")
    main(cfg, workdir=tmp_path, name="ant", source=WithVal(batches_per_epoch=2))
    # resumed when finished, no validation runs: the summary still names mt5r (it said "best val action top-1")
    again = main(cfg, workdir=tmp_path, name="ant", source=WithVal(batches_per_epoch=2), resume=True)
    assert not again.last_eval and again.best_key == "action_mt5r"
    vals = [r for r in read_jsonl(tmp_path / "runs/ant/metrics.jsonl") if r["split"] == "val"]
    assert len(vals) == 3 and all(0 <= r["action_mt5r"] <= 100 and "verb_mt5r" in r for r in vals)
    best = max(vals, key=lambda r: r["action_mt5r"])
    ckpt = load_checkpoint(tmp_path / "runs/ant/checkpoints/best.pt")
    assert ckpt["best_metric"] == best["action_mt5r"] and ckpt["step"] == best["step"]
    assert ckpt["best_key"] == "action_mt5r"
    # a checkpoint of an older leap kept action top-1 as its best: resumed, the next validation sets best.pt anew
    from leap_cli.train.checkpoint import save_checkpoint

    main(cfg, workdir=tmp_path, name="old", source=WithVal(batches_per_epoch=2), stop_at_step=2)
    last = tmp_path / "runs/old/checkpoints/last.pt"
    ckpt = torch.load(last, weights_only=True)
    del ckpt["best_key"]
    ckpt["best_metric"] = 100.0  # a top-1 no recall of this run reaches
    save_checkpoint(last, ckpt)
    main(cfg, workdir=tmp_path, name="old", source=WithVal(batches_per_epoch=2), resume=True)
    best = load_checkpoint(tmp_path / "runs/old/checkpoints/best.pt")
    assert best["step"] > 2 and best["best_metric"] < 100.0 and best["best_key"] == "action_mt5r"


@pytest.mark.parametrize("aggregate", [True, False])
def test_anticipation_trains_with_context_clips(tmp_path: Path, aggregate: bool) -> None:
    cfg = tiny_config("train.max_steps=2", "data.task=anticipation", "model.anticipation_context=2",
                      f"model.anticipation_aggregate={str(aggregate).lower()}")
    result = main(cfg, workdir=tmp_path, name="ant", source=AnticipationSource())
    assert result.model_args["anticipation"] == {"context": 2, "aggregate": aggregate, "pool": "program"}
    model, _ = load_model(tmp_path / "runs/ant", which="last")
    assert (model.aggregator is not None) == aggregate and model.program_pool == "program"
    if aggregate:  # a run begun before the pooling key (every decoded row) resumes, keeping its pooling
        from leap_cli.train.checkpoint import load_checkpoint, save_checkpoint

        cfg = tiny_config("train.max_steps=3", "data.task=anticipation", "model.anticipation_context=2")
        main(cfg, workdir=tmp_path, name="ant2", source=AnticipationSource(), stop_at_step=2)
        last = tmp_path / "runs/ant2/checkpoints/last.pt"
        ckpt = load_checkpoint(last)
        del ckpt["model_args"]["anticipation"]["pool"]
        save_checkpoint(last, ckpt)
        again = main(cfg, workdir=tmp_path, name="ant2", source=AnticipationSource(), resume=True)
        assert again.steps == 3 and again.model_args["anticipation"]["pool"] == "all"
        assert load_model(tmp_path / "runs/ant2", which="last")[0].program_pool == "all"


@pytest.mark.parametrize("override,key", [("optim.lr=-1", "optim.lr"), ("optim.warmup_ratio=2", "optim.warmup_ratio"),
                                          ("loss.label_smoothing=1.5", "loss.label_smoothing"),
                                          ("data.num_workers=-1", "data.num_workers"),
                                          ("optim.lr=.inf", "optim.lr"),  # (trained, logging "lr": Infinity)
                                          ("model.anticipation_context=-1", "model.anticipation_context"),
                                          ("model.options.decoder_layers=0", "model.options.decoder_layers"),
                                          ("model.options.decoder_dropout=-0.5", "model.options.decoder_dropout"),
                                          ("model.options.drop_path_rate=2", "model.options.drop_path_rate")])
def test_config_values_out_of_range_are_refused(override: str, key: str) -> None:
    with pytest.raises(LeapError, match=rf"config key '{key}': .* is out of range"):
        load_config(None, [override])


@pytest.mark.parametrize("override,says", [
    ("model.options.decoder_dim=abc", "'abc' is not an integer"),
    ("model.options.num_frames=6", "6 where model.num_frames is 8: it is set there, not by model.options"),
    ("model.options.img_size=64.0", "64.0 where model.img_size is 64")])  # (a float passed, then crashed)
def test_model_options_are_checked_before_anything_runs(override: str, says: str) -> None:
    """model.options went to the model as they were: a string or a negative size crashed building it (a
    traceback), a drop path of 2 at the first step, and num_frames overrode model.num_frames (another clip
    length than the config's). The same value as the key's is harmless (a run begun with it must resume)."""
    with pytest.raises(LeapError, match=re.escape(says)) as e:
        load_config("tiny-synthetic", [override])
    assert e.value.path == f"--set {override}"
    assert load_config("tiny-synthetic", ["model.options.num_frames=8"]).model.options == {
        **load_config("tiny-synthetic").model.options, "num_frames": 8}


def test_model_options_of_what_the_data_sets_must_agree_with_it(tmp_path: Path) -> None:
    """num_verbs / program in model.options overrode the shards' (an IndexError in the loss; the program heads
    dropped while the config said program_loss): refused where they differ, accepted where they agree."""
    with pytest.raises(LeapError, match=rf"'model.options.num_verbs': {V + 1} where the shards' class files give {V}"):
        main(tiny_config("train.max_steps=1", f"model.options.num_verbs={V + 1}"), workdir=tmp_path, name="a",
             source=MemorySource(val=False))
    with pytest.raises(LeapError, match=r"'model.options.program': None where model.program_heads and the shards'"):
        main(tiny_config("train.max_steps=1", "model.options.program=null"), workdir=tmp_path, name="b",
             source=MemorySource(val=False))
    assert main(tiny_config("train.max_steps=1", f"model.options.num_verbs={V}"), workdir=tmp_path, name="c",
                source=MemorySource(val=False)).steps == 1


def test_model_options_the_model_cannot_take_are_one_line(tmp_path: Path) -> None:
    """decoder_heads that do not divide decoder_dim: torch's AssertionError was a traceback."""
    with pytest.raises(LeapError, match=r"model section does not build \(AssertionError: embed_dim must be divisible "
                                        r"by num_heads\) with model.options") as e:
        main(tiny_config("train.max_steps=1", "model.options.decoder_heads=3"), workdir=tmp_path, name="h",
             source=MemorySource(val=False))
    assert "decoder_heads" in e.value.fix
    assert not (tmp_path / "runs" / "h").exists()


@pytest.mark.parametrize("betas", ["[0.9]", "[0.9, 0.95, 0.99]", "[]"])
def test_betas_of_another_length_are_refused(betas: str) -> None:
    """optim.betas=[0.9] used to reach AdamW (IndexError traceback); three values dropped the third silently."""
    with pytest.raises(LeapError, match=r"config key 'optim.betas': .*two values \[beta1, beta2\]") as e:
        load_config("tiny-synthetic", [f"optim.betas={betas}"])
    assert e.value.path == f"--set optim.betas={betas}"


@pytest.mark.parametrize("override,says", [("optim.lrr=1", "unknown config key 'optim.lrr'"),
                                           ("optim.lr=-1", "out of range"), ("train.epochs=many", "wrong type"),
                                           ("optim.betas=[0.9, 2]", "optim.betas[1]"),
                                           ("opt.lr=1", "unknown config section")])
def test_a_bad_override_is_named_as_the_source_not_the_config_file(override: str, says: str) -> None:
    with pytest.raises(LeapError, match=re.escape(says)) as e:
        load_config("tiny-synthetic", [override])
    assert e.value.path == f"--set {override}" and "tiny-synthetic.yaml" not in str(e.value)


def test_a_second_training_of_the_same_run_is_refused(tmp_path: Path, caplog) -> None:
    from leap_cli.io import OutputLock

    with OutputLock(tmp_path / "runs" / "r" / "checkpoints"):  # as a running `leap train` holds it
        with pytest.raises(LeapError, match="another leap process is writing") as e:
            main(tiny_config("train.max_steps=1"), workdir=tmp_path, name="r", source=MemorySource(val=False))
        assert "--name" in e.value.fix and "--out" not in e.value.fix  # train has no --out
        # a --resume of it while it runs before its first checkpoint: refused, without first announcing a restart
        with pytest.raises(LeapError, match="another leap process is writing"):
            main(tiny_config("train.max_steps=1"), workdir=tmp_path, name="r", source=MemorySource(val=False),
                 resume=True)
        assert "starting it from step 0" not in caplog.text, caplog.text
    assert main(tiny_config("train.max_steps=1"), workdir=tmp_path, name="r", source=MemorySource(val=False)).steps == 1


def test_force_keeps_the_old_run_when_the_new_one_cannot_start(tmp_path: Path) -> None:
    cfg = tiny_config("train.max_steps=2")
    main(cfg, workdir=tmp_path, name="r", source=MemorySource(val=False), stop_at_step=1)
    last = tmp_path / "runs/r/checkpoints/last.pt"
    before = last.read_bytes()
    with pytest.raises(LeapError, match="no shards manifest") as e:  # the shards it would read are not there
        main(cfg, workdir=tmp_path, name="r", force=True)
    assert e.value.fix.endswith(f"leap build-shards --workdir {tmp_path} --split train")  # runnable as printed
    with pytest.raises(LeapError, match="does not exist"):  # a typo in model.pretrained
        main(tiny_config("train.max_steps=2", f"model.pretrained={tmp_path / 'nosuch.pth'}"), workdir=tmp_path,
             name="r", source=MemorySource(val=False), force=True)
    assert last.read_bytes() == before and (tmp_path / "runs/r/metrics.jsonl").exists()
    assert main(cfg, workdir=tmp_path, name="r", source=MemorySource(val=False), force=True).steps == 2


def test_an_empty_or_cut_checkpoint_is_one_line(tmp_path: Path) -> None:
    from leap_cli.train.checkpoint import load_checkpoint

    main(tiny_config("train.max_steps=1"), workdir=tmp_path, name="r", source=MemorySource(val=False))
    good = (tmp_path / "runs/r/checkpoints/last.pt").read_bytes()
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "cut.pt").write_bytes(good[: len(good) // 3])
    for name, says in (("empty.pt", "the file is empty"), ("cut.pt", "damaged or truncated")):
        with pytest.raises(LeapError, match=says) as e:
            load_checkpoint(tmp_path / name)
        assert e.value.path == str(tmp_path / name) and "\n" not in e.value.one_line()


def test_a_checkpoint_whose_bytes_changed_on_disk_is_refused_not_resumed(tmp_path: Path) -> None:
    """torch.load does not check the archive's CRC-32s: a last.pt with 4000 bytes of a tensor overwritten (same
    size) was resumed as if whole ("resumed from checkpoints/last.pt at step 10"), to weights up to 4.48 off."""
    import struct
    import zipfile

    cfg = tiny_config("train.max_steps=2")
    main(cfg, workdir=tmp_path, name="r", source=MemorySource(val=False), stop_at_step=1)
    last = tmp_path / "runs/r/checkpoints/last.pt"
    with zipfile.ZipFile(last) as z:
        member = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(last.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[member.header_offset + 26:member.header_offset + 30])
    start = member.header_offset + 30 + name_len + extra_len + 64  # inside the tensor's bytes (its local header's
    # extra field pads the data to 64 bytes, so it is read from the local header, not from the central directory)
    data[start:start + 400] = struct.pack("<f", 0.05) * 100
    last.write_bytes(bytes(data))
    with pytest.raises(LeapError) as e:
        main(cfg, workdir=tmp_path, name="r", source=MemorySource(val=False), resume=True)
    msg = e.value.one_line()
    assert str(last) in msg and "damaged checkpoint" in msg and member.filename in msg and "--force" in msg, msg


def test_a_real_backbone_without_pretrained_weights_is_said_to_start_from_random() -> None:
    from leap_cli.train.config import load_config
    from leap_cli.train.loop import random_start

    epic = load_config("uniformerv2-b16-epic")
    assert epic.model.pretrained is None and "starts from random weights" in random_start(epic)
    assert random_start(load_config("uniformerv2-b16-epic", ["model.pretrained=/m/ViT-B-16.pt"])) is None
    assert random_start(tiny_config()) is None  # the CPU demo's tiny model has no weights to start from


def test_an_ablation_cell_made_with_other_settings_is_trained_again(tmp_path: Path, monkeypatch) -> None:
    """`leap ablate --epochs 3` after `--epochs 2` reused the 2-epoch runs and labelled the table with 3 (and so
    with another --set)."""
    import leap_cli.evaluate.inference as inference
    import leap_cli.evaluate.scoring as scoring
    import leap_cli.train.loop as loop
    from leap_cli.train.ablate import AblateConfig, Cell, run_cell

    trained: list[int] = []

    def fake_main(cfg, workdir, name):
        trained.append(cfg.train.epochs)
        (Path(workdir) / "runs" / name).mkdir(parents=True, exist_ok=True)
        return SimpleNamespace(interrupted=None)

    monkeypatch.setattr(loop, "main", fake_main)
    monkeypatch.setattr(inference, "evaluate_run", lambda *a, **k: ({}, None))
    monkeypatch.setattr(scoring, "evaluate_scores", lambda *a, **k: {"recognition": {"all": {
        t: {"top1": 0.5} for t in ("verb", "noun", "action")}}})
    monkeypatch.setattr("leap_cli.epic.annotations.Annotations", lambda *a, **k: None)
    cell = Cell("L_CE", "recognition", "none", ("loss.program_loss=false",))
    for epochs, sets in ((2, ()), (2, ()), (3, ()), (3, ("optim.lr=0.01",))):
        run_cell(tmp_path, tmp_path / "kitchen", cell, 0, AblateConfig(workdir=tmp_path, epochs=epochs, overrides=sets))
    assert trained == [2, 3, 3]  # the second run reused the first; a changed --epochs or --set trains again
    # an aggregation cell of the earlier program pooling (its result.json without "pool") is trained again: reused,
    # it was averaged with a seed of the new pooling in one row (QA)
    agg = Cell("+L_T+L_PC+aggregation", "anticipation", "truth", ("model.anticipation_aggregate=true",))
    monkeypatch.setattr(scoring, "evaluate_scores", lambda *a, **k: {"anticipation": {"overall": {
        t: {"mt5r": 0.5} for t in ("verb", "noun", "action")}}})
    ablate = AblateConfig(workdir=tmp_path, epochs=2, anticipation_epochs=2)
    run_cell(tmp_path, tmp_path / "kitchen", agg, 0, ablate)
    done = next((tmp_path / "runs").glob("anticipation-truth-*-seed0")) / "result.json"
    result = json.loads(done.read_text())
    assert result["settings"]["pool"] == "program"
    run_cell(tmp_path, tmp_path / "kitchen", agg, 0, ablate)
    assert len(trained) == 4  # reused
    del result["settings"]["pool"]
    done.write_text(json.dumps(result))
    run_cell(tmp_path, tmp_path / "kitchen", agg, 0, ablate)
    assert len(trained) == 5
    del result["settings"]  # (a result.json of a leap before the settings were kept: the old pooling too)
    done.write_text(json.dumps(result))
    run_cell(tmp_path, tmp_path / "kitchen", agg, 0, ablate)
    assert len(trained) == 6


def test_a_signal_stops_the_ablation_and_its_cell_is_not_recorded(tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C or SIGTERM ended only the cell training then: ablate scored the cut-short model, wrote its
    result.json (which a rerun reused) and went on to the next cell."""
    import leap_cli.evaluate.inference as inference
    import leap_cli.train.loop as loop
    from leap_cli.train.ablate import AblateConfig, Cell, CellInterrupted, run_cell

    stops = ["SIGTERM"]

    def fake_main(cfg, workdir, name):
        (Path(workdir) / "runs" / name).mkdir(parents=True, exist_ok=True)
        return SimpleNamespace(interrupted=stops.pop() if stops else None)

    monkeypatch.setattr(loop, "main", fake_main)
    monkeypatch.setattr(inference, "evaluate_run", lambda *a, **k: pytest.fail("an interrupted cell was scored"))
    cell = Cell("L_CE", "recognition", "none", ("loss.program_loss=false",))
    with pytest.raises(CellInterrupted) as stopped:
        run_cell(tmp_path, tmp_path / "kitchen", cell, 0, AblateConfig(workdir=tmp_path, epochs=2))
    assert stopped.value.signal == "SIGTERM" and stopped.value.run_dir.is_dir()
    assert not (stopped.value.run_dir / "result.json").exists()  # the next `leap ablate` trains it again
    with pytest.raises(LeapError, match="unknown --anticipation-sources bogus"):
        AblateConfig(anticipation_sources=("bogus",))  # it started ~20 min of cells without the anticipation ones
    assert AblateConfig(sources=("offline", "none")).anticipation_sources == ("truth",)  # the default still stands


def test_the_ablation_table_says_what_its_figures_are() -> None:
    """The table had no caption (split, units, what S-Verb and mT5R are) and showed "± 0.0" for one seed."""
    from leap_cli.train.ablate import table

    one = [{"cell": {"task": "recognition", "source": "none", "name": "L_CE"}, "seed": 0, "seconds": 1.0,
            "verb_top1": 0.4}]
    _, md = table(one)
    assert "| 40.0 |" in md and "±" not in md.split("\n\n")[0]
    assert "Validation split" in md and "in %" in md and "S-Verb" in md
    two = one + [{**one[0], "seed": 1, "verb_top1": 0.44}]
    assert "42.0 ± 2.8" in table(two)[1]


def test_a_runs_own_config_names_its_run() -> None:
    """`--config runs/r/config.yaml` without --name made (or resumed) a run named "config", whichever run's it was."""
    from leap_cli.commands.train import default_name

    assert default_name(Path("work/runs/r/config.yaml"), resume=True) == "r"
    assert default_name(Path("configs/config.yaml"), resume=True) == "config" and default_name(Path("b16.yaml")) == "b16"
    # without --resume a run's config is a template: `--config runs/base/config.yaml --force` must not wipe base
    assert default_name(Path("work/runs/base/config.yaml")) == "config"


def test_a_training_holds_its_shards_against_a_rebuild(shard_work: Path) -> None:
    """build-shards --force while a training read the shards deleted them under it (the run then stopped on a
    "corrupt shard"); the training now holds the train and val folders until it ends."""
    from leap_cli.io import ShardReaders

    refused = []

    def rebuild(_row: dict) -> None:
        for split in ("train", "val"):
            try:
                ShardReaders(shard_work / "shards" / split).write().release()
            except LeapError as e:
                refused.append((split, e.message))

    cfg = tiny_config(f"data.train={shard_work / 'shards' / 'train'}", "train.max_steps=1",
                      "model.options={decoder_dim: 32}")
    from leap_cli.common import NEXT_RUN

    with pytest.raises(LeapError, match="no shards manifest"):  # (refused before it started: a plain rerun)
        main(tiny_config("data.train=/nonexistent", "train.max_steps=1"), workdir=shard_work, name="held")
    assert "train" not in NEXT_RUN
    main(cfg, workdir=shard_work, name="held", on_step=rebuild)
    assert [s for s, _ in refused] == ["train", "val"] and "reading these shards" in refused[0][1]
    assert NEXT_RUN["train"] == "resume"  # (an error's advice once config.yaml is written: --resume)
    building = ShardReaders(shard_work / "shards" / "train").write()  # let go once the run ended; a training
    try:  # started while build-shards writes is refused before it reads a manifest (it said "no shards manifest")
        with pytest.raises(LeapError, match="leap build-shards is writing these shards"):
            main(cfg, workdir=shard_work, name="held-too")
    finally:
        building.release()
