"""Checkpoints (what a resume or an evaluation reads back) and multi-view inference (what the scores hold), on tiny
models and scripted stand-ins whose outputs say which segment and view they came from."""

import logging
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from leap_cli.errors import LeapError
from leap_cli.evaluate.inference import ViewConfig, end_ids_from_model_args, predict
from leap_cli.model import build_model
from leap_cli.train.checkpoint import (CHECKPOINT_KEYS, load_checkpoint, load_model, rng_state, save_checkpoint,
                                       set_rng_state)

torch.set_num_threads(1)

ARGS = {"backbone": "uniformerv2_tiny", "num_frames": 4, "img_size": 32, "num_verbs": 7, "num_nouns": 9,
        "program": {"step_verbs": 8, "objects": 10, "conditions": 5, "max_steps": 3}, "anticipation": None,
        "decoder_dim": 32, "decoder_heads": 2}


def _ckpt(model: torch.nn.Module, step: int = 1, **extra) -> dict:
    """A checkpoint with every key save_checkpoint requires."""
    return {"model": model.state_dict(), "model_args": dict(ARGS), "config": {}, "optimizer": {}, "scheduler": {},
            "scaler": {}, "step": step, "epoch": 0, "best_metric": 0.0, "rng": {}, "data_position": {}, **extra}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model(dict(ARGS)).eval()


# ---------------------------------------------------------------- checkpoints


def _draws() -> list:
    return [random.random(), random.gauss(0, 1), float(np.random.standard_normal()), float(np.random.rand()),
            float(torch.rand(1))]


@pytest.fixture
def global_rngs_kept():
    """The test reseeds the process's generators: the tests after it get them back as they were."""
    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    yield
    random.setstate(saved[0]), np.random.set_state(saved[1]), torch.set_rng_state(saved[2])


def test_rng_state_round_trip_gives_the_same_draws_including_cached_gaussians(tmp_path: Path,
                                                                              global_rngs_kept) -> None:
    """A resume restores Python, NumPy and torch generators exactly: the same augmentations and dropout as an
    uninterrupted run, also the second half of a Gaussian pair each of Python and NumPy keep cached."""
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    random.gauss(0, 1), np.random.standard_normal()  # leave a cached Gaussian in each
    state = rng_state()
    before = _draws()
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    _draws()
    set_rng_state(state)
    assert _draws() == before
    # the state survives the file (weights_only) as well
    save = {k: None for k in CHECKPOINT_KEYS}
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    random.gauss(0, 1), np.random.standard_normal()
    save.update(rng=rng_state(), model={}, model_args={})
    expected = _draws()
    save_checkpoint(tmp_path / "rng.pt", save)
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert _draws() == expected


def test_a_failed_save_leaves_the_previous_checkpoint_whole(tmp_path: Path, tiny) -> None:
    """A save that fails (here: something that cannot be serialised) must not truncate last.pt: a run that
    crashes while checkpointing resumes from the checkpoint before."""
    last = tmp_path / "last.pt"
    save_checkpoint(last, _ckpt(tiny, step=7))
    before = last.read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        save_checkpoint(last, _ckpt(tiny, step=8, provenance=lambda: None))
    assert last.read_bytes() == before and load_checkpoint(last)["step"] == 7
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left beside it


def test_a_crash_before_the_new_checkpoint_is_in_place_leaves_the_old_one(tmp_path: Path, tiny, monkeypatch) -> None:
    """The new bytes go to a temporary file renamed onto last.pt: a crash before the rename (here the rename
    fails) leaves the previous checkpoint whole, not a half-written last.pt."""
    import os

    last = tmp_path / "last.pt"
    save_checkpoint(last, _ckpt(tiny, step=7))
    before = last.read_bytes()

    def crash(*a, **kw):
        raise OSError("killed")

    monkeypatch.setattr(os, "replace", crash)
    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(Exception):
        save_checkpoint(last, _ckpt(tiny, step=8))
    monkeypatch.undo()
    assert last.read_bytes() == before and load_checkpoint(last)["step"] == 7


@pytest.mark.parametrize("key", ["model", "optimizer", "scheduler", "scaler", "step", "rng", "data_position"])
def test_a_checkpoint_without_what_a_resume_needs_is_refused_when_saved(tmp_path: Path, tiny, key: str) -> None:
    """A checkpoint missing the optimizer, the scheduler, the RNG or the data position would resume with another
    state than was saved (LR, moments, batches seen): it is refused when written, not found out at the resume."""
    ckpt = _ckpt(tiny)
    del ckpt[key]
    with pytest.raises(ValueError, match=key):
        save_checkpoint(tmp_path / "x.pt", ckpt)
    assert not (tmp_path / "x.pt").exists()


