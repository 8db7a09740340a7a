"""The one timing rule (leap_cli.epic.timing), pinned by real EPIC-KITCHENS-100 rows (tests/data/epic100)."""

from __future__ import annotations

import csv
import math
from types import SimpleNamespace

import numpy as np
import pytest

from leap_cli.epic.timing import (MP4, RGB_FRAMES, FrameClock, WindowOutside, clip_windows_before, epic_frame_rate,
                                  frames_for_window, parse_timestamp)
from tests.conftest import EPIC_EXCERPT

ROWS = [SimpleNamespace(narration_id=r["narration_id"], video_id=r["video_id"],
                        start=parse_timestamp(r["start_timestamp"]), stop=parse_timestamp(r["stop_timestamp"]),
                        start_frame=int(r["start_frame"]), stop_frame=int(r["stop_frame"]), fps=float(r["fps"]),
                        duration=float(r["duration"]))
        for r in csv.DictReader(open(EPIC_EXCERPT / "timing_rows.csv"))]


def test_rows_cover_epic_frame_rates():
    assert {round(r.fps, 2) for r in ROWS} == {59.94, 50.0, 29.97, 47.95, 90.0}


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.narration_id)
def test_rgb_frames_use_the_csv_columns_as_epic_counts_them(row):
    clock = FrameClock(RGB_FRAMES, row.fps)
    assert clock.segment_span(row) == (row.start_frame, row.stop_frame)
    # EPIC counts at 50/s for the 50 fps videos and at 60/s for every other rate (59.94, 29.97, 47.95, 90)
    assert clock.rate == (50.0 if row.fps == 50.0 else 60.0) == epic_frame_rate(row.fps)
    assert abs(math.floor(row.start * clock.rate) - row.start_frame) <= 1
    assert abs(math.floor(row.stop * clock.rate) - row.stop_frame) <= 1


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.narration_id)
def test_mp4_frames_come_from_the_timestamps_through_the_true_fps(row):
    clock = FrameClock(MP4, row.fps, num_frames=int(row.duration * row.fps))
    first, last = clock.segment_span(row)
    # the first frame is the one shown at the start timestamp; the last starts before the stop timestamp
    assert clock.time_of(first) <= row.start + 1e-9 < clock.time_of(first) + 1 / row.fps
    assert clock.time_of(last) < row.stop <= clock.time_of(last) + 1 / row.fps + 1e-9
    w = clock.segment_window(row, 8)
    assert w.inside and len(w.frames) == 8 and w.frames[0] >= first and w.frames[-1] <= last
    assert all(row.start - 1 / row.fps <= t < row.stop for t in w.times)


def test_the_csv_columns_read_as_mp4_frames_drift_by_seconds():
    """The bug the rule fixes (issue 11): P24_09_346 is 2.25 s long, 1964.72 s into a 59.94 fps video."""
    row = next(r for r in ROWS if r.narration_id == "P24_09_346")
    mp4 = FrameClock(MP4, row.fps)
    assert mp4.time_of(row.start_frame) - row.start > 1.9  # the old reading started 1.95 s late
    assert abs(mp4.time_of(mp4.segment_span(row)[0]) - row.start) < 1 / row.fps
    assert abs(FrameClock(RGB_FRAMES, row.fps).time_of(row.start_frame) - row.start) < 2 / 60


def test_window_past_the_decodable_end_is_flagged_not_clamped():
    clock = FrameClock(MP4, 50.0, num_frames=3000)  # a 60 s video
    inside = frames_for_window(clock, 58.0, 59.9, 4)
    assert inside.inside and inside.reason is None and inside.require() is inside
    late = frames_for_window(clock, 327.0, 330.0, 4)
    assert not late.inside and late.frames[0] > 3000  # the frames of the window itself, not the last frame
    assert "after the decodable end of the video (60.00 s, 3000 frames)" in late.reason
    edge = frames_for_window(clock, 59.0, 61.0)
    assert not edge.inside and edge.first == 2951 and edge.last == 3050 and len(edge.frames) == 100
    with pytest.raises(WindowOutside, match="after the decodable end"):
        late.require()
    assert frames_for_window(FrameClock(MP4, 50.0), 327.0, 330.0).inside  # unknown length: no end check


