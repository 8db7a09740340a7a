"""Session 68's mutation run over the clip text (``extract/describe.py``) and the detection files
(``extract/detections.py``), and a check of what docs/extract.md and docs/options.md say of them. Each test was
seen failing on a mutant of the code it names (or on the claim it checks)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from leap_cli.epic.hand_objects import BBox, FrameDetections, write_hand_objects
from leap_cli.errors import LeapError
from leap_cli.extract.base import error, result, unavailable
from leap_cli.extract.describe import (clip_parts, component_line, parse_clip_text, parse_timeline, render_clip,
                                       render_parts, span_of, timeline_text)
from leap_cli.extract.detections import (ByFrame, contains, in_segment, position_word, read_object_detections,
                                         video_hand_objects, video_object_detections)

DOCS = Path(__file__).resolve().parents[1] / "docs"
SPAN = "1.00-2.00 s (1.0 s long)"


def _ok(text, *events):
    return result("ok", "x", {"timeline": [{"start": a, "stop": b, "text": t} for a, b, t in events]}, text)


# ---- describe.py: rendering ----

@pytest.mark.parametrize("brk", ["\u2028", "\u2029", "\x85"])
def test_a_unicode_line_break_in_a_part_becomes_a_space(brk):
    """The breaks only Unicode has (U+2028 and the like) are line breaks to ``str.splitlines`` and to editors:
    a part keeps its one line. Mutant: only ``\\n`` and ``\\r`` looked for."""
    text = render_parts({"clip": SPAN, "narration": f'"put{brk}plate down"'})
    assert text == f'Clip {SPAN}.\nNarration: "put plate down".'


def test_clip_parts_caps_the_timeline_at_24_events_by_default():
    """``clip_parts`` (not only ``render_clip``) shows 24 events, then how many more."""
    events = [(i * 0.1, 3.0, f"sound: e{i}") for i in range(25)]
    timeline = clip_parts(0.0, 3.0, {"audio": _ok("a", *events)})["timeline"]
    assert timeline.endswith("[2.3-3.0 s] sound: e23; ... (1 more)")


def test_an_ok_component_without_its_text_cannot_be_rendered():
    """extract keeps an old record's components only where the clip text can be rendered from them
    (``runner``: ``render_clip`` raising KeyError means "make it again"); an ok component lacking its ``text``
    must not render as an empty ``Audio: .`` line."""
    with pytest.raises(KeyError):
        component_line({"status": "ok", "source": "x", "data": {}})
    with pytest.raises(KeyError):
        render_clip(0.0, 1.0, {"audio": {"status": "ok", "source": "x", "data": {}}})


# ---- describe.py: the parsers ----

def test_a_parse_error_names_the_line_counted_from_one():
    with pytest.raises(ValueError, match=r"^line 1 is not"):
        parse_clip_text("Clip 1.00-2.00 s (1.0 s long)")  # no final "."
    with pytest.raises(ValueError, match=r"^line 3 is not"):
        parse_clip_text(f"Clip {SPAN}.\nAudio: loud.\nnot a part")


def test_parse_timeline_gives_back_each_event_text_as_written():
    """``parse_timeline`` inverts ``timeline_text``, spaces at the ends of an event's text included."""
    events = [(0.0, 1.0, " two  spaces "), (1.0, 2.0, "b ")]
    text = timeline_text(events, 3)
    assert parse_timeline(text) == (events, 3)
    assert timeline_text(*parse_timeline(text)) == text


def test_n_more_is_read_only_at_the_end_of_a_timeline():
    """An event's text that happens to hold ``; ... (2 more)`` (an object's label comes from a user's file)
    is text, not the count of events left out."""
    events = [(0.0, 1.0, "a; ... (2 more) b"), (1.0, 2.0, "c")]
    assert parse_timeline(timeline_text(events)) == (events, 0)
    assert parse_timeline(timeline_text(events, 5)) == (events, 5)


def test_span_of_wants_the_length_after_the_span():
    assert span_of({"clip": SPAN}) == (1.0, 2.0)
    for bad in ("1.00-2.00 s", "1.00-2.00", "a-b s (1.0 s long)"):
        with pytest.raises(ValueError):
            span_of({"clip": bad})
    with pytest.raises(ValueError):
        span_of({})


# ---- detections.py: labelled object detections ----

def _detections(tmp_path, *lines: str) -> Path:
    p = tmp_path / "P01_01.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def _frame(n=1, **box) -> str:
    bbox = {"left": 0.1, "top": 0.2, "right": 0.3, "bottom": 0.4, **box}
    return json.dumps({"video_id": "P01_01", "frame_number": n, "objects": [{"label": "cup", "bbox": bbox,
                                                                            "score": 0.9}]})


