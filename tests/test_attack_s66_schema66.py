"""Session 66, schema66: the compiled checker (``programs/fastschema.py``) against ``jsonschema``, verdict by verdict.

Two differential runs, both seeded: (1) programs (the exemplars and the offline generator's programs on the
validation excerpt) mutated structurally and checked by both, against the schema file itself and against the tests'
dispatching copy of it; (2) small schemas drawn from the keywords the compiler claims to know, each checked on a pool
of JSON values, so a keyword the program schema uses only with strings today (``enum``) or not at all (``const``)
still gets the reference's verdicts.

Mutation run over ``programs/fastschema.py``: 27 hand-made mutants (a comparison moved by one, a guard dropped, a
branch of the dispatch condition removed, ...), each run against tests/test_programs_validate.py and
tests/test_mut_schema_report.py: 13 killed, 14 survived (all of them in code the program schema does not reach today:
non-string enums, ``const``, ``maximum``, a schema for ``additionalProperties``, unanchored patterns, the dispatch
condition). With this file all 27 are killed; 4 of them only after the cases marked ``# mutant`` below were added.
None was equivalent.
"""

from __future__ import annotations

import copy
import random

import pytest
from jsonschema import Draft202012Validator

from leap_cli.programs.fastschema import compile_schema
from leap_cli.programs.prompt import load_exemplars
from leap_cli.programs.schema import load_schema, validate_program
from tests.program_helpers import excerpt_programs
from tests.program_schema_reference import validator as dispatching_reference

# ---- (1) programs ----

_CONDITION = {"predicate": "holding", "args": ["left", "plate"], "negated": False}
_JUNK = [None, 0, 1, -1, 2.5, 3.0, -0.0, float("nan"), float("inf"), 10 ** 30, True, False, "", " ", "X", "plate",
         "plate\n", "Plate", "1plate", "-a", "a:b", "a'b", "a_b", "board:chopping", "ä", "plate ü", "😀", "\ud83d",
         "a" * 40, "a" * 41, "a" * 60, "a" * 61, "a" * 200, "a" * 201, "x" * 59 + "é",
         "right", "left", "both", "either", "sub_action", "loop", "conditional", "routine", "holding", "in", "clean",
         [], {}, ["a"], ["left", "plate"], ["plate", "sink", "x"], ["left", "plate", "x"], [1, 2], {"a": 1}]


def _leaf() -> dict:
    return {"type": "sub_action", "verb": "take", "object_a": "plate", "object_b": None, "hand": "right", "pre": [],
            "post": [], "purpose": ""}


def _flow(kind: str, inner: dict) -> dict:
    if kind == "loop":
        return {"type": "loop", "until": copy.deepcopy(_CONDITION), "steps": [inner]}
    if kind == "conditional":
        return {"type": "conditional", "if": copy.deepcopy(_CONDITION), "then": [inner], "else": []}
    return {"type": "routine", "name": "r", "steps": [inner]}


def _nodes(x, path=()):
    yield path, x
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _nodes(v, path + (k,))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _nodes(v, path + (i,))


def _mutate(p: dict, rng: random.Random) -> None:
    """One structural change at a random place: a key dropped or added, an array emptied or grown past its limit,
    a step nested 1 to 3 levels deeper, a string at or past its length limit, a bool as a number, junk of any type."""
    path = rng.choice([q for q, _ in _nodes(p) if q])
    parent = p
    for k in path[:-1]:
        parent = parent[k]
    k, v, r = path[-1], parent[path[-1]], rng.random()
    if r < 0.15 and isinstance(parent, dict):
        parent.pop(k)
    elif r < 0.22 and isinstance(parent, dict):
        parent[rng.choice(["extra", "Type", "", "type", "steps", "ä"])] = copy.deepcopy(rng.choice(_JUNK))
    elif r < 0.32 and isinstance(parent, list):
        parent.extend(copy.deepcopy(parent[-1]) for _ in range(rng.choice([1, 3, 8, 12])))
    elif r < 0.37 and isinstance(parent, list):
        parent.clear()
    elif r < 0.47 and isinstance(v, dict) and v.get("type") in ("sub_action", "loop", "conditional", "routine"):
        inner = _leaf()
        for _ in range(rng.randint(1, 3)):
            inner = _flow(rng.choice(["loop", "conditional", "routine"]), inner)
        parent[k] = inner
    elif r < 0.52 and isinstance(v, str):
        parent[k] = v + rng.choice(["", "x" * rng.randint(1, 60), "\n", "É", " "])
    elif r < 0.57 and isinstance(v, bool):
        parent[k] = int(v)
    elif r < 0.62 and isinstance(v, int) and not isinstance(v, bool):
        parent[k] = rng.choice([bool(v), float(v), -v - 1, str(v)])
    else:
        parent[k] = copy.deepcopy(rng.choice(_JUNK))


