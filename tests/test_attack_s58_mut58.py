"""Session 58 mutation run (mut58) over the two dataset roots (epic/layout.py), extract --retry-errors for files
placed since (extract/runner.py retry_test), demo's --segments advice, settings_changes' "{N settings}" (io._brief),
generate-programs' descriptors messages, submit's meta.tau_a and the messages naming both roots: each test here
kills a mutant the suite let live (flipped order, dropped root, dropped condition)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from leap_cli.epic.layout import DatasetLayout
from tests.test_epic_layout import _annotations, _touch
from tests.test_eval_submit import ann_dir  # noqa: F401  (a fixture)
from tests.test_programs_generate import workdir  # noqa: F401  (a fixture)


def _two_roots(tmp_path: Path, own: bool) -> tuple[Path, Path, Path]:
    """ROOT with the download folder ROOT/EPIC-KITCHENS/P01; ``own``: ROOT holds P01/ too (ROOT read first)."""
    root, inner = tmp_path / "ROOT", tmp_path / "ROOT" / "EPIC-KITCHENS"
    (inner / "P01").mkdir(parents=True)
    if own:
        (root / "P01").mkdir()
    _annotations(root / "annotations")
    return root, inner, root / "annotations"


# -- _roots / _participant_folder -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["P0101", "Pab", "A01", "P1"])
def test_a_folder_not_named_like_a_participant_leaves_the_download_folder_first(tmp_path, name):
    """Only P + two digits is a participant's folder (P01 .. P37): ROOT/P0101, ROOT/Pab, ROOT/A01 do not make ROOT
    the first root (mutants: any length >= 3, isalnum, no P)."""
    root, inner, _ = _two_roots(tmp_path, own=False)
    (root / name).mkdir()
    assert DatasetLayout.open(root).roots == (inner, root)


def test_a_file_named_like_the_download_folder_is_no_root(tmp_path):
    """ROOT/EPIC-KITCHENS a file (a stray download): ROOT is the one root (mutant: exists() for is_dir())."""
    root = tmp_path / "ROOT"
    _annotations(root / "annotations")
    _touch(root / "EPIC-KITCHENS")
    layout = DatasetLayout.open(root)
    assert layout.roots == (root,) and layout.root == root


def test_an_empty_annotations_folder_keeps_both_roots(tmp_path):
    """ROOT/annotations made but empty, no clone of EPIC's CSVs anywhere: open() still gives both roots (mutant:
    that return dropped ``beside``, and the audio beside the download went unseen)."""
    root, inner = tmp_path / "ROOT", tmp_path / "ROOT" / "EPIC-KITCHENS"
    mp4 = _touch(inner / "P01" / "videos" / "P01_01.MP4")
    (root / "annotations").mkdir()
    wav = _touch(root / "P01" / "audio" / "P01_01.wav")
    layout = DatasetLayout.open(root)
    assert layout.roots == (root, inner)
    assert layout.video_path("P01_01") == mp4 and layout.audio_path("P01_01") == wav


# -- each file looked up in both roots, in the order of the roots ----------------------------------------------------

def test_the_first_root_decides_before_the_suffix(tmp_path):
    """P01_01.mp4 in the first root, P01_01.MP4 in the second: the first root's (mutant: suffix-major order read
    the other folder's file); likewise audio: .flac in the first root before .wav in the second."""
    root, inner, _ = _two_roots(tmp_path, own=True)
    mine = _touch(root / "P01" / "videos" / "P01_01.mp4")
    _touch(inner / "P01" / "videos" / "P01_01.MP4")
    flac = _touch(root / "P01" / "audio" / "P01_01.flac")
    _touch(inner / "P01" / "audio" / "P01_01.wav")
    layout = DatasetLayout.open(root)
    assert layout.video_path("P01_01") == mine and layout.audio_path("P01_01") == flac


