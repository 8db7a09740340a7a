"""Regressions the last HTTP client change (1097fa9: head reader for bare LF, strict sizes, a decode loop over gzip
members, HTTPUnreadable as final) could bring to replies read right before: tiny TCP writes, buffer boundaries,
chunk-size lines split across writes, deflate/gzip variants, 100 Continue, keep-alive reuse; and the part check of
c292304 (io.refuse_beside_a_live_writer): a part of the same count running beside must not refuse."""

import asyncio
import gzip
import json
import time
import zlib

import pytest

from leap_cli.errors import LeapError
from leap_cli.io import OutputLock, refuse_beside_a_live_writer
from leap_cli.programs.generate import generate_programs
from leap_cli.programs.http import HTTPConnectionError, HTTPTimeout, HTTPUnreadable, Response
from tests.programs_llm_server import Reply, ScriptedServer, narration_id_of
from tests.test_mut_http_store import _answer, _post_all
from tests.test_programs_generate import config, good_programs, records, workdir  # noqa: F401

BODY = b'{"choices": [{"message": {"content": "x\\n\\ny"}}]}'


def _framed(body: bytes, *headers: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\n" + b"".join(h + b"\r\n" for h in headers) + b"Content-Length: %d\r\n\r\n%s" % (
        len(body), body)


def _one_line(e) -> str:
    msg = str(e)
    assert msg and "\n" not in msg and "Traceback" not in msg
    return msg


def _trickled(raw: bytes, step: int = 1):
    """A server writing ``raw`` ``step`` bytes at a time, each write flushed (separate TCP segments)."""
    async def on_request(n, head, reader, writer):
        for i in range(0, len(raw), step):
            writer.write(raw[i:i + step])
            await writer.drain()
            await asyncio.sleep(0)
        return False
    return on_request


_CHUNKED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1a; ext=1\r\n" + BODY[:26] + b"\r\n"
            + b"%x\r\n" % (len(BODY) - 26) + BODY[26:] + b"\r\n0\r\nX-Trailer: t\r\n\r\n")


@pytest.mark.parametrize("raw", [_framed(BODY), _CHUNKED, _framed(gzip.compress(BODY, mtime=0), b"Content-Encoding: gzip")],
                         ids=["content-length", "chunked-with-ext-and-trailer", "gzip"])
def test_a_reply_written_one_byte_at_a_time_is_read_whole_on_one_connection(raw):
    """Head, chunk-size lines (CRLF split between writes), body and trailers each come a byte per write: the reply
    is read whole, and the kept-alive connection serves the next request."""
    out, heads, conns, client = _post_all(_trickled(raw), n=2, max_connections=1, timeout=5)
    assert [(r.status, r.body) for r in out] == [(200, BODY)] * 2, out
    assert len(heads) == 2 and len(conns) == 1 and client.resent == 0


@pytest.mark.parametrize("size", [65535, 65536, 65537, 262144])
def test_a_body_ending_at_a_read_buffer_boundary_is_read_and_the_connection_kept(size):
    body = b'{"p": "' + b"a" * (size - 9) + b'"}'
    assert len(body) == size
    out, heads, conns, client = _post_all(_answer(_framed(body)), n=3, max_connections=1)
    assert [len(r.body) for r in out] == [size] * 3 and out[0].body == body
    assert len(conns) == 1


def test_content_length_zero_is_an_empty_body_read_at_once_with_the_connection_kept():
    t0 = time.monotonic()
    out, heads, conns, _ = _post_all(_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), n=3,
                                     max_connections=1, timeout=3)
    assert [(r.status, r.body) for r in out] == [(200, b"")] * 3 and len(conns) == 1
    assert time.monotonic() - t0 < 2


@pytest.mark.parametrize("encode", [zlib.compress, lambda b: zlib.compress(b, 9)[2:-4],
                                    lambda b: zlib.compress(b"")[:0] + zlib.compress(b, 1)],
                         ids=["zlib-header", "raw-deflate", "zlib-level-1"])
def test_a_deflate_body_with_or_without_its_zlib_header_is_read(encode):
    out, *_ = _post_all(_answer(_framed(encode(BODY), b"Content-Encoding: deflate")), n=2, max_connections=1)
    assert [r.body for r in out] == [BODY] * 2


def test_a_crlf_head_with_a_body_holding_blank_lf_lines_is_framed_by_the_head_only():
    """The body holds "\\n\\n" and "\\n\\r\\n" (a pretty-printed JSON error page): the head reader stops at the head's
    own CRLF CRLF, and the body is the Content-Length bytes, not cut or merged into the head."""
    body = b'{\n\n  "choices": [\n\r\n  ]\n}\n\n'
    out, heads, conns, _ = _post_all(_trickled(_framed(body), step=7), n=2, max_connections=1)
    assert [(r.status, r.body, r.headers.get("content-length")) for r in out] == [(200, body, str(len(body)))] * 2
    assert len(conns) == 1


