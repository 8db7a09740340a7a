"""Progress that shows outside a terminal too.

In a terminal every stage draws a rich progress bar. With output sent to a file or a pipe (a batch job, ``nohup``,
``| tee``) a bar draws nothing until the end, so there :func:`live_or_log` swaps it for :class:`LogProgress`,
which prints one plain line every ``LEAP_PROGRESS_EVERY`` seconds (default 10) with the count, the rate and
the time left, like torchvision's ``MetricLogger``::

    extract train: 1200/9668 (12%) 3.41/s, ETA 0:41:23, P01_11

Both take the same calls (``add_task``, ``update``, ``advance``, ``start``, ``stop``, ``with``), so a stage's
loop does not know which one it drives. :func:`stage_progress` keeps a stage's progress off a redirected stdout
(``leap evaluate ... > results.txt`` keeps the stage's results and messages alone): the bar draws on the terminal,
and progress lines outside one go to stderr, as tqdm's.
"""

from __future__ import annotations

import datetime
import os
import threading
import time
import weakref
from typing import Any

from rich.console import Console
from rich.progress import Progress, ProgressColumn

DEFAULT_EVERY = 10.0
MIN_RATE_SECONDS = 2.0  # a rate (and an ETA) only from this long after the first unit: not from one burst


def output_console(*, stderr: bool = False) -> Console:
    """The console a command prints its messages and summary on: a line is never broken inside (soft wrap: piped
    to a log, rich wraps at 80 columns, and a path or a command copied from the log was not the file or the
    command); tables still fit the width."""
    return Console(stderr=stderr, soft_wrap=True)


def progress_every() -> float:
    """Seconds between progress lines outside a terminal (``LEAP_PROGRESS_EVERY``; 0 logs every update)."""
    try:
        return max(0.0, float(os.environ.get("LEAP_PROGRESS_EVERY", DEFAULT_EVERY)))
    except ValueError:
        return DEFAULT_EVERY


def clock(seconds: float) -> str:
    """h:mm:ss, as the progress lines write times."""
    return str(datetime.timedelta(seconds=int(seconds)))


class _Task:
    def __init__(self, description: str, total: float | None, completed: float, fields: dict):
        self.description, self.total, self.completed, self.fields = description, total, completed, fields
        self.start_completed = completed
        self.t0 = time.monotonic()
        self.first: tuple[float, float] | None = None  # (time, count) when the first unit finished

    def rate(self, now: float) -> float | None:
        """Units per second since the first unit finished (the stage's start-up, loading its inputs or a model,
        does not make the ETA of a day's run hours too long); None until ``MIN_RATE_SECONDS`` after it and a unit
        more (one unit measures only the start-up: build-shards' first sample comes after its first video is
        encoded, and its ETA said 17 hours for a job of 20 s; the rest of that video's samples, written at once,
        then said 900/s for 48/s)."""
        if (self.first is not None and self.completed > self.first[1]
                and now - self.first[0] >= MIN_RATE_SECONDS):
            return (self.completed - self.first[1]) / (now - self.first[0])
        return None


