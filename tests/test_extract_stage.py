"""The ``leap extract`` stage on a tiny generated data set: records, schema, truth, resume, failures."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from leap_cli.errors import LeapError
from leap_cli.resources import resource_dir
from leap_cli.extract.runner import ExtractConfig, run_extract
from leap_cli.io import read_jsonl
from tests.extract_kitchen import CONTACT, FPS, SEGMENTS, build
from tests.csv_rows import edit_csv
from tests.procs import alive_after

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
    # (a missing video is an honest "unavailable", not an error; no local path reaches the clip text)
    c = recs["P01_02_0"]["components"]
    assert c["audio"]["status"] == "unavailable" and c["camera"]["status"] == "unavailable"
    assert c["camera"]["data"]["reason"] == "no video file or rgb_frames folder"
    assert c["audio"]["data"]["reason"] == "no audio file and no video file"
    # the file is at fault: --retry-errors redoes the segment once it is downloaded (also with --components audio,
    # where no camera record carried the cause)
    assert c["audio"]["data"]["cause"] == "video" and c["camera"]["data"]["cause"] == "video"
    assert "\nAudio: unavailable (" in recs["P01_02_0"]["text"] and str(kitchen) not in recs["P01_02_0"]["text"]
    assert s.counts["camera"] == {"ok": 3, "unavailable": 1, "error": 0}
    assert s.unavailable["camera: no video file or rgb_frames folder"] == 1 and s.outcome.failed == 0


def test_an_rgb_frames_video_without_an_audio_file_is_not_a_file_to_fix(kitchen, tmp_path):
    """EPIC's frames download has no sound: its audio was recorded as a missing file ("no audio file and no video
    file", cause video), so every run said its segments could be redone and --retry-errors redid them every time
    (QA, an EPIC layout of frames)."""
    import shutil

    root = tmp_path / "k"
    shutil.copytree(kitchen, root)
    (root / "P01" / "rgb_frames" / "P01_02").mkdir(parents=True)  # (P01_02 has no MP4; audio reads no frame)
    out = tmp_path / "train.jsonl"
    run_extract(_cfg(root, out, components=("audio",)))
    (rec,) = [r for r in read_jsonl(out) if r["narration_id"] == "P01_02_0"]
    data = rec["components"]["audio"]["data"]
    assert rec["components"]["audio"]["status"] == "unavailable" and data["cause"] == "no-audio-file", data
    jsonschema.validate(rec, SCHEMA)
    assert data["reason"] == "no audio file (the video is an rgb_frames folder, which has no sound)"
    assert run_extract(_cfg(root, out, components=("audio",))).retryable == 0
    assert run_extract(_cfg(root, out, components=("audio",), retry_errors=True)).written == 0
    # once its audio is placed there, a rerun says --retry-errors would describe it, and that does (QA: the fix
    # said --force, which changes nothing where the settings are the same)
    # (named .WAV, as some copies are: not found before, while an .MP4 or .mp4 was)
    shutil.copy(root / "P01" / "audio" / "P01_01.wav", root / "P01" / "audio" / "P01_02.WAV")
    assert run_extract(_cfg(root, out, components=("audio",))).retryable == 1
    assert run_extract(_cfg(root, out, components=("audio",), retry_errors=True)).written == 1
    (rec,) = [r for r in read_jsonl(out) if r["narration_id"] == "P01_02_0"]
    assert rec["components"]["audio"]["status"] == "ok"


def test_audio_that_nothing_held_is_redone_once_something_does(kitchen, tmp_path):
    """An MP4 without a sound track had no cause: once its WAV was placed (as the fix said) neither --retry-errors
    nor --force redid it; an rgb_frames video's audio was not redone once its MP4 (with a track) was downloaded
    (QA)."""
    import shutil

    from leap_cli.media.video import VideoReader
    from leap_cli.media.write import write_mp4

    root = tmp_path / "k"
    shutil.copytree(kitchen, root)
    with VideoReader(root / "P01" / "videos" / "P01_01.MP4") as r:
        frames = list(r.read_frames(list(range(1, r.num_frames + 1))))
    (root / "P01" / "rgb_frames" / "P01_02").mkdir(parents=True)
    mp4 = root / "P01" / "videos" / "P01_01.MP4"
    write_mp4(mp4, frames, FPS)  # no sound track
    wav = (root / "P01" / "audio" / "P01_01.wav").rename(tmp_path / "P01_01.wav")
    out = tmp_path / "train.jsonl"
    run_extract(_cfg(root, out, components=("audio",)))
    recs = {r["narration_id"]: r["components"]["audio"] for r in read_jsonl(out)}
    assert recs["P01_01_0"]["data"]["reason"] == "the video has no audio track"
    assert {nid: a["data"].get("cause") for nid, a in recs.items()} == {
        "P01_01_0": "no-audio-file", "P01_01_1": "no-audio-file", "P01_01_2": "no-audio-file",
        "P01_02_0": "no-audio-file"}
    assert "place its audio as P01_01.wav or .flac in " in recs["P01_01_0"]["data"]["detail"]
    assert run_extract(_cfg(root, out, components=("audio",), retry_errors=True)).written == 0
    lines = out.read_text().splitlines()  # one record as leap before 2026-12-04 wrote it: no cause
    old = json.loads(lines[0])
    del old["components"]["audio"]["data"]["cause"]
    out.write_text("\n".join([json.dumps(old)] + lines[1:]) + "\n")
    shutil.copy(wav, root / "P01" / "audio" / "P01_01.wav")
    write_mp4(root / "P01" / "videos" / "P01_02.MP4", frames, FPS, audio=np.zeros(16000 * 7, np.float32))
    assert run_extract(_cfg(root, out, components=("audio",))).retryable == 4
    assert run_extract(_cfg(root, out, components=("audio",), retry_errors=True)).written == 4
    assert {r["components"]["audio"]["status"] for r in read_jsonl(out)} == {"ok"}


def test_components_made_without_published_files_are_redone_once_they_are_placed(kitchen, tmp_path):
    """Was wrong (QA: EPIC's hand-object boxes and poses are downloads of their own, often fetched after a first
    extract): the hands without hand-object boxes, the objects without detection files (or from the unlabelled
    boxes, labelled ones placed since) and the camera by odometry for want of poses were not redone by
    --retry-errors, nor noted by a rerun, nor by --force (the same settings): only deleting the output did."""
    import shutil

    root = tmp_path / "k"
    shutil.copytree(kitchen, root)
    hand = root / "hand-objects" / "P01" / "P01_01.jsonl"
    det = root / "object-detections" / "P01" / "P01_01.jsonl"
    hand.rename(tmp_path / "hand.jsonl")
    det.rename(tmp_path / "det.jsonl")
    out = tmp_path / "train.jsonl"
    comps = ("hands", "objects", "camera")

    def run(**kw):
        return run_extract(_cfg(root, out, components=comps, **kw))

    def p01_01(name):
        return {r["narration_id"]: r["components"][name] for r in read_jsonl(out) if r["video_id"] == "P01_01"}

    run()
    assert {c["status"] for c in p01_01("hands").values()} == {"unavailable"}
    assert {c["data"].get("poses_skipped") for c in p01_01("camera").values()} == {"no poses for this video"}
    assert run().retryable == 1  # (P01_02's missing video, as before) nothing placed: nothing new to redo
    shutil.copy(tmp_path / "hand.jsonl", hand)
    assert run().retryable == 4 and run(retry_errors=True).written == 4
    assert {c["status"] for c in p01_01("hands").values()} == {"ok"}
    assert {c["source"].split(":")[0] for c in p01_01("objects").values()} == {"hand-objects"}
    assert run().retryable == 1
    shutil.copy(tmp_path / "det.jsonl", det)  # labelled boxes for the objects
    assert run().retryable == 4 and run(retry_errors=True).written == 4
    assert {c["source"].split(":")[0] for c in p01_01("objects").values()} == {"object-detections"}
    poses = root / "poses" / "P01_01.json"  # EPIC Fields, every frame registered, a still camera
    poses.parent.mkdir()
    poses.write_text(json.dumps({"camera": {"model": "OPENCV", "width": 192, "height": 144,
                                            "params": [96.0, 96.0, 96.0, 72.0, 0.0, 0.0, 0.0, 0.0]},
                                 "images": {f"frame_{n:010d}.jpg": [1.0, 0.0, 0.0, 0.0, 0.01 * n, 0.0, 0.0]
                                            for n in range(1, 301)}, "points": []}))
    assert run().retryable == 4 and run(retry_errors=True).written == 4
    assert {c["status"] for c in p01_01("camera").values()} == {"ok"}
    assert not any(c["source"].startswith("orb-vo") for c in p01_01("camera").values()), p01_01("camera")
    assert run().retryable == 1


def test_a_typo_in_a_rows_video_id_is_suggested(kitchen, tmp_path):
    """A row's video_id P01_1 for P01_01: "no video file" alone; the narration id names the video that is there
    (QA; the hint was only in open_video, which extract called without the narration id)."""
    import shutil

    root = tmp_path / "k"
    shutil.copytree(kitchen, root)
    rows = edit_csv(root / "annotations" / "EPIC_100_train.csv", lambda rows: rows[2].update(video_id="P01_1"))
    out = tmp_path / "train.jsonl"
    run_extract(_cfg(root, out, components=("camera",)))
    (rec,) = [r for r in read_jsonl(out) if r["narration_id"] == rows[2]["narration_id"]]
    detail = rec["components"]["camera"]["data"]["detail"]
    assert detail.endswith(f"the narration id {rows[2]['narration_id']} names video P01_01, which is there: a typo "
                           "in the row's video_id?)"), detail


@pytest.mark.parametrize("fps", ["fifty", "nan", "0", "-50", "inf"])
def test_a_damaged_video_info_row_stops_extract_before_any_work(kitchen, tmp_path, caplog, fps):
    """A row of EPIC_100_video_info.csv that cannot be parsed: extract warned "no fps for P01_01 in the video info"
    of every video and recorded the rgb_frames videos unavailable (QA); it is one line naming the row, as in
    build-shards and leap info, before anything is written. So is an fps that parses but is no rate (nan: a
    traceback after writing; 0: "video_info gives 50" of a row that says 0)."""
    import shutil

    root = tmp_path / "k"
    shutil.copytree(kitchen, root)
    edit_csv(root / "annotations" / "EPIC_100_video_info.csv", lambda rows: rows[-1].update(fps=fps))
    out = tmp_path / "train.jsonl"
    with caplog.at_level("WARNING"), pytest.raises(LeapError, match=r"no positive duration/fps/resolution for "
                                                                    rf"'P0\d_\d\d'.*'{fps}'") as e:
        run_extract(_cfg(root, out, components=("camera",)))
    assert e.value.path.endswith("EPIC_100_video_info.csv") and e.value.record.startswith("row ")
    assert not out.exists() and "no fps for" not in caplog.text


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
    # a damaged audio file is unavailable, as a damaged video is for the camera (it was an error, so one file
    # was a failure for audio and not for the camera), with the file's cause: --retry-errors redoes it
    assert s.written == 4 and s.counts["audio"]["unavailable"] == 4 and s.counts["objects"]["error"] == 3
    audio = recs["P01_01_0"]["components"]["audio"]["data"]
    assert audio["cause"] == "video" and "the audio file cannot be read" in audio["reason"]
    hands = recs["P01_01_0"]["components"]["hands"]
    assert hands["status"] == "ok" and "object_names_unavailable" in hands["data"]
    # The clip text and data["error"] carry the cause without local paths; data["detail"] names the file.
    data = recs["P01_01_0"]["components"]["objects"]["data"]
    assert str(dets) in data["detail"] and "not a frame of labelled detections" in data["error"]
    assert "P01_01.wav" in recs["P01_01_0"]["components"]["audio"]["data"]["detail"]
    assert str(root) not in recs["P01_01_0"]["text"] and str(root) not in data["error"]
    assert s.outcome.failed == 3 and s.outcome.attempted == 4
    for r in recs.values():
        jsonschema.validate(r, SCHEMA)
    wav.write_bytes(good_wav)
    dets.write_text(good_dets)
    # the records whose audio file was replaced (another size) are made again, as a replaced MP4's are ...
    s = run_extract(cfg)
    assert s.written == 3 and s.replaced == 3 and s.replaced_example.startswith(f"{wav}: size")
    s = run_extract(_cfg(root, out, components=("audio", "objects", "hands"), retry_errors=True))
    # ... and --retry-errors redoes the segment whose video is still missing (its audio has the video's cause: once
    # downloaded, it is read)
    assert s.written == 1
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


def read_segments_of(kitchen):
    from leap_cli.epic.layout import DatasetLayout

    return DatasetLayout.open(kitchen).annotations().segments("train")


def test_a_second_run_cannot_rewrite_the_settings_before_the_first_record(kitchen, tmp_path, monkeypatch):
    """The output's lock was dropped after its settings were checked and taken again by the writer: a second run
    with other settings, started meanwhile (while the first read the annotations), found no record yet and wrote
    its own settings; both runs' records then mixed in one file under the second run's settings, and the first
    run's resume was refused (its advice, --force, deleted the finished work)."""
    from typer.testing import CliRunner

    import leap_cli.extract.runner as runner
    from leap_cli.cli import app
    from leap_cli.errors import LeapError
    from leap_cli.io import check_settings, stored_settings

    out = tmp_path / "train.jsonl"
    real, seen = runner.run_extract, []

    def meanwhile(cfg, **kw):  # another run's settings check, between this run's and its first record
        try:
            check_settings(cfg.out, {"hand_threshold": 0.9})
        except LeapError as e:
            seen.append(str(e))
        return real(cfg, **kw)

    monkeypatch.setattr(runner, "run_extract", meanwhile)
    monkeypatch.chdir(tmp_path)  # (the default work directory, ./leap-work, takes the frame cache: not the checkout)
    res = CliRunner().invoke(app, ["extract", "--data", str(kitchen), "--split", "train", "--out", str(out),
                                   "--components", "narration", "--limit", "2"])
    assert res.exit_code == 0, res.output
    assert len(seen) == 1 and "another leap process is writing this file" in seen[0]
    assert stored_settings(out) != {"hand_threshold": 0.9}  # this run's settings, kept
    assert len(read_jsonl(out)) == 2


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
    # a part of another count beside them: merged with cat, the two sets would hold segments twice
    res = CliRunner().invoke(app, ["extract", "--data", str(kitchen), "--split", "train", "--workdir", str(work),
                                   "--shard", "0/3", "--components", "narration,hands"])
    assert "parts of --shard i/2 are beside it, and this run is --shard 0/3" in str(res.exception), res.output
    assert not (work / "descriptors" / "train.shard0of3.jsonl").exists()
    videos = {s.video_id for s in read_segments_of(kitchen)}
    res = CliRunner().invoke(app, ["extract", "--data", str(kitchen), "--split", "train", "--workdir",
                                   str(tmp_path / "other"), "--shard", f"{len(videos)}/{len(videos) + 1}",
                                   "--components", "narration"])
    assert res.exit_code == 0 and "holds no segment of the train split" in " ".join(res.output.split()), res.output
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
    assert s.written == 4 and s.counts["camera"]["unavailable"] == 4
    cam = recs["P01_01_0"]["components"]["camera"]
    assert cam["data"]["reason"] == "the video cannot be opened (truncated or not a video file)"
    assert "P01_01.MP4" not in recs["P01_01_0"]["text"]
    assert recs["P01_01_0"]["components"]["audio"]["status"] == "ok"  # the WAV is still there


