"""build-shards after a video was downloaded again (helper moved65, session 65): extract makes the records of an MP4
whose size changed again (``video_size``), generate-programs their programs, and build-shards kept the samples it
had written from the old file (nothing told it the file had changed: it compared only its skips' ``video_stat``).

Now each shard's progress record keeps ``video_sizes`` ({video: size} of each MP4 its samples were read from, taken
before reading; rgb_frames folders are left out), and a re-run takes the samples of a video whose size differs now
out of their shards (rewritten without them, the other samples' bytes copied, ``_drop_replaced``) and writes them
from the new file into new shards. A kill between the steps is finished by the next run; a folder of an earlier leap
(no sizes) resumes as it did; a modification time alone changes nothing; a run without --shard over parts names the
part to run again.

The tiny root of test_shards, P01_02 (3 of the 7 training samples) made an MP4 of its frames; the replacement is
the same video with other colours (another size), so each sample's frames tell which file they were read from.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import leap_cli.shards.writer as writer
from leap_cli.common import ShardSpec
from leap_cli.errors import LeapError
from leap_cli.shards.format import iter_tar_samples, load_manifest
from tests.test_attack_s65_update65 import _Killed, kill_rewrite
from tests.test_shards import FPS, FRAMES_PER_VIDEO, build, colour, make_root, tar_digests

VID = "P01_02"
MOVED = [f"{VID}_{i}" for i in range(3)]


def _write_mp4(path: Path, shift: int) -> None:
    from leap_cli.media.write import write_mp4

    frames = []
    for n in range(1, FRAMES_PER_VIDEO + 1):
        img = np.zeros((48, 64, 3), np.uint8)
        img[:] = colour(VID, n)
        img[..., 1] = (img[..., 1].astype(int) + shift) % 256
        frames.append(img)
    write_mp4(path, frames, FPS, gop=10)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(a root whose P01_02 is an MP4, the replacement MP4, the shards of a build from scratch with it)."""
    base = tmp_path_factory.mktemp("moved")
    root = make_root(base / "k")
    shutil.rmtree(root / "P01" / "rgb_frames" / VID)
    (root / "P01" / "videos").mkdir(parents=True)
    _write_mp4(root / "P01" / "videos" / f"{VID}.MP4", 0)
    _write_mp4(base / "new.MP4", 100)
    assert (base / "new.MP4").stat().st_size != (root / "P01" / "videos" / f"{VID}.MP4").stat().st_size
    ref = make_root(base / "ref")
    shutil.rmtree(ref / "P01" / "rgb_frames" / VID)
    (ref / "P01" / "videos").mkdir(parents=True)
    shutil.copyfile(base / "new.MP4", ref / "P01" / "videos" / f"{VID}.MP4")
    build(ref, base / "refw")
    return root, base / "new.MP4", base / "refw" / "shards" / "train"


def _root(files, tmp_path) -> Path:
    root = tmp_path / "k"
    shutil.copytree(files[0], root)
    return root


def _mp4(root: Path) -> Path:
    return root / "P01" / "videos" / f"{VID}.MP4"


def _replace(root: Path, files) -> tuple[int, int]:
    old = _mp4(root).stat().st_size
    shutil.copyfile(files[1], _mp4(root))
    return old, _mp4(root).stat().st_size


def _progress(out: Path, name: str = ".progress.jsonl") -> list[dict]:
    return [json.loads(x) for x in (out / name).read_text().splitlines()]


def _samples(folder: Path) -> dict[str, dict[str, bytes]]:
    return {k: f for p in sorted(folder.glob("*.tar")) for k, f in iter_tar_samples(p)}


def _opened(monkeypatch) -> list[str]:
    """The videos build-shards opens from here on."""
    opened, real = [], writer.LayoutOpener.__call__
    monkeypatch.setattr(writer.LayoutOpener, "__call__", lambda self, vid: opened.append(vid) or real(self, vid))
    return opened


def _as_fresh(out: Path, ref: Path) -> None:
    """Every sample holds the bytes of a build from scratch with the new file, and train reads them all."""
    from leap_cli.shards.dataset import ShardDataset

    got, want = _samples(out), _samples(ref)
    assert got.keys() == want.keys() and all(got[k] == want[k] for k in want)
    m, _ = load_manifest(out)
    assert m["counts"]["samples"] == 7 and m["counts"]["skipped"] == 0
    assert sum(s["count"] for s in m["shards"]) == 7
    ds = ShardDataset(out, train=False, num_frames=4, img_size=16)
    assert sorted(x["narration_id"] for x in ds) == sorted(want)


