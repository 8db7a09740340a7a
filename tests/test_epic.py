import json
import os
import shutil
from pathlib import Path

import pytest

from leap_cli.epic.annotations import Annotations, read_segments
from leap_cli.epic.classes import ClassVocab, parse_list_cell
from leap_cli.epic.hand_objects import (BBox, FrameDetections, HandDetection, HandSide, HandState, ObjectDetection,
                                        open_hand_objects, read_hand_objects, write_hand_objects)
from leap_cli.epic.layout import DatasetLayout
from leap_cli.epic.timing import format_timestamp, frame_filename, frame_to_time, parse_timestamp, time_to_frame
from leap_cli.errors import LeapError


def test_real_splits_parse(epic_dir):
    ann = Annotations(epic_dir)
    train, val, test = ann.segments("train"), ann.segments("validation"), ann.segments("test")
    assert len(train) == 30 and len(val) == 22 and len(test) == 20
    s = train[0]
    assert (s.narration_id, s.verb, s.verb_class, s.noun, s.noun_class) == ("P01_01_0", "open", 3, "door", 3)
    assert s.start == pytest.approx(0.14) and s.stop == pytest.approx(3.37)
    assert s.narration_timestamp == pytest.approx(1.089)
    assert s.all_nouns == ("door",) and s.all_noun_classes == (3,)
    # rows whose narration_timestamp cell is empty in the real file
    empty = [x for x in val if x.narration_id in ("P02_12_293", "P02_15_39")]
    assert len(empty) == 2 and all(x.narration_timestamp is None for x in empty)
    assert empty[0].noun == "ball:dough" and empty[0].start == pytest.approx(17 * 60 + 47.56)
    # test split: 8 columns, no labels
    assert not test[0].has_labels and test[0].verb_class is None and test[0].start_frame == 143


def test_every_real_synonym_resolves(epic_dir):
    for kind, count in (("verb", 97), ("noun", 300)):
        vocab = ClassVocab.from_csv(epic_dir / f"EPIC_100_{kind}_classes.csv", kind)
        assert len(vocab) == count
        n = 0
        for cid, instances in vocab.instances.items():
            assert vocab.resolve(vocab.key(cid)) == cid
            for form in instances:
                assert vocab.resolve(form) == cid, (kind, form)
                n += 1
        assert n > (900 if kind == "verb" else 2500)
    verbs = ClassVocab.from_csv(epic_dir / "EPIC_100_verb_classes.csv", "verb")
    nouns = ClassVocab.from_csv(epic_dir / "EPIC_100_noun_classes.csv", "noun")
    assert verbs.resolve("pick up") == verbs.resolve("grab") == 0 and verbs.key(0) == "take"
    assert verbs.resolve("rinse") == verbs.resolve("wash")
    assert nouns.resolve("onion:red") == nouns.resolve("red onion") == nouns.resolve("onion") == 16
    assert nouns.resolve("no-such-thing") is None
    with pytest.raises(LeapError, match="not in the noun classes"):
        nouns.resolve_or_raise("no-such-thing")


def test_a_class_written_with_underscores_resolves(epic_dir):
    """LLMs write verbs as identifiers ("turn_on"): they resolve as EPIC's hyphenated forms do, else a program
    naming them is rejected and repaired (another call) for a spelling."""
    verbs = ClassVocab.from_csv(epic_dir / "EPIC_100_verb_classes.csv", "verb")
    assert verbs.resolve("turn_on") == verbs.resolve("turn-on") == verbs.resolve("turn on") == 6
    assert verbs.resolve("Switch_On") == 6 and verbs.resolve("put_down") == verbs.resolve("put-down") == 1


def test_list_cells_are_parsed_without_eval():
    assert parse_list_cell("['plate', 'veg:mixed']") == ["plate", "veg:mixed"]
    assert parse_list_cell("[2, 10]") == [2, 10]
    with pytest.raises(LeapError):
        parse_list_cell("__import__('os').system('true')")


def test_tail_unseen_and_video_info(epic_dir):
    ann = Annotations(epic_dir)
    assert 10 in ann.tail_verbs and 56 in ann.tail_nouns
    assert ann.unseen_participants("val") == {"P18", "P32"}
    assert ann.fps("P01_01") == pytest.approx(59.94, abs=1e-2)
    with pytest.raises(LeapError, match="not in EPIC_100_video_info.csv"):
        ann.fps("P99_99")


