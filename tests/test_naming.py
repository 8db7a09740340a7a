"""Naming objects: the COCO->EPIC map, torchvision's weights path, CLIP naming (open_clip) with random weights in
the real key layout, box-to-crop geometry, the narration prior, and the hands component's contact names.
With random weights the names are noise: the tests check wiring, batching, geometry and mapping, not accuracy."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from leap_cli.epic.annotations import Segment
from leap_cli.epic.classes import ClassVocab
from leap_cli.epic.hand_objects import BBox
from leap_cli.errors import LeapError
from leap_cli.extract.naming import class_prompts, crop_box, mean_names, prior_name, readable
from tests.conftest import EPIC_EXCERPT
from tests.naming_models import DET_ARCH, register_tiny_clip, save_clip, save_coco_detector

open_clip = pytest.importorskip("open_clip")

NOUNS_CSV = EPIC_EXCERPT / "EPIC_100_noun_classes.csv"  # EPIC's full noun class file (300 classes)
# Noun classes with the ids tests/extract_kitchen.py uses (a data set's own class file, in EPIC's columns).
KITCHEN_NOUNS = ("id,key,instances,category\n3,door,\"['door']\",furniture\n4,knife,\"['knife']\",cutlery\n"
                 "23,carrot,\"['carrot', 'carrot:baby']\",vegetables\n30,onion,\"['onion']\",vegetables\n"
                 "40,board,\"['board:chopping', 'board']\",utensils\n")


@pytest.fixture(scope="module")
def epic_nouns() -> ClassVocab:
    return ClassVocab.from_csv(NOUNS_CSV, "noun")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> tuple[str, Path]:
    folder = tmp_path_factory.mktemp("clip")
    arch = register_tiny_clip(folder)
    return arch, save_clip(folder / "tiny-clip.pt", arch)


def _kitchen(tmp_path: Path, labelled: bool = False) -> Path:
    from tests.extract_kitchen import build

    root = build(tmp_path / "k")
    (root / "annotations" / "EPIC_100_noun_classes.csv").write_text(KITCHEN_NOUNS)
    if not labelled:  # EPIC publishes no labelled object boxes
        (root / "object-detections" / "P01" / "P01_01.jsonl").unlink()
    return root


# --- the COCO -> EPIC noun map ---------------------------------------------------------------------------

def test_coco_map_names_epic_nouns_and_torchvision_classes(epic_nouns):
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_V2_Weights

    from leap_cli.extract.objects import coco_epic_map

    cmap = coco_epic_map()
    coco = FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1.meta["categories"]
    keys = set(epic_nouns.keys.values())
    assert set(cmap) <= set(coco), set(cmap) - set(coco)
    assert set(cmap.values()) <= keys, set(cmap.values()) - keys
    for name in ("cup", "bowl", "knife", "spoon", "fork", "bottle", "sink", "oven", "microwave"):
        assert cmap[name] == name
    assert cmap["refrigerator"] == "fridge" and cmap["wine glass"] == "glass"
    assert "person" not in cmap and "giraffe" not in cmap  # no EPIC counterpart: dropped


# --- crops, prompts, prior -------------------------------------------------------------------------------

def test_crop_box_geometry():
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[20:40, 150:170] = (255, 0, 0)  # a red 20x20 box at x 150-170, y 20-40
    crop = crop_box(frame, BBox(0.75, 0.2, 0.85, 0.4), 48, margin=0.1)
    assert crop.shape == (48, 48, 3)
    assert (crop[20:28, 20:28, 0] == 255).all()  # the box fills the centre
    assert crop[:2, :, 0].max() < 255 and crop[:, :2, 0].max() < 255  # and the margin is outside it
    edge = crop_box(frame, BBox(0.95, 0.0, 1.0, 0.1), 16)  # at the corner: shifted inside, not padded
    assert edge.shape == (16, 16, 3)
    frame[:] = 7
    big = crop_box(frame, BBox(0.0, 0.0, 1.0, 1.0), 32)  # wider than the frame is tall: padded with zeros
    assert big.shape == (32, 32, 3) and big[0, 0, 0] == 7 and big[-1, -1, 0] == 0


def test_prompts_use_key_and_synonyms(epic_nouns):
    assert readable("spoon:wooden") == "wooden spoon" and readable("control:remote") == "remote control"
    ids, prompts = class_prompts(epic_nouns)
    assert len(ids) == 300 and len(prompts) == 300
    spoon = prompts[ids.index(epic_nouns.resolve("spoon"))]
    assert spoon[0] == "a photo of a spoon." and "a photo of a wooden spoon." in spoon and len(spoon) == 5


def test_prior_name_fits_the_contact(epic_nouns):
    plate, sink = epic_nouns.resolve("plate"), epic_nouns.resolve("sink")
    seg = Segment("P01_01_1", "P01", "P01_01", 0, 2, 1, 100, noun="plate", noun_class=plate,
                  all_nouns=("plate", "sink"), all_noun_classes=(plate, sink))
    assert prior_name(seg, epic_nouns, "portable") == "plate"
    assert prior_name(seg, epic_nouns, "stationary") == "sink"
    only = Segment("P01_01_2", "P01", "P01_01", 0, 2, 1, 100, noun="sink", noun_class=sink, all_noun_classes=(sink,))
    assert prior_name(only, epic_nouns, "portable") == "sink"  # no better guess than the main noun
    assert prior_name(Segment("x", "P01", "P01_01", 0, 2, 1, 100), epic_nouns, "portable") is None  # test split


def test_mean_names_averages_crops():
    assert mean_names([[("cup", 0.6), ("mug", 0.2)], [("mug", 0.5), ("cup", 0.3)]]) == [("cup", 0.45), ("mug", 0.35)]


# --- torchvision Faster R-CNN: COCO weights as users get them -------------------------------------------

def test_coco_weights_offline_error_names_the_file(tmp_path, monkeypatch, capsys):
    import sys

    import torchvision.models._api as api

    from leap_cli.extract.objects import FasterRCNNDetector
    from leap_cli.extract.weights import torchvision_coco_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, *a, **k):
        sys.stderr.write(f'Downloading: "{url}"\n')  # (torch.hub says so before it fails: a second line)
        raise OSError("network unreachable")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    _, cached = torchvision_coco_weights("fasterrcnn_resnet50_fpn_v2")
    assert cached == tmp_path / "torch" / "hub" / "checkpoints" / "fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth"
    with pytest.raises(LeapError) as e:
        FasterRCNNDetector("coco")
    msg = e.value.one_line()
    assert str(cached) in msg and "--detector-weights FILE" in msg and "download.pytorch.org" in msg
    assert "Downloading" not in capsys.readouterr().err
    # a download cut short in the cache: "load it in Python ... and save its 'model' entry alone" was the fix
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"PK\x03\x04" + b"\0" * 3000)
    with pytest.raises(LeapError) as e:
        FasterRCNNDetector("coco")
    assert e.value.message.startswith("the cached COCO weights cannot be read")
    assert e.value.fix.startswith(f"delete it and place {cached.name} (from https://download.pytorch.org")


def test_coco_weights_from_the_hub_cache_map_to_epic_nouns_in_batches(tmp_path, monkeypatch):
    """The file torchvision would have downloaded, in the torch hub cache: loaded without any download, COCO
    classes mapped to EPIC nouns, a segment's frames detected in batches with the same boxes as one batch."""
    import torchvision.models._api as api

    from leap_cli.extract.objects import FasterRCNNDetector
    from leap_cli.extract.weights import torchvision_coco_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(api, "load_state_dict_from_url", lambda *a, **k: pytest.fail("tried to download"))
    save_coco_detector(torchvision_coco_weights(DET_ARCH)[1], DET_ARCH, favour=("cup", "person"))
    det = FasterRCNNDetector("coco", arch=DET_ARCH, score_threshold=0.0, batch_size=2, box_detections_per_img=30,
                             min_size=144, max_size=192)  # builder options pass through: small inputs, fast tests
    assert det.source == f"detector:{DET_ARCH}:coco_v1" and len(det.classes) == 91
    assert det.labels[det.classes.index("refrigerator")] == "fridge" and det.labels[det.classes.index("person")] is None
    from tests.extract_kitchen import build
    from leap_cli.media.video import open_video
    from leap_cli.epic.layout import DatasetLayout

    root = build(tmp_path / "k")
    reader = open_video(DatasetLayout.open(root), "P01_01", None, record="P01_01_0")
    frames = reader.read_frames([1, 20, 40], None)
    reader.close()
    batched = det(frames)
    det.batch_size = 8
    whole = det(frames)
    assert len(batched) == 3
    assert [[(b.label, b.bbox) for b in f] for f in batched] == [[(b.label, b.bbox) for b in f] for f in whole]
    assert {b.label for f in whole for b in f} == {"cup"}  # COCO's cup is EPIC's cup; person has no EPIC noun
    for f in whole:
        for b in f:
            assert -0.01 <= b.bbox.left <= b.bbox.right <= 1.01 and -0.01 <= b.bbox.top <= b.bbox.bottom <= 1.01


