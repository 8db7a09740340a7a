"""Bad input, from a user's side, at each stage's door: the project's rule is one line on stderr (no traceback
without --debug) naming the file, the record and what to do, exit status 2 for a refused input, the good records
going on where that makes sense. Cases that follow the rule are kept as a handful of representatives; cases
that broke it were strict xfails until fixed."""

from __future__ import annotations

import json
import re
import shutil
import tarfile
from pathlib import Path

import pytest

from leap_cli.epic.annotations import read_segments
from leap_cli.programs.prompt import narration_record
from tests.procs import leap_main
from tests.test_shards import TRAIN, VAL, make_root, program_records, write_programs


@pytest.fixture(scope="module")
def root_template(tmp_path_factory) -> Path:
    """The tiny EPIC root of tests/test_shards.py (7 train segments of 2 videos, 2 val segments), made once."""
    return make_root(tmp_path_factory.mktemp("bad_inputs") / "k")


@pytest.fixture
def root(root_template, tmp_path) -> Path:
    """A private copy of the tiny root, free to corrupt."""
    return Path(shutil.copytree(root_template, tmp_path / "k"))


def one_error_line(err: str) -> str:
    """The single line on stderr (no traceback, nothing else): the refusal a user reads."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert "Traceback" not in err
    return lines[0]


def train_csv(root: Path) -> Path:
    return root / "annotations" / "EPIC_100_train.csv"


def edit_line(path: Path, n: int, edit) -> None:
    """Replace line ``n`` (1-based, the header is line 1) of a text file by ``edit(line)``."""
    lines = path.read_text().splitlines()
    lines[n - 1] = edit(lines[n - 1])
    path.write_text("\n".join(lines) + "\n")


def set_field(line: str, column: int, value: str) -> str:
    cells = line.split(",")
    cells[column] = value
    return ",".join(cells)


# ---- annotation CSVs -----------------------------------------------------------------------------------------

# (case, edit of the train CSV's line 3 = "row 3" in the file's numbering, words the remedy must hold)
ROW_CASES = [
    ("bad timestamp", lambda line: set_field(line, 5, "00:00:61.00"), "stop_timestamp"),
    ("stop before start", lambda line: set_field(set_field(line, 4, "00:00:05.00"), 5, "00:00:01.00"), "before"),
    ("stop_frame before start_frame", lambda line: set_field(set_field(line, 6, "50"), 7, "10"), "stop_frame"),
    ("duplicate narration id", lambda line: "P01_01_0" + line[len("P01_01_1"):], "P01_01_0"),
]


@pytest.mark.parametrize("case,edit,word", ROW_CASES, ids=[c[0] for c in ROW_CASES])
def test_a_bad_csv_row_is_one_line_naming_file_row_and_fix(root, tmp_path, monkeypatch, capsys, case, edit, word):
    edit_line(train_csv(root), 3, edit)
    code, _, err = leap_main(monkeypatch, capsys, "extract", "--split", "train", "--data", str(root),
                             "--workdir", str(tmp_path / "w"))
    line = one_error_line(err)
    assert code == 2
    assert "EPIC_100_train.csv" in line and "row 3" in line and word in line
    assert re.search(r"\((fix|keep|swap)[^)]*", line), line  # the remedy, in the project's "(...)" form
    assert not (tmp_path / "w" / "descriptors" / "train.jsonl").exists()  # nothing written as if finished


def test_a_renamed_column_is_named_with_the_column_it_should_be(root, tmp_path, monkeypatch, capsys):
    edit_line(train_csv(root), 1, lambda line: line.replace("start_timestamp", "start_time"))
    code, _, err = leap_main(monkeypatch, capsys, "extract", "--split", "train", "--data", str(root),
                             "--workdir", str(tmp_path / "w"))
    line = one_error_line(err)
    assert code == 2 and "[header]" in line and "start_timestamp" in line and "'start_time'" in line


@pytest.mark.parametrize("bom,newline", [(True, "\n"), (False, "\r\n"), (True, "\r\n")],
                         ids=["bom", "crlf", "bom+crlf"])
def test_bom_and_crlf_csvs_read_as_the_plain_file(root, bom, newline):
    """A CSV saved by Excel (UTF-8 BOM, CRLF line ends) holds the same segments as the plain file."""
    path = train_csv(root)
    plain = read_segments(path)
    text = path.read_text()
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.replace("\n", newline).encode())
    again = read_segments(path)
    assert [s.narration_id for s in again] == [s.narration_id for s in plain] and len(again) == len(TRAIN)
    assert [(s.start, s.stop, s.verb_class, s.noun_class) for s in again] == \
           [(s.start, s.stop, s.verb_class, s.noun_class) for s in plain]


def test_a_class_file_cell_that_is_not_a_list_is_named(root, tmp_path, monkeypatch, capsys):
    path = root / "annotations" / "EPIC_100_verb_classes.csv"
    text = path.read_text()
    assert "['" in text
    path.write_text(text.replace("['", "[", 1))  # the first list cell of row 2 loses a quote
    code, _, err = leap_main(monkeypatch, capsys, "info", "--data", str(root), "--no-check-lengths")
    line = one_error_line(err)
    assert code == 2 and "EPIC_100_verb_classes.csv" in line and "[row 2]" in line and "list" in line


def test_a_non_utf8_csv_names_the_row_and_the_fix(root, tmp_path, monkeypatch, capsys):
    raw = train_csv(root).read_bytes().split(b"\n")
    raw[3] = raw[3].replace(b"put plate", b"put pl\xe2te", 1)  # Latin-1 bytes, as a CSV saved by an old editor
    assert b"\xe2" in raw[3]
    train_csv(root).write_bytes(b"\n".join(raw))
    code, _, err = leap_main(monkeypatch, capsys, "extract", "--split", "train", "--data", str(root),
                             "--workdir", str(tmp_path / "w"))
    line = one_error_line(err)
    assert code == 2 and "EPIC_100_train.csv" in line
    assert re.search(r"\b(row|line) 4\b", line), line  # the row holding the byte a user must fix
    assert "UTF-8" in line and "(" in line  # and what to do (save it as UTF-8)


# ---- descriptor records (extract's output) read by generate-programs ------------------------------------------

def _descriptors(root: Path, path: Path) -> list[str]:
    """Narration-only descriptor records of the train split, one JSON line each (as extract writes them)."""
    lines = [json.dumps(narration_record(s)) for s in read_segments(train_csv(root))]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return lines


def leap(monkeypatch, capsys, *argv) -> tuple[int | str | None, str, str]:
    """``tests.procs.leap_main``, where a command that ends without SystemExit (status 0) is allowed too."""
    try:
        return leap_main(monkeypatch, capsys, *argv)
    except pytest.fail.Exception:  # DID NOT RAISE SystemExit: main returned, status 0
        out = capsys.readouterr()
        return 0, out.out, out.err


def _generate(monkeypatch, capsys, root, work, *extra):
    return leap(monkeypatch, capsys, "generate-programs", "--split", "train", "--data", str(root),
                     "--workdir", str(work), *extra)


def test_program_records_given_as_descriptors_are_refused_as_such(root, tmp_path, monkeypatch, capsys):
    """generate-programs' own output passed back as --descriptors: refused in one line, before any program."""
    work = tmp_path / "w"
    _descriptors(root, work / "descriptors" / "train.jsonl")
    assert _generate(monkeypatch, capsys, root, work)[0] == 0
    programs = work / "programs" / "train.jsonl"
    code, _, err = _generate(monkeypatch, capsys, root, work, "--descriptors", str(programs),
                             "--out", str(tmp_path / "again.jsonl"))
    line = one_error_line(err)
    assert code == 2 and f"{programs} [line 1]: a program record" in line and "descriptors/SPLIT.jsonl" in line, line
    assert not (tmp_path / "again.jsonl").exists()


