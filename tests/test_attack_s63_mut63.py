"""Session 63, mutation testing of the timing rule (epic/timing.py), EPIC's metrics (evaluate/metrics.py) and the
hand-object codec (epic/hand_objects.py): each test here kills a mutant that every earlier test let live.

Expected values are derived by hand from EPIC's rules (docs/media.md: frame k starts at (k - 1) / rate), from the
official evaluators (epic-kitchens/C1-Action-Recognition and C3-Action-Anticipation: ``tp[:, :k].max(1).mean()``
over a class's segments) and from the protobuf wire format (unknown fields skipped, the last of a repeated scalar
wins), not from leap's own output. The row P01_11_0 is from EPIC_100_validation.csv (EPIC-KITCHENS-100
annotations, CC BY-NC 4.0)."""

from __future__ import annotations

import json
import pickle
import struct
from types import SimpleNamespace

import numpy as np
import pytest

from leap_cli.epic.hand_objects import (BBox, FrameDetections, HandDetection, HandSide, HandState, ObjectDetection,
                                        open_hand_objects, read_hand_objects)
from leap_cli.epic.timing import FrameClock, clip_windows_before, columns_disagree, format_timestamp
from leap_cli.errors import LeapError
from leap_cli.evaluate import metrics as M


def _seg(start, stop, start_frame=1, stop_frame=1):
    return SimpleNamespace(start=start, stop=stop, start_frame=start_frame, stop_frame=stop_frame)


# --- timing ---------------------------------------------------------------------------------------------------


def test_time_zero_formats_and_an_edited_row_starting_at_zero_is_named():
    """P01_11_0 starts at 00:00:00.00 (frame 1); a CSV edited to start_frame 10 is reported, not a crash."""
    assert format_timestamp(0.0) == "00:00:00.00"
    assert columns_disagree(0.0, 1.89, 1, 113, 59.94005994) is None
    why = columns_disagree(0.0, 1.89, 10, 113, 59.94005994)
    assert why == "start_frame 10 but its timestamp 00:00:00.00 is frame 1 at 60/s"


def test_a_window_of_no_length_is_the_one_frame_shown_then():
    """A row of no length is "a single moment" (annotations' note). On a 50 fps video EPIC's 2-decimal times fall
    on frame starts: 12.34 s is the start of frame 12.34 * 50 + 1 = 618, the frame shown then, although no frame
    starts strictly between start and stop."""
    clock = FrameClock("mp4", 50.0, num_frames=1000)
    w = clock.segment_window(_seg(12.34, 12.34))
    assert (w.first, w.last, w.frames, w.inside) == (618, 618, (618,), True)
    w = clock.window(12.34, 12.34)
    assert (w.first, w.last, w.frames) == (618, 618, (618,))


def test_a_stop_one_whole_frame_past_the_end_is_outside_and_less_than_one_is_not():
    """64 frames/s, 128 frames: the video ends at 2.0 s. A stop at 2.015625 s (a whole frame later) needs frame
    129, which does not exist; a stop half a frame past the end ends at frame 128."""
    clock = FrameClock("mp4", 64.0, num_frames=128)
    w = clock.segment_window(_seg(1.0, 129 / 64))
    assert (w.first, w.last, w.inside) == (65, 129, False)
    w = clock.segment_window(_seg(1.0, 128.5 / 64))
    assert (w.first, w.last, w.inside) == (65, 128, True)


def test_a_segment_that_starts_after_the_last_frame_is_outside_not_an_empty_inside_window():
    clock = FrameClock("mp4", 64.0, num_frames=128)
    w = clock.segment_window(_seg(128.25 / 64, 128.5 / 64))  # starts after frame 128 ends (2.0 s)
    assert w.first == 129 and w.frames == (129,)
    assert not w.inside and "after the decodable end" in w.reason


def test_span_window_bounds_its_frames_in_time():
    """Frames 1..10 at 50/s cover [0, 0.2): the window's stop is the start of frame 11."""
    w = FrameClock("rgb_frames", 50.0).span_window(1, 10)
    assert (w.start, w.stop) == (0.0, 0.2)
    assert w.frames == tuple(range(1, 11))


