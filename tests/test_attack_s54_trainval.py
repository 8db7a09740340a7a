"""Attack of ``data.train`` as a list of shards folders (a challenge entry trained on train + val): anticipation
folders, mixed tasks, ``--shard i/n`` parts, ranks and DataLoader workers, resumes with the list changed, the
commands that read a run trained so, bad input and the folders' locks."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leap_cli.errors import LeapError
from tests.test_train import ACTIONS, _kitchen, _program

MINI = ("model: {img_size: 32, num_frames: 4, options: {decoder_dim: 32}}\n"
        "data: {batch_size: 4, eval_batch_size: 4}\n"
        "train: {epochs: 2, log_every: 1}\n")


def _keys(folder: Path) -> list[str]:
    from leap_cli.shards.format import load_manifest

    m, _ = load_manifest(folder)
    return [k for s in m["shards"] for k in s["keys"]]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """Recognition and anticipation shards of train and val, and val built in two --shard parts (no merged
    manifest.json: the parts are merged at load)."""
    from leap_cli.common import ShardSpec
    from leap_cli.shards.writer import ShardSettings, build_split

    base = tmp_path_factory.mktemp("tv")
    root = _kitchen(base / "kitchen")
    work = base / "work"
    (work / "programs").mkdir(parents=True)
    recs = [{"narration_id": f"P01_01_{i}", "status": "valid", "program": _program(ACTIONS[i % 2][0], ACTIONS[i % 2][2]),
             "errors": [], "provenance": {"backend": "offline", "model": "offline-v5"}} for i in range(8)]
    (work / "programs" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    for split in ("train", "val"):
        build_split(root, split, workdir=work, settings=ShardSettings(split=split, frames=4, short_side=32))
    for split in ("train", "val"):
        build_split(root, split, workdir=work, settings=ShardSettings(split=split, task="anticipation", frames=4,
                                                                     short_side=32, context=1,
                                                                     context_mode="segments"))
    parts = work / "shards" / "valparts"
    for i in range(2):
        build_split(root, "val", workdir=work, out=parts, shard=ShardSpec(i, 2),
                    settings=ShardSettings(split="val", frames=4, short_side=32))
    (parts / "manifest.json").unlink(missing_ok=True)
    s = work / "shards"
    return {"root": root, "work": work, "train": s / "train", "val": s / "val", "atrain": s / "train-anticipation",
            "aval": s / "val-anticipation", "parts": parts, "base": base}


def _cfg(tmp_path: Path) -> Path:
    cfg = tmp_path / "mini.yaml"
    cfg.write_text(MINI)
    return cfg


def _invoke(args: list[str]):
    from leap_cli.cli import app

    return CliRunner().invoke(app, args)


def _flat(text: str) -> str:
    return " ".join(text.split())


# ---- folders of one kind ---------------------------------------------------------------------------------------

def test_anticipation_shards_over_two_folders(built: dict) -> None:
    from leap_cli.shards.dataset import ShardDataset

    ds = ShardDataset([built["atrain"], built["aval"]], train=True, num_frames=4, img_size=32, shuffle_buffer=4,
                      batch_size=1)
    assert ds.manifest["task"] == "anticipation"
    got = sorted(s["narration_id"] for s in ds)
    assert got == sorted(_keys(built["atrain"]) + _keys(built["aval"]))
    assert ds.context == 1


def test_recognition_and_anticipation_folders_are_refused_in_one_line(built: dict) -> None:
    from leap_cli.shards.format import load_folders

    with pytest.raises(LeapError, match="these shards are for anticipation, those in .* for recognition") as e:
        load_folders([built["train"], built["aval"]])
    assert "--task" in e.value.one_line() and "\n" not in e.value.one_line()
    assert Path(e.value.path) == built["aval"]


def test_a_folder_built_in_shard_parts_is_merged(built: dict) -> None:
    from leap_cli.shards.dataset import ShardDataset

    assert not (built["parts"] / "manifest.json").exists()
    ds = ShardDataset([built["train"], built["parts"]], train=True, num_frames=4, img_size=32, shuffle_buffer=4,
                      batch_size=1)
    got = sorted(s["narration_id"] for s in ds)
    assert got == sorted(_keys(built["train"]) + _keys(built["val"]))
    assert ds.manifest["counts"]["samples"] == 12


# ---- ranks and workers ----------------------------------------------------------------------------------------

def _epoch(built: dict, *, rank: int = 0, world: int = 1, workers: int = 0) -> list[list[str]]:
    from leap_cli.train.config import load_config
    from leap_cli.train.data import ShardSource
    from leap_cli.train.distributed import DistInfo

    cfg = load_config(None, ["model.img_size=32", "model.num_frames=4", "data.batch_size=2",
                             f"data.num_workers={workers}"])
    src = ShardSource([built["train"], built["val"]], None, cfg, DistInfo(rank=rank, world_size=world))
    return [list(b["narration_id"]) for b in src.train_batches(0)]


def test_workers_and_ranks_see_every_sample_once(built: dict) -> None:
    every = sorted(_keys(built["train"]) + _keys(built["val"]))
    alone = _epoch(built)
    assert sorted(k for b in alone for k in b) == every
    assert _epoch(built, workers=2) == alone  # the batches do not depend on data.num_workers
    ranks = [_epoch(built, rank=r, world=2) for r in (0, 1)]
    seen = [k for batches in ranks for b in batches for k in b]
    assert sorted(seen) == every  # 12 samples over 2 ranks x 3 batches of 2: each once
    assert len(ranks[0]) == len(ranks[1])


# ---- bad input --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("second", ["missing", "programs", "file"])
def test_bad_second_folder_is_one_line(built: dict, second: str) -> None:
    from leap_cli.shards.format import load_folders

    bad = {"missing": built["work"] / "nope", "programs": built["work"] / "programs",
           "file": built["work"] / "programs" / "train.jsonl"}[second]
    with pytest.raises(LeapError) as e:
        load_folders([built["train"], bad])
    line = e.value.one_line()
    assert "\n" not in line and str(bad) in line


def test_same_folder_by_two_spellings_is_refused(built: dict, tmp_path: Path, monkeypatch) -> None:
    from leap_cli.shards.format import load_folders

    link = tmp_path / "link"
    link.symlink_to(built["train"])
    monkeypatch.chdir(built["train"].parent)
    for other in (link, Path("train"), built["train"]):
        with pytest.raises(LeapError, match="is in two of the training folders"):
            load_folders([built["train"], other])


def test_config_list_forms(tmp_path: Path) -> None:
    from leap_cli.train.config import load_config

    f = tmp_path / "c.yaml"
    f.write_text("data:\n  train:\n    - shards/train\n    - shards/val\n  val: ''\n")
    assert load_config(f, []).data.train == ("shards/train", "shards/val")

    assert load_config(None, ["data.train=[a,b]"]).data.train == ("a", "b")
    assert load_config(None, ["data.train=['a', \"b c\"]"]).data.train == ("a", "b c")
    assert load_config(None, ["data.train=[only]"]).data.train == "only"  # a list of one: the folder
    for bad in ("[a, [b]]", "[a, null]", "[a, 3]"):
        with pytest.raises(LeapError, match="a folder, or a list of folders"):
            load_config(None, [f"data.train={bad}"])


def test_list_of_one_trains_as_a_folder(built: dict, tmp_path: Path) -> None:
    args = ["train", "--config", str(_cfg(tmp_path)), "--workdir", str(tmp_path / "w"), "--name", "one", "--set",
            f"data.train=[{built['train']}]", "--set", 'data.val=""', "--set", "train.epochs=1"]
    r = _invoke(args)
    assert r.exit_code == 0, r.output
    prov = json.loads((tmp_path / "w" / "runs" / "one" / "provenance.json").read_text())
    assert prov["train"]["shards"] == str(built["train"].resolve()) and prov["train"]["split"] == "train"


def test_unclosed_list_is_said_as_such(built: dict, tmp_path: Path) -> None:
    """Was wrong: --set 'data.train=[a, b' (unclosed) was taken as one folder named '[a, b' and the error's fix was leap
    build-shards --workdir '[a, ...'"""
    r = _invoke(["train", "--config", str(_cfg(tmp_path)), "--workdir", str(tmp_path / "w"), "--name", "bad",
                 "--set", f"data.train=[{built['train']}, {built['val']}", "--set", 'data.val=""'])
    assert r.exit_code != 0
    said = _flat(str(r.exception) + r.output)
    assert "Traceback" not in said
    assert "--workdir '[" not in said and "list" in said  # not a folder to build: a list not closed


# ---- locks ------------------------------------------------------------------------------------------------------

def test_build_shards_cannot_rewrite_any_training_folder_while_the_run_reads(built: dict, tmp_path: Path,
                                                                            monkeypatch) -> None:
    import leap_cli.train.loop as loop
    from leap_cli.io import ShardReaders
    from leap_cli.train.config import load_config

    refused = []

    def source(cfg, workdir, info):  # (called with the readers' locks held)
        for folder in (built["train"], built["val"]):
            try:
                ShardReaders(folder).write().release()
                refused.append(False)
            except LeapError as e:
                refused.append("reading these shards" in e.message)
        raise LeapError("stop here")

    monkeypatch.setattr(loop, "default_source", source)
    cfg = load_config(None, [f"data.train=[{built['train']}, {built['val']}]", 'data.val=""'])
    with pytest.raises(LeapError, match="stop here"):
        loop.main(cfg, workdir=tmp_path / "w", name="locked")
    assert refused == [True, True]
    ShardReaders(built["val"]).write().release()  # let go after the run


# ---- a run on train + val: resume, evaluate, submit -------------------------------------------------------------

@pytest.fixture(scope="module")
def run(built: dict, tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("run")
    cfg = _cfg(base)
    work = base / "w"
    args = ["train", "--config", str(cfg), "--workdir", str(work), "--name", "tv", "--set", 'data.val=""']
    r = _invoke(args + ["--set", f"data.train=[{built['train']}, {built['val']}]", "--stop-after", "1"])
    assert r.exit_code == 0, r.output
    return {"args": args, "dir": work / "runs" / "tv", "work": work, "base": base}


def _copy_run(run: dict, tmp_path: Path) -> tuple[list[str], Path]:
    work = tmp_path / "w"
    shutil.copytree(run["work"], work)
    args = [a if a != str(run["work"]) else str(work) for a in run["args"]]
    return args, work / "runs" / "tv"


def test_resume_with_the_list_reordered_says_no_other_programs(built: dict, run: dict, tmp_path: Path,
                                                                caplog) -> None:
    """Was wrong: a resume with data.train's folders reordered warned the run's programs and labels had changed (order-
    dependent hashes in folders_provenance)"""
    args, run_dir = _copy_run(run, tmp_path)
    with caplog.at_level(logging.WARNING):
        r = _invoke(args + ["--set", f"data.train=[{built['val']}, {built['train']}]", "--resume", "--stop-after", "2"])
    assert r.exit_code == 0, r.output
    said = _flat(caplog.text + r.output)
    assert "not those the run was trained on" not in said and "other labels" not in said
    assert "earlier" not in json.loads((run_dir / "provenance.json").read_text())


def test_resume_mid_epoch_with_the_list_reordered_keeps_the_epoch(built: dict, run: dict, tmp_path: Path) -> None:
    """Was wrong: a resume mid-epoch with data.train's folders reordered was accepted and the epoch's remaining batches
    came from another order: samples trained twice and others skipped (loop._same_training_data checks only the
    count)"""
    from leap_cli.train.config import load_config
    from leap_cli.train.data import ShardSource
    from leap_cli.train.distributed import DistInfo

    args, _ = _copy_run(run, tmp_path)
    r = _invoke(args + ["--set", f"data.train=[{built['val']}, {built['train']}]", "--resume", "--stop-after", "2"])
    if r.exit_code != 0:  # refused: fine, in one line naming data.train
        assert "data.train" in str(r.exception)
        return
    cfg = load_config(None, ["model.img_size=32", "model.num_frames=4", "data.batch_size=4"])
    before = ShardSource([built["train"], built["val"]], None, cfg, DistInfo()).train_batches(0)
    after = ShardSource([built["val"], built["train"]], None, cfg, DistInfo()).train_batches(0, skip=1)
    epoch = list(next(before)["narration_id"]) + [k for b in after for k in b["narration_id"]]
    assert sorted(epoch) == sorted(_keys(built["train"]) + _keys(built["val"]))  # each sample once


def test_folders_of_other_inputs_and_tar_sizes_are_taken(built: dict, tmp_path: Path) -> None:
    """docs/train.md: "their splits, inputs and tar sizes may differ"."""
    from leap_cli.shards.format import load_folders, load_manifest

    other = shutil.copytree(built["val"], tmp_path / "val")
    m, _ = load_manifest(other)
    m["settings"]["max_shard_size"] = 12345
    m["settings"]["max_count"] = 3
    m.setdefault("sources", {})["annotations"] = "f" * 64
    (other / "manifest.json").write_text(json.dumps(m))
    merged, first = load_folders([built["train"], other])
    assert first == built["train"] and merged["counts"]["samples"] == 12


def test_resume_with_a_folder_moved_is_quiet_and_one_added_or_removed_refused(built: dict, run: dict,
                                                                              tmp_path: Path, caplog) -> None:
    args, run_dir = _copy_run(run, tmp_path)
    moved = shutil.copytree(built["val"], tmp_path / "moved")
    for lock in moved.glob("*.lock"):
        lock.unlink()
    with caplog.at_level(logging.WARNING):
        r = _invoke(args + ["--set", f"data.train=[{built['train']}, {moved}]", "--resume", "--stop-after", "2"])
    assert r.exit_code == 0, r.output
    assert "not those the run was trained on" not in caplog.text and "other labels" not in caplog.text
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["train"]["shards"] == [str(built["train"].resolve()), str(moved.resolve())]
    r = _invoke(args + ["--set", f"data.train=[{built['train']}]", "--resume"])
    assert r.exit_code != 0
    assert f"data.train {built['train']} give 2 batches per epoch, the run's gave 3" in _flat(str(r.exception))
    r = _invoke(args + ["--set", f"data.train=[{built['train']}, {moved}, {built['parts']}]", "--resume"])
    assert r.exit_code != 0 and "is in two of the training folders" in _flat(str(r.exception))


def test_resume_with_one_folder_rebuilt_from_other_programs_warns(built: dict, run: dict, tmp_path: Path,
                                                                   caplog) -> None:
    from leap_cli.shards.format import load_manifest

    args, run_dir = _copy_run(run, tmp_path)
    other = shutil.copytree(built["train"], tmp_path / "train2")
    for lock in other.glob("*.lock"):
        lock.unlink()
    m, _ = load_manifest(other)
    m["sources"]["programs"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(m))
    with caplog.at_level(logging.WARNING):
        r = _invoke(args + ["--set", f"data.train=[{other}, {built['val']}]", "--resume", "--stop-after", "2"])
    assert r.exit_code == 0, r.output
    assert "the shards' programs are not those the run was trained on so far" in _flat(caplog.text)
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert len(prov["earlier"]) == 1 and prov["earlier"][0]["train"]["split"] == "train+val"


def test_evaluate_warning_counts_and_stays_quiet(built: dict, run: dict, tmp_path: Path, caplog) -> None:
    base = ["evaluate", "--run", str(run["dir"]), "--data", str(built["root"]), "--checkpoint", "last"]
    with caplog.at_level(logging.WARNING):
        r = _invoke(base + ["--split", "val", "--shards", str(built["parts"]), "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    said = _flat(caplog.text)
    assert f"4 of the 4 val segments in {built['parts']} are among those the run trained on" in said
    assert f"({built['train'].resolve()} + {built['val'].resolve()};" in said
    caplog.clear()
    # the training split scored: all 8 counted (the run trained on them as well)
    with caplog.at_level(logging.WARNING):
        r = _invoke(base + ["--split", "train", "--shards", str(built["train"]), "--out", str(tmp_path / "b")])
    assert "8 of the 8 train segments" in _flat(caplog.text), r.output


def test_evaluate_of_a_train_only_run_is_quiet(built: dict, tmp_path: Path, caplog) -> None:
    work = tmp_path / "w"
    r = _invoke(["train", "--config", str(_cfg(tmp_path)), "--workdir", str(work), "--name", "t", "--set",
                 f"data.train={built['train']}", "--set", 'data.val=""', "--set", "train.epochs=1"])
    assert r.exit_code == 0, r.output
    with caplog.at_level(logging.WARNING):
        r = _invoke(["evaluate", "--run", str(work / "runs" / "t"), "--data", str(built["root"]), "--checkpoint",
                     "last", "--split", "val", "--shards", str(built["val"])])
    assert r.exit_code == 0, r.output
    assert "among those the run trained on" not in caplog.text


def test_evaluate_after_the_training_folders_are_gone(built: dict, run: dict, tmp_path: Path, caplog) -> None:
    from leap_cli.shards.format import trained_segments

    prov = json.loads((run["dir"] / "provenance.json").read_text())
    gone = {**prov, "train": {**prov["train"], "shards": [str(tmp_path / "x"), str(tmp_path / "y")]}}
    assert trained_segments(gone) == (set(), [])
    keys, read = trained_segments({"train": {"shards": [str(tmp_path / "x"), str(built["val"])]}})
    assert keys == set(_keys(built["val"])) and read == [str(built["val"])]


def test_submit_hint_and_show(built: dict, run: dict) -> None:
    from leap_cli.commands.evaluate import _submit_command

    prov = json.loads((run["dir"] / "provenance.json").read_text())
    cmd = _submit_command(Path("s.pt"), "recognition", run["work"], None, None, prov)
    assert cmd.endswith("--sls-td 4")
    r = _invoke(["show", "P01_01_0", "--workdir", str(built["work"]), "--data", str(built["root"]),
                 "--run", str(run["dir"]), "--shards", str(built["train"])])
    assert r.exit_code == 0, (r.output, r.exception)
    assert "trained on programs: offline offline-v5: 8 valid of 8" in _flat(r.output)


def test_load_model_of_a_trainval_run(run: dict) -> None:
    import torch

    ckpt = torch.load(run["dir"] / "checkpoints" / "last.pt", weights_only=True)
    from leap_cli.train.config import config_from_dict

    cfg = config_from_dict(ckpt["config"]) if isinstance(ckpt.get("config"), dict) else None
    if cfg is not None:
        assert isinstance(cfg.data.train, tuple) and len(cfg.data.train) == 2
    assert ckpt["provenance"]["train"]["split"] == "train+val"


def test_the_runs_config_yaml_keeps_the_list(run: dict) -> None:
    from leap_cli.train.config import load_config

    cfg = load_config(run["dir"] / "config.yaml", [])
    assert isinstance(cfg.data.train, tuple) and len(cfg.data.train) == 2 and cfg.data.val == ""


def test_evaluate_without_best_takes_last(built: dict, run: dict, tmp_path: Path) -> None:
    """docs/train.md: "no validation: evaluate and submit take last.pt"."""
    r = _invoke(["evaluate", "--run", str(run["dir"]), "--data", str(built["root"]), "--split", "val", "--shards",
                 str(built["val"]), "--out", str(tmp_path / "e")])
    assert r.exit_code == 0, (r.output, r.exception)
    assert "checkpoint last" in _flat(r.output)


def test_a_corrupt_shard_of_the_second_folder_is_named(built: dict, tmp_path: Path) -> None:
    from leap_cli.shards.dataset import ShardDataset

    other = shutil.copytree(built["val"], tmp_path / "val")
    tar = next(other.glob("*.tar"))
    tar.write_bytes(tar.read_bytes()[:2000])
    ds = ShardDataset([built["train"], other], train=False, num_frames=4, img_size=32, batch_size=1)
    with pytest.raises(LeapError, match="corrupt shard") as e:
        list(ds)
    assert Path(e.value.path) == tar
