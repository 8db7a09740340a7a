"""The command-line glue of the late stages (`leap train`, `leap evaluate`, `leap submit`): option handling,
defaults, refusals, exit codes and summaries, checked without training or running a model (the training loop and
the model's inference are replaced by fakes where a command would reach them), expected values from
docs/train.md, docs/evaluate-submit.md and docs/options.md."""

import json
import shlex
import signal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leap_cli.cli import app
from leap_cli.commands import evaluate as evaluate_cmd
from leap_cli.commands import train as train_cmd
from leap_cli.common import DEFAULT_WORKDIR
from leap_cli.errors import LeapError
from leap_cli.evaluate.scores import load_scores, save_scores
from leap_cli.train.loop import TrainResult
from tests.test_eval_submit import TEST_IDS, VAL, _test_scores, _val_scores, ann_dir  # noqa: F401

SLS = ["--sls-pt", "0", "--sls-tl", "4", "--sls-td", "3"]


@pytest.fixture(autouse=True)
def wide_consoles(monkeypatch):
    """Lines as printed on a wide terminal (a path or command is not broken across lines)."""
    from leap_cli.commands import submit as submit_cmd

    for module in (evaluate_cmd, submit_cmd, train_cmd):  # (restored as it was: None, the terminal's width)
        monkeypatch.setattr(module.console, "_width", 1000)


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def refusal(res) -> str:
    assert isinstance(res.exception, LeapError), res.output
    return res.exception.one_line()


# ---------------------------------------------------------------------------------------------------------- train