def test_anticipation_with_tau_a_zero_ends_at_the_last_frame_before_the_action():
    """tau_a = 0 is allowed (tau_a >= 0): at 50/s the last frame starting before 10.0 s is 500 ((500-1)/50 =
    9.98 s); two clips of 4 frames: 493..496 over [9.84, 9.92) and 497..500 over [9.92, 10.0)."""
    clips = clip_windows_before(FrameClock("rgb_frames", 50.0), 10.0, 0.0, clips=2, frames=4)
    assert [c.frames for c in clips] == [(493, 494, 495, 496), (497, 498, 499, 500)]
    assert [(round(c.start, 9), round(c.stop, 9)) for c in clips] == [(9.84, 9.92), (9.92, 10.0)]



def test_a_source_that_decodes_no_frame_is_cut_short():
    assert FrameClock("mp4", 50.0, num_frames=0, duration=10.0).cut_short()
    assert not FrameClock("mp4", 50.0, num_frames=500, duration=10.0).cut_short()

# --- metrics --------------------------------------------------------------------------------------------------


def test_rank_five_is_in_the_top_five_and_rank_six_is_not():
    """C1/C3: a hit is ``rankings[:, :5] == label``, so the 5th class ranked counts and the 6th does not, for
    top-5 accuracy and for the class-mean top-5 recall alike."""
    scores = np.array([[9.0, 8, 7, 6, 5, 4, 3, 2]])
    kw = dict(tail_verbs=set(), tail_nouns=set(), unseen_participants=set())
    for label, hit in ((4, 1.0), (5, 0.0)):
        rec = M.recognition_metrics(scores, scores, [label], [label], ["P01"], **kw)
        assert rec["all"]["verb"]["top5"] == hit
        ant = M.anticipation_metrics(scores, scores, [label], [label], ["P01"], **kw)
        assert ant["overall"]["verb"]["mt5r"] == hit


def test_a_step_condition_at_exactly_the_threshold_is_predicted_as_the_segment_conditions_are():
    """Predictions are thresholded at 0.5 (>=), per row as per segment: one true condition predicted at 0.5."""
    probs, truth = np.array([[[0.5, 0.0]]]), np.array([[[1.0, 0.0]]])
    per_row = M.step_condition_metrics(probs, truth, np.array([[[1, 2, 3]]]), np.array([True]))
    per_segment = M.condition_metrics(probs[:, 0], truth[:, 0], np.array([True]))
    assert per_row["pre"]["micro_f1"] == per_segment["pre"]["micro_f1"] == 1.0


# --- hand-object detections -----------------------------------------------------------------------------------


def _frame(video_id="P01_01", frame=7, score=0.75) -> FrameDetections:
    return FrameDetections(video_id, frame,
                           [HandDetection(BBox(0.5, 0.25, 0.75, 0.625), score, HandState.PORTABLE_OBJECT,
                                          (-0.125, 0.0625), HandSide.RIGHT)],
                           [ObjectDetection(BBox(0.125, 0.5, 0.25, 0.75), 0.5)])


def test_a_hand_of_score_zero_is_read_as_zero():
    """proto3 leaves a 0.0 score out of the message; its absence means 0.0."""
    assert FrameDetections.from_protobuf(_frame(score=0.0).to_protobuf()).hands[0].score == 0.0


def test_unknown_fields_are_skipped_whatever_their_number_or_length():
    """A protobuf reader skips fields it does not know: field 16 (a two-byte key, 0x80 0x01) and a
    length-delimited field of 128 bytes (a two-byte length, 0x80 0x01)."""
    msg = _frame().to_protobuf()
    assert FrameDetections.from_protobuf(msg + b"\x80\x01\x05") == _frame()
    assert FrameDetections.from_protobuf(msg + b"\x4a\x80\x01" + bytes(128)) == _frame()
    long_id = _frame(video_id="P" * 128)
    assert FrameDetections.from_protobuf(long_id.to_protobuf()) == long_id


