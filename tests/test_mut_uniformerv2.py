"""UniFormerV2 behaviours a hand-made mutation run of leap_cli/model/uniformerv2.py found unchecked: the
initialisation that makes fresh UniBlocks the identity, stochastic-depth scaling and rates, the architecture
options' refusals, the released architectures' head sizes, and the checkpoint loader's edges (wrappers, head
replacement, the partial-load limit, normalisation, advice)."""

from __future__ import annotations

import logging

import pytest
import torch

from leap_cli.errors import LeapError
from leap_cli.model import build_model
from leap_cli.model.uniformerv2 import (
    PARTIAL_LOAD_LIMIT, DropPath, family_options, load_pretrained, model_family, resize_pos_embed, uniformerv2_b16,
    uniformerv2_l14, uniformerv2_tiny,
)
from tests.test_model import official_uniformerv2_shapes, preset_args, random_state, tiny_args

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------ initialisation
def test_fresh_local_relations_add_nothing_to_the_backbone():
    """The local UniBlocks' expanding convolution starts at zero (official): a model with fresh local relations
    computes what the same weights without them compute (so CLIP weights start as CLIP)."""
    torch.manual_seed(0)
    with_local = uniformerv2_tiny(img_size=64, num_classes=0).eval()
    without = uniformerv2_tiny(img_size=64, num_classes=0, no_lmhra=True).eval()
    missing, unexpected = without.load_state_dict(with_local.state_dict(), strict=False)
    assert missing == [] and unexpected and all(".lmhra" in k for k in unexpected)
    x = torch.randn(2, 3, 4, 64, 64)
    with torch.no_grad():
        a, tokens_a = with_local.forward_features(x)
        b, tokens_b = without.forward_features(x)
    torch.testing.assert_close(tokens_a, tokens_b, rtol=0, atol=0)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_fresh_global_blocks_leave_the_video_query_at_its_token():
    """The global UniBlocks' residual branches start at zero (official Extractor init): the fused feature of a
    fresh model is (1 - sigmoid(0)) * temporal_cls_token (0) + sigmoid(0) * the time-mean of the last class token,
    i.e. half that mean."""
    torch.manual_seed(0)
    model = uniformerv2_tiny(img_size=64, num_classes=0).eval()
    with torch.no_grad():
        fused, tokens = model.forward_features(torch.randn(2, 3, 4, 64, 64))
    torch.testing.assert_close(fused, 0.5 * tokens[:, :, 0].mean(1))


# ------------------------------------------------------------------------------------------ stochastic depth
@pytest.mark.parametrize("per", ["sample", "token", "batch"])
def test_drop_path_rescales_the_kept_paths(per):
    """Kept paths are divided by the keep probability (0.75 here: 1 -> 4/3), so the expected output is the input."""
    torch.manual_seed(0)
    drop = DropPath(0.25, per).train()
    values = torch.unique(torch.stack([drop(torch.ones(64, 50, 4)) for _ in range(20)])).tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(4 / 3)
    assert torch.equal(DropPath(0.25, per).eval()(torch.ones(3, 5, 2)), torch.ones(3, 5, 2))


def test_drop_path_rates_rise_linearly_to_the_configured_rate():
    """As the official torch.linspace(0, rate, n): the first block 0, the last the full rate."""
    model = uniformerv2_tiny(backbone_drop_path_rate=0.3, drop_path_rate=0.2)
    assert [b.drop_path.p for b in model.transformer.resblocks] == pytest.approx([0.0, 0.15, 0.3])
    assert [b.drop_path_local.p for b in model.transformer.resblocks] == pytest.approx([0.0, 0.15, 0.3])
    assert [d.drop_path.p for d in model.transformer.dec] == pytest.approx([0.0, 0.2])


