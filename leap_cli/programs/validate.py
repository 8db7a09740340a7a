"""Semantic validation of action programs, beyond the schema. Each finding is a JSON pointer + message.

Checks:
- every verb resolves to an EPIC verb class (key or synonym) or a motor primitive (``vocab.MOTOR_PRIMITIVES``),
  every object (``object_a``, ``object_b``, condition arguments, the action noun) to an EPIC noun class;
- when the segment's labels are known, the action's verb/noun (and its class ids) match them;
- chaining: the symbolic state starts from the program's ``pre``; each sub-action's ``pre`` must hold in it,
  then its ``post`` is applied (asserting a state retracts its opposite: clean/dirty, open/closed, ...; of the
  hands, ``either`` is any and ``both`` also left and right together).
  Loops run their body twice (the second pass checks that the body can repeat) and end with ``until`` true;
  ``until`` must be asserted by some sub-action in the loop. Conditionals run both branches (``then`` with
  ``if`` true, ``else`` with it false) and keep the facts both agree on. Routines are inlined. The program's
  ``post`` must hold at the end. A negated precondition holds unless the state says the fact is true;
  a positive one must have been established.
- no empty loops, routines or ``then`` branches; at most ``max_sub_actions`` sub-actions when flattened.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from leap_cli.epic.classes import ClassVocab, normalize_form
from leap_cli.programs.schema import Finding, validate_program
from leap_cli.programs.targets import flatten_program
from leap_cli.programs.vocab import COMPLEMENTS, HANDS, OPPOSITES, PREDICATES, object_key, resolve_object, resolve_verb

DEFAULT_MAX_SUB_ACTIONS = 24
Fact = tuple  # (predicate, arg, ...) with object args as EPIC noun keys


@dataclass(frozen=True)
class Labels:
    """What is known about the segment: EPIC verb/noun classes (None when unknown, e.g. test)."""

    verb_class: int | None = None
    noun_class: int | None = None


class _Resolver:
    """``resolve_verb``, ``resolve_object`` and ``object_key`` against one pair of class files, remembered per
    form: a program names the same few objects in many conditions, and a run validates thousands of programs
    against the same class files. At most ``limit`` forms of each kind are kept (replies may invent any)."""

    limit = 4096

    def __init__(self, verbs: ClassVocab, nouns: ClassVocab):
        self.verbs, self.nouns = verbs, nouns
        self.verb = lru_cache(self.limit)(lambda form: resolve_verb(form, verbs))
        self.object = lru_cache(self.limit)(lambda form: resolve_object(form, nouns))
        self.key = lru_cache(self.limit)(lambda form: object_key(form, nouns))


_RESOLVERS: list[_Resolver] = []


def _resolver(verbs: ClassVocab, nouns: ClassVocab) -> _Resolver:
    """The resolver of these class files (the same objects: a run passes the same ones to every check)."""
    for r in _RESOLVERS:
        if r.verbs is verbs and r.nouns is nouns:
            return r
    r = _Resolver(verbs, nouns)
    _RESOLVERS[:] = [r, *_RESOLVERS[:7]]
    return r


class _Checker:
    def __init__(self, verbs: ClassVocab, nouns: ClassVocab):
        self.verbs, self.nouns = verbs, nouns
        self.resolve = _resolver(verbs, nouns)
        self.findings: list[Finding] = []
        self._seen: set[tuple[str, str]] = set()

    def add(self, ptr: str, msg: str) -> None:
        if (ptr, msg) not in self._seen:
            self._seen.add((ptr, msg))
            self.findings.append(Finding(ptr, msg))

    # ---- vocabulary ----
    def check_verb(self, form: str, ptr: str) -> None:
        if self.resolve.verb(form) is None:
            self.add(ptr, f"verb {form!r} is neither an EPIC verb class (key or synonym) nor a motor primitive")

    def check_object(self, form: str | None, *ptr) -> None:
        """``ptr``: the pointer's parts, joined only for a finding."""
        if form is not None and self.resolve.object(form) is None:
            self.add("/".join(map(str, ptr)), f"object {form!r} is not an EPIC noun class (key or synonym)")

    def check_condition(self, cond: dict, ptr: str) -> None:
        for i, (arg, kind) in enumerate(zip(cond["args"], PREDICATES[cond["predicate"]])):
            if kind == "object":
                self.check_object(arg, ptr, "args", i)

    # ---- symbolic state ----
    def fact(self, cond: dict) -> Fact:
        pred = cond["predicate"]
        key = self.resolve.key
        return (pred, *[normalize_form(a) if k == "hand" else key(a) for a, k in zip(cond["args"], PREDICATES[pred])])

    @staticmethod
    def holds(state: dict, fact: Fact, negated: bool) -> bool:
        if fact[0] in ("holding", "touching"):
            hand, rest = fact[1], fact[2:]
            if hand == "either":
                candidates = [(fact[0], h, *rest) for h in ("left", "right", "both", "either")]
            elif hand in ("left", "right"):
                candidates = [fact, (fact[0], "both", *rest)]
            else:
                candidates = [fact]
            true = any(state.get(c) is True for c in candidates) or (  # 'both': held with the left and the right
                hand == "both" and all(state.get((fact[0], h, *rest)) is True for h in ("left", "right")))
        else:
            true = state.get(fact) is True
        return not true if negated else true

    def assert_(self, state: dict, cond: dict) -> None:
        fact = self.fact(cond)
        state[fact] = not cond["negated"]
        opposite = OPPOSITES.get(fact[0])
        if opposite and not cond["negated"]:
            state[(opposite, *fact[1:])] = False
        if cond["negated"] and fact[0] in COMPLEMENTS:
            state[(COMPLEMENTS[fact[0]], *fact[1:])] = True
        if fact[0] in ("holding", "touching") and cond["negated"]:
            pred, hand, rest = fact[0], fact[1], fact[2:]
            if hand in ("either", "both"):  # no hand holds it any more (of 'both': neither of the two, which
                # held it together also where each was said on its own)
                for h in HANDS:
                    state[(pred, h, *rest)] = False
            else:  # one hand lets go: 'both' and 'either' holds of it end, and the other hand of a 'both' hold
                # keeps it
                if state.get((pred, "both", *rest)):
                    state[(pred, "right" if hand == "left" else "left", *rest)] = True
                for h in ("both", "either"):
                    if state.get((pred, h, *rest)):
                        state[(pred, h, *rest)] = False

    def consistent(self, conds: list[dict], ptr: str) -> None:
        """A list of conditions that holds at one moment (a pre or a post) must not contradict itself: a fact and
        its negation, or both of a pair that cannot hold at once (open and closed, switched_on and switched_off;
        of complements, not open and not closed too: the chaining takes each as the other's fact)."""
        said: dict = {}  # fact -> (negated, index, condition)
        for j, cond in enumerate(conds):
            fact = self.fact(cond)
            other = said.get(fact)
            opposite = (COMPLEMENTS if cond["negated"] else OPPOSITES).get(fact[0])
            clash = (opposite, *fact[1:]) if opposite else None  # said with the same sign as this one, it clashes
            if other is not None and other[0] != cond["negated"]:
                self.add(f"{ptr}/{j}", f"{_text(cond)} contradicts {ptr}/{other[1]} of the same list"
                                       + _one_class(cond, other[2], fact))
            elif clash is not None and said.get(clash, (None,))[0] is cond["negated"]:
                self.add(f"{ptr}/{j}", f"{_text(cond)} contradicts {ptr}/{said[clash][1]} "
                                       f"({'not ' if cond['negated'] else ''}{clash[0]}) of the same list: they cannot "
                                       "hold at once" + _one_class(cond, said[clash][2], fact))
            said.setdefault(fact, (cond["negated"], j, cond))

    def run(self, steps: list[dict], state: dict, ptr: str, *, report: bool = True) -> dict:
        for i, step in enumerate(steps):
            p = f"{ptr}/{i}"
            kind = step["type"]
            if kind == "sub_action":
                if report:
                    self.check_verb(step["verb"], f"{p}/verb")
                    self.check_object(step["object_a"], p, "object_a")
                    self.check_object(step.get("object_b"), p, "object_b")
                    self.consistent(step.get("pre") or [], f"{p}/pre")
                    self.consistent(step.get("post") or [], f"{p}/post")
                for j, cond in enumerate(step.get("pre") or []):
                    if report:
                        self.check_condition(cond, f"{p}/pre/{j}")
                    if not self.holds(state, self.fact(cond), cond["negated"]):
                        self.add(f"{p}/pre/{j}", f"precondition {_text(cond)} does not hold: " + (
                            f"{_text({**cond, 'negated': False})} holds here (the program's pre or an earlier step "
                            "makes it true)" if cond["negated"] else
                            "no earlier step or program precondition establishes it"))
                for j, cond in enumerate(step.get("post") or []):
                    if report:
                        self.check_condition(cond, f"{p}/post/{j}")
                    self.assert_(state, cond)
            elif kind == "loop":
                if not step["steps"]:
                    self.add(f"{p}/steps", "empty loop")
                    continue
                if report:
                    self.check_condition(step["until"], f"{p}/until")
                until = self.fact(step["until"])
                if not any(self.fact(c) == until and c["negated"] == step["until"]["negated"]
                           for sub in _sub_actions(step["steps"]) for c in sub.get("post") or []):
                    self.add(f"{p}/until", f"loop condition {_text(step['until'])} is never reached: no step in the "
                                           f"loop has it as a postcondition")
                state = self.run(step["steps"], state, f"{p}/steps", report=report)
                state = self.run(step["steps"], state, f"{p}/steps", report=False)  # a second iteration
                self.assert_(state, step["until"])
            elif kind == "conditional":
                if not step["then"]:
                    self.add(f"{p}/then", "empty then branch")
                if report:
                    self.check_condition(step["if"], f"{p}/if")
                yes, no = dict(state), dict(state)
                self.assert_(yes, step["if"])
                self.assert_(no, {**step["if"], "negated": not step["if"]["negated"]})
                yes = self.run(step["then"], yes, f"{p}/then", report=report)
                no = self.run(step.get("else") or [], no, f"{p}/else", report=report)
                state = {k: v for k, v in yes.items() if no.get(k) == v}
            elif kind == "routine":
                if not step["steps"]:
                    self.add(f"{p}/steps", "empty routine")
                    continue
                state = self.run(step["steps"], state, f"{p}/steps", report=report)
        return state


