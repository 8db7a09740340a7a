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
from leap_cli.programs.redact import well_formed
from leap_cli.programs.schema import Finding
from leap_cli.programs.validate import Labels, check_program

LEN = struct.Struct("<I")


REFUSED = "(refused) "  # what backends.reply_text puts before a Structured Outputs refusal
# what backends.reply_text gives for a reply whose content is empty but whose reasoning field holds text:
# REASONING_ONLY + "FIELD N" (N characters); kept in the cache as the reply, so a rerun says the same
REASONING_ONLY = "(reasoning only) "
# what backends.reply_text gives for an empty content stopped by the provider's content filter (finish_reason
# "content_filter", as OpenAI and Azure send)
FILTERED = "(content filter)"
MAX_DEPTH = 64  # JSON nesting a reply may have (a program's is ~8-12); deeper is a degenerate reply, not a program
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
# the first fenced block: its language tag, then what it holds up to the closing fence (or the end: a cut reply)
_FENCE = re.compile(r"```[ \t]*(?:[A-Za-z][\w+-]*)?(.*?)(?:```|\Z)", re.DOTALL)
_DECODER = json.JSONDecoder()


def json_depth(body: str) -> int:
    """How deeply the JSON text ``body`` nests (its strings left out), without recursion."""
    depth = best = 0
    for ch in _NOT_BRACKETS.sub("", _STRINGS.sub("", body)):
        depth += 1 if ch in "[{" else -1
        best = max(best, depth)
    return best


def reasoning_only(field: str, chars: int) -> str:
    """The reply text that stands for an empty content with ``chars`` characters in the message's ``field``."""
    return f"{REASONING_ONLY}{field} {chars}"


_THINK_OPEN, _THINK_CLOSE = re.compile(r"<think>", re.IGNORECASE), re.compile(r"</think>", re.IGNORECASE)


def strip_thinking(body: str) -> str:
    """``body`` without the reasoning a thinking model writes before its answer when the server has no reasoning
    parser: a leading ``<think>...</think>`` block, or everything up to a lone ``</think>`` (a chat template that
    opens the block in the prompt, as DeepSeek-R1's). An unclosed leading ``<think>`` leaves nothing. The tags in
    any case (``<THINK>``)."""
    close = _THINK_CLOSE.search(body) if "<" in body else None
    if _THINK_OPEN.match(body):
        return "" if close is None else body[close.end():].strip()
    if close is not None and not _THINK_OPEN.search(body, 0, close.start()):
        return body[close.end():].strip()
    return body


def repair_futile(text: str) -> bool:
    """Whether a repair turn would end as this reply did: the model only thought (an empty content beside its
    reasoning, or a ``<think>`` block and nothing after it, closed or not: the fix is a setting), or it refused
    (Structured Outputs' ``refusal``: it declined the clip, and would again), or the provider's content filter
    stopped it (it would again)."""
    body = text.strip()
    return body.startswith((REASONING_ONLY, REFUSED, FILTERED)) or bool(body) and not strip_thinking(body)


def _first_object(body: str, start: int, tries: int = 20):
    """The JSON value that starts at the first ``{`` from ``start`` that begins one: prose before the program may
    hold braces of its own ("the {verb} and {noun} slots"). Only a brace that is no JSON object at all (no key
    follows it) is passed over: a broken object (cut at the token limit) is its reply's failure, not a reason to
    take an object nested in it. The first failure is raised when none parses."""
    first: json.JSONDecodeError | None = None
    for _ in range(tries):
        try:
            return _DECODER.raw_decode(body, start)[0]
        except json.JSONDecodeError as e:
            first = first or e
            if body[start + 1:e.pos].strip():  # it began as an object: broken, not prose
                break
            start = body.find("{", start + 1)
            if start < 0:
                break
    raise first


def parse_reply(text: str) -> tuple[dict | None, list[Finding]]:
    """The program in a reply, or a finding. Before a thinking model's ``<think>`` block is left out; then the
    program is a reply that is a JSON object, else the first fenced block (```json ... ```), else the first JSON
    object from the first ``{``; what follows it (prose, a second copy, an end-of-text token) is ignored. A reply
    nested deeper than ``MAX_DEPTH`` (an LLM repeating brackets) is refused before Python's parser, printer and
    pickler would each hit their recursion limit on it."""
    body = text.strip()
    if not body:
        return None, [Finding("", "the reply is empty (no content)")]
    if body.startswith(REFUSED):
        return None, [Finding("", f"the model refused: {body[len(REFUSED):][:300]}")]
    if body == FILTERED:
        return None, [Finding("", "the provider's content filter stopped the reply (finish_reason content_filter): "
                                  "a repair turn would be stopped the same way; look at the clip's text "
                                  "(leap generate-programs --dry-run shows the prompt)")]
    if body.startswith(REASONING_ONLY):
        field, _, chars = body[len(REASONING_ONLY):].partition(" ")
        return None, [Finding("", f"the reply's content is empty; the server put {chars} characters in "
                                  f"{field} (the model's thinking): turn thinking off (on vLLM or SGLang --extra-body "
                                  "'{\"chat_template_kwargs\": {\"enable_thinking\": false}}'; see your server's "
                                  "docs) or raise --max-tokens")]
    body = strip_thinking(body)
    if not body:
        return None, [Finding("", "the reply is only the model's thinking (<think>...) and no program: raise "
                                  "--max-tokens, or turn thinking off with --extra-body")]
    if not body.startswith("{") and (fence := _FENCE.search(body)):
        body = fence.group(1).strip()
    if body.count("[") + body.count("{") > MAX_DEPTH and json_depth(body) > MAX_DEPTH:
        return None, [Finding("", f"the reply nests JSON {json_depth(body)} levels deep (a program nests ~10; at "
                                  f"most {MAX_DEPTH} are read)")]
    start = body.find("{")
    try:
        if start < 0 or body[:start].strip().startswith("["):  # no object, or a list of them: said as such
            value = json.loads(body)
        else:
            value = _first_object(body, start)
    except json.JSONDecodeError as e:
        return None, [Finding("", f"the reply is not JSON ({e.msg}: line {e.lineno} column {e.colno})")]
    if not isinstance(value, dict):
        return None, [Finding("", f"the reply is JSON but not an object ({type(value).__name__})")]
    if _ESCAPED_SURROGATE.search(body):  # "\ud83d" alone (a reply cut inside an emoji): U+FFFD in its strings,
        value = _well_formed(value)  # which the output file (UTF-8) could not hold
    return value, []


_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def _well_formed(value):
    if isinstance(value, str):
        return well_formed(value)
    if isinstance(value, dict):
        return {well_formed(k): _well_formed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_well_formed(v) for v in value]
    return value


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
    if hasattr(signal, "SIGHUP"):  # (so does a closed terminal's hang-up, sent to the whole job)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
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
