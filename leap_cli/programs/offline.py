"""The offline program generator: a deterministic baseline, not an LLM.

For a clip whose verb is known (labels or narration): take the nearest exemplar with the same EPIC verb
class (same noun class first, then word overlap, then id) and rename its objects: the exemplar's noun becomes
the clip's noun, and the exemplar's first second-object (``object_b``) becomes the clip's second narrated
noun, or else its first detected object that is not already used. Renaming is a permutation of object names
(swapping when the new name already appears), so the exemplar's chaining stays valid. A verb the library has
no exemplar for gets a one-step template program. The noun, when the clip has none, is the first detected
object; a clip with no verb (e.g. test without narration) fails.
"""

from __future__ import annotations

import copy

from leap_cli.epic.classes import ClassVocab
from leap_cli.programs.prompt import ClipInfo, Exemplar, _words
from leap_cli.programs.vocab import PREDICATES, resolve_object, resolve_verb


class OfflineError(Exception):
    pass


def _objects_of(program: dict) -> list[str]:
    """Object names in order of first use (action noun, sub-action objects, condition object args)."""
    seen: list[str] = []

    def add(x):
        if x and x not in seen:
            seen.append(x)

    def conds(cs):
        for c in cs or []:
            for a, kind in zip(c["args"], PREDICATES.get(c["predicate"], ())):
                if kind == "object":
                    add(a)

    def walk(steps):
        for s in steps:
            if s["type"] == "sub_action":
                add(s["object_a"]); add(s.get("object_b")); conds(s.get("pre")); conds(s.get("post"))
            else:
                conds([s[k] for k in ("until", "if") if k in s])
                for k in ("steps", "then", "else"):
                    walk(s.get(k) or [])

    add(program["action"]["noun"])
    conds(program["pre"]); conds(program["post"])
    walk(program["steps"])
    return seen


def _rename(program: dict, mapping: dict[str, str]) -> dict:
    p = copy.deepcopy(program)

    def conds(cs):
        for c in cs or []:
            c["args"] = [mapping.get(a, a) if kind == "object" else a
                         for a, kind in zip(c["args"], PREDICATES.get(c["predicate"], ()))]

    def walk(steps):
        for s in steps:
            if s["type"] == "sub_action":
                s["object_a"] = mapping.get(s["object_a"], s["object_a"])
                if s.get("object_b"):
                    s["object_b"] = mapping.get(s["object_b"], s["object_b"])
                conds(s.get("pre")); conds(s.get("post"))
            else:
                conds([s[k] for k in ("until", "if") if k in s])
                for k in ("steps", "then", "else"):
                    walk(s.get(k) or [])

    conds(p["pre"]); conds(p["post"]); walk(p["steps"])
    p["action"]["noun"] = mapping.get(p["action"]["noun"], p["action"]["noun"])
    return p


def _assign(mapping: dict[str, str], used: list[str], old: str, new: str, nouns: ClassVocab) -> None:
    """Rename ``old`` to ``new``; whichever name currently stands for ``new``'s class takes ``old``'s image
    (a transposition), so the renaming stays one-to-one."""
    new_id = resolve_object(new, nouns)
    image = {u: mapping.get(u, u) for u in used}
    holder = next((u for u, cur in image.items() if u != old and resolve_object(cur, nouns) == new_id), None)
    if holder is not None:
        mapping[holder] = image[old]
    mapping[old] = new


def _first_sub_action(steps):
    for s in steps:
        if s["type"] == "sub_action":
            yield s
        else:
            for k in ("steps", "then", "else"):
                yield from _first_sub_action(s.get(k) or [])


