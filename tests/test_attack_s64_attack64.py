"""Attacks on session 64's changes (helper attack64): build-shards' note on programs of a remade clip
(``writer.programs_behind_clips``), extract's detail of segments past a cut file's end, a resume's provenance of a
checkpoint of a leap before runs kept it, demo-data's and leap demo's words on an older kitchen, the frame cache
named twice, and the local relation's expand-bias gradient; plus the tests that killed hand-made mutants of them.

Found and fixed:
- build-shards' note on programs of a remade clip read only ``descriptors/SPLIT.jsonl``: extract's ``--shard``
  parts left unmerged (a job array: build-shards needs only the programs merged) gave no note, and the samples
  skipped before were written with the cut video's programs without a word. The parts are read where the file is
  not there.
- the note's command was ``leap generate-programs --split SPLIT`` whatever the build was given: with ``--workdir``
  (or ``--data``/``--annotations``, or ``--programs`` of another file), following it literally made or refused
  another work directory's programs, and the note stayed. It now names those options.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import time
from pathlib import Path

import pytest

from leap_cli.epic.annotations import Segment
from leap_cli.programs.generate import clip_hash_of
from leap_cli.shards.writer import programs_behind_clips
from tests.procs import leap_here

CUT = "P01_02"


# ---------------------------------------------------------------- programs_behind_clips, on files made here


def _seg(n: int, video: str = "P01_01") -> Segment:
    return Segment(f"{video}_{n}", "P01", video, n, n + 1, 1, 30, narration=f"take cup {n}", verb="take",
                   verb_class=0, noun="cup", noun_class=1)


EXTRACTED = {"components": ["camera", "narration"], "fps": 2}


def _files(tmp: Path, records: list[dict], *, programs: list[dict] | None = None, parts: int = 0,
           made_from: object = EXTRACTED, segs: dict | None = None):
    """(programs, program file, descriptor file, segments): programs made from 'old' clip texts, descriptor
    records as given."""
    segs = segs if segs is not None else {s.narration_id: s for s in map(_seg, range(4))}
    d, p = tmp / "descriptors", tmp / "programs"
    d.mkdir(parents=True, exist_ok=True)
    p.mkdir(parents=True, exist_ok=True)
    (p / "val.jsonl.settings.json").write_text(json.dumps({"descriptors": made_from, "backend": "offline"}))
    if programs is None:
        programs = [{"narration_id": k, "provenance": {"clip_hash": clip_hash_of(f"old {k}", s)}}
                    for k, s in segs.items()]
    lines = lambda rs: "".join(json.dumps(r) + "\n" for r in rs)  # noqa: E731
    if parts:
        size = -(-len(records) // parts)
        for i in range(parts):
            (d / f"val.shard{i}of{parts}.jsonl").write_text(lines(records[i * size:(i + 1) * size]))
            (d / f"val.shard{i}of{parts}.jsonl.settings.json").write_text(json.dumps({**EXTRACTED, "split": "val"}))
    else:
        (d / "val.jsonl").write_text(lines(records))
        (d / "val.jsonl.settings.json").write_text(json.dumps({**EXTRACTED, "split": "val", "files": {"x": 1}}))
    return programs, p / "val.jsonl", d / "val.jsonl", segs


def _recs(new: tuple[int, ...] = (1,)) -> list[dict]:
    return [{"narration_id": f"P01_01_{n}", "text": f"new P01_01_{n}" if n in new else f"old P01_01_{n}"}
            for n in range(4)]


def test_behind_clips_names_the_remade_clip_and_only_it(tmp_path):
    assert programs_behind_clips(*_files(tmp_path, _recs((1, 3)))) == ["P01_01_1", "P01_01_3"]
    assert programs_behind_clips(*_files(tmp_path / "same", _recs(()))) == []


@pytest.mark.parametrize("parts", [2, 3])
def test_behind_clips_reads_extracts_shard_parts_left_unmerged(tmp_path, parts):
    """A job array: extract and generate-programs by --shard i/n, the programs merged for build-shards, the
    descriptors not (nothing after generate-programs reads them). The note said nothing (fixed)."""
    assert programs_behind_clips(*_files(tmp_path, _recs((3,)), parts=parts)) == ["P01_01_3"]


def test_behind_clips_the_last_record_of_an_id_and_a_crash_cut_line(tmp_path):
    recs = _recs(()) + [{"narration_id": "P01_01_2", "text": "new"}, {"narration_id": "P01_01_2", "text": "old P01_01_2"},
                        {"narration_id": "P01_01_0", "text": "new"}]
    progs, prog, desc, segs = _files(tmp_path, recs)
    assert programs_behind_clips(progs, prog, desc, segs) == ["P01_01_0"]  # (P01_01_2's last record is the old text)
    with open(desc, "a") as f:
        f.write('{"narration_id": "P01_01_0", "text": "old P01_01_0"')  # a crash cut the last line: not a record
    assert programs_behind_clips(progs, prog, desc, segs) == ["P01_01_0"]
    # the program file's duplicates: the last record of an id is the one build-shards takes (read_programs)
    dup = progs + [{"narration_id": "P01_01_0", "provenance": {"clip_hash": clip_hash_of("new", segs["P01_01_0"])}}]
    assert programs_behind_clips(dup, prog, desc, segs) == []


def test_behind_clips_compares_nothing_it_cannot_match(tmp_path):
    recs = _recs((0, 1, 2, 3))
    # narration-only programs, programs of other extract settings, a program file without settings
    for made_from in ("narration-only", {**EXTRACTED, "fps": 4}, None):
        assert programs_behind_clips(*_files(tmp_path / str(made_from)[:9], recs, made_from=made_from)) == []
    # records of a leap that kept no clip hash; programs of segments not in the split; descriptors not there
    progs, prog, desc, segs = _files(tmp_path / "x", recs)
    assert programs_behind_clips([{**r, "provenance": {"prompt_hash": "ab"}} for r in progs], prog, desc, segs) == []
    assert programs_behind_clips(progs, prog, desc, {k: v for k, v in segs.items() if k != "P01_01_2"}) == \
        ["P01_01_0", "P01_01_1", "P01_01_3"]
    assert programs_behind_clips(progs, prog, desc.with_name("test.jsonl"), segs) == []
    # a program of a segment no descriptor record holds is not behind (nothing made again)
    desc.write_text("".join(json.dumps(r) + "\n" for r in recs[:2]))
    assert programs_behind_clips(progs, prog, desc, segs) == ["P01_01_0", "P01_01_1"]


def test_behind_clips_test_split_segments_without_labels(tmp_path):
    segs = {f"P01_01_{n}": Segment(f"P01_01_{n}", "P01", "P01_01", n, n + 1, 1, 30) for n in range(4)}
    assert programs_behind_clips(*_files(tmp_path, _recs((2,)), segs=segs)) == ["P01_01_2"]


def test_behind_clips_of_a_changed_annotation(tmp_path):
    """The same text, another label: generate-programs makes it again (clip_hash holds the annotation)."""
    progs, prog, desc, segs = _files(tmp_path, _recs(()))
    segs = dict(segs, P01_01_2=Segment("P01_01_2", "P01", "P01_01", 2, 3, 1, 30, narration="put cup", verb="put",
                                      verb_class=1, noun="cup", noun_class=1))
    assert programs_behind_clips(progs, prog, desc, segs) == ["P01_01_2"]


def test_behind_clips_of_a_large_descriptor_file_is_quick(tmp_path):
    """67k records of 2 kB of text each (EPIC's train split): the note reads the file once."""
    n = 67_000
    segs = {f"P01_01_{i}": _seg(i) for i in range(n)}
    text = "x" * 2000
    d = tmp_path / "descriptors"
    d.mkdir()
    with open(d / "val.jsonl", "w") as f:
        for k in segs:
            f.write(json.dumps({"narration_id": k, "text": text, "components": {"camera": {"status": "ok"}}}) + "\n")
    (d / "val.jsonl.settings.json").write_text(json.dumps(EXTRACTED))
    (tmp_path / "p.jsonl.settings.json").write_text(json.dumps({"descriptors": EXTRACTED}))
    progs = [{"narration_id": k, "provenance": {"clip_hash": clip_hash_of(text, s)}} for k, s in segs.items()]
    progs[-1]["provenance"]["clip_hash"] = "0"
    start = time.perf_counter()
    assert programs_behind_clips(progs, tmp_path / "p.jsonl", d / "val.jsonl", segs) == [f"P01_01_{n - 1}"]
    assert time.perf_counter() - start < 8


# ---------------------------------------------------------------- the note, by the commands (redownload64's kitchens)

from tests.test_attack_s64_redownload64 import kitchens  # noqa: E402,F401  (a module fixture: built once here)


def _ok(r):
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout + r.stderr


def _note_command(said: str) -> list[str]:
    flat = " ".join(said.split())  # (the console wraps long lines)
    assert flat.count("program record(s) of") == 1, said
    command = flat.split("; run leap ", 1)[1].split(" (it asks again", 1)[0]
    return shlex.split(command)


def test_following_the_notes_command_literally_from_another_folder(kitchens, tmp_path, monkeypatch, capsys):
    """The work directory given as --workdir, the command pasted in another folder: it made (or refused) the
    default work directory's programs, and the note stayed (fixed: the note names --workdir)."""
    leap = leap_here(monkeypatch, capsys)
    wd = tmp_path / "my work"
    shutil.copytree(kitchens[0], wd)
    for stage in ("extract", "generate-programs", "build-shards"):
        _ok(leap(stage, "--workdir", wd, "--split", "val"))
    shutil.copyfile(kitchens[1], wd / "kitchen" / "P01" / "videos" / f"{CUT}.MP4")
    _ok(leap("extract", "--workdir", wd, "--split", "val", "--retry-errors"))
    said = _ok(leap("build-shards", "--workdir", wd, "--split", "val"))
    words = _note_command(said)
    assert words[:3] == ["generate-programs", "--split", "val"] and "--workdir" in words, said
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    said = _ok(leap(*words, cwd=elsewhere))
    assert "3 records of earlier runs were made from a clip that has changed since" in said, said
    assert not (elsewhere / "leap-work").exists()
    said = _ok(leap("build-shards", "--workdir", wd, "--split", "val"))
    assert "made from a clip text" not in said, said


def test_the_note_with_programs_given_elsewhere_names_them_as_the_output(kitchens, tmp_path, monkeypatch, capsys):
    leap = leap_here(monkeypatch, capsys)
    wd = tmp_path / "w"
    shutil.copytree(kitchens[0], wd)
    _ok(leap("extract", "--workdir", wd, "--split", "val"))
    mine = tmp_path / "mine.jsonl"
    _ok(leap("generate-programs", "--workdir", wd, "--split", "val", "--out", mine))
    _ok(leap("build-shards", "--workdir", wd, "--split", "val", "--programs", mine))
    shutil.copyfile(kitchens[1], wd / "kitchen" / "P01" / "videos" / f"{CUT}.MP4")
    _ok(leap("extract", "--workdir", wd, "--split", "val", "--retry-errors"))
    said = _ok(leap("build-shards", "--workdir", wd, "--split", "val", "--programs", mine))
    words = _note_command(said)
    assert words[words.index("--out") + 1] == str(mine), words
    assert "3 records of earlier runs" in _ok(leap(*words))
    said = _ok(leap("build-shards", "--workdir", wd, "--split", "val", "--programs", mine, "--force"))
    assert "made from a clip text" not in said, said


def test_the_note_over_extracts_unmerged_shard_parts(kitchens, tmp_path, monkeypatch, capsys):
    """A job array: extract and generate-programs by --shard i/2, the programs merged for build-shards (the
    descriptors need not be). The video downloaded again, extract's part made again: build-shards said nothing."""
    leap = leap_here(monkeypatch, capsys)
    wd = tmp_path / "w"
    shutil.copytree(kitchens[0], wd)
    for i in (0, 1):
        _ok(leap("extract", "--workdir", wd, "--split", "val", "--shard", f"{i}/2"))
        _ok(leap("generate-programs", "--workdir", wd, "--split", "val", "--shard", f"{i}/2"))
    progs = wd / "programs"
    (progs / "val.jsonl").write_bytes(b"".join((progs / f"val.shard{i}of2.jsonl").read_bytes() for i in (0, 1)))
    _ok(leap("build-shards", "--workdir", wd, "--split", "val"))
    part = next(i for i in (0, 1) if CUT in (wd / "descriptors" / f"val.shard{i}of2.jsonl").read_text())
    shutil.copyfile(kitchens[1], wd / "kitchen" / "P01" / "videos" / f"{CUT}.MP4")
    _ok(leap("extract", "--workdir", wd, "--split", "val", "--shard", f"{part}/2", "--retry-errors"))
    said = _ok(leap("build-shards", "--workdir", wd, "--split", "val"))
    flat = " ".join(said.split())
    assert "3 program record(s)" in flat and "--shard parts of" in flat, said


def test_the_note_of_anticipation_shards(kitchens, tmp_path, monkeypatch, capsys):
    leap = leap_here(monkeypatch, capsys)
    wd = tmp_path / "w"
    shutil.copytree(kitchens[0], wd)
    for stage in ("extract", "generate-programs"):
        _ok(leap(stage, "--workdir", wd, "--split", "val"))
    shutil.copyfile(kitchens[1], wd / "kitchen" / "P01" / "videos" / f"{CUT}.MP4")
    _ok(leap("extract", "--workdir", wd, "--split", "val", "--retry-errors"))
    said = _ok(leap("build-shards", "--workdir", wd, "--split", "val", "--task", "anticipation"))
    assert "3 program record(s)" in " ".join(said.split()), said