def _sub_actions(steps: list[dict]):
    for s in steps:
        if s["type"] == "sub_action":
            yield s
        else:
            for key in ("steps", "then", "else"):
                yield from _sub_actions(s.get(key) or [])


def _one_class(a: dict, b: dict, fact: tuple) -> str:
    """Where two conditions name other objects that are one EPIC class (pan:frying and saucepan are pan): so."""
    pairs = [(x, y, k) for x, y, k in zip(a["args"], b["args"], fact[1:]) if x != y and x not in HANDS]
    return "".join(f" ({x} and {y} are one EPIC class, {k})" for x, y, k in pairs)


def _text(cond: dict) -> str:
    t = f"{cond['predicate']}({', '.join(map(str, cond['args']))})"
    return f"not {t}" if cond.get("negated") else t


def validate_semantics(program: dict, verbs: ClassVocab, nouns: ClassVocab, labels: Labels | None = None, *,
                       max_sub_actions: int = DEFAULT_MAX_SUB_ACTIONS) -> list[Finding]:
    """Findings of a schema-valid program against the class files, the segment's labels and the chaining rules."""
    c = _Checker(verbs, nouns)
    action = program["action"]
    vid = c.resolve.verb(action["verb"])
    nid = c.resolve.object(action["noun"])
    c.check_verb(action["verb"], "/action/verb")
    c.check_object(action["noun"], "/action/noun")
    if vid is not None and action.get("verb_class") is not None and action["verb_class"] != vid:
        c.add("/action/verb_class", f"verb_class {action['verb_class']} is not the class of {action['verb']!r} ({vid})")
    if nid is not None and action.get("noun_class") is not None and action["noun_class"] != nid:
        c.add("/action/noun_class", f"noun_class {action['noun_class']} is not the class of {action['noun']!r} ({nid})")
    if labels is not None:
        if labels.verb_class is not None and vid is not None and vid != labels.verb_class:
            c.add("/action/verb", f"the action's verb {action['verb']!r} (class {vid}) does not match the segment's "
                                  f"verb class {labels.verb_class} ({verbs.keys.get(labels.verb_class)})")
        if labels.noun_class is not None and nid is not None and nid != labels.noun_class:
            c.add("/action/noun", f"the action's noun {action['noun']!r} (class {nid}) does not match the segment's "
                                  f"noun class {labels.noun_class} ({nouns.keys.get(labels.noun_class)})")
    state: dict = {}
    c.consistent(program.get("pre") or [], "/pre")
    c.consistent(program.get("post") or [], "/post")
    for j, cond in enumerate(program.get("pre") or []):
        c.check_condition(cond, f"/pre/{j}")
        c.assert_(state, cond)
    state = c.run(program["steps"], state, "/steps")
    for j, cond in enumerate(program.get("post") or []):
        c.check_condition(cond, f"/post/{j}")
        if not c.holds(state, c.fact(cond), cond["negated"]):
            c.add(f"/post/{j}", f"postcondition {_text(cond)} does not hold after the last step")
    n = len(flatten_program(program))
    if n > max_sub_actions:
        c.add("/steps", f"{n} sub-actions when flattened, more than the limit of {max_sub_actions}")
    if n == 0:
        c.add("/steps", "the program has no sub-action")
    return c.findings


def check_program(program, verbs: ClassVocab, nouns: ClassVocab, labels: Labels | None = None, *,
                  max_sub_actions: int = DEFAULT_MAX_SUB_ACTIONS) -> list[Finding]:
    """Schema findings, then (only for a structurally valid program) semantic findings."""
    findings = validate_program(program)
    if findings:
        return findings
    return validate_semantics(program, verbs, nouns, labels, max_sub_actions=max_sub_actions)
