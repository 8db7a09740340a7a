"""Session 48's attack on f5c76d1 (CPUSyncBatchNorm's Chan combine), e5f5c63 (generate-programs past --max-cost)
and fa9e01f (the HTTP client's per-request deadline): what held is pinned (the one fault found, an empty rank's NaN in
CPUSyncBatchNorm, was fixed in cf08474 meanwhile: its test is a plain one)."""

import asyncio
import copy
import json
import signal

import pytest
import torch

from leap_cli.programs.generate import generate_programs
from leap_cli.programs.http import HTTPClient, HTTPTimeout
from leap_cli.train import distributed
from tests.procs import spawn_ranks
from tests.programs_llm_server import Reply, ScriptedServer, narration_id_of
from tests.test_programs_generate import N_SEGMENTS, good_programs, workdir  # noqa: F401 (the fixtures)
from tests.test_programs_generate_resume import config, invalid, out_file, records

# ---- CPUSyncBatchNorm on two gloo ranks with uneven (and empty) batches ---------------------------------------


def _cases():
    torch.manual_seed(0)
    out = []
    for name, bn, shape, split, dtype in (
            ("2d 5/1", torch.nn.BatchNorm2d(3), (6, 3, 4, 5), 5, torch.float32),
            ("1d 4/3", torch.nn.BatchNorm1d(3, momentum=None), (7, 3), 4, torch.float32),
            ("1d seq 2/3", torch.nn.BatchNorm1d(3), (5, 3, 4), 2, torch.float32),
            ("3d 1/3", torch.nn.BatchNorm3d(2), (4, 2, 3, 2, 2), 1, torch.float32),
            ("f64 3/1", torch.nn.BatchNorm2d(3), (4, 3, 2, 2), 3, torch.float64),
            ("no stats 3/2", torch.nn.BatchNorm2d(3, track_running_stats=False), (5, 3, 2, 2), 3, torch.float32),
            ("empty rank 1", torch.nn.BatchNorm2d(3), (6, 3, 4, 5), 6, torch.float32),
            ("empty rank 0", torch.nn.BatchNorm2d(3), (6, 3, 4, 5), 0, torch.float32)):
        out.append((name, bn.to(dtype), torch.randn(*shape, dtype=dtype) * 2 + 3, torch.randn(*shape, dtype=dtype),
                    split))
    return out


def _ranks(rank: int, store: str, cases: list, out: str) -> None:
    torch.distributed.init_process_group("gloo", store=torch.distributed.FileStore(store, 2), rank=rank, world_size=2)
    try:
        res = {}
        for name, bn, x, g, split in cases:
            sync = distributed.convert_sync_batchnorm(copy.deepcopy(bn), torch.device("cpu"))
            part = slice(0, split) if rank == 0 else slice(split, x.shape[0])
            xr = x[part].clone().requires_grad_()
            y = sync(xr)
            y.backward(g[part])
            res[name] = (y.detach(), xr.grad, sync.weight.grad, sync.bias.grad, dict(sync.named_buffers()))
        torch.save(res, out.format(rank))
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    d = tmp_path_factory.mktemp("bn")
    cases = _cases()
    spawn_ranks(_ranks, (str(d / "store"), cases, str(d / "r{}.pt")), [d / f"r{r}.pt" for r in range(2)])
    ranks = [torch.load(d / f"r{r}.pt") for r in range(2)]
    return {c[0]: (c, ranks[0][c[0]], ranks[1][c[0]]) for c in cases}


