"""leap build-shards and the shards reader, on a tiny EPIC-layout root with rgb_frames folders."""

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from leap_cli.common import ShardSpec, counted
from leap_cli.epic.classes import ClassVocab
from leap_cli.epic.timing import RGB_FRAMES, FrameClock, epic_frame_rate, format_timestamp, time_to_frame
from leap_cli.errors import LeapError
from leap_cli.programs.targets import TargetVocab, encode_program
from leap_cli.shards.dataset import ShardDataset, collate_clips
from leap_cli.shards.format import iter_tar_samples, load_manifest, merge_parts
from leap_cli.shards.transforms import decode_jpegs
from leap_cli.shards.writer import ShardSettings, build_split
from tests.program_helpers import cond, sub
from tests.procs import alive_after

EPIC = Path(__file__).parent / "data" / "epic100"
FPS = 10.0
W, H = 48, 32
COLUMNS = ("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,"
           "stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes")
# (video, start s, stop s, verb, verb_class, noun, noun_class)
TRAIN = [("P01_01", 0.3, 1.5, "take", 0, "plate", 2), ("P01_01", 1.6, 2.9, "wash", 2, "plate", 2),
         ("P01_01", 3.0, 4.4, "put", 1, "plate", 2), ("P01_01", 4.5, 5.8, "open", 3, "tap", 0),
         ("P01_02", 0.5, 2.0, "take", 0, "cup", 13), ("P01_02", 2.2, 3.5, "put", 1, "cup", 13),
         ("P01_02", 3.8, 5.5, "wash", 2, "cup", 13)]
VAL = [("P01_03", 1.0, 2.5, "take", 0, "plate", 2), ("P01_03", 2.6, 4.0, "put", 1, "plate", 2)]
FRAMES_PER_VIDEO = 60


def colour(video: str, n: int) -> tuple[int, int, int]:
    """The flat RGB colour of frame n of a video (frames are flat so JPEG keeps them almost exactly)."""
    v = int(video[-1])  # red: n mod 32, blue: n // 32 (unique up to frame 384)
    return ((n * 8) % 256, (60 * v) % 256, 255 - (n // 32 * 24) % 256)


PROGRAM = {
    "action": {"narration": "wash plate", "verb": "wash", "noun": "plate", "verb_class": 2, "noun_class": 2},
    "pre": [cond("in", "plate", "sink"), cond("dirty", "plate")],
    "post": [cond("clean", "plate")],
    "steps": [
        sub("pick-up", "plate"),
        {"type": "loop", "until": cond("clean", "plate"),
         "steps": [dict(sub("scrub", "plate", "sponge"), post=[cond("clean", "plate")])]},
        {"type": "conditional", "if": cond("closed", "tap"), "then": [sub("switch-on", "tap")],
         "else": [sub("wait", "tap")]},
        {"type": "routine", "name": "rinse", "steps": [sub("rinse", "plate", "water")]},
        sub("put", "plate", "rack:drying"),
    ],
}


def _rows(segs, first_index=0, fps=FPS, epic=False):
    """CSV rows; ``epic``: the frame columns as EPIC counts them (floor of t x epic_frame_rate(fps))."""
    out = []
    counters: Counter = Counter()
    rate = epic_frame_rate(fps)
    col = (lambda t: max(1, int(t * rate + 1e-6))) if epic else (lambda t: time_to_frame(t, fps))
    for vid, start, stop, verb, vc, noun, nc in segs:
        i = counters[vid]
        counters[vid] += 1
        out.append(f"{vid}_{i},{vid[:3]},{vid},{format_timestamp(start)},{format_timestamp(start)},"
                   f"{format_timestamp(stop)},{col(start)},{col(stop)},{verb} {noun},"
                   f"{verb},{vc},{noun},{nc},['{noun}'],[{nc}]")
    return out


def make_root(root: Path, train=TRAIN, val=VAL, fps=FPS, epic=False) -> Path:
    """The tiny root: 6 s videos as rgb_frames folders. Default: frames and columns counted at ``fps`` (10/s,
    not EPIC's numbering: good for recognition, which takes the columns as they are). ``epic``: the folders and
    columns count as EPIC's do, at ``epic_frame_rate(fps)`` (60/s unless 50 fps), as the timing rule reads them."""
    ann = root / "annotations"
    ann.mkdir(parents=True)
    for f in ("EPIC_100_verb_classes.csv", "EPIC_100_noun_classes.csv"):
        shutil.copy(EPIC / f, ann / f)
    (ann / "EPIC_100_train.csv").write_text("\n".join([COLUMNS] + _rows(train, fps=fps, epic=epic)) + "\n")
    (ann / "EPIC_100_validation.csv").write_text("\n".join([COLUMNS] + _rows(val, fps=fps, epic=epic)) + "\n")
    videos = sorted({s[0] for s in train + val})
    seconds = FRAMES_PER_VIDEO / FPS
    frames = int(round(seconds * (epic_frame_rate(fps) if epic else fps)))
    (ann / "EPIC_100_video_info.csv").write_text(
        "video_id,duration,fps,resolution\n" + "".join(f"{v},{seconds},{fps},{W}x{H}\n" for v in videos))
    for v in videos:
        d = root / v[:3] / "rgb_frames" / v
        d.mkdir(parents=True)
        for n in range(1, frames + 1):
            img = np.zeros((H, W, 3), np.uint8)
            img[:] = colour(v, n)
            cv2.imwrite(str(d / f"frame_{n:010d}.jpg"), img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 100])
    return root


def write_programs(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# P01_02_2 "wash cup": a program passes build-shards' re-validation only with the segment's own verb and noun
WASH_CUP = {"action": {"narration": "wash cup", "verb": "wash", "noun": "cup", "verb_class": 2, "noun_class": 13},
            "pre": [cond("dirty", "cup")], "post": [cond("clean", "cup")],
            "steps": [dict(sub("wash", "cup", "water"), pre=[cond("dirty", "cup")], post=[cond("clean", "cup")])]}


def program_records():
    return [{"narration_id": "P01_01_1", "status": "valid", "program": PROGRAM, "errors": []},
            {"narration_id": "P01_02_2", "status": "valid", "program": WASH_CUP, "errors": []},
            {"narration_id": "P01_01_0", "status": "invalid", "program": PROGRAM, "errors": [{"pointer": "/", "message": "x"}]},
            {"narration_id": "P01_01_2", "status": "failed", "program": None, "errors": []}]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_root(tmp_path_factory.mktemp("kitchen"))


def settings(**kw) -> ShardSettings:
    base = dict(split="train", frames=4, short_side=32, max_count=3)
    base.update(kw)
    return ShardSettings(**base)


def build(root: Path, work: Path, *, programs=True, **kw):
    if programs:
        write_programs(work / "programs" / "train.jsonl", program_records())
    extra = {k: kw.pop(k) for k in ("workers", "overwrite", "progress", "shard") if k in kw}
    return build_split(root, kw.pop("split", "train"), workdir=work, settings=settings(**kw), **extra)


@pytest.fixture(scope="module")
def built(root, tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    return build(root, work), work


def tar_digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


# ---- writer ------------------------------------------------------------------------------------------------

def test_round_trip_frames_labels_targets(built, root):
    result, work = built
    out = work / "shards" / "train"
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["samples"] == 7 and m["counts"]["shards"] == 3  # max_count 3 -> 3 + 3 + 1
    assert [s["name"] for s in m["shards"]] == [f"leap-train-{i:06d}.tar" for i in range(3)]
    for s in m["shards"]:  # sha256 per shard as listed
        assert hashlib.sha256((out / s["name"]).read_bytes()).hexdigest() == s["sha256"]
    assert m["histograms"]["verb_class"] == {"0": 2, "1": 2, "2": 2, "3": 1}
    assert m["counts"]["with_program"] == 2
    csv_rows = {r.split(",")[0]: r.split(",") for r in (root / "annotations" / "EPIC_100_train.csv").read_text().split("\n")[1:] if r}
    seen = set()
    for shard in m["shards"]:
        for key, fields in iter_tar_samples(out / shard["name"]):
            seen.add(key)
            meta = json.loads(fields["json"])
            row = csv_rows[key]
            assert (meta["verb_class"], meta["noun_class"], meta["video"], meta["fps"]) == (int(row[10]), int(row[12]), row[2], FPS)
            names = sorted(f for f in fields if f.endswith(".jpg"))
            assert names == [f"f{i:03d}.jpg" for i in range(4)]
            frames = decode_jpegs([fields[n] for n in names])
            assert frames.shape == (4, 32, 48, 3)
            for fr, idx in zip(frames, meta["frame_indices"]):
                assert np.abs(fr.astype(int) - np.array(colour(meta["video"], idx))).max() <= 3
            assert meta["frame_indices"][0] >= int(row[6]) and meta["frame_indices"][-1] <= int(row[7])
    assert seen == set(csv_rows)
    # the reader gives the same labels, targets and (de-normalised) pixels back
    vocab = TargetVocab.from_manifest(m["targets"], ClassVocab.from_csv(EPIC / "EPIC_100_verb_classes.csv", "verb"),
                                      ClassVocab.from_csv(EPIC / "EPIC_100_noun_classes.csv", "noun"))
    programs = {"P01_01_1": encode_program(PROGRAM, vocab), "P01_02_2": encode_program(WASH_CUP, vocab)}
    ds = ShardDataset(out, train=False, num_frames=4, img_size=32)
    batches = list(DataLoader(ds, batch_size=3, collate_fn=collate_clips))
    assert sum(len(b["narration_id"]) for b in batches) == 7
    P = len(m["targets"]["conditions"])
    for b in batches:
        assert b["video"].shape[1:] == (3, 4, 32, 32)
        for i, key in enumerate(b["narration_id"]):
            assert b["verb_class"][i].item() == int(csv_rows[key][10])
            has = key in ("P01_01_1", "P01_02_2")
            assert b["has_program"][i].item() == has
            steps = b["program_steps"][i]
            if has:
                expected = programs[key]
                n = len(expected["steps"])
                assert steps[:n].tolist() == expected["steps"] and (steps[n:] == -100).all()
                assert sorted(torch.nonzero(b["conditions"][i][:P]).flatten().tolist()) == sorted(expected["pre"])
                assert sorted(torch.nonzero(b["conditions"][i][P:]).flatten().tolist()) == sorted(expected["post"])
            else:
                assert (steps == -100).all() and b["conditions"][i].sum() == 0
        assert b["video"].dtype == torch.uint8 and b["video"].float().std() > 1  # raw RGB, the model normalises


def test_program_targets_keep_the_program(built):
    """Token rows with loop/conditional/routine markers, END last; ids are EPIC class ids; the reader's batch."""
    _, work = built
    out = work / "shards" / "train"
    m = json.loads((out / "manifest.json").read_text())
    metas = {k: json.loads(f["json"]) for s in m["shards"] for k, f in iter_tar_samples(out / s["name"])}
    t = m["targets"]
    verbs, nouns = ClassVocab.from_csv(EPIC / "EPIC_100_verb_classes.csv", "verb"), ClassVocab.from_csv(EPIC / "EPIC_100_noun_classes.csv", "noun")
    v = verbs.resolve
    o = nouns.resolve
    none, end_v, end_o = t["objects"].index("none"), len(t["step_verbs"]) - 1, len(t["objects"]) - 1
    rows = metas["P01_01_1"]["targets"]["steps"]
    subs = [r[:3] for r in rows if r[0] != -100]
    assert subs == [[v("take"), o("plate"), none], [v("scrub"), o("plate"), o("sponge")], [v("turn-on"), o("tap"), none],
                    [v("wait"), o("tap"), none], [v("wash"), o("plate"), o("water")], [v("put"), o("plate"), o("rack:drying")],
                    [end_v, end_o, end_o]]
    kinds = [t["structure"][r[4]] for r in rows]
    assert kinds == ["<step>", "<loop>", "<step>", "</loop>", "<if>", "<step>", "<else>", "<step>", "</if>",
                     "<call:rinse>", "<step>", "</routine>", "<step>", "<end>"]
    assert t["max_steps"] == len(rows)  # sized from the training programs
    loop_cond = [t["conditions"][i] for i in metas["P01_01_1"]["targets"]["step_pre"][1]]
    assert loop_cond == ["clean(plate)"]
    ds = ShardDataset(out, train=False, num_frames=2, img_size=16)
    b = collate_clips([s for s in ds if s["narration_id"] == "P01_01_1"])
    assert b["program_steps"].shape == (1, len(rows), 5) and b["program_steps"][0].tolist() == rows
    P = len(t["conditions"])
    assert b["step_conditions"].shape == (1, len(rows), 2 * P)
    assert b["step_conditions"][0, 1, t["conditions"].index("clean(plate)")] == 1 and b["step_conditions"][0, 0].sum() == 0
    pre = [t["conditions"][i] for i in metas["P01_01_1"]["targets"]["pre"]]
    assert sorted(pre) == ["dirty(plate)", "in(plate,sink)"]
    assert metas["P01_01_0"]["has_program"] is False and metas["P01_01_0"]["targets"] is None  # invalid program


def test_programs_cut_to_max_steps_are_said(built, root, tmp_path):
    """A val program longer than the training ones was cut to the vocabulary's max_steps without a word, its
    <if> left open, and evaluate scored the cut targets (QA)."""
    first, work = built
    assert not any("longer than the target vocabulary's max_steps" in n for n in first.notes)  # (sized to fit)
    r = build_split(root, "train", workdir=work, settings=settings(), out=tmp_path / "cut", max_steps=4)
    (said,) = [n for n in r.notes if "longer than the target vocabulary's max_steps" in n]
    assert said.startswith("programs longer than the target vocabulary's max_steps (4 rows") and \
        ": 1 (e.g. P01_01_1: 14 rows)" in said, said
    m = json.loads((tmp_path / "cut" / "manifest.json").read_text())
    (cut,) = [json.loads(f["json"]) for s in m["shards"] for k, f in iter_tar_samples(tmp_path / "cut" / s["name"])
              if k == "P01_01_1"]
    assert len(cut["targets"]["steps"]) == 4
    # conditions outside the vocabulary are said too (QA: a val program's conditions the training ones never had
    # were dropped without a word, a marker row's own among them)
    assert not any("conditions outside the target vocabulary" in n for n in first.notes)
    r = build_split(root, "train", workdir=work, settings=settings(), out=tmp_path / "few", max_conditions=1)
    (said,) = [n for n in r.notes if "conditions outside the target vocabulary" in n]
    # (it named --max-conditions as the cause where the training programs had held no more: it is only where it cut)
    assert said.startswith("conditions outside the target vocabulary (1, those of the training programs, the most "
                           "frequent where --max-conditions cut them)"), said
    dropped, total = (int(x) for x in said.split("): ")[1].split(" condition mentions")[0].split(" of the programs' "))
    assert 0 < dropped < total, said


def test_same_bytes_with_one_and_two_workers(root, tmp_path, monkeypatch):
    from leap_cli.shards import writer

    stopped = []  # the pool of a build that went well is closed and joined: stopping it (SIGKILL, then terminate with
    monkeypatch.setattr(writer, "stop_pool", stopped.append)  # a 10 s grace) made --workers 2 five times slower
    a = build(root, tmp_path / "a", workers=1)
    b = build(root, tmp_path / "b", workers=2)
    assert not stopped
    assert tar_digests(a.out) == tar_digests(b.out) and len(tar_digests(a.out)) == 3
    assert (a.out / "manifest.json").read_bytes() == (b.out / "manifest.json").read_bytes()


def build_stopped(root: Path, work: Path) -> Path:
    """A build stopped by Ctrl-C after 5 samples (its first shard of 3 complete): its shards folder."""
    def interrupt(done, total):
        if done >= 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build(root, work, progress=interrupt)
    return work / "shards" / "train"


def test_resume_keeps_complete_shards_and_gives_the_same_bytes(root, tmp_path):
    ref = build(root, tmp_path / "ref")

    out = build_stopped(root, tmp_path / "run")
    assert [p.name for p in sorted(out.glob("*.tar"))] == ["leap-train-000000.tar"]  # shard 1 was unfinished
    assert not list(out.glob(".*partial"))
    first = (out / "leap-train-000000.tar").stat().st_mtime_ns
    again = build(root, tmp_path / "run")
    assert again.resumed_shards == 1 and again.written_now == 4
    assert (out / "leap-train-000000.tar").stat().st_mtime_ns == first
    assert tar_digests(out) == tar_digests(ref.out)
    assert (out / "manifest.json").read_bytes() == (ref.out / "manifest.json").read_bytes()
    # every shard there, the manifest not (a kill after the last tar): said as such, not "nothing new to write"
    (out / "manifest.json").unlink()
    again = build(root, tmp_path / "run")
    assert again.written_now == 0 and (out / "manifest.json").read_bytes() == (ref.out / "manifest.json").read_bytes()
    assert any(n.endswith("only their manifest was missing (a run stopped before it), written now")
               for n in again.notes), again.notes
    assert any(n.endswith("nothing new to write (--force builds them again)") for n in build(root, tmp_path / "run").notes)
    damaged = out / "leap-train-000001.tar"  # a complete shard cut short later: it and the ones after it are redone
    damaged.write_bytes(damaged.read_bytes()[:1000])
    again = build(root, tmp_path / "run")
    assert again.resumed_shards == 1 and tar_digests(out) == tar_digests(ref.out)
    with pytest.raises(LeapError, match=r"other inputs or settings \(--frames differs\)") as e:
        build(root, tmp_path / "run", frames=2)
    assert "--force" in e.value.fix
    assert build(root, tmp_path / "run", frames=2, overwrite=True).manifest["settings"]["frames"] == 2


def test_a_refusal_after_a_kill_before_the_first_manifest_names_what_changed(root, tmp_path):
    """A build killed before it wrote its manifest (EPIC's train split: hours), run again with other settings:
    refused without naming what differs, where the manifest would have said it; each shard's progress record now
    holds what it was made with."""
    out = build_stopped(root, tmp_path / "run")
    assert not (out / "manifest.json").exists() and (out / "leap-train-000000.tar").exists()
    with pytest.raises(LeapError, match=r"other inputs or settings \(--frames, --short-side differ\)"):
        build(root, tmp_path / "run", frames=2, short_side=24)
    progress = out / ".progress.jsonl"  # a record of a leap before: still refused, what differs not known
    records = [json.loads(x) for x in progress.read_text().splitlines()]
    progress.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "made_with"}) + "\n" for r in records))
    with pytest.raises(LeapError) as e:
        build(root, tmp_path / "run", frames=2)
    assert e.value.message == "the folder holds shards built from other inputs or settings"
    assert build(root, tmp_path / "run").resumed_shards == 1  # the settings it began with: resumed


