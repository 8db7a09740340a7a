"""The API key (and other credentials) of ``leap generate-programs --backend openai`` must never reach a file, a log
or a terminal (helper h4, session 51).

docs/programs.md, "Keys and secrets": "The API key is never stored. Every text that leaves the client (error messages,
log lines, the call log, cached replies, program records) passes through one redaction function". Each test runs the
real CLI against a scripted OpenAI-compatible server (tests/programs_llm_server.py) with a key that is *not* shaped
like an OpenAI key (an Azure-style 32-hex key, a local server's token), so only the registered secret can redact it,
then looks for the key, or any 12-character piece of it, in the whole output and in every byte of every file under
the work directory (cache.sqlite included). Bugs are strict xfails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.program_helpers import excerpt_annotations, excerpt_programs
from tests.programs_llm_server import Reply, ScriptedServer, narration_id_of

REPO = Path(__file__).resolve().parents[1]
KEY = "3f9a1c7e5b2d4a6f8e0c1b3d5f7a9e2c"  # an Azure-style key: no "sk-", no "Bearer" around it
URL_SECRET = "URLTOKEN8d1e77c0"
N = 3


def pieces(secret: str, n: int = 12) -> list[str]:
    """Every ``n``-character piece of ``secret``: a cut key is a leaked key too."""
    return [secret[i:i + n] for i in range(len(secret) - n + 1)]


def leaks(text: str | bytes, secret: str = KEY) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [p for p in pieces(secret) if p.encode() in data]


def files_leaking(work: Path, secret: str = KEY) -> dict[str, list[str]]:
    """Files under ``work`` (not the annotations) holding a piece of ``secret``, read as bytes (grep -a)."""
    out = {}
    for f in work.rglob("*"):
        if f.is_file() and "annotations" not in f.parts:
            found = leaks(f.read_bytes(), secret)
            if found:
                out[str(f.relative_to(work))] = found
    return out


@pytest.fixture(scope="module")
def programs():
    return excerpt_programs(N)


@pytest.fixture
def work(tmp_path) -> Path:
    excerpt_annotations(tmp_path, rows=N)
    return tmp_path


def leap(work: Path, base_url: str, *extra, pre=("-v",), umask: int | None = None):
    """``leap [PRE] generate-programs`` on the validation excerpt against ``base_url``, the key in LEAP_TEST_KEY;
    (exit status, stdout + stderr)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1", "LEAP_TEST_KEY": KEY,
           "COLUMNS": "200"}
    env.pop("OPENAI_API_KEY", None)
    cmd = [sys.executable, "-m", "leap_cli", *pre, "generate-programs", "--workdir", str(work), "--split", "val",
           "--backend", "openai", "--model", "test-model", "--base-url", base_url, "--api-key-env", "LEAP_TEST_KEY",
           "--max-retries", "0", "--backoff", "0.01", *extra]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120,
                       preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)
    return p.returncode, p.stdout + p.stderr


def good(programs):
    return lambda body, n: Reply(json.dumps(programs[narration_id_of(body)]))


# --- verified: what works ----------------------------------------------------------------------------------------

def test_a_successful_debug_run_writes_the_key_nowhere_and_files_follow_the_umask(work, programs):
    """--debug and -v: no line and no file (records, settings, cache.sqlite with its call log, lock) holds the key;
    with umask 077 the files that hold replies are private to the user (a group-readable cluster workdir is the
    user's choice of umask, not leap's)."""
    with ScriptedServer(good(programs)) as server:
        code, out = leap(work, server.base_url, pre=("--debug",), umask=0o077)
        assert server.headers[0]["authorization"] == f"Bearer {KEY}"  # (the key was sent: the run used it)
    assert code == 0, out
    assert not leaks(out) and not files_leaking(work)
    made = [f for f in (work / "programs").iterdir() if f.is_file()]
    assert {f.name for f in made} >= {"val.jsonl", "val.jsonl.settings.json", "cache.sqlite"}
    for f in made:
        assert f.stat().st_mode & 0o077 == 0, f"{f.name} is {oct(f.stat().st_mode & 0o777)} under umask 077"


def test_a_401_that_echoes_the_key_in_every_form_is_redacted_everywhere(work):
    """A server echoing the key in its 401 message (plain, after Bearer, as an api-key header, JSON-escaped with
    \\u escapes) stops the stage with a line that holds no piece of it, and nothing stored holds it."""
    escaped = "".join(f"\\u{ord(c):04x}" for c in KEY)
    raw = ('{"error": {"message": "Incorrect API key provided: %s. Headers: Authorization: Bearer %s, api-key: %s, '
           'again: %s"}}' % (KEY, KEY, KEY, escaped))
    with ScriptedServer(lambda body, n: Reply(status=401, raw=raw)) as server:
        code, out = leap(work, server.base_url)
    assert code == 2 and "refused the API key" in out
    assert "[REDACTED]" in out
    assert not leaks(out) and not files_leaking(work)


def test_the_base_url_with_a_query_token_is_not_stored_in_the_settings_or_records(work, programs):
    """The endpoint is not one of the output's settings (docs: it may change freely): a --base-url carrying a token
    in its query (a gateway's ?api-key=) leaves no trace in the settings file, the records or the cache."""
    with ScriptedServer(good(programs)) as server:
        code, out = leap(work, f"{server.base_url}?api-key={URL_SECRET}")
        assert server.paths[0].endswith(f"?api-key={URL_SECRET}")  # (the query goes with every request)
    assert code == 0, out
    assert not files_leaking(work, URL_SECRET) and not files_leaking(work)


