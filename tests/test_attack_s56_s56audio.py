"""Attack on the audio path in numpy (commit e336e5d, leap_cli/media/dsp.py): the same analysis, the same samples
and the same dtype rules as the scipy.signal code before it, for what EPIC-KITCHENS users have (the MP4's AAC track
at 48 kHz stereo, WAV/FLAC files at 8-96 kHz, mono and stereo, int16/int24/float, windows at the file's ends, a few
samples long, silence, DC, clipping, NaN/Inf), its memory on a 10-minute segment, and a `leap extract` whose main
process and workers never import scipy.signal.

The code before the change is loaded from git (``e336e5d^``) under other module names; without the history those
comparisons are skipped."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tracemalloc
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from leap_cli.extract import audio as new_extract
from leap_cli.media import audio as new_media
from leap_cli.media import dsp
from tests.extract_signals import SR, sound

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "e336e5d^"  # the last commit with scipy.signal in the audio path
RATES = [48000, 44100, 32000, 24000, 22050, 16000, 11025, 8000, 96000, 7999]


def _load_before(relpath: str, name: str, folder: Path):
    try:
        done = subprocess.run(["git", "-C", str(ROOT), "show", f"{BEFORE}:{relpath}"], capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"git is not available ({e})")
    if done.returncode != 0:
        pytest.skip(f"the code before the change is not in this checkout's history ({done.stderr.strip()[:80]})")
    assert "scipy.signal" in done.stdout, f"{relpath} at {BEFORE} is not the scipy version"
    path = folder / f"{name}.py"
    path.write_text(done.stdout)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def before(tmp_path_factory):
    """(extract.audio, media.audio) as they were with scipy.signal."""
    folder = tmp_path_factory.mktemp("before")
    return (_load_before("leap_cli/extract/audio.py", "s56_before_extract_audio", folder),
            _load_before("leap_cli/media/audio.py", "s56_before_media_audio", folder))


def _same_json(a, b) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _signals() -> dict[str, tuple[np.ndarray, int]]:
    rng = np.random.default_rng(56)
    out = {k: (sound(k, 2.5, rng), SR) for k in
           ("chopping", "clatter", "speech", "sizzling", "running_water", "scraping", "rustling", "silence")}
    n = 2 * SR
    out["zeros"] = (np.zeros(n), SR)
    out["dc_offset"] = (0.4 + 1e-3 * rng.standard_normal(n), SR)
    out["clipped"] = (np.clip(5 * rng.standard_normal(n), -1, 1), SR)
    out["full_scale_square"] = (np.sign(np.sin(2 * np.pi * 50 * np.arange(n) / SR)), SR)
    out["clicks"] = (np.where(np.arange(n) % 1600 == 0, 1.0, 0.0), SR)
    out["steps"] = (np.repeat(rng.standard_normal(n // 160), 160), SR)  # flat flux runs: plateaus for find_peaks
    out["float32_noise"] = ((0.1 * rng.standard_normal(n)).astype(np.float32), SR)
    out["exactly_0.1_s"] = (rng.standard_normal(1600), SR)
    out["0.1_s_and_one"] = (rng.standard_normal(1601), SR)
    out["under_0.1_s"] = (rng.standard_normal(1599), SR)
    out["0.5_s"] = (sound("chopping", 0.5, rng), SR)
    y = rng.standard_normal(n)
    y[[5000, 20000]] = [np.nan, np.inf]
    out["nan_and_inf"] = (y, SR)
    out["stereo_2d"] = (np.stack([sound("speech", 1.0, rng), sound("chopping", 1.0, rng)], axis=1), SR)
    out["cnn14_rate_32k"] = (new_media.resample(sound("clatter", 2.0, rng), SR, 32000), 32000)
    out["8k"] = (new_media.resample(sound("chopping", 2.0, rng), SR, 8000), 8000)
    return out


def test_analyse_gives_the_same_dict_as_the_scipy_code_on_the_same_samples(before):
    """Events, onsets, loudness, window labels and features: exactly those of the code before (scipy's stft and
    find_peaks), for kitchen sounds, silence, DC, clipping, plateaus, 0.1 s edges, NaN/Inf, 2-D input, 8/32 kHz."""
    old_extract, _ = before
    for name, (y, sr) in _signals().items():
        with np.errstate(all="ignore"):
            want = old_extract.analyse(y, sr)
            got = new_extract.analyse(y, sr)
        assert _same_json(got, want), (name, {k for k in want if not _same_json(got[k], want[k])})


def test_spectral_onsets_and_power_equal_scipys_on_the_inputs_analyse_uses():
    """The two calls extract.audio made, on Spectral's own inputs: the STFT (power within 1e-12 relative) and the
    onset peaks (identical) of 16 kHz kitchen sounds."""
    import scipy.signal as ss

    rng = np.random.default_rng(7)
    for kind in ("chopping", "clatter", "rustling", "speech"):
        y = np.asarray(sound(kind, 3.0, rng), dtype=np.float64)
        sp = new_extract.Spectral(y, SR)
        n = 2 * (SR // 62)
        f, _, z = ss.stft(y, fs=SR, nperseg=n, noverlap=n - sp.hop, boundary=None, padded=False)
        assert np.array_equal(f, sp.freqs)
        power = np.abs(z) ** 2
        assert power.shape == sp.power.shape
        assert np.max(np.abs(power - sp.power)) <= 1e-12 * power.max()
        med = np.median(sp.flux)
        mad = np.median(np.abs(sp.flux - med)) + 1e-9
        for gap in (1, 6, 25):
            want = ss.find_peaks(sp.flux, height=max(med + 6 * mad, 0.6), distance=gap)[0]
            got = dsp.find_peaks(sp.flux, max(med + 6 * mad, 0.6), gap)
            assert np.array_equal(got, want), (kind, gap)
        assert sp.onsets().size > 0 or kind == "speech"


def _window_cases(native: int, frames: int) -> list[tuple[float, float]]:
    dur = frames / native
    return [(0.0, dur), (0.0, 0.1), (0.35, 0.6), (dur - 0.3, dur), (1.0, 1.0 + 1 / native),
            (1.0, 1.0 + 2 / native), (1.0, 1.0 + 0.4 / native), (0.0, 0.5)]


def _compare_reads(read_old, read_new, old_extract, path, native, frames, label):
    for a, b in _window_cases(native, frames):
        want = read_old(path, a, b)
        got = read_new(path, a, b)
        where = (label, native, round(a, 6), round(b, 6))
        assert got.dtype == want.dtype == np.float32 and got.shape == want.shape, (where, got.shape, want.shape)
        if want.size:
            scale = max(1.0, float(np.max(np.abs(want))))
            assert np.max(np.abs(got.astype(np.float64) - want)) <= 1e-6 * scale, where
        if b - a >= 0.5:
            old, new = old_extract.analyse(want), new_extract.analyse(got)
            for key in ("events", "onsets", "loudness_db", "window_labels", "duration"):
                assert _same_json(new[key], old[key]), (where, key)
            # (features are rounded to 3 decimals; a float32 rounding of a sample may move one across a rounding
            # boundary: tonal_db, a max over a -80 dB median bin, does)
            for fo, fn in zip(old["window_features"], new["window_features"]):
                for k, v in fo.items():
                    assert abs(fn[k] - v) <= 2e-3 * max(1.0, abs(v)), (where, k, v, fn[k])


@pytest.mark.parametrize("native", RATES)
def test_read_audio_gives_the_samples_of_the_scipy_code(before, native, tmp_path):
    """WAV/FLAC at every rate, mono int16, stereo int24 and mono float: the windows at both ends, 0.1-0.5 s and
    0-2 samples long give the samples the code before gave (within float32 rounding) and the same analysis."""
    old_extract, old_media = before
    rng = np.random.default_rng(native)
    base = np.concatenate([sound(k, 0.7, rng) for k in ("chopping", "speech", "running_water")])  # 2.1 s
    y = new_media.resample(base, SR, native)
    files = [("mono_int16.wav", y, "PCM_16"), ("mono_float.wav", y * 1.5, "FLOAT"),  # (float: over full scale)
             ("stereo_int24.flac" if native <= 655350 else "stereo_int24.wav", np.stack([y, 0.5 * y + 0.05], 1),
              "PCM_24")]
    for name, data, subtype in files:
        path = tmp_path / name
        sf.write(path, np.clip(data, -1, 1) if subtype != "FLOAT" else data, native, subtype=subtype)
        _compare_reads(old_media.read_audio, new_media.read_audio, old_extract, path, native, y.shape[0], name)


def _write_aac(path: Path, y: np.ndarray, rate: int, layout: str) -> None:
    """An MP4 with only an AAC track (EPIC's own: 48 kHz stereo)."""
    import av

    channels = np.stack([y, 0.6 * y], 0) if layout == "stereo" else y[None]
    channels = np.ascontiguousarray(np.clip(channels, -1, 1), dtype=np.float32)
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=rate)
        s.layout = layout
        s.bit_rate = 128_000
        for i in range(0, channels.shape[1], 1024):
            f = av.AudioFrame.from_ndarray(np.ascontiguousarray(channels[:, i:i + 1024]), format="fltp",
                                           layout=layout)
            f.sample_rate, f.pts, f.time_base = rate, i, Fraction(1, rate)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.mark.parametrize("rate,layout", [(48000, "stereo"), (44100, "mono"), (22050, "stereo")])
