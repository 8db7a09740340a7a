"""Media I/O: frame windows from MP4s and rgb_frames folders, audio windows from files and MP4 tracks, bad input."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf

from leap_cli.epic.layout import DatasetLayout
from leap_cli.epic.timing import FrameClock, frame_filename, frame_to_time, frames_for_window
from leap_cli.errors import LeapError
from leap_cli.media import (AudioUnavailable, FramesFolderReader, VideoReader, open_video, read_audio,
                            read_segment_audio, read_video_audio)
from leap_cli.media.write import write_mp4

from tests.kitchens import config_kitchen_copy

FPS = 29.97
N_FRAMES = 200
SR = 16000


def _frame(i: int) -> np.ndarray:
    """Frame ``i`` (1-based) carries its own number: 8 binary blocks on top, and a red level."""
    a = np.zeros((96, 128, 3), np.uint8)
    a[24:, :, 0] = (i * 5) % 250
    for bit in range(8):
        if i >> bit & 1:
            a[:16, bit * 16:(bit + 1) * 16, :] = 255
    return a


def _tone_with_click(seconds: float, click_at: float, rate: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    audio = (0.05 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    k = int(click_at * rate)
    audio[k:k + rate // 20] = 0.8
    return audio


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
    path = tmp_path_factory.mktemp("media") / "clip.mp4"
    audio = _tone_with_click(N_FRAMES / FPS, click_at=3.0)
    write_mp4(path, (_frame(i) for i in range(1, N_FRAMES + 1)), FPS, audio=audio, audio_rate=SR, gop=24)
    return path


def _frame_number(rgb: np.ndarray) -> int:
    """Read the number back from the binary blocks of a decoded frame."""
    return sum(1 << bit for bit in range(8) if rgb[4:12, bit * 16 + 4:bit * 16 + 12].mean() > 128)


def test_video_reader_properties_and_window(mp4):
    with VideoReader(mp4) as r:
        assert (r.width, r.height, r.num_frames) == (128, 96, N_FRAMES)
        assert r.fps == pytest.approx(FPS, abs=1e-3)
        window = frames_for_window(FrameClock("mp4", r.fps, r.num_frames), 2.0, 4.0, 8)
        clip = r.read_frames(list(window.frames), short_side=48)
        full = r.read_frames(list(window.frames))
    assert clip.shape == (8, 48, 64, 3) and clip.dtype == np.uint8
    wanted = list(window.frames)
    assert window.inside and wanted == sorted(wanted) and wanted[0] >= 60 and wanted[-1] <= 120
    assert [_frame_number(f) for f in full] == wanted


def test_seek_read_equals_decode_from_start(mp4):
    frames = [150, 7, 90, 91, 190, 7]  # unsorted, with a repeat and a long gap
    with VideoReader(mp4, seek_gap=16) as r:
        seeked = r.read_frames(frames)
        decoded = r.read_frames(frames, seek=False)
    assert np.array_equal(seeked, decoded)
    assert [_frame_number(f) for f in seeked] == frames


def test_a_backward_jump_seeks_instead_of_decoding_from_the_start(mp4, caplog):
    """Segments are read in any order (a shard's samples, an anticipation clip before the last action): a jump back
    seeks to the frame, as a jump forward does; decoding from the start costs minutes late in an hour of 1080p."""
    with VideoReader(mp4, seek_gap=16) as r:
        rewinds = []
        first = r._rewind
        r._rewind = lambda: (rewinds.append(1), first())[1]
        with caplog.at_level("WARNING", logger="leap_cli.media.video"):
            late = r.read_frames([150])
            early = r.read_frames([10, 11])
    assert [_frame_number(f) for f in (*late, *early)] == [150, 10, 11]
    assert rewinds == [] and "decoding from the start" not in caplog.text


def test_seek_is_frame_exact_with_b_frames(tmp_path):
    """H.264 with B-frames (as camera files have) reorders frames in the stream; seeking must still land exactly."""
    path = tmp_path / "h264.mp4"
    write_mp4(path, (_frame(i) for i in range(1, 121)), 50.0, codec="libx264", gop=25,
              options={"preset": "veryfast", "bf": "3"})
    frames = [97, 33, 34, 60, 5]
    with VideoReader(path, seek_gap=8) as r:
        seeked = r.read_frames(frames)
        decoded = r.read_frames(frames, seek=False)
    assert np.array_equal(seeked, decoded)
    assert [_frame_number(f) for f in seeked] == frames


def test_frames_folder_reader(tmp_path, mp4):
    root = tmp_path / "data"
    folder = root / "P01" / "rgb_frames" / "P01_01"
    folder.mkdir(parents=True)
    for i in range(1, 41):
        cv2.imwrite(str(folder / frame_filename(i)), cv2.cvtColor(_frame(i), cv2.COLOR_RGB2BGR))
    (root / "annotations").mkdir()
    layout = DatasetLayout.open(root)
    with open_video(layout, "P01_01", fps=50.0) as r:
        assert isinstance(r, FramesFolderReader)
        assert (r.num_frames, r.width, r.height, r.fps) == (40, 128, 96, 50.0)
        out = r.read_frames([12, 3], short_side=32)
    assert out.shape == (2, 32, 43, 3)
    full = FramesFolderReader(folder, 50.0).read_frames([12])
    assert abs(float(full[0, 30:, :, 0].mean()) - 60) < 3  # frame 12 -> red 60
    # An MP4 beside the frames is preferred.
    (root / "P01" / "videos").mkdir()
    shutil.copy(mp4, root / "P01" / "videos" / "P01_01.MP4")
    with open_video(layout, "P01_01") as r:
        assert isinstance(r, VideoReader)
    # a damaged MP4 hides the frames beside it: its fix names them
    (root / "P01" / "videos" / "P01_01.MP4").write_bytes(b"not a video")
    with pytest.raises(LeapError, match=f"move the MP4 away to read the video's rgb_frames folder beside it \\({folder}\\)"):
        open_video(layout, "P01_01")
    (folder / frame_filename(12)).unlink()
    with pytest.raises(LeapError, match="frame_0000000012.jpg"):
        FramesFolderReader(folder, 50.0, record="P01_01_3").read_frames([12])
    # a JPEG cut in half decoded with its bottom grey and a bare libjpeg line on stderr: stored in the shards
    cut = folder / frame_filename(13)
    cut.write_bytes(cut.read_bytes()[:-40])  # (what still decodes: a download cut inside the last scan)
    with pytest.raises(LeapError, match=r"frame 13 is cut short \(a truncated JPEG\)"):
        FramesFolderReader(folder, 50.0, record="P01_01_3").read_frames([13])


def _damaged(data: bytes) -> bytes:
    """A JPEG whose middle third is random bytes, its size and end marker kept (a bad disk sector, a bad copy)."""
    n = len(data)
    return data[: n // 3] + np.random.default_rng(0).integers(0, 256, n // 3, dtype=np.uint8).tobytes() + data[2 * n // 3:]


def test_damaged_frame_files_are_refused_with_their_cause(tmp_path, capfd, monkeypatch):
    """A frame file with corrupt data decoded (the rest of the picture grey, a bare libjpeg line on stderr) and went
    into the shards; a zero-byte file, a file of another size than the folder's others and one this user may not
    read were all "missing or unreadable" (re-extract). Each is now refused with its own cause, naming the file."""
    folder = tmp_path / "P01" / "rgb_frames" / "P01_01"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(1, 9):  # (textured: the entropy-coded data is most of the file, as in a real frame)
        cv2.imwrite(str(folder / frame_filename(i)), rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))
    capfd.readouterr()
    good = (folder / frame_filename(3)).read_bytes()
    (folder / frame_filename(3)).write_bytes(_damaged(good))
    assert (folder / frame_filename(3)).read_bytes()[-2:] == b"\xff\xd9"  # not cut short: the end marker is there
    reader = FramesFolderReader(folder, 50.0, record="P01_01_3")
    with pytest.raises(LeapError, match=r"frame 3 is corrupt \(libjpeg: Corrupt JPEG data") as e:
        reader.read_frames([2, 3])
    assert "frame_0000000003.jpg" in e.value.one_line() and "[P01_01_3]" in e.value.one_line()
    assert "JPEG" not in capfd.readouterr().err  # libjpeg's own line is not left on the terminal
    (folder / frame_filename(3)).write_bytes(good)
    assert reader.read_frames([3]).shape == (1, 96, 128, 3)  # the file copied back in place: read again
    (folder / frame_filename(4)).write_bytes(b"")
    with pytest.raises(LeapError, match="frame 4 is an empty file"):
        reader.read_frames([4])
    cv2.imwrite(str(folder / frame_filename(5)), np.zeros((48, 64, 3), np.uint8))
    with pytest.raises(LeapError, match=r"frame 5 is 64x48, the video's frames 128x96 \(frames 1, 5, 8\)"):
        reader.read_frames([5])  # (its size was read from frames 1, 5 and 8 when the folder was opened)
    assert {p.name for p in e_files(reader, 5)} == {frame_filename(f) for f in (1, 5, 8)}  # any may be the odd one
    (folder / frame_filename(6)).write_bytes(b"not a jpeg")
    with pytest.raises(LeapError, match="frame 6 is not an image OpenCV can read"):
        reader.read_frames([6])
    (folder / frame_filename(7)).unlink()
    with pytest.raises(LeapError, match="frame 7 is missing"):
        reader.read_frames([7])
    real = Path.read_bytes

    def denied(self):  # (the tests run as root, whom file modes do not stop)
        if self.name == frame_filename(8):
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(LeapError, match="frame 8 cannot be read: permission denied") as e:
        reader.read_frames([8])
    assert f"chmod -R a+rX {folder}" in e.value.one_line()
    monkeypatch.undo()
    # a first frame of another size: the size most of the first, middle and last frames have is the video's
    # (review: every other frame was "of another size"); only a read of frame 1 is refused
    good_first = (folder / frame_filename(1)).read_bytes()
    cv2.imwrite(str(folder / frame_filename(1)), np.zeros((48, 64, 3), np.uint8))
    odd = FramesFolderReader(folder, 50.0, record="P01_01_3")
    assert (odd.width, odd.height) == (128, 96) and odd.read_frames([2]).shape == (1, 96, 128, 3)
    with pytest.raises(LeapError, match=r"frame 1 is 64x48, the video's frames 128x96"):
        odd.read_frames([1])
    (folder / frame_filename(1)).write_bytes(good_first)
    # two of the first, middle and last frames odd: frames 2-8 are read too, and most of them decide (QA)
    few = tmp_path / "P02" / "rgb_frames" / "P02_01"
    few.mkdir(parents=True)
    for i in range(1, 10):
        cv2.imwrite(str(few / frame_filename(i)), np.zeros((48, 64, 3) if i in (1, 5) else (96, 128, 3), np.uint8))
    assert (FramesFolderReader(few, 50.0).width, FramesFolderReader(few, 50.0).height) == (128, 96)
    # the first and middle frames unreadable, the last odd: not sized by the last alone (QA: every other refused)
    for i, kind in ((1, "bad"), (5, "bad"), (9, "odd")):
        if kind == "bad":
            (few / frame_filename(i)).write_bytes(b"not a jpeg")
        else:
            cv2.imwrite(str(few / frame_filename(i)), np.zeros((48, 64, 3), np.uint8))
    assert FramesFolderReader(few, 50.0).width == 128
    # bytes after the end marker are no harm (it was "cut short"); damage before a restart marker, as in FFmpeg's
    # frames, is ("N extraneous bytes before marker 0xd3", the first warning libjpeg prints, was let through)
    (folder / frame_filename(2)).write_bytes((folder / frame_filename(2)).read_bytes() + b"junk \xff\xda junk")
    assert reader.read_frames([2]).shape == (1, 96, 128, 3)  # (junk that holds a scan's marker too: QA)
    from leap_cli.media.video import _jpeg_damage

    assert _jpeg_damage("Corrupt JPEG data: 1090 extraneous bytes before marker 0xd3")
    assert _jpeg_damage("Corrupt JPEG data: 961 extraneous bytes before marker 0xd9")
    assert _jpeg_damage("Corrupt JPEG data: 316 extraneous bytes before marker 0xa6")  # (no marker: garbage)
    assert _jpeg_damage("Corrupt JPEG data: 40 extraneous bytes before marker 0xc4")  # (progressive: a scan's end)
    assert not _jpeg_damage("Corrupt JPEG data: 1 extraneous bytes before marker 0xd9")  # padding
    assert not _jpeg_damage("Corrupt JPEG data: 2 extraneous bytes before marker 0xdb")
    # a damaged first frame: the folder still opens (its size is read from it) and only a read of it is refused
    first = (folder / frame_filename(1)).read_bytes()
    (folder / frame_filename(1)).write_bytes(_damaged(first))
    reader = FramesFolderReader(folder, 50.0, record="P01_01_3")
    assert (reader.width, reader.height) == (128, 96) and reader.read_frames([2]).shape == (1, 96, 128, 3)
    with pytest.raises(LeapError, match="frame 1 is corrupt"):
        reader.read_frames([1, 2])
    # libjpeg's lines are caught also where stderr is closed (2>&-: its file would have become fd 2 for good)
    code = ("import os, sys; sys.path.insert(0, sys.argv[1]); from leap_cli.media.video import _jpeg; "
            "print(_jpeg.decode(open(sys.argv[2], 'rb').read())[1], _jpeg._sink > 2)")
    import subprocess
    import sys

    run = subprocess.run(f"{sys.executable} -c \"{code}\" {Path(__file__).parents[1]} {folder / frame_filename(1)} 2>&-",
                         shell=True, capture_output=True, text=True)
    assert run.stdout.startswith("Corrupt JPEG data") and run.stdout.split()[-1] == "True", run
    # a line another thread writes to stderr during a decode reaches it still (it is not libjpeg's)
    import leap_cli.media.video as video

    real_decode = cv2.imdecode

    def chatty(buf, flags):
        os.write(2, b"another thread's line\n")
        return real_decode(buf, flags)

    capfd.readouterr()
    monkeypatch.setattr(video.cv2, "imdecode", chatty)
    assert reader.read_frames([2]).shape == (1, 96, 128, 3)
    assert capfd.readouterr().err == "another thread's line\n"


def e_files(reader, frame):
    """The files a reader's error for ``frame`` names as at fault."""
    try:
        reader.read_frames([frame])
    except LeapError as e:
        return e.files
    raise AssertionError(f"frame {frame} was read")


def test_window_sampling_modes():
    clock = FrameClock("mp4", 10.0)
    assert frames_for_window(clock, 0.0, 1.0, 5).frames == (2, 4, 6, 8, 10)
    rng = np.random.default_rng(0)
    rand = frames_for_window(clock, 0.0, 1.0, 5, "random", rng).frames
    assert all(1 + 2 * i <= f <= 2 + 2 * i for i, f in enumerate(rand))
    assert frames_for_window(clock, 0.0, 1.0, 4, "consecutive").frames == (4, 5, 6, 7)
    # No clamping: a window past the end of a 50-frame video says so instead of repeating the last frame.
    late = frames_for_window(clock.with_frames(50), 0.0, 100.0, 4)
    assert not late.inside and "after the decodable end" in late.reason and max(late.frames) > 50
    with pytest.raises(ValueError):
        frames_for_window(clock, 0.0, 1.0, 4, "nope")


def test_missing_video_names_segment_and_paths(tmp_path):
    (tmp_path / "annotations").mkdir()
    layout = DatasetLayout.open(tmp_path)
    with pytest.raises(LeapError) as e:
        open_video(layout, "P02_03", record="P02_03_17")
    msg = str(e.value)
    assert "P02_03_17" in msg and "P02/videos/P02_03.MP4" in msg and "rgb_frames/P02_03" in msg


def test_unreadable_video(tmp_path):
    bad = tmp_path / "junk.MP4"
    bad.write_bytes(b"this is not a video" * 100)
    with pytest.raises(LeapError, match="junk.MP4"):
        VideoReader(bad, record="P01_01_0")


def test_truncated_mp4_fails_clearly_without_hanging(tmp_path, mp4):
    data = mp4.read_bytes()
    for keep in (0.5, 0.9):
        cut = tmp_path / f"cut{keep}.mp4"
        cut.write_bytes(data[:int(len(data) * keep)])
        t0 = time.monotonic()
        with pytest.raises(LeapError) as e:
            with VideoReader(cut, record="P01_01_5") as r:
                r.read_frames([N_FRAMES - 5])
        assert "P01_01_5" in str(e.value) and cut.name in str(e.value)
        assert time.monotonic() - t0 < 20


def test_truncated_faststart_mp4_fails_at_missing_frames(tmp_path):
    """With the index at the front (faststart), a cut file opens but its late frames are gone."""
    path = tmp_path / "fast.mp4"
    write_mp4(path, (_frame(i) for i in range(1, N_FRAMES + 1)), FPS, gop=24,
              container_options={"movflags": "faststart"})
    data = path.read_bytes()
    cut = tmp_path / "fast_cut.mp4"
    cut.write_bytes(data[:int(len(data) * 0.6)])
    with pytest.raises(LeapError, match="fast_cut.mp4"):
        with VideoReader(cut, record="P01_01_9") as r:
            r.read_frames([N_FRAMES - 2])
    # later segments past the cut fail at once: the file was decoded from its start for every one of them (hours
    # on EPIC's long 1080p videos), with a warning each
    rewinds = []
    with VideoReader(cut, record="P01_01_9") as r:
        first = r._rewind
        r._rewind = lambda: (rewinds.append(1), first())[1]
        with pytest.raises(LeapError, match="the video ends or is corrupt at frame") as e:
            r.read_frames([N_FRAMES - 2])
        dead = e.value.message
        assert len(rewinds) == 1
        for late in (N_FRAMES - 1, N_FRAMES - 8):
            with pytest.raises(LeapError) as e:
                r.read_frames([late])
            assert e.value.message == dead
        assert len(rewinds) == 1
        assert r.read_frames([1, 2]).shape[0] == 2  # the start still reads


@pytest.mark.parametrize("keep", [0.45, 0.6, 0.8])
def test_decodable_frames_finds_the_exact_last_frame_of_a_cut_file(tmp_path, keep):
    """leap info's video lengths: the last frame that decodes, not one short of it (the segments that end there
    would be reported as cut and skipped)."""
    from leap_cli.media.video import decodable_frames

    path = tmp_path / "fast.mp4"
    write_mp4(path, (_frame(i) for i in range(1, N_FRAMES + 1)), FPS, gop=24,
              container_options={"movflags": "faststart"})
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[:int(path.stat().st_size * keep)])
    announced, good = decodable_frames(cut)
    assert announced == N_FRAMES and 1 < good < N_FRAMES
    with VideoReader(cut) as r:  # (the last one may be the decoder's concealment of a cut packet: it decodes)
        assert r.read_frames([good]).shape[0] == 1
    with pytest.raises(LeapError), VideoReader(cut) as r:
        r.read_frames([good + 1])
    assert decodable_frames(path) == (N_FRAMES, N_FRAMES)