def test_local_coco_file_without_names_is_taken_as_coco(tmp_path):
    from leap_cli.extract.objects import FasterRCNNDetector

    ck = save_coco_detector(tmp_path / "frcnn.pth", DET_ARCH)
    det = FasterRCNNDetector(ck, arch=DET_ARCH, keep_unmapped=True)
    assert det.source == f"detector:{DET_ARCH}:frcnn.pth"
    assert det.labels[det.classes.index("person")] == ""  # kept for a CLIP namer
    assert det.labels[0] is None  # the background never


# --- CLIP through open_clip -------------------------------------------------------------------------------

def test_clip_file_loads_and_names_kitchen_crops(tiny_clip, tmp_path, epic_nouns):
    from leap_cli.extract.naming import ClipNamer

    arch, ck = tiny_clip
    namer = ClipNamer(ck, arch=arch, cache_dir=tmp_path / "cache", top_k=3)
    assert namer.source == f"clip:{arch}:tiny-clip.pt" and namer.image_size == 32
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (72, 96, 3), dtype=np.uint8) for _ in range(3)]
    boxes = [BBox(0.1, 0.1, 0.4, 0.5), BBox(0.5, 0.5, 0.9, 0.9), BBox(0.0, 0.0, 1.0, 1.0)]
    names = namer.name_boxes(frames, boxes, epic_nouns)
    assert len(names) == 3
    keys = set(epic_nouns.keys.values())
    for top in names:
        assert len(top) == 3 and all(n in keys for n, _ in top)
        assert [s for _, s in top] == sorted((s for _, s in top), reverse=True) and sum(s for _, s in top) <= 1.0001
    # the narration prior raises its nouns, but does not replace the answer
    ids, probs = namer.probabilities([crop_box(f, b, 32) for f, b in zip(frames, boxes)], epic_nouns)
    carrot = epic_nouns.resolve("carrot")
    post = namer.apply_prior(ids, probs, [carrot])
    i = ids.index(carrot)
    assert (post[:, i] > probs[:, i]).all() and np.allclose(post.sum(1), 1, atol=1e-5)
    sure = np.full((1, len(ids)), 0.05 / (len(ids) - 2))  # a crop CLIP is sure of: knife 0.95, carrot 0.05
    sure[0, ids.index(epic_nouns.resolve("knife"))], sure[0, i] = 0.9, 0.05
    assert ids[int(namer.apply_prior(ids, sure, [carrot]).argmax())] == epic_nouns.resolve("knife")
    # text embeddings of the 300 classes are cached per model: a second namer does not encode them again
    cached = list((tmp_path / "cache").glob("clip-text-*.pt"))
    assert len(cached) == 1
    again = ClipNamer(ck, arch=arch, cache_dir=tmp_path / "cache")
    again.model.encode_text = lambda *a, **k: pytest.fail("text embeddings recomputed")
    assert np.allclose(again.probabilities([crop_box(frames[0], boxes[0], 32)], epic_nouns)[1], probs[:1], atol=1e-5)


