"""LEAP heads on top of UniFormerV2: verb/noun classifiers, the action-program decoder, the condition
head, and the anticipation aggregation of program embeddings over the clips before the action.

Program decoder: a small transformer decoder over the backbone's video tokens. Step l receives the
embedding of step l-1's target triple (S-Verb, Obj(A), Obj(B)) -- a BOS triple at l=0 -- and predicts
the triple of step l (teacher forcing in training, greedy decoding otherwise). Ids follow the shards
manifest's ``targets`` vocabularies (END included); ``-100`` is padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100


@dataclass(frozen=True)
class ProgramSpec:
    """Sizes of the program targets (from the shards manifest)."""

    step_verbs: int
    objects: int
    conditions: int  # P: the condition head predicts 2*P logits (pre then post)
    max_steps: int


class ProgramDecoder(nn.Module):
    """Transformer decoder predicting (S-Verb, Obj(A), Obj(B)) per step from the video tokens."""

    def __init__(
        self, spec: ProgramSpec, in_dim: int, dim: int = 256, layers: int = 2, heads: int = 4, dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.dim = dim
        # index n of each table is BOS / padding
        self.verb_embed = nn.Embedding(spec.step_verbs + 1, dim)
        self.obj_a_embed = nn.Embedding(spec.objects + 1, dim)
        self.obj_b_embed = nn.Embedding(spec.objects + 1, dim)
        self.step_pos = nn.Parameter(torch.zeros(1, spec.max_steps, dim))
        nn.init.trunc_normal_(self.step_pos, std=0.02)
        self.memory_proj = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, dim))
        layer = nn.TransformerDecoderLayer(
            dim, heads, dim_feedforward=4 * dim, dropout=dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.norm = nn.LayerNorm(dim)
        self.verb_out = nn.Linear(dim, spec.step_verbs)
        self.obj_a_out = nn.Linear(dim, spec.objects)
        self.obj_b_out = nn.Linear(dim, spec.objects)

    def memory(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, M, C_backbone] -> decoder memory [B, M, dim]."""
        return self.memory_proj(tokens)

    def _embed_inputs(self, prev: torch.Tensor) -> torch.Tensor:
        # prev: [B, l, 3] previous-step ids (BOS/padding already mapped to index n)
        return (
            self.verb_embed(prev[..., 0]) + self.obj_a_embed(prev[..., 1]) + self.obj_b_embed(prev[..., 2])
            + self.step_pos[:, : prev.shape[1]]
        )  # [B, l, dim]

    def _shift(self, steps: torch.Tensor) -> torch.Tensor:
        """Targets [B, L, 3] -> decoder inputs [B, L, 3]: BOS then the targets shifted right, padding -> BOS id."""
        bos = steps.new_tensor([self.spec.step_verbs, self.spec.objects, self.spec.objects])
        prev = torch.cat([bos.expand(steps.shape[0], 1, 3), steps[:, :-1]], dim=1)
        return torch.where(prev < 0, bos.expand_as(prev), prev)

    def _decode(self, prev: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        l = prev.shape[1]
        causal = torch.triu(torch.full((l, l), float("-inf"), device=prev.device), diagonal=1)
        h = self.decoder(self._embed_inputs(prev), memory, tgt_mask=causal, tgt_is_causal=True)
        return self.norm(h)  # [B, l, dim]

    def _heads(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"step_verb": self.verb_out(h), "step_obj_a": self.obj_a_out(h), "step_obj_b": self.obj_b_out(h)}

    def forward(self, memory: torch.Tensor, steps: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Teacher-forced when ``steps`` [B, L, 3] is given, greedy otherwise.
        Returns (logits dict of [B, L, *], hidden states [B, L, dim])."""
        L = self.spec.max_steps
        if steps is not None:
            steps = steps[:, :L]
            if steps.shape[1] < L:
                steps = F.pad(steps, (0, 0, 0, L - steps.shape[1]), value=IGNORE)
            h = self._decode(self._shift(steps), memory)
            return self._heads(h), h
        _, h = self.greedy(memory)
        return self._heads(h), h

    def greedy(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy decoding: (ids [B, L, 3], hidden states [B, L, dim])."""
        B = memory.shape[0]
        bos = torch.tensor([self.spec.step_verbs, self.spec.objects, self.spec.objects], device=memory.device)
        prev = bos.expand(B, 1, 3)
        with torch.no_grad():  # argmax is not differentiable; the final pass below carries the graph
            for _ in range(self.spec.max_steps):
                logits = self._heads(self._decode(prev, memory)[:, -1:])
                step = torch.stack([logits[k].argmax(-1) for k in ("step_verb", "step_obj_a", "step_obj_b")], -1)
                prev = torch.cat([prev, step], dim=1)  # [B, l+1, 3]
        h = self._decode(prev[:, :-1], memory)  # hidden states of the whole greedy sequence, [B, L, dim]
        return prev[:, 1:], h


class AnticipationAggregator(nn.Module):
    """Aggregates program embeddings of clips i-2..i (oldest first, current last) into one vector that is
    added to the current clip's feature; a learned gate starts at zero so the baseline is the start point."""

    def __init__(self, dim: int, feat_dim: int, context: int, heads: int = 4) -> None:
        super().__init__()
        self.clip_pos = nn.Parameter(torch.zeros(1, context + 1, dim))
        nn.init.trunc_normal_(self.clip_pos, std=0.02)
        self.query = nn.Linear(feat_dim, dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, feat_dim))
        self.gate = nn.Parameter(torch.zeros(feat_dim))

    def forward(self, feature: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """feature [B, F]; embeds [B, C+1, dim] program embeddings; mask [B, C+1] True where present."""
        q = self.query(feature).unsqueeze(1)  # [B, 1, dim]
        agg, _ = self.attn(q, embeds + self.clip_pos, embeds + self.clip_pos, key_padding_mask=~mask)
        return feature + torch.tanh(self.gate) * self.out(agg[:, 0])  # [B, F]
