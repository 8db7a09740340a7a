"""The local relation (a block's ``_local``: BatchNorm, reduce, temporal depthwise, expand, drop path, the sum
with the tokens) as the BatchNorm module plus one autograd Function (issue 15 goal 4, session 63). Pinned here:
the same outputs, gradients and running statistics as the module path it replaces (``forward_tokens`` of
tests/uniformer_reference.py, ``drop_path_local``, ``x + F.pad(delta)``), drop path per clip, the BatchNorm still
a module (SyncBatchNorm), bf16 autocast, torch.compile, and the passes over the tokens it no longer makes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from leap_cli.model.uniformerv2 import ResidualAttentionBlock
from tests.torch_ops import WrittenOps
from tests.uniformer_reference import forward_tokens


def _reference_local(block: ResidualAttentionBlock, lmhra: nn.Module, x: torch.Tensor, T: int) -> torch.Tensor:
    """The module path before: the relation on the patch tokens, drop path per clip, zero on the class token."""
    NT, L1, C = x.shape
    tokens = x[:, 1:].reshape(NT // T, T, L1 - 1, C)
    delta = block.drop_path_local(forward_tokens(lmhra, tokens)).reshape(NT, L1 - 1, C)
    return x + F.pad(delta, (0, 0, 1, 0))


def _block(dim: int = 16, drop_path: float = 0.0, seed: int = 0) -> ResidualAttentionBlock:
    torch.manual_seed(seed)
    block = ResidualAttentionBlock(dim, 2, drop_path=drop_path).train()
    with torch.no_grad():  # the expand conv is zero-initialised: draw every parameter, biases away from zero
        for p in block.parameters():
            p.normal_(0, 0.3)
    return block


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _run(block: ResidualAttentionBlock, x: torch.Tensor, T: int, fn, seed: int = 7):
    """Output, input gradient, parameter gradients and BatchNorm state of ``fn`` (a ``_local``-like callable)
    run on a copy of ``block``'s state, the drop-path draws seeded."""
    state = {k: v.clone() for k, v in block.state_dict().items()}
    block.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    torch.manual_seed(seed)
    y = fn(block, block.lmhra1, x, T)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(5))
    (y * w).sum().backward()
    out = (y.detach(), x.grad, {n: p.grad for n, p in block.named_parameters() if p.grad is not None},
           {k: v.clone() for k, v in block.lmhra1.state_dict().items()})
    block.load_state_dict(state)
    return out


@pytest.mark.parametrize("drop_path", [0.0, 0.5])
def test_the_local_relation_is_the_module_paths_function_with_its_gradients_and_statistics(drop_path):
    block = _block(drop_path=drop_path)
    T = 3
    x = torch.randn(4 * T, 10, 16, generator=torch.Generator().manual_seed(1))  # N=4 clips of 3 frames, 3x3+1
    y, gx, grads, bn = _run(block, x, T, lambda b, m, t, T: b._local(t, m, T))
    y0, gx0, grads0, bn0 = _run(block, x, T, _reference_local)
    assert torch.equal(y[:, 0], x[:, 0])  # the class tokens pass through
    assert _rel(y, y0) < 1e-6 and _rel(gx, gx0) < 1e-6
    assert grads.keys() == grads0.keys() and {k.split(".")[0] for k in grads} == {"lmhra1"}
    for name in grads0:
        assert _rel(grads[name], grads0[name]) < 1e-5, name
    for k in bn0:  # the running statistics updated once, as by the module path
        assert torch.allclose(bn[k].float(), bn0[k].float(), rtol=1e-6, atol=1e-7), k
    if drop_path:  # some clips dropped, some kept (the same draws): both paths agree on which
        kept = [(y[i] - x[i])[1:].abs().max().item() > 0 for i in range(0, 4 * T, T)]
        assert any(kept) and not all(kept)


def test_a_whole_block_with_the_function_has_the_module_paths_gradients():
    block = _block(drop_path=0.3, seed=2)
    x = torch.randn(2 * 4, 5, 16, generator=torch.Generator().manual_seed(3))

    def whole(b, m, t, T):
        return b(t, T)

    got = _run(block, x, 4, whole)
    block._local = lambda t, m, T: _reference_local(block, m, t, T)  # the module path, for this block only
    want = _run(block, x, 4, whole)
    del block._local
    assert _rel(got[0], want[0]) < 1e-6 and _rel(got[1], want[1]) < 1e-5
    assert got[2].keys() == want[2].keys() and len(got[2]) == len(list(block.parameters()))
    for name in want[2]:
        assert _rel(got[2][name], want[2][name]) < 1e-5, name


