"""Crash-resume of the long stages after a SIGKILL (not a Ctrl-C) at fixed points, found by watching each stage's
own progress on disk (records written, tars renamed, a checkpoint saved, requests received by the server), never
by sleep timing alone. Each stage is run in a subprocess of its own session; the kill is ``os.killpg(SIGKILL)``
of the whole group, or of the parent alone (its workers orphaned). After the resume the outputs are compared
with an uninterrupted run of the same command:

- extract: the same record set (lines are appended as segments finish: their order follows the workers, so the
  bytes are compared only as a set of lines), the frame cache holding the same files;
- generate-programs: the same programs, each prompt answered before the kill never asked again (counted at a
  scripted OpenAI-compatible server), the summary's "resumed" count equal to the records on disk at the kill;
- build-shards: the same tar bytes and the same manifest (its paths aside), whatever the kill point;
- train: the same step and bit-identical weights and optimizer state (CPU, one thread: deterministic).

Also: no temp file or lock left that blocks or litters the next run, and a second run on an output that a live
(stopped) run holds is refused in one line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.kitchens import kitchen_copy
from tests.procs import alive_after
from tests.program_helpers import excerpt_annotations, excerpt_programs
from tests.programs_llm_server import Reply, ScriptedServer, narration_id_of

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
       "NO_COLOR": "1", "COLUMNS": "200", "LEAP_TEST_KEY": "sk-test-kill-resume"}


def leap(*args) -> list[str]:
    return [sys.executable, "-m", "leap_cli", *map(str, args)]


def run(cmd, timeout=180) -> tuple[int, str]:
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT, timeout=timeout)
    return r.returncode, r.stdout.decode(errors="replace")


def lines(path) -> int:
    try:
        return Path(path).read_bytes().count(b"\n")
    except OSError:
        return 0


def settled(server) -> int:
    """The count of the server's requests once no more arrive: a request a process wrote just before it was killed
    or stopped reaches the server after it."""
    n = -1
    while n != len(server.requests):
        n = len(server.requests)
        time.sleep(0.3)
    return n


def kill_when(cmd, ready, *, parent_only=False, timeout=120.0) -> tuple[subprocess.Popen, list[int]]:
    """Start ``cmd`` in a session of its own, wait until ``ready()``, then SIGKILL its process group (or only its
    parent); returns the process and the parent's children at the kill. Fails when the stage ended first."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT,
                         start_new_session=True)
    deadline = time.monotonic() + timeout
    while not ready():
        if p.poll() is not None:
            out = p.stdout.read().decode(errors="replace")
            pytest.fail(f"the stage ended (exit {p.returncode}) before the kill point:\n{out[-2000:]}")
        assert time.monotonic() < deadline, "the kill point never came"
        time.sleep(0.003)
    try:
        children = [int(x) for x in Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()]
    except OSError:
        children = []
    if parent_only:
        os.kill(p.pid, signal.SIGKILL)
    else:
        os.killpg(p.pid, signal.SIGKILL)
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL
    return p, children


def temps(folder) -> list[str]:
    return sorted(str(q) for q in Path(folder).rglob("*") if q.name.endswith((".tmp", ".partial")))


def summary_count(out: str, label: str) -> int:
    """The number in the summary table's row ``label``."""
    m = re.search(rf"{re.escape(label)}\s*│\s*(\d+)", out)
    assert m, f"no '{label}' row in:\n{out[-3000:]}"
    return int(m.group(1))


# --- one small synthetic kitchen, with uninterrupted reference runs of every stage -----------------------------

@pytest.fixture(scope="module")
def kitchen(tmp_path_factory):
    """WORKDIR with the kitchen (2 videos), and the uninterrupted reference outputs of extract (train split),
    generate-programs (offline), build-shards (several tars) and train."""
    ref = tmp_path_factory.mktemp("ref")
    kitchen_copy(tmp_path_factory, ref / "kitchen", "--videos", 2, "--segments", 10)
    rc, out = run(leap("extract", "--workdir", ref, "--split", "train", "--workers", 2))
    assert rc == 0, out
    rc, out = run(leap("generate-programs", "--workdir", ref, "--split", "train", "--backend", "offline"))
    assert rc == 0, out
    rc, out = run(leap("build-shards", "--workdir", ref, "--split", "train", "--max-count", 2))
    assert rc == 0, out
    for cmd in (("extract", "--workers", 2), ("generate-programs", "--backend", "offline"), ("build-shards",)):
        rc, out = run(leap(cmd[0], "--workdir", ref, "--split", "val", *cmd[1:]))  # (validation in training)
        assert rc == 0, out
    return ref


