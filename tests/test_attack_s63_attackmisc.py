"""Attacks on four changes of session 63 as a user with EPIC-KITCHENS-100 on disk meets them (attackmisc):
build-shards' frame cache found in extract's settings, the dry run's repair-turn estimate, load_exemplars'
refusal of two files of one id, and the timing rule's windows that start before the video.

Was wrong: extract recorded ``--frame-cache DIR`` as given, relative to the folder it ran in, so build-shards run
from another folder (a job script's) did not find it and decoded every sample again without a word; and where
extract's settings named caches that build-shards could not take (gone, or several), it said nothing. The dry
run's repair rate counted the repair turns logged, so replies paid by a run with --repair-rounds 0 (however many
failed validation) gave a rate of 0 for a run with repair turns. Held: the exemplar id check, the timing rule's
windows before the video (against floor/ceil by hand in exact fractions) and the anticipation clips there."""

from __future__ import annotations

import json
import math
import subprocess
from fractions import Fraction
from pathlib import Path

import pytest

from tests.kitchens import kitchen_copy
from tests.procs import run_leap
from tests.test_programs_generate import N_SEGMENTS, good_programs, workdir  # noqa: F401 (the fixtures)

ROOT = Path(__file__).resolve().parents[1]


def _leap(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return run_leap(cwd, *args, columns=300)


@pytest.fixture(scope="module")
def kitchen(tmp_path_factory):
    """A 3-video kitchen whose train split extract described from the folder ``root`` with a relative
    ``--frame-cache scratch/fc``."""
    root = tmp_path_factory.mktemp("fcrel")
    (root / "jobs").mkdir()
    kitchen_copy(tmp_path_factory, root / "w" / "kitchen", "--videos", 3, "--segments", 4)
    args = ("extract", "--workdir", "w", "--split", "train", "--components", "narration", "--frame-cache", "scratch/fc")
    r = _leap(root, *args)
    assert r.returncode == 0, (args, r.stdout[-2000:], r.stderr[-2000:])
    return root


def test_a_relative_frame_cache_is_found_from_another_folder(kitchen):
    """extract --frame-cache scratch/fc run in ROOT, build-shards run in ROOT/jobs with --workdir ../w: the cache is
    read (it was not: the settings held "scratch/fc", which from ROOT/jobs is no folder)."""
    cfg = json.loads((kitchen / "w/descriptors/train.config.json").read_text())
    assert Path(cfg["frame_cache"]).is_absolute() and Path(cfg["frame_cache"]) == kitchen / "scratch/fc"
    r = _leap(kitchen / "jobs", "build-shards", "--workdir", "../w", "--split", "train", "--out", "../w/shards/a")
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    said = " ".join(r.stdout.split())
    assert f"frames read from extract's frame cache {kitchen / 'scratch/fc'}" in said, said


def test_unread_frame_caches_are_said(kitchen, tmp_path):
    """Settings naming a cache that is not there, or two that are: build-shards says which and what to give (it
    decoded every sample without a word)."""
    from leap_cli.commands.shards import extracts_frame_cache

    work, desc = tmp_path / "w", tmp_path / "w/descriptors"
    desc.mkdir(parents=True)
    assert extracts_frame_cache(work, "train")[1] is None  # (nothing recorded)
    (desc / "train.config.json").write_text(json.dumps({"frame_cache": str(tmp_path / "gone"), "cache_frames": 16}))
    note = extracts_frame_cache(work, "train")[1]
    assert note and str(tmp_path / "gone") in note and "train.config.json" in note and "--frame-cache" in note
    (desc / "train.config.json").write_text(json.dumps({"frame_cache": str(work / "frame-cache"), "cache_frames": 16}))
    assert extracts_frame_cache(work, "train")[1] is None  # (the default: the writer's own notes say it)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (desc / "train.shard0of2.config.json").write_text(json.dumps({"frame_cache": str(a), "cache_frames": 16}))
    assert extracts_frame_cache(work, "train")[1] is None and extracts_frame_cache(work, "train")[0] == a
    (desc / "train.shard1of2.config.json").write_text(json.dumps({"frame_cache": str(b), "cache_frames": 16}))
    note = extracts_frame_cache(work, "train")[1]
    assert extracts_frame_cache(work, "train")[0] is None and note and str(a) in note and str(b) in note


def test_build_shards_says_the_cache_it_cannot_find(kitchen):
    """The CLI prints that note (a moved disk: the recorded folder gone)."""
    import shutil

    shutil.copytree(kitchen / "w/descriptors", kitchen / "w2/descriptors")
    cfg = kitchen / "w2/descriptors/train.config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "frame_cache": str(kitchen / "nowhere")}))
    r = _leap(kitchen, "build-shards", "--workdir", "w2", "--data", "w/kitchen", "--split", "train",
              "--out", "w2/shards/a")
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    said = " ".join(r.stdout.split())
    assert f"extract's frame cache {kitchen / 'nowhere'} (named in" in said and "is not there" in said, said
    r = _leap(kitchen, "build-shards", "--workdir", "w2", "--data", "w/kitchen", "--split", "train", "--task",
              "anticipation", "--out", "w2/shards/b")
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    assert "frame cache" not in r.stdout  # (anticipation reads no cache and says nothing of one)


# ---- generate-programs --dry-run: the repair-turn estimate ----


def test_a_run_without_repair_turns_still_measures_how_many_replies_ask_one(workdir, good_programs):  # noqa: F811
    """Was wrong: an output made with --repair-rounds 0 (2 of its 4 first replies invalid) gave the estimate of
    another output at --repair-rounds 1 "~0.000 per request (0 repair turns to the 4 first replies ...)": the
    rate counted the repair turns logged, and that run sent none. Now it counts the replies that ask one."""
    from leap_cli.programs.generate import estimate_cost, generate_programs
    from tests.program_helpers import server_config
    from tests.programs_llm_server import ScriptedServer
    from tests.test_attack_s63_estrepair import _script, offline_config

    with ScriptedServer(_script(good_programs, set(sorted(good_programs)[:2]))) as server:
        assert generate_programs(server_config(workdir, server, limit=4, repair_rounds=0)).statuses == \
            {"valid": 2, "invalid": 2}
    est = estimate_cost(offline_config(workdir, out=workdir / "programs" / "other.jsonl"))
    r = est.repairs
    assert r.rate == pytest.approx(0.5) and est.repair_requests == pytest.approx(0.5 * (N_SEGMENTS - 4))
    assert r.extra_prompt > 200 and r.reply_tokens == pytest.approx(200)  # (a first reply re-sent, its findings)
    assert "repair turns: ~0.500 per request (2 repair turns to the 4 first replies" in "\n".join(est.lines())


def test_a_reply_cut_at_the_token_limit_asks_no_repair_turn(tmp_path):
    """A reply cut at --max-tokens gets no repair turn (the run's rule), so the rate does not count one for it."""
    from leap_cli.programs.estimate import measured_repairs
    from leap_cli.programs.store import ProgramStore

    with ProgramStore(tmp_path / "cache.sqlite") as store:
        for i, cut in enumerate((True, False, False, False)):
            key = f"k{i}"
            store.put(key, "{", {"prompt_tokens": 1000, "completion_tokens": 2000}, "m", cut=cut, commit=False)
            store.log_call(narration_id=f"a{i}", backend="openai", model="m", prompt_hash="h", cache_key=key,
                           round=0, response="{", usage={"prompt_tokens": 1000, "completion_tokens": 2000},
                           latency=0.1, attempts=1, cached=False, outcome="not_json",
                           error="x" * 40 if cut or i == 1 else None)
        rows = store.paid_turns("openai", "m", 1)
    r = measured_repairs(rows, 1, 20, "its records")
    assert len(rows) == 4 and r.rate == pytest.approx(0.25)  # a1 only: a0 was cut


def test_the_rate_s_source_says_one_turn_and_one_reply_in_the_singular():
    from leap_cli.programs.estimate import measured_repairs

    said = measured_repairs([("a", 0, 0, 100, 40)], 1, 20, "x").source
    assert said == "1 repair turn to the 1 first reply paid for x"


# ---- the timing rule: windows that start before the video (held) ----

def _exact(t: str, rate: float) -> Fraction:
    return Fraction(t) * Fraction(rate)  # (a 2-decimal time, the clock's float rate taken exactly)


@pytest.mark.parametrize("kind,fps", [("mp4", 50.0), ("mp4", 60000 / 1001), ("mp4", 60.0), ("mp4", 30000 / 1001),
                                      ("rgb_frames", 60000 / 1001), ("rgb_frames", 50.0)])
def test_windows_near_the_start_are_the_frames_shown_by_hand(kind, fps):
    """Every 2-decimal window [t, t + d) with t in -2.00..2.00 s: frames from the one shown at t (the frame k with
    (k-1)/rate <= t < k/rate: floor(t x rate) + 1, exactly) to the last that starts before t + d (ceil), at 50,
    59.94, 60 and 29.97 fps and on EPIC's rgb_frames clock (60/s, 50/s); a start before the video is said as the
    time from frame `first`'s start to the video's."""
    from leap_cli.epic.timing import FrameClock

    clock = FrameClock(kind, fps, num_frames=10_000)
    rate = clock.rate
    for i in range(-200, 201):
        for d in (1, 7, 28, 100):
            t, stop = f"{i / 100:.2f}", f"{(i + d) / 100:.2f}"
            w = clock.window(float(t), float(stop))
            first = math.floor(_exact(t, rate)) + 1
            last = max(first, math.ceil(_exact(stop, rate)))
            assert (w.first, w.last) == (first, last), (kind, fps, t, stop)
            assert w.frames == tuple(range(first, last + 1))
            assert w.inside == (first >= 1)
            if first < 1:
                assert w.reason == f"the window starts {(1 - first) / rate:.2f} s before the video"


@pytest.mark.parametrize("fps", [50.0, 60000 / 1001, 60.0])
def test_anticipation_clips_near_the_start_end_before_tau_a(fps):
    """clip_windows_before with the action 0.00..1.00 s into the video and tau_a 1 s: the newest clip's last frame
    is the last that starts strictly before action - tau_a (by hand: ceil((t - tau_a) x rate)), clips contiguous."""
    from leap_cli.epic.timing import FrameClock, clip_windows_before

    clock = FrameClock("mp4", fps, num_frames=10_000)
    for i in range(0, 101):
        t = f"{i / 100:.2f}"
        clips = clip_windows_before(clock, float(t), 1.0, clips=3, frames=16)
        end = math.ceil(_exact(t, clock.rate) - Fraction(clock.rate))
        assert clips[-1].last == end, (fps, t)
        assert [c.frames for c in clips] == [tuple(range(end - 16 * (3 - c) + 1, end - 16 * (2 - c) + 1))
                                             for c in range(3)]
        assert all(not c.inside for c in clips)  # (every clip starts before the video)


# ---- load_exemplars: two files of one id (held) ----

def test_exemplar_ids_are_compared_as_written_and_a_repeat_is_one_line_naming_both(tmp_path):
    """Ids differing in case or whitespace are other ids (the prompt shows each as written: no turn stands for
    another); a copy of a file under another name (`x copy.json`) is refused in one line naming both files and what
    to do; --exemplars replaces the bundled library (no clash with its ids)."""
    import shutil

    from leap_cli.errors import LeapError
    from leap_cli.programs.prompt import load_exemplars, resource_dir

    bundled = sorted((resource_dir("prompts") / "exemplars").glob("*.json"))
    d = json.loads(bundled[0].read_text())
    for i, eid in enumerate((d["id"], d["id"].upper(), f" {d['id']}")):
        (tmp_path / f"{i}.json").write_text(json.dumps({**d, "id": eid}))
    assert [e.id for e in load_exemplars(tmp_path)] == [d["id"], d["id"].upper(), f" {d['id']}"]
    assert {e.id for e in load_exemplars(tmp_path)} & {e.id for e in load_exemplars()} == {d["id"]}  # (replaced)
    shutil.copy(tmp_path / "0.json", tmp_path / "0 copy.json")
    with pytest.raises(LeapError) as e:
        load_exemplars(tmp_path)
    said = e.value.one_line()
    assert "\n" not in said and "0 copy.json" in said and "0.json" in said.replace("0 copy.json", "")
    assert "its own id" in said
