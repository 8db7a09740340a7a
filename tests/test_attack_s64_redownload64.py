"""A video replaced after the stages ran (helper redownload64, session 64): EPIC's MP4s often arrive cut short; the
researcher finds out from extract's and build-shards' summaries, downloads the video again (same path, other bytes
and size) and runs the stages again.

The synthetic kitchen's P01_02 (val) is such a cut copy; the whole file is the same kitchen built with no video cut
(``KitchenConfig.truncated_video`` -> None: the same annotations and the same frames up to the cut).

Found and fixed:
- extract's summary of the segments past a cut file's end named no file and no segment ("3 x camera: the window ends
  N s after ...; e.g. camera: ..."), so with hundreds of videos the user could not tell which one to download again:
  its ``data.detail`` now names the file and the segment, and the summary's ``first:`` line shows it.
- after the new download, ``extract --retry-errors`` then ``build-shards`` (troubleshooting.md's advice, followed
  literally) wrote the samples build-shards had skipped with the program records made from the cut video's clip text
  ("Camera: unavailable (... the file is cut short)"), without a word: build-shards now notes the program records
  whose clip extract has made again since, and says to run generate-programs (it asks only for those) first.
Left as a strict xfail in session 64, passing since session 65 (build-shards keeps each sample's program hash): once
generate-programs had made those programs again, build-shards refused the whole folder (`the programs differ`), though
only segments it skipped changed, and ``--force`` rebuilt every shard of the split.

Right as it is (checked here or by hand): ``leap info`` names the cut video, and after the download says every video
decodes to its length; extract's rerun (plain or ``--retry-errors``) makes the video's records again, as made from a
file whose size differs now (session 65: before, a plain rerun redid nothing and ``--retry-errors`` the 3 segments
past the cut alone), and deletes the frame-cache entries of the old file (``source.json`` takes the new file's
stat); build-shards' plain rerun tries exactly the skipped segments again (their ``video_stat`` changed) and
keeps the rest; generate-programs asks again only for the 3 segments whose clip text changed; a video missing at
extract time and downloaded later goes the same way, but for extract: its records keep no size, ``--retry-errors``
redoes them; a good video replaced by a cut one: extract makes its records again (those past the new cut
unavailable), build-shards has nothing new to write, and ``--force`` skips the segments past the new cut.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.kitchens import config_kitchen_copy
from tests.procs import leap_here

CUT = "P01_02"


@pytest.fixture(scope="module")
def kitchens(tmp_path_factory):
    """(a workdir whose kitchen has the cut P01_02, the whole P01_02.MP4)."""
    from leap_cli.synth.kitchen import KitchenConfig

    root = tmp_path_factory.mktemp("redownload")
    cfg = KitchenConfig(videos=2, segments_per_video=6, width=128, height=96, audio_in_mp4=False)
    config_kitchen_copy(tmp_path_factory, root / "cut" / "kitchen", cfg)
    config_kitchen_copy(tmp_path_factory, root / "whole", cfg, truncated=False)
    whole = root / "whole" / "P01" / "videos" / f"{CUT}.MP4"
    cut = root / "cut" / "kitchen" / "P01" / "videos" / f"{CUT}.MP4"
    assert whole.stat().st_size > cut.stat().st_size
    assert (root / "whole" / "annotations" / "EPIC_100_validation.csv").read_bytes() == \
        (root / "cut" / "kitchen" / "annotations" / "EPIC_100_validation.csv").read_bytes()
    return root / "cut", whole


def _workdir(kitchens, tmp_path) -> Path:
    wd = tmp_path / "w"
    shutil.copytree(kitchens[0], wd)
    return wd


def _ok(r):
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout + r.stderr


def _download_again(wd: Path, whole: Path) -> None:
    shutil.copyfile(whole, wd / "kitchen" / "P01" / "videos" / f"{CUT}.MP4")  # (in place: other size and mtime)


def test_extract_summary_names_the_cut_file_and_segment(kitchens, tmp_path, monkeypatch, capsys):
    leap = leap_here(monkeypatch, capsys)
    wd = _workdir(kitchens, tmp_path)
    said = _ok(leap("extract", "--workdir", wd, "--split", "val"))
    lines = [x.strip() for x in said.splitlines()]
    first = [x for x in lines if x.startswith("first: ")]
    assert first and f"{CUT}.MP4 [{CUT}_3]: the window ends" in first[0] and "download it again" in first[0], said
    assert not any(x.startswith("e.g. camera: the window ends") for x in lines), said  # (the first: line holds it)
    recs = [json.loads(x) for x in (wd / "descriptors" / "val.jsonl").read_text().splitlines()]
    cams = {r["narration_id"]: r["components"]["camera"] for r in recs}
    past = sorted(k for k, c in cams.items() if c["status"] == "unavailable")
    assert past == [f"{CUT}_3", f"{CUT}_4", f"{CUT}_5"], cams
    for k in past:
        data = cams[k]["data"]
        assert data["cause"] == "video" and data["detail"].endswith(data["reason"]) and f"[{k}]" in data["detail"]
        assert "kitchen" not in data["reason"] and "kitchen" not in recs[0]["text"]  # (clip texts carry no paths)


def _built_before_the_download(leap, wd: Path) -> None:
    for split in ("train", "val"):
        for stage in ("extract", "generate-programs"):
            _ok(leap(stage, "--workdir", wd, "--split", split))
        said = _ok(leap("build-shards", "--workdir", wd, "--split", split))
        assert "made from a clip text" not in said, said
    skipped = json.loads((wd / "shards" / "val" / "manifest.json").read_text())["skipped"]
    assert sorted(x["narration_id"] for x in skipped) == [f"{CUT}_3", f"{CUT}_4", f"{CUT}_5"]


def test_build_shards_notes_programs_made_from_the_cut_videos_clip(kitchens, tmp_path, monkeypatch, capsys):
    leap = leap_here(monkeypatch, capsys)
    wd = _workdir(kitchens, tmp_path)
    _built_before_the_download(leap, wd)
    assert f"{CUT} (mp4): video_info" in _ok(leap("info", "--data", wd / "kitchen"))
    _download_again(wd, kitchens[1])
    assert "all 2 videos present decode to their video_info duration" in _ok(leap("info", "--data", wd / "kitchen"))
    said = _ok(leap("extract", "--workdir", wd, "--split", "val", "--retry-errors"))
    # (all 6 of the video's records: made from a file whose size differs now, session 65; the first 3 come out the
    # same, their frames lay before the cut)
    assert "6 written now" in said and "6 records of earlier runs were made from a video that has changed" in said
    cache = wd / "frame-cache" / CUT
    stat = (wd / "kitchen" / "P01" / "videos" / f"{CUT}.MP4").stat()
    assert json.loads((cache / "source.json").read_text())["source_stat"][0] == stat.st_size
    assert sorted(p.name.split(".")[0] for p in cache.glob("*.jpgs")) == [f"{CUT}_{i}" for i in range(6)]
    # the troubleshooting row's advice, literally: build-shards again, no generate-programs in between
    said = _ok(leap("build-shards", "--workdir", wd, "--split", "val"))
    assert "3 program records" in said and f"e.g. {CUT}_3" in said and "generate-programs --split val" in said, said
    manifest = json.loads((wd / "shards" / "val" / "manifest.json").read_text())
    assert manifest["counts"]["samples"] == 6 and not manifest["skipped"]
    # the advice of the note: generate-programs asks for those 3 alone, and build-shards no longer says it
    said = _ok(leap("generate-programs", "--workdir", wd, "--split", "val"))
    assert "3 records of earlier runs were made from a clip that has changed since" in said, said
    said = _ok(leap("build-shards", "--workdir", wd, "--split", "val"))
    assert "made from a clip text" not in said and "nothing new to write" in said, said


def test_programs_made_again_for_skipped_segments_do_not_refuse_the_folder(kitchens, tmp_path, monkeypatch, capsys):
    leap = leap_here(monkeypatch, capsys)
    wd = _workdir(kitchens, tmp_path)
    _built_before_the_download(leap, wd)
    _download_again(wd, kitchens[1])
    _ok(leap("extract", "--workdir", wd, "--split", "val", "--retry-errors"))
    # what an LLM answers for the new clip text differs (the offline generator does not read it): the programs of
    # the 3 segments past the old cut, and of those alone, change
    path = wd / "programs" / "val.jsonl"
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    for r in recs:
        if r["narration_id"] in (f"{CUT}_3", f"{CUT}_4", f"{CUT}_5"):
            r["program"]["action"]["narration"] += " (seen whole)"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    r = leap("build-shards", "--workdir", wd, "--split", "val")
    assert r.returncode == 0 and "the programs differ" not in r.stdout + r.stderr, r.stdout + r.stderr
    manifest = json.loads((wd / "shards" / "val" / "manifest.json").read_text())
    assert manifest["counts"]["samples"] == 6