def workdir_from(ref: Path, dst: Path, *stages: str) -> Path:
    """A new workdir on the reference kitchen (linked) with copies of the reference's ``stages`` folders."""
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "kitchen").symlink_to(ref / "kitchen")
    for s in stages:
        shutil.copytree(ref / s, dst / s)
    return dst


# --- extract ---------------------------------------------------------------------------------------------------

def _frame_cache(wd: Path) -> dict[str, bytes]:
    root = wd / "frame-cache"
    return {str(q.relative_to(root)): q.read_bytes() for q in root.rglob("*") if q.is_file()
            and not q.name.endswith(".tmp")}


@pytest.mark.parametrize("parent_only", [False, True], ids=["group", "parent-only"])
def test_extract_killed_after_records_resumes_to_the_uninterrupted_records(kitchen, tmp_path, parent_only):
    wd = workdir_from(kitchen, tmp_path / "wd")
    out = wd / "descriptors" / "train.jsonl"
    cmd = leap("extract", "--workdir", wd, "--split", "train", "--workers", 2)
    _, children = kill_when(cmd, lambda: lines(out) >= 4, parent_only=parent_only)
    # the workers die with the parent, also when only the parent was killed (PR_SET_PDEATHSIG, docs/extract.md)
    assert children and not alive_after(children, 10.0)
    done = lines(out)  # every complete line at the kill (a cut last line has no newline and is dropped)
    rc, res = run(cmd)
    assert rc == 0, res
    ref = sorted((kitchen / "descriptors" / "train.jsonl").read_bytes().splitlines())
    assert sorted(out.read_bytes().splitlines()) == ref  # nothing lost, nothing twice, nothing changed
    assert f"{len(ref)} selected, {done} done before, {len(ref) - done} written now" in " ".join(res.split())
    train_videos = {json.loads(x)["video_id"] for x in ref}
    assert _frame_cache(wd) == {k: v for k, v in _frame_cache(kitchen).items() if k.split("/")[0] in train_videos}
    assert not temps(wd / "descriptors")
    # the lock file stays (it holds no data) but blocks nothing: a third run has nothing to do
    rc, again = run(cmd)
    assert rc == 0 and f"{len(ref)} done before, 0 written now" in " ".join(again.split()), again


# --- generate-programs against a scripted OpenAI-compatible server ---------------------------------------------

N_CLIPS = 12


@pytest.fixture(scope="module")
def clip_programs():
    return excerpt_programs(N_CLIPS)


def _generate(wd, server, *extra):
    return leap("generate-programs", "--workdir", wd, "--split", "val", "--backend", "openai", "--model", "test-model",
                "--base-url", server.base_url, "--api-key-env", "LEAP_TEST_KEY", "--concurrency", 2,
                "--timeout", 30, "--price-in", 1, "--price-out", 2, *extra)


def test_generate_killed_mid_run_asks_no_answered_prompt_again(tmp_path, clip_programs):
    """Replies take 0.1 s; the kill comes once 5 records are on disk. Every clip whose record was written before
    the kill is asked exactly once in all; only the ones in flight at the kill are asked again."""
    excerpt_annotations(tmp_path, rows=N_CLIPS)
    out = tmp_path / "programs" / "val.jsonl"
    script = lambda body, n: Reply(json.dumps(clip_programs[narration_id_of(body)]), delay=0.1)  # noqa: E731
    with ScriptedServer(script) as server:
        kill_when(_generate(tmp_path, server), lambda: lines(out) >= 5)
        settled(server)
        before = [json.loads(x)["narration_id"] for x in out.read_text().splitlines()]
        asked_before = Counter(narration_id_of(b) for b in server.requests)
        rc, res = run(_generate(tmp_path, server))
        assert rc == 0, res
        asked = Counter(narration_id_of(b) for b in server.requests)
    recs = {json.loads(x)["narration_id"]: json.loads(x) for x in out.read_text().splitlines()}
    assert len(out.read_text().splitlines()) == N_CLIPS == len(recs)
    assert {k: r["program"] for k, r in recs.items()} == clip_programs  # the server's replies, each once
    assert all(r["status"] == "valid" for r in recs.values())
    assert all(asked[nid] == 1 for nid in before), asked  # answered and written before the kill: never again
    # asked again: only requests the server had not answered to the process at the kill (a reply it had, and had
    # not written as a record yet, is in the cache's journal: test_generate_killed_between_a_reply_and_its_record_...)
    again = [nid for nid in asked_before if asked[nid] > 1]
    assert len(again) <= 2  # --concurrency 2
    assert sum(asked.values()) == N_CLIPS + len(again)
    assert summary_count(res, "resumed (already done)") == len(before)
    assert not temps(tmp_path / "programs")


