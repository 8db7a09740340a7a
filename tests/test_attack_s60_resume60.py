"""Crash and resume as a user running for days sees it (session 60): SIGKILL at *several* points in a row (seeded
record counts; the resume itself killed again) and at the exact instants of the atomic writes (a ``sitecustomize``
on PYTHONPATH that SIGKILLs the process group just before or just after the Nth ``os.replace`` onto a named file:
a shard tar's rename, its manifest's, a frame-cache entry's, a checkpoint's). After each kill the same command is
run again; it must finish, lose or repeat no record, pay no stored reply twice (counted at a scripted server), and
end with the outputs of an uninterrupted run (extract: the set of lines; programs: by content; shards: the tar
bytes and the manifest; train: the weights, optimizer state and metrics rows). test_attack_kill_resume.py covers
one kill per stage at a point seen on disk; this file adds repeated kills and the rename windows.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.program_helpers import excerpt_annotations, excerpt_programs
from tests.programs_llm_server import Reply, ScriptedServer, narration_id_of
from tests.test_attack_kill_resume import (ENV, ROOT, _frame_cache, _same_training, _shards, kitchen,  # noqa: F401
                                           leap, lines, run, settled, summary_count, temps, workdir_from)

# SIGKILL of the whole process group at the Nth os.replace onto a file whose name holds MATCH (counted across the
# processes of the run, workers included, in a file), just before the rename or just after it.
HOOK = """
import os
_match = os.environ.get("S60_KILL_MATCH")
if _match:
    import signal
    _at, _when, _count = int(os.environ["S60_KILL_AT"]), os.environ["S60_KILL_WHEN"], os.environ["S60_KILL_COUNT"]
    _replace = os.replace
    def _dying_replace(src, dst, *a, **k):
        if _match not in os.path.basename(os.fspath(dst)):
            return _replace(src, dst, *a, **k)
        fd = os.open(_count, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, b"x")
        n = os.fstat(fd).st_size
        os.close(fd)
        if n == _at and _when == "before":
            os.killpg(os.getpgid(0), signal.SIGKILL)
        done = _replace(src, dst, *a, **k)
        if n == _at and _when == "after":
            os.killpg(os.getpgid(0), signal.SIGKILL)
        return done
    os.replace = _dying_replace
"""


def killed_at_rename(cmd, tmp: Path, match: str, at: int, when: str) -> None:
    """Run ``cmd`` in a session of its own with the hook; it must die by SIGKILL at that rename."""
    hook = tmp / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(HOOK)
    count = tmp / f"count-{time.monotonic_ns()}"
    env = {**ENV, "PYTHONPATH": f"{hook}{os.pathsep}{ROOT}", "S60_KILL_MATCH": match, "S60_KILL_AT": str(at),
           "S60_KILL_WHEN": when, "S60_KILL_COUNT": str(count)}
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT, timeout=120,
                       start_new_session=True)
    assert r.returncode == -signal.SIGKILL, f"not killed at rename {at} of *{match}*: {r.stdout.decode()[-2000:]}"
    # (the kill is the Nth rename's; another worker of the group may count one more before the signal reaches it)
    assert at <= count.stat().st_size <= at + 1


def kill_at(cmd, ready, *, parent_only=False, timeout=60.0) -> bool:
    """Start ``cmd`` (own session); SIGKILL its group (or its parent alone) once ``ready()``; False when it ended
    before (then it must have ended well)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT,
                         start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if p.poll() is not None:
                out = p.stdout.read().decode(errors="replace")
                assert p.returncode == 0, out[-2000:]
                return False
            assert time.monotonic() < deadline, "the kill point never came"
            time.sleep(0.003)
        os.kill(p.pid, signal.SIGKILL) if parent_only else os.killpg(p.pid, signal.SIGKILL)
        p.communicate(timeout=60)
        return True
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()


def flat(text: str) -> str:
    return " ".join(text.split())


# --- extract ---------------------------------------------------------------------------------------------------

