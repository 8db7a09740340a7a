"""Writing one benchmark's section of benchmarks/RESULTS.md (the section from its ``## `` heading to the next)."""

from __future__ import annotations

import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def replace_section(section: str, text: str, path: Path = RESULTS) -> None:
    """Put ``text`` (which starts with the ``section`` heading) in place of that section, or append it."""
    old = path.read_text() if path.exists() else "# Benchmark results\n\n"
    pattern = re.compile(re.escape(section) + r".*?(?=\n## |\Z)", re.S)
    new = pattern.sub(lambda _: text.rstrip() + "\n", old) if section in old else old.rstrip() + "\n\n" + text
    path.write_text(new)