def test_a_line_of_only_spaces_or_tabs_is_skipped(tmp_path):
    frames = read_object_detections(_detections(tmp_path, _frame(1), "   ", "\t", _frame(2)))
    assert sorted(frames) == [1, 2]


@pytest.mark.parametrize("line", ['[1, 2]', '"a frame"', '3', '{"frame_number": 1, "objects": {}}',
                                  '{"frame_number": 1, "objects": ""}', '{"frame_number": 1}'])
def test_a_line_that_is_not_a_frame_with_an_objects_list_is_a_leap_error(tmp_path, line):
    """Not a traceback (a JSON list has no ``.get``), and not a frame without boxes (an empty ``{}`` or ``""``
    where the list of objects belongs)."""
    with pytest.raises(LeapError, match=r"line 2 is not a frame of labelled detections"):
        read_object_detections(_detections(tmp_path, _frame(1), line))


def test_frame_numbers_are_integers(tmp_path):
    """A frame number written as a string is looked up as the number (segments bisect integer frame numbers)."""
    line = _frame(1).replace('"frame_number": 1', '"frame_number": "12"')
    frames = read_object_detections(_detections(tmp_path, line))
    assert list(frames) == [12] and type(next(iter(frames))) is int
    assert frames.keys_sorted == [12]


def test_box_coordinates_a_tenth_outside_the_frame_are_cut_to_it_and_further_out_refused(tmp_path):
    """Fractions of the frame: a box up to 0.1 past an edge (a detector's box cut by the frame) is kept, cut to
    [0, 1]; further out (pixels, or a box well off the frame) the line is refused."""
    frames = read_object_detections(_detections(tmp_path, _frame(left=-0.1, top=-0.1, right=1.1, bottom=1.1)))
    box = frames[1][0].bbox
    assert (box.left, box.top, box.right, box.bottom) == (0.0, 0.0, 1.0, 1.0)
    for edge, v in (("left", -0.2), ("top", -0.11), ("right", 1.2), ("bottom", 1.11)):
        with pytest.raises(LeapError, match=r"outside \[0, 1\]"):
            read_object_detections(_detections(tmp_path, _frame(**{edge: v})))


@pytest.mark.parametrize("line", [
    '{"objects": []}',  # no frame number
    '{"frame_number": 1, "objects": [{"label": "cup", "score": 0.9}]}',  # no box
    '{"frame_number": 1, "objects": [{"bbox": {"left": 0.1, "top": 0.2, "right": 0.3, "bottom": 0.4}}]}',  # no label
    '{"frame_number": 1, "objects": [{"label": "cup", "bbox": {"left": 0.1, "top": 0.2, "right": 0.3}}]}',
    '{"frame_number": 1, "objects": [1]}',  # an object that is not an object
    '{"frame_number": 1, "objects": [{"label": "cup", "bbox": [0.1, 0.2, 0.3, 0.4]}]}',
    '{"frame_number": null, "objects": []}',
    '{"frame_number": "first", "objects": []}',
    '{"frame_number": 1, "objects": [{"label": "cup", "bbox": {"left": "a", "top": 0.2, "right": 0.3, '
    '"bottom": 0.4}}]}',
    '{"frame_number": 1, "objects": [{"label": "cup", "bbox": {"left": 0.1, "top": 0.2, "right": 0.3, '
    '"bottom": 0.4}, "score": "high"}]}',
])
def test_a_frame_missing_a_field_or_with_one_of_the_wrong_type_is_a_leap_error(tmp_path, line):
    """Every malformed frame is one LeapError naming the line and the expected format, never a traceback
    (KeyError, TypeError, ValueError of the parse alike)."""
    with pytest.raises(LeapError, match=r"line 1 is not a frame of labelled detections") as e:
        read_object_detections(_detections(tmp_path, line))
    assert e.value.record == "line 1" and "expected one JSON object per line" in e.value.one_line()


def test_a_label_that_is_a_number_is_read_as_text(tmp_path):
    """A detector's class id as a label (``"label": 7``) names the object "7": labels are text in the clip
    text and the records."""
    frames = read_object_detections(_detections(tmp_path, _frame(1).replace('"label": "cup"', '"label": 7')))
    assert frames[1][0].label == "7"


# ---- detections.py: frames of a segment, thirds, boxes ----

def test_in_segment_takes_both_ends_and_gives_sorted_frame_numbers():
    """Both ways (bisection of ``keys_sorted``, a scan of a plain dict) give the numbers in order."""
    boxes = {10: [], 1: [], 5: [], 7: [], 11: []}
    for frames in (ByFrame(boxes), dict(boxes)):  # by bisection, and by a scan
        assert in_segment(frames, 5, 10) == [5, 7, 10]
        assert in_segment(frames, 6, 6) == [] and in_segment(frames, 11, 100) == [11]


