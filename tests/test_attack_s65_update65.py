"""build-shards after some program records changed (helper update65, session 65): generate-programs remakes a few
records (segments whose video was downloaded again, ``--retry``, an ingested batch); build-shards refused the whole
folder (``the programs differ``) and ``--force`` decoded every video of the split again (days on EPIC).

Now each sample's entry in its shard's progress record keeps the hash of its program record (``program_hash``): a
run whose inputs differ from the shards' in the programs alone keeps every shard none of whose samples' programs
changed, and rewrites the others with the new targets, the frames copied from the old tar (``_renew``); a kill in
the middle is finished or undone by the next run. A new target vocabulary is still refused (the ids would
disagree), and so are the shards of a leap that kept no program per sample until a run with their own programs
gives them one.

The tiny rgb_frames root of test_shards (7 training samples, 3 per shard); the target vocabulary is fixed by a
training manifest (``--vocab``) so that the programs alone change.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

import leap_cli.shards.writer as writer
from leap_cli.common import ShardSpec
from leap_cli.errors import LeapError
from leap_cli.shards.format import iter_tar_samples, load_manifest
from tests.test_shards import PROGRAM, make_root, program_records, settings, tar_digests, write_programs

CHANGED = "P01_01_1"  # in the first shard (P01_01_0 .. P01_01_2)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_root(tmp_path_factory.mktemp("kitchen"))


@pytest.fixture(scope="module")
def vocab(root, tmp_path_factory) -> Path:
    """A training manifest whose target vocabulary every build here shares."""
    work = tmp_path_factory.mktemp("vocab")
    write_programs(work / "programs" / "train.jsonl", program_records())
    writer.build_split(root, "train", workdir=work, settings=settings())
    return work / "shards" / "train" / "manifest.json"


def _records(changed: bool) -> list[dict]:
    """program_records(), with CHANGED's program made again otherwise (its last step left out) where ``changed``."""
    recs = copy.deepcopy(program_records())
    if changed:
        (r,) = [r for r in recs if r["narration_id"] == CHANGED]
        r["program"] = dict(PROGRAM, steps=PROGRAM["steps"][:-1])
    return recs


def _build(root, work: Path, vocab: Path, changed: bool = False, **kw):
    write_programs(work / "programs" / "train.jsonl", _records(changed))
    extra = {k: kw.pop(k) for k in ("overwrite", "progress", "shard") if k in kw}
    return writer.build_split(root, "train", workdir=work, settings=settings(**kw), vocab_manifest=vocab, **extra)


def _targets(folder: Path) -> dict[str, object]:
    return {k: json.loads(f["json"])["targets"] for p in sorted(folder.glob("*.tar")) for k, f in iter_tar_samples(p)}


def _no_decode(monkeypatch) -> None:
    def refuse(*a, **k):
        raise AssertionError("a video was decoded")

    monkeypatch.setattr(writer, "encode_video", refuse)


def _reference(root, tmp_path, vocab) -> Path:
    """The shards of the changed programs built from scratch."""
    _build(root, tmp_path / "ref", vocab, changed=True)
    return tmp_path / "ref" / "shards" / "train"


def test_a_changed_program_rewrites_its_shard_alone_as_a_fresh_build_would(root, tmp_path, vocab, monkeypatch):
    work, out = tmp_path / "w", tmp_path / "w" / "shards" / "train"
    first = _build(root, work, vocab)
    assert first.manifest["counts"]["shards"] == 3
    before = tar_digests(out)
    old_targets = _targets(out)
    kept = {n: (out / n).stat().st_mtime_ns for n in ("leap-train-000001.tar", "leap-train-000002.tar")}
    _no_decode(monkeypatch)
    r = _build(root, work, vocab, changed=True)
    monkeypatch.undo()
    assert r.written_now == 0 and r.rewritten
    assert any(n.startswith(f"the programs of 1 sample already written changed, in 1 shard (e.g. {CHANGED})")
               for n in r.notes), r.notes
    assert not any("nothing new to write" in n for n in r.notes), r.notes
    after = tar_digests(out)
    assert after["leap-train-000000.tar"] != before["leap-train-000000.tar"]
    assert {n: (out / n).stat().st_mtime_ns for n in kept} == kept  # (not written again)
    new_targets = _targets(out)
    assert new_targets[CHANGED] != old_targets[CHANGED]
    assert {k: v for k, v in new_targets.items() if k != CHANGED} == {k: v for k, v in old_targets.items()
                                                                      if k != CHANGED}
    # byte for byte the shards and manifest a build from scratch makes of the changed programs
    ref = _reference(root, tmp_path, vocab)
    assert after == tar_digests(ref)
    assert (out / "manifest.json").read_bytes() == (ref / "manifest.json").read_bytes()
    assert load_manifest(out)[0]["sources"]["programs"] == r.manifest["sources"]["programs"]
    again = _build(root, work, vocab, changed=True)
    assert again.written_now == 0 and not again.rewritten and tar_digests(out) == after
    assert any("nothing new to write" in n for n in again.notes), again.notes


