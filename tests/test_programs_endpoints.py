"""How the openai backend meets what real servers send (QA report llm.md): refusals of the response format,
servers that fail every request, rate limits, timeouts, error bodies and base URLs."""

import asyncio
import json
import os
import re
import socket
import threading
import time

import pytest

from leap_cli.errors import LeapError
from leap_cli.programs.generate import generate_programs
from tests.programs_llm_server import Reply, ScriptedServer, narration_id_of
from tests.test_programs_generate import N_SEGMENTS, config, good_programs, records, workdir  # noqa: F401


def _good(good_programs, body):
    return Reply(json.dumps(good_programs[narration_id_of(body)]))


def _fmt(body):
    return body.get("response_format", {}).get("type", "none")


SCHEMA_REFUSALS = {
    "llama.cpp": (400, {"error": {"code": 400, "message": "Unsupported JSON schema: 'minItems' is not supported with "
                                  "this grammar", "type": "invalid_request_error"}}),
    "lmstudio": (400, {"error": "Failed to compile JSON schema"}),
    "vllm-xgrammar": (400, {"object": "error", "message": "The provided JSON schema contains features not supported by "
                            "xgrammar.", "type": "BadRequestError", "param": None, "code": 400}),
    "llama.cpp-grammar": (400, {"error": {"code": 400, "message": 'Either "json_schema" or "grammar" can be specified, '
                                          "but not both", "type": "invalid_request_error"}}),
    "fastapi-422": (422, {"detail": [{"loc": ["body", "response_format", "type"], "msg": "Input should be 'text' or "
                                      "'json_object'", "type": "literal_error"}]}),
    "llama-cpp-python-500": (500, {"error": {"code": 500, "message": 'response_format type must be one of "text" or '
                                             '"json_object", but got: json_schema', "type": "server_error"}}),
}


@pytest.mark.parametrize("server_kind", sorted(SCHEMA_REFUSALS))
def test_schema_refusals_of_local_servers_fall_back_to_json_mode_at_once(workdir, good_programs, server_kind):  # noqa: F811
    status, body = SCHEMA_REFUSALS[server_kind]

    def script(req, n):
        if _fmt(req) == "json_schema":
            return Reply(status=status, raw=json.dumps(body))
        return _good(good_programs, req)

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, limit=2, concurrency=1))
        assert s.statuses == {"valid": 2}, s.failures
        # the refusal is not retried (not even the 500): one refused request, then JSON mode
        assert [_fmt(b) for b in server.requests] == ["json_schema", "json_object", "json_object"]


def test_a_400_that_names_no_schema_fails_its_record_and_keeps_the_format(workdir, good_programs):  # noqa: F811
    ctx = {"object": "error", "message": "This model's maximum context length is 4096 tokens. However, you requested "
           "6000 tokens (4000 in the messages, 2000 in the completion). Please reduce the length of the messages or "
           "completion.", "type": "BadRequestError", "param": None, "code": 400}

    def script(req, n):
        if narration_id_of(req) == sorted(good_programs)[0]:
            return Reply(status=400, raw=json.dumps(ctx))
        return _good(good_programs, req)

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, limit=3, concurrency=1))
        assert s.statuses == {"valid": 2, "failed": 1}
        assert {_fmt(b) for b in server.requests} == {"json_schema"}
    (failed,) = [r for r in records(workdir) if r["status"] == "failed"]
    # vLLM's top-level message, whole (its tail says what to do), not a dict's repr cut at 200 characters
    assert failed["errors"][0]["message"].endswith("reduce the length of the messages or completion.")
    assert "{'object'" not in failed["errors"][0]["message"]


def test_auto_sends_no_response_format_when_json_mode_is_refused_too(workdir, good_programs):  # noqa: F811
    refusal = json.dumps({"error": {"message": "response_format is not supported by this server",
                                    "param": "response_format"}})

    def script(req, n):
        return Reply(status=400, raw=refusal) if "response_format" in req else _good(good_programs, req)

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, limit=2, concurrency=1))
        assert s.statuses == {"valid": 2}, s.failures
        assert [_fmt(b) for b in server.requests] == ["json_schema", "json_object", "none", "none"]


def test_response_format_none_sends_none_and_a_refused_format_chosen_by_hand_stops(workdir, good_programs):  # noqa: F811
    with ScriptedServer(lambda req, n: _good(good_programs, req)) as server:
        s = generate_programs(config(workdir, server, limit=2, response_format="none"))
        assert s.statuses == {"valid": 2} and all("response_format" not in b for b in server.requests)
    status, body = SCHEMA_REFUSALS["lmstudio"]
    with ScriptedServer(lambda req, n: Reply(status=status, raw=json.dumps(body))) as server:
        with pytest.raises(LeapError, match="--response-format json_object"):
            generate_programs(config(workdir, server, out=workdir / "o.jsonl", response_format="json_schema",
                                     concurrency=1))
        assert len(server.requests) == 1
    assert not (workdir / "o.jsonl").exists() or not (workdir / "o.jsonl").read_text().strip()


