"""docs/train.md, docs/model.md and docs/evaluate-submit.md against the code: the config keys train.md lists, its
table of shipped configs, model.md's builders table, and the supervision levels `leap demo` declares for the
training it runs (evaluate-submit.md, "Supervision levels"). Other docs claims are pinned elsewhere
(test_attack_docs_claims.py, test_attack_s57_docs57.py, test_attack_s58_docs58.py, test_attack_help_texts.py);
those found wrong here (docstrings saying "Was wrong") are fixed."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN_MD = (ROOT / "docs" / "train.md").read_text()
MODEL_MD = (ROOT / "docs" / "model.md").read_text()


def _table_after(text: str, heading: str) -> list[list[str]]:
    """The body rows (cells) of the first markdown table after ``heading``."""
    lines = text[text.index(heading):].splitlines()
    rows, started = [], False
    for line in lines[1:]:
        if line.startswith("|"):
            started = True
            if not line.startswith("|--") and not line.startswith("|---"):
                rows.append([c.strip() for c in line.strip().strip("|").split(" | ")])
        elif started:
            break
    return rows[1:]  # (the header row)


def test_train_md_names_every_key_of_every_config_section():
    """train.md, "Keys (defaults in leap_cli/train/config.py)": each section's bullet names every key the config
    takes (an unknown key is refused, so a key missing from the page is one a user cannot find)."""
    from leap_cli.train.config import _SECTION_CLASSES

    keys = TRAIN_MD[TRAIN_MD.index("Keys (defaults in"):TRAIN_MD.index("### Training on train + val")]
    bullets = re.split(r"\n- `(\w+)`:", keys)
    documented = {bullets[i]: set(re.findall(r"`([a-z_]+)", bullets[i + 1])) for i in range(1, len(bullets), 2)}
    assert set(documented) == set(_SECTION_CLASSES) == {"model", "data", "optim", "loss", "train"}
    for section, cls in _SECTION_CLASSES.items():
        fields = {f.name for f in dataclasses.fields(cls)}
        assert fields - documented[section] == set(), section


def test_train_md_configs_table_is_the_bundled_configs_as_they_load():
    """train.md's table of shipped configs lists every bundled config and no other (`{clip,k400,k710,ssv2}`
    expanded), and what it says of the tiny ones and the presets is what they load: tiny-synthetic 8x64, batch 16,
    60 epochs on one thread; tiny-synthetic-short 4x32, batch 16, 24 epochs over tiny-synthetic (280 clips // 16 x
    24 = the 408 steps it states); the anticipation configs' task and 2 context clips; each preset's family, the
    ssv2 ones at 16 frames, L/14 with grad checkpointing; no config names a weights file."""
    from leap_cli.resources import bundled_configs
    from leap_cli.train.config import load_config

    named = set()
    for row in _table_after(TRAIN_MD, "The shipped configs, loadable by name"):
        m = re.fullmatch(r"`([\w-]+?)(?:-\{([\w,]+)\})?`", row[0])
        assert m, row[0]
        named |= {f"{m[1]}-{f}" for f in m[2].split(",")} if m[2] else {m[1]}
    shipped = {Path(str(c)).stem for c in bundled_configs()}
    assert named == shipped, named ^ shipped
    tiny, short = load_config("tiny-synthetic"), load_config("tiny-synthetic-short")
    assert (tiny.model.backbone, tiny.model.num_frames, tiny.model.img_size) == ("uniformerv2_tiny", 8, 64)
    assert (tiny.data.batch_size, tiny.train.epochs, tiny.train.threads) == (16, 60, 1)
    assert (short.model.num_frames, short.model.img_size, short.data.batch_size, short.train.epochs) == (4, 32, 16, 24)
    assert "base: tiny-synthetic" in (ROOT / "leap_cli/resources/configs/tiny-synthetic-short.yaml").read_text()
    assert 280 // short.data.batch_size * short.train.epochs == 408 and "(408 steps)" in TRAIN_MD
    for name in ("tiny-synthetic-anticipation", "uniformerv2-b16-epic-anticipation"):
        cfg = load_config(name)
        assert (cfg.data.task, cfg.model.anticipation_context, cfg.model.anticipation_aggregate) == \
            ("anticipation", 2, True), name
    for name in shipped:
        cfg = load_config(name)
        assert cfg.model.pretrained is None, name  # "No shipped config names a weights file"
        m = re.fullmatch(r"uniformerv2-(b16|l14)-(clip|k400|k710|ssv2|epic)", name)
        if m:
            assert cfg.model.backbone == f"uniformerv2_{m[1]}", name
            assert cfg.model.weights == ("clip" if m[2] == "epic" else m[2]), name
            assert cfg.model.num_frames == (16 if m[2] == "ssv2" else 8) and cfg.model.img_size == 224, name
            assert cfg.model.grad_checkpointing is (m[1] == "l14"), name


def test_model_md_builders_table_is_what_the_builders_build():
    """model.md, "Builders": patch, width x depth, global blocks, parameters at 400 classes (135 M, 423 M, 0.46 M),
    default frames and size (8 at 224; the tiny one 4 at 96). Built on the meta device: no memory, no weights."""
    import torch

    from leap_cli.model import uniformerv2 as u

    rows = {r[0].strip("`"): r for r in _table_after(MODEL_MD, "## Builders")}
    assert set(rows) == set(u.BUILDERS)
    for name, row in rows.items():
        with torch.device("meta"):
            model = u.BUILDERS[name]()
        cfg = model.cfg
        width, depth = (int(x) for x in row[2].split(" x "))
        first, last = (int(x) for x in re.fullmatch(r"blocks (\d+)-(\d+)", row[3]).groups())
        params = float(re.fullmatch(r"([\d.]+) M", row[4])[1])
        assert (cfg.patch_size, cfg.width, cfg.layers) == (int(row[1]), width, depth), name
        assert list(cfg.return_list) == list(range(first, last + 1)), name
        assert cfg.num_classes == 400
        got = sum(p.numel() for p in model.parameters()) / 1e6
        assert round(got, 2 if got < 1 else 0) == params, (name, got)
        frames, size = re.match(r"([\d, or]+) at (\d+)", row[5]).groups()
        assert cfg.num_frames == int(re.split(r"\D+", frames)[0]) and cfg.img_size == int(size), name


# -- the supervision levels `leap demo` declares --------------------------------------------------------------------

def _demo_submit_levels(tmp_path: Path, *sets: str) -> dict[str, str]:
    """The --sls-* of the `leap submit` stage `leap demo --set ...` plans (none: no submit stage)."""
    from leap_cli.demo import DemoConfig, plan

    stages = plan(DemoConfig(workdir=tmp_path / "w", train_overrides=tuple(sets)))
    submit = [s for s in stages if s.argv[0] == "submit"]
    if not submit:
        return {}
    args = submit[0].argv
    return {a: args[i + 1] for i, a in enumerate(args) if a.startswith("--sls-")}


def test_demo_declares_the_levels_evaluate_submit_md_gives(tmp_path):
    """evaluate-submit.md: "`leap demo` declares 0-4-3 ...; 0-3-3 with --set loss.program_loss=false; with --set
    model.pretrained=FILE it writes no submission"."""
    assert _demo_submit_levels(tmp_path) == {"--sls-pt": "0", "--sls-tl": "4", "--sls-td": "3"}
    assert _demo_submit_levels(tmp_path, "loss.program_loss=false")["--sls-tl"] == "3"
    assert _demo_submit_levels(tmp_path, "model.pretrained=/weights/ViT-B-16.pt") == {}