def test_a_box_with_an_unknown_fourth_field_keeps_bottom_zero():
    box = b"\x0d" + struct.pack("<f", 0.25) + b"\x15" + struct.pack("<f", 0.5) + b"\x1d" + struct.pack("<f", 0.75)
    hand = b"\x0a\x14" + box + b"\x2d" + struct.pack("<f", 0.875)  # field 5 (unknown in BBox) where bottom goes
    msg = b"\x10\x07" + b"\x1a" + bytes([len(hand)]) + hand
    assert FrameDetections.from_protobuf(msg).hands[0].bbox == BBox(0.25, 0.5, 0.75, 0.0)


def test_the_last_of_a_repeated_scalar_wins_and_frame_numbers_are_int32():
    assert FrameDetections.from_protobuf(b"\x10\x05\x10\x07").frame_number == 7
    assert FrameDetections.from_protobuf(FrameDetections("P01_01", -1).to_protobuf()).frame_number == -1


def test_a_message_with_its_frame_number_twice_is_filed_under_the_number_it_decodes_to(tmp_path):
    path = tmp_path / "P01_01.pkl"
    path.write_bytes(pickle.dumps([b"\x10\x05\x10\x07"]))
    frames = open_hand_objects(path)
    assert list(frames) == [7]


def test_a_json_true_is_no_hand_side_or_state():
    d = _frame().to_dict()
    d["hands"][0]["side"] = True
    with pytest.raises(ValueError, match="side True is none of LEFT"):
        FrameDetections.from_dict(d)


def test_messages_that_carry_no_video_id_belong_to_the_file_they_are_in(tmp_path):
    """proto3 leaves an empty video_id out; such a file is not said to be another video's."""
    path = tmp_path / "P01_01.pkl"
    path.write_bytes(pickle.dumps([_frame(video_id="").to_protobuf()], protocol=4))
    assert open_hand_objects(path, "P01_01")[7].hands[0].side == HandSide.RIGHT


def test_a_pickle_of_a_list_of_strings_is_no_detections_file(tmp_path):
    path = tmp_path / "P01_01.pkl"
    path.write_bytes(pickle.dumps(["frame 1", "frame 2"]))
    for read in (read_hand_objects, open_hand_objects):
        with pytest.raises(LeapError, match="does not hold a list of serialized messages"):
            read(path)


def test_a_jsonl_line_holding_a_line_separator_in_a_string_is_one_line(tmp_path):
    """U+2028 is no line break in JSONL (a writer with ensure_ascii=False leaves it raw inside a string)."""
    d = _frame().to_dict()
    d["note"] = "cut\u2028here"
    path = tmp_path / "P01_01.jsonl"
    path.write_text(json.dumps(d, ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_hand_objects(path) == [_frame()]


def test_a_window_starting_before_the_video_starts_at_the_frame_shown_then():
    """Bug (fixed): a negative start on a frame boundary gave the frame before it (no rounding slack, unlike
    positive times). At 50/s frame -13 starts at (-13 - 1) / 50 = -0.28 s, 14 frames (0.28 s) before frame 1."""
    w = FrameClock("mp4", 50.0, num_frames=1000).window(-0.28, 0.5)
    assert w.first == -13 and w.frames[0] == -13
    assert not w.inside and w.reason == "the window starts 0.28 s before the video"


def test_a_missing_pkl_is_said_not_found(tmp_path):
    with pytest.raises(LeapError, match="hand-object detections not found"):
        read_hand_objects(tmp_path / "P01_01.pkl")


def test_a_pickle_naming_another_codecs_function_is_refused(tmp_path):
    """Only ``_codecs.encode`` (how protocol 2 stores bytes) is let through, not any name in ``_codecs``."""
    path = tmp_path / "P01_01.pkl"
    path.write_bytes(b"\x80\x02c_codecs\nlookup\nq\x00X\x05\x00\x00\x00utf-8q\x01\x85q\x02Rq\x03.")
    with pytest.raises(LeapError, match="refusing to load _codecs.lookup"):
        read_hand_objects(path)