def test_the_cli_takes_response_format_none(workdir, good_programs):  # noqa: F811
    from typer.testing import CliRunner

    from leap_cli.cli import app

    with ScriptedServer(lambda req, n: _good(good_programs, req)) as server:
        res = CliRunner().invoke(app, ["generate-programs", "--workdir", str(workdir), "--split", "val", "--backend",
                                       "openai", "--model", "m", "--base-url", server.base_url, "--api-key-env",
                                       "LEAP_TEST_KEY", "--response-format", "none", "--limit", "1"])
        assert res.exit_code == 0, res.output
        assert "response_format" not in server.requests[0]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_server_that_is_not_running_stops_the_stage_in_one_line(workdir):  # noqa: F811
    port = _closed_port()

    class Down:  # (config reads the server's base_url)
        base_url = f"http://127.0.0.1:{port}/v1"

    cfg = config(workdir, Down, max_retries=1)
    t0 = time.monotonic()
    with pytest.raises(LeapError) as err:
        generate_programs(cfg)
    line = err.value.one_line()
    assert f"cannot connect to 127.0.0.1:{port}" in line and "is the server running?" in line and "--base-url" in line
    assert time.monotonic() - t0 < 10
    # no failed record for segments that were never really tried
    out = workdir / "programs" / "val.jsonl"
    assert not out.exists() or not [r for r in records(workdir) if r["status"] == "failed"]


HTML_502 = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"


@pytest.mark.parametrize("status,raw,expected", [
    (502, HTML_502, "every request so far failed with HTTP 502: 502 Bad Gateway"),
    (503, json.dumps({"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}),
     "the server is still loading the model"),
])
def test_a_server_that_fails_every_request_the_same_way_stops_the_stage(workdir, status, raw, expected):  # noqa: F811
    with ScriptedServer(lambda req, n: Reply(status=status, raw=raw)) as server:
        with pytest.raises(LeapError, match=expected):
            generate_programs(config(workdir, server, max_retries=2))
        assert len(server.requests) <= 4 * 3  # the first requests in flight, with their retries: not every segment
    assert not (workdir / "programs" / "val.jsonl").exists() or not records(workdir)


def test_a_server_that_answers_every_request_with_an_error_in_a_200_stops_the_stage(workdir):  # noqa: F811
    """Ollama answers 200 with an error object when the model does not fit in memory: every segment was asked and
    written failed, the whole split walked."""
    body = json.dumps({"error": "model requires more system memory (12.0 GiB) than is available (4.0 GiB)"})
    with ScriptedServer(lambda req, n: Reply(raw=body)) as server:
        with pytest.raises(LeapError, match="answered with an error: .*more system memory"):
            generate_programs(config(workdir, server, concurrency=1))
        assert len(server.requests) == 2


def test_instant_errors_with_requests_in_flight_stop_the_stage_without_walking_the_split(workdir):  # noqa: F811
    """With several requests in flight and errors that come at once, a new request was always out when one failed,
    so the stop waited for the last segment: every record of the split was written failed (QA: 119 of 120)."""
    body = json.dumps({"error": "model requires more system memory (12.0 GiB) than is available (4.0 GiB)"})
    with ScriptedServer(lambda req, n: Reply(raw=body)) as server:
        with pytest.raises(LeapError, match="answered with an error: .*more system memory"):
            generate_programs(config(workdir, server, concurrency=3))
        assert len(server.requests) <= 3 + 1  # those sent before the second failure: not every segment
    out = workdir / "programs" / "val.jsonl"
    assert not out.exists() or [r["status"] for r in records(workdir)] == ["failed"]  # the first, before the stop


def test_the_same_400_for_every_request_stops_the_stage_and_a_too_large_max_tokens_is_not_switched(workdir):  # noqa: F811
    """A 400 every request gets alike (max_tokens over the model's limit, an --extra-body key it refuses) wrote
    every record failed; and "max_tokens is too large" was taken for "this model takes max_completion_tokens"."""
    body = {"error": {"message": "max_tokens is too large: 20000. This model supports at most 16384 completion tokens, "
                      "whereas you provided 20000.", "type": "invalid_request_error", "param": "max_tokens",
                      "code": "invalid_value"}}
    with ScriptedServer(lambda req, n: Reply(status=400, raw=json.dumps(body))) as server:
        with pytest.raises(LeapError) as err:
            generate_programs(config(workdir, server, concurrency=2))
        assert all("max_tokens" in b and "max_completion_tokens" not in b for b in server.requests)
        assert len(server.requests) <= 3
    line = err.value.one_line()
    assert "every request so far was refused (HTTP 400): max_tokens is too large: 20000" in line and "--max-tokens" in line


def test_a_fatal_error_keeps_the_replies_in_flight(workdir, good_programs):  # noqa: F811
    """A quota error while other requests were on the wire cancelled them at once: paid, and asked again on
    resume. They are answered and written first; the ones not yet sent stay pending."""
    first = sorted(good_programs)[0]
    quota = {"error": {"message": "You exceeded your current quota", "type": "insufficient_quota",
                       "code": "insufficient_quota"}}

    def script(req, n):
        if narration_id_of(req) == first:
            return Reply(status=429, raw=json.dumps(quota), delay=0.2)
        return Reply(json.dumps(good_programs[narration_id_of(req)]), delay=1.0)

    with ScriptedServer(script) as server:
        with pytest.raises(LeapError, match="no quota left"):
            generate_programs(config(workdir, server, concurrency=3))
        asked = {narration_id_of(b) for b in server.requests}
    written = {r["narration_id"]: r["status"] for r in records(workdir)}
    assert len(asked) == 3 and written == {i: "valid" for i in asked - {first}}  # the two in flight, kept
    # the command shows what was done and spent before the error's line (it showed the line alone)
    from typer.testing import CliRunner

    from leap_cli.cli import app

    with ScriptedServer(script) as server:
        res = CliRunner().invoke(app, ["generate-programs", "--workdir", str(workdir), "--split", "val", "--backend",
                                       "openai", "--model", "test-model", "--base-url", server.base_url,
                                       "--api-key-env", "LEAP_TEST_KEY", "--out", str(workdir / "cli.jsonl")],
                                 env={"COLUMNS": "200"})
    assert isinstance(res.exception, LeapError) and "no quota left" in str(res.exception)
    assert "valid / invalid / failed" in res.output and "estimated cost of this run" in res.output


def test_a_streamed_reply_is_said_as_such(workdir):  # noqa: F811
    """A proxy that always streams: every reply was "no JSON ... not a web page" (check --base-url)."""
    sse = 'data: {"choices": [{"delta": {"content": "{"}}]}\n\ndata: [DONE]\n\n'
    with ScriptedServer(lambda req, n: Reply(raw=sse, headers={"Content-Type": "text/event-stream"})) as server:
        with pytest.raises(LeapError, match=r"streamed its reply \(text/event-stream\), leap reads whole replies"):
            generate_programs(config(workdir, server, concurrency=1))


def test_a_redirect_stops_the_stage_naming_where(workdir):  # noqa: F811
    with ScriptedServer(lambda req, n: Reply(status=307, raw="", headers={"Location": "https://example.org/v1/chat/completions"})) as server:
        with pytest.raises(LeapError) as err:
            generate_programs(config(workdir, server, concurrency=2))
        assert len(server.requests) <= 2
    assert "HTTP 307, a redirect to https://example.org/v1/chat/completions" in err.value.one_line()
    assert "--base-url" in err.value.one_line()


def test_requests_still_waiting_for_a_reply_keep_the_stage_going(workdir, good_programs):  # noqa: F811
    """Two segments the server refuses with 500s while the others are still being generated (a slow model): the
    stage stopped once the two had failed for good, cancelling the replies in flight (paid, and bought again)."""
    refused = set(sorted(good_programs)[:2])

    def script(req, n):
        if narration_id_of(req) in refused:
            return Reply(status=500, raw=json.dumps({"error": {"message": "boom"}}))
        return Reply(json.dumps(good_programs[narration_id_of(req)]), delay=1.0)

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, concurrency=N_SEGMENTS, max_retries=1, backoff=0.01))
        assert s.statuses == {"valid": N_SEGMENTS - 2, "failed": 2}


