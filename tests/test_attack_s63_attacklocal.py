"""Attacks on the local relation as the BatchNorm module plus one autograd Function (``_LocalRelation``, session
63): outputs, every gradient, the running statistics and the drop-path draws against the official Conv3d /
BatchNorm3d module path (``LocalMHRA.forward`` on [N, C, T, H, W]) in float64, over frame counts, temporal
kernels, batch 1, one patch, strided tokens, partial freezing, weight sharing, the meta device, torch.compile,
a second derivative and a 2-process gloo run with the CPU SyncBatchNorm."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from leap_cli.model.uniformerv2 import LocalMHRA, ResidualAttentionBlock, _LocalRelation
from leap_cli.train import distributed
from tests.procs import spawn_ranks


def _official(block: ResidualAttentionBlock, lmhra: LocalMHRA, x: torch.Tensor, T: int) -> torch.Tensor:
    """The official layout: the patch tokens as [N, C, T, HW, 1] through the Conv3d/BatchNorm3d modules, drop path
    per clip, nothing added to the class tokens. (Contiguous: BatchNorm3d's CPU backward is wrong on a
    [1, C, 1, HW, 1] channels-last view, torch 2.14: the ambiguous layout, not the code under test.)"""
    NT, L1, C = x.shape
    N, L = NT // T, L1 - 1
    v = x[:, 1:].reshape(N, T, L, C).permute(0, 3, 1, 2).reshape(N, C, T, L, 1).contiguous()
    rel = lmhra(v).reshape(N, C, T, L).permute(0, 2, 3, 1)  # [N, T, HW, C]
    return x + F.pad(block.drop_path_local(rel).reshape(NT, L, C), (0, 0, 1, 0))


def _function(block: ResidualAttentionBlock, lmhra: LocalMHRA, x: torch.Tensor, T: int) -> torch.Tensor:
    return block._local(x, lmhra, T)


def _block(dim: int = 12, kernel_t: int = 3, drop_path: float = 0.0, dtype=torch.float64) -> ResidualAttentionBlock:
    torch.manual_seed(0)
    block = ResidualAttentionBlock(dim, 2, drop_path=drop_path)
    if kernel_t != 3:  # (the blocks build kernel 3; LocalMHRA takes any odd kernel)
        block.lmhra1 = LocalMHRA(dim, kernel_t=kernel_t)
    block = block.to(dtype).train()
    bn = block.lmhra1.pos_embed[0]
    with torch.no_grad():  # every parameter drawn (the expand is zero-initialised), running statistics not fresh
        for p in block.parameters():
            p.normal_(0, 0.3)
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.num_batches_tracked.fill_(3)
    return block


def _run(block, x, T, fn, x_grad=True, seed=7, loss=None):
    """Output, the input's and the parameters' gradients, the relation's state and the next random number
    after ``fn`` on a copy of ``block`` (drop path seeded)."""
    block = copy.deepcopy(block)
    x = x.detach().requires_grad_(x_grad)
    torch.manual_seed(seed)
    y = fn(block, block.lmhra1, x, T)
    if y.requires_grad:
        if loss is None:
            w = torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=y.dtype)
            (y * w).sum().backward()
        else:
            loss(y).backward()
    grads = {n: p.grad for n, p in block.named_parameters() if p.grad is not None}
    return y.detach(), x.grad, grads, copy.deepcopy(block.lmhra1.state_dict()), torch.rand(1).item()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative difference; absolute below a norm of 1 (the expand bias's gradient is all rows less the class
    rows: 1e-15, not 0, in float64 when only the class tokens have a gradient)."""
    return ((a - b).norm() / b.norm().clamp_min(1.0)).item()


def _assert_same(got, want, tol: float = 1e-12) -> None:
    y, gx, grads, state, rng = got
    assert y.shape == want[0].shape and _rel(y, want[0]) < tol
    assert (gx is None) == (want[1] is None)
    if gx is not None:
        assert _rel(gx, want[1]) < tol
    assert grads.keys() == want[2].keys()
    for name in grads:
        assert _rel(grads[name], want[2][name]) < tol, name
    for k in state:  # running statistics and num_batches_tracked, updated as by the modules
        assert torch.allclose(state[k].double(), want[3][k].double(), rtol=1e-12, atol=1e-14), k
    assert rng == want[4]  # the same random draws, no more


# (T, kernel_t, N, HW): every frame count with every kernel, batch 1 and a single patch among them
_SHAPES = [(1, 1, 1, 9), (1, 3, 2, 1), (1, 5, 1, 3), (2, 1, 3, 1), (2, 3, 1, 9), (2, 5, 2, 3),
           (3, 1, 1, 3), (3, 3, 3, 9), (3, 5, 1, 1), (8, 1, 2, 9), (8, 3, 1, 1), (8, 5, 1, 3)]


