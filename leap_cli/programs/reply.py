"""A reply to a program request, checked: ``parse_reply`` (the JSON object in it), ``verify_reply`` (that and
its findings against the schema, the class files and the segment's labels), and the child process that runs
``verify_reply`` for ``checker.RemoteChecker`` (``child``; this module imports nothing it does not need, so the
child starts in ~0.1 s).

Frames both ways: a 4-byte little-endian length, then a pickle. Parent to child: the first frame is
``(verbs, nouns, max_sub_actions)``, then lists of ``(seq, text, verb_class, noun_class)``. Child to parent:
``None`` once ready, then, for each list, the list of ``(seq, parsed, findings)``. The child exits when its
input closes.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import struct
import sys

from leap_cli.epic.classes import ClassVocab
from leap_cli.programs.schema import Finding
from leap_cli.programs.validate import Labels, check_program

LEN = struct.Struct("<I")


REFUSED = "(refused) "  # what backends.reply_text puts before a Structured Outputs refusal
MAX_DEPTH = 64  # JSON nesting a reply may have (a program's is ~8-12); deeper is a degenerate reply, not a program
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")


def json_depth(body: str) -> int:
    """How deeply the JSON text ``body`` nests (its strings left out), without recursion."""
    depth = best = 0
    for ch in _NOT_BRACKETS.sub("", _STRINGS.sub("", body)):
        depth += 1 if ch in "[{" else -1
        best = max(best, depth)
    return best


def parse_reply(text: str) -> tuple[dict | None, list[Finding]]:
    """The program in a reply (a bare JSON object, or one inside a ```json fence), or a finding. A reply nested
    deeper than ``MAX_DEPTH`` (an LLM repeating brackets) is refused before Python's parser, printer and pickler
    would each hit their recursion limit on it."""
    body = text.strip()
    if not body:
        return None, [Finding("", "the reply is empty (no content)")]
    if body.startswith(REFUSED):
        return None, [Finding("", f"the model refused: {body[len(REFUSED):][:300]}")]
    if body.startswith("```"):
        body = body.strip("`")
        body = body[4:] if body.lower().startswith("json") else body
    if body.count("[") + body.count("{") > MAX_DEPTH and json_depth(body) > MAX_DEPTH:
        return None, [Finding("", f"the reply nests JSON {json_depth(body)} levels deep (a program nests ~10; at "
                                  f"most {MAX_DEPTH} are read)")]
    try:
        value = json.loads(body)
    except json.JSONDecodeError as e:
        return None, [Finding("", f"the reply is not JSON ({e.msg}: line {e.lineno} column {e.colno})")]
    if not isinstance(value, dict):
        return None, [Finding("", f"the reply is JSON but not an object ({type(value).__name__})")]
    return value, []


def verify_reply(text: str, verbs: ClassVocab, nouns: ClassVocab, labels: Labels, max_sub_actions: int
                 ) -> tuple[dict | None, list[Finding]]:
    """The parsed program (None when the reply is not a JSON object) and its findings (none: valid)."""
    program, findings = parse_reply(text)
    if program is not None:
        findings = check_program(program, verbs, nouns, labels, max_sub_actions=max_sub_actions)
    return program, findings


def frame(obj) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return LEN.pack(len(data)) + data


def _read(stream) -> bytes | None:
    head = stream.read(4)
    if len(head) < 4:
        return None
    (size,) = LEN.unpack(head)
    data = stream.read(size)
    return data if len(data) == size else None


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the stage, which closes this process's input
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    first = _read(inp)
    if first is None:
        return 0
    verbs, nouns, max_sub_actions = pickle.loads(first)
    out.write(frame(None))
    out.flush()
    while (msg := _read(inp)) is not None:
        out.write(frame([(seq, *verify_reply(text, verbs, nouns, Labels(verb_class, noun_class), max_sub_actions))
                          for seq, text, verb_class, noun_class in pickle.loads(msg)]))
        out.flush()
    return 0


def child() -> None:
    """The child's entry point (``RemoteChecker.start``)."""
    try:
        code = main()
        sys.stdout.flush()
    except BaseException:
        code = 1
    os._exit(code)  # no interpreter teardown: the stage waits for this exit when it closes
