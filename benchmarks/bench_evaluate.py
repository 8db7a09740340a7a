"""Evaluate/submit cost at EPIC-KITCHENS-100 sizes: action scores in chunks vs all segments at once
(time and peak memory, side by side), recognition metrics over the validation size, and submission writing.
With ``--predict``: `leap evaluate`'s model pass (``leap_cli.evaluate.inference.predict``) eager and with
``torch.compile`` (``--compile``), side by side on the same batches.

Run: python benchmarks/bench_evaluate.py [--segments 9668]
     python benchmarks/bench_evaluate.py --predict [--backbone uniformerv2_b16 --frames 8 --img 224 --batch-size 2
                                                    --batches 4 --threads 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
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


def predict_side_by_side(args: argparse.Namespace) -> None:
    """predict() eager and compiled on the same batches, alternating which runs first, CPU time per clip. The
    first compiled call holds the compilation; later calls reuse the compiled graph (dynamo's cache)."""
    from leap_cli.evaluate.inference import predict
    from leap_cli.model import build_model

    cache = tempfile.mkdtemp(prefix="inductor-")  # a cold compile, as the first `leap evaluate --compile` has
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model_args = {"backbone": args.backbone, "num_frames": args.frames, "img_size": args.img, "num_verbs": 97,
                  "num_nouns": 300, "anticipation": None,
                  "program": {"step_verbs": 98, "objects": 301, "conditions": 20, "max_steps": 8}}
    model = build_model(model_args).eval()
    g = torch.Generator().manual_seed(0)
    batches = [{"video": torch.randint(0, 256, (args.batch_size, 3, args.frames, args.img, args.img),
                                       dtype=torch.uint8, generator=g),
                "narration_id": [f"P01_101_{i}_{j}" for j in range(args.batch_size)]} for i in range(args.batches)]
    print(f"predict: {args.backbone} {args.frames}x{args.img}, batch {args.batch_size}, {args.batches} batches, "
          f"{args.threads} thread(s), torch {torch.__version__}; load average "
          f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)

    def timed(batch: dict, compile: bool) -> tuple[float, float, dict]:
        cpu, wall = time.process_time(), time.perf_counter()
        out = predict(model, [batch], compile=compile)
        return time.process_time() - cpu, time.perf_counter() - wall, out

    timed(batches[0], False)  # warm-up (allocator, oneDNN)
    first_cpu, first_wall, _ = timed(batches[0], True)
    print(f"first compiled call (compilation + one batch, cold cache {cache}): {first_cpu:.1f} CPU-s of this "
          f"process (the C++ compiler runs in others), {first_wall:.1f} s wall", flush=True)
    times: dict[bool, list[float]] = {False: [], True: []}
    ratios, diffs = [], []
    for i, batch in enumerate(batches):
        outs = {}
        for compile in ((False, True) if i % 2 == 0 else (True, False)):
            cpu, wall, outs[compile] = timed(batch, compile)
            times[compile].append(cpu / args.batch_size)
        ratios.append(times[False][-1] / times[True][-1])
        e, c = outs[False]["verb_output"], outs[True]["verb_output"]
        diffs.append(float((c - e).norm() / e.norm()))
        print(f"  batch {i}: eager {times[False][-1]:.3f} / compiled {times[True][-1]:.3f} CPU-s per clip "
              f"({ratios[-1]:.2f}x), load {os.getloadavg()[0]:.2f}", flush=True)
    med_e, med_c = statistics.median(times[False]), statistics.median(times[True])
    print(f"eager {med_e:.3f} (min {min(times[False]):.3f}) CPU-s per clip; compiled {med_c:.3f} "
          f"(min {min(times[True]):.3f}); eager / compiled: medians {med_e / med_c:.2f}x, minima "
          f"{min(times[False]) / min(times[True]):.2f}x, median of per-batch ratios {statistics.median(ratios):.2f}x; "
          f"max relative difference of the verb scores {max(diffs):.1e}")
    compile_cpu = first_cpu - med_c * args.batch_size
    saved = med_e - med_c
    pays = f"pays after ~{compile_cpu / saved:.0f} clips" if saved > 0 else "never pays here (compiled is not faster)"
    print(f"compilation ~{compile_cpu:.0f} CPU-s of this process, {first_wall:.0f} s wall for the first call: {pays} "
          f"(counting this process's CPU only)")
    print(f"load average at the end {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    shutil.rmtree(cache, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--segments", type=int, default=9668, help="EPIC-KITCHENS-100 validation has 9668")
    ap.add_argument("--submit-segments", type=int, default=2000)
    ap.add_argument("--predict", action="store_true", help="time leap evaluate's model pass, eager vs torch.compile")
    ap.add_argument("--backbone", default="uniformerv2_b16")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--img", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.predict:
        predict_side_by_side(args)
        return
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
    streamed_check_side_by_side(k)


def streamed_check_side_by_side(k: int, rounds: int = 3) -> None:
    """`leap submit --check`'s streamed read of test.json against json.loads of the whole file plus the same
    checks, on a recognition zip of ``k`` segments, alternating, the least of the rounds (was a timed test)."""
    ids = [f"P01_{i}" for i in range(k)]
    g = torch.Generator().manual_seed(0)
    scores = {"narration_id": ids, "verb_output": torch.randn(k, 97, generator=g, dtype=torch.float64),
              "noun_output": torch.randn(k, 300, generator=g, dtype=torch.float64)}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.zip"
        sub.write_submission(path, sub.make_submission(scores, "recognition", sls_pt=0, sls_tl=0, sls_td=0, lazy=True))
        stream, whole = [], []
        for _ in range(rounds):
            t = time.perf_counter()
            a = sub._check_streamed(path, ids, 97, 300)
            stream.append(time.perf_counter() - t)
            t = time.perf_counter()
            b = sub.check_submission(sub.read_submission(path), ids, 97, 300, str(path))
            whole.append(time.perf_counter() - t)
            assert a == b
    print(f"submit --check, {k} segments (load {os.getloadavg()[0]:.1f}): streamed {min(stream):.2f} s, whole file "
          f"{min(whole):.2f} s: streamed / whole {min(stream) / min(whole):.2f}x")


if __name__ == "__main__":
    main()
