"""Attacks on the program cache's journal (``programs/store.py``, ``cache.sqlite.unwritten/``): a SIGKILLed
``generate-programs`` never pays again for a reply it had received, its spend is counted once, and a run that ends
normally leaves nothing behind -- also with parallel ``--shard`` processes sharing the cache, other commands
opening it, a second process opening the cache at the instant a journal file is made, and a file system without
``flock`` (Lustre mounted without ``-o flock``, some FUSE and network file systems)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from leap_cli.programs.store import ProgramStore
from tests.programs_llm_server import Reply, ScriptedServer, narration_id_of
from tests.test_attack_kill_resume import KILL_AT_THIRD_CHECK, leap, lines, run  # (the SIGKILL at the 3rd check)

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
       "NO_COLOR": "1", "COLUMNS": "200", "LEAP_TEST_KEY": "sk-test-journal-attack"}
USAGE = {"prompt_tokens": 10, "completion_tokens": 2}


def _rows(path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute(sql).fetchall()


# --- the store alone ---------------------------------------------------------------------------------------------

# A generate-programs process whose first journal file is made at the instant another process (a second shard
# starting, `leap info`, a --dry-run estimate) opens the cache: the other one's replay runs between the file's
# creation (O_EXCL) and its flock, finds it unlocked and empty, "takes" it (deletes it). The run then appends its
# paid replies to a deleted file; a SIGKILL loses them and the rerun pays again.
RACE = """
import fcntl, os, signal, subprocess, sys
from leap_cli.programs.store import ProgramStore
path, real, done = sys.argv[1], fcntl.flock, []
def flock(fd, op):
    if not done:  # another process opens the cache now (its replay), then this one takes its lock
        done.append(1)
        subprocess.run([sys.executable, "-c", "import sys; from leap_cli.programs.store import ProgramStore as S; "
                        "S(sys.argv[1]).close()", path], check=True)
    return real(fd, op)
fcntl.flock = flock
s = ProgramStore(path, commit_every=3600, background=True, journal=True)
s.put("k", "paid reply", {"prompt_tokens": 10, "completion_tokens": 2}, "m", commit=False)
s.add_spend("val.jsonl", 0.5, {"prompt_tokens": 10, "completion_tokens": 2}, commit=False)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_journal_file_made_while_another_process_opens_the_cache_is_not_lost(tmp_path):
    """A user runs two shards (or `leap info`) on one cache: the second opens it at the instant the first makes a
    journal file. The first is then SIGKILLed: its received reply and spend must be taken by the next open.
    Was wrong: _log made the file (O_EXCL) before it locked it; the other process's replay took it, empty, in
    between (deleted it), and the run's replies went to a deleted file, lost at the kill."""
    path = tmp_path / "cache.sqlite"
    r = subprocess.run([sys.executable, "-c", RACE, str(path)], env=ENV, cwd=ROOT, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=60)
    assert r.returncode == -signal.SIGKILL, r.stdout.decode(errors="replace")
    s = ProgramStore(path)
    try:
        assert s.replayed == 1 and s.get("k") is not None and s.spent("val.jsonl")["requests"] == 1
    finally:
        s.close()


def test_a_file_system_without_flock_leaves_no_journal_behind(tmp_path, monkeypatch, caplog):
    """On a cluster file system without flock the journal cannot be kept (a warning says so); the run must still
    end leaving nothing in programs/: no empty journal file per run that no later run can take or remove.
    Was wrong: the file made before the failed flock stayed, its descriptor open, one per run."""
    def no_flock(fd, op):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    path = tmp_path / "cache.sqlite"
    for run in range(2):
        s = ProgramStore(path, commit_every=3600, background=True, journal=True)
        s.put(f"k{run}", "paid reply", USAGE, "m", commit=False)
        s.add_spend("val.jsonl", 0.5, USAGE, commit=False)
        s.close()
    assert _rows(path, "SELECT key FROM cache ORDER BY key") == [("k0",), ("k1",)]  # (this part holds today)
    assert _rows(path, "SELECT requests FROM ledger") == [(2,)]
    said = [r for r in caplog.records if "cache.sqlite.unwritten" in r.getMessage()]
    assert len(said) == 2  # once per run
    assert not (tmp_path / "cache.sqlite.unwritten").exists(), list((tmp_path / "cache.sqlite.unwritten").iterdir())


