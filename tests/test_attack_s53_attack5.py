"""Attack and mutation survivors of leap's HTTP client (``leap_cli/programs/http.py``: ``_size``, ``_decode``,
``_Conn.read_head``/``readline``/``read_to_close``, ``_read_response``, the stale-byte checks of ``_exchange``):
raw deflate that looks like zlib, gzip members then padding, a body that comes late, gzip as a transfer coding,
a head of exactly 1 MiB, and a Content-Length over 64 MiB refused before its body is read."""

import asyncio
import gzip
import time
import zlib

import pytest

from leap_cli.programs.http import MAX_BODY, HTTPConnectionError, HTTPTimeout, HTTPUnreadable, Response, _decode
from tests.test_attack_s53_attack4 import BODY, _framed, _one_line
from tests.test_mut_http_store import _answer, _post_all



def _stall_after(raw: bytes):
    """A server writing ``raw`` and then nothing, the connection left open."""
    async def on_request(n, head, reader, writer):
        writer.write(raw)
        await writer.drain()
        await asyncio.sleep(5)
        return True
    return on_request


# ---- deflate and gzip ----------------------------------------------------------------------------------------

def _raw_deflate_that_looks_like_zlib(data: bytes) -> bytes:
    """Raw deflate (RFC 1951): a stored non-final block of 29 bytes whose header byte's padding bits are 1 (0x08),
    then a final stored block: its first two bytes, 0x08 0x1d, are a valid zlib header (CM 8, check % 31 == 0)."""
    a, b = data[:29], data[29:]
    assert len(a) == 29
    blk = lambda first, part: bytes([first]) + len(part).to_bytes(2, "little") + (
        (~len(part)) & 0xFFFF).to_bytes(2, "little") + part
    raw = blk(0x08, a) + blk(0x01, b)
    assert zlib.decompress(raw, -zlib.MAX_WBITS) == data  # valid raw deflate
    assert raw[0] & 0x0F == 8 and int.from_bytes(raw[:2], "big") % 31 == 0  # and a valid-looking zlib header
    return raw


def test_raw_deflate_whose_first_bytes_look_like_a_zlib_header_is_read():
    """Was wrong: _decode picks zlib vs raw deflate by the first two bytes only; raw deflate whose bytes look like a
    zlib header fails as damaged, not retried."""
    raw = _raw_deflate_that_looks_like_zlib(BODY)
    out, *_ = _post_all(_answer(_framed(raw, b"Content-Encoding: deflate")), n=1)
    assert isinstance(out[0], Response) and out[0].body == BODY, out


def test_two_gzip_members_then_zero_padding_are_read_as_both_members():
    body = gzip.compress(BODY[:20], mtime=0) + gzip.compress(BODY[20:], mtime=0) + b"\0" * 16
    out, heads, conns, _ = _post_all(_answer(_framed(body, b"Content-Encoding: gzip")), n=2, max_connections=1)
    assert [(r.status, r.body) for r in out] == [(200, BODY)] * 2 and len(conns) == 1


def test_x_gzip_identity_and_padded_encoding_names_are_decoded():
    """``x-gzip`` (RFC 9110 8.4.1.3), ``identity`` and a name with spaces or capitals are what they say."""
    for enc, body in [(b"x-gzip", gzip.compress(BODY)), (b"identity", BODY), (b"  GZip ", gzip.compress(BODY))]:
        out, *_ = _post_all(_answer(_framed(body, b"Content-Encoding: " + enc)), n=1)
        assert isinstance(out[0], Response) and out[0].body == BODY, (enc, out)


def test_a_gzip_member_cut_short_is_unreadable_in_one_line():
    body = gzip.compress(BODY)[:-6]
    out, heads, *_ = _post_all(_answer(_framed(body, b"Content-Encoding: gzip")), n=1)
    assert isinstance(out[0], HTTPUnreadable) and len(heads) == 1
    assert _one_line(out[0]).startswith("the response's compressed body is damaged")


def test_a_damaged_error_page_keeps_its_status_and_an_unknown_encoding_on_it_too():
    for enc, body in [(b"gzip", b"not gzip at all"), (b"br", b"\x8b\x02\x80")]:
        raw = b"HTTP/1.1 503 Busy\r\nContent-Encoding: " + enc + b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        out, *_ = _post_all(_answer(raw), n=1)
        assert isinstance(out[0], Response) and out[0].status == 503 and out[0].body == body


