"""Narration component: the segment's narration, verb, noun and all nouns from EPIC's annotations.

On the test split the annotations hold only timestamps, so the component is ``unavailable`` there.
"""

from __future__ import annotations

from leap_cli.extract.base import Component, SegmentContext, result, unavailable


class NarrationComponent(Component):
    name = "narration"

    def describe(self, ctx: SegmentContext) -> dict:
        s = ctx.segment
        data = s.annotation()
        if data is None:
            return unavailable("annotations", "no narration for this split (test timestamps only)")
        text = f'"{s.narration}" (verb: {s.verb}, noun: {s.noun}'
        others = [n for n in s.all_nouns if n != s.noun]
        if others:
            text += f"; also {', '.join(others)}"
        text += ")"
        return result("ok", "annotations", data, text)

