"""Where the published files that leap reads from a local path come from: named by the error for a missing one.

leap never downloads these itself (the torchvision detector and ``--clip-weights openai`` excepted, through their
libraries' own caches); README, "Weights", lists the same files for a reader."""

from __future__ import annotations

import re
from pathlib import Path

_CLIP = "https://openaipublic.azureedge.net/clip/models"
URLS = {  # file name as published -> its address
    "ViT-B-16.pt": f"{_CLIP}/5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
    "ViT-L-14.pt": f"{_CLIP}/b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
    "Cnn14_mAP=0.431.pth": "https://zenodo.org/record/3987831/files/Cnn14_mAP%3D0.431.pth?download=1",
    "class_labels_indices.csv":
        "http://storage.googleapis.com/us_audioset/youtube_corpus/v1/csv/class_labels_indices.csv",
}
# (the files that OpenGVLab/UniFormerV2's MODEL_ZOO.md lists)
_UNIFORMERV2_FILES = "https://pjlab-gvm-data.oss-cn-shanghai.aliyuncs.com/uniformerv2"
# an official UniFormerV2 file's name starts with its data set, the folder it is published in
_UNIFORMERV2_NAME = re.compile(r"(?:frozen_)?(k400|k600|k700|k710|sthv1|sthv2|anet|hacs|mit)_\w*uniformerv2_\w+\.pyth")


def source_of(path: str | Path) -> str | None:
    """The address of the published file named as ``path`` is, or None for a name leap does not know."""
    name = Path(path).name
    if name in URLS:
        return URLS[name]
    m = _UNIFORMERV2_NAME.fullmatch(name)
    if m:
        folder = "mitv1" if m.group(1) == "mit" else m.group(1)
        return f"{_UNIFORMERV2_FILES}/{folder}/{name}"
    return None


def missing_file_fix(path: str | Path, fix: str) -> str:
    """``fix`` for a missing weights file, with where to download it when its name is a published one's."""
    url = source_of(path)
    return f"{fix}; download {Path(path).name} from {url}" if url else fix
