"""Review of leap's model, losses and inference against the LEAP paper (arXiv 2312.00055): no ground truth
(labels, program targets) reaches the recognition logits at validation or evaluation; padding and the rows after
END change neither the teacher-forced rows nor L_T; conditions of segments without a program are not trained;
anticipation samples observe nothing at or after t_s - tau_a; a clip's scores do not depend on its batch."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from leap_cli.model import build_model, leap_loss

torch.set_num_threads(1)

PROGRAM = {"step_verbs": 8, "objects": 10, "conditions": 5, "max_steps": 6, "hands": 6, "structure": 10}
END_ROW = [7, 9, 9, 5, 9]  # END: the last id of every column
B = 3


def tiny_args(**over):
    args = {"backbone": "uniformerv2_tiny", "num_frames": 4, "img_size": 64, "num_verbs": 7, "num_nouns": 9,
            "program": PROGRAM, "anticipation": None, "decoder_dim": 64, "decoder_heads": 4}
    args.update(over)
    return args


def anticipation_model(seed=0, **over):
    torch.manual_seed(seed)
    model = build_model(tiny_args(anticipation={"context": 2, "aggregate": True, "pool": "program"}, **over))
    with torch.no_grad():  # zero-initialised gates and residual branches: small values, so that every input counts
        for p in model.parameters():
            if p.dtype.is_floating_point and p.abs().max() == 0:
                p.normal_(0, 0.05)
    return model


def targets(seed):
    """Labels and program targets of B segments: two sub-action rows, END, then padding."""
    g = torch.Generator().manual_seed(seed)
    steps = torch.full((B, PROGRAM["max_steps"], 5), -100)
    steps[:, :2, :4] = torch.randint(0, 6, (B, 2, 4), generator=g)
    steps[:, :2, 4] = 0  # <step>
    steps[:, 2] = torch.tensor(END_ROW)
    return {"verb_class": torch.randint(0, 7, (B,), generator=g), "noun_class": torch.randint(0, 9, (B,), generator=g),
            "has_program": torch.rand(B, generator=g) > 0.3, "program_steps": steps,
            "conditions": (torch.rand(B, 10, generator=g) > 0.5).float(),
            "step_conditions": (torch.rand(B, PROGRAM["max_steps"], 10, generator=g) > 0.5).float()}


def clips(seed=7):
    g = torch.Generator().manual_seed(seed)
    video = torch.randint(0, 256, (B, 3, 4, 64, 64), generator=g, dtype=torch.uint8)
    context = torch.randint(0, 256, (B, 2, 3, 4, 64, 64), generator=g, dtype=torch.uint8)
    mask = torch.tensor([[True, True], [False, True], [False, False]])
    return {"video": video, "context_video": context, "context_mask": mask}


# ------------------------------------------------------------------------ 1. no ground truth in the recognition
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_recognition_logits_do_not_read_the_labels_or_program_targets_of_the_batch(mode):
    """Validation (leap train's ``evaluate``) runs ``forward_loss``, which passes the program targets (teacher
    forcing) and the true verb/noun (``decoder_label_forcing``) to the model. They may reach the program decoder's
    logits only, never the verb/noun logits (the validation figures and best.pt): with another batch's labels and
    programs, the same clips give the same verb and noun logits, in eval and (same RNG draws) in training mode,
    where forcing is on, for an anticipation model whose aggregator decodes programs of every clip."""
    from leap_cli.train.config import Config
    from leap_cli.train.loop import forward_loss

    model = anticipation_model(decoder_label_forcing=1.0)
    getattr(model, mode)()
    outs = []
    for seed in (1, 2):
        batch = {**targets(seed), **clips()}
        torch.manual_seed(11)
        with torch.no_grad():
            _, _, out = forward_loss(model, batch, Config())
        outs.append(out)
    a, b = targets(1), targets(2)
    assert not torch.equal(a["verb_class"], b["verb_class"]) and not torch.equal(a["program_steps"], b["program_steps"])
    assert torch.equal(outs[0]["verb"], outs[1]["verb"]) and torch.equal(outs[0]["noun"], outs[1]["noun"])
    assert torch.equal(outs[0]["conditions"], outs[1]["conditions"])
    # the decoder does read them in training (forcing 1.0): the check above is not vacuous
    if mode == "train":
        assert not torch.equal(outs[0]["step_verb"], outs[1]["step_verb"])


def test_evaluate_scores_ignore_the_shards_targets_and_a_clips_batch():
    """``leap evaluate`` (``inference.predict``) feeds the model no target, and eval mode keeps the clips of a
    batch apart: a segment's verb/noun scores and greedy program are the same whatever the labels and program
    targets the shards hold and whatever other segments (with other context masks) share its batch."""
    from leap_cli.evaluate.inference import predict

    model = anticipation_model()
    data = clips()
    whole = [{**targets(1), **data, "narration_id": ["a", "b", "c"]}]
    other = [{**targets(2), **data, "narration_id": ["a", "b", "c"]}]
    singles = [{**{k: v[i:i + 1] for k, v in {**targets(3), **data}.items()}, "narration_id": [n]}
               for i, n in enumerate("abc")]
    s1, s2, s3 = (predict(model, batches) for batches in (whole, other, singles))
    for key in ("verb_output", "noun_output"):
        assert torch.equal(s1[key], s2[key])
        assert torch.allclose(s1[key], s3[key], atol=1e-5), key
    assert torch.equal(s1["program"]["steps"], s2["program"]["steps"])
    assert torch.equal(s1["program"]["steps"], s3["program"]["steps"])
    # leap train's validation figures (forward_loss, targets passed) score the same logits as leap evaluate
    from leap_cli.train.config import Config
    from leap_cli.train.loop import forward_loss

    model.eval()
    with torch.no_grad():
        _, _, out = forward_loss(model, {**targets(1), **data}, Config())
    assert torch.allclose(out["verb"], s1["verb_output"], atol=1e-6)
    assert torch.allclose(out["noun"], s1["noun_output"], atol=1e-6)


# ------------------------------------------------------------------------ 2. L_T: padding, END, object B
def test_rows_after_end_change_neither_the_teacher_forced_rows_nor_the_loss():
    """Teacher forcing feeds row l-1 to predict row l under a causal mask: what stands after the END row (padding
    -100, or anything else) cannot change the logits of the rows up to END, and L_T counts only the rows up to END
    (a target tensor of fewer rows than max_steps is padded, not misaligned)."""
    model = build_model(tiny_args(decoder_dropout=0.0))
    model.eval()
    batch = {**targets(1), "video": clips()["video"], "has_program": torch.ones(B, dtype=torch.bool)}
    garbage = batch["program_steps"].clone()
    garbage[:, 3:] = torch.tensor([1, 2, 3, 0, 0])  # rows after END: valid-looking ids instead of padding
    with torch.no_grad():
        clean = model(batch["video"], batch["program_steps"])
        dirty = model(batch["video"], garbage)
    for key in ("step_verb", "step_obj_a", "step_obj_b", "step_hand", "step_kind", "step_conditions"):
        assert torch.allclose(clean[key][:, :3], dirty[key][:, :3], atol=1e-6), key
        assert not torch.allclose(clean[key][:, 3:], dirty[key][:, 3:], atol=1e-4), key
    # the loss against the true (padded) targets is the same whatever the decoder received after END
    full = leap_loss(clean, batch)[1]
    assert leap_loss(dirty, batch)[1] == pytest.approx(full, rel=1e-6)
    # targets cut to the rows up to END (fewer than max_steps) give the same loss
    short = {**batch, "program_steps": batch["program_steps"][:, :3], "step_conditions": batch["step_conditions"][:, :3]}
    assert leap_loss(clean, short)[1] == pytest.approx(full, rel=1e-6)


def test_end_row_and_absent_object_b_are_supervised_padding_is_not():
    """What L_T supervises (programs/targets.py): the END row in all five columns and an absent object B as the
    ``none`` class are targets; padding is not. Moving the END row's kind logit or a sub-action's Obj(B) logit moves
    L_T; moving a padded row's logits does not (the encoding of "none" and END: tests/test_program_targets.py)."""
    g = torch.Generator().manual_seed(0)
    sizes = {"step_verb": 8, "step_obj_a": 10, "step_obj_b": 10, "step_hand": 6, "step_kind": 10}
    out = {k: torch.randn(1, 4, n, generator=g) for k, n in sizes.items()}
    out.update(verb=torch.randn(1, 7, generator=g), noun=torch.randn(1, 9, generator=g), conditions=torch.zeros(1, 10))
    steps = torch.tensor([[[2, 1, 8, 0, 0], END_ROW, [-100] * 5, [-100] * 5]])  # Obj(B) 8 = "none"
    batch = {"verb_class": torch.tensor([1]), "noun_class": torch.tensor([1]), "has_program": torch.tensor([True]),
             "program_steps": steps, "conditions": torch.zeros(1, 10)}
    base = leap_loss(out, batch)[1]["l_t"]

    def moved(key, row, col):
        o = {**out, key: out[key].clone()}
        o[key][0, row, col] += 5.0
        return leap_loss(o, batch)[1]["l_t"]

    assert moved("step_kind", 1, 9) < base  # END row's kind: supervised
    assert moved("step_obj_b", 0, 8) < base  # absent object B ("none"): supervised
    assert moved("step_verb", 2, 3) == pytest.approx(base, rel=1e-7)  # padding
    assert moved("step_obj_b", 3, 8) == pytest.approx(base, rel=1e-7)


