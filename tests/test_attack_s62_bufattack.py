"""Session 62's reused memory in extract (helper bufattack): ``_Video`` decodes and resizes into the last segment's
images that nothing holds any more, and decodes the next frame into a full-size image only shrunk. Attacked with a
fake reader that decodes into a given image as OpenCV does (only one of the frame's shape): frames whose size
changes mid-stream, sides equal to the source's, upscaled, odd and 1-pixel, overlapping segments, reads outside
the plan, a decode failing mid-segment, and a component keeping images, views of them and lists past its
segment. Every image served, and every kept one, must hold its frame's pixels as a fresh decode and resize do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import leap_cli.media.video as video_mod
from leap_cli.errors import LeapError
from leap_cli.epic.annotations import Segment
from leap_cli.extract.base import FramesUnavailable
from leap_cli.extract.runner import _Video
from leap_cli.media.video import VideoUnreadable, resize_short_side
from tests.test_extract_stage import kitchen  # noqa: F401 (the 6-s kitchen, built once per module)

FPS = 10.0
N = 200


def _size(f: int) -> tuple[int, int]:
    """(h, w) of frame f: the stream's size changes twice (landscape, then odd portrait, then back)."""
    return (24, 32) if f <= 80 else (31, 19) if f <= 140 else (24, 32)


def _truth(f: int) -> np.ndarray:
    return np.random.default_rng(f).integers(0, 256, (*_size(f), 3), np.uint8)


class _Reader:
    """An MP4 reader as ``VideoReader`` behaves: ``into()`` asked once a frame, the image written into it only
    where it has the frame's shape (OpenCV reallocates otherwise); ``fail_at``: frames that do not decode."""

    def __init__(self):
        self.fps, self.num_frames, (self.height, self.width) = FPS, N, _size(1)
        self.record = None
        self.fail_at: set[int] = set()
        self.written_into = 0

    def decode(self, frames, *, into=None):
        for f in sorted(set(frames)):
            buffer = into() if into is not None else None
            if f in self.fail_at:
                raise VideoUnreadable(f"the video is corrupt at frame {f}", path=Path("v.MP4"))
            im = _truth(f)
            if buffer is not None and buffer.shape == im.shape:
                buffer[...] = im
                im, self.written_into = buffer, self.written_into + 1
            yield f, im

    def close(self):
        pass


class _Layout:
    def video_path(self, video_id):
        return Path(f"{video_id}.MP4")

    def mp4_size(self, video_id):  # (the size a record keeps: none, the fake reader reads no file)
        return None

    def annotations(self):
        raise LeapError("no annotations here")


@pytest.fixture
def video(monkeypatch):
    reader = _Reader()
    monkeypatch.setattr(video_mod, "open_video", lambda *a, **kw: reader)
    v = _Video(_Layout(), "V", FPS)
    yield v
    v.close()


def _seg(i: int, a: int, b: int) -> Segment:
    """Frames a..b (1-based) of the 10 fps video."""
    return Segment(f"V_{i}", "P", "V", (a - 1) / FPS, b / FPS, a, b)


SIDES = (None, 24, 12, 7, 1, 40, 19, 31, 17)  # as is, the source's, halved, odd, 1 px, upscaled, the portrait's


def test_every_image_served_or_kept_holds_its_frame_through_reused_memory(video):
    rng = np.random.default_rng(62)
    kept: list[tuple[np.ndarray, np.ndarray]] = []  # (what a component kept, a copy of it then)
    served = 0
    for i in range(40):
        a = int(rng.integers(1, N - 30))
        seg = _seg(i, a, a + int(rng.integers(3, 30)))  # overlapping windows, across the size changes
        frames = sorted({int(f) for f in rng.integers(seg.start_frame, seg.stop_frame + 1, 8)})
        plan = {f: {SIDES[int(k)] for k in rng.integers(0, len(SIDES), int(rng.integers(1, 4)))} for f in frames}
        video.start_segment(seg, plan)
        asks = [(f, s) for f, sides in plan.items() for s in sides]
        asks += [(int(f), SIDES[int(k)]) for f, k in zip(rng.integers(seg.start_frame, seg.stop_frame + 1, 4),
                                                         rng.integers(0, len(SIDES), 4))]  # outside the plan
        for n, (f, side) in enumerate(asks):
            im = video.images([f], side, seg)[0]
            served += 1
            assert np.array_equal(im, resize_short_side(_truth(f), side)), (i, f, side)
            if n % 5 == 0:  # kept past the segment: whole, as a view, in a list
                held = (im, im[: max(1, im.shape[0] // 2)], [im])[n % 3]
                kept.append((held, np.array(held[0] if isinstance(held, list) else held)))
        for (f, side), im in video._memo.items():  # the segment's images, after all its reads
            assert np.array_equal(im, resize_short_side(_truth(f), side)), (i, f, side)
        for held, copy in kept:
            assert np.array_equal(held[0] if isinstance(held, list) else held, copy), i
        if len(kept) > 12:
            del kept[: len(kept) - 12]  # released: their memory free for the next segments
    assert video.reader.written_into > 20  # memory was reused (else this test attacked nothing)
    assert served > 200


def test_a_segment_failing_mid_decode_leaves_the_next_ones_images_right(video):
    """Frame 30 does not decode: the segment's first read fails after some frames (their free images taken), a
    later read of a decodable frame and the next, overlapping, segment are served the right pixels."""
    seg0, seg1, seg2 = _seg(0, 10, 25), _seg(1, 26, 40), _seg(2, 20, 35)
    video.start_segment(seg0, {f: {7, None} for f in range(10, 26)})
    assert len(video.images(list(range(10, 26)), 7, seg0)) == 16
    video.reader.fail_at = {30}
    video.start_segment(seg1, {f: {7} for f in range(26, 41)})
    with pytest.raises(FramesUnavailable):
        video.images([26, 35], 7, seg1)
    assert np.array_equal(video.images([28], 7, seg1)[0], resize_short_side(_truth(28), 7))
    video.reader.fail_at = set()
    video.start_segment(seg2, {f: {7, 12} for f in range(20, 36)})
    for f in range(20, 36):
        for side in (7, 12):
            assert np.array_equal(video.images([f], side, seg2)[0], resize_short_side(_truth(f), side)), (f, side)


def test_opencv_decodes_into_an_image_only_of_the_frames_shape_as_the_fake_reader_does(kitchen):  # noqa: F811
    """The fake reader's premise: ``VideoReader.decode`` writes into the given image only where it has the frame's
    shape and layout; another shape (the stream's last size, transposed, four channels) is left as it was."""
    from leap_cli.media.video import VideoReader

    path = kitchen / "P01" / "videos" / "P01_01.MP4"
    with VideoReader(path) as reader:
        want = [im.copy() for _, im in reader.decode([5, 6, 7, 8])]
    given = [np.full(shape, 7, np.uint8) for shape in ((192, 144, 3), (144, 191, 3), (144, 192, 4), (144, 192, 3))]
    free = iter(given)
    with VideoReader(path) as reader:
        got = [im for _, im in reader.decode([5, 6, 7, 8], into=lambda: next(free))]
    assert all(np.array_equal(g, w) for g, w in zip(got, want))
    assert [g is b for g, b in zip(got, given)] == [False, False, False, True]
    assert all((b == 7).all() for b in given[:3])
