"""Behaviour of the HTTP client, the backend's retries, generation, the store and reply parsing that a mutation
run found no test pinning."""

import asyncio
import json
import time

import pytest

from leap_cli.programs.generate import generate_programs
from leap_cli.programs.store import ProgramStore
from tests.programs_llm_server import Reply, ScriptedServer, completion, narration_id_of, serve_requests
from tests.test_programs_client import _serve_raw
from tests.test_programs_endpoints import _good
from tests.test_programs_generate import N_SEGMENTS, config, good_programs, records, workdir  # noqa: F401


# ---- the HTTP client ----------------------------------------------------------------------------------------

def _serve_script(on_request):
    """``serve_requests`` handing ``on_request(n, body, writer)``: (start, the request bodies, the connections)."""
    start, _, seen, conns, _ = serve_requests(lambda n, head, body, reader, writer: on_request(n, body, writer))
    return start, seen, conns


def _client(server, **kw):
    """An ``HTTPClient`` of the local ``server``'s /v1."""
    from leap_cli.programs.http import HTTPClient

    return HTTPClient(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", {}, **kw)


def test_a_reused_connection_closed_long_after_the_request_is_not_resent(monkeypatch):
    """A keep-alive connection the server closes well after it got the request was resent unseen: the server
    had the request and may bill it twice."""
    from leap_cli.programs import http
    from leap_cli.programs.http import HTTPConnectionError

    monkeypatch.setattr(http, "STALE_CLOSE_S", 0.2)

    async def on_request(n, body, writer):
        if n == 1:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
            return False
        await asyncio.sleep(0.5)
        return True

    async def main():
        start, seen, _ = _serve_script(on_request)
        server = await start
        client = _client(server, max_connections=1, timeout=5)
        first = await client.post("/chat/completions", b"{}")
        with pytest.raises(HTTPConnectionError):
            await client.post("/chat/completions", b"{}")
        await client.aclose()
        server.close()
        return first, seen, client

    first, seen, client = asyncio.run(main())
    assert first.status == 200 and len(seen) == 2 and client.resent == 0


def test_a_fresh_connection_closed_without_an_answer_is_not_resent():
    """A new connection that the server closed without answering was resent unseen (only an idle keep-alive
    connection may be): the server had the request, and may bill it twice."""
    from leap_cli.programs.http import HTTPConnectionError

    async def on_request(n, body, writer):
        return True

    async def main():
        start, seen, _ = _serve_script(on_request)
        server = await start
        client = _client(server, timeout=5)
        with pytest.raises(HTTPConnectionError) as err:
            await client.post("/chat/completions", b"{}")
        await client.aclose()
        server.close()
        return str(err.value), seen, client

    msg, seen, client = asyncio.run(main())
    assert msg == "the server closed the connection without answering"
    assert len(seen) == 1 and client.resent == 0


def test_non_ascii_and_large_bodies_arrive_whole():
    """A body's Content-Length counted characters, not bytes, or a body at the 64 KiB boundary was sent wrong:
    a prompt with accents or a long one would reach the server cut or never."""
    def echo(head, body):
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body), False

    bodies = [json.dumps({"t": "café – ½ °C"}, ensure_ascii=False).encode()]
    bodies += [json.dumps({"t": "x" * (n - 9)}).encode() for n in (65535, 65536, 65537)]
    assert [len(b) for b in bodies[1:]] == [65535, 65536, 65537]

    async def main():
        server = await _serve_raw(echo)
        client = _client(server, max_connections=1, timeout=5)
        out = [await client.post("/chat/completions", b) for b in bodies]
        await client.aclose()
        server.close()
        return out

    out = asyncio.run(main())
    assert [r.body for r in out] == bodies and all(r.status == 200 for r in out)


def test_interim_responses_are_skipped():
    """A 100 Continue or 103 Early Hints before the answer was taken for the answer: the reply would be lost."""
    async def on_request(n, body, writer):
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
                     b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        return False

    async def main():
        start, _, _ = _serve_script(on_request)
        server = await start
        client = _client(server, timeout=1)
        r = await client.post("/chat/completions", b"{}")
        await client.aclose()
        server.close()
        return r

    r = asyncio.run(main())
    assert r.status == 200 and r.body == b"{}"


