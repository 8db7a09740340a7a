"""Does every documented training setting take effect, and is every illegal value refused in one line?

docs/train.md ("Configs", "Keys") and docs/model.md list the config keys and `model.options`; a key that is
accepted but ignored, or a typo taken for a default, wastes GPU-days. One small synthetic kitchen (2 videos, 10
segments) and one short `leap train` with many keys set to non-default values serve most checks; the rest build
the model from the config alone (no training) or go through `leap train`'s config check in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from leap_cli.train.config import load_config
from leap_cli.train.loop import model_args_for
from tests.kitchens import kitchen_copy
from tests.procs import leap_here, leap_main
from tests.test_train import MemorySource

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


def run_leap(cwd: Path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "LEAP_PROGRESS_EVERY": "1000"}
    return subprocess.run([sys.executable, "-m", "leap_cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def leap(monkeypatch, capsys):
    """``run_leap`` in this process (the module's fixtures, made once, run it as a subprocess)."""
    monkeypatch.setenv("LEAP_PROGRESS_EVERY", "1000")
    here = leap_here(monkeypatch, capsys)
    return lambda cwd, *args: here(*args, cwd=cwd)


@pytest.fixture(scope="module")
def kitchen(tmp_path_factory) -> Path:
    """WORKDIR with a 2-video kitchen and its train and val shards (offline programs)."""
    wd = tmp_path_factory.mktemp("settings-kitchen")
    kitchen_copy(tmp_path_factory, wd / "kitchen", "--videos", 2, "--segments", 10)
    steps = []
    for split in ("train", "val"):
        steps += [("extract", "--split", split), ("generate-programs", "--split", split, "--backend", "offline"),
                  ("build-shards", "--split", split)]
    for step in steps:
        res = run_leap(wd, step[0], "--workdir", wd, *step[1:])
        assert res.returncode == 0, (step, res.stdout[-2000:], res.stderr[-2000:])
    return wd


# One run: 10 training clips in batches of 4 = 2 steps an epoch; max_steps 6 = 3 epochs (epochs: 24 in the config)
PEAK, MIN_RATIO, WARMUP_RATIO, STEPS = 0.004, 0.25, 0.5, 6
EFFECT_SETS = {
    "data.batch_size": 4, "train.max_steps": STEPS, "train.log_every": 1, "optim.lr": PEAK,
    "optim.warmup_steps": 0, "optim.warmup_ratio": WARMUP_RATIO, "optim.min_lr_ratio": MIN_RATIO,
    "loss.lambda_t": 0.5, "loss.lambda_pc": 2.0, "optim.weight_decay": 0.02, "optim.betas": [0.8, 0.95],
    "optim.eps": 1e-6, "optim.grad_clip": 0.5, "train.eval_every_epochs": 2, "data.eval_batch_size": 3,
    "train.seed": 5, "model.options.decoder_layers": 1, "model.options.decoder_dim": 32,
    "model.options.decoder_heads": 2, "model.options.drop_path_rate": 0.05, "data.crop_scale": [0.6, 0.9],
    "loss.condition_pos_weight": 4.0, "data.shuffle_buffer": 3,
}


@pytest.fixture(scope="module")
def effect_run(kitchen) -> tuple[dict, list[dict], str]:
    sets = [a for k, v in EFFECT_SETS.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    res = run_leap(kitchen, "train", "--workdir", kitchen, "--config", "tiny-synthetic-short", "--name", "fx", *sets)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    run = kitchen / "runs" / "fx"
    ckpt = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return ckpt, metrics, (run / "config.yaml").read_text()


def _get(cfg: dict, key: str):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


@pytest.mark.parametrize("key", sorted(EFFECT_SETS))
def test_every_set_key_is_in_the_runs_config_and_checkpoint(effect_run, key) -> None:
    import yaml

    ckpt, _, text = effect_run
    want = EFFECT_SETS[key]
    for cfg in (ckpt["config"], yaml.safe_load(text)):
        got = _get(cfg, key)
        assert got == pytest.approx(want) if isinstance(want, (float, list)) else got == want, (key, got)


def test_max_steps_wins_over_epochs_and_log_every_1_logs_each_step(effect_run) -> None:
    ckpt, metrics, _ = effect_run
    train = [m for m in metrics if m["split"] == "train"]
    assert ckpt["step"] == STEPS and [m["step"] for m in train] == list(range(1, STEPS + 1))


def test_loss_weights_lambda_t_and_lambda_pc_weigh_the_logged_loss(effect_run) -> None:
    _, metrics, _ = effect_run
    for m in (m for m in metrics if m["split"] == "train"):
        assert m["loss"] == pytest.approx(m["ce_verb"] + m["ce_noun"] + 0.5 * m["l_t"] + 2.0 * m["l_pc"],
                                          rel=1e-4, abs=1e-4), m


def test_grad_clip_counts_the_steps_whose_norm_it_clipped(effect_run) -> None:
    _, metrics, _ = effect_run
    train = [m for m in metrics if m["split"] == "train"]
    assert [m["clipped_steps"] for m in train] == [int(m["grad_norm"] > 0.5) for m in train]
    assert any(m["clipped_steps"] for m in train)


def test_the_optimizer_takes_betas_eps_weight_decay_and_the_schedule_its_floor(effect_run) -> None:
    ckpt, metrics, _ = effect_run
    groups = ckpt["optimizer"]["param_groups"]
    assert all(tuple(g["betas"]) == pytest.approx((0.8, 0.95)) and g["eps"] == pytest.approx(1e-6) for g in groups)
    assert sorted({round(g["weight_decay"], 9) for g in groups}) == [0.0, 0.02]
    # after the last step the schedule sits at optim.min_lr_ratio x optim.lr (lr_scale 1: layer_decay 1)
    assert all(g["lr"] == pytest.approx(MIN_RATIO * PEAK * g["lr_scale"]) for g in groups)
    lrs = [m["lr"] for m in metrics if m["split"] == "train"]
    # warmup_ratio 0.5 of 6 steps: the lr rises for the first steps, reaches optim.lr, then falls to the floor
    assert lrs[0] < lrs[1] < max(lrs) == pytest.approx(PEAK) and min(lrs) >= MIN_RATIO * PEAK * (1 - 1e-6)


def test_the_logged_lr_is_the_lr_each_step_applied(effect_run) -> None:
    """metrics.jsonl's lr of step k was step k+1's (logged after scheduler.step()): with warmup the first line
    showed a higher lr than step 1 used, and the last line the floor no step used."""
    from leap_cli.train.optim import CosineWithWarmup

    _, metrics, _ = effect_run
    warmup = int(round(WARMUP_RATIO * STEPS))
    ref = CosineWithWarmup(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), peak_lr=PEAK,
                           total=STEPS, warmup=warmup, min_lr_ratio=MIN_RATIO)
    lrs = [m["lr"] for m in metrics if m["split"] == "train"]
    assert lrs == pytest.approx([PEAK * ref.factor(k) for k in range(STEPS)])  # step 1 applies factor(0)


def test_eval_every_epochs_validates_every_second_epoch_and_the_last(effect_run) -> None:
    _, metrics, _ = effect_run
    val = [m for m in metrics if m["split"] == "val"]
    assert [m["step"] for m in val] == [4, 6]  # epochs 2 and 3 (the last): 2 steps an epoch


def test_model_options_shape_the_decoder_in_the_checkpoint(effect_run) -> None:
    ckpt, _, _ = effect_run
    args, state = ckpt["model_args"], ckpt["model"]
    assert (args["decoder_layers"], args["decoder_dim"], args["decoder_heads"]) == (1, 32, 2)
    assert args["drop_path_rate"] == pytest.approx(0.05)
    assert any(k.startswith("decoder.decoder.layers.0.") for k in state)
    assert not any(k.startswith("decoder.decoder.layers.1.") for k in state)
    assert state["decoder.norm.weight"].shape == (32,)


# ---------------------------------------------------------------------- keys that shape the model (no training)
def _model(*sets: str):
    from leap_cli.model import build_model

    cfg = load_config(None, ["model.img_size=32", "model.num_frames=4", *sets])
    return build_model(model_args_for(cfg, MemorySource()))


def _sdpa(m) -> set:
    return {mod.use_sdpa for mod in m.modules() if hasattr(mod, "use_sdpa")}


@pytest.mark.parametrize("sets,check", [
    ((), lambda m: m.decoder is not None and m.condition_head is not None and _sdpa(m) == {True}
     and not m.backbone.transformer.grad_checkpointing and len(m.decoder.decoder.layers) == 2
     and m.decoder.recognition_in is not None),
    (("model.program_heads=false",), lambda m: m.decoder is None and "condition_head" not in dict(m.named_children())),
    (("loss.program_loss=false",), lambda m: m.decoder is None),
    (("model.grad_checkpointing=true",), lambda m: m.backbone.transformer.grad_checkpointing is True),
    (("model.options.use_sdpa=false",), lambda m: _sdpa(m) == {False}),
    (("model.options.decoder_layers=3",), lambda m: len(m.decoder.decoder.layers) == 3),
    (("model.options.decoder_recognition=false",), lambda m: m.decoder.recognition_in is None),
    (("model.weights=k400",), lambda m: float(m.backbone.input_scale.flatten()[0]) == pytest.approx(1 / (255 * 0.225))),
    (("model.num_frames=8", "model.img_size=48"), lambda m: m.backbone.positional_embedding.shape[0] == 1 + 9),
])
def test_model_keys_reach_the_built_model(sets, check) -> None:
    assert check(_model(*sets))


# ----------------------------------------------------------------------------- illegal values: one line each
ILLEGAL = [
    ("optim.min_lr_ratio=2", ["optim.min_lr_ratio", "[0, 1]"]),
    ("optim.warmup_ratio=1.5", ["optim.warmup_ratio", "[0, 1]"]),
    ("optim.warmup_steps=-1", ["optim.warmup_steps", "[0, inf)"]),
    ("optim.eps=0", ["optim.eps", "(0, inf)"]),
    ("optim.betas=[0.9]", ["optim.betas", "two values"]),
    ("optim.betas=[0.9,1.5]", ["optim.betas[1]", "0.999999"]),
    ("optim.layer_decay=0", ["optim.layer_decay", "(0, 1]"]),
    ("optim.backbone_lr_scale=-1", ["optim.backbone_lr_scale", "[0, inf)"]),
    ("optim.weight_decay=-0.1", ["optim.weight_decay", "[0, inf)"]),
    ("optim.grad_clip=-1", ["optim.grad_clip", "[0, inf)"]),
    ("optim.accum_steps=0", ["optim.accum_steps", "at least 1"]),
    ("optim.lr=.nan", ["optim.lr", "out of range"]),
    ("data.crop_scale=[0.5,0.2]", ["data.crop_scale", "0 < low <= high <= 1"]),
    ("data.crop_scale=[0,1]", ["data.crop_scale", "0 < low <= high <= 1"]),
    ("data.crop_scale=0.5", ["data.crop_scale", "wrong type"]),
    ("data.color_jitter=-1", ["data.color_jitter", "[0, inf)"]),
    ("data.task=anticip", ["data.task", "'recognition' or 'anticipation'"]),
    ("data.shuffle_buffer=-1", ["data.shuffle_buffer", "[0, inf)"]),
    ("data.eval_batch_size=0", ["data.eval_batch_size", "[1, inf)"]),
    ("data.num_workers=-1", ["data.num_workers", "[0, inf)"]),
    ("data.batch_size=1.5", ["data.batch_size", "expected int"]),
    ("loss.label_smoothing=1", ["loss.label_smoothing", "0.999"]),
    ("loss.condition_pos_weight=0", ["loss.condition_pos_weight", "(0, inf)"]),
    ("loss.lambda_pc=-1", ["loss.lambda_pc", "[0, inf)"]),
    ("loss.program_loss=maybe", ["loss.program_loss", "expected bool"]),
    ("train.precision=fp64", ["train.precision", "fp32"]),
    ("train.device=gpu", ["train.device", "cuda"]),
    ("train.log_every=0", ["train.log_every", "[1, inf)"]),
    ("train.checkpoint_every=-1", ["train.checkpoint_every", "[0, inf)"]),
    ("train.eval_every_epochs=0", ["train.eval_every_epochs", "[1, inf)"]),
    ("train.threads=-1", ["train.threads", "[0, inf)"]),
    ("train.max_steps=-1", ["train.max_steps", "[0, inf)"]),
    ("train.epochs=2.5", ["train.epochs", "expected int"]),
    ("train.sync_bn=3", ["train.sync_bn", "expected bool"]),
    ("model.backbone=uniformerv2_b17", ["model.backbone", "uniformerv2_tiny"]),
    ("model.weights=k500", ["model.weights", "k710"]),
    ("model.anticipation_context=-1", ["model.anticipation_context", "[0, inf)"]),
    ("model.anticipation_aggregate=1", ["model.anticipation_aggregate", "expected bool"]),
    ("model.num_frames=0", ["model.num_frames", "at least 1"]),
    ("model.num_frames=3", ["num_frames 3", "even"]),
    ("model.img_size=40", ["img_size 40", "multiple of patch_size 16"]),
    ("model.options=5", ["model.options", "expected dict"]),
    ("model.options.decoder_layers=0", ["model.options.decoder_layers", "[1, inf)"]),
    ("model.options.decoder_heads=0", ["model.options.decoder_heads", "[1, inf)"]),
    ("model.options.decoder_dropout=1", ["model.options.decoder_dropout", "[0, 1)"]),
    ("model.options.decoder_label_forcing=1.5", ["model.options.decoder_label_forcing", "[0, 1]"]),
    ("model.options.drop_path_rate=1", ["model.options.drop_path_rate", "[0, 1)"]),
    ("model.options.backbone_drop_path_rate=-0.1", ["model.options.backbone_drop_path_rate", "[0, 1)"]),
    ("model.options.decoder_dim=30", ["decoder_dim must be a multiple of decoder_heads"]),
    ("model.options.num_frames=16", ["model.options.num_frames", "model.num_frames"]),
    ("model.options.num_verbs=3", ["model.options.num_verbs", "class files"]),
    ("model.options.return_list=[7]", ["return_list", "outside 0..2"]),
    ("model.options.drop_path_mode=bogus", ["drop_path_mode", "'official' or 'sample'"]),
    # typos: an unknown key, a typo'd nested key, an unknown section, a key path too deep
    ("train.epoch=3", ["train.epoch", "valid keys in train", "epochs"]),
    ("model.options.decoder_layer=3", ["decoder_layer", "decoder_layers"]),
    ("model.options.drop_path_rat=0.1", ["drop_path_rat", "UniFormerV2Config field"]),
    ("optimizer.lr=1", ["optimizer", "valid sections"]),
    ("optim.lr.peak=1", ["optim.lr"]),
    ("model.options.decoder_dim.x=1", ["model.options.decoder_dim.x", "section.key"]),
]
BUGS = [  # (each a traceback, a crash or taken without a word before)
    ("model.options.dw_reduction=0", ["model.options.dw_reduction", "over 0"]),
    ('model.options.use_sdpa="false"', ["model.options.use_sdpa", "not true or false"]),
    ("model.options.decoder_recognition=2", ["model.options.decoder_recognition", "not true or false"]),
    ("model.options.mlp_dropout=1.5", ["model.options.mlp_dropout", "list of numbers"]),
    ("model.options.return_list=[8.5]", ["model.options.return_list", "list of integers"]),
    ("model.options.layers=0", ["model.options.layers", "[1, inf)"]),
]


def test_the_typed_model_options_are_the_model_configs_own():
    """config.py keeps the types of model.options import-light: the same as UniFormerV2Config and the decoder's."""
    import dataclasses

    from leap_cli.model.leap import DECODER_DEFAULTS
    from leap_cli.model.uniformerv2 import UniFormerV2Config
    from leap_cli.train import config

    types = {f.name: f.type for f in dataclasses.fields(UniFormerV2Config)}
    assert set(config._OPTION_BOOLS) == {k for k, t in types.items() if t == "bool"} | {
        k for k, v in DECODER_DEFAULTS.items() if isinstance(v, bool)}
    assert set(config._OPTION_LISTS) == {k for k, t in types.items() if t.startswith("tuple[")}
    assert all(types[k] == "float" for k in config._OPTION_POSITIVE)
    ints = {k for k, t in types.items() if t == "int"} - {"num_frames", "img_size", "num_classes"}  # (set elsewhere)
    assert ints <= set(config._OPTION_RANGES)


def _train_argv(kitchen: Path, name: str, *sets: str) -> list[str]:
    argv = ["train", "--workdir", str(kitchen), "--config", "tiny-synthetic-short", "--name", name,
            "--set", "data.batch_size=4", "--set", "train.max_steps=1"]
    for s in sets:
        argv += ["--set", s]
    return argv


@pytest.mark.parametrize("override,expect", ILLEGAL + BUGS)
def test_an_illegal_value_is_one_line_naming_the_key_and_what_is_allowed(kitchen, monkeypatch, capsys,
                                                                         override, expect) -> None:
    name = "bad-" + str(abs(hash(override)))
    rc, out, err = leap_main(monkeypatch, capsys, *_train_argv(kitchen, name, override))
    errors = [line for line in (out + err).splitlines() if line.startswith("error:")]
    assert rc == 2 and "Traceback" not in out + err, (rc, err[-2000:])
    assert len(errors) == 1, out + err
    assert all(e.lower() in errors[0].lower() for e in expect), errors[0]
    assert not (kitchen / "runs" / name).exists()  # refused before anything ran


def test_a_data_val_folder_that_does_not_exist_is_refused(kitchen, monkeypatch, capsys, tmp_path) -> None:
    """Was wrong: data.val set to a folder that does not exist (a typo) trains without validation and writes no
    best.pt, with a warning only (train/data.py ShardSource: a missing val_dir is taken as no validation; the docs
    offer data.val="" for that)"""
    rc, out, err = leap_main(monkeypatch, capsys,
                             *_train_argv(kitchen, "val-typo", f"data.val={tmp_path / 'shards/vall'}"))
    assert rc == 2 and "data.val" in err, err[-2000:]


def test_a_data_train_folder_that_does_not_exist_is_refused(kitchen, monkeypatch, capsys, tmp_path) -> None:
    rc, out, err = leap_main(monkeypatch, capsys, *_train_argv(kitchen, "train-typo",
                                                                f"data.train={tmp_path / 'shards/trian'}"))
    assert rc == 2 and "trian" in err and "Traceback" not in err, err[-2000:]


# ------------------------------------------------------------------------------ leap evaluate / build-shards
def test_evaluate_views_batch_size_checkpoint_and_out_take_effect(kitchen, effect_run, monkeypatch, tmp_path) -> None:
    import leap_cli.evaluate.inference as inference

    seen = []
    real = inference.shard_batches

    def spy(folder, model_args, views, *, batch_size=4, **kw):
        seen.append((views.temporal, views.spatial, batch_size))
        return real(folder, model_args, views, batch_size=batch_size, **kw)

    monkeypatch.setattr(inference, "shard_batches", spy)
    base = ["evaluate", "--workdir", str(kitchen), "--run", "runs/fx", "--split", "val", "--device", "cpu"]
    from typer.testing import CliRunner

    from leap_cli.cli import app

    res = CliRunner().invoke(app, [*base, "--checkpoint", "last", "--out", str(tmp_path / "one")])
    assert res.exit_code == 0, res.output[-2000:]
    res = CliRunner().invoke(app, [*base, "--checkpoint", "last", "--temporal-views", "2", "--spatial-views", "3",
                                   "--batch-size", "2", "--out", str(tmp_path / "six")])
    assert res.exit_code == 0, res.output[-2000:]
    # the run's data.eval_batch_size (3) is the default batch; --batch-size and the views reach the loader
    assert seen == [(1, 1, 3), (2, 3, 2)]
    one, six = (torch.load(tmp_path / d / "scores.pt", weights_only=False) for d in ("one", "six"))
    assert one["narration_id"] == six["narration_id"]
    assert not torch.allclose(one["verb_output"], six["verb_output"])  # 6 views averaged: other scores
    assert six["meta"]["views"] == {"temporal": 2, "spatial": 3} and six["meta"]["checkpoint"] == "last"
    assert six["meta"]["step"] == STEPS
    meta = json.loads((tmp_path / "six" / "metrics.json").read_text())["meta"]
    assert meta["views"] == {"temporal": 2, "spatial": 3}
    assert not (kitchen / "runs" / "fx" / "eval").exists()  # --out: the run's eval folder untouched


def test_build_shards_frames_size_quality_count_and_vocabulary_options(kitchen, tmp_path, leap) -> None:
    import io
    import tarfile

    from PIL import Image

    out = tmp_path / "shards"
    res = leap(tmp_path, "build-shards", "--workdir", kitchen, "--split", "train", "--out", out, "--frames", 3,
               "--short-side", 32, "--jpeg-quality", 50, "--max-count", 4, "--max-steps", 5,
               "--max-conditions", 7)
    assert res.returncode == 0, res.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["count"] for s in manifest["shards"]] == [4, 4, 2]  # --max-count 4 of 10 samples
    assert manifest["targets"]["max_steps"] == 5 and 0 < len(manifest["targets"]["conditions"]) <= 7
    with tarfile.open(out / manifest["shards"][0]["name"]) as tar:
        names = tar.getnames()
        first = names[0].split(".")[0]
        jpgs = [n for n in names if n.startswith(first + ".") and n.endswith(".jpg")]
        image = Image.open(io.BytesIO(tar.extractfile(jpgs[0]).read()))
    assert len(jpgs) == 3 and min(image.size) == 32
    assert image.quantization[0][0] == 16  # the luma table of quality 50 (quality 90, the default: 3)