def test_a_truncated_last_descriptor_line_is_dropped_and_the_rest_goes_on(root, tmp_path, monkeypatch, capsys,
                                                                          caplog):
    work = tmp_path / "w"
    desc = work / "descriptors" / "train.jsonl"
    lines = _descriptors(root, desc)
    desc.write_text("".join(line + "\n" for line in lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # a crash
    code, _, err = _generate(monkeypatch, capsys, root, work)
    assert code == 0
    assert "Traceback" not in err
    assert "truncated last line" in caplog.text and str(desc) in caplog.text
    out = [json.loads(x) for x in (work / "programs" / "train.jsonl").read_text().splitlines()]
    assert sorted(r["narration_id"] for r in out) == sorted(json.loads(x)["narration_id"] for x in lines[:-1])


def test_a_garbage_descriptor_line_is_named_by_its_line(root, tmp_path, monkeypatch, capsys):
    work = tmp_path / "w"
    desc = work / "descriptors" / "train.jsonl"
    lines = _descriptors(root, desc)
    desc.write_text("".join(x + "\n" for x in lines[:2] + ["this is not json"] + lines[2:]))
    code, _, err = _generate(monkeypatch, capsys, root, work)
    line = one_error_line(err)
    assert code == 2 and str(desc) in line and "line 3" in line and "(delete or fix" in line


def test_a_descriptor_of_another_type_is_named(root, tmp_path, monkeypatch, capsys):
    work = tmp_path / "w"
    desc = work / "descriptors" / "train.jsonl"
    lines = _descriptors(root, desc)
    rec = json.loads(lines[1])
    rec["start"] = "abc"
    lines[1] = json.dumps(rec)
    desc.write_text("".join(x + "\n" for x in lines))
    code, _, err = _generate(monkeypatch, capsys, root, work)
    line = one_error_line(err)
    assert code == 2 and "line 2" in line and "start" in line and "not a number of seconds" in line


# ---- the exemplar library --------------------------------------------------------------------------------------

def _exemplars_with(tmp_path: Path, content: bytes) -> Path:
    from leap_cli.resources import resource_dir

    folder = Path(shutil.copytree(resource_dir("prompts") / "exemplars", tmp_path / "ex"))
    victim = sorted(folder.glob("*.json"))[0]
    victim.write_bytes(content)
    return victim


def _dry_run(monkeypatch, capsys, root, work, exemplars):
    return _generate(monkeypatch, capsys, root, work, "--backend", "openai", "--model", "m", "--dry-run",
                     "--exemplars", str(exemplars))


def _exemplar_off_schema() -> bytes:
    from leap_cli.resources import resource_dir

    good = json.loads(sorted((resource_dir("prompts") / "exemplars").glob("*.json"))[0].read_text())
    good["program"]["steps"][0]["hand"] = "third"  # no such hand
    return json.dumps(good).encode()


@pytest.mark.parametrize("content, says", [
    # the LLM copies its exemplars: one whose program the schema refuses would teach it the fault
    (_exemplar_off_schema, "does not fit the schema: /steps/0/hand"),
    (lambda: b'{"id": "x", broken', "not an exemplar"),
    (lambda: b"[1, 2]\n", "not an exemplar (a JSON list, not an object)"),
    (lambda: b'{"id": "caf\xe9", "narration": "x", "text": "x", "program": {}}\n', "[line 1]: the exemplar is not UTF-8"),
], ids=["off-schema", "not-json", "json-list", "latin-1"])
def test_a_bad_exemplar_is_one_line_naming_the_file(content, says, root, tmp_path, monkeypatch, capsys):
    work = tmp_path / "w"
    _descriptors(root, work / "descriptors" / "train.jsonl")
    victim = _exemplars_with(tmp_path, content())
    code, _, err = _dry_run(monkeypatch, capsys, root, work, victim.parent)
    line = one_error_line(err)
    assert code == 2 and str(victim) in line and says in line, line


def test_a_system_prompt_that_is_not_utf8_is_one_line(root, tmp_path, monkeypatch, capsys):
    work = tmp_path / "w"
    _descriptors(root, work / "descriptors" / "train.jsonl")
    prompt = tmp_path / "system.md"
    prompt.write_bytes("You write action programs for kitchen clips.\n".encode("utf-16"))  # Notepad's "Unicode"
    code, _, err = _generate(monkeypatch, capsys, root, work, "--backend", "openai", "--model", "m", "--dry-run",
                             "--system-prompt", str(prompt))
    line = one_error_line(err)
    assert code == 2 and str(prompt) in line


# ---- program records read by build-shards ------------------------------------------------------------------------

def _build_shards(monkeypatch, capsys, root, work, *extra):
    return leap(monkeypatch, capsys, "build-shards", "--split", "train", "--data", str(root),
                     "--workdir", str(work), "--frames", "2", "--short-side", "32", *extra)


def test_an_invalid_json_program_line_stops_build_shards_naming_it(root, tmp_path, monkeypatch, capsys):
    work = tmp_path / "w"
    path = work / "programs" / "train.jsonl"
    write_programs(path, program_records())
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:1] + ["{not json"] + lines[1:]) + "\n")
    code, _, err = _build_shards(monkeypatch, capsys, root, work)
    assert code == 2
    last = err.strip().splitlines()[-1]  # (after the "reading the annotations ..." progress line)
    assert "Traceback" not in err and str(path) in last and "line 2" in last and "not valid JSON" in last
    assert not (work / "shards" / "train" / "manifest.json").exists()