def test_a_dangling_link_in_the_second_root_is_named(tmp_path):
    root, inner, _ = _two_roots(tmp_path, own=True)
    link = inner / "P01" / "videos" / "P01_01.MP4"
    link.parent.mkdir(parents=True)
    link.symlink_to(tmp_path / "unmounted" / "P01_01.MP4")
    assert DatasetLayout.open(root).broken_links("P01_01") == [link]


def test_a_folder_named_like_the_frames_tar_is_no_tar(tmp_path):
    root = tmp_path / "ROOT"
    (root / "P01" / "rgb_frames" / "P01_01.tar").mkdir(parents=True)
    assert DatasetLayout(root, root / "annotations").frames_tar("P01_01") is None


def test_with_no_frames_anywhere_the_first_roots_folder_is_named(tmp_path):
    """No tar, no frames folder: untar_command and frame_path name the first root's rgb_frames folder (mutants:
    the last root's)."""
    root, inner, _ = _two_roots(tmp_path, own=False)
    layout = DatasetLayout.open(root)
    frames = inner / "P01" / "rgb_frames" / "P01_01"
    assert layout.untar_command("P01_01").endswith(f"-C {frames}")
    assert layout.frame_path("P01_01", 3) == frames / "frame_0000000003.jpg"


def test_colmap_poses_in_sparse_0_and_in_the_second_root_are_found(tmp_path):
    """COLMAP's mapper writes poses/VIDEO/sparse/0/images.txt (the docstring, README): found, in either root; EPIC
    Fields' JSON of the second root before the first root's COLMAP (mutants: no sparse/0, COLMAP of the first root
    only, root-major order)."""
    root, inner, _ = _two_roots(tmp_path, own=True)
    layout = DatasetLayout.open(root)
    sparse = _touch(root / "poses" / "P01_01" / "sparse" / "0" / "images.txt")
    assert layout.poses_path("P01_01") == sparse
    second = _touch(inner / "poses" / "P01_02" / "images.bin")
    assert layout.poses_path("P01_02") == second
    fields = _touch(inner / "poses" / "P01_01.json")
    assert layout.poses_path("P01_01") == fields


# -- extract --retry-errors: retry_test over hand-made records -------------------------------------------------------

def _retry(tmp_path: Path, *placed: str):
    """retry_test over ROOT (a P01 folder of its own) with the files ``placed``: hands, detections, poses."""
    from leap_cli.extract.runner import retry_test

    root = tmp_path / "ROOT"
    (root / "P01").mkdir(parents=True, exist_ok=True)
    files = {"hands": root / "hand-objects" / "P01" / "P01_01.pkl",
             "detections": root / "object-detections" / "P01" / "P01_01.jsonl", "poses": root / "poses" / "P01_01.json"}
    for name in placed:
        _touch(files[name])
    return retry_test(DatasetLayout(root, root / "annotations"))


def _record(**components) -> dict:
    return {"video_id": "P01_01", "narration_id": "P01_01_0", "components": components}


NONE = {"status": "unavailable", "source": "none", "data": {}}


def test_objects_without_any_detection_file_are_redone_for_either_file_placed(tmp_path):
    """Objects made without detections: redone once labelled detections or hand-object boxes are placed (mutants:
    only one of the two counted), and the hands' lookup of a missing file does not answer for the detections
    (mutant: the cache keyed by video only)."""
    assert _retry(tmp_path / "a", "hands")(_record(objects=NONE))
    assert _retry(tmp_path / "b", "detections")(_record(objects=NONE))
    assert _retry(tmp_path / "c", "detections")(_record(hands=NONE, objects=NONE))
    assert not _retry(tmp_path / "d")(_record(hands=NONE, objects=NONE))


