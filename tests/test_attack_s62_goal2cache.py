"""Goal 2's frame cache, cheaper (session 62, helper goal2cache): an entry's pieces joined once, and extract's
shrunk frames resized into the last segment's free images (and a full-size image only shrunk decoded into again),
so that fresh memory's page faults are not paid per frame. The bytes extract caches and build-shards stores are
the same as before."""

from __future__ import annotations

import weakref
import zlib

import numpy as np

from leap_cli.epic.layout import DatasetLayout
from leap_cli.extract.base import SegmentContext
from leap_cli.extract.runner import _Video, run_extract
from leap_cli.media.video import VideoReader, open_video, resize_short_side
from tests.test_extract_stage import _cfg, kitchen  # noqa: F401 (the 6-s kitchen, built once per module)


def test_resize_short_side_writes_into_a_free_image_only_of_the_results_shape():
    rng = np.random.default_rng(0)
    for h, w in ((360, 640), (720, 1280), (300, 533)):  # bilinear; halved then bilinear; odd: INTER_AREA
        im = rng.integers(0, 256, (h, w, 3), np.uint8)
        want = resize_short_side(im, 256)
        out = np.zeros_like(want)
        got = resize_short_side(im, 256, out)
        assert got is out and np.array_equal(got, want)
        wrong = np.full((10, 10, 3), 7, np.uint8)  # another shape: a new image, the free one untouched
        got = resize_short_side(im, 256, wrong)
        assert got is not wrong and np.array_equal(got, want) and (wrong == 7).all()
    small = rng.integers(0, 256, (144, 192, 3), np.uint8)
    assert resize_short_side(small, 144, np.zeros_like(small)) is small  # at its size: itself, as before


def _reading(kitchen, video, side):  # noqa: F811
    layout = DatasetLayout.open(kitchen)

    def images(seg):
        video.start_segment(seg, {})
        ctx = SegmentContext(layout=layout, segment=seg, fps=video.fps, clock=video.clock,
                             read_images=lambda n, s: video.images(list(n), s, seg), frame_size=lambda: video.size(seg))
        nums = ctx.segment_frames(5)
        with open_video(layout, seg.video_id) as reader:
            want = reader.read_frames(nums, side)[..., ::-1]  # the reader's own shrinking, in fresh memory
        return ctx.images_at_most(nums, side, "bgr"), want
    return images


def test_shrunk_frames_are_resized_into_the_last_segments_free_images_never_into_a_kept_one(kitchen):  # noqa: F811
    """The kitchen's 192x144 frames read at 96: a component keeps segment 0's images, which stay as they were;
    segment 1's, released, are the very images segment 2's frames are resized into, and hold the right pixels."""
    ann = DatasetLayout.open(kitchen).annotations()
    segs = [s for s in ann.segments("train") if s.video_id == "P01_01"]
    video = _Video(DatasetLayout.open(kitchen), "P01_01", ann.fps("P01_01"))
    images = _reading(kitchen, video, 96)
    try:
        kept, want = images(segs[0])
        assert kept[0].shape == (96, 128, 3)
        copies = [k.copy() for k in kept]
        second, want2 = images(segs[1])
        assert not {id(k) for k in kept} & {id(i) for i in second}
        assert all(np.array_equal(a, b) for a, b in zip(kept, copies)) and np.array_equal(np.stack(kept), want)
        assert np.array_equal(np.stack(second), want2)
        released = [weakref.ref(i) for i in second]
        del second
        third, want3 = images(segs[2])
        assert all(r() is not None and any(r() is i for i in third) for r in released)
        assert np.array_equal(np.stack(third), want3)
    finally:
        video.close()


def test_a_full_size_image_only_shrunk_is_decoded_into_again_one_also_read_at_full_size_is_not(kitchen,  # noqa: F811
                                                                                              monkeypatch):
    """Frames wanted only at 96 are decoded one after the other into the same full-size image (a new one each
    cost its page faults); a frame also wanted at full size keeps its own, and every image is the right frame."""
    decoded = []
    real = VideoReader.decode

    def recording(self, *a, **kw):
        for f, bgr in real(self, *a, **kw):
            decoded.append(bgr)
            yield f, bgr

    monkeypatch.setattr(VideoReader, "decode", recording)
    layout = DatasetLayout.open(kitchen)
    ann = layout.annotations()
    seg = next(s for s in ann.segments("train") if s.video_id == "P01_01")
    video = _Video(layout, "P01_01", ann.fps("P01_01"))
    try:
        ctx = SegmentContext(layout=layout, segment=seg, fps=video.fps, clock=video.clock,
                             read_images=lambda n, s: video.images(list(n), s, seg), frame_size=lambda: video.size(seg))
        nums = ctx.segment_frames(6)
        video.start_segment(seg, {n: {96} for n in nums} | {nums[2]: {96, None}})
        small = ctx.images_at_most(nums, 96, "bgr")
        full = ctx.images_at_most([nums[2]], None, "bgr")[0]
        assert len(decoded) == len(nums) and full is decoded[2]
        # frames 0-2 decoded into one image, which nums[2] keeps; frames 3-5 into a second one
        assert decoded[0] is decoded[1] is full and decoded[3] is decoded[4] is decoded[5] is not full
        with open_video(layout, "P01_01") as reader:
            assert np.array_equal(np.stack(small), reader.read_frames(nums, 96)[..., ::-1])
            assert np.array_equal(full, reader.read_frames([nums[2]])[0, ..., ::-1])
    finally:
        video.close()


