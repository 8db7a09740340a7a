"""Mutation tests of session 50's new code: the checks that a hand-made mutant of each new line survived in the
nearest tests (model.options types and ranges, extract's record versions, the streamed submission's wording, the
train flags' contradiction with --set, the offline refusal of the LLM's request options)."""
from __future__ import annotations

import io
import json

import pytest

from leap_cli.errors import LeapError
from leap_cli.extract.base import VERSIONS


# ---- train/config.py: _check_options ------------------------------------------------------------------------------

def _load(*sets):
    from leap_cli.train.config import load_config

    return load_config("tiny-synthetic", list(sets))


def _refused(setting: str) -> str:
    with pytest.raises(LeapError) as e:
        _load(setting)
    key = setting.split("=")[0]
    assert f"config key {key!r}" in e.value.message, e.value.message
    return e.value.message


BOOLS = ("temporal_downsample", "no_lmhra", "double_lmhra", "grad_checkpointing", "frozen", "use_sdpa",
         "decoder_recognition")


@pytest.mark.parametrize("key", BOOLS)
def test_each_bool_option_refuses_a_string_and_a_number_and_takes_a_bool(key):
    assert "'false' is not true or false" in _refused(f"model.options.{key}='false'")
    assert "1 is not true or false" in _refused(f"model.options.{key}=1")
    assert _load(f"model.options.{key}=false").model.options[key] is False


@pytest.mark.parametrize("setting, says", [
    ("model.options.return_list=[0.5]", "not a list of integers (block indices)"),
    ("model.options.return_list=[true]", "not a list of integers"),
    ("model.options.return_list='0,1'", "not a list of integers"),
    ("model.options.return_list=''", "not a list of integers"),
    ("model.options.mean=''", "not a list of numbers"),
    ("model.options.mlp_dropout=0.5", "not a list of numbers (one per return_list block)"),
    ("model.options.mlp_dropout=[true]", "not a list of numbers"),
    ("model.options.mlp_dropout=['a']", "not a list of numbers"),
    ("model.options.mean=0.5", "not a list of numbers (R, G, B)"),
    ("model.options.std=[x, y, z]", "not a list of numbers (R, G, B)"),
])
def test_list_options_refuse_what_is_not_a_list_of_their_type(setting, says):
    assert says in _refused(setting)


def test_list_options_take_ints_and_floats_where_numbers_are_asked():
    o = _load("model.options.mlp_dropout=[0.5, 0]", "model.options.mean=[1, 0.5, 0]", "model.options.std=[1,1,1]",
              "model.options.return_list=[0, 1]").model.options
    assert o["mlp_dropout"] == [0.5, 0] and o["mean"] == [1, 0.5, 0] and o["return_list"] == [0, 1]


@pytest.mark.parametrize("key", ("dw_reduction", "mlp_factor"))
@pytest.mark.parametrize("value", ("0", "-1", "true", ".inf", "'2'", "[2]"))
def test_a_divisor_option_refuses_what_is_not_a_number_over_0(key, value):
    assert "is not a number over 0" in _refused(f"model.options.{key}={value}")


@pytest.mark.parametrize("key", ("dw_reduction", "mlp_factor"))
def test_a_divisor_option_takes_a_fraction_and_an_integer(key):
    assert _load(f"model.options.{key}=0.5").model.options[key] == 0.5
    assert _load(f"model.options.{key}=3").model.options[key] == 3


@pytest.mark.parametrize("key", ("patch_size", "width", "layers", "heads", "kernel_t", "n_dim", "n_head"))
def test_each_architecture_integer_is_at_least_1(key):
    assert "0 is out of range [1, inf)" in _refused(f"model.options.{key}=0")
    assert "1.5 is not an integer" in _refused(f"model.options.{key}=1.5")
    assert "True is not an integer" in _refused(f"model.options.{key}=true")
    assert _load(f"model.options.{key}=1").model.options[key] == 1


# ---- extract/base.py: record_versions, outdated -----------------------------------------------------------------

