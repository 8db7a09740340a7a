"""``leap demo-data`` and ``leap info``."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.table import Table

from leap_cli.common import counted, workdir_option
from leap_cli.progress import output_console
from leap_cli.report.terminal import printable

console = output_console()


LENGTHS_SHOWN = 20  # videos listed by info's length check without --all
VIDEOS_SHOWN = 5  # videos missing, or with their frames in their tar, named per split without --all


def register(app: typer.Typer) -> None:
    app.command("demo-data", help="Build the synthetic kitchen: EPIC-layout videos, sound, annotations, detections, truth.")(demo_data)
    app.command("info", help="Summarise a dataset root: splits, segments, classes, videos, audio, detections, "
                             "camera poses, and videos whose decoded length disagrees with EPIC_100_video_info.csv; "
                             "writes nothing.")(info)


def demo_data(
    workdir: Path = typer.Option(Path("leap-work"), "--workdir", callback=workdir_option, help="Work directory: the kitchen goes to "
                                                                       "WORKDIR/kitchen, where the stages look for it."),
    out: Path = typer.Option(None, "--out", help="Folder to write the synthetic kitchen into (default WORKDIR/kitchen)."),
    videos: int = typer.Option(8, "--videos", min=1, help="Number of videos (about two minutes each at the default "
                               "--segments; the length grows with it)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same bytes."),
    segments: int = typer.Option(48, "--segments", min=2, help="Action segments per video."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if the folder already holds this kitchen, or overwrite "
                               "a non-empty folder that holds no kitchen (one of another config is rebuilt without it)."),
    clean: bool = typer.Option(False, "--clean", help="Debugging only: publish the truth (exact hand-object boxes, "
                               "labelled object boxes, COLMAP poses, quiet background) instead of what EPIC publishes."),
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from leap_cli.synth.kitchen import KitchenConfig, build_kitchen

    cfg = KitchenConfig(videos=videos, seed=seed, segments_per_video=segments, honest=not clean)
    from leap_cli.progress import stage_progress

    with stage_progress("kitchen", TextColumn("[bold]kitchen[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task("videos", total=videos)

        def on_video(done: int, total: int, video_id: str) -> None:
            progress.update(task, completed=done, description=f"{video_id} written")

        summary = build_kitchen(out or workdir / "kitchen", cfg, force=force, on_video=on_video)
    console.print(summary.render())
    if summary.replaced_version is not None:  # (the stages resume over it: extract keys its records by annotations)
        from leap_cli.synth.kitchen import KITCHEN_VERSION

        records = f"{workdir / 'descriptors'}" if out is None else "the work directory's descriptors/"
        console.print(printable(
            f"note: {summary.out} held a kitchen another leap built (kitchen version "
            f"{summary.replaced_version}; this leap builds version {KITCHEN_VERSION}): rebuilt; what the stages made "
            "from the old one is kept where its annotations and its video's size did not change (its other files "
            f"are not compared): delete {records} and run extract again, "
            "then build-shards with --force for each split (generate-programs asks again only for the programs whose "
            "clip text changed; leap demo starts its stages over itself)"))


def info(
    workdir: Path = typer.Option(Path("leap-work"), "--workdir", callback=workdir_option, help="Work directory (its kitchen/ is the default --data)."),
    data: Path = typer.Option(None, "--data", help="Dataset root in the EPIC layout (P01/videos/..., annotations/; "
                                                   "default WORKDIR/kitchen)."),
    annotations: Path = typer.Option(None, "--annotations", help="Folder of EPIC's annotation CSVs (default DATA/annotations)."),
    check_lengths: bool = typer.Option(True, "--check-lengths/--no-check-lengths",
                                       help="Decode the end of every video and report those whose length disagrees "
                                            "with EPIC_100_video_info.csv (truncated downloads)."),
    show_all: bool = typer.Option(False, "--all", help="List every video the length check finds (default the first "
                                  f"{LENGTHS_SHOWN}), and every video missing or with its frames in their tar (default "
                                  f"the first {VIDEOS_SHOWN} per split)."),
) -> None:
    from rich.markup import escape

    from leap_cli.epic.info import check_lengths as length_report, dataset_info
    from leap_cli.epic.layout import VIDEO_EXTS, DatasetLayout

    from leap_cli.common import dataset_root

    layout = DatasetLayout.open(dataset_root(workdir, data), annotations)
    splits, classes = dataset_info(layout)
    table = Table(title="Dataset " + " + ".join(printable(r, one_line=True) for r in layout.roots))
    table.add_column("")
    for s in splits:
        table.add_column(s.split, justify="right")
    rows = [("segments", lambda s: s.segments), ("videos", lambda s: s.videos),
            ("verb classes used", lambda s: s.verbs_used), ("noun classes used", lambda s: s.nouns_used),
            ("videos with MP4", lambda s: s.with_mp4), ("videos with rgb_frames", lambda s: s.with_frames),
            ("videos missing", lambda s: len(s.missing)),
            ("videos with rgb_frames only in their tar", lambda s: len(s.tarred)),
            ("audio (WAV/FLAC file)", lambda s: s.with_audio_file),
            ("audio (MP4's own track only)", lambda s: s.with_audio_track),
            ("hand-object detections", lambda s: s.with_hand_objects),
            ("object detections", lambda s: s.with_object_detections),
            ("camera poses (EPIC Fields JSON)", lambda s: s.with_poses_fields),
            ("camera poses (COLMAP only)", lambda s: s.with_poses_colmap)]
    for name, get in rows:
        table.add_row(name, *(str(get(s)) for s in splits))
    console.print(table)
    console.print(escape(f"annotations: {layout.annotations_dir} ({', '.join(s.file for s in splits)})"), highlight=False)
    from leap_cli.epic.annotations import SPLIT_FILES

    from leap_cli.epic.classes import renamed_copy

    folder = layout.annotations_dir
    absent = [f"{split} ({name}" + (f"; {copy.name} is there: rename it to {name}" if (copy := renamed_copy(
        folder / name)) else "") + ")" for split, name in SPLIT_FILES.items() if split not in {s.split for s in splits}]
    if absent:  # (the table left them out without a word; extract --split train then said "not found")
        console.print(escape(f"splits without their CSV here: {', '.join(absent)}: the stages refuse them until the "
                             "file is in that folder (EPIC's annotations repository has it)"), style="yellow",
                      highlight=False)
    console.print(", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in classes.items()))
    for s in splits:
        for note in layout.annotations().row_notes(layout.annotations().segments(s.split)):
            console.print(f"[yellow]{s.split}:[/] {escape(note)}", highlight=False)
        for videos, what in ((s.missing, "with neither MP4 nor rgb_frames"),
                             (s.tarred, "with rgb_frames not extracted from their tar")):
            if videos:
                shown = videos if show_all else videos[:VIDEOS_SHOWN]
                more = " ... (--all lists them)" if len(shown) < len(videos) else ""
                console.print(f"[yellow]{s.split}: {counted(len(videos), 'video')} {what}:[/] {escape(', '.join(shown) + more)}")
        if s.missing:  # where they were looked for (a root one level off finds none)
            console.print(escape(f"  looked for {layout.looked_for(s.missing[0])}"), highlight=False, soft_wrap=True)
            from leap_cli.media.video import typo_hint

            first = {}  # a narration id of each missing video's (EPIC's ids name their video: a typo shows)
            for seg in layout.annotations().segments(s.split):
                first.setdefault(seg.video_id, seg.narration_id)
            said = []  # there under the name, but not a video (a link to nothing, a folder), or a typo
            for v in s.missing:
                said += [f"{p} is a link to {os.readlink(p)}, which is not there" for p in layout.broken_links(v)]
                said += [f"{p} is a folder, not a video file" for f in layout.videos_folders(v) for ext in VIDEO_EXTS
                         if (p := f / f"{v}{ext}").is_dir()]
                if hint := typo_hint(layout, v, first.get(v)):
                    said.append(f"{v}: {hint[2:]}")
            for line in said[:10]:  # (700 videos on storage that is not mounted: not 700 lines)
                console.print(escape(f"  {line}"), highlight=False, soft_wrap=True)
            if len(said) > 10:
                console.print(f"  ... and {len(said) - 10} more", highlight=False)
        if s.tarred:
            console.print(escape(f"  extract each into a folder of its name: {layout.untar_command(s.tarred[0])}"),
                          highlight=False, soft_wrap=True)  # a command to copy: not broken into lines
    if check_lengths:
        ann = layout.annotations()
        videos = sorted({seg.video_id for s in splits for seg in ann.segments(s.split)})
        bad = length_report(layout, videos)
        present = [v for v in videos if layout.video_path(v) is not None or layout.frames_dir(v) is not None]
        if not present:
            console.print("video lengths: no video of these splits is present to check")
        elif not bad:
            console.print("video lengths: " + ("the 1 video present decodes to its" if len(present) == 1 else
                                               f"all {len(present)} videos present decode to their")
                          + " video_info duration")
        else:
            console.print(f"[yellow]{counted(len(bad), 'video')} whose decodable length disagrees with "
                          "EPIC_100_video_info.csv, or that it lacks[/] (segments past the decodable end are "
                          "reported unavailable):")
            for b in bad if show_all else bad[:LENGTHS_SHOWN]:
                if b.expected_s is None:  # not in the video info: what each stage does with it
                    console.print(f"  {escape(b.video_id)} ({b.source}): {escape(b.note)}", highlight=False)
                    continue
                if b.decoded_s is None and b.note.startswith("the file runs at"):  # (it decodes: it is left out)
                    console.print(f"  {escape(b.video_id)} ({b.source}): {escape(b.note)}", highlight=False)
                    continue
                got = "nothing" if b.decoded_s is None else f"{b.decoded_s:.2f} s"
                console.print(f"  {escape(b.video_id)} ({b.source}): video_info {b.expected_s:.2f} s, decodes {got} "
                              f"({escape(b.note)})", highlight=False)
            if len(bad) > LENGTHS_SHOWN and not show_all:  # (rgb_frames of another extraction: 700 lines)
                console.print(f"  ... and {len(bad) - LENGTHS_SHOWN} more (--all lists every one)", highlight=False)
