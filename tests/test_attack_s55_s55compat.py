"""Pythons newer than the 3.11 here (pyproject.toml: requires-python >=3.11, no upper bound; docs/development.md:
the suite passes on 3.11, 3.12 and 3.13).

* Python 3.14 makes "forkserver" the default start method on Linux. extract and check-shards start their pools
  with "spawn", build-shards with "fork", all named; the DataLoaders of train and evaluate
  (``shards.dataset.shard_loader``) take the interpreter's default. Emulated here by a subprocess that calls
  ``multiprocessing.set_start_method("forkserver", force=True)`` before it makes leap's loaders, beside the same
  under "fork" (3.11-3.13's default), whose behaviour is what the xfails ask for.
* Python 3.12+ warns (DeprecationWarning "This process is multi-threaded, use of fork() may lead to deadlocks in
  the child") where a process with threads forks.
* APIs removed or changed in 3.12-3.14: a static look over leap_cli/ (and benchmarks/).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import threading
import warnings
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Run once for the module, in a session of its own (it sends SIGTERM to its process group, as `timeout` and
# Slurm's scancel do), under "fork" and then "forkserver": leap's shard_loader + Guarded over tiny datasets.
LOADERS = r'''
import json, os, signal, sys, time

import torch
from torch.utils.data import IterableDataset

from leap_cli.shards import dataset as D  # (here, so that the fork server has it loaded: its workers start at once)

DEATH = os.environ["S55_DEATH"]


def sample(name):
    return {"video": torch.zeros(3, 1, 2, 2, dtype=torch.uint8), "verb_class": 0, "noun_class": 0,
            "has_program": False, "program_steps": torch.zeros(2, 5, dtype=torch.long),
            "conditions": torch.zeros(2), "step_conditions": torch.zeros(2, 2), "narration_id": name}


class Strategy(IterableDataset):  # its one sample is named by how this worker passes tensors
    def __iter__(self):
        import torch.multiprocessing as tmp

        yield sample(tmp.get_sharing_strategy())


class DiesAtStart(IterableDataset):  # a worker the OOM killer takes before its first batch
    def __iter__(self):
        with open(DEATH, "w") as f:
            f.write(repr(time.time()))
        os.kill(os.getpid(), signal.SIGKILL)
        yield sample("never")


class Six(IterableDataset):
    def __iter__(self):
        for i in range(6):
            time.sleep(0.02)
            yield sample(str(i))


def run(method):
    import multiprocessing as mp

    mp.set_start_method(method, force=True)
    out = {}
    D.LOADER_TIMEOUT = 60
    workers = D.loader_workers(1, "--workers")  # (soft limit under 4096: leap asks for "file_system" sharing)
    import torch.multiprocessing as tmp

    out["parent_strategy"] = tmp.get_sharing_strategy()
    out["worker_strategy"] = [n for b in D.Guarded(D.shard_loader(Strategy(), batch_size=1, workers=workers),
                                                   "--workers") for n in b["narration_id"]]
    D.LOADER_TIMEOUT = out["timeout"] = 1.0  # (900 in leap)
    t = time.time()
    try:
        list(D.Guarded(D.shard_loader(DiesAtStart(), batch_size=1, workers=1), "--workers"))
        out["died"] = "no error"
    except Exception as e:
        out["died"] = f"{type(e).__name__}: {e}"
    out["said_after_s"] = round(time.time() - t, 2)
    try:
        out["said_after_death_s"] = round(time.time() - float(open(DEATH).read()), 2)
    except (OSError, ValueError):
        out["said_after_death_s"] = None
    stops = []
    signal.signal(signal.SIGTERM, lambda *a: stops.append(1))  # a stage's own: stop at the next boundary
    got = []
    try:
        for b in D.Guarded(D.shard_loader(Six(), batch_size=1, workers=1), "--workers"):
            got += b["narration_id"]
            if len(got) == 1:
                os.killpg(0, signal.SIGTERM)
        out["group_sigterm"] = "no error"
    except Exception as e:
        out["group_sigterm"] = f"{type(e).__name__}: {e}"
    out["batches"], out["stops"] = got, len(stops)
    return out


if __name__ == "__main__":
    import resource

    for stop in (signal.SIGTERM, signal.SIGHUP):  # (not ignored as pytest's process may have them: the fork server
        signal.signal(stop, signal.SIG_DFL)  # it starts would inherit that)

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = 1024 if hard == resource.RLIM_INFINITY else min(1024, hard)  # a cluster node's usual soft limit
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    print(json.dumps({m: run(m) for m in ("fork", "forkserver")}))
'''


class _Runs:
    def __init__(self, tmp: Path):
        script = tmp / "loaders.py"
        script.write_text(LOADERS)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
               "S55_DEATH": str(tmp / "death"), "TMPDIR": str(tmp)}
        self.proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=env, cwd=ROOT, start_new_session=True)
        self._out: dict | None = None

    def result(self) -> dict:
        if self._out is None:
            try:
                out, err = self.proc.communicate(timeout=90)
            except subprocess.TimeoutExpired:
                self.stop()
                pytest.fail("the loaders' subprocess hung")
            assert self.proc.returncode == 0, err.decode(errors="replace")[-3000:]
            self._out = json.loads(out.decode().strip().splitlines()[-1])
        return self._out

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.communicate()


@pytest.fixture(scope="module", autouse=True)
def loader_runs(tmp_path_factory):
    """Started before the file's first test, read by the tests that need it (the others run meanwhile)."""
    runs = _Runs(tmp_path_factory.mktemp("s55loaders"))
    yield runs
    runs.stop()


