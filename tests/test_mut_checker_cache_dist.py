"""Tests written from a mutation run over ``programs/checker.py`` (the reply checks' child process),
``extract/cache.py`` (extract's frame cache), ``train/distributed.py`` (torchrun / DDP set-up, CPU gloo) and
``train/data.py`` (the training DataLoaders): each pins a behaviour that no earlier test held, so that a change
which breaks it fails here. No GPU is needed."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time

import pytest

from leap_cli.programs.validate import Labels
from tests.procs import spawn_ranks
from tests.test_programs_validate import S, nouns, prog, verbs  # noqa: F401 (the class files' fixtures)


# ---- programs/checker.py: the reply checks' child process ------------------------------------------------------

def _checks(verbs, nouns):  # noqa: F811
    """Replies with and without findings, and what ``verify_reply`` makes of each."""
    from leap_cli.programs.reply import verify_reply

    one, three = json.dumps(prog([S("wash", "plate")])), json.dumps(prog([S("wash", "plate")] * 3))
    cases = [(one, Labels(2, 2)), (one, Labels(2, 3)), (three, Labels(2, 2)), ("not json", Labels(2, 2))]
    return cases, [verify_reply(t, verbs, nouns, lab, 2) for t, lab in cases]


def test_the_child_frames_are_read_once_each_however_the_pipe_splits_them():
    """Frames that arrive split across reads, or several in one read, reach the checker once each (a frame read
    again would be answered again, and the buffer would grow for the whole run)."""
    import pickle

    from leap_cli.programs.checker import _Protocol
    from leap_cli.programs.reply import frame

    class Owner:
        def __init__(self):
            self.got = []

        def _received(self, msg):
            self.got.append(msg)

    msgs = [None, [(1, {"a": 1}, [])], [(2, None, ["x" * 50]), (3, {"b": [1, 2]}, [])], [(4, {}, [])]]
    data = b"".join(frame(m) for m in msgs)
    assert pickle.loads(frame(msgs[1])[4:]) == msgs[1]  # (a frame: its size, then the pickle)
    for chunk in (1, 3, 7, len(data)):
        owner = Owner()
        proto = _Protocol(owner)
        for i in range(0, len(data), chunk):
            proto.pipe_data_received(1, data[i:i + chunk])
        proto.pipe_data_received(2, b"stderr is not read")
        assert owner.got == msgs, chunk
        assert not proto.buf  # nothing left over once every frame is read


def test_a_child_slower_than_the_stall_limit_but_answering_is_not_stopped(verbs, nouns, monkeypatch):  # noqa: F811
    """A child that answers after a pause shorter than ``STALL_S`` keeps checking: only a check left unanswered
    for ``STALL_S`` stops it."""
    from leap_cli.programs import checker as checker_module

    monkeypatch.setattr(checker_module, "STALL_S", 1.5)
    cases, want = _checks(verbs, nouns)

    async def run():
        checker = checker_module.RemoteChecker(verbs, nouns, 2)
        await checker.start()
        assert checker.ready
        pid = checker.transport.get_pid()
        os.kill(pid, signal.SIGSTOP)  # a pause (a busy machine), shorter than STALL_S
        pending = [asyncio.ensure_future(checker.check(t, lab)) for t, lab in cases]
        await asyncio.sleep(0.6)  # the watch looks at least once meanwhile (every STALL_S / 4)
        os.kill(pid, signal.SIGCONT)
        got = await asyncio.wait_for(asyncio.gather(*pending), 10)
        ended = checker.ended
        await checker.aclose()
        return got, ended, checker

    got, ended, checker = asyncio.run(run())
    assert got == want
    assert not ended and checker.remote == len(cases) and checker.local == 0


def test_a_stuck_child_is_stopped_promptly_even_while_new_checks_keep_coming(verbs, nouns, monkeypatch,  # noqa: F811
                                                                              caplog):
    """The oldest unanswered check counts: replies arriving all the time must not keep a stuck child in use.
    It is stopped within about ``STALL_S`` (plus one look of the watch), killed (closing does not wait for it),
    and every check is answered here."""
    from leap_cli.programs import checker as checker_module

    monkeypatch.setattr(checker_module, "STALL_S", 1.0)
    cases, want = _checks(verbs, nouns)

    async def run():
        checker = checker_module.RemoteChecker(verbs, nouns, 2)
        await checker.start()
        assert checker.ready
        os.kill(checker.transport.get_pid(), signal.SIGSTOP)
        t0 = time.monotonic()
        tasks, i = [], 0
        while not checker.ended and time.monotonic() - t0 < 6:
            t, lab = cases[i % len(cases)]
            tasks.append((asyncio.ensure_future(checker.check(t, lab)), i % len(cases)))
            i += 1
            await asyncio.sleep(0.05)
        stopped_after = time.monotonic() - t0
        got = await asyncio.wait_for(asyncio.gather(*(t for t, _ in tasks)), 10)
        t1 = time.monotonic()
        await checker.aclose()
        return got, [want[k] for _, k in tasks], stopped_after, time.monotonic() - t1, checker

    got, expected, stopped_after, close_s, checker = asyncio.run(run())
    assert checker.ended and stopped_after < 3.0, stopped_after  # STALL_S 1.0, a look every 0.25 s
    assert got == expected and checker.remote == 0
    assert close_s < 3.0, close_s  # the stuck child was killed: closing does not wait out its 5 s
    assert "answered no check" in caplog.text


def test_a_check_cancelled_while_the_child_has_it_does_not_lose_the_others(verbs, nouns):  # noqa: F811
    """The stage stopping cancels checks in flight: the child's answer to a cancelled check is dropped, and the
    checks sent with it are still answered by the child."""
    from leap_cli.programs.checker import RemoteChecker

    cases, want = _checks(verbs, nouns)

    async def run():
        checker = RemoteChecker(verbs, nouns, 2)
        await checker.start()
        assert checker.ready
        tasks = [asyncio.ensure_future(checker.check(t, lab)) for t, lab in cases]
        await asyncio.sleep(0)  # every check is pending
        await asyncio.sleep(0)  # and the batch is written
        tasks[0].cancel()
        got = await asyncio.wait_for(asyncio.gather(*tasks[1:]), 10)
        ended = checker.ended
        await checker.aclose()
        return got, ended, checker

    got, ended, checker = asyncio.run(run())
    assert got == want[1:]
    assert not ended and checker.local == 0


def test_a_checker_process_that_cannot_run_leaves_the_checks_here_at_once(verbs, nouns, monkeypatch,  # noqa: F811
                                                                          caplog):
    """A child that exits before it is ready (here: an interpreter that is no Python) does not hold the stage
    for the whole wait; every check runs in this process, with one warning."""
    from leap_cli.programs.checker import RemoteChecker

    monkeypatch.setattr(sys, "executable", "/bin/false")
    cases, want = _checks(verbs, nouns)

    async def run():
        checker = RemoteChecker(verbs, nouns, 2)
        t0 = time.monotonic()
        await checker.start(wait=8.0)
        started = time.monotonic() - t0
        got = await asyncio.gather(*(checker.check(t, lab) for t, lab in cases))
        await checker.aclose()
        return got, started, checker

    with caplog.at_level(logging.WARNING):
        got, started, checker = asyncio.run(run())
    assert started < 4.0, started
    assert got == want and checker.ended and checker.local == len(cases) and checker.remote == 0
    assert "checker process ended" in caplog.text


def test_a_checker_process_that_ends_while_idle_is_reported_and_a_normal_close_is_not(verbs, nouns,  # noqa: F811
                                                                                       caplog):
    """The child ending when no check is pending is still worth a warning (the checks go on here, slower);
    closing it at the end of a run is not."""
    from leap_cli.programs.checker import RemoteChecker

    cases, want = _checks(verbs, nouns)

    async def run(kill: bool):
        checker = RemoteChecker(verbs, nouns, 2)
        await checker.start()
        assert checker.ready
        first = await asyncio.gather(*(checker.check(t, lab) for t, lab in cases))
        if kill:
            checker.transport.kill()
            for _ in range(100):
                if checker.ended:
                    break
                await asyncio.sleep(0.05)
        after = await asyncio.gather(*(checker.check(t, lab) for t, lab in cases))
        await checker.aclose()
        return first + after, checker

    with caplog.at_level(logging.WARNING):
        got, checker = asyncio.run(run(False))
    assert got == want + want and checker.remote == 2 * len(cases) and checker.ended
    assert "checker process" not in caplog.text  # a normal close: no warning
    with caplog.at_level(logging.WARNING):
        got, checker = asyncio.run(run(True))
    assert got == want + want and checker.local == len(cases)
    assert "checker process ended" in caplog.text


# ---- extract/cache.py: extract's frame cache ------------------------------------------------------------------

def test_a_file_that_is_no_cache_entry_is_neither_held_nor_loaded(tmp_path):
    """An entry whose first bytes are not ``MAGIC`` (another format, a damaged start) is not an entry, even when
    the rest of it would read as one: build-shards decodes the segment instead."""
    from tests.test_extract_runner_cache import _stored

    cache, frames = _stored(tmp_path, 0.0, 2.0)
    path = cache.path("P01_01", "P01_01_0")
    blob = path.read_bytes()
    path.write_bytes(b"LEAPJPG2" + blob[8:])  # (an older format's magic, the same layout after it)
    assert not cache.holds(path, frames)
    assert cache.frame_count(path) is None
    assert cache.load("P01_01", "P01_01_0", frames) is None


def test_a_truncated_entry_header_is_not_held_and_does_not_crash(tmp_path):
    """An entry cut off inside its frame table (a full disk, an interrupted copy) is not held: extract writes it
    again instead of failing on the segment."""
    from tests.test_extract_runner_cache import _stored

    cache, frames = _stored(tmp_path, 0.0, 2.0)
    path = cache.path("P01_01", "P01_01_0")
    blob = path.read_bytes()
    path.write_bytes(blob[:8 + 4 + 12 * 5 + 3])  # magic, count, 5 whole frame rows and part of the sixth
    assert cache.frame_count(path) == 16
    assert not cache.holds(path, frames)
    assert cache.load("P01_01", "P01_01_0", frames) is None
    cache2, _ = _stored(tmp_path, 0.0, 2.0)  # stored again: the whole entry is back
    assert path.read_bytes() == blob and cache2.holds(path, frames)


def test_storing_an_entry_that_is_there_does_not_read_the_frames_again(tmp_path):
    """A second extract of the same segment finds its entry (same frames) and neither reads nor encodes the frames;
    an entry of other frames is replaced."""
    from types import SimpleNamespace

    import numpy as np

    from leap_cli.epic.timing import MP4, FrameClock
    from leap_cli.extract.cache import FrameCache
    from tests.extract_kitchen import FPS

    cache = FrameCache(tmp_path / "fc", frames=4)
    reads = []

    def ctx_for(start, stop):
        seg = SimpleNamespace(video_id="P01_01", narration_id="P01_01_0", start=start, stop=stop)
        ctx = SimpleNamespace(clock=FrameClock(MP4, FPS, 6 * FPS), segment=seg, read_frames=lambda *a: None,
                              images_at_most=lambda nums, side, colour: reads.append(list(nums)) or
                              [np.full((8, 8, 3), n, np.uint8) for n in nums])
        return ctx, seg

    ctx, seg = ctx_for(0.0, 2.0)
    assert cache.store(ctx, seg) and len(reads) == 1
    assert cache.store(ctx, seg) and len(reads) == 1  # held: not read again
    ctx, seg = ctx_for(1.0, 3.0)
    assert cache.store(ctx, seg) and len(reads) == 2 and reads[1] == cache.frames_of(ctx)


def test_storing_an_entry_removes_both_earlier_formats(tmp_path):
    """The ``.npz`` archives of earlier leaps (before and after ``.v2.``) give their disk space back once the
    new entry is written."""
    from tests.test_extract_runner_cache import _stored

    folder = tmp_path / "fc" / "P01_01"
    folder.mkdir(parents=True)
    old = [folder / "P01_01_0.s256q90.npz", folder / "P01_01_0.v2.s256q90.npz"]
    keep = folder / "P01_01_0.v2.s128q90.npz"  # (other settings: not this entry's)
    for p in old + [keep]:
        p.write_bytes(b"old")
    cache, _ = _stored(tmp_path, 0.0, 2.0)
    assert [p.exists() for p in old] == [False, False] and keep.exists()
    assert cache.path("P01_01", "P01_01_0").exists()


def test_an_unusable_source_record_is_no_record(tmp_path):
    """A source.json that is JSON but not an object, or whose source_stat is not a list, is read as no record
    (entries of an earlier leap), not as a crash nor as another source; ``claim`` then records the source."""
    from leap_cli.extract.cache import SOURCE, FrameCache

    cache = FrameCache(tmp_path / "fc")
    folder = tmp_path / "fc" / "P01_01"
    folder.mkdir(parents=True)
    for text in ("[1, 2]", '"x"', '{"source_stat": "10-20"}', '{"source_stat": 7}'):
        (folder / SOURCE).write_text(text)
        assert cache.source_of("P01_01") is None, text
        assert cache.same_source("P01_01", [10, 20]), text
    cache.claim("P01_01", [10, 20])
    assert cache.source_of("P01_01") == [10, 20]


def test_a_video_without_a_source_stat_keeps_its_entries_and_record(tmp_path):
    """``stat`` None (a source whose size and time are not known): the entries are used and neither they nor the
    recorded source are touched by ``claim``."""
    from tests.test_extract_runner_cache import _stored

    cache, frames = _stored(tmp_path, 0.0, 2.0)
    cache.claim("P01_01", [10, 20])
    cache, frames = _stored(tmp_path, 0.0, 2.0)
    record = (tmp_path / "fc" / "P01_01" / "source.json").read_text()
    cache.claim("P01_01", None)
    assert (tmp_path / "fc" / "P01_01" / "source.json").read_text() == record
    assert cache.holds(cache.path("P01_01", "P01_01_0"), frames)
    assert cache.same_source("P01_01", None) and cache.same_source("P01_01", None, frames=True)
    assert not cache.same_source("P01_01", [10, 21])


# ---- train/distributed.py: torchrun's environment, gloo on the CPU --------------------------------------------

def test_more_processes_than_gpus_names_the_node_gpu_count_whatever_the_rank(monkeypatch):
    """--nproc_per_node 4 on a 2-GPU node: local rank 3 is told to start 2 per node (the GPU count), not 3."""
    import torch

    from leap_cli.errors import LeapError
    from leap_cli.train import distributed
    from tests.test_distributed import _gpus

    _gpus(monkeypatch, 2)
    with pytest.raises(LeapError) as e:
        distributed.pick_device("cuda", 3)
    assert "LOCAL_RANK is 3" in str(e.value) and "--nproc_per_node 2)" in e.value.fix
    assert distributed.pick_device("cuda", 1) == torch.device("cuda", 1)


def test_setup_with_rank_but_no_world_size_is_one_process(monkeypatch):
    """RANK left in the environment without WORLD_SIZE (not torchrun): one process, no group, no KeyError."""
    import torch

    from leap_cli.train import distributed
    from tests.test_distributed import _no_group

    calls = []
    _no_group(monkeypatch, calls)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.setup("cpu") == distributed.DistInfo(device=torch.device("cpu")) and calls == []


def test_setup_without_local_rank_is_local_rank_0_and_joins_no_group_twice(monkeypatch):
    """LOCAL_RANK unset (a launcher that gives RANK and WORLD_SIZE only): local rank 0, the first GPU. A process
    group that is already there (set up by the caller) is used, not initialised again."""
    import torch

    from leap_cli.train import distributed
    from tests.test_distributed import _gpus, _no_group

    calls = []
    _no_group(monkeypatch, calls)
    _gpus(monkeypatch, 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    info = distributed.setup("auto")
    assert (info.rank, info.world_size, info.local_rank, info.device) == (2, 4, 0, torch.device("cuda", 0))
    assert calls == [("set_device", torch.device("cuda", 0)), {"backend": "nccl", "rank": 2, "world_size": 4}]
    calls.clear()
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    info = distributed.setup("cpu")
    assert info.device == torch.device("cpu") and info.distributed and calls == []


def test_one_process_sums_alone_and_cleans_up_without_a_group():
    """Without a process group: the sums are this process's own (float, the same values) and ``cleanup`` and
    ``barrier`` have nothing to do (no error)."""
    import torch

    from leap_cli.train import distributed

    assert not torch.distributed.is_initialized()
    got = distributed.all_reduce_sum([1.5, 2, 0.25], distributed.DistInfo())
    assert got == [1.5, 2, 0.25]
    distributed.barrier(distributed.DistInfo())
    distributed.cleanup()
    assert not torch.distributed.is_initialized()


def _sum_ranks(rank: int, store: str, out: str) -> None:
    import pickle
    import time as _time

    import torch

    from leap_cli.train import distributed

    torch.distributed.init_process_group("gloo", store=torch.distributed.FileStore(store, 2), rank=rank, world_size=2)
    try:
        info = distributed.DistInfo(rank=rank, world_size=2)
        # per rank: a count and a loss sum past float32's 24 bits (an epoch of EPIC's samples, summed losses)
        values = [3.0 + rank, 2.0 ** 30 + 1 + rank * 0.5, 0.1 * (rank + 1)]
        got = distributed.all_reduce_sum(values, info)
        if rank == 1:
            _time.sleep(0.8)  # rank 0 waits for it at the barrier
        t0 = _time.monotonic()
        distributed.barrier(info)
        waited = _time.monotonic() - t0
        with open(out.format(rank), "wb") as f:
            pickle.dump((got, waited), f)
    finally:
        distributed.cleanup()


def test_two_processes_sum_in_float64_and_wait_for_each_other_at_the_barrier(tmp_path):
    """``all_reduce_sum`` over two gloo processes gives both the exact sums (float64: a total past 2**24 keeps
    its units), and ``barrier`` holds a rank until the other arrives."""
    import pickle

    spawn_ranks(_sum_ranks, (str(tmp_path / "store"), str(tmp_path / "r{}.pkl")),
                [tmp_path / f"r{r}.pkl" for r in range(2)])
    r0, r1 = (pickle.loads((tmp_path / f"r{r}.pkl").read_bytes()) for r in range(2))
    want = [7.0, 2.0 ** 31 + 2.5, 0.1 + 0.2]
    assert r0[0] == r1[0]
    assert r0[0][:2] == want[:2] and r0[0][2] == pytest.approx(want[2], abs=1e-12)
    assert r0[1] > 0.5, r0[1]  # rank 0 waited for rank 1's sleep


def test_the_cpu_sync_batchnorm_takes_2d_features_and_refuses_1d():
    """A converted BatchNorm1d over (batch, features) works as BatchNorm1d (outside a group and in eval); a 1-D
    input is refused with a plain message."""
    import torch
    from torch import nn

    from leap_cli.train import distributed

    torch.manual_seed(0)
    bn = nn.BatchNorm1d(4)
    sync = distributed.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm1d(4)), torch.device("cpu"))[0]
    assert isinstance(sync, distributed.CPUSyncBatchNorm)
    x = torch.randn(8, 4) * 3 + 1
    for mode in (True, False):
        bn.train(mode), sync.train(mode)
        torch.testing.assert_close(sync(x), bn(x))
    with pytest.raises(ValueError, match="expected at least 2D input"):
        sync(torch.randn(4))


def test_in_a_group_a_large_nearly_constant_channel_gives_no_nan(tmp_path):
    """Sums and squared sums in one pass can give a (slightly) negative variance for a large, nearly constant
    channel (float32): the variance is clamped at 0, so the output stays finite instead of NaN."""
    import torch
    from torch import nn

    from leap_cli.train import distributed

    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        sync = distributed.convert_sync_batchnorm(nn.BatchNorm2d(3), torch.device("cpu")).train()
        torch.manual_seed(0)
        x = torch.full((6, 3, 4, 5), 3333.3) + torch.randn(6, 3, 4, 5) * 1e-4
        y = sync(x)
        assert torch.isfinite(y).all()
        assert torch.isfinite(sync.running_var).all() and (sync.running_var >= 0).all()
    finally:
        torch.distributed.destroy_process_group()


# ---- train/data.py: the training data source and its DataLoaders ----------------------------------------------

from tests.test_train import shard_work  # noqa: E402,F401 (the 8+val sample shards, built once per module)


def _cfg(*extra):
    from leap_cli.train.config import load_config

    return load_config(None, ["model.img_size=32", "model.num_frames=4", "data.batch_size=2", "data.shuffle_buffer=4",
                              *extra])


def _copy(shard_work, name, tmp_path, edit):
    import shutil

    folder = tmp_path / name
    shutil.copytree(shard_work / "shards" / name, folder)
    m = json.loads((folder / "manifest.json").read_text())
    edit(m)
    (folder / "manifest.json").write_text(json.dumps(m))
    return folder


def test_class_counts_leave_out_end_and_none(tmp_path):
    """step_verbs = the verb classes + END; objects = the noun classes + "none" + END; no vocabulary: refused."""
    from leap_cli.errors import LeapError
    from leap_cli.train.data import class_counts

    targets = {"step_verbs": ["take", "put", "<END>"], "objects": ["cup", "plate", "knife", "none", "<END>"]}
    assert class_counts({"targets": targets}, tmp_path / "manifest.json") == (2, 3)
    for manifest in ({}, {"targets": None}, {"targets": {}}):
        with pytest.raises(LeapError, match="no targets vocabulary"):
            class_counts(manifest, tmp_path / "manifest.json")


def test_shards_of_another_task_or_too_few_samples_are_refused(shard_work):
    from leap_cli.errors import LeapError
    from leap_cli.train.data import ShardSource
    from leap_cli.train.distributed import DistInfo

    train = shard_work / "shards" / "train"
    with pytest.raises(LeapError, match="the shards are for recognition but data.task is anticipation"):
        ShardSource(train, None, _cfg("data.task=anticipation"), DistInfo())
    with pytest.raises(LeapError, match=r"8 training samples per process, fewer than data.batch_size=9"):
        ShardSource(train, None, _cfg("data.batch_size=9"), DistInfo())
    assert ShardSource(train, None, _cfg("data.batch_size=8"), DistInfo()).batches_per_epoch == 1


def test_each_rank_gets_its_own_half_and_only_rank_0_warns(shard_work, tmp_path, caplog):
    """Two processes: each trains on its own half of the samples (together all of them, once), and only rank 0
    logs the shards' warnings (not one per process)."""
    from leap_cli.train.data import ShardSource
    from leap_cli.train.distributed import DistInfo

    def skip(m):
        m["counts"]["segments"] += 2
        m["counts"]["skipped"] += 2

    train = _copy(shard_work, "train", tmp_path, skip)
    seen = []
    for rank in (0, 1):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            source = ShardSource(train, train, _cfg(), DistInfo(rank=rank, world_size=2))
        for said in ("the shards hold 8 of the split's 10 segments", "the validation shards hold 8 of the split's 10",
                     "also in the training shards"):
            assert (said in caplog.text) is (rank == 0), (rank, said, caplog.text)
        assert source.batches_per_epoch == 2
        seen.append([n for b in source.train_batches(1) for n in b["narration_id"]])
    assert len(seen[0]) == len(seen[1]) == 4 and not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(f"P01_01_{i}" for i in range(8))


