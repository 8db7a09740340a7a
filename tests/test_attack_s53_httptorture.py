"""Torture of leap's own HTTP/1.1 client (``leap_cli/programs/http.py``) with hand-written servers: chunked and
Content-Length framing gone wrong, header oddities, stalls, resets, stale bytes on a keep-alive connection,
content encodings and a decompression bomb. Each reply must be read whole and given to its own request, or fail
at once in one line (within --timeout), never sent twice unseen."""

import asyncio
import gzip
import json
import socket
import struct
import time
import zlib

import pytest

from leap_cli.errors import LeapError
from leap_cli.programs.generate import generate_programs
from leap_cli.programs.http import HTTPConnectionError, HTTPTimeout, Response
from tests.programs_llm_server import Reply, ScriptedServer
from tests.test_mut_http_store import _answer, _client, _post_all, _serve
from tests.test_programs_generate import config, records, workdir  # noqa: F401


def _reply(n: int) -> bytes:
    body = b'{"n": %d}' % n
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def _one_line(e) -> str:
    msg = str(e)
    assert msg and "\n" not in msg and "Traceback" not in msg
    return msg


# ---- what holds -----------------------------------------------------------------------------------------------

_ODD_BUT_VALID = {
    "upper-case hex chunk size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nA\r\n{\"a\": 123}\r\n0\r\n\r\n",
    "no reason phrase": b"HTTP/1.1 200\r\nContent-Length: 10\r\n\r\n{\"a\": 123}",
    "obs-fold header": b"HTTP/1.1 200 OK\r\nX-Folded: one\r\n two\r\nContent-Length: 10\r\n\r\n{\"a\": 123}",
    "header line without colon": b"HTTP/1.1 200 OK\r\nNoColonHere\r\nContent-Length: 10\r\n\r\n{\"a\": 123}",
    "64 kB header": b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * 65536 + b"\r\nContent-Length: 10\r\n\r\n{\"a\": 123}",
    "mixed-case names": b"HTTP/1.1 200 OK\r\ncOnTeNt-LeNgTh: 10\r\nCONNECTION: Keep-Alive\r\n\r\n{\"a\": 123}",
    "chunked with Content-Length too": (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: Chunked\r\n\r\n"
                                        b"4\r\n{\"a\"\r\n6\r\n: 123}\r\n0\r\n\r\n"),
}


@pytest.mark.parametrize("raw", list(_ODD_BUT_VALID.values()), ids=list(_ODD_BUT_VALID))
def test_odd_but_valid_responses_are_read_whole_and_keep_the_connection(raw):
    """Upper-case hex chunk sizes, a status line without a reason, folded, colon-less, 64 kB and mixed-case header
    lines, chunked beside a Content-Length: each reply is the body sent, and the connection serves the next."""
    out, heads, conns, client = _post_all(_answer(raw), n=2, max_connections=1, timeout=2)
    assert [(r.status, r.body) for r in out] == [(200, b'{"a": 123}')] * 2
    assert len(heads) == 2 and len(conns) == 1 and client.resent == 0


@pytest.mark.parametrize("raw", [b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"a\": 1}",
                                 b"HTTP/1.0 200 OK\r\n\r\n{\"a\": 1}"], ids=["connection-close", "http/1.0"])
def test_a_body_without_a_length_is_read_to_the_close_and_the_next_request_gets_a_new_connection(raw):
    out, heads, conns, client = _post_all(_answer(raw, close=True), n=2, max_connections=1, timeout=2)
    assert [(r.status, r.body) for r in out] == [(200, b'{"a": 1}')] * 2
    assert len(heads) == 2 and len(conns) == 2 and client.resent == 0


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{\"a\": ",  # cut inside a chunk
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n",  # the last (0) chunk never comes
    b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{\"a\": 1}",  # Content-Length larger than the body
], ids=["cut-in-chunk", "no-last-chunk", "length-too-large"])
def test_a_body_cut_by_a_close_fails_at_once_in_one_line_and_is_not_sent_again(raw):
    t0 = time.monotonic()
    out, heads, conns, client = _post_all(_answer(raw, close=True), n=1, timeout=3)
    assert isinstance(out[0], HTTPConnectionError)
    assert _one_line(out[0]) == "the server closed the connection mid-response"
    assert time.monotonic() - t0 < 2.5 and len(heads) == 1 and client.resent == 0


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",  # a malformed chunk-size line
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\n{}",  # two Content-Lengths that disagree
    b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\n{}",  # a status that is no number
], ids=["bad-chunk-size", "two-lengths", "bad-status"])
def test_malformed_framing_fails_at_once_as_not_http(raw):
    t0 = time.monotonic()
    out, heads, *_ = _post_all(_answer(raw), timeout=3)
    assert isinstance(out[0], HTTPConnectionError) and _one_line(out[0]).startswith("the response is not HTTP (")
    assert time.monotonic() - t0 < 2.5 and len(heads) == 1