def test_programs_generated_again_the_same_resume_and_merge(root, tmp_path, monkeypatch):
    """The same programs written again (another order, another time in their provenance: a regeneration from
    the cache, generate-programs with another concurrency) are the same input: hashing the file's bytes refused
    to resume the shards ("sources.programs differ") and to merge --shard parts. Other programs are refused."""
    import leap_cli.shards.writer as writer

    work, out = tmp_path / "w", tmp_path / "w" / "shards" / "train"
    path = work / "programs" / "train.jsonl"
    records = [dict(r, provenance={"created": "2026-12-01T10:00:00Z", "seconds": 1.5}) for r in program_records()]
    write_programs(path, records)
    build(root, work, programs=False, shard=ShardSpec(0, 2))
    write_programs(path, [dict(r, provenance={"created": "2026-12-03T12:00:00Z", "seconds": 0.01})
                          for r in reversed(records)])
    r = build(root, work, programs=False, shard=ShardSpec(1, 2))
    assert any("merged manifest.json" in n for n in r.notes)
    assert build(root, work, programs=False, shard=ShardSpec(0, 2)).resumed_shards >= 1
    changed = [dict(r, status="invalid") if r["narration_id"] == "P01_02_2" else r for r in records]
    write_programs(path, changed)
    with pytest.raises(LeapError, match=r"\(the programs, the target vocabulary differ\)"):
        build(root, work, programs=False, shard=ShardSpec(0, 2))
    # a folder built by an earlier leap (which hashed the file's bytes) resumes as before
    old = tmp_path / "old"
    write_programs(old / "programs" / "train.jsonl", records)
    monkeypatch.setattr(writer, "programs_digest", lambda recs: writer.sha256_file(old / "programs" / "train.jsonl"))
    made = build(root, old, programs=False)
    monkeypatch.undo()
    again = build(root, old, programs=False)
    assert again.written_now == 0 and again.resumed_shards == len(list((old / "shards" / "train").glob("*.tar")))
    assert again.manifest["sources"]["programs"] == made.manifest["sources"]["programs"]


def test_parts_of_a_folder_begun_by_the_earlier_hash_merge_whichever_leap_builds_them(root, tmp_path, monkeypatch):
    """A part rebuilt (--force) beside parts an earlier leap built took the new hash and was refused the merge; a
    part built with the new hash was later refused its own shards where a sibling had the old one, and the
    advice went round in a circle between the parts."""
    import leap_cli.shards.writer as writer

    work = tmp_path / "w"
    path = write_programs(work / "programs" / "train.jsonl", program_records())
    real = writer.programs_digest

    def earlier(on: bool) -> None:
        monkeypatch.setattr(writer, "programs_digest", (lambda recs: writer.sha256_file(path)) if on else real)

    earlier(True)
    build(root, work, programs=False, shard=ShardSpec(0, 2))
    build(root, work, programs=False, shard=ShardSpec(1, 2))
    earlier(False)
    r = build(root, work, programs=False, shard=ShardSpec(0, 2), overwrite=True)  # as its sibling: merged
    assert any("merged manifest.json" in n for n in r.notes), r.notes
    assert build(root, work, programs=False, shard=ShardSpec(0, 2)).written_now == 0
    # part 0 by today's leap, part 1 by the earlier one: rebuilding either with today's leap merges them
    other = tmp_path / "o"
    write_programs(other / "programs" / "train.jsonl", program_records())
    path = other / "programs" / "train.jsonl"
    build(root, other, programs=False, shard=ShardSpec(0, 2))
    earlier(True)
    with pytest.raises(LeapError, match="the programs differ"):
        build(root, other, programs=False, shard=ShardSpec(1, 2))
    earlier(False)
    r = build(root, other, programs=False, shard=ShardSpec(0, 2), overwrite=True)
    assert any("merged manifest.json" in n for n in r.notes), r.notes
    assert build(root, other, programs=False, shard=ShardSpec(0, 2)).written_now == 0


def test_shard_parts_merge(root, tmp_path):
    first = build(root, tmp_path, shard=ShardSpec(1, 2))
    # numbered as --shard numbers it, from 0 (it said "part 2 of 2 done", a part --shard does not have)
    assert "part 1/2 done; manifest.json is written when all parts are" in first.notes
    out = tmp_path / "shards" / "train"
    with pytest.raises(LeapError, match=r"parts \[0\] of 2 are missing"):
        load_manifest(out)
    r = build(root, tmp_path, shard=ShardSpec(0, 2))
    assert any("merged manifest.json" in n for n in r.notes)
    m, _ = load_manifest(out)
    assert m["counts"]["samples"] == 7 and len(m["parts"]) == 2
    ds = ShardDataset(out, train=False, num_frames=2, img_size=16)
    assert sorted(s["narration_id"] for s in ds) == sorted(f"P01_01_{i}" for i in range(4)) + [f"P01_02_{i}" for i in range(3)]
    # parts of another count in the same folder would hold their overlap twice once merged: refused
    with pytest.raises(LeapError, match=r"--shard i/2 parts"):
        build(root, tmp_path, shard=ShardSpec(2, 3))
    # the build without --shard after the parts are all done (README's loop over the splits, run again): nothing to
    # do (it was refused: "finish the split with --shard i/2 as begun"), with other settings refused as before
    tars = sorted(p.name for p in out.glob("*.tar"))
    again = build(root, tmp_path)
    assert again.written_now == 0 and again.manifest["counts"]["samples"] == 7
    assert any("built before in 2 parts" in n and "nothing new to write" in n for n in again.notes), again.notes
    assert sorted(p.name for p in out.glob("*.tar")) == tars
    with pytest.raises(LeapError, match=r"built in 2 parts \(--shard i/2, all done\) from other inputs or settings "
                                        r"\(--frames differs\).*--force --shard i/2"):
        build(root, tmp_path, frames=3)
    with pytest.raises(LeapError, match=r"--shard i/2 parts"):  # --force refused before it deletes anything (it
        build(root, tmp_path, overwrite=True)  # deleted the merged manifest.json, then refused)
    assert (out / "manifest.json").is_file() and sorted(p.name for p in out.glob("*.tar")) == tars
    assert load_manifest(out)[0]["counts"]["samples"] == 7
    (out / "manifest.shard2of3.json").write_text((out / "manifest.shard0of2.json").read_text())
    with pytest.raises(LeapError, match=r"--shard i/2 parts"):
        merge_parts(out)


def test_a_build_without_shard_is_refused_beside_a_part_that_has_begun(root, tmp_path):
    """A part still running (paused, or on real data long before its first tar) left only its progress file: an
    unsharded build beside it went ahead, and the folder then held both builds' tars."""
    def stop(done, total):
        if done:
            raise KeyboardInterrupt  # the part stops after its first sample, before any tar is complete

    with pytest.raises(KeyboardInterrupt):
        build(root, tmp_path, shard=ShardSpec(0, 2), progress=stop, max_shard_size=10**9)
    out = tmp_path / "shards" / "train"
    assert (out / ".progress.shard0of2.jsonl").exists() and not list(out.glob("*.tar"))
    with pytest.raises(LeapError, match=r"holds shards of --shard i/2 parts"):
        build(root, tmp_path)
    assert not list(out.glob("leap-train-*.tar"))
    assert build(root, tmp_path, shard=ShardSpec(1, 2)).written_now  # the other part still builds beside it


