"""train-side checkpoint -> `leap evaluate` (multi-view inference over real shards) -> `leap submit`."""

import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from leap_cli import submit as sub
from leap_cli.cli import app
from leap_cli.epic.timing import epic_frame_rate, format_timestamp, time_to_frame
from leap_cli.evaluate.scores import load_scores, save_scores
from leap_cli.model import build_model
from leap_cli.programs.targets import TargetVocab
from leap_cli.shards.format import iter_tar_samples, load_manifest
from leap_cli.train.checkpoint import load_model, save_checkpoint
from tests.test_shards import PROGRAM, build, make_root, write_programs

torch.set_num_threads(1)
TEST = [("P01_03", 1.6, 2.4), ("P01_03", 4.1, 5.5)]
SLS = ["--sls-pt", "0", "--sls-tl", "5", "--sls-td", "3"]
VIDEO_FPS = 29.97  # the root's videos: rgb_frames folders and frame columns counted as EPIC's are (60/s)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = make_root(tmp_path_factory.mktemp("kitchen"), fps=VIDEO_FPS, epic=True)
    rate = epic_frame_rate(VIDEO_FPS)
    head = "narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,stop_frame"
    rows = [f"P01_03_{10 + i},P01,{v},{format_timestamp(a)},{format_timestamp(a)},{format_timestamp(b)},"
            f"{time_to_frame(a, rate)},{time_to_frame(b, rate)}" for i, (v, a, b) in enumerate(TEST)]
    (root / "annotations" / "EPIC_100_test_timestamps.csv").write_text("\n".join([head] + rows) + "\n")
    (root / "annotations" / "EPIC_100_unseen_participant_ids_validation.csv").write_text("participant_id\nP01\n")
    work = tmp_path_factory.mktemp("work")
    take_plate = {**PROGRAM, "action": {"narration": "take plate", "verb": "take", "noun": "plate", "verb_class": 0,
                                        "noun_class": 2}}  # build-shards checks the action against the segment's labels
    write_programs(work / "programs" / "val.jsonl",
                   [{"narration_id": "P01_03_0", "status": "valid", "program": take_plate, "errors": []}])
    for split in ("train", "val", "test"):
        build(root, work, split=split)
    manifest, _ = load_manifest(work / "shards" / "val")
    vocab = TargetVocab.from_manifest(manifest["targets"])
    # a real run: `leap train`, one epoch of 2 optimizer steps, validation -> best.pt
    cfg = work / "mini.yaml"
    cfg.write_text("model: {img_size: 32, num_frames: 4, options: {decoder_dim: 32, decoder_heads: 2}}\n"
                   "data: {batch_size: 4, eval_batch_size: 2}\ntrain: {epochs: 1, log_every: 1, threads: 1}\n")
    res = CliRunner().invoke(app, ["train", "--config", str(cfg), "--workdir", str(work), "--name", "tiny"])
    assert res.exit_code == 0, res.output
    assert "val epoch 1/1: verb" in res.output  # counted from 1 for people (it said "val epoch 0" of 1 epoch)
    # a result, on stdout (`> train.log` keeps it), where the progress (stderr) is not
    assert "val epoch 1/1: verb" in res.stdout and "val epoch" not in res.stderr
    run = work / "runs" / "tiny"
    model, _ = load_model(run, "best")
    return root, work, run, model, vocab


