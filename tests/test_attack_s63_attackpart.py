"""Session 63, helper attackpart: attacks on the part remake of outdated extract records (runner._parts_to_make,
_merged, _EarlierLines; base.outdated_parts).

Held: a SIGKILL mid-resume (workers 1 and 2, twice, a text-only one) resumes to a fresh run's records, each once; a
key's two lines, a cut last line, CRLF, blank and key-sorted lines are read right; records without versions or with
odd ones, malformed or missing kept parts, --limit, --shard, --retry-errors with a text bump, a video gone since, every
part bumped alone. Was wrong (failing before the fix): the note's cause of whole remakes, an empty table printed for a
text-only run, a key counted both reannotated and outdated."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from leap_cli.extract import base
from leap_cli.extract.runner import run_extract
from leap_cli.io import read_jsonl
from tests.extract_kitchen import ALL_COMPONENTS as ALL, build, earlier_camera_output, kitchen_config, count_describes

VO = ("P01_01_0", "P01_01_1", "P01_01_2")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def kitchen(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("kitchen") / "root")


@pytest.fixture(scope="module")
def fresh(kitchen, tmp_path_factory) -> dict[str, dict]:
    """What today's leap writes, from scratch."""
    out = tmp_path_factory.mktemp("fresh") / "train.jsonl"
    run_extract(_cfg(kitchen, out))
    return _lines(out)


@pytest.fixture(scope="module")
def old_output(kitchen, tmp_path_factory) -> str:
    """The output of an earlier leap (camera 1, whose odometry wrote another text), as text."""
    return earlier_camera_output(kitchen, tmp_path_factory.mktemp("old") / "train.jsonl")


_cfg = kitchen_config


def _lines(out: Path) -> dict[str, dict]:
    return {r["narration_id"]: r for r in read_jsonl(out)}


def _raw(out: Path) -> list[dict]:
    return [json.loads(x) for x in out.read_text().splitlines() if x.strip()]


def _write(out: Path, recs: list[dict]) -> None:
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))


@pytest.fixture
def calls(monkeypatch) -> Counter:
    """How often each component's ``describe`` runs in this process (workers=1)."""
    return count_describes(monkeypatch)


_KILLED = """
import os, signal, sys
from pathlib import Path
from leap_cli.extract.runner import ExtractConfig, run_extract
root, out, workers, after = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
n = [0]
def on_record(r):
    n[0] += 1
    if n[0] == after:
        os.kill(os.getpid(), signal.SIGKILL)
run_extract(ExtractConfig(data=root, split="train", out=out, frame_cache=None, workers=workers), on_record=on_record)
"""


def _killed_run(root: Path, out: Path, workers: int, after: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-c", _KILLED, str(root), str(out), str(workers), str(after)], env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == -9, p.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_a_part_remake_killed_midway_resumes_to_a_fresh_runs_output(kitchen, fresh, old_output, tmp_path, workers,
                                                                   calls):
    out = tmp_path / "train.jsonl"
    out.write_text(old_output)
    before = _lines(out)
    _killed_run(kitchen, out, workers, 1)
    lines = _raw(out)
    assert len(lines) == 5  # the earlier 4 and one made again, not yet compacted
    calls.clear()
    s = run_extract(_cfg(kitchen, out, workers=workers))
    assert (s.outdated, s.outdated_whole, dict(s.outdated_made), s.written) == (2, 0, {"camera": 2}, 2), s
    if workers == 1:
        assert calls == Counter(camera=2)
    lines = _raw(out)
    assert sorted(r["narration_id"] for r in lines) == sorted(fresh)  # each once
    after = _lines(out)
    assert after["P01_02_0"] == before["P01_02_0"]  # (its camera unavailable: camera 2 reads it the same)
    for k in VO:
        assert after[k] == fresh[k], k
        for n in ("narration", "audio", "objects", "hands"):
            assert after[k]["components"][n] == before[k]["components"][n]
    assert run_extract(_cfg(kitchen, out, workers=workers)).written == 0


