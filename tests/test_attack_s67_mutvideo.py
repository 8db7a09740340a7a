"""Attack on ``leap_cli/media/video.py`` (session 67, helper mutvideo): a hand-made mutation run (155 mutants) over
the readers of users' videos (VideoReader's seeks, grabs and failures; FramesFolderReader; the resizing and colour
helpers; the libjpeg catcher; open_video; typo_hint; decodable_frames), with tests for the survivors that were gaps.

Found a bug (fixed): a reader that had failed on a corrupt stretch in the middle of an MP4 went on grabbing from
where it believed it stood, while FFmpeg had gone on through the packets it could not decode: the next segments
within SEEK_GAP frames got frames shifted by the failed grabs (frame 142 returned as frame 118), silently. After a
failure the next frame is now sought.

Gaps closed (no bug behind them): stored_size and resize_short_side round to nearest alike (1920x1080 at 320 is 569
wide); odd sizes shrink by INTER_AREA without halving, factors under 2 and upscales bilinearly; a fresh reader counts
as decoding from the start, a failure after an exact seek does not; a file gone between reads is "cannot be
reopened"; a frames folder whose sampled frames all fail names the first; a frame cut inside its headers still
sizes the folder; padding between header segments is no cut; the libjpeg catcher's file is per forked process and
above fd 2 with stdin closed too; frames decode where it gets no file; the typo hint comes from the narration id
(and counts a video there as frames only); a file whose index is whole and no frame decodes has 0 decodable
frames; a frame the disk cannot read is refused naming it; a frame in another format under a .jpg name is sized by
decoding; DECODE_THREADS reaches the capture.

Left alive: equivalent mutants (square frames either branch, a same-size or exact-2x resize done another way, dead
branches such as the rewind of a sorted seek=False pass, a second midpoint rule of the bisection, one libjpeg line
per image) and three not worth a test: the plural of "frame(s)" in a size message, a DNL JPEG's height 0, and which
way the 2% fps tolerance is measured.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from leap_cli.epic.layout import DatasetLayout
from leap_cli.epic.timing import frame_filename
from leap_cli.media import video
from leap_cli.media.video import (FramesFolderReader, VideoReader, VideoUnreadable, open_video, resize_short_side,
                                  stored_size)
from leap_cli.media.write import write_mp4
from tests.test_video_reader import H, W, _frame, _number  # (frames that carry their number)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("mutvideo") / "clip.mp4"
    write_mp4(path, (_frame(i) for i in range(1, 201)), 50.0, gop=12)
    return path


def _spy_rewinds(reader: VideoReader) -> list[int]:
    rewinds: list[int] = []
    real = reader._rewind
    reader._rewind = lambda: (rewinds.append(1), real())[1]
    return rewinds


@pytest.mark.parametrize("gap", [0, 4, 64])
def test_seeking_and_decoding_from_the_start_give_the_frames_asked_for(clip, gap):
    """Frames returned are the frame numbers asked for, the same bytes whether sought or decoded from the start,
    with gaps just under, at and over the seek gap, backwards, repeated, and one reader kept across reads."""
    sets = [[1, gap + 1, gap + 2, gap + 3], [1, gap + 2], [1, gap + 3], [2, gap + 4, 2 * gap + 6],
            [200, 1, 130], [40, 40, 105, 104, 200], [13, 12, 25, 24, 121]]
    kept = VideoReader(clip, seek_gap=gap)
    with kept:
        for frames in sets:
            frames = [f for f in frames if f <= 200]
            with VideoReader(clip, seek_gap=gap) as fresh:
                decoded = fresh.read_frames(frames, seek=False)
            sought = kept.read_frames(frames)
            assert [_number(f) for f in sought] == frames
            assert np.array_equal(sought, decoded), frames


@pytest.fixture(scope="module")
def stretch(tmp_path_factory):
    """The clip (moov at the end) with a tenth of its bytes zeroed at 40%: frames in the middle do not decode."""
    folder = tmp_path_factory.mktemp("stretch")
    whole = folder / "whole.mp4"
    write_mp4(whole, (_frame(i) for i in range(1, 201)), 25.0, gop=12)
    data = bytearray(whole.read_bytes())
    a = int(len(data) * 0.4)
    data[a:a + len(data) // 10] = bytes(len(data) // 10)
    path = folder / "stretch.mp4"
    path.write_bytes(bytes(data))
    return path


def test_frames_read_after_a_corrupt_stretch_are_the_frames_asked_for(stretch):
    """A failed grab() leaves the capture past packets it could not decode: the reader kept grabbing from where it
    believed it stood, and the next segments within SEEK_GAP frames got frames shifted by the failed grabs (frame
    142 as frame 118), silently. After a failure, every frame read is the one asked for, or an error."""
    with VideoReader(stretch, record="P01_01_3") as r:
        failed_at, wrong, read_after = None, [], []
        for f in range(80, 201):
            try:
                got = _number(r.read_frames([f])[0])
            except VideoUnreadable:
                failed_at = failed_at or f
                continue
            if failed_at is not None:
                read_after.append(f)
                if got != f:
                    wrong.append((f, got))
    assert failed_at is not None and 120 > failed_at > 80  # (the stretch is there)
    assert wrong == []
    assert read_after and read_after[-1] == 200  # (frames past the stretch still read)


class _Capture:
    """A real capture whose grabs fail from frame ``fail_from`` on, and whose seeks land 3 frames early where
    ``land_early`` (a corrupt stretch; odd timestamps)."""

    def __init__(self, cap):
        self.cap, self.fail_from, self.land_early = cap, None, False

    def grab(self):
        if self.fail_from is not None and self.cap.get(cv2.CAP_PROP_POS_FRAMES) + 1 >= self.fail_from:
            return False
        return self.cap.grab()

    def set(self, prop, value):
        if prop == cv2.CAP_PROP_POS_FRAMES and self.land_early:
            value = max(0, value - 3)
        return self.cap.set(prop, value)

    def __getattr__(self, name):
        return getattr(self.cap, name)


def test_a_failure_after_an_exact_seek_does_not_condemn_the_frames_after_it(clip):
    """Only a failure of decoding from the start marks the frames from there on as unreachable (frames past a corrupt
    stretch may be reached by a seek): a seek that lands elsewhere decodes from the start instead of failing."""
    with VideoReader(clip, seek_gap=4) as r:
        assert _number(r.read_frames([20])[0]) == 20  # an exact seek
        r._cap = cap = _Capture(r._cap)
        cap.fail_from = 22
        with pytest.raises(VideoUnreadable, match="corrupt at frame 22"):
            r.read_frames([24])
        cap.fail_from, cap.land_early = None, True
        rewinds = _spy_rewinds(r)
        assert _number(r.read_frames([40])[0]) == 40
        assert rewinds == [1]


def test_a_fresh_reader_grabbing_from_frame_one_decodes_from_the_start(clip):
    """Frames grabbed from a new reader's first frame are decoded from the file's start: a failure there marks the
    frames from it on, and a later seek past it that lands elsewhere fails at once (no second decode from the
    start: minutes on an hour of 1080p)."""
    with VideoReader(clip, seek_gap=1000) as r:
        r._cap = cap = _Capture(r._cap)
        cap.fail_from = 30
        with pytest.raises(VideoUnreadable, match="corrupt at frame 30"):
            r.read_frames([35])
        cap.fail_from, cap.land_early = None, True
        rewinds = _spy_rewinds(r)
        r.seek_gap = 4
        with pytest.raises(VideoUnreadable, match="corrupt at frame 30"):
            r.read_frames([60])
        assert rewinds == []
        cap.land_early = False
        assert _number(r.read_frames([29])[0]) == 29


def test_a_video_gone_between_reads_is_said_so_not_called_cut(clip, tmp_path):
    """A decode from the start reopens the file: where it is gone (moved, unmounted), that is said, not "the video
    ends or is corrupt at frame 1" (a re-download)."""
    path = tmp_path / "P01_01.MP4"
    path.write_bytes(clip.read_bytes())
    with VideoReader(path) as r:
        assert _number(r.read_frames([5])[0]) == 5
        path.unlink()
        with pytest.raises(VideoUnreadable, match="the video cannot be reopened"):
            r.read_frames([3], seek=False)


