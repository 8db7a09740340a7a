"""The kitchen's sound track: each ground-truth sound label has its own signature.

running_water: broadband noise; chopping: periodic transients (one per knife stroke, in time with the video);
clatter: a few ringing impacts; sizzling: high-passed noise with crackles; scraping: band-passed noise swelling
with each stroke; rustling: soft low-passed bursts; speech: a voiced harmonic series in syllables; silence: room tone.

Under the events, ``render_background`` lays what a real kitchen sounds like when nothing happens (room tone at
-50..-40 dBFS, a fan, a fridge's mains hum, music, distant babble); those layers are not events.
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


def render_audio(plan: VideoPlan, sample_rate: int, rng: np.random.Generator,
                 background: np.ndarray | None = None) -> np.ndarray:
    """The whole video's sound, float32 mono in [-1, 1]: the events over ``background`` (default: a faint room
    tone, the clean kitchen's)."""
    total = int(round(plan.duration * sample_rate))
    audio = (rng.standard_normal(total) * ROOM_TONE).astype(np.float32)
    if background is not None:
        audio = background[:total].astype(np.float32).copy()
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


# --- background: what a real kitchen sounds like under the events -------------------------------------------

def _at_level(x: np.ndarray, db: float) -> np.ndarray:
    """``x`` scaled to an RMS of ``db`` dBFS."""
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) or 1.0
    return (x * (10 ** (db / 20) / rms)).astype(np.float32)


def _stretches(rng: np.random.Generator, duration: float, on: tuple[float, float], off: tuple[float, float],
               start_on: bool) -> list[tuple[float, float]]:
    """Alternating on/off stretches through ``duration`` seconds; the on ones as (start, stop)."""
    out, t, state = [], 0.0, start_on
    while t < duration:
        d = float(rng.uniform(*(on if state else off)))
        if state:
            out.append((round(t, 3), round(min(duration, t + d), 3)))
        t += d
        state = not state
    return out


def _music(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Chords from a pentatonic scale changing every half second, with a soft beat on each change."""
    out = np.zeros(n, np.float32)
    block = sr // 2
    scale = 220.0 * 2 ** (np.array([0, 2, 4, 7, 9, 12, 14, 16]) / 12)
    t = np.arange(block) / sr
    decay = np.exp(-t * 3.0)
    kick = np.sin(2 * np.pi * 60 * t) * np.exp(-t * 25)
    for i in range(0, n, block):
        notes = rng.choice(scale, size=3, replace=False)
        x = sum(np.sin(2 * np.pi * f * k * t) / k ** 1.5 for f in notes for k in (1, 2, 3)) * decay + 0.8 * kick
        m = min(block, n - i)
        out[i:i + m] = x[:m]
    return out


def _babble(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Several distant voices over each other (a radio or people talking in the next room)."""
    x = sum(_event("speech", "", n, sr, rng, 0.0) * float(rng.uniform(0.5, 1.0)) for _ in range(3))
    return _filt(x, sr, "band", [300, 3000])


def render_background(duration: float, sample_rate: int, rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """The video's background: room tone at a real level (-50..-40 dBFS) always, and, drawn per video, a fan,
    a fridge humming in cycles, music and distant babble in stretches. Returns the samples and the layers
    (``{"label", "start", "stop", "level_db"}``, absolute seconds) for the ground truth."""
    n = int(round(duration * sample_rate))
    sr = sample_rate
    layers: list[dict] = []
    room_db = float(rng.uniform(-50, -40))
    audio = _at_level(_filt(rng.standard_normal(n), sr, "low", 2000), room_db)
    layers.append({"label": "room_tone", "start": 0.0, "stop": round(duration, 3), "level_db": round(room_db, 1)})
    t = np.arange(n) / sr
    if rng.random() < 0.5:  # extractor fan: steady broadband noise with a blade tone
        db = float(rng.uniform(-40, -32))
        blade = float(rng.uniform(90, 160))
        x = _filt(rng.standard_normal(n), sr, "low", 1500) + 0.3 * np.sin(2 * np.pi * blade * t)
        audio += _at_level(x * (1 + 0.1 * np.sin(2 * np.pi * 0.2 * t)), db)
        layers.append({"label": "fan", "start": 0.0, "stop": round(duration, 3), "level_db": round(db, 1)})
    kinds = [("fridge", 0.5, (15, 40), (10, 30), (-44, -36)), ("music", 0.5, (8, 25), (10, 40), (-36, -28)),
             ("babble", 0.35, (5, 15), (15, 45), (-40, -32))]
    for label, p, on, off, level in kinds:
        if rng.random() >= p:
            continue
        db = float(rng.uniform(*level))
        mains = 50.0 if rng.random() < 0.5 else 60.0
        for a, b in _stretches(rng, duration, on, off, start_on=bool(rng.random() < 0.5)):
            i0, i1 = int(a * sr), min(n, int(b * sr))
            if i1 - i0 < sr // 10:
                continue
            m = i1 - i0
            if label == "fridge":
                tt = t[i0:i1]
                x = sum(np.sin(2 * np.pi * mains * k * tt) / k for k in range(1, 6)) \
                    + 0.3 * _filt(rng.standard_normal(m), sr, "low", 400)
            elif label == "music":
                x = _music(rng, m, sr)
            else:
                x = _babble(rng, m, sr)
            x = _at_level(x, db)
            fade = min(m // 4, int(0.3 * sr))
            ramp = np.linspace(0, 1, fade, dtype=np.float32)
            x[:fade] *= ramp
            x[m - fade:] *= ramp[::-1]
            audio[i0:i1] += x
            layers.append({"label": label, "start": a, "stop": round(i1 / sr, 3), "level_db": round(db, 1)})
    return audio.astype(np.float32), layers
