"""`leap generate-programs --backend openai` against OpenAI-compatible servers as they are in the wild (helper
llmwild, session 53): OpenRouter's error inside ``choices[0]``, vLLM/DeepSeek reasoning fields and served model
paths, prompt-cache counts, proxies' 5xx pages and HTTP-date Retry-After on a repair turn, a pasted Azure endpoint,
and a server that closes keep-alive connections after every N requests (gunicorn/uvicorn max-requests)."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time

import pytest

from leap_cli.io import read_jsonl
from leap_cli.programs.generate import generate_programs
from tests.program_helpers import excerpt_annotations, excerpt_programs, server_config
from tests.programs_llm_server import Reply, ScriptedServer, completion, narration_id_of, serve_requests

ROWS = 3


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    excerpt_annotations(tmp_path, rows=ROWS)
    monkeypatch.setenv("LEAP_TEST_KEY", "sk-test-llmwild")
    return tmp_path


@pytest.fixture(scope="module")
def good():
    return excerpt_programs(ROWS)


def config(workdir, server, **kw):
    return server_config(workdir, server, **{"concurrency": 1, **kw})


def records(workdir) -> dict:
    return {r["narration_id"]: r for r in read_jsonl(workdir / "programs" / "val.jsonl")}


def good_reply(good, body) -> Reply:
    return Reply(json.dumps(good[narration_id_of(body)]))


def first_turn_fails_schema(good, then):
    """The first segment's first reply is JSON that fails the schema (no ``post``); its later turns: ``then``."""
    target = sorted(good)[0]

    def script(body, n):
        nid = narration_id_of(body)
        if nid != target:
            return good_reply(good, body)
        if n == 0:
            program = dict(good[nid])
            program.pop("post")
            return Reply(json.dumps(program))
        return then(body, n)
    return target, script


def openrouter_error(body, n=0) -> Reply:
    """OpenRouter's 200 for an upstream provider that failed: the error inside the choice, an empty content."""
    data = completion("", body.get("model", "m"))
    data["choices"][0]["error"] = {"code": 502, "message": "Upstream provider returned error",
                                   "metadata": {"provider_name": "SomeProvider"}}
    data["choices"][0]["finish_reason"] = "error"
    return Reply(raw=json.dumps(data))


# ---- OpenRouter: an error inside choices[0] with HTTP 200 -------------------------------------------------------

def deepseek_busy(body, n=0) -> Reply:
    """DeepSeek's reply when inference was cut off for want of resources: an empty content, no error object."""
    data = completion("", body.get("model", "m"), completion_tokens=0)
    data["choices"][0]["finish_reason"] = "insufficient_system_resource"
    return Reply(raw=json.dumps(data))


@pytest.mark.parametrize("quirk,said", [(openrouter_error, "Upstream provider returned error"),
                                        (deepseek_busy, "insufficient_system_resource")])
def test_an_error_inside_the_first_choice_is_a_failed_request(workdir, good, quirk, said):
    """Was wrong: a provider failure inside a 200's choice (OpenRouter's choices[0].error, DeepSeek's finish_reason
    insufficient_system_resource) is taken for an empty model reply: cached, a repair turn paid, the cause never
    said."""
    target = sorted(good)[0]

    def script(body, n):
        return quirk(body) if narration_id_of(body) == target and n == 0 else good_reply(good, body)

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server))
        first_prompt = len(server.requests[0]["messages"])
        # no repair turn quoting an empty assistant message was bought
        assert all(len(b["messages"]) == first_prompt for b in server.requests), [len(b["messages"])
                                                                                  for b in server.requests]
    rec = records(workdir)[target]
    assert s.statuses == {"valid": 2, "failed": 1}
    assert rec["status"] == "failed" and said in rec["errors"][-1]["message"]
    with ScriptedServer(lambda body, n: good_reply(good, body)) as server:
        s = generate_programs(config(workdir, server, retry_failed=True))  # --retry-errors redoes it
        assert len(server.requests) == 1 and records(workdir)[target]["status"] == "valid"


def test_a_200_error_refusing_structured_outputs_steps_down_to_json_mode(workdir, good):
    """Was wrong: an error in a 200 that refuses response_format json_schema stops the stage pointing at --model,
    where a 400 saying the same steps down to JSON mode."""
    refusal = json.dumps({"error": {"message": "response_format json_schema is not supported by this provider",
                                    "code": 400}})

    def script(body, n):
        if body.get("response_format", {}).get("type") == "json_schema":
            return Reply(raw=refusal)
        return good_reply(good, body)

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server))
    assert s.statuses == {"valid": ROWS}


