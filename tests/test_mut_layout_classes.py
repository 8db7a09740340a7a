"""Behaviour of DatasetLayout (leap_cli/epic/layout.py) and the class files' reader (leap_cli/epic/classes.py)
that a hand-made mutation run found no test for: each test here fails on one of the surviving mutants."""

import shlex

import pytest

from leap_cli.epic.classes import ClassVocab, csv_header, parse_list_cell, read_csv, renamed_copy
from leap_cli.epic.layout import DatasetLayout
from leap_cli.errors import LeapError
from tests.test_epic_layout import _annotations, _layout, _touch


def _vocab(tmp_path, text: str, kind: str = "noun") -> ClassVocab:
    return ClassVocab.from_csv(_touch(tmp_path / f"EPIC_100_{kind}_classes.csv", text), kind)


# --- layout.py ---------------------------------------------------------------------------------------------------

def test_an_annotations_file_in_the_root_is_not_blamed_on_a_flag_never_given(tmp_path):
    _touch(tmp_path / "P01" / "videos" / "P01_01.MP4")
    _touch(tmp_path / "annotations", "narration_id\n")  # a file, not the folder
    with pytest.raises(LeapError) as e:
        DatasetLayout.open(tmp_path)
    assert "annotations folder not found" in str(e.value) and "names a file" not in str(e.value)


def test_an_empty_folder_given_to_annotations_is_taken_as_given(tmp_path):
    """--annotations DIR is used as said, empty or not (each stage then names the CSV it lacks there); only a
    folder leap found itself is passed over when it is empty."""
    ann = tmp_path / "elsewhere"
    ann.mkdir()
    _annotations(tmp_path / "EPIC-annotations")  # a clone beside it: not a reason to refuse the flag
    layout = DatasetLayout.open(tmp_path, ann)
    assert layout.annotations_dir == ann


def test_the_download_folder_holding_the_csvs_loose_says_so(tmp_path):
    """--data OUT, where epic_downloader.py wrote OUT/EPIC-KITCHENS/P01/ and the CSVs were saved in OUT itself."""
    _touch(tmp_path / "EPIC-KITCHENS" / "P01" / "videos" / "P01_01.MP4")
    _touch(tmp_path / "EPIC_100_train.csv", "narration_id\n")
    with pytest.raises(LeapError) as e:
        DatasetLayout.open(tmp_path)
    assert "holds EPIC's CSVs itself" in str(e.value) and f"--annotations {tmp_path}" in e.value.fix


def test_data_pointed_at_the_annotations_folder_names_the_root_to_pass(tmp_path):
    ann = _annotations(tmp_path / "annotations")
    with pytest.raises(LeapError) as e:
        DatasetLayout.open(ann)
    assert f"(--data {tmp_path.resolve()})" in e.value.fix and f"--annotations {ann}" in e.value.fix


def test_the_untar_command_survives_a_root_with_spaces(tmp_path):
    root = tmp_path / "my data"
    folder = root / "P01" / "rgb_frames" / "P01_01"
    words = shlex.split(_layout(root).untar_command("P01_01"))
    assert words == ["mkdir", "-p", str(folder), "&&", "tar", "-xf", f"{folder}.tar", "-C", str(folder)]


def test_frame_path_names_the_frames_own_file(tmp_path):
    path = _layout(tmp_path).frame_path("P01_01", 1)
    assert path == tmp_path / "P01" / "rgb_frames" / "P01_01" / "frame_0000000001.jpg"


def test_audio_path_takes_upper_case_suffixes_and_never_a_folder(tmp_path):
    audio = tmp_path / "P01" / "audio"
    wav, flac = _touch(audio / "P01_01.WAV"), _touch(audio / "P01_02.FLAC")
    (audio / "P01_03.wav").mkdir()  # a folder of that name is not a sound file
    layout = _layout(tmp_path)
    assert layout.audio_path("P01_01") == wav and layout.audio_path("P01_02") == flac
    assert layout.audio_path("P01_03") is None


def test_poses_prefer_colmaps_text_model_to_its_binary_one(tmp_path):
    folder = tmp_path / "poses" / "P01_01"
    text, _ = _touch(folder / "images.txt"), _touch(folder / "images.bin")
    assert _layout(tmp_path).poses_path("P01_01") == text


