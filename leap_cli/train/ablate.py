"""``leap ablate``: the program-supervision ablation on the synthetic kitchen, as one command.

The same tiny model is trained with L_CE only; + L_T; + L_PC; + both (recognition), and, for anticipation
(three 256-frame clips before the action), L_CE only, both program losses without and with the aggregation of
the clips' program predictions (with the true programs only, by default: anticipation epochs cost ~4x). Each cell
runs over several seeds, with programs from three sources:

- ``truth``: the kitchen's true programs (what the videos act out: the ceiling of program supervision);
- ``offline``: the offline generator's programs (``leap generate-programs``, narration-only: no extract stage);
- ``none``: no programs (only the L_CE cells; program losses without programs would repeat them).

Cells that would repeat another are skipped (L_CE only does not depend on the program source). Shards are
built once per source and task and reused by every run; finished runs are reused when the command is run again
(``result.json`` in each run folder). Output: ``WORKDIR/ablation.md`` and ``WORKDIR/ablation.json``, mean ± std
over the seeds of verb / noun / action top-1 (recognition, validation split, last checkpoint), the anticipation
class-mean top-5 recall, and the program metrics (S-Verb, structure, per-step condition F1) when there are any.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from leap_cli.errors import LeapError
from leap_cli.io import atomic_write_json, atomic_write_text, read_jsonl

log = logging.getLogger(__name__)

SOURCES = ("truth", "offline", "none")


class CellInterrupted(Exception):
    """A cell's training stopped on SIGINT/SIGTERM (``signal``: its name): the ablation stops with it, and the
    cell's run, which has no result.json, is trained again by the next ``leap ablate``."""

    def __init__(self, signal: str, run_dir: Path):
        super().__init__(signal)
        self.signal, self.run_dir = signal, run_dir


@dataclass(frozen=True)
class Cell:
    name: str
    task: str  # recognition | anticipation
    source: str
    overrides: tuple[str, ...]


def plan_cells(sources: tuple[str, ...] = SOURCES, anticipation: bool = True,
               anticipation_sources: tuple[str, ...] | None = None) -> list[Cell]:
    """The ablation matrix without duplicate cells (L_CE only once, under the ``none`` source)."""
    ce = ("loss.program_loss=false",)
    cells = [Cell("L_CE", "recognition", "none", ce)]
    with_programs = [s for s in sources if s != "none"]
    for src in with_programs:
        cells += [Cell("+L_T", "recognition", src, ("loss.lambda_pc=0.0",)),
                  Cell("+L_PC", "recognition", src, ("loss.lambda_t=0.0",)),
                  Cell("+L_T+L_PC", "recognition", src, ())]
    if anticipation:
        ant = ("data.task=anticipation", "model.anticipation_context=2")
        cells.append(Cell("L_CE", "anticipation", "none", ant + ce + ("model.anticipation_aggregate=false",)))
        for src in [s for s in with_programs if anticipation_sources is None or s in anticipation_sources]:
            cells += [Cell("+L_T+L_PC", "anticipation", src, ant + ("model.anticipation_aggregate=false",)),
                      Cell("+L_T+L_PC+aggregation", "anticipation", src, ant + ("model.anticipation_aggregate=true",))]
    return cells


def unplanned_anticipation(cfg: "AblateConfig") -> tuple[str, ...]:
    """The ``--anticipation-sources`` that are not among ``--sources``, where none is: the matrix then has no
    anticipation program cell (``--sources offline`` with the default ``truth``: only the L_CE one), which a note
    says."""
    if not cfg.anticipation or cfg.anticipation_sources is None:
        return ()
    if any(s in cfg.sources for s in cfg.anticipation_sources):
        return ()
    return tuple(cfg.anticipation_sources)


