"""A trained run's predicted program for one segment, beside the target program the shards hold
(``leap show ID --run RUN``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from leap_cli.errors import LeapError


@dataclass
class ProgramComparison:
    narration_id: str
    target: list[str] | None  # rows of the generated (target) program as text; None without a valid program
    predicted: list[str]
    target_conditions: list[list[str]] | None  # per row: pre then post condition strings
    predicted_conditions: list[list[str]]
    checkpoint: str = ""  # which predicted: "best.pt, step 840"


class SkippedSegment(LeapError):
    """The shards manifest lists the segment as skipped by build-shards (``reason`` says why): there is no
    sample to predict from."""

    def __init__(self, narration_id: str, reason: str, folder: Path):
        super().__init__(f"build-shards skipped {narration_id} ({reason}): no sample, so no prediction", path=folder,
                         record=narration_id, fix="fix what the reason names and rebuild the shards (leap build-shards)")
        self.reason = reason


def _check_not_skipped(folder: Path, narration_id: str) -> None:
    from leap_cli.shards.format import load_manifest

    manifest, _ = load_manifest(folder)
    for entry in manifest.get("skipped") or []:
        if entry.get("narration_id") == narration_id:
            raise SkippedSegment(narration_id, str(entry.get("reason") or "no reason recorded"), folder)


def _read_sample(folder: Path, narration_id: str, ds) -> dict:
    from leap_cli.shards.format import REBUILD_FIX, group_sample, parse_members, read_sample_at, sample_crc

    for info in ds.shards:
        if narration_id in info["keys"]:
            p = info["keys"].index(narration_id)
            try:
                with open(folder / info["name"], "rb") as f:
                    block = read_sample_at(f, info["offsets"][p], info["sizes"][p], sample_crc(info, p))
                _, fields = group_sample(parse_members(block))
            except ValueError as e:
                raise LeapError(str(e), path=folder / info["name"], record=f"sample {narration_id}", fix=REBUILD_FIX) from None
            return ds.make_sample(fields, np.random.default_rng(0))
    raise LeapError(f"{narration_id} is not in these shards", path=folder,
                    fix="pass the split's shards with --shards, or --split")


def _rows(vocab, steps: torch.Tensor) -> list[str]:
    rows = []
    for r in steps.tolist():
        if r[-1] == -100 and r[0] == -100:
            break
        rows.append(vocab.decode_row(r))
        if rows[-1] == "<end>":
            break
    return rows


def _conditions(vocab, probs: torch.Tensor, rows: list[str], threshold: float = 0.5) -> list[list[str]]:
    """Per row, its conditions as text: ``pre``/``post`` of a step; a ``<loop>`` marker's pre condition is its
    ``until``, an ``<if>``'s its ``if`` (as the targets store them)."""
    P = len(vocab.conditions)
    out = []
    for kind, row in zip(rows, probs[:len(rows)]):
        if kind == "<end>":  # (no step: its row's conditions were listed as if it had some)
            out.append([])
            continue
        on = (row >= threshold).nonzero().flatten().tolist()
        pre = {"<loop>": "until ", "<if>": "if "}.get(kind, "pre ")
        out.append([(pre if i < P else "post ") + vocab.conditions[i % P] for i in on])
    return out


def predicted_program(run: str | Path, narration_id: str, shards: str | Path, checkpoint: str = "best") -> ProgramComparison:
    """Decode ``narration_id``'s clip with the run's model (greedy, central view) and read its target. Raises
    ``SkippedSegment`` (before the model is loaded) when build-shards skipped the segment."""
    from leap_cli.programs.targets import TargetVocab
    from leap_cli.shards.dataset import ShardDataset
    from leap_cli.train.checkpoint import load_model, resolve_checkpoint

    folder = Path(shards)
    _check_not_skipped(folder, narration_id)
    source = resolve_checkpoint(run, checkpoint)
    model, ckpt = load_model(source)
    if model.decoder is None:
        config = ckpt.get("config") or {}
        asked = (config.get("model") or {}).get("program_heads", True) and (config.get("loss") or {}).get(
            "program_loss", True)
        if asked:  # (the heads are left out when the training shards hold no valid program)
            raise LeapError("this run's model has no program heads: its training shards held no valid program",
                            path=run, fix="generate programs for the train split, build its shards again and train "
                                          "a run on them")
        raise LeapError("this run's model has no program heads", path=run,
                        fix="train with model.program_heads and loss.program_loss on")
    ds = ShardDataset(folder, train=False, num_frames=int(ckpt["model_args"]["num_frames"]),
                      img_size=int(ckpt["model_args"]["img_size"]), rank=0, world_size=1)
    targets = ckpt.get("targets") or ds.manifest.get("targets")
    if not targets:
        raise LeapError("neither the checkpoint nor the shards hold the target vocabulary", path=folder)
    vocab = TargetVocab.from_manifest(targets)
    sample = _read_sample(folder, narration_id, ds)
    ctx = sample.get("context_video")
    with torch.no_grad():
        out = model(sample["video"][None], context_video=None if ctx is None else ctx[None],
                    context_mask=None if ctx is None else sample["context_mask"][None])
    pred = model.decoder.ids_from_logits(out)[0]
    predicted = _rows(vocab, pred)
    pred_conds = _conditions(vocab, torch.sigmoid(out["step_conditions"][0]), predicted) \
        if "step_conditions" in out else [[] for _ in predicted]
    target = target_conds = None
    if sample["has_program"]:
        target = _rows(vocab, sample["program_steps"])
        target_conds = _conditions(vocab, sample["step_conditions"], target)
    return ProgramComparison(narration_id, target, predicted, target_conds, pred_conds,
                             f"{source.name}, step {int(ckpt.get('step', 0))}")
