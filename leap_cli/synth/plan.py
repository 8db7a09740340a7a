"""The script of one synthetic video: its segments (verb, noun, times), camera motion and sound events.

Everything is drawn from a ``numpy`` generator seeded per video, so a seed gives the same script.
Times are seconds from the start of the video unless said otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from leap_cli.synth.world import FIXTURES, NOUN_FORMS, VERBS, follow_ups, narration_noun, visible_objects

YAW_LIMIT, PITCH_LIMIT = 45.0, 14.0


@dataclass
class CameraEvent:
    motion: str  # turn_left, turn_right, look_up, look_down, shake or still
    start: float  # absolute seconds
    stop: float
    degrees: float  # size of the rotation (shake: amplitude)


@dataclass
class SoundEvent:
    label: str
    start: float  # absolute seconds
    stop: float


@dataclass
class PlannedSegment:
    index: int
    verb: str
    noun: str
    verb_form: str
    noun_form: str
    start: float
    stop: float
    objects: list[str]
    distractor: str | None
    place: tuple[float, float]  # where the action happens, as an offset in degrees (yaw, pitch) from the view at start
    camera: list[CameraEvent] = field(default_factory=list)
    sound: list[SoundEvent] = field(default_factory=list)
    narration_delay: float | None = 0.3

    @property
    def duration(self) -> float:
        return self.stop - self.start

    @property
    def narration(self) -> str:
        return f"{self.verb_form.replace('-', ' ')} {narration_noun(self.noun_form)}"


@dataclass
class VideoPlan:
    video_id: str
    fps: float
    duration: float
    segments: list[PlannedSegment]
    speech: list[SoundEvent]


def _choose_action(rng: np.random.Generator, prev: tuple[str, str] | None) -> tuple[str, str]:
    if prev is not None and rng.random() < 0.6:
        options = follow_ups(*prev)
        if options:
            return options[int(rng.integers(len(options)))]
    verbs = list(VERBS)
    w = np.array([VERBS[v].weight for v in verbs])
    verb = verbs[int(rng.choice(len(verbs), p=w / w.sum()))]
    nouns = VERBS[verb].nouns
    return verb, nouns[int(rng.integers(len(nouns)))]


def _sound_events(verb: str, noun: str, start: float, stop: float) -> list[SoundEvent]:
    d = stop - start
    at = lambda a, b, label: SoundEvent(label, round(start + a * d, 3), round(start + b * d, 3))  # noqa: E731
    if verb == "put":
        return [at(0.55, 0.72, "clatter")]
    if verb == "close":
        return [at(0.75, 0.92, "clatter")]
    if verb == "turn-on":
        return [at(0.5, 1.0, "sizzling" if noun == "hob" else "running_water")]
    if verb == "turn-off":
        return [at(0.0, 0.5, "sizzling" if noun == "hob" else "running_water"), at(0.5, 1.0, "silence")]
    if verb == "pour":
        return [at(0.3, 0.85, "running_water")]
    spec = VERBS[verb]
    return [at(0.0, 1.0, spec.sound)]


def _camera_events(rng: np.random.Generator, start: float, stop: float, yaw: float, pitch: float
                   ) -> tuple[list[CameraEvent], float, float]:
    """0-2 camera motions inside a segment; returns them and the yaw/pitch after them."""
    d = stop - start
    n = int(rng.choice(3, p=[0.3, 0.5, 0.2]))
    if n == 0 or d < 1.0:
        return [CameraEvent("still", start, stop, 0.0)], yaw, pitch
    events = []
    slots = np.sort(rng.uniform(0.0, 1.0, size=2 * n)) if n else []
    for i in range(n):
        a, b = float(slots[2 * i]), float(slots[2 * i + 1])
        if b - a < 0.25:
            b = min(1.0, a + 0.25)
        t0, t1 = round(start + a * d, 3), round(start + b * d, 3)
        kind = rng.choice(["turn", "turn", "look", "shake"])
        if kind == "turn":
            deg = float(rng.uniform(8, 20))
            direction = "turn_right" if (yaw < -YAW_LIMIT / 2 or (rng.random() < 0.5 and yaw < YAW_LIMIT / 2)) else "turn_left"
            yaw += deg if direction == "turn_right" else -deg
            events.append(CameraEvent(direction, t0, t1, round(deg, 2)))
        elif kind == "look":
            deg = float(rng.uniform(4, 9))
            direction = "look_up" if (pitch < -PITCH_LIMIT / 2 or (rng.random() < 0.5 and pitch < PITCH_LIMIT / 2)) else "look_down"
            pitch += deg if direction == "look_up" else -deg
            events.append(CameraEvent(direction, t0, t1, round(deg, 2)))
        else:
            events.append(CameraEvent("shake", t0, t1, round(float(rng.uniform(1.0, 2.5)), 2)))
    return events, yaw, pitch


def plan_video(video_id: str, fps: float, num_segments: int, rng: np.random.Generator) -> VideoPlan:
    """Draw the script of one video: ``num_segments`` actions in plausible order, slightly overlapping at times."""
    t = round(float(rng.uniform(0.5, 1.5)), 2)
    prev = None
    yaw = pitch = 0.0
    segments = []
    nouns_all = sorted({n for v in VERBS.values() for n in v.nouns})
    for i in range(num_segments):
        verb, noun = _choose_action(rng, prev)
        spec = VERBS[verb]
        dur = round(float(rng.uniform(*spec.duration)), 2)
        start, stop = t, round(t + dur, 2)
        forms = NOUN_FORMS.get(noun, (noun,))
        objects = visible_objects(verb, noun)
        distractor = None
        if rng.random() < 0.7:
            candidates = [n for n in nouns_all if n not in objects and n not in ("water", "oil", *FIXTURES)]
            distractor = candidates[int(rng.integers(len(candidates)))]
        seg = PlannedSegment(
            index=i, verb=verb, noun=noun, verb_form=spec.forms[int(rng.integers(len(spec.forms)))],
            noun_form=forms[int(rng.integers(len(forms)))], start=start, stop=stop, objects=objects,
            distractor=distractor, place=(float(rng.uniform(-6, 6)), float(rng.uniform(-8, -2))),
            narration_delay=None if rng.random() < 0.03 else round(float(rng.uniform(-0.2, 0.6)), 3))
        seg.camera, yaw, pitch = _camera_events(rng, start, stop, yaw, pitch)
        seg.sound = _sound_events(verb, noun, start, stop)
        segments.append(seg)
        prev = (verb, noun)
        t = round(stop + float(rng.uniform(-0.25, 0.9)), 2)  # negative gap: the next action overlaps a little
        t = max(t, start + 0.3)
    duration = round(max(s.stop for s in segments) + 1.0, 2)
    speech = []
    for s in segments:
        if rng.random() < 0.06:
            a = round(s.start + float(rng.uniform(0, 0.5)) * s.duration, 3)
            speech.append(SoundEvent("speech", a, round(min(s.stop, a + float(rng.uniform(0.4, 1.0))), 3)))
    return VideoPlan(video_id, fps, duration, segments, speech)


def camera_track(plan: VideoPlan, num_frames: int, rng: np.random.Generator) -> np.ndarray:
    """Absolute (yaw, pitch, roll) in degrees per frame ``[num_frames, 3]`` from the planned camera events.

    Turns ease in and out; shake is a fast jitter that returns to where it started. Roll stays 0 (the renderer
    shifts the scene, it does not rotate it).
    """
    times = np.arange(num_frames) / plan.fps
    yaw = np.zeros(num_frames)
    pitch = np.zeros(num_frames)
    for seg in plan.segments:
        for ev in seg.camera:
            if ev.motion == "still":
                continue
            u = np.clip((times - ev.start) / max(ev.stop - ev.start, 1e-3), 0.0, 1.0)
            ease = 0.5 - 0.5 * np.cos(np.pi * u)  # 0 -> 1
            if ev.motion in ("turn_left", "turn_right"):
                yaw += ease * ev.degrees * (1 if ev.motion == "turn_right" else -1)
            elif ev.motion in ("look_up", "look_down"):
                pitch += ease * ev.degrees * (1 if ev.motion == "look_up" else -1)
            else:
                inside = (u > 0) & (u < 1)
                phase = float(rng.uniform(0, 2 * np.pi))
                env = np.sin(np.pi * u)
                yaw += inside * ev.degrees * np.sin(2 * np.pi * 7.0 * (times - ev.start) + phase) * env
                pitch += inside * 0.6 * ev.degrees * np.sin(2 * np.pi * 5.0 * (times - ev.start)) * env
    return np.stack([yaw, pitch, np.zeros(num_frames)], axis=1)
