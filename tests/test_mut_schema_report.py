"""Gaps a mutation run over ``programs/fastschema.py``, ``programs/schema.py`` and ``programs/report.py`` found:
the compiled checker's messages against the reference (``jsonschema``) ones, the strict variant of the schema,
and the counts of ``leap validate-programs``' report."""

import copy
import json
from collections import Counter
from pathlib import Path

import pytest

from leap_cli.epic.classes import ClassVocab
from leap_cli.programs.prompt import load_exemplars
from leap_cli.programs.report import revalidated, split_of, validate_records
from leap_cli.programs.schema import load_schema, pointer, strict_schema, validate_program
from tests.program_schema_reference import validate_program_reference

CLASSES = Path(__file__).parent / "data" / "epic100"


@pytest.fixture(scope="module")
def vocab():
    return [ClassVocab.from_csv(CLASSES / f"EPIC_100_{k}_classes.csv", k) for k in ("verb", "noun")]


@pytest.fixture(scope="module")
def exemplars():
    return load_exemplars()


@pytest.fixture(scope="module")
def wash(exemplars):
    return next(e for e in exemplars if e.id == "wash-plate").program


def _found(program):
    return [(f.pointer, f.message) for f in validate_program(program)]


def _broken(wash, path, value):
    p = copy.deepcopy(wash)
    node = p
    for k in path[:-1]:
        node = node[k]
    if value is KeyError:
        node.pop(path[-1])
    else:
        node[path[-1]] = value
    return p


# ---- fastschema: the same verdicts and the same words as the reference ----

@pytest.mark.parametrize("path, value", [
    (("steps", 0, "extra"), 1),  # Additional properties are not allowed
    (("steps",), []),  # should be non-empty (minItems 1)
    (("steps", 0, "verb"), ""),  # should be non-empty (minLength 1)
    (("steps", 0, "type"), "jump"),  # not one of the step types, listed sorted
    (("pre", 0, "predicate"), "inside"),  # not one of the predicates, listed sorted
    (("steps", 0, "object_b"), 5),  # "X or null": why it is not an X
    (("steps", 0, "verb"), 3),  # is not of type 'string'
    (("action",), 3),  # is not of type 'object'
    (("action", "verb_class"), -1),  # is less than the minimum of 0
])
def test_the_compiled_checker_says_what_the_reference_says(wash, path, value):
    p = _broken(wash, path, value)
    ref = [(f.pointer, f.message) for f in validate_program_reference(p)]
    assert ref and _found(p) == ref


def test_an_integer_valued_float_is_an_integer_and_another_is_not(wash):
    assert _found(_broken(wash, ("action", "verb_class"), 3.0)) == []
    assert _found(_broken(wash, ("action", "verb_class"), 2.5)) == [("/action/verb_class",
                                                                       "2.5 is not of type 'integer', 'null'")]


def test_a_step_that_is_not_an_object_or_has_no_type_is_named_in_one_short_line(wash):
    # (the reference says "... is not valid under any of the given schemas", quoting the whole step)
    assert _found(_broken(wash, ("steps", 0), 3)) == [("/steps/0", "3 is not of type 'object'")]
    assert _found(_broken(wash, ("steps", 0, "type"), KeyError)) == [("/steps/0", "'type' is a required property")]


def test_a_value_of_none_of_several_types_is_said_as_the_reference_says(wash):
    """'1' is not of type 'integer', 'null' (it said ['integer', 'null'], a Python list)."""
    p = _broken(wash, ("action", "verb_class"), "1")
    assert _found(p) == [(f.pointer, f.message) for f in validate_program_reference(p)]


def test_one_finding_per_wrong_value(wash):
    """An args array one too long is said once (its length), not again as a value not allowed; a hand of the wrong
    type is said once (its type), not again as not one of the hands."""
    p = _broken(wash, ("post", 0, "args"), ["plate", "sink", "x"])
    assert _found(p) == [("/post/0/args", "has 3 items, more than the 1 allowed")]
    p = _broken(wash, ("steps", 0, "hand"), 3)
    assert _found(p) == [("/steps/0/hand", "3 is not of type 'string'")]


def test_a_long_value_is_cut_to_60_characters_and_one_of_60_is_whole(wash):
    long = "a" * 100
    (f,) = validate_program(_broken(wash, ("steps", 0, "verb"), long))
    assert f.message == repr(long)[:57] + "... is 100 characters long, more than the 40 allowed"
    sixty = "a" * 58  # its repr is 60 characters: shown whole
    (f,) = validate_program(_broken(wash, ("steps", 0, "verb"), sixty))
    assert f.message == f"'{sixty}' is 58 characters long, more than the 40 allowed"


# ---- schema ----

def test_a_program_that_is_not_an_object_is_named_so():
    assert [(f.pointer, f.message) for f in validate_program([1])] == [
        ("", "a program must be a JSON object, got list")]
    assert validate_program("x" * 1000)[0].message == "a program must be a JSON object, got str"


