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


def pointer(path) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


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
