"""A small HTTP/1.1 client for one thing: POSTing ready-made JSON bodies to a chat-completions endpoint.

Why not the ``openai`` client or ``httpx``: against a local server answering at once, the official client
costs ~2.3 ms of CPU per request and ``httpx`` alone ~1.6 ms (typed request building, connection-pool
bookkeeping, header models), this ~0.2 ms (``benchmarks/bench_generate.py``). At 32 requests in flight that
is the difference between a client that keeps up with the concurrency bound and one that does not.

Each connection is an ``asyncio.Protocol`` that the response parser reads from (one buffer, no stream
objects), the request goes out in one write (head prebuilt but for its length), and a request's timeout is
one timer that fails its wait (not ``asyncio.timeout``).

What it does: keep-alive connections reused across requests (at most ``max_connections`` open at once),
``http`` and ``https`` (certifi's CA bundle when installed, else the system's; ``SSL_CERT_FILE`` wins),
proxies from the environment (``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY``/``NO_PROXY``: ``CONNECT`` tunnels for
https, absolute URIs for http; never for localhost), ``Content-Length`` and chunked bodies, gzip/deflate, a timeout per request.
A reused connection that the server closed while idle (no byte of a response came, within ``STALE_CLOSE_S`` of the
request) is retried once on a fresh one.
"""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import urllib.request
import zlib
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from leap_cli.programs.redact import register_secret


# A reused connection that ends this soon after the request went out, with no byte of a response, was closed
# by the server while idle (its keep-alive timeout): the request is sent once more on a fresh connection.
STALE_CLOSE_S = 1.0

# While requests are in flight the client's heartbeat runs every BEAT_S; one STALL_S late says the process was
# stopped (or its event loop held): the requests' clocks restart (``HTTPClient._heartbeat``).
BEAT_S = 0.25
STALL_S = 1.0


class HTTPTimeout(Exception):
    """No complete response within the timeout."""


class HTTPConnectionError(Exception):
    """The connection could not be made or broke before a complete response."""


