"""train/distributed.py: device choice per rank, torchrun's environment and the CPU (gloo) SyncBatchNorm."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from leap_cli.errors import LeapError
from leap_cli.train import distributed
from tests.procs import spawn_ranks


def _gpus(monkeypatch, n: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


@pytest.mark.parametrize("pref", ["auto", "cuda"])
def test_each_local_rank_gets_its_own_gpu(monkeypatch, pref):
    _gpus(monkeypatch, 2)
    assert distributed.pick_device(pref, 0) == torch.device("cuda", 0)
    assert distributed.pick_device(pref, 1) == torch.device("cuda", 1)


@pytest.mark.parametrize("pref", ["auto", "cuda"])
def test_more_processes_than_gpus_is_one_line_naming_nproc(monkeypatch, pref):
    """torchrun --nproc_per_node 4 on a 2-GPU node: not CUDA's raw 'invalid device ordinal' later."""
    _gpus(monkeypatch, 2)
    with pytest.raises(LeapError) as e:
        distributed.pick_device(pref, 2)
    assert "LOCAL_RANK is 2" in str(e.value) and "2 CUDA device" in str(e.value)
    assert "--nproc_per_node 2" in e.value.fix


@pytest.mark.parametrize("rank, main", [(0, True), (1, False), (3, False)])
def test_only_rank_0_is_main(rank, main):
    assert distributed.DistInfo(rank=rank, world_size=4).is_main is main


@pytest.mark.parametrize("world, dist", [(1, False), (2, True), (8, True)])
def test_distributed_only_with_more_than_one_process(world, dist):
    assert distributed.DistInfo(world_size=world).distributed is dist


def _no_group(monkeypatch, calls: list) -> None:
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda **kw: calls.append(kw))


def test_setup_with_world_size_1_is_one_process_without_a_group(monkeypatch):
    calls = []
    _no_group(monkeypatch, calls)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    info = distributed.setup("cpu")
    assert calls == [] and info == distributed.DistInfo(device=torch.device("cpu"))


def test_setup_without_rank_is_one_process(monkeypatch):
    calls = []
    _no_group(monkeypatch, calls)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert distributed.setup("cpu") == distributed.DistInfo() and calls == []


def test_setup_under_torchrun_reads_local_rank_for_the_device(monkeypatch):
    calls = []
    _no_group(monkeypatch, calls)
    _gpus(monkeypatch, 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = distributed.setup("auto")
    assert (info.rank, info.world_size, info.local_rank, info.device) == (3, 4, 1, torch.device("cuda", 1))
    assert info.distributed and not info.is_main
    assert calls == [("set_device", torch.device("cuda", 1)), {"backend": "nccl", "rank": 3, "world_size": 4}]


def test_setup_on_cpu_uses_gloo(monkeypatch):
    calls = []
    _no_group(monkeypatch, calls)
    _gpus(monkeypatch, 0)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = distributed.setup("auto")
    assert (info.rank, info.local_rank, info.device) == (1, 1, torch.device("cpu"))
    assert calls == [{"backend": "gloo", "rank": 1, "world_size": 2}]


def test_explicit_cuda_index_beyond_the_count_is_refused(monkeypatch):
    _gpus(monkeypatch, 2)
    assert distributed.pick_device("cuda:1", local_rank=0) == torch.device("cuda", 1)
    with pytest.raises(LeapError) as e:
        distributed.pick_device("cuda:2")
    assert "2 CUDA devices" in str(e.value) and "cuda:1" in e.value.fix


@pytest.mark.parametrize("n", [0, 2])
def test_cpu_is_cpu_even_with_gpus(monkeypatch, n):
    _gpus(monkeypatch, n)
    assert distributed.pick_device("cpu", local_rank=1) == torch.device("cpu")


def test_auto_without_gpus_is_cpu_and_cuda_without_gpus_is_refused(monkeypatch):
    _gpus(monkeypatch, 0)
    assert distributed.pick_device("auto", local_rank=3) == torch.device("cpu")
    with pytest.raises(LeapError, match="no CUDA device"):
        distributed.pick_device("cuda")


@pytest.mark.parametrize("pref", ["gpu", "cuda:", "cuda:x", "CPU", "cuda0", " cpu"])
def test_a_bad_device_string_is_refused(monkeypatch, pref):
    _gpus(monkeypatch, 2)
    with pytest.raises(LeapError) as e:
        distributed.pick_device(pref, option="eval.device")
    assert "is not a device" in str(e.value) and "eval.device" in e.value.fix


# ---- CPUSyncBatchNorm -----------------------------------------------------------------------------------------
def _bn(affine=True, momentum=0.1, eps=1e-5, training=True, track=True) -> nn.BatchNorm2d:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3, eps=eps, momentum=momentum, affine=affine, track_running_stats=track)
    with torch.no_grad():
        if affine:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
        if track:
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.num_batches_tracked.fill_(4)
    return bn.train(training)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_conversion_keeps_settings_mode_and_the_same_tensors(affine, training):
    bn = _bn(affine=affine, momentum=None if affine else 0.3, eps=1e-3, training=training)
    out = distributed.convert_sync_batchnorm(bn, torch.device("cpu"))
    assert type(out) is distributed.CPUSyncBatchNorm
    assert (out.num_features, out.eps, out.momentum, out.affine, out.training) == \
        (3, 1e-3, None if affine else 0.3, affine, training)
    if affine:
        assert out.weight is bn.weight and out.bias is bn.bias
    else:
        assert out.weight is None and out.bias is None
    assert out.running_mean is bn.running_mean and out.running_var is bn.running_var
    assert out.num_batches_tracked is bn.num_batches_tracked
    assert list(out.state_dict()) == list(bn.state_dict())


