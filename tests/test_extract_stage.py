"""The ``leap extract`` stage on a tiny generated data set: records, schema, truth, resume, failures."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from leap_cli.resources import resource_dir
from leap_cli.extract.runner import ExtractConfig, run_extract
from leap_cli.io import read_jsonl
from tests.extract_kitchen import CONTACT, SEGMENTS, build

SCHEMA = json.loads((resource_dir("schemas") / "descriptors.schema.json").read_text())


@pytest.fixture(scope="module")
def kitchen(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("kitchen") / "root")


def _cfg(kitchen, out, **kw):
    return ExtractConfig(data=kitchen, split=kw.pop("split", "train"), out=out, **kw)


def test_records_validate_and_match_truth(kitchen, tmp_path):
    out = tmp_path / "train.jsonl"
    s = run_extract(_cfg(kitchen, out))
    recs = {r["narration_id"]: r for r in read_jsonl(out)}
    assert s.written == 4 and set(recs) == {x[0] for x in SEGMENTS}
    for r in recs.values():
        jsonschema.validate(r, SCHEMA)
    truth = {x[0]: x for x in SEGMENTS}
    for nid in ("P01_01_0", "P01_01_1", "P01_01_2"):
        c = recs[nid]["components"]
        assert c["audio"]["data"]["dominant"] == truth[nid][-1]
        motions = [p["motion"] for p in c["camera"]["data"]["phases"] if p["motion"] != "still"]
        assert motions == ([] if truth[nid][-2] == "still" else [truth[nid][-2]])
    # the right hand holds the knife 0.4-1.6 s; the left hand scores 0.3, under the 0.5 threshold
    right = next(h for h in recs["P01_01_0"]["components"]["hands"]["data"]["hands"] if h["hand"] == "right")
    (c,) = right["contacts"]
    inter = min(c["stop"], CONTACT[1]) - max(c["start"], CONTACT[0])
    assert c["object"] == "knife" and inter / (max(c["stop"], CONTACT[1]) - min(c["start"], CONTACT[0])) >= 0.7
    objs = {o["label"] for o in recs["P01_01_0"]["components"]["objects"]["data"]["objects"]}
    assert objs == {"knife", "board"}
    # the clip text, ordered by time, names what is missing
    text = recs["P01_01_0"]["text"]
    assert "rhythmic chopping" in text and "right hand touches knife" in text and "holds still" in text
    # the second video has no media and no detections: recorded, and the run went on
    c = recs["P01_02_0"]["components"]
    assert c["audio"]["status"] == "unavailable" and c["camera"]["status"] == "error"
    assert "P01_02.MP4" in c["camera"]["data"]["error"]
    assert "\nAudio: unavailable (" in recs["P01_02_0"]["text"]
    assert s.counts["camera"] == {"ok": 3, "unavailable": 0, "error": 1}
    assert any(e.startswith("P01_02_0 camera") for e in s.errors)


def test_test_split_has_no_narration(kitchen, tmp_path):
    out = tmp_path / "test.jsonl"
    run_extract(_cfg(kitchen, out, split="test", components=("narration", "hands")))
    (r,) = read_jsonl(out)
    assert r["components"]["narration"]["status"] == "unavailable" and set(r["components"]) == {"narration", "hands"}
    assert "\nNarration: unavailable (" in r["text"]


def test_resume_skips_finished_and_drops_a_truncated_line(kitchen, tmp_path):
    out = tmp_path / "train.jsonl"
    cfg = _cfg(kitchen, out, components=("narration", "hands"))

    class Stop(Exception):
        pass

    seen = []

    def interrupt_after_two(rec):
        seen.append(rec["narration_id"])
        if len(seen) == 2:
            raise KeyboardInterrupt

    s = run_extract(cfg, on_record=interrupt_after_two)
    assert s.interrupted and len(read_jsonl(out)) == 2
    with open(out, "a") as f:  # a crash in the middle of writing the third record
        f.write('{"narration_id": "P01_01_2", "video_id": "P01_')
    s = run_extract(cfg)
    recs = read_jsonl(out)
    assert s.done_before == 2 and s.written == 2
    assert sorted(r["narration_id"] for r in recs) == sorted(x[0] for x in SEGMENTS)
    s = run_extract(cfg)
    assert s.written == 0 and len(read_jsonl(out)) == 4


def test_unreadable_audio_and_bad_detection_file_are_recorded_then_retried(kitchen, tmp_path):
    import shutil

    root = tmp_path / "k"
    shutil.copytree(kitchen, root)
    wav = root / "P01" / "audio" / "P01_01.wav"
    good_wav = wav.read_bytes()
    wav.write_bytes(b"RIFF not really a wav")
    dets = root / "object-detections" / "P01" / "P01_01.jsonl"
    good_dets = dets.read_text()
    dets.write_text("frame,label\n1,knife\n")
    out = tmp_path / "train.jsonl"
    cfg = _cfg(root, out, components=("audio", "objects", "hands"))
    s = run_extract(cfg)
    recs = {r["narration_id"]: r for r in read_jsonl(out)}
    assert s.written == 4 and s.counts["audio"]["error"] == 3 and s.counts["objects"]["error"] == 3
    hands = recs["P01_01_0"]["components"]["hands"]
    assert hands["status"] == "ok" and "object_names_unavailable" in hands["data"]
    err = recs["P01_01_0"]["components"]["objects"]["data"]["error"]
    assert str(dets) in err and "expected one JSON object per line" in err
    assert "P01_01.wav" in recs["P01_01_0"]["components"]["audio"]["data"]["error"]
    wav.write_bytes(good_wav)
    dets.write_text(good_dets)
    assert run_extract(cfg).written == 0  # finished records are kept as they are ...
    s = run_extract(_cfg(root, out, components=("audio", "objects", "hands"), retry_errors=True))
    assert s.written == 3  # ... until --retry-errors redoes the failed ones
    recs = read_jsonl(out)
    assert len(recs) == 4 and sum(r["components"]["audio"]["status"] == "ok" for r in recs) == 3


def test_workers_give_the_same_records(kitchen, tmp_path):
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    comps = ("narration", "audio", "camera", "hands")
    run_extract(_cfg(kitchen, one, components=comps))
    run_extract(_cfg(kitchen, two, components=comps, workers=2))
    a = {r["narration_id"]: r for r in read_jsonl(one)}
    b = {r["narration_id"]: r for r in read_jsonl(two)}
    assert a == b


def test_cli_extract_writes_default_path_with_shard_suffix(kitchen, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from leap_cli.cli import app

    work = tmp_path / "work"
    res = CliRunner().invoke(app, ["extract", "--data", str(kitchen), "--split", "train", "--workdir", str(work),
                                   "--shard", "0/2", "--components", "narration,hands"])
    assert res.exit_code == 0, res.output
    out = work / "descriptors" / "train.shard0of2.jsonl"
    recs = read_jsonl(out)
    resolved = json.loads((work / "descriptors" / "train.shard0of2.config.json").read_text())
    assert resolved["shard"] == {"index": 0, "count": 2} and resolved["components"] == ["narration", "hands"]
    assert {r["video_id"] for r in recs} == {"P01_01"} and len(recs) == 3
    assert "hands" in res.output and "segments: 3" in res.output
    res = CliRunner().invoke(app, ["extract", "--data", str(kitchen), "--split", "train", "--workdir", str(work),
                                   "--components", "narration,smell"])
    assert res.exit_code != 0 and "smell" in str(res.exception or res.output)


def test_corrupt_video_is_recorded_per_segment_and_the_run_goes_on(kitchen, tmp_path):
    import shutil

    root = tmp_path / "k"
    shutil.copytree(kitchen, root)
    (root / "P01" / "videos" / "P01_01.MP4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    out = tmp_path / "train.jsonl"
    s = run_extract(_cfg(root, out, components=("camera", "audio")))
    recs = {r["narration_id"]: r for r in read_jsonl(out)}
    assert s.written == 4 and s.counts["camera"]["error"] == 4
    assert "P01_01.MP4" in recs["P01_01_0"]["components"]["camera"]["data"]["error"]
    assert recs["P01_01_0"]["components"]["audio"]["status"] == "ok"  # the WAV is still there


def test_each_video_is_opened_once_and_only_sampled_frames_are_decoded(kitchen, tmp_path, monkeypatch):
    import leap_cli.media.video as video

    opened, asked = [], []
    real = video.open_video

    def counting(layout, video_id, *a, **kw):
        opened.append(video_id)
        reader = real(layout, video_id, *a, **kw)
        read = reader.read_frames

        def read_frames(frames, *args, **kws):
            asked.append(list(frames))
            return read(frames, *args, **kws)

        reader.read_frames = read_frames
        return reader

    monkeypatch.setattr(video, "open_video", counting)
    run_extract(_cfg(kitchen, tmp_path / "t.jsonl", components=("camera",), camera_frames=5))
    assert opened == ["P01_01", "P01_02"]  # the second fails to open, once, and is recorded for its segment
    assert len(asked) == 3 and all(len(f) == 5 for f in asked)


def test_schema_rejects_malformed_records(kitchen, tmp_path):
    out = tmp_path / "t.jsonl"
    run_extract(_cfg(kitchen, out, components=("narration",)))
    good = read_jsonl(out)[0]
    jsonschema.validate(good, SCHEMA)
    bad_status = json.loads(json.dumps(good))
    bad_status["components"]["narration"]["status"] = "maybe"
    no_reason = json.loads(json.dumps(good))
    no_reason["components"]["narration"].update(status="unavailable", data={})
    unknown = json.loads(json.dumps(good))
    unknown["components"]["smell"] = good["components"]["narration"]
    for bad in (bad_status, no_reason, unknown, {k: v for k, v in good.items() if k != "text"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, SCHEMA)


def test_hand_object_file_in_the_wrong_format(kitchen, tmp_path):
    import shutil

    root = tmp_path / "k"
    shutil.copytree(kitchen, root)
    bad = root / "hand-objects" / "P01" / "P01_01.jsonl"
    bad.write_text('{"frame": 1, "left_hand": [0.1, 0.2]}\n')
    out = tmp_path / "t.jsonl"
    s = run_extract(_cfg(root, out, components=("hands",)))
    assert s.counts["hands"]["error"] == 3
    err = read_jsonl(out)[0]["components"]["hands"]["data"]["error"]
    assert str(bad) in err and "line 1" in err and "hand-object format" in err