def test_two_processes_opening_a_dead_runs_journal_at_once_count_its_spend_once(tmp_path):
    """Two shards requeued together after a node died both find the killed run's journal at their start: it is
    taken by one of them, and its spend enters the ledger once."""
    path = tmp_path / "cache.sqlite"
    ProgramStore(path).close()
    folder = tmp_path / "cache.sqlite.unwritten"
    folder.mkdir()
    key = "val.jsonl"
    for i in range(20):
        (folder / f"99999-dead-{i}.jsonl").write_text(
            json.dumps(["c", f"k{i}", "reply", 10, 2, "m", 1.0, None, 0]) + "\n"
            + json.dumps(["l", key, 0.5, 10, 2, 1]) + "\n")
    opener = ("import sys; from leap_cli.programs.store import ProgramStore as S\n"
              "s = S(sys.argv[1]); print(s.replayed); s.close()")
    procs = [subprocess.Popen([sys.executable, "-c", opener, str(path)], env=ENV, cwd=ROOT, stdout=subprocess.PIPE,
                              text=True) for _ in range(3)]
    took = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert sum(took) == 20, took
    assert _rows(path, "SELECT requests, cost FROM ledger") == [(20, 10.0)]
    assert _rows(path, "SELECT count(*) FROM cache") == [(20,)]
    assert not folder.exists()


def test_a_reply_with_a_lone_surrogate_is_cached_with_a_replacement_character(tmp_path):
    """A server's JSON may carry a lone UTF-16 escape (a token that split an emoji: "\\ud83d"); json.loads makes it
    a lone surrogate in the reply text. Was wrong: buffering that reply raised a UnicodeEncodeError out of the
    journal (a traceback that stopped the run, the reply paid and lost), and SQLite refused it the same way."""
    path = tmp_path / "cache.sqlite"
    s = ProgramStore(path, commit_every=3600, background=True, journal=True)
    s.put("k", json.loads('"a reply \\ud83d cut"'), USAGE, "m", commit=False)
    s.add_spend("val.jsonl", 0.5, USAGE, commit=False)
    s.close()
    assert _rows(path, "SELECT response FROM cache") == [("a reply \ufffd cut",)]


# --- generate-programs against a scripted server -----------------------------------------------------------------


# 6 clips of each of the excerpt's 2 videos: a --shard i/2 run does one video
PICK = list(range(1, 7)) + list(range(149, 155))


@pytest.fixture(scope="module")
def two_videos(tmp_path_factory):
    """(the annotations' CSV text of 12 clips of 2 videos, a valid program per clip by narration id)."""
    import shutil

    from leap_cli.epic.annotations import read_segments
    from leap_cli.epic.classes import ClassVocab
    from leap_cli.programs.offline import offline_program
    from leap_cli.programs.prompt import clip_info, load_exemplars, narration_record

    data = ROOT / "tests" / "data"
    src = (data / "epic" / "EPIC_100_validation_excerpt.csv").read_text().splitlines()
    csv = "\n".join([src[0]] + [src[i] for i in PICK]) + "\n"
    tmp = tmp_path_factory.mktemp("clips")
    (tmp / "val.csv").write_text(csv)
    verbs = ClassVocab.from_csv(data / "epic100" / "EPIC_100_verb_classes.csv", "verb")
    nouns = ClassVocab.from_csv(data / "epic100" / "EPIC_100_noun_classes.csv", "noun")
    ex = load_exemplars()
    programs = {s.narration_id: offline_program(clip_info(narration_record(s), s), ex, verbs, nouns)
                for s in read_segments(tmp / "val.csv")}
    assert len(programs) == 12
    shutil.rmtree(tmp)
    return csv, programs


def _workdir(root: Path, csv: str) -> Path:
    import shutil

    data = ROOT / "tests" / "data"
    ann = root / "kitchen" / "annotations"
    ann.mkdir(parents=True)
    for name in ("EPIC_100_verb_classes.csv", "EPIC_100_noun_classes.csv"):
        shutil.copy(data / "epic100" / name, ann / name)
    (ann / "EPIC_100_validation.csv").write_text(csv)
    return root


