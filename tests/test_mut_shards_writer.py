"""build-shards' writer (leap_cli/shards/writer.py): what a mutation run found no test pinning -- the settings it
refuses, frame choice at the edges of anticipation's observed window, shard rollover by size, the labels and counts
of the samples and manifest, and the program report. Most tests call ``build_shards`` on flat synthetic frames."""
import json
from pathlib import Path

import numpy as np
import pytest

from leap_cli.common import ShardSpec
from leap_cli.epic.annotations import Segment
from leap_cli.errors import LeapError
from leap_cli.shards.format import iter_tar_samples
from leap_cli.shards.writer import ShardSettings, build_shards, match_programs, plan_samples

FPS = 10.0


class _Flat:
    """A source of 40x30 frames, each flat grey at its frame number (a frame reader as the writer uses it)."""

    width, height = 40, 30

    def read_frames(self, indices, short_side=None):
        return np.stack([np.full((self.height, self.width, 3), (i * 8) % 256, np.uint8) for i in indices])


class _Opener:
    """``video_id -> reader``; the videos in ``bad`` cannot be opened."""

    def __init__(self, bad=()):
        self.bad = set(bad)

    def __call__(self, video_id):
        if video_id in self.bad:
            raise LeapError(f"video {video_id} is damaged")
        return _Flat()


def seg(nid, vid, start, stop, verb_class=1, noun_class=2):
    return Segment(nid, vid[:3], vid, start, stop, int(start * FPS) + 1, int(stop * FPS), narration="take cup",
                   verb="take", verb_class=verb_class, noun="cup", noun_class=noun_class)


def shards(out: Path) -> dict[str, dict]:
    """{key: sample json} of every shard in ``out``."""
    return {k: json.loads(f["json"]) for p in sorted(out.glob("*.tar")) for k, f in iter_tar_samples(p)}


def make(tmp_path, segments, name="out", opener=None, **kw):
    s = dict(split="train", frames=4, short_side=32)
    s.update({k: kw.pop(k) for k in list(kw) if k in ShardSettings.__dataclass_fields__})
    return build_shards(segments, out=tmp_path / name, settings=ShardSettings(**s), opener=opener or _Opener(),
                        fps=lambda v: FPS, **kw)


# ---- settings ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(frames=0), dict(tau_o=0.0), dict(tau_a=-0.5)])
def test_settings_without_frames_or_observed_time_are_refused(kw):
    with pytest.raises(LeapError):
        ShardSettings(split="train", task="anticipation", **kw)


def test_one_frame_and_anticipation_right_at_the_action_are_allowed():
    assert ShardSettings(split="train", frames=1).frames == 1
    assert ShardSettings(split="train", task="anticipation", tau_a=0.0).tau_a == 0.0


# ---- anticipation: the edges of the observed window ("segments" context) ----------------------------------

def _segments_mode(**kw):
    return ShardSettings(split="train", task="anticipation", frames=4, context=1, context_mode="segments",
                         tau_a=1.0, tau_o=2.0, **kw)


def test_an_action_exactly_tau_a_into_the_video_observes_its_first_frame_not_a_blank():
    """At 10 fps, tau_a 1 s: an action at 1.0 s is observed up to 0.0 s, where frame 1 is shown."""
    _, records, _ = plan_samples([seg("P01_01_0", "P01_01", 1.0, 2.0)], lambda v: FPS, _segments_mode())
    r = records["P01_01_0"]
    assert r["blank"] is False and r["frame_indices"] == [1, 1, 1, 1]
    assert r["observed"] == {"start": 0.0, "stop": 0.0}


def test_a_previous_segment_starting_on_the_last_observed_frame_is_context():
    """Action at 5.0 s, tau_a 1 s: observed up to 4.0 s, frame 41; a previous segment from 4.05 s starts on frame 41
    (shown from 4.0 s), so it is present context, clipped to that frame."""
    segs = [seg("P01_01_0", "P01_01", 4.05, 4.9), seg("P01_01_1", "P01_01", 5.0, 6.0)]
    _, records, _ = plan_samples(segs, lambda v: FPS, _segments_mode())
    ctx = records["P01_01_1"]["context"]
    assert records["P01_01_1"]["frame_indices"] == [23, 28, 34, 39]  # centres of 4 chunks of frames 21..41
    assert ctx == [{"key": "P01_01_0", "present": True, "frame_indices": [41, 41, 41, 41]}]