def fake_training(monkeypatch, tmp_path, *, steps=10, total=10, start_step=0, best_metric=0.5, last_eval=None,
                  evals=(), **result):
    """Replace the training loop: record what the command passed it, call its callbacks, return ``TrainResult``."""
    calls = {}

    def main(cfg, *, workdir, name, resume, stop_at_step, on_step, on_eval, on_start, force):
        calls.update(cfg=cfg, workdir=Path(workdir), name=name, resume=resume, stop_at_step=stop_at_step, force=force)
        run_dir = Path(workdir) / "runs" / name
        on_start({"run_dir": str(run_dir), "parameters": 1.5e6, "total_steps": total, "epochs": 2,
                  "steps_per_epoch": total // 2, "device": "cpu", "world_size": 1, "start_step": start_step,
                  "start_epoch": start_step * 2 // total, "start_batches": 0})
        for rec in evals:
            on_eval(rec)
        return TrainResult(run_dir=run_dir, steps=steps, epochs=2, best_metric=best_metric,
                           last_eval={} if last_eval is None else last_eval, history=[], seconds=1.25,
                           model_args={}, **result)

    monkeypatch.setattr("leap_cli.train.loop.main", main)
    return calls


def test_train_passes_its_options_to_the_loop(monkeypatch, tmp_path):
    """--no-program-loss is --set loss.program_loss=false, --allow-partial-load is model.allow_partial_load=true;
    --name, --workdir, --resume, --stop-after and --force reach the run (docs/train.md's options table)."""
    calls = fake_training(monkeypatch, tmp_path, steps=3)
    res = invoke("train", "--config", "tiny-synthetic", "--workdir", tmp_path, "--name", "abl", "--no-program-loss",
                 "--allow-partial-load", "--resume", "--stop-after", 3, "--force")
    assert res.exit_code == 0, res.output
    cfg = calls["cfg"]
    assert cfg.loss.program_loss is False and cfg.model.allow_partial_load is True
    assert calls["name"] == "abl" and calls["workdir"] == tmp_path
    assert calls["resume"] is True and calls["stop_at_step"] == 3 and calls["force"] is True
    # without them: the config's own values, the config's stem as the name, no pause, no force
    calls = fake_training(monkeypatch, tmp_path)
    res = invoke("train", "--config", "tiny-synthetic", "--workdir", tmp_path)
    assert res.exit_code == 0, res.output
    assert calls["cfg"].loss.program_loss is True and calls["cfg"].model.allow_partial_load is False
    assert calls["name"] == "tiny-synthetic" and calls["resume"] is False
    assert calls["stop_at_step"] is None and calls["force"] is False


def test_the_default_run_name(tmp_path):
    """The config file's stem; with --resume, a run's own runs/NAME/config.yaml names NAME (docs/train.md)."""
    own = tmp_path / "runs" / "b16-lr3e-4" / "config.yaml"
    assert train_cmd.default_name(own, resume=True) == "b16-lr3e-4"
    assert train_cmd.default_name(own, resume=False) == "config"  # a template: not that run started over
    assert train_cmd.default_name(tmp_path / "elsewhere" / "x" / "config.yaml", resume=True) == "config"
    assert train_cmd.default_name(tmp_path / "my-run.yaml") == "my-run"
    assert train_cmd.default_name(Path("tiny-synthetic")) == "tiny-synthetic"


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_an_interrupted_training_exits_128_plus_the_signal(monkeypatch, tmp_path, sig):
    """Ctrl-C: 130, SIGTERM: 143, after saying where last.pt is and to continue with --resume (docs/options.md)."""
    fake_training(monkeypatch, tmp_path, steps=4, interrupted=sig)
    res = invoke("train", "--config", "tiny-synthetic", "--workdir", tmp_path, "--name", "r")
    assert res.exit_code == 128 + getattr(signal, sig) == {"SIGINT": 130, "SIGTERM": 143}[sig]
    assert "stopped at step 4" in res.output and "--resume" in res.output
    assert "optimizer steps" not in res.output  # no summary table of a finished run


def test_only_rank_0_prints_the_summary(monkeypatch, tmp_path):
    fake_training(monkeypatch, tmp_path, is_main=False)
    res = invoke("train", "--config", "tiny-synthetic", "--workdir", tmp_path, "--name", "r")
    assert res.exit_code == 0, res.output
    assert "leap train:" not in res.output and "optimizer steps" not in res.output


def test_a_paused_run_says_so_and_a_finished_one_does_not(monkeypatch, tmp_path):
    """--stop-after: the summary says `paused at step N of M`, continue with --resume (docs/train.md)."""
    fake_training(monkeypatch, tmp_path, steps=4, total=10)
    res = invoke("train", "--config", "tiny-synthetic", "--workdir", tmp_path, "--name", "r", "--stop-after", 4)
    assert res.exit_code == 0, res.output
    assert "4 of 10" in res.output and "paused at step 4 of 10" in res.output
    fake_training(monkeypatch, tmp_path, steps=10, total=10)
    res = invoke("train", "--config", "tiny-synthetic", "--workdir", tmp_path, "--name", "r")
    assert res.exit_code == 0, res.output
    assert "paused at" not in res.output and "(--stop-after)" not in res.output and "10 of 10" not in res.output


def test_stop_after_a_run_has_passed_says_it_trains_nothing(monkeypatch, tmp_path):
    """--stop-after counts from the run's start, also on --resume: a run at step N already says so."""
    for at, says in ((4, True), (3, False)):
        fake_training(monkeypatch, tmp_path, steps=at, total=10, start_step=at)
        res = invoke("train", "--config", "tiny-synthetic", "--workdir", tmp_path, "--name", "r", "--resume",
                     "--stop-after", 4)
        assert res.exit_code == 0, res.output
        assert ("the run is at step" in res.output) is says, res.output


def test_a_resumed_run_says_where_it_resumed_and_a_finished_one_that_it_is_finished(monkeypatch, tmp_path):
    fake_training(monkeypatch, tmp_path, steps=10, total=10, start_step=10)
    res = invoke("train", "--config", "tiny-synthetic", "--workdir", tmp_path, "--name", "r", "--resume")
    assert "at step 10 of 10: the run is finished" in res.output, res.output
    fake_training(monkeypatch, tmp_path, steps=10, total=10, start_step=5)
    res = invoke("train", "--config", "tiny-synthetic", "--workdir", tmp_path, "--name", "r", "--resume")
    assert "at step 5 of 10 (epoch 2 of 2" in res.output and "finished" not in res.output, res.output


def test_a_finished_run_resumed_gives_its_last_validation_from_metrics_jsonl(monkeypatch, tmp_path):
    """No validation runs on such a resume: the summary gives the last one's figures, marked with their step."""
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in (
        {"split": "val", "step": 5, "verb_top1": 11.0, "noun_top1": 12.0, "action_top1": 13.0, "loss": 2.0},
        {"split": "train", "step": 8, "loss": 1.5, "verb_top1": 99.0},
        {"split": "val", "step": 10, "verb_top1": 21.0, "noun_top1": 22.0, "action_top1": 23.0, "loss": 1.0},
        {"split": "val", "step": 12, "verb_top1": 31.0, "noun_top1": 32.0, "action_top1": 33.0, "loss": 0.5},
    )) + "\n")
    fake_training(monkeypatch, tmp_path, steps=10, total=10, start_step=10, best_metric=23.0)
    res = invoke("train", "--config", "tiny-synthetic", "--workdir", tmp_path, "--name", "r", "--resume")
    assert res.exit_code == 0, res.output
    assert "val verb_top1 (step 10)" in res.output and "21.00" in res.output, res.output
    assert "31.00" not in res.output and "99.00" not in res.output
    assert train_cmd._last_validation(run / "metrics.jsonl", 10)["step"] == 10
    assert train_cmd._last_validation(run / "metrics.jsonl", 9)["step"] == 5
    assert train_cmd._last_validation(run / "metrics.jsonl", 4) == {}
    assert train_cmd._last_validation(run / "absent.jsonl", 10) == {}


