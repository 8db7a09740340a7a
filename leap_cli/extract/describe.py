"""Render a descriptor record's components as the clip text for the prompt.

The text starts with the clip's span and narration, then the timed events of all components ordered by start
time (``[0.4-1.2 s] sound: rhythmic chopping``), then each component's summary, and names every component that
is unavailable or failed, so the LLM knows what it was not told.
"""

from __future__ import annotations

from leap_cli.extract.base import COMPONENTS

SUMMARY_NAMES = {"narration": "Narration", "audio": "Audio", "camera": "Camera", "objects": "Objects",
                 "hands": "Hands"}


def render_clip(start: float, stop: float, components: dict[str, dict], *, max_events: int = 24) -> str:
    """The clip text of one record (see the module docstring)."""
    lines = [f"Clip {start:.2f}-{stop:.2f} s ({stop - start:.1f} s long)."]
    nar = components.get("narration")
    if nar and nar["status"] == "ok":
        lines.append(f"Narration: {nar['text']}.")
    events = []
    for name in COMPONENTS:
        c = components.get(name)
        if not c or c["status"] != "ok":
            continue
        for ev in c["data"].get("timeline", []):
            events.append((float(ev["start"]), float(ev["stop"]), COMPONENTS.index(name), ev["text"]))
    events.sort()
    if events:
        shown = events[:max_events]
        lines.append("Timeline: " + "; ".join(f"[{a:.1f}-{b:.1f} s] {t}" for a, b, _, t in shown)
                     + (f"; ... ({len(events) - max_events} more)" if len(events) > max_events else "") + ".")
    for name in COMPONENTS:
        c = components.get(name)
        if name == "narration" or not c or c["status"] != "ok":
            continue
        lines.append(f"{SUMMARY_NAMES[name]}: {c['text']}.")
    missing = []
    for n in COMPONENTS:
        c = components.get(n)
        if c and c["status"] != "ok":
            missing.append(f"{n} ({c['status']}: {c['data'].get('reason') or c['data'].get('error', '')})")
    if missing:
        lines.append("Unavailable: " + "; ".join(missing) + ".")
    return "\n".join(lines)
