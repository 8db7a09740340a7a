"""Every command leap suggests must work when pasted (session 60, helper advice60).

Each test makes a situation in which leap's error, note or end line names a command or an option to use, parses
that advice out of the output (shell-quote aware: ``shlex.split``), runs it as the user would (a ``cat ... > ...``
through the shell, a ``leap ...`` as this leap), and checks that it does what the advice says without losing
finished work (no --force where finished work would be thrown away, no refusal for options the first run had).
Paths hold a space and a quote where the advice prints them, so the quoting is exercised too.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.kitchens import kitchen_copy

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
       "NO_COLOR": "1", "COLUMNS": "400", "TERM": "dumb"}
TRAIN = ("--config", "tiny-synthetic-short", "--set", "data.batch_size=4", "--set", "train.epochs=2")

# SIGKILL of the process group at the Nth os.replace onto a file whose name holds S60A_MATCH (the tar renames of
# build-shards), just before that rename: the tars before it and their progress records are written
HOOK = """
import os
_match = os.environ.get("S60A_MATCH")
if _match:
    import signal
    _at, _count = int(os.environ["S60A_AT"]), os.environ["S60A_COUNT"]
    _replace = os.replace
    def _dying_replace(src, dst, *a, **k):
        if _match in os.path.basename(os.fspath(dst)):
            fd = os.open(_count, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            os.write(fd, b"x")
            n = os.fstat(fd).st_size
            os.close(fd)
            if n == _at:
                os.killpg(os.getpgid(0), signal.SIGKILL)
        return _replace(src, dst, *a, **k)
    os.replace = _dying_replace
"""


def leap(*args) -> list[str]:
    return [sys.executable, "-m", "leap_cli", *map(str, args)]


def run(cmd, cwd=ROOT, env=None, timeout=120) -> tuple[int, str]:
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env or ENV, cwd=cwd,
                       timeout=timeout)
    return r.returncode, r.stdout.decode(errors="replace")


def flat(text: str) -> str:
    return " ".join(text.split())


def pasted(words: list[str]) -> list[str]:
    """A suggested ``leap ...`` command as this leap runs it (``leap`` is ``python -m leap_cli`` here)."""
    assert words and words[0] == "leap", words
    return leap(*words[1:])


def advice(out: str, pattern: str) -> str:
    m = re.search(pattern, flat(out))
    assert m, f"no advice /{pattern}/ in:\n{out[-3000:]}"
    return m.group(1)


def shell(command: str, cwd) -> tuple[int, str]:
    r = subprocess.run(["bash", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd, env=ENV,
                       timeout=60)
    return r.returncode, r.stdout.decode(errors="replace")


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """A work directory on the synthetic kitchen (2 videos): descriptors and offline programs of train and val,
    train shards (--max-count 2) and val shards, and a trained run ``r`` (2 epochs)."""
    wd = tmp_path_factory.mktemp("ref")
    kitchen_copy(tmp_path_factory, wd / "kitchen", "--videos", 2, "--segments", 10)
    steps = []
    for split in ("train", "val"):
        steps += [("extract", "--split", split, "--workers", 2),
                  ("generate-programs", "--split", split, "--backend", "offline")]
    steps += [("build-shards", "--split", "train", "--max-count", 2), ("build-shards", "--split", "val"),
              ("train", *TRAIN, "--name", "r")]
    for cmd, *rest in steps:
        rc, out = run(leap(cmd, "--workdir", wd, *rest))
        assert rc == 0, out
    return wd


def workdir_from(ref: Path, dst: Path, *folders: str) -> Path:
    dst.mkdir(parents=True)
    (dst / "kitchen").symlink_to(ref / "kitchen")
    for f in folders:
        shutil.copytree(ref / f, dst / f, symlinks=True)
    return dst


# --- build-shards / check-shards / train: a build killed before its manifest -------------------------------------

def _killed_build(ref: Path, wd: Path, tmp: Path) -> tuple[Path, bytes]:
    """``build-shards --max-count 2`` SIGKILLed just before its second tar's rename (the first tar and its
    progress record are written, no manifest): the folder and the first tar's bytes."""
    hook = tmp / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    env = {**ENV, "PYTHONPATH": f"{hook}{os.pathsep}{ROOT}", "S60A_MATCH": ".tar", "S60A_AT": "2",
           "S60A_COUNT": str(tmp / "count")}
    r = subprocess.run(leap("build-shards", "--workdir", wd, "--split", "train", "--max-count", 2),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT, timeout=120,
                       start_new_session=True)
    assert r.returncode == -signal.SIGKILL, r.stdout.decode()[-2000:]
    folder = wd / "shards" / "train"
    assert not (folder / "manifest.json").exists()
    first = folder / "leap-train-000000.tar"
    assert first.is_file() and (folder / ".progress.jsonl").read_text().strip()
    return folder, first.read_bytes()


