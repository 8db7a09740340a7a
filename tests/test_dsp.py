"""leap_cli.media.dsp computes what scipy.signal computes (the audio path's stft, find_peaks, resample_poly),
and extract's audio path runs without importing scipy.signal."""

import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
import scipy.signal as ss

from leap_cli.media import dsp

RATES = [48000, 44100, 32000, 24000, 22050, 16000, 11025, 8000]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("native", RATES)
def test_resample_poly_equals_scipys(native, dtype):
    rng = np.random.default_rng(native)
    for target in (16000, 48000):
        ratio = Fraction(target, native)
        for n in (1, 2, 3, 7, 61, 1000, native * 2 + 13):
            x = rng.standard_normal(n).astype(dtype)
            want = ss.resample_poly(x, ratio.numerator, ratio.denominator)
            got = dsp.resample_poly(x, ratio.numerator, ratio.denominator)
            assert got.dtype == want.dtype and got.shape == want.shape, (native, target, n, got.shape, want.shape)
            tol = 3e-6 if dtype == np.float32 else 1e-12
            assert np.max(np.abs(got.astype(np.float64) - want)) < tol, (native, target, n)


def test_resample_poly_keeps_a_tone_and_removes_what_the_new_rate_cannot_hold():
    t = np.arange(48000) / 48000
    low, high = np.sin(2 * np.pi * 1000 * t), np.sin(2 * np.pi * 12000 * t)  # 12 kHz is over 16 kHz's Nyquist
    out = dsp.resample_poly(low + high, 1, 3)
    want = np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)
    assert np.max(np.abs(out[100:-100] - want[100:-100])) < 1e-2


@pytest.mark.parametrize("n", [516, 517, 676, 1600, 80003])
def test_hann_stft_equals_scipys(n):
    y = np.random.default_rng(n).standard_normal(n)
    f, _, z = ss.stft(y, fs=16000, nperseg=516, noverlap=516 - 160, boundary=None, padded=False)
    f2, z2 = dsp.hann_stft(y, 16000, 516, 160)
    assert z2.shape == z.shape and np.array_equal(f2, f)
    assert np.max(np.abs(z2 - z)) < 1e-12


def test_hann_stft_refuses_a_signal_shorter_than_a_frame():
    with pytest.raises(ValueError, match="nperseg"):
        dsp.hann_stft(np.zeros(100), 16000, 516, 160)


def test_find_peaks_equals_scipys_with_plateaus_ties_heights_and_distances():
    rng = np.random.default_rng(0)
    for trial in range(4000):
        n = int(rng.integers(0, 80))
        # small integers: flat tops and equal peaks (distance's ties) are frequent
        x = rng.integers(0, 4, n).astype(float) if trial % 2 else rng.standard_normal(n)
        height, distance = float(rng.choice([-1.0, 0.0, 0.5, 1.0, 2.0])), int(rng.integers(1, 9))
        want = ss.find_peaks(x, height=height, distance=distance)[0]
        got = dsp.find_peaks(x, height, distance)
        assert np.array_equal(got, want), (x.tolist(), height, distance, got, want)


def test_the_audio_path_runs_without_importing_scipy_signal():
    code = (
        "import sys, numpy as np\n"
        "from leap_cli.extract.audio import analyse\n"
        "from leap_cli.media.audio import resample\n"
        "y = resample(np.random.default_rng(0).standard_normal(48000).astype(np.float32), 48000, 16000)\n"
        "out = analyse(y)\n"
        "assert out['window_labels'], out\n"
        "print(sorted(m for m in sys.modules if m.startswith('scipy')))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
