"""The objects descriptor's logic at its edges: summarising per-frame boxes (times, shares, positions, the hand an
object is near), reading labelled detections, CLIP naming's pure parts (crops, prompts, the narration prior,
top-k), the objects component's wiring of a detector and a namer (stand-ins, no model), and the naming scores.
Expected values are worked out by hand from the inputs."""

from __future__ import annotations

import json
from types import SimpleNamespace as NS

import numpy as np
import pytest

from leap_cli.epic.annotations import Segment
from leap_cli.epic.hand_objects import BBox
from leap_cli.errors import LeapError
from leap_cli.extract.base import SegmentContext
from leap_cli.extract.detections import LabelledBox, in_segment, position_word, read_object_detections
from leap_cli.extract.naming_score import score_against_narration, score_against_truth
from leap_cli.extract.objects import objects_text, objects_timeline, order_objects, spread, summarise_objects


# --- naming scores -----------------------------------------------------------------------------------------

def _rec(nid, contacts, objects=(), hands_status="ok", left=()):
    hands = ({"status": "ok", "data": {"hands": [{"hand": "right", "contacts": list(contacts)},
                                                  {"hand": "left", "contacts": list(left)}]}}
             if hands_status == "ok" else {"status": hands_status, "data": {"reason": "no hand-object file"}})
    return {"narration_id": nid, "components": {
        "hands": hands, "objects": {"status": "ok", "data": {"objects": [{"label": o} for o in objects]}}}}


def test_scores_of_nothing_are_none_not_zero():
    fig = score_against_truth([], {})
    assert fig["held"]["precision"] is None and fig["held"]["recall"] is None
    assert fig["segment_objects"]["precision"] is None and fig["segment_objects"]["recall"] is None
    assert score_against_narration([], {}, None)["top1"] is None


def test_a_record_whose_hands_are_unavailable_names_no_contact():
    truth = {"a": {"contacts": [{"hand": "right", "start": 0.0, "stop": 1.0, "object": "knife"}], "objects": []}}
    fig = score_against_truth([_rec("a", [], hands_status="unavailable")], truth)
    assert fig["held"]["named_contacts"] == 0 and fig["held"]["true_contacts"] == 1 and fig["held"]["recall"] == 0.0


def test_a_contact_is_scored_against_the_true_contacts_of_its_own_hand_only():
    # the cup is held by the left hand; the record says the right hand holds a cup at the same time
    truth = {"a": {"contacts": [{"hand": "left", "start": 0.0, "stop": 1.0, "object": "cup"}], "objects": []}}
    rec = _rec("a", [{"start": 0.0, "stop": 1.0, "object": "cup", "named_by": None}])
    held = score_against_truth([rec], truth)["held"]
    assert held["named_contacts"] == 1 and held["precision"] == 0.0
    assert held["confusions"] == {"(no true contact)->cup": 1}
    assert held["recall"] == 0.0  # the left hand's cup was not found: the right hand's does not count
    assert held["named_by"] == {"none": 1}  # an unnamed source is counted as "none"


def test_contacts_that_only_touch_in_time_do_not_overlap():
    truth = {"a": {"contacts": [{"hand": "right", "start": 0.0, "stop": 1.0, "object": "cup"}], "objects": []}}
    rec = _rec("a", [{"start": 1.0, "stop": 2.0, "object": "cup", "named_by": "x"}])
    held = score_against_truth([rec], truth)["held"]
    assert held["precision"] == 0.0 and held["recall"] == 0.0


def test_every_confusion_up_to_eight_is_listed():
    truth = {"a": {"contacts": [{"hand": "right", "start": float(i), "stop": i + 1.0, "object": o}
                                for i, o in enumerate(("cup", "pan", "lid"))], "objects": []}}
    rec = _rec("a", [{"start": i + 0.1, "stop": i + 0.9, "object": o, "named_by": "x"}
                     for i, o in enumerate(("plate", "pot", "lid"))])
    held = score_against_truth([rec], truth)["held"]
    assert held["confusions"] == {"cup->plate": 1, "pan->pot": 1}
    assert held["precision"] == round(1 / 3, 4) and held["recall"] == round(1 / 3, 4)