def test_json_pointers_escape_tilde_and_slash():
    assert pointer(["a/b", "c~d", 0]) == "/a~1b/c~0d/0"  # RFC 6901: ~ first, then /


def test_strict_variant_drops_what_strict_mode_may_refuse_and_keeps_required_fields_non_null():
    strict = strict_schema()
    text = json.dumps(strict)
    for kw in ("prefixItems", "minItems", "maxItems", "minLength", "maxLength", "pattern", "minimum"):
        assert f'"{kw}"' not in text, kw
    assert strict["$defs"]["sub_action"]["properties"]["verb"] == {"$ref": "#/$defs/verb_name"}
    assert strict["$defs"]["action"]["properties"]["verb_class"] == {"type": ["integer", "null"]}


def test_strict_variant_makes_optional_fields_nullable_once():
    src, strict = load_schema()["$defs"]["sub_action"]["properties"], strict_schema()["$defs"]["sub_action"]
    # already "X or null": left as it is (not wrapped in another anyOf with null)
    assert strict["properties"]["object_b"] == src["object_b"] and strict["properties"]["hand"] == src["hand"]
    assert strict["properties"]["purpose"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}


def test_a_schema_that_is_not_json_is_named(tmp_path, monkeypatch):
    from leap_cli.errors import LeapError

    (tmp_path / "action_program.schema.json").write_text("{not json")
    monkeypatch.setenv("LEAP_SCHEMAS_DIR", str(tmp_path))
    load_schema.cache_clear()
    try:
        with pytest.raises(LeapError, match="schema is not valid JSON"):
            load_schema()
    finally:
        load_schema.cache_clear()


# ---- report ----

def test_split_of_a_shard_part():
    assert split_of(Path("x/train.shard0of4.jsonl")) == "train" and split_of(Path("val.jsonl")) == "val"


def _record(nid, program, status="valid"):
    return {"narration_id": nid, "status": status, "program": program, "errors": [],
            "provenance": {"backend": "offline", "model": ""}}


def _every(x, want):
    """Every dict in ``x`` (at any depth) for which ``want`` holds: an oracle independent of the report's walks."""
    if isinstance(x, dict):
        if want(x):
            yield x
        for v in x.values():
            yield from _every(v, want)
    elif isinstance(x, list):
        for v in x:
            yield from _every(v, want)


def test_report_histograms_against_hand_counted_ones(tmp_path, exemplars, vocab):
    programs = [e.program for e in exemplars]
    # (the valid ones, longest first, so that the steps histogram's order is not the records' order)
    f = tmp_path / "val.jsonl"
    f.write_text("".join(json.dumps(_record(f"n{i}", p)) + "\n" for i, p in enumerate(programs)))
    rep = validate_records([f], *vocab)
    assert rep["statuses"]["valid"] == len(programs)
    h = rep["histograms"]
    preds = Counter(("not " if c["negated"] else "") + c["predicate"] for p in programs
                    for c in _every(p, lambda d: "predicate" in d))
    assert h["predicates"] == dict(sorted(preds.items(), key=lambda kv: (-kv[1], kv[0])))
    assert any(k.startswith("not ") for k in preds)
    flow, having = Counter(), Counter()
    for p in programs:
        kinds = Counter(d["type"] for d in _every(p["steps"], lambda d: d.get("type") in ("loop", "conditional",
                                                                                            "routine")))
        flow.update(kinds)
        having.update(f"programs_with_{k}" for k in kinds)
    assert any(flow[k] > having[f"programs_with_{k}"] for k in flow)  # (a program with two of a kind)
    assert h["control_flow"] == {**flow, **having}
    steps = [int(k) for k in h["steps"]]
    assert steps == sorted(steps) and len(steps) > 1
    for name in ("verbs", "objects", "predicates"):
        counts = list(h[name].values())
        assert counts == sorted(counts, reverse=True), name  # most frequent first
    verbs = vocab[0]
    for k in h["verbs"]:  # an EPIC key, not the synonym the program used
        vid = verbs.resolve(k)
        assert vid is None or verbs.keys[vid] == k, k


def test_a_control_character_in_a_line_is_named_once(tmp_path, vocab):
    f = tmp_path / "val.jsonl"
    f.write_bytes(b'{"narration_id": "a\x01b"}\n')
    rep = validate_records([f], *vocab)
    assert rep["malformed"][0]["problem"] == "not valid JSON (Invalid control character at column 20)"


def test_revalidated_names_a_line_that_is_not_a_record_and_counts_the_rest_of_the_findings(wash, vocab):
    bad = _broken(wash, ("steps", 0, "hand"), "middle")
    stored_invalid = _record("c", None, "invalid")
    out, failures = revalidated([[1], _record("a", bad), {"narration_id": 3}, _record("b", None), stored_invalid],
                                *vocab)
    assert failures[0] == {"narration_id": None, "reason": "line 1: not a program record (a JSON list, not an object)"}
    assert failures[1]["narration_id"] == "a" and failures[1]["reason"].startswith("/steps/0/hand: ")
    assert "more)" not in failures[1]["reason"]  # one finding: no "(+0 more)"
    assert failures[2] == {"narration_id": None, "reason": "line 3: not a program record (no narration_id string)"}
    assert failures[3] == {"narration_id": "b", "reason": "/: no program"}
    assert len(failures) == 4  # a record stored invalid was never called valid: not a failure, and kept as it is
    assert [r["status"] for r in out] == ["invalid", "invalid", "invalid"] and out[2] == stored_invalid