def test_conversion_keeps_no_running_stats():
    bn = _bn(track=False)
    out = distributed.convert_sync_batchnorm(bn, torch.device("cpu"))
    assert out.track_running_stats is False and out.running_mean is None and out.num_batches_tracked is None
    assert list(out.state_dict()) == list(bn.state_dict()) == ["weight", "bias"]


def test_conversion_reaches_nested_children_and_keeps_the_rest():
    conv = nn.Conv2d(3, 3, 1)
    inner = nn.Sequential(conv, _bn(training=False))
    model = nn.Sequential(inner, _bn(), nn.ReLU())
    keys = list(model.state_dict())
    out = distributed.convert_sync_batchnorm(model, torch.device("cpu"))
    assert out is model and out[0] is inner and out[0][0] is conv and isinstance(out[2], nn.ReLU)
    assert type(out[0][1]) is distributed.CPUSyncBatchNorm and type(out[1]) is distributed.CPUSyncBatchNorm
    assert not out[0][1].training and out[1].training
    assert list(out.state_dict()) == keys


def test_conversion_for_cuda_is_torch_syncbatchnorm():
    out = distributed.convert_sync_batchnorm(nn.Sequential(_bn()), torch.device("cuda", 0))
    assert type(out[0]) is nn.SyncBatchNorm


# (one channel far from zero: variance from the sum of squares less the squared mean loses its digits in float32)
_OFFSETS = torch.tensor([1.0, -3.0, 100.0]).view(1, 3, 1, 1)


def _same_as_batchnorm(bn: nn.BatchNorm2d, steps: int = 3) -> None:
    ref = copy.deepcopy(bn)
    sync = distributed.convert_sync_batchnorm(copy.deepcopy(bn), torch.device("cpu"))
    assert type(sync) is distributed.CPUSyncBatchNorm
    torch.manual_seed(1)
    for _ in range(steps):
        x = torch.randn(4, 3, 5, 6) * 2 + _OFFSETS
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ref(xa), sync(xb)
        torch.testing.assert_close(yb, ya)
        g = torch.randn_like(ya)
        ya.backward(g)
        yb.backward(g)
        torch.testing.assert_close(xb.grad, xa.grad)
        for name, p in ref.named_parameters():
            torch.testing.assert_close(dict(sync.named_parameters())[name].grad, p.grad)
        for name, b in ref.named_buffers():
            torch.testing.assert_close(dict(sync.named_buffers())[name], b)
    assert list(sync.state_dict()) == list(ref.state_dict())


