"""``leap validate-programs``: re-validate program records, count, and write ``programs/{split}.report.json``.

Report: files, record and status totals (after re-validation), the generators that made the records (``made_by``:
records and valid ones of each, ``programs.provenance``), duplicate narration ids, errors per record,
lines that are not records (``malformed``), coverage (valid programs of the split's annotated segments over
those segments, with the records whose ids are not segments of the split counted apart; over the records when
no annotations are given), and histograms: sub-action verbs and objects (EPIC keys), predicates, flattened sub-actions per
program, control-flow use (loops, conditionals, routines).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Iterator

from leap_cli.common import PROGRAM_STATUSES, program_record_problem
from leap_cli.epic.annotations import Segment
from leap_cli.epic.classes import ClassVocab
from leap_cli.programs.provenance import MadeBy
from leap_cli.programs.targets import flatten_program
from leap_cli.programs.schema import Finding
from leap_cli.programs.validate import DEFAULT_MAX_SUB_ACTIONS, Labels, check_program
from leap_cli.programs.vocab import object_key, resolve_verb

STATUSES = PROGRAM_STATUSES


def split_of(path: Path) -> str:
    """``train.jsonl`` / ``train.shard0of4.jsonl`` -> ``train``."""
    return path.name.split(".")[0]


def _lines(path: Path) -> Iterator[tuple[int, object, str | None]]:
    """(line number, parsed JSON or None, what is wrong) per non-blank line, read as a stream. Unlike
    ``io.read_jsonl`` a bad line is not an error here, nor is a truncated last line dropped: the report lists both,
    and checks the rest. A line that is JSON but not a program record comes with its problem too."""
    with open(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                r = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
                if not raw.endswith(b"\n"):  # the last line, and no newline after it
                    problem = ("truncated last line (a write cut short; generate-programs cuts it off when it "
                               "resumes)")
                elif isinstance(e, json.JSONDecodeError) and e.pos >= len(e.doc.rstrip("\r\n")):
                    problem = (f"line cut short after column {e.colno - 1} (a write that stopped: e.g. a part joined "
                               f"before it finished, or a killed process)")
                elif isinstance(e, json.JSONDecodeError):
                    msg = e.msg[:-3] if e.msg.endswith(" at") else e.msg  # json's "Invalid control character at"
                    problem = f"not valid JSON ({msg} at column {e.colno})"
                elif isinstance(e, RecursionError):
                    problem = "JSON nested too deeply (not a record leap writes)"
                else:
                    problem = "not UTF-8 text (not a record leap writes)"
                yield i, None, problem
                continue
            problem = program_record_problem(r)
            if problem:
                yield i, r, f"not a program record ({problem})"
                continue
            yield i, r, None


def _walk(steps, counts: Counter) -> None:
    for s in steps:
        if s.get("type") != "sub_action":
            counts[s.get("type", "?")] += 1
            for k in ("steps", "then", "else"):
                _walk(s.get(k) or [], counts)


def _conditions(program: dict):
    yield from program.get("pre") or []
    yield from program.get("post") or []

    def walk(steps):
        for s in steps:
            if s.get("type") == "sub_action":
                yield from s.get("pre") or []
                yield from s.get("post") or []
            else:
                for k in ("until", "if"):
                    if isinstance(s.get(k), dict):
                        yield s[k]
                for k in ("steps", "then", "else"):
                    yield from walk(s.get(k) or [])

    yield from walk(program.get("steps") or [])


def revalidated(records: list, verbs: ClassVocab, nouns: ClassVocab, segments: dict[str, Segment] | None = None, *,
                max_sub_actions: int = DEFAULT_MAX_SUB_ACTIONS) -> tuple[list[dict], list[dict]]:
    """Program records as a consumer may trust them: each ``valid`` one is checked again with the validation
    generate-programs runs (``validate.check_program``: the schema, then chaining and vocabulary, and the segment's
    labels when ``segments`` has it); one that fails comes back ``invalid`` with its findings, a line that is not a
    record (``common.program_record_problem``: a descriptor record, a status of another kind) is dropped. Returns
    (records, failures): one ``{"narration_id", "reason"}`` per record that was not valid after all (``reason``
    naming the line for a line that is not a record; ``narration_id`` None where it has none)."""
    out, failures = [], []
    for i, r in enumerate(records, start=1):
        if problem := program_record_problem(r):
            failures.append({"narration_id": r["narration_id"] if isinstance(r, dict) and isinstance(
                r.get("narration_id"), str) else None, "reason": f"line {i}: not a program record ({problem})"})
            continue
        if r.get("status") == "valid":
            program = r.get("program")
            if not isinstance(program, dict):
                findings = [Finding("", "no program")]
            else:
                seg = (segments or {}).get(r["narration_id"])
                labels = Labels(seg.verb_class, seg.noun_class) if seg is not None and seg.has_labels else None
                findings = check_program(program, verbs, nouns, labels, max_sub_actions=max_sub_actions)
            if findings:
                r = {**r, "status": "invalid", "errors": [f.to_dict() for f in findings]}
                f = findings[0]
                failures.append({"narration_id": r["narration_id"],
                                 "reason": f"{f.pointer or '/'}: {f.message}"
                                           + (f" (+{len(findings) - 1} more)" if len(findings) > 1 else "")})
        out.append(r)
    return out, failures


def recheck(record: dict, verbs: ClassVocab, nouns: ClassVocab, segments: dict[str, Segment] | None = None, *,
            max_sub_actions: int = DEFAULT_MAX_SUB_ACTIONS) -> tuple[str, list[dict]]:
    """(status, findings) of a program record (of a valid shape) as validate-programs gives them: a program is
    checked again (``validate.check_program``, with the segment's labels when ``segments`` has it) and its
    findings replace the stored ones; a record without a program is invalid; a failed one stays as it is."""
    program, status, errors = record.get("program"), record["status"], record.get("errors") or []
    if status == "failed":
        return status, errors
    if program is None:
        return "invalid", errors or [{"pointer": "", "message": "no program"}]
    seg = (segments or {}).get(record["narration_id"])
    labels = Labels(seg.verb_class, seg.noun_class) if seg is not None else None
    findings = check_program(program, verbs, nouns, labels, max_sub_actions=max_sub_actions)
    if not findings and status != "valid":  # (counted valid here, it is left out by build-shards: the counts differed)
        return "invalid", [{"pointer": "", "message": "stored invalid, though its checks pass now: build-shards uses "
                                                      "only records stored valid (set its status to valid where the "
                                                      "program was fixed by hand, or redo it with generate-programs "
                                                      "--retry-invalid)"}]
    return ("invalid" if findings else "valid"), [f.to_dict() for f in findings]


def _ranked(counts: Counter) -> dict:
    """Most frequent first, ties by name (``most_common`` breaks them by first sight: the files' record order)."""
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0]))))


