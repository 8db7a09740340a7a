"""LLM backends behind one small interface: messages + schema in, text + token usage out.

A backend declares its capabilities (``supports_schema``: Structured Outputs) and has one coroutine,
``complete(request) -> Completion``. Failures that survive the retries raise ``BackendError``.

- ``OpenAIBackend``: the chat-completions API of any OpenAI-compatible endpoint, through the lean HTTP/1.1
  client of ``leap_cli.programs.http`` (keep-alive, one connection per request in flight; the body is
  assembled from parts serialised once). Retries 408, 409, 429, 5xx, timeouts and connection errors with
  exponential backoff and jitter, honouring ``Retry-After`` (seconds or an HTTP date) and ``retry-after-ms``;
  a per-request timeout. With ``response_format="auto"`` it asks for Structured Outputs (strict JSON schema)
  and falls back to JSON mode for good if the endpoint answers 400 to that. The API key is read from the
  environment, registered with ``leap_cli.programs.redact`` and redacted from every text that leaves here.
- ``OfflineBackend``: no network; the deterministic generator of ``leap_cli.programs.offline``.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import re
import random
import time
from dataclasses import dataclass, field

from leap_cli.errors import LeapError
from leap_cli.programs.http import HTTPClient, HTTPConnectionError, HTTPTimeout, Response
from leap_cli.programs.prompt import ClipInfo
from leap_cli.programs.redact import redact, redact_logs, register_secret
from leap_cli.programs.reply import REFUSED, reasoning_only

log = logging.getLogger(__name__)
redact_logs(log)


@dataclass
class Request:
    narration_id: str
    messages: list[dict]
    schema: dict | None = None  # the strict schema, when the backend may use Structured Outputs
    info: ClipInfo | None = None  # what the offline generator works from
    messages_json: str | None = None  # ``messages`` already serialised (PromptBuilder does it once per part)


@dataclass
class Completion:
    text: str
    usage: dict = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0})
    attempts: int = 1
    seconds: float = 0.0
    model: str = ""
    cut: bool = False  # the reply stopped at the token limit (finish_reason "length")


class BackendError(Exception):
    """A request that failed for good (after retries). ``attempts`` counts the HTTP attempts made."""

    def __init__(self, message: str, attempts: int = 1, seconds: float = 0.0):
        super().__init__(message)
        self.attempts = attempts
        self.seconds = seconds


class Backend:
    name = "base"
    model = ""
    supports_schema = False

    def params(self) -> dict:
        """Generation parameters that change the reply (part of the cache key)."""
        return {}

    async def complete(self, request: Request) -> Completion:  # pragma: no cover - interface
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5
    base_delay: float = 1.0
    max_delay: float = 60.0
    jitter: float = 0.25  # +- fraction of the delay

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay)
        d = min(self.base_delay * (2 ** attempt), self.max_delay)
        return d * (1 + random.uniform(-self.jitter, self.jitter))


def parse_retry_after(headers) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date), else None."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class OpenAIBackend(Backend):
    name = "openai"

    def __init__(self, model: str, *, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 60.0, retry: RetryPolicy = RetryPolicy(), temperature: float = 0.0,
                 max_tokens: int = 2000, response_format: str = "auto", concurrency: int = 8,
                 extra_body: dict | None = None):
        key = os.environ.get(api_key_env)
        if not key:
            raise LeapError(f"no API key: the environment variable {api_key_env} is not set",
                            fix=f"export {api_key_env}=... or name another variable with --api-key-env "
                                "(or use --backend offline)")
        register_secret(key)
        if response_format not in ("auto", "json_schema", "json_object"):
            raise LeapError(f"unknown response format {response_format!r}", fix="use auto, json_schema or json_object")
        self.extra_body = check_extra_body(extra_body)
        self.model = model
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.retry = retry
        self.temperature = temperature
        self.max_tokens = max_tokens
        # what a model refuses is learnt from its first 400 and the request sent again (newer OpenAI models take
        # max_completion_tokens and only their default temperature); the cache keys keep the configured values
        self._token_param = "max_tokens"
        self._send_temperature = True
        self.response_format = "json_schema" if response_format == "auto" else response_format
        self._fallback_allowed = response_format == "auto"
        self.supports_schema = self.response_format == "json_schema"
        self._asked_format = self.response_format  # the cache key's, kept after a switch to JSON mode
        self._tails: dict[tuple, bytes] = {}
        headers = {"Authorization": f"Bearer {key}", "User-Agent": "leap"}
        # what the official client sends for organisation- or project-scoped keys
        for env, header in (("OPENAI_ORG_ID", "OpenAI-Organization"), ("OPENAI_PROJECT_ID", "OpenAI-Project")):
            if os.environ.get(env):
                headers[header] = os.environ[env]
        try:
            # one keep-alive connection per request in flight
            self._http = HTTPClient(self.base_url, headers, max_connections=concurrency, timeout=timeout)
        except ValueError as e:
            raise LeapError(f"bad --base-url: {e}", fix="e.g. --base-url http://localhost:8000/v1") from None

    def _adapt(self, param: str | None) -> bool:
        """Stop sending what the endpoint refused; whether the request should go again (also when another request
        in flight has already made the switch: this one was sent before it). Structured Outputs give way to JSON
        mode (``--response-format auto``), ``max_tokens`` to ``max_completion_tokens``, a temperature to none."""
        if param == "response_format" and self._fallback_allowed:
            if self.response_format == "json_schema":
                log.warning("endpoint refused Structured Outputs; using JSON mode from now on")
                self.response_format, self.supports_schema = "json_object", False
            return True
        if param == "max_tokens":
            if self._token_param == "max_tokens":
                log.warning("%s takes max_completion_tokens instead of max_tokens: sending that from now on", self.model)
                self._token_param = "max_completion_tokens"
                self._tails.clear()
            return True
        if param == "temperature":
            if self._send_temperature:
                log.warning("%s takes only its default temperature: --temperature %g is no longer sent (its programs "
                            "may differ from run to run)", self.model, self.temperature)
                self._send_temperature = False
                self._tails.clear()
            return True
        return False

    def params(self) -> dict:
        """The settings asked for (a cache key's): what the endpoint refused and the backend stopped sending does
        not change them, so that a run that starts again before it learns the refusal finds its replies."""
        out = {"temperature": self.temperature, "max_tokens": self.max_tokens, "response_format": self._asked_format}
        return {**out, "extra_body": self.extra_body} if self.extra_body else out

    def _tail(self, schema: dict | None) -> bytes:
        """Everything of the body but the messages, serialised once per (format, schema)."""
        use_schema = self.response_format == "json_schema" and schema is not None
        key = (use_schema, id(schema) if use_schema else None)
        if key not in self._tails:
            fmt = ({"type": "json_schema", "json_schema": {"name": "action_program", "strict": True, "schema": schema}}
                   if use_schema else {"type": "json_object"})
            rest = {"model": self.model, **({"temperature": self.temperature} if self._send_temperature else {}),
                    self._token_param: self.max_tokens, "response_format": fmt, **self.extra_body}
            self._tails[key] = ("," + json.dumps(rest, ensure_ascii=False, separators=(",", ":"))[1:]).encode()
        return self._tails[key]

    def _body(self, request: Request) -> bytes:
        messages = request.messages_json or json.dumps(request.messages, ensure_ascii=False)
        return b'{"messages":' + messages.encode() + self._tail(request.schema)

    async def complete(self, request: Request) -> Completion:
        start = time.perf_counter()
        attempts = 0
        adapted: set[str] = set()
        while True:
            attempts += 1
            try:
                resp = await self._http.post("/chat/completions", self._body(request))
            except (HTTPTimeout, HTTPConnectionError) as e:
                if attempts > self.retry.max_retries:
                    raise BackendError(redact(f"{type(e).__name__} after {attempts} attempts: {e}"), attempts,
                                       time.perf_counter() - start) from None
                wait = self.retry.delay(attempts - 1, None)
                log.info("%s: %s, retry %d in %.2fs", request.narration_id, type(e).__name__, attempts, wait)
                await asyncio.sleep(wait)
                continue
            status = resp.status
            if status == 200:
                break
            message = _error_message(resp)
            if status == 400:
                param = _refused_param(resp, message)
                if param not in adapted and self._adapt(param):
                    adapted.add(param)  # each at most once per request: a server that refuses it again fails it
                    continue
                raise BackendError(f"request refused (400): {message}", attempts, time.perf_counter() - start)
            if status in (401, 403):
                # every other request would fail the same way: stop the stage (finished records are kept)
                raise LeapError(f"the endpoint refused the API key (HTTP {status}): {message[:120]}",
                                fix=f"check the key in ${self.api_key_env} (or name another variable with --api-key-env)")
            if status == 404:
                raise LeapError(f"HTTP 404 from {self.base_url}: {message[:120]}",
                                fix="check --model and --base-url (it usually ends in /v1)")
            if status in (408, 409, 429) or status >= 500:
                if attempts > self.retry.max_retries:
                    raise BackendError(f"HTTP {status} after {attempts} attempts: {message}", attempts,
                                       time.perf_counter() - start)
                wait = self.retry.delay(attempts - 1, parse_retry_after(resp.headers))
                log.info("%s: HTTP %d, retry %d in %.2fs", request.narration_id, status, attempts, wait)
                await asyncio.sleep(wait)
                continue
            raise BackendError(f"HTTP {status}: {message}", attempts, time.perf_counter() - start)
        try:
            data = json.loads(resp.body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            data = None
        if not isinstance(data, dict):
            raise BackendError(redact(f"the endpoint did not answer with a JSON object: {resp.body[:120]!r}"), attempts,
                               time.perf_counter() - start)
        problem = reply_problem(data)
        if problem:  # no reply to check, cache or repair: a failed request, which --retry-errors redoes
            raise BackendError(redact(problem), attempts, time.perf_counter() - start)
        text = reply_text(data)
        return Completion(redact(text), reply_usage(data), attempts, time.perf_counter() - start,
                          str(data.get("model") or self.model), cut=reply_cut(data))

    async def aclose(self) -> None:
        await self._http.aclose()


def check_extra_body(extra: dict | None) -> dict:
    """``--extra-body``: request fields sent as given (a server's own, e.g. vLLM's ``chat_template_kwargs``, or
    ``reasoning_effort``); they may replace leap's but not the messages."""
    if extra is None:
        return {}
    if not isinstance(extra, dict):
        raise LeapError("--extra-body must be a JSON object", fix='e.g. --extra-body \'{"reasoning_effort": "low"}\'')
    if "messages" in extra:
        raise LeapError("--extra-body may not replace the messages", fix="leave messages out of it")
    return extra


def _count(value) -> int:
    """A token count as a server sent it: an int (or an int-valued float or string from a lax server), else 0."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    try:
        f = float(value)
    except (TypeError, ValueError):
        return 0
    return int(f) if f == f and 0 <= f < 1e15 else 0


def reply_usage(data: dict) -> dict:
    """``{"prompt_tokens", "completion_tokens"[, "cached_tokens"]}`` of a chat completion (``input_tokens`` and
    ``output_tokens``, the Responses API's names, where those are missing; counts a server left out or sent in
    another form are 0: the cost estimate and ``--max-cost`` must not stop on a server's quirk)."""
    u = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    usage = {"prompt_tokens": _count(u.get("prompt_tokens", u.get("input_tokens"))),
             "completion_tokens": _count(u.get("completion_tokens", u.get("output_tokens")))}
    details = u.get("prompt_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    if cached:
        usage["cached_tokens"] = cached
    return usage


def reply_cut(data: dict) -> bool:
    """Whether the first choice stopped at the token limit (``finish_reason`` "length")."""
    try:
        return data["choices"][0].get("finish_reason") == "length"
    except (KeyError, IndexError, TypeError, AttributeError):
        return False


def reply_problem(data: dict) -> str | None:
    """Why a 200 body is no chat completion (an ``error`` in it, as Ollama and some proxies send; no
    ``choices``; no ``message`` in the first), else None."""
    err = data.get("error")
    if err:
        message = err.get("message") or err if isinstance(err, dict) else err
        return "the endpoint answered 200 with an error: " + " ".join(str(message).split())[:300]
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        return "the endpoint's reply has no choices"
    if not isinstance(choices[0], dict) or not isinstance(choices[0].get("message"), dict):
        return "the endpoint's reply has no message in its first choice"
    return None


def reply_text(data: dict) -> str:
    """The text of a chat completion's first choice: its ``content`` (a string, a list of text parts as some
    OpenAI-compatible servers send, or an object, written back as JSON), else its ``refusal`` (Structured
    Outputs: the model declined), else, where the message's ``reasoning_content`` or ``reasoning`` holds text
    (a thinking model that never answered), ``reply.reasoning_only`` (what parse_reply names), else ""."""
    try:
        message = data["choices"][0]["message"]
        content = message.get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        return ""
    if isinstance(content, list):
        content = "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    elif isinstance(content, dict):
        content = json.dumps(content, ensure_ascii=False)
    if isinstance(content, str) and content.strip():
        return content
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        return REFUSED + refusal
    for name in ("reasoning_content", "reasoning"):
        if isinstance(message.get(name), str) and message[name].strip():
            return reasoning_only(name, len(message[name]))
    return ""


def _error_message(resp: Response, n: int = 200) -> str:
    """The ``error.message`` of an error response (else its text), one line, at most ``n`` characters, redacted."""
    text = resp.body.decode("utf-8", "replace")
    try:
        data = json.loads(text)
        err = data.get("error") if isinstance(data, dict) else None
        text = str(err.get("message") if isinstance(err, dict) else err or data)
    except (ValueError, RecursionError):
        pass
    return redact(" ".join(text.split()))[:n]


def _refused_param(resp: Response, message: str) -> str | None:
    """The request parameter a 400 names as not taken by this model: ``error.param`` (OpenAI's form), else
    ``'NAME'`` in an "Unsupported parameter/value" message, else response_format where the message names it;
    None for other 400s."""
    param = None
    try:
        err = json.loads(resp.body).get("error")
        param = err.get("param") if isinstance(err, dict) else None
    except (ValueError, AttributeError, RecursionError):
        pass
    if not isinstance(param, str):
        m = re.search(r"unsupported (?:parameter|value)s?:? '([a-z_]+)'", message, re.IGNORECASE)
        param = m.group(1) if m else ("response_format" if "response_format" in message.lower() else None)
    return param


class OfflineBackend(Backend):
    """Deterministic, no network: nearest exemplar by verb, objects by role from the narration, hand contacts
    and near-hand detections (``leap_cli.programs.offline``). ``model`` names the generator's version: it is
    part of the cache key, so programs cached by an earlier version are not reused."""

    name = "offline"
    model = "offline-v2"

    def __init__(self, exemplars, verbs, nouns):
        self.exemplars, self.verbs, self.nouns = exemplars, verbs, nouns

    async def complete(self, request: Request) -> Completion:
        from leap_cli.programs.offline import OfflineError, offline_program

        start = time.perf_counter()
        try:
            program = offline_program(request.info, self.exemplars, self.verbs, self.nouns)
        except OfflineError as e:
            raise BackendError(str(e), 1, time.perf_counter() - start) from None
        return Completion(json.dumps(program), attempts=1, seconds=time.perf_counter() - start, model=self.model)
