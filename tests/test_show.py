"""``leap show`` (terminal and --html) on records as leap writes them and as a person or an LLM may have left them."""

import copy
import json
import os

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
    page = (tmp_path / "p.html").read_text()
    assert "RED" in page and "\\x1b[31mRED" in page and "\x1b" not in page


def test_the_page_writes_out_characters_that_reorder_text(stored, tmp_path):
    """A right-to-left override in a narration flipped the page's title and cells (the terminal showed \\u202e)."""
    root, programs, descriptor = stored
    p = copy.deepcopy(programs[0])
    p["program"]["action"]["narration"] = "cut \u202eotamot\u200b onion"
    r = show(root, tmp_path, p, descriptor, "--html", str(tmp_path / "p.html"))
    assert r.exit_code == 0, r.output
    page = (tmp_path / "p.html").read_text()
    assert "cut \\u202eotamot\\u200b onion" in page and "\u202e" not in page and "\u200b" not in page


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


def test_records_of_another_shape_are_one_line_errors(stored, tmp_path):
    """show crashed with a traceback on a program record whose errors or provenance had another shape, and on a
    descriptor whose times were null, strings, NaN, infinite or reversed (with --html after the terminal part)."""
    from leap_cli.errors import LeapError

    root, programs, descriptor = stored
    for change, says in (({"errors": "oops"}, "errors is a str, not a list"),
                         ({"errors": ["plain string"]}, "errors[0] is a str"),
                         ({"provenance": "offline"}, "provenance is a str")):
        r = show(root, tmp_path, {**programs[0], **change}, None, "--html", str(tmp_path / "p.html"))
        assert isinstance(r.exception, LeapError), r.output
        assert f"malformed program record: {says}" in str(r.exception) and "\n" not in str(r.exception)
    nan, inf = float("nan"), float("inf")
    for change, says in (({"start": None}, "start is null"), ({"start": "1.5"}, 'start is "1.5"'),
                         ({"start": nan}, "start is NaN"), ({"stop": inf}, "stop is Infinity"),
                         ({"stop": 0.5}, "the segment stops (0.5) before it starts (1.0)"),
                         ({"start": -5.0}, "start is -5.0, negative")):  # (it said "not a number of seconds")
        r = show(root, tmp_path, programs[0], {**descriptor, **change}, "--html", str(tmp_path / "p.html"))
        assert isinstance(r.exception, LeapError), r.output
        assert f"malformed descriptor record: {says}" in str(r.exception)
    assert not (tmp_path / "p.html").exists()


def test_a_descriptor_without_times_says_so(stored, tmp_path):
    """Without video_id, start and stop the title said "(None, 0.00-0.00 s)" and the page "0.00-0.00 s"."""
    root, programs, descriptor = stored
    d = {k: v for k, v in descriptor.items() if k not in ("video_id", "start", "stop")}
    r = show(root, tmp_path, programs[0], d, "--html", str(tmp_path / "p.html"))
    assert r.exit_code == 0, r.output
    assert f"Descriptors of {NID} (video ?, ?-? s)" in " ".join(r.output.split())  # (the title wraps)
    page = (tmp_path / "p.html").read_text()
    assert "video ?, ?-? s" in page
    # the storyboard said each card shows the keyframe of an even share of the segment, on a page without any
    assert "No keyframes: the descriptor record does not say the video and times" in page and "even share" not in page
    r = show(root, tmp_path, programs[0], descriptor, "--html", str(tmp_path / "q.html"))  # times, but no video
    page = (tmp_path / "q.html").read_text()
    assert r.exit_code == 0 and "No keyframes: " in page and "even share" not in page and str(root) not in page


def test_the_page_never_replaces_a_record_file(stored, tmp_path):
    """--html D.jsonl replaced the descriptors with the page (also a file the search read, or a link to one)."""
    root, programs, descriptor = stored
    for target in ("dval.jsonl", "val.jsonl", "link.html"):
        if target == "link.html":
            (tmp_path / target).symlink_to(tmp_path / "dval.jsonl")
        r = show(root, tmp_path, programs[0], descriptor, "--html", str(tmp_path / target))
        assert r.exit_code != 0 and "--html would write over" in str(r.exception), r.output
        assert json.loads((tmp_path / "dval.jsonl").read_text()) == descriptor
    r = CliRunner().invoke(app, ["show", NID, "--workdir", str(root), "--html", str(root / "programs" / "val.jsonl")])
    assert r.exit_code != 0 and "--html would write over" in str(r.exception), r.output


def test_the_page_never_replaces_a_file_that_is_not_a_page(stored, tmp_path):
    """--html naming the annotations or a video (a typo; files show need not read) replaced them with the page;
    a page written before is replaced; a folder gets the page NID.html in it (report69: it was refused)."""
    root, programs, descriptor = stored
    csv = tmp_path / "EPIC_100_train.csv"
    csv.write_text("narration_id,participant_id\nP01_01_0,P01\n")
    r = show(root, tmp_path, programs[0], descriptor, "--html", str(csv))
    assert r.exit_code != 0 and "--html would write over" in str(r.exception) and "not an HTML page" in str(r.exception)
    assert csv.read_text().startswith("narration_id,")
    page = tmp_path / "p.html"
    for _ in range(2):  # the second run replaces the first run's page
        r = show(root, tmp_path, programs[0], descriptor, "--html", str(page))
        assert r.exit_code == 0, r.output
    r = show(root, tmp_path, programs[0], descriptor, "--html", str(tmp_path))
    assert r.exit_code == 0 and (tmp_path / f"{NID}.html").read_text().startswith("<!DOCTYPE html>"), r.output


