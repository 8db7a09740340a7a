"""Memory of the non-video stages as the number of records grows (scaled-down checks of EPIC-100-sized runs).

Each test measures Python's traced allocations (``tracemalloc``) at two sizes of input and compares the growth per
record with what holding every record would cost: a stage that streams grows by a small, fixed amount (a key, a
counter), one that keeps its records grows by kilobytes per record.
"""

from __future__ import annotations

import json
import shutil
import tracemalloc

import pytest
import torch

from leap_cli import submit as sub
from leap_cli.epic.annotations import Annotations
from leap_cli.epic.classes import ClassVocab
from leap_cli.io import JsonlAppender
from leap_cli.programs.report import validate_records
from tests.program_helpers import excerpt_programs

HEAD = "narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,stop_frame"


def _traced(fn):
    """(result, peak bytes, bytes still held) of ``fn()`` under tracemalloc, from a fresh baseline."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        result = fn()
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak - base, held - base


# ---------------------------------------------------------------------------------------------------------- submit


def _test_annotations(tmp_path, epic_dir, n: int):
    """An annotations folder with EPIC's class files and a test split of ``n`` segments; (Annotations, ids)."""
    d = tmp_path / f"ann{n}"
    d.mkdir()
    for name in ("EPIC_100_verb_classes.csv", "EPIC_100_noun_classes.csv"):
        shutil.copy(epic_dir / name, d / name)
    ids = [f"P03_01_{i}" for i in range(n)]
    rows = [f"{nid},P03,P03_01,00:00:01.00,00:00:01.00,00:00:01.50,61,90" for nid in ids]
    (d / "EPIC_100_test_timestamps.csv").write_text(HEAD + "\n" + "\n".join(rows) + "\n")
    return Annotations(d), ids


def _scores(ids, nv, nn):
    g = torch.Generator().manual_seed(len(ids))
    return {"narration_id": list(ids), "verb_output": torch.randn(len(ids), nv, generator=g),
            "noun_output": torch.randn(len(ids), nn, generator=g)}


SMALL, LARGE = 300, 1200


@pytest.fixture(scope="module")
def submit_sizes(tmp_path_factory):
    """For SMALL and LARGE test splits: the traced peak of writing the zip lazily, of ``submit`` (write + check),
    and the size of the whole results dict as Python objects (what ``lazy=True`` exists to avoid)."""
    from tests.conftest import EPIC_EXCERPT

    tmp = tmp_path_factory.mktemp("submit")
    out = {}
    for n in (SMALL, LARGE):
        ann, ids = _test_annotations(tmp, EPIC_EXCERPT, n)
        nv, nn = sub.class_counts(ann)
        scores = _scores(ids, nv, nn)
        _, write_peak, _ = _traced(lambda: sub.write_submission(tmp / f"w{n}.zip", sub.make_submission(
            scores, "recognition", sls_pt=2, sls_tl=5, sls_td=3, lazy=True)))
        summary, submit_peak, _ = _traced(lambda: sub.submit(scores, ann, "recognition", tmp / f"s{n}.zip",
                                                             sls_pt=2, sls_tl=5, sls_td=3))
        assert summary["segments"] == n
        whole, _, whole_held = _traced(lambda: sub.make_submission(scores, "recognition", sls_pt=2, sls_tl=5,
                                                                   sls_td=3, lazy=False))
        assert len(whole["results"]) == n
        del whole
        out[n] = {"write": write_peak, "submit": submit_peak, "dict": whole_held}
    return out


def test_the_lazy_submission_write_does_not_hold_the_results(submit_sizes):
    """write_submission(make_submission(lazy=True)) writes a few segments at a time: its peak grows by far less
    per segment than the whole results dict does (397 Python floats and keys per segment, ~19 KB)."""
    s, l = submit_sizes[SMALL], submit_sizes[LARGE]
    dict_per_segment = (l["dict"] - s["dict"]) / (LARGE - SMALL)
    assert dict_per_segment > 5000  # (the measure sees the dict: 97 + 300 floats per segment)
    write_per_segment = (l["write"] - s["write"]) / (LARGE - SMALL)
    assert write_per_segment < 0.1 * dict_per_segment, (write_per_segment, dict_per_segment)


def test_submit_peak_does_not_grow_with_the_whole_results_dict(submit_sizes):
    """``leap submit`` on EPIC's 13k test segments peaked at 977 MB RSS (650 MB of it imports): the lazy write
    itself traced 13 MB, the check of the written zip 381 MB (the parsed JSON 246 MB, its text beside it), more
    than the 245 MB dict of ``lazy=False``. A check that streams the zip's entries (or checks each entry as it is
    written) would keep the peak near the write's."""
    s, l = submit_sizes[SMALL], submit_sizes[LARGE]
    dict_per_segment = (l["dict"] - s["dict"]) / (LARGE - SMALL)
    submit_per_segment = (l["submit"] - s["submit"]) / (LARGE - SMALL)
    assert submit_per_segment < 0.5 * dict_per_segment, (submit_per_segment, dict_per_segment)


