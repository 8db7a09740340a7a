"""EPIC's hand-object detections as its own library writes them, and the hands descriptor built on them.

The bytes here are assembled by hand from EPIC's schema (epic-kitchens-100-hand-object-bboxes,
``src/public_lib/epic_kitchens/hoa/types.proto``), not by leap's writer, so a reader and writer that agree with
each other but not with EPIC's files are caught."""

from __future__ import annotations

import json
import pickle
import struct

import pytest

from leap_cli.epic.hand_objects import (BBox, FrameDetections, HandDetection, HandSide, HandState, ObjectDetection,
                                        open_hand_objects, read_hand_objects, write_hand_objects)
from leap_cli.extract.base import SegmentContext
from leap_cli.extract.hands import HandsComponent
from tests.test_extract_components import KNIFE, RIGHT, _hand_frames, _segment, _write

# --- EPIC's wire format, written independently of leap's codec ------------------------------------------------


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | 0x80 if v else b)
        if not v:
            return bytes(out)


def _f(num: int, v: float) -> bytes:  # float field; proto3 leaves out 0.0
    return bytes([num << 3 | 5]) + struct.pack("<f", v) if v else b""


def _e(num: int, v: int) -> bytes:  # int32 / enum field; proto3 leaves out 0
    return bytes([num << 3]) + _varint(v) if v else b""


def _m(num: int, payload: bytes) -> bytes:
    return bytes([num << 3 | 2]) + _varint(len(payload)) + payload


def _box(left, top, right, bottom) -> bytes:  # message BBox { top_left_x = 1; top = 2; right = 3; bottom = 4 }
    return _f(1, left) + _f(2, top) + _f(3, right) + _f(4, bottom)


def _hand(box, score, state, offset, side) -> bytes:  # bbox 1, score 2, state 3, object_offset 4, side 5
    return _m(1, _box(*box)) + _f(2, score) + _e(3, state) + _m(4, _f(1, offset[0]) + _f(2, offset[1])) + _e(5, side)


# EPIC's numbers: HandSide LEFT 0, RIGHT 1; HandState NO_CONTACT 0, SELF_CONTACT 1, ANOTHER_PERSON 2,
# PORTABLE_OBJECT 3, STATIONARY_OBJECT 4. Values exact in float32.
EPIC_MSG = (_m(1, b"P01_01") + _e(2, 1234)
            + _m(3, _hand((0.5, 0.25, 0.75, 0.625), 0.875, 3, (-0.125, 0.0625), 1))
            + _m(3, _hand((0.125, 0.5, 0.25, 0.75), 0.75, 4, (0.0, -0.25), 0))  # offset x 0.0: left out
            + _m(3, _hand((0.0, 0.5, 0.125, 1.0), 0.625, 1, (0.0, 0.0), 0))
            + _m(3, _hand((0.75, 0.5, 1.0, 1.0), 0.5, 2, (0.0, 0.0), 1))
            + _m(3, _hand((0.25, 0.5, 0.375, 0.75), 0.25, 0, (0.0, 0.0), 1))
            + _m(4, _m(1, _box(0.375, 0.125, 0.625, 0.5)) + _f(2, 0.5)))
EPIC_FRAME = FrameDetections("P01_01", 1234, [
    HandDetection(BBox(0.5, 0.25, 0.75, 0.625), 0.875, HandState.PORTABLE_OBJECT, (-0.125, 0.0625), HandSide.RIGHT),
    HandDetection(BBox(0.125, 0.5, 0.25, 0.75), 0.75, HandState.STATIONARY_OBJECT, (0.0, -0.25), HandSide.LEFT),
    HandDetection(BBox(0.0, 0.5, 0.125, 1.0), 0.625, HandState.SELF_CONTACT, (0.0, 0.0), HandSide.LEFT),
    HandDetection(BBox(0.75, 0.5, 1.0, 1.0), 0.5, HandState.ANOTHER_PERSON, (0.0, 0.0), HandSide.RIGHT),
    HandDetection(BBox(0.25, 0.5, 0.375, 0.75), 0.25, HandState.NO_CONTACT, (0.0, 0.0), HandSide.RIGHT)],
    [ObjectDetection(BBox(0.375, 0.125, 0.625, 0.5), 0.5)])