def _generate(wd, server, *extra):
    return leap("generate-programs", "--workdir", wd, "--split", "val", "--backend", "openai", "--model", "test-model",
                "--base-url", server.base_url, "--api-key-env", "LEAP_TEST_KEY", "--concurrency", 1,
                "--timeout", 30, "--price-in", 1, "--price-out", 2, *extra)


def _killed_at_third_check(cmd) -> None:
    r = subprocess.run([sys.executable, "-c", KILL_AT_THIRD_CHECK, *cmd[3:]], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, env=ENV, cwd=ROOT, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stdout.decode(errors="replace")[-2000:]


def test_a_shard_killed_beside_a_running_shard_pays_nothing_twice_and_counts_its_spend_once(tmp_path, two_videos):
    """`--shard 0/2` and `--shard 1/2` share programs/cache.sqlite. One is SIGKILLed with a reply received and not
    yet recorded, and rerun while the other still runs: the rerun takes the dead run's journal (not the live
    one's), every clip is asked once in all, and each part's ledger counts each request once."""
    csv, programs = two_videos
    wd = _workdir(tmp_path, csv)
    # part 1's replies after its first wait for the rerun's end: the survivor runs beside the kill and the rerun
    # (a fixed 0.8 s per reply let it finish first under a loaded CI once, and the scenario did not happen)
    rerun_done, lock, first = threading.Event(), threading.Lock(), []

    def script(body, n):
        nid = narration_id_of(body)
        if nid.startswith("P01_12"):
            with lock:
                held = bool(first)
                first.append(nid)
            if held:
                rerun_done.wait(60)
        return Reply(json.dumps(programs[nid]))

    with ScriptedServer(script) as server:
        # the videos are dealt to parts in annotation order: part 1 does P01_12 (held replies), part 0 P01_11
        p = subprocess.Popen(_generate(wd, server, "--shard", "1/2"), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, env=ENV, cwd=ROOT)
        try:
            deadline = time.monotonic() + 60
            while lines(wd / "programs" / "val.shard1of2.jsonl") < 1:
                assert p.poll() is None and time.monotonic() < deadline, p.communicate()[0].decode()[-2000:]
                time.sleep(0.01)
            cmd = _generate(wd, server, "--shard", "0/2")
            _killed_at_third_check(cmd)
            assert p.poll() is None, "the survivor ended before the kill: the scenario did not happen"
            assert any((wd / "programs" / "cache.sqlite.unwritten").iterdir())
            rc, res = run(cmd)
            assert rc == 0, res
            alive_at_rerun = p.poll() is None
            rerun_done.set()
            out, _ = p.communicate(timeout=60)
            assert p.returncode == 0, out.decode(errors="replace")[-2000:]
        finally:
            rerun_done.set()
            if p.poll() is None:
                p.kill()
                p.communicate()
        asked = Counter(narration_id_of(b) for b in server.requests)
    assert alive_at_rerun
    assert set(asked) == set(programs) and set(asked.values()) == {1}, asked
    ledger = dict(_rows(wd / "programs" / "cache.sqlite", "SELECT out, requests FROM ledger"))
    assert ledger == {"val.shard0of2.jsonl": 6, "val.shard1of2.jsonl": 6}
    for part in (0, 1):
        recs = [json.loads(x) for x in (wd / "programs" / f"val.shard{part}of2.jsonl").read_text().splitlines()]
        assert len(recs) == 6 and all(r["status"] == "valid" for r in recs)
    assert not (wd / "programs" / "cache.sqlite.unwritten").exists()


def test_a_dry_run_after_a_kill_takes_the_journal_and_counts_its_reply_as_answered(tmp_path, two_videos):
    """After a SIGKILL with a received reply only in the journal, `--dry-run` (the cost estimate) opens the cache:
    it takes the journal: of the 10 segments pending it says 1 (the journaled reply) is answered by the cache, and
    reckons the reply size from the 3 paid replies; the real rerun then asks the 9 others only, and the ledger
    holds 12 requests."""
    csv, programs = two_videos
    wd = _workdir(tmp_path, csv)
    script = lambda body, n: Reply(json.dumps(programs[narration_id_of(body)]))  # noqa: E731
    with ScriptedServer(script) as server:
        cmd = _generate(wd, server)
        _killed_at_third_check(cmd)
        assert lines(wd / "programs" / "val.jsonl") == 2 and len(server.requests) == 3
        rc, est = run(cmd + ["--dry-run"])
        assert rc == 0, est
        assert not (wd / "programs" / "cache.sqlite.unwritten").exists(), est  # taken by the estimate
        flat = " ".join(est.split())
        assert "10 segments of val pending (1 answered by the program cache, free): 9 requests" in flat, est[-1500:]
        assert "the mean of the 3 replies this output has paid for" in flat, est[-1500:]
        assert len(server.requests) == 3
        rc, res = run(cmd)
        assert rc == 0, res
        asked = Counter(narration_id_of(b) for b in server.requests)
    assert set(asked.values()) == {1} and len(asked) == 12, asked
    assert _rows(wd / "programs" / "cache.sqlite", "SELECT requests FROM ledger") == [(12,)]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_run_leaves_no_journal_and_counts_each_request_once(tmp_path, two_videos, sig):
    """SIGTERM (Slurm's stop) or Ctrl-C in the middle of a run: the run writes what it had and leaves no
    cache.sqlite.unwritten/ behind; the rerun asks nothing it had received, and the ledger equals the requests the
    server answered."""
    csv, programs = two_videos
    wd = _workdir(tmp_path, csv)
    out = wd / "programs" / "val.jsonl"
    script = lambda body, n: Reply(json.dumps(programs[narration_id_of(body)]), delay=0.05)  # noqa: E731
    with ScriptedServer(script) as server:
        cmd = _generate(wd, server, "--concurrency", 4)
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT)
        deadline = time.monotonic() + 60
        while lines(out) < 4:
            assert p.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
        p.send_signal(sig)
        res = p.communicate(timeout=60)[0].decode(errors="replace")
        assert p.returncode != 0, res
        assert not (wd / "programs" / "cache.sqlite.unwritten").exists(), res
        n_stop = len(server.requests)
        done = lines(out)
        rc, res = run(cmd)
        assert rc == 0, res
        asked = Counter(narration_id_of(b) for b in server.requests)
    assert set(asked.values()) == {1} and len(asked) == 12, (asked, n_stop, done)
    assert _rows(wd / "programs" / "cache.sqlite", "SELECT requests FROM ledger") == [(12,)]


