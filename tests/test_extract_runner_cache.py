"""extract's runner and frame cache: rgb_frames videos (with workers, without an fps), windows past a video's end,
the cache's source record and entries of other frames, and the summary's error examples."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from leap_cli.epic.layout import DatasetLayout
from leap_cli.epic.timing import MP4, FrameClock, frame_filename
from leap_cli.extract.cache import FRAMES_CHECKED, SOURCE, FrameCache, recognition_frames
from leap_cli.extract.runner import ExtractSummary, run_extract
from leap_cli.io import read_jsonl
from tests.csv_rows import edit_csv
from tests.extract_kitchen import FPS
from tests.test_extract_stage import _cfg, kitchen  # noqa: F401 (the 6-s kitchen, built once per module)

NO_FPS = "no fps for the video in EPIC_100_video_info.csv"


def _frames_copy(kitchen, root: Path) -> Path:
    """The kitchen with P01_01 as an EPIC rgb_frames folder (frame_0000000001.jpg ...), no MP4."""
    import cv2

    from leap_cli.media.video import VideoReader

    shutil.copytree(kitchen, root)
    mp4 = root / "P01" / "videos" / "P01_01.MP4"
    with VideoReader(mp4) as r:
        frames = r.read_frames(list(range(1, r.num_frames + 1)))
    folder = root / "P01" / "rgb_frames" / "P01_01"
    folder.mkdir(parents=True)
    for i, rgb in enumerate(frames, 1):
        cv2.imwrite(str(folder / frame_filename(i)), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    mp4.unlink()
    return root


@pytest.fixture(scope="module")
def frames_kitchen(kitchen, tmp_path_factory) -> Path:  # noqa: F811
    return _frames_copy(kitchen, tmp_path_factory.mktemp("frames") / "k")


def _without_video_info_row(root: Path, video_id: str) -> None:
    edit_csv(root / "annotations" / "EPIC_100_video_info.csv",
             lambda rows: rows.remove(next(r for r in rows if r["video_id"] == video_id)))


def _entries(cache: Path) -> dict[str, bytes]:
    return {str(p.relative_to(cache)): p.read_bytes() for p in sorted(cache.rglob("*.jpgs"))}


def test_an_rgb_frames_video_gives_the_same_records_and_cache_entries_with_workers(frames_kitchen, tmp_path):
    """A worker opens an rgb_frames video with the fps the parent read from video_info (a folder has none of its
    own) and fills the same frame cache."""
    comps = ("narration", "camera")
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    run_extract(_cfg(frames_kitchen, one, components=comps, frame_cache=tmp_path / "c1"))
    run_extract(_cfg(frames_kitchen, two, components=comps, frame_cache=tmp_path / "c2", workers=2))
    a = {r["narration_id"]: r for r in read_jsonl(one)}
    b = {r["narration_id"]: r for r in read_jsonl(two)}
    assert a == b
    assert [a[f"P01_01_{k}"]["components"]["camera"]["status"] for k in range(3)] == ["ok", "ok", "ok"]
    entries = _entries(tmp_path / "c1")
    assert len(entries) == 3 and entries == _entries(tmp_path / "c2")


def test_an_rgb_frames_video_missing_from_video_info_is_unavailable_not_read_at_50_fps(frames_kitchen, tmp_path):
    """A frames folder says no fps: its segments are unavailable with the reason (never read at an assumed 50)."""
    root = tmp_path / "k"
    shutil.copytree(frames_kitchen, root)
    _without_video_info_row(root, "P01_01")
    out = tmp_path / "t.jsonl"
    s = run_extract(_cfg(root, out, components=("camera",), frame_cache=tmp_path / "fc"))
    recs = {r["narration_id"]: r for r in read_jsonl(out)}
    for k in range(3):
        cam = recs[f"P01_01_{k}"]["components"]["camera"]
        assert cam["status"] == "unavailable" and cam["data"]["reason"] == NO_FPS, cam
    assert s.unavailable[f"camera: {NO_FPS}"] == 3 and s.outcome.failed == 0
    assert not list((tmp_path / "fc").rglob("*.jpgs"))


def test_an_mp4_missing_from_video_info_is_read_at_its_own_rate(kitchen, tmp_path):  # noqa: F811
    """A 25-fps MP4 with no video_info row: read at 25 (at an assumed 50 its 2-4 s and 4-6 s segments would be
    frames 101-300 of a 150-frame file)."""
    from leap_cli.media.video import VideoReader
    from leap_cli.media.write import write_mp4

    root = tmp_path / "k"
    shutil.copytree(kitchen, root)
    mp4 = root / "P01" / "videos" / "P01_01.MP4"
    with VideoReader(mp4) as r:
        frames = r.read_frames(list(range(1, r.num_frames + 1, 2)))
    write_mp4(mp4, list(frames), FPS // 2)
    _without_video_info_row(root, "P01_01")
    out = tmp_path / "t.jsonl"
    run_extract(_cfg(root, out, components=("camera",)))
    recs = {r["narration_id"]: r for r in read_jsonl(out)}
    assert [recs[f"P01_01_{k}"]["components"]["camera"]["status"] for k in range(3)] == ["ok", "ok", "ok"]


def test_the_frame_cache_holds_no_entry_of_a_window_past_the_videos_end(kitchen, tmp_path):  # noqa: F811
    """A window that ends past the last frame gets no entry: not when its 16 recognition frames fall past the end,
    nor when they all fall inside it (the whole window must be decodable; nothing is clamped)."""
    root = tmp_path / "k"
    shutil.copytree(kitchen, root)

    def past_the_end(rows):
        by_id = {r["narration_id"]: r for r in rows}
        by_id["P01_01_1"].update(stop_timestamp="00:00:07.00")  # 2-7 s: frames 101-350 of 300
        by_id["P01_01_2"].update(stop_timestamp="00:00:06.04")  # 4-6.04 s: frames 201-302 of 300

    edit_csv(root / "annotations" / "EPIC_100_train.csv", past_the_end)
    layout = DatasetLayout.open(root)
    segs = {s.narration_id: s for s in layout.annotations().segments("train")}
    clock = FrameClock(MP4, FPS, 6 * FPS)
    assert clock.check(*clock.segment_span(segs["P01_01_2"]))  # the window is not decodable ...
    assert max(recognition_frames(clock, segs["P01_01_2"], 16)) <= 6 * FPS  # ... though its 16 frames are inside
    assert max(recognition_frames(clock, segs["P01_01_1"], 16)) > 6 * FPS
    cache = FrameCache(tmp_path / "fc")
    run_extract(_cfg(root, tmp_path / "t.jsonl", components=("narration",), frame_cache=cache.root))
    assert cache.path("P01_01", "P01_01_0").is_file()
    for nid in ("P01_01_1", "P01_01_2"):
        assert not cache.path("P01_01", nid).exists(), nid
        assert cache.load("P01_01", nid, recognition_frames(clock, segs[nid], 16)) is None


def test_extract_records_the_source_its_cache_entries_come_from(frames_kitchen, kitchen, tmp_path):  # noqa: F811
    """The runner's ``claim``: source.json holds the video's stat (``same_source`` of that stat, and of no other);
    an rgb_frames video's entries of an earlier leap (no ``frames_checked``) go, even of the same stat, and an
    MP4's entries of a leap before source.json are kept."""
    cache = FrameCache(tmp_path / "fc")
    layout = DatasetLayout.open(frames_kitchen)
    stat = layout.source_stat("P01_01")
    old = cache.root / "P01_01" / f"P01_01_9{cache.suffix}"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"an earlier leap's entry")
    (old.parent / SOURCE).write_text(json.dumps({"source_stat": stat}))
    run_extract(_cfg(frames_kitchen, tmp_path / "t.jsonl", components=("narration",), frame_cache=cache.root,
                     limit=1))
    assert not old.exists() and cache.path("P01_01", "P01_01_0").is_file()
    assert cache.source_of("P01_01") == stat and json.loads((old.parent / SOURCE).read_text())[FRAMES_CHECKED]
    assert cache.same_source("P01_01", stat, frames=True)
    assert not cache.same_source("P01_01", [stat[0] + 1, stat[1]], frames=True)
    assert not cache.same_source("P01_01", [stat[0], stat[1] + 1], frames=True)

    mp4_cache = FrameCache(tmp_path / "fc2")
    kept = mp4_cache.root / "P01_01" / f"P01_01_9{mp4_cache.suffix}"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"an entry of a leap before source.json")
    run_extract(_cfg(kitchen, tmp_path / "m.jsonl", components=("narration",), frame_cache=mp4_cache.root, limit=1))
    assert kept.exists() and mp4_cache.source_of("P01_01") == DatasetLayout.open(kitchen).source_stat("P01_01")


