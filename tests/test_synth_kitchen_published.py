"""The synthetic kitchen publishes only what EPIC-KITCHENS-100 publishes, in EPIC's formats and frame counting,
keeps its truth in ground-truth/ (consistent with what it drew), and is a function of its seed.

Gaps a mutation run over synth/kitchen.py, render.py, plan.py and world.py found in tests/test_synth.py."""

from __future__ import annotations

import ast
import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from leap_cli.epic.hand_objects import HandState, read_hand_objects
from leap_cli.synth.kitchen import (LOCK, MARKER, NTSC_30, NTSC_60, KitchenConfig, assign_videos, build_kitchen,
                                    epic_frame_rate, epic_frames)
from leap_cli.synth.render import BASE_W, Renderer, make_hand, make_panorama, make_sprites, paste
from leap_cli.synth.plan import PlannedSegment
from leap_cli.synth.world import FIXTURES, POUR_FROM, TOOLS, VERBS, follow_ups, visible_objects

CFG = KitchenConfig(videos=4, seed=11, segments_per_video=7)
SPLIT_FILES = {"train": "EPIC_100_train.csv", "val": "EPIC_100_validation.csv", "test": "EPIC_100_test_timestamps.csv"}


@pytest.fixture(scope="module")
def kitchen(tmp_path_factory):
    out = tmp_path_factory.mktemp("published") / "k"
    summary = build_kitchen(out, CFG)
    return out, summary


def _rows(root: Path, split: str) -> list[dict]:
    with (root / "annotations" / SPLIT_FILES[split]).open(newline="") as f:
        return list(csv.DictReader(f))


def _truth(root: Path) -> list[dict]:
    return [json.loads(x) for x in (root / "ground-truth" / "segments.jsonl").read_text().splitlines()]


def _frames(root: Path, video_id: str) -> list[dict]:
    return [json.loads(x) for x in (root / "ground-truth" / "frames" / f"{video_id}.jsonl").read_text().splitlines()]


def _video_info(root: Path) -> dict[str, dict]:
    with (root / "annotations" / "EPIC_100_video_info.csv").open(newline="") as f:
        return {r["video_id"]: r for r in csv.DictReader(f)}


# --- what is published, and where the truth is ------------------------------------------------------------------

PUBLISHED = [re.compile(p) for p in (
    r"annotations/EPIC_100_[a-z_]+\.csv",
    r"P\d\d/videos/P\d\d_\d\d\.MP4",
    r"P\d\d/audio/P\d\d_\d\d\.wav",
    r"hand-objects/P\d\d/P\d\d_\d\d\.pkl",
    r"poses/P\d\d_\d\d\.json",
)]
TRUTH_WORDS = (b"past_end_of_video", b"level_db", b"room_tone", b"contacts", b"program", b"contact_state",
               b'"yaw"', b"sub_action")


def test_only_epic_files_outside_the_truth_folder(kitchen):
    root, _ = kitchen
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_dir() or rel.startswith("ground-truth/") or rel in (MARKER, LOCK):
            continue
        assert any(pat.fullmatch(rel) for pat in PUBLISHED), f"{rel} is published but EPIC has no such file"
        if p.suffix in (".csv", ".json", ".pkl"):
            data = p.read_bytes()
            assert not [w for w in TRUTH_WORDS if w in data], rel


def test_truth_folder_holds_every_video(kitchen):
    root, summary = kitchen
    ids = {v["video_id"] for v in summary.videos}
    assert {p.stem for p in (root / "ground-truth" / "frames").glob("*.jsonl")} == ids
    assert {p.stem for p in (root / "ground-truth" / "audio").glob("*.json")} == ids
    for v in summary.videos:  # 1-based video frame numbers, one line per frame of the full video
        numbers = [f["frame_number"] for f in _frames(root, v["video_id"])]
        assert numbers == list(range(1, len(numbers) + 1))
        assert all(f["roll"] == 0 for f in _frames(root, v["video_id"]))  # the renderer never rolls the camera


# --- EPIC's CSV formats -----------------------------------------------------------------------------------------

TS2 = re.compile(r"\d\d:\d\d:\d\d\.\d\d")
TS3 = re.compile(r"\d\d:\d\d:\d\d\.\d\d\d")