def test_a_damaged_or_truncated_gzip_body_fails_in_one_line():
    packed = gzip.compress(b'{"choices": []}')
    for body in (packed[:10] + b"\0" * 5 + packed[15:], packed[:-6]):
        raw = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        out, heads, *_ = _post_all(_answer(raw), timeout=2)
        assert isinstance(out[0], HTTPConnectionError), out[0]
        assert _one_line(out[0]).startswith("the response's compressed body is damaged (") and len(heads) == 1


async def _stall_after_head(n, head, reader, writer):
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"a\"")
    await writer.drain()
    await reader.read(1)  # until the client goes
    return True


async def _trickle(n, head, reader, writer):
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(100):  # one byte every 50 ms, never the end: a deadline per read would never fire
        try:
            writer.write(b"1\r\n \r\n")
            await writer.drain()
        except ConnectionError:
            return True
        await asyncio.sleep(0.05)
    return True


@pytest.mark.parametrize("on_request", [_stall_after_head, _trickle], ids=["head-then-stall", "slowloris"])
def test_a_server_that_stalls_or_trickles_is_given_up_at_the_timeout(on_request):
    t0 = time.monotonic()
    out, heads, *_ = _post_all(on_request, timeout=1.0)
    elapsed = time.monotonic() - t0
    assert isinstance(out[0], HTTPTimeout) and "--timeout" in _one_line(out[0])
    assert 0.9 < elapsed < 2.5 and len(heads) == 1


