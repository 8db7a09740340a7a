"""Attack s67 mutnaming: a hand-made mutation run over leap_cli/extract/weights.py, naming.py and hands.py (what a
user of EPIC-KITCHENS-100 with their own weights gets from ``leap extract``: the files loaded, the crops CLIP sees,
the contact names and how each was named).

160 mutants; the nearest existing tests (test_naming, test_objects_naming, test_extract_components,
test_hand_objects, test_weights_truth_synth, test_extract_models) killed 98. The tests here kill 41 of the 62
survivors: a crop of a box wider than the frame (on one side only), shrinking by averaging, an empty form's prompt,
the prior's "storage" category, an unknown open_clip architecture, a local file named ``openai``, a weights file
replaced in place and another vocabulary of as many classes (the on-disk text-embedding cache key), the in-memory
cache, a one-element ``logit_scale``, the random-init warning, open_clip's ``openai`` download with QuickGELU, a
missing published file's download address, a submodule named ``module``, the gap/duration boundaries of contact
intervals, the labelled-box fallback's containment rule and 0.15 cap, the detector vote (unlabelled boxes, the
nearest frame's box, IoU 0.3, no object boxes), what reaches the namer (three spread frames, full size, the
narration prior, CLIP's names without it), the stationary prior, the most frequent labelled name read at its own
frame, a 29.97 fps frame's length, the median step, and the ``named_without_detections`` /
``object_names_unavailable`` flags. No bug was found in the three files: each survivor was a gap in the tests.
Left alive: 15 equivalent (ties in argsort/nearest, ``strict=`` of load_exact whose checks refuse every mismatch,
``endswith(())``, clamps done upstream, open_clip's own preprocess_cfg, ...) and 6 not pinned: model/state_dict
precedence when a file holds both, the prior_boost default 10, HandsComponent's unused hand_threshold default,
``exists`` for ``is_file`` of ~/.cache/clip, the hub-retry log silencing, the share's 3 decimals.
"""

from __future__ import annotations

import os
from types import SimpleNamespace as NS

import numpy as np
import pytest

from leap_cli.epic.annotations import Segment
from leap_cli.epic.hand_objects import BBox, FrameDetections, HandDetection, HandSide, HandState, ObjectDetection
from leap_cli.errors import LeapError
from leap_cli.extract.base import SegmentContext
from leap_cli.extract.detections import LabelledBox
from leap_cli.extract.hands import HandsComponent, _nearest_box, contact_intervals
from tests.test_extract_components import KNIFE, RIGHT, _hand_frames, _segment, _write

# --- naming.py: prompts and crops ------------------------------------------------------------------------------


def test_a_form_that_reads_as_nothing_makes_no_prompt():
    from leap_cli.extract.naming import class_prompts

    vocab = NS(ids=[1], keys={1: "pan"}, instances={1: ["-", ":", "pan:frying"]})
    assert class_prompts(vocab)[1] == [["a photo of a pan.", "a photo of a frying pan."]]


def _xy_frame(h, w):
    frame = np.zeros((h, w, 3), np.uint8)  # each pixel holds its own (x, y)
    frame[..., 0] = np.arange(w)[None, :]
    frame[..., 1] = np.arange(h)[:, None]
    return frame


def test_a_box_wider_than_the_frame_is_padded_not_wrapped_or_stretched():
    from leap_cli.extract.naming import crop_box

    # the whole of a 200 x 100 frame: a 240-pixel square from (0, 0), the frame at its top left, zeros beyond
    crop = crop_box(_xy_frame(100, 200), BBox(0.0, 0.0, 1.0, 1.0), 240)
    assert tuple(crop[0, 0, :2]) == (0, 0) and tuple(crop[99, 199, :2]) == (199, 99)
    assert not crop[100:].any() and not crop[:, 200:].any()
    # wider than the frame only: a 100 x 200 frame, a box 100 wide, 60 high: side 120, rows 40-159, columns
    # 0-99 of the frame and 20 columns of zeros (not the 100 columns stretched to 120)
    crop = crop_box(_xy_frame(200, 100), BBox(0.0, 0.35, 1.0, 0.65), 120)
    assert tuple(crop[0, 0, :2]) == (0, 40) and tuple(crop[-1, 99, :2]) == (99, 159)
    assert not crop[:, 100:].any()