# ------------------------------------------------------------------------ 3. L_PC of segments without a program
def test_conditions_of_segments_without_a_program_are_masked_not_trained_as_negatives():
    """A segment whose program is missing or invalid (``has_program`` false) enters L_PC neither through its
    program-level conditions nor through its per-row ones: whatever its condition targets, the loss and the
    condition heads' gradient on it are the same (zero); a segment WITH a program and no condition is trained as
    all-negative."""
    model = build_model(tiny_args(decoder_dropout=0.0))
    model.eval()
    batch = {**targets(1), "video": clips()["video"], "has_program": torch.tensor([True, False, True])}
    out = model(batch["video"], batch["program_steps"])
    flipped = {**batch, "conditions": batch["conditions"].clone(), "step_conditions": batch["step_conditions"].clone()}
    flipped["conditions"][1] = 1 - flipped["conditions"][1]
    flipped["step_conditions"][1] = 1 - flipped["step_conditions"][1]
    assert leap_loss(out, flipped)[1] == pytest.approx(leap_loss(out, batch)[1], rel=1e-6)
    loss, _ = leap_loss(out, batch)
    g_cond, g_step = torch.autograd.grad(loss, [out["conditions"], out["step_conditions"]])
    assert g_cond[1].abs().max() == 0 and g_step[1].abs().max() == 0
    assert g_cond[0].abs().max() > 0 and g_step[0, :3].abs().max() > 0 and g_step[0, 3:].abs().max() == 0
    # a program without conditions: all-negative targets, trained (raising its logits raises L_PC)
    empty = {**batch, "conditions": torch.zeros(B, 10), "step_conditions": torch.zeros(B, PROGRAM["max_steps"], 10)}
    raised = {**out, "conditions": out["conditions"].detach().clone()}
    raised["conditions"][0] += 3.0
    assert leap_loss(raised, empty)[1]["l_pc"] > leap_loss({**out, "conditions": out["conditions"].detach()}, empty)[1]["l_pc"]