@pytest.mark.parametrize("fps", [59.9400599400599, 50.0])
def test_frame_time_conversion(fps):
    # EPIC's first frame is frame 1 at t=0
    assert time_to_frame(0.0, fps) == 1
    assert frame_to_time(1, fps) == 0.0
    for frame in (1, 2, 113, 64053, 99999):
        assert time_to_frame(frame_to_time(frame, fps), fps) == frame
    assert time_to_frame(1.0, fps) == int(fps) + 1
    assert frame_filename(1) == "frame_0000000001.jpg"
    with pytest.raises(ValueError):
        frame_to_time(0, fps)


def test_real_frames_agree_with_timestamps(epic_dir):
    # In the test split the frame columns follow the timestamps at the video's fps. (Some older train/val rows
    # drift by tens of frames from their timestamps in the real files, which is why readers use the frame columns.)
    ann = Annotations(epic_dir)
    for s in ann.segments("test"):
        fps = ann.fps(s.video_id)
        assert abs(time_to_frame(s.start, fps) - s.start_frame) <= 2
        assert abs(time_to_frame(s.stop, fps) - s.stop_frame) <= 2


def test_timestamp_round_trip():
    assert parse_timestamp("00:01:06.08") == pytest.approx(66.08)
    assert format_timestamp(66.08) == "00:01:06.08"
    assert format_timestamp(3600 + 0.5, 3) == "01:00:00.500"
    for bad in ("1:2", "00:00:xx", "00:61:00.00", ""):
        with pytest.raises(ValueError):
            parse_timestamp(bad)


def _copy(epic_dir, tmp_path):
    dst = tmp_path / "annotations"
    shutil.copytree(epic_dir, dst)
    return dst


def test_missing_annotation_file(epic_dir, tmp_path):
    ann = Annotations(_copy(epic_dir, tmp_path))
    (ann.folder / "EPIC_100_train.csv").unlink()
    with pytest.raises(LeapError, match="annotation file not found") as e:
        ann.segments("train")
    assert "EPIC_100_train.csv" in str(e.value) and "beside the others" in e.value.fix  # (the folder is right)


def test_a_cut_or_bad_row_of_the_video_info_or_a_class_file_says_what_to_do(epic_dir, tmp_path):
    folder = _copy(epic_dir, tmp_path)
    info = folder / "EPIC_100_video_info.csv"
    rows = info.read_text().splitlines()
    info.write_text("\n".join(rows) + "\nP01_99,17.5")  # a cut last row: None in its last columns
    with pytest.raises(LeapError) as e:
        Annotations(folder).video_info
    assert e.value.record == f"row {len(rows) + 1}" and "(P01_99) has 2 of 4 fields" in e.value.message
    info.write_text("\n".join(rows) + "\nP01_99,17.5,fifty,1920x1080")  # all there, one value wrong
    with pytest.raises(LeapError) as e:
        Annotations(folder).video_info
    assert e.value.record == f"row {len(rows) + 1}" and "'P01_99'" in e.value.message
    verbs = folder / "EPIC_100_verb_classes.csv"
    lines = verbs.read_text().splitlines()
    verbs.write_text("\n".join(lines + ["99,xx"]) + "\n")  # a cut last row would have added a class
    with pytest.raises(LeapError, match=r"\(99\) has 2 of 4 fields \(no instances, category\)") as e:
        ClassVocab.from_csv(verbs, "verb")
    assert e.value.record == f"row {len(lines) + 1}" and "cut" in e.value.fix
    lines[1] = "x" + lines[1][lines[1].index(","):]
    verbs.write_text("\n".join(lines) + "\n")
    with pytest.raises(LeapError, match="id 'x' is not an integer") as e:
        ClassVocab.from_csv(verbs, "verb")
    assert e.value.record == "row 2" and e.value.fix


def test_misspelt_column(epic_dir, tmp_path):
    folder = _copy(epic_dir, tmp_path)
    p = folder / "EPIC_100_validation.csv"
    p.write_text(p.read_text().replace("start_timestamp", "start_timestmp", 1))
    with pytest.raises(LeapError, match=r"missing column\(s\): start_timestamp \(found 'start_timestmp'\?\)"):
        read_segments(p)
    # a column dropped, not misspelt: no other required column offered as its spelling
    header, rest = (folder / "EPIC_100_validation.csv").read_text().split("\n", 1)
    p.write_text(header.replace("start_timestmp", "start_timestamp").replace(",stop_timestamp", "") + "\n")
    with pytest.raises(LeapError) as e:
        read_segments(p)
    assert "missing column(s): stop_timestamp" in e.value.message and "found" not in e.value.message