def _stored(tmp_path, start: float, stop: float) -> tuple[FrameCache, list[int]]:
    """A cache entry of P01_01_0 stored for the 16 frames of ``start``-``stop`` s (a bare context, grey images)."""
    cache = FrameCache(tmp_path / "fc")
    seg = SimpleNamespace(video_id="P01_01", narration_id="P01_01_0", start=start, stop=stop)
    clock = FrameClock(MP4, FPS, 6 * FPS)
    ctx = SimpleNamespace(clock=clock, segment=seg, read_frames=lambda *a: None,
                          images_at_most=lambda nums, side, colour: [np.full((8, 8, 3), n, np.uint8) for n in nums])
    assert cache.store(ctx, seg)
    return cache, recognition_frames(clock, seg, cache.frames)


def test_a_cache_entry_is_served_only_for_the_frames_it_was_stored_for(tmp_path):
    """An entry made for other times of the segment (other annotations) is neither held nor loaded; the same
    frames are, and storing other times replaces it."""
    cache, frames = _stored(tmp_path, 0.0, 2.0)
    path = cache.path("P01_01", "P01_01_0")
    assert cache.holds(path, frames) and cache.frame_count(path) == len(frames) == 16
    blobs = cache.load("P01_01", "P01_01_0", frames)
    assert blobs is not None and len(blobs) == 16 and all(b[:2] == b"\xff\xd8" for b in blobs)
    for other in ([f + 1 for f in frames], frames[:-1], frames[:-1] + [frames[-1] + 1]):
        assert not cache.holds(path, other), other
        assert cache.load("P01_01", "P01_01_0", other) is None, other
    _, later = _stored(tmp_path, 1.0, 3.0)
    assert cache.holds(path, later) and not cache.holds(path, frames)
    assert cache.load("P01_01", "P01_01_0", frames) is None and cache.load("P01_01", "P01_01_0", later)


