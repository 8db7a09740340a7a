"""Attack on session 60's pasted-advice changes (helper attack61): ``shards/format.py``'s begun_options /
build_command / rebuild_fix(shard, folder) (a build's options read back from its ``.progress*.jsonl`` records'
"settings"), ``writer.made_settings`` and the rule kept for a split read from rgb_frames, and train's too-few-samples advice.

Each test makes the situation, takes the command leap prints, pastes it as a user would (``shlex.split``), and
checks it does what it says without losing finished work. Where it did not, the test asserts the right behaviour
and says "Was wrong" with the cause (each fixed the same session).

The rgb_frames / MP4 roots are frames60's (tests/test_attack_s60_frames60.py: every frame carries its own number).
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from tests.kitchens import kitchen_copy
from tests.test_attack_s60_frames60 import H, leap, make_root

SMALL = ("--frames", "2", "--short-side", "32")


def flat(text: str) -> str:
    return " ".join(text.split())


def tars(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


def flip(path: Path, at: int = 3000) -> None:
    """Bytes changed in place, the size kept (check-shards' sha256 finds it, a resume would keep it)."""
    b = bytearray(path.read_bytes())
    b[at] ^= 0xFF
    path.write_bytes(bytes(b))


def rebuild_advice(text: str) -> list[str]:
    """The command of check-shards' "delete that shard file ... and run COMMAND again" advice, as words."""
    m = re.search(r"delete that shard file if it is still there and run (leap build-shards .*?) again \(it rebuilds",
                  flat(text))
    assert m, flat(text)[-2000:]
    words = shlex.split(m.group(1))
    assert words[:2] == ["leap", "build-shards"], words
    return words


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> Path:
    """A synthetic kitchen (4 videos x 4 segments; train: 2 videos, one cut short) with the train split's offline
    programs: ``kit/kitchen``, ``kit/programs/train.jsonl``."""
    wd = tmp_path_factory.mktemp("kit61")
    kitchen_copy(tmp_path_factory, wd / "kitchen", "--videos", 4, "--segments", 4)
    for argv in (("extract", "--split", "train"),
                 ("generate-programs", "--split", "train", "--backend", "offline")):
        code, text = leap(argv[0], "--workdir", str(wd), *argv[1:])
        assert code == 0, text[-2000:]
    assert (wd / "programs" / "train.jsonl").stat().st_size
    return wd


def workdir_with_kitchen(kit: Path, work: Path) -> Path:
    work.mkdir(parents=True)
    shutil.copytree(kit / "kitchen", work / "kitchen")
    return work


# ---- what is right today --------------------------------------------------------------------------------------------

def test_rebuild_advice_with_a_quoted_workdir_and_a_500mb_size_resumes_the_build(kit, tmp_path):
    """--max-shard-size 500MB is kept as bytes (524288000): the pasted command means the same size; a workdir whose
    name needs quoting (a space, a single quote) is one word. The advice pasted after the damaged tar is deleted
    rebuilds that tar byte for byte and keeps the others."""
    work = workdir_with_kitchen(kit, tmp_path / "work dir's")
    code, text = leap("build-shards", "--workdir", str(work), "--split", "train", *SMALL, "--max-count", "2",
                      "--max-shard-size", "500MB")
    assert code in (0, 3), text[-2000:]  # (3: the cut video's segments skipped)
    folder = work / "shards" / "train"
    good = tars(folder)
    assert len(good) >= 2
    flip(folder / "leap-train-000001.tar")
    code, text = leap("check-shards", "--workdir", str(work), "--split", "train")
    assert code != 0
    words = rebuild_advice(text)
    assert words[words.index("--workdir") + 1] == str(work)
    from leap_cli.commands.shards import parse_size

    assert parse_size(words[words.index("--max-shard-size") + 1]) == parse_size("500MB")
    assert words[words.index("--max-count") + 1] == "2"
    (folder / "leap-train-000001.tar").unlink()
    code, text = leap(*words[1:])
    assert code in (0, 3), text[-2000:]
    assert tars(folder) == good
    code, text = leap("check-shards", "--workdir", str(work), "--split", "train")
    assert code == 0, text[-2000:]


def test_begun_options_reads_past_a_line_that_is_not_json(tmp_path):
    """A torn or edited line before the first record that keeps the settings: passed over, the options still read."""
    from leap_cli.shards.format import begun_options, build_command

    folder = tmp_path / "w" / "shards" / "train"
    folder.mkdir(parents=True)
    rec = {"name": "leap-train-000000.tar", "settings": {"split": "train", "task": "recognition", "frames": 4,
                                                         "max_count": 3, "max_shard_size": 1 << 30}}
    (folder / ".progress.jsonl").write_text('{"name": "x", "sett\n[1, 2]\n' + json.dumps(rec) + "\n")
    assert begun_options(folder) == ["--frames", "4", "--max-count", "3"]
    words = shlex.split(build_command(folder))
    assert words[words.index("--split") + 1] == "train" and "--max-count" in words


def test_mixed_mp4_and_rgb_frames_segments_parts_agree_and_merge(tmp_path):
    """A split of one MP4 video and one rgb_frames video, segments-context anticipation, in --shard parts of one video
    each: observed_end is decided over the split's videos, so both parts keep it and the merge succeeds."""
    from leap_cli.shards.writer import OBSERVED_END

    root = mixed_root(tmp_path)
    shutil.copytree(tmp_path / "b" / "P02", root / "P02")
    out = tmp_path / "s"
    for i in (0, 1):
        code, text = mixed_build(root, tmp_path, out, "--shard", f"{i}/2")
        assert code == 0, flat(text)[-2000:]
    parts = [json.loads(p.read_text()) for p in sorted(out.glob("manifest.shard*of2.json"))]
    assert len(parts) == 2 and all(p["settings"].get("observed_end") == OBSERVED_END for p in parts)
    merged = json.loads((out / "manifest.json").read_text())
    assert merged["settings"]["observed_end"] == OBSERVED_END and merged["counts"]["samples"] == 2 * len(ROWS)


# ---- bugs ------------------------------------------------------------------------------------------------------------

def test_a_progress_file_with_a_byte_that_is_not_utf8_gives_the_command_not_a_traceback(kit, tmp_path):
    """Was wrong: format.py begun_options: `for line in f` decodes outside the inner try and only OSError is caught
    now: a non-UTF-8 byte in a progress file is a UnicodeDecodeError traceback (check-shards, the shard reader's
    fix)."""
    work = workdir_with_kitchen(kit, tmp_path / "w")
    code, text = leap("build-shards", "--workdir", str(work), "--split", "train", *SMALL, "--max-count", "2")
    assert code in (0, 3), text[-2000:]
    folder = work / "shards" / "train"
    progress = folder / ".progress.jsonl"
    progress.write_bytes(b'{"name": "caf\xe9"}\n' + progress.read_bytes())  # (a Latin-1 edit, a damaged sector)
    flip(folder / "leap-train-000001.tar")
    code, text = leap("check-shards", "--workdir", str(work), "--split", "train")
    assert "Traceback" not in text and "UnicodeDecodeError" not in text, text[-2000:]
    assert "--max-count" in rebuild_advice(text)


def test_a_damaged_part_is_rebuilt_by_the_command_with_that_parts_own_max_count(kit, tmp_path):
    """Was wrong: format.py begun_options reads the first .progress*.jsonl that keeps settings (part 0's), not the
    part the advice is about: parts may differ in --max-count (PACKING), and part 1's pasted command is refused
    ('--max-count differs')."""
    work = workdir_with_kitchen(kit, tmp_path / "w")
    for part, count in (("0/2", "1"), ("1/2", "3")):  # (packing may differ across parts: they merge)
        code, text = leap("build-shards", "--workdir", str(work), "--split", "train", *SMALL, "--max-count", count,
                          "--shard", part)
        assert code in (0, 3), text[-2000:]
    folder = work / "shards" / "train"
    assert (folder / "manifest.json").exists()
    damaged = sorted(folder.glob("leap-train.shard1of2-*.tar"))[0]
    good = tars(folder)
    flip(damaged)
    code, text = leap("check-shards", "--workdir", str(work), "--split", "train")
    assert code != 0
    words = rebuild_advice(text)
    assert words[words.index("--shard") + 1] == "1/2"
    damaged.unlink()
    code, text = leap(*words[1:])
    assert code in (0, 3), flat(text)[-2000:]
    assert tars(folder) == good


def test_a_custom_out_anticipation_folder_is_rebuilt_by_its_command(kit, tmp_path, monkeypatch):
    """Was wrong: format.py build_command: a custom --out folder's command lacks --task anticipation (begun_options
    drops task as 'named by the command', but only the default folder's name says it): pasted, it is refused and
    its --force would rebuild recognition shards over them."""
    work = workdir_with_kitchen(kit, tmp_path / "leap-work")  # (the default --workdir: the command names none)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "my ant"
    code, text = leap("build-shards", "--split", "train", "--task", "anticipation", *SMALL, "--max-count", "2",
                      "--out", str(out))
    assert code in (0, 3), text[-2000:]
    assert work.is_dir()
    good = tars(out)
    flip(out / "leap-train-000001.tar")
    code, text = leap("check-shards", "--shards", str(out))
    assert code != 0
    words = rebuild_advice(text)
    if "(or" in words:  # "(or give the folder that holds them)", said after the command
        words = words[:words.index("(or")]
    words = ["train" if w == "SPLIT" else w for w in words]
    (out / "leap-train-000001.tar").unlink()
    code, text = leap(*words[1:])
    assert code in (0, 3), flat(text)[-2000:]
    assert tars(out) == good
    assert json.loads((out / "manifest.json").read_text())["task"] == "anticipation"


def test_a_custom_out_command_names_the_split_it_was_begun_with(tmp_path):
    """Was wrong: format.py build_command: a folder other than WORKDIR/shards/SPLIT gets '--split SPLIT' (a
    placeholder to edit) though the progress records keep the split the build was begun with."""
    from leap_cli.shards.format import build_command

    folder = tmp_path / "elsewhere"
    folder.mkdir()
    rec = {"name": "leap-val-000000.tar", "settings": {"split": "val", "task": "recognition", "frames": 4}}
    (folder / ".progress.jsonl").write_text(json.dumps(rec) + "\n")
    words = shlex.split(build_command(folder).split(" (or give")[0])
    assert words[words.index("--split") + 1] == "val", words


def test_a_build_with_programs_elsewhere_is_rebuilt_by_its_command(kit, tmp_path):
    """Was wrong: format.py build_command/begun_options: the 'whole command' carries the options but not --programs
    (nor --data, --annotations, --vocab): a build given --programs elsewhere gets a command that is refused ('the
    programs differ') and whose --force rebuilds every sample without program targets."""
    work = workdir_with_kitchen(kit, tmp_path / "w")
    programs = tmp_path / "generated" / "p.jsonl"
    programs.parent.mkdir()
    shutil.copy(kit / "programs" / "train.jsonl", programs)
    code, text = leap("build-shards", "--workdir", str(work), "--split", "train", *SMALL, "--max-count", "2",
                      "--programs", str(programs))
    assert code in (0, 3), text[-2000:]
    folder = work / "shards" / "train"
    assert json.loads((folder / "manifest.json").read_text())["counts"]["with_program"] > 0
    good = tars(folder)
    flip(folder / "leap-train-000001.tar")
    code, text = leap("check-shards", "--workdir", str(work), "--split", "train")
    words = rebuild_advice(text)
    (folder / "leap-train-000001.tar").unlink()
    code, text = leap(*words[1:])
    assert code in (0, 3), flat(text)[-2000:]
    assert tars(folder) == good


FPS = 59.9400599400599
ROWS = [("0", 1.56, 2.45, 92, 147), ("1", 2.60, 3.30, 154, 198), ("2", 3.40, 4.10, 202, 246),
        ("3", 4.20, 5.00, 250, 300)]
SEGMENTS = ("--task", "anticipation", "--anticipation-context", "segments", "--tau-o", "0.5", "--frames", "8")


def mixed_root(tmp: Path) -> Path:
    """P01_01 as an MP4 (in ``tmp/k``) and P02_01 as rgb_frames (in ``tmp/b/P02``, not yet in the root), both in the
    root's validation CSV and video_info."""
    root = make_root(tmp / "k", FPS, [r[:3] for r in ROWS], mp4=True, rgb=False, vid="P01_01")
    other = make_root(tmp / "b", FPS, ROWS, vid="P02_01")
    for f in ("EPIC_100_validation.csv", "EPIC_100_video_info.csv"):
        rows = (other / "annotations" / f).read_text().splitlines(keepends=True)[1:]
        with open(root / "annotations" / f, "a") as fh:
            fh.writelines(rows)
    return root


def mixed_build(root: Path, tmp: Path, out: Path, *extra: str) -> tuple[int, str]:
    return leap("build-shards", "--data", str(root), "--workdir", str(tmp / "w"), "--split", "val", "--out", str(out),
                "--short-side", str(H), "--max-count", "1", *SEGMENTS, *extra)


def test_a_missing_video_that_arrives_as_rgb_frames_is_not_blamed_on_a_leap_rule_change(tmp_path):
    """Was wrong: writer.py made_settings(rgb_frames=any(...)) depends on which videos are on disk: a missing video
    that arrives as rgb_frames adds observed_end, and the resume is refused as 'the segments context's rule,
    changed by leap' (nothing in leap changed; the MP4 samples are the same)."""
    root = mixed_root(tmp_path)
    out = tmp_path / "s"
    code, text = mixed_build(root, tmp_path, out)  # P02_01 not downloaded yet: its segments skipped
    assert code in (0, 3), flat(text)[-2000:]
    assert json.loads((out / "manifest.json").read_text())["counts"]["skipped"] == len(ROWS)
    shutil.copytree(tmp_path / "b" / "P02", root / "P02")  # (its rgb_frames tar untarred)
    code, text = mixed_build(root, tmp_path, out)
    said = flat(text)
    assert "changed by leap" not in said, said[-2000:]
    assert code == 0, said[-2000:]


def test_too_few_samples_advice_pasted_does_not_fail_the_same_way(kit, tmp_path):
    """Was wrong: train/data.py: with 0 training samples per process the fix says 'add --set data.batch_size=1 (or
    fewer)' (max(1, 0)): pasted, the same refusal again (no batch size helps; build data, or fewer processes)."""
    work = workdir_with_kitchen(kit, tmp_path / "w")
    for p in (work / "kitchen").glob("P0*/videos"):
        shutil.rmtree(p)  # (none downloaded: every segment skipped, the folder holds 0 samples)
    code, text = leap("build-shards", "--workdir", str(work), "--split", "train", *SMALL)
    assert json.loads((work / "shards" / "train" / "manifest.json").read_text())["counts"]["samples"] == 0
    train = ("train", "--workdir", str(work), "--config", "tiny-synthetic-short", "--set", "data.val=")
    code, text = leap(*train)
    assert code != 0 and "fewer than data.batch_size" in flat(text), flat(text)[-2000:]
    m = re.search(r"add (--set data\.batch_size=\d+)", flat(text))
    if m is None:
        return  # (no batch size advised: right)
    code, again = leap(*train, *shlex.split(m.group(1)))
    assert "fewer than data.batch_size" not in flat(again), flat(again)[-2000:]