def test_a_csv_separated_by_semicolons_says_so(epic_dir, tmp_path):
    """Saved by a spreadsheet in a locale that separates with ';': every column was listed as missing, twice (QA)."""
    import csv

    folder = _copy(epic_dir, tmp_path)
    p = folder / "EPIC_100_validation.csv"
    rows = list(csv.reader(p.open(newline="")))
    rows[1][13:15] = ["['tap', 'water']", "[0, 5]"]  # (fields that hold commas: split by the header's commas)
    for sep in (";", "\t"):
        with p.open("w", newline="") as f:
            csv.writer(f, delimiter=sep).writerows(rows)
        with pytest.raises(LeapError) as e:
            read_segments(p)
        assert e.value.message == f"the header's columns are separated by {sep!r}, not commas", e.value.one_line()
        assert "save it as comma-separated CSV" in e.value.fix
        # the header kept as it was, the rows saved with ';' (QA: "a cut or damaged line")
        with p.open("w", newline="") as f:
            csv.writer(f).writerow(rows[0])
            csv.writer(f, delimiter=sep).writerows(rows[1:])
        with pytest.raises(LeapError) as e:
            read_segments(p)
        assert e.value.record == "row 2" and e.value.message.endswith(f": its fields are separated by {sep!r}, not "
                                                                      "commas"), e.value.one_line()


def test_the_test_timestamps_under_another_splits_name_say_so(epic_dir, tmp_path):
    """EPIC_100_test_timestamps.csv saved as EPIC_100_validation.csv listed the label columns as missing (QA)."""
    import csv
    import shutil

    folder = _copy(epic_dir, tmp_path)
    shutil.copy(Path(__file__).parent / "data" / "epic100" / "EPIC_100_test_timestamps.csv",
                folder / "EPIC_100_validation.csv")
    with pytest.raises(LeapError) as e:
        Annotations(folder).segments("val")
    assert e.value.message == "it holds times but no narrations or classes, as EPIC_100_test_timestamps.csv does"
    assert "put EPIC's EPIC_100_validation.csv there" in e.value.fix
    # a file with narrations, its class columns lost, is not said to be the test split's (QA)
    rows = list(csv.reader((epic_dir / "EPIC_100_validation.csv").open(newline="")))
    drop = {rows[0].index("verb"), rows[0].index("verb_class")}
    with (folder / "EPIC_100_validation.csv").open("w", newline="") as f:
        csv.writer(f).writerows([[v for i, v in enumerate(r) if i not in drop] for r in rows])
    with pytest.raises(LeapError) as e:
        Annotations(folder).segments("val")
    assert e.value.message.startswith("missing column(s): verb"), e.value.one_line()


def test_bad_timestamp_names_file_and_row(epic_dir, tmp_path):
    folder = _copy(epic_dir, tmp_path)
    p = folder / "EPIC_100_validation.csv"
    lines = p.read_text().splitlines()
    lines[3] = lines[3].replace("00:00:49.15", "00:00:4x.15", 1)
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(LeapError) as e:
        read_segments(p)
    msg = str(e.value)
    assert "EPIC_100_validation.csv" in msg and "row 4" in msg and "HH:MM:SS" in msg


def test_stop_before_start(epic_dir, tmp_path):
    folder = _copy(epic_dir, tmp_path)
    p = folder / "EPIC_100_test_timestamps.csv"
    lines = p.read_text().splitlines()
    f = lines[1].split(",")
    f[4], f[5] = f[5], f[4]
    lines[1] = ",".join(f)
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(LeapError, match=r"\[row 2, P01_101_0\]: stop .* is before start"):
        read_segments(p)
    # blank lines count as an editor counts them (the rows were numbered as the reader returned them)
    p.write_text("\n".join([lines[0], "", ""] + lines[1:]) + "\n")
    with pytest.raises(LeapError, match=r"\[row 4, P01_101_0\]: stop .* is before start"):
        read_segments(p)
    info = folder / "EPIC_100_video_info.csv"
    rows = info.read_text().splitlines()
    info.write_text("\n".join(rows[:2] + [""] + [rows[2].replace(",", ",-", 1)] + rows[3:]) + "\n")
    with pytest.raises(LeapError, match=r"\[row 4\]: .*no positive duration/fps/resolution"):
        Annotations(folder).video_info