class LogProgress:
    """A rich-Progress look-alike that logs a line every ``every`` seconds instead of drawing a bar."""

    def __init__(self, label: str, console: Console, every: float | None = None):
        self.label, self.console = label, console
        self.every = progress_every() if every is None else every
        self._tasks: list[_Task] = []
        self._last = time.monotonic()
        self._printed = False

    # -- the rich.progress.Progress calls leap uses
    def add_task(self, description: str = "", total: float | None = None, completed: float = 0, **fields: Any) -> int:
        self._tasks.append(_Task(description, total, completed, fields))
        return len(self._tasks) - 1

    def update(self, task_id: int, *, total: float | None = None, completed: float | None = None,
               advance: float | None = None, description: str | None = None, **fields: Any) -> None:
        t = self._tasks[task_id]
        if total is not None:
            t.total = total
        if completed is not None:
            t.completed = completed
        if advance is not None:
            t.completed += advance
        if t.first is None and t.completed > t.start_completed:
            t.first = (time.monotonic(), t.completed)
        if description is not None:
            t.description = description
        t.fields.update(fields)
        self._maybe_log(t)

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def start(self) -> None:
        self._last = time.monotonic()

    def stop(self) -> None:
        if self._printed:  # a closing line only where progress lines were shown at all
            for t in self._tasks:
                self.console.print(self.line(t, final=True), markup=False, highlight=False, soft_wrap=True)

    def __enter__(self) -> "LogProgress":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the lines
    def line(self, t: _Task, *, final: bool = False) -> str:
        now = time.monotonic()
        elapsed = max(now - t.t0, 1e-9)
        rate = (t.completed - t.start_completed) / elapsed if final else t.rate(now)
        done = f"{t.completed:g}/{t.total:g}" if t.total else f"{t.completed:g}"
        if t.total:
            done += f" ({t.completed / t.total:.0%})"
        text = f"{self.label} {t.description}".strip() + f": {done}" + (f" {rate:.2f}/s" if rate is not None else "")
        if final:
            text += f", {clock(elapsed)} elapsed"
        elif t.total and rate:
            text += f", ETA {clock((t.total - t.completed) / rate)}"
        info = " ".join(str(v) for v in t.fields.values() if v not in (None, ""))
        return text + (f", {info}" if info else "")

    def _maybe_log(self, t: _Task) -> None:
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self._printed = True
            self.console.print(self.line(t), markup=False, highlight=False, soft_wrap=True)


def live_or_log(progress: Progress, label: str) -> Progress | LogProgress:
    """``progress`` itself in a terminal; a :class:`LogProgress` printing to the same console elsewhere."""
    if progress.console.is_terminal:
        return progress
    return LogProgress(label, progress.console)


def stage_progress(label: str, *columns: str | ProgressColumn, console: Console,
                   transient: bool = False) -> Progress | LogProgress:
    """A stage's progress: a bar on the stage's own stdout ``console`` where stdout is a terminal (what the stage
    prints through that console goes above the bar: a second Console on the same terminal, rich's proxy bypassed,
    was glued onto the bar's line), else a bar on stderr where that is a terminal (stdout's file gets the results
    alone), else :class:`LogProgress` lines on stderr. A bar's processes forked meanwhile are safe from its thread
    (``_forks_safe``)."""
    if console.is_terminal:
        return _forks_safe(Progress(*columns, console=console, transient=transient))
    return live_or_log(_forks_safe(Progress(*columns, console=Console(stderr=True), transient=transient,
                                            redirect_stdout=False)), label)


# A bar redraws from a thread of its own, holding its locks as it writes (the Live display's, the Progress', the
# Console's). A process forked at that moment (build-shards' pool, a DataLoader's workers: "fork") held copies of
# them that nothing would release: the worker's first line on stderr, which goes through the bar, waited for ever.
# Python's logging takes its handlers' locks around a fork for the same reason; so do the bars here.
_BARS: "weakref.WeakSet[Progress]" = weakref.WeakSet()
_HELD: dict[int, list] = {}  # the locks a forking thread took, by thread
_REGISTERED: list[bool] = []  # (os.register_at_fork done, once per process)


def _bar_locks() -> list:
    """The locks of the live bars, in the order the bar's thread takes them (Live, Progress, Console)."""
    locks = []
    for bar in list(_BARS):
        for owner in (bar.live, bar, bar.console):
            lock = getattr(owner, "_lock", None)
            if hasattr(lock, "acquire") and hasattr(lock, "release"):
                locks.append(lock)
    return locks


def _before_fork() -> None:
    locks = _bar_locks()
    for lock in locks:
        lock.acquire()
    _HELD[threading.get_ident()] = locks


def _after_fork() -> None:
    for lock in reversed(_HELD.pop(threading.get_ident(), [])):
        lock.release()


def _forks_safe(bar: Progress) -> Progress:
    """``bar``, its locks taken around every fork of this process while it lives."""
    if not _REGISTERED and hasattr(os, "register_at_fork"):
        os.register_at_fork(before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork)
        _REGISTERED.append(True)
    _BARS.add(bar)
    return bar
