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

import io
import logging
import math
import zipfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as torch_checkpoint
from torch import nn

from leap_cli.errors import LeapError

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# --------------------------------------------------------------------------------------------- blocks
class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 (as CLIP does), cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class DropPath(nn.Module):
    """Stochastic depth per sample."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


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


class LocalMHRA(nn.Module):
    """Local UniBlock relation: BN, 1x1x1 reduce, temporal depthwise conv (k,1,1), 1x1x1 expand (zero-init)."""

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
        return self.pos_embed(x)


class ResidualAttentionBlock(nn.Module):
    """CLIP pre-LN block with local MHRA before attention (lmhra1) and before the MLP (lmhra2)."""

    def __init__(
        self, dim: int, num_heads: int, drop_path: float = 0.0, dw_reduction: float = 1.5,
        no_lmhra: bool = False, double_lmhra: bool = True,
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
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(dim, dim * 4))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(dim * 4, dim))
        self.ln_2 = LayerNorm(dim)
        self.drop_path = DropPath(drop_path)

    def _local(self, x: torch.Tensor, lmhra: LocalMHRA, T: int) -> torch.Tensor:
        # x: [N*T, 1+HW, C]; the relation runs on the patch tokens as a [N, C, T, H, W] volume
        NT, L1, C = x.shape
        N, L = NT // T, L1 - 1
        H = W = int(math.isqrt(L))
        tokens = x[:, 1:].reshape(N, T, H, W, C).permute(0, 4, 1, 2, 3)  # [N, C, T, H, W]
        tokens = tokens + self.drop_path(lmhra(tokens))
        tokens = tokens.permute(0, 2, 3, 4, 1).reshape(NT, L, C)
        return torch.cat([x[:, :1], tokens], dim=1)

    def forward(self, x: torch.Tensor, T: int) -> torch.Tensor:
        # x: [N*T, 1+HW, C]
        if not self.no_lmhra:
            x = self._local(x, self.lmhra1, T)
        x = x + self.drop_path(self.attn(self.ln_1(x)))
        if not self.no_lmhra and self.double_lmhra:
            x = self._local(x, self.lmhra2, T)
        x = x + self.drop_path(self.mlp(self.ln_2(x)))
        return x


class Extractor(nn.Module):
    """Global UniBlock decoder layer: the video query cross-attends to a layer's tokens, then an MLP."""

    def __init__(
        self, dim: int, num_heads: int, mlp_factor: float = 4.0, dropout: float = 0.0, drop_path: float = 0.0,
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
        self.drop_path = DropPath(drop_path)
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
    use_sdpa: bool = True

    def __post_init__(self) -> None:
        if self.n_dim != self.width:
            raise LeapError(f"UniFormerV2 n_dim ({self.n_dim}) must equal the backbone width ({self.width})")
        if len(self.mlp_dropout) != len(self.return_list):
            raise LeapError("UniFormerV2 mlp_dropout needs one value per global layer (return_list)")
        if any(not 0 <= i < self.layers for i in self.return_list):
            raise LeapError(f"UniFormerV2 return_list {self.return_list} outside 0..{self.layers - 1}")
        if self.img_size % self.patch_size:
            raise LeapError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.temporal_downsample and self.num_frames % 2:
            raise LeapError(f"num_frames {self.num_frames} must be even with temporal_downsample")

    @property
    def t_tokens(self) -> int:
        return self.num_frames // 2 if self.temporal_downsample else self.num_frames

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size


# --------------------------------------------------------------------------------------------- model
class GlobalTransformer(nn.Module):
    """``backbone.transformer``: the backbone blocks plus the global UniBlocks, fusion and projection."""

    def __init__(self, cfg: UniFormerV2Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.return_list = tuple(cfg.return_list)
        b_dpr = torch.linspace(0, cfg.backbone_drop_path_rate, cfg.layers).tolist()
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(
                cfg.width, cfg.heads, b_dpr[i], cfg.dw_reduction, cfg.no_lmhra, cfg.double_lmhra
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
        dpr = torch.linspace(0, cfg.drop_path_rate, n).tolist()
        self.dec = nn.ModuleList(
            Extractor(cfg.n_dim, cfg.n_head, cfg.mlp_factor, cfg.mlp_dropout[i], dpr[i]) for i in range(n)
        )
        head = nn.Linear(cfg.n_dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.proj = nn.Sequential(nn.LayerNorm(cfg.n_dim), nn.Dropout(cfg.cls_dropout), head)
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
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = torch_checkpoint.checkpoint(block, x, T, use_reentrant=False)
            else:
                x = block(x, T)
            if i in self.return_list:
                tokens = x.view(N, T, L1, C)
                patches = tokens[:, :, 1:].permute(0, 3, 1, 2).reshape(N, C, T, H, W)
                pos = self.dpe[j](patches).reshape(N, C, T, L1 - 1).permute(0, 2, 3, 1)  # [N, T, HW, C]
                tokens = torch.cat([tokens[:, :, :1], tokens[:, :, 1:] + pos], dim=2)
                query = self.dec[j](query, tokens.reshape(N, T * L1, C))
                j += 1
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

    @property
    def num_features(self) -> int:
        return self.cfg.n_dim

    def set_attention(self, use_sdpa: bool) -> None:
        """Switch every attention between SDPA and the plain matmul-softmax path."""
        for m in self.modules():
            if isinstance(m, Attention):
                m.use_sdpa = use_sdpa

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable

    def forward_features(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """video [N, 3, T, H, W] -> (fused feature [N, C] before ``proj``, tokens [N, T', 1+HW, C])."""
        x = self.conv1(video)  # [N, C, T', H', W']
        N, C, T, H, W = x.shape
        if H * W + 1 != self.positional_embedding.shape[0]:
            raise LeapError(
                f"input of {video.shape[-2]}x{video.shape[-1]} pixels gives a {H}x{W} patch grid, "
                f"the model was built for {self.cfg.img_size}x{self.cfg.img_size}",
                fix="resize clips to the model's img_size or build the model with the clip size",
            )
        x = x.permute(0, 2, 3, 4, 1).reshape(N * T, H * W, C)
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
    if "mlp_dropout" in overrides:
        overrides["mlp_dropout"] = tuple(overrides["mlp_dropout"])
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


def config_dict(cfg: UniFormerV2Config) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