def test_a_web_page_at_the_base_url_stops_the_stage(workdir):  # noqa: F811
    page = "<!doctype html><html><head><title>Open WebUI</title></head><body>app</body></html>"
    with ScriptedServer(lambda req, n: Reply(raw=page)) as server:
        with pytest.raises(LeapError, match="no JSON.*Open WebUI.*--base-url"):
            generate_programs(config(workdir, server, concurrency=1))
        assert len(server.requests) == 2  # the first failed record, then the second alike stops it
    assert [r["status"] for r in records(workdir)] == ["failed"]


def test_one_off_failures_are_still_retried_after_a_success(workdir, good_programs):  # noqa: F811
    """A prompt the server chokes on among replies fails its record alone (the rest go on at full speed)."""
    first, bad = sorted(good_programs)[0], sorted(good_programs)[2]

    def script(req, n):
        return Reply(status=502, raw=HTML_502) if narration_id_of(req) == bad else _good(good_programs, req)

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, concurrency=1, max_retries=1))
        assert s.statuses == {"valid": N_SEGMENTS - 1, "failed": 1} and s.held_seconds == 0
    (failed,) = [r for r in records(workdir) if r["status"] == "failed"]
    assert failed["narration_id"] == bad != first
    assert failed["errors"][0]["message"] == "request failed: HTTP 502 after 2 attempts: 502 Bad Gateway"


class _Outage:
    """A server that answers ``before`` requests, then fails every request (502) until ``down_for`` seconds
    after its first failure (forever with None), then answers again."""

    def __init__(self, good_programs, before, down_for=None):
        self.good, self.before, self.down_for = good_programs, before, down_for
        self.lock, self.served, self.down_at, self.back_at = threading.Lock(), 0, None, None

    def __call__(self, req, n):
        with self.lock:
            self.served += 1
            down = self.served > self.before and (self.down_at is None or self.down_for is None
                                                   or time.monotonic() - self.down_at < self.down_for)
            if down and self.down_at is None:
                self.down_at = time.monotonic()
            if not down and self.down_at is not None and self.back_at is None:
                self.back_at = time.monotonic()
        time.sleep(0.01)
        return Reply(status=502, raw=HTML_502) if down else _good(self.good, req)


