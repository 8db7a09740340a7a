"""The whole pipeline in one go, on the synthetic kitchen: the stages as the user would run them, then one summary.

Each stage runs as its own ``leap`` command (the files between stages are the only interface), and each resumes
on its own, so running the demo again reuses what is done: the kitchen is not rebuilt, finished descriptors and
programs are skipped, complete shards are kept, a finished training run is resumed as a no-op (evaluation and
submit run again). The demo's own settings (kitchen size and seed, training config and overrides, frames) are kept
in ``WORKDIR/demo.settings.json``: a rerun with others is refused before any stage runs (they would mix a kitchen
of one size with descriptors and a run of another), unless ``force``, which starts every stage's output over.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from leap_cli.common import counted
from leap_cli.errors import LeapError
from leap_cli.resources import bundled_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    workdir: Path = Path("leap-work")
    videos: int = 8
    segments: int = 48
    seed: int = 0
    config: Path | None = None  # training config; default: the bundled tiny-synthetic
    train_overrides: tuple[str, ...] = ()
    workers: int = 1
    frames: int = 8
    short_side: int = 80
    ablate: bool = False  # also run `leap ablate` (~20 min on 2 CPU cores) into WORKDIR/ablation
    force: bool = False  # start every stage's output over (each stage's --force)

    def settings(self) -> dict:
        """What the demo's outputs depend on (not --workers, --ablate or --force)."""
        return {"videos": self.videos, "segments": self.segments, "seed": self.seed,
                "config": str(self.config or default_config().stem), "train_overrides": list(self.train_overrides),
                "frames": self.frames, "short_side": self.short_side}


def check_demo(cfg: DemoConfig) -> DemoConfig:
    """Refuse, before any stage runs, what the stages would fail on late or mix silently: another demo's work
    directory (other settings), a kitchen too small to train on or to have a test split. Returns the config to
    run: with ``force`` where the work directory's kitchen was built by another leap (another KITCHEN_VERSION:
    demo-data rebuilds it, and the records made from the old one would be resumed into, then refused by
    build-shards, "sources.annotations differ", run after run)."""
    from leap_cli.io import check_settings
    from leap_cli.synth.kitchen import (KITCHEN_VERSION, TRUNCATED_SEGMENTS, KitchenConfig, assign_videos,
                                    built_version, read_marker)
    from leap_cli.train.config import load_config

    if cfg.videos < 3:
        raise LeapError(f"--videos {cfg.videos}: the kitchen has a test split (and so a submission) from 3 videos on",
                        fix="pass --videos 3 or more")

    def usable(segments: int) -> tuple[int, int]:  # (training segments with frames, those past the end)
        k = KitchenConfig(videos=cfg.videos, seed=cfg.seed, segments_per_video=segments)
        lost = k.segments_past_end().get("train", 0)  # the truncated video's: build-shards skips them
        return sum(v.split == "train" for v in assign_videos(k)) * segments - lost, lost

    kitchen = KitchenConfig(videos=cfg.videos, seed=cfg.seed, segments_per_video=cfg.segments)
    have, lost = usable(cfg.segments)
    batch = load_config(cfg.config or default_config(), list(cfg.train_overrides)).data.batch_size
    if have < batch:
        # (more segments per video can put more of the truncated video's past its end: "or more" must hold too)
        need = next(n for n in range(cfg.segments + 1, cfg.segments + batch + TRUNCATED_SEGMENTS + 2)
                    if all(usable(m)[0] >= batch for m in range(n, max(n, TRUNCATED_SEGMENTS + 1) + 1)))
        raise LeapError(f"--videos {cfg.videos} --segments {cfg.segments} give {have} training segments with frames"
                        + (f" (at least {lost} more of the kitchen's truncated video lie past its end)" if lost else "")
                        + f", fewer than one batch (data.batch_size={batch})",
                        fix=f"pass --segments {need} or more, or --set data.batch_size={max(1, have)}")
    check_settings(cfg.workdir / "demo", cfg.settings(), force=cfg.force, remove=lambda: None,
                   exists=(cfg.workdir / "kitchen").exists(), option="--force (every stage)", elsewhere="--workdir",
                   names={"videos": "--videos", "segments": "--segments", "seed": "--seed", "config": "--config",
                          "train_overrides": "--set", "frames": "--frames", "short_side": "--short-side"})
    marker = None if cfg.force else read_marker(cfg.workdir / "kitchen")
    if marker is not None:
        made, version = marker.get("hash"), built_version(marker)
        if made is not None and made != kitchen.hash():
            was = f"kitchen version {version}" if version is not None else "another kitchen version"
            log.warning("%s was built by another leap (%s; this leap's is %d): it is rebuilt, and every stage after "
                        "it starts over, as with --force (the LLM reply cache is kept)", cfg.workdir / "kitchen",
                        was, KITCHEN_VERSION)
            cfg = replace(cfg, force=True)
    if cfg.force:
        start_over(cfg.workdir)
    return cfg


