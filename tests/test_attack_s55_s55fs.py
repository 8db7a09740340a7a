"""File systems and paths as researchers' clusters have them: a work directory on another file system than TMPDIR
and the inputs (/dev/shm, a tmpfs, against the disk of /tmp), reached through a symlink; a dataset root given as a
symlink, one video a symlink into another folder, symlink loops in the data tree; folder names with spaces, '%',
unicode, a leading dash or a newline; the umask (002: group-shared); a work directory reached through two paths in
two runs (resume, locks).

Everything runs in this process (``leap_cli.cli.main``) on a one-video synthetic kitchen (3 segments, 64x48) or on
the annotations-only EPIC excerpt of tests/data: the file takes a few seconds."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.kitchens import config_kitchen_copy

EPIC = Path(__file__).parent / "data" / "epic100"
FRAMES = ("--cache-frames", "4", "--cache-short-side", "48")
SHARDS = ("--frames", "4", "--short-side", "48")


def leap(*argv) -> tuple[int, str, str]:
    """``leap ARGV`` by ``leap_cli.cli.main`` in this process: (exit status, stdout, stderr). The signal handlers
    main leaves (SIGTERM, SIGINT, SIGHUP ignored as it exits) are put back."""
    from leap_cli import cli

    stops = [s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None)) if s is not None]
    old = {s: signal.getsignal(s) for s in stops}
    argv_was = sys.argv
    sys.argv = ["leap", *map(str, argv)]
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli.main()
    except SystemExit as e:
        code = e.code if e.code is not None else 0
    finally:
        sys.argv = argv_was
        for s, handler in old.items():
            signal.signal(s, handler)
    return code, out.getvalue(), err.getvalue()


def ok(result: tuple[int, str, str]) -> str:
    code, out, err = result
    assert code == 0, (code, out[-2000:], err[-2000:])
    return " ".join(out.split())


def tree_state(*roots: Path) -> dict[str, tuple]:
    """Every entry under ``roots`` (links not followed): its kind, and for a file its size and mtime, for a
    folder its mtime (a file made and deleted there changes it), for a link its target."""
    state = {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            for name in [*dirs, *files, "."]:
                p = Path(folder) / name
                st = p.lstat()
                key = str(p.relative_to(root.parent))
                if stat.S_ISLNK(st.st_mode):
                    state[key] = ("link", os.readlink(p))
                elif stat.S_ISDIR(st.st_mode):
                    state[key] = ("dir", st.st_mtime_ns, stat.S_IMODE(st.st_mode))
                else:
                    state[key] = ("file", st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode))
    return state


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A one-video kitchen stored in ``store space/kit ø``, its MP4 moved to ``videos elsewhere/`` and linked back,
    a link loop in P01/videos (``loop -> ..``) and a participant folder that links to the root (``P02 -> .``); the
    root given as the symlink ``data link``. The work directory ``w %d ø`` on /dev/shm (a tmpfs: another file
    system than the data's and TMPDIR's), given as the symlink ``work link``. extract, generate-programs and
    build-shards (train) run there under umask 002 with TMPDIR on the data's disk."""
    from leap_cli.synth.kitchen import KitchenConfig

    base = tmp_path_factory.mktemp("cluster")
    kit = base / "store space" / "kit ø"
    config_kitchen_copy(tmp_path_factory, kit, KitchenConfig(videos=1, segments_per_video=3, width=64, height=48))
    elsewhere = base / "videos elsewhere"
    elsewhere.mkdir()
    (kit / "P01" / "videos" / "P01_01.MP4").rename(elsewhere / "P01_01.MP4")
    (kit / "P01" / "videos" / "P01_01.MP4").symlink_to(Path("../../../../videos elsewhere/P01_01.MP4"))
    (kit / "P01" / "videos" / "loop").symlink_to("..")
    (kit / "P02").symlink_to(".")
    (base / "data link").symlink_to(kit)
    assert (kit / "P01" / "videos" / "P01_01.MP4").is_file()

    shm = Path("/dev/shm")
    other_fs = shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != base.stat().st_dev
    holder = Path(tempfile.mkdtemp(prefix="leap-s55fs-", dir=shm if other_fs else base))
    real = holder / "w %d ø"  # (made under the umask below: a link to a missing folder is refused, as it should)
    (base / "work link").symlink_to(real, target_is_directory=True)
    tmpdir = base / "tmp"
    tmpdir.mkdir()

    before = tree_state(base / "store space", elsewhere)
    names_before = sorted(os.listdir(base))
    old_umask, old_tempdir, old_env = os.umask(0o002), tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir, os.environ["TMPDIR"] = str(tmpdir), str(tmpdir)
    runs = {}
    try:
        real.mkdir()
        args = ("--data", base / "data link", "--split", "train", "--workdir", base / "work link")
        runs["extract"] = leap("extract", *args, *FRAMES)
        runs["generate-programs"] = leap("generate-programs", *args)
        runs["build-shards"] = leap("build-shards", *args, *SHARDS)
    finally:
        os.umask(old_umask)
        tempfile.tempdir = old_tempdir
        if old_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old_env
    state = {"base": base, "kit": kit, "elsewhere": elsewhere, "real": real, "link": base / "work link",
             "data": base / "data link", "other_fs": other_fs, "before": before, "names_before": names_before,
             "runs": runs, "tmpdir": tmpdir}
    yield state
    shutil.rmtree(holder, ignore_errors=True)


