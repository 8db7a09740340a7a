"""The synthetic kitchen: EPIC formats that the real readers parse, decodable media, truth that matches
what is drawn and heard, determinism, and rebuild rules."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from leap_cli.epic.annotations import Annotations
from leap_cli.epic.classes import ClassVocab
from leap_cli.epic.hand_objects import HandState, read_hand_objects
from leap_cli.epic.layout import DatasetLayout
from leap_cli.epic.timing import FrameClock
from leap_cli.errors import LeapError
from leap_cli.media import open_video, read_audio, read_segment_audio, read_video_audio
from leap_cli.extract.camera import angles, read_epic_fields
from leap_cli.synth.kitchen import (MARKER, TRUNCATED_SEGMENTS, KitchenConfig, assign_videos, build_kitchen,
                                    epic_frame_rate, epic_frames, world_to_camera)
from leap_cli.synth.plan import PlannedSegment
from leap_cli.synth.render import BASE_W, Renderer, make_hand, make_panorama, make_sprites
from leap_cli.synth.world import LOOKS, VERBS, true_program, vocabularies
from tests.procs import leap_here

CFG = KitchenConfig(videos=4, seed=3, segments_per_video=7)
EPIC = Path(__file__).parent / "data" / "epic100"


@pytest.fixture(scope="module")
def kitchen(tmp_path_factory):
    out = tmp_path_factory.mktemp("kitchen") / "k"
    summary = build_kitchen(out, CFG)
    return out, summary


def _truth(root: Path) -> list[dict]:
    return [json.loads(x) for x in (root / "ground-truth" / "segments.jsonl").read_text().splitlines()]


def test_csvs_parse_with_the_epic_readers(kitchen):
    root, summary = kitchen
    ann = Annotations(root / "annotations")
    train, val, test = ann.segments("train"), ann.segments("val"), ann.segments("test")
    assert (len(train), len(val), len(test)) == (summary.segments("train"), summary.segments("val"),
                                                  summary.segments("test"))
    assert len(test) > 0 and all(not s.has_labels for s in test) and all(s.has_labels for s in train + val)
    for s in train + val:
        assert ann.verbs.resolve(s.verb) == s.verb_class and ann.nouns.resolve(s.noun) == s.noun_class
        assert list(s.all_noun_classes) == [ann.nouns.resolve(n) for n in s.all_nouns]
        assert 0 <= s.start < s.stop and s.start_frame <= s.stop_frame
    unseen = ann.unseen_participants("val")
    assert len(unseen) == 1 and not unseen & {s.participant_id for s in train}
    assert set(ann.tail_verbs) <= set(ann.verbs.ids) and set(ann.tail_nouns) <= set(ann.nouns.ids)
    assert set(ann.video_info) == {v["video_id"] for v in summary.videos}
    assert {round(v.fps, 2) for v in ann.video_info.values()} <= {29.97, 50.0, 59.94}
    # The header lines are byte-identical to EPIC's.
    for name in ("EPIC_100_train.csv", "EPIC_100_validation.csv", "EPIC_100_test_timestamps.csv",
                 "EPIC_100_video_info.csv", "EPIC_100_verb_classes.csv", "EPIC_100_unseen_participant_ids_validation.csv"):
        ours = (root / "annotations" / name).read_text().splitlines()[0]
        real = (EPIC / name).read_text(encoding="utf-8-sig").splitlines()[0]
        assert ours == real, name


def test_class_files_are_real_epic_rows():
    verbs, nouns = vocabularies()
    real_v = ClassVocab.from_csv(EPIC / "EPIC_100_verb_classes.csv", "verb")
    real_n = ClassVocab.from_csv(EPIC / "EPIC_100_noun_classes.csv", "noun")
    for ours, real in ((verbs, real_v), (nouns, real_n)):
        for cid in ours.ids:
            assert ours.key(cid) == real.key(cid) and ours.instances[cid] == real.instances[cid]
            assert ours.categories[cid] == real.categories[cid]
    for spec in VERBS.values():
        for form in spec.forms:
            assert verbs.resolve(form) == real_v.resolve(spec.key), form
        for n in spec.nouns:
            assert nouns.resolve(n) is not None, n


def test_splits_and_participants():
    entries = assign_videos(KitchenConfig(videos=8))
    splits = [e.split for e in entries]
    assert splits.count("train") == 5 and splits.count("val") == 2 and splits.count("test") == 1
    train_people = {e.participant_id for e in entries if e.split == "train"}
    assert {e.participant_id for e in entries if e.split == "val"} - train_people == {"P04"}
    assert len({e.video_id for e in entries}) == 8


def test_decoded_window_and_audio_window(kitchen):
    root, _ = kitchen
    layout = DatasetLayout.open(root)
    ann = layout.annotations()
    seg = ann.segments("train")[2]
    with open_video(layout, seg.video_id, record=seg.narration_id) as r:
        assert (r.width, r.height) == (CFG.width, CFG.height)
        assert r.fps == pytest.approx(ann.fps(seg.video_id), abs=1e-6)
        assert r.num_frames == pytest.approx(ann.video_info[seg.video_id].duration * r.fps, abs=1)
        window = FrameClock("mp4", r.fps, r.num_frames).window(seg.start, seg.stop, 8)
        clip = r.read_frames(list(window.require().frames), short_side=64)
    assert clip.shape == (8, 64, 85, 3) and clip.dtype == np.uint8 and clip.std() > 5
    audio = read_segment_audio(layout, seg.video_id, seg.start, seg.stop, 16000)
    assert audio.dtype == np.float32 and audio.shape == (round((seg.stop - seg.start) * 16000),)


def _envelope(x: np.ndarray, rate: int) -> np.ndarray:
    hop = rate // 50
    n = len(x) // hop
    return np.sqrt((x[:n * hop].reshape(n, hop) ** 2).mean(axis=1))


def test_mp4_audio_track_matches_the_wav(kitchen):
    root, _ = kitchen
    layout = DatasetLayout.open(root)
    cut = {v["video_id"] for v in json.loads((root / MARKER).read_text())["summary"]["videos"] if "truncated_at" in v}
    seg = max((s for s in layout.annotations().segments("train") if s.video_id not in cut), key=lambda s: s.duration)
    wav = read_audio(layout.audio_path(seg.video_id), seg.start, seg.stop, 16000)
    track = read_video_audio(layout.video_path(seg.video_id), seg.start, seg.stop, 16000)
    assert track.shape == wav.shape
    a, b = _envelope(wav, 16000), _envelope(track, 16000)
    assert np.corrcoef(a, b)[0, 1] > 0.9


def test_sound_differs_by_label(kitchen):
    root, _ = kitchen
    layout = DatasetLayout.open(root)
    rms: dict[str, list[float]] = {}
    for t in _truth(root):
        wav = layout.audio_path(t["video_id"])
        for ev in t["sound"]:
            if ev["stop"] - ev["start"] < 0.2:
                continue
            x = read_audio(wav, t["start"] + ev["start"], t["start"] + ev["stop"], 16000)
            rms.setdefault(ev["label"], []).append(float(np.sqrt((x ** 2).mean())))
    loud = [k for k in ("running_water", "chopping", "scraping") if k in rms]
    assert loud and "silence" in rms
    for k in loud:  # the truth's "silence" is the kitchen's background: room tone, fan, hum, music, babble
        assert np.median(rms[k]) > 2.5 * np.median(rms["silence"]), k


def test_ground_truth_matches_annotations_and_video(kitchen):
    root, summary = kitchen
    ann = Annotations(root / "annotations")
    rows = {s.narration_id: s for split in ("train", "val", "test") for s in ann.segments(split)}
    truth = _truth(root)
    assert [t["narration_id"] for t in truth] and {t["narration_id"] for t in truth} == set(rows)
    verbs, nouns = ann.verbs, ann.nouns
    for t in truth:
        s = rows[t["narration_id"]]
        assert (t["start"], t["stop"], t["video_id"]) == (pytest.approx(s.start), pytest.approx(s.stop), s.video_id)
        if s.has_labels:
            assert (t["verb_class"], t["noun_class"]) == (s.verb_class, s.noun_class)
        assert verbs.key(t["verb_class"]) == t["verb"] and nouns.key(t["noun_class"]) == t["noun"]
        assert t["program"]["action"]["verb_class"] == t["verb_class"]
        dur = t["stop"] - t["start"]
        for ev in t["sound"] + t["camera"] + t["contacts"]:
            assert -1e-6 <= ev["start"] < ev["stop"] <= dur + 1e-6
        assert t["noun"] in t["objects"] or t["noun"] in ("water", "oil")
        _check_program_vocab(t["program"], verbs, nouns)
    for v in summary.videos:
        frames = (root / "ground-truth" / "frames" / f"{v['video_id']}.jsonl").read_text().splitlines()
        full = round(v["duration"] * v["fps"])  # the truth covers the whole video, also where the file is cut
        assert len(frames) == full and v["frames"] <= full
        dets = read_hand_objects(DatasetLayout.open(root).hand_objects_path(v["video_id"]))
        # numbered as EPIC numbers frames: 60 per second for 59.94 fps videos
        assert [d.frame_number for d in dets] == [n for n, _ in epic_frames(full, v["fps"])]
        for d in dets[::50]:
            for h in d.hands:
                assert 0 <= h.bbox.left < h.bbox.right <= 1 and 0 <= h.bbox.top < h.bbox.bottom <= 1
    # Contacts in the truth show up as in-contact hands in most detection frames (the detector flickers).
    in_contact = total = 0
    for t in truth:
        for c in t["contacts"]:
            rate = epic_frame_rate(ann.video_info[t["video_id"]].fps)
            dets = read_hand_objects(root / "hand-objects" / t["video_id"][:3] / f"{t['video_id']}.pkl")
            for x in np.linspace(c["start"], c["stop"], 5)[1:-1]:
                det = dets[int((t["start"] + x) * rate)]
                total += 1
                in_contact += any(h.state in (HandState.PORTABLE_OBJECT, HandState.STATIONARY_OBJECT)
                                  for h in det.hands)
    assert total >= 20 and 0.7 <= in_contact / total < 1.0


def _check_program_vocab(program: dict, verbs: ClassVocab, nouns: ClassVocab) -> None:
    def walk(steps):
        for st in steps:
            if st["type"] == "sub_action":
                assert verbs.resolve(st["verb"]) is not None, st["verb"]
                assert nouns.resolve(st["object_a"]) is not None, st["object_a"]
                assert st["object_b"] is None or nouns.resolve(st["object_b"]) is not None
            for key in ("steps", "then", "else"):
                walk(st.get(key, []))
    walk(program["steps"])
    for cond in program["pre"] + program["post"]:
        args = cond["args"][1:] if cond["predicate"] in ("holding", "touching") else cond["args"]
        assert all(nouns.resolve(a) is not None for a in args), cond


def test_camera_turns_move_the_scene_the_right_way(kitchen):
    """Visual odometry sanity: turning right shifts the background left in the image, and COLMAP poses agree."""
    root, _ = kitchen
    layout = DatasetLayout.open(root)
    checked = 0
    for t in _truth(root):
        for ev in t["camera"]:
            if ev["motion"] not in ("turn_left", "turn_right") or ev["degrees"] < 10 or checked >= 4:
                continue
            frames = [json.loads(x) for x in (root / "ground-truth" / "frames" / f"{t['video_id']}.jsonl").read_text().splitlines()]
            with open_video(layout, t["video_id"]) as r:
                a = int((t["start"] + ev["start"]) * r.fps) + 1
                b = min(r.num_frames, int((t["start"] + ev["stop"]) * r.fps) + 1)
                im = r.read_frames([a, b])
            wall = [cv2.cvtColor(x[: CFG.height // 3], cv2.COLOR_RGB2GRAY).astype(np.float32) for x in im]
            (dx, _), _ = cv2.phaseCorrelate(wall[0], wall[1])
            dyaw = frames[b - 1]["yaw"] - frames[a - 1]["yaw"]
            sign = 1 if ev["motion"] == "turn_right" else -1
            assert np.sign(dyaw) == sign and abs(dyaw) > 0.5 * ev["degrees"]
            assert np.sign(dx) == -sign, (t["narration_id"], ev, dx)
            checked += 1
    assert checked >= 1
    # A camera yawed right looks along +x in world coordinates (COLMAP: R_w2c^T @ z).
    forward = world_to_camera(30.0, 0.0).T @ np.array([0, 0, 1.0])
    assert forward[0] == pytest.approx(np.sin(np.radians(30)))
    # EPIC Fields' JSON for the odd-numbered videos only, in its own layout, agreeing with the true yaw.
    poses = sorted((root / "poses").glob("*.json"))
    assert [p.stem for p in poses] == sorted(v.video_id for v in assign_videos(CFG) if int(v.video_id[-2:]) % 2)
    doc = json.loads(poses[0].read_text())
    assert set(doc) == {"camera", "images", "points"}
    assert doc["camera"]["model"] == "OPENCV" and len(doc["camera"]["params"]) == 8
    assert (doc["camera"]["width"], doc["camera"]["height"]) == (CFG.width, CFG.height)
    name, pose = next(iter(doc["images"].items()))
    assert name.startswith("frame_") and name.endswith(".jpg") and len(pose) == 7
    assert all(len(p) == 6 for p in doc["points"])
    read, _ = read_epic_fields(poses[0])
    fps = next(v.fps for v in assign_videos(CFG) if v.video_id == poses[0].stem)
    frames = [json.loads(x) for x in (root / "ground-truth" / "frames" / f"{poses[0].stem}.jsonl").read_text().splitlines()]
    numbers = sorted(read)
    assert 0.3 < len(numbers) / len(epic_frames(len(frames), fps)) < 0.55  # every 2nd frame, with gaps
    for n in numbers[:: max(1, len(numbers) // 20)]:
        truth_yaw = frames[dict(epic_frames(len(frames), fps))[n]]["yaw"]
        r_first = read[numbers[0]][0]
        yaw, _, _ = angles(r_first @ read[n][0].T)  # camera n in the first registered camera's axes
        first_yaw = frames[dict(epic_frames(len(frames), fps))[numbers[0]]]["yaw"]
        assert yaw == pytest.approx(truth_yaw - first_yaw, abs=1.5)


def test_every_verb_and_noun_renders():
    sprites, rotated = make_sprites(1.0)
    rng = np.random.default_rng(0)
    hands = {s: make_hand(s, (220, 170, 140), 1.0) for s in ("left", "right")}
    r = Renderer(BASE_W, 144, sprites, rotated, hands, make_panorama(rng, BASE_W, 144),
                 rng.integers(0, 60, (1200, 3)).astype(np.int16))
    looks = set()
    verbs, nouns = vocabularies()
    for verb, spec in VERBS.items():
        for noun in spec.nouns:
            seg = PlannedSegment(0, verb, noun, verb, noun, 0.0, 2.0, [noun], None, (0.0, -4.0))
            anchor = r.anchor(0.0, 0.0, seg.place)
            _, objects, drawn = r.frame(1.0, 0.0, 0.0, seg, anchor, (220, 170, 140))
            labels = {lab for lab, _ in objects}
            assert noun in labels, (verb, noun)
            assert any(h.contact for h, _ in drawn), (verb, noun)
            looks.add(noun)
            true_program(verb, noun, f"{verb} {noun}", verbs.resolve(verb), nouns.resolve(noun))
    assert looks <= set(LOOKS)
    # Nouns look different: mean colours of the sprites are pairwise distinct.
    means = {n: sp.rgb[sp.mask].mean(axis=0) for n, sp in sprites.items() if ":" not in n or n == "board:chopping"}
    names = sorted(means)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.abs(means[a] - means[b]).max() > 8 or sprites[a].mask.shape != sprites[b].mask.shape, (a, b)


def test_same_seed_same_bytes_and_rebuild_rules(kitchen, tmp_path):
    root, _ = kitchen
    other = tmp_path / "again"
    build_kitchen(other, CFG)
    files = ["annotations/EPIC_100_train.csv", "annotations/EPIC_100_validation.csv",
             "annotations/EPIC_100_test_timestamps.csv", "annotations/EPIC_100_video_info.csv",
             "ground-truth/segments.jsonl"]
    first = assign_videos(CFG)[0]
    p, v = first.participant_id, first.video_id
    files += [f"{p}/audio/{v}.wav", f"{p}/videos/{v}.MP4", f"hand-objects/{p}/{v}.pkl", f"poses/{v}.json",
              f"ground-truth/frames/{v}.jsonl", f"ground-truth/audio/{v}.json"]
    for f in files:
        assert (root / f).read_bytes() == (other / f).read_bytes(), f
    # A different seed gives a different kitchen.
    changed = build_kitchen(tmp_path / "seed4", KitchenConfig(videos=2, seed=4, segments_per_video=3))
    assert (tmp_path / "seed4" / "annotations" / "EPIC_100_train.csv").read_bytes() != \
        (root / "annotations" / "EPIC_100_train.csv").read_bytes()
    # Same config again: skipped, nothing rewritten.
    mtime = (other / files[0]).stat().st_mtime_ns
    again = build_kitchen(other, CFG)
    assert again.skipped and (other / files[0]).stat().st_mtime_ns == mtime
    # A changed config rebuilds in place; a folder without a marker is refused unless forced.
    smaller = build_kitchen(tmp_path / "seed4", KitchenConfig(videos=2, seed=4, segments_per_video=2))
    assert not smaller.skipped and smaller.segments() == 4 and changed.segments() == 6
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    with pytest.raises(LeapError, match="--force"):
        build_kitchen(junk, KitchenConfig(videos=1, segments_per_video=2))
    build_kitchen(junk, KitchenConfig(videos=1, segments_per_video=2), force=True)
    assert (junk / "notes.txt").exists() and (junk / MARKER).exists()
    # A kitchen an earlier leap built (another KITCHEN_VERSION: other bytes for the config) is rebuilt.
    import leap_cli.synth.kitchen as kitchen_module

    marker = json.loads((junk / MARKER).read_text())
    with pytest.MonkeyPatch.context() as m:
        m.setattr(kitchen_module, "KITCHEN_VERSION", kitchen_module.KITCHEN_VERSION - 1)
        earlier = KitchenConfig(videos=1, segments_per_video=2).hash()
    (junk / MARKER).write_text(json.dumps({**marker, "hash": earlier}))
    assert not build_kitchen(junk, KitchenConfig(videos=1, segments_per_video=2)).skipped
    # An interrupted build (marker not complete) is redone without --force.
    marker = json.loads((junk / MARKER).read_text())
    (junk / MARKER).write_text(json.dumps({**marker, "complete": False}))
    (junk / "annotations" / "EPIC_100_train.csv").unlink()
    redone = build_kitchen(junk, KitchenConfig(videos=1, segments_per_video=2))
    assert not redone.skipped and (junk / "annotations" / "EPIC_100_train.csv").exists()


def test_cli_demo_data_then_info(tmp_path, monkeypatch, capsys):
    leap = leap_here(monkeypatch, capsys)
    out = tmp_path / "kitchen"
    r = leap("demo-data", "--out", str(out), "--videos", "2", "--segments", "3", "--seed", "1")
    assert r.returncode == 0, r.stderr
    assert "P01_01" in r.stdout and "6 segments" in r.stdout
    r = leap("info", "--data", str(out))
    assert r.returncode == 0, r.stderr
    assert "EPIC_100_train.csv" in r.stdout and "EPIC_100_validation.csv" in r.stdout


# --- the honest kitchen: only what EPIC publishes ---------------------------------------------------------------

def _summary_videos(root: Path) -> list[dict]:
    return json.loads((root / MARKER).read_text())["summary"]["videos"]


def test_publishes_only_what_epic_publishes(kitchen):
    root, summary = kitchen
    assert not (root / "object-detections").exists()  # EPIC has no labelled object boxes
    ann = Annotations(root / "annotations")
    rates = {v["video_id"]: v["fps"] for v in summary.videos}
    assert {round(f, 2) for f in rates.values()} == {59.94, 50.0}
    from leap_cli.epic.timing import csv_frame

    for split in ("train", "val", "test"):
        for s in ann.segments(split):
            rate = epic_frame_rate(rates[s.video_id])
            assert rate == (50.0 if round(rates[s.video_id]) == 50 else 60.0)
            # EPIC's convention (its CSVs: floor(timestamp x rate), at least 1), not the frame shown (one more)
            assert (s.start_frame, s.stop_frame) == (csv_frame(s.start, rate), csv_frame(s.stop, rate))
    # the truth has its own folder, and the published files name no object
    pkl = (root / "hand-objects" / "P01" / "P01_01.pkl").read_bytes()
    assert b"plate" not in pkl and b"knife" not in pkl


def _true_hands(frames: list[dict]) -> list[list[dict]]:
    return [f["hands"] for f in frames]


def test_hand_objects_are_the_truth_degraded_as_a_detector_errs(kitchen):
    from leap_cli.epic.hand_objects import BBox

    root, summary = kitchen
    v = summary.videos[0]
    frames = [json.loads(x) for x in (root / "ground-truth" / "frames" / f"{v['video_id']}.jsonl").read_text().splitlines()]
    dets = read_hand_objects(root / "hand-objects" / v["video_id"][:3] / f"{v['video_id']}.pkl")
    index = dict(epic_frames(len(frames), v["fps"]))
    found = total = swapped = 0
    ious, extra = [], 0
    for d in dets:
        truth = frames[index[d.frame_number]]["hands"]
        used = set()
        for h in truth:
            tb = BBox(**h["bbox"])
            total += 1
            best = max(d.hands, key=lambda x: x.bbox.iou(tb), default=None)
            if best is not None and best.bbox.iou(tb) > 0.3:
                found += 1
                used.add(id(best))
                ious.append(best.bbox.iou(tb))
                swapped += best.side.name.lower() != h["side"]
        extra += sum(id(x) not in used for x in d.hands)
    assert total > 500
    assert 0.8 < found / total < 0.97  # missed hands
    assert 0.6 < float(np.mean(ious)) < 0.95  # jittered boxes, not the truth
    assert 0.003 < swapped / found < 0.06  # side swaps at a realistic rate
    assert extra > 0.01 * len(dets)  # false positives


def test_truncated_video_has_segments_past_its_end(kitchen):
    root, summary = kitchen
    cut = [v for v in summary.videos if "truncated_at" in v]
    assert len(cut) == 1 and cut[0]["video_id"] == assign_videos(CFG)[CFG.truncated_video()].video_id
    v = cut[0]
    layout = DatasetLayout.open(root)
    with open_video(layout, v["video_id"]) as r:
        assert r.num_frames == v["frames"] and r.num_frames / r.fps == pytest.approx(v["truncated_at"], abs=0.05)
    info = Annotations(root / "annotations").video_info[v["video_id"]]
    assert info.duration == pytest.approx(v["duration"], abs=0.01)  # video_info: the full length
    assert info.duration > v["truncated_at"] + 1
    past = [t for t in _truth(root) if t["video_id"] == v["video_id"] and t.get("past_end_of_video")]
    assert len(past) >= TRUNCATED_SEGMENTS and all(t["stop"] > v["truncated_at"] for t in past)
    split = assign_videos(CFG)[CFG.truncated_video()].split
    assert CFG.segments_past_end() == {split: TRUNCATED_SEGMENTS} and len(past) >= CFG.segments_past_end()[split]
    assert any(t["start"] < v["truncated_at"] for t in past)  # one straddles the end


def test_background_sound_at_real_levels(kitchen):
    from leap_cli.extract.truth import load_truth, video_sounds

    root, summary = kitchen
    layout = DatasetLayout.open(root)
    sounds = video_sounds(load_truth(root))
    kinds = set()
    for v in summary.videos:
        layers = json.loads((root / "ground-truth" / "audio" / f"{v['video_id']}.json").read_text())["layers"]
        room = [ly for ly in layers if ly["label"] == "room_tone"]
        assert len(room) == 1 and -50 <= room[0]["level_db"] <= -40
        kinds |= {ly["label"] for ly in layers}
        y = read_audio(layout.audio_path(v["video_id"]), 0, v["duration"], 16000)
        quiet = np.ones(len(y), bool)
        for a, b, _ in sounds.get(v["video_id"], []):
            quiet[max(0, int(a * 16000) - 8000):int(b * 16000) + 8000] = False
        level = 10 * np.log10(np.mean(y[quiet] ** 2))
        assert -52 < level < -26, (v["video_id"], level)  # room tone, fan, hum, music: not digital silence
    assert len(kinds - {"room_tone"}) >= 2


def test_clean_kitchen_for_debugging(tmp_path):
    out = tmp_path / "clean"
    build_kitchen(out, KitchenConfig(videos=1, segments_per_video=3, honest=False))
    assert (out / "object-detections" / "P01" / "P01_01.jsonl").exists()
    assert (out / "poses" / "P01_01" / "images.txt").exists()
    assert not (out / "ground-truth" / "audio").exists()


def test_the_summary_says_the_truncated_video_is_cut_on_purpose(kitchen):
    """A newcomer read the truncated video's warnings in the demo as a real error: its summary now says why."""
    from rich.console import Console

    _, summary = kitchen
    console = Console(width=300, record=True)
    console.print(summary.render())
    text = " ".join(console.export_text().split())
    cut = next(v["video_id"] for v in summary.videos if "truncated_at" in v)
    assert f"{cut} is cut short on purpose, as a broken download would be (the stages say so)" in text, text
