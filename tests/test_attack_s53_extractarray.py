"""A Slurm job array of `leap extract --shard i/N` (N = 3..6) started at once on one work directory, sharing its frame
cache: parts merged by `cat` against one whole run, two parts SIGKILLed mid-run (one mid-write of a cache entry) and
rerun (also with --workers 2), a part's reach into other parts' cache folders, the same --shard given twice; then
`leap build-shards --shard i/N` parts reading that frame cache, with `leap extract` run again beside them."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.kitchens import kitchen_copy
from tests.procs import reap, run_together

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
       "NO_COLOR": "1", "COLUMNS": "200"}
CACHE = ("--cache-frames", "4", "--cache-short-side", "64")  # = build-shards --frames 4 --short-side 64
BUILD = ("--frames", "4", "--short-side", "64")


def _leap(*args) -> list[str]:
    return [sys.executable, "-m", "leap_cli", *map(str, args)]


def _extract(wd: Path, kitchen: Path, *extra) -> list[str]:
    return _leap("extract", "--workdir", wd, "--data", kitchen, "--split", "train", *CACHE, *extra)


def _array(cmds, timeout=120) -> list[tuple[int, str]]:
    return run_together(cmds, ENV, ROOT, timeout)


def _clean(res) -> None:
    for rc, text in res:
        assert rc == 0, text[-3000:]
        assert "Traceback" not in text, text[-3000:]


def _records(path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def _parts(wd: Path, n: int) -> list[Path]:
    return [wd / "descriptors" / f"train.shard{i}of{n}.jsonl" for i in range(n)]


def _comparable(rec: dict) -> dict:
    """A record without what may differ between two runs of the same inputs (timings, if any)."""
    rec = json.loads(json.dumps(rec))
    rec.pop("provenance", None)
    for comp in (rec.get("components") or {}).values():
        if isinstance(comp, dict):
            for k in ("seconds", "timing", "timings"):
                comp.pop(k, None)
    return rec


def _by_id(records) -> dict[str, dict]:
    return {r["narration_id"]: _comparable(r) for r in records}


def _cache_files(wd: Path) -> dict[str, bytes]:
    root = wd / "frame-cache"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _cache_entries(wd: Path) -> dict[str, bytes]:
    """The frame cache's entries (not source.json: it records the source's stat, the same kitchen's)."""
    return {k: v for k, v in _cache_files(wd).items() if k.endswith(".jpgs")}


