"""The command layers of ``leap extract``, ``leap generate-programs`` and ``leap validate-programs``: what they
print and how they exit, where the stage tests drive the runners below them (gaps a mutation run found)."""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from tests.program_helpers import excerpt_annotations


def _capture(monkeypatch, module) -> io.StringIO:
    buf = io.StringIO()
    monkeypatch.setattr(module, "console", Console(file=buf, width=400, no_color=True, highlight=False))
    return buf


def _said(buf: io.StringIO) -> str:
    return " ".join(buf.getvalue().split())


# ---------------------------------------------------------------------------------------------- extract ---

def _summary(**kw):
    from leap_cli.extract.runner import ExtractSummary

    s = ExtractSummary(out=Path("/w/descriptors/train.jsonl"))
    for k, v in kw.items():
        setattr(s, k, v)
    return s


def test_extract_rerun_with_nothing_left_is_one_line_with_the_retry_note(monkeypatch):
    from leap_cli.commands import extract

    buf = _capture(monkeypatch, extract)
    s = _summary(segments=4, done_before=4, written=0, retryable=2)
    s.outcome.attempt(0)
    extract._print_summary(s)
    said = _said(buf)
    assert said.startswith("segments: 4 selected, 4 done before, 0 written now: nothing to do "
                           "(/w/descriptors/train.jsonl)"), said
    assert "note: 2 of them hold a component that failed" in said and "--retry-errors redoes them" in said
    assert "component" not in said.split("note:")[0] and "extract ->" not in said  # no table
    buf.truncate(0), buf.seek(0)
    extract._print_summary(_summary(segments=4, done_before=4, written=0, retryable=0))
    assert "note:" not in buf.getvalue() and "nothing to do" in buf.getvalue()


def test_extract_interrupted_rerun_before_a_record_prints_the_table_and_says_interrupted(monkeypatch):
    from leap_cli.commands import extract

    buf = _capture(monkeypatch, extract)
    extract._print_summary(_summary(segments=4, done_before=2, written=0, interrupted=True, wall=1.0))
    said = _said(buf)
    assert "nothing to do" not in said and "segments: 4 selected, 2 done before, 0 written now (0.00/s) interrupted" \
        in said, said


def test_extract_summary_table_rows_rate_and_notes(monkeypatch):
    from leap_cli.commands import extract

    buf = _capture(monkeypatch, extract)
    counts = {c: {"ok": 0, "unavailable": 0, "error": 0} for c in ("narration", "audio", "camera")}
    counts["narration"] = {"ok": 3, "unavailable": 0, "error": 0}
    counts["camera"] = {"ok": 1, "unavailable": 2, "error": 0}  # audio: all zero, left out
    s = _summary(segments=5, done_before=2, written=3, counts=counts, wall=2.0, reannotated=1,
                 reannotated_example="P01_01_0 (narration)", annotations="EPIC_100_train.csv",
                 seconds={"narration": 0.0, "camera": 3.0, "decode": 1.0, "frame-cache": 0.5})
    extract._print_summary(s)
    out = buf.getvalue()
    said = _said(buf)
    assert "extract -> /w/descriptors/train.jsonl (the 3 segments of this run)" in said, said
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in out.splitlines() if line.count("│") >= 7}
    assert rows["camera"] == ["1", "2", "0", "3.0", "67%"], rows
    assert rows["narration"] == ["3", "0", "0", "0.0", "0%"], rows
    assert "audio" not in rows
    assert rows["decode"] == ["", "", "", "1.0", "22%"] and rows["frame-cache"] == ["", "", "", "0.5", "11%"], rows
    assert "segments: 5 selected, 2 done before, 3 written now (1.50/s)" in said and "interrupted" not in said
    assert "note: 1 record of earlier runs was made from other annotations than EPIC_100_train.csv holds now " \
           "(e.g. P01_01_0 (narration) differs)" in said, said


def test_extract_summary_with_no_second_spent_does_not_divide_by_zero(monkeypatch):
    from leap_cli.commands import extract

    buf = _capture(monkeypatch, extract)
    counts = {"narration": {"ok": 1, "unavailable": 0, "error": 0}}
    extract._print_summary(_summary(segments=1, written=1, counts=counts, wall=0.0))
    assert "1 written now (0.00/s)" in _said(buf)


