"""A new EPIC-KITCHENS user following README.md and docs/ literally (session 58, "journey").

README "Running on the real EPIC-KITCHENS-100", step 1: EPIC's download script writes videos, frames and
hand-objects into ROOT/EPIC-KITCHENS/, and "annotations, audio files, labelled object detections and camera
poses, which it does not download, go beside them", drawn as ROOT/annotations, ROOT/P01/audio/P01_01.wav,
ROOT/object-detections/P01/P01_01.jsonl and ROOT/poses/P01_01.json. leap took annotations/ from either folder,
and read everything else from one root only: the poses and labelled detections put where the tree puts them
were ignored without a word, and an audio folder put there hid every downloaded video. Also: `leap demo`'s
advice when a kitchen is too small to train on named a --segments that was refused in turn.
"""

from __future__ import annotations

import re
import shutil
from fractions import Fraction
from pathlib import Path

import pytest

from tests.procs import leap_main

EPIC = Path(__file__).parent / "data" / "epic100"  # an excerpt of EPIC's annotation CSVs (P01_01 in train)


def _tiny_mp4(path: Path, frames: int = 8) -> None:
    import av
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=Fraction(50))
        v.width, v.height, v.pix_fmt = 64, 64, "yuv420p"
        for i in range(frames):
            img = np.full((64, 64, 3), 10 * i, dtype=np.uint8)
            for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in v.encode():
            c.mux(p)


def _wav(path: Path, seconds: float = 0.5) -> None:
    import wave

    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(b"\0\0" * int(16000 * seconds))


def _downloaded_root(tmp_path: Path) -> Path:
    """ROOT as README step 1 draws it after epic_downloader.py: the annotations clone in ROOT/annotations and
    P01_01's video in ROOT/EPIC-KITCHENS/P01/videos/."""
    root = tmp_path / "ROOT"
    shutil.copytree(EPIC, root / "annotations")
    _tiny_mp4(root / "EPIC-KITCHENS" / "P01" / "videos" / "P01_01.MP4")
    return root


def _row(out: str, label: str) -> list[int]:
    """The per-split counts (train, val, test) of one row of `leap info`'s table."""
    line = next(x for x in out.splitlines() if re.search(r"(^|[^-\w])" + re.escape(label), x))  # (not hand-object ...)
    return [int(n) for n in re.findall(r"\b\d+\b", line.split(label, 1)[1])]