def test_the_vocabulary_and_timing_travel_with_the_checkpoint(tmp_path: Path, tiny) -> None:
    """The program vocabulary (to read predicted programs back, to compare shards' targets) and the anticipation
    timing are stored as given."""
    targets = {"max_steps": 3, "step_verbs": ["a", "b"], "objects": ["x"], "conditions": ["c"]}
    timing = {"tau_a": 2.0, "context_mode": "clips", "span_frames": 256}
    save_checkpoint(tmp_path / "c.pt", _ckpt(tiny, targets=targets, shards_timing=timing))
    back = load_checkpoint(tmp_path / "c.pt")
    assert back["targets"] == targets and back["shards_timing"] == timing


class Foreign:
    """An object a checkpoint must not hold: unpickling it would run arbitrary code."""


def test_a_checkpoint_holding_arbitrary_objects_is_not_unpickled(tmp_path: Path, tiny) -> None:
    """Checkpoints are read with weights_only=True: a file with a pickled object is refused, not executed."""
    torch.save({**_ckpt(tiny), "evil": Foreign()}, tmp_path / "f.pt")
    with pytest.raises(LeapError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "f.pt")


def test_a_file_without_model_args_is_not_a_leap_checkpoint(tmp_path: Path, tiny) -> None:
    """A bare state dict (an official or foreign weights file) is one line, not a KeyError in load_model."""
    torch.save({"model": tiny.state_dict()}, tmp_path / "w.pt")
    with pytest.raises(LeapError, match="not a leap checkpoint"):
        load_model(tmp_path / "w.pt")


def _two_checkpoints(run: Path) -> tuple[dict, dict]:
    torch.manual_seed(1)
    best = build_model(dict(ARGS))
    torch.manual_seed(2)
    last = build_model(dict(ARGS))
    save_checkpoint(run / "checkpoints" / "best.pt", _ckpt(best, step=3))
    save_checkpoint(run / "checkpoints" / "last.pt", _ckpt(last, step=9))
    return best.state_dict(), last.state_dict()


def test_best_and_last_of_a_run_load_their_own_weights(tmp_path: Path) -> None:
    """`--checkpoint best` evaluates best.pt's weights and `last` last.pt's (not the other file's)."""
    best, last = _two_checkpoints(tmp_path / "run")
    for which, want, step in (("best", best, 3), ("last", last, 9)):
        model, ckpt = load_model(tmp_path / "run", which)
        assert ckpt["step"] == step
        assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items()), which
    model, ckpt = load_model(tmp_path / "run")  # best by default
    assert ckpt["step"] == 3 and not model.training


def test_weights_that_do_not_match_the_model_are_refused_unless_partial(tmp_path: Path, tiny, caplog) -> None:
    """A checkpoint missing a tensor (it would stay at its random initialisation) or holding one the model does not
    have (weights meant for another model) is refused; --allow-partial-load loads it with a warning."""
    missing = _ckpt(tiny)
    missing["model"] = {k: v for k, v in missing["model"].items() if k != "verb_head.weight"}
    save_checkpoint(tmp_path / "missing.pt", missing)
    foreign = _ckpt(tiny)
    foreign["model"] = {**foreign["model"], "extra_head.weight": torch.zeros(2, 2)}
    save_checkpoint(tmp_path / "foreign.pt", foreign)
    with pytest.raises(LeapError, match=r"missing \['verb_head.weight'\]"):
        load_model(tmp_path / "missing.pt")
    with pytest.raises(LeapError, match=r"unexpected \['extra_head.weight'\]"):
        load_model(tmp_path / "foreign.pt")
    with caplog.at_level(logging.WARNING):
        model, _ = load_model(tmp_path / "foreign.pt", allow_partial=True)
    assert "1 foreign ones ignored" in caplog.text
    assert torch.equal(model.noun_head.weight, tiny.noun_head.weight)


# ---------------------------------------------------------------- inference


class Decoder:
    def ids_from_logits(self, out: dict) -> torch.Tensor:
        return out["ids"]