def _as_epic(frame: FrameDetections) -> list:
    """What a user reading the frame cares about, with enums by name (a swapped numbering shows)."""
    return [frame.video_id, frame.frame_number,
            [(h.side.name, h.state.name, h.score, vars(h.bbox), tuple(h.object_offset)) for h in frame.hands],
            [(o.score, vars(o.bbox)) for o in frame.objects]]


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])
def test_epics_pkl_reads_sides_states_boxes_and_offsets_as_epics_library_does(tmp_path, protocol):
    """A frame of EPIC's own ``.pkl`` (a pickled list of serialized Detections, any pickle protocol): a right hand
    read as left, PORTABLE_OBJECT as STATIONARY_OBJECT, an offset in the wrong axis or in pixels, or frame 1234
    (a two-byte varint) misnumbered would silently describe another hand, contact or frame."""
    p = tmp_path / "P01_01.pkl"
    p.write_bytes(pickle.dumps([EPIC_MSG, _m(1, b"P01_01") + _e(2, 1235)], protocol=protocol))
    frames = read_hand_objects(p)
    assert _as_epic(frames[0]) == _as_epic(EPIC_FRAME)
    assert frames[1] == FrameDetections("P01_01", 1235, [], [])
    by_number = open_hand_objects(p, "P01_01")
    assert sorted(by_number) == [1234, 1235] and _as_epic(by_number[1234]) == _as_epic(EPIC_FRAME)


def test_leaps_pkl_is_what_epics_library_writes(tmp_path):
    """``write_hand_objects`` makes files EPIC's ``load_detections`` reads back alike: the same bytes as
    EPIC's serializer (fields in order, defaults left out)."""
    p = tmp_path / "P01_01.pkl"
    write_hand_objects(p, [EPIC_FRAME])
    assert pickle.loads(p.read_bytes()) == [EPIC_MSG]


def test_jsonl_numbers_for_state_and_side_are_epics():
    """JSONL with EPIC's numbers: ``"side": 1`` is the right hand, ``"state": 4`` a stationary object."""
    d = EPIC_FRAME.to_dict()
    for h, ref in zip(d["hands"], EPIC_FRAME.hands):
        h["side"], h["state"] = {"LEFT": 0, "RIGHT": 1}[h["side"]], {
            "NO_CONTACT": 0, "SELF_CONTACT": 1, "ANOTHER_PERSON": 2, "PORTABLE_OBJECT": 3,
            "STATIONARY_OBJECT": 4}[h["state"]]
    assert _as_epic(FrameDetections.from_dict(json.loads(json.dumps(d)))) == _as_epic(EPIC_FRAME)


@pytest.mark.parametrize("suffix", [".pkl", ".jsonl"])
def test_frames_are_looked_up_by_their_frame_number_not_their_place_in_the_file(tmp_path, suffix):
    """A file of some frames only (the first one 10, a gap after 11): frame 20 is the message saying 20, not the
    20th message; a lookup by position would give a segment another moment's hands."""
    frames = [FrameDetections("P01_01", n, [], [ObjectDetection(BBox(0.5, 0.5, 0.625, 0.625), n / 64)])
              for n in (10, 11, 20)]
    p = tmp_path / f"P01_01{suffix}"
    write_hand_objects(p, frames)
    m = open_hand_objects(p, "P01_01")
    assert sorted(m) == [10, 11, 20]
    assert [m[n].objects[0].score for n in (10, 11, 20)] == [10 / 64, 11 / 64, 20 / 64]


# --- the hands descriptor -----------------------------------------------------------------------------------


