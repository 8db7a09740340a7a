"""A researcher's day two after a first full pipeline run on the synthetic kitchen: annotation labels corrected,
CSV rows added and removed, a paused run resumed on rebuilt shards, train+val asked as one training set, a run
fine-tuned from another run's checkpoint. Checks that each stage redoes only what changed, says so in one line,
and never silently trains on the shards made before the change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.kitchens import kitchen_copy
from tests.procs import leap_here

REPO = Path(__file__).resolve().parents[1]
FRAMES = ("--frames", 4, "--short-side", 48)
FIX = ("P01_01_0,", ",chop potato,chop,7,", ",peel potato,peel,19,")  # the corrected row: cut (7) -> peel (19)


def leap_process(*args, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    """``leap ARGS`` in a new interpreter (``built``, made once for the module, has no test's capsys)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
           "COLUMNS": "300"}
    env.pop("FORCE_COLOR", None)
    return subprocess.run([sys.executable, "-m", "leap_cli", *map(str, args)], cwd=cwd, env=env, text=True,
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)


@pytest.fixture
def leap(monkeypatch, capsys):
    """``leap ARGS`` in this process: ``(*args, cwd)`` -> CompletedProcess."""
    return leap_here(monkeypatch, capsys)


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    return r


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode != 0, r.stdout[-2000:]
    assert "Traceback" not in r.stderr, r.stderr
    errs = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(errs) == 1, r.stderr
    return errs[0]


def stages(leap, top: Path, split: str, *extra) -> list[subprocess.CompletedProcess]:
    return [ok(leap("extract", "--data", "data", "--split", split, "--workdir", "w", "--cache-frames", 4,
                    "--cache-short-side", 48, cwd=top)),
            ok(leap("generate-programs", "--data", "data", "--split", split, "--workdir", "w", cwd=top)),
            leap("build-shards", "--data", "data", "--split", split, "--workdir", "w", *FRAMES, *extra, cwd=top)]


def train_csv(top: Path) -> Path:
    return top / "data" / "annotations" / "EPIC_100_train.csv"


def correct_label(top: Path) -> None:
    p = train_csv(top)
    lines = p.read_text().splitlines(keepends=True)
    hit = [i for i, x in enumerate(lines) if x.startswith(FIX[0]) and FIX[1] in x]
    assert len(hit) == 1
    lines[hit[0]] = lines[hit[0]].replace(FIX[1], FIX[2])
    p.write_text("".join(lines))


