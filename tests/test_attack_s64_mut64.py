"""Session 64, helper mut64: a hand-made mutation run over session 63's code (the part remake of outdated extract
records: runner._parts_to_make, _merged, _EarlierLines, the summary's counts and notes; base.outdated_parts;
build-shards' frame cache read from extract's settings; store.paid_turns and the estimate's repair turns). Each test
here kills a mutant that the earlier tests let live: behaviour no test pinned. Was wrong (failing before the fix): a
frame cache that extract's settings name relative (an earlier leap's, as given) and absolute (today's) was taken for
two folders, none read."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from leap_cli.extract import base
from leap_cli.extract.runner import ExtractConfig, run_extract
from leap_cli.io import read_jsonl
from tests.extract_kitchen import ALL_COMPONENTS as ALL, build, earlier_camera_output, kitchen_config
from tests.test_programs_generate import good_programs, workdir  # noqa: F401 (the fixtures)

OK = {"status": "ok", "source": "s", "data": {}, "text": "t"}


@pytest.fixture(scope="module")
def kitchen(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("kitchen") / "root")


@pytest.fixture(scope="module")
def old_output(kitchen, tmp_path_factory) -> str:
    """The output of an earlier leap (camera 1, whose odometry wrote another text), as text."""
    return earlier_camera_output(kitchen, tmp_path_factory.mktemp("old") / "train.jsonl")


_cfg = kitchen_config


def _recs(text: str) -> list[dict]:
    return [json.loads(x) for x in text.splitlines() if x.strip()]


def _write(out: Path, recs: list[dict]) -> None:
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))


def _lines(out: Path) -> dict[str, dict]:
    return {r["narration_id"]: r for r in read_jsonl(out)}


# --- _parts_to_make, _merged, _EarlierLines, outdated_parts: the functions alone ----------------------------------

def test_the_objects_detector_brings_no_hands_into_a_run_without_them():
    """With --detector-weights the hands are made with the objects only where the run has hands: a run without them
    makes the objects alone (the note would say "hands of N" made again where no hands component is)."""
    from leap_cli.extract.runner import _parts_to_make

    four = ("narration", "audio", "camera", "objects")
    rec = {"components": {n: dict(OK, text=n) for n in four}}
    det = ExtractConfig(data=Path("d"), split="train", out=Path("o"), components=four, detector_weights=Path("w.pth"))
    assert _parts_to_make(rec, {"objects": (1, 2)}, det) == ("objects",)


def test_an_outdated_part_that_cannot_be_rendered_is_made_again_alone():
    """Only the kept components must render: the outdated one is made again, whatever an earlier leap wrote in it."""
    from leap_cli.extract.runner import _parts_to_make

    rec = {"components": {n: dict(OK, text=n) for n in ALL}}
    rec["components"]["audio"] = {"status": "ok", "data": {"timeline": [{}]}, "text": ""}  # (render_clip fails)
    plain = ExtractConfig(data=Path("d"), split="train", out=Path("o"))
    assert _parts_to_make(rec, {"audio": (1, 2)}, plain) == ("audio",)
    assert _parts_to_make(rec, {"camera": (1, 2)}, plain) is None  # (kept: cannot be rendered)


def test_merged_components_are_in_components_order_whatever_the_records():
    from leap_cli.extract.runner import _merged

    old = {"components": {"hands": dict(OK, text="h"), "camera": dict(OK, text="old"), "narration": dict(OK, text="n")}}
    got = _merged(old, {"camera": dict(OK, text="new")})
    assert list(got) == ["narration", "camera", "hands"]
    assert got["camera"]["text"] == "new" and got["hands"]["text"] == "h"


def test_earlier_lines_finds_keys_with_quotes_and_backslashes(tmp_path):
    """The key is read off the line's start as json_line writes it: an escaped quote or backslash in a narration id
    ends no key."""
    from leap_cli.extract.runner import _EarlierLines
    from leap_cli.io import json_line

    out = tmp_path / "train.jsonl"
    recs = [{"narration_id": k, "n": i} for i, k in enumerate(['a"b', "c\\d", 'e\\"f', "P01_01_0", "é\u2028"])]
    out.write_text("".join(json_line(r) for r in recs), encoding="utf-8")
    with _EarlierLines(out, {r["narration_id"] for r in recs}) as earlier:
        for r in reversed(recs):
            assert earlier.get(r["narration_id"]) == r


def test_versions_that_are_booleans_are_taken_as_one():
    """A version that is not a number (a bool too, though Python counts it an int) is read as a record without one:
    false is not 0 (that would make the narration of every such record again), true not 1 by accident."""
    comps = {n: dict(OK, text=n) for n in ("narration", "audio")}
    assert base.outdated_parts({"components": comps, "versions": {"narration": False, "audio": True, "text": 1}}) == {}
    assert base.outdated_parts({"components": comps, "versions": {"narration": 0, "text": 1}}) == {"narration": (0, 1)}


def test_the_default_frame_cache_is_recorded_absolute():
    """extract --workdir w (relative) records WORKDIR/frame-cache as an absolute path: build-shards, run from another
    folder, reads it from the settings (a relative one would be looked for under that other folder)."""
    from leap_cli.commands.extract import _frame_cache_dir

    got = _frame_cache_dir(None, Path("w"))
    assert got.is_absolute() and got == (Path("w") / "frame-cache").absolute()
    assert _frame_cache_dir("", Path("w")).is_absolute()
    assert _frame_cache_dir("None", Path("w")) is None


# --- run_extract: what a key's earlier lines and kept failures count ------------------------------------------------

def test_a_keys_earlier_line_made_whole_is_not_counted_whole(kitchen, old_output, tmp_path):
    """A key's lines are asked in turn and the last decides: an earlier line a later leap made (made whole) and a last
    one an earlier leap made (camera alone) count the record once, among the part remakes."""
    out = tmp_path / "train.jsonl"
    recs = _recs(old_output)
    later = json.loads(json.dumps(recs[1]))
    later["versions"]["camera"] = 3
    _write(out, [later] + recs)
    s = run_extract(_cfg(kitchen, out))
    assert s.outdated == 3 and s.outdated_whole == 0 and not s.outdated_whole_why, s
    assert s.outdated_made == Counter({"camera": 3}), s


def _retryable(kitchen, out: Path, recs: list[dict]) -> int:
    _write(out, recs)
    return run_extract(_cfg(kitchen, out)).retryable


def test_a_keys_earlier_line_with_a_kept_failure_is_not_left_retryable(kitchen, old_output, tmp_path):
    """An earlier line of a key whose kept audio failed, then the key's current record: nothing of it to retry."""
    out = tmp_path / "train.jsonl"
    first = tmp_path / "first.jsonl"
    first.write_text(old_output)
    run_extract(_cfg(kitchen, first))  # today's records
    today = _recs(first.read_text())
    failed = _recs(old_output)[0]
    failed["components"]["audio"] = {"status": "error", "source": "dsp-rules", "text": "",
                                     "data": {"error": "internal error (OSError)", "detail": "OSError: x"}}
    base_count = _retryable(kitchen, out, today)
    assert _retryable(kitchen, tmp_path / "two.jsonl", [failed] + today) == base_count