def test_extract_killed_three_times_at_seeded_points_ends_with_every_record_once(kitchen, tmp_path):
    """Three kills in a row (seeded record counts; the group, then the parent alone, then the group), the same
    command each time: the fourth run writes only what is missing and the file is the uninterrupted run's lines."""
    wd = workdir_from(kitchen, tmp_path / "wd")
    out = wd / "descriptors" / "train.jsonl"
    ref = sorted((kitchen / "descriptors" / "train.jsonl").read_bytes().splitlines())
    rng = random.Random(60)
    marks = sorted(rng.sample(range(1, len(ref) - 1), 3))
    cmd = leap("extract", "--workdir", wd, "--split", "train", "--workers", 2)
    at_kill = []
    for i, mark in enumerate(marks):
        killed = kill_at(cmd, lambda m=mark: lines(out) >= m, parent_only=i == 1)
        if not killed:
            break
        at_kill.append(lines(out))
        got = out.read_bytes().splitlines(keepends=True)
        whole = [x for x in got if x.endswith(b"\n")]
        assert len({json.loads(x)["narration_id"] for x in whole}) == len(whole)  # no record twice, ever
    assert at_kill and at_kill == sorted(at_kill)  # (a resume never lost what the run before had written)
    rc, res = run(cmd)
    assert rc == 0, res
    done = at_kill[-1]
    assert f"{len(ref)} selected, {done} done before, {len(ref) - done} written now" in flat(res), res
    assert sorted(out.read_bytes().splitlines()) == ref
    videos = {json.loads(x)["video_id"] for x in ref}
    assert _frame_cache(wd) == {k: v for k, v in _frame_cache(kitchen).items() if k.split("/")[0] in videos}
    assert not temps(wd / "descriptors") and not temps(wd / "frame-cache")


def _dead_writers(folder: Path) -> list[int]:
    """The pids in the names of the temp files under ``folder`` (``.NAME.HOST-PID.XXXXXXXX.tmp``)."""
    return [int(q.name[:-len(".tmp")].rsplit(".", 1)[0].rsplit("-", 1)[1]) for q in folder.rglob(".*.tmp")]


@pytest.mark.parametrize("when", ["before", "after"])
def test_extract_killed_at_a_frame_cache_entrys_rename_resumes_and_leaves_no_temp(kitchen, tmp_path, when):
    """The kill comes at the rename of the third frame-cache entry (a worker's atomic write, its bytes fsynced):
    before it the entry is a temp file of a dead writer, after it an entry whose record was never written. (The
    resume starts once the dead workers are reaped: see the zombie test below for one that is not.)"""
    wd = workdir_from(kitchen, tmp_path / "wd")
    cmd = leap("extract", "--workdir", wd, "--split", "train", "--workers", 2)
    killed_at_rename(cmd, tmp_path, ".jpgs", 3, when)
    dead = _dead_writers(wd / "frame-cache")
    # the killed writer's temp file (before its rename); the other worker's, where it was writing one at the kill
    assert (1 <= len(dead) <= 2) if when == "before" else len(dead) <= 1, dead
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in dead) and time.monotonic() < deadline:
        time.sleep(0.05)  # (orphans are reaped by PID 1 or a subreaper, not by this test)
    rc, res = run(cmd)
    assert rc == 0, res
    out = wd / "descriptors" / "train.jsonl"
    ref = sorted((kitchen / "descriptors" / "train.jsonl").read_bytes().splitlines())
    assert sorted(out.read_bytes().splitlines()) == ref
    videos = {json.loads(x)["video_id"] for x in ref}
    assert _frame_cache(wd) == {k: v for k, v in _frame_cache(kitchen).items() if k.split("/")[0] in videos}
    left = sorted(q.name for q in (wd / "frame-cache").rglob(".*.tmp"))
    assert not left, f"temp files of the killed writers are left in the frame cache: {left}"


