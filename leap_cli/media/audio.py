"""Audio windows as float32 mono at a target sample rate.

From a WAV/FLAC file (soundfile reads only the window) or, where a video has no audio file, from the
MP4's own audio track (PyAV demuxes from a seek near the window). Resampling is polyphase
(``media.dsp.resample_poly``, scipy's filter in numpy). ``AudioUnavailable`` says that a segment has no audio at all, so a caller
can report the component as unavailable instead of failing.
"""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from leap_cli.errors import LeapError
from leap_cli.media.dsp import resample_poly

if TYPE_CHECKING:
    from leap_cli.epic.layout import DatasetLayout

log = logging.getLogger(__name__)


NO_AUDIO_FILE = "no-audio-file"  # the cause of a video's audio without a file where nothing holds its sound (an
# rgb_frames folder, an MP4 without a track): redone once something does


class AudioUnavailable(LeapError):
    """The segment has no audio: neither an audio file nor an audio track in its video, or the file cannot be read
    or ends before the segment does. ``file``: the file is at fault (unreadable, truncated, cut short), so a new
    copy may remove the cause (``leap extract --retry-errors`` redoes these)."""

    def __init__(self, message: str, *, file: bool = False, cause: str | None = None, **where):
        super().__init__(message, **where)
        self.file = file
        # what the record's data says (``leap extract --retry-errors``): "video" where the file is at fault,
        # "no-audio-file" where nothing holds its sound (an rgb_frames folder, an MP4 without a track): redone once
        # an audio file is placed, or an MP4 with a track
        self.cause = "video" if file else cause


def _unreadable(path: Path, record: str | None, what: str, e: BaseException) -> AudioUnavailable:
    """The file cannot be opened or decoded: for lack of permission, else damaged."""
    from leap_cli.media.video import DENIED, permission_denied

    if permission_denied(path):
        return AudioUnavailable(DENIED[0], file=True, path=path, record=record, fix=DENIED[1])
    return AudioUnavailable(what, file=True, path=path, record=record, fix=f"re-download or re-encode the file ({e})")


def _cut_short(ends: float | None, stop: float, path: Path, record: str | None) -> AudioUnavailable:
    """The audio ends at ``ends`` seconds (None: before the window), before the segment's ``stop``."""
    where = f"at {ends:.2f} s" if ends is not None else "before the segment starts"
    return AudioUnavailable(f"the audio ends {where}, before the segment does ({stop:.2f} s): the file is cut short",
                            file=True, path=path, record=record,
                            fix="download or extract the file again")


def _check_window(start: float, stop: float, path: Path, record: str | None) -> None:
    if start < 0 or stop <= start:
        raise LeapError(f"bad audio window [{start}, {stop}) seconds", path=path, record=record,
                        fix="start must be >= 0 and stop after start")


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Polyphase resampling of a 1-D float signal."""
    if from_rate == to_rate or samples.size == 0:
        return samples.astype(np.float32, copy=False)
    ratio = Fraction(int(to_rate), int(from_rate))
    return resample_poly(samples, ratio.numerator, ratio.denominator).astype(np.float32)


# A float sample beyond this is damage, not sound (full scale is 1; int32 PCM written as floats stays under 3e9):
# near float32's largest (bytes 7F7F7F7F, 3.4e38) the resampling filter's sums overflow to inf.
MAX_SAMPLE = 1e20


def _finite(samples: np.ndarray, path: Path, record: str | None) -> np.ndarray:
    """``samples`` with every NaN, infinite or absurdly large sample (a damaged float WAV: over ``MAX_SAMPLE``) read
    as silence, and said once per window: left in, one spread over the resampling filter's reach, emptied the
    segment's onsets and put NaN into its loudness (invalid JSON in the record)."""
    with np.errstate(invalid="ignore"):
        bad = ~(np.abs(samples) <= MAX_SAMPLE)  # (NaN compares false)
    if not bad.any():
        return samples
    log.warning("%s%s: %d audio sample%s not a number (NaN, infinite, or over %g), read as silence: the file is damaged (replace it to describe that sound)",
                path, f" ({record})" if record else "", int(bad.sum()), " is" if bad.sum() == 1 else "s are",
                MAX_SAMPLE)
    return np.where(bad, np.float32(0), samples).astype(samples.dtype, copy=False)


