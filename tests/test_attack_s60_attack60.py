"""Attack on session 60's changes (helper "attack60"): build-shards' skip of a window past the frames that decode
(shards/writer.py ``encode_video.opened``, ``SampleJob.segment``/``.last``, ``VideoJob.clock``), the anticipation
segments mode's end at ``FrameClock.start_time`` (the CSV start_frame on rgb_frames), ``io.pid_alive`` (a zombie is
dead), ``format.differ_note``.

Kitchens are built here with cv2, as tests/test_attack_s60_frames60.py builds them (its helpers, copied and cut
down): every frame carries its own number in four grey bands, so a test reads back from the stored shard frames
which frame leap really decoded. The one EPIC row quoted (P29_05_563: start 00:30:20.75, stop 00:30:21.75, its video
P29_05 1821.7366 s at 59.94 fps) is from EPIC_100_validation.csv / EPIC_100_video_info.csv of
github.com/epic-kitchens/epic-kitchens-100-annotations (CC BY-NC 4.0, Damen et al., "Rescaling Egocentric Vision",
IJCV 2022), as ../shared/epic100 holds them.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.test_attack_s60_frames60 import coded, decode, leap, ts  # (the frames' own numbers)

EPIC = Path(__file__).parent / "data" / "epic100"
COLUMNS = ("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,"
           "stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes")
W, H = 64, 48
SECONDS = 6.0
FPS = 60.0


# ---- helpers ------------------------------------------------------------------------------------------------------

def make_root(root: Path, segments: dict[str, list[tuple]], *, frames: dict[str, int] | None = None,
              mp4: bool = False) -> Path:
    """An EPIC-layout root (validation split) of the videos ``segments`` names ({video: [(suffix, start, stop)]}),
    each ``SECONDS`` long at 60 fps in video_info. rgb_frames folders (``frames[video]`` files, default all 360,
    frame n coded 1000 + n), or MP4s (``mp4``: 360 frames, frame k coded k)."""
    from leap_cli.epic.timing import csv_frame

    frames = frames or {}
    ann = root / "annotations"
    ann.mkdir(parents=True)
    for f in ("EPIC_100_verb_classes.csv", "EPIC_100_noun_classes.csv"):
        shutil.copy(EPIC / f, ann / f)
    rows, info = [COLUMNS], ["video_id,duration,fps,resolution"]
    for vid, segs in segments.items():
        for suffix, a, b in segs:
            rows.append(f"{vid}_{suffix},{vid[:3]},{vid},{ts(a)},{ts(a)},{ts(b)},{csv_frame(a, FPS)},"
                        f"{csv_frame(b, FPS)},take plate,take,0,plate,2,['plate'],[2]")
        info.append(f"{vid},{SECONDS},{FPS},{W}x{H}")
        n = frames.get(vid, int(SECONDS * FPS))
        if mp4:
            from leap_cli.media.write import write_mp4

            (root / vid[:3] / "videos").mkdir(parents=True, exist_ok=True)
            write_mp4(root / vid[:3] / "videos" / f"{vid}.MP4", (coded(k)[:, :, ::-1] for k in range(1, n + 1)), FPS,
                      bit_rate=2_000_000, gop=12)
        else:
            write_frames(root, vid, 1, n)
    (ann / "EPIC_100_validation.csv").write_text("\n".join(rows) + "\n")
    (ann / "EPIC_100_video_info.csv").write_text("\n".join(info) + "\n")
    return root


def write_frames(root: Path, vid: str, first: int, last: int) -> None:
    d = root / vid[:3] / "rgb_frames" / vid
    d.mkdir(parents=True, exist_ok=True)
    for n in range(first, last + 1):
        cv2.imwrite(str(d / f"frame_{n:010d}.jpg"), coded(1000 + n), [cv2.IMWRITE_JPEG_QUALITY, 95])


def build_args(root: Path, work: Path, out: str, *extra: str) -> list[str]:
    return ["build-shards", "--data", str(root), "--workdir", str(work), "--split", "val", "--out", str(work / out),
            "--short-side", str(H), *extra]


def read_shards(folder: Path) -> dict:
    """{key: {"meta", "codes": {field: decoded number}}} and the manifest under None."""
    from leap_cli.shards.format import iter_tar_samples

    manifest = json.loads((folder / "manifest.json").read_text())
    got: dict = {None: manifest}
    for shard in manifest["shards"]:
        for key, fields in iter_tar_samples(folder / shard["name"]):
            got[key] = {"meta": json.loads(fields["json"]),
                        "codes": {f: decode(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR))
                                  for f, b in fields.items() if f.endswith(".jpg")}}
    return got


def shards(root: Path, work: Path, *extra: str, out: str = "s") -> dict:
    code, text = leap(*build_args(root, work, out, *extra))
    assert (work / out / "manifest.json").exists(), text[-3000:]
    got = read_shards(work / out)
    got["text"] = text
    return got


def observed(sample: dict) -> list[int]:
    return [sample["codes"][k] for k in sorted(sample["codes"]) if k[0] == "f" and k[1].isdigit()]


def extract_camera(root: Path, work: Path) -> dict[str, dict]:
    code, text = leap("extract", "--data", str(root), "--workdir", str(work), "--split", "val", "--components",
                      "camera", "--frame-cache", "none")
    assert code == 0, text[-3000:]
    recs = map(json.loads, (work / "descriptors" / "val.jsonl").read_text().splitlines())
    return {r["narration_id"]: r["components"]["camera"] for r in recs}


# ---- a stop less than a frame past the video's end (P29_05_563) -----------------------------------------------------

def test_p29_05_563_geometry_plans_a_frame_past_the_end_at_32_frames():
    """The cause of two faults fixed the same session (the tests below), on EPIC's own row: build-shards plans a recognition sample with a clock
    that does not know the video's frame count yet (plan_samples' ``clock(vid)``), so FrameClock.segment_span's
    "less than a frame past the end" rule cannot apply, and --frames 32 (UniFormerV2 takes 8, 16 or 32) samples
    frame 109196 of a video of 109195; with the count known the same rule ends the window at 109195."""
    from types import SimpleNamespace

    from leap_cli.epic.timing import MP4, FrameClock, parse_timestamp
    from leap_cli.extract.cache import recognition_frames

    fps = 59.9400599400599
    seg = SimpleNamespace(start=parse_timestamp("00:30:20.75"), stop=parse_timestamp("00:30:21.75"),
                          start_frame=109245, stop_frame=109305)
    known = FrameClock(MP4, fps, 109195, 1821.7366)
    assert max(recognition_frames(known, seg, 32)) == 109195
    planned = FrameClock(MP4, fps, None, 1821.7366)  # what build_split's clock() gives plan_samples
    assert max(recognition_frames(planned, seg, 32)) == 109196  # (one past the end: the read fails, the sample skipped)


def test_build_shards_stores_a_segment_stopping_less_than_a_frame_past_the_end(tmp_path):
    """docs/media.md: a stop less than a frame past the end of a video that is not cut short (EPIC's 10-ms
    timestamps put P29_05_563 there) ends at its last frame. A 6.00 s MP4 (360 frames, video_info 6.0 s) and a
    segment 5.90-6.01 s: build-shards must store it, its frames up to 360, not skip it. Was wrong: the plan's clock
    knew no frame count and asked frame 361."""
    root = make_root(tmp_path / "k", {"P01_01": [("0", 5.90, 6.01), ("1", 1.0, 2.0)]}, mp4=True)
    got = shards(root, tmp_path / "w", "--frames", "4")
    assert got[None]["skipped"] == [], got[None]["skipped"]
    sample = got["P01_01_0"]
    assert max(sample["meta"]["frame_indices"]) == 360
    assert observed(sample) == sample["meta"]["frame_indices"]


@pytest.mark.parametrize("first", [False, True])
def test_extract_keeps_the_camera_of_a_segment_stopping_less_than_a_frame_past_the_end(tmp_path, first):
    """The same segment in extract: its camera is read (ok) whether or not it is the first segment of its video
    that extract reads (a resumed or --retry-errors run reads it first; so does a worker that opens the video). Was
    wrong for the first: ctx.clock was the video's before it was opened (no frame count), and the camera's spread
    window asked frame 361 of 360."""
    segs = [("0", 5.90, 6.01), ("1", 1.0, 2.0)] if first else [("1", 1.0, 2.0), ("0", 5.90, 6.01)]
    root = make_root(tmp_path / "k", {"P01_01": segs}, mp4=True)
    cams = extract_camera(root, tmp_path / "w")
    assert cams["P01_01_1"]["status"] == "ok"
    assert cams["P01_01_0"]["status"] == "ok", cams["P01_01_0"]


# ---- an MP4 whose header announces more frames than decode ----------------------------------------------------------

def test_a_segment_past_what_a_byte_cut_mp4_decodes_is_skipped_at_any_frames(tmp_path):
    """docs/shards.md "Bad input": a window that ends past the frames that decode is skipped "whatever frames it
    samples, with extract's reason, so that both stages leave out the same segments". An MP4 with its index at the
    front (faststart) cut at half its bytes announces 360 frames and decodes M: a segment ending 3 frames past M
    is unavailable in extract and skipped by build-shards --frames 16, and must be by --frames 4 too, whose chunk
    centres all fall at or before M. Was wrong: the check used the header's count, and --frames 4 stored it."""
    from leap_cli.epic.timing import MP4, FrameClock, csv_frame, pick_frames
    from leap_cli.media.video import decodable_frames
    from leap_cli.media.write import write_mp4

    root = make_root(tmp_path / "k", {"P01_01": []}, frames={"P01_01": 0})
    whole = tmp_path / "whole.mp4"
    write_mp4(whole, (coded(k)[:, :, ::-1] for k in range(1, 361)), FPS, bit_rate=2_000_000, gop=12,
              container_options={"movflags": "faststart"})
    (root / "P01" / "videos").mkdir(parents=True)
    cut = root / "P01" / "videos" / "P01_01.MP4"
    data = whole.read_bytes()
    cut.write_bytes(data[:len(data) // 2])
    announced, good = decodable_frames(cut)
    assert announced == 360 and 80 < good < 300, (announced, good)
    start, stop = round((good - 60) / FPS, 2), round((good + 3) / FPS, 2)
    clock = FrameClock(MP4, FPS)
    a, b = clock.frame_at(start), clock.last_before(stop)
    assert b > good and max(pick_frames(a, b, 4)) <= good  # (the premise: the window ends past M, the centres not)
    (root / "annotations" / "EPIC_100_validation.csv").write_text(
        COLUMNS + f"\nP01_01_0,P01,P01_01,{ts(start)},{ts(start)},{ts(stop)},{csv_frame(start, FPS)},"
                  f"{csv_frame(stop, FPS)},take plate,take,0,plate,2,['plate'],[2]\n")
    work = tmp_path / "w"
    assert extract_camera(root, work)["P01_01_0"]["status"] == "unavailable"
    assert [s["narration_id"] for s in shards(root, work, "--frames", "16", out="s16")[None]["skipped"]] == ["P01_01_0"]
    four = shards(root, work, "--frames", "4", out="s4")
    assert [s["narration_id"] for s in four[None]["skipped"]] == ["P01_01_0"]


# ---- a short rgb_frames folder: the skip, its retry, --workers 2, anticipation near the end --------------------------

def test_a_short_folder_skip_is_tried_again_once_the_rest_of_its_frames_are_there(tmp_path):
    """A folder of 120 of its 360 frames: a segment ending past frame 120 is skipped with the reason to extract the
    tar again, though its 4 sampled frames might have fit; once the rest of the files are there (the tar extracted
    again: the folder's stat changes), a rerun without --force tries it again and stores it from its own files."""
    root = make_root(tmp_path / "k", {"P01_01": [("0", 0.5, 1.5), ("1", 1.2, 2.05)]}, frames={"P01_01": 120})
    work = tmp_path / "w"
    first = shards(root, work, "--frames", "4")
    (skip,) = first[None]["skipped"]
    assert skip["narration_id"] == "P01_01_1"
    assert skip["cause"] == "frames requested past the end of the video"
    assert "extract its rgb_frames tar again" in skip["reason"] and skip.get("video_stat")
    assert max(first["P01_01_0"]["meta"]["frame_indices"]) <= 120
    write_frames(root, "P01_01", 121, 360)
    again = shards(root, work, "--frames", "4")
    assert again[None]["skipped"] == [], again[None]["skipped"]
    sample = again["P01_01_1"]
    assert observed(sample) == [1000 + n for n in sample["meta"]["frame_indices"]]
    assert "tried again" in again["text"]


def test_workers_2_skip_and_store_what_one_worker_does(tmp_path):
    """--workers 2 (VideoJob.clock pickled to the workers): two videos, each a short folder, give the same skips
    (reasons and all) and the same samples as one worker."""
    segs = [("0", 0.5, 1.5), ("1", 1.5, 2.1), ("2", 3.0, 4.0)]
    root = make_root(tmp_path / "k", {"P01_01": segs, "P01_02": segs}, frames={"P01_01": 120, "P01_02": 200})
    one = shards(root, tmp_path / "w", "--frames", "4", out="one")
    two = shards(root, tmp_path / "w", "--frames", "4", "--workers", "2", out="two")
    assert sorted(s["narration_id"] for s in one[None]["skipped"]) == ["P01_01_1", "P01_01_2", "P01_02_2"]

    def skips(got):
        return sorted((s["narration_id"], s["cause"], s["reason"]) for s in got[None]["skipped"])

    assert skips(two) == skips(one)
    keys = sorted(k for k in one if isinstance(k, str) and k != "text")
    assert keys == ["P01_01_0", "P01_02_0", "P01_02_1"]
    for k in keys:
        assert two[k]["codes"] == one[k]["codes"] and two[k]["meta"] == one[k]["meta"], k


@pytest.mark.parametrize("mode", ["clips", "segments"])
def test_anticipation_near_the_end_of_a_short_folder_skips_by_the_observed_window(tmp_path, mode):
    """Anticipation reads frames before the action, never the action's own: in a folder of 120 frames (2.00 s) an
    action at 2.9 s (observed up to ~1.9 s) is stored from its own files though the action lies past the end; one
    at 3.05 s (observed up to ~2.04 s, past frame 120) is skipped whatever its 4 samples, with the reason to
    extract the tar again; one less than tau_a into the video is a blank sample, stored."""
    segs = [("0", 0.5, 1.0), ("1", 2.9, 3.2), ("2", 3.05, 3.3), ("3", 3.5, 4.0)]
    root = make_root(tmp_path / "k", {"P01_01": segs}, frames={"P01_01": 120})
    extra = ["--span-frames", "32"] if mode == "clips" else []
    got = shards(root, tmp_path / "w", "--task", "anticipation", "--anticipation-context", mode, "--tau-a", "1.0",
                 "--frames", "4", *extra)
    skipped = {s["narration_id"]: s for s in got[None]["skipped"]}
    assert sorted(skipped) == ["P01_01_2", "P01_01_3"]
    assert all("extract its rgb_frames tar again" in s["reason"] for s in skipped.values())
    assert got["P01_01_0"]["meta"]["blank"] is True
    live = got["P01_01_1"]
    assert live["meta"]["blank"] is False and max(live["meta"]["frame_indices"]) <= 120
    assert observed(live) == [1000 + n for n in live["meta"]["frame_indices"]]
    # the observed window ends tau_a before the action's start_frame (csv 174 at 60/s: 173/60 s), not its timestamp
    assert live["meta"]["observed"]["stop"] == pytest.approx(173 / 60 - 1.0, abs=1e-6)


# ---- a folder built by the rule before session 60, then resumed -------------------------------------------------------

def test_a_resumed_anticipation_folder_of_the_earlier_rule_is_not_silently_mixed(tmp_path, monkeypatch):
    """Before ccbf886 the segments mode on rgb_frames ended the observed window at the timestamp minus tau_a (checked
    against a build at 20f9f87: P01_01_0 observed stop 1.0 there, 0.983333 now). A build of that leap killed after
    its first shards, resumed by this one: the folder must not hold samples of both rules (a refusal naming the
    change, or the old shards rebuilt, would do). Was wrong: both were kept, and called built "with these settings"."""
    from leap_cli.epic.timing import FrameClock

    segs = [("0", 2.0, 2.5), ("1", 3.0, 3.5), ("2", 4.0, 4.5)]
    root = make_root(tmp_path / "k", {"P01_01": segs})
    work = tmp_path / "w"
    args = build_args(root, work, "s", "--task", "anticipation", "--anticipation-context", "segments", "--tau-a",
                      "1.0", "--frames", "4", "--max-count", "1")
    from dataclasses import asdict

    import leap_cli.shards.writer as writer

    with monkeypatch.context() as m:  # the earlier rule: obs_end_t = s.start - tau_a, and no rule in the settings
        m.setattr(FrameClock, "start_time", lambda self, seg: float(seg.start))
        m.setattr(writer, "made_settings", lambda st, **kw: asdict(st))
        code, text = leap(*args)
        assert code == 0, text[-2000:]
    old = read_shards(work / "s")
    assert old["P01_01_0"]["meta"]["observed"]["stop"] == pytest.approx(1.0)
    (work / "s" / old[None]["shards"][-1]["name"]).unlink()  # killed before its last shard
    code, text = leap(*args)
    if code != 0:  # refused: fine, if it says why
        assert "--force" in text and "where the observed window ends" in text, text[-2000:]
        return
    got = read_shards(work / "s")
    from leap_cli.epic.timing import csv_frame

    for suffix, start, _ in segs:
        want = (csv_frame(start, FPS) - 1) / FPS - 1.0
        assert got[f"P01_01_{suffix}"]["meta"]["observed"]["stop"] == pytest.approx(want, abs=1e-6), suffix


# ---- io.pid_alive -------------------------------------------------------------------------------------------------

def _zombie() -> int:
    """A child that has exited and is not reaped yet."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    for _ in range(2000):  # (until the kernel marks it Z: no sleep-based assertion, a bounded wait)
        try:
            state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except OSError:
            break
        if state == b"Z":
            break
        time.sleep(0.005)
    return pid


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_pid_alive_tells_a_zombie_a_reaped_child_ourselves_and_pid_1():
    from leap_cli.io import pid_alive

    pid = _zombie()
    try:
        os.kill(pid, 0)  # (a signal 0 reaches it: the old test said alive)
        assert pid_alive(pid) is False
    finally:
        os.waitpid(pid, 0)
    assert pid_alive(pid) is False  # reaped: no such process (unless reused at once, which this host won't do now)
    assert pid_alive(os.getpid()) is True
    assert pid_alive(1) is True  # init (another user's where we are not root: EPERM is alive)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_zombie_writers_temp_file_is_swept_and_its_lock_not_named(tmp_path):
    """remove_dead_temps deletes a temp file of a zombie writer, keeps a live one's (this process's parent); a lock
    file whose holder is a zombie on this host names no holder."""
    import socket

    from leap_cli import io as lio

    host = lio._temp_tag().rsplit("-", 1)[0]
    pid = _zombie()
    try:
        dead = tmp_path / f".out.json.{host}-{pid}.abcdefgh.tmp"
        live = tmp_path / f".out.json.{host}-{os.getppid()}.ijklmnop.tmp"
        dead.write_text("x")
        live.write_text("x")
        lio.remove_dead_temps(tmp_path)
        assert not dead.exists() and live.exists()
        lock = tmp_path / "held.lock"
        lock.write_text(f"{pid} {socket.gethostname()}\n")
        fd = os.open(lock, os.O_RDONLY)
        try:
            assert lio._lock_holder(fd) is None
        finally:
            os.close(fd)
        lock.write_text(f"{os.getppid()} {socket.gethostname()}\n")
        fd = os.open(lock, os.O_RDONLY)
        try:
            assert lio._lock_holder(fd) == f"process {os.getppid()} on {socket.gethostname()}"
        finally:
            os.close(fd)
    finally:
        os.waitpid(pid, 0)


def test_a_stray_temp_file_with_an_out_of_range_pid_does_not_crash_the_sweep(tmp_path):
    """A temp name of this host's form whose pid part is 20 digits (no process has it): the sweep goes on (it may
    keep or delete it) instead of raising out of the stage that writes into the folder. Was wrong: OverflowError."""
    from leap_cli import io as lio

    host = lio._temp_tag().rsplit("-", 1)[0]
    (tmp_path / f".out.json.{host}-99999999999999999999.abcdefgh.tmp").write_text("x")
    lio.remove_dead_temps(tmp_path)


# ---- format.differ_note -------------------------------------------------------------------------------------------

def test_differ_note_agrees_with_its_subject():
    from leap_cli.shards.format import differ_note, said

    assert differ_note(["--frames"]) == "(--frames differs)"
    assert differ_note([said("sources.programs")]) == "(the programs differ)"
    assert differ_note([said("targets")]) == "(the target vocabulary differs)"
    assert differ_note([said("sources.annotations")]) == "(the split's annotation rows differ)"
    assert differ_note(["--frames: 4 -> 16"]) == "(--frames: 4 -> 16 differs)"
    assert differ_note(["--frames", said("sources.programs")]) == "(--frames, the programs differ)"
    seven = [f"--o{i}" for i in range(7)]
    assert differ_note(seven) == "(--o0, --o1, --o2, --o3, --o4, --o5 ... differ)"


def test_a_resume_with_another_frames_says_frames_differs(tmp_path):
    """The refusal of a rerun with another --frames over a folder of shards names the option, in the singular."""
    root = make_root(tmp_path / "k", {"P01_01": [("0", 0.5, 1.5)]})
    work = tmp_path / "w"
    code, text = leap(*build_args(root, work, "s", "--frames", "4"))
    assert code == 0, text[-2000:]
    code, text = leap(*build_args(root, work, "s", "--frames", "8"))
    assert code != 0
    flat = " ".join(text.split())
    assert "(--frames differs)" in flat, flat[-1500:]
