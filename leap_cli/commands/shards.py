"""``leap build-shards``: segments + program records -> WebDataset-style tar shards + manifest.json."""

from __future__ import annotations

import re
from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from leap_cli.common import (DEFAULT_WORKDIR, ShardSpec, counted, dataset_root, given_options, lowercase,
                             normalize_split, workdir_option, workers_option)
from leap_cli.errors import LeapError
from leap_cli.progress import output_console, stage_progress
from leap_cli.report.terminal import printable

console = output_console()

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.I)


def parse_size(text: str) -> int:
    """``1GB``, ``500MB``, ``64k``, ``123`` -> bytes (powers of 1024)."""
    m = _SIZE.match(text)
    if not m:
        raise LeapError(f"--max-shard-size {text!r} is not a size", fix="e.g. 1GB, 500MB or a number of bytes")
    return int(float(m.group(1)) * 1024 ** "_kmgt".index((m.group(2) or "_").lower()))


def recorded_frame_caches(workdir: Path, split: str) -> list[tuple[Path, Path]]:
    """(settings file, folder) of each frame cache that ``leap extract`` of ``split`` recorded in its settings beside
    ``WORKDIR/descriptors/SPLIT.jsonl`` (and its ``--shard`` parts'; ``extracted.frame_caches``), whether that folder
    is there or not. extract's output written elsewhere (``extract --out``) is not looked for: give its folder as
    ``--frame-cache``."""
    from leap_cli.extracted import frame_caches

    return frame_caches(workdir / "descriptors" / f"{split}.jsonl")


def extracts_frame_cache(workdir: Path, split: str) -> tuple[Path | None, str | None]:
    """The frame cache ``leap extract`` of ``split`` wrote into, read from its settings (``recorded_frame_caches``):
    build-shards' default, so that ``extract --frame-cache DIR`` (another disk) is read without naming DIR again;
    None (then WORKDIR/frame-cache) where no such settings name a folder that is there, or where they name several.
    With it, why none of the folders named is read (None: one is, or none other than WORKDIR/frame-cache is named,
    whose notes the writer gives): not there as named (moved, another disk not mounted), or several."""
    default = (workdir / "frame-cache").absolute()
    recorded = recorded_frame_caches(workdir, split)
    folders: dict[Path, Path] = {}  # (one folder named as an earlier leap recorded it, relative, and absolute: one)
    for _, root in recorded:
        if root.is_dir():
            folders.setdefault(root.resolve(), root)
    there = list(folders.values())
    if len(there) == 1:
        return there[0], None
    others = [(cfg, root) for cfg, root in recorded if root.resolve() != default.resolve()]
    if not others:
        return None, None
    unless = "(without it: WORKDIR/frame-cache where it is there, else every sample is decoded)"
    if len(there) > 1:
        return None, (f"extract's settings of {split} name {len(there)} frame caches "
                      f"({', '.join(map(str, there[:3]))}) and build-shards reads one: give the one to read as "
                      f"--frame-cache DIR {unless}")
    cfg, root = others[0]
    return None, (f"extract's frame cache {root} (named in {cfg}) is not there: give its folder as --frame-cache DIR "
                  f"{unless}")


def register(app: typer.Typer) -> None:
    app.command("build-shards", help="Write WebDataset-style tar shards (JPEG frames + labels + program targets) "
                                     "of one split into WORKDIR/shards/SPLIT, with manifest.json: frames from "
                                     "extract's frame cache or the videos, targets from the valid records of "
                                     "WORKDIR/programs/SPLIT.jsonl; resumable, parallel by video; after programs "
                                     "made again (the same target vocabulary) or a video downloaded again, a re-run "
                                     "writes again only their samples.")(build_shards)
    app.command("check-shards", help="Check a shards folder against its manifest: files, sizes, sha256, every "
                                     "sample's JSON and JPEG frames.")(check_shards)


