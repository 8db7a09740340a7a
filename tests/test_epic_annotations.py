"""Annotations and class files: what a user's EPIC-KITCHENS-100 CSVs give, row by row (tests/data/epic100 is an
excerpt of EPIC's own files; the edited copies are written to tmp_path)."""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from leap_cli.epic.annotations import Annotations, made_from_other_annotations
from leap_cli.epic.classes import ClassVocab, parse_list_cell
from leap_cli.errors import LeapError
from tests.csv_rows import edit_csv

VAL = "EPIC_100_validation.csv"
TEST = "EPIC_100_test_timestamps.csv"


def _copy(epic_dir, tmp_path):
    dst = tmp_path / "annotations"
    shutil.copytree(epic_dir, dst)
    return dst


# --- segments as the CSV has them ---------------------------------------------------------------------------

def test_frame_columns_are_read_as_in_the_csv(epic_dir):
    first, second = Annotations(epic_dir).segments("val")[:2]
    assert (first.narration_id, first.start_frame, first.stop_frame) == ("P01_11_0", 1, 113)
    assert (second.narration_id, second.start_frame, second.stop_frame) == ("P01_11_1", 93, 147)


def test_annotation_holds_the_rows_own_classes(epic_dir):
    seg = Annotations(epic_dir).segments("val")[1]
    assert seg.narration_id == "P01_11_1"
    ann = seg.annotation()
    assert (ann["verb"], ann["verb_class"], ann["noun"], ann["noun_class"]) == ("put-down", 1, "plate", 2)
    assert ann["all_nouns"] == ["plate"] and ann["all_noun_classes"] == [2]


def test_segment_finds_a_narration_id_not_a_video_id(epic_dir):
    a = Annotations(epic_dir)
    assert a.segment("validation", "P01_11") is None
    assert a.segment("validation", "P01_11_1").narration_id == "P01_11_1"


def test_segment_refuses_a_class_id_the_class_file_lacks_as_segments_does(epic_dir, tmp_path):
    folder = _copy(epic_dir, tmp_path)
    edit_csv(folder / VAL, lambda rows: rows[1].update(verb_class="999"))
    with pytest.raises(LeapError, match=r"verb_class 999 is not a class of EPIC_100_verb_classes.csv"):
        Annotations(folder).segment("val", "P01_11_1")
    with pytest.raises(LeapError, match=r"verb_class 999 is not a class of EPIC_100_verb_classes.csv"):
        Annotations(folder).segments("val")


def test_a_labelled_test_csv_gives_one_segment_as_the_split_does(epic_dir, tmp_path):
    folder = _copy(epic_dir, tmp_path)
    shutil.copy(folder / VAL, folder / TEST)  # (a test split that carries labels: read them)
    one = Annotations(folder).segment("test", "P01_11_1")
    assert one.has_labels and one.verb == "put-down"
    assert one == Annotations(folder).segments("test")[1]


def test_the_validation_alias_names_the_val_files(epic_dir):
    a = Annotations(epic_dir)
    assert a.unseen_participants("validation") == a.unseen_participants("val") == {"P18", "P32"}
    assert a.split_path("validation") == a.split_path("val") == epic_dir / VAL


# --- records made from another version of a segment ---------------------------------------------------------

def _record(seg, **changed):
    rec = {"video_id": seg.video_id, "start": round(seg.start, 3), "stop": round(seg.stop, 3),
           "start_frame": seg.start_frame, "stop_frame": seg.stop_frame, "annotation_hash": seg.annotation_hash}
    rec.update(changed)
    return rec


def test_a_record_of_another_start_or_frame_is_made_from_other_annotations(epic_dir):
    seg = Annotations(epic_dir).segments("val")[1]
    assert made_from_other_annotations(_record(seg), seg) is None
    assert made_from_other_annotations(_record(seg, start=round(seg.start + 0.01, 3)), seg) == "its start or stop"
    assert made_from_other_annotations(_record(seg, stop=round(seg.stop - 0.01, 3)), seg) == "its start or stop"
    assert made_from_other_annotations(_record(seg, stop_frame=seg.stop_frame + 1), seg) == "its frame columns"
    assert made_from_other_annotations(_record(seg, start_frame=seg.start_frame - 1), seg) == "its frame columns"


# --- row notes and video info -------------------------------------------------------------------------------

def test_a_participant_id_that_is_not_the_video_ids_prefix_is_noted(epic_dir):
    a = Annotations(epic_dir)
    seg = a.segments("val")[0]
    assert a.row_notes([seg]) == []
    notes = a.row_notes([dataclasses.replace(seg, participant_id="P0")])
    assert len(notes) == 1
    assert notes[0].startswith("1 row whose ids name different videos (e.g. P01_11_0: participant_id P0, "
                               "video_id P01_11)")


