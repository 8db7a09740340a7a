"""CPU of leap's audio DSP (``leap_cli.media.dsp``: numpy's) against scipy's on the same inputs, side by side:
resampling to 16 kHz from 44.1 and 48 kHz, the STFT and the onset peaks of a window, and the import each costs a
fresh process (the reason leap has its own: ``scipy.signal``'s import was more than half of a small extract).

    python benchmarks/bench_dsp.py [--seconds 600] [--rounds 5]

Rounds alternate which goes first; the least CPU of each is printed, with their ratio (scipy / leap: above 1 is
leap faster), the largest difference of the outputs, and the load average. Prints only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from leap_cli.media import dsp  # noqa: E402

SAMPLE_RATE = 16000  # what extract reads audio at (extract/audio.py)


def cpu(fn, rounds: int, other) -> tuple[float, float]:
    """Least process CPU seconds of ``fn`` and of ``other`` over ``rounds``, alternating which goes first."""
    a, b = [], []
    for r in range(rounds):
        for which, f in (((a, fn), (b, other)) if r % 2 == 0 else ((b, other), (a, fn))):
            t0 = time.process_time()
            f()
            which.append(time.process_time() - t0)
    return min(a), min(b)


def import_cpu(module: str, rounds: int) -> float:
    """Least CPU seconds (user + system, children's) of a fresh Python that imports ``module`` and numpy."""
    best = float("inf")
    for _ in range(rounds):
        before = os.times()
        subprocess.run([sys.executable, "-c", f"import numpy, {module}"], check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"})
        after = os.times()
        best = min(best, after.children_user - before.children_user + after.children_system - before.children_system)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=600.0, help="seconds of audio resampled per round")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    import scipy.signal

    rng = np.random.default_rng(0)
    load = [os.getloadavg()[0]]
    rows = []
    for rate in (44100, 48000):
        x = rng.standard_normal(int(args.seconds * rate)).astype(np.float32)
        q = Fraction(SAMPLE_RATE, rate)
        ours = dsp.resample_poly(x, q.numerator, q.denominator)
        theirs = scipy.signal.resample_poly(x, q.numerator, q.denominator)
        diff = float(np.max(np.abs(ours - theirs))) if ours.shape == theirs.shape else float("nan")
        t = cpu(lambda: dsp.resample_poly(x, q.numerator, q.denominator), args.rounds,
                lambda: scipy.signal.resample_poly(x, q.numerator, q.denominator))
        rows.append((f"resample {args.seconds:g} s {rate} -> {SAMPLE_RATE} Hz", *t, diff))
    y = rng.standard_normal(SAMPLE_RATE * 4).astype(np.float32)  # (a 4 s window at 16 kHz)
    n, hop = 2 * (SAMPLE_RATE // 62), SAMPLE_RATE // 100  # (extract/audio.py's Spectral)

    def scipy_stft():
        return scipy.signal.stft(y, SAMPLE_RATE, window="hann", nperseg=n, noverlap=n - hop, boundary=None,
                                 padded=False)

    _, ours = dsp.hann_stft(y, SAMPLE_RATE, n, hop)
    _, _, theirs = scipy_stft()
    diff = float(np.max(np.abs(ours - theirs))) if ours.shape == theirs.shape else float("nan")
    t = cpu(lambda: [dsp.hann_stft(y, SAMPLE_RATE, n, hop) for _ in range(20)], args.rounds,
            lambda: [scipy_stft() for _ in range(20)])
    rows.append(("STFT of a 4 s window x 20", *t, diff))
    flux = np.abs(rng.standard_normal(400))  # (the onset flux of a 4 s window: 100 frames/s)
    same = np.array_equal(dsp.find_peaks(flux, height=0.6, distance=6), scipy.signal.find_peaks(flux, height=0.6,
                                                                                                 distance=6)[0])
    t = cpu(lambda: [dsp.find_peaks(flux, height=0.6, distance=6) for _ in range(2000)], args.rounds,
            lambda: [scipy.signal.find_peaks(flux, height=0.6, distance=6) for _ in range(2000)])
    rows.append(("find_peaks of 400 frames x 2000", *t, 0.0 if same else float("nan")))
    imports = (import_cpu("leap_cli.media.dsp", args.rounds), import_cpu("scipy.signal", args.rounds))
    rows.append(("import in a fresh Python (with numpy)", *imports, 0.0))
    load.append(os.getloadavg()[0])
    print(f"{args.rounds} rounds, least CPU of each; load {load[0]:.2f}-{load[1]:.2f}")
    print(f"{'what':42} {'leap ms':>10} {'scipy ms':>10} {'scipy/leap':>10} {'max |diff|':>11}")
    for what, ours_s, theirs_s, d in rows:
        print(f"{what:42} {ours_s * 1e3:10.3f} {theirs_s * 1e3:10.3f} {theirs_s / max(ours_s, 1e-9):9.2f}x {d:11.2e}")
    return 0 if all(np.isfinite(d) for *_, d in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