def test_a_failure_in_the_part_made_again_is_not_left_retryable(kitchen, old_output, tmp_path, monkeypatch):
    """The audio bumped (audio 1 -> 2) and a record whose audio failed: the part remake makes the audio again, so
    --retry-errors has nothing of that record left to redo (the failure was in the part made now)."""
    recs = _recs(old_output)
    monkeypatch.setitem(base.VERSIONS, "camera", 1)  # (the camera of those records is current: only the audio bumps)
    monkeypatch.setitem(base.VERSIONS, "audio", 2)
    clean = _retryable(kitchen, tmp_path / "clean.jsonl", recs)
    recs[0]["components"]["audio"] = {"status": "error", "source": "dsp-rules", "text": "",
                                      "data": {"error": "internal error (OSError)", "detail": "OSError: x"}}
    out = tmp_path / "failed.jsonl"
    _write(out, recs)
    s = run_extract(_cfg(kitchen, out))
    assert s.outdated_made == Counter({"audio": 4}) and s.retryable == clean, s
    assert _lines(out)[recs[0]["narration_id"]]["components"]["audio"]["status"] == "ok"


def test_kept_parts_stay_in_the_workers_beside_a_record_made_whole(kitchen, old_output, tmp_path):
    """workers=2, one record made whole (every component built) beside three that make the camera alone: those three
    keep their other components as the record holds them (the workers are told what to make of each)."""
    out = tmp_path / "train.jsonl"
    recs = _recs(old_output)
    for r in recs:
        r["components"]["audio"]["text"] = "KEPT AUDIO " + r["narration_id"]
    gone = recs.pop()  # (made whole: not in the output)
    _write(out, recs)
    s = run_extract(_cfg(kitchen, out, workers=2))
    assert s.written == 4 and s.outdated == 3, s
    after = _lines(out)
    for r in recs:
        k = r["narration_id"]
        assert after[k]["components"]["audio"]["text"] == f"KEPT AUDIO {k}"
    assert after[gone["narration_id"]]["components"]["audio"]["text"] != f"KEPT AUDIO {gone['narration_id']}"


