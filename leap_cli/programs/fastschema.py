"""A small compiler from the JSON Schema keywords the program schema uses to a plain Python checker.

Why: ``jsonschema`` takes ~5 ms per program (reference resolution, error objects for every ``anyOf``
branch), which alone would cap generation at ~200 programs/s per core. The compiled checker gives the same
verdicts (tests compare them on the exemplars, on many mutated programs and on small schemas of every keyword it
knows) in a few hundredths of that.
``anyOf`` over objects told apart by an ``enum`` on ``type``/``predicate`` (a required string, each value naming one
branch) dispatches on that field, so its findings come from the branch the instance names. A keyword it does not
know is an error at compile time, never silently skipped.
"""

from __future__ import annotations

import re
from typing import Callable

Check = Callable[[object, tuple, list], None]  # (instance, path, findings as (path, message)) -> None
# A path is built as nested pairs ``(parent, key)`` from the root ``()`` (one small tuple per step instead of a
# copy of the whole path); ``validate`` flattens the paths of its findings.
_IGNORED = {"$schema", "$id", "$defs", "title", "description", "$comment", "default", "examples"}
_DISCRIMINATORS = ("type", "predicate")
_TYPES = {
    "object": lambda x: isinstance(x, dict),
    "array": lambda x: isinstance(x, list),
    "string": lambda x: isinstance(x, str),
    "integer": lambda x: isinstance(x, int) and not isinstance(x, bool) or (isinstance(x, float) and x.is_integer()),
    "number": lambda x: isinstance(x, (int, float)) and not isinstance(x, bool),
    "boolean": lambda x: isinstance(x, bool),
    "null": lambda x: x is None,
}
# types that one isinstance() decides (bool is not an int here: no integer/number among them)
_CLASSES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}



def _shown(x) -> str:
    """``repr(x)``, cut to 60 characters (a message quoting a long value stays one readable line)."""
    r = repr(x)
    return r if len(r) <= 60 else r[:57] + "..."


def _same(a, b) -> bool:
    """JSON equality as ``enum`` and ``const`` mean it (and ``jsonschema`` checks it): ``true`` is not ``1``, at any
    depth, while ``1`` and ``1.0`` are the same number."""
    if a is b:
        return True
    if isinstance(a, bool) or isinstance(b, bool):
        return False  # (two bools that are the same are the same object)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(v, b[k]) for k, v in a.items())
    return a == b


