"""Mutation run (s69) over the paid path of ``leap generate-programs``: ``programs/backends.py`` (retries, backoff,
holds), ``programs/http.py``, ``programs/batch.py`` (Batch API requests and their ledger) and
``programs/estimate.py`` (--dry-run's costs). Each test kills a mutant the suite let live."""

import asyncio
import json

import pytest

from leap_cli.programs.backends import BackendError, OpenAIBackend, Request, RetryPolicy
from leap_cli.programs.batch import ingest_batch, write_batch_file
from leap_cli.programs.estimate import RepairTurns
from leap_cli.programs.generate import GenerateConfig
from tests.programs_llm_server import OK_EMPTY, Reply, ScriptedServer, completion, narration_id_of, on_one_connection
from tests.test_attack_s53_mutsubmit import _estimate
from tests.test_programs_generate import (N_SEGMENTS, batch_results, good_programs, records,  # noqa: F401
                                          results_file, workdir)


def test_measured_repair_turns_read_their_prefix_from_the_cache_in_the_cached_figure():
    """The "with the prefix cached" total of a run whose repair rate is measured counts its repair turns' static
    prefix as cached too, as it does the first requests' (mutant: the repair turns at the uncached price there)."""
    est = _estimate(repairs=RepairTurns(2, 0.5, "1 repair turn to the 2 first replies paid for its records", 300.0,
                                        120.0))
    live, cached = est.repair_cost(), est.repair_cost(cached_prefix=True)
    assert 0 < cached < live
    text = "\n".join(est.lines())
    assert f"~{est.cost(cached_prefix=True) + cached:,.2f} with the prefix cached" in text
    assert f"~{est.cost() + live:,.2f} USD live (~{live:,.2f} of it repair turns)" in text


def test_the_repair_framing_is_the_two_messages_a_repair_turn_adds():
    """A repair turn adds the reply and the findings as two messages to the conversation: the bound's extra prompt is
    what ``chat_tokens`` counts for them (mutant: a framing of 5 tokens, not two messages' 3 each)."""
    from leap_cli.programs.estimate import chat_tokens, repair_bound, text_tokens

    first = [{"role": "system", "content": "s" * 400}, {"role": "user", "content": "u" * 900}]
    reply, findings = "r" * 480, "f" * 200
    turn = first + [{"role": "assistant", "content": reply}, {"role": "user", "content": findings}]
    bound = repair_bound(1, text_tokens(reply), text_tokens(findings))
    assert bound.extra_prompt == chat_tokens(turn) - chat_tokens(first)


# ---- backends ------------------------------------------------------------------------------------------------------

class _Waits(RetryPolicy):
    """No wait at all; the attempt index each backoff was asked for, in ``asked``."""
    asked: list = []

    def delay(self, attempt, retry_after):
        self.asked.append(attempt)
        return 0.0


def _one(script, monkeypatch, retry, **kw):
    """One request through the openai backend, with 4 in flight allowed: its Completion or BackendError's text (and
    the backend's ``timed_out`` in ``_one.timed_out``)."""
    monkeypatch.setenv("LEAP_TEST_KEY", "sk-mut-test")

    async def run():
        backend = OpenAIBackend("m", base_url=server.base_url, api_key_env="LEAP_TEST_KEY", concurrency=4, retry=retry,
                                **kw)
        try:
            return await asyncio.wait_for(backend.complete(Request("c0", [{"role": "user", "content": "Clip c0: x"}])),
                                          20)
        except BackendError as e:
            return str(e)
        finally:
            _one.timed_out = backend.timed_out
            await backend.aclose()

    with ScriptedServer(script) as server:
        return asyncio.run(run()), len(server.requests)


def test_a_429_of_leaps_own_concurrency_does_not_use_up_a_retry(monkeypatch):
    """The 429 that cut the requests in flight is leap's own doing: it does not count against --max-retries, so a
    request with one retry still gets it for the 500 that follows (mutant: every attempt counted)."""
    steps = [Reply(status=429), Reply(status=500), Reply("{}")]
    out, sent = _one(lambda body, n: steps[n], monkeypatch, RetryPolicy(max_retries=1, base_delay=0.01, max_delay=0.02))
    assert sent == 3 and not isinstance(out, str) and out.attempts == 3


@pytest.mark.parametrize("second", ["500", "timeout"])
def test_the_backoff_after_a_free_429_starts_from_the_shortest_wait(monkeypatch, second):
    """The backoff of the retries grows with the attempts that count: a free 429 before a 500 or a timed-out attempt
    leaves that retry the shortest wait (mutant: it waited as a second retry)."""
    _Waits.asked = []
    fail = Reply(status=500) if second == "500" else Reply("{}", delay=2.5)
    steps = [Reply(status=429), fail, Reply("{}")]
    out, sent = _one(lambda body, n: steps[n], monkeypatch, _Waits(max_retries=3), timeout=1.0)
    assert sent == 3 and not isinstance(out, str)
    assert _Waits.asked == [0, 0]
    assert _one.timed_out == (second == "timeout")  # (the summary's count of requests abandoned at --timeout)


