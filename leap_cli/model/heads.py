"""LEAP heads on top of UniFormerV2: verb/noun classifiers, the action-program decoder, the condition
head, and the anticipation aggregation of program embeddings over the clips before the action.

Program decoder: a small transformer decoder over a memory of the clip feature plus the verb/noun heads'
probabilities (row 0, also added to every input row: a program follows from the action, and a decoder trained
with teacher forcing on the video tokens alone read each row from the true row before it, so that its greedy
programs on unseen clips fell short of the programs of the recognised action) and the backbone's video tokens.
Row l of the program's token
sequence (``programs.targets``: [S-Verb, Obj(A), Obj(B), hand, kind], kind = ``<step>`` or a loop /
conditional / routine marker) receives the embedding of row l-1 -- a BOS row at l=0 -- and predicts row l
(teacher forcing in training, greedy decoding otherwise), plus row l's pre- and post-conditions (multi-label
logits over the condition vocabulary, from the same decoder state). Ids follow the shards manifest's
``targets`` vocabularies (END included); ``-100`` is padding, and a marker row's verb/object/hand columns.
A spec without ``structure`` (older manifests) decodes the (S-Verb, Obj(A), Obj(B)) triple alone.
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
    hands: int = 0  # with structure: rows are [verb, obj_a, obj_b, hand, kind]
    structure: int = 0

    @property
    def columns(self) -> tuple[str, ...]:
        base = ("step_verb", "step_obj_a", "step_obj_b")
        return base + ("step_hand", "step_kind") if self.structure else base

    @property
    def sizes(self) -> tuple[int, ...]:
        base = (self.step_verbs, self.objects, self.objects)
        return base + (self.hands, self.structure) if self.structure else base

    @property
    def step_kind(self) -> int:
        """Id of ``<step>`` (the first structure token, see programs.targets)."""
        return 0


class ProgramDecoder(nn.Module):
    """Transformer decoder predicting (S-Verb, Obj(A), Obj(B)) per step from the video tokens."""

    def __init__(
        self, spec: ProgramSpec, in_dim: int, dim: int = 256, layers: int = 2, heads: int = 4, dropout: float = 0.1,
        recognition: int = 0,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.dim = dim
        # index n of each table is BOS / padding
        self.verb_embed = nn.Embedding(spec.step_verbs + 1, dim)
        self.obj_a_embed = nn.Embedding(spec.objects + 1, dim)
        self.obj_b_embed = nn.Embedding(spec.objects + 1, dim)
        if spec.structure:
            self.hand_embed = nn.Embedding(spec.hands + 1, dim)
            self.kind_embed = nn.Embedding(spec.structure + 1, dim)
        self.step_pos = nn.Parameter(torch.zeros(1, spec.max_steps, dim))
        nn.init.trunc_normal_(self.step_pos, std=0.02)
        self.memory_proj = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, dim))
        # the verb/noun heads' probabilities (``recognition`` = verbs + nouns), added to memory row 0
        self.recognition_in = nn.Linear(recognition, dim) if recognition else None
        self.feature_in = nn.Linear(dim, dim)  # memory row 0, added to every input row
        layer = nn.TransformerDecoderLayer(
            dim, heads, dim_feedforward=4 * dim, dropout=dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.norm = nn.LayerNorm(dim)
        self.verb_out = nn.Linear(dim, spec.step_verbs)
        self.obj_a_out = nn.Linear(dim, spec.objects)
        self.obj_b_out = nn.Linear(dim, spec.objects)
        if spec.structure:
            self.hand_out = nn.Linear(dim, spec.hands)
            self.kind_out = nn.Linear(dim, spec.structure)
        self.step_cond_out = nn.Linear(dim, 2 * spec.conditions) if spec.conditions and spec.structure else None

    def memory(self, tokens: torch.Tensor, feature: torch.Tensor | None = None,
               recognition: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder memory [B, 1+M, dim] from the video tokens [B, M, C_backbone]: row 0 is the clip feature
        [B, C_backbone] (the verb/noun heads' input; the tokens' mean when not given) plus, when the decoder was
        built with ``recognition``, the verb/noun heads' probabilities [B, verbs + nouns]."""
        if feature is None:
            feature = tokens.mean(1)
        memory = self.memory_proj(torch.cat([feature[:, None], tokens], dim=1))
        if self.recognition_in is not None:
            if recognition is None:
                raise ValueError("this decoder reads the verb/noun probabilities: pass recognition")
            memory = torch.cat([memory[:, :1] + self.recognition_in(recognition)[:, None], memory[:, 1:]], dim=1)
        return memory

    def _embed_inputs(self, prev: torch.Tensor, start: int = 0) -> torch.Tensor:
        # prev: [B, l, K] previous-row ids (BOS/padding already mapped to index n) of rows start..start+l-1
        x = self.verb_embed(prev[..., 0]) + self.obj_a_embed(prev[..., 1]) + self.obj_b_embed(prev[..., 2])
        if self.spec.structure:
            x = x + self.hand_embed(prev[..., 3]) + self.kind_embed(prev[..., 4])
        return x + self.step_pos[:, start: start + prev.shape[1]]  # [B, l, dim]

    def bos(self, device: torch.device | None = None) -> torch.Tensor:
        """The BOS / padding id of each column: [K]."""
        return torch.tensor(self.spec.sizes, device=device)

    def _shift(self, steps: torch.Tensor) -> torch.Tensor:
        """Targets [B, L, K] -> decoder inputs [B, L, K]: BOS then the targets shifted right, padding -> BOS id."""
        bos = self.bos(steps.device)
        k = bos.shape[0]
        prev = torch.cat([bos.expand(steps.shape[0], 1, k), steps[:, :-1, :k]], dim=1)
        return torch.where(prev < 0, bos.expand_as(prev), prev)

    def mask_markers(self, ids: torch.Tensor, fill: torch.Tensor | int) -> torch.Tensor:
        """Rows whose kind is a marker (neither ``<step>`` nor END) get ``fill`` in their verb/object/hand
        columns, as in the targets (-100) or the decoder inputs (BOS)."""
        if not self.spec.structure:
            return ids
        kind = ids[..., 4]
        marker = (kind != self.spec.step_kind) & (kind != self.spec.structure - 1)
        fill_t = torch.as_tensor(fill, device=ids.device).expand_as(ids) if torch.is_tensor(fill) else torch.full_like(ids, fill)
        cols = torch.zeros(ids.shape[-1], dtype=torch.bool, device=ids.device)
        cols[:4] = True
        return torch.where(marker[..., None] & cols, fill_t, ids)

    def _decode(self, prev: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        l = prev.shape[1]
        causal = torch.triu(torch.full((l, l), float("-inf"), device=prev.device), diagonal=1)
        x = self._embed_inputs(prev) + self.feature_in(memory[:, :1])  # every row sees the clip feature
        h = self.decoder(x, memory, tgt_mask=causal, tgt_is_causal=True)
        return self.norm(h)  # [B, l, dim]

    def step_logits(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """The step logits of hidden states [B, L, dim] (``greedy``'s, or a teacher-forced pass's)."""
        out = {"step_verb": self.verb_out(h), "step_obj_a": self.obj_a_out(h), "step_obj_b": self.obj_b_out(h)}
        if self.spec.structure:
            out["step_hand"] = self.hand_out(h)
            out["step_kind"] = self.kind_out(h)
        if self.step_cond_out is not None:
            out["step_conditions"] = self.step_cond_out(h)
        return out

    def forward(self, memory: torch.Tensor, steps: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Teacher-forced when ``steps`` [B, L, K] is given, greedy otherwise.
        Returns (logits dict of [B, L, *], hidden states [B, L, dim])."""
        L = self.spec.max_steps
        if steps is not None:
            steps = steps[:, :L]
            if steps.shape[1] < L:
                steps = F.pad(steps, (0, 0, 0, L - steps.shape[1]), value=IGNORE)  # [B, L, K]
            h = self._decode(self._shift(steps), memory)
            return self.step_logits(h), h
        _, h = self.greedy(memory)
        return self.step_logits(h), h

    def greedy(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy decoding: (ids [B, L, K], hidden states [B, L, dim]). Marker rows carry -100 in their
        verb/object/hand columns, like the targets. Without gradients the hidden states are the decoding's own (the
        argmax of their step logits are the ids); with them, one teacher-forced pass over the ids gives them."""
        bos = self.bos(memory.device)
        graph = torch.is_grad_enabled()
        with torch.no_grad():  # argmax is not differentiable; where gradients are asked for, a pass below carries them
            prev, h = self._greedy_rows(memory, bos)  # [B, 1 + L, K]: BOS, then each decoded row; [B, L, dim]
        if graph:
            h = self._decode(prev[:, :-1], memory)  # the whole greedy sequence again, with its graph
        ids = prev[:, 1:]
        return torch.where(ids == bos, torch.full_like(ids, IGNORE), ids), h

    def _greedy_rows(self, memory: torch.Tensor, bos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The greedy rows, one at a time, with the keys and values of the rows before and of the memory kept (the
        arithmetic of ``_decode`` on the rows so far, whose last row's argmax is the next row: the memory's keys and
        values were projected again at each of the L passes, ~80% of the decoding). Rows [B, 1 + L, K], BOS first,
        and the hidden states [B, L, dim] whose step logits' argmax they are."""
        B, d = memory.shape[0], self.dim
        layers = list(self.decoder.layers)
        heads = layers[0].self_attn.num_heads

        def split(x: torch.Tensor) -> torch.Tensor:  # [B, l, d] -> [B, heads, l, d / heads]
            return x.unflatten(-1, (heads, d // heads)).transpose(1, 2)

        def attend(layer_attn: nn.MultiheadAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            p = layer_attn.dropout if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p).transpose(1, 2).flatten(2)
            return layer_attn.out_proj(out)

        mem_kv = []  # each layer's memory keys and values, [B, heads, 1+M, d / heads]
        for layer in layers:
            w, b = layer.multihead_attn.in_proj_weight, layer.multihead_attn.in_proj_bias
            mem_kv.append((split(F.linear(memory, w[d:2 * d], b[d:2 * d])),
                           split(F.linear(memory, w[2 * d:], b[2 * d:]))))
        cache: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(layers)
        feature = self.feature_in(memory[:, :1])  # every row sees the clip feature
        rows, hidden = [bos.expand(B, 1, bos.shape[0])], []
        for t in range(self.spec.max_steps):
            x = self._embed_inputs(rows[-1], start=t) + feature  # [B, 1, d]
            for i, layer in enumerate(layers):  # (TransformerDecoderLayer with norm_first, as built above)
                sa = layer.self_attn
                q, k, v = F.linear(layer.norm1(x), sa.in_proj_weight, sa.in_proj_bias).chunk(3, -1)
                k, v = split(k), split(v)
                if cache[i] is not None:
                    k, v = torch.cat([cache[i][0], k], 2), torch.cat([cache[i][1], v], 2)
                cache[i] = (k, v)
                x = x + layer.dropout1(attend(sa, split(q), k, v))
                ca = layer.multihead_attn
                q = F.linear(layer.norm2(x), ca.in_proj_weight[:d], ca.in_proj_bias[:d])
                x = x + layer.dropout2(attend(ca, split(q), *mem_kv[i]))
                x = x + layer.dropout3(layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm3(x))))))
            hidden.append(self.norm(x))
            logits = self.step_logits(hidden[-1])
            step = torch.stack([logits[c].argmax(-1) for c in self.spec.columns], -1)
            rows.append(self.mask_markers(step, bos))
        return torch.cat(rows, dim=1), torch.cat(hidden, dim=1)


    def ids_from_logits(self, logits: dict[str, torch.Tensor], pad_after_end: bool = True) -> torch.Tensor:
        """Argmax ids [B, L, K] of step logits, marker rows' verb/object/hand columns -100 and (``pad_after_end``)
        every row after the first END row -100, as in the targets."""
        ids = torch.stack([logits[c].argmax(-1) for c in self.spec.columns], -1)
        ids = self.mask_markers(ids, IGNORE)
        if pad_after_end:
            ids = ids.masked_fill(self.after_end(ids)[..., None], IGNORE)
        return ids

    def after_end(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, L] True for the rows after the first END row (END: the last id of the kind, else verb, column)."""
        is_end = (ids[..., 4] == self.spec.structure - 1) if self.spec.structure else (ids[..., 0] == self.spec.step_verbs - 1)
        is_end = is_end.long()
        return (is_end.cumsum(1) - is_end) > 0


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