def test_record_versions_holds_the_record_components_and_the_text(monkeypatch):
    from leap_cli.extract import base

    assert set(base.VERSIONS) == set(base.COMPONENTS) | {"text"}
    assert all(type(v) is int and v >= 1 for v in base.VERSIONS.values())
    monkeypatch.setattr(base, "VERSIONS", dict.fromkeys(base.VERSIONS, 1))
    assert base.record_versions(["camera", "hands"]) == {"camera": 1, "hands": 1, "text": 1}
    assert base.record_versions({"audio": {}, "other": {}}) == {"audio": 1, "text": 1}
    assert base.record_versions([]) == {"text": 1}


def test_outdated_names_the_parts_made_by_an_earlier_number(monkeypatch):
    from leap_cli.extract import base

    monkeypatch.setattr(base, "VERSIONS", dict.fromkeys(base.VERSIONS, 1))
    monkeypatch.setattr(base, "CHANGED", {})
    rec = {"components": {"camera": {}, "audio": {}}, "versions": {"camera": 1, "audio": 1, "text": 1}}
    assert base.outdated(rec) == []
    assert base.outdated({"components": {"camera": {}}}) == []  # a record of a leap before versions: all 1
    monkeypatch.setitem(base.VERSIONS, "camera", 2)
    assert base.outdated(rec) == ["camera 1 -> 2"]
    assert base.outdated({"components": {"camera": {}}}) == ["camera 1 -> 2"]
    assert base.outdated({"components": {"camera": {}}, "versions": "junk"}) == ["camera 1 -> 2"]
    assert base.outdated({"components": {"camera": {}}, "versions": {"camera": 2}}) == []
    assert base.outdated({"components": {"audio": {}}, "versions": {}}) == []  # camera not held: not outdated
    assert base.outdated({"components": "junk"}) == []
    assert base.outdated({"components": ["camera"]}) == []  # (components not a mapping: none held)
    monkeypatch.setitem(base.VERSIONS, "text", 3)
    assert base.outdated({"components": {}, "versions": {"text": 1}}) == ["text 1 -> 3"]
    # a record of a later leap (a higher number) is also not this leap's: made again
    monkeypatch.setitem(base.VERSIONS, "camera", 1)
    monkeypatch.setitem(base.VERSIONS, "text", 1)
    assert base.outdated({"components": {"camera": {}}, "versions": {"camera": 2, "text": 1}}) == ["camera 2 -> 1"]


# ---- submit.py: _JsonStream ---------------------------------------------------------------------------------------

def _stream(text: str):
    from leap_cli.submit import _JsonStream

    return _JsonStream(io.BytesIO(text.encode()), "utf-8")


@pytest.mark.parametrize("char, says", [(":", "Expecting ':' delimiter"), (",", "Expecting ',' delimiter"),
                                        ("{", "Expecting '{'"), ("}", "Expecting '}'")])
def test_take_words_a_missing_character_as_json_does(char, says):
    s = _stream('  x')
    with pytest.raises(json.JSONDecodeError) as e:
        s.take(char)
    assert e.value.msg == says
    s = _stream(f" {char}x")
    s.take(char)
    assert s.peek() == "x"


def test_whole_is_the_stream_from_its_start():
    s = _stream('  \n [1, 2')
    assert s.peek() == "["
    assert s.whole() == '  \n [1, 2'
    with pytest.raises(json.JSONDecodeError) as e:
        json.loads(_stream('  \n [1, 2').whole())
    assert e.value.pos == len('  \n [1, 2')


