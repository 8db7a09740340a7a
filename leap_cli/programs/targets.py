"""Training targets from action programs: the flattening rule, ``TargetVocab`` and ``encode_program``.

Flattening rule (the execution order a model is trained to predict):
- sub-actions in order; a ``loop`` is unrolled ONCE (its body appears one time); a ``conditional``
  takes its ``then`` branch; a ``routine`` is inlined.

Vocabularies (``TargetVocab``), stored in ``shards/{split}/manifest.json`` under ``"targets"``:
- ``step_verbs``: the EPIC verb keys in class-id order (index == EPIC verb class id), then ``"<end>"``;
- ``objects``: the EPIC noun keys in class-id order (index == EPIC noun class id), then ``"none"``
  (no object B), then ``"<end>"``. Ids missing from a subset class file (the synthetic kitchen's) hold
  ``"<unused-ID>"`` so that the index stays the EPIC class id;
- ``conditions``: ``"predicate(arg1,arg2)"`` strings (args as EPIC noun keys or hand names, negated
  ones as ``"not predicate(...)"``), the most frequent in the training programs first, capped in size.
  The END token is the last entry of ``step_verbs`` and ``objects``, so ``len(list)`` is the head size.

``encode_program(program, vocab, max_steps)`` ->
``{"steps": [[verb_id, obj_a_id, obj_b_id], ..., [END_v, END_o, END_o]], "pre": [cond ids], "post": [cond ids]}``:
at most ``max_steps`` triples including the END triple (longer programs are cut, END still last);
conditions outside the vocabulary are dropped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from leap_cli.epic.classes import ClassVocab
from leap_cli.errors import LeapError
from leap_cli.programs.vocab import NONE_OBJECT, condition_string, resolve_object, resolve_verb

END = "<end>"
DEFAULT_MAX_STEPS = 8
DEFAULT_MAX_CONDITIONS = 256


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
    """The flattened sub-action list of a program (see the module docstring for the rule)."""
    return list(iter_sub_actions(program.get("steps") or []))


@dataclass
class TargetVocab:
    """Step verbs, objects and conditions of the program heads; END is the last entry of the first two."""

    step_verbs: list[str]
    objects: list[str]
    conditions: list[str]
    max_steps: int = DEFAULT_MAX_STEPS
    _verbs: ClassVocab | None = field(default=None, repr=False, compare=False)
    _nouns: ClassVocab | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.step_verbs or self.step_verbs[-1] != END or not self.objects or self.objects[-1] != END:
            raise LeapError("target vocabulary lists must end with the END token",
                            fix=f"step_verbs and objects end with {END!r}; rebuild the shards")
        self._verb_index = {k: i for i, k in enumerate(self.step_verbs)}
        self._object_index = {k: i for i, k in enumerate(self.objects)}
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
        return [self.verb_end, self.object_end, self.object_end]

    def model_program_args(self) -> dict:
        """The ``program`` entry of the model arguments (head sizes include END)."""
        return {"step_verbs": len(self.step_verbs), "objects": len(self.objects),
                "conditions": len(self.conditions), "max_steps": self.max_steps}

    def to_manifest(self) -> dict:
        return {"max_steps": self.max_steps, "step_verbs": list(self.step_verbs), "objects": list(self.objects),
                "conditions": list(self.conditions)}

    @classmethod
    def from_manifest(cls, targets: dict, verbs: ClassVocab | None = None, nouns: ClassVocab | None = None) -> "TargetVocab":
        try:
            return cls(list(targets["step_verbs"]), list(targets["objects"]), list(targets["conditions"]),
                       int(targets["max_steps"]), verbs, nouns)
        except KeyError as e:
            raise LeapError(f"manifest targets lack {e.args[0]!r}", fix="rebuild the shards with leap build-shards") from None

    @classmethod
    def build(cls, programs: Iterable[dict], verbs: ClassVocab, nouns: ClassVocab, *,
              max_steps: int = DEFAULT_MAX_STEPS, max_conditions: int = DEFAULT_MAX_CONDITIONS) -> "TargetVocab":
        """Verbs/objects from the class files; conditions from ``programs`` by frequency (ties alphabetical)."""
        counts: Counter[str] = Counter()
        for program in programs:
            if not program:
                continue
            for cond in (program.get("pre") or []) + (program.get("post") or []):
                counts[condition_string(cond, nouns)] += 1
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_conditions]
        # index == EPIC class id; a class file that is a subset (the synthetic kitchen's) leaves unused ids
        step_verbs = [verbs.keys.get(i, f"<unused-{i}>") for i in range(max(verbs.ids) + 1)] + [END]
        objects = [nouns.keys.get(i, f"<unused-{i}>") for i in range(max(nouns.ids) + 1)] + [NONE_OBJECT, END]
        return cls(step_verbs, objects, [c for c, _ in ranked], max_steps, verbs, nouns)

    def bind(self, verbs: ClassVocab, nouns: ClassVocab) -> "TargetVocab":
        """Attach the class files so synonyms (not only keys) resolve."""
        self._verbs, self._nouns = verbs, nouns
        return self

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

    def condition_id(self, cond: dict) -> int | None:
        return self._cond_index.get(condition_string(cond, self._nouns))


def encode_program(program: dict, vocab: TargetVocab, max_steps: int | None = None) -> dict:
    """Encode one program as step triples (ending with END) and pre/post condition ids (see module docstring)."""
    limit = max_steps or vocab.max_steps
    if limit < 1:
        raise LeapError(f"max_steps must be at least 1 (got {limit})")
    triples = []
    for sub in flatten_program(program)[: limit - 1]:
        triples.append([vocab.verb_id(sub["verb"]), vocab.object_id(sub.get("object_a")),
                        vocab.object_id(sub.get("object_b"))])
    triples.append(vocab.end_triple)

    def ids(conds: list[dict]) -> list[int]:
        out = []
        for c in conds or []:
            i = vocab.condition_id(c)
            if i is not None and i not in out:
                out.append(i)
        return out

    return {"steps": triples, "pre": ids(program.get("pre")), "post": ids(program.get("post"))}