@pytest.mark.parametrize("w,h,side", [(1920, 1080, 320), (1920, 1080, 224), (1280, 720, 288), (1440, 1080, 256),
                                      (640, 480, 300), (1080, 1920, 320), (480, 640, 300), (63, 45, 20),
                                      (45, 63, 20), (100, 30, 20), (30, 100, 20), (641, 359, 128)])
def test_stored_size_is_what_resize_short_side_gives_rounded_to_nearest(w, h, side):
    """stored_size names the shards' frame size before a frame is decoded; it must be the shape resize_short_side
    gives (both round to nearest: 1920x1080 at 320 is 568.9 wide, 569)."""
    short, long_ = min(w, h), max(w, h)
    expect_long = int(long_ * side / short + 0.5)
    expect = (expect_long, side) if h <= w else (side, expect_long)
    assert stored_size(w, h, side) == expect
    assert resize_short_side(np.zeros((h, w, 3), np.uint8), side).shape == (expect[1], expect[0], 3)


def test_odd_sizes_shrink_with_area_means_and_small_factors_bilinearly():
    """docs: halving (INTER_AREA) while the image is at least twice the target and its sides even, then bilinear;
    odd sizes are shrunk by INTER_AREA straight to the target (a halving of an odd side would skew the picture)."""
    rng = np.random.default_rng(7)
    odd = rng.integers(0, 256, (48, 63, 3), dtype=np.uint8)  # (its short side exactly twice the target)
    assert np.array_equal(resize_short_side(odd, 24), cv2.resize(odd, (32, 24), interpolation=cv2.INTER_AREA))
    odd = rng.integers(0, 256, (96, 127, 3), dtype=np.uint8)
    assert np.array_equal(resize_short_side(odd, 30), cv2.resize(odd, (40, 30), interpolation=cv2.INTER_AREA))
    even = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    half = cv2.resize(even, (64, 48), interpolation=cv2.INTER_AREA)
    assert np.array_equal(resize_short_side(even, 30), cv2.resize(half, (40, 30), interpolation=cv2.INTER_LINEAR))
    assert np.array_equal(resize_short_side(even, 144), cv2.resize(even, (192, 144), interpolation=cv2.INTER_LINEAR))


