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
- a kitchen marker that is JSON of another kind ([...], "...") or not text made build_kitchen (demo-data, leap demo)
  fail with a traceback (AttributeError / UnicodeDecodeError); it is now no marker of ours, as one not JSON is.
- demo-data's note over another leap's kitchen called a newer leap's kitchen "an earlier leap's", and was not given
  where the marker names no version (the kitchen rebuilt, the stages' records of the old one kept, unsaid); leap
  demo's warning said "kitchen version True" of a bool.

Right as it is (checked here): the note's clip hashes are generate-programs' (duplicates: the last record of an id,
a crash-cut line passed over, narration-only programs or other extract settings not compared, records of a leap
without clip_hash not read, anticipation shards noted too; 67k descriptor records of 2 kB, 191 MiB: 1.7 s); a
resume's "unknown" entry survives a second resume on other programs and a lost provenance.json; the frame cache
named through a symlink is one folder; the expand bias's gradient passes float64 gradcheck (drop path, T=1, both
temporal convolutions, strided tokens) and is float32's under the CPU's bf16 autocast. Noticed, not changed: with
extract --workers 2 the summary's first: line names whichever segment past the cut failed first (the video is the
same); evaluate's trained-on warning reads only the current training shards (steps of an "unknown" start, or of
earlier shards, are not looked at).
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
from leap_cli.programs.provenance import clip_hash_of
from leap_cli.shards.writer import programs_behind_clips
from tests.kitchens import kitchen_copy
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
    assert flat.count("made from a clip text that") == 1, said
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
    assert "3 program records" in flat and "--shard parts of" in flat, said


def test_the_note_of_anticipation_shards(kitchens, tmp_path, monkeypatch, capsys):
    leap = leap_here(monkeypatch, capsys)
    wd = tmp_path / "w"
    shutil.copytree(kitchens[0], wd)
    for stage in ("extract", "generate-programs"):
        _ok(leap(stage, "--workdir", wd, "--split", "val"))
    shutil.copyfile(kitchens[1], wd / "kitchen" / "P01" / "videos" / f"{CUT}.MP4")
    _ok(leap("extract", "--workdir", wd, "--split", "val", "--retry-errors"))
    said = _ok(leap("build-shards", "--workdir", wd, "--split", "val", "--task", "anticipation"))
    assert "3 program records" in " ".join(said.split()), said


# ---------------------------------------------------------------- extract: the cut file's segments, named

def test_extract_detail_of_a_cut_file_in_a_folder_with_spaces_and_unicode(kitchens, tmp_path, monkeypatch, capsys):
    """workers 2, --shard, a path with a space and non-ASCII letters: the records stay JSON, the detail names the
    file and segment, and no clip text holds a path (the same texts as the kitchen's extract elsewhere)."""
    leap = leap_here(monkeypatch, capsys)
    plain, odd = tmp_path / "plain", tmp_path / "wörk dir ü"
    for wd in (plain, odd):
        shutil.copytree(kitchens[0], wd)
    _ok(leap("extract", "--workdir", plain, "--split", "val"))
    said = ""
    for i in (0, 1):
        said += _ok(leap("extract", "--workdir", odd, "--split", "val", "--workers", "2", "--shard", f"{i}/2"))
    first = [x.strip() for x in said.splitlines() if x.strip().startswith("first: ")]
    # (with 2 workers the segment that failed first is any of the 3 past the cut: the video is what it names)
    assert len(first) == 1 and f"wörk dir ü/kitchen/P01/videos/{CUT}.MP4 [{CUT}_" in " ".join(said.split()), said
    texts = {}
    for i in (0, 1):
        for line in (odd / "descriptors" / f"val.shard{i}of2.jsonl").read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            texts[r["narration_id"]] = r["text"]
            cam = r["components"]["camera"]
            if cam["status"] == "unavailable":
                assert f"{CUT}.MP4" in cam["data"]["detail"] and f"[{r['narration_id']}]" in cam["data"]["detail"]
    want = {r["narration_id"]: r["text"] for r in map(json.loads, (plain / "descriptors" / "val.jsonl").read_text(
        encoding="utf-8").splitlines())}
    assert texts == want and not any("wörk" in t or "kitchen" in t for t in texts.values())
    # a resume redoes nothing, and --retry-errors keeps the JSON whole
    said = _ok(leap("extract", "--workdir", odd, "--split", "val", "--shard", "1/2", "--retry-errors"))
    for i in (0, 1):
        for line in (odd / "descriptors" / f"val.shard{i}of2.jsonl").read_text(encoding="utf-8").splitlines():
            json.loads(line)


