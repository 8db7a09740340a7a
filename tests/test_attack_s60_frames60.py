"""Frame-number exactness on EPIC-KITCHENS-100's ``rgb_frames`` (helper "frames60", session 60).

A researcher with EPIC's rgb_frames folders (``frame_0000000001.jpg`` ... per video, or the ``VIDEO.tar`` the
download script saves) and no MP4s, or with both. Tiny frame folders are built here with cv2: every JPEG (and every
MP4 frame) carries its own frame number in four grey bands (one hex digit each), so a test reads back from the
stored shard frames which file leap really decoded, not only the ``frame_indices`` it says it took.

Checked end to end at 50, 59.94 and 60 fps (video_info), for segments at the very start and the very end of a video
and a folder shorter than the CSV says:
- recognition (build-shards, extract's frame cache): the CSV's start_frame..stop_frame, sampled at chunk centres,
  and exactly those JPEG files;
- anticipation clips mode (``--span-frames``): the last observed frame is ``start_frame - tau_a x rate - 1``;
- anticipation segments mode: docs/shards.md says it ends one frame later than clips mode where a frame starts
  exactly at ``end``; on rgb_frames it ended two frames later (three on EPIC's rows whose start_frame is one below
  floor(ts x rate)), since it read the timestamp where clips mode reads start_frame (fixed in session 60);
- the same video as MP4 and as rgb_frames: the MP4's span comes from the timestamps, the folder's from the CSV
  columns (EPIC floors ts x rate), so the folder's samples are the same moments or one frame earlier, never later.

Rows of tests/data/epic100 / ../shared/epic100 quoted below (P01_11_1, P01_11_10, P01_11_89, P01_12_23: their
start/stop timestamps and frame columns) are from EPIC_100_validation.csv of github.com/epic-kitchens/
epic-kitchens-100-annotations (commit ea8b404, CC BY-NC 4.0, Damen et al., "Rescaling Egocentric Vision", IJCV 2022).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import signal
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

EPIC = Path(__file__).parent / "data" / "epic100"
COLUMNS = ("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,"
           "stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes")
W, H = 64, 48  # four 16-px bands, one hex digit of the frame number each
FPS_CASES = (50.0, 59.9400599400599, 60.0)
SECONDS = 6.0

# EPIC_100_validation.csv (see the module docstring): id, start, stop, start_frame, stop_frame. P01_11_89 and
# P01_12_23 are two of the 42 rows whose start_frame is floor(ts x 60) - 1; the others are floor(ts x 60).
REAL_ROWS = [("P01_11_1", "00:00:01.56", "00:00:02.45", 93, 147),
             ("P01_11_10", "00:00:49.15", "00:00:50.95", 2949, 3057),
             ("P01_11_89", "00:04:29.15", "00:04:44.79", 16148, 17087),
             ("P01_12_23", "00:01:07.10", "00:01:07.64", 4025, 4058)]


# ---- helpers ------------------------------------------------------------------------------------------------------

def coded(n: int) -> np.ndarray:
    """A grey BGR image whose four vertical bands hold the hex digits of ``n`` (most significant first)."""
    img = np.zeros((H, W, 3), np.uint8)
    for band in range(4):
        digit = (n >> (4 * (3 - band))) & 15
        img[:, band * 16:(band + 1) * 16] = digit * 16 + 8
    return img


def decode(img: np.ndarray) -> int:
    """The frame number ``coded`` wrote into ``img`` (any channel order; the centre of each band)."""
    h, w = img.shape[:2]
    grey = img.mean(axis=2) if img.ndim == 3 else img
    n = 0
    for band in range(4):
        x0, x1 = band * w // 4, (band + 1) * w // 4
        v = float(grey[h // 4: 3 * h // 4, x0 + (x1 - x0) // 4: x1 - (x1 - x0) // 4].mean())
        n = n * 16 + int(np.clip(round((v - 8) / 16), 0, 15))
    return n


def ts(t: float) -> str:
    m, s = divmod(t, 60)
    return f"00:{int(m):02d}:{s:05.2f}"


def rate_of(fps: float) -> float:
    from leap_cli.epic.timing import epic_frame_rate

    return epic_frame_rate(fps)


def make_root(root: Path, fps: float, segments: list[tuple], *, frames: int | None = None, mp4: bool = False,
              rgb: bool = True, vid: str = "P01_01") -> Path:
    """An EPIC-layout root of one video ``vid`` (validation split) at ``fps`` (video_info), ``SECONDS`` long.

    ``segments``: (id suffix, start s, stop s[, start_frame, stop_frame]); frame columns default to EPIC's
    floor(t x rate) (``csv_frame``). ``frames``: the JPEGs the folder holds (default: the video's length at EPIC's
    rate). EPIC frame n holds the MP4 frame ``from_epic(n)`` (ffmpeg's -r rule), coded with that MP4 frame's number
    plus 1000 so that a test tells the two sources apart (the MP4 frames carry their own number)."""
    from leap_cli.epic.timing import FrameClock, csv_frame

    rate = rate_of(fps)
    ann = root / "annotations"
    ann.mkdir(parents=True)
    for f in ("EPIC_100_verb_classes.csv", "EPIC_100_noun_classes.csv"):
        shutil.copy(EPIC / f, ann / f)
    rows = [COLUMNS]
    for suffix, a, b, *cols in segments:
        sf, ef = cols if cols else (csv_frame(a, rate), csv_frame(b, rate))
        rows.append(f"{vid}_{suffix},{vid[:3]},{vid},{ts(a)},{ts(a)},{ts(b)},{sf},{ef},take plate,take,0,plate,2,"
                    "['plate'],[2]")
    (ann / "EPIC_100_validation.csv").write_text("\n".join(rows) + "\n")
    (ann / "EPIC_100_video_info.csv").write_text(f"video_id,duration,fps,resolution\n{vid},{SECONDS},{fps},{W}x{H}\n")
    n_mp4 = int(round(SECONDS * fps))
    if rgb:
        d = root / vid[:3] / "rgb_frames" / vid
        d.mkdir(parents=True)
        clock = FrameClock("mp4", fps, n_mp4)
        for n in range(1, (frames if frames is not None else int(round(SECONDS * rate))) + 1):
            cv2.imwrite(str(d / f"frame_{n:010d}.jpg"), coded(1000 + clock.from_epic(n)), [cv2.IMWRITE_JPEG_QUALITY, 95])
    if mp4:
        from leap_cli.media.write import write_mp4

        (root / vid[:3] / "videos").mkdir(parents=True)
        write_mp4(root / vid[:3] / "videos" / f"{vid}.MP4", (coded(k)[:, :, ::-1] for k in range(1, n_mp4 + 1)), fps,
                  bit_rate=2_000_000, gop=12)
    return root


def leap(*argv: str) -> tuple[int, str]:
    """``leap ARGV`` in this process: (exit status, stdout + stderr)."""
    from leap_cli import cli

    old_argv, out = sys.argv, io.StringIO()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    sys.argv = ["leap", *argv]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                cli.main()
            except SystemExit as e:
                code = e.code if e.code is not None else 0
    finally:
        sys.argv = old_argv
        for s, h in handlers.items():
            signal.signal(s, h)
    return code, out.getvalue()


def shards(root: Path, work: Path, *extra: str, out: str = "s", strict: bool = False) -> dict[str, dict]:
    """build-shards --split val on ``root``: {key: {"meta": json, "frames": {field: decoded code}}} and the
    manifest under key ``None``."""
    from leap_cli.shards.format import iter_tar_samples

    folder = work / out
    code, text = leap("build-shards", "--data", str(root), "--workdir", str(work), "--split", "val", "--out",
                      str(folder), "--short-side", str(H), *extra)
    assert code == (code if not strict else 0), text[-3000:]
    assert (folder / "manifest.json").exists(), text[-3000:]
    manifest = json.loads((folder / "manifest.json").read_text())
    got: dict = {None: manifest}
    for shard in manifest["shards"]:
        for key, fields in iter_tar_samples(folder / shard["name"]):
            got[key] = {"meta": json.loads(fields["json"]),
                        "frames": {f: decode(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR))
                                   for f, b in fields.items() if f.endswith(".jpg")}}
    return got


def observed_codes(sample: dict, prefix: str = "f") -> list[int]:
    return [sample["frames"][k] for k in sorted(sample["frames"]) if k.startswith(prefix) and k[len(prefix)].isdigit()]


# ---- recognition on rgb_frames: the CSV columns, and exactly those JPEG files --------------------------------------

# (suffix, start, stop): the very first frames, a middle segment, a stop that is a whole number of frames, and one
# ending at the folder's last frame
RECOG = [("0", 0.0, 0.5), ("1", 1.56, 2.45), ("2", 2.0, 3.0), ("3", 5.2, SECONDS)]


@pytest.mark.parametrize("fps", FPS_CASES, ids=["50", "59.94", "60"])
def test_recognition_on_rgb_frames_reads_the_csv_columns_jpeg_files(tmp_path, fps):
    """docs/media.md: on rgb_frames a segment's frames are its CSV start_frame..stop_frame as EPIC numbers them;
    build-shards stores the centres of T equal chunks (docs/shards.md), and the stored JPEGs are those files."""
    from leap_cli.epic.timing import csv_frame, pick_frames

    rate = rate_of(fps)
    root = make_root(tmp_path / "k", fps, RECOG)
    got = shards(root, tmp_path / "w", "--frames", "8", strict=True)
    assert got[None]["counts"]["skipped"] == 0
    for suffix, a, b in RECOG:
        sf, ef = csv_frame(a, rate), csv_frame(b, rate)
        want = pick_frames(sf, ef, 8, "uniform")
        sample = got[f"P01_01_{suffix}"]
        assert sample["meta"]["frame_indices"] == want, suffix
        # EPIC frame n of these short videos holds MP4 frame n (from_epic is the identity for n <= 500 at 59.94)
        assert observed_codes(sample) == [1000 + n for n in want], suffix
    # the first segment's window starts at EPIC's frame 1 (floor(0 x rate) is 0, the column says 1), the last ends at
    # the folder's last file, and both are stored
    assert csv_frame(0.0, rate) == 1 and csv_frame(SECONDS, rate) == int(round(SECONDS * rate))


def test_extract_frame_cache_and_build_shards_read_the_same_rgb_frames_files(tmp_path):
    """extract's frame cache (docs/extract.md "Decode once") holds the frames build-shards would decode: on an
    rgb_frames folder the same numbers (the CSV columns) and the same files, and build-shards' bytes are the same
    from the cache as from the folder."""
    from leap_cli.extract.cache import FrameCache

    fps = 59.9400599400599
    root = make_root(tmp_path / "k", fps, RECOG)
    work = tmp_path / "w"
    code, text = leap("extract", "--data", str(root), "--workdir", str(work), "--split", "val", "--components",
                      "camera", "--cache-frames", "6", "--cache-short-side", str(H))
    assert code == 0, text[-3000:]
    cache = FrameCache(work / "frame-cache", 6, H, 90)
    direct = shards(root, tmp_path / "w2", "--frames", "6", out="direct", strict=True)  # (no cache there)
    for suffix, *_ in RECOG:
        key = f"P01_01_{suffix}"
        raw = cache.path("P01_01", key).read_bytes()
        count = int.from_bytes(raw[8:12], "little")
        numbers = [int.from_bytes(raw[12 + 12 * i: 20 + 12 * i], "little", signed=True) for i in range(count)]
        assert numbers == direct[key]["meta"]["frame_indices"], key
    # build-shards from the cache: the same samples, byte for byte
    from leap_cli.shards.format import iter_tar_samples

    code, text = leap("build-shards", "--data", str(root), "--workdir", str(work), "--split", "val", "--out",
                      str(work / "cached"), "--short-side", str(H), "--frames", "6")
    assert code == 0, text[-3000:]
    assert "cache" in text.lower()

    def members(folder):
        m = json.loads((folder / "manifest.json").read_text())
        return {(k, f): b for s in m["shards"] for k, fields in iter_tar_samples(folder / s["name"])
                for f, b in fields.items()}

    assert members(work / "cached") == members(tmp_path / "w2" / "direct")


# ---- a folder shorter than the CSV says -----------------------------------------------------------------------------

def test_a_short_frames_folder_skips_only_the_segments_past_its_last_file(tmp_path):
    """A folder whose tar was extracted in part (fewer files than EPIC_100_video_info.csv's duration): the segments
    inside it are stored from their own files, those whose samples reach past its last file are skipped (no frame
    clamped to the last one)."""
    fps = 60.0
    segs = [("0", 0.0, 0.5), ("1", 1.0, 1.99), ("2", 1.5, 2.5), ("3", 4.0, 5.0)]
    root = make_root(tmp_path / "k", fps, segs, frames=120)  # 2.0 s of 6.0
    got = shards(root, tmp_path / "w", "--frames", "4")
    skipped = {s["narration_id"]: s for s in got[None]["skipped"]}
    assert set(skipped) == {"P01_01_2", "P01_01_3"}
    assert all(s["cause"] == "frames requested past the end of the video" for s in skipped.values())
    # P01_01_1 ends at frame 119 (floor(1.99 x 60)), the folder's last but one: stored from its own files
    assert got["P01_01_1"]["meta"]["frame_indices"][-1] <= 119
    assert observed_codes(got["P01_01_1"]) == [1000 + n for n in got["P01_01_1"]["meta"]["frame_indices"]]


def test_build_shards_tells_a_short_frames_folder_to_extract_its_tar_again(tmp_path):
    """extract and FrameClock.check tell a frames folder short of frames to "extract its rgb_frames tar again"
    (docs/media.md's wording), and so does build-shards' skip of the same segment. Was wrong: it said "a file cut
    short: download it again", the MP4's advice, and named the first sampled frame past the end ("frame 143")."""
    fps = 60.0
    root = make_root(tmp_path / "k", fps, [("0", 0.0, 0.5), ("2", 1.5, 2.5)], frames=120)
    got = shards(root, tmp_path / "w", "--frames", "4")
    (skip,) = got[None]["skipped"]
    assert "extract its rgb_frames tar again" in skip["reason"], skip["reason"]
    assert "download it again" not in skip["reason"]


@pytest.mark.parametrize("kind", ["rgb_frames", "mp4"])
def test_a_segment_ending_past_a_cut_short_source_is_skipped_whatever_frames(tmp_path, kind):
    """docs/extract.md (--check-lengths): segments past a decodable end are unavailable in extract and left out of
    the shards by build-shards, "one set of segments, not two"; docs/media.md: never a clamped frame. A segment
    ending 3 frames past the end of a short folder (or a cut MP4) is unavailable in extract and skipped by
    build-shards at any --frames. Was wrong: build-shards --frames 4, whose chunk centres all fall before the end,
    stored it."""
    fps = 60.0
    root = make_root(tmp_path / "k", fps, [("0", 1.0, 2.05)], frames=120, rgb=kind == "rgb_frames",
                     mp4=kind == "mp4")
    if kind == "mp4":  # cut short at 2.0 s of its 6.0 s
        from leap_cli.media.write import write_mp4

        write_mp4(root / "P01" / "videos" / "P01_01.MP4", (coded(k)[:, :, ::-1] for k in range(1, 121)), fps,
                  bit_rate=2_000_000, gop=12)
    work = tmp_path / "w"
    code, text = leap("extract", "--data", str(root), "--workdir", str(work), "--split", "val", "--components",
                      "camera", "--frame-cache", "none")
    (rec,) = map(json.loads, (work / "descriptors" / "val.jsonl").read_text().splitlines())
    assert rec["components"]["camera"]["status"] == "unavailable"
    sixteen = shards(root, work, "--frames", "16", out="s16")
    assert [s["narration_id"] for s in sixteen[None]["skipped"]] == ["P01_01_0"]
    four = shards(root, work, "--frames", "4", out="s4")
    assert [s["narration_id"] for s in four[None]["skipped"]] == ["P01_01_0"]
    assert "P01_01_0" not in four


def test_extract_says_unavailable_for_a_segment_past_a_short_folder(tmp_path):
    """extract on the same short folder: the frame-reading component of the segment past the last file is
    unavailable with the window's reason, the one inside is read."""
    fps = 50.0
    segs = [("0", 0.2, 1.0), ("1", 1.5, 2.5)]
    root = make_root(tmp_path / "k", fps, segs, frames=100)  # 2.0 s
    work = tmp_path / "w"
    code, text = leap("extract", "--data", str(root), "--workdir", str(work), "--split", "val", "--components",
                      "camera", "--frame-cache", "none")
    recs = {r["narration_id"]: r for r in map(json.loads, (work / "descriptors" / "val.jsonl").read_text().splitlines())}
    cam0, cam1 = recs["P01_01_0"]["components"]["camera"], recs["P01_01_1"]["components"]["camera"]
    assert cam0["status"] == "ok", cam0
    assert cam1["status"] == "unavailable", cam1
    assert "after the decodable end of the video (2.00 s, 100 frames)" in json.dumps(cam1), cam1


def test_frames_still_in_their_tar_are_named_with_the_command_that_extracts_them(tmp_path):
    """``P01/rgb_frames/P01_01.tar`` with no folder extracted: build-shards skips its segments saying so, with the
    tar command; once extracted as it says, the frames are read from the folder."""
    import subprocess
    import tarfile

    from leap_cli.epic.timing import pick_frames

    fps = 50.0
    root = make_root(tmp_path / "k", fps, [("0", 0.2, 1.0)], frames=60)
    d = root / "P01" / "rgb_frames" / "P01_01"
    tar = d.with_name("P01_01.tar")
    with tarfile.open(tar, "w") as tf:  # EPIC's tars hold the frame files (./frame_0000000001.jpg)
        for p in sorted(d.iterdir()):
            tf.add(p, arcname=f"./{p.name}")
    shutil.rmtree(d)
    got = shards(root, tmp_path / "w", "--frames", "4")
    (skip,) = got[None]["skipped"]
    assert "not extracted from their tar" in skip["reason"]
    command = skip["reason"].split("extract them: ", 1)[1].split(")")[0].strip()
    assert "tar -xf" in command
    subprocess.run(command, shell=True, check=True)
    again = shards(root, tmp_path / "w", "--frames", "4", out="s2", strict=True)
    assert observed_codes(again["P01_01_0"]) == [1000 + n for n in again["P01_01_0"]["meta"]["frame_indices"]]
    assert again["P01_01_0"]["meta"]["frame_indices"] == pick_frames(10, 50, 4)  # floor(0.2 x 50), floor(1.0 x 50)


# ---- anticipation on rgb_frames --------------------------------------------------------------------------------------

def _plan(kind: str, fps: float, rows, mode: str, *, tau_a: float = 1.0, frames: int = 400, span: int = 8):
    """plan_samples' records for ``rows`` (Segment objects) of one video: {id: record}."""
    from leap_cli.epic.timing import FrameClock
    from leap_cli.shards.writer import ShardSettings, plan_samples

    st = ShardSettings("val", "anticipation", frames=frames, context_mode=mode, span_frames=span, tau_a=tau_a,
                       tau_o=0.5)
    _, records, skipped = plan_samples(rows, lambda v: fps, st, lambda v: FrameClock(kind, fps))
    assert not skipped
    return records


def _segment(nid: str, start: str, stop: str, sf: int, ef: int):
    from leap_cli.epic.annotations import Segment
    from leap_cli.epic.timing import parse_timestamp

    vid = nid.rsplit("_", 1)[0]
    return Segment(nid, vid[:3], vid, parse_timestamp(start), parse_timestamp(stop), sf, ef)


def _observed_last(record: dict, mode: str) -> int:
    """The last frame of the observed window: clips mode records it; segments mode samples 400 frames of a 0.5 s
    window (30 frames), so its largest sample is the window's last frame."""
    return record["clips"][-1]["last_frame"] if mode == "clips" else max(record["frame_indices"])


@pytest.mark.parametrize("row", REAL_ROWS, ids=[r[0] for r in REAL_ROWS])
def test_clips_mode_on_rgb_frames_ends_tau_a_rate_frames_before_start_frame(row):
    """docs/shards.md "Anticipation": on rgb_frames the action is at its CSV start_frame, so that exactly
    tau_a x rate frames lie between the clips and the action's first frame: s_i's last frame is
    start_frame - 60 - 1 at tau_a 1 s (and - 30 - 1 at 0.5 s), whatever the timestamp's rounding."""
    s = _segment(*row)
    for tau_a in (1.0, 0.5):
        rec = _plan("rgb_frames", 59.9400599400599, [s], "clips", tau_a=tau_a)[s.narration_id]
        assert rec["clips"][-1]["last_frame"] == s.start_frame - int(tau_a * 60) - 1
        assert rec["clips"][0]["first_frame"] == s.start_frame - int(tau_a * 60) - 3 * 8


@pytest.mark.parametrize("row", REAL_ROWS, ids=[r[0] for r in REAL_ROWS])
def test_on_an_mp4_segments_mode_ends_at_most_one_frame_after_clips_mode(row):
    """docs/shards.md: segments mode reads the frame shown at ts - tau_a, "one frame later than clips mode where a
    frame starts exactly there": on an MP4 (both from the timestamp) the two end 0 or 1 frame apart."""
    s = _segment(*row)
    for fps in FPS_CASES:
        seg = _observed_last(_plan("mp4", fps, [s], "segments")[s.narration_id], "segments")
        clip = _observed_last(_plan("mp4", fps, [s], "clips")[s.narration_id], "clips")
        assert 0 <= seg - clip <= 1, (fps, seg, clip)


@pytest.mark.parametrize("row", REAL_ROWS, ids=[r[0] for r in REAL_ROWS])
def test_on_rgb_frames_segments_mode_ends_one_frame_after_clips_mode(row):
    """On rgb_frames both anticipation modes should put the action where the source's numbering does (its CSV
    start_frame, as clips mode and segments mode's own context segments do): segments mode's observed window then
    ends at the frame shown tau_a before the action's first frame, start_frame - tau_a x rate, one frame after
    clips mode's, as docs/shards.md says. Was wrong: it ended at floor(ts x rate) - 59, 2 frames after clips mode
    on EPIC's usual rows, 3 on the rows whose start_frame is one below floor(ts x rate) (P01_11_89, P01_12_23; 42
    of EPIC_100_validation.csv, 330 of the test CSV), and read a frame that starts less than tau_a before the
    action's first frame."""
    s = _segment(*row)
    seg = _observed_last(_plan("rgb_frames", 59.9400599400599, [s], "segments")[s.narration_id], "segments")
    clip = _observed_last(_plan("rgb_frames", 59.9400599400599, [s], "clips")[s.narration_id], "clips")
    assert seg == s.start_frame - 60
    assert seg - clip == 1


def test_on_rgb_frames_segments_mode_is_one_frame_after_clips_mode_at_every_rate():
    """The two modes on rgb_frames, at 50, 59.94 and 60 fps and tau_a of whole frames, where start_frame ==
    floor(ts x rate) and where it is one less: segments mode ends one frame after clips mode. Was wrong: 2 and 3
    frames after (it took the timestamp)."""
    from leap_cli.epic.timing import csv_frame

    for fps in FPS_CASES:
        rate = rate_of(fps)
        for t in (2.0, 2.01, 1.56, 3.17, 7.99):
            for shift in (0, -1):
                sf = csv_frame(t, rate) + shift
                s = _segment("P01_01_5", ts(t), ts(t + 1), sf, csv_frame(t + 1, rate))
                for tau_a in (1.0, 0.5):
                    seg = _observed_last(_plan("rgb_frames", fps, [s], "segments", tau_a=tau_a)[s.narration_id],
                                         "segments")
                    clip = _observed_last(_plan("rgb_frames", fps, [s], "clips", tau_a=tau_a)[s.narration_id],
                                          "clips")
                    assert clip == sf - int(tau_a * rate) - 1
                    assert seg - clip == 1, (fps, t, shift, tau_a)


ANTIC = [("0", 0.5, 1.0), ("1", 1.02, 1.5), ("2", 2.0, 2.6), ("3", 3.17, 3.9), ("4", 5.0, SECONDS)]


@pytest.mark.parametrize("fps", FPS_CASES, ids=["50", "59.94", "60"])
def test_clips_mode_stores_the_jpegs_it_names_and_pads_with_frame_1(tmp_path, fps):
    """build-shards --task anticipation on rgb_frames (--span-frames 8): every stored frame is the JPEG of the
    number the sample's JSON gives (c0.*, c1.*, f*); s_i ends at start_frame - tau_a x rate - 1; a clip that
    starts before the video repeats frame 1; an action whose start_frame is at most tau_a x rate + 1 is blank."""
    from leap_cli.epic.timing import csv_frame

    rate = rate_of(fps)
    root = make_root(tmp_path / "k", fps, ANTIC)
    got = shards(root, tmp_path / "w", "--task", "anticipation", "--frames", "4", "--span-frames", "8")
    for suffix, a, b in ANTIC:
        sample = got[f"P01_01_{suffix}"]
        meta, sf = sample["meta"], csv_frame(a, rate)
        if sf - 1 - int(rate) < 1:  # no frame starts before start_frame's time - 1 s
            assert meta["blank"] is True and meta["frame_indices"] == [], suffix
            continue
        assert meta["clips"][-1]["last_frame"] == sf - int(rate) - 1, suffix
        assert observed_codes(sample) == [1000 + n for n in meta["frame_indices"]], suffix
        for c, clip in enumerate(meta["clips"][:-1]):
            if clip["present"]:
                assert observed_codes(sample, f"c{c}.f") == [1000 + n for n in clip["frame_indices"]], (suffix, c)
                assert all(n >= 1 for n in clip["frame_indices"])
                if clip["first_frame"] < 1:
                    assert clip["frame_indices"][0] == 1 and clip["padded_frames"] == 1 - clip["first_frame"]
    # the action at 1.02 s: start_frame is int(rate) + 1 at 50 and 60/s, so clips mode sees nothing
    assert got["P01_01_1"]["meta"]["blank"] is True


@pytest.mark.parametrize("fps", FPS_CASES, ids=["50", "59.94", "60"])
def test_segments_mode_on_rgb_frames_reads_up_to_tau_a_before_start_frame(tmp_path, fps):
    """End to end: on rgb_frames the segments mode observes up to the frame shown tau_a before the action's first
    frame (start_frame - tau_a x rate), the frame after clips mode's last, never a frame closer to the action."""
    from leap_cli.epic.timing import csv_frame

    rate = rate_of(fps)
    root = make_root(tmp_path / "k", fps, ANTIC)
    got = shards(root, tmp_path / "w", "--task", "anticipation", "--anticipation-context", "segments",
                 "--tau-o", "0.05", "--frames", "8")
    for suffix, a, _ in ANTIC[2:]:
        sample = got[f"P01_01_{suffix}"]
        last = max(observed_codes(sample)) - 1000  # 8 samples of a 3-4 frame window: its last frame is among them
        assert last == csv_frame(a, rate) - int(rate), (suffix, last)


# ---- the same video as MP4 and as rgb_frames ---------------------------------------------------------------------------

@pytest.mark.parametrize("fps", FPS_CASES, ids=["50", "59.94", "60"])
def test_mp4_and_rgb_frames_of_one_video_sample_the_same_moments_or_one_frame_earlier(tmp_path, fps):
    """The same video as an MP4 and as EPIC's rgb_frames (EPIC frame n holding the MP4 frame ffmpeg's -r put there):
    recognition samples of the folder come from the CSV columns, of the MP4 from the timestamps (docs/media.md),
    so the folder's frames show the same moment as the MP4's or the one frame before (EPIC floors ts x rate),
    never a later one; at exactly 50 and 60 fps the folder's window starts one frame before the MP4's (and ends one
    before it unless the stop is on a frame's start). Each JSON names the frames decoded."""
    from leap_cli.epic.timing import FrameClock, csv_frame

    rate = rate_of(fps)
    n_mp4 = int(round(SECONDS * fps))
    mp4_root = make_root(tmp_path / "m", fps, RECOG, mp4=True, rgb=False)
    rgb_root = make_root(tmp_path / "r", fps, RECOG)
    m = shards(mp4_root, tmp_path / "wm", "--frames", "8", strict=True)
    r = shards(rgb_root, tmp_path / "wr", "--frames", "8", strict=True)
    clock = FrameClock("mp4", fps, n_mp4)
    for suffix, a, b in RECOG:
        key = f"P01_01_{suffix}"
        mi, ri = m[key]["meta"]["frame_indices"], r[key]["meta"]["frame_indices"]
        assert observed_codes(m[key]) == mi, key  # the MP4 frames decoded are the ones named
        held = [c - 1000 for c in observed_codes(r[key])]  # the MP4 frame each EPIC frame holds
        assert held == [clock.from_epic(n) for n in ri], key
        assert all(0 <= x - y <= 1 for x, y in zip(mi, held)), (key, mi, held)
        # the windows: the MP4's from the timestamps, the folder's the CSV columns; in EPIC's numbering the folder's
        # starts one frame before the MP4's and ends with it or one frame before
        m0, m1 = clock.segment_span(_segment(key, ts(a), ts(b), 0, 0))
        r0, r1 = csv_frame(a, rate), csv_frame(b, rate)
        assert 0 <= clock.to_epic(m0) - r0 <= 1, key
        if fps in (50.0, 60.0) and a > 0:  # (exact rates: EPIC's frame n is the MP4's frame n)
            whole = abs(b * rate - round(b * rate)) < 1e-6  # a stop on a frame's start: the same last frame
            assert (m0, m1) == (r0 + 1, r1 + (0 if whole else 1)), key
        assert 0 <= clock.to_epic(m1) - r1 <= 1, key
