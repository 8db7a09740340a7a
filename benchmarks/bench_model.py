"""UniFormerV2 speed and memory: clips/s for forward and forward+backward and peak memory, SDPA vs plain
attention side by side, on the CPU (b16 8x224 at batch 1 and 2 by default) and, when a GPU is present,
on CUDA with bf16 autocast at batches up to what fits.

    python benchmarks/bench_model.py                      # CPU, b16 8x224, batch 1 and 2
    python benchmarks/bench_model.py --device cuda        # GPU, bf16, batches 8..128 until out of memory
    python benchmarks/bench_model.py --device cuda --compile --compile-batch 32   # also torch.compile vs eager
    python benchmarks/bench_model.py --backbone uniformerv2_tiny --frames 4 --img 96   # quick check
    python benchmarks/bench_model.py --greedy --threads 1 --iters 5 [--backbone uniformerv2_tiny --img 64 --batches 32]
    # side by side with the official code (not part of leap: fetch OpenGVLab/UniFormerV2 and point at the file)
    python benchmarks/bench_model.py --official /path/to/UniFormerV2/slowfast/models/uniformerv2_model.py [--compile]
    # the same on a GPU: wall time between synchronisations, bf16 autocast (outputs compared in float32 first)
    python benchmarks/bench_model.py --official .../uniformerv2_model.py --device cuda --batches 32 --iters 10

Each CPU configuration runs in a fresh subprocess so that its peak resident memory (ru_maxrss) is its own;
"peak MiB" on the CPU is the peak RSS above the RSS after building the model and the input. Besides clips per
wall-clock second, CPU seconds per clip (process time of all threads) are printed: on a shared machine they
vary much less than wall-clock figures. On CUDA, "peak MiB" is torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from leap_cli.model.uniformerv2 import BUILDERS  # noqa: E402


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def run_one(backbone: str, frames: int, img: int, batch: int, sdpa: bool, mode: str, iters: int, device: str,
            threads: int, compiled: bool = False) -> dict:
    """Time one configuration in this process; returns clips/s and peak memory. ``compiled``: through
    ``torch.compile`` (its compilation is the warm-up step, timed apart as ``compile_s``)."""
    torch.manual_seed(0)
    if device == "cpu":
        torch.set_num_threads(threads)
    model = BUILDERS[backbone](num_frames=frames, img_size=img, num_classes=400, use_sdpa=sdpa).to(device)
    model.train(mode == "fwd+bwd")
    net = torch.compile(model) if compiled else model
    x = torch.randn(batch, 3, frames, img, img, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)

    def step() -> None:
        if mode == "fwd":
            with torch.no_grad(), autocast:
                net(x)
        else:
            with autocast:
                out = net(x)
            out.float().sum().backward()
            model.zero_grad(set_to_none=True)

    base = _rss_mib()
    w0 = time.perf_counter()
    step()  # warm-up (and compilation)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    warm = time.perf_counter() - w0
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(iters):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    secs, cpu_secs = time.perf_counter() - t0, time.process_time() - c0
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    return {"backbone": backbone, "frames": frames, "img": img, "batch": batch, "attention": "sdpa" if sdpa else "plain",
            "mode": mode, "device": device, "iters": iters, "threads": threads, "compiled": compiled,
            "compile_s": warm if compiled else None, "clips_per_s": batch * iters / secs,
            "cpu_s_per_clip": cpu_secs / (batch * iters), "peak_mib": peak}


def _in_subprocess(*params) -> dict:
    """``run_one(*params)`` in a fresh process (its peak resident memory is its own); prints the row."""
    cmd = [sys.executable, __file__, "--one", json.dumps(params)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    row = json.loads(out.strip().splitlines()[-1])
    print(_fmt(row), flush=True)
    return row


def cpu_suite(args: argparse.Namespace) -> list[dict]:
    rows = [_in_subprocess(args.backbone, args.frames, args.img, batch, sdpa, mode, args.iters, "cpu", args.threads)
            for batch in args.batches for mode in ("fwd", "fwd+bwd") for sdpa in (True, False)]
    if args.compile:  # torch.compile against eager: forward+backward with SDPA at one batch
        rows += [_in_subprocess(args.backbone, args.frames, args.img, args.compile_batch, True, "fwd+bwd", args.iters,
                                "cpu", args.threads, compiled) for compiled in (False, True)]
    return rows


def cuda_suite(args: argparse.Namespace) -> list[dict]:
    rows = []
    for mode in ("fwd", "fwd+bwd"):
        for sdpa in (True, False):
            for batch in args.gpu_batches:
                try:
                    rows.append(run_one(args.backbone, args.frames, args.img, batch, sdpa, mode, args.iters, "cuda", 0))
                except torch.OutOfMemoryError:
                    print(f"{mode} {'sdpa' if sdpa else 'plain'} batch {batch}: out of memory", flush=True)
                    torch.cuda.empty_cache()
                    break
                print(_fmt(rows[-1]), flush=True)
                torch.cuda.empty_cache()
    if args.compile:  # torch.compile against eager: forward+backward with SDPA at one batch, eager timed again beside it
        for compiled in (False, True):
            try:
                rows.append(run_one(args.backbone, args.frames, args.img, args.compile_batch, True, "fwd+bwd",
                                    args.iters, "cuda", 0, compiled))
            except torch.OutOfMemoryError:
                print(f"compile batch {args.compile_batch}: out of memory (give a smaller --compile-batch)", flush=True)
                break
            finally:
                torch.cuda.empty_cache()
            print(_fmt(rows[-1]), flush=True)
    return rows


def load_official(path: Path):
    """Import the official ``slowfast/models/uniformerv2_model.py`` on its own: its only outside imports are
    timm's DropPath and slowfast's logger, given here as minimal stand-ins (DropPath as timm's drop_path:
    one draw per entry of dim 0, scaled by 1/keep)."""
    import importlib.util
    import logging
    import types

    class DropPath(torch.nn.Module):
        def __init__(self, drop_prob: float = 0.0) -> None:
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.drop_prob == 0.0 or not self.training:
                return x
            keep = 1 - self.drop_prob
            return x * x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep) / keep

    stubs = {name: types.ModuleType(name) for name in
             ("timm", "timm.models", "timm.models.layers", "slowfast", "slowfast.utils", "slowfast.utils.logging")}
    stubs["timm.models.layers"].DropPath = DropPath
    stubs["slowfast.utils.logging"].get_logger = logging.getLogger
    for name, mod in stubs.items():
        sys.modules.setdefault(name, mod)
    spec = importlib.util.spec_from_file_location("official_uniformerv2_model", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def side_by_side(args: argparse.Namespace) -> None:
    """Ours (eager, and compiled with --compile) vs the official module, the same random weights and input,
    forward+backward in train mode (batch statistics, dropout off), timed interleaved in one process (the order
    alternating every iteration). On the CPU, CPU seconds per iteration are the figure; on CUDA (``--device
    cuda``), wall-clock seconds between synchronisations, under bf16 autocast unless ``--precision fp32``. The
    ratio of their medians, of their minima (the least disturbed runs, on a shared machine) and the median of the
    per-iteration ratios are printed. The outputs are compared in float32 (on CUDA with TF32 off) before timing."""
    import os

    official = load_official(args.official)
    cuda = args.device == "cuda"
    device = "cuda" if cuda else "cpu"
    if cuda:  # the equality check in true float32; the timed steps in the precision asked for
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    else:
        torch.set_num_threads(args.threads)
    bf16 = cuda and args.precision == "bf16"
    unit = "GPU wall s" if cuda else "CPU-s"
    torch.manual_seed(0)
    base = {"uniformerv2_b16": dict(patch_size=16, width=768, layers=12, heads=12, return_list=[8, 9, 10, 11]),
            "uniformerv2_l14": dict(patch_size=14, width=1024, layers=24, heads=16, return_list=[20, 21, 22, 23])}
    b = base[args.backbone]
    rows = []
    settings = {"default": {}, "kinetics": {"no_lmhra": True, "temporal_downsample": False}}
    for options in (settings[k] for k in args.settings):
        n = len(b["return_list"])
        ours = BUILDERS[args.backbone](num_frames=args.frames, img_size=args.img, num_classes=400,
                                       mlp_dropout=(0.0,) * n, cls_dropout=0.0, **options)
        ref = official.VisionTransformer(
            input_resolution=args.img, patch_size=b["patch_size"], width=b["width"], layers=b["layers"],
            heads=b["heads"], output_dim=512, t_size=args.frames, return_list=b["return_list"], n_layers=n,
            n_dim=b["width"], n_head=b["heads"], mlp_dropout=[0.0] * n, cls_dropout=0.0, num_classes=400,
            temporal_downsample=options.get("temporal_downsample", True), no_lmhra=options.get("no_lmhra", False))
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, t in ours.state_dict().items():
                if t.dtype.is_floating_point:
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5 if name.endswith("running_var")
                            else 0.02 * torch.randn(t.shape, generator=g))
        ref.load_state_dict(ours.state_dict(), strict=True)  # the same key layout, loaded as is
        ours.to(device).train()
        ref.to(device).train()
        x = torch.randn(args.batches[0], 3, args.frames, args.img, args.img, generator=g).to(device)
        models = {"ours": ours, "official": ref}
        if args.compile:
            models["ours compiled"] = torch.compile(ours)

        def step(m: torch.nn.Module, low: bool) -> torch.Tensor:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=low):
                out = m(x)
            out.float().sum().backward()
            for p in (ours, ref):
                p.zero_grad(set_to_none=True)
            return out.detach().float()

        outs = {name: step(m, False) for name, m in models.items()}  # float32, warm-up (and compilation)
        rel = {name: float((o - outs["official"]).norm() / outs["official"].norm()) for name, o in outs.items()}
        if bf16:
            for m in models.values():  # warm-up in bf16 (a compiled model compiles again)
                step(m, True)
        cpu: dict[str, list[float]] = {name: [] for name in models}
        wall: dict[str, list[float]] = {name: [] for name in models}
        for i in range(args.iters):
            # the order alternates, so that neither model always runs right after the other one's allocations
            for name in list(models) if i % 2 == 0 else list(models)[::-1]:
                if cuda:
                    torch.cuda.synchronize()
                t0, c0 = time.perf_counter(), time.process_time()
                step(models[name], bf16)
                if cuda:
                    torch.cuda.synchronize()
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
        timed = wall if cuda else cpu  # the figure: CPU time on the CPU, wall time on a GPU
        for name in models:
            c, w = statistics.median(timed[name]), statistics.median(wall[name])
            ratio, ratio_min = statistics.median(timed["official"]) / c, min(timed["official"]) / min(timed[name])
            # each iteration's two runs are neighbours in time, under about the same load: the median of their ratios
            ratio_pairs = statistics.median(o / t for o, t in zip(timed["official"], timed[name]))
            rows.append((options, name, c, min(timed[name]), w, ratio, ratio_min, ratio_pairs, rel[name]))
            print(f"{options or 'default'} {name}: {unit} per fwd+bwd {' '.join(f'{v:.3f}' for v in timed[name])} "
                  f"(median {c:.3f}), wall median {w:.3f} s; official/this {ratio:.2f}x by the medians, "
                  f"{ratio_min:.2f}x by the minima, {ratio_pairs:.2f}x the median of the iterations' ratios; "
                  f"relative difference to the official output (float32) {rel[name]:.1e}; "
                  f"load average {os.getloadavg()[0]:.2f}", flush=True)
    where = (f"CUDA ({torch.cuda.get_device_name()}), {'bf16 autocast' if bf16 else 'float32, TF32 off'}" if cuda
             else f"{args.threads} thread(s)")
    print(f"\n{args.backbone} {args.frames}x{args.img}, batch {args.batches[0]}, {where}, "
          f"{args.iters} interleaved iterations (alternating order); load average "
          f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"| options | model | {unit} per fwd+bwd (median) | {unit} (min) | wall s (median) | official / this (median) "
          "| official / this (min) | official / this (median of per-iteration ratios) | rel. diff to official (fp32) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for options, name, c, cmin, w, ratio, ratio_min, ratio_pairs, r in rows:
        opt = ", ".join(f"{k}={v}" for k, v in options.items()) or "default"
        print(f"| {opt} | {name} | {c:.3f} | {cmin:.3f} | {w:.3f} | {ratio:.2f}x | {ratio_min:.2f}x | {ratio_pairs:.2f}x | {r:.1e} |")


def redecoding_greedy(decoder, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding as leap did it before session 55: the whole sequence decoded again at each of the L steps
    (the memory's keys and values projected again each time), then once more for the states. The reference of
    ``--greedy``."""
    from leap_cli.model.heads import IGNORE

    bos = decoder.bos(memory.device)
    prev = bos.expand(memory.shape[0], 1, bos.shape[0])
    with torch.no_grad():
        for _ in range(decoder.spec.max_steps):
            logits = decoder.step_logits(decoder._decode(prev, memory)[:, -1:])
            step = torch.stack([logits[c].argmax(-1) for c in decoder.spec.columns], -1)
            prev = torch.cat([prev, decoder.mask_markers(step, bos)], dim=1)
    h = decoder._decode(prev[:, :-1], memory)
    ids = prev[:, 1:]
    return torch.where(ids == bos, torch.full_like(ids, IGNORE), ids), h