def test_validation_batches_hold_every_sample_once_at_the_eval_batch_size(shard_work):
    """Validation batches are data.eval_batch_size samples, the last one partial: every validation sample once.
    The loaders are made once per run; the validation workers do not persist, and nothing is pinned on the CPU."""
    from leap_cli.common import usable_cpus
    from leap_cli.train.data import ShardSource
    from leap_cli.train.distributed import DistInfo

    source = ShardSource(shard_work / "shards" / "train", shard_work / "shards" / "val",
                         _cfg("data.eval_batch_size=3", "data.num_workers=64"), DistInfo())
    n = source.val_size
    assert n % 3, n  # (a partial last batch to keep)
    sizes = [len(b["narration_id"]) for b in source.val_batches()]
    assert sizes == [3] * (n // 3) + [n % 3]
    loader = source._loaders["val"]  # (one DataLoader for the run: made at the first validation, kept)
    source.val_batches()
    assert source._loaders["val"] is loader
    assert not loader.persistent_workers and not loader.pin_memory
    assert 1 <= loader.num_workers <= usable_cpus()  # data.num_workers 64 on this machine: one per CPU at most


def test_validation_shards_of_another_vocabulary_are_refused_and_missing_ones_are_said(shard_work, tmp_path, caplog):
    from leap_cli.errors import LeapError
    from leap_cli.train.data import ShardSource
    from leap_cli.train.distributed import DistInfo

    def other(m):
        m["targets"]["objects"] = m["targets"]["objects"][:-2] + ["spoon"] + m["targets"]["objects"][-2:]

    val = _copy(shard_work, "val", tmp_path, other)
    with pytest.raises(LeapError, match="the validation shards use another targets vocabulary"):
        ShardSource(shard_work / "shards" / "train", val, _cfg(), DistInfo())
    with caplog.at_level(logging.WARNING):
        source = ShardSource(shard_work / "shards" / "train", tmp_path / "nothing", _cfg(), DistInfo())
    assert source.val_batches() is None
    assert "no validation shards in" in caplog.text


def test_shards_without_a_valid_program_train_without_program_heads(shard_work, tmp_path, caplog):
    """No sample with a valid program: no program targets (no heads that nothing would train), and a warning
    that training uses L_CE only."""
    from leap_cli.train.data import ShardSource
    from leap_cli.train.distributed import DistInfo

    def none(m):
        m["counts"]["with_program"] = 0

    assert ShardSource(shard_work / "shards" / "train", None, _cfg(), DistInfo()).program_targets
    train = _copy(shard_work, "train", tmp_path, none)
    with caplog.at_level(logging.WARNING):
        source = ShardSource(train, None, _cfg("loss.program_loss=true"), DistInfo())
    assert source.program_targets is None
    assert "no sample has a valid program; training with L_CE only" in caplog.text


def test_ranks_of_an_uneven_split_take_as_many_steps(shard_work):
    """8 samples over 3 processes: each rank is padded to 3 samples (3 steps of batch 1), so no rank waits at a
    DDP all-reduce that another never reaches."""
    from leap_cli.train.data import ShardSource
    from leap_cli.train.distributed import DistInfo

    steps, seen = [], set()
    for rank in range(3):
        source = ShardSource(shard_work / "shards" / "train", None, _cfg("data.batch_size=1"),
                             DistInfo(rank=rank, world_size=3))
        batches = list(source.train_batches(1))
        steps.append((source.batches_per_epoch, len(batches)))
        seen |= {n for b in batches for n in b["narration_id"]}
    assert steps == [(3, 3)] * 3
    assert seen == {f"P01_01_{i}" for i in range(8)}


def test_training_drops_the_partial_last_batch_and_reads_unmerged_validation_parts(shard_work, tmp_path):
    """8 samples in batches of 3: two steps of 3 (the partial batch would be a step of another size). Validation
    shards written by ``--shard i/n`` jobs and not merged yet are read (their parts' manifests), not skipped."""
    import shutil

    from leap_cli.train.data import ShardSource
    from leap_cli.train.distributed import DistInfo

    val = tmp_path / "val"
    shutil.copytree(shard_work / "shards" / "val", val)
    (val / "manifest.json").rename(val / "manifest.shard0of1.json")
    source = ShardSource(shard_work / "shards" / "train", val, _cfg("data.batch_size=3"), DistInfo())
    assert [len(b["narration_id"]) for b in source.train_batches(1)] == [3, 3] and source.batches_per_epoch == 2
    whole = ShardSource(shard_work / "shards" / "train", shard_work / "shards" / "val", _cfg(), DistInfo())
    assert source.val is not None and source.val_size == whole.val_size