def test_components_made_from_a_file_with_no_frame_in_the_segment_are_not_redone(tmp_path):
    """Hands or objects unavailable from a file that was there (no detection frames inside the segment): the
    files being there changes nothing, a rerun must not redo them every time (mutants: the source "none" check
    dropped)."""
    test = _retry(tmp_path, "hands", "detections")
    hands = {"status": "unavailable", "source": "hand-objects:P01_01.pkl",
             "data": {"reason": "no detection frames inside the segment"}}
    objects = {"status": "unavailable", "source": "object-detections:P01_01.jsonl",
               "data": {"reason": "no detection frames inside the segment"}}
    assert not test(_record(hands=hands)) and not test(_record(objects=objects))


def test_a_camera_left_without_poses_is_redone_once_poses_are_placed(tmp_path):
    """--camera-source poses and no poses: the camera is unavailable ("no camera poses for this video"), redone
    once they are placed (mutant: only the odometry's poses_skipped counted)."""
    camera = {"status": "unavailable", "source": "none", "data": {"reason": "no camera poses for this video"}}
    assert _retry(tmp_path / "a", "poses")(_record(camera=camera))
    assert not _retry(tmp_path / "b")(_record(camera=camera))


# -- settings_changes: a long dict against a word --------------------------------------------------------------------

def test_a_dict_is_counted_from_81_characters_on_and_one_setting_is_singular():
    from leap_cli.io import settings_changes

    at80, at81 = {"k": "x" * 71}, {"k": "x" * 72}
    assert len(repr(at80)) == 80 and len(repr(at81)) == 81
    assert settings_changes({"d": at80}, {"d": "w"}) == [f"d: {at80!r} -> 'w'"]
    assert settings_changes({"d": "w"}, {"d": at81}) == ["d: 'w' -> {1 setting}"]
    assert settings_changes({"d": None}, {"d": {"a": "x" * 80, "b": 1}}) == ["d: None -> {2 settings}"]
    long = ["narration", "audio", "camera", "objects", "hands", "clip-naming", "detector-weights"] * 2
    assert settings_changes({"c": long}, {"c": "w"}) == [f"c: {long!r} -> 'w'"]  # (a list is shown whole)
    a, b = {"k": "x" * 90}, {"k": "y" * 90}  # (two dicts under "options", compared whole: shown whole)
    assert settings_changes({"options": a}, {"options": b}) == [f"options: {a!r} -> {b!r}"]


# -- demo: the --segments advised ------------------------------------------------------------------------------------

def test_demo_advice_holds_where_more_segments_lose_the_truncated_videos_end(tmp_path):
    """4 videos (2 training, one truncated), batch 6: --segments 3 gives 6, 4 gives 5 (three of the truncated
    video's lie past its end), 5 gives 7. From --segments 2 the advice is "5 or more" (mutants: "3 or more", and
    4 is refused), and its --set data.batch_size is the count it gives."""
    import re

    from leap_cli.demo import DemoConfig, check_demo
    from leap_cli.errors import LeapError

    def check(segments):
        return check_demo(DemoConfig(workdir=tmp_path / "w", videos=4, segments=segments,
                                     train_overrides=["data.batch_size=6"]))

    with pytest.raises(LeapError) as e:
        check(2)
    have = int(re.search(r"give (\d+) training segments", e.value.message).group(1))
    assert have == 4 and f"--set data.batch_size={have}" in e.value.fix, e.value.fix
    advised = int(re.search(r"pass --segments (\d+) or more", e.value.fix).group(1))
    assert advised == 5, e.value.fix
    for n in (advised, advised + 1, advised + 2):
        check(n)


# -- generate-programs: the descriptors' path and the refusals' fixes ------------------------------------------------

def test_the_default_descriptors_path_names_the_split_as_extract_writes_it(tmp_path):
    from leap_cli.programs.generate import GenerateConfig

    assert GenerateConfig(workdir=tmp_path, split="validation").descriptors_path == \
        tmp_path / "descriptors" / "val.jsonl"
    given = tmp_path / "d.jsonl"
    assert GenerateConfig(workdir=tmp_path, split="val", descriptors=given).descriptors_path == given


