"""Gaps a mutation run over scoring.py, programs/vocab.py, epic/info.py and shards/transforms.py found: behaviour
no fast test held (each test here fails on the mutant it was written against)."""

import logging

import cv2
import numpy as np
import pytest
import torch

from leap_cli.epic.annotations import Annotations
from leap_cli.errors import LeapError
from leap_cli.evaluate.scoring import evaluate_scores, metric_rows
from tests.test_eval_submit import NN, NV, TEST_IDS, VAL, _val_scores, ann_dir  # noqa: F401 (fixture)

# ---------------------------------------------------------------------------------------------------------------
# evaluate/scoring.py


def _scores(ids, verb, noun, **extra):
    return {"narration_id": list(ids), "verb_output": verb, "noun_output": noun, **extra}


def _add_val_rows(ann_dir, rows):
    """More val segments (id, participant, verb, verb_class, noun, noun_class), as the fixture writes its four."""
    path = ann_dir / "EPIC_100_validation.csv"
    lines = path.read_text().splitlines()
    for nid, p, v, vc, n, nc in rows:
        i = len(lines) - 1
        lines.append(f"{nid},{p},{nid.rsplit('_', 1)[0]},00:00:0{i}.00,00:00:0{i}.00,00:00:0{i}.50,{i * 60 + 1},"
                     f"{i * 60 + 30},{v} {n},{v},{vc},{n},{nc},['{n}'],[{nc}]")
    path.write_text("\n".join(lines) + "\n")


def test_unknown_ids_are_counted_and_the_first_five_named(ann_dir):
    ids = [f"P09_01_{i}" for i in range(6)]
    verb, noun = torch.zeros(6, NV), torch.zeros(6, NN)
    with pytest.raises(LeapError) as e:
        evaluate_scores(_scores(ids, verb, noun), Annotations(ann_dir), "val")
    msg = e.value.message
    assert msg.startswith("6 narration ids are not in the val annotations"), msg
    assert ", ".join(ids[:5]) in msg and ids[5] not in msg, msg


def test_nan_rows_are_named_five_at_most_then_an_ellipsis(ann_dir):
    _add_val_rows(ann_dir, [(f"P01_01_{i}", "P01", "take", 0, "plate", 3) for i in range(2, 5)])  # 7 segments
    ids = [r[0] for r in VAL] + [f"P01_01_{i}" for i in range(2, 5)]
    verb, noun = torch.zeros(7, NV), torch.zeros(7, NN)
    verb[:6, 1] = float("inf")  # 6 bad rows: five named, then "..."
    with pytest.raises(LeapError) as e:
        evaluate_scores(_scores(ids, verb, noun), Annotations(ann_dir), "val")
    assert e.value.message == f"verb_output holds NaN or infinity for 6 segments: {', '.join(ids[:5])}, ...", \
        e.value.message
    verb[:6, 1] = 0.0
    verb[[0, 2, 4], 0] = float("nan")  # 3 bad rows: all named, no ellipsis
    with pytest.raises(LeapError) as e:
        evaluate_scores(_scores(ids, verb, noun), Annotations(ann_dir), "val")
    assert e.value.message.endswith(f"3 segments: {ids[0]}, {ids[2]}, {ids[4]}"), e.value.message


def test_scores_of_the_unlabelled_test_split_are_refused_with_a_pointer_to_submit(ann_dir):
    g = torch.Generator().manual_seed(0)
    scores = _scores(TEST_IDS, torch.randn(3, NV, generator=g), torch.randn(3, NN, generator=g))
    with pytest.raises(LeapError) as e:
        evaluate_scores(scores, Annotations(ann_dir), "test")
    assert "the test split has no labels" in e.value.message and "leap submit" in e.value.fix


def test_unscored_segments_are_counted_and_warned(ann_dir, caplog):
    ids, verb, noun = _val_scores()
    with caplog.at_level(logging.WARNING):
        r = evaluate_scores(_scores(ids[:3], verb[:3], noun[:3]), Annotations(ann_dir), "val", source="mine.pt")
    assert (r["segments"], r["not_scored"]) == (3, 1)
    assert "1 segment of val is not in mine.pt" in caplog.text