def test_programs_changed_for_samples_not_yet_written_keep_the_shards(root, tmp_path, vocab):
    """A build stopped after its first shard; the program of a segment past it changes: the run goes on, the shard
    kept as it is."""
    work, out = tmp_path / "w", tmp_path / "w" / "shards" / "train"

    def interrupt(done, total):
        if done >= 5:
            raise KeyboardInterrupt

    write_programs(work / "programs" / "train.jsonl", program_records())
    with pytest.raises(KeyboardInterrupt):
        writer.build_split(root, "train", workdir=work, settings=settings(), vocab_manifest=vocab, progress=interrupt)
    shard = (out / "leap-train-000000.tar").stat().st_mtime_ns
    recs = program_records()
    recs[1]["program"] = dict(recs[1]["program"], pre=[])  # P01_02_2, not in the first shard
    write_programs(work / "programs" / "train.jsonl", recs)
    r = writer.build_split(root, "train", workdir=work, settings=settings(), vocab_manifest=vocab)
    assert r.resumed_shards == 1 and r.written_now == 4 and not r.rewritten
    assert (out / "leap-train-000000.tar").stat().st_mtime_ns == shard
    assert any("not for a sample they hold: they are kept" in n for n in r.notes), r.notes
    ref = tmp_path / "ref"
    write_programs(ref / "programs" / "train.jsonl", recs)
    writer.build_split(root, "train", workdir=ref, settings=settings(), vocab_manifest=vocab)
    assert tar_digests(out) == tar_digests(ref / "shards" / "train")


class _Killed(BaseException):
    pass


def kill_rewrite(monkeypatch, when: str) -> None:
    """Make a shard's rewrite die (``_Killed``) with its new tar written beside the old one (``written``: the
    progress file not yet), or with the progress file naming it, before its rename over the old (``committed``)."""
    if when == "written":
        real = writer._rewrite_shard

        def rewrite_then_die(*a, **k):
            real(*a, **k)
            raise _Killed

        monkeypatch.setattr(writer, "_rewrite_shard", rewrite_then_die)
    else:
        class Os:  # writer's os, whose rename of a rewritten tar over the old one is never reached
            def __getattr__(self, name):
                return getattr(writer.__dict__["_real_os"], name)

            @staticmethod
            def replace(src, dst):
                if str(src).endswith(".tar.update"):
                    raise _Killed
                return writer.__dict__["_real_os"].replace(src, dst)

        monkeypatch.setitem(writer.__dict__, "_real_os", writer.os)
        monkeypatch.setattr(writer, "os", Os())


@pytest.mark.parametrize("when", ["written", "committed"])
def test_a_kill_in_the_rewrite_leaves_a_folder_the_next_run_finishes(root, tmp_path, vocab, monkeypatch, when):
    """Killed with the new tar written beside the old one (``written``: the progress file not yet), or with the
    progress file naming the new tar not yet renamed over the old (``committed``): no reader is given a manifest
    that names other bytes, and the next run ends with the shards of a build from scratch, decoding nothing."""
    work, out = tmp_path / "w", tmp_path / "w" / "shards" / "train"
    _build(root, work, vocab)
    kill_rewrite(monkeypatch, when)
    with pytest.raises(_Killed):
        _build(root, work, vocab, changed=True)
    monkeypatch.undo()
    assert list(out.glob(".*.tar.update")), sorted(p.name for p in out.iterdir())
    if when == "written":  # the old tars and the manifest naming them, as they were
        assert tar_digests(out) == {s["name"]: s["sha256"] for s in load_manifest(out)[0]["shards"]}
    else:  # the manifest named the old bytes: train refuses, no half state is read
        with pytest.raises(LeapError, match="no shards manifest"):
            load_manifest(out)
    _no_decode(monkeypatch)
    r = _build(root, work, vocab, changed=True)
    monkeypatch.undo()
    assert not list(out.glob(".*.tar.update")) and r.resumed_shards == 3
    ref = _reference(root, tmp_path, vocab)
    assert tar_digests(out) == tar_digests(ref)
    assert (out / "manifest.json").read_bytes() == (ref / "manifest.json").read_bytes()


def test_a_folder_of_the_earlier_leap_resumes_as_it_was_and_then_updates(root, tmp_path, vocab):
    """Progress records without a program per sample (an earlier leap's): with the same programs nothing is
    rebuilt (the records get their hashes); with others before that, refused as before, saying why."""
    work, out = tmp_path / "w", tmp_path / "w" / "shards" / "train"
    _build(root, work, vocab)
    progress = out / ".progress.jsonl"

    def as_earlier():
        records = [json.loads(x) for x in progress.read_text().splitlines()]
        progress.write_text("".join(json.dumps(dict(r, samples=[{k: v for k, v in x.items() if k != "program"}
                                                                 for x in r["samples"]])) + "\n" for r in records))

    as_earlier()
    tars, manifest = tar_digests(out), (out / "manifest.json").read_bytes()
    with pytest.raises(LeapError, match="kept no program per sample") as e:
        _build(root, work, vocab, changed=True)
    assert "--force" in e.value.fix and tar_digests(out) == tars
    r = _build(root, work, vocab)
    assert r.written_now == 0 and r.resumed_shards == 3 and not r.rewritten
    assert tar_digests(out) == tars and (out / "manifest.json").read_bytes() == manifest
    assert all("program" in x for line in progress.read_text().splitlines() for x in json.loads(line)["samples"])
    r = _build(root, work, vocab, changed=True)
    assert r.rewritten and tar_digests(out) == tar_digests(_reference(root, tmp_path, vocab))