# What the demo's extract and generate-programs stages write (their --force starts over only for other settings:
# a kitchen rebuilt with another seed kept the old seed's records, then 31 of 32 programs failed validation). The
# stages after them start over through their own --force. The LLM reply cache is never removed (paid calls).
DEMO_RECORDS = [("descriptors", split) for split in ("train", "val", "test")] + [
    ("programs", split) for split in ("train", "val")]


def start_over(workdir: Path) -> None:
    """Remove the records and the frame cache the demo's stages wrote into ``workdir`` (``--force``)."""
    import shutil

    from leap_cli.io import settings_path

    for folder, split in DEMO_RECORDS:
        base = workdir / folder / f"{split}.jsonl"
        for p in (base, settings_path(base), base.with_name(f"{split}.report.json"),
                  base.with_name(f"{split}.report.html")):
            p.unlink(missing_ok=True)
    shutil.rmtree(workdir / "frame-cache", ignore_errors=True)  # entries keyed by narration id: another kitchen's


@dataclass
class StageRun:
    name: str
    argv: list[str]
    outputs: tuple[Path, ...] = ()  # what the stage writes: all there before and untouched after = done earlier
    seconds: float = 0.0
    returncode: int | None = None
    reused: bool = False  # the stage found its work done (its outputs were there and it changed none of them)


def _stamps(paths: tuple[Path, ...]) -> list[tuple[int, int] | None]:
    """(size, mtime_ns) of each path, None where it is missing."""
    out = []
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            out.append(None)
            continue
        out.append((st.st_size, st.st_mtime_ns))
    return out


def default_config() -> Path:
    """The bundled tiny-synthetic config."""
    return bundled_config("tiny-synthetic")


def submission_levels(train_cfg) -> dict[str, int] | None:
    """The SLS levels of the demo's model (docs/evaluate-submit.md): PT 0 (random initialisation); TL 4 with the
    program heads and losses (targets from the descriptors' hand-object boxes), 3 without either; TD 3 (the train
    split), 4 where ``data.train`` names the train and val shards' folders (``WORKDIR/shards/val``: their
    names, as the shards are not built yet). None with ``model.pretrained``: the level of those weights is not
    known here."""
    from leap_cli.common import SPLIT_NAMES, normalize_split

    if train_cfg.model.pretrained:
        return None
    given = train_cfg.data.train
    folders = [given] if isinstance(given, str) else list(given or ["train"])
    splits = {normalize_split(Path(str(f)).name) for f in folders if Path(str(f)).name.lower() in SPLIT_NAMES}
    return {"--sls-pt": 0, "--sls-tl": 4 if train_cfg.loss.program_loss and train_cfg.model.program_heads else 3,
            "--sls-td": 4 if {"train", "val"} <= splits else 3}


