import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

DATA = Path(__file__).parent / "data"
EPIC_EXCERPT = DATA / "epic100"


@pytest.fixture
def epic_dir() -> Path:
    """An excerpt of the real EPIC-KITCHENS-100 annotations (see tests/data/epic100/ATTRIBUTION.md)."""
    return EPIC_EXCERPT
