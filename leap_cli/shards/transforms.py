"""Clip transforms for the shards reader: JPEG decoding, temporal selection, crops, colour jitter. Everything
works on uint8 ``[T,H,W,3]`` RGB numpy arrays with OpenCV and ends in a uint8 tensor ``[3,T,H,W]`` (the model
normalises); one crop (and one colour change) is drawn per clip, so frames stay aligned."""

from __future__ import annotations

import math

from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    import torch


def decode_jpegs(blobs: list[bytes]) -> np.ndarray:
    """JPEG bytes -> uint8 ``[T,H,W,3]`` RGB. Raises ValueError on an undecodable frame."""
    frames = []
    for i, b in enumerate(blobs):
        img = cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"frame {i} is not a decodable JPEG")
        frames.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    if len({f.shape for f in frames}) > 1:
        raise ValueError("frames of one clip differ in size")
    return np.stack(frames)


def temporal_indices(stored: int, wanted: int, rng: np.random.Generator | None = None, view: int = 0,
                     views: int = 1) -> list[int]:
    """Which of ``stored`` frames to take. Training (``rng``): a random frame in each of ``wanted`` equal
    chunks (temporal jitter); evaluation: view ``view`` of ``views`` evenly spaced offsets in each chunk."""
    chunk = stored / wanted
    if rng is not None and stored > wanted:
        return [min(stored - 1, int(math.floor(k * chunk + rng.random() * chunk))) for k in range(wanted)]
    return [min(stored - 1, int(math.floor(k * chunk + (view + 0.5) * chunk / views))) for k in range(wanted)]


def random_resized_box(h: int, w: int, rng: np.random.Generator, scale: tuple[float, float] = (0.25, 1.0),
                       ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop covering ``scale`` of the area at aspect ``ratio``."""
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    s = min(h, w)
    return (h - s) // 2, (w - s) // 2, s, s


def crop_resize(clip: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    top, left, ch, cw = box
    out = np.empty((clip.shape[0], size, size, 3), np.uint8)
    for i, f in enumerate(clip):
        crop = f[top:top + ch, left:left + cw]
        interp = cv2.INTER_AREA if min(ch, cw) > size else cv2.INTER_LINEAR
        out[i] = cv2.resize(crop, (size, size), interpolation=interp)
    return out


def spatial_boxes(h: int, w: int, size: int, views: int) -> tuple[float, list[tuple[int, int, int, int]]]:
    """Evaluation crops: resize the short side to ``size`` (scale returned), then ``views`` square crops
    along the long side (1: centre; 3: start, centre, end). Boxes are in the ORIGINAL frame's pixels."""
    s = min(h, w)
    long_side = max(h, w)
    if views == 1:
        starts = [(long_side - s) // 2]
    else:
        starts = [round(i * (long_side - s) / (views - 1)) for i in range(views)]
    boxes = [(st, 0, s, s) if h > w else (0, st, s, s) for st in starts]
    return size / s, boxes


def color_jitter(clip: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation each scaled by a factor in [1-strength, 1+strength]."""
    x = clip.astype(np.float32)
    b, c, s = (rng.uniform(1 - strength, 1 + strength) for _ in range(3))
    x *= b
    mean = x.mean()
    x = (x - mean) * c + mean
    gray = x @ np.array([0.299, 0.587, 0.114], np.float32)
    x = (x - gray[..., None]) * s + gray[..., None]
    return np.clip(x, 0, 255).astype(np.uint8)


def to_tensor(clip: np.ndarray) -> torch.Tensor:
    """uint8 ``[T,H,W,3]`` -> uint8 ``[3,T,H,W]`` (channels first). Normalisation happens in the model, on its
    device, with the mean/std of its weights family (``UniFormerV2.normalize``). (torch is imported here: check-shards'
    workers decode frames with this module and need no torch, 1.5 s of a spawned process's start.)"""
    import torch

    return torch.from_numpy(np.ascontiguousarray(clip)).permute(3, 0, 1, 2).contiguous()
