"""Upgrade across session 50 (819ca7c -> today) and attacks on its newest changes: extract's per-record
"versions" (base.VERSIONS / outdated() and the resume in runner.py), --help's folded tables (cli._fold_help_tables),
train's flag/--set contradiction check."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from leap_cli.extract import base
from leap_cli.extract.base import outdated, record_versions
from leap_cli.extract.runner import ExtractConfig, run_extract
from leap_cli.io import read_jsonl
from tests.extract_kitchen import build

REPO = Path(__file__).resolve().parent.parent
OLD = "819ca7c560be8f00d516833622b1b163a157ec49"


def leap(cwd: Path, *args, columns: int = 80, pythonpath: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": str(columns), "PYTHONPATH": str(pythonpath), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("FORCE_COLOR", None)
    return subprocess.run([sys.executable, "-m", "leap_cli", *map(str, args)], cwd=cwd, env=env, text=True,
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=180)


@pytest.fixture(scope="module")
def kitchen(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("kitchen") / "root")


def _cfg(kitchen, out, **kw):
    return ExtractConfig(data=kitchen, split="train", out=out, components=kw.pop("components", ("narration", "camera")),
                         frame_cache=kw.pop("frame_cache", None), **kw)


@pytest.fixture(autouse=True)
def _versions_of_2026_12_05(monkeypatch):
    """This process's parts at version 1 (a leap of 2026-12-05), so that a test raises one and sees what changes;
    leap run as a subprocess has today's numbers."""
    monkeypatch.setattr(base, "VERSIONS", dict.fromkeys(base.VERSIONS, 1))
    monkeypatch.setattr(base, "CHANGED", {})  # (a raise here changes every record of its part)


def _strip(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k != "versions"}


# ---- the upgrade: an output the old leap began, resumed by today's -----------------------------------------------

