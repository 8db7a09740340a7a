"""A record of the tensors torch's operators write, for tests that count a model's passes over its activations."""

from __future__ import annotations

from torch.utils._python_dispatch import TorchDispatchMode


class WrittenOps(TorchDispatchMode):
    """Within ``with WrittenOps() as ops``: ``ops.seen`` lists ``(operator name, output shape)`` of every operator
    that wrote a tensor (a new one or in place; views, which write nothing, are left out)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        import torch

        out = func(*args, **(kwargs or {}))
        alias = func._schema.returns[0].alias_info if func._schema.returns else None
        if isinstance(out, torch.Tensor) and (alias is None or alias.is_write):
            self.seen.append((func.overloadpacket.__name__, tuple(out.shape)))
        return out