def test_replies_with_half_a_character_are_written_with_a_replacement_character(tmp_path, two_videos):
    """Was wrong: a reply holding half an emoji stopped generate-programs with a traceback (exit 1), the reply paid
    and lost: as a character of the reply's text (the server's JSON escapes it: the cache could not hold it), or as
    an escape inside the program's JSON (its record could not be written). Both are written, with U+FFFD."""
    csv, programs = two_videos
    wd = _workdir(tmp_path, csv)
    first, second = sorted(programs)[:2]

    def script(body, n):
        nid = narration_id_of(body)
        program = json.loads(json.dumps(programs[nid]))
        if nid in (first, second):
            program["steps"][0]["purpose"] = "half an emoji \ud83d here"
        # the first: the lone half in the reply's text (its JSON string escapes it); the second: inside the program
        return Reply(json.dumps(program, ensure_ascii=nid != first))

    with ScriptedServer(script) as server:
        rc, out = run(_generate(wd, server))
    assert rc == 0, out
    recs = {json.loads(x)["narration_id"]: json.loads(x)
            for x in (wd / "programs" / "val.jsonl").read_text(encoding="utf-8").splitlines()}
    assert len(recs) == 12 and all(r["status"] == "valid" for r in recs.values())
    assert [recs[n]["program"]["steps"][0]["purpose"] for n in (first, second)] == ["half an emoji \ufffd here"] * 2
    assert len(_rows(wd / "programs" / "cache.sqlite", "SELECT key FROM cache")) == 12


def test_an_output_on_a_file_system_without_locks_is_refused_in_one_line_naming_it(tmp_path, monkeypatch):
    """Lustre mounted without -o flock: the output's lock failed with "No locks available (check that path and run
    the same command again)", naming no file and no cause. It names the lock file and the mount option."""
    from leap_cli.errors import LeapError
    from leap_cli.io import OutputLock

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(LeapError) as e:
        OutputLock(tmp_path / "programs" / "val.jsonl").acquire()
    line = e.value.one_line()
    assert "takes no file locks" in line and "val.jsonl.lock" in line and "-o flock" in line