def test_a_file_of_the_wrong_kind_is_one_line(stored, tmp_path):
    """The descriptors given as --programs said "malformed program record ... (fix or delete that line)"; the
    programs given as --descriptors drew a table of "?" and "missing"; a checkpoint said "no program record yet"."""
    root, programs, descriptor = stored
    r = show(root, tmp_path, programs[0], descriptor)  # (writes the two files the other cases swap)
    assert r.exit_code == 0, r.output
    for option, path, said in (("--programs", tmp_path / "dval.jsonl", "holds descriptor records"),
                               ("--descriptors", tmp_path / "val.jsonl", "holds program records")):
        r = CliRunner().invoke(app, ["show", NID, "--workdir", str(root), option, str(path)])
        assert r.exit_code != 0 and said in str(r.exception), (option, r.output)
    r = CliRunner().invoke(app, ["show", NID, "--workdir", str(root), "--shards", str(tmp_path)])
    assert r.exit_code != 0 and "--shards is read with --run only" in str(r.exception)  # (it was ignored)
    blob = tmp_path / "best.pt"
    blob.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    r = CliRunner().invoke(app, ["show", NID, "--workdir", str(root), "--programs", str(blob)])
    assert r.exit_code != 0 and "not a JSONL file of program records (binary data)" in str(r.exception), r.output


def test_the_page_is_written_when_the_prediction_fails(stored, tmp_path, monkeypatch):
    """The page (target and descriptors, not the prediction) was written after the prediction: a segment that is
    not in the shards cost it."""
    import leap_cli.commands.show as show_cmd
    import leap_cli.common as common
    from leap_cli.errors import LeapError

    def fail(*a, **k):
        raise LeapError(f"{NID} is not in these shards")

    monkeypatch.setattr(common, "resolve_run", lambda run, workdir: tmp_path)
    monkeypatch.setattr(show_cmd, "_show_prediction", fail)
    root, programs, descriptor = stored
    r = show(root, tmp_path, programs[0], descriptor, "--run", "runs/x", "--html", str(tmp_path / "p.html"))
    assert isinstance(r.exception, LeapError) and (tmp_path / "p.html").exists()


def test_a_non_ascii_id_is_found_as_leap_writes_it(stored, tmp_path):
    """The search looked for the id as json.dumps escapes it (\\u00e9); leap's writer keeps it as UTF-8."""
    root, programs, _ = stored
    nid = "P01_01_é"
    f = tmp_path / "val.jsonl"
    for ensure_ascii in (False, True):
        f.write_text(json.dumps({**programs[0], "narration_id": nid}, ensure_ascii=ensure_ascii) + "\n", encoding="utf-8")
        r = CliRunner().invoke(app, ["show", nid, "--workdir", str(root), "--programs", str(f)])
        assert r.exit_code == 0 and nid in r.output, r.output


def test_a_record_that_is_no_segment_of_the_split_says_so(stored, tmp_path):
    """A record whose id the split's annotations lack was shown as plainly valid (validate-programs counts it
    "not in split"): its labels were never checked."""
    root, programs, descriptor = stored
    r = show(root, tmp_path, {**programs[0], "narration_id": "P09_99_1"}, None, nid="P09_99_1")
    assert r.exit_code == 0, r.output
    assert "not a segment of the val split in the annotations" in " ".join(r.output.split()), r.output
    r = show(root, tmp_path, programs[0], None)
    assert "not a segment of" not in r.output


def test_the_program_is_checked_again_as_validate_programs_does(stored, tmp_path):
    """show gave the stored status: a program validate-programs finds invalid (build-shards drops it) was shown
    as a green "valid". It is checked again where the class files are, else its status is labelled as stored."""
    root, programs, descriptor = stored
    p = copy.deepcopy(programs[0])
    p["program"]["steps"][0]["verb"] = "teleport"
    r = show(root, tmp_path, p, None, "--html", str(tmp_path / "p.html"))
    assert r.exit_code == 0, r.output
    first = " ".join(r.output.splitlines()[0].split())
    assert "take plate invalid (stored as valid)" in first and "/steps/0/verb" in r.output
    page = (tmp_path / "p.html").read_text()
    assert "<span class='tag invalid'>invalid</span> <span class='muted'>(stored as valid)</span>" in page
    assert ", split val" in page  # the split the file's name says
    r = CliRunner().invoke(app, ["show", NID, "--workdir", str(tmp_path), "--programs", str(tmp_path / "val.jsonl")],
                           env={"COLUMNS": "250"})
    assert "valid (as stored, not re-checked" in r.output.splitlines()[0]
    # which folder held no class files, and what to pass (it said "(--data)" of a default folder not there)
    assert f"no EPIC class files in {tmp_path / 'kitchen' / 'annotations'}: pass --data ROOT" in r.output.splitlines()[0]