def _quick_backend(server, concurrency: int) -> OpenAIBackend:
    """A client of ``server`` that does not retry (a failure is final at once), at ``concurrency``."""
    return OpenAIBackend("m", base_url=server.base_url, api_key_env="LEAP_TEST_KEY", concurrency=concurrency,
                         retry=RetryPolicy(max_retries=0, base_delay=0.01, max_delay=0.02))


@pytest.mark.parametrize("status", [502, 422])
def test_two_requests_failed_alike_before_any_reply_stop_the_stage_before_a_third_is_sent(monkeypatch, status):
    """A server that fails (or refuses: a 422 as a 400) every request the same way from the start stops the stage
    once two requests failed for good: a third is not sent (mutants: three were, each paying its retries; a 422
    went on through the whole split)."""
    from leap_cli.errors import LeapError

    monkeypatch.setenv("LEAP_TEST_KEY", "sk-mut-test")
    said = []

    async def run():
        backend = _quick_backend(server, 1)
        try:
            for i in range(4):
                try:
                    await backend.complete(Request(f"c{i}", [{"role": "user", "content": f"Clip c{i}: x"}]))
                except (BackendError, LeapError) as e:
                    said.append(type(e).__name__)
                    if isinstance(e, LeapError):
                        return
        finally:
            await backend.aclose()

    with ScriptedServer(lambda body, n: Reply(status=status)) as server:
        asyncio.run(asyncio.wait_for(run(), 20))
        sent = len(server.requests)
    assert sent == OpenAIBackend.STOP_AFTER == 2 and said == ["BackendError", "LeapError"]


def test_a_reply_between_two_failures_keeps_the_server_from_being_held(monkeypatch):
    """A server is held only after requests in a row failed for good with no reply in between: failures apart,
    a reply between them, are the records' own (mutant: a reply did not reset the run, and one request at a time
    was asked of a server that answers)."""
    monkeypatch.setenv("LEAP_TEST_KEY", "sk-mut-test")
    outcomes = []

    async def run():
        backend = _quick_backend(server, 2)
        try:
            for i in range(5):
                try:
                    await backend.complete(Request(f"c{i}", [{"role": "user", "content": f"Clip c{i}: x"}]))
                    outcomes.append("ok")
                except BackendError:
                    outcomes.append("failed")
            return backend.holds
        finally:
            await backend.aclose()

    with ScriptedServer(lambda body, n: Reply(status=500) if narration_id_of(body) in ("c1", "c3") else Reply("{}")
                        ) as server:
        holds = asyncio.run(asyncio.wait_for(run(), 20))
    assert outcomes == ["ok", "failed", "ok", "failed", "ok"] and holds == 0


def test_an_unreadable_reply_to_a_held_server_is_not_sent_again(monkeypatch):
    """A reply that cannot be read (a damaged gzip body) was the server's whole answer, which it may bill: the
    request fails and is not sent again on its own, also while the server is held, where a failed attempt is a
    probe that goes again (it was sent again: paid twice)."""
    monkeypatch.setenv("LEAP_TEST_KEY", "sk-mut-test")
    outcomes = []

    def script(body, n):
        nid = narration_id_of(body)
        if nid in ("c1", "c2"):
            return Reply(status=500)
        if nid == "c3":
            return Reply(raw="not gzip at all", headers={"Content-Encoding": "gzip"})
        return Reply("{}")

    async def run():
        backend = OpenAIBackend("m", base_url=server.base_url, api_key_env="LEAP_TEST_KEY", concurrency=2,
                                retry=RetryPolicy(max_retries=1, base_delay=0.01, max_delay=0.02))
        try:
            for i in range(4):
                try:
                    await backend.complete(Request(f"c{i}", [{"role": "user", "content": f"Clip c{i}: x"}]))
                    outcomes.append("ok")
                except BackendError as e:
                    outcomes.append(str(e))
            return backend.holds
        finally:
            await backend.aclose()

    with ScriptedServer(script) as server:
        holds = asyncio.run(asyncio.wait_for(run(), 20))
        sent = server.calls_for("c3")
    assert holds == 1 and outcomes[0] == "ok" and "unreadable reply after 1 attempt" in outcomes[3]
    assert sent == 1


