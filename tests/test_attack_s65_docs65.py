"""The docs against the behaviour, for session 65's changes (helper docs65): build-shards updates a folder in place
(program records made again, a video downloaded again), extract and generate-programs notice a video downloaded
again, train's provenance keeps the samples' hash.

Found and fixed (docs and help texts; the code's own messages where they disagreed):
- README's resume paragraph said only that build-shards asks for ``--force`` after a new CSV (still true), and nothing
  of a video downloaded again or programs made again, which now need no ``--force``; options.md's ``--force`` row and
  its settings paragraph ("``--force`` rebuilds") said the same of build-shards; build-shards' ``--help`` (``--force``:
  "Delete shards of other settings/inputs in --out and rebuild") neither. Each now says a plain rerun writes again
  only what changed, with the target vocabulary the exception, and links shards.md's "Programs made again".
- extract's ``--retry-errors`` help named it as the way after downloading a video again: a plain run now makes the
  records of an MP4 whose size changed again.
- ``leap demo-data``'s note of a kitchen of another version (and synthetic-kitchen.md) said the stages keep what they
  made from the old kitchen "where its annotations did not change": extract and build-shards now compare the
  video's size too.
- generate-programs' line of segments left out named further videos "; and N other videos", extract's and
  build-shards' lines of a video downloaded again ", and N other videos".
- shards.md's program file still being written: its note's "run build-shards again" is refused where the records
  written since change a training build's target vocabulary (``--force``); said in the docs. The note itself
  promised a rewrite: a strict xfail here until the session's lead made the notes of programs still to come say
  so for the training split (``writer.build_again``).
- train.md's provenance ``samples``: dated as the other new fields are (a run of a leap before 2026-12-07 has none).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from leap_cli.errors import LeapError
from tests.procs import leap_main
from tests.test_shards import PROGRAM, make_root, program_records, settings, write_programs

ROOT = Path(__file__).resolve().parents[1]


def _flat(path: Path) -> str:
    return " ".join(path.read_text(encoding="utf-8").split())


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_root(tmp_path_factory.mktemp("kitchen"))


def _build(root: Path, work: Path, records: list[dict], **kw):
    from leap_cli.shards.writer import build_split

    write_programs(work / "programs" / "train.jsonl", records)
    extra = {k: kw.pop(k) for k in ("overwrite", "vocab_manifest") if k in kw}
    return build_split(root, "train", workdir=work, settings=settings(**kw), **extra)


def _remade(records: list[dict]) -> list[dict]:
    """``records`` with P01_01_1's program made again otherwise (its last step left out: the same vocabulary)."""
    recs = copy.deepcopy(records)
    (r,) = [r for r in recs if r["narration_id"] == "P01_01_1"]
    r["program"] = dict(PROGRAM, steps=PROGRAM["steps"][:-1])
    return recs


def test_force_is_said_unneeded_for_program_records_alone_where_build_shards_takes_them(root, tmp_path,
                                                                                        monkeypatch, capsys):
    """README, options.md and build-shards --help: other program records (the same target vocabulary) need no
    --force; a plain rerun writes again only their samples. So it does."""
    readme = _flat(ROOT / "README.md")
    said = re.search(r"A video downloaded again \(its MP4's size differs now\) and programs made again \(to the "
                     r"same target vocabulary\) need no `--force`: a plain rerun of each stage, in order, makes again "
                     r"only what they change .*?\"Programs made again\"\)", readme)
    assert said, "README's resume paragraph"
    options = _flat(ROOT / "docs" / "options.md")
    assert ("build-shards needs it for neither other program records (of the same target vocabulary) nor a video "
            "downloaded again") in options
    assert "(`--force` rebuilds; other program records alone are taken in place, a new target vocabulary aside" in options
    code, out, _ = leap_main(monkeypatch, capsys, "build-shards", "--help")
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", out).split())
    assert code == 0 and "rebuild (not needed where only program records changed and the target vocabulary stays)" in text
    assert "a re-run writes again only their samples" in text
    # the behaviour: a val-like build on a fixed vocabulary (a training manifest), one record made again
    vocab_work = tmp_path / "vocab"
    _build(root, vocab_work, program_records())
    vocab = vocab_work / "shards" / "train" / "manifest.json"
    work = tmp_path / "w"
    _build(root, work, program_records(), vocab_manifest=vocab)
    r = _build(root, work, _remade(program_records()), vocab_manifest=vocab)  # no --force
    assert any(n.startswith("the programs of 1 sample already written changed, in 1 shard") for n in r.notes), r.notes
    # the paragraph's other half, kept: after a new version of the split's CSV, build-shards asks for --force
    assert "build-shards, which has no per-row resume, asks for `--force`" in readme
    csv = root / "annotations" / "EPIC_100_train.csv"
    rows = csv.read_text()
    try:
        csv.write_text(rows.replace(",wash cup,", ",wash cup slowly,", 1))
        assert csv.read_text() != rows
        with pytest.raises(LeapError) as e:
            _build(root, work, _remade(program_records()), vocab_manifest=vocab)
        assert "annotation rows differ" in str(e.value) and "--force" in (e.value.fix or ""), str(e.value)
    finally:
        csv.write_text(rows)


