"""The action-program JSON Schema (``schemas/action_program.schema.json``), its strict variant for
OpenAI Structured Outputs, and structural validation with JSON-pointer findings.

The schema file is the source of truth (JSON Schema 2020-12; nesting bounded by explicit per-depth
definitions ``step_1`` .. ``step_3``; at depth 3 only sub-actions). ``strict_schema()`` derives the
variant that strict mode accepts: every property required (optional ones become nullable), and the
keywords strict mode may refuse (``prefixItems``, ``minItems``, ``maxItems``, ``minLength``, ``maxLength``,
``pattern``, ``minimum``) removed; what they enforced is checked again by ``validate_program`` on the reply.

Resource folders (``schemas/``, ``prompts/``, ``configs/``) are package data of ``leap_cli.resources`` (see
``leap_cli.resources.resource_dir``); ``LEAP_SCHEMAS_DIR`` / ``LEAP_PROMPTS_DIR`` point elsewhere.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import lru_cache

from leap_cli.errors import LeapError
from leap_cli.resources import resource_dir

SCHEMA_FILE = "action_program.schema.json"
_STRICT_DROP = ("minItems", "maxItems", "minLength", "maxLength", "pattern", "minimum", "maximum", "$id", "$schema")


@dataclass(frozen=True)
class Finding:
    """One problem in a program: where (RFC 6901 JSON pointer) and what."""

    pointer: str
    message: str

    def to_dict(self) -> dict:
        return {"pointer": self.pointer, "message": self.message}


@lru_cache(maxsize=1)
def load_schema() -> dict:
    path = resource_dir("schemas") / SCHEMA_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LeapError(f"schema is not valid JSON ({e.msg})", path=path) from None


def _strictify(node):
    if isinstance(node, list):
        return [_strictify(x) for x in node]
    if not isinstance(node, dict):
        return node
    node = {k: _strictify(v) for k, v in node.items() if k not in _STRICT_DROP}
    if "prefixItems" in node:
        node.pop("prefixItems")
        node["items"] = {"type": "string"}
    if node.get("type") == "object" and "properties" in node:
        required = set(node.get("required", []))
        for name, sub in node["properties"].items():
            if name not in required and not _nullable(sub):
                node["properties"][name] = {"anyOf": [sub, {"type": "null"}]}
        node["required"] = list(node["properties"])
        node["additionalProperties"] = False
    return node


def _nullable(schema: dict) -> bool:
    t = schema.get("type")
    if t == "null" or (isinstance(t, list) and "null" in t):
        return True
    return any(_nullable(s) for s in schema.get("anyOf", []))


@lru_cache(maxsize=1)
def _strict() -> dict:
    return _strictify(copy.deepcopy(load_schema()))


def strict_schema() -> dict:
    """The Structured Outputs (strict mode) variant of the schema (a fresh copy)."""
    return copy.deepcopy(_strict())


def response_format(strict: bool = True) -> dict:
    """The ``response_format`` of a chat-completions request asking for an action program."""
    if strict:
        return {"type": "json_schema", "json_schema": {"name": "action_program", "strict": True, "schema": strict_schema()}}
    return {"type": "json_object"}


def _dispatch(schema: dict) -> dict:
    """The validation copy of the schema: each ``anyOf`` whose branches are objects told apart by an ``enum``
    on ``type`` or ``predicate`` becomes an if/then chain, so only the branch the instance names is checked
    (the same verdicts, several times faster than trying every branch, and errors from the right branch)."""
    defs = schema.get("$defs", {})

    def target(branch: dict) -> dict:
        ref = branch.get("$ref", "")
        return defs[ref.rsplit("/", 1)[-1]] if ref.startswith("#/$defs/") else branch

    def rewrite(node):
        if isinstance(node, list):
            return [rewrite(x) for x in node]
        if not isinstance(node, dict):
            return node
        node = {k: rewrite(v) for k, v in node.items()}
        branches = node.get("anyOf")
        if not branches or len(branches) < 2:
            return node
        for disc in _DISCRIMINATORS:
            enums = [target(b).get("properties", {}).get(disc, {}).get("enum") for b in branches]
            if all(enums):
                allowed = sorted({v for e in enums for v in e})
                chain: dict = {"required": [disc], "properties": {disc: {"enum": allowed}}}
                for b, e in reversed(list(zip(branches, enums))):
                    chain = {"if": {"required": [disc], "properties": {disc: {"enum": e}}}, "then": b, "else": chain}
                rest = {k: v for k, v in node.items() if k != "anyOf"}
                return {**rest, "type": "object", **chain} if "type" not in rest else {**rest, **chain}
        return node

    def inline(node):
        # the per-depth definitions are not recursive, so every $ref can be expanded; reference lookups are
        # most of jsonschema's time otherwise
        if isinstance(node, list):
            return [inline(x) for x in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node and node["$ref"].startswith("#/$defs/"):
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return {**inline(target(node)), **inline(rest)}
        return {k: inline(v) for k, v in node.items() if k != "$defs"}

    return inline(rewrite(copy.deepcopy(schema)))


@lru_cache(maxsize=1)
def _validator():
    from jsonschema import Draft202012Validator  # (~0.1 s to import: only the reference check needs it)

    return Draft202012Validator(_dispatch(load_schema()))


def pointer(path) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


_DISCRIMINATORS = ("type", "predicate")


def _explain(error) -> list[Finding]:
    """Turn one jsonschema error into findings; for ``anyOf`` pick the branch the instance meant."""
    if error.validator != "anyOf" or not error.context:
        return [Finding(pointer(error.absolute_path), error.message)]
    inst = error.instance
    branches: dict[int, list] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    # "X or null": report why the instance is not an X
    not_null = [errs for errs in branches.values()
                if not (len(errs) == 1 and errs[0].validator == "type" and errs[0].validator_value == "null")]
    if inst is not None and len(not_null) == 1 and len(branches) == 2:
        return [f for e in not_null[0] for f in _explain(e)]
    if not isinstance(inst, dict):
        return [Finding(pointer(error.absolute_path), error.message)]
    for disc in _DISCRIMINATORS:
        if disc not in inst:
            continue
        matching = [errs for errs in branches.values()
                    if not any(list(e.relative_path) == [disc] and e.validator == "enum" for e in errs)]
        if matching:
            best = min(matching, key=len)
            return [f for e in best for f in _explain(e)]
        allowed = sorted({v for errs in branches.values() for e in errs
                          if list(e.relative_path) == [disc] and e.validator == "enum" for v in e.validator_value})
        return [Finding(pointer(list(error.absolute_path) + [disc]),
                        f"{disc} {inst[disc]!r} is not one of {', '.join(map(str, allowed))}")]
    return [Finding(pointer(error.absolute_path), error.message)]


@lru_cache(maxsize=1)
def _compiled():
    from leap_cli.programs.fastschema import compile_schema

    return compile_schema(load_schema())


def validate_program(program) -> list[Finding]:
    """Structural findings of ``program`` against the schema (empty when it conforms); the compiled checker
    of ``fastschema`` (same verdicts as ``jsonschema``, far faster)."""
    if not isinstance(program, dict):
        return [Finding("", f"a program must be a JSON object, got {type(program).__name__}")]
    return [Finding(pointer(p), m) for p, m in _compiled()(program)]


def validate_program_reference(program) -> list[Finding]:
    """The same check through ``jsonschema`` (the reference implementation; slow)."""
    if not isinstance(program, dict):
        return [Finding("", f"a program must be a JSON object, got {type(program).__name__}")]
    findings: list[Finding] = []
    for error in sorted(_validator().iter_errors(program), key=lambda e: list(map(str, e.absolute_path))):
        findings.extend(_explain(error))
    return findings
