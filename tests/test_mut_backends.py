"""Mutation-testing gaps of ``leap_cli.programs.backends`` (the OpenAI-compatible and offline LLM backends):
retry waits and rate limits, header and reply parsing, the request body, and the errors a user reads."""

import asyncio
import email.utils
import json
import time

import pytest

from leap_cli.programs.backends import BackendError, OpenAIBackend, Request, RetryPolicy
from tests.programs_llm_server import Reply, ScriptedServer, narration_id_of


def _request(i=0, **kw):
    return Request(f"c{i}", [{"role": "user", "content": f"Clip c{i}: x"}], **kw)


def _run(url, monkeypatch, n=1, timeout=10.0, env=None, workers=None, **kw):
    """The openai backend alone on ``n`` requests (sent together, or by ``workers`` as the stage does): the backend
    and each outcome (a Completion, or the BackendError's text)."""
    monkeypatch.setenv("LEAP_TEST_KEY", "sk-mut-test")
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    kw.setdefault("retry", RetryPolicy(max_retries=2, base_delay=0.01, max_delay=0.05))

    async def run():
        backend = OpenAIBackend("m", base_url=url, api_key_env="LEAP_TEST_KEY", **kw)

        slots = asyncio.Semaphore(workers or n)

        async def one(i):
            async with slots:
                try:
                    return await backend.complete(_request(i))
                except BackendError as e:
                    return str(e)
        try:
            return backend, await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), timeout)
        finally:
            await backend.aclose()

    return asyncio.run(run())


def test_reset_headers_that_are_not_whole_go_durations_are_not_read():
    from leap_cli.programs.backends import parse_go_duration

    for odd in ("-1s", "1m30", "5s later", "2s,3s"):
        assert parse_go_duration(odd) is None, odd
    assert parse_go_duration(" 1m30s ") == 90


def test_a_retry_after_date_in_the_past_means_no_wait():
    from leap_cli.programs.backends import parse_retry_after

    past = email.utils.formatdate(time.time() - 120, usegmt=True)
    assert parse_retry_after({"retry-after": past}) == 0.0


def test_a_429_to_the_only_request_in_flight_cuts_to_one_at_a_time(monkeypatch):
    """Halving counts the requests in flight, not --concurrency: one request out and a 429 leaves one in flight
    (halving 8 to 4 would go on overrunning a server that takes one)."""
    def script(req, n):
        return Reply(status=429) if n == 0 else Reply("{}")

    with ScriptedServer(script) as server:
        backend, (done,) = _run(server.base_url, monkeypatch, concurrency=8)
    assert done.text == "{}" and done.attempts == 2
    assert backend.rate_limited == 1 and backend.lowest_limit == 1


def test_after_a_429_the_requests_in_flight_grow_back_one_at_a_time(monkeypatch):
    """A 429 cuts to one in flight; the first reply lets two go, not three at once (the cut grows back by one per
    window of replies, up to --concurrency)."""
    monkeypatch.setenv("LEAP_TEST_KEY", "sk-mut-test")

    def script(req, n):
        if narration_id_of(req) == "c0" and n == 0:
            return Reply(status=429)
        return Reply("{}", delay=0.0 if narration_id_of(req) == "c0" else 0.3)

    async def run(url):
        backend = OpenAIBackend("m", base_url=url, api_key_env="LEAP_TEST_KEY", concurrency=4,
                                retry=RetryPolicy(max_retries=2, base_delay=0.01, max_delay=0.05))
        try:
            await backend.complete(_request(0))  # 429, then a reply: back to two in flight
            await asyncio.gather(*(backend.complete(_request(i)) for i in range(1, 5)))
        finally:
            await backend.aclose()
        return backend

    with ScriptedServer(script) as server:
        backend = asyncio.run(run(server.base_url))
        times = server.times[2:]
    assert backend.lowest_limit == 1
    assert times[1] - times[0] < 0.2  # two at once
    assert times[2] - times[0] >= 0.25  # the third after a reply


def test_two_requests_failed_for_good_in_a_row_after_replies_hold_the_server(monkeypatch):
    """HOLD_AFTER (2) requests in a row failed for good after the server had answered: the progress line says it
    is held; one failure alone is not enough."""
    monkeypatch.setenv("LEAP_TEST_KEY", "sk-mut-test")

    def script(req, n):
        return Reply("{}") if len(server.requests) <= 2 else Reply(status=500)

    async def run(url):
        backend = OpenAIBackend("m", base_url=url, api_key_env="LEAP_TEST_KEY", concurrency=2,
                                retry=RetryPolicy(max_retries=1, base_delay=0.01, max_delay=0.05))
        said = []
        try:
            for i in range(4):
                try:
                    await backend.complete(_request(i))
                except BackendError as e:
                    assert "HTTP 500 after 2 attempts" in str(e)
                said.append(backend.waiting())
        finally:
            await backend.aclose()
        return backend, said

    with ScriptedServer(script) as server:
        backend, said = asyncio.run(run(server.base_url))
    assert backend.answered == 2 and said[:3] == [None, None, None]
    assert backend.holds == 1 and "server not answering" in said[3] and "one request at a time" in said[3]


