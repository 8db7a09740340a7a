"""Decode once (issue 15.1, 15.2's extract-vs-decode ratio, 15.6): CPU of extract and build-shards against the CPU
of decoding each segment's needed frames once, side by side in one run, on short synthetic H.264 clips at
1920x1080 50 and 59.94 fps, 1280x720 and 640x360 50 fps, and at the synthetic kitchen's small frames (256x144).

    python benchmarks/bench_decode.py [--seconds 8] [--segments 4] [--repeat 3] [--keep DIR] [--clips 144p]

For every clip it runs, in this order, each in this process (CPU = process time, all threads):
  decode   VideoReader.decode of the frames extract and build-shards need (camera's 9 + the shards' 16 per segment),
           as the reader decodes in one process (FFmpeg's threads above 640x480 pixels, one thread at or below:
           there threads cost 1.6-2x the CPU for the same wall time), and for the larger clips again on one
           thread (as a --workers process decodes)
  extract  `leap extract` (narration, camera, objects, hands; the clips have no audio track) WITHOUT the frame cache
  shards   build-shards decoding the videos (the two-pass pipeline: extract + shards = "before")
  extract+ `leap extract` WITH the frame cache (one decode serves the components and build-shards' frames)
  shards+  build-shards copying extract's cached JPEGs (the one-pass pipeline: extract+ + shards+ = "after")
  no-VO    extract+ without the camera component (what the odometry of extract/camera.py costs on top)
then --workers 2 vs 1 (wall time, and CPU of the parent plus its children) for extract (with the cache) and
build-shards (decoding). Goals: (extract+ + shards+) <= 1.3x decode; extract < 2x decode at every resolution;
--workers 2 never slower than 1. The projection to EPIC-100 multiplies the CPU per segment at 1080p by 90,000.
The machine is shared: the load average is printed beside the figures, and every stage runs ``--repeat`` times in
rounds (each round runs all stages of a clip one after the other, so a change of load hits them alike); a figure
is the least of its rounds, the cost of the work with the least interference from other processes. Beside it,
the median over rounds of each round's own ratio (extract / decode of that round, run one after the other): on a
busy machine the least decode and the least extract may come from calmer moments of different rounds, and a
round's two stages share its load. ``--clips 144p`` (or 360p, 720p, 1080p, or clip ids) measures some clips only, and skips the
--workers comparison unless both 1080p clips are measured.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leap_cli.epic.layout import DatasetLayout  # noqa: E402
from leap_cli.epic.timing import MP4, FrameClock, format_timestamp, time_to_frame  # noqa: E402
from leap_cli.extract.cache import FrameCache, recognition_frames  # noqa: E402
from leap_cli.extract.runner import ExtractConfig, run_extract  # noqa: E402
from leap_cli.media import video  # noqa: E402
from leap_cli.media.video import VideoReader  # noqa: E402
from leap_cli.media.write import Mp4Writer  # noqa: E402
from leap_cli.shards.writer import LayoutOpener, ShardSettings, build_shards  # noqa: E402

EPIC_SEGMENTS = 90_000  # EPIC-KITCHENS-100: ~90k action segments in ~100 h of video
CAMERA_FRAMES = 9
SHARD_FRAMES = 16
# the two 1080p clips first (the worker and EPIC-100 figures use them); 360p and 720p: goal 2 between the sizes
CLIPS = [("P01_01", 1920, 1080, 50.0, "libx264"), ("P01_02", 1920, 1080, 60000 / 1001, "libx264"),
         ("P01_03", 256, 144, 50.0, "mpeg4"), ("P01_04", 640, 360, 50.0, "libx264"), ("P01_05", 1280, 720, 50.0, "libx264")]
HEADER = ("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,"
          "stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes\n")


def render(path: Path, w: int, h: int, fps: float, codec: str, seconds: float) -> None:
    """A textured scene panning under the camera (so the odometry has features and the encoder real work)."""
    rng = np.random.default_rng(0)
    base = rng.integers(16, 235, (h // 8 + 1, (w + 800) // 8 + 1), dtype=np.uint8)
    tex = np.kron(base, np.ones((8, 8), np.uint8))[:h, : w + 800]
    tex = (tex.astype(np.int16) + rng.integers(-12, 12, tex.shape)).clip(16, 235).astype(np.uint8)
    opts = {"preset": "ultrafast"} if codec == "libx264" else None
    writer = Mp4Writer(path, w, h, fps, codec=codec, bit_rate=8_000_000 if w > 1000 else 500_000,
                       gop=int(round(fps)), options=opts)
    planes = np.empty((h * 3 // 2, w), np.uint8)
    planes[h:] = 128
    try:
        for i in range(int(round(seconds * fps))):
            off = int(i * 240 / fps) % 800  # 240 px/s pan
            planes[:h] = tex[:, off:off + w]
            writer.write_yuv420p(planes)
        writer.close()
    except BaseException:
        writer.abort()
        raise


def make_root(root: Path, seconds: float, segments: int) -> Path:
    rows, info = [], ["video_id,duration,fps,resolution"]
    for vid, w, h, fps, codec in CLIPS:
        mp4 = root / "P01" / "videos" / f"{vid}.MP4"
        mp4.parent.mkdir(parents=True, exist_ok=True)
        if not mp4.exists():
            t0 = time.perf_counter()
            render(mp4, w, h, fps, codec, seconds)
            print(f"  rendered {vid} {w}x{h} {fps:.2f} fps in {time.perf_counter() - t0:.1f}s", flush=True)
        info.append(f"{vid},{seconds:.6f},{fps!r},{w}x{h}")
        # EPIC-like segments (mean ~3 s), spread over the clip, some overlapping
        span = (seconds - 0.4) / segments
        for k in range(segments):
            a = 0.2 + k * span
            b = min(seconds - 0.1, a + span * 1.15)
            rows.append(f"{vid}_{k},P01,{vid},{format_timestamp(a)},{format_timestamp(a)},{format_timestamp(b)},"
                        f"{time_to_frame(a, fps)},{time_to_frame(b, fps)},take plate,take,0,plate,2,['plate'],[2]\n")
    ann = root / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    (ann / "EPIC_100_train.csv").write_text(HEADER + "".join(rows))
    (ann / "EPIC_100_video_info.csv").write_text("\n".join(info) + "\n")
    return root


def cpu() -> float:
    return time.process_time()


def child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def decode_once(root: Path, vids: list[str], threads: int | None = None) -> tuple[float, int]:
    """CPU of decoding, once, the frames extract and build-shards need in every segment of ``vids``; ``threads``:
    FFmpeg's decoding threads (None: the reader's default, as extract in one process decodes; 1: as a worker)."""
    import leap_cli.media.video as video

    layout = DatasetLayout.open(root)
    ann = layout.annotations()
    before, video.DECODE_THREADS = video.DECODE_THREADS, threads or video.DECODE_THREADS
    try:
        t0, n = cpu(), 0
        for vid in vids:
            clock = FrameClock(MP4, ann.fps(vid))
            with VideoReader(layout.video_path(vid)) as r:
                for seg in [s for s in ann.segments("train") if s.video_id == vid]:
                    need = set(clock.segment_window(seg, CAMERA_FRAMES, "spread").frames)
                    need |= set(recognition_frames(clock, seg, SHARD_FRAMES))
                    for _ in r.decode(sorted(need)):
                        n += 1
        return cpu() - t0, n
    finally:
        video.DECODE_THREADS = before


def run_stage_extract(root: Path, vids: list[str], out: Path, cache: Path | None, workers: int = 1,
                      components=("narration", "camera", "objects", "hands")):
    cfg = ExtractConfig(data=root, split="train", out=out, components=components, workers=workers,
                        frame_cache=cache)
    t0, c0, w0 = cpu(), child_cpu(), time.perf_counter()
    s = _extract_only(cfg, vids)
    return cpu() - t0 + child_cpu() - c0, time.perf_counter() - w0, s


def _extract_only(cfg: ExtractConfig, vids: list[str]):
    """run_extract on the segments of ``vids`` only (the parent hands workers their segments)."""
    import leap_cli.extract.runner as runner

    real = runner.DatasetLayout.annotations

    def only(self):
        ann = real(self)
        segs = ann.segments

        def filtered(split):
            return [s for s in segs(split) if s.video_id in vids]

        ann.segments = filtered
        return ann

    runner.DatasetLayout.annotations = only
    try:
        return run_extract(cfg)
    finally:
        runner.DatasetLayout.annotations = real


def run_stage_shards(root: Path, vids: list[str], out: Path, cache: Path | None, workers: int = 1):
    layout = DatasetLayout.open(root)
    ann = layout.annotations()
    segs = [s for s in ann.segments("train") if s.video_id in vids]
    settings = ShardSettings("train", frames=SHARD_FRAMES, short_side=256)
    t0, c0, w0 = cpu(), child_cpu(), time.perf_counter()
    r = build_shards(segs, out=out, settings=settings, fps=ann.fps, workers=workers,
                     opener=LayoutOpener(layout.root, layout.annotations_dir),
                     cache=FrameCache(cache, SHARD_FRAMES, 256, 90) if cache else None)
    assert r.manifest["counts"]["samples"] == len(segs), r.manifest["skipped"][:2]
    return cpu() - t0 + child_cpu() - c0, time.perf_counter() - w0


def _chosen(names: list[str] | None) -> list[tuple]:
    """The clips of CLIPS that ``--clips`` names (by id, or 1080p / 720p / 360p / 144p), in CLIPS' order."""
    if not names:
        return CLIPS
    picked = [c for c in CLIPS if c[0] in names or f"{c[2]}p" in names]
    known = {c[0] for c in CLIPS} | {f"{c[2]}p" for c in CLIPS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"bench_decode.py: unknown clip(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(sorted(known))}")
    return picked


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="length of each synthetic clip")
    ap.add_argument("--segments", type=int, default=4, help="segments per clip")
    ap.add_argument("--repeat", type=int, default=3, help="rounds per stage; the least CPU (and wall) is kept")
    ap.add_argument("--keep", type=Path, default=None, help="folder to keep the clips in (reused on a re-run)")
    ap.add_argument("--clips", nargs="+", default=None, metavar="CLIP",
                    help="measure these clips only: 1080p, 720p, 360p, 144p or clip ids (default: all)")
    args = ap.parse_args()
    clips = _chosen(args.clips)
    base = args.keep or Path(tempfile.gettempdir()) / f"leap-bench-decode-{int(args.seconds)}s"
    root = make_root(base / "data", args.seconds, args.segments)
    work = Path(tempfile.mkdtemp(prefix="leap-bench-decode-"))
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    rows = []
    try:
        for vid, w, h, fps, codec in clips:
            v = [vid]
            runs: dict[str, list] = {}
            for rnd in range(args.repeat):
                d = work / f"{vid}-r{rnd}"
                runs.setdefault("decode", []).append(decode_once(root, v))
                if w * h > video.SMALL_FRAME:  # at or below, "decode" is one thread already
                    runs.setdefault("decode_1t", []).append(decode_once(root, v, threads=1))
                runs.setdefault("extract", []).append(run_stage_extract(root, v, d / "a.jsonl", None))
                runs.setdefault("shards", []).append(run_stage_shards(root, v, d / "sa", None))
                runs.setdefault("extract_c", []).append(run_stage_extract(root, v, d / "b.jsonl", d / "cache"))
                runs.setdefault("shards_c", []).append(run_stage_shards(root, v, d / "sb", d / "cache"))
                # the same one-pass extract without the camera (visual odometry, extract/camera.py): decode + cache
                runs.setdefault("novo", []).append(run_stage_extract(root, v, d / "c.jsonl", d / "cache2",
                                                                     components=("narration", "objects", "hands")))
            best = {k: min(r[0] for r in rs) for k, rs in runs.items()}
            dec, ex, sh, exc, shc, novo = (best[k] for k in ("decode", "extract", "shards", "extract_c", "shards_c",
                                                              "novo"))
            frames = runs["decode"][0][1]
            s1 = runs["extract"][0][2]
            s2 = min(runs["extract_c"], key=lambda r: r[0])[2]
            d0 = work / f"{vid}-r0"
            same = all((d0 / "sa" / p.name).read_bytes() == p.read_bytes() for p in (d0 / "sb").glob("*.tar"))
            nseg = s1.written
            rows.append(dict(vid=vid, res=f"{w}x{h}", fps=fps, codec=codec, segs=nseg, frames=frames, decode=dec,
                             extract=ex, shards=sh, extract_c=exc, shards_c=shc, same=same, novo=novo,
                             camera=s2.seconds.get("camera", 0.0) / max(1, nseg),
                             cache=s2.seconds.get("frame-cache", 0.0) / max(1, nseg),
                             load=os.getloadavg()[0]))
            r = rows[-1]
            print(f"{vid} {w}x{h} {fps:.2f} fps, {nseg} segments, {frames} frames needed, least of {args.repeat} "
                  f"rounds (load {r['load']:.2f}):", flush=True)
            print(f"  CPU s: decode-once {dec:.3f} | extract {ex:.3f} ({ex / dec:.2f}x) + shards {sh:.3f} "
                  f"= {(ex + sh) / dec:.2f}x before | extract+cache {exc:.3f} ({exc / dec:.2f}x) + shards from "
                  f"cache {shc:.3f} = {(exc + shc) / dec:.2f}x after | shards bytes identical: {same}")
            med = {k: statistics.median(a[0] / d[0] for a, d in zip(runs[k], runs["decode"]))
                   for k in ("extract", "extract_c")}
            print(f"  median of the rounds' own ratios: extract {med['extract']:.2f}x, extract+cache "
                  f"{med['extract_c']:.2f}x the decode")
            if "decode_1t" in best:
                dec1 = best["decode_1t"]
                print(f"  decode-once on one FFmpeg thread (as a worker decodes): {1000 * dec1 / nseg:.1f} ms per "
                      f"segment ({dec1 / dec:.2f}x the default's CPU)")
            print(f"  without the camera (VO): extract+cache {novo:.3f} ({novo / dec:.2f}x); VO CPU "
                  f"{1000 * (exc - novo) / nseg:.0f} ms per segment (wall: VO {1000 * r['camera']:.0f} ms, "
                  f"cache JPEG encode {1000 * r['cache']:.0f} ms); decode-once {1000 * dec / nseg:.1f} ms per "
                  "segment", flush=True)
        hd = [c[0] for c in CLIPS[:2]]
        if not set(hd) <= {c[0] for c in clips}:
            print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
            return
        # workers: the two 1080p clips together (8 segments, 2 videos), 1 and 2 workers alternating
        wk: dict = {}
        for rnd in range(args.repeat):
            for stage in ("extract", "shards"):
                for n in (1, 2):
                    if stage == "extract":
                        c, wall, _ = run_stage_extract(root, hd, work / f"w{n}-{rnd}.jsonl", work / f"w{n}-{rnd}-cache",
                                                       n)
                    else:
                        c, wall = run_stage_shards(root, hd, work / f"ws{n}-{rnd}", None, n)
                    wk.setdefault((stage, n), []).append((c, wall, os.getloadavg()[0]))
        wk = {k: (min(x[0] for x in v), min(x[1] for x in v), v[-1][2]) for k, v in wk.items()}
        for stage in ("extract", "shards"):
            (c1, w1, l1), (c2, w2, l2) = wk[(stage, 1)], wk[(stage, 2)]
            print(f"{stage} --workers 2 vs 1 (1080p, 2 videos): wall {w2:.2f}s vs {w1:.2f}s = {w1 / w2:.2f}x "
                  f"speed-up, CPU {c2:.2f}s vs {c1:.2f}s (load {l1:.2f} / {l2:.2f})")
        hdrows = [r for r in rows if r["res"] == "1920x1080"]
        per = lambda k: sum(r[k] for r in hdrows) / sum(r["segs"] for r in hdrows)  # noqa: E731
        before = (per("extract") + per("shards")) * EPIC_SEGMENTS / 3600
        after = (per("extract_c") + per("shards_c")) * EPIC_SEGMENTS / 3600
        once = per("decode") * EPIC_SEGMENTS / 3600
        print(f"EPIC-100 projection (90k segments at these 1080p CPU costs per segment): decode-once "
              f"{once:.1f} CPU-h; extract + build-shards before {before:.1f} CPU-h, after {after:.1f} CPU-h")
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