def test_a_crop_shrunk_to_the_model_averages_its_pixels():
    """Fine texture (a grater's holes, a mesh) shrunk to CLIP's input is averaged (cv2.INTER_AREA), not sampled
    into stripes a photo never shows."""
    from leap_cli.extract.naming import crop_box

    frame = np.zeros((1000, 1000, 3), np.uint8)
    frame[:, ::2] = 255  # one-pixel stripes
    crop = crop_box(frame, BBox(0.25, 0.25, 0.75, 0.75), 32)  # 600 pixels to 32
    assert abs(float(crop.mean()) - 127.5) < 8 and float(crop.std()) < 10


# --- naming.py: the narration prior -----------------------------------------------------------------------------


def test_a_stationary_contact_takes_a_storage_noun_of_the_narration():
    from leap_cli.extract.naming import prior_name

    vocab = NS(keys={1: "cup", 2: "drawer"}, categories={1: "crockery", 2: "storage"})
    seg = Segment("a", "P01", "P01_01", 0, 2, 1, 100, noun="cup", noun_class=1, all_noun_classes=(1, 2))
    assert prior_name(seg, vocab, "stationary") == "drawer" and prior_name(seg, vocab, "portable") == "cup"


# --- naming.py: ClipNamer --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("open_clip")
    from tests.naming_models import register_tiny_clip

    folder = tmp_path_factory.mktemp("clip")
    return register_tiny_clip(folder), folder


def test_an_unknown_architecture_is_named_before_the_file_is_read(tmp_path):
    pytest.importorskip("open_clip")
    from leap_cli.extract.naming import ClipNamer

    junk = tmp_path / "w.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(LeapError) as e:
        ClipNamer(junk, arch="ViT-B-16-no-such")
    assert "unknown open_clip architecture 'ViT-B-16-no-such'" in e.value.one_line()


def test_a_local_file_named_openai_is_that_file(tiny, tmp_path, monkeypatch):
    """``--clip-weights openai`` asks open_clip's download only where no such file is at hand."""
    from leap_cli.extract.naming import ClipNamer
    from tests.naming_models import save_clip

    arch, _ = tiny
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a download attempt fails at once, not after the hub's retries
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # (no ~/.cache/clip of this machine)
    import torch

    state = torch.load(save_clip(tmp_path / "openai", arch), weights_only=True)
    namer = ClipNamer("openai", arch=arch)
    assert namer.source == f"clip:{arch}:openai" and namer._identity.startswith(f"{arch}:{(tmp_path / 'openai').resolve()}:")
    assert torch.equal(namer.model.state_dict()["text_projection"], state["text_projection"])  # the file's


def test_a_weights_file_replaced_in_place_is_not_named_with_the_old_files_text_embeddings(tiny, tmp_path):
    import torch

    from leap_cli.extract.naming import ClipNamer
    from tests.naming_models import save_clip

    arch, _ = tiny
    vocab = NS(ids=[1, 2], keys={1: "pan", 2: "knife"}, instances={})
    w = save_clip(tmp_path / "w.pt", arch, seed=0)
    _, old = ClipNamer(w, arch=arch, cache_dir=tmp_path / "cache").class_embeddings(vocab)
    save_clip(w, arch, seed=1)  # the same size, other weights
    st = w.stat()
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    _, new = ClipNamer(w, arch=arch, cache_dir=tmp_path / "cache").class_embeddings(vocab)
    alone = ClipNamer(w, arch=arch)  # no cache folder
    calls = []
    encode = alone.model.encode_text
    alone.model.encode_text = lambda *a, **k: calls.append(1) or encode(*a, **k)
    _, fresh = alone.class_embeddings(vocab)
    alone.class_embeddings(vocab)  # once per model and vocabulary, in memory: not again each segment
    assert len(calls) == 1
    assert torch.allclose(new, fresh, atol=1e-6) and not torch.allclose(new, old, atol=1e-3)


def test_no_crops_give_no_rows_of_every_class():
    from leap_cli.extract.naming import ClipNamer

    namer = object.__new__(ClipNamer)
    namer._torch, namer.class_embeddings = None, lambda vocab: ([1, 2, 3], None)
    ids, probs = namer.probabilities([], None)
    assert ids == [1, 2, 3] and probs.shape == (0, 3)