def test_stages_run_with_the_workdir_on_another_file_system_through_symlinks(cluster):
    """extract -> generate-programs -> build-shards with the work directory on a tmpfs (another device than TMPDIR
    and the data: an os.replace across devices would be EXDEV), the work directory and the data root given as
    symlinks, the video a symlink into another folder, link loops in the data tree: each ends well, writes its
    outputs into the real work directory and leaves no temp or .partial file there."""
    if not cluster["other_fs"]:
        pytest.skip("/dev/shm is no separate writable file system here")
    for name, (code, out, err) in cluster["runs"].items():
        assert code == 0, (name, out[-2000:], err[-2000:])
        assert "Traceback" not in err and "EXDEV" not in err and "cross-device" not in err, (name, err[-2000:])
    real = cluster["real"]
    assert real.stat().st_dev != cluster["tmpdir"].stat().st_dev != 0
    assert len((real / "descriptors" / "train.jsonl").read_text(encoding="utf-8").splitlines()) == 3
    assert len((real / "programs" / "train.jsonl").read_text(encoding="utf-8").splitlines()) == 3
    assert list((real / "shards" / "train").glob("leap-train-*.tar"))
    assert list((real / "frame-cache" / "P01_01").glob("*.jpgs"))
    leftovers = [str(p) for p in real.rglob("*") if p.name.endswith((".tmp", ".partial"))]
    assert not leftovers, leftovers
    assert not list(cluster["tmpdir"].iterdir()), "nothing needs TMPDIR for these stages"


def test_nothing_is_written_next_to_the_inputs(cluster):
    """The dataset root (and the folder its linked video lives in) is only read: no lock file, cache, temp or
    .partial file made in it, even for a moment (the folders' mtimes are unchanged), no file changed; nothing
    new beside the links either."""
    after = tree_state(cluster["base"] / "store space", cluster["elsewhere"])
    changed = {k: (cluster["before"].get(k), after.get(k)) for k in set(after) | set(cluster["before"])
               if cluster["before"].get(k) != after.get(k)}
    assert not changed, changed
    assert sorted(os.listdir(cluster["base"])) == cluster["names_before"]


def test_every_file_and_folder_follows_umask_002(cluster):
    """Under umask 002 every file the three stages write (JSONL, settings, configs, locks, the frame cache, the
    shard tars, the manifest, .progress.jsonl) is 0664 and every folder 0775 (docs/options.md: 0666 minus the
    umask; the shards folder's .readers.lock/.writers.lock are 0666 on purpose, as documented)."""
    real = cluster["real"]
    wrong = []
    for p in [real, *real.rglob("*")]:
        mode = stat.S_IMODE(p.lstat().st_mode)
        want = 0o775 if p.is_dir() else 0o666 if p.name in (".readers.lock", ".writers.lock") else 0o664
        if mode != want:
            wrong.append((str(p.relative_to(real)), oct(mode)))
    assert not wrong, wrong
    assert any(p.suffix == ".tar" for p in real.rglob("*"))