def test_audio_file_window_and_resampling(tmp_path):
    audio = _tone_with_click(6.0, click_at=2.5, rate=48000)
    wav = tmp_path / "a.wav"
    sf.write(wav, np.stack([audio, audio], axis=1), 48000, subtype="PCM_16")
    x = read_audio(wav, 2.0, 3.5, sample_rate=16000)
    assert x.dtype == np.float32 and x.ndim == 1 and x.shape == (24000,)
    onset = int(np.argmax(np.abs(x) > 0.4))
    assert abs(onset - 8000) < 40  # the click at 2.5 s is 0.5 s into the window
    same = read_audio(wav, 2.0, 3.5, sample_rate=48000)
    assert same.shape == (72000,) and np.allclose(same, audio[96000:168000], atol=1e-3)
    tail = read_audio(wav, 5.5, 6.05, sample_rate=8000)  # past the end by less than LENGTH_TOLERANCE_S: cut there
    assert tail.shape == (4000,)
    with pytest.raises(AudioUnavailable, match=r"the audio ends at 6\.00 s, before the segment does \(7\.00 s\)") as e:
        read_audio(wav, 5.5, 7.0, sample_rate=8000)  # by a second: it was cut there and analysed as if whole
    assert e.value.file
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFFjunk")
    with pytest.raises(LeapError, match="bad.wav"):
        read_audio(bad, 0, 1)


