"""Helpers for tests of worker processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def running(pids: list[int]) -> list[int]:
    """Those of ``pids`` still running (not gone, not zombies)."""
    out = []
    for pid in pids:
        try:
            if open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
                out.append(pid)
        except OSError:
            pass
    return out


def alive_after(pids: list[int], seconds: float = 5.0) -> list[int]:
    """The processes of ``pids`` still running (not gone, not zombies) after waiting up to ``seconds``."""
    deadline = time.time() + seconds
    alive = list(pids)
    while alive and time.time() < deadline:
        time.sleep(0.1)
        alive = running(pids)
    return alive


def leap_main(monkeypatch, capsys, *argv) -> tuple[int | str | None, str, str]:
    """``leap ARGV`` run by ``leap_cli.cli.main`` in this process: (exit status, stdout, stderr); a command that ends
    well may return from main without SystemExit, or exit with None: status 0."""
    import signal
    import sys

    from leap_cli import cli

    monkeypatch.setattr(sys, "argv", ["leap", *argv])
    term = signal.getsignal(signal.SIGTERM)  # (main installs its handler, and ignores SIGTERM once it is done)
    code = 0
    try:
        cli.main()
    except SystemExit as e:
        code = e.code if e.code is not None else 0
    finally:
        signal.signal(signal.SIGTERM, term)
    out = capsys.readouterr()
    return code, out.out, out.err


def leap_here(monkeypatch, capsys):
    """``leap`` run by ``leap_main`` in this process, as a subprocess would run it (a command refused before its work
    costs ~0.05 s here, 0.3-2.5 s in a new interpreter that imports torch): ``(*args, cwd=None)`` ->
    CompletedProcess(args, returncode, stdout, stderr); args are made strings (paths, counts)."""

    import logging

    def run(*args, cwd=None):
        args = tuple(map(str, args))
        level = logging.root.level
        with monkeypatch.context() as m:
            if cwd is not None:
                m.chdir(cwd)
            # the root logger without pytest's capture handlers, as a new interpreter has it: leap's basicConfig then
            # adds its handler, and a warning goes to stderr (not to pytest's log); its handler and level go after
            m.setattr(logging.root, "handlers", [])
            try:
                code, out, err = leap_main(m, capsys, *args)
            finally:
                logging.root.setLevel(level)
        return subprocess.CompletedProcess(args, code, out, err)

    return run


def spawn_ranks(fn, args: tuple, outputs: list, nprocs: int = 2) -> None:
    """``torch.multiprocessing.spawn`` of ``fn`` over ``nprocs`` ranks, each of which writes ``outputs[rank]`` before
    its process group is torn down. gloo on CPU now and then aborts a rank in that teardown ("terminate called
    without an active exception", SIGABRT: seen once, in a CI run of session 49); once every rank's output is
    written, that abort is torch's, not the code's under test, and is let pass. Any other failure is raised."""
    from pathlib import Path

    import torch.multiprocessing as mp

    try:
        mp.spawn(fn, args=args, nprocs=nprocs)
    except mp.ProcessExitedException as e:
        if e.signal_name != "SIGABRT" or not all(Path(o).is_file() for o in outputs):
            raise


def run_together(cmds: list[list[str]], env: dict, cwd, timeout: float = 120) -> list[tuple[int, str]]:
    """Start every command at once (a job array's tasks) and wait for all: [(exit status, output)]; any still
    running at the end (a failed wait) is killed."""
    import subprocess

    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd) for c in cmds]
    out = []
    try:
        for p in procs:
            out.append((p.wait(timeout=timeout), p.stdout.read().decode(errors="replace")))
    finally:
        reap(procs)
    return out


def reap(procs) -> None:
    """Kill those of ``procs`` (Popen with a stdout pipe) still running, wait for them, and close their pipes."""
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()


class ScriptJob:
    """``script`` (Python source, written once as ``base/NAME.py``, NAME the part of ``name`` before any ``:``) run
    with ``args`` in a Python and a session of its own, started at once; ``result`` waits (bounded) for the last
    line it printed, as JSON."""

    def __init__(self, base: Path, name: str, script: str, *args: str, env: dict):
        import pytest  # noqa: F401 (result fails a test)

        path = base / f"{name.split(':')[0]}.py"
        if not path.exists():
            path.write_text(script)
        self.err_path, self.out_path = base / f"{name}.err", base / f"{name}.out"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.p = subprocess.Popen([sys.executable, str(path), *args], stdout=out, stderr=err, cwd=base,
                                      env={**env, "TMPDIR": str(base)}, start_new_session=True)

    def result(self, timeout: float = 60):
        import pytest

        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"still running after {timeout} s: {self.err[-1500:]}")
        lines = self.out_path.read_text().strip().splitlines()
        assert lines, f"exit {self.p.returncode}, no result: {self.err[-2000:]}"
        return json.loads(lines[-1])

    @property
    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.p.wait()


def run_leap(cwd, *args: str, columns: int = 200, timeout: float = 300) -> "subprocess.CompletedProcess":
    """``python -m leap_cli ARGS`` in a new process in ``cwd`` (this checkout's leap first on the path), its
    output as text, ``columns`` wide and without colour."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "COLUMNS": str(columns), "NO_COLOR": "1"}
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run([sys.executable, "-m", "leap_cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
