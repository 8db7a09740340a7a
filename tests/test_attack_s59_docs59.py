"""README.md, docs/extract.md, docs/options.md and docs/troubleshooting.md against what `leap extract` does on a tiny
synthetic kitchen: the claims that no earlier docs test pins (test_attack_docs_claims.py, test_attack_s57_docs57.py
and test_attack_s58_docs58.py hold those). Claims found false were strict xfails, now fixed ("Was wrong")."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from tests.kitchens import config_kitchen_copy
from tests.procs import leap_main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
EXTRACT_MD = (ROOT / "docs" / "extract.md").read_text()
OPTIONS_MD = (ROOT / "docs" / "options.md").read_text()


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def kitchen(tmp_path_factory) -> Path:
    """A synthetic kitchen of 2 videos x 3 segments at 64x48 (train: P01_01, val: P01_02); built once."""
    from leap_cli.synth.kitchen import KitchenConfig

    root = tmp_path_factory.mktemp("k59") / "kitchen"
    return config_kitchen_copy(tmp_path_factory, root, KitchenConfig(videos=2, segments_per_video=3, width=64,
                                                                     height=48, sample_rate=8000))


def _copy(kitchen: Path, dest: Path) -> Path:
    shutil.copytree(kitchen, dest, ignore=shutil.ignore_patterns(".leap-kitchen.lock"))
    return dest


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# -- options.md: an empty path value is refused -------------------------------------------------------------------

def test_an_empty_frame_cache_value_is_refused_like_every_path_option(kitchen, tmp_path, monkeypatch, capsys):
    """options.md: "A path option given an empty value (`--workdir "$WORK"` with `WORK` unset in a job script) is
    refused in one line"; its --workdir row counts `--frame-cache` among "every path a command is given". --out,
    --annotations and the weights options are refused so (checked here as the baseline); `--frame-cache ""` runs,
    writing the default WORKDIR/frame-cache the job script meant to send elsewhere. Was wrong: code wrong: extract's
    --frame-cache is typed str, so cli.empty_path_option skips it and commands/extract._frame_cache_dir takes '' for
    the default WORKDIR/frame-cache instead of refusing it as options.md says."""
    assert "A path option given an empty value" in _flat(OPTIONS_MD) and "`--frame-cache`" in OPTIONS_MD
    work = tmp_path / "w"
    work.mkdir()
    base = ("extract", "--data", str(kitchen), "--workdir", str(work), "--split", "val", "--components",
            "narration", "--limit", "1")
    code, out, err = leap_main(monkeypatch, capsys, *base, "--out", "")
    assert code == 2 and "--out is empty" in _flat(err), out + err
    code, out, err = leap_main(monkeypatch, capsys, *base, "--frame-cache", "")
    assert code == 2, out + err
    assert "--frame-cache is empty" in _flat(err)
    # the other text options that name a path or a run: a run took the config's name, a checkpoint "." was a folder
    for args in (("train", "-c", "tiny-synthetic", "--workdir", str(work), "--name", ""),
                 ("evaluate", "--split", "val", "--workdir", str(work), "--checkpoint", "")):
        code, out, err = leap_main(monkeypatch, capsys, *args)
        assert code == 2 and f"{args[-2]} is empty" in _flat(err), out + err


# -- README / extract.md: a resume keeps what the CSV as it is still makes ------------------------------------------

def test_extract_resume_ignores_a_csv_saved_again_and_redoes_just_the_changed_row(kitchen, tmp_path, monkeypatch,
                                                                                  capsys):
    """extract.md "Running long": "A CSV saved again with the same values (other quoting, line ends, decimals)
    changes nothing"; README: after a new version of a split's CSV, "extract ... make[s] again just the records of
    the rows that changed"."""
    assert "A CSV saved again with the same values (other quoting, line ends, decimals) changes nothing" in \
        _flat(EXTRACT_MD)
    data = _copy(kitchen, tmp_path / "data")
    work = tmp_path / "w"
    args = ("extract", "--data", str(data), "--workdir", str(work), "--split", "train", "--components",
            "narration", "--frame-cache", "none")
    code, out, err = leap_main(monkeypatch, capsys, *args)
    assert code == 0, out + err
    out_file = work / "descriptors" / "train.jsonl"
    first = _records(out_file)
    assert len(first) == 3

    csv_path = data / "annotations" / "EPIC_100_train.csv"
    with csv_path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    head = rows[0]
    for row in rows[1:]:  # the same times with more decimals, every cell quoted, CRLF line ends
        for col in ("narration_timestamp", "start_timestamp", "stop_timestamp"):
            row[head.index(col)] += "00"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\r\n").writerows(rows)
    code, out, err = leap_main(monkeypatch, capsys, *args)
    assert code == 0, out + err
    assert "3 done before, 0 written now: nothing to do" in _flat(out), out
    assert _records(out_file) == first

    rows[2][head.index("narration")] = "pour oil slowly into pan"  # a new version of one row
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\r\n").writerows(rows)
    code, out, err = leap_main(monkeypatch, capsys, *args)
    assert code == 0, out + err
    said = _flat(out)
    assert "2 done before, 1 written now" in said and "made from other annotations" in said, said
    after = {r["narration_id"]: r for r in _records(out_file)}
    assert len(after) == 3
    changed = rows[2][head.index("narration_id")]
    assert after[changed]["components"]["narration"]["data"]["narration"] == "pour oil slowly into pan"
    assert all(after[r["narration_id"]] == r for r in first if r["narration_id"] != changed)


