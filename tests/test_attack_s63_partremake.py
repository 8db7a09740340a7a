"""Session 63, helper partremake: a resume over records that an earlier leap made with an older version of some parts
(base.VERSIONS / outdated_parts) makes only those parts again (runner._parts_to_make): the record's other components
are kept as they are, the clip text is rendered again from them all, and the record gets today's "versions".

Was wrong (seen failing on the code before the change): a camera-only bump (camera 1 -> 2) made every component of
the record again (the CLIP naming of objects, the audio model: days on EPIC's ~90k segments); a text-only bump ran
every component too; the note said "they are made again" of the whole records.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from leap_cli.extract import base
from leap_cli.extract.runner import ExtractConfig, run_extract
from leap_cli.io import read_jsonl
from tests.extract_kitchen import build, camera_reads_otherwise, count_describes

ALL = ("narration", "audio", "camera", "objects", "hands")


@pytest.fixture(scope="module")
def kitchen(tmp_path_factory) -> Path:
    root = build(tmp_path_factory.mktemp("kitchen") / "root")
    for name in ("EPIC_100_verb_classes.csv", "EPIC_100_noun_classes.csv"):  # (for generate-programs)
        shutil.copy(Path(__file__).parent / "data" / "epic100" / name, root / "annotations" / name)
    return root


def _cfg(root: Path, out: Path, **kw) -> ExtractConfig:
    return ExtractConfig(data=root, split="train", out=out, components=kw.pop("components", ALL),
                         frame_cache=kw.pop("frame_cache", None), **kw)


def _lines(out: Path) -> dict[str, dict]:
    return {r["narration_id"]: r for r in read_jsonl(out)}


def _component_json(rec: dict, name: str) -> str:
    return json.dumps(rec["components"][name], ensure_ascii=False)


@pytest.fixture
def calls(monkeypatch) -> Counter:
    """How often each component's ``describe`` runs in this process (workers=1)."""
    return count_describes(monkeypatch)


def _old_odometry(monkeypatch):
    """The camera of an earlier leap (version 1): its odometry wrote another text for the same video."""
    camera_reads_otherwise(monkeypatch, ", as the odometry of 2026-12-05 read it")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_camera_bump_makes_the_camera_alone_again(kitchen, tmp_path, monkeypatch, calls, workers):
    out, fresh = tmp_path / "train.jsonl", tmp_path / "fresh.jsonl"
    with monkeypatch.context() as m:
        m.setitem(base.VERSIONS, "camera", 1)  # (a leap of 2026-12-05)
        _old_odometry(m)
        assert run_extract(_cfg(kitchen, out)).written == 4
    before = _lines(out)
    assert all(r["versions"]["camera"] == 1 for r in before.values())
    run_extract(_cfg(kitchen, fresh))
    ref = _lines(fresh)
    assert base.VERSIONS["camera"] == 2
    calls.clear()
    s = run_extract(_cfg(kitchen, out, workers=workers))
    # P01_02_0's camera is unavailable (no video): camera 2 reads it the same (CHANGED), the record is kept
    vo = {"P01_01_0", "P01_01_1", "P01_01_2"}
    assert (s.outdated, s.written, s.outdated_whole, dict(s.outdated_made)) == (3, 3, 0, {"camera": 3}), s
    after = _lines(out)
    assert set(after) == set(before)
    assert after["P01_02_0"] == before["P01_02_0"]
    for k in vo:
        assert after[k]["components"]["camera"] == ref[k]["components"]["camera"]  # today's odometry
        assert after[k]["components"]["camera"] != before[k]["components"]["camera"]
        for name in ("narration", "audio", "objects", "hands"):
            assert _component_json(after[k], name) == _component_json(before[k], name), (k, name)
        assert after[k]["text"] == ref[k]["text"] != before[k]["text"]
        assert after[k] == ref[k]  # the whole record a fresh run writes, its versions too
        assert list(after[k]["components"]) == list(ALL)
    # the counts and seconds of this run are the camera's alone (in workers too: their timings say what ran)
    assert {k for k, c in s.counts.items() if any(c.values())} == {"camera"}
    assert set(s.seconds) <= {"camera", "decode", "frame-cache"}, dict(s.seconds)
    if workers == 1:
        assert dict(calls) == {"camera": 3}, calls
    assert run_extract(_cfg(kitchen, out)).written == 0  # made once


