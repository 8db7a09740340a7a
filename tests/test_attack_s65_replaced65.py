"""A good video replaced after the stages ran (helper replaced65, session 65): extract, generate-programs and
build-shards ran well, then the user downloads a video again (a newer release, or a copy found damaged) to the same
path: another file, of another size.

Found and fixed: a rerun of extract said nothing new to do and kept the descriptors made from the old file, without
a word. A record now keeps the size of the MP4 it was made from (``video_size``); a rerun makes again the records
whose video's size differs now, with a note that names the file and its sizes and says what to run next. A file whose
mtime alone changed (a copy, rsync without -t) is no reason; records of a leap that kept no size are kept as they are
(an upgrade does not redo a data set); the check is one stat per video.

The next stages, as they are: generate-programs makes again exactly the programs whose clip text changed (its clip
hash), and build-shards, run before it, notes those program records. Left as a strict xfail (reported, writer.py was
not this helper's): once the programs are made again, a plain build-shards keeps the samples it wrote from the old
file (the offline generator's programs come out the same, so it has nothing new to write); extract's note said to run
``build-shards --force``, which writes them from the new file. Fixed since (helper moved65): a shard's progress record
keeps the size of each MP4 its samples were read from, and a plain build-shards takes out and writes again the
samples of a video whose size differs now; extract's note says so.

The synthetic kitchen's val video P01_02 is replaced by itself mirrored left to right (the same length and fps, so
nothing but the file changed; its camera turns the other way).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from tests.kitchens import config_kitchen_copy
from tests.procs import leap_here

VID = "P01_02"  # the val video


class _Unread:
    """capsys's face for ``leap_here`` where none is at hand: what leap printed is left to pytest's capture."""

    @staticmethod
    def readouterr():
        return argparse.Namespace(out="", err="")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(a workdir after extract, generate-programs and build-shards of val, P01_02.MP4 mirrored: another file)."""
    import cv2

    from leap_cli.synth.kitchen import KitchenConfig
    from leap_cli.media.write import write_mp4

    root = tmp_path_factory.mktemp("replaced")
    cfg = KitchenConfig(videos=2, segments_per_video=6, width=128, height=96, audio_in_mp4=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(KitchenConfig, "truncated_video", lambda self: None)  # (no video cut short: all ran well)
        config_kitchen_copy(tmp_path_factory, root / "w" / "kitchen", cfg, truncated=False)
        leap = leap_here(mp, _Unread())  # (no capsys in a module's fixture: the exit status is checked)
        for stage in ("extract", "generate-programs", "build-shards"):
            assert leap(stage, "--workdir", root / "w", "--split", "val").returncode == 0, stage
    cap = cv2.VideoCapture(str(_mp4(root / "w")))
    fps, frames = cap.get(cv2.CAP_PROP_FPS), []
    while (got := cap.read())[0]:
        frames.append(cv2.cvtColor(got[1][:, ::-1], cv2.COLOR_BGR2RGB))
    cap.release()
    write_mp4(root / "mirrored.MP4", frames, fps)
    assert (root / "mirrored.MP4").stat().st_size != _mp4(root / "w").stat().st_size
    return root / "w", root / "mirrored.MP4"


@pytest.fixture
def leap(monkeypatch, capsys):
    return leap_here(monkeypatch, capsys)


def _mp4(wd: Path) -> Path:
    return wd / "kitchen" / "P01" / "videos" / f"{VID}.MP4"


def _workdir(built, tmp_path) -> Path:
    wd = tmp_path / "w"
    shutil.copytree(built[0], wd)
    return wd


def _ok(r) -> str:
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout + r.stderr


def _records(wd: Path, name: str = "val.jsonl") -> dict[str, dict]:
    return {r["narration_id"]: r for r in map(json.loads, (wd / "descriptors" / name).read_text().splitlines())}


def _samples(wd: Path) -> dict[str, bytes]:
    """The frames of the val shards' samples: member name -> bytes."""
    out = {}
    for tar in sorted((wd / "shards" / "val").glob("*.tar")):
        with tarfile.open(tar) as t:
            out.update({m.name: t.extractfile(m).read() for m in t.getmembers() if m.name.endswith(".jpg")})
    return out


def test_a_replaced_video_has_its_records_made_again_and_the_note_says_what_next(built, tmp_path, leap):
    wd = _workdir(built, tmp_path)
    before, cached = _records(wd), (wd / "frame-cache" / VID / f"{VID}_3.v3.s256q90.jpgs").read_bytes()
    old, new = _mp4(wd).stat().st_size, built[1].stat().st_size
    assert {r["video_size"] for r in before.values()} == {old}
    shutil.copyfile(built[1], _mp4(wd))
    said = " ".join(_ok(leap("extract", "--workdir", wd, "--split", "val")).split())
    assert "0 done before, 6 written now" in said, said
    assert (f"6 records of earlier runs were made from a video that has changed since ({_mp4(wd)}: size {old} -> "
            f"{new} bytes): they are made again; then run generate-programs") in said, said
    assert "build-shards for this split (it writes again the samples it wrote from the old file)" in said, said
    after = _records(wd)
    assert {r["video_size"] for r in after.values()} == {new}
    changed = sorted(k for k in after if after[k]["text"] != before[k]["text"])
    assert changed and any("right" in before[k]["text"] and "left" in after[k]["text"] for k in changed), changed
    # the frame cache holds the new file's frames (extract's claim of the video, as it was)
    assert json.loads((wd / "frame-cache" / VID / "source.json").read_text())["source_stat"][0] == new
    assert (wd / "frame-cache" / VID / f"{VID}_3.v3.s256q90.jpgs").read_bytes() != cached
    # made once: a rerun has nothing to do, and says nothing of the video
    said = _ok(leap("extract", "--workdir", wd, "--split", "val"))
    assert "0 written now: nothing to do" in said and "changed since" not in said, said
    # build-shards before generate-programs notes the programs made from the old clip texts (as it did), and writes
    # the samples of the old file from the new one (a plain build-shards, as the note says)
    old_samples = _samples(wd)
    said = " ".join(_ok(leap("build-shards", "--workdir", wd, "--split", "val")).split())
    assert f"{len(changed)} program records" in said and f"e.g. {changed[0]}" in said, said
    assert (f"6 samples were written from a video that has changed since ({_mp4(wd)}: size {old} -> {new} bytes): "
            "taken out of their shards, to be made again from the new file") in said, said
    # generate-programs makes again exactly the programs whose clip text changed (its clip hash)
    said = _ok(leap("generate-programs", "--workdir", wd, "--split", "val"))
    assert f"{len(changed)} records of earlier runs were made from a clip that has changed since" in said, said
    # then build-shards takes the new programs; the samples hold the new file's frames
    _ok(leap("build-shards", "--workdir", wd, "--split", "val"))
    new_samples = _samples(wd)
    assert new_samples.keys() == old_samples.keys()
    assert all(new_samples[k] != old_samples[k] for k in new_samples if k.startswith(f"{VID}_3."))


def test_a_video_whose_mtime_alone_changed_makes_nothing_again_and_no_video_is_read(built, tmp_path, leap):
    """The rerun reads no video (a stat of each), and a copy of the same bytes is no reason to make records again;
    once the size differs, they are made again."""
    wd = _workdir(built, tmp_path)
    text = (wd / "descriptors" / "val.jsonl").read_bytes()
    path = _mp4(wd)
    shutil.copy(path, tmp_path / "copy.MP4")  # another inode, another mtime, the same bytes (rsync without -t)
    os.replace(tmp_path / "copy.MP4", path)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    import leap_cli.media.video as video

    def no_reading(*a, **k):
        raise AssertionError("a video was opened")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(video, "open_video", no_reading)
        said = _ok(leap("extract", "--workdir", wd, "--split", "val"))
    assert "6 done before, 0 written now: nothing to do" in said and "changed since" not in said, said
    assert (wd / "descriptors" / "val.jsonl").read_bytes() == text
    with open(path, "ab") as f:  # (an MP4 with bytes after its last box: the same frames, another size)
        f.write(b"\0" * 8)
    said = _ok(leap("extract", "--workdir", wd, "--split", "val"))
    assert "6 records of earlier runs were made from a video that has changed since" in said, said


def test_records_that_keep_no_size_are_kept_when_the_video_is_replaced(built, tmp_path, leap):
    """Records of a run that read no video (narration alone, no frame cache) are kept as they are; those of a leap
    before the size was kept (here the first 3 of the video's) are made again where extract's frame cache tells the
    size they were made from (upgrade65: they were kept, the old file's descriptors with them)."""
    wd = _workdir(built, tmp_path)
    path = wd / "descriptors" / "val.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    old = {f"{VID}_{i}" for i in range(3)}
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "video_size" or r["narration_id"] not in old})
                            + "\n" for r in lines))
    _ok(leap("extract", "--workdir", wd, "--split", "val", "--components", "narration", "--frame-cache", "none",
             "--out", wd / "descriptors" / "narr.jsonl"))
    assert all("video_size" not in r for r in _records(wd, "narr.jsonl").values())
    shutil.copyfile(built[1], _mp4(wd))
    said = " ".join(_ok(leap("extract", "--workdir", wd, "--split", "val")).split())
    assert "0 done before, 6 written now" in said and "6 records of earlier runs were made from a video" in said, said
    assert all("video_size" in r for r in _records(wd).values())
    said = _ok(leap("extract", "--workdir", wd, "--split", "val", "--components", "narration", "--frame-cache", "none",
                    "--out", wd / "descriptors" / "narr.jsonl"))
    assert "0 written now: nothing to do" in said and "changed since" not in said, said