# ---------------------------------------------------------------- a resume's provenance after an unknown start


def _prov(model: str, shards: str = "s") -> dict:
    return {"train": {"shards": shards, "split": "train", "programs": {
        "records": 1, "sha256": f"hash of {model}'s", "made_by": [{"backend": "openai", "model": model, "records": 1,
                                                                    "valid": 1}]}}, "val": None}


def test_resumes_after_a_checkpoint_without_provenance_then_on_other_programs(tmp_path, caplog):
    from leap_cli.programs.provenance import read_run_provenance, run_programs_text
    from leap_cli.train.loop import record_provenance

    run = tmp_path / "run"
    run.mkdir()
    first = record_provenance(run, _prov("gpt-4o"), resumed=True, checkpoint={"step": 25, "provenance": None})
    assert first["earlier"] == [{"unknown": "steps 1-25, trained before runs kept provenance.json"}]
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # a second resume, on other programs
        second = record_provenance(run, _prov("gpt-4o-mini"), resumed=True, checkpoint={"step": 50, "provenance": first})
    assert "not those the run was trained on so far" in caplog.text and "resumed at step" not in caplog.text
    assert second["earlier"][0] == first["earlier"][0] and second["earlier"][1]["train"] == first["train"]
    assert len(second["earlier"]) == 2 and read_run_provenance(run) == second
    text = run_programs_text(second)
    assert text.startswith("openai gpt-4o-mini") and "before a resume on other programs: openai gpt-4o" in text, text
    assert text.endswith("; before a resume: unknown (steps 1-25, trained before runs kept provenance.json)"), text
    # the file lost: the checkpoint's copy of all of it, and no second "unknown"
    (run / "provenance.json").unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        third = record_provenance(run, _prov("gpt-4o-mini"), resumed=True, checkpoint={"step": 75, "provenance": second})
    assert third == second and not caplog.text
    # a checkpoint at step 0 (saved before any step) or of no step: nothing unknown
    for ckpt in ({"step": 0}, {"step": "7"}, {}):
        fresh = tmp_path / f"f{len(ckpt)}{ckpt.get('step')}"
        fresh.mkdir()
        assert "earlier" not in record_provenance(fresh, _prov("x"), resumed=True, checkpoint=ckpt)
    # a run started over (not a resume) does not take the checkpoint's words
    assert record_provenance(run, _prov("y"), resumed=False, checkpoint={"step": 9}) == _prov("y")


def test_run_programs_text_passes_over_entries_that_are_not_its_own():
    from leap_cli.programs.provenance import run_programs_text

    prov = {**_prov("m"), "earlier": ["x", 3, {"unknown": 5}, {"unknown": "steps 1-3, a"}, {"unknown": "b"}]}
    assert run_programs_text(prov).endswith("valid of 1; before a resume: unknown (steps 1-3, a)") or \
        run_programs_text(prov).endswith("; before a resume: unknown (steps 1-3, a)"), run_programs_text(prov)
    assert run_programs_text({"earlier": [{"unknown": "z"}]}).startswith("unknown (a run of a leap before")


def test_evaluates_trained_on_warning_with_an_unknown_earlier_entry(tmp_path, caplog):
    """The run's training shards are read for the warning; an 'unknown' entry neither breaks it nor adds to it."""
    from leap_cli.evaluate.inference import _warn_trained_on

    folder = tmp_path / "train"
    folder.mkdir()
    (folder / "manifest.json").write_text("{}")
    prov = {**_prov("m", shards=str(tmp_path / "nowhere")), "earlier": [{"unknown": "steps 1-5, x"}]}
    with caplog.at_level(logging.WARNING):
        _warn_trained_on(prov, ["a", "b"], folder, "val")
        _warn_trained_on({"earlier": [{"unknown": "y"}]}, ["a"], folder, "val")
    assert not caplog.text


# ---------------------------------------------------------------- an older kitchen's marker, as it may be found


@pytest.fixture(scope="module")
def demo_kitchen(tmp_path_factory):
    from leap_cli.synth.kitchen import KitchenConfig

    work = tmp_path_factory.mktemp("demo") / "work"
    cfg = KitchenConfig(videos=3, seed=4, segments_per_video=2)
    kitchen_copy(tmp_path_factory, work / "kitchen", "--videos", 3, "--seed", 4, "--segments", 2)
    return work, cfg


@pytest.mark.parametrize("version, said", [(None, "another kitchen version"), ("6", "another kitchen version"),
                                           (True, "another kitchen version"), (5, "kitchen version 5")])
