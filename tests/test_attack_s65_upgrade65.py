"""A workdir of a leap before 2026-12-07 (records without ``video_size``, progress records without ``video_sizes``)
upgraded, then a video downloaded again (helper upgrade65): the stages notice it from what the old workdir holds.

extract: the frame cache's ``source.json`` (the ``[size, mtime_ns]`` its entries, and the records beside them, were
made from) tells the size an old record was made from (``FrameCache.made_from_size``); a claim that replaces a source
of another size notes it (``REPLACED``), so a run killed after the claim still makes the video's other records
again. build-shards: an old progress record takes the MP4 sizes now where the MP4 is older than the tar
(``_sizes_read``: written once), or the cache's where it tells another; a newer MP4 (a copy) is left unknown. An
rsync-like copy (every mtime new, the same sizes) triggers nothing. Before this, every stage said nothing to do and
kept the old file's descriptors, frame cache and samples (journey65's last test).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from tests.test_attack_s65_journey65 import BS, VID, _jsonl, _mp4, _said, _tars, _workdir, built, leap  # noqa: F401

DAY = 86400 * 10**9


def _old(wd: Path) -> None:
    """The workdir as a leap before 2026-12-07 left it: no ``video_size`` in the records, no ``video_sizes`` in the
    progress records (the program hashes kept: another change, journey65's)."""
    path = wd / "descriptors" / "train.jsonl"
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "video_size"}) + "\n"
                            for r in _jsonl(path).values()))
    progress = _progress(wd)
    lines = [json.loads(x) for x in progress.read_text().splitlines()]
    for r in lines:
        r.pop("video_sizes")
    progress.write_text("".join(json.dumps(r) + "\n" for r in lines))


def _progress(wd: Path) -> Path:
    return wd / "shards" / "train" / ".progress.jsonl"


def _records(wd: Path) -> list[dict]:
    return [json.loads(x) for x in _progress(wd).read_text().splitlines()]


def _age(paths, ns: int) -> None:
    for p in paths:
        os.utime(p, ns=(ns, ns))


def _replace(wd: Path, new: Path) -> tuple[int, int]:
    old = _mp4(wd).stat().st_size
    shutil.copyfile(new, _mp4(wd))
    return old, new.stat().st_size


def _run(leap, wd: Path, *stages) -> dict[str, str]:
    return {s[0]: _said(leap(*s, "--workdir", wd, "--split", "train")) for s in stages}


def test_extract_of_an_old_workdir_makes_a_replaced_videos_records_again_through_its_frame_cache(built, tmp_path,
                                                                                                  leap):
    wd = _workdir(built, tmp_path)
    _old(wd)
    before = _jsonl(wd / "descriptors" / "train.jsonl")
    mine = sorted(k for k, r in before.items() if r["video_id"] == VID)
    was, now = _replace(wd, built[1])
    said = _run(leap, wd, ("extract",))["extract"]
    assert "6 selected, 0 done before, 6 written now" in said, said
    assert f"size {was} -> {now} bytes): they are made again" in said, said
    after = _jsonl(wd / "descriptors" / "train.jsonl")
    assert sorted(k for k in after if after[k].get("video_size") == now) == mine
    assert all(after[k] == before[k] for k in after if k not in mine)
    again = _run(leap, wd, ("extract",))["extract"]
    assert "0 written now: nothing to do" in again and "changed since" not in again, again


def test_a_run_killed_after_the_caches_claim_still_makes_the_videos_other_records_again(built, tmp_path, leap):
    """The first run claimed the video's cache anew (source.json: the new file) and was killed before rewriting its
    records: the claim's note of the source it replaced still tells the size they were made from."""
    from leap_cli.epic.layout import DatasetLayout
    from leap_cli.extract.cache import REPLACED, FrameCache

    wd = _workdir(built, tmp_path)
    _old(wd)
    was, now = _replace(wd, built[1])
    cache = FrameCache(wd / "frame-cache")
    cache.claim(VID, DatasetLayout.open(wd / "kitchen", None).source_stat(VID))  # (what extract does first)
    held = json.loads((wd / "frame-cache" / VID / "source.json").read_text())
    assert held["source_stat"][0] == now and held[REPLACED]["source_stat"][0] == was
    said = _run(leap, wd, ("extract",))["extract"]
    assert "6 written now" in said and f"size {was} -> {now} bytes): they are made again" in said, said


def test_a_cache_folder_holding_only_entries_of_other_settings_is_not_taken_for_the_records_source(built, tmp_path,
                                                                                                   leap):
    """Its source.json was written by a run of other cache settings (another output): it says nothing of what this
    output's records were made from (kept, as before)."""
    wd = _workdir(built, tmp_path)
    _old(wd)
    for p in (wd / "frame-cache" / VID).glob("*.v3.s256q90.jpgs"):
        p.rename(p.with_name(p.name.replace(".s256q90.", ".s128q90.")))
    _replace(wd, built[1])
    said = _run(leap, wd, ("extract",))["extract"]
    assert "0 written now: nothing to do" in said and "changed since" not in said, said


