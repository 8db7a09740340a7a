"""Mutation run over session 66's new code (helper mutnew66): tests that kill the mutants the suite let live.

110 mutants by hand in the lines session 66 added or changed (``leap_cli/extracted.py``, ``epic/layout.py``'s
``file_stat``, ``replaced_test``, ``replaced_files`` and sizes, the shard writer's refill of emptied shards and its
summary counts, ``shards/format.py``'s frames hash, generate-programs' merged parts, ``train/loop.py``'s provenance,
``extract/runner.py``'s audio sizes and earlier frame cache), each run against the s65/s66 files and the tests that
name the function: 62 killed by them, 39 by this file (each test failed on its mutant and passes on the code as it
is), 7 equivalent (``Recorded.path`` without the not-moved test: the same place, spelled otherwise; the sink's
``kept`` update, its ``_slot`` reset, its records from ``kept`` alone, ``len(completed)`` for the names written;
``merged_parts`` without its ``part_of`` test, a part having no parts of its own; extract's earlier cache recorded
where it writes one, never read then), 2 left: ``_renew`` counting a kill's rewrite it finishes among "rewritten"
(the count of a run after a SIGKILL), and the audio file stated once per segment rather than per video (speed
alone). No bug found.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from leap_cli.extracted import Recorded
from tests.kitchens import config_kitchen_copy
from tests.test_attack_s64_mut64 import kitchen, old_output  # noqa: F401 (the fixtures)
from tests.test_attack_s65_moved65 import files  # noqa: F401 (a fixture)


def _recorded(tmp_path: Path, **settings) -> Recorded:
    """Settings of extract in WORK/descriptors/train.config.json (WORK = tmp_path/w), holding ``settings``."""
    file = tmp_path / "w" / "descriptors" / "train.config.json"
    file.parent.mkdir(parents=True, exist_ok=True)
    return Recorded(file, settings)


def test_a_relative_cwd_in_the_settings_is_not_taken_for_the_folder_extract_ran_in(tmp_path, monkeypatch):
    """A ``cwd`` that is no absolute path (hand-edited settings) says nothing: a relative path is of the folder the
    reader is in, and kept relative."""
    monkeypatch.chdir(tmp_path)
    r = _recorded(tmp_path, data="kitchen", cwd="elsewhere", out="w/descriptors/train.jsonl")
    assert r.path("data") == Path("kitchen")


def test_settings_written_with_the_work_directory_at_the_root_are_not_relocated(tmp_path, monkeypatch):
    """Settings whose output was ``/descriptors/train.jsonl`` (the old work directory: ``/`` itself): every path is
    inside it, and none is taken inside the work directory the settings are in now."""
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "kitchen"
    data.mkdir()
    (tmp_path / "w" / data.relative_to("/")).mkdir(parents=True)  # (where a relocation would look: there too)
    r = _recorded(tmp_path, data=str(data), cwd="/", out="/descriptors/train.jsonl")
    assert r.path("data") == data


def test_a_path_of_the_old_work_directory_is_kept_where_only_the_old_one_holds_it(tmp_path):
    """A work directory copied without its frame cache (``w``; the old one, ``old``, still there): the cache is read
    where it is, in the old one, not in the copy that lacks it; one the copy holds is the copy's."""
    old = tmp_path / "old"
    (old / "fc").mkdir(parents=True)
    (old / "kitchen").mkdir()
    (tmp_path / "w" / "kitchen").mkdir(parents=True)
    r = _recorded(tmp_path, out=str(old / "descriptors" / "train.jsonl"), cwd=str(tmp_path), cache_frames=16,
                  frame_cache=str(old / "fc"), data=str(old / "kitchen"))
    assert r.path("frame_cache") == old / "fc"
    assert r.path("data") == tmp_path / "w" / "kitchen"


def test_a_run_without_a_frame_cache_reads_the_earlier_runs_not_its_own_setting(tmp_path):
    """``--cache-frames 0`` writes no cache, whatever ``frame_cache`` says: build-shards reads the one an earlier run
    wrote (``earlier_frame_cache``), and none where there is none."""
    made = dict(cache_frames=0, frame_cache=str(tmp_path / "fc"))
    earlier = _recorded(tmp_path, **made, earlier_frame_cache=str(tmp_path / "old-fc"))
    assert earlier.frame_cache() == tmp_path / "old-fc"
    assert _recorded(tmp_path, **made).frame_cache() is None