def test_a_connection_close_response_is_not_reused():
    """A connection the server said it would close was reused: the next request would fail or be resent."""
    async def on_request(n, body, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        await asyncio.sleep(0.3)
        return True

    async def main():
        start, seen, conns = _serve_script(on_request)
        server = await start
        client = _client(server, max_connections=1, timeout=5)
        out = [await client.post("/chat/completions", b"{}") for _ in range(2)]
        await client.aclose()
        await asyncio.sleep(0.35)
        server.close()
        return out, seen, conns, client

    out, seen, conns, client = asyncio.run(main())
    assert [r.status for r in out] == [200, 200] and client.resent == 0
    assert len(conns) == 2 and len(seen) == 2


def test_the_timeout_is_enforced():
    """A server slower than --timeout held the request past it: a stuck server would stall the run."""
    from leap_cli.programs.http import HTTPTimeout

    async def on_request(n, body, writer):
        await asyncio.sleep(5.0)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        return False

    async def main():
        start, _, _ = _serve_script(on_request)
        server = await start
        client = _client(server, timeout=1.0)
        t0 = time.monotonic()
        with pytest.raises(HTTPTimeout):
            await client.post("/chat/completions", b"{}")
        elapsed = time.monotonic() - t0
        await client.aclose()
        server.close()
        return elapsed

    assert 0.9 < asyncio.run(main()) < 1.9  # (twice the timeout would be 2 s; margin for a busy machine)


# ---- the backend's retries ----------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [408, 409])
def test_408_and_409_are_retried(workdir, good_programs, status):  # noqa: F811
    """A request timeout (408) or a conflict (409) failed its record at once instead of being tried again."""
    def script(body, n):
        return Reply(status=status) if n == 0 else _good(good_programs, body)

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, limit=2, max_retries=1))
        assert s.statuses == {"valid": 2} and len(server.requests) == 4


def test_a_long_retry_after_is_capped_by_max_backoff(workdir, good_programs):  # noqa: F811
    """A 429 asking for 30 s paused the run past --max-backoff: a user's cap on waits would not hold."""
    def script(body, n):
        return Reply(status=429, headers={"Retry-After": "30"}) if n == 0 else _good(good_programs, body)

    with ScriptedServer(script) as server:
        t0 = time.monotonic()
        s = generate_programs(config(workdir, server, limit=2, concurrency=1, max_backoff=0.05))
        assert s.statuses == {"valid": 2} and time.monotonic() - t0 < 10


def test_429s_from_our_own_concurrency_do_not_use_up_max_retries(workdir, good_programs):  # noqa: F811
    """429s while leap's own requests fill the server counted against --max-retries: records failed that a
    slower pace would have got."""
    def script(body, n):
        if n == 0:
            return Reply(status=429)
        if n == 1:
            return Reply(status=500)
        return _good(good_programs, body)

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, limit=2, concurrency=2, max_retries=1))
        assert s.statuses == {"valid": 2} and s.rate_limited == 2


# ---- generation ---------------------------------------------------------------------------------------------

def test_provenance_usage_sums_every_round(workdir, good_programs):  # noqa: F811
    """A repaired record's usage kept only its last round's tokens: its cost would be under-reported."""
    def script(body, n):
        program = dict(good_programs[narration_id_of(body)])
        if n == 0:
            program.pop("post")
        return Reply(json.dumps(program))

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, limit=1))
        assert s.statuses == {"valid": 1} and len(server.requests) == 2
    (rec,) = records(workdir)
    assert rec["provenance"]["rounds"] == 2
    assert rec["provenance"]["usage"] == {"prompt_tokens": 2000, "completion_tokens": 400}