def compile_schema(root: dict) -> Callable[[object], list[tuple[tuple, str]]]:
    defs = root.get("$defs", {})
    cache: dict[str, Check] = {}

    def resolve(schema):
        while isinstance(schema, dict) and "$ref" in schema:
            ref = schema["$ref"]
            if not ref.startswith("#/$defs/"):
                raise ValueError(f"unsupported $ref {ref}")
            schema = defs[ref[len("#/$defs/"):]]
        return schema

    def build(schema) -> Check:
        if schema is True:
            return lambda x, p, out: None
        if schema is False:
            return lambda x, p, out: out.append((p, "no value is allowed here"))
        if "$ref" in schema:
            name = schema["$ref"][len("#/$defs/"):]
            if set(schema) - {"$ref"} - _IGNORED:
                raise ValueError("$ref with sibling keywords is not supported")
            if name not in cache:
                cache[name] = None  # type: ignore[assignment]
                cache[name] = build(resolve(schema))
            if cache[name] is not None:  # built: call it directly
                return cache[name]
            return lambda x, p, out: cache[name](x, p, out)  # a definition that refers to itself (nested steps)
        unknown = set(schema) - _IGNORED - {"type", "enum", "const", "properties", "required", "additionalProperties",
                                            "items", "prefixItems", "minItems", "maxItems", "minLength", "maxLength",
                                            "pattern", "minimum", "maximum", "anyOf"}
        if unknown:
            raise ValueError(f"unsupported keyword(s) {sorted(unknown)}")
        checks: list[Check] = []
        t = schema.get("type")
        # the object/array/string checks skip an instance of another type; when the schema's type is exactly
        # that one class, they report the type error themselves (one call per value instead of two)
        own = t if isinstance(t, str) else None
        fused: list[str] = []
        if t is not None:
            names = t if isinstance(t, list) else [t]
            preds = [_TYPES[n] for n in names]
            shown = ", ".join(repr(n) for n in names)  # as jsonschema says it: 'integer', 'null'

            if all(n in _CLASSES for n in names):
                classes = tuple(_CLASSES[n] for n in names)

                def type_check(x, p, out, classes=classes, shown=shown):
                    if isinstance(x, classes):
                        return True
                    out.append((p, f"{x!r} is not of type {shown}"))
                    return False
            else:
                def type_check(x, p, out, preds=preds, shown=shown):
                    if not any(f(x) for f in preds):
                        out.append((p, f"{x!r} is not of type {shown}"))
                        return False
                    return True
        else:
            type_check = None
        if "enum" in schema:
            allowed = schema["enum"]
            if all(isinstance(a, str) for a in allowed):  # (every enum of the program schema: one set lookup)
                names = frozenset(allowed)
                checks.append(lambda x, p, out: None if isinstance(x, str) and x in names
                              else out.append((p, f"{x!r} is not one of {allowed!r}")))
            else:
                checks.append(lambda x, p, out: None if any(_same(x, a) for a in allowed)
                              else out.append((p, f"{x!r} is not one of {allowed!r}")))
        if "const" in schema:
            c = schema["const"]
            checks.append(lambda x, p, out: None if _same(x, c) else out.append((p, f"{c!r} was expected")))
        if any(k in schema for k in ("properties", "required", "additionalProperties")):
            props = {k: build(v) for k, v in schema.get("properties", {}).items()}
            required = schema.get("required", [])
            extra = schema.get("additionalProperties", True)
            extra_check = build(extra) if isinstance(extra, dict) else None

            typed = own == "object"

            def obj(x, p, out):
                if not isinstance(x, dict):
                    if typed:
                        out.append((p, f"{x!r} is not of type 'object'"))
                    return
                for r in required:
                    if r not in x:
                        out.append((p, f"{r!r} is a required property"))
                for k, v in x.items():
                    if k in props:
                        props[k](v, (p, k), out)
                    elif extra is False:
                        out.append((p, f"Additional properties are not allowed ({k!r} was unexpected)"))
                    elif extra_check is not None:
                        extra_check(v, (p, k), out)
            checks.append(obj)
            fused.append("object")
        if any(k in schema for k in ("items", "prefixItems", "minItems", "maxItems")):
            prefix = [build(s) for s in schema.get("prefixItems", [])]
            items = schema.get("items", True)
            item_check = build(items)
            lo, hi = schema.get("minItems"), schema.get("maxItems")

            typed_arr = own == "array"

            def arr(x, p, out):
                if not isinstance(x, list):
                    if typed_arr:
                        out.append((p, f"{x!r} is not of type 'array'"))
                    return
                if lo is not None and len(x) < lo:
                    out.append((p, f"{x!r} should be non-empty" if lo == 1 else f"{x!r} is too short"))
                if hi is not None and len(x) > hi:  # (the whole array in the message: a line of thousands)
                    out.append((p, f"has {len(x)} items, more than the {hi} allowed"))
                for i, v in enumerate(x):
                    if i < len(prefix):
                        prefix[i](v, (p, i), out)
                    elif items is False:
                        if not (hi is not None and len(x) > hi):  # reported once as too long
                            out.append(((p, i), "no value is allowed here"))
                    else:
                        item_check(v, (p, i), out)
            checks.append(arr)
            fused.append("array")
        if any(k in schema for k in ("minLength", "maxLength", "pattern")):
            lo, hi = schema.get("minLength"), schema.get("maxLength")
            rx = re.compile(_ecma_end(schema["pattern"])) if "pattern" in schema else None
            shown = schema.get("pattern")

            typed_str = own == "string"

            def string(x, p, out):
                if not isinstance(x, str):
                    if typed_str:
                        out.append((p, f"{x!r} is not of type 'string'"))
                    return
                if lo is not None and len(x) < lo:
                    out.append((p, f"{x!r} should be non-empty" if lo == 1 else f"{x!r} is too short"))
                if hi is not None and len(x) > hi:
                    out.append((p, f"{_shown(x)} is {len(x)} characters long, more than the {hi} allowed"))
                if rx is not None and not rx.search(x):
                    out.append((p, f"{x!r} does not match {shown!r}"))
            checks.append(string)
            fused.append("string")
        if "minimum" in schema or "maximum" in schema:
            lo, hi = schema.get("minimum"), schema.get("maximum")

            def num(x, p, out):
                if not _TYPES["number"](x):
                    return
                if lo is not None and x < lo:
                    out.append((p, f"{x!r} is less than the minimum of {lo!r}"))
                if hi is not None and x > hi:
                    out.append((p, f"{x!r} is greater than the maximum of {hi!r}"))
            checks.append(num)
        if "anyOf" in schema:
            checks.append(build_any_of(schema["anyOf"]))

        if own is not None and fused == [own] and len(checks) == 1:
            return checks[0]  # the check reports the type error itself
        if type_check is None and len(checks) == 1:
            return checks[0]
        if len(checks) == 1:
            only = checks[0]

            def run1(x, p, out):
                if type_check(x, p, out):
                    only(x, p, out)
            return run1

        def run(x, p, out):
            if type_check is not None and not type_check(x, p, out):
                return
            for c in checks:
                c(x, p, out)
        return run

    def build_any_of(branches: list) -> Check:
        targets = [resolve(b) for b in branches]
        compiled = [build(b) for b in branches]
        for disc in _DISCRIMINATORS:
            enums = [_discriminator(t, disc) for t in targets]
            names = [v for e in enums if e for v in e]
            if all(enums) and len(names) == len(set(names)):  # (each value names one branch)
                table = {v: c for e, c in zip(enums, compiled) for v in e}
                allowed = ", ".join(sorted(map(str, table)))

                def dispatch(x, p, out, disc=disc, table=table, allowed=allowed):
                    if not isinstance(x, dict):
                        out.append((p, f"{x!r} is not of type 'object'"))
                    elif disc not in x:
                        out.append((p, f"{disc!r} is a required property"))
                    elif not isinstance(x[disc], str) or x[disc] not in table:
                        deep = disc == "type" and allowed == "sub_action" and x[disc] in ("loop", "conditional",
                                                                                          "routine")
                        out.append(((p, disc), f"type {x[disc]!r}: control flow is nested deeper than allowed (only "
                                               "sub_action steps at this depth)" if deep else
                                    f"{disc} {x[disc]!r} is not one of {allowed}"))
                    else:
                        table[x[disc]](x, p, out)
                return dispatch

        def any_of(x, p, out):
            results = []
            for c in compiled:
                errs: list = []
                c(x, p, errs)
                if not errs:
                    return
                results.append(errs)
            non_null = [r for t, r in zip(targets, results) if not (isinstance(t, dict) and t.get("type") == "null")]
            if x is not None and len(non_null) == 1:
                out.extend(non_null[0])  # "X or null": say why it is not an X
            else:
                out.append((p, f"{x!r} is not valid under any of the given schemas"))
        return any_of

    check = build(root)

    def validate(instance) -> list[tuple[tuple, str]]:
        out: list = []
        check(instance, (), out)
        return [(_flat(p), m) for p, m in out]

    return validate