def test_a_reset_mid_body_says_reset_and_is_not_sent_again():
    async def on_request(n, head, reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{\"choices\": [")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
        return True

    out, heads, conns, client = _post_all(on_request, timeout=3)
    assert isinstance(out[0], HTTPConnectionError)
    assert _one_line(out[0]) in ("the server reset the connection", "the server closed the connection mid-response")
    assert len(heads) == 1 and client.resent == 0


def test_a_server_whose_every_reply_is_damaged_gzip_stops_the_stage_in_one_line(workdir):  # noqa: F811
    """Through the backend: a body that says gzip and is not fails its record with the cause in words, and the same
    failure of every request stops the stage in one line (no traceback, no record written as valid)."""
    with ScriptedServer(lambda body, n: Reply(raw="not gzip at all", headers={"Content-Encoding": "gzip"})) as server:
        with pytest.raises(LeapError) as err:
            generate_programs(config(workdir, server, concurrency=1, max_retries=1))
    assert "compressed body is damaged" in _one_line(err.value) and "--base-url" in str(err.value)
    recs = records(workdir)
    assert recs and all(r["status"] == "failed" for r in recs)
    assert "compressed body is damaged" in recs[0]["errors"][0]["message"]


# ---- bugs -------------------------------------------------------------------------------------------------------

async def _glued(n, head, reader, writer):
    writer.write(_reply(n) + (_reply(99) if n == 1 else b""))  # a second, unasked reply right behind the first
    await writer.drain()
    return False


async def _stale_crlf(n, head, reader, writer):
    writer.write(_reply(n) + b"\r\n")  # a stray CRLF after the body, as some servers send after a POST's reply
    await writer.drain()
    return False


async def _late(n, head, reader, writer):
    writer.write(_reply(n))
    await writer.drain()
    if n == 1:
        await asyncio.sleep(0.05)
        writer.write(_reply(99))  # unasked bytes on the idle connection
        await writer.drain()
    return False


@pytest.mark.parametrize("on_request", [_glued, _stale_crlf, _late], ids=["glued-reply", "stale-crlf", "late-bytes"])
def test_each_request_gets_its_own_reply_whatever_an_idle_connection_holds(on_request):
    """Was wrong: bytes left in an idle keep-alive connection's buffer are read as the next request's reply (wrong
    reply, or 'not HTTP' and a billed resend)."""
    async def main():
        start, heads, conns, _ = _serve(on_request)
        server = await start
        client = _client(server, max_connections=1, timeout=2)
        out = []
        for _ in range(3):
            try:
                out.append(await client.post("/chat/completions", b"{}"))
            except Exception as e:  # noqa: BLE001
                out.append(e)
            await asyncio.sleep(0.1)
        await client.aclose()
        server.close()
        return out, heads

    out, heads = asyncio.run(main())
    assert all(isinstance(r, Response) for r in out), out
    assert [json.loads(r.body)["n"] for r in out] == [1, 2, 3]  # never request 2 given reply 99 (or 1's leftovers)
    assert len(heads) == 3


def test_a_gzip_body_of_two_members_is_read_whole():
    """Was wrong: a gzip body of several members (RFC 1952) is cut after the first member silently (zlib.decompress,
    not a decompressobj loop / gzip.decompress)."""
    body = gzip.compress(b'{"choices": [{"message": ') + gzip.compress(b'{"content": "x"}}]}')
    raw = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    out, *_ = _post_all(_answer(raw))
    assert isinstance(out[0], Response) and out[0].body == b'{"choices": [{"message": {"content": "x"}}]}'


def test_a_head_with_bare_lf_line_ends_is_read_or_refused_at_once():
    """Was wrong: a head with bare LF line ends is waited on until --timeout, then said to be a timeout (raise
    --timeout): neither read nor refused at once."""
    t0 = time.monotonic()
    out, *_ = _post_all(_answer(b"HTTP/1.1 200 OK\nContent-Length: 2\n\n{}"), timeout=2)
    elapsed = time.monotonic() - t0
    assert not isinstance(out[0], HTTPTimeout) and elapsed < 1.0, (out[0], elapsed)
    assert (isinstance(out[0], Response) and out[0].body == b"{}") or isinstance(out[0], HTTPConnectionError)


@pytest.mark.parametrize("raw", [b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n{\"a\": 1}",
                                 b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-2\r\n{\"a\": 1}\r\n0\r\n\r\n"],
                         ids=["content-length", "chunk-size"])
def test_a_negative_length_is_refused_as_not_http(raw):
    """Was wrong: a negative Content-Length or chunk size is taken (readexactly(-1): a body cut by one byte, or a
    wait until --timeout), not refused as not HTTP."""
    t0 = time.monotonic()
    out, *_ = _post_all(_answer(raw), timeout=2)
    assert isinstance(out[0], HTTPConnectionError) and str(out[0]).startswith("the response is not HTTP (")
    assert time.monotonic() - t0 < 1.0


def test_a_content_encoding_it_cannot_decode_is_said():
    """Was wrong: a Content-Encoding the client does not decode (br) is handed on as the body: the run says 'no JSON
    object' with binary, not the encoding."""
    body = b"\x0b\x05\x80" + b'{"choices": []}' + b"\x03"  # brotli of '{"choices": []}' (uncompressed meta-block)
    raw = b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    out, *_ = _post_all(_answer(raw))
    r = out[0]
    assert (isinstance(r, Response) and r.body == b'{"choices": []}') or (
        isinstance(r, HTTPConnectionError) and ("br" in _one_line(r) or "encoding" in str(r).lower())), r


def test_a_reply_far_larger_than_any_chat_completion_is_refused_in_one_line():
    """Was wrong: no cap on a reply's size: a 200 MB (decompressed) reply is held whole in memory (Content-Length,
    chunked, read-to-close and gzip alike)."""
    c = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = b"\0" * (1 << 20)
    bomb = b"".join(c.compress(zeros) for _ in range(200)) + c.flush()  # 200 MiB of zeros, under 1 MB on the wire
    raw = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(bomb), bomb)

    async def main():  # (only the size comes back: asyncio's task reprs would print a 200 MiB body)
        start, heads, _, _ = _serve(_answer(raw))
        server = await start
        client = _client(server, timeout=10)
        try:
            r = await client.post("/chat/completions", b"{}")
            return len(r.body), None
        except HTTPConnectionError as e:
            return 0, str(e)
        finally:
            await client.aclose()
            server.close()

    size, said = asyncio.run(main())
    assert size == 0, f"a {size >> 20} MiB body was returned"
    assert said and "\n" not in said