def test_csv_fields_in_epics_formats(kitchen):
    root, summary = kitchen
    by_video: dict[str, list[str]] = {}
    for split in ("train", "val", "test"):
        for r in _rows(root, split):
            # EPIC: start/stop with 2 decimals, the narration time with 3 (or empty)
            assert TS2.fullmatch(r["start_timestamp"]) and TS2.fullmatch(r["stop_timestamp"]), r
            assert r["narration_timestamp"] == "" or TS3.fullmatch(r["narration_timestamp"]), r
            assert r["participant_id"] == r["video_id"][:3] and r["narration_id"].startswith(r["video_id"] + "_")
            by_video.setdefault(r["video_id"], []).append(r["narration_id"])
            if split == "test":
                continue
            assert ":" not in r["narration"]  # EPIC narrates 'chopping board', its noun column says 'board:chopping'
            nouns, classes = ast.literal_eval(r["all_nouns"]), ast.literal_eval(r["all_noun_classes"])
            assert r["all_nouns"] == repr(nouns) and r["all_noun_classes"] == repr(classes)  # Python lists, as EPIC
            assert nouns[0] == r["noun"] and classes[0] == int(r["noun_class"])
    from leap_cli.synth.world import narration_noun

    assert narration_noun("board:chopping") == "chopping board" and narration_noun("plate") == "plate"
    # narration ids count from 0 in each video, in order (P01_11_0, P01_11_1, ...)
    assert by_video.keys() == {v["video_id"] for v in summary.videos}
    for vid, ids in by_video.items():
        assert ids == [f"{vid}_{k}" for k in range(len(ids))]


def test_video_info_columns_as_epic_writes_them(kitchen):
    root, summary = kitchen
    info = _video_info(root)
    for v in summary.videos:
        row = info[v["video_id"]]
        assert float(row["fps"]) == pytest.approx(v["fps"], abs=1e-9)  # full precision (59.9400599400599)
        assert row["resolution"] == f"{CFG.width}x{CFG.height}"  # width x height
        assert float(row["duration"]) == pytest.approx(v["duration"], abs=1e-3)


def test_default_frame_rates_are_epics():
    entries = assign_videos(KitchenConfig(videos=8))
    rates = [e.fps for e in entries]
    assert rates.count(50.0) == 2 and rates.count(NTSC_60) == 5 and rates.count(NTSC_30) == 1
    assert next(e for e in entries if e.fps == NTSC_30).split == "test"
    # the cut video: the first labelled one without poses (poses: the odd-numbered videos)
    cut = KitchenConfig(videos=8).truncated_video()
    bare = [i for i, e in enumerate(entries) if e.split != "test" and int(e.video_id[-2:]) % 2 == 0]
    assert bare and cut == bare[0]
    # small kitchens: from 2 videos on a validation video, from 3 on the last one is test
    for n, splits in ((1, ["train"]), (2, ["train", "val"]), (3, ["train", "val", "test"])):
        assert [e.split for e in assign_videos(KitchenConfig(videos=n))] == splits, n


def test_unseen_participant_files_agree_with_the_splits(kitchen):
    root, _ = kitchen
    train = {r["participant_id"] for r in _rows(root, "train")}
    for split, name in (("val", "validation"), ("test", "test")):
        listed = (root / "annotations" / f"EPIC_100_unseen_participant_ids_{name}.csv").read_text().splitlines()
        assert listed[0] == "participant_id"
        assert set(listed[1:]) == {r["participant_id"] for r in _rows(root, split)} - train


