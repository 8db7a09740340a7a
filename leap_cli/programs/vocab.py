"""The closed vocabularies of action programs: predicates with typed arguments, hands, motor primitives.

Verbs and objects of a program resolve to EPIC verb/noun classes through the class files' synonym lists
(``ClassVocab.resolve``). A small set of *motor primitives* that LLMs like to use (reach, grasp, release,
...) is accepted too; each maps to the EPIC verb class that fits it best (table ``MOTOR_PRIMITIVES``).
"""

from __future__ import annotations

from leap_cli.epic.classes import ClassVocab, normalize_form

HANDS = ("left", "right", "both", "either")

# predicate -> argument types ("hand" or "object"). Extends COMMON.md's list with peeled/cooked.
PREDICATES: dict[str, tuple[str, ...]] = {
    "holding": ("hand", "object"),
    "touching": ("hand", "object"),
    "in": ("object", "object"),
    "on": ("object", "object"),
    "open": ("object",),
    "closed": ("object",),
    "clean": ("object",),
    "dirty": ("object",),
    "cut": ("object",),
    "whole": ("object",),
    "empty": ("object",),
    "full": ("object",),
    "switched_on": ("object",),
    "switched_off": ("object",),
    "mixed": ("object",),
    "wet": ("object",),
    "dry": ("object",),
    "visible": ("object",),
    "peeled": ("object",),
    "cooked": ("object",),
}

# Pairs that cannot hold at once: asserting one retracts the other in the symbolic state.
OPPOSITES: dict[str, str] = {
    "open": "closed", "closed": "open", "clean": "dirty", "dirty": "clean", "cut": "whole", "whole": "cut",
    "empty": "full", "full": "empty", "switched_on": "switched_off", "switched_off": "switched_on",
    "wet": "dry", "dry": "wet",
}

# Pairs where "not A" means "B" (empty/full are not: a jug can be half full).
COMPLEMENTS: dict[str, str] = {k: v for k, v in OPPOSITES.items() if k not in ("empty", "full")}

# Motor primitive -> EPIC verb key (class of EPIC_100_verb_classes.csv) that fits it.
MOTOR_PRIMITIVES: dict[str, str] = {
    "reach": "move", "grasp": "take", "release": "let-go", "lift": "lift", "lower": "lower", "hold": "hold",
    "rotate": "turn", "press": "press", "push": "press", "pull": "pull", "slide": "slide", "tilt": "turn",
    "carry": "carry", "wait": "wait", "stir": "mix", "wipe": "wash", "grip": "take", "let-go": "let-go",
    "place": "put", "drop": "drop", "scrub": "scrub", "twist": "turn", "squeeze": "squeeze",
}

NONE_OBJECT = "none"


def resolve_verb(form: str, verbs: ClassVocab) -> int | None:
    """EPIC verb class id of an EPIC verb form or a motor primitive, else None."""
    cid = verbs.resolve(form)
    if cid is not None:
        return cid
    target = MOTOR_PRIMITIVES.get(normalize_form(form))
    return verbs.resolve(target) if target else None


def resolve_object(form: str, nouns: ClassVocab) -> int | None:
    """EPIC noun class id of an object name (key or instance, 'mixed veg' finds 'veg:mixed'), else None."""
    cid = nouns.resolve(form)
    if cid is None and " " in form.strip():
        # 'chopping board' -> 'board:chopping' is handled by ClassVocab; try the head noun ('kitchen towel' -> 'towel').
        cid = nouns.resolve(form.strip().split()[-1])
    return cid


def object_key(form: str, nouns: ClassVocab | None) -> str:
    """The EPIC noun key of an object name, or its normalised form when it does not resolve."""
    if nouns is not None:
        cid = resolve_object(form, nouns)
        if cid is not None:
            return nouns.keys[cid]
    return normalize_form(form)


def condition_string(cond: dict, nouns: ClassVocab | None = None) -> str:
    """``predicate(arg1,arg2)`` with object args as EPIC noun keys and hands as hand names; negated ones
    are prefixed ``not `` (``not open(fridge)``)."""
    pred = cond["predicate"]
    types = PREDICATES.get(pred, ())
    args = []
    for i, a in enumerate(cond.get("args") or []):
        kind = types[i] if i < len(types) else "object"
        args.append(normalize_form(str(a)) if kind == "hand" else object_key(str(a), nouns))
    text = f"{pred}({','.join(args)})"
    return f"not {text}" if cond.get("negated") else text
