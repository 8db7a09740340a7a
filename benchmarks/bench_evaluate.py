"""Evaluate/submit cost at EPIC-KITCHENS-100 sizes: action scores in chunks vs all segments at once
(time and peak memory, side by side), recognition metrics over the validation size, and submission writing.

Run: python benchmarks/bench_evaluate.py [--segments 9668]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leap_cli import submit as sub  # noqa: E402
from leap_cli.evaluate import metrics as M  # noqa: E402


def measure(fn):
    tracemalloc.start()
    t = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return out, seconds, peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--segments", type=int, default=9668, help="EPIC-KITCHENS-100 validation has 9668")
    ap.add_argument("--submit-segments", type=int, default=2000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    n = args.segments
    verb, noun = rng.normal(size=(n, 97)), rng.normal(size=(n, 300))
    chunked, t_c, m_c = measure(lambda: M.action_scores(verb, noun))
    whole, t_w, m_w = measure(lambda: M.action_scores(verb, noun, chunk=n))
    assert all(np.array_equal(a, b) for a, b in zip(chunked, whole))
    print(f"action scores, {n} segments: chunks of 512 {t_c:.2f} s / {m_c:.0f} MiB peak; all at once "
          f"{t_w:.2f} s / {m_w:.0f} MiB peak; memory ratio {m_w / m_c:.1f}x, time ratio {t_w / t_c:.2f}x")
    vl, nl = rng.integers(0, 97, n), rng.integers(0, 300, n)
    parts = rng.choice(["P01", "P02"], n)
    _, t_m, _ = measure(lambda: M.recognition_metrics(verb, noun, vl, nl, parts, tail_verbs={1, 2}, tail_nouns={3},
                                                      unseen_participants={"P02"}))
    print(f"recognition metrics, {n} segments: {t_m:.2f} s")
    k = args.submit_segments
    scores = {"narration_id": [f"P01_101_{i}" for i in range(k)], "verb_output": torch.randn(k, 97),
              "noun_output": torch.randn(k, 300)}
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        doc = sub.make_submission(scores, "anticipation", sls_pt=2, sls_tl=3, sls_td=3, with_actions=True)
        sub.write_submission(Path(tmp) / "s.zip", doc)
        t_w = time.perf_counter() - t
        t = time.perf_counter()
        sub.check_submission(sub.read_submission(Path(tmp) / "s.zip"), scores["narration_id"], 97, 300)
        t_r = time.perf_counter() - t
        size = (Path(tmp) / "s.zip").stat().st_size / 2**20
    print(f"submission with actions, {k} segments: write {t_w:.2f} s, read+check {t_r:.2f} s, zip {size:.1f} MiB")


if __name__ == "__main__":
    main()