# --- build-shards: fork while a thread runs (Python 3.12+ warns: deadlocks in the child) ------------------------

def _two_videos(root: Path) -> Path:
    """An EPIC-layout root of two 2 s videos as 10 fps rgb_frames folders, one training segment each (as
    tests/test_shards.py's, smaller, and without importing torch)."""
    import shutil

    import cv2
    import numpy as np

    ann = root / "annotations"
    ann.mkdir(parents=True)
    for f in ("EPIC_100_verb_classes.csv", "EPIC_100_noun_classes.csv"):
        shutil.copy(ROOT / "tests" / "data" / "epic100" / f, ann / f)
    head = ("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,"
            "stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes\n")
    (ann / "EPIC_100_train.csv").write_text(head + "".join(
        f"{v}_0,P01,{v},00:00:00.30,00:00:00.30,00:00:01.50,4,15,take plate,take,0,plate,2,['plate'],[2]\n"
        for v in ("P01_01", "P01_02")))
    (ann / "EPIC_100_validation.csv").write_text(head)
    (ann / "EPIC_100_video_info.csv").write_text(
        "video_id,duration,fps,resolution\nP01_01,2.0,10.0,48x32\nP01_02,2.0,10.0,48x32\n")
    for v in ("P01_01", "P01_02"):
        d = root / "P01" / "rgb_frames" / v
        d.mkdir(parents=True)
        for n in range(1, 21):
            cv2.imwrite(str(d / f"frame_{n:010d}.jpg"), np.full((32, 48, 3), 8 * n, np.uint8))
    return root


FORK_UNDER_A_BAR = """
import os, sys, threading, time
from rich.console import Console
from leap_cli.progress import stage_progress

with stage_progress("x", "{task.description}", console=Console(force_terminal=True)) as bar:
    bar.add_task("t", total=10)
    locks = [bar.live._lock, bar._lock, bar.console._lock]  # (what its thread holds as it redraws)
    held = threading.Event()

    def redraw():
        for lock in locks:
            lock.acquire()
        held.set()
        time.sleep(0.5)
        for lock in reversed(locks):
            lock.release()

    threading.Thread(target=redraw).start()
    held.wait()
    pid = os.fork()  # (build-shards' pool, a DataLoader's workers)
    if pid == 0:
        sys.stderr.write("a worker's line\\n")  # (through the bar's redirected stderr)
        sys.stderr.flush()
        os._exit(0)
    deadline = time.monotonic() + 10
    while not os.waitpid(pid, os.WNOHANG)[0]:
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            print("the forked process hung", file=sys.__stderr__)
            sys.exit(3)
        time.sleep(0.02)
"""


def test_a_process_forked_while_a_bar_redraws_can_write(tmp_path):
    """Was wrong: in a terminal, build-shards --workers N forks its pool (writer.py, 'fork') inside its rich progress
    bar, whose thread redraws it holding the Live display's, the Progress' and the Console's locks; a process forked
    at that moment held copies of them, and its first line on stderr (through the bar) waited for ever. (Python
    3.12+ warns of forks in a process with threads for this reason.) The bars' locks are now taken around a fork."""
    script = tmp_path / "fork_under_a_bar.py"
    script.write_text(FORK_UNDER_A_BAR)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]


# --- what 3.12-3.14 removed or changed: a static look -----------------------------------------------------------

REMOVED_MODULES = {  # 3.12: distutils, imp, asynchat, asyncore, smtpd; 3.13: PEP 594's dead batteries, lib2to3
    "distutils", "imp", "asynchat", "asyncore", "smtpd", "aifc", "audioop", "cgi", "cgitb", "chunk", "crypt",
    "imghdr", "mailcap", "msilib", "nis", "nntplib", "ossaudiodev", "pipes", "sndhdr", "spwd", "sunau", "telnetlib",
    "uu", "xdrlib", "lib2to3"}