def test_the_options_name_a_file_where_it_is_and_a_name_as_recorded(tmp_path, monkeypatch):
    """extract's options as a command run elsewhere gives them: a weights file recorded relative (to the folder
    extract ran in) by its path now, a name (``--detector-labels coco``) as it was; an option recorded null (no value)
    is not given, whatever extract's default."""
    ran = tmp_path / "ran"
    ran.mkdir()
    (ran / "clip.pt").write_bytes(b"w")
    monkeypatch.chdir(tmp_path)
    r = _recorded(tmp_path, cwd=str(ran), out="w/descriptors/train.jsonl", detector_labels="coco",
                  clip_weights="clip.pt", detector_arch=None, camera_frames=5)
    words = r.options(tmp_path / "w")
    assert words == ["--camera-frames", "5", "--detector-labels", "coco", "--clip-weights", str(ran / "clip.pt")]


def test_the_options_of_a_run_that_wrote_no_frame_cache_say_none(tmp_path):
    """``--cache-frames 0`` (no cache written, whatever ``frame_cache`` names) is made again with ``--frame-cache
    none``; settings of a leap before the frame cache (no ``frame_cache``) name none at all."""
    r = _recorded(tmp_path, cache_frames=0, frame_cache=str(tmp_path / "fc"))
    assert r.options(tmp_path / "w") == ["--cache-frames", "0", "--frame-cache", "none"]
    assert _recorded(tmp_path, cache_frames=16).options(tmp_path / "w") == []


def test_settings_agree_only_where_every_part_can_be_read(tmp_path):
    """A merged file's own settings and a part's that cannot be read (cut short): what the part was made from is not
    known, so no data set is taken for all (``agreed``: None), as where a part names another."""
    from leap_cli.extracted import agreed

    folder = tmp_path / "descriptors"
    folder.mkdir()
    said = {"data": str(tmp_path / "kitchen"), "cwd": str(tmp_path), "out": str(folder / "train.jsonl")}
    (folder / "train.config.json").write_text(json.dumps(said))
    (folder / "train.shard0of2.config.json").write_text(json.dumps(said))
    assert agreed(folder / "train.jsonl").settings == said
    (folder / "train.shard1of2.config.json").write_text(json.dumps(said)[:20])
    assert agreed(folder / "train.jsonl") is None



@pytest.mark.parametrize("part", [{"data": "other"}, {"annotations": "other-annotations"}],
                         ids=["another-data-set", "other-annotations"])
def test_settings_agree_only_on_one_data_set_and_annotations(tmp_path, part):
    """A part's settings that name another data set or other annotations than the whole file's: ``agreed`` gives
    neither."""
    from leap_cli.extracted import agreed

    folder = tmp_path / "descriptors"
    folder.mkdir()
    said = {"data": str(tmp_path / "kitchen"), "annotations": str(tmp_path / "ann"), "cwd": str(tmp_path)}
    (folder / "train.config.json").write_text(json.dumps(said))
    (folder / "train.shard0of2.config.json").write_text(json.dumps({**said, **part}))
    assert agreed(folder / "train.jsonl") is None


@pytest.mark.parametrize("text", ['{"annotations": "ann", "cwd": "/"}', "{"], ids=["no-data-set", "cut-short"])
def test_settings_that_name_no_data_set_agree_on_none(tmp_path, text):
    """Settings alone that name no data set, or cannot be read: nothing to look for replaced videos in."""
    from leap_cli.extracted import agreed, inputs

    (tmp_path / "train.config.json").write_text(text)
    assert agreed(tmp_path / "train.jsonl") is None and inputs(tmp_path / "train.jsonl") is None


def test_the_inputs_are_the_data_set_and_the_annotations_recorded(tmp_path):
    """``inputs``: both folders extract read (generate-programs opens the data set with those annotations)."""
    from leap_cli.extracted import inputs

    said = {"data": str(tmp_path / "kitchen"), "annotations": str(tmp_path / "ann"), "cwd": str(tmp_path)}
    (tmp_path / "train.config.json").write_text(json.dumps(said))
    assert inputs(tmp_path / "train.jsonl") == (tmp_path / "kitchen", tmp_path / "ann")


