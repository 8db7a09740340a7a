"""A researcher's environments and moves on a shared cluster: a work directory or dataset root moved, renamed or
reached through a symlink between stages; stages run from another folder with relative paths; a locale and a
terminal that a batch job gives (an ASCII stdout, output redirected to a file); a read-only dataset root, the
umask, a work directory the user may not write, a TMPDIR that is missing, HOME unset.

Every stage runs as its own ``python -m leap_cli`` process, as a job script runs it. The permission tests need
a user without CAP_DAC_OVERRIDE: as root they run the stage under ``setpriv`` with every capability dropped (root
then obeys the mode bits), and are skipped where that is not possible."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kitchens import kitchen_copy

REPO = Path(__file__).resolve().parents[1]


def leap(*args, cwd: Path, env: dict | None = None, drop: tuple[str, ...] = (), prefix: list[str] | None = None,
         umask: int | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``leap ARGS`` in a process of its own, output redirected to pipes (as a batch job's is to files)."""
    e = {k: v for k, v in os.environ.items() if k not in drop}
    e.update(PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1", LEAP_PROGRESS_EVERY="10")
    e.update(env or {})
    cmd = [*(prefix or []), sys.executable, "-m", "leap_cli", *map(str, args)]
    preexec = (lambda: os.umask(umask)) if umask is not None else None
    return subprocess.run(cmd, cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout, preexec_fn=preexec)


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    return r


@pytest.fixture(scope="module")
def kitchen(tmp_path_factory) -> Path:
    """A two-video kitchen (train P01_01, val P01_02: the one cut short, so build-shards skips segments there)."""
    root = tmp_path_factory.mktemp("kit") / "kitchen"
    return kitchen_copy(tmp_path_factory, root, "--videos", 2, "--segments", 6)


@pytest.fixture(scope="module")
def built(kitchen, tmp_path_factory) -> Path:
    """A work directory after extract (train, val), generate-programs (train, val) and build-shards (train, val), at
    the demo's frame settings; its dataset root is WORKDIR/data. Tests copy it (``cp -a``) before changing it."""
    top = tmp_path_factory.mktemp("built")
    shutil.copytree(kitchen, top / "data", symlinks=True)
    for split in ("train", "val"):
        ok(leap("extract", "--data", "data", "--split", split, "--workdir", "w", "--cache-frames", 8,
                "--cache-short-side", 80, cwd=top))
        ok(leap("generate-programs", "--data", "data", "--split", split, "--workdir", "w", cwd=top))
        ok(leap("build-shards", "--data", "data", "--split", split, "--workdir", "w", "--frames", 8,
                "--short-side", 80, cwd=top))
    return top


def copy_of(built: Path, dest: Path) -> Path:
    """``cp -a`` of the built work directory and dataset root (times kept, as cp -a and mv keep them)."""
    subprocess.run(["cp", "-a", str(built), str(dest)], check=True)
    return dest


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file under ``folder``, by relative path: what a stage that redid nothing keeps."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".lock")}


@pytest.fixture(scope="module")
def unprivileged(tmp_path_factory) -> list[str]:
    """A command prefix under which the mode bits bind: none for a non-root user; as root, setpriv with every
    capability dropped (checked: it may not write into a read-only folder), else the test is skipped."""
    if os.geteuid() != 0:
        return []
    prefix = ["setpriv", "--inh-caps=-all", "--bounding-set=-all"]
    if shutil.which("setpriv") is None:
        pytest.skip("runs as root and setpriv is missing: the mode bits do not bind root")
    probe = tmp_path_factory.mktemp("probe")
    probe.chmod(0o555)
    r = subprocess.run([*prefix, "touch", str(probe / "x")], capture_output=True)
    probe.chmod(0o755)
    if r.returncode == 0 or b"Permission denied" not in r.stderr:  # (caps kept, or setpriv itself refused)
        pytest.skip("runs as root and cannot drop CAP_DAC_OVERRIDE: the mode bits do not bind root")
    return prefix


def chmod_tree(root: Path, writable: bool) -> None:
    for p in [root, *root.rglob("*")]:
        if p.is_symlink():
            continue
        m = p.stat().st_mode
        p.chmod((m | stat.S_IWUSR) if writable else (m & ~0o222))


# ------------------------------------------------------------------------------------------------ relocation


def test_moved_workdir_and_data_root_resume_each_stage_without_redoing_it(built, tmp_path):
    """mv of the work directory and the dataset root (renamed, into another folder), then every stage again from
    another current folder with relative paths: each finds its work done and leaves its files as they were."""
    top = copy_of(built, tmp_path / "orig")
    (tmp_path / "elsewhere" / "sub").mkdir(parents=True)
    (top / "w").rename(tmp_path / "elsewhere" / "renamed-work")
    (top / "data").rename(tmp_path / "elsewhere" / "sub" / "moved data")
    shutil.rmtree(top)
    work = tmp_path / "elsewhere" / "renamed-work"
    before = snapshot(work)
    run_from = tmp_path / "elsewhere" / "sub"  # relative --workdir ../renamed-work, --data "moved data"
    for split in ("train", "val"):
        r = ok(leap("extract", "--data", "moved data", "--split", split, "--workdir", "../renamed-work",
                    "--cache-frames", 8, "--cache-short-side", 80, cwd=run_from))
        assert " 0 written now" in " ".join(r.stdout.split()), r.stdout
        ok(leap("generate-programs", "--data", "moved data", "--split", split, "--workdir", "../renamed-work",
                cwd=run_from))
        r = ok(leap("build-shards", "--data", "moved data", "--split", split, "--workdir", "../renamed-work",
                    "--frames", 8, "--short-side", 80, cwd=run_from))
        assert "nothing new to write" in " ".join(r.stdout.split()), r.stdout
    after = snapshot(work)
    # (written again on purpose: extract's resolved config names the root it was given now; the manifest's skipped
    # segments are checked again when the video's stat changed, as cp -a changes its ctime, and name the new root)
    rewritten = (".config.json", "manifest.json", ".report.json", ".progress.jsonl")
    redone = {k for k in before if k in after and before[k] != after[k] and not k.endswith(rewritten)}
    assert not redone, sorted(redone)
    assert any(k.endswith(".tar") for k in before) and any(k.endswith(".jpgs") for k in before)
    import json

    skipped = json.loads((work / "shards" / "val" / "manifest.json").read_text(encoding="utf-8"))["skipped"]
    assert skipped and all(s["reason"].startswith("frames unreadable: moved data/") for s in skipped), skipped[:1]
    # the cache's frames stay usable: a rebuild from the moved root reads them rather than decoding the videos
    r = ok(leap("build-shards", "--data", "moved data", "--split", "train", "--workdir", "../renamed-work",
                "--frames", 8, "--short-side", 80, "--force", cwd=run_from))
    assert "frames read from extract's frame cache" in " ".join((r.stdout + r.stderr).split())


def test_train_resume_after_the_work_directory_moved_and_through_a_symlink(built, tmp_path):
    """A run paused at step 2 resumes at step 2 from a moved copy reached through a symlink, and its provenance
    names the shards it trains on now (not the stale folder)."""
    top = copy_of(built, tmp_path / "a")
    sets = ["--set", "data.batch_size=2", "--set", "train.epochs=3", "--set", "train.eval_every_epochs=3"]
    ok(leap("train", "--config", "tiny-synthetic", "--workdir", "w", "--stop-after", 2, *sets, cwd=top))
    moved = tmp_path / "b"
    top.rename(moved)
    (tmp_path / "link").symlink_to(moved / "w")
    r = ok(leap("train", "--config", "tiny-synthetic", "--workdir", tmp_path / "link", "--resume", "--stop-after", 4,
                *sets, cwd=tmp_path))
    text = " ".join(r.stdout.split())
    assert "resumed from checkpoints/last.pt at step 2" in text, text
    assert "paused at step 4" in text, text
    import json

    prov = json.loads((moved / "w" / "runs" / "tiny-synthetic" / "provenance.json").read_text())
    assert str(tmp_path / "a") not in prov["train"]["shards"], prov["train"]["shards"]
    assert Path(prov["train"]["shards"]).is_dir()


# ------------------------------------------------------------------------------------- locale and terminal


def test_redirected_output_is_plain_and_short(built, tmp_path):
    """Output to files, as Slurm gives it: no carriage returns, no escape codes, a handful of lines."""
    top = copy_of(built, tmp_path / "a")
    r = ok(leap("extract", "--data", "data", "--split", "val", "--workdir", "w2", "--frame-cache", "none", cwd=top,
                env={"TERM": "xterm-256color", "COLUMNS": "40"}))
    for stream in (r.stdout, r.stderr):
        assert "\r" not in stream and "\x1b" not in stream, repr(stream[:500])
    assert len(r.stdout.splitlines()) + len(r.stderr.splitlines()) < 60, r.stdout + r.stderr


def test_ascii_stdout_and_a_non_ascii_dataset_root(built, tmp_path):
    """PYTHONIOENCODING=ascii (some clusters' job environment) with the dataset root at .../données: ``leap info``
    prints its report with the é escaped, as Python's stderr does, exit 0, no traceback (a strict stdout stopped
    leap at the first path it printed: info's header, build-shards' skipped segments)."""
    top = copy_of(built, tmp_path / "a")
    (top / "data").rename(top / "données")
    r = leap("info", "--data", "données", cwd=top, env={"PYTHONIOENCODING": "ascii", "LC_ALL": "C", "LANG": "C"})
    assert "Traceback" not in r.stderr, r.stderr[-1500:]
    assert r.returncode == 0, r.stderr[-1500:]
    assert "donn\\xe9es" in r.stdout, r.stdout[:1500]


def test_c_locale_non_ascii_root_without_home_or_tmpdir(built, tmp_path):
    """LANG=C / LC_ALL=C (Python's UTF-8 mode), the dataset root at .../données, HOME unset and TMPDIR a folder
    that does not exist: extract, generate-programs, validate-programs --html and build-shards run, and the
    skipped segments' reasons keep the root's name."""
    top = copy_of(built, tmp_path / "a")
    (top / "data").rename(top / "données")
    env = {"LANG": "C", "LC_ALL": "C", "TMPDIR": str(tmp_path / "no-such-tmp"), "NO_COLOR": "1", "TERM": "dumb"}
    args = ("--data", "données", "--split", "val", "--workdir", "w3")
    ok(leap("extract", *args, "--cache-frames", 8, "--cache-short-side", 80, cwd=top, env=env, drop=("HOME",)))
    ok(leap("generate-programs", *args, cwd=top, env=env, drop=("HOME",)))
    ok(leap("validate-programs", "w3/programs/val.jsonl", "--data", "données", "--workdir", "w3", "--html",
            "w3/val.html", cwd=top, env=env, drop=("HOME",)))
    assert "<html" in (top / "w3" / "val.html").read_text(encoding="utf-8").lower()
    r = ok(leap("build-shards", *args, "--frames", 8, "--short-side", 80, cwd=top, env=env, drop=("HOME",)))
    import json

    manifest = json.loads((top / "w3" / "shards" / "val" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["skipped"], "the kitchen's cut video has segments past its end"
    assert all("données" in s["reason"] for s in manifest["skipped"]), manifest["skipped"][:1]
    assert not (tmp_path / "no-such-tmp").exists()
    assert "Traceback" not in r.stderr


# --------------------------------------------------------------------------------------------- permissions


def test_read_only_dataset_root_is_read_and_never_written(built, tmp_path, unprivileged):
    """chmod -R a-w on the dataset root: info, extract, generate-programs and build-shards work, and nothing under
    the root is created or changed."""
    top = copy_of(built, tmp_path / "a")
    data = top / "data"
    chmod_tree(data, writable=False)
    try:
        before = snapshot(data)
        names = sorted(str(p) for p in data.rglob("*"))
        ok(leap("info", "--data", "data", cwd=top, prefix=unprivileged))
        for stage in (("extract", "--cache-frames", 8, "--cache-short-side", 80), ("generate-programs",),
                      ("build-shards", "--frames", 8, "--short-side", 80)):
            ok(leap(*stage[:1], "--data", "data", "--split", "train", "--workdir", "w4", *stage[1:], cwd=top,
                    prefix=unprivileged))
        assert snapshot(data) == before
        assert sorted(str(p) for p in data.rglob("*")) == names
        assert list((top / "w4" / "shards" / "train").glob("*.tar"))
    finally:
        chmod_tree(data, writable=True)


@pytest.mark.parametrize("umask", [0o077, 0o002])
def test_outputs_follow_the_umask(built, tmp_path, umask):
    """Every output file of extract and generate-programs (JSONL, settings, configs, frame cache, the SQLite reply
    cache; written through the atomic temp+rename path) and every folder gets the umask's mode. The shards folder's
    .readers.lock/.writers.lock are made 0666 on purpose (io.ShardReaders: a reader who may not write there takes
    them), so build-shards' output is not checked here."""
    top = copy_of(built, tmp_path / "a")
    for stage in (("extract", "--cache-frames", 8, "--cache-short-side", 80), ("generate-programs",)):
        ok(leap(stage[0], "--data", "data", "--split", "train", "--workdir", "w5", *stage[1:], cwd=top, umask=umask))
    paths = [p for p in (top / "w5").rglob("*") if not p.is_symlink()]
    assert any(p.suffix == ".jsonl" for p in paths) and any(p.name.endswith(".jpgs") for p in paths)
    wrong = [(str(p.relative_to(top)), oct(stat.S_IMODE(p.stat().st_mode))) for p in paths
             if stat.S_IMODE(p.stat().st_mode) != (0o777 if p.is_dir() else 0o666) & ~umask]
    assert not wrong, wrong


def test_work_directory_without_write_permission_is_one_line(built, tmp_path, unprivileged):
    """A fresh work directory the user may not write: extract stops in one line naming the folder and the cause."""
    top = copy_of(built, tmp_path / "a")
    (top / "ro").mkdir()
    (top / "ro").chmod(0o555)
    try:
        r = leap("extract", "--data", "data", "--split", "train", "--workdir", "ro", cwd=top, prefix=unprivileged)
    finally:
        (top / "ro").chmod(0o755)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ro/descriptors"), lines
    assert "Permission denied" in lines[0]


def test_read_only_output_folder_says_permission_denied(built, tmp_path, unprivileged):
    """A work directory copied read-only (an archived run; another user's folder): extract, generate-programs and
    demo are refused in one line; the line must say why (permission), not 'No such file or directory (check the
    path given to the option that names it)', which sends the user after a path that is right."""
    top = copy_of(built, tmp_path / "a")
    for p in (top / "w").rglob("*.lock"):
        p.unlink()
    chmod_tree(top / "w", writable=False)
    try:
        r = leap("extract", "--data", "data", "--split", "train", "--workdir", "w", cwd=top, prefix=unprivileged)
    finally:
        chmod_tree(top / "w", writable=True)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "Permission denied" in lines[0] or "permission" in lines[0].lower(), lines[0]
