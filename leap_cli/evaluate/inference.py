"""Multi-view inference of a trained run over the shards of a split: the scores file of ``leap evaluate``.

Inputs (contracts in the project brief):

- the run: ``runs/NAME/checkpoints/{best,last}.pt`` loaded with ``leap_cli.train.checkpoint.load_model``
  (``(model, checkpoint)``; ``checkpoint["model_args"]`` holds ``program`` head sizes and ``anticipation``, and the
  input ``mean``/``std`` the run was trained with: the model normalises the uint8 clips itself, so evaluation
  uses the training normalisation);
- the shards: ``{workdir}/shards/{split}/`` (anticipation: ``{split}-anticipation/``) read with ``leap_cli.shards.dataset.ShardDataset(folder, train=False,
  num_frames=, img_size=, temporal_views=, spatial_views=)`` and ``collate_clips``; a batch holds ``video``
  ``[B,3,T,H,W]`` or, with V = temporal x spatial views > 1, ``[B,V,3,T,H,W]`` (anticipation adds
  ``context_video`` ``[B,(V,)C,3,T,H,W]`` and ``context_mask`` ``[B,C]``), ``narration_id``, labels,
  ``program_steps``/``conditions``/``has_program`` targets and ``padding``.

Views: every segment is scored on each of the V views; verb and noun **logits** are averaged over the views
(the scores stay raw logits, as a submission needs), condition probabilities (sigmoid) are averaged, and the
program is decoded greedily on the central view (middle temporal clip, middle spatial crop): the model's
``forward`` without targets decodes greedily, so the argmax of its step logits are ``predict_program``'s ids.

Output: the scores dict of ``leap_cli.evaluate.scores`` (with the program truth of the shards so that
``leap evaluate --scores`` can recompute program metrics).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from leap_cli.common import RAISE_OPEN_FILES, counted, resolve_run  # noqa: F401 (resolve_run: its old home)
from leap_cli.errors import LeapError
from leap_cli.io import ShardReaders

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ViewConfig:
    """Evaluation views per segment: ``temporal`` clips x ``spatial`` crops."""

    temporal: int = 1
    spatial: int = 1

    @property
    def count(self) -> int:
        return self.temporal * self.spatial

    @property
    def center(self) -> int:
        """Index of the central view in the shards reader's order (temporal-major, then crops)."""
        return (self.temporal // 2) * self.spatial + self.spatial // 2


def _flatten_views(batch: dict, views: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    video = batch["video"]
    ctx, cmask = batch.get("context_video"), batch.get("context_mask")
    if video.ndim == 5:
        return video, ctx, cmask
    b, v = video.shape[:2]
    if v != views:
        raise LeapError(f"the shards reader gave {v} views per segment, {views} were asked for")
    video = video.flatten(0, 1)  # [B*V,3,T,H,W]
    if ctx is not None:
        ctx = ctx.flatten(0, 1) if ctx.ndim == 7 else ctx.repeat_interleave(v, dim=0)  # [B*V,C,3,T,H,W]
        cmask = cmask.repeat_interleave(v, dim=0) if cmask is not None else None
    return video, ctx, cmask


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolved_precision(precision: str, device: torch.device | str) -> str:
    """``auto``: bf16 on CUDA, fp32 elsewhere (what scores.pt's ``meta.precision`` records: it said ``auto``)."""
    if precision not in PRECISIONS:
        raise LeapError(f"unknown precision {precision!r}", fix=f"use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return precision


def _autocast(device: torch.device, precision: str):
    """Scores are returned in fp32 whatever the precision (``resolved_precision``)."""
    precision = resolved_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@contextlib.contextmanager
def _fp32_heads(model: torch.nn.Module):
    """Run the verb and noun classifiers in fp32 under autocast: bf16 logits carry 8 bits of mantissa and tie
    often (see docs/evaluate-submit.md), so the scores that get ranked are computed at full precision."""
    heads = [m for m in (getattr(model, "verb_head", None), getattr(model, "noun_head", None))
             if isinstance(m, torch.nn.Linear)]

    def fp32(linear: torch.nn.Linear):
        def forward(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device_type=x.device.type, enabled=False):
                bias = None if linear.bias is None else linear.bias.float()
                return torch.nn.functional.linear(x.float(), linear.weight.float(), bias)
        return forward

    for m in heads:
        m.forward = fp32(m)
    try:
        yield
    finally:
        for m in heads:
            del m.forward  # back to the class's forward


def _pad_rows(x: torch.Tensor | None, rows: int) -> torch.Tensor | None:
    """``x`` with its first dimension filled up to ``rows`` by repeating its last row."""
    if x is None or x.shape[0] >= rows:
        return x
    return torch.cat([x, x[-1:].expand(rows - x.shape[0], *x.shape[1:])])


@torch.no_grad()
def predict(model: torch.nn.Module, batches: Iterable[dict], *, views: ViewConfig = ViewConfig(),
            device: str | torch.device = "cpu", program: bool = True, precision: str = "fp32",
            end_ids: list[int] | None = None, on_batch: Callable[[int], None] | None = None,
            compile: bool = False, targets: bool = True) -> dict:
    """Run ``model`` over ``batches`` and return a scores dict (views averaged, padding rows dropped).

    ``compile``: run ``torch.compile(model)`` (the same scores, to float rounding). It is compiled once, around the
    fp32 classifiers; a batch smaller than the first (the last one) is filled up to its size with copies of its
    last clip, whose outputs are dropped, so that one compiled graph serves every batch of a recognition model.
    (An anticipation model's context mask (``nonzero``) splits its graph and recompiles as the masks change:
    it runs correctly, and the figures in RESULTS are for recognition only.) ``targets``: keep the shards'
    program targets beside the predictions (False where their vocabulary is not the model's)."""
    device = torch.device(device)
    model.eval().to(device)
    _autocast(device, precision)  # refuse an unknown precision before reading any shard
    ids: list[str] = []
    verbs, nouns, steps, conds, t_steps, t_conds, has = [], [], [], [], [], [], []
    step_conds, t_step_conds = [], []
    first = None  # rows of the first batch (compile)
    from leap_cli.shards.dataset import workers_end_on_stop

    with _fp32_heads(model), workers_end_on_stop():
        runner = torch.compile(model) if compile else model
        for batch in batches:
            video, ctx, cmask = _flatten_views(batch, views.count)
            b = len(batch["narration_id"])
            v = video.shape[0] // b
            rows = video.shape[0]
            if compile:
                first = first or rows
                video, ctx, cmask = (_pad_rows(t, first) for t in (video, ctx, cmask))
            video = video.to(device)
            ctx = ctx.to(device) if ctx is not None else None
            cmask = cmask.to(device) if cmask is not None else None
            with _autocast(device, precision):
                out = runner(video, context_video=ctx, context_mask=cmask)
            if video.shape[0] != rows:
                out = {k: t[:rows] for k, t in out.items()}
            keep = ~batch["padding"].bool() if "padding" in batch else torch.ones(b, dtype=torch.bool)
            verbs.append(out["verb"].float().view(b, v, -1).mean(1).cpu()[keep])  # [B,V_verbs]
            nouns.append(out["noun"].float().view(b, v, -1).mean(1).cpu()[keep])
            ids += [n for n, k in zip(batch["narration_id"], keep.tolist()) if k]
            if program and "conditions" in out:
                conds.append(torch.sigmoid(out["conditions"].float()).view(b, v, -1).mean(1).cpu()[keep])
                # forward() without program_steps decodes greedily; the argmax of its step logits are the greedy
                # ids, so the central view's program costs no second backbone pass
                centre = views.center if v > 1 else 0
                core = getattr(model, "module", model)
                pred = core.decoder.ids_from_logits(out)  # marker columns and rows after END: -100, as the targets
                steps.append(pred.view(b, v, *pred.shape[1:])[:, centre].cpu()[keep])  # [B,L,K]
                if "step_conditions" in out:
                    sc = torch.sigmoid(out["step_conditions"].float())
                    step_conds.append(sc.view(b, v, *sc.shape[1:])[:, centre].cpu()[keep])  # [B,L,2P]
                if targets and "program_steps" in batch:
                    t_steps.append(batch["program_steps"][keep])
                    t_conds.append(batch["conditions"][keep])
                    has.append(batch["has_program"].bool()[keep])
                    if "step_conditions" in batch:
                        t_step_conds.append(batch["step_conditions"][keep])
            if on_batch:
                on_batch(int(keep.sum()))
    if not ids:
        raise LeapError("the shards yielded no segments", fix="check the shards folder and its manifest")
    scores: dict = {"narration_id": ids, "verb_output": torch.cat(verbs), "noun_output": torch.cat(nouns)}
    if steps:
        prog: dict = {"steps": torch.cat(steps), "conditions": torch.cat(conds)}
        if step_conds:
            prog["step_conditions"] = torch.cat(step_conds)
        if t_steps:
            prog.update(target_steps=torch.cat(t_steps), target_conditions=torch.cat(t_conds),
                        has_program=torch.cat(has))
            if t_step_conds and step_conds:
                prog["target_step_conditions"] = torch.cat(t_step_conds)
        if end_ids is not None:
            prog["end_ids"] = list(end_ids)
        scores["program"] = prog
    return scores


def end_ids_from_model_args(model_args: dict) -> list[int] | None:
    """The END triple of the program heads: the last step verb and the last object (see programs.targets)."""
    prog = model_args.get("program")
    if not prog:
        return None
    return [int(prog["step_verbs"]) - 1, int(prog["objects"]) - 1, int(prog["objects"]) - 1]


def shard_batches(folder: str | Path, model_args: dict, views: ViewConfig, *, batch_size: int = 4,
                  workers: int = 0) -> tuple[Iterable[dict], int]:
    """A DataLoader over the evaluation views of a shards folder and its number of segments."""
    from leap_cli.shards.dataset import Guarded, ShardDataset, check_context, loader_workers, shard_loader

    folder = Path(folder)
    if not (folder / "manifest.json").exists():
        from leap_cli.shards.format import load_manifest

        load_manifest(folder)  # --shard parts: which are missing (as train says); none: the command that builds them
    ds = ShardDataset(folder, train=False, num_frames=int(model_args["num_frames"]),
                      img_size=int(model_args["img_size"]), temporal_views=views.temporal,
                      spatial_views=views.spatial, rank=0, world_size=1, batch_size=batch_size)
    check_context(ds, int((model_args.get("anticipation") or {}).get("context") or 0),
                  None, folder)
    workers = loader_workers(workers, "--workers", samples=len(ds), batch_size=batch_size)
    return Guarded(shard_loader(ds, batch_size=batch_size, workers=workers), "--workers"), len(ds)


def _warn_trained_on(provenance: dict | None, keys: list[str], folder: Path, split: str) -> None:
    """Warn where segments about to be scored are among those the run trained on (a run trained on train + val
    for the challenge, evaluated on val): its figures are not held out."""
    from leap_cli.shards.format import trained_segments

    trained, folders = trained_segments(provenance)
    seen = [k for k in keys if k in trained]
    if seen:
        log.warning("%d of the %d %s segments in %s are among those the run trained on (%s; e.g. %s): their figures "
                    "are not held out", len(seen), len(keys), split, folder, " + ".join(folders), seen[0])


def _manifest_task(folder: Path) -> str | None:
    import json

    path = folder / "manifest.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text()).get("task")
    except (OSError, ValueError):
        return None  # the shards reader reports a broken manifest with its own message


def _same_timing(run_timing: dict | None, manifest: dict, folder: Path) -> None:
    """Warn where anticipation shards observe otherwise than the run's training shards did (another --tau-a: the
    figures are for another anticipation time; another span or context mode: another observation before it;
    `leap submit` checks the challenge's 1 s itself)."""
    from leap_cli.shards.dataset import anticipation_timing, same_timing, timing_change, timing_text

    timing = anticipation_timing(manifest)
    if run_timing and timing and not same_timing(run_timing, timing):
        log.warning("%s: these shards observe otherwise than the run's training shards (%s; training: %s): the figures "
                    "are for %s than the model learnt", folder, timing_text(timing), timing_text(run_timing),
                    timing_change(timing, run_timing))


def _same_targets(run_targets: dict | None, shard_targets: dict | None, folder: Path, split: str, task: str) -> bool:
    """Whether the shards' program targets are in the run's vocabulary (the one its training shards had); if not
    (shards built against other training shards), they cannot be compared with its predictions: said once, and
    the program figures are left out (verb, noun and action scores do not depend on it)."""
    if not run_targets or not shard_targets or run_targets == shard_targets:
        return True
    flag = " --task anticipation" if task == "anticipation" else ""
    log.warning("%s: the shards' program vocabulary is not the one the run trained with (they were built against "
                "other training shards): program figures left out, verb/noun/action scores unaffected; to have them, "
                "rebuild with leap build-shards --split %s%s --vocab <the run's training shards>/manifest.json --force",
                folder, split, flag)
    return False


def evaluate_run(run: str | Path, split: str, *, workdir: str | Path, checkpoint: str = "best",
                 task: str | None = None, shards: str | Path | None = None, views: ViewConfig = ViewConfig(),
                 batch_size: int | None = None, workers: int = 0, device: str = "cpu", precision: str = "auto",
                 allow_partial: bool = False, compile: bool | None = None, out: str | Path | None = None,
                 on_start: Callable[[int], None] | None = None,
                 on_batch: Callable[[int], None] | None = None,
                 check: Callable[[dict, list[str], Path, Path], None] | None = None) -> tuple[dict, Path]:
    """Load the run's checkpoint, score every segment of ``{workdir}/shards/{split}`` on all views and write
    ``scores.pt`` into ``out`` (default ``runs/NAME/eval/{split}``: the file ``leap submit`` is pointed at; a
    trial evaluation writes elsewhere and leaves it alone). Returns (scores, scores path). ``compile``:
    torch.compile the model (None: as the run's config says, ``model.compile``). A second evaluation into the
    same folder while this one runs is refused (it would write the same scores.pt, perhaps of another checkpoint).
    ``check(model_args, narration_ids, checkpoint, shards)``: called before the model runs, with the shards' ids."""
    from leap_cli.io import OutputLock

    folder = Path(out) if out is not None else Path(run) / "eval" / split
    with OutputLock(folder, fix="wait for it to finish (it writes the same scores.pt), or give this one another --out"):
        return _score_run(run, split, workdir=workdir, checkpoint=checkpoint, task=task, shards=shards, views=views,
                          batch_size=batch_size, workers=workers, device=device, precision=precision,
                          allow_partial=allow_partial, compile=compile, out=folder / "scores.pt",
                          on_start=on_start, on_batch=on_batch, check=check)


def _score_run(run: str | Path, split: str, *, workdir: str | Path, checkpoint: str, task: str | None,
               shards: str | Path | None, views: ViewConfig, batch_size: int | None, workers: int, device: str,
               precision: str, allow_partial: bool, compile: bool | None, out: Path,
               on_start: Callable[[int], None] | None, on_batch: Callable[[int], None] | None,
               check: Callable[[dict, list[str], Path, Path], None] | None = None) -> tuple[dict, Path]:
    from leap_cli.evaluate.scores import save_scores
    from leap_cli.train.checkpoint import load_model, resolve_checkpoint
    from leap_cli.train.config import resolve_aliases

    run_dir = Path(run)
    named = checkpoint in ("best", "last")
    source = resolve_checkpoint(run_dir, checkpoint) if named else Path(checkpoint)
    scored = source.stem if named else str(checkpoint)  # "last" when best fell back to last.pt
    model, ckpt = load_model(source, map_location="cpu", allow_partial=allow_partial)
    config = resolve_aliases(ckpt.get("config") or {}, str(source))
    if compile is None:
        compile = bool((config.get("model") or {}).get("compile", False))
    run_task = (config.get("data") or {}).get("task", "recognition")
    task = task or run_task
    if task != run_task:
        own, model_of = run_dir / "eval" / split, f"{'an' if run_task[0] in 'aeiou' else 'a'} {run_task} model"
        if out.parent.resolve() == own.resolve():  # what `leap submit` is pointed at: the run's own task's scores
            raise LeapError(f"evaluating {model_of} as {task} would replace its {run_task} scores in {own}",
                            fix="pass --out DIR for this evaluation")
        log.warning("evaluating %s as %s", model_of, task)
    from leap_cli.shards.format import build_command
    from leap_cli.shards.writer import default_out

    if shards:
        folder = Path(shards)
    else:
        folder = default_out(workdir, split, task)
    with ShardReaders(folder):  # held until the scores are made: build-shards --force would delete them
        manifest_task = _manifest_task(folder)
        if manifest_task and manifest_task != task:
            raise LeapError(f"the shards are for {manifest_task}, the evaluation is for {task}", path=folder,
                            fix=f"build {task} shards ({build_command(default_out(workdir, split, task))}) or pass "
                                "--shards DIR")
        batch_size = batch_size or int((config.get("data") or {}).get("eval_batch_size", 4))
        batches, total = shard_batches(folder, ckpt["model_args"], views, batch_size=batch_size, workers=workers)
        same_targets = _same_targets(ckpt.get("targets"), batches.dataset.manifest.get("targets"), folder, split, task)
        _same_timing(ckpt.get("shards_timing"), batches.dataset.manifest, folder)
        keys = [k for sh in batches.dataset.manifest["shards"] for k in sh["keys"]]
        _warn_trained_on(ckpt.get("provenance"), keys, folder, split)
        if check is not None:  # (not after the scoring of a whole split)
            check(ckpt["model_args"], keys, source, folder)
        if on_start:
            on_start(total)
        scores = predict(model, batches, views=views, device=device, program=True, precision=precision,
                         end_ids=end_ids_from_model_args(ckpt["model_args"]), on_batch=on_batch, compile=compile,
                         targets=same_targets)
    if len(scores["narration_id"]) != total:  # (scores of part of the split: every figure of it would be off)
        raise LeapError(f"scored {len(scores['narration_id'])} segments, the shards manifest lists {total}",
                        path=folder, fix=f"a DataLoader worker lost a batch (a 'Too many open files' above: "
                                         f"{RAISE_OPEN_FILES}, or give fewer --workers), or the shards changed "
                                         "while they were read; then run the same command again")
    skipped = batches.dataset.manifest.get("skipped") or []
    if skipped:  # (on test nothing else says so before leap submit refuses the scores)
        first = skipped[0]
        log.warning("%s %s skipped by build-shards and %s no scores (listed in %s under skipped; e.g. %s: %s)%s",
                    counted(len(skipped), "segment"), "was" if len(skipped) == 1 else "were",
                    "has" if len(skipped) == 1 else "have", folder / "manifest.json", first.get("narration_id"),
                    str(first.get("reason", "")).split(" (")[0],
                    f": leap submit needs every test segment; fix {'its video' if len(skipped) == 1 else 'their videos'}"
                    f" (leap info checks {'it' if len(skipped) == 1 else 'them'}) and run build-shards again, which "
                    "retries a segment once its video changed" if split == "test" else "")
    meta = {"split": split, "task": task, "run": str(run_dir),
            "checkpoint": scored,
            "views": {"temporal": views.temporal, "spatial": views.spatial}, "step": int(ckpt.get("step", 0)),
            "precision": resolved_precision(precision, device), "compile": compile,
            # what the model was trained on (the run's provenance.json, as its checkpoint holds it; None: unknown)
            "provenance": ckpt.get("provenance"),
            # the segments build-shards skipped (metrics tell them from rows the shards lack altogether)
            "skipped": [str(s.get("narration_id")) for s in skipped if isinstance(s, dict)]}
    if task == "anticipation":  # (leap submit checks it against the challenge's 1 s)
        meta["tau_a"] = float((batches.dataset.manifest.get("settings") or {}).get("tau_a", 1.0))
    # the metrics of the scores about to be replaced go first: a stop before the new ones are written (they are
    # computed from the scores saved here) left new scores beside the old scores' metrics
    (out.parent / "metrics.json").unlink(missing_ok=True)
    saved = save_scores(out, scores["narration_id"], scores["verb_output"], scores["noun_output"],
                        program=scores.get("program"), meta=meta)
    return saved, out