def test_tail_classes_hold_the_rarest_fifth_of_training_instances(kitchen):
    """EPIC's tail: the classes left when the most frequent training classes holding 80% of the training
    instances are taken out (classes never seen in training are tail too)."""
    root, _ = kitchen
    rows = _rows(root, "train")
    for col, name, classes in (("verb_class", "EPIC_100_tail_verbs.csv", "EPIC_100_verb_classes.csv"),
                               ("noun_class", "EPIC_100_tail_nouns.csv", "EPIC_100_noun_classes.csv")):
        with (root / "annotations" / classes).open(newline="") as f:
            ids = {int(r["id"]) for r in csv.DictReader(f)}
        counts: dict[int, int] = {}
        for r in rows:
            counts[int(r[col])] = counts.get(int(r[col]), 0) + 1
        total = sum(counts.values())
        tail = {int(x) for x in (root / "annotations" / name).read_text().splitlines()[1:]}
        head = ids - tail
        assert head and tail <= ids, col
        assert max((counts.get(c, 0) for c in tail), default=0) <= min(counts.get(c, 0) for c in head), col
        assert sum(counts.get(c, 0) for c in head) >= 0.8 * total, col
        # the smallest such head
        assert sum(counts.get(c, 0) for c in head) - min(counts.get(c, 0) for c in head) < 0.8 * total, col


# --- EPIC's frame counting: hand objects and poses ---------------------------------------------------------------

@pytest.mark.parametrize("fps", [NTSC_60, 50.0, NTSC_30])
def test_epic_frames_map_each_number_to_the_video_frame_shown_then(fps):
    rate = epic_frame_rate(fps)
    n_frames = int(12.3 * fps)
    pairs = epic_frames(n_frames, fps)
    duration = n_frames / fps
    numbers = [n for n, _ in pairs]
    assert numbers == list(range(1, len(numbers) + 1))
    # every EPIC frame (time (n - 1) / rate) inside the video, and no more
    assert (numbers[-1] - 1) / rate < duration <= numbers[-1] / rate + 1e-9
    held = [i for _, i in pairs]
    assert held[0] == 0 and all(0 <= i < n_frames for i in held) and held == sorted(held)
    for n, i in pairs:  # the latest video frame whose time is nearest (n - 1) / rate
        t = (n - 1) / rate
        assert -0.5 / rate - 1e-9 <= t - i / fps <= 1 / fps - 0.5 / rate + 1e-9, (n, i)


def test_hand_objects_cover_every_epic_frame_of_the_full_video(kitchen):
    root, summary = kitchen
    info = _video_info(root)
    for v in summary.videos:
        rate = 50.0 if round(float(info[v["video_id"]]["fps"])) == 50 else 60.0
        duration = float(info[v["video_id"]]["duration"])
        dets = read_hand_objects(root / "hand-objects" / v["video_id"][:3] / f"{v['video_id']}.pkl")
        numbers = [d.frame_number for d in dets]
        assert numbers == list(range(1, len(numbers) + 1))
        assert (numbers[-1] - 1) / rate < duration <= numbers[-1] / rate + 1e-6, v["video_id"]
        assert all(d.video_id == v["video_id"] for d in dets)


def test_detected_contacts_come_with_object_boxes_and_fixtures_are_stationary(kitchen):
    root, summary = kitchen
    with_object = in_contact = 0
    fixture_states: list[HandState] = []
    portable_states: list[HandState] = []
    for v in summary.videos:
        frames = _frames(root, v["video_id"])
        index = dict(epic_frames(len(frames), v["fps"]))
        dets = read_hand_objects(root / "hand-objects" / v["video_id"][:3] / f"{v['video_id']}.pkl")
        for d in dets:
            contacts = [h for h in d.hands if h.state in (HandState.PORTABLE_OBJECT, HandState.STATIONARY_OBJECT)]
            in_contact += len(contacts) > 0
            with_object += len(contacts) > 0 and len(d.objects) > 0
            truth = frames[index[d.frame_number]]["hands"]
            for h in truth:
                if h["contact"] is None:
                    continue
                assert h["contact_state"] == ("stationary" if h["contact"] in FIXTURES else "portable"), h
                for det in d.hands:
                    if det.side.name.lower() == h["side"] and det.state in (HandState.PORTABLE_OBJECT,
                                                                             HandState.STATIONARY_OBJECT):
                        (fixture_states if h["contact"] in FIXTURES else portable_states).append(det.state)
    assert in_contact > 100 and with_object / in_contact > 0.7  # the detector misses some object boxes, not most
    assert fixture_states and portable_states
    assert np.mean([s == HandState.STATIONARY_OBJECT for s in fixture_states]) > 0.7
    assert np.mean([s == HandState.PORTABLE_OBJECT for s in portable_states]) > 0.7


