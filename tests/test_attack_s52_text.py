"""Attacks with text leap did not write, through every stage: EPIC narrations edited by a user (a BOM, CR/LF inside a
CSV field, tabs, NUL, ESC sequences, HTML), LLM replies with emoji, escaped lone surrogates, U+2028/U+2029, ESC
sequences and HTML, and JSONL files of other tools holding U+2028. Each record must be stored, read back, printed
with its control characters shown and put on HTML pages escaped; a JSONL file must keep one record per line for
every reader."""

from __future__ import annotations

import copy
import csv
import io
import json
import sqlite3
from pathlib import Path

import pytest

from leap_cli.io import read_jsonl
from tests.program_helpers import excerpt_annotations, excerpt_programs, server_config
from tests.programs_llm_server import Reply, ScriptedServer, narration_id_of

N = 6
ENV = {"COLUMNS": "250", "NO_COLOR": "1"}


def leap(*args):
    from typer.testing import CliRunner

    from leap_cli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


@pytest.fixture(scope="module")
def programs():
    return excerpt_programs(N)


def _odd_server_run(work: Path, programs: dict, texts: list[str], monkeypatch, *, ascii_ids=()):
    """generate-programs against a scripted server whose reply for the i-th segment puts texts[i] in every
    sub-action's purpose (written with ensure_ascii for the indices in ascii_ids, so that escapes stay escapes)."""
    excerpt_annotations(work, rows=N)
    monkeypatch.setenv("LEAP_TEST_KEY", "sk-test-text-attack-key")
    ids = list(programs)
    from leap_cli.programs.generate import generate_programs

    def script(body, n):
        i = ids.index(narration_id_of(body))
        p = copy.deepcopy(programs[ids[i]])
        for st in p["steps"]:
            if st.get("type") == "sub_action":
                st["purpose"] = "PURPOSE"
        text = json.dumps(p, ensure_ascii=i in ascii_ids).replace('"PURPOSE"', texts[i])
        return Reply(text)

    with ScriptedServer(script) as server:
        s = generate_programs(server_config(work, server))
    return ids, s


def _purposes(rec: dict) -> list[str]:
    return [st["purpose"] for st in rec["program"]["steps"] if st.get("type") == "sub_action"]


# JSON string literals as an LLM might send them (the text of the reply, escapes included)
REPLY_TEXTS = [json.dumps("crème fraîche 🥄 jalapeño", ensure_ascii=False),
               '"half an emoji \\ud83d then a whole one \\ud83d\\ude00"',
               json.dumps("ESC \x1b]0;pwned\x07 clears \x1b[2J the screen"),
               json.dumps("<script>alert(1)</script> &amp; <b>"),
               json.dumps("right-to-left \u202e override and tab\tend"),
               json.dumps("plain")]