def test_decode_stops_at_the_body_limit_and_takes_exactly_the_limit():
    exact = zlib.compress(b"\0" * MAX_BODY)
    assert len(_decode(exact, "deflate")) == MAX_BODY
    with pytest.raises(HTTPUnreadable, match="over 64 MiB once decompressed"):
        _decode(gzip.compress(b"\0" * (MAX_BODY + 1)), "gzip")


def test_gzip_as_a_transfer_coding_is_decoded_or_refused_as_unreadable():
    """Was wrong: Transfer-Encoding 'gzip, chunked' is de-chunked but the gzip transfer coding is never decoded: the
    gzip bytes are handed on as the JSON reply."""
    z = gzip.compress(BODY)
    raw = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n" + b"%x\r\n" % len(z) + z + b"\r\n0\r\n\r\n")
    out, *_ = _post_all(_answer(raw), n=1)
    r = out[0]
    assert (isinstance(r, Response) and r.body == BODY) or isinstance(r, HTTPUnreadable), r


# ---- framing and timing ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_head_ending_a_write_with_its_body_half_a_second_later_is_read(chunked):
    head = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" if chunked else
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY))
    rest = (b"%x\r\n" % len(BODY) + BODY + b"\r\n0\r\n\r\n") if chunked else BODY

    async def on_request(n, h, reader, writer):
        writer.write(head)
        await writer.drain()
        await asyncio.sleep(0.5)
        writer.write(rest)
        await writer.drain()
        return False

    t0 = time.monotonic()
    out, heads, conns, client = _post_all(on_request, n=2, max_connections=1, timeout=3)
    assert [(r.status, r.body) for r in out] == [(200, BODY)] * 2, out
    assert len(conns) == 1 and client.resent == 0 and time.monotonic() - t0 < 2.5


def test_a_head_of_exactly_one_mib_is_read_and_one_of_one_and_a_half_mib_refused_at_once():
    top = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Pad: "
    pad = (1 << 20) - len(top) - 4
    raw = top + b"p" * pad + b"\r\n\r\n"
    assert len(raw) == 1 << 20
    out, *_ = _post_all(_answer(raw + b"{}"), n=1)
    assert isinstance(out[0], Response) and out[0].body == b"{}" and len(out[0].headers["x-pad"]) == pad
    t0 = time.monotonic()
    out, *_ = _post_all(_stall_after(top + b"p" * (3 << 19)), n=1, timeout=4)
    assert isinstance(out[0], HTTPConnectionError) and not isinstance(out[0], HTTPTimeout), out
    assert _one_line(out[0]) == f"the response is not HTTP (no end of the head in the first {1 << 20} bytes)"
    assert time.monotonic() - t0 < 3


def test_a_chunk_size_line_without_end_is_refused_at_once():
    t0 = time.monotonic()
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;" + b"e" * (2 << 20)
    out, *_ = _post_all(_stall_after(raw), n=1, timeout=4)
    assert isinstance(out[0], HTTPConnectionError) and not isinstance(out[0], HTTPTimeout), out
    assert "no line end in the first" in _one_line(out[0]) and time.monotonic() - t0 < 3


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunk-size"])
def test_a_size_of_64_mib_plus_one_is_refused_before_the_body_and_64_mib_is_waited_for(chunked):
    def raw(n):
        return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % n if chunked else
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n) + b"{"
    t0 = time.monotonic()
    out, heads, *_ = _post_all(_stall_after(raw(MAX_BODY + 1)), n=1, timeout=4)
    assert isinstance(out[0], HTTPUnreadable) and len(heads) == 1, out
    assert _one_line(out[0]).startswith("the response's body is over 64 MiB") and time.monotonic() - t0 < 3
    out, *_ = _post_all(_stall_after(raw(MAX_BODY)), n=1, timeout=0.6)
    assert isinstance(out[0], HTTPTimeout), out


def test_a_body_read_to_the_close_over_64_mib_is_refused():
    raw = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b" " * (MAX_BODY + (2 << 20))
    out, *_ = _post_all(_stall_after(raw), n=1, timeout=8)
    assert isinstance(out[0], HTTPUnreadable), out
    assert _one_line(out[0]).startswith("the response's body is over 64 MiB")


