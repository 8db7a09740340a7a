"""Session 55, mutation run over the ML core (losses.py, heads.py, programs/targets.py, the anticipation
aggregation of leap.py / heads.py and evaluate/inference.py): tests for the behaviours that mutants changed and
no other test pinned. Each test passes on leap's code and fails under the mutant named in it. In-process, seeded,
tiny decoders only."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from leap_cli.model.heads import AnticipationAggregator

torch.set_num_threads(1)


def _attention_by_hand(attn: torch.nn.MultiheadAttention, q_in, kv_in, value_in, key_mask):
    """nn.MultiheadAttention's arithmetic, spelt out: q/k/v projections, per-head softmax over the present keys,
    concatenation and the output projection. ``key_mask`` [B, S] True where a key is present."""
    d, h = attn.embed_dim, attn.num_heads
    wq, wk, wv = attn.in_proj_weight.split(d)
    bq, bk, bv = attn.in_proj_bias.split(d)
    q, k, v = F.linear(q_in, wq, bq), F.linear(kv_in, wk, bk), F.linear(value_in, wv, bv)
    B, S = k.shape[:2]
    hd = d // h
    q = q.view(B, -1, h, hd).transpose(1, 2)  # [B, h, 1, hd]
    k = k.view(B, S, h, hd).transpose(1, 2)
    v = v.view(B, S, h, hd).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)  # [B, h, 1, S]
    scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, -1, d)
    return attn.out_proj(out)


def test_the_aggregator_gives_each_clip_its_position_in_the_keys_and_in_the_values():
    """Mutant H14 (``attn(q, e + clip_pos, e, ...)``: the values without the clips' positions) survived every test.
    The aggregate is feature + tanh(gate) * out(attention of the current clip's feature over the program embeddings
    of s_{i-2}, s_{i-1}, s_i, each plus its position, as keys and as values; absent clips left out). A change of
    this arithmetic changes the verb/noun scores of every anticipation checkpoint already trained."""
    torch.manual_seed(0)
    agg = AnticipationAggregator(dim=16, feat_dim=8, context=2, heads=2).eval()
    with torch.no_grad():
        agg.gate.copy_(torch.linspace(-1.0, 1.0, 8))
        agg.clip_pos.normal_(0, 1.0)  # positions that weigh against the embeddings
    g = torch.Generator().manual_seed(1)
    feature = torch.randn(2, 8, generator=g)
    embeds = torch.randn(1, 3, 16, generator=g).expand(2, 3, 16).clone()
    embeds[:, 2] = embeds[:, 0]  # the same program embedding in two slots: only their positions tell them apart
    mask = torch.tensor([[False, True, True], [True, True, True]])
    with torch.no_grad():
        got = agg(feature, embeds, mask)
        kv = embeds + agg.clip_pos
        expected = feature + torch.tanh(agg.gate) * agg.out(
            _attention_by_hand(agg.attn, agg.query(feature)[:, None], kv, kv, mask)[:, 0])
        without_pos_in_values = feature + torch.tanh(agg.gate) * agg.out(
            _attention_by_hand(agg.attn, agg.query(feature)[:, None], kv, embeds, mask)[:, 0])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, without_pos_in_values, atol=1e-4)  # the test tells the two apart


class _ViewValue(torch.nn.Module):
    """Outputs read from each view's clip, filled with one number x: verb logits [x, -x], noun logits [x],
    condition logits [x - 20], greedy program ids x, step condition logits x - 21."""

    class _Decoder:
        @staticmethod
        def ids_from_logits(out: dict) -> torch.Tensor:
            return out["ids"]

    def __init__(self):
        super().__init__()
        self.decoder = self._Decoder()

    def forward(self, video, context_video=None, context_mask=None):
        x = video.float().flatten(1)[:, 0]
        return {"verb": torch.stack([x, -x], 1), "noun": x[:, None], "conditions": (x - 20)[:, None],
                "ids": x.long()[:, None, None].expand(-1, 2, 5).clone(), "step_conditions": (x - 21)[:, None, None]}


def test_the_program_of_the_documented_2x3_views_is_decoded_on_the_middle_clips_middle_crop():
    """Mutant I11 (``centre = v // 2``) survived: the tests' views (3 x 2, 2 x 1, 1 x 1) have their centre at
    V // 2. docs/evaluate-submit.md's example, --temporal-views 2 --spatial-views 3, orders its six views clip 0
    crops 0-2, clip 1 crops 0-2 (the shards reader's order); the central view is clip 1's middle crop, index 4
    (V // 2 = 3 is clip 1's first crop). The program and its step conditions come from it; the scores average
    all six views."""
    from leap_cli.evaluate.inference import ViewConfig, predict

    views = ViewConfig(temporal=2, spatial=3)
    vals = [[10, 11, 12, 13, 14, 15], [40, 41, 42, 43, 44, 45]]
    b, v = 2, 6
    video = torch.tensor(vals, dtype=torch.uint8).view(b, v, 1, 1, 1, 1).expand(b, v, 3, 2, 2, 2).clone()
    got = predict(_ViewValue(), [{"video": video, "narration_id": ["a", "b"]}], views=views)
    assert got["program"]["steps"][:, 0, 0].tolist() == [14, 44]
    torch.testing.assert_close(got["program"]["step_conditions"][:, 0, 0], torch.sigmoid(torch.tensor([-7.0, 23.0])))
    x = torch.tensor(vals, dtype=torch.float32)
    torch.testing.assert_close(got["verb_output"][:, 0], x.mean(1))
    torch.testing.assert_close(got["program"]["conditions"][:, 0], torch.sigmoid(x - 20).mean(1))


PROGRAM = {"step_verbs": 6, "objects": 7, "conditions": 3, "max_steps": 4, "hands": 4, "structure": 5}


def _anticipation_model(seed=0, **anticipation):
    from leap_cli.model import build_model

    torch.manual_seed(seed)
    model = build_model({"backbone": "uniformerv2_tiny", "num_frames": 4, "img_size": 32, "num_verbs": 5,
                         "num_nouns": 4, "program": PROGRAM, "decoder_dim": 32, "decoder_heads": 4,
                         "decoder_dropout": 0.0, "anticipation": {"context": 2, "aggregate": True, "pool": "program",
                                                                  **anticipation}})
    with torch.no_grad():
        model.aggregator.gate.fill_(1.0)  # a trained gate: at 0 no gradient passes the aggregator at all
    return model


def _clips(B=2, context=0, seed=3):
    g = torch.Generator().manual_seed(seed)
    shape = (B, context, 3, 4, 32, 32) if context else (B, 3, 4, 32, 32)
    return torch.randn(*shape, generator=g)


def _targets(B=2):
    steps = torch.full((B, 4, 5), -100)
    steps[:, 0] = torch.tensor([1, 2, 3, 0, 0])
    steps[:, 1] = torch.tensor([5, 6, 6, 3, 4])
    return steps


def test_the_action_loss_reaches_the_context_clips_and_the_decoder_through_the_program_embeddings():
    """Mutant A17 (``aggregator(feature, embeds.detach(), mask)``) survived every test. docs/model.md: the program
    embeddings of s_{i-2}, s_{i-1}, s_i enter the attention that feeds the verb/noun heads, and leap train keeps
    the context clips' gradients (``context_grad`` true; false encodes them without). So in training the verb/noun
    loss moves the program decoder and reaches the present context clips (not an absent one); with
    ``context_grad: false`` it reaches no context clip."""
    model = _anticipation_model().train()
    video, ctx = _clips(), _clips(context=2).requires_grad_(True)
    mask = torch.tensor([[False, True], [True, True]])
    out = model(video, _targets(), ctx, mask, labels=(torch.tensor([1, 2]), torch.tensor([0, 3])))
    loss = F.cross_entropy(out["verb"], torch.tensor([1, 2])) + F.cross_entropy(out["noun"], torch.tensor([0, 3]))
    g_ctx, g_dec = torch.autograd.grad(loss, [ctx, model.decoder.decoder.layers[0].self_attn.in_proj_weight],
                                       allow_unused=True)
    assert g_ctx is not None and g_dec is not None
    assert g_dec.abs().sum() > 0
    per_clip = g_ctx.abs().flatten(2).sum(-1)  # [B, C]
    assert per_clip[0, 0] == 0 and (per_clip[mask] > 0).all()

    frozen = _anticipation_model(context_grad=False).train()
    ctx2 = _clips(context=2).requires_grad_(True)
    out = frozen(video, _targets(), ctx2, mask)
    (g,) = torch.autograd.grad(out["verb"].sum(), [ctx2], allow_unused=True)
    assert g is None or not g.any()


def test_a_clips_program_embedding_is_differentiable_in_its_clip_feature():
    """Mutant A16 (the program embedding's decoder memory read from ``feature.detach()``) survived every test.
    docs/model.md: the decoder's memory starts with a row holding the clip feature, also added to every input row;
    only the verb/noun heads' probabilities in it are detached. The program embedding the aggregator reads is thus
    a function of the clip feature that training differentiates (the verb/noun loss reaches the backbone through
    it, not only through the video tokens)."""
    model = _anticipation_model().train()
    feature, tokens = model.encode(_clips())
    feature = feature.detach().requires_grad_(True)
    tokens = tokens.detach()
    embedding = model._program_embedding(feature, tokens)
    (g,) = torch.autograd.grad(embedding.sum(), [feature], allow_unused=True)
    assert g is not None and g.abs().sum() > 0