def _frames(state_at, side=HandSide.RIGHT, score=0.9, frames=100):
    """Frames 1..100 (0-1.98 s at 50 fps) of one hand whose state at frame n is ``state_at(n)``, pointing at
    the knife when in contact."""
    off = (KNIFE.center[0] - RIGHT.center[0], KNIFE.center[1] - RIGHT.center[1])
    out = []
    for n in range(1, frames + 1):
        st = state_at(n)
        hands = [] if st is None else [HandDetection(RIGHT, score, st, off if st >= 3 else (0.0, 0.0), side)]
        out.append(FrameDetections("P01_01", n, hands, [ObjectDetection(KNIFE, 0.9)]))
    return out


def _describe(tmp_path, frames):
    return HandsComponent().describe(SegmentContext(layout=_write(tmp_path, frames), segment=_segment(), fps=50.0))


def _contacts(rec, side="right"):
    return next(h for h in rec["data"]["hands"] if h["hand"] == side)["contacts"]


def test_a_contact_starts_at_its_first_frame_and_stops_a_frame_after_its_last(tmp_path):
    """EPIC's frame n is (n - 1) / 50 s into a 50 fps video: contact on frames 26-75 is 0.50-1.50 s, exactly
    (a frame late, or stopping where its last frame begins, is off by 0.02 s); the timeline says so too."""
    rec = _describe(tmp_path, _hand_frames((0.5, 1.5)))
    (c,) = _contacts(rec)
    assert (c["start"], c["stop"], c["state"]) == (0.5, 1.5, "portable")
    assert rec["data"]["timeline"] == [{"start": 0.5, "stop": 1.5, "text": "right hand touches object"}]


def test_self_contact_and_another_person_are_not_object_contacts(tmp_path):
    """A hand on the other hand (SELF_CONTACT) or on a person (ANOTHER_PERSON) touches no object: no contact
    interval, no object named."""
    on = lambda st: (lambda n: st if 26 <= n <= 75 else HandState.NO_CONTACT)  # noqa: E731
    for st in (HandState.SELF_CONTACT, HandState.ANOTHER_PERSON):
        rec = _describe(tmp_path / st.name, _frames(on(st)))
        assert _contacts(rec) == [] and rec["text"] == "left hand not seen; right hand free", st


def test_a_stationary_contact_is_a_contact_and_its_state_the_most_frequent(tmp_path):
    """A hand on the counter (STATIONARY_OBJECT) is in contact; an interval whose first frames say portable
    but most say stationary is stationary."""
    rec = _describe(tmp_path / "a", _frames(lambda n: HandState.STATIONARY_OBJECT if 26 <= n <= 75
                                            else HandState.NO_CONTACT))
    (c,) = _contacts(rec)
    assert (c["start"], c["stop"], c["state"]) == (0.5, 1.5, "stationary")
    rec = _describe(tmp_path / "b", _frames(lambda n: HandState.NO_CONTACT if not 26 <= n <= 75 else
                                            HandState.PORTABLE_OBJECT if n <= 35 else HandState.STATIONARY_OBJECT))
    (c,) = _contacts(rec)
    assert c["state"] == "stationary"


def test_a_left_hand_is_described_as_the_left_hand(tmp_path):
    rec = _describe(tmp_path, _frames(lambda n: HandState.PORTABLE_OBJECT if 26 <= n <= 75 else HandState.NO_CONTACT,
                                      side=HandSide.LEFT))
    assert rec["text"] == "left hand: object 0.5-1.5 s; right hand not seen"


def test_a_hand_under_the_threshold_is_not_seen(tmp_path):
    """A hand scored 0.3 is no hand (threshold 0.5): the text says "not seen", not "free"."""
    rec = _describe(tmp_path, _frames(lambda n: HandState.NO_CONTACT, score=0.3))
    assert rec["text"] == "left hand not seen; right hand not seen"


def test_a_hand_seen_only_on_the_segments_last_frame_is_seen(tmp_path):
    """The segment's frames are start_frame..stop_frame inclusive: a hand on frame 100 of 1-100 counts."""
    rec = _describe(tmp_path, _frames(lambda n: HandState.NO_CONTACT if n == 100 else None))
    assert rec["text"] == "left hand not seen; right hand free"