def test_leap_demos_warning_names_a_markers_version_only_where_it_is_one(demo_kitchen, tmp_path, caplog, version,
                                                                            said):
    from leap_cli.demo import DemoConfig, check_demo
    from leap_cli.synth.kitchen import KITCHEN_VERSION, MARKER

    work = tmp_path / "work"
    shutil.copytree(demo_kitchen[0], work)
    marker = json.loads((work / "kitchen" / MARKER).read_text())
    marker.pop("version")
    (work / "kitchen" / MARKER).write_text(json.dumps({**marker, "hash": "of another leap", **(
        {} if version is None else {"version": version})}))
    with caplog.at_level(logging.WARNING):
        cfg = check_demo(DemoConfig(workdir=work, videos=3, segments=2, seed=4, train_overrides=("data.batch_size=1",)))
    assert cfg.force and f"({said}; this leap's is {KITCHEN_VERSION})" in caplog.text, caplog.text


@pytest.mark.parametrize("content", [b"[1, 2]", b'"a kitchen"', b"\xff\xfe\x00garbage", b'{"hash": '])
def test_a_corrupt_marker_is_no_kitchen_of_ours_whatever_its_bytes(demo_kitchen, tmp_path, content):
    """A marker that is JSON of another kind, or not text, was read as one (AttributeError, UnicodeDecodeError
    out of build_kitchen: a traceback); now it is what a marker that is not JSON was: the folder is refused."""
    from leap_cli.errors import LeapError
    from leap_cli.synth.kitchen import MARKER, build_kitchen, read_marker

    work = tmp_path / "work"
    shutil.copytree(demo_kitchen[0], work)
    (work / "kitchen" / MARKER).write_bytes(content)
    assert read_marker(work / "kitchen") is None
    with pytest.raises(LeapError, match="holds no synthetic kitchen"):
        build_kitchen(work / "kitchen", demo_kitchen[1])


@pytest.mark.parametrize("version, said", [(None, "kitchen version unknown"), (True, "kitchen version unknown"),
                                           ("KITCHEN_VERSION + 1", "kitchen version {v}")])
def test_demo_datas_note_over_a_kitchen_whose_marker_names_no_version_or_a_newer_one(demo_kitchen, tmp_path,
                                                                                     monkeypatch, capsys, version, said):
    """A finished kitchen whose marker names no version was rebuilt without the note (the stages' records of it
    kept, unsaid); one of a newer leap was said to be an earlier leap's."""
    from leap_cli.synth.kitchen import KITCHEN_VERSION, MARKER
    from tests.procs import leap_main

    work = tmp_path / "work"
    shutil.copytree(demo_kitchen[0], work)
    marker = json.loads((work / "kitchen" / MARKER).read_text())
    marker.pop("version")
    if version is not None:
        marker["version"] = KITCHEN_VERSION + 1 if isinstance(version, str) else version
    (work / "kitchen" / MARKER).write_text(json.dumps({**marker, "hash": "of another leap"}))
    code, out, err = leap_main(monkeypatch, capsys, "demo-data", "--workdir", str(work), "--videos", "3",
                               "--segments", "2", "--seed", "4")
    flat = " ".join((out + err).split())
    assert code == 0 and "held a kitchen another leap built (" + said.format(v=KITCHEN_VERSION + 1) in flat, flat
    assert f"delete {work / 'descriptors'} and run extract again" in flat, flat


def test_demo_data_over_another_leaps_unfinished_kitchen_says_nothing_of_kept_work(demo_kitchen, tmp_path, monkeypatch,
                                                                                  capsys):
    """A build another leap began and did not finish: no stage ran on it, nothing is kept: no note."""
    from leap_cli.synth.kitchen import KITCHEN_VERSION, MARKER
    from tests.procs import leap_main

    work = tmp_path / "work"
    shutil.copytree(demo_kitchen[0], work)
    marker = json.loads((work / "kitchen" / MARKER).read_text())
    (work / "kitchen" / MARKER).write_text(json.dumps({**marker, "hash": "x", "version": KITCHEN_VERSION - 1,
                                                       "complete": False}))
    code, out, err = leap_main(monkeypatch, capsys, "demo-data", "--workdir", str(work), "--videos", "3",
                               "--segments", "2", "--seed", "4")
    assert code == 0 and "held a kitchen" not in out + err and json.loads((work / "kitchen" / MARKER).read_text())[
        "complete"], out + err


# ---------------------------------------------------------------- the frame cache extract named, two ways


def _fc_settings(desc: Path, name: str, root) -> None:
    desc.mkdir(parents=True, exist_ok=True)
    (desc / name).write_text(json.dumps({"frame_cache": str(root), "cache_frames": 16}))


