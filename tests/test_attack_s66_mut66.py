"""Gaps a hand-made mutation run over evaluate/scores.py, evaluate/scoring.py, evaluate/inference.py,
epic/annotations.py and epic/info.py found: behaviour no fast test held (each test fails on the mutants it names);
the figures recomputed from EPIC's official definitions on real rows; two bugs in reading scores files."""

import json
import pickle

import numpy as np
import pytest
import torch

from leap_cli.epic.annotations import Annotations
from leap_cli.errors import LeapError
from leap_cli.evaluate.scores import load_scores, normalize_scores
from leap_cli.evaluate.scoring import check_scorable, evaluate_scores
from tests.test_checkpoint_inference import _ckpt, tiny  # noqa: F401 (fixture)
from tests.test_eval_submit import NN, NV, VAL, ann_dir  # noqa: F401 (fixture)

# ---------------------------------------------------------------------------------------------------------------
# evaluate/scoring.py and evaluate/scores.py


def _near_tie(dtype=torch.float64):
    """Scores where segment 0's true verb (0) leads class 2 by 1e-9: a lead float32 rounds away (ties rank the
    higher id first), so the segment is right only while the scores stay float64."""
    verb = torch.full((4, NV), -1.0, dtype=dtype)
    noun = torch.full((4, NN), -1.0, dtype=dtype)
    verb[0, 0], verb[0, 2] = 1.0 + 1e-9, 1.0
    verb[1:, 3] = 0.0  # (no segment's class: the others are wrong)
    return [r[0] for r in VAL], verb, noun


def test_float64_scores_are_ranked_at_float64(tmp_path, ann_dir):
    """(mutants: scoring casting to float32; scores.py turning a float64 tensor or array into float32)"""
    ids, verb, noun = _near_tie()
    ann = Annotations(ann_dir)
    direct = evaluate_scores({"narration_id": ids, "verb_output": verb, "noun_output": noun}, ann, "val")
    assert direct["recognition"]["all"]["verb"]["top1"] == 0.25
    torch.save({"narration_id": ids, "verb_output": verb, "noun_output": noun}, tmp_path / "t.pt")
    with open(tmp_path / "a.pkl", "wb") as f:
        pickle.dump({"narration_id": np.array(ids), "verb_output": verb.numpy(), "noun_output": noun.numpy()}, f)
    for name in ("t.pt", "a.pkl"):
        loaded = load_scores(tmp_path / name)
        assert loaded["verb_output"].dtype == torch.float64, name
        assert evaluate_scores(loaded, ann, "val")["recognition"]["all"]["verb"]["top1"] == 0.25, name


def test_unknown_shard_ids_name_the_shards_and_how_to_give_the_right_ones(ann_dir):
    """`leap evaluate --run` checks the shards' ids before the model runs: the error is the shards', not the
    checkpoint's. (mutant: the checkpoint named)"""
    with pytest.raises(LeapError) as e:
        check_scorable(Annotations(ann_dir), "val", ["P09_01_0"], (NV, NN), "runs/r/checkpoints/best.pt",
                       "work/shards/val")
    assert e.value.path == "work/shards/val" and "--shards" in e.value.fix, (e.value.path, e.value.fix)


def _challenge(tmp_path, verbs: int, nouns: int, actions: list[str]):
    """A one-segment anticipation challenge JSON with the given action keys."""
    doc = {"challenge": "action_anticipation", "results": {"P01_01_0": {
        "verb": {str(i): 0.1 for i in range(verbs)}, "noun": {str(i): 0.1 for i in range(nouns)},
        "action": {k: 1.0 - 0.001 * j for j, k in enumerate(actions)}}}}
    path = tmp_path / "a.json"
    path.write_text(json.dumps(doc))
    return path