def test_a_part_remake_keeps_the_records_video_size(built, tmp_path, leap):
    """A record whose camera an earlier leap made otherwise has its camera made again, its other parts kept: the size
    of the file they were made from stays with it, so a video replaced later is still noticed."""
    wd = _workdir(built, tmp_path)
    path = wd / "descriptors" / "val.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    for r in lines:
        r["versions"]["camera"] = 1
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    said = " ".join(_ok(leap("extract", "--workdir", wd, "--split", "val")).split())
    assert "only those parts are made again (camera of 6)" in said, said
    size = _mp4(wd).stat().st_size
    assert {r.get("video_size") for r in _records(wd).values()} == {size}
    shutil.copyfile(built[1], _mp4(wd))
    said = _ok(leap("extract", "--workdir", wd, "--split", "val"))
    assert "6 records of earlier runs were made from a video that has changed since" in said, said


def test_build_shards_writes_again_the_samples_of_a_replaced_video(built, tmp_path, leap):
    wd = _workdir(built, tmp_path)
    old_samples = _samples(wd)
    shutil.copyfile(built[1], _mp4(wd))
    for stage in ("extract", "generate-programs"):
        _ok(leap(stage, "--workdir", wd, "--split", "val"))
    said = _ok(leap("build-shards", "--workdir", wd, "--split", "val"))
    new_samples = _samples(wd)
    assert f"{VID}.MP4" in said or new_samples[f"{VID}_3.f000.jpg"] != old_samples[f"{VID}_3.f000.jpg"], said