def _no_temps(wd: Path) -> None:
    left = [str(p) for p in (wd / "frame-cache").rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")]
    assert not left, left


def _summary_counts(text: str) -> tuple[int, int, int]:
    """(selected, done before, written now) of extract's summary."""
    flat = " ".join(text.split())
    m = re.search(r"segments: (\d+) selected, (\d+) done before, (\d+) written now", flat)
    assert m, text[-2000:]
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """(the kitchen: 7 training videos x 4 segments, one cut short; a work directory with one whole `leap extract`
    of its training split and that run's frame cache)."""
    root = tmp_path_factory.mktemp("extractarray")
    kitchen = root / "kitchen"
    kitchen_copy(tmp_path_factory, kitchen, "--videos", 10, "--segments", 4)
    ref = root / "whole"
    _clean(_array([_extract(ref, kitchen)]))
    recs = _records(ref / "descriptors" / "train.jsonl")
    assert len(recs) == 28 and len({r["narration_id"] for r in recs}) == 28
    return kitchen, ref


def _videos_of(wd: Path, part: Path) -> set[str]:
    return {r["video_id"] for r in _records(part)}


def _check_merge(wd: Path, ref: Path, n: int) -> None:
    """The parts hold each segment once, their merge (cat) is the whole run's records, the cache its entries."""
    recs = [r for p in _parts(wd, n) for r in _records(p)]
    ids = Counter(r["narration_id"] for r in recs)
    assert set(ids.values()) == {1}, [k for k, v in ids.items() if v > 1]
    merged = wd / "descriptors" / "train.jsonl"
    merged.write_text("".join(p.read_text() for p in _parts(wd, n)))
    assert _by_id(_records(merged)) == _by_id(_records(ref / "descriptors" / "train.jsonl"))
    # every part's videos disjoint from the others'
    vids = [_videos_of(wd, p) for p in _parts(wd, n)]
    assert sum(len(v) for v in vids) == len(set().union(*vids))
    _no_temps(wd)
    assert _cache_entries(wd) == _cache_entries(ref)
    assert sorted(p.name for p in (wd / "frame-cache").iterdir()) == sorted(p.name for p in (ref / "frame-cache").iterdir())
    for folder in (wd / "frame-cache").iterdir():
        assert (folder / "source.json").is_file(), folder
        assert json.loads((folder / "source.json").read_text()) == json.loads(
            (ref / "frame-cache" / folder.name / "source.json").read_text())


N_ARRAY = 6


@pytest.fixture(scope="module")
def array(tmp_path_factory, whole):
    """(a work directory after an extract array of 6 parts started at once (7 videos: part 0 has 2, the others 1),
    the parts' [(exit status, output)])."""
    kitchen, ref = whole
    wd = tmp_path_factory.mktemp("array") / "w"
    return wd, _array([_extract(wd, kitchen, "--shard", f"{i}/{N_ARRAY}") for i in range(N_ARRAY)])


def test_an_extract_array_started_together_merges_to_the_whole_run_and_fills_the_cache_once(array, whole):
    """6 parts at once on one work directory: each exits 0 without a traceback, the parts hold each segment once,
    cat of the parts is the whole run's records, the shared frame cache holds each segment's entry once, byte for
    byte the whole run's, no temp file left; a whole `leap extract` over the merge has nothing to do, and sweeps a
    dead writer's temp file from the cache (docs/options.md)."""
    kitchen, ref = whole
    wd, res = array
    _clean(res)
    assert sum(_summary_counts(t)[2] for _, t in res) == 28
    _check_merge(wd, ref, N_ARRAY)
    # a dead writer's temp file in a video folder: the next extract of the split sweeps it, even writing nothing
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    folder = next(p for p in sorted((wd / "frame-cache").iterdir()))
    stray = folder / f".{next(folder.glob('*.jpgs')).name}.{socket.gethostname()}-{dead.stdout.strip()}.abcd1234.tmp"
    stray.write_bytes(b"half")
    r = _array([_extract(wd, kitchen)])
    _clean(r)
    assert _summary_counts(r[0][1]) == (28, 28, 0), r[0][1][-2000:]
    assert not stray.exists()
    _no_temps(wd)


# A part that SIGKILLs itself: argv after K and MODE. MODE "record": right after its K-th record is written (the
# parent, whatever its workers do); MODE "cache": in the middle of writing its K-th frame-cache entry (half the
# bytes in the temp file), so a dead writer's temp file is left in the part's video folder.
KILL_AT = """
import os, signal, sys
k, mode = int(sys.argv.pop(1)), sys.argv.pop(1)
calls = []
if mode == "record":
    from leap_cli import io
    write = io.JsonlAppender.write
    def killed(self, record, *a, **kw):
        out = write(self, record, *a, **kw)
        calls.append(1)
        if len(calls) == k:
            self._f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    io.JsonlAppender.write = killed
else:
    from leap_cli import io
    from leap_cli.extract import cache
    real = cache.atomic_write_bytes
    def half(path, data, **kw):
        calls.append(1)
        if len(calls) == k:
            with io.atomic_path(path) as tmp:
                with open(tmp, "wb") as f:
                    f.write(data[: len(data) // 2])
                    f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        return real(path, data, **kw)
    cache.atomic_write_bytes = half
sys.argv[0] = "leap"
from leap_cli.cli import main
main()
"""


def _killed_at(k: int, mode: str, cmd: list[str]) -> list[str]:
    return [sys.executable, "-c", KILL_AT, str(k), mode, *cmd[3:]]


def test_two_parts_killed_mid_run_and_rerun_write_each_segment_once_and_merge_to_the_whole_run(tmp_path, whole):
    """Parts 0 and 1 of 3 SIGKILLed (part 0 after its 2nd record, part 1 in the middle of its 3rd cache entry) while
    part 2 runs beside them; rerun, each writes exactly the segments it lacked, the merge is the whole run's
    records, the cache its entries, and the dead writer's temp file is gone (part 1 rerun with --workers 2)."""
    kitchen, ref = whole
    n, modes = 3, ("record", "cache")
    wd = tmp_path / "w"
    cmds = [_extract(wd, kitchen, "--shard", f"{i}/{n}") for i in range(n)]
    first = [_killed_at(2, modes[0], cmds[0]), _killed_at(3, modes[1], cmds[1]), *cmds[2:]]
    res = _array(first)
    for rc, text in res[:2]:
        assert rc == -signal.SIGKILL, text[-2000:]
    _clean(res[2:])
    before = [len(_records(p)) if p.exists() else 0 for p in _parts(wd, n)[:2]]
    assert all(0 < b < len(_records(ref / "descriptors" / "train.jsonl")) for b in before), before
    # the killed parts run again (Slurm requeues them): each writes only what it lacked, once
    if "cache" in modes:  # (the dead writer's half entry is there, under its temp name)
        assert [p for p in (wd / "frame-cache").rglob(".*.tmp")], sorted((wd / "frame-cache").rglob("*"))
    again = _array([cmds[0], [*cmds[1], "--workers", "2"]])  # (requeued with more CPUs: --workers is no setting)
    _clean(again)
    for (rc, text), b, p in zip(again, before, _parts(wd, n)[:2]):
        selected, done, written = _summary_counts(text)
        assert done == b and written == selected - b, (b, text[-2000:])
        assert len(_records(p)) == selected
    _check_merge(wd, ref, n)


def _snapshot(folder: Path) -> dict[str, tuple]:
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_part_touches_only_its_own_videos_cache_folders(tmp_path, whole):
    """Part 0 of 3 alone makes only its videos' cache folders; the other parts run after, and part 0 run again with
    --force (starting its output over) leaves every file of their folders as it was (same inode, time, bytes),
    even a dead writer's temp file there (theirs to sweep)."""
    kitchen, ref = whole
    n = 3
    wd = tmp_path / "w"
    _clean(_array([_extract(wd, kitchen, "--shard", f"0/{n}")]))
    mine = _videos_of(wd, _parts(wd, n)[0])
    assert {p.name for p in (wd / "frame-cache").iterdir()} == mine
    _clean(_array([_extract(wd, kitchen, "--shard", f"{i}/{n}") for i in (1, 2)]))
    others = {p.name for p in (wd / "frame-cache").iterdir()} - mine
    assert others and not others & mine
    victim = wd / "frame-cache" / sorted(others)[0]
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stray = victim / f".{sorted(victim.glob('*.jpgs'))[0].name}.{socket.gethostname()}-{dead.stdout.strip()}.abcd1234.tmp"
    stray.write_bytes(b"half")
    before = {v: _snapshot(wd / "frame-cache" / v) for v in others}
    _clean(_array([_extract(wd, kitchen, "--shard", f"0/{n}", "--force")]))
    assert {v: _snapshot(wd / "frame-cache" / v) for v in others} == before


def test_the_same_shard_started_twice_is_refused_in_one_line_while_the_first_writes(tmp_path, whole):
    """An array task started twice (--shard 1/4 in two jobs): while the first writes its part, the second exits 2
    with one error line naming the part's file and the job that makes it; the first ends as a whole run's part."""
    kitchen, ref = whole
    n = 4
    wd = tmp_path / "w"
    slow = """
import sys, time
from leap_cli.extract import runner
real = runner.describe_segment
def slowed(*a, **kw):
    time.sleep(0.3)
    return real(*a, **kw)
runner.describe_segment = slowed
sys.argv[0] = "leap"
from leap_cli.cli import main
main()
"""
    cmd = _extract(wd, kitchen, "--shard", f"1/{n}")
    first = subprocess.Popen([sys.executable, "-c", slow, *cmd[3:]], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, env=ENV, cwd=ROOT)
    try:
        part = _parts(wd, n)[1]
        deadline = time.monotonic() + 60
        while not (part.exists() and part.read_text().count("\n") >= 1):
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        rc, text = _array([cmd])[0]
        assert first.poll() is None, "the first ended before the second was refused: the test proves nothing"
        out = first.communicate(timeout=60)[0].decode(errors="replace")
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        first.stdout.close()
    assert first.returncode == 0 and "Traceback" not in out, out[-2000:]
    assert rc == 2 and "Traceback" not in text, text[-2000:]
    errs = [x for x in text.splitlines() if x.strip().lower().startswith("error")]
    assert len(errs) == 1 and "train.shard1of4.jsonl" in " ".join(text.split()), text[-2000:]
    assert "1/4" in " ".join(text.split()), text[-2000:]
    ids = [r["narration_id"] for r in _records(part)]
    assert len(ids) == len(set(ids)) and ids


def _tar_members(folder: Path) -> dict[str, bytes]:
    """Every member of every tar of a shards folder, by name (the samples' files, whichever tar holds them)."""
    out = {}
    for t in sorted(folder.glob("*.tar")):
        with tarfile.open(t) as tf:
            for m in tf.getmembers():
                if m.isfile():
                    assert m.name not in out, f"{m.name} in two tars"
                    out[m.name] = tf.extractfile(m).read()
    return out


def test_build_shards_parts_reading_the_array_cache_merge_to_the_unsharded_build_with_extract_run_beside(
        array, whole):
    """An extract array of 6 parts (7 videos: part 0 has 2), then 3 build-shards parts started at once reading the
    frame cache it wrote, while the 6 extract parts are started again beside them (a requeued array): every
    command exits 0, the build parts say they read the cache, the merged samples are byte for byte those of an
    unsharded build (the whole extract's cache), and the cache is still the whole run's."""
    kitchen, ref = whole
    n = N_ARRAY
    wd, first = array
    _clean(first)
    (wd / "descriptors" / "train.jsonl").unlink(missing_ok=True)  # (the parts again, unmerged, as the requeued array finds them)
    build = ("build-shards", "--split", "train", "--workdir", wd, "--data", kitchen, *BUILD)
    res = _array([_leap(*build, "--shard", f"{i}/3") for i in range(3)]
                 + [_extract(wd, kitchen, "--shard", f"{i}/{n}") for i in range(n)])
    _clean(res)
    for _, text in res[:3]:
        assert "frames read from extract's frame cache" in " ".join(text.split()), text[-2000:]
    for _, text in res[3:]:
        assert _summary_counts(text)[2] == 0, text[-2000:]
    out = wd / "shards" / "train"
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["samples"] == 25, m["counts"]  # (3 segments of the cut video skipped)
    # the same build unsharded, in the whole run's work directory (its own cache)
    r = _array([_leap("build-shards", "--split", "train", "--workdir", ref, "--data", kitchen, *BUILD)])
    _clean(r)
    assert "frames read from extract's frame cache" in " ".join(r[0][1].split()), r[0][1][-2000:]
    assert _tar_members(out) == _tar_members(ref / "shards" / "train")
    assert _cache_entries(wd) == _cache_entries(ref)
    _no_temps(wd)


def test_parts_with_workers_killed_or_scancelled_mid_run_then_requeued_merge_to_the_whole_run(tmp_path, whole):
    """3 parts with --workers 2 writing records and cache entries: two nodes lost (parts 0 and 1 SIGKILLed: their
    workers die with them, maybe mid-write of an entry), then `scancel` (SIGTERM) of the last: it stops with exit
    143 and no traceback; the requeued array writes only what each part lacked, no temp file is left, the merge
    is the whole run's records and the cache its entries."""
    kitchen, ref = whole
    n = 3
    wd = tmp_path / "w"
    slow = """
import sys, time
from leap_cli import io
write = io.JsonlAppender.write
def slowed(self, *a, **kw):
    out = write(self, *a, **kw)
    time.sleep(0.25)
    return out
io.JsonlAppender.write = slowed
sys.argv[0] = "leap"
from leap_cli.cli import main
main()
"""
    cmds = [_extract(wd, kitchen, "--shard", f"{i}/{n}", "--workers", "2") for i in range(n)]
    procs = [subprocess.Popen([sys.executable, "-c", slow, *c[3:]], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, env=ENV, cwd=ROOT) for c in cmds]
    try:
        deadline = time.monotonic() + 60
        while not all(p.exists() and p.read_text().count("\n") >= 1 for p in _parts(wd, n)):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.02)
        for p, sig in zip(procs, (signal.SIGKILL, signal.SIGKILL, signal.SIGTERM)):
            p.send_signal(sig)
        stopped = [(p.wait(timeout=60), p.stdout.read().decode(errors="replace")) for p in procs]
    finally:
        reap(procs)
    assert [rc for rc, _ in stopped] == [-signal.SIGKILL, -signal.SIGKILL, 143], [t[-2000:] for _, t in stopped]
    assert "Traceback" not in stopped[2][1], stopped[2][1][-3000:]
    before = [len(_records(p)) for p in _parts(wd, n)]
    assert sum(before) < 28, before
    again = _array(cmds)
    _clean(again)
    for (rc, text), b in zip(again, before):
        selected, done, written = _summary_counts(text)
        assert done == b and written == selected - b, (b, text[-2000:])
    _check_merge(wd, ref, n)


