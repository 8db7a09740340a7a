"""UniFormerV2 + LEAP heads: forward/backward, overfitting, losses, checkpoint loading."""

from __future__ import annotations

import pytest
import torch

from leap_cli.errors import LeapError
from leap_cli.model import build_model, leap_loss

torch.set_num_threads(1)

PROGRAM = {"step_verbs": 8, "objects": 10, "conditions": 5, "max_steps": 6}


def tiny_args(**over):
    args = {"backbone": "uniformerv2_tiny", "num_frames": 4, "img_size": 64, "num_verbs": 7, "num_nouns": 9,
            "program": PROGRAM, "anticipation": None, "decoder_dim": 64, "decoder_heads": 4}
    args.update(over)
    return args


def test_programs_without_conditions_build_a_model_without_a_library_warning():
    """Training programs with no condition: torch's "Initializing zero-element tensors is a no-op" was printed by
    train, show and evaluate (QA)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = build_model(tiny_args(program={**PROGRAM, "conditions": 0}))
    assert model.condition_head.out_features == 0


def make_batch(B=2, context=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    steps = torch.full((B, PROGRAM["max_steps"], 3), -100)
    steps[:, :3] = torch.randint(0, 8, (B, 3, 3), generator=g)
    batch = {
        "video": torch.randn(B, 3, 4, 64, 64, generator=g),
        "verb_class": torch.randint(0, 7, (B,), generator=g),
        "noun_class": torch.randint(0, 9, (B,), generator=g),
        "has_program": torch.ones(B, dtype=torch.bool),
        "program_steps": steps,
        "conditions": (torch.rand(B, 10, generator=g) > 0.5).float(),
    }
    if context:
        batch["context_video"] = torch.randn(B, context, 3, 4, 64, 64, generator=g)
        batch["context_mask"] = torch.ones(B, context, dtype=torch.bool)
        batch["context_mask"][0, 0] = False
    return batch


def unzero_(model):
    """Give zero-initialised tensors (official zero-init residual branches, gates) small random values so
    that every parameter receives a non-zero gradient."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dtype.is_floating_point and p.abs().max() == 0:
                p.normal_(0, 0.02)


@pytest.mark.parametrize("anticipation", [None, {"context": 2, "aggregate": True}])
def test_forward_backward_every_parameter_gets_gradient(anticipation):
    torch.manual_seed(0)
    model = build_model(tiny_args(anticipation=anticipation))
    unzero_(model)
    batch = make_batch(context=2 if anticipation else 0)
    out = model(batch["video"], batch["program_steps"], batch.get("context_video"), batch.get("context_mask"))
    assert out["verb"].shape == (2, 7) and out["noun"].shape == (2, 9)
    assert out["step_verb"].shape == (2, 6, 8)
    assert out["step_obj_a"].shape == (2, 6, 10) and out["step_obj_b"].shape == (2, 6, 10)
    assert out["conditions"].shape == (2, 10)
    assert all(torch.isfinite(v).all() for v in out.values())
    loss, parts = leap_loss(out, batch)
    assert set(parts) == {"ce_verb", "ce_noun", "l_t", "l_pc"} and all(v > 0 for v in parts.values())
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("anticipation", [None, {"context": 2, "aggregate": True}])
def test_a_batch_without_programs_still_reaches_every_parameter(anticipation):
    """DDP runs without its unused-parameter search: a head that sat out a step's loss (no program in the batch)
    must still get a gradient, of zeros, or the next step stops."""
    torch.manual_seed(0)
    model = build_model(tiny_args(anticipation=anticipation))
    batch = make_batch(context=2 if anticipation else 0)
    batch["has_program"][:] = False
    out = model(batch["video"], batch["program_steps"], batch.get("context_video"), batch.get("context_mask"))
    loss, parts = leap_loss(out, batch)
    assert parts["l_t"] == 0 and parts["l_pc"] == 0
    loss.backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    if anticipation is None:  # (anticipation's action feature reads the decoder's states: real gradients there)
        assert all(float(p.grad.abs().sum()) == 0 for n, p in model.named_parameters()
                   if n.startswith(("decoder.", "condition_head.")))


def test_predict_program_is_greedy_decoding_of_forward():
    torch.manual_seed(1)
    model = build_model(tiny_args()).eval()
    unzero_(model)
    video = make_batch()["video"]
    torch.manual_seed(1)
    ids = model.predict_program(video, pad_after_end=False)
    assert ids.shape == (2, 6, 3) and ids.dtype == torch.long
    out = model(video)  # no targets: greedy decoding, logits of the greedy sequence
    assert torch.equal(out["step_verb"].argmax(-1), ids[..., 0])
    assert torch.equal(out["step_obj_b"].argmax(-1), ids[..., 2])
    # teacher forcing with the greedy ids reproduces the same logits
    forced = model(video, program_steps=ids)
    assert torch.allclose(forced["step_obj_a"], out["step_obj_a"], atol=1e-5)


def test_predict_program_pads_after_the_first_end_step(monkeypatch):
    model = build_model(tiny_args()).eval()
    end = PROGRAM["step_verbs"] - 1  # END is the last id of the vocabulary
    raw = torch.tensor([[[1, 2, 3], [end, 9, 9], [4, 4, 4], [end, 9, 9], [5, 5, 5], [6, 6, 6]],
                        [[1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5, 6], [5, 6, 7], [6, 7, 8]]])
    monkeypatch.setattr(model.decoder, "greedy", lambda memory: (raw, None))
    ids = model.predict_program(make_batch()["video"])
    assert torch.equal(ids[0, :2], raw[0, :2]) and (ids[0, 2:] == -100).all()
    assert torch.equal(ids[1], raw[1])  # no END: nothing padded
    assert torch.equal(model.predict_program(make_batch()["video"], pad_after_end=False), raw)


def test_overfit_one_batch_loss_falls_tenfold():
    torch.manual_seed(0)
    model = build_model(tiny_args(decoder_dropout=0.0))
    batch = make_batch(B=2, seed=3)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    first = None
    for _ in range(60):
        out = model(batch["video"], batch["program_steps"])
        loss, _ = leap_loss(out, batch)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 10, (first, loss.item())


def test_loss_without_program_and_padding():
    torch.manual_seed(0)
    model = build_model(tiny_args())
    batch = make_batch()
    out = model(batch["video"], batch["program_steps"])
    full, parts = leap_loss(out, batch, lambda_t=2.0, lambda_pc=3.0)
    assert full.item() == pytest.approx(sum(parts[k] * w for k, w in
                                            [("ce_verb", 1), ("ce_noun", 1), ("l_t", 2), ("l_pc", 3)]), rel=1e-5)
    base, bparts = leap_loss(out, batch, program_loss=False)
    assert base.item() == pytest.approx(parts["ce_verb"] + parts["ce_noun"], rel=1e-6)
    assert bparts["l_t"] == 0 and bparts["l_pc"] == 0
    # a segment without a valid program contributes CE only: its program targets do not matter
    only_first = dict(batch, has_program=torch.tensor([True, False]))
    scrambled = dict(only_first, program_steps=batch["program_steps"].clone(), conditions=batch["conditions"].clone())
    scrambled["conditions"][1] = 1 - scrambled["conditions"][1]
    scrambled["program_steps"][1, :3] = (scrambled["program_steps"][1, :3] + 1) % 8
    a, _ = leap_loss(out, only_first)
    b, _ = leap_loss(out, scrambled)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    # padding (-100) steps are ignored: changing logits at padded steps changes nothing
    out2 = dict(out, step_verb=out["step_verb"].clone())
    out2["step_verb"][:, 4:, 0] += 10.0
    assert leap_loss(out2, batch)[0].item() == pytest.approx(leap_loss(out, batch)[0].item(), rel=1e-6)
    out2["step_verb"][:, 0, 0] += 10.0
    assert leap_loss(out2, batch)[0].item() != pytest.approx(leap_loss(out, batch)[0].item(), rel=1e-3)
    # unknown labels (-1) are ignored
    unknown = dict(batch, verb_class=torch.tensor([-1, -1]))
    assert leap_loss(out, unknown, program_loss=False)[1]["ce_verb"] == 0


