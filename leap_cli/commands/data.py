"""``leap demo-data`` and ``leap info``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def register(app: typer.Typer) -> None:
    app.command("demo-data", help="Build the synthetic kitchen: EPIC-layout videos, sound, annotations, detections, truth.")(demo_data)
    app.command("info", help="Summarise a dataset root: splits, segments, classes, videos, audio, detections.")(info)


def demo_data(
    out: Path = typer.Option(Path("leap-work/kitchen"), "--out", help="Folder to write the synthetic kitchen into."),
    videos: int = typer.Option(8, "--videos", help="Number of videos (each about two minutes of short actions)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same bytes."),
    segments: int = typer.Option(48, "--segments", help="Action segments per video."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if the folder already holds this kitchen."),
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from leap_cli.synth.kitchen import KitchenConfig, build_kitchen

    cfg = KitchenConfig(videos=videos, seed=seed, segments_per_video=segments)
    with Progress(TextColumn("[bold]kitchen[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task("videos", total=videos)

        def on_video(done: int, total: int, video_id: str) -> None:
            progress.update(task, completed=done, description=f"{video_id} written")

        summary = build_kitchen(out, cfg, force=force, on_video=on_video)
    console.print(summary.render())


def info(
    data: Path = typer.Option(Path("leap-work/kitchen"), "--data", help="Dataset root in the EPIC layout (P01/videos/..., annotations/)."),
    annotations: Path = typer.Option(None, "--annotations", help="Folder of EPIC's annotation CSVs (default DATA/annotations)."),
) -> None:
    from leap_cli.epic.info import dataset_info
    from leap_cli.epic.layout import DatasetLayout

    layout = DatasetLayout.open(data, annotations)
    splits, classes = dataset_info(layout)
    table = Table(title=f"Dataset {layout.root}")
    for col in ("split", "file", "segments", "videos", "verbs used", "nouns used", "MP4", "rgb_frames",
                "missing video", "audio", "hand-objects", "object dets"):
        table.add_column(col, justify="right" if col not in ("split", "file") else "left")
    for s in splits:
        table.add_row(s.split, s.file, str(s.segments), str(s.videos), str(s.verbs_used), str(s.nouns_used),
                      str(s.with_mp4), str(s.with_frames), str(len(s.missing)), str(s.with_audio),
                      str(s.with_hand_objects), str(s.with_object_detections))
    console.print(table)
    console.print(", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in classes.items()))
    for s in splits:
        if s.missing:
            shown = ", ".join(s.missing[:5]) + (" ..." if len(s.missing) > 5 else "")
            console.print(f"[yellow]{s.split}: {len(s.missing)} video(s) with neither MP4 nor rgb_frames:[/] {shown}")
