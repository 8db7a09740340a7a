"""LLM backends behind one small interface: messages + schema in, text + token usage out.

A backend declares its capabilities (``supports_schema``: Structured Outputs) and has one coroutine,
``complete(request) -> Completion``. Failures that survive the retries raise ``BackendError``.

- ``OpenAIBackend``: the chat-completions API of any OpenAI-compatible endpoint, through the lean HTTP/1.1
  client of ``leap_cli.programs.http`` (keep-alive, one connection per request in flight; the body is
  assembled from parts serialised once). Retries 408, 409, 429, 5xx, timeouts and connection errors with
  exponential backoff and jitter, honouring ``Retry-After`` (seconds or an HTTP date), ``retry-after-ms`` and
  OpenAI's ``x-ratelimit-reset-*``; a 429 halves the requests in flight (they grow back by one per window of
  replies). A server that fails every request the same way before any succeeded stops the stage
  (``LeapError``), as a refused key does. One that stops answering later (``HOLD_AFTER`` requests in a row
  failed for good, none answered in between: it crashed, ran out of memory, the provider is down) is held:
  one request at a time probes it, its failures not counted against the retries, at growing intervals; the
  first reply brings the requests in flight back, and ``HOLD_FOR`` seconds without one stop the stage.
  With ``response_format="auto"`` it asks for Structured Outputs (strict JSON schema), falls back to JSON
  mode for good when the endpoint refuses that (a 400/422, or a 500 naming the schema), and to no
  ``response_format`` when JSON mode is refused too. The API key is read from the environment, registered with
  ``leap_cli.programs.redact`` and redacted from every text that leaves here.
- ``OfflineBackend``: no network; the deterministic generator of ``leap_cli.programs.offline``.
"""

from __future__ import annotations

import asyncio
import email.utils
import html
import itertools
import json
import logging
import os
import re
import random
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from leap_cli.common import counted
from leap_cli.errors import LeapError
from leap_cli.programs.http import HTTPClient, HTTPConnectionError, HTTPTimeout, HTTPUnreadable, Response
from leap_cli.programs.prompt import ClipInfo
from leap_cli.programs.redact import redact, redact_logs, register_secret
from leap_cli.programs.reply import FILTERED, REFUSED, reasoning_only

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


class Halted(Exception):
    """The stage is stopping (Ctrl-C, SIGTERM): no more attempts go out; the request is left pending."""


class BackendError(Exception):
    """A request that failed for good (after retries). ``attempts`` counts the HTTP attempts made; ``usage``: the
    tokens a failed 200 reports (a generation the server broke off is billed all the same), else empty."""

    def __init__(self, message: str, attempts: int = 1, seconds: float = 0.0, usage: dict | None = None):
        super().__init__(message)
        self.attempts = attempts
        self.seconds = seconds
        self.usage = usage or {}


class NoApiKey(LeapError):
    """The API key's environment variable is not set, or holds no usable key (``OpenAIBackend``; a run with nothing
    pending goes on without one)."""


