import json

import pytest

from leap_cli.common import ShardSpec, normalize_split
from leap_cli.errors import LeapError
from leap_cli.io import JsonlAppender, atomic_write_text, read_jsonl, stable_hash


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    p = tmp_path / "out.txt"
    atomic_write_text(p, "old")
    from leap_cli.io import atomic_path

    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["out.txt"]


def test_jsonl_resume_skips_done_and_repairs_truncated_line(tmp_path):
    p = tmp_path / "r.jsonl"
    with JsonlAppender(p) as w:
        assert w.write({"narration_id": "a", "v": 1})
        assert w.write({"narration_id": "b", "v": 2})
        assert not w.write({"narration_id": "a", "v": 3})
    with open(p, "a") as f:
        f.write('{"narration_id": "c", "v"')  # a crash mid-line
    with JsonlAppender(p) as w:
        assert set(w.records) == {"a", "b"}
        assert w.write({"narration_id": "c", "v": 4})
    recs = read_jsonl(p)
    assert [r["narration_id"] for r in recs] == ["a", "b", "c"] and recs[2]["v"] == 4


def test_jsonl_replace_keys_redoes_records(tmp_path):
    p = tmp_path / "r.jsonl"
    with JsonlAppender(p) as w:
        w.write({"narration_id": "a", "status": "error"})
        w.write({"narration_id": "b", "status": "ok"})
    with JsonlAppender(p, replace_keys=["a"]) as w:
        assert "a" not in w and "b" in w
        w.write({"narration_id": "a", "status": "ok"})
    assert [(r["narration_id"], r["status"]) for r in read_jsonl(p)] == [("b", "ok"), ("a", "ok")]


def test_corrupt_middle_line_is_an_error(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps({"a": 1}) + "\n{oops\n" + json.dumps({"a": 2}) + "\n")
    with pytest.raises(LeapError, match=r"\[line 2\]"):
        read_jsonl(p)


def test_split_names_and_shards():
    assert normalize_split("validation") == "val" and normalize_split("VAL") == "val"
    with pytest.raises(LeapError, match="unknown split"):
        normalize_split("dev")
    items = list(range(10))
    parts = [ShardSpec.parse(f"{i}/3").select(items) for i in range(3)]
    assert sorted(sum(parts, [])) == items
    vids = ["v1", "v1", "v2", "v3", "v3", "v3"]
    by_video = [ShardSpec(i, 2).select(vids, key=lambda v: v) for i in range(2)]
    assert by_video == [["v1", "v1", "v3", "v3", "v3"], ["v2"]]
    for bad in ("3/3", "x", "1/0"):
        with pytest.raises(LeapError):
            ShardSpec.parse(bad)
    assert stable_hash({"b": 1, "a": 2}) == stable_hash({"a": 2, "b": 1})