def test_100_continue_then_the_reply_is_the_reply():
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n" + _framed(BODY)
    out, heads, conns, _ = _post_all(_trickled(raw, step=5), n=2, max_connections=1)
    assert [(r.status, r.body) for r in out] == [(200, BODY)] * 2 and len(conns) == 1


def test_fifty_sequential_requests_reuse_one_keep_alive_connection():
    async def on_request(n, head, reader, writer):
        body = b'{"n": %d}' % n
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
        await writer.drain()
        writer.write(body)  # (head and body in two writes)
        await writer.drain()
        return False

    out, heads, conns, client = _post_all(on_request, n=50, max_connections=4)
    assert [json.loads(r.body)["n"] for r in out] == list(range(1, 51))
    assert len(heads) == 50 and len(conns) == 1 and client.resent == 0


@pytest.mark.parametrize("value", [b"  13  ", b"\t13"], ids=["spaces", "tab"])
def test_a_content_length_with_surrounding_whitespace_is_read(value):
    raw = b"HTTP/1.1 200 OK\r\nContent-Length:" + value + b"\r\n\r\n" + b'{"ok": true}' + b"X"
    out, *_ = _post_all(_answer(raw), n=1)
    assert isinstance(out[0], Response) and out[0].body == b'{"ok": true}X'


@pytest.mark.parametrize("raw", [b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\n{}",
                                 b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}"],
                         ids=["comma-joined", "two-headers"])
def test_identical_duplicate_content_lengths_are_read_or_refused_at_once_in_one_line(raw):
    """RFC 9110 8.6: the same decimal value listed twice may be taken as one, or the message refused: either, at
    once (not a wait until --timeout, not a body cut or run on)."""
    t0 = time.monotonic()
    out, heads, *_ = _post_all(_answer(raw), n=1, timeout=3)
    assert time.monotonic() - t0 < 2 and len(heads) == 1
    r = out[0]
    assert (isinstance(r, Response) and r.body == b"{}") or (
        isinstance(r, HTTPConnectionError) and _one_line(r).startswith("the response is not HTTP ("))


def test_a_gzip_body_followed_by_zero_padding_is_read():
    """Was wrong: gzip followed by zero padding (read before 1097fa9: zlib.decompress ignores it; gzip(1) too) now
    fails as a damaged body, unretried.
    Regression of 1097fa9: _decode's member loop reads the bytes after the last gzip member as another member, so
    zero padding (as tape/block writers and some proxies leave, and gzip -d and Python's gzip module skip) fails the
    record as 'compressed body is damaged' - final, not retried; before, zlib.decompress read it."""
    body = gzip.compress(BODY) + b"\0" * 8
    out, *_ = _post_all(_answer(_framed(body, b"Content-Encoding: gzip")), n=1)
    assert isinstance(out[0], Response) and out[0].body == BODY, out[0]


def test_a_gzip_body_with_trailing_garbage_after_its_member_is_read_as_before():
    """Was wrong: bytes after the gzip member (read before 1097fa9) now fail the reply as damaged, final with no retry.
    Regression of 1097fa9: before, zlib.decompress gave the whole member and ignored what followed it (as curl
    and browsers do); now the tail is taken as a next member and the whole, already billed reply is lost."""
    body = gzip.compress(BODY) + b"\r\n"
    out, *_ = _post_all(_answer(_framed(body, b"Content-Encoding: gzip")), n=1)
    assert isinstance(out[0], Response) and out[0].body == BODY, out[0]


def test_a_deflate_body_with_trailing_bytes_after_its_stream_is_read():
    body = zlib.compress(BODY) + b"\r\n"
    out, *_ = _post_all(_answer(_framed(body, b"Content-Encoding: deflate")), n=1)
    assert isinstance(out[0], Response) and out[0].body == BODY


def test_an_empty_body_said_to_be_gzip_or_deflate_is_empty():
    for enc in (b"gzip", b"deflate"):
        out, *_ = _post_all(_answer(b"HTTP/1.1 204 No Content\r\nContent-Encoding: " + enc + b"\r\n\r\n"), n=1)
        assert isinstance(out[0], Response) and out[0].status == 204 and out[0].body == b""


