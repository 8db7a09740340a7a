"""Calibrate the DSP audio classifier's abstention on the honest synthetic kitchen's TRAINING videos only.

Every 0.5 s window of every training segment gets the rules' category and its features; its true label is the
kitchen sound event covering the window's centre, else ``background`` (room tone, fan, fridge hum, music,
babble: the truth's ``silence`` counts as background too). A diagonal Gaussian of the gate's features is
fitted to the background windows; the threshold on the distance from it (``audio.confidence``) is the lowest
that keeps the share of background windows passed as an event at or under ``--target`` (default 5%).
Writes ``leap_cli/resources/audio_dsp_calibration.json`` and prints the training figures; the validation split
is never read here (bench_extract.py reports it).

    python benchmarks/calibrate_audio.py [--data leap-work/bench-kitchen] [--videos 8] [--seed 0] [--target 0.05]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leap_cli.extract import audio as A  # noqa: E402
from leap_cli.extract.truth import load_truth, video_sounds  # noqa: E402
from leap_cli.io import atomic_write_json  # noqa: E402
from leap_cli.media.audio import read_audio  # noqa: E402

FEATURES = ["level_db", "centroid", "flatness", "flatness_loud", "low", "mid", "high", "top", "crest_db",
            "level_std", "onset_rate", "rhythm", "tonal_db", "burst_ms", "periodicity", "mod_syllable"]
MIN_STD = {"level_db": 1.0, "centroid": 0.1, "crest_db": 0.5, "level_std": 0.3, "onset_rate": 0.2,
           "tonal_db": 0.5, "burst_ms": 5.0}


def true_label(events: list[tuple[float, float, str]], a: float, b: float) -> str | None:
    """The sound covering the window's centre; ``background`` when no sound touches the window at all;
    None (not used) when a sound only touches it."""
    mid = (a + b) / 2
    for s, e, label in events:
        if s <= mid < e:
            return label
    return None if any(s < b and e > a for s, e, _ in events) else "background"


def windows(data: Path, split: str) -> list[tuple[str, str, dict]]:
    """(true label, rules' label, features) of every window of the split's segments (truth from the kitchen)."""
    truth = load_truth(data)
    events = video_sounds(truth)
    out = []
    for seg in truth.values():
        if seg["split"] != split:
            continue
        part = seg["video_id"].split("_")[0]
        y = read_audio(data / part / "audio" / f"{seg['video_id']}.wav", seg["start"], seg["stop"], A.SAMPLE_RATE)
        res = A.analyse(y, A.SAMPLE_RATE, gate=False)
        hop, window = 0.25, 0.5
        for k, (lab, ft) in enumerate(zip(res["window_labels"], res["window_features"])):
            a = seg["start"] + k * hop
            t = true_label(events.get(seg["video_id"], []), a, a + window)
            if t is not None:
                out.append((t, lab, ft))
    return out


def fit(rows: list[tuple[str, str, dict]], target: float) -> tuple[dict, dict]:
    x = np.array([A.gate_vector(ft, FEATURES) for t, _, ft in rows if t == "background"])
    floor = np.array([MIN_STD.get(f, 0.02) for f in FEATURES])
    cal = {"features": FEATURES, "threshold": 0.0,
           "background": {"mean": [round(float(v), 5) for v in x.mean(axis=0)],
                          "std": [round(float(v), 5) for v in np.maximum(x.std(axis=0), floor)], "windows": len(x)}}
    bg = [(lab, ft) for t, lab, ft in rows if t == "background"]
    scores = sorted(A.confidence(ft, cal) for lab, ft in bg if lab not in A.NOT_EVENTS)
    allowed = int(target * len(bg))  # background windows that may pass as events
    cal["threshold"] = round(float(scores[-allowed - 1]) + 1e-3, 3) if len(scores) > allowed else 0.0
    return cal, figures(rows, cal)


def figures(rows, cal) -> dict:
    passed = lambda lab, ft: lab not in A.NOT_EVENTS and A.confidence(ft, cal) >= cal["threshold"]  # noqa: E731
    bg = [(lab, ft) for t, lab, ft in rows if t == "background"]
    ev = [(t, lab, ft) for t, lab, ft in rows if t != "background"]
    return {"windows": len(rows), "background_windows": len(bg),
            "background_passed_as_event": round(sum(passed(lab, ft) for lab, ft in bg) / max(1, len(bg)), 4),
            "background_passed_ungated": round(sum(lab not in A.NOT_EVENTS for lab, _ in bg) / max(1, len(bg)), 4),
            "event_windows": len(ev),
            "event_windows_right": round(sum(passed(lab, ft) and lab == t for t, lab, ft in ev) / max(1, len(ev)), 4),
            "event_windows_right_ungated": round(sum(lab == t for t, lab, _ in ev) / max(1, len(ev)), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("leap-work/bench-kitchen"), help="honest synthetic kitchen")
    ap.add_argument("--videos", type=int, default=8, help="videos when the kitchen is built")
    ap.add_argument("--seed", type=int, default=0, help="kitchen seed when it is built")
    ap.add_argument("--target", type=float, default=0.05, help="share of background windows allowed through")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args()
    from leap_cli.synth.kitchen import KitchenConfig, build_kitchen

    build_kitchen(args.data, KitchenConfig(videos=args.videos, seed=args.seed))
    rows = windows(args.data, "train")
    cal, figs = fit(rows, args.target)
    cal["provenance"] = {"command": f"python benchmarks/calibrate_audio.py --videos {args.videos} --seed {args.seed} "
                                    f"--target {args.target}", "split": "train", "training_figures": figs}
    print(json.dumps(figs, indent=1))
    print("threshold", cal["threshold"])
    if not args.no_write:
        path = Path(__file__).resolve().parents[1] / "leap_cli" / "resources" / A.CALIBRATION
        atomic_write_json(path, cal)
        print("wrote", path)


if __name__ == "__main__":
    main()