def test_a_request_the_server_always_rate_limits_fails_after_its_free_429s_and_retries(monkeypatch):
    """A 429 that came of leap's own concurrency is free (FREE_429 of them a request), later ones count against
    --max-retries: a request the server refuses every time (a prompt over its tokens-per-minute) fails instead
    of going round while the others go through."""
    def script(req, n):
        return Reply(status=429) if narration_id_of(req) == "c0" else Reply("{}", delay=0.01)

    with ScriptedServer(script) as server:
        _, outcome = _run(server.base_url, monkeypatch, n=200, workers=4, concurrency=4,
                          retry=RetryPolicy(max_retries=2, base_delay=0.03, max_delay=0.06))
        tries = server.calls_for("c0")
    assert all(not isinstance(o, str) for o in outcome[1:])
    assert isinstance(outcome[0], str) and "HTTP 429 after" in outcome[0]
    assert tries <= OpenAIBackend.FREE_429 + 2 + 1


def test_an_azure_host_gets_the_key_in_api_key_alone(monkeypatch):
    """Azure OpenAI reads a Bearer header as an Entra ID token: its hosts get the key in api-key, no Bearer."""
    import leap_cli.programs.backends as backends

    seen = {}

    class Client:
        resent = 0

        def __init__(self, base_url, headers, **kw):
            seen.update(url=base_url, headers=dict(headers))

    monkeypatch.setattr(backends, "HTTPClient", Client)
    monkeypatch.setenv("LEAP_TEST_KEY", "sk-mut-azure")
    OpenAIBackend("m", base_url="https://me.openai.azure.com/openai/v1", api_key_env="LEAP_TEST_KEY")
    assert seen["headers"]["api-key"] == "sk-mut-azure" and "Authorization" not in seen["headers"]
    OpenAIBackend("m", base_url="https://api.example.com/v1", api_key_env="LEAP_TEST_KEY")
    assert seen["headers"]["Authorization"] == "Bearer sk-mut-azure" and "api-key" not in seen["headers"]


def test_organisation_and_project_ids_are_sent_as_the_official_client_does(monkeypatch):
    with ScriptedServer(lambda req, n: Reply("{}")) as server:
        _run(server.base_url, monkeypatch, env={"OPENAI_ORG_ID": "org-1", "OPENAI_PROJECT_ID": "proj-2"})
        (headers,) = server.headers
    assert headers["openai-organization"] == "org-1" and headers["openai-project"] == "proj-2"


def test_a_pasted_endpoint_keeps_its_query_string(caplog):
    from leap_cli.programs.backends import endpoint_base

    assert endpoint_base(" https://gw.example.com/openai/deployments/d/chat/completions?api-version=2024-06-01 ") == \
        "https://gw.example.com/openai/deployments/d?api-version=2024-06-01"
    assert "ends in /chat/completions" in caplog.text
    assert endpoint_base("http://localhost:8000/v1") == "http://localhost:8000/v1"


def test_a_wait_named_in_a_429_message_is_read_in_either_case():
    from leap_cli.programs.backends import _wait_in_message

    assert _wait_in_message("Rate limit reached. Please try again in 250ms.") == 0.25
    assert _wait_in_message("Please TRY AGAIN IN 250MS") == 0.25
    assert _wait_in_message("Please try again in 1.5s.") == 1.5 and _wait_in_message("slow down") is None


def test_a_403_that_names_the_model_says_so_not_that_the_key_was_refused(monkeypatch):
    from leap_cli.errors import LeapError

    body = {"error": {"message": "The model `gpt-9` does not exist or you do not have access to it."}}
    with ScriptedServer(lambda req, n: Reply(status=403, raw=json.dumps(body))) as server:
        with pytest.raises(LeapError) as e:
            _run(server.base_url, monkeypatch)
        assert len(server.requests) == 1
    assert "refused access to the model (HTTP 403)" in str(e.value) and "--model m" in e.value.fix


def test_a_temperature_only_the_default_of_is_no_longer_sent(monkeypatch):
    """A 400 that names temperature and says only the default is taken (no error code, as a proxy passes it on):
    the request goes again without a temperature, and so do the next ones."""
    def script(req, n):
        if "temperature" in req:
            return Reply(status=400, raw=json.dumps({"error": {"message": "Only the default (1) value is supported.",
                                                               "param": "temperature"}}))
        return Reply("{}")

    with ScriptedServer(script) as server:
        _, outcome = _run(server.base_url, monkeypatch, n=2, workers=1)
        assert ["temperature" in b for b in server.requests] == [True, False, False]
    assert [o.text for o in outcome] == ["{}", "{}"]