def test_requests_let_go_by_a_lifted_stop_take_their_slots(monkeypatch):
    """Two requests failed alike before any reply stop the sending; a reply then lifts the stop and the requests
    waiting go on, each through a slot of --concurrency (mutant: they went out without one, and the count of
    attempts on the wire, which a stop waits for, ended below zero)."""
    monkeypatch.setenv("LEAP_TEST_KEY", "sk-mut-test")
    most = []

    def script(body, n):
        return Reply("{}", delay=1.0) if narration_id_of(body) == "c0" else Reply(status=500)

    async def run():
        backend = _quick_backend(server, 2)

        async def one(i):
            await asyncio.sleep(0.05 * i)  # (in order: c0 first)
            try:
                await backend.complete(Request(f"c{i}", [{"role": "user", "content": f"Clip c{i}: x"}]))
                return "ok"
            except BackendError:
                return "failed"
            finally:
                most.append(backend.sending)

        try:
            out = await asyncio.gather(*(one(i) for i in range(5)))
            return out, backend.sending
        finally:
            await backend.aclose()

    with ScriptedServer(script) as server:
        out, sending = asyncio.run(asyncio.wait_for(run(), 20))
    assert out[0] == "ok" and out[1:].count("failed") == 4
    assert sending == 0 and min(most) >= 0


# ---- http ----------------------------------------------------------------------------------------------------------

def test_a_request_sent_again_on_a_fresh_connection_is_counted_as_sent():
    """A keep-alive connection the server closed while idle gets the request sent again on a fresh one: the client
    counts it (``resent``, in the HTTP requests a run says it sent; mutant: not counted)."""
    from leap_cli.programs.http import HTTPClient
    from tests.programs_llm_server import serve_requests

    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"

    async def on_request(n, head, body, reader, writer):
        if n == 2:  # (the idle connection: closed as the request comes, no byte of a reply)
            return True
        writer.write(ok)
        await writer.drain()
        return False

    async def run():
        start, heads, _, conns, _ = serve_requests(on_request)
        server = await start
        client = HTTPClient(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", {}, max_connections=1)
        try:
            out = [await client.post("/chat/completions", b"{}") for _ in range(2)]
        finally:
            await client.aclose()
            server.close()
        return out, len(heads), len(conns), client.resent

    out, requests, conns, resent = asyncio.run(asyncio.wait_for(run(), 20))
    assert [r.body for r in out] == [b"{}", b"{}"] and requests == 3 and conns == 2 and resent == 1


def test_an_idle_connection_closed_over_a_second_after_the_request_is_not_resent():
    """Only a close that comes within ``STALE_CLOSE_S`` (a second) of the request is an idle connection's: one that
    comes later, no byte of a reply sent, was the server's with the request in hand, which it may bill, and the
    request fails rather than go again (mutant: a limit of 100 s resent it)."""
    from leap_cli.programs.http import HTTPConnectionError

    async def on_request(n, head, body, reader, writer):
        if n == 2:
            await asyncio.sleep(1.4)
            return True
        writer.write(OK_EMPTY)
        await writer.drain()
        return False

    async def main(client, heads):
        first = await client.post("/chat/completions", b"{}")
        with pytest.raises(HTTPConnectionError):
            await client.post("/chat/completions", b"{}")
        return first, len(heads), client.resent

    first, requests, resent = on_one_connection(on_request, main, timeout=10)
    assert first.body == b"{}" and requests == 2 and resent == 0


def test_an_event_loop_held_over_a_second_restarts_the_clocks_of_the_requests_in_flight():
    """The heartbeat finds a loop that could not run for over ``STALL_S`` (a second: a stopped process, a held
    loop) and gives the requests in flight their whole --timeout again, so that the reply there is not abandoned
    and paid again (mutant: a stall of 100 s needed)."""
    import time

    async def on_request(n, head, body, reader, writer):
        time.sleep(1.5)  # (the request in flight: the loop held, as a stopped process's)
        await asyncio.sleep(0.4)
        writer.write(OK_EMPTY)
        await writer.drain()
        return False

    async def main(client, heads):
        return await client.post("/chat/completions", b"{}")

    assert on_one_connection(on_request, main, timeout=1.0).body == b"{}"


def test_a_body_of_exactly_the_most_the_client_reads_is_read(monkeypatch):
    """``MAX_BODY`` is the most a body may be: one of exactly that size is read, one a byte over is refused as
    unreadable (mutant: the limit itself refused, a paid reply lost)."""
    from leap_cli.programs import http
    from leap_cli.programs.http import HTTPUnreadable

    monkeypatch.setattr(http, "MAX_BODY", 16)
    bodies = [b'{"a": "0123456"}', b'{"a": "01234567"}']
    assert [len(b) for b in bodies] == [16, 17]

    async def on_request(n, head, body, reader, writer):
        reply = bodies[n - 1]
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(reply), reply))
        await writer.drain()
        return False

    async def main(client, heads):
        first = await client.post("/chat/completions", b"{}")
        with pytest.raises(HTTPUnreadable):
            await client.post("/chat/completions", b"{}")
        return first

    assert on_one_connection(on_request, main, timeout=10).body == bodies[0]


