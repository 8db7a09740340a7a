"""Mutation run (s70) over ``programs/``: the openai backend's free 429s, the key characters a header carries and a
message redacts, a held server's probes and turns, what a failed connection is said as, the HTTP client's request
deadline, and the program cache's errors, WAL setting, journal files and ledger. Each test kills a mutant the suite
let live."""

import asyncio
import json
import socket
import sqlite3
import threading

import pytest

from leap_cli.errors import LeapError
from leap_cli.programs.backends import BackendError, NoApiKey, OpenAIBackend, Request, RetryPolicy
from leap_cli.programs.store import ProgramStore
from tests.programs_llm_server import OK_EMPTY, Reply, ScriptedServer, narration_id_of, on_one_connection, serve_requests


class _NoWait(RetryPolicy):
    """No wait at all; the attempt index each wait was asked for, in ``asked``."""
    asked: list = []

    def delay(self, attempt, retry_after):
        self.asked.append(attempt)
        return 0.0


def _request(i: int) -> Request:
    return Request(f"c{i}", [{"role": "user", "content": f"Clip c{i}: x"}])


def _backend(url: str, retries: int, concurrency: int = 1, **kw) -> OpenAIBackend:
    _NoWait.asked = []
    return OpenAIBackend("m", base_url=url, api_key_env="LEAP_TEST_KEY", concurrency=concurrency,
                         retry=_NoWait(max_retries=retries), **kw)


async def _outcome(backend: OpenAIBackend, i: int) -> str:
    """The word "ok" (a reply), or the BackendError's text."""
    try:
        await backend.complete(_request(i))
        return "ok"
    except BackendError as e:
        return str(e)


# ---- backends: free 429s -------------------------------------------------------------------------------------------

FREE_429 = 8  # the 429s of leap's own concurrency a request is spared before they use up its retries


def test_a_request_gets_eight_429s_of_leaps_own_concurrency_before_they_count(monkeypatch):
    """Under a burst of requests every 429 may be one of leap's own concurrency (each came after a cut of the
    requests in flight): a request is spared 8 of them, then they count against --max-retries (mutant: 7 spared,
    a request of --max-retries 0 failed one 429 sooner)."""
    monkeypatch.setenv("LEAP_TEST_KEY", "sk-mut70-test")

    async def run(url):
        backend = _backend(url, retries=0)
        backend._rate_limited = lambda epoch, server_wait: True  # (each 429 came of a cut: leap's own doing)
        try:
            return await asyncio.wait_for(_outcome(backend, 0), 20)
        finally:
            await backend.aclose()

    with ScriptedServer(lambda body, n: Reply(status=429)) as server:
        said = asyncio.run(run(server.base_url))
        sent = len(server.requests)
    assert sent == FREE_429 + 1 and f"HTTP 429 after {FREE_429 + 1} attempts" in said, said


# ---- the characters of a key ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("char, taken", [(" ", True), ("~", True), ("\x80", True), ("\xff", True),
                                         ("\x1f", False), ("\x7f", False), ("\u0100", False), ("\x01", False)])
def test_the_characters_an_api_key_may_hold_are_those_a_header_carries(monkeypatch, char, taken):
    """A key is sent in a header, which carries Latin-1 but no control character: one outside is refused with its
    code point and place; the edges of that range are taken (mutants: a range one character wider or narrower)."""
    key = f"sk-ab{char}cdefgh"
    monkeypatch.setenv("LEAP_TEST_KEY", key)
    if taken:
        backend = OpenAIBackend("m", base_url="http://127.0.0.1:9/v1", api_key_env="LEAP_TEST_KEY")
        assert backend._http._headers.decode("latin-1").count(f"Bearer {key}\r\n") == 1
        return
    with pytest.raises(NoApiKey) as e:
        OpenAIBackend("m", base_url="http://127.0.0.1:9/v1", api_key_env="LEAP_TEST_KEY")
    assert f"(U+{ord(char):04X}, character {key.index(char) + 1} of {len(key)})" in e.value.message
    assert "LEAP_TEST_KEY" in e.value.message


