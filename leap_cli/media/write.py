"""Writing media: MP4s (video and, optionally, an AAC audio track) with PyAV, for the synthetic kitchen and tests;
JPEG bytes of RGB frames, for the shards and the HTML pages."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Iterable

import numpy as np

from leap_cli.io import atomic_path, naming_target


def encode_jpeg(frame: np.ndarray, quality: int = 90, *, colour: str = "rgb") -> bytes:
    """A uint8 frame ``[H, W, 3]`` as JPEG bytes (OpenCV). ``colour``: the frame's channel order, "rgb" or
    "bgr" (OpenCV's own: encoded as it is, the same bytes as its RGB copy gives). An RGB frame's channels are
    swapped by ``cvtColor`` (a copy through a reversed-stride view cost as much as the encoding itself at
    256x144)."""
    import cv2

    if colour not in ("rgb", "bgr"):
        raise ValueError(f"encode_jpeg takes an rgb or bgr frame, not {colour}")
    bgr = np.ascontiguousarray(frame)
    if colour == "rgb":
        bgr = cv2.cvtColor(bgr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def _rate(fps: float) -> Fraction:
    # 29.97 -> 30000/1001, 59.94 -> 60000/1001, 50 -> 50 (EPIC's rates are NTSC or integer).
    ntsc = Fraction(round(fps * 1.001), 1) / Fraction(1001, 1000)
    if abs(float(ntsc) - fps) < 1e-3 and abs(round(fps) - fps) > 1e-3:
        return Fraction(round(fps * 1.001) * 1000, 1001)
    return Fraction(fps).limit_denominator(1001)


class Mp4Writer:
    """Write RGB uint8 frames ``[H, W, 3]`` one by one; the file appears atomically on ``close``.

    ``codec`` "mpeg4" is fast and small at low resolution; "libx264" for benchmarks. ``gop`` frames per keyframe.
    Audio (float32 mono in [-1, 1]) is encoded as AAC when ``audio`` is given to ``close``.
    """

    def __init__(self, path: str | Path, width: int, height: int, fps: float, *, codec: str = "mpeg4",
                 bit_rate: int = 400_000, gop: int = 30, audio_rate: int | None = None,
                 options: dict | None = None, container_options: dict | None = None):
        import av

        self.path = Path(path)
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        self._container = av.open(str(self._tmp), mode="w", format="mp4", options=container_options or {})
        self._stream = self._container.add_stream(codec, rate=_rate(fps))
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"
        self._stream.bit_rate = bit_rate
        self._stream.gop_size = gop
        self._stream.thread_count = 1  # deterministic bytes, and the machine is shared
        if options:
            self._stream.options = dict(options)
        self._audio = None
        if audio_rate:
            self._audio = self._container.add_stream("aac", rate=audio_rate)
            self._audio.layout = "mono"
            self._audio.bit_rate = 64_000
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        import av

        self._encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24"))

    def _encode(self, frame) -> None:
        try:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        except OSError as e:  # (a full disk: the error names the temp file being written, which is then deleted)
            raise naming_target(e, self.path)
        self.frames += 1

    def write_yuv420p(self, planes: np.ndarray) -> None:
        """Write one frame given as stacked yuv420p planes ``[H * 3 // 2, W]`` (skips the RGB conversion)."""
        import av

        self._encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(planes), format="yuv420p"))

    def close(self, audio: np.ndarray | None = None) -> None:
        import av

        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
            if self._audio is not None and audio is not None:
                rate = self._audio.rate
                samples = np.clip(np.asarray(audio, dtype=np.float32), -1, 1)
                step = 1024
                for i in range(0, samples.shape[0], step):
                    chunk = samples[i:i + step][None, :]  # [1, n] planar mono
                    af = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout="mono")
                    af.sample_rate = rate
                    af.pts = i
                    af.time_base = Fraction(1, rate)
                    for packet in self._audio.encode(af):
                        self._container.mux(packet)
                for packet in self._audio.encode():
                    self._container.mux(packet)
            self._container.close()
        except BaseException as e:
            try:  # (the trailer on a full disk fails again: the temp file is removed all the same)
                self._container.close()
            except Exception:  # noqa: BLE001 - the first error is the one said
                pass
            if isinstance(e, OSError):  # (the last packets, the audio, the trailer: named as the video, not the temp)
                naming_target(e, self.path)
            self._ctx.__exit__(type(e), e, e.__traceback__)
            raise
        self._ctx.__exit__(None, None, None)


    def abort(self) -> None:
        """Drop the partial file (nothing appears at ``path``)."""
        try:
            self._container.close()
        except Exception:  # noqa: BLE001 - the file is being thrown away
            pass
        err = RuntimeError("aborted")
        self._ctx.__exit__(RuntimeError, err, None)


def write_mp4(path: str | Path, frames: Iterable[np.ndarray], fps: float, *, audio: np.ndarray | None = None,
              audio_rate: int = 16000, **kw) -> int:
    """Write all ``frames`` (RGB uint8) to ``path``; returns the frame count."""
    it = iter(frames)
    first = next(it)
    h, w = first.shape[:2]
    writer = Mp4Writer(path, w, h, fps, audio_rate=audio_rate if audio is not None else None, **kw)
    writer.write(first)
    for f in it:
        writer.write(f)
    writer.close(audio)
    return writer.frames
