"""Attacks on session 50's changes, as a user meets them: the stdout console's soft wrap (``leap show``'s tree),
check-shards' counts.samples check on builds in --shard parts, build-shards' --max-steps/--max-conditions against
a shared vocabulary, model.options' type checks on legitimate values, data.val in parts or as a manifest file,
generate-programs' request options in the Batch flow, a resume of an old progress file (no made_with)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from leap_cli.common import ShardSpec
from leap_cli.errors import LeapError

REPO = Path(__file__).resolve().parent.parent
EPIC = Path(__file__).parent / "data" / "epic100"


def leap(cwd: Path, *args, columns: int = 80) -> subprocess.CompletedProcess:
    """``python -m leap_cli ARGS`` with stdout piped (a log), at ``columns`` wide."""
    env = {**os.environ, "COLUMNS": str(columns), "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("FORCE_COLOR", None)
    return subprocess.run([sys.executable, "-m", "leap_cli", *map(str, args)], cwd=cwd, env=env, text=True,
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=120)


# ---- soft wrap: leap show's tree ---------------------------------------------------------------------------------

PURPOSE = ("to pick up the plate from the counter so that it can be washed in the sink afterwards with soap and "
           "water and then dried PURPOSE-END")


def _show_workdir(tmp_path: Path) -> Path:
    work = tmp_path / "w"
    (work / "programs").mkdir(parents=True)
    rec = {"narration_id": "P01_01_0", "status": "valid",
           "program": {"action": {"narration": "take plate", "verb": "take", "verb_class": 0, "noun": "plate",
                                  "noun_class": 2},
                       "pre": [], "post": [],
                       "steps": [{"type": "sub_action", "verb": "take", "object_a": "plate", "hand": "right",
                                  "purpose": PURPOSE, "pre": [], "post": []}]}}
    (work / "programs" / "train.jsonl").write_text(json.dumps(rec) + "\n")
    return work


def test_show_keeps_the_whole_text_of_a_long_tree_label(tmp_path):
    """The soft-wrapping console cropped a rich Tree's long labels at the width: `leap show` lost the end of a long
    purpose and of the root line's note ('... pass --data ROOT)')."""
    work = _show_workdir(tmp_path)
    res = leap(tmp_path, "show", "P01_01_0", "--workdir", work)
    assert res.returncode == 0, res.stderr
    flat = " ".join(res.stdout.split())  # (wrapped or not: every word there)
    assert "dried PURPOSE-END" in flat, res.stdout
    assert "pass --data ROOT" in flat, res.stdout


def test_show_tree_prints_the_program_and_no_descriptor_note(tmp_path):
    """What did not change: the tree's structure and the one-line note."""
    work = _show_workdir(tmp_path)
    res = leap(tmp_path, "show", "P01_01_0", "--workdir", work, columns=400)
    assert res.returncode == 0, res.stderr
    assert "1. take(plate) with the right hand" in res.stdout and PURPOSE in res.stdout
    assert "P01_01_0: no descriptor record yet (run `leap extract`)" in res.stdout


def test_a_long_message_line_is_not_broken_when_piped(tmp_path):
    """The change's aim: a line with a path is one line in a log (a Batch note naming the model, the write line)."""
    batch = tmp_path / ("a-rather-long-folder-name-for-the-batch-requests-" * 2) / "b.jsonl"
    batch.parent.mkdir()
    res = leap(tmp_path, "generate-programs", "--split", "train", "--annotations", EPIC, "--workdir", tmp_path / "w",
               "--model", "gpt-4o", "--batch-file", batch, "--limit", 2)
    assert res.returncode == 0, res.stderr
    lines = [x for x in res.stdout.splitlines() if x.startswith("wrote 2 Batch API requests")]
    assert len(lines) == 1 and str(batch) in lines[0], res.stdout
    # the Batch flow names --model without --backend: not refused as an option of the offline backend
    assert batch.is_file() and all(json.loads(x)["body"]["model"] == "gpt-4o" for x in batch.read_text().splitlines())