# ------------------------------------------------------------------------------------------ architecture options
def test_a_single_local_relation_per_block():
    """double_lmhra=False: one local relation (lmhra1) per block, the official layout, and the model runs."""
    model = uniformerv2_tiny(img_size=64, num_classes=5, double_lmhra=False)
    ours = {f"backbone.{k}": tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == official_uniformerv2_shapes(double_lmhra=False, num_classes=5)
    out = model(torch.randn(1, 3, 4, 64, 64))
    out.sum().backward()
    assert out.shape == (1, 5) and model.transformer.resblocks[0].lmhra1.pos_embed[3].weight.grad is not None


@pytest.mark.parametrize("options, says", [
    ({"return_list": [3]}, r"return_list \(3,\) outside 0\.\.2"),
    ({"return_list": [-1, 2]}, r"outside 0\.\.2"),
    ({"num_frames": 5}, "num_frames 5 must be even with temporal_downsample"),
    ({"colour": "red"}, r"unknown UniFormerV2 options: \['colour'\]"),
])
def test_options_that_cannot_build_are_refused(options, says):
    with pytest.raises(LeapError, match=says):
        uniformerv2_tiny(**options)


def test_dropout_options_reach_their_modules():
    """cls_dropout is the classifier's dropout; a return_list override keeps the builder's global-block dropout
    for every global layer (b16: the official 0.5, tiny: none)."""
    assert uniformerv2_tiny(cls_dropout=0.3).transformer.proj[1].p == 0.3
    with torch.device("meta"):
        b16 = uniformerv2_b16(return_list=[9, 10, 11])
    assert b16.transformer.proj[1].p == 0.5
    assert [d.mlp.dropout.p for d in b16.transformer.dec] == [0.5, 0.5, 0.5]
    assert [d.mlp.dropout.p for d in uniformerv2_tiny(return_list=[0, 1, 2]).transformer.dec] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("downsample, frames, tokens", [(True, 4, 2), (False, 4, 4), (True, 8, 4)])
def test_the_number_of_frame_tokens(downsample, frames, tokens):
    model = uniformerv2_tiny(img_size=32, num_frames=frames, temporal_downsample=downsample, num_classes=0).eval()
    with torch.no_grad():
        _, out = model.forward_features(torch.randn(1, 3, frames, 32, 32))
    assert out.shape[1] == tokens


def test_odd_frames_are_fine_without_temporal_downsample():
    model = uniformerv2_tiny(img_size=64, num_frames=5, temporal_downsample=False, num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 5, 64, 64)).shape == (1, 3)


def test_pixels_past_the_last_whole_patch_are_ignored():
    """As the patch convolution: a 70 px clip gives the 4x4 grid of a 64 px model, and the same output as its
    64 px crop."""
    torch.manual_seed(0)
    model = uniformerv2_tiny(img_size=64, num_classes=7).eval()
    x = torch.randn(1, 3, 4, 70, 75)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x[..., :64, :64].contiguous()))


def test_a_clip_of_another_grid_with_the_same_patch_count_is_refused():
    """A 32x128 clip (2x8 patches) in a 64x64 model (4x4) was accepted (the same count of patches) and its tokens
    laid on a 4x4 grid."""
    model = uniformerv2_tiny(img_size=64, num_classes=3).eval()
    with torch.no_grad(), pytest.raises(LeapError, match="gives a 2x8 patch grid, the model was built for 64x64"):
        model(torch.zeros(1, 3, 4, 32, 128))


def test_released_architectures_use_64_wide_heads_and_the_clip_family_by_default():
    """CLIP ViT-B/16 (12 heads) and ViT-L/14 (16 heads) both have 64-wide attention heads; the builders' defaults
    are the "clip" family (local relations, temporal downsample, the last 4 layers global)."""
    with torch.device("meta"):
        for builder, layers in ((uniformerv2_b16, 12), (uniformerv2_l14, 24)):
            model = builder()
            blocks = [*model.transformer.resblocks, *model.transformer.dec]
            heads = {m.attn.head_dim for m in blocks}
            assert heads == {64}, builder.__name__
            assert model.cfg.return_list == tuple(range(layers - 4, layers))
            assert model_family(model.cfg) == "clip"


