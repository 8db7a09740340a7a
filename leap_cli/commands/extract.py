"""``leap extract``: the five multimodal descriptors of every segment, rendered as the clip's text."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from leap_cli.common import (DEFAULT_WORKDIR, ShardSpec, counted, dataset_root, lowercase, normalize_split, shard_out,
                             workdir_option, workers_option)
from leap_cli.errors import LeapError
from leap_cli.io import OutputLock, check_settings
from leap_cli.progress import output_console, stage_progress
from leap_cli.report.terminal import printable

console = output_console()

# What changes the records: a re-run with other values is refused (io.check_settings) unless --force.
RESULT_SETTINGS = ("components", "hand_threshold", "object_threshold", "camera_frames", "camera_source", "fov_deg",
                   "object_frames", "detector_weights", "detector_labels", "detector_arch", "audio_model",
                   "audio_labels", "clip_weights", "clip_arch")


# Files whose content, not path, the records depend on (a copy staged to node-local scratch is the same model;
# labels edited in place are not)
MODEL_FILES = ("detector_weights", "detector_labels", "audio_model", "audio_labels", "clip_weights")
# settings keys as a refusal says them where they are not an option's own name (the others are: --components, ...)
SETTINGS_NAMES = {"fov_deg": "--fov", **{f"files.{k}": f"--{k.replace('_', '-')} (the file's size and content hash)"
                                          for k in MODEL_FILES}}


def _settings(cfg, out: Path) -> dict:
    """The settings that change the records, for ``check_settings``: with ``files``, the identity (size and
    edge hash, ``io.file_identity``) of each model file given; a model file given by another path than the output
    was started with is taken for the same when its identity is (the path as it was is kept)."""
    from leap_cli.io import file_identity, stored_settings

    settings = {k: getattr(cfg, k) for k in RESULT_SETTINGS}
    files = {k: file_identity(v) for k in MODEL_FILES if (v := getattr(cfg, k)) is not None and Path(v).is_file()}
    if files:
        try:
            stored = stored_settings(out) or {}
        except LeapError:
            stored = {}  # (check_settings says what is wrong with it)
        known = stored.get("files") if isinstance(stored.get("files"), dict) else {}
        for k, ident in files.items():
            old = stored.get(k)
            if isinstance(old, str) and old != str(settings[k]):
                was = known.get(k) or (file_identity(old) if Path(old).is_file() else None)
                if was == ident:
                    settings[k] = old
        settings["files"] = files
    return settings


def register(app: typer.Typer) -> None:
    app.command("extract", help="Describe every segment of a split: narration, audio events, camera motion, objects "
                                "and hand contacts -> descriptors/{split}.jsonl (resumable).")(extract)


def extract(
    data: Path = typer.Option(None, "--data", help="Dataset root in the EPIC layout (default WORKDIR/kitchen)."),
    split: str = typer.Option(..., "--split", help="train, val (or validation) or test."),
    out: Path = typer.Option(None, "--out", help="Output JSONL (default WORKDIR/descriptors/{split}.jsonl, "
                                                 "with a .shardIofN suffix when sharded)."),
    workdir: Path = typer.Option(DEFAULT_WORKDIR, "--workdir", callback=workdir_option, help="Work directory holding the stage files."),
    annotations: Path = typer.Option(
        None, "--annotations",
        help="Folder of EPIC's annotation CSVs (default DATA/annotations)."),
    components: str = typer.Option("narration,audio,camera,objects,hands", "--components", callback=lowercase,
                                   help="Comma-separated components to compute."),
    workers: int = typer.Option(1, "--workers", min=1, callback=workers_option, help="Worker processes; each takes one segment at a time."),
    shard: str = typer.Option(None, "--shard", help="Take part i of n (0-based), e.g. 0/4; videos stay together."),
    retry_errors: bool = typer.Option(
        False, "--retry-errors",
        help="Redo finished segments that have a failed component, or whose video file could not be read "
             "(missing, unreadable, truncated: after downloading it again; a plain run already makes again the "
             "records of an MP4 or audio file whose size changed), or whose audio nothing held (an rgb_frames "
             "folder, an MP4 without a track) and an audio file or an MP4 with a track now does, or that were made "
             "without hand-object boxes, detections or poses that are there now (hands, objects, camera: EPIC's "
             "files downloaded later); not those unavailable for other causes (a segment past the end of the video)."),
    retry_failed: bool = typer.Option(False, "--retry-failed", hidden=True),  # old spelling of --retry-errors
    force: bool = typer.Option(False, "--force", "--overwrite", help="Start over: delete --out when it was made "
                                                                     "with other settings."),
    limit: int = typer.Option(None, "--limit", min=0, help="Only the first N segments (after sharding)."),
    hand_threshold: float = typer.Option(0.5, "--hand-threshold", min=0.0, max=1.0,
                                         help="A hand detection counts when its score is above this, as in EPIC's "
                                              "get_hand_object_interactions."),
    object_threshold: float = typer.Option(0.5, "--object-threshold", min=0.0, max=1.0,
                                           help="An object detection counts from this score on (EPIC's code too)."),
    camera_frames: int = typer.Option(
        9, "--camera-frames", min=2,
        help="Frames sampled through a segment for visual odometry."),
    camera_source: str = typer.Option("auto", "--camera-source", callback=lowercase, help="auto: the video's camera poses where they "
                                      "cover the segment (EPIC Fields' poses/VIDEO.json first, else COLMAP's "
                                      "poses/VIDEO/images.txt or images.bin), else visual odometry; vo: odometry "
                                      "only; colmap: poses only (any of these files)."),
    fov: float = typer.Option(
        90.0, "--fov", min=1.0, max=179.0,
        help="Assumed horizontal field of view (degrees) for the camera intrinsics."),
    detector_weights: Path = typer.Option(
        None, "--detector-weights",
        help="Run a torchvision Faster R-CNN: 'coco' for torchvision's COCO weights (downloaded once into the torch "
             "hub cache), or a local checkpoint FILE; without it the data set's detection files are used."),
    detector_labels: Path = typer.Option(
        None, "--detector-labels",
        help="Class names of the detector, one per line, background first (if the checkpoint has none)."),
    detector_arch: str = typer.Option("fasterrcnn_resnet50_fpn_v2", "--detector-arch",
                                      help="torchvision builder of the detector (if the checkpoint does not say)."),
    object_frames: int = typer.Option(6, "--object-frames", min=1, help="Frames per segment the detector (or CLIP, on hand-object boxes) sees."),
    clip_weights: Path = typer.Option(
        None, "--clip-weights",
        help="Name object boxes with CLIP (needs open_clip_torch): a local CLIP checkpoint FILE (OpenAI's "
             "ViT-B-16.pt), or 'openai' for OpenAI's weights from open_clip's caches, else its download."),
    clip_arch: str = typer.Option(
        "ViT-B-16", "--clip-arch",
        help="open_clip architecture of --clip-weights (ViT-B-16-quickgelu: OpenAI's weights as a plain state dict)."),
    audio_model: Path = typer.Option(
        None, "--audio-model",
        help="Local PANNs CNN14 checkpoint ({'model': state_dict}); without it a signal-processing classifier "
             "is used."),
    audio_labels: Path = typer.Option(
        None, "--audio-labels",
        help="AudioSet class_labels_indices.csv for --audio-model."),
    device: str = typer.Option("cpu", "--device", callback=lowercase, help="Torch device for the detector, CLIP and the audio model."),
    frame_cache: str = typer.Option(
        None, "--frame-cache",
        help="Folder for build-shards' recognition frames, JPEG-encoded from extract's own decode so that "
             "build-shards does not decode the videos again (default WORKDIR/frame-cache; build-shards finds another "
             "folder in this run's settings beside its output; 'none' turns it off, and build-shards still reads the "
             "folder an earlier run wrote)."),
    cache_frames: int = typer.Option(16, "--cache-frames", min=1, help="Frames per segment in the frame cache "
                                                                  "(= build-shards --frames)."),
    cache_short_side: int = typer.Option(256, "--cache-short-side", min=16, help="Short side of the cached frames "
                                                                          "(= build-shards --short-side)."),
    strict: bool = typer.Option(False, "--strict", help="Exit 3 when any segment has a failed component "
                                                        "(without it: only when every segment does)."),
) -> None:
    from leap_cli.epic.layout import DatasetLayout
    from leap_cli.extract.runner import ExtractConfig

    split_name = normalize_split(split)
    spec = ShardSpec.parse(shard)
    data = dataset_root(workdir, data)
    merged = out or workdir / "descriptors" / f"{split_name}.jsonl"
    out = shard_out(merged, spec)
    retry_errors = retry_errors or retry_failed
    cfg = ExtractConfig(data=data, split=split_name, out=out, annotations=annotations,
                        components=tuple(c.strip() for c in components.split(",") if c.strip()), workers=workers,
                        shard=spec, retry_errors=retry_errors, limit=limit, hand_threshold=hand_threshold,
                        object_threshold=object_threshold, camera_frames=camera_frames, fov_deg=fov,
                        camera_source=camera_source,
                        object_frames=object_frames, detector_weights=detector_weights,
                        detector_labels=detector_labels, detector_arch=detector_arch, clip_weights=clip_weights,
                        clip_arch=clip_arch, audio_model=audio_model,
                        audio_labels=audio_labels, device=device,
                        frame_cache=_frame_cache_dir(frame_cache, workdir),
                        cache_frames=cache_frames, cache_short_side=cache_short_side)
    cfg.check_options()  # before check_settings: --force would start the output over first
    if _existing_ancestor(out.parent).is_dir():  # a file in the output's path: check_settings names it
        DatasetLayout.open(data, annotations)  # a wrong --data fails before the output's settings and lock exist
    lock = OutputLock(out)  # held from the settings check to the first record: another run cannot rewrite them
    try:
        check_settings(out, _settings(cfg, out), force=force, split=split_name, adopt=("files",),
                       names=SETTINGS_NAMES, lock=lock)
        _run(cfg, split_name, spec, limit, strict, lock, merged)
    finally:
        lock.release()


def _run(cfg, split_name: str, spec, limit: int | None, strict: bool, lock: OutputLock, merged: Path) -> None:
    from leap_cli.extract.runner import run_extract
    from leap_cli.io import merge_command

    progress = stage_progress(f"extract {split_name}", TextColumn("[bold]extract[/] {task.description}"), BarColumn(),
                              MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(), console=console)
    task = {}

    def on_start(total: int, done: int) -> None:
        task["id"] = progress.add_task(split_name, total=total, completed=done)

    def on_record(record: dict) -> None:
        progress.update(task["id"], advance=1, description=record["video_id"])

    with progress:
        summary = run_extract(cfg, on_start=on_start, on_record=on_record, lock=lock)
    # (a part's records reach generate-programs through the merged file, which holds the old ones until merged again)
    _print_summary(summary, merge_command(merged, spec.count) if spec.count > 1 else None)
    if spec.count > 1 and not summary.segments and limit is None:  # (it said "0 selected" and nothing more)
        console.print(f"note: part {spec.index}/{spec.count} holds no segment of the {split_name} split: parts are "
                      f"whole videos, and with fewer videos than parts some parts are empty")
    elif spec.count == 1 and not summary.segments and limit is None:  # (a header-only CSV: a cut download?)
        console.print(f"note: the {split_name} split's annotation file holds no segment (a header and no rows)")
    if summary.interrupted:  # the summary is printed; the CLI says how to resume and exits 130 (143: SIGTERM)
        raise KeyboardInterrupt
    summary.outcome.exit(strict)  # 3 when every segment failed (or any, with --strict)


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _frame_cache_dir(option: str | None, workdir: Path) -> Path | None:
    """``--frame-cache``: not given -> WORKDIR/frame-cache (the default: build-shards reads it), ``none`` -> off; an
    absolute path, as recorded in the run's settings."""
    if option is None or option == "":
        return (workdir / "frame-cache").absolute()
    # absolute: build-shards finds it in this run's settings, from whatever folder it is run in
    return None if option.lower() == "none" else Path(option).absolute()


