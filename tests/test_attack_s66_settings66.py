"""extract's recorded settings as the later stages read them (helper settings66, session 66).

``leap extract`` writes its settings beside its output (``SPLIT.config.json``, and each ``--shard`` part's); one reader
(``leap_cli/extracted.py``) now serves generate-programs (the data set a replaced video is looked for in, the extract it
names to make the records again) and build-shards (the frame cache it reads by default). Found and fixed here:

- the extract that generate-programs' "left out" line names lacked extract's own options (``--components``,
  ``--frame-cache DIR``, ...): run as printed it was refused (other settings) or made other descriptors;
- a work directory copied elsewhere: its settings' absolute paths (the old location's data set and frame cache) were
  read as they were, so a video replaced in the copy was not noticed (the old location's was looked at, or none);
- ``extract --frame-cache none`` after an ``extract --frame-cache DIR`` made build-shards forget DIR (every sample
  decoded again: at EPIC scale, hours).

The synthetic kitchen (``leap_cli.synth.kitchen``), extracted once with options other than the defaults.
"""

from __future__ import annotations

import inspect
import json
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from tests.kitchens import config_kitchen_copy
from tests.procs import leap_here
from tests.test_attack_s65_replaced65 import _Unread
from tests.test_attack_s65_stale65 import _replace