def test_a_new_target_vocabulary_is_refused_as_before_and_says_why(root, tmp_path):
    """Training shards whose vocabulary is built from their programs: a program that changes it is refused."""
    work = tmp_path / "w"
    write_programs(work / "programs" / "train.jsonl", program_records())
    writer.build_split(root, "train", workdir=work, settings=settings())
    write_programs(work / "programs" / "train.jsonl", [dict(r, status="invalid") if r["narration_id"] == "P01_02_2"
                                                       else r for r in program_records()])
    with pytest.raises(LeapError, match=r"\(the programs, the target vocabulary differ\): its samples hold the "
                                        r"program ids of the target vocabulary they were built with") as e:
        writer.build_split(root, "train", workdir=work, settings=settings())
    assert "--force" in e.value.fix


def test_parts_take_new_programs_each_and_merge(root, tmp_path, vocab):
    """--shard i/2: the part holding the changed sample rewrites its shard, the other takes the programs as it
    is; the merged manifest.json is that of parts built from scratch."""
    work, out = tmp_path / "w", tmp_path / "w" / "shards" / "train"
    for i in (0, 1):
        _build(root, work, vocab, shard=ShardSpec(i, 2))
    mine = next(i for i in (0, 1) if CHANGED in json.loads((out / f"manifest.shard{i}of2.json").read_text())
                ["shards"][0]["keys"])
    with pytest.raises(LeapError, match=r"built in 2 parts \(--shard i/2, all done\) from other programs") as e:
        _build(root, work, vocab, changed=True)  # (without --shard: its fix was --force on every part)
    assert "--force" not in e.value.fix and "--shard i/2 for each part" in e.value.fix
    first = _build(root, work, vocab, changed=True, shard=ShardSpec(mine, 2))
    assert first.rewritten and not (out / "manifest.json").exists()
    assert any(f"--shard {1 - mine}/2" in n for n in first.notes), first.notes
    second = _build(root, work, vocab, changed=True, shard=ShardSpec(1 - mine, 2))
    assert not second.rewritten and any("merged manifest.json" in n for n in second.notes), second.notes
    ref = tmp_path / "ref"
    for i in (0, 1):
        _build(root, ref, vocab, changed=True, shard=ShardSpec(i, 2))
    assert tar_digests(out) == tar_digests(ref / "shards" / "train")
    assert (out / "manifest.json").read_bytes() == (ref / "shards" / "train" / "manifest.json").read_bytes()


def test_a_changed_record_whose_targets_stay_rewrites_nothing(root, tmp_path, vocab):
    """P01_01_0's invalid record made again as failed: no sample's bytes change, so no tar is written (and the
    folder is not taken from a training that reads it); the manifest takes the new programs."""
    work, out = tmp_path / "w", tmp_path / "w" / "shards" / "train"
    _build(root, work, vocab)
    times = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    recs = [dict(r, status="failed", program=None, errors=[]) if r["narration_id"] == "P01_01_0" else r
            for r in program_records()]
    write_programs(work / "programs" / "train.jsonl", recs)
    r = writer.build_split(root, "train", workdir=work, settings=settings(), vocab_manifest=vocab)
    assert not r.rewritten and {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == times
    assert any(n.startswith("the programs of 1 sample already written changed, in 1 shard (e.g. P01_01_0): no "
                            "target changed") for n in r.notes), r.notes
    assert load_manifest(out)[0]["sources"]["programs"] == writer.programs_digest(recs)


def test_a_rewrite_waits_for_a_training_that_reads_the_folder(root, tmp_path, vocab):
    """A shard is not rewritten under a leap train or evaluate (``io.ShardReaders``): refused, the folder as it was
    (no ``.update`` file left), and the run after the training rewrites it."""
    from leap_cli.io import ShardReaders

    work, out = tmp_path / "w", tmp_path / "w" / "shards" / "train"
    _build(root, work, vocab)
    tars, manifest = tar_digests(out), (out / "manifest.json").read_bytes()
    with ShardReaders(out):
        with pytest.raises(LeapError, match="a leap train or evaluate is reading these shards"):
            _build(root, work, vocab, changed=True)
    assert tar_digests(out) == tars and (out / "manifest.json").read_bytes() == manifest
    assert not list(out.glob(".*.update"))
    assert _build(root, work, vocab, changed=True).rewritten
    assert tar_digests(out) == tar_digests(_reference(root, tmp_path, vocab))
