"""The docs against what session 60 changed (20f9f87..d59522e), helper "docs61".

Each claim the docs make about today's changes (the segments-context observed window, build-shards' past-end skips
"with extract's reason", the resume notes, the repair advice, train's --stop-after and stop messages, the 429
suggestion) is checked against the code here, on tiny synthetic inputs. Where the docs and the code disagreed the
test says which side was wrong ("Was wrong", fixed the same session): a docs-side test reads the doc's sentence; a
code-side test runs the advice as a user would.

Frame folders and the in-process ``leap`` are frames60's (tests/test_attack_s60_frames60.py).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from tests.kitchens import kitchen_copy
from tests.test_attack_s60_frames60 import H, leap, make_root

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def flat(text: str) -> str:
    return " ".join(text.split())


def doc(name: str) -> str:
    return flat((DOCS / name).read_text(encoding="utf-8"))


# ---- the synthetic kitchen's cut video: extract and build-shards leave out the same segments, same words --------

@pytest.fixture(scope="module")
def kitchen(tmp_path_factory) -> dict:
    """3 videos of 4 segments (P01_02, the val video, is cut at 3.2 s of 10.5): extract (camera) and build-shards
    of val, their outputs and records."""
    work = tmp_path_factory.mktemp("kitchen")
    kitchen_copy(tmp_path_factory, work / "kitchen", "--videos", 3, "--segments", 4)
    code, ext = leap("extract", "--workdir", str(work), "--split", "val", "--components", "camera",
                     "--frame-cache", "none")
    assert code == 0, ext[-2000:]
    records = {r["narration_id"]: r for r in map(json.loads, (work / "descriptors" / "val.jsonl").read_text()
                                                 .splitlines())}
    code, built = leap("build-shards", "--workdir", str(work), "--split", "val", "--frames", "2", "--short-side",
                       "32")
    assert code == 0, built[-2000:]
    manifest = json.loads((work / "shards" / "val" / "manifest.json").read_text())
    return {"work": work, "records": records, "built": built, "manifest": manifest}


def test_build_shards_skips_the_cut_videos_segments_with_extracts_reason(kitchen):
    """docs/shards.md "Bad input" (d5001a3, 6eef694): a window that ends past the frames that decode is skipped
    "with extract's reason, so that both stages leave out the same segments"; troubleshooting.md: build-shards'
    cause is `frames requested past the end of the video`; extract.md: `N segments skipped (listed in the
    manifest)` and `build-shards: N of M records failed (by cause)`."""
    unavailable = {nid: r["components"]["camera"]["data"]["reason"] for nid, r in kitchen["records"].items()
                   if r["components"]["camera"]["status"] == "unavailable"}
    skipped = {s["narration_id"]: s for s in kitchen["manifest"]["skipped"]}
    assert unavailable and set(skipped) == set(unavailable)  # one set of segments, not two
    for nid, reason in unavailable.items():
        assert "after the decodable end of the video" in reason, reason
        assert skipped[nid]["reason"].endswith(reason), (skipped[nid]["reason"], reason)  # extract's words
        assert nid in skipped[nid]["reason"] and ".MP4" in skipped[nid]["reason"]  # its file and segment named
        assert skipped[nid]["cause"] == "frames requested past the end of the video"
    said = flat(kitchen["built"])
    n, m = len(skipped), len(kitchen["records"])
    assert f"{n} segment{'s' if n != 1 else ''} skipped (listed in the manifest)" in said
    assert f"build-shards: {n} of {m} records failed (by cause)" in said
    assert f"{n} x frames requested past the end of the video" in said


def test_extract_md_does_not_say_build_shards_words_the_skips_otherwise(kitchen):
    """Was wrong: docs side: extract.md (--check-lengths row) says build-shards words its past-end skips otherwise
    than extract; since d5001a3 it gives extract's reason."""
    (nid, skip), *_ = [(s["narration_id"], s) for s in kitchen["manifest"]["skipped"]]
    assert kitchen["records"][nid]["components"]["camera"]["data"]["reason"] in skip["reason"]  # (the behaviour)
    assert "worded differently from extract's" not in doc("extract.md")