def test_recheck_keeps_the_stored_findings_of_a_record_without_a_program(vocab):
    from leap_cli.programs.report import recheck

    stored = [{"pointer": "/steps", "message": "the reply was cut"}]
    assert recheck({**_record("a", None, "invalid"), "errors": stored}, *vocab) == ("invalid", stored)
    assert recheck(_record("a", None, "valid"), *vocab) == ("invalid", [{"pointer": "", "message": "no program"}])


def test_the_steps_histogram_counts_flattened_sub_actions(tmp_path, wash, vocab):
    # wash-plate: two sub-actions, then a loop of two (counted once): 4, though the program has 3 steps
    f = tmp_path / "val.jsonl"
    f.write_text(json.dumps(_record("n", wash)) + "\n")
    assert validate_records([f], *vocab)["histograms"]["steps"] == {"4": 1}


def test_control_flow_in_an_else_branch_is_counted(tmp_path, exemplars, vocab):
    from leap_cli.programs.validate import check_program

    p = copy.deepcopy(next(e for e in exemplars if e.id == "stab-potato").program)
    c = next(s for s in p["steps"] if s["type"] == "conditional")
    c["else"] = [{"type": "routine", "name": "r", "steps": copy.deepcopy(c["then"])}]
    assert check_program(p, *vocab) == []
    f = tmp_path / "val.jsonl"
    f.write_text(json.dumps(_record("n", p)) + "\n")
    flow = validate_records([f], *vocab)["histograms"]["control_flow"]
    assert flow == {"conditional": 1, "routine": 1, "programs_with_conditional": 1, "programs_with_routine": 1}


@pytest.fixture(scope="module")
def labelled():
    """Valid programs of the first 12 segments of the validation excerpt, and its segments (of several videos) by
    narration id."""
    from leap_cli.epic.annotations import read_segments
    from tests.program_helpers import excerpt_programs

    segs = read_segments(Path(__file__).parent / "data" / "epic" / "EPIC_100_validation_excerpt.csv")
    return excerpt_programs(12), {s.narration_id: s for s in segs}


def test_a_program_of_another_segments_verb_is_invalid_against_the_labels(tmp_path, vocab, labelled):
    programs, segments = labelled
    a, b = next((a, b) for a in programs for b in programs
                if segments[a].verb_class != segments[b].verb_class)
    f = tmp_path / "val.jsonl"
    f.write_text(json.dumps(_record(b, programs[a])) + "\n" + json.dumps(_record(a, programs[a])) + "\n")
    rep = validate_records([f], *vocab, segments)
    assert rep["statuses"]["valid"] == 1 and [e["narration_id"] for e in rep["errors"]] == [b]


def test_coverage_of_several_parts_counts_the_segments_of_each(tmp_path, vocab, labelled):
    programs, segments = labelled
    f = tmp_path / "val.jsonl"
    f.write_text("".join(json.dumps(_record(n, p)) + "\n" for n, p in programs.items()))
    both = validate_records([f], *vocab, segments, part=([0, 1], 2))["coverage"]
    assert both["of"] == "annotated segments of part(s) 0/2, 1/2 of the split"
    assert (both["valid"], both["segments"]) == (len(programs), len(segments))
    each = [validate_records([f], *vocab, segments, part=([i], 2))["coverage"]["segments"] for i in (0, 1)]
    assert sum(each) == len(segments) and min(each) > 0


def test_response_format_asks_for_the_strict_schema_or_a_json_object():
    from leap_cli.programs.schema import response_format

    assert response_format() == {"type": "json_schema", "json_schema": {"name": "action_program", "strict": True,
                                                                         "schema": strict_schema()}}
    assert response_format(strict=False) == {"type": "json_object"}


def test_strict_schema_is_a_fresh_copy_each_time():
    s = strict_schema()
    s["$defs"].clear()
    assert strict_schema()["$defs"]


def test_a_record_stored_valid_without_a_program_counts_as_changed_on_revalidation(tmp_path, wash, vocab):
    """R18 of session 47: ``status_changed_on_revalidation`` left out a record stored valid whose program is null
    (a hand edit, or a writer's fault), though revalidation turns it invalid. One stored invalid stays so."""
    f = tmp_path / "val.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in (_record("a", None), _record("b", None, "invalid"),
                                                          _record("c", wash), _record("d", None, "failed"))))
    rep = validate_records([f], *vocab)
    assert rep["statuses"] == {"valid": 1, "invalid": 2, "failed": 1}
    assert rep["status_changed_on_revalidation"] == 1