def _validators(errors) -> set[str]:
    """The keywords that said no, also inside the branches of an ``anyOf``."""
    return {k for e in errors for k in {e.validator} | _validators(e.context)}


def _python_dollar(x) -> bool:
    """Whether ``x`` holds a string ending in a newline: there Python's '$' (jsonschema's) matches where ECMA-262's
    (JSON Schema's, fastschema's ``_ecma_end``) does not, so jsonschema is no reference (the newline test below)."""
    if isinstance(x, str):
        return x.endswith("\n")
    if isinstance(x, dict):
        return any(map(_python_dollar, x.keys())) or any(map(_python_dollar, x.values()))
    return isinstance(x, list) and any(map(_python_dollar, x))


def test_mutated_programs_get_the_reference_verdicts():
    """3000 mutated programs: the compiled checker's verdict is the dispatching reference's on each, and the
    reference run on the schema file as it is agrees on every fifth (it is ~10 times slower)."""
    raw = Draft202012Validator(load_schema())
    seeds = [e.program for e in load_exemplars()] + list(excerpt_programs(10).values())
    rng = random.Random(66)
    disagreements, invalid, kinds = [], 0, set()
    for i in range(3000):
        p = copy.deepcopy(rng.choice(seeds))
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            _mutate(p, rng)
        if _python_dollar(p):
            continue
        fast = not validate_program(p)
        ref = dispatching_reference().is_valid(p)
        invalid += not ref
        if fast != ref or (i % 5 == 0 and raw.is_valid(p) != ref):
            disagreements.append(p)
        if i % 10 == 0:
            kinds.update(_validators(dispatching_reference().iter_errors(p)))
    assert disagreements == []
    assert 2000 < invalid < 2950  # both verdicts are common
    assert {"type", "required", "additionalProperties", "minItems", "maxItems", "minLength", "maxLength", "pattern",
            "anyOf", "items", "enum", "minimum"} <= kinds, kinds  # (every keyword of the schema said no at least once)


# ---- (2) keywords ----

_VALUES = [None, True, False, 0, 1, -1, 1.0, 0.0, 2.5, -0.5, 10 ** 20, "", "a", "ab", "abc", "A", "a\n", "é", "1",
           [], [0], [False], [1], [True], ["a"], ["a", "b"], [1, "a", None], [[0]], [[False]],
           {}, {"type": "a"}, {"type": "b"}, {"type": "a", "x": 1}, {"type": "b", "x": "a"}, {"type": 1},
           {"type": True}, {"x": "a"}, {"x": 0}, {"x": False}, {"y": None}, {"x": "a", "y": []}]
_TYPES = ["object", "array", "string", "integer", "number", "boolean", "null"]
_CONSTANTS = [None, True, False, 0, 1, 1.0, "a", "", [0], [False], {"x": 0}, {"x": False}]


def _schema(rng: random.Random, depth: int = 0) -> dict | bool:
    """A small schema of the keywords ``compile_schema`` knows, nested at most twice."""
    if depth > 1 or rng.random() < 0.1:
        return rng.choice([True, False, {"type": rng.choice(_TYPES)}, {"enum": ["a", 1]}])
    kind = rng.choice(["type", "enum", "const", "number", "string", "array", "object", "anyOf", "dispatch"])
    s: dict = {}
    if rng.random() < 0.4 or kind == "type":
        s["type"] = rng.choice(_TYPES) if rng.random() < 0.6 else rng.sample(_TYPES, rng.randint(1, 3))
    if kind == "enum":
        s["enum"] = rng.sample(_CONSTANTS, rng.randint(1, 3)) if rng.random() < 0.6 else ["a", "b"][:rng.randint(1, 2)]
    elif kind == "const":
        s["const"] = rng.choice(_CONSTANTS)
    elif kind == "number":
        s.update({k: rng.choice([-1, 0, 0.5, 1]) for k in rng.sample(["minimum", "maximum"], rng.randint(1, 2))})
    elif kind == "string":
        s.update({k: rng.choice([0, 1, 2]) for k in rng.sample(["minLength", "maxLength"], rng.randint(0, 2))})
        if rng.random() < 0.6:
            s["pattern"] = rng.choice(["^[a-z]*$", "b", "^a", "^$"])
    elif kind == "array":
        if rng.random() < 0.5:
            s["prefixItems"] = [_schema(rng, depth + 1) for _ in range(rng.randint(1, 2))]
        if rng.random() < 0.7:
            s["items"] = rng.choice([False, _schema(rng, depth + 1)])
        s.update({k: rng.choice([0, 1, 2]) for k in rng.sample(["minItems", "maxItems"], rng.randint(0, 2))})
    elif kind == "object":
        s["properties"] = {k: _schema(rng, depth + 1) for k in rng.sample(["type", "x", "y"], rng.randint(0, 2))}
        s["required"] = rng.sample(["type", "x", "y"], rng.randint(0, 2))
        if rng.random() < 0.6:
            s["additionalProperties"] = rng.choice([False, True, _schema(rng, depth + 1), {"type": "string"}])
    elif kind == "anyOf":
        s["anyOf"] = [_schema(rng, depth + 1) for _ in range(rng.randint(1, 3))]
    elif kind == "dispatch":  # branches told apart (or not quite) by an enum on "type", as the steps are
        s["anyOf"] = [{**({"type": "object"} if rng.random() < 0.8 else {}),
                       **({"required": ["type"]} if rng.random() < 0.8 else {}),
                       "properties": {"type": {"enum": rng.sample(["a", "b", 1], rng.randint(1, 2))},
                                      "x": _schema(rng, depth + 1)}}
                      for _ in range(rng.randint(1, 3))]
    return s