def test_clip_file_with_wrong_keys_and_missing_open_clip(tiny_clip, tmp_path, monkeypatch):
    from leap_cli.extract.naming import ClipNamer

    arch, ck = tiny_clip
    state = torch.load(ck, weights_only=True)
    state["visual.proj_renamed"] = state.pop("visual.proj")
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(LeapError) as e:
        ClipNamer(bad, arch=arch)
    assert "missing keys: visual.proj" in e.value.one_line() and str(bad) in e.value.one_line()
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(LeapError, match="install open_clip_torch"):
        ClipNamer(ck, arch=arch)


def test_clip_activation_follows_open_clip(tiny_clip, tmp_path):
    """QuickGELU for OpenAI's weights only (the TorchScript archive's entries, or a ``-quickgelu`` architecture):
    an open_clip state dict runs with its architecture's GELU, and computes what open_clip computes from it."""
    import open_clip

    from leap_cli.extract.naming import ClipNamer

    arch, _ = tiny_clip
    torch.manual_seed(1)
    gelu = open_clip.create_model(arch, pretrained=None).eval()  # how LAION/DataComp weights are trained
    torch.save(gelu.state_dict(), tmp_path / "laion.bin")
    namer = ClipNamer(tmp_path / "laion.bin", arch=arch)
    assert type(namer.model.visual.transformer.resblocks[0].mlp.gelu) is torch.nn.GELU
    reference = open_clip.create_model(arch, pretrained=str(tmp_path / "laion.bin")).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(namer.model.encode_image(x), reference.encode_image(x), atol=1e-6)
    openai = {**gelu.state_dict(), "input_resolution": torch.tensor(32), "context_length": torch.tensor(77),
              "vocab_size": torch.tensor(49408)}  # the entries of OpenAI's TorchScript archive
    torch.save(openai, tmp_path / "openai.pt")
    namer = ClipNamer(tmp_path / "openai.pt", arch=arch)
    assert type(namer.model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"


def test_clip_openai_offline_names_the_file_url_and_caches(tiny_clip, monkeypatch, tmp_path):
    import open_clip

    from leap_cli.extract.naming import ClipNamer

    def offline(*a, **k):
        raise RuntimeError("offline")

    monkeypatch.setattr(open_clip, "create_model", offline)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(LeapError) as e:
        ClipNamer("openai", arch="ViT-B-16")
    msg = e.value.one_line()
    assert "https://openaipublic.azureedge.net/clip/models/" in msg and "ViT-B-16.pt" in msg
    assert str(tmp_path / ".cache" / "clip" / "ViT-B-16.pt") in msg
    if open_clip.get_pretrained_cfg("ViT-B-16", "openai").get("hf_hub"):  # (open_clip >= 2.29 names a hub copy)
        assert "models--timm--vit_base_patch16_clip_224.openai" in msg and "open_clip_pytorch_model.bin" in msg


def _openai_tag(monkeypatch, arch: str, hub: str = "timm/tiny_clip.openai/"):
    """open_clip's ``openai`` tag for ``arch``: a hub release (and no URL), as ViT-B-16's; the network refused."""
    import socket

    real = open_clip.get_pretrained_cfg
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda a, tag: (
        {"url": "", "hf_hub": hub, "quick_gelu": True} if (a, tag) == (arch, "openai") else real(a, tag)))
    downloads = []

    def create_model(name, pretrained=None, **kw):
        if pretrained is not None:
            downloads.append(pretrained)
            raise RuntimeError("offline")
        return real_create(name, pretrained=None, **kw)

    real_create = open_clip.create_model
    monkeypatch.setattr(open_clip, "create_model", create_model)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(
        OSError(-2, "Name or service not known")))
    return downloads


