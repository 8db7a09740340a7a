"""Audio from a mutation run: the window read from a WAV/FLAC or an MP4's track (edges, channels, native rates,
the tolerance at the end), the rule classifier's levels, onsets, merging and texts, and PANNs CNN14 (the front end
against torch's STFT and Slaney's mel filters, the forward pass against the published architecture, AudioSet
names mapped to kitchen categories, the tagger's windows in time)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from leap_cli.epic.annotations import Segment
from leap_cli.errors import LeapError
from leap_cli.extract.audio import (AudioComponent, analyse, calibration, category_thresholds, dominant_sound,
                                    events_text, merge_windows, sound_timeline)
from leap_cli.extract.base import SegmentContext
from leap_cli.media import AudioUnavailable, read_audio, read_video_audio
from leap_cli.media.write import write_mp4

torch.set_num_threads(1)
SMALL = (8, 8, 16, 16, 32, 32)


def _tone_in(seconds: float, rate: int, on: float, off: float, amp: float = 0.5, hz: float = 440.0) -> np.ndarray:
    """Silence with a tone only inside [on, off) seconds."""
    t = np.arange(int(round(seconds * rate))) / rate
    return np.where((t >= on) & (t < off), amp * np.sin(2 * np.pi * hz * t), 0.0).astype(np.float32)


def _loud_span(x: np.ndarray, rate: int, level: float = 0.05) -> tuple[float, float]:
    idx = np.nonzero(np.abs(x) > level)[0]
    return idx[0] / rate, (idx[-1] + 1) / rate


# --- reading the window ------------------------------------------------------------------------------------

def test_a_wav_window_holds_the_tone_where_the_file_does(tmp_path):
    """A tone only inside 1.0-1.5 s of a 48 kHz file, read as 0.75-2.0 s at 16 kHz: it lies 0.25-0.75 s into the
    window (resampling rings a few samples at the edges, no more)."""
    wav = tmp_path / "a.wav"
    sf.write(wav, _tone_in(3.0, 48000, 1.0, 1.5), 48000, subtype="FLOAT")
    x = read_audio(wav, 0.75, 2.0, sample_rate=16000)
    assert x.shape == (20000,)
    a, b = _loud_span(x, 16000)
    assert abs(a - 0.25) < 0.002 and abs(b - 0.75) < 0.002
    exact = read_audio(wav, 1.0, 1.5, sample_rate=48000)  # the native rate: the file's samples themselves
    assert np.array_equal(exact, _tone_in(3.0, 48000, 1.0, 1.5)[48000:72000])


def test_a_stereo_file_is_the_mean_of_its_channels(tmp_path):
    """A tone on the left channel only: mono is the mean of the channels (half its amplitude), not one channel."""
    tone = _tone_in(1.0, 16000, 0.0, 1.0, amp=0.4)
    for left, right, want in ((tone, np.zeros_like(tone), 0.2), (np.zeros_like(tone), tone, 0.2), (tone, tone, 0.4)):
        wav = tmp_path / "s.wav"
        sf.write(wav, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
        x = read_audio(wav, 0.0, 1.0, sample_rate=16000)
        assert np.abs(x).max() == pytest.approx(want, abs=1e-3)


def test_bad_windows_are_refused(tmp_path):
    """A negative start (soundfile would count it from the end of the file) or an empty window is an error."""
    wav = tmp_path / "a.wav"
    sf.write(wav, _tone_in(2.0, 16000, 0.0, 2.0), 16000)
    for start, stop in ((-0.5, 1.0), (1.0, 1.0), (1.5, 1.0)):
        with pytest.raises(LeapError, match="bad audio window"):
            read_audio(wav, start, stop)


def test_a_file_short_of_the_segment_by_more_than_the_tolerance_is_cut_short(tmp_path):
    """LENGTH_TOLERANCE_S is 0.1 s: 0.05 s past the end is cut at the end; 0.15 s is a file cut short."""
    wav = tmp_path / "a.wav"
    sf.write(wav, _tone_in(2.0, 16000, 0.0, 2.0), 16000)
    assert read_audio(wav, 1.0, 2.05, sample_rate=16000).shape == (16000,)
    with pytest.raises(AudioUnavailable, match=r"the audio ends at 2\.00 s, before the segment does \(2\.15 s\)"):
        read_audio(wav, 1.0, 2.15)


@pytest.fixture(scope="module")
def mp4_48k(tmp_path_factory):
    """An MP4 whose track is at 48 kHz (as cameras record), a tone only inside 2.0-2.5 s of 4 s."""
    path = tmp_path_factory.mktemp("a48") / "clip.mp4"
    frames = (np.full((64, 64, 3), i * 2, np.uint8) for i in range(100))
    write_mp4(path, frames, 25.0, audio=_tone_in(4.0, 48000, 2.0, 2.5), audio_rate=48000, gop=25)
    return path


def test_an_mp4_track_at_48_khz_is_read_at_its_own_rate(mp4_48k):
    x = read_video_audio(mp4_48k, 1.5, 3.0, sample_rate=16000)
    assert x.shape == (24000,)
    a, b = _loud_span(x, 16000)
    assert abs(a - 0.5) < 0.01 and abs(b - 1.0) < 0.01  # the tone 0.5-1.0 s into the window (AAC smears a little)


def test_an_mp4_track_short_of_the_segment_is_cut_short(mp4_48k):
    """Past the end of the 4 s track by up to LENGTH_TOLERANCE_S the window is cut at its end (the result is
    shorter: nothing is made up); by more, or after the end, the file is cut short."""
    x = read_video_audio(mp4_48k, 3.5, 4.05, sample_rate=16000)
    assert 8000 <= x.shape[0] <= 8000 + 400  # 0.5 s, and at most an AAC frame (1024 samples at 48 kHz) of padding
    with pytest.raises(AudioUnavailable, match="the file is cut short"):
        read_video_audio(mp4_48k, 3.0, 4.2)
    with pytest.raises(AudioUnavailable, match="the file is cut short"):
        read_video_audio(mp4_48k, 5.0, 6.0)


# --- the rules' descriptor ---------------------------------------------------------------------------------

def test_loudness_is_dbfs_rms_every_quarter_second():
    """A sine of RMS 0.1 is -20 dBFS in every 0.25 s block (8 blocks in 2 s), a sine of RMS 0.01 -40 dBFS."""
    for rms, want in ((0.1, -20.0), (0.01, -40.0)):
        y = _tone_in(2.0, 16000, 0.0, 2.0, amp=rms * math.sqrt(2), hz=1000.0)
        a = analyse(y, 16000, gate=False)
        assert len(a["loudness_db"]) == 8
        assert all(abs(v - want) <= 0.5 for v in a["loudness_db"]), a["loudness_db"]


def test_quiet_noise_under_the_silence_level_is_silence():
    """Noise at -55 dBFS is under the -45 dBFS silence level: one silence event over the whole segment."""
    y = np.random.default_rng(0).standard_normal(32000) * 10 ** (-55 / 20)
    a = analyse(y.astype(np.float32), 16000)
    assert [e["label"] for e in a["events"]] == ["silence"]
    assert (a["events"][0]["start"], a["events"][0]["stop"]) == (0.0, 2.0)


def test_onsets_are_the_clicks_times():
    """Three clicks of 5 ms at 0.5, 1.0 and 1.5 s over a -70 dBFS floor: three onsets, each within 40 ms (a
    frame's half-length plus a hop) of its click."""
    rng = np.random.default_rng(1)
    y = rng.standard_normal(32000) * 10 ** (-70 / 20)
    for t in (0.5, 1.0, 1.5):
        i = int(t * 16000)
        y[i:i + 80] += 0.05 * rng.standard_normal(80)
    a = analyse(y.astype(np.float32), 16000)
    assert len(a["onsets"]) == 3, a["onsets"]
    assert all(abs(o - t) <= 0.04 for o, t in zip(a["onsets"], (0.5, 1.0, 1.5))), a["onsets"]



def _labels(y):
    return [e["label"] for e in analyse(y, 16000, gate=False)["events"]]


def test_bright_speech_is_speech():
    """Voiced (200 Hz pitch), syllables at 4 Hz, harmonics falling as 1/sqrt(k) up to 4 kHz: a centroid near
    1.1 kHz, under the rule's 1500 Hz, so speech throughout."""
    from tests.extract_signals import _band, _norm

    t = np.arange(48000) / 16000
    phase = 2 * np.pi * np.cumsum(200 + 30 * np.sin(2 * np.pi * 0.5 * t)) / 16000
    voice = sum(np.sin(k * phase) / np.sqrt(k) for k in range(1, 20))
    y = _norm(_band(voice, 90, 4000) * np.clip(np.sin(2 * np.pi * 4.0 * t), 0, None) ** 0.7, -22)
    assert _labels(y) == ["speech"]


def test_short_low_thuds_at_syllable_rate_are_chopping_not_speech():
    """Thuds (150 Hz, 20 ms decay) 4 times a second are periodic and modulated at syllable rate, but each loud
    stretch lasts ~40 ms, under the 60 ms of a syllable: chopping, not speech."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(48000) * 0.002
    tt = np.arange(3200) / 16000
    for h in np.arange(0.1, 3.0, 0.25):
        i = int(h * 16000)
        m = min(48000 - i, 3200)
        x[i:i + m] += (np.sin(2 * np.pi * 150 * tt) * np.exp(-tt / 0.02))[:m]
    from tests.extract_signals import _norm

    assert _labels(_norm(x, -22)) == ["chopping"]


def test_sizzling_that_swells_slowly_is_still_sizzling():
    """High-band noise (4-7.9 kHz) swelling by +-50 % once a second varies 1-3.5 dB within a window: still steady
    noise (under 4 dB) dominated by high frequencies, so sizzling."""
    from tests.extract_signals import _band, _norm

    t = np.arange(48000) / 16000
    y = _norm(_band(np.random.default_rng(0).standard_normal(48000), 4000, 7900) * (1 + 0.5 * np.sin(2 * np.pi * t)),
              -22)
    assert _labels(y) == ["sizzling"]



def test_steady_noise_no_rule_names_is_water_when_flat_else_scraping():
    """The last rule: steady (level varying 2 dB), neither high nor mid-band, not flat enough for the steady
    rules: running water above flatness 0.2, scraping under."""
    from leap_cli.extract.audio import classify

    ft = dict(level_db=-20.0, periodicity=0.0, centroid=3000.0, level_std=2.0, mod_syllable=0.1, burst_ms=0.0,
              tonal_db=10.0, crest_db=5.0, onsets_in_window=0, onset_rate=0.0, rhythm=0.0, onset_irregularity=1.0,
              top=0.1, flatness=0.15, mid=0.3, low=0.1)
    assert classify(ft) == "scraping" and classify({**ft, "flatness": 0.22}) == "running_water"
    assert classify({**ft, "level_std": 4.5}) == "rustling" and classify({**ft, "level_db": -46.0}) == "silence"
    # band-limited mid-frequency noise (not flat) is scraping, steady or not
    assert classify({**ft, "level_std": 4.5, "mid": 0.7, "flatness": 0.2}) == "scraping"


def test_a_quarter_second_segment_still_has_its_sound():
    """A segment shorter than one 0.5 s window is one window over all of it."""
    from tests.extract_signals import sound

    y = sound("running_water", 0.25, np.random.default_rng(0))
    assert analyse(y, 16000, gate=False)["events"] == [{"label": "running_water", "start": 0.0, "stop": 0.25}]



def test_a_windows_level_is_its_mean_power():
    """A window half at -20 dBFS and half silent is 3 dB under -20 (the power's mean, not its loudest frame)."""
    from leap_cli.extract.audio import analyse_windows

    y = _tone_in(1.0, 16000, 0.0, 0.5, amp=0.1 * math.sqrt(2), hz=1000.0)
    w = analyse_windows(y, 16000)
    assert [round(float(b - a), 3) for a, b in w["window_spans"]] == [0.375, 0.25, 0.375]
    levels = [f["level_db"] for f in w["window_features"]]
    assert abs(levels[0] + 20) < 0.3 and abs(levels[1] - (-20 - 10 * math.log10(2))) < 0.3 and levels[2] < -45


def test_the_gates_confidence_caps_each_feature():
    """Half the sum of squared z-scores, each capped at 100: one wild feature adds at most 50; the centroid is
    modelled on a log2 scale."""
    from leap_cli.extract.audio import confidence

    cal = {"features": ["level_db", "centroid"], "background": {"mean": [-40.0, 10.0], "std": [2.0, 0.5]}}
    assert confidence({"level_db": -36.0, "centroid": 1024.0}, cal) == pytest.approx(0.5 * 4)
    assert confidence({"level_db": 400.0, "centroid": 2048.0}, cal) == pytest.approx(0.5 * (100 + 4))



def test_a_sound_in_the_last_quarter_second_is_heard():
    """2 s whose last 0.25 s only holds noise: the last window (1.5-2.0 s) is analysed and speaks for the end."""
    from tests.extract_signals import sound

    rng = np.random.default_rng(0)
    y = np.concatenate([sound("silence", 1.75, rng), sound("running_water", 0.25, rng)])
    events = analyse(y, 16000, gate=False)["events"]
    assert events[0]["label"] == "silence" and events[-1]["label"] != "silence" and events[-1]["stop"] == 2.0



def test_several_channels_are_averaged():
    """A [samples, channels] signal with a tone on one channel of two is analysed as their mean: 6 dB down."""
    tone = _tone_in(2.0, 16000, 0.0, 2.0, amp=0.1 * math.sqrt(2), hz=1000.0)
    a = analyse(np.stack([np.zeros_like(tone), tone], axis=1), 16000, gate=False)
    assert all(abs(v - (-20 - 20 * math.log10(2))) <= 0.5 for v in a["loudness_db"]), a["loudness_db"]


def test_one_ringing_knock_is_clatter():
    """A single metal ring at 2.0 s in 4 s of a quiet room: one onset in its window (0.5 a second over the 2 s
    context, under the rate for a series) makes it impulsive, and its ringing partials make it clatter."""
    rng = np.random.default_rng(0)
    y = rng.standard_normal(64000) * 0.002
    tt = np.arange(8000) / 16000
    y[32000:40000] += sum(np.sin(2 * np.pi * f * tt) * np.exp(-tt / 0.08) for f in (1700.0, 2900.0, 4100.0, 5300.0))
    a = analyse(y.astype(np.float32), 16000, gate=False)
    assert len(a["onsets"]) == 1 and abs(a["onsets"][0] - 2.0) <= 0.04, a["onsets"]
    assert any(e["label"] == "clatter" and e["start"] <= 2.0 < e["stop"] for e in a["events"]), a["events"]


def test_a_blip_in_the_second_window_is_absorbed_too():
    events = merge_windows(["chopping", "speech", "chopping", "clatter"], [0.0, 0.375, 0.625, 0.875],
                           [0.375, 0.625, 0.875, 1.0])
    assert events == [{"label": "chopping", "start": 0.0, "stop": 0.88}, {"label": "clatter", "start": 0.88,
                                                                           "stop": 1.0}]


def test_the_dominant_sound_adds_up_all_its_events():
    """Chopping twice for 0.5 s (1.0 s in all) outweighs one clatter of 0.8 s."""
    events = [{"label": "chopping", "start": 0.0, "stop": 0.5}, {"label": "background", "start": 0.5, "stop": 1.0},
              {"label": "chopping", "start": 1.0, "stop": 1.5}, {"label": "clatter", "start": 1.5, "stop": 2.3}]
    assert dominant_sound(events) == "chopping"


def test_events_text_names_every_event_and_the_peak():
    events = [{"label": "chopping", "start": 0.0, "stop": 1.0}, {"label": "background", "start": 1.0, "stop": 1.5},
              {"label": "clatter", "start": 1.5, "stop": 2.0}]
    assert events_text(events, [-30.0, -10.4, -20.0], [0.2, 0.6, 1.7]) == (
        "rhythmic chopping 0.0-1.0 s, background only 1.0-1.5 s, clatter/impact 1.5-2.0 s (peak -10 dBFS, 3 onsets)")
    assert sound_timeline(events + [{"label": "silence", "start": 2.0, "stop": 3.0}]) == [
        {"start": 0.0, "stop": 1.0, "text": "sound: rhythmic chopping"},
        {"start": 1.5, "stop": 2.0, "text": "sound: clatter/impact"}]


def _segment():
    return Segment("P01_01_0", "P01", "P01_01", 0.0, 2.0, 1, 100)


def test_the_rules_record_says_each_categorys_threshold():
    ctx = SegmentContext(layout=None, segment=_segment(), fps=50.0,
                         read_audio=lambda sr: np.zeros(2 * sr, np.float32) + 1e-4)
    rec = AudioComponent().describe(ctx)
    cal = calibration()
    assert rec["source"] == "dsp-rules"
    assert rec["data"]["abstains_below"] == (category_thresholds(cal) if cal is not None else None)
    if cal is not None:
        assert set(rec["data"]["abstains_below"]) == {"clatter", "running_water", "sizzling", "chopping", "scraping",
                                                      "rustling", "speech"}


# --- PANNs CNN14 -------------------------------------------------------------------------------------------

def _slaney_filters(sr, n_fft, n_mels, fmin, fmax):
    """librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax) (htk=False, norm='slaney'), which PANNs' melW is:
    Slaney's mel scale (linear 200/3 Hz a mel below 1 kHz, then log steps of ln(6.4)/27), triangles over mel
    points equally spaced, each scaled to unit area."""
    def mel(f):
        return f / (200 / 3) if f < 1000 else 15 + math.log(f / 1000) / (math.log(6.4) / 27)

    def hz(m):
        return m * (200 / 3) if m < 15 else 1000 * math.exp((m - 15) * math.log(6.4) / 27)

    pts = np.array([hz(m) for m in np.linspace(mel(fmin), mel(fmax), n_mels + 2)])
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    out = np.zeros((n_fft // 2 + 1, n_mels))
    for i in range(n_mels):
        up = (freqs - pts[i]) / (pts[i + 1] - pts[i])
        down = (pts[i + 2] - freqs) / (pts[i + 2] - pts[i + 1])
        out[:, i] = np.maximum(0, np.minimum(up, down)) * 2 / (pts[i + 2] - pts[i])
    return out


def test_mel_filters_are_librosas_slaney_filters():
    from leap_cli.extract.audio_cnn14 import mel_filterbank

    w = mel_filterbank(32000, 1024, 64, 50, 14000)
    assert np.allclose(w, _slaney_filters(32000, 1024, 64, 50, 14000), rtol=1e-4, atol=1e-7)
    # unit area: the wide filters' weights times the bin spacing sum to 1
    assert np.allclose(w[:, 40:].sum(axis=0) * 32000 / 1024, 1.0, atol=0.02)


def test_the_front_end_is_a_centred_periodic_hann_stft_in_decibels():
    from leap_cli.extract.audio_cnn14 import Cnn14

    model = Cnn14(widths=SMALL).eval()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 8000)).astype(np.float32))
    power = model.spectrogram_extractor(x)  # [B,1,T,F]
    ref = torch.stft(x.double(), 1024, 320, window=torch.hann_window(1024, periodic=True, dtype=torch.float64),
                     center=True, pad_mode="reflect", return_complex=True).abs() ** 2  # [B,F,T]
    assert power.shape == (2, 1, 26, 513)
    assert torch.allclose(power[:, 0].double(), ref.transpose(1, 2), rtol=1e-3, atol=1e-2)
    # power in dB re 1.0: ten times the power is 10 dB more
    mel = model.logmel_extractor(power)
    assert torch.allclose(model.logmel_extractor(power * 10) - mel, torch.full_like(mel, 10.0), atol=1e-3)


def _randomise(state: dict) -> dict:
    """Random batch-norm statistics and affine terms (a fresh model's are the identity, which hides bn0)."""
    g = torch.Generator().manual_seed(1)
    for k, v in state.items():
        if k.endswith(("running_mean", "bias")) and v.dtype.is_floating_point:
            state[k] = torch.randn(v.shape, generator=g) * 0.3
        elif k.endswith("running_var") or (k.endswith(".weight") and ("bn" in k)):
            state[k] = torch.rand(v.shape, generator=g) * 1.5 + 0.5
    # bn0 with statistics of log-mel energies in dB, as the published model's are
    state["bn0.running_mean"] = torch.randn(state["bn0.running_mean"].shape, generator=g) * 10 - 30
    state["bn0.running_var"] = torch.rand(state["bn0.running_var"].shape, generator=g) * 100 + 50
    return state


def _reference_cnn14(state: dict, x: torch.Tensor) -> torch.Tensor:
    """PANNs' Cnn14.forward in eval mode (audioset_tagging_cnn, pytorch/models.py), on the state dict, in float64:
    logmel -> bn0 over mel bins -> 6 conv blocks (conv-bn-relu twice, avg-pool 2x2, the last 1x1) -> mean over
    mel -> max + mean over time -> relu(fc1) -> sigmoid(fc_audioset)."""
    s = {k: v.double() for k, v in state.items() if v.dtype.is_floating_point}
    spec = torch.stft(x.double(), 1024, 320, window=torch.hann_window(1024, periodic=True, dtype=torch.float64),
                      center=True, pad_mode="reflect", return_complex=True).abs() ** 2
    h = 10 * torch.log10(torch.clamp(spec.transpose(1, 2) @ s["logmel_extractor.melW"], min=1e-10))[:, None]

    def bn(h, p):
        return F.batch_norm(h, s[p + ".running_mean"], s[p + ".running_var"], s[p + ".weight"], s[p + ".bias"],
                            False, 0.0, 1e-5)

    h = bn(h.transpose(1, 3), "bn0").transpose(1, 3)
    for i in range(1, 7):
        b = f"conv_block{i}"
        h = F.relu(bn(F.conv2d(h, s[b + ".conv1.weight"], padding=1), b + ".bn1"))
        h = F.relu(bn(F.conv2d(h, s[b + ".conv2.weight"], padding=1), b + ".bn2"))
        h = F.avg_pool2d(h, (2, 2) if i < 6 else (1, 1))
    h = h.mean(dim=3)
    h = h.max(dim=2).values + h.mean(dim=2)
    h = F.relu(F.linear(h, s["fc1.weight"], s["fc1.bias"]))
    return torch.sigmoid(F.linear(h, s["fc_audioset.weight"], s["fc_audioset.bias"]))


def test_cnn14_computes_as_the_published_architecture(tmp_path):
    from leap_cli.extract.audio_cnn14 import AudioTagger, Cnn14

    torch.manual_seed(0)
    state = _randomise(Cnn14(widths=SMALL).state_dict())
    torch.save({"model": state, "labels": [f"Sound {i}" for i in range(527)]}, tmp_path / "Cnn14.pth")
    tagger = AudioTagger(tmp_path / "Cnn14.pth")  # widths read from the checkpoint's blocks
    x = torch.from_numpy(np.random.default_rng(2).standard_normal((2, 32000)).astype(np.float32) * 0.1)
    with torch.inference_mode():
        got = tagger.model(x).double()
    want = _reference_cnn14(state, x)
    assert got.shape == (2, 527) and 0.05 < float(want.std()) and torch.allclose(got, want, atol=1e-5)


# AudioSet display names (class_labels_indices.csv) -> the kitchen category leap says
AUDIOSET_KITCHEN = {
    "Speech": "speech", "Conversation": "speech", "Male speech, man speaking": "speech", "Silence": "silence",
    "Chopping (food)": "chopping", "Water tap, faucet": "running_water", "Sink (filling or washing)": "running_water",
    "Pour": "running_water", "Frying (food)": "sizzling", "Sizzle": "sizzling", "Scrape": "scraping",
    "Rub": "scraping", "Rustle": "rustling", "Crumpling, crinkling": "rustling", "Dishes, pots, and pans": "clatter",
    "Cutlery, silverware": "clatter", "Clatter": "clatter", "Knock": "clatter", "Chink, clink": "clatter",
    "Drawer open or close": "clatter", "Music": None, "Dog": None, "Microwave oven": None,
}


def test_audioset_names_map_to_kitchen_categories():
    from leap_cli.extract.audio_cnn14 import kitchen_category

    assert {n: kitchen_category(n) for n in AUDIOSET_KITCHEN} == AUDIOSET_KITCHEN


def _checkpoint(path, labels=None):
    from leap_cli.extract.audio_cnn14 import Cnn14

    torch.manual_seed(0)
    torch.save({"model": Cnn14(widths=SMALL).state_dict(), **({"labels": labels} if labels is not None else {})}, path)


def test_labels_must_be_one_per_output(tmp_path):
    from leap_cli.extract.audio_cnn14 import AudioTagger

    _checkpoint(tmp_path / "a.pth")
    csv = tmp_path / "labels.csv"
    csv.write_text("index,mid,display_name\n" + "".join(f"{i},/m/{i},Sound {i}\n" for i in range(526)))
    with pytest.raises(LeapError, match="526 labels for a model with 527 outputs"):
        AudioTagger(tmp_path / "a.pth", csv, widths=SMALL)
    _checkpoint(tmp_path / "b.pth", labels=[f"Sound {i}" for i in range(526)])  # the checkpoint's own, one short
    with pytest.raises(LeapError, match="carries no class names"):
        AudioTagger(tmp_path / "b.pth", widths=SMALL)


SR32 = 32000
NAMES = ["Music", "Chopping (food)", "Speech"] + [f"Thing {i}" for i in range(524)]


def _stub_tagger(tmp_path):
    """A tagger whose network is replaced by a rule: Music 0.95 everywhere (no kitchen sound), Chopping 0.9 in a
    window that is mostly loud, else 0.05."""
    from leap_cli.extract.audio_cnn14 import AudioTagger

    _checkpoint(tmp_path / "stub.pth", labels=NAMES)
    tagger = AudioTagger(tmp_path / "stub.pth", widths=SMALL)

    def net(chunks: torch.Tensor) -> torch.Tensor:
        p = torch.zeros(chunks.shape[0], 527)
        p[:, 0] = 0.95
        p[:, 1] = torch.where((chunks.abs() > 0.05).float().mean(dim=1) > 0.75, 0.9, 0.05)
        return p

    tagger.model = net
    return tagger


def test_tagger_windows_speak_for_their_central_half_second(tmp_path):
    """3 s with a loud tone only inside 1.0-2.5 s: of the 1 s windows every 0.5 s only those starting at 1.0 and
    1.5 s are mostly loud; each speaks for its central 0.5 s, so chopping is 1.25-2.25 s. Music, though more
    probable, is no kitchen sound: the next tag above the threshold names the window."""
    tagger = _stub_tagger(tmp_path)
    assert tagger.sample_rate == SR32
    out = tagger.tag(_tone_in(3.0, SR32, 1.0, 2.5))
    chop = [e for e in out["events"] if e["label"] == "chopping"]
    assert chop == [{"label": "chopping", "start": 1.25, "stop": 2.25}], out["events"]
    assert out["events"][0]["start"] == 0.0 and out["events"][-1]["stop"] == 3.0
    assert all(a["stop"] == b["start"] for a, b in zip(out["events"], out["events"][1:]))
    assert out["top_tags"][:2] == [{"label": "Music", "score": 0.95},
                                   {"label": "Chopping (food)", "score": round((2 * 0.9 + 3 * 0.05) / 5, 3)}]


def test_the_component_reads_the_models_rate_and_keeps_the_rules_loudness(tmp_path):
    tagger = _stub_tagger(tmp_path)
    asked = []

    def read(sr):
        asked.append(sr)
        return _tone_in(3.0, sr, 1.0, 2.5)

    ctx = SegmentContext(layout=None, segment=Segment("P01_01_0", "P01", "P01_01", 0.0, 3.0, 1, 150), fps=50.0,
                         read_audio=read)
    rec = AudioComponent(model=tagger).describe(ctx)
    assert asked == [SR32] and rec["status"] == "ok" and rec["source"] == "cnn14:stub.pth"
    assert len(rec["data"]["loudness_db"]) == 12  # 3 s in 0.25 s blocks
    assert rec["data"]["loudness_db"][0] < -100 and rec["data"]["loudness_db"][6] > -15
    assert any(abs(o - 1.0) <= 0.04 for o in rec["data"]["onsets"])  # the rules' onsets: the tone starts at 1.0 s
    assert {"start": 1.25, "stop": 2.25, "text": "sound: rhythmic chopping"} in rec["data"]["timeline"]


def test_cnn14_windows_without_a_kitchen_sound_are_background(tmp_path):
    """A window whose tags above the threshold are none of the kitchen's is background, as the rules call what they
    do not know: no timeline event, never the dominant sound (it was "other": "sound: other" in the timeline)."""
    tagger = _stub_tagger(tmp_path)
    ctx = SegmentContext(layout=None, segment=Segment("P01_01_0", "P01", "P01_01", 0.0, 3.0, 1, 150), fps=50.0,
                         read_audio=lambda sr: _tone_in(3.0, sr, 1.0, 2.5))
    data = AudioComponent(model=tagger).describe(ctx)["data"]
    assert [e["label"] for e in data["events"]] == ["background", "chopping", "background"]
    assert data["dominant"] == "chopping"  # (was "other": 2.0 s of it against 1.0 s of chopping)
    assert data["timeline"] == [{"start": 1.25, "stop": 2.25, "text": "sound: rhythmic chopping"}]
