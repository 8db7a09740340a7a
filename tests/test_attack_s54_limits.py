"""The stages under the resource limits of a shared login node or a cluster job (a low open-files limit, a full
disk, read-only folders and SIGKILL are covered elsewhere): here a virtual-memory cap (`ulimit -v`,
RLIMIT_AS), set in the child before leap starts. The caps are those found on this machine's venv: `leap --help`
starts under 64 MB, `leap info` needs ~0.35 GB (cv2, scipy), the extract pool's workers ~0.5 GB, torch's import
~4 GB of address space (libtorch_cpu/libtorch_cuda are mapped whole).

Expected of each: a one-line error naming memory and what to do (raise the limit, fewer workers), no traceback,
finished work kept, and never a hang (every subprocess has a timeout; a hang is a failure).
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kitchens import kitchen_copy
from tests.test_attack_kill_resume import leap, workdir_from

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
       "NO_COLOR": "1", "COLUMNS": "200"}
ENV.pop("LEAP_PROGRESS_EVERY", None)
GB = 2 ** 30


def capped(cmd, cap: int, timeout: float = 60) -> tuple[int | None, str]:
    """``cmd`` with RLIMIT_AS ``cap`` bytes, in a session of its own: (exit status, stderr); None for a run still
    going after ``timeout`` s (killed, with its process group: the pool's workers too)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, cwd=ROOT,
                         start_new_session=True, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap)))
    try:
        _, err = p.communicate(timeout=timeout)
        return p.returncode, err.decode(errors="replace")
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        _, err = p.communicate()
        return None, err.decode(errors="replace")


def one_memory_line(err: str) -> bool:
    said = [x for x in err.splitlines() if x.strip() and not x.startswith("WARNING ")]
    return (len(said) == 1 and "Traceback" not in err
            and any(w in said[0].lower() for w in ("memory", "ulimit -v", "address space")))


@pytest.fixture(scope="module")
def kitchen(tmp_path_factory):
    """A 2-video synthetic kitchen with its train split extracted, programmed (offline) and sharded."""
    wd = tmp_path_factory.mktemp("kitchen")
    # (the leap processes' temporary files in pytest's folder: a DataLoader worker killed here leaves its
    # multiprocessing folder, a socket in it, behind)
    ENV["TMPDIR"] = str(tmp_path_factory.mktemp("tmp"))
    kitchen_copy(tmp_path_factory, wd / "kitchen", "--videos", 2, "--segments", 6)
    for stage, *extra in (("extract", "--split", "train", "--workers", 2),
                          ("generate-programs", "--split", "train", "--backend", "offline"),
                          ("build-shards", "--split", "train")):
        r = subprocess.run(leap(stage, "--workdir", wd, *extra), capture_output=True, text=True, env=ENV, cwd=ROOT,
                           timeout=120)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return wd


def test_help_starts_under_a_64_mb_address_space():
    """`leap --help` imports nothing heavy: it starts where a login node's cap is tiny."""
    rc, err = capped(leap("--help"), 64 * 2 ** 20, timeout=30)
    assert rc == 0, err


def test_info_under_a_small_address_space_says_memory_in_one_line(kitchen):
    """Was wrong: under ulimit -v 0.3 GB `leap info` died with a 50-line ImportError traceback ('failed to map segment
    from shared object', cv2/scipy), exit 1"""
    rc, err = capped(leap("info", "--workdir", kitchen), int(0.3 * GB), timeout=60)
    assert rc == 2 and one_memory_line(err), (rc, err[-1500:])


@pytest.mark.xfail(strict=False, reason="BUG (not fixed): extract --workers 2 under ulimit -v 0.4-0.5 GB can hang: "
                                       "its workers spin inside OpenBLAS's start as scipy loads (native code, no error "
                                       "to catch); leap now warns before they start (common.warn_small_address_space)"
                                       ", and a worker whose start fails with an error, or that dies, is said in one "
                                       "line (tests/test_worker_failures.py): not strict, since which of the two "
                                       "comes varies from run to run")
def test_extract_whose_workers_cannot_start_under_a_memory_cap_stops_in_one_line(kitchen, tmp_path):
    wd = workdir_from(kitchen, tmp_path / "wd")
    rc, err = capped(leap("extract", "--workdir", wd, "--split", "val", "--workers", 2), int(0.4 * GB), timeout=10)
    assert rc is not None, "extract hung: " + err[-1500:]
    assert rc == 2 and one_memory_line(err), (rc, err[-1500:])


