"""The backbone blocks' MLP as one autograd Function (issue 15 goal 4, session 62): CLIP's 1.702 moved into the
matrix products' scale factors, one elementwise pass over the hidden activations in the forward. Pinned here:
the same function and gradients as the modules it replaces (``c_proj(QuickGELU(c_fc(x)))``), the checkpoint
keys, the gradients it skips, autocast, checkpointing, and the one pass."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from leap_cli.model.uniformerv2 import QuickGELU, ResidualAttentionBlock
from tests.torch_ops import WrittenOps


def _mlp(dim: int = 16, seed: int = 0) -> nn.Module:
    """A backbone block's MLP (hidden 4 * dim), its parameters drawn at random."""
    torch.manual_seed(seed)
    m = ResidualAttentionBlock(dim, 2).mlp
    with torch.no_grad():  # biases away from zero, so that their scaling by 1.702 is seen
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m


def _reference(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The official modules' arithmetic: Linear, QuickGELU (x * sigmoid(1.702 x)), Linear."""
    h = nn.functional.linear(x, m.c_fc.weight, m.c_fc.bias)
    return nn.functional.linear(h * torch.sigmoid(1.702 * h), m.c_proj.weight, m.c_proj.bias)


def _grads(m: nn.Module, x: torch.Tensor, fn) -> list[torch.Tensor]:
    x = x.clone().requires_grad_()
    m.zero_grad(set_to_none=True)
    w = torch.randn(x.shape[:-1] + (m.c_proj.out_features,), generator=torch.Generator().manual_seed(5))
    (fn(x) * w).sum().backward()
    return [x.grad] + [p.grad for p in m.parameters()]


def test_the_block_mlp_is_the_modules_function_with_their_gradients():
    m = _mlp()
    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(1))  # [N*T, L, C] tokens
    out, want = m(x), _reference(m, x)
    assert out.shape == want.shape == (3, 5, 16)
    assert ((out - want).norm() / want.norm()).item() < 1e-6
    for got, ref in zip(_grads(m, x, m), _grads(m, x, lambda t: _reference(m, t))):
        assert ((got - ref).norm() / ref.norm()).item() < 1e-5


def test_the_mlp_function_passes_gradcheck_in_float64():
    from leap_cli.model.uniformerv2 import _MlpFunction

    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return (0.5 * torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_()

    assert torch.autograd.gradcheck(_MlpFunction.apply, (rand(2, 3, 4), rand(8, 4), rand(8), rand(4, 8), rand(4)))


def test_checkpoint_keys_are_the_official_ones():
    block = ResidualAttentionBlock(16, 2)
    keys = sorted(k for k in block.state_dict() if k.startswith("mlp."))
    assert keys == ["mlp.c_fc.bias", "mlp.c_fc.weight", "mlp.c_proj.bias", "mlp.c_proj.weight"]
    assert block.mlp.c_fc.weight.shape == (64, 16) and block.mlp.c_proj.weight.shape == (16, 64)


def test_only_the_gradients_asked_for_are_made():
    m = _mlp()
    x = torch.randn(4, 16, requires_grad=True)
    m.requires_grad_(False)  # a frozen MLP: the input's gradient alone
    m(x).sum().backward()
    assert x.grad is not None and all(p.grad is None for p in m.parameters())
    m.requires_grad_(True)
    x2 = torch.randn(4, 16)  # the first block's input needs none: the weights' alone
    m(x2).sum().backward()
    assert all(p.grad is not None and p.grad.norm() > 0 for p in m.parameters())
    with torch.no_grad():  # an evaluation forward
        assert torch.allclose(m(x2), _reference(m, x2), rtol=1e-5, atol=1e-6)


def test_under_cpu_bf16_autocast_it_runs_in_bf16_and_keeps_float32_gradients():
    """Its backward takes the forward's activations' dtype (a CPU autocast backward runs outside autocast: the
    float32 weights against bf16 gradients would not multiply)."""
    m = _mlp()
    x = torch.randn(6, 16, generator=torch.Generator().manual_seed(2))
    ref = _grads(m, x, lambda t: _reference(m, t))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert m(x).dtype == torch.bfloat16
        got = _grads(m, x, m)
        modules = _grads(m, x, lambda t: _reference(m, t))
    for g, want, mod in zip(got, ref, modules):
        assert g.dtype == torch.float32
        # as close to float32's as the modules' own autocast gradients are (bf16: ~1e-2)
        assert ((g - want).norm() / want.norm()).item() < max(3 * ((mod.float() - want).norm() / want.norm()).item(), 1e-3)


@pytest.mark.parametrize("use_checkpoint", [False, True])
def test_a_block_with_and_without_checkpointing_has_the_reference_gradients(use_checkpoint):
    torch.manual_seed(0)
    block = ResidualAttentionBlock(16, 2, no_lmhra=True).train()
    ref_block = ResidualAttentionBlock(16, 2, no_lmhra=True).train()
    ref_block.load_state_dict(block.state_dict())
    ref_block.mlp = nn.Sequential()  # the official module layout, same weights
    ref_block.mlp.add_module("c_fc", nn.Linear(16, 64))
    ref_block.mlp.add_module("gelu", QuickGELU())
    ref_block.mlp.add_module("c_proj", nn.Linear(64, 16))
    ref_block.mlp.load_state_dict(block.mlp.state_dict())
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(3))
    block(x, 1, use_checkpoint=use_checkpoint).square().sum().backward()
    ref_block(x, 1).square().sum().backward()
    for (name, p), q in zip(block.named_parameters(), ref_block.parameters()):
        assert ((p.grad - q.grad).norm() / q.grad.norm()).item() < 1e-5, name


def test_the_forward_makes_one_elementwise_pass_over_the_hidden_activations():
    """The point of the Function: besides the product that makes them, one op writes [M, 4C] activations (the
    silu); the modules wrote three (1.702 x, sigmoid, the product with x), each a pass over the largest
    activations of a block (in b16, 788 x 3072 floats per clip)."""
    m = _mlp()
    x = torch.randn(2, 7, 16, requires_grad=True)
    with WrittenOps() as ops:
        m(x)
    hidden = [name for name, shape in ops.seen if shape[-1] == 64 and math.prod(shape) == 14 * 64]
    assert sorted(hidden) == ["addmm", "silu"], ops.seen
