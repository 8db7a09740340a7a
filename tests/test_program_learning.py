"""The program heads learn: after a short training run on the synthetic kitchen with its true programs, S-Verb
and the per-step condition F1 on the validation split beat their chance baselines (the training set's majority
step verb, and the F1 of predicting every condition at the targets' base rate)."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from leap_cli.epic.annotations import Annotations
from leap_cli.evaluate.inference import evaluate_run
from leap_cli.evaluate.scoring import evaluate_scores
from leap_cli.resources import bundled_config
from leap_cli.shards.format import iter_tar_samples
from leap_cli.synth.kitchen import KitchenConfig, build_kitchen
from leap_cli.train.ablate import AblateConfig, prepare_programs, prepare_shards, shards_dir, true_program_records
from leap_cli.train.config import load_config
from leap_cli.train.loop import main

EPOCHS = 30


def step_verbs(folder: Path) -> list[int]:
    m = json.loads((folder / "manifest.json").read_text())
    end = len(m["targets"]["step_verbs"]) - 1
    out = []
    for s in m["shards"]:
        for _, fields in iter_tar_samples(folder / s["name"]):
            meta = json.loads(fields["json"])
            if meta["has_program"]:
                out += [r[0] for r in meta["targets"]["steps"] if r[0] not in (-100, end)]
    return out


@pytest.mark.slow
def test_program_heads_beat_chance_on_the_kitchen(tmp_path):
    kitchen = tmp_path / "kitchen"
    build_kitchen(kitchen, KitchenConfig(videos=3, segments_per_video=20, width=64, height=48, audio_in_mp4=False))
    assert true_program_records(kitchen, "train")  # the kitchen's true programs, through the one lookup
    prepare_programs(tmp_path, kitchen, "truth")
    prepare_shards(tmp_path, kitchen, "truth", "recognition", AblateConfig(frames=4, short_side=48))
    train, val = (shards_dir(tmp_path, "truth", s, "recognition") for s in ("train", "val"))
    cfg = load_config(bundled_config("tiny-synthetic"), [
        f"data.train={train}", f"data.val={val}", "data.batch_size=8", "model.num_frames=4", "model.img_size=48",
        f"train.epochs={EPOCHS}", f"train.eval_every_epochs={EPOCHS}", "train.checkpoint_every=0", "train.seed=0",
        "optim.lr=3e-3", "loss.label_smoothing=0.0"])
    main(cfg, workdir=tmp_path, name="learn")
    scores, _ = evaluate_run(tmp_path / "runs" / "learn", "val", workdir=tmp_path, checkpoint="last", shards=val)
    m = evaluate_scores(scores, Annotations(kitchen / "annotations"), "val")["programs"]

    # S-Verb against always answering the training set's most frequent step verb
    verbs = Counter(step_verbs(train))
    majority = verbs.most_common(1)[0][0]
    val_verbs = step_verbs(val)
    chance = float(np.mean([v == majority for v in val_verbs]))
    assert m["steps"]["positions"] == len(val_verbs) > 20
    assert m["steps"]["s_verb"] > chance + 0.05, (m["steps"], chance)
    # structure (loop / conditional markers and <step>) is predicted row by row
    assert m["steps"]["structure"] is not None and m["steps"]["marker_rows"] > 0
    # per-step condition F1 against the base rate (random positives at the base rate) and against predicting all
    sc = m["step_conditions"]
    assert sc["rows"] > 20 and 0 < sc["base_rate"] < 0.5
    assert sc["all"]["micro_f1"] > max(sc["base_rate"], sc["chance_f1"]) + 0.05, sc