def test_the_summary_names_what_picked_best_pt(monkeypatch, tmp_path):
    """Recognition: action top-1; anticipation: action mt5r; a run that never validated: '-'."""
    fake_training(monkeypatch, tmp_path, best_key="action_mt5r", best_metric=7.5,
                  last_eval={"verb_top1": 1.0, "action_mt5r": 7.5, "step": 10})
    res = invoke("train", "--config", "tiny-synthetic", "--workdir", tmp_path, "--name", "r")
    assert "best val action mt5r" in res.output and "7.50" in res.output, res.output
    assert "(step" not in res.output  # figures of this run's own validation are not marked with a step
    fake_training(monkeypatch, tmp_path, best_metric=-1.0)
    res = invoke("train", "--config", "tiny-synthetic", "--workdir", tmp_path, "--name", "r")
    row = next(line for line in res.output.splitlines() if "best val action top-1" in line)
    assert row.rstrip(" │|").endswith("-"), res.output
    fake_training(monkeypatch, tmp_path, best_metric=0.0)  # a figure of 0 is a figure
    res = invoke("train", "--config", "tiny-synthetic", "--workdir", tmp_path, "--name", "r")
    row = next(line for line in res.output.splitlines() if "best val action top-1" in line)
    assert "0.00" in row, res.output


def test_a_model_section_error_names_the_config_file(monkeypatch, tmp_path):
    def main(cfg, **kw):
        raise LeapError("model.options.decoder_dim: must divide", record="model", fix="change it")

    monkeypatch.setattr("leap_cli.train.loop.main", main)
    cfg = tmp_path / "mine.yaml"
    cfg.write_text("base: tiny-synthetic\n")
    res = invoke("train", "--config", cfg, "--workdir", tmp_path)
    assert isinstance(res.exception, LeapError) and str(res.exception.path) == str(cfg) and res.exit_code != 0


# ------------------------------------------------------------------------------------------------------- evaluate


def test_submit_refuses_an_unknown_task_before_reading_anything(tmp_path):
    """Writing (the scores file is not even there) and --check alike: the task first."""
    for args in (("--scores", tmp_path / "absent.pt", *SLS), ("--check", tmp_path / "absent.zip")):
        res = invoke("submit", "--task", "detection", "--workdir", tmp_path, *args)
        assert "unknown task 'detection'" in refusal(res) and res.exit_code != 0


def test_evaluate_refuses_an_unknown_task_before_reading_anything(tmp_path):
    res = invoke("evaluate", "--split", "val", "--task", "detection", "--scores", tmp_path / "absent.pt")
    assert "unknown task 'detection'" in refusal(res) and res.exit_code != 0


