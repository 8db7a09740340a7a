"""Attacks on the changes of 2026-12-05 (4f012c5..a441ff2): io.read_utf8 and its users, exemplars checked against
the schema, programs.report.revalidated dropping what is no program record, descriptor_problem's (problem, fix),
io.load_problem's "not a file written by torch.save", evaluate's missing-workdir wording, published.py, the
best.pt hard link (train/checkpoint.copy_checkpoint), the reconfigured stdout and extract's header-only note.

Behaviour that holds is pinned by plain tests; each bug found was a strict xfail until fixed the same day."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from leap_cli.errors import LeapError
from tests.kitchens import kitchen_copy
from tests.procs import leap_main
from tests.test_attack_bad_inputs import (_descriptors, _dry_run, _exemplars_with, leap, one_error_line,  # noqa: F401
                                          root, root_template, train_csv)
from tests.test_shards import TRAIN, program_records

ROOT = Path(__file__).resolve().parents[1]


# ---- io.read_utf8 ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("eol", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_read_utf8_names_the_line_of_the_first_bad_byte(tmp_path, eol):
    from leap_cli.io import read_utf8

    f = tmp_path / "c.yaml"
    f.write_bytes(eol.join([b"a: 1", b"b: 2", b"c: caf\xe9", b"d: 4"]) + eol)
    with pytest.raises(LeapError) as e:
        read_utf8(f, "the config file")
    assert e.value.record == "line 3" and "0xe9" in e.value.message and str(f) in str(e.value)


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-be"], ids=["le-bom", "be-bom"])
def test_read_utf8_says_utf16_for_notepad_unicode(tmp_path, codec):
    from leap_cli.io import read_utf8

    f = tmp_path / "labels.txt"
    f.write_bytes(("\ufeff" if codec == "utf-16-be" else "").encode(codec) + "bg\nbowl\n".encode(codec))
    with pytest.raises(LeapError) as e:
        read_utf8(f, "the detector labels file")
    assert "UTF-16" in e.value.message


def test_read_utf8_drops_the_bom_of_a_good_file(tmp_path):
    from leap_cli.extract.objects import read_labels_file

    f = tmp_path / "labels.txt"
    f.write_bytes(b"\xef\xbb\xbf__background__\r\nbowl\r\n\r\nknife\n")
    assert read_labels_file(f) == ["__background__", "bowl", "knife"]  # (a kept BOM made the first name "\ufeff...")


def test_a_bom_csv_with_a_latin1_byte_names_its_row(root, tmp_path, monkeypatch, capsys):
    """Excel's "CSV UTF-8" starts with a BOM; one cell pasted from a Latin-1 source then breaks the file. The row
    named must be the row holding the byte, and the byte the one that is not UTF-8 (said: row 3, byte 0x0a)."""
    raw = train_csv(root).read_bytes().split(b"\n")
    raw[3] = b"\xc9" + raw[3][1:]  # (the row's first byte: a Latin-1 \xc9 where its P was)
    train_csv(root).write_bytes(b"\xef\xbb\xbf" + b"\n".join(raw))
    code, _, err = leap_main(monkeypatch, capsys, "extract", "--split", "train", "--data", str(root),
                             "--workdir", str(tmp_path / "w"))
    line = one_error_line(err)
    assert code == 2 and "[row 4]" in line and "0xc9" in line, line


def test_a_cr_only_file_names_the_line_of_the_bad_byte(tmp_path):
    from leap_cli.io import read_utf8

    f = tmp_path / "t.csv"
    f.write_bytes(b"a,b\rc,d\re,caf\xe9\r")
    with pytest.raises(LeapError) as e:
        read_utf8(f, "the CSV file", unit="row")
    assert e.value.record == "row 3", e.value


# ---- exemplars -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("program, says", [
    ("add chicken to pan", "a program must be a JSON object"),
    (None, "a program must be a JSON object"),
], ids=["string", "null"])
def test_an_exemplar_whose_program_is_no_object_is_one_line(program, says, root, tmp_path, monkeypatch, capsys):
    work = tmp_path / "w"
    _descriptors(root, work / "descriptors" / "train.jsonl")
    victim = _exemplars_with(tmp_path, json.dumps({"id": "x", "narration": "n", "text": "t",
                                                   "program": program}).encode())
    code, _, err = _dry_run(monkeypatch, capsys, root, work, victim.parent)
    line = one_error_line(err)
    assert code == 2 and str(victim) in line and "does not fit the schema" in line and says in line, line


def test_the_bundled_exemplars_all_fit_the_schema():
    from leap_cli.programs.prompt import load_exemplars
    from leap_cli.programs.schema import validate_program

    exemplars = load_exemplars()
    assert len(exemplars) >= 3 and all(validate_program(x.program) == [] for x in exemplars)


# ---- program records: revalidated, descriptor_problem ----------------------------------------------------------

def _vocab(root: Path):
    from leap_cli.epic.annotations import Annotations

    ann = Annotations(root / "annotations")
    return ann.verbs, ann.nouns


def test_revalidated_keeps_program_records_of_the_shapes_older_versions_wrote(root):
    """Fields that are optional in program_record_problem: provenance absent or {}, model None (the offline
    backend), errors absent or null. None of these may be dropped as "not a program record"."""
    from leap_cli.programs.report import revalidated

    recs = program_records()
    assert len(recs) >= 4
    older = [{k: v for k, v in recs[0].items() if k != "provenance"},
             {**recs[1], "provenance": {"backend": "offline", "model": None}},
             {k: v for k, v in recs[2].items() if k != "errors"},
             {**recs[3], "errors": None, "provenance": {}}]
    out, failures = revalidated(older, *_vocab(root))
    assert [r["narration_id"] for r in out] == [r["narration_id"] for r in older]
    assert not any("not a program record" in f["reason"] for f in failures), failures


def test_revalidated_drops_a_descriptor_line_naming_its_id_and_line(root):
    from leap_cli.programs.prompt import narration_record
    from leap_cli.epic.annotations import read_segments
    from leap_cli.programs.report import revalidated

    desc = narration_record(read_segments(train_csv(root))[0])
    recs = program_records()
    out, failures = revalidated([recs[0], desc, recs[1]], *_vocab(root))
    assert [r["narration_id"] for r in out] == [recs[0]["narration_id"], recs[1]["narration_id"]]
    bad = [f for f in failures if "not a program record" in f["reason"]]
    assert len(bad) == 1 and bad[0]["narration_id"] == desc["narration_id"] and bad[0]["reason"].startswith("line 2:")


def test_read_jsonl_gives_the_fix_of_a_program_record_among_descriptors(tmp_path):
    from leap_cli.common import descriptor_problem
    from leap_cli.io import read_jsonl

    rec = program_records()[0]
    assert isinstance(descriptor_problem(rec), tuple)
    failed = {"narration_id": "P01_01_0", "status": "failed", "program": None, "errors": []}
    assert isinstance(descriptor_problem(failed), tuple)  # (a failed record's program is null: still a program record)
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps(rec) + "\n")
    with pytest.raises(LeapError) as e:
        read_jsonl(f, check=descriptor_problem)
    assert e.value.record == "line 1" and "program record" in e.value.message
    assert "descriptors/SPLIT.jsonl" in e.value.fix and "malformed" not in e.value.message


# ---- io.load_problem ---------------------------------------------------------------------------------------------

def _scores_error(path: Path) -> str:
    from leap_cli.evaluate.scores import _read_raw

    with pytest.raises(LeapError) as e:
        _read_raw(path)
    return e.value.message


def test_load_problem_empty_text_and_truncated_files(tmp_path):
    import torch

    from leap_cli.io import load_problem

    empty, text, cut = tmp_path / "e.pt", tmp_path / "t.pt", tmp_path / "c.pt"
    empty.write_bytes(b"")
    text.write_text("hello\n")
    buf = tmp_path / "full.pt"
    torch.save({"x": torch.zeros(1000)}, buf)
    cut.write_bytes(buf.read_bytes()[:len(buf.read_bytes()) // 2])
    said = {}
    for p in (empty, text, cut):
        try:
            torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            said[p.name] = load_problem(exc, p)
    assert said["e.pt"] == "the file is empty"
    assert said["t.pt"] == "not a file written by torch.save"
    assert "torch.save" not in said["c.pt"] and ("damaged" in said["c.pt"] or "ends early" in said["c.pt"]), said


def test_a_protocol_2_pickle_with_a_forbidden_class_is_named_by_it(tmp_path):
    import fractions

    p = tmp_path / "s.pkl"
    p.write_bytes(pickle.dumps({"x": fractions.Fraction(1, 3)}, protocol=2))
    assert "fractions.Fraction is not allowed" in _scores_error(p)


@pytest.mark.parametrize("protocol", [0, 1])
def test_a_protocol_0_or_1_pickle_with_a_forbidden_class_is_named_by_it(tmp_path, protocol):
    """A scores .pkl (read by pickle, not torch.load) written with protocol 0 or 1 (Python 2's default, old
    scripts) holds a class the reader refuses: the error said which before today; now it says the file is not
    torch.save's, which a pickle never claimed to be."""
    import fractions

    p = tmp_path / "s.pkl"
    p.write_bytes(pickle.dumps({"x": fractions.Fraction(1, 3)}, protocol=protocol))
    said = _scores_error(p)
    assert "fractions.Fraction" in said and "torch.save" not in said, said


