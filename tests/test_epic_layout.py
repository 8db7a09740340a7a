"""Where DatasetLayout finds each file of a video in EPIC-KITCHENS-100's layouts (README, "Put the data where leap
looks"): tiny fake data set roots, empty files where only the path matters."""

import os
from pathlib import Path

import pytest

from leap_cli.epic.layout import DatasetLayout
from leap_cli.media.video import VideoUnreadable, open_video


def _touch(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _annotations(folder: Path) -> Path:
    """An annotations folder as open() accepts it (one EPIC_100_*.csv)."""
    _touch(folder / "EPIC_100_train.csv", "narration_id\n")
    return folder


def _layout(root: Path) -> DatasetLayout:
    return DatasetLayout(root, root / "annotations")


def test_video_path_takes_either_suffix_and_never_another_videos_file(tmp_path):
    videos = tmp_path / "P01" / "videos"
    upper, lower = _touch(videos / "P01_10.MP4"), _touch(videos / "P01_101.mp4")
    (videos / "P01_02.MP4").mkdir()  # a folder of that name is not a video
    layout = _layout(tmp_path)
    assert layout.video_path("P01_10") == upper
    assert layout.video_path("P01_101") == lower
    assert layout.video_path("P01_1") is None and layout.video_path("P01_02") is None
    assert layout.video_path("P02_10") is None  # another participant's folder
    both = _touch(videos / "P01_03.MP4"), _touch(videos / "P01_03.mp4")
    assert layout.video_path("P01_03") == both[0]  # EPIC's own suffix first


def test_frames_dir_is_the_videos_folder_and_not_a_file_of_that_name(tmp_path):
    frames = tmp_path / "P01" / "rgb_frames"
    (frames / "P01_10").mkdir(parents=True)
    (frames / "P01_101").mkdir()
    _touch(frames / "P01_11")  # a file where the folder should be (an extension-less tar, a stray download)
    layout = _layout(tmp_path)
    assert layout.frames_dir("P01_10") == frames / "P01_10"
    assert layout.frames_dir("P01_101") == frames / "P01_101"
    assert layout.frames_dir("P01_11") is None and layout.frames_dir("P01_1") is None


def test_source_stat_is_the_mp4_else_the_frames_folder(tmp_path):
    mp4 = _touch(tmp_path / "P01" / "videos" / "P01_10.MP4", "12345")
    frames = tmp_path / "P01" / "rgb_frames" / "P01_10"
    frames.mkdir(parents=True)
    os.utime(mp4, ns=(1_000_000_000, 1_000_000_000))
    os.utime(frames, ns=(2_000_000_000, 2_000_000_000))
    layout = _layout(tmp_path)
    assert layout.source_stat("P01_10") == [5, 1_000_000_000]
    mp4.unlink()
    os.utime(frames, ns=(2_000_000_000, 2_000_000_000))
    assert layout.source_stat("P01_10") == [frames.stat().st_size, 2_000_000_000]
    frames.rmdir()
    assert layout.source_stat("P01_10") is None


def test_broken_links_names_the_videos_dangling_links_only(tmp_path):
    part = tmp_path / "P01"
    (part / "videos").mkdir(parents=True)
    (part / "rgb_frames").mkdir()
    gone = tmp_path / "unmounted"
    (part / "videos" / "P01_10.MP4").symlink_to(gone / "P01_10.MP4")
    (part / "rgb_frames" / "P01_10").symlink_to(gone / "P01_10", target_is_directory=True)
    (part / "videos" / "P01_101.mp4").symlink_to(gone / "P01_101.mp4")
    layout = _layout(tmp_path)
    assert layout.broken_links("P01_10") == [part / "videos" / "P01_10.MP4", part / "rgb_frames" / "P01_10"]
    assert layout.broken_links("P01_101") == [part / "videos" / "P01_101.mp4"]
    assert layout.video_path("P01_10") is None and layout.frames_dir("P01_10") is None
    # links that resolve, and a video with nothing at all: none
    real = _touch(tmp_path / "store" / "P01_11.MP4")
    (part / "videos" / "P01_11.MP4").symlink_to(real)
    (part / "rgb_frames" / "P01_11").symlink_to(real.parent, target_is_directory=True)
    assert layout.broken_links("P01_11") == [] and layout.broken_links("P01_12") == []
    assert layout.video_path("P01_11") == part / "videos" / "P01_11.MP4"  # the link, followed


def test_frames_tar_only_while_no_frames_folder_was_extracted(tmp_path):
    frames = tmp_path / "P01" / "rgb_frames"
    tar = _touch(frames / "P01_10.tar")
    _touch(frames / "P01_101.tar")
    layout = _layout(tmp_path)
    assert layout.frames_tar("P01_10") == tar
    assert layout.frames_tar("P01_1") is None
    (frames / "P01_10").mkdir()  # the untar command's mkdir, its tar not extracted yet: still the tar
    assert layout.frames_tar("P01_10") == tar and layout.frames_dir("P01_10") == frames / "P01_10"
    with pytest.raises(VideoUnreadable, match="not extracted from their tar"):  # (was: "holds no frame_*.jpg")
        open_video(layout, "P01_10", 50.0)
    _touch(frames / "P01_10" / "frame_0000000001.jpg")
    assert layout.frames_tar("P01_10") is None
    assert layout.frames_tar("P01_101") == frames / "P01_101.tar"


def test_an_empty_frames_folder_never_hides_a_full_one_in_the_other_root(tmp_path):
    """Was wrong: an empty ``rgb_frames/VIDEO/`` in the first root (a mkdir before an untar) was the video's frames
    folder, and the full one in EPIC's download folder was never read: every segment "holds no frame_*.jpg"."""
    dl = tmp_path / "dl"
    _annotations(dl / "annotations")
    empty = dl / "P01" / "rgb_frames" / "P01_10"
    empty.mkdir(parents=True)
    full = _touch(dl / "EPIC-KITCHENS" / "P01" / "rgb_frames" / "P01_10" / "frame_0000000001.jpg").parent
    layout = DatasetLayout.open(dl)
    assert layout.roots[0] == dl and layout.frames_dir("P01_10") == full
    _touch(dl / "EPIC-KITCHENS" / "P01" / "rgb_frames" / "P01_11" / "notes.txt")  # both without frames: the first
    (dl / "P01" / "rgb_frames" / "P01_11").mkdir()
    assert layout.frames_dir("P01_11") == dl / "P01" / "rgb_frames" / "P01_11"


def test_hand_objects_path_prefers_the_download_scripts_folder(tmp_path):
    own = tmp_path / "P01" / "hand-objects"  # where EPIC's download script saves them
    url = tmp_path / "hand-objects" / "P01"  # the layout of its download URLs
    layout = _layout(tmp_path)
    _touch(url / "P01_10.pkl")
    _touch(own / "P01_101.pkl")
    assert layout.hand_objects_path("P01_10") == url / "P01_10.pkl"
    assert layout.hand_objects_path("P01_101") == own / "P01_101.pkl"
    assert layout.hand_objects_path("P01_1") is None
    _touch(own / "P01_10.jsonl")  # the folder decides before the suffix does
    assert layout.hand_objects_path("P01_10") == own / "P01_10.jsonl"
    _touch(own / "P01_10.pkl")  # and in one folder, the pickle as published first
    assert layout.hand_objects_path("P01_10") == own / "P01_10.pkl"
    _touch(url / "P01_11.jsonl")
    assert layout.hand_objects_path("P01_11") == url / "P01_11.jsonl"


def test_the_folder_given_to_epics_download_script_is_read_through(tmp_path):
    dl = tmp_path / "dl"
    mp4 = _touch(dl / "EPIC-KITCHENS" / "P01" / "videos" / "P01_10.MP4")
    ann = _annotations(dl / "annotations")
    (dl / "notes").mkdir()  # a folder that is no participant's, and a file named like one
    _touch(dl / "P02")
    layout = DatasetLayout.open(dl)
    assert layout.root == dl / "EPIC-KITCHENS" and layout.annotations_dir == ann
    assert layout.video_path("P01_10") == mp4
    # the download folder given itself: the same root
    assert DatasetLayout.open(dl / "EPIC-KITCHENS", ann).root == dl / "EPIC-KITCHENS"
    # participant folders of its own beside the download (an audio folder, README's tree): both are read, the
    # folder given first, as leap read it alone before (was: the folder given only, every downloaded video
    # reported missing)
    audio = _touch(dl / "P01" / "audio" / "P01_10.wav")
    _touch(dl / "EPIC-KITCHENS" / "P01" / "audio" / "P01_11.wav")
    poses = _touch(dl / "poses" / "P01_10.json")
    layout = DatasetLayout.open(dl)
    assert layout.roots == (dl, dl / "EPIC-KITCHENS")
    assert layout.video_path("P01_10") == mp4 and layout.audio_path("P01_10") == audio
    assert layout.audio_path("P01_11") == dl / "EPIC-KITCHENS" / "P01" / "audio" / "P01_11.wav"
    assert layout.poses_path("P01_10") == poses and layout.poses_path("P01_11") is None
    colmap = _touch(dl / "EPIC-KITCHENS" / "poses" / "P01_10" / "images.txt")  # EPIC Fields' JSON first, anywhere
    assert layout.poses_path("P01_10") == poses != colmap
    own = _touch(dl / "P01" / "videos" / "P01_10.MP4")  # in both: the folder given's, which leap read before
    assert layout.video_path("P01_10") == own != mp4
    tar = _touch(dl / "EPIC-KITCHENS" / "P01" / "rgb_frames" / "P01_13.tar")  # found, extracted where it is
    assert layout.frames_tar("P01_13") == tar and layout.frames_dir("P01_13") is None
    assert f"-C {dl / 'EPIC-KITCHENS' / 'P01' / 'rgb_frames' / 'P01_13'}" in layout.untar_command("P01_13")
    frames = _touch(dl / "EPIC-KITCHENS" / "P01" / "rgb_frames" / "P01_13" / "frame_0000000001.jpg").parent
    assert layout.frames_dir("P01_13") == frames and layout.frames_tar("P01_13") is None
    assert layout.frame_path("P01_13", 7) == frames / "frame_0000000007.jpg"
    assert layout.looked_for("P01_12") == (
        f"{dl / 'P01' / 'videos' / 'P01_12.MP4'} and {dl / 'P01' / 'rgb_frames' / 'P01_12'}/ and "
        f"{dl / 'EPIC-KITCHENS' / 'P01' / 'videos' / 'P01_12.MP4'} and "
        f"{dl / 'EPIC-KITCHENS' / 'P01' / 'rgb_frames' / 'P01_12'}/")


def test_which_annotations_folder_is_taken(tmp_path):
    dl = tmp_path / "dl"
    (dl / "EPIC-KITCHENS" / "P01").mkdir(parents=True)
    inner = _annotations(dl / "EPIC-KITCHENS" / "annotations")
    assert DatasetLayout.open(dl).annotations_dir == inner  # beside the participant folders
    outer = _annotations(dl / "annotations")
    assert DatasetLayout.open(dl).annotations_dir == outer  # in the folder given, first
    given = _annotations(tmp_path / "epic-kitchens-100-annotations")
    assert DatasetLayout.open(dl, given).annotations_dir == given  # --annotations over both
    assert DatasetLayout.open(dl, str(given)).annotations_dir == given


def test_annotations_are_loaded_once_from_the_annotations_folder(tmp_path, epic_dir):
    (tmp_path / "P01").mkdir()
    layout = DatasetLayout.open(tmp_path, epic_dir)
    first = layout.annotations()
    assert first.folder == epic_dir and layout.annotations() is first
    assert first.segments("val") is layout.annotations().segments("val")