def test_data_keys_reach_the_shard_readers(kitchen) -> None:
    from leap_cli.train.data import ShardSource
    from leap_cli.train.distributed import DistInfo

    cfg = load_config("tiny-synthetic-short", ["data.batch_size=4", "data.eval_batch_size=3", "data.crop_scale=[0.6,0.9]",
                                               "data.color_jitter=0.3", "data.shuffle_buffer=5", "train.seed=11",
                                               "model.num_frames=2", "model.img_size=48"])
    src = ShardSource(kitchen / "shards" / "train", kitchen / "shards" / "val", cfg, DistInfo())
    t, v = src.train, src.val
    assert (t.scale, t.jitter, t.shuffle_buffer, t.seed, t.batch_size) == ((0.6, 0.9), 0.3, 5, 11, 4)
    assert (t.num_frames, t.img_size, v.num_frames, v.img_size, v.batch_size) == (2, 48, 2, 48, 3)
    batch = next(iter(src.train_batches(0)))
    assert tuple(batch["video"].shape) == (4, 3, 2, 48, 48)


# ------------------------------------------------------------------ anticipation keys against data.task
def _train_once(leap, kitchen: Path, name: str, *sets: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    argv = ["train", "--workdir", kitchen, "--config", "tiny-synthetic-short", "--name", name,
            "--set", "data.batch_size=4", "--set", "train.max_steps=1", "--set", 'data.val=""']
    for s in sets:
        argv += ["--set", s]
    res = leap(kitchen, *argv)
    last = kitchen / "runs" / name / "checkpoints" / "last.pt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True) if last.exists() else None
    return res, ckpt


def test_program_heads_false_under_the_program_loss_is_warned_of(kitchen, leap) -> None:
    """The control for the two below: a key that the others' settings leave without effect is said, on stderr."""
    res, ckpt = _train_once(leap, kitchen, "noheads", "model.program_heads=false")
    assert res.returncode == 0 and "model.program_heads is false" in res.stderr, res.stderr[-2000:]
    assert ckpt["model_args"]["program"] is None


@pytest.fixture(scope="module")
def anticipation_shards(kitchen) -> Path:
    res = run_leap(kitchen, "build-shards", "--workdir", kitchen, "--split", "train", "--task", "anticipation",
                   "--frames", 4, "--short-side", 32)
    assert res.returncode == 0, res.stderr[-2000:]
    return kitchen / "shards" / "train-anticipation"


def test_anticipation_context_and_aggregate_reach_the_model(kitchen, anticipation_shards, leap) -> None:
    res, ckpt = _train_once(leap, kitchen, "ant", "data.task=anticipation", "model.anticipation_context=2",
                            "model.anticipation_aggregate=false")
    assert res.returncode == 0, res.stderr[-2000:]
    assert ckpt["model_args"]["anticipation"] == {"context": 2, "aggregate": False, "pool": "program"}
    res = leap(kitchen, "train", "--workdir", kitchen, "--config", "tiny-synthetic-short", "--name", "ant3",
               "--set", "data.task=anticipation", "--set", "model.anticipation_context=3")
    assert res.returncode == 2 and "model.anticipation_context" in res.stderr and "--context 3" in res.stderr, \
        res.stderr[-2000:]  # the shards hold 2 context clips


def test_anticipation_context_under_recognition_is_said(kitchen, leap) -> None:
    """Was wrong: model.anticipation_context=2 under data.task recognition (the default) is ignored without a word: the
    run trains recognition, model_args anticipation None (train/loop.py model_args_for reads it only for data.task
    anticipation)"""
    res, ckpt = _train_once(leap, kitchen, "ctx-rec", "model.anticipation_context=2")
    assert res.returncode == 2 or "data.task" in res.stderr, res.stderr[-2000:]


def test_anticipation_without_context_on_shards_with_context_is_said(kitchen, anticipation_shards, leap) -> None:
    """Was wrong: data.task=anticipation with model.anticipation_context left at its default 0 trains on shards holding
    2 context clips with none of them (anticipation context 0, 'aggregate': True over nothing), without a word"""
    res, ckpt = _train_once(leap, kitchen, "ctx0", "data.task=anticipation")
    assert res.returncode == 2 or "anticipation_context" in res.stderr, res.stderr[-2000:]


# ---------------------------------------------------------------- loss and precision keys, one forward pass each
def _loss_parts(*sets: str) -> tuple[float, dict]:
    from leap_cli.model import build_model
    from leap_cli.train.loop import autocast_context, forward_loss
    from tests.test_train import make_batch

    cfg = load_config(None, ["model.img_size=32", "model.num_frames=4", *sets])
    torch.manual_seed(0)
    model = build_model(model_args_for(cfg, MemorySource())).eval()
    batch = make_batch(torch.Generator().manual_seed(3), 4)
    batch["step_conditions"] = torch.zeros(4, batch["program_steps"].shape[1], batch["conditions"].shape[1])
    batch["step_conditions"][:, 0, 0] = 1
    with torch.no_grad(), autocast_context(torch.device("cpu"), cfg.train.precision):
        loss, parts, _ = forward_loss(model, batch, cfg)
    return float(loss), {k: float(v) for k, v in parts.items()}


@pytest.mark.parametrize("override,changed,same", [
    ("loss.label_smoothing=0.3", {"ce_verb", "ce_noun"}, {"l_pc"}),
    ("loss.condition_pos_weight=1", {"l_pc"}, {"ce_verb", "ce_noun", "l_t"}),
    ("loss.lambda_t=0.25", {"loss"}, {"ce_verb", "ce_noun", "l_t", "l_pc"}),
    ("loss.lambda_pc=0", {"loss"}, {"ce_verb", "ce_noun", "l_t", "l_pc"}),
    ("train.precision=bf16", {"loss"}, set()),
])
def test_loss_and_precision_keys_change_the_loss_terms_they_name(override, changed, same) -> None:
    base_loss, base = _loss_parts()
    loss, parts = _loss_parts(override)
    base["loss"], parts["loss"] = base_loss, loss
    for k in changed:
        assert parts[k] != pytest.approx(base[k], rel=1e-6, abs=0), (k, parts[k], base[k])
    for k in same:
        assert parts[k] == pytest.approx(base[k], rel=1e-6), (k, parts[k], base[k])
    if override.startswith("loss.lambda"):
        lt, lpc = (0.25, 1.0) if "lambda_t" in override else (1.0, 0.0)
        assert loss == pytest.approx(parts["ce_verb"] + parts["ce_noun"] + lt * parts["l_t"] + lpc * parts["l_pc"],
                                     rel=1e-5)


# ------------------------------------------------------------ options that another option's value leaves unread
def _said_unused(res: subprocess.CompletedProcess, option: str) -> bool:
    import re

    text = " ".join((res.stdout + res.stderr).split())
    return res.returncode == 2 and option in text or bool(
        re.search(re.escape(option) + r"[^.]*(ignored|not used|not applied|no effect|only with|only applies)", text))


def test_llm_options_without_backend_openai_are_not_silently_dropped(kitchen, tmp_path, leap) -> None:
    """Was wrong: generate-programs with --model/--base-url/--temperature but no --backend (default offline) writes
    offline programs and exits 0 without a word that the LLM options were not used (commands generate-programs: the
    openai-only options are not checked against --backend)"""
    res = leap(tmp_path, "generate-programs", "--workdir", kitchen, "--split", "val", "--model", "gpt-4o",
               "--base-url", "http://localhost:9/v1", "--temperature", 0.7, "--out", tmp_path / "p.jsonl")
    assert _said_unused(res, "--base-url") or _said_unused(res, "--model") or _said_unused(res, "--backend"), \
        res.stdout[-1500:] + res.stderr[-1500:]


def test_build_shards_vocabulary_options_on_a_reused_vocabulary_are_said(kitchen, tmp_path, leap) -> None:
    """Was wrong: build-shards --split val --max-steps 3 --max-conditions 2 reuses the train shards' vocabulary (6
    steps, all conditions) and says only where the vocabulary came from, not that the two options given were not
    applied"""
    res = leap(tmp_path, "build-shards", "--workdir", kitchen, "--split", "val", "--max-steps", 3,
               "--max-conditions", 2, "--out", tmp_path / "val")
    manifest = tmp_path / "val" / "manifest.json"
    applied = manifest.exists() and json.loads(manifest.read_text())["targets"]["max_steps"] == 3
    assert applied or _said_unused(res, "--max-steps"), res.stdout[-1500:] + res.stderr[-1500:]
