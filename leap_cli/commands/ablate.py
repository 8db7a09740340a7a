"""``leap ablate``: the program-supervision ablation on the synthetic kitchen (see ``leap_cli.train.ablate``)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from leap_cli.common import counted, lowercase, workdir_option
from leap_cli.progress import output_console
from leap_cli.train.ablate import AblateConfig

console = output_console()
_D = AblateConfig()  # the defaults live in one place


def register(app: typer.Typer) -> None:
    app.command("ablate", help="Train the tiny model with L_CE only, +L_T, +L_PC, both, and aggregation for "
                               "anticipation, over seeds and program sources (truth, offline, none) on the "
                               "synthetic kitchen; writes ablation.md and ablation.json in --workdir (30 runs at the "
                               "defaults, ~20 min on 2 CPU cores; a rerun reuses the finished runs).")(ablate)


def ablate(
    workdir: Path = typer.Option(Path("leap-work/ablation"), "--workdir", callback=workdir_option, help="Folder for the kitchen, shards, runs and the table."),
    seeds: int = typer.Option(len(_D.seeds), "--seeds", min=1, help="Seeds per cell (0..N-1)."),
    epochs: int = typer.Option(_D.epochs, "--epochs", min=1, help="Training epochs per recognition run."),
    anticipation_epochs: int = typer.Option(_D.anticipation_epochs, "--anticipation-epochs", min=1,
                                            help="Training epochs per anticipation run (three clips per sample)."),
    videos: int = typer.Option(_D.videos, "--videos", min=2, help="Kitchen videos."),
    segments: int = typer.Option(_D.segments_per_video, "--segments", "--segments-per-video", min=2,
                                 help="Kitchen segments per video (as demo-data --segments)."),
    sources: str = typer.Option(",".join(_D.sources), "--sources", callback=lowercase, help="Program sources, comma-separated: truth (the kitchen's "
                                  "true programs), offline (the offline generator's), none (no programs)."),
    no_anticipation: bool = typer.Option(False, "--no-anticipation", help="Recognition cells only."),
    anticipation_sources: str = typer.Option(",".join(_D.anticipation_sources or ("all",)), "--anticipation-sources", callback=lowercase, help="Program sources of the anticipation cells, comma-separated: truth, offline, or 'all' (every source with programs)."),
    span_frames: int = typer.Option(_D.span_frames, "--span-frames", min=1, help="Anticipation clips: source frames each clip spans."),
    config: str = typer.Option(_D.config, "--config", help="Training config (bundled name or YAML file)."),
    overrides: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="Override a config key of every run (repeatable)."),
) -> None:
    from leap_cli.train.ablate import CellInterrupted, plan_cells, run_ablation, unplanned_anticipation

    cfg = AblateConfig(workdir=workdir, videos=videos, segments_per_video=segments, seeds=tuple(range(seeds)),
                       epochs=epochs, anticipation_epochs=anticipation_epochs,
                       sources=tuple(s.strip() for s in sources.split(",") if s.strip()),
                       anticipation=not no_anticipation, span_frames=span_frames, config=config,
                       anticipation_sources=None if anticipation_sources == "all" else
                       tuple(s.strip() for s in anticipation_sources.split(",") if s.strip()),
                       **({"overrides": tuple(overrides)} if overrides else {}))

    def on_run(label: str, r: dict) -> None:
        figs = "  ".join(f"{k} {100 * v:.1f}" for k, v in r.items() if isinstance(v, float) and k != "seconds")
        took = f"reused: trained in {r['seconds']:.0f} s by an earlier run" if r.get("reused") else \
            f"{r['seconds']:.0f} s"
        console.print(f"{escape(label)}: {figs}  ({took})")

    # (the kitchen, the programs and the shards come first, ~40 s on a fresh folder, reused after)
    cells = len(plan_cells(cfg.sources, cfg.anticipation, cfg.anticipation_sources))
    console.print(escape(f"ablation in {workdir}: {counted(cells * len(cfg.seeds), 'run')} ({counted(cells, 'cell')} "
                         f"x {counted(len(cfg.seeds), 'seed')}) on a kitchen of {counted(cfg.videos, 'video')} of "
                         f"{counted(cfg.segments_per_video, 'segment')}; building or reusing the kitchen, programs "
                         "and shards first"), highlight=False)
    if missing := unplanned_anticipation(cfg):
        console.print(escape(f"note: no anticipation program cell: --anticipation-sources {','.join(missing)} "
                             f"{'is' if len(missing) == 1 else 'are'} not among --sources {','.join(cfg.sources)} "
                             f"(add --anticipation-sources all, or name some of the sources)"), highlight=False)
    try:
        summary = run_ablation(cfg, on_run=on_run)
    except CellInterrupted as e:  # one signal stops the whole ablation, not only the cell training then
        import signal
        import sys

        console.print(f"[yellow]{e.signal}[/]: ablation stopped in {escape(e.run_dir.name)}; finished cells are "
                      f"kept, and the same command trains that cell again and goes on")
        sys.exit(128 + getattr(signal, e.signal))  # 130 for SIGINT, 143 for SIGTERM
    console.print(escape(summary["markdown"]))
    if unchecked := summary.get("unchecked"):
        console.print(escape(f"{counted(len(unchecked), 'reused run')} made by a leap that kept no digest of the "
                             f"config: {config} could not be checked against them (delete {workdir / 'runs'}/NAME to "
                             f"train one again: {', '.join(unchecked[:3])}{', ...' if len(unchecked) > 3 else ''})"),
                      highlight=False)
    reused = summary.get("reused", 0)
    console.print(f"wrote {escape(str(workdir / 'ablation.md'))} and ablation.json ({summary['seconds']:.0f} s"
                  + (f"; {counted(reused, 'run')} of earlier ablates reused" if reused else "") + ")")