def _fit(samples: np.ndarray, n: int) -> np.ndarray:
    if samples.shape[0] >= n:
        return samples[:n]
    return np.pad(samples, (0, n - samples.shape[0]))


def read_audio(path: str | Path, start: float, stop: float, sample_rate: int = 16000, *,
               record: str | None = None) -> np.ndarray:
    """Samples of ``[start, stop)`` seconds of a WAV/FLAC file as float32 mono at ``sample_rate``.

    A window running past the end of the file by at most ``LENGTH_TOLERANCE_S`` is cut at the end (the result is
    then shorter); by more, the file is cut short (``AudioUnavailable``: nothing is made up for the rest).
    """
    import soundfile as sf

    from leap_cli.common import stops_held
    from leap_cli.epic.timing import LENGTH_TOLERANCE_S

    path = Path(path)
    _check_window(start, stop, path, record)
    # (stops held while soundfile works: its close frees libsndfile's handle and only then drops it, and a stop's
    # KeyboardInterrupt raised between left the freed handle to SoundFile.__del__, which closed it again as the
    # stage unwound: glibc's "double free or corruption", SIGABRT in place of the stop's line; ~1% of the stops
    # that come while it reads)
    try:
        with stops_held():
            info = sf.info(str(path))
    except (RuntimeError, sf.LibsndfileError, OSError) as e:
        raise _unreadable(path, record, "the audio file cannot be read (damaged or not WAV/FLAC)", e) from None
    native = int(info.samplerate)
    first = int(round(start * native))
    last = min(int(round(stop * native)), info.frames)
    if stop - info.frames / native > LENGTH_TOLERANCE_S:
        raise _cut_short(info.frames / native, stop, path, record)
    try:
        with stops_held():
            data, _ = sf.read(str(path), start=first, stop=last, dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError, OSError) as e:
        raise _unreadable(path, record, "the audio window cannot be decoded (truncated file?)", e) from None
    mono = data.mean(axis=1)  # [N]
    n_out = int(round((last - first) / native * sample_rate))
    return _fit(resample(_finite(mono, path, record), native, sample_rate), n_out)


def _decode_track(container, stream, native: int, start: float, stop: float, *, seek: bool,
                  rewind: bool = False) -> tuple[float | None, list[np.ndarray]]:
    """Decode the audio stream from a seek point near ``start`` (or the beginning) up to ``stop``, as mono float
    chunks at the native rate; returns the time of the first sample kept and the chunks."""
    import av

    to_mono = av.AudioResampler(format="flt", layout="mono", rate=native)
    if seek:
        container.seek(int(max(0.0, start - 0.5) * av.time_base))  # a point on or before start
    elif rewind:
        container.seek(0)
    chunks: list[np.ndarray] = []
    t0: float | None = None
    for frame in container.decode(stream):
        if frame.pts is None:
            continue
        ft = float(frame.pts * frame.time_base)
        if ft >= stop:
            break
        for out in to_mono.resample(frame):
            if t0 is None:
                t0 = ft
            chunks.append(out.to_ndarray().reshape(-1))  # packed mono float
    return t0, chunks


def has_audio_track(mp4_path: str | Path) -> bool:
    """Whether a video file holds an audio stream (its header only, nothing decoded); False when it does not
    open (``leap info``'s length check reports that)."""
    import av

    try:
        with av.open(str(mp4_path)) as container:
            return bool(container.streams.audio)
    except (av.error.FFmpegError, OSError):
        return False