def test_findings_are_listed_once_and_the_status_is_one_word(stored, tmp_path):
    """The stored findings and those found again were listed both; the page's tag was "invalid, but the program
    is malformed", which no style colours."""
    root, programs, _ = stored
    p = {**programs[0], "status": "invalid", "program": {"steps": 5}}
    from leap_cli.programs.schema import validate_program

    p["errors"] = [f.to_dict() for f in validate_program(p["program"])]
    message = p["errors"][0]["message"]
    for workdir in (root, tmp_path):  # with the class files (checked again) and without (as stored)
        r = CliRunner().invoke(app, ["show", NID, "--workdir", str(workdir), "--programs",
                                     str(write(tmp_path / "val.jsonl", [p])), "--html", str(tmp_path / "p.html")])
        assert r.exit_code == 0, r.output
        assert " ".join(r.output.split()).count(message) == 1
        page = (tmp_path / "p.html").read_text()
        assert page.count("<tr><td>") == len(p["errors"]) and "<span class='tag invalid'>invalid</span>" in page
        assert "malformed program" in r.output.splitlines()[0]


def test_a_failed_record_and_a_missing_program(stored, tmp_path):
    """A request failure has no pointer: the tree showed ": request failed", the page an empty cell under
    "Validation findings". A page without a program record did not say so."""
    root, programs, descriptor = stored
    p = {**programs[0], "status": "failed", "program": None,
         "errors": [{"pointer": "", "message": "request failed: timeout"}]}
    r = show(root, tmp_path, p, None, "--html", str(tmp_path / "p.html"))
    assert r.exit_code == 0, r.output
    assert "└── request failed: timeout" in r.output
    # the heading of a failed record says the segment's narration, from its descriptor (it had none)
    said = {**descriptor, "components": {"narration": {"status": "ok", "source": "annotations",
                                                       "data": {"narration": "take plate"}, "text": "x"}}}
    r = show(root, tmp_path, p, said)
    assert f"{NID}  take plate  failed" in r.output, r.output
    page = (tmp_path / "p.html").read_text()
    assert "<h2>Why it failed</h2>" in page and "<td>(the record)</td><td>request failed: timeout</td>" in page
    r = show(root, tmp_path, {**programs[1]}, descriptor, "--html", str(tmp_path / "p.html"))  # of another id
    assert r.exit_code == 0, r.output
    assert "No program record" in (tmp_path / "p.html").read_text()


def test_a_loop_markers_condition_reads_until():
    """The --run table printed a loop's until condition as "pre cut(potato)", as the targets store it."""
    import torch

    from leap_cli.report.predicted import _conditions

    class Vocab:
        conditions = ["cut(potato)", "clean(plate)"]

    probs = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 1.0], [0, 1.0, 0, 0]])
    assert _conditions(Vocab, probs, ["<loop>", "cut(potato) [left]", "<if>"]) == [
        ["until cut(potato)"], ["pre clean(plate)", "post clean(plate)"], ["if clean(plate)"]]


def test_chart_labels_are_cut_before_escaping_and_long_words_wrap():
    """esc(label)[:28] cut "&amp;" to "&a" and said nothing; a purpose without spaces ran out of its card."""
    from leap_cli.report.html import CSS, bar_chart

    svg = bar_chart("t", [("a" * 26 + "&b", 1.0), ("salt & pepper", 2.0)])
    assert "&a<" not in svg and "salt &amp; pepper<title>" in svg and "…<title>" in svg
    assert "<title>" + "a" * 26 + "&amp;b</title>" in svg
    assert ".card,.step,td{overflow-wrap:anywhere}" in CSS


def test_record_text_shows_bidirectional_and_zero_width_characters():
    """A narration holding U+202E (right-to-left override) reversed the rest of the terminal line, and U+200B hid
    in it: they are shown as \\uNNNN like the control characters are shown as \\xNN."""
    from rich.console import Console

    from leap_cli.report.terminal import printable

    console = Console(width=200, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(printable("cut \u202eotamot\u200b \x1b[2J onion"), highlight=False)
    text = console.export_text()
    assert "\\u202e" in text and "\\u200b" in text and "\\x1b" in text
    assert "\u202e" not in text and "\u200b" not in text and "\x1b" not in text


def test_a_test_segment_without_a_program_is_not_told_to_run_what_refuses_it():
    """`leap show` of a test segment said "run `leap generate-programs`", which refuses the test split offline."""
    from leap_cli.report.show import SegmentView, no_program_text, segment_html

    assert "run `leap generate-programs`" in no_program_text("val")
    said = no_program_text("test")
    assert "generate-programs" in said and "--backend openai" in said and "nothing needs them" in said
    page = segment_html(SegmentView("P01_101_0", "test", None, None), [])
    assert "test programs come from an LLM only" in page