def test_a_non_object_submission_is_said_with_its_place_counted_from_the_start(tmp_path):
    import zipfile

    from leap_cli.submit import MEMBER, _check_streamed

    path = tmp_path / "sub.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(MEMBER, "\n\n   [1, 2")
    with pytest.raises(Exception) as e:
        _check_streamed(path, ["P01_101_0"], 97, 300)
    assert "character 10 of test.json" in str(e.value), str(e.value)


# ---- commands/train.py: a flag and a --set that contradict it -----------------------------------------------------

@pytest.mark.parametrize("flag, setting, said", [
    ("--no-program-loss", "loss.program_loss=true", "--no-program-loss is --set loss.program_loss=false"),
    ("--allow-partial-load", "model.allow_partial_load=false", "--allow-partial-load is --set "
                                                                "model.allow_partial_load=true"),
    ("--allow-partial-load", "model.allow_partial_load=0", "--allow-partial-load is --set"),
    ("--no-program-loss", "loss.program_loss=0", "--no-program-loss is --set loss.program_loss=false"),
])
def test_a_flag_and_a_set_of_another_value_are_refused(monkeypatch, tmp_path, flag, setting, said):
    from tests.test_late_commands import fake_training, invoke, refusal

    calls = fake_training(monkeypatch, tmp_path)
    res = invoke("train", "--config", "tiny-synthetic", "--workdir", tmp_path, flag, "--set", setting)
    assert res.exit_code != 0 and said in refusal(res) and "a --set gives it another value" in refusal(res)
    assert not calls


@pytest.mark.parametrize("flag, setting, check", [
    ("--no-program-loss", "loss.program_loss=false", lambda c: c.loss.program_loss is False),
    ("--allow-partial-load", "model.allow_partial_load=true", lambda c: c.model.allow_partial_load is True),
    ("--no-program-loss", "model.allow_partial_load=false", lambda c: c.loss.program_loss is False
     and c.model.allow_partial_load is False),
    ("--allow-partial-load", "loss.program_loss=false", lambda c: c.loss.program_loss is False
     and c.model.allow_partial_load is True),
])
def test_a_flag_and_a_set_that_agree_or_are_apart_run(monkeypatch, tmp_path, flag, setting, check):
    from tests.test_late_commands import fake_training, invoke

    calls = fake_training(monkeypatch, tmp_path)
    res = invoke("train", "--config", "tiny-synthetic", "--workdir", tmp_path, flag, "--set", setting)
    assert res.exit_code == 0, res.output
    assert check(calls["cfg"])


def test_both_flags_together_reach_the_run(monkeypatch, tmp_path):
    from tests.test_late_commands import fake_training, invoke

    calls = fake_training(monkeypatch, tmp_path)
    res = invoke("train", "--config", "tiny-synthetic", "--workdir", tmp_path, "--no-program-loss",
                 "--allow-partial-load", "--set", "optim.lr=0.001")
    assert res.exit_code == 0, res.output
    assert calls["cfg"].loss.program_loss is False and calls["cfg"].model.allow_partial_load is True


# ---- commands/programs.py: the offline backend refuses the LLM's request options ----------------------------------

REQUEST = [("--model", "m"), ("--base-url", "http://localhost:1/v1"), ("--api-key-env", "K"), ("--concurrency", "2"),
           ("--workers", "2"), ("--timeout", "5"), ("--max-retries", "1"), ("--backoff", "2"),
           ("--temperature", "0.5"), ("--max-tokens", "100"), ("--extra-body", "{}"), ("--repair-rounds", "0"),
           ("--price-in", "1"), ("--price-out", "1"), ("--price-cached-in", "1"), ("--max-cost", "1")]


@pytest.mark.parametrize("option, value", REQUEST)
def test_offline_refuses_each_request_option_alone(tmp_path, epic_dir, option, value):
    from tests.test_late_commands import invoke, refusal

    res = invoke("generate-programs", "--split", "train", "--annotations", epic_dir, "--workdir", tmp_path / "w",
                 "--backend", "offline", option, value, "--limit", "1")
    said = refusal(res)
    assert said.startswith(f"{option} is an option of the LLM's requests; the backend is offline"), said
    assert "drop it" in said
    assert not (tmp_path / "w" / "programs" / "train.jsonl").exists()


def test_offline_refuses_two_request_options_as_them(tmp_path, epic_dir):
    from tests.test_late_commands import invoke, refusal

    res = invoke("generate-programs", "--split", "train", "--annotations", epic_dir, "--workdir", tmp_path / "w",
                 "--temperature", "0.3", "--model", "m", "--limit", "1")
    said = refusal(res)
    assert "--model, --temperature are options of the LLM's requests" in said and "drop them" in said


def test_offline_takes_the_options_that_are_not_requests(tmp_path, epic_dir):
    from tests.test_late_commands import invoke

    res = invoke("generate-programs", "--split", "train", "--annotations", epic_dir, "--workdir", tmp_path / "w",
                 "--k", "2", "--limit", "1")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "w" / "programs" / "train.jsonl").exists()