@pytest.mark.parametrize("duration,fps", [("inf", "59.94"), ("561.5", "inf")])
def test_an_infinite_duration_or_rate_in_the_video_info_is_refused(tmp_path, duration, fps):
    (tmp_path / "EPIC_100_video_info.csv").write_text(
        f"video_id,duration,fps,resolution\nP01_11,{duration},{fps},1920x1080\n")
    with pytest.raises(LeapError, match="no positive duration/fps/resolution for 'P01_11'"):
        Annotations(tmp_path).video_info


# --- how the CSVs are read ----------------------------------------------------------------------------------

def _respaced_header(path):
    """The file with its header's columns separated by ', ' (rows untouched)."""
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0].replace(",", ", ") + "".join(lines[1:]))


def test_a_header_separated_by_comma_space_is_read(epic_dir, tmp_path):
    folder = _copy(epic_dir, tmp_path)
    _respaced_header(folder / VAL)
    seg = Annotations(folder).segments("validation")[0]
    assert (seg.narration_id, seg.verb, seg.verb_class, seg.noun_class) == ("P01_11_0", "take", 0, 2)


def test_a_file_separated_by_comma_space_gives_values_without_the_space(epic_dir, tmp_path):
    """Every line ", "-separated (a hand-made or re-saved file): the values kept their leading space (video_id
    " P01_11", verb " take"), and the rows were then said to name different videos."""
    folder = _copy(epic_dir, tmp_path)
    (folder / VAL).write_text((folder / VAL).read_text().replace(",", ", "))
    ann = Annotations(folder)
    seg = ann.segments("val")[0]
    assert (seg.participant_id, seg.video_id, seg.verb, seg.noun, seg.verb_class) == ("P01", "P01_11", "take",
                                                                                        "plate", 0)
    assert ann.row_notes(ann.segments("val")) == []


def test_a_labelled_test_csv_with_a_comma_space_header_keeps_its_labels(epic_dir, tmp_path):
    folder = _copy(epic_dir, tmp_path)
    shutil.copy(folder / VAL, folder / TEST)
    _respaced_header(folder / TEST)
    seg = Annotations(folder).segments("test")[0]
    assert (seg.narration_id, seg.verb, seg.verb_class) == ("P01_11_0", "take", 0)
    assert Annotations(folder).segment("test", "P01_11_0") == seg


def test_a_csv_saved_with_a_byte_order_mark_is_read(epic_dir, tmp_path):
    folder = _copy(epic_dir, tmp_path)
    text = (folder / VAL).read_text()
    (folder / VAL).write_text(text, encoding="utf-8-sig")  # (Excel's "CSV UTF-8")
    assert (folder / VAL).read_bytes().startswith(b"\xef\xbb\xbf")
    assert Annotations(folder).segments("val")[0].narration_id == "P01_11_0"
    assert Annotations(folder).segment("val", "P01_11_0").verb == "take"
    (folder / TEST).write_text(text, encoding="utf-8-sig")  # (a test split with labels: its header says so)
    assert Annotations(folder).segments("test")[0].verb == "take"
    assert Annotations(folder).segment("test", "P01_11_0").verb_class == 0


# --- class files --------------------------------------------------------------------------------------------

def test_an_empty_form_resolves_to_no_class(epic_dir):
    verbs = Annotations(epic_dir).verbs
    assert verbs.resolve("take") == 0
    assert verbs.resolve("") is None
    assert verbs.resolve("  ") is None


def test_a_class_form_of_several_parts_resolves_in_either_order(epic_dir):
    nouns = Annotations(epic_dir).nouns
    assert nouns.key(15) == "bottle" and "bottle:olive:oil" in nouns.instances[15]
    assert nouns.resolve("bottle:olive:oil") == 15
    assert nouns.resolve("bottle olive oil") == nouns.resolve("oil olive bottle") == 15


def test_a_list_cell_that_is_not_a_list_is_refused():
    with pytest.raises(LeapError, match="expected a list"):
        parse_list_cell("'plate'")
    assert parse_list_cell("('plate',)") == ["plate"]


def test_a_class_id_that_is_not_an_integer_is_refused(tmp_path):
    p = tmp_path / "EPIC_100_verb_classes.csv"
    p.write_text("id,key,instances,category\n0,take,\"['take']\",retrieve\n1.5,put,\"['put']\",leave\n")
    with pytest.raises(LeapError, match=r"id '1.5' is not an integer") as e:
        ClassVocab.from_csv(p, "verb")
    assert e.value.record == "row 3"