# --- hands.py: intervals and boxes ------------------------------------------------------------------------------


def test_a_gap_of_exactly_max_gap_is_bridged_and_a_run_of_exactly_min_duration_kept():
    times = [i * 0.125 for i in range(16)]  # exact in binary: no rounding either way

    def runs(on, **kw):
        return contact_intervals(times, [i in on for i in range(16)], 0.125, end=2.0,
                                 **{"max_gap": 0.25, "min_duration": 0.375, **kw})

    assert runs({0, 1, 2, 5, 6, 7}) == [(0, 7)]  # frames 3-4 off: 0.25 s
    assert runs({0, 1, 2, 6, 7, 8}) == [(0, 2), (6, 8)]  # 0.375 s off
    assert runs({10, 11, 12}) == [(10, 12)]  # 3 frames: 0.375 s
    assert runs({10, 11}) == []


def test_the_labelled_box_near_a_contact_point_contains_it_or_lies_within_0_15():
    point = (0.5, 0.5)
    around = LabelledBox("board", BBox(0.3, 0.3, 0.9, 0.9), 0.9)  # contains the point, centre 0.14 off
    beside = LabelledBox("cup", BBox(0.55, 0.40, 0.65, 0.50), 0.9)  # centre 0.11 off, not containing it
    get = lambda lb: lb.bbox  # noqa: E731
    assert _nearest_box([beside, around], *point, get=get) is around
    far = LabelledBox("pan", BBox(0.60, 0.55, 0.80, 0.65), 0.9)  # centre 0.2 off, not containing it
    assert _nearest_box([far], *point, get=get) is None
    near = LabelledBox("pan", BBox(0.52, 0.52, 0.72, 0.62), 0.9)  # centre 0.14 off, not containing it
    assert _nearest_box([near], *point, get=get) is near


# --- hands.py: describe ------------------------------------------------------------------------------------------


def _contact(rec, side="right"):
    (c,) = next(h for h in rec["data"]["hands"] if h["hand"] == side)["contacts"]
    return c


def test_a_single_frame_contact_of_a_29_97_fps_video_lasts_one_epic_frame(tmp_path):
    """EPIC numbers a 29.97 fps video's frames at 60 a second: one frame lasts 1/60 s, not 1/29.97."""
    frames = [FrameDetections("P01_01", 61, [HandDetection(RIGHT, 0.9, HandState.PORTABLE_OBJECT, (0.1, -0.1),
                                                           HandSide.RIGHT)], [ObjectDetection(KNIFE, 0.9)])]
    seg = Segment("P01_01_0", "P01", "P01_01", 1.0, 2.0, 61, 120)
    rec = HandsComponent(min_duration=0.0).describe(SegmentContext(layout=_write(tmp_path, frames), segment=seg,
                                                                   fps=29.97))
    c = _contact(rec)
    assert (c["start"], c["stop"]) == (0.0, 0.017)


def test_the_step_of_a_file_missing_one_frame_in_two_is_the_typical_step(tmp_path):
    """A file that holds every second frame but one run of neighbours: a frame lasts the median step (0.04 s),
    not the shortest (0.02 s)."""
    numbers = [n for n in range(1, 101) if n % 2 == 1 or n == 50]
    frames = [f for f in _hand_frames((0.5, 1.5)) if f.frame_number in numbers]
    c = _contact(HandsComponent().describe(SegmentContext(layout=_write(tmp_path, frames), segment=_segment(),
                                                          fps=50.0)))
    assert (c["start"], c["stop"]) == (0.52, 1.52)  # frames 27-75: 0.52 s to 1.48 s + 0.04