def test_frame_columns_counted_from_0_or_reversed_are_refused(epic_dir, tmp_path):
    """EPIC counts frames from 1; a row with start_frame 0 was read (the camera said its window starts before the
    video, build-shards packed it anyway: QA), and reversed frame columns went unsaid."""
    import csv

    folder = _copy(epic_dir, tmp_path)
    p = folder / "EPIC_100_test_timestamps.csv"
    rows = list(csv.reader(p.open(newline="")))
    col = {name: i for i, name in enumerate(rows[0])}
    rows[1][col["start_frame"]] = "0"
    rows[2][col["start_frame"]], rows[2][col["stop_frame"]] = rows[2][col["stop_frame"]], rows[2][col["start_frame"]]
    with p.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    with pytest.raises(LeapError) as e:
        read_segments(p)
    msg = e.value.one_line()
    assert f"row 2, {rows[1][0]}: start_frame 0: EPIC counts frames from 1" in msg, msg
    assert f"row 3, {rows[2][0]}: stop_frame {rows[2][col['stop_frame']]} is before start_frame" in msg, msg


def test_a_stop_frame_one_before_the_start_frame_is_refused(epic_dir, tmp_path):
    """Reversed by one frame (a stop_frame typed off by one) is reversed too: the clip would have no frames."""
    from tests.csv_rows import edit_csv

    folder = _copy(epic_dir, tmp_path)
    p = folder / "EPIC_100_test_timestamps.csv"
    rows = edit_csv(p, lambda rows: rows[0].update(stop_frame=str(int(rows[0]["start_frame"]) - 1)))
    with pytest.raises(LeapError) as e:
        read_segments(p)
    assert e.value.record == f"row 2, {rows[0]['narration_id']}"
    assert e.value.message == f"stop_frame {rows[0]['stop_frame']} is before start_frame {rows[0]['start_frame']}"


def test_equal_frame_columns_are_a_row_of_no_length(epic_dir):
    """A row whose frame columns are equal but whose timestamps are not is a single frame in an rgb_frames folder:
    the row notes say so, as for equal timestamps."""
    from dataclasses import replace

    ann = Annotations(epic_dir)
    seg = ann.segments("val")[0]
    assert seg.stop > seg.start and not ann.row_notes([seg])
    notes = ann.row_notes([replace(seg, stop_frame=seg.start_frame)])
    assert any(n.startswith(f"1 row of no length (stop equals start, in seconds or in frames) (e.g. "
                            f"{seg.narration_id}: {seg.start:.2f}-{seg.stop:.2f} s, frames {seg.start_frame}-"
                            f"{seg.start_frame})") for n in notes), notes


def test_a_narration_id_twice_names_both_rows(epic_dir, tmp_path):
    folder = _copy(epic_dir, tmp_path)
    p = folder / "EPIC_100_validation.csv"
    lines = p.read_text().splitlines()
    p.write_text("\n".join(lines + [lines[2]]) + "\n")  # the second segment again at the end (two copies merged)
    nid = lines[2].split(",")[0]
    with pytest.raises(LeapError, match=rf"\[row {len(lines) + 1}, {nid}\]: narration id {nid} is also on row 3"):
        read_segments(p)