@pytest.fixture
def layout(tmp_path):
    """A data set of one MP4 (10 bytes) and its audio file (7 bytes), and P01_02 of an rgb_frames folder alone."""
    from leap_cli.epic.layout import DatasetLayout

    root = tmp_path / "kitchen"
    for folder in ("videos", "audio", "rgb_frames/P01_02"):
        (root / "P01" / folder).mkdir(parents=True)
    (root / "annotations").mkdir()
    (root / "P01" / "videos" / "P01_01.MP4").write_bytes(b"v" * 10)
    (root / "P01" / "audio" / "P01_01.wav").write_bytes(b"a" * 7)
    (root / "P01" / "rgb_frames" / "P01_02" / "frame_0000000001.jpg").write_bytes(b"f")
    return DatasetLayout.open(root)


def test_a_record_is_replaced_where_a_size_it_keeps_differs_now(layout):
    """(the file, the size kept, the size now) of the MP4, else of the audio file; None where both are as kept."""
    from types import SimpleNamespace

    seg, mp4, wav = SimpleNamespace(video_id="P01_01"), layout.video_path("P01_01"), layout.audio_path("P01_01")
    test = layout.replaced_test()
    assert test({"video_size": 10, "audio_size": 7}, seg) is None
    assert test({"video_size": 9, "audio_size": 7}, seg) == (mp4, 9, 10)
    assert test({"video_size": 10, "audio_size": 6}, seg) == (wav, 6, 7)
    assert test({"audio_size": 5}, seg) == (wav, 5, 7)
    assert (layout.mp4_size("P01_01"), layout.audio_size("P01_01"), layout.mp4_size("P01_02")) == (10, 7, None)
    assert layout.audio_size("P01_02") is None
    # (build-shards' skip records: an rgb_frames folder is a video's source too)
    assert layout.video_stat("P01_02")[0] == os.stat(layout.frames_dir("P01_02")).st_size
    # (what the frame cache and skip records keep: size and mtime, not the inode's change time of a chmod)
    st = os.stat(layout.video_path("P01_01"))
    assert layout.source_stat("P01_01") == [st.st_size, st.st_mtime_ns]


def test_each_file_is_stated_once_whatever_the_records(layout, monkeypatch):
    """One stat per video and file, not one per record (a split of 60,000 records)."""
    from types import SimpleNamespace

    import leap_cli.epic.layout as module

    stated, real = [], module.file_stat
    monkeypatch.setattr(module, "file_stat", lambda path: stated.append(Path(path).suffix) or real(path))
    test, seg = layout.replaced_test(), SimpleNamespace(video_id="P01_01")
    for _ in range(3):
        assert test({"video_size": 10, "audio_size": 7}, seg) is None
    assert stated == [".MP4", ".wav"]


def test_a_record_keeping_no_size_asks_the_earlier_size_once_per_video(layout):
    """A record of an earlier leap (no ``video_size``) is replaced where ``earlier(video, size now)`` tells another
    size, asked once per video; a video with no MP4 now is never asked of."""
    from types import SimpleNamespace

    asked = []

    def earlier(video: str, now: int) -> int:
        asked.append((video, now))
        return 8

    test = layout.replaced_test(earlier)
    seg = SimpleNamespace(video_id="P01_01")
    assert test({}, seg) == (layout.video_path("P01_01"), 8, 10)
    assert test({"audio_size": 7}, seg) == (layout.video_path("P01_01"), 8, 10)
    assert test({}, SimpleNamespace(video_id="P01_02")) is None
    assert asked == [("P01_01", 10)]
    assert layout.replaced_test(lambda video, now: None)({}, seg) is None


@pytest.mark.parametrize("files, said", [(["a/P01_01.MP4", "b/P01_02.MP4"], ("a video", "other video")),
                                         (["a/P01_01.wav"], ("an audio file", "other audio file")),
                                         (["a/P01_01.MP4", "a/P01_01.wav"], ("a video or audio file", "other file"))])
def test_replaced_files_are_named_by_their_kinds(files, said):
    from leap_cli.epic.layout import replaced_files

    assert replaced_files([Path(f) for f in files]) == said