KILL_AT_THIRD_CHECK = """
import os, signal, sys
from leap_cli.programs import generate
checked, verify = [], generate.ProgramGenerator.verify
async def killed_at_the_third(self, text, info):
    checked.append(info.narration_id)
    if len(checked) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return await verify(self, text, info)
generate.ProgramGenerator.verify = killed_at_the_third
sys.argv[0] = "leap"
from leap_cli.cli import main
main()
"""


def test_generate_killed_between_a_reply_and_its_record_asks_it_no_more(tmp_path, clip_programs):
    """The third reply is in the process (received, paid) and its record not yet written when the kill comes: it
    was only in memory until the next batch of the cache, and the resume paid for it again (1 run in ~8 of the test
    above). The journal (cache.sqlite.unwritten/) keeps it: every clip is asked once in all, and the ledger counts
    each request once."""
    excerpt_annotations(tmp_path, rows=N_CLIPS)
    out = tmp_path / "programs" / "val.jsonl"
    script = lambda body, n: Reply(json.dumps(clip_programs[narration_id_of(body)]))  # noqa: E731
    with ScriptedServer(script) as server:
        cmd = _generate(tmp_path, server, "--concurrency", 1)
        killed = subprocess.run([sys.executable, "-c", KILL_AT_THIRD_CHECK, *cmd[3:]], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=ENV, cwd=ROOT, timeout=180)
        assert killed.returncode == -signal.SIGKILL, killed.stdout.decode(errors="replace")[-2000:]
        assert lines(out) == 2 and len(server.requests) == 3
        assert list((tmp_path / "programs" / "cache.sqlite.unwritten").iterdir())  # the process's journal
        rc, res = run(cmd)
        assert rc == 0, res
        asked = Counter(narration_id_of(b) for b in server.requests)
    assert len(asked) == N_CLIPS and set(asked.values()) == {1}, asked
    assert summary_count(res, "cache hits") == 1
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(recs) == N_CLIPS and all(r["status"] == "valid" for r in recs)
    import sqlite3
    with sqlite3.connect(tmp_path / "programs" / "cache.sqlite") as db:
        assert db.execute("SELECT requests FROM ledger").fetchall() == [(N_CLIPS,)]
    assert not (tmp_path / "programs" / "cache.sqlite.unwritten").exists()


def test_generate_killed_during_a_repair_turn_does_not_pay_the_first_reply_again(tmp_path, clip_programs):
    """A clip's first reply fails validation (a repair turn follows); the kill comes while the repair request is at
    the server. The resume replays the first reply from the cache and asks only the repair turn again."""
    excerpt_annotations(tmp_path, rows=N_CLIPS)
    target = list(clip_programs)[2]
    released = []

    def script(body, n):
        nid = narration_id_of(body)
        if nid == target and n == 0:
            bad = json.loads(json.dumps(clip_programs[nid]))
            bad["steps"][0]["verb"] = "teleport"  # parses, fails validation
            return Reply(json.dumps(bad))
        if nid == target and not released:
            return Reply(json.dumps(clip_programs[nid]), delay=20)  # the repair turn, in flight at the kill
        return Reply(json.dumps(clip_programs[nid]))

    with ScriptedServer(script) as server:
        def repair_at_server():
            return server.calls_for(target) >= 2
        kill_when(_generate(tmp_path, server, "--concurrency", 1), repair_at_server)
        released.append(True)
        first = [b for b in server.requests if narration_id_of(b) == target]
        assert len(first) == 2 and len(first[1]["messages"]) > len(first[0]["messages"])
        n0 = len(server.requests)
        rc, res = run(_generate(tmp_path, server, "--concurrency", 1))
        assert rc == 0, res
        again = [b for b in server.requests[n0:] if narration_id_of(b) == target]
    # only the repair turn (the longer conversation) is asked again; the paid first reply comes from the cache
    assert [len(b["messages"]) for b in again] == [len(first[1]["messages"])]
    assert summary_count(res, "cache hits") >= 1
    recs = [json.loads(x) for x in (tmp_path / "programs" / "val.jsonl").read_text().splitlines()]
    assert len(recs) == N_CLIPS == len({r["narration_id"] for r in recs})