# ------------------------------------------------------------------------------------------ validate-programs


def _program_file(path, n: int) -> None:
    """``n`` valid program records (the offline generator's programs of the validation excerpt, cycled)."""
    programs = list(excerpt_programs(8).values())
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"narration_id": f"P01_01_{i}", "status": "valid", "backend": "offline",
                                "model": "offline", "program": programs[i % len(programs)], "errors": []}) + "\n")


def test_validate_records_holds_one_record_at_a_time(tmp_path, epic_dir):
    """validate-programs reads the file twice so that one record is held at a time: per record it keeps a key and
    a line number (~200 B), not the record (a program record is ~1.5 KB of JSON, several KB as Python objects)."""
    verbs = ClassVocab.from_csv(epic_dir / "EPIC_100_verb_classes.csv", "verb")
    nouns = ClassVocab.from_csv(epic_dir / "EPIC_100_noun_classes.csv", "noun")
    peaks = {}
    for n in (200, 800):
        path = tmp_path / f"p{n}.jsonl"
        _program_file(path, n)
        report, peaks[n], _ = _traced(lambda: validate_records([path], verbs, nouns))
        assert report["records"] == n and report["statuses"]["valid"] == n  # (every record was checked)
    # what holding the records would cost, measured the same way
    lines = (tmp_path / "p800.jsonl").read_text().splitlines()
    held_all, _, held = _traced(lambda: [json.loads(x) for x in lines])
    assert len(held_all) == 800
    per_record_held = held / 800
    assert per_record_held > 2000
    per_record = (peaks[800] - peaks[200]) / 600
    assert per_record < 0.25 * per_record_held, (per_record, per_record_held)


# ----------------------------------------------------------------------------- extract / generate-programs output


def test_jsonl_appender_keeps_keys_not_records(tmp_path):
    """The appender of extract and generate-programs keeps only the keys of what it wrote and of what it found on
    resume (a split's descriptor records would not fit): per 2 KB record, a few hundred bytes at most."""
    path = tmp_path / "out.jsonl"
    pad = "x" * 2000

    def write(keys):
        with JsonlAppender(path) as app:
            for k in keys:
                assert app.write({"narration_id": k, "pad": pad})
        return app

    _, _, held_small = _traced(lambda: write([f"a_{i}" for i in range(200)]))
    path.unlink()
    _, _, held_large = _traced(lambda: write([f"a_{i}" for i in range(1000)]))
    assert (held_large - held_small) / 800 < 300  # (the appender is closed: it should hold nothing of them)

    def resume():
        app = JsonlAppender(path)
        return app, all(f"a_{i}" in app for i in range(1000))

    (app, found), peak, held = _traced(resume)
    try:
        assert found and "a_1000" not in app
        assert held / 1000 < 400, held / 1000  # keys, not the 2 KB records
        assert peak / 1000 < 2000, peak / 1000  # read one line at a time, not the file into a list
    finally:
        app.close()


def test_extract_summary_stays_small_over_a_long_run():
    """ExtractSummary is fed every record of a run: the error groups keep a few example segments, and unavailable
    reasons that differ only by their numbers (one per segment past a video's end) count under one key."""
    from leap_cli.extract.runner import ERROR_EXAMPLES, ExtractSummary

    summary = ExtractSummary(out=None)

    def record(i):
        return {"narration_id": f"P01_01_{i}", "components": {
            "narration": {"status": "ok", "data": {}},
            "audio": {"status": "error", "data": {"error": "cannot decode", "detail": "P01_01.wav: cannot decode"}},
            "camera": {"status": "unavailable", "data": {"reason": f"segment ends at {i}.5 s, past the video's "
                                                                   f"end at {i + 0.25} s"}},
            "objects": {"status": "ok", "data": {}}, "hands": {"status": "ok", "data": {}}}}

    def feed(n):
        for i in range(n):
            summary.add(record(i), {"audio": 0.001})

    _, _, held_first = _traced(lambda: feed(500))
    _, _, held_more = _traced(lambda: feed(2000))
    assert summary.written == 2500
    group = summary.errors["P01_01.wav: cannot decode"]
    assert group["count"] == 2500 and group["n_segments"] == 2500 and len(group["segments"]) == ERROR_EXAMPLES
    assert len(summary.unavailable) == 1 and sum(summary.unavailable.values()) == 2500
    assert held_more / 2000 < 50, (held_first, held_more)  # no per-record state
