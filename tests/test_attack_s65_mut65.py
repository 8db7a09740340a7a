"""Mutation run over a video downloaded again (helper mut65, session 65): extract's ``video_size`` of a record and
``replaced_test``, build-shards' ``video_sizes`` of a shard's progress record and ``_drop_replaced``. Each test here
kills mutants the tests of replaced65, moved65 and journey65 let live (named in its docstring).

62 mutants by hand: 32 killed by those files (2 more, ``or renewed`` and the rewrite's fsync, by attack65 and
update65), 20 by this file, 7 equivalent (``made_from``'s early None; the reannotated and replaced tests in either
order, a record of both made again either way; ``_drop_replaced`` returning True with nothing taken out; the drop
before the CRC-32 check or without the size check of an intact shard, the outcome the same; the last of each name
read reversed after ``_renew``, which writes one line per name; ``job.clock`` never None from ``_plan``), 1 left:
``_built_in_parts``' ``elif`` as ``if`` names in its fix twice a part holding both a changed skip and samples of a
replaced MP4 (cosmetic). No bug found: every test here passes on the code as it is.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.kitchens import config_kitchen_copy
from tests.procs import leap_here
from tests.test_attack_s65_replaced65 import _Unread
from tests.test_attack_s65_update65 import vocab  # noqa: F401 (over this file's root)

VID = "P01_02"  # the val video


@pytest.fixture
def leap(monkeypatch, capsys):
    return leap_here(monkeypatch, capsys)


def _ok(r) -> str:
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return " ".join((r.stdout + r.stderr).split())


# ---- extract ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kitchen(tmp_path_factory):
    """(a workdir after extract of val, whose MP4s hold their sound too; a copy of P01_02.MP4 with 8 bytes more: the
    same frames, another size)."""
    from leap_cli.synth.kitchen import KitchenConfig

    root = tmp_path_factory.mktemp("kitchen")
    cfg = KitchenConfig(videos=2, segments_per_video=3, width=64, height=48, audio_in_mp4=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(KitchenConfig, "truncated_video", lambda self: None)
        config_kitchen_copy(tmp_path_factory, root / "w" / "kitchen", cfg, truncated=False)
        leap = leap_here(mp, _Unread())
        assert leap("extract", "--workdir", root / "w", "--split", "val").returncode == 0
    (root / "other.MP4").write_bytes(_mp4(root / "w").read_bytes() + b"\0" * 8)
    return root / "w", root / "other.MP4"


def _workdir(kitchen, tmp_path) -> Path:
    shutil.copytree(kitchen[0], tmp_path / "w")
    return tmp_path / "w"


def _mp4(wd: Path) -> Path:
    return wd / "kitchen" / "P01" / "videos" / f"{VID}.MP4"


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _records(path: Path) -> dict[str, dict]:
    return {r["narration_id"]: r for r in _lines(path)}


def _audio(leap, wd: Path, out: Path) -> str:
    return _ok(leap("extract", "--workdir", wd, "--split", "val", "--components", "audio", "--frame-cache", "none",
                    "--out", out))


def test_audio_alone_keeps_the_size_only_where_it_was_read_from_the_mp4s_track(kitchen, tmp_path, leap):
    """Sound read from the video's audio file keeps no size (mutant: ``and self._audio_file``), sound read from the
    MP4's own track keeps it (mutant: ``made_from`` without its audio condition): the latter is made again once the
    MP4 is replaced, the former is not."""
    wd = _workdir(kitchen, tmp_path)
    wav, track = wd / "descriptors" / "wav.jsonl", wd / "descriptors" / "track.jsonl"
    _audio(leap, wd, wav)
    assert len(_records(wav)) == 3 and all("video_size" not in r for r in _records(wav).values()), _lines(wav)
    size = _mp4(wd).stat().st_size
    (wd / "kitchen" / "P01" / "audio" / f"{VID}.wav").unlink()
    _audio(leap, wd, track)
    assert {r.get("video_size") for r in _records(track).values()} == {size}, _lines(track)
    shutil.copyfile(kitchen[1], _mp4(wd))
    said = _audio(leap, wd, track)
    assert "3 records of earlier runs were made from a video that has changed since" in said, said
    said = _audio(leap, wd, wav)
    assert "nothing to do" in said and "changed since" not in said, said


def test_a_video_not_there_now_keeps_its_records_and_each_is_stated_once(kitchen, tmp_path, leap, monkeypatch):
    """A rerun stats each MP4 once, not once per record (mutant: no memo in ``replaced_test``); an MP4 deleted since
    (space made once its records were made) makes no record again (mutant: ``now != held`` without ``now is not
    None``)."""
    import leap_cli.epic.layout as layout  # (its one stat helper: extract's own went into it, session 66)

    wd = _workdir(kitchen, tmp_path)
    text = (wd / "descriptors" / "val.jsonl").read_bytes()
    stated, real = [], layout.file_stat
    monkeypatch.setattr(layout, "file_stat", lambda path: stated.append(path) or real(path))
    said = _ok(leap("extract", "--workdir", wd, "--split", "val"))
    assert "3 done before, 0 written now: nothing to do" in said, said
    # (and the audio file its records' audio was read from, whose size they keep too: session 66)
    assert stated == [_mp4(wd), wd / "kitchen" / "P01" / "audio" / f"{VID}.wav"], stated
    _mp4(wd).unlink()
    said = _ok(leap("extract", "--workdir", wd, "--split", "val"))
    assert "3 done before, 0 written now: nothing to do" in said and "changed since" not in said, said
    assert (wd / "descriptors" / "val.jsonl").read_bytes() == text


def test_a_file_holding_a_key_twice_is_counted_by_its_last_line(kitchen, tmp_path, leap):
    """Two files concatenated (merged --shard parts, or a run killed before its rewrite): a key's last line decides
    why it is made again, and each note counts only those. K0: a replaced line, then one of other annotations
    (mutant: the reannotated branch keeps it in ``replaced``); K1: a line an earlier leap made otherwise, then a
    replaced one (mutant: the replaced branch keeps it in ``remade``); K2: a replaced line, then a good one (mutant:
    ``replaced`` not dropped by a later good line)."""
    wd = _workdir(kitchen, tmp_path)
    path = wd / "descriptors" / "val.jsonl"
    r0, r1, r2 = sorted(_lines(path), key=lambda r: r["narration_id"])
    moved = {"video_size": r0["video_size"] + 1}
    lines = [{**r0, **moved}, {**r0, "annotation_hash": "0" * len(r0["annotation_hash"])},
             {**r1, "versions": {**r1["versions"], "camera": 1}}, {**r1, **moved},
             {**r2, **moved}, r2]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    said = _ok(leap("extract", "--workdir", wd, "--split", "val"))
    assert "1 done before, 2 written now" in said, said
    assert "note: 1 record of earlier runs was made from other annotations" in said, said
    assert "note: 1 record of earlier runs was made from a video that has changed since" in said, said
    assert "another leap made otherwise" not in said, said


def test_a_part_remake_that_reads_no_video_keeps_the_size_of_the_file_the_rest_was_made_from(kitchen, tmp_path, leap):
    """The narration made again (it reads no video) beside parts kept: the record keeps the size its kept parts were
    made from (mutant: the size of the part made now, none), so a video replaced later is still noticed."""
    wd = _workdir(kitchen, tmp_path)
    path = wd / "descriptors" / "val.jsonl"
    size = _mp4(wd).stat().st_size
    lines = _lines(path)
    path.write_text("".join(json.dumps({**r, "versions": {**r["versions"], "narration": 0}}) + "\n" for r in lines))
    said = _ok(leap("extract", "--workdir", wd, "--split", "val"))
    assert "only those parts are made again (narration of 3)" in said, said
    assert {r.get("video_size") for r in _records(path).values()} == {size}, _lines(path)
    shutil.copyfile(kitchen[1], _mp4(wd))
    said = _ok(leap("extract", "--workdir", wd, "--split", "val"))
    assert "3 records of earlier runs were made from a video that has changed since" in said, said


def test_a_replaced_record_holding_a_failed_part_is_not_left_to_retry_errors(kitchen, tmp_path, leap):
    """A record of the old file whose camera failed is made again whole: the note of --retry-errors does not count it
    (mutant: ``made_again`` without the replaced records)."""
    wd = _workdir(kitchen, tmp_path)
    path = wd / "descriptors" / "val.jsonl"
    lines = _lines(path)
    failed = {"status": "error", "source": "camera", "data": {"reason": "x"}}
    path.write_text("".join(json.dumps({**r, "components": {**r["components"], "camera": failed}}) + "\n"
                            for r in lines))
    said = _ok(leap("extract", "--workdir", wd, "--split", "val"))
    assert "3 done before, 0 written now: nothing to do" in said and "--retry-errors redoes them" in said, said
    shutil.copyfile(kitchen[1], _mp4(wd))
    said = _ok(leap("extract", "--workdir", wd, "--split", "val"))
    assert "3 records of earlier runs were made from a video that has changed since" in said, said
    assert "--retry-errors" not in said, said


def test_the_note_of_replaced_videos_counts_the_others_and_one_record(capsys):
    """Two videos replaced: the note names the first and counts the other (mutant: ``if more > 1``: the other left
    unsaid); one record is said in the singular."""
    from leap_cli.commands.extract import _print_summary
    from leap_cli.extract.runner import ExtractSummary

    s = ExtractSummary(out=Path("val.jsonl"), segments=4, annotations="EPIC_100_validation.csv", order={})
    s.replaced, s.replaced_files = 4, [Path("/k/P01_01.MP4"), Path("/k/P01_02.MP4")]
    s.replaced_example = "/k/P01_01.MP4: size 1 -> 2 bytes"
    _print_summary(s)
    said = " ".join(capsys.readouterr().out.split())
    assert ("note: 4 records of earlier runs were made from a video that has changed since (/k/P01_01.MP4: size 1 -> "
            "2 bytes, and 1 other video): they are made again; then run generate-programs") in said, said
    s.replaced, s.replaced_files = 1, [Path("/k/P01_01.MP4")]
    _print_summary(s)
    said = " ".join(capsys.readouterr().out.split())
    assert ("note: 1 record of earlier runs was made from a video that has changed since (/k/P01_01.MP4: size 1 -> "
            "2 bytes): it is made again; then run") in said, said


# ---- build-shards -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """test_shards' tiny root whose two training videos are MP4s (their frames as they were): shards of 3 are
    P01_01_0-2 | P01_01_3, P01_02_0-1 | P01_02_2."""
    from tests.test_shards import make_root

    root = make_root(tmp_path_factory.mktemp("mp4s"))
    (root / "P01" / "videos").mkdir()
    for vid in ("P01_01", "P01_02"):
        shutil.rmtree(root / "P01" / "rgb_frames" / vid)
        _write_mp4(root, vid, 0)
    return root


def _write_mp4(root: Path, vid: str, shift: int) -> Path:
    """The video's MP4, its colours' green shifted by ``shift`` (another file, another size)."""
    import numpy as np

    from leap_cli.media.write import write_mp4
    from tests.test_shards import FPS, FRAMES_PER_VIDEO, colour

    frames = []
    for n in range(1, FRAMES_PER_VIDEO + 1):
        img = np.zeros((48, 64, 3), np.uint8)
        img[:] = colour(vid, n)
        img[..., 1] = (img[..., 1].astype(int) + shift) % 256
        frames.append(img)
    path = root / "P01" / "videos" / f"{vid}.MP4"
    write_mp4(path, frames, FPS, gop=10)
    return path


def _copy(root: Path, tmp_path: Path) -> Path:
    shutil.copytree(root, tmp_path / "k")
    return tmp_path / "k"


def _progress(out: Path) -> list[dict]:
    return _lines(out / ".progress.jsonl")


def test_each_shard_keeps_the_sizes_of_its_own_samples_videos_and_each_mp4_is_stated_once(root, tmp_path, vocab,
                                                                                          monkeypatch):
    """A shard's ``video_sizes`` name the videos of its samples alone (mutant: a shard's sizes not emptied as the
    next one opens: the third named P01_01 too, and was rewritten, unchanged, once P01_01 was replaced); a rerun
    stats each MP4 once (mutant: no memo in ``_drop_replaced``)."""
    import leap_cli.shards.writer as writer
    from tests.test_attack_s65_update65 import _build
    from tests.test_shards import tar_digests

    root, work = _copy(root, tmp_path), tmp_path / "w"
    out = work / "shards" / "train"
    _build(root, work, vocab)
    size = {v: (root / "P01" / "videos" / f"{v}.MP4").stat().st_size for v in ("P01_01", "P01_02")}
    assert [r.get("video_sizes") for r in _progress(out)] == [
        {"P01_01": size["P01_01"]}, size, {"P01_02": size["P01_02"]}]
    last, tars = _progress(out)[2], tar_digests(out)
    stated, real = [], writer.LayoutOpener.mp4_stat
    monkeypatch.setattr(writer.LayoutOpener, "mp4_stat", lambda self, vid: stated.append(vid) or real(self, vid))
    assert _build(root, work, vocab).written_now == 0
    assert sorted(stated) == ["P01_01", "P01_02"], stated
    new = _write_mp4(root, "P01_01", 100).stat().st_size
    assert new != size["P01_01"]
    r = _build(root, work, vocab)
    assert r.written_now == 4 and any("4 samples were written from a video that has changed since" in n
                                      for n in r.notes), r.notes
    assert _progress(out)[2] == last and tar_digests(out)["leap-train-000002.tar"] == tars["leap-train-000002.tar"]
    # (shard 0, left empty, is filled again with 3 of P01_01's samples, the 4th in a new shard: shards66)
    assert [r.get("video_sizes") for r in _progress(out)] == [{"P01_01": new}, {"P01_02": size["P01_02"]},
                                                              {"P01_02": size["P01_02"]}, {"P01_01": new}]


def test_new_programs_and_a_replaced_video_in_one_run(root, tmp_path, vocab):
    """A program changed (P01_01_1, first shard) and P01_02 replaced before one run: it rewrites the first shard with
    the new target and writes P01_02's samples from the new file (mutant: ``_drop_replaced`` given the records as they
    were before ``_renew`` took the programs: of other programs, so nothing was taken out, and the old file's samples
    stayed until a later run)."""
    from tests.test_attack_s65_update65 import _build
    from tests.test_shards import tar_digests

    root, work = _copy(root, tmp_path), tmp_path / "w"
    out = work / "shards" / "train"
    _build(root, work, vocab)
    _write_mp4(root, "P01_02", 100)
    r = _build(root, work, vocab, changed=True)
    assert r.written_now == 3 and any("3 samples were written from a video that has changed since" in n
                                      for n in r.notes), r.notes
    assert any("the programs of 1 sample already written changed" in n for n in r.notes), r.notes
    ref = tmp_path / "ref"
    shutil.copytree(root, tmp_path / "k2")
    _build(tmp_path / "k2", ref, vocab, changed=True)
    from tests.test_attack_s65_moved65 import _samples

    got, want = _samples(out), _samples(ref / "shards" / "train")
    assert got.keys() == want.keys() and all(got[k] == want[k] for k in want)
    tars = tar_digests(out)
    again = _build(root, work, vocab, changed=True)
    assert again.written_now == 0 and tar_digests(out) == tars, again.notes


def test_a_refused_build_of_other_settings_leaves_the_folder_as_it_was(root, tmp_path, vocab):
    """P01_02 replaced, then a build with other settings (no --force): refused before any shard is touched (mutant:
    ``_drop_replaced`` over records of other settings: the manifest deleted and a shard rewritten, then refused)."""
    from leap_cli.errors import LeapError
    from tests.test_attack_s65_update65 import _build
    from tests.test_shards import tar_digests

    root, work = _copy(root, tmp_path), tmp_path / "w"
    out = work / "shards" / "train"
    _build(root, work, vocab)
    tars, manifest, progress = tar_digests(out), (out / "manifest.json").read_bytes(), _progress(out)
    _write_mp4(root, "P01_02", 100)
    with pytest.raises(LeapError, match="other inputs or settings"):
        _build(root, work, vocab, frames=6)
    assert tar_digests(out) == tars and (out / "manifest.json").read_bytes() == manifest
    assert _progress(out) == progress and not list(out.glob(".*.update"))


class _Killed(BaseException):
    pass


def test_a_kill_as_the_progress_file_records_a_taken_out_shard_keeps_the_old_tar(root, tmp_path, vocab, monkeypatch):
    """Killed as the progress file would record the second shard written without P01_02's samples: the old tar is
    kept beside its record, so the next run takes them out again and decodes P01_02 alone (mutant: the tar renamed
    before the progress file is written: the second shard, of another size than its record, was decoded again with
    P01_01_3 and those after it)."""
    import leap_cli.io as leap_io
    import leap_cli.shards.writer as writer
    from tests.test_attack_s65_update65 import _build

    root, work = _copy(root, tmp_path), tmp_path / "w"
    out = work / "shards" / "train"
    _build(root, work, vocab)
    old = (out / "leap-train-000001.tar").read_bytes()
    _write_mp4(root, "P01_02", 100)
    with monkeypatch.context() as m:
        real = leap_io.atomic_write_text

        def write(path, *a, **k):
            if Path(path).name == ".progress.jsonl":
                raise _Killed
            return real(path, *a, **k)

        m.setattr(leap_io, "atomic_write_text", write)
        with pytest.raises(_Killed):
            _build(root, work, vocab)
    assert (out / "leap-train-000001.tar").read_bytes() == old
    opened, real_open = [], writer.LayoutOpener.__call__
    monkeypatch.setattr(writer.LayoutOpener, "__call__", lambda self, vid: opened.append(vid) or real_open(self, vid))
    r = _build(root, work, vocab)
    assert r.written_now == 3 and set(opened) == {"P01_02"}, (r.written_now, opened)
    assert not list(out.glob(".*.update"))


def test_a_damaged_shard_among_those_taken_out_is_decoded_again_with_those_after_it(root, tmp_path, vocab):
    """P01_01_3's bytes damaged (its size kept: the CRC-32 tells) in the second shard, and P01_02 replaced: that
    shard and the one after are decoded again, as ``_resume`` redoes a damaged shard (mutant: its record kept: the
    damaged sample and P01_02's old ones stayed), and the folder ends as a build from scratch."""
    from tests.test_attack_s65_attack65 import _damage
    from tests.test_attack_s65_moved65 import _samples
    from tests.test_attack_s65_update65 import _build

    root, work = _copy(root, tmp_path), tmp_path / "w"
    out = work / "shards" / "train"
    _build(root, work, vocab)
    _damage(out, "P01_01_3")
    _write_mp4(root, "P01_02", 100)
    r = _build(root, work, vocab)
    assert r.written_now == 4, (r.written_now, r.notes)
    _build(root, tmp_path / "ref", vocab)
    got, want = _samples(out), _samples(tmp_path / "ref" / "shards" / "train")
    assert got.keys() == want.keys() and all(got[k] == want[k] for k in want)


def test_parts_whose_mp4_is_not_there_now_are_done(root, tmp_path, vocab):
    """--shard i/2, all done and merged, then P01_02.MP4 deleted (space made): a build without --shard says nothing
    new to write, as a part's own run keeps the samples (mutant: a size not there now taken as changed: the part
    named as holding samples of a changed video)."""
    from leap_cli.common import ShardSpec
    from tests.test_attack_s65_update65 import _build

    root, work = _copy(root, tmp_path), tmp_path / "w"
    for i in (0, 1):
        _build(root, work, vocab, shard=ShardSpec(i, 2))
    (root / "P01" / "videos" / "P01_02.MP4").unlink()
    r = _build(root, work, vocab)
    assert r.written_now == 0 and any("nothing new to write" in n for n in r.notes), r.notes


def test_an_opener_that_cannot_stat_mp4s_keeps_the_samples(root, tmp_path, vocab, monkeypatch):
    """An opener without ``mp4_stat`` (``build_shards`` takes any ``FrameOpener``) whose ``video_stat`` gave the
    shards their sizes: a rerun after P01_02 was replaced keeps the samples, it cannot tell (mutant: ``_renewed``
    calls ``_drop_replaced`` with no ``mp4_stat``: TypeError)."""
    import leap_cli.shards.writer as writer
    from tests.test_attack_s65_update65 import _build

    root, work = _copy(root, tmp_path), tmp_path / "w"
    monkeypatch.delattr(writer.LayoutOpener, "mp4_stat")
    _build(root, work, vocab)
    assert any(r.get("video_sizes") for r in _progress(work / "shards" / "train"))
    _write_mp4(root, "P01_02", 100)
    r = _build(root, work, vocab)
    assert r.written_now == 0 and r.manifest["counts"]["samples"] == 7, r.notes


def test_a_video_replaced_while_it_is_read_is_written_again_by_the_next_run(root, tmp_path, vocab, monkeypatch):
    """P01_02 replaced once build-shards has opened it (the old file's frames read, through the open file): its
    shards keep the size taken before the file was opened, so the next run writes its samples from the new file
    (mutant: the size taken after opening, the new file's: the old frames kept for good)."""
    import os

    import leap_cli.shards.writer as writer
    from tests.test_attack_s65_moved65 import _samples
    from tests.test_attack_s65_update65 import _build

    root, work = _copy(root, tmp_path), tmp_path / "w"
    ref = _copy(root, tmp_path / "r")
    new = _write_mp4(ref, "P01_02", 100)
    _build(ref, tmp_path / "ref", vocab)
    real = writer.LayoutOpener.__call__

    def replace_once_opened(self, vid):
        reader = real(self, vid)
        if vid == "P01_02" and new.exists():
            shutil.copyfile(new, tmp_path / "new.MP4")
            os.replace(tmp_path / "new.MP4", root / "P01" / "videos" / "P01_02.MP4")
            new.unlink()
        return reader

    with monkeypatch.context() as m:
        m.setattr(writer.LayoutOpener, "__call__", replace_once_opened)
        _build(root, work, vocab)
    r = _build(root, work, vocab)
    assert r.written_now == 3, (r.written_now, r.notes)
    got, want = _samples(work / "shards" / "train"), _samples(tmp_path / "ref" / "shards" / "train")
    assert got.keys() == want.keys() and all(got[k] == want[k] for k in want)