def _descriptors(workdir: Path, components: list[str]) -> Path:
    import json

    from leap_cli.epic.annotations import read_segments
    from leap_cli.io import settings_path
    from tests.test_programs_generate import narration_record

    desc = workdir / "descriptors" / "val.jsonl"
    desc.parent.mkdir(parents=True, exist_ok=True)
    segs = read_segments(workdir / "kitchen" / "annotations" / "EPIC_100_validation.csv")
    desc.write_text("".join(json.dumps(narration_record(s)) + "\n" for s in segs))
    settings_path(desc).write_text(json.dumps({"components": components, "hand_threshold": 0.5, "split": "val"}))
    return desc


def test_descriptors_refusals_of_the_offline_generator_name_the_file_and_no_payment(workdir):  # noqa: F811
    """The offline generator pays nothing: no "(... unpaid)" in its fix (mutant: the condition flipped); descriptors
    gone since: the fix names the file looked for (mutant: "(no None)")."""
    from leap_cli.errors import LeapError
    from leap_cli.io import settings_path
    from leap_cli.programs.generate import GenerateConfig, generate_programs

    desc = _descriptors(workdir, ["narration", "audio", "camera"])
    generate_programs(GenerateConfig(workdir=workdir, split="val", limit=2))
    _descriptors(workdir, ["narration", "audio"])
    with pytest.raises(LeapError) as e:
        generate_programs(GenerateConfig(workdir=workdir, split="val"))
    assert e.value.fix.startswith("the descriptors were extracted again") and "unpaid" not in e.value.fix, e.value.fix
    desc.unlink()
    settings_path(desc).unlink()
    with pytest.raises(LeapError) as e:
        generate_programs(GenerateConfig(workdir=workdir, split="val"))
    assert f"(no {desc})" in e.value.fix, e.value.fix


# -- submit: meta.tau_a ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tau_a, ok", [("1.0", True), ("2", False), (1.001, False)])
def test_tau_a_is_compared_as_seconds_to_a_millionth(ann_dir, tau_a, ok):  # noqa: F811
    """A tau_a written as a numeric string is its number (mutant: the parsed value dropped, a TypeError), and
    1.001 s is not EPIC's 1 s (mutant: a looser tolerance)."""
    from leap_cli import submit as sub
    from leap_cli.epic.annotations import Annotations
    from leap_cli.errors import LeapError
    from tests.test_eval_submit import _test_scores

    scores = dict(_test_scores(), meta={"task": "anticipation", "tau_a": tau_a})
    if ok:
        sub.check_submittable(scores, Annotations(ann_dir), "anticipation")
    else:
        with pytest.raises(LeapError, match=f"end {float(tau_a):g} s before each action"):
            sub.check_submittable(scores, Annotations(ann_dir), "anticipation")


def test_recognition_scores_are_not_held_to_their_meta_tau_a(ann_dir):  # noqa: F811
    from leap_cli import submit as sub
    from leap_cli.epic.annotations import Annotations
    from tests.test_eval_submit import _test_scores

    scores = dict(_test_scores(), meta={"task": "recognition", "tau_a": "n/a"})
    sub.check_submittable(scores, Annotations(ann_dir), "recognition")


# -- leap info: the missing videos named ----------------------------------------------------------------------------

