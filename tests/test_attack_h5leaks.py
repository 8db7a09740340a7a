"""Resource use at EPIC's scale of files (helper h5): descriptors, processes and messages under a low `ulimit -n`.

EPIC-KITCHENS-100 has 700 videos; a stage that leaks one descriptor per video passes every small test and dies
after hours on a cluster that sets `ulimit -n 1024`. Measured by hand on synthetic kitchens of 20-160 videos x 2
segments (extract/build-shards with 1 and 2 workers, generate-programs offline and against a scripted server,
train with 0 and 2 loader workers, evaluate): the lowest working limit and the peak descriptor count do not grow
with the number of videos, RSS is flat per video. What is pinned here is cheap: a stage over more videos than the
limit leaves room for (so a leak of one descriptor per video would fail it), descriptors before/after a stage run
in this process, and what leap says once it does hit the limit (EMFILE), which is where the bugs are."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.kitchens import kitchen_copy
from tests.procs import leap_main

REPO = Path(__file__).resolve().parent.parent
VIDEOS = 12  # more than the descriptors a stage has free under LIMIT: a leak of one per video fails the stage
LIMIT = 12  # extract/build-shards/generate-programs with one worker peak at 6-8 descriptors


@pytest.fixture(scope="module")
def kitchen_template(tmp_path_factory) -> Path:
    """VIDEOS videos x 2 segments (~5 s to build)."""
    out = tmp_path_factory.mktemp("h5leaks") / "kitchen"
    return kitchen_copy(tmp_path_factory, out, "--videos", VIDEOS, "--segments", 2)


@pytest.fixture
def kitchen(kitchen_template, tmp_path) -> Path:
    return Path(shutil.copytree(kitchen_template, tmp_path / "kitchen"))


def leap_limited(limit: int, *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    """``leap ARGV`` in a child whose RLIMIT_NOFILE is ``limit`` (soft and hard), as under `ulimit -n LIMIT`."""
    code = ("import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (%d, %d)); "
            "sys.argv = ['leap'] + sys.argv[1:]; runpy.run_module('leap_cli', run_name='__main__')" % (limit, limit))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=120)


def open_fds() -> set[str]:
    """What this process's descriptors point at (the listing's own descriptor aside)."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.add(f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            pass  # (the descriptor of the listing itself, closed by now)
    return out


# ---- the stages over more videos than the limit leaves descriptors for --------------------------------------------