def test_a_frame_cache_named_through_a_symlink_and_by_its_folder_is_one(tmp_path, monkeypatch):
    from leap_cli.commands.shards import extracts_frame_cache

    monkeypatch.chdir(tmp_path)
    (tmp_path / "big disk" / "fc").mkdir(parents=True)
    work = tmp_path / "w"
    (work / "descriptors").mkdir(parents=True)
    (work / "frame-cache").symlink_to(tmp_path / "big disk" / "fc")
    _fc_settings(work / "descriptors", "val.shard0of2.config.json", work / "frame-cache")
    _fc_settings(work / "descriptors", "val.shard1of2.config.json", tmp_path / "big disk" / "fc")
    got, note = extracts_frame_cache(work, "val")
    assert note is None and got == work / "frame-cache"  # (the first settings file's name for it)
    # the disk not mounted: both names are the default's folder, whose absence the writer's notes tell
    (tmp_path / "big disk" / "fc").rmdir()
    assert extracts_frame_cache(work, "val") == (None, None)


def test_a_relative_frame_cache_of_an_earlier_leap_read_from_another_folder(tmp_path, monkeypatch):
    """An earlier leap recorded --frame-cache fc as given, from the folder it ran in; build-shards run from another
    folder finds no fc there: the note says the folder named is not there (it cannot know where fc was), and with
    today's absolute name beside it (another part) that one is read."""
    from leap_cli.commands.shards import extracts_frame_cache

    (tmp_path / "fc").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    desc = tmp_path / "w" / "descriptors"
    _fc_settings(desc, "val.shard0of2.config.json", "fc")
    got, note = extracts_frame_cache(tmp_path / "w", "val")
    assert got is None and "extract's frame cache fc (named in" in note and "--frame-cache DIR" in note, note
    _fc_settings(desc, "val.shard1of2.config.json", tmp_path / "fc")
    assert extracts_frame_cache(tmp_path / "w", "val") == (tmp_path / "fc", None)
    # another fc in the folder it runs from: two folders named, none read, and the note says to choose
    (tmp_path / "elsewhere" / "fc").mkdir()
    got, note = extracts_frame_cache(tmp_path / "w", "val")
    assert got is None and "name 2 frame caches" in note, note


# ---------------------------------------------------------------- the local relation's expand-bias gradient

import torch  # noqa: E402

from leap_cli.model.uniformerv2 import _LocalRelation  # noqa: E402


def _relation_inputs(N=2, T=3, L=4, C=6, R=4, k=3, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, dtype=dtype, generator=g)  # noqa: E731
    return [r(N * T, 1 + L, C), r(N * T * L, C), T, r(R, C) * 0.5, r(R), r(R, k) * 0.5, r(R), r(C, R) * 0.5, r(C)]


