"""The clip text (docs/extract.md, "Clip text"): what the LLM reads of a descriptor record, its parser, and the
shared component records behind it (``extract/base.py``, ``extract/narration.py``). From a mutation run: each
test was seen failing on a mutant of the code it names."""

from types import SimpleNamespace

import numpy as np
import pytest

from leap_cli.epic.annotations import Segment
from leap_cli.errors import LeapError
from leap_cli.extract.base import COMPONENTS, Component, SegmentContext, error, result, scrub_paths, unavailable
from leap_cli.extract.describe import (clip_parts, component_line, parse_clip_text, parse_timeline, render_clip,
                                       render_parts, span_of)
from leap_cli.extract.narration import NarrationComponent


def _ok(text, *events):
    return result("ok", "x", {"timeline": [{"start": a, "stop": b, "text": t} for a, b, t in events]}, text)


def _timeline(text):
    (line,) = [ln for ln in text.splitlines() if ln.startswith("Timeline: ")]
    return line


# ---- describe.py: the rendering ----

def test_events_ordered_by_start_then_stop_then_component_order():
    comps = {"audio": _ok("a", (0.5, 1.5, "sound: rhythmic chopping"), (0.0, 2.0, "sound: clatter")),
             "hands": _ok("h", (0.5, 1.5, "right hand touches knife"), (0.0, 1.0, "left hand touches board"))}
    # same start: the shorter first; same span: audio before hands (component order), not by text
    assert _timeline(render_clip(0.0, 2.0, comps)) == (
        "Timeline: [0.0-1.0 s] left hand touches board; [0.0-2.0 s] sound: clatter; "
        "[0.5-1.5 s] sound: rhythmic chopping; [0.5-1.5 s] right hand touches knife.")


def test_timeline_keeps_every_event_of_a_component():
    comps = {"objects": _ok("o", (0.0, 1.0, "knife visible (right)"), (0.2, 1.0, "board visible (centre)"))}
    assert _timeline(render_clip(0.0, 1.0, comps)) == \
        "Timeline: [0.0-1.0 s] knife visible (right); [0.2-1.0 s] board visible (centre)."


def test_timeline_cap_is_24_events_then_n_more():
    ev = [(i * 0.1, 3.0, f"sound: e{i}") for i in range(26)]
    for n, more in ((24, None), (25, 1), (26, 2)):
        line = _timeline(render_clip(0.0, 3.0, {"audio": _ok("a", *ev[:n])}))
        events, left = parse_timeline(line[len("Timeline: "):-1])
        assert [t for _, _, t in events] == [f"sound: e{i}" for i in range(min(n, 24))]
        assert left == (more or 0)
        assert line.endswith(f"; ... ({more} more).") if more else line.endswith("sound: e23.")
    # an explicit cap: exactly max_events shown
    line = _timeline(render_clip(0.0, 3.0, {"audio": _ok("a", *ev[:3])}, max_events=2))
    assert line == "Timeline: [0.0-3.0 s] sound: e0; [0.1-3.0 s] sound: e1; ... (1 more)."


def test_no_events_no_timeline_line_and_missing_components_have_no_line():
    text = render_clip(1.0, 2.5, {"audio": _ok("no audio in the segment")})
    assert text.splitlines() == ["Clip 1.00-2.50 s (1.5 s long).", "Audio: no audio in the segment."]


def test_timeline_only_from_ok_components():
    """docs: "every data.timeline event of the ok components" (a failed component says nothing timed)."""
    bad = result("error", "x", {"error": "boom", "timeline": [{"start": 0.1, "stop": 0.2, "text": "sound: clatter"}]})
    gone = result("unavailable", "x", {"reason": "no video",
                                       "timeline": [{"start": 0.1, "stop": 0.2, "text": "turns head left"}]})
    text = render_clip(0.0, 1.0, {"audio": bad, "camera": gone, "hands": _ok("h", (0.3, 0.4, "left hand touches cup"))})
    assert text.splitlines() == ["Clip 0.00-1.00 s (1.0 s long).", "Timeline: [0.3-0.4 s] left hand touches cup.",
                                 "Audio: error (boom).", "Camera: unavailable (no video).", "Hands: h."]