def test_a_304_without_a_length_is_empty_at_once_and_the_connection_kept():
    t0 = time.monotonic()
    out, heads, conns, _ = _post_all(_answer(b"HTTP/1.1 304 Not Modified\r\n\r\n"), n=2, max_connections=1, timeout=3)
    assert [(r.status, r.body) for r in out] == [(304, b"")] * 2 and len(conns) == 1
    assert time.monotonic() - t0 < 2


def test_a_chunk_size_with_spaces_before_its_extension_or_line_end_is_read():
    """RFC 9112 7.1.1: BWS before a chunk extension's ';' (and servers that pad the size with a space)."""
    raw = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"%x ;ext=1\r\n" % 20 + BODY[:20] + b"\r\n"
           + b"%x \t\r\n" % (len(BODY) - 20) + BODY[20:] + b"\r\n0 \r\n\r\n")
    out, heads, conns, _ = _post_all(_answer(raw), n=2, max_connections=1)
    assert [(r.status, r.body) for r in out] == [(200, BODY)] * 2 and len(conns) == 1


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


def test_raw_deflate_passing_one_of_the_two_zlib_header_checks_is_read():
    """Raw deflate whose first two bytes pass the zlib check (% 31) but not its method (CM 8), and a stored block
    whose padding bits give CM 8 but fail % 31: both are raw deflate, and read as such."""
    passes_check = b'58{"ok": 1}'
    r1 = _raw_deflate(passes_check)
    assert int.from_bytes(r1[:2], "big") % 31 == 0 and r1[0] & 0x0F != 8
    r2 = bytes([0x08]) + (11).to_bytes(2, "little") + ((~11) & 0xFFFF).to_bytes(2, "little") + passes_check + b"\x03\x00"
    assert zlib.decompress(r2, -zlib.MAX_WBITS) == passes_check and int.from_bytes(r2[:2], "big") % 31 != 0
    for raw in (r1, r2):
        out, *_ = _post_all(_answer(_framed(raw, b"Content-Encoding: deflate")), n=1)
        assert isinstance(out[0], Response) and out[0].body == passes_check, out


@pytest.mark.parametrize("encoding,body", [("gzip", gzip.compress(BODY) + b"\x1f\n"),
                                           ("deflate", zlib.compress(BODY) + b"\x1f\x8b\x08\0")],
                         ids=["gzip-then-0x1f", "deflate-then-gzip-magic"])
def test_bytes_after_the_last_member_that_only_look_like_gzip_are_dropped(encoding, body):
    """After gzip, only a whole magic (1f 8b) starts another member; after deflate, nothing does."""
    assert _decode(body, encoding) == BODY


def test_gzip_then_chunked_transfer_codings_are_framed_as_chunked_at_once():
    """Whatever is done with the gzip coding, the chunked framing ends the reply: no wait until --timeout."""
    z = gzip.compress(BODY)
    raw = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n" + b"%x\r\n" % len(z) + z + b"\r\n0\r\n\r\n")
    t0 = time.monotonic()
    out, *_ = _post_all(_answer(raw), n=1, timeout=3)
    assert not isinstance(out[0], HTTPTimeout) and time.monotonic() - t0 < 2, out


def test_a_chunk_longer_than_its_size_is_refused_at_once_in_one_line():
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}XX\r\n0\r\n\r\n"
    t0 = time.monotonic()
    out, heads, *_ = _post_all(_stall_after(raw), n=1, timeout=3)
    assert isinstance(out[0], HTTPConnectionError) and not isinstance(out[0], HTTPTimeout), out
    assert _one_line(out[0]) == "the response is not HTTP (no line end after a chunk)" and len(heads) == 1
    assert time.monotonic() - t0 < 2


def test_chunks_adding_up_to_over_64_mib_are_refused_at_the_size_line_that_passes_the_limit():
    first = 40 << 20
    raw = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % first + b" " * first
           + b"\r\n%x\r\n" % (30 << 20))
    out, *_ = _post_all(_stall_after(raw), n=1, timeout=6)
    assert isinstance(out[0], HTTPUnreadable), out
    assert _one_line(out[0]).startswith("the response's body is over 64 MiB")