def test_decoder_reads_the_recognition_heads_and_label_forcing_replaces_them():
    torch.manual_seed(0)
    model = build_model(tiny_args(decoder_dropout=0.0, decoder_label_forcing=1.0))
    unzero_(model)
    batch = make_batch()
    video, steps = batch["video"], batch["program_steps"]
    labels = (batch["verb_class"], batch["noun_class"])
    shift = torch.arange(7.0) * 3

    model.eval()
    before = model(video, steps)["step_verb"]
    assert torch.allclose(model(video, steps, labels=labels)["step_verb"], before)  # labels: training only
    with torch.no_grad():
        model.verb_head.bias.add_(shift)  # other verb probabilities, same clip feature
    assert not torch.allclose(model(video, steps)["step_verb"], before, atol=1e-4)  # the decoder reads them

    model.train()  # no dropout, no drop path: deterministic; forcing 1: every clip gets its true classes
    forced = model(video, steps, labels=labels)["step_verb"]
    unknown = model(video, steps, labels=(torch.tensor([-1, -1]), torch.tensor([-1, -1])))["step_verb"]
    with torch.no_grad():
        model.verb_head.bias.sub_(shift)
    assert torch.allclose(model(video, steps, labels=labels)["step_verb"], forced, atol=1e-6)
    # unknown classes (-1) are never forced: the heads' probabilities stay
    assert not torch.allclose(model(video, steps, labels=(torch.tensor([-1, -1]), torch.tensor([-1, -1])))["step_verb"],
                              unknown, atol=1e-4)


def test_condition_pos_weight_weighs_the_positive_entries():
    batch = make_batch()
    out = {"verb": torch.zeros(2, 7), "noun": torch.zeros(2, 9), "step_verb": torch.zeros(2, 6, 8),
           "step_obj_a": torch.zeros(2, 6, 10), "step_obj_b": torch.zeros(2, 6, 10), "conditions": torch.zeros(2, 10)}
    pos = float(batch["conditions"].mean())
    assert 0 < pos < 1
    ln2 = float(torch.log(torch.tensor(2.0)))
    assert leap_loss(out, batch, condition_pos_weight=1.0)[1]["l_pc"] == pytest.approx(ln2, rel=1e-5)  # unweighted
    weighted = leap_loss(out, batch, condition_pos_weight=10.0)[1]["l_pc"]
    assert weighted == pytest.approx(ln2 * (10 * pos + (1 - pos)), rel=1e-5)


def test_l_t_and_l_pc_are_the_documented_means_computed_by_hand():
    """L_T is the mean over the five columns of each column's cross-entropy over its rows; L_PC the mean of the
    program-level and the per-row condition terms (rows of the true sequence only), positives weighed by
    pos_weight. A sum instead of a mean, or one term alone, would train another loss than the docs' (and than
    lambda_t / lambda_pc were chosen for)."""
    g = torch.Generator().manual_seed(3)
    sizes = {"step_verb": 6, "step_obj_a": 5, "step_obj_b": 5, "step_hand": 4, "step_kind": 9}
    out = {k: torch.randn(1, 3, n, generator=g) for k, n in sizes.items()}
    out.update(verb=torch.randn(1, 7, generator=g), noun=torch.randn(1, 9, generator=g),
               conditions=torch.randn(1, 4, generator=g), step_conditions=torch.randn(1, 3, 4, generator=g))
    # row 0: a sub-action; row 1: a marker row (only its kind column counts); row 2: padding
    steps = torch.tensor([[[2, 1, 4, 0, 0], [-100, -100, -100, -100, 3], [-100] * 5]])
    cond = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    step_cond = torch.tensor([[[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]]])
    batch = {"verb_class": torch.tensor([3]), "noun_class": torch.tensor([5]), "has_program": torch.tensor([True]),
             "program_steps": steps, "conditions": cond, "step_conditions": step_cond}
    _, parts = leap_loss(out, batch, condition_pos_weight=10.0, label_smoothing=0.0)

    def nll(logits, target):  # -log softmax at the target
        return float(-(logits[target] - torch.logsumexp(logits, 0)))

    columns = []
    for i, key in enumerate(sizes):
        rows = [r for r in range(3) if steps[0, r, i] >= 0]
        columns.append(sum(nll(out[key][0, r], int(steps[0, r, i])) for r in rows) / len(rows))
    assert parts["l_t"] == pytest.approx(sum(columns) / 5, rel=1e-5)

    def bce(x, y, pw=10.0):  # mean of -(pw y log s(x) + (1 - y) log(1 - s(x)))
        x, y = x.flatten(), y.flatten()
        return float((-(pw * y * torch.nn.functional.logsigmoid(x) + (1 - y) * torch.nn.functional.logsigmoid(-x))).mean())

    program_term = bce(out["conditions"][0], cond[0])
    row_term = bce(out["step_conditions"][0, :2], step_cond[0, :2])  # not the padding row
    assert parts["l_pc"] == pytest.approx((program_term + row_term) / 2, rel=1e-5)


def test_the_loss_defaults_are_the_training_configs():
    """A call without keywords computes the loss leap train does (the function weighed the conditions 1, the
    config 10: the docs' example trained the condition heads unweighted)."""
    import dataclasses
    import inspect

    from leap_cli.train.config import LossConfig

    defaults = {k: p.default for k, p in inspect.signature(leap_loss).parameters.items() if p.kind == p.KEYWORD_ONLY}
    assert defaults == dataclasses.asdict(LossConfig())
    batch = make_batch()
    out = {"verb": torch.zeros(2, 7), "noun": torch.zeros(2, 9), "step_verb": torch.zeros(2, 6, 8),
           "step_obj_a": torch.zeros(2, 6, 10), "step_obj_b": torch.zeros(2, 6, 10), "conditions": torch.zeros(2, 10)}
    assert leap_loss(out, batch)[1]["l_pc"] == leap_loss(out, batch, condition_pos_weight=10.0)[1]["l_pc"]


def test_context_clips_without_gradients():
    torch.manual_seed(0)
    model = build_model(tiny_args(anticipation={"context": 2, "aggregate": True, "context_grad": False}))
    unzero_(model)
    batch = make_batch(context=2)
    video = batch["video"].requires_grad_(True)
    context = batch["context_video"].requires_grad_(True)
    out = model(video, batch["program_steps"], context, batch["context_mask"])
    leap_loss(out, batch)[0].backward()
    assert video.grad.abs().sum() > 0 and context.grad is None
    assert model.aggregator.attn.in_proj_weight.grad.abs().sum() > 0


