"""Mutation run over session 60's changes (helper "mut60"): tests that kill the mutants the earlier tests let
through (train's ``_go_on`` for each --resume/--force, ``io.pid_alive``'s EPERM, no-/proc and odd-name branches,
``format.differ_note`` at exactly six names, a merge of parts differing in more than six keys, ``begun_options`` of
an anticipation build, ``build_command`` of a build that kept no settings, extract's frame cache of a segment
stopping less than a frame past the end with no frame-reading component, ...).

The kitchen of the extract test is built with cv2 as tests/test_attack_s60_attack60.py builds it (its helpers are
imported from there, not copied).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest


# ---- commands/train.py _go_on ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("resume, force, says", [
    (False, False, "the same command with --resume"),
    (True, False, "the same command"),
    (False, True, "the same command with --resume instead of --force"),
    (True, True, "the same command without --force"),
])
def test_go_on_names_what_to_change_in_the_command_that_stopped(resume, force, says):
    """A stopped or paused run's advice: --resume is added only where the command lacked it, and --force (which
    starts the run over) is always dropped; 'the same command with --resume' after a --resume run adds nothing."""
    from leap_cli.commands.train import _go_on

    assert _go_on(resume, force) == says


# ---- io.pid_alive ---------------------------------------------------------------------------------------------------

def test_pid_alive_counts_another_users_process_as_alive(monkeypatch):
    """os.kill(pid, 0) raising EPERM: the process exists (another user's): its temp files and lock are kept."""
    import leap_cli.io as lio

    def denied(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(lio.os, "kill", denied)
    assert lio.pid_alive(12345) is True


def test_pid_alive_without_proc_trusts_the_signal(monkeypatch):
    """No /proc (macOS): a process a signal 0 reaches is alive (its state cannot be read)."""
    import leap_cli.io as lio

    def no_proc(*a, **k):
        raise FileNotFoundError(2, "No such file or directory", a[0] if a else "")

    monkeypatch.setattr(lio, "open", no_proc, raising=False)
    assert lio.pid_alive(os.getpid()) is True


@pytest.mark.parametrize("stat, alive", [
    (b"4242 (a) Z (b) S 1 4242 4242 0 -1", True),  # a running process named "a) Z (b"
    (b"4242 (ok) Z 1 4242 4242 0 -1", False),
    (b"4242 (x) y) R 1 4242", True),
    (b"4242 (x) y) X 1 4242", False),
])
def test_pid_alive_reads_the_state_after_the_last_parenthesis(monkeypatch, stat, alive):
    """/proc/PID/stat's second field is the name in parentheses, which may hold ')' and spaces: the state is the
    word after the last ')' (a process named 'a) Z (b' is no zombie)."""
    import leap_cli.io as lio

    monkeypatch.setattr(lio, "open", lambda *a, **k: io.BytesIO(stat), raising=False)
    assert lio.pid_alive(os.getpid()) is alive


# ---- shards/format.py differ_note, _merge, begun_options, build_command ---------------------------------------------

def test_differ_note_marks_only_names_beyond_six():
    from leap_cli.shards.format import differ_note

    six = [f"--o{i}" for i in range(6)]
    assert differ_note(six) == "(--o0, --o1, --o2, --o3, --o4, --o5 differ)"
    assert differ_note(six + ["--o6"]) == "(--o0, --o1, --o2, --o3, --o4, --o5 ... differ)"


def test_a_merge_of_parts_differing_in_seven_keys_says_there_are_more():
    """The merge names the values of the first six keys, and marks that more differ (' ...')."""
    from leap_cli.shards.format import PartsDiffer, _merge

    base = {"frames": 16, "short_side": 256, "jpeg_quality": 90, "tau_a": 1.0, "tau_o": 2.0, "context": 2,
            "span_frames": 256}
    other = {"frames": 8, "short_side": 128, "jpeg_quality": 80, "tau_a": 0.5, "tau_o": 3.0, "context": 1,
             "span_frames": 128}

    def part(i, settings):
        return {"format": "x", "split": "val", "task": "anticipation", "targets": None, "settings": settings,
                "sources": {}, "part": {"index": i, "count": 2}}

    paths = [Path("/f/manifest.part0of2.json"), Path("/f/manifest.part1of2.json")]
    with pytest.raises(PartsDiffer) as e:
        _merge([part(0, base), part(1, other)], paths)
    msg = e.value.message
    assert msg.endswith(" ... differ)"), msg
    with pytest.raises(PartsDiffer) as e:  # six: all shown, no ' ...'
        _merge([part(0, base), part(1, {**other, "span_frames": 256})], paths)
    assert e.value.message.endswith(" differ)") and " ..." not in e.value.message, e.value.message


def _progress(folder: Path, settings: dict | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rec = {"name": "leap-val-000000.tar", "index": 0, "count": 1, "samples": ["x"], "skipped": [], "made_with": {}}
    if settings is not None:
        rec["settings"] = settings
    (folder / ".progress.jsonl").write_text(json.dumps(rec) + "\n")
    return folder


@pytest.mark.parametrize("mode, read, unread", [("clips", ("--span-frames", "128"), "--tau-o"),
                                                ("segments", ("--tau-o", "3.0"), "--span-frames")])
def test_begun_options_of_an_anticipation_build_keep_the_option_its_context_mode_reads(tmp_path, mode, read, unread):
    """An anticipation build's command keeps --span-frames in clips mode and --tau-o in segments mode (the other
    one is refused by build-shards in that mode)."""
    from dataclasses import asdict

    from leap_cli.shards.format import begun_options, build_command
    from leap_cli.shards.writer import ShardSettings

    settings = asdict(ShardSettings(split="val", task="anticipation", context_mode=mode, span_frames=128, tau_o=3.0,
                                    frames=8))
    folder = _progress(tmp_path / "shards" / "val-anticipation", settings)
    words = begun_options(folder)
    assert words is not None
    assert " ".join(read) in " ".join(words) and "--frames 8" in " ".join(words)
    assert unread not in words
    if mode == "segments":
        assert "--anticipation-context segments" in " ".join(words)
    assert " ".join(read) in build_command(folder)


def test_build_command_of_a_build_that_kept_no_settings_says_its_options_are_needed(tmp_path):
    """A build begun by a leap that kept no settings in its progress records: the command cannot name its
    options, so it says to add them; a folder with no build begun says nothing of the kind."""
    from leap_cli.shards.format import begun_options, build_command

    old = _progress(tmp_path / "a" / "shards" / "val", None)
    assert begun_options(old) is None
    assert "with the options of the build begun there" in build_command(old)
    fresh = tmp_path / "b" / "shards" / "val"
    fresh.mkdir(parents=True)
    assert begun_options(fresh) is None
    assert build_command(fresh) == f"leap build-shards --workdir {tmp_path / 'b'} --split val"


# ---- extract/runner.py: the video opened before planning, for the frame cache too ------------------------------------

@pytest.mark.parametrize("first", [True, False])
def test_extract_caches_the_frames_of_a_segment_stopping_less_than_a_frame_past_the_end_without_frame_components(
        tmp_path, first):
    """extract --components narration (no component reads frames) still fills build-shards' frame cache from its
    decode: the segment 5.90-6.01 s of a 6.00 s MP4 (360 frames) ends at frame 360, whether or not it is the first
    segment of its video read; its entry is written, its last frame 360."""
    from tests.test_attack_s60_attack60 import leap, make_root

    from leap_cli.extract.cache import FrameCache

    segs = [("0", 5.90, 6.01), ("1", 1.0, 2.0)] if first else [("1", 1.0, 2.0), ("0", 5.90, 6.01)]
    root = make_root(tmp_path / "k", {"P01_01": segs}, mp4=True)
    work = tmp_path / "w"
    code, text = leap("extract", "--data", str(root), "--workdir", str(work), "--split", "val", "--components",
                      "narration", "--cache-frames", "4", "--frame-cache", str(work / "fc"))
    assert code == 0, text[-3000:]
    cache = FrameCache(work / "fc", 4)
    for key in ("P01_01_0", "P01_01_1"):
        assert cache.path("P01_01", key).is_file(), (key, sorted(p.name for p in (work / "fc").rglob("*")))


def test_begun_options_take_the_first_part_that_kept_its_settings(tmp_path):
    """Parts begun in one folder: the options come from the first progress file that kept settings; a later part's
    file of a leap that kept none does not blank them (the command would lose --max-count and be refused)."""
    from dataclasses import asdict

    from leap_cli.shards.format import begun_options
    from leap_cli.shards.writer import ShardSettings

    folder = tmp_path / "shards" / "train"
    folder.mkdir(parents=True)
    (folder / ".progress.part0of2.jsonl").write_text(
        json.dumps({"name": "t0", "settings": asdict(ShardSettings(split="train", max_count=2))}) + "\n")
    (folder / ".progress.part1of2.jsonl").write_text(json.dumps({"name": "t1", "made_with": {}}) + "\n")
    assert begun_options(folder) == ["--max-count", "2"]


# ---- train advice: val shards of the other task, a data.val that is not there -------------------------------------

def test_val_shards_of_the_other_task_advice_builds_the_default_val_folder_of_the_training_task(tmp_path):
    """Anticipation training shards with recognition val shards: the advice builds WORKDIR/shards/val-anticipation
    (build-shards' default folder for the training task), with --task anticipation."""
    from leap_cli.errors import LeapError
    from leap_cli.train.config import load_config
    from leap_cli.train.data import ShardSource
    from leap_cli.train.distributed import DistInfo
    from tests.test_shards import build, make_root

    root = make_root(tmp_path / "kitchen")
    work = tmp_path / "w"
    train = build(root, work, task="anticipation", context=2, span_frames=8).out
    rec = build(root, work).out
    assert rec == work / "shards" / "train"
    cfg = load_config("tiny-synthetic", ["data.task=anticipation", "model.anticipation_context=2", "model.num_frames=4",
                                         "model.img_size=32", "data.batch_size=2"])
    with pytest.raises(LeapError) as e:
        ShardSource(train, rec, cfg, DistInfo())
    # (with the training build's dataset and sample settings: build_split records its root as --data)
    assert f"(leap build-shards --workdir {work} --split val --task anticipation " in e.value.fix, e.value.fix
    assert f"--span-frames 8 --data {root})" in e.value.fix, e.value.fix


def test_a_missing_data_val_advice_names_the_workdir_and_the_folder(tmp_path):
    from leap_cli.errors import LeapError
    from leap_cli.train.config import load_config
    from leap_cli.train.loop import shard_folders

    work = tmp_path / "w"
    cfg = load_config("tiny-synthetic", [f"data.val={tmp_path / 'vall'}"])
    with pytest.raises(LeapError) as e:
        shard_folders(cfg, work)
    assert f"leap build-shards --workdir {work} --split val --out {tmp_path / 'vall'})" in e.value.fix, e.value.fix


# ---- shards/writer.py made_settings ---------------------------------------------------------------------------------

@pytest.mark.parametrize("task, mode, rule", [("recognition", "clips", False), ("anticipation", "clips", False),
                                               ("anticipation", "segments", True)])
def test_only_the_segments_context_keeps_the_observed_end_rule(task, mode, rule):
    """The rule changed for the segments context only: recognition and clips builds keep no such key (their hash
    is as before, so a resume of one begun by an earlier leap is not refused)."""
    from dataclasses import asdict

    from leap_cli.shards.writer import OBSERVED_END, ShardSettings, made_settings

    s = ShardSettings(split="val", task=task, context_mode=mode)
    got = made_settings(s)
    assert ("observed_end" in got) is rule
    assert {k: v for k, v in got.items() if k != "observed_end"} == asdict(s)
    if rule:
        assert got["observed_end"] == OBSERVED_END


# ---- shards/writer.py: the frame count asked at planning, the window end's read ------------------------------------

def test_a_stop_within_two_frames_before_the_info_length_of_a_video_one_frame_short_is_stored(tmp_path):
    """video_info says 6.00 s (360 frames at 60 fps), the MP4 decodes 359: a segment stopping at 5.99 s (before the
    info's end, less than a frame past the decoded end) ends at frame 359 and is stored, not skipped for asking
    frame 360. plan_samples asks the frame count of a video with a stop within two frames of its info length."""
    from tests.test_attack_s60_attack60 import make_root, observed, shards

    root = make_root(tmp_path / "k", {"P01_01": [("0", 5.90, 5.99), ("1", 1.0, 2.0)]}, frames={"P01_01": 359},
                     mp4=True)
    got = shards(root, tmp_path / "w", "--frames", "4")
    assert got[None]["skipped"] == [], got[None]["skipped"]
    sample = got["P01_01_0"]
    assert max(sample["meta"]["frame_indices"]) == 359
    assert observed(sample) == sample["meta"]["frame_indices"]


@pytest.mark.parametrize("mode", ["clips", "segments"])
def test_anticipation_samples_on_an_mp4_store_exactly_their_frames(tmp_path, mode):
    """The window's last frame is decoded too (a cut file's check) but not stored: each sample holds --frames
    observed JPEGs, the frames its record names."""
    from tests.test_attack_s60_attack60 import make_root, observed, shards

    root = make_root(tmp_path / "k", {"P01_01": [("0", 1.0, 1.5), ("1", 2.5, 3.0), ("2", 4.0, 4.6)]}, mp4=True)
    got = shards(root, tmp_path / "w", "--frames", "4", "--task", "anticipation", "--anticipation-context", mode,
                 "--tau-a", "0.5", *(["--span-frames", "30"] if mode == "clips" else ["--tau-o", "0.5"]))
    keys = [k for k in got if k not in (None, "text")]
    assert keys, got["text"][-2000:]
    for k in keys:
        idx = got[k]["meta"]["frame_indices"]
        assert len(idx) == 4 and observed(got[k]) == idx, (k, sorted(got[k]["codes"]), idx)
