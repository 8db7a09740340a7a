"""Text from records (narrations, purposes, findings, ids, paths) as rich markup that prints as itself.

Records hold what an LLM or a person wrote: JSON carries ESC and other control characters as well as rich's
``[tags]``, and a terminal acts on ESC sequences (clearing the screen, setting the title, hyperlinks), piped or not.
"""

from __future__ import annotations

import re
import sys

from rich.markup import escape

# C0 controls but tab and newline, DEL and C1, and the invisible format characters that reorder or hide text
# (bidirectional overrides and isolates, zero-width characters, the BOM) and Unicode's line and paragraph
# separators: shown as \xNN / \uNNNN (newline too when
# the text must stay on one line)
_FORMAT = "\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff"
_CONTROL = re.compile(f"[\\x00-\\x08\\x0b-\\x1f\\x7f-\\x9f{_FORMAT}]")
_CONTROL_ONE_LINE = re.compile(f"[\\x00-\\x08\\x0a-\\x1f\\x7f-\\x9f{_FORMAT}]")
# rich reads backslashes as escapes only before a tag: trailing backslashes are doubled and an empty tag put after
# them, so they print as they are whether or not markup follows (escape() alone doubles them at the end of a line)
_AFTER_BACKSLASHES = "[dim][/dim]"


def _visible(m: re.Match) -> str:
    c = m.group()
    return {"\n": "\\n", "\r": "\\r"}.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def visible_controls(text: str) -> str:
    """``text`` with its control and invisible format characters written out (``\\x1b``, ``\\u202e``); tabs and
    newlines kept."""
    return _CONTROL.sub(_visible, text)


def encodable(text: str) -> str:
    """``text`` as the output can write it: on an ASCII stdout (``PYTHONIOENCODING=ascii``, a job's environment)
    what it cannot encode as ``\\xe9`` / ``\\u2603``, the stream's own escapes (``cli``), written out before rich
    measures the text: once it measured é as one column and the stream wrote four, a table's border moved."""
    encoding = getattr(sys.stdout, "encoding", None)
    if text.isascii() or not encoding:
        return text
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        return text.encode(encoding, "backslashreplace").decode(encoding)
    except LookupError:  # (an encoding Python does not know: the stream says what it cannot write)
        pass
    return text


def printable(value: object, *, one_line: bool = False) -> str:
    """``str(value)`` as markup: control characters shown as ``\\x1b`` (also newlines with ``one_line``, for
    labels and one-line messages), what the output cannot encode as ``\\xe9`` (``encodable``), ``[`` read as
    text."""
    text = encodable((_CONTROL_ONE_LINE if one_line else _CONTROL).sub(_visible, str(value)))
    body = text.rstrip("\\")
    trailing = len(text) - len(body)
    return escape(body) + ("\\" * (2 * trailing) + _AFTER_BACKSLASHES if trailing else "")
