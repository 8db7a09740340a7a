"""The LLM client's hardening: the lean HTTP client, key redaction, the cost ledger, path-free prompts,
Ctrl-C in offline runs, Batch output checks, validate-programs on a missing file, build-shards re-validation."""

import asyncio
import gzip
import json
import logging
import sqlite3

import pytest

from leap_cli.errors import LeapError
from leap_cli.io import read_jsonl
from leap_cli.programs.generate import GenerateConfig, generate_programs
from leap_cli.programs.store import ProgramStore
from tests.program_helpers import excerpt_annotations
from tests.programs_llm_server import Reply, ScriptedServer, narration_id_of, read_request, serve_requests
from tests.test_programs_generate import N_SEGMENTS, config, good_programs, records, workdir  # noqa: F401

KEY = "sk-test-secret-never-logged"


# ---- the HTTP client ----------------------------------------------------------------------------------------

def _serve_raw(handler):
    """``serve_requests`` whose ``handler(head: bytes, body: bytes) -> (bytes, close)`` writes raw responses."""

    async def on_request(n, head, body, reader, writer):
        out, close = handler(head, body)
        writer.write(out)
        await writer.drain()
        return close

    return serve_requests(on_request)[0]


def test_http_client_chunked_gzip_reconnect_and_proxy(monkeypatch):
    from leap_cli.programs.http import HTTPClient

    seen = []

    def handler(head, body):
        seen.append(head.split(b"\r\n")[0])
        payload = gzip.compress(json.dumps({"echo": json.loads(body)}).encode())
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(payload[i:i + 7]), payload[i:i + 7]) for i in range(0, len(payload), 7))
        # every second response closes the connection without saying so: the client must reconnect by itself
        close = len(seen) % 2 == 0
        return (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n",
                close)

    async def main():
        server = await _serve_raw(handler)
        port = server.sockets[0].getsockname()[1]
        client = HTTPClient(f"http://127.0.0.1:{port}/v1", {"Authorization": "Bearer x"}, max_connections=1, timeout=5)
        out = [await client.post("/chat/completions", json.dumps({"i": i}).encode()) for i in range(4)]
        await client.aclose()
        # a trailing slash before a query (Azure's deployments/NAME/?api-version=): one slash, the query kept
        azure = HTTPClient(f"http://127.0.0.1:{port}/openai/deployments/gpt/?api-version=2024-10-21", {}, timeout=5)
        await azure.post("/chat/completions", b"{}")
        await azure.aclose()
        # through an HTTP proxy (from the environment): the request line carries the absolute URI
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("NO_PROXY", "")
        proxied = HTTPClient("http://api.example.test/v1", {}, timeout=5)
        r = await proxied.post("/chat/completions", b"{}")
        await proxied.aclose()
        server.close()
        return out, r

    out, proxied = asyncio.run(main())
    assert [json.loads(r.body)["echo"]["i"] for r in out] == [0, 1, 2, 3] and all(r.status == 200 for r in out)
    assert seen[:4] == [b"POST /v1/chat/completions HTTP/1.1"] * 4
    assert seen[4] == b"POST /openai/deployments/gpt/chat/completions?api-version=2024-10-21 HTTP/1.1"
    assert proxied.status == 200 and seen[-1] == b"POST http://api.example.test/v1/chat/completions HTTP/1.1"


