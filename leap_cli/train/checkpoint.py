"""Self-describing checkpoints, written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors and primitives only::

    {"model": state_dict, "model_args": dict, "config": dict (resolved Config.to_dict()),
     "optimizer": state_dict, "scheduler": dict, "scaler": dict, "step": int, "epoch": int,
     "best_metric": float, "best_key": str, "rng": {...}, "targets": dict | None (the program vocabulary),
     "shards_timing": dict | None (anticipation: tau_a and the context of the training shards),
     "provenance": dict | None (runs/NAME/provenance.json: the shards and what made their programs),
     "numerics": {"device", "threads", "compile"} (what orders the float sums: a resume otherwise warns),
     "data_position": {"epoch": int, "batches": int, "world_size": int, "order": int}}

Files: ``runs/NAME/checkpoints/last.pt`` (every ``train.checkpoint_every`` steps, each epoch and at the end)
and ``best.pt`` (best validation ``best_key``: action top-1 for recognition, action class-mean top-5 recall for
anticipation).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import shutil
import stat
from pathlib import Path
from typing import Any

import numpy as np
import torch

from leap_cli.errors import LeapError
from leap_cli.io import atomic_path, atomic_write_bytes, load_problem, output_mode

log = logging.getLogger(__name__)

CHECKPOINT_KEYS = ("model", "model_args", "config", "optimizer", "scheduler", "scaler", "step", "epoch",
                   "best_metric", "rng", "data_position")


def rng_state() -> dict:
    """Python, NumPy, torch CPU and CUDA generator states as tensors/primitives (weights_only-safe)."""
    version, state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    out = {
        "python": {"version": version, "state": list(state), "gauss": gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return out


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["gauss"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        # (a checkpoint of a machine with more GPUs than this one: the states of those not here are left out; torch
        # raised an IndexError for the first one missing, and the resume stopped)
        torch.cuda.set_rng_state_all(state["cuda"][:torch.cuda.device_count()])


def save_checkpoint(path: str | Path, checkpoint: dict) -> None:
    """Serialise to memory, then write atomically (a crash never leaves a half-written file)."""
    missing = [k for k in CHECKPOINT_KEYS if k not in checkpoint]
    if missing:
        raise ValueError(f"checkpoint lacks {missing}")
    buf = io.BytesIO()
    torch.save(checkpoint, buf)
    atomic_write_bytes(path, buf.getvalue())


def copy_checkpoint(src: str | Path, dst: str | Path) -> None:
    """``dst`` made the same file as ``src``, atomically: a hard link where the file system has them (no bytes
    copied, so the two renames of last.pt and best.pt are close to one instant), else a copy. Nothing is done
    when ``dst`` is ``src``'s link already. A link shares ``src``'s mode: where ``dst`` is to have another (a best.pt
    its user made read-only) or ``src`` is another user's, the bytes are copied."""
    src, dst = Path(src), Path(dst)
    with contextlib.suppress(OSError):
        if os.path.samefile(src, dst):
            return
    st = src.stat()
    linkable = st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == output_mode(dst)
    with atomic_path(dst) as tmp:
        if linkable:
            try:
                tmp.unlink()  # (the temp name is this process's: the link takes it)
                os.link(src, tmp)
                return
            except OSError:  # (no hard links there, or another device)
                pass
        shutil.copyfile(src, tmp)