def test_the_most_frequent_labelled_name_names_a_contact_and_a_label_is_read_at_its_own_frame(tmp_path):
    knife = {"label": "knife", "bbox": vars(KNIFE), "score": 0.9}
    board = {"label": "board", "bbox": vars(KNIFE), "score": 0.9}
    labelled = [{"video_id": "P01_01", "frame_number": n, "objects": [board if n == 26 else knife]}
                for n in range(26, 76)]
    c = _contact(HandsComponent().describe(SegmentContext(layout=_write(tmp_path / "a", _hand_frames(), labelled),
                                                          segment=_segment(), fps=50.0)))
    assert (c["object"], c["named_by"]) == ("knife", "object-detections")
    # one labelled frame only, the contact's last (frame 75): it names the contact
    c = _contact(HandsComponent().describe(SegmentContext(
        layout=_write(tmp_path / "b", _hand_frames(), [{**labelled[-1], "frame_number": 75}]), segment=_segment(),
        fps=50.0)))
    assert c["object"] == "knife"


def _moving_contact():
    """A right hand holding an object that moves: frames 26-50 at box A, 51-75 at box B (0-based 50 fps)."""
    a, b = BBox(0.10, 0.10, 0.30, 0.30), BBox(0.60, 0.10, 0.80, 0.30)
    out = []
    for n in range(1, 101):
        box = a if n <= 50 else b
        on = 26 <= n <= 75
        off = (box.center[0] - RIGHT.center[0], box.center[1] - RIGHT.center[1]) if on else (0.0, 0.0)
        out.append(FrameDetections("P01_01", n, [HandDetection(RIGHT, 0.9, HandState.PORTABLE_OBJECT if on else
                                                               HandState.NO_CONTACT, off, HandSide.RIGHT)],
                                   [ObjectDetection(box, 0.9)]))
    return out, a, b


def test_the_detector_votes_with_the_contact_box_of_its_own_frame_and_only_labelled_boxes(tmp_path):
    frames, a, b = _moving_contact()
    ctx = SegmentContext(layout=_write(tmp_path, frames), segment=_segment(), fps=50.0)
    # frame 70 sees the object at B: against frame 70's contact box, not the contact's first (A)
    ctx.video_cache[("detector_boxes", ctx.segment.narration_id)] = (
        "detector:test", {70: [LabelledBox("", b, 0.9), LabelledBox("pan", BBox(0.60, 0.10, 0.80, 0.25), 0.9)]})
    c = _contact(HandsComponent().describe(ctx))
    assert (c["object"], c["named_by"]) == ("pan", "detector:test")  # the unlabelled box (IoU 1) lends nothing


def test_a_detector_box_overlapping_the_contact_box_by_0_4_names_it(tmp_path):
    ctx = SegmentContext(layout=_write(tmp_path, _hand_frames((0.5, 1.5))), segment=_segment(), fps=50.0)
    # KNIFE is 0.15 x 0.20; a box of its height, from its left, 0.06 wide: IoU 0.4
    box = BBox(KNIFE.left, KNIFE.top, KNIFE.left + 0.06, KNIFE.bottom)
    assert abs(box.iou(KNIFE) - 0.4) < 1e-6
    ctx.video_cache[("detector_boxes", ctx.segment.narration_id)] = ("detector:test", {50: [LabelledBox("pan", box, .9)]})
    assert _contact(HandsComponent().describe(ctx))["object"] == "pan"


class _Namer:
    source = "clip:fake"

    def __init__(self):
        self.calls = []

    def name_boxes_both(self, images, boxes, vocab, prior=None):
        self.calls.append((len(images), boxes, prior))
        return ([[("knife", 0.6), ("carrot", 0.4)]] * len(boxes), [[("board", 0.7), ("knife", 0.3)]] * len(boxes))


def _vocab():
    return NS(ids=[3, 4, 23, 40], keys={3: "door", 4: "knife", 23: "carrot", 40: "board"}, instances={},
              categories={3: "furniture", 4: "cutlery", 23: "vegetables", 40: "utensils"})


def test_the_namer_sees_three_frames_spread_over_the_contact_at_full_size_with_the_narration_prior(tmp_path):
    read = []

    def read_frames(numbers, short_side):
        read.append((list(numbers), short_side))
        return np.zeros((len(numbers), 8, 8, 3), np.uint8)

    namer = _Namer()
    comp = HandsComponent(namer=namer)
    comp._vocabs[""] = _vocab()
    ctx = SegmentContext(layout=_write(tmp_path, _hand_frames((0.5, 1.5))), segment=_segment(), fps=50.0,
                         read_frames=read_frames)
    c = _contact(comp.describe(ctx))
    assert (c["object"], c["named_by"]) == ("knife", "clip:fake")
    assert c["names_without_prior"] == [{"noun": "board", "score": 0.7}, {"noun": "knife", "score": 0.3}]
    (numbers, short_side), = read
    assert short_side == 0 and len(numbers) == 3  # the contact's frames 26-75: first, middle, last
    assert numbers == [ctx.clock.from_epic(n) for n in (26, 50, 75)] or \
        numbers == [ctx.clock.from_epic(n) for n in (26, 51, 75)]
    (n_images, boxes, prior), = namer.calls
    assert n_images == 3 and prior == [23, 40]


