"""The offline program generator: a deterministic baseline, not an LLM.

For a clip whose verb is known (labels or narration) it takes the nearest exemplar with the same EPIC verb
class and renames the exemplar's objects by the role they play in it, from what the descriptor record says:

- the action noun (object A): the narration's noun; with no narration, the object a hand touches longest
  (``hands`` component), else the detected object most seen near a hand, else the first detected object;
- an exemplar object that the clip narrates (the towel of "dry hands with towel") keeps its name and role;
- *held* objects (a ``holding``/``touching`` argument other than the noun: the knife of a cut, the sponge of
  a wash): the objects the hands are in contact with (longest contact first), then the objects detected near
  a hand (in at least ``MIN_NEAR_SHARE`` of the frames), then the narration's other nouns;
- other second objects (an ``object_b`` nobody holds: the glass poured into, the top a cup is put on): the
  narration's other nouns (those no hand touches);
- every other exemplar object (tap, sink, water, ...) stays when the class list has it and nothing above
  took its class; else it becomes the clip's next unused object (narration, contacts, near-hand, detections);
  an object the class list lacks (a smaller list than EPIC's: the synthetic kitchen has no handle) for which
  the clip has none left is left out with its sub-actions and conditions ("grasp(handle) pull(fridge,
  handle)" -> "open(fridge)"), unless that breaks the program (a loop's condition on it, an empty body,
  chaining); only then does it become the first unused class of the list.

Renaming is one-to-one on noun classes (an object whose class was claimed takes the claimer's old class
when it can), so the exemplar's chaining stays valid. Then hands: when the hands component says which hand
touches an object and the exemplar holds/touches it with the other hand, more often than with the same one,
left and right are swapped through the whole program (conditions and sub-action hands), which keeps it valid.
Exemplar choice: same verb class; then same noun class; then the most exemplar objects among the clip's
objects (noun, narration, contacts, detections); then the most sound and camera-motion kinds shared by the
two clip texts; then word overlap of the clip text with the exemplar's narration; then id.
A verb the library has no exemplar for gets a one-step template program. A clip with no verb (e.g. test
without narration) fails.

The clip text (``extract.describe``'s rendering, parsed back) adds what the records' objects and hands do not:
a hand contact nobody named takes the name of the object detected near that hand; running water heard with
the tap or sink in view (or a condition on the tap in the exemplar), in a program whose steps never work the
tap, adds ``turn-on(tap)`` (first when the
water starts during the clip, else under ``if switched_off(tap)``); a head turn in the first half of the clip
with the action noun in view opens the first purpose ("turn left to the fridge, then ...").

Purposes agree with the program: a copied purpose loses the exemplar clip's evidence (the parenthesised
"(the clatter at 0.8 s)"), names the renamed objects ('steady the onion' -> 'steady the potato'), swaps left
and right with the hands, and is written anew from its step ("cut the potato with the knife", "insert the plate
into the fridge" where the step puts it there) when it still names an object that neither the program nor the
clip has.
"""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass, field

from leap_cli.epic.classes import ClassVocab
from leap_cli.extract.describe import parse_clip_text, parse_timeline, span_of
from leap_cli.programs.prompt import ClipInfo, Exemplar, _words
from leap_cli.programs.vocab import PREDICATES, resolve_object, resolve_verb

# A detected object counts as near a hand (a candidate tool) when seen near one in this share of the frames.
MIN_NEAR_SHARE = 0.25
SIDES = ("left", "right")
UNNAMED = "object"  # a hand contact whose object nobody named
_HAND_PREDICATES = ("holding", "touching")


class OfflineError(Exception):
    pass


@dataclass
class Evidence:
    """What the descriptor record says about a clip's objects, as EPIC noun class ids (the noun excluded)."""

    noun: int
    narrated: list[int] = field(default_factory=list)  # the narration's other nouns (by role: ``_by_role``)
    sources: list[int] = field(default_factory=list)  # those of them said as where the object comes from
    contacts: list[int] = field(default_factory=list)  # objects a hand touches, longest contact first
    near: list[int] = field(default_factory=list)  # objects detected near a hand, most seen first
    detected: list[int] = field(default_factory=list)  # every other detected object
    hand: dict[int, str] = field(default_factory=dict)  # object -> the one hand that touches it (when one does)

    def pool(self) -> list[int]:
        out: list[int] = []
        for c in (*self.narrated, *self.contacts, *self.near, *self.detected):
            if c not in out:
                out.append(c)
        return out