def _remade(s) -> str:
    """What the outdated records' note says is made again: the parts (their other components kept), or whole."""
    from leap_cli.extract.base import VERSIONS
    from leap_cli.extract.runner import WHOLE

    said = []
    if s.outdated_made:
        made = ", ".join(f"the clip text alone of {n}" if part == "text" else f"{part} of {n}"
                         for part, n in sorted(s.outdated_made.items(), key=lambda pn: list(VERSIONS).index(pn[0])))
        said.append(f"only those parts are made again ({made}), their other components kept and the clip text "
                    "rendered again")
    if s.outdated_whole:
        causes = [WHOLE[k] for k in WHOLE if s.outdated_whole_why.get(k)]  # (those this run met)
        why = f" ({', '.join(causes[:-1]) + ', or ' if len(causes) > 1 else ''}{causes[-1]})" if causes else ""
        said.append(f"{s.outdated_whole} {'is' if s.outdated_whole == 1 else 'are'} made whole again{why}" if said
                    else f"{'it is' if s.outdated == 1 else 'they are'} made whole again{why}")
    return "; ".join(said)


def _print_retryable(s, of_them: bool) -> None:
    """The note on records done before that ``--retry-errors`` would redo (a fixed or re-downloaded video is read
    again only when asked)."""
    if s.retryable:
        n = s.retryable
        which = f"{n} of them" if of_them else f"{counted(n, 'record')} of earlier runs"
        console.print(f"note: {which} {'holds' if n == 1 else 'hold'} a component that failed, had no readable video "
                      "(none there, or damaged) or was made without an audio, hand-object, detection or pose file that "
                      "is there now: once the files are there or fixed, --retry-errors redoes "
                      + ("it" if n == 1 else "them"),
                      style="yellow", highlight=False)