@pytest.fixture(scope="module")
def old_leap(tmp_path_factory) -> Path:
    """The package as it was at 819ca7c (git archive of this checkout's history); skipped where there is none."""
    dest = tmp_path_factory.mktemp("old")
    try:
        tar = subprocess.run(["git", "-C", str(REPO), "archive", OLD, "leap_cli"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("no git")
    if tar.returncode != 0:
        pytest.skip("the checkout holds no history of 819ca7c")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=tar.stdout, check=True)
    return dest


def test_an_extract_the_old_leap_began_is_resumed_keeping_its_records(kitchen, old_leap, tmp_path):
    """The old leap's records (no "versions": version 1 of each part) are kept, byte for byte, where this leap's
    parts are still version 1, and the output equals a wholly new run's but for the new records' "versions"."""
    out = tmp_path / "w" / "descriptors" / "train.jsonl"
    args = ["extract", "--data", kitchen, "--split", "train", "--workdir", tmp_path / "w",
            "--components", "narration,hands", "--frame-cache", "none"]
    r = leap(tmp_path, *args, "--limit", 2, pythonpath=old_leap)
    assert r.returncode == 0, r.stderr
    old_lines = out.read_text().splitlines()
    assert len(old_lines) == 2 and all("versions" not in json.loads(x) for x in old_lines)
    r = leap(tmp_path, *args)
    assert r.returncode == 0, r.stderr
    said = " ".join(r.stdout.split())
    assert "2 done before" in said and "another leap" not in said, said
    lines = out.read_text().splitlines()
    assert lines[:2] == old_lines  # kept as the old leap wrote them
    new = {x["narration_id"]: x for x in map(json.loads, lines)}
    assert all(new[k]["versions"] == {"narration": 1, "hands": 1, "text": 1} for k in list(new)[2:])
    whole = tmp_path / "whole.jsonl"
    run_extract(_cfg(kitchen, whole, components=("narration", "hands")))
    ref = {x["narration_id"]: x for x in read_jsonl(whole)}
    assert set(ref) == set(new) and all(_strip(ref[k]) == _strip(new[k]) for k in ref)
    r = leap(tmp_path, *args)  # a third run: nothing made again
    assert r.returncode == 0 and "0 written now" in " ".join(r.stdout.split()), r.stdout


def test_the_old_leaps_camera_records_are_made_again_by_todays_odometry(kitchen, old_leap, tmp_path):
    """camera 2 (the odometry of 2026-12-07): the old leap's camera records are made again on resume, said as
    "camera 1 -> 2", and the output is a wholly new run's."""
    out = tmp_path / "w" / "descriptors" / "train.jsonl"
    args = ["extract", "--data", kitchen, "--split", "train", "--workdir", tmp_path / "w",
            "--components", "narration,camera", "--frame-cache", "none"]
    assert leap(tmp_path, *args, "--limit", 2, pythonpath=old_leap).returncode == 0
    r = leap(tmp_path, *args, columns=400)
    said = " ".join(r.stdout.split())
    assert r.returncode == 0 and "2 records of earlier runs hold parts another leap made otherwise" in said, said
    assert "camera 1 -> 2" in said, said
    new = {x["narration_id"]: x for x in read_jsonl(out)}
    assert all(x["versions"] == {"narration": 1, "camera": 2, "text": 1} for x in new.values())
    whole = tmp_path / "whole.jsonl"
    run_extract(_cfg(kitchen, whole))  # (this process's numbers are 2026-12-05's)
    assert [_strip(x) for x in read_jsonl(whole)] == [_strip(x) for x in new.values()]


# ---- outdated() on odd "versions" values -------------------------------------------------------------------------

def _rec(versions, components=("narration", "camera")):
    rec = {"narration_id": "x", "components": {c: {"status": "ok"} for c in components}}
    if versions is not ...:
        rec["versions"] = versions
    return rec


@pytest.mark.parametrize("versions", [..., None, "2", [2, 2], 7, {}])
def test_a_record_without_a_versions_mapping_is_version_one_of_each_part(versions):
    assert outdated(_rec(versions)) == []


def test_extra_keys_and_components_the_record_lacks_are_ignored(monkeypatch):
    rec = _rec({"narration": 1, "camera": 1, "text": 1, "hands": 9, "future": 3})
    assert outdated(rec) == []
    monkeypatch.setitem(base.VERSIONS, "hands", 2)  # a part the record does not hold (--components left it out)
    assert outdated(rec) == [] and record_versions(["narration", "camera"]) == {"narration": 1, "camera": 1,
                                                                                 "text": 1}
    monkeypatch.setitem(base.VERSIONS, "text", 2)  # every record holds a text
    assert outdated(rec) == ["text 1 -> 2"]


def test_a_components_mapping_that_is_not_a_dict_leaves_the_text_only():
    rec = {"components": ["narration"], "versions": {"text": 1}}
    assert outdated(rec) == []


def test_a_string_version_is_not_reported_as_a_change_to_the_same_number():
    """Was wrong: base.outdated compares a stored '1' (a string) with 1 and says 'narration 1 -> 1': the note names no
    change, yet the record is made again"""
    parts = outdated(_rec({"narration": "1", "camera": 1, "text": 1}))
    assert all(a != b for a, _, b in (p.split(" ", 1)[1].partition(" -> ") for p in parts)), parts


# ---- the resume: --retry-errors, --shard parts, the frame cache --------------------------------------------------

def test_outdated_records_with_retry_errors_are_made_once_and_not_offered_again(kitchen, tmp_path, monkeypatch):
    out = tmp_path / "train.jsonl"
    first = run_extract(_cfg(kitchen, out))
    assert first.written == 4 and run_extract(_cfg(kitchen, out)).retryable == 1  # P01_02_0: no video
    monkeypatch.setitem(base.VERSIONS, "camera", 2)
    s = run_extract(_cfg(kitchen, out, retry_errors=True))
    assert (s.outdated, s.written, s.done_before) == (4, 4, 0), s
    lines = out.read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(x)["versions"]["camera"] == 2 for x in lines)
    s = run_extract(_cfg(kitchen, out))
    assert (s.outdated, s.written, s.retryable) == (0, 0, 1)


def test_a_part_of_a_shard_run_is_remade_and_the_other_part_left(kitchen, tmp_path, monkeypatch):
    from leap_cli.common import ShardSpec

    parts = [tmp_path / f"train.shard{i}of2.jsonl" for i in range(2)]
    for i, p in enumerate(parts):
        run_extract(_cfg(kitchen, p, shard=ShardSpec(i, 2)))
    before = [p.read_text() for p in parts]
    assert all(before)
    monkeypatch.setitem(base.VERSIONS, "narration", 2)
    s = run_extract(_cfg(kitchen, parts[0], shard=ShardSpec(0, 2)))
    assert s.outdated == s.written == len(before[0].splitlines())
    assert parts[1].read_text() == before[1]
    assert all(r["versions"]["narration"] == 2 for r in read_jsonl(parts[0]))


def test_an_outdated_records_frame_cache_entry_is_read_not_decoded_again(kitchen, tmp_path, monkeypatch):
    out, cache = tmp_path / "train.jsonl", tmp_path / "fc"
    run_extract(_cfg(kitchen, out, frame_cache=cache))
    entries = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    assert entries
    monkeypatch.setitem(base.VERSIONS, "camera", 2)
    s = run_extract(_cfg(kitchen, out, frame_cache=cache))
    assert s.outdated == 4
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()} == entries


