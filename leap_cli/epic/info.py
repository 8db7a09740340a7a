"""What a dataset root holds: the numbers ``leap info`` prints."""

from __future__ import annotations

from dataclasses import dataclass, field

from leap_cli.epic.layout import DatasetLayout

# EPIC's rgb_frames (ffmpeg -r 60, or 50) hold 4-18 frames more than duration x rate: +0.06 to +0.31 s on the 698
# videos of EPIC_100_frame_counts.csv (epic-kitchens-100-hand-object-bboxes; the two errata videos aside)
RGB_FRAMES_EXTRA_S = 0.5


@dataclass
class SplitInfo:
    split: str
    file: str
    segments: int = 0
    videos: int = 0
    verbs_used: int = 0
    nouns_used: int = 0
    with_mp4: int = 0
    with_frames: int = 0
    missing: list[str] = field(default_factory=list)  # neither MP4 nor rgb_frames folder nor tar
    tarred: list[str] = field(default_factory=list)  # rgb_frames only as the downloaded tar, not extracted
    with_audio_file: int = 0  # audio: P01/audio/VIDEO.wav or .flac (the one extract reads first)
    with_audio_track: int = 0  # audio: no such file, but the MP4 carries its own track (EPIC's MP4s do)
    with_hand_objects: int = 0
    with_object_detections: int = 0
    with_poses_fields: int = 0  # camera poses: EPIC Fields' per-video JSON (the one the camera component reads first)
    with_poses_colmap: int = 0  # camera poses: a COLMAP images.txt or images.bin only


def dataset_info(layout: DatasetLayout) -> tuple[list[SplitInfo], dict]:
    """Per split, what the root holds for its videos. An MP4 without an audio file is opened (its header only:
    OpenCV, which the length check reads with, does not see audio streams) to count its own track."""
    from leap_cli.media.audio import has_audio_track

    ann = layout.annotations()
    splits = []
    for split in ("train", "val", "test"):
        if not ann.has_split(split):
            continue
        segs = ann.segments(split)
        videos = sorted({s.video_id for s in segs})
        info = SplitInfo(split, ann.split_path(split).name, len(segs), len(videos),
                         len({s.verb_class for s in segs if s.verb_class is not None}),
                         len({s.noun_class for s in segs if s.noun_class is not None}))
        for v in videos:
            mp4, frames = layout.video_path(v), layout.has_frames(v)  # (an empty frames folder is none)
            info.with_mp4 += mp4 is not None
            info.with_frames += frames
            if mp4 is None and not frames:
                (info.missing if layout.frames_tar(v) is None else info.tarred).append(v)
            if layout.audio_path(v) is not None:
                info.with_audio_file += 1
            elif mp4 is not None and has_audio_track(mp4):
                info.with_audio_track += 1
            info.with_hand_objects += layout.hand_objects_path(v) is not None
            info.with_object_detections += layout.object_detections_path(v) is not None
            poses = layout.poses_path(v)  # EPIC Fields JSON where present, else COLMAP images.txt or .bin
            info.with_poses_fields += poses is not None and poses.suffix == ".json"
            info.with_poses_colmap += poses is not None and poses.suffix != ".json"
        splits.append(info)
    classes = {"verb_classes": len(ann.verbs), "noun_classes": len(ann.nouns),
               "tail_verbs": len(ann.tail_verbs), "tail_nouns": len(ann.tail_nouns),
               "unseen_val": len(ann.unseen_participants("val")),
               "videos_in_info": len(ann.video_info)}
    return splits, classes


@dataclass
class LengthCheck:
    """A video whose decodable length disagrees with EPIC_100_video_info.csv (or that is not in it)."""

    video_id: str
    source: str  # "mp4" or "rgb_frames"
    expected_s: float | None  # video_info's duration (None: the video is not in it, and was not decoded)
    decoded_s: float | None  # what really decodes (None: nothing does, or not decoded)
    note: str


def check_lengths(layout: DatasetLayout, video_ids: list[str], *, tolerance_s: float | None = None) -> list[LengthCheck]:
    """Videos whose decodable length differs from video_info's duration by more than ``tolerance_s`` (an
    ``rgb_frames`` folder may be up to ``RGB_FRAMES_EXTRA_S`` longer, as EPIC's are).

    An MP4 is probed by decoding its last announced frame (and, when that fails, bisecting to the last frame that
    decodes: a truncated file announces frames it does not hold); an ``rgb_frames`` folder by its last frame file
    (EPIC's numbering, ``epic_frame_rate``)."""
    from leap_cli.epic.timing import LENGTH_TOLERANCE_S, epic_frame_rate
    from leap_cli.errors import LeapError
    from leap_cli.media.video import FPS_TOLERANCE, FramesFolderReader, VideoReader, decodable_frames

    tolerance_s = LENGTH_TOLERANCE_S if tolerance_s is None else tolerance_s
    ann = layout.annotations()
    out = []
    for vid in video_ids:
        info = ann.video_info.get(vid)
        mp4, frames = layout.video_path(vid), layout.has_frames(vid)
        if mp4 is None and not frames:  # (listed as missing or in their tar above)
            continue
        source = "mp4" if mp4 is not None else "rgb_frames"
        expected = info.duration if info else None
        if info is None:  # what the stages do then: extract/runner.py (VideoFrames), shards/writer.py (plan_samples)
            extract = ("extract reads the MP4 at its own fps" if mp4 is not None else
                       "extract reports its frames unavailable (a frames folder has no fps of its own)")
            out.append(LengthCheck(vid, source, None, None, f"not in EPIC_100_video_info.csv: {extract}, "
                                   "build-shards skips its segments (no timing); add its row "
                                   "(video_id,duration,fps,resolution)"))
            continue
        try:
            if mp4 is not None:
                with VideoReader(mp4, record=vid) as reader:  # (the header only)
                    file_fps = reader.fps
                if abs(file_fps / info.fps - 1) > FPS_TOLERANCE:
                    out.append(LengthCheck(vid, source, expected, None,
                                           f"the file runs at {file_fps:.2f} fps, not video_info's {info.fps:g}: the "
                                           "stages leave it out (use EPIC's original video: EPIC's frame numbers "
                                           "count at its rate)"))
                    continue
                announced, good = decodable_frames(mp4)
                decoded = good / info.fps
                note = (f"decodes {good} of the {announced} frames the file announces" if good < announced
                        else f"{good} frames")
            else:
                rate = epic_frame_rate(info.fps)
                n = FramesFolderReader(layout.frames_dir(vid), info.fps).num_frames
                decoded, note = n / rate, f"{n} frame files at {rate:g}/s"
        except LeapError as e:  # (VideoUnreadable among them)
            out.append(LengthCheck(vid, source, expected, None, e.message))
            continue
        longest = expected + (tolerance_s if mp4 is not None else RGB_FRAMES_EXTRA_S)
        if decoded < expected - tolerance_s or decoded > longest:
            out.append(LengthCheck(vid, source, expected, decoded, note))
    return out