def test_build_shards_advice_after_a_killed_max_count_build_resumes_it(ref, tmp_path):
    """Was wrong: shards/format.py build_command() names no option of the killed build (--max-count 2): the pasted
    command is refused for --max-count and asks for --force, which deletes the finished tars."""
    wd = workdir_from(ref, tmp_path / "w d'1", "descriptors", "programs", "frame-cache")
    folder, first = _killed_build(ref, wd, tmp_path)
    rc, checked = run(leap("check-shards", "--workdir", wd, "--split", "train"))
    assert rc != 0
    said = advice(checked, r"build them first: (leap build-shards .*?)\)?$")
    rc, trained = run(leap("train", "--workdir", wd, *TRAIN, "--name", "x"))
    assert rc != 0 and said in flat(trained)  # train gives the same advice
    words = shlex.split(said)
    assert "--force" not in words
    rc, out = run(pasted(words))
    assert rc == 0, out  # refused now: "--max-count differs ... pass --force to delete them and rebuild"
    assert (folder / "leap-train-000000.tar").read_bytes() == first
    assert json.loads((folder / "manifest.json").read_text())["shards"][0]["count"] == 2


def test_build_shards_killed_then_rerun_with_its_own_options_keeps_the_first_tar(ref, tmp_path):
    """What that advice should lead to: the killed command itself, run again, resumes without --force and keeps
    the finished tar (byte for byte), ending with the uninterrupted build's tars."""
    wd = workdir_from(ref, tmp_path / "w", "descriptors", "programs", "frame-cache")
    folder, first = _killed_build(ref, wd, tmp_path)
    before = (folder / "leap-train-000000.tar").stat().st_mtime_ns
    rc, out = run(leap("build-shards", "--workdir", wd, "--split", "train", "--max-count", 2))
    assert rc == 0, out
    assert (folder / "leap-train-000000.tar").stat().st_mtime_ns == before
    ref_tars = {q.name: q.read_bytes() for q in (ref / "shards" / "train").glob("*.tar")}
    assert {q.name: q.read_bytes() for q in folder.glob("*.tar")} == ref_tars


def test_missing_part_advice_builds_the_missing_part(ref, tmp_path):
    """Was wrong: shards/format.py merge_parts(): 'run leap build-shards --shard i/N for the missing parts' has no
    --workdir and no --split: pasted (i filled in) it is refused, 'Missing option --split'."""
    wd = workdir_from(ref, tmp_path / "w", "descriptors", "programs", "frame-cache")
    rc, out = run(leap("build-shards", "--workdir", wd, "--split", "train", "--shard", "0/2"))
    assert rc == 0, out
    rc, out = run(leap("check-shards", "--workdir", wd, "--split", "train"))
    assert rc != 0
    missing = advice(out, r"parts \[(\d+)\] of 2 are missing")
    said = advice(out, r"\((?:run )?(leap build-shards [^)]*?) for the missing parts\)")
    words = [w.replace("i/", f"{missing}/") for w in shlex.split(said)]  # the placeholder i: the part it names
    cwd = tmp_path / "elsewhere"  # (the user's shell is not in the repository)
    cwd.mkdir()
    rc, out = run(pasted(words), cwd=cwd)
    assert rc == 0, out
    rc, out = run(leap("check-shards", "--workdir", wd, "--split", "train"))
    assert rc == 0, out


# --- evaluate: shards of the other task -------------------------------------------------------------------------

def test_evaluate_other_task_build_advice_builds_those_shards(ref, tmp_path):
    """Was wrong: evaluate/inference.py: 'leap build-shards --task anticipation' lacks --split (and --workdir):
    pasted it is refused, 'Missing option --split'."""
    wd = workdir_from(ref, tmp_path / "w d'2", "descriptors", "programs", "frame-cache", "shards", "runs")
    rc, out = run(leap("evaluate", "--workdir", wd, "--run", "r", "--split", "val", "--task", "anticipation",
                       "--shards", wd / "shards" / "val", "--out", tmp_path / "ev"))
    assert rc != 0
    said = advice(out, r"build anticipation shards \((leap build-shards [^)]*)\)")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    rc, out = run(pasted(shlex.split(said)), cwd=cwd)
    assert rc == 0, out
    manifest = json.loads((wd / "shards" / "val-anticipation" / "manifest.json").read_text())
    assert manifest["task"] == "anticipation"