def test_kept_parts_come_from_the_record_in_the_workers_too(kitchen, tmp_path, monkeypatch):
    """A kept component is the record's, not made again the same: an audio text edited in the record stays, and the
    clip text is rendered from it (workers=2: monkeypatched components do not reach spawned workers)."""
    out = tmp_path / "train.jsonl"
    with monkeypatch.context() as m:
        m.setitem(base.VERSIONS, "camera", 1)
        assert run_extract(_cfg(kitchen, out)).written == 4
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    for r in recs:
        r["components"]["audio"]["text"] = "KEPT AUDIO " + r["narration_id"]
    out.write_text("".join(json.dumps(r) + "\n" for r in recs))
    s = run_extract(_cfg(kitchen, out, workers=2))
    assert s.written == 3
    after = _lines(out)
    for k in ("P01_01_0", "P01_01_1", "P01_01_2"):
        assert after[k]["components"]["audio"]["text"] == f"KEPT AUDIO {k}"
        assert f"Audio: KEPT AUDIO {k}." in after[k]["text"].splitlines()
        assert after[k]["versions"] == {**dict.fromkeys(ALL, 1), "camera": 2, "text": 1}


def test_a_text_bump_runs_no_component(kitchen, tmp_path, monkeypatch, calls):
    out, fresh = tmp_path / "train.jsonl", tmp_path / "fresh.jsonl"
    assert run_extract(_cfg(kitchen, out, frame_cache=tmp_path / "fc")).written == 4
    before = _lines(out)
    shutil.rmtree(tmp_path / "fc")  # (nothing decodes now: the cache is not filled again either)
    monkeypatch.setitem(base.VERSIONS, "text", 2)
    from leap_cli.extract import describe

    real = describe.render_clip
    monkeypatch.setattr("leap_cli.extract.runner.render_clip", lambda *a, **k: real(*a, **k) + "\nToday: yes.")
    run_extract(_cfg(kitchen, fresh))
    calls.clear()
    s = run_extract(_cfg(kitchen, out, frame_cache=tmp_path / "fc"))
    assert (s.outdated, s.written, dict(s.outdated_made), s.outdated_whole) == (4, 4, {"text": 4}, 0), s
    assert not calls and not any(any(c.values()) for c in s.counts.values()) and not s.seconds
    assert not (tmp_path / "fc").exists()
    after, ref = _lines(out), _lines(fresh)
    for k, r in after.items():
        assert all(_component_json(r, n) == _component_json(before[k], n) for n in ALL)
        assert r == ref[k] and r["text"].endswith("\nToday: yes.") and r["versions"]["text"] == 2


def test_a_downgrade_and_an_annotation_change_make_the_record_whole(kitchen, tmp_path, monkeypatch, calls):
    root = tmp_path / "k"
    shutil.copytree(kitchen, root)
    out = tmp_path / "train.jsonl"
    with monkeypatch.context() as m:
        m.setitem(base.VERSIONS, "camera", 3)  # a later leap's
        run_extract(_cfg(root, out))
    calls.clear()
    s = run_extract(_cfg(root, out))
    assert (s.outdated, s.outdated_whole, dict(s.outdated_made)) == (4, 4, {}), s  # (camera 3 -> 2: every record)
    assert calls == Counter(dict.fromkeys(ALL, 4)), calls
    # a camera 1 record whose narration changed since: made whole (for its annotations), not in part
    with monkeypatch.context() as m:
        m.setitem(base.VERSIONS, "camera", 1)
        run_extract(_cfg(root, tmp_path / "old.jsonl"))
    shutil.copy(tmp_path / "old.jsonl", out)
    csv = root / "annotations" / "EPIC_100_train.csv"
    csv.write_text(csv.read_text().replace("wash knife,wash,2,knife,4,['knife'],[4]",
                                           "rinse knife,rinse,2,knife,4,['knife'],[4]"))
    calls.clear()
    s = run_extract(_cfg(root, out))
    assert (s.reannotated, s.outdated, dict(s.outdated_made)) == (1, 2, {"camera": 2}), s
    assert calls == Counter({"camera": 3, "narration": 1, "audio": 1, "objects": 1, "hands": 1}), calls
    assert "rinse knife" in _lines(out)["P01_01_1"]["text"]


