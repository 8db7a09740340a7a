"""A Slurm job array on one work directory: `leap generate-programs --backend openai --shard i/N` (N = 4..8) started
as separate processes at the same moment, all sharing programs/cache.sqlite and its journal; some SIGKILLed mid-run
and rerun, some capped with --max-cost, two given the same --shard by mistake; then `leap build-shards --shard i/N`
run as a second array on one folder and `leap train` on the merged parts."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.procs import reap, run_together
from tests.programs_llm_server import Reply, ScriptedServer, narration_id_of

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
       "NO_COLOR": "1", "COLUMNS": "200", "LEAP_TEST_KEY": "sk-test-array-attack"}
N_VIDEOS, PER_VIDEO = 8, 2
COST = 1000 / 1e6 * 1.0 + 200 / 1e6 * 2.0  # one reply of the scripted server (1000 + 200 tokens) at 1 and 2 USD/M


@pytest.fixture(scope="module")
def kitchen(tmp_path_factory):
    """(annotations' CSV text of 8 videos x 2 segments, a valid program per narration id)."""
    from leap_cli.epic.annotations import read_segments
    from leap_cli.epic.classes import ClassVocab
    from leap_cli.programs.offline import offline_program
    from leap_cli.programs.prompt import clip_info, load_exemplars, narration_record

    data = ROOT / "tests" / "data"
    src = (data / "epic" / "EPIC_100_validation_excerpt.csv").read_text().splitlines()
    rows = [src[0]]
    for i, line in enumerate(src[1:1 + N_VIDEOS * PER_VIDEO]):
        vid = f"P01_{20 + i // PER_VIDEO}"
        cells = line.split(",")
        cells[0], cells[2] = f"{vid}_{i % PER_VIDEO}", vid
        rows.append(",".join(cells))
    csv = "\n".join(rows) + "\n"
    tmp = tmp_path_factory.mktemp("arrayclips")
    (tmp / "val.csv").write_text(csv)
    verbs = ClassVocab.from_csv(data / "epic100" / "EPIC_100_verb_classes.csv", "verb")
    nouns = ClassVocab.from_csv(data / "epic100" / "EPIC_100_noun_classes.csv", "noun")
    ex = load_exemplars()
    programs = {s.narration_id: offline_program(clip_info(narration_record(s), s), ex, verbs, nouns)
                for s in read_segments(tmp / "val.csv")}
    assert len(programs) == N_VIDEOS * PER_VIDEO
    return csv, programs


def _workdir(root: Path, csv: str) -> Path:
    """The work directory of a generation array; its programs/cache.sqlite made beforehand (parts opening a fresh
    cache at once may fail: test_parts_opening_a_fresh_cache_at_once_all_open_it, a bug)."""
    import shutil

    from leap_cli.programs.store import ProgramStore

    data = ROOT / "tests" / "data"
    ann = root / "kitchen" / "annotations"
    ann.mkdir(parents=True)
    for name in ("EPIC_100_verb_classes.csv", "EPIC_100_noun_classes.csv"):
        shutil.copy(data / "epic100" / name, ann / name)
    (ann / "EPIC_100_validation.csv").write_text(csv)
    ProgramStore(root / "programs" / "cache.sqlite").close()
    return root


def _cmd(wd, server, *extra) -> list[str]:
    return [sys.executable, "-m", "leap_cli", "generate-programs", "--workdir", str(wd), "--split", "val",
            "--backend", "openai", "--model", "test-model", "--base-url", server.base_url, "--api-key-env",
            "LEAP_TEST_KEY", "--concurrency", "2", "--timeout", "30", "--price-in", "1", "--price-out", "2", *extra]


def _array(cmds, timeout=120) -> list[tuple[int, str]]:
    return run_together(cmds, ENV, ROOT, timeout)


def _clean(res) -> None:
    for rc, text in res:
        assert rc == 0, text[-3000:]
        assert "Traceback" not in text and "database is locked" not in text, text[-3000:]


def _ledger(wd) -> dict[str, tuple[float, int]]:
    with sqlite3.connect(wd / "programs" / "cache.sqlite") as db:
        return {o: (c, n) for o, c, n in db.execute("SELECT out, cost, requests FROM ledger")}


def _records(path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def _parts(wd, n) -> list[Path]:
    return [wd / "programs" / f"val.shard{i}of{n}.jsonl" for i in range(n)]


def _first_rounds(server) -> Counter:
    return Counter(narration_id_of(b) for b in server.requests)


def _good(programs, delay=0.0):
    return lambda body, n: Reply(json.dumps(programs[narration_id_of(body)]), delay=delay)


def _comparable(rec: dict) -> dict:
    return {k: rec.get(k) for k in ("narration_id", "status", "program")}


# --- the first open of the cache ---------------------------------------------------------------------------------

# Part A reads the cache's version (0: a new file); part B, another process, opens the cache then (all its
# migrations, unless A's lock makes it wait: A waits for B up to 3 s, then goes on); A migrates; B must open it too
OPEN_RACE = """
import subprocess, sys
from leap_cli.programs import store
path, real, other = sys.argv[1], store.ProgramStore._connect, []

class Conn:
    def __init__(self, db):
        self._db = db
    def __getattr__(self, name):
        return getattr(self._db, name)
    def __enter__(self):
        return self._db.__enter__()
    def __exit__(self, *a):
        return self._db.__exit__(*a)
    def execute(self, sql, *args):
        cur = self._db.execute(sql, *args)
        if "user_version" in sql and "=" not in sql and not other:  # another part of the array opens it now
            other.append(subprocess.Popen([sys.executable, "-c", "import sys; from leap_cli.programs.store import "
                                           "ProgramStore as S; S(sys.argv[1]).close()", path]))
            try:
                other[0].wait(timeout=3)
            except subprocess.TimeoutExpired:
                pass  # (it waits for this process's write lock)
        return cur

def connect(self, **kw):
    return Conn(real(self, **kw))
store.ProgramStore._connect = connect
try:
    store.ProgramStore(path).close()
except Exception as e:
    print("FAILED:", getattr(e, "one_line", lambda: str(e))())
    sys.exit(2)
assert other and other[0].wait(timeout=60) == 0, "the other process could not open the cache"
"""


def test_parts_opening_a_fresh_cache_at_once_all_open_it(tmp_path):
    """Was wrong: parts of an array opening a new cache.sqlite at once race in ProgramStore.migrate (user_version read
    outside the write transaction): 'table cache already exists', exit 2, told to move the cache aside.
    The first run of a job array: every part opens programs/cache.sqlite, none made yet. Each must open it (the
    migrations run once, whoever runs them). Seen in ~1 run in 3 of 8 parts: one part stopped at once, exit 2, with
    'the program cache cannot be opened (table cache already exists) (move it aside and run again ...)'."""
    path = tmp_path / "programs" / "cache.sqlite"
    r = subprocess.run([sys.executable, "-c", OPEN_RACE, str(path)], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, env=ENV, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stdout.decode(errors="replace")[-2000:]


# --- the array, all parts at once ----------------------------------------------------------------------------------

def _repaired(programs):
    """The first reply of each clip ending in _1 fails validation (a verb no class has); its repair is valid."""
    def script(body, n):
        nid = narration_id_of(body)
        program = json.loads(json.dumps(programs[nid]))
        if nid.endswith("_1") and n == 0:
            program["steps"][0]["verb"] = "teleport"
        return Reply(json.dumps(program))
    return script


def test_an_array_of_parts_started_together_pays_each_prompt_once_and_merges_to_the_whole_run(tmp_path, kitchen):
    """8 parts at once (half their segments repaired in a second round): every part exits 0, each prompt and each
    repair turn is asked once, each part's ledger counts its own requests (the sum: what the server billed), its
    summary says its cost, and the parts merged by concatenation are what one whole run makes."""
    csv, programs = kitchen
    n = 8
    wd = _workdir(tmp_path / "array", csv)
    with ScriptedServer(_repaired(programs)) as server:
        res = _array([_cmd(wd, server, "--shard", f"{i}/{n}") for i in range(n)])
        _clean(res)
        asked = _first_rounds(server)
        billed = len(server.requests)
    assert asked == Counter({k: 2 if k.endswith("_1") else 1 for k in programs}), asked
    recs = [r for p in _parts(wd, n) for r in _records(p)]
    assert Counter(r["narration_id"] for r in recs) == Counter(set(programs))
    assert all(r["status"] == "valid" for r in recs)
    assert sorted(r["provenance"]["rounds"] for r in recs) == [1] * 8 + [2] * 8
    # the ledger: one row per part, its requests those of its segments and repairs, the sum what the server billed
    ledger = _ledger(wd)
    assert set(ledger) == {p.name for p in _parts(wd, n)}, ledger
    for p in _parts(wd, n):
        assert ledger[p.name][1] == sum(r["provenance"]["rounds"] for r in _records(p)), (p.name, ledger)
    assert sum(v[1] for v in ledger.values()) == billed
    assert sum(v[0] for v in ledger.values()) == pytest.approx(billed * COST)
    # each part's summary gives its own run's cost and its file's spend (rounded to the cent's hundredth)
    import re

    for (rc, text), p in zip(res, _parts(wd, n)):
        flat = " ".join(text.split())
        run_cost = re.search(r"estimated cost of this run │ \$([0-9.]+)", flat)
        so_far = re.search(r"spent on this output so far │ \$([0-9.]+)", flat)
        assert run_cost and so_far, text[-2000:]
        assert float(run_cost.group(1)) == float(so_far.group(1)) == pytest.approx(ledger[p.name][0], abs=6e-5)
    assert not (wd / "programs" / "cache.sqlite.unwritten").exists()
    # merged by concatenation, the merge is what one whole run makes (that run, on a fresh workdir, for reference)
    merged = wd / "programs" / "val.jsonl"
    merged.write_text("".join(p.read_text() for p in _parts(wd, n)))
    whole = _workdir(tmp_path / "whole", csv)
    with ScriptedServer(_repaired(programs)) as server:
        _clean(_array([_cmd(whole, server)]))
    want = sorted((_comparable(r) for r in _records(whole / "programs" / "val.jsonl")), key=lambda r: r["narration_id"])
    got = sorted((_comparable(r) for r in _records(merged)), key=lambda r: r["narration_id"])
    assert got == want
    # and a run over the merge resumes it all, asking nothing
    with ScriptedServer(_good(programs)) as server:
        _clean(_array([_cmd(wd, server)]))
        assert server.requests == []


# A part that SIGKILLs itself at the K-th reply it checks (received, paid, its record not yet written), argv after K
KILL_AT_CHECK = """
import os, signal, sys
from leap_cli.programs import generate
k, checked, verify = int(sys.argv.pop(1)), [], generate.ProgramGenerator.verify
async def killed(self, text, info):
    checked.append(info.narration_id)
    if len(checked) == k:
        os.kill(os.getpid(), signal.SIGKILL)
    return await verify(self, text, info)
generate.ProgramGenerator.verify = killed
sys.argv[0] = "leap"
from leap_cli.cli import main
main()
"""


def _killed_at(k: int, cmd: list[str]) -> list[str]:
    return [sys.executable, "-c", KILL_AT_CHECK, str(k), *cmd[3:]]


def test_two_parts_killed_mid_run_beside_running_parts_pay_no_reply_twice(tmp_path, kitchen):
    """Parts 0 and 1 of 4 are SIGKILLed at their 2nd received reply while parts 2 and 3 go on (slower replies); the
    killed parts are run again one after the other (the first takes both dead parts' journals), then the whole
    array again: every segment is asked once in all, each part's ledger counts its segments once, and the parts hold
    every segment once."""
    csv, programs = kitchen
    wd = _workdir(tmp_path, csv)
    n = 4
    slow = {v for i, v in enumerate(sorted({k.rsplit("_", 1)[0] for k in programs})) if i % n >= 2}

    def script(body, c):
        nid = narration_id_of(body)
        return Reply(json.dumps(programs[nid]), delay=0.4 if nid.rsplit("_", 1)[0] in slow else 0.0)

    with ScriptedServer(script) as server:
        cmds = [_cmd(wd, server, "--shard", f"{i}/{n}", "--concurrency", "1") for i in range(n)]
        procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT)
                 for c in [_killed_at(2, cmds[0]), _killed_at(2, cmds[1]), cmds[2], cmds[3]]]
        try:
            outs = [(p.wait(timeout=120), p.stdout.read().decode(errors="replace")) for p in procs[:2]]
            for rc, text in outs:
                assert rc == -signal.SIGKILL, text[-2000:]
            assert len(_records(_parts(wd, n)[0])) == 1 and len(_records(_parts(wd, n)[1])) == 1
            # part 0 run again first: opening the cache it takes both dead parts' journals (not the live ones')
            _clean(_array(cmds[:1]))
            assert _ledger(wd)["val.shard1of4.jsonl"][1] == 2, _ledger(wd)
            _clean(_array(cmds[1:2]))
            _clean([(p.wait(timeout=120), p.stdout.read().decode(errors="replace")) for p in procs[2:]])
            # Slurm requeues the whole array: every part resumes, nothing asked
            n_before = len(server.requests)
            _clean(_array(cmds))
            assert len(server.requests) == n_before
        finally:
            reap(procs)
        asked = _first_rounds(server)
        billed = len(server.requests)
    assert set(asked) == set(programs) and set(asked.values()) == {1}, asked
    recs = [r for p in _parts(wd, n) for r in _records(p)]
    assert Counter(r["narration_id"] for r in recs) == Counter(set(programs))
    assert all(r["status"] == "valid" for r in recs)
    ledger = _ledger(wd)
    assert {k: v[1] for k, v in ledger.items()} == {p.name: 4 for p in _parts(wd, n)}
    assert sum(v[0] for v in ledger.values()) == pytest.approx(billed * COST)
    assert not (wd / "programs" / "cache.sqlite.unwritten").exists()


def test_max_cost_per_part_caps_each_part_by_its_own_spend_only(tmp_path, kitchen):
    """--max-cost is per output file: 4 parts started together, each capped at 2.5 replies' cost, each sends 3
    requests (the one that crosses the cap finishes) whatever the others spend, and says it stopped early;
    the same cap again sends nothing; a raised cap finishes every part, each segment asked once in all."""
    csv, programs = kitchen
    wd = _workdir(tmp_path, csv)
    n = 4
    cap = f"{2.5 * COST:.6f}"
    with ScriptedServer(_good(programs)) as server:
        cmds = [_cmd(wd, server, "--shard", f"{i}/{n}", "--concurrency", "1", "--max-cost", cap) for i in range(n)]
        res = _array(cmds)
        for rc, text in res:
            assert rc == 0 and "Traceback" not in text and "database is locked" not in text, text[-3000:]
            assert "stopped early: --max-cost" in text, text[-3000:]
        assert len(server.requests) == 3 * n, len(server.requests)
        for p in _parts(wd, n):
            assert len(_records(p)) == 3
        assert {k: v[1] for k, v in _ledger(wd).items()} == {p.name: 3 for p in _parts(wd, n)}
        again = _array(cmds)
        assert all(rc == 0 for rc, _ in again) and len(server.requests) == 3 * n
        raised = [c[:-1] + [f"{10 * COST:.6f}"] for c in cmds]
        _clean(_array(raised))
        asked = _first_rounds(server)
    assert set(asked) == set(programs) and set(asked.values()) == {1}, asked
    assert {k: v[1] for k, v in _ledger(wd).items()} == {p.name: 4 for p in _parts(wd, n)}


def test_two_tasks_given_the_same_shard_are_safe_one_refused_in_one_line(tmp_path, kitchen):
    """An array script's mistake: tasks 2 and 3 both run --shard 1/4 (beside 0/4). Neither pays a reply twice,
    the part file holds each of its segments once, and the task that could not write says so in one line; the
    same command afterwards completes the part without asking anything again."""
    csv, programs = kitchen
    wd = _workdir(tmp_path, csv)
    n = 4
    with ScriptedServer(_good(programs, delay=0.2)) as server:
        cmds = [_cmd(wd, server, "--shard", f"{i}/{n}") for i in (0, 1, 1)]
        res = _array(cmds)
        for rc, text in res:
            assert "Traceback" not in text and "database is locked" not in text, text[-3000:]
        assert res[0][0] == 0, res[0][1][-3000:]
        failed = [text for rc, text in res[1:] if rc != 0]
        assert len(failed) <= 1
        for text in failed:
            errs = [x for x in text.splitlines() if x.strip() and "error" in x.lower()]
            assert len(errs) == 1 and "val.shard1of4.jsonl" in errs[0], text[-3000:]
        _clean(_array(cmds[1:2]))
        asked = _first_rounds(server)
    assert set(asked.values()) == {1}, asked
    part = _records(_parts(wd, n)[1])
    assert sorted(r["narration_id"] for r in part) == sorted(k for k in programs if int(k.split("_")[1]) % n == 1)
    assert _ledger(wd)["val.shard1of4.jsonl"][1] == len(part)


# --- a second array: build-shards --shard i/N on one folder, then train on the merge ------------------------------

def _leap(*args) -> list[str]:
    return [sys.executable, "-m", "leap_cli", *map(str, args)]


def _tar_members(folder: Path) -> dict[str, bytes]:
    """Every member of every tar of a shards folder, by name (the samples' files, whichever tar holds them)."""
    import tarfile

    out = {}
    for t in sorted(folder.glob("*.tar")):
        with tarfile.open(t) as tf:
            for m in tf.getmembers():
                if m.isfile():
                    assert m.name not in out, f"{m.name} in two tars"
                    out[m.name] = tf.extractfile(m).read()
    return out


def test_build_shards_parts_started_together_merge_to_the_unsharded_build_and_train_reads_them(tmp_path):
    """3 build-shards parts of the training split started at once on one shards folder (a Slurm array after the
    program array): each exits 0, exactly one merged manifest.json is written, listing every sample once, the
    samples byte for byte those of an unsharded build; val is built after, and `leap train` reads the merge."""
    wd, ref = tmp_path / "w", tmp_path / "ref"
    r = subprocess.run(_leap("demo-data", "--out", wd / "kitchen", "--videos", 6, "--segments", 4),
                       capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    for split in ("train", "val"):  # offline programs (free), so the shards carry program targets
        _clean(_array([_leap("generate-programs", "--split", split, "--workdir", wd)]))
    build = ("build-shards", "--split", "train", "--workdir", wd, "--frames", 4, "--short-side", 64)
    res = _array([_leap(*build, "--shard", f"{i}/3") for i in range(3)])
    _clean(res)
    # (the part that completes the set writes it; two finishing together may both write the same file)
    assert any("merged manifest.json written" in text for _, text in res), [t[-500:] for _, t in res]
    out = wd / "shards" / "train"
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["samples"] == 12 and m["counts"]["with_program"] == 12, m["counts"]
    assert sorted(s["name"] for s in m["shards"]) == sorted(p.name for p in out.glob("*.tar"))
    # the same build unsharded (its kitchen and programs copied): the same samples, byte for byte
    import shutil

    shutil.copytree(wd / "kitchen", ref / "kitchen")
    shutil.copytree(wd / "programs", ref / "programs", ignore=shutil.ignore_patterns("*.lock"))
    _clean(_array([_leap(*build[:4], ref, *build[5:])]))
    assert _tar_members(out) == _tar_members(ref / "shards" / "train")
    # the check of the merged set and training on it
    _clean(_array([_leap("check-shards", "--shards", out)]))
    r = _array([_leap("build-shards", "--split", "val", "--workdir", wd, "--frames", 4, "--short-side", 64)])
    assert "Traceback" not in r[0][1], r[0][1][-2000:]
    r = _array([_leap("train", "--config", "tiny-synthetic", "--workdir", wd, "--name", "t", "--set",
                      "train.epochs=1", "--set", "data.batch_size=4")], timeout=300)
    _clean(r)
    assert (wd / "runs" / "t" / "checkpoints" / "last.pt").exists()


def test_an_array_run_again_with_another_part_count_is_refused_before_any_request(tmp_path, kitchen):
    """The array stopped by its cap at 4 parts is started again as 8 parts (the user changed --array): no segment
    is paid twice: every part of 8 is refused in one line before it asks anything (merged, the two sets would
    hold segments twice)."""
    csv, programs = kitchen
    wd = _workdir(tmp_path, csv)
    with ScriptedServer(_good(programs)) as server:
        capped = [_cmd(wd, server, "--shard", f"{i}/4", "--concurrency", "1", "--max-cost", f"{1.5 * COST:.6f}")
                  for i in range(4)]
        _clean(_array(capped))
        assert len(server.requests) == 8
        res = _array([_cmd(wd, server, "--shard", f"{i}/8") for i in range(8)])
        for rc, text in res:
            assert "Traceback" not in text and "database is locked" not in text, text[-3000:]
        asked = _first_rounds(server)
    assert set(asked.values()) == {1}, asked
    for rc, text in res:  # refused before any request, in one line naming the other set
        errs = [x for x in text.splitlines() if x.startswith("error:")]
        assert rc == 2 and len(errs) == 1 and "parts of --shard i/4 are beside it" in errs[0], text[-2000:]
    assert len(server.requests) == 8


def test_scancel_of_the_whole_array_mid_run_then_a_requeue_pays_nothing_twice(tmp_path, kitchen):
    """`scancel` sends SIGTERM to every task of the array at once, while each has replies in flight and all write
    the cache together as they stop: none leaves a traceback or a journal behind, and the requeued array asks each
    segment once in all, its ledger counting each request once."""
    csv, programs = kitchen
    wd = _workdir(tmp_path, csv)
    n = 4
    with ScriptedServer(_good(programs, delay=0.3)) as server:
        cmds = [_cmd(wd, server, "--shard", f"{i}/{n}", "--concurrency", "1") for i in range(n)]
        procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT)
                 for c in cmds]
        try:
            deadline = time.monotonic() + 60
            while not all(p.exists() and p.read_bytes().count(b"\n") >= 1 for p in _parts(wd, n)):
                assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
                time.sleep(0.01)
            for p in procs:
                p.send_signal(signal.SIGTERM)
            stopped = [(p.wait(timeout=60), p.stdout.read().decode(errors="replace")) for p in procs]
        finally:
            reap(procs)
        for rc, text in stopped:
            assert "Traceback" not in text and "database is locked" not in text, text[-3000:]
        assert not (wd / "programs" / "cache.sqlite.unwritten").exists()
        assert sum(len(_records(p)) for p in _parts(wd, n)) < len(programs)  # (the stop came mid-run)
        _clean(_array(cmds))
        asked = _first_rounds(server)
        billed = len(server.requests)
    assert set(asked) == set(programs) and set(asked.values()) == {1}, asked
    ledger = _ledger(wd)
    assert {k: v[1] for k, v in ledger.items()} == {p.name: 4 for p in _parts(wd, n)}
    assert sum(v[0] for v in ledger.values()) == pytest.approx(billed * COST)


