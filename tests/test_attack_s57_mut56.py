"""Attack (helper mut56): a hand-made mutation run over session 56's code: leap_cli/media/dsp.py (hann_stft,
find_peaks with _local_maxima and _keep_apart, _kaiser_lowpass, resample_poly and its blocks), media/audio.py's
``_finite`` and its two call sites (read_audio, read_video_audio), extract/audio.py's calls of dsp, and cli.py's
EAGAIN advice (``_OS_FIX``) and its one line for RuntimeError "can't start new thread".

102 mutants by hand (13 hann_stft, 23 find_peaks/_local_maxima/_keep_apart, 5 _kaiser_lowpass, 26 resample_poly,
16 _finite and its call sites, 8 extract.audio's calls, 11 cli), each run against tests/test_dsp.py,
test_attack_s56_s56audio.py, test_audio_events.py, test_media.py -k audio (dsp, audio) or test_attack_s56_s56nproc.py,
test_attack_h5leaks.py, test_attack_h8mut.py (cli). Killed before: 66 (one of them, span = up in resample_poly, only by
the 10-minute resampling test running past 400 s). Survivors: 36. Equivalent: 20 -
- hann_stft: y not cast to float64 first (the float64 window casts the frames anyway);
- find_peaks: ``spacing > 2`` (two local maxima are never adjacent, so distance 2 removes nothing), ``peaks.size > 0``,
  ``x.size < 2`` (two samples have no inner run), ``<=`` for either neighbour's ``<`` (neighbouring runs differ by
  construction; NaN compares false both ways), x not cast to float64 (comparisons only);
- _kaiser_lowpass without the ``cutoff *`` factor (h / h.sum() cancels it, within 1e-16);
- resample_poly: float64 left out of the dtype test (the else branch is float64); h not cast to x's float type (a
  float64 product rounded to float32: as close to scipy or closer; only memory and time change); one more zero of
  padding; ``hi = lo + span`` (x's windows end where the last output's reach ends: the slice is cut there);
  ``range(lo, lo + up)`` (an empty slice past the end); ``reversed_taps[first % up]`` (a block starts at a multiple of
  up); np.zeros for np.empty (every output is written);
- _finite: the dtype cast dropped (np.where of float32 and np.float32(0) is float32), ``<= 1`` for ``== 1`` (at
  least one bad sample there);
- Spectral.onsets ``flux.size < 2`` (analyse returns before 0.1 s; find_peaks finds nothing in under 3 samples);
- cli: the isinstance(RuntimeError) test dropped (only threading raises that message, as RuntimeError); "(ulimit -u)"
  dropped after "raise the limit" (the line names ulimit -u before it).
Killed by this file: 16 (hann_stft: 0 <= hop, hop < nperseg; find_peaks: int(distance); resample_poly: the copy, the
shortcut and the gcd dropped; _finite: no early return, bad.all(), the count fixed at 1, read_video_audio without
_finite or without its record; onsets without the audible filter; cli: ``in`` for ``==`` on the message, the rerun
words, the line's words, no traceback under --debug).

Each test below fails on at least one surviving mutant (named in its docstring) and passes on the code. The last
test is a strict xfail: a bug found on the way (the NaN-sample fix does not cover huge finite samples).
"""

from __future__ import annotations

import errno
import json
import logging
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from leap_cli.extract import audio as extract_audio
from leap_cli.media import audio as media_audio
from leap_cli.media import dsp
from tests.procs import leap_main


# ---- media.dsp -------------------------------------------------------------------------------------------------

def test_hann_stft_takes_frames_without_overlap_as_scipy_does():
    """hop == nperseg (noverlap=0) is a valid STFT (mutant: ``hop < nperseg`` refused it)."""
    import scipy.signal as ss

    y = np.random.default_rng(1).standard_normal(2000)
    f, _, z = ss.stft(y, fs=8000, nperseg=256, noverlap=0, boundary=None, padded=False)
    f2, z2 = dsp.hann_stft(y, 8000, 256, 256)
    assert np.array_equal(f2, f) and z2.shape == z.shape == (129, 7)
    assert np.max(np.abs(z2 - z)) < 1e-12


