"""Mutation run (mut59 helper) over this session's changes: rgb_frames folders that hold no frames, cannot be listed
or are files (epic/layout.py, epic/info.py), validate-programs' default report for --shard parts
(commands/programs.py _default_report), the notes of a run's own failed and invalid records (not_valid_notes), the
causes counted in generate-programs' summary (failure_cause), API keys read as header values (programs/backends.py
header_value), challenge action keys (evaluate/metrics.py action_key_pair), the shard reader's condition ids
(shards/dataset.py _condition_ids), build-shards' folder lock (shards/writer.py _folder_lock), the demo's SLS levels
and hands named without labelled detections (extract --retry-errors). Each test kills a mutant that the suite let
live."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leap_cli.cli import app
from leap_cli.epic.layout import DatasetLayout


def _invoke(*args, env=None):
    res = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250", "NO_COLOR": "1", **(env or {})})
    return res.exit_code, " ".join(res.output.split()), res


# ------------------------------------------------------------------------------- rgb_frames folders ---

def _video_info(root: Path, fps: float = 59.94, duration: float = 6.0) -> None:
    ann = root / "annotations"
    ann.mkdir(parents=True)
    (ann / "EPIC_100_video_info.csv").write_text(f"video_id,duration,fps,resolution\nP01_01,{duration},{fps},456x256\n")


def test_length_check_counts_the_full_frames_folder_not_the_empty_one_before_it(tmp_path):
    """An empty ``rgb_frames/P01_01/`` in the folder given (an untar not begun) and the full one in EPIC's download
    folder: info's length check counts the full one's 360 frames (mutant: the first root's folder read, 'holds no
    frame' for a video that is whole)."""
    import cv2
    import numpy as np

    from leap_cli.epic.info import check_lengths

    jpg = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    root = tmp_path / "data"
    _video_info(root)
    (root / "P01" / "rgb_frames" / "P01_01").mkdir(parents=True)
    full = root / "EPIC-KITCHENS" / "P01" / "rgb_frames" / "P01_01"
    full.mkdir(parents=True)
    for n in range(1, 361):  # 6 s at EPIC's 60/s
        (full / f"frame_{n:010d}.jpg").write_bytes(jpg)
    layout = DatasetLayout.open(root)
    assert layout.roots[0] == root and layout.frames_dir("P01_01") == full
    assert check_lengths(layout, ["P01_01"]) == []


def test_a_frames_folder_that_cannot_be_listed_is_taken_to_hold_frames(tmp_path, monkeypatch):
    """layout._holds_frames: a folder whose listing is refused (PermissionError) holds frames as far as the layout
    can tell, so its reader names the permission (mutant: taken as empty, the tar beside it named instead)."""
    folder = tmp_path / "P01" / "rgb_frames" / "P01_01"
    folder.mkdir(parents=True)
    (folder.parent / "P01_01.tar").touch()
    real = os.scandir

    def scandir(path="."):
        if Path(path) == folder:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    layout = DatasetLayout(tmp_path, tmp_path / "annotations")
    assert layout.has_frames("P01_01") is True
    assert layout.frames_tar("P01_01") is None and layout.frames_dir("P01_01") == folder


def test_a_file_where_the_frames_folder_goes_holds_no_frames(tmp_path):
    """A plain file named ``rgb_frames/P01_01`` (a download saved under the folder's name) is no frames folder: the
    tar beside it is still the video's frames (mutant: its NotADirectoryError taken as an unlistable folder)."""
    stray = tmp_path / "P01" / "rgb_frames" / "P01_01"
    stray.parent.mkdir(parents=True)
    stray.write_text("")
    tar = stray.with_name("P01_01.tar")
    tar.touch()
    layout = DatasetLayout(tmp_path, tmp_path / "annotations")
    assert layout.has_frames("P01_01") is False and layout.frames_dir("P01_01") is None
    assert layout.frames_tar("P01_01") == tar


# --------------------------------------------------------------- validate-programs: default report ---

@pytest.fixture(scope="module")
def val_parts(tmp_path_factory):
    """A work directory with 8 validation segments, their offline programs, the split's report, and the records."""
    from leap_cli.programs.generate import GenerateConfig, generate_programs
    from tests.program_helpers import excerpt_annotations

    work = tmp_path_factory.mktemp("mut59-validate")
    excerpt_annotations(work, rows=8)
    generate_programs(GenerateConfig(workdir=work, split="val"))
    code, said, _ = _invoke("validate-programs", "--workdir", work, "--split", "val")
    assert code == 0, said
    rows = [json.loads(x) for x in (work / "programs" / "val.jsonl").read_text().splitlines()]
    return work, rows, (work / "programs" / "val.report.json").read_bytes()


def _parts(folder: Path, rows, indices, count=4) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in indices:
        p = folder / f"val.shard{i}of{count}.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in rows[i::count]))
        out.append(p)
    return out


def test_three_of_four_parts_get_a_report_named_by_them(val_parts, tmp_path):
    """Three of four parts are not the whole split: their report is val.shard0+1+2of4.report.json (mutant: named
    as the merge's, val.report.json, once all but one part are there)."""
    work, rows, whole = val_parts
    files = _parts(tmp_path / "parts", rows, [0, 1, 2])
    code, said, _ = _invoke("validate-programs", *files, "--workdir", work)
    assert code == 0, said
    report = json.loads((tmp_path / "parts" / "val.shard0+1+2of4.report.json").read_text())
    assert report["records"] == sum(len(rows[i::4]) for i in (0, 1, 2))
    assert not (tmp_path / "parts" / "val.report.json").exists()
    assert (work / "programs" / "val.report.json").read_bytes() == whole


def test_parts_from_two_folders_get_their_report_beside_the_first_given(val_parts, tmp_path):
    """docs: beside the first of the --shard parts given (mutant: beside the last)."""
    work, rows, whole = val_parts
    a, = _parts(tmp_path / "node0", rows, [0])
    b, = _parts(tmp_path / "node2", rows, [2])
    code, said, _ = _invoke("validate-programs", a, b, "--workdir", work)
    assert code == 0, said
    assert (tmp_path / "node0" / "val.shard0+2of4.report.json").is_file()
    assert not list((tmp_path / "node2").glob("*.report.json"))
    assert (work / "programs" / "val.report.json").read_bytes() == whole


def test_every_part_in_another_folder_gets_the_merges_report_beside_them(val_parts, tmp_path):
    """Every part of one count, copied back into a folder of their own: the report their merge would get, beside
    them (val.report.json there), never the work directory's (mutant: the split's report replaced)."""
    work, rows, whole = val_parts
    files = _parts(tmp_path / "back", rows, range(4))
    code, said, _ = _invoke("validate-programs", *files, "--workdir", work)
    assert code == 0, said
    assert json.loads((tmp_path / "back" / "val.report.json").read_text())["records"] == len(rows)
    assert (work / "programs" / "val.report.json").read_bytes() == whole


# ------------------------------------------------------------------ generate-programs: notes, causes ---

def test_this_runs_notes_name_the_option_for_each_kind_and_count_them():
    from leap_cli.commands.programs import not_valid_notes

    failed, = not_valid_notes({"failed": 1}, this_run=True)
    assert "--retry-errors" in failed and failed.startswith("1 of the records written by this run is failed")
    assert not_valid_notes({"failed": 2}, this_run=True)[0].startswith("2 of the records written by this run are")
    # a server held: its note has named --retry-errors for the failed already (mutant: said twice)
    assert not_valid_notes({"failed": 2}, this_run=True, said=True) == []
    invalid, = not_valid_notes({"invalid": 3}, this_run=True)
    assert "3 of the records written by this run are invalid: add --retry-invalid" in invalid
    assert len(not_valid_notes({"failed": 1, "repair": 1, "invalid": 1}, this_run=True, said=True)) == 2
    assert not_valid_notes({}, this_run=True) == []


def test_a_long_cause_is_cut_at_a_whole_word_and_details_in_parentheses_go_first():
    from leap_cli.commands.programs import failure_cause

    long = "request failed: the reply " + "word " * 30 + "end"
    got = failure_cause(long)
    assert len(got) <= 100 and got.endswith("...")
    kept = got[:-3]
    assert long.startswith(kept) and long[len(kept)] == " ", got
    # the details in parentheses go with the blank before them
    detailed = "request failed: the reply " + "w " * 25 + "(a detail " + "d " * 20 + ") end"
    assert failure_cause(detailed) == "request failed: the reply " + "w " * 24 + "w end"
    # parentheses left open (a message cut before its end): cut before the first, no blank left
    cut = "request failed: the reply " + "w " * 20 + "(first " + "y " * 10 + "(second " + "z " * 30
    assert failure_cause(cut) == "request failed: the reply " + ("w " * 20).rstrip()


# ------------------------------------------------------------------------------------ API key header ---

@pytest.mark.parametrize("inner, code", [("\n", "000A"), ("\x7f", "007F")])
def test_a_key_with_a_control_character_inside_is_named_with_its_variable(monkeypatch, inner, code):
    """A line break or DEL inside the key (two lines of a file pasted as one value) is a NoApiKey naming the
    variable and the character (mutant: only the blanks around it trimmed, the request broken later)."""
    from leap_cli.programs.backends import NoApiKey, header_value

    monkeypatch.setenv("MUT59_KEY", f" sk-ab{inner}cd ")
    with pytest.raises(NoApiKey, match=rf"MUT59_KEY .*U\+{code}, character 6 of 8"):
        header_value("MUT59_KEY")


def test_a_latin1_character_passes_as_a_header_can_carry_it(monkeypatch):
    from leap_cli.programs.backends import header_value

    monkeypatch.setenv("MUT59_KEY", "sk-\u00e9t\u00e9")
    assert header_value("MUT59_KEY") == "sk-\u00e9t\u00e9"


@pytest.mark.parametrize("value, said", [(None, "is not set"), ("", "is empty"), (" \r\n", "is empty")])
def test_a_key_that_is_blank_is_said_empty_not_unset(monkeypatch, value, said):
    """A variable set to blanks only (``export KEY=`` in a .env file): 'is empty', so the user does not look for a
    missing export (mutant: always 'is not set')."""
    from leap_cli.programs.backends import NoApiKey, OpenAIBackend

    if value is None:
        monkeypatch.delenv("MUT59_KEY", raising=False)
    else:
        monkeypatch.setenv("MUT59_KEY", value)
    with pytest.raises(NoApiKey, match=f"environment variable MUT59_KEY {said}"):
        OpenAIBackend("m", base_url="http://127.0.0.1:9/v1", api_key_env="MUT59_KEY")


# ------------------------------------------------------------------------------------- action keys ---

def test_action_key_pair_takes_only_keys_as_written_with_a_noun_that_fits_the_action_id():
    from leap_cli.evaluate.metrics import action_key_pair

    assert action_key_pair("7,12") == (7, 12) and action_key_pair("0,0") == (0, 0)
    assert action_key_pair("0,999") == (0, 999)
    assert action_key_pair("0,1000") is None  # action_id would make it verb 1's noun 0
    for bad in ("7,12x", "x7,12", "7, 12", "7,12\n", "7", "7,12,3", "-1,2", "07,12", 712):
        assert action_key_pair(bad) is None, bad


# ------------------------------------------------------------------------- shard reader: condition ids ---

def _reader(on_error="skip"):
    from leap_cli.shards.dataset import ShardDataset

    ds = object.__new__(ShardDataset)
    ds.__dict__.update(img_size=16, num_frames=2, train=False, temporal_views=1, spatial_views=1, max_steps=2,
                       num_conditions=2, step_width=3, context=0, seed=0, rank=0, _epoch=0, on_error=on_error,
                       folder=Path("shards"), stats={"samples": 0, "padding": 0, "errors": 0})
    ds.consumer_plan = lambda wid, nw: []
    return ds


def _sample(nid, targets) -> dict:
    import cv2
    import numpy as np

    jpg = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes()
    meta = {"narration_id": nid, "verb_class": 1, "noun_class": 2, "has_program": True,
            "targets": {"steps": [[1, 2, 3]], **targets}}
    return {"json": json.dumps(meta).encode(), "f0.jpg": jpg}


@pytest.mark.parametrize("targets", [{"pre": [True]}, {"pre": [2]}, {"post": [-1]}, {"step_pre": [[-1]]},
                                     {"step_post": [[0], [2]]}, {"pre": [1.0]}],
                         ids=["true", "pre-past", "post-minus-1", "step-pre-minus-1", "step-post-past", "float"])
def test_a_condition_id_that_indexes_no_condition_is_a_damaged_sample(targets):
    """_condition_ids: ``true``, -1 or an id past the conditions would mark another condition without a word (the
    second, the last, one of the post half); with on_error='skip' the sample is skipped and counted, the next read."""
    ds = _reader()
    items = [(0, _sample("bad", targets), False, "s.tar", "k0"), (1, _sample("ok", {"pre": [1], "post": [0]}),
                                                                  False, "s.tar", "k1")]
    ds._raw = lambda plan: iter(items)
    got = [s for s in ds]  # (list() would ask its len)
    assert [s["narration_id"] for s in got] == ["ok"] and ds.stats["errors"] == 1
    assert got[0]["conditions"].tolist() == [0, 1, 1, 0]


# ------------------------------------------------------------------------------ build-shards: folder lock ---

def test_the_folder_lock_keeps_others_out_and_is_let_go(tmp_path):
    """_folder_lock: held, no other open of the folder takes even a shared lock (mutant: a shared lock, two parts
    checking together); let go on leaving (mutant: the descriptor kept, the next build of the process waits
    forever); a folder that cannot be opened takes none and raises nothing."""
    import fcntl

    from leap_cli.shards.writer import _folder_lock

    def free() -> bool:
        fd = os.open(tmp_path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)

    with _folder_lock(tmp_path):
        assert not free()
    assert free()
    with _folder_lock(tmp_path):
        assert not free()
    assert free()
    with _folder_lock(tmp_path / "missing"):
        pass


# ------------------------------------------------------------------------- evaluate --scores with --run ---

def _scored_run(root: Path) -> Path:
    """WORKDIR root with kitchen/annotations (4 validation segments) and runs/R/eval/val/scores.pt (recognition)."""
    import torch

    from leap_cli.evaluate.scores import save_scores

    d = root / "kitchen" / "annotations"
    d.mkdir(parents=True)
    (d / "EPIC_100_verb_classes.csv").write_text(
        "id,key,instances,category\n0,take,\"['take']\",retrieve\n2,wash,\"['wash']\",clean\n")
    (d / "EPIC_100_noun_classes.csv").write_text(
        "id,key,instances,category\n0,tap,\"['tap']\",appliances\n3,plate,\"['plate']\",crockery\n")
    head = ("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,"
            "stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes")
    val = [("P01_01_0", "take", 0, "plate", 3), ("P01_01_1", "wash", 2, "plate", 3),
           ("P02_01_0", "wash", 2, "tap", 0), ("P02_01_1", "take", 0, "tap", 0)]
    rows = [head] + [f"{nid},{nid[:3]},{nid[:6]},00:00:0{i}.00,00:00:0{i}.00,00:00:0{i}.50,{i * 60 + 1},{i * 60 + 30},"
                     f"{v} {n},{v},{vc},{n},{nc},['{n}'],[{nc}]" for i, (nid, v, vc, n, nc) in enumerate(val)]
    (d / "EPIC_100_validation.csv").write_text("\n".join(rows) + "\n")
    own = root / "runs" / "R" / "eval" / "val"
    own.mkdir(parents=True)
    verb, noun = torch.full((4, 3), -1.0), torch.full((4, 4), -1.0)
    for i, (_, _, v, _, n) in enumerate(val):
        verb[i, v], noun[i, n] = 3.0, 3.0
    save_scores(own / "scores.pt", [r[0] for r in val], verb, noun, meta={"split": "val", "task": "recognition"})
    return own


def test_the_runs_own_scores_named_through_a_link_keep_their_metrics_in_the_run(tmp_path):
    """evaluate --scores LINK --run R, LINK a symbolic link to runs/R/eval/val/scores.pt: the same file, so its
    metrics go to runs/R/eval/val/metrics.json (mutant: the paths compared as written, metrics beside the link)."""
    own = _scored_run(tmp_path)
    link = tmp_path / "latest.pt"
    link.symlink_to(own / "scores.pt")
    code, said, _ = _invoke("evaluate", "--split", "val", "--scores", link, "--run", "R", "--workdir", tmp_path)
    assert code == 0, said
    assert json.loads((own / "metrics.json").read_text())["task"] == "recognition"
    assert not (tmp_path / "latest.metrics.json").exists()


def test_a_step_id_past_int64_is_a_damaged_sample_under_on_error_skip():
    """Was wrong: shards/dataset.py __iter__: a step id past int64 (1e30) raises torch's RuntimeError, which the
    on_error catch leaves out: the epoch stops."""
    for step in (1e30, 1.5, -5, True):  # (1.5 was taken as 1, -5 as an id)
        ds = _reader()
        bad = _sample("bad", {})
        meta = json.loads(bad["json"])
        meta["targets"]["steps"] = [[step, 2, 3]]
        bad["json"] = json.dumps(meta).encode()
        ds._raw = lambda plan: iter([(0, bad, False, "s.tar", "k0"), (1, _sample("ok", {}), False, "s.tar", "k1")])
        assert [s["narration_id"] for s in ds] == ["ok"] and ds.stats["errors"] == 1, step


# ------------------------------------------------------------------------------------- demo SLS levels ---

def test_demo_levels_need_the_program_loss_and_take_split_folders_in_any_case():
    """TL 4 needs the program heads and their loss (mutant: the heads alone); TD reads the folders' names as
    normalize_split does, in any case (mutant: 'VAL' not seen as the val shards)."""
    from leap_cli.demo import default_config, submission_levels
    from leap_cli.train.config import load_config

    def levels(*overrides):
        return submission_levels(load_config(default_config(), list(overrides)))

    assert levels("loss.program_loss=false")["--sls-tl"] == 3
    assert levels("data.train=[w/shards/TRAIN, w/shards/VAL]")["--sls-td"] == 4
