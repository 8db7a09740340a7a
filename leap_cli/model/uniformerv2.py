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

from leap_cli.errors import LeapError

log = logging.getLogger(__name__)

# Input normalisation that goes with CLIP-initialised weights (clips are [B, 3, T, H, W], RGB in [0, 1] first).
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
    frozen: bool = False  # official FROZEN: backbone blocks not trained, no ``balance`` fusion (frozen_* checkpoints)
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
        dpr = _linspace(cfg.drop_path_rate, n)
        self.dec = nn.ModuleList(
            Extractor(cfg.n_dim, cfg.n_head, cfg.mlp_factor, cfg.mlp_dropout[i], dpr[i]) for i in range(n)
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
                patches = tokens[:, :, 1:].permute(0, 3, 1, 2).reshape(N, C, T, H, W)
                pos = self.dpe[j](patches).reshape(N, C, T, L1 - 1).permute(0, 2, 3, 1)  # [N, T, HW, C]
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
        if cfg.frozen:  # as the official FROZEN setting: only the global UniBlocks and the head are trained
            for module in (self.conv1, self.ln_pre, self.transformer.resblocks):
                module.requires_grad_(False)
            self.class_embedding.requires_grad_(False)
            self.positional_embedding.requires_grad_(False)

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


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint file: a TorchScript archive (OpenAI CLIP releases) or a torch.save'd dict,
    the latter with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise LeapError(f"checkpoint {path} does not exist", path=str(path), fix="give the path of a local weights file")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            scripted = any(n.endswith("/constants.pkl") or n.startswith("code/") or "/code/" in n for n in zf.namelist())
        if scripted:
            try:
                with warnings.catch_warnings():  # torch.jit is deprecated, but CLIP ships TorchScript archives
                    warnings.simplefilter("ignore", FutureWarning)
                    return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
            except RuntimeError as exc:
                raise LeapError(f"cannot read TorchScript archive {path}: {exc}", path=str(path)) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise LeapError(
            f"cannot read checkpoint {path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            path=str(path), fix="give a state dict saved with torch.save (tensors only) or a TorchScript archive",
        ) from None
    if not isinstance(obj, dict):
        raise LeapError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict", path=str(path))
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
        report.source = "clip" if "ln_post.weight" in out or "proj" in out else "uniformerv2-backbone"
    if report.source == "clip":
        for k, why in CLIP_UNUSED.items():
            if k in out:
                del out[k]
                report.dropped[f"visual.{k}" if f"visual.{k}" in sd else k] = why
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
    for k, v in out.items():
        if v.is_floating_point():
            out[k] = v.float()
    return out, report


def load_pretrained(model: nn.Module, path: str | Path, *, allow_unexpected: bool = False) -> LoadReport:
    """Load an official UniFormerV2 checkpoint or OpenAI CLIP weights from a local file into ``model``
    (a UniFormerV2 or anything with a ``.backbone`` UniFormerV2, e.g. LeapModel).

    Documented drops (classifier head, CLIP text tower, ``ln_post``, ``proj``) and UniFormerV2-only modules
    absent from CLIP files are reported; any other missing key is logged as a warning, an unexpected key or
    a shape mismatch is a LeapError listing them."""
    backbone = model if isinstance(model, UniFormerV2) else getattr(model, "backbone", None)
    if not isinstance(backbone, UniFormerV2):
        raise LeapError(f"{type(model).__name__} has no UniFormerV2 backbone to load weights into")
    filtered, report = checkpoint_filter_fn(read_checkpoint(path), backbone)
    report.path = str(path)
    target = backbone.state_dict()
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}"
                  for k, v in filtered.items() if k in target and v.shape != target[k].shape]
    if mismatched:
        raise LeapError(
            f"{len(mismatched)} shape mismatches loading {path}: " + "; ".join(mismatched[:8])
            + (" ..." if len(mismatched) > 8 else ""),
            path=str(path), fix="build the model with the checkpoint's backbone, frames and options (e.g. uniformerv2_l14, "
            "no_lmhra/temporal_downsample as in the checkpoint's config)",
        )
    report.unexpected += [f"backbone.{k}" for k in filtered if k not in target]
    if report.unexpected and not allow_unexpected:
        raise LeapError(
            f"{len(report.unexpected)} checkpoint keys have no place in the model, loading {path}: "
            + ", ".join(report.unexpected[:8]) + (" ..." if len(report.unexpected) > 8 else ""),
            path=str(path), fix="build the model with the checkpoint's options (e.g. no_lmhra=True for the Kinetics "
            "checkpoints, temporal_downsample=False, frozen=False for a checkpoint with 'balance'), or pass allow_unexpected",
        )
    ckpt_has_lmhra = any(".lmhra" in k for k in filtered)
    for k in target:
        if k in filtered:
            continue
        if report.source == "clip" and _is_uniformer_only(k):
            report.initialized.append(f"backbone.{k}")
        elif ".lmhra" in k and not ckpt_has_lmhra:  # checkpoint trained with no_lmhra (the Kinetics ones)
            report.initialized.append(f"backbone.{k}")
        elif k in HEAD_KEYS:
            report.initialized.append(f"backbone.{k}")
        else:
            report.missing.append(f"backbone.{k}")
    loadable = {k: v for k, v in filtered.items() if k in target}
    backbone.load_state_dict(loadable, strict=False)
    report.loaded = sorted(f"backbone.{k}" for k in loadable)
    log.info("loaded %d tensors from %s (%s); resized %s; dropped %d; initialised %d", len(loadable), path,
             report.source, report.resized or "none", len(report.dropped), len(report.initialized))
    for k, why in report.dropped.items():
        log.info("dropped %s: %s", k, why)
    if report.missing:
        hint = (" (the checkpoint has no 'balance': it was trained with frozen=True; build the model with frozen: true)"
                if report.missing == ["backbone.transformer.balance"] else "")
        log.warning("%d model keys missing from %s, left at initialisation: %s%s", len(report.missing), path,
                    ", ".join(report.missing), hint)
    return report