def greedy_side_by_side(args: argparse.Namespace) -> None:
    """A LeapModel with program heads (an EPIC-sized program vocabulary, 16 rows), eval mode, no gradients: the
    forward that ``leap evaluate`` runs, with leap's greedy decoding and with the re-decoding one before it
    (``redecoding_greedy``), timed interleaved in one process (CPU seconds), the order alternating; the decoding
    alone (on the forward's memory) too. The decoded rows must be the same."""
    import os

    from leap_cli.model.leap import build_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    program = {"step_verbs": 98, "objects": 301, "conditions": 64, "max_steps": 16, "hands": 4, "structure": 6}
    model = build_model({"backbone": args.backbone, "num_frames": args.frames, "img_size": args.img,
                         "num_verbs": 97, "num_nouns": 300, "program": program}).eval()
    x = torch.randn(args.batches[0], 3, args.frames, args.img, args.img)
    decoder = model.decoder
    cached = decoder.greedy
    with torch.no_grad():
        feature, tokens = model.encode(x)
        memory = model._memory(feature, tokens)
        a, b = cached(memory), redecoding_greedy(decoder, memory)
    same = torch.equal(a[0], b[0])
    ways = {"cached (leap)": cached, "re-decoding (before)": lambda m: redecoding_greedy(decoder, m)}
    fwd: dict[str, list[float]] = {k: [] for k in ways}
    dec: dict[str, list[float]] = {k: [] for k in ways}
    with torch.no_grad():
        for i in range(args.iters + 1):
            for name in list(ways) if i % 2 == 0 else list(ways)[::-1]:
                decoder.greedy = ways[name]
                c0 = time.process_time()
                model(x)
                c1 = time.process_time()
                ways[name](memory)
                c2 = time.process_time()
                if i:  # (the first round warms up)
                    fwd[name].append(c1 - c0)
                    dec[name].append(c2 - c1)
    decoder.greedy = cached
    new, old = "cached (leap)", "re-decoding (before)"
    print(f"{args.backbone} {args.frames}x{args.img}, batch {args.batches[0]}, {args.threads} thread(s), program heads "
          f"{program}, {args.iters} interleaved iterations; the same rows: {same}; load average "
          f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print("| greedy decoding | CPU-s per forward (median) | CPU-s per decoding (median) | decoding's share of the forward |")
    print("|---|---:|---:|---:|")
    for name in ways:
        f, d = statistics.median(fwd[name]), statistics.median(dec[name])
        print(f"| {name} | {f:.4f} | {d:.4f} | {d / f:.1%} |")
    pairs = lambda t: statistics.median(o / n for o, n in zip(t[old], t[new]))  # noqa: E731
    print(f"before / leap: forward {pairs(fwd):.2f}x, decoding {pairs(dec):.2f}x (medians of the per-iteration ratios)")


def _fmt(r: dict) -> str:
    compiled = f" compiled (compilation {r['compile_s']:.0f} s)" if r.get("compiled") else ""
    return (f"{r['device']:4} {r['backbone']} {r['frames']}x{r['img']} batch {r['batch']:3} {r['mode']:7} "
            f"{r['attention']:5}{compiled}: {r['clips_per_s']:8.3f} clips/s, {r['cpu_s_per_clip']:7.2f} CPU-s/clip, "
            f"peak {r['peak_mib']:8.0f} MiB")


def table(rows: list[dict]) -> str:
    lines = ["| device | batch | mode | SDPA clips/s | plain clips/s | SDPA/plain (wall) | SDPA CPU-s/clip | "
             "plain CPU-s/clip | SDPA peak MiB | plain peak MiB |", "|---|---|---|---|---|---|---|---|---|---|"]
    keyed = {(r["device"], r["batch"], r["mode"], r["attention"]): r for r in rows if not r.get("compiled")}
    for (dev, batch, mode, att), r in keyed.items():
        if att != "sdpa" or (dev, batch, mode, "plain") not in keyed:
            continue
        p = keyed[(dev, batch, mode, "plain")]
        lines.append(f"| {dev} | {batch} | {mode} | {r['clips_per_s']:.3f} | {p['clips_per_s']:.3f} | "
                     f"{r['clips_per_s'] / p['clips_per_s']:.2f}x | {r['cpu_s_per_clip']:.2f} | {p['cpu_s_per_clip']:.2f} | "
                     f"{r['peak_mib']:.0f} | {p['peak_mib']:.0f} |")
    compiled = [r for r in rows if r.get("compiled")]
    for c in compiled:  # the eager row timed just before it, same device and batch
        e = [r for r in rows[:rows.index(c)] if not r.get("compiled") and r["device"] == c["device"]
             and r["batch"] == c["batch"] and r["mode"] == c["mode"] and r["attention"] == c["attention"]][-1]
        lines.append(f"\n{c['device']} batch {c['batch']} {c['mode']}: torch.compile {c['clips_per_s']:.3f} clips/s vs "
                     f"eager {e['clips_per_s']:.3f}: {c['clips_per_s'] / e['clips_per_s']:.2f}x "
                     f"(compilation {c['compile_s']:.0f} s; peak {c['peak_mib']:.0f} vs {e['peak_mib']:.0f} MiB)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="uniformerv2_b16", choices=sorted(BUILDERS), help="backbone builder")
    ap.add_argument("--frames", type=int, default=8, help="frames per clip")
    ap.add_argument("--img", type=int, default=224, help="clip side in pixels")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2], help="CPU batch sizes")
    ap.add_argument("--gpu-batches", type=int, nargs="+", default=[8, 16, 32, 64, 128], help="CUDA batch sizes")
    ap.add_argument("--iters", type=int, default=2, help="timed iterations per configuration (after 1 warm-up)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="cpu, cuda, or both if a GPU exists")
    ap.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    ap.add_argument("--official", type=Path, help="the official slowfast/models/uniformerv2_model.py: time ours "
                    "against it side by side (forward+backward, same weights)")
    ap.add_argument("--settings", nargs="+", default=["default", "kinetics"], choices=["default", "kinetics"],
                    help="with --official: the architectures to compare (default: local blocks + temporal downsample; "
                    "kinetics: no_lmhra, no temporal downsample)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile(ours): with --official beside "
                    "the official code; else forward+backward at --compile-batch against eager")
    ap.add_argument("--compile-batch", type=int, default=32, help="batch of the compiled-vs-eager rows")
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"],
                    help="with --official --device cuda: the timed steps' precision (the outputs are compared in fp32)")
    ap.add_argument("--greedy", action="store_true", help="time the program decoder's greedy decoding (eval "
                    "forward with program heads) against the re-decoding one before session 55, side by side")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.greedy:
        greedy_side_by_side(args)
        return
    if args.official:
        side_by_side(args)
        return
    if args.one:
        print(json.dumps(run_one(*json.loads(args.one))))
        return
    rows = []
    if args.device in ("auto", "cpu"):
        rows += cpu_suite(args)
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        rows += cuda_suite(args)
    print()
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