def test_extract_summary_unavailable_reasons_and_errors(monkeypatch):
    from leap_cli.commands import extract

    buf = _capture(monkeypatch, extract)
    s = _summary(segments=30, done_before=1, written=29, wall=1.0)
    s.unavailable = Counter({f"camera: reason {i}": 20 - i for i in range(11)})
    s.unavailable["audio: no track"] = 1
    s.unavailable_first = {"camera: reason 0": "camera: reason 0 at 12 s", "audio: no track": "audio: no track in X"}
    s.unavailable_detail = {"camera: reason 1": "P01_01.json: empty"}
    for i in range(11):  # 11 distinct messages, the first on 7 segments
        for j in range(7 if i == 0 else 1):
            s._error(f"P01_01_{i}_{j}", "objects", f"boom {i}")
    s.outcome.attempt(29)
    for _ in range(11):
        s.outcome.fail("objects: boom")
    extract._print_summary(s)
    lines = [x.strip() for x in buf.getvalue().splitlines()]
    said = _said(buf)
    assert f"unavailable components by reason ({sum(s.unavailable.values())}, this run):" in said, said
    assert "20 x camera: reason 12" not in said  # (numbers as N in the reason; the first one said where it is 1)
    assert "20 x camera: reason 0" in lines and "e.g. camera: reason 0 at 12 s" in lines, lines
    assert "19 x camera: reason 1" in lines and "first: P01_01.json: empty" in lines, lines
    assert "e.g. camera: reason 1" not in said  # (its first is the reason itself)
    assert "10 x camera: reason 10" not in lines and "11 x camera: reason 9" in lines  # the 10 most common only
    assert "extract: 11 of 29 records failed (by cause):" in said and "11 x objects: boom" in lines, said
    assert "17 component errors, 11 distinct (rerun with --retry-errors after fixing):" in said, said
    assert "objects of 7 segments (P01_01_0_0, P01_01_0_1, P01_01_0_2 and 4 more): boom 0" in said, said
    assert "objects of 1 segment (P01_01_1_0): boom 1" in said and "P01_01_1_0 and 0 more" not in said, said
    assert "boom 9" in said and "boom 10" not in said and "... and 1 more distinct error" in said, said


def test_extract_summary_one_error_one_unavailable(monkeypatch):
    from leap_cli.commands import extract

    buf = _capture(monkeypatch, extract)
    s = _summary(segments=2, written=2, wall=1.0)
    s.unavailable = Counter({"audio: no track": 1})
    s.unavailable_first = {"audio: no track": "audio: no track in P01_02.MP4"}
    s._error("P01_01_0", "camera", "bad pose")
    extract._print_summary(s)
    lines = [x.strip() for x in buf.getvalue().splitlines()]
    said = _said(buf)
    assert "unavailable components by reason (1):" in said and "1 x audio: no track in P01_02.MP4" in lines, said
    assert "1 component error (rerun with --retry-errors after fixing):" in said and "distinct" not in said, said


def test_extract_frame_cache_option(tmp_path):
    from leap_cli.commands.extract import _frame_cache_dir

    assert _frame_cache_dir(None, tmp_path) == tmp_path / "frame-cache"
    assert _frame_cache_dir("", tmp_path) == tmp_path / "frame-cache"
    assert _frame_cache_dir("None", tmp_path) is None and _frame_cache_dir("NONE", tmp_path) is None
    assert _frame_cache_dir(str(tmp_path / "fc"), tmp_path) == tmp_path / "fc"


def test_extract_existing_ancestor(tmp_path):
    from leap_cli.commands.extract import _existing_ancestor

    assert _existing_ancestor(tmp_path / "a" / "b") == tmp_path
    assert _existing_ancestor(tmp_path) == tmp_path


def test_extract_a_model_file_staged_elsewhere_is_the_same_setting(tmp_path):
    """A labels file copied to another path (node-local scratch) is the model the output was made with: the
    settings keep the path as it was, and the run resumes; edited in place, it is another setting."""
    from leap_cli.commands.extract import RESULT_SETTINGS, SETTINGS_NAMES, _settings
    from leap_cli.io import check_settings

    first = tmp_path / "a" / "labels.csv"
    first.parent.mkdir()
    first.write_text("index,mid,display_name\n0,/m/x,Speech\n")
    out = tmp_path / "d" / "train.jsonl"
    out.parent.mkdir()

    def cfg(labels):
        c = SimpleNamespace(**{k: None for k in RESULT_SETTINGS})
        c.components, c.hand_threshold, c.audio_labels = ("audio",), 0.5, labels
        return c

    check_settings(out, _settings(cfg(first), out), split="train", adopt=("files",), names=SETTINGS_NAMES)
    out.write_text('{"narration_id": "x"}\n')
    staged = tmp_path / "b" / "labels.csv"
    staged.parent.mkdir()
    staged.write_bytes(first.read_bytes())
    s = _settings(cfg(staged), out)
    assert s["audio_labels"] == str(first) and set(s["files"]) == {"audio_labels"}, s
    check_settings(out, s, split="train", adopt=("files",), names=SETTINGS_NAMES)  # resumes: no refusal
    staged.write_text("index,mid,display_name\n0,/m/x,Music\n")  # another model: its path is this run's
    s = _settings(cfg(staged), out)
    assert s["audio_labels"] == staged
    from leap_cli.errors import LeapError

    with pytest.raises(LeapError, match="--audio-labels"):
        check_settings(out, s, split="train", adopt=("files",), names=SETTINGS_NAMES)
    # the first path gone (node-local scratch cleared): the identity stored says the copy is the same model
    staged.write_bytes(first.read_bytes())
    first.unlink()
    s = _settings(cfg(staged), out)
    assert s["audio_labels"] == str(first), s
    check_settings(out, s, split="train", adopt=("files",), names=SETTINGS_NAMES)