def test_build_shards_takes_the_sizes_of_mp4s_older_than_their_tars_then_notices_a_video_downloaded_again(
        built, tmp_path, leap):
    wd = _workdir(built, tmp_path)
    _old(wd)
    tars = _tars(wd)
    mp4s = sorted((wd / "kitchen").glob("P*/videos/*.MP4"))
    t = _mp4(wd).stat().st_mtime_ns
    _age(mp4s, t - DAY)
    _age((wd / "shards" / "train").glob("*.tar"), t)
    said = _run(leap, wd, ("build-shards", *BS))["build-shards"]
    assert "changed since" not in said and "nothing new to write" in said, said
    sizes = {p.stem: p.stat().st_size for p in mp4s}
    assert all(r["video_sizes"] == {x["video"]: sizes[x["video"]] for x in r["samples"]} for r in _records(wd))
    assert _tars(wd) == tars
    # the video downloaded again, build-shards run alone (extract's cache refreshed or not: the size kept tells)
    _replace(wd, built[1])
    said = _run(leap, wd, ("build-shards", *BS))["build-shards"]
    assert "6 samples were written from a video that has changed since" in said, said


def test_after_the_upgrade_each_stage_run_in_turn_takes_a_video_downloaded_again(built, tmp_path, leap):
    """The MP4 is newer than the tars (downloaded after them): build-shards adopts nothing from it, but extract's
    claim (after the tars) noted the size it replaced."""
    wd = _workdir(built, tmp_path)
    _old(wd)
    was, now = _replace(wd, built[1])
    said = _run(leap, wd, ("extract",), ("generate-programs",), ("build-shards", *BS))
    assert f"size {was} -> {now} bytes): they are made again" in said["extract"], said["extract"]
    assert "6 samples were written from a video that has changed since" in said["build-shards"], said["build-shards"]
    assert f"size {was} -> {now} bytes" in said["build-shards"], said["build-shards"]
    tars = _tars(wd)
    for stage, again in _run(leap, wd, ("extract",), ("generate-programs",), ("build-shards", *BS)).items():
        assert "changed since" not in again and "made again" not in again, (stage, again)
    assert _tars(wd) == tars


def test_an_rsync_like_copy_of_an_old_workdir_triggers_nothing(built, tmp_path, leap):
    """Every file copied without its mtime (rsync without -t), the MP4s newer than some tars and older than others,
    the same sizes: no stage makes anything again."""
    src = _workdir(built, tmp_path / "a")
    _old(src)
    wd = tmp_path / "b" / "w"
    shutil.copytree(src, wd, copy_function=shutil.copyfile)
    t = _mp4(wd).stat().st_mtime_ns
    tar_paths = sorted((wd / "shards" / "train").glob("*.tar"))
    _age(tar_paths[::2], t - DAY)
    _age(tar_paths[1::2], t + DAY)
    descriptors, tars = (wd / "descriptors" / "train.jsonl").read_bytes(), _tars(wd)
    for stage, said in _run(leap, wd, ("extract",), ("generate-programs",), ("build-shards", *BS)).items():
        assert not any(w in said.lower() for w in ("warning", "changed since", "made again")), (stage, said)
    assert (wd / "descriptors" / "train.jsonl").read_bytes() == descriptors and _tars(wd) == tars
    newer = {r["name"] for r in _records(wd) if "video_sizes" not in r}
    assert newer and newer <= {p.name for p in tar_paths[::2]}, newer  # (the MP4 newer than its tar: not known)


def test_shards_written_after_the_claim_are_not_taken_for_the_replaced_files(built, tmp_path, leap):
    """The claim's note of the source it replaced tells only of tars written before it: progress records without
    sizes (stripped again here) of shards written from the new file after extract's claim take the sizes now."""
    wd = _workdir(built, tmp_path)
    _old(wd)
    _, now = _replace(wd, built[1])
    _run(leap, wd, ("extract",), ("generate-programs",), ("build-shards", *BS))
    lines = _records(wd)
    for r in lines:
        r.pop("video_sizes", None)
    _progress(wd).write_text("".join(json.dumps(r) + "\n" for r in lines))
    tars = _tars(wd)
    said = _run(leap, wd, ("build-shards", *BS))["build-shards"]
    assert "changed since" not in said and _tars(wd) == tars, said
    assert any(r.get("video_sizes", {}).get(VID) == now for r in _records(wd))
