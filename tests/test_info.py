"""``leap info`` counts every input a stage reads, camera poses in both formats included."""

import shutil

from typer.testing import CliRunner

from leap_cli.cli import app
from leap_cli.epic.info import dataset_info
from leap_cli.epic.layout import DatasetLayout
from tests.test_shards import make_root


def test_info_counts_epic_fields_and_colmap_poses(tmp_path):
    root = make_root(tmp_path / "k")  # train: P01_01, P01_02; val: P01_03
    poses = root / "poses"
    poses.mkdir()
    (poses / "P01_01.json").write_text('{"camera": {}, "images": {}}')  # EPIC Fields' per-video JSON
    (poses / "P01_02").mkdir()
    (poses / "P01_02" / "images.txt").write_text("# COLMAP\n")
    (poses / "P01_03").mkdir()  # both: the JSON is the one read, so it counts once, as EPIC Fields
    (poses / "P01_03" / "images.txt").write_text("# COLMAP\n")
    (poses / "P01_03.json").write_text('{"camera": {}, "images": {}}')
    splits, _ = dataset_info(DatasetLayout.open(root))
    got = {s.split: (s.with_poses_fields, s.with_poses_colmap) for s in splits}
    assert got == {"train": (1, 1), "val": (1, 0)}
    (poses / "P01_01.json").unlink()
    splits, _ = dataset_info(DatasetLayout.open(root))
    assert {s.split: (s.with_poses_fields, s.with_poses_colmap) for s in splits}["train"] == (0, 1)
    (poses / "P01_02" / "images.txt").rename(poses / "P01_02" / "images.bin")  # COLMAP's default, binary model
    splits, _ = dataset_info(DatasetLayout.open(root))
    assert {s.split: (s.with_poses_fields, s.with_poses_colmap) for s in splits}["train"] == (0, 1)
    res = CliRunner().invoke(app, ["info", "--data", str(root), "--no-check-lengths"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    row = next(line for line in res.output.splitlines() if "camera poses (EPIC Fields JSON)" in line)
    assert [c.strip() for c in row.split("│") if c.strip()][1:] == ["0", "1"]


def test_paths_in_table_titles_are_printed_as_they_are(tmp_path):
    """A folder name with rich markup in it ("[bold]") is printed literally, not eaten as markup."""
    root = make_root(tmp_path / "k[bold]x")
    res = CliRunner().invoke(app, ["info", "--data", str(root), "--no-check-lengths"], env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    assert "k[bold]x" in res.output


def test_length_check_counts_only_the_videos_that_are_there(tmp_path):
    """With no video downloaded yet, info said "all N videos present decode to their video_info duration"."""

    root = make_root(tmp_path / "k", epic=True)  # train: P01_01, P01_02; val: P01_03 (rgb_frames folders)
    res = CliRunner().invoke(app, ["info", "--data", str(root)], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "all 3 videos present decode" in res.output, res.output
    shutil.rmtree(root / "P01" / "rgb_frames" / "P01_03")
    res = CliRunner().invoke(app, ["info", "--data", str(root)], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "all 2 videos present decode" in res.output, res.output
    shutil.rmtree(root / "P01" / "rgb_frames")
    res = CliRunner().invoke(app, ["info", "--data", str(root)], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "no video of these splits is present to check" in res.output, res.output


def test_info_counts_the_audio_track_of_mp4s_without_an_audio_file(tmp_path):
    """EPIC's MP4s carry an AAC track and no WAVs come with them: info said "videos with audio: 0"."""
    import numpy as np
    import soundfile as sf

    from leap_cli.media.write import write_mp4

    root = make_root(tmp_path / "k")  # train: P01_01, P01_02; val: P01_03
    frames = [np.full((32, 48, 3), 90, np.uint8)] * 10
    (root / "P01" / "videos").mkdir()
    write_mp4(root / "P01" / "videos" / "P01_01.MP4", frames, 10.0, audio=np.zeros(16000, np.float32))
    write_mp4(root / "P01" / "videos" / "P01_02.MP4", frames, 10.0)  # no audio track
    (root / "P01" / "audio").mkdir()
    sf.write(root / "P01" / "audio" / "P01_03.wav", np.zeros(16000, np.float32), 16000)
    splits, _ = dataset_info(DatasetLayout.open(root))
    assert {s.split: (s.with_audio_file, s.with_audio_track) for s in splits} == {"train": (0, 1), "val": (1, 0)}
    res = CliRunner().invoke(app, ["info", "--data", str(root), "--no-check-lengths"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    cells = {name: [c.strip() for c in line.split("│") if c.strip()][1:] for line in res.output.splitlines()
             for name in ("audio (WAV/FLAC file)", "audio (MP4's own track only)") if name in line}
    assert cells == {"audio (WAV/FLAC file)": ["0", "1"], "audio (MP4's own track only)": ["1", "0"]}


def test_a_video_missing_from_the_video_info_is_reported_as_the_stages_treat_it(tmp_path):
    """info said such a video "decodes nothing (... no fps: extract assumes 50)"; extract reads an MP4 at its own
    fps (a frames folder has none) and build-shards skips the video's segments with "no timing"."""
    import numpy as np

    from leap_cli.epic.info import check_lengths
    from leap_cli.media.write import write_mp4

    root = make_root(tmp_path / "k", epic=True)  # train: P01_01, P01_02; val: P01_03 (rgb_frames folders)
    (root / "P01" / "videos").mkdir()
    write_mp4(root / "P01" / "videos" / "P01_01.MP4", [np.full((32, 48, 3), 90, np.uint8)] * 10, 10.0)
    info = root / "annotations" / "EPIC_100_video_info.csv"
    info.write_text("".join(line for line in info.read_text().splitlines(keepends=True)
                            if not line.startswith(("P01_01,", "P01_03,"))))
    mp4, frames = check_lengths(DatasetLayout.open(root), ["P01_01", "P01_03"])
    assert (mp4.source, mp4.expected_s, mp4.decoded_s) == ("mp4", None, None)
    assert "extract reads the MP4 at its own fps" in mp4.note and "build-shards skips its segments (no timing)" in mp4.note
    assert frames.source == "rgb_frames" and "extract reports its frames unavailable" in frames.note
    res = CliRunner().invoke(app, ["info", "--data", str(root)], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    lines = [line.strip() for line in res.output.splitlines() if line.strip().startswith(("P01_01", "P01_03"))]
    assert lines == [f"P01_01 (mp4): {mp4.note}", f"P01_03 (rgb_frames): {frames.note}"]
    assert "assumes 50" not in res.output and "decodes nothing" not in res.output


def test_info_reads_each_split_csv_once(tmp_path, monkeypatch):
    """The table and the length check each opened the annotations anew: every split's CSV was read twice (7 s for
    EPIC's 77k rows)."""
    import leap_cli.epic.annotations as annotations

    root = make_root(tmp_path / "k")
    read = []
    real = annotations.read_segments
    monkeypatch.setattr(annotations, "read_segments", lambda path, **kw: read.append(path.name) or real(path, **kw))
    r = CliRunner().invoke(app, ["info", "--data", str(root)])
    assert r.exit_code == 0, r.output
    assert read and len(read) == len(set(read)), read


def test_hand_objects_are_found_where_epics_download_script_saves_them(tmp_path):
    """epic_downloader.py saves ROOT/P01/hand-objects/P01_01.pkl; only ROOT/hand-objects/P01/ was looked at, so
    info counted 0 and extract said "no hand-object detections for this video"."""
    root = make_root(tmp_path / "k")  # train: P01_01, P01_02; val: P01_03
    downloaded = root / "P01" / "hand-objects" / "P01_01.pkl"
    downloaded.parent.mkdir()
    downloaded.write_bytes(b"")
    (root / "hand-objects" / "P01").mkdir(parents=True)
    (root / "hand-objects" / "P01" / "P01_03.jsonl").write_text("")
    layout = DatasetLayout.open(root)
    assert layout.hand_objects_path("P01_01") == downloaded and layout.hand_objects_path("P01_02") is None
    splits, _ = dataset_info(layout)
    assert {s.split: s.with_hand_objects for s in splits} == {"train": 1, "val": 1}


def test_rgb_frames_folders_a_few_frames_longer_than_the_video_are_not_flagged(tmp_path):
    """EPIC's ``-r 60`` extraction writes 4-18 frames past duration x 60 (EPIC_100_frame_counts.csv: +0.06 to
    +0.31 s on its 698 videos, the two errata aside): info flagged about a third of the real folders."""
    from leap_cli.epic.info import check_lengths

    root = make_root(tmp_path / "k", epic=True)  # 6 s videos: 360 frame files at 60/s each
    frames = {v: root / "P01" / "rgb_frames" / v for v in ("P01_01", "P01_02", "P01_03")}
    for n in range(361, 361 + 18):  # +0.3 s: as EPIC's longest
        (frames["P01_01"] / f"frame_{n:010d}.jpg").write_bytes(b"")
    for n in range(361, 361 + 60):  # +1 s
        (frames["P01_02"] / f"frame_{n:010d}.jpg").write_bytes(b"")
    for n in range(349, 361):  # -0.2 s: shorter than the video
        (frames["P01_03"] / f"frame_{n:010d}.jpg").unlink()
    flagged = check_lengths(DatasetLayout.open(root), list(frames))
    assert [(b.video_id, round(b.decoded_s, 2)) for b in flagged] == [("P01_02", 7.0), ("P01_03", 5.8)]


def test_rgb_frames_left_in_their_tar_are_named_with_the_command_that_extracts_them(tmp_path):
    """epic_downloader.py saves P01/rgb_frames/P01_03.tar: info said "neither MP4 nor rgb_frames" and extract "no
    video file or rgb_frames folder", naming no tar."""
    import subprocess
    import tarfile

    from leap_cli.extract.runner import ExtractConfig, run_extract
    from leap_cli.io import read_jsonl

    root = make_root(tmp_path / "k", epic=True)  # val: P01_03, as a folder of 360 frame files
    folder = root / "P01" / "rgb_frames" / "P01_03"
    with tarfile.open(folder.with_suffix(".tar"), "w") as tar:  # the frames at the top, as EPIC's tars hold them
        tar.add(folder, arcname=".")
    shutil.rmtree(folder)
    folder.mkdir()  # the untar command's mkdir done, its tar not: still a tar (was: a video "with rgb_frames")
    run_extract(ExtractConfig(data=root, split="val", out=tmp_path / "val.jsonl", components=("camera",)))
    data = next(iter(read_jsonl(tmp_path / "val.jsonl")))["components"]["camera"]["data"]
    assert data["reason"] == "rgb_frames not extracted from their tar" and data["cause"] == "video"
    command = DatasetLayout.open(root).untar_command("P01_03")
    assert str(folder.with_suffix(".tar")) in data["detail"] and command in data["detail"]
    res = CliRunner().invoke(app, ["info", "--data", str(root), "--no-check-lengths"], env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    assert "val: 1 video with rgb_frames not extracted from their tar: P01_03" in res.output
    assert command in res.output and "neither" not in res.output
    subprocess.run(command, shell=True, check=True)
    assert DatasetLayout.open(root).frames_dir("P01_03") == folder and len(list(folder.iterdir())) == 360


def test_the_folder_given_to_epics_download_script_is_a_root(tmp_path):
    """epic_downloader.py writes into OUT/EPIC-KITCHENS/P01/...: --data OUT found no annotations, and with
    --annotations every video was missing, without saying where it had looked."""
    out = tmp_path / "out"
    root = make_root(out / "EPIC-KITCHENS")  # train: P01_01, P01_02; val: P01_03
    ann = out / "annotations"
    shutil.move(str(root / "annotations"), str(ann))  # the annotations cloned beside, not inside
    layout = DatasetLayout.open(out)
    assert layout.root == root and layout.annotations_dir == ann and layout.frames_dir("P01_01") is not None
    res = CliRunner().invoke(app, ["info", "--data", str(out), "--no-check-lengths"], env={"COLUMNS": "300"})
    assert res.exit_code == 0 and "videos missing" in res.output, res.output
    row = next(line for line in res.output.splitlines() if "videos missing" in line)
    assert [c.strip() for c in row.split("│") if c.strip()][1:] == ["0", "0"]
    # a root one level off (the participant folders elsewhere) says where it looked
    shutil.move(str(root / "P01"), str(tmp_path / "P01"))
    res = CliRunner().invoke(app, ["info", "--data", str(out), "--no-check-lengths"], env={"COLUMNS": "300"})
    assert f"looked for {root / 'P01' / 'videos'}" in " ".join(res.output.split()), res.output


def test_info_names_a_split_whose_csv_is_not_there(tmp_path):
    """EPIC_100_train.csv not downloaded: the table left train out without a word (extract --split train then said
    "annotation file not found" of a --data that was right)."""
    root = make_root(tmp_path / "k")  # train and val; no test CSV
    r = CliRunner().invoke(app, ["info", "--data", str(root)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "splits without their CSV here: test (EPIC_100_test_timestamps.csv)" in r.output
    (root / "annotations" / "EPIC_100_train.csv").unlink()
    r = CliRunner().invoke(app, ["info", "--data", str(root)], env={"COLUMNS": "200"})
    assert "train (EPIC_100_train.csv), test (EPIC_100_test_timestamps.csv)" in r.output
    # and a stage asked for that split says to put the file beside the others (not to point --data elsewhere)
    r = CliRunner().invoke(app, ["extract", "--data", str(root), "--split", "train", "--workdir", str(tmp_path)])
    assert "put EPIC_100_train.csv (EPIC's annotations repository) in that folder beside the others" in str(
        r.exception), r.output
    # a copy under a browser's name: info says to rename it, as the stages do
    (root / "annotations" / "EPIC_100_test_timestamps (1).csv").write_text("narration_id\n")
    r = CliRunner().invoke(app, ["info", "--data", str(root)], env={"COLUMNS": "300"})
    assert "test (EPIC_100_test_timestamps.csv; EPIC_100_test_timestamps (1).csv is there: rename it to " \
           "EPIC_100_test_timestamps.csv)" in " ".join(r.output.split()), r.output


def test_info_names_rows_that_epics_own_files_never_hold(tmp_path):
    """Rows that parse but that no row of EPIC's holds, each kind said with how many and one: frame columns off
    their timestamps (an MP4 and an rgb_frames folder would show different clips), a video_id edited to another
    video that is there (the segment was read from it without a word), a row of no length."""
    from tests.csv_rows import edit_csv

    root = make_root(tmp_path / "k", epic=True)  # columns counted as EPIC's are
    args = ["info", "--data", str(root), "--no-check-lengths"]
    r = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    assert r.exit_code == 0 and "whose ids name" not in r.output and "of no length" not in r.output and "columns and timestamps" not in r.output, r.output

    def edit(rows):
        rows[0]["start_frame"] = str(int(rows[0]["start_frame"]) + 60)
        rows[0]["stop_frame"] = str(int(rows[0]["stop_frame"]) + 1)  # EPIC's rounding: not said

    rows = edit_csv(root / "annotations" / "EPIC_100_validation.csv", edit)
    r = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    assert r.exit_code == 0, r.output
    assert f"val: 1 row whose frame columns and timestamps disagree (e.g. {rows[0]['narration_id']}: " \
           "start_frame" in r.output, r.output
    assert "train:" not in r.output

    def edit(rows):
        rows[0]["video_id"] = next(x["video_id"] for x in rows if x["video_id"] != rows[0]["video_id"])
        rows[1]["stop_timestamp"], rows[1]["stop_frame"] = rows[1]["start_timestamp"], rows[1]["start_frame"]

    rows = edit_csv(root / "annotations" / "EPIC_100_train.csv", edit)
    r = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert f"train: 1 row whose ids name different videos (e.g. {rows[0]['narration_id']}: participant_id " \
           f"P01, video_id {rows[0]['video_id']})" in out, out
    assert f"train: 1 row of no length (stop equals start, in seconds or in frames) (e.g. {rows[1]['narration_id']}:" in out
