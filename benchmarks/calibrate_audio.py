"""Calibrate the DSP audio classifier's abstention on the honest synthetic kitchen's TRAINING videos only.

Every 0.5 s window of every training segment gets the rules' category and its features; its true label is the
kitchen sound event covering the window's centre, else ``background`` (room tone, fan, fridge hum, music,
babble: the truth's ``silence`` counts as background too). A diagonal Gaussian of the gate's features is
fitted to the background windows. The threshold on the distance from it (``audio.confidence``) is the lowest
that keeps the false-event rate at or under ``--target`` (default 8%), measured as ``bench_extract.py`` measures
it: the share of background-only time (a 0.05 s grid, ``extract.truth.score``) where the gated, merged events
name a kitchen sound. The goal is <= 10%; the margin is for videos the calibration did not see.
Writes ``leap_cli/resources/audio_dsp_calibration.json`` and prints the training figures; the validation split
is never read here (bench_extract.py reports it).

    python benchmarks/calibrate_audio.py [--data leap-work/bench-kitchen] [--videos 8] [--seed 0] [--target 0.08]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leap_cli.extract import audio as A  # noqa: E402
from leap_cli.extract.truth import load_truth, score, video_sounds  # noqa: E402
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


def analysed(data: Path, split: str) -> tuple[dict, list[tuple[dict, dict]]]:
    """The kitchen's truth and, for each segment of the split, (its truth, its ungated window analysis)."""
    truth = load_truth(data)
    segs = []
    for seg in truth.values():
        if seg["split"] != split:
            continue
        part = seg["video_id"].split("_")[0]
        y = read_audio(data / part / "audio" / f"{seg['video_id']}.wav", seg["start"], seg["stop"], A.SAMPLE_RATE)
        segs.append((seg, A.analyse_windows(y, A.SAMPLE_RATE)))
    return truth, segs


def window_rows(truth: dict, segs: list[tuple[dict, dict]]) -> list[tuple[str, str, dict]]:
    """(true label, rules' label, features) of every window whose true label is clear."""
    events = video_sounds(truth)
    out = []
    for seg, res in segs:
        hop, window = 0.25, 0.5
        for k, (lab, ft) in enumerate(zip(res["window_labels"], res["window_features"])):
            a = seg["start"] + k * hop
            t = true_label(events.get(seg["video_id"], []), a, a + window)
            if t is not None:
                out.append((t, lab, ft))
    return out


def scored(truth: dict, segs: list[tuple[dict, dict]], cal: dict, thresholds: dict[str, float]) -> dict:
    """The audio figures of ``leap_cli.extract.truth.score`` (the ones bench_extract.py reports) for the events
    the gate gives with these per-category thresholds."""
    records = []
    for seg, res in segs:
        labels = A.gated_labels(res["window_labels"], res["window_features"], cal, thresholds)
        spans = res["window_spans"]
        events = A.merge_windows(labels, [x for x, _ in spans], [y for _, y in spans])
        records.append({"narration_id": seg["narration_id"],
                        "components": {"audio": {"status": "ok", "data": {"events": events}}}})
    return score(records, truth)["audio"]


def false_and_recall(audio: dict) -> tuple[float, dict[str, float]]:
    """Background-only seconds heard as an event, and each category's recall."""
    false = (audio["false_event_rate"] or 0.0) * audio["background_seconds"]
    return false, {c: v["recall"] or 0.0 for c, v in audio["per_category"].items()}


