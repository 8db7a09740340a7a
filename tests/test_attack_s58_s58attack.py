"""Session 58's changes attacked (s58attack): the two dataset roots (ROOT/EPIC-KITCHENS, then ROOT), extract
--retry-errors for hand-object boxes, detections and poses placed later, and the settings messages ("{N settings}",
the descriptors a programs file was made from).

Checked by hand, not here (a subprocess importing torch costs ~5 s): under "file_system" sharing, DataLoader workers
killed with SIGKILL leave no pymp-* folder in TMPDIR, and torch's torch-shm-dir-* go a moment after the exit."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from leap_cli.epic.layout import DatasetLayout
from leap_cli.errors import LeapError
from leap_cli.extract.runner import ExtractConfig, run_extract
from leap_cli.io import read_jsonl, settings_changes
from tests.extract_kitchen import build
from tests.test_programs_generate import narration_record, workdir  # noqa: F401  (workdir: a fixture)

EPIC = Path(__file__).parent / "data" / "epic100"  # an excerpt of EPIC's annotation CSVs


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# -- two roots: a video held in both -------------------------------------------------------------------------------

@pytest.mark.parametrize("copy", ["partial", "identical"])
def test_a_video_in_both_roots_is_the_one_read_before_the_change(tmp_path, copy):
    """Was wrong: ROOT/P01/videos/P01_01.MP4 is what leap read before this session (ROOT held participant folders, so
    ROOT/EPIC-KITCHENS was not looked in), and extract's frame cache recorded its [size, mtime]. The download
    folder beside it holds P01_01.MP4 too: an interrupted download (partial) or the copy the user flattened out
    of it with cp -r (identical bytes, its own mtime). A rerun must read the same file and resume: the partial
    file gave a truncated video, and either copy made every cache entry of the video unusable (build-shards
    decoded all again, and skip records were retried), for the same data at the same paths."""
    from leap_cli.extract.cache import FrameCache
    from leap_cli.shards.writer import LayoutOpener, cache_entries_usable

    root = tmp_path / "ROOT"
    body = bytes(range(256)) * 40
    mine = _write(root / "P01" / "videos" / "P01_01.MP4", body)
    stale = _write(root / "EPIC-KITCHENS" / "P01" / "videos" / "P01_01.MP4",
                   body[:1000] if copy == "partial" else body)
    os.utime(stale, ns=(mine.stat().st_mtime_ns + 10**9,) * 2)
    layout = DatasetLayout.open(root, EPIC)
    cache = FrameCache(tmp_path / "frame-cache")
    cache.claim("P01_01", [mine.stat().st_size, mine.stat().st_mtime_ns])  # (extract, before the change)
    opener = LayoutOpener(layout.root, layout.annotations_dir, {}, layout.beside)
    assert layout.video_path("P01_01") == mine
    assert cache_entries_usable(cache, opener, "P01_01")


def test_a_download_only_root_reads_what_it_read_before_and_the_poses_beside_it(tmp_path):
    """ROOT holds no participant folder of its own (the download folder only, as before the change): the video
    and its frame cache are the download folder's, as before; poses, detections and hand-object boxes placed in
    ROOT are found too."""
    from leap_cli.extract.cache import FrameCache
    from leap_cli.shards.writer import LayoutOpener, cache_entries_usable

    root = tmp_path / "ROOT"
    mp4 = _write(root / "EPIC-KITCHENS" / "P01" / "videos" / "P01_01.MP4", b"\0" * 4096)
    poses = _write(root / "poses" / "P01_01.json", b"{}")
    det = _write(root / "object-detections" / "P01" / "P01_01.jsonl", b"")
    hands = _write(root / "hand-objects" / "P01" / "P01_01.pkl", b"")
    layout = DatasetLayout.open(root, EPIC)
    cache = FrameCache(tmp_path / "frame-cache")
    cache.claim("P01_01", [mp4.stat().st_size, mp4.stat().st_mtime_ns])
    opener = LayoutOpener(layout.root, layout.annotations_dir, {}, layout.beside)
    assert layout.video_path("P01_01") == mp4 and cache_entries_usable(cache, opener, "P01_01")
    assert (layout.poses_path("P01_01"), layout.object_detections_path("P01_01"),
            layout.hand_objects_path("P01_01")) == (poses, det, hands)
    # (a video in neither: every place looked is named, the download folder's first)
    said = layout.looked_for("P01_09")
    assert said.index(str(root / "EPIC-KITCHENS" / "P01" / "videos")) < said.index(str(root / "P01" / "videos"))


# -- extract --retry-errors: files placed since, and files that change nothing -------------------------------------

@pytest.fixture(scope="module")
def kitchen(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("kitchen") / "root")


def _poses(path: Path, frames: range) -> None:
    """EPIC Fields' per-video JSON (a still camera) registering ``frames``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"camera": {"model": "OPENCV", "width": 192, "height": 144,
                                           "params": [96.0, 96.0, 96.0, 72.0, 0.0, 0.0, 0.0, 0.0]},
                                "images": {f"frame_{n:010d}.jpg": [1.0, 0.0, 0.0, 0.0, 0.01 * n, 0.0, 0.0]
                                           for n in frames}, "points": []}))


