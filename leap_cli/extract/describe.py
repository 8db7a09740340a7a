"""The clip text: a descriptor record's components in words, for the prompt; and its parser.

Format (one line per part, each ``Prefix: free text.``; the first line is ``Clip <span>.``)::

    Clip 12.40-15.10 s (2.7 s long).
    Narration: "cut carrot" (verb: cut, noun: carrot).
    Timeline: [0.0-2.7 s] sound: rhythmic chopping; [0.3-2.5 s] right hand touches knife; ...
    Audio: rhythmic chopping 0.0-2.7 s (peak -20 dBFS, 8 onsets).
    Camera: unavailable (the window ends 0.87 s after the decodable end of the video (14.25 s, 854 frames)).
    Objects: knife (right, near right hand; 0.0-2.7 s, 100% of frames, conf 0.90).
    Hands: left hand free; right hand: knife 0.3-2.5 s.

Parts come in this order: the span, the narration, the timed events of all components ordered by start time
(at most ``max_events``, then ``... (N more)``), then one line per computed component in ``COMPONENTS``
order: its ``text`` when ``ok``, else ``unavailable (reason)`` / ``error (message)``, so the LLM knows what it
was not told. A component that was not computed has no line. The free text after a prefix is the component's
own (``extract/audio.py``, ``camera.py``, ``objects.py``, ``hands.py``, ``narration.py``); a new part is a new
``Prefix: text.`` line, which ``parse_clip_text`` keeps under its lower-cased prefix.
"""

from __future__ import annotations

import re

from leap_cli.extract.base import COMPONENTS

SUMMARY_NAMES = {"narration": "Narration", "audio": "Audio", "camera": "Camera", "objects": "Objects",
                 "hands": "Hands", "timeline": "Timeline"}
_LINE = re.compile(r"^([A-Z][A-Za-z]*): (.*)\.$")
_CLIP = re.compile(r"^Clip (.*)\.$")
_EVENT = re.compile(r"(?:^|; )\[(-?\d+(?:\.\d+)?)-(-?\d+(?:\.\d+)?) s\] ")
_MORE = re.compile(r"; \.\.\. \((\d+) more\)$")


def _prefix(key: str) -> str:
    return SUMMARY_NAMES.get(key) or key.capitalize()


def component_line(c: dict) -> str:
    """A component's part of the clip text: its text when ok, else ``unavailable (reason)`` / ``error (msg)``."""
    if c["status"] == "ok":
        return c["text"]
    why = (c.get("data") or {}).get("reason") or (c.get("data") or {}).get("error") or ""
    return f"{c['status']} ({why})" if why else c["status"]


def timeline_text(events: list[tuple[float, float, str]], more: int = 0) -> str:
    """``[a-b s] text; ...`` with ``; ... (N more)`` when events were left out."""
    return "; ".join(f"[{a:.1f}-{b:.1f} s] {t}" for a, b, t in events) + (f"; ... ({more} more)" if more else "")


def render_parts(parts: dict[str, str]) -> str:
    """The clip text of parts ``{"clip": span, "narration": text, ...}``, in the dict's order."""
    return "\n".join(f"Clip {text}." if key == "clip" else f"{_prefix(key)}: {_one_line(text)}."
                     for key, text in parts.items())


def _one_line(text: str) -> str:
    """A part's text on its one line (a narration with a line break in it split the clip text's format; also the
    breaks only Unicode has, U+2028 and the like)."""
    return text if text.isascii() and "\n" not in text and "\r" not in text else " ".join(text.splitlines())


def clip_parts(start: float, stop: float, components: dict[str, dict], *, max_events: int = 24) -> dict[str, str]:
    """The parts of one record's clip text (see the module docstring)."""
    parts = {"clip": f"{start:.2f}-{stop:.2f} s ({stop - start:.1f} s long)"}
    if components.get("narration"):
        parts["narration"] = component_line(components["narration"])
    events = []
    for name in COMPONENTS:
        c = components.get(name)
        if not c or c["status"] != "ok":
            continue
        for ev in c["data"].get("timeline", []):
            events.append((float(ev["start"]), float(ev["stop"]), COMPONENTS.index(name), ev["text"]))
    events.sort()
    if events:
        parts["timeline"] = timeline_text([(a, b, t) for a, b, _, t in events[:max_events]],
                                          max(0, len(events) - max_events))
    for name in COMPONENTS:
        if name != "narration" and components.get(name):
            parts[name] = component_line(components[name])
    return parts


def render_clip(start: float, stop: float, components: dict[str, dict], *, max_events: int = 24) -> str:
    """The clip text of one record (see the module docstring)."""
    return render_parts(clip_parts(start, stop, components, max_events=max_events))


def parse_clip_text(text: str) -> dict[str, str]:
    """The parts of a rendered clip text (``render_parts(parse_clip_text(t)) == t``); ``ValueError`` on a line
    that is not ``Clip <span>.`` first or ``Prefix: text.``, or on a repeated prefix."""
    parts: dict[str, str] = {}
    for i, line in enumerate(text.split("\n")):
        m = _CLIP.match(line) if i == 0 else _LINE.match(line)
        if not m:
            raise ValueError(f"line {i + 1} is not a clip-text line: {line!r}")
        if i == 0:
            parts["clip"] = m.group(1)
            continue
        word, key = m.group(1), m.group(1).lower()
        if key == "clip" or key in parts or _prefix(key) != word:
            raise ValueError(f"line {i + 1}: repeated or non-canonical prefix {word!r}")
        parts[key] = m.group(2)
    return parts


def parse_timeline(text: str) -> tuple[list[tuple[float, float, str]], int]:
    """The events ``(start, stop, text)`` of a ``Timeline`` part, and how many were left out."""
    more = 0
    m = _MORE.search(text)
    if m:
        more, text = int(m.group(1)), text[:m.start()]
    marks = list(_EVENT.finditer(text))
    if not marks or marks[0].start() != 0:
        raise ValueError(f"not a timeline: {text[:60]!r}")
    events = []
    for j, mk in enumerate(marks):
        end = marks[j + 1].start() if j + 1 < len(marks) else len(text)
        events.append((float(mk.group(1)), float(mk.group(2)), text[mk.end():end]))
    return events, more


def span_of(parts: dict[str, str]) -> tuple[float, float]:
    """(start, stop) seconds of a parsed clip text's span."""
    m = re.match(r"^(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?) s \(", parts.get("clip", ""))
    if not m:
        raise ValueError(f"not a clip span: {parts.get('clip')!r}")
    return float(m.group(1)), float(m.group(2))