def test_extract_settings_of_named_weights_that_are_not_files(tmp_path):
    """--detector-weights coco and --clip-weights openai name weights, not files: no identity is taken."""
    from leap_cli.commands.extract import RESULT_SETTINGS, _settings

    c = SimpleNamespace(**{k: None for k in RESULT_SETTINGS})
    c.detector_weights, c.clip_weights = Path("coco"), Path("openai")
    s = _settings(c, tmp_path / "train.jsonl")
    assert s["detector_weights"] == Path("coco") and s["clip_weights"] == Path("openai") and "files" not in s, s


@pytest.fixture(scope="module")
def ann_work(tmp_path_factory):
    """6 segments of the validation excerpt (one video), no media: narration alone is extracted, in a second."""
    work = tmp_path_factory.mktemp("extract-work")
    excerpt_annotations(work, rows=6)
    return work


@pytest.fixture
def ework(ann_work, tmp_path):
    import shutil

    shutil.copytree(ann_work / "kitchen", tmp_path / "kitchen")
    return tmp_path


def extract_cli(work, *args):
    from typer.testing import CliRunner

    from leap_cli.cli import app

    res = CliRunner().invoke(app, ["extract", "--workdir", str(work), "--components", "narration", "--frame-cache",
                                   "none", *map(str, args)], env={"COLUMNS": "250", "NO_COLOR": "1"})
    return res.exit_code, " ".join(res.output.split()), res


def test_extract_cli_writes_the_split_file_resumes_and_refuses_other_settings(ework):
    code, said, res = extract_cli(ework, "--split", "validation", "--components", "narration,")  # (a stray comma)
    out = ework / "descriptors" / "val.jsonl"
    assert code == 0 and out.is_file() and len(out.read_text().splitlines()) == 6, (said, res.exception)
    assert "segments: 6 selected, 0 done before, 6 written now" in said, said
    code, said, res = extract_cli(ework, "--split", "val")  # the same process again: the lock was let go
    assert code == 0 and f"6 done before, 0 written now: nothing to do ({out})" in said, (said, res.exception)
    before = out.read_bytes()
    code, said, res = extract_cli(ework, "--split", "val", "--hand-threshold", "0.7")
    assert _refused(res) and "--hand-threshold: 0.5 -> 0.7" in str(res.exception), res.exception
    assert out.read_bytes() == before
    code, said, res = extract_cli(ework, "--split", "val", "--fov", "60")
    assert _refused(res) and "--fov: 90.0 -> 60.0" in str(res.exception), res.exception
    code, said, res = extract_cli(ework, "--split", "val", "--hand-threshold", "0.7", "--overwrite")
    assert code == 0 and "0 done before, 6 written now" in said, (said, res.exception)
    assert json.loads((ework / "descriptors" / "val.jsonl.settings.json").read_text())["hand_threshold"] == 0.7


def test_extract_cli_resumes_an_output_whose_settings_file_predates_the_model_files_identity(ework):
    # a settings file written before leap kept its model files' identities ("files") takes this run's, not refused
    labels, model = ework / "labels.csv", ework / "cnn14.pth"  # (not read: the narration alone is extracted)
    labels.write_text("index,mid,display_name\n0,/m/x,Speech\n")
    model.write_bytes(b"weights" * 20)
    files = ("--audio-labels", labels, "--audio-model", model)
    code, said, res = extract_cli(ework, "--split", "val", *files)
    sidecar = ework / "descriptors" / "val.jsonl.settings.json"
    stored = json.loads(sidecar.read_text())
    assert code == 0 and set(stored.pop("files")) == {"audio_labels", "audio_model"}, (said, res.exception)
    sidecar.write_text(json.dumps(stored))  # (as an earlier leap wrote it)
    code, said, res = extract_cli(ework, "--split", "val", *files)
    assert code == 0 and "6 done before, 0 written now" in said, (said, res.exception)
    assert set(json.loads(sidecar.read_text())["files"]) == {"audio_labels", "audio_model"}