@pytest.mark.parametrize("onednn", [True, False])
@pytest.mark.parametrize("with_scale", [False, True])
def test_the_function_passes_gradcheck_in_float64(with_scale, onednn, monkeypatch):
    """Both temporal convolutions: oneDNN's (the CPU's) and the frame-slice multiply-adds (CUDA's, compile's)."""
    from leap_cli.model.uniformerv2 import _LocalRelation

    monkeypatch.setattr(_LocalRelation, "onednn", staticmethod(lambda x: onednn))
    g = torch.Generator().manual_seed(0)

    def rand(*shape, grad=True):
        return (0.5 * torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_(grad)

    N, T, L, C, R = 2, 3, 4, 5, 3
    scale = torch.tensor([0.0, 2.0], dtype=torch.float64) if with_scale else None
    args = (rand(N * T, L + 1, C), rand(N * T * L, C), T, rand(R, C), rand(R), rand(R, 3), rand(R), rand(C, R),
            rand(C), scale)
    assert torch.autograd.gradcheck(_LocalRelation.apply, args)


def test_only_the_gradients_asked_for_are_made():
    block = _block()
    block.lmhra1.requires_grad_(False)  # a frozen relation: the tokens' gradient alone
    x = torch.randn(6, 10, 16, requires_grad=True)
    block._local(x, block.lmhra1, 3).square().sum().backward()
    assert x.grad is not None and x.grad.norm() > 0
    assert all(p.grad is None for p in block.lmhra1.parameters())
    block.lmhra1.requires_grad_(True)
    block._local(torch.randn(6, 10, 16), block.lmhra1, 3).square().sum().backward()  # the weights' alone
    assert all(p.grad is not None and p.grad.norm() > 0 for p in block.lmhra1.parameters())


def test_the_batchnorm_is_still_called_as_a_module_and_converts_to_syncbatchnorm():
    """DDP training converts it (leap_cli/train/distributed.py): the converted module must be the one that runs;
    without a process group SyncBatchNorm computes a plain BatchNorm, so the result is unchanged."""
    block = _block()
    x = torch.randn(6, 10, 16, generator=torch.Generator().manual_seed(4))
    want = block._local(x, block.lmhra1, 3)
    block.load_state_dict(_block().state_dict())  # (the running statistics as before that call)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(block)
    bn = synced.lmhra1.pos_embed[0]
    assert isinstance(bn, nn.SyncBatchNorm)
    calls = []
    bn.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    got = synced._local(x, synced.lmhra1, 3)
    assert calls == [(6 * 9, 16, 1, 1, 1)]
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-6)


def test_under_cpu_bf16_autocast_the_tokens_stay_float32_and_the_gradients_are_float32():
    block = _block()
    x = torch.randn(6, 10, 16, generator=torch.Generator().manual_seed(6))
    ref = _run(block, x, 3, _reference_local)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _run(block, x, 3, lambda b, m, t, T: b._local(t, m, T))
        modules = _run(block, x, 3, _reference_local)
    assert got[0].dtype == torch.float32 and torch.equal(got[0][:, 0], x[:, 0])
    assert got[1].dtype == torch.float32
    # as close to float32's as the modules' own autocast results are (bf16: ~1e-2)
    assert _rel(got[0], ref[0]) < max(3 * _rel(modules[0], ref[0]), 1e-3)
    for name in ref[2]:
        g, want, mod = got[2][name], ref[2][name], modules[2][name]
        assert g.dtype == torch.float32 and torch.isfinite(g).all(), name
        assert _rel(g, want) < max(3 * _rel(mod, want), 1e-3), name


def test_torch_compile_of_a_block_gives_the_eager_results():
    block = _block(seed=3)
    x = torch.randn(4, 5, 16, generator=torch.Generator().manual_seed(8))
    eager = _run(block, x, 2, lambda b, m, t, T: b(t, T))
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    got = _run(block, x, 2, lambda b, m, t, T: compiled(t, T))
    assert _rel(got[0], eager[0]) < 1e-6 and _rel(got[1], eager[1]) < 1e-6
    for name in eager[2]:
        assert _rel(got[2][name], eager[2][name]) < 1e-6, name


def test_no_padded_copy_of_the_relation_and_no_zero_filled_token_gradient():
    """The point of the Function: the module path wrote the relation's padded copy (constant_pad_nd) and a
    sum with the tokens in the forward, a zero-filled [N*T, 1+HW, C] gradient (slice_backward) and a padded
    slice in the backward: passes over the largest tensors of the relation (in b16, 788 x 768 floats a clip)."""
    block = _block()
    x = torch.randn(6, 10, 16, requires_grad=True)
    with WrittenOps() as fwd:
        y = block._local(x, block.lmhra1, 3)
    with WrittenOps() as bwd:
        y.backward(torch.ones_like(y))
    tokens = 6 * 9 * 16  # elements of the patch tokens

    def writes(ops):
        return [name for name, shape in ops.seen if math.prod(shape) >= tokens and name not in ("new_empty", "ones_like")]

    assert "constant_pad_nd" not in writes(fwd) + writes(bwd)
    assert not {"slice_backward", "zeros", "zero_", "fill_", "new_zeros"} & set(writes(bwd)), writes(bwd)
    # the patch tokens' copy for the BatchNorm, x + the expand bias, the product accumulated onto it
    assert len(writes(fwd)) <= 3, writes(fwd)


def test_the_expand_bias_gradient_keeps_the_patch_rows_beside_large_class_row_gradients():
    """The expand bias's gradient is the sum over the patch rows; taken as all rows less the class rows it lost
    the patch rows' sum in float32 where the class rows' gradients are 10^4x theirs (1e-4 relative)."""
    block = _block(dim=64, seed=4)
    T = 4
    x = torch.randn(3 * T, 17, 64, generator=torch.Generator().manual_seed(2))
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(6)) * 1e-3
    w[:, 0] *= 1e7  # the class rows' gradients 1e4x the patch rows'

    def bias_grad(dtype):
        b = _block(dim=64, seed=4).to(dtype)
        b.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in block.state_dict().items()})
        y = b._local(x.to(dtype), b.lmhra1, T)
        (y * w.to(dtype)).sum().backward()
        return b.lmhra1.pos_embed[3].bias.grad.double()

    exact = bias_grad(torch.float64)
    assert _rel(bias_grad(torch.float32), exact) < 2e-6