def test_offline_generate_programs_refuses_request_options_in_one_line(tmp_path):
    res = leap(tmp_path, "generate-programs", "--split", "train", "--annotations", EPIC, "--workdir", tmp_path / "w",
               "--workers", 3, "--max-cost", 5, "--limit", 1)
    assert res.returncode != 0
    err = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(err) == 1 and "--workers, --max-cost are options of the LLM's requests" in err[0], res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "w" / "programs" / "train.jsonl").exists()
    # the offline run without them goes on
    ok = leap(tmp_path, "generate-programs", "--split", "train", "--annotations", EPIC, "--workdir", tmp_path / "w",
              "--limit", 1)
    assert ok.returncode == 0, ok.stderr


# ---- shards: parts, shared vocabulary, an old progress file ----------------------------------------------------

@pytest.fixture(scope="module")
def kitchen(tmp_path_factory) -> Path:
    from tests.test_shards import make_root

    return make_root(tmp_path_factory.mktemp("kitchen50"))


def _build(root, work, **kw):
    from tests.test_shards import build

    return build(root, work, **kw)


def test_check_shards_passes_merged_parts_and_each_part_manifest(kitchen, tmp_path):
    """counts.samples of a build in --shard parts (the merged manifest and each part's) agrees with its shards."""
    from leap_cli.shards.check import check_shards

    _build(kitchen, tmp_path, shard=ShardSpec(1, 2))
    _build(kitchen, tmp_path, shard=ShardSpec(0, 2))
    out = tmp_path / "shards" / "train"
    total = check_shards(out)
    assert total.problems == [] and total.ok == total.samples == 7
    parts = [check_shards(out / f"manifest.shard{i}of2.json") for i in range(2)]
    assert all(p.problems == [] for p in parts) and sum(p.ok for p in parts) == 7
    # the parts' progress records hold made_with; their manifests' shard entries do not carry it
    m = json.loads((out / "manifest.json").read_text())
    assert all("made_with" not in s for s in m["shards"])
    rec = json.loads((out / ".progress.shard0of2.jsonl").read_text().splitlines()[0])
    assert isinstance(rec["made_with"], dict) and rec["made_with"] and "split" in rec["made_with"]


def test_a_val_build_with_the_training_vocabularys_own_values_is_not_refused(kitchen, tmp_path):
    """README's loop over the splits with the same --max-steps/--max-conditions: the val build shares the vocabulary
    and holds those values (or fewer conditions than the cap): built; another --max-steps: one line naming both."""
    from leap_cli.shards.writer import build_split
    from tests.test_shards import program_records, settings, write_programs

    write_programs(tmp_path / "programs" / "train.jsonl", program_records())
    train = build_split(kitchen, "train", workdir=tmp_path, settings=settings(), max_steps=10, max_conditions=50)
    held = train.manifest["targets"]
    assert held["max_steps"] == 10 and len(held["conditions"]) < 50

    val = build_split(kitchen, "val", workdir=tmp_path, settings=settings(split="val"), max_steps=10,
                      max_conditions=50)
    assert val.manifest["targets"] == held
    with pytest.raises(LeapError) as e:
        build_split(kitchen, "val", workdir=tmp_path, settings=settings(split="val"), max_steps=12)
    assert "--max-steps 12 (it holds 10)" in e.value.message and "\n" not in e.value.message
    with pytest.raises(LeapError, match=r"--max-conditions 2 \(it holds"):
        build_split(kitchen, "val", workdir=tmp_path, settings=settings(split="val"), max_conditions=2)


def test_an_old_progress_file_without_made_with_resumes(kitchen, tmp_path):
    """A build stopped by an earlier leap (its progress records without made_with): the same settings resume it,
    with the same bytes as a build in one go; other settings are refused in one line."""
    from tests.test_shards import build_stopped, tar_digests

    ref = _build(kitchen, tmp_path / "ref")
    out = build_stopped(kitchen, tmp_path / "run")
    progress = out / ".progress.jsonl"
    records = [json.loads(x) for x in progress.read_text().splitlines()]
    assert records and all("made_with" in r for r in records)
    progress.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "made_with"}) + "\n"
                                for r in records))
    with pytest.raises(LeapError) as e:
        _build(kitchen, tmp_path / "run", short_side=24)
    assert "\n" not in e.value.message
    r = _build(kitchen, tmp_path / "run")
    assert r.resumed_shards == 1
    assert tar_digests(r.out) == tar_digests(ref.out)


# ---- config: model.options of legitimate types; data.val ---------------------------------------------------------