def test_each_video_is_opened_once_and_only_sampled_frames_are_decoded(kitchen, tmp_path, monkeypatch):
    import leap_cli.media.video as video

    opened, asked = [], []
    real = video.open_video

    def counting(layout, video_id, *a, **kw):
        opened.append(video_id)
        reader = real(layout, video_id, *a, **kw)
        decode = reader.decode

        def counted(frames, *args, **kws):
            asked.append(sorted(set(frames)))
            return decode(frames, *args, **kws)

        reader.decode = counted
        return reader

    monkeypatch.setattr(video, "open_video", counting)
    run_extract(_cfg(kitchen, tmp_path / "t.jsonl", components=("camera",), camera_frames=5))
    assert opened == ["P01_01", "P01_02"]  # the second fails to open, once, and is recorded for its segment
    assert len(asked) == 3 and all(len(f) == 5 for f in asked)
    # With the frame cache, the camera's frames and build-shards' 16 frames come from ONE decode per segment.
    asked.clear()
    run_extract(_cfg(kitchen, tmp_path / "c.jsonl", components=("camera",), camera_frames=5,
                     frame_cache=tmp_path / "cache"))
    assert len(asked) == 3 and all(len(f) > 16 for f in asked)
    assert len(list((tmp_path / "cache" / "P01_01").glob("*.jpgs"))) == 3


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
    err = read_jsonl(out)[0]["components"]["hands"]["data"]["detail"]  # the full line; "error" is path-free
    assert str(bad) in err and "line 1" in err and "hand-object format" in err


def _short_copy(kitchen, root, seconds: float, **kw):
    """The kitchen with P01_01.MP4 cut to its first ``seconds`` (video_info still says 6 s)."""
    import shutil

    from leap_cli.media.video import VideoReader
    from leap_cli.media.write import write_mp4

    shutil.copytree(kitchen, root)
    mp4 = root / "P01" / "videos" / "P01_01.MP4"
    with VideoReader(mp4) as r:
        frames = r.read_frames(list(range(1, int(seconds * FPS) + 1)))
    write_mp4(mp4, list(frames), FPS, **kw)
    return mp4


def test_a_copy_encoded_at_another_rate_than_video_info_says_is_left_out(kitchen, tmp_path, caplog):
    """A video re-encoded at 25 fps (video_info: the original's rate) was read by the original's frame numbers:
    build-shards stored other moments under the segment's labels, extract called the whole file cut short."""
    import shutil

    from leap_cli.epic.info import check_lengths
    from leap_cli.epic.layout import DatasetLayout
    from leap_cli.media.video import VideoReader
    from leap_cli.media.write import write_mp4

    root = tmp_path / "k"
    shutil.copytree(kitchen, root)
    mp4 = root / "P01" / "videos" / "P01_01.MP4"
    with VideoReader(mp4) as r:
        frames = r.read_frames(list(range(1, r.num_frames + 1, 2)))
    write_mp4(mp4, list(frames), FPS / 2)  # the same 6 s at half the rate
    out = tmp_path / "t.jsonl"
    with caplog.at_level("WARNING"):  # said as a warning, once, even where no component reads its frames
        run_extract(_cfg(root, tmp_path / "hands.jsonl", components=("hands",), frame_cache=tmp_path / "fc"))
    assert [r.getMessage().count("the file runs at") for r in caplog.records] == [1], caplog.text
    run_extract(_cfg(root, out, components=("camera",)))
    for r in read_jsonl(out):
        cam = r["components"]["camera"]
        if r["video_id"] == "P01_01":
            assert cam["status"] == "unavailable" and cam["data"]["cause"] == "video", cam
            assert f"the file runs at {FPS / 2:.2f} fps, EPIC_100_video_info.csv gives {FPS:g}" in cam["data"]["reason"]
        else:  # (the other video is read as before)
            assert "fps" not in json.dumps(cam)
    assert sum(r["video_id"] == "P01_01" for r in read_jsonl(out)) == 3
    bad = check_lengths(DatasetLayout.open(root), ["P01_01", "P01_02"])
    assert [b.video_id for b in bad] == ["P01_01"] and f"runs at {FPS / 2:.2f} fps" in bad[0].note
    # frames an earlier leap cached of it (it had no such check) are not packed into shards either
    import leap_cli.media.video as video
    from leap_cli.shards.writer import LayoutOpener, ShardSettings, build_shards
    from leap_cli.extract.cache import FrameCache

    cache = tmp_path / "frame-cache"
    with pytest.MonkeyPatch.context() as m:
        m.setattr(video, "FPS_TOLERANCE", 10.0)
        run_extract(_cfg(root, tmp_path / "old.jsonl", components=("camera",), frame_cache=cache, cache_frames=4,
                         cache_short_side=64))
    assert list((cache / "P01_01").glob("*.jpgs"))
    layout = DatasetLayout.open(root)
    ann = layout.annotations()
    r = build_shards(ann.segments("train"), out=tmp_path / "shards", settings=ShardSettings("train", frames=4,
                     short_side=64), fps=ann.fps, cache=FrameCache(cache, 4, 64, 90),
                     opener=LayoutOpener(layout.root, layout.annotations_dir, {"P01_01": FPS}))  # (as build_split)
    skipped = {x["narration_id"]: x["reason"] for x in r.manifest["skipped"]}
    assert {n for n in skipped if n.startswith("P01_01")} == {"P01_01_0", "P01_01_1", "P01_01_2"}
    assert all("fps" in skipped[n] for n in skipped if n.startswith("P01_01"))


