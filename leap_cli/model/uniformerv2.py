"""UniFormerV2 video backbone (Li et al., arXiv 2211.09552), written to match the official OpenGVLab code.

A CLIP ViT whose patch embedding is a 3D convolution (optionally downsampling time by 2), with
*local UniBlocks* (a temporal depthwise-convolution relation module, ``lmhra1`` before attention and
``lmhra2`` before the MLP) in every backbone block, and *global UniBlocks*: a learnable
``temporal_cls_token`` that cross-attends (``dec``) to the tokens of the last N backbone layers after a
depthwise 3D convolution (``dpe``), fused with the backbone class token through ``balance`` and projected
by ``proj``.

Parameter names and shapes equal the official checkpoints (``backbone.conv1``,
``backbone.transformer.resblocks.N.lmhra1.pos_embed.*``, ``backbone.transformer.dec.N.*``, ...), so official
UniFormerV2 checkpoints and OpenAI CLIP ``visual.*`` weights load through :func:`checkpoint_filter_fn`.
Internally tokens are kept batch-first (``[N*T, 1+HW, C]``) where the official code is sequence-first;
the arithmetic is the same (verified against the official module, see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import logging
import math
import warnings
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as torch_checkpoint
from torch import nn
from torch.autograd.function import once_differentiable

from leap_cli.common import counted
from leap_cli.errors import LeapError
from leap_cli.io import load_problem
from leap_cli.published import missing_file_fix

log = logging.getLogger(__name__)

# Input normalisation (RGB in [0, 1] first): OpenAI CLIP's, and the one every official UniFormerV2 training used
# (slowfast/config/defaults.py: DATA.MEAN [0.45]*3, DATA.STD [0.225]*3; no exp/*/config.yaml overrides it).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)

# The released weight families: the architecture each was trained with and its input normalisation, from the
# official exp/*/config.yaml (k400/k400_b16_f8x224, k400/k400+k710_*, k710/k710_*: NO_LMHRA True,
# TEMPORAL_DOWNSAMPLE False, RETURN_LIST the last 4 layers; sthv2/ssv2_*: NO_LMHRA False, DOUBLE_LMHRA True,
# TEMPORAL_DOWNSAMPLE True, RETURN_LIST the last 2/3 of the layers (b16: 4-11, l14: 8-23)). "clip" is the
# OpenAI CLIP image tower with every UniFormerV2 module fresh (the default architecture); it keeps CLIP's
# normalisation (the official code fine-tuned from CLIP with 0.45/0.225, a small shift from CLIP's own).
# The config presets are resources/configs/uniformerv2-{b16,l14}-{family}.yaml (``model.weights: family``).
FAMILIES: dict[str, dict[str, Any]] = {
    "clip": {"no_lmhra": False, "temporal_downsample": True, "global_layers": "last4",
             "mean": CLIP_MEAN, "std": CLIP_STD},
    "k400": {"no_lmhra": True, "temporal_downsample": False, "global_layers": "last4",
             "mean": KINETICS_MEAN, "std": KINETICS_STD},
    "k710": {"no_lmhra": True, "temporal_downsample": False, "global_layers": "last4",
             "mean": KINETICS_MEAN, "std": KINETICS_STD},
    "ssv2": {"no_lmhra": False, "temporal_downsample": True, "global_layers": "last2/3",
             "mean": KINETICS_MEAN, "std": KINETICS_STD},
}
# Loading may leave at most this many backbone tensors at their initialisation (beyond what a family's
# checkpoint is known not to hold) before it is an error (``allow_partial``: load anyway).
PARTIAL_LOAD_LIMIT = 4


def family_options(family: str, layers: int) -> dict[str, Any]:
    """UniFormerV2Config options (``no_lmhra``, ``temporal_downsample``, ``return_list``, ``mean``, ``std``)
    of a released weight family for a backbone of ``layers`` blocks."""
    if family not in FAMILIES:
        raise LeapError(f"unknown weights family {family!r}", fix=f"use one of {', '.join(FAMILIES)}")
    f = FAMILIES[family]
    n = 4 if f["global_layers"] == "last4" else max(1, 2 * layers // 3)
    n = min(n, layers)
    return {"no_lmhra": f["no_lmhra"], "temporal_downsample": f["temporal_downsample"],
            "return_list": list(range(layers - n, layers)), "mean": list(f["mean"]), "std": list(f["std"])}


def backbone_family_options(backbone: str, family: str | None) -> dict[str, Any]:
    """``family_options`` for a builder name (``uniformerv2_b16`` ...); {} when ``family`` is None."""
    if family is None:
        return {}
    base = {"uniformerv2_b16": B16, "uniformerv2_l14": L14, "uniformerv2_tiny": TINY}[backbone]
    return family_options(family, base.layers)


def preset_name(backbone: str, family: str) -> str:
    """The config preset for a backbone builder and a family, e.g. ``uniformerv2-b16-k710``."""
    return f"{backbone.replace('_', '-')}-{family}"


# --------------------------------------------------------------------------------------------- blocks
class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 (as CLIP does), cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class _QuickGELUFunction(torch.autograd.Function):
    """``x * sigmoid(1.702 x)`` with one saved tensor and a one-kernel backward: with ``y = 1.702 x`` the
    derivative ``sigmoid(y) + 1.702 x sigmoid(y) (1 - sigmoid(y))`` is SiLU's, ``silu'(y)``, so the backward is
    ``silu_backward(grad, y)`` instead of autograd's five passes over the activations (mul, mul, sigmoid_backward,
    scale, add) through the saved ``x`` and ``sigmoid(y)``. The forward is the same arithmetic as the official one."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y = x * 1.702
        ctx.save_for_backward(y)
        return torch.sigmoid(y).mul_(x)

    @staticmethod
    @once_differentiable  # (from y, saved without its graph: a second derivative would be wrong)
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.silu_backward(grad, y)


