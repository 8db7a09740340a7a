"""The reference check of an action program through ``jsonschema`` (slow), which the tests hold the product's
compiled checker (``leap_cli.programs.schema.validate_program``, built by ``fastschema``) to: the same findings,
pointers and messages. The product no longer runs any of this."""

from __future__ import annotations

import copy
from functools import lru_cache

from leap_cli.programs.schema import Finding, load_schema, pointer

DISCRIMINATORS = ("type", "predicate")


def dispatch(schema: dict) -> dict:
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
        for disc in DISCRIMINATORS:
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
def validator():
    from jsonschema import Draft202012Validator

    return Draft202012Validator(dispatch(load_schema()))


def explain(error) -> list[Finding]:
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
        return [f for e in not_null[0] for f in explain(e)]
    if not isinstance(inst, dict):
        return [Finding(pointer(error.absolute_path), error.message)]
    for disc in DISCRIMINATORS:
        if disc not in inst:
            continue
        matching = [errs for errs in branches.values()
                    if not any(list(e.relative_path) == [disc] and e.validator == "enum" for e in errs)]
        if matching:
            best = min(matching, key=len)
            return [f for e in best for f in explain(e)]
        allowed = sorted({v for errs in branches.values() for e in errs
                          if list(e.relative_path) == [disc] and e.validator == "enum" for v in e.validator_value})
        return [Finding(pointer(list(error.absolute_path) + [disc]),
                        f"{disc} {inst[disc]!r} is not one of {', '.join(map(str, allowed))}")]
    return [Finding(pointer(error.absolute_path), error.message)]



def validate_program_reference(program) -> list[Finding]:
    """The same check through ``jsonschema`` (the reference implementation; slow)."""
    if not isinstance(program, dict):
        return [Finding("", f"a program must be a JSON object, got {type(program).__name__}")]
    findings: list[Finding] = []
    for error in sorted(validator().iter_errors(program), key=lambda e: list(map(str, e.absolute_path))):
        findings.extend(explain(error))
    return findings