@dataclass(frozen=True)
class AblateConfig:
    workdir: Path = Path("leap-work/ablation")
    # 10 videos x 40 segments (280 training, 80 validation clips): with the former 6 x 24 (72 training clips)
    # validation verb top-1 stayed at chance, so no cell could differ from another
    videos: int = 10
    segments_per_video: int = 40
    kitchen_seed: int = 0
    # 64x48 at one frame rate (29.97): a quarter of the pixels and half the frames of 128x96 at the kitchen's
    # 50-60 fps, for the same labels; the clips are 32 px anyway
    width: int = 64
    height: int = 48
    fps: tuple[float, ...] | None = (30000 / 1001,)  # None: the kitchen's own cycle of frame rates
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 24
    # the aggregation cell encodes three clips per sample (~4x the CPU of a recognition run per epoch): 8 epochs
    # keep the default matrix at ~24 min of CPU (~34 with 24); anticipation cells are compared with each other
    anticipation_epochs: int = 8
    frames: int = 4
    short_side: int = 48
    span_frames: int = 256
    sources: tuple[str, ...] = SOURCES
    anticipation: bool = True
    anticipation_sources: tuple[str, ...] | None = ("truth",)  # None: every source with programs
    config: str = "tiny-synthetic-short"  # 4 frames at 32 px, batch 16
    overrides: tuple[str, ...] = ()  # applied to every run

    def kitchen(self):
        """The synthetic kitchen's KitchenConfig (``leap_cli.synth.kitchen``)."""
        from leap_cli.synth.kitchen import KitchenConfig

        return KitchenConfig(videos=self.videos, segments_per_video=self.segments_per_video, seed=self.kitchen_seed,
                             width=self.width, height=self.height, fps=self.fps, audio_in_mp4=False)

    def __post_init__(self):
        bad = sorted(set(self.sources) - set(SOURCES))
        if bad or not self.sources:
            raise LeapError(f"unknown --sources {', '.join(bad)}" if bad else "no program source given (--sources)",
                            fix=f"use some of {', '.join(SOURCES)}, comma-separated")
        fix = f"use 'all' or some of {', '.join(s for s in SOURCES if s != 'none')}"
        given = self.anticipation_sources
        unknown = sorted(set(given or ()) - set(SOURCES))
        if unknown:  # a misspelt source silently dropped its anticipation cells
            raise LeapError(f"unknown --anticipation-sources {', '.join(unknown)}", fix=fix)
        if given is not None and (not given or "none" in given):  # ('none' or ',' ran no anticipation program
            # cell without a word: the anticipation L_CE cell, which does not depend on the programs, runs anyway)
            raise LeapError("no source given to --anticipation-sources" if not given else
                            "--anticipation-sources none adds no cell: the anticipation L_CE cell (no programs) "
                            "runs in every ablation", fix=fix + "; --no-anticipation drops the anticipation cells")
        if len(self.seeds) < 1 or self.epochs < 1 or self.anticipation_epochs < 1:
            raise LeapError("give at least one seed and one epoch")


# ---- the kitchen's true programs: found through this one function ------------------------------------------

TRUTH_FOLDERS = ("_truth", "ground-truth")


def kitchen_truth_file(kitchen: str | Path) -> Path:
    """The synthetic kitchen's per-segment truth (``_truth/segments.jsonl``, formerly ``ground-truth/``)."""
    for folder in TRUTH_FOLDERS:
        p = Path(kitchen) / folder / "segments.jsonl"
        if p.exists():
            return p
    raise LeapError("the kitchen has no truth file", path=Path(kitchen) / TRUTH_FOLDERS[0] / "segments.jsonl",
                    fix="build it with leap demo-data (true programs exist only for the synthetic kitchen)")


def true_program_records(kitchen: str | Path, split: str) -> list[dict]:
    """Program records (as ``leap generate-programs`` writes them) holding the kitchen's true programs."""
    ids = split_ids(kitchen, split)
    return [{"narration_id": t["narration_id"], "status": "valid", "program": t["program"], "errors": []}
            for t in read_jsonl(kitchen_truth_file(kitchen)) if t["narration_id"] in ids and t.get("program")]


def split_ids(kitchen: str | Path, split: str) -> set[str]:
    from leap_cli.epic.annotations import Annotations

    return {s.narration_id for s in Annotations(Path(kitchen) / "annotations").segments(split)}


# ---- preparing the data ------------------------------------------------------------------------------------

def source_workdir(work: Path, source: str) -> Path:
    return work / "sources" / source