def test_the_frames_hash_covers_the_frames_alone_of_every_shard():
    """``frames_crc`` reads a sample's frames, not its ``json``; ``samples_provenance``'s ``frames`` is unknown
    (None) where one shard keeps no frames CRC-32 for a sample, and the folders' hash unknown where one folder's is;
    it changes where a frame does, whatever the programs."""
    import zlib

    from leap_cli.shards.format import folders_provenance, frames_crc, samples_provenance

    fields = {"jpg1": b"b", "jpg0": b"a", "json": b"{}"}
    assert frames_crc(fields) == frames_crc({**fields, "json": b'{"x": 1}'}) == zlib.crc32(b"ab")
    assert frames_crc({**fields, "jpg1": b"c"}) != frames_crc(fields)

    def manifest(*frames) -> dict:
        return {"shards": [{"keys": ["k0", "k1"], "crc32s": [1, 2], "frames_crc32s": list(f)} for f in frames]}

    one = samples_provenance(manifest([5, 6]))
    assert one["frames"] and samples_provenance(manifest([5, 7]))["frames"] != one["frames"]
    assert samples_provenance(manifest([5, 6], [5, None]))["frames"] is None
    assert samples_provenance(manifest([5, 6], [5]))["frames"] is None
    assert samples_provenance(manifest([5, None], [5, 6]))["frames"] is None
    # (how the samples are packed into tars does not count; no sample at all is known too, as its sha256 is)
    two = {"shards": [{"keys": ["k1"], "crc32s": [2], "frames_crc32s": [6]},
                      {"keys": ["k0"], "crc32s": [1], "frames_crc32s": [5]}]}
    assert samples_provenance(two) == samples_provenance({"shards": [dict(
        keys=["k0", "k1"], crc32s=[1, 2], frames_crc32s=[5, 6])]}), "packed otherwise"
    assert samples_provenance({"shards": []})["frames"] == samples_provenance({"shards": []})["sha256"]
    folders = {"folders": [{"manifest": manifest([5, 6]), "folder": "a"}, {"manifest": manifest([5, None]),
                                                                          "folder": "b"}]}
    assert folders_provenance(folders, Path("."))["samples"]["frames"] is None
    folders["folders"][1]["manifest"] = manifest([5, 6])
    assert folders_provenance(folders, Path("."))["samples"]["frames"]


def test_generate_programs_leaves_out_a_record_made_from_an_audio_file_alone(layout, tmp_path):
    """A record whose sound alone was read from a file (no frame read: it keeps ``audio_size``, no ``video_size``),
    that file replaced since: ``replaced_videos`` names it, as extract makes it again."""
    from types import SimpleNamespace

    from leap_cli.programs.generate import replaced_videos

    descriptors = tmp_path / "descriptors" / "train.jsonl"
    descriptors.parent.mkdir()
    descriptors.with_suffix(".config.json").write_text(json.dumps({"data": str(layout.root), "cwd": str(tmp_path)}))
    records = [{"narration_id": "P01_01_0", "audio_size": 6}, {"narration_id": "P01_01_1", "audio_size": 7}]
    segments = {r["narration_id"]: SimpleNamespace(video_id="P01_01") for r in records}
    assert replaced_videos(descriptors, records, segments) == {"P01_01_0": (layout.audio_path("P01_01"), 6, 7)}


def test_the_left_out_line_of_a_merge_names_every_part_that_holds_a_replaced_video(tmp_path, monkeypatch, capsys,
                                                                                   tmp_path_factory):
    """Descriptors merged from two ``extract --shard`` parts, a video of each downloaded again: the line names both
    parts' extracts (one alone left the other part's old records for the next merge to bring back)."""
    from leap_cli.synth.kitchen import KitchenConfig
    from tests.procs import leap_here
    from tests.test_attack_s65_stale65 import _ok, _replace

    wd = tmp_path / "w"
    monkeypatch.setattr(KitchenConfig, "truncated_video", lambda self: None)
    config_kitchen_copy(tmp_path_factory, wd / "kitchen", KitchenConfig(videos=4, segments_per_video=2, width=96,
                                                                        height=64), truncated=False)
    monkeypatch.chdir(tmp_path)
    leap = leap_here(monkeypatch, capsys)
    for i in (0, 1):
        _ok(leap("extract", "--workdir", "w", "--split", "train", "--components", "narration", "--shard", f"{i}/2"))
    parts = sorted((wd / "descriptors").glob("train.shard*of2.jsonl"))
    (wd / "descriptors" / "train.jsonl").write_text("".join(p.read_text() for p in parts))
    held = [{json.loads(x)["video_id"] for x in p.read_text().splitlines()} for p in parts]
    assert all(held), held
    for videos in held:
        _replace(wd, min(videos))
    line = _ok(leap("generate-programs", "--workdir", "w", "--split", "train")).split("left out: ")[1]
    commands = line.split("): run ")[1].split(" (it makes")[0]
    assert commands == " and ".join(f"leap extract --split train --workdir w --shard {i}/2 --components narration"
                                    for i in (0, 1)), line


