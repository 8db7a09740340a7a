"""Unit checks for the model-weights loading (leap_cli/extract/weights.py), the measuring against the synthetic
kitchen's truth (leap_cli/extract/truth.py), the kitchen's simulated hand-object detector (leap_cli/synth/detector.py)
and its sound (leap_cli/synth/sound.py): the behaviours the end-to-end tests pass through without pinning down
(found by a mutation run). Small inputs, no kitchen build: fast."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from leap_cli.errors import LeapError

# --- weights: local files, state dicts, exact loading, the torch hub cache ----------------------------------------


def test_a_missing_checkpoint_is_named_as_missing_not_as_unreadable(tmp_path):
    from leap_cli.extract.weights import load_checkpoint

    gone = tmp_path / "nowhere" / "cnn14.pth"
    with pytest.raises(LeapError) as e:
        load_checkpoint(gone, "audio")
    assert e.value.message == "audio checkpoint not found" and Path(e.value.path) == gone
    assert ".pth" in e.value.fix
    with pytest.raises(LeapError, match="not found"):
        load_checkpoint(tmp_path, "audio")  # a folder is not a checkpoint file


class _Pickled:
    pass


def test_checkpoints_load_weights_only_to_the_cpu(tmp_path, monkeypatch):
    from leap_cli.extract.weights import load_checkpoint

    good = tmp_path / "good.pth"
    torch.save({"model": {"w": torch.arange(3.0)}}, good)
    asked, real = {}, torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: asked.update(k) or real(*a, **k))
    back = load_checkpoint(good, "test")
    assert asked["map_location"] == "cpu"  # a file saved on a GPU loads on a machine without one
    assert torch.equal(back["model"]["w"], torch.arange(3.0)) and back["model"]["w"].device.type == "cpu"
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.ones(1)}, "obj": _Pickled()}, evil)
    with pytest.raises(LeapError) as e:  # an arbitrary pickled object is refused, not executed
        load_checkpoint(evil, "test")
    assert e.value.message.startswith("cannot read the test checkpoint") and "torch.save" in e.value.fix


def test_state_dicts_are_found_inside_model_or_state_dict_and_lose_the_module_prefix(tmp_path):
    from leap_cli.extract.weights import unwrap_state_dict

    w = torch.zeros(2)
    for wrapped in ({"model": {"module.a.w": w}}, {"state_dict": {"module.a.w": w}, "epoch": 3}, {"a.w": w},
                    {"state_dict": {"a.w": w}, "model": "not a dict"}):
        assert list(unwrap_state_dict(wrapped, tmp_path / "x.pth", "x")) == ["a.w"], wrapped
    for bad in ({"model": {"w": w, "step": 7}}, {"w": w, "epoch": 3}, [w], None):
        with pytest.raises(LeapError, match="holds no state dict"):
            unwrap_state_dict(bad, tmp_path / "x.pth", "x")


def _net():
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))


def test_load_exact_lists_missing_unexpected_and_misshapen_keys():
    from leap_cli.extract.weights import load_exact

    model = _net()
    good = {k: torch.ones_like(v) for k, v in _net().state_dict().items()}
    load_exact(model, good, "f.pth", "demo")
    assert torch.equal(model[0].weight, torch.ones(4, 3))
    cases = {"missing keys: 0.bias": {k: v for k, v in good.items() if k != "0.bias"},
             "unexpected keys: extra.w": {**good, "extra.w": torch.ones(1)},
             "shape mismatches: 0.weight (3, 4) vs (4, 3)": {**good, "0.weight": torch.ones(3, 4)}}
    for said, state in cases.items():
        before = _net()
        before.load_state_dict(good)
        with pytest.raises(LeapError) as e:
            load_exact(before, state, "f.pth", "demo")
        msg = e.value.message
        assert msg.startswith("the demo checkpoint does not match the model; ") and said in msg, msg
        assert sum(kind in msg for kind in ("missing keys", "unexpected keys", "shape mismatches")) == 1, msg
        assert "demo architecture" in e.value.fix and str(e.value.path) == "f.pth"
        assert torch.equal(before[0].weight, torch.ones(4, 3))  # nothing loaded from a refused file


def test_load_exact_ignores_only_the_named_suffixes_and_cuts_long_lists():
    from leap_cli.extract.weights import load_exact

    model = _net()
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    load_exact(model, state, "f.pth", "demo", ignore=("num_batches_tracked",))
    with pytest.raises(LeapError, match="missing keys: 1.num_batches_tracked"):
        load_exact(model, state, "f.pth", "demo")  # without the ignore, the same key is missing
    with pytest.raises(LeapError, match="missing keys: 0.weight"):
        load_exact(model, {k: v for k, v in state.items() if k != "0.weight"}, "f.pth", "demo",
                   ignore=("num_batches_tracked",))
    many = {**model.state_dict(), **{f"junk.{i:02d}": torch.ones(1) for i in range(30)}}
    with pytest.raises(LeapError) as e:
        load_exact(model, many, "f.pth", "demo")
    msg = e.value.message
    assert "(30 in all)" in msg and "junk.11" in msg and "junk.12" not in msg
    few = {**model.state_dict(), **{f"junk.{i:02d}": torch.ones(1) for i in range(12)}}
    with pytest.raises(LeapError) as e:
        load_exact(model, few, "f.pth", "demo")
    assert "in all" not in e.value.message and "junk.11" in e.value.message


ARCH = "fasterrcnn_mobilenet_v3_large_320_fpn"


def test_coco_weights_come_from_the_torch_hub_cache_file_torchvision_names(tmp_path, monkeypatch):
    import torchvision.models as tvm
    import torchvision.models._api as api

    from leap_cli.extract.weights import load_torchvision_coco, torchvision_coco_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(api, "load_state_dict_from_url", lambda *a, **k: pytest.fail("tried to download"))
    weights, cached = torchvision_coco_weights(ARCH)
    assert weights is tvm.get_model_weights(ARCH).COCO_V1
    assert cached == tmp_path / "torch" / "hub" / "checkpoints" / Path(weights.url).name
    cached.parent.mkdir(parents=True)
    torch.save({"model": {"module.roi_heads.w": torch.ones(2)}}, cached)
    state, classes, where = load_torchvision_coco(ARCH)
    assert where == cached and list(state) == ["roi_heads.w"]
    assert classes == list(weights.meta["categories"]) and len(classes) == 91 and "person" in classes


def test_coco_download_failures_of_any_kind_name_the_file_and_the_folder(tmp_path, monkeypatch, capsys):
    import torchvision.models._api as api

    from leap_cli.extract.weights import load_torchvision_coco, torchvision_coco_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights, cached = torchvision_coco_weights(ARCH)
    for error in (OSError("network unreachable"), RuntimeError("invalid hash value"), ValueError("proxy")):
        def fail(url, *a, error=error, **k):
            import sys

            sys.stderr.write(f'Downloading: "{url}"\n')  # torch.hub says so before it fails
            raise error

        monkeypatch.setattr(api, "load_state_dict_from_url", fail)
        with pytest.raises(LeapError) as e:
            load_torchvision_coco(ARCH)
        assert type(error).__name__ in e.value.message and ARCH in e.value.message
        assert f"place {cached.name} (from {weights.url}) at {cached}" in e.value.fix
        assert "--detector-weights FILE" in e.value.fix and Path(e.value.path) == cached
    assert "Downloading" not in capsys.readouterr().err  # no download was made: the error alone is said
    # a successful download's own "Downloading ..." line is still shown (after the fact), and its hash checked
    seen = {}

    def download(url, *a, **k):
        import sys

        seen.update(k)
        sys.stderr.write(f'Downloading: "{url}"\n')
        return {"w": torch.ones(1)}

    monkeypatch.setattr(api, "load_state_dict_from_url", download)
    state, _, _ = load_torchvision_coco(ARCH)
    assert list(state) == ["w"] and seen.get("check_hash") is True
    assert f'Downloading: "{weights.url}"' in capsys.readouterr().err


def test_an_unreadable_cached_file_names_itself(tmp_path, monkeypatch):
    from leap_cli.extract.weights import load_torchvision_coco, torchvision_coco_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights, cached = torchvision_coco_weights(ARCH)
    cached.parent.mkdir(parents=True)
    torch.save({"model": "not a state dict"}, cached)
    with pytest.raises(LeapError) as e:
        load_torchvision_coco(ARCH)
    assert Path(e.value.path) == cached and "holds no state dict" in e.value.message
    assert cached.name in e.value.fix and weights.url in e.value.fix and "--detector-weights FILE" in e.value.fix


# --- truth: the measuring's definitions ------------------------------------------------------------------------


def test_yaw_over_weights_each_step_by_its_share_inside_the_window():
    from leap_cli.extract.truth import yaw_over

    step = {"start": 1.0, "stop": 3.0, "yaw": 6.0}
    assert yaw_over([step], 0.0, 5.0) == pytest.approx(6.0)  # a whole step counts its whole yaw
    assert yaw_over([step], 2.0, 5.0) == pytest.approx(3.0)  # half of it, half its yaw
    assert yaw_over([step], 4.0, 5.0) == 0.0 and yaw_over([step], 0.0, 0.5) == 0.0  # disjoint: nothing
    assert yaw_over([step, {"start": 2.0, "stop": 2.0, "yaw": 9.0}], 0.0, 5.0) == pytest.approx(6.0)  # empty step


def test_base_name_is_the_noun_before_the_qualifier_in_lower_case():
    from leap_cli.extract.truth import base_name

    assert base_name("Board:Chopping") == base_name("board") == base_name(" board ")
    assert base_name("board:chopping") != base_name("chopping")


def _seg(nid: str, video: str = "P01_01", start: float = 10.0, stop: float = 13.0, **kw) -> dict:
    return {"narration_id": nid, "video_id": video, "start": start, "stop": stop, **kw}


def _rec(nid: str, **components) -> dict:
    return {"narration_id": nid, "components": {k: {"status": "ok", "data": v} for k, v in components.items()}}


def test_nothing_measured_is_none_not_zero():
    from leap_cli.extract.truth import score

    s = score([], {"a": _seg("a")})
    assert s["audio"]["false_event_rate"] is None and s["hand_contacts"]["state_accuracy"] is None
    assert s["yaw_direction"]["correct"] is None and s["objects"]["recall"] is None
    assert s["hand_contacts"]["iou_at_least_0.5"] is None and s["objects"]["precision"] is None


def test_audio_scores_segment_times_against_the_videos_own_sounds():
    from leap_cli.extract.truth import score

    # a 3 s segment at 10 s of P01_01 with water at 1.0-2.0 s; P01_02 has chopping at the same times
    truth = {"a": _seg("a", sound=[{"label": "running_water", "start": 1.0, "stop": 2.0},
                                   {"label": "silence", "start": 2.0, "stop": 3.0}]),
             "b": _seg("b", video="P01_02", sound=[{"label": "chopping", "start": 0.0, "stop": 3.0}])}
    exact = score([_rec("a", audio={"events": [{"label": "running_water", "start": 1.0, "stop": 2.0}]})], truth)
    water = exact["audio"]["per_category"]["running_water"]
    assert water["precision"] == water["recall"] == 1.0 and water["true_seconds"] == pytest.approx(1.0)
    assert set(exact["audio"]["per_category"]) == {"running_water"}  # not silence, nor the other video's chopping
    assert exact["audio"]["false_event_rate"] == 0.0
    # background-only time: the segment less the sound and MARGIN on each side ("silence" is no sound)
    assert exact["audio"]["background_seconds"] == pytest.approx(3.0 - 1.0 - 2 * 0.25, abs=0.06)
    # a prediction that runs over by less than MARGIN is no false event; one over the whole segment is
    over = score([_rec("a", audio={"events": [{"label": "running_water", "start": 0.9, "stop": 2.1}]})], truth)
    assert over["audio"]["false_event_rate"] == 0.0
    assert over["audio"]["per_category"]["running_water"]["precision"] < 1.0  # predicted outside the sound
    wrong = score([_rec("a", audio={"events": [{"label": "chopping", "start": 0.0, "stop": 3.0}]})], truth)
    per = wrong["audio"]["per_category"]
    assert per["running_water"]["recall"] == 0.0 and per["chopping"]["precision"] == 0.0
    assert wrong["audio"]["false_event_rate"] == 1.0 and wrong["audio"]["false_events_as"] == {
        "chopping": wrong["audio"]["background_seconds"]}
    # what the classifier says when it hears nothing is no event
    quiet = score([_rec("a", audio={"events": [{"label": "silence", "start": 0.0, "stop": 1.0},
                                              {"label": "background", "start": 2.5, "stop": 3.0}]})], truth)
    assert quiet["audio"]["false_event_rate"] == 0.0 and quiet["audio"]["per_category"]["running_water"]["recall"] == 0


def test_false_events_are_told_under_the_background_layers_other_than_room_tone():
    from leap_cli.extract.truth import score

    # layers in segment time (the kitchen writes them so); the segment starts at 10 s of the video
    truth = {"a": _seg("a", start=10.0, stop=14.0, sound=[],
                       background=[{"label": "room_tone", "start": 0.0, "stop": 4.0},
                                   {"label": "music", "start": 0.0, "stop": 2.0}])}
    s = score([_rec("a", audio={"events": [{"label": "speech", "start": 0.0, "stop": 4.0}]})], truth)
    assert s["audio"]["false_event_rate"] == 1.0 and s["audio"]["background_seconds"] == pytest.approx(4.0)
    assert s["audio"]["false_events_under"] == {"music": pytest.approx(2.0, abs=0.06)}


def test_camera_yaw_sign_past_the_end_and_per_method():
    from leap_cli.extract.truth import score

    right = [{"motion": "turn_right", "start": 0.5, "stop": 1.5}]
    left = [{"motion": "turn_left", "start": 0.5, "stop": 1.5}]
    truth = {"r": _seg("r", camera=right), "l": _seg("l", camera=left),
             "p": _seg("p", camera=right, past_end_of_video=True), "q": _seg("q", past_end_of_video=True)}

    def cam(yaw, method):
        return {"method": method, "steps": [{"start": 0.0, "stop": 3.0, "yaw": yaw}]}

    s = score([_rec("r", camera=cam(5.0, "visual-odometry")), _rec("l", camera=cam(5.0, "epic-fields")),
               _rec("p", camera=cam(5.0, "visual-odometry")), _rec("q", camera=cam(1.0, "epic-fields"))], truth)
    yaw = s["yaw_direction"]
    assert yaw["segments"] == 2 and yaw["correct"] == 0.5  # segments past the end are counted apart
    assert yaw["by_method"] == {"visual-odometry": {"segments": 1, "correct": 1.0},
                                "epic-fields": {"segments": 1, "correct": 0.0}}
    # past the end, only visual odometry invents motion (poses published for the whole video are not invented)
    assert s["past_end_of_video"] == {"segments": 2, "camera_invented": 1}


def test_turn_size_reads_whole_steps_over_whole_turns_not_shares_of_steps():
    from leap_cli.extract.truth import score, yaw_over

    steps = [{"start": 0.0, "stop": 1.0, "yaw": 0.0}, {"start": 1.0, "stop": 2.0, "yaw": 6.0},
             {"start": 2.0, "stop": 3.0, "yaw": 4.0}]
    right = {"motion": "turn_right", "start": 1.5, "stop": 2.5, "degrees": 10.0}
    truth = {"a": _seg("a", camera=[right])}
    s = score([_rec("a", camera={"method": "visual-odometry", "steps": steps})], truth)
    # the two steps the turn overlaps hold all of its rotation: 10 of 10 (a share by overlap reads half)
    assert yaw_over(steps, 1.5, 2.5) == pytest.approx(5.0)
    assert s["turn_size"]["windows"] == 1 and s["turn_size"]["median_ratio"] == pytest.approx(1.0)
    assert s["turn_size"]["within_1.25x"] == 1.0 and s["turn_size"]["segments_skipped"] == 0
    assert s["turn_size"]["by_method"] == {"visual-odometry": {"windows": 1, "median_ratio": 1.0, "within_1.25x": 1.0}}

    # a left turn read as 6 of 8 deg: 0.75, outside 1.25x; its sign counts
    left = {"motion": "turn_left", "start": 0.2, "stop": 0.8, "degrees": 8.0}
    s = score([_rec("a", camera={"method": "epic-fields", "steps": [{**steps[0], "yaw": -6.0}] + steps[1:]})],
              {"a": _seg("a", camera=[left])})
    assert s["turn_size"]["median_ratio"] == pytest.approx(0.75) and s["turn_size"]["within_1.25x"] == 0.0


def test_turn_size_counts_the_videos_other_motions_inside_a_window_and_skips_those_over_its_edge():
    from leap_cli.extract.truth import score

    steps = [{"start": 0.0, "stop": 1.0, "yaw": 0.0}, {"start": 1.0, "stop": 2.0, "yaw": 15.0},
             {"start": 2.0, "stop": 3.0, "yaw": 0.0}]
    right = {"motion": "turn_right", "start": 1.2, "stop": 1.5, "degrees": 10.0}

    def measured(*others):
        truth = {"a": _seg("a", camera=[right]), "b": _seg("b", start=9.0, stop=12.0, camera=list(others))}
        return score([_rec("a", camera={"method": "visual-odometry", "steps": steps})], truth)["turn_size"]

    # another segment's turn inside the window (absolute 11.6-11.9 s) adds to the true yaw: 15 of 15
    assert measured({"motion": "turn_right", "start": 2.6, "stop": 2.9, "degrees": 5.0})["median_ratio"] == 1.0
    # a shake wholly inside returns to where it started: 15 of 10
    assert measured({"motion": "shake", "start": 2.6, "stop": 2.9, "degrees": 2.0})["median_ratio"] == 1.5
    # a shake or a turn over either edge of the window (11.0-12.0 s): no size to read, the segment skipped
    for motion in ("shake", "turn_left"):
        for start, stop in ((1.5, 2.2), (2.8, 3.3)):
            size = measured({"motion": motion, "start": start, "stop": stop, "degrees": 2.0})
            assert size["windows"] == 0 and size["median_ratio"] is None and size["segments_skipped"] == 1
    # turns that cancel out (10 right, 9 left) leave no size to read
    assert measured({"motion": "turn_left", "start": 2.6, "stop": 2.9, "degrees": 9.0})["windows"] == 0
    # a turn past the last step, or one of unknown size: skipped
    late = {"motion": "turn_right", "start": 3.5, "stop": 3.9, "degrees": 10.0}
    for cam in ([late], [{k: v for k, v in right.items() if k != "degrees"}]):
        s = score([_rec("a", camera={"method": "visual-odometry", "steps": steps})], {"a": _seg("a", camera=cam)})
        assert s["turn_size"]["windows"] == 0 and s["turn_size"]["segments_skipped"] == 1


def test_hand_contacts_take_the_best_same_hand_estimate_and_name_by_base_noun():
    from leap_cli.extract.truth import score

    truth = {"a": _seg("a", start=0.0, stop=2.0, contacts=[
        {"hand": "right", "start": 0.0, "stop": 1.0, "object": "board:chopping"},
        {"hand": "left", "start": 1.0, "stop": 2.0, "object": "cup"}])}
    est = {"hands": [{"hand": "right", "contacts": [{"start": 1.0, "stop": 2.0, "object": "cup"},
                                                    {"start": 0.0, "stop": 1.0, "object": "Board"}]},
                     {"hand": "left", "contacts": [{"start": 1.0, "stop": 1.5, "object": "plate"}]}]}
    hc = score([_rec("a", hands=est)], truth)["hand_contacts"]
    assert hc["contacts"] == 2 and hc["mean_iou"] == pytest.approx((1.0 + 0.5) / 2)
    assert hc["iou_at_least_0.5"] == 1.0 and hc["object_named"] == 0.5
    # state per hand on the grid: right wrong over 1.0-2.0 s, left over 1.5-2.0 s: 1.5 s of 4 hand-seconds
    assert hc["state_accuracy"] == pytest.approx(1 - 1.5 / 4.0, abs=0.02)
    none = score([_rec("a", hands={"hands": []})], truth)["hand_contacts"]
    assert none["mean_iou"] == 0.0 and none["object_named"] == 0.0 and none["state_accuracy"] == 0.5


def test_object_recall_and_precision_by_base_name():
    from leap_cli.extract.truth import score

    truth = {"a": _seg("a", objects=["board:chopping", "knife", "carrot", "plate"])}
    s = score([_rec("a", objects={"objects": [{"label": "Board"}, {"label": "knife"}, {"label": "spoon"}]})], truth)
    assert s["objects"] == {"true_objects": 4, "recall": 0.5, "names_given": 3, "precision": round(2 / 3, 4)}


# --- the simulated hand-object detector: only unlabelled boxes, with a detector's errors ------------------------

N_FRAMES = 6000
LEFT = (0.0, 0.55, 0.1, 0.95)  # free hand at the image's edge, narrow and tall (w 0.1, h 0.4)
RIGHT = (0.62, 0.5, 0.82, 0.8)
HELD = (0.45, 0.3, 0.6, 0.45)


def _iou(a, b) -> float:
    from leap_cli.epic.hand_objects import BBox

    return BBox(*a).iou(BBox(*b))


def _bursts(flags: list[bool]) -> list[int]:
    runs, n = [], 0
    for f in flags + [False]:
        if f:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    return runs


@pytest.fixture(scope="module")
def detected():
    from leap_cli.synth.detector import Detector, TrueHand

    det = Detector(np.random.default_rng(7))
    frames = []
    for i in range(N_FRAMES):
        holding = (i // 200) % 4 != 3  # the right hand lets go now and then
        hands = [TrueHand("left", LEFT), TrueHand("right", RIGHT, HELD if holding else None, stationary=False)]
        frames.append((holding, det.frame("P01_01", i + 1, hands)))
    return frames


def _box(d):
    return (d.bbox.left, d.bbox.top, d.bbox.right, d.bbox.bottom)


def _match(frame, true_box):
    best = max(frame.hands, key=lambda h: _iou(_box(h), true_box), default=None)
    return best if best is not None and _iou(_box(best), true_box) > 0.3 else None


def test_the_default_detector_makes_every_error_it_documents():
    from leap_cli.synth.detector import DetectorNoise

    rates = dataclasses.asdict(DetectorNoise())
    assert rates and all(0 < v < 1 for v in rates.values()), rates


def test_published_boxes_carry_no_labels():
    from leap_cli.epic.hand_objects import HandDetection, ObjectDetection

    assert {f.name for f in dataclasses.fields(ObjectDetection)} == {"bbox", "score"}
    assert {f.name for f in dataclasses.fields(HandDetection)} == {"bbox", "score", "state", "object_offset", "side"}


def test_hands_are_missed_in_bursts_at_the_configured_rate(detected):
    from leap_cli.synth.detector import DetectorNoise

    n = DetectorNoise()
    expected = n.miss_start / (n.miss_start + 1 - n.miss_stay)  # the two-state chain's share of lost frames
    lost = [_match(f, LEFT) is None for _, f in detected]
    rate = sum(lost) / len(lost)
    assert 0.6 * expected < rate < 1.5 * expected, (rate, expected)
    runs = _bursts(lost)
    assert np.mean(runs) > 1.5 and np.mean(runs) == pytest.approx(1 / (1 - n.miss_stay), rel=0.3)


def test_hand_boxes_scores_and_sides_are_degraded(detected):
    from leap_cli.epic.hand_objects import HandSide
    from leap_cli.synth.detector import DetectorNoise

    n = DetectorNoise()
    found = [m for _, f in detected if (m := _match(f, LEFT)) is not None]
    w, h = LEFT[2] - LEFT[0], LEFT[3] - LEFT[1]
    right_edge = np.array([m.bbox.right - LEFT[2] for m in found]) / w  # (inside the image: not clipped)
    top_edge = np.array([m.bbox.top - LEFT[1] for m in found]) / h
    assert np.mean([_iou(_box(m), LEFT) for m in found]) < 0.97  # jittered: not a read-back of the truth
    assert right_edge.std() == pytest.approx(n.box_jitter, rel=0.25)  # each edge moves by its own side's share
    assert top_edge.std() == pytest.approx(n.box_jitter, rel=0.25)
    low = np.mean([m.score < 0.5 for m in found])
    assert 0.4 * n.low_score < low < 2 * n.low_score and all(0 < m.score < 1 for m in found)
    swapped = np.mean([m.side != HandSide.LEFT for m in found])
    assert 0.4 * n.side_swap < swapped < 2 * n.side_swap
    for _, f in detected:  # clipped into the image, never empty
        for d in f.hands + f.objects:
            b = d.bbox
            assert 0 <= b.left < b.right <= 1 and 0 <= b.top < b.bottom <= 1, b


def test_false_positive_hands_are_in_the_lower_part_with_middling_scores(detected):
    from leap_cli.synth.detector import DetectorNoise

    n = DetectorNoise()
    false = [h for _, f in detected for h in f.hands
             if _iou(_box(h), LEFT) <= 0.3 and _iou(_box(h), RIGHT) <= 0.3]
    assert 0.5 * n.false_hand < len(false) / N_FRAMES < 2 * n.false_hand
    assert all(h.bbox.top >= 0.3 for h in false) and all(0.5 <= h.score <= 0.8 for h in false)


def test_contact_states_flicker_as_a_detector_errs(detected):
    from leap_cli.epic.hand_objects import HandState
    from leap_cli.synth.detector import DetectorNoise

    n = DetectorNoise()
    held = [(holding, _match(f, RIGHT)) for holding, f in detected]
    in_contact = [m for holding, m in held if holding and m is not None]
    dropped = [m.state == HandState.NO_CONTACT for m in in_contact]
    expected = n.contact_drop_start / (n.contact_drop_start + 1 - n.contact_drop_stay)
    assert 0.6 * expected < np.mean(dropped) < 1.5 * expected
    assert np.mean(_bursts(dropped)) > 1.5  # dropped in bursts
    kept = [m for m in in_contact if m.state != HandState.NO_CONTACT]
    stationary = np.mean([m.state == HandState.STATIONARY_OBJECT for m in kept])  # the truth: portable
    assert 0.6 * n.state_confusion < stationary < 1.5 * n.state_confusion
    assert all(m.state in (HandState.PORTABLE_OBJECT, HandState.STATIONARY_OBJECT) for m in kept)
    free = [_match(f, LEFT) for _, f in detected]
    said = np.mean([m.state != HandState.NO_CONTACT for m in free if m is not None])
    assert 0.4 * n.false_contact < said < 2 * n.false_contact


def test_contact_offsets_point_at_the_held_object_with_noise(detected):
    from leap_cli.epic.hand_objects import HandState
    from leap_cli.synth.detector import DetectorNoise

    n = DetectorNoise()
    err = []
    for holding, f in detected:
        m = _match(f, RIGHT)
        if holding and m is not None and m.state != HandState.NO_CONTACT:
            hx, hy = m.bbox.center
            ox, oy = (HELD[0] + HELD[2]) / 2, (HELD[1] + HELD[3]) / 2
            err.append((m.object_offset[0] - (ox - hx), m.object_offset[1] - (oy - hy)))
    err = np.array(err)
    assert np.abs(err.mean(axis=0)).max() < 0.01  # centred on the object's centre, from the reported hand box
    assert err.std(axis=0) == pytest.approx([n.offset_noise] * 2, rel=0.25)


def test_object_boxes_are_missed_jittered_and_sometimes_false(detected):
    from leap_cli.epic.hand_objects import HandState
    from leap_cli.synth.detector import DetectorNoise

    n = DetectorNoise()
    shown = got = false = 0
    edge = []
    w = HELD[2] - HELD[0]
    for holding, f in detected:
        m = _match(f, RIGHT)
        real = [o for o in f.objects if _iou(_box(o), HELD) > 0.2]
        false += len(f.objects) - len(real)
        if holding and m is not None and m.state != HandState.NO_CONTACT:
            shown += 1
            got += bool(real)
            edge += [(o.bbox.left - HELD[0]) / w for o in real]
    assert 0.5 * n.object_miss < 1 - got / shown < 2 * n.object_miss
    assert np.std(edge) == pytest.approx(n.object_jitter, rel=0.25)
    assert 0.5 * n.false_object < false / N_FRAMES < 2 * n.false_object


def test_the_detector_is_seeded():
    from leap_cli.synth.detector import Detector, TrueHand

    hands = [TrueHand("left", LEFT), TrueHand("right", RIGHT, HELD)]
    a = [Detector(np.random.default_rng(3)).frame("v", i, hands).to_dict() for i in range(50)]
    b = [Detector(np.random.default_rng(3)).frame("v", i, hands).to_dict() for i in range(50)]
    assert a == b


def test_clip_box_keeps_boxes_in_the_image_and_not_empty():
    from leap_cli.synth.detector import _clip_box

    for box in ((-0.2, 0.3, 0.4, 1.3), (0.7, 0.2, 0.5, 0.1), (0.5, 0.5, 0.5, 0.5), (1.2, 1.1, 1.5, 1.4)):
        b = _clip_box(*box)
        assert 0 <= b.left < b.right and 0 <= b.top < b.bottom and b.left <= 1 and b.top <= 1, (box, b)
        assert b.right - b.left >= 0.005 - 1e-9 and b.bottom - b.top >= 0.005 - 1e-9


def test_clean_detections_are_the_truth_itself():
    from leap_cli.epic.hand_objects import HandSide, HandState
    from leap_cli.synth.detector import TrueHand, truth_detections

    hands = [TrueHand("left", LEFT, HELD, stationary=True), TrueHand("right", RIGHT, HELD, stationary=False),
             TrueHand("right", (0.3, 0.6, 0.4, 0.7))]
    d = truth_detections("v", 5, hands)
    assert [h.side for h in d.hands] == [HandSide.LEFT, HandSide.RIGHT, HandSide.RIGHT]
    assert [h.state for h in d.hands] == [HandState.STATIONARY_OBJECT, HandState.PORTABLE_OBJECT,
                                          HandState.NO_CONTACT]
    assert len(d.objects) == 2 and all(_box(o) == pytest.approx(HELD) for o in d.objects)
    for h, true in zip(d.hands[:2], hands):
        assert _box(h) == pytest.approx(true.box)
        hx, hy = (true.box[0] + true.box[2]) / 2, (true.box[1] + true.box[3]) / 2
        ox, oy = (HELD[0] + HELD[2]) / 2, (HELD[1] + HELD[3]) / 2
        assert h.object_offset == pytest.approx((ox - hx, oy - hy), abs=1e-3)
    assert d.hands[2].object_offset == (0.0, 0.0)


# --- the kitchen's sound ---------------------------------------------------------------------------------------

SR = 8000


def _plan(duration=4.0, sound=(), speech=(), verb="cut"):
    from leap_cli.synth.plan import PlannedSegment, SoundEvent, VideoPlan

    seg = PlannedSegment(0, verb, "carrot", verb, "carrot", 0.5, 3.5, ["carrot"], None, (0.0, 0.0),
                         sound=[SoundEvent(*s) for s in sound])
    return VideoPlan("P01_01", 50.0, duration, [seg], [SoundEvent(*s) for s in speech])


def _rms(x) -> float:
    return float(np.sqrt(np.mean(np.asarray(x, np.float64) ** 2)))


def test_events_are_added_over_the_background_where_the_plan_puts_them():
    from leap_cli.synth.sound import render_audio

    plan = _plan(sound=[("running_water", 1.0, 2.0), ("silence", 2.0, 3.0)], speech=[("speech", 3.0, 3.8)])
    bg = (np.random.default_rng(1).standard_normal(int(4.0 * SR)) * 0.01).astype(np.float32)
    with_bg = render_audio(plan, SR, np.random.default_rng(0), bg)
    alone = render_audio(plan, SR, np.random.default_rng(0), np.zeros_like(bg))
    assert with_bg.dtype == np.float32 and len(with_bg) == len(bg)
    assert np.allclose(with_bg - alone, bg, atol=1e-6)  # the events add to the background, nothing replaces it
    sec = lambda a, b: slice(int(a * SR), int(b * SR))  # noqa: E731
    assert not alone[sec(0, 1.0)].any() and not alone[sec(2.0, 3.0)].any()  # "silence" is no sound
    water = alone[sec(1.0, 2.0)].reshape(4, -1)  # water over its whole time, in each quarter
    assert all(_rms(q) > 0.1 for q in water) and _rms(alone[sec(3.0, 3.8)]) > 0.02  # and the plan's speech
    assert abs(alone[int(1.0 * SR)]) < 1e-6 and abs(alone[int(2.0 * SR) - 1]) < 0.02  # faded in and out
    # the clean kitchen (no background): a faint room tone, not digital silence
    clean = render_audio(plan, SR, np.random.default_rng(0))
    assert 0.0005 < _rms(clean[sec(0, 1.0)]) < 0.01
    loud = render_audio(plan, SR, np.random.default_rng(0), np.full_like(bg, 0.98))
    assert loud.max() <= 1.0 and loud.min() >= -1.0


def test_each_kitchen_sound_stands_out_of_a_real_background():
    from leap_cli.synth.sound import _event

    loudest_bg = 10 ** (-28 / 20)  # the loudest background layer's RMS (music at -28 dBFS)
    for label in ("running_water", "chopping", "clatter", "sizzling", "scraping", "rustling", "speech"):
        x = _event(label, "cut", 32000, 16000, np.random.default_rng(0), 0.0)
        assert x.dtype == np.float32 and np.abs(x).max() > 4 * loudest_bg, label  # even the soft ones peak out
        assert _rms(x) > 2 * 10 ** (-40 / 20), label  # and are louder than the loudest room tone


def test_knife_strokes_fall_on_the_segments_stroke_grid():
    from leap_cli.synth.sound import CHOP_HZ, _event

    for t_in_seg in (0.0, 0.2, 0.5):
        x = np.abs(_event("chopping", "cut", 2 * SR, SR, np.random.default_rng(0), t_in_seg))
        hop = SR // 100
        env = np.concatenate([[0.0], x[: len(x) // hop * hop].reshape(-1, hop).max(axis=1)])
        onsets = [i - 1 for i in range(1, len(env)) if env[i] > 1e-6 and env[i - 1] <= 1e-6]  # silent between
        first = (np.ceil(t_in_seg * CHOP_HZ) / CHOP_HZ) - t_in_seg
        assert onsets and onsets[0] * hop / SR == pytest.approx(first, abs=0.03), (t_in_seg, onsets)
        assert np.diff(onsets).mean() * hop / SR == pytest.approx(1 / CHOP_HZ, abs=0.03)
    assert CHOP_HZ == 3.0  # render.py draws the blade on the board at t = k / 3 s (|sin(pi 3 t)| = 0)


def test_background_layers_say_what_is_heard_at_which_level():
    from leap_cli.synth.sound import render_background

    seen, checked = set(), 0
    for seed in range(8):
        duration = 60.0
        audio, layers = render_background(duration, SR, np.random.default_rng(seed))
        assert audio.dtype == np.float32 and len(audio) == int(duration * SR)
        seen |= {ly["label"] for ly in layers}
        assert all(ly["level_db"] < -26 for ly in layers)  # a background, under the kitchen's sounds
        room = [ly for ly in layers if ly["label"] == "room_tone"]
        assert len(room) == 1 and -50 <= room[0]["level_db"] <= -40 and room[0]["stop"] == duration
        # where only always-on layers play, the measured level is theirs
        steady = [ly for ly in layers if ly["label"] in ("room_tone", "fan")]
        quiet = np.ones(len(audio), bool)
        for ly in layers:
            if ly not in steady:
                assert 0 <= ly["start"] < ly["stop"] <= duration
                quiet[int(ly["start"] * SR):int(ly["stop"] * SR)] = False
        if quiet.sum() > SR:
            want = 10 * np.log10(sum(10 ** (ly["level_db"] / 10) for ly in steady))
            assert 10 * np.log10(np.mean(audio[quiet].astype(np.float64) ** 2)) == pytest.approx(want, abs=1.0)
        for label in ("fridge", "music", "babble"):
            spans = sorted((ly["start"], ly["stop"]) for ly in layers if ly["label"] == label)
            for (a0, a1), (b0, _) in zip(spans, spans[1:]):
                assert b0 - a1 >= 10 - 0.01  # on in stretches, off at least the shortest pause between
            for a, b in spans:
                assert b - a <= 40
        # a stretch heard alone over the steady layers is at its stated level (inside its 0.3 s fades)
        steady_power = sum(10 ** (ly["level_db"] / 10) for ly in steady)
        stretches = [ly for ly in layers if ly not in steady]
        for ly in stretches:
            if ly["stop"] - ly["start"] < 2 or any(o is not ly and o["start"] < ly["stop"] and ly["start"] < o["stop"]
                                                   for o in stretches):
                continue
            x = audio[int((ly["start"] + 0.3) * SR):int((ly["stop"] - 0.3) * SR)].astype(np.float64)
            heard = 10 * np.log10(max(np.mean(x ** 2) - steady_power, 1e-12))
            assert heard == pytest.approx(ly["level_db"], abs=1.5), ly
            checked += 1
    assert seen == {"room_tone", "fan", "fridge", "music", "babble"}
    assert checked >= 3