@dataclass
class Signals:
    """What a clip text says besides objects: sounds and camera motions with times, and what is visible."""

    sounds: list[tuple[float, float, str]] = field(default_factory=list)  # (start, stop, "running water")
    motions: list[tuple[float, float, str]] = field(default_factory=list)  # (start, stop, "turns head left")
    visible: list[str] = field(default_factory=list)  # objects the objects component names
    duration: float = 0.0

    def heard(self, sound: str) -> list[tuple[float, float]]:
        return [(a, b) for a, b, t in self.sounds if t == sound]

    def keys(self) -> set[str]:
        """Sound and motion kinds, for comparing a clip with an exemplar."""
        return {f"sound:{t}" for _, _, t in self.sounds} | {f"camera:{t}" for _, _, t in self.motions}


_MOTION = re.compile(r"^(turns head left|turns head right|looks up|looks down|tilts head left|tilts head right)")
_VISIBLE = re.compile(r"^(\S+) visible \(")


def clip_signals(text: str) -> Signals:
    """Sounds, camera motions and visible objects of a rendered clip text (``extract.describe``); an empty
    ``Signals`` for a text that is not one (a narration-only record)."""
    try:
        parts = parse_clip_text(text)
        events = parse_timeline(parts["timeline"])[0] if "timeline" in parts else []
    except ValueError:
        return Signals()
    start, stop = span_of(parts)
    sig = Signals(duration=round(stop - start, 2))
    for a, b, t in events:
        if t.startswith("sound: "):
            sig.sounds.append((a, b, t[len("sound: "):]))
        elif _MOTION.match(t):
            sig.motions.append((a, b, _MOTION.match(t).group(1)))
        elif _VISIBLE.match(t) and _VISIBLE.match(t).group(1) not in sig.visible:
            sig.visible.append(_VISIBLE.match(t).group(1))
    return sig


def _unique(ids) -> list[int]:
    out: list[int] = []
    for c in ids:
        if c is not None and c not in out:
            out.append(c)
    return out


def _touches(info: ClipInfo, nouns: ClassVocab) -> dict[int, dict[str, float]]:
    """Noun class -> {hand: seconds in contact}, in the order of the record's contacts (longest first)."""
    out: dict[int, dict[str, float]] = {}
    for obj, hand, seconds in info.contacts:
        if obj == UNNAMED:  # named by the object detected near that hand, if any
            obj = next((o for o, h, share in info.near_hands if h == hand and share >= MIN_NEAR_SHARE
                        and resolve_object(o, nouns) is not None), UNNAMED)
        cid = resolve_object(obj, nouns)
        if cid is not None and hand in SIDES:
            out.setdefault(cid, {})
            out[cid][hand] = out[cid].get(hand, 0.0) + seconds
    return out


def _contact_noun(touch: dict[int, dict[str, float]]) -> int | None:
    """The object touched longest; on a tie the one the left hand holds (the other hand usually wields the tool)."""
    if not touch:
        return None
    return min(touch, key=lambda c: (-round(sum(touch[c].values()), 2), "left" not in touch[c]))


def clip_noun(info: ClipInfo, nouns: ClassVocab) -> int | None:
    """The action noun's class: the labels / narration, else hand contacts, else near-hand or detected objects."""
    if info.noun_class is not None:
        return info.noun_class
    for form in (info.noun, *(info.all_nouns or ())):
        if form and resolve_object(form, nouns) is not None:
            return resolve_object(form, nouns)
    cid = _contact_noun(_touches(info, nouns))
    if cid is not None:
        return cid
    for obj, _, _ in info.near_hands:
        if resolve_object(obj, nouns) is not None:
            return resolve_object(obj, nouns)
    return next((resolve_object(o, nouns) for o in info.objects if resolve_object(o, nouns) is not None), None)