def test_the_sink_fills_the_emptied_shard_with_its_skips_then_follows_the_kept_ones(tmp_path):
    """An emptied kept shard (index 1 of 0-1, its skip records kept) is filled first, after ``begin_rewrite``, and
    keeps its skips; the samples after it go to a new shard after the kept ones (index 2), not over a kept one."""
    from leap_cli.io import JsonlAppender, read_jsonl
    from leap_cli.shards.format import sample_bytes, shard_name
    from leap_cli.shards.writer import ShardSettings, _ShardSink

    skip = {"key": "P01_01_9", "reason": "unreadable"}
    kept = [{"index": i, "name": shard_name("train", i), "samples": samples, "skipped": skipped}
            for i, samples, skipped in ((0, [{"key": "P01_01_0"}], []), (1, [], [skip]))]
    for r in kept:
        (tmp_path / r["name"]).write_bytes(b"\0" * 1024)
    progress = tmp_path / "train.progress.jsonl"
    progress.write_text("".join(json.dumps(r) + "\n" for r in kept))
    begun = []
    sink = _ShardSink(tmp_path, "train", "", ShardSettings(split="train", max_count=1),
                      JsonlAppender(progress, key="name", keep_records=True), "h", kept, {}, {}, {},
                      lambda: begun.append(1))
    for key in ("P01_02_0", "P01_02_1"):
        sink.add(key, sample_bytes(key, {"json": b"{}"}), {"key": key, "video": "P01_02"})
    assert sink.finish() == []
    sink.progress.close()
    assert [(r["index"], [x["key"] for x in r["samples"]]) for r in sink.completed] == [(1, ["P01_02_0"]),
                                                                                      (2, ["P01_02_1"])]
    assert sink.completed[0]["skipped"] == [skip] and begun
    assert [r["index"] for r in read_jsonl(progress)] == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == [shard_name("train", i) for i in range(3)]


def test_the_this_run_column_says_none_of_a_run_that_wrote_no_shard():
    """A build of no shard at all (every segment skipped): "none", not an empty cell."""
    from types import SimpleNamespace

    from leap_cli.commands.shards import _shards_done

    assert _shards_done(SimpleNamespace(written_shards=0, rewritten_shards=0), 0) == "none"
    assert _shards_done(SimpleNamespace(written_shards=1, rewritten_shards=1), 4) == "1 written, 1 rewritten, 2 kept"


def test_a_record_made_again_in_part_keeps_the_audio_size_it_was_made_from(kitchen, old_output, tmp_path):  # noqa: F811
    """An earlier leap's records whose camera alone is made again: the audio they keep was read from the audio file
    before, and its size stays in the record (else a later replacement of that file goes unnoticed)."""
    from leap_cli.extract.runner import run_extract
    from leap_cli.io import read_jsonl
    from tests.extract_kitchen import kitchen_config

    out = tmp_path / "train.jsonl"
    out.write_text(old_output)
    before = {r["narration_id"]: r.get("audio_size") for r in read_jsonl(out)}
    assert any(isinstance(v, int) for v in before.values()), before  # (a video with an audio file)
    assert run_extract(kitchen_config(kitchen, out)).outdated_made["camera"]  # (made again in part)
    assert {r["narration_id"]: r.get("audio_size") for r in read_jsonl(out)} == before


def test_extracts_note_counts_every_replaced_video(tmp_path, monkeypatch, capsys, tmp_path_factory):
    """Two videos downloaded again: extract's note names the first and counts the other. Records without audio keep
    no audio file's size (not read)."""
    from leap_cli.synth.kitchen import KitchenConfig
    from tests.procs import leap_here
    from tests.test_attack_s65_stale65 import _ok, _replace

    wd = tmp_path / "w"
    monkeypatch.setattr(KitchenConfig, "truncated_video", lambda self: None)
    config_kitchen_copy(tmp_path_factory, wd / "kitchen", KitchenConfig(videos=4, segments_per_video=2, width=96,
                                                                        height=64, audio_in_mp4=False),
                        truncated=False)
    monkeypatch.chdir(tmp_path)
    leap = leap_here(monkeypatch, capsys)
    extract = ("extract", "--workdir", "w", "--split", "train", "--components", "narration")
    _ok(leap(*extract))
    records = [json.loads(x) for x in (wd / "descriptors" / "train.jsonl").read_text().splitlines()]
    assert not [r for r in records if "audio_size" in r]  # (no sound read: the audio files' sizes say nothing)
    videos = sorted({r["video_id"] for r in records})
    assert len(videos) >= 2, videos
    for vid in videos[:2]:
        _replace(wd, vid)
    said = _ok(leap(*extract))
    assert "bytes, and 1 other video): they are made again" in said, said


