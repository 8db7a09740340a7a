"""LEAP training loss: L = CE(verb) + CE(noun) + lambda_T * L_T + lambda_PC * L_PC.

L_T is the mean cross-entropy over the columns of the program's token rows (``programs.targets``: S-Verb,
Obj(A), Obj(B), hand and the structure token -- ``<step>`` or a loop / conditional / routine marker; padding and
the marker rows' verb/object/hand columns are -100 and ignored). L_PC is the binary cross-entropy of the
conditions: the mean of the program-level term (pre/post of the whole program) and the per-row term (each
row's pre/post multi-hot, over the rows of the true sequence), when the model predicts per-row conditions. A
row holds one or two of a few hundred conditions (base rate ~1 %), so the positive entries weigh
``condition_pos_weight`` (config ``loss.condition_pos_weight``, 10 by default): unweighted, predicting no condition
at all is nearly optimal and the per-row F1 at threshold 0.5 stays at 0. The keywords' defaults are the training
config's (``LossConfig``), so a call without them computes the loss ``leap train`` does.
Only segments with ``has_program`` enter L_T and L_PC; the others contribute the action cross-entropies only.
An output that takes no part in a batch's loss (a batch without programs, a column the targets lack) enters it
times zero: every head then gets a gradient (of zeros) in every step, as DDP without its unused-parameter search
expects.
Labels of -1 (unknown) are ignored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from leap_cli.train.config import LossConfig

IGNORE = -100
STEP_COLUMNS = ("step_verb", "step_obj_a", "step_obj_b", "step_hand", "step_kind")


def _ce(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    target = torch.where(target < 0, torch.full_like(target, IGNORE), target)
    if not (target != IGNORE).any():
        return logits.sum() * 0.0  # keeps the graph, contributes nothing
    return F.cross_entropy(logits.float(), target, ignore_index=IGNORE, label_smoothing=label_smoothing)


def _fit_rows(x: torch.Tensor, rows: int, value: float) -> torch.Tensor:
    """Cut or pad dim 1 of ``x`` to ``rows``."""
    x = x[:, :rows]
    if x.shape[1] < rows:
        pad = [0, 0] * (x.ndim - 2) + [0, rows - x.shape[1]]
        x = F.pad(x, pad, value=value)
    return x


def leap_loss(
    outputs: dict[str, torch.Tensor],
    batch: dict,
    *,
    lambda_t: float = LossConfig.lambda_t,
    lambda_pc: float = LossConfig.lambda_pc,
    label_smoothing: float = LossConfig.label_smoothing,
    program_loss: bool = LossConfig.program_loss,
    condition_pos_weight: float = LossConfig.condition_pos_weight,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts {"ce_verb", "ce_noun", "l_t", "l_pc"} (floats, for logging)."""
    ce_verb = _ce(outputs["verb"], batch["verb_class"].to(outputs["verb"].device), label_smoothing)
    ce_noun = _ce(outputs["noun"], batch["noun_class"].to(outputs["noun"].device), label_smoothing)
    loss = ce_verb + ce_noun
    used = {"verb", "noun"}
    l_t = l_pc = torch.zeros((), device=loss.device)
    if program_loss and "step_verb" in outputs and "program_steps" in batch:
        has = batch["has_program"].to(loss.device).bool()  # [B]
        if has.any():
            L = outputs["step_verb"].shape[1]
            steps = _fit_rows(batch["program_steps"].to(loss.device), L, IGNORE)  # [B, L, K]
            steps = torch.where(has[:, None, None], steps, torch.full_like(steps, IGNORE))
            cols = [k for k in STEP_COLUMNS if k in outputs][: steps.shape[-1]]
            parts = [_ce(outputs[key].flatten(0, 1), steps[..., i].flatten(), 0.0) for i, key in enumerate(cols)]
            l_t = sum(parts) / len(parts)
            used.update(cols, ["conditions"])
            cond_logits = outputs["conditions"][has].float()
            cond_target = batch["conditions"].to(loss.device)[has].float()
            pw = torch.tensor(condition_pos_weight, device=loss.device)
            l_pc = F.binary_cross_entropy_with_logits(cond_logits, cond_target, pos_weight=pw) \
                if cond_logits.numel() else l_t * 0.0
            if "step_conditions" in outputs and "step_conditions" in batch and cond_logits.numel():
                rows = (steps[..., -1] != IGNORE)  # [B, L]: rows of the true sequences (has_program only)
                st = _fit_rows(batch["step_conditions"].to(loss.device).float(), L, 0.0)
                step_term = l_t * 0.0
                if rows.any():
                    step_term = F.binary_cross_entropy_with_logits(outputs["step_conditions"].float()[rows], st[rows],
                                                                   pos_weight=pw)
                    used.add("step_conditions")
                l_pc = (l_pc + step_term) / 2
            loss = loss + lambda_t * l_t + lambda_pc * l_pc
    idle = [v for k, v in outputs.items() if k not in used and v.requires_grad]
    if idle:
        loss = loss + sum(v.float().sum() for v in idle) * 0.0
    parts = {"ce_verb": ce_verb, "ce_noun": ce_noun, "l_t": l_t, "l_pc": l_pc}
    return loss, {k: float(v.detach()) for k, v in parts.items()}