def test_an_action_one_past_the_last_class_is_refused(tmp_path):
    """(mutant: ``v > verbs or n > nouns``, an off-by-one that let verb id V of a file of V verbs through)"""
    with pytest.raises(LeapError, match="the action 2,0 is outside the file's 2 verb and 2 noun classes"):
        load_scores(_challenge(tmp_path, 2, 2, ["0,0", "0,1", "1,0", "2,0"]))
    with pytest.raises(LeapError, match="the action 1,2 is outside"):
        load_scores(_challenge(tmp_path, 2, 2, ["0,0", "0,1", "1,0", "1,2"]))
    assert load_scores(_challenge(tmp_path, 2, 2, ["0,0", "0,1", "1,0", "1,1"]))["action"]["ids"].tolist() == [
        [0, 1, 1000, 1001]]


def test_more_action_scores_than_the_evaluator_takes_are_refused(tmp_path):
    """EPIC's evaluator takes exactly 100 actions a segment; 101 are refused as 99 are. (mutant: only fewer)"""
    keys = [f"{v},{n}" for v in range(11) for n in range(10)]
    assert load_scores(_challenge(tmp_path, 11, 10, keys[:100]))["action"]["ids"].shape == (1, 100)
    for k in (99, 101):
        says = f"{k} action scores, where EPIC's anticipation evaluator takes exactly 100"
        with pytest.raises(LeapError, match=says):
            load_scores(_challenge(tmp_path, 11, 10, keys[:k]))


def test_scores_of_three_dimensions_are_refused_with_their_shape():
    """(mutant: ``ndim < 2``: [N, V, 1] outputs, an unsqueezed model head, read as scores)"""
    ids = [r[0] for r in VAL]
    with pytest.raises(LeapError, match=r"verb_output has shape \(4, 6, 1\), expected \[N, classes\]"):
        normalize_scores({"narration_id": ids, "verb_output": torch.zeros(4, NV, 1), "noun_output": torch.zeros(4, NN)})


def test_saved_scores_keep_the_program_and_meta(tmp_path):
    """`leap evaluate --scores` recomputes program figures from the file: save_scores must write them.
    (mutant: save_scores dropping ``program``)"""
    from leap_cli.evaluate.scores import save_scores

    ids = [r[0] for r in VAL]
    prog = {"steps": torch.zeros(4, 2, 3, dtype=torch.long), "target_steps": torch.full((4, 2, 3), -100),
            "end_ids": [1, 2, 2]}
    save_scores(tmp_path / "scores.pt", ids, torch.zeros(4, NV), torch.zeros(4, NN), program=prog,
                meta={"task": "recognition"})
    back = load_scores(tmp_path / "scores.pt")
    assert back["program"]["end_ids"] == [1, 2, 2] and torch.equal(back["program"]["target_steps"],
                                                                   prog["target_steps"])
    assert back["meta"] == {"task": "recognition"}


@pytest.mark.parametrize("content, says", [
    ({"challenge": "action_recognition", "results": {}}, "a challenge JSON needs a non-empty 'results' object"),
    ([{"narration_id": "a"}, 3], "a list of results must hold one dict per segment"),
])
def test_empty_results_and_lists_of_non_dicts_are_one_line_saying_so(tmp_path, content, says):
    """(mutants: the emptiness check dropped (a StopIteration traceback), the per-entry dict check dropped)"""
    if isinstance(content, dict):
        (tmp_path / "s.json").write_text(json.dumps(content))
        path = tmp_path / "s.json"
    else:
        torch.save(content, tmp_path / "s.pt")
        path = tmp_path / "s.pt"
    with pytest.raises(LeapError) as e:
        load_scores(path)
    assert e.value.message == says, e.value.message


def test_a_file_without_narration_ids_and_a_class_given_twice_are_named(tmp_path):
    """(mutants: narration_id left out of the required keys (a KeyError); the largest id named, not the twice-given)"""
    torch.save({"verb_output": torch.zeros(2, NV), "noun_output": torch.zeros(2, NN)}, tmp_path / "s.pt")
    with pytest.raises(LeapError) as e:
        load_scores(tmp_path / "s.pt")
    assert e.value.message == "missing key narration_id", e.value.message
    doc = {"results": {"P01_01_0": {"verb": {"0": 1, "00": 2, "1": 3, "2": 4}, "noun": {"0": 1}}}}
    (tmp_path / "s.json").write_text(json.dumps(doc))
    with pytest.raises(LeapError) as e:
        load_scores(tmp_path / "s.json")
    assert e.value.message == "verb class id 0 is given more than once" and e.value.record == "P01_01_0", e.value


