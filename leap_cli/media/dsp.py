"""The three signal-processing routines leap's audio path needs, in numpy: scipy's ``stft`` (Hann window, no
padding), ``find_peaks`` (height and distance) and ``resample_poly`` (Kaiser-windowed FIR, zero padding).

They compute what scipy computes (``tests/test_dsp.py`` compares them on the same inputs) without importing
``scipy.signal``, which costs 1-1.5 s of CPU in every process that imports it (it parses its docstrings at import):
``leap extract`` and each of its worker processes start that much sooner.
"""

from __future__ import annotations

import math

import numpy as np


def hann_stft(y: np.ndarray, fs: float, nperseg: int, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """(frequencies, spectra [F, T]) of ``y`` cut into ``nperseg``-sample frames every ``hop`` samples under a
    periodic Hann window, each frame's one-sided FFT divided by the window's sum: ``scipy.signal.stft(y, fs,
    nperseg=nperseg, noverlap=nperseg - hop, boundary=None, padded=False)``. Frames that would run past the end
    are not made; ``len(y) >= nperseg`` is the caller's to ensure."""
    y = np.asarray(y, dtype=np.float64)
    if not 0 < hop <= nperseg <= y.shape[-1]:
        raise ValueError(f"need 0 < hop ({hop}) <= nperseg ({nperseg}) <= the signal's length ({y.shape[-1]})")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(nperseg) / nperseg)  # periodic ("fftbins") Hann
    frames = np.lib.stride_tricks.sliding_window_view(y, nperseg)[::hop]  # [T, nperseg], a view
    spectra = np.fft.rfft(frames * (window / window.sum()), axis=-1)  # (the scale in the window: one pass less)
    return np.fft.rfftfreq(nperseg, 1 / fs), spectra.T


def find_peaks(x: np.ndarray, height: float, distance: int = 1) -> np.ndarray:
    """Indices of the local maxima of ``x`` at least ``height`` high, no two closer than ``distance`` samples (the
    higher one kept): ``scipy.signal.find_peaks(x, height=height, distance=distance)[0]``. A flat top is one
    peak, at its middle (the left one of two middles)."""
    x = np.asarray(x, dtype=np.float64)
    peaks = _local_maxima(x)
    peaks = peaks[x[peaks] >= height]
    spacing = math.ceil(distance)
    if spacing > 1 and peaks.size > 1:
        peaks = peaks[_keep_apart(peaks, x[peaks], spacing)]
    return peaks


def _local_maxima(x: np.ndarray) -> np.ndarray:
    """Samples higher than the one before and the first one after their run of equal values (the first and last
    sample never count), as scipy's ``_local_maxima_1d``."""
    if x.size < 3:
        return np.zeros(0, dtype=np.intp)
    change = np.flatnonzero(x[1:] != x[:-1]) + 1  # where a new run of equal values starts (inf == inf; nan != nan)
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [x.size]]) - 1  # each run's last index
    values = x[starts]
    inner = np.arange(1, starts.size - 1)  # runs with a run on either side (not touching the ends)
    top = inner[(values[inner - 1] < values[inner]) & (values[inner + 1] < values[inner])]
    return ((starts[top] + ends[top]) // 2).astype(np.intp)


def _keep_apart(peaks: np.ndarray, priority: np.ndarray, distance: int) -> np.ndarray:
    """Which ``peaks`` (sorted) to keep so that none lies under ``distance`` from a higher kept one: the highest
    first, each removing its neighbours (scipy's ``_select_by_peak_distance``, in its order of ties)."""
    keep = np.ones(peaks.size, dtype=bool)
    for j in np.argsort(priority)[::-1]:
        if not keep[j]:
            continue
        k = j - 1
        while k >= 0 and peaks[j] - peaks[k] < distance:
            keep[k] = False
            k -= 1
        k = j + 1
        while k < peaks.size and peaks[k] - peaks[j] < distance:
            keep[k] = False
            k += 1
    return keep


def _kaiser_lowpass(numtaps: int, cutoff: float, beta: float = 5.0) -> np.ndarray:
    """``scipy.signal.firwin(numtaps, cutoff, window=("kaiser", beta))``: a windowed-sinc low-pass with its
    cutoff relative to Nyquist, scaled to unit gain at DC."""
    m = np.arange(numtaps) - 0.5 * (numtaps - 1)
    h = cutoff * np.sinc(cutoff * m) * np.kaiser(numtaps, beta)
    return h / h.sum()


def resample_poly(x: np.ndarray, up: int, down: int) -> np.ndarray:
    """``x`` (1-D) resampled by ``up / down``: zeros inserted, a Kaiser-windowed low-pass of ``20 * max(up, down)
    + 1`` taps applied, every ``down``-th sample kept, aligned so that output sample ``i`` lies at input time ``i *
    down / up``; ``scipy.signal.resample_poly(x, up, down)`` (computed in ``x``'s float type, as scipy does)."""
    x = np.asarray(x)
    dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float64
    x = x.astype(dtype, copy=False)
    g = math.gcd(up, down)
    up, down = up // g, down // g
    if up == down == 1:
        return x.copy()
    n_in = x.shape[0]
    n_out = -(-n_in * up // down)
    half_len = 10 * max(up, down)
    h = (_kaiser_lowpass(2 * half_len + 1, 1.0 / max(up, down)) * up).astype(dtype)
    # Output sample i is the filter's full output at position q = i * down + half_len (the filter's centre): the
    # sum over taps k with (q - k) a multiple of up of h[k] * x[(q - k) / up]. Outputs whose q have one remainder r
    # modulo up (every up-th output) use the taps h[r], h[r + up], ..., h[r + up * t] meeting x[q // up - t], and
    # their q // up step by down: one matrix product of x's windows with those taps reversed per remainder.
    taps = -(-h.size // up)
    last = ((n_out - 1) * down + half_len) // up  # the furthest input index any output reads
    padded = np.concatenate([np.zeros(taps - 1, dtype=dtype), x, np.zeros(max(0, last + 1 - n_in), dtype=dtype)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, taps)  # windows[j] = x[j - taps + 1 .. j]
    reversed_taps = np.zeros((up, taps), dtype=dtype)  # [first output of a remainder, tap]
    for first in range(up):
        phase = h[(first * down + half_len) % up::up]
        reversed_taps[first, taps - phase.size:] = phase[::-1]
    out = np.empty(n_out, dtype=dtype)
    # Block by block (a block starts at a multiple of up, so its outputs' remainders are those from 0): every
    # remainder's product reads the same stretch of x, which stays in the CPU's cache (one pass over the whole
    # signal per remainder was 2-6x slower than scipy at 44.1 kHz on ten minutes).
    span = up * max(512, 65536 // up)
    for lo in range(0, n_out, span):
        hi = min(lo + span, n_out)
        for first in range(lo, min(lo + up, hi)):
            q = first * down + half_len
            out[first:hi:up] = windows[q // up::down][:len(range(first, hi, up))] @ reversed_taps[first - lo]
    return out
