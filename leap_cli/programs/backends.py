"""LLM backends behind one small interface: messages + schema in, text + token usage out.

A backend declares its capabilities (``supports_schema``: Structured Outputs) and has one coroutine,
``complete(request) -> Completion``. Failures that survive the retries raise ``BackendError``.

- ``OpenAIBackend``: the official ``openai`` client (``AsyncOpenAI``) against any OpenAI-compatible endpoint.
  Retries 429, 5xx, timeouts and connection errors with exponential backoff and jitter, honouring
  ``Retry-After`` (seconds or an HTTP date) and ``retry-after-ms``; a per-request timeout. With
  ``response_format="auto"`` it asks for Structured Outputs (strict JSON schema) and falls back to JSON
  mode for good if the endpoint answers 400 to that. The API key is read from the environment and is never
  logged or written anywhere.
- ``OfflineBackend``: no network; the deterministic generator of ``leap_cli.programs.offline``.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field

from leap_cli.errors import LeapError
from leap_cli.programs.prompt import ClipInfo

log = logging.getLogger(__name__)


@dataclass
class Request:
    narration_id: str
    messages: list[dict]
    schema: dict | None = None  # the strict schema, when the backend may use Structured Outputs
    info: ClipInfo | None = None  # what the offline generator works from


@dataclass
class Completion:
    text: str
    usage: dict = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0})
    attempts: int = 1
    seconds: float = 0.0
    model: str = ""


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
                 max_tokens: int = 2000, response_format: str = "auto", concurrency: int = 8):
        from openai import AsyncOpenAI

        key = os.environ.get(api_key_env)
        if not key:
            raise LeapError(f"no API key: the environment variable {api_key_env} is not set",
                            fix=f"export {api_key_env}=... or name another variable with --api-key-env "
                                "(or use --backend offline)")
        if response_format not in ("auto", "json_schema", "json_object"):
            raise LeapError(f"unknown response format {response_format!r}", fix="use auto, json_schema or json_object")
        self.model = model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.retry = retry
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.response_format = "json_schema" if response_format == "auto" else response_format
        self._fallback_allowed = response_format == "auto"
        self.supports_schema = self.response_format == "json_schema"
        # the client's own pool allows far more connections than any sensible --concurrency
        self._client = AsyncOpenAI(api_key=key, base_url=base_url, timeout=timeout, max_retries=0)

    def params(self) -> dict:
        return {"temperature": self.temperature, "max_tokens": self.max_tokens, "response_format": self.response_format}

    def _body(self, request: Request) -> dict:
        body = {"model": self.model, "messages": request.messages, "temperature": self.temperature,
                "max_tokens": self.max_tokens}
        if self.response_format == "json_schema" and request.schema is not None:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "action_program", "strict": True, "schema": request.schema}}
        else:
            body["response_format"] = {"type": "json_object"}
        return body

    async def complete(self, request: Request) -> Completion:
        import openai

        start = time.perf_counter()
        attempts = 0
        while True:
            attempts += 1
            try:
                # client.post (the official client's call for raw endpoints) skips the per-request transform of
                # the typed create() over the whole schema, which costs ~10 ms of CPU per call
                resp = await self._client.post("/chat/completions", body=self._body(request), cast_to=object)
            except openai.BadRequestError as e:
                if self._fallback_allowed and self.response_format == "json_schema" and "response_format" in str(e).lower():
                    log.warning("endpoint refused Structured Outputs; using JSON mode from now on")
                    self.response_format, self.supports_schema = "json_object", False
                    continue
                raise BackendError(f"request refused (400): {_short(e)}", attempts, time.perf_counter() - start) from None
            except (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError,
                    openai.APIConnectionError) as e:
                status = getattr(e, "status_code", None)
                what = f"HTTP {status}" if status else type(e).__name__
                if attempts > self.retry.max_retries:
                    raise BackendError(f"{what} after {attempts} attempts: {_short(e)}", attempts,
                                       time.perf_counter() - start) from None
                response = getattr(e, "response", None)
                wait = self.retry.delay(attempts - 1, parse_retry_after(getattr(response, "headers", None)))
                log.info("%s: %s, retry %d in %.2fs", request.narration_id, what, attempts, wait)
                await asyncio.sleep(wait)
                continue
            except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
                # every other request would fail the same way: stop the stage (finished records are kept)
                raise LeapError(f"the endpoint refused the API key (HTTP {e.status_code}): {_short(e, 120)}",
                                fix=f"check the key in ${self.api_key_env} (or name another variable with --api-key-env)") from None
            except openai.NotFoundError as e:
                raise LeapError(f"HTTP 404 from {self.base_url or 'the OpenAI API'}: {_short(e, 120)}",
                                fix="check --model and --base-url (it usually ends in /v1)") from None
            except openai.APIStatusError as e:
                raise BackendError(f"HTTP {e.status_code}: {_short(e)}", attempts, time.perf_counter() - start) from None
            if not isinstance(resp, dict):
                raise BackendError(f"the endpoint did not answer with a JSON object: {str(resp)[:120]!r}", attempts,
                                   time.perf_counter() - start)
            try:
                text = resp["choices"][0]["message"].get("content") or ""
            except (KeyError, IndexError, TypeError, AttributeError):
                text = ""
            u = resp.get("usage") or {}
            usage = {"prompt_tokens": u.get("prompt_tokens") or 0, "completion_tokens": u.get("completion_tokens") or 0}
            return Completion(text, usage, attempts, time.perf_counter() - start, resp.get("model") or self.model)

    async def aclose(self) -> None:
        await self._client.close()


def _short(e: Exception, n: int = 200) -> str:
    return str(e).replace("\n", " ")[:n]


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
