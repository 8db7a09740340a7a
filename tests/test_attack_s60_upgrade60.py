"""Upgrade across session 60 (20f9f87, the leap of that morning -> today), helper "upgrade60".

A researcher ran build-shards with the morning's leap, some runs killed (SIGKILL) before their manifest, upgrades,
and runs the same commands again. What changed in between, and what a resume of the old outputs meets:
- anticipation ``--anticipation-context segments``: the observed window ends tau_a before the action's start as
  clips mode takes it (on rgb_frames the start of its CSV start_frame; the old leap took the timestamp), and
  ``writer.made_settings`` adds ``settings.observed_end`` to the hash, the progress records and the manifest of a
  split read from rgb_frames folders (on an MP4 the rule is the old one);
- progress records keep the build's options (``"settings"``, read by ``format.begun_options`` for the commands the
  refusals print);
- a window-end check (a segment whose window ends past the frames that decode is skipped, whatever it samples).

A test cannot check out 20f9f87: the old outputs are made here by today's code with the old parts put back
(``writer.made_settings`` as ``dataclasses.asdict``, ``FrameClock.start_time`` as the timestamp, the "settings" key
dropped from the progress records, the manifest deleted as a SIGKILL before it leaves the folder). Checked by hand
against a real 20f9f87 checkout on a demo kitchen (3 videos, 8 segments): extract, generate-programs (offline),
build-shards (recognition, anticipation clips and segments), train --stop-after / --resume and evaluate of an old
run all give what these tests assert (old and new tars byte-equal; the old run's resume and metrics equal).

The frame folders are frames60's (tests/test_attack_s60_frames60.py): every JPEG carries its own frame number.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import asdict
from pathlib import Path

import pytest

from tests.test_attack_s60_frames60 import H, leap, make_root

FPS = 59.9400599400599
# (suffix, start s, stop s, start_frame, stop_frame): start_frame one below floor(ts x rate) as in 42 of EPIC's
# validation rows (frames60's REAL_ROWS), where the old segments rule read 2-3 frames later than clips mode
ROWS = [("0", 1.56, 2.45, 92, 147), ("1", 2.60, 3.30, 154, 198), ("2", 3.40, 4.10, 202, 246),
        ("3", 4.20, 5.00, 250, 300)]
SEGMENTS = ("--task", "anticipation", "--anticipation-context", "segments", "--tau-o", "0.5", "--frames", "8")


def build(root: Path, work: Path, out: Path, *extra: str) -> tuple[int, str]:
    return leap("build-shards", "--data", str(root), "--workdir", str(work), "--split", "val", "--out", str(out),
                "--short-side", str(H), "--max-count", "1", *extra)


def old_build(monkeypatch, root: Path, work: Path, out: Path, *extra: str, killed: bool = True) -> None:
    """build-shards as the leap of 20f9f87 wrote it: settings hashed and kept as ``asdict``, no "settings" in the
    progress records, segments mode ending at the timestamp; ``killed``: the manifest not yet written."""
    from leap_cli.epic.timing import FrameClock
    from leap_cli.shards import writer

    with monkeypatch.context() as m:
        m.setattr(writer, "made_settings", lambda st, **kw: asdict(st))
        if "segments" in extra:  # (clips mode took start_time then as now: only the segments mode's end moved)
            m.setattr(FrameClock, "start_time", lambda self, segment: float(segment.start))
        code, text = build(root, work, out, *extra)
    assert code == 0, text[-3000:]
    (progress,) = out.glob(".progress*.jsonl")
    recs = [json.loads(x) for x in progress.read_text().splitlines()]
    assert recs and all("settings" in r for r in recs)  # (today's code wrote it: the old leap did not)
    progress.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "settings"}) + "\n" for r in recs))
    if killed:
        (manifest,) = out.glob("manifest*.json")
        manifest.unlink()


def tars(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


def samples(folder: Path) -> dict[str, dict]:
    from leap_cli.shards.format import iter_tar_samples

    got = {}
    for p in sorted(folder.glob("*.tar")):
        for key, fields in iter_tar_samples(p):
            got[key] = json.loads(fields["json"])
    return got


@pytest.fixture(scope="module")
def rgb_root(tmp_path_factory) -> Path:
    return make_root(tmp_path_factory.mktemp("rgb") / "k", FPS, ROWS)


@pytest.fixture(scope="module")
def mp4_root(tmp_path_factory) -> Path:
    return make_root(tmp_path_factory.mktemp("mp4") / "k", FPS, [r[:3] for r in ROWS], mp4=True, rgb=False)


# ---- segments mode on rgb_frames: the old rule's folder is refused, naming it, and --force rebuilds it -----------

@pytest.mark.parametrize("killed", [True, False], ids=["killed-before-manifest", "finished"])
def test_an_old_segments_mode_rgb_frames_folder_is_refused_naming_the_rule(monkeypatch, tmp_path, rgb_root, killed):
    """docs/shards.md: a segments-context folder of a leap before 2026-12-06 is refused on resume, naming it, rather
    than mixed; its tars stay as they were (the refusal deletes nothing)."""
    out = tmp_path / "w" / "s"
    old_build(monkeypatch, rgb_root, tmp_path / "w", out, *SEGMENTS, killed=killed)
    before = tars(out)
    code, text = build(rgb_root, tmp_path / "w", out, *SEGMENTS)
    said = " ".join(text.split())
    assert code == 2, said[-2000:]
    assert "where the observed window ends (the segments context's rule" in said, said[-2000:]
    assert "differs)" in said and "--force" in said
    assert tars(out) == before


def test_an_old_folder_whose_records_keep_no_made_with_is_refused_naming_the_rule(monkeypatch, tmp_path, rgb_root):
    """Progress records of a leap that kept no ``made_with`` (before 2026-12-03): what differs is read from the
    finished folder's manifest, where a rule the manifest lacks is named too (a survivor of mut60's run: the
    refusal would then say nothing of what differs)."""
    out = tmp_path / "w" / "s"
    old_build(monkeypatch, rgb_root, tmp_path / "w", out, *SEGMENTS, killed=False)
    progress = out / ".progress.jsonl"
    recs = [json.loads(x) for x in progress.read_text().splitlines()]
    progress.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "made_with"}) + "\n" for r in recs))
    code, text = build(rgb_root, tmp_path / "w", out, *SEGMENTS)
    said = " ".join(text.split())
    assert code == 2 and "(where the observed window ends (the segments context's rule on rgb_frames, changed by " \
        "leap on 2026-12-06; or a video read from rgb_frames now) differs)" in said, said[-2000:]


def test_the_force_the_refusal_advises_rebuilds_with_todays_rule(monkeypatch, tmp_path, rgb_root):
    """The advice pasted (the same command with --force) rebuilds the folder: its manifest names today's rule, its
    samples end tau_a before start_frame (the old ones ended later on these rows: what a resume would have mixed),
    and a plain rerun then resumes it (nothing refused, nothing rewritten)."""
    from leap_cli.shards.writer import OBSERVED_END

    work, out = tmp_path / "w", tmp_path / "w" / "s"
    old_build(monkeypatch, rgb_root, work, out, *SEGMENTS)
    old = samples(out)
    code, text = build(rgb_root, work, out, *SEGMENTS)
    assert code == 2 and "pass --force" in text
    code, text = build(rgb_root, work, out, *SEGMENTS, "--force")
    assert code == 0, text[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["observed_end"] == OBSERVED_END
    new = samples(out)
    assert set(new) == set(old)
    moved = [k for k in new if not new[k]["blank"] and new[k]["frame_indices"] != old[k]["frame_indices"]]
    assert moved, "the old rule's samples should differ on these rows"
    for k in moved:  # today's window ends earlier, never later
        assert max(new[k]["frame_indices"]) < max(old[k]["frame_indices"]), k
    rebuilt = tars(out)
    code, text = build(rgb_root, work, out, *SEGMENTS)
    assert code == 0 and "nothing new to write" in " ".join(text.split()), text[-2000:]
    assert tars(out) == rebuilt


# ---- what did not change: recognition and clips mode resume the old leap's folder, byte for byte -----------------

@pytest.mark.parametrize("mode", [(), ("--task", "anticipation", "--span-frames", "32", "--frames", "4")],
                         ids=["recognition", "anticipation-clips"])
def test_a_folder_the_old_leap_began_is_resumed_keeping_its_tars(monkeypatch, tmp_path, rgb_root, mode):
    """The old leap killed after its second tar (its later tars and records gone): today's resumes it, keeps the
    two tars byte for byte, builds the rest, and the folder equals a folder today's leap builds from nothing (tars
    and manifest), since neither the hash nor the samples of these modes changed."""
    work, out = tmp_path / "w", tmp_path / "w" / "s"
    old_build(monkeypatch, rgb_root, work, out, *mode)
    lines = (out / ".progress.jsonl").read_text().splitlines(keepends=True)
    assert len(lines) == len(ROWS)  # (--max-count 1: one tar a segment)
    (out / ".progress.jsonl").write_text("".join(lines[:2]))
    for rec in map(json.loads, lines[2:]):
        (out / rec["name"]).unlink()
    kept = tars(out)
    code, text = build(rgb_root, work, out, *mode)
    assert code == 0, text[-3000:]
    now = tars(out)
    assert {k: now[k] for k in kept} == kept and len(now) == len(ROWS)
    code, text = build(rgb_root, work, tmp_path / "w" / "fresh", *mode)
    assert code == 0, text[-3000:]
    assert tars(tmp_path / "w" / "fresh") == now
    a = json.loads((out / "manifest.json").read_text())
    b = json.loads((tmp_path / "w" / "fresh" / "manifest.json").read_text())
    assert a == b


def test_an_old_folder_killed_after_its_last_tar_gets_its_manifest(monkeypatch, tmp_path, rgb_root):
    """Every tar built by the old leap, the manifest not: today's rerun writes the manifest only, and says so."""
    work, out = tmp_path / "w", tmp_path / "w" / "s"
    old_build(monkeypatch, rgb_root, work, out)
    before = tars(out)
    code, text = build(rgb_root, work, out)
    said = " ".join(text.split())
    assert code == 0, said[-2000:]
    assert "only their manifest was missing (a run stopped before it), written now" in said, said[-2000:]
    assert tars(out) == before and (out / "manifest.json").exists()