def plan(cfg: DemoConfig) -> list[StageRun]:
    from leap_cli.train.config import load_config

    w = str(cfg.workdir)
    config = cfg.config or default_config()
    run_name = config.stem
    run_dir = cfg.workdir / "runs" / run_name
    force = ["--force"] if cfg.force else []
    work = cfg.workdir
    from leap_cli.synth.kitchen import MARKER

    stages = [StageRun("demo-data", ["demo-data", "--out", f"{w}/kitchen", "--videos", str(cfg.videos),
                                     "--segments", str(cfg.segments), "--seed", str(cfg.seed), *force],
                       (work / "kitchen" / MARKER,))]
    for split in ("train", "val", "test"):
        stages.append(StageRun(f"extract {split}", ["extract", "--split", split, "--workdir", w,
                                                   "--workers", str(cfg.workers),
                                                   # the frame cache at the shards' settings: build-shards reads it
                                                   "--cache-frames", str(cfg.frames),
                                                   "--cache-short-side", str(cfg.short_side), *force],
                               (work / "descriptors" / f"{split}.jsonl",)))
    for split in ("train", "val"):
        stages.append(StageRun(f"generate-programs {split}", ["generate-programs", "--split", split, "--workdir", w,
                                                             *force], (work / "programs" / f"{split}.jsonl",)))
    stages.append(StageRun("validate-programs train", ["validate-programs", f"{w}/programs/train.jsonl",
                                                       "--workdir", w, "--html", f"{w}/programs/train.report.html"]))
    # (the summary's val row too gives the statuses checked again against the labels, not the stored ones)
    stages.append(StageRun("validate-programs val", ["validate-programs", f"{w}/programs/val.jsonl", "--workdir", w]))
    for split in ("train", "val", "test"):
        stages.append(StageRun(f"build-shards {split}", ["build-shards", "--split", split, "--workdir", w,
                                                        "--frames", str(cfg.frames), "--short-side", str(cfg.short_side),
                                                        "--workers", str(cfg.workers), *force],
                               (work / "shards" / split / "manifest.json",)))
    train = ["train", "--config", str(config), "--workdir", w, "--name", run_name]  # (the run collect() reads)
    for o in cfg.train_overrides:
        train += ["--set", o]
    if cfg.force:
        train.append("--force")
    elif (run_dir / "checkpoints" / "last.pt").exists():
        train.append("--resume")
    stages.append(StageRun("train", train, (run_dir / "checkpoints" / "last.pt",)))
    stages.append(StageRun("evaluate val", ["evaluate", "--split", "val", "--run", str(run_dir), "--workdir", w]))
    stages.append(StageRun("evaluate test", ["evaluate", "--split", "test", "--run", str(run_dir), "--workdir", w]))
    levels = submission_levels(load_config(config, list(cfg.train_overrides)))
    if levels is not None:  # (pretrained weights: their level is not the demo's to declare; no submission)
        stages.append(StageRun("submit", ["submit", "--scores", str(run_dir / "eval" / "test" / "scores.pt"),
                                          "--task", "recognition", "--workdir", w, "--out", f"{w}/submission.zip",
                                          *(x for k, v in levels.items() for x in (k, str(v)))]))
    if cfg.ablate:
        stages.append(StageRun("ablate", ["ablate", "--workdir", f"{w}/ablation"]))
    return stages


STOP_GRACE = 5.0  # s a stage has to stop by itself after the demo was interrupted (Ctrl-C reaches both)