def test_hann_stft_refuses_a_hop_of_zero_naming_it():
    """hop 0 (``sr // 100`` at a rate under 100 Hz) is refused by the check that names it, not by numpy's "slice
    step cannot be zero" (mutant: ``0 <= hop``)."""
    with pytest.raises(ValueError, match=r"hop \(0\)"):
        dsp.hann_stft(np.zeros(600), 16000, 516, 0)


def test_find_peaks_rounds_a_fractional_distance_up_as_scipy_does():
    """scipy takes ``ceil(distance)``: peaks 2 apart under distance 2.5 are too close (mutant: ``int(distance)``)."""
    import scipy.signal as ss

    x = np.array([0, 3, 0, 2, 0, 0, 1, 0, 0, 0, 2, 0, 1, 0], dtype=float)
    for distance in (1.5, 2.0, 2.5, 3.2, 4.0):
        want = ss.find_peaks(x, height=0.5, distance=distance)[0]
        assert dsp.find_peaks(x, 0.5, distance).tolist() == want.tolist(), distance
    assert dsp.find_peaks(x, 0.5, 2.5).tolist() == [1, 6, 10]


def test_resample_poly_by_a_ratio_of_one_returns_a_copy_of_its_input():
    """up == down: scipy returns ``x.copy()``: the same samples exactly, in memory of their own (mutants: the copy
    dropped, which hands the caller's array back; the shortcut dropped, which filters it: 1e-17 off)."""
    rng = np.random.default_rng(2)
    # (magnitudes from 1e-6 to 1e6: a filter's 1e-17 side taps show beside a sample a million times larger)
    x64 = rng.standard_normal(1000) * 10.0 ** rng.integers(-6, 7, 1000)
    for x in (x64, x64.astype(np.float32)):
        for up, down in ((1, 1), (3, 3)):
            out = dsp.resample_poly(x, up, down)
            assert out.dtype == x.dtype and np.array_equal(out, x), (x.dtype, up, down)
            assert not np.shares_memory(out, x), (x.dtype, up, down)


def test_resample_poly_reduces_its_ratio_first():
    """(2, 6) is (1, 3): scipy divides both by their gcd before it designs the filter; so does dsp, and the two
    calls give the same samples (mutant: ``g = 1``, a filter of 121 taps instead of 61)."""
    import scipy.signal as ss

    x = np.random.default_rng(3).standard_normal(3000)
    for (up, down), (u, d) in (((2, 6), (1, 3)), ((320, 882), (160, 441)), ((4, 2), (2, 1))):
        assert np.array_equal(dsp.resample_poly(x, up, down), dsp.resample_poly(x, u, d)), (up, down)
        assert np.max(np.abs(dsp.resample_poly(x, up, down) - ss.resample_poly(x, up, down))) < 1e-12


# ---- media.audio._finite and where it is called -----------------------------------------------------------------

def _float_wav(path: Path, y: np.ndarray, rate: int) -> Path:
    sf.write(path, y.astype(np.float32), rate, subtype="FLOAT")
    return path


def test_a_clean_window_is_read_without_a_word(tmp_path, caplog):
    """Finite samples are passed on as they are, and nothing is said: every segment of every video is read
    (mutants: the early return dropped, or turned into ``bad.all()``: "0 audio samples are not a number ... the file is
    damaged" for every window)."""
    y = 0.1 * np.random.default_rng(4).standard_normal(48000)
    path = _float_wav(tmp_path / "P01_01.wav", y, 48000)
    with caplog.at_level(logging.DEBUG, logger="leap_cli.media.audio"):
        got = media_audio.read_audio(path, 0.0, 1.0, record="P01_01_0")
    assert got.shape == (16000,) and np.isfinite(got).all()
    assert not [r for r in caplog.records if r.name == "leap_cli.media.audio"], caplog.text
    same = np.random.default_rng(5).standard_normal(100).astype(np.float32)
    assert media_audio._finite(same, path, "r") is same


