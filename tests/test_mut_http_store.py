"""Gaps found by mutation testing of the lean HTTP client (``leap_cli/programs/http.py``) and the program store
(``leap_cli/programs/store.py``): responses a real server sends that were read wrong or waited on until the
timeout, proxies from the environment, connections left open or poisoned after a timeout, and ledger/call-log
rows of the store that were lost, double-counted or read back wrong."""

import asyncio
import base64
import socket
import sqlite3
import threading
import time
import zlib

import pytest

from leap_cli.errors import LeapError
from leap_cli.programs.store import ProgramStore
from tests.programs_llm_server import serve_requests


# ---- the HTTP client ----------------------------------------------------------------------------------------

_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture
def no_proxies(monkeypatch):
    """No proxy from the environment of the machine running the tests."""
    for name in _PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


def _serve(on_request):
    """``serve_requests`` handing ``on_request(n, head, reader, writer)``: (start, heads, conns, eofs)."""
    start, heads, _, conns, eofs = serve_requests(lambda n, head, body, reader, writer: on_request(n, head, reader,
                                                                                                   writer))
    return start, heads, conns, eofs


def _port(server) -> int:
    return server.sockets[0].getsockname()[1]


def _client(url_or_server, **kw):
    from leap_cli.programs.http import HTTPClient

    url = url_or_server if isinstance(url_or_server, str) else f"http://127.0.0.1:{_port(url_or_server)}/v1"
    return HTTPClient(url, {}, **kw)


def _answer(raw: bytes, *, close: bool = False):
    async def on_request(n, head, reader, writer):
        writer.write(raw)
        await writer.drain()
        return close
    return on_request


def _post_all(on_request, n: int = 1, **kw):
    """``n`` requests one after the other to a server answering with ``on_request``; the responses (or the error
    of the first that failed), the request heads, the connections accepted and the client."""
    async def main():
        start, heads, conns, _ = _serve(on_request)
        server = await start
        client = _client(server, **{"timeout": 2.0, **kw})
        out = []
        try:
            for _ in range(n):
                out.append(await client.post("/chat/completions", b"{}"))
        except Exception as e:  # noqa: BLE001 - returned for the test to look at
            out.append(e)
        await client.aclose()
        server.close()
        return out, heads, conns, client

    return asyncio.run(main())


def test_a_response_head_split_across_packets_at_its_blank_line_is_read():
    """A head whose closing CRLF CRLF came in two TCP segments was never found: the request waited for the timeout
    (the search for the separator went on after the bytes already seen, missing the part that began in them)."""
    async def on_request(n, head, reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"\n{}")
        await writer.drain()
        return False

    out, *_ = _post_all(on_request, timeout=1.5)
    assert out[0].status == 200 and out[0].body == b"{}"


def test_a_204_without_a_length_is_an_empty_answer_and_the_connection_is_reused():
    """A 204 No Content says no length (it has no body): it was read until the server closed, i.e. the timeout."""
    out, heads, conns, client = _post_all(_answer(b"HTTP/1.1 204 No Content\r\n\r\n"), n=2, timeout=1.0,
                                          max_connections=1)
    assert [(r.status, r.body) for r in out] == [(204, b""), (204, b"")]
    assert len(heads) == 2 and len(conns) == 1


@pytest.mark.parametrize("wrap", ["zlib", "raw"])
def test_a_deflate_body_is_inflated_in_either_of_its_forms(wrap):
    """Content-Encoding: deflate is a zlib stream by the RFC, a raw deflate stream from many servers: both are read."""
    body = b'{"choices": [], "note": "' + b"x" * 200 + b'"}'
    if wrap == "zlib":
        packed = zlib.compress(body)
    else:
        c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        packed = c.compress(body) + c.flush()
    raw = b"HTTP/1.1 200 OK\r\nContent-Encoding: deflate\r\nContent-Length: %d\r\n\r\n%s" % (len(packed), packed)
    out, *_ = _post_all(_answer(raw))
    assert out[0].body == body


def test_chunk_extensions_and_trailers_are_read_past():
    """A chunk-size line may carry ';name=value' extensions and the last chunk trailers: the body is the chunks'
    data, and the connection still serves the next request."""
    raw = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"3;ext=1\r\n{\"a\r\n4 ; q=\"x\"\r\n\": 1\r\n1\r\n}\r\n0\r\nX-Trailer: yes\r\n\r\n")
    out, heads, conns, _ = _post_all(_answer(raw), n=2, max_connections=1)
    assert [r.body for r in out] == [b'{"a": 1}', b'{"a": 1}'] and len(conns) == 1


