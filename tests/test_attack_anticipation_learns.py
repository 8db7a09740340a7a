"""Anticipation's path from the annotation to the score, on a kitchen whose next action is told by what is observed.

`leap ablate`'s anticipation cells stay at the majority class on the synthetic kitchen (docs/train.md, "The
ablation"). A helper session measured why: the kitchen's next verb is predictable from the previous segment's
(a bigram fit on train: 42.5 % val top-1 against 13.8 % for the majority), but the tiny model sees the previous
segment in one of its 4 observed frames at most (span 256 source frames at 29.97 fps: 8.5 s), and an anticipation
run whose labels were swapped for the observed segment's learnt them (val verb 37.5-40 %) where the true labels
stayed at 15 %: the pipeline learns, the kitchen and the observation leave little to learn. These tests pin the
part of that which could break: an anticipation sample is labelled with the action it anticipates (its own CSV
row, not the segment it observes), its observed frames end tau_a before that action and hold none of it, and a
run trained on such shards learns a next action that the observed window tells, as `leap evaluate`'s scores say.
"""

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from leap_cli.epic.timing import csv_frame, format_timestamp

EPIC = Path(__file__).parent / "data" / "epic100"
COLUMNS = ("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,"
           "stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes")
FPS = 50.0  # EPIC numbers 50 fps videos at 50/s: rgb_frames folders and CSV columns count the frames as they are
# (verb, verb_class, noun, noun_class, colour RGB): actions alternate, so the next one is the other one
ACTIONS = [("take", 0, "plate", 2, (220, 30, 30)), ("wash", 2, "cup", 13, (30, 30, 220))]
TAU_A, SPAN = 0.5, 10  # observed: the 10 frames (0.2 s) that end 0.5 s before the action, inside the one before it
VIDEOS = (("train", "P01_01", 12), ("validation", "P01_02", 8))


def action_of(i: int):
    return ACTIONS[i % 2]