def test_the_warning_counts_every_bad_sample(tmp_path, caplog):
    """Three bad samples are said as three (mutant: the count fixed at 1; s56's test had one bad sample)."""
    y = (0.1 * np.random.default_rng(6).standard_normal(48000)).astype(np.float32)
    y[[100, 5000, 30000]] = [np.nan, np.inf, -np.inf]
    path = _float_wav(tmp_path / "P01_02.wav", y, 48000)
    with caplog.at_level(logging.WARNING, logger="leap_cli.media.audio"):
        got = media_audio.read_audio(path, 0.0, 1.0, record="P01_02_4")
    assert np.isfinite(got).all()
    said = caplog.text
    assert "3 audio samples are not a number" in said and "P01_02_4" in said and str(path) in said, said


def _aac_mp4(path: Path, y: np.ndarray, rate: int) -> Path:
    import av

    mono = np.ascontiguousarray(np.clip(y, -1, 1)[None], dtype=np.float32)
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=rate)
        s.layout = "mono"
        for i in range(0, mono.shape[1], 1024):
            f = av.AudioFrame.from_ndarray(np.ascontiguousarray(mono[:, i:i + 1024]), format="fltp", layout="mono")
            f.sample_rate, f.pts, f.time_base = rate, i, Fraction(1, rate)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def test_nan_in_a_videos_own_track_is_silence_and_named(tmp_path, caplog, monkeypatch):
    """The MP4 path calls ``_finite`` too: a decoder that hands back NaN/Inf (here put into PyAV's real decoded
    chunks) gives finite samples, the ones around it as the clean track's, and a warning naming the video and the
    record (mutants: read_video_audio without ``_finite``, or without the record; s56 tested the WAV path only)."""
    t = np.arange(48000) / 48000
    path = _aac_mp4(tmp_path / "P01_03.MP4", 0.3 * np.sin(2 * np.pi * 440 * t), 48000)
    clean = media_audio.read_video_audio(path, 0.2, 0.8, record="P01_03_1")
    decode = media_audio._decode_track

    def damaged(*a, **k):
        t0, chunks = decode(*a, **k)
        chunks = [c.copy() for c in chunks]
        for c in chunks:
            c[len(c) // 2] = np.nan
        chunks[len(chunks) // 2][:3] = np.inf
        return t0, chunks

    monkeypatch.setattr(media_audio, "_decode_track", damaged)
    with caplog.at_level(logging.WARNING, logger="leap_cli.media.audio"):
        got = media_audio.read_video_audio(path, 0.2, 0.8, record="P01_03_1")
    assert got.shape == clean.shape and np.isfinite(got).all()
    assert np.median(np.abs(got - clean)) < 1e-3  # (a few zeroed samples, not a silenced window)
    said = caplog.text
    assert str(path) in said and "P01_03_1" in said and "not a number" in said, said


# ---- extract.audio's use of dsp ---------------------------------------------------------------------------------

def test_flux_peaks_on_frames_under_the_audible_level_are_no_onsets():
    """Bursts at -60 dBFS in digital silence: the log-spectral flux jumps well over its threshold there, but the
    frames are under -50 dB, so ``onsets`` keeps none of those peaks; bursts at -10 dBFS are onsets (mutant: the
    ``audible`` filter after dsp.find_peaks dropped; no test had flux peaks on quiet frames)."""
    rng = np.random.default_rng(9)
    got = {}
    for amp in (0.3, 1e-3):
        y = np.zeros(32000)
        for s in (4000, 12000, 20000, 28000):
            y[s:s + 800] = amp * rng.standard_normal(800)
        sp = extract_audio.Spectral(y)
        assert sp.flux.max() > 5, (amp, sp.flux.max())  # (the peaks are there to be found)
        got[amp] = sp.onsets()
    assert got[1e-3].size == 0, got
    assert got[0.3].size >= 1 and all(min(abs(t - b) for b in (0.25, 0.75, 1.25, 1.75)) < 0.03 for t in got[0.3]), got


# ---- cli: EAGAIN and "can't start new thread" -------------------------------------------------------------------

def _raising(monkeypatch, exc: BaseException) -> None:
    """The command raises ``exc`` once leap's own options are read (``_note_options``, called by the app's callback
    after it set --debug)."""
    from leap_cli import cli

    def boom(ctx):
        raise exc

    monkeypatch.setattr(cli, "_note_options", boom)


def _lines(err: str) -> list[str]:
    return [x for x in err.splitlines() if x.strip()]


def test_eagain_says_the_process_limit_and_workers_in_one_line(monkeypatch, capsys):
    """fork/spawn's BlockingIOError(EAGAIN): exit 2, one line naming ulimit -u and --workers (mutants: the EAGAIN
    entry dropped, its --workers or ulimit -u left out)."""
    _raising(monkeypatch, BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable"))
    code, _, err = leap_main(monkeypatch, capsys, "info")
    lines = _lines(err)
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: Resource temporarily unavailable (the system refused a new process or thread")
    assert "ulimit -u" in lines[0] and "--workers" in lines[0] and "run the same command again" in lines[0], lines


def test_a_thread_that_cannot_start_is_one_line_and_exit_2(monkeypatch, capsys):
    """RuntimeError("can't start new thread") (a pool's threads under ulimit -u): one line saying a thread could
    not start and what to do, exit 2, no traceback (mutants: the branch dropped, exit 1, the traceback printed without
    --debug, the line's words)."""
    _raising(monkeypatch, RuntimeError("can't start new thread"))
    code, _, err = leap_main(monkeypatch, capsys, "info")
    lines = _lines(err)
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: cannot start a thread (the system refused a new process or thread"), lines
    assert "ulimit -u" in lines[0] and "--workers" in lines[0] and "again" in lines[0], lines


def test_a_thread_that_cannot_start_under_debug_shows_the_traceback_and_still_exits_2(monkeypatch, capsys):
    """--debug shows the traceback, as for every other error, and the status stays the user's 2 (mutant: the
    traceback never printed)."""
    _raising(monkeypatch, RuntimeError("can't start new thread"))
    code, _, err = leap_main(monkeypatch, capsys, "--debug", "info")
    assert code == 2, err
    assert "Traceback" in err and "RuntimeError: can't start new thread" in err, err
    assert _lines(err)[-1].startswith("error: cannot start a thread"), err


def test_another_runtime_error_is_not_taken_for_a_thread_limit(monkeypatch, capsys):
    """Only that message is the thread limit: another RuntimeError is a fault, its traceback shown, not the advice
    about ulimit -u."""
    _raising(monkeypatch, RuntimeError("can't start new thread pool: bad config"))
    with pytest.raises(RuntimeError, match="bad config"):
        leap_main(monkeypatch, capsys, "info")
    assert "ulimit -u" not in capsys.readouterr().err


# ---- a bug ---------------------------------------------------------------------------------------------------

def test_a_float_wav_with_huge_finite_samples_gives_finite_audio_and_json(tmp_path, caplog):
    """Was wrong: a run of samples near float32's largest (bytes 7F7F7F7F: 3.39e38, finite, so ``_finite`` passed
    them) overflowed in resample_poly's float32 product: inf in the 16 kHz samples, NaN in analyse's loudness_db,
    a JSONL record that is not JSON. Samples over ``MAX_SAMPLE`` are damage, read as silence and said."""
    y = (0.1 * np.random.default_rng(8).standard_normal(96000)).astype(np.float32)
    y[40000:40200] = np.frombuffer(b"\x7f\x7f\x7f\x7f", dtype=np.float32)[0]  # 3.39e38: finite, damaged
    path = _float_wav(tmp_path / "P01_05.wav", y, 48000)
    with np.errstate(all="ignore"):
        got = media_audio.read_audio(path, 0.0, 2.0, record="P01_05_0")
        out = extract_audio.analyse(got)
    assert np.isfinite(got).all(), int((~np.isfinite(got)).sum())
    json.dumps(out, allow_nan=False)
    assert "200 audio samples are not a number (NaN, infinite, or over 1e+20)" in caplog.text, caplog.text