# ---- the segments context's observed window (ccbf886): t is the action's start in the source's numbering --------

def _plan(kind: str, sf: int, start: str, *, fps: float = 60.0) -> dict:
    from leap_cli.epic.annotations import Segment
    from leap_cli.epic.timing import FrameClock, parse_timestamp
    from leap_cli.shards.writer import ShardSettings, plan_samples

    seg = Segment("P01_01_5", "P01", "P01_01", parse_timestamp(start), parse_timestamp("00:00:04.00"), sf, 240)
    st = ShardSettings("val", "anticipation", frames=4, context_mode="segments", tau_a=1.0, tau_o=0.5)
    _, records, skipped = plan_samples([seg], lambda v: fps, st, lambda v: FrameClock(kind, fps))
    assert not skipped
    return records[seg.narration_id]


@pytest.mark.parametrize("kind, sf, start, observed", [
    # rgb_frames: t is the start of start_frame, (sf - 1) / 60, not the timestamp
    ("rgb_frames", 151, "00:00:02.52", {"start": 1.0, "stop": 1.5}),
    ("rgb_frames", 61, "00:00:01.01", {"start": 0.0, "stop": 0.0}),  # exactly tau_a in: frame 1, not blank
    ("rgb_frames", 60, "00:00:01.01", None),  # t - tau_a < 0 though ts - tau_a is not: blank
    # an MP4: t is the timestamp, whatever the CSV's frame columns say
    ("mp4", 60, "00:00:02.52", {"start": 1.02, "stop": 1.52}),
    ("mp4", 1, "00:00:01.00", {"start": 0.0, "stop": 0.0}),
    ("mp4", 61, "00:00:00.99", None),
])
def test_the_segments_window_is_t_minus_tau_a_in_seconds_and_blank_only_before_0(kind, sf, start, observed):
    """docs/shards.md "Anticipation": `[t - tau_a - tau_o, t - tau_a]` cut at 0 s, t `ts` on an MP4 and the start
    of `start_frame` on rgb_frames; `observed` holds the window's start and stop in seconds; blank only where
    `t - tau_a` is before 0 (an action exactly tau_a into the video reads frame 1)."""
    rec = _plan(kind, sf, start)
    if observed is None:
        assert rec["blank"] and rec["observed"] is None and rec["frame_indices"] == []
    else:
        assert not rec["blank"]
        assert rec["observed"] == pytest.approx(observed, abs=1e-6)
        if observed["stop"] == 0.0:
            assert set(rec["frame_indices"]) == {1}


# ---- train --stop-after and a stopped run (03f77bd): the messages, against train.md and options.md --------------

@pytest.fixture
def fake_train(monkeypatch, tmp_path):
    """``leap train`` with the loop replaced: it announces a run of 10 steps and returns at --stop-after (or, with
    ``interrupted``, stopped by that signal at step 4)."""
    import leap_cli.train.loop as loop

    state = {"interrupted": None}

    def main(cfg, *, workdir, name, resume, stop_at_step, on_step, on_eval, on_start, force):
        run = Path(workdir) / "runs" / name
        on_start({"run_dir": str(run), "parameters": 1e6, "total_steps": 10, "epochs": 2, "steps_per_epoch": 5,
                  "device": "cpu", "world_size": 1, "start_step": 0, "start_epoch": 0, "start_batches": 0})
        steps = 4 if state["interrupted"] else stop_at_step
        return loop.TrainResult(run_dir=run, steps=steps, epochs=1, best_metric=-1.0, last_eval={}, history=[],
                                seconds=0.1, model_args={}, interrupted=state["interrupted"])

    monkeypatch.setattr(loop, "main", main)

    def run(*extra: str, interrupted: str | None = None) -> tuple[int, str]:
        state["interrupted"] = interrupted
        return leap("train", "--config", "tiny-synthetic", "--workdir", str(tmp_path / "w"), *extra)

    return run