def test_a_part_made_without_frames_fills_no_frame_cache_entry(kitchen, tmp_path, monkeypatch):
    """The audio made again (it decodes no frame): a missing frame-cache entry is left to build-shards' decode, as a
    kept record's is; no video is decoded for it."""
    out, cache = tmp_path / "train.jsonl", tmp_path / "fc"
    run_extract(_cfg(kitchen, out, frame_cache=cache))
    entries = sorted(cache.rglob("*.jpgs"))
    assert len(entries) >= 2
    entries[1].unlink()
    monkeypatch.setitem(base.VERSIONS, "audio", 2)
    s = run_extract(_cfg(kitchen, out, frame_cache=cache))
    assert s.outdated_made == Counter({"audio": 4}), s
    assert sorted(cache.rglob("*.jpgs")) == [entries[0]] + entries[2:]
    assert not s.seconds.get("frame-cache")


def test_the_outdated_note_names_the_parts_in_components_order_and_the_causes():
    """The note's words: parts in COMPONENTS order (the clip text last) whatever order the records came in, then, after
    a semicolon, how many are made whole and why; with no part made, they all are."""
    from types import SimpleNamespace

    from leap_cli.commands.extract import _remade

    s = SimpleNamespace(outdated_made=Counter({"text": 1, "hands": 1, "camera": 2}), outdated_whole=3,
                        outdated_whole_why=Counter({"retry": 1, "kept": 1, "later": 1}))
    assert _remade(s) == ("only those parts are made again (camera of 2, hands of 1, the clip text alone of 1), their "
                          "other components kept and the clip text rendered again; 3 are made whole again (a later "
                          "leap's part in them, a component to keep that cannot be read as it is, or a failure "
                          "--retry-errors redoes)")
    s = SimpleNamespace(outdated_made=Counter(), outdated=2, outdated_whole=2, outdated_whole_why=Counter({"kept": 2}))
    assert _remade(s) == "they are made whole again (a component to keep that cannot be read as it is)"
    s = SimpleNamespace(outdated_made=Counter(), outdated=1, outdated_whole=1, outdated_whole_why=Counter({"kept": 1}))
    assert _remade(s) == "it is made whole again (a component to keep that cannot be read as it is)"


# --- the estimate's repair turns: which paid turns it measures -----------------------------------------------------

def _log(store, nid: str, rnd: int, prompt: int, completion: int, *, error: str | None = None, backend="openai",
         model="test-model") -> None:
    store.log_call(narration_id=nid, backend=backend, model=model, prompt_hash="h", cache_key=f"{nid}-{rnd}-{model}",
                   round=rnd, response="{}", usage={"prompt_tokens": prompt, "completion_tokens": completion},
                   latency=0.1, attempts=1, cached=False, outcome="invalid" if error else "valid", error=error)