@pytest.mark.parametrize("spelling", ["--retry-errors", "--retry-failed"])
def test_extract_cli_retry_errors_and_its_old_spelling_redo_a_failed_record(ework, spelling):
    extract_cli(ework, "--split", "val")
    out = ework / "descriptors" / "val.jsonl"
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    rows[0]["components"]["narration"].update(status="error", detail="boom")
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, said, _ = extract_cli(ework, "--split", "val")
    assert code == 0 and "nothing to do" in said and "note: 1 of them holds a component that failed" in said, said
    code, said, res = extract_cli(ework, "--split", "val", spelling)
    assert code == 0 and "segments: 6 selected, 5 done before, 1 written now" in said, (said, res.exception)
    assert "(the 1 segment of this run)" in said


def test_extract_cli_an_empty_shard_says_why_unless_limited(ework):
    code, said, res = extract_cli(ework, "--split", "val", "--shard", "5/6")
    assert code == 0 and (ework / "descriptors" / "val.shard5of6.jsonl").exists(), (said, res.exception)
    assert "note: part 5/6 holds no segment of the val split: parts are whole videos" in said, said
    code, said, _ = extract_cli(ework, "--split", "val", "--shard", "4/6", "--limit", "3")
    assert code == 0 and "holds no segment" not in said, said
    code, said, _ = extract_cli(ework, "--split", "val", "--shard", "0/6")
    assert code == 0 and "holds no segment" not in said and "6 written now" in said, said
    header = (ework / "kitchen" / "annotations" / "EPIC_100_validation.csv").read_text().splitlines()[0]
    (ework / "kitchen" / "annotations" / "EPIC_100_train.csv").write_text(header + "\n")
    code, said, res = extract_cli(ework, "--split", "train")  # not sharded: no word of parts
    assert "0 selected" in said and not re.search(r"\bparts?\b", said), (said, res.exception)  # (not a path's)
    assert "note: the train split's annotation file holds no segment (a header and no rows)" in said, said


# ------------------------------------------------------------------------------------ generate-programs ---

def _run_summary(**kw):
    base = dict(rate_limited=0, concurrency=8, lowest_concurrency=None, steady_concurrency=None, held_seconds=0.0,
                timed_out=0, statuses=Counter(), resumed=0, resumed_not_valid=Counter(), reclipped=0)
    base.update(kw)
    return SimpleNamespace(**base)


def test_generate_endpoint_notes_say_what_to_change():
    from leap_cli.commands.programs import endpoint_notes

    assert endpoint_notes(_run_summary()) == []
    (n,) = endpoint_notes(_run_summary(rate_limited=3))
    assert n == "the server refused 3 requests with HTTP 429 (rate limit): lower --concurrency"
    (n,) = endpoint_notes(_run_summary(rate_limited=3, lowest_concurrency=2, steady_concurrency=8))
    assert n.endswith("cut the requests in flight to 2, and the run ended at --concurrency 8 again without one"), n
    (n,) = endpoint_notes(_run_summary(rate_limited=3, lowest_concurrency=2, steady_concurrency=4))
    assert n.endswith("cut the requests in flight to 2, and 4 went without one: lower --concurrency (e.g. "
                      "--concurrency 4)"), n
    (n,) = endpoint_notes(_run_summary(rate_limited=3, lowest_concurrency=2))
    assert n.endswith("cut the requests in flight to 2: lower --concurrency (e.g. --concurrency 2)"), n
    (n,) = endpoint_notes(_run_summary(held_seconds=61.4, statuses=Counter(failed=2, valid=1)))
    assert n == ("the server stopped answering for 61 s in all; meanwhile leap asked one request at a time: rerun "
                 "with --retry-errors for the 2 records written failed"), n
    (n,) = endpoint_notes(_run_summary(held_seconds=5.0, statuses=Counter(valid=1)))
    assert n == "the server stopped answering for 5 s in all; meanwhile leap asked one request at a time", n
    (n,) = endpoint_notes(_run_summary(timed_out=2))
    assert n.startswith("2 requests timed out (--timeout) and were abandoned"), n