class Scripted(torch.nn.Module):
    """Outputs computed from the clip's value x (each view's clip is filled with one number): verb logits
    [x, -x, 2x], noun logits [x, 3], condition logits [x - 20, 0], greedy ids x and step condition logits x % 10 - 2."""

    def __init__(self):
        super().__init__()
        self.decoder = Decoder()

    def forward(self, video, context_video=None, context_mask=None):
        x = video.float().flatten(1)[:, 0]
        if context_video is not None:  # anticipation: the context clips' values, added as x + 1000 c
            x = x + 1000 * (context_video.float().flatten(2)[:, :, 0] * context_mask.float()).sum(1)
        one = torch.ones_like(x)
        return {"verb": torch.stack([x, -x, 2 * x], 1), "noun": torch.stack([x, 3 * one], 1),
                "conditions": torch.stack([x - 20, 0 * x], 1),
                "ids": x.long()[:, None, None].expand(-1, 2, 3).clone(),
                "step_conditions": x[:, None, None].expand(-1, 2, 2) % 10 - 2}


def _views(values: list[list[float]]) -> torch.Tensor:
    """[B,V,3,T,H,W] uint8 clips, each filled with its value."""
    b, v = len(values), len(values[0])
    return torch.tensor(values, dtype=torch.uint8).view(b, v, 1, 1, 1, 1).expand(b, v, 3, 2, 2, 2).clone()


def test_the_central_view_is_the_middle_clip_and_middle_crop() -> None:
    """Views are ordered temporal-major then crops (the shards reader's order): for 3 clips x 2 crops the centre
    is clip 1 crop 1, index 3 (a transposed formula gives 4, clip 2 crop 0)."""
    assert ViewConfig(3, 2).center == 3 and ViewConfig(2, 3).center == 4 and ViewConfig(1, 1).center == 0
    assert ViewConfig(3, 1).center == 1 and ViewConfig(1, 3).center == 1


def test_views_are_averaged_per_segment_as_logits_and_condition_probabilities() -> None:
    """Verb and noun scores are each segment's mean of raw logits over its views (not probabilities, not another
    segment's views); condition scores are the mean of each view's sigmoid; the program and its step conditions
    are the central view's."""
    views = ViewConfig(3, 2)
    vals = [[10, 11, 12, 13, 14, 15], [100, 101, 102, 103, 104, 105]]
    batch = {"video": _views(vals), "narration_id": ["a", "b"]}
    got = predict(Scripted(), [batch], views=views)
    x = torch.tensor(vals, dtype=torch.float32)
    mean = x.mean(1)
    assert got["narration_id"] == ["a", "b"]
    torch.testing.assert_close(got["verb_output"], torch.stack([mean, -mean, 2 * mean], 1))
    torch.testing.assert_close(got["noun_output"], torch.stack([mean, torch.full_like(mean, 3.0)], 1))
    prog = got["program"]
    torch.testing.assert_close(prog["conditions"][:, 0], torch.sigmoid(x - 20).mean(1))
    torch.testing.assert_close(prog["conditions"][:, 1], torch.full((2,), 0.5))
    centre = x[:, views.center]  # 13 and 103
    assert prog["steps"][:, 0, 0].tolist() == [13, 103]
    torch.testing.assert_close(prog["step_conditions"][:, 0, 0], torch.sigmoid(centre % 10 - 2))


def test_padding_rows_are_dropped_from_scores_and_targets() -> None:
    """Rows a rank's loader padded with (copies to even out the ranks) are neither scored nor kept as targets."""
    batch = {"video": _views([[10], [20], [30]]), "narration_id": ["a", "b", "a"],
             "padding": torch.tensor([0, 0, 1]), "program_steps": torch.zeros(3, 2, 3, dtype=torch.long),
             "conditions": torch.zeros(3, 2), "has_program": torch.tensor([1, 0, 1])}
    got = predict(Scripted(), [batch], views=ViewConfig(1, 1))
    assert got["narration_id"] == ["a", "b"] and got["verb_output"][:, 0].tolist() == [10, 20]
    prog = got["program"]
    assert prog["steps"].shape[0] == prog["target_steps"].shape[0] == prog["target_conditions"].shape[0] == 2
    assert prog["has_program"].tolist() == [True, False]


def test_each_view_of_an_anticipation_segment_keeps_its_own_context_clips() -> None:
    """With several views of the current clip and one set of context clips per segment, every view is paired with
    its own segment's context and mask (not another segment's)."""
    video = _views([[1, 2], [3, 4]])
    ctx = torch.tensor([[5, 6], [7, 8]], dtype=torch.uint8).view(2, 2, 1, 1, 1, 1).expand(2, 2, 3, 2, 2, 2).clone()
    mask = torch.tensor([[True, True], [False, True]])
    got = predict(Scripted(), [{"video": video, "context_video": ctx, "context_mask": mask,
                                "narration_id": ["a", "b"]}], views=ViewConfig(2, 1), program=False)
    want = torch.tensor([1.5 + 1000 * (5 + 6), 3.5 + 1000 * 8])
    torch.testing.assert_close(got["verb_output"][:, 0], want)


