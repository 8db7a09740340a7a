"""Media I/O: video frames (OpenCV or rgb_frames folders) and audio windows (soundfile or the MP4's track)."""

from leap_cli.media.audio import AudioUnavailable, audio_source, read_audio, read_segment_audio, read_video_audio
from leap_cli.media.video import (FramesFolderReader, VideoReader, open_video, read_window, resize_short_side,
                                  sample_frame_indices)

__all__ = ["AudioUnavailable", "audio_source", "read_audio", "read_segment_audio", "read_video_audio",
           "FramesFolderReader", "VideoReader", "open_video", "read_window", "resize_short_side",
           "sample_frame_indices"]