def clip_evidence(info: ClipInfo, nid: int, nouns: ClassVocab) -> Evidence:
    touch = _touches(info, nouns)
    hand = {}
    for cid, by_hand in touch.items():
        if len(by_hand) == 1:
            hand[cid] = next(iter(by_hand))
        else:  # both hands: the one that touches it at least twice as long, else neither
            (h1, s1), (h2, s2) = sorted(by_hand.items(), key=lambda kv: -kv[1])
            if s1 >= 2 * s2:
                hand[cid] = h1
    ranked = sorted(touch, key=lambda c: -sum(touch[c].values()))  # stable: ties keep the record's order
    rest = lambda ids: [c for c in _unique(ids) if c != nid]  # noqa: E731
    ranks = _role_ranks(info.narration, info.all_nouns)
    return Evidence(
        noun=nid,
        narrated=rest(resolve_object(n, nouns) for n in _by_role(ranks)),
        sources=rest(resolve_object(n, nouns) for n, r in ranks.items() if r == _SOURCE),
        contacts=rest(ranked),
        near=rest(resolve_object(o, nouns) for o, _, share in info.near_hands if share >= MIN_NEAR_SHARE),
        detected=rest(resolve_object(o, nouns) for o in info.objects),
        hand=hand)


# Where a narration's noun stands to the action, by the word before it: a place the object goes to first (the
# second object of "move pasta from pan to tupperware" is the tupperware), a co-object ("knife and fork") or a
# place it comes from after the nouns said without either
_TO = {"to", "into", "onto", "in", "on", "inside", "under", "over", "towards"}
_FROM = {"from", "off", "out"}
_AND = {"and", "&", "with"}
_SKIP = {"the", "a", "an", "some", "of", "its", "their", "his", "her", "my", "back", "up", "down"}
_SOURCE = 3  # the rank of a place the object comes from (``_role_ranks``)


def _by_role(ranks: dict[str, int]) -> list[str]:
    """The narration's nouns (``_role_ranks``) in the order the offline generator gives them roles: places they
    go to, then the rest, then co-objects, then places they come from."""
    return sorted(ranks, key=ranks.get)


def _role_ranks(narration: str | None, forms) -> dict[str, int]:
    """{form: 0 a place it goes to, 1 no role said, 2 a co-object, ``_SOURCE`` a place it comes from}, in the
    narration's order of the forms."""
    forms = [f for f in (forms or []) if f]
    words = [w.strip(".,;!?").lower() for w in (narration or "").split()]

    def rank(form: str) -> int:
        head, *modifiers = form.lower().split(":")  # ("board:chopping": "chopping board")
        at = next((i for i, w in enumerate(words) if w == head or w == head + "s" or w == head + "es"), None)
        if at is None:
            return 1
        for w in reversed(words[max(0, at - 4 - len(modifiers)):at]):
            if w in modifiers:
                continue
            if w in _TO:
                return 0
            if w in _FROM:
                return _SOURCE
            if w in _AND:
                return 2
            if w not in _SKIP:
                return 1  # another word between (an adjective, a noun): no role said
        return 1

    return {f: rank(f) for f in dict.fromkeys(forms)}


# ---- walking a program ----

def _sub_actions(steps):
    for s in steps:
        if s["type"] == "sub_action":
            yield s
        else:
            for k in ("steps", "then", "else"):
                yield from _sub_actions(s.get(k) or [])


def _conditions(program: dict):
    """Every condition in program order: the program's pre, each step's, the program's post."""
    def walk(steps):
        for s in steps:
            if s["type"] == "sub_action":
                yield from s.get("pre") or []
                yield from s.get("post") or []
            else:
                yield from (s[k] for k in ("until", "if") if k in s)
                for k in ("steps", "then", "else"):
                    yield from walk(s.get(k) or [])
    yield from program.get("pre") or []
    yield from walk(program["steps"])
    yield from program.get("post") or []


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


def _swap_hands(program: dict) -> dict:
    """Left and right exchanged everywhere (condition hand arguments, sub-action hands)."""
    p = copy.deepcopy(program)
    other = {"left": "right", "right": "left"}
    for c in _conditions(p):
        c["args"] = [other.get(a, a) if kind == "hand" else a
                     for a, kind in zip(c["args"], PREDICATES.get(c["predicate"], ()))]
    for s in _sub_actions(p["steps"]):
        if s.get("hand") in other:
            s["hand"] = other[s["hand"]]
    return p


