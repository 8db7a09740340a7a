"""LEAP training loss: L = CE(verb) + CE(noun) + lambda_T * L_T + lambda_PC * L_PC.

L_T is the cross-entropy over the program steps' (S-Verb, Obj(A), Obj(B)) ids (padding -100 ignored),
L_PC the binary cross-entropy of the pre/post-condition head. Only segments with ``has_program`` enter
L_T and L_PC; the others contribute the action cross-entropies only. Labels of -1 (unknown) are ignored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def _ce(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    target = torch.where(target < 0, torch.full_like(target, IGNORE), target)
    if not (target != IGNORE).any():
        return logits.sum() * 0.0  # keeps the graph, contributes nothing
    return F.cross_entropy(logits.float(), target, ignore_index=IGNORE, label_smoothing=label_smoothing)


def leap_loss(
    outputs: dict[str, torch.Tensor],
    batch: dict,
    *,
    lambda_t: float = 1.0,
    lambda_pc: float = 1.0,
    label_smoothing: float = 0.0,
    program_loss: bool = True,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts {"ce_verb", "ce_noun", "l_t", "l_pc"} (floats, for logging)."""
    ce_verb = _ce(outputs["verb"], batch["verb_class"].to(outputs["verb"].device), label_smoothing)
    ce_noun = _ce(outputs["noun"], batch["noun_class"].to(outputs["noun"].device), label_smoothing)
    loss = ce_verb + ce_noun
    l_t = l_pc = torch.zeros((), device=loss.device)
    if program_loss and "step_verb" in outputs and "program_steps" in batch:
        has = batch["has_program"].to(loss.device).bool()  # [B]
        if has.any():
            steps = batch["program_steps"].to(loss.device)  # [B, L, 3]
            L = outputs["step_verb"].shape[1]
            steps = steps[:, :L]
            if steps.shape[1] < L:
                steps = F.pad(steps, (0, 0, 0, L - steps.shape[1]), value=IGNORE)
            steps = torch.where(has[:, None, None], steps, torch.full_like(steps, IGNORE))
            parts = [
                _ce(outputs[key].flatten(0, 1), steps[..., i].flatten(), 0.0)
                for i, key in enumerate(("step_verb", "step_obj_a", "step_obj_b"))
            ]
            l_t = sum(parts) / len(parts)
            cond_logits = outputs["conditions"][has].float()
            cond_target = batch["conditions"].to(loss.device)[has].float()
            l_pc = F.binary_cross_entropy_with_logits(cond_logits, cond_target)
            loss = loss + lambda_t * l_t + lambda_pc * l_pc
    parts = {"ce_verb": ce_verb, "ce_noun": ce_noun, "l_t": l_t, "l_pc": l_pc}
    return loss, {k: float(v.detach()) for k, v in parts.items()}