# ---- samples, programs and the manifest -------------------------------------------------------------------

class _Targets:
    """A target encoder that marks what it encoded (the writer's TargetEncoder protocol)."""

    def encode(self, program, key=None):
        return {"steps": [[1, 2, 3]], "pre": [], "post": [], "of": key}

    def manifest(self):
        return {"vocab": "test"}


def test_labels_program_targets_and_counts(tmp_path):
    segs = [seg("P01_01_0", "P01_01", 0.5, 1.5, 3, 7), seg("P01_01_1", "P01_01", 2.0, 3.0, 4, 8),
            seg("P01_01_2", "P01_01", 3.5, 4.5, 3, 9)]
    unknown = [f"P09_09_{i:02d}" for i in range(12)]  # not in the split (a valid record each)
    programs = ([{"narration_id": "P01_01_0", "status": "valid", "program": {"steps": []}},
                 {"narration_id": "P01_01_1", "status": "invalid", "program": {"steps": []}}]
                + [{"narration_id": k, "status": "valid", "program": {"steps": []}} for k in unknown])
    r = make(tmp_path, segs, programs=programs, programs_path=tmp_path / "p.jsonl", targets=_Targets())
    got = shards(tmp_path / "out")
    assert got["P01_01_0"]["has_program"] is True and got["P01_01_0"]["targets"]["of"] == "P01_01_0"
    for k in ("P01_01_1", "P01_01_2"):  # an invalid record, and none: no targets
        assert got[k]["has_program"] is False and got[k]["targets"] is None
    b = got["P01_01_1"]
    assert (b["start"], b["stop"], b["fps"], b["task"]) == (2.0, 3.0, FPS, "recognition")
    assert (b["verb_class"], b["noun_class"], b["video"], b["participant"]) == (4, 8, "P01_01", "P01")
    m = r.manifest
    assert m["counts"]["with_program"] == 1 and m["counts"]["without_program"] == 2
    assert "blank" not in m["counts"]  # (anticipation's count)
    assert m["histograms"] == {"verb_class": {"3": 2, "4": 1}, "noun_class": {"7": 1, "8": 1, "9": 1}}
    p = m["programs"]
    assert p["unknown_ids"] == 12 and p["unknown_examples"] == unknown[:10]  # (the first 10, docs/shards.md)
    assert p["valid"] == 1 and sum(g["valid"] for g in p["made_by"]) == 1  # the split's valid programs only


def test_unlabelled_segments_are_left_out_of_the_histograms(tmp_path):
    segs = [seg("P01_01_0", "P01_01", 0.5, 1.5, 3, 7), seg("P01_01_1", "P01_01", 2.0, 3.0, None, None)]
    m = make(tmp_path, segs).manifest
    assert m["counts"]["samples"] == 2
    assert m["histograms"] == {"verb_class": {"3": 1}, "noun_class": {"7": 1}}


def test_a_shard_never_grows_past_max_shard_size_with_its_tar_end(tmp_path):
    segs = [seg(f"P01_01_{i}", "P01_01", 0.5 + i, 1.0 + i) for i in range(6)]
    sizes = make(tmp_path, segs, name="one").manifest["shards"][0]["sizes"]
    limit = 3 * max(sizes) + 500  # three samples fit, not with the tar's 1024-byte end
    m = make(tmp_path, segs, max_shard_size=limit).manifest
    assert [s["count"] for s in m["shards"]] == [2, 2, 2]
    assert all((tmp_path / "out" / s["name"]).stat().st_size <= limit for s in m["shards"])


def test_skips_recorded_with_a_shard_are_counted(tmp_path):
    segs = [seg("P00_01_0", "P00_01", 0.5, 1.5), seg("P00_01_1", "P00_01", 2.0, 3.0)] + \
           [seg(f"P01_01_{i}", "P01_01", 0.5 + i, 1.0 + i) for i in range(3)]
    m = make(tmp_path, segs, opener=_Opener(bad={"P00_01"}), max_count=1).manifest
    assert m["counts"]["skipped"] == 2 and [x["narration_id"] for x in m["skipped"]] == ["P00_01_0", "P00_01_1"]
    assert m["counts"]["samples"] == 3 and m["counts"]["shards"] == 3