def test_a_part_of_another_count_started_while_a_part_holds_its_lock_is_refused(tmp_path, whole):
    """Was wrong: check_settings looks for other counts' part files before taking the lock and never probes their live
    locks: 0/4 runs beside a live 0/3 (set doubled).
    The array resubmitted with another --array while the first is starting: part 0/3 holds its output's lock
    (its settings checked, its dataset still being read, no record file yet) when part 0/4 starts. Merged with cat,
    the two sets would hold segments twice: 0/4 must be refused in one line (as it is once 0/3's file exists)."""
    kitchen, ref = whole
    wd = tmp_path / "w"
    slow = """
import sys, time
from leap_cli.extract import runner
real = runner.JsonlAppender
def late(*a, **kw):
    time.sleep(2.5)  # (the data set's annotations and layout read, on EPIC's ~90k rows and 700 videos)
    return real(*a, **kw)
runner.JsonlAppender = late
sys.argv[0] = "leap"
from leap_cli.cli import main
main()
"""
    from leap_cli.io import writer_of

    first = subprocess.Popen([sys.executable, "-c", slow, *_extract(wd, kitchen, "--shard", "0/3")[3:]],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT)
    part3 = _parts(wd, 3)[0]
    try:
        deadline = time.monotonic() + 60
        while writer_of(part3) is None:
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        assert not part3.exists()
        rc, text = _array([_extract(wd, kitchen, "--shard", "0/4")])[0]
        out = first.communicate(timeout=60)[0].decode(errors="replace")
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        first.stdout.close()
    assert first.returncode == 0, out[-2000:]
    assert "Traceback" not in text, text[-2000:]
    assert rc == 2 and "i/3" in " ".join(text.split()), (rc, text[-2000:])