# ---- published.py --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, folder", [
    ("k710_uniformerv2_b16_8x224.pyth", "k710"),
    ("k400_k710_uniformerv2_l14_8x224.pyth", "k400"),
    ("frozen_k600_k710_uniformerv2_l14_8x336.pyth", "k600"),
    ("mit_uniformerv2_b16_8x224.pyth", "mitv1"),  # (MIT's folder is mitv1, its files' prefix mit)
    ("sthv2_uniformerv2_b16_16x224.pyth", "sthv2"),
])
def test_official_uniformerv2_names_get_their_model_zoo_address(name, folder):
    from leap_cli.published import source_of

    assert source_of(Path("/somewhere") / name) == \
        f"https://pjlab-gvm-data.oss-cn-shanghai.aliyuncs.com/uniformerv2/{folder}/{name}"


@pytest.mark.parametrize("name", ["my_uniformerv2_b16.pyth", "k400_k710_uniformerv2_b16_8x224.pth",
                                  "k400_k710_uniformerv2_b16_8x224 (1).pyth", "ViT-B-16.pth", "best.pt"])
def test_other_names_get_no_address(name):
    from leap_cli.published import missing_file_fix, source_of

    assert source_of(name) is None and missing_file_fix(name, "give a file") == "give a file"


def test_a_missing_published_checkpoint_names_its_address(tmp_path):
    from leap_cli.model.uniformerv2 import read_checkpoint

    with pytest.raises(LeapError) as e:
        read_checkpoint(tmp_path / "k710_uniformerv2_b16_8x224.pyth")
    assert "uniformerv2/k710/k710_uniformerv2_b16_8x224.pyth" in e.value.fix and "does not exist" in e.value.message
    assert str(tmp_path) in str(e.value)


