"""CPU per frame of reading an EPIC ``rgb_frames`` folder: ``FramesFolderReader`` (which catches libjpeg's warnings
during each decode, to refuse corrupt frames) against a bare ``cv2.imdecode`` of the same files, side by side.

    python benchmarks/bench_frames.py [--frames 300] [--rounds 10]

The frames are 456x256 JPEGs written by FFmpeg's MJPEG encoder (as EPIC's were extracted, restart markers
included), into the temp folder. Rounds alternate which reader goes first; the median of each is printed, with
their ratio and the load average. Prints only (the frames are deleted after).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leap_cli.epic.timing import frame_filename  # noqa: E402
from leap_cli.media.video import FramesFolderReader  # noqa: E402


def write_frames(folder: Path, n: int) -> None:
    import av

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur((rng.random((256, 456 + n, 3)) * 255).astype(np.uint8), (0, 0), 2)
    ctx = av.CodecContext.create("mjpeg", "w")
    ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = 456, 256, "yuvj420p", Fraction(1, 60)
    ctx.open()
    for i in range(1, n + 1):
        rgb = np.ascontiguousarray(base[:, i:i + 456])
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuvj420p")
        (folder / frame_filename(i)).write_bytes(b"".join(bytes(p) for p in ctx.encode(frame)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300, help="frames in the folder, all read each round")
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)  # as extract and build-shards decode
    scratch = Path(tempfile.mkdtemp(prefix="leap-bench-frames-"))
    try:
        return run(scratch / "P01" / "rgb_frames" / "P01_01", args)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run(folder: Path, args: argparse.Namespace) -> int:
    write_frames(folder, args.frames)
    numbers = list(range(1, args.frames + 1))
    reader = FramesFolderReader(folder, 60.0)

    def leap() -> None:
        for f, _ in reader.decode(numbers):
            pass

    def bare() -> None:
        for f in numbers:
            cv2.imdecode(np.frombuffer((folder / frame_filename(f)).read_bytes(), np.uint8), cv2.IMREAD_COLOR)

    times: dict[str, list[float]] = {"leap": [], "bare": []}
    leap(), bare()  # (warm: the files in the page cache)
    load = [os.getloadavg()[0]]
    for r in range(args.rounds):
        for name, fn in ((("leap", leap), ("bare", bare)) if r % 2 == 0 else (("bare", bare), ("leap", leap))):
            t0 = time.process_time()
            fn()
            times[name].append((time.process_time() - t0) / args.frames)
    load.append(os.getloadavg()[0])
    ours, plain = float(np.median(times["leap"])), float(np.median(times["bare"]))
    print(f"{args.frames} frames 456x256 x {args.rounds} rounds, load {load[0]:.2f}-{load[1]:.2f}")
    print(f"FramesFolderReader {ours * 1e3:.3f} ms/frame, bare cv2.imdecode {plain * 1e3:.3f} ms/frame: "
          f"{ours / plain:.3f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