def test_a_file_this_user_may_not_read_is_not_called_truncated(tmp_path, monkeypatch):
    """chmod 000 on a video: "the video cannot be opened (truncated or not a video file)", "re-download" (a
    30-minute download for a chmod), and the audio's "truncated or corrupt file". (The tests run as root, whom
    permissions do not stop: the refusal is simulated where leap asks for it.)"""
    import errno
    import os

    from leap_cli.media import read_video_audio

    mp4 = tmp_path / "P01_01.MP4"
    mp4.write_bytes(b"\0" * 1000)  # (cannot be opened by the decoder either way)
    real = os.open

    def refuse(path, flags, *a, **k):
        if str(path) == str(mp4):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", refuse)
    for read in (lambda: VideoReader(mp4, record="P01_01_0"), lambda: read_video_audio(mp4, 0.0, 1.0)):
        with pytest.raises(LeapError) as e:
            read()
        assert e.value.message == "the file cannot be read: permission denied" and "chmod" in e.value.fix
    monkeypatch.setattr(os, "open", real)
    with pytest.raises(LeapError, match="truncated or not a video file"):  # readable, not a video
        VideoReader(mp4)


def test_a_window_after_the_end_of_a_cut_audio_file_says_what_to_do(tmp_path):
    wav = tmp_path / "P01_01.wav"
    sf.write(wav, np.zeros(800, np.float32), 16000, subtype="PCM_16")  # 0.05 s: a copy cut short
    with pytest.raises(AudioUnavailable, match=r"the audio ends at 0\.05 s, before the segment does \(12\.00 s\): "
                                               r"the file is cut short") as e:
        read_audio(wav, 11.08, 12.0, record="P01_01_4")
    assert e.value.path == str(wav) and e.value.record == "P01_01_4" and "download or extract" in e.value.fix