def test_batch_request_files_hold_no_key(work):
    """--batch-file writes request bodies only: neither the key nor the Authorization header goes into them."""
    code, out = leap(work, "http://127.0.0.1:9/v1", "--batch-file", str(work / "batch.jsonl"))
    assert code == 0, out
    assert (work / "batch.jsonl").read_text().count('"custom_id"') == N
    assert not leaks(out) and not files_leaking(work)


# --- bugs --------------------------------------------------------------------------------------------------------

def test_a_redirect_whose_location_carries_the_key_does_not_print_it(work):
    """Was wrong: a 3xx's Location is put in the error unredacted (backends.py, _complete: `where =
    resp.headers.get('location')` goes into LeapError as it is), so a redirect that carries the key prints it"""
    """An http:// --base-url that a gateway redirects to https://, carrying the key it was given in the query of
    its Location: leap's error line prints the Location, key and all, though the key is a registered secret."""
    loc = f"https://gateway.example/v1/chat/completions?api-key={KEY}"
    with ScriptedServer(lambda body, n: Reply(status=301, raw="", headers={"Location": loc})) as server:
        code, out = leap(work, server.base_url)
    assert code == 2 and "redirect" in out
    assert not leaks(out)


def test_a_non_json_reply_that_echoes_the_key_leaves_no_piece_of_it_in_the_records(work):
    """Was wrong: the body of a non-JSON 200 is cut to 120 bytes before it is redacted (backends.py, _complete:
    `redact(f'...{resp.body[:120]!r}')`): a key that the cut splits is no longer the registered secret, and its
    head is stored"""
    """A proxy's plain-text page echoing the key at byte 100: the failed records and the call log keep
    `...your key 3f9a1c7e5b2d4a6f8e0c`, 20 of its 32 characters."""
    raw = "x" * 91 + f"your key {KEY} is not valid here"
    with ScriptedServer(lambda body, n: Reply(status=200, raw=raw)) as server:
        code, out = leap(work, server.base_url)
    assert code == 2
    assert not leaks(out)  # (the stop line itself is redacted before it is cut)
    assert not files_leaking(work), files_leaking(work)


def test_an_error_in_a_200_reply_that_echoes_the_key_prints_no_piece_of_it(work):
    """Was wrong: an error in a 200 reply is cut (reply_problem, [:300]; the stop line's [:160]) before it is
    redacted (backends.py, _complete), so the stop line prints the head of a key that the cut splits"""
    """A server answering 200 with {"error": {"message": "... key KEY rejected"}}, the key around character 140 of
    the line: `error: every request so far was answered with an error: ... key 3f9a1c7e5b2d4a6f8e0`."""
    message = "y" * 95 + f" key {KEY} rejected"
    with ScriptedServer(lambda body, n: Reply(status=200, raw=json.dumps({"error": {"message": message}}))) as server:
        code, out = leap(work, server.base_url)
    assert code == 2 and "answered with an error" in out
    assert not leaks(out)


def test_a_404_does_not_print_a_token_in_the_base_urls_query(work):
    """Was wrong: the base URL is printed as given, query included (backends.py, _complete's 404 LeapError `HTTP
    404 from {self.base_url}`; also the /v1 retry warning, the 'stopped answering' error and endpoint_base's
    warning): a gateway token in --base-url's query goes to the terminal and pasted logs"""
    with ScriptedServer(lambda body, n: Reply(status=404, raw='{"error": {"message": "no such route"}}')) as server:
        code, out = leap(work, f"{server.base_url}?api-key={URL_SECRET}")
    assert code == 2 and "HTTP 404" in out
    assert URL_SECRET not in out


def test_a_base_url_with_credentials_is_refused_without_printing_the_password(work):
    """Was wrong: the base URL was printed with its user:password (the 404 error and every message naming it), and
    the password was never sent (the client sends the API key as its only credential): such a URL is refused now,
    before any request, with the password redacted."""
    with ScriptedServer(lambda body, n: Reply(status=404, raw='{"error": {"message": "no such route"}}')) as server:
        url = server.base_url.replace("http://", f"http://user:{URL_SECRET}@")
        code, out = leap(work, url)
        assert not server.requests
    assert code == 2 and "--base-url holds a user name or password" in " ".join(out.split())
    assert URL_SECRET not in out


def test_a_proxys_password_and_basic_token_are_redacted(monkeypatch):
    """Was wrong: ``Authorization: Basic <token>`` kept its token (the pattern stopped at "Basic"), and a proxy's
    password from HTTPS_PROXY was not a registered secret."""
    import base64

    from leap_cli.programs.http import HTTPClient
    from leap_cli.programs.redact import redact

    password = "pr0xy-" + URL_SECRET[:10]
    monkeypatch.setenv("HTTPS_PROXY", f"http://me:{password}@proxy.example:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    HTTPClient("https://api.example.com/v1", {})
    token = base64.b64encode(f"me:{password}".encode()).decode()
    said = redact(f"407 from proxy: password {password}; Proxy-Authorization: Basic {token}; echo {token}")
    assert password not in said and token not in said
    assert redact("authorization: basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==") == "authorization: basic [REDACTED]"


def test_only_a_credential_parameter_of_the_base_url_is_a_secret():
    """A gateway's ?key= / ?access_token= are redacted wherever the URL is said; Azure's api-version is not a
    secret, and stays readable (redacted, it hid the version a 400 "api-version ... is not supported" named)."""
    from leap_cli.programs.backends import url_secrets
    from leap_cli.programs.redact import redact

    url_secrets("https://gw.example.com/openai/deployments/d?api-version=2031-01-17&access_token=tok3n-51abc")
    said = redact("HTTP 400 from https://gw.example.com/openai/deployments/d?api-version=2031-01-17&access_token="
                  "tok3n-51abc: api-version 2031-01-17 is not supported")
    assert "tok3n-51abc" not in said and said.count("2031-01-17") == 2, said