@pytest.mark.parametrize("onednn", [True, False])
@pytest.mark.parametrize("T, drop", [(3, False), (3, True), (1, False), (1, True)])
def test_the_local_relation_passes_gradcheck(onednn, T, drop, monkeypatch):
    monkeypatch.setattr(_LocalRelation, "onednn", staticmethod(lambda x: onednn))
    args = _relation_inputs(T=T)
    scale = torch.tensor([0.0, 1.25], dtype=torch.float64) if drop else None
    tensors = [a.requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
    assert torch.autograd.gradcheck(lambda *a: _LocalRelation.apply(*a, scale), tensors, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("onednn", [True, False])
def test_the_local_relation_of_strided_tokens_is_that_of_contiguous_ones(onednn, monkeypatch):
    """Sequence-first tokens ([1+HW, N*T, C] transposed) and a slice: the same output and gradients."""
    monkeypatch.setattr(_LocalRelation, "onednn", staticmethod(lambda x: onednn))
    args = _relation_inputs()
    x = args[0]
    views = [x, x.transpose(0, 1).contiguous().transpose(0, 1),  # sequence-first tokens
             torch.stack([x, x], -1)[..., 0]]  # every other float of a wider tensor
    want = None
    for v in views:
        xv = v.detach().requires_grad_()
        ps = [a.detach().clone().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args[1:]]
        y = _LocalRelation.apply(xv, *ps, None)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view(y.shape)).sum().backward()
        got = [y.detach(), xv.grad] + [p.grad for p in ps if isinstance(p, torch.Tensor)]
        want = want or got
        for one, other in zip(got, want):
            torch.testing.assert_close(one, other)


def test_the_expand_bias_gradient_keeps_the_patch_rows_beside_large_class_rows():
    """float32: class-row gradients 10^4x the patch ones; the bias's gradient is the patch rows' sum (as in
    float64), where all rows less the class rows lost it."""
    N, T, L, C = 2, 8, 49, 16
    args = _relation_inputs(N=N, T=T, L=L, C=C, dtype=torch.float32, seed=3)
    grad = torch.randn(N * T, 1 + L, C, generator=torch.Generator().manual_seed(4)) * 1e-3
    grad[:, 0] = 40.0 * torch.randn(N * T, C, generator=torch.Generator().manual_seed(5)).abs() + 10
    for scale in (None, torch.tensor([0.0, 2.0])):
        b_e = args[-1].detach().clone().requires_grad_()
        y = _LocalRelation.apply(*args[:-1], b_e, scale)
        y.backward(grad)
        per_clip = grad.double()[:, 1:].reshape(N, -1, C).sum(1)
        want = per_clip.sum(0) if scale is None else scale.double() @ per_clip
        torch.testing.assert_close(b_e.grad.double(), want, rtol=1e-5, atol=1e-7)


def test_the_expand_bias_gradient_under_cpu_bf16_autocast_is_float32s():
    """Under the CPU's bf16 autocast the products run in bf16, the bias's gradient is summed in x's float32."""
    args = _relation_inputs(dtype=torch.float32, seed=6)
    ps = [a.requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
    grad = torch.randn(args[0].shape, generator=torch.Generator().manual_seed(7))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = _LocalRelation.apply(*ps, None)
    assert y.dtype == torch.float32
    y.backward(grad)
    assert all(p.grad.dtype == torch.float32 for p in ps if isinstance(p, torch.Tensor))
    torch.testing.assert_close(ps[-1].grad, grad[:, 1:].sum((0, 1)), rtol=1e-6, atol=1e-5)
    ref = [a.detach().double().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
    _LocalRelation.apply(*ref, None).backward(grad.double())
    for p, q in zip(ps, ref):
        if isinstance(p, torch.Tensor):
            torch.testing.assert_close(p.grad.double(), q.grad, rtol=0.05, atol=0.05 * q.grad.abs().max().item())


def test_frames_asked_outside_the_video_name_the_file_and_segment(kitchens):
    """A component asking for frames outside the file (a window that is decodable, frames past it): the detail
    names the video and segment, as the window's own check does."""
    from leap_cli.epic.layout import DatasetLayout
    from leap_cli.extract.base import FramesUnavailable
    from leap_cli.extract.runner import _Video

    layout = DatasetLayout.open(kitchens[0] / "kitchen")
    ann = layout.annotations()
    seg = next(s for s in ann.segments("train") if s.video_id == "P01_01")
    video = _Video(layout, "P01_01", ann.fps("P01_01"))
    try:
        for numbers in ([0, 1], [1, 10 ** 6]):
            with pytest.raises(FramesUnavailable) as e:
                video.images(numbers, None, seg)
            assert f"P01_01.MP4 [{seg.narration_id}]: " in e.value.detail and e.value.detail.endswith(e.value.reason)
            assert "P01_01.MP4" not in e.value.reason  # (the reason, which the clip text may show, holds no path)
    finally:
        video.close()


def test_the_notes_command_names_the_split_and_the_data_given(tmp_path):
    from leap_cli.shards.writer import _generate_command

    work = tmp_path / "w"
    assert _generate_command("test", Path("leap-work"), Path("leap-work/kitchen"), None,
                             Path("leap-work/programs/test.jsonl")) == "leap generate-programs --split test"
    said = shlex.split(_generate_command("train", work, tmp_path / "EPIC data", None, work / "programs" / "train.jsonl"))
    assert said == ["leap", "generate-programs", "--split", "train", "--workdir", str(work), "--data",
                    str(tmp_path / "EPIC data")]
    said = shlex.split(_generate_command("val", work, tmp_path / "d", tmp_path / "ann", tmp_path / "p.jsonl"))
    assert said[-4:] == ["--annotations", str(tmp_path / "ann"), "--out", str(tmp_path / "p.jsonl")] and \
        "--data" not in said


def test_a_checkpoints_provenance_that_is_no_object_leaves_the_steps_before_unknown(tmp_path):
    from leap_cli.train.loop import record_provenance

    for held in ("garbage", ["x"], 3):
        run = tmp_path / str(held)[:3]
        run.mkdir()
        now = record_provenance(run, _prov("m"), resumed=True, checkpoint={"step": 4, "provenance": held})
        assert now["earlier"] == [{"unknown": "steps 1-4, trained before runs kept provenance.json"}]
