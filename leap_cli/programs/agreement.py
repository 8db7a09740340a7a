"""Agreement of generated programs with reference programs (the synthetic kitchen's true ones).

Sub-actions are compared after flattening (``targets.flatten_program``) as (verb class, object A class,
object B class) triples, resolved through the class files. Per pair: precision/recall of the triple
multiset, of the verbs and of the objects (A and B together), and whether the sequences are equal.
"""

from __future__ import annotations

from collections import Counter

from leap_cli.epic.classes import ClassVocab
from leap_cli.programs.targets import flatten_program
from leap_cli.programs.vocab import resolve_object, resolve_verb


def _triples(program: dict, verbs: ClassVocab, nouns: ClassVocab) -> list[tuple]:
    out = []
    for s in flatten_program(program):
        b = s.get("object_b")
        out.append((resolve_verb(s["verb"], verbs), resolve_object(s["object_a"], nouns),
                    resolve_object(b, nouns) if b else None))
    return out


def _overlap(a: Counter, b: Counter) -> int:
    return sum((a & b).values())


def compare_programs(pred: dict, true: dict, verbs: ClassVocab, nouns: ClassVocab) -> dict:
    """Counts for one pair: matched / predicted / true triples, verbs and objects, and exact sequence match."""
    p, t = _triples(pred, verbs, nouns), _triples(true, verbs, nouns)
    pv, tv = Counter(x[0] for x in p), Counter(x[0] for x in t)
    po = Counter(o for x in p for o in x[1:] if o is not None)
    to = Counter(o for x in t for o in x[1:] if o is not None)
    return {"triples": (_overlap(Counter(p), Counter(t)), len(p), len(t)),
            "verbs": (_overlap(pv, tv), sum(pv.values()), sum(tv.values())),
            "objects": (_overlap(po, to), sum(po.values()), sum(to.values())),
            "exact": p == t}


def aggregate(pairs: list[dict]) -> dict:
    """Micro-averaged precision, recall and F1 per field, and the exact-sequence rate."""
    out: dict = {"pairs": len(pairs)}
    for field in ("triples", "verbs", "objects"):
        m = sum(x[field][0] for x in pairs)
        np_ = sum(x[field][1] for x in pairs)
        nt = sum(x[field][2] for x in pairs)
        prec = m / np_ if np_ else 0.0
        rec = m / nt if nt else 0.0
        out[field] = {"precision": round(prec, 4), "recall": round(rec, 4),
                      "f1": round(2 * prec * rec / (prec + rec), 4) if prec + rec else 0.0}
    out["exact_sequence"] = round(sum(x["exact"] for x in pairs) / len(pairs), 4) if pairs else 0.0
    return out
