"""Found by re-running the suite at the lowest releases pyproject.toml admits (torch 2.3.0, typer 0.27.0, rich 13.8.0,
NumPy 1.26.0, ...): one failure there was not of the releases but of the temp folder's length. leap printed a path
it wrote ("wrote PATH ...") through rich without soft_wrap, so piped output (rich's 80 columns, a log file) broke
a path longer than the line with a newline inside it, and the path a user copied from the log was not the file.
Every command's console soft-wraps now (``progress.output_console``)."""

import copy

import pytest
from typer.testing import CliRunner

from leap_cli.cli import app
from tests.test_show import NID, stored, write  # noqa: F401 - the module's fixture, reused

LONG = "a_folder_name_long_enough_that_the_path_passes_eighty_columns"


def test_a_long_written_path_is_printed_whole_when_piped(stored, tmp_path):
    root, programs, descriptor = stored
    out = tmp_path / LONG / "page.html"
    out.parent.mkdir()
    args = ["show", NID, "--workdir", str(root), "--programs", str(write(tmp_path / "val.jsonl", [programs[0]])),
            "--descriptors", str(write(tmp_path / "dval.jsonl", [copy.deepcopy(descriptor)])), "--html", str(out)]
    r = CliRunner().invoke(app, args)  # no terminal: rich's default 80 columns, as `leap show ... > log` gets
    assert r.exit_code == 0, r.output
    assert out.is_file() and len(str(out)) > 80
    assert any(str(out) in line for line in r.output.splitlines()), r.output


def test_every_command_prints_on_a_console_that_breaks_no_line():
    import importlib
    import pkgutil

    import leap_cli.commands as commands

    consoles = {m.name: importlib.import_module(f"leap_cli.commands.{m.name}").console
                for m in pkgutil.iter_modules(commands.__path__)
                if hasattr(importlib.import_module(f"leap_cli.commands.{m.name}"), "console")}
    assert len(consoles) >= 10 and all(c.soft_wrap for c in consoles.values()), consoles