def test_generate_resumed_counts_and_notes():
    from leap_cli.commands.programs import not_valid_notes, resumed_notes, resumed_text

    s = _run_summary(resumed=7, resumed_not_valid=Counter(failed=1, invalid=2))
    assert resumed_text(s) == "7 (1 failed, 2 invalid)"
    assert resumed_text(_run_summary(resumed=3)) == "3"
    notes = not_valid_notes(Counter(failed=1, invalid=2))
    assert notes[0].startswith("1 of the records done before is failed") and "--retry-errors" in notes[0]
    assert notes[1].startswith("2 of the records done before are invalid") and "--retry-invalid" in notes[1]
    assert not_valid_notes(Counter(failed=2))[0].startswith("2 of the records done before are failed")
    assert not_valid_notes(Counter(invalid=1))[0].startswith("1 of the records done before is invalid")
    notes = resumed_notes(_run_summary(reclipped=2, resumed_not_valid=Counter(invalid=1)))
    assert len(notes) == 2 and notes[0].startswith("2 records of earlier runs were made from a clip that has changed")
    assert resumed_notes(_run_summary(reclipped=1))[0].startswith("1 record of earlier runs was made from a clip")


@pytest.mark.parametrize("held", [0.0, 30.0])
def test_generate_names_retry_errors_once_for_this_runs_failed(tmp_path, monkeypatch, capsys, held):
    """A run whose server was held, with records written failed: its summary names --retry-errors in the held
    server's note; the failed records' own note would say it a second time. Without a hold it is said once too."""
    import leap_cli.programs.generate as generate
    from leap_cli.programs.generate import GenerateSummary
    from tests.procs import leap_main

    def run(cfg, **kw):
        return GenerateSummary(out=cfg.out_path, source="x", total=3, statuses=Counter(valid=1, failed=2),
                               not_valid=Counter(failed=2), held_seconds=held,
                               failures=[("P01_01_0", "timed out: no reply"), ("P01_01_1", "timed out: no reply")])

    monkeypatch.setattr(generate, "generate_programs", run)
    code, out, _ = leap_main(monkeypatch, capsys, "generate-programs", "--workdir", str(tmp_path), "--split", "train")
    assert code == 0 and "2 of 3 records failed" in out, out
    assert out.count("--retry-errors") == 1, out
    assert ("the server stopped answering for 30 s" in out) == bool(held), out


def test_generate_failures_are_listed_ten_and_counted_by_cause():
    from leap_cli.commands.programs import failure_cause, print_failures
    from leap_cli.outcome import Outcome

    assert failure_cause("reply is not JSON: Expecting value: line 1 column 5 (char 4)") == \
        "reply is not JSON: Expecting value (char 4)"
    assert failure_cause("HTTP 500: server error: try later after 3 attempts") == "HTTP 500: server error"
    assert failure_cause("the model put 1234 characters in reasoning") == "the model put text in reasoning"
    assert len(failure_cause("x" * 300)) == 100
    # a long word after the prefix (a token, a URL) is cut inside: it said "request failed:..."
    token = "request failed: https://proxy.example/" + "a1b2" * 40
    assert failure_cause(token) == token[:97] + "..."
    assert failure_cause("request failed: the reply " + "w " * 60) == "request failed: the reply " + "w " * 34 + "w..."
    buf = io.StringIO()
    outcome = Outcome("generate-programs")
    outcome.attempt(12)
    print_failures([(f"P01_{i}", f"HTTP 500: boom: line {i} column 2") for i in range(11)], outcome,
                   console=Console(file=buf, width=300, no_color=True))
    lines = buf.getvalue().splitlines()
    assert len(lines) == 11 and lines[9] == "P01_9: HTTP 500: boom: line 9 column 2", lines
    assert lines[10] == "... and 1 more (see leap validate-programs)"
    assert outcome.failed == 11 and outcome.causes == Counter({"HTTP 500: boom": 11})
    buf = io.StringIO()
    print_failures([(f"P01_{i}", "x") for i in range(10)], Outcome("g"), console=Console(file=buf, width=300))
    assert "more" not in buf.getvalue() and len(buf.getvalue().splitlines()) == 10


# ------------------------------------------------------------------------------------ validate-programs ---

@pytest.fixture(scope="module")
def val_work(tmp_path_factory):
    """A work directory with 6 segments of the validation excerpt and their offline programs (all valid)."""
    from leap_cli.programs.generate import GenerateConfig, generate_programs

    work = tmp_path_factory.mktemp("val-work")
    excerpt_annotations(work, rows=6)
    generate_programs(GenerateConfig(workdir=work, split="val"))
    return work


@pytest.fixture
def work(val_work, tmp_path):
    import shutil

    shutil.copytree(val_work / "kitchen", tmp_path / "kitchen")
    (tmp_path / "programs").mkdir()
    shutil.copy(val_work / "programs" / "val.jsonl", tmp_path / "programs" / "val.jsonl")
    return tmp_path


def _records(work) -> list[dict]:
    return [json.loads(x) for x in (work / "programs" / "val.jsonl").read_text().splitlines()]