def test_the_warning_for_a_missing_list_names_the_subset_it_empties(ann_dir, caplog):
    (ann_dir / "EPIC_100_tail_nouns.csv").unlink()
    (ann_dir / "EPIC_100_unseen_participant_ids_validation.csv").unlink()
    ids, verb, noun = _val_scores()
    with caplog.at_level(logging.WARNING):
        evaluate_scores(_scores(ids, verb, noun), Annotations(ann_dir), "val")
    said = {m.split(" not found")[0].rsplit("/", 1)[-1]: m for m in caplog.messages if "not found" in m}
    assert "the tail metrics are null" in said["EPIC_100_tail_nouns.csv"], said
    assert "the unseen metrics are null" in said["EPIC_100_unseen_participant_ids_validation.csv"], said


def test_the_train_split_has_no_unseen_participants(ann_dir):
    """The unseen subset is the split's own list (val's or test's); train has none, so its unseen figures are null,
    not val's P02 segments."""
    (ann_dir / "EPIC_100_train.csv").write_text((ann_dir / "EPIC_100_validation.csv").read_text())
    ids, verb, noun = _val_scores()
    r = evaluate_scores(_scores(ids, verb, noun), Annotations(ann_dir), "train")["recognition"]
    assert r["unseen"] == {t: {"top1": None} for t in ("verb", "noun", "action")}, r["unseen"]
    assert r["tail"]["verb"]["top1"] == 0.0 and r["all"]["noun"]["top1"] == 0.5
    val = evaluate_scores(_scores(ids, verb, noun), Annotations(ann_dir), "val")["recognition"]
    assert val["unseen"]["noun"]["top1"] == 0.5  # (the same rows as val: P02's s2 right, s3 wrong)


def _program(**over):
    """4 segments, one true step each then padding: steps (verb, object_a, object_b)."""
    true = np.full((4, 2, 3), -100)
    true[:, 0] = (1, 2, 3)
    pred = np.zeros((4, 2, 3), np.int64)
    pred[:, 0] = [(1, 2, 3), (1, 2, 0), (0, 2, 0), (1, 0, 0)]  # s_verb 3/4, obj_a 3/4, obj_b 1/4
    step_cond = np.zeros((4, 2, 2))
    step_cond[:, 0] = [(0.9, 0.9), (0.9, 0.1), (0.1, 0.9), (0.1, 0.1)]
    target_step_cond = np.zeros((4, 2, 2))
    target_step_cond[:, 0] = [(1, 1), (0, 1), (0, 1), (0, 1)]
    prog = {"steps": pred, "target_steps": true, "end_ids": None,
            "step_conditions": step_cond, "target_step_conditions": target_step_cond,
            "conditions": np.array([(0.9, 0.9), (0.8, 0.9), (0.2, 0.9), (0.1, 0.9)]),
            "target_conditions": np.array([(1, 1), (0, 1), (0, 1), (1, 1)])}
    prog.update(over)
    return prog


def test_program_figures_are_scored_from_the_file(ann_dir):
    ids, verb, noun = _val_scores()
    meta = {"split": "val", "task": "recognition", "checkpoint": "best"}
    r = evaluate_scores(_scores(ids, verb, noun, program=_program(), meta=meta), Annotations(ann_dir), "val")
    steps = r["programs"]["steps"]
    # no has_program in the file: every segment's program counts
    assert (steps["segments"], steps["positions"]) == (4, 4)
    assert (steps["s_verb"], steps["obj_a"], steps["obj_b"]) == (0.75, 0.75, 0.25)
    sc = r["programs"]["step_conditions"]
    # per step, row 0 of each segment: pre tp 1 fp 1 fn 0 -> 2/3; post tp 2 fn 2 -> 2/3
    assert sc["rows"] == 4 and sc["pre"]["micro_f1"] == pytest.approx(2 / 3)
    assert sc["post"]["micro_f1"] == pytest.approx(2 / 3) and sc["base_rate"] == pytest.approx(5 / 8)
    # per segment: pre predicted [1,1,0,0] against [1,0,0,1] -> 2/(2+1+1); post all right
    assert r["programs"]["conditions"]["pre"]["micro_f1"] == 0.5
    assert r["programs"]["conditions"]["post"]["micro_f1"] == 1.0
    assert r["meta"] == meta  # metrics.json says which checkpoint and settings made the scores
    # a has_program mask leaves the invalid programs out
    r = evaluate_scores(_scores(ids, verb, noun, program=_program(has_program=np.array([1, 1, 0, 0]))),
                        Annotations(ann_dir), "val")
    assert (r["programs"]["steps"]["segments"], r["programs"]["steps"]["obj_b"]) == (2, 0.5)
    # without targets there is nothing to score the programs against
    r = evaluate_scores(_scores(ids, verb, noun, program={"steps": _program()["steps"]}), Annotations(ann_dir), "val")
    assert "programs" not in r and "meta" not in r