def offline_program(info: ClipInfo, exemplars: list[Exemplar], verbs: ClassVocab, nouns: ClassVocab) -> dict:
    verb = info.verb or (info.narration.split()[0] if info.narration else None)
    vid = info.verb_class if info.verb_class is not None else (resolve_verb(verb, verbs) if verb else None)
    if vid is None:
        raise OfflineError("no verb known for this clip (no labels and no narration): the offline backend needs one")
    noun = info.noun or (info.all_nouns[0] if info.all_nouns else None) or (info.objects[0] if info.objects else None)
    nid = info.noun_class if info.noun_class is not None else (resolve_object(noun, nouns) if noun else None)
    if nid is None:
        raise OfflineError(f"no object known for this clip (noun {noun!r}, no detections)")
    noun_name = nouns.keys[nid]
    verb_name = verb if verb and resolve_verb(verb, verbs) == vid else verbs.keys[vid]
    narration = info.narration or f"{verbs.keys[vid]} {noun_name}"
    action = {"narration": narration, "verb": verb_name, "noun": noun_name, "verb_class": vid, "noun_class": nid}
    extra = [n for n in info.all_nouns[1:] if resolve_object(n, nouns) is not None]
    extra += [o for o in info.objects if resolve_object(o, nouns) not in (None, nid)]

    same_verb = [e for e in exemplars if e.verb_class == vid]
    if not same_verb:
        other = nouns.keys[resolve_object(extra[0], nouns)] if extra else None
        step = {"type": "sub_action", "verb": verb_name, "object_a": noun_name, "object_b": other, "hand": "right",
                "pre": [{"predicate": "visible", "args": [noun_name], "negated": False}],
                "post": [{"predicate": "touching", "args": ["right", noun_name], "negated": False}],
                "purpose": f"{verbs.keys[vid]} the {noun_name}"}
        return {"action": action, "pre": [{"predicate": "visible", "args": [noun_name], "negated": False}],
                "post": [{"predicate": "touching", "args": ["right", noun_name], "negated": False}], "steps": [step]}

    words = _words(" ".join(filter(None, [info.text, info.narration])))
    best = min(same_verb, key=lambda e: (e.noun_class != nid, -len(words & _words(e.narration + " " + e.text)), e.id))
    program = best.program
    used = _objects_of(program)
    mapping: dict[str, str] = {}
    _assign(mapping, used, program["action"]["noun"], noun_name, nouns)
    noun_id = resolve_object(program["action"]["noun"], nouns)
    second = next((s.get("object_b") for s in _first_sub_action(program["steps"])
                   if s.get("object_b") and resolve_object(s["object_b"], nouns) != noun_id), None)
    if second and extra and second not in mapping:
        new = nouns.keys[resolve_object(extra[0], nouns)]
        if resolve_object(new, nouns) != nid:
            _assign(mapping, used, second, new, nouns)
    program = _rename(program, mapping)
    program["action"] = action
    return _fit_vocabulary(program, info, verb_name, verbs, nouns)


def _fit_vocabulary(program: dict, info: ClipInfo, verb_name: str, verbs: ClassVocab, nouns: ClassVocab) -> dict:
    """Make an exemplar from the full EPIC library fit a smaller class list (e.g. the synthetic kitchen's):
    a step verb outside it becomes the action's verb, an object outside it a free object of the list (the
    clip's objects first). Both renamings are one-to-one, so chaining stays valid."""
    used = _objects_of(program)
    missing = [o for o in used if resolve_object(o, nouns) is None]
    mapping: dict[str, str] = {}
    if missing:
        taken = {resolve_object(o, nouns) for o in used} - {None}
        pool = [*info.objects, *info.all_nouns, *(nouns.keys[i] for i in nouns.ids)]
        for old in missing:
            for cand in pool:
                cid = resolve_object(cand, nouns)
                if cid is not None and cid not in taken:
                    mapping[old] = nouns.keys[cid]
                    taken.add(cid)
                    break
        if len(mapping) < len(missing):
            raise OfflineError("the class list has too few objects for the exemplar program")
        program = _rename(program, mapping)
    for sub in _first_sub_action(program["steps"]):
        if resolve_verb(sub["verb"], verbs) is None:
            sub["verb"] = verb_name
    return program