def test_top1_is_the_first_clip_name_only():
    from leap_cli.epic.classes import ClassVocab
    from tests.conftest import EPIC_EXCERPT

    vocab = ClassVocab.from_csv(EPIC_EXCERPT / "EPIC_100_noun_classes.csv", "noun")
    knife = vocab.resolve("knife")
    seg = Segment("a", "P01", "P01_01", 0, 2, 1, 100, noun="knife", noun_class=knife, all_noun_classes=(knife,))
    rec = _rec("a", [{"start": 0, "stop": 1, "object": "cup", "named_by": "clip",
                      "names_without_prior": [{"noun": "cup", "score": 0.5}, {"noun": "knife", "score": 0.4}]}])
    fig = score_against_narration([rec], {"a": seg}, vocab)
    assert (fig["contacts"], fig["top1"], fig["top5"]) == (1, 0.0, 1.0)


# --- summarise_objects --------------------------------------------------------------------------------------

def _ctx(stop=2.0, fps=50.0, **kw):
    seg = Segment("P01_01_0", "P01", "P01_01", 0.0, stop, 1, int(stop * 50), **kw)
    return SegmentContext(layout=None, segment=seg, fps=fps)


def _box(label, x0, y0, x1, y1, score=0.9, names=None):
    return LabelledBox(label, BBox(x0, y0, x1, y1), score, names)


def _hand(side, cx, cy, score=0.9):
    return NS(bbox=BBox(cx - 0.0625, cy - 0.0625, cx + 0.0625, cy + 0.0625), score=score, side=NS(name=side))


def _objects(per_frame, hands=None, stop=2.0, threshold=0.5):
    objects, _ = summarise_objects(per_frame, _ctx(stop), hands, threshold)
    return {o["label"]: o for o in objects}


def test_times_run_from_first_sight_to_one_step_past_the_last_capped_at_the_segment_end():
    # frames 1, 26, 51, 76 at 50 per second: 0.0, 0.5, 1.0, 1.5 s; one step is 0.5 s
    cup, pan = _box("cup", 0.1, 0.1, 0.2, 0.2), _box("pan", 0.1, 0.1, 0.2, 0.2)
    objs = _objects({1: [cup], 26: [cup], 51: [], 76: [pan]}, stop=1.8)
    assert (objs["cup"]["start"], objs["cup"]["stop"], objs["cup"]["share"]) == (0.0, 1.0, 0.5)
    assert (objs["pan"]["start"], objs["pan"]["stop"], objs["pan"]["share"]) == (1.5, 1.8, 0.25)


def test_the_step_is_the_median_frame_gap_and_one_epic_frame_for_a_single_frame():
    cup = _box("cup", 0.1, 0.1, 0.2, 0.2)
    # gaps 0.5, 0.5, 0.1 s: the median step is 0.5 s
    assert _objects({1: [cup], 26: [], 51: [], 56: []})["cup"]["stop"] == 0.5
    assert _objects({11: [cup]})["cup"]["stop"] == round(0.2 + 1 / 50, 3)  # frame 11 at 0.2 s, one frame long


def test_share_score_and_position_average_over_the_frames_seen():
    objs = _objects({1: [_box("cup", 0.0, 0.4, 0.2, 0.6, 0.6)], 26: [_box("cup", 0.8, 0.4, 1.0, 0.6, 0.9)],
                     51: [_box("cup", 0.8, 0.4, 1.0, 0.6, 0.9)]})
    cup = objs["cup"]
    assert cup["share"] == 1.0 and cup["score"] == 0.8  # (0.6 + 0.9 + 0.9) / 3
    assert cup["position"] == "centre"  # mean centre x (0.1 + 0.9 + 0.9) / 3 = 0.63: not the first frame's left
    one_in_three = _objects({1: [_box("pan", 0.1, 0.1, 0.2, 0.2)], 26: [], 51: []})["pan"]
    assert one_in_three["share"] == 0.333


def test_the_strongest_box_of_a_label_in_a_frame_is_the_one_counted():
    objs = _objects({1: [_box("cup", 0.0, 0.4, 0.2, 0.6, 0.6), _box("cup", 0.8, 0.4, 1.0, 0.6, 0.9)]})
    assert objs["cup"]["score"] == 0.9 and objs["cup"]["position"] == "right"


def test_a_box_at_the_threshold_counts_and_position_is_from_x_not_y():
    objs = _objects({1: [_box("cup", 0.0, 0.8, 0.2, 1.0, 0.5)]}, threshold=0.5)
    assert set(objs) == {"cup"} and objs["cup"]["position"] == "left"  # left of the frame, at its bottom


def _near(hands_at, box=(0.4375, 0.4375, 0.5625, 0.5625)):
    """near_hand of a cup (centre 0.5, 0.5 by default) with the hands of each frame given."""
    per_frame = {n: [_box("cup", *box)] for n in hands_at}
    hands = {n: NS(hands=hs) for n, hs in hands_at.items()}
    return _objects(per_frame, hands)["cup"]["near_hand"]


