"""A real chat-completions server on 127.0.0.1 (random port) with scripted replies, for the program tests."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Reply:
    def __init__(self, content=None, status=200, headers=None, delay=0.0, raw=None):
        self.content, self.status, self.headers, self.delay, self.raw = content, status, headers or {}, delay, raw


def completion(content: str, model: str = "test-model", prompt_tokens: int = 1000, completion_tokens: int = 200) -> dict:
    return {"id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def narration_id_of(body: dict) -> str | None:
    """The clip id of the request (first line of the first user turn after the exemplars: the last 'Clip ...')."""
    ids = [re.match(r"Clip (\S+):", m["content"]) for m in body["messages"] if m["role"] == "user"]
    ids = [m.group(1) for m in ids if m]
    return ids[-1] if ids else None


async def read_request(reader) -> tuple[bytes, bytes]:
    """(head, body) of the next request on an asyncio stream (the hand-written servers of the HTTP client tests);
    ``asyncio.IncompleteReadError`` where the client closed the connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = int([ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")][0])
    return head, await reader.readexactly(length)


def serve_requests(on_request):
    """An asyncio server on 127.0.0.1 (the hand-written servers of the HTTP client tests) that reads each request and
    hands it to ``await on_request(n, head, body, reader, writer)``, n counting from 1 across connections; it returns
    True to close the connection. Returns (the ``start_server`` coroutine, the request heads, their bodies, the
    connections accepted, the connections the client closed)."""
    heads, bodies, conns, eofs = [], [], [], []

    async def on_conn(reader, writer):
        conns.append(writer)
        try:
            while True:
                head, body = await read_request(reader)
                heads.append(head)
                bodies.append(body)
                if await on_request(len(heads), head, body, reader, writer):
                    break
        except asyncio.IncompleteReadError:
            eofs.append(writer)
        except ConnectionError:
            pass
        writer.close()

    return asyncio.start_server(on_conn, "127.0.0.1", 0), heads, bodies, conns, eofs


OK_EMPTY = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"  # a reply of {}


def on_one_connection(on_request, main, **client_options):
    """``main(client, heads)`` run against ``serve_requests(on_request)`` with leap's HTTP client of one connection
    (``client_options``: HTTPClient's, e.g. ``timeout``); its result."""
    from leap_cli.programs.http import HTTPClient

    async def run():
        start, heads, *_ = serve_requests(on_request)
        server = await start
        client = HTTPClient(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", {}, max_connections=1,
                            **client_options)
        try:
            return await main(client, heads)
        finally:
            await client.aclose()
            server.close()

    return asyncio.run(asyncio.wait_for(run(), 20))


class ScriptedServer:
    """``script(body, call_index_for_this_clip) -> Reply``; every request is recorded in ``requests``."""

    def __init__(self, script):
        self.script = script
        self.requests: list[dict] = []
        self.paths: list[str] = []  # the request target of each (path and query)
        self.headers: list[dict[str, str]] = []  # the request headers of each (names in lower case)
        self.times: list[float] = []
        self._lock = threading.Lock()
        self.current = threading.local()  # .path: the request target of the request being scripted
        self._per_clip: dict[str, int] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # one small response must not wait for a delayed ACK (40 ms)

            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                nid = narration_id_of(body)
                with outer._lock:
                    outer.requests.append(body)
                    outer.paths.append(self.path)
                    outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                    outer.times.append(time.monotonic())
                    n = outer._per_clip.get(nid, 0)
                    outer._per_clip[nid] = n + 1
                outer.current.path = self.path  # the script may read where this request was sent
                reply = outer.script(body, n)
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.raw is not None:
                    payload = reply.raw.encode()
                elif reply.status == 200:
                    payload = json.dumps(completion(reply.content, body.get("model", "m"))).encode()
                else:
                    payload = json.dumps({"error": {"message": f"scripted {reply.status}", "type": "test"}}).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        class Server(ThreadingHTTPServer):
            request_queue_size = 1024  # socketserver's default backlog of 5 drops bursts of connections (1 s SYN retry)

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def calls_for(self, nid: str) -> int:
        return self._per_clip.get(nid, 0)

    def __enter__(self) -> "ScriptedServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