@pytest.mark.parametrize("raw", [b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}",
                                 b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 2\r\n\r\n{}"],
                         ids=["http/1.0", "Close"])
def test_a_response_that_ends_its_connection_is_not_reused(raw):
    """An HTTP/1.0 answer without keep-alive, or 'Connection: Close' in any case, ends the connection: the next
    request goes out on a new one (it was sent on the old one and had to be sent twice)."""
    async def on_request(n, head, reader, writer):
        writer.write(raw)
        await writer.drain()
        await asyncio.sleep(0.3)  # the server closes a moment later
        return True

    out, heads, conns, client = _post_all(on_request, n=2, max_connections=1, timeout=5)
    assert [r.status for r in out] == [200, 200] and client.resent == 0
    assert len(conns) == 2 and len(heads) == 2


def test_the_host_header_carries_a_port_that_is_not_the_default():
    """RFC 9110: Host names the port unless it is the scheme's default (a virtual-hosted server on :8000 routes by it)."""
    out, heads, *_ = _post_all(_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"))
    port = heads[0].split(b"Host: 127.0.0.1:")[1].split(b"\r\n")[0]
    assert out[0].status == 200 and port.isdigit() and int(port) > 0


def test_a_keep_alive_connection_outlives_the_timeout_of_its_last_request():
    """The timer of an answered request was left running: once it fired, the idle connection failed the next
    request with a timeout at once, however fast the server answered."""
    from leap_cli.programs.http import HTTPClient

    async def main():
        start, heads, conns, _ = _serve(_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"))
        server = await start
        client = HTTPClient(f"http://127.0.0.1:{_port(server)}/v1", {}, max_connections=1, timeout=0.3)
        first = await client.post("/chat/completions", b"{}")
        await asyncio.sleep(0.5)  # idle past the first request's deadline
        second = await client.post("/chat/completions", b"{}")
        await client.aclose()
        server.close()
        return first, second, conns

    first, second, conns = asyncio.run(main())
    assert first.status == second.status == 200 and len(conns) == 1


def test_a_request_that_timed_out_closes_its_connection():
    """A request past --timeout must drop its connection, so that the server stops the generation it would bill (and
    no socket is left open per timed-out request)."""
    from leap_cli.programs.http import HTTPTimeout

    closed = []

    async def on_request(n, head, reader, writer):
        t0 = time.monotonic()
        await reader.read(1)  # never answers: waits for the client to go
        closed.append(time.monotonic() - t0)
        return True

    async def main():
        start, _, _, _ = _serve(on_request)
        server = await start
        client = _client(server, timeout=0.3)
        with pytest.raises(HTTPTimeout):
            await client.post("/chat/completions", b"{}")
        for _ in range(40):
            if closed:
                break
            await asyncio.sleep(0.05)
        await client.aclose()
        server.close()

    asyncio.run(main())
    assert closed and closed[0] < 1.5


def test_a_fresh_connection_reset_without_an_answer_says_reset():
    """A reset is said to be one (not 'closed the connection'): it points at a proxy or a firewall, not a server."""
    import socket
    import struct

    from leap_cli.programs.http import HTTPConnectionError

    async def on_request(n, head, reader, writer):
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
        return True

    out, *_ = _post_all(on_request)
    assert isinstance(out[0], HTTPConnectionError) and str(out[0]) == "the server reset the connection"


def test_max_connections_bounds_the_requests_in_flight():
    """--concurrency is the most requests (and connections) the server sees at once."""
    live, peak = [0], [0]

    async def on_request(n, head, reader, writer):
        live[0] += 1
        peak[0] = max(peak[0], live[0])
        await asyncio.sleep(0.1)
        live[0] -= 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        return False

    async def main():
        start, heads, conns, _ = _serve(on_request)
        server = await start
        client = _client(server, max_connections=2, timeout=5)
        out = await asyncio.gather(*(client.post("/chat/completions", b"{}") for _ in range(6)))
        await client.aclose()
        server.close()
        return out, conns

    out, conns = asyncio.run(main())
    assert [r.status for r in out] == [200] * 6 and peak[0] == 2 and len(conns) == 2


def test_a_server_answering_garbage_fails_at_once_as_not_http():
    """A server answering something other than HTTP (here over 1 MiB with no end of head) fails the request in one
    line saying so, at once, rather than buffering it until the timeout."""
    from leap_cli.programs.http import HTTPConnectionError

    out, *_ = _post_all(_answer(b"x" * ((1 << 20) + 4096)), timeout=3)
    assert isinstance(out[0], HTTPConnectionError) and str(out[0]).startswith("the response is not HTTP (")
    out, *_ = _post_all(_answer(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"), timeout=3)
    assert isinstance(out[0], HTTPConnectionError) and str(out[0]).startswith("the response is not HTTP (")


def test_a_response_completed_as_its_deadline_passes_leaves_a_usable_connection():
    """The event loop stalls (a foreground store write, a GC pause) while a response arrives and its deadline
    passes: the response is returned, and the keep-alive connection must still serve the next request."""
    import socket

    from leap_cli.programs.http import HTTPClient

    listener = socket.create_server(("127.0.0.1", 0))
    got = []

    def serve():
        conn, _ = listener.accept()
        with conn:
            data = b""
            while len(got) < 2:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
                while b"\r\n\r\n{}" in data:
                    data = data.split(b"\r\n\r\n{}", 1)[1]
                    got.append(time.monotonic())
                    if len(got) == 1:
                        time.sleep(0.2)  # answers while the client's loop is stalled, before its deadline
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    async def main():
        client = HTTPClient(f"http://127.0.0.1:{listener.getsockname()[1]}/v1", {}, max_connections=1, timeout=0.45)

        async def stall():
            await asyncio.sleep(0.05)
            time.sleep(0.7)  # the loop is blocked past the deadline (0.45 s)

        stalled = asyncio.ensure_future(stall())
        try:
            first = await client.post("/chat/completions", b"{}")
            await stalled
            second = await client.post("/chat/completions", b"{}")
        finally:
            await client.aclose()
        return first, second

    try:
        first, second = asyncio.run(main())
    finally:
        listener.close()
        thread.join(2)
    assert first.status == second.status == 200 and len(got) == 2


# ---- the HTTP client: proxies from the environment ----------------------------------------------------------

def test_a_local_server_is_never_reached_through_a_proxy(no_proxies):
    """HTTP_PROXY set and NO_PROXY not: a local vLLM/llama.cpp on 127.0.0.1 is still reached directly."""
    no_proxies.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # (discard: nothing answers there)
    out, heads, *_ = _post_all(_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"))
    assert out[0].status == 200 and heads[0].startswith(b"POST /v1/chat/completions ")


def test_all_proxy_with_credentials_carries_them_to_the_proxy(no_proxies):
    """ALL_PROXY is used where no HTTP_PROXY is set, and the user:password in its URL (percent-decoded) goes to the
    proxy as Proxy-Authorization: an authenticating proxy refused every request."""
    async def main():
        start, heads, _, _ = _serve(_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"))
        server = await start
        no_proxies.setenv("ALL_PROXY", f"http://alice:p%40ss@127.0.0.1:{_port(server)}")
        client = _client("http://api.example.test/v1", timeout=5)
        r = await client.post("/chat/completions", b"{}")
        await client.aclose()
        server.close()
        return r, heads

    r, heads = asyncio.run(main())
    token = base64.b64encode(b"alice:p@ss")
    assert r.status == 200 and heads[0].startswith(b"POST http://api.example.test/v1/chat/completions HTTP/1.1")
    assert b"\r\nProxy-Authorization: Basic " + token + b"\r\n" in heads[0]


def _through_proxy(no_proxies, base_url, status=None, credentials=""):
    """A request to ``base_url`` through an HTTPS_PROXY that answers CONNECT with ``status`` (None: a port where
    nothing listens): (the HTTPConnectionError's text, the CONNECT heads the proxy got, the proxy's port)."""
    from leap_cli.programs.http import HTTPConnectionError

    connects = []

    async def proxy(reader, writer):
        connects.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()

    async def main():
        if status is None:
            free = socket.socket()
            free.bind(("127.0.0.1", 0))
            port, server = free.getsockname()[1], None
            free.close()  # (nothing listens there now)
        else:
            server = await asyncio.start_server(proxy, "127.0.0.1", 0)
            port = _port(server)
        no_proxies.setenv("HTTPS_PROXY", f"http://{credentials}127.0.0.1:{port}")
        client = _client(base_url, timeout=5)
        try:
            with pytest.raises(HTTPConnectionError) as err:
                await client.post("/chat/completions", b"{}")
        finally:
            await client.aclose()
            if server is not None:
                server.close()
        return str(err.value), connects, port

    return asyncio.run(main())


def test_a_refused_connect_tunnel_is_said_with_its_status_and_credentials_were_offered(no_proxies):
    """An HTTPS_PROXY answering CONNECT with 407 fails the request in one line naming the status (it went on to a
    TLS handshake with the proxy); the CONNECT carried the proxy's credentials."""
    msg, connects, _ = _through_proxy(no_proxies, "https://api.example.test/v1", "407 Proxy Authentication Required",
                                      "bob:secret@")
    assert msg == "the proxy refused the tunnel (HTTP 407)"
    assert connects[0].startswith(b"CONNECT api.example.test:443 HTTP/1.1\r\n")
    assert connects[0].split(b"\r\n")[1] == b"Host: api.example.test:443"
    assert b"Proxy-Authorization: Basic " + base64.b64encode(b"bob:secret") in connects[0]


def test_a_proxy_that_cannot_be_reached_is_named_as_the_proxy(no_proxies):
    """The error named the endpoint's host ("cannot connect to api.example.test:443"), where it was the proxy from
    the environment that did not answer."""
    msg, _, port = _through_proxy(no_proxies, "https://api.example.test/v1")
    assert msg.startswith(f"cannot connect to the proxy 127.0.0.1:{port} (the environment's https_proxy or all_proxy")
    assert "api.example.test" in msg  # (how to go around it)


def test_the_connect_line_brackets_an_ipv6_endpoint(no_proxies):
    """``CONNECT 2001:db8::1:443`` cannot be told from a port of the address: RFC 9110 writes ``[2001:db8::1]:443``."""
    msg, connects, _ = _through_proxy(no_proxies, "https://[2001:db8::1]/v1", "403 Forbidden")
    assert msg == "the proxy refused the tunnel (HTTP 403)"
    assert connects[0].split(b"\r\n")[:2] == [b"CONNECT [2001:db8::1]:443 HTTP/1.1", b"Host: [2001:db8::1]:443"]


# ---- the store ----------------------------------------------------------------------------------------------

def _log(store, narration_id, *, model="m", backend="openai", prompt_tokens=0, cached=False, response="r", error=None):
    store.log_call(narration_id=narration_id, backend=backend, model=model, prompt_hash="p", cache_key="k", round=1,
                   response=response, usage={"prompt_tokens": prompt_tokens, "completion_tokens": 1}, latency=0.1,
                   attempts=1, cached=cached, outcome="valid" if response else "failed", error=error)


def test_last_paid_tokens_is_the_latest_paid_reply_of_that_model(tmp_path):
    """The check of a capped run reads the prompt tokens of the model's latest paid reply: not an older one, a cache
    hit (nothing paid) or a failed request (no reply), nor another model's."""
    with ProgramStore(tmp_path / "cache.sqlite", commit_every=3600) as s:
        assert s.last_paid_tokens("openai", "m") is None
        _log(s, "a", prompt_tokens=100)
        _log(s, "b", prompt_tokens=200)
        _log(s, "c", prompt_tokens=999, cached=True)
        _log(s, "d", prompt_tokens=555, response=None, error="HTTP 500")
        _log(s, "e", prompt_tokens=777, model="other")
        assert s.last_paid_tokens("openai", "m") == 200
        assert s.last_paid_tokens("anthropic", "m") is None


def test_an_error_in_the_call_log_is_redacted(tmp_path):
    """An error message echoing the API key (a provider's 401 body does) is stored without it."""
    from leap_cli.programs.redact import register_secret

    key = "sk-mutB-secret-key-0123456789"
    register_secret(key)
    with ProgramStore(tmp_path / "cache.sqlite") as s:
        _log(s, "a", response=None, error=f"HTTP 401: invalid key {key}")
        error = s.calls("a")[0]["error"]
    assert key not in error and "HTTP 401" in error
    assert key.encode() not in (tmp_path / "cache.sqlite").read_bytes()


def test_buffered_spends_add_up_in_every_column(tmp_path):
    """Two spends on one output before a commit: the ledger holds the sum of their costs, tokens and requests."""
    out = tmp_path / "out.jsonl"
    with ProgramStore(tmp_path / "cache.sqlite", commit_every=3600) as s:
        s.add_spend(out, 0.5, {"prompt_tokens": 10, "completion_tokens": 2})
        s.add_spend(out, 0.25, {"prompt_tokens": 5, "completion_tokens": 1}, 2)
    with ProgramStore(tmp_path / "cache.sqlite") as s:
        s.add_spend(out, 1.0, {"prompt_tokens": 1, "completion_tokens": 1})
        spent = s.spent(out)
    assert spent == {"cost": pytest.approx(1.75), "prompt_tokens": 16, "completion_tokens": 4, "requests": 4}


def _store_whose_first_write_waits_then_fails(path, fail: bool = True):
    """A store with the writer thread whose first write waits for ``release`` (returned), then fails as a full
    disk does (``fail``; else goes through); later writes go through."""
    release, failures = threading.Event(), [True] if fail else []

    class Slow(ProgramStore):
        def _write(self, rows):
            release.wait(10)
            if failures:
                failures.pop()
                raise LeapError("cannot write the program cache (disk is full)")
            super()._write(rows)

    return Slow(path, commit_every=0.0, background=True), release


def test_a_failed_background_write_keeps_the_spend_added_while_it_was_written(tmp_path):
    """The spend in a failed write goes back into the buffer: added to what was spent on the same output meanwhile,
    not in its place (--max-cost would no longer count one of them)."""
    path, out = tmp_path / "cache.sqlite", tmp_path / "out.jsonl"
    s, release = _store_whose_first_write_waits_then_fails(path)
    s.add_spend(out, 0.25, {"prompt_tokens": 3})  # due at once: handed to the writer thread, which waits
    s.add_spend(out, 0.5, {"prompt_tokens": 4}, 2)  # the thread is busy: buffered
    release.set()
    with pytest.raises(LeapError):
        s.commit()
    s.close()
    with ProgramStore(path) as check:
        spent = check.spent(out)
    assert spent["cost"] == pytest.approx(0.75) and spent["prompt_tokens"] == 7 and spent["requests"] == 3


def test_a_batch_ingest_counts_each_request_id_once_and_each_result_without_one(tmp_path):
    """One request id twice in one ingest (two copies of a result) was paid once; results without an id (a
    compatible server's) are each counted. The counts returned are what the ledger got."""
    out, u = tmp_path / "out.jsonl", {"prompt_tokens": 10, "completion_tokens": 1}
    with ProgramStore(tmp_path / "cache.sqlite") as s:
        added = s.add_batch_spend(out, [("r1", 1.0, u), ("r1", 1.0, u), (None, 0.5, u), (None, 0.5, u), ("r2", 2.0, u)])
        assert added == {"requests": 4, "cost": pytest.approx(4.0)}
        assert s.spent(out)["requests"] == 4 and s.spent(out)["prompt_tokens"] == 40


def test_a_reingest_of_a_large_batch_adds_nothing(tmp_path):
    """The ids already paid are looked up in parts of 500: each id of a batch over that size is found again."""
    out, u = tmp_path / "out.jsonl", {"prompt_tokens": 1, "completion_tokens": 1}
    spends = [(f"req-{i}", 0.01, u) for i in range(1201)]
    with ProgramStore(tmp_path / "cache.sqlite") as s:
        assert s.add_batch_spend(out, spends)["requests"] == 1201
        assert s.add_batch_spend(out, spends) == {"requests": 0, "cost": 0}
        assert s.spent(out)["requests"] == 1201


def test_a_failed_background_write_is_raised_by_the_next_write_and_its_rows_kept(tmp_path):
    """With the writer thread, a write that failed is raised by the next due write (not only by a commit), and its
    rows are written by a later one."""
    path = tmp_path / "cache.sqlite"
    s, release = _store_whose_first_write_waits_then_fails(path)
    s.put("k1", "reply 1", {}, "m")  # due at once: handed to the writer thread, which fails it
    release.set()
    s._flush.exception(5)  # (the failed write is over)
    with pytest.raises(LeapError, match="disk is full"):
        s.put("k2", "reply 2", {}, "m")
    s.close()
    with ProgramStore(path) as check:
        assert check.get("k1")[0] == "reply 1" and check.get("k2")[0] == "reply 2"


def test_a_full_disk_when_the_cache_is_opened_says_to_free_space(tmp_path, monkeypatch):
    """'database or disk is full' on opening the cache says to free space and run again, not to move the cache
    aside (which would lose the spend --max-cost counts)."""
    real = sqlite3.connect

    def connect(*a, **kw):
        db = real(*a, **kw)

        class Full:
            def execute(self, sql, *args):
                if sql.startswith("CREATE TABLE"):
                    raise sqlite3.OperationalError("database or disk is full")
                return db.execute(sql, *args)

            def __getattr__(self, name):
                return getattr(db, name)

            def __enter__(self):
                return db.__enter__()

            def __exit__(self, *exc):
                return db.__exit__(*exc)
        return Full()

    monkeypatch.setattr(sqlite3, "connect", connect)
    with pytest.raises(LeapError) as e:
        ProgramStore(tmp_path / "cache.sqlite")
    assert "disk is full" in str(e.value) and "free space" in e.value.fix