# --- extract / generate-programs: --shard parts and their merge -------------------------------------------------

def test_extract_parts_merge_advice_pasted_resumes_from_the_merge(ref, tmp_path):
    """extract without --shard beside the parts: 'merge them and run again to resume from the merge: cat ... > ...'.
    The cat, pasted into a shell, makes the file; the run again writes nothing; generate-programs reads it."""
    wd = workdir_from(ref, tmp_path / "w d'$x", "frame-cache")
    for i in (0, 1):
        rc, out = run(leap("extract", "--workdir", wd, "--split", "train", "--shard", f"{i}/2"))
        assert rc == 0, out
    rc, out = run(leap("extract", "--workdir", wd, "--split", "train"))
    assert rc != 0
    cat = advice(out, r"resume from the merge: (cat .*? > .*?); or run the parts")
    rc, shown = run(leap("generate-programs", "--workdir", wd, "--split", "train", "--backend", "offline"))
    assert rc != 0 and advice(shown, r"merge them: (cat .*? > .*?)\)") == cat  # the next stage: the same merge
    rc, res = shell(cat, cwd=tmp_path)
    assert rc == 0, res
    merged = wd / "descriptors" / "train.jsonl"
    held = merged.read_bytes()
    parts = b"".join((wd / "descriptors" / f"train.shard{i}of2.jsonl").read_bytes() for i in (0, 1))
    assert sorted(held.splitlines()) == sorted(parts.splitlines()) and held.count(b"\n") == 10
    rc, out = run(leap("extract", "--workdir", wd, "--split", "train"))
    assert rc == 0, out
    assert "0 written now" in flat(out) and merged.read_bytes() == held
    rc, out = run(leap("generate-programs", "--workdir", wd, "--split", "train", "--backend", "offline"))
    assert rc == 0, out
    assert (wd / "programs" / "train.jsonl").read_bytes().count(b"\n") == 10


def test_programs_parts_merge_advice_from_build_shards_lets_it_build(ref, tmp_path):
    wd = workdir_from(ref, tmp_path / "w d'3", "descriptors", "frame-cache")
    for i in (0, 1):
        rc, out = run(leap("generate-programs", "--workdir", wd, "--split", "train", "--backend", "offline",
                           "--shard", f"{i}/2"))
        assert rc == 0, out
    rc, out = run(leap("build-shards", "--workdir", wd, "--split", "train", "--max-count", 2))
    assert rc != 0
    cat = advice(out, r"merge them: (cat .*? > .*?)\)")
    rc, res = shell(cat, cwd=tmp_path)
    assert rc == 0, res
    rc, out = run(leap("build-shards", "--workdir", wd, "--split", "train", "--max-count", 2))
    assert rc == 0, out
    manifest = json.loads((wd / "shards" / "train" / "manifest.json").read_text())
    assert manifest["counts"]["with_program"] == manifest["counts"]["samples"] == 10


# --- train -------------------------------------------------------------------------------------------------------

def _steps(run_dir: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()
            if x.strip() and "step" in json.loads(x)]


def test_train_on_a_run_with_a_checkpoint_resume_advice_keeps_it(ref, tmp_path):
    wd = workdir_from(ref, tmp_path / "w", "shards", "runs")
    last = wd / "runs" / "r" / "checkpoints" / "last.pt"
    held = last.read_bytes()
    cmd = ["train", "--workdir", wd, *TRAIN, "--name", "r"]
    rc, out = run(leap(*cmd))
    assert rc != 0
    said = advice(out, r"\(continue it with (--resume), start it over with --force")
    rc, out = run(leap(*cmd, said))
    assert rc == 0, out
    assert "the run is finished" in flat(out) and last.read_bytes() == held