# ---- roles of an exemplar's objects ----

def _roles(program: dict) -> tuple[list[str], list[str]]:
    """(held, second): objects a hand holds or touches other than the action noun, tools first (a held object
    that is some sub-action's ``object_b``: the knife of a cut, not the board the other hand steadies), then in
    order of first use; and the sub-actions' other ``object_b``s, those no hand holds."""
    noun = program["action"]["noun"]
    held: list[str] = []
    for c in _conditions(program):
        if c["predicate"] in _HAND_PREDICATES and not c["negated"] and c["args"][1] != noun and c["args"][1] not in held:
            held.append(c["args"][1])
    bs = [s.get("object_b") for s in _sub_actions(program["steps"])]
    held.sort(key=lambda o: o not in bs)  # stable: tools first, each group in order of first use
    second: list[str] = []
    for b in bs:
        if b and b != noun and b not in held and b not in second:
            second.append(b)
    return held, second


def _object_mapping(program: dict, ev: Evidence, nouns: ClassVocab, *, drop: bool = True
                    ) -> tuple[dict[str, int], set[str]]:
    """(exemplar object name -> clip noun class, one-to-one on classes; the objects to leave out: with ``drop``,
    those outside the class list for which the clip has no object left; see the module docstring)."""
    cls = lambda name: resolve_object(name, nouns)  # noqa: E731
    mapping: dict[str, int] = {}
    taken: set[int] = set()

    def give(old: str, cid: int) -> None:
        mapping[old] = cid
        taken.add(cid)

    def first_free(cands) -> int | None:
        return next((c for c in cands if c is not None and c not in taken), None)

    def twin(old: str) -> str | None:
        """An already renamed object of the same class under another name ('board' and 'board:chopping')."""
        own = cls(old)
        return next((o for o in mapping if own is not None and cls(o) == own), None)

    give(program["action"]["noun"], ev.noun)
    # an exemplar object the clip narrates keeps its name and role (the towel of "dry hands with towel" was
    # given to the put's target, and the held towel became "top": take(top), rub(hand, top), put(top, towel))
    for old in _objects_of(program):
        own = cls(old)
        if old not in mapping and own is not None and own in ev.narrated and own not in taken:
            give(old, own)
    held, second = _roles(program)
    touched = set(ev.hand) | set(ev.contacts)
    for old in second:
        if twin(old):
            continue
        c = first_free(c for c in ev.narrated if c not in touched and c not in ev.sources)  # (not where it came from)
        if c is not None:
            give(old, c)
    for old in held:
        # a held object of the clip noun's class (the board of "scrape onion" for "scrape board") is not a tool slot
        if old not in mapping and cls(old) != ev.noun and not twin(old):
            # (the kettle of "pour water from kettle into pan": where it comes from is what is held)
            c = first_free([*ev.sources, *(c for c in ev.narrated if c in touched), *ev.contacts, *ev.near,
                            *ev.narrated])
            if c is not None:
                give(old, c)
    pool = ev.pool()
    gone: set[str] = set()
    for old in _objects_of(program):
        if old in mapping:
            continue
        if twin(old):  # the same class stays one class, so facts about it still chain
            mapping[old] = mapping[twin(old)]
            continue
        own = cls(old)
        if own is not None and own not in taken:
            give(old, own)
            continue
        # its class was claimed (the clip's noun renamed another object to it): take that object's old class
        claimer = next((o for o, c in mapping.items() if own is not None and c == own and o != old), None)
        if own is None and drop and first_free(pool) is None:
            gone.add(old)  # (a handle where the list has none): any other class would be an object not there
            continue
        c = first_free([cls(claimer) if claimer else None, *pool, *nouns.ids])
        if c is None:
            raise OfflineError("the class list has too few objects for the exemplar program")
        give(old, c)
    return mapping, gone