def test_near_is_strictly_within_a_quarter_frame_of_a_hand_scored_over_the_threshold():
    assert _near({1: [_hand("RIGHT", 0.74, 0.5)]}) == "right"
    assert _near({1: [_hand("RIGHT", 0.75, 0.5)]}) is None  # exactly 0.25 away
    assert _near({1: [_hand("RIGHT", 0.8, 0.5)]}) is None  # 0.3 away
    assert _near({1: [_hand("RIGHT", 0.5625, 0.5, score=0.5)]}) is None  # a hand scored at the threshold


def test_near_is_the_nearest_hand_by_distance_in_both_axes():
    assert _near({1: [_hand("LEFT", 0.375, 0.5), _hand("RIGHT", 0.5625, 0.5)]}) == "right"
    # cup centre (0.5, 0.25), the hand 0.125 to its right: near (x and y are not swapped)
    assert _near({1: [_hand("RIGHT", 0.625, 0.25)]}, box=(0.4375, 0.1875, 0.5625, 0.3125)) == "right"


def test_near_is_the_hand_near_most_often():
    right, left = [_hand("RIGHT", 0.5625, 0.5)], [_hand("LEFT", 0.4375, 0.5)]
    assert _near({1: right, 2: right, 3: right, 4: left}) == "right"


def test_clip_names_of_an_objects_boxes_are_averaged():
    a = _box("carrot", 0.1, 0.1, 0.2, 0.2, names=[("carrot", 0.6), ("board", 0.2)])
    b = _box("carrot", 0.1, 0.1, 0.2, 0.2, names=[("carrot", 0.4), ("onion", 0.4)])
    names = _objects({1: [a], 26: [b]})["carrot"]["names"]
    assert names == [{"noun": "carrot", "score": 0.5}, {"noun": "onion", "score": 0.2},
                     {"noun": "board", "score": 0.1}]


def test_objects_are_ordered_first_seen_first_then_most_seen_and_said_so():
    objs = [{"label": "pan", "start": 0.5, "share": 0.9}, {"label": "lid", "start": 0.0, "share": 0.2},
            {"label": "cup", "start": 0.0, "share": 0.6}]
    assert [o["label"] for o in order_objects(objs)] == ["cup", "lid", "pan"]
    o = {"label": "cup", "position": "left", "near_hand": "right", "start": 0.5, "stop": 1.5, "share": 0.5,
         "score": 0.9}
    p = {**o, "label": "pan", "near_hand": None, "start": 0.0, "stop": 2.0, "share": 1.0}
    assert objects_timeline([o, p]) == [{"start": 0.5, "stop": 1.5, "text": "cup visible (left, near the right hand)"},
                                        {"start": 0.0, "stop": 2.0, "text": "pan visible (left)"}]
    assert objects_text([o, p]) == ("cup (left, near right hand; 0.5-1.5 s, 50% of frames, conf 0.90); "
                                    "pan (left; 0.0-2.0 s, 100% of frames, conf 0.90)")
    assert objects_text([]) == "no objects detected"


def test_spread_takes_evenly_spaced_frames_rounded_to_the_nearest():
    # positions 0, 2.25, 4.5, 6.75, 9 of ten frames: rounded 0, 2, 4, 7, 9
    assert spread(list(range(10, 20)), 5) == [10, 12, 14, 17, 19]
    assert spread([3, 5], 6) == [3, 5]


# --- detection files ------------------------------------------------------------------------------------------

def test_labelled_detections_clip_boxes_cut_by_the_frame_and_merge_lines_of_a_frame(tmp_path):
    p = tmp_path / "P01_01.jsonl"
    box = {"left": -0.05, "top": 0.2, "right": 1.05, "bottom": 0.4}
    p.write_text(json.dumps({"video_id": "P01_01", "frame_number": 7, "objects": [{"label": "pan", "bbox": box}]})
                 + "\n\n" + json.dumps({"video_id": "P01_01", "frame_number": 7, "objects": [
                     {"label": "lid", "bbox": {"left": 0.1, "top": 0.1, "right": 0.2, "bottom": 0.2}, "score": 0.4}]})
                 + "\n")
    frames = read_object_detections(p)
    assert list(frames) == [7]
    pan, lid = frames[7]
    assert (pan.label, pan.bbox, pan.score) == ("pan", BBox(0.0, 0.2, 1.0, 0.4), 1.0)  # no score: certain
    assert (lid.label, lid.score) == ("lid", 0.4)