def test_position_embeddings_are_resized_bicubically():
    """Bicubic (as CLIP/timm) overshoots at a step where bilinear stays inside the values' range."""
    step = torch.tensor([0.0, 0.0, 1.0, 1.0]).repeat(4).view(16, 1)  # each row 0 0 1 1
    big = resize_pos_embed(torch.cat([torch.zeros(1, 1), step]), 1 + 8 * 8)[1:, 0]
    assert big.min() < -0.01 and big.max() > 1.01


# ------------------------------------------------------------------------------------------ loading
def ssv2_state(num_classes=174):
    f = family_options("ssv2", 3)
    return random_state(official_uniformerv2_shapes(return_list=f["return_list"], num_classes=num_classes))


def test_nested_wrappers_are_unwrapped(tmp_path):
    state = ssv2_state()
    torch.save({"state_dict": {"model": state}, "epoch": 1}, tmp_path / "nested.pth")
    model = build_model(preset_args("ssv2"))
    report = load_pretrained(model, tmp_path / "nested.pth")
    assert report.missing == [] and report.unexpected == [] and report.family == "ssv2"
    assert torch.equal(model.backbone.conv1.weight, state["backbone.conv1.weight"])


def test_a_head_of_another_class_count_is_replaced(tmp_path):
    torch.save(ssv2_state(num_classes=174), tmp_path / "ssv2.pth")
    model = uniformerv2_tiny(img_size=64, num_classes=11, **family_options("ssv2", 3))
    head = model.transformer.proj[2].weight.clone()
    report = load_pretrained(model, tmp_path / "ssv2.pth")
    assert report.dropped == {k: "classifier over 174 classes (replaced by a new 11-class head)"
                              for k in ("backbone.transformer.proj.2.weight", "backbone.transformer.proj.2.bias")}
    assert report.missing == [] and torch.equal(model.transformer.proj[2].weight, head)


def test_foreign_keys_beside_the_backbone_are_refused(tmp_path):
    state = ssv2_state()
    state["cls_head.fc.weight"] = torch.zeros(174, 64)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(LeapError, match=r"1 key of .* has no place in the model.*cls_head\.fc\.weight"):
        load_pretrained(build_model(preset_args("ssv2")), tmp_path / "extra.pth")
    report = load_pretrained(build_model(preset_args("ssv2")), tmp_path / "extra.pth", allow_unexpected=True)
    assert report.unexpected == ["cls_head.fc.weight"] and report.missing == []


def test_the_leap_model_drops_a_checkpoints_classifier_for_its_heads(tmp_path):
    torch.save(ssv2_state(), tmp_path / "ssv2.pth")
    report = load_pretrained(build_model(preset_args("ssv2")), tmp_path / "ssv2.pth")
    assert set(report.dropped.values()) == {"classifier over 174 classes (replaced by the LEAP heads)"}


def test_the_fix_names_the_l14_preset_file():
    from leap_cli.model.uniformerv2 import _family_fix

    with torch.device("meta"):
        l14 = uniformerv2_l14(**family_options("clip", 24))
    for family in ("k400", "k710", "ssv2"):
        assert f"--config uniformerv2-l14-{family} " in _family_fix(l14, family)


def test_a_bare_backbone_state_dict_is_uniformerv2_not_clip(tmp_path):
    """Keys without ``backbone.`` that hold UniFormerV2-only modules: an official-layout backbone (0.45/0.225)."""
    state = {k[len("backbone."):]: v for k, v in ssv2_state().items()}
    torch.save(state, tmp_path / "bare.pth")
    report = load_pretrained(build_model(preset_args("ssv2")), tmp_path / "bare.pth")
    assert report.source == "uniformerv2-backbone" and report.family == "ssv2" and report.missing == []