def test_metric_rows_are_percentages_with_two_decimals():
    result = {"recognition": {"all": {"verb": {"top1": 0.5, "top5": None}}},
              "programs": {"steps": {"s_verb": 0.75, "markers": 0.125, "positions": 4, "segments": 2},
                           "conditions": {"post": {"micro_f1": 0.5}},
                           "step_conditions": {"all": {"micro_f1": 2 / 3}, "rows": 4, "chance_f1": 0.25}}}
    assert metric_rows(result) == [
        ("recognition", "all", "verb top1", "50.00"), ("recognition", "all", "verb top5", "n/a"),
        ("programs", "valid programs", "s_verb", "75.00"), ("programs", "valid programs", "markers", "12.50"),
        ("programs", "valid programs", "post micro_f1", "50.00"),
        ("programs", "per step", "all micro_f1", "66.67"),
        ("programs", "per step", "chance micro_f1 (all)", "25.00")]


# ---------------------------------------------------------------------------------------------------------------
# programs/vocab.py (EPIC's class files: the excerpt's copies, as the programs tests use)

from leap_cli.programs.validate import validate_semantics  # noqa: E402
from leap_cli.programs.vocab import condition_string, object_key, resolve_object, resolve_verb  # noqa: E402
from tests.test_programs_validate import C, S, messages, nouns, prog, verbs  # noqa: E402,F401 (fixtures)


def test_motor_primitives_resolve_whatever_their_case_and_spacing(verbs):
    """LLMs write 'Grasp' or ' release ': the primitive table is looked up by the normalised form."""
    assert resolve_verb("Grasp", verbs) == verbs.resolve("take") is not None
    assert resolve_verb(" Release ", verbs) == verbs.resolve("let-go") is not None
    assert resolve_verb("levitate", verbs) is None


def test_an_unknown_object_phrase_falls_back_to_its_head_noun(nouns):
    """'dirty fridge' is no EPIC noun: its last word is ('kitchen towel' -> 'towel'), never its first."""
    assert nouns.resolve("dirty fridge") is None and nouns.resolve("dirty") is None
    assert resolve_object("dirty fridge", nouns) == nouns.resolve("fridge") is not None
    assert object_key("Dirty Fridge", nouns) == "fridge"
    assert resolve_object("   ", nouns) is None and resolve_object("", nouns) is None  # blank: nothing, no error


def test_an_object_that_does_not_resolve_is_keyed_by_its_normalised_form(nouns):
    """So 'Mystery Gadget' and 'mystery_gadget' count as one condition argument, with or without class files."""
    assert object_key("Mystery Gadget", nouns) == object_key("mystery_gadget", nouns) == "mystery-gadget"
    assert object_key("Chopping Board", None) == "chopping-board"


def test_condition_strings_normalise_hands_and_key_objects(nouns):
    cond = {"predicate": "holding", "args": ["Left", "Chopping Board"], "negated": True}
    assert condition_string(cond, nouns) == "not holding(left,board:chopping)"
    assert condition_string({"predicate": "in", "args": ["Water", "dirty jug"]}, nouns) == "in(water,jug)"


def test_not_full_does_not_mean_empty(verbs, nouns):
    """A jug can be half full: 'not full(jug)' establishes nothing about empty(jug), unlike 'not closed' -> open."""
    pour = S("pour", "water", "jug", post=[C("full", "jug", neg=True)])
    fill = S("fill", "jug", pre=[C("empty", "jug")])
    got = messages(validate_semantics(prog([pour, fill], verb="fill", noun="jug"), verbs, nouns))
    assert ("/steps/1/pre/0", "precondition empty(jug) does not hold: no earlier step or program precondition "
            "establishes it") in got, got
    drain = S("pour", "water", "jug", post=[C("empty", "jug", neg=True)])
    got = messages(validate_semantics(prog([drain, S("fill", "jug", pre=[C("full", "jug")])], verb="fill",
                                           noun="jug"), verbs, nouns))
    assert ("/steps/1/pre/0", "precondition full(jug) does not hold: no earlier step or program precondition "
            "establishes it") in got, got