def prepare_programs(work: Path, kitchen: Path, source: str, splits=("train", "val")) -> None:
    """Write ``sources/SOURCE/programs/SPLIT.jsonl`` (none: no file, so no sample has a program)."""
    sw = source_workdir(work, source)
    for split in splits:
        out = sw / "programs" / f"{split}.jsonl"
        if source == "none" or source == "truth" and out.exists():
            continue
        if source == "truth":
            out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in true_program_records(kitchen, split)))
        else:
            from leap_cli.programs.generate import GenerateConfig, generate_programs, output_records

            gen = GenerateConfig(workdir=sw, split=split, data=kitchen)
            # a generation stopped part-way (Ctrl-C, an error) leaves the programs made so far: it resumes them
            if out.exists() and split_ids(kitchen, split) <= output_records(gen, programs=False).keys():
                continue
            generate_programs(gen)


def shards_dir(work: Path, source: str, split: str, task: str) -> Path:
    return source_workdir(work, source) / "shards" / (split if task == "recognition" else f"{split}-anticipation")


def prepare_shards(work: Path, kitchen: Path, source: str, task: str, cfg: AblateConfig) -> None:
    from leap_cli.shards.writer import ShardSettings, build_split

    sw = source_workdir(work, source)
    for split in ("train", "val"):
        out = shards_dir(work, source, split, task)
        if (out / "manifest.json").exists():
            continue
        settings = ShardSettings(split=split, task=task, frames=cfg.frames, short_side=cfg.short_side,
                                 context=2 if task == "anticipation" else 0, span_frames=cfg.span_frames)
        build_split(kitchen, split, workdir=sw, settings=settings, out=out,
                    vocab_manifest=shards_dir(work, source, "train", task) / "manifest.json" if split == "val" else None)


# ---- one run -----------------------------------------------------------------------------------------------

# the keys every run sets itself (run_cell's sets): a config file's own values of them reach no run
RUN_KEYS = {"data": ("train", "val"), "train": ("epochs", "seed", "eval_every_epochs", "checkpoint_every")}


def config_file(cfg: AblateConfig) -> Path:
    from leap_cli.resources import bundled_config

    return bundled_config(cfg.config) or Path(cfg.config)


def config_digest(config: Path) -> str:
    """sha256 of a config's sections as a run reads them: its ``base:`` chain merged, comments and layout aside,
    without the keys each run sets itself."""
    from leap_cli.train.config import _read_raw

    raw, _ = _read_raw(config)
    raw = {section: {k: v for k, v in values.items() if k not in RUN_KEYS.get(section, ())}
           if isinstance(values, dict) else values for section, values in raw.items()}

    def plain(v):  # (keys as text: json's sort_keys fails on a mapping of mixed key types)
        return {str(k): plain(x) for k, x in v.items()} if isinstance(v, dict) else \
            [plain(x) for x in v] if isinstance(v, (list, tuple)) else v

    return hashlib.sha256(json.dumps(plain(raw), sort_keys=True, default=str).encode()).hexdigest()


def run_name(cell: Cell, seed: int) -> str:
    return f"{cell.task}-{cell.source}-{cell.name.replace('+', 'plus_')}-seed{seed}"


def run_settings(cell: Cell, cfg: AblateConfig) -> dict:
    """What a run's figures depend on beyond its name (the config file's content aside: ``config_digest``)."""
    from leap_cli.model.leap import POOL_PROGRAM

    epochs = cfg.anticipation_epochs if cell.task == "anticipation" else cfg.epochs
    # a finished run made otherwise is trained again (a rerun with --epochs 3 reused the 2-epoch runs and labelled
    # the table with 3)
    data_keys = ("videos", "segments_per_video", "kitchen_seed", "width", "height", "fps", "frames", "short_side",
                 "span_frames")
    settings = json.loads(json.dumps({"config": str(cfg.config), "epochs": epochs, "overrides": list(cfg.overrides),
                                      "data": {k: v for k, v in asdict(cfg).items() if k in data_keys}}))
    if "model.anticipation_aggregate=true" in cell.overrides:  # the aggregator's program embedding (leap train's
        settings["pool"] = POOL_PROGRAM  # model_args.anticipation.pool): a cell of the earlier pooling is trained again
    return settings