def test_build_shards_refuses_a_file_of_no_program_records(root, tmp_path, monkeypatch, capsys):
    """--programs pointed at descriptors (a narration_id, no status, no program): every sample would train without
    a program, so it is refused, naming the file and what to give."""
    work = tmp_path / "w"
    desc = work / "descriptors" / "train.jsonl"
    _descriptors(root, desc)
    code, _, err = _build_shards(monkeypatch, capsys, root, work, "--programs", str(desc))
    line = one_error_line("\n".join(x for x in err.splitlines() if not x.endswith("planning the samples ...")))
    assert code == 2 and str(desc) in line and "no program record" in line and "generate-programs" in line, line
    assert not (work / "shards").exists() or not any((work / "shards").rglob("*.tar"))


def test_build_shards_names_a_record_of_an_unknown_status_among_programs(root, tmp_path, monkeypatch, capsys):
    """One record whose status is no status generate-programs writes is listed as not a program record; the
    others are used."""
    work = tmp_path / "w"
    records = program_records()
    records[0] = {**records[0], "status": 5}
    write_programs(work / "programs" / "train.jsonl", records)
    code, out, err = _build_shards(monkeypatch, capsys, root, work)
    said = " ".join((out + err).split())
    assert code == 0, said[-2000:]
    assert f"{records[0]['narration_id']}: line 1: not a program record (status is 5" in said, said[-2000:]
    assert "1 program record failed re-validation" in said