def test_audio_from_mp4_track(mp4):
    x = read_video_audio(mp4, 2.5, 4.0, sample_rate=8000)
    assert x.shape == (12000,) and x.dtype == np.float32
    onset = int(np.argmax(np.abs(x) > 0.4))
    assert abs(onset - 4000) < 80  # the click at 3.0 s is 0.5 s into the window


def test_segment_audio_prefers_file_then_track_then_unavailable(tmp_path, mp4):
    root = tmp_path / "data"
    (root / "annotations").mkdir(parents=True)
    layout = DatasetLayout.open(root)
    with pytest.raises(AudioUnavailable) as e:
        read_segment_audio(layout, "P01_01", 0.0, 1.0, record="P01_01_2")
    assert isinstance(e.value, LeapError) and "P01_01_2" in str(e.value)
    (root / "P01" / "videos").mkdir(parents=True)
    shutil.copy(mp4, root / "P01" / "videos" / "P01_01.MP4")
    from_track = read_segment_audio(layout, "P01_01", 2.5, 3.5, 16000)
    assert from_track.shape == (16000,) and np.abs(from_track).max() > 0.4
    (root / "P01" / "audio").mkdir()
    sf.write(root / "P01" / "audio" / "P01_01.wav", np.zeros(SR * 4, np.float32), SR)
    from_file = read_segment_audio(layout, "P01_01", 2.5, 3.5, 16000)
    assert from_file.shape == (16000,) and np.abs(from_file).max() == 0.0