def test_a_bad_line_is_named_by_its_number(tmp_path):
    p = tmp_path / "P01_01.jsonl"
    good = json.dumps({"video_id": "P01_01", "frame_number": 1, "objects": []})
    p.write_text(good + "\n" + '{"video_id": "P01_01"}\n')
    with pytest.raises(LeapError) as e:
        read_object_detections(p)
    assert "line 2" in e.value.one_line() and "line 1" not in e.value.one_line()


@pytest.mark.parametrize("sorted_keys", [True, False])
def test_in_segment_includes_both_end_frames(sorted_keys):
    from leap_cli.extract.detections import ByFrame

    frames = {n: [] for n in (5, 10, 15, 20, 25)}
    frames = ByFrame(frames) if sorted_keys else frames
    assert in_segment(frames, 10, 20) == [10, 15, 20]
    assert in_segment(frames, 11, 19) == [15]


def test_byframe_sorted_keys_follow_frames_added_later():
    from leap_cli.extract.detections import ByFrame

    frames = ByFrame({3: [], 1: []})
    assert frames.keys_sorted == [1, 3]
    frames[2] = []
    assert frames.keys_sorted == [1, 2, 3] and in_segment(frames, 2, 2) == [2]


def test_thirds_of_the_frame_and_box_containment():
    from leap_cli.extract.detections import contains

    assert [position_word(x) for x in (0.1, 0.3, 0.5, 0.7, 0.9)] == ["left", "left", "centre", "right", "right"]
    box = BBox(0.0, 0.0, 0.5, 1.0)  # the left half, full height
    assert contains(box, 0.25, 0.75) and not contains(box, 0.75, 0.25)


def test_an_unreadable_detection_file_fails_every_segment_of_the_video(tmp_path):
    from leap_cli.extract.detections import video_hand_objects, video_object_detections

    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    layout = NS(hand_objects_path=lambda v: bad, object_detections_path=lambda v: bad)
    cache: dict = {}
    for _ in range(2):  # the second segment reads the cached error
        with pytest.raises(LeapError):
            video_object_detections(cache, layout, "P01_01")
        with pytest.raises(LeapError):
            video_hand_objects(cache, layout, "P01_01")


# --- the objects component with a stand-in detector and namer ----------------------------------------------

class _Detector:
    """Each frame: an unmapped COCO class at the threshold, a cup, and an unmapped one under the threshold."""

    source = "detector:stub"

    def __init__(self):
        self.frames_seen = 0

    def __call__(self, frames):
        self.frames_seen += len(frames)
        return [[_box("", 0.0, 0.4, 0.2, 0.6, 0.5), _box("cup", 0.8, 0.4, 1.0, 0.6, 0.9),
                 _box("", 0.4, 0.4, 0.6, 0.6, 0.3)] for _ in frames]


class _Namer:
    source = "clip:stub"

    def __init__(self):
        self.calls = []

    def name_boxes(self, frames, boxes, vocab, prior=None):
        self.calls.append((len(frames), list(boxes), prior))
        return [[("carrot", 0.7), ("board", 0.2)] for _ in boxes]


class _Layout:
    annotations_dir = "annotations"

    def __init__(self, hand_objects=None, detections=None, nouns=True):
        self._h, self._d, self._nouns = hand_objects, detections, nouns

    def hand_objects_path(self, vid):
        return self._h

    def object_detections_path(self, vid):
        return self._d

    def annotations(self):
        if not self._nouns:
            raise LeapError("no annotations")
        return NS(nouns=NS(keys={3: "door", 23: "carrot", 40: "board"}))


def _seg_ctx(layout, fps=50.0, stop=2.0):
    seg = Segment("P01_01_0", "P01", "P01_01", 0.0, stop, 1, int(stop * 60 if fps != 50.0 else stop * 50),
                  narration="cut carrot", noun="carrot", noun_class=23, all_nouns=("carrot", "board"),
                  all_noun_classes=(23, 40))
    return SegmentContext(layout=layout, segment=seg, fps=fps,
                          read_frames=lambda nums, side: np.zeros((len(nums), 8, 8, 3), np.uint8), video_cache={})


def _objects_component(**kw):
    from leap_cli.extract.objects import ObjectsComponent

    return ObjectsComponent(**kw)