def test_a_key_with_two_lines_keeps_the_last_ones_parts(kitchen, fresh, old_output, tmp_path):
    out = tmp_path / "train.jsonl"
    recs = [json.loads(x) for x in old_output.splitlines()]
    second = json.loads(json.dumps(recs[1]))
    recs[1]["components"]["audio"]["text"] = "FIRST LINE"
    second["components"]["audio"]["text"] = "LAST LINE"
    _write(out, recs + [second])
    s = run_extract(_cfg(kitchen, out))
    assert s.written == 3 and s.outdated == 3, s
    after = _lines(out)
    assert after["P01_01_1"]["components"]["audio"]["text"] == "LAST LINE"
    assert "Audio: LAST LINE." in after["P01_01_1"]["text"]
    assert len(_raw(out)) == 4


def test_a_record_without_versions_is_version_one(kitchen, fresh, old_output, tmp_path, calls):
    out = tmp_path / "train.jsonl"
    recs = [json.loads(x) for x in old_output.splitlines()]
    for r in recs:
        del r["versions"]
    _write(out, recs)
    calls.clear()
    s = run_extract(_cfg(kitchen, out))
    assert (s.outdated, dict(s.outdated_made), s.outdated_whole) == (3, {"camera": 3}, 0), s
    assert calls == Counter(camera=3)
    after = _lines(out)
    for k in VO:
        assert after[k] == fresh[k]
    assert "versions" not in after["P01_02_0"]


@pytest.mark.parametrize("versions", [{"camera": "2"}, {"camera": None}, {"camera": True}, {"camera": 1.0}, "2", None])
def test_odd_versions_are_taken_as_one(kitchen, fresh, old_output, tmp_path, versions):
    out = tmp_path / "train.jsonl"
    recs = [json.loads(x) for x in old_output.splitlines()]
    for r in recs:
        r["versions"] = versions
    _write(out, recs)
    s = run_extract(_cfg(kitchen, out))
    assert dict(s.outdated_made) == {"camera": 3}, s
    for k in VO:
        assert _lines(out)[k] == fresh[k]


@pytest.mark.parametrize("kept", [{"status": "fine", "source": "x", "data": {}, "text": "t"},
                                  {"status": "ok", "source": "x", "data": None, "text": "t"},
                                  {"status": "ok", "source": "x", "data": {"timeline": [{"start": "a"}]}, "text": "t"},
                                  {"status": "ok", "source": "x", "data": {}, "text": 5},
                                  {"status": "ok", "source": "x", "data": {}},
                                  {"status": "ok", "source": "x", "data": [], "text": "t"},
                                  "audio", None, []])
def test_a_malformed_kept_component_makes_the_record_whole(kitchen, fresh, old_output, tmp_path, kept, calls):
    out = tmp_path / "train.jsonl"
    recs = [json.loads(x) for x in old_output.splitlines()]
    recs[0]["components"]["audio"] = kept
    _write(out, recs)
    calls.clear()
    s = run_extract(_cfg(kitchen, out))
    assert (s.outdated_whole, dict(s.outdated_made)) == (1, {"camera": 2}), s
    assert _lines(out)["P01_01_0"] == fresh["P01_01_0"]
    assert calls == Counter({"camera": 3, "narration": 1, "audio": 1, "objects": 1, "hands": 1})


def test_a_missing_kept_component_makes_the_record_whole(kitchen, fresh, old_output, tmp_path):
    out = tmp_path / "train.jsonl"
    recs = [json.loads(x) for x in old_output.splitlines()]
    del recs[0]["components"]["audio"]
    _write(out, recs)
    s = run_extract(_cfg(kitchen, out))
    assert (s.outdated_whole, dict(s.outdated_made)) == (1, {"camera": 2}), s
    assert _lines(out)["P01_01_0"] == fresh["P01_01_0"]


def test_limit_and_shard(kitchen, fresh, old_output, tmp_path, calls):
    out = tmp_path / "train.jsonl"
    out.write_text(old_output)
    calls.clear()
    s = run_extract(_cfg(kitchen, out, limit=2))
    assert (s.segments, s.outdated, s.written, dict(s.outdated_made)) == (2, 2, 2, {"camera": 2}), s
    assert calls == Counter(camera=2)
    after = _lines(out)
    assert len(_raw(out)) == 4
    assert after["P01_01_2"]["versions"]["camera"] == 1  # beyond the limit: kept as it was
    s = run_extract(_cfg(kitchen, out))
    assert (s.outdated, s.written) == (1, 1)
    assert all(_lines(out)[k] == fresh[k] for k in VO)