def test_odd_replies_are_stored_read_back_printed_and_escaped(tmp_path, programs, monkeypatch):
    """An LLM replies with emoji, an escaped lone surrogate (a reply cut inside an emoji), ESC sequences, HTML and a
    bidirectional override in a purpose: every record is valid and reads back (the lone half becomes U+FFFD), the
    cache holds the replies, `leap show` prints the ESC as \\x1b (a terminal would otherwise run it), and
    `leap show --html` / `leap validate-programs --html` show the HTML as text."""
    ids, s = _odd_server_run(tmp_path, programs, REPLY_TEXTS, monkeypatch, ascii_ids=(1,))
    assert s.statuses["valid"] == N, s.statuses
    recs = {r["narration_id"]: r for r in read_jsonl(tmp_path / "programs" / "val.jsonl")}
    assert set(_purposes(recs[ids[0]])) == {"crème fraîche 🥄 jalapeño"}
    assert set(_purposes(recs[ids[1]])) == {"half an emoji \ufffd then a whole one 😀"}
    assert set(_purposes(recs[ids[2]])) == {"ESC \x1b]0;pwned\x07 clears \x1b[2J the screen"}
    # the output is UTF-8 throughout (no surrogate slipped through)
    (tmp_path / "programs" / "val.jsonl").read_bytes().decode("utf-8")
    with sqlite3.connect(tmp_path / "programs" / "cache.sqlite") as db:
        rows = db.execute("SELECT * FROM cache").fetchall()
    assert len(rows) == N and all("\ud83d" not in str(row) for row in rows)
    res = leap("show", ids[2], "--workdir", tmp_path, "--split", "val")
    assert res.exit_code == 0, res.output
    assert "\x1b" not in res.output and "\\x1b" in res.output
    assert "\x07" not in res.output
    html = tmp_path / "s.html"
    res = leap("show", ids[3], "--workdir", tmp_path, "--split", "val", "--html", html)
    assert res.exit_code == 0, res.output
    page = html.read_text(encoding="utf-8")
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    res = leap("validate-programs", "--workdir", tmp_path, "--split", "val", "--html", tmp_path / "v.html")
    assert res.exit_code == 0, res.output
    assert "<script>alert(1)" not in (tmp_path / "v.html").read_text(encoding="utf-8")


def test_a_reply_with_line_separators_stays_one_jsonl_line_for_every_reader(tmp_path, programs, monkeypatch):
    """An LLM puts U+2028 / U+2029 (and NEL, U+0085) inside a purpose. JSON allows them raw in a string, but
    Python's str.splitlines() -- the way leap itself reads detection and hand-object JSONL -- and other line-based
    tools count them as line breaks: a user's `for line in text.splitlines(): json.loads(line)` over
    programs/val.jsonl fails with 'Unterminated string'. The file must keep one record per line for them too.
    Was wrong: the records were written with the three raw (now escaped: ``io.json_line``)."""
    texts = [json.dumps("line\u2028separator", ensure_ascii=False), json.dumps("para\u2029separator",
                                                                                 ensure_ascii=False),
             json.dumps("next\x85line", ensure_ascii=False)] + [json.dumps("plain")] * (N - 3)
    ids, s = _odd_server_run(tmp_path, programs, texts, monkeypatch)
    assert s.statuses["valid"] == N, s.statuses
    out = tmp_path / "programs" / "val.jsonl"
    recs = {r["narration_id"]: r for r in read_jsonl(out)}  # leap's own reader (bytes, split on \n) holds
    assert set(_purposes(recs[ids[0]])) == {"line\u2028separator"}
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == N
    assert [json.loads(ln)["narration_id"] for ln in lines] == [json.loads(ln)["narration_id"] for ln in
                                                                  out.read_bytes().split(b"\n") if ln]


def test_a_detections_file_with_a_line_separator_in_a_label_is_read(tmp_path):
    """A user's open-vocabulary detector writes its labels with json.dumps(ensure_ascii=False), one holding U+2028
    (or NEL from a mis-decoded '…'): valid JSON Lines. `leap extract` refuses the file: 'line 1 is not a frame of
    labelled detections (JSONDecodeError: Unterminated string ...)'. Was wrong: it split the file with
    str.splitlines() (and so did the hand-object reader)."""
    from leap_cli.extract.detections import read_object_detections

    path = tmp_path / "P01_01.jsonl"
    obj = {"label": "jalapeño\u2028pepper", "bbox": {"left": 0.1, "top": 0.1, "right": 0.5, "bottom": 0.5},
           "score": 0.9}
    path.write_text("".join(json.dumps({"video_id": "P01_01", "frame_number": n, "objects": [obj]},
                                       ensure_ascii=False) + "\n" for n in (1, 2)), encoding="utf-8")
    frames = read_object_detections(path)
    assert sorted(frames) == [1, 2]
    assert frames[1][0].label == "jalapeño\u2028pepper"


