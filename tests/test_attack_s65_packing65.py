"""build-shards run again without the packing options a folder was built with (helper packing65, session 65): a folder
built with ``--max-count 2`` (or ``--max-shard-size 500MB``), then the plain ``leap build-shards`` that leap's other
messages name ("build-shards again"), was refused ("--max-count differs ... pass --force"), and --force decoded every
video of the split again, though those options only pack the samples into tars (``format.PACKING``).

Now a re-run that gives neither option packs as the build begun in the folder does (``format.begun_packing``: its
progress records, a part's own first, else its manifest) with one note, so the folder stays one packing; another
packing given (the default's value too) is refused, naming the command with the folder's own; --force takes the
options as given. The tiny rgb_frames root of test_shards (7 training samples), built through the CLI in-process.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from leap_cli.shards.format import load_manifest
from tests.test_attack_s60_frames60 import leap
from tests.test_shards import make_root, tar_digests

SMALL = ("--frames", "4", "--short-side", "32")
NOTE = "tars packed as the folder's build began"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_root(tmp_path_factory.mktemp("kitchen"))


def build(root: Path, work: Path, *extra: str) -> tuple[int, str]:
    return leap("build-shards", "--workdir", str(work), "--data", str(root), "--split", "train", *SMALL, *extra)


def flat(text: str) -> str:
    return " ".join(text.split())


def interrupted(folder: Path, prefix: str = "leap-train-") -> None:
    """As a run killed before its last tar: that tar gone (a resume rebuilds it)."""
    sorted(folder.glob(f"{prefix}*.tar"))[-1].unlink()


def counts(folder: Path) -> list[int]:
    return [s["count"] for s in load_manifest(folder)[0]["shards"]]


def test_a_plain_rerun_resumes_a_max_count_folder_with_its_packing(root, tmp_path):
    work = tmp_path / "w"
    folder = work / "shards" / "train"
    code, text = build(root, work, "--max-count", "2")
    assert code == 0, text[-2000:]
    before = tar_digests(folder)
    assert counts(folder) == [2, 2, 2, 1]
    interrupted(folder)
    code, text = build(root, work)  # (was: refused, "--max-count differs ... pass --force")
    assert code == 0, flat(text)[-2000:]
    assert f"{NOTE}: --max-count 2" in flat(text) and flat(text).count(NOTE) == 1
    assert tar_digests(folder) == before  # the new tar packed as the others: the folder stays one packing
    m = load_manifest(folder)[0]
    assert m["settings"]["max_count"] == 2 and counts(folder) == [2, 2, 2, 1]
    code, text = build(root, work)  # finished: nothing to write
    assert code == 0 and "nothing new to write" in flat(text), flat(text)[-2000:]


def test_a_max_shard_size_is_taken_when_only_max_count_is_given(root, tmp_path):
    """One option given takes the other from the folder (a --max-shard-size 8k build, re-run with --max-count 2)."""
    work = tmp_path / "w"
    folder = work / "shards" / "train"
    code, text = build(root, work, "--max-count", "2", "--max-shard-size", "8k")
    assert code == 0, text[-2000:]
    before = tar_digests(folder)
    interrupted(folder)
    code, text = build(root, work, "--max-count", "2")
    assert code == 0, flat(text)[-2000:]
    assert f"{NOTE}: --max-shard-size 8192" in flat(text)
    assert tar_digests(folder) == before
    assert load_manifest(folder)[0]["settings"]["max_shard_size"] == 8192
    from leap_cli.shards.format import begun_packing

    assert begun_packing(folder) == {"max_count": 2, "max_shard_size": 8192}


def test_another_packing_given_is_refused_naming_the_folders_own_command(root, tmp_path):
    """--max-count 0 given (the default's value, given) is another packing than the folder's: refused, the fix names
    the command with --max-count 2, which resumes it as pasted; --force repacks with the options as given."""
    work = tmp_path / "w"
    folder = work / "shards" / "train"
    code, text = build(root, work, "--max-count", "2")
    assert code == 0, text[-2000:]
    before = tar_digests(folder)
    interrupted(folder)
    code, text = build(root, work, "--max-count", "0")
    assert code == 2 and "--max-count differs" in flat(text), flat(text)[-2000:]
    m = re.search(r"run (leap build-shards .*?) \(its own packing", flat(text))
    assert m, flat(text)[-2000:]  # (was: "pass --force to delete them and rebuild, or another --out" alone)
    words = shlex.split(m.group(1))
    assert words[words.index("--max-count") + 1] == "2"
    assert len(tar_digests(folder)) == len(before) - 1  # nothing deleted
    code, text = leap(*words[1:])
    assert code == 0, flat(text)[-2000:]
    assert tar_digests(folder) == before
    code, text = build(root, work, "--force")  # (left out under --force: the default, no limit)
    assert code == 0, flat(text)[-2000:]
    assert NOTE not in flat(text)
    assert counts(folder) == [7] and load_manifest(folder)[0]["settings"]["max_count"] == 0


def test_parts_resume_and_take_the_packing_begun_beside_them(root, tmp_path):
    """Part 0 built with --max-count 2 and killed; its plain re-run resumes it, part 1 (not begun) packs as part 0
    does, and the merged manifest holds one packing."""
    work = tmp_path / "w"
    folder = work / "shards" / "train"
    code, text = build(root, work, "--max-count", "2", "--shard", "0/2")
    assert code == 0, text[-2000:]
    before = tar_digests(folder)
    interrupted(folder, "leap-train.shard0of2-")
    code, text = build(root, work, "--shard", "0/2")
    assert code == 0, flat(text)[-2000:]
    assert f"{NOTE}: --max-count 2" in flat(text)
    assert tar_digests(folder) == before
    code, text = build(root, work, "--shard", "1/2")
    assert code == 0, flat(text)[-2000:]
    m = load_manifest(folder)[0]
    assert (folder / "manifest.json").exists() and m["counts"]["samples"] == 7
    assert max(counts(folder)) == 2
    assert {json.loads(p.read_text())["settings"]["max_count"] for p in folder.glob("manifest.shard*.json")} == {2}


def test_a_folder_whose_records_keep_no_settings_takes_its_manifests_packing(root, tmp_path):
    """Progress records of a leap before 2026-12-06 keep no settings: the packing is read from the manifest."""
    work = tmp_path / "w"
    folder = work / "shards" / "train"
    code, text = build(root, work, "--max-count", "2")
    assert code == 0, text[-2000:]
    before = tar_digests(folder)
    progress = folder / ".progress.jsonl"
    records = [json.loads(line) for line in progress.read_text().splitlines()]
    progress.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "settings"}) + "\n" for r in records))
    code, text = build(root, work)
    assert code == 0, flat(text)[-2000:]
    assert tar_digests(folder) == before


def test_help_says_a_rerun_keeps_the_folders_packing():
    from tests.test_attack_help_texts import _param

    for name in ("max_count", "max_shard_size"):
        assert "re-run packs as the folder's build began" in " ".join(_param("build-shards", name).help.split())