def test_a_clip_ending_on_frame_1_is_observed_padded_not_blank():
    """Clips mode, 10 fps, tau_a 1 s, 8-frame clips: an action at 1.05 s is observed up to 0.05 s, frame 1; the
    current clip spans frames -6..1, so it holds frame 1 with 7 padded frames; the one before is wholly absent."""
    s = ShardSettings(split="train", task="anticipation", frames=4, context=1, span_frames=8, tau_a=1.0)
    _, records, _ = plan_samples([seg("P01_01_0", "P01_01", 1.05, 2.05)], lambda v: FPS, s)
    r = records["P01_01_0"]
    assert r["blank"] is False and r["frame_indices"] == [1, 1, 1, 1]
    cur = r["clips"][-1]
    assert (cur["first_frame"], cur["last_frame"], cur["present"], cur["padded_frames"]) == (-6, 1, True, 7)
    assert r["clips"][0]["present"] is False and r["context"][0]["present"] is False


# ---- re-runs ----------------------------------------------------------------------------------------------

def test_a_rerun_removes_the_partial_shard_of_a_build_that_was_killed(tmp_path):
    segs = [seg(f"P01_01_{i}", "P01_01", 0.5 + i, 1.0 + i) for i in range(3)]
    make(tmp_path, segs, max_count=2)
    stray = tmp_path / "out" / ".leap-train-000002.tar.partial"
    stray.write_bytes(b"half a shard")
    r = make(tmp_path, segs, max_count=2)
    assert r.resumed_shards == 2 and r.written_now == 0
    assert not stray.exists()


class _Redownloaded(_Opener):
    """An opener that tells each video's file stat (its ``version``), so that a skip is retried once it changes."""

    def __init__(self, bad=(), version=1):
        super().__init__(bad)
        self.version = version

    def video_stat(self, video_id):
        return [100, self.version, self.version]


def test_a_skip_retried_after_its_video_changed_is_not_retried_again(tmp_path):
    segs = [seg("P00_01_0", "P00_01", 0.5, 1.5)] + [seg(f"P01_01_{i}", "P01_01", 0.5 + i, 1.0 + i) for i in range(3)]
    first = make(tmp_path, segs, opener=_Redownloaded(bad={"P00_01"}), max_count=2)
    assert first.manifest["counts"]["skipped"] == 1
    again = make(tmp_path, segs, opener=_Redownloaded(version=2), max_count=2)  # downloaded again: now readable
    assert again.written_now == 1 and any("tried again" in n for n in again.notes)
    assert again.manifest["counts"] == dict(again.manifest["counts"], samples=4, skipped=0)
    third = make(tmp_path, segs, opener=_Redownloaded(version=2), max_count=2)  # nothing changed since
    assert third.written_now == 0 and not any("tried again" in n for n in third.notes)
    assert third.manifest["counts"]["samples"] == 4 and third.manifest["skipped"] == []


# ---- the program file -------------------------------------------------------------------------------------

def test_a_record_replaced_by_a_later_line_is_read_once_and_hashes_as_the_compacted_file(tmp_path):
    from leap_cli.shards.writer import programs_digest, read_programs

    old = {"narration_id": "P01_01_0", "status": "failed", "program": None}
    new = {"narration_id": "P01_01_0", "status": "valid", "program": {"steps": []}}
    other = {"narration_id": "P01_01_1", "status": "valid", "program": {"steps": []}}
    rerun = tmp_path / "rerun.jsonl"
    rerun.write_text("".join(json.dumps(r) + "\n" for r in (old, other, new)))
    compact = tmp_path / "compact.jsonl"
    compact.write_text("".join(json.dumps(r) + "\n" for r in (other, new)))
    assert read_programs(rerun) == [other, new]
    assert programs_digest(read_programs(rerun)) == programs_digest(read_programs(compact))


def test_an_empty_program_file_gives_samples_without_programs(tmp_path):
    by_id, report = match_programs([], {"P01_01_0"}, tmp_path / "p.jsonl")
    assert by_id == {} and report["records"] == 0 and report["matched"] == 0
    r = make(tmp_path, [seg("P01_01_0", "P01_01", 0.5, 1.5)], programs=[], programs_path=tmp_path / "p.jsonl",
             targets=_Targets())
    assert r.manifest["counts"]["with_program"] == 0 and shards(tmp_path / "out")["P01_01_0"]["has_program"] is False