def _folder(root, numbers, write=None):
    folder = root / "P01" / "rgb_frames" / "P01_01"
    folder.mkdir(parents=True)
    for i in numbers:
        if write is None:
            cv2.imwrite(str(folder / frame_filename(i)), cv2.cvtColor(_frame(i), cv2.COLOR_RGB2BGR))
        else:
            (folder / frame_filename(i)).write_bytes(write)
    return folder


def test_a_frames_folder_whose_sampled_frames_all_fail_is_refused_naming_the_first(tmp_path):
    """Frames of zero bytes (a disk that filled during the untar): the folder is refused with the first sampled
    frame's cause, a VideoUnreadable (not a bare TypeError of ``raise None``)."""
    folder = _folder(tmp_path, range(1, 12), write=b"")
    with pytest.raises(VideoUnreadable, match="frame 1 is an empty file") as e:
        FramesFolderReader(folder, 50.0, record="P01_01_4")
    assert e.value.files == [folder / frame_filename(1)]


def test_a_missing_video_whose_segment_names_a_video_that_is_there_hints_a_typo(tmp_path):
    """extract opens a video with the segment's narration id apart from its record (the video's id): the hint comes
    from the narration id, and a video there as an rgb_frames folder only counts as there."""
    _folder(tmp_path, range(1, 4))
    (tmp_path / "annotations").mkdir()
    layout = DatasetLayout.open(tmp_path)
    with pytest.raises(VideoUnreadable, match="no video file or rgb_frames folder") as e:
        open_video(layout, "P01_11", 50.0, record="P01_11", narration_id="P01_01_7")
    assert "the narration id P01_01_7 names video P01_01, which is there" in e.value.fix
    with pytest.raises(VideoUnreadable) as e:
        open_video(layout, "P01_11", 50.0, record="P01_11_7")
    assert "names video" not in e.value.fix


