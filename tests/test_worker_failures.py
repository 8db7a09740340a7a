"""Worker processes that fail: a pool worker that cannot start or that dies mid-task (the kernel's out-of-memory
killer), and the memory errors of a capped address space (``ulimit -v``), each said in one line."""

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from leap_cli.common import memory_fix, out_of_memory, warn_small_address_space

REPO = Path(__file__).resolve().parents[1]


# Each pool runs in a Python of its own (forked there, as build-shards' pool is): a fork of pytest-xdist's worker,
# whose threads hold locks, could hang, and so did a spawned pool under pytest's capture once.
POOL = """
import multiprocessing, os, signal, sys, time
from leap_cli.common import pool_results, pool_worker_ready, start_pool_worker, stop_pool
from leap_cli.errors import LeapError

def cannot_start():
    raise ImportError("libopenblas.so.0: failed to map segment from shared object")

def task(x):
    pool_worker_ready()
    time.sleep(x)
    return x

if __name__ == "__main__":
    import faulthandler
    faulthandler.dump_traceback_later(45, exit=True)  # (a hang says where)
    init = cannot_start if sys.argv[1] == "cannot-start" else (lambda: None)
    pool = multiprocessing.get_context("fork").Pool(2, initializer=start_pool_worker, initargs=(init,))
    t = time.monotonic()
    try:
        results = pool_results(pool, pool.imap(task, [0, 30, 30]), poll=0.5)
        if sys.argv[1] in ("killed", "crashed"):
            assert next(results) == 0
            os.kill(pool._pool[0].pid, signal.SIGKILL if sys.argv[1] == "killed" else signal.SIGSEGV)
            t = time.monotonic()
        elif sys.argv[1] == "killed-early":  # (before the first result is asked for)
            time.sleep(0.5)
            os.kill(pool._pool[1].pid, signal.SIGKILL)
            time.sleep(0.5)  # (the pool has replaced it)
            t = time.monotonic()
        list(results)
        print("no error")
    except LeapError as e:
        print(f"{time.monotonic() - t:.1f} s:", e.one_line())
    finally:  # (as the stages stop a pool: a worker killed holding the task queue's lock hangs pool.terminate)
        sys.stdout.flush()
        stop_pool(pool, grace=2)
"""


def _pool_run(tmp_path, how: str) -> str:
    script = tmp_path / "pool.py"
    script.write_text(POOL)
    r = subprocess.run([sys.executable, str(script), how], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_a_pool_worker_that_cannot_start_stops_the_stage_in_one_line(tmp_path):
    """Was wrong: a pool worker whose start failed was replaced by the pool, which failed the same way, for ever
    (`extract --workers 2` under a memory cap hung)."""
    out = _pool_run(tmp_path, "cannot-start")
    assert "out of memory (ImportError: libopenblas.so.0: failed to map segment" in out, out


def test_a_pool_worker_killed_mid_task_stops_the_stage_in_one_line(tmp_path):
    """Was wrong: a worker killed mid-task (the kernel's out-of-memory killer) was replaced and its task waited for
    for ever: the stage hung."""
    out = _pool_run(tmp_path, "killed")
    assert "a worker process died (killed by SIGKILL)" in out and "out-of-memory killer" in out, out
    assert float(out.split(" s:")[0]) < 10, out


def test_a_pool_worker_that_crashed_is_not_said_to_be_out_of_memory(tmp_path):
    """Was wrong: every worker's death was given the out-of-memory killer's advice, a SIGSEGV's (or SIGBUS's) too."""
    out = _pool_run(tmp_path, "crashed")
    assert "a worker process died (killed by SIGSEGV)" in out and "out-of-memory" not in out, out
    assert "--workers 1 shows the error" in out, out


def test_a_pool_worker_killed_before_the_first_result_is_seen(tmp_path):
    """Was wrong: the pool's workers were learnt at the first result asked for; one killed before that (with its
    task) was replaced unseen, and the stage waited for its task for ever."""
    out = _pool_run(tmp_path, "killed-early")
    assert "a worker process died (killed by SIGKILL)" in out, out
    assert float(out.split(" s:")[0]) < 10, out


def test_memory_errors_are_told_from_others():
    assert memory_fix(MemoryError()) is not None
    assert memory_fix(ImportError("libtorch_cpu.so: failed to map segment from shared object")) is not None
    assert memory_fix(OSError(12, "Cannot allocate memory")) is not None
    assert memory_fix(ImportError("No module named 'open_clip'")) is None
    assert memory_fix(OSError(2, "No such file or directory")) is None
    assert out_of_memory(ValueError("x")) is None
    assert out_of_memory(MemoryError()).one_line().startswith("out of memory (MemoryError) (")


def test_the_cap_is_named_with_what_to_do():
    code = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30)); "
            "from leap_cli.common import out_of_memory, warn_small_address_space; "
            "print(out_of_memory(MemoryError()).fix); warn_small_address_space(2)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    assert "capped at 3 GiB (ulimit -v 3145728)" in r.stdout
    assert "a worker process needs" not in r.stderr  # (3 GiB is enough for a worker)
    code = code.replace("3 << 30, 3 << 30", "768 << 20, 768 << 20")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "the address space is capped at 0.75 GiB (ulimit -v 786432): a worker process needs" in r.stderr, r.stderr


