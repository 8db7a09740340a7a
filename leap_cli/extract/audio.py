"""Audio component: loudness over time, onsets, and kitchen sound events with times relative to the segment.

Default: a signal-processing classifier (numpy, no weights). The segment's audio (16 kHz mono) is cut into
0.5 s windows every 0.25 s; each window gets spectral and temporal features (level, spectral centroid and
flatness, band shares, envelope crest and variability, onset rate and its regularity, pitch periodicity, 3-8 Hz
modulation) and a category by documented rules:

    silence   level under ``silence_db`` (default -45 dBFS)
    background  (after speech) a few steady spectral lines (peak > 45 dB over the median bin, level crest
              < 10 dB): mains hum, music, beeps; no kitchen sound of ours is a steady tone
    speech    periodic (voiced pitch 80-400 Hz), low centroid, syllable-rate (3-8 Hz) level modulation and
              loud stretches of 60 ms or more (syllables, not knocks)
    chopping  impulsive onsets at a regular rate (1.5-8 per second; onset-strength autocorrelation)
    clatter   irregular impulsive onsets that ring (tonal peaks) or thud (low frequencies)
    sizzling  steady noise dominated by high frequencies (> 4 kHz) with crackle
    running_water  steady broadband noise (flat spectrum, low level variation)
    scraping  band-limited mid-frequency noise, or noise swelling with each stroke (3-8 Hz)
    rustling  irregular noise bursts (noisy, not tonal)

    background  also where the rules' answer is not trusted (abstains; see below)

**It can say "don't know".** Real kitchens have fans, fridges, radios and talk; the rules alone call a fan
running water and music rustling. So each window the rules give a category also gets a confidence: how
unlike the background its features are (squared z-scores under a diagonal Gaussian of background windows:
room tone, fans, fridge hum, music, distant babble). Below its category's calibrated threshold the window is
``background`` (no kitchen sound recognised). Only the background is modelled, so sounds the rules know but
the kitchen never made still get through. The model and the thresholds are in ``leap_cli/resources/audio_dsp_calibration.json``, written by
``benchmarks/calibrate_audio.py`` from the honest synthetic kitchen's *training* videos only (validation
figures are reported, not tuned on). Without that file the rules are not gated.

These rules are a fallback that needs no weights, fitted to a synthetic kitchen; the real classifier is PANNs
CNN14 (``--audio-model PATH``, see ``audio_cnn14.py``).

Consecutive windows with the same category form events (``start``/``stop`` in seconds from the segment
start).
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from importlib import resources

import numpy as np

from leap_cli.extract.base import Component, SegmentContext, result, unavailable
from leap_cli.media.dsp import find_peaks, hann_stft

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
CATEGORIES = ("clatter", "running_water", "sizzling", "chopping", "scraping", "rustling", "speech", "silence",
              "background")
NOT_EVENTS = ("silence", "background")  # what the classifier says when it hears no kitchen sound
TONAL_DB = 45.0  # spectral lines this far above the median bin, without impacts: hum or music
WORDS = {"clatter": "clatter/impact", "running_water": "running water", "sizzling": "sizzling",
         "chopping": "rhythmic chopping", "scraping": "scraping", "rustling": "rustling", "speech": "speech",
         "silence": "silence", "background": "background only"}
CALIBRATION = "audio_dsp_calibration.json"


@lru_cache(maxsize=1)
def calibration() -> dict | None:
    """The gate's models and threshold (``benchmarks/calibrate_audio.py``), or None if not calibrated."""
    f = resources.files("leap_cli.resources").joinpath(CALIBRATION)
    if not f.is_file():
        return None
    return json.loads(f.read_text(encoding="utf-8"))


def gate_vector(ft: dict, names: list[str]) -> np.ndarray:
    """The features the gate models, in ``names`` order (the centroid on a log scale)."""
    return np.array([np.log2(max(ft[k], 1.0)) if k == "centroid" else float(ft[k]) for k in names])


