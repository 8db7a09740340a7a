"""Attack on session 52's last changes: --retry-invalid asking anew for a record the program cache alone makes
invalid (``ProgramGenerator.run_one``), the dry run's estimate running cached turns read-only, ``starts_over`` in
``dry_run``, and ``io.json_line`` (U+2028/U+2029/NEL escaped in every JSONL leap writes)."""

from __future__ import annotations

import json
import sqlite3

import pytest

from leap_cli.io import read_jsonl
from leap_cli.programs.generate import dry_run, estimate_cost, generate_programs
from leap_cli.programs.store import ProgramStore
from tests.program_helpers import server_config as config
from tests.programs_llm_server import Reply, ScriptedServer, narration_id_of
from tests.test_programs_estimate import offline_config
from tests.test_programs_generate import N_SEGMENTS, good_programs, records, workdir  # noqa: F401 (the fixtures)


def _bad(program: dict) -> dict:
    program = json.loads(json.dumps(program))
    program["steps"][0]["verb"] = "teleport"  # parses, fails validation
    return program


def _tables(path) -> dict:
    """Every row of every table of a SQLite file (closed first by the store so its buffers are on disk)."""
    db = sqlite3.connect(path)
    try:
        names = [n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return {n: sorted(map(repr, db.execute(f"SELECT * FROM {n}").fetchall())) for n in names}
    finally:
        db.close()


def _calls(cfg, nid):
    db = sqlite3.connect(cfg.cache_path)
    try:
        cols = [c[1] for c in db.execute("PRAGMA table_info(calls)")]
        return [dict(zip(cols, row)) for row in db.execute("SELECT * FROM calls") if dict(zip(cols, row))["narration_id"] == nid]
    finally:
        db.close()


def _lost_output_with_a_cached_invalid(workdir, good_programs, server_script_bad, **kw):
    """A first run (repair_rounds from kw) whose first segment is answered invalid; then the output is lost."""
    first = sorted(good_programs)[0]
    with ScriptedServer(server_script_bad(first)) as server:
        s = generate_programs(config(workdir, server, concurrency=1, **kw))
        assert s.statuses["invalid"] == 1
    (workdir / "programs" / "val.jsonl").unlink()
    return first


def _bad_first(good_programs):
    def make(first):
        def script(body, n):
            program = good_programs[narration_id_of(body)]
            return Reply(json.dumps(_bad(program) if narration_id_of(body) == first else program))
        return script
    return make


def test_reask_summary_counts_and_call_log(workdir, good_programs):  # noqa: F811
    """A lost output re-made under --retry-invalid: the one segment the cache answers invalid is asked once; the
    others come from the cache. The summary says 1 backend call and the statuses of what was written."""
    first = _lost_output_with_a_cached_invalid(workdir, good_programs, _bad_first(good_programs), repair_rounds=0)
    good = lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))  # noqa: E731
    with ScriptedServer(good) as server:
        cfg = config(workdir, server, concurrency=1, repair_rounds=0, retry_invalid=True)
        s = generate_programs(cfg)
        assert [narration_id_of(b) for b in server.requests] == [first]
    assert s.statuses == {"valid": N_SEGMENTS} and s.requests == 1
    assert {r["narration_id"]: r["status"] for r in records(workdir)}[first] == "valid"
    rec = [r for r in records(workdir) if r["narration_id"] == first][0]
    assert rec["provenance"]["cached"] is False and rec["provenance"]["rounds"] == 1
    rows = _calls(cfg, first)
    assert [(r["cached"], r["outcome"]) for r in rows][-2:] == [(1, "invalid"), (0, "valid")]  # replay, then the paid one


def test_reask_is_not_also_a_cache_hit(workdir, good_programs):  # noqa: F811
    """6 records, one asked anew: the summary said '6 cache hits' beside '1 backend call' (7 answers for 6).
    Was wrong: the cached turn run_one threw away to ask anew was counted."""
    _lost_output_with_a_cached_invalid(workdir, good_programs, _bad_first(good_programs), repair_rounds=0)
    good = lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))  # noqa: E731
    with ScriptedServer(good) as server:
        s = generate_programs(config(workdir, server, concurrency=1, repair_rounds=0, retry_invalid=True))
    assert s.requests == 1 and s.cache_hits == N_SEGMENTS - 1


