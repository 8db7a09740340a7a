"""Session 66's changes attacked as a researcher with EPIC-KITCHENS-100 on disk meets them (helper attack66).

Found and fixed here:

- a replaced audio file (``ROOT/P01/audio/VIDEO.wav``, ``audio_size``): extract's note and generate-programs' "left
  out" line said "a video that has changed", and extract's note told the user to run build-shards to write again "the
  samples it wrote from the old file" (no frame, so no shard sample, is read from a sound file);
- extract ``--shard`` parts run from two folders with relative paths: their settings said one data set relative and
  absolute, were taken to disagree, and generate-programs looked for no replaced video;
- an empty shard filled by a run that took no sample out first (skips retried once a cut file is whole) was renamed
  over a tar the manifest names without the rewrite's start: a kill after the rename left a stale manifest.json;
- descriptors merged from ``--shard`` parts: the left-out line named a whole-split extract, which left the parts'
  old records for the next merge to bring back; it names the part and the merge now.

Also tried, found sound: a real SIGKILL at each rename of the refill run, then a plain re-run (two points kept here).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

import leap_cli.shards.writer as writer
from leap_cli.shards.format import load_manifest
from tests.kitchens import config_kitchen_copy
from tests.test_attack_s65_moved65 import _as_fresh, _mp4, files  # noqa: F401 - (a fixture)
from tests.test_shards import build

WAV, MP4 = Path("/k/P01/audio/P01_01.wav"), Path("/k/P01/videos/P01_02.MP4")


def _extract_note(capsys, files: list[Path]) -> str:
    from leap_cli.commands.extract import _print_summary
    from leap_cli.extract.runner import ExtractSummary

    s = ExtractSummary(out=Path("train.jsonl"), segments=4, annotations="EPIC_100_train.csv", order={})
    s.replaced, s.replaced_files, s.replaced_example = 3, files, f"{files[0]}: size 1 -> 2 bytes"
    _print_summary(s)
    return " ".join(capsys.readouterr().out.split())


def test_extracts_note_of_a_replaced_audio_file_names_an_audio_file_and_no_build_shards(capsys):
    said = _extract_note(capsys, [WAV])
    assert (f"3 records of earlier runs were made from an audio file that has changed since ({WAV}: size 1 -> 2 "
            "bytes): they are made again; then run generate-programs (it makes again the programs whose clip text "
            "changed)") in said, said
    assert "video" not in said.split("note:")[1] and "build-shards" not in said, said


def test_extracts_note_of_an_audio_file_and_a_video_replaced_names_both_and_build_shards(capsys):
    said = _extract_note(capsys, [WAV, MP4])
    assert (f"made from a video or audio file that has changed since ({WAV}: size 1 -> 2 bytes, and 1 other file)"
            in said and "and build-shards for this split (it writes again the samples it wrote from the old file)"
            in said), said
    said = _extract_note(capsys, [MP4, MP4.with_name("P01_03.MP4")])
    assert f"made from a video that has changed since ({MP4}: size 1 -> 2 bytes, and 1 other video)" in said, said
    assert "build-shards for this split" in said, said


def test_generates_left_out_line_of_a_replaced_audio_file_names_an_audio_file():
    from leap_cli.programs.generate import left_out_line

    inputs = SimpleNamespace(replaced={"P01_01_0": (WAV, 10, 12), "P01_01_1": (WAV, 10, 12)},
                             extract_command="leap extract --split train", extract_merge="")
    assert left_out_line(inputs) == (
        f"2 segments were left out: their descriptors were made from an audio file that has changed since ({WAV}: "
        "size 10 -> 12 bytes): run leap extract --split train (it makes them again), then generate-programs again")
    inputs.replaced["P01_02_0"] = (MP4, 5, 6)
    assert "made from a video or audio file that has changed since" in left_out_line(inputs)
    assert "and 1 other file)" in left_out_line(inputs)


def test_parts_run_from_two_folders_with_relative_paths_agree_on_their_data_set(tmp_path, monkeypatch):
    """``extract --shard`` parts given the same data set by relative paths from two folders (part 0 from the work
    directory's parent, part 1 from its grandparent; or one part's settings from a leap before ``cwd``): the same
    folder, said once relative and once absolute. They were taken to disagree, so generate-programs looked for no
    replaced video and its extract command named no --data."""
    from leap_cli import extracted

    up = tmp_path / "up"
    (up / "w" / "descriptors").mkdir(parents=True)
    (up / "w" / "kitchen").mkdir()
    for i, cwd, prefix in ((0, up, ""), (1, tmp_path, "up/")):
        (up / "w" / "descriptors" / f"train.shard{i}of2.config.json").write_text(json.dumps(
            {"data": f"{prefix}w/kitchen", "out": f"{prefix}w/descriptors/train.shard{i}of2.jsonl", "cwd": str(cwd)}))
    monkeypatch.chdir(up)
    got = extracted.inputs(Path("w/descriptors/train.jsonl"))
    assert got is not None and Path(got[0]).resolve() == (up / "w" / "kitchen").resolve(), got


def test_a_shard_filled_where_no_sample_was_taken_out_first_deletes_the_manifest(files, tmp_path,
                                                                                 monkeypatch):  # noqa: F811
    """A video downloaded again cut short: its samples are taken out and skipped, so their shard stays empty, and the
    manifest lists it. Once the whole file is there, the next run writes the skips retried into that empty shard,
    over a tar the manifest names, without the rewrite's start (``begin_rewrite``): a kill after the rename left a
    manifest.json naming the empty tar's bytes (check-shards: "shard has 22528 bytes, the manifest says 1024 (delete
    that shard file ...)"), and another ``--shard`` part could merge this part's old manifest meanwhile."""
    root, work = tmp_path / "k", tmp_path / "w"
    out = work / "shards" / "train"
    shutil.copytree(files[0], root)
    build(root, work)
    whole = files[1].read_bytes()
    _mp4(root).write_bytes(whole[: len(whole) // 3])  # (the new file cut short: its samples are skipped)
    r = build(root, work)
    assert [s["count"] for s in r.manifest["shards"]] == [3, 1, 0] and (out / "manifest.json").exists()
    shutil.copyfile(files[1], _mp4(root))
    seen, real = [], writer._ShardSink._refill

    def refill(self, rec):
        seen.append((out / "manifest.json").exists())
        real(self, rec)

    monkeypatch.setattr(writer._ShardSink, "_refill", refill)
    r = build(root, work)
    assert seen == [False], seen  # (the manifest naming the empty tar deleted before the filled one's commit)
    assert [s["count"] for s in r.manifest["shards"]] == [3, 1, 3]
    _as_fresh(out, files[2])



# the build of test_shards in a process of its own, on tmp/k into tmp/w (killed by the hook of resume60)
BUILD = ("import sys; from pathlib import Path; from tests.test_shards import build; "
         "build(Path(sys.argv[1]) / 'k', Path(sys.argv[1]) / 'w')")


@pytest.mark.parametrize("match,at", [(".tar", 2), (".progress.jsonl", 3)])
def test_a_sigkill_amid_the_refill_then_a_plain_rerun_ends_as_a_fresh_build(files, tmp_path, match,
                                                                            at):  # noqa: F811
    """A real SIGKILL of the run that takes a downloaded-again video's samples out and fills the shard they left
    empty: just after that empty tar's rename (the fill not begun), or just after the fill's progress commit (its
    ``.update`` not yet renamed over the empty tar). A plain re-run ends with every sample once, in the bytes of a
    build from scratch with the new file, no empty tar, no ``.update`` or temp file left."""
    import subprocess
    import sys

    from tests.test_attack_kill_resume import ENV, ROOT
    from tests.test_attack_s60_resume60 import killed_at_rename

    root, work = tmp_path / "k", tmp_path / "w"
    out = work / "shards" / "train"
    shutil.copytree(files[0], root)
    build(root, work)
    shutil.copyfile(files[1], _mp4(root))
    killed_at_rename([sys.executable, "-c", BUILD, str(tmp_path)], tmp_path, match, at, "after")
    assert not (out / "manifest.json").exists()  # (train refuses the folder until the re-run)
    r = subprocess.run([sys.executable, "-c", BUILD, str(tmp_path)], env=ENV, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    _as_fresh(out, files[2])
    assert not [p.name for p in out.iterdir() if p.name.endswith((".update", ".partial", ".tmp"))]
    assert all(s["count"] for s in load_manifest(out)[0]["shards"])  # (no empty tar listed)

def test_the_left_out_extract_of_a_file_merged_from_parts_names_the_part_and_the_merge(tmp_path, monkeypatch,
                                                                                         capsys, tmp_path_factory):
    """Descriptors merged from ``extract --shard`` parts (``cat``), a video downloaded again: the left-out line named
    a whole-split extract, which made the merged file again but not the parts, so the next merge brought the old
    records back (and generate-programs left them out again). It now names the part that holds the video and the
    merge; run as printed, the next generate-programs leaves nothing out and the parts hold the new records."""
    import shlex

    from leap_cli.synth.kitchen import KitchenConfig
    from tests.procs import leap_here
    from tests.test_attack_s65_stale65 import _ok, _replace

    wd = tmp_path / "w"
    monkeypatch.setattr(KitchenConfig, "truncated_video", lambda self: None)
    config_kitchen_copy(tmp_path_factory, wd / "kitchen", KitchenConfig(videos=4, segments_per_video=2, width=96,
                                                                        height=64), truncated=False)
    monkeypatch.chdir(tmp_path)
    leap = leap_here(monkeypatch, capsys)
    extract = ("extract", "--workdir", "w", "--split", "train", "--components", "narration,camera")
    for i in (0, 1):
        _ok(leap(*extract, "--shard", f"{i}/2"))
    parts = sorted((wd / "descriptors").glob("train.shard*of2.jsonl"))
    (wd / "descriptors" / "train.jsonl").write_text("".join(p.read_text() for p in parts))
    held = {i: {json.loads(x)["video_id"] for x in p.read_text().splitlines()} for i, p in enumerate(parts)}
    i, vid = next((i, min(v)) for i, v in held.items() if v)
    _replace(wd, vid)
    said = _ok(leap("generate-programs", "--workdir", "w", "--split", "train"))
    line = said.split("left out: ")[1]
    command = line.split("): run ")[1].split(" (it makes")[0]
    assert command == f"leap extract --split train --workdir w --shard {i}/2 --components narration,camera", line
    merge = "cat w/descriptors/train.shard*of2.jsonl > w/descriptors/train.jsonl"
    assert f"again), merge the parts again ({merge}), then generate-programs again" in line, line
    _ok(leap(*shlex.split(command)[1:]))
    (wd / "descriptors" / "train.jsonl").write_text("".join(p.read_text() for p in parts))
    assert "left out" not in _ok(leap("generate-programs", "--workdir", "w", "--split", "train"))