def test_a_rerun_through_the_real_paths_resumes_and_redoes_nothing(cluster):
    """The same work directory reached by its real path (not the link) and the data root by its real path, from
    another folder: extract finds every record done, generate-programs resumes them all, build-shards has nothing
    new to write, and no record, frame or shard file is rewritten."""
    real = cluster["real"]
    keep = {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in real.rglob("*")
            if p.is_file() and p.suffix in (".jsonl", ".tar", ".jpgs") and not p.name.startswith(".")}
    args = ("--data", cluster["kit"], "--split", "train", "--workdir", real)
    text = ok(leap("extract", *args, *FRAMES))
    assert "3 done before, 0 written now" in text, text
    text = ok(leap("generate-programs", *args))
    assert re.search(r"resumed \(already done\) │ 3 ", text) and "done in this run │ 0 " in text, text
    text = ok(leap("build-shards", *args, *SHARDS))
    assert "nothing new to write" in text, text
    now = {k: (Path(k).stat().st_size, Path(k).stat().st_mtime_ns) for k in keep}
    assert now == keep


def test_locks_exclude_a_run_that_reaches_the_workdir_through_another_path(cluster):
    """A run holding the programs' lock through the real path refuses a second run given the symlink, and a reader
    of the shards (train, evaluate) holding them through the real path refuses build-shards --force through the
    link: the locks are the files, whatever path reaches them."""
    from leap_cli.io import OutputLock, ShardReaders

    real, link = cluster["real"], cluster["link"]
    args = ("--data", cluster["data"], "--split", "train", "--workdir", link)
    with OutputLock(real / "programs" / "train.jsonl"):
        code, out, err = leap("generate-programs", *args, "--force")
    assert code == 2 and "another leap process is writing" in " ".join(err.split()), (code, err)
    with ShardReaders(real / "shards" / "train"):
        code, out, err = leap("build-shards", *args, *SHARDS, "--force")
    assert code == 2 and "reading these shards" in " ".join(err.split()), (code, err)
    assert list((real / "shards" / "train").glob("leap-train-*.tar"))


# ------------------------------------------------------------------------------ the annotations-only excerpt


@pytest.fixture
def ann_only(tmp_path, monkeypatch) -> Path:
    """The current folder: tmp_path, holding ``d/annotations`` (the EPIC excerpt: no videos)."""
    shutil.copytree(EPIC, tmp_path / "d" / "annotations")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_shell(command: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=30)


def test_printed_merge_command_works_for_a_workdir_with_a_leading_dash(ann_only):
    """Was wrong: io.merge_command quotes the folder but does not guard a leading dash: for --workdir -w it prints
    `cat -w/descriptors/val.shard*of2.jsonl > ...`, which cat takes as its option -w (invalid option). Two
    --shard parts of extract in the work directory ``-w``; generate-programs stops and prints the `cat` that
    merges them: run as printed, it must merge them."""
    for part in ("0/2", "1/2"):
        ok(leap("extract", "--data", "d", "--split", "val", "--workdir", "-w", "--shard", part))
    code, out, err = leap("generate-programs", "--data", "d", "--split", "val", "--workdir", "-w")
    line = " ".join(err.split())
    assert code == 2 and "merge them: " in line, (code, line)
    command = line.split("merge them: ", 1)[1].rsplit(")", 1)[0]
    r = run_shell(command, ann_only)
    assert r.returncode == 0, (command, r.stderr)
    merged = ann_only / "-w" / "descriptors" / "val.jsonl"
    assert len(merged.read_text(encoding="utf-8").splitlines()) == 22


def test_printed_untar_command_works_for_a_data_root_with_a_leading_dash(ann_only):
    """Was wrong: epic/layout.py:130 untar_command: `mkdir -p -d/P01/rgb_frames/P01_11 && ...` for --data -d: mkdir
    takes -d/... as its options. ``leap info --data -d`` with P01_11's frames only in EPIC's tar prints the
    command that extracts them: run as     printed, it must extract the frame into rgb_frames/P01_11/."""
    (ann_only / "d").rename(ann_only / "-d")
    frames = ann_only / "-d" / "P01" / "rgb_frames"
    (frames / "src").mkdir(parents=True)
    (frames / "src" / "frame_0000000001.jpg").write_bytes(b"\xff\xd8\xff\xd9")
    subprocess.run(["tar", "-cf", "../P01_11.tar", "frame_0000000001.jpg"], cwd=frames / "src", check=True)
    shutil.rmtree(frames / "src")
    code, out, err = leap("info", "--data", "-d")
    assert code == 0, err
    line = next((x for x in out.splitlines() if "mkdir -p" in x), "")
    command = line.split("folder of its name: ", 1)[-1].strip()
    assert command.startswith("mkdir -p"), out[-2000:]
    r = run_shell(command, ann_only)
    assert r.returncode == 0, (command, r.stderr)
    assert (frames / "P01_11" / "frame_0000000001.jpg").is_file()