@pytest.mark.parametrize("workers", [1, 2])
def test_killed_twice_then_resumed(kitchen, fresh, old_output, tmp_path, workers):
    out = tmp_path / "train.jsonl"
    out.write_text(old_output)
    _killed_run(kitchen, out, workers, 1)
    _killed_run(kitchen, out, 3 - workers, 1)
    s = run_extract(_cfg(kitchen, out, workers=workers))
    assert s.written == 1 and s.outdated == 1, s
    assert sorted(r["narration_id"] for r in _raw(out)) == sorted(fresh)
    for k in VO:
        assert _lines(out)[k] == fresh[k], k


def test_a_text_bump_with_retry_errors(kitchen, old_output, tmp_path, monkeypatch, calls):
    out = tmp_path / "train.jsonl"
    assert run_extract(_cfg(kitchen, out)).written == 4
    before = _lines(out)
    monkeypatch.setitem(base.VERSIONS, "text", 2)
    calls.clear()
    s = run_extract(_cfg(kitchen, out, retry_errors=True))  # P01_02_0 has no video: --retry-errors redoes it
    assert (s.outdated, s.outdated_whole, dict(s.outdated_made), s.written) == (4, 1, {"text": 3}, 4), s
    assert calls == Counter(dict.fromkeys(ALL, 1)), calls
    after = _lines(out)
    for k in VO:
        assert after[k]["components"] == before[k]["components"] and after[k]["versions"]["text"] == 2
    assert run_extract(_cfg(kitchen, out)).written == 0


def test_a_video_gone_since_gives_an_unavailable_camera_and_keeps_the_rest(kitchen, fresh, old_output, tmp_path):
    root = tmp_path / "k"
    shutil.copytree(kitchen, root)
    (root / "P01" / "videos" / "P01_01.MP4").unlink()
    out = tmp_path / "train.jsonl"
    out.write_text(old_output)
    before = _lines(out)
    s = run_extract(_cfg(root, out))
    assert (s.written, dict(s.outdated_made)) == (3, {"camera": 3}), s
    after = _lines(out)
    for k in VO:
        cam = after[k]["components"]["camera"]
        assert cam["status"] == "unavailable" and cam["data"].get("cause") == "video", cam
        for n in ("narration", "audio", "objects", "hands"):
            assert after[k]["components"][n] == before[k]["components"][n]
    # the video back: --retry-errors makes them whole again, as a fresh run
    s = run_extract(_cfg(kitchen, out, retry_errors=True))
    assert s.written == 4
    for k in VO:
        assert _lines(out)[k] == fresh[k]


def test_a_text_bump_killed_midway(kitchen, tmp_path, monkeypatch):
    out = tmp_path / "train.jsonl"
    assert run_extract(_cfg(kitchen, out)).written == 4
    before = _lines(out)
    script = out.parent / "bump.py"
    script.write_text("from leap_cli.extract import base\nbase.VERSIONS['text'] = 2\n" + _KILLED)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, str(script), str(kitchen), str(out), "1", "2"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == -9, p.stderr
    monkeypatch.setitem(base.VERSIONS, "text", 2)
    s = run_extract(_cfg(kitchen, out))
    assert (s.written, dict(s.outdated_made)) == (2, {"text": 2}), s
    after = _lines(out)
    assert len(_raw(out)) == 4
    for k, r in after.items():
        assert r["components"] == before[k]["components"] and r["versions"]["text"] == 2


def _cli(kitchen: Path, w: Path, *more: str) -> str:
    from typer.testing import CliRunner

    from leap_cli.cli import app

    r = CliRunner().invoke(app, ["extract", "--data", str(kitchen), "--split", "train", "--workdir", str(w),
                                 "--frame-cache", "none", *more], terminal_width=400)
    assert r.exit_code == 0, r.output
    return " ".join(r.output.split())