# ---- best.pt as last.pt's hard link --------------------------------------------------------------------------------

def test_a_best_pt_of_an_older_run_is_replaced_and_last_pt_left_as_it_was(tmp_path):
    from leap_cli.train.checkpoint import copy_checkpoint

    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    last.write_bytes(b"step 8")
    best.write_bytes(b"step 4, an older leap's regular file")
    before = os.stat(last)
    copy_checkpoint(last, best)
    assert best.read_bytes() == last.read_bytes() == b"step 8" and os.stat(last).st_ino == before.st_ino
    ino = os.stat(best).st_ino
    copy_checkpoint(last, best)  # (already its link: nothing done)
    assert os.stat(best).st_ino == ino
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


def test_making_best_pt_leaves_last_pt_mode_alone(tmp_path):
    """A best.pt kept read-only by its user (chmod a-w), or 0600 from a writer that used mkstemp's mode: at the next
    best, last.pt took that mode too (and every later last.pt keeps it: atomic_path copies the replaced file's)."""
    from leap_cli.train.checkpoint import copy_checkpoint

    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    last.write_bytes(b"step 8")
    os.chmod(last, 0o664)
    best.write_bytes(b"step 4")
    os.chmod(best, 0o444)
    copy_checkpoint(last, best)
    assert best.read_bytes() == b"step 8"
    assert oct(last.stat().st_mode & 0o777) == oct(0o664)