def test_extract_generate_build_shards_over_many_videos_under_a_small_ulimit(kitchen, tmp_path):
    """Each stage opens a video, its audio and its detection files per video: under `ulimit -n 12` a stage that kept
    one of them open per video would run out on the 12 videos here (measured: the lowest working limit is the same
    for 20, 40, 80 and 160 videos)."""
    wd = tmp_path / "work"
    common = ["--data", str(kitchen), "--workdir", str(wd), "--split", "train"]
    r = leap_limited(LIMIT, "extract", *common, "--workers", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "written now" in r.stdout + r.stderr
    r = leap_limited(LIMIT, "generate-programs", *common, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = leap_limited(LIMIT, "build-shards", *common, "--workers", "1", "--frames", "4", "--short-side", "32",
                     "--max-count", "1", cwd=tmp_path)  # one tar per sample: a descriptor kept per shard fails too
    assert r.returncode == 0, r.stderr
    tars = sorted((wd / "shards" / "train").glob("leap-train-*.tar"))
    assert len(tars) > LIMIT  # more shard files written than descriptors allowed
    assert (wd / "shards" / "train" / "manifest.json").is_file()
    assert not list((wd / "shards" / "train").glob(".*.partial"))
    r = leap_limited(LIMIT, "check-shards", "--shards", str(wd / "shards" / "train"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_stages_in_process_leave_no_descriptor_open(kitchen, tmp_path, monkeypatch, capsys):
    """`leap_cli.cli.main` run in this process (a notebook, a driver script that calls stages in a loop over
    splits or parts): every file, pipe and lock a stage opened is closed when it returns, with workers too
    (measured: four extract --workers 2 in a row keep the same six descriptors)."""
    wd = tmp_path / "work"
    common = ["--data", str(kitchen), "--workdir", str(wd), "--split", "train"]
    # imports, lazy state, and multiprocessing's resource tracker: one pipe per process, kept by Python for good
    leap_main(monkeypatch, capsys, "extract", *common, "--workers", "2", "--limit", "2", "--out", str(wd / "w.jsonl"))
    before = open_fds()
    for argv in (["extract", *common, "--workers", "2", "--out", str(wd / "d2.jsonl")],
                 ["extract", *common, "--workers", "1"],
                 ["generate-programs", *common],
                 ["build-shards", *common, "--workers", "2", "--frames", "4", "--short-side", "32"]):
        code, out, err = leap_main(monkeypatch, capsys, *argv)
        assert code == 0, (argv[0], err)
        assert open_fds() - before == set(), argv[0]


# ---- what leap says at the limit ----------------------------------------------------------------------------------

def test_the_descriptor_limit_is_one_line_not_a_traceback(kitchen, tmp_path):
    """extract --workers 2 under `ulimit -n 12` cannot start its pool (measured: it needs ~20): exit 2 with one
    error line, no traceback, no worker left behind."""
    r = leap_limited(LIMIT, "extract", "--data", str(kitchen), "--workdir", str(tmp_path / "w"), "--split", "train",
                     "--workers", "2", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Too many open files" in r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr


def test_the_descriptor_limit_line_says_to_raise_ulimit(kitchen, tmp_path):
    """Was wrong: EMFILE has no entry in cli._OS_FIX: 'Too many open files (check that path and run the same
    command again)' names no limit, and often no path (a pipe) or a source file of leap/Python (offline.py,
    synchronize.py)"""
    r = leap_limited(LIMIT, "extract", "--data", str(kitchen), "--workdir", str(tmp_path / "w"), "--split", "train",
                     "--workers", "2", cwd=tmp_path)
    assert r.returncode == 2
    assert "ulimit" in r.stderr and "check that path" not in r.stderr, r.stderr


def test_os_error_line_for_emfile_names_the_limit():
    """Was wrong: os_error_line's fix for EMFILE/ENFILE is the generic 'check that path' (leap_cli/cli.py _OS_FIX):
    it should say the descriptor limit was hit"""
    from leap_cli.cli import os_error_line

    line = os_error_line(OSError(errno.EMFILE, os.strerror(errno.EMFILE)))
    assert "ulimit" in line or "descriptor" in line, line
    # a source file named as "that path" sends the user to check a file that is fine
    line = os_error_line(OSError(errno.EMFILE, os.strerror(errno.EMFILE), "/site-packages/leap_cli/programs/offline.py"))
    assert "check that path" not in line, line


@pytest.fixture(scope="module")
def train_val_shards(kitchen_template, tmp_path_factory) -> Path:
    """A work directory with train and val shards (2 segments each) of the kitchen, built once for the file's train
    tests; each test trains in its own copy (``work_with_shards``)."""
    root = tmp_path_factory.mktemp("h5shards")
    kitchen = Path(shutil.copytree(kitchen_template, root / "kitchen"))
    wd = root / "work"
    for split in ("train", "val"):
        subprocess.run([sys.executable, "-m", "leap_cli", "build-shards", "--data", str(kitchen), "--workdir", str(wd),
                        "--split", split, "--frames", "4", "--short-side", "32", "--max-count", "2"],
                       check=True, capture_output=True, cwd=root)
    return wd


@pytest.fixture
def work_with_shards(train_val_shards, tmp_path) -> Path:
    return Path(shutil.copytree(train_val_shards, tmp_path / "work", symlinks=True))


@pytest.fixture
def shards(kitchen, tmp_path) -> Path:
    wd = tmp_path / "work"
    subprocess.run([sys.executable, "-m", "leap_cli", "build-shards", "--data", str(kitchen), "--workdir", str(wd),
                    "--split", "train", "--frames", "4", "--short-side", "32", "--max-count", "2"],
                   check=True, capture_output=True, cwd=tmp_path)
    return wd / "shards" / "train"


def _emfile_on_open(monkeypatch):
    def fake_open(path, *a, **k):
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE), str(path))

    monkeypatch.setattr("leap_cli.shards.dataset.open", fake_open, raising=False)


def test_emfile_on_a_shard_stops_the_reader_and_is_not_called_corrupt(shards, monkeypatch):
    """Was wrong: every OSError of the shard's open() was "corrupt shard ... delete that shard file ... run
    build-shards again": a train or evaluate at `ulimit -n` told the user to delete good shards. The limit's
    OSError now stops the reader (it does not train on fewer samples) and is said as the limit."""
    from leap_cli.cli import os_error_line
    from leap_cli.shards.dataset import ShardDataset

    _emfile_on_open(monkeypatch)
    ds = ShardDataset(shards, train=False, num_frames=4, img_size=32)
    with pytest.raises(OSError) as e:
        next(iter(ds))
    assert e.value.errno == errno.EMFILE and str(shards) in e.value.filename
    line = os_error_line(e.value)
    assert "ulimit -Hn" in line and not re.search(r"corrupt|delete", line), line


def test_train_with_loader_workers_under_a_small_ulimit_trains_every_batch(work_with_shards, tmp_path):
    """Was wrong: a DataLoader worker that could not hand its batch over (torch passed its tensors as open files)
    lost it, and train died with the main process's traceback (EOFError, exit 1), stopped saying the shards had
    changed (the streamed epoch came up a batch short), or waited for it for ever (160 videos, ulimit 48/36; one
    SIGTERM did not stop it). Under a low limit the workers now share tensors by name: every batch arrives."""
    import json
    import signal

    wd = work_with_shards
    code = ("import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40)); "
            "sys.argv = ['leap'] + sys.argv[1:]; runpy.run_module('leap_cli', run_name='__main__')")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "-c", code, "-v", "train", "--config", "tiny-synthetic-short", "--workdir",
                          str(wd), "--name", "r", "--set", "train.epochs=2", "--set", "data.batch_size=4",
                          "--set", "data.num_workers=2", "--set", "train.log_every=1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        pytest.fail("leap train hung under `ulimit -n 40` with data.num_workers=2")
    assert p.returncode == 0, err[-3000:]
    assert "share tensors by name (file_system)" in err and "Traceback" not in err, err[-3000:]
    ckpt = torch.load(wd / "runs" / "r" / "checkpoints" / "last.pt", weights_only=True)
    steps = [json.loads(x)["step"] for x in (wd / "runs" / "r" / "metrics.jsonl").read_text().splitlines()
             if '"train"' in x]
    assert ckpt["epoch"] == 2 and ckpt["step"] == 2 * ckpt["data_position"]["batches_per_epoch"] == steps[-1]


def test_train_whose_loader_workers_cannot_start_says_one_line(work_with_shards, tmp_path):
    """Was wrong: under `ulimit -n 20` train's DataLoader could not start its two workers; the error line came, and
    under it torch's half-built loader iterator failed again in its ``__del__`` at exit ("Exception ignored in ...
    AttributeError: ... has no attribute '_workers_status'", a traceback of a dozen lines)."""
    wd = work_with_shards
    r = leap_limited(20, "train", "--config", "tiny-synthetic-short", "--workdir", str(wd), "--name", "r",
                     "--set", "train.max_steps=2", "--set", "data.batch_size=4", "--set", "data.num_workers=2",
                     cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Too many open files" in errors[0] and "ulimit -Hn" in errors[0], r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr[-3000:]


def test_a_lost_batch_or_a_stalled_worker_is_one_line(monkeypatch):
    """The net under the sharing by name: an EOFError from the loader's queue (a batch lost on its way) and torch's
    "DataLoader timed out" (a batch that never came: the loader waits LOADER_TIMEOUT with workers) are one line
    naming the limit of open files and the workers' option, not a traceback or a wait for ever."""
    from leap_cli.errors import LeapError
    from leap_cli.shards.dataset import Guarded

    class Loader:
        num_workers = 2
        dataset = "ds"

        def __init__(self, error):
            self.error = error

        def __iter__(self):
            yield {"n": 1}
            raise self.error

    for error, said in ((EOFError(), "lost on its way"), (RuntimeError("DataLoader timed out after 900 seconds"),
                                                           "no batch came")):
        batches = Guarded(Loader(error), "data.num_workers")
        assert batches.dataset == "ds"
        it = iter(batches)
        assert next(it) == {"n": 1}
        with pytest.raises(LeapError) as e:
            next(it)
        line = e.value.one_line()
        assert said in line and "ulimit -Hn" in line and "data.num_workers" in line, line
    loader = Loader(EOFError())
    loader.num_workers = 0  # (no workers: the error is not the loader's queue)
    with pytest.raises(EOFError):
        list(Guarded(loader, "--workers"))
