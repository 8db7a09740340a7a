"""Session 66's hand-made mutation run over ``epic/hand_objects.py`` and ``epic/timing.py`` (hoa66): the tests
that kill the mutants the existing tests let live. The wire bytes are assembled with
``tests/test_hand_objects.py``'s helpers from EPIC's schema (epic-kitchens-100-hand-object-bboxes, ``types.proto``),
not by leap's writer.

Tally (mutants made / killed by the tests before / killed here / equivalent): hand_objects.py 37 / 26 / 10 / 1
(a state past STATIONARY_OBJECT: IndexError instead of ValueError, the same LeapError); timing.py 41 / 34 / 5 / 2
(``min(span - 1, ...)`` in uniform never binds; ``span == 1`` in spread gives ``[first]`` either way). One bug found
and fixed: ``consecutive`` sampled frames outside ``first..last``."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import pytest

from leap_cli.epic.hand_objects import BBox, FrameDetections, open_hand_objects, read_hand_objects, write_hand_objects
from leap_cli.epic.timing import MP4, RGB_FRAMES, FrameClock, parse_timestamp, pick_frames
from leap_cli.errors import LeapError
from tests.test_hand_objects import _e, _f, _m

# --- hand_objects.py -----------------------------------------------------------------------------------------


def test_iou_of_boxes_apart_or_without_area_is_zero():
    """Boxes side by side overlap on one axis only; two points have no union: IoU 0, never below or 1."""
    a, b = BBox(0.0, 0.0, 0.5, 0.5), BBox(0.25, 0.75, 0.75, 1.0)  # x overlaps, y does not
    assert a.iou(b) == 0.0 and b.iou(a) == 0.0
    assert BBox(0.5, 0.5, 0.5, 0.5).iou(BBox(0.5, 0.5, 0.5, 0.5)) == 0.0
    assert BBox(0.0, 0.0, 0.5, 0.5).iou(BBox(0.25, 0.0, 0.75, 0.5)) == 1 / 3


def _box_fields(order: tuple[int, ...], values: dict[int, float]) -> bytes:
    return b"".join(_f(num, values[num]) for num in order)


def test_a_box_and_an_offset_with_every_field_out_of_order_decode_by_field_number():
    """Protobuf fields may come in any order: a full 20-byte box (and 10-byte offset) written right, bottom, left,
    top (y before x) is still read by field number, not by place."""
    box = _box_fields((3, 4, 1, 2), {1: 0.125, 2: 0.25, 3: 0.75, 4: 0.875})
    offset = _f(2, 0.5) + _f(1, -0.25)
    assert len(box) == 20 and len(offset) == 10
    hand = _m(1, box) + _f(2, 0.75) + _e(3, 3) + _m(4, offset) + _e(5, 1)
    det = FrameDetections.from_protobuf(_m(1, b"P01_01") + _e(2, 9) + _m(3, hand) + _m(4, _m(1, box) + _f(2, 0.5)))
    assert det.hands[0].bbox == BBox(0.125, 0.25, 0.75, 0.875) == det.objects[0].bbox
    assert det.hands[0].object_offset == (-0.25, 0.5)


def test_a_field_given_twice_keeps_its_last_value_as_protobuf_merges():
    """Two serialized messages concatenated are one merged message: scalars from the second, hands from both."""
    first, second = _m(1, b"P01_01") + _e(2, 5), _m(1, b"P01_02") + _e(2, 6) + _m(4, _f(2, 0.5))
    det = FrameDetections.from_protobuf(first + _m(4, _f(2, 0.25)) + second)
    assert (det.video_id, det.frame_number, [o.score for o in det.objects]) == ("P01_02", 6, [0.25, 0.5])


def test_lengths_and_numbers_of_two_varint_bytes_and_negative_frames_round_trip(tmp_path):
    """A length of 128 (the first that takes two varint bytes) and int32 -1 (ten bytes) read back as written."""
    for video_id, frame in (("P" * 127, 127), ("P" * 128, 128), ("P" * 300, 16384), ("P01_01", -1)):
        p = tmp_path / "x.pkl"
        write_hand_objects(p, [FrameDetections(video_id, frame)])
        assert [(f.video_id, f.frame_number) for f in read_hand_objects(p)] == [(video_id, frame)]


@pytest.mark.parametrize("suffix", [".pkl", ".jsonl"])
def test_a_hand_object_file_without_video_ids_opens_for_any_video(tmp_path, suffix):
    """proto3 leaves out an empty ``video_id``: such a file names no video, so it is not another video's."""
    p = tmp_path / f"P01_03{suffix}"
    write_hand_objects(p, [FrameDetections("", 1), FrameDetections("", 2)])
    frames = open_hand_objects(p, "P01_03")
    assert [frames[n].frame_number for n in (1, 2)] == [1, 2]


