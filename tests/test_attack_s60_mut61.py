"""Helper mut61: a hand-made mutation run over session 60's latest changes (d59522e..2e7a7b4): check-shards' fix
lines read once a part, ``format._begun`` / ``begun_options`` / ``build_command(part=)`` / ``rebuild_fix``,
``writer._rule_of`` / ``made_settings(rule=)``, the "inputs" a build keeps in its progress records, train's
no-samples advice, io's merge advice. Each test here kills a mutant that the earlier tests let live (named in its
docstring); none found a bug in the code as it is.

The roots are frames60's / upgrade60's (every frame carries its own number); the old leap's folders are made as
upgrade60 makes them (``old_build``).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

from tests.test_attack_s60_attack61 import SMALL, kit, mixed_root, rebuild_advice, workdir_with_kitchen  # noqa: F401
from tests.test_attack_s60_frames60 import leap
from tests.test_attack_s60_upgrade60 import ROWS, SEGMENTS, build, mp4_root, old_build, tars  # noqa: F401


def flat(text: str) -> str:
    return " ".join(text.split())


def flip_middle(path: Path) -> None:
    b = bytearray(path.read_bytes())
    b[len(b) // 2] ^= 0xFF
    path.write_bytes(bytes(b))


def fix_lines(text: str) -> list[str]:
    return [flat(x)[len("fix: "):] for x in re.split(r"\n(?=\S)", text) if x.startswith("fix: ")]


# ---- check-shards --on-error skip: the fix lines, one a part (commands/shards.py) ------------------------------------

def test_check_shards_skip_gives_each_damaged_part_its_own_rebuild_command(kit, tmp_path):
    """Kills: the parts' commands read for the problems that have a fix (KeyError on the others), and
    rebuild_fix(None, folder) (a command without --shard: it would rebuild no part)."""
    work = workdir_with_kitchen(kit, tmp_path / "w")
    out = work / "shards" / "train"
    for part in ("0/2", "1/2"):
        code, text = leap("build-shards", "--workdir", str(work), "--split", "train", *SMALL, "--max-count", "1",
                          "--shard", part)
        assert code in (0, 3), text[-2000:]
    for i in (0, 1):
        flip_middle(sorted(out.glob(f"*.shard{i}of2-*.tar"))[0])
    code, text = leap("check-shards", "--workdir", str(work), "--split", "train", "--on-error", "skip")
    assert code == 1, flat(text)[-2000:]
    fixes = fix_lines(text)
    assert len(fixes) == 2, fixes
    for i, fix in enumerate(fixes):
        words = shlex.split(re.search(r"run (leap build-shards .*?) again \(it rebuilds", fix).group(1))
        assert words[words.index("--shard") + 1] == f"{i}/2", words
        assert words[words.index("--workdir") + 1] == str(work) and "--max-count" in words, words


def test_check_shards_skip_keeps_a_manifest_problems_own_fix_beside_a_shards(tmp_path, mp4_root):
    """A manifest whose counts.samples lies ("rerun ...: it rewrites the manifest") and a damaged shard of the same
    folder: both fixes are printed. Kills: ``fixes.get(part) or p.get("fix")`` (the shard's rebuild command put
    in place of the manifest's own fix)."""
    work, out = tmp_path / "w", tmp_path / "w" / "s"
    code, text = build(mp4_root, work, out, "--frames", "2")
    assert code == 0, text[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    m["counts"]["samples"] += 1
    (out / "manifest.json").write_text(json.dumps(m))
    flip_middle(sorted(out.glob("*.tar"))[0])
    code, text = leap("check-shards", "--shards", str(out), "--on-error", "skip")
    assert code == 1
    fixes = fix_lines(text)
    assert any("it rewrites the manifest" in f for f in fixes), fixes
    assert any(f.startswith("delete that shard file") for f in fixes), fixes


# ---- writer._rule_of: which builds keep the observed_end rule -------------------------------------------------------

def test_force_over_an_old_mp4_segments_folder_builds_with_todays_rule(monkeypatch, tmp_path, mp4_root):
    """--force starts the folder over: the new build keeps observed_end like every new build. Kills: ``overwrite``
    dropped from _rule_of (the old records, about to be deleted, decided the new build's settings)."""
    from leap_cli.shards.writer import OBSERVED_END

    work, out = tmp_path / "w", tmp_path / "w" / "s"
    old_build(monkeypatch, mp4_root, work, out, *SEGMENTS, killed=False)
    assert "observed_end" not in json.loads((out / "manifest.json").read_text())["settings"]
    code, text = build(mp4_root, work, out, *SEGMENTS, "--force")
    assert code == 0, flat(text)[-2000:]
    assert json.loads((out / "manifest.json").read_text())["settings"].get("observed_end") == OBSERVED_END
    recs = [json.loads(x) for x in next(out.glob(".progress*.jsonl")).read_text().splitlines()]
    assert recs and all("settings.observed_end" in r["made_with"] for r in recs)


def test_todays_part_of_an_old_mp4_segments_split_merges_with_the_old_part(monkeypatch, tmp_path, mp4_root):
    """Part 0/2 finished by the old leap (its manifest.shard0of2.json, no observed_end), part 1/2 begun today: on an
    MP4 the rule changed no sample, so today's part takes the old settings and the two merge. Kills: _rule_of
    reading only manifest.json, or no manifest (part 1 would keep the rule and the merge be refused)."""
    work, out = tmp_path / "w", tmp_path / "w" / "s"
    old_build(monkeypatch, mp4_root, work, out, *SEGMENTS, "--shard", "0/2", killed=False)
    assert not (out / "manifest.json").exists() and (out / "manifest.shard0of2.json").exists()
    code, text = build(mp4_root, work, out, *SEGMENTS, "--shard", "1/2")
    assert code == 0, flat(text)[-2000:]
    merged = json.loads((out / "manifest.json").read_text())
    assert "observed_end" not in merged["settings"] and merged["counts"]["samples"] == len(ROWS)


def test_a_finished_mp4_segments_build_of_today_is_resumed_as_it_is(tmp_path, mp4_root):
    """Today's build (records and manifest with observed_end) run again: nothing rebuilt, the rule kept. Kills:
    _rule_of dropping the rule for a manifest that keeps it."""
    from leap_cli.shards.writer import OBSERVED_END

    work, out = tmp_path / "w", tmp_path / "w" / "s"
    code, text = build(mp4_root, work, out, *SEGMENTS)
    assert code == 0, text[-2000:]
    before = tars(out)
    code, text = build(mp4_root, work, out, *SEGMENTS)
    assert code == 0, flat(text)[-2000:]
    assert tars(out) == before
    assert json.loads((out / "manifest.json").read_text())["settings"].get("observed_end") == OBSERVED_END


def test_an_old_segments_folder_of_mp4_and_rgb_frames_videos_is_refused_naming_the_rule(monkeypatch, tmp_path):
    """A split of one MP4 and one rgb_frames video built by the old leap (killed before its manifest): the
    rgb_frames video's samples changed with the rule, so the resume is refused, naming it, not mixed. Kills:
    ``any(frame_folders(...))`` -> ``all(...)`` (one MP4 video among them let the old folder resume)."""
    root = mixed_root(tmp_path)
    shutil.copytree(tmp_path / "b" / "P02", root / "P02")
    work, out = tmp_path / "w", tmp_path / "s"
    old_build(monkeypatch, root, work, out, *SEGMENTS)
    before = tars(out)
    code, text = build(root, work, out, *SEGMENTS)
    said = flat(text)
    assert code != 0 and "where the observed window ends" in said, said[-2000:]
    assert tars(out) == before and not (out / "manifest.json").exists()


# ---- build_split's "inputs": the command that resumes a build given its inputs elsewhere -----------------------------

def test_a_builds_inputs_given_elsewhere_are_kept_absolute_and_its_command_rebuilds_from_another_directory(
        kit, tmp_path, monkeypatch):
    """--data, --annotations, --programs (relative), --max-steps and --max-conditions given: each is kept in the
    progress records as given (paths absolute), the work directory's default kitchen is not, and the command
    check-shards prints, pasted in another directory, rebuilds the damaged shard as it was. Kills: any of them
    left out of ``given``, paths kept relative, the default --data kept."""
    work = tmp_path / "w"
    work.mkdir()
    data = workdir_with_kitchen(kit, tmp_path / "d") / "kitchen"
    (tmp_path / "p").mkdir()
    shutil.copy(kit / "programs" / "train.jsonl", tmp_path / "p" / "train.jsonl")
    monkeypatch.chdir(tmp_path)
    code, text = leap("build-shards", "--workdir", "w", "--split", "train", *SMALL, "--max-count", "2",
                      "--data", str(data), "--annotations", str(data / "annotations"),
                      "--programs", "p/train.jsonl", "--max-steps", "40", "--max-conditions", "7")
    assert code in (0, 3), text[-2000:]
    folder = work / "shards" / "train"
    rec = json.loads((folder / ".progress.jsonl").read_text().splitlines()[0])
    assert rec["inputs"] == {"--workdir": str(work), "--data": str(data), "--annotations": str(data / "annotations"),
                             "--programs": str(tmp_path / "p" / "train.jsonl"), "--max-steps": 40,
                             "--max-conditions": 7}, rec["inputs"]
    good = tars(folder)
    flip_middle(folder / "leap-train-000001.tar")
    code, text = leap("check-shards", "--workdir", str(work), "--split", "train")
    words = rebuild_advice(text)
    assert words.count("--workdir") == 1, words
    (folder / "leap-train-000001.tar").unlink()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, text = leap(*words[1:])
    assert code in (0, 3), flat(text)[-2000:]
    assert tars(folder) == good


def test_a_build_of_the_default_kitchen_keeps_no_data_input(kit, tmp_path):
    """Kills: --data kept when it is the work directory's kitchen (a command naming what it would read anyway)."""
    work = workdir_with_kitchen(kit, tmp_path / "w")
    shutil.copytree(kit / "programs", work / "programs")
    code, text = leap("build-shards", "--workdir", str(work), "--split", "train", *SMALL, "--max-count", "4")
    assert code in (0, 3), text[-2000:]
    rec = json.loads((work / "shards" / "train" / ".progress.jsonl").read_text().splitlines()[0])
    assert rec["inputs"] == {"--workdir": str(work)}, rec["inputs"]


def test_a_custom_out_build_with_spaced_workdir_and_data_is_rebuilt_by_its_command_from_elsewhere(
        kit, tmp_path, monkeypatch):
    """--out elsewhere, --workdir and --data with spaces: check-shards' command names the build's work directory and
    inputs, quoted, and pasted in another directory rebuilds the damaged shard as it was. Kills: the work directory
    left out of another --out's command, or it or an input not quoted."""
    work = tmp_path / "my work"
    work.mkdir()
    data = workdir_with_kitchen(kit, tmp_path / "my data") / "kitchen"
    shutil.copytree(kit / "programs", work / "programs")
    out = tmp_path / "out"
    code, text = leap("build-shards", "--workdir", str(work), "--data", str(data), "--split", "train", *SMALL,
                      "--max-count", "2", "--out", str(out))
    assert code in (0, 3), text[-2000:]
    good = tars(out)
    flip_middle(out / "leap-train-000001.tar")
    code, text = leap("check-shards", "--shards", str(out))
    words = rebuild_advice(text)
    assert words[words.index("--workdir") + 1] == str(work) and words[words.index("--data") + 1] == str(data), words
    (out / "leap-train-000001.tar").unlink()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, text = leap(*words[1:])
    assert code in (0, 3), flat(text)[-2000:]
    assert tars(out) == good


def test_begun_options_read_past_a_progress_path_that_cannot_be_read(tmp_path):
    """Kills: ``_begun`` giving up at the first .progress*.jsonl it cannot open (here a folder of that name)."""
    from leap_cli.shards.format import begun_options

    (tmp_path / ".progress.a.jsonl").mkdir()
    rec = {"name": "leap-val-000000.tar", "settings": {"split": "val", "task": "recognition", "max_count": 2}}
    (tmp_path / ".progress.jsonl").write_text(json.dumps(rec) + "\n")
    assert begun_options(tmp_path) == ["--max-count", "2"]


def test_train_on_shards_of_no_samples_advises_building_data_not_a_batch_size(kit, tmp_path):
    """Kills: the batch-size advice given for 0 samples too ('--set data.batch_size=0': pasted, another refusal);
    attack61's test of it passes when the pasted 0 fails some other way."""
    work = workdir_with_kitchen(kit, tmp_path / "w")
    for p in (work / "kitchen").glob("P0*/videos"):
        shutil.rmtree(p)
    code, text = leap("build-shards", "--workdir", str(work), "--split", "train", *SMALL)
    assert json.loads((work / "shards" / "train" / "manifest.json").read_text())["counts"]["samples"] == 0
    code, text = leap("train", "--workdir", str(work), "--config", "tiny-synthetic-short", "--set", "data.val=")
    said = flat(text)
    assert code != 0 and "fewer than data.batch_size" in said, said[-2000:]
    assert "data.batch_size=0" not in said and "build shards that hold samples" in said, said[-2000:]