def test_parts_started_while_a_whole_run_writes_the_split_do_not_pay_its_prompts_again(tmp_path, kitchen):
    """Was wrong: a generate-programs run without --shard still writing val.jsonl does not stop --shard parts started
    beside it (nor they it): prompts in flight in both are paid twice.
    A stray `leap generate-programs` without --shard (the script's loop) is writing val.jsonl when the array's
    4 parts start on the same split. Sequentially, the whole run is refused beside the parts; here the parts must
    be refused beside the live whole run (its output's lock is held), or wait for its replies: each prompt paid
    once in all. Was: both ask the prompts in flight (started at the same moment, 2 runs in 3 paid every prompt
    twice)."""
    csv, programs = kitchen
    wd = _workdir(tmp_path, csv)
    n = 4
    with ScriptedServer(_good(programs, delay=0.5)) as server:
        whole = subprocess.Popen(_cmd(wd, server), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV,
                                 cwd=ROOT)
        try:
            deadline = time.monotonic() + 60
            while not (wd / "programs" / "val.jsonl").exists() or not _records(wd / "programs" / "val.jsonl"):
                assert whole.poll() is None and time.monotonic() < deadline
                time.sleep(0.01)
            res = _array([_cmd(wd, server, "--shard", f"{i}/{n}", "--concurrency", "4") for i in range(n)])
            res.append((whole.wait(timeout=120), whole.stdout.read().decode(errors="replace")))
        finally:
            if whole.poll() is None:
                whole.kill()
                whole.wait()
            whole.stdout.close()
        for rc, text in res:
            assert "Traceback" not in text and "database is locked" not in text, text[-3000:]
        asked = _first_rounds(server)
    assert set(asked) == set(programs) and set(asked.values()) == {1}, asked