def confidence(ft: dict, cal: dict) -> float:
    """How unlike the background a window is: half the sum of squared z-scores of its features under the
    background model (each capped at 100, so one wild feature cannot decide alone)."""
    x = gate_vector(ft, cal["features"])
    m = cal["background"]
    z = (x - np.asarray(m["mean"])) / np.asarray(m["std"])
    return float(0.5 * np.sum(np.minimum(z * z, 100.0)))


def _db(x: np.ndarray) -> np.ndarray:
    return 10 * np.log10(np.maximum(x, 1e-12))


class Spectral:
    """STFT-based frame features of one signal (10 ms hop, 32 ms window)."""

    def __init__(self, y: np.ndarray, sr: int = SAMPLE_RATE):
        self.sr = sr
        self.hop = sr // 100
        n = 2 * (sr // 62)  # ~32 ms
        self.y = y
        f, z = hann_stft(y, sr, n, self.hop)
        self.freqs = f
        self.power = (np.abs(z) ** 2).astype(np.float64)  # [F, T]
        frames = self.power.shape[1]
        self.times = np.arange(frames) * self.hop / sr + n / 2 / sr
        # the STFT divides by sum(window); for a Hann window the one-sided bins sum to ~3/4 of the mean square
        self.rms_db = _db(self.power.sum(axis=0) * 4 / 3)  # dB re full scale (RMS)
        logp = np.log(self.power + 1e-12)
        flux = np.maximum(np.diff(logp, axis=1), 0).mean(axis=0)
        self.flux = np.concatenate([[0.0], flux])

    def onsets(self, min_gap: float = 0.06) -> np.ndarray:
        """Onset times (s): peaks of the log-spectral flux above a median + MAD threshold, on audible frames."""
        if self.flux.size < 3:
            return np.zeros(0)
        med = np.median(self.flux)
        mad = np.median(np.abs(self.flux - med)) + 1e-9
        audible = self.rms_db > -50
        peaks = find_peaks(self.flux, height=max(med + 6 * mad, 0.6), distance=max(1, int(min_gap * 100)))
        peaks = peaks[audible[peaks]]
        return self.times[peaks]


def _periodicity(y: np.ndarray, sr: int) -> float:
    """Mean normalised autocorrelation peak at pitch lags (80-400 Hz) over the loud 40 ms frames (within 15 dB of
    the loudest): ~1 voiced, ~0 noise."""
    n = int(0.04 * sr)
    lo, hi = sr // 400, sr // 80
    frames = [y[i:i + n] - y[i:i + n].mean() for i in range(0, len(y) - n, n)]
    energies = [float((fr ** 2).sum()) for fr in frames]
    floor = max(energies, default=0.0) * 10 ** (-15 / 10)
    vals = []
    for fr, e in zip(frames, energies):
        if e < 1e-8 or e < floor:
            continue
        spec = np.fft.rfft(fr, 2 * n)
        ac = np.fft.irfft(np.abs(spec) ** 2)[:n]
        ac /= ac[0] + 1e-12
        vals.append(float(ac[lo:hi].max()))
    return float(np.mean(vals)) if vals else 0.0


def window_features(sp: Spectral, i0: int, i1: int, onset_times: np.ndarray, t0: float, t1: float,
                    context: float = 2.0) -> dict:
    """Features of frames [i0, i1) (window [t0, t1) s); onset rate and regularity over a ``context`` s span."""
    p = sp.power[:, i0:i1]
    mean_spec = p.mean(axis=1) + 1e-12
    f = sp.freqs
    level = float(_db(np.mean(10 ** (sp.rms_db[i0:i1] / 10))))
    centroid = float((f * mean_spec).sum() / mean_spec.sum())
    band = lambda a, b: float(mean_spec[(f >= a) & (f < b)].sum() / mean_spec.sum())  # noqa: E731
    # flatness over 200 Hz-7 kHz, where kitchen noises live; on all frames and on the loud ones (the events)
    m = (f >= 200) & (f < 7000)
    flat_frames = np.exp(np.log(p[m] + 1e-12).mean(axis=0)) / (p[m].mean(axis=0) + 1e-12)
    env = sp.rms_db[i0:i1]
    loud_sel = env > env.max() - 10 if env.size else np.zeros(0, bool)
    loud = env[env > env.max() - 30] if env.size else env
    mid = (t0 + t1) / 2
    c0, c1 = max(0.0, mid - context / 2), min(sp.times[-1] + 0.01, mid + context / 2)
    ons = onset_times[(onset_times >= c0) & (onset_times < c1)]
    ioi = np.diff(ons)
    regular = float(np.std(ioi) / (np.mean(ioi) + 1e-9)) if ioi.size >= 2 else 1.0
    # rhythm: autocorrelation of the onset-strength envelope at stroke periods (0.12-0.7 s) over the context
    fl = sp.flux[(sp.times >= c0) & (sp.times < c1)]
    rhythm = 0.0
    if fl.size > 80:
        fl = fl - fl.mean()
        ac = np.correlate(fl, fl, "full")[fl.size - 1:]
        ac = ac / (ac[0] + 1e-12) * fl.size / (fl.size - np.arange(fl.size))  # unbiased
        rhythm = float(ac[12:min(70, fl.size // 2)].max()) if fl.size // 2 > 12 else 0.0
    # how long the loud stretches last (ms): syllables ~100 ms and more, knocks a few tens
    runs, cur = [], 0
    for flag in loud_sel:
        if flag:
            cur += 1
        elif cur:
            runs.append(cur)
            cur = 0
    if cur:
        runs.append(cur)
    burst_ms = 10.0 * float(np.mean(runs)) if runs else 0.0
    # tonality of the loud frames: ringing partials stand far above the median bin
    band_spec = p[:, loud_sel].mean(axis=1)[m] if loud_sel.any() else mean_spec[m]
    tonal = float(_db(band_spec.max() / (np.median(band_spec) + 1e-12)))
    # 3-8 Hz modulation of the level: syllables (speech), strokes (scraping)
    lin = 10 ** (env / 20)
    if lin.size > 8:
        spec = np.abs(np.fft.rfft(lin - lin.mean())) ** 2
        mf = np.fft.rfftfreq(lin.size, 0.01)
        mod_syll = float(spec[(mf >= 3) & (mf <= 8)].sum() / (spec[mf > 0.5].sum() + 1e-12))
    else:
        mod_syll = 0.0
    y = sp.y[int(t0 * sp.sr):int(t1 * sp.sr)]
    return {"level_db": level, "centroid": centroid, "flatness": float(np.median(flat_frames)),
            "flatness_loud": float(np.median(flat_frames[loud_sel])) if loud_sel.any() else 0.0,
            "low": band(0, 500), "mid": band(500, 2500), "high": band(2500, 5000), "top": band(5000, sp.sr / 2),
            "crest_db": float(env.max() - np.median(env)) if env.size else 0.0,
            "level_std": float(np.std(loud)) if loud.size else 0.0,
            "onset_rate": len(ons) / max(c1 - c0, 1e-3),
            "onsets_in_window": int(((onset_times >= t0) & (onset_times < t1)).sum()),
            "onset_irregularity": regular, "rhythm": rhythm,
            "tonal_db": tonal, "burst_ms": burst_ms,
            "periodicity": _periodicity(y, sp.sr), "mod_syllable": mod_syll}


def classify(ft: dict, silence_db: float = -45.0) -> str:
    """The kitchen category of one window's features (rules in the module docstring)."""
    if ft["level_db"] < silence_db:
        return "silence"
    if ft["periodicity"] > 0.35 and ft["centroid"] < 1500 and ft["level_std"] > 3 and ft["mod_syllable"] > 0.5 \
            and ft["burst_ms"] >= 60:
        return "speech"
    if ft["tonal_db"] > TONAL_DB and ft["crest_db"] < 10:
        return "background"  # a few steady spectral lines: mains hum, music, beeps; no kitchen sound of ours
    if ft["crest_db"] > 12 and (ft["onsets_in_window"] >= 1 or ft["onset_rate"] >= 1):  # impulsive
        if 1.5 <= ft["onset_rate"] <= 8 and (ft["rhythm"] > 0.45 or ft["onset_irregularity"] < 0.25):
            return "chopping"
        if ft["tonal_db"] > 15 or ft["low"] > 0.5:
            return "clatter"  # knocks and rings
        return "rustling"  # the bursts themselves are noise
    if ft["level_std"] < 4:  # steady noise
        if ft["top"] > 0.5 and ft["centroid"] > 4500:
            return "sizzling"
        if ft["mod_syllable"] > 0.5 and ft["level_std"] > 1.2:
            return "scraping"  # swells with each stroke
        if ft["flatness"] > 0.25 or (ft["level_std"] < 1.5 and ft["flatness"] > 0.1):
            return "running_water"
    if ft["mid"] > 0.5 and ft["flatness"] < 0.35:
        return "scraping"
    if ft["level_std"] >= 4:
        return "rustling"
    return "running_water" if ft["flatness"] > 0.2 else "scraping"


def merge_windows(labels: list[str], starts: list[float], stops: list[float]) -> list[dict]:
    """Runs of equal labels -> events; one-window blips between two equal runs are absorbed."""
    labels = list(labels)
    for i in range(1, len(labels) - 1):
        if labels[i - 1] == labels[i + 1] != labels[i]:
            labels[i] = labels[i - 1]
    events: list[dict] = []
    for lab, a, b in zip(labels, starts, stops):
        if events and events[-1]["label"] == lab and a <= events[-1]["stop"] + 1e-6:
            events[-1]["stop"] = b
        else:
            events.append({"label": lab, "start": a, "stop": b})
    for e in events:
        e["start"], e["stop"] = round(e["start"], 2), round(e["stop"], 2)
    return events


def analyse_windows(y: np.ndarray, sr: int = SAMPLE_RATE, *, window: float = 0.5, hop: float = 0.25,
                    silence_db: float = -45.0) -> dict:
    """Loudness (per 0.25 s), onsets, and every analysis window's rules' label (ungated), features and the
    part of the segment it speaks for (its central part, so windows tile the segment without overlaps)."""
    y = np.asarray(y, dtype=np.float64)
    if y.ndim > 1:
        y = y.mean(axis=-1)
    duration = len(y) / sr
    out = {"duration": round(duration, 3), "loudness_db": [], "onsets": [], "window_labels": [],
           "window_features": [], "window_spans": []}
    if duration < 0.1:
        return out
    sp = Spectral(y, sr)
    ons = sp.onsets()
    loud = []
    for t in np.arange(0, duration, 0.25):
        sel = (sp.times >= t) & (sp.times < t + 0.25)
        loud.append(round(float(_db(np.mean(10 ** (sp.rms_db[sel] / 10)))) if sel.any() else -120.0, 1))
    starts = list(np.arange(0, max(duration - window, 0) + 1e-9, hop)) or [0.0]
    for t0 in starts:
        t1 = min(t0 + window, duration)
        sel = np.nonzero((sp.times >= t0) & (sp.times < t1))[0]
        if sel.size < 3:
            continue
        ft = window_features(sp, sel[0], sel[-1] + 1, ons, t0, t1)
        out["window_labels"].append(classify(ft, silence_db))
        out["window_spans"].append((0.0 if t0 == starts[0] else t0 + (window - hop) / 2,
                                    duration if t0 == starts[-1] else t0 + (window + hop) / 2))
        out["window_features"].append({k: round(v, 3) for k, v in ft.items()})
    out["loudness_db"] = loud
    out["onsets"] = [round(float(t), 2) for t in ons]
    return out


def category_thresholds(cal: dict) -> dict[str, float]:
    """The gate's threshold for each event category (a category without its own uses ``threshold``)."""
    own = cal.get("thresholds", {})
    return {lab: own.get(lab, cal["threshold"]) for lab in CATEGORIES if lab not in NOT_EVENTS}


def gated_labels(labels: list[str], features: list[dict], cal: dict | None,
                 thresholds: dict[str, float] | None = None) -> list[str]:
    """Each window's label, ``background`` where an event's confidence is under its category's threshold
    (``thresholds``, else the calibration's)."""
    if cal is None:
        return list(labels)
    thr = category_thresholds(cal) if thresholds is None else thresholds
    return ["background" if lab not in NOT_EVENTS and confidence(ft, cal) < thr.get(lab, 0.0) else lab
            for lab, ft in zip(labels, features)]


def analyse(y: np.ndarray, sr: int = SAMPLE_RATE, *, window: float = 0.5, hop: float = 0.25,
            silence_db: float = -45.0, gate: bool = True) -> dict:
    """Loudness (per 0.25 s), onsets and sound events of one mono signal. ``gate``: abstain (``background``)
    on windows whose confidence is under the calibrated threshold (when a calibration is installed)."""
    out = analyse_windows(y, sr, window=window, hop=hop, silence_db=silence_db)
    spans = out.pop("window_spans")
    labels = gated_labels(out["window_labels"], out["window_features"], calibration() if gate else None)
    return {"duration": out["duration"], "loudness_db": out["loudness_db"], "onsets": out["onsets"],
            "events": merge_windows(labels, [a for a, _ in spans], [b for _, b in spans]),
            "window_labels": labels, "window_features": out["window_features"]}


def dominant_sound(events: list[dict]) -> str | None:
    """The kitchen sound covering most time (background or silence if none)."""
    cover: dict[str, float] = {}
    for e in events:
        cover[e["label"]] = cover.get(e["label"], 0.0) + e["stop"] - e["start"]
    loud = {k: v for k, v in cover.items() if k not in NOT_EVENTS}
    pool = loud or cover
    return max(pool, key=pool.get) if pool else None


def events_text(events: list[dict], loudness: list[float], onsets: list[float]) -> str:
    if not events:
        return "no audio in the segment"
    parts = [f"{WORDS.get(e['label'], e['label'])} {e['start']:.1f}-{e['stop']:.1f} s" for e in events]
    peak = max(loudness) if loudness else None
    extra = f" (peak {peak:.0f} dBFS, {len(onsets)} onsets)" if peak is not None else ""
    return ", ".join(parts) + extra


def sound_timeline(events: list[dict]) -> list[dict]:
    """The clip text's timeline events of the kitchen sounds heard (silence and background are none)."""
    return [{"start": e["start"], "stop": e["stop"], "text": f"sound: {WORDS.get(e['label'], e['label'])}"}
            for e in events if e["label"] not in NOT_EVENTS]


class AudioComponent(Component):
    name = "audio"

    def __init__(self, model=None, silence_db: float = -45.0):
        self.model = model  # an audio_cnn14.AudioTagger, or None for the signal-processing rules
        self.silence_db = silence_db

    def describe(self, ctx: SegmentContext) -> dict:
        from leap_cli.media.audio import AudioUnavailable

        if ctx.read_audio is None:
            return unavailable("none", "no audio reader")
        sr = self.model.sample_rate if self.model is not None else SAMPLE_RATE
        try:
            y = ctx.read_audio(sr)
        except AudioUnavailable as e:  # (a file at fault: --retry-errors redoes it once the file is replaced)
            return unavailable("none", e.message, cause=e.cause, detail=e.one_line() if e.cause else None)
        if self.model is not None:
            data = self.model.tag(y)
            base = analyse(y, sr, silence_db=self.silence_db)
            data.update({"loudness_db": base["loudness_db"], "onsets": base["onsets"]})
            source = f"cnn14:{self.model.checkpoint_name}"
        else:
            data = analyse(y, sr, silence_db=self.silence_db)
            data.pop("window_features", None)  # kept out of the record: large, and only for tuning the rules
            source = "dsp-rules"
            cal = calibration()
            data["abstains_below"] = category_thresholds(cal) if cal is not None else None
        data["dominant"] = dominant_sound(data["events"])
        data["timeline"] = sound_timeline(data["events"])
        return result("ok", source, data, events_text(data["events"], data["loudness_db"], data["onsets"]))

    def close(self) -> None:
        self.model = None
