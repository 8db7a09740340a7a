"""PANNs CNN14 (Kong et al. 2020, "PANNs: Large-Scale Pretrained Audio Neural Networks"), 527 AudioSet labels.

The parameter names are those of the published checkpoint (``Cnn14_mAP=0.431.pth``, ``{'model': state_dict}``):
``spectrogram_extractor.stft.conv_real/conv_imag.weight`` (the STFT as a 1-D convolution),
``logmel_extractor.melW`` (mel filter bank), ``bn0``, ``conv_block1..6.{conv1,conv2,bn1,bn2}``, ``fc1``,
``fc_audioset``. The published model runs at 32 kHz, 1024-sample windows, hop 320, 64 mel bins, 50-14000 Hz.

Class names are not part of the checkpoint: they come from the checkpoint's ``labels`` entry if it has one, or
from AudioSet's ``class_labels_indices.csv`` (``index,mid,display_name``) given with ``--audio-labels``.
Tags are computed on 1 s windows every 0.5 s and mapped to the kitchen categories by label name.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from leap_cli.errors import LeapError
from leap_cli.extract.audio import merge_windows
from leap_cli.extract.weights import load_checkpoint, load_exact, unwrap_state_dict

PUBLISHED = {"sample_rate": 32000, "window_size": 1024, "hop_size": 320, "mel_bins": 64, "fmin": 50,
             "fmax": 14000, "classes_num": 527}

# AudioSet display names (lower case substrings) -> kitchen category; first match wins
KITCHEN_MAP = (
    ("silence", "silence"), ("speech", "speech"), ("conversation", "speech"), ("narration", "speech"),
    ("chopping (food)", "chopping"), ("chop", "chopping"),
    ("water tap", "running_water"), ("sink (filling", "running_water"), ("pour", "running_water"),
    ("water", "running_water"), ("frying (food)", "sizzling"), ("sizzle", "sizzling"), ("fry", "sizzling"),
    ("scrap", "scraping"), ("rub", "scraping"), ("rustl", "rustling"), ("crumpl", "rustling"),
    ("packing", "rustling"), ("dishes", "clatter"), ("cutlery", "clatter"), ("clatter", "clatter"),
    ("clang", "clatter"), ("clink", "clatter"), ("bang", "clatter"), ("knock", "clatter"), ("thump", "clatter"),
    ("slam", "clatter"), ("chink", "clatter"), ("tap", "clatter"), ("cupboard", "clatter"), ("drawer", "clatter"),
)


def kitchen_category(name: str) -> str | None:
    low = name.lower()
    for key, cat in KITCHEN_MAP:
        if key in low:
            return cat
    return None


def mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Slaney-style mel filters (area-normalised triangles), shape [n_fft // 2 + 1, n_mels]."""
    def hz_to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        lin = f / (200.0 / 3)
        log = 15.0 + np.log(np.maximum(f, 1e-9) / 1000.0) / (math.log(6.4) / 27.0)
        return np.where(f >= 1000.0, log, lin)

    def mel_to_hz(m):
        m = np.asarray(m, dtype=np.float64)
        lin = m * (200.0 / 3)
        log = 1000.0 * np.exp((math.log(6.4) / 27.0) * (m - 15.0))
        return np.where(m >= 15.0, log, lin)

    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    pts = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    w = np.zeros((n_mels, freqs.size))
    for i in range(n_mels):
        lo, c, hi = pts[i], pts[i + 1], pts[i + 2]
        w[i] = np.maximum(0, np.minimum((freqs - lo) / (c - lo), (hi - freqs) / (hi - c)))
        w[i] *= 2.0 / (hi - lo)
    return w.T.astype(np.float32)