def test_an_openai_shaped_key_is_redacted_whole_and_no_further():
    """A key never registered (another variable's, echoed by a proxy) is redacted by its shape: every character an
    OpenAI key holds (letters, digits, ``-``, ``_``) is part of it, and a character that ends it stays (mutants: the
    key's character set one short, or one more)."""
    from leap_cli.programs.redact import REDACTED, redact

    key = "sk-proj-Ab_9-Zz_0-" + "x" * 12
    assert redact(f"Incorrect API key provided: {key}") == f"Incorrect API key provided: {REDACTED}"
    for end in ".,;:/'\"()[]{}=+ \n!?":
        assert redact(f"key {key}{end}after") == f"key {REDACTED}{end}after", repr(end)


def test_a_bearer_token_is_redacted_to_its_end_and_what_ends_it_stays():
    """The value after ``Bearer`` runs to a blank, a quote, a comma or a brace: base64 and URL characters are part
    of it (mutants: a character more or less ended it)."""
    from leap_cli.programs.redact import REDACTED, redact

    token = "tok+/=.;:-_~!abc"
    assert redact(f"Bearer {token} next") == f"Bearer {REDACTED} next"
    for end in (" ", "\t", '"', "'", ",", "}"):
        assert redact(f"Bearer {token}{end}next") == f"Bearer {REDACTED}{end}next", repr(end)


# ---- backends: a held server's probes and turns --------------------------------------------------------------------

def test_a_held_servers_probes_wait_from_the_shortest_wait_up_each_request_anew(monkeypatch):
    """A server held after two requests in a row failed for good: each request probes it --max-retries + 1 times,
    the waits before the probes growing from the retry policy's first (attempt 0), and the next request (or the
    next hold, after a reply) starts from the first again (mutants: the first probe waited as a second retry;
    attempts sent while held not taken for probes; the next request went on from the last wait)."""
    monkeypatch.setenv("LEAP_TEST_KEY", "sk-mut70-test")
    ok = {"c0", "c5"}
    retries = 2

    async def run(url):
        backend = _backend(url, retries)
        try:
            return [await _outcome(backend, i) for i in range(9)], backend.holds
        finally:
            await backend.aclose()

    with ScriptedServer(lambda body, n: Reply("{}") if narration_id_of(body) in ok else Reply(status=500)) as server:
        outcomes, holds = asyncio.run(asyncio.wait_for(run(server.base_url), 20))
    retried, probed = list(range(retries)), list(range(retries + 1))
    # c1 c2: retried, then held; c3 c4: probes; c5 answers; c6 c7: retried, held again; c8: probes
    assert _NoWait.asked == retried * 2 + probed * 2 + retried * 2 + probed
    assert holds == 2
    assert [o == "ok" for o in outcomes] == [f"c{i}" in ok for i in range(9)]
    assert all(f"HTTP 500 after {retries + 1} attempts" in outcomes[i] for i in (1, 2, 3, 4, 6, 7, 8))


def test_attempts_out_as_the_server_is_held_count_as_one_probe_of_the_shortest_wait(monkeypatch):
    """Requests in flight together when a server stops answering: two of them failing for good hold it, and the
    attempts sent before the hold that fail after it are one probe among them, of the first wait; the first held
    attempt then waits the second, and the next request in turn starts from the first again (mutant: a failure
    sent before the hold began no probe, and the held attempts probed from the first wait)."""
    monkeypatch.setenv("LEAP_TEST_KEY", "sk-mut70-test")
    n = 4
    retried = threading.Barrier(n)

    def script(body, k):
        if narration_id_of(body) == "c0":
            return Reply("{}")
        if k == 1:  # (each request's retry fails once all of them are out: the hold comes after they were sent)
            retried.wait(10)
        return Reply(status=500)

    async def run(url):
        backend = _backend(url, 1, concurrency=n)
        try:
            first = await _outcome(backend, 0)
            rest = await asyncio.gather(*(_outcome(backend, i) for i in range(1, n + 1)))
            return [first, *rest], backend.holds
        finally:
            await backend.aclose()

    with ScriptedServer(script) as server:
        outcomes, holds = asyncio.run(asyncio.wait_for(run(server.base_url), 20))
    assert outcomes[0] == "ok" and holds == 1
    # two failed for good after their retry (the hold); the others after it, a probe and a held attempt more
    assert sorted(o.split(":")[0] for o in outcomes[1:]) == ["HTTP 500 after 2 attempts"] * 2 + [
        "HTTP 500 after 3 attempts"] * (n - 2)
    # each request's one retry; the n - 2 failed after the hold: one probe; the first held attempt; the next
    assert _NoWait.asked == [0] * n + [0] + [1] + [0] * (n - 3)


