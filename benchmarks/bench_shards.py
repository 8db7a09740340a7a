"""Training clips per second: read from shards vs decoded from the MP4s per sample, side by side.

Both paths yield the same training clip (T frames, random resized crop to S x S, CLIP-normalised
``[3,T,S,S]``) through a torch DataLoader with 1 and 2 worker processes. The MP4 path opens the segment's
video and decodes the frames it needs (seeking, ``leap_cli.media.video.VideoReader``) for every sample;
the shards path reads JPEGs that ``leap build-shards`` stored at short side 256.

    python benchmarks/bench_shards.py                 # builds a small H.264 kitchen of its own in a temp dir
    python benchmarks/bench_shards.py --data ROOT     # any EPIC-layout root with MP4s (e.g. leap-work/kitchen)

Prints a table and the ratio per worker count (target >= 5x) and the bytes per clip.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from leap_cli.epic.layout import DatasetLayout  # noqa: E402
from leap_cli.epic.timing import format_timestamp, time_to_frame  # noqa: E402
from leap_cli.shards.dataset import (ShardDataset, collate_clips, share_by_name_under_a_low_limit,  # noqa: E402
                                     short_temp_dir_for_workers)
from leap_cli.shards.transforms import crop_resize, random_resized_box, temporal_indices, to_tensor  # noqa: E402
from leap_cli.shards.writer import ShardSettings, build_split, segment_frame_indices  # noqa: E402

COLUMNS = ("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,"
           "stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes")


def make_kitchen(root: Path, videos: int, seconds: float, fps: float, width: int, height: int, seed: int = 0) -> Path:
    """A few H.264 MP4s of moving textured content and 2-4 s segments covering them."""
    from leap_cli.media.write import Mp4Writer

    rng = np.random.default_rng(seed)
    ann = root / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    rows, info = [], []
    base = rng.integers(0, 255, (height * 2, width * 2, 3), dtype=np.uint8)
    base = np.ascontiguousarray(np.repeat(np.repeat(base[::8, ::8], 8, 0), 8, 1)[:height * 2, :width * 2])
    for v in range(videos):
        vid = f"P01_{v + 1:02d}"
        path = root / "P01" / "videos" / f"{vid}.MP4"
        path.parent.mkdir(parents=True, exist_ok=True)
        n = int(seconds * fps)
        w = Mp4Writer(path, width, height, fps, codec="libx264", bit_rate=2_000_000, gop=int(fps * 2))
        for i in range(n):
            dx, dy = (i * 3 + v * 50) % width, (i * 2) % height
            w.write(base[dy:dy + height, dx:dx + width])
        w.close()
        info.append(f"{vid},{seconds},{fps},{width}x{height}")
        t, k = 0.2, 0
        while t + 2.0 < seconds:
            d = float(rng.uniform(2.0, 4.0))
            stop = min(t + d, seconds - 0.1)
            rows.append(f"{vid}_{k},P01,{vid},{format_timestamp(t)},{format_timestamp(t)},{format_timestamp(stop)},"
                        f"{time_to_frame(t, fps)},{time_to_frame(stop, fps)},take plate,take,0,plate,2,['plate'],[2]")
            t, k = stop + 0.1, k + 1
    (ann / "EPIC_100_train.csv").write_text("\n".join([COLUMNS] + rows) + "\n")
    (ann / "EPIC_100_video_info.csv").write_text("video_id,duration,fps,resolution\n" + "\n".join(info) + "\n")
    src = Path(__file__).resolve().parents[1] / "tests" / "data" / "epic100"
    for f in ("EPIC_100_verb_classes.csv", "EPIC_100_noun_classes.csv"):
        (ann / f).write_bytes((src / f).read_bytes())
    return root


class Mp4Clips(Dataset):
    """The baseline: decode each training clip from its MP4 (open, seek, decode T frames, crop, normalise)."""

    def __init__(self, root: Path, num_frames: int, img_size: int, short_side: int = 256):
        self.layout = DatasetLayout.open(root)
        self.segments = self.layout.annotations().segments("train")
        self.T, self.S, self.short = num_frames, img_size, short_side

    def __len__(self) -> int:
        return len(self.segments)

    def __getitem__(self, i: int) -> dict:
        from leap_cli.media.video import VideoReader

        s = self.segments[i]
        rng = np.random.default_rng(i)
        stored = segment_frame_indices(s.start_frame, s.stop_frame, 2 * self.T)
        idx = [stored[j] for j in temporal_indices(len(stored), self.T, rng)]  # the same temporal jitter
        with VideoReader(self.layout.video_path(s.video_id), record=s.narration_id) as r:
            clip = r.read_frames(idx, self.short)
        box = random_resized_box(clip.shape[1], clip.shape[2], rng)
        return {"video": to_tensor(crop_resize(clip, box, self.S)), "verb_class": s.verb_class,
                "noun_class": s.noun_class, "has_program": False, "program_steps": torch.full((1, 3), -100),
                "conditions": torch.zeros(0), "step_conditions": torch.zeros(1, 0), "narration_id": s.narration_id}


def clips_per_second(ds, workers: int, batch: int, limit: int) -> tuple[float, int]:
    """Steady-state rate: the clock starts after the first batch (worker start-up excluded) and epochs
    repeat (persistent workers) until ``limit`` clips have been timed."""
    # leap's own loaders' settings for their workers (leap_cli.shards.dataset.loader_workers): tensors shared by name
    # under a low limit of open files, and the workers' sockets out of a TMPDIR too deep for them (under pytest's
    # basetemp, past pytest-99, a worker could not hand its batch over and the script waited)
    share_by_name_under_a_low_limit(workers)
    short_temp_dir_for_workers(workers)
    loader = DataLoader(ds, batch_size=batch, num_workers=workers, collate_fn=collate_clips,
                        shuffle=isinstance(ds, Mp4Clips), persistent_workers=workers > 0)
    n, t0, epoch = 0, None, 0
    while n < limit:
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(epoch)
        for b in loader:
            if t0 is None:
                t0 = time.perf_counter()
                continue
            n += b["video"].shape[0]
            if n >= limit:
                break
        epoch += 1
    return n / (time.perf_counter() - t0), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="EPIC-layout root with MP4s (default: build a small one)")
    ap.add_argument("--videos", type=int, default=2, help="videos of the generated kitchen")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each generated video")
    ap.add_argument("--size", default="1280x720", help="resolution of the generated videos (EPIC: 1920x1080)")
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--frames", type=int, default=8, help="frames per training clip (shards store 2x for jitter)")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--limit", type=int, default=48, help="clips timed per configuration")
    ap.add_argument("--workers", default="1,2", help="DataLoader worker counts to compare")
    args = ap.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.data is None:
            w, h = (int(x) for x in args.size.split("x"))
            t0 = time.perf_counter()
            root = make_kitchen(tmp / "kitchen", args.videos, args.seconds, args.fps, w, h)
            print(f"generated {args.videos} x {args.seconds:.0f}s H.264 videos at {args.size} in "
                  f"{time.perf_counter() - t0:.1f}s")
        else:
            root = args.data
        t0 = time.perf_counter()
        result = build_split(root, "train", workdir=tmp / "work",
                             settings=ShardSettings(split="train", frames=2 * args.frames, short_side=256),
                             workers=2)
        build_s = time.perf_counter() - t0
        m = result.manifest
        samples = m["counts"]["samples"]
        shard_bytes = sum(s["bytes"] for s in m["shards"])
        layout = DatasetLayout.open(root)
        vids = sorted({s.video_id for s in layout.annotations().segments("train")})
        mp4_bytes = sum(layout.video_path(v).stat().st_size for v in vids)
        print(f"built {samples} samples ({2 * args.frames} frames each) into {m['counts']['shards']} shard(s) "
              f"with 2 workers in {build_s:.1f}s")

        limit = args.limit
        rows = []
        for nw in (int(x) for x in args.workers.split(",")):
            base, n1 = clips_per_second(Mp4Clips(root, args.frames, args.img_size), nw, args.batch, limit)
            shard_ds = ShardDataset(result.out, train=True, num_frames=args.frames, img_size=args.img_size,
                                    shuffle_buffer=16)
            fast, n2 = clips_per_second(shard_ds, nw, args.batch, limit)
            rows.append((nw, base, fast, n1, n2))
        print()
        print("| workers | MP4 decode clips/s | shards clips/s | speed-up | clips timed |")
        print("|---|---|---|---|---|")
        for nw, base, fast, n1, n2 in rows:
            print(f"| {nw} | {base:.1f} | {fast:.1f} | {fast / base:.1f}x | {n1} / {n2} |")
        print()
        print(f"bytes per clip: shards {shard_bytes / samples / 1e3:.0f} kB ({2 * args.frames} JPEG frames at short "
              f"side 256); source MP4 {mp4_bytes / samples / 1e3:.0f} kB per segment")


if __name__ == "__main__":
    main()
