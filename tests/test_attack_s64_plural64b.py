"""Counts in user-facing text read right for one (plural64b, after plural64): submit's and the scores reader's
refusals, generate-programs' notes on records done before, the DataLoader workers' note, the context clips'
refusal, the annotation row notes and the Batch file's limits, at n == 1 (and the n != 1 text where it is kept).

Before: "1 narration id(s) of EPIC_100_test_timestamps.csv have no scores", "1 duplicated narration id(s)",
"missing key(s) noun_output", "1 of the records done before is failed ...: add --retry-errors to ask for them
again", "1 DataLoader worker(s) (1 CPU(s) for this process, 1 batch(es))", "the shards hold 1 context clip(s)",
"1 row(s) of no length", "at most 1 requests"."""

from __future__ import annotations

import dataclasses
import logging
from types import SimpleNamespace

import pytest
import torch

from leap_cli.errors import LeapError


def test_submit_names_one_missing_or_unknown_narration_id_in_the_singular():
    from leap_cli.submit import _check_ids

    with pytest.raises(LeapError) as e:
        _check_ids(["a"], ["a", "b"], "s.pt")
    assert e.value.message.startswith("1 narration id of EPIC_100_test_timestamps.csv has no scores: b"), e.value.message
    with pytest.raises(LeapError) as e:
        _check_ids(["a", "b", "x"], ["a", "b"], "s.pt")
    assert e.value.message.startswith("1 narration id is not in EPIC_100_test_timestamps.csv: x"), e.value.message
    with pytest.raises(LeapError) as e:  # (n != 1: the plural, and the verb with it)
        _check_ids(["a"], ["a", "b", "c"], "s.pt")
    assert e.value.message.startswith("2 narration ids of EPIC_100_test_timestamps.csv have no scores"), \
        e.value.message


def test_scores_reader_says_one_duplicate_and_one_missing_key_in_the_singular():
    from leap_cli.evaluate.scores import normalize_scores

    out = torch.zeros(3, 4)
    with pytest.raises(LeapError) as e:
        normalize_scores({"narration_id": ["a", "b", "a"], "verb_output": out, "noun_output": out})
    assert e.value.message.startswith("1 duplicated narration id, e.g. a"), e.value.message
    with pytest.raises(LeapError) as e:
        normalize_scores({"narration_id": ["a", "b", "c"], "verb_output": out})
    assert e.value.message == "missing key noun_output", e.value.message
    with pytest.raises(LeapError) as e:
        normalize_scores({"narration_id": ["a", "b", "c"]})
    assert e.value.message == "missing keys verb_output, noun_output", e.value.message


def test_records_done_before_are_asked_for_again_as_it_at_one_and_them_at_two():
    from leap_cli.commands.programs import not_valid_notes

    failed, invalid = not_valid_notes({"failed": 1, "invalid": 1})
    assert failed.endswith("add --retry-errors to ask for it again"), failed
    assert invalid.endswith("add --retry-invalid to ask for it again (its reply is not taken from the cache)"), invalid
    failed, invalid = not_valid_notes({"failed": 2, "invalid": 3})  # (other tests match this text: kept)
    assert failed.endswith("add --retry-errors to ask for them again"), failed
    assert invalid.endswith("ask for them again (their replies are not taken from the cache)"), invalid


def test_one_dataloader_worker_one_cpu_one_batch_in_the_singular(monkeypatch, caplog):
    import leap_cli.common
    import leap_cli.shards.dataset as dataset

    monkeypatch.setattr(leap_cli.common, "usable_cpus", lambda: 1)
    monkeypatch.setattr(dataset, "share_by_name_under_a_low_limit", lambda workers: None)
    monkeypatch.setattr(dataset, "short_temp_dir_for_workers", lambda workers: None)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    with caplog.at_level(logging.INFO, logger="leap_cli"):
        assert dataset.loader_workers(4, "--workers", samples=2, batch_size=2) == 1
    assert "--workers 4: 1 DataLoader worker (1 CPU for this process, 1 batch)" in caplog.text, caplog.text


def test_shards_with_one_context_clip_are_refused_in_the_singular(tmp_path):
    from leap_cli.shards.dataset import check_context

    ds = SimpleNamespace(manifest={"task": "anticipation"}, context=1)
    with pytest.raises(LeapError) as e:
        check_context(ds, 2, "--context", tmp_path)
    assert e.value.message == "the shards hold 1 context clip before each action, the model takes 2", e.value.message


def test_one_annotation_row_of_no_length_is_one_row(epic_dir):
    from leap_cli.epic.annotations import Annotations

    a = Annotations(epic_dir)
    seg = a.segments("val")[0]
    (note,) = a.row_notes([dataclasses.replace(seg, stop=seg.start, stop_frame=seg.start_frame)])
    assert note.startswith("1 row of no length (stop equals start"), note


def test_a_batch_file_of_at_most_one_request_is_said_in_the_singular():
    from leap_cli.programs.batch import write_batch_file

    with pytest.raises(LeapError) as e:
        write_batch_file(None, "b.jsonl", max_requests=1, max_mb=0)
    assert e.value.message == "a Batch input file of at most 1 request and 0 MB is no limit", e.value.message