# ---------------------------------------------------------------------------------------------------------------
# epic/info.py

import shutil  # noqa: E402

from leap_cli.epic.info import check_lengths, dataset_info  # noqa: E402
from leap_cli.epic.layout import DatasetLayout  # noqa: E402
from tests.test_shards import make_root  # noqa: E402


def test_info_counts_segments_classes_and_where_each_video_is(tmp_path):
    from leap_cli.media.write import write_mp4

    root = make_root(tmp_path / "k")  # train: P01_01 (4 segments), P01_02 (3); val: P01_03 (2); rgb_frames folders
    ann = root / "annotations"
    (ann / "EPIC_100_tail_verbs.csv").write_text("verb\n3\n5\n7\n")
    (ann / "EPIC_100_tail_nouns.csv").write_text("noun\n0\n")
    (ann / "EPIC_100_unseen_participant_ids_validation.csv").write_text("participant_id\nP01\nP02\n")
    (ann / "EPIC_100_unseen_participant_ids_test.csv").write_text("participant_id\nP30\n")
    frames = root / "P01" / "rgb_frames"
    shutil.rmtree(frames / "P01_02")
    (frames / "P01_02.tar").write_bytes(b"")  # as EPIC's download script leaves it: not extracted
    shutil.rmtree(frames / "P01_03")
    (root / "P01" / "videos").mkdir()
    write_mp4(root / "P01" / "videos" / "P01_03.MP4", [np.full((32, 48, 3), 90, np.uint8)] * 10, 10.0)  # no audio
    (root / "object-detections" / "P01").mkdir(parents=True)
    (root / "object-detections" / "P01" / "P01_01.jsonl").write_text("")
    splits, classes = dataset_info(DatasetLayout.open(root))
    train, val = splits
    assert (train.with_object_detections, val.with_object_detections) == (1, 0)
    # train verbs take, wash, put, open (0, 2, 1, 3); nouns plate, tap, cup (2, 0, 13)
    assert (train.split, train.file, train.segments, train.videos, train.verbs_used, train.nouns_used) == \
        ("train", "EPIC_100_train.csv", 7, 2, 4, 3)
    assert (train.with_frames, train.with_mp4, train.tarred, train.missing) == (1, 0, ["P01_02"], [])
    assert (val.segments, val.videos, val.verbs_used, val.nouns_used) == (2, 1, 2, 1)
    assert (val.with_frames, val.with_mp4, val.tarred, val.missing) == (0, 1, [], [])  # the MP4 is there
    assert (val.with_audio_file, val.with_audio_track) == (0, 0)  # an MP4 without an audio track
    from leap_cli.epic.classes import ClassVocab
    verbs = ClassVocab.from_csv(ann / "EPIC_100_verb_classes.csv", "verb")
    nouns = ClassVocab.from_csv(ann / "EPIC_100_noun_classes.csv", "noun")
    assert classes == {"verb_classes": len(verbs), "noun_classes": len(nouns), "tail_verbs": 3, "tail_nouns": 1,
                       "unseen_val": 2, "videos_in_info": 3}
    (root / "P01" / "videos" / "P01_03.MP4").unlink()
    (_, val), _ = dataset_info(DatasetLayout.open(root))
    assert (val.with_mp4, val.missing, val.tarred) == (0, ["P01_03"], [])


# ---------------------------------------------------------------------------------------------------------------
# shards/transforms.py

from leap_cli.shards.transforms import color_jitter, crop_resize, random_resized_box, temporal_indices  # noqa: E402


class _Factors:
    """An rng whose uniform() draws are the given factors (brightness, contrast, saturation)."""

    def __init__(self, *factors):
        self.factors = list(factors)

    def uniform(self, lo, hi):
        return self.factors.pop(0)


def _clip(rgb, shape=(2, 4, 4)):
    return np.broadcast_to(np.array(rgb, np.uint8), (*shape, 3)).copy()