@pytest.mark.parametrize("given,says", [
    ("bets.pt", "checkpoint file not found"),          # a .pt name: a missing file, not an unknown word
    ("older/last", "checkpoint file not found"),       # a path: a missing file
    ("bets", "is none of best, last or a checkpoint file"),
])
def test_evaluate_says_what_is_wrong_with_a_checkpoint(tmp_path, given, says):
    res = invoke("evaluate", "--split", "val", "--checkpoint", given, "--workdir", tmp_path)
    assert says in refusal(res)


def test_evaluate_refuses_a_file_as_run_and_a_checkpoint_in_no_run_without_out(tmp_path):
    (tmp_path / "copied.pt").write_bytes(b"x")
    res = invoke("evaluate", "--split", "val", "--run", tmp_path / "copied.pt", "--workdir", tmp_path)
    assert "--run takes a run directory" in refusal(res) and "--checkpoint" in res.exception.fix
    res = invoke("evaluate", "--split", "val", "--checkpoint", tmp_path / "copied.pt", "--workdir", tmp_path)
    assert "has no run to write its scores into" in refusal(res) and "--out" in res.exception.fix


def fake_inference(monkeypatch, *, ids=None, task="recognition", fail=None):
    """Replace the model's inference (`evaluate_run`): record its arguments, write scores.pt into the folder it
    was given, return them as the real one does."""
    calls = []

    def evaluate_run(run, split, *, workdir, checkpoint, out, task=None, **kw):
        calls.append({"run": Path(run), "split": split, "workdir": Path(workdir), "checkpoint": checkpoint,
                      "out": Path(out), "task": task})
        if fail is not None:
            raise fail
        if split == "test":
            s = _test_scores(ids=ids or TEST_IDS)
            names, verb, noun = s["narration_id"], s["verb_output"], s["noun_output"]
        else:
            names, verb, noun = _val_scores()
        meta = {"split": split, "task": task or "recognition", "checkpoint": "best.pt", "run": str(run)}
        Path(out).mkdir(parents=True, exist_ok=True)
        save_scores(Path(out) / "scores.pt", names, verb, noun, meta=meta)
        return load_scores(Path(out) / "scores.pt"), Path(out) / "scores.pt"

    monkeypatch.setattr("leap_cli.evaluate.inference.evaluate_run", evaluate_run)
    return calls


def make_run(work: Path, name: str) -> Path:
    run = work / "runs" / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.pt").write_bytes(b"x")
    return run


