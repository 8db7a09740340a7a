"""Training targets from action programs: the token sequence that keeps the program, ``TargetVocab`` and
``encode_program``.

Token sequence (what the program decoder is trained to predict, one row per token, in program order)::

    [verb, object_a, object_b, hand, kind]

``kind`` is the structure token (``structure`` vocabulary): ``<step>`` for a sub-action, and markers for the
control flow, which is kept, not unrolled:

- a loop:        ``<loop>`` (its ``until`` condition) ... body ... ``</loop>``
- a conditional: ``<if>`` (its ``if`` condition) ... then ... ``<else>`` ... else ... ``</if>`` (no ``<else>``
  when the else branch is empty)
- a routine:     ``<call:NAME>`` ... body ... ``</routine>`` (``<call>`` for a name outside the vocabulary)
- the last row is END in every column.

Marker rows hold -100 (ignored) in the verb, object and hand columns. Every row also has its conditions: a
sub-action's own ``pre``/``post``, a ``<loop>``/``<if>`` marker's condition as its ``pre``; the program's
``pre``/``post`` stay as program-level targets. ``flatten_program`` (the sub-actions alone, loops once,
``then`` branches, routines inlined) remains for the program reports and agreement.

Vocabularies (``TargetVocab``), stored in ``shards/{split}/manifest.json`` under ``"targets"`` and in every
checkpoint of ``leap train``:

- ``step_verbs``: the EPIC verb keys in class-id order (index == EPIC verb class id), then ``"<end>"``;
- ``objects``: the EPIC noun keys in class-id order, then ``"none"`` (no object B), then ``"<end>"`` (ids
  missing from a subset class file hold ``"<unused-ID>"`` so that the index stays the EPIC class id);
- ``hands``: left, right, both, either, none, ``"<end>"``;
- ``structure``: ``<step>``, the markers, ``<call>``, ``<call:NAME>`` for the routine names of the training
  programs (most frequent first), ``"<end>"``;
- ``conditions``: ``"predicate(arg1,arg2)"`` strings (``"not ..."`` when negated) of the training programs
  (program, step and marker conditions), the most frequent first, capped in size;
- ``max_steps``: rows per target incl. END; sized from the training programs (the longest sequence) unless given.

END is the last entry of every token list, so ``len(list)`` is the head size.

``encode_program(program, vocab)`` -> ``{"steps": [[v, a, b, hand, kind], ..., END row], "step_pre": [[ids] per
row], "step_post": [[ids] per row], "pre": [ids], "post": [ids]}``: at most ``max_steps`` rows (longer
programs are cut, END still last); conditions outside the vocabulary are dropped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from leap_cli.epic.classes import ClassVocab
from leap_cli.errors import LeapError
from leap_cli.programs.vocab import HANDS, NONE_OBJECT, condition_string, resolve_object, resolve_verb

END = "<end>"
IGNORE = -100
STEP = "<step>"
LOOP, END_LOOP, IF, ELSE, END_IF, CALL, END_ROUTINE = "<loop>", "</loop>", "<if>", "<else>", "</if>", "<call>", "</routine>"
MARKERS = (LOOP, END_LOOP, IF, ELSE, END_IF, CALL, END_ROUTINE)
NO_HAND = "none"
DEFAULT_MAX_STEPS = None  # sized from the training programs
MAX_STEPS_CAP = 48  # sized vocabularies never exceed this many rows per target
DEFAULT_MAX_CONDITIONS = 256
DEFAULT_MAX_ROUTINES = 32
_FALLBACK_MAX_STEPS = 8  # no training program to size from


def iter_sub_actions(steps: list[dict]) -> Iterator[dict]:
    """Sub-actions in execution order: loops once, conditionals' ``then`` branch, routines inlined."""
    for step in steps or []:
        kind = step.get("type", "sub_action")
        if kind == "sub_action":
            yield step
        elif kind in ("loop", "routine"):
            yield from iter_sub_actions(step.get("steps") or [])
        elif kind == "conditional":
            yield from iter_sub_actions(step.get("then") or [])


def flatten_program(program: dict) -> list[dict]:
    """The sub-actions of a program (loops once, ``then`` branches, routines inlined): for reports and agreement."""
    return list(iter_sub_actions(program.get("steps") or []))