def test_a_second_generate_on_an_output_a_stopped_run_holds_is_refused_in_one_line(tmp_path, clip_programs):
    excerpt_annotations(tmp_path, rows=N_CLIPS)
    out = tmp_path / "programs" / "val.jsonl"
    script = lambda body, n: Reply(json.dumps(clip_programs[narration_id_of(body)]))  # noqa: E731
    with ScriptedServer(script) as server:
        p = subprocess.Popen(_generate(tmp_path, server, "--concurrency", 1), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, env=ENV, cwd=ROOT, start_new_session=True)
        try:
            while lines(out) < 2:
                assert p.poll() is None
                time.sleep(0.003)
            os.killpg(p.pid, signal.SIGSTOP)
            n0 = settled(server)
            rc, res = run(_generate(tmp_path, server, "--concurrency", 1))
            assert rc == 2 and len(server.requests) == n0, res
            err = [x for x in res.splitlines() if x.startswith("error:")]
            assert len(err) == 1 and "another leap process is writing this file" in err[0], res
        finally:
            os.killpg(p.pid, signal.SIGCONT)
            p.communicate(timeout=120)
        assert p.returncode == 0
    recs = [json.loads(x)["narration_id"] for x in out.read_text().splitlines()]
    assert sorted(recs) == sorted(clip_programs) and len(server.requests) == N_CLIPS


# --- build-shards ----------------------------------------------------------------------------------------------

def _shards(wd: Path) -> tuple[dict[str, bytes], str]:
    folder = wd / "shards" / "train"
    tars = {q.name: q.read_bytes() for q in folder.glob("*.tar")}
    manifest = (folder / "manifest.json").read_text().replace(str(wd), "WORKDIR")
    return tars, manifest


@pytest.mark.parametrize("point", ["first-tar", "partial-tar", "manifest"])
def test_build_shards_killed_at_any_point_resumes_to_the_same_bytes(kitchen, tmp_path, point):
    wd = workdir_from(kitchen, tmp_path / "wd", "descriptors", "programs", "frame-cache")
    folder = wd / "shards" / "train"

    def ready():
        if not folder.exists():
            return False
        names = [q.name for q in folder.iterdir()]
        if point == "first-tar":
            return any(n.endswith(".tar") and not n.startswith(".") for n in names)
        if point == "partial-tar":
            return any(n.endswith(".partial") for n in names)
        return sum(n.endswith(".tar") and not n.startswith(".") for n in names) >= 5  # the last tar: the end
    kill_when(leap("build-shards", "--workdir", wd, "--split", "train", "--max-count", 2, "--workers", 2), ready)
    rc, res = run(leap("build-shards", "--workdir", wd, "--split", "train", "--max-count", 2, "--workers", 2))
    assert rc == 0, res
    ref_tars, ref_manifest = _shards(kitchen)
    tars, manifest = _shards(wd)
    assert tars.keys() == ref_tars.keys() and all(tars[k] == ref_tars[k] for k in tars)
    assert manifest == ref_manifest.replace(str(kitchen), "WORKDIR")
    assert not temps(folder)


# --- train -----------------------------------------------------------------------------------------------------

# 10 training clips in batches of 4: 2 steps an epoch, 12 in all; a validation at each epoch's end (best.pt), a
# periodic last.pt every 3 steps and at each epoch's end
TRAIN = ("--config", "tiny-synthetic-short", "--name", "r", "--set", "train.epochs=6", "--set",
         "train.checkpoint_every=3", "--set", "data.batch_size=4", "--set", "train.eval_every_epochs=1")


@pytest.fixture(scope="module")
def trained(kitchen, tmp_path_factory):
    import torch

    wd = workdir_from(kitchen, tmp_path_factory.mktemp("train-ref"), "shards", "programs")
    rc, out = run(leap("train", "--workdir", wd, *TRAIN))
    assert rc == 0, out
    assert (wd / "runs/r/checkpoints/best.pt").exists()  # (validation ran)
    return wd, torch.load(wd / "runs/r/checkpoints/last.pt", map_location="cpu", weights_only=True)


def _same_training(a: dict, b: dict) -> None:
    import torch

    assert a["step"] == b["step"]
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k, v in sa[i].items():
            assert torch.equal(v, sb[i][k]) if torch.is_tensor(v) else v == sb[i][k]


