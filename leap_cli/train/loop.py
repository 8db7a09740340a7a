"""The training loop: ``train_one_epoch``, ``evaluate``, ``main`` (in the torchvision-references shape).

``main(cfg, workdir=..., name=...)`` builds the model from the shards' vocabulary, trains with AdamW + cosine
schedule, evaluates each epoch, and writes ``runs/NAME/``:

    config.yaml            the resolved config
    provenance.json        the shards trained and validated on, and what made their programs (``record_provenance``)
    checkpoints/last.pt    every train.checkpoint_every optimizer steps, each epoch and at the end
    checkpoints/best.pt    best validation action top-1 (anticipation: action class-mean top-5 recall)
    metrics.jsonl          one line per log interval ("split": "train") and per validation ("split": "val")
    tensorboard/           when the tensorboard package is installed

Resume (``resume=True``) reloads last.pt: weights, optimizer, schedule, scaler, RNG states and the data position
(epoch, micro-batches consumed), so the run continues as if it had never stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import numpy as np
import torch
from torch import nn

from leap_cli.common import NEXT_RUN, RAISE_OPEN_FILES, counted
from leap_cli import signals
from leap_cli.errors import LeapError
from leap_cli.io import OutputLock, ShardReaders, atomic_write_text, read_jsonl, settings_changes, shell_word
from leap_cli.train import distributed
from leap_cli.train.checkpoint import copy_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from leap_cli.train.config import Config, backbone_options, dump_config, resolve_aliases
from leap_cli.train.optim import CosineWithWarmup, build_optimizer

log = logging.getLogger(__name__)

Batch = dict[str, Any]
StepCallback = Callable[[dict], None]


class DataSource(Protocol):
    """What the loop needs from the data (``leap_cli.train.data.ShardSource`` reads shards)."""

    num_verbs: int
    num_nouns: int
    program_targets: dict | None      # manifest "targets": max_steps, step_verbs, objects, conditions
    batches_per_epoch: int            # micro-batches per process per epoch (equal on every rank)
    # optional: {"train"|"val": {"shards", "programs"}} for provenance.json (None or absent: unknown, no file)
    provenance: dict | None

    def train_batches(self, epoch: int, skip: int = 0) -> Iterator[Batch]: ...  # the epoch from its batch skip
    def val_batches(self) -> Iterable[Batch] | None: ...


@dataclass
class TrainState:
    step: int = 0                  # optimizer steps done
    epoch: int = 0                 # current epoch
    batches: int = 0               # micro-batches consumed in the current epoch
    best_metric: float = -1.0
    best_step: int | None = None   # the step best.pt holds
    history: list = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def model_args_for(cfg: Config, source: DataSource) -> dict:
    """The ``build_model`` arguments (plain types) from the config and the data's vocabulary."""
    from leap_cli.model.leap import POOL_PROGRAM

    program = None
    targets = source.program_targets
    if cfg.model.program_heads and cfg.loss.program_loss and targets:
        program = {"step_verbs": len(targets["step_verbs"]), "objects": len(targets["objects"]),
                   "conditions": len(targets["conditions"]), "max_steps": int(targets["max_steps"])}
        if targets.get("structure"):  # token rows that keep the program (programs.targets)
            program.update(hands=len(targets["hands"]), structure=len(targets["structure"]))
    anticipation = None
    if cfg.data.task == "anticipation":
        anticipation = {"context": cfg.model.anticipation_context,
                        "aggregate": bool(cfg.model.anticipation_aggregate and program is not None),
                        "pool": POOL_PROGRAM}  # (not the rows after its END: build_model's default is the
        # POOL_BEFORE_THE_KEY of the checkpoints written before, which a resume or evaluation of theirs keeps)
    args = {"backbone": cfg.model.backbone, "num_frames": cfg.model.num_frames, "img_size": cfg.model.img_size,
            "num_verbs": int(source.num_verbs), "num_nouns": int(source.num_nouns), "program": program,
            "anticipation": anticipation}
    if cfg.model.grad_checkpointing:
        args["grad_checkpointing"] = True
    from leap_cli.train.config import DATA_SET

    for key, what in DATA_SET.items():  # (the same value is harmless: a run begun with it resumes)
        if key in cfg.model.options and cfg.model.options[key] != args[key]:
            raise LeapError(f"config key 'model.options.{key}': {cfg.model.options[key]!r} where {what} give "
                            f"{args[key]!r}: it is set there, not by model.options (remove it)", record="model")
    args.update(backbone_options(cfg.model))  # weight family (architecture, normalisation) + model.options
    return with_normalisation(args)


def with_normalisation(model_args: dict) -> dict:
    """``model_args`` with the input normalisation the model uses, also where no weight family or option set it
    (the builder's default, CLIP's): every checkpoint says how its clips were normalised. A checkpoint of a leap
    before 2026-12-04 lacks it where it was the default; compared through this, it resumes. Likewise an
    anticipation model's program pooling (``anticipation.pool``, the builder's "all" where a checkpoint lacks it)."""
    from leap_cli.model.leap import POOL_BEFORE_THE_KEY
    from leap_cli.model.uniformerv2 import CLIP_MEAN, CLIP_STD

    args = {**model_args, "mean": list(model_args.get("mean", CLIP_MEAN)),
            "std": list(model_args.get("std", CLIP_STD))}
    if isinstance(args.get("anticipation"), dict):
        args["anticipation"] = {"pool": POOL_BEFORE_THE_KEY, **args["anticipation"]}
    return args


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast on CUDA by default, float32 on the CPU."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def forward_loss(model: nn.Module, batch: Batch, cfg: Config) -> tuple[torch.Tensor, dict, dict]:
    """One forward pass and LEAP's loss: ``(loss, parts, outputs)``."""
    from leap_cli.model.losses import leap_loss

    kwargs = {}
    if "program_steps" in batch and cfg.loss.program_loss:
        kwargs["program_steps"] = batch["program_steps"]
        kwargs["labels"] = (batch["verb_class"], batch["noun_class"])
    if "context_video" in batch:
        kwargs["context_video"] = batch["context_video"]
        kwargs["context_mask"] = batch["context_mask"]
    outputs = model(batch["video"], **kwargs)
    loss, parts = leap_loss(outputs, batch, lambda_t=cfg.loss.lambda_t, lambda_pc=cfg.loss.lambda_pc,
                            condition_pos_weight=cfg.loss.condition_pos_weight,
                            label_smoothing=cfg.loss.label_smoothing, program_loss=cfg.loss.program_loss)
    return loss, parts, outputs


