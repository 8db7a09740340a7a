"""``leap demo``: the whole pipeline on the synthetic kitchen, from video to a challenge submission."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.markup import escape
from rich.rule import Rule
from rich.table import Table

from leap_cli.common import workdir_option, workers_option
from leap_cli.io import shell_word
from leap_cli.progress import output_console

console = output_console()


def register(app: typer.Typer) -> None:
    app.command("demo", help="Run every stage on the synthetic kitchen, from video to submission.zip, and summarise; "
                             "every file goes under --workdir (kitchen/, descriptors/, programs/, shards/, runs/).")(demo)


def demo(
    workdir: Path = typer.Option(Path("leap-work"), "--workdir", callback=workdir_option, help="Work directory for every stage's files."),
    videos: int = typer.Option(8, "--videos", min=3, help="Videos in the synthetic kitchen (3 or more: one is the "
                                                         "test split)."),
    segments: int = typer.Option(48, "--segments", min=2, help="Action segments per video."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic kitchen."),
    config: Path = typer.Option(None, "--config", help="Training config (default tiny-synthetic)."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="Override a training config key, e.g. --set train.epochs=2 (repeatable)."),
    workers: int = typer.Option(1, "--workers", min=1, callback=workers_option, help="Worker processes for extract and build-shards."),
    frames: int = typer.Option(8, "--frames", min=1, help="Frames stored per clip in the shards."),
    short_side: int = typer.Option(80, "--short-side", min=16, help="Short side of the stored frames in pixels."),
    ablate: bool = typer.Option(False, "--ablate", help="Also run `leap ablate` (the program-supervision ablation, "
                                                        "~20 min on 2 CPU cores) into WORKDIR/ablation and show its table."),
    force: bool = typer.Option(False, "--force", help="Start every stage's output in WORKDIR over (a rerun with other "
                                                      "--videos/--segments/--seed/--config/--set/--frames/--short-side "
                                                      "is refused "
                                                      "without it)."),
) -> None:
    from leap_cli.demo import DemoConfig, check_demo, collect, plan, run_stage
    from leap_cli.io import OutputLock

    cfg = DemoConfig(workdir=workdir, videos=videos, segments=segments, seed=seed, config=config,
                     train_overrides=tuple(set_), workers=workers, frames=frames, short_side=short_side,
                     ablate=ablate, force=force)
    t0 = time.perf_counter()
    timings = []
    # one demo per work directory at once: a second one ran every stage beside the first (its --force deleted the
    # first's records), and failed at train with advice for flags the demo chooses itself
    with OutputLock(Path(workdir), lock_path=Path(workdir) / "demo.run.lock",
                    fix="another leap demo runs in it: wait for it to finish, or give this one another --workdir"):
        cfg = check_demo(cfg)
        for stage in plan(cfg):
            console.print(Rule(f"[bold]leap {stage.name}[/]"))
            run_stage(stage)
            timings.append((stage.name, stage.seconds, stage.reused))
    table = Table(title=f"LEAP demo: every stage ({time.perf_counter() - t0:.0f} s in all)", show_lines=False)
    table.add_column("stage")
    table.add_column(f"output (in {escape(str(workdir))})", overflow="fold")
    table.add_column("figures", overflow="fold")
    for name, out, figures in collect(cfg):
        table.add_row(escape(name), escape(out), escape(figures))
    console.print(Rule())
    console.print(table)
    console.print("time per stage: " + ", ".join(f"{n} {s:.0f}s" + (" (done before)" if reused else "")
                                                 for n, s, reused in timings))
    table_md = workdir / "ablation" / "ablation.md"
    if ablate and table_md.exists():
        console.print(Rule("[bold]the program-supervision ablation (validation, %)[/]"))
        console.print(escape(table_md.read_text(encoding="utf-8")))
    look = f"(look at a program: leap show NARRATION_ID --workdir {escape(shell_word(workdir))} --html page.html)"
    if any(name == "submit" for name, *_ in timings):
        console.print(f"[bold green]submission:[/] {escape(str(workdir / 'submission.zip'))}  {look}")
    else:  # model.pretrained: the pre-training level of those weights is the user's to declare
        console.print("[yellow]no submission[/]: with model.pretrained the demo cannot declare the weights' "
                      "supervision level; run `leap submit --sls-pt N --sls-tl 4 --sls-td 3` yourself "
                      f"(docs/evaluate-submit.md)  {look}")