def test_a_request_that_fails_every_probe_lets_the_next_one_in_turn_probe(monkeypatch):
    """Held, the requests waiting probe in turn: a request the server chokes on fails its probe and waits behind the
    next one, whose reply lifts the hold (mutant: a request's turn was not given up once it came, the same request
    probed again and again, and the others waited until the stage stopped)."""
    monkeypatch.setenv("LEAP_TEST_KEY", "sk-mut70-test")
    fine = {"c0", "c4"}

    async def run(url):
        backend = _backend(url, 2, concurrency=2)
        try:
            first = [await _outcome(backend, i) for i in range(3)]  # a reply, then two failed for good: held

            # (both wait at once, c3 first in turn)
            return first + list(await asyncio.gather(_outcome(backend, 3), _outcome(backend, 4))), backend.holds
        finally:
            await backend.aclose()

    with ScriptedServer(lambda body, n: Reply("{}") if narration_id_of(body) in fine else Reply(status=500)) as server:
        outcomes, holds = asyncio.run(asyncio.wait_for(run(server.base_url), 10))
        order = [narration_id_of(b) for b in server.requests]
    assert holds == 1 and outcomes[0] == outcomes[4] == "ok" and "HTTP 500 after" in outcomes[3]
    held = order[order.index("c3"):]
    assert held[:2] == ["c3", "c4"], order  # one probe of c3, then c4's turn


# ---- backends: connection failures and timeouts --------------------------------------------------------------------

def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize("how", ["refused", "closed", "timeout"])
def test_what_stops_a_stage_that_no_request_got_through_names_its_cause(monkeypatch, how):
    """Two requests failed alike before any reply stop the stage with what failed them: a server not there asks
    whether it runs, one that closes without answering sends to its log, only one that does not answer in time to
    --timeout; and only the attempts abandoned at --timeout are counted as timed out (the summary says the server
    may bill them; mutants: a connection failure taken for a timeout, or the other way)."""
    monkeypatch.setenv("LEAP_TEST_KEY", "sk-mut70-test")
    retries = 1

    async def on_request(n, head, body, reader, writer):
        return True  # (closed, no byte of a reply)

    async def run(url):
        server = None
        if how == "closed":
            start, *_ = serve_requests(on_request)
            server = await start
            url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
        backend = _backend(url, retries, timeout=0.2)
        said = []
        try:
            for i in range(3):
                said.append(await _outcome(backend, i))
        except LeapError as e:
            said.append(e)
        finally:
            await backend.aclose()
            if server is not None:
                server.close()
        return said, backend.timed_out

    if how == "timeout":
        with ScriptedServer(lambda body, n: Reply("{}", delay=1.0)) as slow:
            said, timed_out = asyncio.run(asyncio.wait_for(run(slow.base_url), 20))
    else:
        said, timed_out = asyncio.run(asyncio.wait_for(run(f"http://127.0.0.1:{_closed_port()}/v1"), 20))
    first, stop = said
    what = "timed out" if how == "timeout" else "connection failed"
    assert first.startswith(f"{what} after {retries + 1} attempts"), first
    assert isinstance(stop, LeapError)
    assert timed_out == (2 * (retries + 1) if how == "timeout" else 0)
    if how == "refused":
        assert stop.message.endswith(": is the server running?") and "cannot connect" in stop.message
        assert stop.fix == "check --base-url"
    elif how == "closed":
        assert stop.message.endswith("on every request so far") and "closed the connection" in stop.message
        assert "server's log" in stop.fix and "--timeout" not in stop.fix
    else:
        assert stop.message.endswith("on every request so far") and "raise --timeout" in stop.fix


# ---- http: a request's deadline ------------------------------------------------------------------------------------

