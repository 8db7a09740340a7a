"""docs/media.md, docs/synthetic-kitchen.md, docs/show-demo.md, docs/development.md and docs/programs.md read as a new
user reads them, claim by claim, against what the commands do on a small synthetic kitchen built by the documented
`leap demo-data` line: media.md's usage example as written, the kitchen's published files and formats, what
`leap demo` runs, the offline generator's outputs and refusals, the Batch API request files, validate-programs'
report names and exit status, `leap show`'s --html refusals. The claims earlier docs tests pin
(test_attack_docs_claims.py, test_attack_s57/58/59_docs*.py, test_attack_help_texts.py) are not repeated. Two claims
found false were fixed the same session (their tests say "Was wrong")."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import wave
from pathlib import Path

import pytest

from tests.procs import leap_main

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MEDIA_MD = (DOCS / "media.md").read_text()
KITCHEN_MD = (DOCS / "synthetic-kitchen.md").read_text()
SHOW_MD = (DOCS / "show-demo.md").read_text()
PROGRAMS_MD = (DOCS / "programs.md").read_text()


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """`leap demo-data --workdir W --videos 3 --segments 4 --seed 7` (synthetic-kitchen.md's second line, with
    --workdir: the kitchen goes to W/kitchen), and the offline programs of the train split."""
    w = tmp_path_factory.mktemp("docs60") / "w"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    for argv in (["demo-data", "--workdir", str(w), "--videos", "3", "--segments", "4", "--seed", "7"],
                 ["generate-programs", "--workdir", str(w), "--split", "train"]):
        res = subprocess.run([sys.executable, "-m", "leap_cli", *argv], env=env, capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 0, res.stderr
    return w


# -- synthetic-kitchen.md -------------------------------------------------------------------------------------------

def test_the_kitchen_goes_to_workdir_kitchen_with_its_marker_written_last(work):
    """"--workdir DIR: the kitchen goes to WORKDIR/kitchen"; "A finished kitchen has a marker file
    `.leap-kitchen.json` (the config and its hash, written last)"."""
    k = work / "kitchen"
    marker = json.loads((k / ".leap-kitchen.json").read_text())
    assert {"config", "hash"} <= set(marker) and marker["config"]["seed"] == 7
    assert marker["config"]["videos"] == 3 and marker["config"]["segments_per_video"] == 4
    newest = max(p.stat().st_mtime_ns for p in k.rglob("*") if p.is_file() and not p.name.startswith(".leap-kitchen"))
    assert (k / ".leap-kitchen.json").stat().st_mtime_ns >= newest


def test_the_layouts_mp4_and_wav_are_what_it_says(work):
    """Layout: "P01/videos/P01_01.MP4 192x144 MPEG-4 at 59.94, 50 or 29.97 fps (EPIC's rates), with a 16 kHz AAC
    audio track"; "P01/audio/P01_01.wav the same sound, 16-bit 24 kHz mono"."""
    import av

    k = work / "kitchen"
    with av.open(str(k / "P01/videos/P01_01.MP4")) as c:
        video, audio = c.streams.video[0], c.streams.audio[0]
        assert video.codec_context.name == "mpeg4"
        assert (video.codec_context.width, video.codec_context.height) == (192, 144)
        assert float(video.average_rate) == pytest.approx(59.94, abs=0.01)
        assert audio.codec_context.name == "aac" and audio.codec_context.sample_rate == 16000
    with wave.open(str(k / "P01/audio/P01_01.wav")) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 24000)


