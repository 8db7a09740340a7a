"""AdamW with layer-wise lr decay for the backbone, no weight decay on norms/biases/embeddings/tokens,
and a cosine schedule with linear warmup."""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from leap_cli.train.config import OptimConfig

_NO_DECAY_NAMES = ("class_embedding", "positional_embedding", "temporal_cls_token", "cls_token", "pos_embed",
                   "token", "balance", "query_embed")
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.Embedding)
_BLOCK = re.compile(r"(?:^|\.)backbone\.transformer\.resblocks\.(\d+)\.")


def _no_decay_names(model: nn.Module) -> set[str]:
    names = set()
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if isinstance(module, _NORMS) or p.ndim <= 1 or any(t in p_name for t in _NO_DECAY_NAMES):
                names.add(full)
    return names


def _bare(name: str) -> str:
    """A parameter's name without the prefixes of DDP (``module.``) and torch.compile (``_orig_mod.``)."""
    return name.removeprefix("module.").removeprefix("_orig_mod.")


def layer_id(name: str, num_layers: int) -> int:
    """0 for the backbone stem (patch embedding, position/class embeddings, ln_pre), i+1 for backbone block i,
    num_layers+1 for everything above (global UniBlocks, fusion, heads): those get the full lr."""
    name = _bare(name)
    m = _BLOCK.search("." + name)
    if m:
        return int(m.group(1)) + 1
    if name.startswith("backbone.") and not name.startswith("backbone.transformer."):
        return 0
    return num_layers + 1


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Parameter groups keyed by (layer, decay); each carries ``lr_scale`` used by the schedule."""
    no_decay = _no_decay_names(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    blocks = {int(m.group(1)) for n, _ in named if (m := _BLOCK.search("." + _bare(n)))}
    num_layers = max(blocks) + 1 if blocks else 0
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in named:
        lid = layer_id(name, num_layers)
        decay = name not in no_decay
        scale = cfg.layer_decay ** (num_layers + 1 - lid)
        if _bare(name).startswith("backbone.") and lid <= num_layers:
            scale *= cfg.backbone_lr_scale
        key = (lid, decay)
        if key not in groups:
            groups[key] = {"params": [], "names": [], "weight_decay": cfg.weight_decay if decay else 0.0,
                           "lr_scale": scale, "layer": lid}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    groups = param_groups(model, cfg)
    for g in groups:
        g["lr"] = cfg.lr * g["lr_scale"]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             weight_decay=cfg.weight_decay)


class CosineWithWarmup:
    """Linear warmup from 0 to the peak over ``warmup`` steps, then cosine down to ``min_lr_ratio`` x peak
    at ``total``. Sets each group's lr to ``peak * lr_scale * factor(step)``; the state is the step count."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, peak_lr: float, total: int, warmup: int,
                 min_lr_ratio: float = 0.0):
        self.optimizer = optimizer
        self.peak_lr = peak_lr
        self.total = max(1, total)
        self.warmup = max(0, min(warmup, self.total))
        self.min_lr_ratio = min_lr_ratio
        self.step_count = 0
        self._apply()

    def factor(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def _apply(self) -> None:
        f = self.factor(self.step_count)
        for g in self.optimizer.param_groups:
            g["lr"] = self.peak_lr * g.get("lr_scale", 1.0) * f

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def get_last_lr(self) -> float:
        """The peak group's current lr (heads)."""
        return self.peak_lr * self.factor(self.step_count)

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "total": self.total, "warmup": self.warmup,
                "peak_lr": self.peak_lr, "min_lr_ratio": self.min_lr_ratio}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self._apply()