# The killed run and its resume under a process that is a child subreaper and reaps none but its own children:
# the killed extract's workers stay zombies during the resume, as under a container's PID 1 that does not reap
# (docker run without --init) or a job step's shell.
UNREAPED = """
import ctypes, json, os, subprocess, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
killed, resume, kill_env, env = json.loads(sys.argv[1])
a = subprocess.run(killed, env=kill_env, start_new_session=True, capture_output=True)
tmps = [str(p) for p in __import__("pathlib").Path(sys.argv[2]).rglob(".*.tmp")]
b = subprocess.run(resume, env=env, capture_output=True)
print(json.dumps([a.returncode, tmps, b.returncode, b.stdout.decode()[-1500:] + b.stderr.decode()[-1500:]]))
"""


def test_a_killed_workers_temp_file_is_removed_while_the_worker_is_an_unreaped_zombie(kitchen, tmp_path):
    """Was wrong: io.remove_dead_temps took a zombie's pid (a signal 0 reaches it) for a live writer, so a killed
    extract worker's frame-cache temp file stayed for good where its parent (a container's PID 1) reaps nothing."""
    wd = workdir_from(kitchen, tmp_path / "wd")
    cmd = leap("extract", "--workdir", wd, "--split", "train", "--workers", 2)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    kill_env = {**ENV, "PYTHONPATH": f"{hook}{os.pathsep}{ROOT}", "S60_KILL_MATCH": ".jpgs", "S60_KILL_AT": "3",
                "S60_KILL_WHEN": "before", "S60_KILL_COUNT": str(tmp_path / "count")}
    r = subprocess.run([cmd[0], "-c", UNREAPED, json.dumps([cmd, cmd, kill_env, ENV]), str(wd / "frame-cache")],
                       capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)
    killed_rc, temps_at_kill, rc, res = json.loads(r.stdout.strip().splitlines()[-1])
    # the killed writer's temp file, and the other worker's where it was writing one at the kill (seen in a CI run)
    assert killed_rc == -signal.SIGKILL and 1 <= len(temps_at_kill) <= 2 and rc == 0, (temps_at_kill, res)
    ref = sorted((kitchen / "descriptors" / "train.jsonl").read_bytes().splitlines())
    assert sorted((wd / "descriptors" / "train.jsonl").read_bytes().splitlines()) == ref
    left = sorted(q.name for q in (wd / "frame-cache").rglob(".*.tmp"))
    assert not left, f"the killed worker's temp file is left in the frame cache for good: {left}"


# --- generate-programs -----------------------------------------------------------------------------------------

N_CLIPS = 12


def _generate(wd, server, *extra):
    return leap("generate-programs", "--workdir", wd, "--split", "val", "--backend", "openai", "--model", "test-model",
                "--base-url", server.base_url, "--api-key-env", "LEAP_TEST_KEY", "--concurrency", 2,
                "--timeout", 30, "--price-in", 1, "--price-out", 2, *extra)