def _real_rows(tmp_path, epic_dir):
    """The real excerpt's annotations with its train rows added to validation (the validation rows hold no tail
    noun) and P02 listed as unseen (its validation rows are P01's and P02's): scores that get every other
    segment's verb and every third's noun right."""
    import shutil

    ann_dir = tmp_path / "annotations"
    shutil.copytree(epic_dir, ann_dir)
    (ann_dir / "EPIC_100_unseen_participant_ids_validation.csv").write_text("participant_id\nP02\n")
    train = (epic_dir / "EPIC_100_train.csv").read_text().splitlines(keepends=True)[1:]
    with open(ann_dir / "EPIC_100_validation.csv", "a") as f:
        f.writelines(train)
    ann = Annotations(ann_dir)
    segs = ann.segments("val")
    vl, nl = np.array([s.verb_class for s in segs]), np.array([s.noun_class for s in segs])
    rng = np.random.default_rng(0)
    verb, noun = rng.normal(size=(len(segs), 97)), rng.normal(size=(len(segs), 300))
    verb[np.arange(len(segs)) % 2 == 0, vl[::2]] += 4
    noun[np.arange(len(segs)) % 3 == 0, nl[::3]] += 4
    scores = {"narration_id": [s.narration_id for s in segs], "verb_output": torch.from_numpy(verb),
              "noun_output": torch.from_numpy(noun)}
    tv, tn = np.isin(vl, sorted(ann.tail_verbs)), np.isin(nl, sorted(ann.tail_nouns))
    assert tv.any() and tn.any() and not tv.all() and (tv | tn).sum() > max(tv.sum(), tn.sum())  # (a real test)
    unseen = np.array([s.participant_id == "P02" for s in segs])
    masks = {"tail": {"verb": tv, "noun": tn, "action": tv | tn}, "unseen": dict.fromkeys(("verb", "noun", "action"),
                                                                                          unseen)}
    return ann, scores, (vl, nl), masks


def test_recognition_figures_follow_the_official_definitions_on_real_rows(tmp_path, epic_dir):
    """Each figure recomputed as EPIC's C1 evaluator (utils/metrics.py compute_metrics) defines it: top-k over the
    file's segments; tail verb/noun = segments whose class is in the tail CSV, tail action = tail verb OR tail
    noun; unseen = the split's unseen participants."""
    ann, scores, (vl, nl), masks = _real_rows(tmp_path, epic_dir)
    verb, noun = scores["verb_output"].numpy(), scores["noun_output"].numpy()
    r = evaluate_scores(scores, ann, "val")["recognition"]
    rank_v, rank_n = np.argsort(-verb, 1), np.argsort(-noun, 1)
    right = {"verb": rank_v[:, 0] == vl, "noun": rank_n[:, 0] == nl}
    right["action"] = right["verb"] & right["noun"]  # the best pair of the softmax product is (best verb, best noun)
    for task in right:
        assert r["all"][task]["top1"] == pytest.approx(right[task].mean()), task
        for subset, m in masks.items():
            assert r[subset][task]["top1"] == pytest.approx(right[task][m[task]].mean()), (subset, task)
    assert r["all"]["verb"]["top5"] == pytest.approx((rank_v[:, :5] == vl[:, None]).any(1).mean())
    assert r["all"]["noun"]["top5"] == pytest.approx((rank_n[:, :5] == nl[:, None]).any(1).mean())