def _write(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _invalid(r: dict, verb: str = "fly") -> dict:
    r = json.loads(json.dumps(r))
    r["program"]["action"]["verb"] = verb  # not an EPIC verb class
    return r


def _refused(res) -> bool:
    """The command raised a LeapError (cli.main prints it as one line and exits 2)."""
    from leap_cli.errors import LeapError

    return isinstance(res.exception, LeapError)


def validate(*args):
    from typer.testing import CliRunner

    from leap_cli.cli import app

    res = CliRunner().invoke(app, ["validate-programs", *map(str, args)], env={"COLUMNS": "250", "NO_COLOR": "1"})
    return res.exit_code, " ".join(res.output.split()), res


def test_validate_default_file_and_report_and_the_strict_exit(work):
    code, said, _ = validate("--workdir", work, "--split", "validation")
    assert code == 0 and "coverage: valid programs over the annotated segments" in said, said
    assert f"report: {work / 'programs' / 'val.report.json'}" in said
    rep = json.loads((work / "programs" / "val.report.json").read_text())
    assert rep["split"] == "val" and rep["records"] == 6
    assert "6/6 (100.0%)" in said and "--strict" not in said
    rows = _records(work)
    _write(work / "programs" / "val.jsonl", [_invalid(rows[0]), *rows[1:], "not json"])
    code, said, _ = validate("--workdir", work, "--split", "val", "--strict")
    assert code == 1 and "--strict: 1 invalid, 1 lines not program records" in said, said
    assert "5/6 (83.3%)" in said, said
    code, said, _ = validate("--workdir", work, "--split", "val")
    assert code == 0 and "delete or fix those lines" in said, said


def test_validate_a_file_given_gets_its_report_beside_it_and_its_split_from_its_name(work, tmp_path):
    scratch = _write(tmp_path / "scratch" / "val.jsonl", _records(work)[:2])
    code, said, _ = validate(scratch, "--workdir", work)
    assert code == 0 and (tmp_path / "scratch" / "val.report.json").is_file(), said
    assert not (work / "programs" / "val.report.json").exists()
    assert "validate-programs (val)" in said and "2/6 (33.3%)" in said, said
    # two files: the split's report
    other = _write(tmp_path / "scratch" / "val.more.jsonl", _records(work)[2:3])
    code, said, _ = validate(scratch, other, "--workdir", work, "--split", "val")
    assert code == 0 and (work / "programs" / "val.report.json").is_file(), said
    # the report may not be one of the files
    code, said, res = validate(scratch, "--workdir", work, "--report", scratch)
    assert _refused(res) and scratch.read_text().count("\n") == 2, said


def test_validate_some_shard_parts_never_replaces_the_split_report(work):
    """Was wrong: two of four ``--shard`` parts given wrote ``programs/val.report.json``, the whole split's report,
    with a coverage of those parts only."""
    programs, rows = work / "programs", _records(work)
    split_report = programs / "val.report.json"
    assert validate("--workdir", work, "--split", "val")[0] == 0
    whole = json.loads(split_report.read_text())
    for i in range(4):
        _write(programs / f"val.shard{i}of4.jsonl", rows[i::4])
    code, said, _ = validate(programs / "val.shard0of4.jsonl", programs / "val.shard2of4.jsonl", "--workdir", work)
    assert code == 0, said
    assert json.loads(split_report.read_text()) == whole
    some = json.loads((programs / "val.shard0+2of4.report.json").read_text())
    assert some["records"] == len(rows[0::4]) + len(rows[2::4])
    # every part: the report their merge would get, beside them
    split_report.unlink()
    code, said, _ = validate(*(programs / f"val.shard{i}of4.jsonl" for i in range(4)), "--workdir", work)
    assert code == 0 and json.loads(split_report.read_text())["records"] == len(rows), said


def test_validate_files_that_name_two_splits_or_none_are_refused(work, tmp_path):
    a = _write(tmp_path / "train.jsonl", _records(work)[:1])
    b = _write(tmp_path / "val.jsonl", _records(work)[1:2])
    code, said, res = validate(a, b, "--workdir", work)
    assert _refused(res) and "the files name different splits (train.jsonl: train, val.jsonl: val)" in str(res.exception)
    c = _write(tmp_path / "mine.jsonl", _records(work)[:1])
    code, said, res = validate(c, "--workdir", work)
    assert _refused(res) and "the file name does not name a split ('mine')" in str(res.exception), res.exception
    code, said, res = validate(c, b, "--workdir", work)  # the one that names one
    assert code == 0, said


def test_validate_a_missing_file_says_how_to_make_it(work, tmp_path):
    from leap_cli.errors import LeapError

    code, said, res = validate("--workdir", work / "nowhere", "--split", "val", "--data", work / "kitchen")
    assert isinstance(res.exception, LeapError) and "program file not found" in str(res.exception)
    assert "leap generate-programs --workdir" in res.exception.fix and "--split val" in res.exception.fix
    code, said, res = validate("--workdir", work)
    assert isinstance(res.exception, LeapError) and "which programs?" in str(res.exception)
    (tmp_path / "bare").mkdir()  # a work directory without kitchen/annotations
    code, said, res = validate(work / "programs" / "val.jsonl", "--workdir", tmp_path / "bare")
    assert isinstance(res.exception, LeapError) and "the EPIC class files are needed" in str(res.exception), \
        res.exception


def test_validate_records_of_another_split_are_refused_naming_the_split_their_name_says(work, tmp_path):
    rows = _records(work)
    for r in rows:
        r["narration_id"] = r["narration_id"].replace("P01_11", "P99_99")
    f = _write(tmp_path / "train.jsonl", rows[:2])
    code, said, res = validate(f, "--workdir", work, "--split", "val")
    msg = str(res.exception)
    assert _refused(res) and "none of the 2 records is a segment of the val split (e.g. P99_99_0, P99_99_1)" in msg, msg
    assert str(res.exception.path) == str(f) and "--split train, the split their name says" in res.exception.fix
    g = _write(tmp_path / "val.jsonl", rows[:2])
    code, said, res = validate(g, "--workdir", work, "--split", "val")
    assert "pass the program file of the val split" in res.exception.fix, res.exception.fix
    # one of them in the split: counted apart, named, and --strict fails on it
    h = _write(tmp_path / "v2" / "val.jsonl", [*rows[:1], *_records(work)[1:]])
    code, said, _ = validate(h, "--workdir", work, "--strict")
    assert code == 1 and "1 record is not a segment of the val split (e.g. P99_99_0)" in said, said
    assert "--strict: 1 records not of the val split" in said, said


def test_validate_an_empty_file_or_no_record_exits_3(work, tmp_path):
    f = _write(tmp_path / "val.jsonl", [])
    code, said, _ = validate(f, "--workdir", work)
    assert code == 3 and said.startswith("no program record in"), said
    g = _write(tmp_path / "g" / "val.jsonl", ["nope", "{}"])
    code, said, _ = validate(g, "--workdir", work)
    assert code == 3 and "validate-programs (val)" in said and "[line 1]" in said and "[line 2]" in said, said


def test_validate_show_limits_the_lines_and_counts_the_rest(work, tmp_path):
    rows = _records(work)
    f = _write(tmp_path / "val.jsonl", [_invalid(r) for r in rows[:3]] + ["x", "y", "z"])
    code, said, res = validate(f, "--workdir", work, "--show", "2")
    out = res.output
    assert "... and 1 more lines that are not program records" in said and "[line 6]" not in out, out
    assert "... and 1 more records with findings" in said and rows[2]["narration_id"] not in out, out
    assert f"{rows[0]['narration_id']} invalid: " in said, said
    code, said, res = validate(f, "--workdir", work, "--show", "3")
    assert "more lines" not in said and "more records" not in said and "[line 6]" in said, said


def test_validate_html_page_is_written_and_may_not_be_an_input(work, tmp_path):
    page = tmp_path / "p.html"
    code, said, _ = validate("--workdir", work, "--split", "val", "--html", page)
    assert code == 0 and page.is_file() and f"page: {page}" in said
    code, said, res = validate("--workdir", work, "--split", "val", "--html", work / "programs" / "val.report.json")
    assert _refused(res), said


def test_validate_against_annotations_without_the_split_counts_over_the_records(work, tmp_path):
    f = _write(tmp_path / "test.jsonl", _records(work)[:2])
    code, said, _ = validate(f, "--workdir", work)
    assert code == 0 and "coverage: valid programs over the records (the annotations hold no test split: labels " \
        "not checked)" in said, said
    code, said, _ = validate("--workdir", work, "--split", "val")
    assert "labels not checked" not in said and "over the annotated segments" in said, said


def generate_cli(work, *args):
    from typer.testing import CliRunner

    from leap_cli.cli import app

    res = CliRunner().invoke(app, ["generate-programs", "--workdir", str(work), "--split", "val", *map(str, args)],
                             env={"COLUMNS": "250", "NO_COLOR": "1"})
    return res.exit_code, " ".join(res.output.split()), res


@pytest.fixture
def gwork(ann_work, tmp_path):
    import shutil

    shutil.copytree(ann_work / "kitchen", tmp_path / "kitchen")
    return tmp_path


@pytest.mark.parametrize("spelling", ["--retry-errors", "--retry-failed"])
def test_generate_cli_offline_run_resume_and_retry(gwork, spelling):
    code, said, res = generate_cli(gwork, "--limit", "2")
    assert code == 0 and "segments done in this run │ 2 │" in said, (said, res.exception)
    assert "backend calls" not in said and "estimated cost" not in said  # offline: no rows of zeros
    out = gwork / "programs" / "val.jsonl"
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    rows[0].update(status="failed", errors=[{"pointer": "", "message": "HTTP 500"}])
    rows[1].update(status="invalid")
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, said, _ = generate_cli(gwork)
    assert code == 0 and "resumed (already done) │ 2 (1 failed, 1 invalid) │" in said, said
    assert "segments done in this run │ 4 │" in said, said
    assert "note: 1 of the records done before is failed" in said and "add --retry-errors" in said, said
    code, said, _ = generate_cli(gwork, spelling)
    assert code == 0 and "segments done in this run │ 1 │" in said and "resumed (already done) │ 5 (1 invalid) │" in said, \
        said


def test_generate_cli_an_empty_shard_says_why(gwork):
    code, said, _ = generate_cli(gwork, "--shard", "5/6", "--out", gwork / "p" / "mine.jsonl")
    assert code == 0 and (gwork / "p" / "mine.shard5of6.jsonl").exists(), said
    assert "note: part 5/6 holds no segment of" in said and "some parts are empty" in said, said
    code, said, _ = generate_cli(gwork, "--shard", "0/6", "--out", gwork / "p" / "mine.jsonl")
    assert code == 0 and "holds no segment" not in said and not (gwork / "p" / "mine.jsonl").exists(), said


@pytest.mark.parametrize("args, says", [
    (["--response-format", "bogus"], "--response-format 'bogus' is not a format"),
    (["--batch-max-requests", "5"], "--batch-max-requests sizes the files of --batch-file"),
    (["--batch-max-mb", "5"], "--batch-max-mb sizes the files of --batch-file"),
    (["--batch-file", "b.jsonl", "--ingest-batch", "r.jsonl"], "--batch-file and --ingest-batch are two runs"),
    (["--ingest-batch", "-", "--ingest-batch", "-"], "--ingest-batch - is given twice"),
    (["--dry-run", "--ingest-batch", "r.jsonl"], "--dry-run prints a prompt; --ingest-batch reads results"),
    (["--backend", "offline", "--batch-file", "b.jsonl"], "--backend offline has no Batch API"),
    (["--narration-id", "P01_11_0"], "--narration-id only chooses the segment whose prompt --dry-run prints"),
    (["--extra-body", "{nope"], "--extra-body is not JSON"),
])
def test_generate_cli_refusals(gwork, args, says):
    code, said, res = generate_cli(gwork, *args)
    assert _refused(res) and says in str(res.exception), (said, res.exception)
    assert not (gwork / "programs" / "val.jsonl").exists() and not (gwork / "b.jsonl").exists()


def test_generate_cli_response_format_none_is_a_format(gwork):
    """(A Batch file, written by the openai backend without a server: the offline backend refuses the option.)"""
    code, said, res = generate_cli(gwork, "--backend", "openai", "--response-format", "NONE", "--batch-file",
                                   gwork / "b.jsonl", "--limit", "1")
    assert code == 0 and "response_format" not in (gwork / "b.jsonl").read_text(), (said, res.exception)


def test_generate_cli_batch_file_of_a_shard_and_to_stdout(gwork, monkeypatch, capfd):
    code, said, res = generate_cli(gwork, "--batch-file", gwork / "b.jsonl", "--shard", "0/6")
    assert code == 0 and (gwork / "b.shard0of6.jsonl").is_file() and not (gwork / "b.jsonl").exists(), \
        (said, res.exception)
    assert "note: the Batch API is OpenAI's: the requests name the model gpt-4o-mini (--model to change)" in said
    assert f"wrote 6 Batch API requests to {gwork / 'b.shard0of6.jsonl'}; submit it" in said, said
    code, said, res = generate_cli(gwork, "--batch-file", gwork / "c.jsonl", "--shard", "5/6")
    assert code == 0 and "no request to write: the input holds no segment (part 5/6)" in said, said
    code, said, res = generate_cli(gwork, "--batch-file", gwork / "d.jsonl", "--limit", "0")
    assert code == 0 and "no request to write: --limit 0 (6 segments pending)" in said, said
    monkeypatch.chdir(gwork)
    capfd.readouterr()
    code, said, res = generate_cli(gwork, "--batch-file", "-", "--limit", "1", "--backend", "openai")
    assert code == 0 and not (gwork / "-").exists(), (said, res.exception)
    assert '"custom_id"' in capfd.readouterr().out + res.stdout
    assert "Batch API is OpenAI's" not in said  # --backend openai given: no note
