"""Narration component: the segment's narration, verb, noun and all nouns from EPIC's annotations.

On the test split the annotations hold only timestamps, so the component is ``unavailable`` there.
"""

from __future__ import annotations

from leap_cli.extract.base import Component, SegmentContext, result, unavailable


class NarrationComponent(Component):
    name = "narration"

    def describe(self, ctx: SegmentContext) -> dict:
        s = ctx.segment
        data = narration_data(s)
        if data is None:
            return unavailable("annotations", "no narration for this split (test timestamps only)")
        text = f'"{s.narration}" (verb: {s.verb}, noun: {s.noun}'
        others = [n for n in s.all_nouns if n != s.noun]
        if others:
            text += f"; also {', '.join(others)}"
        text += ")"
        return result("ok", "annotations", data, text)


def narration_data(s) -> dict | None:
    """What the component's record holds of segment ``s``'s annotation (None: the test split has none). The
    runner compares it with a stored record's to find records made from other annotations."""
    if not s.narration and s.verb is None:
        return None
    return {"narration": s.narration, "verb": s.verb, "verb_class": s.verb_class, "noun": s.noun,
            "noun_class": s.noun_class, "all_nouns": list(s.all_nouns), "all_noun_classes": list(s.all_noun_classes)}