def _hand_at(dx, dy):
    return HandDetection(BBox(0.30, 0.55, 0.40, 0.75), 0.9, HandState.PORTABLE_OBJECT, (dx, dy), HandSide.RIGHT)


def _box(hand, objects, labelled=()):
    return HandsComponent()._contact_box(hand, FrameDetections("P01_01", 1, [hand], objects), list(labelled))


def test_the_offset_is_added_once_and_distance_is_euclidean_as_epic_matches():
    """EPIC's ``get_hand_object_interactions``: the point is hand centre + offset (not twice the offset) and the
    object is the one of least squared Euclidean distance (a city-block distance picks another box)."""
    # hand centre (0.35, 0.65); offset (0.10, 0.0): point (0.45, 0.65)
    at = ObjectDetection(BBox(0.40, 0.60, 0.50, 0.70), 0.9)  # centre (0.45, 0.65)
    beyond = ObjectDetection(BBox(0.50, 0.60, 0.60, 0.70), 0.9)  # centre (0.55, 0.65): where twice the offset ends
    assert _box(_hand_at(0.10, 0.0), [beyond, at])[0] == at.bbox
    # point (0.50, 0.50): one centre 0.30 across (L2 0.30, L1 0.30), the other 0.20 across and down (L2 0.28, L1 0.40)
    hand = _hand_at(0.15, -0.15)
    across = ObjectDetection(BBox(0.75, 0.45, 0.85, 0.55), 0.9)  # centre (0.80, 0.50)
    diagonal = ObjectDetection(BBox(0.65, 0.65, 0.75, 0.75), 0.9)  # centre (0.70, 0.70)
    assert _box(hand, [across, diagonal])[0] == diagonal.bbox
    # point (0.65, 0.35): the object there, not the one nearest the hand itself
    by_hand = ObjectDetection(BBox(0.30, 0.50, 0.40, 0.60), 0.9)  # centre (0.35, 0.55), 0.1 from the hand's
    there = ObjectDetection(BBox(0.60, 0.30, 0.70, 0.40), 0.9)  # centre (0.65, 0.35)
    assert _box(_hand_at(0.30, -0.30), [by_hand, there])[0] == there.bbox


def test_an_object_scored_at_the_threshold_counts():
    """EPIC keeps objects of score >= object_threshold (0.5 here): one scored exactly 0.5 is the contact box."""
    obj = ObjectDetection(BBox(0.40, 0.60, 0.50, 0.70), 0.5)
    assert _box(_hand_at(0.10, 0.0), [obj])[0] == obj.bbox


def test_a_labelled_box_overlapping_the_contact_box_by_exactly_0_3_names_it():
    """IoU >= 0.3 names the contact (the documented bound): a labelled box of IoU exactly 0.3 whose centre is
    0.175 from the contact point (beyond the 0.15 fallback) still names it."""
    from leap_cli.extract.detections import LabelledBox

    obj = ObjectDetection(BBox(0.0, 0.0, 0.5, 0.5), 0.9)  # centre (0.25, 0.25)
    lid = LabelledBox("lid", BBox(0.0, 0.0, 0.5, 0.15), 0.9)  # IoU 0.075 / 0.25 = 0.3; centre (0.25, 0.075)
    assert lid.bbox.iou(obj.bbox) == 0.3
    hand = _hand_at(0.25 - 0.35, 0.25 - 0.65)  # contact point: the object's centre
    assert _box(hand, [obj], [lid]) == (obj.bbox, "lid")


def test_a_contact_stops_one_frame_after_its_last_where_the_file_lacks_some_frames(tmp_path):
    """A detections file missing frames 76-90 (a gap after the contact on 26-75): a frame still lasts 0.02 s,
    so the contact stops at 1.50 s, not later by the gap's share of an average step."""
    frames = [f for f in _hand_frames((0.5, 1.5)) if not 76 <= f.frame_number <= 90]
    (c,) = _contacts(_describe(tmp_path, frames))
    assert (c["start"], c["stop"]) == (0.5, 1.5)