def test_poses_are_epic_fields_with_noise_gaps_and_a_moving_head(kitchen):
    from leap_cli.extract.camera import angles, read_epic_fields

    root, summary = kitchen
    # the cut video: the first labelled one without poses (nothing describes its missing part), else the second
    cut = next(v["video_id"] for v in summary.videos if "truncated_at" in v)
    labelled = [v["video_id"] for v in summary.videos if v["split"] != "test"]
    bare = [vid for vid in labelled if not (root / "poses" / f"{vid}.json").exists()]
    assert cut == (bare[0] if bare else summary.videos[1]["video_id"])
    # the file ends inside the third segment from the end (earlier ones are whole)
    at = next(v["truncated_at"] for v in summary.videos if "truncated_at" in v)
    segs = sorted((t for t in _truth(root) if t["video_id"] == cut), key=lambda t: t["start"])
    assert segs[-3]["start"] < at < segs[-3]["stop"]
    residuals, centres, gaps = [], [], 0
    for path in sorted((root / "poses").glob("*.json")):
        v = next(x for x in summary.videos if x["video_id"] == path.stem)
        frames = _frames(root, path.stem)
        index = dict(epic_frames(len(frames), v["fps"]))
        doc = json.loads(path.read_text())
        for img in doc["images"].values():
            centres.append(img[4:])
        read, _ = read_epic_fields(path)
        numbers = sorted(read)
        assert all(n % 2 == 0 for n in numbers) and numbers[-1] <= max(index)
        gaps += sum(b - a > 2 for a, b in zip(numbers, numbers[1:]))
        first = read[numbers[0]][0]
        for n in numbers:
            yaw, _, _ = angles(first @ read[n][0].T)
            residuals.append(yaw - (frames[index[n]]["yaw"] - frames[index[numbers[0]]]["yaw"]))
    assert residuals and gaps >= 1
    # a reconstruction, not the truth: tenths of a degree of noise, and the head sways (translations move)
    assert 0.1 < float(np.std(residuals)) < 1.5
    assert float(np.ptp(np.array(centres), axis=0).max()) > 0.005


# --- media: the WAV, the MP4's audio track, the truncated file ----------------------------------------------------

def test_wav_is_16_bit_and_the_mp4_track_16_khz_and_cut_with_the_video(kitchen):
    import av
    import soundfile as sf

    from leap_cli.media.audio import AudioUnavailable, read_video_audio

    root, summary = kitchen
    for v in summary.videos:
        p = v["video_id"][:3]
        info = sf.info(str(root / p / "audio" / f"{v['video_id']}.wav"))
        assert (info.subtype, info.samplerate) == ("PCM_16", CFG.sample_rate)
        assert info.duration == pytest.approx(v["duration"], abs=0.05)  # the WAV is the full video's sound
        with av.open(str(root / p / "videos" / f"{v['video_id']}.MP4")) as c:
            assert c.streams.audio[0].rate == 16000
    cut = next(v for v in summary.videos if "truncated_at" in v)
    mp4 = root / cut["video_id"][:3] / "videos" / f"{cut['video_id']}.MP4"
    assert read_video_audio(mp4, 0.0, cut["truncated_at"] - 0.2).size > 0
    with pytest.raises(AudioUnavailable):  # a broken download cuts the sound with the pictures
        read_video_audio(mp4, cut["truncated_at"] + 0.3, cut["truncated_at"] + 1.3)


# --- the truth agrees with what was drawn -------------------------------------------------------------------------

def _holder(verb: str, noun: str) -> str:
    return POUR_FROM[noun] if verb == "pour" else TOOLS[verb] if (verb, noun) == ("mix", "pan") else noun