# -- README: annotations first, the videos later ------------------------------------------------------------------

def test_retry_errors_fills_in_what_an_annotations_only_run_marked_unavailable(kitchen, tmp_path, monkeypatch,
                                                                                capsys):
    """README step 2: "Without the videos yet (annotations only), extract writes the narration and marks audio,
    camera, objects and hands unavailable (no video); `--retry-errors` fills them in once the videos are there";
    extract.md: a plain rerun notes how many (it redoes nothing)."""
    assert "`--retry-errors` fills them in once the videos are there" in _flat(README)
    data = tmp_path / "data"
    data.mkdir()
    shutil.copytree(kitchen / "annotations", data / "annotations")
    work = tmp_path / "w"
    args = ("extract", "--data", str(data), "--workdir", str(work), "--split", "train", "--frame-cache", "none")
    code, out, err = leap_main(monkeypatch, capsys, *args)
    assert code == 0, out + err
    out_file = work / "descriptors" / "train.jsonl"
    for r in _records(out_file):
        assert {k: v["status"] for k, v in r["components"].items()} == {
            "narration": "ok", "audio": "unavailable", "camera": "unavailable", "objects": "unavailable",
            "hands": "unavailable"}
    for part in ("P01", "hand-objects", "poses"):  # the download arrives
        shutil.copytree(kitchen / part, data / part)
    code, out, err = leap_main(monkeypatch, capsys, *args)
    assert code == 0 and "nothing to do" in out and "--retry-errors redoes them" in _flat(out), out + err
    assert all(r["components"]["camera"]["status"] == "unavailable" for r in _records(out_file))
    code, out, err = leap_main(monkeypatch, capsys, *args, "--retry-errors")
    assert code == 0, out + err
    records = _records(out_file)
    assert len(records) == 3 and len({r["narration_id"] for r in records}) == 3
    for r in records:
        assert {v["status"] for v in r["components"].values()} == {"ok"}, r["narration_id"]


# -- extract.md / options.md: the hand-object JSONL form ------------------------------------------------------------

def test_hand_objects_jsonl_with_a_bom_and_numeric_states_reads_as_the_pickle(kitchen, tmp_path, monkeypatch,
                                                                              capsys):
    """extract.md `hands`: a `.jsonl` line is one frame, "states and sides by EPIC's names or numbers"
    (PORTABLE_OBJECT 3, RIGHT 1); README's tree: `P01/hand-objects/P01_01.pkl` (or .jsonl; or hand-objects/P01/);
    options.md: "the detection files it reads may start with a UTF-8 BOM". The same detections as JSONL give the
    pickle's hands and objects."""
    from leap_cli.epic.hand_objects import read_hand_objects

    assert "states and sides by EPIC's names or numbers" in EXTRACT_MD and "may start with a UTF-8 BOM" in OPTIONS_MD
    pkl_data = _copy(kitchen, tmp_path / "pkl")
    jsonl_data = _copy(kitchen, tmp_path / "jsonl")
    pkl = jsonl_data / "hand-objects" / "P01" / "P01_01.pkl"
    lines = []
    for frame in read_hand_objects(pkl):
        d = frame.to_dict()
        for h, det in zip(d["hands"], frame.hands):
            h["state"], h["side"] = int(det.state), int(det.side)  # by number, as EPIC's protobuf
        lines.append(json.dumps(d))
    assert any('"state": 3' in x for x in lines)
    pkl.unlink()
    (jsonl_data / "P01" / "hand-objects").mkdir()
    (jsonl_data / "P01" / "hand-objects" / "P01_01.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8-sig")
    texts = []
    for data in (pkl_data, jsonl_data):
        work = data.parent / f"w-{data.name}"
        code, out, err = leap_main(monkeypatch, capsys, "extract", "--data", str(data), "--workdir", str(work),
                                   "--split", "train", "--components", "narration,objects,hands",
                                   "--frame-cache", "none")
        assert code == 0, out + err
        recs = _records(work / "descriptors" / "train.jsonl")
        assert all(r["components"]["hands"]["status"] == "ok" for r in recs), data
        texts.append([(r["components"]["hands"]["text"], r["components"]["objects"]["text"]) for r in recs])
        if data is jsonl_data:
            assert {r["components"]["hands"]["source"] for r in recs} == {"hand-objects:P01_01.jsonl"}
    assert texts[0] == texts[1]
