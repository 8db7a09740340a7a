"""Attack (helper s57attack) on commits f52124e and 914f0fb: ``common.new_pool`` (a multiprocessing Pool that
SIGKILLs the workers it started when a later worker or one of its threads cannot start: extract, build-shards and
check-shards with --workers N), the DataLoader worker that cannot hand a batch over (it prints one line and ends
with LOST_BATCH_EXIT, which ``_died_error`` names) and the advice's --resume (``dataset._again``).

- the pool: its 1st, 2nd or 3rd worker cannot start (EAGAIN, as fork says under `ulimit -u`), its 2nd or 3rd thread
  cannot start ("can't start new thread"), and a worker killed mid-run (the kernel's out-of-memory killer) whose
  replacement cannot start. Each pool runs in a Python of its own (forked there, as build-shards' pool is; a fork
  of pytest-xdist's worker could hang), the faults made there by patching ``Process.start`` / ``Thread.start``.
  Expected: the error goes on at once, no worker or pool thread is left running, nothing waits for ever;
- train with data.num_workers 2 whose worker cannot pickle a batch (its queue's feeder fails, as at the limit of
  open files): one line, exit 2 within seconds, last.pt kept at the step reached, and --resume ends with the
  weights of a run that lost nothing (three runs of `leap train` in one Python, as a notebook would);
- the advice after a DataLoader worker's death in `leap ablate`, whose cells run leap train in its process.

Every process started here is in the background from the module's start (the file's time is its CPUs'), and is
bounded: a hang is a failed test, not a stuck suite.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.procs import ScriptJob, leap_main

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
       "NO_COLOR": "1", "COLUMNS": "200"}
ENV.pop("LEAP_PROGRESS_EVERY", None)
HUNG_AFTER = 4.0  # seconds after a worker's death that count as a wait for ever (the stages poll every 2 s)

# A forked pool of leap's (new_pool, build-shards' start_worker) and one fault; prints one JSON line.
POOL = r'''
import errno, json, multiprocessing, os, signal, sys, threading, time
import multiprocessing.pool as mpool
import multiprocessing.process as mproc
from leap_cli.common import new_pool, pool_results, start_worker, stop_pool
from leap_cli.errors import LeapError
from tests.procs import running

CTX = multiprocessing.get_context("fork")


def task(x):
    time.sleep(x)
    return x




def other_threads():
    return sorted(t.name for t in threading.enumerate() if t is not threading.main_thread())


def starts():
    """A pool of 3 whose k+1th worker cannot start (k = 0, 1, 2)."""
    out, start = {}, mproc.BaseProcess.start
    for k in (0, 1, 2):
        started = []

        def failing(self, k=k, started=started):
            if len(started) == k:
                raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
            start(self)
            started.append(self.pid)

        mproc.BaseProcess.start = failing
        t = time.monotonic()
        try:
            new_pool(CTX, 3, start_worker, (os.getpid(),))
            error = None
        except BaseException as e:
            error = type(e).__name__
        finally:
            mproc.BaseProcess.start = start
        seconds = time.monotonic() - t
        time.sleep(0.3)
        out[k] = {"error": error, "seconds": seconds, "started": len(started), "running": running(started),
                  "threads": other_threads()}
    return out


def thread(which):
    """A pool of 2 whose thread running Pool.<which> cannot start."""
    target, tstart = getattr(mpool.Pool, which), threading.Thread.start

    def failing(self):
        if getattr(self, "_target", None) == target:
            raise RuntimeError("can't start new thread")
        return tstart(self)

    threading.Thread.start = failing
    t = time.monotonic()
    try:
        new_pool(CTX, 2, start_worker, (os.getpid(),))
        error = None
    except BaseException as e:
        error = f"{type(e).__name__}: {e}"
    finally:
        threading.Thread.start = tstart
    seconds = time.monotonic() - t
    time.sleep(0.5)
    children = [p.pid for p in multiprocessing.active_children()]
    return {"error": error, "seconds": seconds, "running": running(children), "threads": other_threads()}


def replace():
    """A running pool whose worker is killed mid-task once no process can start (the pool cannot replace it)."""
    pool = new_pool(CTX, 2, start_worker, (os.getpid(),))

    def failing(self):
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    mproc.BaseProcess.start = failing

    def watchdog():
        time.sleep(float(sys.argv[2]))
        print(json.dumps({"raised": None, "seconds": None}), flush=True)
        os._exit(0)

    threading.Thread(target=watchdog, daemon=True).start()
    results = pool_results(pool, pool.imap(task, [0, 1, 1]), poll=0.5)
    assert next(results) == 0
    os.kill(pool._pool[0].pid, signal.SIGKILL)
    t = time.monotonic()
    try:
        list(results)
        raised = None
    except LeapError as e:
        raised = e.one_line()
    print(json.dumps({"raised": raised, "seconds": time.monotonic() - t}), flush=True)
    stop_pool(pool, grace=2)
    return None


if __name__ == "__main__":
    how = sys.argv[1]
    got = starts() if how == "starts" else replace() if how == "replace" else thread(how)
    if got is not None:
        print(json.dumps(got), flush=True)
    sys.stdout.flush()
    os._exit(0)  # (the workers die with this process: start_worker's PR_SET_PDEATHSIG)
'''

# Two 3 s videos (rgb_frames), six train segments, shards of 2 samples; then three `leap train` in this Python:
# "lost" (loader worker 1's second batch, the first of epoch 2, holds an object that cannot be pickled), "resume"
# (--resume, nothing lost) and "clean" (another run, nothing lost). stderr: each run between "@@ start/end NAME".
TRAIN = r'''
import json, multiprocessing, shutil, sys, time
from pathlib import Path

import cv2
import numpy as np

from leap_cli.epic.timing import epic_frame_rate, format_timestamp

wd, repo = Path(sys.argv[1]), Path(sys.argv[2])
ann = wd / "kitchen" / "annotations"
ann.mkdir(parents=True)
for f in ("EPIC_100_verb_classes.csv", "EPIC_100_noun_classes.csv"):
    shutil.copy(repo / "tests" / "data" / "epic100" / f, ann / f)
rate = epic_frame_rate(10.0)
rows = ["narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,"
        "stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes"]
for v, vid in enumerate(("P01_01", "P01_02")):
    for i, (a, b, verb, vc, noun, nc) in enumerate([(0.2, 0.9, "take", 0, "plate", 2), (1.1, 1.9, "wash", 2, "cup", 13),
                                                     (2.1, 2.9, "take", 0, "plate", 2)]):
        ta, tb = format_timestamp(a), format_timestamp(b)
        rows.append(f"{vid}_{i},P01,{vid},{ta},{ta},{tb},{max(1, int(a * rate + 1e-6))},{int(b * rate + 1e-6)},"
                    f"{verb} {noun},{verb},{vc},{noun},{nc},['{noun}'],[{nc}]")
    frames = wd / "kitchen" / "P01" / "rgb_frames" / vid
    frames.mkdir(parents=True)
    for n in range(1, int(3 * rate) + 1):
        cv2.imwrite(str(frames / f"frame_{n:010d}.jpg"), np.full((24, 32, 3), ((n * 8) % 256, 60 + 90 * v, 200), np.uint8))
(ann / "EPIC_100_train.csv").write_text("\n".join(rows) + "\n")
(ann / "EPIC_100_validation.csv").write_text(rows[0] + "\n")
(ann / "EPIC_100_video_info.csv").write_text("video_id,duration,fps,resolution\nP01_01,3.0,10.0,32x24\n"
                                             "P01_02,3.0,10.0,32x24\n")
from leap_cli.shards.writer import ShardSettings, build_split

build_split(wd / "kitchen", "train", workdir=wd, settings=ShardSettings(split="train", frames=4, short_side=32,
                                                                        max_count=2))
(wd / "mini.yaml").write_text("model: {img_size: 32, num_frames: 4, options: {decoder_dim: 32, decoder_heads: 2}}\n"
                              "data: {batch_size: 2, num_workers: 2}\ntrain: {epochs: 2, log_every: 1, threads: 1}\n")

import torch
from torch.utils.data import get_worker_info

import leap_cli.shards.dataset as dataset
from leap_cli import cli

original, made = dataset.collate_clips, [0]


class Unpicklable(str):
    def __reduce_ex__(self, protocol):
        raise TypeError("cannot pickle this narration_id")


def losing(samples):
    batch = original(samples)
    info = get_worker_info()
    if info is not None and info.id == 1:
        made[0] += 1
        if made[0] == 2:
            batch["narration_id"] = [Unpicklable(x) for x in batch["narration_id"]]
    return batch


out = {}


def leap(key, *argv):
    sys.argv = ["leap", *argv]
    print(f"@@ start {key}", file=sys.stderr, flush=True)
    t = time.monotonic()
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = e.code or 0
    sys.stderr.flush()
    out[key] = {"code": code, "seconds": time.monotonic() - t}
    print(f"@@ end {key}", file=sys.stderr, flush=True)


train = ["train", "--config", str(wd / "mini.yaml"), "--workdir", str(wd)]
dataset.collate_clips = losing
leap("lost", *train, "--name", "r")
last = wd / "runs" / "r" / "checkpoints" / "last.pt"
out["kept_step"] = torch.load(last, weights_only=True)["step"] if last.exists() else None
out["children"] = [p.pid for p in multiprocessing.active_children()]
dataset.collate_clips = original
leap("resume", *train, "--name", "r", "--resume")
leap("clean", *train, "--name", "clean")
a, b = (torch.load(wd / "runs" / n / "checkpoints" / "last.pt", weights_only=True) for n in ("r", "clean"))
out["steps"] = [a["step"], b["step"]]
out["same_weights"] = all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
out["logged"] = [json.loads(x)["step"] for x in (wd / "runs" / "r" / "metrics.jsonl").read_text().splitlines()]
print(json.dumps(out), flush=True)
'''


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    base = tmp_path_factory.mktemp("s57attack")
    (base / "wd").mkdir()
    got = {"train": ScriptJob(base, "train", TRAIN, str(base / "wd"), str(ROOT), env=ENV),
           "replace": ScriptJob(base, "pool:replace", POOL, "replace", str(HUNG_AFTER), env=ENV),
           "starts": ScriptJob(base, "pool:starts", POOL, "starts", env=ENV),
           "_handle_tasks": ScriptJob(base, "pool:tasks", POOL, "_handle_tasks", env=ENV),
           "_handle_results": ScriptJob(base, "pool:results", POOL, "_handle_results", env=ENV),
           "wd": base / "wd"}
    try:
        yield got
    finally:
        for job in got.values():
            if isinstance(job, ScriptJob):
                job.stop()


# ---- new_pool: a worker or a thread that cannot start --------------------------------------------------------------

def test_a_pool_whose_first_second_or_third_worker_cannot_start_raises_at_once_and_leaves_no_worker(jobs):
    got = jobs["starts"].result()
    for k in ("0", "1", "2"):
        case = got[k]
        assert case["error"] == "BlockingIOError" and case["started"] == int(k), (k, case)
        assert case["seconds"] < 3, (k, case)  # (SIGKILLed and joined, not a wait on a fresh fork's lost SIGTERM)
        assert case["running"] == [] and case["threads"] == [], (k, case)


@pytest.mark.parametrize("which", ["_handle_tasks", "_handle_results"])
def test_a_pool_whose_later_thread_cannot_start_leaves_no_worker_or_thread_running(jobs, which):
    """Pool.__init__ starts its worker-handler thread, then the task and result handlers; under a process limit
    (ulimit -u counts threads) the second or third can fail. Measured: `build-shards --workers 2` then says its line
    after about 5.6 s, not 1 s (new_pool's join(5) waits on a replacement); `extract --workers 2` (spawn) prints
    the replacements' "Traceback ... EOFError: Ran out of input" under its line about one run in two; a stage run
    in-process (a notebook, a driver script) keeps two workers and the thread after it has returned.
    Was wrong: new_pool SIGKILLed the workers, but the worker-handler thread, already running, started new workers
    in their place: they and the thread were left running. It is stopped first now."""
    got = jobs[which].result()
    assert got["error"] == "RuntimeError: can't start new thread", got
    assert got["running"] == [] and got["threads"] == [], got


def test_a_worker_killed_mid_run_whose_replacement_cannot_start_is_said_not_waited_for(jobs):
    """The out-of-memory killer takes a worker while the user's other jobs hold the process limit: the pool's
    worker-handler thread fails to start its replacement (an "Exception in thread ... _handle_workers" traceback)
    and the killed worker's task never comes.
    Was wrong: pool_results noticed a dead worker only by its replacement's new pid, and waited for ever after
    the thread's traceback; a worker that ended is dead whether replaced or not, and the thread's end is quiet."""
    job = jobs["replace"]
    got = job.result()
    assert got["raised"] is not None and got["seconds"] < HUNG_AFTER, f"waited for the lost task: {job.err[-800:]}"
    assert "a worker process died (killed by SIGKILL)" in got["raised"], got
    assert "Traceback" not in job.err, job.err[-1500:]


# ---- a DataLoader worker that cannot hand a batch over ------------------------------------------------------------

def _said(err: str, key: str) -> list[str]:
    """What the run ``key`` said on stderr, less warnings and the run's first line."""
    part = err.split(f"@@ start {key}\n", 1)[1].split(f"@@ end {key}", 1)[0]
    return [x for x in part.splitlines() if x.strip() and not x.startswith(("WARNING ", "run "))]


def test_train_whose_loader_worker_cannot_hand_a_batch_over_stops_in_one_line_and_resumes_to_the_same_weights(jobs):
    job = jobs["train"]
    got = job.result(90)
    lost = _said(job.err, "lost")
    assert got["lost"]["code"] == 2 and "Traceback" not in job.err, job.err[-2500:]
    assert got["lost"]["seconds"] < 60, got  # (not the loader's 900 s wait for the lost batch)
    worker = [x for x in lost if x.startswith("leap: a DataLoader worker could not hand a batch over")]
    errors = [x for x in lost if x.startswith("error:")]
    assert len(worker) == 1 and "TypeError: cannot pickle this narration_id" in worker[0], lost
    assert len(errors) == 1 and len(lost) == 2, lost
    assert "could not hand a batch over" in errors[0] and "data.num_workers" in errors[0], errors
    assert "the same command with --resume" in errors[0], errors  # (train's run had started)
    # (the batch is epoch 2's second: the run stops after epoch 1's 3 steps or epoch 2's first, as the worker's end
    # comes before or after the main process has taken epoch 2's first batch)
    assert got["kept_step"] in (3, 4) and got["children"] == [], got
    assert got["resume"]["code"] == 0 and got["clean"]["code"] == 0, job.err[-2500:]
    assert got["steps"] == [6, 6] and got["same_weights"], got
    assert got["logged"] == [1, 2, 3, 4, 5, 6], got  # (each step once in metrics.jsonl)


# ---- the advice's --resume -----------------------------------------------------------------------------------------

def test_a_dead_loader_workers_advice_in_ablate_names_no_option_ablate_lacks(monkeypatch, capsys):
    """`leap ablate --set data.num_workers=2` (or a config with workers, as the EPIC ones): a DataLoader worker
    killed in a cell's training. ablate's own rerun trains that cell again; the advice must not send the user to an
    option the command refuses (the same for a driver script that runs evaluate after train in one Python).
    Was wrong: dataset._again gave train's words whenever a train run had started in the process (NEXT_RUN);
    common.rerun now takes the command from the command line where its caller does not know it."""
    from leap_cli.common import NEXT_RUN
    from leap_cli.shards.dataset import _died_error

    code, _, err = leap_main(monkeypatch, capsys, "ablate", "--resume")
    assert code == 2 and "--resume" in err, err  # (ablate has no --resume)
    monkeypatch.setattr(sys, "argv", ["leap", "ablate", "--workdir", "abl", "--set", "data.num_workers=2"])
    monkeypatch.setitem(NEXT_RUN, "train", "resume")  # (the cell's leap train has started its run)
    died = RuntimeError("DataLoader worker (pid 7) is killed by signal: Killed.")
    line = _died_error(died, "data.num_workers", []).one_line()
    assert "run the same command" in line, line
    assert "--resume" not in line, line