def test_small_schemas_of_every_keyword_get_the_reference_verdicts():
    """1000 drawn schemas (also behind a ``$ref``) times the value pool: the same verdict as jsonschema on each."""
    rng = random.Random(66)
    disagreements, valid, cases = [], 0, 0
    for _ in range(1000):
        s = _schema(rng)
        if isinstance(s, dict) and rng.random() < 0.3:
            s = {"$defs": {"d": s}, "$ref": "#/$defs/d"}
        check, ref = compile_schema(s) if isinstance(s, dict) else compile_schema({"anyOf": [s]}), \
            Draft202012Validator(s)
        for x in _VALUES:
            if "pattern" in str(s) and _python_dollar(x):
                continue
            cases += 1
            valid += ref.is_valid(x)
            if (not check(x)) != ref.is_valid(x):
                disagreements.append((s, x))
    assert disagreements == []
    assert cases // 5 < valid < cases * 4 // 5  # both verdicts are common


@pytest.mark.parametrize("schema, value", [
    ({"enum": [False]}, 0),  # 0 is not false in JSON
    ({"enum": [1, "a"]}, True),
    ({"enum": [[1]]}, [True]),
    ({"const": 1}, True),
    ({"const": False}, 0),
    ({"const": {"x": 0}}, {"x": False}),
    ({"enum": ["a", "b"]}, ["a"]),  # (a list is no string: said so, not a TypeError of an unhashable)  # mutant
    ({"enum": ["a", "b"]}, {"a": 1}),
])
def test_enum_and_const_compare_as_json_does(schema, value):
    assert not Draft202012Validator(schema).is_valid(value)
    assert compile_schema(schema)(value) != []


@pytest.mark.parametrize("branches, value", [
    ([{"required": ["type"], "properties": {"type": {"enum": ["a"]}}},
      {"required": ["type"], "properties": {"type": {"enum": ["b"]}}}], 3),  # not of type object  # mutant
    ([{"type": "object", "properties": {"type": {"enum": ["a"]}}},
      {"type": "object", "properties": {"type": {"enum": ["b"]}}}], {}),  # type not required  # mutant
    ([True, {"type": "object", "required": ["type"], "properties": {"type": {"enum": ["b"]}}}], 3),  # a bool branch
    ([{"type": "object", "required": ["type"], "properties": {"type": {"enum": ["a"]}}},
      {"type": "object", "required": ["type"], "properties": {"type": {"enum": ["a"]}, "x": {"type": "string"}}}],
     {"type": "a", "x": 1}),  # an "a" the first branch takes and the second does not
    ([{"type": "object", "required": ["type"], "properties": {"type": {"enum": [1]}}},
      {"type": "object", "required": ["type"], "properties": {"type": {"enum": ["b"]}}}], {"type": 1}),
])
def test_an_any_of_dispatches_only_where_the_branches_are_told_apart_by_their_discriminator(branches, value):
    """Each value is valid under some branch; dispatching on ``type`` would have tried one branch or none."""
    assert Draft202012Validator({"anyOf": branches}).is_valid(value)
    assert compile_schema({"anyOf": branches})(value) == []


def test_a_name_with_a_final_newline_does_not_match_the_name_pattern():
    """JSON Schema's patterns are ECMA-262's, whose '$' is the end of the string; Python's re (jsonschema's, and
    fastschema's before ``_ecma_end``) also matches it before a final newline: 'take\\n' passed the verb pattern."""
    p = copy.deepcopy(next(e for e in load_exemplars() if e.id == "wash-plate").program)
    p["steps"][0]["verb"] += "\n"
    assert validate_program(p) != []