def test_train_config_differs_resume_advice_resumes_the_run(ref, tmp_path):
    """A resume with a longer schedule: 'resume with --config RUN/config.yaml --workdir W --name N --resume' (with
    `leap train` before it) resumes the run as it was; the other way, '--set model.pretrained=.../last.pt' on a run
    of another --name, trains from its weights."""
    wd = workdir_from(ref, tmp_path / "w d'4", "shards", "runs")
    last = wd / "runs" / "r" / "checkpoints" / "last.pt"
    held = last.read_bytes()
    longer = ["train", "--workdir", wd, "--config", "tiny-synthetic-short", "--set", "data.batch_size=4", "--set",
              "train.epochs=3"]
    rc, out = run(leap(*longer, "--name", "r", "--resume"))
    assert rc != 0
    said = advice(out, r"resume with (--config .*? --resume), or")
    rc, res = run(leap("train", *shlex.split(said)), cwd=tmp_path)
    assert rc == 0, res
    assert "the run is finished" in flat(res) and last.read_bytes() == held
    pretrained = advice(out, r"start a run of another --name with --set (.*?) \(the backbone")
    rc, res = run(leap(*longer, "--name", "r3", "--set", *shlex.split(pretrained)))
    assert rc == 0, res
    assert "pretrained weights" in flat(res) and max(_steps(wd / "runs" / "r3")) == 6


def _train_until_checkpoint(cmd, run_dir: Path) -> str:
    """Start ``cmd``, SIGTERM it once checkpoints/last.pt is there (a step boundary stop); its output."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT,
                         start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (run_dir / "checkpoints" / "last.pt").exists():
            assert p.poll() is None, p.stdout.read().decode()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(p.pid, signal.SIGTERM)
        out = p.communicate(timeout=60)[0].decode(errors="replace")
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
    assert p.returncode == 128 + signal.SIGTERM, out[-2000:]
    return out


def _first_words(cmd, marks: tuple[str, ...], cwd=ROOT) -> str:
    """Run ``cmd`` until a line holds one of ``marks`` (then stop its process group) or it ends; its output so far."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV, cwd=cwd,
                         start_new_session=True)
    seen = []
    try:
        for line in iter(p.stdout.readline, b""):
            seen.append(line.decode(errors="replace"))
            if any(m in seen[-1] for m in marks):
                break
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
    return "".join(seen)


def test_train_stopped_after_force_resume_advice_does_not_start_it_over(ref, tmp_path):
    """Was wrong: commands/train.py prints a bare 'continue with --resume' after a stop: a run
    begun with --force, resumed with the same command and --resume, is started over (--force wins), its
    checkpoint lost."""
    wd = workdir_from(ref, tmp_path / "w", "shards")
    cmd = ["train", "--workdir", wd, "--config", "tiny-synthetic-short", "--set", "data.batch_size=4", "--set",
           "train.epochs=40", "--set", "train.checkpoint_every=1", "--name", "t", "--force"]
    out = _train_until_checkpoint(leap(*cmd), wd / "runs" / "t")
    said = advice(out, r"saved; continue with (.*)$")
    # the advice, literally: the same command with what it names (or, worded so, instead of --force)
    words = [str(c) for c in cmd]
    m = re.fullmatch(r"(?:the same command with )?(--resume)(?: instead of (--force|--overwrite))?", said)
    assert m, said
    words = [w for w in words if w != m.group(2)] + [m.group(1)]
    res = _first_words(leap(*words), ("resumed from", "starting", "over"))
    assert "resumed from checkpoints/last.pt" in res, res


def test_train_stop_after_advice_followed_goes_on(ref, tmp_path):
    """Was wrong: commands/train.py: a run resumed with the same --stop-after it paused at says 'paused ... continue
    with --resume' again: the advice, followed, goes nowhere (it should say to drop or raise --stop-after)."""
    wd = workdir_from(ref, tmp_path / "w", "shards")
    cmd = ["train", "--workdir", wd, *TRAIN, "--name", "s", "--stop-after", "2"]
    rc, out = run(leap(*cmd))
    assert rc == 0, out
    assert re.search(r"paused at step 2 of 4 \(--stop-after\): continue with the same command with --resume, and a "
                     r"--stop-after past 2 or none", flat(out))
    rc, out = run(leap(*cmd, "--resume"))  # the advice, followed
    assert rc == 0, out
    again = re.search(r"paused at step (\d+) of 4 \(--stop-after\): continue with (.*)$", flat(out))
    # either it went on (no pause at step 2 again), or its new advice is not the one just followed
    assert again is None or again.group(1) != "2" or again.group(2) != "--resume", out[-1500:]


# --- extract stopped: rerun advice ------------------------------------------------------------------------------