def test_no_warning_for_one_worker_or_no_cap(caplog):
    with caplog.at_level(logging.WARNING):
        warn_small_address_space(1)
        warn_small_address_space(4)  # (this process has no cap)
    assert "address space" not in caplog.text


SHARER = """
import multiprocessing.reduction, multiprocessing.resource_sharer as rs, os, socket, sys, time
if sys.argv[1] == "leap":
    from leap_cli.shards.dataset import loader_worker_init
    loader_worker_init(0)
r, w = os.pipe()
multiprocessing.reduction.DupFd(r)  # (a batch's file to hand over: the resource sharer's thread starts)
s = socket.socket(socket.AF_UNIX)
s.connect(rs._resource_sharer._address)
s.close()  # (the main process gone mid-handshake: the sharer's accept fails)
time.sleep(1)
print("done")
"""


def test_a_loader_workers_resource_sharer_whose_connection_fails_prints_no_traceback(tmp_path):
    """Was wrong (seen once in a train whose other DataLoader worker was killed): multiprocessing's resource sharer,
    which hands a worker's batch files over, says its connection's errors through ``sys.excepthook``, not
    ``threading.excepthook``: a traceback from ``self._listener.accept()`` came on top of leap's one line."""
    script = tmp_path / "sharer.py"
    script.write_text(SHARER)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    plain = subprocess.run([sys.executable, str(script), "plain"], capture_output=True, text=True, timeout=60, env=env)
    assert plain.stdout.strip() == "done" and "Traceback" in plain.stderr  # (what a worker without leap's hook says)
    leap = subprocess.run([sys.executable, str(script), "leap"], capture_output=True, text=True, timeout=60, env=env)
    assert leap.stdout.strip() == "done" and leap.stderr == "", leap.stderr


def test_a_dead_loader_workers_advice_says_resume_only_in_a_train_that_started(monkeypatch):
    """Was wrong: evaluate's line for a DataLoader worker that died ended "(leap train --resume goes on from the last
    checkpoint)", as train's did."""
    from leap_cli.common import NEXT_RUN
    from leap_cli.shards.dataset import LOST_BATCH_EXIT, _died_error

    monkeypatch.setattr(sys, "argv", ["leap", "evaluate", "--workers", "2"])
    monkeypatch.delitem(NEXT_RUN, "train", raising=False)
    died = RuntimeError("DataLoader worker (pid 7) exited unexpectedly")
    line = _died_error(died, "--workers", []).one_line()
    assert "--resume" not in line and "run the same command again" in line, line

    class Lost:  # (a worker that ended after a batch it could not hand over)
        pid, exitcode = 7, LOST_BATCH_EXIT

        def is_alive(self):
            return False

    line = _died_error(died, "--workers", [Lost()]).one_line()
    assert "(pid 7) could not hand a batch over" in line and "ulimit -u" in line and "ulimit -Hn" in line, line
    assert "--resume" not in line
    monkeypatch.setattr(sys, "argv", ["leap", "train", "--name", "r"])
    monkeypatch.setitem(NEXT_RUN, "train", "resume")
    line = _died_error(died, "data.num_workers", []).one_line()
    assert "the same command with --resume" in line and "data.num_workers" in line, line