def test_info_names_where_the_first_missing_video_was_looked_for_and_a_folder_in_the_download(
        tmp_path, monkeypatch, capsys):
    """ROOT holds P01/ of its own (audio), the download folder a folder named like a missing video's MP4: `leap
    info` says where the first missing video was looked for (mutant: the last's) and names that folder (mutant:
    only the first root's videos folder checked)."""
    import re
    import shutil

    from tests.procs import leap_main
    from tests.test_attack_s58_journey import EPIC

    root = tmp_path / "ROOT"
    shutil.copytree(EPIC, root / "annotations")
    _touch(root / "P01" / "audio" / "P01_01.wav")
    folder = root / "EPIC-KITCHENS" / "P01" / "videos" / "P01_01.MP4"  # (P01_01: a training video)
    folder.mkdir(parents=True)
    code, out, err = leap_main(monkeypatch, capsys, "info", "--data", str(root), "--no-check-lengths")
    assert code == 0, out + err
    at = out.index("val: 3 videos with neither MP4 nor rgb_frames: ")  # (val: 3 videos, train 1)
    val_first = re.match(r"val: 3 videos with neither MP4 nor rgb_frames: (\w+)", out[at:]).group(1)
    looked = out[at:].split("looked for", 1)[1].split("\n", 1)[0]
    assert looked.startswith(f" {root / val_first.split('_')[0] / 'videos' / val_first}.MP4 and"), (val_first, looked)
    assert f"{folder} is a folder, not a video file" in out.replace("\n", ""), out


# -- audio: where its file is advised and looked for -----------------------------------------------------------------

def _no_audio(layout: DatasetLayout, video_id: str):
    from leap_cli.media.audio import AudioUnavailable, audio_source

    with pytest.raises(AudioUnavailable) as e:
        audio_source(layout, video_id)
    return e.value


def test_audio_of_a_frames_only_video_is_advised_in_the_folder_given(tmp_path):
    """A download-only ROOT (the script's folder read first): the audio is advised in ROOT/P01/audio, beside the
    download (README's tree; mutant: inside the download folder)."""
    root, inner, _ = _two_roots(tmp_path, own=False)
    (inner / "P01" / "rgb_frames" / "P01_01").mkdir(parents=True)
    e = _no_audio(DatasetLayout.open(root), "P01_01")
    assert Path(e.path) == root / "P01" / "audio" / "P01_01.wav", e.path


def test_audio_is_advised_in_the_folder_given_also_where_it_holds_participant_folders(tmp_path):
    """Was wrong: the advice took the last folder looked in, the download folder where ROOT comes first."""
    root, inner, _ = _two_roots(tmp_path, own=True)
    (root / "P01" / "rgb_frames" / "P01_01").mkdir(parents=True)
    e = _no_audio(DatasetLayout.open(root), "P01_01")
    assert Path(e.path) == root / "P01" / "audio" / "P01_01.wav", e.path


def test_no_audio_and_no_video_names_every_folder_looked_in(tmp_path):
    root, inner, _ = _two_roots(tmp_path, own=True)
    e = _no_audio(DatasetLayout.open(root), "P01_01")
    for folder in ("audio", "videos"):
        assert f"{root / 'P01' / folder} and {inner / 'P01' / folder}" in e.fix, e.fix


def test_a_missing_video_names_the_first_roots_mp4_and_every_place_looked(tmp_path):
    from leap_cli.media.video import VideoUnreadable, open_video

    root, inner, _ = _two_roots(tmp_path, own=False)
    layout = DatasetLayout.open(root)
    with pytest.raises(VideoUnreadable) as e:
        open_video(layout, "P01_01")
    assert Path(e.value.path) == inner / "P01" / "videos" / "P01_01.MP4", e.value.path
    assert f"looked for {layout.looked_for('P01_01')}:" in e.value.fix and str(root / "P01" / "rgb_frames") in e.value.fix


def test_the_frame_opener_looks_in_the_second_root_too(tmp_path):
    """build-shards' LayoutOpener (picklable, for the workers) keeps ``beside``: a video in the second root is an
    MP4 and has a stat (mutants: beside dropped)."""
    import pickle

    from leap_cli.shards.writer import LayoutOpener

    root, inner, ann = _two_roots(tmp_path, own=True)
    mp4 = _touch(inner / "P01" / "videos" / "P01_01.MP4", "x" * 7)
    layout = DatasetLayout.open(root)
    opener = pickle.loads(pickle.dumps(LayoutOpener(layout.root, layout.annotations_dir, {}, layout.beside)))
    assert opener.is_mp4("P01_01") and opener.video_stat("P01_01")[0] == mp4.stat().st_size
