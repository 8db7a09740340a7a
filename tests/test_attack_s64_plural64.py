"""Counts in user-facing text read right for one (plural64): `counted()` and a few messages at n == 1 and n == 2.

Before: "1 records of earlier runs were made ...", "1 shard(s)", "1 requests timed out ... and were abandoned",
"1 records are not segments of the val split", "9 records, 1 duplicates, 1 lines that are not records"."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from leap_cli.common import counted


def test_counted_says_the_noun_in_the_number_of_its_count():
    assert counted(1, "record") == "1 record"
    assert counted(2, "record") == "2 records" and counted(0, "record") == "0 records"
    assert counted(1, "reply", "replies") == "1 reply" and counted(3, "reply", "replies") == "3 replies"
    assert counted(1234, "record", sep=True) == "1,234 records" and counted(1, "record", sep=True) == "1 record"
    assert counted(1234, "record") == "1234 records"


def _summary(timed_out: int) -> SimpleNamespace:
    return SimpleNamespace(rate_limited=timed_out, lowest_concurrency=None, steady_concurrency=None, concurrency=4,
                           held_seconds=3.0, statuses={"failed": timed_out}, timed_out=timed_out)


def test_generate_programs_endpoint_notes_at_one_and_two():
    from leap_cli.commands.programs import endpoint_notes

    one = " | ".join(endpoint_notes(_summary(1)))
    assert "the server refused 1 request with HTTP 429" in one, one
    assert "--retry-errors for the 1 record written failed" in one, one
    assert "1 request timed out (--timeout) and was abandoned: the server may still have generated and billed it; " \
           "it is not in the estimated cost" in one, one
    two = " | ".join(endpoint_notes(_summary(2)))
    assert "the server refused 2 requests with HTTP 429" in two and "for the 2 records written failed" in two, two
    assert "2 requests timed out (--timeout) and were abandoned: the server may still have generated and billed " \
           "them; they are not in the estimated cost" in two, two


def _rep(records: int, duplicates: int, malformed: int, not_in_split: int) -> dict:
    return {"split": "val", "files": ["p.jsonl"], "records": records, "duplicates": duplicates,
            "malformed": [{"file": "p.jsonl", "line": i + 1, "problem": "not JSON"} for i in range(malformed)],
            "statuses": {"valid": records}, "coverage": {"valid": records, "segments": 4, "fraction": 0.25,
                                                         "not_in_split": not_in_split,
                                                         "not_in_split_examples": ["P99_99_0"]},
            "control_flow": {}, "histograms": {"verbs": {}, "objects": {}, "predicates": {}, "steps": {}}}


def test_programs_page_counts_at_one_and_two():
    from leap_cli.report.programs_html import programs_report_html

    one = programs_report_html(_rep(1, 1, 1, 1))
    assert "1 record, 1 duplicate &middot; 1 line that is not a record" in one
    assert "<b>1 record is not a segment of the val split</b>" in one
    two = programs_report_html(_rep(2, 2, 2, 2))
    assert "2 records, 2 duplicates &middot; 2 lines that are not records" in two
    assert "<b>2 records are not segments of the val split</b>" in two


def test_a_key_written_twice_is_warned_of_in_the_number_of_its_count(tmp_path, caplog):
    from leap_cli.io import JsonlAppender

    for twice, said in ((1, "1 record was there twice (a run stopped while redoing it"),
                        (2, "2 records were there twice (a run stopped while redoing them")):
        path = tmp_path / f"{twice}.jsonl"
        path.write_text("".join(f'{{"narration_id": "a{i}"}}\n' for i in range(3))
                        + "".join(f'{{"narration_id": "a{i}"}}\n' for i in range(twice)))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="leap_cli"):
            with JsonlAppender(path, keep_records=True):
                pass
        assert said in caplog.text, caplog.text


def test_extract_notes_at_one_and_two(monkeypatch):
    from leap_cli.commands import extract as cmd

    printed = []
    monkeypatch.setattr(cmd.console, "print", lambda *a, **k: printed.append(" ".join(map(str, a))))
    for n in (1, 2):
        s = SimpleNamespace(retryable=n)
        cmd._print_retryable(s, of_them=False)
        cmd._print_retryable(s, of_them=True)
    said = " | ".join(printed)
    assert "note: 1 record of earlier runs holds a component that failed" in said, said
    assert "note: 1 of them holds a component" in said and "--retry-errors redoes it" in said, said
    assert "note: 2 records of earlier runs hold a component that failed" in said, said
    assert "note: 2 of them hold a component" in said and "--retry-errors redoes them" in said, said