def test_retry_errors_makes_a_failed_record_whole_and_a_kept_failure_stays_retryable(kitchen, tmp_path, monkeypatch,
                                                                                   calls):
    out = tmp_path / "train.jsonl"
    with monkeypatch.context() as m:
        m.setitem(base.VERSIONS, "camera", 1)
        run_extract(_cfg(kitchen, out))
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    recs[0]["components"]["audio"] = {"status": "error", "source": "dsp-rules", "text": "",
                                      "data": {"error": "internal error (OSError)", "detail": "OSError: x"}}
    out.write_text("".join(json.dumps(r) + "\n" for r in recs))
    saved = out.read_text()
    calls.clear()
    s = run_extract(_cfg(kitchen, out))  # the failed audio is kept: --retry-errors would still redo it
    assert dict(s.outdated_made) == {"camera": 3} and s.outdated_whole == 0 and calls == Counter(camera=3)
    assert s.retryable == 2  # (P01_01_0's audio, and P01_02_0 without a video, as before)
    assert _lines(out)["P01_01_0"]["components"]["audio"]["status"] == "error"
    out.write_text(saved)
    calls.clear()
    s = run_extract(_cfg(kitchen, out, retry_errors=True))
    assert (s.outdated_whole, dict(s.outdated_made)) == (1, {"camera": 2}), s
    assert calls == Counter({"camera": 4, "narration": 2, "audio": 2, "objects": 2, "hands": 2}), calls
    assert _lines(out)["P01_01_0"]["components"]["audio"]["status"] == "ok"


def test_the_hands_and_the_objects_detector_are_made_together():
    """With --detector-weights the hands name contacts by the boxes the objects' detector found (runner's
    video_cache "detector_boxes"): one made again without the other would read otherwise than a whole run."""
    from leap_cli.extract.runner import _parts_to_make

    rec = {"components": {n: {"status": "ok", "source": "s", "data": {}, "text": n} for n in ALL}}
    plain = ExtractConfig(data=Path("d"), split="train", out=Path("o"))
    det = ExtractConfig(data=Path("d"), split="train", out=Path("o"), detector_weights=Path("w.pth"))
    assert _parts_to_make(rec, {"hands": (1, 2)}, plain) == ("hands",)
    assert _parts_to_make(rec, {"hands": (1, 2)}, det) == ("objects", "hands")
    assert _parts_to_make(rec, {"objects": (1, 2), "text": (1, 2)}, det) == ("objects", "hands")
    assert _parts_to_make(rec, {"camera": (1, 2)}, det) == ("camera",)
    assert _parts_to_make(rec, {"text": (1, 2)}, det) == ()
    assert _parts_to_make(rec, {"camera": (3, 2)}, plain) is None  # a later leap's
    assert _parts_to_make(rec, {"camera": (1, 2)}, ExtractConfig(data=Path("d"), split="train", out=Path("o"),
                                                                 components=("camera",))) is None  # other components
    bad = {"components": {**rec["components"], "audio": {"status": "ok", "data": {"timeline": [{}]}, "text": ""}}}
    assert _parts_to_make(bad, {"camera": (1, 2)}, plain) is None  # a kept part that cannot be rendered