def test_detector_boxes_named_by_the_namer_with_the_narration_as_prior():
    det, namer = _Detector(), _Namer()
    ctx = _seg_ctx(_Layout())
    comp = _objects_component(detector=det, namer=namer, frames=3)
    rec = comp.describe(ctx)
    assert rec["status"] == "ok" and rec["source"] == "detector:stub" and det.frames_seen == 3
    assert rec["data"]["named_by"] == "clip:stub" and rec["data"]["frames"] == 3
    (n_frames, boxes, prior), = namer.calls
    assert n_frames == 6 and len(boxes) == 6  # the two boxes at or over the threshold of each of 3 frames
    assert prior == [23, 40]  # the narration's nouns, main noun first
    objs = {o["label"]: o for o in rec["data"]["objects"]}
    assert set(objs) == {"carrot", "cup"}  # the unmapped box takes CLIP's top name; the cup keeps its own
    assert objs["carrot"]["position"] == "left" and objs["cup"]["position"] == "right"
    assert objs["cup"]["names"] == [{"noun": "carrot", "score": 0.7}, {"noun": "board", "score": 0.2}]
    # the hands component borrows the detector's own labels only: not "" boxes, nor CLIP's names
    source, boxes_by_frame = ctx.video_cache[("detector_boxes", "P01_01_0")]
    assert source == "detector:stub" and len(boxes_by_frame) == 3
    assert all([b.label for b in bs] == ["cup"] for bs in boxes_by_frame.values())


def test_unnamed_detector_boxes_are_dropped_when_names_are_unavailable():
    rec = _objects_component(detector=_Detector(), namer=_Namer(), frames=2).describe(
        _seg_ctx(_Layout(nouns=False)))
    assert "names_unavailable" in rec["data"] and "named_by" not in rec["data"]
    assert [o["label"] for o in rec["data"]["objects"]] == ["cup"]


def test_detector_frames_are_timed_in_epic_numbering():
    """A 29.97 fps video: the detector's last frame (~1.97 s) is EPIC frame ~119, not MP4 frame ~60."""
    class _LateCup(_Detector):
        def __call__(self, frames):
            return [[] for _ in frames[:-1]] + [[_box("cup", 0.4, 0.4, 0.6, 0.6)]]

    rec = _objects_component(detector=_LateCup(), frames=2).describe(_seg_ctx(_Layout(), fps=29.97))
    (cup,) = rec["data"]["objects"]
    assert 1.8 < cup["start"] < 2.0, cup


def _hand_object_file(tmp_path, numbers):
    from leap_cli.epic.hand_objects import FrameDetections, ObjectDetection, write_hand_objects

    p = tmp_path / "P01_01.pkl"
    write_hand_objects(p, [FrameDetections("P01_01", n, [], [ObjectDetection(BBox(0.4, 0.4, 0.6, 0.6), 0.9)])
                           for n in numbers])
    return p


def test_hand_object_boxes_are_all_used_unnamed_or_spread_and_named(tmp_path):
    layout = _Layout(hand_objects=_hand_object_file(tmp_path, range(1, 101)))
    rec = _objects_component(frames=4).describe(_seg_ctx(layout))
    assert rec["data"]["frames"] == 100 and [o["label"] for o in rec["data"]["objects"]] == ["object"]
    namer = _Namer()
    comp = _objects_component(frames=4, namer=namer)
    assert comp.needs_frames
    rec = comp.describe(_seg_ctx(layout))
    assert rec["data"]["frames"] == 4 and len(namer.calls[0][1]) == 4
    assert [o["label"] for o in rec["data"]["objects"]] == ["carrot"]  # "object" boxes take CLIP's top name


def test_no_detection_frames_inside_the_segment_is_unavailable(tmp_path):
    p = tmp_path / "P01_01.jsonl"
    p.write_text(json.dumps({"video_id": "P01_01", "frame_number": 500, "objects": []}) + "\n")
    rec = _objects_component().describe(_seg_ctx(_Layout(detections=p)))
    assert rec["status"] == "unavailable" and "no detection frames" in rec["data"]["reason"]


def test_an_unreadable_hand_object_file_does_not_stop_labelled_detections(tmp_path):
    bad = tmp_path / "P01_01.jsonl"
    bad.write_text("not json\n")
    good = tmp_path / "dets.jsonl"
    good.write_text(json.dumps({"video_id": "P01_01", "frame_number": 10, "objects": [
        {"label": "pan", "bbox": {"left": 0.1, "top": 0.1, "right": 0.2, "bottom": 0.2}}]}) + "\n")
    rec = _objects_component().describe(_seg_ctx(_Layout(hand_objects=bad, detections=good)))
    assert rec["status"] == "ok" and [o["label"] for o in rec["data"]["objects"]] == ["pan"]
    assert rec["data"]["objects"][0]["near_hand"] is None