class STFT(nn.Module):
    """Short-time Fourier transform as two frozen 1-D convolutions (real and imaginary DFT rows x Hann window)."""

    def __init__(self, n_fft: int, hop: int):
        super().__init__()
        bins = n_fft // 2 + 1
        self.n_fft = n_fft
        self.conv_real = nn.Conv1d(1, bins, n_fft, stride=hop, bias=False)
        self.conv_imag = nn.Conv1d(1, bins, n_fft, stride=hop, bias=False)
        window = np.hanning(n_fft + 1)[:-1]  # periodic Hann
        k = np.arange(n_fft)
        ang = -2 * np.pi * np.outer(np.arange(bins), k) / n_fft
        with torch.no_grad():
            self.conv_real.weight.copy_(torch.from_numpy((np.cos(ang) * window)[:, None, :]).float())
            self.conv_imag.weight.copy_(torch.from_numpy((np.sin(ang) * window)[:, None, :]).float())
        for p in self.parameters():
            p.requires_grad = False

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.pad(x[:, None, :], (self.n_fft // 2, self.n_fft // 2), mode="reflect")  # [B,1,L]
        return self.conv_real(x).transpose(1, 2)[:, None], self.conv_imag(x).transpose(1, 2)[:, None]  # [B,1,T,F]


class Spectrogram(nn.Module):
    def __init__(self, n_fft: int, hop: int):
        super().__init__()
        self.stft = STFT(n_fft, hop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        real, imag = self.stft(x)
        return real ** 2 + imag ** 2  # power [B,1,T,F]


class LogmelFilterBank(nn.Module):
    def __init__(self, sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float):
        super().__init__()
        self.melW = nn.Parameter(torch.from_numpy(mel_filterbank(sr, n_fft, n_mels, fmin, fmax)), requires_grad=False)

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        return 10.0 * torch.log10(torch.clamp(power @ self.melW, min=1e-10))  # [B,1,T,mels], ref 1.0


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor, pool: tuple[int, int]) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, pool)


class Cnn14(nn.Module):
    """CNN14; ``widths`` are the six blocks' channels (published: 64..2048; smaller only for tests)."""

    def __init__(self, sample_rate: int = 32000, window_size: int = 1024, hop_size: int = 320, mel_bins: int = 64,
                 fmin: float = 50, fmax: float = 14000, classes_num: int = 527,
                 widths: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)):
        super().__init__()
        self.sample_rate = sample_rate
        self.spectrogram_extractor = Spectrogram(window_size, hop_size)
        self.logmel_extractor = LogmelFilterBank(sample_rate, window_size, mel_bins, fmin, fmax)
        self.bn0 = nn.BatchNorm2d(mel_bins)
        chans = (1,) + tuple(widths)
        for i in range(6):
            setattr(self, f"conv_block{i + 1}", ConvBlock(chans[i], chans[i + 1]))
        self.fc1 = nn.Linear(widths[-1], widths[-1])
        self.fc_audioset = nn.Linear(widths[-1], classes_num)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """[B, samples] -> clip-wise probabilities [B, classes]."""
        x = self.logmel_extractor(self.spectrogram_extractor(waveform))  # [B,1,T,mels]
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)  # normalise each mel bin
        for i in range(1, 7):
            x = getattr(self, f"conv_block{i}")(x, (2, 2) if i < 6 else (1, 1))
            x = F.dropout(x, 0.2, self.training)
        x = x.mean(dim=3)  # [B,C,T]
        x = x.max(dim=2).values + x.mean(dim=2)  # [B,C]
        x = F.relu(self.fc1(F.dropout(x, 0.5, self.training)))
        return torch.sigmoid(self.fc_audioset(F.dropout(x, 0.5, self.training)))


def read_audioset_labels(path: str | Path, expected: int) -> list[str]:
    """``class_labels_indices.csv`` (index,mid,display_name) -> display names by index."""
    path = Path(path)
    if not path.is_file():
        raise LeapError("AudioSet labels file not found", path=path,
                        fix="pass AudioSet's class_labels_indices.csv (index,mid,display_name)")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"index", "display_name"} <= set(rows[0]):
        raise LeapError("not an AudioSet labels CSV", path=path,
                        fix="expected the columns index,mid,display_name (class_labels_indices.csv)")
    names = [""] * len(rows)
    for r in rows:
        names[int(r["index"])] = r["display_name"]
    if len(names) != expected:
        raise LeapError(f"{len(names)} labels for a model with {expected} outputs", path=path,
                        fix="pass the labels file that belongs to the checkpoint")
    return names