def build_shards(
    ctx: typer.Context,
    data: Path = typer.Option(None, "--data", help="Dataset root in the EPIC layout (default WORKDIR/kitchen)."),
    split: str = typer.Option(..., "--split", help="train, val (validation) or test."),
    programs: Path = typer.Option(None, "--programs", help="Program records (default WORKDIR/programs/SPLIT.jsonl; "
                                                          "missing: every sample has_program false)."),
    out: Path = typer.Option(None, "--out", help="Output folder (default WORKDIR/shards/SPLIT, "
                                                 "anticipation: WORKDIR/shards/SPLIT-anticipation)."),
    workdir: Path = typer.Option(DEFAULT_WORKDIR, "--workdir", callback=workdir_option, help="Work directory holding every stage's files."),
    annotations: Path = typer.Option(None, "--annotations", help="Folder of EPIC's annotation CSVs (default DATA/annotations)."),
    task: str = typer.Option("recognition", "--task", callback=lowercase, help="recognition, or anticipation (three clips "
                                                           "ending tau-a before the action)."),
    frames: int = typer.Option(16, "--frames", min=1, help="Frames stored per clip (more than the model takes allows "
                                                    "temporal jitter)."),
    short_side: int = typer.Option(256, "--short-side", min=16, help="Short side of the stored JPEG frames, in pixels."),
    jpeg_quality: int = typer.Option(90, "--jpeg-quality", min=1, max=100, help="JPEG quality of the stored frames (1-100)."),
    workers: int = typer.Option(1, "--workers", min=1, callback=workers_option, help="Processes decoding videos in parallel (bytes do not depend on it)."),
    frame_cache: Path = typer.Option(None, "--frame-cache", help="extract's frame cache, whose frames are copied "
                                                                 "instead of decoding the videos again (default: "
                                                                 "the folder extract of this split wrote, as its "
                                                                 "settings in WORKDIR/descriptors say, else "
                                                                 "WORKDIR/frame-cache; bytes do not depend on it)."),
    shard: str = typer.Option(None, "--shard", help="Write part i of n (i/n, 0-based; videos split between jobs) into "
                                                    "the same --out; the part that finishes last writes the merged "
                                                    "manifest.json."),
    max_shard_size: str = typer.Option("1GB", "--max-shard-size", help="Start a new tar file beyond this size (not "
                                                                      "given: a re-run packs as the folder's build "
                                                                      "began)."),
    max_count: int = typer.Option(0, "--max-count", min=0, help="Start a new tar file after this many samples (0: no "
                                                                "limit; not given: a re-run packs as the folder's "
                                                                "build began)."),
    tau_a: float = typer.Option(1.0, "--tau-a", min=0.0, help="Anticipation: seconds between the observed window's end and "
                                                     "the action start."),
    tau_o: float = typer.Option(2.0, "--tau-o", min=0.01, help="Anticipation with --anticipation-context segments: length of "
                                                     "the observed window in seconds."),
    context: int = typer.Option(2, "--context", min=0, help="Anticipation: clips stored before the current one (2: s_{i-2}, "
                                                     "s_{i-1})."),
    anticipation_context: str = typer.Option("clips", "--anticipation-context", callback=lowercase,
                                             help="clips: contiguous --span-frames clips ending tau-a before the action "
                                                  "(the paper); segments: the previous annotated segments."),
    span_frames: int = typer.Option(256, "--span-frames", min=1, help="Anticipation clips: source frames each clip spans."),
    vocab: Path = typer.Option(None, "--vocab", help="Manifest whose target vocabulary to reuse (default for val/test: "
                                                     "the train shards' of the same task when present, "
                                                     "WORKDIR/shards/train/manifest.json or, with --task "
                                                     "anticipation, shards/train-anticipation/manifest.json)."),
    max_steps: int = typer.Option(None, "--max-steps", min=2, help="Program steps per target incl. END (default: the longest "
                                                                  "training program's, at most 48; new vocabulary only)."),
    max_conditions: int = typer.Option(None, "--max-conditions", min=1,
                                       help="At most this many conditions, the most frequent in the training "
                                            "programs (default 256; new vocabulary only)."),
    overwrite: bool = typer.Option(False, "--force", "--overwrite", help="Delete shards of other settings/inputs "
                                   "in --out and rebuild (not needed where only program records changed and the target "
                                   "vocabulary stays)."),
    strict: bool = typer.Option(False, "--strict", help="Exit 3 when any segment is skipped (without it: only when "
                                                        "every segment is)."),
) -> None:
    from leap_cli.outcome import Outcome
    from leap_cli.shards.writer import ShardSettings, build_split, default_out

    split = normalize_split(split)
    spec = ShardSpec.parse(shard)
    _refuse_unused(ctx, task, anticipation_context)
    if task == "anticipation" and frame_cache is not None:
        raise LeapError("--frame-cache holds recognition frames; anticipation shards decode their clips from the "
                        "videos", fix="drop --frame-cache")
    settings = ShardSettings(split=split, task=task, frames=frames, short_side=short_side, jpeg_quality=jpeg_quality,
                             max_shard_size=parse_size(max_shard_size), max_count=max_count, tau_a=tau_a,
                             tau_o=tau_o, context=context if task == "anticipation" else 0,
                             context_mode=anticipation_context, span_frames=span_frames)
    settings, packed = _folder_packing(ctx, settings, out or default_out(workdir, split, task), spec.suffix, overwrite)
    data = dataset_root(workdir, data)
    unread = None
    if frame_cache is None and task == "recognition":
        frame_cache, unread = extracts_frame_cache(workdir, split)
    elif frame_cache is not None and not frame_cache.is_dir():  # (the default may be absent: then every sample is decoded)
        raise LeapError(f"--frame-cache {frame_cache}: no such folder",
                        fix="give the folder leap extract --frame-cache wrote, or leave the option out to decode "
                            "the videos")
    with stage_progress("build-shards", TextColumn("[bold]build-shards[/] {task.description}"), BarColumn(),
                        MofNCompleteColumn(), TimeRemainingColumn(), console=console) as bar:
        # before the first sample: the annotations read, the programs checked against the labels and the target
        # vocabulary built (~20 s for EPIC's 67k train segments), said so (a log said nothing all that time)
        preparing = "reading the annotations, checking the programs, planning the samples"
        tid = bar.add_task(f"{split}{spec.suffix} ({preparing})", total=None)
        if not bar.console.is_terminal:  # (a progress line: beside the others, on stderr)
            bar.console.print(f"build-shards {split}{spec.suffix}: {preparing} ...", highlight=False, soft_wrap=True)

        def progress(done: int, total: int) -> None:
            bar.update(tid, completed=done, total=total, description=f"{split}{spec.suffix}")

        result = build_split(data, split, workdir=workdir, settings=settings, programs_path=programs, out=out,
                             annotations=annotations, vocab_manifest=vocab, max_steps=max_steps,
                             max_conditions=max_conditions, workers=workers, shard=spec, overwrite=overwrite,
                             progress=progress, frame_cache=frame_cache)
    m = result.manifest
    c = m["counts"]
    table = Table(title=printable(f"{m['task']} shards of {split}{spec.suffix} in {result.out}", one_line=True))
    for col in ("segments", "samples", "programs", "skipped", "shards", "GB"):
        table.add_column(col, justify="right")
    table.add_column("this run")
    table.add_row(str(c["segments"]), str(c["samples"]), str(c["with_program"]), str(c["skipped"]), str(c["shards"]),
                  f"{sum(s['bytes'] for s in m['shards']) / 1e9:.3f}", _shards_done(result, c["shards"]))
    console.print(table)
    for note in ([packed] if packed else []) + result.notes + ([unread] if unread else []):
        console.print(f"[yellow]note:[/] {escape(note)}")
    if c.get("blank"):  # (anticipation: black clips the model learns labels from; the manifest counts them)
        one = c["blank"] == 1
        console.print(f"[yellow]note:[/] {c['blank']} of the {counted(c['samples'], 'sample')} "
                      f"{'has' if one else 'have'} no frame to observe ({'its' if one else 'their'} action starts within "
                      f"--tau-a {m['settings']['tau_a']:g} s of the video's start): stored black, \"blank\": true in "
                      f"{'its' if one else 'their'} JSON", highlight=False)
    if m["skipped"]:
        console.print(f"[yellow]{counted(len(m['skipped']), 'segment')} skipped[/] (listed in the manifest), by cause:")
        for line in _skipped_lines(m["skipped"]):
            console.print(f"  {escape(line)}", highlight=False, soft_wrap=True)
    outcome = Outcome("build-shards")  # the exit rule of the record-writing stages (leap_cli/outcome.py)
    outcome.attempt(c["segments"])
    for x in m["skipped"]:
        outcome.fail(_skip_cause(x))
    for line in outcome.lines():
        console.print(escape(line), style="red", highlight=False)
    outcome.exit(strict)