@pytest.mark.parametrize("extra, go_on", [
    ((), "the same command with --resume"),
    (("--resume",), "the same command"),
    (("--force",), "the same command with --resume instead of --force"),
])
def test_a_paused_run_says_how_to_go_on_past_the_pause(fake_train, extra, go_on):
    """train.md --stop-after: the summary says `paused at step N of M: continue with the same command with
    --resume, and a --stop-after past N or none`; never --force again (it would start the run over)."""
    code, text = fake_train("--stop-after", "3", *extra)
    assert code == 0, text[-2000:]
    assert (f"paused at step 3 of 10 (--stop-after): continue with {go_on}, and a --stop-after past 3 or none"
            in flat(text)), text[-1500:]


def test_train_md_quotes_the_pause_line_as_printed(fake_train):
    """Was wrong: docs side: train.md's --stop-after row quotes the pause line without the '(--stop-after)' that
    commands/train.py prints after 'of M'."""
    code, text = fake_train("--stop-after", "3")
    assert code == 0
    m = re.search(r"the summary says `(paused at step N of M[^`]*)`", doc("train.md"))
    assert m, "train.md no longer quotes the pause line"
    assert m.group(1).replace("N", "3").replace("M", "10") in flat(text)


@pytest.mark.parametrize("extra, go_on", [((), "the same command with --resume"),
                                          (("--force",), "the same command with --resume instead of --force")])
def test_a_signalled_run_exits_143_and_says_resume(fake_train, extra, go_on):
    """train.md: SIGTERM saves last.pt and exits 143; the line says to continue with --resume (instead of --force,
    which would delete the checkpoint)."""
    code, text = fake_train(*extra, interrupted="SIGTERM")
    assert code == 143, text[-2000:]
    assert re.search(r"SIGTERM: stopped at step 4, \S*last\.pt saved; continue with " + re.escape(go_on) + "$",
                     flat(text)), text[-1500:]


def test_options_md_exit_status_row_names_trains_resume(fake_train):
    """Was wrong: docs side: options.md's exit-status row (130/143/129) says 'run the same command again to resume';
    train is refused without --resume and starts over with --force, as its own stop line (03f77bd) says."""
    code, text = fake_train(interrupted="SIGTERM")
    assert code == 143 and "continue with the same command with --resume" in flat(text)
    row = next(line for line in (DOCS / "options.md").read_text().splitlines() if line.startswith("| 130, 143, 129"))
    assert "--resume" in row


# ---- generate-programs' suggested --concurrency after 429s (ee501a4) ----------------------------------------------

def test_programs_md_describes_the_suggested_concurrency_as_kept_across_cuts(monkeypatch):
    """Was wrong: docs side: programs.md says the suggestion is what went a round without a 429 'after the last
    cut'; since ee501a4 a window before the cut counts, capped at the in-flight count of a later 429."""
    import asyncio

    from leap_cli.programs.backends import OpenAIBackend

    monkeypatch.setenv("LEAP_TEST_KEY", "sk-test")

    async def run():
        b = OpenAIBackend("m", base_url="http://127.0.0.1:9/v1", api_key_env="LEAP_TEST_KEY", concurrency=3)
        try:
            b._limit, b._active, b._peak = 2, 2, 2  # a window of 2 at 2 in flight, no 429
            b._answered(), b._answered()
            b._limit, b._active = 3, 2  # then a 429 beside 2 in flight: cut to 1
            b._rate_limited(b._epoch, None)
            b._active = 1
            b._answered()  # the only round after the last cut: at 1
            return b.steady_limit, b.lowest_limit
        finally:
            await b.aclose()

    assert asyncio.run(run()) == (2, 1)  # the code: 2, which went before the last cut
    assert "without a 429 after the last cut" not in doc("programs.md")


# ---- repair advice that names the build command (03f77bd, d8f1ddd): pasted, does it rebuild? ------------------------

