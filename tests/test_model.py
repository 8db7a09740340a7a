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


def test_predict_program_is_greedy_decoding_of_forward():
    torch.manual_seed(1)
    model = build_model(tiny_args()).eval()
    unzero_(model)
    video = make_batch()["video"]
    ids = model.predict_program(video)
    assert ids.shape == (2, 6, 3) and ids.dtype == torch.long
    out = model(video)  # no targets: greedy decoding, logits of the greedy sequence
    assert torch.equal(out["step_verb"].argmax(-1), ids[..., 0])
    assert torch.equal(out["step_obj_b"].argmax(-1), ids[..., 2])
    # teacher forcing with the greedy ids reproduces the same logits
    forced = model(video, program_steps=ids)
    assert torch.allclose(forced["step_obj_a"], out["step_obj_a"], atol=1e-5)


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


def test_bad_model_args_are_clear_errors():
    with pytest.raises(LeapError, match="unknown model_args"):
        build_model(tiny_args(colour="red"))
    with pytest.raises(LeapError, match="unknown backbone"):
        build_model(tiny_args(backbone="resnet50"))
    with pytest.raises(LeapError, match="needs program heads"):
        build_model(tiny_args(program=None, anticipation={"context": 2, "aggregate": True}))