def test_extract_stopped_after_force_rerun_advice_keeps_finished_records(ref, tmp_path):
    """extract --force stopped by SIGTERM: 'run the same command without --force to resume'; so run, it keeps the
    records written and does only the rest."""
    wd = workdir_from(ref, tmp_path / "w", "descriptors", "frame-cache")
    out_file = wd / "descriptors" / "train.jsonl"
    out_file.unlink()
    cmd = ["extract", "--workdir", wd, "--split", "train", "--force", "--workers", 1]
    p = subprocess.Popen(leap(*cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT,
                         start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (out_file.exists() and out_file.read_bytes().count(b"\n") >= 2):
            assert p.poll() is None, p.stdout.read().decode()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.005)
        os.killpg(p.pid, signal.SIGTERM)
        out = p.communicate(timeout=60)[0].decode(errors="replace")
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
    if p.returncode == 0:
        pytest.skip("extract ended before the stop reached it")
    said = advice(out, r"run (the same command without --force) to resume")
    assert said
    kept = out_file.read_bytes().splitlines(keepends=True)
    kept = [x for x in kept if x.endswith(b"\n")]
    assert kept
    rc, res = run(leap(*[c for c in cmd if c != "--force"]))
    assert rc == 0, res
    now = out_file.read_bytes().splitlines(keepends=True)
    assert now[:len(kept)] == kept and len(now) == 10
    assert re.search(rf"{len(kept)} done before, {10 - len(kept)} written now", flat(res)), res[-1500:]


# --- info: a frames tar not extracted -----------------------------------------------------------------------------

def test_info_untar_advice_pasted_makes_the_frames_folder_it_reads(ref, tmp_path):
    root = tmp_path / "ep ic's $root"
    shutil.copytree(ref / "kitchen" / "annotations", root / "annotations")
    (root / "P01" / "videos").mkdir(parents=True)
    (root / "P01" / "videos" / "P01_02.MP4").symlink_to(ref / "kitchen" / "P01" / "videos" / "P01_02.MP4")
    (root / "P01" / "rgb_frames").mkdir()
    from PIL import Image
    with tarfile.open(root / "P01" / "rgb_frames" / "P01_01.tar", "w") as t:  # as EPIC's tars: ./frame_*.jpg
        for i in range(1, 4):
            b = io.BytesIO()
            Image.new("RGB", (8, 8)).save(b, "JPEG")
            info = tarfile.TarInfo(f"./frame_{i:010d}.jpg")
            info.size = len(b.getvalue())
            t.addfile(info, io.BytesIO(b.getvalue()))
    rc, out = run(leap("info", "--data", root))
    line = [x for x in out.splitlines() if "extract each into a folder of its name: " in x]
    assert len(line) == 1, out[-2000:]
    said = line[0].split("extract each into a folder of its name: ", 1)[1].strip()
    rc, res = shell(said, cwd=tmp_path)
    assert rc == 0, res
    frames = root / "P01" / "rgb_frames" / "P01_01"
    assert sorted(q.name for q in frames.iterdir()) == [f"frame_{i:010d}.jpg" for i in range(1, 4)]
    rc, out = run(leap("info", "--data", root))
    assert "extract each into a folder" not in out and "neither MP4 nor rgb_frames" not in out, out[-2000:]


# --- small refusals whose advice is an option to add or drop ----------------------------------------------------

def test_show_other_split_advice_shows_the_segment(ref, tmp_path):
    val_id = json.loads((ref / "descriptors" / "val.jsonl").read_text().splitlines()[0])["narration_id"]
    rc, out = run(leap("show", val_id, "--workdir", ref, "--split", "train"))
    assert rc != 0
    said = advice(out, r"\(pass (--split \S+), or leave --split out\)")
    rc, res = run(leap("show", val_id, "--workdir", ref, *shlex.split(said)))
    assert rc == 0 and val_id in res, res
    rc, res = run(leap("show", val_id, "--workdir", ref))  # "or leave --split out"
    assert rc == 0 and val_id in res, res


def test_demo_data_non_empty_out_force_advice_rebuilds_it(tmp_path):
    out_dir = tmp_path / "k"
    out_dir.mkdir()
    (out_dir / "stray.txt").write_text("x")
    cmd = ["demo-data", "--out", out_dir, "--videos", 2, "--segments", 4]
    rc, out = run(leap(*cmd))
    assert rc != 0
    said = advice(out, r"or pass (--force) to overwrite it")
    rc, res = run(leap(*cmd, said))
    assert rc == 0, res
    assert (out_dir / "annotations" / "EPIC_100_train.csv").is_file()
