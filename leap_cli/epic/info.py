"""What a dataset root holds: the numbers ``leap info`` prints."""

from __future__ import annotations

from dataclasses import dataclass, field

from leap_cli.epic.layout import DatasetLayout


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
    missing: list[str] = field(default_factory=list)
    with_audio: int = 0
    with_hand_objects: int = 0
    with_object_detections: int = 0


def dataset_info(layout: DatasetLayout) -> tuple[list[SplitInfo], dict]:
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
            mp4, frames = layout.video_path(v), layout.frames_dir(v)
            info.with_mp4 += mp4 is not None
            info.with_frames += frames is not None
            if mp4 is None and frames is None:
                info.missing.append(v)
            info.with_audio += layout.audio_path(v) is not None
            info.with_hand_objects += layout.hand_objects_path(v) is not None
            info.with_object_detections += layout.object_detections_path(v) is not None
        splits.append(info)
    classes = {"verb_classes": len(ann.verbs), "noun_classes": len(ann.nouns),
               "tail_verbs": len(ann.tail_verbs), "tail_nouns": len(ann.tail_nouns),
               "unseen_val": len(ann.unseen_participants("val")),
               "videos_in_info": len(ann.video_info)}
    return splits, classes