def test_truth_contacts_and_objects_follow_the_action(kitchen):
    root, _ = kitchen
    truth = [t for t in _truth(root) if not t.get("past_end_of_video")]
    with_noun, extra_objects, overlaps, follow = 0, 0, 0, 0
    by_video: dict[str, list[dict]] = {}
    for t in truth:
        by_video.setdefault(t["video_id"], []).append(t)
        held = [c for c in t["contacts"] if c["object"] == _holder(t["verb"], t["noun"])]
        with_noun += bool(held)
        if t["verb"] in ("take", "put") and held:
            assert {c["hand"] for c in held} == {"right"}, t["narration_id"]  # as the true program says
            # the hand holds the object for most of a take (from 30%) and a put (until 60%)
            assert sum(c["stop"] - c["start"] for c in held) > 0.4 * (t["stop"] - t["start"]), t["narration_id"]
        extra_objects += bool(set(t["objects"]) - set(visible_objects(t["verb"], t["noun"])))
        assert t["program"]["action"]["noun_class"] == t["noun_class"]
        assert t["program"]["action"]["verb_class"] == t["verb_class"]
    assert with_noun >= 0.9 * len(truth)
    assert extra_objects > 0  # distractors: other objects in view
    for segs in by_video.values():
        overlaps += sum(b["start"] < a["stop"] for a, b in zip(segs, segs[1:]))  # EPIC's segments overlap
        follow += sum((b["verb"], b["noun"]) in follow_ups(a["verb"], a["noun"]) for a, b in zip(segs, segs[1:]))
    pairs = sum(len(s) - 1 for s in by_video.values())
    assert overlaps > 0 and follow >= 0.3 * pairs


def test_camera_turns_in_the_truth_turn_the_frames_by_their_degrees(kitchen):
    root, _ = kitchen
    ratios = []
    for t in _truth(root):
        frames = _frames(root, t["video_id"])
        fps = len(frames) / float(_video_info(root)[t["video_id"]]["duration"])
        for ev in t["camera"]:
            if ev["motion"] not in ("turn_left", "turn_right"):
                continue
            a = int(round((t["start"] + ev["start"]) * fps))
            b = min(len(frames) - 1, int(round((t["start"] + ev["stop"]) * fps)))
            sign = 1 if ev["motion"] == "turn_right" else -1
            ratios.append(sign * (frames[b]["yaw"] - frames[a]["yaw"]) / ev["degrees"])
    assert len(ratios) >= 3
    assert 0.85 < float(np.median(ratios)) < 1.15
    # the head turns back towards the counter: yaw and pitch stay within the planner's limits (plus a shake)
    from leap_cli.synth.plan import PITCH_LIMIT, YAW_LIMIT

    for vid in {t["video_id"] for t in _truth(root)}:
        frames = _frames(root, vid)
        assert max(abs(f["yaw"]) for f in frames) <= YAW_LIMIT + 3, vid
        assert max(abs(f["pitch"]) for f in frames) <= PITCH_LIMIT + 4, vid


@pytest.fixture(scope="module")
def renderer():
    sprites, rotated = make_sprites(1.0)
    rng = np.random.default_rng(0)
    hands = {s: make_hand(s, (220, 170, 140), 1.0) for s in ("left", "right")}
    return Renderer(BASE_W, 144, sprites, rotated, hands, make_panorama(rng, BASE_W, 144),
                    rng.integers(0, 60, (1200, 3)).astype(np.int16)), sprites


def test_every_object_drawn_is_in_the_frame_truth(renderer):
    r, _ = renderer
    for verb, spec in VERBS.items():
        for noun in spec.nouns:
            seg = PlannedSegment(1, verb, noun, verb, noun, 0.0, 2.0, [noun], "tomato" if noun != "tomato" else "cup",
                                 (0.0, -4.0))
            frame, objects, drawn = r.frame(1.0, 0.0, 0.0, seg, r.anchor(0.0, 0.0, seg.place), (220, 170, 140))
            labels = [lab for lab, _ in objects]
            assert set(visible_objects(verb, noun)) <= set(labels), (verb, noun, labels)
            assert seg.distractor in labels, (verb, noun)
            sides = [h.side for h, _ in drawn]
            assert len(sides) == len(set(sides)), (verb, noun, sides)  # one left hand, one right hand
    # Nobody acting: both hands rest below the frame, not drawn, not in the truth.
    _, objects, drawn = r.frame(0.0, 0.0, 0.0, None, None, (220, 170, 140))
    assert objects == [] and drawn == []