def _folder_packing(ctx: typer.Context, settings, folder: Path, suffix: str, overwrite: bool):
    """``settings`` with the packing of the build begun in ``folder`` (``format.begun_packing``; ``suffix``: the
    ``--shard`` part's) for each of --max-count and --max-shard-size the command does not give, and the note that
    says so (None: nothing taken otherwise than the defaults). The samples' bytes do not depend on it, but the
    settings hash does: a plain re-run (as leap's messages name it) of a ``--max-count 2`` build was refused, and
    --force decoded every video again. --force starts over with the options as given."""
    from dataclasses import replace

    from leap_cli.shards.format import SETTINGS_OPTIONS, begun_packing

    if overwrite:
        return settings, None
    given = given_options(ctx, "max_count", "max_shard_size")
    taken = {k: v for k, v in begun_packing(folder, suffix).items()
             if SETTINGS_OPTIONS[k] not in given and v != getattr(settings, k)}
    if not taken:
        return settings, None
    words = " ".join(f"{SETTINGS_OPTIONS[k]} {v}" for k, v in sorted(taken.items()))
    return replace(settings, **taken), f"tars packed as the folder's build began: {words} (to repack: --force)"


def _refuse_unused(ctx: typer.Context, task: str, mode: str) -> None:
    """Refuse options given for what this build does not do (they were silently ignored: a `--tau-a 2` without
    `--task anticipation` built recognition shards)."""
    if task != "anticipation":
        unused = given_options(ctx, "tau_a", "tau_o", "context", "anticipation_context", "span_frames")
        if unused:
            raise LeapError(f"{', '.join(unused)} set{'s' if len(unused) == 1 else ''} how anticipation shards are "
                            f"built; these are {task} shards",
                            fix="add --task anticipation, or drop " + ("it" if len(unused) == 1 else "them"))
        return
    unused = given_options(ctx, "tau_o" if mode == "clips" else "span_frames")
    if unused:
        other = "segments" if mode == "clips" else "clips"
        raise LeapError(f"{unused[0]} applies to --anticipation-context {other} only; {mode} mode "
                        + ("observes --context + 1 clips of --span-frames source frames each" if mode == "clips"
                           else "observes the --tau-o seconds ending --tau-a before the action, then the previous "
                                "segments"),
                        fix=f"drop {unused[0]}, or pass --anticipation-context {other}")