# ------------------------------------------------------------------------ 4. anticipation observes before t_s - tau_a
@pytest.mark.parametrize("mode", ["clips", "segments"])
def test_anticipation_samples_store_no_frame_at_or_after_the_cut_off(mode):
    """EPIC's protocol: nothing at or after t_s - tau_a is observed. In both context modes every stored frame (the
    observed clip and the context clips) starts before the cut-off, also where the previous segment (a context
    clip in ``segments`` mode) runs past it into the action."""
    from leap_cli.epic.timing import MP4, FrameClock
    from leap_cli.shards.writer import ShardSettings, plan_samples

    fps = 60.0
    segs = [SimpleNamespace(narration_id=f"V_{i}", video_id="V", start=a, stop=b, start_frame=int(a * fps) + 1,
                            stop_frame=int(b * fps), verb_class=0, noun_class=0)
            for i, (a, b) in enumerate([(1.5, 3.6), (2.2, 3.4), (3.0, 4.0), (4.51, 5.0), (6.0, 7.25)])]
    settings = ShardSettings(split="train", task="anticipation", frames=8, context_mode=mode, tau_o=1.0, span_frames=32)
    _, records, _ = plan_samples(segs, lambda v: fps, settings)
    clock = FrameClock(MP4, fps)
    checked = 0
    for s in segs:
        rec = records[s.narration_id]
        frames = rec["frame_indices"] + [f for c in rec["context"] for f in c["frame_indices"]]
        for f in frames:
            assert clock.time_of(f) < s.start - 1.0 - 1e-9, (mode, s.narration_id, f)
            checked += 1
    assert checked > 20


# ------------------------------------------------------------------------ 5. greedy decoding: its cost
def test_an_anticipation_forward_decodes_each_clip_once():
    """Was wrong: BUG (cost): an anticipation model's forward without targets greedily decodes the current clip twice
    (step logits + aggregation embedding).
    Greedy decoding has no KV cache: max_steps decoder passes over growing prefixes (on B/16 8x224, 16 rows, CPU:
    ~0.3x the backbone's time per clip). ``LeapModel.forward`` without targets decodes the current clip greedily
    for the step logits, and ``_aggregate`` -> ``_program_embedding`` decodes the same memory greedily again for
    its embedding: 4 decodes per sample (2 context + current twice) where 3 give the same outputs."""
    from leap_cli.model.heads import ProgramDecoder

    model = anticipation_model()
    model.eval()
    decoded = []
    greedy = ProgramDecoder.greedy

    def counting(self, memory):
        decoded.append(memory.shape[0])
        return greedy(self, memory)

    data = clips()
    mask = torch.ones(B, 2, dtype=torch.bool)
    ProgramDecoder.greedy = counting
    try:
        with torch.no_grad():
            model(data["video"], context_video=data["context_video"], context_mask=mask)
    finally:
        ProgramDecoder.greedy = greedy
    assert sum(decoded) == 3 * B, decoded