@pytest.mark.parametrize("onednn", [True, False])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("drop_path", [0.0, 0.5])
def test_the_function_is_the_official_module_path_in_float64(drop_path, mode, onednn, monkeypatch):
    """Both temporal convolutions: oneDNN's (the CPU's) and the frame-slice multiply-adds (CUDA's, compile's)."""
    monkeypatch.setattr(_LocalRelation, "onednn", staticmethod(lambda x: onednn))
    for T, k, N, L in _SHAPES:
        block = _block(kernel_t=k, drop_path=drop_path).train(mode == "train")
        x = torch.randn(N * T, L + 1, 12, generator=torch.Generator().manual_seed(T * 10 + L), dtype=torch.float64)
        _assert_same(_run(block, x, T, _function), _run(block, x, T, _official))


def _strided(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    if kind == "sequence-first":  # the official [1+HW, N*T, C] storage seen batch-first
        return torch.randn(10, 6, 12, generator=g, dtype=torch.float64).transpose(0, 1)
    if kind == "channels-first":
        return torch.randn(6, 12, 10, generator=g, dtype=torch.float64).transpose(1, 2)
    if kind == "every other channel":
        return torch.randn(6, 10, 24, generator=g, dtype=torch.float64)[:, :, ::2]
    return torch.randn(12, 10, 12, generator=g, dtype=torch.float64)[::2]  # every other frame


@pytest.mark.parametrize("drop_path", [0.0, 0.5])
@pytest.mark.parametrize("kind", ["sequence-first", "channels-first", "every other channel", "every other frame"])
def test_strided_tokens_give_the_official_results(kind, drop_path):
    """The sum with the tokens takes a strided x's layout; the Function viewed it as rows (a RuntimeError for
    the permuted layouts, where the module path before took any tokens)."""
    block = _block(drop_path=drop_path)
    x = _strided(kind)
    assert not x.is_contiguous()

    got = _run(block, x, 3, _function)  # (x.detach() keeps the strides)
    _assert_same(got, _run(block, x.contiguous(), 3, _official))
    assert got[0].is_contiguous()


@pytest.mark.parametrize("loss", ["sum", "class tokens only", "strided gradient"])
def test_gradients_that_come_expanded_or_strided(loss):
    fns = {"sum": lambda y: y.sum(), "class tokens only": lambda y: y[:, 0].square().sum(),
           "strided gradient": lambda y: (y * torch.randn(12, 10, 6, dtype=y.dtype).permute(2, 1, 0)).sum()}
    block = _block(drop_path=0.5)
    x = torch.randn(6, 10, 12, dtype=torch.float64)
    torch.manual_seed(1)
    got = _run(block, x, 3, _function, loss=fns[loss])
    torch.manual_seed(1)
    _assert_same(got, _run(block, x, 3, _official, loss=fns[loss]))


_NAMES = ["pos_embed.0.weight", "pos_embed.0.bias", "pos_embed.1.weight", "pos_embed.1.bias",
          "pos_embed.2.weight", "pos_embed.2.bias", "pos_embed.3.weight", "pos_embed.3.bias"]


@pytest.mark.parametrize("x_grad", [True, False])
def test_partial_freezing_gives_the_remaining_gradients(x_grad):
    """Each parameter frozen alone, all but one frozen, all frozen: only the gradients asked for, each right."""
    x = torch.randn(6, 10, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for frozen in [[n] for n in _NAMES] + [[n for n in _NAMES if n != keep] for keep in _NAMES] + [_NAMES]:
        block = _block(drop_path=0.5)
        for name, p in block.lmhra1.named_parameters():
            p.requires_grad_(name not in frozen)
        if frozen == _NAMES and not x_grad:
            continue  # (nothing asks for a gradient)
        _assert_same(_run(block, x, 3, _function, x_grad=x_grad), _run(block, x, 3, _official, x_grad=x_grad))


def test_the_same_relation_twice_in_one_graph():
    """Weight sharing: one relation applied to its own output and to the input again, backward through all."""
    def shared(fn):
        def run(b, m, x, T):
            y = fn(b, m, fn(b, m, x, T) * 1.5, T)
            return fn(b, b.lmhra2, y, T) + fn(b, m, x, T)
        return run

    block = _block(drop_path=0.5)
    x = torch.randn(6, 10, 12, dtype=torch.float64)
    _assert_same(_run(block, x, 3, shared(_function)), _run(block, x, 3, shared(_official)))


@pytest.mark.parametrize("onednn", [True, False])
def test_gradcheck_on_odd_shapes(onednn, monkeypatch):
    """oneDNN's convolution (the CPU's) and the frame-slice multiply-adds (CUDA's, compile's): T 1 with kernel
    5, batch 1, one patch, one reduced channel."""
    monkeypatch.setattr(_LocalRelation, "onednn", staticmethod(lambda x: onednn))
    for N, T, L, C, R, k, dropped in [(1, 1, 3, 5, 3, 5, False), (3, 2, 1, 3, 5, 1, True), (1, 5, 3, 3, 3, 5, True),
                                      (2, 8, 1, 2, 1, 3, False)]:
        g = torch.Generator().manual_seed(N * 10 + T)

        def rand(*shape):
            return (0.5 * torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_()

        scale = (torch.arange(N, dtype=torch.float64) % 2) * 2.0 if dropped else None
        args = (rand(N * T, L + 1, C), rand(N * T * L, C), T, rand(R, C), rand(R), rand(R, k), rand(R), rand(C, R),
                rand(C), scale)
        assert torch.autograd.gradcheck(_LocalRelation.apply, args)


def test_a_second_derivative_is_refused_not_wrong():
    """The backward works from the forward's intermediates (the reduce product, the temporal output), saved
    without their graph: differentiating it again gave a wrong second derivative silently, where the module
    path's was right. Now it says so."""
    block = _block()
    x = torch.randn(4, 4, 12, dtype=torch.float64, requires_grad=True)
    y = block._local(x, block.lmhra1, 2)
    (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        gx.square().sum().backward()


def test_the_meta_device_gives_the_shapes():
    block = _block(drop_path=0.5, dtype=torch.float32).to("meta")
    x = torch.empty(6, 10, 12, device="meta", requires_grad=True)
    y = block(x, 3)
    y.sum().backward()
    assert y.shape == x.shape == x.grad.shape and y.device.type == "meta"
    assert all(p.grad is not None and p.grad.shape == p.shape for p in block.parameters())


def test_torch_compile_with_one_frame_and_dropped_clips():
    block = _block(dim=16, drop_path=0.5, dtype=torch.float32)
    x = torch.randn(4, 10, 16, generator=torch.Generator().manual_seed(8))
    eager = _run(block, x, 1, lambda b, m, t, T: b(t, T))
    got = _run(block, x, 1, lambda b, m, t, T: torch.compile(b, backend="aot_eager", fullgraph=True)(t, T))
    assert _rel(got[0], eager[0]) < 1e-6 and _rel(got[1], eager[1]) < 1e-6 and got[4] == eager[4]
    for name in eager[2]:
        assert _rel(got[2][name], eager[2][name]) < 1e-6, name
    for k in eager[3]:
        assert torch.allclose(got[3][k].float(), eager[3][k].float(), rtol=1e-6, atol=1e-6), k


def _ddp_rank(rank: int, store: str, block: ResidualAttentionBlock, x: torch.Tensor, w: torch.Tensor, out: str) -> None:
    torch.distributed.init_process_group("gloo", store=torch.distributed.FileStore(store, 2), rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        block = distributed.convert_sync_batchnorm(copy.deepcopy(block), torch.device("cpu"))
        model = torch.nn.parallel.DistributedDataParallel(block)
        half = slice(rank * 6, rank * 6 + 6)  # 2 of the 4 clips of 3 frames
        xr = x[half].clone().requires_grad_()
        y = model(xr, 3)
        (y * w[half]).sum().backward()
        torch.save({"y": y.detach(), "dx": xr.grad, "grads": {n: p.grad for n, p in block.named_parameters()},
                    "state": block.lmhra1.state_dict()}, out.format(rank))
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_processes_with_syncbatchnorm_equal_one_process_on_the_whole_batch(tmp_path):
    """DDP on the CPU converts the BatchNorm (train/distributed.py): the relation's statistics and gradients span
    both ranks; the averaged parameter gradients are one process's on the concatenated batch (halved: each rank's
    loss is the sum over its half)."""
    block = _block(dtype=torch.float32)
    x = torch.randn(12, 10, 12, generator=torch.Generator().manual_seed(4)) * 2 + 1
    w = torch.randn(12, 10, 12, generator=torch.Generator().manual_seed(5))
    outs = [tmp_path / f"r{r}.pt" for r in range(2)]
    spawn_ranks(_ddp_rank, (str(tmp_path / "store"), block, x, w, str(tmp_path / "r{}.pt")), outs)
    ranks = [torch.load(o) for o in outs]
    y, dx, grads, state, _ = _run(block, x, 3, lambda b, m, t, T: b(t, T), loss=lambda y: (y * w).sum())
    assert _rel(torch.cat([r["y"] for r in ranks]), y) < 1e-6
    assert _rel(torch.cat([r["dx"] for r in ranks]), dx) < 1e-5
    assert grads.keys() == ranks[0]["grads"].keys()
    for name in grads:
        for r in ranks:
            assert _rel(2 * r["grads"][name], grads[name]) < 1e-5, name
    for k in state:
        for r in ranks:
            assert torch.allclose(r["state"][k].float(), state[k].float(), rtol=1e-5, atol=1e-6), k


@pytest.mark.parametrize("which", ["mlp", "quickgelu"])
def test_the_mlp_functions_refuse_a_second_derivative(which):
    """The MLP's Function (and QuickGELU's) work from activations saved without their graph, as the local relation's
    does: a second derivative came out wrong without a word (gradgradcheck: "Jacobian mismatch"); now it raises."""
    from leap_cli.model.uniformerv2 import BlockMlp, QuickGELU

    torch.manual_seed(0)
    module = (BlockMlp(6, 24) if which == "mlp" else QuickGELU()).double()
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(module(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        gx.square().sum().backward()