def test_position_is_the_third_of_the_frame_its_edges_in_the_centre():
    """docs/extract.md (objects): "where (left/centre/right ...)": thirds of the frame width."""
    assert [position_word(x) for x in (0.0, 0.31, 1 / 3, 0.5, 2 / 3, 0.69, 1.0)] == \
        ["left", "left", "centre", "centre", "centre", "right", "right"]


def test_a_box_contains_the_points_of_its_edges_and_no_point_outside():
    b = BBox(0.1, 0.2, 0.5, 0.9)  # left, top, right, bottom
    assert all(contains(b, x, y) for x, y in ((0.1, 0.2), (0.5, 0.9), (0.1, 0.9), (0.5, 0.2), (0.3, 0.5)))
    assert not any(contains(b, x, y) for x, y in ((0.05, 0.5), (0.55, 0.5), (0.3, 0.1), (0.3, 0.95),
                                                  (0.8, 0.3)))  # (0.8, 0.3): x and y swapped would be inside


# ---- detections.py: files read once per video ----

class _Layout:
    def __init__(self, hand=None, labelled=None):
        self.hand, self.labelled, self.asked = hand, labelled, []

    def hand_objects_path(self, video_id):
        self.asked.append(("hand", video_id))
        return self.hand

    def object_detections_path(self, video_id):
        self.asked.append(("labelled", video_id))
        return self.labelled


def test_each_detection_file_is_read_once_per_video_and_its_error_given_to_every_segment(tmp_path):
    good = _detections(tmp_path, _frame(4))
    bad = tmp_path / "P01_02.jsonl"
    bad.write_text("not json\n")
    layout, cache = _Layout(labelled=good), {}
    first = video_object_detections(cache, layout, "P01_01")
    assert video_object_detections(cache, layout, "P01_01") is first and sorted(first) == [4]
    layout.labelled = bad
    errors = []
    for _ in range(2):
        with pytest.raises(LeapError) as e:
            video_object_detections(cache, layout, "P01_02")
        errors.append(e.value)
    assert errors[0] is errors[1]  # read once: the same error, not the file read again per segment
    assert layout.asked == [("labelled", "P01_01"), ("labelled", "P01_02")]
    assert cache[("object_detections_path", "P01_02")] == bad  # objects name their source by it


@pytest.mark.parametrize("suffix", [".jsonl", ".pkl"])
def test_hand_objects_are_opened_once_per_video_and_a_pkl_stays_lazy(tmp_path, suffix):
    path = tmp_path / f"P01_01{suffix}"
    write_hand_objects(path, [FrameDetections("P01_01", n, [], []) for n in (9, 3)])
    layout, cache = _Layout(hand=path), {}
    frames = video_hand_objects(cache, layout, "P01_01")
    assert video_hand_objects(cache, layout, "P01_01") is frames and layout.asked == [("hand", "P01_01")]
    assert frames.keys_sorted == [3, 9] and cache[("hand_objects_path", "P01_01")] == path
    if suffix == ".pkl":  # not copied into a dict: that would decode every frame of the hour when opened
        assert type(frames).__name__ == "HandObjectFrames"
    layout.hand = tmp_path / "P01_02.jsonl"
    layout.hand.write_text("{}\n")
    errors = []
    for _ in range(2):
        with pytest.raises(LeapError) as e:
            video_hand_objects(cache, layout, "P01_02")
        errors.append(e.value)
    assert errors[0] is errors[1] and layout.asked.count(("hand", "P01_02")) == 1
    assert video_hand_objects(cache, _Layout(), "P01_03") is None


# ---- what the docs say ----

def _doc_example() -> str:
    doc = (DOCS / "extract.md").read_text(encoding="utf-8")
    section = doc[doc.index("## Clip text"):]
    return re.search(r"```\n(Clip .*?)\n```", section, re.S).group(1)