def _odd_annotations(work: Path) -> tuple[list[str], list[str]]:
    """The excerpt's validation CSV rewritten by a spreadsheet: a BOM, CRLF line ends, and odd narrations."""
    ann = excerpt_annotations(work, rows=N)
    path = ann / "EPIC_100_validation.csv"
    rows = list(csv.reader(path.open(encoding="utf-8", newline="")))
    col = rows[0].index("narration")
    odd = ["open crème fraîche 🥄 drawer", "grab towel\r\nthen wipe", "wash\tjalapeño",
           "cut \x1b[31mred\x1b[0m onion", "put <script>alert(1)</script> & \"x\"", "stir\x00 soup"]
    for r, t in zip(rows[1:], odd):
        r[col] = t
    buf = io.StringIO(newline="")
    csv.writer(buf).writerows(rows)  # (CRLF line ends, CR/LF and quotes inside a field quoted)
    path.write_bytes(("\ufeff" + buf.getvalue()).encode("utf-8"))
    return [r[0] for r in rows[1:]], odd


def test_edited_narrations_go_through_prompt_programs_show_and_html(tmp_path):
    """A user's re-annotated CSV (saved with a BOM and CRLF, a narration holding CR/LF, a tab, NUL, ESC colour codes
    and HTML) goes through: the columns do not shift (the narration ids read back), the prompt shows each
    narration on one line with no raw ESC, the offline programs keep the narration, `leap show` prints ESC as
    \\x1b, and the HTML pages show the narration's HTML as text."""
    ids, odd = _odd_annotations(tmp_path)
    res = leap("generate-programs", "--workdir", tmp_path, "--split", "val")
    assert res.exit_code == 0, res.output
    recs = {r["narration_id"]: r for r in read_jsonl(tmp_path / "programs" / "val.jsonl")}
    assert sorted(recs) == sorted(ids) and all(r["status"] == "valid" for r in recs.values())
    assert recs[ids[0]]["program"]["action"]["narration"] == odd[0]
    for nid in ids[1:4]:
        res = leap("generate-programs", "--workdir", tmp_path, "--split", "val", "--dry-run", "--narration-id", nid)
        assert res.exit_code == 0, res.output
        line = [ln for ln in res.output.split("\n") if ln.startswith("Narration:")][-1]
        assert "\x1b" not in line and "\r" not in line
    res = leap("show", ids[3], "--workdir", tmp_path, "--split", "val")
    assert res.exit_code == 0, res.output
    assert "\x1b" not in res.output and "\\x1b" in res.output
    res = leap("show", ids[5], "--workdir", tmp_path, "--split", "val")
    assert res.exit_code == 0 and "\x00" not in res.output, res.output
    html = tmp_path / "s.html"
    res = leap("show", ids[4], "--workdir", tmp_path, "--split", "val", "--html", html)
    assert res.exit_code == 0, res.output
    assert "<script>alert(1)" not in html.read_text(encoding="utf-8")
    res = leap("validate-programs", "--workdir", tmp_path, "--split", "val", "--html", tmp_path / "v.html")
    assert res.exit_code == 0, res.output
    assert "<script>alert(1)" not in (tmp_path / "v.html").read_text(encoding="utf-8")


def test_a_csv_that_is_not_utf8_is_one_error_naming_it(tmp_path):
    """A narration holding a lone surrogate written out as bytes (invalid UTF-8, ED A0 BD) is one error line naming
    the file and saying to save it as UTF-8, not a traceback."""
    ann = excerpt_annotations(tmp_path, rows=N)
    path = ann / "EPIC_100_validation.csv"
    data = path.read_bytes().replace(b"take plate", b"take \xed\xa0\xbd plate", 1)
    path.write_bytes(data)
    res = leap("generate-programs", "--workdir", tmp_path, "--split", "val")
    from leap_cli.errors import LeapError

    assert isinstance(res.exception, LeapError), res.output  # (cli.main prints it as one line and exits 2)
    text = str(res.exception)
    assert "EPIC_100_validation.csv" in text and "not UTF-8" in text