# ---- failures ---------------------------------------------------------------------------------------------

class _Failing(_Flat):
    def __init__(self, error):
        self.error = error

    def read_frames(self, indices, short_side=None):
        raise self.error


class _FailingOpener:
    """P00_01's frames raise a ValueError, P00_02's an OSError; other videos read."""

    def __call__(self, video_id):
        failing = {"P00_01": ValueError("bad frame"), "P00_02": OSError("I/O error")}
        return _Failing(failing[video_id]) if video_id in failing else _Flat()


def test_frame_failures_of_different_kinds_are_different_causes(tmp_path):
    segs = [seg(f"{v}_0", v, 0.5, 1.5) for v in ("P00_01", "P00_02", "P01_01")]
    m = make(tmp_path, segs, opener=_FailingOpener()).manifest
    causes = {x["narration_id"]: x["cause"] for x in m["skipped"]}
    assert set(causes) == {"P00_01_0", "P00_02_0"} and m["counts"]["samples"] == 1
    assert causes["P00_01_0"] != causes["P00_02_0"]  # (the summary counts skips by cause)
    assert "ValueError" in causes["P00_01_0"] and "OSError" in causes["P00_02_0"]


class _Short(_Flat):
    """A reader that returns only the first of the frames asked for (a video that ends early)."""

    def read_frames(self, indices, short_side=None):
        return super().read_frames(indices[:1], short_side)


def test_a_read_that_returns_fewer_frames_than_asked_is_a_skip_not_a_short_sample(tmp_path):
    segs = [seg("P00_01_0", "P00_01", 0.5, 1.5), seg("P01_01_0", "P01_01", 0.5, 1.5)]
    m = make(tmp_path, segs, opener=lambda vid: _Short() if vid == "P00_01" else _Flat()).manifest
    assert [x["narration_id"] for x in m["skipped"]] == ["P00_01_0"] and "1 of 4 frames" in m["skipped"][0]["reason"]
    assert list(shards(tmp_path / "out")) == ["P01_01_0"]


def test_a_resumed_build_counts_its_progress_from_the_samples_kept(tmp_path):
    segs = [seg(f"P01_01_{i}", "P01_01", 0.5 + i, 1.0 + i) for i in range(3)]
    first = make(tmp_path, segs, max_count=2)
    (tmp_path / "out" / first.manifest["shards"][1]["name"]).unlink()  # the last shard lost: redone
    calls = []
    again = make(tmp_path, segs, max_count=2, progress=lambda done, total: calls.append((done, total)))
    assert again.resumed_shards == 1 and again.written_now == 1
    assert calls[0] == (2, 3) and calls[1] == (3, 3) and calls[-1] == (3, 3)


def test_a_rerun_after_a_lost_progress_line_rebuilds_from_the_gap_and_names_each_shard_once(tmp_path):
    segs = [seg(f"P01_01_{i}", "P01_01", 0.5 + i, 1.0 + i) for i in range(3)]
    make(tmp_path, segs, max_count=1)
    progress = tmp_path / "out" / ".progress.jsonl"
    lines = progress.read_text().splitlines(keepends=True)
    progress.write_text(lines[0] + lines[2])  # shard 1's record lost: shards 0 and 2 listed
    r = make(tmp_path, segs, max_count=1)
    assert r.resumed_shards == 1 and r.written_now == 2  # shard 2 is not kept past the gap
    names = [s["name"] for s in r.manifest["shards"]]
    assert names == [f"leap-train-{i:06d}.tar" for i in range(3)]
    assert [k for s in r.manifest["shards"] for k in s["keys"]] == [s.narration_id for s in segs]


def test_a_narration_id_twice_in_the_split_is_refused(tmp_path):
    with pytest.raises(LeapError, match="P01_01_0 appears twice"):
        make(tmp_path, [seg("P01_01_0", "P01_01", 0.5, 1.5), seg("P01_01_0", "P01_01", 2.0, 3.0)])