def test_a_server_that_stops_answering_is_held_then_the_stage_stops(workdir, good_programs, monkeypatch):  # noqa: F811
    """A local server that crashed after some replies: each remaining segment went through its retries and was
    written failed (~31 s each at the default policy), the whole split walked, every record to redo. Now two in
    a row failed for good hold the server: one request at a time probes it, and without a reply for HOLD_FOR
    the stage stops in one line, the rest of the segments not written (a rerun asks for them)."""
    from leap_cli.programs.backends import OpenAIBackend

    monkeypatch.setattr(OpenAIBackend, "HOLD_FOR", 0.6)
    outage = _Outage(good_programs, before=2)
    with ScriptedServer(outage) as server:
        t0 = time.monotonic()
        with pytest.raises(LeapError, match=r"stopped answering: no reply for .* after 2 replies .*HTTP 502") as err:
            generate_programs(config(workdir, server, concurrency=1, max_retries=4, max_backoff=0.2))
        assert "run the same command again with --retry-errors" in err.value.one_line()
        assert 0.6 <= time.monotonic() - t0 < 10
        probes = len(server.requests) - 2 - 2 * 5  # beyond the replies and the two given up (5 attempts each)
        assert 1 <= probes <= 12  # at growing intervals (0.01 .. 0.2 s here), not a request per segment
    kept = [r["status"] for r in records(workdir)]
    assert kept.count("valid") == 2 and 2 <= kept.count("failed") <= 3 and len(kept) < N_SEGMENTS


def test_a_server_that_comes_back_gets_its_requests_in_flight_again(workdir, good_programs):  # noqa: F811
    outage = _Outage(good_programs, before=1, down_for=0.5)
    with ScriptedServer(outage) as server:
        s = generate_programs(config(workdir, server, concurrency=3, max_retries=4, max_backoff=0.2))
    # at most the two that failed for good before the hold (and requests already in flight with them), then
    # the held requests waited for the server instead of failing their records
    assert s.statuses["valid"] >= N_SEGMENTS - 3 and s.statuses["valid"] + s.statuses["failed"] == N_SEGMENTS
    # held from the second failure for good until the server's first answer: some of the outage, never more (a
    # slow machine spends more of the 0.5 s on the failures before the hold: 0.25 s held once)
    assert 0.0 < s.held_seconds <= outage.back_at - outage.down_at + 0.05
    from leap_cli.commands.programs import endpoint_notes

    (note,) = [n for n in endpoint_notes(s) if "stopped answering for" in n]
    assert f"--retry-errors for the {s.statuses['failed']} records written failed" in note


def test_a_held_server_shows_on_the_progress_line(workdir, good_programs, monkeypatch):  # noqa: F811
    """A log of the run (progress lines in a file) said nothing between the hold's warning and the server's
    return, minutes later: the progress line now says the server is not answering, for how long, and when the
    stage stops; and once it answers again, plain progress."""
    from typer.testing import CliRunner

    import leap_cli.programs.generate as generate
    from leap_cli.cli import app

    monkeypatch.setattr(generate, "WAITING_EVERY", 0.05)
    monkeypatch.setenv("LEAP_PROGRESS_EVERY", "0")
    monkeypatch.setenv("COLUMNS", "250")
    lock, served = threading.Lock(), [0]

    def script(req, n):  # answers once, then fails 7 requests: 2 x 2 attempts before the hold, 3 probes in it
        with lock:
            served[0] += 1
            down = 1 < served[0] <= 8
        return Reply(status=502, raw=HTML_502) if down else _good(good_programs, req)

    with ScriptedServer(script) as server:
        res = CliRunner().invoke(app, ["generate-programs", "--workdir", str(workdir), "--split", "val", "--backend",
                                       "openai", "--model", "m", "--base-url", server.base_url, "--api-key-env",
                                       "LEAP_TEST_KEY", "--concurrency", "1", "--max-retries", "1", "--backoff",
                                       "0.1"])
    assert res.exit_code == 0, res.output
    lines = [x for x in res.output.splitlines() if x.startswith("generate-programs val programs")]
    held = [i for i, x in enumerate(lines) if "programs (server not answering for 0:00:0" in x]
    assert held and "asking one request at a time; the stage stops at 0:10:00" in lines[held[0]], res.output
    assert any(x.startswith("generate-programs val programs: ") for x in lines[held[-1] + 1:]), res.output
    assert "(server" not in lines[-1] and "6/6 (100%)" in lines[-1]


def test_a_rerun_that_only_resumes_says_which_records_failed(workdir, good_programs):  # noqa: F811
    """A rerun after a run with failed records said "resumed 6", valid / invalid / failed 0 / 0 / 0, exit 0:
    nothing told that one of the records resumed had failed, nor how to ask for it again."""
    from typer.testing import CliRunner

    from leap_cli.cli import app

    bad = sorted(good_programs)[2]

    def script(req, n):
        return Reply(status=502, raw=HTML_502) if narration_id_of(req) == bad else _good(good_programs, req)

    def run(server, *extra):
        return CliRunner().invoke(app, ["generate-programs", "--workdir", str(workdir), "--split", "val",
                                        "--backend", "openai", "--model", "m", "--base-url", server.base_url,
                                        "--api-key-env", "LEAP_TEST_KEY", "--concurrency", "1", "--max-retries", "0",
                                        *extra], env={"COLUMNS": "200"})

    with ScriptedServer(script) as server:
        assert run(server).exit_code == 0
        again = run(server)
        assert again.exit_code == 0 and len(server.requests) == N_SEGMENTS, again.output
        assert re.search(rf"resumed \(already done\) +│ +{N_SEGMENTS} \(1 failed\)", again.output), again.output
        assert "note: 1 of the records done before is failed" in again.output and "--retry-errors" in again.output
        retried = run(server, "--retry-errors")
        assert len(server.requests) == N_SEGMENTS + 1 and "records done before are failed" not in retried.output