def test_generate_killed_again_and_again_pays_each_stored_reply_once(tmp_path):
    """Three kills: at seeded record counts, the second while the resume starts (a seeded delay: it may fall in the
    intake of the first run's journal). A prompt whose record was on disk at a kill is never asked after it; the
    last run asks only for what is missing, its summary counts the rest as resumed, the output's ledger holds
    every clip's spend (once per reply received) and the programs are the server's, each once."""
    programs = excerpt_programs(N_CLIPS)
    excerpt_annotations(tmp_path, rows=N_CLIPS)
    out = tmp_path / "programs" / "val.jsonl"
    rng = random.Random(6060)
    script = lambda body, n: Reply(json.dumps(programs[narration_id_of(body)]), delay=0.03)  # noqa: E731
    with ScriptedServer(script) as server:
        cmd = _generate(tmp_path, server)
        on_disk: list[tuple[int, set]] = []  # (requests received at the kill, clips with a record then)
        first, third = sorted(rng.sample(range(2, N_CLIPS - 2), 2))
        delay = rng.uniform(0.6, 1.4)  # (a run that ends first is let be: the next has less to do)
        plan = [lambda: lines(out) >= first, None, lambda: lines(out) >= third]
        for ready in plan:
            if ready is None:
                t0 = time.monotonic()
                ready = lambda t0=t0: time.monotonic() - t0 >= delay  # noqa: E731
            if not kill_at(cmd, ready):
                break
            n = settled(server)
            recs = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
            ids = [r["narration_id"] for r in recs]
            assert len(ids) == len(set(ids)), ids
            on_disk.append((n, set(ids)))
        assert on_disk
        done_before = lines(out)
        rc, res = run(cmd)
        assert rc == 0, res
        bodies = list(server.requests)
    for n, ids in on_disk:
        again = sorted({narration_id_of(b) for b in bodies[n:]} & ids)
        assert not again, f"asked again after a kill though their records were written: {again}"
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(recs) == N_CLIPS == len({r["narration_id"] for r in recs})
    assert {r["narration_id"]: r["program"] for r in recs} == programs
    assert summary_count(res, "resumed (already done)") == done_before
    assert summary_count(res, "segments done in this run") == N_CLIPS - done_before
    asked = Counter(narration_id_of(b) for b in bodies)
    assert set(asked) == set(programs) and len(bodies) <= N_CLIPS + 2 * len(on_disk)  # --concurrency 2 in flight
    with sqlite3.connect(tmp_path / "programs" / "cache.sqlite") as db:
        (spent, requests), = db.execute("SELECT cost, requests FROM ledger").fetchall()
    assert N_CLIPS <= requests <= len(bodies)
    assert f"${spent:.4f}" in res.split("spent on this output so far")[1].split("\n")[0]
    assert not (tmp_path / "programs" / "cache.sqlite.unwritten").exists()
    assert not temps(tmp_path / "programs")


# --- build-shards ----------------------------------------------------------------------------------------------

SHARDS = ("--split", "train", "--max-count", 2, "--workers", 2)


@pytest.mark.parametrize("match,at,when", [(".tar", 1, "before"), (".tar", 3, "after"), ("manifest.json", 1, "before"),
                                           ("manifest.json", 1, "after")])
def test_build_shards_killed_at_a_rename_resumes_to_the_same_bytes(kitchen, tmp_path, match, at, when):
    """A kill just before or after a tar's rename (a complete tar not yet in .progress.jsonl), or the manifest's:
    the rerun ends with the uninterrupted bytes, reports as resumed the tars recorded at the kill, and leaves
    no temp file; check-shards then finds every shard whole."""
    wd = workdir_from(kitchen, tmp_path / "wd", "descriptors", "programs", "frame-cache")
    folder = wd / "shards" / "train"
    cmd = leap("build-shards", "--workdir", wd, *SHARDS)
    killed_at_rename(cmd, tmp_path, match, at, when)
    recorded = lines(folder / ".progress.jsonl")
    rc, res = run(cmd)
    assert rc == 0, res
    ref_tars, ref_manifest = _shards(kitchen)
    tars, manifest = _shards(wd)
    assert tars.keys() == ref_tars.keys() and all(tars[k] == ref_tars[k] for k in tars)
    assert manifest == ref_manifest.replace(str(kitchen), "WORKDIR")
    assert not temps(folder) and not list(folder.glob(".*.tmp"))
    rows = [[c.strip() for c in x.strip("│").split("│")] for x in res.splitlines()
            if x.startswith("│") and x.count("│") >= 8]  # (the summary's row, its "this run" cell wrapped or not)
    done = " ".join(r[6] for r in rows if r[6])
    want = ", ".join(f"{n} {what}" for n, what in ((len(ref_tars) - recorded, "written"), (recorded, "kept")) if n)
    assert rows[0][4] == str(len(ref_tars)) and done == want, res  # shards, and those kept from before the kill
    rc, res = run(leap("check-shards", "--workdir", wd, "--split", "train"))
    assert rc == 0, res


