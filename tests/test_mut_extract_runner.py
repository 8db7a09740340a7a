"""extract's runner (leap_cli/extract/runner.py): what a mutation run found untested -- --limit 0, the progress
bar's total on resume, the failure summary's accounting (first cause, seconds, unavailable reasons), --retry-errors'
choice of records, and the checks of the options."""

from __future__ import annotations

from pathlib import Path

import pytest

from leap_cli.errors import LeapError
from leap_cli.extract.runner import ExtractConfig, ExtractSummary, run_extract
from leap_cli.io import read_jsonl
from tests.test_extract_stage import _cfg, kitchen  # noqa: F401 (the 6-s kitchen, built once per module)


def _rec(nid: str, **components: dict) -> dict:
    return {"narration_id": nid, "components": components}


def test_limit_zero_selects_no_segment(kitchen, tmp_path):  # noqa: F811
    """--limit 0 (the CLI allows it) means the first 0 segments, not the whole split."""
    out = tmp_path / "t.jsonl"
    s = run_extract(_cfg(kitchen, out, components=("narration",), limit=0))
    assert s.segments == 0 and s.written == 0
    assert not out.exists() or read_jsonl(out) == []


def test_on_start_gets_the_selected_total_and_those_done_before(kitchen, tmp_path):  # noqa: F811
    """The progress bar starts at (4 selected, 2 done before) on a resume, not at (2, 2)."""
    out = tmp_path / "t.jsonl"
    run_extract(_cfg(kitchen, out, components=("narration",), limit=2))
    seen = []
    s = run_extract(_cfg(kitchen, out, components=("narration",)),
                    on_start=lambda total, done: seen.append((total, done)))
    assert seen == [(4, 2)] and s.written == 2


def test_a_record_with_two_failed_components_fails_under_its_first():
    s = ExtractSummary(out=Path("t.jsonl"))
    s.add(_rec("P01_01_0", audio={"status": "error", "data": {"error": "bad wav"}},
               hands={"status": "error", "data": {"error": "bad dets"}}), {})
    assert s.outcome.failed == 1 and dict(s.outcome.causes) == {"audio: bad wav": 1}


def test_unavailable_reasons_group_by_their_words_and_keep_the_first_example_and_detail():
    """Two windows past a video's end (other numbers, other details) are one reason, shown with the first of them
    ("e.g. ..." and "first: ..." in the summary)."""
    s = ExtractSummary(out=Path("t.jsonl"))
    for nid, end, detail in (("P01_01_0", 7.5, "P01_01.MP4: 300 frames"), ("P01_01_1", 9.25, "P01_01.MP4: 301 frames")):
        data = {"reason": f"the window ends at {end} s", "cause": "video", "detail": detail}
        s.add(_rec(nid, camera={"status": "unavailable", "data": data}), {})
    key = "camera: the window ends at N s"
    assert dict(s.unavailable) == {key: 2} and s.counts["camera"]["unavailable"] == 2
    assert s.unavailable_first[key] == "camera: the window ends at 7.5 s"
    assert s.unavailable_detail[key] == "P01_01.MP4: 300 frames"
    assert s.outcome.failed == 0 and s.outcome.attempted == 2


def test_unavailable_reasons_keep_the_numbers_inside_names_apart():
    """Only a number on its own becomes N: the 101 of P01_101 is part of a name, so two videos stay two reasons."""
    s = ExtractSummary(out=Path("t.jsonl"))
    for vid in ("P01_101", "P01_102"):
        s.add(_rec(vid + "_0", camera={"status": "unavailable", "data": {"reason": f"no poses for {vid} in 2 files"}}),
              {})
    assert dict(s.unavailable) == {"camera: no poses for P01_101 in N files": 1,
                                   "camera: no poses for P01_102 in N files": 1}


def test_the_summary_sums_each_components_seconds_over_the_records():
    s = ExtractSummary(out=Path("t.jsonl"))
    ok = {"status": "ok", "data": {}}
    s.add(_rec("P01_01_0", camera=ok), {"camera": 1.5, "decode": 0.25})
    s.add(_rec("P01_01_1", camera=ok), {"camera": 2.0, "decode": 0.5, "frame-cache": 0.125})
    assert dict(s.seconds) == {"camera": 3.5, "decode": 0.75, "frame-cache": 0.125}
    assert s.written == 2 and s.counts["camera"]["ok"] == 2