def test_a_frame_cache_entry_missing_is_filled_where_the_part_made_decodes(kitchen, tmp_path, monkeypatch):
    out, cache = tmp_path / "train.jsonl", tmp_path / "fc"
    with monkeypatch.context() as m:
        m.setitem(base.VERSIONS, "camera", 1)
        run_extract(_cfg(kitchen, out, frame_cache=cache))
    entries = sorted(cache.rglob("*.jpgs"))
    kept = entries[0].stat().st_mtime_ns
    entries[1].unlink()
    assert run_extract(_cfg(kitchen, out, frame_cache=cache)).written == 3  # the camera decodes: one pass for both
    assert sorted(cache.rglob("*.jpgs")) == entries and entries[0].stat().st_mtime_ns == kept


def test_the_note_says_what_is_made_again(kitchen, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from leap_cli.cli import app

    args = ["extract", "--data", str(kitchen), "--split", "train", "--workdir", str(tmp_path / "w"),
            "--components", "narration,audio,camera", "--frame-cache", "none"]
    with monkeypatch.context() as m:
        m.setitem(base.VERSIONS, "camera", 1)
        assert CliRunner().invoke(app, args).exit_code == 0
    m = monkeypatch
    m.setitem(base.VERSIONS, "text", 2)
    r = CliRunner().invoke(app, args, terminal_width=400)
    said = " ".join(r.output.split())
    assert r.exit_code == 0, r.output
    assert ("4 records of earlier runs hold parts another leap made otherwise (e.g. P01_01_0: camera 1 -> 2, text "
            "1 -> 2): only those parts are made again (camera of 3, the clip text alone of 1), their other components "
            "kept and the clip text rendered again, and generate-programs") in said, said
    assert "made whole" not in said
    m.setitem(base.VERSIONS, "audio", 0)  # a later leap's audio
    r = CliRunner().invoke(app, args, terminal_width=400)
    said = " ".join(r.output.split())
    assert "audio 1 -> 0): they are made whole again (a later leap's part in them" in said, said
    assert "only those parts" not in said


def test_generate_programs_asks_again_only_where_the_clip_text_changed(kitchen, tmp_path, monkeypatch):
    from leap_cli.programs.generate import GenerateConfig, generate_programs

    out = tmp_path / "w" / "descriptors" / "train.jsonl"
    cfg = _cfg(kitchen, out, components=("narration", "audio", "camera"))
    gen = GenerateConfig(workdir=tmp_path / "w", split="train", data=kitchen)
    with monkeypatch.context() as m:
        m.setitem(base.VERSIONS, "camera", 1)
        assert run_extract(cfg).written == 4
    assert generate_programs(gen).statuses["valid"] == 4
    camera_reads_otherwise(monkeypatch, ", then steadies", "P01_01_1")  # (today's odometry reads one segment otherwise)
    s = run_extract(cfg)
    assert (s.outdated, s.written, dict(s.outdated_made)) == (3, 3, {"camera": 3})
    again = generate_programs(gen)
    assert (again.resumed, again.reclipped, sum(again.statuses.values())) == (3, 1, 1), again


def test_a_part_remake_builds_only_the_components_it_makes(kitchen, tmp_path, monkeypatch):
    """No model of a kept part is loaded (CLIP, the audio model): the run's components are those made again, none
    where only the clip text is; a run with a record to make whole builds them all."""
    from leap_cli.extract import runner

    built = []
    real = runner.build_components
    monkeypatch.setattr(runner, "build_components", lambda cfg: built.append(cfg.components) or real(cfg))
    out = tmp_path / "train.jsonl"
    with monkeypatch.context() as m:
        m.setitem(base.VERSIONS, "camera", 1)
        run_extract(_cfg(kitchen, out))
    saved = out.read_text()
    built.clear()
    run_extract(_cfg(kitchen, out))
    assert built == [("camera",)]
    monkeypatch.setitem(base.VERSIONS, "text", 2)
    built.clear()
    assert run_extract(_cfg(kitchen, out)).written == 4 and built == []
    out.write_text(saved.replace('"P01_01_2"', '"P01_01_2_gone"', 1))  # (its record lost: made whole)
    built.clear()
    run_extract(_cfg(kitchen, out))
    assert built == [ALL]