def test_a_close_after_the_response_head_is_said_to_be_mid_response():
    """A server that sent a whole response head, then closed, was said to have closed "without answering" (the
    parsed head is no longer in the bytes a close leaves); a close before any byte still says so."""
    from leap_cli.programs.http import HTTPClient, HTTPConnectionError

    async def main(answer: bytes) -> str:
        server = await _serve_raw(lambda head, body: (answer, True))
        client = HTTPClient(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", {}, timeout=5)
        try:
            await client.post("/chat/completions", b"{}")
        except HTTPConnectionError as e:
            return str(e)
        finally:
            await client.aclose()
            server.close()
        return "answered"

    assert asyncio.run(main(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")) == (
        "the server closed the connection mid-response")
    assert asyncio.run(main(b"")) == "the server closed the connection without answering"


def test_a_reset_after_part_of_a_response_is_not_sent_again_unseen():
    """A reused connection reset by the server after it had begun answering was taken for an idle connection the
    server had closed, and the request sent again on a fresh one, uncounted (QA: the server got 32 requests where
    the summary, the ledger and the records said 20: a provider may bill each). Only a connection that brought no
    byte of a response is tried again unseen; this one fails the attempt, for the retry policy to count."""
    import socket
    import struct

    from leap_cli.programs.http import HTTPClient, HTTPConnectionError

    seen = []

    async def on_conn(reader, writer):
        try:
            while True:
                head, _ = await read_request(reader)
                seen.append(head)
                if len(seen) == 1:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                    await writer.drain()
                    continue
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Le")  # half a head, then a reset (RST)
                await writer.drain()
                await asyncio.sleep(0.05)
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main():
        server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = HTTPClient(f"http://127.0.0.1:{port}/v1", {}, max_connections=1, timeout=5)
        first = await client.post("/chat/completions", b"{}")
        try:
            await client.post("/chat/completions", b"{}")
            second = None
        except HTTPConnectionError as e:
            second = e
        await client.aclose()
        server.close()
        return first, second

    first, second = asyncio.run(main())
    assert first.status == 200 and second is not None
    assert len(seen) == 2  # the second request went out once


# ---- key redaction ------------------------------------------------------------------------------------------

def test_key_echoed_by_the_server_is_redacted_everywhere(workdir, good_programs, caplog):  # noqa: F811
    echo = f"Incorrect API key. Authorization: Bearer {KEY}"

    def script(body, n):
        nid = narration_id_of(body)
        if nid == "P01_11_0":  # a 5xx whose message echoes the header: retried, logged, then recorded as failed
            return Reply(status=500, raw=json.dumps({"error": {"message": echo}}))
        program = dict(good_programs[nid])
        program["action"] = dict(program["action"], narration=f"{program['action']['narration']} {KEY}")
        return Reply(json.dumps(program))  # a reply that quotes the key: cached, logged, written

    caplog.set_level(logging.INFO, logger="leap_cli")
    with ScriptedServer(script) as server:
        generate_programs(config(workdir, server, limit=3, max_retries=1, concurrency=1))
    by_id = {r["narration_id"]: r for r in records(workdir)}
    assert by_id["P01_11_0"]["status"] == "failed" and "[REDACTED]" in by_id["P01_11_0"]["errors"][0]["message"]
    with ScriptedServer(lambda body, n: Reply(status=401, raw=json.dumps({"error": {"message": echo}}))) as server:
        with pytest.raises(LeapError) as err:
            generate_programs(config(workdir, server, concurrency=1))
    assert KEY not in err.value.one_line() and "[REDACTED]" in err.value.one_line()
    assert "retry" in caplog.text and KEY not in caplog.text
    for path in (workdir / "programs").iterdir():
        assert KEY.encode() not in path.read_bytes(), path
    with ProgramStore(workdir / "programs" / "cache.sqlite") as store:
        assert any("[REDACTED]" in (c["error"] or "") for c in store.calls("P01_11_0"))


def test_redact_patterns():
    from leap_cli.programs.redact import redact, register_secret

    register_secret("my-own-local-key-123")
    assert redact("x my-own-local-key-123 y") == "x [REDACTED] y"
    assert redact("authorization: Bearer abc.def") == "authorization: Bearer [REDACTED]"
    assert redact("key sk-proj-abcdefghijklmnop1234 here") == "key [REDACTED] here"
    assert redact("turn on/off, bear with me") == "turn on/off, bear with me"


# ---- the cost ledger ----------------------------------------------------------------------------------------

def test_max_cost_is_cumulative_per_output_file(workdir, good_programs):  # noqa: F811
    script = lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))  # noqa: E731
    with ScriptedServer(script) as server:
        # each call costs (1000*1 + 200*2)/1e6 = 0.0014 $: the cap of 0.003 allows 3 calls in all
        s1 = generate_programs(config(workdir, server, concurrency=1, max_cost=0.003))
        assert len(server.requests) == 3 and s1.stopped and s1.spent_before == 0
        s2 = generate_programs(config(workdir, server, concurrency=1, max_cost=0.003))
        assert len(server.requests) == 3 and s2.stopped and s2.total == N_SEGMENTS - 3  # the same cap spends nothing
        assert s2.spent_before == pytest.approx(3 * 0.0014)
        s3 = generate_programs(config(workdir, server, concurrency=1, max_cost=0.0045))  # a raised cap: one more
        assert len(server.requests) == 4 and s3.spent_before + s3.cost == pytest.approx(4 * 0.0014)
        # another output file has its own ledger
        s4 = generate_programs(config(workdir, server, concurrency=1, max_cost=0.001, out=workdir / "other.jsonl"))
        # its first 4 come from the cache (free), the 5th is paid and reaches the cap
        assert s4.spent_before == 0 and len(read_jsonl(workdir / "other.jsonl")) == 5 and len(server.requests) == 5
    with ProgramStore(workdir / "programs" / "cache.sqlite") as store:
        spent = store.spent(workdir / "programs" / "val.jsonl")
    # the cost adds up across runs too (a run's commit overwriting it with its own spend let the next run's cap
    # count from that run's spend alone)
    assert spent["requests"] == 4 and spent["cost"] == pytest.approx(4 * 0.0014)