def test_read_video_audio_gives_the_samples_of_the_scipy_code(before, rate, layout, tmp_path):
    old_extract, old_media = before
    rng = np.random.default_rng(rate)
    base = np.concatenate([sound(k, 0.8, rng) for k in ("chopping", "sizzling", "speech")])
    y = new_media.resample(base, SR, rate)
    path = tmp_path / "P01_01.MP4"
    _write_aac(path, y, rate, layout)
    _compare_reads(old_media.read_video_audio, new_media.read_video_audio, old_extract, path, rate, y.shape[0],
                   f"aac-{layout}")


def test_a_float_wav_with_nan_and_inf_reads_them_as_silence_and_says_so(before, tmp_path, caplog):
    """Was wrong: a NaN or Inf sample spread over the resampling filter's reach (~21 samples), emptied the
    segment's onsets and put NaN into its loudness, which the JSONL record then held (not JSON). Now such a sample
    reads as silence: the samples are the old code's on the same file with a 0 there, and a warning names the file
    and the record."""
    import logging

    old_extract, old_media = before
    rng = np.random.default_rng(3)
    for native in (48000, 44100, 24000):
        for bad in (np.nan, np.inf, -np.inf):
            y = (0.1 * rng.standard_normal(2 * native)).astype(np.float32)
            at = int(rng.integers(native // 4, native))
            clean = y.copy()
            clean[at] = 0.0
            y[at] = bad
            path, clean_path = tmp_path / f"bad_{native}.wav", tmp_path / f"clean_{native}.wav"
            sf.write(path, y, native, subtype="FLOAT")
            sf.write(clean_path, clean, native, subtype="FLOAT")
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="leap_cli.media.audio"):
                got = new_media.read_audio(path, 0, 2.0, record="P01_01_7")
            assert np.isfinite(got).all(), (native, bad)
            want = old_media.read_audio(clean_path, 0, 2.0)
            assert got.shape == want.shape and np.max(np.abs(got.astype(np.float64) - want)) <= 1e-6
            said = " ".join(r.getMessage() for r in caplog.records)
            assert str(path) in said and "P01_01_7" in said and "1 audio sample is not a number" in said, said
            out = new_extract.analyse(got)
            json.dumps(out, allow_nan=False)  # (a record with NaN in it is not JSON)
            assert _same_json(out, old_extract.analyse(want)), (native, bad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.int32, np.uint8, bool])