def quoted(line: str, option: str, value: str) -> bool:
    """Whether ``line`` gives ``option value`` as the shell takes it (the value one word: quoted where it needs)."""
    return any(f"{option} {q}" in line for q in (shlex.quote(value), f'"{value}"', value.replace(" ", "\\ ")))


def test_validate_programs_fix_quotes_a_workdir_with_a_space(ann_only):
    """Was wrong: commands/programs.py:502 prints the fix `leap generate-programs --workdir my work --split val`
    unquoted (merge_command and evaluate's submit command quote theirs). validate-programs before
    generate-programs, in the work directory ``my work``: the fix it prints names the     command to run, with
    the folder as one word."""
    (ann_only / "my work").mkdir()
    code, out, err = leap("validate-programs", "--split", "val", "--workdir", "my work", "--data", "d")
    line = " ".join(err.split())
    assert code == 2 and "leap generate-programs" in line, (code, line)
    assert quoted(line, "--workdir", "my work"), line


@pytest.mark.parametrize("given", ["data", "annotations"])
def test_annotation_folder_fixes_quote_a_path_with_a_space(ann_only, given):
    """Was wrong: epic/layout.py:56,65 print `--annotations my data/annotations` and `--data /.../my data` unquoted
    in their fixes. `--data ROOT/annotations` (the CSVs' own folder) and `--annotations
    ROOT/annotations/EPIC_100_train.csv` (a     file): each fix names the option to pass, with a path the shell
    takes as one word."""
    (ann_only / "d").rename(ann_only / "my data")
    if given == "data":
        code, out, err = leap("info", "--data", "my data/annotations")
    else:
        code, out, err = leap("info", "--data", "my data", "--annotations", "my data/annotations/EPIC_100_train.csv")
    line = " ".join(err.split())
    assert code == 2 and "--annotations" in line, (code, line)
    assert quoted(line, "--annotations", "my data/annotations"), line
    if given == "data":
        assert quoted(line, "--data", str(ann_only / "my data")), line


def test_a_workdir_through_a_folder_not_made_yet_resumes(ann_only):
    """Was wrong: generate-programs checks its inputs and output (WORKDIR/descriptors, WORKDIR/programs) before
    anything makes WORKDIR's folders: through `x/../w`, x not made yet, neither is found; then atomic_path's
    mkdir makes x, and the finished programs are made again from the narrations alone over the old ones (a paid
    LLM's programs are paid again). A job script's `--workdir x/../w` (w finished, x not made yet: it is the
    job's own folder) is the work     directory w: generate-programs resumes its programs as they are, from
    extract's descriptors."""
    args = ("--data", "d", "--split", "val")
    ok(leap("extract", *args, "--workdir", "w"))
    ok(leap("generate-programs", *args, "--workdir", "w"))
    programs = ann_only / "w" / "programs" / "val.jsonl"
    settings = programs.with_name("val.jsonl.settings.json")
    before = (programs.read_bytes(), settings.read_bytes())
    text = ok(leap("generate-programs", *args, "--workdir", "x/../w"))
    assert "done in this run │ 0 " in text, text
    assert (programs.read_bytes(), settings.read_bytes()) == before
    # so is any path a command is given: --out and --descriptors through missing folders
    text = ok(leap("generate-programs", *args, "--workdir", "w", "--descriptors", "y/../w/descriptors/val.jsonl",
                   "--out", "z/z/../../w/programs/val.jsonl"))
    assert "done in this run │ 0 " in text, text
    assert (programs.read_bytes(), settings.read_bytes()) == before
    assert not any((ann_only / name).exists() for name in "xyz")


def test_a_newline_in_the_workdir_name_keeps_the_output_path_on_one_line(ann_only):
    """Was wrong: the stages' headers and notes print paths with Python's str(): a newline in a folder name breaks
    `generate-programs -> PATH` over two lines (error lines show it as \n, report/terminal.printable)."""
    code, out, err = leap("generate-programs", "--data", "d", "--split", "val", "--workdir", "w\nx")
    assert code == 0, err
    assert (ann_only / "w\nx" / "programs" / "val.jsonl").is_file()
    header = next(x for x in out.splitlines() if x.startswith("generate-programs -> "))
    assert header.endswith("programs/val.jsonl"), out[:600]