def test_a_segment_that_stops_within_a_frame_of_the_videos_end_ends_at_its_last_frame():
    """P29_05_563 (EPIC_100_validation.csv) stops at 00:30:21.75; its video lasts 1821.7366 s
    (EPIC_100_video_info.csv) and decodes 109,195 frames at 59.94 fps: 13 ms, less than a frame, past the end. Its
    window was "0.02 s after the decodable end", and the segment lost its camera and its shard."""
    fps = 59.9400599400599
    seg = SimpleNamespace(start=parse_timestamp("00:30:20.75"), stop=parse_timestamp("00:30:21.75"),
                          start_frame=109245, stop_frame=109305)
    clock = FrameClock(MP4, fps, num_frames=109195, duration=1821.7366)
    w = clock.segment_window(seg, 9, "spread")
    assert w.inside and w.last == 109195 and max(w.frames) == 109195
    later = SimpleNamespace(**{**vars(seg), "stop": seg.stop + 0.02})  # more than a frame past: the file's end
    assert not clock.segment_window(later, 9, "spread").inside
    cut = FrameClock(MP4, fps, num_frames=109195, duration=1830.0)  # a copy cut short: its end is not the video's
    assert not cut.segment_window(seg, 9, "spread").inside


def test_clip_windows_before_an_action():
    clock = FrameClock(MP4, 59.9400599400599, num_frames=33000)
    clips = clip_windows_before(clock, action_start=100.0, tau_a=1.0, clips=3, frames=256)
    assert [len(c.frames) for c in clips] == [256, 256, 256] and all(c.inside for c in clips)
    frames = [f for c in clips for f in c.frames]
    assert frames == list(range(frames[0], frames[0] + 768))  # contiguous, oldest first, no overlap
    assert clock.time_of(frames[-1]) < 99.0 <= clock.time_of(frames[-1] + 1)  # ends tau_a before the action
    early = clip_windows_before(clock, action_start=6.0, tau_a=1.0)  # 299 frames before 5 s: one clip fits
    assert not early[0].inside and "before the video" in early[0].reason
    assert [c.inside for c in early] == [False, False, True]
    rgb = clip_windows_before(FrameClock(RGB_FRAMES, 59.94), action_start=100.0, tau_a=1.0)
    assert rgb[-1].last == 5940  # EPIC's numbering counts at 60/s: 99 s -> frame 5941 is the first not taken


@pytest.mark.parametrize("fps", [59.94005994005994, 50.0, 29.97002997002997, 47.952047952047955, 90.0])
def test_epic_numbers_map_to_the_source_frame_ffmpeg_put_there(fps):
    """Hand-object boxes and EPIC Fields poses name frames in EPIC's numbering, made by ffmpeg's output ``-r 60``
    (``-r 50``): EPIC's frame n holds the MP4 frame nearest its time (for a 29.97 fps video, EPIC's frame 61 at
    1.0 s is the MP4's frame 31, at 1.001 s), and ``to_epic(f)`` is the EPIC frame nearest f, the one that holds it."""
    mp4, rgb, rate = FrameClock(MP4, fps), FrameClock(RGB_FRAMES, fps), epic_frame_rate(fps)
    for n in range(1, 20000, 97):
        f, t = mp4.from_epic(n), (n - 1) / rate
        assert mp4.time_of(f) < t + 0.5 / rate <= mp4.time_of(f + 1) + 1e-9  # the last frame rounded to n or before
        assert abs((mp4.to_epic(f) - 1) / rate - mp4.time_of(f)) <= 0.5 / rate + 1e-9  # the EPIC frame nearest f
        assert rgb.from_epic(n) == n and rgb.to_epic(n) == n
    if fps <= rate:  # every MP4 frame is in EPIC's numbering (at 90 fps ffmpeg drops a third of them)
        assert all(mp4.from_epic(mp4.to_epic(f)) == f for f in range(1, 5000))
    if abs(fps - 29.97) < 0.01:
        assert mp4.from_epic(61) == 31