def test_each_samples_frames_crc_is_that_of_all_its_frames(files, tmp_path):  # noqa: F811
    """The manifest's ``frames_crc32s`` are the CRC-32s of each sample's frames in its tar (every frame, no json)."""
    import shutil
    import tarfile

    from leap_cli.shards.format import frames_crc
    from tests.test_shards import build

    root, work = tmp_path / "k", tmp_path / "w"
    shutil.copytree(files[0], root)
    shards = build(root, work).manifest["shards"]
    checked = 0
    for shard in shards:
        fields: dict[str, dict[str, bytes]] = {}
        with tarfile.open(work / "shards" / "train" / shard["name"]) as tar:
            for member in tar.getmembers():
                key, field = member.name.split(".", 1)
                fields.setdefault(key, {})[field] = tar.extractfile(member).read()
        for key, crc in zip(shard["keys"], shard["frames_crc32s"]):
            assert len(fields[key]) > 2 and crc == frames_crc(fields[key]), key
            checked += 1
    assert checked == sum(s["count"] for s in shards) > 0


def test_merged_parts_are_those_of_a_merge_that_hold_the_videos(tmp_path):
    """The parts (i, n) whose videos are among those asked, of descriptors merged from parts beside them; none of a
    part itself, nor of a folder holding parts of two counts (no one merge)."""
    from types import SimpleNamespace

    from leap_cli.common import ShardSpec
    from leap_cli.programs.generate import merged_parts

    segments = {f"P01_0{v}_0": SimpleNamespace(video_id=f"P01_0{v}") for v in range(1, 5)}
    order = list(segments.values())
    holds = [{s.video_id for s in ShardSpec(i, 2).select(order, key=lambda s: s.video_id)} for i in (0, 1)]
    assert all(holds), holds
    for i in (0, 1):
        (tmp_path / f"train.shard{i}of2.jsonl").write_text("")
    whole = tmp_path / "train.jsonl"
    assert merged_parts(whole, segments, {min(holds[1])}) == [(1, 2)]
    assert merged_parts(whole, segments, {min(holds[0]), min(holds[1])}) == [(0, 2), (1, 2)]
    assert merged_parts(tmp_path / "train.shard0of2.jsonl", segments, {min(holds[0])}) == []
    (tmp_path / "train.shard0of3.jsonl").write_text("")
    assert merged_parts(whole, segments, {min(holds[0])}) == []


def test_file_stat_is_none_for_any_path_that_cannot_be_stated(tmp_path):
    """A name under a file (NotADirectoryError), not only one not there: None, no exception."""
    from leap_cli.epic.layout import file_stat

    (tmp_path / "f").write_bytes(b"x")
    assert file_stat(tmp_path / "f")[0] == 1
    assert file_stat(tmp_path / "f" / "x") is None and file_stat(tmp_path / "gone") is None


def test_a_run_without_a_cache_records_the_earlier_one_only_where_it_is_there(tmp_path):
    """``--frame-cache none`` after a run that wrote a cache: the settings name that cache (build-shards reads it) only
    where its folder is there; one deleted since is not named (build-shards would say it cannot find it)."""
    from leap_cli.extract.runner import ExtractConfig, _settings_file
    from leap_cli.extracted import config_path

    out = tmp_path / "descriptors" / "train.jsonl"
    out.parent.mkdir()
    config_path(out).write_text(json.dumps({"cache_frames": 16, "frame_cache": str(tmp_path / "fc"),
                                            "cwd": str(tmp_path)}))
    cfg = ExtractConfig(data=tmp_path / "kitchen", split="train", out=out, frame_cache=None)
    assert "earlier_frame_cache" not in _settings_file(cfg)
    (tmp_path / "fc").mkdir()
    assert _settings_file(cfg)["earlier_frame_cache"] == str(tmp_path / "fc")
