"""The non-video stages grow linearly with the number of segments (scaled-down guards of EPIC-100-sized runs).

Session 61's helper "scale62" timed extract (annotations only), generate-programs (offline), validate-programs,
info, evaluate --scores, submit, show and build-shards at n, 4n and the 67k rows of an EPIC-sized train split and
found every step linear (RESULTS). These tests keep that shape without timing anything: at two sizes of the same
split they count the work a command does (JSON lines parsed, segments described, programs asked for or checked,
output rewrites) and expect it to grow by exactly one unit per record, or not at all where nothing is to do. A
stage that read its output twice, re-described finished segments or rewrote the file once per record would double
(or square) a count here long before a user saw a 67k-record rerun slow down.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leap_cli.cli import app
from tests.conftest import EPIC_EXCERPT

SMALL, LARGE = 40, 160  # n and 4n segments


def _root(tmp: Path, n: int) -> Path:
    """A dataset root holding the excerpt's annotation files and a train split of ``n`` segments (the excerpt's
    rows again and again under new narration ids of their videos); no videos: narration-only records."""
    root = tmp / f"root{n}"
    ann = root / "annotations"
    ann.mkdir(parents=True)
    for f in EPIC_EXCERPT.glob("*.csv"):
        if f.name != "EPIC_100_train.csv":
            shutil.copy(f, ann / f.name)
    with (EPIC_EXCERPT / "EPIC_100_train.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for i in range(n):
        r = dict(rows[i % len(rows)])
        r["narration_id"] = f"{r['video_id']}_{1000 + i}"
        out.append(r)
    with (ann / "EPIC_100_train.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(out)
    return root


def _leap(*args: str) -> None:
    r = CliRunner().invoke(app, list(args))
    assert r.exit_code == 0, (args, r.output, r.exception)


class _Counter:
    def __init__(self):
        self.n = 0


def _count_json_parses(monkeypatch) -> _Counter:
    """Counts ``json.loads`` (every JSONL line read goes through it, and so does ``json.load``)."""
    c = _Counter()
    real = json.loads

    def loads(*a, **k):
        c.n += 1
        return real(*a, **k)

    monkeypatch.setattr(json, "loads", loads)
    return c


def _lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


@pytest.fixture(scope="module")
def worked(tmp_path_factory):
    """For SMALL and LARGE: (root, workdir) after extract and generate-programs (offline) ran once."""
    tmp = tmp_path_factory.mktemp("scale62")
    out = {}
    for n in (SMALL, LARGE):
        root, work = _root(tmp, n), tmp / f"work{n}"
        _leap("extract", "--data", str(root), "--split", "train", "--workdir", str(work), "--frame-cache", "none")
        _leap("generate-programs", "--data", str(root), "--split", "train", "--workdir", str(work))
        assert _lines(work / "descriptors" / "train.jsonl") == n
        assert _lines(work / "programs" / "train.jsonl") == n
        out[n] = (root, work)
    return out


def _extract_rerun(monkeypatch, root: Path, work: Path, *extra: str) -> tuple[int, int]:
    """(JSON parses, segments described) of an extract rerun over a finished output."""
    from leap_cli.extract import runner

    described = _Counter()
    real = runner.describe_segment

    def describe_segment(*a, **k):
        described.n += 1
        return real(*a, **k)

    monkeypatch.setattr(runner, "describe_segment", describe_segment)
    parses = _count_json_parses(monkeypatch)
    _leap("extract", "--data", str(root), "--split", "train", "--workdir", str(work), "--frame-cache", "none", *extra)
    monkeypatch.undo()
    return parses.n, described.n


def test_extract_rerun_with_nothing_pending_reads_each_record_once_and_describes_none(worked, monkeypatch):
    """The resume scan of a finished output: one parse per record (4n records cost 3n more parses than n, not
    6n or n^2), and no segment described again."""
    (p_small, d_small), (p_large, d_large) = (_extract_rerun(monkeypatch, *worked[n]) for n in (SMALL, LARGE))
    assert d_small == d_large == 0
    assert p_large - p_small == LARGE - SMALL, (p_small, p_large)


def test_extract_retry_errors_redoes_each_segment_once_and_rewrites_the_output_once(worked, monkeypatch,
                                                                                      tmp_path):
    """``--retry-errors`` over records made without videos redoes every segment (cause "video"): each is described
    once, and the file is rewritten once at the end (not once per redone record), one line per segment after."""
    from leap_cli import io

    counts = {}
    for n in (SMALL, LARGE):
        root, work = worked[n]
        copy = tmp_path / f"w{n}"
        shutil.copytree(work / "descriptors", copy / "descriptors")
        rewrites = _Counter()
        real = io.JsonlAppender._rewrite

        def _rewrite(self, keep, real=real, rewrites=rewrites):
            rewrites.n += 1
            return real(self, keep)

        monkeypatch.setattr(io.JsonlAppender, "_rewrite", _rewrite)
        parses, described = _extract_rerun(monkeypatch, root, copy, "--retry-errors")
        counts[n] = (parses, described, rewrites.n)
        assert _lines(copy / "descriptors" / "train.jsonl") == n
    assert counts[SMALL][1:] == (SMALL, 1) and counts[LARGE][1:] == (LARGE, 1), counts
    # the scan parses the n old lines, the one rewrite the n old and the n new ones: 3 parses a record
    assert counts[LARGE][0] - counts[SMALL][0] == 3 * (LARGE - SMALL), counts


def test_generate_rerun_with_nothing_pending_reads_descriptors_and_programs_once(worked, monkeypatch):
    """generate-programs with every program made: the descriptors and the programs file are each parsed once
    (2 parses a record), and the offline backend is asked for nothing."""
    from leap_cli.programs import backends

    counts = {}
    for n in (SMALL, LARGE):
        root, work = worked[n]
        asked = _Counter()
        real = backends.OfflineBackend.complete

        async def complete(self, request, real=real, asked=asked):
            asked.n += 1
            return await real(self, request)

        monkeypatch.setattr(backends.OfflineBackend, "complete", complete)
        parses = _count_json_parses(monkeypatch)
        _leap("generate-programs", "--data", str(root), "--split", "train", "--workdir", str(work))
        counts[n] = (parses.n, asked.n)
        monkeypatch.undo()
    assert counts[SMALL][1] == counts[LARGE][1] == 0, counts
    assert counts[LARGE][0] - counts[SMALL][0] == 2 * (LARGE - SMALL), counts


def test_validate_programs_checks_each_program_once(worked, monkeypatch):
    """validate-programs streams the file in two passes (the last line of each id, then the check: one record held
    at a time): each program checked once (schema + semantics), two parses a line."""
    from leap_cli.programs import report

    counts = {}
    for n in (SMALL, LARGE):
        root, work = worked[n]
        checked = _Counter()
        real = report.check_program

        def check_program(*a, real=real, checked=checked, **k):
            checked.n += 1
            return real(*a, **k)

        monkeypatch.setattr(report, "check_program", check_program)
        parses = _count_json_parses(monkeypatch)
        _leap("validate-programs", "--data", str(root), "--split", "train", "--workdir", str(work))
        counts[n] = (checked.n, parses.n)
        monkeypatch.undo()
    assert counts[SMALL][0] == SMALL and counts[LARGE][0] == LARGE, counts
    assert counts[LARGE][1] - counts[SMALL][1] == 2 * (LARGE - SMALL), counts


def _parses_of(monkeypatch, *args: str, exit_codes=(0,)) -> int:
    parses = _count_json_parses(monkeypatch)
    r = CliRunner().invoke(app, list(args))
    monkeypatch.undo()
    assert r.exit_code in exit_codes, (args, r.output, r.exception)
    return parses.n


def test_show_parses_only_the_segment_it_shows(worked, monkeypatch):
    """``leap show ID`` of the last segment of a split finds its lines without parsing the others: as many parses
    at 4n records as at n (at 67k records it took ~1 s, as at 2k)."""
    counts = {}
    for n in (SMALL, LARGE):
        _, work = worked[n]
        last = json.loads((work / "programs" / "train.jsonl").read_text().splitlines()[-1])["narration_id"]
        counts[n] = _parses_of(monkeypatch, "show", last, "--workdir", str(work), "--split", "train")
    assert counts[SMALL] == counts[LARGE] <= 4, counts


def test_build_shards_parses_each_program_line_once(worked, monkeypatch, tmp_path):
    """build-shards over programs whose segments have no video (every sample skipped, exit 3): the programs file is
    parsed once (one parse a record), and the descriptors once (the note on programs of a clip extract made again:
    ``programs_behind_clips``, 2.2 s at 67k records), whatever the split's size."""
    counts = {}
    for n in (SMALL, LARGE):
        root, work = worked[n]
        counts[n] = _parses_of(monkeypatch, "build-shards", "--data", str(root), "--split", "train", "--workdir",
                               str(work), "--out", str(tmp_path / f"shards{n}"), exit_codes=(3,))
    assert counts[LARGE] - counts[SMALL] == 2 * (LARGE - SMALL), counts