def finished_run(work: Path, cell: Cell, seed: int, cfg: AblateConfig) -> tuple[dict, bool] | None:
    """A finished run to reuse, and whether its config file could be checked (a run of a leap before 2026-12-07
    kept no digest of it); None: no run, or one made with other settings (trained again). A run whose config file
    changed since is refused: reused, it would put the old config's figures in the new one's table."""
    name = run_name(cell, seed)
    done = work / "runs" / name / "result.json"
    if not done.exists():
        return None
    result = json.loads(done.read_text())
    settings = run_settings(cell, cfg)
    stored = result.get("settings")
    if stored is None:  # a result of an earlier leap: reused, but for an aggregation cell, which pooled otherwise
        return None if "pool" in settings else (result, False)
    if {k: v for k, v in stored.items() if k != "config_digest"} != settings:
        log.info("%s: trained with other settings; training it again", name)
        return None
    if "config_digest" not in stored:
        return result, False
    config = config_file(cfg)
    if stored["config_digest"] != config_digest(config):
        bundled = config != Path(cfg.config)
        raise LeapError(f"the config changed since run {name} was trained with it", path=config,
                        fix=f"start over: another --workdir, or delete {work / 'runs'}" + (
                            " (the bundled config changed with leap)" if bundled else
                            "; or put the file back as it was to go on with the finished runs"))
    return result, True


def run_cell(work: Path, kitchen: Path, cell: Cell, seed: int, cfg: AblateConfig) -> dict:
    """Train one cell with one seed (reused when its result.json exists) and score it on the validation split."""
    from leap_cli.epic.annotations import Annotations
    from leap_cli.evaluate.inference import evaluate_run
    from leap_cli.evaluate.scoring import evaluate_scores
    from leap_cli.train.config import load_config
    from leap_cli.train.loop import main

    name = run_name(cell, seed)
    run_dir = work / "runs" / name
    if (reused := finished_run(work, cell, seed, cfg)) is not None:
        return reused[0]
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted run, or one made with other settings: start it again
    settings = run_settings(cell, cfg)
    epochs = settings["epochs"]
    train_dir, val_dir = (shards_dir(work, cell.source, s, cell.task) for s in ("train", "val"))
    config = config_file(cfg)
    settings["config_digest"] = config_digest(config)  # (the file as load_config reads it just below)
    sets = [f"data.train={train_dir}", f"data.val={val_dir}", f"train.epochs={epochs}", f"train.seed={seed}",
            f"train.eval_every_epochs={epochs}", "train.checkpoint_every=0", *cfg.overrides, *cell.overrides]
    t0 = time.perf_counter()
    trained = main(load_config(config, sets), workdir=work, name=name)
    if trained.interrupted:  # not scored nor recorded as done: a rerun trains this cell again
        raise CellInterrupted(trained.interrupted, run_dir)
    scores, _ = evaluate_run(run_dir, "val", workdir=work, checkpoint="last", task=cell.task, shards=val_dir)
    metrics = evaluate_scores(scores, Annotations(kitchen / "annotations"), "val", cell.task)
    result = {"cell": asdict(cell), "seed": seed, "seconds": round(time.perf_counter() - t0, 1),
              "settings": settings, **summarize(metrics)}
    atomic_write_json(run_dir / "result.json", result)
    return result


def summarize(metrics: dict) -> dict:
    """The figures of the table from a metrics.json dict (fractions)."""
    out: dict = {}
    rec = metrics.get("recognition")
    if rec:
        out.update({f"{t}_top1": rec["all"][t]["top1"] for t in ("verb", "noun", "action")})
    ant = metrics.get("anticipation")
    if ant:
        out.update({f"{t}_mt5r": ant["overall"][t]["mt5r"] for t in ("verb", "noun", "action")})
    prog = metrics.get("programs") or {}
    steps = prog.get("steps") or {}
    for k in ("s_verb", "obj_a", "structure"):
        if steps.get(k) is not None:
            out[k] = steps[k]
    sc = prog.get("step_conditions") or {}
    if sc.get("all", {}).get("micro_f1") is not None:
        out["step_cond_f1"] = sc["all"]["micro_f1"]
    return out


# ---- the table ---------------------------------------------------------------------------------------------

COLUMNS = (("verb_top1", "verb top-1"), ("noun_top1", "noun top-1"), ("action_top1", "action top-1"),
           ("verb_mt5r", "ant. verb mT5R"), ("noun_mt5r", "ant. noun mT5R"), ("action_mt5r", "ant. action mT5R"),
           ("s_verb", "S-Verb"), ("structure", "structure"), ("step_cond_f1", "step cond. F1"))