def test_a_frame_past_the_videos_last_is_unavailable_not_read(kitchen):  # noqa: F811
    """A request for frame 301 of a 300-frame video (6 s at 50 fps), inside a segment that ends at its last
    frame, is refused as past the decodable end (not the file's fault); frame 300 is served."""
    from leap_cli.epic.layout import DatasetLayout
    from leap_cli.extract.base import FramesUnavailable
    from leap_cli.extract.runner import _Video

    layout = DatasetLayout.open(kitchen)
    ann = layout.annotations()
    seg = next(s for s in ann.segments("train") if s.narration_id == "P01_01_2")
    video = _Video(layout, "P01_01", ann.fps("P01_01"))
    try:
        video.start_segment(seg, {})
        assert video.read([300], None, seg).shape == (1, 144, 192, 3)
        assert video.clock.num_frames == 300
        with pytest.raises(FramesUnavailable) as e:
            video.images([299, 301], None, seg)
        # the annotation and a whole file disagree: not the file's fault (--retry-errors would not change it)
        assert "after the decodable end of the video (6.00 s, 300 frames)" in e.value.reason, e.value.reason
        assert not e.value.video
    finally:
        video.close()


def test_a_components_seconds_leave_out_the_decode_it_waited_for(kitchen, tmp_path, monkeypatch):  # noqa: F811
    """The summary's table shows decode apart from the components: a slow decode (0.6 s a segment here) is counted
    once, under decode, so the seconds of a one-process run add up to no more than its wall time."""
    import time

    from leap_cli.media.video import VideoReader

    real = VideoReader.decode

    def slow(self, *a, **kw):
        time.sleep(0.6)
        yield from real(self, *a, **kw)

    monkeypatch.setattr(VideoReader, "decode", slow)
    s = run_extract(_cfg(kitchen, tmp_path / "t.jsonl", components=("camera",), limit=2))
    assert s.written == 2 and s.counts["camera"]["ok"] == 2  # two segments of one video: two decodes
    assert s.seconds["decode"] >= 1.2
    assert s.seconds["camera"] + s.seconds["decode"] <= s.wall, dict(s.seconds)



def test_the_frames_planned_up_to_the_videos_last_are_decoded_in_the_first_pass(kitchen, monkeypatch):  # noqa: F811
    """Two components announce frames 250 and 300 (the last of the 300-frame video): the first read decodes both
    in one pass, and the second is served from memory."""
    from leap_cli.epic.layout import DatasetLayout
    from leap_cli.extract.base import Component
    from leap_cli.extract.runner import iter_video
    from leap_cli.media.video import VideoReader

    class Reads(Component):
        def __init__(self, name, frame):
            self.name, self.frame = name, frame

        def frames_wanted(self, ctx):
            return [([self.frame], None)]

        def describe(self, ctx):
            return {"status": "ok", "data": {"shape": list(ctx.read_frames([self.frame], None).shape)}}

    real, calls = VideoReader.decode, []

    def counted(self, frames, *a, **kw):
        calls.append(sorted(frames))
        yield from real(self, frames, *a, **kw)

    monkeypatch.setattr(VideoReader, "decode", counted)
    layout = DatasetLayout.open(kitchen)
    ann = layout.annotations()
    seg = next(s for s in ann.segments("train") if s.narration_id == "P01_01_2")
    ((record, _),) = iter_video(layout, [seg], [Reads("first", 250), Reads("last", 300)], ann.fps("P01_01"))
    assert {c["data"]["shape"][0] for c in record["components"].values()} == {1}
    assert calls == [[250, 300]]


def _edit_row(root: Path, nid: str, **cols) -> None:
    from tests.csv_rows import edit_csv

    edit_csv(root / "annotations" / "EPIC_100_train.csv",
             lambda rows: next(r for r in rows if r["narration_id"] == nid).update(cols))


def test_a_millisecond_start_is_kept_to_the_millisecond_and_the_record_is_resumed(kitchen, tmp_path):  # noqa: F811
    """A segment from 2.345 s: its record says 2.345 (as EPIC's timestamps are), and a rerun keeps it as done (a
    start rounded otherwise would read as a record of other annotations, made again on every run)."""
    import shutil

    root = tmp_path / "k"
    shutil.copytree(kitchen, root)
    _edit_row(root, "P01_01_1", start_timestamp="00:00:02.345", start_frame="118")
    out = tmp_path / "t.jsonl"
    cfg = _cfg(root, out, components=("narration",))
    run_extract(cfg)
    assert next(r for r in read_jsonl(out) if r["narration_id"] == "P01_01_1")["start"] == 2.345
    s = run_extract(cfg)
    assert s.written == 0 and s.reannotated == 0 and s.done_before == 4


def test_the_audio_of_a_segment_of_no_length_is_read_over_a_short_window(kitchen, tmp_path):  # noqa: F811
    """A row whose stop is its start (it parses; EPIC's own files hold none) still gets its audio described."""
    import shutil

    root = tmp_path / "k"
    shutil.copytree(kitchen, root)
    _edit_row(root, "P01_01_0", start_timestamp="00:00:01.00", stop_timestamp="00:00:01.00", start_frame="51",
              stop_frame="51")
    out = tmp_path / "t.jsonl"
    run_extract(_cfg(root, out, components=("audio",), limit=1))
    (rec,) = read_jsonl(out)
    assert rec["narration_id"] == "P01_01_0" and rec["start"] == rec["stop"] == 1.0
    assert rec["components"]["audio"]["status"] == "ok", rec["components"]["audio"]