# --- naming: prompts, crops, the narration prior, top-k ------------------------------------------------------

def test_readable_forms_and_deduplicated_prompts():
    from leap_cli.extract.naming import class_prompts, readable

    assert readable("paper:kitchen-roll") == "kitchen roll paper" and readable("tap_water") == "tap water"
    vocab = NS(ids=[1, 2], keys={1: "pan", 2: "lid"}, instances={1: ["pan", "pan:frying", "pan:frying"], 2: []})
    ids, prompts = class_prompts(vocab)
    assert ids == [1, 2]
    assert prompts == [["a photo of a pan.", "a photo of a frying pan."], ["a photo of a lid."]]


def _gradient_frame(h=100, w=200):
    """Each pixel holds its own (x, y): a crop shows which part of the frame it took."""
    frame = np.zeros((h, w, 3), np.uint8)
    frame[..., 0] = np.arange(w)[None, :]
    frame[..., 1] = np.arange(h)[:, None]
    return frame


def test_crop_box_takes_the_box_plus_margin_square_around_its_centre():
    from leap_cli.extract.naming import crop_box

    frame = _gradient_frame()  # 200 wide, 100 high
    # a 20 x 20 pixel box centred at (90, 50): side 24 with 10% margins, from (78, 38) to (101, 61)
    crop = crop_box(frame, BBox(0.4, 0.4, 0.5, 0.6), 24)
    assert tuple(crop[0, 0, :2]) == (78, 38) and tuple(crop[-1, -1, :2]) == (101, 61)


def test_crop_box_shifts_inside_the_frame_at_either_edge():
    from leap_cli.extract.naming import crop_box

    frame = _gradient_frame()
    right = crop_box(frame, BBox(0.9, 0.4, 1.0, 0.6), 24)  # centre x 190: shifted left to start at 200 - 24
    assert tuple(right[0, 0, :2]) == (176, 38) and right[-1, -1, 0] == 199
    bottom = crop_box(frame, BBox(0.4, 0.9, 0.5, 1.0), 24)  # centre y 95: shifted up to start at 100 - 24
    assert tuple(bottom[0, 0, :2]) == (78, 76) and bottom[-1, -1, 1] == 99


def test_a_tiny_box_is_cropped_at_least_8_pixels_wide():
    from leap_cli.extract.naming import crop_box

    # a 2-pixel box centred at (101, 51): an 8-pixel crop around it, from (97, 47)
    crop = crop_box(_gradient_frame(), BBox(0.5, 0.5, 0.51, 0.52), 8)
    assert tuple(crop[0, 0, :2]) == (97, 47) and tuple(crop[-1, -1, :2]) == (104, 54)


def test_narration_nouns_keep_the_narrations_order_and_the_vocabularys_classes():
    from leap_cli.extract.naming import narration_nouns

    vocab = NS(keys={23: "carrot", 40: "board"})
    seg = Segment("a", "P01", "P01_01", 0, 2, 1, 100, noun="board", noun_class=40, all_noun_classes=(23, 99, 40))
    assert narration_nouns(seg, vocab) == [40, 23]


def test_prior_name_falls_back_to_the_main_noun():
    from leap_cli.extract.naming import prior_name

    vocab = NS(keys={1: "sink", 2: "oven", 3: "cup"}, categories={1: "appliances", 2: "appliances", 3: "crockery"})
    seg = Segment("a", "P01", "P01_01", 0, 2, 1, 100, noun="sink", noun_class=1, all_noun_classes=(1, 2))
    assert prior_name(seg, vocab, "portable") == "sink"  # no portable noun: the main noun, not the last
    assert prior_name(seg, vocab, "stationary") == "sink" and prior_name(seg, vocab, None) == "sink"
    held = Segment("b", "P01", "P01_01", 0, 2, 1, 100, noun="sink", noun_class=1, all_noun_classes=(1, 3))
    assert prior_name(held, vocab, "portable") == "cup"


def _bare_namer(**kw):
    from leap_cli.extract.naming import ClipNamer

    namer = object.__new__(ClipNamer)  # the scoring arithmetic only: no model
    namer.prior_boost, namer.top_k, namer.image_size = 10.0, 2, 8
    namer.__dict__.update(kw)
    return namer


def test_the_prior_boosts_the_narration_nouns_and_renormalises():
    namer = _bare_namer()
    probs = np.array([[0.5, 0.3, 0.2]], np.float32)
    post = namer.apply_prior([1, 2, 3], probs, [3, 99])  # 99: not a class of the vocabulary
    assert np.allclose(post, [[0.5 / 2.8, 0.3 / 2.8, 2.0 / 2.8]], atol=1e-6)
    assert namer.apply_prior([1, 2, 3], probs, []) is probs


