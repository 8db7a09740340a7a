"""LeapModel: UniFormerV2 backbone + verb/noun classifiers + program decoder + condition head
(+ anticipation aggregation), built from a plain ``model_args`` dict that checkpoints carry.

``model_args`` (all values plain JSON types, so ``torch.load(weights_only=True)`` reads them back):
  backbone        "uniformerv2_tiny" | "uniformerv2_b16" | "uniformerv2_l14"
  num_frames      frames per clip;  img_size: clip side in pixels
  num_verbs, num_nouns
  program         None or {"step_verbs": n, "objects": n, "conditions": P, "max_steps": L, "hands": n,
                  "structure": n} (the sizes of ``TargetVocab.model_program_args``; without hands/structure the
                  decoder predicts (S-Verb, Obj(A), Obj(B)) triples only)
  anticipation    None or {"context": C, "aggregate": bool, "context_grad": bool (default true; false encodes
                  the context clips without gradients, saving the memory of C extra backbone passes), "pool":
                  "program" (a clip's program embedding is the mean decoder state of its greedy program, up to and
                  with its first END row; leap train writes it) or "all" (every decoded row, the untrained ones
                  after END too: the default, as the checkpoints written before the key computed it)}
  decoder_dim, decoder_layers, decoder_heads, decoder_dropout   program-decoder options
                  (defaults: min(256, backbone width), 2, 4, 0.1)
  decoder_recognition  (default true) the decoder's memory holds the verb/noun heads' probabilities
  decoder_label_forcing  (default 0.5) fraction of training clips whose true verb/noun replace them
  any UniFormerV2Config field (grad_checkpointing, use_sdpa, drop_path_rate, temporal_downsample, no_lmhra, ...)

Outputs of ``forward``: "verb" [B,V], "noun" [B,N] logits; with program heads also "step_verb" [B,L,Sv],
"step_obj_a" [B,L,O], "step_obj_b" [B,L,O], "step_hand" [B,L,H], "step_kind" [B,L,K] (structure),
"step_conditions" [B,L,2P] (each row's pre then post) and "conditions" [B,2P] logits (the program's).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from leap_cli.errors import LeapError
from leap_cli.model.heads import IGNORE, AnticipationAggregator, ProgramDecoder, ProgramSpec
from leap_cli.model.uniformerv2 import BUILDERS, UniFormerV2Config

DECODER_DEFAULTS = {"decoder_dim": None, "decoder_layers": 2, "decoder_heads": 4, "decoder_dropout": 0.1,
                    "decoder_recognition": True, "decoder_label_forcing": 0.5}
MODEL_KEYS = {"backbone", "num_frames", "img_size", "num_verbs", "num_nouns", "program", "anticipation"}
# What torch raises building a model from arguments it cannot take (an option's type or value): the callers say
# which arguments in one line (a config's model section, a checkpoint's model_args)
BUILD_ERRORS = (TypeError, ValueError, AssertionError, IndexError, RuntimeError)
# what an anticipation model_args without "pool" means: every decoded row (the checkpoints written before the key)
POOL_BEFORE_THE_KEY = "all"
# what leap train writes: a clip's program, its decoded rows up to and with its first END
POOL_PROGRAM = "program"


class LeapModel(nn.Module):
    """UniFormerV2 with LEAP's action and program heads."""

    def __init__(self, model_args: dict[str, Any]) -> None:
        super().__init__()
        args = dict(model_args)
        self.model_args = dict(model_args)
        name = args.pop("backbone", "uniformerv2_tiny")
        if name not in BUILDERS:
            raise LeapError(f"unknown backbone {name!r}", fix=f"use one of {sorted(BUILDERS)}")
        for key in ("num_verbs", "num_nouns"):
            if not isinstance(args.get(key), int) or args[key] < 1:
                raise LeapError(f"model_args.{key} must be a positive integer, got {args.get(key)!r}")
        num_verbs, num_nouns = args.pop("num_verbs"), args.pop("num_nouns")
        program, anticipation = args.pop("program", None), args.pop("anticipation", None)
        dec = {k: args.pop(k, v) for k, v in DECODER_DEFAULTS.items()}
        unknown = set(args) - (set(UniFormerV2Config.__dataclass_fields__) - {"num_classes"})
        if unknown:
            raise LeapError(
                f"unknown model_args keys: {sorted(unknown)}",
                fix=f"use {sorted(MODEL_KEYS | set(DECODER_DEFAULTS))} or a UniFormerV2Config field",
            )
        self.backbone = BUILDERS[name](num_classes=0, **args)
        width = self.backbone.num_features
        if dec["decoder_dim"] is None:
            dec["decoder_dim"] = min(256, width)
        self.verb_head = nn.Linear(width, num_verbs)
        self.noun_head = nn.Linear(width, num_nouns)

        self.program_spec: ProgramSpec | None = None
        self.decoder: ProgramDecoder | None = None
        self.condition_head: nn.Linear | None = None
        if program is not None:
            try:
                self.program_spec = ProgramSpec(**program)
            except TypeError as exc:
                raise LeapError(f"model_args.program {program!r}: {exc}",
                                fix="give step_verbs, objects, conditions and max_steps") from None
            self.decoder = ProgramDecoder(
                self.program_spec, width, dec["decoder_dim"], dec["decoder_layers"], dec["decoder_heads"],
                dec["decoder_dropout"], recognition=num_verbs + num_nouns if dec["decoder_recognition"] else 0,
            )
            with warnings.catch_warnings():  # (no condition in the training programs: a head of 0 outputs, whose
                warnings.filterwarnings("ignore", "Initializing zero-element tensors")  # init torch warns of)
                self.condition_head = nn.Linear(width, 2 * self.program_spec.conditions)

        self.label_forcing = float(dec["decoder_label_forcing"])
        self.num_verbs, self.num_nouns = num_verbs, num_nouns
        self.context = 0
        self.context_grad = True
        self.program_pool = POOL_BEFORE_THE_KEY
        self.aggregator: AnticipationAggregator | None = None
        if anticipation is not None:
            unknown = set(anticipation) - {"context", "aggregate", "context_grad", "pool"}
            if unknown:
                raise LeapError(f"unknown model_args.anticipation keys: {sorted(unknown)}",
                                fix="use context, aggregate, context_grad and pool")
            self.program_pool = str(anticipation.get("pool", POOL_BEFORE_THE_KEY))
            if self.program_pool not in (POOL_PROGRAM, POOL_BEFORE_THE_KEY):
                raise LeapError(f"model_args.anticipation.pool {self.program_pool!r}", fix="use program or all")
            self.context = int(anticipation.get("context", 2))
            self.context_grad = bool(anticipation.get("context_grad", True))
            if anticipation.get("aggregate", True):
                if self.decoder is None:
                    raise LeapError("anticipation.aggregate needs program heads (model_args.program)",
                                    fix="set model_args.program or anticipation.aggregate: false")
                self.aggregator = AnticipationAggregator(dec["decoder_dim"], width, self.context, dec["decoder_heads"])

    # ----------------------------------------------------------------------------------------- parts
    def encode(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """video [B,3,T,H,W] -> (clip feature [B, C], video tokens [B, T'*(1+HW), C])."""
        if video.ndim != 5 or video.shape[1] != 3:
            raise LeapError(f"video of shape {tuple(video.shape)}: the model takes clips [B, 3, T, H, W]",
                            fix="flatten evaluation views into the batch ([B*V, 3, T, H, W]) and average afterwards")
        fused, tokens = self.backbone.forward_features(video)
        feature = self.backbone.forward_head(fused, pre_logits=True)
        return feature, tokens.flatten(1, 2)

    def _memory(self, feature: torch.Tensor, tokens: torch.Tensor, labels: tuple | None = None) -> torch.Tensor:
        """The program decoder's memory: the clip feature, the verb/noun heads' probabilities on it (detached:
        the program losses do not move the recognition heads through them) and the video tokens. In training,
        ``labels`` (verb_class [B], noun_class [B]) replace the probabilities by the true classes' one-hot for a
        ``decoder_label_forcing`` fraction of the clips (labels of -1 never), as teacher forcing does for the rows."""
        assert self.decoder is not None
        recognition = None
        if self.decoder.recognition_in is not None:
            parts = []
            for head, n, i in ((self.verb_head, self.num_verbs, 0), (self.noun_head, self.num_nouns, 1)):
                probs = head(feature).float().softmax(-1).detach()
                if labels is not None and self.training and self.label_forcing > 0:
                    y = labels[i].to(feature.device).long()
                    force = (y >= 0) & (torch.rand(y.shape, device=y.device) < self.label_forcing)
                    onehot = torch.nn.functional.one_hot(y.clamp(0, n - 1), n).float()
                    probs = torch.where(force[:, None], onehot, probs)
                parts.append(probs)
            recognition = torch.cat(parts, -1).to(feature.dtype)
        return self.decoder.memory(tokens, feature, recognition)

    def _program_embedding(self, feature: torch.Tensor, tokens: torch.Tensor,
                           decoded: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Mean decoder state of the greedily predicted program, up to and with its first END row (``pool``
        "program"; "all": every one of the ``max_steps`` rows, those after END too, which no loss trains and which
        outnumber a short program's): [B, decoder_dim]. ``decoded``: the clip's greedy (ids, hidden states), where
        the caller has them already."""
        assert self.decoder is not None
        ids, h = decoded if decoded is not None else self.decoder.greedy(self._memory(feature, tokens))
        if self.program_pool == POOL_BEFORE_THE_KEY:
            return h.mean(1)
        keep = (~self.decoder.after_end(ids)).to(h.dtype)[..., None]  # [B, L, 1]; row 0 is always kept
        return (h * keep).sum(1) / keep.sum(1)

    def _aggregate(
        self, feature: torch.Tensor, tokens: torch.Tensor, context_video: torch.Tensor | None,
        context_mask: torch.Tensor | None, decoded: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The action feature of the current clip and its context (``decoded``: the current clip's greedy program,
        where forward decoded it already)."""
        assert self.aggregator is not None
        B, C = feature.shape[0], self.context
        embeds = feature.new_zeros(B, C + 1, self.aggregator.clip_pos.shape[-1])
        mask = torch.zeros(B, C + 1, dtype=torch.bool, device=feature.device)
        mask[:, C] = True
        embeds[:, C] = self._program_embedding(feature, tokens, decoded)
        if context_video is not None and C > 0:
            if context_video.shape[1] > C:  # shards built with more --context: the latest C (oldest first)
                context_video = context_video[:, -C:]
                context_mask = context_mask[:, -C:] if context_mask is not None else None
            if context_video.shape[1] != C:
                raise LeapError(f"context_video holds {context_video.shape[1]} clips, the model expects {C}",
                                fix=f"rebuild the shards with --context {C}")
            cmask = context_mask if context_mask is not None else torch.ones(B, C, dtype=torch.bool)
            cmask = cmask.to(feature.device).bool()
            present = cmask.flatten().nonzero().squeeze(1)
            if present.numel():
                clips = context_video.flatten(0, 1)[present]  # [K, 3, T, H, W]
                with torch.set_grad_enabled(self.context_grad and torch.is_grad_enabled()):
                    ctx_feature, ctx_tokens = self.encode(clips)
                    ctx_embeds = self._program_embedding(ctx_feature, ctx_tokens)  # [K, decoder_dim]
                flat = embeds[:, :C].reshape(B * C, -1).index_put((present,), ctx_embeds.to(embeds.dtype))
                embeds = torch.cat([flat.view(B, C, -1), embeds[:, C:]], dim=1)
            mask[:, :C] = cmask
        return self.aggregator(feature, embeds, mask)

    # ----------------------------------------------------------------------------------------- forward
    def forward(
        self, video: torch.Tensor, program_steps: torch.Tensor | None = None,
        context_video: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
        labels: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Logits; the program decoder is teacher-forced when ``program_steps`` [B,L,K] is given, greedy otherwise
        (``labels``: the true verb and noun classes, for ``decoder_label_forcing`` in training)."""
        feature, tokens = self.encode(video)
        out: dict[str, torch.Tensor] = {}
        decoded = None  # the greedy program, without targets: the aggregation's embedding of this clip reads it
        if self.decoder is not None:
            memory = self._memory(feature, tokens, labels if program_steps is not None else None)
            if program_steps is None:
                decoded = self.decoder.greedy(memory)
                out.update(self.decoder.step_logits(decoded[1]))
            else:
                out.update(self.decoder(memory, program_steps)[0])
            out["conditions"] = self.condition_head(feature)
        action_feature = feature
        if self.aggregator is not None:
            action_feature = self._aggregate(feature, tokens, context_video, context_mask, decoded)
        out["verb"] = self.verb_head(action_feature)
        out["noun"] = self.noun_head(action_feature)
        return out

    @torch.no_grad()
    def predict_program(
        self, video: torch.Tensor, context_video: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None, *, pad_after_end: bool = True,
    ) -> torch.Tensor:
        """Greedy program decoding: LongTensor [B, L, K] of token rows (S-Verb, Obj(A), Obj(B)[, hand, kind]). END is
        the last id of each vocabulary (the shards manifest's convention); rows after the first END row are -100,
        as in the targets. The program is the one the decoder predicts from this clip (recognition: the clip's own
        action's; anticipation: the coming action's, as the shards' targets are), so context clips do not change it."""
        if self.decoder is None or self.program_spec is None:
            raise LeapError("this model has no program heads", fix="build it with model_args.program")
        feature, tokens = self.encode(video)
        ids, _ = self.decoder.greedy(self._memory(feature, tokens))
        if pad_after_end:
            ids = ids.masked_fill(self.decoder.after_end(ids)[..., None], IGNORE)
        return ids

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    @property
    def num_layers(self) -> int:
        """Backbone depth; :meth:`layer_id` runs from 0 (embeddings) to num_layers + 1 (global blocks, heads)."""
        return self.backbone.cfg.layers

    def layer_id(self, name: str) -> int:
        """Depth of a parameter for layer-wise learning-rate decay: 0 for the patch/position embeddings,
        i+1 for backbone block i, num_layers+1 for the global UniBlocks, fusion and all LEAP heads."""
        if name.startswith(("backbone.conv1", "backbone.class_embedding", "backbone.positional_embedding",
                            "backbone.ln_pre")):
            return 0
        if name.startswith("backbone.transformer.resblocks."):
            return int(name.split(".")[3]) + 1
        return self.num_layers + 1

    def no_weight_decay(self) -> set[str]:
        """Parameters exempt from weight decay: norms, biases, embeddings and learned tokens."""
        names = {f"{m}.weight" for m, mod in self.named_modules() if isinstance(mod, nn.Embedding)}
        tokens = ("positional_embedding", "temporal_cls_token", "step_pos", "clip_pos")
        names |= {n for n, p in self.named_parameters() if p.ndim <= 1 or n.endswith(tokens)}
        return names


def build_model(model_args: dict[str, Any]) -> LeapModel:
    """Build a LeapModel from ``model_args`` (see the module docstring)."""
    return LeapModel(model_args)