def test_a_chunked_reply_with_bare_lf_line_ends_is_read_whole():
    """Some servers end lines with a bare LF: the empty line after a chunk and the one that ends the trailers are
    read at once (mutant: an empty line at the head of the buffer was waited past, and the paid reply timed out)."""
    reply = b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n2\n{}\n0\n\n"

    async def on_request(n, head, body, reader, writer):
        writer.write(reply)
        await writer.drain()
        return False

    async def main(client, heads):
        return [(await client.post("/chat/completions", b"{}")).body for _ in range(2)]

    assert on_one_connection(on_request, main, timeout=3) == [b"{}", b"{}"]


# ---- batch ---------------------------------------------------------------------------------------------------------

def test_a_valid_batch_result_is_not_marked_as_waiting_for_a_repair_turn(workdir, good_programs, tmp_path):
    """Only a result that failed validation waits for the repair turn a live run would have asked
    (``repair_pending``); a valid one is done (mutant: every reply of a run with --repair-rounds was marked)."""
    cfg = GenerateConfig(workdir=workdir, split="val", model="gpt-test", repair_rounds=2)
    assert write_batch_file(cfg, tmp_path / "batch.jsonl") == N_SEGMENTS

    def reply(i, nid):
        program = json.loads(json.dumps(good_programs[nid]))
        if i == 0:
            program["steps"][0]["verb"] = "juggle-not-a-verb"
        return {"response": {"status_code": 200, "body": completion(json.dumps(program))}}

    lines = batch_results(tmp_path / "batch.jsonl", reply)
    assert ingest_batch(cfg, results_file(tmp_path / "out.jsonl", lines)) == {"valid": N_SEGMENTS - 1, "invalid": 1}
    marked = {r["status"]: r["provenance"].get("repair_pending") for r in records(workdir)}
    assert marked == {"valid": None, "invalid": True}


def test_a_batch_generation_broken_off_with_no_reply_tokens_is_still_in_the_ledger(workdir, good_programs, tmp_path):
    """A Batch result the server broke off (finish_reason "error") before its first reply token bills its prompt all
    the same: it is in the --max-cost ledger with the others (mutant: a result was counted only where it had reply
    tokens)."""
    cfg = GenerateConfig(workdir=workdir, split="val", model="gpt-test", price_in=2.0, price_out=8.0)
    write_batch_file(cfg, tmp_path / "batch.jsonl")

    def reply(i, nid):
        body = completion(json.dumps(good_programs[nid]), completion_tokens=0 if i == 0 else 200)
        if i == 0:
            body["choices"][0]["finish_reason"] = "error"
        return {"response": {"status_code": 200, "body": body}}

    spent = {}
    counts = ingest_batch(cfg, results_file(tmp_path / "out.jsonl", batch_results(tmp_path / "batch.jsonl", reply)),
                          spent=spent)
    assert counts == {"valid": N_SEGMENTS - 1, "failed": 1}
    usages = [{"prompt_tokens": 1000, "completion_tokens": 0}] + [{"prompt_tokens": 1000, "completion_tokens": 200}] * (
        N_SEGMENTS - 1)
    assert spent["requests"] == N_SEGMENTS
    assert spent["cost"] == pytest.approx(sum(cfg.cost(u) for u in usages) / 2)


def test_a_results_file_of_another_input_is_said_to_be_so_not_a_row_removed(workdir, good_programs, tmp_path):
    """A results file none of whose custom_ids is a segment of the input is another input's (another --split,
    --descriptors or --shard): the error says to ingest with those, not that a row was removed from the CSV and its
    paid result's line may be deleted (mutants: every unknown id was said to be a row removed)."""
    from leap_cli.errors import LeapError

    cfg = GenerateConfig(workdir=workdir, split="val", model="gpt-test")
    write_batch_file(cfg, tmp_path / "batch.jsonl")
    lines = batch_results(tmp_path / "batch.jsonl", lambda i, nid: {"response": {"status_code": 200, "body": completion(
        json.dumps(good_programs[nid]))}})
    for line in lines:
        line["custom_id"] = "ZZ" + line["custom_id"]
    with pytest.raises(LeapError) as e:
        ingest_batch(cfg, results_file(tmp_path / "out.jsonl", lines))
    assert "is not a segment of the input" in e.value.message and "removed" not in str(e.value)