def test_color_jitter_factors_by_hand():
    red = _clip((255, 0, 0))
    # saturation 0: every pixel its luma, 0.299 x 255 = 76.2
    assert np.all(color_jitter(red, 1.0, _Factors(1.0, 1.0, 0.0)) == 76)
    # brightness 0.5 halves; brightness 2 clips at 255, not wrapping round
    assert np.all(color_jitter(_clip((200, 100, 40)), 1.0, _Factors(0.5, 1.0, 1.0)) == np.array([100, 50, 20]))
    assert np.all(color_jitter(_clip((200, 100, 40)), 1.0, _Factors(2.0, 1.0, 1.0)) == np.array([255, 200, 80]))
    # contrast 0: every value the clip's mean, (60 + 120) / 2 for a half-dark half-bright grey clip
    clip = _clip((60, 60, 60))
    clip[:, :2] = 120
    assert np.all(color_jitter(clip, 1.0, _Factors(1.0, 0.0, 1.0)) == 90)


def test_color_jitter_brightens_as_often_as_it_darkens():
    """Factors are drawn from [1 - strength, 1 + strength]: a flat grey (which contrast and saturation keep) ends
    anywhere in [50, 150] for strength 0.5, on both sides of 100."""
    grey = _clip((100, 100, 100))
    out = [int(color_jitter(grey, 0.5, np.random.default_rng(seed))[0, 0, 0, 0]) for seed in range(40)]
    assert min(out) >= 49 and max(out) <= 150
    assert sum(v > 100 for v in out) >= 10 and sum(v < 100 for v in out) >= 10, out


def test_downscaled_crops_are_averaged_not_sampled():
    """Shrinking a crop uses area averaging: stripes of 2 bright and 2 dark columns become mid grey at a quarter of
    the size, not the bright columns the sampling points of a linear resize happen to fall between."""
    board = np.broadcast_to(np.isin(np.arange(64) % 4, (1, 2)) * 255, (64, 64))
    clip = np.repeat(board.astype(np.uint8)[None, :, :, None], 3, axis=3)
    out = crop_resize(clip, (0, 0, 64, 64), 16)
    assert out.shape == (1, 16, 16, 3) and np.all(np.abs(out.astype(int) - 127) <= 2), out[0, :3, :3, 0]


def test_length_check_bounds_are_inclusive_and_tolerance_is_the_callers(tmp_path):
    """An rgb_frames folder (60 frame files a second) may be ``tolerance_s`` shorter and 0.5 s longer than video_info
    says, both ends included; ``tolerance_s`` replaces LENGTH_TOLERANCE_S (0.1 s)."""
    root = make_root(tmp_path / "k", epic=True)  # 6 s videos: 360 frame files each
    frames = {v: root / "P01" / "rgb_frames" / v for v in ("P01_01", "P01_02", "P01_03")}
    for n in range(331, 361):  # 5.5 s: 0.5 s short
        (frames["P01_01"] / f"frame_{n:010d}.jpg").unlink()
    for n in range(361, 391):  # 6.5 s: 0.5 s long, as far as a folder may run over
        (frames["P01_02"] / f"frame_{n:010d}.jpg").write_bytes(b"")
    layout = DatasetLayout.open(root)
    assert check_lengths(layout, list(frames), tolerance_s=0.5) == []
    short = check_lengths(layout, list(frames))  # the default 0.1 s
    assert [(c.video_id, c.source, c.expected_s, c.decoded_s) for c in short] == [("P01_01", "rgb_frames", 6.0, 5.5)]
    assert short[0].note == "330 frame files at 60/s"
    (frames["P01_02"] / f"frame_{391:010d}.jpg").write_bytes(b"")  # one frame more is too long, whatever tolerance
    assert [c.video_id for c in check_lengths(layout, list(frames), tolerance_s=0.5)] == ["P01_02"]


def test_an_mp4_a_tenth_off_video_infos_rate_is_another_encoding(tmp_path):
    """Rates within 2 % are one video (59.94 read as 60); 11 fps for video_info's 10 is not. The MP4 is what is
    checked where an rgb_frames folder is there too."""
    from leap_cli.media.write import write_mp4

    root = make_root(tmp_path / "k", epic=True)  # video_info: 6 s at 10 fps; rgb_frames folders of the right length
    (root / "P01" / "videos").mkdir()
    frame = np.full((32, 48, 3), 90, np.uint8)
    write_mp4(root / "P01" / "videos" / "P01_01.MP4", [frame] * 66, 11.0)
    write_mp4(root / "P01" / "videos" / "P01_02.MP4", [frame] * 60, 10.1)
    write_mp4(root / "P01" / "videos" / "P01_03.MP4", [frame] * 63, 10.0)  # 0.3 s long: an MP4 has no 0.5 s leeway
    bad, long = check_lengths(DatasetLayout.open(root), ["P01_01", "P01_02", "P01_03"])
    assert (bad.video_id, bad.source, bad.expected_s, bad.decoded_s) == ("P01_01", "mp4", 6.0, None)
    assert bad.note.startswith("the file runs at 11.00 fps, not video_info's 10: the stages leave it out"), bad.note
    assert (long.video_id, long.source, long.expected_s, long.decoded_s, long.note) == \
        ("P01_03", "mp4", 6.0, 6.3, "63 frames")