def _equal_to_batchnorm_on_the_whole(case, r0, r1):
    _, bn, x, g, _ = case
    x = x.clone().requires_grad_()
    y = bn(x)
    y.backward(g)
    torch.testing.assert_close(torch.cat([r0[0], r1[0]]), y.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.cat([r0[1], r1[1]]), x.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(r0[2] + r1[2], bn.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(r0[3] + r1[3], bn.bias.grad, rtol=1e-4, atol=1e-4)
    for name, b in bn.named_buffers():
        torch.testing.assert_close(r0[4][name], b)
        torch.testing.assert_close(r1[4][name], b)


@pytest.mark.parametrize("name", ["2d 5/1", "1d 4/3", "1d seq 2/3", "3d 1/3", "f64 3/1", "no stats 3/2"])
def test_uneven_batches_per_rank_equal_batchnorm_on_the_whole(two_ranks, name):
    """Each rank's count weighs its mean and centred sum of squares (a combine that averaged the ranks' means, or
    dropped the between-rank term, or counted the world's batches as equal, differs here); BatchNorm1d on [N, C]
    and [N, C, L], BatchNorm3d, float64, momentum None and no running statistics."""
    _equal_to_batchnorm_on_the_whole(*two_ranks[name])


@pytest.mark.parametrize("name", ["empty rank 1", "empty rank 0"])
def test_a_rank_with_an_empty_batch_leaves_the_others_as_batchnorm_on_theirs(two_ranks, name):
    """f5c76d1's var_mean of an empty batch was NaN, and NaN times a count of 0 made every rank's output,
    gradients and running statistics NaN (fixed in cf08474); either rank empty."""
    _equal_to_batchnorm_on_the_whole(*two_ranks[name])


# ---- generate-programs past --max-cost ------------------------------------------------------------------------

def _first_two_invalid(good_programs):
    order: list[str] = []

    def script(body, n):
        nid = narration_id_of(body)
        if nid not in order:
            order.append(nid)
        return Reply(json.dumps(invalid(good_programs[nid]) if order.index(nid) < 2 else good_programs[nid]))
    return script


def test_past_the_cap_a_held_back_repair_stays_pending_and_the_next_segments_cached_are_written(workdir, good_programs):
    """The first two segments' first replies are cached invalid; their repair turns would need requests. With
    --concurrency 1 (two workers), a worker that stopped at a held-back repair (NoMoreRequests) wrote none of the
    four cached valid segments after them."""
    with ScriptedServer(_first_two_invalid(good_programs)) as server:
        generate_programs(config(workdir, server, concurrency=1, repair_rounds=0))
        sent = len(server.requests)
        assert sent == N_SEGMENTS
        out_file(workdir).unlink()
        out_file(workdir).with_name("val.jsonl.settings.json").unlink()  # (repair_rounds changes)
        s = generate_programs(config(workdir, server, concurrency=1, repair_rounds=1, max_cost=0.0001))
        assert len(server.requests) == sent and s.stopped and "max-cost 0.0001 reached" in s.stopped
        got = {r["narration_id"]: r["status"] for r in records(workdir)}
        assert len(got) == N_SEGMENTS - 2 and set(got.values()) == {"valid"} and s.statuses == {"valid": 4}


def test_retry_invalid_past_the_cap_sends_nothing_and_keeps_the_invalid_records(workdir, good_programs):
    with ScriptedServer(_first_two_invalid(good_programs)) as server:
        generate_programs(config(workdir, server, concurrency=2, repair_rounds=0))
        sent = len(server.requests)
        before = {r["narration_id"]: r["status"] for r in records(workdir)}
        assert sorted(before.values()).count("invalid") == 2
        s = generate_programs(config(workdir, server, concurrency=2, repair_rounds=0, retry_invalid=True,
                                     max_cost=0.0001))
        assert len(server.requests) == sent and s.stopped and not s.statuses
        assert {r["narration_id"]: r["status"] for r in records(workdir)} == before


def test_sigterm_during_a_run_past_the_cap_stops_writing(workdir, good_programs):
    """Past the cap the workers go on through the cached segments: a SIGTERM still ends them."""
    script = lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))  # noqa: E731
    with ScriptedServer(script) as server:
        generate_programs(config(workdir, server, concurrency=1))
        out_file(workdir).unlink()
        fired = []

        def on_record(r):
            if not fired:
                fired.append(r)
                signal.raise_signal(signal.SIGTERM)
        s = generate_programs(config(workdir, server, concurrency=1, max_cost=0.0001), on_record=on_record,
                              reraise=False)
        assert s.interrupted == signal.SIGTERM and 1 <= len(records(workdir)) <= 2 < N_SEGMENTS


# ---- the HTTP client's per-request deadline -------------------------------------------------------------------

def test_a_timeout_mid_response_closes_the_connection_and_the_next_request_goes_on_a_fresh_one():
    """A response that completes just before the deadline keeps its connection, and the next request on it is
    answered (not failed at once as timed out, nor sent again); one whose body stalls times out at the deadline,
    its connection closed (the server sees EOF), and the request after it is answered on a new connection."""
    async def main():
        closed, conns, n = [], [], [0]

        async def handle(reader, writer):
            conns.append(writer)
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
                              .split(b":")[1])
                await reader.readexactly(length)
                n[0] += 1
                if n[0] == 2:  # stalls mid-body
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
                    closed.append(await reader.read())
                    writer.close()
                    return
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
                if n[0] == 1:  # its last bytes come near the deadline (0.2 s before it: 0.03 s was missed under
                    await asyncio.sleep(0.8)  # the suite's load in a CI run)
                writer.write(b"ok")

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = HTTPClient(f"http://127.0.0.1:{port}/v1", {}, max_connections=1, timeout=1.0)
        try:
            assert (await client.post("/x", b"{}")).body == b"ok"
            with pytest.raises(HTTPTimeout):
                await client.post("/x", b"{}")
            assert (await client.post("/x", b"{}")).body == b"ok"
            assert (await client.post("/x", b"{}")).body == b"ok"
            assert closed == [b""] and len(conns) == 2 and n[0] == 4 and client.resent == 0
        finally:
            await client.aclose()
            server.close()
    asyncio.run(main())