def test_anticipation_figures_are_class_mean_top5_recall_on_real_rows(tmp_path, epic_dir):
    """Anticipation's figure (EPIC's C3 evaluator, RULSTM's MeanTopKRecallMeter): per class present among the
    subset's labels, the share of its segments whose class is in the top 5; then the mean over those classes.
    Actions are ranked by the product of the verb and noun softmaxes."""
    ann, scores, (vl, nl), masks = _real_rows(tmp_path, epic_dir)
    verb, noun = scores["verb_output"].numpy(), scores["noun_output"].numpy()
    r = evaluate_scores(scores, ann, "val", "anticipation")["anticipation"]

    def softmax(x):
        e = np.exp(x - x.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    pair = (softmax(verb)[:, :, None] * softmax(noun)[:, None, :]).reshape(len(vl), -1)  # [N, V*Nn], id v*300+n
    top5 = {"verb": np.argsort(-verb, 1)[:, :5], "noun": np.argsort(-noun, 1)[:, :5],
            "action": np.argsort(-pair, 1)[:, :5]}
    labels = {"verb": vl, "noun": nl, "action": vl * 300 + nl}

    def mt5r(task, m):
        hit = (top5[task][m] == labels[task][m][:, None]).any(1)
        return np.mean([hit[labels[task][m] == c].mean() for c in np.unique(labels[task][m])])

    every = np.ones(len(vl), bool)
    assert len(np.unique(vl)) < len(vl)  # (classes with several segments: a class mean, not a segment mean)
    for task in top5:
        assert r["overall"][task]["mt5r"] == pytest.approx(mt5r(task, every)), task
        for subset, m in masks.items():
            assert r[subset][task]["mt5r"] == pytest.approx(mt5r(task, m[task])), (subset, task)


# ---------------------------------------------------------------------------------------------------------------
# evaluate/inference.py


def test_auto_precision_is_bf16_on_cuda_only():
    """(mutant: auto always fp32; scores.pt's meta.precision then misstates a CUDA run)"""
    from leap_cli.evaluate.inference import resolved_precision

    assert resolved_precision("auto", "cuda") == "bf16" and resolved_precision("auto", "cuda:1") == "bf16"
    assert resolved_precision("auto", "cpu") == "fp32" and resolved_precision("fp16", "cuda") == "fp16"


def test_bf16_runs_the_backbone_in_bfloat16_and_the_scores_come_back_fp32():
    """(mutant: bf16 and fp16 swapped in the autocast dtype)"""
    from leap_cli.evaluate.inference import predict

    class Backbone(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Linear(4, 3)
            self.seen = []

        def forward(self, video, context_video=None, context_mask=None):
            h = self.body(video.float().flatten(1)[:, :4])
            self.seen.append(h.dtype)
            return {"verb": h, "noun": h[:, :2]}

    model = Backbone()
    got = predict(model, [{"video": torch.ones(2, 3, 2, 2, 2, dtype=torch.uint8), "narration_id": ["a", "b"]}],
                  precision="bf16")
    assert model.seen == [torch.bfloat16] and got["verb_output"].dtype == torch.float32


def test_the_scores_meta_lists_the_segments_build_shards_skipped(tmp_path, tiny, monkeypatch, caplog):
    """metrics tell skipped segments (their videos need fixing) from rows the shards lack (a rebuild) by
    ``meta.skipped``: evaluate_run writes it from the manifest. (mutant: an empty list written)"""
    from types import SimpleNamespace

    import leap_cli.evaluate.inference as inference
    from leap_cli.evaluate.inference import ViewConfig
    from leap_cli.train.checkpoint import save_checkpoint

    run = tmp_path / "runs" / "r"
    save_checkpoint(run / "checkpoints" / "best.pt", _ckpt(tiny))
    (tmp_path / "shards").mkdir()
    skipped = [{"narration_id": "P01_01_3", "reason": "video unreadable (moov atom not found)"}]

    class Loader(list):
        dataset = SimpleNamespace(manifest={"task": "recognition", "shards": [], "skipped": skipped})

    monkeypatch.setattr(inference, "shard_batches", lambda *a, **kw: (Loader(), 1))
    monkeypatch.setattr(inference, "predict", lambda *a, **kw: {"narration_id": ["a"], "verb_output": torch.zeros(1, 7),
                                                                "noun_output": torch.zeros(1, 9)})
    scores, _ = inference.evaluate_run(run, "val", workdir=tmp_path, shards=tmp_path / "shards", views=ViewConfig())
    assert scores["meta"]["skipped"] == ["P01_01_3"]
    assert "1 segment was skipped by build-shards and has no scores" in caplog.text


def test_a_run_name_is_found_under_the_work_directory_and_a_path_elsewhere_is_said_as_given(tmp_path):
    """``--run NAME`` is ``{workdir}/runs/NAME``; a missing ``other/NAME`` is named as typed, not as if under
    runs/. (mutants: the runs/ lookup dropped; the said path always under runs/)"""
    from leap_cli.evaluate.inference import resolve_run

    (tmp_path / "runs" / "r").mkdir(parents=True)
    assert resolve_run("r", tmp_path) == tmp_path / "runs" / "r"
    with pytest.raises(LeapError) as e:
        resolve_run("elsewhere/r", tmp_path)
    assert e.value.path == "elsewhere/r", e.value.path
    with pytest.raises(LeapError) as e:
        resolve_run("nope", tmp_path)
    assert e.value.path == str(tmp_path / "runs" / "nope"), e.value.path


# ---------------------------------------------------------------------------------------------------------------
# epic/annotations.py


def test_a_record_of_another_video_or_a_few_milliseconds_off_is_made_from_other_annotations(epic_dir):
    """Extract rounds times to the millisecond: 0.4 ms off is the same segment, 2 ms off another; another video
    is another segment whatever its times. (mutants: the video not compared; a 5 ms tolerance)"""
    from leap_cli.epic.annotations import made_from_other_annotations
    from tests.test_epic_annotations import _record

    seg = Annotations(epic_dir).segments("val")[1]
    assert made_from_other_annotations(_record(seg, start=seg.start + 0.0004), seg) is None
    assert made_from_other_annotations(_record(seg, start=seg.start + 0.002), seg) == "its start or stop"
    assert made_from_other_annotations(_record(seg, stop=seg.stop - 0.002), seg) == "its start or stop"
    assert made_from_other_annotations(_record(seg, video_id="P01_12"), seg) == "its video"


def test_an_old_record_whose_narration_was_unavailable_is_not_a_labelled_segments(epic_dir):
    """A record of a leap before annotation_hash, made where the narration was unavailable (a test row), is not
    the record of a labelled segment with these ids. (mutant: only "ok" narration components compared)"""
    import dataclasses

    from leap_cli.epic.annotations import made_from_other_annotations

    ann = Annotations(epic_dir)
    seg, test_seg = ann.segments("val")[1], ann.segments("test")[0]
    unavailable = {"components": {"narration": {"status": "unavailable"}}}
    assert made_from_other_annotations(unavailable, seg) == "its narration or labels"
    assert made_from_other_annotations(unavailable, test_seg) is None
    ok = {"components": {"narration": {"status": "ok", "data": seg.annotation()}}}
    assert made_from_other_annotations(ok, seg) is None
    # a labelled row with an empty narration still has an annotation (its verb and nouns)
    assert dataclasses.replace(seg, narration="").annotation()["verb"] == seg.verb


def test_one_segment_of_a_validation_file_without_labels_is_refused_as_the_whole_file_is(tmp_path, epic_dir):
    """``segment`` (leap show) reads one row; a val CSV without the label columns is refused there too, not
    read as an unlabelled split. (mutant: the columns decided by the header alone)"""
    import shutil

    folder = tmp_path / "annotations"
    shutil.copytree(epic_dir, folder)
    (folder / "EPIC_100_validation.csv").write_text((epic_dir / "EPIC_100_test_timestamps.csv").read_text())
    first = (epic_dir / "EPIC_100_test_timestamps.csv").read_text().splitlines()[1].split(",")[0]
    with pytest.raises(LeapError) as whole:
        Annotations(folder).segments("val")
    with pytest.raises(LeapError) as one:
        Annotations(folder).segment("val", first)
    assert one.value.message == whole.value.message and "no narrations or classes" in one.value.message, one.value


def test_a_video_id_that_is_only_a_prefix_of_the_narration_ids_video_is_noted(epic_dir):
    """P01_11_0 is a segment of P01_11, not of P01_1 (whose ids are P01_1_N). (mutant: prefix without the _)"""
    import dataclasses

    a = Annotations(epic_dir)
    seg = a.segments("val")[0]
    assert seg.narration_id == "P01_11_0"
    notes = a.row_notes([dataclasses.replace(seg, video_id="P01_1")])
    assert len(notes) == 1 and notes[0].startswith("1 row whose ids name different videos"), notes


def test_a_segments_duration_is_stop_minus_start_in_seconds(epic_dir):
    """(mutant: one more; the hands and objects components record it)"""
    seg = Annotations(epic_dir).segments("val")[0]
    assert (seg.start, seg.stop) == (0.0, 1.89) and seg.duration == pytest.approx(1.89)


@pytest.mark.parametrize("resolution", ["0x1080", "1920x0"])
def test_a_video_info_row_of_no_width_or_height_is_refused(tmp_path, epic_dir, resolution):
    """(mutant: only duration and fps checked)"""
    import shutil

    folder = tmp_path / "annotations"
    shutil.copytree(epic_dir, folder)
    (folder / "EPIC_100_video_info.csv").write_text(
        f"video_id,duration,fps,resolution\nP01_11,100.0,59.94,{resolution}\n")
    with pytest.raises(LeapError) as e:
        Annotations(folder).video_info
    assert e.value.message.startswith("no positive duration/fps/resolution for 'P01_11'") and e.value.record == "row 2"


# ---------------------------------------------------------------------------------------------------------------
# epic/info.py


def test_info_counts_the_test_split_and_each_source_of_a_video_once(tmp_path, monkeypatch):
    """The test split is counted (no classes used: it has none); a video with an MP4 and rgb_frames counts in both;
    an audio file is the one read, so its MP4's own track is not counted again. (mutants: test left out; None
    counted as a class; frames counted only without an MP4; the MP4's track counted beside the file)"""
    import leap_cli.media.audio as audio
    from leap_cli.epic.info import dataset_info
    from leap_cli.epic.layout import DatasetLayout
    from tests.test_shards import make_root

    root = make_root(tmp_path / "k")  # train: P01_01, P01_02 (rgb_frames); val: P01_03
    head = ("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,"
            "stop_frame\n")
    (root / "annotations" / "EPIC_100_test_timestamps.csv").write_text(
        head + "P01_01_90,P01,P01_01,00:00:01.00,00:00:01.00,00:00:02.00,11,20\n"
               "P01_01_91,P01,P01_01,00:00:03.00,00:00:03.00,00:00:04.00,31,40\n")
    for folder, name in (("videos", "P01_01.MP4"), ("audio", "P01_01.wav")):
        (root / "P01" / folder).mkdir(exist_ok=True)
        (root / "P01" / folder / name).write_bytes(b"\0")
    monkeypatch.setattr(audio, "has_audio_track", lambda path: True)  # (EPIC's MP4s carry their own track)
    train, _, test = dataset_info(DatasetLayout.open(root))[0]
    assert (test.split, test.segments, test.videos, test.verbs_used, test.nouns_used) == ("test", 2, 1, 0, 0)
    assert (train.with_mp4, train.with_frames, train.with_audio_file, train.with_audio_track) == (1, 2, 1, 0)
    assert (test.with_mp4, test.with_frames, test.with_audio_file, test.with_audio_track) == (1, 1, 1, 0)


def test_a_warning_of_unscored_segments_says_nothing_of_skipped_ones_where_none_were(ann_dir, caplog):
    """(mutant: "0 skipped by build-shards" said where the scores list none)"""
    import logging

    ids, verb, noun = _near_tie()
    with caplog.at_level(logging.WARNING):
        evaluate_scores({"narration_id": ids[:3], "verb_output": verb[:3], "noun_output": noun[:3],
                         "meta": {"skipped": []}}, Annotations(ann_dir), "val", source="scores.pt")
    said = " ".join(caplog.text.split())
    assert "1 segment of val is not in scores.pt: 1 not in the shards at all (e.g. P02_01_1" in said, said


def test_an_unknown_precision_is_refused_before_anything_runs():
    """(mutant: the check dropped: "fp64" ran under fp16 autocast)"""
    from leap_cli.evaluate.inference import predict, resolved_precision

    with pytest.raises(LeapError, match="unknown precision 'fp64'"):
        resolved_precision("fp64", "cpu")
    with pytest.raises(LeapError, match="unknown precision"):
        predict(torch.nn.Identity(), iter(()), precision="fp64")


def test_per_view_context_clips_stay_with_their_view():
    """Context clips given per view ([B,V,C,...]) are each view's own, flattened as the views are. (mutant: they were
    repeated as if shared by the views)"""
    from leap_cli.evaluate.inference import ViewConfig, predict
    from tests.test_checkpoint_inference import Scripted, _views

    video = _views([[1, 2], [3, 4]])  # [B=2, V=2, ...]
    ctx = torch.tensor([[[5, 6, 7], [8, 9, 10]], [[11, 12, 13], [14, 15, 16]]], dtype=torch.uint8)  # [B, V, C=3]
    ctx = ctx.view(2, 2, 3, 1, 1, 1, 1).expand(2, 2, 3, 3, 2, 2, 2).clone()
    mask = torch.ones(2, 3, dtype=torch.bool)
    got = predict(Scripted(), [{"video": video, "context_video": ctx, "context_mask": mask,
                                "narration_id": ["a", "b"]}], views=ViewConfig(2, 1), program=False)
    want = torch.tensor([(1 + 1000 * 18 + 2 + 1000 * 27) / 2, (3 + 1000 * 36 + 4 + 1000 * 45) / 2])
    torch.testing.assert_close(got["verb_output"][:, 0], want)


def test_rows_with_the_same_fault_share_one_fix_and_a_blank_narration_time_is_none(tmp_path, epic_dir):
    """A blank narration time (EPIC leaves some empty) is None. (mutant: the fix of a fault shared by every bad
    row replaced by a generic one)"""
    import shutil

    from leap_cli.epic.annotations import read_segments

    folder = tmp_path / "annotations"
    shutil.copytree(epic_dir, folder)
    path = folder / "EPIC_100_validation.csv"
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace("00:00:00.560", " ")
    path.write_text("\n".join(lines) + "\n")
    assert read_segments(path)[0].narration_timestamp is None
    for i in (1, 2):  # stop before start on two rows
        cells = lines[i].split(",")
        cells[4], cells[5] = cells[5], cells[4]
        lines[i] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(LeapError) as e:
        read_segments(path)
    assert e.value.message.startswith("2 rows cannot be read") and e.value.fix == \
        "swap or fix the timestamps of those rows", e.value

# ---------------------------------------------------------------------------------------------------------------
# bugs found beside the mutants


def test_a_scores_file_of_no_segments_is_one_line_not_a_traceback(tmp_path, ann_dir):
    """Was wrong: a dict of zero rows was read, then ``leap evaluate --scores`` died in the action combination
    (ValueError: cannot reshape array of size 0) where EPIC's evaluator says it needs at least one instance."""
    torch.save({"narration_id": [], "verb_output": torch.zeros(0, NV), "noun_output": torch.zeros(0, NN)},
               tmp_path / "empty.pt")
    with pytest.raises(LeapError) as e:
        load_scores(tmp_path / "empty.pt")
    assert e.value.message == "holds no segments (0 narration ids)" and e.value.path == str(tmp_path / "empty.pt")


def test_narration_ids_stored_as_bytes_are_read_as_text(tmp_path, ann_dir):
    """Was wrong: a NumPy bytes array of ids (dtype S, as Python 2 pickled a str array) became "b'P01_01_0'", and
    every id was 'not in the val annotations'."""
    ids, verb, noun = _near_tie()
    with open(tmp_path / "py2.pkl", "wb") as f:
        pickle.dump({"narration_id": np.array([i.encode() for i in ids]), "verb_output": verb.numpy(),
                     "noun_output": noun.numpy()}, f, protocol=2)
    scores = load_scores(tmp_path / "py2.pkl")
    assert scores["narration_id"] == ids
    assert evaluate_scores(scores, Annotations(ann_dir), "val")["segments"] == 4