def test_the_split_csv_hash_ignores_the_narration_timestamp_no_sample_holds():
    from dataclasses import replace

    from leap_cli.shards.writer import annotations_digest

    segs = [seg("P01_01_0", "P01_01", 0.5, 1.5), seg("P01_01_1", "P01_01", 2.0, 3.0)]
    moved = [replace(s, narration_timestamp=s.start + 0.25) for s in segs]
    assert annotations_digest(moved) == annotations_digest(segs)
    assert annotations_digest([replace(segs[0], stop=1.6), segs[1]]) != annotations_digest(segs)


def test_skips_that_cannot_change_are_not_tried_again_by_a_rerun(tmp_path):
    """A video the video info does not know (no fps), and one that fails to open with an opener that cannot tell
    a file's stat: a re-run keeps their skips once each and says nothing new."""
    def fps(video_id):
        if video_id == "P09_09":
            raise LeapError("no fps for P09_09", fix="add it to EPIC_100_video_info.csv")
        return FPS

    segs = [seg("P09_09_0", "P09_09", 0.5, 1.5), seg("P00_01_0", "P00_01", 0.5, 1.5),
            seg("P01_01_0", "P01_01", 0.5, 1.5), seg("P01_01_1", "P01_01", 2.0, 3.0)]
    opener = _Opener(bad={"P00_01"})
    kw = dict(settings=ShardSettings("train", frames=4, short_side=32, max_count=1), opener=opener, fps=fps)
    first = build_shards(segs, out=tmp_path / "out", **kw)
    assert sorted(x["narration_id"] for x in first.manifest["skipped"]) == ["P00_01_0", "P09_09_0"]
    again = build_shards(segs, out=tmp_path / "out", **kw)
    assert again.written_now == 0 and not any("tried again" in n for n in again.notes)
    assert sorted(x["narration_id"] for x in again.manifest["skipped"]) == ["P00_01_0", "P09_09_0"]
    assert again.manifest["counts"]["skipped"] == 2 and again.manifest["counts"]["samples"] == 2


def test_a_blank_anticipation_sample_holds_all_its_black_frames(tmp_path):
    """Clips mode, tau_a 1 s: an action at 0.5 s has nothing to observe -- T black frames, no context clip."""
    r = make(tmp_path, [seg("P01_01_0", "P01_01", 0.5, 1.5), seg("P01_01_1", "P01_01", 3.0, 4.0)],
             task="anticipation", context=1, span_frames=8, tau_a=1.0)
    assert r.manifest["counts"]["blank"] == 1
    tar = tmp_path / "out" / r.manifest["shards"][0]["name"]
    fields = {k: f for k, f in iter_tar_samples(tar)}
    blank = fields["P01_01_0"]
    assert sorted(k for k in blank if k != "json") == [f"f{i:03d}.jpg" for i in range(4)]
    assert json.loads(blank["json"])["blank"] is True
    assert len([k for k in fields["P01_01_1"] if k.startswith("f")]) == 4


def test_frame_cache_entries_of_the_same_file_are_used_whatever_its_change_time(tmp_path):
    """extract records its source as [size, mtime]; the writer's video stat adds the change time (a chmod), which
    must not make the cache's entries of an unchanged file unusable."""
    from leap_cli.extract.cache import FrameCache
    from leap_cli.shards.writer import cache_entries_usable

    cache = FrameCache(tmp_path / "cache", 4, 32, 90)
    cache.claim("P01_01", [100, 5])
    assert cache_entries_usable(cache, _Redownloaded(version=5), "P01_01")  # stat [100, 5, 5]
    assert not cache_entries_usable(cache, _Redownloaded(version=6), "P01_01")  # the file changed


def test_merged_parts_beside_a_begun_build_without_shard_are_not_said_to_be_done(tmp_path):
    """A folder whose --shard i/2 parts are done and merged: a run without --shard has nothing to write; once a
    build without --shard has begun there (its .progress.jsonl), the folder mixes the two and is refused."""
    segs = [seg("P01_01_0", "P01_01", 0.5, 1.5), seg("P02_01_0", "P02_01", 0.5, 1.5)]
    for i in range(2):
        make(tmp_path, segs, shard=ShardSpec(i, 2))
    assert any("nothing new to write" in n for n in make(tmp_path, segs).notes)
    (tmp_path / "out" / ".progress.jsonl").write_text("")
    with pytest.raises(LeapError, match="--shard i/2 parts"):
        make(tmp_path, segs)