def test_top_k_names_best_first():
    namer = _bare_namer(top_k=2)
    vocab = NS(keys={1: "cup", 2: "pan", 3: "lid"})
    assert namer.top([1, 2, 3], np.array([0.1, 0.6, 0.3]), vocab) == [("pan", 0.6), ("lid", 0.3)]


def test_name_boxes_give_the_names_with_the_prior_and_without_it():
    vocab = NS(keys={1: "cup", 2: "pan"})
    namer = _bare_namer(top_k=1, probabilities=lambda crops, v: ([1, 2], np.array([[0.6, 0.4]] * len(crops))))
    frame = np.zeros((16, 16, 3), np.uint8)
    box = BBox(0.25, 0.25, 0.75, 0.75)
    # with the prior on pan: 0.4 x 10 against 0.6, pan 4 / 4.6
    assert namer.name_boxes([frame], [box], vocab, prior=[2]) == [[("pan", round(4 / 4.6, 4))]]
    with_prior, without = namer.name_boxes_both([frame], [box], vocab, prior=[2])
    assert with_prior == [[("pan", round(4 / 4.6, 4))]] and without == [[("cup", 0.6)]]


def test_mean_names_count_a_missing_name_as_zero_and_keep_k():
    from leap_cli.extract.naming import mean_names

    assert mean_names([[("cup", 0.9)], [("cup", 0.6)], [("pan", 0.3)]]) == [("cup", 0.5), ("pan", 0.1)]
    six = [[(n, 0.1 * (i + 1)) for i, n in enumerate("abcdef")]]
    assert [n for n, _ in mean_names(six)] == ["f", "e", "d", "c", "b"]
    assert mean_names([]) == []


# --- the detector's outputs as boxes (a stand-in network: torchvision's output format) ------------------------

def test_detector_output_becomes_labelled_boxes_as_fractions_of_the_frame():
    import torch

    from leap_cli.extract.objects import FasterRCNNDetector

    seen = []

    def model(images):
        seen.append([tuple(im.shape) for im in images])
        assert all(float(im.max()) <= 1.0 for im in images)
        box = [20.0, 10.0, 60.0, 30.0]  # pixels of an 80 x 40 frame: a quarter in from each side
        return [{"boxes": torch.tensor([box] * 6), "labels": torch.tensor([1, 3, 2, 0, 4, 5]),
                 "scores": torch.tensor([0.5, 0.49, 0.9, 0.9, 0.9, 0.9])} for _ in images]

    det = object.__new__(FasterRCNNDetector)
    det._torch, det.model, det.device, det.batch_size, det.score_threshold = torch, model, "cpu", 2, 0.5
    # index 0 the background, 2 a COCO class without an EPIC noun (dropped), 4 one a namer should name
    det.labels = ["__background__", "cup", None, "pan", ""]
    frames = np.full((3, 40, 80, 3), 255, np.uint8)
    out = det(frames)
    assert seen == [[(3, 40, 80)] * 2, [(3, 40, 80)]]  # batches of 2, channels first
    assert len(out) == 3
    for boxes in out:
        assert [b.label for b in boxes] == ["cup", ""] and [b.score for b in boxes] == pytest.approx([0.5, 0.9])
        assert boxes[0].bbox == BBox(0.25, 0.25, 0.75, 0.75)


# --- CLIP probabilities (a tiny open_clip model with random weights, as tests/test_naming.py builds it) --------

KITCHEN_NOUNS = ("id,key,instances,category\n3,door,\"['door']\",furniture\n4,knife,\"['knife']\",cutlery\n"
                 "23,carrot,\"['carrot', 'carrot:baby']\",vegetables\n40,board,\"['board:chopping', 'board']\",utensils\n")


@pytest.fixture(scope="module")
def tiny_namer_parts(tmp_path_factory):
    pytest.importorskip("open_clip")
    from leap_cli.epic.classes import ClassVocab
    from tests.naming_models import register_tiny_clip, save_clip

    folder = tmp_path_factory.mktemp("clip")
    arch = register_tiny_clip(folder)
    (folder / "nouns.csv").write_text(KITCHEN_NOUNS)
    return arch, save_clip(folder / "tiny-clip.pt", arch), ClassVocab.from_csv(folder / "nouns.csv", "noun")