class Heads(torch.nn.Module):
    """Classifiers with large biases: bf16 would round them, dropping them would move every score."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.verb_head, self.noun_head = torch.nn.Linear(4, 3), torch.nn.Linear(4, 2)
        with torch.no_grad():
            self.verb_head.bias.copy_(torch.tensor([100.3, -50.7, 3.1]))
            self.noun_head.bias.copy_(torch.tensor([10.9, 7.3]))

    def forward(self, video, context_video=None, context_mask=None):
        feat = video.float().flatten(1)[:, :4] / 255
        return {"verb": self.verb_head(feat), "noun": self.noun_head(feat)}


def test_bf16_scores_are_the_fp32_classifiers_scores() -> None:
    """Under bf16 the verb/noun classifiers run in fp32, with their biases: the scores equal an fp32 run's."""
    video = torch.randint(0, 256, (3, 3, 2, 2, 2), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    batch = {"video": video, "narration_id": ["a", "b", "c"]}
    model = Heads()
    with torch.no_grad():
        full = model(video)
    for precision in ("fp32", "bf16"):
        got = predict(model, [batch], precision=precision)
        for key in ("verb", "noun"):
            torch.testing.assert_close(got[f"{key}_output"], full[key], rtol=1e-6, atol=1e-5)


def test_a_compiled_run_cuts_the_filled_up_last_batch_back_to_its_rows(monkeypatch) -> None:
    """predict(compile=True) fills a short last batch up to the first batch's size and keeps the first rows
    (the real clips): the scores equal the eager ones (torch.compile stood in for by the model itself)."""
    monkeypatch.setattr(torch, "compile", lambda module, **kw: module)
    batches = [{"video": _views([[1], [2], [3]]), "narration_id": ["a", "b", "c"]},
               {"video": _views([[4], [5]]), "narration_id": ["d", "e"]}]
    eager = predict(Scripted(), batches, views=ViewConfig(1, 1))
    compiled = predict(Scripted(), batches, views=ViewConfig(1, 1), compile=True)
    assert compiled["narration_id"] == eager["narration_id"]
    torch.testing.assert_close(compiled["verb_output"], eager["verb_output"])
    assert torch.equal(compiled["program"]["steps"], eager["program"]["steps"])


def test_end_ids_are_the_last_step_verb_and_the_last_object() -> None:
    """Program metrics stop each decoded program at END (last step verb, last object, last object)."""
    assert end_ids_from_model_args({"program": {"step_verbs": 8, "objects": 10}}) == [7, 9, 9]
    assert end_ids_from_model_args({"program": None}) is None


def test_the_scores_meta_says_what_was_scored(tmp_path: Path, tiny, monkeypatch) -> None:
    """scores.pt's meta (what `leap submit` and a reader of the figures trust) names the checkpoint, its step, the
    views (temporal, spatial), the precision that ran (not "auto"), the run's provenance and, for anticipation, the
    shards' tau_a."""
    from types import SimpleNamespace

    import leap_cli.evaluate.inference as inference
    from leap_cli.evaluate.scores import load_scores

    run = tmp_path / "runs" / "r"
    provenance = {"shards": "train", "programs": "model-x"}
    save_checkpoint(run / "checkpoints" / "best.pt", _ckpt(tiny, step=42, config={"data": {"task": "anticipation"}},
                                                           provenance=provenance))
    (tmp_path / "shards").mkdir()

    class Loader(list):
        dataset = SimpleNamespace(manifest={"task": "anticipation", "settings": {"tau_a": 2.0}, "shards": []})

    monkeypatch.setattr(inference, "shard_batches", lambda *a, **kw: (Loader(), 1))
    monkeypatch.setattr(inference, "predict", lambda *a, **kw: {"narration_id": ["a"], "verb_output": torch.zeros(1, 7),
                                                                "noun_output": torch.zeros(1, 9)})
    _, path = inference.evaluate_run(run, "val", workdir=tmp_path, shards=tmp_path / "shards",
                                     views=ViewConfig(3, 2), device="cpu", precision="auto")
    meta = load_scores(path)["meta"]
    assert meta == {"split": "val", "task": "anticipation", "run": str(run), "checkpoint": "best",
                    "views": {"temporal": 3, "spatial": 2}, "step": 42, "precision": "fp32", "compile": False,
                    "provenance": provenance, "skipped": [], "tau_a": 2.0}