def test_an_unreadable_200_fails_its_record_once_and_retry_errors_asks_again_once(workdir, good_programs):  # noqa: F811
    """A 200 in an encoding leap cannot read (br): the server had the request and may bill it, so it is not sent
    again in the run (even with --max-retries 3); the record is failed with the cause in words; --retry-errors later
    asks for it exactly once more, and the other records are neither failed nor asked again."""
    target = sorted(good_programs)[0]
    asked = []

    def script(body, n):
        nid = narration_id_of(body)
        asked.append(nid)
        if nid == target:
            return Reply(raw="\x0b\x05\x80{}\x03", headers={"Content-Encoding": "br"})
        return Reply(json.dumps(good_programs[nid]))

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, concurrency=1, max_retries=3))
    assert s.statuses == {"valid": 5, "failed": 1} and asked.count(target) == 1, (s.statuses, asked)
    failed = [r for r in records(workdir) if r["status"] == "failed"]
    assert [r["narration_id"] for r in failed] == [target]
    assert "'br'" in failed[0]["errors"][0]["message"] and "unreadable reply" in failed[0]["errors"][0]["message"]
    asked.clear()
    with ScriptedServer(lambda body, n: (asked.append(narration_id_of(body)),
                                         Reply(json.dumps(good_programs[narration_id_of(body)])))[1]) as server:
        s = generate_programs(config(workdir, server, concurrency=1, retry_failed=True))
    assert asked == [target] and s.statuses == {"valid": 1}, (asked, s.statuses)
    assert sorted(r["status"] for r in records(workdir)) == ["valid"] * 6


def test_a_503_with_an_unreadable_error_page_is_retried_like_any_503(workdir, good_programs):  # noqa: F811
    """Was wrong: a 503 whose error page is in an encoding leap cannot read is final (HTTPUnreadable before the status
    is looked at): never retried.
    Regression of 1097fa9: _decode runs on every response, so a 503/429 (not billed) whose body a proxy sent as br
    raises HTTPUnreadable, which the backend takes as final: the record fails at once with --max-retries 3 where a
    plain 503 is retried (before, the status was seen first and the request retried)."""
    target = sorted(good_programs)[0]
    asked = []

    def script(body, n):
        nid = narration_id_of(body)
        asked.append(nid)
        if nid == target and asked.count(target) == 1:
            return Reply(status=503, raw="\x0b\x05\x80busy\x03", headers={"Content-Encoding": "br"})
        return Reply(json.dumps(good_programs[nid]))

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, concurrency=1, max_retries=3, limit=1))
    assert asked == [target, target] and s.statuses == {"valid": 1}, (asked, s.statuses)


def test_the_unreadable_error_is_its_own_kind_and_says_the_encoding():
    out, heads, *_ = _post_all(_answer(_framed(b"xyz", b"Content-Encoding: zstd")), n=1)
    assert isinstance(out[0], HTTPUnreadable) and "'zstd'" in _one_line(out[0]) and len(heads) == 1
    assert not isinstance(out[0], HTTPTimeout)


# ---- io.refuse_beside_a_live_writer (c292304) -----------------------------------------------------------------

def _holding(path):
    return OutputLock(path).acquire()


def test_a_part_beside_live_parts_of_the_same_count_is_not_refused(tmp_path):
    """The job array itself: parts 1/3 and 2/3 hold their locks (files not made yet) while 0/3 starts: not
    refused (the check of another count must skip the same count, whatever the index)."""
    whole = tmp_path / "train.jsonl"
    locks = [_holding(tmp_path / f"train.shard{i}of3.jsonl") for i in (1, 2)]
    try:
        refuse_beside_a_live_writer(tmp_path / "train.shard0of3.jsonl")
        refuse_beside_a_live_writer(tmp_path / "train.shard2of3.jsonl")  # (its own lock held, as under the run)
    finally:
        for lock in locks:
            lock.release()
    assert not whole.exists()


def test_a_part_beside_a_live_part_of_another_count_is_refused_in_one_line_naming_the_count(tmp_path):
    lock = _holding(tmp_path / "train.shard3of4.jsonl")
    try:
        with pytest.raises(LeapError) as err:
            refuse_beside_a_live_writer(tmp_path / "train.shard0of3.jsonl")
    finally:
        lock.release()
    assert "3/4" in _one_line(err.value) and "i/4" in err.value.fix
    refuse_beside_a_live_writer(tmp_path / "train.shard0of3.jsonl")  # (released: a dead part's lock file is no bar)


def test_live_parts_of_another_output_with_a_similar_name_do_not_refuse(tmp_path):
    locks = [_holding(tmp_path / name) for name in ("train2.shard0of4.jsonl", "xtrain.shard1of4.jsonl",
                                                    "train.shard0of4.jsonl.tmp")]
    try:
        refuse_beside_a_live_writer(tmp_path / "train.shard0of3.jsonl")
    finally:
        for lock in locks:
            lock.release()