def test_segments_past_the_end_of_a_short_video_are_unavailable_not_invented(kitchen, tmp_path):
    _short_copy(kitchen, tmp_path / "k", 2.4)  # 2.4 s of frames: segment 0 (0-2 s) fits, 1 (2-4 s) and 2 (4-6 s) do not
    out = tmp_path / "train.jsonl"
    s = run_extract(_cfg(tmp_path / "k", out, components=("camera", "hands"), frame_cache=tmp_path / "cache"))
    recs = {r["narration_id"]: r for r in read_jsonl(out)}
    assert recs["P01_01_0"]["components"]["camera"]["status"] == "ok"
    for nid, late in (("P01_01_1", 1.6), ("P01_01_2", 3.6)):
        cam = recs[nid]["components"]["camera"]
        assert cam["status"] == "unavailable", cam  # never "holds still" read from a clamped last frame
        assert cam["data"]["reason"] == (f"the window ends {late:.2f} s after the decodable end of the video "
                                         f"(2.40 s, {round(2.4 * FPS)} frames); EPIC_100_video_info.csv gives "
                                         "6.00 s: the file is cut short (download it again)")
        assert "after the decodable end" in recs[nid]["text"]
        # the file is shorter than video_info says (a truncated download): --retry-errors redoes it once replaced
        assert cam["data"]["cause"] == "video"
        assert recs[nid]["components"]["hands"]["status"] == "ok"  # EPIC's published detections do not need it
    assert s.counts["camera"] == {"ok": 1, "unavailable": 3, "error": 0}
    assert sum(n for k, n in s.unavailable.items() if "after the decodable end" in k) == 2
    # one reason for both (their numbers differ), shown with the first segment's numbers
    (key,) = [k for k in s.unavailable if "after the decodable end" in k]
    assert "ends N s after" in key and "EPIC_100_video_info.csv gives N s" in key
    assert s.unavailable_first[key].startswith("camera: the window ends 1.60 s after")
    assert s.outcome.failed == 0  # unavailable is honest, not a failure
    cached = {p.name.split(".")[0] for p in (tmp_path / "cache" / "P01_01").glob("*.jpgs")}
    assert cached == {"P01_01_0"}  # no cache entry is invented either
    # downloaded again: the video's records are made again (made from a file whose size differs now), and
    # --retry-errors redoes P01_02_0 too (no video at all)
    import shutil

    shutil.copy(kitchen / "P01" / "videos" / "P01_01.MP4", tmp_path / "k" / "P01" / "videos" / "P01_01.MP4")
    s = run_extract(_cfg(tmp_path / "k", out, components=("camera", "hands"), frame_cache=tmp_path / "cache",
                         retry_errors=True))
    after = {r["narration_id"]: r for r in read_jsonl(out)}
    assert s.written == 4 and s.replaced == 3
    assert all(after[n]["components"]["camera"]["status"] == "ok" for n in ("P01_01_1", "P01_01_2"))


def test_audio_past_the_end_of_a_cut_video_is_unavailable_not_invented(kitchen, tmp_path):
    """An MP4 cut short (its own audio track the only audio): the segments past its end were "ok" with "no audio
    in the segment", and one across the end "scraping 0.0-0.5 s" for a 2-s clip, while the camera said the file
    was cut short."""
    import soundfile as sf

    wav = kitchen / "P01" / "audio" / "P01_01.wav"
    sound, rate = sf.read(wav, dtype="float32")
    _short_copy(kitchen, tmp_path / "k", 2.4, audio=sound[: int(2.4 * rate)], audio_rate=rate)
    (tmp_path / "k" / "P01" / "audio" / "P01_01.wav").unlink()  # the MP4's own track is read
    out = tmp_path / "train.jsonl"
    s = run_extract(_cfg(tmp_path / "k", out, components=("audio",)))
    audio = {r["narration_id"]: r["components"]["audio"] for r in read_jsonl(out)}
    assert audio["P01_01_0"]["status"] == "ok"  # 0-2 s: inside the 2.4 s
    for nid in ("P01_01_1", "P01_01_2"):  # 2-4 s across the end, 4-6 s past it
        assert audio[nid]["status"] == "unavailable", audio[nid]
        assert "the file is cut short" in audio[nid]["data"]["reason"] and audio[nid]["data"]["cause"] == "video"
    assert s.outcome.failed == 0


def test_a_window_past_the_end_of_a_whole_video_is_not_the_files_fault(kitchen, tmp_path):
    """A segment annotated past the end of a video as long as EPIC_100_video_info.csv says: no new copy helps, so
    --retry-errors leaves it (no cause)."""
    import shutil

    root = tmp_path / "k"
    shutil.copytree(kitchen, root)

    def past_the_end(rows):  # (the video's last segment: past the 6-s video)
        max((r for r in rows if r["video_id"] == "P01_01"), key=lambda r: float(r["stop_frame"])).update(
            stop_timestamp="00:00:07.00")

    rows = edit_csv(root / "annotations" / "EPIC_100_train.csv", past_the_end)
    (last,) = [r for r in rows if r["stop_timestamp"] == "00:00:07.00"]
    out = tmp_path / "train.jsonl"
    run_extract(_cfg(root, out, components=("camera",)))
    cam = {r["narration_id"]: r for r in read_jsonl(out)}[last["narration_id"]]["components"]["camera"]
    assert cam["status"] == "unavailable" and "after the decodable end" in cam["data"]["reason"]
    assert "cause" not in cam["data"] and "cut short" not in cam["data"]["reason"]