def test_clip_probabilities_are_the_scaled_cosine_softmax_over_prompt_averaged_classes(tiny_namer_parts, tmp_path):
    import open_clip
    import torch
    import torch.nn.functional as F

    from leap_cli.extract.naming import ClipNamer, class_prompts

    arch, weights, vocab = tiny_namer_parts
    namer = ClipNamer(weights, arch=arch, batch_size=2)
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]  # 3 crops: batches of 2 and 1
    ids, probs = namer.probabilities(crops, vocab)
    # CLIP's zero-shot rule, written out: each class the unit mean of its prompts' unit embeddings; the image
    # normalised with CLIP's mean and std; softmax of logit_scale x cosine
    model, tok = namer.model, open_clip.get_tokenizer(arch)
    want_ids, prompts = class_prompts(vocab)
    with torch.no_grad():
        text = torch.stack([F.normalize(F.normalize(model.encode_text(tok(ps)), dim=-1).mean(0), dim=-1)
                            for ps in prompts])
        mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
        x = (torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255 - mean) / std
        img = F.normalize(model.encode_image(x), dim=-1)
        want = (model.logit_scale.exp() * img @ text.T).softmax(-1).numpy()
    assert ids == want_ids == [3, 4, 23, 40] and probs.shape == (3, 4)
    assert np.allclose(probs, want, atol=1e-5)


def test_a_text_embedding_cache_file_of_another_shape_is_recomputed(tiny_namer_parts, tmp_path):
    import torch

    from leap_cli.extract.naming import ClipNamer

    arch, weights, vocab = tiny_namer_parts
    ids, emb = ClipNamer(weights, arch=arch, cache_dir=tmp_path).class_embeddings(vocab)
    (cached,) = tmp_path.glob("clip-text-*.pt")
    torch.save(torch.zeros(1, emb.shape[1]), cached)  # a file of another vocabulary's size
    ids2, emb2 = ClipNamer(weights, arch=arch, cache_dir=tmp_path).class_embeddings(vocab)
    assert ids2 == ids and emb2.shape == emb.shape and torch.allclose(emb2, emb, atol=1e-6)


# --- detector checkpoints --------------------------------------------------------------------------------------

def _detector_file(path, classes, key="classes", arch=True):
    import torch
    import torchvision.models.detection as det

    from tests.naming_models import DET_ARCH

    torch.manual_seed(0)
    model = getattr(det, DET_ARCH)(weights=None, weights_backbone=None, num_classes=len(classes))
    torch.save({"model": model.state_dict(), key: classes, **({"arch": DET_ARCH} if arch else {})}, path)
    return path


def test_a_labels_file_needs_the_background_and_a_class(tmp_path):
    from leap_cli.extract.objects import read_labels_file

    p = tmp_path / "labels.txt"
    p.write_text("__background__\n\n")
    with pytest.raises(LeapError, match="fewer than 2 names"):
        read_labels_file(p)
    p.write_text("__background__\n plate \n\n")
    assert read_labels_file(p) == ["__background__", "plate"]


def test_a_checkpoints_labels_entry_names_its_classes_and_a_local_file_named_coco_is_that_file(tmp_path, monkeypatch):
    import torchvision.models._api as api

    from leap_cli.extract.objects import FasterRCNNDetector
    from tests.naming_models import DET_ARCH

    monkeypatch.setattr(api, "load_state_dict_from_url", lambda *a, **k: pytest.fail("tried to download"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.chdir(tmp_path)
    _detector_file(tmp_path / "coco", ["__background__", "plate", "knife"], key="labels")
    det = FasterRCNNDetector("coco")  # a file in the working folder, not torchvision's download
    assert det.classes == det.labels == ["__background__", "plate", "knife"]
    assert det.source == f"detector:{DET_ARCH}:coco"


def test_the_hub_is_tried_at_the_port_of_its_endpoint(monkeypatch):
    import socket

    constants = pytest.importorskip("huggingface_hub.constants")
    from leap_cli.extract import naming

    for k in (*naming._PROXIES, "HF_HUB_OFFLINE"):
        monkeypatch.delenv(k, raising=False)
    seen = []

    def connect(address, timeout):
        seen.append(address)
        raise OSError("refused")

    monkeypatch.setattr(socket, "create_connection", connect)
    monkeypatch.setattr(constants, "ENDPOINT", "http://mirror.local")  # plain http: port 80
    assert "mirror.local cannot be reached" in naming._hub_unreachable()
    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.local:8443")
    assert "hub.local cannot be reached" in naming._hub_unreachable()
    assert seen == [("mirror.local", 80), ("hub.local", 8443)]