def test_every_bad_row_is_named_in_one_error(epic_dir, tmp_path):
    """One error per run meant one rerun per bad row; the rows are read on, and the error names them all."""
    import csv

    folder = _copy(epic_dir, tmp_path)
    p = folder / "EPIC_100_validation.csv"
    with open(p, newline="") as f:
        rows = list(csv.reader(f))
    col = {name: i for i, name in enumerate(rows[0])}
    for r in (2, 4, 5, 7, 9):  # file rows 3, 5, 6, 8, 10
        rows[r][col["start_frame"]] = "x"
    rows[4][col["start_timestamp"]] = "0a:00:01.00"  # the same row twice wrong: its first problem is said
    with open(p, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    with pytest.raises(LeapError) as e:
        read_segments(p)
    msg = e.value.one_line()
    assert msg.startswith(f"{p}: 5 rows cannot be read: row 3, {rows[2][0]}: column start_frame holds 'x'"), msg
    assert f"; row 5, {rows[4][0]}: column start_timestamp holds '0a:00:01.00'" in msg
    assert f"; row 6, {rows[5][0]}: column start_frame" in msg and "; and 2 more" in msg and "row 8" not in msg
    assert msg.endswith("(fix or remove those rows)"), msg
    # class ids checked against the class files: every row too
    with open(p, "w", newline="") as f:
        good = [list(r) for r in rows]
        for r in (2, 4, 5, 7, 9):
            good[r][col["start_frame"]] = "1"
            good[r][col["start_timestamp"]] = "00:00:01.00"
        good[3][col["verb_class"]] = "999"
        good[6][col["noun_class"]] = "9999"
        good[8][col["stop_frame"]] = "y"
        csv.writer(f).writerows(good)
    with pytest.raises(LeapError) as e:  # in the same pass as the rows that do not parse (it took a second)
        Annotations(folder).segments("val")
    msg = e.value.one_line()
    assert (f"3 rows cannot be read: row 4, {good[3][0]}: verb_class 999 is not a class of EPIC_100_verb_classes.csv"
            in msg and f"; row 7, {good[6][0]}: noun_class 9999 is not a class" in msg), msg
    assert f"; row 9, {good[8][0]}: column stop_frame holds 'y'" in msg and msg.endswith("(fix or remove those rows)")


def test_layout_errors(tmp_path):
    with pytest.raises(LeapError, match="dataset root not found"):
        DatasetLayout.open(tmp_path / "nope")
    with pytest.raises(LeapError, match="annotations folder not found"):
        DatasetLayout.open(tmp_path)
    # EPIC's download (ROOT/EPIC-KITCHENS/P01) beside a clone of the annotations repository under its own name:
    # both places looked in are named, and the clone (QA: only ROOT/EPIC-KITCHENS/annotations was named)
    dl = tmp_path / "dl"
    (dl / "EPIC-KITCHENS" / "P01").mkdir(parents=True)
    (dl / "epic-kitchens-100-annotations").mkdir()
    (dl / "epic-kitchens-100-annotations" / "EPIC_100_train.csv").write_text("narration_id\n")
    with pytest.raises(LeapError) as e:
        DatasetLayout.open(dl)
    assert f"(looked in {dl / 'annotations'} and {dl / 'EPIC-KITCHENS' / 'annotations'})" in e.value.message
    assert e.value.fix.startswith(f"pass --annotations {dl / 'epic-kitchens-100-annotations'} (EPIC's CSVs are there)")
    with pytest.raises(LeapError) as e:  # the download folder itself given: the clone beside it (QA)
        DatasetLayout.open(dl / "EPIC-KITCHENS")
    assert e.value.fix.startswith(f"pass --annotations {dl / 'epic-kitchens-100-annotations'}"), e.value.fix
    with pytest.raises(LeapError) as e:  # --annotations given: that folder, not the places it did not look (review)
        DatasetLayout.open(dl, dl / "anotations")
    assert e.value.message == "annotations folder not found" and "--annotations" in e.value.fix
    assert e.value.path == str(dl / "anotations")
    csv = dl / "epic-kitchens-100-annotations" / "EPIC_100_train.csv"
    with pytest.raises(LeapError) as e:  # a CSV given for the folder (QA: "annotations folder not found")
        DatasetLayout.open(dl, csv)
    assert e.value.message == "--annotations names a file, not the folder of EPIC's CSVs"
    assert e.value.fix == f"pass the folder that holds it: --annotations {csv.parent}"
    (dl / "annotations").mkdir()  # made and left empty, the clone beside it (QA: "EPIC_100_verb_classes.csv: file
    with pytest.raises(LeapError) as e:  # not found", no word of the clone)
        DatasetLayout.open(dl)
    assert e.value.message == "the annotations folder holds no EPIC_100_*.csv" and e.value.fix.startswith(
        f"pass --annotations {dl / 'epic-kitchens-100-annotations'} (EPIC's CSVs are there)"), e.value
    shutil.rmtree(dl / "epic-kitchens-100-annotations")  # no clone: each stage names the file it lacks there
    assert DatasetLayout.open(dl).annotations_dir == dl / "annotations"
    # --data pointed at the annotations folder itself: said, with the root to give
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "EPIC_100_validation.csv").write_text("narration_id\n")
    with pytest.raises(LeapError, match="holds EPIC's CSVs itself") as e:
        DatasetLayout.open(tmp_path / "annotations")
    assert f"--data {tmp_path}" in e.value.fix
    here = os.getcwd()
    try:  # from inside it, `--data .`: the root to give is its parent, not "." again
        os.chdir(tmp_path / "annotations")
        with pytest.raises(LeapError, match="holds EPIC's CSVs itself") as e:
            DatasetLayout.open(Path("."))
        assert f"--data {tmp_path}" in e.value.fix
    finally:
        os.chdir(here)


def _frames():
    return [FrameDetections("P01_01", 1,
                            [HandDetection(BBox(0.1, 0.5, 0.3, 0.9), 0.98, HandState.PORTABLE_OBJECT, (0.05, -0.1),
                                           HandSide.LEFT),
                             HandDetection(BBox(0.6, 0.5, 0.8, 0.95), 0.7, HandState.NO_CONTACT, (0.0, 0.0),
                                           HandSide.RIGHT)],
                            [ObjectDetection(BBox(0.12, 0.4, 0.25, 0.6), 0.66)]),
            FrameDetections("P01_01", 2, [], [])]