def test_reask_past_max_cost_leaves_the_segment_pending_and_pays_nothing(workdir, good_programs):  # noqa: F811
    """--max-cost already reached: the cache's valid answers are still written (free), the segment the cache makes
    invalid is not re-asked (nothing paid) and not written from its invalid reply either: it stays pending, and the
    rerun with a raised cap asks for it alone."""
    first = _lost_output_with_a_cached_invalid(workdir, good_programs, _bad_first(good_programs), repair_rounds=0)
    good = lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))  # noqa: E731
    with ScriptedServer(good) as server:
        s = generate_programs(config(workdir, server, concurrency=1, repair_rounds=0, retry_invalid=True,
                                     max_cost=0.001))
        assert not server.requests and s.cost == 0 and s.stopped and "max-cost" in s.stopped
        assert s.statuses == {"valid": N_SEGMENTS - 1}
        assert first not in {r["narration_id"] for r in records(workdir)}
        s = generate_programs(config(workdir, server, concurrency=1, repair_rounds=0, retry_invalid=True))
        assert [narration_id_of(b) for b in server.requests] == [first] and s.statuses == {"valid": 1}
    assert len(records(workdir)) == N_SEGMENTS and all(r["status"] == "valid" for r in records(workdir))


def test_reask_failed_by_the_server_writes_a_failed_record(workdir, good_programs):  # noqa: F811
    """The re-ask gets 500s: the record written is 'failed' (the request's error), one backend call per attempt;
    a --retry-errors rerun with the server back asks again."""
    first = _lost_output_with_a_cached_invalid(workdir, good_programs, _bad_first(good_programs), repair_rounds=0)
    down = lambda body, n: Reply("{}", status=500)  # noqa: E731
    with ScriptedServer(down) as server:
        s = generate_programs(config(workdir, server, concurrency=1, repair_rounds=0, retry_invalid=True,
                                     max_retries=1), reraise=False)
        asked = len(server.requests)
    assert asked >= 1 and all(narration_id_of(b) == first for b in server.requests)
    assert s.statuses == {"valid": N_SEGMENTS - 1, "failed": 1}
    assert {r["narration_id"]: r["status"] for r in records(workdir)}[first] == "failed"
    good = lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))  # noqa: E731
    with ScriptedServer(good) as server:
        s = generate_programs(config(workdir, server, concurrency=1, repair_rounds=0, retry_invalid=True,
                                     retry_failed=True))
        assert [narration_id_of(b) for b in server.requests] == [first]
    assert {r["narration_id"]: r["status"] for r in records(workdir)}[first] == "valid"


@pytest.mark.parametrize("repair_valid", [False, True])
def test_reask_with_a_cached_repair_chain(workdir, good_programs, repair_valid):  # noqa: F811
    """--repair-rounds 1, both turns cached: a chain ending invalid is asked anew once (both turns, 2 requests);
    one whose cached repair is valid is not asked at all."""
    first = sorted(good_programs)[0]

    def script(body, n):
        nid = narration_id_of(body)
        bad = nid == first and (n == 0 or not repair_valid)
        return Reply(json.dumps(_bad(good_programs[nid]) if bad else good_programs[nid]))

    with ScriptedServer(script) as server:
        generate_programs(config(workdir, server, concurrency=1, repair_rounds=1))
    (workdir / "programs" / "val.jsonl").unlink()
    good = lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))  # noqa: E731
    with ScriptedServer(good) as server:
        est = estimate_cost(offline_config(workdir, repair_rounds=1, retry_invalid=True))
        assert (est.pending, est.answered) == (N_SEGMENTS, N_SEGMENTS - (not repair_valid))
        s = generate_programs(config(workdir, server, concurrency=1, repair_rounds=1, retry_invalid=True))
        assert len(server.requests) == (0 if repair_valid else 1)
    assert s.statuses == {"valid": N_SEGMENTS}


def test_estimate_writes_nothing_to_the_cache_under_a_raised_max_tokens(workdir, good_programs):  # noqa: F811
    """The dry run's estimate runs the cached turns (--retry-invalid, --repair-rounds 1, a raised --max-tokens
    whose replies come from the lower limit's rows): cache.sqlite's tables are the same after it."""
    first = sorted(good_programs)[0]

    def script(body, n):
        nid = narration_id_of(body)
        return Reply(json.dumps(_bad(good_programs[nid]) if nid == first else good_programs[nid]))

    with ScriptedServer(script) as server:
        cfg = config(workdir, server, concurrency=1, repair_rounds=1, max_tokens=2000)
        generate_programs(cfg)
    (workdir / "programs" / "val.jsonl").unlink()
    with ProgramStore(cfg.cache_path):
        pass
    before = _tables(cfg.cache_path)
    est = estimate_cost(offline_config(workdir, repair_rounds=1, retry_invalid=True, max_tokens=4000))
    assert (est.pending, est.answered) == (N_SEGMENTS, N_SEGMENTS - 1)  # the earlier limit's rows answer
    assert _tables(cfg.cache_path) == before