def _without(program: dict, gone: set[str]) -> dict | None:
    """The exemplar program without the objects ``gone``: their sub-actions (as object A) and conditions left
    out, an object B of theirs cleared; None where that leaves no steps, a loop or conditional without its
    condition, or a body empty."""
    p = copy.deepcopy(program)

    def keep(c: dict) -> bool:
        return not any(kind == "object" and a in gone for a, kind in zip(c["args"], PREDICATES.get(c["predicate"], ())))

    def walk(steps: list[dict]) -> list[dict] | None:
        out = []
        for s in steps:
            if s["type"] == "sub_action":
                if s["object_a"] in gone:
                    continue
                if s.get("object_b") in gone:
                    s["object_b"] = None
                s["pre"] = [c for c in s.get("pre") or [] if keep(c)]
                s["post"] = [c for c in s.get("post") or [] if keep(c)]
            else:
                if not all(keep(s[k]) for k in ("until", "if") if k in s):
                    return None
                for k in ("steps", "then", "else"):
                    if k in s:
                        s[k] = walk(s[k])
                        if s[k] is None or (not s[k] and k != "else"):
                            return None
            out.append(s)
        return out

    p["pre"] = [c for c in p["pre"] if keep(c)]
    p["post"] = [c for c in p["post"] if keep(c)]
    p["steps"] = walk(p["steps"])
    return p if p["steps"] else None


def _hands_disagree(program: dict, ev: Evidence, nouns: ClassVocab) -> bool:
    """Whether the clip's hands touch the program's objects with the other hand more often than the same."""
    first: dict[int, str] = {}
    for c in _conditions(program):
        if c["predicate"] in _HAND_PREDICATES and c["args"][0] in SIDES:
            cid = resolve_object(c["args"][1], nouns)
            if cid is not None:
                first.setdefault(cid, c["args"][0])
    for s in _sub_actions(program["steps"]):
        if s.get("hand") in SIDES:
            cid = resolve_object(s["object_a"], nouns)
            if cid is not None:
                first.setdefault(cid, s["hand"])
    score = sum(1 if ev.hand[c] == h else -1 for c, h in first.items() if c in ev.hand)
    return score < 0


_EXEMPLAR_SIGNALS: dict[tuple[str, str], set[str]] = {}


def _exemplar_signals(e: Exemplar) -> set[str]:
    key = (e.id, e.text)
    if key not in _EXEMPLAR_SIGNALS:
        _EXEMPLAR_SIGNALS[key] = clip_signals(e.text).keys()
    return _EXEMPLAR_SIGNALS[key]


def _exemplar_key(e: Exemplar, nid: int, clip_objects: set[int], signals: set[str], words: set[str],
                  nouns: ClassVocab):
    classes = {resolve_object(o, nouns) for o in _objects_of(e.program)}
    return (e.noun_class != nid, -len(classes & clip_objects), -len(signals & _exemplar_signals(e)),
            -len(words & _words(e.narration)), e.id)


# ---- what the clip's sound and camera add ----

WATER = "running water"
TAP = "tap"
WATER_LATE = 0.3  # s: running water that starts later was heard being turned on