@pytest.fixture(scope="module")
def epic_root(tmp_path_factory) -> Path:
    """The same segments, rgb_frames numbered as EPIC numbers them: a 29.97 fps video counted at 60/s."""
    return make_root(tmp_path_factory.mktemp("kitchen-epic"), fps=29.97, epic=True)


def test_parts_built_otherwise_are_not_merged(root, tmp_path):
    """Part 1/2 built with --frames 8 beside part 0/2 at 4 frames was merged under the first part's settings
    (frames 4, its vocabulary): check-shards passed, and a vocabulary that differed crashed the reader."""
    build(root, tmp_path, shard=ShardSpec(0, 2))
    out = tmp_path / "shards" / "train"
    # named against the part just built (made from the inputs as they are now: part 0 was told to rebuild part 1,
    # which changed nothing, where part 0 had been built from an older programs file)
    with pytest.raises(LeapError, match=r"part manifest\.shard0of2\.json was built from other inputs or "
                                        r"settings than manifest\.shard1of2\.json \(--frames: 8 -> 4 differs\) "
                                        r"\(rebuild part 0 with the inputs and options of part 1"):
        build(root, tmp_path, shard=ShardSpec(1, 2), frames=8)
    assert not (out / "manifest.json").exists()
    r = build(root, tmp_path, shard=ShardSpec(1, 2), overwrite=True)  # rebuilt as the other: merged
    assert any("merged manifest.json" in n for n in r.notes)
    # --force on one part drops the merged manifest that names its old shards (a reader met missing tars)
    killed = {"n": 0}

    def stop_after_first(done, total):
        killed["n"] += 1
        if killed["n"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build(root, tmp_path, shard=ShardSpec(1, 2), overwrite=True, progress=stop_after_first)
    assert not (out / "manifest.json").exists()
    # parts into a folder that holds a build without --shard: refused (its tars would stay beside them)
    whole = tmp_path / "whole"
    build(root, whole)
    with pytest.raises(LeapError, match="holds a build without --shard"):
        build(root, whole, shard=ShardSpec(0, 2))


def test_anticipation_previous_segments_option(epic_root, tmp_path):
    r = build(epic_root, tmp_path, task="anticipation", tau_a=1.0, tau_o=1.0, context=2, context_mode="segments")
    assert r.out == tmp_path / "shards" / "train-anticipation"
    m = r.manifest
    assert not m["skipped"]
    clock = FrameClock(RGB_FRAMES, 29.97)  # the timing rule of this source: 60 frames a second
    rows = {row["narration_id"]: row for row in csv.DictReader(open(epic_root / "annotations" / "EPIC_100_train.csv"))}
    starts = {f"{v}_{i}": s for v in ("P01_01", "P01_02") for i, s in enumerate(x[1] for x in TRAIN if x[0] == v)}
    blank = set()
    for shard in m["shards"]:
        for key, fields in iter_tar_samples(r.out / shard["name"]):
            meta = json.loads(fields["json"])
            end = clock.time_of(int(rows[key]["start_frame"])) - 1.0  # (the action at its start_frame, as clips)
            assert starts[key] - 1.0 - 2 / clock.rate <= end <= starts[key] - 1.0
            if end < 0:  # starts 0.3 s / 0.5 s into the video, less than tau_a: nothing observable, black frames
                blank.add(key)
                assert meta["observed"] is None and meta["frame_indices"] == [] and meta["blank"]
                img = cv2.imdecode(np.frombuffer(fields["f000.jpg"], np.uint8), cv2.IMREAD_COLOR)
                assert img.max() <= 2 and not any(c["present"] for c in meta["context"])
                continue
            assert meta["observed"]["stop"] == pytest.approx(end)
            assert meta["blank"] is False  # (the key in every anticipation sample: QA's j["blank"] raised KeyError)
            read = meta["frame_indices"] + [i for c in meta["context"] for i in c["frame_indices"]]
            assert max(clock.time_of(i) for i in read) <= end + 1e-9  # no frame after the observed window
            assert time_to_frame(end, FPS) < max(meta["frame_indices"]) <= clock.frame_at(end)  # counted at 60/s
            assert len(meta["context"]) == 2
            for c, ctx in enumerate(meta["context"]):
                assert (f"c{c}.f000.jpg" in fields) == ctx["present"]
                if ctx["present"]:  # the previous segment's frames are its CSV columns, as EPIC numbers them
                    row = rows[ctx["key"]]
                    assert min(ctx["frame_indices"]) >= int(row["start_frame"])
                    assert max(ctx["frame_indices"]) <= min(int(row["stop_frame"]), clock.frame_at(end))
    metas = {k: json.loads(f["json"]) for k, f in iter_tar_samples(r.out / m["shards"][0]["name"])}
    assert metas["P01_01_1"]["context"][1]["key"] == "P01_01_0"
    assert blank == {"P01_01_0", "P01_02_0"}  # every segment has a sample, so a test submission can be complete
    ds = ShardDataset(r.out, train=True, num_frames=2, img_size=16, shuffle_buffer=1)
    b = collate_clips(list(ds))
    assert b["context_video"].shape == (7, 2, 3, 2, 16, 16)
    i = b["narration_id"].index("P01_01_1")  # only P01_01_0 before it: context 0 absent, 1 present
    assert b["context_mask"][i].tolist() == [False, True] and b["context_video"][i, 0].abs().sum() == 0
    assert blank and m["counts"]["blank"] == len(blank)  # counted (only each sample's JSON said it)
    assert "observed clip" in m["settings"]["sampling"]


# ---- bad input -----------------------------------------------------------------------------------------------

def test_unreadable_frames_are_skipped_and_listed(tmp_path):
    extra = [("P01_02", 5.6, 7.5, "take", 0, "cup", 13), ("P01_04", 1.0, 2.0, "take", 0, "cup", 13)]
    root = make_root(tmp_path / "k", train=TRAIN + extra)
    (root / "P01" / "rgb_frames" / "P01_02" / f"frame_{28:010d}.jpg").write_bytes(b"not a jpeg")  # inside P01_02_1
    shutil.rmtree(root / "P01" / "rgb_frames" / "P01_04")  # a video that is not there at all
    r = build(root, tmp_path / "w")
    skipped = {x["narration_id"]: x["reason"] for x in r.manifest["skipped"]}
    assert set(skipped) == {"P01_02_1", "P01_02_3", "P01_04_0"}
    assert "unreadable" in skipped["P01_02_1"] and "frame_0000000028.jpg" in skipped["P01_02_1"]
    # named by its own segment, in words (it said "[P01_02]" and the class name "VideoUnreadable")
    assert "[P01_02_1]" in skipped["P01_02_1"] and "VideoUnreadable" not in skipped["P01_02_1"]
    assert "60 frames" in skipped["P01_02_3"]  # the segment runs past the end of the video
    assert "cannot be opened" in skipped["P01_04_0"]
    assert r.manifest["counts"]["samples"] == 6 and r.manifest["counts"]["skipped"] == 3


def test_a_frame_file_replaced_in_place_is_read_again(tmp_path):
    """A corrupt frame (random bytes inside, its end marker kept) was decoded with its rest grey and written into
    the shards; now its segment is skipped, and once the file is copied over in place (the folder's size and times
    as they were) the next run writes that segment; a run before the fix redoes nothing."""
    root = make_root(tmp_path / "k")
    frame = root / "P01" / "rgb_frames" / "P01_02" / f"frame_{28:010d}.jpg"  # inside P01_02_1
    rng = np.random.default_rng(0)
    textured = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    good = cv2.imencode(".jpg", textured, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    n = len(good)
    folder_times = frame.parent.stat()
    frame.write_bytes(good[: n // 3] + rng.integers(0, 256, n // 3, dtype=np.uint8).tobytes() + good[2 * n // 3:])
    r = build(root, tmp_path / "w")
    skipped = {x["narration_id"]: x for x in r.manifest["skipped"]}
    assert list(skipped) == ["P01_02_1"] and skipped["P01_02_1"]["cause"] == "a frame file is corrupt"
    assert "frame_0000000028.jpg" in skipped["P01_02_1"]["reason"]
    assert build(root, tmp_path / "w").written_now == 0  # the same file: nothing redone
    frame.write_bytes(good)  # copied over in place
    now = frame.parent.stat()
    assert (now.st_size, now.st_mtime_ns, now.st_ctime_ns) == (folder_times.st_size, folder_times.st_mtime_ns,
                                                               folder_times.st_ctime_ns)
    again = build(root, tmp_path / "w")
    assert again.written_now == 1 and not again.manifest["skipped"]
    # a frame of another size: the skip keeps its stat and those of the frames the video's size was read from
    # (any may be the odd one); once it is copied back in place the segment is written
    frame.write_bytes(cv2.imencode(".jpg", np.zeros((H * 2, W * 2, 3), np.uint8))[1].tobytes())
    r = build(root, tmp_path / "w2")
    odd = r.manifest["skipped"]
    assert [x["cause"] for x in odd] == ["a frame file has another size than the video's others"]
    assert f"frame_{28:010d}.jpg" in odd[0]["frame_files"] and len(odd[0]["frame_files"]) > 1
    assert build(root, tmp_path / "w2").written_now == 0
    frame.write_bytes(good)
    again = build(root, tmp_path / "w2")
    assert again.written_now == 1 and not again.manifest["skipped"]


def test_an_earlier_leaps_skip_of_a_frame_file_is_tried_once_more(tmp_path):
    """A skip recorded by a leap that kept no stat of the frame file at fault: the frame restored in place was never
    read again (QA on an upgrade); such a skip is now tried once more, and then kept with its stats."""
    root = make_root(tmp_path / "k")
    frame = root / "P01" / "rgb_frames" / "P01_02" / f"frame_{28:010d}.jpg"  # inside P01_02_1
    good = frame.read_bytes()
    frame.write_bytes(b"")  # (in place: the folder's times stay as they are)
    out = tmp_path / "w" / "shards" / "train"
    r = build(root, tmp_path / "w")
    assert [x["cause"] for x in r.manifest["skipped"]] == ["a frame file is empty"]
    progress = out / ".progress.jsonl"
    lines = [json.loads(x) for x in progress.read_text().splitlines()]
    for line in lines:  # as the earlier leap wrote it
        for skip in line.get("skipped", []):
            skip.pop("frame_files")
            skip["cause"] = "a frame file is missing or unreadable"
    progress.write_text("".join(json.dumps(x) + "\n" for x in lines))
    frame.write_bytes(good)
    assert build(root, tmp_path / "w").written_now == 1


def test_skips_of_one_kind_are_counted_as_one_cause(tmp_path):
    """Segments past the end of a video: each reason names its frames, their cause does not, so the summary counts
    them together (each skip was its own cause: "1 x frame 75 requested ...", "1 x frame 85 requested ...")."""
    from typer.testing import CliRunner

    from leap_cli.cli import app

    extra = [("P01_02", 5.6, 7.5, "take", 0, "cup", 13), ("P01_02", 6.5, 9.0, "put", 1, "cup", 13)]
    root = make_root(tmp_path / "k", train=TRAIN + extra)
    res = CliRunner().invoke(app, ["build-shards", "--data", str(root), "--workdir", str(tmp_path / "w"), "--split",
                                   "train", "--frames", "2", "--short-side", "32"])
    assert res.exit_code == 0, res.output
    skipped = load_manifest(tmp_path / "w" / "shards" / "train")[0]["skipped"]
    assert len({x["reason"] for x in skipped}) == 2 and all("60 frames" in x["reason"] for x in skipped)
    assert [x["cause"] for x in skipped] == ["frames requested past the end of the video"] * 2
    assert "2 x frames requested past the end of the video" in " ".join(res.output.split())


def test_a_video_downloaded_after_a_build_is_written_by_the_next_run(tmp_path):
    """The segments of a missing video are skipped; once it is there, a re-run writes exactly those, into new shards,
    keeping the shards written; the merged manifest of --shard parts lists them."""
    root = make_root(tmp_path / "k")
    frames = root / "P01" / "rgb_frames" / "P01_02"
    frames.rename(tmp_path / "P01_02")
    parts = [build(root, tmp_path / "w", shard=ShardSpec(i, 2)) for i in range(2)]
    part = next(r for r in parts if r.manifest["skipped"])
    skip = part.manifest["skipped"][0]
    assert skip["cause"] == "no video file or rgb_frames folder" and skip["video_stat"] is None
    first = {p.name: p.stat().st_mtime_ns for p in part.out.glob("*.tar")}
    index = part.manifest["part"]["index"]
    again = build(root, tmp_path / "w", shard=ShardSpec(index, 2))
    assert again.written_now == 0 and len(again.manifest["skipped"]) == 3  # nothing changed: nothing redone
    (tmp_path / "P01_02").rename(frames)  # downloaded
    again = build(root, tmp_path / "w", shard=ShardSpec(index, 2))
    assert again.written_now == 3 and not again.manifest["skipped"]
    assert {p.name: p.stat().st_mtime_ns for p in part.out.glob("*.tar") if p.name in first} == first
    m, _ = load_manifest(part.out)
    assert m["counts"]["samples"] == 7 and m["counts"]["skipped"] == 0 and not m["skipped"]
    ds = ShardDataset(part.out, train=False, num_frames=2, img_size=16)
    assert sorted(s["narration_id"] for s in ds) == sorted(f"P01_0{v}_{i}" for v, n in ((1, 4), (2, 3))
                                                          for i in range(n))
    assert build(root, tmp_path / "w", shard=ShardSpec(index, 2)).written_now == 0


def test_segments_of_a_truncated_mp4_are_written_once_it_is_replaced(tmp_path, monkeypatch):
    """A partial download (moov first, data cut): the segments past the cut are skipped with the decoder's reason
    (also the cause counted); a re-run with the same file redoes nothing, one after the file is replaced redoes
    exactly those segments, and a still damaged one stays skipped with its current reason."""
    from leap_cli.media.write import write_mp4

    root = make_root(tmp_path / "k")
    shutil.rmtree(root / "P01" / "rgb_frames" / "P01_02")
    mp4 = root / "P01" / "videos" / "P01_02.MP4"
    mp4.parent.mkdir(parents=True)
    images = []
    for n in range(1, FRAMES_PER_VIDEO + 1):
        img = np.zeros((48, 64, 3), np.uint8)
        img[:] = colour("P01_02", n)
        images.append(img)
    write_mp4(mp4, images, FPS, gop=10, container_options={"movflags": "faststart"})
    good = mp4.read_bytes()
    mp4.write_bytes(good[: int(len(good) * 0.5)])
    r = build(root, tmp_path / "w")
    skipped = {x["narration_id"]: x for x in r.manifest["skipped"]}
    # 19 of its 60 frames decode: even P01_02_0 (0.5-2.0 s), whose sampled frames come before the cut, ends at frame
    # 20, past it (its window's last frame is decoded too, as extract's reads of the whole window find it)
    assert set(skipped) == {"P01_02_0", "P01_02_1", "P01_02_2"}
    assert all(x["cause"] == "the video ends early or is corrupt" for x in skipped.values())
    from leap_cli.shards.writer import LayoutOpener

    opened, real = [], LayoutOpener.__call__
    monkeypatch.setattr(LayoutOpener, "__call__", lambda self, vid: opened.append(vid) or real(self, vid))
    same = build(root, tmp_path / "w")
    assert same.written_now == 0 and not opened  # the last video's skips are not read again
    assert not any("tried again" in n for n in same.notes)
    mp4.write_bytes(good[: int(len(good) * 0.6)])  # another partial copy: tried again, still skipped
    again = build(root, tmp_path / "w")
    assert again.written_now + len(again.manifest["skipped"]) == len(skipped)
    assert f"{len(skipped)} segments skipped before were tried again: their video, or a frame file" in " ".join(
        again.notes)  # (it said "nothing new to write" after opening the video again)
    assert again.manifest["skipped"] and again.manifest["counts"]["samples"] == 7 - len(again.manifest["skipped"])
    still = {x["narration_id"] for x in again.manifest["skipped"]}
    mp4.write_bytes(good)
    again = build(root, tmp_path / "w")
    # the samples written from the cut copy are written again too (the file's size differs: downloaded again)
    assert again.written_now == len(skipped) and again.manifest["shards"][-1]["keys"][-len(skipped):] == sorted(skipped)
    assert any(n.startswith(f"{counted(len(skipped) - len(still), 'sample')} w") and "written from a video that has "
               f"changed since ({mp4}: size " in n for n in again.notes), again.notes
    assert not again.manifest["skipped"] and again.manifest["counts"]["samples"] == 7
    keys = [k for s in again.manifest["shards"] for k in s["keys"]]
    assert len(keys) == 7 and set(keys) == {f"P01_0{v}_{i}" for v, n in ((1, 4), (2, 3)) for i in range(n)}


def test_a_video_the_video_info_does_not_know_is_skipped_and_listed(tmp_path):
    """A typo in a video id (or a row of a video the video info lacks): its segments are skipped and listed, the
    other videos are written (it stopped the whole split)."""
    root = make_root(tmp_path / "k", train=TRAIN + [("P01_07", 1.0, 2.0, "take", 0, "cup", 13)])
    info = root / "annotations" / "EPIC_100_video_info.csv"
    info.write_text("".join(x + "\n" for x in info.read_text().splitlines() if not x.startswith("P01_07")))
    r = build(root, tmp_path / "w")
    skipped = {x["narration_id"]: x["reason"] for x in r.manifest["skipped"]}
    assert list(skipped) == ["P01_07_0"] and "P01_07 is not in EPIC_100_video_info.csv" in skipped["P01_07_0"]
    assert r.manifest["counts"]["samples"] == len(TRAIN)


def test_program_file_of_another_split_is_reported(root, tmp_path, caplog):
    write_programs(tmp_path / "programs" / "train.jsonl",
                   [{"narration_id": "P01_03_0", "status": "valid", "program": PROGRAM, "errors": []}])
    with pytest.raises(LeapError, match="none of the 1 narration ids"):
        build(root, tmp_path, programs=False)
    write_programs(tmp_path / "programs" / "train.jsonl", program_records()
                   + [{"narration_id": "P09_99_1", "status": "valid", "program": PROGRAM, "errors": []}])
    r = build(root, tmp_path, programs=False)
    assert r.manifest["programs"]["unknown_ids"] == 1 and r.manifest["programs"]["unknown_examples"] == ["P09_99_1"]
    assert sum("P09_99_1" in n for n in r.notes) == 1 and "P09_99_1" not in caplog.text  # said once, not twice


def test_missing_program_file_means_no_programs(root, tmp_path):
    r = build(root, tmp_path, programs=False)
    assert r.manifest["counts"]["with_program"] == 0 and r.manifest["targets"]["conditions"] == []
    assert len(r.manifest["targets"]["step_verbs"]) == 97 + 1  # the class files still size the heads (+ END)
    assert any("no program file" in n for n in r.notes)


def test_the_manifest_says_what_made_the_programs_and_an_earlier_manifest_is_not_rebuilt_for_it(root, tmp_path):
    """The manifest counted the program records, not what made them: shards (and the runs trained on them) of
    offline programs and of an LLM's could not be told apart. ``programs.made_by`` counts the file's records, and
    the split's valid ones, per backend and model (summing to ``records`` and ``valid``), and ``prompt_version``
    is the program file's settings'. The manifest of an earlier leap lacks both: a build run again over it
    rebuilds nothing and writes them."""
    records = program_records()  # P01_01_1 and P01_02_2 valid, P01_01_0 invalid, P01_01_2 failed
    made = [("openai", "gpt-4o-mini"), ("offline", "offline-v5"), ("openai", "gpt-4o-mini"), ("openai", "gpt-4o-mini")]
    for r, (backend, model) in zip(records, made):
        r["provenance"] = {"backend": backend, "model": model, "prompt_hash": "0" * 16}
    programs = write_programs(tmp_path / "programs" / "train.jsonl", records)
    programs.with_name("train.jsonl.settings.json").write_text(json.dumps(
        {"backend": "openai", "model": "gpt-4o-mini", "prompt_version": 2}))
    first = build(root, tmp_path, programs=False)
    p = first.manifest["programs"]
    assert p["made_by"] == [{"backend": "openai", "model": "gpt-4o-mini", "records": 3, "valid": 1},
                            {"backend": "offline", "model": "offline-v5", "records": 1, "valid": 1}]
    assert p["prompt_version"] == 2
    assert sum(r["records"] for r in p["made_by"]) == p["records"] == 4
    assert sum(r["valid"] for r in p["made_by"]) == p["valid"] == 2
    from leap_cli.programs.provenance import programs_text
    from leap_cli.shards.format import programs_provenance

    summary = programs_provenance(first.manifest)
    assert summary["made_by"] == p["made_by"] and summary["sha256"] == first.manifest["sources"]["programs"]
    assert summary["with_program"] == first.manifest["counts"]["with_program"] == 2
    assert programs_text(summary) == ("openai gpt-4o-mini: 1 valid of 3; offline offline-v5: 1 valid of 1, "
                                      "prompt v2")
    # an earlier leap's manifest: the run's summary says "unknown", and a build run again rebuilds no shard
    out = first.out
    older = json.loads((out / "manifest.json").read_text())
    del older["programs"]["made_by"], older["programs"]["prompt_version"]
    (out / "manifest.json").write_text(json.dumps(older, indent=2))
    assert programs_provenance(older)["made_by"] is None and "unknown" in programs_text(programs_provenance(older))
    tars = {t.name: t.stat().st_mtime_ns for t in out.glob("*.tar")}
    again = build(root, tmp_path, programs=False)
    assert again.written_now == 0 and again.resumed_shards == len(tars) > 0
    assert {t.name: t.stat().st_mtime_ns for t in out.glob("*.tar")} == tars
    assert json.loads((out / "manifest.json").read_text()) == first.manifest
    # built in --shard parts by an earlier leap: one part's command again writes it into the merged manifest too
    # (the merge took part 0's, and rebuilding part 1 as told changed nothing)
    parts = tmp_path / "parts"
    (parts / "programs").mkdir(parents=True)
    for f in (programs, programs.with_name("train.jsonl.settings.json")):
        shutil.copy(f, parts / "programs" / f.name)
    for i in (0, 1):
        build(root, parts, programs=False, shard=ShardSpec(i, 2))
    out = parts / "shards" / "train"
    for name in ("manifest.shard0of2.json", "manifest.shard1of2.json", "manifest.json"):
        older = json.loads((out / name).read_text())
        del older["programs"]["made_by"]
        (out / name).write_text(json.dumps(older, indent=2))
    again = build(root, parts, programs=False, shard=ShardSpec(1, 2))
    assert again.written_now == 0
    assert load_manifest(out)[0]["programs"]["made_by"] == p["made_by"]
    # no program file: no generator, said as such (not "unknown")
    bare = programs_provenance(build(root, tmp_path / "bare", programs=False).manifest)
    assert bare["made_by"] == [] and bare["records"] == 0 and programs_text(bare).startswith("none")


def test_val_reuses_the_train_vocabulary(built, root):
    _, work = built
    r = build_split(root, "val", workdir=work, settings=settings(split="val"))
    train_m = json.loads((work / "shards" / "train" / "manifest.json").read_text())
    assert r.manifest["targets"] == train_m["targets"]


def test_anticipation_splits_reuse_the_anticipation_train_vocabulary(root, tmp_path):
    """val-anticipation took its vocabulary from the recognition train shards (built with other settings), so
    it disagreed with train-anticipation's: training refused it, and evaluation crashed comparing conditions."""
    write_programs(tmp_path / "programs" / "train.jsonl", program_records())
    build_split(root, "train", workdir=tmp_path, settings=settings(), max_conditions=1)
    ant = dict(task="anticipation", tau_a=0.2, tau_o=0.4)
    train_a = build_split(root, "train", workdir=tmp_path, settings=settings(**ant))
    val_a = build_split(root, "val", workdir=tmp_path, settings=settings(split="val", **ant))
    recognition = json.loads((tmp_path / "shards" / "train" / "manifest.json").read_text())["targets"]
    assert recognition != train_a.manifest["targets"]  # (the case: the two train vocabularies differ)
    assert val_a.manifest["targets"] == train_a.manifest["targets"]
    assert any("train-anticipation" in n for n in val_a.notes)


def test_training_says_how_much_of_the_split_the_shards_hold(built, tmp_path, caplog):
    """A split most of whose videos were not downloaded (20,000 of 20,120 segments skipped) trained without a
    word about it."""
    from leap_cli.train.config import load_config
    from leap_cli.train.data import ShardSource
    from leap_cli.train.distributed import DistInfo

    _, work = built
    folder = tmp_path / "train"
    shutil.copytree(work / "shards" / "train", folder)
    m = json.loads((folder / "manifest.json").read_text())
    m["counts"]["segments"] += 2
    m["counts"]["skipped"] += 2
    m["skipped"] += [{"narration_id": "P09_01_0", "reason": "video not found"},
                     {"narration_id": "P09_01_1", "reason": "video not found"}]
    (folder / "manifest.json").write_text(json.dumps(m))
    cfg = load_config(None, ["model.num_frames=4", "model.img_size=32", "data.batch_size=2"])
    ShardSource(folder, None, cfg, DistInfo())
    assert f"the shards hold 7 of the split's 9 segments (2 skipped by build-shards" in caplog.text


def test_training_says_when_the_validation_shards_hold_training_segments(built, tmp_path, caplog):
    """A train CSV that was a copy of the validation one trained and chose best.pt on its own segments, and
    evaluate reported 90% top-1, without a word (QA)."""
    from leap_cli.train.config import load_config
    from leap_cli.train.data import ShardSource
    from leap_cli.train.distributed import DistInfo

    _, work = built
    cfg = load_config(None, ["model.num_frames=4", "model.img_size=32", "data.batch_size=2"])
    ShardSource(work / "shards" / "train", work / "shards" / "val", cfg, DistInfo())
    assert "also in the training shards" not in caplog.text  # (the built splits are apart)
    ShardSource(work / "shards" / "train", work / "shards" / "train", cfg, DistInfo())  # (data.val: the train shards)
    n = sum(sh["count"] for sh in json.loads((work / "shards" / "train" / "manifest.json").read_text())["shards"])
    assert f"{n} of the validation shards' {n} segments are also in the training shards" in caplog.text


def test_a_vocab_that_is_no_manifest_names_the_option(built, root, tmp_path):
    """--vocab programs/train.jsonl said "manifest is not valid JSON (rerun leap build-shards ...)" and a missing
    file "build them first"; neither named --vocab."""
    _, work = built
    for given in (work / "programs" / "train.jsonl", tmp_path / "nothere.json"):
        with pytest.raises(LeapError) as e:
            build_split(root, "val", workdir=work, settings=settings(split="val"), out=tmp_path / "v",
                        vocab_manifest=given)
        assert e.value.message.startswith("--vocab: ") and "training shards" in e.value.fix, e.value.one_line()


def test_keys_with_dots_are_refused(tmp_path):
    root = make_root(tmp_path / "k", train=TRAIN[:2])
    csv = root / "annotations" / "EPIC_100_train.csv"
    csv.write_text(csv.read_text().replace("P01_01_1,", "P01_01.1,"))
    with pytest.raises(LeapError, match="dot"):
        build(root, tmp_path / "w")


def test_truncated_or_corrupt_shard(built, tmp_path):
    _, work = built
    out = tmp_path / "copy"
    shutil.copytree(work / "shards" / "train", out)
    m = json.loads((out / "manifest.json").read_text())
    last = out / m["shards"][1]["name"]
    last.write_bytes(last.read_bytes()[: m["shards"][1]["offsets"][2] + 700])  # cut inside its third sample
    key = m["shards"][1]["keys"][2]
    with pytest.raises(LeapError, match=f"leap-train-000001.tar.*sample {key}"):
        list(ShardDataset(out, train=False, num_frames=2, img_size=16))
    ds = ShardDataset(out, train=False, num_frames=2, img_size=16, on_error="skip")
    got = [s["narration_id"] for s in ds]
    assert len(got) == 6 and key not in got and ds.stats["errors"] == 1
    # a damaged JPEG inside an intact tar: named too
    first = out / m["shards"][0]["name"]
    data = bytearray(first.read_bytes())
    k0 = m["shards"][0]["keys"][0]
    pos = data.index(f"{k0}.f001.jpg".encode()) + 512
    data[pos:pos + 200] = b"\x00" * 200
    first.write_bytes(bytes(data))
    with pytest.raises(LeapError, match=f"sample {k0}"):
        list(ShardDataset(out, train=False, num_frames=2, img_size=16))


def test_bytes_changed_in_place_are_caught_by_the_samples_crc(built, tmp_path):
    """A few bytes changed inside a JPEG's entropy-coded data: the same size, and a JPEG that still decodes
    (checked below without the CRCs), so only the manifest's CRC-32 of the sample tells."""
    from leap_cli.shards.check import check_shards

    _, work = built
    out = tmp_path / "copy"
    shutil.copytree(work / "shards" / "train", out)
    m = json.loads((out / "manifest.json").read_text())
    assert all(len(info["crc32s"]) == info["count"] and all(type(c) is int for c in info["crc32s"]) for info in m["shards"])
    first = out / m["shards"][0]["name"]
    data = bytearray(first.read_bytes())
    k1 = m["shards"][0]["keys"][1]
    start = data.index(f"{k1}.f001.jpg".encode()) + 512  # the member's data (after its 512-byte header)
    sos = data.index(b"\xff\xda", start)  # start of scan: entropy-coded data follows, up to the end marker
    pos = (sos + data.index(b"\xff\xd9", sos)) // 2
    while data[pos] in (0xFE, 0xFF) or data[pos - 1] == 0xFF:  # keep clear of markers
        pos += 1
    data[pos] ^= 0x01  # one bit: libjpeg decodes other pixels and only warns
    first.write_bytes(bytes(data))
    with pytest.raises(LeapError, match=f"leap-train-000000.tar.*sample {k1}.*CRC-32"):
        list(ShardDataset(out, train=False, num_frames=2, img_size=16))
    ds = ShardDataset(out, train=False, num_frames=2, img_size=16, on_error="skip")
    got = [s["narration_id"] for s in ds]
    assert len(got) == 6 and k1 not in got and ds.stats["errors"] == 1
    r = check_shards(out, on_error="skip", verify_hash=False)
    assert [(p["sample"], "CRC-32" in p["problem"]) for p in r.problems] == [(k1, True)]
    # a manifest written before leap stored CRCs reads as before: the damage then passes unseen
    for info in m["shards"]:
        del info["crc32s"]
    (out / "manifest.json").write_text(json.dumps(m))
    assert len(list(ShardDataset(out, train=False, num_frames=2, img_size=16))) == 7
    m["shards"][0]["crc32s"] = ["x"] * m["shards"][0]["count"]
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(LeapError, match="crc32s is not one integer"):
        ShardDataset(out, train=False, num_frames=2, img_size=16)


def test_evaluation_views_take_chunk_centres_and_centre_or_spread_crops():
    """EPIC evaluation numbers depend on these: one temporal view takes the centre frame of each chunk, one spatial
    view the centre square of the frame; three spatial views its start, centre and end."""
    from leap_cli.shards.transforms import spatial_boxes, temporal_indices

    assert temporal_indices(16, 8, None, 0, 1) == [1, 3, 5, 7, 9, 11, 13, 15]
    assert [temporal_indices(24, 8, None, v, 3)[:3] for v in range(3)] == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]
    assert temporal_indices(16, 8, None, 0, 2)[:2] == [0, 2] and temporal_indices(16, 8, None, 1, 2)[:2] == [1, 3]
    # boxes (top, left, height, width) in the frame's own pixels; the scale brings the short side to size
    assert spatial_boxes(224, 456, 224, 1) == (1.0, [(0, 116, 224, 224)])
    assert spatial_boxes(256, 456, 224, 1) == (224 / 256, [(0, 100, 256, 256)])
    assert spatial_boxes(456, 224, 224, 1) == (1.0, [(116, 0, 224, 224)])  # portrait: centred vertically
    assert spatial_boxes(224, 456, 224, 3)[1] == [(0, 0, 224, 224), (0, 116, 224, 224), (0, 232, 224, 224)]


# ---- reader ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pad", [False, True])
def test_two_ranks_two_workers_see_each_sample_once_per_epoch(built, pad):
    _, work = built
    out = work / "shards" / "train"
    for epoch in (0, 1):
        seen, per_rank, padded = [], [], 0
        for rank in range(2):
            ds = ShardDataset(out, train=True, num_frames=2, img_size=16, shuffle_buffer=3, rank=rank, world_size=2,
                              pad=pad, epoch=epoch, seed=5, block=2)
            ids = []
            for b in DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_clips):
                ids += [k for k, p in zip(b["narration_id"], b["padding"].tolist()) if not p]
                padded += int(b["padding"].sum())
                per_rank.append(len(b["narration_id"]))
            assert len(ds) == (4 if pad else (3, 4)[rank])
            seen += ids
        assert sorted(seen) == sorted(f"P01_01_{i}" for i in range(4)) + [f"P01_02_{i}" for i in range(3)]
        assert padded == (1 if pad else 0)


def test_padding_repeats_samples_from_the_start_of_the_epoch_order(built):
    """DDP ranks padded to equal length repeat the epoch order's first samples (module docstring), the same ones on
    every rank: 7 samples over 3 ranks give ranks 0 and 1 one padding sample each, the order's first."""
    _, work = built
    out = work / "shards" / "train"
    order = [s["narration_id"] for s in ShardDataset(out, train=False, num_frames=2, img_size=16)]
    for rank, own in ((0, order[0:2]), (1, order[2:4])):
        ds = ShardDataset(out, train=False, num_frames=2, img_size=16, rank=rank, world_size=3, pad=True)
        got = [(s["narration_id"], bool(s["padding"])) for s in ds]
        assert got == [(k, False) for k in own] + [(order[0], True)]


def test_training_order_changes_with_epoch_and_eval_views(built):
    _, work = built
    out = work / "shards" / "train"
    orders = []
    for epoch in (0, 1, 2):
        ds = ShardDataset(out, train=True, num_frames=2, img_size=16, shuffle_buffer=4, epoch=epoch, color_jitter=0.4)
        orders.append([s["narration_id"] for s in ds])
    assert all(sorted(o) == sorted(orders[0]) for o in orders) and len({tuple(o) for o in orders}) > 1
    ev = ShardDataset(out, train=False, num_frames=2, img_size=16, temporal_views=2, spatial_views=3)
    b = collate_clips(list(ev)[:2])
    assert b["video"].shape == (2, 6, 3, 2, 16, 16)
    assert torch.equal(b["video"][:, 0], b["video"][:, 2])  # flat frames: left and right crops agree
    assert not torch.equal(b["video"][:, 0], b["video"][:, 3])  # the two temporal views take other frames


def test_epoch_order_is_a_pure_function_of_the_epoch_with_persistent_workers(built):
    """Persistent workers read set_epoch through shared memory; the order of epoch e does not depend on how often
    the dataset was iterated before (a resumed run replays it), with or without workers."""
    _, work = built

    def dataset():
        return ShardDataset(work / "shards" / "train", train=True, num_frames=2, img_size=16, shuffle_buffer=2, seed=5)

    def order(loader, ds, epoch):
        ds.set_epoch(epoch)
        return [k for b in loader for k in b["narration_id"]]

    ds = dataset()
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_clips, persistent_workers=True)
    epochs = [order(loader, ds, e) for e in (0, 1, 2)]
    assert all(sorted(e) == sorted(epochs[0]) and len(e) == 7 for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1
    assert order(loader, ds, 1) == epochs[1]  # the same epoch again: the same order
    fresh = dataset()  # a new process that starts at epoch 2 (as --resume does)
    assert order(DataLoader(fresh, batch_size=2, num_workers=2, collate_fn=collate_clips), fresh, 2) == epochs[2]
    main = dataset()  # num_workers 0: iterating twice in the main process does not shift the epoch
    loader0 = DataLoader(main, batch_size=2, collate_fn=collate_clips)
    first = [order(loader0, main, e) for e in (0, 1)]
    again = dataset()
    assert order(DataLoader(again, batch_size=2, collate_fn=collate_clips), again, 1) == first[1]


def test_cli_build_shards_and_size_rolling(root, tmp_path):
    from typer.testing import CliRunner

    from leap_cli.cli import app
    from leap_cli.commands.shards import parse_size

    assert parse_size("1GB") == 1 << 30 and parse_size("64k") == 65536 and parse_size("500") == 500
    with pytest.raises(LeapError):
        parse_size("lots")
    write_programs(tmp_path / "programs" / "train.jsonl", program_records())
    res = CliRunner().invoke(app, ["build-shards", "--data", str(root), "--split", "train", "--workdir", str(tmp_path),
                                   "--frames", "2", "--short-side", "32", "--max-shard-size", "12k"])
    assert res.exit_code == 0, res.output
    assert "recognition shards of train" in res.output and "6 conditions" in res.output  # program, step and marker conditions of both programs
    m = json.loads((tmp_path / "shards" / "train" / "manifest.json").read_text())
    assert [s["count"] for s in m["shards"]] == [2, 2, 2, 1]  # 4 kB samples, 12 kB shards
    assert all(s["bytes"] <= 12 * 1024 for s in m["shards"])


def test_check_shards_names_damaged_files_and_samples(built, tmp_path):
    from typer.testing import CliRunner

    from leap_cli.cli import app
    from leap_cli.shards.check import check_shards

    _, work = built
    out = tmp_path / "copy"
    shutil.copytree(work / "shards" / "train", out)
    assert check_shards(out).ok == 7
    m = json.loads((out / "manifest.json").read_text())
    first = out / m["shards"][0]["name"]
    data = bytearray(first.read_bytes())
    k1 = m["shards"][0]["keys"][1]
    pos = data.index(f"{k1}.f002.jpg".encode()) + 512
    data[pos:pos + 300] = b"\xff" * 300  # same size, other bytes
    first.write_bytes(bytes(data))
    (out / m["shards"][2]["name"]).unlink()
    with pytest.raises(LeapError, match="leap-train-000000.tar: shard sha256 differs"):
        check_shards(out)
    r = check_shards(out, on_error="skip")
    assert r.ok == 6 - 1 and [(p["shard"][-10:], p["sample"]) for p in r.problems] == [
        ("000000.tar", None), ("000000.tar", k1), ("000002.tar", None)]
    # in two processes (EPIC's train shards: ~25 min on one core): the same report, in the manifest's order
    two = check_shards(out, on_error="skip", workers=2)
    assert (two.ok, two.problems) == (r.ok, r.problems)
    with pytest.raises(LeapError, match="leap-train-000000.tar: shard sha256 differs"):
        check_shards(out, workers=2)
    res = CliRunner().invoke(app, ["check-shards", "--shards", str(out), "--on-error", "skip"])
    assert res.exit_code == 1 and k1 in res.output


def test_what_check_shards_says_to_do_about_a_damaged_shard_repairs_it(root, tmp_path):
    """A shard of the right size with other bytes survives a plain re-run (resume checks sizes only): the error
    says to delete it first, and doing so gives the original bytes back."""
    from leap_cli.shards.check import check_shards

    r = build(root, tmp_path / "w")
    out, good = r.out, tar_digests(r.out)
    first = out / r.manifest["shards"][0]["name"]
    data = bytearray(first.read_bytes())
    data[2000:2100] = b"\xff" * 100
    first.write_bytes(bytes(data))
    build(root, tmp_path / "w")  # a plain re-run keeps it
    with pytest.raises(LeapError, match="sha256 differs") as e:
        check_shards(out)
    assert e.value.fix.startswith("delete that shard file if it is still there and run leap build-shards --workdir ")
    assert f" --split train --frames 4 --short-side 32 --max-count 3 --data {root} again" in e.value.fix  # (the build's
    # own options and inputs: its dataset root is not the work directory's kitchen)
    first.unlink()  # as the error says
    build(root, tmp_path / "w")
    assert tar_digests(out) == good and check_shards(out).ok == r.manifest["counts"]["samples"]


@pytest.mark.parametrize("edit, says", [
    (lambda m: m["shards"][0].pop("keys"), r"\[shards\[0\]\]: shard entry lacks keys"),
    (lambda m: m.pop("shards"), "not a leap shards manifest"),
    (lambda m: m["shards"].append("leap-train-000009.tar"), r"\[shards\[\d\]\]: shard entry lacks all"),
])
def test_a_manifest_of_the_wrong_shape_is_one_line_and_a_rerun_rewrites_it(root, tmp_path, edit, says):
    from leap_cli.shards.check import check_shards

    r = build(root, tmp_path / "w")
    path = r.out / "manifest.json"
    m = json.loads(path.read_text())
    edit(m)
    path.write_text(json.dumps(m))
    for read in (lambda: check_shards(r.out), lambda: ShardDataset(r.out)):  # check-shards; train and evaluate
        with pytest.raises(LeapError, match=says) as e:
            read()
        assert e.value.path == str(path) and "rerun leap build-shards" in e.value.fix
    build(root, tmp_path / "w")  # as the error says
    assert check_shards(r.out).ok == r.manifest["counts"]["samples"]


def test_a_manifest_whose_sample_count_is_not_its_shards_is_a_problem_a_rerun_repairs(root, tmp_path):
    """counts.samples (the build's summary, `leap info`) against the samples the shards list: a hand-merged or
    edited manifest whose count lies passed the check."""
    from typer.testing import CliRunner

    from leap_cli.cli import app
    from leap_cli.shards.check import check_shards

    r = build(root, tmp_path / "w")
    path = r.out / "manifest.json"
    m = json.loads(path.read_text())
    n = m["counts"]["samples"]
    m["counts"]["samples"] = n + 3
    path.write_text(json.dumps(m))
    with pytest.raises(LeapError, match=f"counts.samples says {n + 3} samples, its shards list {n}") as e:
        check_shards(r.out)
    assert e.value.path == str(path) and "rewrites the manifest" in e.value.fix
    skip = check_shards(r.out, on_error="skip")
    assert skip.ok == n and [p["shard"] for p in skip.problems] == ["manifest.json"]
    res = CliRunner().invoke(app, ["check-shards", "--shards", str(r.out), "--on-error", "skip"], terminal_width=400)
    assert res.exit_code == 1 and "rewrites the manifest" in res.output and "delete that shard" not in res.output
    build(root, tmp_path / "w")  # as the fix says
    assert json.loads(path.read_text())["counts"]["samples"] == n and check_shards(r.out).problems == []


def test_check_shards_refuses_an_unknown_task(built):
    """Any --task other than recognition was read as anticipation: 'no shards manifest' in SPLIT-anticipation."""
    from typer.testing import CliRunner

    from leap_cli.cli import app

    _, work = built
    res = CliRunner().invoke(app, ["check-shards", "--workdir", str(work), "--split", "train", "--task", "recogniton"])
    assert isinstance(res.exception, LeapError) and "unknown task 'recogniton'" in str(res.exception)
    # --shards and --split together: the folder must hold that split (a val check of train shards passed)
    res = CliRunner().invoke(app, ["check-shards", "--shards", str(work / "shards" / "train"), "--split", "val"])
    assert isinstance(res.exception, LeapError) and "hold the train split, not val" in str(res.exception)


def test_explicit_missing_program_file_and_rank_from_environment(built, root, tmp_path, monkeypatch):
    with pytest.raises(LeapError, match="program file not found"):
        build_split(root, "train", workdir=tmp_path, settings=settings(), programs_path=tmp_path / "nope.jsonl")
    _, work = built
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    ds = ShardDataset(work / "shards" / "train", train=False, num_frames=2, img_size=16)
    assert (ds.rank, ds.world_size, len(ds)) == (1, 2, 4)
    assert [s["narration_id"] for s in ds] == ["P01_01_3", "P01_02_0", "P01_02_1", "P01_02_2"]  # second half


def test_frames_from_an_mp4(tmp_path):
    """The writer reads MP4s through leap_cli.media (here one video is an MP4, the other an rgb_frames folder)."""
    from leap_cli.media.write import Mp4Writer

    root = make_root(tmp_path / "k")
    shutil.rmtree(root / "P01" / "rgb_frames" / "P01_02")
    (root / "P01" / "videos").mkdir(parents=True)
    w = Mp4Writer(root / "P01" / "videos" / "P01_02.MP4", 64, 48, FPS, bit_rate=2_000_000)
    for n in range(1, FRAMES_PER_VIDEO + 1):
        img = np.zeros((48, 64, 3), np.uint8)
        img[:] = colour("P01_02", n)
        w.write(img)
    w.close()
    r = build(root, tmp_path / "w")
    assert r.manifest["counts"]["samples"] == 7 and not r.manifest["skipped"]
    for shard in r.manifest["shards"]:
        for key, fields in iter_tar_samples(r.out / shard["name"]):
            meta = json.loads(fields["json"])
            if meta["video"] != "P01_02":
                continue
            frames = decode_jpegs([fields[f"f{i:03d}.jpg"] for i in range(4)])
            assert frames.shape == (4, 32, 43, 3)  # 64x48 at short side 32
            for fr, idx in zip(frames, meta["frame_indices"]):
                # neighbouring frames differ by 8 in R and B: an off-by-one frame would fail
                assert np.abs(fr.astype(int).mean((0, 1)) - np.array(colour("P01_02", idx))).max() <= 4


def test_recognition_frames_follow_timestamps_not_epic_frame_columns():
    """EPIC's frame columns of 59.94 fps videos count at 60 fps (P01_01_100: 479.75 s is start_frame 28785);
    the MP4's own frame at that time is 28757, which is what the shards must read."""
    from leap_cli.epic.annotations import Segment
    from leap_cli.shards.writer import ShardSettings, plan_samples

    seg = Segment("P01_01_100", "P01", "P01_01", 479.75, 480.88, 28785, 28853)
    fps = 59.9400599400599
    _, records, skipped = plan_samples([seg], lambda v: fps, ShardSettings(split="train", frames=4))
    idx = records["P01_01_100"]["frame_indices"]
    assert not skipped and idx[0] >= time_to_frame(479.75, fps) == 28757 and idx[-1] <= time_to_frame(480.88, fps)
    from leap_cli.shards.writer import segment_frame_indices

    from_columns = segment_frame_indices(seg.start_frame, seg.stop_frame, 4)
    assert all(c - i >= 20 for c, i in zip(from_columns, idx))  # not the drifted column values


def test_cli_build_shards_exits_3_when_every_segment_is_skipped(root, tmp_path):
    from typer.testing import CliRunner

    from leap_cli.cli import app

    data = tmp_path / "data"
    shutil.copytree(root, data)
    base = ["build-shards", "--data", str(data), "--split", "train", "--frames", "2", "--short-side", "32"]
    shutil.rmtree(data / "P01" / "rgb_frames" / "P01_02")  # one of the videos: a partial failure
    res = CliRunner().invoke(app, base + ["--workdir", str(tmp_path / "w1")])
    assert res.exit_code == 0, res.output
    assert "build-shards:" in res.output and "records failed (by cause)" in res.output
    assert CliRunner().invoke(app, base + ["--workdir", str(tmp_path / "w2"), "--strict"]).exit_code == 3
    for d in (data / "P01" / "rgb_frames").iterdir():  # no video at all: every segment fails
        shutil.rmtree(d)
    res = CliRunner().invoke(app, base + ["--workdir", str(tmp_path / "w3")])
    assert res.exit_code == 3, res.output
    # the cause counted is the one each skip names (it said "video cannot be opened" for every failure to open)
    assert "build-shards: all" in res.output and "7 x no video file or rgb_frames folder" in res.output
    # one line per cause with its segments and videos, and the first whole reason (the reasons name their
    # videos: with one line per reason, 334 missing videos were 3 long reasons and "331 more")
    skipped = " ".join(res.output[res.output.index("segments skipped"):res.output.index("build-shards: all")].split())
    assert skipped.count("cannot be opened") == 1, skipped
    assert "no video file or rgb_frames folder: 7 segments of 2 videos (P01_01, P01_02); the first, P01_01_" in skipped
    # check-shards on them: 0 shards, 0 problems, and it says the split's segments are in no shard
    res = CliRunner().invoke(app, ["check-shards", "--split", "train", "--workdir", str(tmp_path / "w3")])
    assert res.exit_code == 0, res.output
    assert "7 segments of the split were skipped when the shards were built" in " ".join(res.output.split())


# ---- stored frame size: never upscaled ---------------------------------------------------------------------

def _frame_shapes(out: Path, manifest: dict) -> dict[str, set]:
    """{video: {(h, w) of every stored frame, context clips included}}."""
    seen: dict[str, set] = {}
    for shard in manifest["shards"]:
        for _, fields in iter_tar_samples(out / shard["name"]):
            video = json.loads(fields["json"])["video"]
            frames = decode_jpegs([v for k, v in sorted(fields.items()) if k.endswith(".jpg")])
            seen.setdefault(video, set()).add(frames.shape[1:3])
    return seen


def test_a_small_source_is_stored_at_its_own_size_and_a_large_one_at_short_side(root, tmp_path):
    from leap_cli.shards.check import check_shards

    small = build(root, tmp_path / "up", short_side=96)  # the 48x32 source is smaller than --short-side
    assert _frame_shapes(small.out, small.manifest) == {"P01_01": {(32, 48)}, "P01_02": {(32, 48)}}
    assert small.manifest["frame_sizes"] == {"P01_01": [48, 32], "P01_02": [48, 32]}
    assert small.manifest["settings"]["short_side"] == 96 and "never upscaled" in small.manifest["settings"]["jpeg"]
    down = build(root, tmp_path / "down", short_side=16)  # a source above --short-side: shrunk to it
    assert _frame_shapes(down.out, down.manifest) == {"P01_01": {(16, 24)}, "P01_02": {(16, 24)}}
    assert down.manifest["frame_sizes"] == {"P01_01": [24, 16], "P01_02": [24, 16]}
    # downstream: the reader crops/resizes the smaller frames to the model's size, check-shards accepts them
    assert check_shards(small.out).ok == 7
    for train in (True, False):
        ds = ShardDataset(small.out, train=train, num_frames=2, img_size=64, shuffle_buffer=1)
        assert collate_clips(list(ds))["video"].shape == (7, 3, 2, 64, 64)
    # the manifest's size is checked: a manifest that says otherwise is a problem named by check-shards
    m = json.loads((small.out / "manifest.json").read_text())
    m["frame_sizes"]["P01_02"] = [96, 64]
    (small.out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(LeapError, match="frames are 48x32, the manifest's frame_sizes say 96x64 for video P01_02"):
        check_shards(small.out)


def test_anticipation_blank_and_context_frames_keep_the_sources_size(epic_root, tmp_path):
    r = build(epic_root, tmp_path, task="anticipation", tau_a=1.0, tau_o=1.0, context=2, context_mode="segments",
              short_side=96)
    assert _frame_shapes(r.out, r.manifest) == {"P01_01": {(32, 48)}, "P01_02": {(32, 48)}}  # black frames too
    ds = ShardDataset(r.out, train=True, num_frames=2, img_size=16, shuffle_buffer=1)
    assert collate_clips(list(ds))["context_video"].shape == (7, 2, 3, 2, 16, 16)


def test_stored_size_is_what_the_reader_resizes_to():
    from leap_cli.media.video import stored_side, stored_size
    from leap_cli.media.video import resize_short_side
    from leap_cli.media.write import encode_jpeg
    from leap_cli.shards.format import jpeg_size

    for w, h, side in [(1920, 1080, 256), (1080, 1920, 256), (1440, 1080, 256), (256, 144, 256), (192, 144, 256),
                       (455, 256, 256), (144, 256, 256), (641, 479, 240)]:
        img = np.zeros((h, w, 3), np.uint8)
        out = resize_short_side(img, stored_side(w, h, side))
        assert (out.shape[1], out.shape[0]) == stored_size(w, h, side)
        assert min(out.shape[:2]) == min(side, w, h)  # short side --short-side, or the source's: never upscaled
        assert jpeg_size(encode_jpeg(out, 90)) == stored_size(w, h, side)
    assert stored_size(1920, 1080, 256) == (455, 256) and stored_size(256, 144, 256) == (256, 144)
    with pytest.raises(ValueError, match="not a JPEG"):
        jpeg_size(b"\xff\xd8\xff\xe0\x00\x10JFIF")


def test_a_full_disk_names_the_shard_and_leaves_no_partial_file(root, tmp_path, monkeypatch):
    """A full disk while a shard was written printed `error: No space left on device` naming no file (a write
    on an open file carries no name). The error names the shard, and no .partial file stays behind."""
    import builtins
    import errno

    import leap_cli.shards.writer as writer

    def full_disk(path, mode="r", *a, **k):  # the shard's temp file lands on a full file system
        return builtins.open("/dev/full", mode, *a, **k) if str(path).endswith(".partial") else \
            builtins.open(path, mode, *a, **k)

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    monkeypatch.setattr(writer, "open", full_disk, raising=False)
    work = tmp_path / "work"
    with pytest.raises(OSError) as e:
        build(root, work)
    assert e.value.errno == errno.ENOSPC
    out = work / "shards" / "train"
    assert e.value.filename == str(out / "leap-train-000000.tar")
    assert not list(out.glob(".*.partial"))


def test_overwrite_never_deletes_the_shards_of_a_running_build(root, tmp_path):
    """`build-shards --overwrite` while another build of the folder was running deleted its shards, progress
    file and manifest, and was refused by the lock only after. It is refused before it deletes anything."""
    from leap_cli.io import JsonlAppender

    build(root, tmp_path)
    out = tmp_path / "shards" / "train"
    before = sorted(p.name for p in out.iterdir())
    with JsonlAppender(out / ".progress.jsonl", key="name"):  # as the running build holds it
        with pytest.raises(LeapError, match="another leap process is writing this file"):
            build(root, tmp_path, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == before


def test_build_shards_workers_stop_on_sigterm_and_die_with_their_parent(tmp_path):
    """A build-shards worker kept the stage's SIGTERM handler (which only sets a flag): one blocked on the pool's
    queue when the pool terminated it never stopped, the stage hung, and after a SIGKILL of the parent the
    orphan kept the output's lock. Now a worker dies on SIGTERM and with its parent."""
    import os
    import signal
    import subprocess
    import sys

    code = ("import os, signal, time, multiprocessing as mp\n"
            "from leap_cli.shards.writer import _init_worker\n"
            "signal.signal(signal.SIGTERM, lambda *a: None)  # as cli._on_sigterm: a flag, no exit\n"
            "def probe(_):\n"
            "    time.sleep(0.3)\n"
            "    return signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, os.getpid()\n"
            "pool = mp.get_context('fork').Pool(2, initializer=_init_worker, initargs=(None, None, None, os.getpid()))\n"
            "print(sorted(set(pool.map(probe, range(4), chunksize=1))), flush=True)\n"
            "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        line = parent.stdout.readline()
        assert line.startswith("[(True, ") and "False" not in line, line
        workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(parent.pid)], capture_output=True,
                                                  text=True).stdout.split()]
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGTERM)  # the default action: it dies (the pool starts another)
        assert alive_after(workers[:1]) == [], "a worker outlived SIGTERM"
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        alive = alive_after(workers[1:])
        assert not alive, f"workers {alive} outlived their parent"
    finally:
        if parent.poll() is None:
            parent.kill()


def test_parts_packed_into_tars_otherwise_still_merge(root, tmp_path):
    """A part run with another --max-count (samples per tar: packing, not content) blocked the merge."""
    build(root, tmp_path, shard=ShardSpec(0, 2), max_count=2)
    r = build(root, tmp_path, shard=ShardSpec(1, 2), max_count=3)
    assert any("merged manifest.json written" in n for n in r.notes)
    merged = tmp_path / "shards" / "train" / "manifest.json"
    at = merged.stat().st_mtime_ns
    r = build(root, tmp_path, shard=ShardSpec(1, 2), max_count=3)  # again: nothing changed, nor the merge
    assert any("merged manifest.json as it was (nothing changed)" in n for n in r.notes)
    assert merged.stat().st_mtime_ns == at
    assert load_manifest(tmp_path / "shards" / "train")[0]["counts"]["samples"] == 7


def test_a_missing_part_tar_names_the_part_to_build_again(root, tmp_path):
    """check-shards on a part's deleted tar said "delete that shard file and run the same leap build-shards again":
    the file was gone, and that command needs the part's --shard i/n."""
    from leap_cli.shards.check import check_shards

    build(root, tmp_path, shard=ShardSpec(0, 2))
    build(root, tmp_path, shard=ShardSpec(1, 2))
    out = tmp_path / "shards" / "train"
    tar = sorted(out.glob("leap-train.shard1of2-*.tar"))[0]
    tar.unlink()
    with pytest.raises(LeapError, match=r"shard file is missing \(delete that shard file if it is still there and "
                                        r"run leap build-shards --workdir .* --shard 1/2 again .* rebuild that part"):
        check_shards(out)
    report = check_shards(out, on_error="skip")
    assert [p["problem"] for p in report.problems] == ["shard file is missing"]


def test_val_takes_the_vocabulary_of_training_parts_all_done_before_their_merge(root, tmp_path):
    """Val shards wait for the training shards' parts; once every part is done, their vocabulary is the one taken,
    whether or not manifest.json was written yet (a part begun but unfinished: refused)."""
    build(root, tmp_path, shard=ShardSpec(0, 2))
    with pytest.raises(LeapError, match=r"the training shards are still in --shard parts \(1 of 2 done"):
        build_split(root, "val", workdir=tmp_path, settings=settings(split="val"))
    build(root, tmp_path, shard=ShardSpec(1, 2))
    train = tmp_path / "shards" / "train"
    targets = json.loads((train / "manifest.json").read_text())["targets"]
    (train / "manifest.json").unlink()
    r = build_split(root, "val", workdir=tmp_path, settings=settings(split="val"))
    assert r.manifest["targets"] == targets


@pytest.mark.parametrize("kw", [{"tau_a": float("inf")}, {"tau_a": float("nan")}, {"tau_o": float("inf")},
                                {"tau_a": -1.0}])
def test_anticipation_times_that_are_not_finite_seconds_are_refused(kw):
    """--tau-a inf ended in an OverflowError traceback (exit 1)."""
    with pytest.raises(LeapError, match="both finite seconds"):
        settings(task="anticipation", **kw)


def test_a_model_of_more_frames_than_the_shards_hold_is_warned_of(built, caplog):
    """A model of 8 frames on shards of 4 repeated each frame, without a word."""
    r, _ = built
    with caplog.at_level("WARNING"):
        ShardDataset(r.out, train=False, num_frames=4, img_size=16)
        assert "frames are repeated" not in caplog.text
        ShardDataset(r.out, train=False, num_frames=8, img_size=16)
    assert "the shards hold 4 frames per clip, the model takes 8: frames are repeated" in caplog.text


@pytest.mark.parametrize("args,message", [
    (["--tau-a", "2"], "--tau-a sets how anticipation shards are built; these are recognition shards"),
    (["--context", "3", "--span-frames", "128"], "--context, --span-frames set how anticipation shards"),
    (["--task", "anticipation", "--tau-o", "3"], "--tau-o applies to --anticipation-context segments only"),
    (["--task", "anticipation", "--anticipation-context", "segments", "--span-frames", "64"],
     "--span-frames applies to --anticipation-context clips only"),
])
def test_options_for_what_the_build_does_not_do_are_refused(tmp_path, args, message):
    """`build-shards --split val --tau-a 2` (no --task anticipation) built recognition shards without a word, and
    --tau-o did nothing in the default clips mode. Refused before any work."""
    from typer.testing import CliRunner

    from leap_cli.cli import app

    res = CliRunner().invoke(app, ["build-shards", "--split", "val", "--workdir", str(tmp_path), *args])
    assert isinstance(res.exception, LeapError), res.output
    assert message in str(res.exception)
    assert list(tmp_path.iterdir()) == []
    ok = CliRunner().invoke(app, ["build-shards", "--split", "val", "--workdir", str(tmp_path), "--task",
                                  "anticipation", "--tau-a", "2", "--context", "1"])
    assert "applies to" not in str(ok.exception) and "sets how" not in str(ok.exception)


def test_segments_without_a_program_record_are_counted_in_a_note(root, tmp_path):
    """A program file merged from some of its parts (or a generation stopped early) built samples without program
    targets, said only in the summary's count of programs."""
    r = build(root, tmp_path)  # program_records() holds 4 of the 7 segments
    (note,) = [n for n in r.notes if "have no record in" in n]
    assert note.startswith("3 of the 7 segments have no record in ") and "(e.g. P01_01_3)" in note, note
    write_programs(tmp_path / "all" / "programs" / "train.jsonl",
                   program_records() + [{"narration_id": k, "status": "failed", "program": None, "errors": []}
                                        for k in ("P01_01_3", "P01_02_0", "P01_02_1")])
    r = build_split(root, "train", workdir=tmp_path / "all", settings=settings())
    assert not [n for n in r.notes if "have no record in" in n]
    # a part of generate-programs' given without --shard: said as such (QA: "generate-programs makes them")
    part = write_programs(tmp_path / "part" / "programs" / "train.shard0of2.jsonl", program_records())
    r = build_split(root, "train", workdir=tmp_path / "part", settings=settings(), programs_path=part)
    (note,) = [n for n in r.notes if "have no record in" in n]
    assert note.endswith("it is generate-programs' part 0/2: give the merged file (or build-shards --shard i/2 with "
                         "each part's), then build-shards again (it rewrites the shards of the samples whose "
                         "programs changed; where the new records change the training split's target vocabulary it "
                         "refuses, and --force rebuilds)"), note
    r = build_split(root, "train", workdir=tmp_path / "part", settings=settings(), programs_path=part,
                    shard=ShardSpec(0, 2), out=tmp_path / "part" / "p")  # its own part, stopped early: not said (review)
    (note,) = [n for n in r.notes if "have no record in" in n] or [""]
    assert "generate-programs' part" not in note, note


def test_the_split_csv_is_known_by_its_values_and_folders_of_earlier_leaps_resume(root, tmp_path, monkeypatch):
    """The split CSV saved again with the same values (quoted, CRLF: pandas or a spreadsheet) refused the shards,
    whose sources hashed its bytes; folders built by the leaps that hashed the files resume as they are."""
    import csv
    import shutil

    import leap_cli.shards.writer as writer

    data = tmp_path / "root"
    shutil.copytree(root, data)
    split_csv = data / "annotations" / "EPIC_100_train.csv"
    build(data, tmp_path / "a")
    rows = list(csv.reader(split_csv.open(newline="")))
    with split_csv.open("w", newline="") as f:
        csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\r\n").writerows(rows)
    again = build(data, tmp_path / "a")
    assert again.written_now == 0 and again.resumed_shards, again.notes
    rows[1][8] = rows[1][8] + " again"  # a narration changed: the shards hold it
    with split_csv.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    with pytest.raises(LeapError, match="the split.s annotation rows differ"):
        build(data, tmp_path / "a")
    # built by the leaps that hashed the files' bytes (both, or only the CSV's): resumed, nothing rebuilt
    real_annotations, real_programs = writer.annotations_digest, writer.programs_digest
    for earlier_programs in (True, False):
        work = tmp_path / f"old{earlier_programs}"
        monkeypatch.setattr(writer, "annotations_digest", lambda segs: writer.sha256_file(split_csv))
        if earlier_programs:
            monkeypatch.setattr(writer, "programs_digest",
                                lambda recs: writer.sha256_file(work / "programs" / "train.jsonl"))
        first = build(data, work)
        monkeypatch.setattr(writer, "annotations_digest", real_annotations)
        monkeypatch.setattr(writer, "programs_digest", real_programs)
        r = build(data, work)
        assert first.written_now and r.written_now == 0 and r.resumed_shards, (earlier_programs, r.notes)
    # the programs changed since, the CSV not: the shard of the sample whose program changed is rewritten (it was
    # refused as "the programs differ"; before, the refusal named the CSV too, whose earlier hash no candidate held
    # with the new programs')
    write_programs(work / "programs" / "train.jsonl", program_records()[:3])
    r = build_split(data, "train", workdir=work, settings=settings())
    assert any(n.startswith("the programs of 1 sample already written changed") for n in r.notes), r.notes
    assert r.manifest["sources"]["annotations"] == writer.sha256_file(split_csv)


def test_a_video_fixed_after_a_sharded_build_is_tried_again_by_its_part(tmp_path):
    """After a build in parts, the build without --shard said "nothing new to write" over skips whose video had
    been downloaded again since (the parts, or an unsharded build, try them again)."""
    import re

    from leap_cli.media.write import write_mp4

    root = make_root(tmp_path / "k")
    shutil.rmtree(root / "P01" / "rgb_frames" / "P01_02")
    mp4 = root / "P01" / "videos" / "P01_02.MP4"
    mp4.parent.mkdir(parents=True)
    images = [np.full((48, 64, 3), colour("P01_02", n), np.uint8) for n in range(1, FRAMES_PER_VIDEO + 1)]
    write_mp4(mp4, images, FPS, gop=10, container_options={"movflags": "faststart"})
    good = mp4.read_bytes()
    mp4.write_bytes(good[: int(len(good) * 0.6)])  # (27 frames decode: P01_02_0 is stored, its skips go with it)
    for i in range(2):
        build(root, tmp_path / "w", shard=ShardSpec(i, 2))
    assert build(root, tmp_path / "w").written_now == 0  # nothing changed: nothing to do
    mp4.write_bytes(good)
    with pytest.raises(LeapError, match=r"part\(s\) \d skipped segments whose video has changed since") as e:
        build(root, tmp_path / "w")
    (part,) = re.findall(r"--shard (\d)/2", e.value.fix)
    r = build(root, tmp_path / "w", shard=ShardSpec(int(part), 2))
    assert r.written_now and any("tried again" in n for n in r.notes)
    again = build(root, tmp_path / "w")
    assert again.written_now == 0 and again.manifest["counts"]["samples"] == 7 and not again.manifest["skipped"]


def test_shards_a_command_reads_are_not_rewritten_under_it(root, tmp_path, caplog):
    """build-shards --force deleted the shards a running `leap train` read: the training stopped on a "corrupt
    shard" (delete that file...) that check-shards found whole. A reader holds a shared lock on the folder;
    build-shards writes or deletes shards only under the exclusive one, and a reader waits for no build."""
    from leap_cli.io import ShardReaders

    out = build(root, tmp_path / "run").out
    before = tar_digests(out)
    for name in (".readers.lock", ".writers.lock"):  # made by every build, even one with nothing to write, for
        (out / name).unlink()  # anyone (a reader who may not write in the folder takes them as they are)
    assert build(root, tmp_path / "run").written_now == 0
    assert [(out / n).stat().st_mode & 0o777 for n in (".readers.lock", ".writers.lock")] == [0o666, 0o666]
    with ShardReaders(out):  # (as train and evaluate hold it)
        with pytest.raises(LeapError, match="a leap train or evaluate is reading these shards") as e:
            build(root, tmp_path / "run", frames=2, overwrite=True)
        assert "wait for it to finish" in e.value.fix and tar_digests(out) == before
        assert build(root, tmp_path / "run").written_now == 0  # nothing to write: not refused
        with ShardReaders(out):  # two readers at once (torchrun's ranks, an evaluation beside a training)
            pass
    writer = ShardReaders(out).write()
    try:
        with pytest.raises(LeapError, match="leap build-shards is writing these shards"):
            ShardReaders(out).read()
        # --shard parts of one folder build side by side (an 8-task array into one --out)
        part = build(root, tmp_path / "parts", shard=ShardSpec(0, 2))
        with ShardReaders(part.out).write():  # (part 0's job still writing)
            assert build(root, tmp_path / "parts", shard=ShardSpec(1, 2)).written_now > 0
    finally:
        writer.release()
    assert build(root, tmp_path / "run", frames=2, overwrite=True).manifest["settings"]["frames"] == 2
    # a folder of an earlier leap (no lock files) that this user may not write in: the reader says it holds nothing
    with pytest.MonkeyPatch.context() as mp, caplog.at_level("WARNING"):
        mp.setattr(ShardReaders, "_open", lambda self, name: None)
        ShardReaders(out).read().release()
    assert "has no .readers.lock and this user cannot make it" in caplog.text
    # another user's lock file on NFS (no exclusive lock on a file opened for reading): said, not taken as free
    real_open, real_flock = ShardReaders._open, ShardReaders._flock
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ShardReaders, "_open", lambda self, name: (real_open(self, name)[0], False))
        mp.setattr(ShardReaders, "_flock", staticmethod(lambda fd, mode: None if mode & 2 else real_flock(fd, mode)))
        with pytest.raises(LeapError, match="cannot tell whether another leap process uses these shards") as e:
            ShardReaders(out).read()
        assert "delete that file (it holds no data)" in e.value.fix