def test_model_options_of_every_legitimate_type_load(tmp_path):
    """A config written by hand or saved by a run: YAML lists, ints where floats are declared, bools."""
    from leap_cli.train.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("base: tiny-synthetic\nmodel:\n  options:\n    return_list: [0, 1]\n"
                    "    mlp_dropout: [0.5, 0]\n    mean: [0.5, 0.5, 0.5]\n    std: [1, 1, 1]\n"
                    "    dw_reduction: 2\n    mlp_factor: 4\n    temporal_downsample: false\n"
                    "    no_lmhra: true\n    frozen: false\n    decoder_recognition: false\n    decoder_dim: null\n")
    cfg = load_config(path)
    o = cfg.model.options
    assert o["return_list"] == [0, 1] and o["dw_reduction"] == 2 and o["no_lmhra"] is True
    # --set values are YAML: true/false are bools, [..] lists
    cfg = load_config("tiny-synthetic", ["model.options.frozen=false", "model.options.mean=[0.4,0.4,0.4]",
                                         "model.options.dw_reduction=0.5"])
    assert cfg.model.options["frozen"] is False and cfg.model.options["mean"] == [0.4, 0.4, 0.4]
    # and the config a run saves (to_dict, dumped) loads again
    from leap_cli.train.config import dump_config

    saved = tmp_path / "saved.yaml"
    saved.write_text(dump_config(cfg))
    assert load_config(saved).model.options == cfg.model.options


@pytest.mark.parametrize("setting, says", [("model.options.frozen='false'", "is not true or false"),
                                           ("model.options.return_list=8", "is not a list of integers"),
                                           ("model.options.dw_reduction=0", "is not a number over 0"),
                                           ("model.options.layers=0", "out of range")])
def test_a_wrong_option_type_is_one_line_naming_the_key(setting, says):
    from leap_cli.train.config import load_config

    with pytest.raises(LeapError) as e:
        load_config("tiny-synthetic", [setting])
    key = setting.split("=")[0]
    assert f"config key {key!r}" in e.value.message and says in e.value.message and "\n" not in e.value.message


def test_data_val_in_parts_or_as_a_manifest_file_is_not_refused(tmp_path):
    """data.val naming a folder of --shard parts (no merged manifest yet), or a manifest file, is a folder that
    exists; a typo is refused in one line with the fix."""
    from leap_cli.train.config import load_config
    from leap_cli.train.loop import shard_folders

    parts = tmp_path / "val"
    parts.mkdir()
    (parts / "manifest.shard0of2.json").write_text("{}")
    cfg = load_config("tiny-synthetic", [f"data.val={parts}"])
    assert shard_folders(cfg, tmp_path)[1] == parts
    cfg = load_config("tiny-synthetic", [f"data.val={parts / 'manifest.shard0of2.json'}"])
    assert shard_folders(cfg, tmp_path)[1] == parts / "manifest.shard0of2.json"
    cfg = load_config("tiny-synthetic", ['data.val=""'])  # "" trains without validation
    assert shard_folders(cfg, tmp_path)[1] is None
    cfg = load_config("tiny-synthetic", ["data.task=anticipation", "model.anticipation_context=2",
                                         f"data.val={tmp_path / 'vall'}"])
    with pytest.raises(LeapError) as e:
        shard_folders(cfg, tmp_path)
    assert e.value.message == "data.val names no such folder" and "--task anticipation" in e.value.fix
    # data.val unset and the default folder missing: not refused (train without validation, as before)
    assert shard_folders(load_config("tiny-synthetic"), tmp_path)[1] == tmp_path / "shards" / "val"


def test_a_part_manifests_wrong_count_names_that_part(kitchen, tmp_path):
    """check_shards named folder/manifest.json where the manifest checked was a part's whose counts.samples lies."""
    from leap_cli.shards.check import check_shards

    _build(kitchen, tmp_path, shard=ShardSpec(0, 2))
    _build(kitchen, tmp_path, shard=ShardSpec(1, 2))
    part = tmp_path / "shards" / "train" / "manifest.shard0of2.json"
    m = json.loads(part.read_text())
    m["counts"]["samples"] += 5
    part.write_text(json.dumps(m))
    with pytest.raises(LeapError, match="counts.samples says") as e:
        check_shards(part)
    assert e.value.path == str(part)