def iter_tokens(steps: list[dict]) -> Iterator[tuple[str, dict | None, list[dict], list[dict]]]:
    """The program's token sequence without END: ``(kind, sub_action or None, pre, post)`` per row, where
    ``kind`` is ``<step>``, a marker or ``<call:NAME>`` (see the module docstring)."""
    for step in steps or []:
        kind = step.get("type", "sub_action")
        if kind == "sub_action":
            yield STEP, step, list(step.get("pre") or []), list(step.get("post") or [])
        elif kind == "loop":
            yield LOOP, None, [step["until"]] if step.get("until") else [], []
            yield from iter_tokens(step.get("steps") or [])
            yield END_LOOP, None, [], []
        elif kind == "conditional":
            yield IF, None, [step["if"]] if step.get("if") else [], []
            yield from iter_tokens(step.get("then") or [])
            if step.get("else"):
                yield ELSE, None, [], []
                yield from iter_tokens(step["else"])
            yield END_IF, None, [], []
        elif kind == "routine":
            yield f"<call:{step.get('name') or ''}>", None, [], []
            yield from iter_tokens(step.get("steps") or [])
            yield END_ROUTINE, None, [], []


def _all_conditions(program: dict) -> Iterator[dict]:
    yield from (program.get("pre") or []) + (program.get("post") or [])
    for _, _, pre, post in iter_tokens(program.get("steps") or []):
        yield from pre + post