def test_a_run_without_shard_is_refused_while_a_part_holds_its_lock_and_a_part_while_the_whole_run_does(tmp_path):
    """The other order of the test above, and a part whose file holds no record yet (only its lock): the check under
    each output's own lock probes the other's lock and refuses in one line naming the writer and the way out; once
    that writer ends, the same check goes through."""
    from leap_cli.errors import LeapError
    from leap_cli.io import OutputLock, refuse_beside_a_live_writer

    whole = tmp_path / "programs" / "val.jsonl"
    part = whole.with_name("val.shard2of4.jsonl")
    with OutputLock(part):  # a part begun (its lock held), its file not written yet
        with pytest.raises(LeapError) as e:
            refuse_beside_a_live_writer(whole)
        line = e.value.one_line()
        assert "part 2/4" in line and f"process {os.getpid()}" in line and "cat " in line, line
    refuse_beside_a_live_writer(whole)  # the part ended: its lock file stays, held by nobody
    with OutputLock(whole):
        with pytest.raises(LeapError) as e:
            refuse_beside_a_live_writer(part)
        assert "without --shard is writing val.jsonl" in e.value.one_line() and "--shard 2/4" in e.value.one_line()
    refuse_beside_a_live_writer(part)
    with OutputLock(whole.with_name("val.shard0of3.jsonl")):  # a part of another count begun, its file not made yet
        with pytest.raises(LeapError) as e:
            refuse_beside_a_live_writer(part)
        assert "part 0/3 of val.jsonl is being made" in e.value.one_line() and "--shard 2/4" in e.value.one_line()
        refuse_beside_a_live_writer(whole.with_name("val.shard1of3.jsonl"))  # (its own set's parts go on)