def test_the_note_says_why_records_are_made_whole(kitchen, old_output, tmp_path, monkeypatch):
    """Was wrong: a record made whole because a component it keeps cannot be kept (a status leap does not write) was
    said to be made whole for "a later leap's part in them, or a failure --retry-errors redoes", neither of which
    was so; the note now names the causes that are."""
    w = tmp_path / "w"
    _cli(kitchen, w)
    out = w / "descriptors" / "train.jsonl"
    recs = [json.loads(x) for x in old_output.splitlines()]  # camera 1
    recs[0]["components"]["audio"]["status"] = "weird"  # a kept part that cannot be kept: made whole
    _write(out, recs)
    said = _cli(kitchen, w)
    assert "only those parts are made again (camera of 2)" in said, said
    assert "1 is made whole again (a component to keep that cannot be read as it is)" in said, said
    outdated = said.split("note: ")[1]  # (the note on outdated records; the one on kept failures follows it)
    assert "later leap" not in outdated and "a failure --retry-errors redoes" not in outdated, said
    monkeypatch.setitem(base.VERSIONS, "audio", 0)  # a later leap's audio in every record
    said = _cli(kitchen, w)
    assert "they are made whole again (a later leap's part in them)" in said, said
    monkeypatch.setitem(base.VERSIONS, "audio", 1)
    _write(out, recs)
    recs[1]["components"]["audio"] = {"status": "error", "source": "dsp-rules", "text": "",
                                      "data": {"error": "internal error (OSError)", "detail": "OSError: x"}}
    _write(out, recs)
    said = _cli(kitchen, w, "--retry-errors")
    assert ("2 are made whole again (a component to keep that cannot be read as it is, or a failure --retry-errors "
            "redoes)") in said, said


def test_a_part_remake_says_the_failures_it_keeps(kitchen, old_output, tmp_path):
    """A part remake keeps the record's other components as they are, failed ones too (--retry-errors redoes those):
    the run that wrote records says so, as a rerun with nothing to do did (it said nothing until the next run)."""
    import re

    w = tmp_path / "w"
    _cli(kitchen, w)
    out = w / "descriptors" / "train.jsonl"
    recs = [json.loads(x) for x in old_output.splitlines()]  # camera 1
    _write(out, recs)
    kept = re.search(r"note: (\d+) records? of earlier runs holds? a component that failed", _cli(kitchen, w))
    before = int(kept[1]) if kept else 0  # (a segment of the kitchen's has no video: unavailable, not failed)
    recs[0]["components"]["audio"] = {"status": "error", "source": "dsp-rules", "text": "",
                                      "data": {"error": "internal error (OSError)", "detail": "OSError: x"}}
    _write(out, recs)
    said = _cli(kitchen, w)
    assert "only those parts are made again (camera of 3)" in said, said
    assert f"note: {before + 1} records of earlier runs hold a component that failed" in said, said
    again = _cli(kitchen, w)
    assert "nothing to do" in again and f"note: {before + 1} of them hold a component that failed" in again, again


def test_a_text_bump_alone_prints_no_empty_table(kitchen, tmp_path, monkeypatch):
    """Was wrong: a run that only rendered clip texts again printed a table of headers and no row."""
    w = tmp_path / "w"
    _cli(kitchen, w)
    monkeypatch.setitem(base.VERSIONS, "text", 2)
    said = _cli(kitchen, w)
    assert "share of time" not in said, said
    assert "segments: 4 selected, 0 done before, 4 written now" in said, said
    assert "the clip text alone of 4" in said, said


def test_a_key_whose_last_line_is_of_other_annotations_is_not_counted_outdated(kitchen, old_output, tmp_path):
    """Was wrong: a key with two lines (a run killed before it dropped the first), the first an earlier leap's
    record and the last one made from other annotations, was counted both as reannotated and as outdated (and
    made whole for a later leap's part)."""
    out = tmp_path / "train.jsonl"
    recs = [json.loads(x) for x in old_output.splitlines()]
    other = {**recs[1], "annotation_hash": "0" * len(recs[1]["annotation_hash"])}
    _write(out, recs + [other])
    s = run_extract(_cfg(kitchen, out))
    assert (s.reannotated, s.outdated, s.outdated_whole, dict(s.outdated_made)) == (1, 2, 0, {"camera": 2}), s


