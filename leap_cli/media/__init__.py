"""Media I/O: video frames (OpenCV or rgb_frames folders) and audio windows (soundfile or the MP4's track).

Frame numbers come from the timing rule (``leap_cli.epic.timing``); media never imports from epic.
"""

from leap_cli.media.audio import AudioUnavailable, audio_source, read_audio, read_segment_audio, read_video_audio
from leap_cli.media.video import (FramesFolderReader, VideoReader, VideoUnreadable, decodable_frames, open_video,
                                  resize_short_side)

__all__ = ["AudioUnavailable", "audio_source", "read_audio", "read_segment_audio", "read_video_audio",
           "FramesFolderReader", "VideoReader", "VideoUnreadable", "decodable_frames", "open_video",
           "resize_short_side"]
