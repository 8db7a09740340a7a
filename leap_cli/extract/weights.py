"""Loading local checkpoints into a model whose parameter names are fixed, with mismatches reported."""

from __future__ import annotations

from pathlib import Path

import torch

from leap_cli.errors import LeapError
from leap_cli.io import load_problem, numpy_safe_globals, weights_only_allowing
from leap_cli.published import missing_file_fix


def load_checkpoint(path: str | Path, what: str) -> dict:
    """``torch.load`` a local checkpoint (weights only, plus NumPy arrays: a training script's sampler state
    rides along, e.g. PANNs' ``main.py``); a missing or unreadable file is a LeapError."""
    path = Path(path)
    if not path.is_file():
        raise LeapError(f"{what} checkpoint not found", path=path,
                        fix=missing_file_fix(path, "pass the path of a local .pth/.pt file"))
    try:
        with weights_only_allowing(numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here is the file's fault
        raise LeapError(f"cannot read the {what} checkpoint ({load_problem(e, path)})", path=path,
                        fix="load it in Python where you trust it and save its 'model' entry alone: "
                            "torch.save({'model': ckpt['model']}, path)") from None


def unwrap_state_dict(ckpt, path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """The state dict inside ``{'model': ...}`` / ``{'state_dict': ...}`` or the dict itself."""
    if isinstance(ckpt, dict):
        for key in ("model", "state_dict"):
            if isinstance(ckpt.get(key), dict):
                ckpt = ckpt[key]
                break
    if not isinstance(ckpt, dict) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise LeapError(f"the {what} checkpoint holds no state dict", path=path,
                        fix="expected {'model': state_dict} or a plain state dict")
    return {k.removeprefix("module."): v for k, v in ckpt.items()}


def load_exact(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path, what: str,
               *, ignore: tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``model``; any missing/unexpected key or shape mismatch is a LeapError listing them."""
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state and not k.endswith(ignore or ("\0",)))
    unexpected = sorted(k for k in state if k not in own)
    shapes = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state
                    if k in own and state[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        def cut(xs):
            return ", ".join(xs[:12]) + (f" ... ({len(xs)} in all)" if len(xs) > 12 else "")
        parts = []
        if missing:
            parts.append(f"missing keys: {cut(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {cut(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {cut(shapes)}")
        raise LeapError(f"the {what} checkpoint does not match the model; " + "; ".join(parts), path=path,
                        fix=f"pass a checkpoint of the {what} architecture")
    model.load_state_dict(state, strict=not ignore)


def torchvision_coco_weights(arch: str):
    """The COCO_V1 weights enum of a torchvision detection builder, and where torch hub keeps its file."""
    import torchvision.models as tvm

    weights = tvm.get_model_weights(arch).COCO_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    return weights, cached


def load_torchvision_coco(arch: str) -> tuple[dict[str, torch.Tensor], list[str], Path]:
    """State dict and class names of torchvision's COCO weights for ``arch``, as torchvision users get them:
    from the torch hub cache, downloaded there once on a connected machine. Offline without the file, the
    LeapError names the file to place and where."""
    weights, cached = torchvision_coco_weights(arch)
    if cached.is_file():
        try:
            state = unwrap_state_dict(load_checkpoint(cached, "detector"), cached, "detector")
        except LeapError as e:  # (a download cut short in the cache: the fix was to re-save it in Python)
            raise LeapError(f"the cached COCO weights cannot be read ({e.message})", path=cached,
                            fix=f"delete it and place {cached.name} (from {weights.url}) there again, or pass "
                                "--detector-weights FILE") from None
    else:
        import contextlib
        import io
        import sys

        said = io.StringIO()  # torch.hub's "Downloading: ..." line: said when it downloaded, not before the error
        try:
            with contextlib.redirect_stderr(said):
                state = weights.get_state_dict(progress=False, check_hash=True)
            sys.stderr.write(said.getvalue())
        except Exception as e:  # noqa: BLE001 - offline, proxy, refused: all mean "place the file yourself"
            raise LeapError(f"cannot download torchvision's COCO weights of {arch} ({type(e).__name__})",
                            path=cached, fix=f"place {cached.name} (from {weights.url}) at {cached} (another "
                                             "folder: set TORCH_HOME, torch hub's cache), or pass --detector-weights "
                                             "FILE") from None
    return state, list(weights.meta["categories"]), cached
