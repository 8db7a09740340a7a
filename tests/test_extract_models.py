"""Weight loading of the optional models: torchvision Faster R-CNN and PANNs CNN14, with random-weight
checkpoints written by the tests in the real key layout."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from leap_cli.errors import LeapError

torch.set_num_threads(1)

# Shapes of the published Cnn14_mAP=0.431.pth state dict (PANNs, Kong et al. 2020), spot-checked by name.
PUBLISHED_CNN14 = {
    "spectrogram_extractor.stft.conv_real.weight": (513, 1, 1024),
    "spectrogram_extractor.stft.conv_imag.weight": (513, 1, 1024),
    "logmel_extractor.melW": (513, 64),
    "bn0.weight": (64,), "bn0.running_var": (64,),
    "conv_block1.conv1.weight": (64, 1, 3, 3), "conv_block1.conv2.weight": (64, 64, 3, 3),
    "conv_block1.bn1.weight": (64,), "conv_block1.bn2.running_mean": (64,),
    "conv_block4.conv1.weight": (512, 256, 3, 3),
    "conv_block6.conv2.weight": (2048, 2048, 3, 3), "conv_block6.bn2.bias": (2048,),
    "fc1.weight": (2048, 2048), "fc1.bias": (2048,),
    "fc_audioset.weight": (527, 2048), "fc_audioset.bias": (527,),
}
SMALL = (8, 8, 16, 16, 32, 32)


def test_cnn14_has_the_published_key_layout():
    from leap_cli.extract.audio_cnn14 import Cnn14

    with torch.device("meta"):
        model = Cnn14()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for key, shape in PUBLISHED_CNN14.items():
        assert shapes.get(key) == shape, key
    prefixes = {k.split(".")[0] for k in shapes}
    assert prefixes == {"spectrogram_extractor", "logmel_extractor", "bn0", "fc1", "fc_audioset"} | {
        f"conv_block{i}" for i in range(1, 7)}
    # 80.8M parameters in the paper's count (trainable layers only)
    trainable = sum(v.numel() for k, v in model.state_dict().items()
                    if not k.startswith(("spectrogram", "logmel")) and "running" not in k and "num_batches" not in k)
    assert abs(trainable / 1e6 - 80.8) < 0.3


def test_mel_filterbank_covers_the_band():
    from leap_cli.extract.audio_cnn14 import mel_filterbank

    w = mel_filterbank(32000, 1024, 64, 50, 14000)
    f = np.linspace(0, 16000, 513)
    assert w.shape == (513, 64) and (w >= 0).all()
    assert w[f < 45].sum() == 0 and w[f > 14050].sum() == 0
    peaks = f[w.argmax(axis=0)]
    assert (np.diff(peaks) >= 0).all()  # filters ordered by frequency


def _cnn14_checkpoint(path, widths=SMALL, drop=None, extra=None):
    from leap_cli.extract.audio_cnn14 import Cnn14

    torch.manual_seed(0)
    state = Cnn14(widths=widths).state_dict()
    if drop:
        state.pop(drop)
    if extra:
        state[extra] = torch.zeros(3)
    torch.save({"model": state}, path)


def test_cnn14_loads_random_checkpoint_and_tags(tmp_path):
    from leap_cli.extract.audio_cnn14 import AudioTagger

    ck = tmp_path / "Cnn14.pth"
    _cnn14_checkpoint(ck)
    labels = tmp_path / "class_labels_indices.csv"
    names = ["Speech", "Water tap, faucet", "Frying (food)", "Chopping (food)"] + [f"Thing {i}" for i in range(523)]
    labels.write_text("index,mid,display_name\n" + "".join(f'{i},/m/{i},"{n}"\n' for i, n in enumerate(names)))
    with pytest.raises(LeapError, match="--audio-labels"):
        AudioTagger(ck, widths=SMALL)
    tagger = AudioTagger(ck, labels, widths=SMALL, threshold=0.0)
    assert tagger.labels[1] == "Water tap, faucet" and tagger.categories[1] == "running_water"
    y = np.random.default_rng(0).standard_normal(32000 * 2).astype(np.float32) * 0.1
    out = tagger.tag(y)
    assert len(out["top_tags"]) == 5 and all(0 <= t["score"] <= 1 for t in out["top_tags"])
    assert out["events"][0]["start"] == 0.0 and out["events"][-1]["stop"] == pytest.approx(2.0)


def test_cnn14_checkpoint_with_the_training_scripts_sampler_loads(tmp_path):
    """audioset_tagging_cnn's main.py saves {'iteration', 'model', 'sampler'}, the sampler's state in NumPy arrays
    and scalars: read without unpickling code (NumPy arrays only), while other objects stay refused."""
    from leap_cli.extract.audio_cnn14 import AudioTagger

    _cnn14_checkpoint(tmp_path / "plain.pth")
    ckpt = torch.load(tmp_path / "plain.pth", weights_only=True)
    sampler = {"indexes_per_class": [np.arange(5), np.arange(3)], "queue": [np.int64(4)], "pointers_of_classes": [0, 1]}
    torch.save({**ckpt, "iteration": 540000, "sampler": sampler}, tmp_path / "Cnn14.pth")
    labels = tmp_path / "labels.csv"
    labels.write_text("index,mid,display_name\n" + "".join(f"{i},/m/{i},Sound {i}\n" for i in range(527)))
    assert len(AudioTagger(tmp_path / "Cnn14.pth", labels, widths=SMALL).labels) == 527
    torch.save({**ckpt, "args": argparse.Namespace(lr=1e-3)}, tmp_path / "other.pth")
    with pytest.raises(LeapError, match=r"argparse\.Namespace.*save its 'model' entry alone"):
        AudioTagger(tmp_path / "other.pth", labels, widths=SMALL)


def test_cnn14_wrong_keys_are_listed(tmp_path):
    from leap_cli.extract.audio_cnn14 import AudioTagger

    ck = tmp_path / "bad.pth"
    _cnn14_checkpoint(ck, drop="conv_block3.conv2.weight", extra="head.weight")
    with pytest.raises(LeapError) as e:
        AudioTagger(ck, widths=SMALL)
    msg = e.value.one_line()
    assert "missing keys: conv_block3.conv2.weight" in msg and "unexpected keys: head.weight" in msg
    assert str(ck) in msg
    # PANNs' 16 kHz CNN14 (a 512-sample window): "shape mismatches ... pass a checkpoint of the CNN14 audio model
    # architecture", of a published CNN14
    state = torch.load(tmp_path / "bad.pth", weights_only=True)["model"]
    state["logmel_extractor.melW"] = torch.zeros(257, 64)
    torch.save({"model": state}, tmp_path / "16k.pth")
    with pytest.raises(LeapError, match="a 512-sample window: a 16 kHz or 8 kHz release") as e:
        AudioTagger(tmp_path / "16k.pth", widths=SMALL)
    assert "Cnn14_mAP=0.431.pth" in e.value.fix


DET_ARCH = "fasterrcnn_mobilenet_v3_large_320_fpn"


def _detector_checkpoint(path, classes, **kw):
    import torchvision.models.detection as det

    torch.manual_seed(0)
    model = getattr(det, DET_ARCH)(weights=None, weights_backbone=None, num_classes=len(classes))
    state = model.state_dict()
    if kw.get("rename"):
        state["roi_heads.box_head.fc6.weight_renamed"] = state.pop("roi_heads.box_head.fc6.weight")
    payload = {"model": state, "arch": DET_ARCH}
    if kw.get("with_classes", True):
        payload["classes"] = classes
    torch.save(payload, path)


def test_detector_loads_random_weights_and_detects(tmp_path):
    from leap_cli.extract.objects import FasterRCNNDetector

    ck = tmp_path / "det.pth"
    _detector_checkpoint(ck, ["__background__", "plate", "knife"])
    det = FasterRCNNDetector(ck, score_threshold=0.0)
    assert det.classes == ["__background__", "plate", "knife"] and det.arch == DET_ARCH
    frames = np.random.default_rng(0).integers(0, 255, (2, 96, 128, 3), dtype=np.uint8)
    out = det(frames)
    assert len(out) == 2
    for boxes in out:
        for b in boxes:
            assert b.label in ("plate", "knife") and -0.01 <= b.bbox.left <= b.bbox.right <= 1.01


@pytest.mark.parametrize("arch", ["fasterrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v3_large_320_fpn",
                                  "fasterrcnn_resnet50_fpn_v2"])
def test_detector_loads_torchvisions_published_layout_and_computes_as_torchvision(tmp_path, arch):
    """torchvision builds its v1 and MobileNet COCO models with FrozenBatchNorm2d (no num_batches_tracked; eps 0
    for the v1 ResNet-50 COCO file): a file in that layout loads, and the backbone computes what torchvision's
    does (small running variances make a wrong eps show)."""
    from leap_cli.extract.objects import FasterRCNNDetector
    from tests.naming_models import torchvision_pretrained_detector

    torch.manual_seed(0)
    ref = torchvision_pretrained_detector(arch).eval()
    state = ref.state_dict()
    for k, v in state.items():
        if k.endswith("running_var"):  # scale kept by the weight, so that activations stay finite
            v.uniform_(1e-4, 1e-3)
            state[k.replace("running_var", "weight")].copy_(v.sqrt())
    ref.load_state_dict(state)
    torch.save(state, tmp_path / "coco.pth")
    det = FasterRCNNDetector(tmp_path / "coco.pth", arch=arch)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        got, want = det.model.backbone(x), ref.backbone(x)
    assert all(torch.allclose(got[k], want[k], rtol=1e-4, atol=1e-5) for k in want)
    if arch == "fasterrcnn_resnet50_fpn":  # torch hub's v1 file under the default (v2) architecture: said so
        with pytest.raises(LeapError, match="is a fasterrcnn_resnet50_fpn, not a fasterrcnn_resnet50_fpn_v2") as e:
            FasterRCNNDetector(tmp_path / "coco.pth")
        assert e.value.fix == "add --detector-arch fasterrcnn_resnet50_fpn"


def test_detector_labels_file_and_mismatches(tmp_path):
    from leap_cli.extract.objects import FasterRCNNDetector

    ck = tmp_path / "det.pth"
    _detector_checkpoint(ck, ["bg", "plate", "knife"], with_classes=False)
    with pytest.raises(LeapError, match="--detector-labels"):
        FasterRCNNDetector(ck)
    labels = tmp_path / "labels.txt"
    labels.write_text("bg\nplate\n")
    with pytest.raises(LeapError, match="3 classes but 2 names"):
        FasterRCNNDetector(ck, labels=labels)
    labels.write_text("bg\nplate\nknife\n")
    assert FasterRCNNDetector(ck, labels=labels).classes[2] == "knife"
    bad = tmp_path / "bad.pth"
    _detector_checkpoint(bad, ["bg", "plate", "knife"], rename=True)
    with pytest.raises(LeapError) as e:
        FasterRCNNDetector(bad)
    msg = e.value.one_line()
    assert "missing keys: roi_heads.box_head.fc6.weight" in msg
    assert "unexpected keys: roi_heads.box_head.fc6.weight_renamed" in msg


def test_stage_runs_with_both_models(tmp_path):
    """``leap extract`` with --audio-model and --detector-weights: sources say so, records are ok."""
    from leap_cli.extract.runner import ExtractConfig, run_extract
    from leap_cli.io import read_jsonl
    from tests.extract_kitchen import build

    root = build(tmp_path / "k")
    ck, det = tmp_path / "cnn14.pth", tmp_path / "det.pth"
    _cnn14_checkpoint(ck)
    labels = tmp_path / "labels.csv"
    labels.write_text("index,mid,display_name\n" + "".join(f"{i},/m/{i},Sound {i}\n" for i in range(527)))
    _detector_checkpoint(det, ["__background__", "plate", "knife"])
    out = tmp_path / "d.jsonl"
    s = run_extract(ExtractConfig(data=root, split="train", out=out, components=("audio", "objects"), limit=1,
                                  audio_model=ck, audio_labels=labels, detector_weights=det, object_frames=2))
    (r,) = read_jsonl(out)
    assert s.counts["audio"]["ok"] == 1 and s.counts["objects"]["ok"] == 1, s.errors
    assert r["components"]["audio"]["source"] == "cnn14:cnn14.pth" and len(r["components"]["audio"]["data"]["top_tags"]) == 5
    assert r["components"]["objects"]["source"] == f"detector:{DET_ARCH}:det.pth"


def test_a_model_file_is_known_by_its_content_not_its_path(tmp_path):
    """The weights staged to node-local scratch (the same file elsewhere) were refused as other settings, and
    labels edited in place resumed into records of the old labels (QA)."""
    import shutil

    from typer.testing import CliRunner

    from leap_cli.cli import app
    from leap_cli.errors import LeapError
    from tests.extract_kitchen import build

    root = build(tmp_path / "k")
    home, scratch = tmp_path / "weights", tmp_path / "scratch"
    home.mkdir()
    _cnn14_checkpoint(home / "cnn14.pth")
    (home / "labels.csv").write_text("index,mid,display_name\n" + "".join(f"{i},/m/{i},Sound {i}\n" for i in range(527)))
    shutil.copytree(home, scratch)

    def extract(folder, limit):
        return CliRunner().invoke(app, ["extract", "--data", str(root), "--split", "train", "--workdir", str(tmp_path),
                                        "--components", "audio", "--limit", str(limit), "--frame-cache", "none",
                                        "--audio-model", str(folder / "cnn14.pth"),
                                        "--audio-labels", str(folder / "labels.csv")])

    assert extract(home, 1).exit_code == 0
    res = extract(scratch, 2)  # the same files, staged elsewhere: resumed
    assert res.exit_code == 0, res.output
    lines = (tmp_path / "descriptors" / "train.jsonl").read_text().splitlines()
    assert len(lines) == 2
    (scratch / "labels.csv").write_text((scratch / "labels.csv").read_text().replace("Sound 1\n", "Bell 1\n"))
    res = extract(scratch, 3)  # labels edited in place: not the run's labels
    assert isinstance(res.exception, LeapError), res.output
    assert "--audio-labels (the file's size and content hash): '" in str(res.exception), res.output