def _skip_cause(x: dict) -> str:
    """A skip's path-free cause (a manifest from before skips had one: the start of its reason)."""
    return x.get("cause") or re.sub(r"^video \S+ ", "video ", x["reason"].split(":")[0])


def _skipped_lines(skipped: list[dict], shown: int = 3) -> list[str]:
    """The skipped segments by cause, a line each: how many segments of how many videos (the first few named;
    EPIC's narration ids are VIDEO_N), then the first one's whole reason (file and fix). At EPIC scale, 334
    missing videos are one line, not 334 reasons."""
    by_cause: dict[str, list[dict]] = {}
    for x in skipped:
        by_cause.setdefault(_skip_cause(x), []).append(x)
    lines = []
    for cause, xs in list(by_cause.items())[:shown]:
        videos = list(dict.fromkeys(x["narration_id"].rsplit("_", 1)[0] for x in xs))
        named = ", ".join(videos[:shown]) + (f" and {len(videos) - shown} more" if len(videos) > shown else "")
        lines.append(f"{cause}: {len(xs)} segment{'s' if len(xs) != 1 else ''} of {len(videos)} "
                     f"video{'s' if len(videos) != 1 else ''} ({named}); the first, {xs[0]['narration_id']}: "
                     f"{xs[0]['reason']}")
    if len(by_cause) > shown:
        lines.append(f"... and {len(by_cause) - shown} more causes")
    return lines