def test_a_killed_force_rebuild_resumes_without_force_to_the_new_settings_bytes(kitchen, tmp_path):
    """build-shards --force with other settings (--max-count 3) is killed once it has deleted the old shards and
    written new ones: the rerun, as a requeue script would run it, goes on with the new build (its progress
    records say so) without --force, and ends with the bytes of an uninterrupted build with those settings."""
    ref = workdir_from(kitchen, tmp_path / "ref", "descriptors", "programs", "frame-cache")
    rc, res = run(leap("build-shards", "--workdir", ref, "--split", "train", "--max-count", 3))
    assert rc == 0, res
    wd = workdir_from(kitchen, tmp_path / "wd", "descriptors", "programs", "frame-cache", "shards")
    folder = wd / "shards" / "train"
    old = {q.name for q in folder.glob("*.tar")}

    def rebuilding():
        try:
            names = {q.name for q in folder.iterdir()}
        except OSError:
            return False
        return "manifest.json" not in names and any(n.endswith(".tar") and not n.startswith(".") for n in names)

    assert kill_at(leap("build-shards", "--workdir", wd, "--split", "train", "--max-count", 3, "--force"), rebuilding)
    rc, res = run(leap("build-shards", "--workdir", wd, "--split", "train", "--max-count", 3))
    assert rc == 0, res
    new = {q.name: q.read_bytes() for q in folder.glob("*.tar")}
    want = {q.name: q.read_bytes() for q in (ref / "shards" / "train").glob("*.tar")}
    assert new.keys() == want.keys() and new == want and new.keys() != old
    manifest = (folder / "manifest.json").read_text().replace(str(wd), "W")
    assert manifest == (ref / "shards" / "train" / "manifest.json").read_text().replace(str(ref), "W")


# --- train -----------------------------------------------------------------------------------------------------

# 10 training clips in batches of 4: 2 steps an epoch, 4 in all; a last.pt at every step, no validation
TRAIN4 = ("--config", "tiny-synthetic-short", "--name", "r", "--set", "train.epochs=2", "--set",
          "train.checkpoint_every=1", "--set", "data.batch_size=4", "--set", "data.val=null")


@pytest.fixture(scope="module")
def trained4(kitchen, tmp_path_factory):
    import torch

    wd = workdir_from(kitchen, tmp_path_factory.mktemp("train4"), "shards", "programs")
    rc, out = run(leap("train", "--workdir", wd, *TRAIN4))
    assert rc == 0, out
    return wd, torch.load(wd / "runs/r/checkpoints/last.pt", map_location="cpu", weights_only=True)


def test_train_killed_then_its_resume_killed_too_ends_with_the_uninterrupted_weights(kitchen, trained4, tmp_path):
    """The run dies just before the rename of its second last.pt (a complete temp file: the state of step 1 kept),
    its --resume dies just after the rename of its first (step 2); a second --resume finishes: the weights, the
    optimizer state and the metrics rows are the uninterrupted run's, no temp file is left, and the resume says
    where it starts."""
    import torch

    wd = workdir_from(kitchen, tmp_path / "wd", "shards", "programs")
    ck = wd / "runs" / "r" / "checkpoints"
    cmd = leap("train", "--workdir", wd, *TRAIN4)
    killed_at_rename(cmd, tmp_path, "last.pt", 2, "before")
    first = torch.load(ck / "last.pt", map_location="cpu", weights_only=True)["step"]
    killed_at_rename([*cmd, "--resume"], tmp_path, "last.pt", 1, "after")
    second = torch.load(ck / "last.pt", map_location="cpu", weights_only=True)["step"]
    assert (first, second) == (1, 2) and trained4[1]["step"] == 4
    rc, res = run([*cmd, "--resume"])
    assert rc == 0, res
    assert f"resumed from checkpoints/last.pt at step {second} of " in flat(res), res
    _same_training(torch.load(ck / "last.pt", map_location="cpu", weights_only=True), trained4[1])
    rows = [json.loads(x) for x in (wd / "runs/r/metrics.jsonl").read_text().splitlines()]
    ref_rows = [json.loads(x) for x in (trained4[0] / "runs/r/metrics.jsonl").read_text().splitlines()]
    assert [(r["split"], r["step"]) for r in rows] == [(r["split"], r["step"]) for r in ref_rows]
    assert not temps(wd / "runs") and not list(ck.glob(".*.tmp"))