def _print_summary(s, merge: str | None = None) -> None:
    if s.done_before and not s.written and not s.interrupted:  # a rerun with nothing left: no empty table
        console.print(f"segments: {s.segments} selected, {s.done_before} done before, 0 written now: nothing to do "
                      f"({escape(str(s.out))})")
        _print_retryable(s, of_them=True)
        for line in s.outcome.lines():
            console.print(escape(line), highlight=False, style="red")
        return
    title = f"extract -> {printable(s.out, one_line=True)}" + (f" (the {counted(s.written, 'segment')} of this run)"
                                                                 if s.done_before else "")
    table = Table(title=title)
    for col in ("component", "ok", "unavailable", "error", "seconds", "share of time"):
        table.add_column(col, justify="left" if col == "component" else "right")
    total_sec = sum(s.seconds.values()) or 1.0
    for name, c in s.counts.items():
        if not any(c.values()):
            continue
        sec = s.seconds.get(name, 0.0)
        table.add_row(name, str(c["ok"]), str(c["unavailable"]), str(c["error"]), f"{sec:.1f}",
                      f"{sec / total_sec:.0%}")
    for name in ("decode", "frame-cache"):  # one decode per segment serves every component and the frame cache
        if s.seconds.get(name):
            table.add_row(name, "", "", "", f"{s.seconds[name]:.1f}", f"{s.seconds[name] / total_sec:.0%}")
    # (no row: no component ran, only clip texts were rendered again, or nothing was selected)
    console.print(table if table.row_count else title, highlight=False)
    rate = s.written / s.wall if s.wall > 0 else 0.0
    # selected: the split's, or its --shard part's, up to --limit
    console.print(f"segments: {s.segments} selected, {s.done_before} done before, {s.written} written now "
                  f"({rate:.2f}/s)" + (" [yellow]interrupted[/]" if s.interrupted else ""))
    if s.reannotated:  # (resumed, they would have described another segment than the annotations' now)
        n = s.reannotated
        console.print(f"note: {counted(n, 'record')} of earlier runs {'was' if n == 1 else 'were'} made from other "
                      f"annotations than {escape(s.annotations)} holds now (e.g. {escape(s.reannotated_example)} "
                      f"differs): {'it is' if n == 1 else 'they are'} made again, and generate-programs makes "
                      f"{'its program' if n == 1 else 'their programs'} again", style="yellow", highlight=False)
    if s.replaced:  # (a video downloaded again since: a record made from the old file would describe another one)
        from leap_cli.epic.layout import replaced_files

        n, more = s.replaced, len(s.replaced_files) - 1
        what, others = replaced_files(s.replaced_files)
        console.print(f"note: {counted(n, 'record')} of earlier runs {'was' if n == 1 else 'were'} made from {what} "
                      f"that has changed since ({escape(s.replaced_example)}"
                      + (f", and {counted(more, others)}" if more else "")
                      + f"): {'it is' if n == 1 else 'they are'} made again; then "
                      + (f"merge the parts again once each is done ({escape(merge)}) and " if merge else "")
                      + "run generate-programs (it makes again the programs whose clip text changed)"
                      # (a sound file replaced changes no frame: build-shards takes up the new programs, as generate
                      # says, and has no sample of the old file to write again)
                      + (" and build-shards for this split (it writes again the samples it wrote from the old file)"
                         if what != "an audio file" else ""),
                      style="yellow", highlight=False)
    if s.outdated:  # (an upgrade of leap that changed what a component writes: the output holds one leap's records)
        console.print(f"note: {counted(s.outdated, 'record')} of earlier runs {'holds' if s.outdated == 1 else 'hold'} "
                      f"parts another leap made otherwise (e.g. "
                      f"{escape(s.outdated_example)}): {_remade(s)}, and generate-programs asks again for the "
                      "programs of those whose clip text changed", style="yellow", highlight=False)
    _print_retryable(s, of_them=False)  # (kept as they are by this run, a part remake's kept ones too)
    if s.unavailable:
        console.print(f"unavailable components by reason ({sum(s.unavailable.values())}"
                      + (", this run" if s.done_before else "") + "):")
        for reason, n in s.unavailable.most_common(10):
            first = s.unavailable_first.get(reason, reason)
            console.print(f"  {n} x {escape(first if n == 1 else reason)}", highlight=False)
            if n > 1 and first != reason and reason not in s.unavailable_detail:  # (the detail holds it, and where)
                console.print(f"    e.g. {escape(first)}", highlight=False, soft_wrap=True)
            if reason in s.unavailable_detail:
                console.print(f"    first: {escape(s.unavailable_detail[reason])}", highlight=False, soft_wrap=True)
    for line in s.outcome.lines():
        console.print(escape(line), highlight=False, style="red")
    if s.errors:
        n = s.error_count
        console.print(f"[red]{n} component error{'s' if n != 1 else ''}[/]"
                      + (f", {len(s.errors)} distinct" if len(s.errors) > 1 else "")
                      + " (rerun with --retry-errors after fixing):")
        for detail, g in list(s.errors.items())[:10]:
            more = g["n_segments"] - len(g["segments"])
            where = ", ".join(g["segments"]) + (f" and {more} more" if more > 0 else "")
            segments = f"{g['n_segments']} segment{'s' if g['n_segments'] != 1 else ''}"
            console.print(f"  {', '.join(g['components'])} of {segments} ({escape(where)}): {escape(detail)}",
                          highlight=False)
        if len(s.errors) > 10:
            console.print(f"  ... and {counted(len(s.errors) - 10, 'more distinct error')}", highlight=False)