def test_resample_poly_dtype_and_shape_follow_scipys(dtype):
    import scipy.signal as ss

    rng = np.random.default_rng(0)
    x = (rng.standard_normal(301) * 100).astype(dtype)
    for up, down in [(1, 3), (160, 441), (2, 3), (2, 1), (640, 441), (16000, 7999)]:
        want = ss.resample_poly(x, up, down)
        got = dsp.resample_poly(x, up, down)
        assert got.dtype == want.dtype and got.shape == want.shape, (dtype, up, down, got.dtype, want.dtype)
        tol = 3e-6 * 300 if got.dtype == np.float32 else 1e-9
        assert np.max(np.abs(got.astype(np.float64) - want)) <= tol
    for n in (0, 1, 2):  # empty and tiny inputs: scipy's lengths (ceil(n * up / down))
        for up, down in [(1, 3), (160, 441), (3, 1)]:
            e = np.ones(n, dtype=np.float32)
            assert dsp.resample_poly(e, up, down).shape == ss.resample_poly(e, up, down).shape


def test_resample_poly_takes_1d_only_and_says_so_for_2d():
    """The callers pass mono (read_audio averages the channels, the MP4 path asks PyAV for mono): 2-D input is
    refused, not resampled along the wrong axis."""
    stereo = np.ones((4800, 2), dtype=np.float32)
    with pytest.raises(ValueError):
        dsp.resample_poly(stereo, 1, 3)
    out = new_media.resample(stereo.mean(axis=1), 48000, 16000)
    assert out.dtype == np.float32 and out.shape == (1600,)