def validate_records(paths: list[Path], verbs: ClassVocab, nouns: ClassVocab,
                     segments: dict[str, Segment] | None = None, *,
                     max_sub_actions: int = DEFAULT_MAX_SUB_ACTIONS, part: tuple[list[int], int] | None = None) -> dict:
    """The report dict of the program files ``paths`` of one split; ``segments`` (the split's) also says which
    records count towards coverage; ``part`` ([i, ...], n): the files are those ``--shard i/n`` parts, whose
    segments (``ShardSpec.select``) the coverage counts."""
    if segments and part is not None:
        from leap_cli.common import ShardSpec

        ordered = list(segments.values())
        cover = {s.narration_id for i in part[0]
                 for s in ShardSpec(i, part[1]).select(ordered, key=lambda s: s.video_id)}
    else:
        cover = set(segments) if segments else None
    # Two passes, so that one record at a time is held (a split of EPIC's size is ~1 GB as Python objects): the
    # first finds the line that counts for each narration id (its last), the second checks those lines.
    last: dict[str, tuple[int, int]] = {}  # narration id -> (file index, line number)
    duplicates = 0
    malformed = []  # lines that are not program records: listed, and the other records are validated
    for k, path in enumerate(paths):
        for i, r, problem in _lines(Path(path)):
            if problem:
                malformed.append({"file": str(path), "line": i, "problem": problem})
                continue
            duplicates += r["narration_id"] in last
            last[r["narration_id"]] = (k, i)

    def records() -> Iterator[tuple[str, dict]]:
        for k, path in enumerate(paths):
            for i, r, problem in _lines(Path(path)):
                if not problem and last.get(r["narration_id"]) == (k, i):
                    yield r["narration_id"], r

    statuses: Counter = Counter()
    covered = 0  # valid records of segments of the split
    changed = 0
    per_record = []
    verb_h, obj_h, pred_h, steps_h, flow_h = Counter(), Counter(), Counter(), Counter(), Counter()
    made = MadeBy()
    for nid, r in records():
        program = r.get("program")
        status, errors = recheck(r, verbs, nouns, segments, max_sub_actions=max_sub_actions)
        made.add(r, status == "valid")
        changed += status != r["status"]
        statuses[status] += 1
        covered += status == "valid" and (cover is None or nid in cover)
        if status != "valid":
            per_record.append({"narration_id": nid, "status": status, "errors": errors})
            continue
        flat = flatten_program(program)
        steps_h[len(flat)] += 1
        for sub in flat:
            vid = resolve_verb(sub["verb"], verbs)
            verb_h[verbs.keys[vid] if vid is not None else sub["verb"]] += 1
            for o in (sub.get("object_a"), sub.get("object_b")):
                if o:
                    obj_h[object_key(o, nouns)] += 1
        for c in _conditions(program):
            pred_h[("not " if c.get("negated") else "") + c["predicate"]] += 1
        flow = Counter()
        _walk(program.get("steps") or [], flow)
        for k, v in flow.items():
            flow_h[k] += v
            flow_h[f"programs_with_{k}"] += 1
    denominator = len(cover) if cover is not None else len(last)
    not_in_split = sorted(nid for nid in last if segments and nid not in segments)
    return {
        "files": [str(p) for p in paths],
        "records": len(last),
        "duplicates": duplicates,
        "statuses": {s: statuses.get(s, 0) for s in STATUSES},
        "status_changed_on_revalidation": changed,
        "backends": made.backends(),
        "made_by": made.summary(),
        "coverage": {"valid": covered, "segments": denominator,
                     "of": ("records" if not segments else "annotated segments of the split" if part is None else
                            f"annotated segments of part(s) {', '.join(f'{i}/{part[1]}' for i in part[0])} of the split"),
                     "fraction": round(covered / denominator, 4) if denominator else 0.0,
                     "not_in_split": len(not_in_split), "not_in_split_examples": not_in_split[:10]},
        "histograms": {"verbs": _ranked(verb_h), "objects": _ranked(obj_h), "predicates": _ranked(pred_h),
                       "steps": {str(k): v for k, v in sorted(steps_h.items())}, "control_flow": dict(flow_h)},
        "errors": per_record,
        "malformed": malformed,
    }