def test_evaluate_without_run_takes_the_work_directorys_only_trained_run(monkeypatch, tmp_path, ann_dir):
    """The work directory's only run (a folder with checkpoints/), said on the first line; none: refused."""
    calls = fake_inference(monkeypatch)
    res = invoke("evaluate", "--split", "val", "--workdir", tmp_path, "--device", "cpu")
    assert "nothing to evaluate" in refusal(res) and not calls
    (tmp_path / "runs" / "notes").mkdir(parents=True)  # no checkpoints/: not a run
    run = make_run(tmp_path, "only")
    res = invoke("evaluate", "--split", "val", "--workdir", tmp_path, "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[0] == f"run: {run} (the only run in {tmp_path / 'runs'})"
    assert calls[0]["run"] == run and calls[0]["out"] == run / "eval" / "val"
    assert json.loads((run / "eval" / "val" / "metrics.json").read_text())["split"] == "val"
    make_run(tmp_path, "other")
    res = invoke("evaluate", "--split", "val", "--workdir", tmp_path, "--device", "cpu")
    assert "holds 2 runs" in refusal(res) and len(calls) == 1


def test_evaluate_a_run_path_sets_the_work_directory_only_where_it_exists(monkeypatch, tmp_path, ann_dir):
    """--run X/runs/NAME that exists: the work directory X; else the default leap-work, where runs/NAME is
    looked up (docs/evaluate-submit.md)."""
    calls = fake_inference(monkeypatch)
    run = make_run(tmp_path, "tiny")
    res = invoke("evaluate", "--split", "validation", "--run", run, "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert calls[-1]["workdir"] == tmp_path and calls[-1]["split"] == "val"  # (validation: val's alias)
    assert (run / "eval" / "val" / "metrics.json").is_file()
    elsewhere = tmp_path / "cwd"
    default = elsewhere / DEFAULT_WORKDIR
    make_run(default, "tiny")
    ann = default / "kitchen" / "annotations"
    ann.parent.mkdir(parents=True)
    ann.symlink_to(ann_dir)
    monkeypatch.chdir(elsewhere)  # runs/tiny is not here: it is the default work directory's
    res = invoke("evaluate", "--split", "val", "--run", "runs/tiny", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert calls[-1]["workdir"] == DEFAULT_WORKDIR and calls[-1]["run"] == DEFAULT_WORKDIR / "runs" / "tiny"


def test_evaluate_checkpoint_files_and_out(monkeypatch, tmp_path, ann_dir):
    """A file under runs/NAME/checkpoints/ implies --run; one of another run than --run's is refused unless --out
    is given; a file in no run is scored into --out; --out leaves the run's eval/SPLIT alone."""
    calls = fake_inference(monkeypatch)
    a, b = make_run(tmp_path, "a"), make_run(tmp_path, "b")
    base = ["evaluate", "--split", "val", "--workdir", tmp_path, "--device", "cpu"]
    res = invoke(*base, "--checkpoint", a / "checkpoints" / "best.pt")
    assert res.exit_code == 0, res.output
    assert calls[-1]["run"] == a and calls[-1]["out"] == a / "eval" / "val"
    res = invoke(*base, "--checkpoint", a / "checkpoints" / "best.pt", "--run", b)
    assert "is run" in refusal(res) and "not --run" in refusal(res) and not (b / "eval").exists()
    res = invoke(*base, "--checkpoint", a / "checkpoints" / "best.pt", "--run", b, "--out", tmp_path / "trial")
    assert res.exit_code == 0, res.output
    assert calls[-1]["run"] == b and calls[-1]["out"] == tmp_path / "trial" and not (b / "eval").exists()
    assert (tmp_path / "trial" / "metrics.json").is_file()
    loose = tmp_path / "copied" / "x.pt"
    loose.parent.mkdir()
    loose.write_bytes(b"x")
    res = invoke(*base, "--checkpoint", loose, "--out", tmp_path / "loose-out")
    assert res.exit_code == 0, res.output
    assert calls[-1]["run"] == loose.parent and calls[-1]["out"] == tmp_path / "loose-out"
    assert (tmp_path / "loose-out" / "metrics.json").is_file()


def test_a_refused_evaluation_leaves_no_folder_it_made(monkeypatch, tmp_path, ann_dir):
    calls = fake_inference(monkeypatch, fail=LeapError("shards of another task"))
    run = make_run(tmp_path, "r")
    res = invoke("evaluate", "--split", "val", "--run", run, "--device", "cpu", "--out", tmp_path / "new" / "deeper")
    assert "shards of another task" in refusal(res) and calls
    assert not (tmp_path / "new").exists() and not (tmp_path / "new" / "deeper.lock").exists()
    res = invoke("evaluate", "--split", "val", "--run", run, "--device", "cpu")
    assert "shards of another task" in refusal(res)
    assert not (run / "eval").exists()


def test_evaluate_reads_the_labels_before_the_model_runs_on_train_too(monkeypatch, tmp_path, ann_dir):
    """`train` is scored as val is: its labels are read first (here there are none: refused before any scoring)."""
    calls = fake_inference(monkeypatch)
    run = make_run(tmp_path, "r")
    res = invoke("evaluate", "--split", "train", "--run", run, "--device", "cpu")
    assert "EPIC_100_train.csv" in refusal(res) and not calls


def test_the_next_command_after_a_test_evaluation(monkeypatch, tmp_path, ann_dir):
    """--split test ends with `leap submit` with the --data, --annotations and --workdir given, and
    --sls-pt PT --sls-tl TL --sls-td 3 (docs/evaluate-submit.md)."""
    fake_inference(monkeypatch)
    run = make_run(tmp_path, "r")
    res = invoke("evaluate", "--split", "test", "--run", run, "--device", "cpu", "--annotations", ann_dir)
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if "Next: " in x)
    args = shlex.split(line.split("Next: ", 1)[1])
    assert args == ["leap", "submit", "--scores", str(run / "eval" / "test" / "scores.pt"), "--task", "recognition",
                    "--annotations", str(ann_dir), "--workdir", str(tmp_path), "--sls-pt", "PT", "--sls-tl", "TL",
                    "--sls-td", "3"]
    assert "ROOT" not in res.output
    assert not (run / "eval" / "test" / "metrics.json").exists()  # no labels: scores only


def test_the_next_command_asks_for_the_data_root_where_submit_would_not_find_it(monkeypatch, tmp_path):
    fake_inference(monkeypatch)
    run = make_run(tmp_path, "r")  # (no kitchen/annotations in the work directory)
    res = invoke("evaluate", "--split", "test", "--run", run, "--device", "cpu")
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if "Next: " in x)
    args = shlex.split(line.split("Next: ", 1)[1])
    assert args[args.index("--data") + 1] == "ROOT" and "--annotations" not in args
    assert "ROOT: the data set root holding annotations/" in res.output


def test_submit_command_text():
    cmd = evaluate_cmd._submit_command
    s = Path("w/runs/r/eval/test/scores.pt")
    assert shlex.split(cmd(s, "anticipation", DEFAULT_WORKDIR, Path("/d"), None)) == [
        "leap", "submit", "--scores", str(s), "--task", "anticipation", "--data", "/d", "--sls-pt", "PT",
        "--sls-tl", "TL", "--sls-td", "3"]
    both = shlex.split(cmd(s, "recognition", Path("my work"), Path("/d"), Path("/a b")))
    assert both[both.index("--data") + 1] == "/d" and both[both.index("--annotations") + 1] == "/a b"
    assert both[both.index("--workdir") + 1] == "my work"


def test_a_test_evaluation_submit_would_refuse_says_so_instead_of_the_next_command(monkeypatch, tmp_path, ann_dir):
    """Exit 0 (the scores are written), submit's refusal printed, no `Next:` command."""
    fake_inference(monkeypatch, ids=TEST_IDS[:2])  # a test segment without scores
    run = make_run(tmp_path, "r")
    res = invoke("evaluate", "--split", "test", "--run", run, "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "leap submit would refuse them" in res.output and "Next:" not in res.output
    assert (run / "eval" / "test" / "scores.pt").is_file()


def test_a_test_evaluation_without_the_test_annotations_gives_the_next_command(monkeypatch, tmp_path, ann_dir):
    """Where the test split's annotations are not found here, submit is given them: the next command is printed."""
    fake_inference(monkeypatch)
    (ann_dir / "EPIC_100_test_timestamps.csv").unlink()
    run = make_run(tmp_path, "r")
    res = invoke("evaluate", "--split", "test", "--run", run, "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "Next: leap submit" in res.output and "would refuse" not in res.output


def scores_file(path: Path, ids=None, task=None) -> Path:
    names, verb, noun = _val_scores()
    keep = [i for i, n in enumerate(names) if ids is None or n in ids]
    save_scores(path, [names[i] for i in keep], verb[keep], noun[keep], meta={"task": task} if task else {})
    return path


def test_evaluate_scores_file_metrics_path_and_task(tmp_path, ann_dir):
    """Default: next to the file, NAME.metrics.json; NAME.TASK.metrics.json when --task is not the task the file
    holds (recognition when it says none); --out DIR: DIR/metrics.json, also with --run; --run alone: the run's
    eval/SPLIT for its own scores.pt only (test_eval_submit)."""
    s = scores_file(tmp_path / "other.pt")
    base = ["evaluate", "--split", "val", "--scores", s, "--workdir", tmp_path]
    res = invoke(*base)
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "other.metrics.json").read_text())
    assert m["task"] == "recognition" and "recognition" in m
    res = invoke(*base, "--task", "Anticipation")
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "other.anticipation.metrics.json").read_text())
    assert m["task"] == "anticipation" and "anticipation" in m
    res = invoke(*base, "--task", "recognition", "--split", "VAL")
    assert res.exit_code == 0 and not (tmp_path / "other.recognition.metrics.json").exists(), res.output
    run = make_run(tmp_path, "r")
    res = invoke(*base, "--run", run, "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o" / "metrics.json").is_file() and not (run / "eval").exists()
    (tmp_path / "other.metrics.json").unlink()
    res = invoke(*base, "--run", run)  # another file's: beside it, never beside the run's own scores.pt
    assert res.exit_code == 0 and not (run / "eval" / "val" / "metrics.json").exists(), res.output
    assert (tmp_path / "other.metrics.json").is_file()