# ---- the CLI: evaluate's missing work directory, stdout, extract's note ---------------------------------------------

def test_evaluate_a_bare_run_name_under_a_missing_workdir_names_the_workdir(tmp_path, monkeypatch, capsys):
    nope = tmp_path / "nope"
    code, _, err = leap_main(monkeypatch, capsys, "evaluate", "--split", "val", "--workdir", str(nope), "--run", "r")
    line = one_error_line(err)
    assert code == 2 and line.startswith(f"error: {nope}: no such work directory"), line
    assert f"{nope}/runs/r: run not found" in line


def test_evaluate_runs_slash_name_under_a_missing_workdir_names_the_workdir(tmp_path, monkeypatch, capsys):
    """``--run runs/NAME`` is the form evaluate's own help and fixes give; it is looked for under --workdir too, so
    a mistyped --workdir must be said as for a bare name."""
    nope = tmp_path / "nope"
    monkeypatch.chdir(tmp_path)
    code, _, err = leap_main(monkeypatch, capsys, "evaluate", "--split", "val", "--workdir", str(nope),
                             "--run", "runs/r")
    line = one_error_line(err)
    assert code == 2 and line.startswith(f"error: {nope}: no such work directory"), line


def _cli(*args, env_extra=None, pipe_to_head=False, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", "NO_COLOR": "1", **(env_extra or {})}
    cmd = [sys.executable, "-m", "leap_cli", *map(str, args)]
    if pipe_to_head:
        import shlex

        return subprocess.run(["bash", "-c", f"{shlex.join(cmd)} | head -1; exit ${{PIPESTATUS[0]}}"],
                              capture_output=True, env=env, timeout=120, cwd=cwd)
    return subprocess.run(cmd, capture_output=True, env=env, timeout=120, cwd=cwd)


def test_info_on_an_ascii_stdout_closed_early_escapes_and_exits_0(root_template, tmp_path):
    """`leap info | head -1` in a job whose stdout is ASCII, on a dataset root named with an é: the line comes out
    with \\xe9, the command ends 0, no traceback (the reconfigured stdout wrapped by ReaderSafeStdout)."""
    data = Path(shutil.copytree(root_template, tmp_path / "cuisiné"))
    r = _cli("info", "--data", data, env_extra={"PYTHONIOENCODING": "ascii"}, pipe_to_head=True)
    out, err = r.stdout.decode("ascii"), r.stderr.decode(errors="replace")
    assert r.returncode == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err and "UnicodeEncodeError" not in err
    assert len(out.splitlines()) == 1
    full = _cli("info", "--data", data, env_extra={"PYTHONIOENCODING": "ascii"})
    assert full.returncode == 0 and "cuisin\\xe9" in full.stdout.decode("ascii"), full.stderr.decode()[-1000:]


def test_a_header_only_split_file_is_noted_and_not_an_error(root, tmp_path, monkeypatch, capsys):
    csv = root / "annotations" / "EPIC_100_validation.csv"
    csv.write_text(csv.read_text().splitlines()[0] + "\n")
    code, out, err = leap(monkeypatch, capsys, "extract", "--split", "val", "--data", str(root),
                          "--workdir", str(tmp_path / "w"))
    said = " ".join((out + err).split())
    assert code == 0, said[-2000:]
    assert "the val split's annotation file holds no segment (a header and no rows)" in said
    # a split with rows says nothing of the kind
    code, out, err = leap(monkeypatch, capsys, "extract", "--split", "train", "--data", str(root),
                          "--workdir", str(tmp_path / "w"), "--components", "narration")
    assert code == 0 and "holds no segment" not in " ".join((out + err).split())
    assert len(TRAIN) == sum(1 for _ in open(tmp_path / "w" / "descriptors" / "train.jsonl"))


# ---- more bad user text ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("patch", [{"id": None}, {"text": ["a clip"]}], ids=["null-id", "list-text"])
def test_an_exemplar_field_of_the_wrong_type_is_one_line(patch, root, tmp_path, monkeypatch, capsys):
    from leap_cli.resources import resource_dir

    work = tmp_path / "w"
    _descriptors(root, work / "descriptors" / "train.jsonl")
    good = json.loads(sorted((resource_dir("prompts") / "exemplars").glob("*.json"))[0].read_text())
    victim = _exemplars_with(tmp_path, json.dumps({**good, **patch}).encode())
    try:
        code, _, err = _dry_run(monkeypatch, capsys, root, work, victim.parent)
    except TypeError as e:  # (raised through leap_main: no one-line error at all)
        pytest.fail(f"traceback: TypeError: {e}")
    line = one_error_line(err)
    assert code == 2 and str(victim) in line, line


def test_a_utf16_file_without_bom_is_refused(tmp_path):
    """PowerShell's Set-Content -Encoding Unicode / a BOM stripped by a tool: no text leap reads holds a NUL."""
    from leap_cli.extract.objects import read_labels_file

    f = tmp_path / "labels.txt"
    f.write_bytes("__background__\nbowl\nknife\n".encode("utf-16-le"))
    with pytest.raises(LeapError) as e:
        read_labels_file(f)
    assert "UTF-16" in e.value.message or "UTF-8" in e.value.message


# ---- a run resumed from a checkpoint of a leap before today -------------------------------------------------------

@pytest.fixture(scope="module")
def shards_wd(tmp_path_factory) -> Path:
    """A work directory with the synthetic kitchen's train and val shards (2 videos, 6 segments each)."""
    wd = tmp_path_factory.mktemp("s49-train")
    env = {"OMP_NUM_THREADS": "1"}
    kitchen_copy(tmp_path_factory, wd / "kitchen", "--videos", 2, "--segments", 6)
    steps = []
    for split in ("train", "val"):
        steps += [("extract", "--split", split, "--components", "narration"),
                  ("generate-programs", "--split", split, "--backend", "offline"), ("build-shards", "--split", split)]
    for s in steps:
        r = _cli(s[0], "--workdir", wd, *s[1:], env_extra=env)
        assert r.returncode == 0, (s, r.stdout.decode()[-1500:], r.stderr.decode()[-1500:])
    return wd


TRAIN_ARGS = ("--config", "tiny-synthetic-short", "--name", "r", "--set", "data.batch_size=4", "--set", "train.epochs=4",
              "--set", "train.eval_every_epochs=1")


def test_resume_of_a_pre_link_checkpoint_keeps_its_best_pt(shards_wd):
    """A run whose last.pt has no best_step and whose best.pt is a file of its own (leap before today) resumes as
    before: best.pt is left alone where no new best comes, and last.pt gets a best_step from then on."""
    import torch

    ck = shards_wd / "runs" / "r" / "checkpoints"
    r = _cli("train", "--workdir", shards_wd, *TRAIN_ARGS, "--stop-after", 2, env_extra={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    last = torch.load(ck / "last.pt", map_location="cpu", weights_only=True)
    best = torch.load(ck / "best.pt", map_location="cpu", weights_only=True)
    assert best["best_step"] == best["step"] < last["step"] and last["best_step"] == best["step"]
    old = {k: v for k, v in last.items() if k != "best_step"}  # (as an older leap wrote it)
    torch.save(old, ck / "last.pt")
    shutil.copyfile(ck / "best.pt", ck / "best.tmpcopy")
    os.replace(ck / "best.tmpcopy", ck / "best.pt")
    before = (os.stat(ck / "best.pt").st_ino, (ck / "best.pt").read_bytes())
    r = _cli("train", "--workdir", shards_wd, *TRAIN_ARGS, "--resume",
             env_extra={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    after = torch.load(ck / "last.pt", map_location="cpu", weights_only=True)
    assert after["step"] > last["step"]
    if after["best_metric"] == best["best_metric"]:  # (no new best in the later epochs: best.pt as it was)
        assert (os.stat(ck / "best.pt").st_ino, (ck / "best.pt").read_bytes()) == before
        assert after["best_step"] is None  # (unknown: the older last.pt did not say it)
    else:
        assert after["best_step"] == torch.load(ck / "best.pt", map_location="cpu", weights_only=True)["step"]