def mean_std(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, sd


def table(results: list[dict]) -> tuple[list[dict], str]:
    """Rows (cell, source, n seeds, mean/std per column, in %) and the markdown table."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        c = r["cell"]
        groups.setdefault((c["task"], c["source"], c["name"]), []).append(r)
    rows = []
    for (task, source, name), rs in groups.items():
        row = {"task": task, "source": source, "cell": name, "seeds": [r["seed"] for r in rs],
               "seconds": round(sum(r["seconds"] for r in rs), 1)}
        for key, _ in COLUMNS:
            vals = [100 * r[key] for r in rs if r.get(key) is not None]
            if vals:
                m, sd = mean_std(vals)
                row[key] = {"mean": round(m, 4), "std": round(sd, 4)}  # (at 2: 2.05 printed 2.0, the log 2.1)
        rows.append(row)
    used = [(k, label) for k, label in COLUMNS if any(k in r for r in rows)]
    head = "| task | programs | losses | seeds | " + " | ".join(label for _, label in used) + " |"
    lines = [head, "|" + "---|" * (4 + len(used))]
    for r in rows:
        # (one seed has no spread: "± 0.0" read as a measured one)
        cells = [(f"{r[k]['mean']:.1f} ± {r[k]['std']:.1f}" if len(r["seeds"]) > 1 else f"{r[k]['mean']:.1f}")
                 if k in r else "" for k, _ in used]
        lines.append(f"| {r['task']} | {r['source']} | {r['cell']} | {len(r['seeds'])} | " + " | ".join(cells) + " |")
    return rows, "\n".join(lines) + "\n\n" + CAPTION + "\n"


CAPTION = ("Validation split of the ablation kitchen, in %, each run's last checkpoint; mean ± standard deviation "
           "over the seeds (one seed: no ±). Top-1: recognition accuracy; ant. mT5R: anticipation class-mean top-5 "
           "recall (EPIC's); S-Verb: the sub-action verb predicted right, row by row over the true program rows; "
           "structure: the structure token (step or loop / conditional / routine marker) right; step cond. F1: "
           "micro F1 of each row's pre- and post-conditions. docs/train.md (leap ablate) and "
           "docs/evaluate-submit.md (Programs) say more.")


def run_ablation(cfg: AblateConfig, on_run: Callable[[str, dict], None] | None = None) -> dict:
    """Build the kitchen, the programs of each source and the shards, run every cell x seed, write the table."""
    from leap_cli.synth.kitchen import build_kitchen

    work = Path(cfg.workdir)
    kitchen = work / "kitchen"
    t0 = time.perf_counter()
    cells = plan_cells(cfg.sources, cfg.anticipation, cfg.anticipation_sources)
    # the finished runs, checked before anything is built or trained (a changed config file is refused here)
    finished = {(cell, seed): finished_run(work, cell, seed, cfg) for cell in cells for seed in cfg.seeds}
    build_kitchen(kitchen, cfg.kitchen())
    for source in sorted({c.source for c in cells}):
        prepare_programs(work, kitchen, source)
        for task in sorted({c.task for c in cells if c.source == source}):
            prepare_shards(work, kitchen, source, task, cfg)
    results, reused, unchecked = [], 0, []
    for cell in cells:
        for seed in cfg.seeds:
            if (done := finished[cell, seed]) is not None:
                r, checked = done
                reused += 1
                if not checked:
                    unchecked.append(run_name(cell, seed))
            else:
                r = run_cell(work, kitchen, cell, seed, cfg)
            results.append(r)
            if on_run:  # ("reused": its "seconds" are those of its training by an earlier leap ablate)
                on_run(f"{cell.task} {cell.source} {cell.name} seed {seed}", {**r, "reused": done is not None})
    rows, md = table(results)
    summary = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
               "seconds": round(time.perf_counter() - t0, 1), "rows": rows, "runs": results}
    atomic_write_json(work / "ablation.json", summary)
    atomic_write_text(work / "ablation.md", md)
    # (not in ablation.json: what this command did, not what the table holds)
    summary.update(markdown=md, reused=reused, unchecked=unchecked)
    return summary