def test_cached_input_tokens_are_priced_apart():
    cfg = GenerateConfig(price_in=1.0, price_out=2.0, price_cached_in=0.25)
    assert cfg.cost({"prompt_tokens": 1000, "completion_tokens": 100, "cached_tokens": 800}) == pytest.approx(
        (200 * 1.0 + 800 * 0.25 + 100 * 2.0) / 1e6)


# ---- prompts without paths ----------------------------------------------------------------------------------

def test_prompts_carry_no_paths_and_do_not_depend_on_where_data_lives(tmp_path):
    from leap_cli.programs.generate import dry_run

    prompts = []
    for where in ("alice", "My Passport"):  # (a folder with a space: its part after the space was kept)
        root = tmp_path / where / "deep" / "folder"
        ann = excerpt_annotations(root, 1)
        nid = (ann / "EPIC_100_validation.csv").read_text().splitlines()[1].split(",")[0]
        text = (f"Narration: take plate. Audio: unavailable (no P01_11.wav or .flac in {root}/P01/audio). "
                f"Camera: error (cannot open {root}/videos/P01_11.MP4: moov atom not found). Left hand holds plate.")
        desc = root / "descriptors" / "val.jsonl"
        desc.parent.mkdir(parents=True)
        desc.write_text(json.dumps({"narration_id": nid, "video_id": "P01_11", "text": text, "components": {}})
                        + "\n")
        prompts.append(dry_run(GenerateConfig(workdir=root, split="val")))
    assert prompts[0] == prompts[1]  # the same prompt, so the same cache key
    assert str(tmp_path) not in prompts[0] and "/deep/" not in prompts[0] and "/deep/" not in prompts[1]
    assert "no P01_11.wav or .flac in <path>" in prompts[0] and "Left hand holds plate" in prompts[0]


def test_strip_paths_keeps_ordinary_slashes():
    from leap_cli.programs.prompt import strip_paths

    assert strip_paths("switch on/off the tap, 1/2 cup") == "switch on/off the tap, 1/2 cup"
    assert strip_paths("read ~/data/x.wav and C:\\Users\\me\\v.mp4.") == "read <path> and <path>."


# ---- offline Ctrl-C -----------------------------------------------------------------------------------------

def test_offline_run_stops_promptly_on_ctrl_c(tmp_path):
    import signal

    excerpt_annotations(tmp_path)
    seen = []

    def on_record(r):
        seen.append(r)
        if len(seen) == 3:
            signal.raise_signal(signal.SIGINT)  # what Ctrl-C does

    with pytest.raises(KeyboardInterrupt):
        generate_programs(GenerateConfig(workdir=tmp_path, split="val"), on_record=on_record)
    kept = read_jsonl(tmp_path / "programs" / "val.jsonl")
    assert 3 <= len(kept) <= 3 + 8 < 150  # the workers in flight finish their record, no more
    s = generate_programs(GenerateConfig(workdir=tmp_path, split="val", limit=2))  # and a re-run resumes
    assert s.resumed == len(kept)


# ---- Batch output, validate-programs, build-shards ----------------------------------------------------------