@pytest.mark.parametrize("suffix", [".pkl", ".jsonl"])
def test_hand_objects_round_trip(tmp_path, suffix):
    path = tmp_path / f"P01_01{suffix}"
    write_hand_objects(path, _frames())
    back = read_hand_objects(path)
    assert [f.frame_number for f in back] == [1, 2]
    h = back[0].hands[0]
    assert h.side is HandSide.LEFT and h.state is HandState.PORTABLE_OBJECT
    assert h.bbox.left == pytest.approx(0.1) and h.object_offset[1] == pytest.approx(-0.1)
    assert back[0].hands[1].state is HandState.NO_CONTACT and back[0].objects[0].score == pytest.approx(0.66)


def test_box_iou_is_intersection_over_union():
    """The overlap that decides which labelled box names a contact (IoU >= 0.3): 1 for a box on itself, 1/3 for
    two boxes sharing half their width, 0 for boxes apart."""
    a = BBox(0.0, 0.0, 0.2, 0.2)
    assert a.iou(BBox(0.0, 0.0, 0.2, 0.2)) == 1.0
    assert a.iou(BBox(0.1, 0.0, 0.3, 0.2)) == pytest.approx(1 / 3)
    assert a.iou(BBox(0.5, 0.5, 0.7, 0.7)) == 0.0


@pytest.mark.parametrize("suffix", [".pkl", ".jsonl"])
def test_a_frame_given_twice_in_a_hand_object_file_is_its_last_message(tmp_path, suffix):
    """A file holding a frame twice (detections rerun on some frames and appended): the later message is the frame,
    as documented for ``open_hand_objects``."""
    first, again = _frames()[0], FrameDetections("P01_01", 1, [], [ObjectDetection(BBox(0.5, 0.5, 0.6, 0.6), 0.8)])
    path = tmp_path / f"P01_01{suffix}"
    write_hand_objects(path, [first, _frames()[1], again])
    frames = open_hand_objects(path, "P01_01")
    assert sorted(frames) == [1, 2] and frames[1].hands == [] and frames[1].objects[0].score == pytest.approx(0.8)


def test_hand_objects_jsonl_takes_epics_numbers_for_state_and_side(tmp_path):
    """A JSONL written with EPIC's numbers ("state": 3, "side": 1, as its protobuf and IntEnums have them) failed
    every segment with "KeyError: 0"; names and numbers now read alike, and a bad one names the choices."""
    names = tmp_path / "names" / "P01_01.jsonl"
    names.parent.mkdir()
    write_hand_objects(names, _frames())
    numbers = tmp_path / "P01_01.jsonl"
    lines = [json.loads(x) for x in names.read_text().splitlines()]
    for d in lines:
        for h in d["hands"]:
            h["state"], h["side"] = int(HandState[h["state"]]), int(HandSide[h["side"]])
    numbers.write_text("".join(json.dumps(d) + "\n" for d in lines))
    assert read_hand_objects(numbers) == read_hand_objects(names)
    lines[0]["hands"][0]["state"] = 7
    numbers.write_text("".join(json.dumps(d) + "\n" for d in lines))
    with pytest.raises(LeapError, match=r"line 1 is not a frame of detections \(ValueError: state 7 is none of "
                                        r"NO_CONTACT \(0\), .*STATIONARY_OBJECT \(4\)\)"):
        read_hand_objects(numbers)


def test_hand_objects_protobuf_wire_format():
    # Hand-assembled bytes of Detections{video_id: "a", frame_number: 3, objects: [{bbox: {left: 0.5}, score: 1.0}]}
    bbox = bytes([0x0D]) + b"\x00\x00\x00\x3f"  # field 1 fixed32 0.5
    obj = bytes([0x0A, len(bbox)]) + bbox + bytes([0x15]) + b"\x00\x00\x80\x3f"
    msg = bytes([0x0A, 1]) + b"a" + bytes([0x10, 3]) + bytes([0x22, len(obj)]) + obj
    f = FrameDetections.from_protobuf(msg)
    assert (f.video_id, f.frame_number, f.objects[0].bbox.left, f.objects[0].score) == ("a", 3, 0.5, 1.0)
    assert FrameDetections.from_protobuf(f.to_protobuf()) == f