def sample_json(shards: Path, nid: str) -> dict:
    for tar in sorted(shards.glob("*.tar")):
        with tarfile.open(tar) as t:
            try:
                return json.loads(t.extractfile(f"{nid}.json").read())
            except KeyError:
                continue
    raise AssertionError(f"{nid} in no shard of {shards}")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A first full run: a 3-video kitchen, extract / generate-programs / build-shards for train and val, and a
    tiny training run paused after one step (runs/p)."""
    top = tmp_path_factory.mktemp("day1")
    kitchen_copy(tmp_path_factory, top / "data", "--videos", 3, "--segments", 6)
    for split in ("train", "val"):
        stages(leap_process, top, split)
    ok(leap_process("train", "--config", "tiny-synthetic-short", "--workdir", "w", "--name", "p", "--set",
                    "train.epochs=2", "--set", "data.batch_size=2", "--stop-after", 1, cwd=top))
    return top


def copy_of(built: Path, dest: Path) -> Path:
    subprocess.run(["cp", "-a", str(built), str(dest)], check=True)
    return dest


def test_a_corrected_label_reruns_one_record_and_the_old_shards_are_not_used_silently(built, tmp_path, leap):
    """A verb_class corrected in the train CSV: extract and generate-programs redo that one record and say so;
    build-shards refuses the folder built from the old rows in one line naming --force; the rebuilt shards hold the
    new label; the val shards built against the old vocabulary are refused by train and build-shards (one line
    each); the run paused on the old shards is refused on --resume (one line), not resumed on the new labels."""
    top = copy_of(built, tmp_path / "t")
    assert sample_json(top / "w/shards/train", "P01_01_0")["verb_class"] == 7
    correct_label(top)
    ex, gen, shards = stages(leap, top, "train")
    assert "6 selected, 5 done before, 1 written now" in " ".join(ex.stdout.split()), ex.stdout
    assert "P01_01_0" in ex.stdout + ex.stderr and "made again" in ex.stdout + ex.stderr
    assert "made again" in gen.stdout + gen.stderr
    err = one_line_error(shards)
    assert "w/shards/train" in err and "--force" in err and "annotation rows" in err, err
    assert sample_json(top / "w/shards/train", "P01_01_0")["verb_class"] == 7  # (the refused run kept them)
    ok(leap("build-shards", "--data", "data", "--split", "train", "--workdir", "w", *FRAMES, "--force", cwd=top))
    assert sample_json(top / "w/shards/train", "P01_01_0")["verb_class"] == 19
    # the corrected train programs changed the target vocabulary: the val shards of day one are stale, and say so
    err = one_line_error(leap("train", "--config", "tiny-synthetic-short", "--workdir", "w", "--name", "new",
                              "--set", "data.batch_size=2", "--set", "train.epochs=1", cwd=top))
    assert "w/shards/val" in err and "vocabulary" in err and "rebuild the val shards" in err, err
    assert not (top / "w/runs/new").exists()
    err = one_line_error(leap("build-shards", "--data", "data", "--split", "val", "--workdir", "w", *FRAMES, cwd=top))
    assert "target vocabulary" in err and "--force" in err, err
    ok(leap("build-shards", "--data", "data", "--split", "val", "--workdir", "w", *FRAMES, "--force", cwd=top))
    ckpt = top / "w/runs/p/checkpoints/last.pt"
    before = ckpt.stat().st_mtime_ns
    r = leap("train", "--config", "w/runs/p/config.yaml", "--workdir", "w", "--name", "p", "--resume", cwd=top)
    err = one_line_error(r)
    assert "last.pt" in err and "differs from the checkpoint" in err, err
    assert ckpt.stat().st_mtime_ns == before


def test_rows_added_then_removed_redo_only_the_new_work_and_never_mix_shards(built, tmp_path, leap):
    """The CSV grows by two rows after the first run: extract and generate-programs write only those two (no
    record made again), build-shards refuses to mix with the shards of the smaller CSV and --force builds all 8;
    rows removed again: the rebuilt shards no longer hold them, and the program file's leftover records are
    reported, not trained on."""
    top = copy_of(built, tmp_path / "t")
    p = train_csv(top)
    rows = p.read_text().splitlines(keepends=True)
    extra = [x.replace("P01_01_0,", "P01_01_6,", 1) for x in rows[1:2]] + \
            [x.replace("P01_01_1,", "P01_01_7,", 1) for x in rows[2:3]]
    p.write_text("".join(rows + extra))
    ex, gen, shards = stages(leap, top, "train")
    assert "8 selected, 6 done before, 2 written now" in " ".join(ex.stdout.split()), ex.stdout
    assert "made again" not in ex.stdout + ex.stderr
    records = [json.loads(x) for x in (top / "w/programs/train.jsonl").read_text().splitlines()]
    assert sorted({r["narration_id"] for r in records}) == [f"P01_01_{i}" for i in range(8)]
    assert len(records) == 8  # the six of day one were not made again (nor appended twice)
    err = one_line_error(shards)
    assert "--force" in err, err
    ok(leap("build-shards", "--data", "data", "--split", "train", "--workdir", "w", *FRAMES, "--force", cwd=top))
    m = json.loads((top / "w/shards/train/manifest.json").read_text())
    assert m["counts"]["samples"] == 8

    p.write_text("".join(rows[:1] + rows[3:]))  # P01_01_0 and P01_01_1 removed from the annotations
    r = leap("build-shards", "--data", "data", "--split", "train", "--workdir", "w", *FRAMES, cwd=top)
    one_line_error(r)
    r = ok(leap("build-shards", "--data", "data", "--split", "train", "--workdir", "w", *FRAMES, "--force",
                cwd=top))
    m = json.loads((top / "w/shards/train/manifest.json").read_text())
    assert m["counts"]["samples"] == 4
    assert m["programs"]["unknown_ids"] == 4, m["programs"]
    with pytest.raises(AssertionError, match="in no shard"):
        sample_json(top / "w/shards/train", "P01_01_0")


def test_train_plus_val_as_a_list_of_folders_reads_both(built, tmp_path, leap):
    """The EPIC challenge recipe (train on train + val): data.train takes a list of folders (session 54; it took
    one folder, and a list was refused in one line naming the key), read as one set: a message about the training
    samples names both folders, and a refused run leaves no run folder."""
    top = copy_of(built, tmp_path / "t")
    r = leap("train", "--config", "tiny-synthetic-short", "--workdir", "w", "--name", "tv",
             "--set", "data.train=[w/shards/train,w/shards/val]", cwd=top)
    err = one_line_error(r)
    assert "w/shards/train + w/shards/val: 9 training samples per process, fewer than data.batch_size" in err, err
    assert not (top / "w/runs/tv").exists()


def test_resume_with_a_longer_schedule_or_other_batch_is_refused_with_the_runs_own_config(built, tmp_path, leap):
    """--resume after raising train.epochs (2 -> 4) or changing data.batch_size: refused in one line naming the key
    and its two values, the command that resumes with the run's config, and (for the longer run only) the
    fine-tune route through model.pretrained; the checkpoint is left as it was."""
    top = copy_of(built, tmp_path / "t")
    ckpt = top / "w/runs/p/checkpoints/last.pt"
    before = ckpt.stat().st_mtime_ns
    base = ("train", "--config", "w/runs/p/config.yaml", "--workdir", "w", "--name", "p", "--resume")
    err = one_line_error(leap(*base, "--set", "train.epochs=4", cwd=top))
    assert "train.epochs: 2 -> 4" in err and "--config w/runs/p/config.yaml" in err, err
    assert "model.pretrained=w/runs/p/checkpoints/last.pt" in err, err
    err = one_line_error(leap(*base, "--set", "data.batch_size=3", cwd=top))
    assert "data.batch_size: 2 -> 3" in err and "model.pretrained" not in err, err
    assert ckpt.stat().st_mtime_ns == before


def test_fine_tuning_from_a_leap_run_says_what_was_loaded_and_dropped(built, tmp_path, leap):
    """model.pretrained = another leap run's last.pt: a new run starts from step 0 and its start line counts the
    tensors loaded and those dropped (the heads, which start anew), so a user sees the load happened."""
    top = copy_of(built, tmp_path / "t")
    r = ok(leap("train", "--config", "tiny-synthetic-short", "--workdir", "w", "--name", "ft", "--set",
                "train.epochs=1", "--set", "data.batch_size=2", "--set",
                "model.pretrained=w/runs/p/checkpoints/last.pt", cwd=top))
    out = r.stdout + r.stderr
    line = [x for x in out.splitlines() if x.startswith("pretrained weights:")]
    assert len(line) == 1 and "w/runs/p/checkpoints/last.pt" in line[0], out
    import re
    loaded = re.search(r"(\d+) loaded, (\d+) dropped", line[0])
    assert loaded and int(loaded.group(1)) > 0 and int(loaded.group(2)) > 0, line[0]
    assert "0 missing" in line[0], line[0]
    assert (top / "w/runs/ft/checkpoints/last.pt").is_file()


def test_resume_on_shards_rebuilt_from_corrected_labels_is_not_silent(built, tmp_path, leap):
    """Was wrong: --resume on training shards rebuilt from a corrected CSV (same batch count, no program file) goes on
    silently, mixing old and new labels.
    A run paused on shards built without programs (the --no-program-loss baseline); a label is corrected and the
    shards are rebuilt (--force): resuming the run would train its remaining steps on other labels than its first.
    Like a resume on shards of other programs (warned) or another batch count (refused), it must be said; leap
    resumes it without a word (runs/NAME/provenance.json and the checkpoint keep no hash of the annotations)."""
    top = tmp_path / "t"
    top.mkdir()
    subprocess.run(["cp", "-a", str(built / "data"), str(top / "data")], check=True)
    for split in ("train", "val"):
        ok(leap("build-shards", "--data", "data", "--split", split, "--workdir", "w", *FRAMES, cwd=top))
    ok(leap("train", "--config", "tiny-synthetic-short", "--workdir", "w", "--name", "b", "--set", "train.epochs=2",
            "--set", "data.batch_size=2", "--no-program-loss", "--stop-after", 1, cwd=top))
    correct_label(top)
    ok(leap("build-shards", "--data", "data", "--split", "train", "--workdir", "w", *FRAMES, "--force", cwd=top))
    assert sample_json(top / "w/shards/train", "P01_01_0")["verb_class"] == 19
    r = leap("train", "--config", "w/runs/b/config.yaml", "--workdir", "w", "--name", "b", "--resume", cwd=top)
    assert "Traceback" not in r.stderr, r.stderr
    said = [x for x in r.stderr.splitlines()
            if ("WARNING" in x or x.startswith("error:")) and ("shards/train" in x or "training shards" in x)]
    assert r.returncode != 0 or said, r.stderr[-3000:]
    # said as what changed, and the run's provenance keeps the labels of its first part
    assert r.returncode == 0 and any("annotation rows changed" in x for x in said), said
    prov = json.loads((top / "w/runs/b/provenance.json").read_text())
    first, now = prov["earlier"][0]["train"]["labels"], prov["train"]["labels"]
    assert first["annotations"] != now["annotations"] and first["verb_classes"] == now["verb_classes"]
    # a second resume on the same shards says nothing more
    r = leap("train", "--config", "w/runs/b/config.yaml", "--workdir", "w", "--name", "b", "--resume", cwd=top)
    assert r.returncode == 0 and "annotation rows changed" not in r.stderr, r.stderr[-3000:]
