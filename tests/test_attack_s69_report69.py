"""Three defects a mutation run found in ``leap show`` and the reports (report69): ``--html newdir/`` wrote a FILE
named ``newdir`` (a Path option loses the trailing slash); a damaged line holding the id was passed over, so
``leap show`` said the id was not found; on an ASCII output a table's columns were measured before the stream wrote
é as ``\\xe9``, so its borders moved."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leap_cli.cli import app
from leap_cli.errors import LeapError
from tests.test_attack_s68_mut68report import NID, PROGRAM, descriptor_record, program_record, show, write
from tests.test_programs_validate import kitchen  # noqa: F401  (its small annotations, for validate-programs)

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- --html naming a folder

def test_show_html_given_a_folder_writes_the_page_in_it(tmp_path):
    """--html NEW/ (not there yet, trailing slash) wrote a file NEW; an existing folder was refused: both now mean
    "a folder": NARRATION_ID.html in it, the folder made. A name without the slash stays a file."""
    record, desc = program_record(), descriptor_record()
    r = show(tmp_path, record, desc, "--html", f"{tmp_path / 'pages'}/")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "pages").is_dir() and (tmp_path / "pages" / f"{NID}.html").read_text().startswith("<!DOCTYPE")
    assert f"wrote {tmp_path / 'pages' / f'{NID}.html'}" in " ".join(r.output.split())
    (tmp_path / "old").mkdir()
    r = show(tmp_path, record, desc, "--html", tmp_path / "old")  # an existing folder, no slash
    assert r.exit_code == 0 and (tmp_path / "old" / f"{NID}.html").is_file(), r.output
    r = show(tmp_path, record, desc, "--html", tmp_path / "page")  # a new name without a slash: the page itself
    assert r.exit_code == 0 and (tmp_path / "page").is_file(), r.output


def test_page_out_keeps_the_slash_takes_missing_parents_out_and_refuses_empty(tmp_path):
    from leap_cli.common import page_out

    assert page_out(None, "x.html") is None
    assert page_out(f"{tmp_path}/new/", "x.html") == tmp_path / "new" / "x.html"
    assert page_out(f"{tmp_path}/nothere/../new/", "x.html") == tmp_path / "new" / "x.html"
    assert page_out(f"{tmp_path}/p.html", "x.html") == tmp_path / "p.html"
    assert page_out(str(tmp_path), "a/b.html") == tmp_path / "a_b.html"  # (an id is one file name)
    with pytest.raises(LeapError, match="--html is empty"):
        page_out("", "x.html")


def test_leap_main_refuses_an_empty_html_as_it_did_when_it_was_a_path(tmp_path):
    """--html became a string option (a Path loses the slash): `--html "$PAGE"` with PAGE unset is still refused
    by the command line's check for empty paths, not taken as the current folder."""
    done = subprocess.run([sys.executable, "-m", "leap_cli", "show", NID, "--workdir", str(tmp_path), "--html", ""],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1"})
    assert done.returncode == 2 and done.stderr.startswith("error: --html is empty"), done
    assert list(tmp_path.iterdir()) == []


def test_validate_programs_html_given_a_folder_writes_the_reports_page_in_it(kitchen):  # noqa: F811
    runner = CliRunner()
    assert runner.invoke(app, ["generate-programs", "--workdir", str(kitchen), "--split", "val"]).exit_code == 0
    r = runner.invoke(app, ["validate-programs", "--workdir", str(kitchen), "--split", "val", "--html",
                            f"{kitchen / 'pages'}/"])
    assert r.exit_code == 0, r.output
    page = kitchen / "pages" / "val.report.html"
    assert page.read_text().startswith("<!DOCTYPE html>") and (kitchen / "programs" / "val.report.json").is_file()


# ---------------------------------------------------------------- a damaged line holding the id

def lines(*items):
    return "".join((x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)) + "\n" for x in items)


