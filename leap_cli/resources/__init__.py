"""Data shipped inside the package: JSON schemas, the prompt and exemplar library, training configs, and a
subset of EPIC's class files. Read through ``importlib.resources`` so that a wheel install finds them."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from leap_cli.errors import LeapError


def resource_dir(name: str) -> Path:
    """``schemas``, ``prompts`` or ``configs``: from ``LEAP_<NAME>_DIR`` when set, else the package's own copy."""
    env = os.environ.get(f"LEAP_{name.upper()}_DIR")
    if env:
        path = Path(env)
    else:
        # The package is installed as files (pip, wheel or editable), so the traversable is a real folder.
        path = Path(str(resources.files("leap_cli.resources").joinpath(name)))
    if not path.is_dir():
        raise LeapError(f"resource folder {name}/ not found", path=path,
                        fix=f"reinstall leap (pip install leap-cli), or set LEAP_{name.upper()}_DIR to a copy")
    return path


def bundled_config(name: str) -> Path | None:
    """A training config shipped with leap by its name (``tiny-synthetic`` or ``tiny-synthetic.yaml``), else None."""
    stem = name[:-5] if name.endswith(".yaml") else name
    if "/" in stem or os.sep in stem:
        return None
    path = resource_dir("configs") / f"{stem}.yaml"
    return path if path.is_file() else None


def bundled_configs() -> list[Path]:
    return sorted(resource_dir("configs").glob("*.yaml"))