# calls removed, or deprecated for removal, in 3.12-3.14 (by the called name, whatever object it is called on)
GONE_CALLS = {
    "utcnow": "datetime.utcnow (deprecated 3.12)", "utcfromtimestamp": "deprecated 3.12",
    "getdefaultlocale": "locale (deprecated 3.11, removal planned)", "get_event_loop": "asyncio: RuntimeError in 3.14 "
    "without a running loop", "iscoroutinefunction": "asyncio's deprecated 3.14", "get_event_loop_policy":
    "deprecated 3.14", "set_event_loop_policy": "deprecated 3.14", "get_child_watcher": "removed 3.14",
    "set_child_watcher": "removed 3.14", "find_loader": "pkgutil, removed 3.14", "get_loader": "pkgutil, removed 3.14",
    "link_to": "Path.link_to, removed 3.12", "readfp": "configparser, removed 3.12", "wrap_socket":
    "ssl.wrap_socket, removed 3.12", "makeSuite": "unittest, removed 3.13", "findTestCases": "unittest, removed 3.13",
    "resetlocale": "locale, removed 3.13", "currentThread": "threading alias", "activeCount": "threading alias",
    "setDaemon": "threading alias", "extractall": "tarfile: 3.14's default filter is 'data'",
}


@lru_cache(maxsize=None)
def _findings() -> dict[str, list[str]]:
    """One look over every source of leap_cli/ and benchmarks/: what each test below refuses, by kind."""
    found: dict[str, list[str]] = {"modules": [], "calls": [], "syntax": [], "pools": []}
    for folder in ("leap_cli", "benchmarks"):
        for p in sorted((ROOT / folder).rglob("*.py")):
            path = str(p.relative_to(ROOT))
            with warnings.catch_warnings(record=True) as said:  # (the parser's: invalid escape sequences)
                warnings.simplefilter("always")
                tree = compile(p.read_text(encoding="utf-8"), path, "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
            # (only the parser's own: a ResourceWarning of an object another test left, collected during the
            # compile, is recorded here too)
            found["syntax"] += [f"{path}:{w.lineno} {w.category.__name__}: {w.message}" for w in said
                                if issubclass(w.category, (SyntaxWarning, DeprecationWarning))]
            _finally_exits(tree, path, found["syntax"])
            for node in ast.walk(tree):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                             else [node.module or ""] if not node.level else [])
                    found["modules"] += [f"{path}:{node.lineno} {n}" for n in names
                                         if n.split(".")[0] in REMOVED_MODULES]
                elif isinstance(node, ast.Attribute) and node.attr in ("Num", "Str", "Bytes", "NameConstant",
                                                                       "Ellipsis") and \
                        isinstance(node.value, ast.Name) and node.value.id == "ast":  # removed 3.14
                    found["calls"].append(f"{path}:{node.lineno} ast.{node.attr}")
                elif isinstance(node, ast.Call):
                    _call(node, path, found)
    return found


def _call(node: ast.Call, path: str, found: dict) -> None:
    f = node.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
    owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
    kws = {k.arg for k in node.keywords}
    if name in GONE_CALLS and not (name == "extractall" and "filter" in kws):
        found["calls"].append(f"{path}:{node.lineno} {name}: {GONE_CALLS[name]}")
    if name == "rmtree" and "onerror" in kws:  # deprecated 3.12 (onexc)
        found["calls"].append(f"{path}:{node.lineno} rmtree(onerror=)")
    if name == "warn" and owner in ("log", "logger", "logging"):  # Logger.warn: removed 3.13
        found["calls"].append(f"{path}:{node.lineno} {owner}.warn")
    if name == "extract" and "tar" in owner.lower() and "filter" not in kws:
        found["calls"].append(f"{path}:{node.lineno} TarFile.extract without filter=")
    if name in ("Pool", "Process", "ProcessPoolExecutor") and owner in ("mp", "multiprocessing", "futures") and \
            path.startswith("leap_cli"):
        found["pools"].append(f"{path}:{node.lineno} {owner}.{name}")