def test_hand_objects_fields_omitted_or_out_of_order_decode_as_in_order():
    # A box with a zero side (proto3 omits it), a LEFT hand with no contact and no offset (all defaults omitted):
    # the general path; the same box with all four fields in order: the one-unpack fast path.
    f = FrameDetections("P01_01", 7, [HandDetection(BBox(0.0, 0.25, 0.5, 1.0), 0.5, HandState.NO_CONTACT, (0.0, 0.0),
                                                    HandSide.LEFT)],
                        [ObjectDetection(BBox(0.125, 0.25, 0.5, 0.75), 0.75)])
    assert FrameDetections.from_protobuf(f.to_protobuf()) == f
    box = bytes([0x25]) + b"\x00\x00\x40\x3f" + bytes([0x0D]) + b"\x00\x00\x00\x3e"  # bottom 0.75, then left 0.125
    obj = bytes([0x0A, len(box)]) + box
    g = FrameDetections.from_protobuf(bytes([0x10, 7, 0x22, len(obj)]) + obj)
    assert g.objects[0].bbox == BBox(0.125, 0.0, 0.0, 0.75) and g.frame_number == 7


def test_open_hand_objects_decodes_a_frame_when_it_is_looked_up(tmp_path, monkeypatch):
    import pickle

    frames = _frames() + [FrameDetections("P01_01", 5, [], [ObjectDetection(BBox(0.1, 0.1, 0.2, 0.2), 0.9)])]
    p = tmp_path / "P01_01.pkl"
    write_hand_objects(p, frames)
    calls = []
    real = FrameDetections.from_protobuf.__func__
    monkeypatch.setattr(FrameDetections, "from_protobuf",
                        classmethod(lambda cls, data: calls.append(1) or real(cls, data)))
    read = read_hand_objects(p)  # float32 on the wire
    calls.clear()
    m = open_hand_objects(p)
    assert sorted(m) == [1, 2, 5] and 5 in m and 3 not in m and not calls  # frame numbers only
    assert m[5] == read[2] and m[5] is m[5] and len(calls) == 1  # decoded once, on the first lookup
    assert [m[n] for n in (1, 2)] == read[:2]
    # a message broken after its frame number: the file opens, and looking that frame up names the message
    msgs = [fr.to_protobuf() for fr in frames]
    msgs[1] += bytes([0x1A, 0x40])  # a hand of 64 bytes that are not there
    p.write_bytes(pickle.dumps(msgs))
    m = open_hand_objects(p)
    assert m[1] == read[0]
    with pytest.raises(LeapError, match=r"\[frame 2 \(message 1\)\].*message 1 is not a Detections protobuf"):
        m[2]
    p.write_bytes(pickle.dumps([b"\x0a\x50abc"]))  # no frame number to be found
    with pytest.raises(LeapError, match=r"\[message 0\].*not a Detections protobuf"):
        open_hand_objects(p)


@pytest.mark.parametrize("suffix", [".pkl", ".jsonl"])
def test_a_hand_object_file_of_another_video_is_named(tmp_path, suffix):
    p = tmp_path / f"P01_03{suffix}"  # P01_01's detections copied under P01_03's name
    write_hand_objects(p, _frames())
    with pytest.raises(LeapError, match=r"P01_03.*\[frame 1\].*holds the detections of video P01_01, not of P01_03"):
        open_hand_objects(p, "P01_03")[1]
    assert open_hand_objects(p)[1].video_id == "P01_01"  # (without the video asked for: read as it is)


def test_hand_objects_wrong_format(tmp_path):
    import pickle

    p = tmp_path / "x.pkl"
    p.write_bytes(b"not a pickle")
    with pytest.raises(LeapError, match="not a hand-object detections pickle"):
        read_hand_objects(p)
    p.write_bytes(pickle.dumps({"frames": 1}))
    with pytest.raises(LeapError, match="list of serialized messages"):
        read_hand_objects(p)
    p.write_bytes(pickle.dumps([b"\x0a\x50abc"]))
    with pytest.raises(LeapError, match=r"\[message 0\].*not a Detections protobuf"):
        read_hand_objects(p)
    j = tmp_path / "x.jsonl"
    j.write_text('{"video_id": "P01_01"}\n')
    with pytest.raises(LeapError, match=r"line 1"):
        read_hand_objects(j)