@dataclass
class TargetVocab:
    """Token vocabularies of the program heads; END is the last entry of every token list."""

    step_verbs: list[str]
    objects: list[str]
    conditions: list[str]
    max_steps: int = _FALLBACK_MAX_STEPS
    _verbs: ClassVocab | None = field(default=None, repr=False, compare=False)
    _nouns: ClassVocab | None = field(default=None, repr=False, compare=False)
    hands: list[str] = field(default_factory=lambda: [*HANDS, NO_HAND, END])
    structure: list[str] = field(default_factory=lambda: [STEP, *MARKERS, END])

    def __post_init__(self) -> None:
        for name in ("step_verbs", "objects", "hands", "structure"):
            values = getattr(self, name)
            if not values or values[-1] != END:
                raise LeapError(f"target vocabulary {name} must end with the END token",
                                fix=f"every token list ends with {END!r}; rebuild the shards")
        self._verb_index = {k: i for i, k in enumerate(self.step_verbs)}
        self._object_index = {k: i for i, k in enumerate(self.objects)}
        self._hand_index = {k: i for i, k in enumerate(self.hands)}
        self._kind_index = {k: i for i, k in enumerate(self.structure)}
        self._cond_index = {c: i for i, c in enumerate(self.conditions)}

    # ids of the special tokens
    @property
    def verb_end(self) -> int:
        return len(self.step_verbs) - 1

    @property
    def object_end(self) -> int:
        return len(self.objects) - 1

    @property
    def object_none(self) -> int:
        return self._object_index[NONE_OBJECT]

    @property
    def end_triple(self) -> list[int]:
        """END in the verb and object columns (what program metrics compare)."""
        return [self.verb_end, self.object_end, self.object_end]

    @property
    def end_row(self) -> list[int]:
        return [*self.end_triple, len(self.hands) - 1, len(self.structure) - 1]

    @property
    def step_kind(self) -> int:
        return self._kind_index[STEP]

    def model_program_args(self) -> dict:
        """The ``program`` entry of the model arguments (head sizes include END)."""
        return {"step_verbs": len(self.step_verbs), "objects": len(self.objects), "conditions": len(self.conditions),
                "max_steps": self.max_steps, "hands": len(self.hands), "structure": len(self.structure)}

    def to_manifest(self) -> dict:
        return {"max_steps": self.max_steps, "step_verbs": list(self.step_verbs), "objects": list(self.objects),
                "conditions": list(self.conditions), "hands": list(self.hands), "structure": list(self.structure)}

    @classmethod
    def from_manifest(cls, targets: dict, verbs: ClassVocab | None = None, nouns: ClassVocab | None = None) -> "TargetVocab":
        try:
            extra = {k: list(targets[k]) for k in ("hands", "structure") if k in targets}
            return cls(list(targets["step_verbs"]), list(targets["objects"]), list(targets["conditions"]),
                       int(targets["max_steps"]), verbs, nouns, **extra)
        except KeyError as e:
            raise LeapError(f"manifest targets lack {e.args[0]!r}", fix="rebuild the shards with leap build-shards") from None

    @classmethod
    def build(cls, programs: Iterable[dict], verbs: ClassVocab, nouns: ClassVocab, *,
              max_steps: int | None = DEFAULT_MAX_STEPS, max_conditions: int = DEFAULT_MAX_CONDITIONS,
              max_routines: int = DEFAULT_MAX_ROUTINES) -> "TargetVocab":
        """Verbs/objects from the class files; conditions, routine names and (unless given) ``max_steps`` from
        the training ``programs`` (conditions and routines by frequency, ties alphabetical)."""
        counts: Counter[str] = Counter()
        routines: Counter[str] = Counter()
        longest = 0
        for program in programs:
            if not program:
                continue
            for cond in _all_conditions(program):
                counts[condition_string(cond, nouns)] += 1
            tokens = list(iter_tokens(program.get("steps") or []))
            longest = max(longest, len(tokens) + 1)
            routines.update(k for k, *_ in tokens if k.startswith("<call:"))
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_conditions]
        calls = [k for k, _ in sorted(routines.items(), key=lambda kv: (-kv[1], kv[0]))[:max_routines]]
        if max_steps is None:
            max_steps = min(longest, MAX_STEPS_CAP) if longest else _FALLBACK_MAX_STEPS
        # index == EPIC class id; a class file that is a subset (the synthetic kitchen's) leaves unused ids
        step_verbs = [verbs.keys.get(i, f"<unused-{i}>") for i in range(max(verbs.ids) + 1)] + [END]
        objects = [nouns.keys.get(i, f"<unused-{i}>") for i in range(max(nouns.ids) + 1)] + [NONE_OBJECT, END]
        return cls(step_verbs, objects, [c for c, _ in ranked], max_steps, verbs, nouns,
                   structure=[STEP, *MARKERS, *calls, END])

    def verb_id(self, form: str) -> int:
        if form in self._verb_index and form != END:
            return self._verb_index[form]
        if self._verbs is not None:
            cid = resolve_verb(form, self._verbs)
            if cid is not None:
                return self._verb_index[self._verbs.keys[cid]]
        raise LeapError(f"step verb {form!r} does not resolve to an EPIC verb class",
                        fix="validate programs with leap validate-programs; only valid programs become targets")

    def object_id(self, form: str | None) -> int:
        if form is None or form == "" or form == NONE_OBJECT:
            return self.object_none
        if form in self._object_index and form != END:
            return self._object_index[form]
        if self._nouns is not None:
            cid = resolve_object(form, self._nouns)
            if cid is not None:
                return self._object_index[self._nouns.keys[cid]]
        raise LeapError(f"object {form!r} does not resolve to an EPIC noun class",
                        fix="validate programs with leap validate-programs; only valid programs become targets")

    def hand_id(self, hand: str | None) -> int:
        return self._hand_index.get(hand or NO_HAND, self._hand_index[NO_HAND])

    def kind_id(self, kind: str) -> int:
        if kind in self._kind_index and kind != END:
            return self._kind_index[kind]
        return self._kind_index[CALL]  # a routine name outside the vocabulary

    def condition_id(self, cond: dict) -> int | None:
        return self._cond_index.get(condition_string(cond, self._nouns))

    def condition_ids(self, conds: list[dict] | None) -> list[int]:
        out = []
        for c in conds or []:
            i = self.condition_id(c)
            if i is not None and i not in out:
                out.append(i)
        return out

    def decode_row(self, row: list[int]) -> str:
        """One target/predicted row as text: ``take(plate) [right]``, ``<loop>``, ``<end>``."""
        kind = self.structure[row[4]] if len(row) > 4 and 0 <= row[4] < len(self.structure) else STEP
        if kind != STEP:
            return kind

        def name(lst: list[str], i: int) -> str:
            return lst[i] if 0 <= i < len(lst) else "?"

        if row[0] == self.verb_end:
            return END
        b = name(self.objects, row[2])
        text = f"{name(self.step_verbs, row[0])}({name(self.objects, row[1])}{'' if b == NONE_OBJECT else ', ' + b})"
        if len(row) > 3 and 0 <= row[3] < len(self.hands) and self.hands[row[3]] != NO_HAND:
            text += f" [{self.hands[row[3]]}]"
        return text


def encode_program(program: dict, vocab: TargetVocab, max_steps: int | None = None) -> dict:
    """Encode one program as token rows (ending with END), per-row conditions and the program's pre/post
    condition ids (see the module docstring)."""
    limit = vocab.max_steps if max_steps is None else max_steps
    if limit < 1:
        raise LeapError(f"max_steps must be at least 1 (got {limit})")
    rows, step_pre, step_post = [], [], []
    for kind, sub, pre, post in list(iter_tokens(program.get("steps") or []))[: limit - 1]:
        if sub is not None:
            rows.append([vocab.verb_id(sub["verb"]), vocab.object_id(sub.get("object_a")),
                         vocab.object_id(sub.get("object_b")), vocab.hand_id(sub.get("hand")), vocab.step_kind])
        else:
            rows.append([IGNORE, IGNORE, IGNORE, IGNORE, vocab.kind_id(kind)])
        step_pre.append(vocab.condition_ids(pre))
        step_post.append(vocab.condition_ids(post))
    rows.append(vocab.end_row)
    step_pre.append([])
    step_post.append([])
    return {"steps": rows, "step_pre": step_pre, "step_post": step_post,
            "pre": vocab.condition_ids(program.get("pre")), "post": vocab.condition_ids(program.get("post"))}