def test_paid_turns_are_the_backends_and_read_before_a_commit(tmp_path):
    """Another backend's replies (the same model name) are not this one's; rows still buffered (commit_every) are
    counted."""
    from leap_cli.programs.store import ProgramStore

    with ProgramStore(tmp_path / "cache.sqlite", commit_every=3600) as store:
        _log(store, "a", 0, 1000, 200)
        _log(store, "b", 0, 1000, 200, backend="offline")
        assert [(r[0], r[1]) for r in store.paid_turns("openai", "test-model", 1)] == [("a", 0)]


def test_the_model_in_the_cache_is_measured_up_to_the_rounds_asked(workdir):  # noqa: F811
    """A fresh output: the model's turns in the program cache give the rate and sizes, those of the rounds asked
    (turns a run with more --repair-rounds paid are not this run's), of this backend; an endpoint without prompt
    tokens: the first reply, the repair message's frame and the findings, added up."""
    from leap_cli.programs.estimate import FRAMING, text_tokens
    from leap_cli.programs.generate import estimate_cost, repair_message
    from leap_cli.programs.store import ProgramStore
    from tests.test_programs_estimate import offline_config

    cfg = offline_config(workdir)
    cfg.cache_path.parent.mkdir(parents=True, exist_ok=True)
    with ProgramStore(cfg.cache_path) as store:
        for i in range(4):
            _log(store, f"x{i}", 0, 1000, 200, error="x" * 40 if i == 0 else None)
        _log(store, "x0", 1, 1500, 300, error="y" * 40)  # (round 1 failed again: a run with 2 rounds asked round 2)
        _log(store, "x0", 2, 2000, 900)
        _log(store, "y0", 0, 1000, 200, error="z" * 40, backend="offline")  # (another backend's)
        for i in range(2):  # an endpoint that reports no prompt tokens
            _log(store, f"n{i}", 0, 0, 100, error="w" * 400 if i == 0 else None, model="no-prompt-tokens")
    r = estimate_cost(offline_config(workdir, repair_rounds=1)).repairs
    assert r.rate == pytest.approx(0.25) and r.reply_tokens == pytest.approx(300), r
    assert r.extra_prompt == pytest.approx(500) and r.source.endswith("test-model in the program cache"), r
    assert estimate_cost(offline_config(workdir, repair_rounds=2)).repairs.reply_tokens == pytest.approx(600)
    r = estimate_cost(offline_config(workdir, model="no-prompt-tokens")).repairs
    frame = text_tokens(repair_message([]))
    assert r.rate == pytest.approx(0.5) and r.extra_prompt == pytest.approx(100 + frame + 400 / 4 + FRAMING), r


def test_this_outputs_records_are_measured_apart_from_the_caches_others(workdir, good_programs):  # noqa: F811
    """The output's records' own turns give the rate, not the model's others in the cache; records whose clip changed
    since (made again) are this output's too."""
    from leap_cli.programs.generate import estimate_cost
    from leap_cli.programs.store import ProgramStore
    from tests.test_attack_s63_estrepair import _paid_run, offline_config

    _paid_run(workdir, good_programs)  # 4 records, 2 of whose first replies asked a repair turn
    cfg = offline_config(workdir)
    with ProgramStore(cfg.cache_path) as store:
        for i in range(4):  # another output's, on the same model: none asked one
            _log(store, f"other{i}", 0, 1000, 200)
    r = estimate_cost(cfg).repairs
    assert r.rate == pytest.approx(0.5) and r.source.endswith("this output's records"), r
    out = cfg.out_path
    recs = _recs(out.read_text())
    for rec in recs:
        rec["provenance"]["clip_hash"] = "0" * 16  # (extract made their clips again since)
    _write(out, recs)
    est = estimate_cost(cfg)
    assert est.pending == len(recs) + 2 and est.repairs.rate == pytest.approx(0.5), est
    assert est.repairs.source.endswith("this output's records"), est.repairs


