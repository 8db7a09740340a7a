"""The training data source over ``leap build-shards`` output (``leap_cli.shards.dataset``).

``ShardSource(train_dir, val_dir, cfg, info)`` gives the loop the class counts and program-target vocabulary
from the train manifest, ``train_batches(epoch, skip)`` (this rank's shuffled, padded slice from its batch
``skip`` on; the same epoch gives the same batches whatever ran before and whatever data.num_workers is, so a
resume continues where it stopped without reading the batches it had seen) and ``val_batches()`` (each sample
once over all ranks; None when there is no validation split).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch.utils.data import DataLoader

from leap_cli.common import counted
from leap_cli.errors import LeapError
from leap_cli.shards.dataset import (Guarded, ShardDataset, anticipation_timing, check_context, loader_workers,
                                    shard_loader, timing_change, timing_text)
from leap_cli.shards.format import folders_provenance, part_counts, programs_provenance
from leap_cli.train.config import Config
from leap_cli.train.distributed import DistInfo

log = logging.getLogger(__name__)


def class_counts(manifest: dict, path: Path) -> tuple[int, int]:
    """(num_verbs, num_nouns) from the targets vocabulary: step_verbs = verb classes + END,
    objects = noun classes + "none" + END."""
    targets = manifest.get("targets")
    if not targets:
        raise LeapError("the shards manifest has no targets vocabulary, so the class counts are unknown", path=path,
                        fix="rebuild the shards with leap build-shards (it writes the vocabulary)")
    return len(targets["step_verbs"]) - 1, len(targets["objects"]) - 2


class ShardSource:
    """Shards -> batches for ``leap_cli.train.loop.main`` (see the module docstring)."""

    def __init__(self, train_dir: str | Path | list, val_dir: str | Path | None, cfg: Config, info: DistInfo):
        self.cfg, self.info = cfg, info
        folders = [Path(train_dir)] if isinstance(train_dir, (str, Path)) else [Path(d) for d in train_dir]
        self.train_dir = folders[0]
        named = " + ".join(map(str, folders))  # (in messages)
        self.train = ShardDataset(folders, train=True, num_frames=cfg.model.num_frames,
                                  img_size=cfg.model.img_size, shuffle_buffer=cfg.data.shuffle_buffer,
                                  seed=cfg.train.seed, rank=info.rank, world_size=info.world_size,
                                  pad=info.distributed, scale=tuple(cfg.data.crop_scale),
                                  color_jitter=cfg.data.color_jitter, batch_size=cfg.data.batch_size)
        manifest = self.train.manifest
        task = manifest.get("task", "recognition")
        if task != cfg.data.task:
            raise LeapError(f"the shards are for {task} but data.task is {cfg.data.task}", path=named,
                            fix="build shards for that task or set data.task to match")
        if task == "anticipation":
            check_context(self.train, cfg.model.anticipation_context, "model.anticipation_context", named)
            if not cfg.model.anticipation_context and self.train.context and info.is_main:
                one = self.train.context == 1
                log.warning("%s: the shards hold %s before each action, and model.anticipation_context is 0: the "
                            "model %s (and aggregates nothing); set model.anticipation_context %d to use %s",
                            named, counted(self.train.context, "context clip"), "does not read it" if one else "reads none of them",
                            self.train.context, "it" if one else "them")
        elif cfg.model.anticipation_context and info.is_main:
            log.warning("model.anticipation_context %d is not used: data.task is %s (anticipation shards and "
                        "data.task=anticipation read context clips)", cfg.model.anticipation_context, task)
        counts = manifest.get("counts") or {}
        if counts.get("skipped") and info.is_main:  # (a split most of whose videos are not downloaded trains quietly)
            log.warning("%s: the shards hold %d of the split's %s (%d skipped by build-shards, listed with "
                        "%s in its manifest)", named, counts.get("samples", 0),
                        counted(counts.get("segments", 0), "segment"), counts["skipped"],
                        "its reason" if counts["skipped"] == 1 else "their reasons")
        self.num_verbs, self.num_nouns = class_counts(manifest, self.train_dir / "manifest.json")
        self.program_targets = manifest.get("targets")
        self.timing = anticipation_timing(manifest)  # (kept in the checkpoints: evaluate compares its shards')
        # the run's provenance.json: which shards, and what made their programs (a manifest of an earlier leap: unknown)
        self.provenance = {"train": folders_provenance(manifest, self.train_dir), "val": None}
        if not manifest.get("counts", {}).get("with_program"):
            self.program_targets = None  # no program heads: nothing would train them
            if cfg.loss.program_loss:
                log.warning("%s: no sample has a valid program; training with L_CE only", named)
        # Whole batches go to the DataLoader workers (ShardDataset), so the count does not depend on num_workers.
        self.batches_per_epoch = len(self.train) // cfg.data.batch_size
        if self.batches_per_epoch < 1:
            raise LeapError(f"{len(self.train)} training samples per process, fewer than data.batch_size="
                            f"{cfg.data.batch_size}", path=named,
                            fix=f"add --set data.batch_size={len(self.train)} (or fewer), or build more data"
                            if len(self.train) else "build shards that hold samples (or train on fewer processes)")
        self._loaders: dict[str, DataLoader] = {}
        self.val = None
        self.val_size: int | None = None
        if val_dir is not None:
            val_dir = Path(val_dir)
            if (val_dir / "manifest.json").exists() or part_counts(val_dir):
                self.val = ShardDataset(val_dir, train=False, num_frames=cfg.model.num_frames,
                                        img_size=cfg.model.img_size, rank=info.rank, world_size=info.world_size,
                                        batch_size=cfg.data.eval_batch_size)  # batches as with num_workers 0
                self.val_size = self.val.size
                self.provenance["val"] = {"shards": os.path.abspath(val_dir),
                                          "programs": programs_provenance(self.val.manifest)}
                val_task = self.val.manifest.get("task", "recognition")
                if val_task != task:  # (it validated, and chose best.pt, on the other task's samples)
                    from leap_cli.shards.format import build_command

                    suffix = "-anticipation" if task == "anticipation" else ""  # (build-shards' default folders)
                    raise LeapError(f"the validation shards are for {val_task}, the training shards for {task}",
                                    path=val_dir, fix=f"build the val shards for {task} ("
                                                      f"{build_command(Path(val_dir).parent / f'val{suffix}')}), or "
                                                      "set data.val to them")
                if task == "anticipation":
                    check_context(self.val, cfg.model.anticipation_context, "model.anticipation_context", val_dir)
                    val_timing = anticipation_timing(self.val.manifest)
                    if val_timing != self.timing and info.is_main:  # (best.pt chosen at another anticipation time)
                        log.warning("%s: the validation shards observe otherwise than the training shards (%s, "
                                    "training: %s): validation, and the choice of best.pt, measure %s", val_dir,
                                    timing_text(val_timing), timing_text(self.timing),
                                    timing_change(val_timing, self.timing))
                vcounts = self.val.manifest.get("counts") or {}
                if vcounts.get("skipped") and info.is_main:  # (best.pt is chosen on the segments there are)
                    log.warning("%s: the validation shards hold %d of the split's %s (%d skipped by "
                                "build-shards, listed with %s in its manifest)", val_dir,
                                vcounts.get("samples", 0), counted(vcounts.get("segments", 0), "segment"),
                                vcounts["skipped"], "its reason" if vcounts["skipped"] == 1 else "their reasons")
                train_keys = {k for sh in manifest.get("shards", []) for k in sh.get("keys", [])}
                shared = [k for sh in self.val.manifest.get("shards", []) for k in sh.get("keys", []) if k in train_keys]
                if shared and info.is_main:  # (a train CSV that is a copy of the validation one: scores not held out)
                    named_val = any(val_dir.resolve() == f.resolve() for f in folders)
                    log.warning("%s: %d of the validation shards' %s %s also in the training shards (e.g. "
                                "%s): validation, and the choice of best.pt, measure segments the model trains on; %s",
                                val_dir, len(shared), counted(self.val_size, "segment"),
                                "is" if len(shared) == 1 else "are", shared[0],
                                "data.val is one of data.train's folders: a run trained on train + val (for the "
                                "challenge's test split) sets data.val=\"\", and leap evaluate and submit take its "
                                "last.pt" if named_val else "check the split CSVs the two builds read (leap info lists "
                                "each split's segments)")
                if self.val.manifest.get("targets") != manifest.get("targets"):
                    raise LeapError("the validation shards use another targets vocabulary than the training shards",
                                    path=val_dir, fix="rebuild the val shards after the train shards")
            elif info.is_main:
                log.warning("no validation shards in %s: no validation and no best.pt", val_dir)

    def _loader(self, split: str, ds: ShardDataset, batch_size: int, drop_last: bool) -> DataLoader:
        """One DataLoader per split for the whole run. The training workers persist across epochs (no re-fork,
        no re-import per epoch) and read the epoch from the dataset's shared memory (``ShardDataset.set_epoch``);
        the validation workers start per validation (once per epoch at most, and not held the rest of the time).
        Batches hold uint8 clips (4x less to pass between processes than float32), normalised by the model on
        its device. The order does not depend on the torch RNG, so the explicit generator only keeps the loader
        from drawing on the global one (exact resume)."""
        if split not in self._loaders:
            workers = loader_workers(self.cfg.data.num_workers, "data.num_workers")
            self._loaders[split] = shard_loader(
                ds, batch_size=batch_size, workers=workers, drop_last=drop_last,
                pin_memory=self.info.device.type == "cuda", persistent_workers=workers > 0 and split == "train",
                generator=torch.Generator().manual_seed(self.cfg.train.seed))
        return self._loaders[split]

    def train_batches(self, epoch: int, skip: int = 0) -> Iterator[dict]:
        self.train.set_epoch(epoch, skip)  # before the iterator: persistent workers read it when the epoch starts
        return iter(Guarded(self._loader("train", self.train, self.cfg.data.batch_size, True), "data.num_workers"))

    def val_batches(self) -> Iterable[dict] | None:
        if self.val is None:
            return None
        return Guarded(self._loader("val", self.val, self.cfg.data.eval_batch_size, False), "data.num_workers")
