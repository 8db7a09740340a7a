"""``leap show`` (terminal and --html) on records as leap writes them and as a person or an LLM may have left them."""

import copy
import json

import pytest
from typer.testing import CliRunner

from leap_cli.cli import app
from tests.program_helpers import excerpt_annotations

NID = "P01_11_0"
ESC_TEXT = "chop \x1b[2J\x1b[31mRED\x1b[0m \x1b]0;TITLE\x07 \x9b1m \x7f end"


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """The offline programs of 30 validation segments of EPIC's excerpt, and one descriptor record."""
    root = tmp_path_factory.mktemp("show")
    excerpt_annotations(root, 30)
    r = CliRunner().invoke(app, ["generate-programs", "--workdir", str(root), "--split", "val"])
    assert r.exit_code == 0, r.output
    programs = [json.loads(x) for x in (root / "programs" / "val.jsonl").read_text().splitlines()]
    descriptor = {"narration_id": NID, "video_id": "P01_11", "start": 1.0, "stop": 3.5, "text": "clip text",
                  "components": {"narration": {"status": "ok", "source": "annotations", "text": "take plate"}}}
    return root, programs, descriptor


def write(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def show(root, tmp_path, program=None, descriptor=None, *args, nid=NID):
    """``leap show NID`` of the given records (each alone in its file; None: no such file given)."""
    files = []
    if program is not None:
        files += ["--programs", str(write(tmp_path / "val.jsonl", [program]))]
    if descriptor is not None:
        files += ["--descriptors", str(write(tmp_path / "dval.jsonl", [descriptor]))]
    return CliRunner().invoke(app, ["show", nid, "--workdir", str(root), *files, *args], env={"COLUMNS": "250"})


def test_control_characters_in_records_are_shown_not_sent(stored, tmp_path):
    """ESC sequences in a narration or a finding reached the terminal raw (also piped): they cleared the screen,
    recoloured it, set the window title. They are shown as \\x1b, and the page keeps them escaped as before."""
    root, programs, descriptor = stored
    p = copy.deepcopy(programs[0])
    p["program"]["action"]["narration"] = ESC_TEXT
    p["program"]["steps"][0]["purpose"] = ESC_TEXT
    d = copy.deepcopy(descriptor)
    d["components"]["narration"]["text"] = ESC_TEXT
    r = show(root, tmp_path, p, d, "--html", str(tmp_path / "p.html"))
    assert r.exit_code == 0, r.output
    for raw in ("\x1b", "\x07", "\x9b", "\x7f"):
        assert raw not in r.output
    assert r.output.count("chop \\x1b[2J\\x1b[31mRED\\x1b[0m \\x1b]0;TITLE\\x07 \\x9b1m \\x7f end") == 3
    assert "RED" in (tmp_path / "p.html").read_text()


def test_trailing_backslash_and_newlines_print_as_they_are(stored, tmp_path):
    """rich's escape() doubles a trailing backslash (shown as \\\\ when nothing follows), and a newline in a
    narration split the tree's first line, putting the status on the next."""
    root, programs, _ = stored
    p = copy.deepcopy(programs[0])
    p["program"]["action"]["narration"] = "first line\nsecond line \\"
    r = show(root, tmp_path, p)
    assert r.exit_code == 0, r.output
    first = r.output.splitlines()[0]
    assert first.split()[:5] == [NID, "first", "line\\nsecond", "line", "\\"] and "valid" in first
