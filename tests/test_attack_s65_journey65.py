"""A researcher's journey over session 65's changes (helper journey65): a finished workdir (extract,
generate-programs, build-shards of train), then one video downloaded again (another file at the same path), and
each stage run as the last one's message says, as docs/extract.md "Running long", docs/shards.md "Programs made
again" and docs/troubleshooting.md's rows of a video downloaded again tell.

Found and fixed: generate-programs' note of the programs made again (their clip changed) still said the shards
"are rebuilt with build-shards --force", which build-shards no longer needs (it rewrites the samples whose programs
changed, and writes those of the replaced video from the new file); it now says to run build-shards for the split.
extract run as a ``--shard i/n`` part said "then run generate-programs", which reads the merged file: that still held
the old records (generate-programs' hedged "written after it" warning aside), so a user who followed the note got
programs of the old file's clip texts; the note now gives the ``cat`` command that merges the parts again first.

Pinned: the other messages name the next command truthfully; nothing is redone that need not be (only the records of
the replaced video are made again, only the programs whose clip text changed, only that video's samples); a rerun
says nothing to do; ``--workers 2`` writes the same bytes; a folder of an earlier leap (records without
``video_size``, progress records without ``video_sizes`` or program hashes) is resumed by plain reruns of every stage
without a word of alarm (a video replaced after such an upgrade: upgrade65, through the frame cache and the tars'
mtimes).

The synthetic kitchen's train video P01_01 is replaced by itself mirrored left to right (the same length and fps).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.kitchens import config_kitchen_copy
from tests.procs import leap_here
from tests.test_attack_s65_replaced65 import _Unread

VID = "P01_01"  # the train video: 6 segments, shards of 2 (--max-count 2)
BS = ("--max-count", "2")


def _mp4(wd: Path) -> Path:
    return wd / "kitchen" / "P01" / "videos" / f"{VID}.MP4"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(a workdir after extract, generate-programs and build-shards --max-count 2 of train, P01_01.MP4 mirrored)."""
    import cv2

    from leap_cli.media.write import write_mp4
    from leap_cli.synth.kitchen import KitchenConfig

    root = tmp_path_factory.mktemp("journey")
    cfg = KitchenConfig(videos=2, segments_per_video=6, width=128, height=96, audio_in_mp4=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(KitchenConfig, "truncated_video", lambda self: None)  # (no video cut short: all ran well)
        config_kitchen_copy(tmp_path_factory, root / "w" / "kitchen", cfg, truncated=False)
        leap = leap_here(mp, _Unread())
        for stage in (("extract",), ("generate-programs",), ("build-shards", *BS)):
            assert leap(*stage, "--workdir", root / "w", "--split", "train").returncode == 0, stage
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


def _workdir(built, tmp_path) -> Path:
    wd = tmp_path / "w"
    shutil.copytree(built[0], wd)
    return wd


def _said(r) -> str:
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return " ".join((r.stdout + r.stderr).split())


def _jsonl(path: Path) -> dict[str, dict]:
    return {r["narration_id"]: r for r in map(json.loads, path.read_text().splitlines())}


def _tars(wd: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((wd / "shards" / "train").glob("*.tar"))}


def _follow(wd: Path, new: Path, leap, *workers: str) -> dict[str, str]:
    """Replace the video, then run each stage as the message before says: {stage: what it said}."""
    shutil.copyfile(new, _mp4(wd))
    said = {"extract": _said(leap("extract", "--workdir", wd, "--split", "train", *workers))}
    said["generate-programs"] = _said(leap("generate-programs", "--workdir", wd, "--split", "train"))
    said["build-shards"] = _said(leap("build-shards", "--workdir", wd, "--split", "train", *BS, *workers))
    return said


def test_after_a_video_downloaded_again_each_message_names_the_next_command_and_only_its_work_is_redone(
        built, tmp_path, leap):
    from leap_cli.shards.dataset import ShardDataset
    from leap_cli.shards.format import load_manifest

    wd = _workdir(built, tmp_path)
    records, programs = _jsonl(wd / "descriptors" / "train.jsonl"), _jsonl(wd / "programs" / "train.jsonl")
    old = _mp4(wd).stat().st_size
    said = _follow(wd, built[1], leap)
    # extract: the video's 6 records made again (the whole video, nothing else), the note says what next
    assert "6 selected, 0 done before, 6 written now" in said["extract"], said["extract"]
    assert (f"size {old} -> {built[1].stat().st_size} bytes): they are made again; then run generate-programs"
            in said["extract"]), said["extract"]
    changed = sorted(k for k, r in _jsonl(wd / "descriptors" / "train.jsonl").items() if r["text"] != records[k]["text"])
    assert changed, "the mirrored video's camera turns the other way"
    # generate-programs: only the programs whose clip text changed are made again, the others kept byte for byte;
    # its note says plain build-shards (it said "rebuilt with build-shards --force")
    n = len(changed)
    assert f"{n} record{'s' if n != 1 else ''} of earlier runs" in said["generate-programs"], said["generate-programs"]
    assert "then run build-shards for this split" in said["generate-programs"], said["generate-programs"]
    assert "build-shards --force" not in said["generate-programs"], said["generate-programs"]
    now = _jsonl(wd / "programs" / "train.jsonl")
    assert [k for k in now if now[k] != programs[k]] == changed
    # build-shards: the video's samples written from the new file (frames from extract's refreshed frame cache)
    assert "6 samples were written from a video that has changed since" in said["build-shards"], said["build-shards"]
    assert "taken out of their shards, to be made again from the new file" in said["build-shards"]
    # a rerun of each has nothing to do and says nothing of the video
    tars = _tars(wd)
    for stage in (("extract",), ("generate-programs",), ("build-shards", *BS)):
        again = _said(leap(*stage, "--workdir", wd, "--split", "train"))
        assert "changed since" not in again and "warning" not in again.lower(), (stage, again)
    assert "nothing new to write" in again and _tars(wd) == tars, again
    # what train reads: the 6 samples, once each, with the new programs' presence
    m, _ = load_manifest(wd / "shards" / "train")
    assert m["counts"]["samples"] == 6 and sum(s["count"] for s in m["shards"]) == 6
    ds = ShardDataset(wd / "shards" / "train", train=False, num_frames=4, img_size=16)
    assert sorted(x["narration_id"] for x in ds) == sorted(records)


def test_with_two_workers_the_same_journey_writes_the_same_bytes(built, tmp_path, leap):
    one, two = _workdir(built, tmp_path / "1"), _workdir(built, tmp_path / "2")
    _follow(one, built[1], leap)
    said = _follow(two, built[1], leap, "--workers", "2")
    assert "then run generate-programs" in said["extract"] and "then run build-shards" in said["generate-programs"]
    assert "6 samples were written from a video that has changed since" in said["build-shards"], said["build-shards"]
    # (records are appended as the workers finish them: the same records, maybe in another order)
    assert _jsonl(one / "descriptors" / "train.jsonl") == _jsonl(two / "descriptors" / "train.jsonl")
    assert _tars(one) == _tars(two)


def test_a_parts_extract_note_says_to_merge_the_parts_before_generate_programs(built, tmp_path, leap):
    """extract --shard i/2 (the parts merged with cat, then generate-programs), the video replaced: the part's note
    gives the merge command, and generate-programs run after it takes the new records without a warning."""
    wd = _workdir(built, tmp_path)
    desc = wd / "descriptors"
    for i in (0, 1):
        _said(leap("extract", "--workdir", wd, "--split", "train", "--shard", f"{i}/2"))
    mine = next(i for i in (0, 1) if (desc / f"train.shard{i}of2.jsonl").read_text())
    (desc / "train.jsonl").write_text("".join((desc / f"train.shard{i}of2.jsonl").read_text() for i in (0, 1)))
    shutil.copyfile(built[1], _mp4(wd))
    said = _said(leap("extract", "--workdir", wd, "--split", "train", "--shard", f"{mine}/2"))
    merge = f"cat {desc}/train.shard*of2.jsonl > {desc / 'train.jsonl'}"
    assert f"they are made again; then merge the parts again once each is done ({merge}) and run generate-programs" \
        in said, said
    other = _said(leap("extract", "--workdir", wd, "--split", "train", "--shard", f"{1 - mine}/2"))
    assert "changed since" not in other, other  # (the other part: no segment of the video, nothing made again)
    (desc / "train.jsonl").write_text("".join((desc / f"train.shard{i}of2.jsonl").read_text() for i in (0, 1)))
    said = _said(leap("generate-programs", "--workdir", wd, "--split", "train"))
    assert "made from a clip that has changed since" in said and "written after it" not in said, said


def test_a_folder_of_an_earlier_leap_is_resumed_by_plain_reruns_without_alarm(built, tmp_path, leap):
    """Records without video_size, progress records without video_sizes or program hashes (leap before 2026-12-07):
    each stage's plain rerun writes nothing, warns of nothing, refuses nothing; build-shards adds the program
    hashes (its tars untouched)."""
    wd = _workdir(built, tmp_path)
    path = wd / "descriptors" / "train.jsonl"
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "video_size"}) + "\n"
                            for r in _jsonl(path).values()))
    progress = wd / "shards" / "train" / ".progress.jsonl"
    lines = [json.loads(x) for x in progress.read_text().splitlines()]
    for r in lines:
        r.pop("video_sizes")
        for s in r["samples"]:
            s.pop("program")
    progress.write_text("".join(json.dumps(r) + "\n" for r in lines))
    descriptors, tars = path.read_bytes(), _tars(wd)
    for stage in (("extract",), ("generate-programs",), ("build-shards", *BS)):
        said = _said(leap(*stage, "--workdir", wd, "--split", "train"))
        assert not any(w in said.lower() for w in ("warning", "error", "changed since", "made again")), (stage, said)
    assert "0 written now: nothing to do" in _said(leap("extract", "--workdir", wd, "--split", "train"))
    assert path.read_bytes() == descriptors and _tars(wd) == tars
    assert all("program" in s for r in map(json.loads, progress.read_text().splitlines()) for s in r["samples"])