def test_unknown_class_id_names_file_and_row(epic_dir, tmp_path):
    folder = _copy(epic_dir, tmp_path)
    p = folder / "EPIC_100_validation.csv"
    lines = p.read_text().splitlines()
    header = lines[0].split(",")
    f = lines[2].split(",")
    f[header.index("verb_class")] = "999"
    lines[2] = ",".join(f)
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(LeapError) as e:
        Annotations(folder).segments("val")
    msg = e.value.one_line()
    assert f"EPIC_100_validation.csv [row 3, {f[0]}]: verb_class 999 is not a class of EPIC_100_verb_classes.csv" in msg
    assert Annotations(folder).segments("train")  # the other splits still read


def test_an_unknown_id_in_all_noun_classes_names_that_column_and_row(epic_dir, tmp_path):
    """all_noun_classes is checked against the noun classes as noun_class is: an id there that is no class would
    crash training's multi-noun targets much later."""
    from tests.csv_rows import edit_csv

    folder = _copy(epic_dir, tmp_path)
    rows = edit_csv(folder / "EPIC_100_validation.csv",
                    lambda rows: rows[1].update(all_noun_classes=f"[{rows[1]['noun_class']}, 9999]"))
    with pytest.raises(LeapError) as e:
        Annotations(folder).segments("val")
    assert e.value.record == f"row 3, {rows[1]['narration_id']}"
    assert e.value.message.startswith("all_noun_classes 9999 is not a class of EPIC_100_noun_classes.csv"), e.value


def test_labelled_split_without_label_columns_is_an_error(epic_dir, tmp_path):
    import csv

    folder = _copy(epic_dir, tmp_path)
    p = folder / "EPIC_100_train.csv"
    rows = list(csv.DictReader(p.open()))
    keep = [c for c in rows[0] if c not in ("verb_class", "noun_class")]
    with p.open("w", newline="") as f:
        w = csv.DictWriter(f, keep, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(LeapError, match=r"missing column\(s\): verb_class.*noun_class"):
        Annotations(folder).segments("train")
    assert not Annotations(folder).segments("test")[0].has_labels  # the test split needs none


def test_list_cells_read_by_pattern_equal_their_python_literal():
    import ast
    import csv
    from pathlib import Path

    cells = ["[]", "[ ]", "['tap']", "['plate', 'veg:mixed']", '["chef\'s knife", \'board\']', "[2, 10]",
             "[ 3 , -4 ]", "('x',)", "['a\\\\b']"]
    with open(Path(__file__).parent / "data" / "epic" / "EPIC_100_validation_excerpt.csv", encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            cells += [row["all_nouns"], row["all_noun_classes"]]
    for cell in cells:
        assert parse_list_cell(cell) == list(ast.literal_eval(cell)), cell
    with pytest.raises(LeapError, match="cannot parse list"):
        parse_list_cell("['unclosed")


def test_one_segment_is_found_without_parsing_the_split(epic_dir, monkeypatch):
    """`leap show` on a train segment parsed EPIC's 67k train rows (3.3 s) to check one record's labels."""
    import leap_cli.epic.annotations as annotations

    whole = Annotations(epic_dir)
    want = {s.narration_id: s for split in ("train", "val", "test") for s in whole.segments(split)}
    parsed = []
    segment = annotations._segment
    monkeypatch.setattr(annotations, "_segment", lambda row, *a: parsed.append(1) or segment(row, *a))
    ann = Annotations(epic_dir)
    for split, nid in (("train", "P01_01_0"), ("validation", "P02_12_293"), ("test", next(
            s.narration_id for s in whole.segments("test")))):
        assert ann.segment(split, nid) == want[nid]
    assert ann.segment("train", "P99_99_9") is None and len(parsed) == 3  # the matching rows alone
    ann.segments("train")
    assert ann.segment("train", "P01_01_0") == want["P01_01_0"]  # (from the split read meanwhile)


@pytest.mark.parametrize("name", ["EPIC_100_validation (1).csv", "EPIC_100_validation.csv.csv",
                                  "epic_100_validation.CSV", "EPIC_100_validation - Copy.csv",
                                  "EPIC_100_validation 2.csv"])  # (macOS Finder's duplicate)
def test_a_split_csv_under_a_name_a_browser_gave_it_is_named(tmp_path, epic_dir, name):
    folder = tmp_path / "annotations"
    folder.mkdir()
    shutil.copy(epic_dir / "EPIC_100_verb_classes.csv", folder)
    (folder / "EPIC_100_validation_missing_timestamp_narrations.csv").write_text("narration_id\n")  # not it
    (folder / name).write_text("narration_id\n")
    with pytest.raises(LeapError) as e:
        Annotations(folder).segments("val")
    assert e.value.message == "annotation file not found" and e.value.fix == f"rename {name} there to " \
                                                                            "EPIC_100_validation.csv", e.value