def read_video_audio(mp4_path: str | Path, start: float, stop: float, sample_rate: int = 16000, *,
                     record: str | None = None) -> np.ndarray:
    """Samples of ``[start, stop)`` seconds of a video's own audio track, float32 mono at ``sample_rate``; as
    ``read_audio``, a track that ends more than ``LENGTH_TOLERANCE_S`` before ``stop`` (a file cut short) raises
    ``AudioUnavailable``."""
    import av

    from leap_cli.epic.timing import LENGTH_TOLERANCE_S

    path = Path(mp4_path)
    _check_window(start, stop, path, record)
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:
        raise _unreadable(path, record, "the video's audio cannot be read (truncated or corrupt file)", e) from None
    with container:
        if not container.streams.audio:
            raise AudioUnavailable("the video has no audio track", path=path, record=record, cause=NO_AUDIO_FILE,
                                   fix=f"to describe its sound, place its audio as {path.stem}.wav or .flac in "
                                       f"{path.parent.parent / 'audio'}, then extract with --retry-errors; without "
                                       "it the audio component is unavailable")
        stream = container.streams.audio[0]
        native = int(stream.rate or stream.codec_context.sample_rate)
        try:
            t0, chunks = _decode_track(container, stream, native, start, stop, seek=start > 0)
            if t0 is not None and t0 > start + 0.5 / native and start > 0:
                # The demuxer landed after the window: read from the beginning instead.
                t0, chunks = _decode_track(container, stream, native, start, stop, seek=False, rewind=True)
        except av.error.FFmpegError as e:
            raise _unreadable(path, record, "the video's audio track cannot be decoded (truncated or corrupt file)",
                              e) from None
    if t0 is None or not chunks:
        raise _cut_short(None, stop, path, record)
    samples = np.concatenate(chunks)
    if stop - (t0 + samples.shape[0] / native) > LENGTH_TOLERANCE_S:
        raise _cut_short(t0 + samples.shape[0] / native, stop, path, record)
    first = max(0, int(round((start - t0) * native)))
    last = min(samples.shape[0], int(round((stop - t0) * native)))
    window = samples[first:last]
    n_out = int(round(window.shape[0] / native * sample_rate))
    return _fit(resample(_finite(window, path, record), native, sample_rate), n_out)


def audio_source(layout: "DatasetLayout", video_id: str, *, record: str | None = None) -> Path:
    """Where a video's audio comes from: ``P01/audio/VIDEO.wav|.flac``, else the MP4 (its own track).

    Raises ``AudioUnavailable`` (naming the paths looked for) when neither exists.
    """
    audio = layout.audio_path(video_id)
    if audio is not None:
        return audio
    video = layout.video_path(video_id)
    if video is not None:
        return video
    looked = layout.given_root / layout.participant(video_id) / "audio" / f"{video_id}.wav"
    if layout.frames_dir(video_id) is not None:  # EPIC's frames download: JPEGs, no sound (no file at fault, so
        # --retry-errors does not redo every segment of the video, every time, for it)
        raise AudioUnavailable("no audio file (the video is an rgb_frames folder, which has no sound)", path=looked,
                               record=record or video_id, cause=NO_AUDIO_FILE,
                               fix=f"to describe its sound, place its audio as {looked.name} or .flac in "
                                   f"{looked.parent} (from its MP4, where you have one: ffmpeg -i {video_id}.MP4 -vn "
                                   f"-ac 1 {looked.name}), then extract with --retry-errors; without it the audio "
                                   "component is unavailable")
    # the file is at fault, as for the camera's missing video: --retry-errors redoes it once downloaded
    raise AudioUnavailable("no audio file and no video file", file=True, path=looked, record=record or video_id,
                           fix=f"looked for {looked.name} or .flac in "
                               f"{' and '.join(map(str, layout.audio_folders(video_id)))} and a video in "
                               f"{' and '.join(map(str, layout.videos_folders(video_id)))}; the audio component is "
                               "reported as unavailable")


def read_segment_audio(layout: "DatasetLayout", video_id: str, start: float, stop: float,
                       sample_rate: int = 16000, *, record: str | None = None) -> np.ndarray:
    """The window's audio (float32 mono) from the audio file or else the MP4's own track (see ``audio_source``).

    Raises ``AudioUnavailable`` when the video has neither an audio file nor an audio track.
    """
    src = audio_source(layout, video_id, record=record)
    if src.suffix.lower() in (".wav", ".flac"):
        return read_audio(src, start, stop, sample_rate, record=record or video_id)
    return read_video_audio(src, start, stop, sample_rate, record=record or video_id)