def header_value(env: str) -> str | None:
    """The environment variable ``env`` as an HTTP header value: without the blanks around it (a .env file's
    trailing space or Windows line end, which servers drop from a header, so a quoted key was printed unredacted,
    or which broke the request, blamed on the server); a NoApiKey naming the variable for a character no header
    carries (a zero-width space pasted with the key from a web page; it was blamed on --base-url). None when unset."""
    value = os.environ.get(env)
    if value is None:
        return None
    value = value.strip()
    bad = next((i for i, c in enumerate(value) if ord(c) > 255 or ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise NoApiKey(f"the environment variable {env} holds a character an HTTP header cannot carry "
                       f"(U+{ord(value[bad]):04X}, character {bad + 1} of {len(value)})",
                       fix=f"set {env} again, typed or copied without it (a zero-width space or a line break "
                           "comes along when a key is copied from a web page or a file)")
    return value


class Backend:
    name = "base"
    model = ""
    supports_schema = False
    failed = "request failed"  # what a record's finding says before a BackendError's message

    def params(self) -> dict:
        """Generation parameters that change the reply (part of the cache key)."""
        return {}

    async def complete(self, request: Request) -> Completion:  # pragma: no cover - interface
        raise NotImplementedError

    def waiting(self) -> str | None:
        """What the stage is waiting for, while no reply can come (a held server), for the progress line; None
        while requests go their way."""
        return None

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


_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_go_duration(value: str) -> float | None:
    """Seconds of a Go duration string as OpenAI's ``x-ratelimit-reset-*`` headers send it (``1s``, ``6m0s``,
    ``20ms``, ``1h2m3.5s``), else None."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)", value.strip())
    if not parts or "".join(n + u for n, u in parts) != value.strip():
        return None
    return sum(float(n) * _GO_UNITS[u] for n, u in parts)


def _reset_after(headers) -> float | None:
    """OpenAI's ``x-ratelimit-reset-requests`` / ``-tokens``: the reset of the limit whose remaining count is 0
    (of both when neither says 0)."""
    resets = {}
    for kind in ("requests", "tokens"):
        value = headers.get(f"x-ratelimit-reset-{kind}")
        seconds = parse_go_duration(value) if value else None
        if seconds is not None:
            resets[kind] = seconds
    spent = [v for k, v in resets.items() if headers.get(f"x-ratelimit-remaining-{k}", "").strip() == "0"]
    return max(spent or resets.values(), default=None)


def parse_retry_after(headers) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date), else from OpenAI's
    ``x-ratelimit-reset-requests`` / ``x-ratelimit-reset-tokens``, else None."""
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
        return _reset_after(headers)
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
    FORMATS = ("json_schema", "json_object", "none")  # what ``auto`` steps down through, one refusal at a time
    STOP_AFTER = 2  # requests failed the same way, one of them for good, before any succeeded: the stage stops
    FREE_429 = 8  # most 429s a request may get for leap's own concurrency without using up its retries
    HOLD_AFTER = 2  # requests in a row failed for good after the server had answered: hold and probe it
    HOLD_FOR = 600.0  # seconds without a reply (since the last one) before a held stage stops

    def __init__(self, model: str, *, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 60.0, retry: RetryPolicy = RetryPolicy(), temperature: float = 0.0,
                 max_tokens: int = 2000, response_format: str = "auto", concurrency: int = 8,
                 extra_body: dict | None = None):
        key = header_value(api_key_env)
        if not key:
            raise NoApiKey(f"no API key: the environment variable {api_key_env} is "
                           + ("not set" if os.environ.get(api_key_env) is None else "empty"),
                           fix=f"export {api_key_env}=... or name another variable with --api-key-env "
                               "(or use --backend offline)")
        register_secret(key)
        if response_format not in ("auto", *self.FORMATS):
            raise LeapError(f"unknown response format {response_format!r}",
                            fix="use auto, json_schema, json_object or none")
        self.extra_body = check_extra_body(extra_body)
        self.model = model
        given = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        self.base_url = endpoint_base(url_secrets(given))
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
        self._given_url: str | None = None  # a --base-url without a path, once /v1 was added to it (a 404)
        self._given_said = ""  # what its 404 said
        # requests in flight: at most ``_limit``, halved by a 429 (once per window: a request sent before the
        # last cut does not cut again), one more after ``_limit`` replies in a row; ``_pause_until``: a wait the
        # server named (Retry-After, x-ratelimit-reset-*), kept by every request
        self.concurrency = max(1, concurrency)
        self._limit = self.concurrency
        self.lowest_limit = self.concurrency
        # the most requests in flight that got a whole window of replies (as many as in flight) without a 429,
        # and fewer than any 429 since found in flight: what the summary suggests for --concurrency (the lowest
        # cut overshoots: halving 3 gives 1 for a server that takes 2)
        self.steady_limit = 0
        self._active = 0
        self._epoch = 0
        self._ok_run = 0
        self._pause_until = 0.0
        self._waiters: list[asyncio.Future] = []
        self.rate_limited = 0  # 429s seen (the summary suggests a lower --concurrency)
        self.timed_out = 0  # requests abandoned at --timeout (a server may bill them)
        # a server that fails every request the same way (down, a proxy's 502, a web page at the URL): the cause
        # of the unbroken run of failures since the start, the requests it covers; None once one succeeded
        self._ids = itertools.count()
        self._streak: tuple[str, set[int]] | None = ("", set())
        # what stops the stage once no attempt is on the wire (the replies of those, paid, are kept): such a run
        # of failures (a reply before then lifts it), or an error no request can get past (a key refused, no
        # quota left); no attempt is sent meanwhile
        self._stop: LeapError | None = None
        self._stop_fatal = False
        # a server that stopped answering after it had (see ``_failed``): the time of the last reply, the
        # requests failed for good since; while held, the limit to go back to, since when, the probes failed
        self.answered = 0
        self._last_reply = 0.0
        self._lost = 0
        self._held: int | None = None
        self._held_since = 0.0
        self._probes = 0
        self._probed: dict[int, int] = {}  # while held: the probes each request made (at most --max-retries)
        self._turns: list[int] = []  # while held: the requests waiting to probe, in turn (one failing alone
        # on every probe, a prompt the server chokes on, must not be the only one asked)
        self._halted = False  # the stage stops: no more attempts (``halt``)
        self._sent = 0  # HTTP attempts sent (``sent``)
        self._halt_event = asyncio.Event()
        self._peak = 0  # the most requests on the wire in the window of replies going on (``steady_limit``)
        self.held_seconds = 0.0  # time spent held (the summary says so)
        self.holds = 0  # times held
        headers = {"Authorization": f"Bearer {key}", "User-Agent": "leap"}
        azure = _azure(self.base_url)
        if azure:  # Azure OpenAI takes its keys in api-key (a Bearer header is read as an Entra ID token there)
            headers["api-key"] = key
            if azure == "host":
                del headers["Authorization"]
        # what the official client sends for organisation- or project-scoped keys
        for env, header in (("OPENAI_ORG_ID", "OpenAI-Organization"), ("OPENAI_PROJECT_ID", "OpenAI-Project")):
            if value := header_value(env):
                headers[header] = value
        try:
            # one keep-alive connection per request in flight
            self._http = HTTPClient(self.base_url, headers, max_connections=concurrency, timeout=timeout)
        except ValueError as e:
            raise LeapError(f"bad --base-url: {e}", fix="e.g. --base-url http://localhost:8000/v1") from None

    @property
    def sent(self) -> int:
        """HTTP requests sent, all of them: also those of requests that stopped the stage (a refused key's) and the
        client's own resends on a keep-alive connection the server had closed."""
        return self._sent + self._http.resent

    def _adapt(self, param: str | None) -> bool:
        """Stop sending what the endpoint refused; whether the request should go again (also when another request
        in flight has already made the switch: this one was sent before it): ``max_tokens`` gives way to
        ``max_completion_tokens``, a temperature to none."""
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

    def _step_down(self, sent: str, status: int, message: str) -> bool:
        """The endpoint refused the ``response_format`` a request was sent with: whether to send it again
        (``auto``: JSON mode after Structured Outputs, then none; or another request already stepped down).
        A format chosen by hand that is refused stops the stage: every request would be refused alike."""
        if self.response_format != sent:
            return True
        if not self._fallback_allowed:
            other = "json_object (or auto)" if sent == "json_schema" else "none (the prompt asks for JSON)"
            raise LeapError(f"the endpoint refused --response-format {sent} (HTTP {status}: {message[:150]})",
                            fix=f"rerun with --response-format {other}")
        nxt = self.FORMATS[self.FORMATS.index(sent) + 1]
        log.warning("endpoint refused %s (HTTP %d: %s); %s from now on", "Structured Outputs" if sent == "json_schema"
                    else "JSON mode", status, message[:120],
                    "JSON mode" if nxt == "json_object" else "no response_format (the prompt asks for JSON)")
        self.response_format, self.supports_schema = nxt, False
        self._tails.clear()
        return True

    def params(self) -> dict:
        """The settings asked for (a cache key's): what the endpoint refused and the backend stopped sending does
        not change them, so that a run that starts again before it learns the refusal finds its replies."""
        return openai_params(self.temperature, self.max_tokens, self._asked_format, self.extra_body)

    def _format(self, schema: dict | None) -> str:
        """The ``response_format`` type a request is sent with now."""
        return "json_object" if self.response_format == "json_schema" and schema is None else self.response_format

    def _tail(self, schema: dict | None) -> bytes:
        """Everything of the body but the messages, serialised once per (format, schema)."""
        fmt_type = self._format(schema)
        key = (fmt_type, id(schema) if fmt_type == "json_schema" else None)
        if key not in self._tails:
            fmt = ({"type": "json_schema", "json_schema": {"name": "action_program", "strict": True, "schema": schema}}
                   if fmt_type == "json_schema" else {"type": fmt_type})
            rest = {"model": self.model, **({"temperature": self.temperature} if self._send_temperature else {}),
                    self._token_param: self.max_tokens, **({"response_format": fmt} if fmt_type != "none" else {}),
                    **self.extra_body}
            self._tails[key] = ("," + json.dumps(rest, ensure_ascii=False, separators=(",", ":"))[1:]).encode()
        return self._tails[key]

    def _body(self, request: Request) -> bytes:
        messages = request.messages_json or json.dumps(request.messages, ensure_ascii=False)
        return b'{"messages":' + messages.encode() + self._tail(request.schema)

    # ---- requests in flight ----
    @property
    def sending(self) -> int:
        """Attempts on the wire now (sent, reply not read): what a stop waits for; the requests waiting for a
        slot, a retry or a held server's turn were not sent."""
        return self._active

    def continued(self) -> None:
        """The process was stopped and goes on (SIGCONT): the time it could not read does not count against the
        requests in flight (``HTTPClient.restart_clocks``)."""
        self._http.restart_clocks()

    def halt(self) -> None:
        """Send no more attempts (the stage stops): the requests waiting for a slot, a retry or a held server's
        turn raise ``Halted`` at once (their sleeps end), so that a stop waits only for the requests on the wire."""
        self._halted = True
        self._halt_event.set()
        self._wake()

    async def _sleep(self, seconds: float) -> None:
        """``asyncio.sleep`` that ``halt`` ends early (raising ``Halted``)."""
        try:
            await asyncio.wait_for(self._halt_event.wait(), seconds)
        except asyncio.TimeoutError:
            return
        raise Halted

    async def _acquire(self, rid: int) -> None:
        loop = asyncio.get_running_loop()
        queued = False
        try:
            while True:
                if self._halted:
                    raise Halted
                if self._stop is not None:  # nothing more is sent; the stop comes once the wire is empty
                    await self._stopped()
                    continue  # (a reply lifted it)
                if self._held is not None and not queued:
                    self._turns.append(rid)
                    queued = True
                wait = self._pause_until - loop.time()
                if wait > 0:
                    await self._sleep(wait)
                elif self._active < self._limit and (self._held is None or not self._turns or self._turns[0] == rid):
                    self._active += 1
                    self._peak = max(self._peak, self._active)
                    return
                else:
                    await self._woken()
        finally:
            if queued:
                self._turns.remove(rid)  # its turn came (or it was cancelled): the next one's now
                self._wake()

    def _release(self) -> None:
        self._active -= 1
        self._wake()

    async def _woken(self) -> None:
        """Wait for the next ``_wake`` (a slot freed, a reply, a hold lifted)."""
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)

    async def _stopped(self) -> None:
        """Wait while attempts are on the wire (their replies are kept), then raise the stop (``_stop``), unless
        a reply lifted it meanwhile (a run of failures that was not the server's)."""
        while self._stop is not None and self._active > 0:
            await self._woken()
        if self._stop is not None:
            e = self._stop
            raise LeapError(e.message, path=e.path, record=e.record, fix=e.fix)

    async def _fatal(self, error: LeapError) -> None:
        """An error every request would meet (a key refused, no quota left, a redirect): send nothing more; the
        requests waiting for a slot or a retry end pending; raise it once the attempts on the wire are answered
        (it cancelled them: their replies, paid, were lost and asked for again on resume)."""
        if not self._stop_fatal:
            self._stop, self._stop_fatal = error, True
        self.halt()
        await self._stopped()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _rate_limited(self, epoch: int, server_wait: float | None) -> bool:
        """A 429 (not a quota): halve the requests in flight once per window, keep the wait the server named for
        every request. Whether this 429 came of leap's own concurrency (it cut, or was sent before a cut)."""
        self.rate_limited += 1
        if server_wait is not None:
            loop = asyncio.get_running_loop()
            self._pause_until = max(self._pause_until, loop.time() + min(server_wait, self.retry.max_delay))
        if epoch == self._epoch and self._limit > 1:
            self._limit = max(1, min(self._limit, self._active + 1) // 2)
            self._epoch += 1
            self._ok_run = 0
            # a 429 with this many others in flight: more than that was refused, as many may still go through
            # (2 went a window without one; 3 got a 429, then the run ended at 1 in flight: 2 is still what went)
            self.steady_limit = min(self.steady_limit, self._active)
            self._peak = self._active
            if self._limit < self.lowest_limit:
                self.lowest_limit = self._limit
                log.warning("the server refused requests with 429: at most %d in flight now (lower --concurrency)",
                            self._limit)
        return epoch != self._epoch

    def _answered(self) -> None:
        self._streak = None  # the server works: failures from now on are the records'
        if self._stop is not None and not self._stop_fatal:
            self._stop = None  # (the requests waiting to be sent go on)
            self._wake()
        self.answered += 1
        now = asyncio.get_running_loop().time()
        if self._held is not None:
            self.held_seconds += now - self._held_since
            log.log(logging.WARNING if self.holds <= 3 else logging.INFO,
                    "the server answers again after %.0f s without a reply (held %.0f s): back to %s in flight",
                    now - self._last_reply, now - self._held_since, counted(self._held, "request"))
            self._limit, self._held, self._probes, self._pause_until = self._held, None, 0, 0.0
            self._wake()
        self._last_reply, self._lost = now, 0
        self._ok_run += 1
        if self._ok_run >= self._limit:  # a window of replies without a 429: as many in flight went through
            self.steady_limit = max(self.steady_limit, min(self._peak, self._limit))
            self._peak = self._active
        if self._limit < self.concurrency and self._ok_run >= self._limit:
            self._limit += 1
            self._ok_run = 0

    def waiting(self) -> str | None:
        if self._held is None:
            return None
        from leap_cli.progress import clock

        quiet = asyncio.get_running_loop().time() - self._last_reply
        return (f"server not answering for {clock(quiet)}, asking one request at a time; the stage stops at "
                f"{clock(self.HOLD_FOR)}")

    # what a failed attempt means for its request (``_failed``)
    COUNTS, PROBE, GIVE_UP, STOP = "counts", "probe", "give up", "stop"

    def _failed(self, rid: int, cause: str, final: bool, line: str, fix: str, sent_held: bool = False) -> str:
        """A failed attempt: ``COUNTS`` against the request's retries (as always), ``PROBE`` (a held server's
        probe: not counted, try again after ``_pause_until``) or ``GIVE_UP`` (fail the request now).

        Before any reply: count it towards the run of same-cause failures since the start; when a request fails
        for good and ``STOP_AFTER`` requests failed this way, ``STOP``: nothing more is sent, and the stage stops
        once the attempts on the wire are answered (one may yet be answered: a slow model's replies outlast the
        retries of a request the server refuses, and stopping at once would lose them, paid); a reply meanwhile
        lifts the stop. (It waited for every request still out to fail this way: with failures that come at once,
        new requests kept going out, and a whole split was written failed.)

        After replies: ``HOLD_AFTER`` requests in a row failed for good hold the server: one request in flight,
        the waiting ones in turn, each failure a probe that waits longer for the next, up to the retry policy's
        longest wait. A request gets --max-retries probes; then it fails (a prompt the server chokes on must not
        pass for a server that is down) and the next one probes from the shortest wait again. ``sent_held``: the
        attempt was sent while held (attempts sent before, failing together, count as one probe). A held server
        that has not answered for ``HOLD_FOR`` seconds stops the stage. A request failing alone among replies
        still fails its record."""
        if self._streak is not None:
            if self._streak[0] != cause:
                self._streak = (cause, set())
            self._streak[1].add(rid)
            if final and len(self._streak[1]) >= self.STOP_AFTER:
                if self._stop is None:
                    self._stop = LeapError(line, fix=fix)
                return self.STOP
            return self.COUNTS
        now = asyncio.get_running_loop().time()
        if self._held is None:
            self._lost += final
            if self._lost < self.HOLD_AFTER:
                return self.COUNTS
            self._held, self._held_since, self._limit = self._limit, now, 1
            self.holds += 1  # (a flapping server holds often: the first few are said, the rest logged quietly)
            log.log(logging.WARNING if self.holds <= 3 else logging.INFO,
                    "%s in a row failed for good (%s) after %s: holding the others and asking one at a time until "
                    "the server answers (the stage stops after %.0f min without a reply)", counted(self._lost, "request"),
                    cause, counted(self.answered, "reply", "replies"), self.HOLD_FOR / 60)
            return self.COUNTS  # this one was given up already
        if now - self._last_reply >= self.HOLD_FOR:
            raise LeapError(f"the server stopped answering: no reply for {(now - self._last_reply) / 60:.0f} min "
                            f"after {counted(self.answered, 'reply', 'replies')} (last: {cause}; {self.base_url})",
                            fix="check the server (its log, memory, --base-url), then run the same command again "
                                "with --retry-errors: the programs written are kept, the rest and the records "
                                "written failed are asked for")
        if sent_held or self._probes == 0:
            self._pause_until = max(self._pause_until, now + self.retry.delay(self._probes, None))
            self._probes += 1
        self._probed[rid] = self._probed.get(rid, 0) + 1
        if self._probed[rid] <= self.retry.max_retries:
            return self.PROBE
        self._probes = 0  # it failed every probe it had: the next one probes from the shortest wait
        return self.GIVE_UP

    async def complete(self, request: Request) -> Completion:
        rid = next(self._ids)
        try:
            return await self._complete(request, rid)
        finally:
            self._probed.pop(rid, None)

    async def _complete(self, request: Request, rid: int) -> Completion:
        start = time.perf_counter()
        attempts = free = 0  # free: 429s of leap's own concurrency, not counted against --max-retries
        adapted: set[str] = set()
        while True:
            attempts += 1
            final = attempts - free > self.retry.max_retries
            await self._acquire(rid)
            epoch, sent, prefix = self._epoch, self._format(request.schema), self._http.prefix
            sent_held = self._held is not None
            error: HTTPTimeout | HTTPConnectionError | None = None
            self._sent += 1
            try:
                resp = await self._http.post("/chat/completions", self._body(request))
            except (HTTPTimeout, HTTPConnectionError) as e:
                error = e
            finally:
                self._release()
            if error is not None:
                e = error
                timeout = isinstance(e, HTTPTimeout)
                self.timed_out += timeout
                what = "timed out" if timeout else "unreadable reply" if isinstance(e, HTTPUnreadable) else \
                    "connection failed"
                resend = not isinstance(e, HTTPUnreadable)  # (unreadable: the server answered, and may bill it)
                final = final or not resend
                line, fix = ((f"{e} on every request so far", "raise --timeout (a local model may need minutes for "
                              "a reply), or check that the server is generating") if timeout else
                             (f"{e}: is the server running?", "check --base-url") if str(e).startswith("cannot connect")
                             else (f"{e} on every request so far", "check the server's log and --base-url"))
                verdict = self._failed(rid, f"{what}: {e}", final, redact(line), fix, sent_held)
                if verdict == self.PROBE and resend:
                    free += 1  # a probe of a held server: the next waits (_pause_until)
                    continue
                if verdict == self.STOP:
                    await self._stopped()  # (returns where a reply came meanwhile: this request failed for good)
                final = final or verdict == self.GIVE_UP
                if final:
                    tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
                    raise BackendError(redact(f"{what} after {tries}: {e}"), attempts,
                                       time.perf_counter() - start) from None
                wait = self.retry.delay(max(0, attempts - free - 1), None)
                log.info("%s: %s, retry %d in %.2fs", request.narration_id, what, attempts, wait)
                await self._sleep(wait)
                continue
            status = resp.status
            if status == 200:
                data = _json_object(resp.body)
                problem = None if data is None else reply_problem(data)
                if problem and sent != "none" and _refuses_format(400, _refused_param(resp, problem), problem):
                    self._step_down(sent, status, problem)  # (an error in a 200, as some servers send: as a 400's)
                    continue
                break
            message = _error_message(resp)
            param = _refused_param(resp, message) if status == 400 else None
            if param in ("max_tokens", "temperature") and _not_taken(resp, message):
                if param not in adapted and self._adapt(param):
                    adapted.add(param)  # each at most once per request: a server that refuses it again fails it
                    continue
            elif sent != "none" and _refuses_format(status, param, message):
                self._step_down(sent, status, message)  # (stops the stage if it cannot step down)
                continue
            if status in (400, 422):
                if self._streak is not None and self._failed(  # (before any reply: the same refusal of every request)
                        rid, f"HTTP {status}: {message}", True, f"every request so far was refused (HTTP {status}): "
                        f"{message[:200]}", "check what the server accepts (--model, --max-tokens, --extra-body, "
                        "--response-format; its log says more)", sent_held) == self.STOP:
                    await self._stopped()
                raise BackendError(f"request refused ({status}): {message}", attempts, time.perf_counter() - start)
            if status == 429 and _error_code(resp) == "insufficient_quota":
                await self._fatal(LeapError(f"the account has no quota left (HTTP 429: {message[:200]})",
                                            fix=f"check the plan and billing of the account of the key in "
                                                f"${self.api_key_env}"))
            if 300 <= status < 400:  # (http:// to an https:// site, a path the server moved)
                where = redact(resp.headers.get("location"))
                await self._fatal(LeapError(f"the endpoint answered HTTP {status}, a redirect"
                                            + (f" to {where}" if where else ""),
                                            fix="give --base-url as the address it redirects to (often https:// "
                                                "for http://, or another path)"))
            if status in (401, 403):
                # every other request would fail the same way: stop the stage (finished records are kept)
                if _error_code(resp) == "model_not_found" or re.search(r"\bmodel\b", message, re.IGNORECASE):
                    await self._fatal(LeapError(f"the endpoint refused access to the model (HTTP {status}): "
                                                f"{message[:200]}", fix=f"check --model {self.model} and that the "
                                                                        "key's project may use that model"))
                await self._fatal(LeapError(f"the endpoint refused the API key (HTTP {status}): {message[:200]}",
                                            fix=f"check the key in ${self.api_key_env} (or name another variable with "
                                                "--api-key-env)"))
            if status == 404:
                if prefix != self._http.prefix:
                    continue  # sent before another request moved the base URL to /v1
                base = urlsplit(self.base_url)
                if self._given_url is None and not self.answered and base.path.strip("/") == "":
                    # a --base-url without its /v1 (http://localhost:8000): OpenAI-compatible servers serve there
                    self._given_url, self._given_said = self.base_url, message
                    self.base_url = urlunsplit(base._replace(path="/v1"))
                    self._http.prefix = "/v1"
                    log.warning("HTTP 404 at %s: trying %s (OpenAI-compatible servers serve under /v1: give "
                                "--base-url with it)", urlunsplit(base._replace(path="/chat/completions")),
                                self.base_url)
                    continue
                said = (f"{self._given_url}: {self._given_said[:120]}; and from {self.base_url}: {message[:120]}"
                        if self._given_url else f"{self.base_url}: {message[:120]}")
                await self._fatal(LeapError(f"HTTP 404 from {said}",
                                            fix="check --model and --base-url (it usually ends in /v1, e.g. "
                                                "http://localhost:8000/v1)"))
            if status in (408, 409, 429) or status >= 500:
                server_wait = parse_retry_after(resp.headers)
                if status == 429:
                    server_wait = server_wait if server_wait is not None else _wait_in_message(message)
                    if self._rate_limited(epoch, server_wait) and free < self.FREE_429:
                        free += 1
                        final, verdict = False, None
                    else:  # a server answering only 429s after replies is held too
                        verdict = self._failed(rid, "HTTP 429", final, "every request so far was refused with HTTP "
                                               f"429 (rate limit): {message[:120]}", "lower --concurrency, or check "
                                               "the account's rate limits (a proxy's 429 may mean its backends are "
                                               "down)", sent_held)
                else:
                    loading = status == 503 and "loading" in message.lower()
                    verdict = self._failed(
                        rid, f"HTTP {status}", final,
                        f"the server is still loading the model (HTTP 503: {message[:100]})" if loading else
                        f"every request so far failed with HTTP {status}: {message[:120]}",
                        "wait until it is ready (llama.cpp: its /health says ok), then run again" if loading
                        else "check the server (and any proxy in front of it) and --base-url", sent_held)
                if verdict == self.PROBE:
                    free += 1
                    continue
                if verdict == self.STOP:
                    await self._stopped()
                final = final or verdict == self.GIVE_UP
                if final:
                    tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
                    raise BackendError(f"HTTP {status} after {tries}: {message}", attempts,
                                       time.perf_counter() - start)
                wait = self.retry.delay(max(0, attempts - free - 1), server_wait)
                log.info("%s: HTTP %d, retry %d in %.2fs", request.narration_id, status, attempts, wait)
                await self._sleep(wait)
                continue
            raise BackendError(f"HTTP {status}: {message}", attempts, time.perf_counter() - start)
        if data is None:
            shown = _error_message(resp, 120)
            streamed = "text/event-stream" in resp.headers.get("content-type", "")
            if self._failed(rid, "not JSON", True, "the endpoint streamed its reply (text/event-stream), leap reads "
                            "whole replies" if streamed else f"the endpoint answered with no JSON ({shown!r})",
                            "check what in front of the server streams (a proxy, its settings)" if streamed else
                            "check --base-url: it must be the API's address, usually ending in /v1, not a web page",
                            sent_held) == self.STOP:
                await self._stopped()
            raise BackendError(f"the endpoint did not answer with a JSON object: "
                               f"{redact(resp.body.decode('utf-8', 'replace'))[:120]!r}", attempts,
                               time.perf_counter() - start)
        if problem:  # no reply to check, cache or repair: a failed request, which --retry-errors redoes
            if self._failed(rid, "an error in a 200 reply", True, redact(f"every request so far was answered with "
                                                                         f"an error: {problem[:160]}"),
                            "check the server's log (e.g. a model that does not fit in memory) and --model",
                            sent_held) == self.STOP:
                await self._stopped()
            raise BackendError(redact(problem), attempts, time.perf_counter() - start, reply_usage(data))
        self._answered()
        text = reply_text(data)
        return Completion(redact(text), reply_usage(data), attempts, time.perf_counter() - start,
                          str(data.get("model") or self.model), cut=reply_cut(data))

    async def aclose(self) -> None:
        await self._http.aclose()


def openai_params(temperature: float, max_tokens: int, response_format: str, extra_body: dict | None) -> dict:
    """The generation parameters of an openai request as its cache key holds them (``OpenAIBackend.params``, and
    the Batch requests' in ``batch.ingest_batch``): the settings asked for, ``auto`` as the json_schema it asks
    first."""
    out = {"temperature": temperature, "max_tokens": max_tokens,
           "response_format": "json_schema" if response_format == "auto" else response_format}
    return {**out, "extra_body": extra_body} if extra_body else out


def check_extra_body(extra: dict | None) -> dict:
    """``--extra-body``: request fields sent as given (a server's own, e.g. vLLM's ``chat_template_kwargs``, or
    ``reasoning_effort``); they may replace leap's but not the messages."""
    if extra is None:
        return {}
    if not isinstance(extra, dict):
        raise LeapError("--extra-body must be a JSON object", fix='e.g. --extra-body \'{"reasoning_effort": "low"}\'')
    if "messages" in extra:
        raise LeapError("--extra-body may not replace the messages", fix="leave messages out of it")
    if extra.get("stream"):
        raise LeapError("--extra-body asks for a streamed reply; leap reads whole replies", fix="leave stream out of it")
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
    total = _count(u.get("total_tokens"))
    if total and bool(usage["prompt_tokens"]) != bool(usage["completion_tokens"]):  # one of the two left out
        missing = "completion_tokens" if usage["prompt_tokens"] else "prompt_tokens"
        usage[missing] = max(0, total - usage["prompt_tokens"] - usage["completion_tokens"])
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


# finish_reason of a generation the server broke off (OpenRouter's "error", DeepSeek's "insufficient_system_resource",
# vLLM's "abort"): whatever content came is not the model's whole reply
FAILED_FINISH = ("error", "insufficient_system_resource", "abort")


def _json_object(body: bytes) -> dict | None:
    """A reply body as the JSON object it should be, else None."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def reply_problem(data: dict) -> str | None:
    """Why a 200 body is no chat completion (an ``error`` in it, as Ollama and some proxies send; no
    ``choices``; no ``message`` in the first; an ``error`` in the first choice, as OpenRouter sends when the
    provider behind it fails, or a ``finish_reason`` of a generation the server broke off), else None."""
    if data.get("error"):
        return "the endpoint answered 200 with an error: " + redact(" ".join(_said(data).split()))[:300]
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        return "the endpoint's reply has no choices"
    first = choices[0]
    if not isinstance(first, dict) or not isinstance(first.get("message"), dict):
        return "the endpoint's reply has no message in its first choice"
    if first.get("error"):
        return ("the endpoint answered 200 with an error in its reply: "
                + redact(" ".join(_said({"error": first["error"]}).split()))[:300])
    if first.get("finish_reason") in FAILED_FINISH:
        return f"the server broke the reply off (finish_reason {first['finish_reason']!r})"
    return None


def reply_text(data: dict) -> str:
    """The text of a chat completion's first choice: its ``content`` (a string, a list of text parts as some
    OpenAI-compatible servers send, or an object, written back as JSON), else its ``refusal`` (Structured
    Outputs: the model declined), else, where the message's ``reasoning_content`` or ``reasoning`` holds text
    (a thinking model that never answered), ``reply.reasoning_only`` (what parse_reply names), else
    ``reply.FILTERED`` where the content filter stopped it, else ""."""
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
    if data["choices"][0].get("finish_reason") == "content_filter":
        return FILTERED
    return ""


def _azure(url: str) -> str | None:
    """Whether ``url`` is an Azure OpenAI endpoint: "host" (an Azure host), "query" (the ``api-version`` its
    deployments take, elsewhere: a gateway in front of one, which gets both headers), else None."""
    u = urlsplit(url)
    if (u.hostname or "").endswith((".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com")):
        return "host"
    return "query" if "api-version=" in u.query else None


# a query parameter of --base-url whose value is a credential (a gateway's ?key=, ?api-key=, ?access_token=, a
# signed URL's sig=); others, such as Azure's api-version, stay readable in the messages that quote the URL
_CREDENTIAL_PARAM = re.compile(r"key|token|secret|sig|auth|pass|code", re.IGNORECASE)


def url_secrets(url: str) -> str:
    """``url``, the values of its query's credential parameters registered as secrets (a proxy's or Google's
    ``?key=TOKEN``: redacted wherever the URL is said); a user name or password in it is refused: leap sends the API
    key as its only credential."""
    u = urlsplit(url.strip())
    for name, value in parse_qsl(u.query, keep_blank_values=True):
        if _CREDENTIAL_PARAM.search(name):
            register_secret(value)
    if u.username is not None or u.password is not None:
        register_secret(u.password)
        shown = urlunsplit(u._replace(netloc=u.netloc.rpartition("@")[2]))
        raise LeapError(f"--base-url holds a user name or password ({redact(shown)} with credentials before its host): "
                        "leap does not send them", fix="give --base-url without them; leap sends the API key of "
                        "--api-key-env as its credential (a proxy that wants a password: put it in front of leap's "
                        "requests, e.g. as HTTPS_PROXY)")
    return url


def endpoint_base(url: str) -> str:
    """``--base-url`` as the client takes it: a trailing ``/chat/completions`` (the whole endpoint pasted from a
    server's docs) is dropped with a warning, since leap adds it; a query string is kept."""
    u = urlsplit(url.strip())
    path = u.path.rstrip("/")
    if path.endswith("/chat/completions"):
        fixed = urlunsplit((u.scheme, u.netloc, path[: -len("/chat/completions")], u.query, ""))
        log.warning("--base-url %s ends in /chat/completions, which leap adds itself: using %s", url.strip(), fixed)
        return fixed
    return url.strip()


def _detail(detail) -> str:
    """FastAPI's ``detail``: a string, or pydantic's list of ``{"loc", "msg"}``."""
    if isinstance(detail, list):
        return "; ".join(f"{'.'.join(map(str, d.get('loc') or []))}: {d.get('msg')}" if isinstance(d, dict) else str(d)
                         for d in detail)
    return str(detail)


def _error_message(resp: Response, n: int = 300) -> str:
    """What an error response says, one line, at most ``n`` characters, redacted: ``error.message`` (OpenAI),
    ``error`` as a string (LM Studio, Ollama), a top-level ``message`` (vLLM's older form), FastAPI's ``detail``,
    an HTML page's ``<title>``, else the text."""
    text = resp.body.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        data = None
        title = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
        if title or re.match(r"\s*<(!doctype|html)", text, re.IGNORECASE):
            text = html.unescape(title.group(1) if title else re.sub(r"<[^>]*>", " ", text))
    if isinstance(data, dict):
        text = _said(data)
    return redact(" ".join(text.split()))[:n]


def _said(data: dict) -> str:
    """What a JSON error body says: ``error.message``, ``error`` as a string, a top-level ``message``, FastAPI's
    ``detail``, else the body itself."""
    err = data.get("error")
    if isinstance(err, dict) and err.get("message"):
        return str(err["message"])
    if isinstance(err, str) and err:
        return err
    if isinstance(data.get("message"), str) and data["message"]:
        return data["message"]
    if data.get("detail"):
        return _detail(data["detail"])
    return json.dumps(data, ensure_ascii=False)


def _not_taken(resp: Response, message: str) -> bool:
    """Whether a 400 naming a parameter says the model does not take it at all (``unsupported_parameter``: "Use
    'max_completion_tokens' instead"; ``unsupported_value``: "Only the default (1) value is supported"), not that
    its value is too large (``invalid_value``: "max_tokens is too large: 20000")."""
    if _error_code(resp) in ("unsupported_parameter", "unsupported_value"):
        return True
    return bool(re.search(r"unsupported|not supported|max_completion_tokens|only the default", message, re.IGNORECASE))


def _error_code(resp: Response) -> str | None:
    """``error.code`` (else ``error.type``) of an error response, or the top-level ones."""
    try:
        data = json.loads(resp.body)
    except (ValueError, RecursionError):
        return None
    for d in (data.get("error"), data) if isinstance(data, dict) else ():
        if isinstance(d, dict):
            for k in ("code", "type"):
                if isinstance(d.get(k), str) and d[k]:
                    return d[k]
    return None


_FORMAT_WORDS = re.compile(r"response_format|json_schema|schema|grammar", re.IGNORECASE)


def _refuses_format(status: int, param: str | None, message: str) -> bool:
    """Whether an error refuses the request's ``response_format``: a 400/422 that names it (``error.param``) or
    the schema or grammar it becomes (vLLM, xgrammar, llama.cpp, LM Studio, FastAPI validation), or a 500 that
    does (llama-cpp-python). A deterministic refusal: never retried."""
    if status in (400, 422):
        return param == "response_format" or bool(_FORMAT_WORDS.search(message))
    return status >= 500 and bool(_FORMAT_WORDS.search(message))


def _wait_in_message(message: str) -> float | None:
    """A wait named in a 429's text ("Please try again in 20s", "... in 250ms")."""
    m = re.search(r"try again in (\d+(?:\.\d+)?)\s*(ms|s)\b", message, re.IGNORECASE)
    return None if m is None else float(m.group(1)) / (1000 if m.group(2).lower() == "ms" else 1)


def _refused_param(resp: Response, message: str) -> str | None:
    """The request parameter a 400 names as not taken by this model: ``error.param`` (OpenAI's form), else
    ``'NAME'`` in an "Unsupported parameter/value" message; None for other 400s (``_refuses_format`` reads the
    refusals of a response_format that name no parameter)."""
    param = None
    try:
        err = json.loads(resp.body).get("error")
        param = err.get("param") if isinstance(err, dict) else None
    except (ValueError, AttributeError, RecursionError):
        pass
    if not isinstance(param, str):
        m = re.search(r"unsupported (?:parameter|value)s?:? '([a-z_]+)'", message, re.IGNORECASE)
        param = m.group(1) if m else None
    return param


class OfflineBackend(Backend):
    """Deterministic, no network: nearest exemplar by verb, objects by role from the narration, hand contacts
    and near-hand detections (``leap_cli.programs.offline``). ``model`` names the generator's version: it is
    part of the cache key, so programs cached by an earlier version are not reused."""

    name = "offline"
    failed = "the offline backend made no program"  # (no request is made)
    model = "offline-v5"  # v3: an exemplar object the clip narrates keeps its role; v4: no exemplar that asks of
    # an object what its EPIC category cannot be or do (switched on outside appliances, held furniture); v5: nor
    # holds a large appliance (the fridge, the oven, ...)

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