def test_docs_clip_text_example_is_what_render_clip_writes_and_parses_back():
    """docs/extract.md "Clip text": the example, rebuilt from its components (given in another order), is
    rendered to the letter: component lines in the order narration, audio, camera, objects, hands; two events
    of the same span in component order (audio's "sound" before objects' "knife", not by text); an unavailable
    component as ``unavailable (REASON)``. And ``render_parts(parse_clip_text(t)) == t``."""
    example = _doc_example()
    reason = "the window ends 0.87 s after the decodable end of the video (14.25 s, 854 frames)"
    comps = {
        "hands": _ok("left hand free; right hand: knife 0.3-2.5 s", (0.3, 2.5, "right hand touches knife")),
        "objects": _ok("knife (right, near right hand; 0.0-2.7 s, 100% of frames, conf 0.90)",
                       (0.0, 2.7, "knife visible (right, near the right hand)")),
        "camera": unavailable("video", reason),
        "audio": _ok("rhythmic chopping 0.0-2.7 s (peak -20 dBFS, 8 onsets)", (0.0, 2.7, "sound: rhythmic chopping")),
        "narration": _ok('"cut carrot" (verb: cut, noun: carrot)'),
    }
    assert render_clip(12.4, 15.1, comps) == example
    parts = parse_clip_text(example)
    assert list(parts) == ["clip", "narration", "timeline", "audio", "camera", "objects", "hands"]
    assert render_parts(parts) == example and span_of(parts) == (12.4, 15.1)
    assert parse_timeline(parts["timeline"]) == ([(0.0, 2.7, "sound: rhythmic chopping"),
                                                  (0.0, 2.7, "knife visible (right, near the right hand)"),
                                                  (0.3, 2.5, "right hand touches knife")], 0)


def test_docs_a_component_line_comes_from_data_reason_or_error_not_its_text():
    """docs/extract.md: "``Audio:`` ... the component's ``text`` when ``ok``; else ``unavailable (REASON)`` or
    ``error (MESSAGE)`` from ``data.reason`` / ``data.error``"; a component not computed has no line."""
    comps = {"audio": result("unavailable", "x", {"reason": "no audio track"}, "an old text"),
             "objects": result("error", "x", {"error": "bad file"}, "another old text")}
    assert render_clip(0.0, 1.0, comps).split("\n") == [
        "Clip 0.00-1.00 s (1.0 s long).", "Audio: unavailable (no audio track).", "Objects: error (bad file)."]


def test_docs_a_broken_detection_file_puts_no_path_in_the_clip_text(tmp_path):
    """docs/extract.md "Clip texts carry no paths": a detections file in the wrong format fails the objects
    component; the clip text names the line and the format, ``data.detail`` the file."""
    bad = _detections(tmp_path, _frame(1), '{"frame_number": 2, "boxes": []}')
    with pytest.raises(LeapError) as e:
        read_object_detections(bad)
    rec = error("object-detections:P01_01.jsonl", e.value)
    text = render_clip(0.0, 1.0, {"objects": rec})
    assert text.startswith('Clip 0.00-1.00 s (1.0 s long).\nObjects: error (line 2 is not a frame of labelled ')
    assert str(tmp_path) not in text and str(bad) in rec["data"]["detail"]


def test_docs_a_detection_file_may_start_with_a_bom(tmp_path):
    """docs/options.md: "the detection files it reads may start with a UTF-8 BOM" (and Windows line ends)."""
    p = tmp_path / "P01_01.jsonl"
    p.write_bytes(("\ufeff" + _frame(1) + "\r\n" + _frame(2) + "\r\n").encode("utf-8"))
    frames = read_object_detections(p)
    assert sorted(frames) == [1, 2] and frames[2][0].label == "cup"


@pytest.mark.parametrize("label", ["null", '""', '"  "'])
def test_a_null_label_is_not_an_object_named_none(tmp_path, label):
    """Was (a strict xfail): a detector that writes ``"label": null`` for a box it could not name: the reader made
    it an object called "None" ("None (centre; 0.0-1.0 s, ...)" in the prompt; an empty label an object with no
    name), where every other malformed field of a frame is refused with the line and the format. Refused the same
    way now (records made before from such a file are kept as they are: extract does not make them again)."""
    line = _frame(1).replace('"label": "cup"', f'"label": {label}')
    with pytest.raises(LeapError, match="no label") as e:
        read_object_detections(_detections(tmp_path, "", line))
    assert e.value.record == "line 2"


def test_a_detection_file_not_in_utf8_or_not_a_file_is_one_leap_error(tmp_path):
    """A file saved as UTF-16 or Latin-1, or a folder where the file belongs: a LeapError naming the file and
    the format expected, not a traceback."""
    p = tmp_path / "P01_01.jsonl"
    for raw in (_frame(1).encode("utf-16"), _frame(1).replace("cup", "caf\xe9").encode("latin-1")):
        p.write_bytes(raw)
        with pytest.raises(LeapError, match=r"cannot read object detections \(UnicodeDecodeError\)") as e:
            read_object_detections(p)
        assert e.value.path == str(p) and "expected one JSON object per line" in e.value.fix
    with pytest.raises(LeapError, match=r"cannot read object detections \(\w+Error\)"):
        read_object_detections(tmp_path)