def test_the_ground_truth_files_hold_the_fields_it_lists(work):
    """ground-truth/frames/P01_01.jsonl: per video frame (1-based at the video's fps): frame_number, yaw, pitch, roll
    (roll stays 0), hands [{side, bbox, contact, contact_state}], objects [{label, bbox}]; ground-truth/audio:
    {"video_id", "layers": [{label: room_tone|fan|fridge|music|babble, start, stop, level_db}]}, room tone at
    -50..-40 dBFS always; boxes {left, top, right, bottom} in [0, 1]; test segments have truth too."""
    k = work / "kitchen"
    info = {r["video_id"]: r for r in csv.DictReader((k / "annotations/EPIC_100_video_info.csv").open())}
    frames = [json.loads(x) for x in (k / "ground-truth/frames/P01_01.jsonl").read_text().splitlines()]
    n = round(float(info["P01_01"]["duration"]) * float(info["P01_01"]["fps"]))
    assert [f["frame_number"] for f in frames] == list(range(1, len(frames) + 1)) and abs(len(frames) - n) <= 1
    assert all(set(f) == {"frame_number", "yaw", "pitch", "roll", "hands", "objects"} for f in frames)
    assert all(f["roll"] == 0 for f in frames)
    hands = [h for f in frames for h in f["hands"]]
    objects = [o for f in frames for o in f["objects"]]
    assert hands and objects
    assert all(set(h) == {"side", "bbox", "contact", "contact_state"} for h in hands)
    assert all(set(o) == {"label", "bbox"} for o in objects)
    for box in [h["bbox"] for h in hands] + [o["bbox"] for o in objects]:
        assert set(box) == {"left", "top", "right", "bottom"} and all(0 <= v <= 1 for v in box.values())
    for vid in info:
        audio = json.loads((k / f"ground-truth/audio/{vid}.json").read_text())
        assert set(audio) == {"video_id", "layers"} and audio["video_id"] == vid
        assert {x["label"] for x in audio["layers"]} <= {"room_tone", "fan", "fridge", "music", "babble"}
        assert all(set(x) == {"label", "start", "stop", "level_db"} for x in audio["layers"])
        room = [x for x in audio["layers"] if x["label"] == "room_tone"]
        assert len(room) == 1 and -50 <= room[0]["level_db"] <= -40
    truth = [json.loads(x) for x in (k / "ground-truth/segments.jsonl").read_text().splitlines()]
    assert {t["split"] for t in truth} == {"train", "val", "test"}
    assert all(t["verb"] and t["noun"] and t["program"] for t in truth if t["split"] == "test")


def test_the_csv_frame_columns_are_floor_of_timestamp_times_epics_rate(work):
    """"the CSV columns are EPIC's floor(timestamp x rate), at least 1", the rate 50 for 50 fps videos and 60 for all
    others (P01_02 of this kitchen is at 50 fps, P01_01 at 59.94)."""
    import math

    k = work / "kitchen"
    fps = {r["video_id"]: float(r["fps"]) for r in csv.DictReader((k / "annotations/EPIC_100_video_info.csv").open())}
    assert sorted(round(v, 2) for v in fps.values()) == [50.0, 59.94, 59.94]

    def sec(ts: str) -> float:
        h, m, s = ts.split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)

    rows = [r for name in ("EPIC_100_train.csv", "EPIC_100_validation.csv")
            for r in csv.DictReader((k / "annotations" / name).open())]
    assert len(rows) == 8
    for r in rows:
        rate = 50 if round(fps[r["video_id"]]) == 50 else 60
        assert int(r["start_frame"]) == max(1, math.floor(sec(r["start_timestamp"]) * rate + 1e-9)), r
        assert int(r["stop_frame"]) == max(1, math.floor(sec(r["stop_timestamp"]) * rate + 1e-9)), r


def test_the_14_verbs_and_22_nouns_it_names_are_the_kitchens_class_files(work):
    """"one of 14 EPIC verbs (take, put, ...) on one of 22 EPIC nouns (plate, bowl, ...)": the lists in the text are
    the keys of the class files the kitchen publishes (`chopping board` is EPIC's `board:chopping`)."""
    def listed(after: str) -> set[str]:
        text = _flat(KITCHEN_MD)
        inner = text[text.index(after):]
        inner = inner[inner.index("(") + 1:inner.index(")")]
        return {w.strip() for w in inner.split(",")}

    verbs, nouns = listed("one of 14 EPIC verbs"), listed("one of 22 EPIC nouns")
    k = work / "kitchen" / "annotations"
    verb_keys = {r["key"] for r in csv.DictReader((k / "EPIC_100_verb_classes.csv").open())}
    noun_keys = {r["key"] for r in csv.DictReader((k / "EPIC_100_noun_classes.csv").open())}
    assert len(verbs) == 14 and verbs == verb_keys
    assert len(nouns) == 22 and {"board:chopping" if n == "chopping board" else n for n in nouns} == noun_keys