def run_stage(stage: StageRun) -> StageRun:
    """Run one stage as ``python -m leap_cli ...``; its own progress and summary go to the terminal. If the demo
    is stopped (Ctrl-C reaches the stage too; ``kill PID``, ``timeout`` or a job runner may signal the demo
    alone), the stage gets ``STOP_GRACE`` seconds to stop as it does on Ctrl-C, then SIGTERM (training saves
    last.pt first), and the demo waits for it before stopping; a demo killed by SIGKILL sends it SIGTERM."""
    import signal

    from leap_cli.common import die_with_parent

    t = time.perf_counter()
    before = _stamps(stage.outputs)
    demo = os.getpid()
    # a demo killed outright (SIGKILL) leaves no stage running on its own: the stage gets SIGTERM and stops
    # as on Ctrl-C (training saves last.pt)
    proc = subprocess.Popen([sys.executable, "-m", "leap_cli", *stage.argv],
                            preexec_fn=lambda: die_with_parent(signal.SIGTERM, demo))
    try:
        proc.wait()
    except KeyboardInterrupt:
        _stop(proc)
        raise
    stage.seconds = time.perf_counter() - t
    stage.returncode = proc.returncode
    stage.reused = bool(stage.outputs) and None not in before and _stamps(stage.outputs) == before
    if proc.returncode != 0:
        raise LeapError(f"stage `leap {' '.join(stage.argv)}` failed with exit code {proc.returncode}",
                        record=stage.name, fix="see its message above; fix it and run the demo again (done work is kept)")
    return stage


def _stop(proc: subprocess.Popen) -> None:
    import signal

    for send, wait in ((None, STOP_GRACE), (signal.SIGTERM, 120.0), (signal.SIGKILL, 10.0)):
        if send is not None:
            proc.send_signal(send)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
        except KeyboardInterrupt:  # asked again: stop it at once
            proc.kill()
            proc.wait()
            return


def _jsonl(path: Path) -> list[dict]:
    from leap_cli.io import read_jsonl

    return read_jsonl(path) if path.exists() else []