def test_evaluate_refuses_to_score_test_scores(tmp_path, ann_dir):
    s = scores_file(tmp_path / "s.pt")
    res = invoke("evaluate", "--split", "test", "--scores", s, "--workdir", tmp_path)
    assert "the test split has no labels to score against" in refusal(res) and "leap submit" in res.exception.fix
    assert not list(tmp_path.glob("*.metrics.json"))


def test_segments_without_scores_are_counted_and_noted_for_anticipation(tmp_path, ann_dir):
    s = scores_file(tmp_path / "part.pt", ids=[n for n, *_ in VAL[:3]])
    base = ["evaluate", "--split", "val", "--scores", s, "--workdir", tmp_path]
    res = invoke(*base)
    assert res.exit_code == 0, res.output
    assert "(1 not scored)" in res.output and "not comparable with published" not in res.output
    res = invoke(*base, "--task", "anticipation")
    assert res.exit_code == 0, res.output
    assert "note: 1 segment of val has no scores" in " ".join(res.output.split())


# --------------------------------------------------------------------------------------------------------- submit


def test_submit_check_refuses_the_options_that_write_a_zip(tmp_path, ann_dir):
    for extra, name in ((["--out", tmp_path / "o.zip"], "--out"), (["--with-actions"], "--with-actions"),
                        (["--sls-tl", "3"], "--sls-tl")):
        res = invoke("submit", "--check", tmp_path / "s.zip", "--workdir", tmp_path, *extra)
        assert f"{name} would be ignored" in refusal(res), extra
    assert not (tmp_path / "o.zip").exists()