# ---- progress.py: output_console ---------------------------------------------------------------------------------

def test_output_console_soft_wraps_on_the_stream_asked():
    import sys

    from leap_cli.progress import output_console

    c = output_console()
    assert c.soft_wrap is True and c.stderr is False and c.file is sys.stdout
    e = output_console(stderr=True)
    assert e.soft_wrap is True and e.stderr is True


# ---- extract/runner.py: replace() and the summary's outdated counts ---------------------------------------------

@pytest.fixture(scope="module")
def extract_kitchen(tmp_path_factory):
    from tests.test_extract_stage import build

    return build(tmp_path_factory.mktemp("kitchen50m") / "root")


def _extract(kitchen, work, **kw):
    from typer.testing import CliRunner

    from leap_cli.cli import app

    args = ["extract", "--data", str(kitchen), "--split", "train", "--workdir", str(work),
            "--components", "narration,camera", "--frame-cache", "none"]
    r = CliRunner().invoke(app, args, terminal_width=400)
    assert r.exit_code == 0, r.output
    return " ".join(r.output.split())


def _extractor(data, out):
    """A run of extract (narration and camera) over ``data``'s train split into ``out``, as often as called."""
    from leap_cli.extract.runner import ExtractConfig, run_extract

    return lambda: run_extract(ExtractConfig(data=data, split="train", out=out, components=("narration", "camera")))


def test_an_outdated_line_followed_by_a_current_one_of_its_key_is_not_made_again(extract_kitchen, tmp_path):
    """The last line of a key decides: an earlier leap's line that a later run appended again is not counted; a
    record of an id outside the split is kept as it is; one made from other annotations is not counted outdated."""
    out = tmp_path / "train.jsonl"
    run = _extractor(extract_kitchen, out)
    run()
    lines = out.read_text().splitlines()
    old = json.loads(lines[0])
    old["versions"] = dict(old["versions"], camera=0)  # (a number before this leap's)
    foreign = dict(old, narration_id="P99_99_9")
    out.write_text("\n".join([json.dumps(old), *lines, json.dumps(foreign)]) + "\n")
    s = run()
    assert s.written == 0 and s.outdated == 0 and s.outdated_example == "", s
    # the other way round: the last line outdated, the one before current: made again, said
    old["versions"]["text"] = 0
    out.write_text("\n".join([*lines, json.dumps(old)]) + "\n")
    s = run()
    assert s.written == 1 and s.outdated == 1 and s.reannotated == 0
    cam = VERSIONS["camera"]
    assert s.outdated_example == f"{old['narration_id']}: camera 0 -> {cam}, text 0 -> 1", s.outdated_example
    # a record made from other annotations (and outdated too) is counted as that only
    lines = out.read_text().splitlines()
    other = json.loads(lines[1])
    other["versions"]["camera"] = 0
    other["annotation_hash"] = "0" * len(str(other["annotation_hash"]))
    lines[1] = json.dumps(other)
    out.write_text("\n".join(lines) + "\n")
    s = run()
    assert s.written == 1 and s.reannotated == 1 and s.outdated == 0 and s.outdated_example == "", s


def test_an_outdated_record_with_a_failed_component_is_not_left_to_retry_errors(extract_kitchen, tmp_path):
    """Made again for its versions, it is not also counted among the records --retry-errors would redo."""
    out = tmp_path / "train.jsonl"
    run = _extractor(extract_kitchen, out)
    run()
    lines = out.read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    i = next(i for i, r in enumerate(recs) if r["components"]["camera"]["status"] == "ok")
    before = run()
    assert before.written == 0 and before.outdated == 0 and before.outdated_example == ""
    rec = recs[i]
    rec["components"]["camera"] = {"status": "error", "source": "x", "data": {}, "text": ""}
    lines[i] = json.dumps(rec)
    out.write_text("\n".join(lines) + "\n")
    assert run().retryable == before.retryable + 1  # (the case: it is counted as retryable)
    rec["versions"]["camera"] = 0
    lines[i] = json.dumps(rec)
    out.write_text("\n".join(lines) + "\n")
    s = run()
    assert s.outdated == 1 and s.written == 1
    assert s.outdated_example == f"{rec['narration_id']}: camera 0 -> {VERSIONS['camera']}", s.outdated_example
    assert s.retryable == before.retryable and s.done_before == before.done_before - 1