def test_dry_run_prints_the_first_segment_where_force_starts_a_finished_output_over(workdir, good_programs):  # noqa: F811
    """A finished output, then --dry-run --force with another model: the run asks for every segment again, so the
    prompt printed is the first segment's (it exited 2, 'every segment has its record'). Without --force (a run
    that would be refused) it prints that prompt too; a plain resume of the finished output still says it is done."""
    from leap_cli.errors import LeapError

    good = lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))  # noqa: E731
    with ScriptedServer(good) as server:
        cfg = config(workdir, server, repair_rounds=0)
        generate_programs(cfg)
    csv = workdir / "kitchen" / "annotations" / "EPIC_100_validation.csv"
    first = csv.read_text().splitlines()[1].split(",")[0]  # the input's first segment (the output is reply order)
    other = offline_config(workdir, model="other-model", force=True)
    assert dry_run(other) == dry_run(other, first)
    assert dry_run(offline_config(workdir, model="other-model")) == dry_run(other, first)
    with pytest.raises(LeapError, match="every segment"):
        dry_run(cfg)
    assert len(records(workdir)) == N_SEGMENTS  # nothing set aside by the dry run


def test_batch_file_lines_escape_unicode_line_breaks(workdir):  # noqa: F811
    """A narration holding U+2028 (narration_record puts it raw in the prompt): the --batch-file request line held it
    raw, so a str.splitlines() reader (a user's script, some uploaders) saw the request cut in two. Was wrong: the
    batch writer did not write its lines with io.json_line."""
    from leap_cli.programs.batch import write_batch_file
    from leap_cli.programs.generate import GenerateConfig

    csv = workdir / "kitchen" / "annotations" / "EPIC_100_validation.csv"
    csv.write_text(csv.read_text().replace("take plate", "take\u2028plate", 1))
    cfg = GenerateConfig(workdir=workdir, split="val", model="gpt-test")
    batch = workdir / "batch.jsonl"
    assert write_batch_file(cfg, batch) == N_SEGMENTS
    text = batch.read_text(encoding="utf-8")
    assert all(json.loads(line) for line in text.splitlines())
    assert "\u2028" not in text and "\u2029" not in text and "\x85" not in text


def _detections(tmp_path, text: str):
    p = tmp_path / "P01_11.jsonl"
    p.write_bytes(text.encode("utf-8"))
    return p


LINE = ('{"video_id": "P01_11", "frame_number": %d, "objects": [{"label": "pl\\u2028ate", '
        '"bbox": {"left": 0.1, "top": 0.2, "right": 0.3, "bottom": 0.4}, "score": 0.9}]}')


def test_detection_reader_takes_crlf_and_a_raw_line_separator(tmp_path):
    """A Windows-made detections JSONL (CRLF), and a label holding a raw U+2028: read as lines split on '\\n'."""
    from leap_cli.extract.detections import read_object_detections

    raw = (LINE % 1).replace("\\u2028", "\u2028")
    frames = read_object_detections(_detections(tmp_path, raw + "\r\n" + LINE % 2 + "\r\n\r\n"))
    assert sorted(frames) == [1, 2] and frames[1][0].label == "pl\u2028ate"


def test_hand_object_reader_takes_crlf(tmp_path):
    """Hand-object detections written by leap, then saved with CRLF line ends: the same frames."""
    from leap_cli.epic.hand_objects import read_hand_objects

    frame = {"video_id": "P01_11", "frame_number": 3, "hands": [], "objects": [
        {"bbox": {"left": 0.1, "top": 0.2, "right": 0.3, "bottom": 0.4}, "score": 0.5}]}
    p = tmp_path / "P01_11.jsonl"
    p.write_bytes((json.dumps(frame) + "\r\n") .encode() * 2)
    got = read_hand_objects(p)
    assert [f.frame_number for f in got] == [3, 3] and got[0].objects[0].score == 0.5


def test_detection_reader_takes_a_bom(tmp_path):
    """A detections JSONL saved by a Windows editor with a UTF-8 BOM: 'line 1 is not a frame of labelled
    detections (JSONDecodeError: Unexpected UTF-8 BOM)', where leap's other user files drop the BOM (read_utf8).
    Was wrong: read as utf-8, not utf-8-sig."""
    from leap_cli.extract.detections import read_object_detections

    frames = read_object_detections(_detections(tmp_path, "\ufeff" + LINE % 1 + "\r\n"))
    assert sorted(frames) == [1]