def _fps_filter_extraction(path, rate: int) -> list[int]:
    """The MP4 frame (1-based, read from its pixels) in each frame of libavfilter's ``fps`` filter at ``rate``, which
    is what ffmpeg's output ``-r`` does (EPIC's ``ffmpeg -i P01_01.MP4 ... -r 60 frame_%010d.jpg``)."""
    av = pytest.importorskip("av")

    def number(frame) -> int:  # three 16-px columns hold the base-16 digits of the 0-based frame index
        cols = frame.to_ndarray(format="rgb24")[4:28, :, 0].astype(float)
        return 1 + sum(int(round(cols[:, 16 * j + 3:16 * j + 13].mean() / 16)) * 16 ** j for j in range(3))

    with av.open(str(path)) as video:
        stream = video.streams.video[0]
        graph = av.filter.Graph()
        src, fps, sink = graph.add_buffer(template=stream), graph.add("fps", f"fps={rate}"), graph.add("buffersink")
        src.link_to(fps)
        fps.link_to(sink)
        graph.configure()
        out = []
        for frame in [*video.decode(stream), None]:
            graph.push(frame)
            while True:
                try:
                    out.append(number(graph.pull()))
                except (av.BlockingIOError, av.EOFError):
                    break
    return out


@pytest.mark.parametrize("fps,frames", [(59.94005994005994, 520), (29.97002997002997, 270), (50.0, 100)])
def test_from_epic_matches_an_ffmpeg_r60_extraction(tmp_path, fps, frames):
    """EPIC's frame n (rgb_frames, hand-object boxes, EPIC Fields) holds the MP4 frame ``from_epic(n)``, checked on
    a real fps-filter extraction. 59.94 fps frame 501 (29.97 fps frame 251) lies half-way between two EPIC frames:
    the later one holds it, the earlier one the MP4 frame before."""
    from leap_cli.media.write import write_mp4

    def picture(k: int) -> np.ndarray:
        img = np.zeros((32, 48, 3), np.uint8)
        for j in range(3):
            img[:, 16 * j:16 * j + 16] = (k // 16 ** j % 16) * 16
        return img

    path = tmp_path / "v.MP4"
    write_mp4(path, (picture(k) for k in range(frames)), fps, bit_rate=2_000_000)
    rate = int(epic_frame_rate(fps))
    held = _fps_filter_extraction(path, rate)[:-2]  # the filter's last frames depend on the stream's end
    clock = FrameClock(MP4, fps, frames)
    assert len(held) >= frames - 2 and [clock.from_epic(n) for n in range(1, len(held) + 1)] == held
    assert all(clock.from_epic(clock.to_epic(f)) == f for f in range(1, frames + 1))
    # EPIC's last frames (-r writes a few past the video's length; their boxes exist) hold its last frame
    assert [clock.from_epic(clock.to_epic(frames) + k) for k in range(1, 4)] == [frames] * 3


def test_a_source_short_of_video_info_says_what_to_fetch_again():
    """A half-extracted frames folder was told "the file is cut short (download it again)"."""
    mp4 = FrameClock(MP4, 50.0, num_frames=100, duration=6.0).check(1, 150)
    frames = FrameClock(RGB_FRAMES, 50.0, num_frames=100, duration=6.0).check(1, 150)
    assert mp4.endswith("the file is cut short (download it again)")
    assert frames.endswith("the frames folder is short of frames (extract its rgb_frames tar again)")
    assert FrameClock(RGB_FRAMES, 50.0, num_frames=300, duration=6.0).check(1, 301).endswith("(6.00 s, 300 frames)")


def test_csv_frame_is_epics_column_convention():
    """EPIC_100_validation.csv's rows (tests/data excerpt's first two): start_frame is floor(timestamp x 60), at
    least 1 (the kitchen wrote the frame shown, one more: P03_02_0 at 1.34 s was 81 where EPIC writes 80)."""
    from leap_cli.epic.timing import csv_frame

    assert (csv_frame(0.0, 60), csv_frame(1.89, 60), csv_frame(1.56, 60), csv_frame(2.45, 60)) == (1, 113, 93, 147)
    assert csv_frame(1.34, 60) == 80 and csv_frame(1.34, 50) == 67
    # a product a hair under the frame in floating point (0.58 x 50 = 28.999999999999996) is still that frame,
    # and a time of more decimals is read as printed (1.666 s is 00:00:01.67: floor(100.2))
    assert csv_frame(0.58, 50) == 29 and csv_frame(2.05, 60) == 123 and csv_frame(1.666, 60) == 100


def test_timestamps_past_an_hour_and_rounded_to_epics_two_decimals():
    from leap_cli.epic.timing import format_timestamp, parse_timestamp

    assert parse_timestamp("01:02:03.45") == pytest.approx(3723.45)
    assert format_timestamp(3723.45) == "01:02:03.45"
    assert format_timestamp(0.29) == "00:00:00.29" and format_timestamp(1.15) == "00:00:01.15"  # rounded, not cut


def test_frame_columns_may_differ_from_the_timestamps_by_two_frames_not_three():
    """EPIC's own rows differ by at most 1; an edited CSV (an MP4 cut by its timestamps, a frames folder by its
    columns: two different clips) is said from 3 frames on."""
    from leap_cli.epic.timing import columns_disagree

    assert columns_disagree(1.56, 3.0, 95, 180, 59.94) is None  # 93 +2
    assert columns_disagree(1.56, 3.0, 96, 180, 59.94).startswith("start_frame 96 but its timestamp 00:00:01.56 "
                                                                  "is frame 93")
    assert columns_disagree(1.56, 3.0, 93, 177, 59.94).startswith("stop_frame 177")


def test_an_mp4_segment_stops_before_the_frame_shown_at_its_stop():
    """[start, stop): at 50 fps 1.00-2.00 s is frames 51-100 (frame 101 is shown from 2.00 s)."""
    assert FrameClock(MP4, 50.0).segment_span(SimpleNamespace(start=1.0, stop=2.0)) == (51, 100)


def test_a_window_starting_a_hair_before_the_video_is_outside():
    w = FrameClock(MP4, 60.0).window(-0.01, 0.5)
    assert w.first == 0 and not w.inside


def test_frame_sampling_modes():
    """spread: both ends and evenly between (rounded); random: one frame per chunk, each chunk's first possible."""
    from leap_cli.epic.timing import pick_frames

    class First:
        def integers(self, lo, hi):
            return lo

    class Last:
        def integers(self, lo, hi):
            return hi - 1

    assert pick_frames(1, 10, 3, "spread") == [1, 6, 10]
    assert pick_frames(1, 10, 3, "random", rng=First()) == [1, 4, 7]
    assert pick_frames(1, 10, 3, "random", rng=Last()) == [3, 6, 10]
    assert pick_frames(1, 10, 3, "uniform") == [2, 6, 9]  # the middle of each of 3 chunks


@pytest.mark.parametrize("fps", [50, 59.94, 60, 29.97, 47.95, 90, 30000 / 1001])
def test_a_frames_start_time_maps_back_to_that_frame(fps):
    """frame_to_time and time_to_frame are inverses: (k - 1) / fps times fps lands a hair under k - 1 in floating
    point for some k (30 at 50 fps, 62 at 59.94, 124 at 60), and a plain floor then gave the frame before."""
    from leap_cli.epic.timing import frame_to_time, time_to_frame

    wrong = [k for k in range(1, 20001) if time_to_frame(frame_to_time(k, fps), fps) != k]
    assert wrong == []