def _add_tap_step(program: dict, sig: Signals, verbs: ClassVocab, nouns: ClassVocab) -> dict:
    """Running water is heard, the tap (or sink) is seen or the exemplar has a condition on the tap, but no
    step of the exemplar works the tap: the water was turned on. Water starting after the clip's first ``WATER_LATE`` s was heard being turned on:
    ``turn-on(tap)`` comes first, the tap off before; water from the start may have run before the clip:
    ``if switched_off(tap): turn-on(tap)``. Either by a hand that holds no tool; the program's
    ``switched_on(tap)`` precondition goes. Needs the tap and ``turn-on`` in the class lists, and a result
    that still validates (else the program stays as it was)."""
    from leap_cli.programs.validate import validate_semantics

    water = sig.heard(WATER)
    seen = {resolve_object(o, nouns) for o in sig.visible}
    tap = resolve_object(TAP, nouns)
    expected = tap in {resolve_object(o, nouns) for o in _objects_of(program)}  # a condition on the tap
    if not water or tap is None or resolve_verb("turn-on", verbs) is None \
            or not (expected or (seen & {tap, resolve_object("sink", nouns)}) - {None}):
        return program
    if any(resolve_object(x, nouns) == tap for s in _sub_actions(program["steps"])
           for x in (s["object_a"], s.get("object_b")) if x):
        return program
    tools = {s.get("object_b") for s in _sub_actions(program["steps"])} - {None}
    busy = {c["args"][0] for c in _conditions(program)
            if c["predicate"] in _HAND_PREDICATES and not c["negated"] and c["args"][1] in tools}
    hand = next((h for h in ("left", "right") if h not in busy), "left")
    a, _ = water[0]
    off = {"predicate": "switched_off", "args": [TAP], "negated": False}
    step = {"type": "sub_action", "verb": "turn-on", "object_a": TAP, "object_b": None, "hand": hand,
            "pre": [dict(off)], "post": [{"predicate": "switched_on", "args": [TAP], "negated": False}],
            "purpose": f"start the water (running water heard from {a:.1f} s)"}
    p = copy.deepcopy(program)
    p["pre"] = [c for c in p["pre"] if not (c["predicate"] == "switched_on" and resolve_object(c["args"][0], nouns) == tap)]
    if a > WATER_LATE:
        p["pre"].append(dict(off))
        p["steps"].insert(0, step)
    else:
        p["steps"].insert(0, {"type": "conditional", "if": dict(off), "then": [step], "else": []})
    return program if validate_semantics(p, verbs, nouns) else p


def _turn_towards(program: dict, sig: Signals, noun: str) -> None:
    """A head turn in the first half of the clip, with the action noun seen: the first sub-action's purpose
    says the actor turns towards it (the turn towards the fridge)."""
    if not sig.motions:
        return
    a, _, motion = sig.motions[0]
    if not motion.startswith("turns head") or a > sig.duration / 2 or noun not in sig.visible:
        return
    first = next(_sub_actions(program["steps"]), None)
    if first is not None:
        side = motion.rsplit(" ", 1)[1]
        first["purpose"] = f"turn {side} to the {_spoken(noun)}, then {first['purpose'] or first['verb']}"


# ---- purposes agree with the renamed program ----

def _spoken(name: str) -> str:
    """How a purpose says an EPIC noun: 'board:chopping' -> 'chopping board'."""
    return " ".join(reversed(name.split(":")))


def _forms(name: str) -> list[str]:
    """The ways a purpose may name an object: 'board:chopping', 'chopping board', 'board'."""
    out = [name, _spoken(name), name.split(":")[0]]
    return sorted(dict.fromkeys(out), key=len, reverse=True)  # (a set's order of equal lengths varied by run)


_EVIDENCE = re.compile(r"\s*\([^()]*\)")  # "(the clatter at 0.8 s)": what the exemplar's own clip showed


def _foreign(text: str, allowed: set[int], nouns: ClassVocab) -> bool:
    """Whether the text names an object (a word or two-word noun of the class list) outside ``allowed``."""
    words = re.findall(r"[a-z]+(?::[a-z]+)?", text.lower())
    skip = set()
    for i in range(len(words) - 1):
        cid = nouns.resolve(f"{words[i]} {words[i + 1]}")
        if cid is not None and " " not in nouns.keys[cid]:
            if cid not in allowed:
                return True
            skip |= {i, i + 1}
    return any(i not in skip and (cid := nouns.resolve(w)) is not None and cid not in allowed
               for i, w in enumerate(words))


def _purposes(program: dict, exemplar: dict, names: dict[str, str], swapped: bool, known: set[int],
              nouns: ClassVocab) -> None:
    """Each copied purpose without the exemplar clip's evidence in parentheses, its objects renamed like the
    step's, left and right swapped with the hands; a purpose that still names an object neither the program
    nor the clip (``known`` classes) has is written anew from the step."""
    renamed = {old: new for old, new in names.items() if old != new}
    allowed = known | {resolve_object(o, nouns) for o in _objects_of(program)} | {nouns.resolve("hand")}
    other = {"left": "right", "right": "left"}
    for old_sub, sub in zip(_sub_actions(exemplar["steps"]), _sub_actions(program["steps"])):
        text = _EVIDENCE.sub("", old_sub.get("purpose") or "").strip()
        if renamed:
            pattern = re.compile(r"\b(" + "|".join(re.escape(f) for old in renamed for f in _forms(old)) + r")\b")
            lookup = {f: _spoken(new) for old, new in renamed.items() for f in _forms(old)}
            text = pattern.sub(lambda m: lookup[m.group(1)], text)
        if swapped:
            text = re.sub(r"\b(left|right)\b", lambda m: other[m.group(1)], text)
        if not text or _foreign(text, allowed, nouns):
            text = f"{sub['verb']} the {_spoken(sub['object_a'])}" + (
                f" {_preposition(sub)} the {_spoken(sub['object_b'])}" if sub.get("object_b") else "")
        sub["purpose"] = text