def test_bad_model_args_are_clear_errors():
    with pytest.raises(LeapError, match="unknown model_args"):
        build_model(tiny_args(colour="red"))
    with pytest.raises(LeapError, match="unknown backbone"):
        build_model(tiny_args(backbone="resnet50"))
    with pytest.raises(LeapError, match="needs program heads"):
        build_model(tiny_args(program=None, anticipation={"context": 2, "aggregate": True}))
    with pytest.raises(LeapError, match="unknown model_args"):
        build_model(tiny_args(num_classes=5))
    with pytest.raises(LeapError, match=r"clips \[B, 3, T, H, W\]"):
        build_model(tiny_args())(torch.zeros(1, 2, 3, 4, 64, 64))
    with pytest.raises(LeapError, match="patch grid"):
        build_model(tiny_args())(torch.zeros(1, 3, 4, 80, 80))
    with pytest.raises(LeapError, match="anticipation keys"):
        build_model(tiny_args(anticipation={"context": 2, "aggreggate": False}))


# ------------------------------------------------------------------------------------------ checkpoints
from leap_cli.model.uniformerv2 import family_options, load_pretrained, uniformerv2_tiny  # noqa: E402


def official_uniformerv2_shapes(width=64, layers=3, heads=4, patch=16, img=64, kernel_t=3, downsample=True,
                                return_list=(1, 2), num_classes=400, no_lmhra=False, double_lmhra=True,
                                dw_reduction=1.5, frozen=False):
    """Key -> shape of the official OpenGVLab ``Uniformerv2`` module's state dict, written out from
    slowfast/models/uniformerv2_model.py (VisionTransformer / Transformer / ResidualAttentionBlock /
    Local_MHRA / Extractor), independent of our implementation."""
    C, red = width, int(width // dw_reduction)
    s = {"backbone.conv1.weight": (C, 3, kernel_t if downsample else 1, patch, patch),
         "backbone.class_embedding": (C,), "backbone.positional_embedding": ((img // patch) ** 2 + 1, C),
         "backbone.ln_pre.weight": (C,), "backbone.ln_pre.bias": (C,)}
    for i in range(layers):
        b = f"backbone.transformer.resblocks.{i}."
        lmhras = [] if no_lmhra else (["lmhra1", "lmhra2"] if double_lmhra else ["lmhra1"])
        for m in lmhras:
            p = f"{b}{m}.pos_embed."
            s.update({p + "0.weight": (C,), p + "0.bias": (C,), p + "0.running_mean": (C,), p + "0.running_var": (C,),
                      p + "0.num_batches_tracked": (), p + "1.weight": (red, C, 1, 1, 1), p + "1.bias": (red,),
                      p + "2.weight": (red, 1, 3, 1, 1), p + "2.bias": (red,), p + "3.weight": (C, red, 1, 1, 1),
                      p + "3.bias": (C,)})
        s.update({b + "attn.in_proj_weight": (3 * C, C), b + "attn.in_proj_bias": (3 * C,),
                  b + "attn.out_proj.weight": (C, C), b + "attn.out_proj.bias": (C,),
                  b + "ln_1.weight": (C,), b + "ln_1.bias": (C,), b + "ln_2.weight": (C,), b + "ln_2.bias": (C,),
                  b + "mlp.c_fc.weight": (4 * C, C), b + "mlp.c_fc.bias": (4 * C,),
                  b + "mlp.c_proj.weight": (C, 4 * C), b + "mlp.c_proj.bias": (C,)})
    t = "backbone.transformer."
    s[t + "temporal_cls_token"] = (1, 1, C)
    for j in range(len(return_list)):
        s.update({f"{t}dpe.{j}.weight": (C, 1, 3, 3, 3), f"{t}dpe.{j}.bias": (C,)})
        d = f"{t}dec.{j}."
        s.update({d + "attn.in_proj_weight": (3 * C, C), d + "attn.in_proj_bias": (3 * C,),
                  d + "attn.out_proj.weight": (C, C), d + "attn.out_proj.bias": (C,),
                  d + "mlp.c_fc.weight": (4 * C, C), d + "mlp.c_fc.bias": (4 * C,),
                  d + "mlp.c_proj.weight": (C, 4 * C), d + "mlp.c_proj.bias": (C,)})
        for ln in ("ln_1", "ln_2", "ln_3"):
            s.update({f"{d}{ln}.weight": (C,), f"{d}{ln}.bias": (C,)})
    s.update({t + "proj.0.weight": (C,), t + "proj.0.bias": (C,), t + "proj.2.weight": (num_classes, C),
              t + "proj.2.bias": (num_classes,)})
    if not frozen:
        s[t + "balance"] = (C,)
    return s


def clip_visual_shapes(width=64, layers=3, patch=16, img=64, embed=32):
    """Key -> shape of OpenAI CLIP's ``visual.*`` (VisionTransformer) plus a few text-tower keys."""
    C = width
    s = {"visual.conv1.weight": (C, 3, patch, patch), "visual.class_embedding": (C,),
         "visual.positional_embedding": ((img // patch) ** 2 + 1, C), "visual.ln_pre.weight": (C,),
         "visual.ln_pre.bias": (C,), "visual.ln_post.weight": (C,), "visual.ln_post.bias": (C,),
         "visual.proj": (C, embed), "logit_scale": (), "token_embedding.weight": (100, embed),
         "positional_embedding": (77, embed)}
    for i in range(layers):
        b = f"visual.transformer.resblocks.{i}."
        s.update({b + "attn.in_proj_weight": (3 * C, C), b + "attn.in_proj_bias": (3 * C,),
                  b + "attn.out_proj.weight": (C, C), b + "attn.out_proj.bias": (C,),
                  b + "ln_1.weight": (C,), b + "ln_1.bias": (C,), b + "ln_2.weight": (C,), b + "ln_2.bias": (C,),
                  b + "mlp.c_fc.weight": (4 * C, C), b + "mlp.c_fc.bias": (4 * C,),
                  b + "mlp.c_proj.weight": (C, 4 * C), b + "mlp.c_proj.bias": (C,)})
    return s


def random_state(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.tensor(7) if k.endswith("num_batches_tracked") else torch.randn(shape, generator=g)
            for k, shape in shapes.items()}


def test_our_state_dict_has_the_official_layout():
    ours = {f"backbone.{k}": tuple(v.shape) for k, v in uniformerv2_tiny(img_size=64).state_dict().items()}
    assert ours == official_uniformerv2_shapes()
    ours = {f"backbone.{k}": tuple(v.shape)
            for k, v in uniformerv2_tiny(img_size=64, no_lmhra=True, temporal_downsample=False).state_dict().items()}
    assert ours == official_uniformerv2_shapes(no_lmhra=True, downsample=False)
    frozen = uniformerv2_tiny(img_size=64, no_lmhra=True, temporal_downsample=False, frozen=True)
    assert {f"backbone.{k}": tuple(v.shape) for k, v in frozen.state_dict().items()} == official_uniformerv2_shapes(
        no_lmhra=True, downsample=False, frozen=True)
    trained = {n for n, p in frozen.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith(("transformer.dec.", "transformer.dpe.", "transformer.temporal_cls_token",
                                         "transformer.proj.")) for n in trained)


@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict+module", "model_state"])
def test_load_official_uniformerv2_checkpoint(tmp_path, wrap):
    state = random_state(official_uniformerv2_shapes())
    saved = {"plain": state, "model": {"model": state, "epoch": 3},
             "state_dict+module": {"state_dict": {f"module.{k}": v for k, v in state.items()}},
             "model_state": {"model_state": state, "optimizer_state": {}, "epoch": 30, "cfg": "TRAIN: ..."}}[wrap]
    path = tmp_path / "sthv2_uniformerv2_tiny.pyth"  # local blocks + temporal downsample: the SSv2 layout
    torch.save(saved, path)
    ssv2 = family_options("ssv2", 3)
    model = build_model(tiny_args(**ssv2))
    report = load_pretrained(model, path)
    assert report.source == "uniformerv2"
    assert report.missing == [] and report.unexpected == [] and report.initialized == []
    assert set(report.dropped) == {"backbone.transformer.proj.2.weight", "backbone.transformer.proj.2.bias"}
    sd = model.state_dict()
    for k, v in state.items():
        if "proj.2" not in k:
            assert torch.equal(sd[k].float(), v.float()), k
    # a standalone backbone with the same 400 classes keeps the classifier
    standalone = uniformerv2_tiny(img_size=64, **ssv2)
    report = load_pretrained(standalone, path)
    assert report.dropped == {} and report.missing == []
    assert torch.equal(standalone.transformer.proj[2].weight, state["backbone.transformer.proj.2.weight"])


def test_load_backbone_of_a_leap_run(tmp_path):
    source = build_model(tiny_args())
    torch.save({"model": source.state_dict(), "step": 5}, tmp_path / "last.pt")
    target = build_model(tiny_args(num_verbs=3))
    report = load_pretrained(target, tmp_path / "last.pt")
    assert report.missing == [] and report.unexpected == [] and report.initialized == []
    assert "verb_head.weight" in report.dropped and "decoder.verb_embed.weight" in report.dropped
    assert torch.equal(target.backbone.conv1.weight, source.backbone.conv1.weight)


def test_load_kinetics_checkpoint_without_lmhra_into_lmhra_model(tmp_path):
    """Official Kinetics checkpoints use no_lmhra/temporal_downsample=False: into the default model that is an
    error naming the preset; --allow-partial-load inflates the conv and starts the local modules from their
    (zero-output) initialisation."""
    state = random_state(official_uniformerv2_shapes(no_lmhra=True, downsample=False, img=48, num_classes=710))
    torch.save(state, tmp_path / "k710.pth")
    with pytest.raises(LeapError, match=r"k710 family.*\d+ backbone tensors would start from their initialisation.*"
                                         r"patch kernel would be inflated.*mean \[0\.45.*a uniformerv2-\*-k710 preset"):
        load_pretrained(build_model(tiny_args()), tmp_path / "k710.pth")
    model = build_model(tiny_args())
    report = load_pretrained(model, tmp_path / "k710.pth", allow_partial=True)
    assert report.missing == [] and report.unexpected == []
    assert report.initialized and all(".lmhra" in k for k in report.initialized)
    assert set(report.resized) == {"conv1.weight", "positional_embedding"}
    w = model.backbone.conv1.weight
    assert torch.equal(w[:, :, 1], state["backbone.conv1.weight"][:, :, 0]) and w[:, :, 0].abs().sum() == 0


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_load_clip_visual_weights_plain_and_torchscript(tmp_path, caplog):
    state = random_state(clip_visual_shapes(img=96))  # 96px CLIP grid, resized to the 64px model
    torch.save({k: v.half() for k, v in state.items()}, tmp_path / "clip.pt")

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for k, v in state.items():
                *path, leaf = k.split(".")
                mod = self
                for p in path:
                    if not hasattr(mod, p):
                        mod.add_module(p, torch.nn.Module())
                    mod = getattr(mod, p)
                mod.register_parameter(leaf, torch.nn.Parameter(v.half()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.logit_scale

    torch.jit.save(torch.jit.script(Holder()), tmp_path / "ViT-tiny.pt")
    for name in ("clip.pt", "ViT-tiny.pt"):
        model = build_model(tiny_args())
        report = load_pretrained(model, tmp_path / name)
        assert report.source == "clip", name
        assert report.missing == [] and report.unexpected == [], name
        assert {"visual.proj", "visual.ln_post.weight", "logit_scale", "token_embedding.weight"} <= set(report.dropped)
        assert any(".lmhra1." in k for k in report.initialized) and "backbone.transformer.balance" in report.initialized
        assert set(report.resized) == {"conv1.weight", "positional_embedding"}
        w = model.backbone.conv1.weight
        assert torch.allclose(w[:, :, 1], state["visual.conv1.weight"].half().float())
        blk = model.backbone.transformer.resblocks[2]
        assert torch.equal(blk.mlp.c_fc.weight, state["visual.transformer.resblocks.2.mlp.c_fc.weight"].half().float())
        assert model.backbone.positional_embedding.shape == (17, 64)
        assert "for 96 px inputs, resized to the model's 64 px (set model.img_size=96" in caplog.text
        line = str(report)
        assert f"{len(report.loaded)} loaded" in line and "0 missing, 0 unexpected" in line and "\n" not in line


def test_wrong_shapes_and_foreign_keys_fail_clearly(tmp_path):
    state = random_state(official_uniformerv2_shapes(width=32, heads=4))
    torch.save(state, tmp_path / "b.pth")
    with pytest.raises(LeapError, match=r"the checkpoint's backbone is 32 wide, this model's 64 \(another ViT size"):
        load_pretrained(build_model(tiny_args()), tmp_path / "b.pth")  # (it listed every shape mismatch)
    # a file of another layout (timm's CLIP) or none: it was a "k710 family" checkpoint, and --allow-partial-load
    # then trained from 0 tensors loaded
    torch.save({"cls_token": torch.zeros(1, 1, 64), "blocks.0.attn.qkv.weight": torch.zeros(192, 64)},
               tmp_path / "timm.pth")
    for allow in (False, True):
        with pytest.raises(LeapError, match=r"holds no tensor this model can take .*cls_token"):
            load_pretrained(build_model(tiny_args()), tmp_path / "timm.pth", allow_partial=allow)
    with pytest.raises(LeapError, match="is a folder, not a weights file"):
        load_pretrained(build_model(tiny_args()), tmp_path)
    state = random_state(official_uniformerv2_shapes(layers=4))
    torch.save(state, tmp_path / "deeper.pth")
    with pytest.raises(LeapError, match="resblocks.3"):
        load_pretrained(build_model(tiny_args()), tmp_path / "deeper.pth")
    state = random_state(official_uniformerv2_shapes())
    state["backbone.extra_adapter.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(LeapError, match="no place in the model.*extra_adapter"):
        load_pretrained(build_model(tiny_args()), tmp_path / "extra.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(LeapError, match="cannot read checkpoint"):
        load_pretrained(build_model(tiny_args()), tmp_path / "junk.pth")
    with pytest.raises(LeapError, match="does not exist") as absent:
        load_pretrained(build_model(tiny_args()), tmp_path / "absent.pth")
    assert "download" not in str(absent.value)  # a name leap does not know: no address made up
    for name, folder in (("k400_k710_uniformerv2_l14_8x224.pyth", "k400"), ("mit_uniformerv2_b16_8x224.pyth", "mitv1"),
                         ("frozen_k710_uniformerv2_l14_8x336.pyth", "k710")):
        with pytest.raises(LeapError, match="does not exist") as missing:  # an official file: MODEL_ZOO's address
            load_pretrained(build_model(tiny_args()), tmp_path / name)
        assert str(missing.value).count(str(tmp_path)) == 1  # (the path once, not again in the message)
        assert str(missing.value).endswith(
            f"download {name} from https://pjlab-gvm-data.oss-cn-shanghai.aliyuncs.com/uniformerv2/{folder}/{name})")


def test_sdpa_plain_attention_and_grad_checkpointing_agree():
    torch.manual_seed(0)
    model = build_model(tiny_args(decoder_dropout=0.0))
    unzero_(model)
    batch = make_batch()
    model.eval()
    with torch.no_grad():
        a = model(batch["video"], batch["program_steps"])
        model.backbone.set_attention(False)
        b = model(batch["video"], batch["program_steps"])
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-5), k

    start = {k: v.clone() for k, v in model.state_dict().items()}

    def grads(checkpointing):
        model.load_state_dict(start)
        model.zero_grad()
        model.set_grad_checkpointing(checkpointing)
        model.train()
        loss, _ = leap_loss(model(batch["video"], batch["program_steps"]), batch)
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}, {
            k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}

    (plain, plain_bn), (ckpt, ckpt_bn) = grads(False), grads(True)
    assert all(torch.allclose(plain[n], ckpt[n], rtol=1e-4, atol=1e-6) for n in plain)
    # BatchNorm statistics are updated once per forward, with or without checkpointing
    assert plain_bn and all(torch.allclose(plain_bn[k], ckpt_bn[k]) for k in plain_bn)
    assert not torch.equal(plain_bn["backbone.transformer.resblocks.0.lmhra1.pos_embed.0.running_mean"],
                           start["backbone.transformer.resblocks.0.lmhra1.pos_embed.0.running_mean"])


def test_layer_ids_and_no_weight_decay():
    model = build_model(tiny_args(anticipation={"context": 2, "aggregate": True}))
    ids = {n: model.layer_id(n) for n, _ in model.named_parameters()}
    assert ids["backbone.conv1.weight"] == 0 and ids["backbone.positional_embedding"] == 0
    assert ids["backbone.transformer.resblocks.2.attn.in_proj_weight"] == 3
    assert ids["backbone.transformer.dec.0.attn.in_proj_weight"] == model.num_layers + 1 == ids["verb_head.weight"]
    nwd = model.no_weight_decay()
    assert {"backbone.class_embedding", "backbone.positional_embedding", "backbone.transformer.temporal_cls_token",
            "backbone.ln_pre.weight", "verb_head.bias", "decoder.verb_embed.weight", "decoder.step_pos"} <= nwd
    assert "backbone.transformer.resblocks.0.mlp.c_fc.weight" not in nwd and "verb_head.weight" not in nwd


def test_anticipation_uses_present_context_only_when_aggregating():
    torch.manual_seed(0)
    batch = make_batch(context=2)
    other = batch["context_video"].clone()
    other[0, 0] = torch.randn_like(other[0, 0])  # absent clip (mask False) of sample 0
    other[1, 1] = torch.randn_like(other[1, 1])  # present clip of sample 1
    for aggregate in (True, False):
        torch.manual_seed(0)
        model = build_model(tiny_args(anticipation={"context": 2, "aggregate": aggregate})).eval()
        unzero_(model)
        with torch.no_grad():
            a = model(batch["video"], None, batch["context_video"], batch["context_mask"])["verb"]
            b = model(batch["video"], None, other, batch["context_mask"])["verb"]
        assert torch.allclose(a[0], b[0], atol=1e-6)  # an absent clip never matters
        assert torch.allclose(a[1], b[1], atol=1e-6) != aggregate  # a present one matters only when aggregating


def test_the_aggregator_ignores_the_embedding_of_an_absent_context_clip():
    """A clip before the video's start (EPIC's first actions) is masked out of the aggregator's attention: whatever
    its embedding slot holds must not move the action feature. The gate starts at zero, which hid a lost mask."""
    from leap_cli.model.heads import AnticipationAggregator

    torch.manual_seed(0)
    agg = AnticipationAggregator(dim=32, feat_dim=16, context=2).eval()
    with torch.no_grad():
        agg.gate.fill_(1.0)
    feature, embeds = torch.randn(2, 16), torch.randn(2, 3, 32)
    mask = torch.tensor([[False, True, True], [False, False, True]])
    other = embeds.clone()
    other[~mask] = torch.randn(int((~mask).sum()), 32) * 5
    with torch.no_grad():
        a, b = agg(feature, embeds, mask), agg(feature, other, mask)
    assert not torch.allclose(a, feature)  # the gate lets the aggregate through
    torch.testing.assert_close(a, b)


def test_an_end_row_keeps_its_ids_where_marker_rows_are_masked():
    """END is END in every column (programs.targets): the marker masking of targets, greedy inputs and predicted
    ids blanks the verb/object/hand columns of loop/conditional rows only, never of the END row, which program
    metrics compare in the verb and object columns."""
    from leap_cli.model.heads import ProgramDecoder, ProgramSpec

    spec = ProgramSpec(step_verbs=8, objects=10, conditions=5, max_steps=4, hands=4, structure=5)
    dec = ProgramDecoder(spec, in_dim=16, dim=32).eval()
    end_kind, loop_kind = spec.structure - 1, 1
    rows = torch.tensor([[[2, 3, 4, 1, spec.step_kind], [5, 6, 7, 2, loop_kind], [7, 9, 9, 3, end_kind],
                          [1, 1, 1, 1, spec.step_kind]]])
    masked = dec.mask_markers(rows, -100)
    assert masked[0, 0].tolist() == [2, 3, 4, 1, 0]
    assert masked[0, 1].tolist() == [-100, -100, -100, -100, loop_kind]
    assert masked[0, 2].tolist() == [7, 9, 9, 3, end_kind]
    assert torch.equal(dec.mask_markers(rows, dec.bos())[0, 2], rows[0, 2])  # the greedy decoder's next input
    logits = {c: torch.nn.functional.one_hot(rows[..., i], n).float()
              for i, (c, n) in enumerate(zip(spec.columns, spec.sizes))}
    ids = dec.ids_from_logits(logits)
    assert ids[0, 2].tolist() == [7, 9, 9, 3, end_kind] and (ids[0, 3] == -100).all()


def test_a_clips_program_embedding_is_its_program_up_to_end(monkeypatch):
    """The anticipation aggregator's program embedding averaged all max_steps greedy rows, the untrained ones after
    the first END too (docs: "the mean decoder state of the greedily predicted program"); pool "program" averages
    the rows up to and with the first END; a model_args without the key (a checkpoint written before) keeps "all"."""
    torch.manual_seed(0)
    old = build_model(tiny_args(anticipation={"context": 2, "aggregate": True})).eval()
    new = build_model(tiny_args(anticipation={"context": 2, "aggregate": True, "pool": "program"})).eval()
    new.load_state_dict(old.state_dict())
    dec = new.decoder
    L = dec.spec.max_steps
    ids = torch.zeros(2, L, len(dec.spec.columns), dtype=torch.long)
    ids[0, 2, 0] = dec.spec.step_verbs - 1  # END at row 2 of sample 0 (the verb column's last id without a
    # structure column); sample 1 never ends
    h = torch.randn(2, L, 64)
    for m in (old, new):
        monkeypatch.setattr(m.decoder, "greedy", lambda memory: (ids, h))
    feature, tokens = torch.randn(2, 64), torch.randn(2, 10, 64)
    got = new._program_embedding(feature, tokens)
    torch.testing.assert_close(got[0], h[0, :3].mean(0))
    torch.testing.assert_close(got[1], h[1].mean(0))
    torch.testing.assert_close(old._program_embedding(feature, tokens), h.mean(1))
    with pytest.raises(LeapError, match="anticipation.pool"):
        build_model(tiny_args(anticipation={"context": 2, "pool": "mean"}))


def _reference_uniformerv2(sd, x, *, heads, downsample, no_lmhra, return_list, n_head, frozen=False):
    """The official forward written out functionally from a state dict, in the official sequence-first
    layout ([L, N*T, C]) and with torch's own multi-head attention for the backbone blocks; independent of
    leap_cli.model's modules. Eval mode, no dropout."""
    import torch.nn.functional as F

    def ln(v, p, fp32=True):
        return F.layer_norm(v.float() if fp32 else v, v.shape[-1:], sd[p + ".weight"], sd[p + ".bias"])

    def lin(v, p):
        return F.linear(v, sd[p + ".weight"], sd[p + ".bias"])

    def mlp(v, p):
        h = lin(v, p + ".c_fc")
        return lin(h * torch.sigmoid(1.702 * h), p + ".c_proj")

    def lmhra(v, p):  # v: [N, C, T, H, W]
        v = F.batch_norm(v, sd[p + ".0.running_mean"], sd[p + ".0.running_var"], sd[p + ".0.weight"], sd[p + ".0.bias"])
        v = F.conv3d(v, sd[p + ".1.weight"], sd[p + ".1.bias"])
        v = F.conv3d(v, sd[p + ".2.weight"], sd[p + ".2.bias"], padding=(1, 0, 0), groups=v.shape[1])
        return F.conv3d(v, sd[p + ".3.weight"], sd[p + ".3.bias"])

    w = sd["conv1.weight"]
    x = F.conv3d(x, w, stride=(2 if downsample else 1, w.shape[-1], w.shape[-1]), padding=((w.shape[2] - 1) // 2, 0, 0))
    N, C, T, H, W = x.shape
    x = x.permute(0, 2, 3, 4, 1).reshape(N * T, H * W, C)
    x = torch.cat([sd["class_embedding"] + torch.zeros(N * T, 1, C), x], dim=1) + sd["positional_embedding"]
    x = ln(x, "ln_pre").permute(1, 0, 2)  # [L, NT, C]
    L = x.shape[0]
    query = sd["transformer.temporal_cls_token"].repeat(1, N, 1)  # [1, N, C]

    def local(x, p):
        t = x[1:].view(H, W, N, T, C).permute(2, 4, 3, 0, 1)
        t = t + lmhra(t, p)
        return torch.cat([x[:1], t.reshape(N, C, T, H * W).permute(3, 0, 2, 1).reshape(L - 1, N * T, C)], 0)

    j = 0
    for i in range(len([k for k in sd if k.endswith(".ln_1.weight") and "resblocks" in k])):
        p = f"transformer.resblocks.{i}"
        if not no_lmhra:
            x = local(x, p + ".lmhra1.pos_embed")
        h = ln(x, p + ".ln_1")
        x = x + F.multi_head_attention_forward(
            h, h, h, C, heads, sd[p + ".attn.in_proj_weight"], sd[p + ".attn.in_proj_bias"], None, None, False, 0.0,
            sd[p + ".attn.out_proj.weight"], sd[p + ".attn.out_proj.bias"], training=False, need_weights=False)[0]
        if not no_lmhra:
            x = local(x, p + ".lmhra2.pos_embed")
        x = x + mlp(ln(x, p + ".ln_2"), p + ".mlp")
        if i in return_list:
            t = x.view(L, N, T, C)
            feats = t[1:].permute(1, 3, 2, 0).reshape(N, C, T, H, W)
            feats = F.conv3d(feats, sd[f"transformer.dpe.{j}.weight"], sd[f"transformer.dpe.{j}.bias"], padding=1, groups=C)
            t = torch.cat([t[:1], t[1:] + feats.view(N, C, T, L - 1).permute(3, 0, 2, 1)])
            y = t.permute(2, 0, 1, 3).flatten(0, 1)  # [T*L, N, C]
            d = f"transformer.dec.{j}"
            qn, yn = ln(query, d + ".ln_1", False), ln(y, d + ".ln_3", False)
            wq, wk, wv = sd[d + ".attn.in_proj_weight"].chunk(3)
            bq, bk, bv = sd[d + ".attn.in_proj_bias"].chunk(3)
            hd = C // n_head
            q = (qn @ wq.T + bq).view(1, N, n_head, hd).permute(1, 2, 0, 3)
            k = (yn @ wk.T + bk).view(-1, N, n_head, hd).permute(1, 2, 0, 3)
            v = (yn @ wv.T + bv).view(-1, N, n_head, hd).permute(1, 2, 0, 3)
            att = ((q @ k.transpose(-2, -1)) / hd ** 0.5).softmax(-1) @ v
            query = query + lin(att.permute(2, 0, 1, 3).flatten(2), d + ".attn.out_proj")
            query = query + mlp(ln(query, d + ".ln_2", False), d + ".mlp")
            j += 1
    if frozen:
        fused = query[0]
    else:
        g = torch.sigmoid(sd["transformer.balance"])
        fused = (1 - g) * query[0] + g * x.view(L, N, T, C)[0].mean(1)
    return lin(ln(fused, "transformer.proj.0", False), "transformer.proj.2")


def _random_tiny_and_reference(options):
    """A tiny UniFormerV2 (eval mode) with every tensor random (no zero-initialised branch), a clip, and the
    functional reference of the official forward as a function of a state dict."""
    torch.manual_seed(0)
    model = uniformerv2_tiny(img_size=64, num_classes=11, **options).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.dtype.is_floating_point:
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if name.endswith("running_var")
                        else 0.1 * torch.randn(t.shape, generator=g))
    x = torch.randn(2, 3, 4, 64, 64, generator=g)

    def reference(sd):
        return _reference_uniformerv2(
            sd, x, heads=4, downsample=options.get("temporal_downsample", True), no_lmhra=options.get("no_lmhra", False),
            return_list=(1, 2), n_head=4, frozen=options.get("frozen", False))

    return model, x, reference


@pytest.mark.parametrize("options", [{}, {"no_lmhra": True, "temporal_downsample": False},
                                     {"no_lmhra": True, "temporal_downsample": False, "frozen": True}])
def test_matches_a_functional_reference_of_the_official_forward(options):
    model, x, reference = _random_tiny_and_reference(options)
    ref = reference(model.state_dict())
    with torch.no_grad():
        for sdpa in (True, False):
            model.set_attention(sdpa)
            out = model(x)
            assert ((out - ref).norm() / ref.norm()).item() < 1e-5


def test_hand_written_backwards_pass_gradcheck():
    """The custom autograd Functions of the backbone against numerical gradients (float64), at the edges too:
    one or two frames (taps past both ends), a batch of two, a channels-last input to the dpe."""
    from leap_cli.model.uniformerv2 import _DepthwiseConv3d, _QuickGELUFunction
    from tests.uniformer_reference import TemporalDepthwise  # (the model's conv and conv_backward)

    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()

    assert torch.autograd.gradcheck(_QuickGELUFunction.apply, (rand(3, 7),))
    for T, k in ((4, 3), (1, 3), (2, 5)):
        assert torch.autograd.gradcheck(TemporalDepthwise.apply, (rand(2, T, 3, 5), rand(5, k), rand(5)))
    for N, T in ((1, 4), (2, 1)):
        x = rand(N, 4, T, 3, 3)
        x_cl = x.detach().contiguous(memory_format=torch.channels_last_3d).requires_grad_()
        for inp in (x, x_cl):
            assert torch.autograd.gradcheck(_DepthwiseConv3d.apply, (inp, rand(4, 1, 3, 3, 3), rand(4)))


def test_dpe_weight_gradient_under_bf16_is_as_close_as_the_native_one():
    """The Function's weight gradient summed the batch's per-sample correlations in bf16 (0.33% from float32's
    where the native convolution's is 0.28%): summed in float32, no further from it than the native one."""
    import torch.nn.functional as F

    from leap_cli.model.uniformerv2 import _DepthwiseConv3d

    g = torch.Generator().manual_seed(0)
    N, C = 8, 64
    x, grad = torch.randn(N, C, 4, 14, 14, generator=g), torch.randn(N, C, 4, 14, 14, generator=g)
    w, b = 0.1 * torch.randn(C, 1, 3, 3, 3, generator=g), torch.zeros(C)

    def weight_grad(conv, low: bool) -> torch.Tensor:
        wg = w.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=low):
            out = conv(x.clone().requires_grad_(), wg)
        out.backward(grad.to(out.dtype))
        return wg.grad

    native = lambda x, w: F.conv3d(x, w, b, padding=1, groups=C)  # noqa: E731
    ref = weight_grad(native, False)
    err = {name: float((weight_grad(conv, True) - ref).norm() / ref.norm())
           for name, conv in (("native", native), ("ours", lambda x, w: _DepthwiseConv3d.apply(x, w, b)))}
    assert err["ours"] <= 1.05 * err["native"], err


def test_dpe_goes_through_the_hand_written_backward_on_every_device(monkeypatch):
    """cuDNN's weight gradient of the dpe's depthwise convolution ran one kernel per channel (94% of a b16 step's
    GPU time at batch 8 on an H200): off the CPU the dpe takes the Function too, on the default layout (the
    CPU keeps the channels-last view for oneDNN). The meta device stands in for CUDA here."""
    from leap_cli.model import uniformerv2 as U

    seen = []
    apply = U._DepthwiseConv3d.apply

    def spy(x, w, b):
        seen.append((x.device.type, x.is_contiguous()))
        return apply(x, w, b)

    monkeypatch.setattr(U._DepthwiseConv3d, "apply", spy)
    for device in ("cpu", "meta"):
        model = U.uniformerv2_tiny(num_frames=4, img_size=64, num_classes=5).to(device)
        model(torch.randn(2, 3, 4, 64, 64, device=device)).sum().backward()
    n = len(seen) // 2
    assert n >= 1 and seen == [("cpu", False)] * n + [("meta", True)] * n, seen


@pytest.mark.parametrize("options", [{}, {"no_lmhra": True, "temporal_downsample": False}])
def test_gradients_match_the_functional_reference(options):
    """Every parameter's gradient equals the reference's (autograd through the official arithmetic): covers the
    hand-written backward of QuickGELU, the patch embedding as a matrix product and the channels-last dpe."""
    model, x, reference = _random_tiny_and_reference(options)
    names = {n for n, _ in model.named_parameters()}
    sd = {k: v.detach().clone().requires_grad_(k in names) for k, v in model.state_dict().items()}
    weights = torch.randn(2, 11, generator=torch.Generator().manual_seed(2))  # a loss that weighs every logit
    (reference(sd) * weights).sum().backward()
    (model(x) * weights).sum().backward()
    for name, p in model.named_parameters():
        want = sd[name].grad
        assert want is not None and want.norm() > 0, name
        assert ((p.grad - want).norm() / want.norm()).item() < 1e-4, name


# ------------------------------------------------------------------------------------ weight families
FAMILY_NAMES = ("clip", "k400", "k710", "ssv2")


def preset_args(family, **over):
    """model_args of the B/16 preset of ``family``, with the tiny backbone (same family options)."""
    from leap_cli.train.config import backbone_options, load_config

    cfg = load_config(f"uniformerv2-b16-{family}", ["model.backbone=uniformerv2_tiny", "model.num_frames=4",
                                                    "model.img_size=64"])
    assert cfg.model.weights == family
    return tiny_args(**{**backbone_options(cfg.model), **over})


def family_checkpoint(family, tmp_path):
    """A random-weight checkpoint in the official key layout of ``family`` (tiny sizes)."""
    if family == "clip":
        state = random_state(clip_visual_shapes(img=64))
    else:
        f = family_options(family, 3)
        state = random_state(official_uniformerv2_shapes(
            no_lmhra=f["no_lmhra"], downsample=f["temporal_downsample"], return_list=f["return_list"],
            num_classes={"k400": 400, "k710": 710, "ssv2": 174}[family]))
    path = tmp_path / f"{family}.pth"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("ckpt_family", FAMILY_NAMES)
def test_each_family_loads_into_its_preset_and_fails_in_another_naming_its_preset(tmp_path, ckpt_family):
    path = family_checkpoint(ckpt_family, tmp_path)
    for preset in FAMILY_NAMES:
        model = build_model(preset_args(preset))
        same_network = {ckpt_family, preset} <= {"k400", "k710"}  # one architecture and normalisation
        if preset == ckpt_family or same_network:
            report = load_pretrained(model, path)
            assert report.family == ckpt_family and report.missing == [] and report.unexpected == []
            fresh = [k for k in report.initialized if ".lmhra" in k]
            assert fresh == [] or ckpt_family == "clip"
            continue
        with pytest.raises(LeapError, match=rf"{ckpt_family} family.*a uniformerv2-\*-{ckpt_family} preset"):
            load_pretrained(model, path)
        load_pretrained(build_model(preset_args(preset)), path, allow_partial=True)  # the escape hatch


def test_fix_names_the_b16_preset_file():
    from leap_cli.model.uniformerv2 import _family_fix, uniformerv2_b16
    from leap_cli.resources import bundled_config

    with torch.device("meta"):
        b16 = uniformerv2_b16(**family_options("clip", 12))
    for family in FAMILY_NAMES:
        fix = _family_fix(b16 if family != "clip" else uniformerv2_b16(**family_options("ssv2", 12)), family)
        assert f"--config uniformerv2-b16-{family} " in fix
        assert bundled_config(f"uniformerv2-b16-{family}") is not None
        assert bundled_config(f"uniformerv2-l14-{family}") is not None


def test_uniformerv2_authors_clip_file_is_clip_and_advice_never_names_the_model_preset(tmp_path):
    """OpenGVLab's extract_clip/extract.ipynb writes vit_b16.pth: CLIP's visual keys without ``visual.``, and
    without ``proj`` and ``ln_post``; it is CLIP, and a refusal never advises the preset already in use."""
    state = {k[len("visual."):]: v for k, v in random_state(clip_visual_shapes(img=64)).items()
             if k.startswith("visual.") and k not in ("visual.proj", "visual.ln_post.weight", "visual.ln_post.bias")}
    torch.save(state, tmp_path / "vit_b16.pth")
    report = load_pretrained(build_model(preset_args("clip")), tmp_path / "vit_b16.pth")
    assert report.source == "clip" and report.family == "clip" and report.missing == [] and report.unexpected == []
    with pytest.raises(LeapError, match=r"clip family.*a uniformerv2-\*-clip preset"):
        load_pretrained(build_model(preset_args("k710")), tmp_path / "vit_b16.pth")
    k710 = random_state(official_uniformerv2_shapes(no_lmhra=True, downsample=False, num_classes=710))
    torch.save({k: v for k, v in k710.items() if ".dec." not in k}, tmp_path / "part.pth")
    with pytest.raises(LeapError) as e:
        load_pretrained(build_model(preset_args("k710")), tmp_path / "part.pth")
    assert "k710 preset" not in e.value.one_line() and "complete k710 checkpoint" in e.value.one_line()


def test_a_tiny_run_is_not_taken_for_the_ssv2_family(tmp_path):
    """A run of the tiny builder's defaults (model.weights null: CLIP's normalisation) has the ssv2 layout's 2
    global blocks; loaded into a model of another family, the refusal called it an ssv2 checkpoint and named an ssv2
    preset (0.45/0.225), which would refuse it again. It is no released family: the fix names the options."""
    args = tiny_args()
    torch.save({"model": build_model(args).state_dict(), "model_args": args, "config": {}, "step": 1},
               tmp_path / "best.pt")
    report = load_pretrained(build_model(tiny_args()), tmp_path / "best.pt")
    assert report.family is None and report.missing == [] and report.unexpected == []
    with pytest.raises(LeapError) as e:
        load_pretrained(build_model(preset_args("k710")), tmp_path / "best.pt")
    assert "ssv2" not in e.value.one_line() and "build the model with the checkpoint's options" in e.value.fix
    assert load_pretrained(build_model(preset_args("ssv2")), family_checkpoint("ssv2", tmp_path)).family == "ssv2"


def test_normalisation_travels_with_the_checkpoint(tmp_path):
    """uint8 clips are normalised by the model with the mean/std of its model_args, which a leap checkpoint
    stores; a checkpoint rebuilt by load_model normalises as the trained model did."""
    from leap_cli.model.uniformerv2 import CLIP_MEAN, CLIP_STD, KINETICS_MEAN, KINETICS_STD
    from leap_cli.train.checkpoint import load_model

    torch.manual_seed(0)
    args = preset_args("k710")
    model = build_model(args).eval()
    unzero_(model)
    clip = torch.randint(0, 256, (2, 3, 4, 64, 64), dtype=torch.uint8)

    def by_hand(mean, std):
        m, s = torch.tensor(mean).view(1, 3, 1, 1, 1), torch.tensor(std).view(1, 3, 1, 1, 1)
        return (clip.float() / 255 - m) / s

    with torch.no_grad():
        got = model(clip)["verb"]
        assert torch.allclose(got, model(by_hand(KINETICS_MEAN, KINETICS_STD))["verb"], atol=1e-5)
        assert not torch.allclose(got, model(by_hand(CLIP_MEAN, CLIP_STD))["verb"], atol=1e-3)
    ckpt = {"model": model.state_dict(), "model_args": args, "config": {}, "step": 1}
    torch.save(ckpt, tmp_path / "best.pt")
    loaded, _ = load_model(tmp_path / "best.pt")
    assert loaded.backbone.cfg.mean == KINETICS_MEAN and loaded.backbone.cfg.std == KINETICS_STD
    with torch.no_grad():
        assert torch.allclose(loaded(clip)["verb"], got, atol=1e-6)
    # as pretrained weights for a model with another normalisation: refused, naming what it was trained with
    with pytest.raises(LeapError, match=r"trained on inputs normalised with mean \[0\.45"):
        load_pretrained(build_model(preset_args("k710", mean=list(CLIP_MEAN), std=list(CLIP_STD))), tmp_path / "best.pt")
    assert load_pretrained(build_model(preset_args("k710")), tmp_path / "best.pt").missing == []


def test_drop_path_masks_follow_the_official_layout():
    """Official (sequence-first tokens, timm DropPath over dim 0): per token position in the backbone blocks,
    per clip in the local relations, one draw per batch in the global blocks; "sample" mode per clip/frame."""
    from leap_cli.model.uniformerv2 import DropPath

    torch.manual_seed(0)
    x = torch.ones(6, 50, 8)  # [N*T, 1+HW, C]
    token = DropPath(0.5, "token").train()(x)
    assert torch.equal(token, token[:1].expand_as(token))  # the same for every clip and frame
    assert 0 < (token[0, :, 0] == 0).sum() < 50  # but drawn per position
    assert all(torch.unique(DropPath(0.5, "batch").train()(x)).numel() == 1 for _ in range(5))
    sample = DropPath(0.5, "sample").train()(x)
    assert torch.equal(sample, sample[:, :1].expand_as(sample))
    model = uniformerv2_tiny(drop_path_rate=0.2, backbone_drop_path_rate=0.2)
    block, dec = model.transformer.resblocks[2], model.transformer.dec[1]
    assert (block.drop_path.per, block.drop_path_local.per, dec.drop_path.per) == ("token", "sample", "batch")
    timm_like = uniformerv2_tiny(drop_path_rate=0.2, backbone_drop_path_rate=0.2, drop_path_mode="sample")
    assert timm_like.transformer.resblocks[2].drop_path.per == timm_like.transformer.dec[1].drop_path.per == "sample"


def test_resizing_the_position_embedding_keeps_its_orientation():
    """A CLIP/UniFormerV2 checkpoint for another input size has its patch-position grid resized; a transposed grid
    would swap the rows and columns of every pretrained position."""
    from leap_cli.model.uniformerv2 import resize_pos_embed

    torch.manual_seed(0)
    pos = torch.randn(1 + 4 * 4, 3)
    torch.testing.assert_close(resize_pos_embed(pos, pos.shape[0]), pos)  # same grid: unchanged
    rows = torch.arange(4.0)[:, None].expand(4, 4).reshape(16, 1)  # value = row index
    big = resize_pos_embed(torch.cat([torch.full((1, 1), -1.0), rows]), 1 + 6 * 6)
    assert big[0].item() == -1.0  # class position kept
    grid = big[1:, 0].reshape(6, 6)
    assert torch.allclose(grid, grid[:, :1].expand(6, 6))  # constant along each row
    assert (grid[1:, 0] > grid[:-1, 0]).all()  # and rising down the rows
