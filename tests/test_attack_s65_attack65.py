"""build-shards taking new program records in place (``_renew``), attacked (helper attack65, session 65).

Found and fixed:
- a run given the new records as ``--programs FILE`` (generate-programs' output elsewhere, a merged file) rewrote
  the shards but left their progress records naming the inputs of the build before (no ``--programs``), so every
  command leap names for the folder afterwards read the old file: ``leap train``'s "no shards manifest found ...
  build them first: leap build-shards ..." after a kill in the rewrite, whose run rewrote the shards back to the old
  programs. The records a run brings up to its programs take its inputs.
- ``--shard i/n``: the note of the part that took the new programs named each other part's command as that part
  began (the old program file): followed, the other part kept the old programs and named this part's command back,
  never merging. The commands name this run's inputs.
- a tar damaged since (cut short, or a sample's CRC-32) holding a changed sample is decoded again with the shards
  after it, but the manifest naming their old bytes stayed: a run killed meanwhile left train reading new tars
  against old CRC-32s. It is deleted first, as for a rewrite.
- new records taken without a tar written (none for a sample the shards hold, or none whose targets change) were
  also said to be "built before with these settings and inputs: nothing new to write (--force builds them again)".
- the refusal of an earlier leap's shards (no program per sample) offered only --force (every video decoded again),
  not the run with the old program file that gives them their hashes rebuilding nothing.

Mutants of ``_renew`` / ``_rewrite_shard`` / ``begin_rewrite`` (33 by hand) are killed by this file with
test_attack_s65_update65, but one equivalent (the made_with test as a set difference: a settings hash that differs
where made_with does not cannot happen within one part). Right as it is: anticipation (context clips, blank samples),
--workers 2, records deleted, added, turned invalid, changed twice, a stale ``.update``, a kill at each step, a
build killed mid-way then changed, a folder of the leap before (e46d71a), unsharded and in parts, updated after one
run with its own programs; parts updated in either order merge into a fresh build's manifest; a no-change rerun's
``_resume`` over 200 tars of 500 samples takes 0.20 s before and after (load 1.4).

The tiny rgb_frames root and the fixed target vocabulary of test_attack_s65_update65.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import leap_cli.io as leap_io
import leap_cli.shards.writer as writer
from leap_cli.common import ShardSpec
from leap_cli.errors import LeapError
from leap_cli.shards.format import build_command, load_manifest
from tests.test_attack_s65_update65 import CHANGED, _build, _no_decode, _records, _reference, root, vocab  # noqa: F401
from tests.test_shards import epic_root, settings, tar_digests, write_programs  # noqa: F401


class _Killed(BaseException):
    pass


def _kill_at_commit(monkeypatch, n: int) -> None:
    """The n-th write of a progress file (``atomic_write_text``) is killed before it happens."""
    real, calls = leap_io.atomic_write_text, []

    def write(path, *a, **k):
        if Path(path).name.startswith(".progress"):
            calls.append(path)
            if len(calls) == n:
                raise _Killed
        return real(path, *a, **k)

    monkeypatch.setattr(leap_io, "atomic_write_text", write)


def test_a_kill_before_the_rewrite_is_recorded_is_undone_and_the_commands_name_the_new_program_file(
        root, tmp_path, vocab, monkeypatch):
    """The new records given as --programs FILE; killed when the progress file would record the rewritten tar (its
    ``.update`` written, the manifest deleted): the old tar is kept, train's message names the command that finishes
    the update with FILE (it named the build's first inputs, whose program file rewrote the shards back), and that
    command's run ends with the shards of a build from scratch, decoding nothing."""
    work, out = tmp_path / "w", tmp_path / "w" / "shards" / "train"
    _build(root, work, vocab)
    before = tar_digests(out)
    new = write_programs(tmp_path / "regenerated.jsonl", _records(True))

    def run():
        return writer.build_split(root, "train", workdir=work, settings=settings(), vocab_manifest=vocab,
                                  programs_path=new)

    _kill_at_commit(monkeypatch, 2)  # (1: the unchanged shards take the new programs; 2: the rewritten one)
    with pytest.raises(_Killed):
        run()
    monkeypatch.undo()
    assert tar_digests(out) == before and list(out.glob(".leap-train-*.tar.update"))
    with pytest.raises(LeapError, match="no shards manifest") as e:
        load_manifest(out)
    assert f"--programs {new}" in e.value.fix
    _no_decode(monkeypatch)
    r = run()
    monkeypatch.undo()
    assert r.rewritten and not list(out.glob(".*.update"))
    assert tar_digests(out) == tar_digests(_reference(root, tmp_path, vocab))
    assert f"--programs {new}" in build_command(out)


def test_the_note_of_a_part_names_the_other_parts_commands_with_the_new_program_file(root, tmp_path, vocab):
    """--shard i/2 parts built from the work directory's program file; the new records given as --programs FILE to
    the part holding the changed sample: its note named the other part's command as that part began (no
    --programs), whose run kept the old programs and named this part's command back, and so on. Followed, the
    note's command merges the set."""
    work, out = tmp_path / "w", tmp_path / "w" / "shards" / "train"
    for i in (0, 1):
        _build(root, work, vocab, shard=ShardSpec(i, 2))
    mine = next(i for i in (0, 1) if CHANGED in json.loads((out / f"manifest.shard{i}of2.json").read_text())
                ["shards"][0]["keys"])
    new = write_programs(tmp_path / "regenerated.jsonl", _records(True))
    first = writer.build_split(root, "train", workdir=work, settings=settings(), vocab_manifest=vocab,
                               programs_path=new, shard=ShardSpec(mine, 2))
    (note,) = [n for n in first.notes if n.startswith(f"part {mine}/2 done with these programs")]
    assert f"--shard {1 - mine}/2" in note and f"--programs {new}" in note, note
    second = writer.build_split(root, "train", workdir=work, settings=settings(), vocab_manifest=vocab,
                                programs_path=new, shard=ShardSpec(1 - mine, 2))
    assert any("merged manifest.json written" in n for n in second.notes), second.notes
    assert load_manifest(out)[0]["sources"]["programs"] == writer.programs_digest(_records(True))


class _Os:
    """writer's ``os``, whose ``replace`` of a rewritten tar (``.update``) over the old one is killed and whose
    ``fsync`` records the files it is given."""

    def __init__(self, real, kill: bool):
        self.real, self.kill, self.synced = real, kill, []

    def __getattr__(self, name):
        return getattr(self.real, name)

    def replace(self, src, dst):
        if self.kill and str(src).endswith(".tar.update"):
            raise _Killed
        return self.real.replace(src, dst)

    def fsync(self, fd):
        self.synced.append(self.real.readlink(f"/proc/self/fd/{fd}"))
        return self.real.fsync(fd)


def _damage(out: Path, key: str) -> None:
    """One byte of ``key``'s last frame flipped in its tar (the size kept: only the sample's CRC-32 tells)."""
    for line in (out / ".progress.jsonl").read_text().splitlines():
        r = json.loads(line)
        for x in r["samples"]:
            if x["key"] == key:
                path = out / r["name"]
                data = bytearray(path.read_bytes())
                data[x["offset"] + x["size"] - 600] ^= 0xFF
                path.write_bytes(bytes(data))
                return
    raise AssertionError(key)


@pytest.mark.parametrize("damage", ["in place", "cut short"])
def test_a_damaged_shard_holding_a_changed_sample_is_built_again_and_no_manifest_names_its_old_bytes(
        root, tmp_path, vocab, damage):
    """The tar of the changed sample damaged in place (its copy would carry the damage) or cut short: it is decoded
    again with the shards after it, as a resume redoes a damaged shard; no ``.update`` is left, and a run killed
    after the new tar replaced the old leaves no manifest naming the old bytes (the manifest stayed: train read the
    new tar's samples against the old CRC-32s)."""
    work, out = tmp_path / "w", tmp_path / "w" / "shards" / "train"
    _build(root, work, vocab)
    if damage == "in place":
        _damage(out, CHANGED)
    else:
        tar = out / "leap-train-000000.tar"
        tar.write_bytes(tar.read_bytes()[:-512])

    def kill_after_first_shard(done, total):
        if done >= 5:  # (shard 0's 3 samples and one more: shard 0 renamed over the old)
            raise _Killed

    with pytest.raises(_Killed):
        _build(root, work, vocab, changed=True, progress=kill_after_first_shard)
    assert not list(out.glob(".*.update"))
    with pytest.raises(LeapError, match="no shards manifest"):
        load_manifest(out)
    r = _build(root, work, vocab, changed=True)
    ref = _reference(root, tmp_path, vocab)
    assert tar_digests(out) == tar_digests(ref) and r.written_now
    assert (out / "manifest.json").read_bytes() == (ref / "manifest.json").read_bytes()


def test_a_rewrite_recorded_before_a_kill_is_finished_as_a_rewrite_and_waits_for_a_reader(
        root, tmp_path, vocab, monkeypatch):
    """Killed with the rewrite recorded, its tar not yet renamed; a stale ``.update`` of another shard beside it.
    A training holding the folder: the next run is refused, the tar as it was. After it: the rename is finished
    (a rewrite: no 'nothing new to write'), the stale file deleted, the shards those of a build from scratch."""
    from leap_cli.io import ShardReaders

    work, out = tmp_path / "w", tmp_path / "w" / "shards" / "train"
    _build(root, work, vocab)
    monkeypatch.setattr(writer, "os", _Os(writer.os, kill=True))
    with pytest.raises(_Killed):
        _build(root, work, vocab, changed=True)
    monkeypatch.undo()
    (out / ".leap-train-000002.tar.update").write_bytes(b"\0" * 1024)
    tars = tar_digests(out)
    with ShardReaders(out):
        with pytest.raises(LeapError, match="a leap train or evaluate is reading these shards"):
            _build(root, work, vocab, changed=True)
    assert tar_digests(out) == tars and (out / ".leap-train-000000.tar.update").exists()
    r = _build(root, work, vocab, changed=True)
    assert r.rewritten and not any("nothing new to write" in n for n in r.notes), r.notes
    assert not list(out.glob(".*.update"))
    assert tar_digests(out) == tar_digests(_reference(root, tmp_path, vocab))


def test_a_rewritten_tar_is_synced_before_it_is_renamed_over_the_old(root, tmp_path, vocab, monkeypatch):
    work, out = tmp_path / "w", tmp_path / "w" / "shards" / "train"
    _build(root, work, vocab)
    proxy = _Os(writer.os, kill=False)
    monkeypatch.setattr(writer, "os", proxy)
    assert _build(root, work, vocab, changed=True).rewritten
    assert str(out / ".leap-train-000000.tar.update") in proxy.synced, proxy.synced


def test_a_record_turned_invalid_counts_its_sample_without_a_program_and_the_next_run_has_nothing_to_do(
        root, tmp_path, vocab):
    """CHANGED's record marked invalid: its sample has no program now. The manifest (has_program counts) and the
    progress records (each sample's program hash) are a fresh build's; the run after takes nothing again."""
    work, out = tmp_path / "w", tmp_path / "w" / "shards" / "train"
    _build(root, work, vocab)
    invalid = [dict(r, status="invalid") if r["narration_id"] == CHANGED else r for r in _records(False)]
    had = json.loads((out / "manifest.json").read_text())["counts"]

    def run(folder: Path):
        write_programs(folder / "programs" / "train.jsonl", invalid)
        return writer.build_split(root, "train", workdir=folder, settings=settings(), vocab_manifest=vocab)

    assert run(work).rewritten
    ref = tmp_path / "ref"
    run(ref)
    m = json.loads((out / "manifest.json").read_text())
    assert m == json.loads((ref / "shards" / "train" / "manifest.json").read_text())
    assert m["counts"] != had
    entries = lambda folder: [x for line in (folder / ".progress.jsonl").read_text().splitlines()  # noqa: E731
                              for x in json.loads(line)["samples"]]
    assert entries(out) == entries(ref / "shards" / "train")
    again = run(work)
    assert not again.rewritten and not any("already written changed" in n for n in again.notes), again.notes


@pytest.mark.parametrize("change", ["outside the shards", "no target changed"])
def test_programs_taken_without_a_tar_written_are_not_said_to_be_the_inputs_of_before(root, tmp_path, vocab, change):
    """New records for no sample the shards hold (an id of another split), or whose targets stay (an invalid record
    made again as failed): the shards are kept and the run says why, but it also said "all 3 shards were built
    before with these settings and inputs: nothing new to write (--force builds them again)": the inputs had
    changed, and --force decodes every video again for nothing."""
    work = tmp_path / "w"
    _build(root, work, vocab)
    recs = (_records(False) + [{"narration_id": "P09_01_0", "status": "failed", "program": None, "errors": []}]
            if change == "outside the shards" else
            [dict(r, status="failed", program=None) if r["narration_id"] == "P01_01_0" else r for r in _records(False)])
    write_programs(work / "programs" / "train.jsonl", recs)
    r = writer.build_split(root, "train", workdir=work, settings=settings(), vocab_manifest=vocab)
    assert r.written_now == 0 and not r.rewritten
    assert any("they are kept" in n or "no target changed" in n for n in r.notes), r.notes
    # (the notes of records still to come name --force only for a new training vocabulary: build_again)
    assert not any("with these settings and inputs" in n or "--force builds them again" in n for n in r.notes), r.notes
    again = writer.build_split(root, "train", workdir=work, settings=settings(), vocab_manifest=vocab)
    assert any("all 3 shards were built before with these settings and inputs" in n for n in again.notes), again.notes


def test_the_refusal_of_an_earlier_leaps_shards_names_the_run_that_rebuilds_nothing(root, tmp_path, vocab):
    """Shards whose progress records keep no program per sample (a leap before 2026-12-07) and changed programs:
    the fix said only --force (every video decoded again), though a run with the program file they were built
    from gives them their hashes without rebuilding anything, and then the new programs rewrite one shard."""
    work, out = tmp_path / "w", tmp_path / "w" / "shards" / "train"
    _build(root, work, vocab)
    progress = out / ".progress.jsonl"
    progress.write_text("".join(json.dumps(dict(r, samples=[{k: v for k, v in x.items() if k != "program"}
                                                            for x in r["samples"]])) + "\n"
                                for r in map(json.loads, progress.read_text().splitlines())))
    with pytest.raises(LeapError, match="kept no program per sample") as e:
        _build(root, work, vocab, changed=True)
    assert "the program file they were built from" in e.value.fix and "rebuilding nothing" in e.value.fix, e.value.fix


def test_anticipation_shards_take_a_changed_program_as_a_fresh_build_would(epic_root, tmp_path, monkeypatch):
    """Anticipation samples (context clips, blank samples), their vocabulary made from their own programs: a program
    whose steps come in another order (the same vocabulary) rewrites its shard alone, decoding nothing, into the
    bytes of a build from scratch."""
    from leap_cli.shards.format import iter_tar_samples

    ant = dict(task="anticipation", tau_a=1.0, tau_o=1.0, context=2, context_mode="segments")
    recs = _records(False)
    for r in recs:
        if r["narration_id"] == CHANGED:
            r["program"] = dict(r["program"], steps=list(reversed(r["program"]["steps"])))

    def run(work: Path, records: list[dict]):
        write_programs(work / "programs" / "train.jsonl", records)
        return writer.build_split(epic_root, "train", workdir=work, settings=settings(**ant))

    out = run(tmp_path / "w", _records(False)).out
    kept = (out / "leap-train-000002.tar").stat().st_mtime_ns
    _no_decode(monkeypatch)
    r = run(tmp_path / "w", recs)
    monkeypatch.undo()
    assert r.rewritten and (out / "leap-train-000002.tar").stat().st_mtime_ns == kept
    ref = run(tmp_path / "ref", recs).out
    assert tar_digests(out) == tar_digests(ref)
    assert (out / "manifest.json").read_bytes() == (ref / "manifest.json").read_bytes()
    metas = {k: json.loads(f["json"]) for k, f in iter_tar_samples(out / "leap-train-000000.tar")}
    assert metas["P01_01_0"]["blank"] and metas[CHANGED]["context"][1]["present"]