class AudioTagger:
    """A CNN14 loaded from a local checkpoint, tagging 1 s windows and mapping tags to kitchen categories."""

    def __init__(self, checkpoint: str | Path, labels: str | Path | None = None, *, threshold: float = 0.2,
                 widths: tuple[int, ...] | None = None, device: str = "cpu"):
        ckpt = load_checkpoint(checkpoint, "CNN14 audio model")
        state = unwrap_state_dict(ckpt, checkpoint, "CNN14 audio model")
        classes = state["fc_audioset.weight"].shape[0] if "fc_audioset.weight" in state else PUBLISHED["classes_num"]
        if widths is None:  # the published widths, unless the checkpoint's blocks say otherwise
            found = [state.get(f"conv_block{i}.conv1.weight") for i in range(1, 7)]
            widths = (tuple(int(w.shape[0]) for w in found) if all(w is not None for w in found)
                      else (64, 128, 256, 512, 1024, 2048))
        mel = state.get("logmel_extractor.melW")
        bins = PUBLISHED["window_size"] // 2 + 1
        if mel is not None and mel.ndim == 2 and mel.shape[0] != bins:  # (PANNs' 16 kHz and 8 kHz CNN14 releases)
            raise LeapError(f"a CNN14 of another front end (a {2 * (mel.shape[0] - 1)}-sample window: a 16 kHz or "
                            f"8 kHz release); leap's takes the 32 kHz one ({PUBLISHED['window_size']}-sample window)",
                            path=checkpoint, fix="give PANNs' 32 kHz CNN14, Cnn14_mAP=0.431.pth")
        self.model = Cnn14(classes_num=classes, widths=widths)
        load_exact(self.model, state, checkpoint, "CNN14 audio model", ignore=("num_batches_tracked",))
        self.model.eval().to(device)
        if labels is not None:
            self.labels = read_audioset_labels(labels, classes)
        elif isinstance(ckpt, dict) and isinstance(ckpt.get("labels"), list) and len(ckpt["labels"]) == classes:
            self.labels = [str(x) for x in ckpt["labels"]]
        else:
            raise LeapError("the CNN14 checkpoint carries no class names", path=checkpoint,
                            fix="pass --audio-labels class_labels_indices.csv (AudioSet's index,mid,display_name)")
        self.categories = [kitchen_category(n) for n in self.labels]
        self.sample_rate = self.model.sample_rate
        self.threshold = threshold
        self.device = device
        self.checkpoint_name = Path(checkpoint).name

    @torch.inference_mode()
    def tag(self, y: np.ndarray, window: float = 1.0, hop: float = 0.5) -> dict:
        sr = self.sample_rate
        y = np.asarray(y, dtype=np.float32)
        duration = len(y) / sr
        n = int(window * sr)
        starts = list(np.arange(0, max(duration - window, 0) + 1e-9, hop)) or [0.0]
        chunks = []
        for t0 in starts:
            c = y[int(t0 * sr):int(t0 * sr) + n]
            chunks.append(np.pad(c, (0, n - len(c))))
        probs = self.model(torch.from_numpy(np.stack(chunks)).to(self.device)).cpu().numpy()  # [W, classes]
        labels, wstarts, wstops = [], [], []
        for i, (t0, p) in enumerate(zip(starts, probs)):
            best = None
            for j in np.argsort(-p):
                if p[j] < self.threshold:
                    break
                if self.categories[j] is not None:
                    best = self.categories[j]
                    break
            labels.append(best or "background")  # no kitchen sound heard: the rules' "don't know", no event
            wstarts.append(0.0 if i == 0 else t0 + (window - hop) / 2)
            wstops.append(duration if i == len(starts) - 1 else min(t0 + (window + hop) / 2, duration))
        mean = probs.mean(axis=0)
        top = [{"label": self.labels[j], "score": round(float(mean[j]), 3)} for j in np.argsort(-mean)[:5]]
        return {"duration": round(duration, 3), "events": merge_windows(labels, wstarts, wstops), "top_tags": top}
