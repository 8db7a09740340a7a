"""The video reader (``leap_cli.media.video``) at its edges: which frame comes back for a frame number, when a gap is
grabbed through and when it is sought across, reduced-size reads that never upscale, EPIC's rgb_frames folders and
the errors of frames that cannot be had. Tiny videos whose frames carry their own number."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from leap_cli.epic.layout import DatasetLayout
from leap_cli.epic.timing import frame_filename
from leap_cli.errors import LeapError
from leap_cli.media import video
from leap_cli.media.video import (FramesFolderReader, VideoReader, VideoUnreadable, as_colour, open_video,
                                  resize_short_side, stored_side, stored_size)
from leap_cli.media.write import write_mp4

W, H = 64, 48
N = 80  # frames in the clip
FPS = 25.0


def _frame(i: int, w: int = W, h: int = H) -> np.ndarray:
    """Frame ``i`` (1-based): its number in 8 binary blocks (8 px wide) along the top, a grey level below."""
    a = np.full((h, w, 3), 40, np.uint8)
    a[24:] = (i * 3) % 250
    for bit in range(8):
        if i >> bit & 1:
            a[:16, bit * 8:(bit + 1) * 8] = 255
        else:
            a[:16, bit * 8:(bit + 1) * 8] = 0
    return a


def _number(rgb: np.ndarray) -> int:
    """The number a decoded frame (at 64x48) carries."""
    return sum(1 << bit for bit in range(8) if rgb[5:11, bit * 8 + 2:bit * 8 + 6].mean() > 128)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("video_reader") / "clip.mp4"
    write_mp4(path, (_frame(i) for i in range(1, N + 1)), FPS, gop=12)
    return path


def _spy_seeks(reader: VideoReader) -> list[int]:
    seeks: list[int] = []
    real = reader._seek
    reader._seek = lambda f: (seeks.append(f), real(f))[1]
    return seeks


def _spy_rewinds(reader: VideoReader) -> list[int]:
    rewinds: list[int] = []
    real = reader._rewind
    reader._rewind = lambda: (rewinds.append(1), real())[1]
    return rewinds


def test_the_frame_read_is_the_frame_asked_for(clip):
    with VideoReader(clip) as r:
        assert (r.width, r.height, r.num_frames, r.fps) == (W, H, N, FPS)
        frames = [1, 2, N, 13, 12, 40, 1]  # the first, the last, a keyframe (13 with gop 12) and the one before it
        assert [_number(f) for f in r.read_frames(frames)] == frames
        assert [_number(f) for f in r.read_frames([N - 1, N])] == [N - 1, N]


def test_a_gap_of_up_to_seek_gap_frames_is_grabbed_through_a_longer_one_sought(clip):
    """docs/media.md: "a gap of more than 64 frames between two wanted frames is crossed by seeking again"."""
    assert video.SEEK_GAP == 64
    with VideoReader(clip) as r:
        seeks = _spy_seeks(r)
        # frame 1 read, the next grab returns frame 2: 64 frames (2..65) lie before frame 66
        assert [_number(f) for f in r.read_frames([1, 66])] == [1, 66]
        assert seeks == []
    with VideoReader(clip) as r:
        seeks = _spy_seeks(r)
        assert [_number(f) for f in r.read_frames([1, 67])] == [1, 67]  # 65 frames between: sought
        assert seeks == [67]
    with VideoReader(clip, seek_gap=4) as r:
        seeks = _spy_seeks(r)
        assert [_number(f) for f in r.read_frames([1, 6, 12, 30])] == [1, 6, 12, 30]
        assert seeks == [12, 30]  # 2..5 grabbed (4 frames), 7..11 (5) and 13..29 sought across
    with VideoReader(clip) as r:
        seeks = _spy_seeks(r)
        assert _number(r.read_frames([65])[0]) == 65  # a fresh reader stands before frame 1: 64 frames to grab
        assert seeks == []
        assert _number(r.read_frames([3])[0]) == 3  # back: sought
        assert seeks == [3]


class _Landing:
    """A capture whose seeks land 3 frames early (and say so, as OpenCV does: a file with odd timestamps)."""

    def __init__(self, cap):
        self.cap = cap

    def set(self, prop, value):
        if prop == cv2.CAP_PROP_POS_FRAMES:
            value = max(0, value - 3)
        return self.cap.set(prop, value)

    def __getattr__(self, name):
        return getattr(self.cap, name)


def test_an_inexact_seek_decodes_from_the_start_instead_of_returning_another_frame(clip, caplog):
    """A container whose seek lands elsewhere (odd timestamps) must not give the frame it landed on."""

    with VideoReader(clip) as r:
        r._cap = _Landing(r._cap)
        rewinds = _spy_rewinds(r)
        with caplog.at_level("WARNING", logger="leap_cli.media.video"):
            assert _number(r.read_frames([70])[0]) == 70
        assert rewinds == [1] and "landed on 67" in caplog.text


def test_frames_are_numbered_from_one_and_end_at_the_last(clip):
    with VideoReader(clip, record="P01_01_7") as r:
        with pytest.raises(LeapError, match="1-based"):
            r.read_frames([0, 3])
        with pytest.raises(VideoUnreadable, match=f"frame {N + 1} requested but the video has {N} frames") as e:
            r.read_frames([5, N + 1])
        assert e.value.gist == "frames requested past the end of the video"
        with pytest.raises(LeapError, match="no frames requested"):
            r.read_frames([])
        assert _number(r.read_frames([N])[0]) == N
    with pytest.raises(LeapError, match="reader is closed"):
        r.read_frames([1])
    with pytest.raises(VideoUnreadable, match="video not found") as e:
        VideoReader(clip.parent / "nothing.mp4")
    assert e.value.gist == "video not found"  # (an error without a gist of its own counts by its message)


def test_decode_yields_each_distinct_frame_once_in_order_into_the_arrays_given(clip):
    buffers = [np.zeros((H, W, 3), np.uint8) for _ in range(3)]
    given = iter(buffers)
    with VideoReader(clip) as r:
        out = [(f, bgr) for f, bgr in r.decode([9, 2, 9, 5], into=lambda: next(given))]
    assert [f for f, _ in out] == [2, 5, 9]
    for (f, bgr), buf in zip(out, buffers):
        assert np.shares_memory(bgr, buf) and _number(buf[:, :, ::-1]) == f


def test_seek_false_decodes_from_the_start(clip):
    with VideoReader(clip) as r:
        r.read_frames([50])
        rewinds = _spy_rewinds(r)
        seeks = _spy_seeks(r)
        assert [_number(f) for f in r.read_frames([70, 3], seek=False)] == [70, 3]
        assert rewinds == [1] and seeks == []
        r.read_frames([20])
        assert _number(r.read_frames([30], seek=False)[0]) == 30  # (ahead, but from the start all the same)
        assert rewinds == [1, 1] and seeks == [20]  # (20: a jump back, sought)


def test_small_frames_decode_on_one_thread_up_to_640x480_inclusive(tmp_path):
    """docs/media.md: "Videos of at most 640x480 pixels (SMALL_FRAME) decode on one FFmpeg thread"."""
    assert video.DECODE_THREADS is None
    at = tmp_path / "vga.mp4"
    write_mp4(at, (np.full((480, 640, 3), 100 + 50 * i, np.uint8) for i in range(2)), FPS, gop=2)
    with VideoReader(at) as r:
        assert r.width * r.height == video.SMALL_FRAME
        assert r._cap.get(cv2.CAP_PROP_N_THREADS) == 1
    if (os.cpu_count() or 1) > 1:
        over = tmp_path / "over.mp4"
        write_mp4(over, (np.full((480, 656, 3), 100, np.uint8) for _ in range(2)), FPS, gop=2)
        with VideoReader(over) as r:
            assert r._cap.get(cv2.CAP_PROP_N_THREADS) > 1


def test_stored_frames_are_never_upscaled():
    assert stored_side(W, H, H) is None and stored_side(H, W, H) is None  # already that small: as they are
    assert stored_side(W, H, H - 1) == H - 1 and stored_side(H, W, H - 1) == H - 1
    assert stored_side(W, H, 100) is None and stored_size(W, H, 100) == (W, H)
    assert stored_size(W, H, 24) == (32, 24) and stored_size(H, W, 24) == (24, 32)  # landscape, portrait
    assert stored_size(W, W, 24) == (24, 24)
    assert stored_size(1920, 1080, 256) == (455, 256) and stored_size(1080, 1920, 256) == (256, 455)


def test_resize_short_side_keeps_the_aspect_and_the_picture():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    assert resize_short_side(img, None) is img and resize_short_side(img, H) is img
    assert resize_short_side(img, 24).shape == (24, 32, 3)
    assert resize_short_side(img.transpose(1, 0, 2), 24).shape == (32, 24, 3)  # portrait
    assert resize_short_side(img, 12).shape == (12, 16, 3)  # halved twice
    assert resize_short_side(img, 30).shape == (30, 40, 3)  # a factor under 2
    assert resize_short_side(img, 96).shape == (96, 128, 3)  # asked for (callers ask stored_side first)
    assert resize_short_side(img[:45, :63], 20).shape == (20, 28, 3)  # odd sizes: no halving
    # a picture of four quadrants keeps them where they were, in their colours
    quad = np.zeros((H, W, 3), np.uint8)
    quad[:24, 32:] = (200, 0, 0)
    quad[24:, :32] = (0, 0, 200)
    for side in (24, 12, 30, 20):
        small = resize_short_side(quad, side).astype(int)
        h, w = small.shape[:2]
        assert tuple(small[1, w - 2]) == (200, 0, 0) and tuple(small[h - 2, 1]) == (0, 0, 200)
        assert small[1, 1].sum() == 0 and small[h - 2, w - 2].sum() == 0
    # exact halvings are 2x2 means
    half = resize_short_side(img, 24).astype(int)
    means = (img.astype(int).reshape(24, 2, 32, 2, 3).sum(axis=(1, 3)) + 2) // 4
    assert np.abs(half - means).max() <= 1


def test_reduced_reads_give_rgb_at_the_short_side(clip):
    with VideoReader(clip) as r:
        full = r.read_frames([7, 30])
        small = r.read_frames([7, 30], short_side=24)
        same = r.read_frames([7, 30], short_side=H)
    assert small.shape == (2, 24, 32, 3) and np.array_equal(same, full)
    # the grey level below the number (frame 30: 90) survives the shrinking
    assert abs(float(small[1, 14:, :, :].mean()) - 90) < 4 and abs(float(full[1, 30:, :, :].mean()) - 90) < 4
    # RGB, not the decoder's BGR
    path = clip.parent / "red.mp4"
    write_mp4(path, (np.tile(np.array([220, 30, 30], np.uint8), (H, W, 1)) for _ in range(3)), FPS)
    with VideoReader(path) as r:
        red = r.read_frames([2])[0].astype(int).mean(axis=(0, 1))
    assert red[0] > 180 and red[2] < 70


def test_colours_convert_as_asked_and_grey_is_the_same_from_either_order():
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    assert as_colour(rgb, "rgb", "rgb") is rgb and as_colour(bgr, "bgr") is bgr  # no copy
    assert np.array_equal(as_colour(bgr, "rgb"), rgb) and np.array_equal(as_colour(rgb, "bgr", "rgb"), bgr)
    grey = as_colour(bgr, "gray")
    assert np.array_equal(as_colour(rgb, "gray", "rgb"), grey)
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255  # RGB red: luma 0.299 * 255
    assert abs(int(as_colour(red, "gray", "rgb")[0, 0]) - 76) <= 1
    with pytest.raises(ValueError, match="cannot convert"):
        as_colour(rgb, "rgb", "gray")


def _folder(root, video_id="P01_01", numbers=range(1, 11)):
    folder = root / video_id.split("_")[0] / "rgb_frames" / video_id
    folder.mkdir(parents=True)
    for i in numbers:
        cv2.imwrite(str(folder / frame_filename(i)), cv2.cvtColor(_frame(i), cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
    return folder


def test_a_frames_folder_counts_to_its_last_frame_and_refuses_past_it(tmp_path):
    assert frame_filename(7) == "frame_0000000007.jpg"
    folder = _folder(tmp_path, numbers=[*range(1, 5), *range(6, 13)])  # frame 5 lost
    r = FramesFolderReader(folder, 59.94, record="P01_01_2")
    assert (r.num_frames, r.width, r.height, r.fps) == (12, W, H, 59.94)
    assert [_number(f) for f in r.read_frames([12, 1, 6, 12])] == [12, 1, 6, 12]
    assert r.read_frames([3], short_side=24).shape == (1, 24, 32, 3)
    with pytest.raises(LeapError, match="frame 5 is missing"):
        r.read_frames([4, 5])
    with pytest.raises(VideoUnreadable, match="frame 13 requested but the video has 12 frames"):
        r.read_frames([13])
    with pytest.raises(LeapError, match="1-based"):
        r.read_frames([0])
    for fps in (0, -50.0, None):
        with pytest.raises(LeapError, match="no fps for the frames folder"):
            FramesFolderReader(folder, fps)
    with pytest.raises(VideoUnreadable, match="frames folder not found"):
        FramesFolderReader(tmp_path / "nothing", 50.0)


def test_a_frames_folder_is_sized_by_most_of_its_first_middle_and_last_frames(tmp_path):
    folder = _folder(tmp_path, numbers=range(1, 10))
    assert FramesFolderReader(folder, 50.0).sized_by == [1, 5, 9]  # (agreeing: no more read)
    cv2.imwrite(str(folder / frame_filename(9)), np.zeros((W, H, 3), np.uint8))  # the last one turned: 48x64
    r = FramesFolderReader(folder, 50.0)
    assert (r.width, r.height) == (W, H) and r.sized_by == [1, 2, 3, 4, 5, 6, 7, 8]  # (disagreeing: 2-8 read too)
    with pytest.raises(VideoUnreadable, match=f"frame 9 is {H}x{W}, the video's frames {W}x{H} \\(frames 1, 2, "):
        r.read_frames([9])
    assert _number(r.read_frames([8])[0]) == 8


def _layout(root, video_info=None):
    (root / "annotations").mkdir(exist_ok=True)
    if video_info:
        (root / "annotations" / "EPIC_100_video_info.csv").write_text(
            "video_id,duration,fps,resolution\n" + "".join(f"{v},10.0,{fps},{W}x{H}\n" for v, fps in video_info.items()))
    return DatasetLayout.open(root)


@pytest.mark.parametrize("file_fps,info_fps,same", [
    (29.97, 30.0, True),    # 0.1% apart: the same video (59.94 read as 60)
    (30.0, 29.97, True),
    (25.0, 29.97, False),   # another encoding, slower than the video_info row
    (29.97, 25.0, False),   # faster
    (25.0, 25.4, True),     # 1.6%
    (25.0, 25.6, False),    # 2.3%
])
def test_an_mp4_at_another_rate_than_video_info_is_refused(tmp_path, file_fps, info_fps, same):
    videos = tmp_path / "P01" / "videos"
    videos.mkdir(parents=True)
    write_mp4(videos / "P01_01.MP4", (_frame(i) for i in range(1, 6)), file_fps)
    layout = _layout(tmp_path)
    if same:
        with open_video(layout, "P01_01", info_fps) as r:
            assert isinstance(r, VideoReader) and _number(r.read_frames([4])[0]) == 4
    else:
        with pytest.raises(VideoUnreadable, match="EPIC_100_video_info.csv gives") as e:
            open_video(layout, "P01_01", info_fps)
        assert e.value.gist == video.FPS_MISMATCH


def test_a_frames_folder_runs_at_its_video_info_rate(tmp_path):
    _folder(tmp_path)
    layout = _layout(tmp_path, {"P01_01": 50.0})
    with open_video(layout, "P01_01") as r:
        assert isinstance(r, FramesFolderReader) and r.fps == 50.0
    with open_video(layout, "P01_01", 59.94) as r:  # a rate given wins
        assert r.fps == 59.94


def test_frames_still_in_their_tar_say_how_to_extract_them(tmp_path):
    layout = _layout(tmp_path)
    tar = tmp_path / "P01" / "rgb_frames" / "P01_01.tar"
    tar.parent.mkdir(parents=True)
    tar.write_bytes(b"\0" * 1024)
    with pytest.raises(VideoUnreadable, match="rgb_frames not extracted from their tar") as e:
        open_video(layout, "P01_01", 50.0)
    assert e.value.fix == f"extract them: {layout.untar_command('P01_01')}"


def test_padding_before_a_marker_is_at_most_eight_bytes():
    assert not video._jpeg_damage("Corrupt JPEG data: 8 extraneous bytes before marker 0xd9")
    assert video._jpeg_damage("Corrupt JPEG data: 9 extraneous bytes before marker 0xd9")
    assert video._jpeg_damage("Corrupt JPEG data: 1 extraneous bytes before marker 0xd0")  # (a restart marker)


def test_a_missing_path_is_not_permission_denied(tmp_path):
    assert not video.permission_denied(tmp_path / "nothing.MP4")
    (tmp_path / "here.MP4").write_bytes(b"x")
    assert not video.permission_denied(tmp_path / "here.MP4")


class _Capture:
    """A real capture with some of its answers replaced (what a damaged or odd file makes OpenCV say)."""

    def __init__(self, cap, **answers):
        self.cap, self.answers = cap, answers

    def get(self, prop):
        return self.answers.get(f"get_{prop}", self.cap.get(prop))

    def set(self, prop, value):
        return self.answers.get(f"set_{prop}", self.cap.set(prop, value))

    def retrieve(self, *a):
        return self.answers["retrieve"] if "retrieve" in self.answers else self.cap.retrieve(*a)

    def __getattr__(self, name):
        return getattr(self.cap, name)


@pytest.mark.parametrize("prop", [cv2.CAP_PROP_FPS, cv2.CAP_PROP_FRAME_COUNT, cv2.CAP_PROP_FRAME_WIDTH,
                                  cv2.CAP_PROP_FRAME_HEIGHT])
def test_a_video_that_reports_no_fps_frames_or_size_is_refused(clip, monkeypatch, prop):
    real = video._capture
    monkeypatch.setattr(video, "_capture", lambda path, threads: _Capture(real(path, threads), **{f"get_{prop}": 0}))
    with pytest.raises(VideoUnreadable, match="video reports fps=") as e:
        VideoReader(clip, record="P01_01_1")
    assert e.value.gist == "the video reports no fps, frames or size"


def test_a_seek_the_file_refuses_and_a_frame_that_does_not_decode_are_errors_not_frames(clip):
    with VideoReader(clip, record="P01_01_1") as r:
        r._cap = _Capture(r._cap, **{f"set_{cv2.CAP_PROP_POS_FRAMES}": False})
        with pytest.raises(VideoUnreadable, match="cannot seek to frame 70") as e:
            r.read_frames([70])
        assert e.value.gist == "cannot seek in the video"
    with VideoReader(clip, record="P01_01_1") as r:
        r._cap = _Capture(r._cap, retrieve=(False, None))
        with pytest.raises(VideoUnreadable, match="the video ends or is corrupt at frame 4 \\(of 80 announced\\)"):
            r.read_frames([4])


def test_a_stray_file_in_a_frames_folder_is_no_crash(tmp_path):
    """A file manager's copy of a frame beside the frames (its name no frame number) is not a frame: the folder
    opens with its own frames (it raised a bare ValueError, a traceback)."""
    folder = _folder(tmp_path, numbers=range(1, 4))
    (folder / "frame_0000000003 (copy).jpg").write_bytes((folder / frame_filename(3)).read_bytes())
    (folder / "frame_0000000009.jpg.jpg").write_bytes((folder / frame_filename(3)).read_bytes())
    (folder / "frame_12.jpg").write_bytes((folder / frame_filename(3)).read_bytes())  # (no name frame_filename reads)
    r = FramesFolderReader(folder, 50.0)
    assert r.num_frames == 3 and _number(r.read_frames([3])[0]) == 3


@pytest.fixture(scope="module")
def cut(tmp_path_factory):
    """The clip with its index at the front (faststart), cut at 60% of its bytes: it opens, its late frames are gone."""
    folder = tmp_path_factory.mktemp("cut")
    whole = folder / "whole.mp4"
    write_mp4(whole, (_frame(i) for i in range(1, N + 1)), FPS, gop=12, container_options={"movflags": "faststart"})
    path = folder / "cut.mp4"
    path.write_bytes(whole.read_bytes()[:int(whole.stat().st_size * 0.6)])
    return path


def _dead_frame(e: pytest.ExceptionInfo) -> int:
    import re

    return int(re.search(r"corrupt at frame (\d+)", e.value.message).group(1))


def test_a_file_cut_short_is_decoded_from_its_start_once(cut):
    """Past the frame where decoding from the start failed, later reads fail at once (minutes a segment on an hour of
    1080p), also for that very frame and after earlier exact seeks; frames before it still read."""
    with VideoReader(cut, seek_gap=4) as r:
        rewinds = _spy_rewinds(r)
        assert _number(r.read_frames([20])[0]) == 20  # an exact seek, before the cut
        with pytest.raises(VideoUnreadable, match="the video ends or is corrupt at frame") as e:
            r.read_frames([N - 2])
        dead = _dead_frame(e)
        assert 20 < dead < N - 2 and rewinds == [1]
        for late in (N - 1, dead):
            with pytest.raises(VideoUnreadable) as again:
                r.read_frames([late])
            assert again.value.message == e.value.message
        assert rewinds == [1]
        # frames before it still read (the last of them may be the decoder's concealment of the packet cut in two)
        assert r.read_frames([dead - 1]).shape[0] == 1 and _number(r.read_frames([dead - 2])[0]) == dead - 2
        assert _number(r.read_frames([5])[0]) == 5
        r._cap = _Landing(r._cap)  # a seek to that very frame that lands elsewhere: no decode from the start either
        with pytest.raises(VideoUnreadable) as again:
            r.read_frames([dead])
        assert again.value.message == e.value.message and rewinds == [1]


@pytest.mark.parametrize("keep", [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
def test_decodable_frames_is_the_last_frame_that_decodes(tmp_path, keep):
    whole = tmp_path / "whole.mp4"
    write_mp4(whole, (_frame(i) for i in range(1, N + 1)), FPS, gop=12, container_options={"movflags": "faststart"})
    path = tmp_path / "cut.mp4"
    path.write_bytes(whole.read_bytes()[:int(whole.stat().st_size * keep)])
    announced, good = video.decodable_frames(path)
    assert announced == N and 1 <= good < N
    with VideoReader(path) as r:  # (frame good may be the decoder's concealment of the packet cut in two)
        assert r.read_frames([good]).shape[0] == 1 and _number(r.read_frames([good - 1])[0]) == good - 1
    with pytest.raises(VideoUnreadable), VideoReader(path) as r:
        r.read_frames([good + 1])


def _jpeg(i: int) -> bytes:
    return cv2.imencode(".jpg", cv2.cvtColor(_frame(i), cv2.COLOR_RGB2BGR))[1].tobytes()


def test_a_jpeg_cut_inside_its_headers_or_after_fill_bytes_is_cut_short(tmp_path):
    folder = _folder(tmp_path, numbers=range(1, 6))
    data = _jpeg(3)
    sos = data.index(b"\xff\xda")
    (folder / frame_filename(3)).write_bytes(data[:sos - 20])  # the headers themselves cut: no scan at all
    filled = _jpeg(4)[:2] + b"\xff" + _jpeg(4)[2:]  # a fill byte before the first marker (allowed by the standard)
    assert cv2.imdecode(np.frombuffer(filled, np.uint8), cv2.IMREAD_COLOR) is not None
    (folder / frame_filename(4)).write_bytes(filled[:-40])
    r = FramesFolderReader(folder, 50.0)
    for f in (3, 4):
        with pytest.raises(VideoUnreadable, match=f"frame {f} is cut short \\(a truncated JPEG\\)"):
            r.read_frames([f])
    (folder / frame_filename(4)).write_bytes(filled)
    assert _number(r.read_frames([4])[0]) == 4


def test_a_frames_folder_this_user_may_not_list_is_not_called_empty(tmp_path, monkeypatch):
    empty = tmp_path / "P01" / "rgb_frames" / "P01_01"
    empty.mkdir(parents=True)
    with pytest.raises(VideoUnreadable, match="holds no frame_\\*.jpg files"):
        FramesFolderReader(empty, 50.0)
    monkeypatch.setattr(video.os, "access", lambda path, mode: False)  # (the tests may run as root)
    with pytest.raises(VideoUnreadable, match="cannot be read: permission denied") as e:
        FramesFolderReader(empty, 50.0)
    assert f"chmod -R a+rX {empty}" in e.value.one_line()