def test_a_cut_new_line_and_odd_lines_are_read_right(kitchen, fresh, old_output, tmp_path):
    """A new line cut by a kill (dropped on open: the old line decides), blank lines, CRLF ends and a record whose
    keys another tool sorted: _EarlierLines reads each key's own line."""
    out = tmp_path / "train.jsonl"
    recs = [json.loads(x) for x in old_output.splitlines()]
    for r in recs:
        r["components"]["audio"]["text"] = "KEPT " + r["narration_id"]
    lines = [json.dumps(recs[0], sort_keys=True) + "\r\n", "\n", json.dumps(recs[1]) + "\n", "  \n",
             json.dumps(recs[2], ensure_ascii=False) + "\r\n", json.dumps(recs[3]) + "\n",
             json.dumps(fresh["P01_01_1"])[:200]]
    out.write_bytes("".join(lines).encode())
    s = run_extract(_cfg(kitchen, out))
    assert (s.written, dict(s.outdated_made)) == (3, {"camera": 3}), s
    after = _lines(out)
    for k in VO:
        assert after[k]["components"]["audio"]["text"] == "KEPT " + k
        assert after[k]["components"]["camera"] == fresh[k]["components"]["camera"]
    assert len(_raw(out)) == 4


def test_every_changed_predicate_takes_odd_component_data():
    """A CHANGED predicate is asked of every record's part on every resume: odd data (a hand-edited record, an older
    leap's shape) must not stop the run."""
    odd = [{}, {"source": None}, {"source": 5}, {"source": ["orb-vo"]}, {"data": None}, {"data": []},
           {"status": "ok", "source": "orb-vo:9 frames", "data": {"steps": None}}]
    for (part, n), changed in base.CHANGED.items():
        for comp in odd:
            assert changed(comp) in (True, False), (part, n, comp)
    rec = {"components": {"camera": "not a dict", "audio": None}, "versions": {"camera": 1, "audio": 1}}
    assert set(base.outdated_parts(rec)) <= {"camera", "audio", "text"}


def test_a_shard_makes_its_own_records_parts(kitchen, fresh, old_output, tmp_path, calls):
    from leap_cli.common import ShardSpec

    recs = [json.loads(x) for x in old_output.splitlines()]
    outs = {}
    for i in range(2):
        spec = ShardSpec.parse(f"{i}/2")
        out = tmp_path / f"train.shard{i}of2.jsonl"
        mine = {s.narration_id for s in spec.select(
            [type("S", (), {"video_id": r["video_id"], "narration_id": r["narration_id"]})() for r in recs],
            key=lambda s: s.video_id)}
        _write(out, [r for r in recs if r["narration_id"] in mine])
        outs[i] = (out, spec, mine)
    calls.clear()
    for out, spec, mine in outs.values():
        s = run_extract(_cfg(kitchen, out, shard=spec))
        assert s.written == len(mine & set(VO)) and s.outdated_whole == 0, s
        assert all(_lines(out)[k] == fresh[k] for k in mine & set(VO))
    assert calls == Counter(camera=3)


@pytest.mark.parametrize("bumped", [("narration",), ("audio",), ("objects",), ("hands",), ("audio", "hands", "text")])
def test_each_part_made_alone_equals_a_fresh_run(kitchen, fresh, tmp_path, monkeypatch, calls, bumped):
    out = tmp_path / "train.jsonl"
    for r in fresh.values():
        out.open("a").write(json.dumps(r, ensure_ascii=False) + "\n")
    for part in bumped:
        monkeypatch.setitem(base.VERSIONS, part, 2)
    calls.clear()
    s = run_extract(_cfg(kitchen, out, workers=2 if len(bumped) > 1 else 1))
    made = tuple(p for p in bumped if p != "text")
    assert (s.outdated, s.outdated_whole, dict(s.outdated_made)) == (4, 0, dict.fromkeys(made, 4)), s
    if len(bumped) == 1:
        assert calls == Counter({made[0]: 4}), calls
    after = _lines(out)
    for k, r in fresh.items():
        assert after[k] == {**r, "versions": {**r["versions"], **dict.fromkeys(bumped, 2)}}, k