def test_a_deadline_that_passes_as_a_reply_comes_times_out_no_later_request_on_its_connection(monkeypatch):
    """A request whose deadline comes due in the turn its last bytes arrive gets its reply (it is there, paid); its
    timer, a turn late, must not fail the next request, which took the same keep-alive connection in between
    (mutant: the late timer failed whatever request the connection carried then)."""
    from leap_cli.programs import http

    real = http._Conn.data_received
    due = []

    def data_received(self, data):
        real(self, data)
        if not due and self.buf.endswith(b"{}"):
            due.append(self)
            self.expire()  # (its timer comes due in this turn)

    monkeypatch.setattr(http._Conn, "data_received", data_received)

    async def on_request(n, head, body, reader, writer):
        writer.write(OK_EMPTY)
        await writer.drain()
        return False

    async def main(client, heads):
        out = [(await client.post("/chat/completions", b"{}")).body for _ in range(2)]
        return out, len(heads), client.resent

    assert on_one_connection(on_request, main, timeout=5) == ([b"{}", b"{}"], 2, 0)
    assert len(due) == 1


def test_a_request_whose_clock_restarts_as_its_timer_comes_due_gets_its_reply():
    """A process stopped as its event loop took a request's due timer: the clock restarted on the continue (SIGCONT)
    before the loop's next turn keeps the request, whose reply comes (mutant: the timer failed it a turn later all
    the same, and the reply was asked for, and paid, again)."""
    async def on_request(n, head, body, reader, writer):
        await asyncio.sleep(0.3)
        writer.write(OK_EMPTY)
        await writer.drain()
        return False

    async def main(client, heads):
        task = asyncio.ensure_future(client.post("/chat/completions", b"{}"))
        while not heads:
            await asyncio.sleep(0.01)
        (conn,) = client._busy
        conn.expire()  # the timer came due in the turn the process stopped in
        client.restart_clocks()  # the continue's handler, before the next turn
        return (await task).body

    assert on_one_connection(on_request, main, timeout=5) == b"{}"


# ---- store ---------------------------------------------------------------------------------------------------------

def test_a_file_that_is_no_database_in_the_caches_place_is_said_as_a_cache_that_cannot_be_opened(tmp_path):
    """Not an SQLite file at all (mutant: the words of the error and of the action swapped)."""
    path = tmp_path / "cache.sqlite"
    path.write_bytes(b"not a database at all, just text" * 200)
    with pytest.raises(LeapError) as e:
        ProgramStore(path)
    assert e.value.message == "the program cache cannot be opened (file is not a database)"
    assert e.value.path == str(path) and "move it aside" in e.value.fix


def test_a_foreign_database_in_the_caches_place_is_said_as_a_cache_that_cannot_be_opened(tmp_path):
    """An SQLite file of another program (a table named cache of its own, no version) where the cache goes: one line
    saying it cannot be opened and why, with the fix (mutant: the words of the error and of the action swapped)."""
    path = tmp_path / "cache.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE cache (id INTEGER)")
    db.close()
    with pytest.raises(LeapError) as e:
        ProgramStore(path)
    assert e.value.message == "the program cache cannot be opened (table cache already exists)"
    assert e.value.path == str(path) and "move it aside" in e.value.fix


def test_a_damaged_page_met_by_a_lookup_or_a_write_is_said_as_a_cache_that_cannot_be_read_or_written(tmp_path):
    """A cache whose pages past the first are damaged opens, and the lookup or the write that meets them is one
    line: it cannot be read (written), the damage named (mutants: the words of the error and of the action
    swapped)."""
    path = tmp_path / "cache.sqlite"
    with ProgramStore(path) as store:
        for i in range(200):
            store.put(f"k{i}", "x" * 2000, {}, "m", commit=False)
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    data = bytearray(path.read_bytes())
    data[8192:] = b"A" * (len(data) - 8192)
    path.write_bytes(bytes(data))
    store = ProgramStore(path)
    try:
        with pytest.raises(LeapError) as e:
            store.get("k150")
        with pytest.raises(LeapError) as w:
            store.put("k-new", "y" * 2000, {}, "m")
    finally:
        store.db.close()
    assert e.value.message == "the program cache cannot be read (database disk image is malformed)"
    assert w.value.message == "the program cache cannot be written (database disk image is malformed)"
    assert e.value.path == w.value.path == str(path)
    assert "move it aside" in e.value.fix and "move it aside" in w.value.fix


