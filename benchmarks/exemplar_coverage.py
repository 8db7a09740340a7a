"""Verb-class coverage of the exemplar library: the share of a split's segments whose verb class has an
exemplar (issue 12: >= 97% of EPIC-KITCHENS-100 validation segments with >= 60 exemplars).

    python benchmarks/exemplar_coverage.py --annotations DIR [--split validation] [--counts-out FILE]

DIR holds EPIC's ``EPIC_100_{split}.csv`` and ``EPIC_100_verb_classes.csv``. ``--counts-out`` writes the
per-class segment counts (``verb_class,key,segments``), the form ``tests/data/epic100/`` keeps for the test.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from leap_cli.programs.prompt import load_exemplars  # noqa: E402


def coverage(counts: dict[int, int], exemplar_classes: set[int]) -> float:
    """Share of the segments (``counts``: verb class -> segments) whose class has an exemplar."""
    total = sum(counts.values())
    return sum(n for c, n in counts.items() if c in exemplar_classes) / total if total else 0.0


def split_counts(csv_path: Path) -> Counter:
    with open(csv_path, newline="", encoding="utf-8") as f:
        return Counter(int(r["verb_class"]) for r in csv.DictReader(f) if r.get("verb_class", "") != "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--annotations", type=Path, required=True)
    ap.add_argument("--split", default="validation")
    ap.add_argument("--counts-out", type=Path)
    args = ap.parse_args()
    counts = split_counts(args.annotations / f"EPIC_100_{args.split}.csv")
    with open(args.annotations / "EPIC_100_verb_classes.csv", newline="", encoding="utf-8") as f:
        keys = {int(r["id"]): r["key"] for r in csv.DictReader(f)}
    ex = load_exemplars()
    have = {e.verb_class for e in ex}
    print(f"{len(ex)} exemplars, {len(have)} verb classes; {sum(counts.values())} {args.split} segments in "
          f"{len(counts)} verb classes; covered: {coverage(counts, have):.2%}")
    missing = [(n, keys.get(c, c)) for c, n in counts.most_common() if c not in have]
    print("most frequent classes without an exemplar:", ", ".join(f"{k} ({n})" for n, k in missing[:10]))
    if args.counts_out:
        with open(args.counts_out, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["verb_class", "key", "segments"])
            for c in sorted(counts):
                w.writerow([c, keys.get(c, ""), counts[c]])


if __name__ == "__main__":
    main()