def test_insufficient_quota_stops_the_stage_like_a_refused_key(workdir):  # noqa: F811
    body = {"error": {"message": "You exceeded your current quota, please check your plan and billing details.",
                      "type": "insufficient_quota", "code": "insufficient_quota"}}
    with ScriptedServer(lambda req, n: Reply(status=429, raw=json.dumps(body))) as server:
        with pytest.raises(LeapError, match="no quota left.*billing"):
            generate_programs(config(workdir, server, concurrency=1))
        assert len(server.requests) == 1


def test_403_for_a_model_names_the_model_not_the_key(workdir):  # noqa: F811
    body = {"error": {"message": "Project `proj_x` does not have access to model `gpt-4o`", "code": "model_not_found"}}
    with ScriptedServer(lambda req, n: Reply(status=403, raw=json.dumps(body))) as server:
        with pytest.raises(LeapError) as err:
            generate_programs(config(workdir, server, concurrency=1))
    assert "--model test-model" in err.value.one_line() and "api-key-env" not in err.value.one_line()


def test_a_server_that_takes_one_request_at_a_time_gets_fewer_in_flight(workdir, good_programs):  # noqa: F811
    lock, busy = threading.Lock(), [0]

    def script(req, n):
        with lock:
            if busy[0]:
                return Reply(status=429, raw=json.dumps({"error": {"message": "Too many requests"}}))
            busy[0] += 1
        time.sleep(0.03)
        with lock:
            busy[0] -= 1
        return _good(good_programs, req)

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, concurrency=6, max_retries=2, backoff=0.02, max_backoff=0.05))
        assert s.statuses == {"valid": N_SEGMENTS}, s.failures
        assert s.rate_limited > 0 and s.lowest_concurrency is not None and s.lowest_concurrency < 6
    from leap_cli.commands.programs import endpoint_notes

    (note,) = endpoint_notes(s)
    assert f"refused {s.rate_limited} requests with HTTP 429" in note and "lower --concurrency" in note


def test_openai_rate_limit_reset_headers_are_waited_for(workdir, good_programs):  # noqa: F811
    from leap_cli.programs.backends import parse_go_duration, parse_retry_after

    assert parse_go_duration("1s") == 1 and parse_go_duration("6m0s") == 360 and parse_go_duration("20ms") == 0.02
    assert parse_go_duration("1h2m3.5s") == 3723.5 and parse_go_duration("soon") is None
    assert parse_retry_after({"x-ratelimit-reset-requests": "20s", "x-ratelimit-remaining-requests": "0",
                              "x-ratelimit-reset-tokens": "6ms", "x-ratelimit-remaining-tokens": "900"}) == 20
    assert parse_retry_after({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s"}) == 360
    assert parse_retry_after({"retry-after": "2", "x-ratelimit-reset-requests": "20s"}) == 2

    def script(req, n):
        if n == 0:
            return Reply(status=429, headers={"x-ratelimit-reset-requests": "300ms",
                                              "x-ratelimit-remaining-requests": "0"})
        return _good(good_programs, req)

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, limit=1, backoff=0.0, max_backoff=60.0))
        assert s.statuses == {"valid": 1} and server.times[1] - server.times[0] >= 0.29


def test_timeouts_name_the_flag_and_the_summary_says_they_may_be_billed(workdir, good_programs):  # noqa: F811
    def script(req, n):
        return Reply(json.dumps(good_programs[narration_id_of(req)]), delay=1.0 if n == 0 else 0.0)

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, limit=1, timeout=0.3, max_retries=0))
    assert s.timed_out == 1
    assert records(workdir)[0]["errors"][0]["message"] == \
        "request failed: timed out after 1 attempt: no complete response within 0.3 s (--timeout)"
    from leap_cli.commands.programs import endpoint_notes

    (note,) = endpoint_notes(s)
    assert "1 request timed out (--timeout)" in note and "billed" in note and "not in the estimated cost" in note


def test_error_bodies_are_read_in_the_forms_servers_send():
    from leap_cli.programs.backends import _error_message
    from leap_cli.programs.http import Response

    def msg(body):
        return _error_message(Response(400, {}, body.encode() if isinstance(body, str) else json.dumps(body).encode()))

    assert msg({"detail": "Not Found"}) == "Not Found"
    assert msg({"detail": [{"loc": ["body", "response_format", "type"], "msg": "bad"}]}) == \
        "body.response_format.type: bad"
    assert msg({"object": "error", "message": "m " * 140, "code": 400}).endswith("m m")  # 280 characters, whole
    assert msg({"error": "Failed to compile JSON schema"}) == "Failed to compile JSON schema"
    assert msg(HTML_502) == "502 Bad Gateway"
    assert msg("<html><body><h1>Request Entity Too Large</h1></body></html>") == "Request Entity Too Large"


