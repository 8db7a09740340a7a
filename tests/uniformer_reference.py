"""Readable reference code for the UniFormerV2 local relation, which the tests compare the model's real path
(``LocalMHRA.add_to``: ``_LocalRelation``, and ``_TemporalDepthwise.conv``/``conv_backward`` where oneDNN's
convolution is not used) against. The model no longer runs any of this."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from leap_cli.model.uniformerv2 import LocalMHRA, _TemporalDepthwise


class TemporalDepthwise(torch.autograd.Function):
    """The model's temporal depthwise convolution (``_TemporalDepthwise.conv``) with its hand-written backward
    (``_TemporalDepthwise.conv_backward``) as one autograd Function, for gradcheck and for :func:`forward_tokens`."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(h, w)
        return _TemporalDepthwise.conv(h, w, b)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        h, w = ctx.saved_tensors
        return _TemporalDepthwise.conv_backward(grad, h, w, ctx.needs_input_grad)


def forward_tokens(lmhra: LocalMHRA, x: torch.Tensor) -> torch.Tensor:
    """The relation of ``lmhra`` on channels-last tokens ``x`` [N, T, HW, C] -> [N, T, HW, C], as modules and
    products: the BatchNorm module on [M, C, 1, 1, 1] (per-channel statistics over all N*T*H*W positions, as on
    [N, C, T, H, W]), the 1x1x1 convolutions as ``F.linear``, the temporal one as :class:`TemporalDepthwise`."""
    bn, reduce, temporal, expand = lmhra.pos_embed
    N, T, L, C = x.shape
    h = bn(x.reshape(N * T * L, C, 1, 1, 1)).view(N, T, L, C)
    h = F.linear(h, reduce.weight.flatten(1), reduce.bias)  # [N, T, L, red]
    out = TemporalDepthwise.apply(h, temporal.weight.view(temporal.weight.shape[0], -1), temporal.bias)
    return F.linear(out, expand.weight.flatten(1), expand.bias)  # [N, T, L, C]
