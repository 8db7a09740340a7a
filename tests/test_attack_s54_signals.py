"""The long stages under the signals a days-long run meets on a shared machine or a cluster, SIGKILL aside
(test_attack_kill_resume covers it): SIGTERM (scancel, `timeout`), SIGHUP (an ssh session that dropped, no nohup or
tmux), Ctrl-C twice (the impatient user), SIGSTOP/SIGCONT (^Z then fg, a suspended job), a reader that goes away
(`2>&1 | head`), and the size of the log a run writes outside a terminal.

Every stage runs in a subprocess of its own session (the signal goes to its whole process group, as a terminal's
or Slurm's does); a signal is sent once the stage's own progress shows on disk (records written, metrics logged)
or at the scripted server (requests received), never after a blind sleep.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.kitchens import kitchen_copy
from tests.program_helpers import excerpt_annotations, excerpt_programs
from tests.programs_llm_server import Reply, ScriptedServer, narration_id_of
from tests.test_attack_kill_resume import _generate, leap, workdir_from

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
       "NO_COLOR": "1", "COLUMNS": "200", "LEAP_TEST_KEY": "sk-test-signals"}
ENV.pop("LEAP_PROGRESS_EVERY", None)


def run(cmd, timeout=120, env=ENV) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


def lines(path) -> int:
    try:
        return Path(path).read_bytes().count(b"\n")
    except OSError:
        return 0


def whole_jsonl(path) -> list[dict]:
    """Every line of ``path`` a whole JSON object, the file ending with a newline."""
    data = Path(path).read_bytes()
    assert data.endswith(b"\n"), data[-200:]
    return [json.loads(x) for x in data.decode().splitlines()]


def temps(folder) -> list[str]:
    return sorted(str(q) for q in Path(folder).rglob("*") if q.name.endswith((".tmp", ".partial")))


def _hang_up_as_by_default() -> None:
    """(in the child, before exec) SIGHUP as a terminal's job gets it: a suite run under nohup ignores it, and an
    ignored signal stays ignored across exec (leap leaves nohup's choice alone)."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def start(cmd) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, cwd=ROOT,
                            start_new_session=True, preexec_fn=_hang_up_as_by_default)