@pytest.mark.parametrize("content, message", [
    (b'[{"custom_id": "x"}]\n', "not an object with a custom_id"),
    (gzip.compress(b'{"custom_id": "x"}\n', mtime=0), "not UTF-8"),
    (b"narration_id,verb\nP01_11_0,take", "line 1 is not JSON"),
    (b'{"custom_id": "P01_11_0", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n', "the --batch-file input"),
    (b"", "no result"),
    (b"[" * 100_000 + b"\n", "nests JSON too deeply"),  # (Python 3.13's parser takes 5,000 levels)
])
def test_ingest_batch_refuses_other_files_in_one_line(workdir, content, message):  # noqa: F811
    from leap_cli.programs.batch import ingest_batch

    path = workdir / "results.jsonl"
    path.write_bytes(content)
    with pytest.raises(LeapError, match=message) as err:
        ingest_batch(GenerateConfig(workdir=workdir, split="val"), path)
    assert str(path) in err.value.one_line() and "\n" not in err.value.one_line()
    with pytest.raises(LeapError, match="not found"):
        ingest_batch(GenerateConfig(workdir=workdir, split="val"), workdir / "missing.jsonl")


def test_validate_programs_names_a_missing_file(workdir):  # noqa: F811
    from leap_cli.commands.programs import validate_programs

    missing = workdir / "programs" / "nothing-here.jsonl"
    with pytest.raises(LeapError, match="program file not found") as err:
        validate_programs(files=[missing], workdir=workdir, split=None, data=workdir / "kitchen", annotations=None,
                          report=None, strict=False, show=10, html=None)
    assert str(missing) in err.value.one_line()