def _preposition(sub: dict) -> str:
    """How a purpose joins object B to the step: where the step puts A (its post ``in(A, B)``: into; ``on``:
    onto), else with (a tool). ("lift the bowl with the top" was said of a bowl put on the counter.)"""
    for cond in sub.get("post") or []:
        if not cond["negated"] and cond["args"] == [sub["object_a"], sub["object_b"]]:
            if cond["predicate"] == "in":
                return "into"
            if cond["predicate"] == "on":
                return "onto"
    return "with"


@functools.lru_cache(maxsize=1)
def _narration_limit() -> int:
    from leap_cli.programs.schema import load_schema

    return load_schema()["$defs"]["action"]["properties"]["narration"]["maxLength"]


def _within_schema(narration: str | None) -> str | None:
    """The narration cut to the schema's limit (a data set's narration may be longer; the program must stay
    valid), at a word where there is one, marked by an ellipsis."""
    limit = _narration_limit()
    if not narration or len(narration) <= limit:
        return narration
    cut = narration[:limit - 1]
    return (cut.rsplit(" ", 1)[0] if " " in cut[limit // 2:] else cut).rstrip() + "…"


def offline_program(info: ClipInfo, exemplars: list[Exemplar], verbs: ClassVocab, nouns: ClassVocab) -> dict:
    verb = info.verb or (info.narration.split()[0] if info.narration else None)
    vid = info.verb_class if info.verb_class is not None else (resolve_verb(verb, verbs) if verb else None)
    if vid is None:
        raise OfflineError("no verb known for this clip (no labels and no narration): the offline backend needs one")
    nid = clip_noun(info, nouns)
    if nid is None:
        raise OfflineError(f"no object known for this clip (noun {info.noun!r}, no hand contacts, no detections)")
    noun_name = nouns.keys[nid]
    verb_name = verb if verb and resolve_verb(verb, verbs) == vid else verbs.keys[vid]
    narration = _within_schema((info.narration or "").strip() or None) or f"{verbs.keys[vid]} {noun_name}"
    action = {"narration": narration, "verb": verb_name, "noun": noun_name, "verb_class": vid, "noun_class": nid}
    ev = clip_evidence(info, nid, nouns)

    same_verb = [e for e in exemplars if e.verb_class == vid]
    if not same_verb:
        return _template(action, ev, verbs, nouns)
    words = _words(" ".join(filter(None, [info.text, info.narration])))
    sig = clip_signals(info.text)
    clip_objects = {nid, *ev.pool()}
    from leap_cli.programs.validate import validate_semantics

    # the nearest exemplar whose program, renamed, asks nothing of an object that it cannot be or do (the
    # toaster's lever and switched_on on the cupboard of "put pan into cupboard"); none: the one-step template
    for best in sorted(same_verb, key=lambda e: _exemplar_key(e, nid, clip_objects, sig.keys(), words, nouns)):
        program = _from_exemplar(best.program, action, ev, sig, verbs, nouns, drop=True)
        if validate_semantics(program, verbs, nouns):  # leaving objects out broke the chaining: rename them all
            program = _from_exemplar(best.program, action, ev, sig, verbs, nouns, drop=False)
        if not _implausible(program, nouns):
            return program
    return _template(action, ev, verbs, nouns)


# EPIC's noun category (the class file's last column) of what can be switched on and off, and the classes a hand
# cannot pick up and hold: the fixed furniture and storage (a chair, a ladder, a stand, a candle, also
# furniture in EPIC's file, are carried), the large appliances, and a hand (category hand)
SWITCHABLE = ("appliances",)
UNHELD = ("top", "cupboard", "drawer", "sink", "kitchen", "floor", "wall", "shelf", "window", "door:kitchen",
          "rack:drying",
          # the large appliances (offline-v5: "move things in the fridge" held the fridge and put it in the dishwasher)
          "fridge", "freezer", "dishwasher", "oven", "hob", "machine:washing", "microwave", "heater")


def _implausible(program: dict, nouns: ClassVocab) -> str | None:
    """What a renamed exemplar program asks of an object that its class cannot be or do: switched on or off
    outside EPIC's appliances, held when it is fixed furniture (``UNHELD``) or a hand; None when nothing."""
    for cond in _conditions(program):
        pred, args = cond["predicate"], cond["args"]
        obj = args[0] if pred in ("switched_on", "switched_off") else args[1] if pred == "holding" else None
        cid = resolve_object(obj, nouns) if obj else None
        category = nouns.categories.get(cid) if cid is not None else None
        if category is None or cond["negated"]:
            continue
        if pred != "holding" and category not in SWITCHABLE:
            return f"{pred}({obj}): a {category} object"
        if pred == "holding" and (category == "hand" or nouns.keys[cid] in UNHELD):
            return f"holding({obj}): a {category} object that is not carried"
    return None


def _from_exemplar(exemplar: dict, action: dict, ev: Evidence, sig: Signals, verbs: ClassVocab, nouns: ClassVocab,
                   *, drop: bool) -> dict:
    mapping, gone = _object_mapping(exemplar, ev, nouns, drop=drop)
    if gone:
        exemplar = _without(exemplar, gone) or exemplar
        if any(o in gone for o in _objects_of(exemplar)):  # could not be left out: renamed after all
            mapping, gone = _object_mapping(exemplar, ev, nouns, drop=False)
    names = {old: old if resolve_object(old, nouns) == cid else nouns.keys[cid] for old, cid in mapping.items()}
    program = _rename(exemplar, names)
    swapped = _hands_disagree(program, ev, nouns)
    if swapped:
        program = _swap_hands(program)
    _purposes(program, exemplar, names, swapped,
              {ev.noun, *ev.pool(), *(resolve_object(o, nouns) for o in sig.visible)}, nouns)
    _turn_towards(program, sig, action["noun"])
    program["action"] = action
    for sub in _sub_actions(program["steps"]):  # a step verb outside a smaller class list becomes the action's verb
        if resolve_verb(sub["verb"], verbs) is None:
            sub["verb"] = action["verb"]
    return _add_tap_step(program, sig, verbs, nouns)


def _template(action: dict, ev: Evidence, verbs: ClassVocab, nouns: ClassVocab) -> dict:
    """One sub-action: the verb on the noun, with the narration's second noun, else what a hand touches, else
    an object near a hand, as object B."""
    noun_name = action["noun"]
    tool = next((c for c in (*ev.narrated, *ev.contacts, *ev.near) if c != ev.noun), None)
    hand = ev.hand.get(tool) or ev.hand.get(ev.noun) or "right"
    touch_hand = ev.hand.get(ev.noun) or hand
    said = action["narration"] != f"{verbs.keys[action['verb_class']]} {noun_name}"  # (the clip's own narration)
    step = {"type": "sub_action", "verb": action["verb"], "object_a": noun_name,
            "object_b": nouns.keys[tool] if tool is not None else None, "hand": hand,
            "pre": [{"predicate": "visible", "args": [noun_name], "negated": False}],
            "post": [{"predicate": "touching", "args": [touch_hand, noun_name], "negated": False}],
            # the narration says it best ("put stand into cupboard", where "put-into the stand" did not)
            "purpose": action["narration"] if said else f"{verbs.keys[action['verb_class']]} the {_spoken(noun_name)}"}
    return {"action": action, "pre": [{"predicate": "visible", "args": [noun_name], "negated": False}],
            "post": [{"predicate": "touching", "args": [touch_hand, noun_name], "negated": False}], "steps": [step]}