@pytest.mark.parametrize("absent", [PARTIAL_LOAD_LIMIT, PARTIAL_LOAD_LIMIT + 1])
def test_the_partial_load_limit(tmp_path, absent):
    """Up to PARTIAL_LOAD_LIMIT (4) backbone tensors missing load (reported missing); one more is refused."""
    state = ssv2_state()
    gone = [k for k in state if k.startswith("backbone.transformer.dec.0.") and ".ln_" in k][:absent]
    assert len(gone) == absent
    torch.save({k: v for k, v in state.items() if k not in gone}, tmp_path / "part.pth")
    model = build_model(preset_args("ssv2"))
    if absent <= PARTIAL_LOAD_LIMIT:
        assert sorted(load_pretrained(model, tmp_path / "part.pth").missing) == sorted(gone)
    else:
        with pytest.raises(LeapError, match=rf"{absent} backbone tensors would start from their initialisation"):
            load_pretrained(model, tmp_path / "part.pth")


def test_an_incomplete_k400_checkpoint_in_a_k710_model_is_not_sent_to_another_preset(tmp_path):
    """k400 and k710 are one network: the advice is a complete checkpoint, not the k400 preset."""
    state = random_state(official_uniformerv2_shapes(no_lmhra=True, downsample=False, num_classes=400))
    torch.save({k: v for k, v in state.items() if ".dec." not in k}, tmp_path / "k400.pth")
    with pytest.raises(LeapError) as e:
        load_pretrained(build_model(preset_args("k710")), tmp_path / "k400.pth")
    assert "complete k400 checkpoint" in e.value.fix and "preset" not in e.value.fix


def test_a_frozen_checkpoint_loads_with_a_hint_about_frozen(tmp_path, caplog):
    """Official frozen_* checkpoints have no ``balance``: loaded (one tensor fresh) with the advice to build
    the model with frozen: true."""
    state = random_state(official_uniformerv2_shapes(no_lmhra=True, downsample=False, num_classes=710, frozen=True,
                                                     return_list=family_options("k710", 3)["return_list"]))
    torch.save(state, tmp_path / "frozen.pth")
    with caplog.at_level(logging.WARNING, logger="leap_cli.model.uniformerv2"):
        report = load_pretrained(build_model(preset_args("k710")), tmp_path / "frozen.pth")
    assert report.missing == ["backbone.transformer.balance"]
    assert "trained with frozen=True; build the model with frozen: true" in caplog.text


def test_weights_trained_with_another_std_are_refused(tmp_path):
    """The same mean but another std is another input normalisation."""
    args = tiny_args(std=[0.5, 0.5, 0.5])
    torch.save({"model": build_model(args).state_dict(), "model_args": args, "step": 1}, tmp_path / "best.pt")
    with pytest.raises(LeapError, match=r"trained on inputs normalised with mean \[0\.481.*std \[0\.5, 0\.5, 0\.5\]"):
        load_pretrained(build_model(tiny_args()), tmp_path / "best.pt")
    assert load_pretrained(build_model(args), tmp_path / "best.pt").missing == []


def test_a_safetensors_file_loads(tmp_path):
    from safetensors.torch import save_file

    state = ssv2_state()
    save_file(state, str(tmp_path / "ssv2.safetensors"))
    model = build_model(preset_args("ssv2"))
    report = load_pretrained(model, tmp_path / "ssv2.safetensors")
    assert report.family == "ssv2" and report.unexpected == []
    assert torch.equal(model.backbone.conv1.weight, state["backbone.conv1.weight"])


def test_a_file_that_holds_no_dict_is_refused(tmp_path):
    torch.save([torch.zeros(3)], tmp_path / "list.pth")
    with pytest.raises(LeapError, match="holds a list, not a state dict"):
        load_pretrained(build_model(tiny_args()), tmp_path / "list.pth")


def test_a_damaged_safetensors_file_says_so(tmp_path):
    """(torch.load reads safetensors itself in recent versions; the safetensors reader is what says a cut-short
    download is a damaged safetensors file, and what older torch versions need at all)."""
    from safetensors.torch import save_file

    save_file({"backbone.class_embedding": torch.ones(64)}, str(tmp_path / "cut.safetensors"))
    data = (tmp_path / "cut.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-10])
    with pytest.raises(LeapError, match="not a readable safetensors file") as e:
        load_pretrained(build_model(tiny_args()), tmp_path / "cut.safetensors")
    assert e.value.fix == "download the file again"