# ---- scores for evaluate / submit, checkpoints, configs ----------------------------------------------------------

def _val_scores(root: Path, path: Path, *, nan_row: int | None = None, nouns: int = 300) -> list[str]:
    import torch

    ids = [s.narration_id for s in read_segments(root / "annotations" / "EPIC_100_validation.csv")]
    assert len(ids) == len(VAL)
    verb = torch.zeros(len(ids), 97)  # EPIC's class files: max verb id 96, max noun id 299
    if nan_row is not None:
        verb[nan_row, 5] = float("nan")
    torch.save({"narration_id": ids, "verb_output": verb, "noun_output": torch.zeros(len(ids), nouns)}, path)
    return ids


def _evaluate_scores(monkeypatch, capsys, root, tmp_path, scores):
    return leap_main(monkeypatch, capsys, "evaluate", "--split", "val", "--scores", str(scores), "--data",
                     str(root), "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "ev"))


def test_nan_scores_name_the_segment(root, tmp_path, monkeypatch, capsys):
    ids = _val_scores(root, tmp_path / "s.pt", nan_row=1)
    code, _, err = _evaluate_scores(monkeypatch, capsys, root, tmp_path, tmp_path / "s.pt")
    line = one_error_line(err)
    assert code == 2 and "NaN" in line and ids[1] in line and ids[0] not in line
    assert not (tmp_path / "ev" / "metrics.json").exists()


def test_scores_of_another_class_count_are_refused(root, tmp_path, monkeypatch, capsys):
    _val_scores(root, tmp_path / "s.pt", nouns=299)
    code, _, err = _evaluate_scores(monkeypatch, capsys, root, tmp_path, tmp_path / "s.pt")
    line = one_error_line(err)
    assert code == 2 and "299" in line and "300" in line and "noun_output" in line


def test_a_scores_file_that_is_not_torch_is_one_line(root, tmp_path, monkeypatch, capsys):
    (tmp_path / "s.pt").write_text("not a torch file\n")
    code, _, err = _evaluate_scores(monkeypatch, capsys, root, tmp_path, tmp_path / "s.pt")
    line = one_error_line(err)
    assert code == 2 and str(tmp_path / "s.pt") in line and "not a file written by torch.save" in line, line


def test_a_config_key_typo_lists_the_valid_keys(tmp_path, monkeypatch, capsys):
    code, _, err = leap_main(monkeypatch, capsys, "train", "--config", "tiny-synthetic", "--workdir",
                             str(tmp_path / "w"), "--set", "train.epoch=2")
    line = one_error_line(err)
    assert code == 2 and "train.epoch" in line and "epochs" in line
    assert not (tmp_path / "w" / "runs").exists() or not any((tmp_path / "w" / "runs").rglob("*.pt"))


def test_a_config_value_of_the_wrong_type_is_named(tmp_path, monkeypatch, capsys):
    code, _, err = leap_main(monkeypatch, capsys, "train", "--config", "tiny-synthetic", "--workdir",
                             str(tmp_path / "w"), "--set", "train.epochs=two")
    line = one_error_line(err)
    assert code == 2 and "train.epochs" in line and "'two'" in line and "int" in line


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path, monkeypatch, capsys):
    config = tmp_path / "c.yaml"
    config.write_bytes("base: tiny-synthetic\ntrain:\n  epochs: 2\n".encode("utf-16"))
    code, _, err = leap_main(monkeypatch, capsys, "train", "--config", str(config), "--workdir", str(tmp_path / "w"))
    line = one_error_line(err)
    assert code == 2 and str(config) in line


# ---- shards read by check-shards ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shards_template(root_template, tmp_path_factory) -> Path:
    """Recognition shards of the tiny root's train split (built once; copied by the tests that cut them)."""
    from leap_cli.shards.writer import ShardSettings, build_split

    work = tmp_path_factory.mktemp("bad_inputs_shards")
    write_programs(work / "programs" / "train.jsonl", program_records())
    build_split(root_template, "train", workdir=work, settings=ShardSettings(split="train", frames=2, short_side=32))
    return work


def test_a_cut_shard_is_named_by_check_shards(shards_template, tmp_path, monkeypatch, capsys):
    work = Path(shutil.copytree(shards_template, tmp_path / "w"))
    tar = sorted((work / "shards" / "train").glob("*.tar"))[0]
    with tarfile.open(tar) as t:
        assert len(t.getnames()) > 2
    size = tar.stat().st_size
    with open(tar, "r+b") as f:
        f.truncate(size // 2)
    code, _, err = leap_main(monkeypatch, capsys, "check-shards", "--split", "train", "--workdir", str(work))
    line = one_error_line(err)
    assert code == 2 and str(tar) in line and str(size) in line and "build-shards" in line
