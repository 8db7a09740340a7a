"""``leap train``: train UniFormerV2 + program heads from the shards into ``{workdir}/runs/NAME``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from leap_cli.common import DEFAULT_WORKDIR, workdir_option
from leap_cli.progress import output_console, stage_progress
from leap_cli.report.terminal import printable

console = output_console()


def register(app: typer.Typer) -> None:
    app.command("train", help="Train the model on the shards (AdamW, cosine schedule, DDP under torchrun); "
                              "writes runs/NAME/ with config.yaml, provenance.json, checkpoints/{last,best}.pt, "
                              "metrics.jsonl. "
                              "The config keys (model, data, optim, loss, train) and what each does: docs/train.md; "
                              "an unknown key is refused with the valid ones listed.")(train)


def train(
    config: Path = typer.Option(..., "--config", "-c", help="Training config: a YAML file, or a bundled config by name (tiny-synthetic, uniformerv2-b16-epic, ...)."),
    overrides: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="Override a config key: --set optim.lr=3e-4 (repeatable)."),
    resume: bool = typer.Option(False, "--resume", help="Continue runs/NAME from checkpoints/last.pt exactly where it stopped."),
    workdir: Path = typer.Option(DEFAULT_WORKDIR, "--workdir", callback=workdir_option,
                                 help="Work directory: reads shards/train and shards/val (their -anticipation "
                                      "folders for data.task anticipation; data.train / data.val name others), "
                                      "writes runs/NAME."),
    name: str = typer.Option(None, "--name", help="Run name (default: the config file's stem; with --resume, a "
                                                  "run's own runs/NAME/config.yaml: NAME)."),
    no_program_loss: bool = typer.Option(False, "--no-program-loss", help="Ablation: train with L_CE only and no program heads (same as --set loss.program_loss=false)."),
    force: bool = typer.Option(False, "--force", "--overwrite", help="Start runs/NAME over (removes its checkpoints "
                                                                     "and metrics) instead of refusing."),
    allow_partial_load: bool = typer.Option(False, "--allow-partial-load", help="Load model.pretrained even when it does not fit the model (another weights family: fresh backbone tensors, another normalisation); the default is an error naming the preset to use."),
    stop_after: int = typer.Option(None, "--stop-after", min=1, help="Pause once the run has made this many optimizer steps in all (counted from its start, also on --resume; the schedule still spans the whole run); continue with --resume."),
) -> None:
    from leap_cli.errors import LeapError
    from leap_cli.train.config import load_config, parse_overrides

    flags = {"--no-program-loss": ("loss.program_loss", False)} if no_program_loss else {}
    flags.update({"--allow-partial-load": ("model.allow_partial_load", True)} if allow_partial_load else {})
    given = parse_overrides(overrides)
    for flag, (key, value) in flags.items():  # (the flag won without a word)
        if any(k == key and v is not value for k, v in given):
            raise LeapError(f"{flag} is --set {key}={str(value).lower()}, and a --set gives it another value",
                            fix="give one of the two")
    sets = list(overrides) + [f"{key}={str(value).lower()}" for key, value in flags.values()]
    cfg = load_config(config, sets)
    name = name or default_name(config, resume)
    progress = stage_progress("train", TextColumn("[bold]train[/]"), BarColumn(), MofNCompleteColumn(),
                              TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                              console=console)
    task = {"id": None, "clips": 0.0, "epochs": 0}  # (epochs are counted from 1 here, from 0 in metrics.jsonl)

    def on_start(info: dict) -> None:
        console.print(f"run [bold]{escape(info['run_dir'])}[/]: {info['parameters'] / 1e6:.2f}M parameters, "
                      f"{info['total_steps']} steps ({info['epochs']} epochs x {info['steps_per_epoch']}), "
                      f"{info['device']} x {info['world_size']}")
        if info.get("pretrained"):  # (what a model.pretrained load did was said only under -v)
            console.print(escape(f"pretrained weights: {info['pretrained']}"), highlight=False, soft_wrap=True)
        if info["start_step"] and info["start_step"] >= info["total_steps"]:  # (not "epoch 3 of 2")
            console.print(f"resumed from checkpoints/last.pt at step {info['start_step']} of {info['total_steps']}: "
                          "the run is finished")
        elif info["start_step"]:
            console.print(f"resumed from checkpoints/last.pt at step {info['start_step']} of {info['total_steps']} "
                          f"(epoch {info['start_epoch'] + 1} of {info['epochs']}, {info['start_batches']} of its "
                          "batches done)")
        progress.start()
        task["id"] = progress.add_task("steps", total=info["total_steps"], completed=info["start_step"], info="")
        task["epochs"], task["total"] = info["epochs"], info["total_steps"]
        if stop_after is not None and info["start_step"] >= stop_after and info["start_step"] < info["total_steps"]:
            console.print(f"[yellow]--stop-after {stop_after}[/]: the run is at step {info['start_step']} already "
                          "(--stop-after counts the run's steps from its start)")

    def on_step(rec: dict) -> None:
        if "clips_per_s" in rec:
            task["clips"] = rec["clips_per_s"]
        text = f"ep {rec['epoch'] + 1}/{task['epochs']} loss {rec['loss']:.3f} lr {rec['lr']:.2e} {task['clips']:.1f} clips/s"
        progress.update(task["id"], completed=rec["step"], info=text)

    def on_eval(rec: dict) -> None:
        if rec.get("n"):
            mt5r = f"  action mt5r {rec['action_mt5r']:.1f}" if "action_mt5r" in rec else ""
            # (a result: on stdout, above the bar where stdout is the terminal; progress lines are on stderr)
            console.print(f"val epoch {rec['epoch'] + 1}/{task['epochs']}: verb {rec['verb_top1']:.1f}  noun "
                          f"{rec['noun_top1']:.1f}  action {rec['action_top1']:.1f}{mt5r}  loss {rec['loss']:.3f}  "
                          f"(n={rec['n']})", highlight=False, soft_wrap=True)

    from leap_cli.train.loop import main  # (torch: after the options and the config are checked, so that a usage
    # error is said at once)

    try:
        result = main(cfg, workdir=workdir, name=name, resume=resume, stop_at_step=stop_after,
                      on_step=on_step, on_eval=on_eval, on_start=on_start, force=force)
    except LeapError as e:
        if e.record == "model" and e.path is None:  # the loop knows the section, this command the file
            raise LeapError(e.message, path=config, record="model", fix=e.fix) from None
        raise
    finally:
        progress.stop()
    if result.interrupted:
        import signal
        import sys

        if result.is_main:
            console.print(f"[yellow]{result.interrupted}[/]: stopped at step {result.steps}, "
                          f"{escape(str(result.run_dir / 'checkpoints' / 'last.pt'))} saved; continue with "
                          f"{_go_on(resume, force)}")
        sys.exit(128 + getattr(signal, result.interrupted))  # 130 for SIGINT, 143 for SIGTERM
    if not result.is_main:
        return
    table = Table(title=f"leap train: {printable(result.run_dir, one_line=True)}")
    table.add_column("item")
    table.add_column("value", justify="right")
    paused = task.get("total") is not None and result.steps < task["total"]  # (--stop-after)
    table.add_row("optimizer steps", f"{result.steps} of {task['total']}" if paused else str(result.steps))
    table.add_row("epochs", str(result.epochs))
    table.add_row("seconds", f"{result.seconds:.1f}")
    last_eval, at = result.last_eval, ""
    if not last_eval:  # a finished run resumed: no validation ran now; its last one, from metrics.jsonl
        last_eval = _last_validation(result.run_dir / "metrics.jsonl", result.steps)
        at = f" (step {last_eval['step']})" if last_eval else ""
    for key in ("verb_top1", "noun_top1", "action_top1", "action_mt5r", "loss"):
        if key in last_eval:
            table.add_row(f"val {key}{at}", f"{last_eval[key]:.2f}")
    best = {"action_mt5r": "action mt5r"}.get(result.best_key, "action top-1")  # what picked best.pt (also when
    # a finished run is resumed: no validation ran, last_eval is empty)
    table.add_row(f"best val {best}", "-" if result.best_metric < 0 else f"{result.best_metric:.2f}")
    table.add_row("checkpoints", str(result.run_dir / "checkpoints"))
    console.print(table)
    if result.provenance is not None:  # (model names are the records' text: control characters shown, not run)
        from leap_cli.programs.provenance import run_programs_text

        console.print(printable(f"trained on programs: {run_programs_text(result.provenance)}", one_line=True),
                      highlight=False, soft_wrap=True)
    if paused:
        console.print(escape(f"paused at step {result.steps} of {task['total']} (--stop-after): continue with "
                             f"{_go_on(resume, force)}, and a --stop-after past {result.steps} or none"),
                      highlight=False)


def _go_on(resume: bool, force: bool) -> str:
    """``common.rerun`` for a run that started (stopped or paused), from this command's own flags (not
    ``sys.argv``: the command may run in a process of another)."""
    from leap_cli.common import rerun

    # (a checkpoint is saved: the run has started)
    return rerun(command="train", args=["--resume"] * resume + ["--force"] * force, started=True)


def default_name(config: Path, resume: bool = False) -> str:
    """The run name a --config gives: with --resume, a run's own ``runs/NAME/config.yaml`` is NAME's (its resume
    hint's form: every run's config.yaml resumed a run named "config"); else the file's stem (a run's config used
    as a template, with --force, must not start that run over)."""
    path = Path(config)
    if resume and path.name == "config.yaml" and path.parent.parent.name == "runs":
        return path.parent.name
    return path.stem


def _last_validation(path: Path, step: int) -> dict:
    """The run's last validation record at or before ``step`` in its metrics.jsonl ({} if none or unreadable)."""
    from leap_cli.errors import LeapError
    from leap_cli.io import iter_jsonl

    last: dict = {}
    try:
        for _, rec in iter_jsonl(path):
            if isinstance(rec, dict) and rec.get("split") == "val" and int(rec.get("step", -1)) <= step:
                last = rec
    except (LeapError, OSError, TypeError, ValueError):
        return {}
    return last