def test_same_source_without_a_source_record(tmp_path):
    """No (or an unreadable) source.json: entries of a leap before it existed. An MP4's are trusted (its source is
    not known to differ; ``claim`` records it on the next extract), an rgb_frames video's are not (that leap cached
    damaged JPEGs: ``FRAMES_CHECKED``)."""
    cache = FrameCache(tmp_path / "fc")
    (tmp_path / "fc" / "P01_01").mkdir(parents=True)
    for record in (None, "not json"):
        if record is not None:
            (tmp_path / "fc" / "P01_01" / SOURCE).write_text(record)
        assert cache.source_of("P01_01") is None
        assert cache.same_source("P01_01", [10, 20]) and cache.same_source("P01_01", None)
        assert not cache.same_source("P01_01", [10, 20], frames=True)


def _record(nid: str, status: dict[str, str]) -> dict:
    return {"narration_id": nid, "components": {
        name: {"status": st, "data": {"error": "boom", "detail": "boom (P01_01.MP4)"} if st == "error" else {}}
        for name, st in status.items()}}


def test_the_summary_names_three_segments_of_an_error_and_counts_the_rest(monkeypatch):
    """Five segments, each with two components failing with one message: one error of 10, 5 segments, the first
    3 named and "2 more"."""
    import io

    from rich.console import Console

    import leap_cli.commands.extract as command

    s = ExtractSummary(out=Path("t.jsonl"))
    ids = [f"P01_01_{k}" for k in range(5)]
    for nid in ids:
        s.add(_record(nid, {"narration": "ok", "camera": "error", "hands": "error"}), {})
    s.add(_record("P01_01_9", {"camera": "ok"}), {})
    (g,) = s.errors.values()
    assert g["segments"] == ids[:3] and g["n_segments"] == 5 and g["count"] == s.error_count == 10
    assert g["components"] == ["camera", "hands"] and s.outcome.failed == 5
    buf = io.StringIO()
    monkeypatch.setattr(command, "console", Console(file=buf, width=300))
    command._print_summary(s)
    assert ("camera, hands of 5 segments (P01_01_0, P01_01_1, P01_01_2 and 2 more): boom (P01_01.MP4)"
            in buf.getvalue()), buf.getvalue()


@pytest.mark.parametrize("field, value", [("cache_frames", 0), ("cache_frames", -1), ("cache_short_side", 8),
                                          ("cache_quality", 0), ("cache_quality", 101)])
def test_a_config_through_the_api_refuses_cache_settings_the_cli_refuses(tmp_path, field, value):
    """A cache of 0 frames would have been silently no cache, and -1 a cache of empty entries."""
    from leap_cli.errors import LeapError
    from leap_cli.extract.runner import ExtractConfig

    with pytest.raises(LeapError, match=f"{field}={value} is out of range"):
        ExtractConfig(data=tmp_path, split="train", out=tmp_path / "o.jsonl", frame_cache=tmp_path / "c",
                      **{field: value})
    ExtractConfig(data=tmp_path, split="train", out=tmp_path / "o.jsonl", frame_cache=None, **{field: value})


def test_a_resume_removes_a_killed_writers_temp_file_from_a_video_folder_it_does_not_write_again(
        kitchen, tmp_path, monkeypatch):  # noqa: F811
    """A worker killed mid-write leaves .KEY...HOST-PID....tmp in frame-cache/VIDEO/; a resume whose segments of that
    video are all done writes no entry there, so no write of it swept the folder: the run's start does."""
    import socket
    import subprocess
    import sys

    from leap_cli import io as leap_io

    out, cache = tmp_path / "t.jsonl", tmp_path / "fc"
    run_extract(_cfg(kitchen, out, components=("narration",), frame_cache=cache))
    folder = next(p for p in cache.iterdir() if p.is_dir())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # (a pid that has exited)
    host = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname()) or "host"
    left = folder / f".P01_01_0.v3.s256q90.jpgs.{host}-{dead}.abcdefgh.tmp"
    alive = folder / f".P01_01_1.v3.s256q90.jpgs.{host}-{os.getppid()}.abcdefgh.tmp"  # a live writer's: kept
    left.write_bytes(b"half")
    alive.write_bytes(b"half")
    monkeypatch.setattr(leap_io, "_SWEPT", set())  # (the resume is another process: no folder swept yet)
    s = run_extract(_cfg(kitchen, out, components=("narration",), frame_cache=cache))
    assert s.done_before == s.segments and not left.exists() and alive.exists()