def _float(x: Any) -> float:
    return float(x.detach()) if torch.is_tensor(x) else float(x)


def train_one_epoch(model: nn.Module, batches: Iterator[Batch], optimizer: torch.optim.Optimizer,
                    scheduler: CosineWithWarmup, scaler: torch.amp.GradScaler, cfg: Config,
                    state: TrainState, info: distributed.DistInfo, *, total_steps: int,
                    batches_per_epoch: int, stop_at_step: int | None = None,
                    on_step: StepCallback | None = None,
                    on_checkpoint: Callable[[], None] | None = None,
                    should_stop: Callable[[], bool] | None = None) -> bool:
    """Run optimizer steps over ``batches`` (already advanced to ``state.batches``) until the epoch ends,
    ``total_steps`` or ``stop_at_step`` is reached. Returns False when paused by ``stop_at_step`` or by
    ``should_stop`` (a signal), checked at each step boundary."""
    model.train()
    accum = cfg.optim.accum_steps
    device = info.device
    window: dict[str, float] = {}
    clips = 0
    clipped = 0
    t0 = time.perf_counter()
    while state.batches + accum <= batches_per_epoch:
        if state.step >= total_steps:
            return True
        if stop_at_step is not None and state.step >= stop_at_step:
            return False
        if should_stop is not None and should_stop():
            return False
        optimizer.zero_grad(set_to_none=True)
        for micro in range(accum):
            try:
                batch = next(batches)
            except LeapError:  # (a DataLoader worker died, a damaged shard): at a step boundary, last.pt is saved
                if micro == 0 and on_checkpoint is not None:  # as a stop's, which --resume goes on from exactly
                    on_checkpoint()
                raise
            except StopIteration:
                raise LeapError(f"the training data ran out after {state.batches} of {batches_per_epoch} "
                                f"batches in epoch {state.epoch}",
                                fix="the shards changed while training (rebuild them or start a new run), or a "
                                    f"DataLoader worker lost a batch (a 'Too many open files' above: "
                                    f"{RAISE_OPEN_FILES}, or fewer data.num_workers, then --resume)") from None
            batch = to_device(batch, device)
            ddp = getattr(model, "_orig_mod", model)  # under torch.compile
            sync = micro == accum - 1 or not isinstance(ddp, nn.parallel.DistributedDataParallel)
            ctx = contextlib.nullcontext() if sync else ddp.no_sync()
            with ctx:
                with autocast_context(device, cfg.train.precision):
                    loss, parts, _ = forward_loss(model, batch, cfg)
                if not torch.isfinite(loss):
                    raise LeapError(f"loss is {loss.item()} at step {state.step + 1}",  # (the step it computes)
                                    fix="lower optim.lr" + ("" if cfg.optim.grad_clip > 0 else ", enable optim.grad_clip")
                                        + ", or check the data")
                scaler.scale(loss / accum).backward()
            state.batches += 1
            clips += batch["video"].shape[0] * info.world_size
            window["loss"] = window.get("loss", 0.0) + _float(loss) / accum
            for k, v in parts.items():
                window[k] = window.get(k, 0.0) + _float(v) / accum
        scaler.unscale_(optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if cfg.optim.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
            clipped += int(_float(norm) > cfg.optim.grad_clip)
        else:
            norm = torch.nn.utils.clip_grad_norm_(params, float("inf"))
        window["grad_norm"] = window.get("grad_norm", 0.0) + _float(norm)
        scaler.step(optimizer)
        scaler.update()
        lr = scheduler.get_last_lr()  # the lr this step applied (logged with it; step() sets the next step's)
        scheduler.step()
        state.step += 1
        window["n"] = window.get("n", 0) + 1
        if state.step % max(1, cfg.train.log_every) == 0 or state.step == total_steps:
            elapsed = time.perf_counter() - t0
            n = window.pop("n")
            rec = {"split": "train", "step": state.step, "epoch": state.epoch,
                   **{k: round(v / n, 6) for k, v in window.items()},
                   "lr": lr, "clips_per_s": round(clips / max(elapsed, 1e-9), 3),
                   "clipped_steps": clipped}
            state.history.append(rec)
            if on_step:
                on_step(rec)
            window, clips, clipped, t0 = {}, 0, 0, time.perf_counter()
        elif on_step:
            on_step({"split": "train", "step": state.step, "epoch": state.epoch, "loss": _float(loss),
                     "lr": lr, "partial": True})
        if on_checkpoint and cfg.train.checkpoint_every > 0 and state.step % cfg.train.checkpoint_every == 0:
            on_checkpoint()
    return True


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Batch], cfg: Config, info: distributed.DistInfo, *,
             should_stop: Callable[[], bool] | None = None) -> dict | None:
    """Validation loss and verb / noun / action top-1 and top-5, summed over processes. Action top-1 (verb and
    noun both right) equals EPIC's official action top-1: the best pair of the softmax product is the pair of
    the two argmaxes. Anticipation adds the challenge's class-mean top-5 recall (``*_mt5r``, leap evaluate's
    ``anticipation_metrics`` over the scores of all processes). ``n`` counts labelled samples, ``seen`` all samples.
    None where ``should_stop()`` held before a batch (one process only: ranks agree on a stop in collectives)."""
    model.eval()
    sums = {"seen": 0.0, "n": 0.0, "loss": 0.0, "verb": 0.0, "noun": 0.0, "action": 0.0, "verb5": 0.0, "noun5": 0.0}
    kept: dict[str, list] = {"verb": [], "noun": [], "verb_class": [], "noun_class": []}  # anticipation
    for batch in batches:
        if should_stop is not None and should_stop():
            return None
        batch = to_device(batch, info.device)
        sums["seen"] += batch["verb_class"].shape[0]
        with autocast_context(info.device, cfg.train.precision):
            loss, _, out = forward_loss(model, batch, cfg)
        verb, noun = batch["verb_class"], batch["noun_class"]
        keep = (verb >= 0) & (noun >= 0)
        if not keep.any():
            continue
        vt = out["verb"].float()[keep].topk(min(5, out["verb"].shape[1]), dim=1).indices
        nt = out["noun"].float()[keep].topk(min(5, out["noun"].shape[1]), dim=1).indices
        v_ok, n_ok = vt[:, 0] == verb[keep], nt[:, 0] == noun[keep]
        sums["n"] += float(keep.sum())
        sums["loss"] += _float(loss) * float(keep.sum())
        sums["verb"] += float(v_ok.sum())
        sums["noun"] += float(n_ok.sum())
        sums["action"] += float((v_ok & n_ok).sum())
        sums["verb5"] += float((vt == verb[keep, None]).any(1).sum())
        sums["noun5"] += float((nt == noun[keep, None]).any(1).sum())
        if cfg.data.task == "anticipation":
            kept["verb"].append(out["verb"].float()[keep].cpu().numpy())
            kept["noun"].append(out["noun"].float()[keep].cpu().numpy())
            kept["verb_class"].append(verb[keep].cpu().numpy())
            kept["noun_class"].append(noun[keep].cpu().numpy())
    keys = list(sums)
    totals = dict(zip(keys, distributed.all_reduce_sum([sums[k] for k in keys], info)))
    n = totals["n"]
    if n == 0:
        return {"n": 0, "seen": int(totals["seen"])}
    out = {"n": int(n), "seen": int(totals["seen"]), "loss": totals["loss"] / n, "verb_top1": 100 * totals["verb"] / n,
           "noun_top1": 100 * totals["noun"] / n, "action_top1": 100 * totals["action"] / n,
           "verb_top5": 100 * totals["verb5"] / n, "noun_top5": 100 * totals["noun5"] / n}
    if cfg.data.task == "anticipation":
        out.update(_mean_top5_recall(kept, info))
    return out