def fit(truth: dict, segs: list[tuple[dict, dict]], target: float, levels: int = 20) -> tuple[dict, dict]:
    """The background model, then one threshold per category: starting ungated, raise the category whose next
    step removes the most false-event time per second of its own sound lost, until the false-event rate on
    background-only time is within ``target`` (each category's recall counts alike, however long its sounds
    last). Each category's curve is measured with only its threshold
    raised (the candidates are quantiles of its windows' confidences); the result is checked by scoring it all."""
    rows = window_rows(truth, segs)
    x = np.array([A.gate_vector(ft, FEATURES) for t, _, ft in rows if t == "background"])
    floor = np.array([MIN_STD.get(f, 0.02) for f in FEATURES])
    cal = {"features": FEATURES, "threshold": 0.0,
           "background": {"mean": [round(float(v), 5) for v in x.mean(axis=0)],
                          "std": [round(float(v), 5) for v in np.maximum(x.std(axis=0), floor)], "windows": len(x)}}
    conf: dict[str, list[float]] = {}
    for _, res in segs:
        for lab, ft in zip(res["window_labels"], res["window_features"]):
            if lab not in A.NOT_EVENTS:
                conf.setdefault(lab, []).append(A.confidence(ft, cal))
    zero = {c: 0.0 for c in conf}
    base = scored(truth, segs, cal, zero)
    bg_s = base["background_seconds"] or 1.0
    f0, h0 = false_and_recall(base)
    curves: dict[str, list[tuple[float, float, float]]] = {}  # category -> [(threshold, false s removed, recall lost)]
    for c, vals in conf.items():
        cands = sorted({round(float(v) + 1e-3, 3) for v in np.quantile(vals, np.linspace(0, 1, levels + 1))})
        curves[c] = [(0.0, 0.0, 0.0)]
        for thr in cands:
            f, h = false_and_recall(scored(truth, segs, cal, {**zero, c: thr}))
            curves[c].append((thr, f0 - f, h0.get(c, 0.0) - h.get(c, 0.0)))
    at = {c: 0 for c in curves}
    chosen = dict(zero)
    while True:
        audio = scored(truth, segs, cal, chosen)
        if (audio["false_event_rate"] or 0.0) <= target:
            break
        best = None  # (false seconds removed per recall lost, category, level)
        for c, curve in curves.items():
            _, rf, rl = curve[at[c]]
            for k in range(at[c] + 1, len(curve)):
                gain, cost = curve[k][1] - rf, curve[k][2] - rl
                if gain > 1e-9:
                    ratio = gain / max(cost, 1e-3)
                    if best is None or ratio > best[0]:
                        best = (ratio, c, k)
        if best is None:
            break  # nothing left to gate: the target cannot be reached by thresholds alone
        at[best[1]] = best[2]
        chosen[best[1]] = curves[best[1]][best[2]][0]
    cal["thresholds"] = {c: chosen[c] for c in sorted(chosen)}
    return cal, figures(rows, truth, segs, cal) | {"false_event_rate_ungated": round(f0 / bg_s, 4)}


def figures(rows, truth, segs, cal) -> dict:
    thr = A.category_thresholds(cal)
    passed = lambda lab, ft: lab not in A.NOT_EVENTS and A.confidence(ft, cal) >= thr.get(lab, 0.0)  # noqa: E731
    bg = [(lab, ft) for t, lab, ft in rows if t == "background"]
    ev = [(t, lab, ft) for t, lab, ft in rows if t != "background"]
    audio = scored(truth, segs, cal, thr)
    return {"windows": len(rows), "background_windows": len(bg),
            "background_passed_as_event": round(sum(passed(lab, ft) for lab, ft in bg) / max(1, len(bg)), 4),
            "background_passed_ungated": round(sum(lab not in A.NOT_EVENTS for lab, _ in bg) / max(1, len(bg)), 4),
            "event_windows": len(ev),
            "event_windows_right": round(sum(passed(lab, ft) and lab == t for t, lab, ft in ev) / max(1, len(ev)), 4),
            "event_windows_right_ungated": round(sum(lab == t for t, lab, _ in ev) / max(1, len(ev)), 4),
            "background_seconds": audio["background_seconds"], "false_event_rate": audio["false_event_rate"],
            "recall": {c: v["recall"] for c, v in audio["per_category"].items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("leap-work/bench-kitchen"), help="honest synthetic kitchen")
    ap.add_argument("--videos", type=int, default=8, help="videos when the kitchen is built")
    ap.add_argument("--seed", type=int, default=0, help="kitchen seed when it is built")
    ap.add_argument("--target", type=float, default=0.08,
                    help="share of background-only time allowed to be heard as an event (the goal is <= 0.10)")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args()
    from leap_cli.synth.kitchen import KitchenConfig, build_kitchen

    build_kitchen(args.data, KitchenConfig(videos=args.videos, seed=args.seed))
    truth, segs = analysed(args.data, "train")
    cal, figs = fit(truth, segs, args.target)
    cal["provenance"] = {"command": f"python benchmarks/calibrate_audio.py --videos {args.videos} --seed {args.seed} "
                                    f"--target {args.target}", "split": "train", "training_figures": figs}
    print(json.dumps(figs, indent=1))
    print("thresholds", json.dumps(cal["thresholds"]))
    if not args.no_write:
        path = Path(__file__).resolve().parents[1] / "leap_cli" / "resources" / A.CALIBRATION
        atomic_write_json(path, cal)
        print("wrote", path)


if __name__ == "__main__":
    main()
