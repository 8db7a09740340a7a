"""``leap evaluate``: score a trained run (multi-view inference over the shards) or an existing scores file
with EPIC-KITCHENS-100's metrics."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from leap_cli.common import (DEFAULT_WORKDIR, check_task, counted, lowercase, only_one, resolve_run, same_file,
                             workdir_option)
from leap_cli.io import shell_word
from leap_cli.progress import output_console, stage_progress

console = output_console()


def register(app: typer.Typer) -> None:
    app.command("evaluate", help="Run a trained model over the shards of a split (views averaged) and write "
                                 "runs/NAME/eval/SPLIT/scores.pt + metrics.json (or --out DIR), or score an existing "
                                 "--scores file (leap's or EPIC's official .pkl/.pt) against the annotations.")(evaluate)


def _table(result: dict) -> Table:
    from leap_cli.evaluate.scoring import metric_rows

    table = Table(title=f"{result['task']} on {result['split']}: {result['segments']} segments"
                        + (f" ({result['not_scored']} not scored)" if result.get("not_scored") else ""))
    for col in ("group", "subset", "metric", "%"):
        table.add_column(col, justify="right" if col == "%" else "left")
    for row in metric_rows(result):
        table.add_row(*row)
    return table


def _submit_command(scores: Path, task: str, workdir: Path, data: Path | None, annotations: Path | None,
                    provenance: dict | None = None) -> str:
    """The `leap submit` of these scores with the options given here that submit reads too (the annotations
    and the work directory), quoted for the shell, and the supervision levels: TD 3 where the run trained on the
    train split, 4 on train and val (its ``provenance``), PT and TL left for the user to fill in (they depend on
    the run's weights and targets)."""
    from leap_cli.io import shell_word

    args = ["leap", "submit", "--scores", shell_word(scores), "--task", task]
    for option, value in (("--data", data), ("--annotations", annotations)):
        if value is not None:
            args += [option, shell_word(value)]
    if data is None and annotations is None and not (Path(workdir) / "kitchen" / "annotations").is_dir():
        args += ["--data", "ROOT"]  # submit reads the test split's annotations: not where it would look by default
    if Path(workdir) != DEFAULT_WORKDIR:
        args += ["--workdir", shell_word(workdir)]
    train = (provenance or {}).get("train") if isinstance(provenance, dict) else None
    splits = set(str(train.get("split") or "").split("+")) if isinstance(train, dict) else set()
    return " ".join(args + ["--sls-pt", "PT", "--sls-tl", "TL", "--sls-td", "4" if {"train", "val"} <= splits
                            else "3"])


def _submit_refusal(scores: dict, task: str, workdir: Path, data: Path | None, annotations: Path | None,
                    source: Path) -> str | None:
    """Why `leap submit` would refuse these test scores (its own checks), or None; None too where the test
    split's annotations are not found here (submit is then given them)."""
    from leap_cli.epic.annotations import open_annotations
    from leap_cli.errors import LeapError
    from leap_cli.submit import check_submittable

    try:
        ann = open_annotations(workdir, data, annotations)
        if not ann.has_split("test"):
            return None
    except LeapError:
        return None
    try:
        check_submittable(scores, ann, task, str(source))
    except LeapError as e:
        return e.one_line()
    return None


def evaluate(
    split: str = typer.Option(..., "--split", help="val (metrics) or test (scores only, for `leap submit`); train "
                                                    "is scored too (a check of fit)."),
    run: Path = typer.Option(None, "--run", help="Run directory written by `leap train` (runs/NAME, also looked "
                                                 "up under --workdir; a path X/runs/NAME also sets --workdir X; "
                                                 "default: the work directory's only run)."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best, last, or a checkpoint file (a file under "
                                                                "runs/NAME/checkpoints/ implies --run; one under "
                                                                "another run's is refused without --out)."),
    task: str = typer.Option(None, "--task", callback=lowercase, help="recognition or anticipation (default: the run's task, or the "
                                                  "scores file's, else recognition)."),
    scores: Path = typer.Option(None, "--scores", help="Score this existing file instead of running a model "
                                                       "(leap scores.pt, official .pkl/.pt results, or a challenge .json/.zip)."),
    temporal_views: int = typer.Option(1, "--temporal-views", min=1, help="Clips per segment (views are averaged)."),
    spatial_views: int = typer.Option(1, "--spatial-views", min=1, help="Crops per clip (1 centre, 3 left/centre/right; N evenly spaced)."),
    batch_size: int = typer.Option(None, "--batch-size", min=1, help="Segments per batch (default: the run's "
                                                                     "data.eval_batch_size)."),
    workers: int = typer.Option(0, "--workers", min=0, help="DataLoader worker processes reading the shards (at most one per CPU and per batch)."),
    device: str = typer.Option("auto", "--device", callback=lowercase, help="auto (cuda when available), cpu or cuda."),
    precision: str = typer.Option("auto", "--precision", callback=lowercase, help="auto (bf16 autocast on CUDA, fp32 on CPU), fp32, "
                                                               "bf16 or fp16; scores are stored in fp32."),
    compile: bool | None = typer.Option(None, "--compile/--no-compile", help="torch.compile the model (default: "
                                        "the run's model.compile). The same scores, to float rounding; compiling "
                                        "takes minutes once per command, so it pays on a large split, not on a few "
                                        "segments."),
    shards: Path = typer.Option(None, "--shards", help="Shards folder (default WORKDIR/shards/SPLIT, anticipation: SPLIT-anticipation)."),
    out: Path = typer.Option(None, "--out", help="Folder for scores.pt and metrics.json (default "
                                                 "runs/NAME/eval/SPLIT, which --out leaves untouched; with --scores: "
                                                 "metrics.json only, default next to the file)."),
    data: Path = typer.Option(None, "--data", help="Dataset root holding annotations/ (default WORKDIR/kitchen)."),
    annotations: Path = typer.Option(None, "--annotations", help="Folder of EPIC's annotation CSVs (default "
                                                                "DATA/annotations)."),
    workdir: Path = typer.Option(None, "--workdir", callback=workdir_option, help="Work directory of the pipeline (default: X when --run "
                                                         "or the checkpoint is a path X/runs/NAME, else leap-work)."),
    allow_partial_load: bool = typer.Option(False, "--allow-partial-load", help="Evaluate a checkpoint whose weights "
                                            "do not all fit the model it describes (missing tensors stay at their "
                                            "initialisation; the default is an error)."),
) -> None:
    from leap_cli.common import normalize_split
    from leap_cli.errors import LeapError
    from leap_cli.epic.annotations import open_annotations
    from leap_cli.io import atomic_write_json, check_writable, remove_if_left_empty

    split = normalize_split(split)
    if task is not None:
        check_task(task)
    # best and last are names, whatever the current folder holds (a file there named best is ./best)
    named = checkpoint in ("best", "last")
    ckpt_file = Path(checkpoint)
    is_file = not named and ckpt_file.is_file()
    if scores is None and not named and not is_file:
        if ckpt_file.is_dir():
            raise LeapError("--checkpoint is a folder, not a checkpoint file", path=ckpt_file,
                            fix="give a file in it (checkpoints/best.pt or last.pt), or pass --run with it and "
                                "--checkpoint best or last")
        if ckpt_file.suffix in (".pt", ".pth", ".pyth") or len(ckpt_file.parts) > 1:
            raise LeapError("checkpoint file not found", path=ckpt_file,
                            fix="check the path (or pass --checkpoint best or last with --run runs/NAME)")
        raise LeapError(f"--checkpoint {checkpoint!r} is none of best, last or a checkpoint file",
                        fix="pass --checkpoint best, last or the path of a checkpoint .pt file")
    if run is not None and Path(run).is_file():
        raise LeapError("--run takes a run directory (runs/NAME), not a file", path=run,
                        fix=f"for a checkpoint file use --checkpoint {shell_word(run)} (with --out DIR when it is in no run)")
    # runs/NAME/checkpoints/x.pt -> runs/NAME
    own_run = ckpt_file.parent.parent if is_file and ckpt_file.parent.name == "checkpoints" else None
    if scores is None and run is None:
        run = own_run
    if scores is None and run is None and is_file:  # a checkpoint in no run: its scores go to --out
        if out is None:
            raise LeapError("a checkpoint outside a run's checkpoints/ folder has no run to write its scores into",
                            path=ckpt_file, fix="pass --out DIR for scores.pt and metrics.json")
        run = ckpt_file.parent
    if workdir is None:  # a run given as a path X/runs/NAME lives in the work directory X (its shards, its kitchen)
        in_runs = run is not None and run.parent.name == "runs" and run.is_dir()
        workdir = run.parent.parent if in_runs else DEFAULT_WORKDIR
    if scores is None and run is None:  # the work directory's one run (several: which one is for the user to say)
        runs = Path(workdir) / "runs"
        found = sorted(p for p in runs.iterdir() if (p / "checkpoints").is_dir()) if runs.is_dir() else []
        run = only_one(found, "runs", runs, fix="pass --run runs/NAME, or --scores FILE")
        if run is None:
            raise LeapError("nothing to evaluate", path=runs,
                            fix="pass --run runs/NAME (a trained run) or --scores FILE")
        console.print(escape(f"run: {run} (the only run in {runs})"), highlight=False)
    run_dir = resolve_run(run, workdir) if run is not None else None  # (a mistyped run is said at once too)
    # (torch: after the options and the run are checked, so that a usage error is said at once)
    from leap_cli.evaluate.scores import load_scores, scores_task
    from leap_cli.evaluate.scoring import evaluate_scores
    from leap_cli.train.distributed import pick_device

    ann = None
    if scores is not None:
        loaded = load_scores(scores)
        own = scores_task(loaded) or "recognition"  # what the file says it holds
        task = task or own
        if split == "test":
            raise LeapError("the test split has no labels to score against", path=scores,
                            fix="use `leap submit --scores FILE` for test scores, or --split val")
        # the run's eval/SPLIT for its own scores.pt, scored as the task it holds, only: other metrics there would
        # stand beside scores they do not describe
        own_folder = run_dir / "eval" / split if run_dir else None
        if own_folder is not None and not (same_file(scores, own_folder / "scores.pt") and task == own):
            own_folder = None
        metrics_path = out or own_folder
        # next to the file: scored as another task than its own, under a name of its own (it replaced the
        # metrics of the file's own task)
        metrics_path = metrics_path / "metrics.json" if metrics_path else scores.with_suffix(
            ".metrics.json" if task == own else f".{task}.metrics.json")
        source = str(scores)
    else:
        from leap_cli.evaluate.inference import ViewConfig, evaluate_run
        from leap_cli.evaluate.scoring import check_scorable

        if own_run is not None and out is None and own_run.resolve() != run_dir.resolve():
            raise LeapError(f"--checkpoint {checkpoint} is run {own_run}'s, not --run {run_dir}'s: its scores would "
                            f"replace {run_dir}/eval/{split}", fix="drop --run (the checkpoint's own run is used) "
                                                                  "or pass --out DIR")
        device = str(pick_device(device, option="--device", cpu_fix="--device cpu"))
        # where the scores and the metrics go, checked before the model runs (not after an hour of scoring); with
        # --out the run's own eval/SPLIT (what `leap submit` is pointed at) is not written
        dest = out if out is not None else run_dir / "eval" / split
        made = check_writable(dest, "--out" if out is not None else "--run (its eval/ folder), or pass --out",
                              files=("scores.pt", "metrics.json"))  # (removed again if it fails)
        try:
            if split != "test":  # the labels the scores will meet, read before the model runs (not after an hour)
                ann = open_annotations(workdir, data, annotations)
                ann.segments(split)
            views = ViewConfig(temporal_views, spatial_views)
            with stage_progress("scoring", TextColumn("[bold]scoring[/] {task.description}"), BarColumn(),
                                MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True) as bar:
                job = bar.add_task(f"{split} x{views.count} views", total=None)
                loaded, scores_path = evaluate_run(
                    run_dir, split, workdir=workdir, checkpoint=checkpoint, task=task, shards=shards, views=views,
                    batch_size=batch_size, workers=workers, device=device, precision=precision,
                    allow_partial=allow_partial_load, compile=compile, out=dest,
                    on_start=lambda n: bar.update(job, total=n), on_batch=lambda n: bar.advance(job, n),
                    check=None if split == "test" else lambda args, ids, source, folder: check_scorable(
                        ann, split, ids, (args["num_verbs"], args["num_nouns"]), str(source), str(folder)))
        except BaseException:  # a refused evaluation leaves none of the folders it made (nor their locks)
            remove_if_left_empty(made)
            raise
        task = loaded["meta"]["task"]
        console.print(escape(f"wrote {scores_path} ({counted(len(loaded['narration_id']), 'segment')}, "
                             f"{counted(views.count, 'view')}, "
                             f"checkpoint {loaded['meta']['checkpoint']})"), highlight=False)
        if split == "test":
            refusal = _submit_refusal(loaded, task, workdir, data, annotations, scores_path)
            if refusal:  # (not "Next: leap submit" for scores it would refuse)
                console.print(escape(f"test split: no labels, scores only; leap submit would refuse them: {refusal}"),
                              style="yellow", highlight=False)
                return
            # soft_wrap: a long command is not broken by inserted newlines, so it pastes as printed
            command = _submit_command(scores_path, task, workdir, data, annotations, loaded["meta"].get("provenance"))
            console.print(escape(f"test split: no labels, scores only. Next: {command}"), highlight=False,
                          soft_wrap=True)
            console.print("(PT, TL: this model's supervision levels, see docs/evaluate-submit.md"
                          + ("; ROOT: the data set root holding annotations/" if " --data ROOT " in command else "")
                          + ")", highlight=False)
            return
        metrics_path = scores_path.parent / "metrics.json"
        source = str(scores_path)
    ann = ann or open_annotations(workdir, data, annotations)
    result = evaluate_scores(loaded, ann, split, task, source=source)
    atomic_write_json(metrics_path, result)
    console.print(_table(result))
    if result.get("not_scored") and task == "anticipation":
        n = result["not_scored"]
        console.print(escape(f"note: {counted(n, 'segment')} of {split} {'has' if n == 1 else 'have'} no scores: "
                             "EPIC's anticipation "
                             "evaluator refuses scores that lack any, so these figures are not comparable with "
                             "published ones"), style="yellow", highlight=False)
    console.print(escape(f"wrote {metrics_path}"), highlight=False)