def test_the_frame_rate_cycle_it_states_is_the_kitchens():
    """"Videos cycle through 59.94, 50, 59.94, 59.94, 50, 59.94, 59.94 and 29.97 fps" (the honest kitchen)."""
    from leap_cli.synth.kitchen import KitchenConfig

    text = _flat(KITCHEN_MD)
    said = text[text.index("Videos cycle through ") + len("Videos cycle through "):text.index(" fps (EPIC-100")]
    said = [float(x) for x in re.split(r", | and ", said)]
    assert said == [round(r, 2) for r in KitchenConfig(videos=8).rates]


def test_the_truncated_copy_is_the_first_labelled_even_video_cut_in_its_third_segment_from_the_end(work):
    """"the first labelled video without poses (an even number after the underscore) ... is cut inside its third
    segment from the end; `video_info` keeps the full length, the truth marks the cut segments `past_end_of_video`,
    and the WAV keeps the whole sound": here P01_02 (val, 4 segments): cut inside P01_02_1."""
    from leap_cli.media import decodable_frames

    k = work / "kitchen"
    truth = [json.loads(x) for x in (k / "ground-truth/segments.jsonl").read_text().splitlines()]
    cut = [t["narration_id"] for t in truth if t.get("past_end_of_video")]
    assert cut and cut[0] == "P01_02_1" and set(cut) <= {"P01_02_1", "P01_02_2", "P01_02_3"}
    info = {r["video_id"]: r for r in csv.DictReader((k / "annotations/EPIC_100_video_info.csv").open())}
    full = float(info["P01_02"]["duration"])
    _, decodable = decodable_frames(k / "P01/videos/P01_02.MP4")
    p1 = next(t for t in truth if t["narration_id"] == "P01_02_1")
    assert p1["start"] < decodable / 50.0 < p1["stop"] < full  # the file ends inside that segment
    with wave.open(str(k / "P01/audio/P01_02.wav")) as w:
        assert w.getnframes() / w.getframerate() == pytest.approx(full, abs=0.05)
    assert not (k / "poses" / "P01_02.json").exists()


@pytest.mark.parametrize("segments", [3, 4])
def test_the_truncated_video_comes_with_4_segments_per_video(tmp_path, monkeypatch, capsys, segments):
    """"one truncated video where there are 2 videos or more and 4 segments per video or more". Was wrong: the page
    said "one truncated video" without a condition, and `leap demo-data --segments 3` (it takes 2 or more) cuts
    none."""
    code, _, err = leap_main(monkeypatch, capsys, "demo-data", "--out", str(tmp_path / "k"), "--videos", "2",
                             "--segments", str(segments))
    assert code == 0, err
    truth = [json.loads(x) for x in (tmp_path / "k/ground-truth/segments.jsonl").read_text().splitlines()]
    assert any(t.get("past_end_of_video") for t in truth) == (segments >= 4)


# -- media.md -------------------------------------------------------------------------------------------------------

