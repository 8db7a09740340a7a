"""camera 2 (the odometry of 2026-12-07) makes again only the camera records the odometry made: records whose camera
came from EPIC Fields or COLMAP poses, or was unavailable, read the same, and making them again would redo their
whole record (CLIP naming, the audio model) for nothing."""
from __future__ import annotations

import json

import numpy as np
import pytest

from leap_cli.extract import base
from leap_cli.extract.base import outdated

from tests.kitchens import kitchen_copy


def _rec(source: str, status: str = "ok", versions: dict | None = None) -> dict:
    rec = {"narration_id": "x", "components": {"narration": {"status": "ok", "source": "annotations"},
                                               "camera": {"status": status, "source": source}}}
    if versions is not None:
        rec["versions"] = versions
    return rec


@pytest.mark.parametrize("source, status, again", [
    ("orb-vo:9 frames", "ok", True),
    ("epic-fields:P01_01.json", "ok", False),
    ("colmap:P01_01/images.bin", "ok", False),
    ("auto", "unavailable", False),  # (no video: what it was set to read)
    ("vo", "error", False),
])
def test_a_camera_1_record_is_made_again_where_the_odometry_made_it(source, status, again):
    assert base.VERSIONS["camera"] == 2
    assert outdated(_rec(source, status)) == (["camera 1 -> 2"] if again else [])
    assert outdated(_rec(source, status, {"narration": 1, "camera": 1, "text": 1})) == outdated(_rec(source, status))


def test_a_later_raise_that_changes_every_record_makes_the_poses_ones_again_too(monkeypatch):
    monkeypatch.setitem(base.VERSIONS, "camera", 3)  # a camera 3 of no CHANGED entry: every camera record
    assert outdated(_rec("epic-fields:P01_01.json")) == ["camera 1 -> 3"]
    assert outdated(_rec("epic-fields:P01_01.json", versions={"camera": 2})) == ["camera 2 -> 3"]


def test_a_downgrade_makes_them_again_whatever_their_source():
    """A record a later leap made (camera 3) opened by this one: its parts are not this leap's to keep."""
    assert outdated(_rec("epic-fields:P01_01.json", versions={"camera": 3})) == ["camera 3 -> 2"]


def test_a_resume_over_a_kitchen_with_poses_keeps_the_poses_records(tmp_path, monkeypatch, tmp_path_factory):
    """Training videos P01_01 with EPIC Fields poses and P02_01 without (its file removed: odometry): a resume
    across camera 2 makes again P02_01's records alone and leaves P01_01's lines as they were."""
    from leap_cli.extract.runner import ExtractConfig, run_extract
    root = tmp_path / "k"
    kitchen_copy(tmp_path_factory, root, "--videos", 4, "--segments", 2)
    (root / "poses" / "P02_01.json").unlink()
    out = tmp_path / "train.jsonl"
    cfg = ExtractConfig(data=root, split="train", out=out, components=("narration", "camera"), frame_cache=None)
    with monkeypatch.context() as m:
        m.setitem(base.VERSIONS, "camera", 1)  # (a leap of 2026-12-05)
        assert run_extract(cfg).written > 0
    before = {json.loads(x)["narration_id"]: x for x in out.read_text().splitlines()}
    sources = {k: json.loads(x)["components"]["camera"]["source"] for k, x in before.items()}
    vo = {k for k, v in sources.items() if v.startswith("orb-vo")}
    assert vo and vo != set(before), sources  # (both kinds, or the test proves nothing)
    s = run_extract(cfg)
    assert (s.outdated, s.written) == (len(vo), len(vo)), s
    after = {json.loads(x)["narration_id"]: x for x in out.read_text().splitlines()}
    assert set(after) == set(before)
    assert all(after[k] == before[k] for k in set(before) - vo)  # kept, byte for byte
    assert all(json.loads(after[k])["versions"]["camera"] == 2 for k in vo)
    assert run_extract(cfg).outdated == 0  # and not offered again


def test_the_pair_after_a_flat_frame_starts_from_the_motion_carried_in():
    """Was wrong: a flat grey frame inside a turn (no corners: "none") dropped the turn's motion, which a cut and a
    rejected ORB pair carry on into the next pair: the pair after it went "lk" from no prior."""
    from tests.test_attack_s61_vo63 import _noise, _rot, _segment, _views

    views = _views(_noise(427, 240, 42), [_rot(8.0 * i) for i in range(9)], 427, 240)
    views[4] = np.full_like(views[4], 128)
    _, _, paths = _segment(views)
    assert paths[4] == "none" and paths[5] == "lk+prior", paths


def test_a_secret_inside_another_leaves_nothing_of_the_longer_one():
    """Was wrong: redact replaced the registered secrets in the set's order (the hash seed's): with a proxy
    password "secret" registered beside a key holding it, the key could print as "log-[REDACTED]-value-77" (seen in
    a suite run: a test's proxy password, another test's key)."""
    from leap_cli.programs import redact

    pairs = [(f"pw{i:02d}secret", f"key-pw{i:02d}secret-tail-{i:02d}") for i in range(24)]
    for short, long in pairs:
        redact.register_secret(short)
        redact.register_secret(long)
    for short, long in pairs:
        assert redact.redact(f"request with {long} failed") == f"request with {redact.REDACTED} failed", long
        assert redact.redact(f"proxy {short}:") == f"proxy {redact.REDACTED}:"


def test_a_stop_whose_sigcont_handler_never_runs_still_abandons_no_request():
    """Was wrong: the requests' clocks restarted only in the SIGCONT handler; where the signal reached Python after
    the loop had failed the due timers (delivered to another thread, late under load), requests in flight were
    abandoned at the continue and sent (and paid) again (2 of 8 in a CI run of test_attack_s54_signals). Here the
    loop is held past the 1 s timeout (the stop) and no restart is called: the request still gets its reply."""
    from tests.test_attack_s54_mut54 import reply_after_a_stop

    assert reply_after_a_stop(restart_at=None) == 200