def test_a_base_url_with_the_endpoint_or_a_query_is_used_as_meant(workdir, good_programs, caplog):  # noqa: F811
    with ScriptedServer(lambda req, n: _good(good_programs, req)) as server:
        s = generate_programs(config(workdir, server, limit=1, base_url=server.base_url + "/chat/completions/"))
        assert s.statuses == {"valid": 1} and server.paths == ["/v1/chat/completions"]
        assert "ends in /chat/completions" in caplog.text
        s = generate_programs(config(workdir, server, limit=2, out=workdir / "q.jsonl",  # (the first: cached)
                                     base_url=server.base_url + "?api-version=2024-06-01"))
        assert s.statuses == {"valid": 2} and server.paths[1:] == ["/v1/chat/completions?api-version=2024-06-01"]
        # Azure OpenAI (a deployment's ?api-version=, here a gateway's) takes the key in api-key; other servers get
        # Bearer alone; an Azure host api-key alone (it reads a Bearer header as an Entra ID token)
        assert server.headers[1]["api-key"] == os.environ["LEAP_TEST_KEY"] and "authorization" in server.headers[1]
        assert "api-key" not in server.headers[0] and server.headers[0]["authorization"].startswith("Bearer ")
    from leap_cli.programs.backends import _azure

    assert _azure("https://me.openai.azure.com/openai/v1") == "host" and _azure("http://localhost:8000/v1") is None


def test_a_base_url_without_v1_is_tried_with_it(workdir, good_programs, caplog):  # noqa: F811
    """`--base-url http://localhost:8000` (no /v1) got a 404 from every OpenAI-compatible server and stopped
    with a hint to add /v1; leap now tries the URL with /v1 itself, says so once, and carries on."""
    def script(req, n):
        if not server.current.path.startswith("/v1/"):
            return Reply(status=404, raw=json.dumps({"detail": "Not Found"}))  # (FastAPI's, as vLLM's)
        return _good(good_programs, req)

    with ScriptedServer(script) as server:
        root = server.base_url[: -len("/v1")]
        s = generate_programs(config(workdir, server, base_url=root, concurrency=3))
        assert s.statuses == {"valid": N_SEGMENTS}, s.failures
        assert server.paths.count("/v1/chat/completions") == N_SEGMENTS and 1 <= server.paths.count("/chat/completions") <= 3
    assert sum("trying http://127.0.0.1" in r.getMessage() and "/v1" in r.getMessage() for r in caplog.records) == 1


def test_a_404_with_and_without_v1_stops_naming_both(workdir):  # noqa: F811
    """Each URL's own words: the first 404 may be the one that says what is wrong (a model not found)."""
    def script(req, n):
        said = "The model `test-model` does not exist." if server.current.path.startswith("/chat/") else "Not Found"
        return Reply(status=404, raw=json.dumps({"detail": said}))

    with ScriptedServer(script) as server:
        root = server.base_url[: -len("/v1")] + "/?api-version=1"
        with pytest.raises(LeapError, match=r"HTTP 404 from http://[^ ]+:\d+/\?api-version=1: The model `test-model` "
                                            r"does not exist.; and from http://[^ ]+:\d+/v1\?api-version=1: Not Found"):
            generate_programs(config(workdir, server, base_url=root))
        assert set(server.paths) == {"/chat/completions?api-version=1", "/v1/chat/completions?api-version=1"}


def test_a_404_after_replies_is_not_taken_for_a_missing_v1(workdir, good_programs):  # noqa: F811
    def script(req, n):
        if len(server.requests) > 2:
            return Reply(status=404, raw=json.dumps({"detail": "The model `test-model` does not exist."}))
        return _good(good_programs, req)

    with ScriptedServer(script) as server:
        root = server.base_url[: -len("/v1")]
        with pytest.raises(LeapError, match=r"HTTP 404 from http://[^ ]+:\d+: The model"):
            generate_programs(config(workdir, server, base_url=root, concurrency=1))
        assert "/v1/chat/completions" not in server.paths


def _connection_error_of(reply: bytes, scheme: str = "http") -> str:
    """The HTTPConnectionError leap's client gives for a raw socket server that answers ``reply`` once."""
    from leap_cli.programs.http import HTTPClient, HTTPConnectionError

    async def on_conn(reader, writer):  # (the request read whole: unread bytes at close would reset the connection)
        await (reader.readuntil(b"\r\n\r\n") if scheme == "http" else reader.read(100))  # (https: a TLS hello)
        writer.write(reply)
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        client = HTTPClient(f"{scheme}://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", {}, timeout=5)
        try:
            with pytest.raises(HTTPConnectionError) as e:
                await client.post("/chat/completions", b"{}")
            return str(e.value)
        finally:
            await client.aclose()
            server.close()

    return asyncio.run(main())


