"""leap train --resume on training shards whose samples changed under the run (helper resume65, session 65).

build-shards updates a shards folder in place: the samples of an MP4 whose size changed (a video downloaded again)
are written again from the new file (``writer._drop_replaced``), as many samples, the same programs and labels. A
resume on them said nothing: provenance.json compared only the programs' and the labels' hashes, and the batch
count was the same. Now the run's provenance keeps ``train.samples`` ({count, sha256 over each sample's key and
CRC-32}), and a resume on other samples with the same programs and labels warns once and keeps the earlier entry
under ``earlier``; a change of programs (whose targets change the samples too) keeps its one warning; a file of an
earlier leap without ``samples`` is not compared on them.

The tiny root of test_shards with P01_02 (3 of its 7 training samples) an MP4, replaced by another of other colours
(test_attack_s65_moved65's), and tiny_config's model of test_train.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path

import pytest

from leap_cli.programs.provenance import read_run_provenance, run_programs_text
from leap_cli.shards.format import folders_provenance, load_manifest, samples_provenance
from leap_cli.train.loop import main, record_provenance
from tests.test_attack_s65_moved65 import VID, _write_mp4
from tests.test_shards import WASH_CUP, build, make_root, program_records, write_programs
from tests.test_train import tiny_config

SAMPLES = "the training shards' samples are not those the run was trained on so far"
PROGRAMS = "the shards' programs are not those the run was trained on so far"
LABELS = "the training shards were built from other labels"


def _crcs(shards: Path) -> dict[str, int]:
    m, _ = load_manifest(shards)
    return {k: c for s in m["shards"] for k, c in zip(s["keys"], s["crc32s"])}


def test_a_resume_after_a_video_downloaded_again_says_the_samples_changed_once(tmp_path: Path, caplog) -> None:
    """Train a step; a no-change rerun of build-shards and a resume: nothing said. The MP4 downloaded again (another
    size), build-shards writes its samples again, a resume: one warning that the samples changed, the file keeps
    the first entry under "earlier", and the summary line of programs is unchanged. Then programs made again (one
    program's targets: its sample written again too): the programs' warning alone."""
    root = make_root(tmp_path / "k")
    shutil.rmtree(root / "P01" / "rgb_frames" / VID)
    mp4 = root / "P01" / "videos" / f"{VID}.MP4"
    mp4.parent.mkdir(parents=True)
    _write_mp4(mp4, 0)
    work = tmp_path / "w"
    build(root, work)
    shards = work / "shards" / "train"
    cfg = tiny_config(f"data.train={shards}", "data.val=", "train.max_steps=6", "model.options={decoder_dim: 32}")
    run = work / "runs" / "r"

    main(cfg, workdir=work, name="r", stop_at_step=1)
    first = read_run_provenance(run)
    assert first["train"]["samples"]["count"] == 7 and "earlier" not in first
    line = run_programs_text(first)

    build(root, work)  # nothing to do: the same samples
    with caplog.at_level(logging.WARNING):
        main(cfg, workdir=work, name="r", resume=True, stop_at_step=2)
    assert SAMPLES not in caplog.text and PROGRAMS not in caplog.text, caplog.text
    assert read_run_provenance(run) == first

    before = _crcs(shards)
    _write_mp4(mp4, 100)  # downloaded again: another size, other frames
    build(root, work)
    after = _crcs(shards)
    assert before.keys() == after.keys()
    assert sorted(k for k in before if before[k] != after[k]) == [f"{VID}_{i}" for i in range(3)]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        main(cfg, workdir=work, name="r", resume=True, stop_at_step=3)
    said = " ".join(caplog.text.split())
    assert said.count(SAMPLES) == 1, said
    assert "7 samples, as before, some of them written again since" in said and "a video downloaded again" in said
    assert PROGRAMS not in said and LABELS not in said
    second = read_run_provenance(run)
    assert second["earlier"] == [first]
    assert second["train"]["programs"] == first["train"]["programs"]
    assert second["train"]["samples"]["sha256"] != first["train"]["samples"]["sha256"]
    assert run_programs_text(second) == line  # (show --run, train's summary: the same programs, nothing else)

    caplog.clear()
    with caplog.at_level(logging.WARNING):  # the next resume on them: nothing more
        main(cfg, workdir=work, name="r", resume=True, stop_at_step=4)
    assert SAMPLES not in caplog.text and read_run_provenance(run) == second

    records = program_records()  # P01_02_2's program made again: its targets (the hand) differ, the vocabulary not
    wash = copy.deepcopy(WASH_CUP)
    wash["steps"][0]["hand"] = "left"
    records[1]["program"] = wash
    write_programs(work / "programs" / "train.jsonl", records)
    build(root, work, programs=False)
    assert _crcs(shards)[f"{VID}_2"] != after[f"{VID}_2"]  # (the sample was written again with its new targets)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        main(cfg, workdir=work, name="r", resume=True, stop_at_step=5)
    said = " ".join(caplog.text.split())
    assert said.count(PROGRAMS) == 1 and SAMPLES not in said, said
    third = read_run_provenance(run)
    assert third["earlier"] == [first, {k: v for k, v in second.items() if k != "earlier"}]
    assert "before a resume on other programs" in run_programs_text(third)


def _prov(programs: str, samples: str | None, labels: str = "rows", count: int = 7) -> dict:
    train = {"shards": "s", "split": "train", "labels": {"annotations": labels},
             "programs": {"records": 1, "sha256": programs, "made_by": [
                 {"backend": "openai", "model": "gpt-4o", "records": 1, "valid": 1}]}}
    if samples is not None:
        train["samples"] = {"count": count, "sha256": samples}
    return {"train": train, "val": None}


@pytest.mark.parametrize("case", ["same", "frames", "count", "programs", "labels", "old file", "old manifest"])
def test_which_change_of_the_training_shards_is_said_and_how_often(tmp_path: Path, caplog, case: str) -> None:
    """record_provenance on a resume: one warning per change, the samples' only where programs and labels are
    the same (their change rewrites the samples too), none where either side does not know its samples."""
    was = _prov("p", "s1")
    now = {"same": _prov("p", "s1"), "frames": _prov("p", "s2"), "count": _prov("p", "s2", count=8),
           "programs": _prov("q", "s2"), "labels": _prov("p", "s2", labels="other rows"),
           "old file": _prov("p", "s2"), "old manifest": _prov("p", None)}[case]
    if case == "old file":
        del was["train"]["samples"]  # (provenance.json as a leap before this change wrote it)
    record_provenance(tmp_path, was, resumed=False)
    with caplog.at_level(logging.WARNING):
        held = record_provenance(tmp_path, now, resumed=True)
    said = " ".join(caplog.text.split())
    expect = {"frames": SAMPLES, "count": SAMPLES, "programs": PROGRAMS, "labels": LABELS}.get(case)
    for message in (SAMPLES, PROGRAMS, LABELS):
        assert said.count(message) == (message == expect), (case, said)
    assert ("earlier" in held) == (expect is not None)
    if expect:
        assert held["earlier"] == [was] and json.loads((tmp_path / "provenance.json").read_text()) == held
    if case == "count":
        assert "8 samples, 7 before: samples added or taken out since" in said, said


def test_the_samples_hash_follows_the_samples_not_their_packing() -> None:
    """A sample's CRC-32 changed: another hash; the same samples packed into other tars: the same; a shard without
    crc32s (a leap before them): unknown, and so over several folders."""
    m = {"shards": [{"keys": ["a", "b"], "crc32s": [1, 2]}, {"keys": ["c"], "crc32s": [3]}]}
    one = samples_provenance(m)
    assert one["count"] == 3
    assert samples_provenance({"shards": [{"keys": ["c", "a", "b"], "crc32s": [3, 1, 2]}]}) == one
    assert samples_provenance({"shards": [{"keys": ["a", "b"], "crc32s": [1, 9]}, {"keys": ["c"], "crc32s": [3]}]}
                              )["sha256"] != one["sha256"]
    assert samples_provenance({"shards": [{"keys": ["a", "b"]}]}) is None
    assert samples_provenance({"shards": [{"keys": ["a", "b"], "crc32s": [1, None]}]}) is None
    both = folders_provenance({"folders": [{"manifest": m, "folder": "x"}, {"manifest": m, "folder": "y"}]}, Path("x"))
    assert both["samples"]["count"] == 6 and both["folders"][0]["samples"] == one
    old = {"shards": [{"keys": ["d"]}]}
    assert folders_provenance({"folders": [{"manifest": m, "folder": "x"}, {"manifest": old, "folder": "y"}]},
                              Path("x"))["samples"] is None