def test_the_usage_example_runs_as_written_on_the_kitchen(work):
    """media.md's opening example, on the kitchen's P01_01 (192x144): read_frames(short_side=128) is `uint8 [16,
    128, 171, 3] RGB`; `read_frames([400, 380, 381])` takes 1-based frame numbers in any order (each array the frame
    asked for in that place); read_segment_audio(..., sample_rate=16000) is float32 mono of the window; the window
    past the decodable end is not inside, with media.md's reason."""
    import cv2
    import numpy as np

    from leap_cli.epic.layout import DatasetLayout
    from leap_cli.epic.timing import FrameClock, frames_for_window
    from leap_cli.errors import LeapError
    from leap_cli.media import AudioUnavailable, VideoUnreadable, open_video, read_segment_audio

    layout = DatasetLayout.open(work / "kitchen")
    with open_video(layout, "P01_01", record="P01_01_1") as video:
        clock = FrameClock("mp4", layout.annotations().fps("P01_01"), video.num_frames)
        window = frames_for_window(clock, 2.0, 4.5, 16)
        clip = video.read_frames(list(window.require().frames), short_side=128)
        assert clip.dtype == np.uint8 and clip.shape == (16, 128, 171, 3)
        frames = video.read_frames([400, 380, 381])
        one = {n: video.read_frames([n])[0] for n in (380, 381, 400)}
        assert all(np.array_equal(frames[i], one[n]) for i, n in enumerate([400, 380, 381]))
        end = video.num_frames / clock.fps
        past = frames_for_window(clock, end - 1.0, end + 1.6, 16)
        assert past.inside is False and re.fullmatch(
            r"the window ends 1\.\d\d s after the decodable end of the video \(\d+\.\d\d s, \d+ frames\)", past.reason)
    cap = cv2.VideoCapture(str(work / "kitchen/P01/videos/P01_01.MP4"))
    for _ in range(380):
        ok, bgr = cap.read()
    cap.release()
    assert ok and np.abs(one[380].astype(int) - bgr[..., ::-1].astype(int)).mean() < 1.0  # RGB, not BGR
    audio = read_segment_audio(layout, "P01_01", 2.0, 4.5, sample_rate=16000)
    assert audio.dtype == np.float32 and audio.shape == (40000,)
    assert issubclass(AudioUnavailable, LeapError) and issubclass(VideoUnreadable, LeapError)


def test_the_rgb_frames_rate_and_the_29_97_example():
    """"`epic_frame_rate(fps)`: 50 for the 50 fps videos, 60 for all others"; "For a 29.97 fps video EPIC's frame 61
    (1.0 s) is the MP4's frame 31"; "at 59.94 fps EPIC's frame n is the MP4's frame n for the first 500 frames";
    "`from_epic(to_epic(f)) == f`, except for the frames ffmpeg drops from a 90 fps video"."""
    from leap_cli.epic.timing import FrameClock, epic_frame_rate

    assert [epic_frame_rate(f) for f in (50.0, 59.94005994, 29.97002997, 47.95, 90.0)] == [50, 60, 60, 60, 60]
    assert FrameClock("mp4", 30000 / 1001).from_epic(61) == 31
    ntsc = FrameClock("mp4", 60000 / 1001)
    assert all(ntsc.from_epic(n) == n for n in range(1, 501))
    for fps in (60000 / 1001, 50.0, 30000 / 1001, 47.95):
        c = FrameClock("mp4", fps)
        assert all(c.from_epic(c.to_epic(f)) == f for f in range(1, 3000)), fps
    c90 = FrameClock("mp4", 90.0)
    assert any(c90.from_epic(c90.to_epic(f)) != f for f in range(1, 300))