def test_poses_that_register_no_frame_of_a_segment_are_tried_once_not_every_run(kitchen, tmp_path):
    """Poses placed since, but registering only frames past the video's segments: --retry-errors redoes the
    camera once (it was made for want of poses), and then neither counts nor redoes it again (the odometry stands,
    the poses tried: no file is at fault)."""
    root = tmp_path / "k"
    shutil.copytree(kitchen, root)
    out = tmp_path / "train.jsonl"

    def run(**kw):
        return run_extract(ExtractConfig(data=root, split="train", out=out, components=("camera",), **kw))

    run()
    baseline = run().retryable  # (P01_02's missing video)
    _poses(root / "poses" / "P01_01.json", range(5000, 5010))
    assert run().retryable == baseline + 3
    assert run(retry_errors=True).written == baseline + 3
    cams = [r["components"]["camera"] for r in read_jsonl(out) if r["video_id"] == "P01_01"]
    assert all(c["status"] == "ok" and c["data"].get("poses_skipped") != "no poses for this video"
               for c in cams), cams
    assert run().retryable == baseline
    assert run(retry_errors=True).written == baseline


def test_camera_by_odometry_alone_is_not_redone_for_poses_placed_since(kitchen, tmp_path):
    """--camera-source vo reads no poses: poses placed since change none of its records, so a rerun counts none
    of them and --retry-errors redoes none."""
    root = tmp_path / "k"
    shutil.copytree(kitchen, root)
    out = tmp_path / "train.jsonl"

    def run(**kw):
        return run_extract(ExtractConfig(data=root, split="train", out=out, components=("camera",),
                                         camera_source="vo", **kw))

    run()
    baseline = run().retryable
    _poses(root / "poses" / "P01_01.json", range(1, 301))
    assert run().retryable == baseline
    assert run(retry_errors=True).written == baseline


def test_hand_object_boxes_placed_in_root_beside_the_download_are_redone_from(kitchen, tmp_path):
    """The download folder holds the videos (ROOT/EPIC-KITCHENS/P01/...), ROOT holds the annotations and, placed
    after a first extract, the hand-object boxes: a rerun counts P01_01's hands, --retry-errors redoes them from
    the boxes in ROOT, and then they are done."""
    root = tmp_path / "ROOT"
    shutil.copytree(kitchen / "P01", root / "EPIC-KITCHENS" / "P01")
    shutil.copytree(kitchen / "annotations", root / "annotations")
    out = tmp_path / "train.jsonl"

    def run(**kw):
        return run_extract(ExtractConfig(data=root, split="train", out=out, components=("hands",), **kw))

    run()
    hands = {r["narration_id"]: r["components"]["hands"] for r in read_jsonl(out)}
    assert hands["P01_01_0"]["source"] == "none", hands["P01_01_0"]
    baseline = run().retryable
    shutil.copytree(kitchen / "hand-objects", root / "hand-objects")
    assert run().retryable == baseline + 3
    assert run(retry_errors=True).written == baseline + 3
    hands = {r["narration_id"]: r["components"]["hands"] for r in read_jsonl(out)}
    assert hands["P01_01_0"]["status"] == "ok" and hands["P01_01_0"]["source"].startswith("hand-objects:")
    assert run().retryable == baseline


# -- messages ------------------------------------------------------------------------------------------------------

def test_a_changed_model_option_is_named_when_a_resume_is_refused():
    """Was wrong: `leap train --resume --set model.options.decoder_dim=128` on the bundled tiny-synthetic config:
    the refusal ("the config differs from the checkpoint's (...)") said "model.options: {4 settings} -> {4
    settings}" (before: both dicts in full), leaving the user to guess which option made the difference."""
    from leap_cli.resources import bundled_config
    from leap_cli.train.config import load_config

    path = bundled_config("tiny-synthetic")
    old = load_config(path, []).to_dict()
    new = load_config(path, ["model.options.decoder_dim=128"]).to_dict()
    (line,) = settings_changes(old, new)
    assert "decoder_dim" in line and "128" in line, line


def test_a_long_settings_dict_against_a_word_is_its_count_and_short_values_stay_whole():
    changes = settings_changes({"descriptors": {f"k{i}": "v" * 10 for i in range(6)}, "lr": 0.1},
                               {"descriptors": "narration-only", "lr": 0.2})
    assert changes == ["descriptors: {6 settings} -> 'narration-only'", "lr: 0.1 -> 0.2"]
    assert settings_changes({"a": {"x": 1}}, {"a": "w"}) == ["a: {'x': 1} -> 'w'"]  # (short: shown whole)


def test_programs_made_from_descriptors_that_are_gone_say_so(workdir):  # noqa: F811
    """Was wrong: generate-programs made from WORKDIR/descriptors/val.jsonl, then run again after that file was
    moved (or without the --descriptors FILE of the first run): the input is narration-only now. The refusal's fix said the
    descriptors were extracted again and that --force makes the programs anew from them: --force would make them
    from the narrations alone, over programs made from the descriptors (paid, with an LLM)."""
    from leap_cli.epic.annotations import read_segments
    from leap_cli.io import settings_path
    from leap_cli.programs.generate import GenerateConfig, generate_programs

    desc = workdir / "descriptors" / "val.jsonl"
    desc.parent.mkdir(parents=True)
    segs = read_segments(workdir / "kitchen" / "annotations" / "EPIC_100_validation.csv")
    desc.write_text("".join(json.dumps(narration_record(s)) + "\n" for s in segs))
    settings_path(desc).write_text(json.dumps({"components": ["narration", "audio", "camera", "objects", "hands"],
                                               "hand_threshold": 0.5, "object_threshold": 0.5, "camera_frames": 9,
                                               "camera_source": "auto", "fov_deg": 90.0, "split": "val"}))
    generate_programs(GenerateConfig(workdir=workdir, split="val", limit=2))
    desc.rename(workdir / "moved.jsonl")
    settings_path(desc).unlink()
    with pytest.raises(LeapError) as e:
        generate_programs(GenerateConfig(workdir=workdir, split="val"))
    assert "{6 settings} -> 'narration-only'" in e.value.message, e.value.message
    assert "extracted again" not in e.value.fix, e.value.fix