def test_build_shards_revalidates_programs(tmp_path):
    """build-shards trusts no "valid" in a program file: it runs generate-programs' own validation
    (validate.check_program: schema, then semantics and the segment's labels) and lists what fails, as other bad
    input, in the manifest and the summary."""
    from typer.testing import CliRunner

    from leap_cli.cli import app
    from leap_cli.programs.validate import check_program
    from tests.test_shards import PROGRAM, build, make_root, program_records, write_programs

    root = make_root(tmp_path / "kitchen", val=[])  # two small videos of frames
    recs = program_records()
    tampered = [dict(recs[0], narration_id="P01_01_3", program={**recs[0]["program"], "steps": "rm -rf /"}),
                dict(recs[0], narration_id="P01_02_0", program={"action": None})]
    # passes the schema, fails semantics: the loop's condition is never reached (scrub lost its postcondition) ...
    loop = {**PROGRAM, "steps": [PROGRAM["steps"][0], {**PROGRAM["steps"][1], "steps": [
        {**PROGRAM["steps"][1]["steps"][0], "post": []}]}] + PROGRAM["steps"][2:]}
    # ... and a sound program on a segment of another action ("put plate", not "wash plate")
    semantic = [dict(recs[0], narration_id="P01_01_1", program=loop),
                dict(recs[0], narration_id="P01_01_2", status="valid", program=PROGRAM)]
    from leap_cli.programs.schema import validate_program
    assert not validate_program(loop) and not validate_program(PROGRAM)  # the schema alone would take both
    genuine = [r for r in recs if r["narration_id"] == "P01_02_2"]
    write_programs(tmp_path / "work" / "programs" / "train.jsonl", genuine + tampered + semantic + [[1, 2]])
    r = build(root, tmp_path / "work", programs=False, frames=2)
    assert r.manifest["counts"]["with_program"] == 1  # only the genuine valid one
    failed = {x["narration_id"]: x["reason"] for x in r.manifest["programs"]["failed_validation"]}
    assert set(failed) == {"P01_01_3", "P01_02_0", "P01_01_1", "P01_01_2", None}
    assert "never reached" in failed["P01_01_1"] and "does not match the segment's verb class" in failed["P01_01_2"]
    assert failed[None] == "line 6: not a program record (a JSON list, not an object)"
    # the same findings generate-programs would give
    from leap_cli.epic.annotations import Annotations
    from leap_cli.programs.validate import Labels

    ann = Annotations(root / "annotations")
    seg = {s.narration_id: s for s in ann.segments("train")}["P01_01_2"]
    first = check_program(PROGRAM, ann.verbs, ann.nouns, Labels(seg.verb_class, seg.noun_class))[0]
    assert failed["P01_01_2"].startswith(f"{first.pointer}: {first.message}")
    assert any("5 program records failed re-validation" in n and "P01_01_1" in n for n in r.notes)
    res = CliRunner().invoke(app, ["build-shards", "--data", str(root), "--split", "train", "--workdir",
                                   str(tmp_path / "work"), "--frames", "2", "--short-side", "32", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert "5 program records failed re-validation" in " ".join(res.output.split())
    # a line replaced by a later one of its id (a rerun's) is not re-validated: it was listed as failing while
    # the segment got the later, valid program
    broken = dict(genuine[0], program={"action": None})  # P01_02_2's earlier line, replaced by genuine's
    write_programs(tmp_path / "work" / "programs" / "train.jsonl", [broken] + semantic[1:] + genuine)
    r = build(root, tmp_path / "work", programs=False, frames=2, overwrite=True)
    failed = {x["narration_id"] for x in r.manifest["programs"]["failed_validation"]}
    assert failed == {"P01_01_2"} and r.manifest["counts"]["with_program"] == 1
    # programs still being written (a generate-programs running): packed without a word, most samples programless
    from leap_cli.io import OutputLock

    with OutputLock(tmp_path / "work" / "programs" / "train.jsonl"):
        r = build(root, tmp_path / "work", programs=False, frames=2, overwrite=True)
    assert any("train.jsonl is still being written by process" in n and "run build-shards again" in n for n in r.notes)


def test_https_through_a_connect_proxy(tmp_path, monkeypatch):
    """TLS to the endpoint, tunnelled through an HTTPS_PROXY with CONNECT; one tunnel serves every request."""
    import ssl
    import subprocess

    from leap_cli.programs.http import HTTPClient

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                        "-days", "1", "-subj", "/CN=llm.test", "-addext", "subjectAltName=DNS:llm.test"],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("openssl cannot make a test certificate here")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    tunnels = []

    async def main():
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        tls = await asyncio.start_server(_tls_handler, "127.0.0.1", 0, ssl=ctx)
        port = tls.sockets[0].getsockname()[1]

        async def proxy(reader, writer):
            head = await reader.readuntil(b"\r\n\r\n")
            tunnels.append(head.split(b"\r\n")[0])
            up_r, up_w = await asyncio.open_connection("127.0.0.1", int(head.split()[1].rsplit(b":", 1)[1]))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

            async def pipe(a, b):
                try:
                    while data := await a.read(65536):
                        b.write(data)
                        await b.drain()
                except (ConnectionError, OSError):
                    pass
                b.close()
            await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

        proxy_server = await asyncio.start_server(proxy, "127.0.0.1", 0)
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy_server.sockets[0].getsockname()[1]}")
        client = HTTPClient(f"https://llm.test:{port}/v1", {}, timeout=5)  # a name only the proxy resolves
        statuses = [(await client.post("/chat/completions", b"{}")).status for _ in range(3)]
        await client.aclose()
        tls.close()
        proxy_server.close()
        return statuses

    assert asyncio.run(main()) == [200, 200, 200]
    assert len(tunnels) == 1 and tunnels[0].startswith(b"CONNECT llm.test:")


async def _tls_handler(reader, writer):
    try:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, OSError):
        pass
    writer.close()


def test_buffered_store_never_holds_the_database(tmp_path):
    """Writes are buffered, not held in an open transaction: a second process (--shard i/n in parallel) writing to
    the same cache.sqlite does not wait; the buffer reaches the file on close, and reads see it before."""
    import time

    path = tmp_path / "cache.sqlite"
    a = ProgramStore(path, commit_every=3600)
    a.put("ka", "reply a", {"prompt_tokens": 1}, "m")
    a.add_spend(tmp_path / "out.jsonl", 0.5, {"prompt_tokens": 1})
    assert a.get("ka")[0] == "reply a"
    b = ProgramStore(path)
    b.db.execute("PRAGMA busy_timeout = 100")
    t0 = time.monotonic()
    b.put("kb", "reply b", {}, "m")
    assert time.monotonic() - t0 < 1 and b.get("ka") is None
    a.close()
    assert b.get("ka")[0] == "reply a" and b.spent(tmp_path / "out.jsonl")["cost"] == 0.5
    b.close()