def _pose(path: Path) -> None:
    """A minimal EPIC Fields per-video JSON (its layout: camera, images {frame: [qw..tz]}, points)."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "camera": {"model": "OPENCV", "width": 456, "height": 256, "params": [200, 200, 228, 128, 0, 0, 0, 0]},
        "images": {f"frame_{i:010d}.jpg": [1, 0, 0, 0, 0, 0, 0] for i in (1, 2, 3)}, "points": []}))


# -- what works: the downloader's folder read as the docs say ------------------------------------------------------

def test_downloader_folder_is_read_and_poses_inside_it_are_counted(tmp_path, monkeypatch, capsys):
    """ROOT/EPIC-KITCHENS holds P01/ and ROOT none: leap reads the video there, the annotations from ROOT, and
    poses placed inside the download folder."""
    root = _downloaded_root(tmp_path)
    _pose(root / "EPIC-KITCHENS" / "poses" / "P01_01.json")
    code, out, err = leap_main(monkeypatch, capsys, "info", "--data", str(root), "--no-check-lengths")
    assert code == 0, out + err
    assert _row(out, "videos with MP4")[0] == 1
    assert _row(out, "camera poses (EPIC Fields JSON)")[0] == 1


def test_data_pointing_at_the_download_folder_names_the_annotations_beside_it(tmp_path, monkeypatch, capsys):
    """extract.md's and --help's examples pass `--data /data/EPIC-KITCHENS`; with the annotations beside that
    folder (README's tree) the refusal is one line naming the --annotations to pass."""
    root = _downloaded_root(tmp_path)
    code, out, err = leap_main(monkeypatch, capsys, "info", "--data", str(root / "EPIC-KITCHENS"),
                               "--no-check-lengths")
    assert code == 2
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"--annotations {root / 'annotations'}" in lines[0]


def test_shard_numbered_from_one_is_refused_with_the_array_job_fix(tmp_path, monkeypatch, capsys):
    """`--shard 2/2` (a job array numbered from 1) is one line that says parts count from 0 and how to shift."""
    root = _downloaded_root(tmp_path)
    code, out, err = leap_main(monkeypatch, capsys, "extract", "--data", str(root), "--split", "validation",
                               "--shard", "2/2", "--workdir", str(tmp_path / "w"))
    assert code == 2
    assert "numbered from 0" in err and "TASK_ID - 1" in err and "Traceback" not in err


# -- bugs -----------------------------------------------------------------------------------------------------------

def test_poses_and_detections_beside_the_download_folder_are_read_or_named(tmp_path, monkeypatch, capsys):
    """Was wrong: README step 1: poses and labelled detections "go beside" what the download script wrote, drawn as
    ROOT/poses/P01_01.json and ROOT/object-detections/P01/P01_01.jsonl. leap reads them from ROOT/EPIC-KITCHENS/
    only: `leap info` counts 0 of each and says nothing (extract then describes the camera by visual odometry and
    the objects from the unlabelled boxes). Either read them there (as annotations/ is read from either folder) or
    name the folder they must move to."""
    root = _downloaded_root(tmp_path)
    _pose(root / "poses" / "P01_01.json")
    det = root / "object-detections" / "P01" / "P01_01.jsonl"
    det.parent.mkdir(parents=True)
    det.write_text('{"video_id": "P01_01", "frame_number": 1, "objects": '
                   '[{"label": "plate", "bbox": [0.1, 0.1, 0.3, 0.3], "score": 0.9}]}\n')
    code, out, err = leap_main(monkeypatch, capsys, "info", "--data", str(root), "--no-check-lengths")
    assert code == 0, out + err
    assert _row(out, "camera poses (EPIC Fields JSON)")[0] == 1, out + err
    assert _row(out, "object detections")[0] == 1, out + err
    assert out.startswith(f"Dataset {root / 'EPIC-KITCHENS'} + {root}\n"), out  # (both folders read: both named)


def test_audio_beside_the_download_folder_does_not_hide_the_downloaded_videos(tmp_path, monkeypatch, capsys):
    """Was wrong: README step 1 puts audio at ROOT/P01/audio/P01_01.wav "beside" the download. Once ROOT held that
    P01/, leap read ROOT instead of ROOT/EPIC-KITCHENS/: every video is reported missing, and the "looked for" line
    names only ROOT/P01/videos/P01_01.MP4, not the folder where the video is. Either find the video or name it."""
    root = _downloaded_root(tmp_path)
    _wav(root / "P01" / "audio" / "P01_01.wav")
    code, out, err = leap_main(monkeypatch, capsys, "info", "--data", str(root), "--no-check-lengths")
    assert code == 0, out + err
    assert _row(out, "videos with MP4")[0] == 1, out + err
    assert _row(out, "audio (WAV/FLAC file)")[0] == 1, out + err


@pytest.mark.parametrize("videos, segments", [(4, 2), (4, 3), (5, 2), (5, 3), (7, 2), (7, 3)])
def test_demo_advice_for_too_few_training_segments_is_accepted(tmp_path, videos, segments):
    """Was wrong: `leap demo --videos 4 --segments 2` said "pass --segments 8 or more"; `--segments 8` was refused
    with "give 13 training segments with frames ... pass --segments 10 or more" (the advice left out that more
    segments per video put more of the truncated training video's past its end). The advised count, and the next,
    pass the same check (checked in-process: nothing runs)."""
    from leap_cli.demo import DemoConfig, check_demo
    from leap_cli.errors import LeapError

    with pytest.raises(LeapError) as first:
        check_demo(DemoConfig(workdir=tmp_path / "w", videos=videos, segments=segments))
    advised = int(re.search(r"pass --segments (\d+) or more", str(first.value) + first.value.fix).group(1))
    for n in (advised, advised + 1):
        try:
            check_demo(DemoConfig(workdir=tmp_path / "w", videos=videos, segments=n))
        except LeapError as e:
            pytest.fail(f"--segments {n}, as advised ({advised} or more), is refused: {e}")
