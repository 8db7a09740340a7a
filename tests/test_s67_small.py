"""Session 67's small fixes: the scores file's narration ids given as an array [N, 1]."""

from __future__ import annotations

import numpy as np
import pytest

from leap_cli.errors import LeapError
from leap_cli.evaluate.scores import normalize_scores


@pytest.mark.parametrize("nid", [np.array([["P01_101_0"], ["P01_101_1"]]), [["P01_101_0"], ["P01_101_1"]],
                                 [("P01_101_0",), ("P01_101_1",)]])
def test_narration_ids_of_one_column_are_refused_naming_the_shape(nid):
    """Was: each row read as its text ("['P01_101_0']"), so every id was "not in the val annotations"."""
    raw = {"narration_id": nid, "verb_output": np.zeros((2, 97)), "noun_output": np.zeros((2, 300))}
    with pytest.raises(LeapError) as e:
        normalize_scores(raw, "results.pkl")
    assert "not one id per row (row 0 holds" in e.value.message and "P01_101_0" in e.value.message, e.value.message
    assert "reshape(-1)" in e.value.fix and "\n" not in str(e.value)


def test_a_flat_array_of_ids_is_read():
    raw = {"narration_id": np.array(["P01_101_0", b"P01_101_1"], dtype=object), "verb_output": np.zeros((2, 97)),
           "noun_output": np.zeros((2, 300))}
    assert normalize_scores(raw, "results.pkl")["narration_id"] == ["P01_101_0", "P01_101_1"]


def test_csv_cells_lose_the_trailing_spaces_a_spreadsheet_leaves(tmp_path):
    """(Was: a narration id "P01_101_0 " kept its space and matched no program, score or descriptor.)"""
    from leap_cli.epic.classes import read_csv

    path = tmp_path / "EPIC_100_validation.csv"
    path.write_text('narration_id,participant_id,narration\nP01_101_0 , P01 ,"open door "\n', encoding="utf-8")
    rows = read_csv(path, ("narration_id", "participant_id", "narration"))
    assert rows == [{"narration_id": "P01_101_0", "participant_id": "P01", "narration": "open door"}]
    assert rows.lines == [2]


@pytest.mark.parametrize("text, stripped", [
    ("no P01_11.wav or .flac in /Volumes/My Passport/EPIC/P01/audio).", "no P01_11.wav or .flac in <path>)."),
    ("cannot open C:\\Users\\John Smith\\EPIC\\P01_11.MP4: moov atom not found", "cannot open <path>: moov atom not found"),
    ("copy /a/b /c/d, then on/off", "copy <path> <path>, then on/off"),  # (two paths stay two)
    ("switch on/off the tap, 1/2 cup", "switch on/off the tap, 1/2 cup")])
def test_a_path_through_a_folder_with_a_space_is_stripped_whole(text, stripped):
    """A prompt is the LLM cache's key: a data set under "/Volumes/My Passport" left "Passport/EPIC/..." in it, so
    moving the data set asked the LLM again (and told the API the layout)."""
    from leap_cli.programs.prompt import strip_paths

    assert strip_paths(text) == stripped


def test_a_message_damaged_after_its_frame_number_fails_only_where_its_frame_is_read(tmp_path):
    """Frames are filed by their last frame number (as decoding takes it; was: the first) without refusing a whole
    file for one message damaged past its number: the other frames stay usable."""
    import pickle

    from leap_cli.epic.hand_objects import FrameDetections, open_hand_objects

    good = FrameDetections("P01_01", 5).to_protobuf()
    cut = b"\x10\x02\x10\x03" + bytes([6 << 3 | 1]) + b"\x00" * 7  # (frame 2, then 3; a fixed64 field cut short)
    path = tmp_path / "P01_01.pkl"
    path.write_bytes(pickle.dumps([cut, good]))
    frames = open_hand_objects(path)
    assert sorted(frames) == [3, 5] and frames[5].frame_number == 5
    with pytest.raises(LeapError, match=r"\[frame 3 \(message 0\)\].*truncated"):
        frames[3]


def test_a_row_with_more_fields_than_the_header_is_refused_naming_it(tmp_path):
    """(Was: the extra cells kept under no column, every later field read as the next column's.) A trailing empty
    cell, as some tools add, is no extra field."""
    from leap_cli.epic.classes import read_csv

    path = tmp_path / "EPIC_100_train.csv"
    path.write_text("narration_id,narration,verb\nP01_101_0,take plate,take\nP01_101_1,open door, then close,open\n"
                    "P01_101_2,wash cup,wash,\n", encoding="utf-8")
    with pytest.raises(LeapError) as e:
        read_csv(path, ("narration_id", "narration", "verb"))
    assert e.value.record == "row 3" and "4 fields, the header 3" in e.value.message, e.value.one_line()
    assert "double quotes" in e.value.fix
    path.write_text("narration_id,narration,verb\nP01_101_2,wash cup,wash,\n", encoding="utf-8")
    assert read_csv(path, ("narration_id", "narration", "verb"))[0]["verb"] == "wash"


def test_a_message_cut_before_its_frame_number_says_truncated_not_index_out_of_range(tmp_path):
    import pickle

    from leap_cli.epic.hand_objects import open_hand_objects

    path = tmp_path / "P01_01.pkl"
    path.write_bytes(pickle.dumps([b"\x0a"]))  # (field 1, length-delimited, its length missing)
    with pytest.raises(LeapError) as e:
        open_hand_objects(path)
    assert "truncated field" in e.value.message and "index" not in e.value.message, e.value.message