def test_a_stationary_contact_named_from_the_narration_takes_its_stationary_noun(tmp_path):
    frames = _hand_frames((0.5, 1.5))
    for f in frames:
        f.hands[0] = HandDetection(f.hands[0].bbox, f.hands[0].score, HandState.STATIONARY_OBJECT
                                   if f.hands[0].state == HandState.PORTABLE_OBJECT else f.hands[0].state,
                                   f.hands[0].object_offset, f.hands[0].side)
    comp = HandsComponent()
    comp._vocabs[""] = _vocab()
    seg = Segment("P01_01_0", "P01", "P01_01", 0.0, 2.0, 1, 100, narration="cut carrot by door", noun="carrot",
                  noun_class=23, all_nouns=("carrot", "door"), all_noun_classes=(23, 3))
    c = _contact(comp.describe(SegmentContext(layout=_write(tmp_path, frames), segment=seg, fps=50.0)))
    assert (c["object"], c["named_by"], c["state"]) == ("door", "narration-prior", "stationary")


def test_an_unnamed_contact_says_nothing_named_it(tmp_path):
    c = _contact(HandsComponent().describe(SegmentContext(layout=_write(tmp_path, _hand_frames()),
                                                          segment=_segment(), fps=50.0)))
    assert (c["object"], c["named_by"]) == ("object", None)


def test_the_named_without_detections_flag_only_where_contacts_could_be_named_by_them(tmp_path):
    no_contact = [f for f in _hand_frames((5.0, 6.0))]
    rec = HandsComponent().describe(SegmentContext(layout=_write(tmp_path / "a", no_contact), segment=_segment(),
                                                   fps=50.0))
    assert "named_without_detections" not in rec["data"]  # no contact: nothing was left unnamed
    rec = HandsComponent().describe(SegmentContext(layout=_write(tmp_path / "b", _hand_frames(), []),
                                                   segment=_segment(), fps=50.0))
    assert "named_without_detections" not in rec["data"]  # the file is placed: it has no box here
    rec = HandsComponent().describe(SegmentContext(layout=_write(tmp_path / "c", _hand_frames()),
                                                   segment=_segment(), fps=50.0))
    assert rec["data"]["named_without_detections"] is True


def test_an_unreadable_labelled_detections_file_is_said_in_the_hands_record(tmp_path):
    layout = _write(tmp_path, _hand_frames(), [])
    layout._d.write_text("{not json\n")
    rec = HandsComponent().describe(SegmentContext(layout=layout, segment=_segment(), fps=50.0))
    assert rec["status"] == "ok" and _contact(rec)["object"] == "object"
    assert "dets.jsonl" in rec["data"]["object_names_unavailable"]


# --- a second batch: the weights files' edges ---------------------------------------------------------------------


def test_a_missing_published_checkpoint_says_where_to_download_it_and_only_a_leading_module_goes(tmp_path):
    import torch

    from leap_cli.extract.weights import load_checkpoint, unwrap_state_dict

    with pytest.raises(LeapError) as e:
        load_checkpoint(tmp_path / "Cnn14_mAP=0.431.pth", "CNN14 audio model")
    assert "zenodo.org/record/3987831" in e.value.fix and "local .pth/.pt file" in e.value.fix
    t = torch.ones(1)
    state = unwrap_state_dict({"model": {"module.head.module.weight": t, "neck.module.bias": t}}, "f.pth", "demo")
    assert set(state) == {"head.module.weight", "neck.module.bias"}  # a submodule named "module" keeps its name