STOP = """
import multiprocessing, os, sys, time
from leap_cli.common import new_pool, start_worker, stop_pool

def task(x):
    return x

if __name__ == "__main__":
    pool = new_pool(multiprocessing.get_context(sys.argv[1]), 2, start_worker, (os.getpid(),))
    assert list(pool.imap(task, [1, 2])) == [1, 2]
    time.sleep(0.5)  # (both workers idle: one waits for a task holding the task queue's read lock)
    t = time.monotonic()
    stop_pool(pool)
    print(f"{time.monotonic() - t:.1f}", sum(p.is_alive() for p in pool._pool))
"""


def test_stop_pool_of_idle_workers_does_not_wait_out_its_grace(tmp_path):
    """Was wrong: a stage that stopped on an error with a worker idle waited stop_pool's whole grace (10 s) before
    its line: the SIGKILLed worker held the task queue's read lock, which terminate() takes (and the pool's worker
    handler had started a replacement, which took it again)."""
    script = tmp_path / "stop.py"
    script.write_text(STOP)
    for method in ("fork", "spawn"):
        for _ in range(3):  # (which worker holds the lock, and when, varies from run to run)
            r = subprocess.run([sys.executable, str(script), method], capture_output=True, text=True, timeout=60,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
            assert r.returncode == 0, r.stderr[-1500:]
            seconds, alive = r.stdout.split()
            assert float(seconds) < 3 and alive == "0", (method, r.stdout)


def test_stop_pool_whose_terminate_fails_adds_no_traceback(monkeypatch):
    """Was wrong (seen once in a full run under load, test_attack_s57_s57attack's killed worker): terminate()
    drains the task queue, where a worker SIGKILLed mid-read had left half a task: "Exception in thread
    leap-pool-stop: ... EOFError: Ran out of input" came on top of the stage's one line."""
    import threading

    from leap_cli.common import stop_pool

    class Pool:
        _pool: list = []

        def terminate(self):
            raise EOFError("Ran out of input")

        def join(self):
            raise AssertionError("not reached")

    seen = []
    monkeypatch.setattr(threading, "excepthook", seen.append)
    stop_pool(Pool(), grace=2.0)
    assert seen == []


KILLED_LOADER = """
import os, signal, sys, time
import torch
from leap_cli.shards.dataset import shard_loader

class Samples(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        z = torch.zeros(2)
        return {"video": torch.zeros(3, 2, 4, 4), "verb_class": 0, "noun_class": 0, "has_program": False,
                "program_steps": z, "conditions": z, "step_conditions": z, "narration_id": f"x_{i}"}

it = iter(shard_loader(Samples(), batch_size=2, workers=2))
next(it)  # (each worker has passed a batch's tensors over a socket in TMPDIR by now)
print(len([n for n in os.listdir(os.environ["TMPDIR"]) if n.startswith("pymp-")]), flush=True)
for w in it._workers:
    os.kill(w.pid, signal.SIGKILL)  # (the out-of-memory killer, or leap's own stop)
    os.waitpid(w.pid, 0)
"""


def test_killed_loader_workers_leave_no_socket_folder_in_tmpdir(tmp_path):
    """Was wrong: each DataLoader worker made a folder of its own in TMPDIR (pymp-XXXXXXXX, for the socket it
    passes batches through) that only its own exit removed: a worker killed (out of memory, leap's stop) left it
    there, one per worker per stopped run. The workers now use the folder of the process that forks them."""
    tmp = Path(tempfile.mkdtemp(prefix="s58-", dir="/tmp" if os.path.isdir("/tmp") else None))  # (short: sockets)
    try:
        script = tmp_path / "killed.py"
        script.write_text(KILLED_LOADER)
        env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp)}
        run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
        assert run.stdout.split() == ["1"], (run.stdout, run.stderr[-2000:])  # (one folder while it ran)
        assert not [n for n in os.listdir(tmp) if n.startswith("pymp-")], os.listdir(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
