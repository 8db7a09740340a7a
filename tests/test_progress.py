"""Progress outside a terminal: one plain line every N seconds with count, rate and ETA."""

import io
import os
import subprocess
import sys

from rich.console import Console
from rich.progress import Progress

from leap_cli.progress import LogProgress, live_or_log


def test_log_progress_lines_carry_rate_and_eta(monkeypatch):
    import leap_cli.progress as progress

    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    out = io.StringIO()
    p = LogProgress("extract train", Console(file=out, width=200), every=0.0)
    with p:
        t = p.add_task("P01_01", total=4)
        for _ in range(2):
            now[0] += 3.0
            p.update(t, advance=1, description="P01_02")
    lines = out.getvalue().splitlines()
    assert lines[0] == "extract train P01_02: 1/4 (25%)"  # one unit measures no rate (see below)
    assert lines[1].startswith("extract train P01_02: 2/4 (50%) ") and "/s, ETA 0:" in lines[1]
    assert "elapsed" in lines[-1]  # a closing line


def test_no_rate_or_eta_from_the_first_unit_alone(monkeypatch):
    """build-shards encodes a whole video before its first sample is written: its log said "1/3600 (0%) 0.06/s,
    ETA 16:59:39" for a job of 20 s."""
    import leap_cli.progress as progress

    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    out = io.StringIO()
    p = LogProgress("build-shards train", Console(file=out, width=200), every=0.0)
    t = p.add_task("samples", total=3600)
    now[0] += 16.0  # the first video's decode and encode
    p.update(t, advance=1)
    for _ in range(99):  # the rest of its samples, written at once
        now[0] += 0.001
        p.update(t, advance=1)
    lines = out.getvalue().splitlines()
    assert lines[0] == "build-shards train samples: 1/3600 (0%)"
    assert lines[-1] == "build-shards train samples: 100/3600 (3%)"  # neither 17 hours nor 1000/s
    for _ in range(3):  # the next videos: 100 samples every 2 s
        now[0] += 2.0
        p.update(t, advance=100)
    last = out.getvalue().splitlines()[-1]  # 399 samples in the 6.1 s since the first: the burst fades
    assert last == "build-shards train samples: 400/3600 (11%) 65.42/s, ETA 0:00:48", last


def test_the_eta_leaves_out_the_start_up(monkeypatch):
    """A 64k-record run that spent 10 s loading its inputs said "96/64460 9.60/s, ETA 1:51:44" for a run of
    1:43: the rate counted the start-up. It counts from the first unit done."""
    import leap_cli.progress as progress

    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    out = io.StringIO()
    p = LogProgress("generate-programs train", Console(file=out, width=200), every=0.0)
    t = p.add_task("programs", total=10_000)
    now[0] += 10.0  # loading the inputs
    for _ in range(301):  # then 100 units per second
        p.update(t, advance=1)
        now[0] += 0.01
    last = out.getvalue().splitlines()[-1]
    assert " 100.00/s, ETA 0:01:" in last, last  # (10,000 - 301) / 100 s, not / 29 per second
    p.stop()
    assert "elapsed" in out.getvalue().splitlines()[-1]


def test_log_progress_is_quiet_between_intervals():
    out = io.StringIO()
    with LogProgress("train", Console(file=out), every=3600) as p:
        t = p.add_task("train", total=100, info="")
        for i in range(100):
            p.update(t, completed=i + 1, info=f"loss {1 / (i + 1):.3f}")
    assert out.getvalue() == ""


def test_bar_in_a_terminal_log_lines_elsewhere():
    assert isinstance(live_or_log(Progress(console=Console(file=io.StringIO())), "x"), LogProgress)
    term = Progress(console=Console(file=io.StringIO(), force_terminal=True))
    assert live_or_log(term, "x") is term


def test_stage_output_to_a_file_shows_progress_on_stderr(tmp_path):
    """Progress lines go to stderr (as tqdm's), the stage's results to stdout: a redirect of stdout
    (``> results.txt``) took the progress lines too."""
    env = {**os.environ, "LEAP_PROGRESS_EVERY": "0", "COLUMNS": "200"}
    r = subprocess.run([sys.executable, "-m", "leap_cli", "demo-data", "--out", str(tmp_path / "k"), "--videos", "2",
                        "--segments", "2"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.startswith("kitchen ")]
    assert any(": 1/2 (50%)" in x for x in lines) and any(": 2/2 (100%)" in x and "elapsed" in x for x in lines), r.stderr
    assert r.stdout.strip() and not any(x.startswith("kitchen ") for x in r.stdout.splitlines()), r.stdout


def test_stage_progress_draws_on_the_terminal_and_logs_to_stderr(monkeypatch):
    """The bar draws on the stage's stdout console where stdout is a terminal (the stage's prints go above it), on
    stderr where only stderr is one (stdout's file keeps the results alone), and progress lines go to stderr
    where neither is."""
    import leap_cli.progress as progress

    class FakeConsole(Console):
        def __init__(self, stderr=False, terminal=False, **kw):
            self.stderr_, self.terminal_ = stderr, terminal
            super().__init__(stderr=stderr, file=io.StringIO(), **kw)

        @property
        def is_terminal(self):
            return self.terminal_ if not self.stderr_ else terminals["stderr"]

    terminals = {}
    monkeypatch.setattr(progress, "Console", FakeConsole)
    stdout_tty = FakeConsole(terminal=True)
    terminals["stderr"] = True
    bar = progress.stage_progress("x", console=stdout_tty)
    assert isinstance(bar, Progress) and bar.console is stdout_tty
    bar = progress.stage_progress("x", console=FakeConsole(terminal=False))
    assert isinstance(bar, Progress) and bar.console.stderr_ and bar.live._redirect_stdout is False
    terminals["stderr"] = False
    logged = progress.stage_progress("x", console=FakeConsole(terminal=False))
    assert isinstance(logged, LogProgress) and logged.console.stderr_


def test_a_result_printed_while_the_bar_draws_takes_its_own_line():
    """train's "val epoch" line, printed by a second Console while the bar drew on stderr, was glued onto the
    bar's line ("train ━━━ 1/4val epoch 1/2: ..."): printed through the stage's console it goes above the bar."""
    import re

    from rich.progress import BarColumn, TextColumn

    from leap_cli.progress import stage_progress

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    bar = stage_progress("train", TextColumn("train"), BarColumn(), console=console)
    with bar:
        t = bar.add_task("steps", total=4)
        bar.update(t, completed=1)
        bar.refresh()
        console.print("val epoch 1/2: verb 1.0")
        bar.update(t, completed=2)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert any(x.startswith("val epoch 1/2: verb 1.0") for x in re.split(r"[\r\n]", text)), repr(text)