def test_background_writes_are_read_back_and_a_failed_one_is_raised_and_kept(tmp_path):
    """With a writer thread, the rows it is writing are still found by ``get``; a write that failed is raised by
    the next commit, and its rows are written by a later one instead of being lost."""
    import threading

    path, out = tmp_path / "cache.sqlite", tmp_path / "out.jsonl"
    release, failures = threading.Event(), []

    class Slow(ProgramStore):
        def _write(self, rows):
            release.wait(10)  # the writer thread holds these rows until the test lets it go on
            if failures:  # this write meets a database that cannot be written
                failures.pop()
                good, self._wdb = self._wdb, sqlite3.connect(":memory:", check_same_thread=False)
                self._wdb.close()
                try:
                    return super()._write(rows)
                finally:
                    self._wdb = good
            super()._write(rows)

    s = Slow(path, commit_every=0.0, background=True)
    s.put("k1", "reply 1", {"prompt_tokens": 3}, "m", commit=False)
    s.log_call(narration_id="n1", backend="openai", model="m", prompt_hash="p", cache_key="k1", round=1,
               response="reply 1", usage={"prompt_tokens": 3}, latency=0.1, attempts=1, cached=False, outcome="valid")
    # due at once: k1 and its call handed to the writer thread, which waits
    assert s._flushing is not None and s.get("k1")[0] == "reply 1"
    s.put("k2", "reply 2", {}, "m")  # the thread is busy: stays in the buffer
    s.add_spend(out, 0.25, {"prompt_tokens": 3})
    failures.append(True)
    release.set()
    with pytest.raises(LeapError, match="cannot write the program cache") as e:
        s.commit()  # the first write failed: raised here, one line naming the cache, its rows back in the buffer
    assert e.value.path == str(path)
    assert s.get("k1")[0] == "reply 1" and s.get("k2")[0] == "reply 2"
    s.close()  # writes them
    check = ProgramStore(path)
    assert check.get("k1")[0] == "reply 1" and check.get("k2")[0] == "reply 2"
    assert check.spent(out)["cost"] == 0.25
    assert [c["narration_id"] for c in check.calls()] == ["n1"]  # (the call log of the failed write too)
    check.close()


def test_generate_programs_exits_3_when_every_record_failed(workdir, good_programs):  # noqa: F811
    """The exit rule of the stages (leap_cli/outcome.py, docs/options.md): it exited 0 with every record failed."""
    from typer.testing import CliRunner

    from leap_cli.cli import app

    def args(server, out):
        return ["generate-programs", "--workdir", str(workdir), "--split", "val", "--backend", "openai",
                "--model", "test-model", "--base-url", server.base_url, "--api-key-env", "LEAP_TEST_KEY",
                "--max-retries", "0", "--out", str(workdir / out)]

    def too_long(body):  # a refusal of each prompt of its own (its length), as a context limit words it
        return Reply(status=400, raw=json.dumps({"error": {"message": f"the prompt of {narration_id_of(body)} is too "
                                                                      "long for this model", "type": "test"}}))

    with ScriptedServer(lambda body, n: too_long(body)) as server:
        res = CliRunner().invoke(app, args(server, "down.jsonl"))
    assert res.exit_code == 3, res.output
    assert f"all {N_SEGMENTS} records failed" in " ".join(res.output.split())
    first = sorted(good_programs)[0]
    script = lambda body, n: (Reply(json.dumps(good_programs[narration_id_of(body)]))  # noqa: E731
                              if narration_id_of(body) == first else too_long(body))
    with ScriptedServer(script) as server:
        res = CliRunner().invoke(app, args(server, "some.jsonl"))
    assert res.exit_code == 0, res.output  # some failed: listed, the job went on
    with ScriptedServer(lambda body, n: too_long(body)) as server:  # (it said "all 1 records failed")
        one = CliRunner().invoke(app, args(server, "one.jsonl") + ["--limit", "1", "--model", "uncached"])
    assert one.exit_code == 3 and "generate-programs: the only record failed (by cause)" in one.output, one.output
    assert f"{N_SEGMENTS - 1} of {N_SEGMENTS} records failed" in " ".join(res.output.split())