def test_resample_poly_of_ten_minutes_at_48k_holds_one_copy_of_its_input():
    """10 minutes at 48 kHz (115 MB float32) to 16 kHz: the padded copy of the input, the output and the product
    that fills it, not a copy of the windows per tap (61 x 38 MB). (Measured: 192 MB; scipy's own peak is the
    output alone, 38 MB.)"""
    x = np.random.default_rng(10).standard_normal(48000 * 600, dtype=np.float32)
    tracemalloc.start()
    try:
        out = dsp.resample_poly(x, 1, 3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == (16000 * 600,) and out.dtype == np.float32
    assert peak <= x.nbytes + 2 * out.nbytes + 16e6, f"{peak / 1e6:.0f} MB"
    # (a spot check against an exact float64 FIR sum at one output sample in the middle)
    i = out.size // 2
    h = dsp._kaiser_lowpass(61, 1 / 3)
    k = np.arange(61)
    exact = float(np.dot(h, x[3 * i + 30 - k].astype(np.float64)))
    assert abs(out[i] - exact) <= 1e-5


def test_hann_stft_of_five_minutes_holds_what_scipy_holds():
    """5 minutes at 16 kHz (what analyse gets): the windowed frames and their spectra, about 2x the [T, nperseg]
    float64 frames, as scipy's stft (498 MB at 10 minutes for both)."""
    y = np.random.default_rng(11).standard_normal(16000 * 300)
    n, hop = 516, 160
    frames = (y.size - n) // hop + 1
    tracemalloc.start()
    try:
        f, z = dsp.hann_stft(y, 16000, n, hop)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert z.shape == (n // 2 + 1, frames) and f.shape == (n // 2 + 1,)
    assert peak <= 2.1 * frames * n * 8 + 16e6, f"{peak / 1e6:.0f} MB"


def test_find_peaks_finds_a_plateau_of_infinities_as_scipy_does():
    """Was wrong: dsp.find_peaks split a plateau of +inf (runs of equal values were found with ``np.diff(x) !=
    0``, nan between two +inf) and missed the peak ``scipy.signal.find_peaks(x, height=height)`` finds."""
    x = np.array([0.0, 1.0, np.inf, np.inf, np.inf, 2.0, 0.0])
    with np.errstate(invalid="ignore"):
        got = dsp.find_peaks(x, 0.0)
    assert got.tolist() == [3]  # scipy.signal.find_peaks(x, height=0.0)[0]


SITECUSTOMIZE = '''
import os, sys
_LOG = os.environ.get("S56_IMPORT_LOG")
if _LOG:
    class _Watch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[:2] == ["scipy", "signal"] or name in ("leap_cli.media.dsp", "leap_cli.extract.audio"):
                with open(_LOG, "a") as f:
                    f.write(f"{os.getpid()} {name}\\n")
            return None
    sys.meta_path.insert(0, _Watch())
'''


def test_leap_extract_with_two_workers_never_imports_scipy_signal(tmp_path):
    """A kitchen whose WAV is at 44.1 kHz (resampled 160/441 in the workers): the main process and both spawned
    workers import the audio path (a watcher on the import system, via sitecustomize, logs it), none scipy.signal."""
    from leap_cli.synth.kitchen import KitchenConfig, build_kitchen

    kitchen = tmp_path / "kitchen"
    build_kitchen(kitchen, KitchenConfig(videos=1, segments_per_video=3, width=64, height=48, sample_rate=44100))
    assert sf.info(str(kitchen / "P01" / "audio" / "P01_01.wav")).samplerate == 44100
    watch = tmp_path / "watch"
    watch.mkdir()
    (watch / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "imports.log"
    env = dict(os.environ, S56_IMPORT_LOG=str(log), PYTHONPATH=os.pathsep.join(
        [str(watch), str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    out = tmp_path / "train.jsonl"
    done = subprocess.run([sys.executable, "-m", "leap_cli", "extract", "--data", str(kitchen), "--split", "train",
                           "--out", str(out), "--workers", "2"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line.split() for line in log.read_text().splitlines()]
    assert not [x for x in lines if x[1].startswith("scipy.signal")], lines
    pids = {pid for pid, _ in lines}
    workers = {pid for pid, name in lines if name == "leap_cli.extract.audio"}
    assert len(workers) == 2 and len(pids) >= 3, lines  # (the main process imports media.dsp via media.audio)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 3
    for r in records:
        audio = r["components"]["audio"]
        assert audio["status"] == "ok" and audio["source"] == "dsp-rules", audio