@pytest.mark.parametrize("training", [True, False])
def test_without_a_process_group_it_is_batchnorm(training):
    assert not torch.distributed.is_initialized()
    _same_as_batchnorm(_bn(training=training))


@pytest.fixture
def gloo(tmp_path):
    """A real one-process gloo group."""
    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
@pytest.mark.parametrize("affine", [True, False])
def test_in_a_group_training_equals_batchnorm(gloo, momentum, affine):
    """Output, gradients and running statistics (momentum and cumulative average)."""
    _same_as_batchnorm(_bn(affine=affine, momentum=momentum, eps=0.01))


def test_in_a_group_eval_equals_batchnorm(gloo):
    _same_as_batchnorm(_bn(training=False), steps=1)


def test_in_a_group_without_running_stats_equals_batchnorm(gloo):
    _same_as_batchnorm(_bn(track=False))


def _two_ranks(rank: int, store: str, xs: list, gs: list, bns: list, out: str) -> None:
    torch.distributed.init_process_group("gloo", store=torch.distributed.FileStore(store, 2), rank=rank, world_size=2)
    try:
        results = []
        half = slice(rank * 3, rank * 3 + 3)  # (one half of a batch of 6 each)
        for bn in bns:
            bn = copy.deepcopy(bn)  # (spawn passes tensors in shared memory: the ranks' updates would add up in one)
            sync = distributed.convert_sync_batchnorm(bn, torch.device("cpu"))
            ys, dxs = [], []
            for x, g in zip(xs, gs):
                xr = x[half].clone().requires_grad_()
                y = sync(xr)
                y.backward(g[half])
                ys.append(y.detach())
                dxs.append(xr.grad)
            results.append({"y": ys, "dx": dxs, "dw": sync.weight.grad, "db": sync.bias.grad,
                            "buffers": dict(sync.named_buffers())})
        torch.save(results, out.format(rank))
        torch.distributed.barrier()  # (gloo aborts a rank whose peer leaves first)
    finally:
        torch.distributed.destroy_process_group()


def test_two_processes_with_half_a_batch_each_equal_batchnorm_on_the_whole(tmp_path):
    """Statistics span both ranks: outputs, input gradients and running statistics (momentum 0.1 and None) as on
    one process, and the parameter gradients sum (what DDP's all-reduce then averages) to the whole batch's."""
    bns = [_bn(momentum=0.1), _bn(momentum=None)]
    torch.manual_seed(2)
    xs = [torch.randn(6, 3, 4, 5) * 2 + _OFFSETS for _ in range(3)]
    gs = [torch.randn(6, 3, 4, 5) for _ in range(3)]
    spawn_ranks(_two_ranks, (str(tmp_path / "store"), xs, gs, bns, str(tmp_path / "r{}.pt")),
                [tmp_path / f"r{r}.pt" for r in range(2)])
    ranks = [torch.load(tmp_path / f"r{r}.pt") for r in range(2)]
    for bn, r0, r1 in zip(bns, *ranks):
        for x, g, y0, y1, dx0, dx1 in zip(xs, gs, r0["y"], r1["y"], r0["dx"], r1["dx"]):
            x = x.clone().requires_grad_()
            y = bn(x)
            y.backward(g)
            torch.testing.assert_close(torch.cat([y0, y1]), y.detach())
            torch.testing.assert_close(torch.cat([dx0, dx1]), x.grad)
        # (two half sums against one whole sum: float32 rounding of the offset channel, ~4e-6 relative)
        torch.testing.assert_close(r0["dw"] + r1["dw"], bn.weight.grad, rtol=2e-5, atol=1e-4)
        torch.testing.assert_close(r0["db"] + r1["db"], bn.bias.grad, rtol=2e-5, atol=1e-4)
        for name, b in bn.named_buffers():
            torch.testing.assert_close(r0["buffers"][name], b)
            torch.testing.assert_close(r1["buffers"][name], b)