def test_an_error_inside_the_choice_of_a_repair_turn_is_said_and_not_repaired(workdir, good):
    """Was wrong: a repair turn answered with OpenRouter's choices[0].error is read as an empty reply: one more
    repair turn is paid and the record says 'the reply is empty', not the provider's error."""
    target, script = first_turn_fails_schema(good, openrouter_error)
    with ScriptedServer(script) as server:
        generate_programs(config(workdir, server, repair_rounds=2))
        sizes = sorted({len(b["messages"]) for b in server.requests})
    # the first prompt and one repair turn; not a second repair turn answering an empty assistant message
    assert len(sizes) == 2, sizes
    rec = records(workdir)[target]
    assert rec["status"] in ("invalid", "failed")
    assert any("Upstream provider returned error" in e["message"] for e in rec["errors"]), rec["errors"]


# ---- a repair turn lost to a transient server error -------------------------------------------------------------

NGINX_502 = ("<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1>"
             "</center>\r\n<hr><center>nginx/1.18.0</center>\r\n</body>\r\n</html>\r\n")


def test_a_repair_turn_lost_to_a_502_is_redone_by_retry_errors_without_buying_the_first_turn(workdir, good):
    """Was wrong: a repair turn lost to a proxy's 502 leaves the record invalid: --retry-errors skips it and only
    --retry-invalid, which buys the first turn again, redoes it."""
    target, script = first_turn_fails_schema(good, lambda body, n: Reply(status=502, raw=NGINX_502))
    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, max_retries=0))
        first_prompt = len(server.requests[0]["messages"])
    rec = records(workdir)[target]
    assert "502 Bad Gateway" in rec["errors"][-1]["message"]  # (holds: the proxy's page is said by its title)
    assert s.statuses["valid"] == 2
    with ScriptedServer(lambda body, n: good_reply(good, body)) as server:
        generate_programs(config(workdir, server, retry_failed=True))
        # only the repair turn, the paid first reply read from the cache
        assert [len(b["messages"]) > first_prompt for b in server.requests] == [True]
    assert records(workdir)[target]["status"] == "valid"


# ---- what holds --------------------------------------------------------------------------------------------------

def test_a_repair_turn_that_gets_a_503_with_an_http_date_retry_after_waits_and_is_repaired(workdir, good):
    when = email.utils.formatdate(time.time() + 2, usegmt=True)  # (whole seconds: 1-2 s on)
    target, script = first_turn_fails_schema(good, lambda body, n: Reply(
        status=503, raw='{"error": {"message": "overloaded"}}', headers={"Retry-After": when}) if n == 1
        else good_reply(good, body))
    start = time.monotonic()
    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, max_backoff=5.0))
        times = server.times
        assert len(server.requests) == ROWS + 2
    assert s.statuses == {"valid": ROWS}
    rec = records(workdir)[target]
    assert rec["provenance"]["rounds"] == 2 and rec["provenance"]["attempts"] == 3
    # the 503 is not billed: two replies' tokens
    assert rec["provenance"]["usage"] == {"prompt_tokens": 2000, "completion_tokens": 400}
    assert max(b - a for a, b in zip(times, times[1:])) >= 0.9 and time.monotonic() - start < 20


def test_a_repair_reply_fenced_with_prose_around_it_is_the_program(workdir, good):
    def fenced(body, n):
        return Reply("Sure! Here is the corrected program:\n```json\n" + json.dumps(good[narration_id_of(body)],
                                                                                    indent=2) + "\n```\nHope it helps.")
    target, script = first_turn_fails_schema(good, fenced)
    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server))
    assert s.statuses == {"valid": ROWS}
    rec = records(workdir)[target]
    assert rec["program"] == good[target] and rec["provenance"]["rounds"] == 2