def collect(cfg: DemoConfig) -> list[tuple[str, str, str]]:
    """(stage, output, figures) rows read back from the files each stage wrote."""
    w = cfg.workdir
    rows: list[tuple[str, str, str]] = []
    from leap_cli.epic.annotations import open_annotations
    from leap_cli.programs.provenance import made_by

    ann = open_annotations(w)
    counts = {s: len(ann.segments(s)) for s in ("train", "val", "test")}
    rows.append(("demo-data", f"{w}/kitchen", ", ".join(f"{s} {n}" for s, n in counts.items()) + " segments"))
    for split in ("train", "val", "test"):
        recs = _jsonl(w / "descriptors" / f"{split}.jsonl")
        figures = [counted(len(recs), "record")]
        for status in ("ok", "unavailable", "error"):
            n = {c: sum(r["components"].get(c, {}).get("status") == status for r in recs)
                 for c in ("narration", "audio", "camera", "objects", "hands")}
            if any(n.values()):
                figures.append(f"{status}: " + ", ".join(f"{c} {k}" for c, k in n.items() if k))
        rows.append((f"extract {split}", f"{w}/descriptors/{split}.jsonl", "; ".join(figures)))
    for split in ("train", "val"):
        recs = _jsonl(w / "programs" / f"{split}.jsonl")
        status: dict[str, int] = {}
        for r in recs:
            status[r["status"]] = status.get(r["status"], 0) + 1
        report = w / "programs" / f"{split}.report.json"
        checked = ""
        programs_file = w / "programs" / f"{split}.jsonl"
        if report.exists() and programs_file.exists() and report.stat().st_mtime >= programs_file.stat().st_mtime:
            # validate-programs' statuses (checked again, with the labels), not the stored ones
            rep = json.loads(report.read_text())
            status = {k: v for k, v in rep.get("statuses", {}).items() if v}
            checked = " as validate-programs checked them"
        backend = {made_by(r)[0] for r in recs} - {None}
        cov = status.get("valid", 0) / max(1, counts[split])
        rows.append((f"programs {split}", f"{w}/programs/{split}.jsonl",
                     f"{', '.join(f'{k} {v}' for k, v in sorted(status.items()))}{checked}; coverage {cov:.0%} "
                     f"({'/'.join(sorted(backend)) or '?'} backend)"))
    for split in ("train", "val", "test"):
        m = w / "shards" / split / "manifest.json"
        if m.exists():
            man = json.loads(m.read_text())
            n = man.get("counts", {}).get("samples", man.get("num_samples", "?"))
            skipped = man.get("counts", {}).get("skipped")
            samples = counted(n, "sample") if isinstance(n, int) else f"{n} samples"
            rows.append((f"shards {split}", str(m.parent), f"{samples} in {counted(len(man.get('shards', [])), 'shard')}"
                         + (f"; {counted(skipped, 'segment')} skipped (listed with their reasons in the manifest)"
                            if skipped else "")))
    config = cfg.config or default_config()
    run_dir = w / "runs" / config.stem
    history = _jsonl(run_dir / "metrics.jsonl")
    vals = [r for r in history if r.get("split") == "val"]
    trains = [r for r in history if r.get("split") == "train"]
    if trains:
        last = vals[-1] if vals else {}
        rows.append(("train", str(run_dir), f"{counted(trains[-1]['step'], 'step')}, last loss {trains[-1]['loss']:.3f}"
                     + (f"; val at the end: verb {last['verb_top1']:.1f}%, noun {last['noun_top1']:.1f}%, "
                        f"action {last['action_top1']:.1f}% top-1" if last else "")))
    for split in ("val",):
        mfile = run_dir / "eval" / split / "metrics.json"
        if mfile.exists():
            m = json.loads(mfile.read_text())
            meta = m.get("meta") or {}
            # the checkpoint chosen by validation action top-1 (best.pt), not the run's last state of the row above
            which = f" ({meta['checkpoint']}.pt, step {meta['step']})" if "checkpoint" in meta and "step" in meta else ""
            # ("segments": those scored; the split holds them and the not scored)
            unscored = (f"; {m['not_scored']} of the split's {m['segments'] + m['not_scored']} segments not scored"
                        if m.get("not_scored") else "")
            rows.append((f"evaluate {split}{which}", str(mfile), _metrics_text(m) + unscored))
    sub = w / "submission.zip"
    if sub.exists():
        rows.append(("submit", str(sub), f"{sub.stat().st_size / 1024:.0f} KiB, test segments {counts['test']}"))
    abl = w / "ablation" / "ablation.json"
    if cfg.ablate and abl.exists():  # a table left by an earlier --ablate run is not this run's
        rows.append(("ablate", str(abl.with_suffix(".md")), ablation_text(json.loads(abl.read_text()))))
    base = str(w).rstrip("/") + "/"
    return [(stage, out[len(base):] if out.startswith(base) else out, figures) for stage, out, figures in rows]


def ablation_text(summary: dict) -> str:
    """Validation verb top-1 (mean ± std over seeds; one seed: no ±) of each recognition cell of ``leap ablate``'s
    ablation.json."""
    rows = [r for r in summary.get("rows", []) if r.get("task") == "recognition" and "verb_top1" in r]
    cells = [f"{r['source']} {r['cell']} {r['verb_top1']['mean']:.1f}%"
             + (f" ± {r['verb_top1']['std']:.1f}" if len(r.get("seeds", [])) > 1 else "") for r in rows]
    seeds = max((len(r.get("seeds", [])) for r in summary.get("rows", [])), default=0)
    return (f"val verb top-1 over {seeds} seed{'s' if seeds != 1 else ''}: " + "; ".join(cells)) if cells else \
        "no recognition cells"


def _metrics_text(m: dict) -> str:
    """verb/noun/action top-1 from the ``recognition.all`` block of ``leap evaluate``'s metrics.json."""
    overall = (m.get("recognition") or {}).get("all") or {}
    return ", ".join(f"{kind} top-1 {100 * overall[kind]['top1']:.1f}%" for kind in ("verb", "noun", "action")
                     if kind in overall) or "no recognition metrics"
