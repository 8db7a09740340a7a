"""Helpers for tests of worker processes."""

from __future__ import annotations

import os
import time


def alive_after(pids: list[int], seconds: float = 5.0) -> list[int]:
    """The processes of ``pids`` still running (not gone, not zombies) after waiting up to ``seconds``."""
    deadline = time.time() + seconds
    alive = list(pids)
    while alive and time.time() < deadline:
        time.sleep(0.1)
        alive = [p for p in pids if os.path.exists(f"/proc/{p}")
                 and open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"]
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
