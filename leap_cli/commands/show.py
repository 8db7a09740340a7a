"""``leap show NARRATION_ID``: a segment's program as a tree, with its five descriptors; ``--html`` for a page."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from leap_cli.common import workdir_option
from leap_cli.progress import output_console
from leap_cli.report.terminal import printable

console = output_console()


def register(app: typer.Typer) -> None:
    app.command("show", help="Show one segment: its action program as a tree and its five descriptors (--html for a page).")(show)


def show(
    narration_id: str = typer.Argument(..., metavar="NARRATION_ID", help="The segment, e.g. P01_01_12."),
    workdir: Path = typer.Option(Path("leap-work"), "--workdir", callback=workdir_option, help="Work directory holding descriptors/ and programs/."),
    split: str = typer.Option(None, "--split", help="train, val or test (default: search all)."),
    programs: Path = typer.Option(None, "--programs", help="Program records file (default: WORKDIR/programs/SPLIT.jsonl)."),
    descriptors: Path = typer.Option(None, "--descriptors", help="Descriptor records file (default: WORKDIR/descriptors/SPLIT.jsonl)."),
    data: Path = typer.Option(None, "--data", help="Dataset root: its annotations re-check the program against the "
                                                   "segment's labels, its videos give --html's keyframes (default: "
                                                   "WORKDIR/kitchen)."),
    annotations: Path = typer.Option(None, "--annotations", help="Folder of EPIC's annotation CSVs (default "
                                                                 "DATA/annotations)."),
    html: str = typer.Option(None, "--html", metavar="<path>", help="Also write a self-contained HTML page (keyframes, "
                                                                  "descriptors, storyboard); a folder (pages/): "
                                                                  "NARRATION_ID.html in it."),
    run: Path = typer.Option(None, "--run", help="A trained run (runs/NAME): show its predicted program beside the target."),
    shards: Path = typer.Option(None, "--shards", help="With --run: the shards holding the segment (default WORKDIR/shards/SPLIT)."),
) -> None:
    from leap_cli.common import dataset_root, normalize_split, page_out, refuse_overwrite
    from leap_cli.errors import LeapError
    from leap_cli.report.program_view import program_tree
    from leap_cli.report.show import (COMPONENTS, load_segment, narration_of, no_program_text, where_when,
                                      write_segment_html)

    html = page_out(html, f"{narration_id}.html")
    if shards is not None and run is None:
        raise LeapError("--shards is read with --run only (the shards the run's prediction is made from)",
                        fix="add --run runs/NAME, or leave --shards out")
    run_dir = None
    if run is not None:  # a run that is not there is said before the segment is drawn, not after
        from leap_cli.common import resolve_run

        run_dir = resolve_run(run, workdir)
    view = load_segment(workdir, narration_id, split=normalize_split(split) if split else None,
                        programs=programs, descriptors=descriptors, data=data, annotations=annotations)
    if html:
        refuse_overwrite(html, view.files, "--html", "html")
    if view.program:  # (a tree wraps its own lines: soft wrap would crop them at the width)
        console.print(program_tree(view.program, view.status_note, narration_of(view)), soft_wrap=False)
    else:
        console.print(f"[yellow]{printable(narration_id)}: {no_program_text(view.split)}[/]")
    if view.descriptor:
        d = view.descriptor
        table = Table(title=printable(f"Descriptors of {narration_id} ({where_when(d)})", one_line=True),
                      show_lines=True)
        table.add_column("component")
        table.add_column("status")
        table.add_column("text", overflow="fold")
        for name in COMPONENTS:
            c = d.get("components", {}).get(name, {})
            colour = {"ok": "green", "unavailable": "dim", "error": "red"}.get(c.get("status"), "white")
            table.add_row(name, f"[{colour}]{printable(c.get('status', 'missing'))}[/]", printable(c.get("text", "")))
        console.print(table)
    else:
        console.print(f"[yellow]{printable(narration_id)}: no descriptor record yet (run `leap extract`)[/]")
    if html:  # before the prediction, which the page does not hold: its failure does not cost the page
        out = write_segment_html(view, dataset_root(workdir, data), html, annotations)
        console.print(f"wrote {printable(str(out))}")
    if run_dir is not None:
        _show_prediction(run_dir, narration_id, workdir, shards, normalize_split(split) if split else view.split)


def _show_prediction(run_dir: Path, narration_id: str, workdir: Path, shards: Path | None, split: str | None) -> None:
    from leap_cli.programs.provenance import RUN_PROVENANCE, read_run_provenance, run_programs_text
    from leap_cli.report.predicted import SkippedSegment, predicted_program
    from leap_cli.train.checkpoint import load_checkpoint, resolve_checkpoint

    source = resolve_checkpoint(run_dir, "best")  # (once: its "no best.pt, using last.pt" said once)
    ckpt = load_checkpoint(source)
    # what the predicting checkpoint was trained on (a resume on other programs since: the run's file says the
    # latest). A checkpoint of a leap before checkpoints kept it is of a leap before runs kept the file too (one
    # change brought both): a file in its run began at a later resume, and says nothing of this checkpoint's steps
    if "provenance" in ckpt:
        trained_on = run_programs_text(ckpt["provenance"])
    elif read_run_provenance(run_dir) is not None:
        step = f", step {ckpt['step']}," if isinstance(ckpt.get("step"), int) else ""
        trained_on = (f"unknown ({source.name}{step} was saved by a leap before checkpoints kept what they were "
                      f"trained on; the run's {RUN_PROVENANCE} describes its steps from a later resume on)")
    else:
        trained_on = run_programs_text(None)
    console.print(printable(f"{run_dir}: trained on programs: {trained_on}", one_line=True), highlight=False,
                  soft_wrap=True)
    if shards is None:
        from leap_cli.shards.writer import default_out

        task = ((ckpt.get("config") or {}).get("data") or {}).get("task", "recognition")
        shards = default_out(workdir, split or "val", task)
    try:
        cmp = predicted_program(source, narration_id, shards)
    except SkippedSegment as e:  # a fact about the data, not a failure: the rest of the view stands
        console.print(f"[yellow]{printable(narration_id)}: no prediction: build-shards skipped this segment "
                      f"({printable(e.reason)}; the manifest of {printable(str(shards))} lists it)[/]", highlight=False)
        return
    table = Table(title=f"{printable(narration_id)}: target program and {printable(str(run_dir))}'s prediction "
                        f"({printable(cmp.checkpoint)}; as the model sees them: EPIC class keys, hands in brackets; "
                        "conditions of probability >= 0.5)", show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("target (generated program)")
    table.add_column("predicted")
    target = cmp.target or []
    for i in range(max(len(target), len(cmp.predicted))):
        t = target[i] if i < len(target) else ""
        p = cmp.predicted[i] if i < len(cmp.predicted) else ""
        tc = "; ".join(cmp.target_conditions[i]) if cmp.target_conditions and i < len(target) else ""
        pc = "; ".join(cmp.predicted_conditions[i]) if i < len(cmp.predicted) else ""
        colour = "green" if t == p else "red"
        table.add_row(str(i), printable(t) + (f"\n[dim]{printable(tc)}[/]" if tc else ""),
                      f"[{colour}]{printable(p)}[/]" + (f"\n[dim]{printable(pc)}[/]" if pc else ""))
    if cmp.target is None:
        console.print(f"[yellow]{printable(narration_id)}: no valid program in the shards; prediction only[/]")
    console.print(table)
