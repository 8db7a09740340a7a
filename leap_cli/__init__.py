"""leap: LLM-generated egocentric action programs (LEAP) for EPIC-KITCHENS-100."""

import os as _os

# FFmpeg inside OpenCV prints "moov atom not found" and the like straight to stderr, and OpenCV warns about the
# backend it could not use; leap reports a broken video in one line instead. Both are read when cv2 is first
# imported, so they are set here, before any leap module imports cv2 (a user's own setting wins).
_os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
_os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

__version__ = "0.1.0"