def test_the_cache_is_opened_in_wal_at_synchronous_normal(tmp_path):
    """Every connection of the cache writes through SQLite's WAL at synchronous=NORMAL (the module docstring: a
    commit is not an fsync; what a crashed machine may lose is said there); the switch's retry loop ends once it
    took (mutants: the loop left before the synchronous setting, or went on switching for ever)."""
    out = {}

    def open_it():
        store = ProgramStore(tmp_path / "cache.sqlite", background=True)
        out["modes"] = [(db.execute("PRAGMA journal_mode").fetchone()[0],
                         db.execute("PRAGMA synchronous").fetchone()[0]) for db in (store.db, store._wdb)]
        store.close()

    t = threading.Thread(target=open_it, daemon=True)
    t.start()
    t.join(15)
    assert not t.is_alive(), "the cache did not open"
    assert out["modes"] == [("wal", 1), ("wal", 1)]


def test_a_journal_folder_taken_away_as_a_file_is_made_is_made_again(tmp_path, monkeypatch, caplog):
    """Another process's close may remove the empty journal folder between its making and this process's file: the
    file is made again in a new folder, and the reply is journaled (mutant: the retry loop left at once and the
    journal was off, a killed run's last replies paid again)."""
    import os

    real_open = os.open
    taken = []

    def open_after_another_close(path, flags, *args):
        if str(path).endswith(".jsonl") and ".unwritten" in str(path) and not taken:
            taken.append(path)
            os.rmdir(os.path.dirname(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", open_after_another_close)
    store = ProgramStore(tmp_path / "cache.sqlite", commit_every=3600, journal=True)
    try:
        store.put("k", "paid reply", {"prompt_tokens": 3}, "m", commit=False)
        files = list(store.unwritten_dir.iterdir())
        assert taken and store._journal and len(files) == 1
        assert json.loads(files[0].read_text().splitlines()[0])[:3] == ["c", "k", "paid reply"]
    finally:
        store.close()
    assert "cannot keep the replies" not in caplog.text


def test_the_spend_of_a_failed_background_write_is_counted_once_when_written(tmp_path):
    """A background write that failed puts its rows back for the next one: the ledger's requests and cost are those
    spent, whether or not more came meanwhile (mutant: the rows put back counted one request more)."""
    path = tmp_path / "cache.sqlite"
    store = ProgramStore(path, commit_every=3600, background=True)
    spends = [(0.25, 10, 2), (0.5, 20, 4)]
    try:
        for cost, p, c in spends:
            store.add_spend("val.jsonl", cost, {"prompt_tokens": p, "completion_tokens": c}, commit=False)
        good, store._wdb = store._wdb, sqlite3.connect(":memory:", check_same_thread=False)
        store._wdb.close()
        with pytest.raises(LeapError, match="cannot write the program cache"):
            store.commit()
        store._wdb = good
        spent = store.spent("val.jsonl")
    finally:
        store.close()
    assert spent == {"cost": sum(s[0] for s in spends), "prompt_tokens": sum(s[1] for s in spends),
                     "completion_tokens": sum(s[2] for s in spends), "requests": len(spends)}


def test_the_spend_of_a_stopped_runs_journal_is_summed_from_nothing(tmp_path):
    """The journal of a run killed before its batch was written holds its spend line by line: the next store adds
    up those lines, requests included (mutant: the count of a ledger key began at 1)."""
    from tests.test_programs_store_journal import journal_folder

    path = tmp_path / "cache.sqlite"
    key, folder = journal_folder(path)
    lines = [["l", key, 0.5, 7, 3, 1], ["l", key, 0.25, 5, 1, 2]]
    (folder / "1-dead-1.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    with ProgramStore(path) as store:
        spent = store.spent("val.jsonl")
    assert spent == {"cost": 0.75, "prompt_tokens": 12, "completion_tokens": 4, "requests": 3}