def test_an_mp4_at_another_rate_than_video_info_is_left_out_by_info(work, tmp_path, monkeypatch, capsys):
    """"An MP4 whose own frame rate is more than 2% away from its video_info row ... is left out with that said, by
    every stage that reads its frames and by `leap info`"."""
    import shutil

    k = tmp_path / "k"
    shutil.copytree(work / "kitchen", k, ignore=shutil.ignore_patterns(".leap-kitchen.lock"))
    info = k / "annotations/EPIC_100_video_info.csv"
    rows = list(csv.DictReader(info.open()))
    for r in rows:
        if r["video_id"] == "P01_01":
            r["fps"] = "50.0"  # the file runs at 59.94: 17% away
    with info.open("w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    code, out, err = leap_main(monkeypatch, capsys, "info", "--data", str(k))
    text = _flat(out + err)
    assert code == 0, err
    assert "P01_01 (mp4): the file runs at 59.94 fps, not video_info's 50: the stages leave it out" in text
    assert "P01_03 (mp4)" not in text  # (P01_03 agrees with its row; P01_02 is the kitchen's truncated copy)


# -- programs.md ----------------------------------------------------------------------------------------------------

def test_the_motor_primitives_it_lists_are_the_validators():
    """"motor primitives mapped to an EPIC verb: reach→move, grasp→take, release→let-go, lift, lower, ...": each
    primitive and its verb (a bare name maps to itself) is vocab.MOTOR_PRIMITIVES, and none is left out."""
    from leap_cli.programs.vocab import MOTOR_PRIMITIVES

    text = _flat(PROGRAMS_MD)
    inner = text[text.index("motor primitives mapped to an EPIC verb:") + 40:]
    inner = inner[:inner.index(". The class file comes first")]
    listed = {}
    for item in inner.split(","):
        a, _, b = item.strip().partition("→")
        listed[a.strip()] = (b or a).strip()
    assert listed == {p: v for p, v in MOTOR_PRIMITIVES.items() if p != v or p in listed}


def test_the_offline_output_records_its_settings_and_makes_no_cache(work):
    """"Records say `backend: offline`; the generator is `offline-v5`"; the settings file `SPLIT.jsonl.settings.json`
    keeps `narration-only` without a descriptor file, the backend and the model (the offline generator's version);
    "the offline generator is deterministic and cheap, caches nothing and makes no `cache.sqlite`"."""
    programs = work / "programs"
    settings = json.loads((programs / "train.jsonl.settings.json").read_text())
    assert settings["descriptors"] == "narration-only" and settings["backend"] == "offline"
    assert settings["model"] == "offline-v5" and settings["split"] == "train"
    records = [json.loads(x) for x in (programs / "train.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(r["status"] == "valid" for r in records)
    assert all(r["provenance"]["backend"] == "offline" and r["provenance"]["model"] == "offline-v5" for r in records)
    assert all({"prompt_hash", "clip_hash", "attempts", "usage", "seconds", "created", "rounds", "cached"}
               <= set(r["provenance"]) for r in records)
    assert not (programs / "cache.sqlite").exists()


def test_an_llm_line_after_the_offline_one_is_refused_as_quoted(work, monkeypatch, capsys):
    """"after the offline line, the LLM lines on the same split are refused (`was started with other settings
    (--backend: 'offline' -> 'openai', ...)`)": before any request (the --base-url here answers nothing) and with the
    offline records left as they were."""
    before = (work / "programs/train.jsonl").read_bytes()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    code, _, err = leap_main(monkeypatch, capsys, "generate-programs", "--workdir", str(work), "--split", "train",
                             "--backend", "openai", "--model", "gpt-4o-mini", "--base-url", "http://127.0.0.1:9/v1")
    assert code == 2
    assert "was started with other settings (--backend: 'offline' -> 'openai'" in _flat(err)
    assert (work / "programs/train.jsonl").read_bytes() == before
    assert not (work / "programs/cache.sqlite").exists()


def test_offline_refuses_response_format_an_option_of_the_llms_requests(work, tmp_path, monkeypatch, capsys):
    """programs.md, --backend: "with `offline`, the options of the LLM's requests (`--model`, `--base-url`,
    `--temperature`, `--max-tokens`, ...) are refused, not ignored". `--response-format json_object` is the
    request's `response_format` field. Was wrong: offline ran and wrote the baseline's programs without a word."""
    out = tmp_path / "val.jsonl"
    code, _, err = leap_main(monkeypatch, capsys, "generate-programs", "--workdir", str(work), "--split", "val",
                             "--response-format", "json_object", "--out", str(out))
    assert code == 2 and "--response-format" in err, err
    assert not out.exists()


def test_offline_refuses_the_test_split_before_writing_anything(work, monkeypatch, capsys):
    """"a split with neither (EPIC's test split) is refused in one line before anything is written"."""
    code, _, err = leap_main(monkeypatch, capsys, "generate-programs", "--workdir", str(work), "--split", "test")
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1 and "test split" in lines[0], err
    assert not list((work / "programs").glob("test*"))


def test_batch_files_over_the_request_limit_are_split_and_hold_the_documented_lines(work, tmp_path, monkeypatch,
                                                                                     capsys):
    """--batch-file with --batch-max-requests 1: `OUT-1-of-N.jsonl` ... beside `OUT.jsonl` (no OUT.jsonl itself),
    each one `{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}` line; `custom_id` is
    `NARRATION_ID@CLIP_HASH@KEY`; "The body has `max_completion_tokens`"; `SPLIT.jsonl.batch.json` beside the output
    lists the segments waiting; the default backend with them is openai (the settings say so)."""
    out = tmp_path / "val.jsonl"
    batch = tmp_path / "b" / "batch.jsonl"
    code, _, err = leap_main(monkeypatch, capsys, "generate-programs", "--workdir", str(work), "--split", "val",
                             "--out", str(out), "--batch-file", str(batch), "--batch-max-requests", "1")
    assert code == 0, err
    files = sorted(p.name for p in batch.parent.iterdir())
    assert files == ["batch-1-of-4.jsonl", "batch-2-of-4.jsonl", "batch-3-of-4.jsonl", "batch-4-of-4.jsonl"]
    ids = []
    for name in files:
        lines = (batch.parent / name).read_text().splitlines()
        assert len(lines) == 1
        req = json.loads(lines[0])
        assert set(req) == {"custom_id", "method", "url", "body"}
        assert req["method"] == "POST" and req["url"] == "/v1/chat/completions"
        nid, clip_hash, key = req["custom_id"].split("@")
        assert re.fullmatch(r"[0-9a-f]+", clip_hash) and re.fullmatch(r"[0-9a-f]+", key)
        assert "max_completion_tokens" in req["body"] and "max_tokens" not in req["body"]
        assert req["body"]["model"] == "gpt-4o-mini"
        ids.append(nid)
    assert sorted(ids) == [f"P01_02_{i}" for i in range(4)]
    waiting = json.loads((tmp_path / "val.jsonl.batch.json").read_text())
    assert sorted(waiting["ids"]) == sorted(ids)
    assert json.loads((tmp_path / "val.jsonl.settings.json").read_text())["backend"] == "openai"


def test_batch_max_requests_without_batch_file_is_refused(work, tmp_path, monkeypatch, capsys):
    """`--batch-max-requests N`, `--batch-max-mb MB`: "with `--batch-file` ...; taken and unused with
    `--ingest-batch` (the same command), refused otherwise"."""
    for opt, val in (("--batch-max-requests", "5"), ("--batch-max-mb", "5")):
        code, _, err = leap_main(monkeypatch, capsys, "generate-programs", "--workdir", str(work), "--split", "val",
                                 "--out", str(tmp_path / "o.jsonl"), opt, val)
        assert code == 2 and opt in err, err
    assert not (tmp_path / "o.jsonl").exists()


def test_validate_programs_report_names(work, tmp_path, monkeypatch, capsys):
    """"for one FILE `NAME.jsonl` a `NAME.report.json` beside it"; "`--shard` parts of one count get, beside the
    first, the report their merge would (every part given) or one named by the parts given
    (`train.shard0of4.jsonl train.shard2of4.jsonl` -> `train.shard0+2of4.report.json`)"."""
    lines = (work / "programs/train.jsonl").read_text().splitlines(keepends=True)
    one = tmp_path / "one"
    one.mkdir()
    (one / "train.jsonl").write_text("".join(lines))
    code, _, err = leap_main(monkeypatch, capsys, "validate-programs", str(one / "train.jsonl"), "--workdir", str(work))
    assert code == 0, err
    assert (one / "train.report.json").exists()
    every = tmp_path / "every"
    every.mkdir()
    (every / "train.shard0of2.jsonl").write_text("".join(lines[:1]))
    (every / "train.shard1of2.jsonl").write_text("".join(lines[1:]))
    code, _, err = leap_main(monkeypatch, capsys, "validate-programs", str(every / "train.shard0of2.jsonl"),
                             str(every / "train.shard1of2.jsonl"), "--workdir", str(work))
    assert code == 0, err
    assert sorted(p.name for p in every.glob("*.report.json")) == ["train.report.json"]
    some = tmp_path / "some"
    some.mkdir()
    (some / "train.shard0of4.jsonl").write_text("".join(lines[:2]))
    (some / "train.shard2of4.jsonl").write_text("".join(lines[2:]))
    code, _, err = leap_main(monkeypatch, capsys, "validate-programs", str(some / "train.shard0of4.jsonl"),
                             str(some / "train.shard2of4.jsonl"), "--workdir", str(work))
    assert code == 0, err
    assert sorted(p.name for p in some.glob("*.report.json")) == ["train.shard0+2of4.report.json"]
    report = json.loads((some / "train.shard0+2of4.report.json").read_text())
    assert report["records"] == 4


def test_validate_programs_of_an_empty_file_exits_3_and_writes_a_report_of_coverage_0(work, tmp_path, monkeypatch,
                                                                                       capsys):
    """"a file that holds no program record at all (empty, as a run that wrote nothing leaves) is said so in one
    line, exit status 3, its report written with a coverage of 0"."""
    empty = tmp_path / "val.jsonl"
    empty.write_text("")
    code, out, err = leap_main(monkeypatch, capsys, "validate-programs", str(empty), "--workdir", str(work))
    assert code == 3
    said = [x for x in (out + err).splitlines() if x.strip()]
    assert len(said) == 1 and said[0].startswith("no program record in"), said
    report = json.loads((tmp_path / "val.report.json").read_text())
    assert report["records"] == 0 and report["coverage"]["fraction"] == 0.0 and report["coverage"]["segments"] == 4


def test_validate_programs_refuses_a_file_of_no_segment_of_the_split_and_writes_no_report(work, tmp_path,
                                                                                           monkeypatch, capsys):
    """"when none of the records is a segment of the split ..., the command refuses in one line, naming the split
    ..., and writes no report"."""
    f = tmp_path / "val.jsonl"
    f.write_bytes((work / "programs/train.jsonl").read_bytes())
    code, _, err = leap_main(monkeypatch, capsys, "validate-programs", str(f), "--workdir", str(work))
    assert code == 2 and "val split" in err, err
    assert not list(tmp_path.glob("*.report.json"))


# -- show-demo.md ---------------------------------------------------------------------------------------------------

def test_show_html_refuses_a_record_file_a_non_page_and_a_folder_before_printing(work, tmp_path, monkeypatch,
                                                                                  capsys):
    """"`--html` refuses, in one line and before anything is printed, a path that is one of the record files `leap
    show` reads ..., or an existing file that is not an HTML page"; a page written before is replaced; a folder
    (refused before report69) gets NARRATION_ID.html in it."""
    programs = work / "programs/train.jsonl"
    before = programs.read_bytes()
    csv_file = work / "kitchen/annotations/EPIC_100_train.csv"
    csv_before = csv_file.read_bytes()
    for target in (programs, csv_file):
        code, out, err = leap_main(monkeypatch, capsys, "show", "P01_01_1", "--workdir", str(work), "--html",
                                   str(target))
        assert code == 2 and out == "" and len([x for x in err.splitlines() if x.strip()]) == 1, (target, out, err)
    assert programs.read_bytes() == before and csv_file.read_bytes() == csv_before
    code, out, err = leap_main(monkeypatch, capsys, "show", "P01_01_1", "--workdir", str(work), "--html", str(tmp_path))
    assert code == 0 and (tmp_path / "P01_01_1.html").is_file(), err
    page = tmp_path / "page.html"
    for _ in range(2):
        code, out, err = leap_main(monkeypatch, capsys, "show", "P01_01_1", "--workdir", str(work), "--html",
                                   str(page))
        assert code == 0, err
    html = page.read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and "P01_01_1" in html
    assert "no descriptor record" in html  # "A page without a program or descriptor record says so"


def test_show_finds_a_shard_part_and_says_as_stored_without_class_files(work, tmp_path, monkeypatch, capsys):
    """`leap show` searches `WORKDIR/programs/SPLIT.jsonl` "(and their `--shard` parts, `SPLIT.shardIofN.jsonl`)";
    "Without EPIC's class files there the stored status is shown, marked "(as stored, not re-checked ...)"."""
    w = tmp_path / "w"
    (w / "programs").mkdir(parents=True)
    (w / "programs/train.shard1of2.jsonl").write_bytes((work / "programs/train.jsonl").read_bytes())
    code, out, err = leap_main(monkeypatch, capsys, "show", "P01_01_1", "--workdir", str(w))
    assert code == 0, err
    assert "valid (as stored, not re-checked" in _flat(out)
    code, out, err = leap_main(monkeypatch, capsys, "show", "P01_01_1", "--workdir", str(w), "--data",
                               str(work / "kitchen"))
    assert code == 0 and "as stored" not in out and re.search(r"P01_01_1 .* valid ", out), out


def test_the_demo_runs_the_stages_show_demo_md_names():
    """show-demo.md, `leap demo`: demo-data, extract, generate-programs, validate-programs, build-shards, train,
    evaluate, submit (`--ablate`: then `leap ablate`); "validate-programs of the train split also writes its page,
    `WORKDIR/programs/train.report.html`"; "Shards are built with `--frames 8 --short-side 80`"; `--force` passed to
    every stage that has it."""
    import typer

    from leap_cli.cli import app
    from leap_cli.demo import DemoConfig, plan

    stages = plan(DemoConfig(workdir=Path("W"), ablate=True))
    order = list(dict.fromkeys(s.argv[0] for s in stages))
    assert order == ["demo-data", "extract", "generate-programs", "validate-programs", "build-shards", "train",
                     "evaluate", "submit", "ablate"]
    val_train = next(s for s in stages if s.name == "validate-programs train")
    assert val_train.argv[val_train.argv.index("--html") + 1] == "W/programs/train.report.html"
    for s in (s for s in stages if s.argv[0] == "build-shards"):
        assert s.argv[s.argv.index("--frames") + 1] == "8" and s.argv[s.argv.index("--short-side") + 1] == "80"
    commands = typer.main.get_command(app).commands
    has_force = {n for n, c in commands.items() if any("--force" in getattr(p, "opts", []) for p in c.params)}
    forced = plan(DemoConfig(workdir=Path("W"), force=True))
    for s in forced:
        assert ("--force" in s.argv) == (s.argv[0] in has_force), s.argv


def test_demo_force_removes_the_records_reports_and_frame_cache_but_keeps_the_llm_cache(tmp_path):
    """"`--force` removes the demo's descriptor and program records (and their reports) and the frame cache ... (the
    LLM reply cache `programs/cache.sqlite` is kept)"."""
    from leap_cli.demo import start_over

    w = tmp_path
    made = [w / "descriptors/train.jsonl", w / "descriptors/train.jsonl.settings.json", w / "descriptors/test.jsonl",
            w / "programs/train.jsonl", w / "programs/train.jsonl.settings.json", w / "programs/train.report.json",
            w / "programs/train.report.html", w / "programs/val.report.json", w / "frame-cache/x/y.npy"]
    kept = [w / "programs/cache.sqlite", w / "kitchen/.leap-kitchen.json"]
    for p in made + kept:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    start_over(w)
    assert [p for p in made if p.exists()] == []
    assert all(p.exists() for p in kept)
