"""Session 64, lean64: what pins the code moved out of the product or removed from it.

The local relation's readable reference (``forward_tokens``, the temporal depthwise convolution as one autograd
Function) moved from leap_cli/model/uniformerv2.py to tests/uniformer_reference.py: the tests that compared the
model with it must still compare the model's real path, so here the reference is itself held to the official
Conv3d/BatchNorm3d layout and the model's path (both temporal convolutions) to the reference."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from leap_cli.model.uniformerv2 import LocalMHRA, ResidualAttentionBlock, _LocalRelation
from tests.uniformer_reference import forward_tokens


def _lmhra(dim: int = 12, kernel_t: int = 3) -> LocalMHRA:
    torch.manual_seed(0)
    m = LocalMHRA(dim, kernel_t=kernel_t).double().train()
    with torch.no_grad():  # (the expand is zero-initialised: every parameter drawn)
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m


def _grads(m, x, fn):
    m = copy.deepcopy(m)
    x = x.detach().requires_grad_()
    y = fn(m, x)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view(y.shape)).sum().backward()
    return y.detach(), x.grad, {n: p.grad for n, p in m.named_parameters()}, m.pos_embed[0].running_mean


@pytest.mark.parametrize("T, kernel_t", [(4, 3), (1, 3), (3, 5)])
def test_the_moved_reference_is_the_official_conv3d_layout(T, kernel_t):
    m = _lmhra(kernel_t=kernel_t)
    x = torch.randn(2, T, 6, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))  # [N, T, HW, C]

    def official(m, x):  # [N, C, T, HW, 1] through the Conv3d/BatchNorm3d modules (contiguous: on the CPU
        # BatchNorm3d's backward of a permuted view, whose layout is ambiguous, is wrong in torch 2.x)
        return m(x.permute(0, 3, 1, 2).unsqueeze(-1).contiguous()).squeeze(-1).permute(0, 2, 3, 1)

    got, want = _grads(m, x, forward_tokens), _grads(m, x, official)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    assert got[2].keys() == want[2].keys()
    for name in want[2]:
        torch.testing.assert_close(got[2][name], want[2][name], msg=name)
    torch.testing.assert_close(got[3], want[3])


@pytest.mark.parametrize("onednn", [True, False])
def test_the_models_local_relation_is_the_moved_reference_plus_the_tokens(onednn, monkeypatch):
    """Both of the model's temporal convolutions (oneDNN's on the CPU; ``_TemporalDepthwise.conv`` and its
    hand-written backward on CUDA and under torch.compile) against the reference, outputs and gradients."""
    monkeypatch.setattr(_LocalRelation, "onednn", staticmethod(lambda x: onednn))
    torch.manual_seed(0)
    block = ResidualAttentionBlock(12, 2).double().train()
    block.lmhra1 = _lmhra()
    N, T, L = 2, 3, 4
    x = torch.randn(N * T, 1 + L, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def model(m, x):
        return m.add_to(x, T, block.drop_path_local)

    def reference(m, x):
        rel = forward_tokens(m, x[:, 1:].reshape(N, T, L, 12)).reshape(N * T, L, 12)
        return x + F.pad(rel, (0, 0, 1, 0))

    got, want = _grads(block.lmhra1, x, model), _grads(block.lmhra1, x, reference)
    assert torch.equal(got[0][:, 0], x[:, 0])  # the class tokens pass through
    for a, b in zip(got[:2], want[:2]):
        torch.testing.assert_close(a, b)
    for name in want[2]:
        torch.testing.assert_close(got[2][name], want[2][name], msg=name)
    torch.testing.assert_close(got[3], want[3])


def test_the_product_imports_nothing_of_the_test_extra():
    """jsonschema moved from the dependencies to the test extra with the reference check
    (tests/program_schema_reference.py): no module of leap_cli may import it (or pytest), at the top or in a
    function, and the program check works without it."""
    import ast
    import sys
    from pathlib import Path

    import leap_cli

    found = []
    for path in Path(leap_cli.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            found += [(path.name, n) for n in names if n.split(".")[0] in ("jsonschema", "pytest")]
    assert found == []
    import tomllib

    project = tomllib.loads((Path(leap_cli.__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("jsonschema") for d in project["dependencies"])
    assert any(d.startswith("jsonschema") for d in project["optional-dependencies"]["test"])

    from leap_cli.programs.schema import validate_program

    saved = sys.modules.get("jsonschema")
    sys.modules["jsonschema"] = None  # (import jsonschema raises ImportError)
    try:
        assert validate_program({"type": "x"}) and validate_program(3)[0].pointer == ""
    finally:
        if saved is None:
            del sys.modules["jsonschema"]
        else:
            sys.modules["jsonschema"] = saved