def test_the_left_out_line_names_other_videos_as_extracts_and_build_shards_lines_do():
    """troubleshooting.md quotes the three stages' lines of a video downloaded again in one form: `(FILE: size A -> B
    bytes` then `, and N other videos)` where more were."""
    from leap_cli.programs.generate import left_out_line

    inputs = SimpleNamespace(replaced={"P01_01_0": ("/d/P01_01.MP4", 10, 20), "P01_01_1": ("/d/P01_01.MP4", 10, 20),
                                       "P01_02_0": ("/d/P01_02.MP4", 5, 6), "P02_01_0": ("/d/P02_01.MP4", 7, 8)},
                             extract_command="leap extract --split train", extract_merge="")
    line = left_out_line(inputs)
    assert line.startswith("4 segments were left out: their descriptors were made from a video that has changed "
                           "since (/d/P01_01.MP4: size 10 -> 20 bytes, and 2 other videos): run leap extract "
                           "--split train (it makes them again), then generate-programs again"), line
    rows = _flat(ROOT / "docs" / "troubleshooting.md")
    assert ("`N segments were left out: their descriptors were made from a video that has changed since (FILE: size "
            "A -> B bytes)`") in rows


def test_demo_data_note_of_another_kitchen_version_says_the_video_size_is_compared(tmp_path, monkeypatch, capsys):
    """synthetic-kitchen.md: the stages keep what they made from an older kitchen where its annotations and its
    video's size did not change (extract's video_size, build-shards' video_sizes); the note says so."""
    import leap_cli.synth.kitchen as kitchen

    out = tmp_path / "w" / "kitchen"
    monkeypatch.setattr(kitchen, "build_kitchen", lambda out, cfg, **kw: SimpleNamespace(
        out=out, replaced_version=kitchen.KITCHEN_VERSION - 1, render=lambda: "kitchen rebuilt"))
    monkeypatch.setenv("COLUMNS", "400")
    code, out_text, err = leap_main(monkeypatch, capsys, "demo-data", "--workdir", str(tmp_path / "w"))
    said = " ".join((out_text + err).split())
    assert code == 0, said
    assert "is kept where its annotations and its video's size did not change (its other files are not compared)" in said
    assert "where its annotations and its video's size did not change" in _flat(ROOT / "docs" / "synthetic-kitchen.md")


def test_docs_date_the_new_fields_alike():
    """extract's video_size, build-shards' per-sample hashes and video sizes, train's samples: 'leap before
    2026-12-07' wherever their absence is explained."""
    assert "none for an `rgb_frames` folder, a run that read no video, or leap before 2026-12-07" in _flat(
        ROOT / "docs" / "extract.md")
    shards = _flat(ROOT / "docs" / "shards.md")
    assert "shards of a leap before 2026-12-07, which kept no hash per sample" in shards
    assert "Shards of a leap before 2026-12-07 kept no sizes: the first run takes them once" in shards
    assert '"samples" missing (a run of a leap before 2026-12-07) or null on either side is not compared' in _flat(
        ROOT / "docs" / "train.md")


def test_the_note_of_a_program_file_still_written_leads_to_a_run_that_takes_the_new_records(root, tmp_path):
    """docs/shards.md: a program file still being written is used as it is, with a note to run build-shards again
    once it is done. Followed on a training build whose later records bring new conditions, the run is refused;
    the note should then have named --force."""
    from leap_cli.io import OutputLock

    work = tmp_path / "w"
    first = [r for r in program_records() if r["narration_id"] == "P01_01_1"]
    path = write_programs(work / "programs" / "train.jsonl", first)
    with OutputLock(path):  # generate-programs, still running
        r = _build(root, work, first)
    note = next(n for n in r.notes if "is still being written" in n)
    assert "run build-shards again" in note
    try:
        _build(root, work, program_records())  # it finished: P01_02_2's wash cup (new conditions) among them
    except LeapError as e:
        assert "target vocabulary" in str(e)
        assert "--force" in note, note  # the note sent the user into the refusal