def _check_crcs(path: Path) -> None:
    """torch.save writes a zip archive with a CRC-32 per tensor file, which torch.load does not check: bytes
    changed on disk since (a failing disk, a bad copy) were loaded as weights, silently. Reading them all once
    costs ~1 s per GB. A file that is no zip archive, or one zipfile cannot check (a compression method torch
    does not write: a damaged header; a foreign archive's damaged deflate data), is left to torch.load."""
    import zipfile
    import zlib

    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, RuntimeError, zlib.error):  # (RuntimeError: also
        # NotImplementedError, an unknown compression method)
        return
    if bad is not None:
        raise LeapError(f"damaged checkpoint: {bad} does not match the CRC-32 stored with it (the bytes changed on "
                        "disk since it was written)", path=path,
                        fix="use another checkpoint (best.pt or last.pt of the run, or a copy made before); a run "
                            "whose last.pt is damaged starts over with --force")


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise LeapError("checkpoint not found", path=path, fix="train first (leap train) or give the right path")
    _check_crcs(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for a corrupt or foreign file
        raise LeapError(f"cannot read checkpoint: {load_problem(e, path)}", path=path,
                        fix="the file is corrupt or not a leap checkpoint: use another one; a run whose last.pt is "
                            "damaged starts over with --force") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_args" not in ckpt:
        raise LeapError("not a leap checkpoint (no 'model'/'model_args')", path=path,
                        fix="give a checkpoint written by leap train")
    return ckpt


def resolve_checkpoint(path_or_run: str | Path, which: str = "best") -> Path:
    """A .pt file as is; a run dir -> ``checkpoints/{which}.pt`` (``best`` falls back to ``last`` with a
    warning when the run had no validation)."""
    if which not in ("best", "last"):
        raise LeapError(f"which must be 'best' or 'last', not {which!r}")
    p = Path(path_or_run)
    if p.is_file():
        return p
    folder = p / "checkpoints" if (p / "checkpoints").is_dir() else p
    target = folder / f"{which}.pt"
    if target.is_file():
        return target
    if which == "best" and (folder / "last.pt").is_file():
        log.warning("%s has no best.pt (no validation ran); using last.pt", folder)
        return folder / "last.pt"
    raise LeapError(f"no {which}.pt checkpoint", path=folder, fix="give a run directory written by leap train")


def load_model(path_or_run: str | Path, which: str = "best", map_location: Any = "cpu", *,
               allow_partial: bool = False):
    """Rebuild the model from a checkpoint file or a run directory: ``(model, checkpoint_dict)``.

    The model is built from the stored ``model_args`` (architecture and input normalisation: the model normalises
    uint8 clips with the mean/std it was trained with) and its weights load strictly (``allow_partial``: missing
    or foreign tensors are a warning, missing ones stay at their initialisation); it is returned in eval mode.
    """
    from leap_cli.model import build_model
    from leap_cli.model.leap import BUILD_ERRORS

    path = resolve_checkpoint(path_or_run, which)
    ckpt = load_checkpoint(path, map_location=map_location)
    try:
        model = build_model(dict(ckpt["model_args"]))
    except BUILD_ERRORS as e:  # (edited model_args)
        raise LeapError(f"the checkpoint's model_args do not build a model ({type(e).__name__}: {e})", path=path,
                        record="model_args", fix="use the checkpoint as training wrote it") from None
    own = model.state_dict()
    # another shape than the model built from model_args: load_state_dict raised even with strict=False
    misfit = {k: v for k, v in ckpt["model"].items() if k in own and hasattr(v, "shape") and v.shape != own[k].shape}
    result = model.load_state_dict({k: v for k, v in ckpt["model"].items() if k not in misfit}, strict=False)
    if (result.missing_keys or result.unexpected_keys or misfit) and allow_partial:
        log.warning("%s: %d model tensors missing from the checkpoint or of another shape (left at initialisation), "
                    "%d foreign ones ignored (allow-partial-load)", path, len(result.missing_keys),
                    len(result.unexpected_keys))
    elif result.missing_keys or result.unexpected_keys or misfit:
        shapes = [f"{k} {tuple(v.shape)} (model {tuple(own[k].shape)})" for k, v in list(misfit.items())[:3]]
        raise LeapError(f"checkpoint does not match its model: missing {result.missing_keys[:5]}, "
                        f"unexpected {result.unexpected_keys[:5]}" + (f", of another shape {shapes}" if misfit else ""),
                        path=path,
                        fix="the model code changed since training, or the file's model_args were edited; retrain "
                            "or use a matching leap version")
    model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu")
    model.eval()
    return model, ckpt