# ---- --help's folded tables --------------------------------------------------------------------------------------

@pytest.mark.parametrize("columns", [60, 80, 200])
@pytest.mark.parametrize("command", ["", "extract", "train", "build-shards"])
def test_help_fits_its_width_and_cuts_nothing(tmp_path, columns, command):
    r = leap(tmp_path, *([command] if command else []), "-h", columns=columns)
    assert r.returncode == 0, r.stderr
    assert "…" not in r.stdout
    assert max(len(x) for x in r.stdout.splitlines()) <= columns
    if command == "train" and columns >= 80:  # (the option names are whole from 80 columns on)
        assert "--anticipation-context" in r.stdout or "--no-program-loss" in r.stdout


def test_root_help_at_40_columns_cuts_nothing(tmp_path):
    """Was wrong: at 40 columns `leap -h` still cuts a command's description with '…' (the commands table is not
    folded: 'Program-supervis…')"""
    r = leap(tmp_path, "-h", columns=40)
    assert r.returncode == 0 and "…" not in r.stdout, r.stdout


def test_leap_with_no_arguments_prints_the_help_without_an_empty_error(tmp_path):
    """Was wrong: `leap` with no arguments printed the help, then an empty 'error:  (see `... --help`)' line (click's
    NoArgsIsHelpError taken for a usage error with a message in cli._main)."""
    r = leap(tmp_path, columns=80)
    assert "Commands" in r.stdout
    assert not re.search(r"error:\s+\(see", r.stderr), r.stderr
    assert r.returncode == 2  # (click's status for a command line that names no command, as tests/test_cli_conventions)


def test_an_error_after_help_in_one_process_is_one_line(tmp_path):
    """A help folds typer's tables for the whole process: a usage error and a command's own output after it."""
    code = ("import sys\nfrom leap_cli import cli\n"
            "sys.argv=['leap','train','-h']\n"
            "try:\n    cli._main()\n    print('EXIT', 0)\nexcept SystemExit as e:\n    print('EXIT', e.code)\n"
            "sys.argv=['leap','train','--bogus']\n"
            "try:\n    cli._main()\nexcept SystemExit as e:\n    print('EXIT', e.code)\n")
    env = {**os.environ, "COLUMNS": "60", "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, text=True, capture_output=True,
                       timeout=60)
    assert "EXIT 0" in r.stdout and "EXIT 2" in r.stdout, r.stdout + r.stderr
    errs = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(errs) == 1 and errs[0].startswith("error: ") and "--bogus" in errs[0], r.stderr


# ---- train: a flag and a --set that contradict it -----------------------------------------------------------------

@pytest.mark.parametrize("flag, setting", [("--no-program-loss", "loss.program_loss=true"),
                                           ("--no-program-loss", "loss.program_loss=True"),
                                           ("--no-program-loss", "loss.program_loss=yes"),
                                           ("--allow-partial-load", "model.allow_partial_load=false"),
                                           ("--allow-partial-load", "model.allow_partial_load=no"),
                                           ("--allow-partial-load", " model.allow_partial_load = False")])
def test_a_flag_and_a_set_that_contradict_are_refused_in_one_line(tmp_path, flag, setting):
    r = leap(tmp_path, "train", "--config", "tiny-synthetic-short", "--workdir", tmp_path / "w", flag,
             "--set", setting)
    assert r.returncode == 2, r.stderr
    errs = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(errs) == 1 and flag in errs[0] and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("flag, setting", [("--no-program-loss", "loss.program_loss=False"),
                                           ("--no-program-loss", "loss.program_loss=no"),
                                           ("--allow-partial-load", "model.allow_partial_load=yes")])
def test_a_flag_and_a_set_that_agree_are_not_refused(tmp_path, flag, setting):
    """They agree: the run goes on to its next check (no shards here), not the contradiction."""
    r = leap(tmp_path, "train", "--config", "tiny-synthetic-short", "--workdir", tmp_path / "w", flag,
             "--set", setting)
    assert "a --set gives it another value" not in r.stderr, r.stderr


# ---- anticipation_context warnings under torchrun: said by rank 0 only ------------------------------------------

class _StubShards:
    """A ShardDataset's face: its manifest, its context clips, its length (no tar read)."""

    def __init__(self, folder, *, train=True, task="recognition", context=0, **kw):
        self.manifest = {"task": task, "counts": {"samples": 8, "segments": 8, "with_program": 8},
                         "targets": {"step_verbs": ["a", "b", "END"], "objects": ["x", "none", "END", "y"]},
                         "shards": []}
        if task == "anticipation":
            self.manifest["anticipation"] = {"context": context}
        self.context, self.size = context, 8

    def __len__(self):
        return 8