def test_vllm_reasoning_beside_content_a_served_model_path_and_cached_tokens(workdir, good):
    """vLLM/DeepSeek: reasoning_content beside the content (braces in it are not the program), the model answered
    as a path, the prompt cache's count: valid, priced at --price-cached-in, and a rerun pays nothing."""
    def script(body, n):
        data = completion(json.dumps(good[narration_id_of(body)]), "/models/llama-3-70b")
        data["choices"][0]["message"]["reasoning_content"] = 'The user wants {"steps": []} ... so: {"bad": 1}'
        data["usage"]["prompt_tokens_details"] = {"cached_tokens": 800}
        return Reply(raw=json.dumps(data))

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, price_cached_in=0.5))
    assert s.statuses == {"valid": ROWS}
    for nid, rec in records(workdir).items():
        assert rec["program"] == good[nid]
        prov = rec["provenance"]
        assert prov["model"] == "test-model" and prov["served_model"] == "/models/llama-3-70b"
        assert prov["usage"] == {"prompt_tokens": 1000, "completion_tokens": 200, "cached_tokens": 800}
    # (200 x 1 + 800 x 0.5 + 200 x 2) / 1e6 per reply
    assert s.cost == pytest.approx(ROWS * 1000 / 1e6)
    with ScriptedServer(script) as server:
        again = generate_programs(config(workdir, server, price_cached_in=0.5,
                                                   out=workdir / "again.jsonl"))
        assert len(server.requests) == 0 and again.statuses == {"valid": ROWS}  # the served name is not in the key: the cache answers


def test_choices_empty_is_a_failed_request_that_retry_errors_redoes(workdir, good):
    target = sorted(good)[0]

    def script(body, n):
        if narration_id_of(body) == target and n == 0:
            data = completion("x", body["model"])
            data["choices"] = []
            return Reply(raw=json.dumps(data))
        return good_reply(good, body)

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server))
        assert len(server.requests) == ROWS
    assert s.statuses == {"valid": 2, "failed": 1}
    assert records(workdir)[target]["errors"][-1]["message"] == "request failed: the endpoint's reply has no choices"
    with ScriptedServer(lambda body, n: good_reply(good, body)) as server:
        s = generate_programs(config(workdir, server, retry_failed=True))
        assert len(server.requests) == 1
    assert records(workdir)[target]["status"] == "valid"


def test_a_pasted_azure_deployment_endpoint_is_sent_once_to_its_path_with_its_api_version(workdir, good, caplog):
    with ScriptedServer(lambda body, n: good_reply(good, body)) as server:
        port = server.httpd.server_address[1]
        url = f"http://127.0.0.1:{port}/openai/deployments/gpt-4o/chat/completions/?api-version=2024-10-21"
        s = generate_programs(config(workdir, server, base_url=url, limit=1))
        assert s.statuses == {"valid": 1}
        assert server.paths == ["/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"]
        assert server.headers[0]["api-key"] == "sk-test-llmwild"
    assert "ends in /chat/completions" in caplog.text


def test_a_server_closing_keep_alive_connections_after_every_second_request_loses_none():
    """gunicorn/uvicorn --max-requests: the connection closes after a response that did not say so; a request
    already written to it is sent again on a fresh one, and the server reads each request once."""
    from leap_cli.programs.http import HTTPClient

    async def on_request(n, head, body, reader, writer):
        payload = json.dumps(completion("x")).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                     % len(payload) + payload)
        await writer.drain()
        if n % 2 == 0:
            await asyncio.sleep(0.05)  # (the client has written its next request by then)
            return True
        return False

    async def main():
        start, heads, _, conns, _ = serve_requests(on_request)
        server = await start
        client = HTTPClient(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", {}, max_connections=1,
                            timeout=5)
        statuses = [(await client.post("/chat/completions", b"{}")).status for _ in range(6)]
        await client.aclose()
        await asyncio.sleep(0.1)
        server.close()
        await server.wait_closed()
        return statuses, heads, conns, client

    statuses, heads, conns, client = asyncio.run(main())
    assert statuses == [200] * 6 and len(heads) == 6 and len(conns) == 3


def test_a_segment_behind_a_proxys_504_page_is_listed_in_the_summary_and_the_run_goes_on(workdir, good, monkeypatch,
                                                                                        capsys):
    from tests.procs import leap_main

    target = sorted(good)[0]
    page = "<html><head><title>504 Gateway Time-out</title></head><body><center>nginx</center></body></html>"

    def script(body, n):
        return Reply(status=504, raw=page) if narration_id_of(body) == target else good_reply(good, body)

    with ScriptedServer(script) as server:
        code, out, err = leap_main(monkeypatch, capsys, "generate-programs", "--workdir", str(workdir), "--split",
                                   "val", "--backend", "openai", "--model", "m", "--base-url", server.base_url,
                                   "--api-key-env", "LEAP_TEST_KEY", "--max-retries", "1", "--backoff", "0.01",
                                   "--concurrency", "1")
        assert len(server.requests) == ROWS + 1  # the 504 retried once, the others answered
    said = " ".join((out + err).split())
    assert code == 0, said
    assert f"{target}: request failed: HTTP 504 after 2 attempts: 504 Gateway Time-out" in said
    assert "1 of 3 records failed (by cause)" in said and "<html" not in said