VID = "P01_01"  # a train video; the train split holds others beside it
OPTIONS = ("--components", "narration,camera", "--camera-frames", "5", "--hand-threshold", "0.25")


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """A work directory after extract of train with options other than the defaults and its frame cache in
    WORKDIR/fc (given by its absolute path, as every path extract recorded)."""
    from leap_cli.synth.kitchen import KitchenConfig

    root = tmp_path_factory.mktemp("settings66")
    cfg = KitchenConfig(videos=4, segments_per_video=2, width=96, height=64, audio_in_mp4=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(KitchenConfig, "truncated_video", lambda self: None)
        config_kitchen_copy(tmp_path_factory, root / "w" / "kitchen", cfg, truncated=False)
        leap = leap_here(mp, _Unread())
        assert leap("extract", "--workdir", root / "w", "--split", "train", *OPTIONS, "--frame-cache",
                    root / "w" / "fc", cwd=root).returncode == 0
    return root / "w"


@pytest.fixture
def leap(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    return leap_here(monkeypatch, capsys)


def _copy(extracted: Path, tmp_path: Path) -> Path:
    """The work directory copied to tmp_path/w (the original kept where it was), given to leap as w."""
    shutil.copytree(extracted, tmp_path / "w")
    return Path("w")


def _said(r) -> str:
    return " ".join((r.stdout + r.stderr).split())


def _ok(r) -> str:
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return _said(r)


def _sizes(wd: Path) -> set[int]:
    """The video sizes the train descriptors of VID keep."""
    records = map(json.loads, (wd / "descriptors" / "train.jsonl").read_text().splitlines())
    return {r["video_size"] for r in records if r["video_id"] == VID}


def _printed_extract(said: str) -> str:
    m = re.search(r"run (leap extract .*?) \(it makes", said)
    assert m, said
    return m.group(1)


def test_the_left_out_line_names_extracts_options_and_runs_as_printed(extracted, tmp_path, leap):
    """The extract the line names is the one that made the descriptors: run as printed (here, in this process), it is
    accepted and makes the replaced video's records again, from the copy's video."""
    wd = _copy(extracted, tmp_path)
    old, new = _replace(wd)
    said = _ok(leap("generate-programs", "--workdir", wd, "--split", "train"))
    assert f"were left out: their descriptors were made from a video that has changed since ({wd / 'kitchen'}" in said
    command = _printed_extract(said)
    for option in ("--components narration,camera", "--camera-frames 5", "--hand-threshold 0.25",
                   f"--frame-cache {wd / 'fc'}"):
        assert option in command, command
    assert "--data" not in command and str(extracted) not in command, command  # (the copy's own: the default)
    words = shlex.split(command)
    assert words[:2] == ["leap", "extract"], words
    said = _ok(leap(*words[1:]))
    assert "records of earlier runs were made from a video that has changed since" in said, said
    assert _sizes(wd) == {new} and old != new
    assert "left out" not in _ok(leap("generate-programs", "--workdir", wd, "--split", "train"))


def test_a_copied_work_directory_checks_its_own_videos_when_the_old_one_is_gone(extracted, tmp_path, leap):
    """Settings recorded at another place (the folder moved since: here an old location that is no more), read from
    where the work directory is now: its data set is the copy's, and the replaced video is left out (no check at all
    was made, and its programs were made from the old file's descriptors)."""
    wd = _copy(extracted, tmp_path)
    config = tmp_path / wd / "descriptors" / "train.config.json"
    held = json.loads(config.read_text())
    gone = tmp_path / "gone" / "w"
    moved = {k: v.replace(str(extracted), str(gone)) if isinstance(v, str) else v for k, v in held.items()}
    assert moved["data"] == str(gone / "kitchen") and moved["out"] == str(gone / "descriptors" / "train.jsonl")
    config.write_text(json.dumps(moved))
    _replace(wd)
    said = _ok(leap("generate-programs", "--workdir", wd, "--split", "train"))
    assert f"({wd / 'kitchen' / 'P01' / 'videos' / VID}.MP4: size" in said, said
    assert str(gone) not in _printed_extract(said), said


def test_extract_without_a_frame_cache_keeps_the_folder_an_earlier_run_wrote(extracted, tmp_path, leap):
    """extract --frame-cache DIR, then a rerun with --frame-cache none (DIR's disk full, extract's own advice):
    build-shards still reads DIR by default (it forgot DIR and decoded every sample again)."""
    from leap_cli.commands.shards import extracts_frame_cache

    wd = _copy(extracted, tmp_path)
    fc = (tmp_path / wd / "fc").resolve()
    assert extracts_frame_cache(wd, "train")[0].resolve() == fc  # (the copy's folder, not the original's)
    _ok(leap("extract", "--workdir", wd, "--split", "train", *OPTIONS, "--frame-cache", "none", "--retry-errors"))
    got, note = extracts_frame_cache(wd, "train")
    assert got is not None and got.resolve() == fc and note is None, (got, note)
    said = _ok(leap("build-shards", "--workdir", wd, "--split", "train"))
    assert f"note: frames read from extract's frame cache {wd / 'fc'} where it holds them" in said, said
    # a run that writes a cache again records its own folder alone
    _ok(leap("extract", "--workdir", wd, "--split", "train", *OPTIONS, "--frame-cache", tmp_path / "fc2"))
    assert extracts_frame_cache(wd, "train") == (None, f"extract's frame cache {tmp_path / 'fc2'} (named in "
                                                       f"{wd / 'descriptors' / 'train.config.json'}) is not there: "
                                                       "give its folder as --frame-cache DIR (without it: "
                                                       "WORKDIR/frame-cache where it is there, else every sample is "
                                                       "decoded)")


def test_a_relative_work_directory_copied_reads_its_own_frame_cache(tmp_path, monkeypatch):
    """extract --workdir w (relative: its settings hold w/descriptors/train.jsonl and the folder it ran in) records its
    frame cache absolute; the work directory copied elsewhere and build-shards run beside the copy with --workdir w:
    the copy's cache is read, not named "not there" at the old place."""
    from leap_cli.commands.shards import extracts_frame_cache

    old = tmp_path / "old"
    (tmp_path / "new" / "w" / "fc").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "new")
    (Path("w") / "descriptors").mkdir()
    (Path("w") / "descriptors" / "train.config.json").write_text(json.dumps(
        {"out": "w/descriptors/train.jsonl", "cwd": str(old), "frame_cache": str(old / "w" / "fc"), "cache_frames": 16,
         "data": "w/kitchen"}))
    assert extracts_frame_cache(Path("w"), "train") == (Path("w") / "fc", None)


def test_generate_programs_reads_extracts_settings_without_extracts_runner(extracted, tmp_path, leap, monkeypatch):
    """generate-programs reads extract's files, not its internals: with the extract stage's runner not importable,
    it still leaves out the replaced video's segments."""
    wd = _copy(extracted, tmp_path)
    _replace(wd)
    monkeypatch.setitem(sys.modules, "leap_cli.extract.runner", None)  # (an import of it raises ImportError)
    said = _ok(leap("generate-programs", "--workdir", wd, "--split", "train"))
    assert "were left out" in said, said


def test_the_options_table_holds_extracts_defaults():
    """The options a printed extract gives where its settings hold other values than extract's defaults: the table
    (``extracted.OPTIONS``) says each of them as ``leap extract`` has it."""
    from leap_cli.commands.extract import extract
    from leap_cli.extracted import OPTIONS as TABLE

    params = {p.default.param_decls[0]: p.default.default for p in inspect.signature(extract).parameters.values()
              if hasattr(p.default, "param_decls")}
    for key, (option, default) in TABLE.items():
        assert option in params, option
        given = params[option]
        assert (",".join(default) if isinstance(default, (list, tuple)) else default) == given, (key, given)


def test_an_audio_file_replaced_has_its_records_made_again(extracted, tmp_path, leap):
    """Audio read from ROOT/P01/audio/VIDEO.wav (not the MP4's track): the record keeps that file's size
    (``audio_size``), and a rerun after the file was replaced (here: half a second of silence more) makes the video's
    records again with a note naming it (it said "nothing to do", and kept the old sound's descriptors)."""
    import soundfile as sf

    wd = _copy(extracted, tmp_path)
    sound = ("extract", "--workdir", wd, "--split", "train", "--components", "narration,audio", "--frame-cache", "none",
             "--out", wd / "descriptors" / "sound.jsonl")
    _ok(leap(*sound))
    wav = wd / "kitchen" / "P01" / "audio" / f"{VID}.wav"
    records = [json.loads(x) for x in (wd / "descriptors" / "sound.jsonl").read_text().splitlines()]
    assert {r["audio_size"] for r in records if r["video_id"] == VID} == {wav.stat().st_size}
    assert "video_size" not in records[0]  # (no frame read: the MP4 is not what they were made from)
    old = wav.stat().st_size
    y, rate = sf.read(wav)
    sf.write(wav, list(y) + [0.0] * (rate // 2), rate, subtype="PCM_16")
    new = wav.stat().st_size
    said = _ok(leap(*sound))
    n = sum(r["video_id"] == VID for r in records)
    assert f"{n} records of earlier runs were made from an audio file that has changed since ({wav}: size {old} -> " \
           f"{new} bytes): they are made again" in said, said
    assert "nothing to do" in _ok(leap(*sound))