def test_looking_up_moves_the_scene_down(renderer):
    """Pitch as the truth has it (up is positive): looking up shows more of the wall, the scene moves down."""
    import cv2

    r, _ = renderer
    ahead = r.anchor(0.0, 0.0, (0.0, 0.0))
    assert r.project(ahead, 0.0, 5.0)[1] > r.H / 2  # looking up: what was straight ahead is lower in the frame
    assert r.project(ahead, 5.0, 0.0)[0] < r.W / 2  # turning right: it is further left
    level, _, _ = r.frame(0.0, 0.0, 0.0, None, None, (220, 170, 140))
    up, _, _ = r.frame(0.0, 0.0, 4.0, None, None, (220, 170, 140))
    grey = [cv2.cvtColor(x[:100], cv2.COLOR_RGB2GRAY).astype(np.float32) for x in (level, up)]
    (_, dy), _ = cv2.phaseCorrelate(grey[0], grey[1])
    assert dy == pytest.approx(4.0 * r.ppd, abs=1.5)


def test_published_intrinsics_describe_the_rendered_pixels(kitchen, renderer):
    """The poses' intrinsics (EPIC Fields' camera) are those of the frames: a turn moves the image as they say (the
    renderer slid a 70 deg linear view under 90 deg intrinsics: a turn moved the pixels 1.6x what they said)."""
    import cv2

    root, _ = kitchen
    doc = json.loads(next((root / "poses").glob("*.json")).read_text())
    fx = doc["camera"]["params"][0] * BASE_W / doc["camera"]["width"]  # at the renderer's width
    r, _ = renderer
    a, _, _ = r.frame(0.0, 0.0, 0.0, None, None, (220, 170, 140))
    b, _, _ = r.frame(0.0, 4.0, 0.0, None, None, (220, 170, 140))
    grey = [cv2.cvtColor(x[:100], cv2.COLOR_RGB2GRAY).astype(np.float32) for x in (a, b)]
    (dx, _), _ = cv2.phaseCorrelate(grey[0], grey[1])
    assert abs(dx) == pytest.approx(fx * math.tan(math.radians(4.0)), rel=0.15)


@pytest.mark.parametrize("turn", [-8.0, 5.0, 12.0])
def test_odometry_at_its_default_field_of_view_reads_the_kitchens_turns_in_degrees(renderer, turn):
    """Where the kitchen publishes no poses, extract's visual odometry (default --fov 90, as for EPIC's camera)
    says how far the head turned: its degrees are the kitchen's (a slid view gave a rotation of half the slide's
    angle: odometry read ~0.8x the turns)."""
    import cv2

    from leap_cli.extract.camera import angles, intrinsics, relative_pose

    r, _ = renderer
    a, _, _ = r.frame(0.0, 0.0, 0.0, None, None, (220, 170, 140))
    b, _, _ = r.frame(0.0, turn, 0.0, None, None, (220, 170, 140))
    g1, g2 = (cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in (a, b))
    orb = cv2.ORB_create(nfeatures=300, edgeThreshold=15, patchSize=15, fastThreshold=10)
    est = relative_pose(g1, g2, intrinsics(r.W, r.H, 90.0), orb)
    yaw = angles(est["r_cam"])[0]
    assert yaw == pytest.approx(turn, rel=0.1), est


def test_an_action_happens_where_the_camera_looks_when_it_starts(renderer):
    r, _ = renderer
    for yaw, pitch in ((0.0, 0.0), (30.0, -6.0), (-40.0, 8.0)):
        ax, ay = r.project(r.anchor(yaw, pitch, (0.0, -4.0)), yaw, pitch)  # straight ahead, 4 deg down
        assert ax == pytest.approx(r.W / 2, abs=1) and ay == pytest.approx(r.H / 2 + r.f * math.tan(math.radians(4)),
                                                                           abs=1)


def test_objects_look_like_themselves(renderer):
    from leap_cli.synth.world import LOOKS

    _, sprites = renderer
    for name, sp in sprites.items():
        noun = name.split(":")[0] if name.endswith((":peeled", ":down")) else name
        colours = {tuple(int(c) for c in px) for px in sp.rgb[sp.mask]}
        want = LOOKS[noun].colour2 if name.endswith(":peeled") else LOOKS[noun].colour
        assert tuple(want) in colours, name  # its own colour (the inside once peeled)
    for veg in ("onion", "potato", "carrot"):
        assert (sprites[f"{veg}:peeled"].rgb != sprites[veg].rgb).any()


