"""The program decoder, the LEAP losses and the model wrapper, pinned by expectations derived from docs/model.md:
teacher-forcing inputs, the decoder's computation, greedy decoding with marker and END rows, the memory's rows,
the anticipation aggregator, L_CE / L_T details (label smoothing, short targets, column means) and the model's
label forcing, detached recognition probabilities and context-gradient option. Small decoders and the tiny
backbone only; seeded."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from leap_cli.model import build_model, leap_loss
from leap_cli.model.heads import IGNORE, AnticipationAggregator, ProgramDecoder, ProgramSpec

torch.set_num_threads(1)

# kinds: 0 <step>, 1..3 loop / conditional / routine markers, 4 END (the last id)
SPEC = ProgramSpec(step_verbs=6, objects=7, conditions=3, max_steps=5, hands=4, structure=5)
BOS = [6, 7, 7, 4, 5]  # index n of each table: BOS / padding
END_KIND = SPEC.structure - 1


def make_decoder(seed=0, spec=SPEC, **kw):
    torch.manual_seed(seed)
    return ProgramDecoder(spec, in_dim=12, dim=16, layers=2, heads=2, dropout=0.0, **kw).eval()


def make_memory(dec, B=2, M=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return dec.memory(torch.randn(B, M, 12, generator=g), torch.randn(B, 12, generator=g))


# a sub-action (ids 0 included), a marker row, the END row, padding
STEPS = torch.tensor([
    [[0, 1, 2, 3, 0], [-100, -100, -100, -100, 2], [5, 6, 6, 3, END_KIND], [-100] * 5, [-100] * 5],
    [[1, 0, 0, 0, 0], [2, 3, 4, 1, 0], [3, 4, 5, 2, 0], [4, 5, 6, 3, 0], [5, 6, 6, 3, END_KIND]],
])


def test_teacher_forcing_inputs_are_bos_then_the_targets_shifted_right():
    """Row l reads row l-1 (a BOS row at l=0); -100 (padding, a marker row's columns) is read as BOS; id 0 is an
    id like any other."""
    prev = make_decoder()._shift(STEPS)
    assert prev[0].tolist() == [BOS, [0, 1, 2, 3, 0], [6, 7, 7, 4, 2], [5, 6, 6, 3, END_KIND], BOS]
    assert prev[1].tolist() == [BOS, [1, 0, 0, 0, 0], [2, 3, 4, 1, 0], [3, 4, 5, 2, 0], [4, 5, 6, 3, 0]]


def test_teacher_forced_logits_follow_the_documented_computation():
    """Input row = the embeddings of the previous row's five ids + its position + a projection of memory row 0;
    a causal pre-LN transformer decoder over the memory; a final LayerNorm; one linear head per column and the
    per-row pre/post conditions from the same state."""
    dec = make_decoder()
    mem = make_memory(dec)
    prev = torch.cat([torch.tensor(BOS).expand(2, 1, 5), STEPS[:, :-1]], 1)
    prev = torch.where(prev < 0, torch.tensor(BOS).expand_as(prev), prev)
    with torch.no_grad():
        x = (dec.verb_embed(prev[..., 0]) + dec.obj_a_embed(prev[..., 1]) + dec.obj_b_embed(prev[..., 2])
             + dec.hand_embed(prev[..., 3]) + dec.kind_embed(prev[..., 4]) + dec.step_pos + dec.feature_in(mem[:, :1]))
        causal = torch.triu(torch.full((5, 5), float("-inf")), diagonal=1)
        h = dec.norm(dec.decoder(x, mem, tgt_mask=causal))
        logits, states = dec(mem, STEPS)
    torch.testing.assert_close(states, h)
    heads = {"step_verb": dec.verb_out, "step_obj_a": dec.obj_a_out, "step_obj_b": dec.obj_b_out,
             "step_hand": dec.hand_out, "step_kind": dec.kind_out, "step_conditions": dec.step_cond_out}
    assert set(logits) == set(heads)
    for key, head in heads.items():
        torch.testing.assert_close(logits[key], head(h))
    assert logits["step_conditions"].shape == (2, 5, 2 * SPEC.conditions)


def test_a_row_never_sees_the_rows_after_it():
    """Causality: changing target row 2 changes the logits of rows 3.. only (row 3 reads it), never rows 0-2."""
    dec = make_decoder()
    mem = make_memory(dec)
    other = STEPS.clone()
    other[:, 2, :3] = torch.tensor([0, 0, 0])
    with torch.no_grad():
        a, b = dec(mem, STEPS)[0]["step_verb"], dec(mem, other)[0]["step_verb"]
    torch.testing.assert_close(a[:, :3], b[:, :3])
    assert not torch.allclose(a[:, 3], b[:, 3], atol=1e-4)


def test_targets_shorter_or_longer_than_max_steps_are_padded_with_ignore_or_cut():
    dec = make_decoder()
    mem = make_memory(dec)
    longer = torch.cat([STEPS, torch.ones(2, 2, 5, dtype=torch.long)], 1)
    with torch.no_grad():
        full = dec(mem, STEPS)[0]
        short = dec(mem, STEPS[:1, :3].expand(2, 3, 5))[0]  # sample 0's rows after END are padding anyway
        cut = dec(mem, longer)[0]
        same = dec(mem, STEPS[:1].expand(2, 5, 5))[0]
    for key in full:
        torch.testing.assert_close(short[key], same[key])
        torch.testing.assert_close(cut[key], full[key])


def _scripted_greedy(dec, monkeypatch, kinds):
    """Greedy decoding whose kind column follows ``kinds`` (the other columns: the decoder's own argmax); returns
    (ids, states, the input rows of the final pass)."""
    real_heads, real_decode = dec.step_logits, dec._decode
    calls, inputs = [], []

    def heads(h):
        out = real_heads(h)
        if h.shape[1] == 1 and len(calls) < len(kinds):
            kind = torch.full_like(out["step_kind"], -1e4)
            kind[..., kinds[len(calls)]] = 1e4
            calls.append(1)
            out["step_kind"] = kind
        return out

    def decode(prev, memory):
        inputs.append(prev.clone())
        return real_decode(prev, memory)

    monkeypatch.setattr(dec, "step_logits", heads)
    monkeypatch.setattr(dec, "_decode", decode)
    ids, h = dec.greedy(make_memory(dec))
    monkeypatch.setattr(dec, "step_logits", real_heads)
    monkeypatch.setattr(dec, "_decode", real_decode)
    return ids, h, inputs[-1]


def test_greedy_marker_rows_carry_ignore_and_are_read_as_bos_and_the_end_row_keeps_its_ids(monkeypatch):
    """Greedy decoding: a predicted marker row's verb/object/hand columns are -100 (as in the targets) and the next
    row reads them as BOS (as teacher forcing reads the targets' -100); the END row keeps its ids in every column;
    the states returned are those of teacher forcing on the greedy ids."""
    dec = make_decoder()
    kinds = [0, 1, 0, END_KIND, 3]
    ids, h, last_input = _scripted_greedy(dec, monkeypatch, kinds)
    assert ids.shape == (2, 5, 5)
    assert (ids[..., 4] == torch.tensor(kinds)).all()
    for r in (1, 4):  # marker rows
        assert (ids[:, r, :4] == IGNORE).all()
    for r in (0, 2, 3):  # <step> rows and END: real ids
        assert (ids[:, r, :4] >= 0).all()
        assert (ids[:, r, :4] < torch.tensor(BOS[:4])).all()
    bos = torch.tensor(BOS)
    expected = torch.cat([bos.expand(2, 1, 5), ids[:, :-1]], 1)
    expected = torch.where(expected < 0, bos.expand_as(expected), expected)
    assert torch.equal(last_input, expected)
    with torch.no_grad():
        _, forced = dec(make_memory(dec), ids)
    torch.testing.assert_close(h, forced)


def test_greedy_rows_are_those_of_decoding_the_whole_sequence_again_at_each_step():
    """Greedy decoding keeps the keys and values of the rows before and of the memory (it projected the memory
    again at each of the L passes); its rows are those of decoding the sequence so far again at each step, and
    without gradients the states it returns are the ones whose argmax are its ids (evaluate reads the ids so)."""
    for spec in (SPEC, ProgramSpec(step_verbs=6, objects=7, conditions=0, max_steps=6)):
        dec = make_decoder(seed=3, spec=spec)
        g = torch.Generator().manual_seed(4)
        with torch.no_grad():  # (embeddings and heads large enough that each row depends on the rows before)
            for name, p in dec.named_parameters():
                if "embed" in name or name == "step_pos":
                    p.copy_(torch.randn(p.shape, generator=g))
                elif name.endswith("_out.weight"):
                    p.mul_(4)
                else:  # (torch's decoder starts its layers as copies of one: made to differ)
                    p.add_(torch.randn(p.shape, generator=g) * 0.05)
        memory = make_memory(dec, B=4, M=6)
        bos = dec.bos()
        prev = bos.expand(4, 1, bos.shape[0])
        with torch.no_grad():
            for _ in range(spec.max_steps):
                logits = dec.step_logits(dec._decode(prev, memory)[:, -1:])
                step = torch.stack([logits[c].argmax(-1) for c in spec.columns], -1)
                prev = torch.cat([prev, dec.mask_markers(step, bos)], dim=1)
            expected = torch.where(prev[:, 1:] == bos, torch.full_like(prev[:, 1:], IGNORE), prev[:, 1:])
            ids, h = dec.greedy(memory)
            assert len(set(ids[..., 0].flatten().tolist())) > 3  # (rows that tell the orders of decoding apart)
            assert torch.equal(ids, expected)
            assert torch.equal(dec.ids_from_logits(dec.step_logits(h), pad_after_end=False), ids)
            torch.testing.assert_close(h, dec(memory, ids)[1], rtol=1e-5, atol=1e-5)
        ids_g, h_g = dec.greedy(memory)  # with gradients: the same ids, states that carry them
        assert torch.equal(ids_g, ids) and h_g.requires_grad
        torch.testing.assert_close(h_g.detach(), h, rtol=1e-5, atol=1e-5)


def test_after_end_marks_the_rows_after_the_first_end_row():
    dec = make_decoder()
    ids = torch.zeros(3, 5, 5, dtype=torch.long)
    ids[0, :, 4] = torch.tensor([0, END_KIND, 0, END_KIND, 0])
    ids[1, :, 4] = torch.tensor([END_KIND, 1, 2, 3, 0])
    ids[2, :, 4] = torch.tensor([0, 1, 2, 3, 0])  # no END
    assert dec.after_end(ids).tolist() == [[False, False, True, True, True], [False, True, True, True, True],
                                           [False] * 5]
    triple = make_decoder(spec=ProgramSpec(step_verbs=6, objects=7, conditions=3, max_steps=5))
    rows = torch.tensor([[[1, 1, 1], [5, 6, 6], [2, 2, 2]], [[5, 0, 0], [1, 1, 1], [1, 1, 1]]])
    assert triple.after_end(rows).tolist() == [[False, False, True], [False, True, True]]


def test_the_memory_is_the_clip_feature_row_plus_recognition_then_the_video_tokens():
    torch.manual_seed(0)
    dec = ProgramDecoder(SPEC, in_dim=12, dim=16, heads=2, recognition=5).eval()
    tokens, feature, rec = torch.randn(2, 4, 12), torch.randn(2, 12), torch.randn(2, 5)
    with torch.no_grad():
        mem = dec.memory(tokens, feature, rec)
        torch.testing.assert_close(mem[:, 0], dec.memory_proj(feature) + dec.recognition_in(rec))
        torch.testing.assert_close(mem[:, 1:], dec.memory_proj(tokens))
        plain = make_decoder()
        torch.testing.assert_close(plain.memory(tokens)[:, 0], plain.memory_proj(tokens.mean(1)))
    with pytest.raises(ValueError, match="recognition"):
        dec.memory(tokens, feature)


def test_a_triple_decoder_predicts_no_per_row_conditions():
    """A spec without structure (older manifests) builds the former triple decoder: three columns, no per-row
    condition head (its checkpoints hold none)."""
    dec = make_decoder(spec=ProgramSpec(step_verbs=6, objects=7, conditions=3, max_steps=5))
    assert dec.step_cond_out is None
    with torch.no_grad():
        logits, _ = dec(make_memory(dec), torch.zeros(2, 5, 3, dtype=torch.long))
    assert set(logits) == {"step_verb", "step_obj_a", "step_obj_b"}
    assert not any(k.startswith("step_cond") for k, _ in dec.named_parameters())


def test_a_fresh_aggregator_is_the_identity_and_the_clips_order_matters():
    """The gate starts at zero: the baseline's feature is the start point. Each clip has its position (s_{i-2},
    s_{i-1}, s_i): the same embeddings in another order give another aggregate."""
    torch.manual_seed(0)
    agg = AnticipationAggregator(dim=16, feat_dim=8, context=2, heads=2).eval()
    feature, embeds = torch.randn(2, 8), torch.randn(2, 3, 16)
    mask = torch.ones(2, 3, dtype=torch.bool)
    with torch.no_grad():
        assert torch.equal(agg(feature, embeds, mask), feature)
        agg.gate.fill_(1.0)
        a = agg(feature, embeds, mask)
        b = agg(feature, embeds[:, [1, 0, 2]], mask)
    assert not torch.allclose(a, b, atol=1e-5)


# ------------------------------------------------------------------------------------------------- losses
def _nll(logits, target):
    return float(-(logits[target] - torch.logsumexp(logits, 0)))


def test_label_smoothing_smooths_the_action_cross_entropies_not_the_program_columns():
    g = torch.Generator().manual_seed(5)
    sizes = {"step_verb": 6, "step_obj_a": 7, "step_obj_b": 7}
    out = {k: torch.randn(1, 2, n, generator=g) for k, n in sizes.items()}
    out.update(verb=torch.randn(1, 5, generator=g), noun=torch.randn(1, 4, generator=g), conditions=torch.zeros(1, 2))
    steps = torch.tensor([[[1, 2, 3], [4, 5, 6]]])
    batch = {"verb_class": torch.tensor([2]), "noun_class": torch.tensor([3]), "has_program": torch.tensor([True]),
             "program_steps": steps, "conditions": torch.zeros(1, 2)}
    eps = 0.2
    _, parts = leap_loss(out, batch, label_smoothing=eps)

    def smoothed(logits, target):  # (1 - eps) * nll + eps * mean over classes of -log p
        return (1 - eps) * _nll(logits, target) + eps * float(-torch.log_softmax(logits, 0).mean())

    assert parts["ce_verb"] == pytest.approx(smoothed(out["verb"][0], 2), rel=1e-5)
    assert parts["ce_noun"] == pytest.approx(smoothed(out["noun"][0], 3), rel=1e-5)
    l_t = sum(sum(_nll(out[k][0, r], int(steps[0, r, i])) for r in range(2)) / 2 for i, k in enumerate(sizes)) / 3
    assert parts["l_t"] == pytest.approx(l_t, rel=1e-5)


def test_l_t_of_triples_with_short_targets_is_the_mean_of_three_columns_over_programs_only():
    """Targets of fewer rows than the decoder's are padded with -100 (ignored, never class 0); a triple decoder's
    L_T is the mean of its three columns; a segment without a program sits out, even when others in the batch have
    one."""
    g = torch.Generator().manual_seed(6)
    sizes = {"step_verb": 6, "step_obj_a": 7, "step_obj_b": 7}
    out = {k: torch.randn(2, 4, n, generator=g) for k, n in sizes.items()}
    out.update(verb=torch.randn(2, 5, generator=g), noun=torch.randn(2, 4, generator=g), conditions=torch.zeros(2, 2))
    steps = torch.tensor([[[1, 2, 3], [4, 5, 6]], [[0, 0, 0], [1, 1, 1]]])  # 2 rows, the decoder has 4
    batch = {"verb_class": torch.tensor([2, 1]), "noun_class": torch.tensor([3, 0]),
             "has_program": torch.tensor([True, False]), "program_steps": steps, "conditions": torch.zeros(2, 2)}
    _, parts = leap_loss(out, batch)
    l_t = sum(sum(_nll(out[k][0, r], int(steps[0, r, i])) for r in range(2)) / 2 for i, k in enumerate(sizes)) / 3
    assert parts["l_t"] == pytest.approx(l_t, rel=1e-5)
    assert parts["l_pc"] == pytest.approx(float(torch.log(torch.tensor(2.0))), rel=1e-5)  # zero logits, no positive


# ------------------------------------------------------------------------------------------------- the model
PROGRAM = {"step_verbs": 6, "objects": 7, "conditions": 3, "max_steps": 4, "hands": 4, "structure": 5}


def tiny_model(seed=0, **over):
    args = {"backbone": "uniformerv2_tiny", "num_frames": 4, "img_size": 32, "num_verbs": 5, "num_nouns": 4,
            "program": PROGRAM, "anticipation": None, "decoder_dim": 32, "decoder_heads": 4, "decoder_dropout": 0.0}
    args.update(over)
    torch.manual_seed(seed)
    return build_model(args)


def _video(B=2, seed=3, context=0):
    g = torch.Generator().manual_seed(seed)
    if context:
        return torch.randn(B, context, 3, 4, 32, 32, generator=g)
    return torch.randn(B, 3, 4, 32, 32, generator=g)


def _steps(B=2):
    steps = torch.full((B, 4, 5), -100)
    steps[:, 0] = torch.tensor([1, 2, 3, 0, 0])
    steps[:, 1] = torch.tensor([5, 6, 6, 3, 4])
    return steps


def test_label_forcing_gives_the_decoder_the_true_verb_and_noun_one_hot(monkeypatch):
    """decoder_label_forcing 1: in training with targets every clip's recognition input is the one-hot of its true
    verb (first) and noun (then); an unknown class (-1) keeps the heads' probabilities; greedy decoding (no targets)
    and evaluation never read the labels."""
    model = tiny_model(decoder_label_forcing=1.0)
    seen = []
    real = model.decoder.memory
    monkeypatch.setattr(model.decoder, "memory", lambda t, f, r: (seen.append(r.detach().clone()), real(t, f, r))[1])
    video, steps = _video(), _steps()
    labels = (torch.tensor([3, -1]), torch.tensor([1, 2]))
    model.train()
    model(video, steps, labels=labels)
    rec = seen[-1]
    assert torch.equal(rec[0], torch.cat([F.one_hot(torch.tensor(3), 5), F.one_hot(torch.tensor(1), 4)]).float())
    assert torch.equal(rec[1, 5:], F.one_hot(torch.tensor(2), 4).float())
    with torch.no_grad():
        feature, _ = model.encode(video)
        probs = model.verb_head(feature).softmax(-1)
    torch.testing.assert_close(rec[1, :5], probs[1])  # verb -1: the verb head's probabilities
    assert not torch.equal(rec[1, :5], F.one_hot(torch.tensor(0), 5).float())
    model(video, None, labels=labels)  # greedy in training: no forcing
    torch.testing.assert_close(seen[-1][:, :5], probs)


def test_the_program_losses_do_not_move_the_recognition_heads_through_the_decoder():
    """The verb/noun probabilities in the decoder's memory are detached: a loss on the program logits alone gives the
    verb and noun heads no gradient."""
    model = tiny_model(decoder_label_forcing=0.0).train()
    out = model(_video(), _steps())
    (out["step_verb"].sum() + out["step_kind"].sum() + out["step_conditions"].sum()).backward()
    assert model.verb_head.weight.grad is None and model.noun_head.weight.grad is None
    assert model.decoder.recognition_in.weight.grad is not None


def test_context_grad_false_encodes_the_context_clips_without_gradients(monkeypatch):
    for context_grad, expected in ((True, [True, True]), (False, [True, False])):
        model = tiny_model(anticipation={"context": 2, "aggregate": True, "context_grad": context_grad})
        grad_on = []
        real = model.encode
        monkeypatch.setattr(model, "encode", lambda v: (grad_on.append(torch.is_grad_enabled()), real(v))[1])
        model(_video(), _steps(), _video(context=2), torch.ones(2, 2, dtype=torch.bool))
        assert grad_on == expected


def test_context_clips_without_a_mask_are_all_present_and_the_default_context_is_two():
    """docs: the aggregator reads the three clips s_{i-2}, s_{i-1}, s_i."""
    model = tiny_model(anticipation={"aggregate": True}).eval()
    assert model.context == 2 and model.aggregator.clip_pos.shape[1] == 3
    with torch.no_grad():
        model.aggregator.gate.fill_(1.0)
        ctx = _video(context=2)
        a = model(_video(), None, ctx, None)["verb"]
        b = model(_video(), None, ctx, torch.ones(2, 2, dtype=torch.bool))["verb"]
        c = model(_video(), None, ctx, torch.zeros(2, 2, dtype=torch.bool))["verb"]
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c, atol=1e-5)


def test_ids_from_logits_blank_marker_rows_like_the_targets():
    """leap evaluate scores the argmax ids of the step logits against the targets: a marker row's verb/object/hand
    columns are -100 there, an END row keeps its ids, the rows after it are -100."""
    dec = make_decoder()
    rows = torch.tensor([[[2, 3, 4, 1, 0], [5, 6, 6, 2, 1], [1, 1, 1, 1, END_KIND], [1, 2, 3, 0, 0]]])
    logits = {c: F.one_hot(rows[..., i], n).float() for i, (c, n) in enumerate(zip(SPEC.columns, SPEC.sizes))}
    assert dec.ids_from_logits(logits).tolist() == [[[2, 3, 4, 1, 0], [-100, -100, -100, -100, 1],
                                                     [1, 1, 1, 1, END_KIND], [-100] * 5]]
    assert dec.ids_from_logits(logits, pad_after_end=False)[0, 3].tolist() == [1, 2, 3, 0, 0]


def test_programs_with_structure_and_no_condition_have_no_per_row_condition_head():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns of a zero-element Linear
        dec = make_decoder(spec=ProgramSpec(step_verbs=6, objects=7, conditions=0, max_steps=5, hands=4, structure=5))
    assert dec.step_cond_out is None
    with torch.no_grad():
        logits, _ = dec(make_memory(dec), STEPS)
    assert "step_conditions" not in logits


def test_the_anticipation_aggregate_feeds_both_action_heads_and_l_pc_reaches_the_backbone():
    model = tiny_model(anticipation={"context": 2, "aggregate": True}).eval()
    inputs = {"verb": [], "noun": []}
    model.verb_head.register_forward_hook(lambda m, i, o: inputs["verb"].append(i[0].detach()))
    model.noun_head.register_forward_hook(lambda m, i, o: inputs["noun"].append(i[0].detach()))
    with torch.no_grad():
        model.aggregator.gate.fill_(1.0)
    out = model(_video(), _steps(), _video(context=2), torch.ones(2, 2, dtype=torch.bool))
    feature = inputs["verb"][0]  # the recognition probabilities for the decoder read the clip feature
    action = inputs["verb"][-1]
    assert not torch.allclose(action, feature, atol=1e-5)
    torch.testing.assert_close(inputs["noun"][-1], action)
    torch.testing.assert_close(out["noun"], model.noun_head(action))
    # the program's conditions are predicted from the clip feature, and their loss trains the backbone
    torch.testing.assert_close(out["conditions"], model.condition_head(feature))
    (grad,) = torch.autograd.grad(out["conditions"].sum(), model.backbone.conv1.weight)
    assert grad.abs().sum() > 0


def test_decoder_defaults_width_and_no_recognition():
    """decoder_dim defaults to min(256, backbone width); decoder_recognition false builds a decoder that reads
    the clip feature and the tokens only."""
    args = {"backbone": "uniformerv2_tiny", "num_frames": 4, "img_size": 32, "num_verbs": 5, "num_nouns": 4,
            "program": PROGRAM, "decoder_heads": 4}
    torch.manual_seed(0)
    assert build_model({**args, "width": 320, "n_dim": 320}).decoder.dim == 256
    assert build_model(args).decoder.dim == 64
    model = build_model({**args, "decoder_recognition": False}).eval()
    assert model.decoder.recognition_in is None
    with torch.no_grad():
        assert model(_video(), _steps())["step_verb"].shape == (2, 4, 6)


def test_the_aggregator_reads_the_current_clips_program_embedding_last():
    """embeds [B, C+1, dim]: the context clips (oldest first), then the current clip's own program embedding."""
    model = tiny_model(anticipation={"context": 2, "aggregate": True, "pool": "program"}).eval()
    seen = {}
    model.aggregator.register_forward_hook(lambda m, i, o: seen.update(embeds=i[1].detach(), mask=i[2]))
    video, ctx = _video(), _video(context=2)
    mask = torch.tensor([[False, True], [True, True]])
    with torch.no_grad():
        model(video, None, ctx, mask)
        own = model._program_embedding(*model.encode(video))
        latest = model._program_embedding(*model.encode(ctx[:, 1]))
    torch.testing.assert_close(seen["embeds"][:, 2], own)
    torch.testing.assert_close(seen["embeds"][:, 1], latest)
    assert (seen["embeds"][0, 0] == 0).all()  # an absent clip's slot stays empty
    assert seen["mask"].tolist() == [[False, True, True], [True, True, True]]


def test_a_batch_without_per_row_conditions_leaves_l_pc_the_program_term():
    """Per-row conditions enter L_PC only when the batch has them (shards without ``step_conditions``)."""
    g = torch.Generator().manual_seed(7)
    out = {"verb": torch.randn(1, 5, generator=g), "noun": torch.randn(1, 4, generator=g),
           "step_verb": torch.randn(1, 2, 6, generator=g), "step_obj_a": torch.randn(1, 2, 7, generator=g),
           "step_obj_b": torch.randn(1, 2, 7, generator=g), "step_hand": torch.randn(1, 2, 4, generator=g),
           "step_kind": torch.randn(1, 2, 5, generator=g), "conditions": torch.randn(1, 4, generator=g),
           "step_conditions": torch.randn(1, 2, 4, generator=g)}
    cond = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    batch = {"verb_class": torch.tensor([1]), "noun_class": torch.tensor([2]), "has_program": torch.tensor([True]),
             "program_steps": torch.tensor([[[1, 2, 3, 0, 0], [5, 6, 6, 3, 4]]]), "conditions": cond}
    _, parts = leap_loss(out, batch, condition_pos_weight=10.0)
    x = out["conditions"][0]
    expected = -(10.0 * cond[0] * F.logsigmoid(x) + (1 - cond[0]) * F.logsigmoid(-x)).mean()
    assert parts["l_pc"] == pytest.approx(float(expected), rel=1e-5)