def test_a_connection_closed_mid_response_is_said_in_words():
    said = _connection_error_of(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{\"choices\": [")
    assert said == "the server closed the connection mid-response"


def test_https_to_a_plain_http_server_says_use_http():
    """It said "[SSL: WRONG_VERSION_NUMBER] ...: is the server running?"."""
    said = _connection_error_of(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", scheme="https")
    assert said.endswith("(the server speaks plain http: give --base-url with http://)")


@pytest.mark.parametrize("capacity", [1, 2])
def test_the_429_note_suggests_what_the_server_took(monkeypatch, capacity):
    """A server that takes two requests at a time: halving the requests in flight went 6 -> 3 -> 1, and the
    summary suggested --concurrency 1, the lowest cut, for a server that had run 2 at a time without a 429."""
    from leap_cli.programs.backends import OpenAIBackend, Request, RetryPolicy

    monkeypatch.setenv("LEAP_TEST_KEY", "sk-test")
    lock, busy = threading.Lock(), [0]

    def script(req, n):
        with lock:
            if busy[0] >= capacity:
                return Reply(status=429, raw=json.dumps({"error": {"message": "Too many requests"}}))
            busy[0] += 1
        time.sleep(0.1)  # long beside the client's own pace: requests in flight overlap, also on a busy machine
        with lock:
            busy[0] -= 1
        return Reply("{}")

    async def run(url):
        backend = OpenAIBackend("m", base_url=url, api_key_env="LEAP_TEST_KEY", concurrency=6,
                                retry=RetryPolicy(max_retries=2, base_delay=0.01, max_delay=0.03))
        try:
            await asyncio.gather(*(backend.complete(Request(f"c{i}", [{"role": "user", "content": "x"}]))
                                   for i in range(40)))
        finally:
            await backend.aclose()
        return backend

    with ScriptedServer(script) as server:
        backend = asyncio.run(run(server.base_url))
    assert backend.rate_limited > 0 and backend.lowest_limit <= capacity
    # what went without a 429 as leap saw it: the server's capacity, or one more where a busy machine spaced the
    # requests so that one more in flight never met two at the server (the scripted server shares our process)
    assert capacity <= backend.steady_limit <= capacity + 1


def test_a_429_keeps_what_went_through_with_fewer_in_flight(monkeypatch):
    """A server that takes 2: a window at 2 in flight without a 429, then a 429 at 3 (cut to 1), and the run ended
    at 1 in flight: the summary suggested --concurrency 1, as every cut forgot what had gone through before it. A
    429 now forgets only as many in flight as it was refused at (the endpoint test above flaked on it)."""
    from leap_cli.programs.backends import OpenAIBackend

    monkeypatch.setenv("LEAP_TEST_KEY", "sk-test")

    async def run():
        backend = OpenAIBackend("m", base_url="http://127.0.0.1:9/v1", api_key_env="LEAP_TEST_KEY", concurrency=3)
        try:
            seen = []
            backend._limit, backend._active, backend._peak = 2, 2, 2  # a window of 2 replies at 2 in flight
            backend._answered(), backend._answered()
            seen.append(backend.steady_limit)
            backend._limit, backend._active = 3, 2  # a 429 for a third one beside 2 in flight
            backend._rate_limited(backend._epoch, None)
            seen += [backend.steady_limit, backend._limit]
            backend._answered()  # a window at 1: still 2
            seen.append(backend.steady_limit)
            backend._limit, backend._active = 2, 1  # a 429 for a second one beside 1: the server takes 1 now
            backend._rate_limited(backend._epoch, None)
            seen.append(backend.steady_limit)
            return seen
        finally:
            await backend.aclose()

    assert asyncio.run(run()) == [2, 2, 1, 2, 1]


@pytest.mark.parametrize("retries", [1, 2])
def test_prompts_the_server_chokes_on_do_not_stop_a_held_stage(workdir, good_programs, monkeypatch,  # noqa: F811
                                                               retries):
    """Three prompts in a row that the server always fails (a 500 on their content) held the stage, the third
    probed alone and forever, and after HOLD_FOR the stage stopped as if the server were down. A request gets
    --max-retries probes of its own (+ its first try; one fewer failed a request its last try would have passed);
    then it fails its record and the next one probes."""
    from leap_cli.programs.backends import OpenAIBackend

    monkeypatch.setattr(OpenAIBackend, "HOLD_FOR", 5.0)  # (a stop here fails the test instead of waiting 10 min)
    poison = set(sorted(good_programs)[1:4])

    def script(req, n):
        if narration_id_of(req) in poison:
            return Reply(status=500, raw=json.dumps({"error": {"message": "tokenizer crashed"}}))
        return _good(good_programs, req)

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, concurrency=1, max_retries=retries))
        calls = [server.calls_for(p) for p in sorted(poison)]
    assert s.statuses == {"valid": N_SEGMENTS - 3, "failed": 3}
    assert {r["narration_id"] for r in records(workdir) if r["status"] == "failed"} == poison
    assert calls == [retries + 1] * 3


