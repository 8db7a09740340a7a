"""``leap show NARRATION_ID``: a segment's program as a tree, with its five descriptors; ``--html`` for a page."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()


def register(app: typer.Typer) -> None:
    app.command("show", help="Show one segment: its action program as a tree and its five descriptors (--html for a page).")(show)


def show(
    narration_id: str = typer.Argument(..., help="The segment, e.g. P01_01_12."),
    workdir: Path = typer.Option(Path("leap-work"), "--workdir", help="Work directory holding descriptors/ and programs/."),
    split: str = typer.Option(None, "--split", help="train, val or test (default: search all)."),
    programs: Path = typer.Option(None, "--programs", help="Program records file (default: WORKDIR/programs/SPLIT.jsonl)."),
    descriptors: Path = typer.Option(None, "--descriptors", help="Descriptor records file (default: WORKDIR/descriptors/SPLIT.jsonl)."),
    data: Path = typer.Option(None, "--data", help="Dataset root for keyframes in --html (default: WORKDIR/kitchen)."),
    html: Path = typer.Option(None, "--html", help="Also write a self-contained HTML page (keyframes, descriptors, storyboard)."),
) -> None:
    from leap_cli.common import dataset_root, normalize_split
    from leap_cli.report.program_view import program_tree
    from leap_cli.report.show import COMPONENTS, load_segment, write_segment_html

    view = load_segment(workdir, narration_id, split=normalize_split(split) if split else None,
                        programs=programs, descriptors=descriptors)
    if view.program:
        console.print(program_tree(view.program))
    else:
        console.print(f"[yellow]{escape(narration_id)}: no program record yet (run `leap generate-programs`)[/]")
    if view.descriptor:
        d = view.descriptor
        table = Table(title=escape(f"Descriptors of {narration_id} ({d.get('video_id')}, "
                                   f"{d.get('start', 0):.2f}-{d.get('stop', 0):.2f} s)"),
                      show_lines=True)
        table.add_column("component")
        table.add_column("status")
        table.add_column("text", overflow="fold")
        for name in COMPONENTS:
            c = d.get("components", {}).get(name, {})
            colour = {"ok": "green", "unavailable": "dim", "error": "red"}.get(c.get("status"), "white")
            table.add_row(name, f"[{colour}]{escape(str(c.get('status', 'missing')))}[/]", escape(str(c.get("text", ""))))
        console.print(table)
    else:
        console.print(f"[yellow]{escape(narration_id)}: no descriptor record yet (run `leap extract`)[/]")
    if html:
        out = write_segment_html(view, dataset_root(workdir, data), html)
        console.print(f"wrote {escape(str(out))}")