def test_evaluate_refuses_an_out_it_cannot_write_before_scoring(pipeline, tmp_path, monkeypatch):
    """A metrics folder that cannot be written is refused before the model runs (it failed after the scoring)."""
    import leap_cli.evaluate.inference as inference
    from leap_cli.errors import LeapError

    root, work, run, model, vocab = pipeline
    monkeypatch.setattr(inference, "evaluate_run", lambda *a, **k: pytest.fail("scored before checking --out"))
    blocker = tmp_path / "a-file"
    blocker.write_text("x")  # a folder under a file cannot be made (root ignores read-only permissions)
    res = CliRunner().invoke(app, ["evaluate", "--split", "val", "--run", "runs/tiny", "--workdir", str(work),
                                   "--data", str(root), "--out", str(blocker / "metrics"), "--device", "cpu"])
    assert isinstance(res.exception, LeapError), res.output
    assert "cannot write in this folder" in str(res.exception) and "--out" in res.exception.fix
    # a folder where metrics.json goes: it failed after the scoring, leaving new scores and no metrics
    (tmp_path / "out" / "metrics.json").mkdir(parents=True)
    res = CliRunner().invoke(app, ["evaluate", "--split", "val", "--run", "runs/tiny", "--workdir", str(work),
                                   "--data", str(root), "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert isinstance(res.exception, LeapError) and "is a folder where a metrics.json file is to be written" in \
        str(res.exception), res.output


def test_a_second_evaluation_of_one_run_and_split_is_refused_in_one_line(pipeline, monkeypatch):
    """Two `leap evaluate --run R --split val` at once (say --checkpoint best and last) both wrote
    runs/R/eval/val/scores.pt and metrics.json: the pair could come from two checkpoints. The second is refused
    before it scores, naming the folder."""
    import leap_cli.evaluate.inference as inference
    from leap_cli.errors import LeapError
    from leap_cli.io import OutputLock

    root, work, run, model, vocab = pipeline
    monkeypatch.setattr(inference, "predict", lambda *a, **k: pytest.fail("scored beside a running evaluation"))
    with OutputLock(run / "eval" / "val"):  # the first evaluation, still running
        res = CliRunner().invoke(app, ["evaluate", "--split", "val", "--run", "runs/tiny", "--workdir", str(work),
                                       "--data", str(root), "--device", "cpu", "--checkpoint", "last"])
    assert isinstance(res.exception, LeapError), res.output
    assert "another leap process is writing this folder" in res.exception.message and res.exception.path == str(run / "eval" / "val")
    assert "--out" in res.exception.fix  # a trial evaluation writes its scores.pt and metrics.json elsewhere


def test_evaluate_val_writes_scores_and_metrics(pipeline):
    root, work, run, model, vocab = pipeline
    res = CliRunner().invoke(app, ["evaluate", "--split", "val", "--run", "runs/tiny", "--workdir", str(work),
                                   "--data", str(root), "--temporal-views", "2", "--spatial-views", "1",
                                   "--device", "cpu"])
    assert res.exit_code == 0, res.output
    scores = load_scores(run / "eval" / "val" / "scores.pt")
    assert sorted(scores["narration_id"]) == ["P01_03_0", "P01_03_1"]
    assert scores["verb_output"].shape == (2, 97) and scores["noun_output"].shape == (2, 300)
    assert scores["meta"]["views"] == {"temporal": 2, "spatial": 1}
    assert scores["meta"]["precision"] == "fp32"  # what ran (it said "auto")
    prog = scores["program"]
    assert prog["steps"].shape[0] == 2 and prog["end_ids"] == vocab.end_triple
    m = json.loads((run / "eval" / "val" / "metrics.json").read_text())
    assert m["segments"] == 2 and set(m["recognition"]) == {"all", "tail", "unseen"}
    assert m["recognition"]["unseen"]["verb"]["top1"] is not None  # P01 is listed as unseen here
    # one valid val program of 6 sub-actions (pick-up, scrub, switch-on, wait, rinse, put) and 7 marker rows
    # (loop, conditional with else, routine)
    assert m["programs"]["steps"]["segments"] == 1 and m["programs"]["steps"]["positions"] == 6
    assert m["programs"]["steps"]["marker_rows"] == 7
    assert 0.0 <= m["programs"]["steps"]["s_verb"] <= 1.0 and 0.0 <= m["programs"]["steps"]["structure"] <= 1.0
    assert m["programs"]["step_conditions"]["rows"] == 13
    assert 0.0 < m["programs"]["step_conditions"]["base_rate"] < 1.0
    # rescoring the written file gives the same metrics
    res = CliRunner().invoke(app, ["evaluate", "--split", "val", "--scores", str(run / "eval" / "val" / "scores.pt"),
                                   "--workdir", str(work), "--data", str(root), "--out", str(work / "again")])
    assert res.exit_code == 0, res.output
    again = json.loads((work / "again" / "metrics.json").read_text())
    assert again["recognition"] == m["recognition"] and again["programs"] == m["programs"]


def test_shards_of_another_vocabulary_leave_the_program_figures_out(pipeline, tmp_path, caplog):
    """Val shards built against other training shards (another condition vocabulary) crashed the evaluation
    with a traceback (operands could not be broadcast, in the condition F1); the verb and noun scores do not
    depend on it."""
    from leap_cli.shards.writer import ShardSettings, build_split

    root, work, run, model, vocab = pipeline
    m, _ = load_manifest(work / "shards" / "train")
    other = dict(m["targets"], conditions=m["targets"]["conditions"][:1] + ["an_extra(condition)"])
    (tmp_path / "manifest.json").write_text(json.dumps(dict(m, targets=other)))
    build_split(root, "val", workdir=work, settings=ShardSettings("val", frames=4, short_side=32, max_count=3),
                out=tmp_path / "val", vocab_manifest=tmp_path / "manifest.json")
    res = CliRunner().invoke(app, ["evaluate", "--split", "val", "--run", "runs/tiny", "--workdir", str(work),
                                   "--data", str(root), "--shards", str(tmp_path / "val"), "--device", "cpu",
                                   "--out", str(tmp_path / "eval")])
    assert res.exit_code == 0, res.output
    assert "program vocabulary is not the one the run trained with" in caplog.text
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["segments"] == 2 and "programs" not in metrics
    assert metrics["recognition"]["all"]["verb"]["top1"] is not None


def test_evaluate_out_writes_scores_and_metrics_there_and_leaves_the_runs_alone(pipeline, tmp_path):
    """A trial evaluation (--out, another checkpoint or views) wrote metrics.json to --out but replaced the run's
    eval/val/scores.pt, which its metrics.json no longer described."""
    root, work, run, model, vocab = pipeline
    own = run / "eval" / "val"
    before = {f.name: f.read_bytes() for f in own.glob("*") if f.is_file()} if own.is_dir() else {}
    trial = tmp_path / "trial"
    res = CliRunner().invoke(app, ["evaluate", "--split", "val", "--run", "runs/tiny", "--workdir", str(work),
                                   "--data", str(root), "--checkpoint", "last", "--temporal-views", "2",
                                   "--device", "cpu", "--out", str(trial)])
    assert res.exit_code == 0, res.output
    after = {f.name: f.read_bytes() for f in own.glob("*") if f.is_file()} if own.is_dir() else {}
    assert after == before  # neither written nor replaced
    scores = load_scores(trial / "scores.pt")
    assert scores["meta"]["checkpoint"] == "last" and scores["meta"]["views"]["temporal"] == 2
    assert json.loads((trial / "metrics.json").read_text())["segments"] == 2


def test_an_evaluation_stopped_after_its_scores_leaves_no_old_metrics_beside_them(pipeline, tmp_path, monkeypatch):
    """A stop (SIGKILL, SIGTERM) while the metrics of new scores were computed left the new scores.pt beside the
    metrics.json of the evaluation they replaced (QA: 3 of 3 kills at the rename)."""
    import leap_cli.evaluate.scoring as scoring

    root, work, run, model, vocab = pipeline
    trial = tmp_path / "trial"
    base = ["evaluate", "--split", "val", "--run", "runs/tiny", "--workdir", str(work), "--data", str(root),
            "--checkpoint", "last", "--device", "cpu", "--out", str(trial)]
    assert CliRunner().invoke(app, base).exit_code == 0 and (trial / "metrics.json").is_file()

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(scoring, "evaluate_scores", stopped)
    res = CliRunner().invoke(app, base + ["--temporal-views", "2"])
    assert res.exit_code != 0 and load_scores(trial / "scores.pt")["meta"]["views"]["temporal"] == 2
    assert not (trial / "metrics.json").exists()


def test_best_that_falls_back_to_last_is_named_last(pipeline):
    """A run that never validated has only last.pt: `--checkpoint best` scores it, and the output line and the
    scores' meta name "last" (they said "best", a checkpoint that was not scored)."""
    import shutil

    root, work, run, model, vocab = pipeline
    noval = work / "runs" / "noval"
    (noval / "checkpoints").mkdir(parents=True)
    shutil.copy(run / "checkpoints" / "last.pt", noval / "checkpoints" / "last.pt")
    res = CliRunner().invoke(app, ["evaluate", "--split", "val", "--run", "runs/noval", "--workdir", str(work),
                                   "--data", str(root), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "checkpoint last)" in " ".join(res.output.split())
    assert load_scores(noval / "eval" / "val" / "scores.pt")["meta"]["checkpoint"] == "last"


def test_views_are_averaged(pipeline):
    """Scores on 2 temporal views are the mean of the model's logits on each view."""
    from leap_cli.evaluate.inference import ViewConfig, predict, shard_batches

    root, work, run, model, vocab = pipeline
    args = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["model_args"]
    batches, n = shard_batches(work / "shards" / "val", args, ViewConfig(2, 1), batch_size=2)
    batch = next(iter(batches))
    model.eval()
    with torch.no_grad():
        per_view = [model(batch["video"][:, v])["verb"] for v in range(2)]
    got = predict(model, [batch], views=ViewConfig(2, 1))
    torch.testing.assert_close(got["verb_output"], (per_view[0] + per_view[1]) / 2, rtol=1e-4, atol=1e-5)
    # bf16 autocast (CPU here) gives fp32 scores close to the fp32 ones
    low = predict(model, [batch], views=ViewConfig(2, 1), precision="bf16", program=False)
    assert low["verb_output"].dtype == torch.float32
    torch.testing.assert_close(low["verb_output"], got["verb_output"], rtol=0.1, atol=0.1)
    # the program is the greedy decoding of the central view (index 1 of 2 temporal views)
    assert torch.equal(got["program"]["steps"], model.predict_program(batch["video"][:, 1]))


def test_condition_probabilities_are_the_mean_of_each_views_sigmoid(pipeline):
    """Condition scores over views are probabilities averaged (as the verb/noun scores average the views): logits
    +4 and 0 on two views give (sigmoid(4) + sigmoid(0)) / 2 ~ 0.741, not sigmoid(2) ~ 0.881."""
    from leap_cli.evaluate.inference import ViewConfig, predict, shard_batches

    root, work, run, model, vocab = pipeline
    args = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["model_args"]
    batches, n = shard_batches(work / "shards" / "val", args, ViewConfig(2, 1), batch_size=2)
    batch = next(iter(batches))

    class TwoViewConditions(torch.nn.Module):  # wraps the model as DDP does (.module)
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, video, **kw):
            out = self.module(video, **kw)
            logits = torch.zeros_like(out["conditions"])
            logits[0::2] = 4.0  # rows are [segment 0 view 0, segment 0 view 1, segment 1 view 0, ...]
            return {**out, "conditions": logits}

    got = predict(TwoViewConditions(model), [batch], views=ViewConfig(2, 1))["program"]["conditions"]
    assert got.shape[1] > 0
    want = (torch.sigmoid(torch.tensor(4.0)) + 0.5) / 2
    torch.testing.assert_close(got, torch.full_like(got, float(want)))
    assert abs(float(want) - 0.7410) < 1e-4


def test_bf16_inference_keeps_fp32_logits(pipeline):
    """Under bf16 autocast the classifiers still run in fp32: the stored logits are not bf16-rounded (fewer ties)."""
    from leap_cli.evaluate.inference import ViewConfig, predict, shard_batches

    root, work, run, model, vocab = pipeline
    args = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["model_args"]
    batches, n = shard_batches(work / "shards" / "val", args, ViewConfig(1, 1), batch_size=4)
    batch = next(iter(batches))
    low = predict(model, [batch], precision="bf16", program=False)
    for key in ("verb_output", "noun_output"):
        x = low[key]
        assert (x.bfloat16().float() != x).float().mean() > 0.5, key
    assert type(model.verb_head).forward is model.verb_head.forward.__func__  # the heads are restored


def test_evaluate_test_then_submit(pipeline):
    root, work, run, model, vocab = pipeline
    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", "--split", "test", "--checkpoint", str(run / "checkpoints" / "best.pt"),
                              "--workdir", str(work), "--data", str(root), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert not (run / "eval" / "test" / "metrics.json").exists()
    assert load_scores(run / "eval" / "test" / "scores.pt")["meta"]["checkpoint"].endswith("best.pt")
    res = runner.invoke(app, ["submit", "--scores", str(run / "eval" / "test" / "scores.pt"), "--data", str(root),
                              "--workdir", str(work), "--sls-pt", "2", "--sls-tl", "3", "--sls-td", "3"])
    assert res.exit_code == 0, res.output
    doc = sub.read_submission(work / "submission.zip")
    assert sorted(doc["results"]) == ["P01_03_10", "P01_03_11"]
    assert len(doc["results"]["P01_03_10"]["noun"]) == 300
    # the table said "nouns 300" and "actions False" for the scores' length and a flag
    table = " ".join(res.output.split())
    assert "noun scores per segment │ 300" in table and "action scores (--with-actions) │ none" in table, res.output
    # val scores cannot be submitted: the ids are not the test ids (written here: this test runs alone too)
    val = load_scores(run / "eval" / "test" / "scores.pt")
    save_scores(work / "val-scores.pt", [f"P01_01_{i}" for i in range(len(val["narration_id"]))], val["verb_output"],
                val["noun_output"], meta={"split": "val"})
    res = runner.invoke(app, ["submit", "--scores", str(work / "val-scores.pt"), "--data", str(root),
                              "--workdir", str(work), "--out", str(work / "bad.zip"), *SLS])
    assert "not test-split scores" in str(res.exception)
    assert res.exit_code != 0 and not (work / "bad.zip").exists()


def test_the_work_directorys_only_run_and_test_scores_are_the_defaults(pipeline, tmp_path):
    """`leap evaluate --split val` and `leap submit` said "nothing to evaluate / submit" beside a work directory
    holding one run: the previous stage's output is found there unless a path is given."""
    root, work, run, model, vocab = pipeline
    w = tmp_path / "w"
    (w / "runs").mkdir(parents=True)
    (w / "runs" / "tiny").symlink_to(run)
    (w / "shards").symlink_to(work / "shards")
    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", "--split", "test", "--workdir", str(w), "--data", str(root),
                              "--device", "cpu"], env={"COLUMNS": "400"})
    assert res.exit_code == 0 and f"run: {w / 'runs' / 'tiny'} (the only run in" in " ".join(res.output.split())
    res = runner.invoke(app, ["submit", "--workdir", str(w), "--data", str(root), *SLS])
    assert res.exit_code == 0 and "(the only test scores in" in " ".join(res.output.split()), res.output
    assert sorted(sub.read_submission(w / "submission.zip")["results"]) == ["P01_03_10", "P01_03_11"]
    (w / "runs" / "other" / "checkpoints").mkdir(parents=True)
    res = runner.invoke(app, ["evaluate", "--split", "val", "--workdir", str(w), "--data", str(root)])
    assert res.exit_code != 0 and "holds 2 runs" in str(res.exception) and "--run runs/NAME" in str(res.exception)


def test_the_submit_hint_after_a_test_evaluation_runs_as_printed(pipeline, tmp_path):
    """The "Next:" line was `leap submit --scores ... --task ...` without the --data/--workdir the evaluation was
    given: pasted as is, it looked for leap-work/kitchen/annotations. It names them, and the --out folder's file."""
    import shlex

    root, work, run, model, vocab = pipeline
    trial = tmp_path / "trial test"  # a space: the hint is quoted for the shell
    res = CliRunner().invoke(app, ["evaluate", "--split", "test", "--run", "runs/tiny", "--workdir", str(work),
                                   "--data", str(root), "--device", "cpu", "--out", str(trial)],
                             env={"COLUMNS": "60"})  # narrow: the command is still printed on one line
    assert res.exit_code == 0, res.output
    hint = next(line for line in res.output.splitlines() if "Next: " in line).split("Next: ", 1)[1]
    args = shlex.split(hint)
    assert args[:2] == ["leap", "submit"] and args[args.index("--scores") + 1] == str(trial / "scores.pt")
    assert args[-6:] == ["--sls-pt", "PT", "--sls-tl", "TL", "--sls-td", "3"]  # the levels leap cannot know are left
    res = CliRunner().invoke(app, args[1:-5] + ["0", "--sls-tl", "5", "--sls-td", "3"])
    assert res.exit_code == 0, res.output
    assert sorted(sub.read_submission(work / "submission.zip")["results"]) == ["P01_03_10", "P01_03_11"]
    # options left at their defaults are not repeated
    from leap_cli.commands.evaluate import _submit_command

    (tmp_path / "kitchen" / "annotations").mkdir(parents=True)
    assert _submit_command(Path("s.pt"), "recognition", tmp_path, None, None) == \
        f"leap submit --scores s.pt --task recognition --workdir {tmp_path} --sls-pt PT --sls-tl TL --sls-td 3"
    # an evaluation given no --data, whose annotations are not where submit looks by default: a ROOT to fill in
    # (pasted as printed, it stopped at "leap-work/kitchen/annotations: annotations folder not found")
    assert _submit_command(Path("s.pt"), "recognition", tmp_path / "w", None, None) == \
        f"leap submit --scores s.pt --task recognition --data ROOT --workdir {tmp_path / 'w'} --sls-pt PT --sls-tl TL --sls-td 3"


def test_anticipation_evaluate_and_submit_with_actions(pipeline, tmp_path, caplog):
    root, work, run, _, _ = pipeline
    for split in ("train", "val", "test"):
        build(root, work, split=split, task="anticipation", tau_a=1.0, tau_o=1.0, context=2)
    manifest, _ = load_manifest(work / "shards" / "val-anticipation")
    # the current clip s_i (256 source frames ending tau_a before the action) is observed wherever the action
    # starts more than tau_a into the video: samples are not blank
    metas = [json.loads(f["json"]) for s in manifest["shards"]
             for _, f in iter_tar_samples(work / "shards" / "val-anticipation" / s["name"])]
    observed = [m for m in metas if not m.get("blank")]
    assert observed and [m for m in metas if m.get("blank")]  # P01_03_0 starts exactly tau_a into its video: blank
    for m in observed:
        current = m["clips"][-1]
        assert current["present"] and m["frame_indices"] and 1 <= min(m["frame_indices"])
        assert max(m["frame_indices"]) <= current["last_frame"] <= round(m["start"] * 60) - 60
    vocab = TargetVocab.from_manifest(manifest["targets"])
    args = {"backbone": "uniformerv2_tiny", "num_frames": 4, "img_size": 32, "num_verbs": 97, "num_nouns": 300,
            "program": vocab.model_program_args(), "anticipation": {"context": 2, "aggregate": True},
            "decoder_dim": 32, "decoder_heads": 2}
    torch.manual_seed(1)
    arun = work / "runs" / "ant"
    save_checkpoint(arun / "checkpoints" / "last.pt", {
        "model": build_model(args).state_dict(), "model_args": args,
        "config": {"data": {"task": "anticipation", "eval_batch_size": 2}}, "optimizer": {}, "scheduler": {},
        "scaler": {}, "step": 1, "epoch": 0, "best_metric": 0.0, "rng": {}, "data_position": {}})
    runner = CliRunner()
    for split in ("val", "test"):
        res = runner.invoke(app, ["evaluate", "--split", split, "--run", str(arun), "--checkpoint", "last",
                                  "--workdir", str(work), "--data", str(root), "--spatial-views", "2"])
        assert res.exit_code == 0, res.output
    m = json.loads((arun / "eval" / "val" / "metrics.json").read_text())
    assert m["task"] == "anticipation" and set(m["anticipation"]) == {"overall", "unseen", "tail"}
    # a run trained on shards of another anticipation time: its figures here are for another task, said
    ckpt = torch.load(arun / "checkpoints" / "last.pt", weights_only=True)
    ckpt["shards_timing"] = {"tau_a": 2.0, "context_mode": "clips", "span_frames": 256}
    save_checkpoint(arun / "checkpoints" / "t2.pt", ckpt)
    with caplog.at_level("WARNING"):
        res = runner.invoke(app, ["evaluate", "--split", "val", "--checkpoint", str(arun / "checkpoints" / "t2.pt"),
                                  "--workdir", str(work), "--data", str(root), "--out", str(tmp_path / "t2")])
    assert res.exit_code == 0, res.output
    assert ("these shards observe otherwise than the run's training shards (tau_a 1.0 s, clips of 256 source frames; "
            "training: tau_a 2.0 s, clips of 256 source frames)") in caplog.text
    assert 0.0 <= m["anticipation"]["overall"]["action"]["mt5r"] <= 1.0
    assert m["anticipation"]["tail"]["verb"]["mt5r"] is None  # no tail lists in this root
    res = runner.invoke(app, ["submit", "--scores", str(arun / "eval" / "test" / "scores.pt"), "--task",
                              "anticipation", "--with-actions", "--data", str(root), "--workdir", str(work),
                              "--out", str(work / "ant.zip"), *SLS])
    assert res.exit_code == 0, res.output
    doc = sub.read_submission(work / "ant.zip")
    assert doc["challenge"] == "action_anticipation"
    assert all(len(e["action"]) == 100 for e in doc["results"].values())
    # scores of shards that observe up to another time before the action break the challenge's rule: refused
    scores = torch.load(arun / "eval" / "test" / "scores.pt", weights_only=False)
    assert scores["meta"]["tau_a"] == 1.0
    scores["meta"]["tau_a"] = 0.0
    torch.save(scores, tmp_path / "t0.pt")
    res = runner.invoke(app, ["submit", "--scores", str(tmp_path / "t0.pt"), "--task", "anticipation", "--data",
                              str(root), "--workdir", str(work), "--out", str(tmp_path / "t0.zip"), *SLS])
    assert "observes up to 1 s before it" in str(res.exception) and not (tmp_path / "t0.zip").exists()
    # recognition shards cannot be scored as anticipation
    res = runner.invoke(app, ["evaluate", "--split", "val", "--run", str(arun), "--checkpoint", "last",
                              "--workdir", str(work), "--data", str(root), "--shards", str(work / "shards" / "val")])
    assert res.exit_code != 0
    # evaluated as the other task, it replaced the run's own scores (those leap submit is pointed at)
    before = (arun / "eval" / "test" / "scores.pt").read_bytes()
    res = runner.invoke(app, ["evaluate", "--split", "test", "--run", str(arun), "--checkpoint", "last",
                              "--workdir", str(work), "--data", str(root), "--task", "recognition"])
    assert res.exit_code != 0 and "evaluating an anticipation model as recognition would replace" in str(res.exception)
    assert (arun / "eval" / "test" / "scores.pt").read_bytes() == before
    res = runner.invoke(app, ["evaluate", "--split", "test", "--run", str(arun), "--checkpoint", "last",
                              "--workdir", str(work), "--data", str(root), "--task", "recognition",
                              "--out", str(work / "as-recognition")])
    assert res.exit_code == 0, res.output


def test_evaluate_usage_errors(tmp_path):
    from leap_cli.errors import LeapError
    from leap_cli.evaluate.inference import ViewConfig, _flatten_views, resolve_run

    with pytest.raises(LeapError, match="run not found"):
        resolve_run("runs/nope", tmp_path)
    with pytest.raises(LeapError, match="gave 2 views per segment, 6 were asked for"):
        _flatten_views({"video": torch.zeros(1, 2, 3, 4, 8, 8), "narration_id": ["a"]}, 6)
    assert ViewConfig(3, 3).center == 4 and ViewConfig(2, 3).center == 4 and ViewConfig(1, 1).center == 0
    res = CliRunner().invoke(app, ["evaluate", "--split", "val", "--workdir", str(tmp_path)])
    assert res.exit_code != 0 and "nothing to evaluate" in str(res.exception)


def test_show_predicted_program_beside_the_target(pipeline):
    root, work, run, model, vocab = pipeline
    from leap_cli.report.predicted import predicted_program

    cmp = predicted_program(run, "P01_03_0", work / "shards" / "val", checkpoint="best")
    assert cmp.target is not None and cmp.target[0] == "take(plate) [right]" and cmp.target[1] == "<loop>"
    assert cmp.target[-1] == "<end>" and "until clean(plate)" in cmp.target_conditions[1]  # the loop marker's
    assert 1 <= len(cmp.predicted) <= vocab.max_steps and len(cmp.predicted_conditions) == len(cmp.predicted)
    # an <end> row is no step: no conditions listed on it (an untrained model's listed dozens there)
    assert cmp.target_conditions[-1] == [] and all(c == [] for r, c in zip(cmp.predicted, cmp.predicted_conditions)
                                                   if r == "<end>")
    assert cmp.checkpoint.startswith("best.pt, step ")
    res = CliRunner().invoke(app, ["show", "P01_03_0", "--workdir", str(work), "--split", "val", "--run", "runs/tiny"],
                             env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "target (generated program)" in res.output and "take(plate) [right]" in res.output and "<loop>" in res.output
    assert cmp.checkpoint in " ".join(res.output.split())  # which checkpoint predicted


def test_show_of_a_run_without_best_pt_says_so_once(pipeline, caplog):
    """`leap show --run` of a run that never validated said "has no best.pt ...; using last.pt" twice."""
    import shutil

    root, work, run, model, vocab = pipeline
    other = work / "runs" / "nobest" / "checkpoints"
    other.mkdir(parents=True, exist_ok=True)
    shutil.copy(run / "checkpoints" / "last.pt", other / "last.pt")
    try:
        with caplog.at_level("WARNING"):
            res = CliRunner().invoke(app, ["show", "P01_03_0", "--workdir", str(work), "--split", "val", "--run",
                                           "runs/nobest"], env={"COLUMNS": "200"})
        assert res.exit_code == 0, res.output
        assert caplog.text.count("has no best.pt") == 1, caplog.text
    finally:
        shutil.rmtree(other.parent)


def test_a_test_evaluation_says_which_segments_build_shards_skipped(pipeline, tmp_path, caplog):
    """Test segments build-shards skipped (a video cut short) went through evaluate without a word; submit
    then said "score every test segment (leap evaluate --split test)", which the user had just done."""
    import shutil

    root, work, run, model, vocab = pipeline
    shards = tmp_path / "test"
    shutil.copytree(work / "shards" / "test", shards)
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["skipped"].append({"narration_id": "P01_03_12", "reason": "frame 1420 requested but the video has "
                                                                      "1408 frames (check the segment's times)"})
    (shards / "manifest.json").write_text(json.dumps(manifest))
    res = CliRunner().invoke(app, ["evaluate", "--split", "test", "--run", "runs/tiny", "--workdir", str(work),
                                   "--data", str(root), "--shards", str(shards), "--device", "cpu",
                                   "--out", str(tmp_path / "eval")])
    assert res.exit_code == 0, res.output
    assert "1 segment was skipped by build-shards and has no scores" in caplog.text
    assert "P01_03_12: frame 1420 requested but the video has 1408 frames)" in caplog.text
    assert "leap submit needs every test segment" in caplog.text
    assert "Next: leap submit" in res.output  # (the skipped one is not a test segment of these annotations)
    # with it in the test split, the scores lack it: evaluate printed "Next: leap submit ..." for scores that
    # submit then refused; it says submit's refusal instead
    ann = tmp_path / "annotations"
    shutil.copytree(root / "annotations", ann)
    csv = ann / "EPIC_100_test_timestamps.csv"
    last = csv.read_text().splitlines()[-1].split(",")
    csv.write_text(csv.read_text() + ",".join(["P01_03_12"] + last[1:]) + "\n")
    res = CliRunner().invoke(app, ["evaluate", "--split", "test", "--run", "runs/tiny", "--workdir", str(work),
                                   "--annotations", str(ann), "--shards", str(shards), "--device", "cpu",
                                   "--out", str(tmp_path / "eval")], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    assert "Next:" not in res.output
    assert "leap submit would refuse them: " in res.output and "has no scores: P01_03_12" in res.output


def test_show_a_segment_build_shards_skipped_says_why_and_still_writes_the_page(pipeline, tmp_path):
    """`leap show ID --run R` on a segment the manifest lists as skipped failed with "ID is not in these shards
    (pass the split's shards with --shards, or --split)" and wrote no page."""
    import shutil

    root, work, run, model, vocab = pipeline
    shards = tmp_path / "val"
    shutil.copytree(work / "shards" / "val", shards)
    manifest = json.loads((shards / "manifest.json").read_text())
    reason = "frames unreadable: VideoUnreadable: the video ends or is corrupt at frame 361"
    manifest["skipped"].append({"narration_id": "P01_03_7", "reason": reason})
    (shards / "manifest.json").write_text(json.dumps(manifest))
    programs = tmp_path / "val.jsonl"
    programs.write_text(json.dumps({"narration_id": "P01_03_7", "status": "valid", "program": PROGRAM, "errors": []}) + "\n")
    page = tmp_path / "page.html"
    res = CliRunner().invoke(app, ["show", "P01_03_7", "--workdir", str(work), "--split", "val", "--run", "runs/tiny",
                                   "--shards", str(shards), "--programs", str(programs), "--data", str(root),
                                   "--html", str(page)], env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    assert "no prediction: build-shards skipped this segment" in res.output and reason in res.output
    assert "target (generated program)" not in res.output  # no prediction table
    assert "in(plate, sink)" in res.output and page.is_file()  # the program part and the page


@pytest.mark.slow
@pytest.mark.parametrize("backend", [
    "aot_eager",  # dynamo's graph and AOT autograd without code generation: ~30-60 s on one CPU thread
    pytest.param("inductor", marks=pytest.mark.skipif(not os.environ.get("LEAP_TEST_INDUCTOR"), reason=(
        "inductor compiles C++ kernels: ~5 min for the tiny model on 2 busy cores; LEAP_TEST_INDUCTOR=1 runs it")))])
def test_compiled_inference_equals_eager(backend, monkeypatch):
    """predict(compile=True): torch.compile(model) around the fp32 classifiers gives the eager scores and programs
    (relative difference < 1e-4); the last batch, smaller than the first, is filled up and cut back, so the model
    is compiled once, into one graph."""
    from leap_cli.evaluate.inference import ViewConfig, predict

    from torch._dynamo.backends.registry import lookup_backend

    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return lookup_backend(backend)(gm, example_inputs)

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda module, **kw: real_compile(module, backend=counting, **kw))
    args = {"backbone": "uniformerv2_tiny", "num_frames": 4, "img_size": 32, "num_verbs": 7, "num_nouns": 9,
            "program": {"step_verbs": 8, "objects": 10, "conditions": 5, "max_steps": 3}, "anticipation": None,
            "decoder_dim": 32, "decoder_heads": 2}
    torch.manual_seed(0)
    model = build_model(args)
    views = ViewConfig(2, 1)
    batches = [{"video": torch.randint(0, 256, (b, 2, 3, 4, 32, 32), dtype=torch.uint8),
                "narration_id": [f"P01_01_{i}_{j}" for j in range(b)]} for i, b in enumerate((2, 1))]
    eager = predict(model, batches, views=views)
    torch._dynamo.reset()
    compiled = predict(model, batches, views=views, compile=True)
    assert len(graphs) == 1  # one graph for both batch sizes: no graph break, no recompilation
    assert compiled["narration_id"] == eager["narration_id"] and len(eager["narration_id"]) == 3
    for key in ("verb_output", "noun_output"):
        diff = (compiled[key] - eager[key]).norm() / eager[key].norm()
        assert diff < 1e-4, (key, float(diff))
    torch.testing.assert_close(compiled["program"]["conditions"], eager["program"]["conditions"], rtol=1e-4, atol=1e-6)
    assert torch.equal(compiled["program"]["steps"], eager["program"]["steps"])
    assert type(model.verb_head).forward is model.verb_head.forward.__func__  # the heads are restored


def test_evaluate_compiles_as_the_run_config_says(pipeline, monkeypatch):
    """`model.compile: true` in the run's config (here by its old name `train.compile`, as a config written before
    the key moved) makes `leap evaluate` compile the model; `--no-compile` overrides it; the scores record it."""
    root, work, run, model, vocab = pipeline
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    ckpt["config"]["model"].pop("compile", None)
    ckpt["config"]["train"]["compile"] = True
    crun = work / "runs" / "compiled"
    save_checkpoint(crun / "checkpoints" / "best.pt", ckpt)
    calls = []
    monkeypatch.setattr(torch, "compile", lambda module, **kw: calls.append(module) or module)  # eager stand-in
    base = ["evaluate", "--split", "val", "--run", str(crun), "--workdir", str(work), "--data", str(root),
            "--device", "cpu"]
    for flag, compiled in (([], True), (["--no-compile"], False)):
        res = CliRunner().invoke(app, base + flag)
        assert res.exit_code == 0, res.output
        assert len(calls) == 1 and load_scores(crun / "eval" / "val" / "scores.pt")["meta"]["compile"] is compiled
    ckpt["config"]["train"].pop("compile")
    save_checkpoint(crun / "checkpoints" / "best.pt", ckpt)
    res = CliRunner().invoke(app, base + ["--compile"])
    assert res.exit_code == 0, res.output
    assert len(calls) == 2


def test_a_device_that_cannot_be_had_is_one_line(pipeline, monkeypatch):
    from leap_cli.errors import LeapError

    root, work, run, model, vocab = pipeline
    base = ["evaluate", "--split", "val", "--run", "runs/tiny", "--workdir", str(work), "--data", str(root)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device, says in (("bogus", "--device 'bogus' is not a device"), ("gpu", "is not a device"),
                         ("cuda", "no CUDA device is available"), ("cuda:1", "no CUDA device is available")):
        res = CliRunner().invoke(app, base + ["--device", device])
        assert isinstance(res.exception, LeapError) and says in str(res.exception), (device, res.exception)
        assert "--device" in str(res.exception).split("(")[-1]  # the fix names the option


def test_annotations_are_read_before_the_model_runs(pipeline, tmp_path, monkeypatch):
    """A wrong --data/--annotations failed only after the whole split was scored (an hour on EPIC)."""
    import leap_cli.evaluate.inference as inference
    from leap_cli.errors import LeapError

    root, work, run, model, vocab = pipeline

    def must_not_run(*a, **k):
        raise AssertionError("the model ran before the annotations were read")

    monkeypatch.setattr(inference, "evaluate_run", must_not_run)
    (tmp_path / "annotations").mkdir()
    res = CliRunner().invoke(app, ["evaluate", "--split", "val", "--run", "runs/tiny", "--workdir", str(work),
                                   "--annotations", str(tmp_path / "annotations"), "--device", "cpu"])
    assert isinstance(res.exception, LeapError), res.exception
    assert "EPIC_100_validation.csv" in str(res.exception)


@pytest.mark.parametrize("change", ["classes", "ids"])
def test_a_model_or_shards_the_annotations_cannot_score_are_refused_before_the_model_runs(pipeline, tmp_path,
                                                                                         monkeypatch, change):
    """A checkpoint of another class count, or shards of other narration ids, failed only after the split was
    scored (GPU hours on EPIC with several views), leaving a scores.pt no metric could be made of."""
    import shutil

    import leap_cli.evaluate.inference as inference
    from leap_cli.errors import LeapError

    root, work, run, model, vocab = pipeline
    ann = tmp_path / "annotations"
    shutil.copytree(root / "annotations", ann)
    if change == "classes":
        verbs = ann / "EPIC_100_verb_classes.csv"
        verbs.write_text(verbs.read_text().rstrip("\n") + "\n97,zigzag,['zigzag'],other\n")
        says = f"verb_output has {model.model_args['num_verbs']} classes, the class file needs 98"
    else:
        val = ann / "EPIC_100_validation.csv"
        val.write_text(val.read_text().replace("P01_03_", "P01_09_"))
        says = "narration ids are not in the val annotations, e.g. P01_03_"
    monkeypatch.setattr(inference, "predict", lambda *a, **k: pytest.fail("the model ran"))
    res = CliRunner().invoke(app, ["evaluate", "--split", "val", "--run", "runs/tiny", "--workdir", str(work),
                                   "--annotations", str(ann), "--device", "cpu", "--out", str(tmp_path / "ev")])
    assert isinstance(res.exception, LeapError) and says in str(res.exception), res.output
    assert not (tmp_path / "ev" / "scores.pt").exists()
    # named by what does not fit: the checkpoint's classes, the shards' narration ids (and --shards for those)
    assert res.exception.path == str(run / "checkpoints" / "best.pt" if change == "classes" else work / "shards" / "val")
    assert ("--shards DIR" in res.exception.fix) == (change == "ids")


def test_a_checkpoint_of_another_run_does_not_replace_this_runs_scores(pipeline, tmp_path, monkeypatch):
    """`--run A --checkpoint runs/B/checkpoints/best.pt` scored B and wrote A's eval folder (the one `leap submit`
    is pointed at). Refused before scoring; with --out, or a checkpoint outside any run, it runs and says so."""
    import shutil

    import leap_cli.evaluate.inference as inference
    from leap_cli.errors import LeapError

    root, work, run, model, vocab = pipeline
    other = work / "runs" / "other" / "checkpoints"
    other.mkdir(parents=True, exist_ok=True)
    shutil.copy(run / "checkpoints" / "best.pt", other / "best.pt")
    shutil.copy(run / "checkpoints" / "best.pt", tmp_path / "loose.pt")
    base = ["evaluate", "--split", "test", "--workdir", str(work), "--data", str(root), "--device", "cpu"]
    with monkeypatch.context() as m:
        m.setattr(inference, "predict", lambda *a, **k: pytest.fail("scored into another run's folder"))
        res = CliRunner().invoke(app, base + ["--run", "runs/tiny", "--checkpoint", str(other / "best.pt")])
    assert isinstance(res.exception, LeapError), res.output
    line = res.exception.one_line()
    assert str(work / "runs" / "other") in line and "runs/tiny" in line and "drop --run" in line and "--out" in line
    res = CliRunner().invoke(app, base + ["--run", "runs/other", "--checkpoint", str(tmp_path / "loose.pt")])
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert f"wrote {work / 'runs' / 'other' / 'eval' / 'test' / 'scores.pt'}" in said
    assert f"checkpoint {tmp_path / 'loose.pt'}" in said


def test_a_checkpoint_that_is_none_of_best_last_or_a_file_is_named_as_such(pipeline):
    root, work, run, model, vocab = pipeline
    res = CliRunner().invoke(app, ["evaluate", "--split", "val", "--run", "runs/tiny", "--workdir", str(work),
                                   "--checkpoint", "bets"])
    assert "--checkpoint 'bets' is none of best, last or a checkpoint file" in str(res.exception), res.output


def test_a_checkpoint_file_in_no_run_is_evaluated_into_out(pipeline, tmp_path):
    """A checkpoint copied out of its run said "nothing to evaluate (pass --run ...)" though it holds its config;
    a path that is not there said "none of best, last or a checkpoint file"; --run FILE.pt "cannot write in
    FILE.pt/eval/val (Not a directory)"."""
    import shutil

    root, work, run, model, vocab = pipeline
    loose = tmp_path / "model.pt"
    shutil.copy(run / "checkpoints" / "best.pt", loose)
    base = ["evaluate", "--split", "val", "--workdir", str(work), "--data", str(root), "--device", "cpu"]
    res = CliRunner().invoke(app, base + ["--checkpoint", str(loose)])
    assert "pass --out DIR" in str(res.exception), res.output
    res = CliRunner().invoke(app, base + ["--checkpoint", str(loose), "--out", str(tmp_path / "eval")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["segments"] == 2
    res = CliRunner().invoke(app, base + ["--checkpoint", str(tmp_path / "nothere.pt")])
    assert "checkpoint file not found" in str(res.exception), res.output
    res = CliRunner().invoke(app, base + ["--run", str(loose)])
    assert "--run takes a run directory" in str(res.exception) and "--checkpoint" in str(res.exception), res.output


def test_a_run_path_brings_its_work_directory(pipeline, tmp_path, monkeypatch):
    """`--run X/runs/NAME` without --workdir looked for the shards in ./leap-work and said to rebuild them."""
    root, work, run, model, vocab = pipeline
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["evaluate", "--split", "val", "--run", str(run), "--data", str(root),
                                   "--device", "cpu", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["segments"] == 2


def test_resuming_a_finished_run_says_it_is_finished(pipeline):
    """It said "resumed ... at step 2 of 2 (epoch 2 of 1, 0 of its batches done)", and wrote last.pt again (the same
    state: several GB for UniFormerV2-L with its optimizer)."""
    root, work, run, model, vocab = pipeline
    last = run / "checkpoints" / "last.pt"
    before = (last.stat().st_mtime_ns, last.read_bytes())
    res = CliRunner().invoke(app, ["train", "--config", str(work / "mini.yaml"), "--workdir", str(work), "--name",
                                   "tiny", "--resume"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "the run is finished" in res.output and "epoch 2 of 1" not in res.output, res.output
    assert (last.stat().st_mtime_ns, last.read_bytes()) == before
    # its summary gives the last validation's figures, from metrics.jsonl (it gave none: none ran now)
    val = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
           if json.loads(line)["split"] == "val"][-1]
    row = next(line for line in res.output.splitlines() if "val verb_top1 (step" in line)
    assert f"(step {val['step']})" in row and f"{val['verb_top1']:.2f}" in row


def test_loaders_start_no_more_workers_than_cpus_and_batches(monkeypatch) -> None:
    """`leap evaluate --workers 1000000` started over a thousand DataLoader processes (~0.3 GB each); training
    started a config's data.num_workers 8 on a 2-core machine, and 8 per rank under torchrun."""
    import os

    from leap_cli.shards.dataset import loader_workers

    cpus = len(os.sched_getaffinity(0))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert loader_workers(1_000_000, "--workers", samples=10_000, batch_size=4) == cpus
    assert loader_workers(1_000_000, "--workers", samples=5, batch_size=4) == min(cpus, 2)  # two batches at most
    assert loader_workers(0, "--workers", samples=10_000, batch_size=4) == 0
    assert loader_workers(1, "--workers", samples=1, batch_size=4) == 1
    assert loader_workers(8, "data.num_workers") == min(8, cpus)  # training: no batch count
    monkeypatch.setattr("leap_cli.common.usable_cpus", lambda: 16)
    assert loader_workers(8, "data.num_workers") == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun's 4 processes on the machine share its 16 CPUs
    assert loader_workers(8, "data.num_workers") == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert loader_workers(8, "data.num_workers") == 1


def test_evaluate_names_the_missing_parts_of_sharded_val_shards(pipeline, tmp_path):
    """With a val part missing, evaluate said "no shards manifest ... run `leap build-shards`" where train and
    check-shards name the parts."""
    import shutil

    from leap_cli.errors import LeapError

    root, work, run, model, vocab = pipeline
    val = tmp_path / "val"
    shutil.copytree(work / "shards" / "val", val)
    (val / "manifest.json").rename(val / "manifest.shard0of2.json")  # as a part 0 of 2 leaves it
    (val / ".progress.jsonl").rename(val / ".progress.shard0of2.jsonl")
    res = CliRunner().invoke(app, ["evaluate", "--split", "val", "--run", str(run), "--workdir", str(work),
                                   "--data", str(root), "--shards", str(val), "--device", "cpu",
                                   "--out", str(tmp_path / "eval")])
    assert isinstance(res.exception, LeapError), res.output
    assert "parts [1] of 2 are missing" in str(res.exception) and "--shard i/2" in str(res.exception)
    assert not (tmp_path / "eval").exists() and not (tmp_path / "eval.lock").exists()  # it left them made, empty
    (val / "manifest.shard0of2.json").unlink()
    res = CliRunner().invoke(app, ["evaluate", "--split", "val", "--run", str(run), "--workdir", str(work),
                                   "--data", str(root), "--shards", str(val), "--device", "cpu"])
    assert "no shards manifest found" in str(res.exception) and "leap build-shards" in str(res.exception)


def test_show_of_a_run_without_program_heads_says_why(pipeline, tmp_path):
    """A run trained on shards with no valid program was told "train with program_heads and the program loss",
    both of which it had on: the heads are left out when the training shards hold no program."""
    from leap_cli.errors import LeapError
    from leap_cli.report.predicted import predicted_program

    root, work, run, model, vocab = pipeline
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    args = {**ckpt["model_args"], "program": None}
    for name, config in (("on", {"model": {"program_heads": True}, "loss": {"program_loss": True}}),
                         ("off", {"model": {"program_heads": False}})):
        save_checkpoint(tmp_path / name / "checkpoints" / "best.pt", {
            **ckpt, "model": build_model(dict(args)).state_dict(), "model_args": args, "config": config})
    with pytest.raises(LeapError, match="its training shards held no valid program"):
        predicted_program(tmp_path / "on", "P01_03_0", work / "shards" / "val")
    with pytest.raises(LeapError) as e:
        predicted_program(tmp_path / "off", "P01_03_0", work / "shards" / "val")
    assert e.value.fix == "train with model.program_heads and loss.program_loss on"


def test_an_evaluation_holds_its_shards_against_a_rebuild(pipeline, tmp_path):
    """build-shards --force could delete the shards an evaluation was reading (as it did a training's)."""
    from leap_cli.errors import LeapError
    from leap_cli.evaluate.inference import evaluate_run
    from leap_cli.io import ShardReaders

    root, work, run, model, vocab = pipeline
    refused = []

    def rebuild(*_args) -> None:  # (called before the model runs, inside the evaluation)
        try:
            ShardReaders(work / "shards" / "val").write().release()
        except LeapError as e:
            refused.append(e.message)

    evaluate_run(run, "val", workdir=work, out=tmp_path / "e", device="cpu", check=rebuild)
    assert len(refused) == 1 and "reading these shards" in refused[0]
    ShardReaders(work / "shards" / "val").write().release()
