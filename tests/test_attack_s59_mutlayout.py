"""Session 59 mutation run (mutlayout) over the dataset roots (epic/layout.py: _roots, _participant_folder,
given_root) and extract --retry-errors for files placed since (extract/runner.py retry_test, file_there,
file_placed): each test kills a mutant the suite let live, or pins a bug the run turned up ("Was wrong", fixed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from leap_cli.epic.layout import DatasetLayout
from tests.test_epic_layout import _annotations, _touch


# -- _participant_folder: only "P" and two digits ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["p01", "Pa1", "P0a"])
def test_a_folder_almost_named_like_a_participant_leaves_the_download_folder_first(tmp_path, name):
    """ROOT/p01, ROOT/Pa1, ROOT/P0a beside ROOT/EPIC-KITCHENS/P01 are no participant folders: the download folder
    stays the first root (mutants: "P" or "p", name[2:].isdigit(), any digit after the P)."""
    root, inner = tmp_path / "ROOT", tmp_path / "ROOT" / "EPIC-KITCHENS"
    (inner / "P01").mkdir(parents=True)
    (root / name).mkdir()
    _annotations(root / "annotations")
    layout = DatasetLayout.open(root)
    assert layout.roots == (inner, root)
    mp4 = _touch(inner / "P01" / "videos" / "P01_01.MP4")
    _touch(root / "P01" / "videos" / "P01_01.MP4")  # (made now: a video in both, the first root's is read)
    assert layout.video_path("P01_01") == mp4


# -- given_root: the folder given, also where it is itself named EPIC-KITCHENS -----------------------------------------

def _nested(tmp_path: Path) -> tuple[Path, Path]:
    """``epic_downloader.py --output-path DATA/EPIC-KITCHENS``: the script writes DATA/EPIC-KITCHENS/EPIC-KITCHENS/P01,
    and --data is the folder downloaded into (README: "Point --data ROOT at the folder you downloaded into")."""
    given = tmp_path / "EPIC-KITCHENS"
    inner = given / "EPIC-KITCHENS"
    (inner / "P01" / "rgb_frames" / "P01_01").mkdir(parents=True)  # a frames-only video: no sound anywhere
    _annotations(given / "annotations")
    return given, inner


def test_a_download_folder_nested_in_a_folder_of_its_name_is_read_first(tmp_path):
    given, inner = _nested(tmp_path)
    layout = DatasetLayout.open(given)
    assert layout.roots == (inner, given) and layout.frames_dir("P01_01") == inner / "P01" / "rgb_frames" / "P01_01"


def test_audio_is_advised_in_the_folder_given_even_when_it_is_named_like_the_download_folder(tmp_path):
    """given_root's docstring: "The folder given (--data) rather than EPIC's download folder in it" (README: audio
    goes beside the download). --data DATA/EPIC-KITCHENS holding the script's DATA/EPIC-KITCHENS/EPIC-KITCHENS: the
    advice names DATA/EPIC-KITCHENS/EPIC-KITCHENS/P01/audio, inside the download. Was wrong: given_root skips every
    root named EPIC-KITCHENS and falls back to the download folder where the folder given is itself named
    EPIC-KITCHENS."""
    from leap_cli.media.audio import AudioUnavailable, audio_source

    given, inner = _nested(tmp_path)
    layout = DatasetLayout.open(given)
    with pytest.raises(AudioUnavailable) as e:
        audio_source(layout, "P01_01")
    assert layout.given_root == given
    assert Path(e.value.path) == given / "P01" / "audio" / "P01_01.wav", e.value.path


# -- extract --retry-errors: records of another shape than leap writes ------------------------------------------------

def _retry_test(tmp_path: Path):
    """retry_test over a root where every file placed since is there: hand-object boxes, detections, poses, audio."""
    from leap_cli.extract.runner import retry_test

    root = tmp_path / "ROOT"
    for path in (root / "P01" / "hand-objects" / "P01_01.pkl", root / "object-detections" / "P01" / "P01_01.jsonl",
                 root / "poses" / "P01_01.json", root / "P01" / "audio" / "P01_01.wav"):
        _touch(path)
    return retry_test(DatasetLayout(root, root / "annotations"))


def test_components_of_another_shape_are_not_redone_and_stop_nothing(tmp_path):
    """The scan of the output asks every record, with or without --retry-errors: a component that is no dict, or a
    camera whose data is no dict, is no component made without a file (mutants: ``comps.get(n) or {}`` and
    ``camera.get("data") or {}`` raise AttributeError on them), while the same record as leap writes it is."""
    test = _retry_test(tmp_path)

    def record(**components):
        return {"video_id": "P01_01", "narration_id": "P01_01_0", "components": components}

    assert not test(record(hands="unavailable", objects=None, camera=[]))
    assert not test(record(camera={"status": "ok", "source": "orb-vo:8 frames", "data": ["no poses for this video"]}))
    assert test(record(camera={"status": "ok", "source": "orb-vo:8 frames",
                               "data": {"poses_skipped": "no poses for this video"}}))
    assert test(record(hands={"status": "unavailable", "source": "none", "data": {}}))


@pytest.fixture(scope="module")
def kitchen(tmp_path_factory) -> Path:
    from tests.extract_kitchen import build

    return build(tmp_path_factory.mktemp("kitchen") / "root")


def test_an_unavailable_component_whose_data_is_a_list_does_not_stop_extract(kitchen, tmp_path):
    """retry_test guards each shape it reads (a component that is no dict, a camera's or audio's data that is no
    dict) but _retry, asked first, reads an unavailable component's data as a dict: a done-before record holding
    ``"data": ["..."]`` ends every later ``leap extract`` of the output (with or without --retry-errors) with an
    AttributeError instead of counting it as a record not to redo. Was wrong: extract/runner.py _retry:
    (component.get('data') or {}).get raises AttributeError for an unavailable component whose data is a list."""
    import json

    from leap_cli.extract.runner import ExtractConfig, run_extract

    out = tmp_path / "train.jsonl"
    cfg = ExtractConfig(data=kitchen, split="train", out=out, components=("audio",))
    run_extract(cfg)
    first, *rest = out.read_text().splitlines()
    rec = json.loads(first)
    rec["components"]["audio"] = {"status": "unavailable", "source": "none", "data": ["no audio file"], "text": ""}
    out.write_text("\n".join([json.dumps(rec), *rest]) + "\n")
    assert run_extract(cfg).written == 0


def test_hands_alone_are_named_again_once_labelled_detections_are_placed(kitchen, tmp_path):
    """file_placed redoes objects made from the unlabelled hand-object boxes once labelled detections are placed,
    but not the hands, which name their contacts from the same labelled detections first: with ``--components
    hands`` the knife the right hand holds stays "object" (no namer) after --retry-errors, while a fresh run names
    it "knife" (by object-detections). Redone once: a second rerun has nothing left to redo. Was wrong:
    extract/runner.py file_placed: hands made without labelled detections (contacts unnamed) are not redone once
    object-detections are placed."""
    import shutil

    from leap_cli.extract.runner import ExtractConfig, run_extract
    from leap_cli.io import read_jsonl

    root = tmp_path / "k"
    shutil.copytree(kitchen, root)
    det = root / "object-detections" / "P01" / "P01_01.jsonl"
    det.rename(tmp_path / "det.jsonl")
    out = tmp_path / "train.jsonl"

    def run(**kw):
        return run_extract(ExtractConfig(data=root, split="train", out=out, components=("hands",), **kw))

    def held():
        (rec,) = [r for r in read_jsonl(out) if r["narration_id"] == "P01_01_0"]
        return [(c["object"], c.get("named_by")) for h in rec["components"]["hands"]["data"]["hands"]
                for c in h["contacts"]]

    run()
    assert held() == [("object", None)]
    shutil.copy(tmp_path / "det.jsonl", det)
    run(retry_errors=True)
    assert held() == [("knife", "object-detections")]
    assert run().retryable == 0


def test_colmap_poses_registering_no_frame_of_a_segment_are_tried_once_not_every_run(kitchen, tmp_path):
    """--camera-source colmap without poses: the camera is unavailable ("no camera poses for this video"), redone
    once poses are placed; poses that register no frame of the segments leave it unavailable for another reason,
    which the poses being there does not change: neither counted nor redone again (mutant: any unavailable
    camera redone while poses are there)."""
    import json
    import shutil

    from leap_cli.extract.runner import ExtractConfig, run_extract
    from leap_cli.io import read_jsonl

    root = tmp_path / "k"
    shutil.copytree(kitchen, root)
    out = tmp_path / "train.jsonl"

    def run(**kw):
        return run_extract(ExtractConfig(data=root, split="train", out=out, components=("camera",),
                                         camera_source="colmap", **kw))

    run()
    baseline = run().retryable  # (P01_02's missing video)
    poses = _touch(root / "poses" / "P01_01.json")
    poses.write_text(json.dumps({"camera": {"model": "OPENCV", "width": 192, "height": 144,
                                            "params": [96.0, 96.0, 96.0, 72.0, 0.0, 0.0, 0.0, 0.0]},
                                 "images": {f"frame_{n:010d}.jpg": [1.0, 0.0, 0.0, 0.0, 0.01 * n, 0.0, 0.0]
                                            for n in range(5000, 5010)}, "points": []}))
    assert run().retryable == baseline + 3
    assert run(retry_errors=True).written == baseline + 3
    cams = [r["components"]["camera"] for r in read_jsonl(out) if r["video_id"] == "P01_01"]
    assert {c["status"] for c in cams} == {"unavailable"}
    assert "no camera poses for this video" not in {c["data"].get("reason") for c in cams}, cams
    assert run().retryable == baseline
    assert run(retry_errors=True).written == baseline


# -- build-shards' LayoutOpener: an rgb_frames video's source ---------------------------------------------------------

def test_the_frame_cache_of_a_frames_folder_replaced_since_is_not_copied(tmp_path):
    """An rgb_frames-only video (in the second root): extract's cache entries were claimed for the folder as it was;
    the frames extracted again since (another mtime) make them unusable, so build-shards decodes the new frames
    (mutant: video_stat of the MP4 only, None for a frames folder, so "unknown: usable")."""
    import os

    from leap_cli.extract.cache import FrameCache
    from leap_cli.shards.writer import LayoutOpener, cache_entries_usable

    root, inner = tmp_path / "ROOT", tmp_path / "ROOT" / "EPIC-KITCHENS"
    frames = _touch(inner / "P01" / "rgb_frames" / "P01_01" / "frame_0000000001.jpg").parent
    (root / "P01").mkdir()
    layout = DatasetLayout.open(root, _annotations(tmp_path / "annotations"))
    os.utime(frames, ns=(10**18, 10**18))
    cache = FrameCache(tmp_path / "frame-cache")
    cache.claim("P01_01", layout.source_stat("P01_01"), frames=True)  # (extract)
    opener = LayoutOpener(layout.root, layout.annotations_dir, {}, layout.beside)
    assert not opener.is_mp4("P01_01") and cache_entries_usable(cache, opener, "P01_01")
    os.utime(frames, ns=(10**18 + 10**9,) * 2)
    assert not cache_entries_usable(cache, opener, "P01_01")


def test_build_shards_reads_a_video_held_in_the_second_root_only(kitchen, tmp_path):
    """ROOT holds P01/ of its own (audio, hand-object boxes) and the MP4 is in the download folder beside it (the
    second root): build-shards finds and decodes it, as extract does (mutant: build_split's LayoutOpener made
    without ``beside``: every segment of the video skipped as missing)."""
    import shutil

    from leap_cli.shards.writer import ShardSettings, build_split

    root = tmp_path / "k"
    shutil.copytree(kitchen, root)
    for name in ("EPIC_100_verb_classes.csv", "EPIC_100_noun_classes.csv"):  # build-shards reads the classes
        shutil.copy(Path(__file__).parent / "data" / "epic100" / name, root / "annotations" / name)
    mp4 = root / "EPIC-KITCHENS" / "P01" / "videos" / "P01_01.MP4"
    mp4.parent.mkdir(parents=True)
    (root / "P01" / "videos" / "P01_01.MP4").rename(mp4)
    assert DatasetLayout.open(root).video_path("P01_01") == mp4
    r = build_split(root, "train", workdir=tmp_path, settings=ShardSettings("train", frames=2, short_side=32),
                    out=tmp_path / "shards")
    skipped = {x["narration_id"] for x in r.manifest["skipped"]}
    assert skipped == {"P01_02_0"}, r.manifest["skipped"]
