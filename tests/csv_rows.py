"""Annotation CSVs edited in place by the tests (a row changed as a user's file would have it)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable


def edit_csv(path: Path, edit: Callable[[list[dict]], None]) -> list[dict]:
    """Read ``path`` as dicts, let ``edit`` change the rows in place, write them back (same columns); the rows."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    edit(rows)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return rows