def test_boxes_are_the_drawn_pixels(renderer):
    _, sprites = renderer
    sp = sprites["cup"]  # a full rectangle
    w, h = sp.size
    frame = np.zeros((144, BASE_W, 3), np.uint8)
    box = paste(frame, sp, 100, 70)
    ys, xs = np.nonzero(frame.sum(axis=2) > 0)
    assert box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) and (box[2] - box[0], box[3] - box[1]) == (w, h)
    frame[:] = 0
    edge = paste(frame, sp, 2, 70)  # partly off the left edge: clipped to the frame
    ys, xs = np.nonzero(frame.sum(axis=2) > 0)
    assert edge == (0, ys.min(), xs.max() + 1, ys.max() + 1) and edge[2] - edge[0] < w
    assert paste(frame, sp, -50, 70) is None


def test_a_hand_partly_out_of_view_still_counts(kitchen):
    """A hand counts as visible (truth, hence detections) when a quarter of it is in the frame: some true hand
    boxes are clipped by the frame's edge."""
    root, summary = kitchen
    w, h = make_hand("right", (220, 170, 140), CFG.width / BASE_W).size
    clipped = 0
    for v in summary.videos:
        for f in _frames(root, v["video_id"]):
            for hand in f["hands"]:
                b = hand["bbox"]
                clipped += (b["right"] - b["left"]) * CFG.width < w - 1 or (b["bottom"] - b["top"]) * CFG.height < h - 1
    assert clipped > 0


# --- a function of its seed ---------------------------------------------------------------------------------------

def test_another_seed_gives_another_kitchen(tmp_path):
    a = build_kitchen(tmp_path / "a", KitchenConfig(videos=1, seed=1, segments_per_video=2))
    b = build_kitchen(tmp_path / "b", KitchenConfig(videos=1, seed=2, segments_per_video=2))
    assert a.videos[0]["video_id"] == b.videos[0]["video_id"]
    for rel in ("annotations/EPIC_100_train.csv", "P01/audio/P01_01.wav", "hand-objects/P01/P01_01.pkl"):
        assert (tmp_path / "a" / rel).read_bytes() != (tmp_path / "b" / rel).read_bytes(), rel


def test_a_29_97_fps_video_is_numbered_at_60_per_second(tmp_path):
    """EPIC counts the frames of its 29.97 fps videos at 60 per second too: hand objects and EPIC Fields' image
    names use those numbers, not the MP4's own frame indices."""
    from leap_cli.extract.camera import read_epic_fields

    summary = build_kitchen(tmp_path / "k", KitchenConfig(videos=1, seed=5, segments_per_video=3, fps=(NTSC_30,)))
    v = summary.videos[0]
    assert v["fps"] == NTSC_30 and int(v["video_id"][-2:]) % 2 == 1  # an odd-numbered video: it has poses
    root = tmp_path / "k"
    last = math.ceil(v["duration"] * 60 - 1e-6)
    dets = read_hand_objects(root / "hand-objects" / "P01" / f"{v['video_id']}.pkl")
    assert [d.frame_number for d in dets] == list(range(1, last + 1))
    read, _ = read_epic_fields(root / "poses" / f"{v['video_id']}.json")
    assert max(read) <= last and max(read) > 0.8 * last


def test_the_narrations_other_noun_forms_are_epics_instances_of_the_noun():
    """'dish' narrates a plate, 'mug' a cup: each form the kitchen narrates is one of the instances EPIC's noun class
    file lists for that noun (a form of another class would teach the wrong noun)."""
    from leap_cli.resources import resource_dir
    from leap_cli.synth.world import NOUN_FORMS

    with open(resource_dir("epic100_subset") / "EPIC_100_noun_classes.csv", newline="") as f:
        instances = {r["key"]: ast.literal_eval(r["instances"]) for r in csv.DictReader(f)}
    assert NOUN_FORMS and any(len(forms) > 1 for forms in NOUN_FORMS.values())
    for noun, forms in NOUN_FORMS.items():
        assert noun in forms and all(form in instances[noun] for form in forms), (noun, forms)