def test_libjpeg_warnings_that_mean_damage():
    """libjpeg-turbo's warnings (jerror.h): those of damaged data are damage, the others are not."""
    for line in ("Premature end of JPEG file", "Corrupt JPEG data: premature end of data segment",
                 "Corrupt JPEG data: bad Huffman code", "Invalid SOS parameters for sequential JPEG",
                 "Inconsistent progression sequence for component 0 coefficient 1",
                 "Corrupt JPEG data: found marker 0xd9 instead of RST3",
                 "Corrupt JPEG data: 9 extraneous bytes before marker 0xda"):
        assert video._LIBJPEG.match(line) and video._jpeg_damage(line), line
    for line in ("Warning: unknown JFIF revision number 1.05", "Corrupt JPEG data: 3 extraneous bytes before marker "
                 "0xda", "Corrupt JPEG data: 8 extraneous bytes before marker 0xfe"):
        assert video._LIBJPEG.match(line) and not video._jpeg_damage(line), line


def test_a_frame_cut_inside_its_headers_still_sizes_the_folder(tmp_path):
    """A frame's size is read from its header (a frame cut short still has one); only a read of it is refused."""
    folder = _folder(tmp_path, range(1, 12))
    data = (folder / frame_filename(1)).read_bytes()
    (folder / frame_filename(1)).write_bytes(data[:data.index(b"\xff\xda")])  # the headers, no scan
    r = FramesFolderReader(folder, 50.0)
    assert (r.width, r.height, r.sized_by) == (W, H, [1, 6, 11])
    with pytest.raises(VideoUnreadable, match="frame 1 is cut short"):
        r.read_frames([1])
    assert _number(r.read_frames([2])[0]) == 2


def test_a_forked_worker_catches_libjpeg_lines_in_a_file_of_its_own():
    """The libjpeg catcher's file is per process: a worker forked after the parent decoded a frame shared the
    parent's file (one offset; one's truncation ate the other's warning, a damaged frame then passed as whole)."""
    import os

    parent = video._jpeg._file()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # (the child: says its file's inode, and leaves without pytest's teardown)
        try:
            os.write(w, str(os.fstat(video._jpeg._file()).st_ino).encode())
        finally:
            os._exit(0)
    os.close(w)
    child = int(os.read(r, 64) or b"0")
    os.close(r)
    os.waitpid(pid, 0)
    assert child and child != os.fstat(parent).st_ino