def test_submit_takes_the_only_runs_test_scores_and_writes_the_default_zip(tmp_path, ann_dir):
    res = invoke("submit", "--workdir", tmp_path, *SLS)
    assert "nothing to submit" in refusal(res)
    s = _test_scores()
    a = tmp_path / "runs" / "a" / "eval"
    (a / "test").mkdir(parents=True)
    save_scores(a / "test" / "scores.pt", s["narration_id"], s["verb_output"], s["noun_output"])
    scores_file((tmp_path / "runs" / "b" / "eval" / "val").mkdir(parents=True) or
                tmp_path / "runs" / "b" / "eval" / "val" / "scores.pt")  # val scores: not a submission's
    res = invoke("submit", "--workdir", tmp_path, *SLS)
    assert res.exit_code == 0, res.output
    assert f"scores: {a / 'test' / 'scores.pt'} (the only test scores in" in res.output
    assert (tmp_path / "submission.zip").is_file()
    assert res.output.rstrip().splitlines()[-1] == f"{tmp_path / 'submission.zip'}: submission written"
    assert "none" in next(x for x in res.output.splitlines() if "action scores (--with-actions)" in x)
    res = invoke("submit", "--check", tmp_path / "submission.zip", "--workdir", tmp_path)
    assert res.exit_code == 0, res.output
    assert res.output.rstrip().splitlines()[-1] == f"{tmp_path / 'submission.zip'}: valid submission"


def test_submit_out_must_be_a_zip_in_any_case(tmp_path, ann_dir):
    s = _test_scores()
    save_scores(tmp_path / "t.pt", s["narration_id"], s["verb_output"], s["noun_output"])
    base = ["submit", "--scores", tmp_path / "t.pt", "--workdir", tmp_path, *SLS]
    res = invoke(*base, "--out", tmp_path / "sub.json")
    assert "is not a .zip" in refusal(res) and str(tmp_path / "sub.zip") in res.exception.fix
    res = invoke(*base, "--out", tmp_path / "SUB.ZIP")
    assert res.exit_code == 0 and (tmp_path / "SUB.ZIP").is_file(), res.output


