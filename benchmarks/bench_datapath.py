"""Training data path: the share of a training step spent waiting for data, at data.num_workers 0, 1 and 2.

Builds a small H.264 kitchen and its shards (as bench_shards.py), then runs the real training data source
(``leap_cli.train.data.ShardSource``: one persistent DataLoader per split, uint8 clips, epoch order from
shared memory) under a real training step (``leap_cli.train.loop.forward_loss``, backward, AdamW) of the
``tiny-synthetic`` model, for a few epochs per worker count. Each step is split into the time spent in
``next(batch)`` (waiting for data) and the time spent in the model step; the first batch of each epoch is
reported separately (with persistent workers it no longer pays for forking workers).

    python benchmarks/bench_datapath.py                    # tiny-synthetic model, 8x64 clips
    python benchmarks/bench_datapath.py --img-size 96 --batch 8 --epochs 3

Prints a table per worker count, the bytes per batch that cross the process boundary (uint8 vs the
float32 clips of before), and the load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from bench_shards import make_kitchen  # noqa: E402
from leap_cli.model import build_model  # noqa: E402
from leap_cli.shards.writer import ShardSettings, build_split  # noqa: E402
from leap_cli.train.config import load_config  # noqa: E402
from leap_cli.train.data import ShardSource  # noqa: E402
from leap_cli.train.distributed import DistInfo  # noqa: E402
from leap_cli.train.loop import forward_loss, model_args_for  # noqa: E402


def run(shards: Path, workers: int, args: argparse.Namespace) -> dict:
    cfg = load_config("tiny-synthetic", [f"data.train={shards}", "data.val=''", f"data.num_workers={workers}",
                                         f"data.batch_size={args.batch}", f"model.img_size={args.img_size}",
                                         f"model.num_frames={args.frames}"])
    info = DistInfo()
    source = ShardSource(cfg.data.train, None, cfg, info)
    torch.manual_seed(0)
    model = build_model(model_args_for(cfg, source)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    wait = step = first = 0.0
    n = 0
    batch_bytes = 0
    for epoch in range(args.epochs):
        batches = source.train_batches(epoch)
        for i in range(source.batches_per_epoch):
            t0 = time.perf_counter()
            batch = next(batches)
            t1 = time.perf_counter()
            loss, _, _ = forward_loss(model, batch, cfg)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            t2 = time.perf_counter()
            batch_bytes = batch["video"].numel() * batch["video"].element_size()
            if i == 0:
                first += t1 - t0  # epoch start: worker start-up (none with persistent workers) + first batch
                continue
            wait, step, n = wait + t1 - t0, step + t2 - t1, n + 1
    return {"workers": workers, "steps": n, "wait_s": wait / max(n, 1), "step_s": step / max(n, 1),
            "first_s": first / args.epochs, "batch_bytes": batch_bytes,
            "float_bytes": batch_bytes * 4 if batch["video"].dtype == torch.uint8 else batch_bytes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--size", default="640x360", help="resolution of the generated videos")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--short-side", type=int, default=80, help="stored frame size (tiny-synthetic: 80)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the training process")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        w, h = (int(x) for x in args.size.split("x"))
        root = make_kitchen(tmp / "kitchen", args.videos, args.seconds, 30.0, w, h)
        result = build_split(root, "train", workdir=tmp / "work",
                             settings=ShardSettings(split="train", frames=2 * args.frames, short_side=args.short_side))
        print(f"{result.manifest['counts']['samples']} training samples; load average before: "
              f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")
        rows = [run(result.out, int(nw), args) for nw in args.workers.split(",")]
    print()
    print("| num_workers | wait for data per step | model step | share waiting | epoch start (first batch) | "
          "steps timed |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        share = r["wait_s"] / (r["wait_s"] + r["step_s"])
        print(f"| {r['workers']} | {1e3 * r['wait_s']:.1f} ms | {1e3 * r['step_s']:.1f} ms | {100 * share:.1f} % | "
              f"{1e3 * r['first_s']:.0f} ms | {r['steps']} |")
    r = rows[-1]
    print(f"\nclip bytes per batch crossing the process boundary: {r['batch_bytes'] / 1e3:.0f} kB uint8 "
          f"(float32 would be {r['float_bytes'] / 1e3:.0f} kB); load average after: "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