class QuickGELU(nn.Module):
    """CLIP's ``x * sigmoid(1.702 x)`` (through :class:`_QuickGELUFunction` when a gradient is wanted)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _QuickGELUFunction.apply(x)
        return torch.sigmoid(x * 1.702).mul_(x)


class _MlpFunction(torch.autograd.Function):
    """A backbone block's MLP, ``c_proj(QuickGELU(c_fc(x)))``, with CLIP's 1.702 moved into the matrix products'
    scale factors (free in the GEMM): ``y = 1.702 c_fc(x)`` by the first product, ``silu(y) = 1.702 QuickGELU``
    into the second scaled by 1/1.702. The forward makes one pass over the [M, 4C] activations (silu) where the
    modules made three (``1.702 x``, sigmoid, product); the backward is the same products and ``silu_backward``
    (the 1.702s cancel: d/dh of ``silu(1.702 h) / 1.702`` is ``silu'(y)``). Under autocast (CUDA's or the
    CPU's) the forward's products run in its dtype, as ``nn.Linear``'s, and the backward's in the dtype of the
    activations the forward made."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                b2: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        y = torch.addmm(b1 * 1.702, x2, w1.t(), alpha=1.702)
        z = F.silu(y)
        ctx.save_for_backward(x2, w1, w2, y, z)
        return torch.addmm(b2, z, w2.t(), alpha=1 / 1.702).view(*x.shape[:-1], w2.shape[0])

    @staticmethod
    @once_differentiable  # (from y and z, saved without their graph: a second derivative would be wrong)
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x2, w1, w2, y, z = ctx.saved_tensors
        dtype = y.dtype  # (autocast's, if the forward ran under it; the engine casts the gradients back)
        x2, w1, w2 = x2.to(dtype), w1.to(dtype), w2.to(dtype)
        g = grad.reshape(-1, grad.shape[-1]).to(dtype)
        grad_x = grad_w1 = grad_b1 = grad_w2 = grad_b2 = None
        if ctx.needs_input_grad[3]:
            grad_w2 = torch.addmm(w2, g.t(), z, beta=0, alpha=1 / 1.702)  # (beta 0: w2 only gives the shape)
        if ctx.needs_input_grad[4]:
            grad_b2 = g.sum(0)
        if any(ctx.needs_input_grad[:3]):
            grad_h = torch.ops.aten.silu_backward(g @ w2, y)  # the gradient at c_fc's output
            if ctx.needs_input_grad[0]:
                grad_x = (grad_h @ w1).view(grad.shape[:-1] + (w1.shape[1],))
            if ctx.needs_input_grad[1]:
                grad_w1 = grad_h.t() @ x2
            if ctx.needs_input_grad[2]:
                grad_b1 = grad_h.sum(0)
        return grad_x, grad_w1, grad_b1, grad_w2, grad_b2


class BlockMlp(nn.Module):
    """A backbone block's MLP, ``c_fc``, QuickGELU, ``c_proj`` (CLIP's ``mlp.c_fc`` / ``mlp.c_proj`` keys),
    computed by :class:`_MlpFunction`."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(dim, hidden)
        self.c_proj = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _MlpFunction.apply(x, self.c_fc.weight, self.c_fc.bias, self.c_proj.weight, self.c_proj.bias)


class DropPath(nn.Module):
    """Stochastic depth. ``per`` says which positions share one keep/drop draw:

    - ``"sample"``: one draw per entry of dim 0 (per clip, or per frame for ``[N*T, L, C]`` tokens);
    - ``"token"``: one draw per token position (dim 1 of batch-first ``[N*T, L, C]`` tokens), shared by every
      clip and frame: what timm's DropPath does on the official code's sequence-first ``[L, N*T, C]`` tokens;
    - ``"batch"``: one draw for the whole batch: what it does on the official global query ``[1, N, C]``.
    """

    def __init__(self, p: float = 0.0, per: str = "sample") -> None:
        super().__init__()
        if per not in ("sample", "token", "batch"):
            raise ValueError(f"DropPath per must be sample, token or batch, not {per!r}")
        self.p, self.per = p, per

    def sample_scale(self, n: int, like: torch.Tensor) -> torch.Tensor | None:
        """The factors (mask / keep, [n]) that :meth:`forward` would multiply ``n`` samples by (``per`` "sample",
        the same draw), or None when it would leave them as they are."""
        if self.p == 0.0 or not self.training:
            return None
        if self.per != "sample":
            raise ValueError(f"DropPath.sample_scale draws per sample, this one per {self.per}")
        keep = 1.0 - self.p
        return like.new_empty((n,) + (1,) * (like.ndim - 1)).bernoulli_(keep).view(n) / keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        if self.per == "token":
            shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
        elif self.per == "batch":
            shape = (1,) * x.ndim
        else:
            shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = x.new_empty(shape).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}, per={self.per}"


class Attention(nn.Module):
    """Multi-head attention with nn.MultiheadAttention's parameter layout (``in_proj_weight``,
    ``in_proj_bias``, ``out_proj``), batch-first, computed by SDPA or by plain matmul-softmax."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        self.use_sdpa = True
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        # x: [B, Lq, C] queries; y: [B, Lk, C] keys/values (self-attention when None)
        B, Lq, C = x.shape
        if y is not None and Lq * self.num_heads < C:
            return self._few_queries(x, y)
        if y is None:
            q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        else:
            w_q, w_kv = self.in_proj_weight.split([C, 2 * C])
            b_q, b_kv = self.in_proj_bias.split([C, 2 * C])
            q = F.linear(x, w_q, b_q)
            k, v = F.linear(y, w_kv, b_kv).chunk(2, dim=-1)
        q = q.view(B, Lq, self.num_heads, self.head_dim).transpose(1, 2)  # [B, h, Lq, d]
        k = k.view(B, -1, self.num_heads, self.head_dim).transpose(1, 2)  # [B, h, Lk, d]
        v = v.view(B, -1, self.num_heads, self.head_dim).transpose(1, 2)
        if self.use_sdpa:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            aff = (q @ k.transpose(-2, -1)) * (self.head_dim**-0.5)  # [B, h, Lq, Lk]
            out = aff.softmax(dim=-1) @ v
        out = out.transpose(1, 2).reshape(B, Lq, C)
        return self.out_proj(out)


    def _few_queries(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-attention of a few queries (the global UniBlocks' one video query) over many tokens, without
        projecting every token to keys and values: per head, q.(W_k y + b_k) = (W_k^T q).y + const (the constant
        cancels in the softmax) and sum_i a_i (W_v y_i + b_v) = W_v (sum_i a_i y_i) + b_v. The same function,
        at Lq*heads*C instead of 2*C*C multiply-adds per token."""
        B, Lq, C = x.shape
        h, d = self.num_heads, self.head_dim
        w_q, w_k, w_v = self.in_proj_weight.split(C)
        b_q, _, b_v = self.in_proj_bias.split(C)
        q = F.linear(x, w_q, b_q).view(B, Lq, h, d) * (d ** -0.5)
        u = torch.einsum("bqhd,hdc->bhqc", q, w_k.view(h, d, C)).reshape(B, h * Lq, C)
        attn = (u @ y.transpose(1, 2)).softmax(dim=-1)  # [B, h*Lq, Lk]
        z = (attn @ y).view(B, h, Lq, C)  # attention-weighted tokens per head
        out = torch.einsum("bhqc,hdc->bqhd", z, w_v.view(h, d, C)) + b_v.view(h, d)
        return self.out_proj(out.reshape(B, Lq, C))


class _TemporalDepthwise:
    """The local relation's depthwise (k,1,1) convolution, zero-padded by k//2 frames, on channels-last tokens
    ``h`` [N, T, L, R] with weight [R, k] and bias [R]: ``out[:, t] = b + sum_i w[:, i] h[:, t + i - k//2]`` as
    in-place multiply-adds on frame slices, forward and backward, without the padded copy of ``h`` (and its
    zero-filled gradient) that autograd through ``F.pad`` and out-of-place products needs. :class:`_LocalRelation`
    runs it where oneDNN's convolution is not used (CUDA, torch.compile)."""

    @staticmethod
    def taps(T: int, k: int):
        """(tap i, output frames, input frames) of every tap that reaches a frame: ``out[dst] += w[i] h[src]``."""
        pad = k // 2
        for i in range(k):
            s = i - pad  # frame offset of tap i
            if abs(s) < T:
                yield i, slice(max(0, -s), T - max(0, s)), slice(max(0, s), T - max(0, -s))

    @staticmethod
    def conv(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The convolution, written into ``out`` (a [N, T, L, R] tensor or view) when given."""
        if out is not None and torch.compiler.is_compiling():  # (dynamo takes no strided out=; inductor fuses)
            return out.copy_(_TemporalDepthwise.conv(h, w, b))
        pad = w.shape[1] // 2
        out = torch.addcmul(b, h, w[:, pad], out=out)
        for i, dst, src in _TemporalDepthwise.taps(h.shape[1], w.shape[1]):
            if i != pad:
                out[:, dst].addcmul_(h[:, src], w[:, i])
        return out

    @staticmethod
    def conv_backward(grad: torch.Tensor, h: torch.Tensor, w: torch.Tensor,
                      needs: tuple[bool, ...]) -> tuple[torch.Tensor | None, ...]:
        """The gradients (of ``h``, ``w``, ``b``, those ``needs`` asks for) from the output's ``grad``."""
        pad = w.shape[1] // 2
        taps = list(_TemporalDepthwise.taps(h.shape[1], w.shape[1]))
        grad_h = grad_w = grad_b = None
        if needs[0]:
            grad_h = grad * w[:, pad]
            for i, dst, src in taps:
                if i != pad:
                    grad_h[:, src].addcmul_(grad[:, dst], w[:, i])
        if needs[1]:
            grad_w = torch.zeros_like(w)
            for i, dst, src in taps:
                grad_w[:, i] = (grad[:, dst] * h[:, src]).sum(dim=(0, 1, 2))
        if needs[2]:
            grad_b = grad.sum(dim=(0, 1, 2))
        return grad_h, grad_w, grad_b


class _PatchRows(torch.autograd.Function):
    """The patch tokens of ``x`` [N*T, 1+HW, C] as one contiguous [N*T*HW, C] matrix (a copy); the backward
    writes the gradient into the patch rows of an uninitialised tensor and zeroes only the class rows, where
    autograd through the slice and the reshape zero-fills the whole tensor first."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        NT, L1, C = ctx.shape = x.shape
        out = x.new_empty((NT * (L1 - 1), C))
        out.view(NT, L1 - 1, C).copy_(x[:, 1:])
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        NT, L1, C = ctx.shape
        out = grad.new_empty((NT, L1, C))
        out[:, 0] = 0
        out[:, 1:] = grad.reshape(NT, L1 - 1, C)
        return out


class _LocalRelation(torch.autograd.Function):
    """A local UniBlock after its BatchNorm: ``x + drop_path(expand(temporal(reduce(h))))`` on the patch tokens
    of ``x`` [N*T, 1+HW, C], the class tokens passed through, with ``h`` [N*T*HW, C] the BatchNorm of the patch
    tokens and ``scale`` [N] the per-clip drop-path factors (mask / keep) or None.

    The temporal convolution writes its output into the patch rows of a [N*T, 1+HW, R] matrix whose class rows
    are zero, and the expand product accumulates onto ``x`` plus the expand bias (zero on the class tokens)
    in place: one pass over the tokens besides the products, where the modules made the bias's copy, a padded
    copy of the relation and a sum with ``x``. The backward passes the output's gradient to ``x`` as it is.
    Under autocast (CUDA's or the CPU's) the products run in its dtype, as ``nn.Linear``'s, and the sums in
    ``x``'s; the backward's products in the dtype of the forward's."""

    @staticmethod
    def onednn(x: torch.Tensor) -> bool:
        """The temporal convolution as oneDNN's depthwise 2D convolution on the channels-last [N, R, T, HW] view
        (on the CPU, forward and backward about twice as fast as the frame-slice multiply-adds)."""
        return x.device.type == "cpu" and not torch.compiler.is_compiling()

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, h: torch.Tensor, T: int, w_r: torch.Tensor, b_r: torch.Tensor,
                w_t: torch.Tensor, b_t: torch.Tensor, w_e: torch.Tensor, b_e: torch.Tensor,
                scale: torch.Tensor | None) -> torch.Tensor:
        NT, L1, C = x.shape
        N, L = NT // T, L1 - 1
        r = torch.addmm(b_r, h, w_r.t())  # [N*T*HW, R]
        R = r.shape[1]
        t = r.new_empty((NT, L1, R), dtype=torch.promote_types(r.dtype, w_t.dtype))
        t[:, 0] = 0
        patches = t.view(N, T, L1, R)[:, :, 1:]
        if _LocalRelation.onednn(x):
            k = w_t.shape[1]
            patches.copy_(F.conv2d(r.view(N, T, L, R).permute(0, 3, 1, 2), w_t.to(r.dtype).view(R, 1, k, 1),
                                   b_t.to(r.dtype), padding=(k // 2, 0), groups=R).permute(0, 2, 3, 1))
        else:
            _TemporalDepthwise.conv(r.view(N, T, L, R), w_t, b_t, out=patches)
        bias = F.pad(b_e.to(x.dtype).expand(L, C), (0, 0, 1, 0))  # [1+HW, C]
        if scale is None:
            y = x + bias
        else:
            t.view(N, -1).mul_(scale.to(t.dtype)[:, None])
            y = x.reshape(N, T, L1, C) + bias * scale.to(x.dtype).view(N, 1, 1, 1)
        # (a sum takes the layout of a strided x, sequence-first tokens or a slice: the product needs rows)
        y2, t2 = y.contiguous().view(NT * L1, C), t.view(NT * L1, R)
        if r.dtype == t2.dtype == w_e.dtype == y.dtype:
            y2.addmm_(t2, w_e.t())
        else:  # autocast (the reduce product came out in its dtype): the product in its dtype, the sum in x's
            y2.add_(torch.mm(t2, w_e.t()))
        ctx.save_for_backward(h, r, t, w_r, w_t, w_e, scale)
        ctx.T = T
        return y2.view(NT, L1, C)

    @staticmethod
    @once_differentiable  # (it works from r and t, saved without their graph: a second derivative would be wrong)
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        h, r, t, w_r, w_t, w_e, scale = ctx.saved_tensors
        NT, L1, C = grad.shape
        T, R = ctx.T, r.shape[1]
        N, L = NT // T, L1 - 1
        dtype = r.dtype  # (autocast's, if the forward ran under it; the engine casts the gradients back)
        grad2 = grad.reshape(NT * L1, C)
        g = grad2.to(dtype)
        grad_w_e = grad_b_e = None
        if ctx.needs_input_grad[7]:
            grad_w_e = g.t() @ t.view(NT * L1, R).to(dtype)  # (the class rows of t are zero)
        if ctx.needs_input_grad[8]:
            # [N, C]: a clip's patch rows, summed frame by frame (as fast as the sum over all rows; all rows less the
            # class rows lost the patch rows' sum in float32 where the class rows' gradients are 10^4x theirs)
            per_clip = grad2.view(NT, L1, C)[:, 1:].sum(1).view(N, T, C).sum(1)
            grad_b_e = per_clip.sum(0) if scale is None else scale.to(per_clip.dtype) @ per_clip
        grad_h = grad_w_r = grad_b_r = grad_w_t = grad_b_t = None
        if any(ctx.needs_input_grad[1:7]):
            grad_t = (g @ w_e.to(dtype)).to(t.dtype).view(N, T, L1, R)  # the gradient at the expand's input
            if scale is not None:
                grad_t.view(N, -1).mul_(scale.to(grad_t.dtype)[:, None])
            if _LocalRelation.onednn(grad):
                k = w_t.shape[1]
                grad_r, grad_w_t, grad_b_t = torch.ops.aten.convolution_backward(
                    grad_t[:, :, 1:].permute(0, 3, 1, 2).to(dtype), r.view(N, T, L, R).permute(0, 3, 1, 2),
                    w_t.to(dtype).view(R, 1, k, 1), [R], [1, 1], [k // 2, 0], [1, 1], False, [0, 0], R,
                    [True, ctx.needs_input_grad[5], ctx.needs_input_grad[6]])
                grad_r = grad_r.permute(0, 2, 3, 1)  # [N, T, HW, R] (channels-last: contiguous)
                grad_w_t = None if grad_w_t is None else grad_w_t.view(R, k)
            else:
                grad_r, grad_w_t, grad_b_t = _TemporalDepthwise.conv_backward(
                    grad_t[:, :, 1:], r.view(N, T, L, R), w_t, (True,) + tuple(ctx.needs_input_grad[5:7]))
            grad_r = grad_r.reshape(-1, R).to(dtype)
            if ctx.needs_input_grad[1]:
                grad_h = grad_r @ w_r.to(dtype)
            if ctx.needs_input_grad[3]:
                grad_w_r = grad_r.t() @ h.to(dtype)
            if ctx.needs_input_grad[4]:
                grad_b_r = grad_r.sum(0)
        return grad, grad_h, None, grad_w_r, grad_b_r, grad_w_t, grad_b_t, grad_w_e, grad_b_e, None


class LocalMHRA(nn.Module):
    """Local UniBlock relation: BN, 1x1x1 reduce, temporal depthwise conv (k,1,1), 1x1x1 expand (zero-init).

    The parameters are the official ``Conv3d``/``BatchNorm3d`` ones (``pos_embed.0-3``); :meth:`add_to` computes
    the same function on the channels-last patch tokens (the BatchNorm over ``[M, C]`` rows, the 1x1x1
    convolutions as matrix products, the temporal convolution as a weighted sum of shifted frames), so the tokens
    never go through the ``[N, C, T, H, W]`` layout and back."""

    def __init__(self, dim: int, dw_reduction: float = 1.5, kernel_t: int = 3) -> None:
        super().__init__()
        red = int(dim // dw_reduction)
        self.pos_embed = nn.Sequential(
            nn.BatchNorm3d(dim),
            nn.Conv3d(dim, red, kernel_size=1),
            nn.Conv3d(red, red, kernel_size=(kernel_t, 1, 1), padding=(kernel_t // 2, 0, 0), groups=red),
            nn.Conv3d(red, dim, kernel_size=1),
        )
        nn.init.zeros_(self.pos_embed[3].weight)
        nn.init.zeros_(self.pos_embed[3].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, C, T, H, W] (the official layout)."""
        return self.pos_embed(x)

    def add_to(self, x: torch.Tensor, T: int, drop_path: DropPath) -> torch.Tensor:
        """``x`` [N*T, 1+HW, C] plus ``drop_path`` of the relation of its patch tokens (the class tokens pass
        through): the relation and the sum, computed by :class:`_LocalRelation` after the BatchNorm."""
        bn, reduce, temporal, expand = self.pos_embed
        NT, L1, C = x.shape
        # the BatchNorm module itself (so that SyncBatchNorm conversion still applies) on [M, C, 1, 1, 1]
        h = bn(_PatchRows.apply(x).view(-1, C, 1, 1, 1)).view(-1, C)
        scale = drop_path.sample_scale(NT // T, x)
        return _LocalRelation.apply(x, h, T, reduce.weight.flatten(1), reduce.bias,
                                    temporal.weight.view(temporal.weight.shape[0], -1), temporal.bias,
                                    expand.weight.flatten(1), expand.bias, scale)


class ResidualAttentionBlock(nn.Module):
    """CLIP pre-LN block with local MHRA before attention (lmhra1) and before the MLP (lmhra2)."""

    def __init__(
        self, dim: int, num_heads: int, drop_path: float = 0.0, dw_reduction: float = 1.5,
        no_lmhra: bool = False, double_lmhra: bool = True, drop_path_mode: str = "official",
    ) -> None:
        super().__init__()
        self.no_lmhra = no_lmhra
        self.double_lmhra = double_lmhra
        if not no_lmhra:
            self.lmhra1 = LocalMHRA(dim, dw_reduction)
            if double_lmhra:
                self.lmhra2 = LocalMHRA(dim, dw_reduction)
        self.attn = Attention(dim, num_heads)
        self.ln_1 = LayerNorm(dim)
        self.mlp = BlockMlp(dim, dim * 4)
        self.ln_2 = LayerNorm(dim)
        # official: the attention/MLP masks per token position, the local-relation masks per clip
        self.drop_path = DropPath(drop_path, "token" if drop_path_mode == "official" else "sample")
        self.drop_path_local = DropPath(drop_path, "sample")

    def _local(self, x: torch.Tensor, lmhra: LocalMHRA, T: int) -> torch.Tensor:
        # x: [N*T, 1+HW, C]; the relation runs on the patch tokens, the class tokens pass through
        return lmhra.add_to(x, T, self.drop_path_local)

    def forward(self, x: torch.Tensor, T: int, use_checkpoint: bool = False) -> torch.Tensor:
        # x: [N*T, 1+HW, C]. Checkpointing recomputes attention and MLP only (as the official code): the
        # local MHRA holds a BatchNorm whose running statistics must not be updated twice.
        if not self.no_lmhra:
            x = self._local(x, self.lmhra1, T)
        h = self.ln_1(x)
        h = torch_checkpoint.checkpoint(self.attn, h, use_reentrant=False) if use_checkpoint else self.attn(h)
        x = x + self.drop_path(h)
        if not self.no_lmhra and self.double_lmhra:
            x = self._local(x, self.lmhra2, T)
        h = self.ln_2(x)
        h = torch_checkpoint.checkpoint(self.mlp, h, use_reentrant=False) if use_checkpoint else self.mlp(h)
        x = x + self.drop_path(h)
        return x


class Extractor(nn.Module):
    """Global UniBlock decoder layer: the video query cross-attends to a layer's tokens, then an MLP."""

    def __init__(
        self, dim: int, num_heads: int, mlp_factor: float = 4.0, dropout: float = 0.0, drop_path: float = 0.0,
        drop_path_mode: str = "official",
    ) -> None:
        super().__init__()
        self.attn = Attention(dim, num_heads)
        self.ln_1 = nn.LayerNorm(dim)
        hidden = round(mlp_factor * dim)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(dim, hidden))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("dropout", nn.Dropout(dropout))
        self.mlp.add_module("c_proj", nn.Linear(hidden, dim))
        self.ln_2 = nn.LayerNorm(dim)
        self.ln_3 = nn.LayerNorm(dim)
        # official: one mask for the whole batch (timm's DropPath on the sequence-first query [1, N, C])
        self.drop_path = DropPath(drop_path, "batch" if drop_path_mode == "official" else "sample")
        # zero-init the residual branches so the global path starts as the identity
        nn.init.zeros_(self.attn.out_proj.weight)
        nn.init.xavier_uniform_(self.mlp.c_fc.weight)
        nn.init.zeros_(self.mlp.c_proj.weight)
        nn.init.zeros_(self.mlp.c_proj.bias)

    def forward(self, q: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # q: [N, 1, C] query; y: [N, T*(1+HW), C] tokens
        q = q + self.drop_path(self.attn(self.ln_1(q), self.ln_3(y)))
        q = q + self.drop_path(self.mlp(self.ln_2(q)))
        return q


class _DepthwiseConv3d(torch.autograd.Function):
    """The global blocks' ``dpe``: a depthwise convolution (odd kernel, stride 1, "same" zero padding), as
    ``F.conv3d`` forward, with a backward of two forward convolutions, which oneDNN runs several times faster on
    the CPU than the convolution's own backward (and cuDNN on a GPU, whose own weight gradient of a depthwise
    convolution runs one kernel per channel): the input gradient is the gradient convolved with the flipped
    kernel, the weight gradient each channel's input (padded) correlated with its gradient (a grouped convolution
    whose kernel is the gradient)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return F.conv3d(x, w, b, padding=[k // 2 for k in w.shape[2:]], groups=w.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w = ctx.saved_tensors
        N, C = x.shape[:2]
        pad = [k // 2 for k in w.shape[2:]]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv3d(grad, w.flip(2, 3, 4).to(grad.dtype), padding=pad, groups=C)
        if ctx.needs_input_grad[1]:
            # (in the default layout: there oneDNN's kernel for this grouped convolution is faster than channels-last)
            xp = F.pad(x.to(grad.dtype).contiguous(), (pad[2], pad[2], pad[1], pad[1], pad[0], pad[0]))
            g = grad.contiguous().view(N * C, 1, *grad.shape[2:])
            corr = F.conv3d(xp.view(1, N * C, *xp.shape[2:]), g, groups=N * C)
            grad_w = corr.view(N, C, 1, *w.shape[2:]).sum(0, dtype=torch.float32).to(w.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=(0, 2, 3, 4))
        return grad_x, grad_w, grad_b


# --------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class UniFormerV2Config:
    """Everything that fixes the parameter shapes and the forward computation."""

    img_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    heads: int = 12
    num_frames: int = 8
    temporal_downsample: bool = True
    kernel_t: int = 3  # temporal kernel of the patch conv when downsampling
    dw_reduction: float = 1.5
    no_lmhra: bool = False
    double_lmhra: bool = True
    return_list: tuple[int, ...] = (8, 9, 10, 11)
    n_dim: int = 768
    n_head: int = 12
    mlp_factor: float = 4.0
    backbone_drop_path_rate: float = 0.0
    drop_path_rate: float = 0.0
    mlp_dropout: tuple[float, ...] = (0.5, 0.5, 0.5, 0.5)
    cls_dropout: float = 0.5
    num_classes: int = 400  # 0: no classifier, forward returns the fused feature
    grad_checkpointing: bool = False
    frozen: bool = False  # official FROZEN: backbone blocks not trained, no ``balance`` fusion (frozen_* checkpoints)
    use_sdpa: bool = True
    # stochastic-depth masks: "official" (per token position in the backbone blocks, per clip in the local
    # relations, one per batch in the global blocks, as the official sequence-first code draws them) or "sample"
    drop_path_mode: str = "official"
    # input normalisation of uint8 clips (RGB scaled to [0, 1] first); float clips are taken as normalised
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD

    def __post_init__(self) -> None:
        if self.n_dim != self.width:
            raise LeapError(f"UniFormerV2 n_dim ({self.n_dim}) must equal the backbone width ({self.width})")
        if len(self.mlp_dropout) != len(self.return_list):
            raise LeapError("UniFormerV2 mlp_dropout needs one value per global layer (return_list)")
        if any(not 0 <= i < self.layers for i in self.return_list):
            raise LeapError(f"UniFormerV2 return_list {self.return_list} outside 0..{self.layers - 1}")
        if self.img_size % self.patch_size:
            raise LeapError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.drop_path_mode not in ("official", "sample"):
            raise LeapError(f"UniFormerV2 drop_path_mode {self.drop_path_mode!r} is not 'official' or 'sample'")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise LeapError(f"UniFormerV2 mean {self.mean} / std {self.std}: three values each, std > 0")
        if self.temporal_downsample and self.num_frames % 2:
            raise LeapError(f"num_frames {self.num_frames} must be even with temporal_downsample")

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size


# --------------------------------------------------------------------------------------------- model
def _linspace(end: float, n: int) -> list[float]:
    """Stochastic-depth rates rising linearly from 0 to ``end`` (as torch.linspace, without a tensor)."""
    return [end * i / (n - 1) if n > 1 else 0.0 for i in range(n)]


class GlobalTransformer(nn.Module):
    """``backbone.transformer``: the backbone blocks plus the global UniBlocks, fusion and projection."""

    def __init__(self, cfg: UniFormerV2Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.return_list = tuple(cfg.return_list)
        b_dpr = _linspace(cfg.backbone_drop_path_rate, cfg.layers)
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(
                cfg.width, cfg.heads, b_dpr[i], cfg.dw_reduction, cfg.no_lmhra, cfg.double_lmhra,
                cfg.drop_path_mode,
            )
            for i in range(cfg.layers)
        )
        n = len(cfg.return_list)
        self.temporal_cls_token = nn.Parameter(torch.zeros(1, 1, cfg.n_dim))
        self.dpe = nn.ModuleList(
            nn.Conv3d(cfg.n_dim, cfg.n_dim, kernel_size=3, padding=1, groups=cfg.n_dim) for _ in range(n)
        )
        for conv in self.dpe:
            nn.init.zeros_(conv.bias)
        dpr = _linspace(cfg.drop_path_rate, n)
        self.dec = nn.ModuleList(
            Extractor(cfg.n_dim, cfg.n_head, cfg.mlp_factor, cfg.mlp_dropout[i], dpr[i], cfg.drop_path_mode)
            for i in range(n)
        )
        head = nn.Linear(cfg.n_dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.proj = nn.Sequential(nn.LayerNorm(cfg.n_dim), nn.Dropout(cfg.cls_dropout), head)
        self.frozen = cfg.frozen
        if not cfg.frozen:
            self.balance = nn.Parameter(torch.zeros(cfg.n_dim))
        self.grad_checkpointing = cfg.grad_checkpointing

    def forward(self, x: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [N*T, 1+HW, C] -> (fused pre-proj feature [N, C], last-layer tokens [N, T, 1+HW, C])."""
        NT, L1, C = x.shape
        N = NT // T
        H = W = int(math.isqrt(L1 - 1))
        query = self.temporal_cls_token.expand(N, 1, C)  # [N, 1, C]
        j = 0
        for i, block in enumerate(self.resblocks):
            x = block(x, T, use_checkpoint=self.grad_checkpointing and self.training and torch.is_grad_enabled())
            if i in self.return_list:
                tokens = x.view(N, T, L1, C)
                # the patch tokens viewed as a channels_last_3d [N, C, T, H, W] tensor (no transposition): on the
                # CPU the depthwise convolution runs in oneDNN's channels-last kernels and its output is
                # token-ordered. On CUDA in the default layout: cuDNN's own weight gradient of this depthwise
                # convolution runs one kernel per channel (768 per call; on an H200 in bf16, b16 8x224 at batch 8,
                # 94% of the step's GPU time), the Function's backward one grouped convolution (the step 2.7x faster).
                patches = tokens[:, :, 1:].reshape(N, T, H, W, C).permute(0, 4, 1, 2, 3)
                if patches.device.type != "cpu":
                    patches = patches.contiguous()
                conv = self.dpe[j]
                pos = _DepthwiseConv3d.apply(patches, conv.weight, conv.bias)
                pos = pos.permute(0, 2, 3, 4, 1).reshape(N, T, L1 - 1, C)
                tokens = torch.cat([tokens[:, :, :1], tokens[:, :, 1:] + pos], dim=2)
                query = self.dec[j](query, tokens.reshape(N, T * L1, C))
                j += 1
        if self.frozen:
            fused = query[:, 0]
        else:
            weight = torch.sigmoid(self.balance)
            residual = x.view(N, T, L1, C)[:, :, 0].mean(1)  # backbone class token averaged over time, [N, C]
            fused = (1 - weight) * query[:, 0] + weight * residual
        return fused, x.view(N, T, L1, C)


class UniFormerV2(nn.Module):
    """The official ``VisionTransformer`` (what official checkpoints store under ``backbone.``)."""

    def __init__(self, cfg: UniFormerV2Config) -> None:
        super().__init__()
        self.cfg = cfg
        p = cfg.patch_size
        if cfg.temporal_downsample:
            kt = cfg.kernel_t
            self.conv1 = nn.Conv3d(3, cfg.width, (kt, p, p), (2, p, p), ((kt - 1) // 2, 0, 0), bias=False)
        else:
            self.conv1 = nn.Conv3d(3, cfg.width, (1, p, p), (1, p, p), bias=False)
        scale = cfg.width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(cfg.width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(cfg.grid**2 + 1, cfg.width))
        self.ln_pre = LayerNorm(cfg.width)
        self.transformer = GlobalTransformer(cfg)
        self.set_attention(cfg.use_sdpa)
        # uint8 -> normalised float: x * scale - shift (non-persistent: not in the state dict, moved by .to())
        std = torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1, 1)
        self.register_buffer("input_scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("input_shift", torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1, 1) / std,
                             persistent=False)
        if cfg.frozen:  # as the official FROZEN setting: only the global UniBlocks and the head are trained
            for module in (self.conv1, self.ln_pre, self.transformer.resblocks):
                module.requires_grad_(False)
            self.class_embedding.requires_grad_(False)
            self.positional_embedding.requires_grad_(False)

    @property
    def num_features(self) -> int:
        return self.cfg.n_dim

    def normalize(self, video: torch.Tensor) -> torch.Tensor:
        """uint8 [N, 3, T, H, W] -> float32, ``(video / 255 - mean) / std``."""
        return torch.addcmul(-self.input_shift, video.float(), self.input_scale)

    def set_attention(self, use_sdpa: bool) -> None:
        """Switch every attention between SDPA and the plain matmul-softmax path."""
        for m in self.modules():
            if isinstance(m, Attention):
                m.use_sdpa = use_sdpa

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable

    def patch_embed(self, video: torch.Tensor) -> torch.Tensor:
        """``conv1`` on a normalised clip [N, 3, T, H, W] -> patch tokens [N, T', H'*W', C], token-ordered.

        The convolution's spatial stride equals its kernel, so its patches do not overlap: it is computed as one
        matrix product of the patches (gathered by a single copy, frames overlapping only in time) with the
        flattened kernel. The same sums as the convolution, and its weight gradient is one matrix product too
        (the default 3D convolution is several times slower on the CPU, and its output needs a transposition to
        the token layout)."""
        conv = self.conv1
        w = conv.weight  # [C, 3, kt, p, p]
        C, cin, kt, p, _ = w.shape
        N, _, _, Hi, Wi = video.shape
        H, W = Hi // p, Wi // p
        v = video[..., :H * p, :W * p]  # the convolution drops a remainder smaller than a patch
        if conv.padding[0]:
            v = F.pad(v, (0, 0, 0, 0, conv.padding[0], conv.padding[0]))
        cols = v.unfold(2, kt, conv.stride[0])  # a view: [N, 3, T', H*p, W*p, kt]
        T = cols.shape[2]
        cols = cols.reshape(N, cin, T, H, p, W, p, kt).permute(0, 2, 3, 5, 1, 7, 4, 6)  # [N, T', H, W, 3, kt, p, p]
        x = F.linear(cols.reshape(N * T * H * W, cin * kt * p * p), w.reshape(C, -1), conv.bias)
        return x.view(N, T, H * W, C)

    def forward_features(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """video [N, 3, T, H, W] -> (fused feature [N, C] before ``proj``, tokens [N, T', 1+HW, C]).

        uint8 clips (RGB, 0-255) are normalised here with the config's mean/std, on the clip's device; float
        clips are taken as already normalised."""
        if not video.is_floating_point():
            video = self.normalize(video)
        p = self.conv1.kernel_size[-1]
        H, W = video.shape[-2] // p, video.shape[-1] // p
        side = math.isqrt(self.positional_embedding.shape[0] - 1)  # the square grid the model was built for
        if (H, W) != (side, side):  # (a 2x8 grid has the 4x4 one's 16 patches, not its positions)
            raise LeapError(
                f"input of {video.shape[-2]}x{video.shape[-1]} pixels gives a {H}x{W} patch grid, "
                f"the model was built for {self.cfg.img_size}x{self.cfg.img_size}",
                fix="resize clips to the model's img_size or build the model with the clip size",
            )
        x = self.patch_embed(video)  # [N, T', HW, C]
        N, T, _, C = x.shape
        x = x.view(N * T, H * W, C)
        cls = self.class_embedding.to(x.dtype).expand(N * T, 1, C)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # [N*T, 1+HW, C]
        x = self.ln_pre(x)
        return self.transformer(x, T)

    def forward_head(self, fused: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        proj = self.transformer.proj
        x = proj[1](proj[0](fused))
        return x if pre_logits else proj[2](x)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        fused, _ = self.forward_features(video)
        return self.forward_head(fused)


# --------------------------------------------------------------------------------------------- builders
def _build(base: UniFormerV2Config, **overrides: Any) -> UniFormerV2:
    if "return_list" in overrides:
        overrides["return_list"] = tuple(overrides["return_list"])
        overrides.setdefault("mlp_dropout", (base.mlp_dropout[0],) * len(overrides["return_list"]))
    for key in ("mlp_dropout", "mean", "std"):  # lists after a round trip through a checkpoint or YAML
        if key in overrides:
            overrides[key] = tuple(float(v) for v in overrides[key])
    unknown = set(overrides) - set(UniFormerV2Config.__dataclass_fields__)
    if unknown:
        raise LeapError(f"unknown UniFormerV2 options: {sorted(unknown)}",
                        fix=f"use only {sorted(UniFormerV2Config.__dataclass_fields__)}")
    return UniFormerV2(replace(base, **overrides))


B16 = UniFormerV2Config()
L14 = UniFormerV2Config(
    patch_size=14, width=1024, layers=24, heads=16, return_list=(20, 21, 22, 23), n_dim=1024, n_head=16
)
TINY = UniFormerV2Config(
    img_size=96, patch_size=16, width=64, layers=3, heads=4, num_frames=4, return_list=(1, 2), n_dim=64,
    n_head=4, mlp_dropout=(0.0, 0.0), cls_dropout=0.0,
)


def uniformerv2_b16(**kwargs: Any) -> UniFormerV2:
    """ViT-B/16 UniFormerV2 (224 px; num_frames 8, 16 or 32). Keyword options override UniFormerV2Config."""
    return _build(B16, **kwargs)


def uniformerv2_l14(**kwargs: Any) -> UniFormerV2:
    """ViT-L/14 UniFormerV2 (224 px; num_frames 8, 16 or 32); use grad_checkpointing=True to train it."""
    return _build(L14, **kwargs)


def uniformerv2_tiny(**kwargs: Any) -> UniFormerV2:
    """A 3-layer, 64-wide UniFormerV2 at 96 px and 4 frames, for CPU tests and the synthetic kitchen."""
    return _build(TINY, **kwargs)


BUILDERS = {"uniformerv2_b16": uniformerv2_b16, "uniformerv2_l14": uniformerv2_l14, "uniformerv2_tiny": uniformerv2_tiny}


# --------------------------------------------------------------------------------------------- pretrained
# Modules that exist only in UniFormerV2: a CLIP checkpoint leaves them at their initialisation.
# (plus the local MHRA of every block, ``transformer.resblocks.N.lmhra1/2``).
UNIFORMER_ONLY = ("transformer.temporal_cls_token", "transformer.dpe.", "transformer.dec.", "transformer.balance",
                  "transformer.proj.")
CLIP_UNUSED = {"ln_post.weight": "CLIP's final LayerNorm (UniFormerV2 fuses before its own proj)",
               "ln_post.bias": "CLIP's final LayerNorm (UniFormerV2 fuses before its own proj)",
               "proj": "CLIP's image-text projection (unused for video classification)"}
LEAP_HEADS = ("verb_head.", "noun_head.", "decoder.", "condition_head.", "aggregator.")
HEAD_KEYS = ("transformer.proj.2.weight", "transformer.proj.2.bias")
_WRAPPERS = ("model", "state_dict", "model_state", "module")


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did with every key of a checkpoint."""

    path: str
    source: str  # "uniformerv2" | "clip" | "uniformerv2-backbone"
    loaded: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)  # key -> reason (documented drops: head, CLIP extras)
    initialized: list[str] = field(default_factory=list)  # UniFormerV2-only modules absent from a CLIP file
    missing: list[str] = field(default_factory=list)  # model keys the checkpoint should have held but did not
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys the model has no place for
    resized: dict[str, str] = field(default_factory=dict)  # key -> "old shape -> new shape (how)"
    family: str | None = None  # the released weights family of the checkpoint's layout and normalisation
    # (clip, k400, k710, ssv2; None: another, e.g. a run of the tiny builder's defaults)
    normalisation: tuple[tuple[float, ...], tuple[float, ...]] = (CLIP_MEAN, CLIP_STD)  # (mean, std) trained on

    def __str__(self) -> str:
        """One line for logs; the lists themselves stay on the object."""
        return (f"{self.path} ({self.source}): {len(self.loaded)} loaded, {len(self.dropped)} dropped, "
                f"{len(self.resized)} resized ({', '.join(self.resized) or '-'}), {len(self.initialized)} initialised "
                f"(new modules), {len(self.missing)} missing, {len(self.unexpected)} unexpected")


def _is_uniformer_only(key: str) -> bool:
    parts = key.split(".")
    if key.startswith("transformer.resblocks.") and len(parts) > 3 and parts[3].startswith("lmhra"):
        return True
    return key.startswith(UNIFORMER_ONLY)


def _is_safetensors(path: Path) -> bool:
    """A safetensors file: a little-endian 8-byte length of the JSON header that follows (``{``), inside the file."""
    try:
        with path.open("rb") as f:
            head = f.read(9)
    except OSError:  # (torch.load says why)
        return False
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < path.stat().st_size


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint file: a TorchScript archive (OpenAI CLIP releases), a safetensors file (Hugging Face
    releases) or a torch.save'd dict, the latter with ``weights_only=True``."""
    path = Path(path)
    if path.is_dir():  # (a run's folder, a Hugging Face snapshot)
        raise LeapError("is a folder, not a weights file", path=str(path),
                        fix="give the file inside it (a run's checkpoints/best.pt or last.pt, a release's .pth/.pyth)")
    if not path.is_file():
        raise LeapError("checkpoint does not exist", path=str(path),
                        fix=missing_file_fix(path, "give the path of a local weights file"))
    if _is_safetensors(path):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise LeapError(f"{path.name} is a safetensors file and the safetensors package is not installed",
                            path=str(path), fix="pip install safetensors") from None
        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as exc:  # noqa: BLE001 - a damaged file is a bad file for the user
            raise LeapError(f"not a readable safetensors file ({exc})", path=str(path),
                            fix="download the file again") from None
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            scripted = any(n.endswith("/constants.pkl") or n.startswith("code/") or "/code/" in n for n in zf.namelist())
        if scripted:
            try:
                with warnings.catch_warnings():  # torch.jit is deprecated, but CLIP ships TorchScript archives
                    warnings.simplefilter("ignore", FutureWarning)
                    return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
            except RuntimeError as exc:
                raise LeapError(f"cannot read the TorchScript archive ({exc})", path=str(path),
                                fix="download the file again") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise LeapError(
            f"cannot read checkpoint: {load_problem(exc, path)}",
            path=str(path), fix="give a state dict saved with torch.save (tensors only) or a TorchScript archive",
        ) from None
    if not isinstance(obj, dict):
        raise LeapError(f"checkpoint holds a {type(obj).__name__}, not a state dict", path=str(path),
                        fix="give a state dict saved with torch.save (tensors only) or a TorchScript archive")
    return obj


def _unwrap(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    for _ in range(3):
        inner = [k for k in _WRAPPERS if isinstance(state.get(k), dict)]
        if not inner:
            break
        state = state[inner[0]]
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def inflate_patch_weight(weight: torch.Tensor, kernel_t: int) -> torch.Tensor:
    """[C,3,p,p] or [C,3,1,p,p] -> [C,3,kt,p,p] with the 2D kernel on the centre frame (as the official code)."""
    w2d = weight if weight.ndim == 4 else weight[:, :, 0]
    w3d = w2d.new_zeros(w2d.shape[0], w2d.shape[1], kernel_t, *w2d.shape[2:])
    w3d[:, :, kernel_t // 2] = w2d
    return w3d


def resize_pos_embed(pos: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Bicubic resize of a [1+g*g, C] position embedding to [num_tokens, C], class position kept."""
    g_old, g_new = math.isqrt(pos.shape[0] - 1), math.isqrt(num_tokens - 1)
    grid = pos[1:].reshape(1, g_old, g_old, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(g_new, g_new), mode="bicubic", align_corners=False)
    return torch.cat([pos[:1].float(), grid.permute(0, 2, 3, 1).reshape(g_new * g_new, -1)], dim=0)


def checkpoint_filter_fn(state: dict[str, Any], model: UniFormerV2) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Map an official UniFormerV2 or OpenAI CLIP state dict onto ``model``'s keys (timm style): unwrap,
    rename, inflate the patch conv, resize position embeddings, drop the classifier and CLIP extras.
    Returns the filtered dict (keys of ``model``) and a report; shapes are checked by :func:`load_pretrained`."""
    sd = _unwrap(state)
    report = LoadReport(path="", source="uniformerv2")
    out: dict[str, torch.Tensor] = {}
    if any(k.startswith("visual.") for k in sd):
        report.source = "clip"
        for k, v in sd.items():
            if k.startswith("visual."):
                out[k[len("visual."):]] = v
            else:
                report.dropped[k] = "CLIP text tower / logit scale"
    elif any(k.startswith("backbone.") for k in sd):
        for k, v in sd.items():
            if k.startswith("backbone."):
                out[k[len("backbone."):]] = v
            elif k.startswith(LEAP_HEADS):
                report.dropped[k] = "LEAP head of a previous run (only the backbone is pretrained)"
            else:
                report.unexpected.append(k)
    else:
        out = dict(sd)
        # CLIP's visual tower without prefix (the UniFormerV2 authors' vit_b16.pth also drops ln_post and proj):
        # CLIP's keys and none of the modules only UniFormerV2 has
        clip_tower = "class_embedding" in out and not any(_is_uniformer_only(k) for k in out)
        report.source = "clip" if clip_tower or "ln_post.weight" in out or "proj" in out else "uniformerv2-backbone"
    if report.source == "clip":
        for k, why in CLIP_UNUSED.items():
            if k in out:
                del out[k]
                report.dropped[f"visual.{k}" if f"visual.{k}" in sd else k] = why
    report.normalisation = _trained_normalisation(state, report)
    report.family = checkpoint_family(out, report.source, model.cfg.layers,  # before any drop or inflation
                                      report.normalisation)
    for k in HEAD_KEYS:
        if k in out and (model.cfg.num_classes == 0 or out[k].shape[0] != model.cfg.num_classes):
            n = out.pop(k).shape[0]
            report.dropped[f"backbone.{k}"] = (
                f"classifier over {n} classes (replaced by "
                + ("the LEAP heads)" if model.cfg.num_classes == 0 else f"a new {model.cfg.num_classes}-class head)")
            )
    target = model.state_dict()
    conv = out.get("conv1.weight")
    want = target["conv1.weight"]
    if conv is not None and conv.shape != want.shape and conv.shape[-2:] == want.shape[-2:]:
        if conv.ndim == 4 or conv.shape[2] == 1:
            out["conv1.weight"] = inflate_patch_weight(conv, want.shape[2])
            report.resized["conv1.weight"] = f"{tuple(conv.shape)} -> {tuple(want.shape)} (centre-frame inflation)"
    pos = out.get("positional_embedding")
    want = target["positional_embedding"]
    if pos is not None and pos.shape != want.shape and pos.ndim == 2 and pos.shape[1] == want.shape[1]:
        if math.isqrt(pos.shape[0] - 1) ** 2 == pos.shape[0] - 1:
            out["positional_embedding"] = resize_pos_embed(pos, want.shape[0])
            report.resized["positional_embedding"] = f"{tuple(pos.shape)} -> {tuple(want.shape)} (bicubic)"
            px = math.isqrt(pos.shape[0] - 1) * model.cfg.patch_size
            log.warning("the checkpoint's position embedding is for %d px inputs, resized to the model's %d px "
                        "(set model.img_size=%d to keep it)", px, model.cfg.img_size, px)
    for k, v in out.items():
        if v.is_floating_point():
            out[k] = v.float()
    return out, report


def _arch_name(cfg: UniFormerV2Config) -> str:
    for name, base in (("uniformerv2_b16", B16), ("uniformerv2_l14", L14)):
        if (cfg.width, cfg.patch_size, cfg.layers) == (base.width, base.patch_size, base.layers):
            return name
    return "uniformerv2_tiny" if (cfg.width, cfg.layers) == (TINY.width, TINY.layers) else "uniformerv2"


def _same(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(abs(x - y) < 1e-6 for x, y in zip(a, b))


def model_family(cfg: UniFormerV2Config) -> str | None:
    """The weight family whose architecture options and normalisation ``cfg`` has (k400 and k710 are the same
    network: "k710"), or None."""
    for name in ("clip", "k710", "ssv2"):
        f = family_options(name, cfg.layers)
        if (cfg.no_lmhra, cfg.temporal_downsample) == (f["no_lmhra"], f["temporal_downsample"]) \
                and list(cfg.return_list) == f["return_list"] and _same(cfg.mean, f["mean"]) and _same(cfg.std, f["std"]):
            return name
    return None


def _trained_normalisation(state: dict[str, Any], report: LoadReport) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) a checkpoint's weights were trained on: CLIP's for CLIP, a leap run's from its
    ``model_args``, 0.45/0.225 for official UniFormerV2 files."""
    if report.source == "clip":
        return CLIP_MEAN, CLIP_STD
    if isinstance(state.get("model_args"), dict):  # a leap run: the normalisation it was trained with
        margs = state["model_args"]
        return tuple(margs.get("mean", CLIP_MEAN)), tuple(margs.get("std", CLIP_STD))
    if any(k.startswith(LEAP_HEADS) for k in report.dropped):
        return CLIP_MEAN, CLIP_STD  # a leap run without model_args: leap normalised with CLIP's values
    return KINETICS_MEAN, KINETICS_STD  # official UniFormerV2 training


def checkpoint_family(filtered: dict[str, torch.Tensor], source: str, layers: int,
                      normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None) -> str | None:
    """Which released family a filtered state dict's layout (and, when given, the (mean, std) it was trained
    on) belongs to (None: none of them). The normalisation tells a run of the tiny builder's defaults (CLIP's,
    2 global blocks) from the ssv2 layout it shares."""
    if source == "clip":
        return "clip"
    conv = filtered.get("conv1.weight")
    lmhra = any(".lmhra" in k for k in filtered)
    downsample = conv is not None and conv.ndim == 5 and conv.shape[2] > 1
    n_global = len({k.split(".")[2] for k in filtered if k.startswith("transformer.dec.")})
    candidates: list[str] = []
    if not lmhra and not downsample:
        head = filtered.get("transformer.proj.2.weight")
        candidates = ["k400" if head is not None and head.shape[0] == 400 else "k710"]
    elif lmhra and downsample:
        candidates = [name for name in ("ssv2", "clip")
                      if n_global == len(family_options(name, layers)["return_list"])][:1]
    for name in candidates:
        f = FAMILIES[name]
        if normalisation is None or (_same(normalisation[0], f["mean"]) and _same(normalisation[1], f["std"])):
            return name
    return None


def _family_fix(backbone: UniFormerV2, family: str | None) -> str:
    if family is None:
        return ("build the model with the checkpoint's options (no_lmhra, temporal_downsample, return_list, mean/std), "
                "or pass --allow-partial-load to load it anyway")
    if family == model_family(backbone.cfg) or (family == "k400" and model_family(backbone.cfg) == "k710"):
        return (f"the model already has the {family} family's options: give a complete {family} checkpoint, or pass "
                "--allow-partial-load to load it anyway")
    arch = _arch_name(backbone.cfg)
    preset = (f"--config {preset_name(arch, family)}" if arch in ("uniformerv2_b16", "uniformerv2_l14")
              else f"a uniformerv2-*-{family} preset")
    f = FAMILIES[family]
    return (f"use {preset} (model.weights: {family}: no_lmhra {f['no_lmhra']}, temporal_downsample "
            f"{f['temporal_downsample']}, mean {f['mean'][0]:g}.., std {f['std'][0]:g}..), or pass --allow-partial-load "
            "to load it anyway")


def load_pretrained(model: nn.Module, path: str | Path, *, allow_unexpected: bool = False,
                    allow_partial: bool = False) -> LoadReport:
    """Load an official UniFormerV2 checkpoint or OpenAI CLIP weights from a local file into ``model``
    (a UniFormerV2 or anything with a ``.backbone`` UniFormerV2, e.g. LeapModel).

    Documented drops (classifier head, CLIP text tower, ``ln_post``, ``proj``) and the UniFormerV2-only modules
    a CLIP file cannot hold are reported. It is a LeapError naming the config preset to use when the checkpoint
    belongs to another family than the model: unexpected keys or shape mismatches, more than
    ``PARTIAL_LOAD_LIMIT`` backbone tensors left at their initialisation, a patch kernel that would need inflating,
    or another input normalisation than the one the weights were trained with. ``allow_partial`` loads anyway
    (warning); ``allow_unexpected`` also ignores keys that have no place in the model."""
    backbone = model if isinstance(model, UniFormerV2) else getattr(model, "backbone", None)
    if not isinstance(backbone, UniFormerV2):
        raise LeapError(f"{type(model).__name__} has no UniFormerV2 backbone to load weights into")
    raw = read_checkpoint(path)
    filtered, report = checkpoint_filter_fn(raw, backbone)
    report.path = str(path)
    cfg = backbone.cfg
    family = report.family
    fix = _family_fix(backbone, family)
    target = backbone.state_dict()
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}"
                  for k, v in filtered.items() if k in target and v.shape != target[k].shape]
    width = filtered.get("class_embedding")
    if width is not None and "class_embedding" in target and width.shape != target["class_embedding"].shape:
        # another size of ViT (L/14 is 1024 wide, B/16 768): no option of this model makes it fit
        raise LeapError(f"the checkpoint's backbone is {width.shape[-1]} wide, this model's "
                        f"{target['class_embedding'].shape[-1]} (another ViT size: B/16 is 768, L/14 1024)",
                        path=str(path), fix="use a config of the checkpoint's size (uniformerv2-l14-* for 1024, "
                                            "uniformerv2-b16-* for 768), or that size's weights")
    if not any(k in target and v.shape == target[k].shape for k, v in filtered.items()):
        # (a timm layout, another model, an empty dict: --allow-partial-load would train from nothing)
        raise LeapError("the checkpoint holds no tensor this model can take (no UniFormerV2 or CLIP visual-tower "
                        f"keys of its shapes; {len(raw)} entries, e.g. {', '.join(list(raw)[:3]) or 'none'})",
                        path=str(path), fix="give an official UniFormerV2 checkpoint or CLIP ViT weights in the "
                                            "OpenAI or open_clip layout (docs/model.md)")
    if mismatched and allow_partial:
        log.warning("%s of %s %s not fit the model's shapes, left at initialisation (allow-partial-load): %s",
                    counted(len(mismatched), "tensor"), path, "does" if len(mismatched) == 1 else "do",
                    "; ".join(mismatched))
        filtered = {k: v for k, v in filtered.items() if k not in target or v.shape == target[k].shape}
    elif mismatched:
        raise LeapError(
            f"{counted(len(mismatched), 'shape mismatch', 'shape mismatches')} loading a checkpoint of the "
            f"{family or 'unknown'} family from {path}: "
            + "; ".join(mismatched[:8])
            + (" ..." if len(mismatched) > 8 else ""),
            path=str(path), fix="build the model with the checkpoint's backbone, frames and size; " + fix,
        )
    report.unexpected += [f"backbone.{k}" for k in filtered if k not in target]
    if report.unexpected and not (allow_unexpected or allow_partial):
        raise LeapError(
            f"{counted(len(report.unexpected), 'key')} of a checkpoint of the {family or 'unknown'} family "
            f"{'has' if len(report.unexpected) == 1 else 'have'} no place in the model, loading {path}: "
            + ", ".join(report.unexpected[:8]) + (" ..." if len(report.unexpected) > 8 else ""),
            path=str(path), fix=fix)
    ckpt_has_lmhra = any(".lmhra" in k for k in filtered)
    fresh = []  # backbone tensors left at initialisation that the checkpoint's family would have held
    for k in target:
        if k in filtered:
            continue
        if report.source == "clip" and _is_uniformer_only(k):
            report.initialized.append(f"backbone.{k}")
        elif k in HEAD_KEYS:
            report.initialized.append(f"backbone.{k}")
        elif ".lmhra" in k and not ckpt_has_lmhra:  # a no_lmhra checkpoint (Kinetics) in a model with local blocks
            report.initialized.append(f"backbone.{k}")
            fresh.append(f"backbone.{k}")
        else:
            report.missing.append(f"backbone.{k}")
            fresh.append(f"backbone.{k}")
    problems = []
    if len(fresh) > PARTIAL_LOAD_LIMIT:
        problems.append(f"{len(fresh)} backbone tensors would start from their initialisation "
                        f"({', '.join(fresh[:3])}, ...)")
    if "conv1.weight" in report.resized and report.source != "clip":
        problems.append(f"the patch kernel would be inflated {report.resized['conv1.weight'].rsplit(' (', 1)[0]} "
                        "(the checkpoint has another temporal_downsample)")
    want = report.normalisation
    if not (_same(cfg.mean, want[0]) and _same(cfg.std, want[1])):
        problems.append(f"the weights were trained on inputs normalised with mean {list(want[0])}, std {list(want[1])}; "
                        f"the model normalises with mean {list(cfg.mean)}, std {list(cfg.std)}")
    if problems:
        mf = model_family(cfg)
        msg = (f"a checkpoint of the {family or 'unknown'} family does not fit this model ("
               f"{'built as the ' + mf + ' family' if mf else 'custom options'}): " + "; ".join(problems))
        if not allow_partial:
            raise LeapError(msg, path=str(path), fix=fix)
        log.warning("%s (loaded anyway: allow-partial-load)", msg)
    loadable = {k: v for k, v in filtered.items() if k in target}
    backbone.load_state_dict(loadable, strict=False)
    report.loaded = sorted(f"backbone.{k}" for k in loadable)
    log.info("loaded %s from %s (%s layout); resized: %s; dropped %s; %s initialised (new modules)",
             counted(len(loadable), "tensor"), path, report.source,
             "; ".join(f"{k} {how}" for k, how in report.resized.items()) or "none",
             counted(len(report.dropped), "key"), counted(len(report.initialized), "tensor"))
    by_reason: dict[str, list[str]] = {}
    for k, why in report.dropped.items():  # (a CLIP file's text tower was 153 lines)
        by_reason.setdefault(why, []).append(k)
    for why, keys in by_reason.items():
        log.info("dropped %s, %s: %s", counted(len(keys), "key"), why,
                 ", ".join(keys[:3]) + (" ..." if len(keys) > 3 else ""))
    if report.missing:
        hint = (" (the checkpoint has no 'balance': it was trained with frozen=True; build the model with frozen: true)"
                if report.missing == ["backbone.transformer.balance"] else "")
        log.warning("%s missing from %s, left at initialisation: %s%s",
                    counted(len(report.missing), "model key"), path, ", ".join(report.missing), hint)
    return report