def test_video_without_audio_track_is_unavailable(tmp_path):
    path = tmp_path / "silent.mp4"
    write_mp4(path, (_frame(i) for i in range(1, 11)), 25.0)
    with pytest.raises(AudioUnavailable):
        read_video_audio(path, 0.0, 0.2)
    assert frame_to_time(26, 25.0) == 1.0


def test_decode_threads_setting_gives_the_same_frames(mp4, monkeypatch):
    """DECODE_THREADS (what extract's worker processes set to 1) reaches FFmpeg and changes no decoded frame."""
    import leap_cli.media.video as video

    frames = [1, 5, 9, 20]
    monkeypatch.setattr(video, "SMALL_FRAME", 0)  # this small clip as if large: FFmpeg's own choice of threads
    with VideoReader(mp4) as r:
        assert (os.cpu_count() or 1) == 1 or r._cap.get(cv2.CAP_PROP_N_THREADS) > 1
        default = r.read_frames(frames)
    monkeypatch.setattr(video, "DECODE_THREADS", 1)
    with VideoReader(mp4) as r:
        assert r._cap.get(cv2.CAP_PROP_N_THREADS) == 1
        assert np.array_equal(r.read_frames(frames), default)


def test_small_videos_decode_on_one_thread_whatever_the_default(mp4):
    """Frames of at most SMALL_FRAME pixels decode on one FFmpeg thread (its threads cost more CPU than they save
    there), also after the reader rewinds."""
    import leap_cli.media.video as video

    with VideoReader(mp4) as r:
        assert video.DECODE_THREADS is None and r.width * r.height <= video.SMALL_FRAME
        assert r._cap.get(cv2.CAP_PROP_N_THREADS) == 1
        first = r.read_frames([3])
        assert np.array_equal(r.read_frames([3], seek=False), first)  # reopened from the start: still one thread
        assert r._cap.get(cv2.CAP_PROP_N_THREADS) == 1