def test_a_clip_state_dict_with_a_one_element_logit_scale_loads(tiny, tmp_path):
    import torch

    from leap_cli.extract.naming import ClipNamer
    from tests.naming_models import save_clip

    arch, _ = tiny
    state = torch.load(save_clip(tmp_path / "a.pt", arch), weights_only=True)
    state["logit_scale"] = state["logit_scale"].reshape(1)  # as some converted / older open_clip files hold it
    torch.save(state, tmp_path / "b.pt")
    namer = ClipNamer(tmp_path / "b.pt", arch=arch)
    assert float(namer.model.logit_scale.detach()) == pytest.approx(float(state["logit_scale"][0]))


def test_loading_a_clip_file_logs_no_random_initialisation_warning(tiny, tmp_path, caplog):
    from leap_cli.extract.naming import ClipNamer
    from tests.naming_models import save_clip

    arch, _ = tiny
    save_clip(tmp_path / "a.pt", arch)  # (open_clip warns here: a model of random weights)
    caplog.clear()
    with caplog.at_level("WARNING"):
        ClipNamer(tmp_path / "a.pt", arch=arch)
    assert not [r for r in caplog.records if "No pretrained weights loaded" in r.getMessage()]


def test_the_openai_download_is_open_clips_with_quick_gelu_and_its_error_offers_a_local_file(tmp_path, monkeypatch):
    open_clip = pytest.importorskip("open_clip")
    from leap_cli.extract import naming

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cache/clip
    monkeypatch.setattr(naming, "_hub_cached", lambda repo, name: None)
    monkeypatch.setattr(naming, "_hub_unreachable", lambda: None)  # a connected machine
    asked = []
    monkeypatch.setattr(open_clip, "create_model", lambda arch, **kw: asked.append((arch, kw)) or "model")
    assert naming._openai_clip(open_clip, "ViT-B-16") == "model"
    assert asked == [("ViT-B-16", {"pretrained": "openai", "force_quick_gelu": True})]
    fix = naming._openai_fix(open_clip, "ViT-B-16", "https://x/ViT-B-16.pt", tmp_path / "ViT-B-16.pt")
    assert fix.endswith("pass --clip-weights FILE") and "ViT-B-16.pt" in fix


def test_a_segment_between_the_files_frames_is_unavailable_and_says_why(tmp_path):
    frames = [f for f in _hand_frames() if f.frame_number > 60]
    seg = Segment("P01_01_0", "P01", "P01_01", 0.0, 1.0, 1, 50)
    rec = HandsComponent().describe(SegmentContext(layout=_write(tmp_path, frames), segment=seg, fps=50.0))
    assert rec["status"] == "unavailable" and rec["data"]["reason"] == "no detection frames inside the segment"


def test_another_vocabulary_of_as_many_classes_does_not_take_the_cached_text_embeddings(tiny, tmp_path):
    import torch

    from leap_cli.extract.naming import ClipNamer
    from tests.naming_models import save_clip

    arch, _ = tiny
    w = save_clip(tmp_path / "w.pt", arch)
    kitchen = NS(ids=[1, 2], keys={1: "pan", 2: "knife"}, instances={})
    garden = NS(ids=[1, 2], keys={1: "rake", 2: "hose"}, instances={})  # another data set's two nouns
    ClipNamer(w, arch=arch, cache_dir=tmp_path / "cache").class_embeddings(kitchen)
    _, cached = ClipNamer(w, arch=arch, cache_dir=tmp_path / "cache").class_embeddings(garden)
    _, fresh = ClipNamer(w, arch=arch).class_embeddings(garden)
    assert torch.allclose(cached, fresh, atol=1e-6)


def test_a_contact_without_object_boxes_is_not_voted_on_by_the_detector(tmp_path):
    """No object box over the threshold on any of the contact's frames: no contact box for a detector box to
    overlap; the contact is still described (unnamed), not a crash on an empty list."""
    frames = _hand_frames((0.5, 1.5))
    for f in frames:
        f.objects.clear()
    ctx = SegmentContext(layout=_write(tmp_path, frames), segment=_segment(), fps=50.0)
    ctx.video_cache[("detector_boxes", ctx.segment.narration_id)] = ("detector:test", {50: [LabelledBox("pan", KNIFE, .9)]})
    c = _contact(HandsComponent().describe(ctx))
    assert (c["object"], c["named_by"]) == ("object", None)