def test_a_damaged_cache_is_one_line_and_costs_no_output(workdir, good_programs):  # noqa: F811
    """A cache.sqlite that is not a database was a sqlite3.DatabaseError traceback; with --force and other
    settings it also came after the output was started over."""
    out = workdir / "programs" / "val.jsonl"
    script = lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))  # noqa: E731
    with ScriptedServer(script) as server:
        generate_programs(config(workdir, server))
    before = out.read_bytes()
    cache = workdir / "programs" / "cache.sqlite"
    for name in [p.name for p in cache.parent.glob("cache.sqlite*")]:
        (cache.parent / name).unlink()
    cache.write_bytes(b"not a database at all, just text" * 10)
    with pytest.raises(LeapError, match="the program cache cannot be opened") as e:
        generate_programs(config(workdir, server, repair_rounds=0, force=True))
    assert e.value.path == str(cache) and "move it aside" in e.value.fix
    assert out.read_bytes() == before


def test_a_run_refused_for_its_settings_makes_no_cache(workdir, good_programs):  # noqa: F811
    """An LLM run over offline programs is refused (other settings); it left an empty cache.sqlite beside them,
    which the offline generator never makes. Accepted, the same run makes its cache and fills it."""
    generate_programs(GenerateConfig(workdir=workdir, split="val"))
    programs = workdir / "programs"
    script = lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))  # noqa: E731
    with ScriptedServer(script) as server:
        with pytest.raises(LeapError, match="was started with other settings"):
            generate_programs(config(workdir, server))
        assert not list(programs.glob("cache.sqlite*")) and not server.requests
        generate_programs(config(workdir, server, force=True))
    with ProgramStore(programs / "cache.sqlite") as store:
        assert store.spent(programs / "val.jsonl")["requests"] == N_SEGMENTS


def test_a_damaged_page_inside_the_cache_is_one_line(workdir, good_programs):  # noqa: F811
    """A cache whose header is sound but a page inside is not opened fine and then raised sqlite3.DatabaseError
    (database disk image is malformed) from a lookup: a traceback, exit 1."""
    script = lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))  # noqa: E731
    cache = workdir / "programs" / "cache.sqlite"
    with ScriptedServer(script) as server:
        generate_programs(config(workdir, server, limit=2))
        db = sqlite3.connect(cache)
        with db:
            db.executemany("INSERT INTO cache (key, response, prompt_tokens, completion_tokens, model, created) "
                           "VALUES (?, ?, 0, 0, 'm', 0)", [(f"k{i}", "x" * 2000) for i in range(100)])
        db.close()
        data = bytearray(cache.read_bytes())
        data[8192:] = b"A" * (len(data) - 8192)  # every page but the first two
        cache.write_bytes(bytes(data))
        with pytest.raises(LeapError, match=r"the program cache cannot be (read|written) \(database disk image is "
                                            r"malformed\)") as e:  # (the run's first use of it: a read or, since
            # the cache records each run's --max-tokens as it opens, a write)
            generate_programs(config(workdir, server))
    assert e.value.path == str(cache) and "move it aside" in e.value.fix


def test_a_read_only_programs_folder_is_said_to_be_read_only(workdir, monkeypatch):  # noqa: F811
    """SQLite's "unable to open database file" in a read-only folder was reported as a damaged cache to move
    aside, where there was none. (The folder is simulated: root, who runs the tests here, ignores chmod.)"""
    import errno
    import os
    from pathlib import Path

    programs = workdir / "programs"
    programs.mkdir()
    real_open, real_connect = os.open, sqlite3.connect

    def ro_open(path, flags, *args, **kwargs):
        if Path(path).name.startswith("cache.sqlite") and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            # (the cache alone: in a read-only folder the output's lock, made first, would be refused first)
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    def ro_connect(path, *args, **kwargs):
        if Path(path).parent == programs:
            raise sqlite3.OperationalError("unable to open database file")
        return real_connect(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", ro_open)
    monkeypatch.setattr(sqlite3, "connect", ro_connect)
    with pytest.raises(OSError) as e:
        generate_programs(GenerateConfig(workdir=workdir, split="val", backend="openai", api_key_env="LEAP_TEST_KEY",
                                         base_url="http://127.0.0.1:9/v1"))
    assert e.value.errno == errno.EROFS and e.value.filename == str(programs / "cache.sqlite")