def _source(monkeypatch, tmp_path, rank, sets, task="recognition", context=0, val=None):
    from leap_cli.train import data
    from leap_cli.train.config import load_config
    from leap_cli.train.distributed import DistInfo

    monkeypatch.setattr(data, "ShardDataset", lambda folder, **kw: _StubShards(folder, task=task, context=context,
                                                                               **kw))
    monkeypatch.setattr(data, "check_context", lambda *a, **k: None)
    cfg = load_config("tiny-synthetic-short", ["data.batch_size=2", *sets])
    return data.ShardSource(tmp_path / "train", val, cfg, DistInfo(rank=rank, world_size=2))


@pytest.mark.parametrize("task, context, sets, words", [
    ("recognition", 0, ["model.anticipation_context=2"], "is not used: data.task is recognition"),
    ("anticipation", 2, ["data.task=anticipation"], "model.anticipation_context is 0")])
def test_an_anticipation_context_warning_is_said_by_rank_zero_only(monkeypatch, tmp_path, caplog, task, context,
                                                                   sets, words):
    import logging

    with caplog.at_level(logging.WARNING):
        _source(monkeypatch, tmp_path, 1, sets, task, context)
    assert not [r for r in caplog.records if "anticipation_context" in r.getMessage()]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _source(monkeypatch, tmp_path, 0, sets, task, context)
    said = [r.getMessage() for r in caplog.records if "anticipation_context" in r.getMessage()]
    assert len(said) == 1 and words in said[0], said


def test_anticipation_shards_without_context_and_a_model_without_are_not_warned_of(monkeypatch, tmp_path, caplog):
    """Context 0 in the model warns only where the shards hold context clips (the one survivor of the session's
    mutation run: the warning with its shards condition dropped)."""
    import logging

    with caplog.at_level(logging.WARNING):
        _source(monkeypatch, tmp_path, 0, ["data.task=anticipation"], "anticipation", 0)
    assert not [r for r in caplog.records if "anticipation_context" in r.getMessage()]


def test_no_validation_shards_is_said_by_rank_zero_only(monkeypatch, tmp_path, caplog):
    """Was wrong: train/data.py ShardSource warns 'no validation shards in ...' on every torchrun rank (not gated by
    info.is_main as its other warnings are): said world_size times"""
    import logging

    with caplog.at_level(logging.WARNING):
        _source(monkeypatch, tmp_path, 1, [], val=tmp_path / "no-val")
    assert not caplog.records, [r.getMessage() for r in caplog.records]


def test_an_extract_the_old_leap_finished_is_kept_whole(kitchen, old_leap, tmp_path):
    out = tmp_path / "w" / "descriptors" / "train.jsonl"
    args = ["extract", "--data", kitchen, "--split", "train", "--workdir", tmp_path / "w",
            "--components", "narration,hands", "--frame-cache", "none"]
    r = leap(tmp_path, *args, pythonpath=old_leap)
    assert r.returncode == 0, r.stderr
    before = out.read_bytes()
    r = leap(tmp_path, *args)
    said = " ".join(r.stdout.split())
    assert r.returncode == 0 and "4 done before, 0 written now" in said and "earlier leap" not in said, said
    assert out.read_bytes() == before
    r = leap(tmp_path, *args, "--retry-errors")  # nothing failed: nothing redone either
    assert r.returncode == 0 and "0 written now" in " ".join(r.stdout.split()), r.stdout


def test_records_of_a_newer_leap_are_not_said_to_be_an_earlier_leaps(kitchen, tmp_path):
    """Was wrong: a record a NEWER leap made (versions text 2, opened by this leap's 1: a downgrade) is said to 'hold
    parts an earlier leap made otherwise' (commands/extract.py note; base.outdated compares with != not <)"""
    from typer.testing import CliRunner

    from leap_cli.cli import app

    out = tmp_path / "w" / "descriptors" / "train.jsonl"
    args = ["extract", "--data", str(kitchen), "--split", "train", "--workdir", str(tmp_path / "w"),
            "--components", "narration", "--frame-cache", "none"]
    assert CliRunner().invoke(app, args).exit_code == 0
    recs = read_jsonl(out)
    recs[0]["versions"]["text"] = 2  # written by a later leap whose clip text differs
    out.write_text("".join(json.dumps(r) + "\n" for r in recs))
    r = CliRunner().invoke(app, args, terminal_width=400)
    said = " ".join(r.output.split())
    assert r.exit_code == 0 and "text 2 -> 1" in said, said
    assert "an earlier leap made" not in said, said
