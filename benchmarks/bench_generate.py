"""Program generation throughput against a local chat-completions server that answers after 50 ms,
and the offline generator's agreement with the synthetic kitchen's true programs.

Throughput: programs/s of the whole stage (prompt building, request, validation, SQLite cache and log,
JSONL append) at concurrency 1, 8, 32, 64, as a fraction of the bound concurrency / latency.
Target: >= 80% of the bound at concurrency 32.

Agreement: the offline generator over a synthetic kitchen (8 videos x 24 segments), from narration-only
records and from descriptor records of ``leap extract`` (narration, objects and hands; and all five components).

    python benchmarks/bench_generate.py [--latency 0.05] [--segments-per-slot 12] [--agreement-only]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from leap_cli.epic.annotations import Annotations  # noqa: E402
from leap_cli.io import read_jsonl  # noqa: E402
from leap_cli.programs.agreement import aggregate, compare_programs  # noqa: E402
from leap_cli.programs.generate import GenerateConfig, generate_programs  # noqa: E402
from leap_cli.programs.offline import offline_program  # noqa: E402
from leap_cli.programs.prompt import clip_info, load_exemplars, narration_record  # noqa: E402
from programs_llm_server import Reply, ScriptedServer, narration_id_of  # noqa: E402

DATA = ROOT / "tests" / "data" / "epic"
CLASSES = ROOT / "tests" / "data" / "epic100"


def make_annotations(folder: Path, n: int) -> None:
    """``n`` validation segments: the EPIC excerpt's rows repeated under new narration ids."""
    folder.mkdir(parents=True)
    for name in ("EPIC_100_verb_classes.csv", "EPIC_100_noun_classes.csv"):
        shutil.copy(CLASSES / name, folder / name)
    with open(DATA / "EPIC_100_validation_excerpt.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(folder / "EPIC_100_validation.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for i in range(n):
            r = dict(rows[i % len(rows)])
            r["video_id"] = f"P01_{100 + i // 50}"
            r["narration_id"] = f"{r['video_id']}_{i}"
            w.writerow(r)


def _serve(programs: dict, latency: float, port_queue, stop_event) -> None:
    with ScriptedServer(lambda body, k: Reply(programs[narration_id_of(body)], delay=latency)) as server:
        port_queue.put(server.base_url)
        stop_event.wait()


class ServerProcess:
    """The scripted server in its own process, so that it does not share the client's GIL."""

    def __init__(self, programs: dict, latency: float):
        import multiprocessing as mp

        ctx = mp.get_context("fork")
        self._q, self._stop = ctx.Queue(), ctx.Event()
        self._p = ctx.Process(target=_serve, args=(programs, latency, self._q, self._stop), daemon=True)

    def __enter__(self):
        self._p.start()
        self.base_url = self._q.get(timeout=30)
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._p.join(timeout=10)


def throughput(latency: float, per_slot: int, levels: list[int]) -> list[dict]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    try:
        n = max(levels) * per_slot
        make_annotations(tmp / "kitchen" / "annotations", n)
        ann = Annotations(tmp / "kitchen" / "annotations")
        ex = load_exemplars()
        programs = {s.narration_id: json.dumps(offline_program(clip_info(narration_record(s), s), ex, ann.verbs, ann.nouns))
                    for s in ann.segments("val")}
        rows = []
        os.environ["BENCH_KEY"] = "sk-bench"
        with ServerProcess(programs, latency) as server:
            for c in levels:
                work = tmp / f"c{c}"
                work.mkdir()
                (work / "kitchen").symlink_to(tmp / "kitchen")
                count = min(n, max(c * per_slot, 40))
                cfg = GenerateConfig(workdir=work, split="val", backend="openai", model="bench", base_url=server.base_url,
                                     api_key_env="BENCH_KEY", concurrency=c, timeout=10, limit=count)
                marks = {}
                s = generate_programs(cfg, on_start=lambda _: marks.update(t0=time.perf_counter(), c0=time.process_time()))
                seconds = time.perf_counter() - marks["t0"]
                cpu_ms = (time.process_time() - marks["c0"]) / count * 1000
                assert s.statuses.get("valid") == count, s.statuses
                rate = count / seconds
                bound = c / latency
                rows.append({"concurrency": c, "programs": count, "seconds": round(seconds, 2),
                             "programs_per_s": round(rate, 1), "bound": round(bound, 1), "fraction": round(rate / bound, 3),
                             "client_cpu_ms_per_program": round(cpu_ms, 2)})
                print(f"concurrency {c:3d}: {count} programs in {seconds:.2f}s = {rate:.1f}/s, bound {bound:.0f}/s, "
                      f"{rate / bound:.1%} of bound; client CPU {cpu_ms:.2f} ms/program "
                      f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)", flush=True)
        return rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# records the offline generator reads: none (narration-only, no ``descriptors/``) or these extract components
RECORDS = {"narration-only": (), "descriptors": ("narration", "objects", "hands"),
           "all-five": ("narration", "audio", "camera", "objects", "hands")}


def kitchen_agreement() -> dict:
    """Offline programs vs the kitchen's true ones, from narration-only records (no ``descriptors/``) and
    from descriptor records of ``leap extract`` (``RECORDS``)."""
    from leap_cli.extract.runner import ExtractConfig, run_extract
    from leap_cli.synth.kitchen import KitchenConfig, build_kitchen

    tmp = Path(tempfile.mkdtemp(prefix="bench-agree-"))
    try:
        build_kitchen(tmp / "kitchen", KitchenConfig(videos=8, segments_per_video=24, width=64, height=48))
        ann = Annotations(tmp / "kitchen" / "annotations")
        truth = {t["narration_id"]: t["program"] for t in read_jsonl(tmp / "kitchen" / "ground-truth" / "segments.jsonl")}
        splits = [s for s in ("train", "val") if ann.has_split(s)]
        out = {}
        for records, components in RECORDS.items():
            work = tmp / records
            work.mkdir()
            (work / "kitchen").symlink_to(tmp / "kitchen")
            if components:
                for split in splits:
                    run_extract(ExtractConfig(data=tmp / "kitchen", split=split, out=work / "descriptors" / f"{split}.jsonl",
                                              components=components))
            pairs, statuses = [], {}
            for split in splits:
                generate_programs(GenerateConfig(workdir=work, split=split))
                for r in read_jsonl(work / "programs" / f"{split}.jsonl"):
                    statuses[r["status"]] = statuses.get(r["status"], 0) + 1
                    if r["program"]:
                        pairs.append(compare_programs(r["program"], truth[r["narration_id"]], ann.verbs, ann.nouns))
            agg = aggregate(pairs)
            agg["statuses"] = statuses
            out[records] = agg
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency", type=float, default=0.05, help="server reply delay in seconds")
    ap.add_argument("--segments-per-slot", type=int, default=12, help="programs per unit of concurrency")
    ap.add_argument("--levels", default="1,8,32,64", help="concurrency levels")
    ap.add_argument("--skip-agreement", action="store_true", help="only measure throughput")
    ap.add_argument("--agreement-only", action="store_true", help="only measure the offline generator's agreement")
    args = ap.parse_args()
    if not args.agreement_only:
        rows = throughput(args.latency, args.segments_per_slot, [int(x) for x in args.levels.split(",")])
        at32 = next((r["fraction"] for r in rows if r["concurrency"] == 32), None)
        if at32 is not None:
            print(f"at concurrency 32: {at32:.1%} of the bound (target >= 80%): {'PASS' if at32 >= 0.8 else 'FAIL'}")
    if not args.skip_agreement:
        for records, agg in kitchen_agreement().items():
            print(f"offline vs kitchen truth ({records} records):", json.dumps(agg))


if __name__ == "__main__":
    main()