def _finally_exits(node, path: str, hits: list, in_finally: bool = False, in_loop: bool = False) -> None:
    """return/break/continue that leave a finally block (PEP 765: a SyntaxWarning on 3.14)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
        in_finally = in_loop = False  # (a function of its own: its return leaves no finally)
    elif in_finally and (isinstance(node, ast.Return) or isinstance(node, (ast.Break, ast.Continue)) and not in_loop):
        hits.append(f"{path}:{node.lineno} {type(node).__name__.lower()} leaves a finally block")
    if isinstance(node, (ast.Try, getattr(ast, "TryStar", ast.Try))):
        for c in node.body + node.handlers + node.orelse:
            _finally_exits(c, path, hits, in_finally, in_loop)
        for c in node.finalbody:
            _finally_exits(c, path, hits, True, False)
        return
    loop = in_loop or isinstance(node, (ast.For, ast.AsyncFor, ast.While))
    for c in ast.iter_child_nodes(node):
        _finally_exits(c, path, hits, in_finally, loop)


def test_no_module_removed_in_3_12_or_3_13_is_imported():
    assert not _findings()["modules"], _findings()["modules"]


def test_no_call_to_an_api_removed_or_changed_in_3_12_to_3_14():
    """Among them tarfile's extractall/extract without filter= (3.14 extracts with the 'data' filter by default):
    leap reads its shards with its own parser (shards/format.py), it extracts nothing."""
    assert not _findings()["calls"], _findings()["calls"]


def test_sources_parse_without_the_syntax_warnings_of_3_12_and_3_14():
    """Invalid escape sequences ("\\d" in a plain string: DeprecationWarning on 3.11, SyntaxWarning on 3.12+) and
    return/break/continue leaving a finally block (PEP 765: SyntaxWarning on 3.14)."""
    assert not _findings()["syntax"], _findings()["syntax"]


def test_every_process_pool_of_leap_names_its_start_method():
    """Holds: extract (spawn), check-shards (spawn) and build-shards (fork) make their pools from
    ``multiprocessing.get_context(...)``: 3.14's forkserver default does not reach them (the DataLoaders below do)."""
    assert not _findings()["pools"], _findings()["pools"]


# --- DataLoaders under Python 3.14's default start method (forkserver) ------------------------------------------

def test_under_fork_leaps_loaders_keep_what_they_promise(loader_runs):
    """Holds (3.11-3.13's default, fork): the workers share tensors as leap set (file_system under a low limit of
    open files), a worker that dies before its first batch is said at once, and a process group's SIGTERM leaves
    the batches coming (the workers leave the signal to the main process, docs/train.md)."""
    r = loader_runs.result()["fork"]
    assert r["parent_strategy"] == "file_system" and r["worker_strategy"] == ["file_system"], r
    assert "killed by SIGKILL" in r["died"] and r["said_after_s"] < r["timeout"], r
    assert r["said_after_death_s"] is not None and r["said_after_death_s"] < 1.0, r
    assert r["group_sigterm"] == "no error" and r["batches"] == [str(i) for i in range(6)] and r["stops"] == 1, r


def test_forkserver_workers_share_tensors_as_leap_set(loader_runs):
    """Was wrong: BUG (Python 3.14): share_by_name_under_a_low_limit (shards/dataset.py:531) sets torch's sharing
    strategy in the main process only; forkserver/spawn workers start with torch's default file_descriptor, so
    under a soft limit of open files below 4096 the batches lost at the limit, which that setting was made for,
    come back."""
    r = loader_runs.result()["forkserver"]
    assert r["worker_strategy"] == [r["parent_strategy"]] == ["file_system"], r


def test_forkserver_worker_that_dies_before_its_first_batch_is_said_at_once(loader_runs):
    """Was wrong: BUG (Python 3.14): a DataLoader worker that dies before its first batch (OOM killer) is said only
    after LOADER_TIMEOUT (900 s in leap): watch_workers (shards/dataset.py:360) relies on SIGCHLD, which comes
    only for the main process's own children (fork); forkserver's workers are the fork server's, and torch with
    timeout=LOADER_TIMEOUT checks nothing before it."""
    r = loader_runs.result()["forkserver"]
    assert "killed by SIGKILL" in r["died"], r
    assert r["said_after_s"] < r["timeout"], r  # (not at the end of the loader's timeout, 900 s in leap)


def test_forkserver_loader_goes_on_after_a_process_group_sigterm(loader_runs):
    """Was wrong: BUG (Python 3.14): a process group's SIGTERM (timeout, scancel) kills the fork server (default
    SIGTERM), and with it the workers (loader_worker_init, shards/dataset.py:317: die_with_parent of
    os.getppid(), the fork server); `leap train --set optim.accum_steps=4 --set data.num_workers=2` then ends
    with 'DataLoader worker ... exited unexpectedly (... memory)', exit 2, not 143; `leap evaluate --workers 2`
    at times waits LOADER_TIMEOUT (900 s)."""
    r = loader_runs.result()["forkserver"]
    assert r["group_sigterm"] == "no error" and r["batches"] == [str(i) for i in range(6)], r
