"""The kitchen's sound track: each ground-truth sound label has its own signature.

running_water: broadband noise; chopping: periodic transients (one per knife stroke, in time with the video);
clatter: a few ringing impacts; sizzling: high-passed noise with crackles; scraping: band-passed noise swelling
with each stroke; rustling: soft low-passed bursts; speech: a voiced harmonic series in syllables; silence: room tone.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import butter, lfilter

from leap_cli.synth.plan import VideoPlan

ROOM_TONE = 0.002
# Stroke rates (Hz) that match the motion drawn by render.py.
CHOP_HZ = 3.0
STROKE_HZ = {"mix": 3.0, "peel": 2.0, "scrape": 3.0}


def _filt(x: np.ndarray, sr: int, kind: str, freq) -> np.ndarray:
    b, a = butter(2, np.asarray(freq) / (sr / 2), btype=kind)
    return lfilter(b, a, x).astype(np.float32)


def _impact(rng: np.random.Generator, sr: int, length: float, freq: float) -> np.ndarray:
    n = int(length * sr)
    t = np.arange(n) / sr
    ring = sum(np.sin(2 * np.pi * freq * k * t + rng.uniform(0, 6)) / k for k in (1, 2.7, 4.1))
    burst = rng.standard_normal(n) * np.exp(-t * 120)
    return ((0.6 * ring * np.exp(-t * 30) + burst) * 0.5).astype(np.float32)


def _event(label: str, verb: str, n: int, sr: int, rng: np.random.Generator, t_in_seg: float) -> np.ndarray:
    """``n`` samples of ``label`` (for a segment of ``verb``); ``t_in_seg``: event start from segment start."""
    t = np.arange(n) / sr
    if label == "running_water":
        x = rng.standard_normal(n).astype(np.float32)
        if verb == "pour":
            x = _filt(x, sr, "low", 2500) * 1.6
        wobble = 1 + 0.2 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
        return (0.22 * x * wobble).astype(np.float32)
    if label == "chopping":
        out = np.zeros(n, np.float32)
        first = (np.ceil(t_in_seg * CHOP_HZ) / CHOP_HZ) - t_in_seg  # knife hits the board at k / CHOP_HZ
        for k in np.arange(first, n / sr, 1 / CHOP_HZ):
            i = int(k * sr)
            hit = _impact(rng, sr, 0.08, 180.0) * 1.4
            out[i:i + len(hit)] += hit[:max(0, n - i)]
        return out
    if label == "clatter":
        out = np.zeros(n, np.float32)
        for _ in range(int(rng.integers(2, 5))):
            i = int(rng.uniform(0, 0.6) * n)
            hit = _impact(rng, sr, 0.12, float(rng.uniform(900, 2800)))
            out[i:i + len(hit)] += hit[:max(0, n - i)]
        return out
    if label == "sizzling":
        x = _filt(rng.standard_normal(n), sr, "high", 3000) * 0.12
        clicks = (rng.random(n) < 40 / sr) * rng.uniform(0.2, 0.5, n)
        return (x + clicks).astype(np.float32)
    if label == "scraping":
        x = _filt(rng.standard_normal(n), sr, "band", [900, 2200])
        rate = STROKE_HZ.get(verb, 2.5)
        env = 0.5 + 0.5 * np.sin(2 * np.pi * rate * (t + t_in_seg)) ** 2
        return (0.35 * x * env).astype(np.float32)
    if label == "rustling":
        x = _filt(rng.standard_normal(n), sr, "band", [300, 5000])
        env = np.abs(_filt(rng.standard_normal(n), sr, "low", 6)) * 8
        return (0.12 * x * np.clip(env, 0, 1.5)).astype(np.float32)
    if label == "speech":
        f0 = float(rng.uniform(110, 210)) * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))
        phase = 2 * np.pi * np.cumsum(f0) / sr
        voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
        syll = np.clip(np.sin(2 * np.pi * 4.0 * t), 0, 1)
        return (0.12 * voiced * syll).astype(np.float32)
    return np.zeros(n, np.float32)  # silence


def render_audio(plan: VideoPlan, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """The whole video's sound, float32 mono in [-1, 1]."""
    total = int(round(plan.duration * sample_rate))
    audio = (rng.standard_normal(total) * ROOM_TONE).astype(np.float32)
    events = [(ev, seg.verb, seg.start) for seg in plan.segments for ev in seg.sound]
    events += [(ev, "", ev.start) for ev in plan.speech]
    for ev, verb, seg_start in events:
        a, b = int(ev.start * sample_rate), min(total, int(ev.stop * sample_rate))
        if b <= a:
            continue
        x = _event(ev.label, verb, b - a, sample_rate, rng, ev.start - seg_start)
        fade = min(len(x) // 4, int(0.01 * sample_rate))
        if fade > 0:
            ramp = np.linspace(0, 1, fade, dtype=np.float32)
            x[:fade] *= ramp
            x[-fade:] *= ramp[::-1]
        audio[a:b] += x
    return np.clip(audio, -1.0, 1.0)