def test_a_server_answering_only_429_after_replies_is_held_too(monkeypatch):
    """A proxy (LiteLLM: "No deployments available") answers 429 when its backends are down: every record
    after them was written failed, the hold never began."""
    def script(req, n):
        if len(server.requests) > 3:
            return Reply(status=429, raw=json.dumps({"error": {"message": "No deployments available"}}))
        return Reply("{}")

    with ScriptedServer(script) as server:
        outcome, stop = _backend_run(server.base_url, ["x"] * 40, 4, monkeypatch, 1.5, max_retries=2,
                                     base_delay=0.05, max_delay=0.4)
    assert isinstance(stop, LeapError)
    assert re.search(r"stopped answering: .* after 3 replies \(last: HTTP 429; http://127.0.0.1:\d+/v1\).*--retry-errors",
                     stop.one_line())
    assert sum(v == "ok" for v in outcome.values()) == 3 and sum(v != "ok" for v in outcome.values()) <= 16


def test_ctrl_c_while_the_server_is_held_stops_at_once(workdir, good_programs):  # noqa: F811
    """Ctrl-C during a hold waited the whole grace (20 s) for the requests "in flight" that the hold had kept
    back, never sent, and then warned that the provider might bill them."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    outage = _Outage(good_programs, before=2)
    with ScriptedServer(outage) as server:
        root = Path(__file__).resolve().parents[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", "leap_cli", "generate-programs", "--workdir", str(workdir), "--split", "val",
             "--backend", "openai", "--model", "m", "--base-url", server.base_url, "--api-key-env", "LEAP_TEST_KEY",
             "--concurrency", "4", "--max-retries", "3", "--backoff", "0.05"],
            cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while len(server.requests) < 2 + 2 * 4 + 3 and time.monotonic() < deadline:  # held, probing
            time.sleep(0.02)
        time.sleep(0.3)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    assert proc.returncode == 130, err.decode()[-3000:]
    assert took < 5, took
    assert "holding the others" in err.decode() and "abandoned" not in err.decode()
    kept = [r["status"] for r in records(workdir)]
    assert kept.count("valid") == 2 and len(kept) < N_SEGMENTS  # the ones held back stay pending


def _backend_run(url, prompts, concurrency, monkeypatch, hold_for, **retry):
    """The openai backend alone on ``prompts`` (one request each, asked in order as slots free): the outcome of
    each ("ok", or the error's text), and the LeapError that stopped it, if one did."""
    from leap_cli.programs.backends import BackendError, OpenAIBackend, Request, RetryPolicy

    monkeypatch.setenv("LEAP_TEST_KEY", "sk-test")
    monkeypatch.setattr(OpenAIBackend, "HOLD_FOR", hold_for)
    outcome: dict[int, str] = {}

    async def run():
        backend = OpenAIBackend("m", base_url=url, api_key_env="LEAP_TEST_KEY", concurrency=concurrency,
                                retry=RetryPolicy(**retry))
        slots = asyncio.Semaphore(concurrency)

        async def one(i, text):
            async with slots:
                try:
                    await backend.complete(Request(f"c{i}", [{"role": "user", "content": text}]))
                    outcome[i] = "ok"
                except BackendError as e:
                    outcome[i] = str(e)
        try:
            await asyncio.gather(*(one(i, t) for i, t in enumerate(prompts)))
        except LeapError as e:
            return e
        finally:
            await backend.aclose()

    return outcome, asyncio.run(run())


def test_an_outage_answering_errors_in_200s_is_paced_and_stops(monkeypatch):
    """An outage answered with an error in a 200 (or a web page) failed every remaining record within seconds:
    the probes of a held server set no wait."""
    def script(req, n):
        if len(server.requests) > 3:
            return Reply(raw=json.dumps({"error": "model requires more system memory than is available"}))
        return Reply("{}")

    with ScriptedServer(script) as server:
        outcome, stop = _backend_run(server.base_url, ["x"] * 40, 4, monkeypatch, 1.5, max_retries=2,
                                     base_delay=0.05, max_delay=0.4)
    assert isinstance(stop, LeapError) and "stopped answering" in str(stop)
    assert sum(v == "ok" for v in outcome.values()) == 3
    # the requests in flight when it went down, then probes paced over 1.5 s: not all 37 at once
    assert 2 <= sum(v != "ok" for v in outcome.values()) <= 16


def test_a_run_of_prompts_the_server_chokes_on_starts_each_probe_afresh(monkeypatch):
    """Each request that fails its probes lets the next start from the shortest wait: eight such prompts in a row
    at one request at a time ran the wait up to its longest and stopped the stage as if the server were down."""
    def script(req, n):
        if req["messages"][0]["content"] == "poison":
            return Reply(status=500, raw=json.dumps({"error": {"message": "tokenizer crashed"}}))
        return Reply("{}")

    prompts = ["ok"] * 3 + ["poison"] * 8 + ["ok"] * 3
    with ScriptedServer(script) as server:
        # each held one probes after 0.05, 0.1 and 0.2 s: ~2.5 s for the run; from one wait to the next longer,
        # up to 0.5 s, it was ~8 s, past the 4 s that stop a held stage here
        outcome, stop = _backend_run(server.base_url, prompts, 1, monkeypatch, 4.0, max_retries=2,
                                     base_delay=0.05, max_delay=0.5)
    assert stop is None
    assert [outcome[i] == "ok" for i in range(len(prompts))] == [p == "ok" for p in prompts]