def _discriminator(schema, disc: str) -> list[str] | None:
    """The strings an object must have in ``disc`` to pass ``schema``: the ``enum`` of a required string property
    of a schema of type object; None for a schema that another value could pass (it cannot be dispatched to)."""
    if not isinstance(schema, dict) or schema.get("type") != "object" or disc not in schema.get("required", ()):
        return None
    prop = schema.get("properties", {}).get(disc)
    enum = prop.get("enum") if isinstance(prop, dict) else None
    return enum if enum and all(isinstance(v, str) for v in enum) else None


def _ecma_end(pattern: str) -> str:
    """``pattern`` with each ``$`` that ends the string in ECMA-262's regular expressions, which JSON Schema's
    patterns are, written ``\\Z``: Python's ``$`` also matches before a final newline, so ``"take\\n"`` passed
    ``^[a-z][a-z _-]*$`` (and jsonschema, which uses Python's ``re``, takes it too)."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            if pattern[i + 1:i + 2] == "]" or pattern[i + 1:i + 3] == "^]":  # (a ']' first in a class is a character)
                skip = 2 if pattern[i + 1] == "]" else 3
                out.append(pattern[i:i + skip])
                i += skip
                continue
        elif c == "$":
            c = r"\Z"
        out.append(c)
        i += 1
    return "".join(out)


def _flat(path: tuple) -> tuple:
    """A path of nested ``(parent, key)`` pairs as a flat tuple of keys."""
    keys = []
    while path:
        path, key = path
        keys.append(key)
    return tuple(reversed(keys))
