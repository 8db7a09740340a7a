"""build-shards updating a folder in place, attacked (helper shards66, session 66).

1. The summary table said ``resumed N`` of every shard after an in-place update, where some were rewritten: its
   "this run" column now tells shards written now, rewritten in place and kept apart, on every path (a fresh build,
   a resume after a crash, new programs, a video downloaded again, a re-run with nothing to do).
2. The merge of ``--shard i/n`` parts was not locked against a part's rewrite: it could read a part's manifest, the
   part then delete it and ``manifest.json`` and rewrite its tar, and the merge write a ``manifest.json`` naming the
   old bytes. Both now take the folder's lock (``writer._folder_lock``); the probes below try it, without waiting,
   at the moment each step runs.
3. Samples taken out of their shard for a video downloaded again left an empty tar (kept: ``_resume`` needs
   consecutive indices), one or two more each download. The run now writes into the shards left empty first, each
   at its own index (``_ShardSink._refill``), committed as a rewrite is (``.NAME.update``, the progress file, the
   rename), so a kill between any two of them leaves a folder the next run ends as a build from scratch would.
4. ``train --resume`` on shards whose programs and frames both changed (new programs and a video downloaded again)
   said only the programs' warning: the samples' hash covers their targets too, so it was compared only where the
   programs were the same. The manifest now keeps each sample's frames' CRC-32 (``frames_crc32s``) and
   ``samples_provenance`` a hash of them (``frames``), kept through a rewrite of the targets alone; both warnings are
   said where both changed, and a provenance file without it reads as before.

The tiny root of test_shards (7 training samples, 3 per shard), built through the CLI in this process.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import logging

import pytest

import leap_cli.shards.format as format_
from leap_cli.common import ShardSpec
from leap_cli.io import sha256_file
from leap_cli.train.loop import record_provenance
from tests.procs import leap_here
from tests.test_attack_s65_resume65 import PROGRAMS, SAMPLES, _prov
import leap_cli.shards.writer as writer
from tests.test_attack_s65_moved65 import _as_fresh, _mp4, _progress, _replace, files  # noqa: F401 - (a fixture)
from tests.test_attack_s65_update65 import (_build, _Killed, _records, kill_rewrite,  # noqa: F401 - (fixtures)
                                            root, vocab)
from tests.test_shards import build, write_programs


@pytest.fixture
def leap(monkeypatch, capsys):
    return leap_here(monkeypatch, capsys)


def _build_cli(leap, data: Path, work: Path, *extra) -> str:
    r = leap("build-shards", "--data", data, "--workdir", work, "--split", "train", "--frames", 4, "--short-side", 32,
             "--max-count", 3, *extra)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def _this_run(stdout: str) -> str:
    """The summary table's "this run" cell (its last column, joined where rich wrapped it)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("┡"))
    cells = []
    for line in lines[start + 1:]:
        if line.startswith("└"):
            break
        cells.append(line.strip("│ ").rsplit("│", 1)[-1].strip())
    return " ".join(c for c in cells if c)


def test_the_table_tells_written_rewritten_and_kept_shards_apart(root, vocab, tmp_path, leap):  # noqa: F811
    work = tmp_path / "w"
    write_programs(work / "programs" / "train.jsonl", _records(False))
    assert _this_run(_build_cli(leap, root, work, "--vocab", vocab)) == "3 written"
    assert _this_run(_build_cli(leap, root, work, "--vocab", vocab)) == "3 kept"
    write_programs(work / "programs" / "train.jsonl", _records(True))  # (one sample's program, in shard 0)
    assert _this_run(_build_cli(leap, root, work, "--vocab", vocab)) == "1 rewritten, 2 kept"


def test_the_table_of_a_resume_after_a_crash_counts_the_kept_shard_alone(root, tmp_path, leap):  # noqa: F811
    work = tmp_path / "w"

    def interrupt(done, total):
        if done >= 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # (its first shard of 3 complete; the CLI's settings: no context)
        build(root, work, progress=interrupt, context=0)
    assert _this_run(_build_cli(leap, root, work)) == "2 written, 1 kept"


def test_the_table_after_a_video_downloaded_again(files, tmp_path, leap):  # noqa: F811
    root, work = tmp_path / "k", tmp_path / "w"
    shutil.copytree(files[0], root)
    _build_cli(leap, root, work)
    _replace(root, files)
    # shards of 3: P01_01_0-2 | P01_01_3, P01_02_0-1 | P01_02_2: P01_02's samples taken out of shards 1 and 2, and
    # written again into shard 2, left empty
    assert _this_run(_build_cli(leap, root, work)) == "1 written, 1 rewritten, 1 kept"


