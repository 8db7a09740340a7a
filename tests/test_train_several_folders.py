"""Training on several shards folders (``data.train`` as a list: the train and val shards of a challenge run), and
``leap evaluate``'s warning where the segments it scores are among those the run trained on."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from leap_cli.errors import LeapError
from tests.test_train import _kitchen, shard_work  # noqa: F401  (the module's fixture: train and val shards of a tiny kitchen)

MINI = ("model: {img_size: 32, num_frames: 4, options: {decoder_dim: 32}}\n"
        "data: {batch_size: 4, eval_batch_size: 4}\n"
        "train: {epochs: 1, log_every: 1}\n")


def _keys(folder: Path) -> list[str]:
    m = json.loads((folder / "manifest.json").read_text())
    return [k for s in m["shards"] for k in s["keys"]]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for lock in dst.glob("*.lock"):
        lock.unlink()
    return dst


def test_dataset_reads_every_folder_once(shard_work: Path) -> None:
    from leap_cli.shards.dataset import ShardDataset

    train, val = shard_work / "shards" / "train", shard_work / "shards" / "val"
    ds = ShardDataset([train, val], train=True, num_frames=4, img_size=32, shuffle_buffer=4, batch_size=1)
    got = sorted(s["narration_id"] for s in ds)
    assert got == sorted(_keys(train) + _keys(val))
    assert ds.manifest["counts"]["samples"] == len(_keys(train)) + len(_keys(val))
    # the second folder's shards are opened in it (their names are the same split's in both folders otherwise)
    assert all("folder" not in s for s in ds.manifest["shards"][:len(json.loads(
        (train / "manifest.json").read_text())["shards"])])
    assert {Path(s["folder"]) for s in ds.manifest["shards"] if "folder" in s} == {val}


def test_one_folder_is_read_as_before(shard_work: Path) -> None:
    from leap_cli.shards.format import load_folders, load_manifest

    train = shard_work / "shards" / "train"
    assert load_folders([train]) == load_manifest(train) == load_folders(train)


def test_a_segment_in_two_folders_is_refused(shard_work: Path, tmp_path: Path) -> None:
    from leap_cli.shards.format import load_folders

    train = shard_work / "shards" / "train"
    copy = _copy(train, tmp_path / "again")
    with pytest.raises(LeapError, match=r"segment P01_01_\d+ is in two of the training folders") as e:
        load_folders([train, copy])
    assert e.value.record.startswith("P01_01_")


@pytest.mark.parametrize("key,value,said", [("frames", 8, "--frames"), ("short_side", 64, "--short-side")])
def test_folders_built_otherwise_are_refused(shard_work: Path, tmp_path: Path, key: str, value: int,
                                             said: str) -> None:
    from leap_cli.shards.format import load_folders

    val = _copy(shard_work / "shards" / "val", tmp_path / "val")
    m = json.loads((val / "manifest.json").read_text())
    m["settings"][key] = value
    (val / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(LeapError, match=f"built otherwise than .*{said}") as e:
        load_folders([shard_work / "shards" / "train", val])
    assert Path(e.value.path) == val


def test_another_vocabulary_is_refused(shard_work: Path, tmp_path: Path) -> None:
    from leap_cli.shards.format import load_folders

    val = _copy(shard_work / "shards" / "val", tmp_path / "val")
    m = json.loads((val / "manifest.json").read_text())
    m["targets"]["conditions"] = m["targets"]["conditions"][:-1] + ["other"]
    (val / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(LeapError, match="the target vocabulary"):
        load_folders([shard_work / "shards" / "train", val])


def test_config_takes_a_folder_or_a_list() -> None:
    from leap_cli.train.config import config_from_dict, dump_config, load_config

    cfg = load_config(None, ["data.train=[a/train, b/val]"])
    assert cfg.data.train == ("a/train", "b/val")
    assert config_from_dict(__import__("yaml").safe_load(dump_config(cfg))).data.train == ("a/train", "b/val")
    assert load_config(None, ["data.train=[a/train]"]).data.train == "a/train"
    assert load_config(None, ["data.train=a/train"]).data.train == "a/train"
    for bad in ("[]", "[1, 2]", "{a: 1}", "['', x]"):
        with pytest.raises(LeapError, match="a folder, or a list of folders"):
            load_config(None, [f"data.train={bad}"])


def test_provenance_over_folders(shard_work: Path) -> None:
    from leap_cli.shards.format import folders_provenance, load_folders, load_manifest

    train, val = shard_work / "shards" / "train", shard_work / "shards" / "val"
    m, first = load_folders([train, val])
    prov = folders_provenance(m, first)
    one = [folders_provenance(*load_manifest(f)) for f in (train, val)]
    assert prov["shards"] == [str(train.resolve()), str(val.resolve())]
    assert prov["folders"] == one
    assert prov["split"] == "train+val" and [p["split"] for p in one] == ["train", "val"]
    assert prov["programs"]["with_program"] == sum(p["programs"]["with_program"] for p in one)
    assert prov["programs"]["records"] == sum(p["programs"]["records"] for p in one)
    # a hash of both folders' hashes: another val folder's programs or labels change it
    assert prov["programs"]["sha256"] not in (one[0]["programs"]["sha256"], one[1]["programs"]["sha256"])
    # the folders in their own order (that of their first segments), whatever the order given
    assert folders_provenance(*load_folders([val, train])) == prov
    rows = {(r["backend"], r["model"]): r["records"] for r in prov["programs"]["made_by"]}
    assert rows == {("offline", "offline-v5"): 6, ("openai", "gpt-4o"): 2}
    assert prov["programs"]["prompt_version"] == one[0]["programs"]["prompt_version"]


def test_train_on_train_and_val_then_evaluate_warns(shard_work: Path, tmp_path: Path, caplog) -> None:
    from typer.testing import CliRunner

    from leap_cli.cli import app

    cfg = tmp_path / "mini.yaml"
    cfg.write_text(MINI)
    train, val = shard_work / "shards" / "train", shard_work / "shards" / "val"
    work = tmp_path / "work"
    args = ["train", "--config", str(cfg), "--workdir", str(work), "--name", "both", "--set",
            f"data.train=[{train}, {val}]", "--set", 'data.val=""']
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    run = work / "runs" / "both"
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["train"]["shards"] == [str(train.resolve()), str(val.resolve())]
    # 12 samples in batches of 4: both folders' samples are in the epoch (train alone gives 2 batches)
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(e["step"] for e in logged if e["split"] == "train") == 3
    r = CliRunner().invoke(app, args + ["--resume"])
    assert r.exit_code == 0, r.output
    with caplog.at_level(logging.WARNING):
        r = CliRunner().invoke(app, ["evaluate", "--run", str(run), "--split", "val", "--shards", str(val),
                                     "--data", str(_kitchen(tmp_path / "kitchen")), "--checkpoint", "last"])
    assert r.exit_code == 0, r.output
    said = caplog.text + r.output
    import torch

    assert torch.load(run / "eval" / "val" / "scores.pt", weights_only=True)["meta"]["skipped"] == []
    assert f"4 of the 4 val segments in {val} are among those the run trained on" in " ".join(said.split())


def test_validation_on_a_training_folder_is_said(shard_work: Path, caplog) -> None:
    from leap_cli.train.config import load_config
    from leap_cli.train.data import ShardSource
    from leap_cli.train.distributed import DistInfo

    train, val = shard_work / "shards" / "train", shard_work / "shards" / "val"
    cfg = load_config(None, ["model.img_size=32", "model.num_frames=4", "data.batch_size=4"])
    with caplog.at_level(logging.WARNING):
        source = ShardSource([train, val], val, cfg, DistInfo())
    assert source.batches_per_epoch == 3
    said = " ".join(caplog.text.split())
    assert f"{val}: 4 of the validation shards' 4 segments are also in the training shards" in said
    assert 'data.val is one of data.train\'s folders: a run trained on train + val (for the challenge\'s test split) ' \
           'sets data.val=""' in said
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        ShardSource([train], val, cfg, DistInfo())
    assert "also in the training shards" not in caplog.text


def test_the_submit_command_after_test_scores_says_the_training_data_level(tmp_path: Path) -> None:
    from leap_cli.commands.evaluate import _submit_command

    def td(split: str | None) -> str:
        prov = None if split is None else {"train": {"shards": "s", "split": split}}
        command = _submit_command(tmp_path / "scores.pt", "recognition", tmp_path, tmp_path, None, prov)
        return command.split("--sls-td ")[1]

    assert td("train+val") == "4"
    assert td("val+train") == "4"
    assert td("train") == "3"
    assert td(None) == "3"  # (a run of a leap before provenance.json: the train split, as leap trained then)