@pytest.mark.parametrize("name", ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])
def test_clip_openai_reads_the_hugging_face_cache_offline(tiny_clip, monkeypatch, tmp_path, name):
    """``--clip-weights openai`` with open_clip's file in the Hugging Face cache loads it with OpenAI's QuickGELU
    and asks no network (the hub client's ~50 s of retries came first on an offline node), in either of the
    two formats open_clip downloads."""
    from huggingface_hub import constants
    from safetensors.torch import save_file

    from leap_cli.extract.naming import ClipNamer

    arch, ck = tiny_clip
    downloads = _openai_tag(monkeypatch, arch)
    monkeypatch.setenv("HOME", str(tmp_path))
    repo = tmp_path / "hub" / "models--timm--tiny_clip.openai"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    state = torch.load(ck, weights_only=True)
    target = repo / "snapshots" / "0123abcd" / name
    save_file(state, str(target)) if name.endswith(".safetensors") else torch.save(state, target)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    namer = ClipNamer("openai", arch=arch)
    assert downloads == [] and namer.source == f"clip:{arch}:openai"
    assert type(namer.model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    assert torch.equal(namer.model.state_dict()["visual.proj"], state["visual.proj"])


def test_clip_openai_unreachable_hub_fails_at_once(tiny_clip, monkeypatch, tmp_path):
    """With nothing cached and the hub unreachable, the error comes before open_clip's download (whose retries
    took ~50 s), naming the files to place; HF_HUB_OFFLINE says so without trying the network."""
    from huggingface_hub import constants

    from leap_cli.extract.naming import ClipNamer

    arch, _ = tiny_clip
    downloads = _openai_tag(monkeypatch, arch)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(LeapError) as e:
        ClipNamer("openai", arch=arch)
    assert downloads == []
    assert "huggingface.co cannot be reached (Name or service not known" in e.value.one_line()
    assert "models--timm--tiny_clip.openai" in e.value.one_line()
    # a mirror (HF_ENDPOINT) is the host tried; behind a proxy no direct connection is tried: the download goes
    # through the hub client (refused here by the fake download, after the pre-check let it through)
    import socket

    tried = []
    monkeypatch.setattr(socket, "create_connection", lambda addr, **k: (tried.append(addr), (_ for _ in ()).throw(
        OSError(111, "Connection refused")))[1])
    monkeypatch.setattr(constants, "ENDPOINT", "http://mirror.example:8080")
    with pytest.raises(LeapError, match=r"mirror.example cannot be reached \(Connection refused"):
        ClipNamer("openai", arch=arch)
    assert tried == [("mirror.example", 8080)] and downloads == []
    monkeypatch.setattr(constants, "ENDPOINT", "mirror.example:8080")  # no scheme: the hub client's to read
    with pytest.raises(LeapError, match="through open_clip"):
        ClipNamer("openai", arch=arch)
    assert tried == [("mirror.example", 8080)] and downloads == ["openai"]
    monkeypatch.setattr(constants, "ENDPOINT", "http://mirror.example:8080")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    with pytest.raises(LeapError, match="through open_clip"):
        ClipNamer("openai", arch=arch)
    assert tried == [("mirror.example", 8080)] and downloads == ["openai", "openai"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LeapError, match="HF_HUB_OFFLINE is set"):
        ClipNamer("openai", arch=arch)
    assert downloads == ["openai", "openai"]


@pytest.mark.slow
def test_real_vit_b16_layout_loads_and_names(tmp_path, epic_nouns):
    """OpenAI's CLIP ViT-B/16 architecture, random weights in its key layout, through the real loading path."""
    from leap_cli.extract.naming import ClipNamer

    ck = save_clip(tmp_path / "ViT-B-16.pt", "ViT-B-16")
    kitchen = ClassVocab.from_csv(_write(tmp_path / "nouns.csv", KITCHEN_NOUNS), "noun")
    namer = ClipNamer(ck, device="cpu")
    assert namer.source == "clip:ViT-B-16:ViT-B-16.pt" and namer.image_size == 224
    frame = np.random.default_rng(1).integers(0, 255, (144, 192, 3), dtype=np.uint8)
    (top,) = namer.name_boxes([frame], [BBox(0.6, 0.5, 0.8, 0.7)], kitchen)
    assert {n for n, _ in top} <= set(kitchen.keys.values()) and len(top) == 5


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- the hands component names its contacts ---------------------------------------------------------------

def _ctx(root: Path, nid: str = "P01_01_0", **kw):
    from leap_cli.epic.layout import DatasetLayout
    from leap_cli.extract.base import SegmentContext
    from leap_cli.media.video import open_video
    from tests.extract_kitchen import FPS

    layout = DatasetLayout.open(root)
    seg = next(s for s in layout.annotations().segments("train") if s.narration_id == nid)
    reader = open_video(layout, seg.video_id, FPS, record=nid)
    return SegmentContext(layout=layout, segment=seg, fps=FPS,
                          read_frames=lambda nums, side: reader.read_frames(nums, side or None), **kw)


def _right_contact(rec):
    (c,) = next(h for h in rec["data"]["hands"] if h["hand"] == "right")["contacts"]
    return c


def test_contacts_named_by_prior_detector_and_clip(tiny_clip, tmp_path):
    from leap_cli.extract.detections import LabelledBox
    from leap_cli.extract.hands import HandsComponent
    from leap_cli.extract.naming import ClipNamer
    from tests.extract_kitchen import KNIFE

    root = _kitchen(tmp_path)
    # no weights: the narration ("cut carrot") is all there is, and the record says so
    c = _right_contact(HandsComponent().describe(_ctx(root)))
    assert (c["object"], c["named_by"]) == ("carrot", "narration-prior")
    # a detector box over the contact box lends its label
    ctx = _ctx(root, video_cache={})
    ctx.video_cache[("detector_boxes", "P01_01_0")] = ("detector:test", {40: [LabelledBox("knife", KNIFE, 0.9)],
                                                                         90: [LabelledBox("cup", BBox(0, 0, .1, .1), .9)]})
    c = _right_contact(HandsComponent().describe(ctx))
    assert (c["object"], c["named_by"]) == ("knife", "detector:test")
    # CLIP names the crops of the contact box (random weights: any kitchen noun), with scores
    arch, ck = tiny_clip
    comp = HandsComponent(namer=ClipNamer(ck, arch=arch, top_k=3))
    assert comp.needs_frames
    c = _right_contact(comp.describe(_ctx(root)))
    assert c["named_by"] == f"clip:{arch}:tiny-clip.pt" and len(c["names"]) == 3
    assert c["object"] == c["names"][0]["noun"] and c["object"] in {"door", "knife", "carrot", "onion", "board"}
    assert len(c["names_without_prior"]) == 3


def test_stage_names_objects_and_contacts_with_clip_and_detector(tiny_clip, tmp_path):
    """``leap extract`` with --detector-weights and --clip-weights on kitchen video: one CLIP model serves both
    components, detector boxes of COCO classes without an EPIC noun are named by CLIP, records say which model."""
    from leap_cli.extract.runner import ExtractConfig, run_extract
    from leap_cli.io import read_jsonl

    arch, ck = tiny_clip
    root = _kitchen(tmp_path)
    det = save_coco_detector(tmp_path / "frcnn.pth", DET_ARCH, favour=("cup", "person"))
    out = tmp_path / "d" / "train.jsonl"
    s = run_extract(ExtractConfig(data=root, split="train", out=out, components=("narration", "objects", "hands"),
                                  limit=1, detector_weights=det, detector_arch=DET_ARCH, object_threshold=0.05,
                                  object_frames=2, clip_weights=ck, clip_arch=arch))
    assert s.counts["objects"]["ok"] == 1 and s.counts["hands"]["ok"] == 1, s.errors
    (r,) = read_jsonl(out)
    objs = r["components"]["objects"]
    assert objs["source"] == f"detector:{DET_ARCH}:frcnn.pth" and objs["data"]["named_by"] == f"clip:{arch}:tiny-clip.pt"
    for o in objs["data"]["objects"]:
        assert o["label"] in {"door", "knife", "carrot", "onion", "board"} | set(_coco_nouns())
        assert o["names"] and o["names"][0]["noun"] in {"door", "knife", "carrot", "onion", "board"}
    c = _right_contact(r["components"]["hands"])
    assert c["named_by"] in (objs["source"], f"clip:{arch}:tiny-clip.pt")
    assert list((out.parent / "cache").glob("clip-text-*.pt"))


def _coco_nouns() -> list[str]:
    from leap_cli.extract.objects import coco_epic_map

    return list(coco_epic_map().values())