def test_libjpeg_lines_are_caught_with_stdin_and_stderr_closed():
    """With stdin and stderr closed (a daemon: 0<&- 2>&-) the catcher's file still goes above fd 2 (as fd 2 it would
    have been the process's stderr for good)."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; sys.path.insert(0, sys.argv[1]); from leap_cli.media.video import _jpeg; "
            "import os; os.write(1, str(_jpeg._file()).encode())")
    run = subprocess.run(f"{sys.executable} -c \"{code}\" {Path(__file__).parents[1]} 0<&- 2>&-", shell=True,
                         capture_output=True, text=True)
    assert run.returncode == 0 and int(run.stdout) > 2, run


def test_a_file_cut_right_after_its_index_decodes_no_frame(tmp_path):
    """leap info's decodable length of an H.264 file (EPIC's codec) cut just after its index (faststart): it opens,
    and not one frame decodes: 0, not 1."""
    whole = tmp_path / "whole.mp4"
    write_mp4(whole, (_frame(i) for i in range(1, 41)), 25.0, gop=12, codec="libx264", options={"preset": "veryfast"},
              container_options={"movflags": "faststart"})
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:data.index(b"mdat") + 16])
    assert video.decodable_frames(cut) == (40, 0)


def test_padding_between_a_frames_header_segments_is_no_cut(tmp_path):
    """A few bytes of padding between two header segments (some encoders write them; libjpeg says "2 extraneous
    bytes before marker 0xdb" and decodes the frame whole): the header walk stops there and leaves it to the
    decoder, it does not call the frame cut short."""
    folder = _folder(tmp_path, range(1, 4))
    data = (folder / frame_filename(2)).read_bytes()
    dqt = data.index(b"\xff\xdb")
    (folder / frame_filename(2)).write_bytes(data[:dqt] + b"\x00\x00" + data[dqt:])
    r = FramesFolderReader(folder, 50.0)
    assert _number(r.read_frames([2])[0]) == 2


def test_frames_decode_where_no_file_for_libjpegs_lines_can_be_had(tmp_path, monkeypatch):
    """Where the catcher gets no file (the process's file limit reached), a frame is decoded all the same, whole."""
    folder = _folder(tmp_path, range(1, 4))

    def no_file():
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(video._jpeg, "_file", no_file)
    assert _number(FramesFolderReader(folder, 50.0).read_frames([3])[0]) == 3


def test_a_frame_the_disk_cannot_read_is_refused_naming_it(tmp_path, monkeypatch):
    """An I/O error of a failing disk is a VideoUnreadable of that frame (its cause said), not a traceback."""
    from pathlib import Path

    folder = _folder(tmp_path, range(1, 4))
    r = FramesFolderReader(folder, 50.0, record="P01_01_2")
    real = Path.read_bytes

    def failing(self):
        if self.name == frame_filename(2):
            raise OSError(5, "Input/output error", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", failing)
    with pytest.raises(VideoUnreadable, match=r"frame 2 cannot be read \(Input/output error\)") as e:
        r.read_frames([1, 2])
    assert e.value.files == [folder / frame_filename(2)]


def test_frames_of_another_format_under_jpg_names_are_sized_by_decoding(tmp_path):
    """A frame that is no JPEG (PNG bytes under frame_*.jpg) has no JPEG header to read its size from: it is decoded,
    and its size is (height, width) as a JPEG's would be."""
    folder = tmp_path / "P01" / "rgb_frames" / "P01_01"
    folder.mkdir(parents=True)
    for i in range(1, 4):
        (folder / frame_filename(i)).write_bytes(cv2.imencode(".png", cv2.cvtColor(_frame(i), cv2.COLOR_RGB2BGR))[1])
    r = FramesFolderReader(folder, 50.0)
    assert (r.width, r.height) == (W, H) and _number(r.read_frames([3])[0]) == 3


def test_the_decode_threads_set_are_the_captures(tmp_path, monkeypatch):
    """DECODE_THREADS (workers set it) is the number of FFmpeg threads a large video's capture is opened with."""
    path = tmp_path / "over.mp4"
    write_mp4(path, (np.full((480, 656, 3), 100, np.uint8) for _ in range(2)), 25.0, gop=2)
    monkeypatch.setattr(video, "DECODE_THREADS", 2)
    with VideoReader(path) as r:
        assert r._cap.get(cv2.CAP_PROP_N_THREADS) == 2
        r.read_frames([2], seek=False)  # (reopened from the start: the same threads)
        assert r._cap.get(cv2.CAP_PROP_N_THREADS) == 2
