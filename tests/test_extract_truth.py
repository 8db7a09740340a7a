"""Extraction measured against the synthetic kitchen's ground truth (figures stable for this seed; the
larger measurement is benchmarks/bench_extract.py)."""

from __future__ import annotations


import pytest

from leap_cli.extract.runner import ExtractConfig, run_extract
from leap_cli.extract.truth import load_truth, score
from leap_cli.io import read_jsonl


@pytest.fixture(scope="module")
def kitchen(tmp_path_factory):
    from leap_cli.synth.kitchen import KitchenConfig, build_kitchen

    root = tmp_path_factory.mktemp("synth") / "kitchen"
    build_kitchen(root, KitchenConfig(videos=2, segments_per_video=16, seed=1))
    return root


@pytest.fixture(scope="module")
def measured(kitchen, tmp_path_factory) -> tuple[dict, dict]:
    root = kitchen
    out = tmp_path_factory.mktemp("measured")
    vo, poses = out / "vo.jsonl", out / "poses.jsonl"
    for split in ("train", "val"):
        run_extract(ExtractConfig(data=root, split=split, out=vo, camera_source="vo"))
        run_extract(ExtractConfig(data=root, split=split, out=poses, components=("camera",)))
    truth = load_truth(root)
    return score(read_jsonl(vo), truth), score(read_jsonl(poses), truth)


def test_yaw_direction_of_head_turns(measured):
    vo, poses = measured
    assert vo["yaw_direction"]["segments"] >= 8
    assert vo["yaw_direction"]["correct"] >= 0.9
    assert poses["yaw_direction"]["correct"] >= 0.9  # COLMAP poses on P01_01, visual odometry on P01_02


def test_audio_category(measured):
    vo, _ = measured
    assert vo["audio_category"]["segments"] == 32 and vo["audio_category"]["correct"] >= 0.8


def test_hand_contacts_and_objects(measured):
    vo, _ = measured
    hc = vo["hand_contacts"]
    assert hc["contacts"] >= 20 and hc["iou_at_least_0.7"] >= 0.9 and hc["mean_iou"] >= 0.9
    assert hc["object_named"] >= 0.9
    assert vo["objects"]["true_objects"] >= 40 and vo["objects"]["named"] == 1.0


def test_ctrl_c_keeps_finished_records_and_the_rerun_resumes(kitchen, tmp_path):
    """A real SIGINT to ``leap extract``: exit 130, the table printed, finished lines kept, no duplicates after."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).parents[1]
    out = tmp_path / "train.jsonl"
    cmd = [sys.executable, "-m", "leap_cli", "extract", "--data", str(kitchen), "--split", "train", "--out", str(out),
           "--components", "narration,audio,camera,objects,hands"]
    proc = subprocess.Popen(cmd, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(repo)})
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 1):
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    kept = read_jsonl(out)
    assert proc.returncode == 130, output
    assert 1 <= len(kept) < 16 and "interrupted" in output
    done = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(repo)})
    assert done.returncode == 0, done.stdout + done.stderr
    ids = [r["narration_id"] for r in read_jsonl(out)]
    assert len(ids) == 16 and len(set(ids)) == 16
    assert f"{len(kept)} done before" in done.stdout