def _lock_free(folder: Path) -> bool:
    """Whether the folder's lock (``writer._folder_lock``) could be taken now, tried without waiting."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # (the lock, where taken, goes with it)


def test_the_merge_of_the_parts_reads_them_under_the_folders_lock(root, vocab, tmp_path, monkeypatch):  # noqa: F811
    work, out = tmp_path / "w", tmp_path / "w" / "shards" / "train"
    _build(root, work, vocab, shard=ShardSpec(0, 2))
    probes, real = [], format_._read_manifest

    def read(path: Path) -> dict:
        if path.parent == out:  # (the parts', not the vocabulary's)
            probes.append(_lock_free(out))
        return real(path)

    monkeypatch.setattr(format_, "_read_manifest", read)
    r = _build(root, work, vocab, shard=ShardSpec(1, 2))  # (the last part: it merges the two)
    assert any("merged manifest.json written" in n for n in r.notes), r.notes
    assert probes and not any(probes), probes  # (a part's rewrite cannot begin amid the merge)


def test_a_parts_rewrite_deletes_the_manifests_under_the_folders_lock(root, vocab, tmp_path, monkeypatch):  # noqa: F811
    work, out = tmp_path / "w", tmp_path / "w" / "shards" / "train"
    for i in (0, 1):
        _build(root, work, vocab, shard=ShardSpec(i, 2))
    probes, real = [], Path.unlink

    def unlink(self, *a, **k):
        if self.name.startswith("manifest"):
            probes.append((self.name, _lock_free(out)))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "unlink", unlink)
    r = _build(root, work, vocab, changed=True, shard=ShardSpec(0, 2))  # (P01_01's part: its program changed)
    monkeypatch.undo()
    assert r.rewritten, r.notes
    assert {name for name, _ in probes} == {"manifest.shard0of2.json", "manifest.json"}, probes
    assert not any(free for _, free in probes), probes  # (not amid another part's merge)
    _build(root, work, vocab, changed=True, shard=ShardSpec(1, 2))  # (the other part takes the programs, and merges)
    assert {s["sha256"] for s in format_.load_manifest(out)[0]["shards"]} == {
        sha256_file(p) for p in out.glob("*.tar")}


def test_the_frames_hash_follows_the_frames_alone(files, vocab, tmp_path):  # noqa: F811
    root, work = tmp_path / "k", tmp_path / "w"
    out = work / "shards" / "train"
    shutil.copytree(files[0], root)
    _build(root, work, vocab)
    first = format_.samples_provenance(format_.load_manifest(out)[0])
    assert _build(root, work, vocab, changed=True).rewritten  # (a program alone: targets rewritten, frames copied)
    second = format_.samples_provenance(format_.load_manifest(out)[0])
    assert second["sha256"] != first["sha256"] and second["frames"] == first["frames"] is not None
    _replace(root, files)
    _build(root, work, vocab, changed=True)  # (the video's samples read again from the new file)
    third = format_.samples_provenance(format_.load_manifest(out)[0])
    assert third["frames"] != second["frames"] and third["count"] == 7


def _framed(programs: str, samples: str, frames: str | None) -> dict:
    p = _prov(programs, samples)
    if frames is not None:
        p["train"]["samples"]["frames"] = frames
    return p


@pytest.mark.parametrize("now,said", [(("q", "s2", "f2"), {PROGRAMS, SAMPLES}), (("q", "s2", "f1"), {PROGRAMS}),
                                      (("p", "s2", "f2"), {SAMPLES}), (("q", "s2", None), {PROGRAMS})])
def test_a_resume_on_new_programs_and_new_frames_says_both(tmp_path, caplog, now, said):
    """Both warnings where programs and frames changed; the programs' alone where the frames are the same, or where
    one side keeps no frames hash (a provenance file of a leap before it); the samples' alone as before."""
    record_provenance(tmp_path, _framed("p", "s1", "f1"), resumed=False)
    with caplog.at_level(logging.WARNING):
        held = record_provenance(tmp_path, _framed(*now), resumed=True)
    text = " ".join(caplog.text.split())
    assert {m for m in (PROGRAMS, SAMPLES) if m in text} == said, text
    assert all(text.count(m) == 1 for m in said) and len(held["earlier"]) == 1


def test_downloads_again_and_again_leave_no_empty_shard(files, tmp_path):  # noqa: F811
    root, work = tmp_path / "k", tmp_path / "w"
    out = work / "shards" / "train"
    shutil.copytree(files[0], root)
    old = tmp_path / "old.MP4"
    shutil.copyfile(_mp4(root), old)
    build(root, work)
    for again in (files[1], old, files[1]):  # (the video downloaded again three times, of two sizes)
        shutil.copyfile(again, _mp4(root))
        r = build(root, work)
        assert r.written_now == 3, r.notes
        assert [s["count"] for s in r.manifest["shards"]] == [3, 1, 3] and len(list(out.glob("*.tar"))) == 3
    _as_fresh(out, files[2])


@pytest.mark.parametrize("when", ["written", "committed"])
def test_a_kill_while_an_empty_shard_is_filled_leaves_a_folder_the_next_run_finishes(files, tmp_path, monkeypatch,
                                                                                    when):  # noqa: F811
    """Killed with the filled shard written beside the empty one (``written``: the progress file not yet), or with
    the progress file naming it, before its rename over the empty tar (``committed``): no manifest meanwhile, and
    the next run ends as a build from scratch with the new file."""
    root, work = tmp_path / "k", tmp_path / "w"
    out = work / "shards" / "train"
    shutil.copytree(files[0], root)
    build(root, work)
    _replace(root, files)
    real = writer._ShardSink._refill

    def refill(self, rec):
        if when == "written":
            raise _Killed
        kill_rewrite(monkeypatch, "committed")  # (writer's os: the rename of a .tar.update dies)
        real(self, rec)

    monkeypatch.setattr(writer._ShardSink, "_refill", refill)
    with pytest.raises(_Killed):
        build(root, work)
    monkeypatch.undo()
    assert (out / ".leap-train-000002.tar.update").exists() and not (out / "manifest.json").exists()
    held = {r["name"]: r["count"] for r in _progress(out)}
    assert held["leap-train-000002.tar"] == (3 if when == "committed" else 0), held
    r = build(root, work)
    assert r.written_now == (3 if when == "written" else 0) and not list(out.glob(".*.tar.update")), r.notes
    assert [s["count"] for s in r.manifest["shards"]] == [3, 1, 3]
    _as_fresh(out, files[2])