# --- classes.py --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cell", ["", "   ", None])
def test_an_empty_list_cell_is_an_empty_list(cell):
    assert parse_list_cell(cell) == []


def test_a_form_two_classes_share_resolves_to_the_first(tmp_path):
    vocab = _vocab(tmp_path, "id,key,instances,category\n0,cup,\"['cup', 'mug']\",c\n1,mug,\"['mug']\",c\n")
    assert vocab.resolve("mug") == 0


def test_a_form_in_the_file_beats_one_derived_from_a_compound_noun(tmp_path):
    """'veg:mixed' also answers to 'veg mixed', but not where another class lists 'veg mixed' itself."""
    vocab = _vocab(tmp_path, "id,key,instances,category\n"
                             "0,veg:mixed,\"['veg:mixed']\",v\n1,salad,\"['salad', 'veg mixed']\",v\n")
    assert vocab.resolve("veg mixed") == 1 and vocab.resolve("mixed veg") == 0


def test_ids_come_in_id_order_whatever_the_files_order(tmp_path):
    vocab = _vocab(tmp_path, "id,key,instances,category\n2,c,\"['c']\",x\n0,a,\"['a']\",x\n1,b,\"['b']\",x\n")
    assert vocab.ids == [0, 1, 2]


def test_an_unknown_class_id_names_the_highest_id(tmp_path):
    vocab = _vocab(tmp_path, "id,key,instances,category\n0,a,\"['a']\",x\n1,b,\"['b']\",x\n2,c,\"['c']\",x\n")
    with pytest.raises(LeapError) as e:
        vocab.key(7)
    assert e.value.fix == "ids run from 0 to 2"


def test_class_zero_resolves_and_is_not_refused(tmp_path):
    vocab = _vocab(tmp_path, "id,key,instances,category\n0,take,\"['take', 'grab']\",x\n1,put,\"['put']\",x\n",
                   "verb")
    assert vocab.resolve_or_raise("grab") == 0


def test_forms_is_a_copy(tmp_path):
    vocab = _vocab(tmp_path, "id,key,instances,category\n0,tap,\"['tap']\",x\n")
    vocab.forms()["sink"] = 0
    assert vocab.resolve("sink") is None


def test_instances_are_read_as_text_even_when_numbers(tmp_path):
    vocab = _vocab(tmp_path, "id,key,instances,category\n0,seven,\"[7]\",x\n")
    assert vocab.instances[0] == ["7"] and vocab.resolve("7") == 0


def test_csv_header_drops_a_byte_order_mark(tmp_path):
    path = tmp_path / "EPIC_100_train.csv"
    path.write_bytes("id,key\n".encode("utf-8-sig"))
    assert csv_header(path) == ["id", "key"]


def test_a_folder_named_like_a_copy_is_not_offered_as_one(tmp_path):
    (tmp_path / "EPIC_100_train (1).csv").mkdir()
    assert renamed_copy(tmp_path / "EPIC_100_train.csv") is None
    copy = _touch(tmp_path / "EPIC_100_train copy.csv")
    assert renamed_copy(tmp_path / "EPIC_100_train.csv") == copy


def test_an_optional_column_a_row_lacks_reads_as_empty(tmp_path):
    path = _touch(tmp_path / "f.csv", "id,key,note\n0,a\n")
    assert read_csv(path, ("id", "key")) == [{"id": "0", "key": "a", "note": ""}]


def test_csv_header_of_a_file_that_is_not_utf8_is_empty(tmp_path):
    path = tmp_path / "EPIC_100_train.csv"
    path.write_bytes("id,clé\n".encode("latin-1"))
    assert csv_header(path) == []


def test_a_missing_class_column_is_named_unless_the_file_holds_times(tmp_path):
    """Only a header with stop_frame (and no narrations or classes) is taken for the test split's timestamps."""
    path = _touch(tmp_path / "f.csv", "narration_id,video_id\nP01_01_0,P01_01\n")
    with pytest.raises(LeapError) as e:
        read_csv(path, ("narration_id", "verb_class"))
    assert "missing column(s): verb_class" in str(e.value)