def test_train_under_a_memory_cap_says_memory_in_one_line(kitchen, tmp_path):
    """Was wrong: under ulimit -v 3 GB `leap train` died with a MemoryError / ImportError ('failed to map segment',
    libtorch_cpu.so) traceback of 40-100 lines, exit 1: no word of the memory cap or what to do"""
    wd = workdir_from(kitchen, tmp_path / "wd", "shards", "programs")
    rc, err = capped(leap("train", "--workdir", wd, "--config", "tiny-synthetic-short", "--name", "r",
                          "--set", "train.epochs=1", "--set", "data.batch_size=2", "--set", "data.val=null"),
                     3 * GB, timeout=60)
    assert rc is not None, "train hung: " + err[-1500:]
    assert rc == 2 and one_memory_line(err), (rc, err[-1500:])


# --- a DataLoader worker killed mid-run (Docker's 64 MB /dev/shm: SIGBUS; the OOM killer: SIGKILL) ------------

def test_train_whose_dataloader_worker_is_killed_stops_in_one_line_and_resumes(kitchen, tmp_path):
    """Was wrong: a DataLoader worker SIGKILLed mid-train: torch's 'DataLoader worker (pid N) is killed by signal:
    Killed.' traceback, raised from its SIGCHLD handler inside save_checkpoint's write (last.pt not saved:
    --resume started at step 0), and the process did not exit (hang)"""
    import time

    wd = workdir_from(kitchen, tmp_path / "wd", "shards", "programs")
    metrics = wd / "runs" / "r" / "metrics.jsonl"
    p = subprocess.Popen(leap("train", "--workdir", wd, "--config", "tiny-synthetic-short", "--name", "r",
                              "--set", "train.epochs=30", "--set", "data.batch_size=2", "--set", "data.val=null",
                              "--set", "data.num_workers=2", "--set", "train.log_every=1"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, cwd=ROOT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (metrics.exists() and metrics.read_bytes().count(b"\n") >= 1):
            assert p.poll() is None, p.communicate()[1][-1500:]
            assert time.monotonic() < deadline, "no step logged"
            time.sleep(0.005)
        kids = [int(k) for k in Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()]
        workers = [k for k in kids if b"resource_tracker" not in Path(f"/proc/{k}/cmdline").read_bytes()]
        assert workers, kids
        os.kill(workers[0], signal.SIGKILL)
        try:
            _, err = p.communicate(timeout=8)
        except subprocess.TimeoutExpired:
            pytest.fail("train did not exit after its DataLoader worker was killed")
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
    err = err.decode(errors="replace")
    said = [x for x in err.splitlines() if x.strip() and not x.startswith("WARNING ")]
    assert p.returncode == 2 and "Traceback" not in err and len(said) == 1 and "worker" in said[0], err[-1500:]
    assert (wd / "runs" / "r" / "checkpoints" / "last.pt").exists()


# --- a file-size cap (ulimit -f: SIGXFSZ by default) below a checkpoint's size ----------------------------------

def test_train_under_a_file_size_cap_below_a_checkpoint_says_so_and_leaves_no_half_checkpoint(kitchen, tmp_path):
    """A silent death by SIGXFSZ with a cut last.pt left as if whole would be the bug: one line naming the file and
    the limit, exit 2, no last.pt (nor a temp file) left behind."""
    wd = workdir_from(kitchen, tmp_path / "wd", "shards", "programs")
    cap = 100_000
    r = subprocess.run(leap("train", "--workdir", wd, "--config", "tiny-synthetic-short", "--name", "r",
                            "--set", "train.epochs=1", "--set", "data.batch_size=2", "--set", "data.val=null"),
                       capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=60,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (cap, cap)))
    said = [x for x in r.stderr.splitlines() if x.strip() and not x.startswith("WARNING ")]
    assert r.returncode == 2 and len(said) == 1 and "Traceback" not in r.stderr, r.stderr[-1500:]
    assert "last.pt" in said[0] and "ulimit -f" in said[0] and "--resume" in said[0], said
    ck = wd / "runs" / "r" / "checkpoints"
    assert not (ck / "last.pt").exists()
    assert not [q for q in ck.parent.rglob("*") if q.is_file() and q.stat().st_size >= cap], "a half file is left"