def make_kitchen(root: Path) -> Path:
    """rgb_frames at 50/s; segment i spans [i + 0.1, i + 0.9] s and the frames of second i show its action's
    colour (the gaps included), so the window tau_a before segment i shows segment i-1's action, the other one."""
    ann = root / "annotations"
    ann.mkdir(parents=True)
    for f in ("EPIC_100_verb_classes.csv", "EPIC_100_noun_classes.csv"):
        (ann / f).write_bytes((EPIC / f).read_bytes())
    info = ["video_id,duration,fps,resolution"]
    for split, vid, count in VIDEOS:
        rows = [COLUMNS]
        for i in range(count):
            verb, vc, noun, nc, _ = action_of(i)
            start, stop = i + 0.1, i + 0.9
            rows.append(f"{vid}_{i},P01,{vid},{format_timestamp(start)},{format_timestamp(start)},"
                        f"{format_timestamp(stop)},{csv_frame(start, FPS)},{csv_frame(stop, FPS)},"
                        f"{verb} {noun},{verb},{vc},{noun},{nc},['{noun}'],[{nc}]")
        (ann / f"EPIC_100_{split}.csv").write_text("\n".join(rows) + "\n")
        d = root / "P01" / "rgb_frames" / vid
        d.mkdir(parents=True)
        for n in range(1, int(count * FPS) + 1):  # frame n starts at (n - 1) / 50 s
            img = np.zeros((24, 32, 3), np.uint8)
            img[:] = action_of(int((n - 1) // FPS))[4][::-1]  # BGR
            cv2.imwrite(str(d / f"frame_{n:010d}.jpg"), img)
        info.append(f"{vid},{float(count)},{FPS},32x24")
    (ann / "EPIC_100_video_info.csv").write_text("\n".join(info) + "\n")
    return root


@pytest.fixture(scope="module")
def kitchen(tmp_path_factory):
    from leap_cli.shards.writer import ShardSettings, build_split

    root = make_kitchen(tmp_path_factory.mktemp("kitchen"))
    work = tmp_path_factory.mktemp("work")
    out = {}
    for split in ("train", "val"):
        out[split] = work / "shards" / f"{split}-anticipation"
        build_split(root, split, workdir=work, out=out[split],
                    settings=ShardSettings(split=split, task="anticipation", frames=4, short_side=24, tau_a=TAU_A,
                                           context=2, span_frames=SPAN),
                    vocab_manifest=out["train"] / "manifest.json" if split == "val" else None)
    return root, work, out


def test_an_anticipation_sample_is_labelled_with_the_action_it_anticipates_and_observes_only_before_it(kitchen):
    from leap_cli.shards.dataset import ShardDataset, collate_clips
    from leap_cli.shards.format import iter_tar_samples

    root, _, out = kitchen
    rows = {r["narration_id"]: r for r in csv.DictReader(open(root / "annotations" / "EPIC_100_train.csv"))}
    manifest = json.loads((out["train"] / "manifest.json").read_text())
    seen = {}
    for shard in manifest["shards"]:
        for key, fields in iter_tar_samples(out["train"] / shard["name"]):
            meta, row, i = json.loads(fields["json"]), rows[key], int(key.rsplit("_", 1)[1])
            # the label is the anticipated action's: the sample's own row, not the segment it observes
            assert (meta["verb_class"], meta["noun_class"]) == (int(row["verb_class"]), int(row["noun_class"])), key
            seen[key] = meta["verb_class"]
            if i == 0:  # starts 0.1 s into the video, less than tau_a: nothing to observe, stored black
                assert meta["blank"] and meta["observed"] is None
                continue
            # on rgb_frames the action starts where its CSV start_frame starts (EPIC's numbering, docs/shards.md):
            # the observed window ends tau_a before that, and exactly tau_a x 50 frames lie between the two
            start_frame = int(row["start_frame"])
            assert not meta["blank"] and meta["observed"]["stop"] == pytest.approx((start_frame - 1) / FPS - TAU_A), key
            assert meta["clips"][2]["last_frame"] == start_frame - 1 - round(TAU_A * FPS), key
            observed = list(meta["frame_indices"])
            context = [k for c in meta["clips"][:2] if c["present"] for k in c["frame_indices"]]
            assert observed and max(observed + context) <= meta["clips"][2]["last_frame"], key
            # the observed frames are those of the window: the previous action's colour, never this action's
            for t in range(len(observed)):
                img = cv2.imdecode(np.frombuffer(fields[f"f{t:03d}.jpg"], np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
                assert np.abs(img.astype(int).mean((0, 1)) - action_of(i - 1)[4]).max() <= 6, (key, t)
    assert set(seen) == set(rows)
    # the reader's batch carries the same labels, with the context clips that lie inside the video present
    batch = collate_clips(list(ShardDataset(out["train"], train=False, num_frames=4, img_size=16)))
    for j, key in enumerate(batch["narration_id"]):
        assert batch["verb_class"][j].item() == int(rows[key]["verb_class"]), key
        assert batch["noun_class"][j].item() == int(rows[key]["noun_class"]), key
    j = batch["narration_id"].index("P01_01_5")
    assert batch["context_mask"][j].tolist() == [True, True] and batch["context_video"][j].abs().sum() > 0


def test_anticipation_learns_a_next_action_that_the_observed_window_tells(kitchen, tmp_path):
    """The next action is the other one of the observed colour: an anticipation run (L_CE, no aggregation, as
    ablate's first anticipation cell) learns it, and leap evaluate's scores of its last checkpoint name it.
    Labels taken from the observed segment, or a window over the action itself, would learn the opposite map."""
    from leap_cli.epic.annotations import Annotations
    from leap_cli.evaluate.inference import evaluate_run
    from leap_cli.train.config import load_config
    from leap_cli.train.loop import main

    root, _, out = kitchen
    work = tmp_path / "work"
    cfg = load_config("tiny-synthetic", [
        "data.task=anticipation", "model.anticipation_context=2", "model.anticipation_aggregate=false",
        "loss.program_loss=false", "model.num_frames=4", "model.img_size=32", "data.batch_size=4",
        "data.eval_batch_size=8", f"data.train={out['train']}", f"data.val={out['val']}", "train.epochs=12",
        "train.eval_every_epochs=12", "train.checkpoint_every=0", "optim.lr=2e-3", "train.seed=0"])
    trained = main(cfg, workdir=work, name="ant")
    assert not trained.interrupted
    run = work / "runs" / "ant"
    losses = [json.loads(x)["ce_verb"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert losses[-1] < 0.5 * losses[0], losses
    scores, _ = evaluate_run(run, "val", workdir=work, checkpoint="last", task="anticipation", shards=out["val"],
                             out=tmp_path / "eval")
    truth = {s.narration_id: s.verb_class for s in Annotations(root / "annotations").segments("val")}
    verb = torch.as_tensor(np.asarray(scores["verb_output"]))
    predicted = dict(zip(scores["narration_id"], verb.argmax(1).tolist()))
    assert set(predicted) == set(truth)
    observable = [k for k in truth if not k.endswith("_0")]  # _0 is blank (black frames)
    right = [k for k in observable if predicted[k] == truth[k]]
    assert len(right) == len(observable), {k: (predicted[k], truth[k]) for k in observable}