def _shards_done(result, shards: int) -> str:
    """What this run did to the shards: written now (new samples), rewritten in place (new programs, the samples of a
    video downloaded again taken out), kept as they were ("3 written", "1 rewritten, 2 kept"; the table said "resumed"
    of every shard after an update)."""
    kept = max(0, shards - result.written_shards - result.rewritten_shards)
    done = [f"{n} {what}" for n, what in ((result.written_shards, "written"), (result.rewritten_shards, "rewritten"),
                                          (kept, "kept")) if n]
    return ", ".join(done) or "none"


def check_shards(
    shards: Path = typer.Option(None, "--shards", help="Shards folder (default WORKDIR/shards/SPLIT; with "
                                                         "--task anticipation: WORKDIR/shards/SPLIT-anticipation)."),
    split: str = typer.Option(None, "--split", help="train, val (validation) or test: the split whose shards to "
                                                        "check (required without --shards)."),
    task: str = typer.Option("recognition", "--task", callback=lowercase, help="recognition or anticipation (which default folder)."),
    workdir: Path = typer.Option(DEFAULT_WORKDIR, "--workdir", callback=workdir_option, help="Work directory holding every stage's files."),
    on_error: str = typer.Option("raise", "--on-error", callback=lowercase, help="raise: stop at the first damaged shard or sample; "
                                                            "skip: list and count every problem (exit 1 when it "
                                                            "found any)."),
    no_hash: bool = typer.Option(False, "--no-hash", help="Skip the sha256 of whole shards (sizes still checked)."),
    workers: int = typer.Option(1, "--workers", min=1, callback=workers_option, help="Processes checking shards in parallel (decoding the "
                                                            "frames is most of the time)."),
) -> None:
    from leap_cli.shards.check import check_shards as run_check
    from leap_cli.shards.writer import default_out

    if shards is None and split is None:
        raise LeapError("which shards?", fix="pass --split SPLIT (WORKDIR/shards/SPLIT) or --shards FOLDER")
    folder = shards or default_out(workdir, normalize_split(split), task)
    if shards is not None and split is not None:  # both given: the folder must hold that split's shards
        from leap_cli.shards.format import load_manifest

        held = load_manifest(folder)[0].get("split")
        if held and held != normalize_split(split):
            raise LeapError(f"the shards hold the {held} split, not {normalize_split(split)}", path=folder,
                            fix=f"pass --split {held}, or the folder of the {normalize_split(split)} shards")
    with stage_progress("check-shards", TextColumn("[bold]check-shards[/]"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), console=console) as bar:
        tid = bar.add_task("", total=None)
        report = run_check(folder, on_error=on_error, verify_hash=not no_hash, workers=workers,
                           progress=lambda d, t: bar.update(tid, completed=d, total=t))
    table = Table(title=f"Shards check of {printable(report.folder, one_line=True)}")
    for col in ("shards", "samples", "ok", "problems"):
        table.add_column(col, justify="right")
    table.add_row(str(report.shards), str(report.samples), str(report.ok), str(len(report.problems)))
    console.print(table)
    for p in report.problems[:20]:
        where = f"sample {p['sample']}: " if p["sample"] else ""
        console.print(f"[red]{escape(p['shard'])}[/] {escape(where + p['problem'])}")
    if len(report.problems) > 20:
        console.print(f"... and {len(report.problems) - 20} more")
    if report.problems:
        from leap_cli.io import part_of
        from leap_cli.shards.format import rebuild_fix

        parts = {part_of(p["shard"]): p["shard"] for p in report.problems if not p.get("fix")}  # (the build's command
        fixes = {part: rebuild_fix(shard, folder) for part, shard in parts.items()}  # read once a part, not a problem)
        for fix in dict.fromkeys(p.get("fix") or fixes[part_of(p["shard"])] for p in report.problems):  # one a part
            console.print(f"fix: {escape(fix)}", highlight=False)
    from leap_cli.shards.format import load_manifest

    skipped = load_manifest(folder)[0].get("counts", {}).get("skipped", 0)
    if skipped:  # (a folder of 0 shards read as a clean check of a whole split)
        console.print(f"[yellow]note:[/] {counted(skipped, 'segment')} of the split {'was' if skipped == 1 else 'were'} "
                      "skipped when the shards were built (no frames; listed with their reasons in the manifest): "
                      f"{'it is' if skipped == 1 else 'they are'} in no shard", highlight=False)
    if report.problems:
        raise typer.Exit(1)