def _options(tmp_path, **kw) -> ExtractConfig:
    return ExtractConfig(data=tmp_path, split="train", out=tmp_path / "t.jsonl", **kw)


def test_weights_named_coco_and_openai_are_names_not_missing_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # (no file of either name here)
    _options(tmp_path, components=("objects", "hands"), detector_weights=Path("coco"),
             clip_weights=Path("openai")).check_options()
    with pytest.raises(LeapError, match="--detector-weights: file not found"):
        _options(tmp_path, components=("objects",), detector_weights=Path("openai")).check_options()


def test_clip_weights_are_checked_for_hands_alone(tmp_path):
    """--clip-weights serves hands as well as objects: a typo in its path is refused before any work."""
    with pytest.raises(LeapError, match="--clip-weights: file not found"):
        _options(tmp_path, components=("hands",), clip_weights=tmp_path / "nosuch.pt").check_options()
    _options(tmp_path, components=("narration",), clip_weights=tmp_path / "nosuch.pt").check_options()  # unused


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1", "mps"])
def test_the_devices_torch_knows_are_accepted(tmp_path, device):
    _options(tmp_path, components=("narration",), device=device).check_options()


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "CPU"])
def test_other_devices_are_refused(tmp_path, device):
    with pytest.raises(LeapError, match="is not a device"):
        _options(tmp_path, components=("narration",), device=device).check_options()


def test_a_rerun_with_the_same_options_leaves_the_config_file_untouched(kitchen, tmp_path):  # noqa: F811
    import json
    import os

    from leap_cli.extract.runner import config_path

    out = tmp_path / "train.jsonl"
    cfg = _cfg(kitchen, out, components=("narration",), limit=1)
    run_extract(cfg)
    conf = config_path(out)
    assert conf.name == "train.config.json"
    assert json.loads(conf.read_text())["components"] == ["narration"]
    os.utime(conf, ns=(1_000_000_000, 1_000_000_000))
    run_extract(cfg)
    assert conf.stat().st_mtime_ns == 1_000_000_000


def test_detection_times_of_a_video_of_unknown_fps_are_not_invented_at_50(kitchen, tmp_path):  # noqa: F811
    """P01_01 without its video_info row or MP4, its rows' frame columns at 60 fps (0-2 s = frames 1-120): the
    right hand's contact (detection frames 21-80) is at (21-1)/60 = 0.33 s, not (21-1)/50 = 0.4 s; without a
    rate the hands component says it is unavailable rather than time it at an assumed one (it said ok, at 50)."""
    import shutil

    from tests.csv_rows import edit_csv

    root = tmp_path / "k"
    shutil.copytree(kitchen, root)
    edit_csv(root / "annotations" / "EPIC_100_video_info.csv",
             lambda rows: rows.remove(next(r for r in rows if r["video_id"] == "P01_01")))
    (root / "P01" / "videos" / "P01_01.MP4").unlink()
    _edit_row(root, "P01_01_0", start_frame="1", stop_frame="120")
    out = tmp_path / "t.jsonl"
    run_extract(_cfg(root, out, components=("hands",), limit=1))
    (rec,) = read_jsonl(out)
    hands = rec["components"]["hands"]
    assert hands["status"] == "unavailable" and "no fps for the video" in hands["data"]["reason"], hands


def test_a_records_clip_text_names_the_segments_own_window_in_the_video(kitchen, tmp_path):  # noqa: F811
    out = tmp_path / "t.jsonl"
    run_extract(_cfg(kitchen, out, components=("narration",), limit=2))
    recs = {r["narration_id"]: r for r in read_jsonl(out)}
    assert "2.00-4.00 s (2.0 s long)" in recs["P01_01_1"]["text"], recs["P01_01_1"]["text"]
    assert (recs["P01_01_1"]["start"], recs["P01_01_1"]["stop"]) == (2.0, 4.0)
    assert (recs["P01_01_1"]["start_frame"], recs["P01_01_1"]["stop_frame"]) == (101, 200)


def test_row_notes_name_only_the_rows_selected_for_this_run(kitchen, tmp_path, caplog):  # noqa: F811
    """A row whose frame columns disagree with its timestamps is warned of when this run (--limit, --shard)
    selects it, not when it is another part's."""
    import shutil

    root = tmp_path / "k"
    shutil.copytree(kitchen, root)
    _edit_row(root, "P01_01_2", stop_frame="330")  # 6.0 s at 50 fps is frame 300
    with caplog.at_level("WARNING"):
        run_extract(_cfg(root, tmp_path / "a.jsonl", components=("narration",), limit=2))
    assert "disagree" not in caplog.text
    with caplog.at_level("WARNING"):
        run_extract(_cfg(root, tmp_path / "b.jsonl", components=("narration",), limit=3))
    assert "P01_01_2" in caplog.text and "disagree" in caplog.text