def test_demo_without_program_heads_declares_tl_3(tmp_path):
    """train.md: `model.program_heads` builds the program decoder and condition head; without them the loop trains
    L_CE alone ("model.program_heads is false: loss.program_loss has no heads to train, the loss is L_CE alone (as
    --no-program-loss)"), and the model's args hold no program. evaluate-submit.md: TL 3 "with verb/noun labels
    and start/end times only (--no-program-loss)"; TL 4 only where the program targets (read from hand-object
    boxes) were trained on. The demo's submission must then say TL 3, as with loss.program_loss=false. Was wrong:
    TL 4, from loss.program_loss alone."""
    from leap_cli.train.config import load_config
    from leap_cli.train.loop import model_args_for

    class Source:  # a vocabulary with programs: model_args_for builds program heads where the config asks for them
        num_verbs, num_nouns = 97, 300
        program_targets = {"step_verbs": ["a", "END"], "objects": ["o", "END"], "conditions": ["c"], "max_steps": 4}

    cfg = load_config("tiny-synthetic", ["model.program_heads=false"])
    assert model_args_for(cfg, Source())["program"] is None  # (no program heads: nothing but L_CE is trained)
    assert _demo_submit_levels(tmp_path, "model.program_heads=false")["--sls-tl"] == "3"


def test_demo_trained_on_train_and_val_declares_td_4(tmp_path):
    """evaluate-submit.md, TD: 3 for a run on the train split, "4 for a run whose data.train names the train and val
    shards"; `leap evaluate --split test` prints --sls-td 4 for such a run (by its provenance). The demo passes its
    --set to `leap train` as they are, so `leap demo --set 'data.train=[W/shards/train, W/shards/val]' --set
    'data.val=""'` trains on train + val, and its own submit stage should declare TD 4. Was wrong: always TD 3."""
    w = tmp_path / "w"
    levels = _demo_submit_levels(tmp_path, f"data.train=[{w}/shards/train, {w}/shards/val]", 'data.val=""')
    assert levels["--sls-td"] == "4"