def test_hand_object_reader_takes_a_bom(tmp_path):
    """The same for a hand-object detections JSONL with a BOM. Was wrong: read as utf-8, not utf-8-sig."""
    from leap_cli.epic.hand_objects import read_hand_objects

    frame = {"video_id": "P01_11", "frame_number": 3, "hands": [], "objects": []}
    p = tmp_path / "P01_11.jsonl"
    p.write_bytes(("\ufeff" + json.dumps(frame) + "\n").encode())
    assert [f.frame_number for f in read_hand_objects(p)] == [3]


def test_json_line_escapes_every_unicode_line_break_and_round_trips():
    """io.json_line: one line to str.splitlines() whatever the text, and the same value back."""
    from leap_cli.io import json_line

    value = {"t": "a\u2028b\u2029c\x85d\u000be\x1cf\u00e9\r\n"}
    line = json_line(value)
    assert line.endswith("\n") and len(line.splitlines()) == 1 and json.loads(line) == value


def test_sigint_during_the_reask_keeps_its_paid_reply(workdir, good_programs):  # noqa: F811
    """Ctrl-C while the re-ask is on the wire: its reply (paid) comes within the grace and is written, valid; the
    segments not begun stay pending (no invalid record replayed for the interrupted one), and the rerun pays
    nothing more."""
    import os
    import signal
    import threading

    first = _lost_output_with_a_cached_invalid(workdir, good_programs, _bad_first(good_programs), repair_rounds=0)
    fired = threading.Event()

    def slow(body, n):
        if not fired.is_set():
            fired.set()
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
            return Reply(json.dumps(good_programs[narration_id_of(body)]), delay=0.6)
        return Reply(json.dumps(good_programs[narration_id_of(body)]))

    with ScriptedServer(slow) as server:
        cfg = config(workdir, server, concurrency=1, repair_rounds=0, retry_invalid=True)
        s = generate_programs(cfg, reraise=False)
        assert s.interrupted == signal.SIGINT and [narration_id_of(b) for b in server.requests] == [first]
        got = {r["narration_id"]: r["status"] for r in records(workdir)}
        assert got[first] == "valid" and set(got.values()) == {"valid"}
        s = generate_programs(cfg)
        assert len(server.requests) == 1 and s.requests == 0
    assert len(records(workdir)) == N_SEGMENTS and all(r["status"] == "valid" for r in records(workdir))


def test_batch_file_under_retry_invalid_requests_the_cached_invalid_segment_and_writes_the_rest(workdir,
                                                                                                good_programs):  # noqa: F811
    """--batch-file --retry-invalid over a lost output: the cache's valid replies are written as records, the
    segment the cache answers invalid is a request of the batch (not written invalid), and nothing reaches a server."""
    from leap_cli.programs.batch import write_batch_file

    first = sorted(good_programs)[0]
    with ScriptedServer(_bad_first(good_programs)(first)) as server:
        cfg = config(workdir, server, concurrency=1, repair_rounds=0)
        generate_programs(cfg)
    (workdir / "programs" / "val.jsonl").unlink()
    import dataclasses

    batch = workdir / "batch.jsonl"
    write_batch_file(dataclasses.replace(cfg, retry_invalid=True), batch)
    assert [r["custom_id"].partition("@")[0] for r in read_jsonl(batch)] == [first]
    got = {r["narration_id"]: r["status"] for r in records(workdir)}
    assert first not in got and set(got.values()) == {"valid"} and len(got) == N_SEGMENTS - 1


def test_live_reask_of_a_segment_in_an_unsent_batch_is_warned(workdir, good_programs, caplog):  # noqa: F811
    """--batch-file --retry-invalid put the segment the cache answers invalid into a Batch; a live --retry-invalid
    run before its results are ingested pays for it again (run_one re-asks), and said nothing of the Batch (it warns
    where a segment of an unsent Batch is paid for: 'paid twice'). Was wrong: the run's warning counted only the
    segments known before it began."""
    import dataclasses
    import logging

    from leap_cli.programs.batch import write_batch_file

    first = sorted(good_programs)[0]
    with ScriptedServer(_bad_first(good_programs)(first)) as server:
        cfg = config(workdir, server, concurrency=1, repair_rounds=0)
        generate_programs(cfg)
    (workdir / "programs" / "val.jsonl").unlink()
    write_batch_file(dataclasses.replace(cfg, retry_invalid=True), workdir / "batch.jsonl")
    good = lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))  # noqa: E731
    with ScriptedServer(good) as server, caplog.at_level(logging.WARNING):
        generate_programs(config(workdir, server, concurrency=1, repair_rounds=0, retry_invalid=True))
        assert [narration_id_of(b) for b in server.requests] == [first]  # paid live while its Batch is out
    assert any("not ingested" in r.getMessage() for r in caplog.records)
