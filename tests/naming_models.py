"""Random-weight models in their real key layout, saved to files, for the naming tests: a tiny open_clip CLIP
(registered as an open_clip architecture) and torchvision Faster R-CNN state dicts."""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_CLIP = "leap-test-tiny-clip"
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
DET_ARCH = "fasterrcnn_mobilenet_v3_large_320_fpn"  # the smallest torchvision Faster R-CNN: fast on CPU


def register_tiny_clip(folder: Path) -> str:
    """Make ``TINY_CLIP`` a known open_clip architecture (a model config file, as open_clip reads its own)."""
    import open_clip

    if TINY_CLIP not in open_clip.list_models():
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{TINY_CLIP}.json"
        path.write_text(json.dumps(TINY_CLIP_CONFIG))
        open_clip.add_model_config(path)
    return TINY_CLIP


def save_clip(path: Path, arch: str, seed: int = 0) -> Path:
    """An open_clip model of ``arch`` with random weights, saved as a plain state dict (OpenAI's key layout)."""
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.create_model(arch, pretrained=None, force_quick_gelu=True)
    torch.save(model.state_dict(), path)
    return path


def save_coco_detector(path: Path, arch: str = DET_ARCH, seed: int = 0, favour: tuple[str, ...] = ()) -> Path:
    """A torchvision detector with random weights and COCO's 91 outputs, saved as torchvision publishes its
    checkpoints: a plain state dict without class names. ``favour``: COCO classes whose classifier bias is
    raised, so that random boxes come out as those classes (random weights alone give one arbitrary class)."""
    import torchvision.models.detection as det
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_V2_Weights

    torch.manual_seed(seed)
    state = torchvision_pretrained_detector(arch).state_dict()
    coco = FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1.meta["categories"]
    for name in favour:
        state["roi_heads.box_predictor.cls_score.bias"][coco.index(name)] += 8.0
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def torchvision_pretrained_detector(arch: str) -> torch.nn.Module:
    """``arch`` built by torchvision's builder for its COCO_V1 weights, with random values: the published file's
    layout (FrozenBatchNorm2d without ``num_batches_tracked`` in the v1 and MobileNet backbones, and the eps
    torchvision sets). Only the download and loading of the weights are left out."""
    from unittest import mock

    import torchvision.models as tvm
    import torchvision.models.detection as det
    from torchvision.models._api import WeightsEnum
    from torchvision.models.detection import FasterRCNN

    with mock.patch.object(WeightsEnum, "get_state_dict", lambda self, **kw: {}), \
            mock.patch.object(FasterRCNN, "load_state_dict", lambda self, state: None):
        return getattr(det, arch)(weights=tvm.get_model_weights(arch).COCO_V1)