def _mean_top5_recall(kept: dict[str, list], info: distributed.DistInfo) -> dict:
    """``{"verb_mt5r", "noun_mt5r", "action_mt5r"}`` (percent) of the labelled validation samples of all processes."""
    from leap_cli.evaluate.metrics import anticipation_metrics

    mine = {k: np.concatenate(v) for k, v in kept.items() if v}
    parts = [mine]
    if info.distributed:
        parts = [None] * info.world_size
        torch.distributed.all_gather_object(parts, mine)
    arrays = {k: np.concatenate([p[k] for p in parts if k in p]) for k in kept}
    m = anticipation_metrics(arrays["verb"], arrays["noun"], arrays["verb_class"], arrays["noun_class"],
                             [""] * len(arrays["verb_class"]), tail_verbs=(), tail_nouns=(), unseen_participants=())
    return {f"{t}_mt5r": 100 * m["overall"][t]["mt5r"] for t in ("verb", "noun", "action")}


CHECKPOINTS = ("last.pt", "best.pt")  # what a run saves in runs/NAME/checkpoints/


class _Metrics:
    """metrics.jsonl (append; on resume, lines past the checkpoint's step are dropped) + optional TensorBoard."""

    def __init__(self, run_dir: Path, resume_step: int | None, resume_epoch: int = 0):
        self.path = run_dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            # a truncated last line (killed mid-write) is dropped by read_jsonl; lines past the checkpoint are
            # redone, and so is the validation of an epoch the checkpoint had not finished (written at the
            # epoch's last step, before the epoch-end checkpoint: a kill between the two wrote it twice)
            kept = [r for r in read_jsonl(self.path) if r.get("step", 0) <= resume_step
                    and not (r.get("split") == "val" and r.get("epoch", 0) >= resume_epoch)]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:
            pass

    def write(self, rec: dict) -> None:
        # strict JSON: a value that is not finite (an fp16 step's infinite gradient norm, which the scaler skips)
        # is null, not the Infinity or NaN that jq and other strict parsers refuse
        line = json.dumps({k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in rec.items()},
                          allow_nan=False)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        if self.tb is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self.tb.add_scalar(f"{rec['split']}/{k}", v, rec["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    epochs: int
    best_metric: float
    last_eval: dict
    history: list
    seconds: float
    model_args: dict
    is_main: bool = True               # False on DDP ranks > 0 (they print and write nothing)
    interrupted: str | None = None     # "SIGINT"/"SIGTERM"/"SIGHUP": stopped at a step boundary, last.pt saved
    best_key: str = "action_top1"      # the validation figure that picks best.pt (BEST_METRIC of the task)
    provenance: dict | None = None     # what runs/NAME/provenance.json holds (None: the source did not say)


class GracefulStop:
    """SIGINT/SIGTERM/SIGHUP (Ctrl-C, Slurm preemption, a closed terminal) ask the loop to stop at the next
    optimizer-step boundary, where
    it saves a resumable last.pt and returns. A second signal stops at once (KeyboardInterrupt). Handlers are
    only installed in the main thread and restored on exit. Under DDP the ranks agree on the stop (all-reduce
    of the flag at each step), so no rank waits in a collective that the others left."""

    SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")  # (SIGHUP: a dropped ssh session; left alone where nohup ignores it)
    # The same signal this soon after the first is the same stop (leap_cli.signals): torchrun forwards its own
    # signal to the ranks, so a rank gets two at once (it stopped at once, without last.pt, in half of the tries)
    SAME_STOP_SECONDS = signals.SAME_STOP_SECONDS  # SIGTERM, and a rank's own signal after another rank's stop
    SAME_SIGINT_SECONDS = signals.SAME_SIGINT_SECONDS

    def __init__(self, info: distributed.DistInfo):
        self.info = info
        self.received: str | None = None
        self._at = 0.0
        self._peer = False  # the stop came from another rank (the all-reduce), not yet from this rank's own signal
        self._old: dict = {}
        self._pid = os.getpid()

    def _handle(self, signum, frame) -> None:
        import signal

        if os.getpid() != self._pid:  # a DataLoader worker forked with this handler: the trainer decides
            return
        name = signal.Signals(signum).name
        if self.received is not None:
            window = self.SAME_STOP_SECONDS if self._peer or name != "SIGINT" else self.SAME_SIGINT_SECONDS
            if (self._peer or name == self.received) and time.monotonic() - self._at < window:
                if self._peer:  # this rank's own signal names its exit status (130 for SIGINT, 143 for SIGTERM)
                    self.received, self._peer = name, False
                return
            raise KeyboardInterrupt
        self.received, self._at = name, time.monotonic()
        if self.info.is_main:  # (every rank of a torchrun gets the signal: said once)
            log.warning("%s received: stopping at the next step boundary and saving checkpoints/last.pt "
                        "(%s)", self.received,
                        f"Ctrl-C, or {name} again after {self.SAME_STOP_SECONDS:g} s, stops at once"
                        if name != "SIGINT" else f"send it again after {self.SAME_SIGINT_SECONDS:g} s to stop at once")

    def __enter__(self) -> "GracefulStop":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:  # (nohup's SIGHUP; a background
                    # job's SIGINT: a Ctrl-C meant for the foreground job stopped the training)
                    self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    def __call__(self) -> bool:
        flag = self.received is not None
        if self.info.world_size > 1 and torch.distributed.is_initialized():
            # the signal travels with the flag (0 none, 1 SIGINT, 2 SIGTERM; the highest wins): every rank stops
            # for the signal that was sent, and exits with its status
            t = torch.tensor([float(self.SIGNALS.index(self.received) + 1) if flag else 0.0], device=self.info.device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            if t.item() > 0 and self.received is None:  # another rank was signalled: this rank's own signal, a
                # moment later, is the same stop
                self.received, self._at, self._peer = self.SIGNALS[int(t.item()) - 1], time.monotonic(), True
                if self.info.is_main:
                    log.warning("%s received by another rank: stopping at the next step boundary and saving "
                                "checkpoints/last.pt", self.received)
            return t.item() > 0
        return flag


def shard_folders(cfg: Config, workdir: Path) -> tuple[list[Path], Path | None]:
    """The training shards folders (``data.train``: one or a list, as a challenge run names the train and val
    shards) and the validation folder (``data.val``), else build-shards' defaults."""
    suffix = "-anticipation" if cfg.data.task == "anticipation" else ""  # leap build-shards' default folders
    given = cfg.data.train
    train = ([Path(given)] if isinstance(given, str) else [Path(f) for f in given] if given
             else [workdir / "shards" / f"train{suffix}"])
    val = None if cfg.data.val == "" else Path(cfg.data.val) if cfg.data.val else workdir / "shards" / f"val{suffix}"
    if cfg.data.val and not val.exists():  # (a typo trained without validation and best.pt, with a warning only)
        raise LeapError("data.val names no such folder", path=val,
                        fix=f"build them (leap build-shards --workdir {shell_word(workdir)} --split val"
                            f"{' --task anticipation' if suffix else ''} --out {shell_word(val)}), fix the path, or "
                            "set data.val=\"\" to train without validation")
    return train, val


def default_source(cfg: Config, workdir: Path, info: distributed.DistInfo) -> DataSource:
    from leap_cli.train.data import ShardSource

    return ShardSource(*shard_folders(cfg, workdir), cfg, info)


def main(cfg: Config, *, workdir: str | Path = "leap-work", name: str = "run", resume: bool = False,
         stop_at_step: int | None = None, source: DataSource | None = None,
         on_step: StepCallback | None = None, on_eval: StepCallback | None = None,
         on_start: Callable[[dict], None] | None = None, force: bool = False) -> TrainResult:
    """Train ``cfg`` into ``{workdir}/runs/{name}``. ``stop_at_step`` pauses after that many optimizer steps
    (the schedule still spans the whole run; continue with ``resume=True``). A resume under a config that
    changes the results is refused, naming the keys (``RESUME_MAY_CHANGE`` lists those that may change);
    ``force`` starts the run over instead. SIGINT/SIGTERM save last.pt at the next step boundary and return
    with ``interrupted`` set."""
    t_start = time.perf_counter()
    NEXT_RUN.pop("train", None)  # (until this run has started)
    workdir = Path(workdir)
    run_dir = workdir / "runs" / name
    ckpt_dir = run_dir / "checkpoints"
    unstarted_note = None
    if resume and not (ckpt_dir / "last.pt").exists():
        if not run_dir.is_dir():
            # no run of this name: a job stopped before its run folder was made (in its first seconds, while torch
            # is imported and the config, weights and shards are checked; the folder of a start that did not get
            # that far is removed), requeued with --resume, was refused at every requeue. Started from step 0, as
            # the field's trainers do (detectron2's resume, Lightning's ckpt_path="last"); the warning names the
            # runs that are there, in case --name or --workdir is not the run's
            runs = sorted(p.parent.parent.name for p in (workdir / "runs").glob("*/checkpoints/last.pt"))
            unstarted_note = (f"no run {name!r} to resume in {workdir / 'runs'} (one stopped before it started, "
                              f"or --name / --workdir is not the run's): starting it from step 0"
                              + (f"; runs with a checkpoint there: {', '.join(runs[:10])}"
                                 + (" ..." if len(runs) > 10 else "") if runs else ""))
        kept = [n for n in CHECKPOINTS if (ckpt_dir / n).exists()]
        if kept and not force:  # a run that got further, whose last.pt is gone: a new start would replace the rest
            raise LeapError(f"{run_dir} has no checkpoints/last.pt to resume, but holds {', '.join(kept)}",
                            path=ckpt_dir / "last.pt", fix="put last.pt back, start the run over with --force, or give "
                                                           "another --name")
        # the run was started and stopped before its first checkpoint (a preemption in its first
        # checkpoint_every steps, or its first epoch): a requeue that always passes --resume starts it again
        # (said once its lock is held: the same run still going is refused first)
        unsaved_restart = not kept
        resume = False
        if unsaved_restart and not cfg.model.pretrained:
            cfg = _weights_of_unsaved_run(cfg, run_dir)
    else:
        unsaved_restart = False
    # removed again if the run does not start: every folder it makes, up to the first that was there
    made = [p for p in (run_dir, *run_dir.parents) if not p.exists()][::-1]
    info = distributed.setup(cfg.train.device)
    stack = contextlib.ExitStack()
    try:
        if cfg.train.threads > 0 and info.device.type == "cpu":
            torch.set_num_threads(cfg.train.threads)
        if info.is_main:  # two identical `leap train` at once would write one run: refuse the second
            stack.enter_context(OutputLock(run_dir / "checkpoints",
                                           fix="wait for it to finish, or give this run another --name"))
            stack.callback(_remove_unstarted, run_dir, made)
            if unstarted_note:
                log.warning("%s", unstarted_note)
            elif unsaved_restart:
                log.warning("%s holds no checkpoint yet (the run stopped before its first): starting it from step 0",
                            run_dir)
        resume_ckpt = None
        # --force removes the old run only once the config, the data and the model have been checked below:
        # a typo in the config or a damaged manifest must not cost the run it was meant to replace.
        saved_any = any((ckpt_dir / n).exists() for n in CHECKPOINTS)  # last.pt, or a best.pt left without it
        start_over = force and saved_any
        if start_over:
            resume = False
        if resume:
            resume_ckpt = load_checkpoint(ckpt_dir / "last.pt")
            old_config = resolve_aliases(resume_ckpt.get("config") or {}, str(ckpt_dir / "last.pt"))
            changed = [c for c in settings_changes(old_config, cfg.to_dict())
                       if c.split(":")[0] not in RESUME_MAY_CHANGE]
            if changed:
                # a longer run asked of a finished or running one: its schedule was laid out for the old length
                longer = {c.split(":")[0] for c in changed} <= {"train.epochs", "train.max_steps"}
                pretrained = f"model.pretrained={ckpt_dir / 'last.pt'}"
                raise LeapError(f"the config differs from the checkpoint's ({'; '.join(changed)}); resuming "
                                f"would mix two trainings", path=ckpt_dir / "last.pt", record="config",
                                fix=f"resume with --config {shell_word(run_dir / 'config.yaml')} --workdir "
                                    f"{shell_word(workdir)} --name {shell_word(name)} --resume, "
                                    + ("or, to train on from its weights with a schedule of its own, start a run "
                                       f"of another --name with --set {shell_word(pretrained)} (the "
                                       "backbone's weights; the heads start anew), "
                                       if longer else "")
                                    + "or pass --force to start the run over")
            cfg = _keep_initial_weights(cfg, old_config)
            was = resume_ckpt.get("data_position", {}).get("world_size")  # (checkpoints before it was kept: None)
            if was is not None and was != info.world_size:
                raise LeapError(f"the run was trained by {was} process(es) and is resumed by {info.world_size}: the "
                                "data order, the position in the epoch and the batch of a step depend on it",
                                path=ckpt_dir / "last.pt", record="world_size",
                                fix=f"resume with the same launch (torchrun --nproc_per_node ... giving {was} "
                                    "processes in all), or pass --force to start the run over")
        elif not start_over and saved_any:
            raise LeapError("run directory already holds a checkpoint", path=run_dir,
                            fix="continue it with --resume, start it over with --force, or pick another --name")
        seed_everything(cfg.train.seed)
        if source is None:
            # held before a manifest is read: build-shards --force would delete them under this run
            train_folders, val_folder = shard_folders(cfg, workdir)
            for folder in dict.fromkeys([*train_folders, val_folder]):
                if folder is not None and folder.is_dir():
                    stack.enter_context(ShardReaders(folder))
        source = source or default_source(cfg, workdir, info)
        model_args = model_args_for(cfg, source)
        if resume_ckpt is not None:
            _same_training_data(resume_ckpt, source, ckpt_dir / "last.pt", cfg.data.train)
            old_args = with_normalisation(resume_ckpt["model_args"])
            if isinstance(old_args.get("anticipation"), dict) and isinstance(model_args.get("anticipation"), dict):
                # a run keeps the program pooling it began with (one begun before the key: every decoded row)
                model_args = {**model_args, "anticipation": {**model_args["anticipation"],
                                                             "pool": old_args["anticipation"]["pool"]}}
            if old_args != model_args:
                raise LeapError("the config or data vocabulary differs from the checkpoint's model",
                                path=ckpt_dir / "last.pt", fix="resume with the same config and shards")
        from leap_cli.model import build_model
        from leap_cli.model.leap import BUILD_ERRORS

        try:
            model = build_model(dict(model_args))
        except LeapError as e:  # a value of the model section the architecture cannot take (num_frames, options)
            if e.path is not None:
                raise
            raise LeapError(f"the config's model section does not build: {e.message}", record="model",
                            fix=e.fix or "change model.num_frames, model.img_size or model.options in the config or its --set"
                            ) from None
        except BUILD_ERRORS as e:  # torch's, of model.options
            raise LeapError(f"the config's model section does not build ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else 'no message'}) with model.options "
                            f"{cfg.model.options}", record="model",
                            fix="change model.options (docs/model.md lists them; decoder_dim must be a multiple of "
                                "decoder_heads)") from None
        pretrained = None  # what the start line says of the weights loaded
        if cfg.model.pretrained and resume_ckpt is None:
            pretrained = _load_pretrained(model, cfg.model.pretrained, cfg.model.allow_partial_load)
        elif resume_ckpt is None and info.is_main and (why := random_start(cfg)):
            log.warning(why)
        model = prepare_model(model, cfg, info)
        optimizer = build_optimizer(model, cfg.optim)
        accum = cfg.optim.accum_steps
        steps_per_epoch = source.batches_per_epoch // accum
        if steps_per_epoch < 1:
            raise LeapError(f"an epoch has {source.batches_per_epoch} batches per process, fewer than "
                            f"optim.accum_steps={accum}",
                            fix=f"add --set optim.accum_steps={max(1, source.batches_per_epoch)} (or fewer), or "
                                "--set data.batch_size to a lower one, or add data")
        total = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
        epochs = math.ceil(total / steps_per_epoch)
        warmup = cfg.optim.warmup_steps or int(round(cfg.optim.warmup_ratio * total))
        if warmup >= total and info.is_main and resume_ckpt is None:  # (the peak lr is never reached: unsaid)
            log.warning("optim.warmup_steps %d reaches past the run's %d steps: the learning rate never gets to "
                        "optim.lr %g (lower warmup_steps, or set it to 0 for warmup_ratio)", warmup, total,
                        cfg.optim.lr)
        if cfg.loss.program_loss and not cfg.model.program_heads and info.is_main and resume_ckpt is None:
            log.warning("model.program_heads is false: loss.program_loss has no heads to train, the loss is L_CE "
                        "alone (as --no-program-loss)")
        scheduler = CosineWithWarmup(optimizer, peak_lr=cfg.optim.lr, total=total, warmup=warmup,
                                     min_lr_ratio=cfg.optim.min_lr_ratio)
        scaler = torch.amp.GradScaler(info.device.type, enabled=cfg.train.precision == "fp16")
        state = TrainState()
        if resume_ckpt is not None:
            model.load_state_dict(resume_ckpt["model"])
            optimizer.load_state_dict(resume_ckpt["optimizer"])
            scheduler.load_state_dict(resume_ckpt["scheduler"])
            if resume_ckpt["scaler"]:
                scaler.load_state_dict(resume_ckpt["scaler"])
            state.step = int(resume_ckpt["step"])
            state.epoch = int(resume_ckpt["data_position"]["epoch"])
            state.batches = int(resume_ckpt["data_position"]["batches"])
            state.best_metric = float(resume_ckpt["best_metric"])
            state.best_step = resume_ckpt.get("best_step")
            if info.is_main and state.best_step == state.step:  # (a stop between last.pt and its best.pt copy)
                copy_checkpoint(ckpt_dir / "last.pt", ckpt_dir / "best.pt")
            # a checkpoint written before best.pt was chosen by this metric (anticipation used action top-1):
            # its best is not comparable, so the next validation sets it anew
            if resume_ckpt.get("best_key", "action_top1") != BEST_METRIC[cfg.data.task]:
                log.warning("%s: best.pt was chosen by %s; from now on by %s (the next validation sets it)",
                            ckpt_dir, resume_ckpt.get("best_key", "action_top1"), BEST_METRIC[cfg.data.task])
                state.best_metric = -1.0
            if changed := _numerics_changed(resume_ckpt.get("numerics"), numerics(cfg, info)):
                log.warning("%s: resumed with %s: the run goes on within float rounding, not bit for bit as it "
                            "would have uninterrupted", ckpt_dir, changed)
            if state.batches and resume_ckpt["data_position"].get("order") != DATA_ORDER:
                log.warning("%s: written by an older leap, which ordered an epoch's batches otherwise: the rest "
                            "of epoch %d is not the batches the interrupted run would have seen", ckpt_dir,
                            state.epoch + 1)
        train_model = wrap_model(model, cfg, info)

        if start_over:
            distributed.barrier(info)  # every rank has seen the checkpoint before rank 0 removes it
            if info.is_main:
                log.warning("--force: starting %s over (its checkpoints and metrics are removed)", run_dir)
                for f in (*(ckpt_dir / n for n in CHECKPOINTS), run_dir / "metrics.jsonl"):
                    f.unlink(missing_ok=True)
            distributed.barrier(info)
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
            NEXT_RUN["train"] = "resume"  # (an error's advice from here on: --resume)
        provenance = getattr(source, "provenance", None)
        if info.is_main and provenance is not None:
            provenance = record_provenance(run_dir, provenance, resumed=resume, checkpoint=resume_ckpt)
        metrics = (_Metrics(run_dir, state.step if resume_ckpt is not None else None, state.epoch)
                   if info.is_main else None)

        # last.pt's position as it is on disk: a resumed run that is finished already does not write it again
        # (the same state; a UniFormerV2-L last.pt with its optimizer is several GB)
        saved = {"last": (state.step, state.epoch, state.batches) if resume_ckpt is not None else -1}

        def checkpoint(path: Path) -> None:
            if not info.is_main:
                return
            if path.name == "last.pt":
                position = (state.step, state.epoch, state.batches)
                if saved["last"] == position:
                    return  # nothing changed since the last write
                saved["last"] = position
            save_checkpoint(path, {
                "model": model.state_dict(), "model_args": model_args, "config": cfg.to_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else {}, "step": state.step,
                "targets": source.program_targets,  # the token vocabularies, to read predicted programs back
                "shards_timing": getattr(source, "timing", None),  # anticipation: when the training shards observe
                "provenance": provenance,  # (also in a checkpoint evaluated outside its run: evaluate's meta)
                "epoch": state.epoch, "best_metric": state.best_metric, "best_key": BEST_METRIC[cfg.data.task],
                "best_step": state.best_step,
                "rng": rng_state(), "numerics": numerics(cfg, info),
                "data_position": {"epoch": state.epoch, "batches": state.batches, "world_size": info.world_size,
                                  "order": DATA_ORDER, "batches_per_epoch": int(source.batches_per_epoch)}})

        def log_step(rec: dict) -> None:
            if info.is_main and not rec.get("partial"):
                metrics.write(rec)
            if on_step and info.is_main:
                on_step(rec)

        if on_start and info.is_main:
            on_start({"run_dir": str(run_dir), "total_steps": total, "epochs": epochs,
                      "steps_per_epoch": steps_per_epoch, "start_step": state.step, "start_epoch": state.epoch,
                      "start_batches": state.batches, "device": str(info.device),
                      "world_size": info.world_size, "model_args": model_args, "pretrained": pretrained,
                      "parameters": sum(p.numel() for p in model.parameters())})
        last_eval: dict = {}
        best_key = BEST_METRIC[cfg.data.task]
        stopped = False
        stop = stack.enter_context(GracefulStop(info))
        while state.epoch < epochs and not stopped:
            # resume mid-epoch: the rest of the epoch's batches, the ones seen before are not read again
            batches = iter(source.train_batches(state.epoch, state.batches))
            if resume_ckpt is not None:
                set_rng_state(resume_ckpt["rng"])
                resume_ckpt = None
            going = train_one_epoch(
                train_model, batches, optimizer, scheduler, scaler, cfg, state, info, total_steps=total,
                batches_per_epoch=steps_per_epoch * accum, stop_at_step=stop_at_step, on_step=log_step,
                on_checkpoint=lambda: checkpoint(ckpt_dir / "last.pt"), should_stop=stop)
            if not going or stop():  # a signal in the epoch's last step: no validation first (minutes on EPIC's
                stopped = True  # val, past a scheduler's grace period); last.pt at the epoch's end, so that
                break  # --resume validates it as the run would have
            epoch_done, batches_done = state.epoch, state.batches
            state.epoch += 1
            state.batches = 0
            val = source.val_batches()
            is_last = state.epoch >= epochs or state.step >= total
            if val is not None and (state.epoch % max(1, cfg.train.eval_every_epochs) == 0 or is_last):
                rng = rng_state()  # keep validation from disturbing the training RNG stream
                # unwrapped: ranks may hold different counts; one process stops inside it at a signal
                try:
                    last_eval = evaluate(model, val, cfg, info, should_stop=None if info.distributed else stop)
                except LeapError:  # (a validation worker died): the epoch's steps are kept, at its end, which
                    set_rng_state(rng)  # --resume validates first, as after a signal during validation
                    state.epoch, state.batches = epoch_done, batches_done
                    checkpoint(ckpt_dir / "last.pt")
                    raise
                set_rng_state(rng)
                if last_eval is None:  # back to the epoch's end, which --resume validates
                    state.epoch, state.batches = epoch_done, batches_done
                    stopped = True
                    break
                expected = getattr(source, "val_size", None)
                if expected is not None and last_eval.get("seen") != expected:
                    log.warning("validation saw %s samples, the val shards hold %s", last_eval.get("seen"), expected)
                rec = {"split": "val", "step": state.step, "epoch": epoch_done, **last_eval}
                if info.is_main:
                    metrics.write(rec)
                    if on_eval:
                        on_eval(rec)
                if last_eval.get("n") and last_eval[best_key] > state.best_metric:
                    state.best_metric, state.best_step = last_eval[best_key], state.step
                    # last.pt first, best.pt its copy: a stop in between leaves a run that --resume continues
                    # from last.pt (which makes the copy again); best.pt first left a best.pt alone at the first
                    # validation, and --resume refused such a run
                    checkpoint(ckpt_dir / "last.pt")
                    if info.is_main:
                        copy_checkpoint(ckpt_dir / "last.pt", ckpt_dir / "best.pt")
            checkpoint(ckpt_dir / "last.pt")
            if state.step >= total or stop():
                break
        checkpoint(ckpt_dir / "last.pt")
        distributed.barrier(info)
        if metrics:
            metrics.close()
        return TrainResult(run_dir=run_dir, steps=state.step, epochs=state.epoch, best_metric=state.best_metric,
                           last_eval=last_eval, history=state.history, seconds=time.perf_counter() - t_start,
                           model_args=model_args, is_main=info.is_main, interrupted=stop.received,
                           best_key=BEST_METRIC[cfg.data.task], provenance=provenance)
    except KeyboardInterrupt:  # (a stop at once: the loaders' workers end now; torch's shutdown of a loader waited
        from leap_cli.shards.dataset import end_loader_workers  # ~10 s for a stalled worker)

        end_loader_workers()
        raise
    except LeapError as e:
        if unstarted_note is None or (run_dir / "config.yaml").exists():
            raise
        # (a --resume that found no run, then refused, told to build shards under a mistyped --workdir)
        e.fix = (f"{e.fix}; or, " if e.fix else "") + f"--resume found no run {name!r} in {workdir / 'runs'}: " \
                "check --workdir and --name"
        e.args = (e.one_line(),)
        raise
    finally:
        stack.close()
        distributed.cleanup()


# What picks best.pt: the challenge's ranking metric of the task (EPIC-KITCHENS-100 action recognition: action
# top-1 accuracy; action anticipation: action class-mean top-5 recall).
BEST_METRIC = {"recognition": "action_top1", "anticipation": "action_mt5r"}
DATA_ORDER = 2  # how an epoch's batches are formed (2: shuffled, cut into batches, dealt whole to the workers)

# Keys a resume may change: where and how fast the run goes, not what it computes. model.pretrained and
# model.allow_partial_load are read only when a run starts (a resume takes the weights from last.pt).
RESUME_MAY_CHANGE = frozenset({"train.device", "train.threads", "train.log_every", "train.checkpoint_every",
                               "data.num_workers", "data.eval_batch_size", "data.val", "data.train",
                               "model.compile", "model.pretrained", "model.allow_partial_load"})


def record_provenance(run_dir: Path, now: dict, *, resumed: bool, checkpoint: dict | None = None) -> dict:
    """Write ``runs/NAME/provenance.json`` (``now``: the data source's ``provenance``) and return what it holds. A
    resume on training shards made from other programs or labels than the file names (their content hashes: shards
    built again from other programs, or from annotation rows or class files with other labels, with as many batches
    per epoch), or whose samples differ otherwise (the hash of their CRC-32s: frames read again from a video
    downloaded again, told apart from new programs or labels by the hash of their frames alone where both runs kept
    it; unknown in a file or manifest of a leap before it was kept: nothing said), is warned of once,
    and the file keeps what the run was trained on before under ``earlier`` (oldest first). The same programs described more fully (shards of an
    earlier leap built again, as its note advises) or other validation shards are written as they are now. Without
    the file (deleted, unreadable) a resume takes the resumed ``checkpoint``'s copy; a checkpoint of a leap before
    runs kept it leaves what the steps before were trained on unknown: said, and kept under ``earlier``."""
    from leap_cli.io import atomic_write_json
    from leap_cli.programs.provenance import RUN_PROVENANCE, read_run_provenance, run_programs_text

    from leap_cli.shards.format import SOURCE_NAMES

    old = read_run_provenance(run_dir) if resumed else None
    if resumed and old is None and checkpoint is not None:
        held = checkpoint.get("provenance")
        step = checkpoint.get("step")
        if isinstance(held, dict):
            old = dict(held)
        elif isinstance(step, int) and step > 0:
            log.warning("%s: resumed at step %d from a checkpoint of a leap before runs kept %s: what those steps "
                        "were trained on is unknown (the file says so under \"earlier\")", run_dir, step,
                        RUN_PROVENANCE)
            now = {**now, "earlier": [{"unknown": f"steps 1-{step}, trained before runs kept {RUN_PROVENANCE}"}]}
    if old is not None:
        earlier = old.pop("earlier", None)
        earlier = earlier if isinstance(earlier, list) else []
        trained_on = lambda p: ((p.get("train") or {}).get("programs") or {}).get("sha256")  # noqa: E731
        def labels(p: dict) -> dict:  # (a run before they were kept, or a file edited: {})
            found = (p.get("train") or {}).get("labels") if isinstance(p.get("train"), dict) else None
            return found if isinstance(found, dict) else {}

        def samples(p: dict) -> dict:  # (a run before they were kept, shards without CRC-32s: {}, unknown)
            found = (p.get("train") or {}).get("samples") if isinstance(p.get("train"), dict) else None
            return found if isinstance(found, dict) and found.get("sha256") else {}

        relabelled = [SOURCE_NAMES.get(k, str(k)) for k in sorted(labels(old), key=str)
                      if labels(old)[k] != labels(now).get(k)]
        # the samples' hash covers their targets and labels too: said where neither changed (their frames did), or
        # where the hash of their frames alone (kept since 2026-12-07) changed too (new programs and a video
        # downloaded again: the programs' warning alone hid the frames')
        frames = [samples(p).get("frames") for p in (old, now)]
        resampled = bool(samples(old) and samples(now) and samples(old)["sha256"] != samples(now)["sha256"]
                         and ((trained_on(old) == trained_on(now) and not relabelled)
                              or (all(frames) and frames[0] != frames[1])))
        if trained_on(old) != trained_on(now):
            log.warning("%s: the shards' programs are not those the run was trained on so far (%s; before: %s): "
                        "%s keeps both", run_dir, run_programs_text(now), run_programs_text(old), RUN_PROVENANCE)
        if relabelled:
            log.warning("%s: the training shards were built from other labels than the run was trained on so far "
                        "(%s changed): its remaining steps learn the new ones (%s keeps what each part of the run "
                        "was trained on; to train on from its weights with a schedule of its own instead, start a "
                        "run of another --name with --set model.pretrained=%s)", run_dir, " and ".join(relabelled),
                        RUN_PROVENANCE, run_dir / "checkpoints" / "last.pt")
        if resampled:
            was, count = samples(old).get("count"), samples(now).get("count")
            log.warning("%s: the training shards' samples are not those the run was trained on so far (%s): its "
                        "remaining steps train on the new ones (%s keeps what each part of the run was trained on; "
                        "to train on from its weights with a schedule of its own instead, start a run of another "
                        "--name with --set model.pretrained=%s)", run_dir,
                        f"{counted(count, 'sample')}, as before, some of them written again since: their frames "
                        "read again, e.g. from a video downloaded again" if count == was else
                        f"{counted(count, 'sample')}, {was} before: samples added or taken out since, e.g. those of a "
                        "video downloaded that build-shards had skipped", RUN_PROVENANCE,
                        run_dir / "checkpoints" / "last.pt")
        if trained_on(old) != trained_on(now) or relabelled or resampled:
            earlier.append(old)
        if earlier:
            now = {**now, "earlier": earlier}
    atomic_write_json(run_dir / RUN_PROVENANCE, now)
    return now


def _same_training_data(ckpt: dict, source: DataSource, path: Path, given: str | tuple | None) -> None:
    """Refuse a resume on training shards that are not the run's (data.train may change on --resume: the same
    shards moved): another number of batches per epoch (it re-laid the schedule, the run grew or ended, and the
    epoch's position meant other batches) or, for anticipation, another timing. Checkpoints from before the
    count was kept are not checked for it."""
    from leap_cli.shards.dataset import same_timing, timing_text

    where = (f"data.train {given if isinstance(given, str) else ' + '.join(given)}" if given
             else "the default training shards")
    fix = ("resume with the shards the run trained on; to train on from its weights with these, start a run of "
           f"another --name with --set model.pretrained={path}")
    had = (ckpt.get("data_position") or {}).get("batches_per_epoch")
    if had is not None and had != source.batches_per_epoch:
        raise LeapError(f"{where} give {source.batches_per_epoch} batches per epoch, the run's gave {had}: resuming "
                        "would change its schedule and what its epochs hold", path=path, record="data.train", fix=fix)
    was, now = ckpt.get("shards_timing"), getattr(source, "timing", None)
    if was and now and not same_timing(was, now):
        raise LeapError(f"{where} observe {timing_text(now)}, the run's observed {timing_text(was)}", path=path,
                        record="data.train", fix=fix)


def numerics(cfg: Config, info: distributed.DistInfo) -> dict:
    """What sets the order of a step's float sums besides the config's keys: the device, CPU threads (the
    machine's cores where train.threads is 0) and torch.compile (another number of ranks is refused on resume:
    data_position.world_size)."""
    return {"device": info.device.type, "threads": torch.get_num_threads() if info.device.type == "cpu" else None,
            "compile": bool(cfg.model.compile)}


def _numerics_changed(was: dict | None, now: dict) -> str | None:
    """What differs (``numerics``) between the checkpoint's run and this one, in words; None: the same or unknown."""
    if not was:
        return None
    names = {"device": "device", "threads": "CPU threads", "compile": "model.compile"}
    diff = [f"{names[k]} {now[k]} (was {was[k]})" for k in names if k in was and was[k] != now.get(k)]
    return ", ".join(diff) or None


def _remove_unstarted(run_dir: Path, made: list[Path]) -> None:
    """A run refused before it wrote config.yaml leaves none of the folders it made (they hold only its lock)."""
    if (run_dir / "config.yaml").exists():
        return
    (run_dir / "checkpoints.lock").unlink(missing_ok=True)
    for folder in reversed(made):  # run_dir, runs/, then the work directory and those above it it made
        with contextlib.suppress(OSError):  # not empty: something else was written there meanwhile
            folder.rmdir()


def _keep_initial_weights(cfg: Config, old_config: dict) -> Config:
    """A resumed run's config keeps the weights it started from (config.yaml and the checkpoints record them),
    whatever the resuming command's model.pretrained says."""
    old = old_config.get("model") or {}
    model = replace(cfg.model, pretrained=old.get("pretrained"),
                                allow_partial_load=bool(old.get("allow_partial_load", False)))
    return replace(cfg, model=model)


def _weights_of_unsaved_run(cfg: Config, run_dir: Path) -> Config:
    """A run that stopped before its first checkpoint, started again from step 0 by --resume with no
    model.pretrained (README's requeue line names none: a resume takes the weights from last.pt), starts from the
    weights its config.yaml names: it trained from random weights, said only in a warning."""
    from leap_cli.train.config import load_config

    path = run_dir / "config.yaml"
    try:
        old = load_config(path, []) if path.is_file() else None
    except LeapError:  # (a config.yaml cut short: the command's config, as before)
        return cfg
    if old is None or not old.model.pretrained:
        return cfg
    log.info("the run's config.yaml names model.pretrained %s: the restart starts from it", old.model.pretrained)
    return _keep_initial_weights(cfg, old.to_dict())


def prepare_model(model: nn.Module, cfg: Config, info: distributed.DistInfo) -> nn.Module:
    """Move to the device; SyncBatchNorm under DDP (UniFormerV2's local blocks hold BatchNorm3d)."""
    model.to(info.device)
    if info.distributed and cfg.train.sync_bn:
        model = distributed.convert_sync_batchnorm(model, info.device)
    return model


def wrap_model(model: nn.Module, cfg: Config, info: distributed.DistInfo) -> nn.Module:
    """DDP under torchrun, then torch.compile when asked. DDP searches for no unused parameters (a graph walk
    every step): ``leap_loss`` gives every head a part in every step's loss, times zero where it sat out."""
    if info.distributed:
        ddp_kwargs = {"device_ids": [info.device.index]} if info.device.type == "cuda" else {}
        model = nn.parallel.DistributedDataParallel(model, **ddp_kwargs)
    if cfg.model.compile:
        model = torch.compile(model)
    return model


def random_start(cfg: Config) -> str | None:
    """What to say when a real backbone would train from random weights (no ``model.pretrained``): the GPU
    configs ship with ``pretrained: null``, and a run of days from random weights is rarely what was meant."""
    if cfg.model.pretrained or cfg.model.backbone == "uniformerv2_tiny":
        return None
    return (f"model.pretrained is not set: {cfg.model.backbone} starts from random weights; UniFormerV2 is "
            "trained from CLIP or Kinetics weights (--set model.pretrained=FILE, docs/model.md says which file)")


def _load_pretrained(model: nn.Module, path: str, allow_partial: bool = False) -> str:
    """Load official UniFormerV2 or CLIP weights into the backbone (the model package does the filtering)."""
    from leap_cli.model.uniformerv2 import load_pretrained

    report = load_pretrained(model.backbone, path, allow_partial=allow_partial)
    log.info("pretrained weights from %s: %s", path, report)
    return str(report)