# ---- the commands the refusals print, for a folder the old leap began ----------------------------------------------

def test_a_build_command_for_an_old_leaps_folder_names_no_options_it_cannot_know(monkeypatch, tmp_path, rgb_root):
    """Old progress records keep no settings: build_command says so in words after the command (a pasted command
    without them would be refused), and gives no guessed options; a folder today's leap began names its options,
    and that command, pasted, resumes the folder."""
    from leap_cli.shards.format import begun_options, build_command

    work = tmp_path / "w"
    old = work / "shards" / "val"
    old_build(monkeypatch, rgb_root, work, old, "--frames", "4")
    assert begun_options(old) is None
    cmd = build_command(old)
    assert cmd.endswith(" (with the options of the build begun there)"), cmd
    assert "--frames" not in cmd and "--max-count" not in cmd
    new = work / "shards" / "val-anticipation"
    code, text = build(rgb_root, work, new, "--task", "anticipation", "--frames", "4", "--span-frames", "32")
    assert code == 0, text[-2000:]
    (new / "manifest.json").unlink()
    cmd = build_command(new)
    assert "(" not in cmd, cmd
    words = shlex.split(cmd)
    assert words[:2] == ["leap", "build-shards"]
    assert {"--frames", "--max-count", "--span-frames", "--task"} <= set(words), cmd
    code, text = leap(*words[1:], "--data", str(rgb_root), "--short-side", str(H))
    assert code == 0, text[-2000:]
    assert "only their manifest was missing" in " ".join(text.split())