@pytest.mark.parametrize("drop", ["--sls-pt", "--sls-tl", "--sls-td"])
def test_submit_requires_every_supervision_level(tmp_path, ann_dir, drop):
    s = _test_scores()
    save_scores(tmp_path / "t.pt", s["narration_id"], s["verb_output"], s["noun_output"])
    levels = {"--sls-pt": "0", "--sls-tl": "4", "--sls-td": "3"}
    del levels[drop]
    res = invoke("submit", "--scores", tmp_path / "t.pt", "--workdir", tmp_path,
                 *[x for kv in levels.items() for x in kv])
    assert refusal(res).startswith(f"{drop} not given") and not (tmp_path / "submission.zip").exists()


def test_submit_with_actions_adds_100_action_scores_per_segment(tmp_path, ann_dir):
    """--with-actions (anticipation): exactly 100 "verb,noun" action scores per segment; the table says so."""
    from leap_cli import submit as sub

    # 11 verb and 10 noun classes: 110 (verb, noun) pairs, enough for 100 actions
    (ann_dir / "EPIC_100_verb_classes.csv").write_text(
        "id,key,instances,category\n" + "".join(f"{i},v{i},\"['v{i}']\",c\n" for i in range(11)))
    (ann_dir / "EPIC_100_noun_classes.csv").write_text(
        "id,key,instances,category\n" + "".join(f"{i},n{i},\"['n{i}']\",c\n" for i in range(10)))
    s = _test_scores(n_verbs=11, n_nouns=10)
    save_scores(tmp_path / "t.pt", s["narration_id"], s["verb_output"], s["noun_output"],
                meta={"task": "anticipation"})
    res = invoke("submit", "--scores", tmp_path / "t.pt", "--workdir", tmp_path, "--with-actions", *SLS)
    assert res.exit_code == 0, res.output
    doc = sub.read_submission(tmp_path / "submission.zip")
    assert doc["challenge"] == "action_anticipation"
    assert sorted(doc["results"]) == sorted(TEST_IDS)
    assert all(len(r["action"]) == 100 for r in doc["results"].values())
    assert "100 per segment" in next(x for x in res.output.splitlines() if "action scores (--with-actions)" in x)


def test_submit_check_does_not_ignore_task_without_a_word(tmp_path, ann_dir):
    """`--check ZIP --task T` checks that the zip is T's challenge (a recognition zip was "valid" for anticipation)."""
    s = _test_scores()
    save_scores(tmp_path / "t.pt", s["narration_id"], s["verb_output"], s["noun_output"])
    res = invoke("submit", "--scores", tmp_path / "t.pt", "--workdir", tmp_path, *SLS)
    assert res.exit_code == 0, res.output
    res = invoke("submit", "--check", tmp_path / "submission.zip", "--workdir", tmp_path, "--task", "anticipation")
    assert "submission.zip: a valid action_recognition submission, not the action_anticipation" in refusal(res)
    res = invoke("submit", "--check", tmp_path / "submission.zip", "--workdir", tmp_path, "--task", "Recognition")
    assert res.exit_code == 0 and "valid submission" in res.output


def test_a_file_named_best_in_the_current_folder_is_not_the_default_checkpoint(monkeypatch, tmp_path, ann_dir):
    """The default --checkpoint best is the run's best checkpoint, whatever the current folder holds (a file named
    best there refused the evaluation as "a checkpoint outside a run's checkpoints/ folder")."""
    calls = fake_inference(monkeypatch)
    run = make_run(tmp_path, "r")
    here = tmp_path / "here"
    here.mkdir()
    (here / "best").write_text("notes\n")
    monkeypatch.chdir(here)
    res = invoke("evaluate", "--split", "val", "--workdir", tmp_path, "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert calls[-1]["run"] == run and calls[-1]["checkpoint"] == "best"


def test_submit_checks_the_supervision_levels_before_it_reads_the_scores(tmp_path, ann_dir):
    """A level outside 0-5 is said at once, before a (large) scores file is read: here one that is not there."""
    res = invoke("submit", "--scores", tmp_path / "absent.pt", "--workdir", tmp_path, "--sls-pt", "0",
                 "--sls-tl", "4", "--sls-td", "9")
    assert refusal(res).startswith("--sls-td is 9; supervision levels are integers from 0 to 5")