def test_training_takes_a_random_frame_of_each_chunk():
    """16 stored frames, 4 wanted: frame k comes from chunk [4k, 4k + 3], every frame of a chunk drawn sometime."""
    picks = [temporal_indices(16, 4, np.random.default_rng(seed)) for seed in range(60)]
    for k in range(4):
        assert {p[k] for p in picks} == {4 * k, 4 * k + 1, 4 * k + 2, 4 * k + 3}, k


def test_a_clip_no_longer_than_wanted_is_taken_in_order_in_training_too():
    for seed in range(20):
        rng = np.random.default_rng(seed)
        assert temporal_indices(4, 4, rng) == [0, 1, 2, 3]
        assert temporal_indices(2, 3, rng) == [0, 1, 1]  # as evaluation takes it: chunk centres


def test_random_resized_box_whole_frame_and_fallback():
    rng = np.random.default_rng(0)
    # all of a 32 x 48 frame at its own aspect (3:2): the whole frame, top left at 0, 0
    assert random_resized_box(32, 48, rng, scale=(1.0, 1.0), ratio=(1.5, 1.5)) == (0, 0, 32, 48)
    # an aspect no crop of the frame can have: the centred square of the short side
    assert random_resized_box(32, 48, rng, scale=(1.0, 1.0), ratio=(3.0, 3.0)) == (0, 8, 32, 32)
    # half the area at 3:2 (22.6 x 33.9 -> 23 x 34): every top/left that keeps it inside is drawn sometime
    boxes = {random_resized_box(32, 48, np.random.default_rng(s), scale=(0.5, 0.5), ratio=(1.5, 1.5))
             for s in range(400)}
    assert {b[2:] for b in boxes} == {(23, 34)}
    assert {b[0] for b in boxes} == set(range(0, 32 - 23 + 1)) and max(b[1] for b in boxes) == 48 - 34


def test_frames_of_two_sizes_are_refused_by_name():
    from leap_cli.shards.transforms import decode_jpegs

    small, wide = (cv2.imencode(".jpg", np.zeros(shape, np.uint8))[1].tobytes() for shape in ((8, 8, 3), (8, 16, 3)))
    assert decode_jpegs([small, small]).shape == (2, 8, 8, 3)
    with pytest.raises(ValueError, match="frames of one clip differ in size"):
        decode_jpegs([small, wide, small])
    with pytest.raises(ValueError, match="frame 1 is not a decodable JPEG"):
        decode_jpegs([small, b"not a jpeg"])


def test_crop_box_is_top_left_height_width():
    """(top, left, height, width): the right-hand square of a 32 x 48 frame whose columns count 0, 5, 10, ..."""
    frame = np.broadcast_to((np.arange(48) * 5).astype(np.uint8)[None, :, None], (32, 48, 3))
    clip = np.stack([frame, 255 - frame])
    out = crop_resize(clip, (0, 16, 32, 32), 32)  # same size: nothing resampled
    assert np.array_equal(out[0], frame[:, 16:]) and np.array_equal(out[1], 255 - frame[:, 16:])
    out = crop_resize(clip, (8, 0, 16, 24), 16)  # rows 8-23, columns 0-23, shrunk to 16 x 16
    assert out.shape == (2, 16, 16, 3) and np.all(out[0, :, 0] <= 5) and np.all(out[0, :, -1] >= 105)


def test_to_tensor_moves_channels_first_and_keeps_rows_rows():
    from leap_cli.shards.transforms import to_tensor

    clip = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)  # square, as crops are: no shape tells
    x = to_tensor(clip)
    assert x.dtype == torch.uint8 and x.shape == (3, 2, 4, 4)
    assert x[1, 1, 2, 3] == clip[1, 2, 3, 1] and torch.equal(x[0, 0], torch.from_numpy(clip[0, :, :, 0]))