def test_each_shard_setting_is_said_as_a_build_shards_option():
    """A refusal says a shard setting as the build-shards option that sets it, whichever command reads the
    manifest (settings.frames as --frames; evaluate's own --task is another thing)."""
    import dataclasses

    import typer

    from leap_cli.cli import app
    from leap_cli.shards.format import SETTINGS_OPTIONS, said
    from leap_cli.shards.writer import ShardSettings

    command = typer.main.get_command(app).commands["build-shards"]
    options = {o for p in command.params for o in getattr(p, "opts", ())}
    assert set(SETTINGS_OPTIONS) == {f.name for f in dataclasses.fields(ShardSettings)}
    assert set(SETTINGS_OPTIONS.values()) <= options
    assert said("settings.context_mode") == "--anticipation-context" and said("targets") == "the target vocabulary"


SLOW_CHECK = '''
import os
if os.environ.get("LEAP_TEST_SLOW_CHECK"):  # each shard's check takes this long, in the pool's workers too
    import time
    import leap_cli.shards.check as check
    real = check._check_shard
    def _check_shard(*args, **kwargs):
        time.sleep(float(os.environ["LEAP_TEST_SLOW_CHECK"]))
        return real(*args, **kwargs)
    _check_shard.__module__, _check_shard.__qualname__ = real.__module__, real.__qualname__
    check._check_shard = _check_shard
'''