# ---- MP4 sources: nothing changed there, and the old folder resumes ---------------------------------------------

def test_an_old_segments_mode_mp4_folder_is_resumed_its_samples_did_not_change(monkeypatch, tmp_path, mp4_root):
    """On an MP4 the action's start is its timestamp under both rules (FrameClock.start_time), so the old leap's
    tars are byte-equal to today's; a resume should keep them (on EPIC a segments-mode rebuild is hours of
    decoding) instead of asking for --force. Was wrong: observed_end went into every segments-mode hash, and the
    MP4 folder was refused."""
    work, out = tmp_path / "w", tmp_path / "w" / "s"
    old_build(monkeypatch, mp4_root, work, out, *SEGMENTS)
    code, text = build(mp4_root, work, tmp_path / "w" / "fresh", *SEGMENTS)
    assert code == 0, text[-2000:]
    assert tars(tmp_path / "w" / "fresh") == tars(out)  # (this holds today: the refusal below is needless)
    before = tars(out)
    code, text = build(mp4_root, work, out, *SEGMENTS)
    assert code == 0, " ".join(text.split())[-2000:]
    assert tars(out) == before


def test_a_folder_the_old_leap_began_and_todays_resumed_names_its_options(monkeypatch, tmp_path, rgb_root):
    """The old leap's first records keep no settings, but today's resume appended records that do: the command
    for the folder (another part missing, evaluate's other-task shards) can name the build's options. Was wrong:
    begun_options read only each progress file's first line."""
    from leap_cli.shards.format import begun_options

    work = tmp_path / "w"
    out = work / "shards" / "val"
    old_build(monkeypatch, rgb_root, work, out, "--frames", "4")
    lines = (out / ".progress.jsonl").read_text().splitlines(keepends=True)
    (out / ".progress.jsonl").write_text("".join(lines[:2]))
    for rec in map(json.loads, lines[2:]):
        (out / rec["name"]).unlink()
    code, text = build(rgb_root, work, out, "--frames", "4")
    assert code == 0, text[-2000:]
    recs = [json.loads(x) for x in (out / ".progress.jsonl").read_text().splitlines()]
    assert ["settings" in r for r in recs] == [False, False, True, True]
    opts = begun_options(out)  # (and the --short-side and --data the test's builds pass)
    assert opts[:2] == ["--frames", "4"] and opts[4:6] == ["--max-count", "1"] and "--short-side" in opts, opts
    assert opts[-2:] == ["--data", str(rgb_root)], opts