def test_show_keyframes_are_never_upscaled(tmp_path, tmp_path_factory):
    """`leap show`'s keyframes come at the asked short side, or the source's own size where that is smaller."""
    from leap_cli.report.show import keyframes
    from leap_cli.synth.kitchen import KitchenConfig

    config_kitchen_copy(tmp_path_factory, tmp_path, KitchenConfig(videos=1, segments_per_video=2, width=64, height=48))
    frames = keyframes(tmp_path, "P01_01", 0.5, 1.5, count=3)
    assert len(frames) == 3 and all(f.shape == (48, 64, 3) for _, f in frames)
    small = keyframes(tmp_path, "P01_01", 0.5, 1.5, count=3, short_side=24)
    assert all(f.shape == (24, 32, 3) for _, f in small)


def test_jpeg_of_rgb_frames_keeps_colours_and_bytes_of_any_layout():
    """encode_jpeg swaps RGB to OpenCV's BGR with cvtColor: the bytes are those of the BGR image, for a
    contiguous frame and for a view into a larger array alike, and red stays red."""
    import cv2

    from leap_cli.media.write import encode_jpeg

    rng = np.random.default_rng(0)
    big = rng.integers(0, 255, (144, 300, 3), dtype=np.uint8)
    big[:, :, :] = np.clip(big.astype(int) // 4, 0, 255)
    big[:72, :128] = (220, 20, 20)  # red in RGB
    view = big[:, :256]  # not contiguous
    want = cv2.imencode(".jpg", np.ascontiguousarray(view[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    assert encode_jpeg(view, 90) == want == encode_jpeg(np.ascontiguousarray(view), 90)
    assert encode_jpeg(view[:, :, ::-1], 90, colour="bgr") == want  # a BGR frame (the decoder's) as it is
    with pytest.raises(ValueError, match="rgb or bgr"):
        encode_jpeg(view, 90, colour="gray")
    back = cv2.imdecode(np.frombuffer(want, np.uint8), cv2.IMREAD_COLOR)  # BGR
    assert back[30, 60, 2] > 180 and back[30, 60, 0] < 60


def test_a_video_link_to_a_missing_file_and_a_folder_named_as_a_video(tmp_path):
    """A dangling link was "no video file or rgb_frames folder"; a folder named P01_01.MP4 was counted as the video
    by `leap info` and then not found."""
    from leap_cli.epic.layout import DatasetLayout
    from leap_cli.media.video import VideoUnreadable, open_video

    (tmp_path / "annotations").mkdir()
    videos = tmp_path / "P01" / "videos"
    videos.mkdir(parents=True)
    (videos / "P01_01.MP4").symlink_to(tmp_path / "unmounted" / "P01_01.MP4")
    (videos / "P01_02.MP4").mkdir()
    layout = DatasetLayout.open(tmp_path)
    assert layout.video_path("P01_01") is None and layout.video_path("P01_02") is None
    with pytest.raises(VideoUnreadable, match=r"P01_01\.MP4 \[P01_01_3\]: the video is a link to .*unmounted/P01_01"
                                              r"\.MP4, which is not there \(mount or restore"):
        open_video(layout, "P01_01", 50.0, record="P01_01_3")
    with pytest.raises(VideoUnreadable, match="no video file or rgb_frames folder"):
        open_video(layout, "P01_02", 50.0)
    # a typo in a row's video_id (P01_1 for P01_01) where the narration id names a video that is there (QA)
    (videos / "P01_05.MP4").write_bytes(b"")
    with pytest.raises(VideoUnreadable) as e:
        open_video(layout, "P01_5", 50.0, record="P01_05_3")
    assert e.value.fix.endswith("the narration id P01_05_3 names video P01_05, which is there: a typo in the row's "
                                "video_id?"), e.value.fix
    with pytest.raises(VideoUnreadable) as e:  # (nothing to suggest where that video is not there either)
        open_video(layout, "P01_6", 50.0, record="P01_06_3")
    assert "typo" not in e.value.fix
    # an rgb_frames folder linked from elsewhere, gone (QA: "no video file or rgb_frames folder")
    (tmp_path / "P01" / "rgb_frames").mkdir()
    (tmp_path / "P01" / "rgb_frames" / "P01_03").symlink_to(tmp_path / "unmounted" / "P01_03")
    with pytest.raises(VideoUnreadable, match=r"rgb_frames/P01_03 \[P01_03\]: the video is a link to .*unmounted/"
                                              r"P01_03, which is not there"):
        open_video(layout, "P01_03", 50.0)


def test_leap_info_says_what_is_under_a_video_name_that_is_not_a_video(tmp_path):
    from tests.test_cli import leap

    r = leap("demo-data", "--out", str(tmp_path / "k"), "--videos", "3", "--segments", "2")
    assert r.returncode == 0, r.stderr
    videos = tmp_path / "k" / "P01" / "videos"
    (videos / "P01_01.MP4").unlink()
    (videos / "P01_01.MP4").symlink_to(tmp_path / "unmounted.MP4")
    frames = tmp_path / "k" / "P01" / "rgb_frames"
    frames.mkdir(exist_ok=True)
    (frames / "P01_02").symlink_to(tmp_path / "unmounted")  # (P01_02's MP4 moved away: its frames are read)
    (videos / "P01_02.MP4").rename(tmp_path / "P01_02.MP4")
    r = leap("info", "--data", str(tmp_path / "k"))
    out = " ".join(r.stdout.split())
    assert f"P01_01.MP4 is a link to {tmp_path / 'unmounted.MP4'}, which is not there" in out
    assert f"P01_02 is a link to {tmp_path / 'unmounted'}, which is not there" in out, out
    # a typo in a row's video_id: the narration id names a video that is there (QA)
    from tests.csv_rows import edit_csv

    rows = edit_csv(tmp_path / "k" / "annotations" / "EPIC_100_test_timestamps.csv",  # (P01_03: still there)
                    lambda rows: next(r for r in rows if r["video_id"] == "P01_03").update(video_id="P01_3"))
    row = next(r for r in rows if r["video_id"] == "P01_3")
    out = " ".join(leap("info", "--data", str(tmp_path / "k")).stdout.split())
    assert f"P01_3: the narration id {row['narration_id']} names video P01_03, which is there: a typo in the row's " \
           "video_id?" in out, out


def test_a_full_disk_while_a_video_is_written_names_the_video(tmp_path):
    """demo-data on a full disk named the writer's temp file (deleted by then), not the video it was making."""
    import errno

    from leap_cli.media.write import Mp4Writer

    out = tmp_path / "P01_01.MP4"
    writer = Mp4Writer(out, 64, 48, 50.0)
    real = writer._container

    class Full:
        def __getattr__(self, name):
            return getattr(real, name)

        def mux(self, packet):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(writer._tmp))

    writer._container = Full()
    with pytest.raises(OSError) as e:
        for _ in range(30):  # (the encoder holds a few frames before its first packet)
            writer.write(np.zeros((48, 64, 3), np.uint8))
    writer._container = real
    writer.abort()
    assert e.value.filename == str(out) and e.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []
    # the closing packets and the trailer: the same (the container's close fails again there)
    writer = Mp4Writer(out, 64, 48, 50.0)
    for _ in range(3):
        writer.write(np.zeros((48, 64, 3), np.uint8))
    real = writer._container

    class FullAtTheEnd(Full):
        def close(self):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(writer._tmp))

    writer._container = FullAtTheEnd()
    with pytest.raises(OSError) as e:
        writer.close()
    real.close()
    assert e.value.filename == str(out) and list(tmp_path.iterdir()) == []