def test_a_failed_repair_request_keeps_the_first_rounds_program(workdir, good_programs):  # noqa: F811
    """A repair request the server refused threw away the program the first round got: the record said failed
    with no program instead of invalid with it."""
    bad = sorted(good_programs)[0]

    def script(body, n):
        nid = narration_id_of(body)
        if nid == bad and n == 0:
            program = dict(good_programs[nid])
            program.pop("post")
            return Reply(json.dumps(program))
        if nid == bad:
            return Reply(status=400, raw=json.dumps({"error": {"message": "the repair prompt is too long"}}))
        return _good(good_programs, body)

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, limit=3, max_retries=1))
        assert s.statuses == {"valid": 2, "invalid": 1}
    rec = {r["narration_id"]: r for r in records(workdir)}[bad]
    expected = dict(good_programs[bad])
    expected.pop("post")
    assert rec["status"] == "invalid" and rec["program"] == expected
    assert rec["errors"][-1]["message"].startswith("request failed: request refused (400)")


def test_a_complete_program_cut_at_the_token_limit_is_valid(workdir, good_programs):  # noqa: F811
    """A whole valid program whose reply said finish_reason "length" was thrown away as cut."""
    def script(body, n):
        data = completion(json.dumps(good_programs[narration_id_of(body)]), body.get("model", "m"))
        data["choices"][0]["finish_reason"] = "length"
        return Reply(raw=json.dumps(data))

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, limit=1))
        assert s.statuses == {"valid": 1} and len(server.requests) == 1
    assert records(workdir)[0]["status"] == "valid"


def test_the_strict_schema_is_part_of_the_cache_key(workdir, good_programs, monkeypatch):  # noqa: F811
    """A reply cached for another schema was replayed after the schema changed: programs made for the old
    schema would pass as answers to the new one."""
    from leap_cli.programs import generate as gen

    with ScriptedServer(lambda body, n: _good(good_programs, body)) as server:
        generate_programs(config(workdir, server, limit=2))
        assert len(server.requests) == 2
        original = gen.strict_schema

        def changed():
            schema = json.loads(json.dumps(original()))
            schema["description"] = "a changed schema"
            return schema

        monkeypatch.setattr(gen, "strict_schema", changed)
        s = generate_programs(config(workdir, server, limit=2, out=workdir / "programs" / "other.jsonl"))
        assert s.cache_hits == 0 and len(server.requests) == 4
        assert s.statuses == {"valid": 2}


# ---- the store ----------------------------------------------------------------------------------------------

def test_the_ledger_follows_a_moved_work_directory(tmp_path):
    """The cost ledger was keyed by absolute path: after moving the work directory --max-cost started from 0."""
    a = tmp_path / "a"
    (a / "programs").mkdir(parents=True)
    with ProgramStore(a / "programs" / "cache.sqlite") as store:
        store.add_spend(a / "programs" / "val.jsonl", 1.25, {"prompt_tokens": 10, "completion_tokens": 5}, 3)
    b = tmp_path / "b"
    a.rename(b)
    with ProgramStore(b / "programs" / "cache.sqlite") as store:
        spent = store.spent(b / "programs" / "val.jsonl")
    assert spent["cost"] == pytest.approx(1.25) and spent["requests"] == 3


# ---- reply parsing ------------------------------------------------------------------------------------------

def test_an_object_followed_by_a_fenced_example_is_the_object():
    """A reply with the program first and an example in a fence after it was read as the example."""
    from leap_cli.programs.reply import parse_reply

    assert parse_reply('{"a": 1}\n\nFor example:\n```json\n{"b": 2}\n```') == ({"a": 1}, [])


def test_an_unclosed_fence_holding_a_list_is_refused_as_a_list():
    """A cut fenced list was taken for an object nested in it: a fragment would pass for the program."""
    from leap_cli.programs.reply import parse_reply

    value, findings = parse_reply('```json\n[{"a": 1}]')
    assert value is None and len(findings) == 1
    assert findings[0].message == "the reply is JSON but not an object (list)"


def test_think_tags_inside_a_string_are_kept():
    """A <think> tag inside a JSON string was stripped as the model's thinking: the program would be lost."""
    from leap_cli.programs.reply import parse_reply

    assert parse_reply('{"a": "<think>x</think>"}') == ({"a": "<think>x</think>"}, [])