def _damage(tar: Path) -> None:
    """Flip 800 bytes inside the tar: same size, wrong sha256 (a re-run alone keeps it: its size is right)."""
    b = tar.read_bytes()
    tar.write_bytes(b[:600] + bytes(x ^ 0xFF for x in b[600:1400]) + b[1400:])


def _repair_command(text: str) -> str:
    m = re.search(r"delete that shard file if it is still there and run (leap build-shards .*?) again \(it rebuilds",
                  flat(text))
    assert m, text[-2000:]
    return m.group(1)


@pytest.fixture
def epic_root(tmp_path) -> Path:
    """EPIC data where a real user keeps it: not WORKDIR/kitchen (the default --data), so every stage gets --data."""
    return make_root(tmp_path / "data" / "epic", 60.0, [("0", 0.2, 1.0), ("1", 2.5, 3.5)])


def test_check_shards_names_the_damaged_shard_and_the_builds_options(epic_root, tmp_path):
    """shards.md "Checking shards": check-shards names the damaged shard (exit 2 with --on-error raise) and its
    repair advice carries the options the build was run with (--frames, --short-side, --max-count)."""
    work = tmp_path / "w"
    code, text = leap("build-shards", "--data", str(epic_root), "--workdir", str(work), "--split", "val",
                      "--short-side", str(H), "--frames", "2", "--max-count", "1")
    assert code == 0, text[-2000:]
    tar = sorted((work / "shards" / "val").glob("*.tar"))[1]
    _damage(tar)
    code, text = leap("check-shards", "--workdir", str(work), "--split", "val")
    assert code == 2 and tar.name in text and "sha256 differs" in text, text[-2000:]
    words = shlex.split(_repair_command(text))
    assert words[:6] == ["leap", "build-shards", "--workdir", str(work), "--split", "val"]
    assert {"--frames": "2", "--short-side": str(H), "--max-count": "1"}.items() <= dict(zip(words[6::2],
                                                                                            words[7::2])).items()


def test_check_shards_repair_advice_pasted_rebuilds_a_build_of_another_data_root(epic_root, tmp_path):
    """Was wrong: code side: shards/format.py build_command (begun_options) gives no --data: a build from EPIC's
    root (not WORKDIR/kitchen) gets repair advice that, pasted, stops with 'dataset root not found'."""
    work = tmp_path / "w"
    code, text = leap("build-shards", "--data", str(epic_root), "--workdir", str(work), "--split", "val",
                      "--short-side", str(H), "--frames", "2", "--max-count", "1")
    assert code == 0, text[-2000:]
    tar = sorted((work / "shards" / "val").glob("*.tar"))[1]
    _damage(tar)
    code, text = leap("check-shards", "--workdir", str(work), "--split", "val")
    assert code == 2
    command = _repair_command(text)
    tar.unlink()  # as the advice says
    code, text = leap(*shlex.split(command)[1:])
    assert code == 0, text[-2000:]
    code, text = leap("check-shards", "--workdir", str(work), "--split", "val")
    assert code == 0, text[-2000:]


def test_the_build_command_of_an_out_folder_names_the_split_and_task_its_build_kept(tmp_path):
    """Was wrong: code side: shards/format.py begun_options drops split and task ('the command names them'), true
    only of WORKDIR/shards/SPLIT[-anticipation]: an --out folder's command says --split SPLIT and no --task
    anticipation."""
    from dataclasses import asdict

    from leap_cli.shards.format import build_command, rebuild_fix
    from leap_cli.shards.writer import ShardSettings, made_settings

    folder = tmp_path / "my shards"
    folder.mkdir()
    settings = made_settings(ShardSettings("val", "anticipation", frames=4))
    assert settings == asdict(ShardSettings("val", "anticipation", frames=4))  # (clips mode: no rule key)
    (folder / ".progress.jsonl").write_text(json.dumps({"name": "leap-val-000000.tar", "settings": settings}) + "\n")
    for said in (build_command(folder), rebuild_fix("leap-val-000000.tar", folder)):
        assert "--frames 4" in said  # (what it does carry)
        assert "--split val" in said and "--task anticipation" in said, said