# ---- shards/writer.py: --max-steps/--max-conditions on a shared vocabulary ----------------------------------------

def test_a_val_build_at_the_vocabularys_exact_condition_count_is_built_and_both_options_are_named(tmp_path):
    from leap_cli.shards.writer import build_split
    from tests.test_shards import make_root, program_records, settings, write_programs

    kitchen = make_root(tmp_path / "kitchen")
    work = tmp_path / "w"
    write_programs(work / "programs" / "train.jsonl", program_records())
    train = build_split(kitchen, "train", workdir=work, settings=settings(), max_steps=10, max_conditions=50)
    n = len(train.manifest["targets"]["conditions"])
    val = build_split(kitchen, "val", workdir=work, settings=settings(split="val"), max_conditions=n)
    assert val.manifest["targets"] == train.manifest["targets"]
    with pytest.raises(LeapError) as e:
        build_split(kitchen, "val", workdir=work, settings=settings(split="val"), max_steps=3,
                    max_conditions=n - 1, out=tmp_path / "v2")
    assert e.value.message.startswith(f"--max-steps 3 (it holds 10) and --max-conditions {n - 1} (it holds {n}): "
                                      "this build shares the target vocabulary of"), e.value.message


# ---- shards/check.py: counts.samples -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shards_kitchen(tmp_path_factory):
    from tests.test_shards import make_root

    return make_root(tmp_path_factory.mktemp("kitchen50s"))


def test_a_count_of_0_samples_is_checked_and_a_folder_of_parts_names_their_manifests(shards_kitchen, tmp_path):
    from leap_cli.common import ShardSpec
    from leap_cli.shards.check import check_shards
    from tests.test_shards import build

    build(shards_kitchen, tmp_path, shard=ShardSpec(0, 2))
    build(shards_kitchen, tmp_path, shard=ShardSpec(1, 2))
    folder = tmp_path / "shards" / "train"
    (folder / "manifest.json").unlink(missing_ok=True)  # (the parts only: merged when read)
    part = folder / "manifest.shard0of2.json"
    m = json.loads(part.read_text())
    n = sum(s["count"] for s in m["shards"])
    assert n > 0
    m["counts"]["samples"] = 0
    part.write_text(json.dumps(m))
    with pytest.raises(LeapError, match=f"counts.samples says 0 samples, its shards list {n}") as e:
        check_shards(part)
    assert e.value.path == str(part)
    report = check_shards(part, on_error="skip", verify_hash=False, decode=False)
    assert [p["problem"] for p in report.problems] == [f"counts.samples says 0 samples, its shards list {n}"]
    assert report.problems[0]["shard"] == part.name and "rerun the same leap build-shards" in report.problems[0]["fix"]
    with pytest.raises(LeapError, match="counts.samples says") as e:
        check_shards(folder)
    assert e.value.path == str(folder / "manifest.shard*.json")


# ---- shards/writer.py: changed_keys from the progress records' made_with ------------------------------------------

def test_a_key_an_older_progress_record_lacks_is_not_named_as_changed(shards_kitchen, tmp_path):
    from tests.test_shards import build, build_stopped

    out = build_stopped(shards_kitchen, tmp_path / "run")
    progress = out / ".progress.jsonl"
    records = [json.loads(x) for x in progress.read_text().splitlines()]
    assert records and all(isinstance(r.get("made_with"), dict) for r in records)
    lacking = sorted(k for k in records[0]["made_with"] if k != "frames")[0]
    progress.write_text("".join(json.dumps(dict(r, made_with={k: v for k, v in r["made_with"].items()
                                                              if k != lacking})) + "\n" for r in records))
    with pytest.raises(LeapError) as e:
        build(shards_kitchen, tmp_path / "run", frames=2)
    assert e.value.message == "the folder holds shards built from other inputs or settings (--frames differs)", \
        (lacking, e.value.message)