def test_an_old_segments_mode_part_is_not_merged_with_todays_part(monkeypatch, tmp_path, rgb_root):
    """--shard parts across the upgrade: part 0/2 built by the old leap (its manifest written), part 1/2 by today's:
    the merge refuses to describe both with one manifest, naming the rule, and writes no manifest.json; part 0
    rebuilt with --force, as advised, merges."""
    work, out = tmp_path / "w", tmp_path / "w" / "s"
    old_build(monkeypatch, rgb_root, work, out, *SEGMENTS, "--shard", "0/2", killed=False)
    assert [p.name for p in out.glob("manifest*.json")] != ["manifest.json"]  # (the part's own)
    code, text = build(rgb_root, work, out, *SEGMENTS, "--shard", "1/2")
    said = " ".join(text.split())
    assert "where the observed window ends" in said and "rebuild part 0" in said, said[-2000:]
    assert "--force on --shard i/2" in said
    assert not (out / "manifest.json").exists()
    code, text = build(rgb_root, work, out, *SEGMENTS, "--shard", "0/2", "--force")  # (the advice, part 0)
    assert code == 0, text[-2000:]
    merged = json.loads((out / "manifest.json").read_text())
    assert merged["settings"]["observed_end"] and merged["counts"]["samples"] == len(ROWS)
