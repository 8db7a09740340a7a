"""A video downloaded again before generate-programs ran (helper stale65, session 65): extract made the descriptors of
the old file, the user replaces the MP4 and runs generate-programs before extract. The programs would be made (for an
LLM: paid) from the old file's clip text, and paid again once extract has made the records again (the clip hash
changes). Now the segments whose descriptor record keeps a ``video_size`` other than the MP4's size now (found where
extract's settings say the data set is) are left out of the run, the summary says so in one line with the extract to
run; records already written for them are kept; records without a size are never left out; the estimate and the dry
run count them out; an ingest of paid results still takes them. A run where all are left out exits 0, as a run with
nothing to do does (nothing was attempted, nothing failed): docs/programs.md, "A video downloaded again".
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.kitchens import config_kitchen_copy
from tests.procs import leap_here
from tests.programs_llm_server import Reply, ScriptedServer, narration_id_of
from tests.test_attack_s65_replaced65 import _Unread

VID = "P01_01"  # a train video; the train split holds another beside it


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """A workdir after extract of train (two videos), before generate-programs."""
    from leap_cli.synth.kitchen import KitchenConfig

    root = tmp_path_factory.mktemp("stale")
    cfg = KitchenConfig(videos=5, segments_per_video=3, width=96, height=64, audio_in_mp4=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(KitchenConfig, "truncated_video", lambda self: None)
        config_kitchen_copy(tmp_path_factory, root / "w" / "kitchen", cfg, truncated=False)
        leap = leap_here(mp, _Unread())
        assert leap("extract", "--workdir", "w", "--split", "train", "--components", "narration,camera",
                    cwd=root).returncode == 0  # (extract's settings record the data set as given: w/kitchen)
    return root / "w"


@pytest.fixture
def leap(monkeypatch, capsys, tmp_path):
    """leap run in tmp_path (the test's cwd), where the test's copy of the workdir is (as w)."""
    monkeypatch.chdir(tmp_path)
    return leap_here(monkeypatch, capsys)


def _workdir(extracted, tmp_path) -> Path:
    """The test's copy of the workdir, as leap is given it: w (in tmp_path, the cwd)."""
    shutil.copytree(extracted, tmp_path / "w")
    return Path("w")


def _mp4(wd: Path, vid: str = VID) -> Path:
    return wd / "kitchen" / vid[:3] / "videos" / f"{vid}.MP4"


def _replace(wd: Path, vid: str = VID) -> tuple[int, int]:
    """The video downloaded again: another file of another size (bytes after its last box); (old, new) sizes."""
    old = _mp4(wd, vid).stat().st_size
    with open(_mp4(wd, vid), "ab") as f:
        f.write(b"\0" * 8)
    return old, old + 8


def _said(r) -> str:
    return " ".join((r.stdout + r.stderr).split())


def _ok(r) -> str:
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return _said(r)


def _ids(wd: Path) -> dict[str, list[str]]:
    """Descriptor narration ids by video."""
    out: dict[str, list[str]] = {}
    for line in (wd / "descriptors" / "train.jsonl").read_text().splitlines():
        r = json.loads(line)
        out.setdefault(r["video_id"], []).append(r["narration_id"])
    return out


def _programs(wd: Path) -> dict[str, dict]:
    path = wd / "programs" / "train.jsonl"
    return {r["narration_id"]: r for r in map(json.loads, path.read_text().splitlines())} if path.exists() else {}


def _line(wd: Path, n: int, old: int, new: int) -> str:
    return (f"{n} segments were left out: their descriptors were made from a video that has changed since "
            f"({_mp4(wd)}: size {old} -> {new} bytes): run leap extract --split train --workdir {wd} --components "
            "narration,camera (it makes them again), then generate-programs again")  # (extract's options: session 66)


def test_no_request_for_the_replaced_videos_segments_the_rest_is_asked(extracted, tmp_path, leap, monkeypatch):
    wd = _workdir(extracted, tmp_path)
    ids = _ids(wd)
    assert VID in ids and len(ids) >= 2, ids
    old, new = _replace(wd)
    monkeypatch.setenv("LEAP_TEST_KEY", "sk-test")
    with ScriptedServer(lambda body, n: Reply("{}")) as server:  # (an invalid reply: one request each, no repair)
        r = leap("generate-programs", "--workdir", wd, "--split", "train", "--backend", "openai",
                 "--base-url", server.base_url, "--api-key-env", "LEAP_TEST_KEY", "--repair-rounds", 0)
        asked = {narration_id_of(b) for b in server.requests}
    said = _said(r)
    assert r.returncode == 3 and "all 6 records failed" in said, said  # (the invalid replies asked: exit 3)
    assert _line(wd, len(ids[VID]), old, new) in said, said
    others = {k for v, ks in ids.items() if v != VID for k in ks}
    assert asked == others and len(server.requests) == len(others), asked
    assert set(_programs(wd)) == others
    # after extract, the same run asks for them (and for them alone), with no word of a video
    assert "changed since" in _ok(leap("extract", "--workdir", wd, "--split", "train", "--components",
                                       "narration,camera"))
    with ScriptedServer(lambda body, n: Reply("{}")) as server:
        said = _said(leap("generate-programs", "--workdir", wd, "--split", "train", "--backend", "openai",
                          "--base-url", server.base_url, "--api-key-env", "LEAP_TEST_KEY", "--repair-rounds", 0))
        assert {narration_id_of(b) for b in server.requests} == set(ids[VID]), said
    assert "left out" not in said, said


def test_all_left_out_exits_0_with_the_line_records_written_are_kept(extracted, tmp_path, leap):
    """The offline backend alike; a run where every segment to make is left out exits 0 (nothing attempted, nothing
    failed) with the line; the output's records of the replaced video are kept as they are, not counted."""
    wd = _workdir(extracted, tmp_path)
    ids = _ids(wd)
    _ok(leap("generate-programs", "--workdir", wd, "--split", "train"))
    out = wd / "programs" / "train.jsonl"
    lines = out.read_text().splitlines()
    mine = [x for x in lines if json.loads(x)["video_id"] == VID] if "video_id" in json.loads(lines[0]) else \
        [x for x in lines if json.loads(x)["narration_id"] in ids[VID]]
    out.write_text("".join(x + "\n" for x in lines if x not in mine[:2]))  # two of its records lost
    kept = out.read_text()
    old, new = _replace(wd)
    r = leap("generate-programs", "--workdir", wd, "--split", "train")
    assert r.returncode == 0, _said(r)
    assert _line(wd, 2, old, new) in _said(r), _said(r)
    assert out.read_text() == kept  # the other records of that video kept as they were, none written
    # all its records there: nothing is left out, nothing said
    out.write_text("".join(x + "\n" for x in lines))
    said = _ok(leap("generate-programs", "--workdir", wd, "--split", "train"))
    assert "left out" not in said and out.read_text() == "".join(x + "\n" for x in lines), said


def test_records_without_video_size_are_never_left_out(extracted, tmp_path, leap):
    wd = _workdir(extracted, tmp_path)
    path = wd / "descriptors" / "train.jsonl"
    path.write_text("".join(json.dumps({k: v for k, v in json.loads(x).items() if k != "video_size"}) + "\n"
                            for x in path.read_text().splitlines()))
    _replace(wd)
    said = _ok(leap("generate-programs", "--workdir", wd, "--split", "train"))
    assert "left out" not in said and set(_programs(wd)) == {k for ks in _ids(wd).values() for k in ks}, said


def test_a_data_root_that_is_not_there_checks_nothing(extracted, tmp_path, leap):
    """The dataset root is the one extract's settings record; moved away, no check (and no error)."""
    wd = _workdir(extracted, tmp_path)
    _replace(wd)
    shutil.move(tmp_path / wd / "kitchen", tmp_path / "elsewhere")
    said = _ok(leap("generate-programs", "--workdir", wd, "--split", "train", "--data", tmp_path / "elsewhere"))
    assert "left out" not in said, said


def test_estimate_and_dry_run_count_them_out(extracted, tmp_path, leap):
    wd = _workdir(extracted, tmp_path)
    ids = _ids(wd)
    old, new = _replace(wd)
    r = leap("generate-programs", "--workdir", wd, "--split", "train", "--backend", "openai", "--dry-run")
    said = _ok(r)
    others = sum(len(v) for k, v in ids.items() if k != VID)
    assert f"estimate: {others} segments of train pending" in said, said
    assert "estimate: " + _line(wd, len(ids[VID]), old, new) in said, said
    assert f"Clip {ids[VID][0]}:" not in r.stdout  # the prompt shown is one a run would send
    # every video replaced: no prompt to show, and the line says why
    for other in ids.keys() - {VID}:
        _replace(wd, other)
    r = leap("generate-programs", "--workdir", wd, "--split", "train", "--dry-run")
    assert r.returncode == 2 and "no segment to build a prompt for: " in _said(r), _said(r)
    assert f"and {len(ids) - 1} other videos" in _said(r), _said(r)
    # and a live run where every segment is left out: nothing asked, nothing failed (exit 0), the line said
    r = leap("generate-programs", "--workdir", wd, "--split", "train")
    assert r.returncode == 0 and f"{sum(map(len, ids.values()))} segments were left out" in _said(r), _said(r)
    assert not _programs(wd)
