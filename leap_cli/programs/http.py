"""A small HTTP/1.1 client for one thing: POSTing ready-made JSON bodies to a chat-completions endpoint.

Why not the ``openai`` client or ``httpx``: against a local server answering at once, the official client
costs ~2.3 ms of CPU per request and ``httpx`` alone ~1.6 ms (typed request building, connection-pool
bookkeeping, header models), this ~0.2 ms (``benchmarks/bench_generate.py``). At 32 requests in flight that
is the difference between a client that keeps up with the concurrency bound and one that does not.

What it does: keep-alive connections reused across requests (at most ``max_connections`` open at once),
``http`` and ``https`` (certifi's CA bundle when installed, else the system's; ``SSL_CERT_FILE`` wins),
proxies from the environment (``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY``/``NO_PROXY``: ``CONNECT`` tunnels for
https, absolute URIs for http; never for localhost), ``Content-Length`` and chunked bodies, gzip/deflate, a timeout per request.
A reused connection that the server closed while idle is retried once on a fresh one.
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


class HTTPTimeout(Exception):
    """No complete response within the timeout."""


class HTTPConnectionError(Exception):
    """The connection could not be made or broke before a complete response."""


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


class _Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception:  # noqa: BLE001 - closing a broken transport
            pass


class HTTPClient:
    def __init__(self, base_url: str, headers: dict[str, str], *, max_connections: int = 8, timeout: float = 60.0):
        u = urlsplit(base_url.rstrip("/"))
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.scheme, self.host = u.scheme, u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.prefix = u.path or ""
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
        self._slots = asyncio.Semaphore(max(1, max_connections))
        self._timeout_cm = getattr(asyncio, "timeout", None)

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
        return {"host": p.hostname, "port": p.port or 8080, "auth": auth}

    async def post(self, path: str, body: bytes) -> Response:
        """POST ``body`` (JSON) to ``base_url + path``; raises HTTPTimeout or HTTPConnectionError."""
        target = (self._origin if self._absolute else "") + self.prefix + path
        head = (f"POST {target} HTTP/1.1\r\n".encode("latin-1") + self._headers +
                b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        async with self._slots:
            try:
                if self._timeout_cm is not None:
                    async with self._timeout_cm(self.timeout):
                        return await self._exchange(head, body)
                return await asyncio.wait_for(self._exchange(head, body), self.timeout)
            except (TimeoutError, asyncio.TimeoutError):
                raise HTTPTimeout(f"no response within {self.timeout:g} s") from None

    async def _exchange(self, head: bytes, body: bytes) -> Response:
        while True:
            reused = bool(self._idle)
            conn = self._idle.pop() if reused else await self._connect()
            try:
                conn.writer.write(head + body if len(body) < 65536 else head)
                if len(body) >= 65536:
                    conn.writer.write(body)
                resp, keep = await self._read_response(conn.reader)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, zlib.error) as e:
                conn.close()
                if reused and isinstance(e, (asyncio.IncompleteReadError, ConnectionError)) and not getattr(
                        e, "partial", b""):
                    continue  # the server closed the idle connection: once more on a fresh one
                raise HTTPConnectionError(f"{type(e).__name__}: {e}") from None
            except BaseException:
                conn.close()  # cancelled or timed out mid-response: the connection is in an unknown state
                raise
            if keep:
                self._idle.append(conn)
            else:
                conn.close()
            return resp

    async def _connect(self) -> _Conn:
        try:
            if self._proxy is None:
                reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self._ssl, limit=1 << 20)
                return _Conn(reader, writer)
            reader, writer = await asyncio.open_connection(self._proxy["host"], self._proxy["port"], limit=1 << 20)
            conn = _Conn(reader, writer)
            if self.scheme == "https":
                auth = f"Proxy-Authorization: {self._proxy['auth']}\r\n" if self._proxy["auth"] else ""
                writer.write(f"CONNECT {self.host}:{self.port} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{auth}\r\n"
                             .encode("latin-1"))
                resp, _ = await self._read_response(reader, head_only=True)
                if resp.status != 200:
                    conn.close()
                    raise HTTPConnectionError(f"the proxy refused the tunnel (HTTP {resp.status})")
                await writer.start_tls(self._ssl, server_hostname=self.host)
            return conn
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as e:
            raise HTTPConnectionError(f"cannot connect to {self.host}:{self.port}: {e}") from None

    async def _read_response(self, reader: asyncio.StreamReader, head_only: bool = False) -> tuple[Response, bool]:
        while True:
            raw = await reader.readuntil(b"\r\n\r\n")
            lines = raw.decode("latin-1").split("\r\n")
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
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                        pass
                    break
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
            body = b"".join(parts)
        elif "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif status in (204, 304):
            body = b""
        else:
            body, keep = await reader.read(), False
        encoding = headers.get("content-encoding", "").lower()
        if encoding == "gzip":
            body = zlib.decompress(body, 16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            try:
                body = zlib.decompress(body)
            except zlib.error:
                body = zlib.decompress(body, -zlib.MAX_WBITS)
        return Response(status, headers, body), keep

    async def aclose(self) -> None:
        while self._idle:
            self._idle.pop().close()