def test_span_rounding_and_component_lines_in_components_order():
    comps = {"hands": _ok("left hand free"), "objects": _ok("knife (right)"), "camera": _ok("holds still"),
             "audio": _ok("silence"), "narration": _ok('"wash cup" (verb: wash, noun: cup)')}
    parts = clip_parts(12.4, 15.1, comps)
    assert list(parts) == ["clip", "narration", "audio", "camera", "objects", "hands"]
    assert parts["clip"] == "12.40-15.10 s (2.7 s long)"
    assert clip_parts(0.125, 0.5, {})["clip"] == "0.12-0.50 s (0.4 s long)"  # 2 and 1 decimals


def test_a_failed_narration_says_so_and_a_component_without_reason_says_its_status():
    seg = Segment("x", "P01", "P01_01", 0.0, 1.0, 1, 60)  # the test split: timestamps only
    narr = NarrationComponent().describe(SimpleNamespace(segment=seg))
    text = render_clip(0.0, 1.0, {"narration": narr, "camera": result("unavailable", "none")})
    assert text.splitlines() == ["Clip 0.00-1.00 s (1.0 s long).",
                                 "Narration: unavailable (no narration for this split (test timestamps only)).",
                                 "Camera: unavailable."]
    assert component_line(result("error", "x", {})) == "error"


def test_line_breaks_of_any_kind_stay_on_one_line():
    for brk in ("\n", "\r\n", "\r"):
        text = render_parts({"clip": "1.00-2.00 s (1.0 s long)", "narration": f'"put{brk}plate down"'})
        assert text == 'Clip 1.00-2.00 s (1.0 s long).\nNarration: "put plate down".', repr(brk)
        assert "\r" not in text


# ---- describe.py: the parser ----

def test_parse_refuses_a_prefix_that_is_not_canonical():
    for line in ("AUDIO: loud.", "AUdio: loud.", "Speech_text: x."):
        with pytest.raises(ValueError):
            parse_clip_text("Clip 1.00-2.00 s (1.0 s long).\n" + line)
    with pytest.raises(ValueError):
        parse_clip_text("Clip 1.00-2.00 s (1.0 s long).\nAudio: loud. ")
    assert parse_clip_text("Clip 1.00-2.00 s (1.0 s long).\nSpeech: hi.") == {"clip": "1.00-2.00 s (1.0 s long)",
                                                                             "speech": "hi"}


def test_parse_timeline_events_more_and_what_is_not_a_timeline():
    events, more = parse_timeline("[0.0-1.5 s] sound: clatter; [-0.0-2.0 s] left hand touches cup; ... (3 more)")
    assert events == [(0.0, 1.5, "sound: clatter"), (-0.0, 2.0, "left hand touches cup")] and more == 3
    assert parse_timeline("[1.0-2.0 s] knife visible (right)") == ([(1.0, 2.0, "knife visible (right)")], 0)
    for bad in ("", "sound: clatter", "junk [0.0-1.0 s] sound: clatter", "junk; [0.0-1.0 s] sound: clatter"):
        with pytest.raises(ValueError):
            parse_timeline(bad)


def test_span_of_and_round_trip_of_a_rendering():
    comps = {"narration": _ok('"cut carrot" (verb: cut, noun: carrot)'),
             "audio": _ok("rhythmic chopping 0.0-2.7 s", (0.0, 2.7, "sound: rhythmic chopping")),
             "hands": _ok("right hand: knife 0.3-2.5 s", (0.3, 2.5, "right hand touches knife"))}
    text = render_clip(12.4, 15.1, comps, max_events=1)
    parts = parse_clip_text(text)
    assert span_of(parts) == (12.4, 15.1) and render_parts(parts) == text
    assert parse_timeline(parts["timeline"]) == ([(0.0, 2.7, "sound: rhythmic chopping")], 1)


# ---- base.py: records ----