def test_a_replaced_mp4s_samples_are_taken_out_and_written_from_the_new_file(files, tmp_path, monkeypatch):
    root, work = _root(files, tmp_path), tmp_path / "w"
    out = work / "shards" / "train"
    first = build(root, work, workers=2)  # (the sizes come back from the workers too)
    size = _mp4(root).stat().st_size
    # shards of 3: P01_01_0-2 (rgb_frames: no size kept) | P01_01_3, P01_02_0-1 | P01_02_2
    assert [r.get("video_sizes") for r in _progress(out)] == [None, {VID: size}, {VID: size}]
    assert first.manifest["counts"]["shards"] == 3
    tars = tar_digests(out)
    os.utime(_mp4(root), ns=(1_000_000_000, 1_000_000_000))  # (a copy: its mtime alone changed)
    opened = _opened(monkeypatch)
    same = build(root, work)
    assert same.written_now == 0 and not opened and tar_digests(out) == tars
    assert not any("changed since" in n for n in same.notes), same.notes
    old, new = _replace(root, files)
    before = _samples(out)
    r = build(root, work)
    assert r.written_now == 3 and set(opened) == {VID}, opened  # (P01_01's frames are not read again)
    assert (f"3 samples were written from a video that has changed since ({_mp4(root)}: size {old} -> {new} bytes): "
            "taken out of their shards, to be made again from the new file") in r.notes, r.notes
    shards = r.manifest["shards"]
    # (shard 2, left empty, is filled again: shards66)
    assert [s["keys"] for s in shards] == [[f"P01_01_{i}" for i in range(3)], ["P01_01_3"], MOVED]
    assert tar_digests(out)["leap-train-000000.tar"] == tars["leap-train-000000.tar"]
    after = _samples(out)
    assert after["P01_01_3"] == before["P01_01_3"]  # (copied as it was)
    assert all(after[k]["f000.jpg"] != before[k]["f000.jpg"] for k in MOVED)
    assert [r.get("video_sizes") for r in _progress(out)] == [None, None, {VID: new}]
    _as_fresh(out, files[2])
    again = build(root, work)
    assert again.written_now == 0 and not any("changed since" in n for n in again.notes), again.notes


@pytest.mark.parametrize("when", ["written", "committed", "renamed"])
def test_a_kill_between_the_steps_leaves_a_folder_the_next_run_finishes(files, tmp_path, monkeypatch, when):
    """Killed with the shard without the samples written beside the old one (``written``), with the progress file
    naming it not yet renamed over the old (``committed``), or once renamed, before the samples are written again
    (``renamed``): no manifest names other bytes meanwhile, and the next run ends as a build from scratch."""
    root, work = _root(files, tmp_path), tmp_path / "w"
    out = work / "shards" / "train"
    build(root, work)
    _replace(root, files)
    if when in ("written", "committed"):
        kill_rewrite(monkeypatch, when)
    else:
        def die(*a, **k):
            raise _Killed

        monkeypatch.setattr(writer, "encode_video", die)
    with pytest.raises(_Killed):
        build(root, work)
    monkeypatch.undo()
    assert bool(list(out.glob(".*.tar.update"))) == (when != "renamed"), sorted(p.name for p in out.iterdir())
    with pytest.raises(LeapError, match="no shards manifest"):
        load_manifest(out)
    if when == "renamed":  # the samples are out of their shards, and to do
        assert [x["key"] for r in _progress(out) for x in r["samples"]] == [f"P01_01_{i}" for i in range(4)]
    r = build(root, work)
    assert r.written_now == 3 and not list(out.glob(".*.tar.update"))
    _as_fresh(out, files[2])


def test_a_folder_of_an_earlier_leap_is_resumed_as_it_was(files, tmp_path, monkeypatch):
    """Progress records without sizes (a leap before 2026-12-07): a replaced video changes nothing, no video is
    opened, no word is said; sizes are not made up for them."""
    root, work = _root(files, tmp_path), tmp_path / "w"
    out = work / "shards" / "train"
    build(root, work)
    progress = out / ".progress.jsonl"
    progress.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "video_sizes"}) + "\n"
                            for r in _progress(out)))
    tars, manifest = tar_digests(out), (out / "manifest.json").read_bytes()
    _replace(root, files)
    opened = _opened(monkeypatch)
    r = build(root, work)
    assert r.written_now == 0 and r.resumed_shards == 3 and not r.rewritten and not opened
    assert not any("changed since" in n for n in r.notes), r.notes
    assert tar_digests(out) == tars and (out / "manifest.json").read_bytes() == manifest
    assert all("video_sizes" not in x for x in _progress(out))


def test_a_video_not_there_now_keeps_its_samples(files, tmp_path):
    """An MP4 deleted once its shards were built (space made for the next stage): nothing is taken out."""
    root, work = _root(files, tmp_path), tmp_path / "w"
    out = work / "shards" / "train"
    build(root, work)
    tars = tar_digests(out)
    _mp4(root).unlink()
    r = build(root, work)
    assert r.written_now == 0 and r.manifest["counts"]["samples"] == 7 and tar_digests(out) == tars, r.notes


def test_parts_the_part_of_the_video_writes_it_again_and_the_set_merges(files, tmp_path):
    """--shard i/2: a run without --shard names the part holding the video's samples; that part's run takes them
    out and writes them again, and the merged manifest.json names the new shards, read by train."""
    from leap_cli.shards.dataset import ShardDataset

    root, work = _root(files, tmp_path), tmp_path / "w"
    out = work / "shards" / "train"
    for i in (0, 1):
        build(root, work, shard=ShardSpec(i, 2))
    mine = next(i for i in (0, 1) if any(x.get("video_sizes") for x in _progress(out, f".progress.shard{i}of2.jsonl")))
    _replace(root, files)
    with pytest.raises(LeapError, match=rf"part\(s\) {mine} hold samples written from a video that has changed since") as e:
        build(root, work)
    assert f"--shard {mine}/2" in e.value.fix
    r = build(root, work, shard=ShardSpec(mine, 2))
    assert r.written_now == 3 and any("3 samples were written from a video that has changed since" in n
                                      for n in r.notes), r.notes
    m, _ = load_manifest(out)
    assert m["counts"]["samples"] == 7 and sum(s["count"] for s in m["shards"]) == 7
    got = _samples(out)
    want = _samples(files[2])
    assert all(got[k] == want[k] for k in want) and got.keys() == want.keys()
    assert sorted(x["narration_id"] for x in ShardDataset(out, train=False, num_frames=4, img_size=16)) == sorted(want)
    assert "nothing new to write" in " ".join(build(root, work).notes)