def test_a_cache_entry_holds_the_bytes_of_the_format_before_and_shards_built_from_it_are_decodes(kitchen,  # noqa: F811
                                                                                                 tmp_path):
    """At --short-side 96 (the kitchen's frames shrunk, into recycled images from the second segment on): every
    entry is header, JPEGs, trailer and the CRC of all before it, as the entries of the code before were written
    (one bytes object then, three joins), and build-shards from the cache writes the tar bytes of its own decode."""
    from leap_cli.extract.cache import MAGIC, TRAILER, FrameCache
    from leap_cli.shards.writer import LayoutOpener, ShardSettings, build_shards

    cache = tmp_path / "fc"
    run_extract(_cfg(kitchen, tmp_path / "d.jsonl", components=("camera",), frame_cache=cache, cache_short_side=96))
    entries = sorted(cache.rglob("*.v3.s96q90.jpgs"))
    assert len(entries) == 3
    fc = FrameCache(cache, 16, 96, 90)
    for path in entries:
        data = path.read_bytes()
        count = int.from_bytes(data[len(MAGIC):len(MAGIC) + 4], "little")
        sizes = [int.from_bytes(data[len(MAGIC) + 4 + 12 * i + 8:len(MAGIC) + 4 + 12 * i + 12], "little")
                 for i in range(count)]
        numbers = [int.from_bytes(data[len(MAGIC) + 4 + 12 * i:len(MAGIC) + 4 + 12 * i + 8], "little")
                   for i in range(count)]
        blobs = fc.load(path.parent.name, path.name.split(".")[0], numbers)
        assert blobs is not None and [len(b) for b in blobs] == sizes and count == 16
        header = data[:len(MAGIC) + 4 + 12 * count]
        body = header + b"".join(blobs)  # the code before's bytes, from the same JPEGs
        assert data == body + TRAILER + zlib.crc32(body).to_bytes(4, "little")
    layout = DatasetLayout.open(kitchen)
    ann = layout.annotations()

    def build(out, frame_cache):
        return build_shards(ann.segments("train"), out=out, settings=ShardSettings("train", frames=16, short_side=96),
                            fps=ann.fps, opener=LayoutOpener(layout.root, layout.annotations_dir), cache=frame_cache)

    cached, decoded = build(tmp_path / "w1", fc), build(tmp_path / "w2", None)
    tars = sorted((tmp_path / "w1").rglob("*.tar"))
    assert tars and [p.read_bytes() for p in tars] == [p.read_bytes() for p in sorted((tmp_path / "w2").rglob("*.tar"))]
    assert cached.manifest["frame_sizes"] == decoded.manifest["frame_sizes"] == {"P01_01": [128, 96]}


def test_a_frames_folders_images_only_shrunk_are_not_kept_for_the_segment(tmp_path, monkeypatch):
    """A frames folder's reader decodes into no given image: of its full-size images read only shrunk, at most
    one is kept as a free image (not the whole segment's: 1080p frames are 6 MB each), and the shrunk frames are
    the folder's."""
    from leap_cli.media.video import FramesFolderReader
    from tests.test_attack_s60_frames60 import H, RECOG, make_root

    root = make_root(tmp_path / "k", 50.0, RECOG)
    decoded = []
    real = FramesFolderReader.decode

    def recording(self, *a, **kw):
        for f, bgr in real(self, *a, **kw):
            decoded.append(weakref.ref(bgr))
            yield f, bgr

    monkeypatch.setattr(FramesFolderReader, "decode", recording)
    layout = DatasetLayout.open(root)
    ann = layout.annotations()
    seg = ann.segments("validation")[1]
    video = _Video(layout, seg.video_id, ann.fps(seg.video_id))
    try:
        ctx = SegmentContext(layout=layout, segment=seg, fps=video.fps, clock=video.clock,
                             read_images=lambda n, s: video.images(list(n), s, seg), frame_size=lambda: video.size(seg))
        nums = ctx.segment_frames(8)
        video.start_segment(seg, {})
        small = ctx.images_at_most(nums, H // 2, "bgr")
        assert len(decoded) == 8 and sum(r() is not None for r in decoded) <= 1
        with open_video(layout, seg.video_id) as reader:
            assert np.array_equal(np.stack(small), reader.read_frames(nums, H // 2)[..., ::-1])
    finally:
        video.close()