def test_result_unavailable_and_error_records():
    assert COMPONENTS == ("narration", "audio", "camera", "objects", "hands")
    assert result("ok", "s") == {"status": "ok", "source": "s", "data": {}, "text": ""}
    with pytest.raises(AssertionError):
        result("failed", "s")
    u = unavailable("video", "no video file", cause="video", detail="/data/P01_01.MP4: missing (download it)")
    assert u == {"status": "unavailable", "source": "video", "text": "unavailable (no video file)",
                 "data": {"reason": "no video file", "cause": "video",
                          "detail": "/data/P01_01.MP4: missing (download it)"}}
    assert unavailable("v", "why")["data"] == {"reason": "why"}
    e = error("objects", LeapError("cannot parse /home/me/data/P01_01.jsonl", path="/home/me/data/P01_01.jsonl",
                                   fix="check it"))
    assert e["text"] == "error (cannot parse P01_01.jsonl)" and e["data"]["error"] == "cannot parse P01_01.jsonl"
    assert e["data"]["detail"] == ("/home/me/data/P01_01.jsonl: cannot parse /home/me/data/P01_01.jsonl "
                                   "(check it)")
    e = error("hands", ValueError("bad value in /home/me/secret/file.pkl"))
    assert e["text"] == "error (internal error (ValueError))" and e["data"]["error"] == "internal error (ValueError)"
    assert e["data"]["detail"] == "ValueError: bad value in /home/me/secret/file.pkl"


def test_scrub_paths_keeps_only_file_names():
    assert scrub_paths("cannot open /home/me/EPIC/P01_01.MP4 now") == "cannot open P01_01.MP4 now"
    assert scrub_paths("in 'C:\\Users\\me\\my data\\P01 01.MP4'") == "in 'P01 01.MP4'"
    assert scrub_paths('in "/mnt/my disk/P01_01.MP4"') == 'in "P01_01.MP4"'
    assert scrub_paths("cannot open C:\\data\\P01_01.MP4") == "cannot open P01_01.MP4"
    assert scrub_paths("no path here: 3/4 done") == "no path here: 3/4 done"


# ---- base.py: SegmentContext ----

def _ctx(start=1.0, stop=2.0, fps=30.0, **kw):
    return SegmentContext(layout=None, segment=Segment("x", "P01", "P01_01", start, stop, 1, 2), fps=fps, **kw)


def test_frame_times_are_relative_clamped_and_rounded():
    ctx = _ctx(start=1.0, fps=30.0)
    assert ctx.frame_time(31) == 0.0 and ctx.frame_time(46) == 0.5 and ctx.frame_time(30) == 0.0
    assert ctx.frame_time(32) == 0.033  # 1/30 s to 3 decimals
    # EPIC's numbering: 60 per second for a 29.97/30/59.94 fps video, 50 for 50 fps; frame 1 at 0
    assert ctx.epic_frame_time(61) == 0.0 and ctx.epic_frame_time(91) == 0.5 and ctx.epic_frame_time(2) == 0.0
    assert ctx.epic_frame_time(62) == 0.017
    assert _ctx(start=1.0, fps=50.0).epic_frame_time(76) == 0.5


def test_side_at_most_and_read_at_most_never_upscale():
    ctx = _ctx(frame_size=lambda: (640, 360))
    assert ctx.side_at_most(256) == 256 and ctx.side_at_most(480) is None
    assert ctx.side_at_most(None) is None and ctx.side_at_most(0) is None
    assert _ctx().side_at_most(256) is None  # size unknown
    asked = []

    def read(numbers, side):
        asked.append(side)
        return np.zeros((len(numbers), 360, 640, 3), np.uint8)

    assert ctx.__class__(**{**ctx.__dict__, "read_frames": read}).read_at_most([1], 256).shape == (1, 360, 640, 3)
    assert asked == [256]
    bare = _ctx(read_frames=read)  # no frame_size: read as they are, shrunk here
    assert bare.read_at_most([1, 2], 180).shape == (2, 180, 320, 3)
    assert bare.read_at_most([1], 480).shape == (1, 360, 640, 3)
    assert bare.read_at_most([1], None).shape == (1, 360, 640, 3) and asked[1:] == [None, None, None]