# --- build-shards' frame cache, read from extract's settings -------------------------------------------------------

def _settings(desc: Path, name: str, value) -> None:
    desc.mkdir(parents=True, exist_ok=True)
    (desc / name).write_text(json.dumps(value))


def test_settings_that_are_no_object_or_name_no_folder_are_passed_over(tmp_path, monkeypatch):
    """Settings that are JSON but not an object, or an empty folder name (which would be the folder build-shards runs
    in), name no frame cache: WORKDIR/frame-cache is read, no note."""
    from leap_cli.commands.shards import extracts_frame_cache, recorded_frame_caches

    monkeypatch.chdir(tmp_path)
    work = tmp_path / "w"
    desc = work / "descriptors"
    _settings(desc, "train.config.json", ["frame_cache", "x"])
    _settings(desc, "train.shard0of2.config.json", {"frame_cache": "", "cache_frames": 16})
    assert recorded_frame_caches(work, "train") == []
    assert extracts_frame_cache(work, "train") == (None, None)


def test_the_default_recorded_absolute_is_the_default_of_a_relative_workdir(tmp_path, monkeypatch):
    """extract records WORKDIR/frame-cache absolute; build-shards --workdir w (relative), the folder gone: the default,
    whose writer gives the notes, is no other folder "not there"."""
    from leap_cli.commands.shards import extracts_frame_cache

    monkeypatch.chdir(tmp_path)
    _settings(tmp_path / "w/descriptors", "train.config.json",
              {"frame_cache": str(tmp_path / "w/frame-cache"), "cache_frames": 16})
    assert extracts_frame_cache(Path("w"), "train") == (None, None)


def test_one_folder_recorded_relative_by_an_earlier_leap_and_absolute_now_is_one(tmp_path, monkeypatch):
    """An earlier leap recorded --frame-cache fc as given (relative), today's the same folder absolute (two --shard
    parts' settings): that is one frame cache, read, not "2 frame caches" of which none is read (every sample then
    decoded from the videos)."""
    from leap_cli.commands.shards import extracts_frame_cache

    monkeypatch.chdir(tmp_path)
    (tmp_path / "fc").mkdir()
    desc = tmp_path / "w/descriptors"
    _settings(desc, "train.shard0of2.config.json", {"frame_cache": "fc", "cache_frames": 16})
    _settings(desc, "train.shard1of2.config.json", {"frame_cache": str(tmp_path / "fc"), "cache_frames": 16})
    got, note = extracts_frame_cache(tmp_path / "w", "train")
    assert note is None and got is not None and got.resolve() == (tmp_path / "fc").resolve()


def test_a_summary_of_one_row_prints_its_table():
    """A run whose table has one row (the narration alone: no decode) prints it; only a table without rows (clip texts
    rendered again, nothing selected) is its title alone."""
    from leap_cli.commands import extract as command
    from leap_cli.extract.runner import ExtractSummary

    s = ExtractSummary(out=Path("train.jsonl"), segments=1, written=1, wall=1.0)
    s.counts["narration"]["ok"] = 1
    with command.console.capture() as cap:
        command._print_summary(s)
    said = cap.get()
    assert "share of time" in said and "narration" in said, said


def test_workers_load_no_model_of_a_kept_part(kitchen, old_output, tmp_path):
    """workers=2, the camera alone made again: the workers build the camera alone, not the audio model of the run's
    settings (here a file that cannot be loaded: a worker that built it would fail)."""
    out = tmp_path / "train.jsonl"
    out.write_text(old_output)
    s = run_extract(_cfg(kitchen, out, workers=2, audio_model=tmp_path / "no-such-model.pt"))
    assert s.written == 3 and s.outdated_made == Counter({"camera": 3}), s
    assert {r["components"]["audio"]["text"] for r in _lines(out).values()} == \
        {r["components"]["audio"]["text"] for r in _recs(old_output)}