@pytest.mark.parametrize("point", ["after-a-checkpoint", "while-writing-the-first-checkpoint"])
def test_train_killed_resumes_to_the_uninterrupted_weights(kitchen, trained, tmp_path, point):
    import torch

    wd = workdir_from(kitchen, tmp_path / "wd", "shards", "programs")
    ck = wd / "runs" / "r" / "checkpoints"
    metrics = wd / "runs" / "r" / "metrics.jsonl"
    if point == "after-a-checkpoint":
        ready = lambda: lines(metrics) >= 2 and (ck / "last.pt").exists()  # noqa: E731 (between checkpoints)
    else:
        ready = lambda: ck.exists() and any(q.name.endswith(".tmp") for q in ck.iterdir())  # noqa: E731
    kill_when(leap("train", "--workdir", wd, *TRAIN), ready)
    at = torch.load(ck / "last.pt", map_location="cpu", weights_only=True)["step"] if (ck / "last.pt").exists() \
        else None
    rc, res = run(leap("train", "--workdir", wd, *TRAIN, "--resume"))
    assert rc == 0, res
    flat = " ".join(res.split())
    if at is None:
        assert "holds no checkpoint yet" in flat and "starting it from step 0" in flat, res
    else:
        assert f"resumed from checkpoints/last.pt at step {at} of " in flat, res
    _same_training(torch.load(ck / "last.pt", map_location="cpu", weights_only=True), trained[1])
    assert not temps(wd / "runs")
    # the metrics log holds each logged step once, as the uninterrupted run's
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
    ref_steps = [json.loads(x)["step"] for x in (trained[0] / "runs/r/metrics.jsonl").read_text().splitlines()]
    assert steps == ref_steps


# SIGKILL at one instant: right after the last.pt of a validation that found a new best was renamed into place,
# before best.pt became its copy (a kill during a large model's checkpoint write, seconds, left best.pt alone when
# best.pt was written first)
KILLED_BEFORE_BEST = """
import os, signal, sys
import leap_cli.train.loop as loop
def die(src, dst):
    os.kill(os.getpid(), signal.SIGKILL)
loop.copy_checkpoint = die
from leap_cli.cli import main
sys.argv = ["leap", *sys.argv[1:]]
main()
"""


def test_train_killed_between_last_pt_and_its_best_pt_copy_resumes_and_gets_best_pt(kitchen, trained, tmp_path):
    """At an epoch's end whose validation is the best yet, the loop writes last.pt, then makes best.pt its copy.
    When that validation comes before the run's first periodic checkpoint (here epoch 1 ends at step 2, the first
    periodic checkpoint is at step 3), a kill in between leaves last.pt alone: --resume goes on from it and makes
    best.pt then, the state of that step (docs/train.md: a requeue script may always pass --resume). Written in
    the other order, the same kill left best.pt alone, and every --resume was refused."""
    import torch

    wd = workdir_from(kitchen, tmp_path / "wd", "shards", "programs")
    ck = wd / "runs" / "r" / "checkpoints"
    r = subprocess.run([sys.executable, "-c", KILLED_BEFORE_BEST, "train", "--workdir", str(wd), *TRAIN],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT, timeout=180)
    assert r.returncode == -signal.SIGKILL, r.stdout.decode()[-2000:]
    assert sorted(q.name for q in ck.iterdir()) == ["last.pt"]  # the state a kill in that window leaves
    first = torch.load(ck / "last.pt", map_location="cpu", weights_only=True)
    assert first["best_step"] == first["step"] == 2
    rc, res = run(leap("train", "--workdir", wd, *TRAIN, "--resume"))
    assert rc == 0, res
    _same_training(torch.load(ck / "last.pt", map_location="cpu", weights_only=True), trained[1])
    best, ref_best = (torch.load(d / "best.pt", map_location="cpu", weights_only=True)
                      for d in (ck, trained[0] / "runs/r/checkpoints"))
    assert best["step"] == ref_best["step"]  # the best validation's state, as the uninterrupted run kept it
    assert all(torch.equal(best["model"][k], ref_best["model"][k]) for k in best["model"])


def test_best_pt_is_a_link_of_last_pt_where_links_can_be_made_else_a_copy(tmp_path, monkeypatch):
    import os

    from leap_cli.train import checkpoint

    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    last.write_bytes(b"state of step 2")
    best.write_bytes(b"an older best")
    checkpoint.copy_checkpoint(last, best)
    assert os.path.samefile(last, best)
    last.unlink()  # (the next last.pt is renamed over it: best.pt keeps the bytes it linked)
    last.write_bytes(b"state of step 3")
    assert best.read_bytes() == b"state of step 2"

    def no_links(*_):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(checkpoint.os, "link", no_links)
    checkpoint.copy_checkpoint(last, best)
    assert best.read_bytes() == b"state of step 3" and not os.path.samefile(last, best)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]  # no temp file left
