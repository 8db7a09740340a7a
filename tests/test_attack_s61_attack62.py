"""Helper attack62: an attack on session 61's two newest commits.

* 5568b34: ``shards.dataset.anticipation_timing`` keeps the manifest's ``settings.observed_end`` (the segments
  context's window-end rule), and training (``ShardSource``: val against train shards), evaluation
  (``inference._same_timing``: the checkpoint's ``shards_timing`` against the shards) and a resume
  (``loop._same_training_data``: refused) compare those dicts. Attacked: runs and shards of the leaps before it
  (a checkpoint whose timing has no key), folders of the earlier rule resumed and merged as ``--shard`` parts,
  clips mode and recognition, the messages' wording.
* 9347314: ``shards.format.build_command`` for a split's default folder where no build began takes the ``--data``,
  ``--annotations`` and sample settings of another split's begun build of the same task (``_sibling_options``).
  Attacked: the commands leap prints through it (check-shards' and load_manifest's "no shards manifest found",
  train's val advice) pasted literally, as words split by the shell, from the directory a relative ``--workdir``
  was given in, with paths that need quoting; siblings of an earlier leap, damaged, or of a ``--shard`` part only;
  anticipation siblings of both context modes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_attack_s60_frames60 import leap
from tests.test_attack_s60_upgrade60 import SEGMENTS, build, mp4_root, old_build  # noqa: F401
from tests.test_shards import make_root

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
       "NO_COLOR": "1", "COLUMNS": "400", "TERM": "dumb"}
TINY = ["model.num_frames=4", "model.img_size=32", "data.batch_size=2"]


def flat(text: str) -> str:
    return " ".join(text.split())


def pasted(command: str, cwd: Path) -> tuple[int, str]:
    """A printed ``leap build-shards ...`` command run as a shell would split it, by this leap, in ``cwd``."""
    words = shlex.split(command)
    assert words[:2] == ["leap", "build-shards"], words
    r = subprocess.run([sys.executable, "-m", "leap_cli", *words[1:]], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, env=ENV, cwd=cwd, timeout=120)
    return r.returncode, r.stdout.decode(errors="replace")


def settings_of(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())["settings"]


def config(*more: str):
    from leap_cli.train.config import load_config

    return load_config("tiny-synthetic", [*TINY, *more])


def source(train: Path, val: Path | None, *more: str):
    from leap_cli.train.data import ShardSource
    from leap_cli.train.distributed import DistInfo

    return ShardSource(train, val, config(*more), DistInfo())


ANTIC = ("data.task=anticipation", "model.anticipation_context=1")


# ---- 9347314: the build command of a split's folder where no build began, pasted ----------------------------------

def test_check_shards_val_advice_after_a_train_build_pasted_builds_val_shards_the_run_accepts(tmp_path, monkeypatch,
                                                                                              caplog):
    """Train shards built with --data (a root whose path needs quoting), --frames 4, --jpeg-quality 80 under a
    relative --workdir; check-shards --split val says "no shards manifest found (build them first: COMMAND)". The
    command pasted in the same directory builds val shards with the dataset and sample settings of the train
    build, and a run on the train shards takes them for validation without a word."""
    root = make_root(tmp_path / "kit chen's")
    cwd = tmp_path / "here"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    code, text = leap("build-shards", "--workdir", "w o", "--split", "train", "--data", str(root), "--frames", "4",
                      "--short-side", "32", "--jpeg-quality", "80", "--max-count", "3")
    assert code == 0, flat(text)[-2000:]
    code, text = leap("check-shards", "--workdir", "w o", "--split", "val")
    assert code != 0
    m = re.search(r"no shards manifest found \(build them first: (leap build-shards .*)\)$", flat(text))
    assert m, flat(text)[-2000:]
    command = m.group(1)
    assert "(" not in command and "--max-count" not in command, command  # (the train build's packing is its own)
    code, text = pasted(command, cwd)
    assert code == 0, flat(text)[-2000:]
    val = cwd / "w o" / "shards" / "val"
    got = settings_of(val)
    assert (got["split"], got["frames"], got["short_side"], got["jpeg_quality"]) == ("val", 4, 32, 80), got
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        s = source(cwd / "w o" / "shards" / "train", val)
    assert s.val_size and "otherwise" not in caplog.text, caplog.text


def test_train_val_advice_for_anticipation_segments_pasted_builds_val_shards_of_the_same_timing(tmp_path, caplog):
    """Anticipation train shards (--anticipation-context segments --tau-o 1.5 --context 1 --frames 4, --data
    elsewhere) beside recognition val shards: training refuses them and advises a build-shards command for
    val-anticipation. Pasted from another directory it is accepted (no option of the other context mode, none
    refused for val) and the run then validates on shards that observe as its training shards do (observed_end
    too): no refusal, no timing warning."""
    root = make_root(tmp_path / "da ta")
    work = tmp_path / "w'k"
    code, text = leap("build-shards", "--workdir", str(work), "--split", "train", "--task", "anticipation",
                      "--anticipation-context", "segments", "--tau-o", "1.5", "--context", "1", "--frames", "4",
                      "--short-side", "32", "--data", str(root))
    assert code == 0, flat(text)[-2000:]
    code, text = leap("build-shards", "--workdir", str(work), "--split", "val", "--frames", "4", "--data", str(root))
    assert code == 0, flat(text)[-2000:]
    from leap_cli.errors import LeapError

    train = work / "shards" / "train-anticipation"
    with pytest.raises(LeapError) as e:
        source(train, work / "shards" / "val", *ANTIC)
    m = re.search(r"build the val shards for anticipation \((leap build-shards .*?)\), or set data\.val", e.value.fix)
    assert m, e.value.fix
    assert "--span-frames" not in m.group(1) and "--anticipation-context segments" in m.group(1), m.group(1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code, text = pasted(m.group(1), elsewhere)
    assert code == 0, flat(text)[-2000:]
    val = work / "shards" / "val-anticipation"
    assert settings_of(val)["observed_end"] == settings_of(train)["observed_end"]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        s = source(train, val, *ANTIC)
    assert s.val_size and "observe otherwise" not in caplog.text, caplog.text



def test_check_shards_test_advice_with_annotations_elsewhere_pasted_builds_unlabelled_test_shards(tmp_path):
    """Train shards built with --data and --annotations (a folder of its own, whose test CSV has no label
    columns, as EPIC's test_timestamps): check-shards --split test's command, pasted from another directory,
    builds the test shards with the train build's --frames from those annotations."""
    import shutil

    root = make_root(tmp_path / "k")
    ann = tmp_path / "an n"
    shutil.copytree(root / "annotations", ann)
    rows = (ann / "EPIC_100_validation.csv").read_text().splitlines()
    (ann / "EPIC_100_test_timestamps.csv").write_text("".join(",".join(r.split(",")[:8]) + "\n" for r in rows))
    work = tmp_path / "w"
    code, text = leap("build-shards", "--workdir", str(work), "--split", "train", "--data", str(root),
                      "--annotations", str(ann), "--frames", "2", "--short-side", "32")
    assert code == 0, flat(text)[-2000:]
    code, text = leap("check-shards", "--workdir", str(work), "--split", "test")
    m = re.search(r"no shards manifest found \(build them first: (leap build-shards .*)\)$", flat(text))
    assert code != 0 and m, flat(text)[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code, text = pasted(m.group(1), elsewhere)
    assert code == 0, flat(text)[-2000:]
    manifest = json.loads((work / "shards" / "test" / "manifest.json").read_text())
    assert manifest["settings"]["frames"] == 2 and manifest["counts"]["samples"] == len(rows) - 1, manifest["counts"]


def _progress(folder: Path, *lines: str, name: str = ".progress.jsonl") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(x + "\n" for x in lines))


def _record(**kw) -> str:
    from leap_cli.shards.writer import ShardSettings, made_settings

    inputs = kw.pop("inputs", {})
    return json.dumps({"name": "leap-train-000000.tar", "settings": made_settings(ShardSettings(**kw)),
                       "inputs": inputs})


def test_a_sibling_of_an_earlier_leap_lends_nothing_and_the_next_begun_one_lends_its_options(tmp_path):
    """A train folder whose records keep no settings (a leap before 2026-12-06) lends no option and puts no
    "(with the options ...)" words into the val command (pasted, they broke it); the val build begun with
    settings then lends its own to the test folder."""
    from leap_cli.shards.format import build_command

    work = tmp_path / "w"
    _progress(work / "shards" / "train", json.dumps({"name": "leap-train-000000.tar", "settings_hash": "x"}))
    assert build_command(work / "shards" / "val") == f"leap build-shards --workdir {work} --split val"
    _progress(work / "shards" / "val", _record(split="val", frames=8, inputs={"--data": "/d d"}))
    assert build_command(work / "shards" / "test") == (f"leap build-shards --workdir {work} --split test --frames 8 "
                                                      "--data '/d d'")


def test_a_damaged_sibling_line_is_read_past_and_a_part_only_sibling_lends_its_options(tmp_path):
    """A train folder holding only a --shard part's progress file, whose first line is cut: its next record's
    dataset and settings are lent; its packing (--max-count) and its own programs are not."""
    from leap_cli.shards.format import build_command

    work = tmp_path / "w"
    _progress(work / "shards" / "train", '{"name": "leap-train.shard0of2-0000',
              _record(split="train", frames=4, max_count=2, inputs={"--data": "/k", "--programs": "/p.jsonl"}),
              name=".progress.shard0of2.jsonl")
    assert build_command(work / "shards" / "val") == (f"leap build-shards --workdir {work} --split val --frames 4 "
                                                      "--data /k")


@pytest.mark.parametrize("mode", ["clips", "segments"])
def test_an_anticipation_sibling_lends_the_options_of_its_own_context_mode_only(tmp_path, mode):
    """build-shards refuses --tau-o in clips mode and --span-frames in segments mode: the lent options name only
    the sibling's mode's."""
    from leap_cli.shards.format import build_command

    work = tmp_path / "w"
    _progress(work / "shards" / "train-anticipation",
              _record(split="train", task="anticipation", context_mode=mode, span_frames=64, tau_o=1.5, context=1))
    words = shlex.split(build_command(work / "shards" / "val-anticipation"))
    assert words[words.index("--context") + 1] == "1", words
    assert ("--span-frames" in words) is (mode == "clips") and ("--tau-o" in words) is (mode == "segments"), words
    assert build_command(work / "shards" / "val") == f"leap build-shards --workdir {work} --split val"


# ---- 5568b34: observed_end in the timing that runs and shards are compared by ----------------------------------------

@pytest.fixture(scope="module")
def segments_shards(tmp_path_factory) -> Path:
    """Anticipation shards of today's segments-context rule (settings.observed_end) on a tiny rgb_frames root."""
    from tests.test_shards import build as build_split_here

    tmp = tmp_path_factory.mktemp("seg62")
    root = make_root(tmp / "kitchen")
    return build_split_here(root, tmp / "w", task="anticipation", context=1, context_mode="segments").out


def _timing_without_the_key(folder: Path) -> dict:
    from leap_cli.shards.dataset import anticipation_timing

    timing = anticipation_timing(json.loads((folder / "manifest.json").read_text()))
    assert timing.pop("observed_end")
    return timing


def test_a_run_of_the_leap_before_5568b34_resumes_on_its_own_unchanged_shards(segments_shards):
    """Was wrong: loop._same_training_data: a checkpoint's shards_timing written by a leap before 5568b34 never
    holds observed_end, also where its shards (built since 2026-12-06) do: a run trained yesterday is refused
    --resume on its own unchanged shards, told it observed with the rule before 2026-12-06."""
    from leap_cli.errors import LeapError
    from leap_cli.train.loop import _same_training_data

    s = source(segments_shards, None, *ANTIC)
    ckpt = {"shards_timing": _timing_without_the_key(segments_shards),
            "data_position": {"batches_per_epoch": s.batches_per_epoch}}
    try:
        _same_training_data(ckpt, s, Path("runs/r/checkpoints/last.pt"), None)
    except LeapError as e:
        pytest.fail(f"refused: {e}")


def test_a_run_of_the_leap_before_5568b34_evaluated_on_its_own_shards_is_not_warned(segments_shards, caplog):
    """Was wrong: inference._same_timing: a checkpoint of a leap before 5568b34 (shards_timing without observed_end)
    evaluated on the very shards it trained on (which have it) is warned that the figures are for another end of the
    observed window."""
    from leap_cli.evaluate.inference import _same_timing

    manifest = json.loads((segments_shards / "manifest.json").read_text())
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _same_timing(_timing_without_the_key(segments_shards), manifest, segments_shards)
    assert "otherwise" not in caplog.text, caplog.text


def test_a_run_and_shards_of_the_earlier_rule_meet_in_silence_and_a_real_change_is_one_line_with_a_fix(
        segments_shards, tmp_path, caplog):
    """Shards of the earlier rule (no observed_end, as an MP4 folder of an earlier leap resumes) and a run trained
    on them: neither evaluate nor a resume says a word. Another --tau-o is refused on resume in one line that says
    what to do (another --name with model.pretrained)."""
    import shutil

    from leap_cli.errors import LeapError
    from leap_cli.evaluate.inference import _same_timing
    from leap_cli.train.loop import _same_training_data

    old = tmp_path / "old"
    shutil.copytree(segments_shards, old)
    m = json.loads((old / "manifest.json").read_text())
    del m["settings"]["observed_end"]
    (old / "manifest.json").write_text(json.dumps(m))
    s = source(old, None, *ANTIC)
    assert s.timing["observed_end"] is None
    ckpt = {"shards_timing": dict(s.timing), "data_position": {"batches_per_epoch": s.batches_per_epoch}}
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _same_timing(ckpt["shards_timing"], m, old)
        _same_training_data(ckpt, s, old / "last.pt", None)
    assert "otherwise" not in caplog.text, caplog.text
    ckpt["shards_timing"]["tau_o"] = 9.0
    with pytest.raises(LeapError) as e:
        _same_training_data(ckpt, s, old / "last.pt", None)
    assert "\n" not in str(e.value) and "--set model.pretrained=" in e.value.fix and "another --name" in e.value.fix


def test_clips_mode_and_recognition_timings_never_carry_observed_end():
    """The key is the segments context's only: a clips-mode manifest that holds it (by hand, or a later leap)
    compares as before, and recognition (or a manifest without a task) has no timing."""
    from leap_cli.shards.dataset import anticipation_timing

    settings = {"tau_a": 1.0, "context_mode": "clips", "span_frames": 64, "tau_o": 2.0, "observed_end": "x"}
    assert anticipation_timing({"task": "anticipation", "settings": settings}) == {
        "tau_a": 1.0, "context_mode": "clips", "span_frames": 64}
    assert anticipation_timing({"task": "recognition", "settings": {**settings, "context_mode": "segments"}}) is None
    assert anticipation_timing({"settings": {**settings, "context_mode": "segments"}}) is None


def test_todays_part_beside_an_earlier_leaps_unfinished_mp4_part_merges_once_that_part_is_resumed(
        monkeypatch, tmp_path, mp4_root):
    """Was wrong: writer._rule_of reads only the part's own progress file and the folder's manifests: beside an MP4
    part an earlier leap began and was stopped before its manifest, today's part keeps observed_end, the resumed
    earlier part does not, and the merge is refused (docs/shards.md: such a folder resumes as it was, its parts
    merge)."""
    work, out = tmp_path / "w", tmp_path / "w" / "s"
    old_build(monkeypatch, mp4_root, work, out, *SEGMENTS, "--shard", "0/2", killed=True)
    code, text = build(mp4_root, work, out, *SEGMENTS, "--shard", "1/2")
    assert code == 0, flat(text)[-2000:]
    code, text = build(mp4_root, work, out, *SEGMENTS, "--shard", "0/2")
    assert code == 0, flat(text)[-2000:]
    assert (out / "manifest.json").exists()




def old_part(monkeypatch, root: Path, work: Path, out: Path, part: str, *, killed: bool) -> None:
    """``--shard PART`` of a segments-context MP4 split as a leap before 2026-12-06 built it (upgrade60's
    ``old_build``, for one part among others): no observed_end, no settings in its progress records."""
    from dataclasses import asdict

    from leap_cli.epic.timing import FrameClock
    from leap_cli.shards import writer

    with monkeypatch.context() as m:
        m.setattr(writer, "made_settings", lambda st, **kw: asdict(st))
        m.setattr(FrameClock, "start_time", lambda self, segment: float(segment.start))
        code, text = build(root, work, out, *SEGMENTS, "--shard", part)
    assert code == 0, flat(text)[-3000:]
    i, n = part.split("/")
    progress = out / f".progress.shard{i}of{n}.jsonl"
    recs = [json.loads(x) for x in progress.read_text().splitlines()]
    progress.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "settings"}) + "\n" for r in recs))
    if killed:
        (out / f"manifest.shard{i}of{n}.json").unlink()




def test_one_part_of_an_earlier_leaps_mp4_folder_rebuilt_with_force_merges_with_the_others(
        monkeypatch, tmp_path, mp4_root):
    """Was wrong: writer._rule_of: --force keeps observed_end whatever the folder's other --shard parts hold: one
    part of an earlier leap's MP4 folder rebuilt with --force (check-shards' and rebuild_fix's 'or rebuild that part
    with --force') is refused at the merge, and the refusal's 'or part 1 with theirs' cannot be followed.
    docs/shards.md: an MP4 segments-context folder of an earlier leap resumes as it was and its parts merge. A part
    rebuilt with --force (the repair advice's second way) must merge with the finished parts beside it."""
    work, out = tmp_path / "w", tmp_path / "w" / "s"
    old_part(monkeypatch, mp4_root, work, out, "0/2", killed=False)
    old_part(monkeypatch, mp4_root, work, out, "1/2", killed=False)
    assert "observed_end" not in settings_of(out)
    code, text = build(mp4_root, work, out, *SEGMENTS, "--shard", "1/2", "--force")
    assert code == 0, flat(text)[-2000:]
    assert (out / "manifest.json").exists()