def test_check_shards_with_a_worker_killed_stops_in_one_line(built, tmp_path):
    """Was wrong: check-shards' pool waited for ever for the shard of a worker killed mid-check (the kernel's
    out-of-memory killer), as extract's and build-shards' had until session 54."""
    import os
    import signal
    import subprocess
    import sys
    import time

    _, work = built
    (tmp_path / "sitecustomize.py").write_text(SLOW_CHECK)
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{repo}", "LEAP_TEST_SLOW_CHECK": "30"}
    proc = subprocess.Popen([sys.executable, "-m", "leap_cli", "check-shards", "--shards", str(work / "shards" / "train"),
                             "--workers", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, workers = time.monotonic() + 30, []
        while len(workers) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            kids = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "spawn_main"], capture_output=True, text=True)
            workers = kids.stdout.split()
        assert len(workers) == 2, "the pool's workers did not start"
        time.sleep(1)  # (both in a shard's check)
        os.kill(int(workers[0]), signal.SIGKILL)
        out, _ = proc.communicate(timeout=25)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode not in (0, None) and "a worker process died (killed by SIGKILL)" in out, out
    assert "Traceback" not in out, out


def test_check_shards_and_its_workers_never_import_torch(built, tmp_path):
    """check-shards reads tars and JSON and decodes JPEGs: torch's import (1.5 s of CPU) in its process and in each
    spawned worker made `--workers 2` 5.6 s where 1 took 2.9 on seven small shards (now about 1 s each)."""
    _, work = built
    code = ("import sys\nfrom leap_cli.shards.check import check_shards\n"
            "r = check_shards(sys.argv[1], decode=True, workers=2)\nassert r.ok == 7, r\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    hook = tmp_path / "hook"
    hook.mkdir()  # (any process of the run, spawned workers too, notes an import of torch)
    (hook / "sitecustomize.py").write_text(
        "import os, sys\n"
        "class Seen:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch':\n"
        "            open(os.environ['TORCH_SEEN'], 'a').write(str(os.getpid()) + '\\n')\n"
        "sys.meta_path.insert(0, Seen())\n")
    seen = tmp_path / "seen"
    env = {**os.environ, "PYTHONPATH": f"{hook}{os.pathsep}{Path(__file__).resolve().parents[1]}",
           "TORCH_SEEN": str(seen)}
    r = subprocess.run([sys.executable, "-c", code, str(work / "shards" / "train")], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not seen.exists(), "a check-shards process imported torch"


def test_the_build_command_carries_the_options_of_a_build_begun_in_the_folder(tmp_path):
    """After a build was begun (a progress record, no manifest), the command leap names to build the folder is that
    build's: its options not at their default, and only those its task reads (a recognition build's context is 0,
    which --context would be refused for); a record of a leap that kept no settings says so in words."""
    from dataclasses import asdict

    from leap_cli.shards.format import build_command
    from leap_cli.shards.writer import ShardSettings, made_settings

    folder = tmp_path / "w" / "shards" / "train"
    folder.mkdir(parents=True)
    assert build_command(folder) == f"leap build-shards --workdir {tmp_path / 'w'} --split train"
    progress = folder / ".progress.jsonl"
    rec = ShardSettings(split="train", max_count=2, short_side=128, context=0)
    progress.write_text(json.dumps({"name": "leap-train-000000.tar", "settings": made_settings(rec)}) + "\n")
    assert build_command(folder, "--shard", "i/2") == (f"leap build-shards --workdir {tmp_path / 'w'} --split train "
                                                      "--short-side 128 --max-count 2 --shard i/2")
    antic = folder.parent / "train-anticipation"
    antic.mkdir()
    rec = ShardSettings(split="train", task="anticipation", context_mode="segments", tau_o=1.5, span_frames=64)
    (antic / ".progress.jsonl").write_text(json.dumps({"settings": made_settings(rec)}) + "\n")
    assert build_command(antic).endswith("--split train --task anticipation --tau-o 1.5 --anticipation-context "
                                         "segments")
    progress.write_text(json.dumps({"name": "leap-train-000000.tar", "made_with": asdict(rec)}) + "\n")
    assert build_command(folder).endswith("--split train (with the options of the build begun there)")


def test_the_build_command_of_a_split_not_begun_takes_the_shared_options_of_another_splits_build(tmp_path):
    """Was wrong: where no build began in a split's default folder (train's and evaluate's advice for val shards),
    the command named no option, though the training build was given --data and --frames 8: pasted, it read the
    work directory's dataset, or none ("dataset root not found"), and made 16-frame samples. It now takes the
    dataset, annotations and sample settings of the same task's build in that work directory (not its packing,
    programs or vocabulary); another task's build lends nothing, and a split's own begun build wins."""
    from leap_cli.shards.format import build_command
    from leap_cli.shards.writer import ShardSettings, made_settings

    work = tmp_path / "w"
    train, val = work / "shards" / "train", work / "shards" / "val"
    train.mkdir(parents=True)
    rec = ShardSettings(split="train", frames=8, max_count=2, jpeg_quality=80)
    train.joinpath(".progress.jsonl").write_text(json.dumps({
        "settings": made_settings(rec), "inputs": {"--data": "/data/epic", "--programs": "/p/train.jsonl",
                                                   "--annotations": "/a", "--max-steps": 12}}) + "\n")
    assert build_command(val) == (f"leap build-shards --workdir {work} --split val --frames 8 --jpeg-quality 80 "
                                  "--data /data/epic --annotations /a")
    antic = work / "shards" / "val-anticipation"
    assert build_command(antic) == f"leap build-shards --workdir {work} --split val --task anticipation"
    train_a = work / "shards" / "train-anticipation"
    train_a.mkdir()
    rec = ShardSettings(split="train", task="anticipation", context_mode="segments", tau_o=1.5, span_frames=64)
    train_a.joinpath(".progress.jsonl").write_text(json.dumps({"settings": made_settings(rec),
                                                               "inputs": {"--data": "/d"}}) + "\n")
    assert build_command(antic) == (f"leap build-shards --workdir {work} --split val --task anticipation --tau-o 1.5 "
                                    "--anticipation-context segments --data /d")
    val.mkdir()
    val.joinpath(".progress.jsonl").write_text(json.dumps({"settings": made_settings(ShardSettings(split="val"))})
                                               + "\n")
    assert build_command(val) == f"leap build-shards --workdir {work} --split val"