def test_a_pickle_mixing_messages_and_other_values_is_the_files_fault(tmp_path):
    """One non-bytes entry among the messages: a ``LeapError`` naming the file, not a traceback from the codec."""
    p = tmp_path / "P01_01.pkl"
    p.write_bytes(pickle.dumps([FrameDetections("P01_01", 1).to_protobuf(), 5]))
    for read in (read_hand_objects, open_hand_objects):
        with pytest.raises(LeapError, match=r"P01_01\.pkl.*list of serialized messages"):
            read(p)


def test_a_message_cut_inside_a_fixed64_field_is_malformed(tmp_path):
    """An unknown fixed64 field (wire type 1) given 7 of its 8 bytes: the message is cut short, not complete."""
    p = tmp_path / "P01_01.pkl"
    p.write_bytes(pickle.dumps([_e(2, 3) + bytes([6 << 3 | 1]) + b"\x00" * 7]))
    with pytest.raises(LeapError, match=r"\[frame 3 \(message 0\)\].*truncated fixed64"):
        open_hand_objects(p)[3]


# --- timing.py -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["00:60:00.00", "00:00:60.00"])
def test_a_timestamp_with_60_minutes_or_seconds_is_refused(text):
    with pytest.raises(ValueError, match="is not HH:MM:SS.ff"):
        parse_timestamp(text)


def test_an_rgb_frames_segment_whose_stop_frame_is_before_its_start_frame_is_its_start_frame():
    """An edited row with stop_frame < start_frame still spans one frame, as an MP4's span of such a row does."""
    seg = SimpleNamespace(start=2.0, stop=1.0, start_frame=120, stop_frame=60)
    assert FrameClock(RGB_FRAMES, 59.94).segment_span(seg) == (120, 120)


def test_consecutive_frames_of_an_even_count_are_centred_in_an_even_span():
    """Frames 1..10 centre on 5.5: four consecutive frames are 4..7, not 3..6."""
    assert pick_frames(1, 10, 4, "consecutive") == [4, 5, 6, 7]


def test_a_span_that_ends_before_it_starts_is_its_first_frame_alone():
    """``last < first`` is read as the one frame ``first``, as ``segment_span`` clamps an edited row."""
    assert pick_frames(5, 3, 3, "uniform") == [5, 5, 5] and pick_frames(5, 3, 3, "spread") == [5]
    assert pick_frames(5, 3, 1, "consecutive") == [5]


def test_a_video_half_a_second_short_of_its_listed_length_is_cut_short():
    """``LENGTH_TOLERANCE_S`` is 0.1 s: 0.5 s missing is a truncated copy, 0.06 s is not."""
    assert FrameClock(MP4, 50.0, num_frames=475, duration=10.0).cut_short()
    assert not FrameClock(MP4, 50.0, num_frames=497, duration=10.0).cut_short()


def test_consecutive_frames_of_a_span_shorter_than_n_repeat_inside_it():
    """``pick_frames`` takes frames from ``first..last`` only (repeats where the span is short): a one-frame window
    at the video's start sampled 4 ``consecutive`` frames was [-1, 0, 1, 2], frames before the video in a window
    that says it is ``inside``."""
    assert pick_frames(1, 1, 4, "consecutive") == [1, 1, 1, 1]
    assert pick_frames(10, 11, 5, "consecutive") == [10, 10, 11, 11, 11]
    w = FrameClock(MP4, 50.0, num_frames=100).window(0.0, 0.01, 4, "consecutive")
    assert w.inside and all(w.first <= f <= w.last for f in w.frames)