def test_truncated_mp4_files_are_unavailable_and_ffmpeg_stays_quiet(kitchen, tmp_path):
    import subprocess
    import sys

    import os

    root = tmp_path / "k"
    mp4 = _short_copy(kitchen, root, 6.0)
    data = mp4.read_bytes()
    mp4.write_bytes(data[: len(data) // 2])  # the moov atom (at the end) is gone: "moov atom not found"
    code = ("import sys; from pathlib import Path; from leap_cli.extract.runner import ExtractConfig, run_extract;"
            f"s = run_extract(ExtractConfig(data=Path({str(root)!r}), split='train', "
            f"out=Path({str(tmp_path / 't.jsonl')!r}), components=('camera',))); print(dict(s.unavailable))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCV_")}  # what leap sets, it sets itself
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    assert "moov atom" not in res.stderr + res.stdout and "WARN" not in res.stderr
    assert "'camera: the video cannot be opened (truncated or not a video file)': 3" in res.stdout
    # moov first ("faststart"), data cut: the file opens and announces 6 s of frames, then decoding stops early
    mp4 = root / "P01" / "videos" / "P01_01.MP4"
    mp4.unlink()
    _short_copy(kitchen, tmp_path / "k2", 6.0, container_options={"movflags": "faststart"})
    mp4 = tmp_path / "k2" / "P01" / "videos" / "P01_01.MP4"
    data = mp4.read_bytes()
    mp4.write_bytes(data[: int(len(data) * 0.6)])
    out = tmp_path / "t2.jsonl"
    run_extract(_cfg(tmp_path / "k2", out, components=("camera",)))
    cams = [r["components"]["camera"] for r in read_jsonl(out) if r["video_id"] == "P01_01"]
    assert cams[0]["status"] == "ok" and cams[-1]["status"] == "unavailable", cams
    assert "the video ends or is corrupt at frame" in cams[-1]["data"]["reason"]
    late = [r["narration_id"] for r in read_jsonl(out) if r["video_id"] == "P01_01"][-1]
    assert f"[{late}]" in cams[-1]["data"]["detail"], cams[-1]  # its own segment (it named the video's first)


def test_retry_errors_redoes_the_segments_of_a_truncated_video_once_it_is_replaced(kitchen, tmp_path):
    """A partial download: the frame-reading components are unavailable because of the file; after the file
    is downloaded again, a rerun makes the video's records again (its size differs: session 65), and --retry-errors
    redoes exactly the other segments unavailable because of a file (not those unavailable for other causes)."""
    root = tmp_path / "k"
    mp4 = _short_copy(kitchen, root, 6.0, container_options={"movflags": "faststart"})
    good = mp4.read_bytes()
    mp4.write_bytes(good[: int(len(good) * 0.6)])
    out = tmp_path / "train.jsonl"
    run_extract(_cfg(root, out, components=("camera", "hands")))
    before = {r["narration_id"]: r for r in read_jsonl(out)}
    bad = {n for n, r in before.items() if r["components"]["camera"]["status"] == "unavailable"}
    assert "P01_01_2" in bad and "P01_01_0" not in bad
    assert before["P01_01_2"]["components"]["camera"]["data"]["cause"] == "video"
    assert "cause" not in before["P01_02_0"]["components"]["hands"]["data"]  # no detections: no file changes that
    for r in before.values():
        jsonschema.validate(r, SCHEMA)
    mp4.write_bytes(good)  # downloaded again
    # a plain rerun: makes P01_01's records again, and says what --retry-errors could redo (P01_02_0: no video)
    again = run_extract(_cfg(root, out, components=("camera", "hands")))
    assert again.written == again.replaced == 3 and again.retryable == len(bad - {"P01_01_1", "P01_01_2"}) == 1
    assert run_extract(_cfg(root, out, components=("camera", "hands"), limit=1)).retryable == 0  # P01_01_0 is fine
    hands_only = tmp_path / "hands.jsonl"
    run_extract(_cfg(root, hands_only, components=("hands",)))
    assert run_extract(_cfg(root, hands_only, components=("hands",), retry_errors=True)).written == 0
    s = run_extract(_cfg(root, out, components=("camera", "hands"), retry_errors=True))
    assert s.written == 1  # P01_02 has no video at all: its segment is tried again too
    after = {r["narration_id"]: r for r in read_jsonl(out)}
    assert after["P01_01_0"]["components"] == before["P01_01_0"]["components"]  # (its frames lay before the cut)
    assert all(after[n]["components"]["camera"]["status"] == "ok" for n in bad if n.startswith("P01_01"))


def test_exit_status_when_every_record_failed(kitchen, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from leap_cli.cli import app

    root = tmp_path / "k"
    shutil.copytree(kitchen, root)
    (root / "object-detections" / "P01" / "P01_01.jsonl").write_text("frame,label\n1,knife\n")
    base = ["extract", "--data", str(root), "--split", "train", "--components", "objects", "--frame-cache", "none"]

    def run(*extra, out):
        return CliRunner().invoke(app, base + ["--out", str(tmp_path / out), *extra])

    res = run("--limit", "3", out="a.jsonl")  # the three P01_01 segments: every one fails
    assert res.exit_code == 3, res.output
    assert "all 3 records failed" in res.output and "3 x objects: " in res.output
    res = run(out="b.jsonl")  # P01_02_0 has no detections at all: unavailable, not failed -> a partial failure
    assert res.exit_code == 0, res.output
    assert "3 of 4 records failed" in res.output
    assert run("--strict", out="c.jsonl").exit_code == 3


def test_cli_writes_the_frame_cache_by_default_and_none_turns_it_off(kitchen, tmp_path):
    """`leap extract` without --frame-cache fills WORKDIR/frame-cache (what build-shards reads by default);
    `--frame-cache none` writes none. (The option's unset value was once read as 'none'.)"""
    from typer.testing import CliRunner

    from leap_cli.cli import app

    def run(workdir, *extra):
        res = CliRunner().invoke(app, ["extract", "--data", str(kitchen), "--split", "train", "--components",
                                       "camera", "--limit", "2", "--workdir", str(workdir), *extra])
        assert res.exit_code == 0, res.output
        return workdir / "frame-cache"

    cached = sorted(p.name for p in run(tmp_path / "w1").rglob("*.jpgs"))
    assert len(cached) == 2 and all(".v3." in n for n in cached), cached
    assert not run(tmp_path / "w2", "--frame-cache", "none").exists()
    assert not run(tmp_path / "w3", "--frame-cache", str(tmp_path / "c")).exists()
    assert len(list((tmp_path / "c").rglob("*.jpgs"))) == 2


def test_workers_return_per_segment_so_an_interrupt_keeps_finished_segments(kitchen, tmp_path):
    out = tmp_path / "t.jsonl"
    seen = []

    def stop_after_one(rec):
        seen.append(rec["narration_id"])
        raise KeyboardInterrupt

    s = run_extract(_cfg(kitchen, out, components=("narration", "camera"), workers=2), on_record=stop_after_one)
    assert s.interrupted and len(read_jsonl(out)) == 1 == len(seen)
    s = run_extract(_cfg(kitchen, out, components=("narration", "camera"), workers=2))
    assert s.done_before == 1 and s.written == 3


def test_workers_die_with_a_killed_parent(kitchen, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    slow = ("import time, leap_cli.extract.narration as n\n"
            "real = n.NarrationComponent.describe\n"
            "def describe(self, ctx):\n    time.sleep(30)\n    return real(self, ctx)\n"
            "n.NarrationComponent.describe = describe\n")
    (tmp_path / "sitecustomize.py").write_text(slow)  # workers are spawned: they load it too
    code = ("from pathlib import Path; from leap_cli.extract.runner import ExtractConfig, run_extract;"
            f"run_extract(ExtractConfig(data=Path({str(kitchen)!r}), split='train', "
            f"out=Path({str(tmp_path / 't.jsonl')!r}), components=('narration',), workers=2))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()])}
    parent = subprocess.Popen([sys.executable, "-c", code], env=env)

    def children():
        out = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    stat = open(f"/proc/{d}/stat").read()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == parent.pid:
                    out.append(int(d))
        return out

    try:
        deadline = time.time() + 60
        while len(children()) < 2 and time.time() < deadline:
            time.sleep(0.2)
        workers = children()
        assert len(workers) >= 2
        time.sleep(3)  # the workers are inside a segment (spawned, initialised)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        alive = alive_after(workers)
        assert not alive, f"workers {alive} outlived their parent"
    finally:
        if parent.poll() is None:
            parent.kill()


def test_build_split_says_when_the_frame_cache_holds_other_settings(kitchen, tmp_path):
    """A cache made for other shards is not silently ignored: the summary says every sample is decoded and which
    extract options would share the decode; a matching cache is read."""
    import shutil

    from leap_cli.shards.writer import ShardSettings, build_split

    root = tmp_path / "k"
    shutil.copytree(kitchen, root)
    for name in ("EPIC_100_verb_classes.csv", "EPIC_100_noun_classes.csv"):  # build-shards reads the classes
        shutil.copy(Path(__file__).parent / "data" / "epic100" / name, root / "annotations" / name)
    kitchen = root
    cache = tmp_path / "frame-cache"

    def notes(side, quality=90, frames=16):
        settings = ShardSettings("train", frames=frames, short_side=side, jpeg_quality=quality)
        r = build_split(kitchen, "train", workdir=tmp_path, settings=settings,
                        out=tmp_path / f"s{side}q{quality}f{frames}", frame_cache=cache)
        return " | ".join(r.notes)

    cache.mkdir()  # empty (extract decoded nothing: every video unreadable): its settings are not the cause
    empty = notes(64)
    assert "holds no frames at all" in empty and "--cache-short-side" not in empty, empty
    run_extract(_cfg(kitchen, tmp_path / "d.jsonl", components=("camera",), frame_cache=cache, limit=2))
    other = notes(96)  # (a new folder: 64's was built above, and a build of nothing says nothing of the cache)
    assert "holds no frames at these shards' settings" in other and "--cache-short-side 96" in other, other
    assert "build with --jpeg-quality 90" in notes(256, 80)
    same = notes(256)
    assert "frames read from extract's frame cache" in same and "holds no frames" not in same, same
    assert "another source" not in same, same
    # built again with nothing to do: no frame was read, and it said it read them and built the vocabulary
    again = notes(256)
    assert "the 1 shard was built before with these settings and inputs" in again, again
    assert "frames read from" not in again and "vocabulary built from" not in again, again
    again = notes(64)  # (nor that every sample is decoded, where none was)
    assert "was built before" in again and "every sample is decoded" not in again, again
    # a cache of another split's segments only: it said it read frames from it (build-shards --split test, never
    # extracted, beside train's cache)
    other_split = tmp_path / "other-cache"
    entry = next(cache.glob("*/*.jpgs"))
    (other_split / "P99_01").mkdir(parents=True)
    shutil.copy(entry, other_split / "P99_01" / entry.name.replace(entry.parent.name, "P99_01"))
    settings = ShardSettings("train", frames=16, short_side=256, jpeg_quality=90)
    r = build_split(kitchen, "train", workdir=tmp_path, settings=settings, out=tmp_path / "s-other",
                    frame_cache=other_split)
    said = " | ".join(r.notes)
    assert "holds no frames of the train split: every sample is decoded" in said and "frames read from" not in said
    # the entries' names do not say how many frames they hold: at --frames 8 it said it read them, and decoded all
    eight = notes(256, frames=8)
    assert "holds 16 frames per segment, these shards take 8" in eight and "--cache-frames 8" in eight, eight


def test_build_shards_reuses_extracts_decode_and_writes_the_same_bytes(kitchen, tmp_path, monkeypatch):
    import leap_cli.media.video as video
    from leap_cli.epic.layout import DatasetLayout
    from leap_cli.extract.cache import FrameCache
    from leap_cli.shards.writer import LayoutOpener, ShardSettings, build_shards

    cache = tmp_path / "frame-cache"
    run_extract(_cfg(kitchen, tmp_path / "d.jsonl", components=("camera",), frame_cache=cache))
    settings = ShardSettings("train", frames=16, short_side=64)
    assert not list(cache.rglob("*.s64q90.jpgs"))  # extract cached at its own settings (256): not these
    run_extract(_cfg(kitchen, tmp_path / "d64.jsonl", components=("camera",), frame_cache=cache,
                     cache_short_side=64))
    opened = []
    real = video.open_video
    monkeypatch.setattr(video, "open_video", lambda *a, **kw: opened.append(a[1]) or real(*a, **kw))
    layout = DatasetLayout.open(kitchen)
    ann = layout.annotations()

    def build(out, frame_cache):
        return build_shards(ann.segments("train"), out=out, settings=settings, fps=ann.fps,
                            opener=LayoutOpener(layout.root, layout.annotations_dir), cache=frame_cache)

    reads = []
    monkeypatch.setattr(video.VideoReader, "read_frames",
                        lambda self, *a, _real=video.VideoReader.read_frames, **kw: reads.append(1) or _real(self, *a, **kw))
    cached = build(tmp_path / "w1", FrameCache(cache, 16, 64, 90))
    # P01_01 is opened (its header: a video the stages leave out is not packed from cached frames), not decoded;
    # P01_02 has no video: skipped
    assert opened == ["P01_01", "P01_02"] and not reads and cached.manifest["counts"]["samples"] == 3
    decoded = build(tmp_path / "w2", None)
    assert opened == ["P01_01", "P01_02", "P01_01", "P01_02"] and reads
    for a, b in zip(sorted((tmp_path / "w1").rglob("*.tar")), sorted((tmp_path / "w2").rglob("*.tar"))):
        assert a.read_bytes() == b.read_bytes()
    assert decoded.manifest["shards"] == cached.manifest["shards"]
    # an entry changed on disk (its length kept) was copied into the shards, failed check-shards, and a rebuild
    # copied it again: its CRC no longer matches, so that segment is decoded instead
    entry = sorted(cache.rglob("*.s64q90.jpgs"))[0]
    blob = bytearray(entry.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    entry.write_bytes(bytes(blob))
    rebuilt = build(tmp_path / "w3", FrameCache(cache, 16, 64, 90))
    assert sorted(opened[-2:]) == ["P01_01", "P01_02"] and rebuilt.manifest["shards"] == cached.manifest["shards"]
    for a, b in zip(sorted((tmp_path / "w3").rglob("*.tar")), sorted((tmp_path / "w2").rglob("*.tar"))):
        assert a.read_bytes() == b.read_bytes()
    # an entry of an earlier leap (no CRC trailer) is still read
    from leap_cli.extract.cache import MAGIC, TRAILER, _COUNT, _ENTRY

    other = sorted(cache.rglob("*.s64q90.jpgs"))[1]
    blob = other.read_bytes()
    assert blob[-8:-4] == TRAILER
    other.write_bytes(blob[:-8])
    (count,) = _COUNT.unpack_from(blob, len(MAGIC))
    frames = [_ENTRY.unpack_from(blob, len(MAGIC) + _COUNT.size + i * _ENTRY.size)[0] for i in range(count)]
    got = FrameCache(cache, 16, 64, 90).load(other.parent.name, other.name.split(".")[0], frames)
    assert got is not None and len(got) == count


def test_frame_cache_and_build_shards_store_small_frames_at_their_own_size(kitchen, tmp_path, monkeypatch):
    """The kitchen's 192x144 frames at --short-side 256: extract caches them at 192x144 (not upscaled to
    341x256), from the same single decode as the camera's, and build-shards copies them: the same bytes and frame
    size as its own decode."""
    import leap_cli.media.video as video
    from leap_cli.epic.layout import DatasetLayout
    from leap_cli.epic.timing import MP4, FrameClock
    from leap_cli.extract.cache import FrameCache, recognition_frames
    from leap_cli.shards.format import iter_tar_samples
    from leap_cli.shards.transforms import decode_jpegs
    from leap_cli.shards.writer import LayoutOpener, ShardSettings, build_shards

    sides = []
    real_resize = video.resize_short_side
    monkeypatch.setattr(video, "resize_short_side",
                        lambda bgr, side, *out: sides.append(side) or real_resize(bgr, side, *out))
    cache = tmp_path / "frame-cache"
    run_extract(_cfg(kitchen, tmp_path / "d.jsonl", components=("camera",), frame_cache=cache))
    assert sides and set(sides) == {None}  # camera and cache read the same full-size frames, none resized
    entries = sorted(cache.rglob("*.v3.s256q90.jpgs"))
    assert len(entries) == 3
    ann0 = DatasetLayout.open(kitchen).annotations()
    seg = next(s for s in ann0.segments("train") if s.narration_id == entries[0].name.split(".")[0])
    first = FrameCache(cache, 16, 256, 90).load("P01_01", seg.narration_id,
                                                recognition_frames(FrameClock(MP4, ann0.fps("P01_01")), seg, 16))
    assert first is not None and decode_jpegs(first).shape == (16, 144, 192, 3)
    entries[0].write_bytes(entries[0].read_bytes()[:-1])  # a truncated entry is not used
    assert FrameCache(cache, 16, 256, 90).load("P01_01", seg.narration_id,
                                               recognition_frames(FrameClock(MP4, ann0.fps("P01_01")), seg, 16)) is None
    entries[0].unlink()
    layout = DatasetLayout.open(kitchen)
    ann = layout.annotations()
    settings = ShardSettings("train", frames=16, short_side=256)

    def build(out, frame_cache):
        return build_shards(ann.segments("train"), out=out, settings=settings, fps=ann.fps,
                            opener=LayoutOpener(layout.root, layout.annotations_dir), cache=frame_cache)

    cached = build(tmp_path / "w1", FrameCache(cache, 16, 256, 90))
    decoded = build(tmp_path / "w2", None)
    tars = sorted((tmp_path / "w1").rglob("*.tar"))
    assert tars and [p.read_bytes() for p in tars] == [p.read_bytes() for p in sorted((tmp_path / "w2").rglob("*.tar"))]
    assert cached.manifest["frame_sizes"] == decoded.manifest["frame_sizes"] == {"P01_01": [192, 144]}
    shapes = {decode_jpegs([v for k, v in f.items() if k.endswith(".jpg")]).shape for p in tars
              for _, f in iter_tar_samples(p)}
    assert shapes == {(16, 144, 192, 3)}


def test_info_reports_videos_whose_decoded_length_disagrees_with_video_info(kitchen, tmp_path):
    from typer.testing import CliRunner

    from leap_cli.cli import app
    from leap_cli.epic.info import check_lengths
    from leap_cli.epic.layout import DatasetLayout

    assert check_lengths(DatasetLayout.open(kitchen), ["P01_01", "P01_02"]) == []  # the full video; no P01_02 media
    _short_copy(kitchen, tmp_path / "k", 2.4)
    mp4 = _short_copy(kitchen, tmp_path / "k2", 6.0, container_options={"movflags": "faststart"})
    mp4.write_bytes(mp4.read_bytes()[: int(mp4.stat().st_size * 0.6)])  # announces 6 s of frames, holds fewer
    (short,) = check_lengths(DatasetLayout.open(tmp_path / "k"), ["P01_01"])
    assert (short.expected_s, short.decoded_s, short.note) == (6.0, 2.4, f"{round(2.4 * FPS)} frames")
    (cut,) = check_lengths(DatasetLayout.open(tmp_path / "k2"), ["P01_01"])
    assert cut.decoded_s < 5.0 and f"of the {6 * FPS} frames the file announces" in cut.note
    import shutil

    from tests.conftest import EPIC_EXCERPT

    for name in ("EPIC_100_verb_classes.csv", "EPIC_100_noun_classes.csv"):
        shutil.copy(EPIC_EXCERPT / name, tmp_path / "k" / "annotations" / name)
    res = CliRunner().invoke(app, ["info", "--data", str(tmp_path / "k")])
    assert res.exit_code == 0, res.output
    assert "1 video whose decodable length disagrees" in res.output and "P01_01 (mp4): video_info 6.00 s, " \
        "decodes 2.40 s" in res.output
    # a list of hundreds (rgb_frames of another extraction) shows its first 20, and --all every one
    import leap_cli.epic.info as info

    many = [info.LengthCheck(f"P01_{i:03d}", "rgb_frames", 6.0, 6.6, "x frames") for i in range(1, 26)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(info, "check_lengths", lambda layout, videos: many)
        short = CliRunner().invoke(app, ["info", "--data", str(tmp_path / "k")]).output
        full = CliRunner().invoke(app, ["info", "--data", str(tmp_path / "k"), "--all"]).output
    assert "25 videos whose decodable length" in short and "P01_020 (rgb_frames)" in short
    assert "P01_021" not in short and "... and 5 more (--all lists every one)" in short, short
    assert "P01_025 (rgb_frames): video_info 6.00 s, decodes 6.60 s" in full and "more (--all" not in full


def test_a_video_missing_from_video_info_uses_its_own_fps_not_an_assumed_one(kitchen, tmp_path):
    import shutil

    root = tmp_path / "k"
    shutil.copytree(kitchen, root)
    info = root / "annotations" / "EPIC_100_video_info.csv"
    info.write_text("".join(line for line in info.read_text().splitlines(True) if not line.startswith("P01_01,")))
    out = tmp_path / "t.jsonl"
    run_extract(_cfg(root, out, components=("camera",)))
    recs = {r["narration_id"]: r for r in read_jsonl(out)}
    # at an assumed 50 fps the 4-6 s segment would be read at frames 201-300 of this 150-frame, 25 fps video
    assert [recs[f"P01_01_{k}"]["components"]["camera"]["status"] for k in range(3)] == ["ok", "ok", "ok"]


def test_odometry_reads_small_frames_at_their_own_size_from_the_first_segment(kitchen, tmp_path, monkeypatch):
    """The camera learns the frame size from the video's header, so no frame is ever converted at a size above
    the source's (no upscaling for odometry), not even for a video's first segment."""
    import leap_cli.media.video as video

    sides = []
    real = video.resize_short_side

    def recording(bgr, short_side, *out):
        sides.append((min(bgr.shape[:2]), short_side))
        return real(bgr, short_side, *out)

    monkeypatch.setattr(video, "resize_short_side", recording)
    s = run_extract(_cfg(kitchen, tmp_path / "t.jsonl", components=("camera",), camera_frames=5))
    assert s.counts["camera"]["ok"] >= 2 and sides
    assert all(side is None or side <= native for native, side in sides), sorted(set(sides))
    assert [r["components"]["camera"]["data"]["frame_size"] for r in read_jsonl(tmp_path / "t.jsonl")
            if r["components"]["camera"]["status"] == "ok"][0] == [192, 144]


def test_spawned_workers_do_not_import_the_parents_main_script(kitchen, tmp_path):
    """A worker needs the extract module only: the parent's __main__ (the `leap` console script imports the
    whole CLI) is not run again in each spawned worker, and the workers still write every record."""
    import subprocess
    import sys

    marker, out = tmp_path / "imported.txt", tmp_path / "t.jsonl"
    script = tmp_path / "main_script.py"
    script.write_text(
        "import os\n"
        f"open({str(marker)!r}, 'a').write(str(os.getpid()) + '\\n')\n"
        "if __name__ == '__main__':\n"
        "    from pathlib import Path\n"
        "    from leap_cli.extract.runner import ExtractConfig, run_extract\n"
        f"    s = run_extract(ExtractConfig(data=Path({str(kitchen)!r}), split='train', out=Path({str(out)!r}),\n"
        "                                  components=('narration', 'camera'), workers=2))\n"
        "    assert s.written == s.segments, (s.written, s.segments)\n")
    subprocess.run([sys.executable, str(script)], check=True, timeout=300)
    assert len(marker.read_text().split()) == 1  # the parent only
    assert len(read_jsonl(out)) >= 3


def test_opencv_runs_on_one_thread_while_extract_runs_in_process_and_is_restored(kitchen, tmp_path, monkeypatch):
    """As in a worker: OpenCV's thread pool costs more CPU than it saves on the camera's small frames."""
    import cv2

    from leap_cli.extract.camera import CameraComponent

    seen = []
    real = CameraComponent.describe
    monkeypatch.setattr(CameraComponent, "describe", lambda self, ctx: seen.append(cv2.getNumThreads()) or real(self, ctx))
    original = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        run_extract(_cfg(kitchen, tmp_path / "t.jsonl", components=("camera",), limit=2))
        assert seen == [1, 1] and cv2.getNumThreads() == 2
    finally:
        cv2.setNumThreads(original)


def test_frame_cache_deletes_a_segments_superseded_entry(kitchen, tmp_path):
    """Earlier versions' cache entries (.npz archives nothing reads) of a segment go when its new entry is
    written; files that are not a superseded name of a written entry stay."""
    from leap_cli.epic.layout import DatasetLayout
    from leap_cli.extract.cache import FrameCache

    cache = tmp_path / "frame-cache"
    fc = FrameCache(cache, 16, 256, 90)
    seg = DatasetLayout.open(kitchen).annotations().segments("train")[0]
    old = fc.superseded(seg.video_id, seg.narration_id)
    other = cache / seg.video_id / f"{seg.narration_id}.v2.s128q90.npz"  # another size: not this entry's
    for p in old + [other]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"old")
    run_extract(_cfg(kitchen, tmp_path / "d.jsonl", components=("camera",), frame_cache=cache))
    assert fc.path(seg.video_id, seg.narration_id).is_file()
    assert not any(p.exists() for p in old) and other.exists()


def test_the_cache_and_the_camera_read_the_decoders_images_without_copies(kitchen, tmp_path):
    """The runner keeps each decoded frame as OpenCV's BGR image: the frame cache gets those very images (no
    stacking copy, no RGB round trip before the JPEG), the camera its grey frames converted from them, a
    component reading RGB arrays the same pixels as the reader's own RGB frames; and a bare context (no runner)
    gives the same images through read_frames."""
    import cv2
    import numpy as np

    from leap_cli.epic.layout import DatasetLayout
    from leap_cli.extract.base import SegmentContext
    from leap_cli.extract.runner import _Video
    from leap_cli.media.video import open_video

    layout = DatasetLayout.open(kitchen)
    ann = layout.annotations()
    seg = ann.segments("train")[0]
    video = _Video(layout, seg.video_id, ann.fps(seg.video_id))
    ctx = SegmentContext(layout=layout, segment=seg, fps=video.fps, clock=video.clock,
                         read_frames=lambda n, s: video.read(list(n), s, seg),
                         read_images=lambda n, s: video.images(list(n), s, seg), frame_size=lambda: video.size(seg))
    bare = SegmentContext(layout=layout, segment=seg, fps=video.fps, clock=video.clock, read_frames=ctx.read_frames)
    nums = ctx.segment_frames(5)
    try:
        video.start_segment(seg, {})
        bgr = ctx.images_at_most(nums, 256, "bgr")  # 192x144 frames: at their own size
        assert all(a is b for a, b in zip(bgr, ctx.images_at_most(nums, 256, "bgr")))  # one decode, not copied
        with open_video(layout, seg.video_id) as reader:
            want, small = reader.read_frames(nums), reader.read_frames(nums, 96)
        assert want.shape == (5, 144, 192, 3) and np.array_equal(ctx.read_frames(nums, None), want)
        assert np.array_equal(np.stack(bgr), want[..., ::-1])
        grey = ctx.images_at_most(nums, 256, "gray")
        assert all(np.array_equal(g, cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)) for g, f in zip(grey, want))
        assert np.array_equal(np.stack(ctx.images_at_most(nums, 96, "rgb")), small)  # shrunk, as the reader does
        for colour, mine in (("gray", grey), ("bgr", bgr), ("rgb", list(want))):
            assert all(np.array_equal(a, b) for a, b in zip(bare.images_at_most(nums, 256, colour), mine))
        assert np.array_equal(np.stack(bare.images_at_most(nums, 96, "rgb")), small)
    finally:
        video.close()


def test_a_decoded_image_a_component_keeps_is_never_decoded_into_again(kitchen):
    """The runner decodes a segment's frames into the last segment's full-size images (fresh memory for every
    kept frame costs page faults), but only into those nothing else holds: an image a component kept stays as it
    was, and the images decoded into are the right frames."""
    import weakref

    import numpy as np

    from leap_cli.epic.layout import DatasetLayout
    from leap_cli.extract.base import SegmentContext
    from leap_cli.extract.runner import _Video
    from leap_cli.media.video import open_video

    layout = DatasetLayout.open(kitchen)
    ann = layout.annotations()
    segs = [s for s in ann.segments("train") if s.video_id == "P01_01"]
    video = _Video(layout, "P01_01", ann.fps("P01_01"))

    def images(seg):
        video.start_segment(seg, {})
        ctx = SegmentContext(layout=layout, segment=seg, fps=video.fps, clock=video.clock,
                             read_images=lambda n, s: video.images(list(n), s, seg), frame_size=lambda: video.size(seg))
        nums = ctx.segment_frames(5)
        with open_video(layout, "P01_01") as reader:
            want = reader.read_frames(nums)[..., ::-1]
        return ctx.images_at_most(nums, 256, "bgr"), want

    try:
        kept, want = images(segs[0])  # a component keeps these past its segment
        copies = [k.copy() for k in kept]
        second, want2 = images(segs[1])
        assert not {id(k) for k in kept} & {id(i) for i in second}
        assert all(np.array_equal(a, b) for a, b in zip(kept, copies)) and np.array_equal(np.stack(kept), want)
        released = [weakref.ref(i) for i in second]  # nothing holds these any more
        del second
        third, want3 = images(segs[2])
        assert all(any(r() is i for i in third) for r in released)  # decoded into the released images
        assert np.array_equal(np.stack(third), want3)
    finally:
        video.close()


def test_generation_reads_the_same_clip_from_the_records_it_keeps(kitchen, tmp_path):
    """generate-programs keeps descriptor records without the camera's and audio's data (half of what a day's
    records held in memory): what it reads of them (the clip's text, labels, objects, contacts) is unchanged."""
    from leap_cli.programs.generate import _for_generation
    from leap_cli.programs.prompt import clip_info

    out = tmp_path / "train.jsonl"
    run_extract(_cfg(kitchen, out))
    full = read_jsonl(out)
    assert any((r["components"]["camera"].get("data") or {}).get("steps") for r in full)  # there is data to drop
    for r in full:
        kept = _for_generation(json.loads(json.dumps(r)))
        assert "data" not in kept["components"]["camera"] and kept["components"]["hands"] == r["components"]["hands"]
        assert clip_info(kept) == clip_info(r)


def test_frame_cache_entries_of_another_source_are_neither_kept_nor_copied(kitchen, tmp_path):
    """build-shards --data OTHER (the same video ids, a video there unreadable) built its samples from the cache
    of the first dataset's videos; extract kept a replaced video's old entries as done."""
    import os
    import shutil

    from leap_cli.epic.layout import DatasetLayout
    from leap_cli.extract.cache import FrameCache
    from leap_cli.shards.writer import ShardSettings, build_split

    root = tmp_path / "k"
    shutil.copytree(kitchen, root)
    for name in ("EPIC_100_verb_classes.csv", "EPIC_100_noun_classes.csv"):
        shutil.copy(Path(__file__).parent / "data" / "epic100" / name, root / "annotations" / name)
    cache = tmp_path / "frame-cache"
    run_extract(_cfg(root, tmp_path / "d.jsonl", components=("camera",), frame_cache=cache, limit=2))
    layout = DatasetLayout.open(root)
    seg = layout.annotations().segments("train")[0]
    fc = FrameCache(cache, 16, 256, 90)
    entry = fc.path(seg.video_id, seg.narration_id)
    assert entry.is_file() and fc.source_of(seg.video_id) == layout.source_stat(seg.video_id)

    other = tmp_path / "other"
    shutil.copytree(root, other)
    (other / "P01" / "videos" / f"{seg.video_id}.MP4").write_bytes(b"garbage")  # same id, another file
    settings = ShardSettings("train", frames=16, short_side=256, jpeg_quality=90)
    r = build_split(other, "train", workdir=tmp_path, settings=settings, out=tmp_path / "s", frame_cache=cache)
    skipped = {s["narration_id"]: s["reason"] for s in r.manifest["skipped"]}
    assert seg.narration_id in skipped and "cannot be opened" in skipped[seg.narration_id], skipped
    said = " | ".join(r.notes)
    assert "frames read from extract's frame cache" in said  # (the cache is read where it fits)
    # and what it passed over is said, not only in docs/extract.md
    assert f"holds entries of 1 video ({seg.video_id}) made from another source" in said, said
    from leap_cli.common import ShardSpec

    part = ShardSpec(1, 2)  # (the other video's part: it names no video of another part)
    assert seg.video_id not in {x.video_id for x in part.select(layout.annotations().segments("train"),
                                                                 key=lambda x: x.video_id)}
    r = build_split(other, "train", workdir=tmp_path, settings=settings, out=tmp_path / "s1", frame_cache=cache,
                    shard=part)
    assert "another source" not in " | ".join(r.notes), r.notes

    video = layout.video_path(seg.video_id)
    os.utime(video, ns=(video.stat().st_atime_ns, video.stat().st_mtime_ns + 10**9))  # re-downloaded in place
    stale = entry.read_bytes()
    entry.write_bytes(stale[:-8] + b"STALE!!!")  # (what a stale entry holds does not matter: it must go)
    run_extract(_cfg(root, tmp_path / "d2.jsonl", components=("camera",), frame_cache=cache, limit=2))
    assert entry.read_bytes() != stale[:-8] + b"STALE!!!" and fc.source_of(seg.video_id) == layout.source_stat(
        seg.video_id)


def test_a_skip_is_tried_again_after_a_fix_that_keeps_size_and_mtime(kitchen, tmp_path):
    """build-shards tries a skipped segment again when its video's source changed; `chmod a+r`, or the frames'
    tar extracted again (tar sets the folder's mtime back), changed neither size nor mtime: the skip stayed."""
    import os
    import shutil

    from leap_cli.shards.writer import LayoutOpener

    root = tmp_path / "k"
    shutil.copytree(kitchen, root)
    opener = LayoutOpener(root, root / "annotations")
    mp4 = root / "P01" / "videos" / "P01_01.MP4"
    before = opener.video_stat("P01_01")
    st = mp4.stat()
    time.sleep(0.01)
    os.chmod(mp4, 0o600)
    os.utime(mp4, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert mp4.stat().st_size == st.st_size and mp4.stat().st_mtime_ns == st.st_mtime_ns
    assert opener.video_stat("P01_01") != before


def test_a_rerun_without_videos_says_they_are_missing_not_failed(tmp_path):
    """Annotations only (no videos yet): the rerun said the components "failed or whose video could not be read",
    where the first run had called them unavailable (no video)."""
    from typer.testing import CliRunner

    from leap_cli.cli import app
    from tests.program_helpers import excerpt_annotations

    excerpt_annotations(tmp_path, 3)
    args = ["extract", "--split", "val", "--workdir", str(tmp_path), "--components", "narration,camera"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    again = " ".join(CliRunner().invoke(app, args).output.split())
    assert "3 of them hold a component that failed, had no readable video (none there, or damaged)" in again, again
    assert "once the files are there or fixed, --retry-errors redoes them" in again


def test_records_of_other_annotations_are_made_again_on_resume(kitchen, tmp_path):
    """Resume kept a record by its narration id alone: after a new version of the split CSV (a segment's times or
    its narration changed) the old record, frames and text of another segment, was kept as done, and so was its
    frame-cache entry."""
    import shutil

    from leap_cli.epic.layout import DatasetLayout
    from leap_cli.epic.timing import MP4, FrameClock
    from leap_cli.extract.cache import FrameCache, recognition_frames

    root = tmp_path / "k"
    shutil.copytree(kitchen, root)
    out, cache = tmp_path / "train.jsonl", tmp_path / "fc"
    cfg = _cfg(root, out, components=("narration", "camera"), frame_cache=cache)
    run_extract(cfg)
    before = {r["narration_id"]: r for r in read_jsonl(out)}
    csv = root / "annotations" / "EPIC_100_train.csv"
    text = csv.read_text()
    text = text.replace("P01_01_1,P01,P01_01,00:00:02.00,00:00:02.00,00:00:04.00,", # a new stop: 3.5 s
                        "P01_01_1,P01,P01_01,00:00:02.00,00:00:02.00,00:00:03.50,")
    text = text.replace(",fry onion,fry,9,onion,30,", ",fry onions,fry,9,onion,30,")  # a narration fixed
    first = text.splitlines()[1]  # P01_01_0: only its frame columns (which rgb_frames are read by), one later
    cols = first.split(",")
    cols[6], cols[7] = str(int(cols[6]) + 1), str(int(cols[7]) + 1)
    text = text.replace(first, ",".join(cols))
    csv.write_text(text)

    s = run_extract(cfg)
    after = {r["narration_id"]: r for r in read_jsonl(out)}
    assert s.reannotated == 3 and s.written == 3 and s.done_before == 1
    assert after["P01_01_0"]["start_frame"] == before["P01_01_0"]["start_frame"] + 1
    assert after["P01_01_1"]["stop"] == 3.5 and after["P01_01_2"]["components"]["narration"]["data"]["narration"] \
        == "fry onions" and '"fry onions"' in after["P01_01_2"]["text"]
    assert after["P01_02_0"] == before["P01_02_0"] and len(read_jsonl(out)) == 4  # the other kept, once each
    layout = DatasetLayout.open(root)
    seg = next(x for x in layout.annotations().segments("train") if x.narration_id == "P01_01_1")
    clock = FrameClock(MP4, FPS)
    frames = recognition_frames(clock, seg, 16)
    entry = FrameCache(cache, 16, 256, 90).path("P01_01", "P01_01_1")
    assert FrameCache.holds(entry, frames)  # the entry of the old times was replaced
    assert run_extract(cfg).written == 0  # and the next run has nothing to do


def test_the_extract_summary_says_records_were_made_again_from_new_annotations(kitchen, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from leap_cli.cli import app

    root = tmp_path / "k"
    shutil.copytree(kitchen, root)
    args = ["extract", "--data", str(root), "--split", "train", "--workdir", str(tmp_path / "w"),
            "--components", "narration", "--frame-cache", "none"]
    assert CliRunner().invoke(app, args).exit_code == 0
    csv = root / "annotations" / "EPIC_100_train.csv"
    csv.write_text(csv.read_text().replace(",wash knife,wash,2,knife,4,", ",rinse knife,wash,2,knife,4,"))
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "1 record of earlier runs was made from other annotations" in " ".join(r.output.split())
    assert "EPIC_100_train.csv" in r.output


def test_records_an_earlier_leap_made_otherwise_are_made_again_and_said(kitchen, tmp_path, monkeypatch):
    """An upgrade of leap that changes what a component writes (session 47's camera rotation fit) left a resumed
    output holding records of both leaps. Each record now says what made its parts ("versions"); a resume makes
    again those of an earlier number, and a record of a leap before the numbers counts as version 1 of each."""
    from typer.testing import CliRunner

    from leap_cli.cli import app
    from leap_cli.extract import base

    monkeypatch.setattr(base, "VERSIONS", dict.fromkeys(base.VERSIONS, 1))  # (the numbers of a leap of 2026-12-05)
    monkeypatch.setattr(base, "CHANGED", {})  # (the raise below changes every camera record)
    out = tmp_path / "w" / "descriptors" / "train.jsonl"
    args = ["extract", "--data", str(kitchen), "--split", "train", "--workdir", str(tmp_path / "w"),
            "--components", "narration,camera", "--frame-cache", "none"]
    assert CliRunner().invoke(app, args).exit_code == 0
    first = read_jsonl(out)
    assert all(r["versions"] == {"narration": 1, "camera": 1, "text": 1} for r in first)
    lines = out.read_text().splitlines()  # a record of a leap before the numbers: kept as it is
    old = json.loads(lines[0])
    del old["versions"]
    out.write_text("\n".join([json.dumps(old), *lines[1:]]) + "\n")
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0 and "0 written now" in " ".join(r.output.split()), r.output
    monkeypatch.setitem(base.VERSIONS, "camera", 2)  # a leap whose odometry writes otherwise
    r = CliRunner().invoke(app, args, terminal_width=400)
    said = " ".join(r.output.split())
    assert r.exit_code == 0 and f"{len(first)} records of earlier runs hold parts another leap made otherwise" in said
    assert "camera 1 -> 2" in said, said
    after = {x["narration_id"]: x for x in read_jsonl(out)}
    assert len(after) == len(first) and all(x["versions"]["camera"] == 2 for x in after.values())
    r = CliRunner().invoke(app, args)  # and they are not made again a third time
    assert r.exit_code == 0 and "0 written now" in " ".join(r.output.split()) and "another leap" not in r.output


def test_records_without_a_narration_component_see_a_changed_annotation(kitchen, tmp_path):
    """The hands name what they touch from the narration's nouns: a record of --components hands was kept after
    its noun changed (only the narration component was compared)."""
    import shutil

    root = tmp_path / "k"
    shutil.copytree(kitchen, root)
    out = tmp_path / "hands.jsonl"
    cfg = _cfg(root, out, components=("hands",), frame_cache=None)
    run_extract(cfg)
    assert all(len(r["annotation_hash"]) == 16 for r in read_jsonl(out))
    csv = root / "annotations" / "EPIC_100_train.csv"
    csv.write_text(csv.read_text().replace(",cut carrot,cut,7,carrot,23,['carrot'],[23]",
                                           ",cut onion,cut,7,onion,30,['onion'],[30]"))
    s = run_extract(cfg)
    assert s.reannotated == 1 and s.written == 1 and "narration or labels" in s.reannotated_example


def test_a_records_last_line_decides_whether_it_was_made_from_other_annotations(kitchen, tmp_path):
    """A run killed before its close-time rewrite leaves a record's old line (other annotations) before its new
    one: the last line is current, so the record is done, not made again nor counted as re-annotated."""
    import json
    import shutil

    root = tmp_path / "k"
    shutil.copytree(kitchen, root)
    out = tmp_path / "train.jsonl"
    cfg = _cfg(root, out, components=("narration",), frame_cache=None)
    run_extract(cfg)
    old = {r["narration_id"]: r for r in read_jsonl(out)}
    csv = root / "annotations" / "EPIC_100_train.csv"
    csv.write_text(csv.read_text().replace(",fry onion,fry,9,onion,30,", ",fry onions,fry,9,onion,30,"))
    assert run_extract(cfg).reannotated == 1
    new = read_jsonl(out)
    out.write_text("".join(json.dumps(r) + "\n" for r in [old["P01_01_2"], *new]))  # old line first, then the new
    s = run_extract(cfg)
    assert (s.reannotated, s.written, s.done_before) == (0, 0, len(new))


def test_records_made_again_for_new_annotations_are_not_offered_to_retry_errors(kitchen, tmp_path):
    """The summary offered --retry-errors for a record the same run made again (its annotation had changed)."""
    import shutil

    root = tmp_path / "k"
    shutil.copytree(kitchen, root)
    out = tmp_path / "train.jsonl"
    cfg = _cfg(root, out, components=("narration", "camera"), frame_cache=None)
    run_extract(cfg)
    assert run_extract(cfg).retryable == 1  # P01_02_0: no video
    csv = root / "annotations" / "EPIC_100_train.csv"
    csv.write_text(csv.read_text().replace(",open door,open,3,door,3,", ",open the door,open,3,door,3,"))
    s = run_extract(cfg)
    assert s.reannotated == 1 and s.written == 1 and s.retryable == 0


def test_a_full_disk_under_the_frame_cache_names_the_way_on_without_it(kitchen, tmp_path, monkeypatch):
    """ENOSPC writing the frame cache said to free space or move the output options: the cache is optional, and
    --frame-cache none (or another folder) goes on. The records finished before are kept either way."""
    import errno
    import os

    from leap_cli.errors import LeapError
    from leap_cli.extract import cache as cache_mod

    real = cache_mod.atomic_write_bytes
    written = []

    def fills(path, data, **kw):
        if written:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        written.append(path)
        return real(path, data, **kw)

    monkeypatch.setattr(cache_mod, "atomic_write_bytes", fills)
    out = tmp_path / "t.jsonl"
    with pytest.raises(LeapError, match="No space left on device .writing extract's frame cache.*--frame-cache "
                                        "none .the cache only spares build-shards a decode") as e:
        run_extract(_cfg(kitchen, out, components=("camera",), frame_cache=tmp_path / "fc"))
    assert str(tmp_path / "fc") in str(e.value)
    assert len(read_jsonl(out)) == 1  # (the first segment's, before the disk filled)
    written.clear()
    denied = lambda path, data, **kw: (_ for _ in ()).throw(  # noqa: E731 (another user's work directory)
        PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path)))
    monkeypatch.setattr(cache_mod, "atomic_write_bytes", denied)
    monkeypatch.setattr(cache_mod, "atomic_write_text", denied)  # (the video's source.json, written first)
    with pytest.raises(LeapError, match="Permission denied .writing extract's frame cache.*give --frame-cache a folder "
                                        "you can write, or --frame-cache none"):
        run_extract(_cfg(kitchen, out, components=("camera",), frame_cache=tmp_path / "fc2"))
    s = run_extract(_cfg(kitchen, out, components=("camera",), frame_cache=None))
    assert s.written == len(SEGMENTS) - 1 and len(read_jsonl(out)) == len(SEGMENTS)


def test_frame_cache_entries_of_an_rgb_frames_video_from_an_earlier_leap_are_not_used(tmp_path):
    """An earlier leap cached a damaged rgb_frames JPEG as decoded (its rest grey), and an upgraded build-shards
    copied it on, even with --force (QA). Such entries (no ``frames_checked`` in source.json) are not used for an
    rgb_frames video, and extract replaces them; an MP4's are used as before."""
    import json

    from leap_cli.extract.cache import FrameCache

    cache = FrameCache(tmp_path / "cache", 16, 256, 90)
    for video in ("P01_01", "P01_02"):
        (tmp_path / "cache" / video).mkdir(parents=True)
        (tmp_path / "cache" / video / "source.json").write_text(json.dumps({"source_stat": [10, 20]}))
        (tmp_path / "cache" / video / f"{video}_0{cache.suffix}").write_bytes(b"old entry")
    assert not cache.same_source("P01_01", [10, 20], frames=True)  # rgb_frames: an earlier leap's
    assert cache.same_source("P01_02", [10, 20], frames=False)  # an MP4's: as before
    cache.claim("P01_01", [10, 20], frames=True)
    cache.claim("P01_02", [10, 20], frames=False)
    assert not (tmp_path / "cache" / "P01_01" / f"P01_01_0{cache.suffix}").exists()  # replaced as extract goes
    assert (tmp_path / "cache" / "P01_02" / f"P01_02_0{cache.suffix}").exists()
    assert cache.same_source("P01_01", [10, 20], frames=True)  # its new entries are used
    # entries of a leap before source.json existed: an rgb_frames video's go too (QA: they were blessed as checked)
    (tmp_path / "cache" / "P01_03").mkdir()
    (tmp_path / "cache" / "P01_03" / f"P01_03_0{cache.suffix}").write_bytes(b"older entry")
    cache.claim("P01_03", [10, 20], frames=True)
    assert not (tmp_path / "cache" / "P01_03" / f"P01_03_0{cache.suffix}").exists()


def test_rows_whose_frame_columns_and_timestamps_disagree_are_warned_of(kitchen, tmp_path, caplog):
    """A CSV whose start_frame was edited (the timestamps left as they were) gave an MP4 user and an rgb_frames
    user different clips without a word: extract names such rows, with EPIC's own rows (off by at most one frame)
    left alone."""
    import shutil

    root = tmp_path / "k"
    shutil.copytree(kitchen, root)
    with caplog.at_level("WARNING"):
        run_extract(_cfg(root, tmp_path / "a.jsonl", components=("narration",)))
    assert "disagree" not in caplog.text

    def shift(rows):
        rows[1]["start_frame"] = str(int(rows[1]["start_frame"]) + 1)  # EPIC's rounding: not said
        rows[2]["stop_frame"] = str(int(rows[2]["stop_frame"]) + 30)

    rows = edit_csv(root / "annotations" / "EPIC_100_train.csv", shift)
    caplog.clear()
    with caplog.at_level("WARNING"):
        run_extract(_cfg(root, tmp_path / "b.jsonl", components=("narration",)))
    (msg,) = [r.getMessage() for r in caplog.records if "disagree" in r.getMessage()]
    assert msg.startswith("EPIC_100_train.csv: 1 row whose") and f"e.g. {rows[2]['narration_id']}: stop_frame" in msg
    info = root / "annotations" / "EPIC_100_video_info.csv"  # a damaged video info: one line naming the row, not
    info.write_text(info.read_text().rstrip("\n").rsplit(",", 2)[0] + "\n")  # a traceback of the row notes (review)
    with pytest.raises(LeapError, match=r"row \d+ \(P01_\d+\) has 2 of 4 fields"):
        run_extract(_cfg(root, tmp_path / "c.jsonl", components=("narration",)))


def test_a_run_without_shard_over_a_merge_made_too_early_is_refused(kitchen, tmp_path):
    """train.jsonl merged from part 0 only, part 1 beside it (or still running): a run without --shard did part 1's
    segments again, where the next stage refuses to read that merge (QA)."""
    from typer.testing import CliRunner

    from leap_cli.cli import app

    args = ["extract", "--data", str(kitchen), "--split", "train", "--workdir", str(tmp_path),
            "--components", "narration", "--frame-cache", "none"]
    for i in range(2):
        assert CliRunner().invoke(app, args + ["--shard", f"{i}/2"]).exit_code == 0
    desc = tmp_path / "descriptors"
    (desc / "train.jsonl").write_text((desc / "train.shard0of2.jsonl").read_text())
    r = CliRunner().invoke(app, args)
    assert type(r.exception).__name__ == "LeapError" and "lacks 1 record that its --shard parts of 2 beside it hold" in \
        str(r.exception), r.output
    assert (desc / "train.jsonl").read_text() == (desc / "train.shard0of2.jsonl").read_text()  # nothing redone
    (desc / "train.jsonl").write_text("".join((desc / f"train.shard{i}of2.jsonl").read_text() for i in range(2)))
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0 and f"{len(SEGMENTS)} done before, 0 written now" in " ".join(r.output.split()), r.output
    # an output of unsharded runs (started over with --force, stopped after one record) resumes: it is no merge
    (desc / "train.jsonl").unlink()
    assert CliRunner().invoke(app, args + ["--force"]).exit_code == 0
    (desc / "train.jsonl").write_text((desc / "train.jsonl").read_text().splitlines(keepends=True)[0])
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0 and f"1 done before, {len(SEGMENTS) - 1} written now" in " ".join(r.output.split()), \
        r.output