def test_a_damaged_line_of_the_id_is_said_with_its_line_and_the_stage_to_rerun(tmp_path):
    """It was passed over: `leap show` then said "no program or descriptor record" (check the id)."""
    good = json.dumps(program_record())
    f = tmp_path / "val.jsonl"
    f.write_text(lines(program_record(nid="P01_01_4"), good[:50], program_record(nid="P01_01_6")))
    r = CliRunner().invoke(app, ["show", NID, "--workdir", str(tmp_path), "--programs", str(f)])
    assert isinstance(r.exception, LeapError), r.output
    said = r.exception.one_line()
    assert str(f) in said and NID in said and "line 2" in said and "damaged" in said, said
    assert "delete that line and rerun leap generate-programs" in said and "no program or descriptor" not in said
    f.write_text(lines(program_record(nid="P01_01_4"), program_record()) + good[:50])  # a write cut short, last
    r = CliRunner().invoke(app, ["show", NID, "--workdir", str(tmp_path), "--programs", str(f)])
    said = r.exception.one_line()
    assert "line 3" in said and "a write cut short" in said and "rerun leap generate-programs, which cuts" in said
    # the default search: the descriptors' stage is named for a descriptor file
    (tmp_path / "descriptors").mkdir()
    (tmp_path / "descriptors" / "val.jsonl").write_text(json.dumps(descriptor_record())[:60] + "\n")
    r = CliRunner().invoke(app, ["show", NID, "--workdir", str(tmp_path)])
    said = r.exception.one_line()
    assert "descriptors/val.jsonl" in said and "line 1" in said and "rerun leap extract" in said, said


def test_a_later_good_line_of_the_id_is_used_and_another_records_damaged_mention_is_not_its(tmp_path):
    from leap_cli.report.show import record_of

    good = program_record()
    f = tmp_path / "val.jsonl"
    f.write_text(lines(json.dumps(good)[:50], {**good, "status": "invalid"}, good))  # a resumed stage appended it
    assert record_of(f, NID) == good
    other = json.dumps({"narration_id": "P01_01_12", "after": NID, "v": 1})
    f.write_text(lines(good, other[:-3]))  # another record's damaged line that mentions the id
    assert record_of(f, NID) == good
    f.write_text(lines(other[:-3]))
    assert record_of(f, NID) is None


# ---------------------------------------------------------------- an ASCII output: tables measured as written

def test_an_ascii_output_writes_escapes_before_the_table_is_measured(tmp_path):
    """PYTHONIOENCODING=ascii: rich measured é, ☃ and 洗 as 1, 1 and 2 columns, the stream then wrote \\xe9,
    \\u2603 and \\u6d17 (4 and 6 columns): the descriptor table's right border moved on that row."""
    program = json.loads(json.dumps(PROGRAM))
    program["action"]["narration"] = "wash platé ☃"
    write(tmp_path / "val.jsonl", [program_record(program)])
    comps = {"narration": {"status": "ok", "source": "annotations", "text": "laver l'assiette ☃ 洗碗 é"},
             "audio": {"status": "ok", "text": "tap \x1b[31m water"}}
    write(tmp_path / "dval.jsonl", [descriptor_record(comps)])
    done = subprocess.run([sys.executable, "-m", "leap_cli", "show", NID, "--workdir", str(tmp_path), "--programs",
                           str(tmp_path / "val.jsonl"), "--descriptors", str(tmp_path / "dval.jsonl")],
                          capture_output=True, timeout=60,
                          env={**os.environ, "PYTHONIOENCODING": "ascii", "COLUMNS": "120", "PYTHONPATH": str(REPO)})
    out = done.stdout.decode("ascii")
    assert done.returncode == 0, out + done.stderr.decode("ascii")
    table = [x for x in out.splitlines() if x.startswith(("|", "+")) and x.endswith(("|", "+"))]  # (not the tree)
    assert len(table) >= 11 and any("\\u6d17\\u7897 \\xe9" in x for x in table), out
    assert len({len(x) for x in table}) == 1, "\n".join(table)


def test_printable_escapes_only_what_the_output_cannot_encode(monkeypatch):
    import io

    from leap_cli.report.terminal import printable

    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BytesIO(), encoding="latin-1"))
    assert printable("café ☃ [b]") == "café \\u2603 \\[b]"
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BytesIO(), encoding="utf-8"))
    assert printable("café ☃ 洗") == "café ☃ 洗"