def wait_for(p: subprocess.Popen, ready, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if p.poll() is not None:
            out, err = p.communicate()
            pytest.fail(f"the stage ended (exit {p.returncode}) before the signal:\n{out[-1500:]}\n{err[-1500:]}")
        assert time.monotonic() < deadline, "the point to signal at never came"
        time.sleep(0.003)


def finish(p: subprocess.Popen, timeout: float = 60.0) -> tuple[str, str]:
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise
    return out.decode(errors="replace"), err.decode(errors="replace")


def said(err: str) -> list[str]:
    """stderr's lines but the stage's own warnings (logging's "WARNING ..." lines)."""
    return [x for x in err.splitlines() if x.strip() and not x.startswith("WARNING ")]


# --- a small synthetic kitchen: its train split extracted, programmed (offline) and sharded -------------------

SEGMENTS = 6


@pytest.fixture(scope="module")
def kitchen(tmp_path_factory):
    """(workdir, {stage: CompletedProcess}) of the train split's stages, run outside a terminal."""
    wd = tmp_path_factory.mktemp("kitchen")
    kitchen_copy(tmp_path_factory, wd / "kitchen", "--videos", 2, "--segments", SEGMENTS)
    done = {}
    for stage, *extra in (("extract", "--split", "train", "--workers", 2),
                          ("generate-programs", "--split", "train", "--backend", "offline"),
                          ("build-shards", "--split", "train")):
        r = run(leap(stage, "--workdir", wd, *extra))
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        done[stage] = r
    return wd, done


# --- extract: SIGTERM and SIGHUP mid-run ----------------------------------------------------------------------

@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_extract_stopped_by_a_signal_keeps_whole_records_and_resumes(kitchen, tmp_path, signame):
    """SIGTERM: exit 143 and one line saying what was kept, and the resume does only the rest; SIGHUP (a closed
    terminal) the same with 129, the line saying why. The records are appended whole and no temp file or lock is
    left in the way."""
    wd = workdir_from(kitchen[0], tmp_path / "wd")
    out = wd / "descriptors" / "val.jsonl"
    cmd = leap("extract", "--workdir", wd, "--split", "val", "--workers", 1)
    p = start(cmd)
    wait_for(p, lambda: lines(out) >= 2)
    os.killpg(p.pid, getattr(signal, signame))
    _, err = finish(p)
    assert p.returncode == 128 + getattr(signal, signame), err
    assert len(said(err)) == 1 and said(err)[0].startswith(f"stopped by {signame}") and "resume" in err, err
    assert ("nohup, tmux or screen" in err) == (signame == "SIGHUP"), err
    assert "Traceback" not in err, err
    kept = whole_jsonl(out)
    assert 2 <= len(kept) < SEGMENTS
    assert not temps(wd / "descriptors") and not temps(wd / "frame-cache")
    r = run(cmd)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"{len(kept)} done before, {SEGMENTS - len(kept)} written now" in " ".join(r.stdout.split()), r.stdout
    recs = whole_jsonl(out)
    assert len(recs) == SEGMENTS == len({x["narration_id"] for x in recs})


def test_extract_ctrl_c_twice_at_once_exits_130(kitchen, tmp_path):
    """Ctrl-C twice in quick succession (the impatient user): the stage stops with its line and 130.

    Was wrong: the second SIGINT, as the stopped command exited (its 130 set, its line printed), ended the process
    by SIGINT (-2) instead: in 5 of 6 tries with the second 0.05-0.3 s after the first."""
    wd = workdir_from(kitchen[0], tmp_path / "wd")
    out = wd / "descriptors" / "val.jsonl"
    p = start(leap("extract", "--workdir", wd, "--split", "val", "--workers", 1))
    wait_for(p, lambda: lines(out) >= 2)
    os.killpg(p.pid, signal.SIGINT)
    time.sleep(0.15)
    os.killpg(p.pid, signal.SIGINT)
    _, err = finish(p)
    assert p.returncode == 130, (p.returncode, err[-800:])
    assert "Traceback" not in err and "interrupted" in err, err


# --- generate-programs against a scripted OpenAI-compatible server -------------------------------------------

N_CLIPS = 8


@pytest.fixture(scope="module")
def clip_programs():
    return excerpt_programs(N_CLIPS)


def test_generate_hung_up_stops_as_sigterm_does_and_pays_nothing_twice(tmp_path, clip_programs):
    """Was wrong: SIGHUP (a dropped ssh session) killed generate-programs at once (exit -SIGHUP, no line, no
    ledger): the requests in flight, answered and paid, were asked and paid again by the resume; SIGINT/SIGTERM
    wait for them."""
    excerpt_annotations(tmp_path, rows=N_CLIPS)
    out = tmp_path / "programs" / "val.jsonl"
    script = lambda body, n: Reply(json.dumps(clip_programs[narration_id_of(body)]), delay=0.3)  # noqa: E731
    with ScriptedServer(script) as server:
        p = start(_generate(tmp_path, server))
        wait_for(p, lambda: lines(out) >= 2)
        os.killpg(p.pid, signal.SIGHUP)
        _, err = finish(p)
        assert p.returncode == 128 + signal.SIGHUP, err
        assert len(said(err)) == 1 and "resume" in said(err)[0], err
        whole_jsonl(out)
        r = run(_generate(tmp_path, server))
        assert r.returncode == 0, r.stderr[-2000:]
        asked = Counter(narration_id_of(b) for b in server.requests)
    assert len(asked) == N_CLIPS and set(asked.values()) == {1}, asked  # the replies in flight were waited for


def test_generate_ctrl_c_twice_abandons_the_held_requests_cleanly_and_resumes(tmp_path, clip_programs):
    """The server holds every reply after the third; Ctrl-C, then Ctrl-C again 1.2 s later (past the 1 s in which
    a second one is the same stop) while the stage waits for the held ones: it stops at once, exit 130, no
    traceback, its last line what was kept; the records whole, the cache readable, nothing left beside them; the
    resume asks no clip written before again."""
    excerpt_annotations(tmp_path, rows=N_CLIPS)
    out, folder = tmp_path / "programs" / "val.jsonl", tmp_path / "programs"
    release = threading.Event()

    def script(body, n):
        with lock:
            answered.append(1)
            held = len(answered) > 3
        if held:
            release.wait(30)
        return Reply(json.dumps(clip_programs[narration_id_of(body)]))

    lock, answered = threading.Lock(), []
    with ScriptedServer(script) as server:
        try:
            p = start(_generate(tmp_path, server))
            wait_for(p, lambda: lines(out) >= 3 and len(server.requests) >= 5)
            os.killpg(p.pid, signal.SIGINT)
            time.sleep(1.2)
            t0 = time.monotonic()
            os.killpg(p.pid, signal.SIGINT)
            _, err = finish(p, timeout=30)
            assert time.monotonic() - t0 < 10, "the second Ctrl-C did not stop it at once"
        finally:
            release.set()
        assert p.returncode == 130, err
        assert "Traceback" not in err, err
        assert said(err)[-1].startswith("interrupted:") and "resume" in said(err)[-1], err
        before = [r["narration_id"] for r in whole_jsonl(out)]
        assert len(before) == 3
        assert not temps(folder)
        with sqlite3.connect(folder / "cache.sqlite") as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            (requests,), = db.execute("SELECT requests FROM ledger").fetchall()
            assert requests >= 3
        r = run(_generate(tmp_path, server))
        assert r.returncode == 0, r.stderr[-2000:]
        asked = Counter(narration_id_of(b) for b in server.requests)
    assert all(asked[nid] == 1 for nid in before), asked
    recs = whole_jsonl(out)
    assert len(recs) == N_CLIPS == len({x["narration_id"] for x in recs})


@pytest.mark.parametrize("stop, seconds, timeout", [("SIGTSTP", 1.5, 30), ("SIGSTOP", 7, 5)])  # (5 s: a busy CI)
def test_generate_stopped_and_continued_pays_nothing_twice(tmp_path, clip_programs, stop, seconds, timeout):
    """^Z (SIGTSTP) while requests are in flight, fg 1.5 s later (well within --timeout), or a job stopped longer
    than --timeout (SIGSTOP: a cluster's suspend, ^Z left a while): the replies that came while it was stopped are
    read, no request is sent again, and the run ends as an uninterrupted one.

    Was wrong: the clocks kept running while the process was stopped, and at the continue after a stop longer than
    --timeout the requests in flight were abandoned as timed out ("may have billed them") and sent again: in 6 of 6
    tries here."""
    excerpt_annotations(tmp_path, rows=N_CLIPS)
    out = tmp_path / "programs" / "val.jsonl"
    script = lambda body, n: Reply(json.dumps(clip_programs[narration_id_of(body)]), delay=0.3)  # noqa: E731
    with ScriptedServer(script) as server:
        p = start(_generate(tmp_path, server, "--timeout", timeout))
        try:
            wait_for(p, lambda: len(server.requests) >= 3)
            os.killpg(p.pid, getattr(signal, stop))
            time.sleep(seconds)
        finally:
            os.killpg(p.pid, signal.SIGCONT)
        stdout, err = finish(p)
        assert p.returncode == 0, err
        asked = Counter(narration_id_of(b) for b in server.requests)
    assert len(asked) == N_CLIPS and set(asked.values()) == {1}, asked
    assert "timed out" not in stdout + err
    recs = whole_jsonl(out)
    assert len(recs) == N_CLIPS and all(x["status"] == "valid" for x in recs)


# --- a reader that goes away ----------------------------------------------------------------------------------

def test_extract_whose_stderr_reader_went_away_runs_to_its_end(kitchen, tmp_path):
    """`leap extract ... 2>&1 | head -2` (or `| less` quit, a `tee` that died): the stage's records must not stop half-
    way without a word, as they do not when stdout's reader goes away.

    Was wrong: `leap extract ... 2>&1 | head` stopped the stage at its next progress line with exit 1 and no word
    (cli.py's EPIPE branch: sys.exit(1)); a closed stdout alone let it run to its end (ReaderSafeStdout), stderr was
    not kept."""
    wd = workdir_from(kitchen[0], tmp_path / "wd")
    out = wd / "descriptors" / "val.jsonl"
    p = subprocess.Popen(leap("extract", "--workdir", wd, "--split", "val", "--workers", 1),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**ENV, "LEAP_PROGRESS_EVERY": "0"},
                         cwd=ROOT, start_new_session=True)
    try:
        first = p.stderr.readline()  # a progress line: the stage is under way
        assert first, "no progress line"
        p.stderr.close()  # the reader is gone
        p.wait(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == 0 and lines(out) == SEGMENTS, (p.returncode, lines(out))


# --- train ------------------------------------------------------------------------------------------------------

TRAIN = ("--config", "tiny-synthetic-short", "--name", "r", "--set", "train.epochs=3", "--set", "data.batch_size=2",
         "--set", "train.checkpoint_every=100", "--set", "train.log_every=1")


def test_train_hung_up_saves_last_pt_as_sigterm_does(kitchen, tmp_path):
    """Was wrong: SIGHUP (a dropped ssh session) killed `leap train` at once: no last.pt saved at the step boundary
    as SIGINT/SIGTERM get (GracefulStop.SIGNALS): the steps since the last checkpoint were lost."""
    wd = workdir_from(kitchen[0], tmp_path / "wd", "shards", "programs")
    ck = wd / "runs" / "r" / "checkpoints"
    p = start(leap("train", "--workdir", wd, *TRAIN))
    wait_for(p, lambda: lines(wd / "runs" / "r" / "metrics.jsonl") >= 1)
    os.killpg(p.pid, signal.SIGHUP)
    _, err = finish(p)
    assert p.returncode == 128 + signal.SIGHUP, err
    assert (ck / "last.pt").exists() and not temps(wd / "runs")


# --- logs as a cluster keeps them -----------------------------------------------------------------------------

def test_a_short_run_outside_a_terminal_writes_no_line_per_segment(kitchen):
    """extract and generate-programs with stderr a file: a run shorter than LEAP_PROGRESS_EVERY (10 s) writes no
    progress line at all, and the stage's report does not grow with the segments (no bar redrawn as lines)."""
    for stage in ("extract", "generate-programs"):
        r = kitchen[1][stage]
        assert r.stderr.count("\n") <= 1, (stage, r.stderr)
        assert len(r.stdout.encode()) < 3000, (stage, r.stdout)


def test_progress_lines_of_a_90k_segment_run_are_bounded_by_time_not_segments(monkeypatch):
    """90,000 segments at 3/s (8 h 20 min) outside a terminal: one line every 10 s, ~3,000 lines, under 400 kB,
    not a line per segment."""
    import io

    from rich.console import Console

    from leap_cli import progress

    now = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    sink = io.StringIO()
    bar = progress.LogProgress("extract train", Console(file=sink, soft_wrap=True, width=200), every=10.0)
    with bar:
        task = bar.add_task("P01_01", total=90000)
        for _ in range(90000):
            now[0] += 1 / 3
            bar.advance(task)
    text = sink.getvalue()
    n = text.count("\n")
    assert 2900 <= n <= 3100 and len(text.encode()) < 400_000, (n, len(text))
    assert text.splitlines()[-1].startswith("extract train P01_01: 90000/90000 (100%)")