class HTTPUnreadable(HTTPConnectionError):
    """A whole response that cannot be read: an encoding this client does not decode, a compressed body that is
    damaged, a body over ``MAX_BODY``. The server had the request (and may bill it): not sent again on its own."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


def _ssl_context() -> ssl.SSLContext:
    if not (os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR")):
        try:
            import certifi

            return ssl.create_default_context(cafile=certifi.where())
        except ImportError:
            pass
    return ssl.create_default_context()


_HEAD_LIMIT = 1 << 20  # bytes of a response head (or chunk-size line) at most
MAX_BODY = 64 << 20  # bytes of a response body at most, decoded (a chat completion is a few kB)
_DIGITS = frozenset(b"0123456789")
_HEX = frozenset(b"0123456789abcdefABCDEF")


def _size(text: bytes, digits: frozenset, base: int) -> int:
    """A Content-Length or chunk size, read strictly (no sign, no 0x, no underscores, no spaces inside)."""
    text = text.strip()
    if not text or not set(text) <= digits:
        raise ValueError(f"a body size of {text[:40]!r}")
    n = int(text, base)
    if n > MAX_BODY:
        raise HTTPUnreadable(f"the response's body is over {MAX_BODY >> 20} MiB (a chat completion is a few kB): "
                             "check --base-url")
    return n


def _decode(body: bytes, encoding: str) -> bytes:
    """The body of a response sent with ``Content-Encoding: encoding`` (gzip of one or more members, deflate with or
    without its zlib header), at most ``MAX_BODY`` bytes."""
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "x-gzip"):
        return _inflate(body, 16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        try:
            return _inflate(body, zlib.MAX_WBITS)
        except zlib.error:  # (some servers send raw deflate under the name)
            return _inflate(body, -zlib.MAX_WBITS)
    raise HTTPUnreadable(f"the response is encoded as {encoding!r}, which leap cannot read (it asks for gzip or "
                         "deflate): check what in front of the server sets the encoding")


def _inflate(body: bytes, wbits: int) -> bytes:
    out = bytearray()
    while body:
        d = zlib.decompressobj(wbits)
        out += d.decompress(body, MAX_BODY + 1 - len(out))
        if len(out) > MAX_BODY:
            raise HTTPUnreadable(f"the response's body is over {MAX_BODY >> 20} MiB once decompressed (a chat "
                                 "completion is a few kB): check --base-url")
        if not d.eof:
            raise zlib.error("incomplete or truncated stream")
        # gzip: the next member (RFC 1952); bytes after the last (zero padding, a CRLF) are dropped, as gzip -d
        # and browsers drop them
        body = d.unused_data if wbits == 16 + zlib.MAX_WBITS and d.unused_data[:2] == b"\x1f\x8b" else b""
    return bytes(out)


def _broken(e: BaseException, got: int = 0) -> str:
    """What broke an exchange, in words (not the exception's name); ``got``: bytes of a response received (a head
    already parsed is no longer in the partial bytes a close leaves)."""
    if isinstance(e, asyncio.IncompleteReadError):
        return ("the server closed the connection mid-response" if e.partial or got else
                "the server closed the connection without answering")
    if isinstance(e, ConnectionResetError):
        return "the server reset the connection"
    if isinstance(e, zlib.error):
        return f"the response's compressed body is damaged ({e})"
    if isinstance(e, ValueError):
        return f"the response is not HTTP ({e})"
    return f"{type(e).__name__}: {e}"


class _Conn(asyncio.Protocol):
    """One keep-alive connection: the bytes received so far in a buffer that the response parser reads from.
    (A protocol rather than asyncio's streams: ~0.05 ms less CPU per request.) A request's timeout is a timer
    that fails the wait for more bytes (``expire``)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None
        self.closed = False  # EOF or connection lost
        self.error: BaseException | None = None
        self.timed_out = False
        self.got = 0  # bytes received since the last request went out (``write``)
        self.timer: asyncio.TimerHandle | None = None  # the request's timeout (``HTTPClient.restart_clocks``)

    # ---- asyncio.Protocol ----
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.got += len(data)
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False

    def connection_lost(self, exc) -> None:
        self.closed, self.error = True, exc
        self._wake()

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def expire(self) -> None:
        """The request's timer came due: it times out a turn of the event loop later, unless its clock was restarted
        meanwhile. (A SIGCONT's handler runs at Python's next check for signals: where the process was stopped as
        the loop took its due timers, it ran after some of them, and those requests were abandoned at the continue,
        their replies there, and sent again.)"""
        handle = self.timer
        asyncio.get_running_loop().call_soon(self._expire, handle)

    def _expire(self, handle: asyncio.TimerHandle | None) -> None:
        if self.timer is not handle:  # (restarted, or the request ended)
            return
        self.timed_out = True
        w = self.waiter
        if w is not None and not w.done():
            w.set_exception(HTTPTimeout("timed out"))

    # ---- reading ----
    async def _more(self) -> None:
        if self.timed_out:
            raise HTTPTimeout("timed out")
        if self.closed:
            if isinstance(self.error, OSError):
                raise self.error
            raise asyncio.IncompleteReadError(bytes(self.buf), None)
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    async def read_head(self) -> bytes:
        """A response head, through its empty line: CRLF line ends, or bare LF ones as some servers send."""
        start = 0
        while True:
            crlf, lf = self.buf.find(b"\n\r\n", start), self.buf.find(b"\n\n", start)
            ends = [i + 3 for i in (crlf,) if i >= 0] + [i + 2 for i in (lf,) if i >= 0]
            if ends:
                end = min(ends)
                out = bytes(self.buf[:end])
                del self.buf[:end]
                return out
            if len(self.buf) > _HEAD_LIMIT:
                raise ValueError(f"no end of the head in the first {_HEAD_LIMIT} bytes")
            start = max(0, len(self.buf) - 2)
            await self._more()

    async def readline(self) -> bytes:
        """A line (a chunk size, a trailer), without its line end (CRLF or LF)."""
        start = 0
        while True:
            i = self.buf.find(b"\n", start)
            if i >= 0:
                out = bytes(self.buf[:i]).rstrip(b"\r")
                del self.buf[:i + 1]
                return out
            if len(self.buf) > _HEAD_LIMIT:
                raise ValueError(f"no line end in the first {_HEAD_LIMIT} bytes")
            start = len(self.buf)
            await self._more()

    async def readexactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            await self._more()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def read_to_close(self) -> bytes:
        while not self.closed:
            if len(self.buf) > MAX_BODY:
                raise HTTPUnreadable(f"the response's body is over {MAX_BODY >> 20} MiB (a chat completion is a few "
                                     "kB): check --base-url")
            await self._more()
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def close(self) -> None:
        try:
            if self.transport is not None:
                self.transport.close()
        except Exception:  # noqa: BLE001 - closing a broken transport
            pass


class HTTPClient:
    def __init__(self, base_url: str, headers: dict[str, str], *, max_connections: int = 8, timeout: float = 60.0):
        u = urlsplit(base_url.strip())
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.scheme, self.host = u.scheme, u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.prefix = u.path.rstrip("/")  # (the path's own slash: "/deployments/x/?api-version=" took two)
        self.query = f"?{u.query}" if u.query else ""  # kept on every request (e.g. Azure's ?api-version=)
        self.resent = 0  # requests sent once more on a fresh connection (a keep-alive one closed while idle)
        self.timeout = timeout
        self._ssl = _ssl_context() if self.scheme == "https" else None
        default_port = self.port == (443 if self.scheme == "https" else 80)
        host_header = self.host if default_port else f"{self.host}:{self.port}"
        if ":" in self.host and not host_header.startswith("["):  # IPv6 literal
            host_header = f"[{self.host}]" if default_port else f"[{self.host}]:{self.port}"
        self._proxy = self._proxy_for(base_url)
        self._absolute = self._proxy is not None and self.scheme == "http"  # http through a proxy: absolute URIs
        lines = [f"Host: {host_header}", "Accept: application/json", "Accept-Encoding: gzip, deflate",
                 "Connection: keep-alive", *(f"{k}: {v}" for k, v in headers.items())]
        if self._absolute and self._proxy.get("auth"):
            lines.append(f"Proxy-Authorization: {self._proxy['auth']}")
        self._headers = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self._origin = f"{self.scheme}://{host_header}"
        self._idle: list[_Conn] = []
        self._busy: set[_Conn] = set()  # connections of the requests in flight
        self._beat: asyncio.TimerHandle | None = None  # the heartbeat's next turn (``_heartbeat``)
        self._slots = asyncio.Semaphore(max(1, max_connections))

    def restart_clocks(self) -> None:
        """Give every request in flight its whole ``timeout`` again from now: the process was stopped (^Z then fg,
        a cluster's suspend: SIGSTOP, SIGCONT), and the time it could not read counted against the requests. They
        were abandoned at the continue, their replies there, and sent (and paid) again. (Called on SIGCONT, before
        the event loop runs a timer that came due meanwhile.)"""
        loop = asyncio.get_running_loop()
        for conn in self._busy:
            if conn.timer is not None and not conn.timed_out:
                conn.timer.cancel()
                conn.timer = loop.call_at(loop.time() + self.timeout, conn.expire)

    def _heartbeat(self, due: float) -> None:
        """A turn of the event loop every ``BEAT_S`` while requests are in flight. One that comes ``STALL_S`` late
        finds the process was stopped (or the loop held) and restarts the requests' clocks: the SIGCONT handler
        does so too, but a signal delivered to another thread (a validation worker's) reaches Python after the
        loop has taken the due timers, and those requests were abandoned and sent (and paid) again (2 of 8 in a
        CI run). It comes due in the turn that takes any request's timer due in the stop, and a request's timer
        fails it a turn later (``_Conn.expire``): the restart comes first."""
        loop = asyncio.get_running_loop()
        if loop.time() - due > STALL_S:
            self.restart_clocks()
        self._beat = None
        if self._busy:
            self._start_heartbeat(loop)

    def _start_heartbeat(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._beat is None:
            due = loop.time() + BEAT_S
            self._beat = loop.call_at(due, self._heartbeat, due)

    def _proxy_for(self, url: str) -> dict | None:
        proxies = urllib.request.getproxies()
        proxy = proxies.get(self.scheme) or proxies.get("all")
        # a local server (vLLM, llama.cpp on this machine) is never reached through a proxy
        if not proxy or self.host in ("localhost", "127.0.0.1", "::1") or urllib.request.proxy_bypass(self.host):
            return None
        p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        auth = None
        if p.username:
            token = base64.b64encode(f"{unquote(p.username)}:{unquote(p.password or '')}".encode()).decode()
            auth = f"Basic {token}"
            register_secret(unquote(p.password or ""))  # (redacted wherever said, as the API key)
            register_secret(token)
        return {"host": p.hostname, "port": p.port or 8080, "auth": auth}

    async def post(self, path: str, body: bytes) -> Response:
        """POST ``body`` (JSON) to ``base_url + path``; raises HTTPTimeout or HTTPConnectionError."""
        target = (self._origin if self._absolute else "") + self.prefix + path + self.query
        head = (f"POST {target} HTTP/1.1\r\n".encode("latin-1") + self._headers +
                b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        async with self._slots:
            loop = asyncio.get_running_loop()
            try:
                return await self._exchange(head, body, loop, loop.time() + self.timeout)
            except HTTPTimeout:
                raise HTTPTimeout(f"no complete response within {self.timeout:g} s (--timeout)") from None

    async def _exchange(self, head: bytes, body: bytes, loop: asyncio.AbstractEventLoop, deadline: float) -> Response:
        while True:
            conn = None
            while self._idle and conn is None:
                conn = self._idle.pop()
                if conn.closed or conn.buf:  # the server closed it while it was idle, or sent bytes no request
                    conn.close()  # asked for (read as the next request's reply, they gave it another's)
                    conn = None
            reused = conn is not None
            if conn is None:
                try:
                    conn = await asyncio.wait_for(self._connect(), max(0.0, deadline - loop.time()))
                except (TimeoutError, asyncio.TimeoutError):
                    raise HTTPTimeout("timed out") from None
            conn.timer = loop.call_at(deadline, conn.expire)
            # (a deadline is a request's: one that passed as the last response's bytes came marked the connection)
            conn.got, conn.timed_out, written = 0, False, loop.time()
            self._busy.add(conn)
            self._start_heartbeat(loop)
            try:
                conn.write(head + body if len(body) < 65536 else head)
                if len(body) >= 65536:
                    conn.write(body)
                resp, keep = await self._read_response(conn)
            except HTTPTimeout:
                conn.close()
                raise
            except (OSError, asyncio.IncompleteReadError, ValueError, zlib.error) as e:
                conn.close()
                if isinstance(e, zlib.error):  # (a whole response: sent again, it may be paid again)
                    raise HTTPUnreadable(_broken(e, conn.got)) from None
                if reused and isinstance(e, (asyncio.IncompleteReadError, ConnectionError)) and not conn.got and (
                        loop.time() - written < STALE_CLOSE_S):
                    # the server had closed the idle connection: once more on a fresh one (not where a byte of a
                    # response came, or the close came late: the server had the request, and may bill it)
                    self.resent += 1
                    continue
                raise HTTPConnectionError(_broken(e, conn.got)) from None
            except BaseException:
                conn.close()  # cancelled mid-response: the connection is in an unknown state
                raise
            finally:
                conn.timer.cancel()
                conn.timer = None
                self._busy.discard(conn)
            if keep and not conn.closed and not conn.buf:  # (bytes past the response: not the next one's reply)
                self._idle.append(conn)
            else:
                conn.close()
            return resp

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            if self._proxy is None:
                _, conn = await loop.create_connection(_Conn, self.host, self.port, ssl=self._ssl,
                                                       server_hostname=self.host if self._ssl else None)
                return conn
            try:
                _, conn = await loop.create_connection(_Conn, self._proxy["host"], self._proxy["port"])
            except OSError as e:  # (said as the endpoint's host, the user looked at the wrong machine)
                raise HTTPConnectionError(
                    f"cannot connect to the proxy {self._proxy['host']}:{self._proxy['port']} (the environment's "
                    f"{self.scheme}_proxy or all_proxy; no_proxy={self.host} bypasses it): {e}") from None
            if self.scheme == "https":
                auth = f"Proxy-Authorization: {self._proxy['auth']}\r\n" if self._proxy["auth"] else ""
                target = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"  # (IPv6)
                conn.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n"
                           .encode("latin-1"))
                resp, _ = await self._read_response(conn, head_only=True)
                if resp.status != 200:
                    conn.close()
                    raise HTTPConnectionError(f"the proxy refused the tunnel (HTTP {resp.status})")
                conn.transport = await loop.start_tls(conn.transport, conn, self._ssl, server_hostname=self.host)
            return conn
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as e:
            plain = isinstance(e, ssl.SSLError) and "WRONG_VERSION_NUMBER" in str(e)  # (TLS to a plain http server)
            raise HTTPConnectionError(f"cannot connect to {self.host}:{self.port}: {e}"
                                      + (" (the server speaks plain http: give --base-url with http://)" if plain
                                         else "")) from None

    async def _read_response(self, reader: _Conn, head_only: bool = False) -> tuple[Response, bool]:
        while True:
            raw = await reader.read_head()
            lines = raw.decode("latin-1").replace("\r\n", "\n").split("\n")
            version, _, rest = lines[0].partition(" ")
            status = int(rest[:3])
            headers: dict[str, str] = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    name, value = name.strip().lower(), value.strip()
                    headers[name] = f"{headers[name]}, {value}" if name in headers else value
            if not 100 <= status < 200:
                break
        if head_only:
            return Response(status, headers, b""), False
        keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        codings = [c.strip() for c in headers.get("transfer-encoding", "").lower().split(",") if c.strip()]
        if "chunked" in codings:
            parts, total = [], 0
            while True:
                size = _size((await reader.readline()).split(b";")[0], _HEX, 16)
                if size == 0:
                    while await reader.readline():  # trailers, through their empty line
                        pass
                    break
                total += size
                if total > MAX_BODY:
                    raise HTTPUnreadable(f"the response's body is over {MAX_BODY >> 20} MiB (a chat completion is "
                                         "a few kB): check --base-url")
                parts.append(await reader.readexactly(size))
                if await reader.readline():
                    raise ValueError("no line end after a chunk")
            body = b"".join(parts)
        elif "content-length" in headers:
            body = await reader.readexactly(_size(headers["content-length"].encode("latin-1"), _DIGITS, 10))
        elif status in (204, 304):
            body = b""
        else:
            body, keep = await reader.read_to_close(), False
        # the transfer codings but chunked, last applied first ("gzip, chunked"), then the content's encoding
        encodings = [c for c in reversed(codings) if c not in ("chunked", "identity")]
        encodings.append(headers.get("content-encoding", "").strip().lower())
        try:
            decoded = body
            for encoding in encodings:
                decoded = _decode(decoded, encoding)
            body = decoded
        except (HTTPUnreadable, zlib.error):
            if 200 <= status < 300:
                raise
            # an error page: its status is what counts (a 503 is retried whatever its page), its words a help
        return Response(status, headers, body), keep

    async def aclose(self) -> None:
        while self._idle:
            self._idle.pop().close()