def test_images_at_most_colour_and_reader():
    bgr = np.zeros((4, 6, 3), np.uint8)
    bgr[..., 0] = 255  # blue in BGR
    ctx = _ctx(frame_size=lambda: (6, 4), read_images=lambda numbers, side: [bgr for _ in numbers])
    (rgb,) = ctx.images_at_most([1], 256, "rgb")
    assert rgb[0, 0].tolist() == [0, 0, 255]
    (same,) = ctx.images_at_most([1], 256, "bgr")
    assert same is bgr  # as the decoder gave it, not copied
    # a reader of RGB arrays where there is no read_images
    ctx2 = _ctx(read_frames=lambda numbers, side: np.stack([bgr[..., ::-1] for _ in numbers]))
    (im,) = ctx2.images_at_most([1], None, "bgr")
    assert im[0, 0].tolist() == [255, 0, 0]
    # no frame_size but a short side: through read_at_most (which shrinks), not read_images
    ctx3 = _ctx(read_frames=lambda numbers, side: np.zeros((len(numbers), 40, 60, 3), np.uint8),
                read_images=lambda numbers, side: pytest.fail("read_images without a known size"))
    assert ctx3.images_at_most([1], 20, "rgb")[0].shape == (20, 30, 3)


def test_read_epic_frames_maps_epic_numbers_to_the_source():
    asked = []
    ctx = _ctx(fps=30.0, read_frames=lambda numbers, side: asked.append(list(numbers)))
    ctx.read_epic_frames([1, 61, 121], 128)
    assert asked == [[1, 31, 61]]  # EPIC's 60 per second onto a 30 fps MP4


def test_segment_frames_and_frames_wanted():
    ctx = _ctx(start=1.0, stop=2.0, fps=30.0)
    assert len(ctx.segment_frames(0)) == 1 and len(ctx.segment_frames(5)) == 5
    frames = ctx.segment_frames(3)
    assert frames[0] == 31 and frames == sorted(frames)

    class C(Component):
        needs_frames, frames, short_side = True, 4, 256

    assert C().frames_wanted(ctx) == [(ctx.segment_frames(4), 256)]
    C.short_side = 0
    assert C().frames_wanted(ctx) == [(ctx.segment_frames(4), None)]
    C.needs_frames = False
    assert C().frames_wanted(ctx) == []


# ---- narration.py ----

def _narr(**kw):
    seg = Segment("x", "P01", "P01_01", 0.0, 1.0, 1, 60, narration="cut carrot on board", verb="cut", verb_class=7,
                  noun="carrot", noun_class=4, **kw)
    return NarrationComponent().describe(SimpleNamespace(segment=seg))


def test_narration_text_names_verb_noun_and_the_other_nouns():
    assert _narr(all_nouns=("carrot",))["text"] == '"cut carrot on board" (verb: cut, noun: carrot)'
    assert _narr(all_nouns=("carrot", "board", "knife"))["text"] == \
        '"cut carrot on board" (verb: cut, noun: carrot; also board, knife)'
    assert _narr(all_nouns=("board", "carrot"))["text"] == '"cut carrot on board" (verb: cut, noun: carrot; also board)'
    rec = _narr(all_nouns=("carrot",))
    assert rec["status"] == "ok" and rec["source"] == "annotations" and rec["data"]["verb_class"] == 7


def test_scrub_paths_leaves_what_is_not_an_absolute_path_readable():
    """Only absolute paths are cut: a word list with slashes or a relative path was glued together
    ("duration/fps/resolution" -> "durationresolution", "P01/videos/P01_01.MP4" -> "P01P01_01.MP4")."""
    assert scrub_paths("no positive duration/fps/resolution for 'P01_01'") == \
        "no positive duration/fps/resolution for 'P01_01'"
    assert scrub_paths("cannot open P01/videos/P01_01.MP4") in ("cannot open P01/videos/P01_01.MP4",
                                                                 "cannot open P01_01.MP4")
