"""Extraction against the synthetic kitchen's ground truth, and its speed.

Runs ``leap extract`` on the train split of a synthetic kitchen (built if missing) three ways, side by side:
visual odometry for the camera with 1 worker and with N workers, and COLMAP poses for the camera; prints the
truth figures (yaw direction of head turns, audio category, hand-contact IoU, objects named), segments per
second per worker and the share of time per component, and writes them to benchmarks/RESULTS.md under
``## Extract (bench_extract.py)``.

    python benchmarks/bench_extract.py [--data leap-work/bench-kitchen] [--videos 4] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leap_cli.extract.runner import ExtractConfig, run_extract  # noqa: E402
from leap_cli.extract.truth import load_truth, score  # noqa: E402
from leap_cli.io import read_jsonl  # noqa: E402

SECTION = "## Extract (bench_extract.py)"


def run(data: Path, out: Path, **kw) -> tuple[dict, object]:
    if out.exists():
        out.unlink()
    summary = run_extract(ExtractConfig(data=data, split="train", out=out, **kw))
    return score(read_jsonl(out), load_truth(data)), summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("leap-work/bench-kitchen"), help="synthetic kitchen root")
    ap.add_argument("--videos", type=int, default=4, help="videos when the kitchen is built")
    ap.add_argument("--seed", type=int, default=0, help="kitchen seed when it is built")
    ap.add_argument("--workers", type=int, default=2, help="workers of the parallel run")
    ap.add_argument("--no-write", action="store_true", help="do not update benchmarks/RESULTS.md")
    args = ap.parse_args()

    from leap_cli.synth.kitchen import KitchenConfig, build_kitchen

    t0 = time.perf_counter()
    build_kitchen(args.data, KitchenConfig(videos=args.videos, seed=args.seed))
    built = time.perf_counter() - t0
    tmp = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    try:
        vo1, s1 = run(args.data, tmp / "vo1.jsonl", camera_source="vo", workers=1)
        von, sn = run(args.data, tmp / "von.jsonl", camera_source="vo", workers=args.workers)
        col, sc = run(args.data, tmp / "colmap.jsonl", camera_source="auto", workers=1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert vo1 == von, "1 worker and N workers gave different figures"
    load = os.getloadavg()[0]
    total = sum(s1.seconds.values()) or 1.0
    share = {k: round(v / total, 3) for k, v in sorted(s1.seconds.items(), key=lambda kv: -kv[1])}
    rate1 = s1.written / s1.wall
    raten = sn.written / sn.wall
    lines = [
        SECTION,
        "",
        f"Command: `python benchmarks/bench_extract.py --data {args.data} --videos {args.videos} --seed {args.seed} "
        f"--workers {args.workers}` (synthetic kitchen, train split, {s1.written} segments; kitchen built or found in "
        f"{built:.1f} s). Machine: {os.cpu_count()} CPU cores shared with other jobs (1-min load average {load:.1f} at "
        "the end), so the worker speed-up is bounded by free cores; each spawned worker also pays ~2-3 s of imports.",
        "",
        "| figure | target | measured |",
        "|---|---|---|",
        f"| yaw direction of head turns, visual odometry (ORB/KLT + E/H) | >= 90% | "
        f"{vo1['yaw_direction']['correct']:.1%} of {vo1['yaw_direction']['segments']} segments |",
        f"| yaw direction of head turns, COLMAP poses where present, else VO | >= 90% | "
        f"{col['yaw_direction']['correct']:.1%} of {col['yaw_direction']['segments']} segments |",
        f"| audio category (dominant) = true sound, DSP rules | >= 80% | "
        f"{vo1['audio_category']['correct']:.1%} of {vo1['audio_category']['segments']} segments |",
        f"| hand contacts with IoU >= 0.7 against truth | IoU >= 0.7 | {vo1['hand_contacts']['iou_at_least_0.7']:.1%} of "
        f"{vo1['hand_contacts']['contacts']} contacts (mean IoU {vo1['hand_contacts']['mean_iou']:.3f}; object named "
        f"right {vo1['hand_contacts']['object_named']:.1%}) |",
        f"| true objects named (labelled detection files) | all | {vo1['objects']['named']:.1%} of "
        f"{vo1['objects']['true_objects']} |",
        "",
        f"Audio confusions (true->predicted: count): {json.dumps(vo1['audio_category']['confusions'])}",
        "",
        "| run | segments/s | segments/s per worker | speed-up vs 1 worker |",
        "|---|---|---|---|",
        f"| 1 worker | {rate1:.1f} | {rate1:.1f} | 1.00x |",
        f"| {args.workers} workers | {raten:.1f} | {raten / args.workers:.1f} | {raten / rate1:.2f}x |",
        "",
        "Share of component time (1 worker, VO): " + ", ".join(f"{k} {v:.0%}" for k, v in share.items())
        + f"; wall {s1.wall:.1f} s for {s1.written} segments.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        path = Path(__file__).parent / "RESULTS.md"
        old = path.read_text() if path.exists() else "# Benchmark results\n\n"
        pattern = re.compile(re.escape(SECTION) + r".*?(?=\n## |\Z)", re.S)
        new = pattern.sub(lambda _: text.rstrip() + "\n", old) if SECTION in old else old.rstrip() + "\n\n" + text
        path.write_text(new)


if __name__ == "__main__":
    main()
