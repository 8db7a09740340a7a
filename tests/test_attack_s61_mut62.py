"""Helper mut62: a hand-made mutation run over session 61's changes since 198a197, with a test for each surviving
mutant that was a real gap, and one real bug (fixed): load_folders' fix for a folder of the earlier rule that an
earlier leap built named none of its options.

Attacked: ``shards.dataset`` (``anticipation_timing``, ``same_timing``, ``timing_text``, ``timing_change``),
``shards.format`` (``_sibling_options``, the ``SHARED_*`` constants, ``build_command``, ``load_folders``' rule
branch), ``shards.writer._rule_of``, ``io._resume_changes`` and its two callers, and the ``same_timing`` calls of
``evaluate.inference`` and ``train.loop``.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from tests.test_attack_s60_upgrade60 import mp4_root  # noqa: F401  (a fixture)

SEG = {"tau_a": 1.0, "context_mode": "segments", "tau_o": 2.0}


# ---- shards.dataset -----------------------------------------------------------------------------------------------

def test_same_timing_of_no_kept_timing_is_false_not_an_error():
    """``same_timing(kept=None, ...)``: no timing kept is not the same timing (and not a TypeError on ``in None``)."""
    from leap_cli.shards.dataset import same_timing
    from leap_cli.shards.writer import OBSERVED_END

    assert same_timing(None, {**SEG, "observed_end": OBSERVED_END}) is False
    assert same_timing({**SEG, "observed_end": OBSERVED_END}, None) is False


def test_timing_text_names_the_earlier_rule_only_for_shards_that_kept_none():
    """The "(leap before 2026-12-06 ...)" words are for a timing whose observed_end is known to be absent (shards of
    the earlier rule: the key, None); not for today's rule, and not for a checkpoint's timing of a leap before
    5568b34, which kept no key at all (its rule is not known: saying it was the earlier one would be a guess)."""
    from leap_cli.shards.dataset import timing_text
    from leap_cli.shards.writer import OBSERVED_END

    earlier = timing_text({**SEG, "observed_end": None})
    assert "leap before 2026-12-06" in earlier and "2.0 s observed window" in earlier, earlier
    today = timing_text({**SEG, "observed_end": OBSERVED_END})
    assert "leap before" not in today and today.endswith("2.0 s observed window"), today
    unknown = timing_text(dict(SEG))
    assert "leap before" not in unknown and unknown.endswith("2.0 s observed window"), unknown


# ---- shards.format: _sibling_options, SHARED_*, build_command ------------------------------------------------------

def _progress(folder: Path, *recs: dict, name: str = ".progress.jsonl") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(json.dumps(r) + "\n" for r in recs))


def _record(inputs: dict | None = None, **kw) -> dict:
    from leap_cli.shards.writer import ShardSettings, made_settings

    return {"name": "leap-x-000000.tar", "settings": made_settings(ShardSettings(**kw)), "inputs": inputs or {}}


def _options(command: str) -> dict:
    words = shlex.split(command)
    i = words.index("--split") + 2
    rest = words[i:]
    if rest[:2] == ["--task", "anticipation"]:
        rest = rest[2:]
    assert len(rest) % 2 == 0, words
    return dict(zip(rest[::2], rest[1::2]))


INPUTS = {"--data": "/d a/ta", "--annotations": "/an n", "--programs": "/p.jsonl", "--vocab": "/v.json"}


@pytest.mark.parametrize("mode", ["clips", "segments"])
def test_an_anticipation_sibling_lends_every_sample_setting_and_input_and_nothing_else(tmp_path, mode):
    """Every SHARED_* setting at a value of its own (tau_a too) and both SHARED_INPUTS are lent to the val folder's
    command; the packing (--max-count, --max-shard-size), the build's own --programs and --vocab are not."""
    from leap_cli.shards.format import build_command

    work = tmp_path / "w"
    _progress(work / "shards" / "train-anticipation",
              _record(INPUTS, split="train", task="anticipation", context_mode=mode, tau_a=0.5, tau_o=1.5, context=1,
                      span_frames=64, frames=4, short_side=64, jpeg_quality=70, max_count=3, max_shard_size=1000))
    got = _options(build_command(work / "shards" / "val-anticipation"))
    want = {"--tau-a": "0.5", "--context": "1", "--frames": "4", "--short-side": "64", "--jpeg-quality": "70",
            "--data": "/d a/ta", "--annotations": "/an n",  # (clips: the default mode, not named)
            **({"--span-frames": "64"} if mode == "clips" else {"--tau-o": "1.5", "--anticipation-context": mode})}
    assert got == want, got


def test_a_recognition_sibling_lends_its_sample_settings_and_inputs_only(tmp_path):
    from leap_cli.shards.format import build_command

    work = tmp_path / "w"
    _progress(work / "shards" / "train", _record(INPUTS, split="train", frames=4, short_side=64, jpeg_quality=70,
                                                 max_count=3))
    got = _options(build_command(work / "shards" / "test"))
    assert got == {"--frames": "4", "--short-side": "64", "--jpeg-quality": "70", "--data": "/d a/ta",
                   "--annotations": "/an n"}, got
    # an anticipation build lends nothing to recognition folders, and a recognition build nothing to anticipation's
    assert _options(build_command(work / "shards" / "val-anticipation")) == {}


def test_the_training_split_is_the_sibling_that_lends_where_val_was_begun_too(tmp_path):
    """Train and val both begun, with other --frames: the test folder's command takes the training split's."""
    from leap_cli.shards.format import build_command

    work = tmp_path / "w"
    _progress(work / "shards" / "val", _record(split="val", frames=8))
    _progress(work / "shards" / "train", _record(split="train", frames=4))
    assert _options(build_command(work / "shards" / "test")) == {"--frames": "4"}


# ---- shards.format.load_folders: folders that differ only in leap's window-end rule ---------------------------------

@pytest.fixture(scope="module")
def two_splits(tmp_path_factory):
    """Segments-context anticipation train and val shards of today's rule, and val again as --shard 0/2 + 1/2."""
    import shutil

    from leap_cli.shards.writer import ShardSpec
    from tests.test_shards import build, make_root

    tmp = tmp_path_factory.mktemp("mut62")
    root = make_root(tmp / "kitchen")
    kw = dict(task="anticipation", context=1, context_mode="segments")
    train = build(root, tmp / "w", **kw).out
    val = build(root, tmp / "w", split="val", **kw).out
    shutil.copytree(train, tmp / "p" / "shards" / train.name)  # (the parts take its target vocabulary, as val did)
    for i in range(2):
        build(root, tmp / "p", split="val", shard=ShardSpec(i, 2), **kw)
    return train, val, tmp / "p" / "shards" / "val-anticipation"


def _copy(folder: Path, to: Path, *, rule: bool = True, **settings) -> Path:
    """``folder`` copied to ``to`` (a default shards folder of its own work directory), its manifests without
    observed_end (``rule=False``, as a leap before 2026-12-06 wrote them) or with other ``settings``."""
    import shutil

    shutil.copytree(folder, to)
    for path in to.glob("manifest*.json"):
        m = json.loads(path.read_text())
        if not rule:
            del m["settings"]["observed_end"]
        m["settings"].update(settings)
        path.write_text(json.dumps(m))
    return to


@pytest.mark.parametrize("older", ["train", "val"])
def test_the_folder_of_the_earlier_rule_is_the_one_named_to_build_again(two_splits, tmp_path, older):
    """Whichever folder holds the earlier rule (the first of the two in load_folders' order, or the other), the fix
    names that one, with its own split, and --force (it holds no --shard parts)."""
    from leap_cli.errors import LeapError
    from leap_cli.shards.format import load_folders

    train, val, _ = two_splits
    t = _copy(train, tmp_path / "w" / "shards" / "train-anticipation", rule=older != "train")
    v = _copy(val, tmp_path / "w" / "shards" / "val-anticipation", rule=older != "val")
    old = t if older == "train" else v
    for given in ([t, v], [v, t]):
        with pytest.raises(LeapError) as e:
            load_folders(given)
        assert e.value.fix.startswith(f"build {old} again with this leap"), e.value.fix
        command = e.value.fix.partition(": ")[2]
        assert f"--split {older} --task anticipation" in command and command.endswith(" --force"), command
        assert "--shard" not in command, command


def test_a_folder_of_the_earlier_rule_made_of_parts_is_built_again_part_by_part(two_splits, tmp_path):
    """The older folder merged from --shard 0/2 and 1/2: the fix deletes it and builds each part (--shard i/2),
    not --force (a part rebuilt beside the others keeps their rule)."""
    from leap_cli.errors import LeapError
    from leap_cli.shards.format import load_folders

    train, _, parts = two_splits
    t = _copy(train, tmp_path / "w" / "shards" / "train-anticipation")
    v = _copy(parts, tmp_path / "w" / "shards" / "val-anticipation", rule=False)
    assert list(v.glob("manifest.shard1of2.json")), sorted(p.name for p in v.iterdir())
    with pytest.raises(LeapError) as e:
        load_folders([t, v])
    fix = e.value.fix
    assert fix.startswith(f"build {v} again with this leap") and "delete it, then leap build-shards" in fix, fix
    assert fix.endswith(" --shard i/2 for each part") and "--force" not in fix, fix


def test_folders_that_differ_in_an_option_as_well_as_the_rule_get_the_options_fix(two_splits, tmp_path):
    """Only where every difference is a rule of leap's is the fix "build it again with this leap": another --tau-o
    beside the rule is a difference of options (build them with the first folder's options)."""
    from leap_cli.errors import LeapError
    from leap_cli.shards.format import load_folders

    train, val, _ = two_splits
    t = _copy(train, tmp_path / "w" / "shards" / "train-anticipation")
    v = _copy(val, tmp_path / "w" / "shards" / "val-anticipation", rule=False, tau_o=3.0)
    with pytest.raises(LeapError) as e:
        load_folders([t, v])
    assert "--tau-o" in str(e.value) and "again with this leap" not in e.value.fix, (str(e.value), e.value.fix)
    assert e.value.fix.startswith("build them with the same build-shards options"), e.value.fix


def _as_an_earlier_leap_wrote_it(folder: Path) -> None:
    """``folder``'s manifests and progress records as a leap before 2026-12-06 wrote them: no observed_end, and
    records that keep neither the build's settings nor its inputs."""
    for path in folder.glob("manifest*.json"):
        m = json.loads(path.read_text())
        m["settings"].pop("observed_end", None)
        path.write_text(json.dumps(m))
    for path in folder.glob(".progress*.jsonl"):
        recs = [json.loads(x) for x in path.read_text().splitlines()]
        for r in recs:
            r.pop("settings", None), r.pop("inputs", None)
            (r.get("made_with") or {}).pop("settings.observed_end", None)
        path.write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_the_rebuild_fix_for_a_real_earlier_leaps_folder_names_its_options(two_splits, tmp_path):
    """Was wrong: format.py:464: the rule branch's fix for a folder an earlier leap built is build_command(older, '
    --force'), whose records keep no settings: 'leap build-shards ... --split val --task anticipation --force (with
    the options of the build begun there)' names no --anticipation-context/--context (a paste builds clips-mode
    shards, refused again) and its '(with ...)' words are a shell syntax error; its manifest (or the other folder)
    holds the options. The folder of the earlier rule as an earlier leap really left it (progress records without
    settings): the fix's command is still one a shell runs, and names the segments context's options its manifest
    keeps (without them it builds clips-mode shards, which load_folders refuses beside the train shards again)."""
    from leap_cli.errors import LeapError
    from leap_cli.shards.format import load_folders

    train, val, _ = two_splits
    work = tmp_path / "w"
    t = _copy(train, work / "shards" / "train-anticipation")
    v = _copy(val, work / "shards" / "val-anticipation")
    _as_an_earlier_leap_wrote_it(v)
    with pytest.raises(LeapError) as e:
        load_folders([t, v])
    command = e.value.fix.partition(": ")[2]
    assert "(" not in command and "--anticipation-context segments" in command, command
    assert shlex.split(command)[shlex.split(command).index("--context") + 1] == "1", command


def test_no_sibling_lends_to_a_folder_an_earlier_leap_began_nor_outside_a_shards_folder(tmp_path):
    """A val folder whose build an earlier leap began (records without settings) is resumed with that build's
    options, which are not known: the train build's are not put in their place. A custom --out named ``val`` beside
    one named ``train`` is no work directory's split folder: nothing is lent."""
    from leap_cli.shards.format import build_command

    work = tmp_path / "w"
    _progress(work / "shards" / "train", _record(split="train", frames=4, inputs={"--data": "/k"}))
    _progress(work / "shards" / "val", {"name": "leap-val-000000.tar", "settings_hash": "x"})
    command = build_command(work / "shards" / "val")
    assert command.startswith(f"leap build-shards --workdir {work} --split val") and "--frames" not in command \
        and "--data" not in command, command
    assert "--frames 4 --data /k" in build_command(work / "shards" / "test")  # (the lending itself)
    _progress(tmp_path / "x" / "train", _record(split="train", frames=4, inputs={"--data": "/k"}))
    command = build_command(tmp_path / "x" / "val")
    assert "--frames" not in command and "--data" not in command, command


# ---- shards.writer._rule_of: a part's --force reads the other parts, not its own files -------------------------------

def test_an_earlier_leaps_part_rebuilt_with_force_beside_todays_part_takes_todays_rule_and_merges(
        monkeypatch, tmp_path, mp4_root):
    """--shard parts run by two leaps (parts on two machines): today's 1/2 (observed_end) finished first, then an
    earlier leap's 0/2 beside it, and the two do not merge. 0/2 rebuilt with --force by today's leap reads the other
    part's records and manifest only (its own, which --force replaces, are of the earlier rule): it takes today's
    rule, and the two merge."""
    from tests.test_attack_s60_upgrade60 import SEGMENTS, build
    from tests.test_attack_s61_attack62 import old_part

    work, out = tmp_path / "w", tmp_path / "w" / "s"
    code, text = build(mp4_root, work, out, *SEGMENTS, "--shard", "1/2")
    assert code == 0, text[-2000:]
    assert "observed_end" in json.loads((out / "manifest.shard1of2.json").read_text())["settings"]
    try:
        old_part(monkeypatch, mp4_root, work, out, "0/2", killed=False)
    except AssertionError:
        pass  # (its merge with today's part may be refused: they differ in the rule)
    assert "observed_end" not in json.loads((out / "manifest.shard0of2.json").read_text())["settings"]
    (out / "manifest.json").unlink(missing_ok=True)
    code, text = build(mp4_root, work, out, *SEGMENTS, "--shard", "0/2", "--force")
    assert code == 0, text[-2000:]
    assert "observed_end" in json.loads((out / "manifest.json").read_text())["settings"], text[-2000:]


def test_todays_part_beside_an_earlier_leaps_finished_part_copied_without_its_progress_file_merges(
        monkeypatch, tmp_path, mp4_root):
    """An earlier leap's finished MP4 part whose ``.progress`` file did not come along (a folder copied with
    ``cp dir/*``, which skips dot files): its manifest alone says it was built before the rule, and today's part
    beside it takes that rule, so the two merge."""
    from tests.test_attack_s60_upgrade60 import SEGMENTS, build
    from tests.test_attack_s61_attack62 import old_part

    work, out = tmp_path / "w", tmp_path / "w" / "s"
    old_part(monkeypatch, mp4_root, work, out, "0/2", killed=False)
    for path in out.glob(".progress*.jsonl"):
        path.unlink()
    code, text = build(mp4_root, work, out, *SEGMENTS, "--shard", "1/2")
    assert code == 0, text[-2000:]
    assert (out / "manifest.json").exists(), text[-2000:]
    assert "observed_end" not in json.loads((out / "manifest.json").read_text())["settings"]


# ---- io._resume_changes and its two callers --------------------------------------------------------------------------

def test_a_resume_takes_a_raised_grow_limit_and_an_adopted_key_and_refuses_a_lowered_limit(tmp_path):
    """_check_settings through ``_resume_changes``: the sidecar lacks the ``adopt`` key (written before it was kept)
    and holds a lower ``grow`` limit: the resume is accepted, and the sidecar then keeps this run's values; a lower
    limit, or another value of an adopted key once kept, is refused naming it."""
    from leap_cli.errors import LeapError
    from leap_cli.io import check_settings, settings_path

    out = tmp_path / "val.jsonl"
    out.write_text('{"narration_id": "a"}\n')
    settings_path(out).write_text(json.dumps({"k": 2, "params": {"max_tokens": 100}}))
    now = {"k": 2, "params": {"max_tokens": 200}, "descriptors": {"x": 1}}
    kw = dict(adopt=("descriptors",), grow=("params.max_tokens",))
    assert check_settings(out, now, **kw) is False and out.read_text() == '{"narration_id": "a"}\n'
    assert json.loads(settings_path(out).read_text()) == now
    with pytest.raises(LeapError, match=r"params.max_tokens: 200 -> 150"):
        check_settings(out, {**now, "params": {"max_tokens": 150}}, **kw)
    with pytest.raises(LeapError, match=r"descriptors"):
        check_settings(out, {**now, "descriptors": {"x": 2}}, **kw)


def test_the_merge_advice_names_no_adopted_key_and_no_raised_limit_but_a_lowered_one(tmp_path):
    """The parts-beside advice (``_resume_changes`` on the parts' settings): with only an adopted key new and the
    limit raised there is nothing to name; a lowered limit is named."""
    from leap_cli.errors import LeapError
    from leap_cli.io import SETTINGS_SUFFIX, check_settings

    out = tmp_path / "val.jsonl"
    part = tmp_path / "val.shard0of2.jsonl"
    part.write_text('{"narration_id": "a"}\n')
    part.with_name(part.name + SETTINGS_SUFFIX).write_text(json.dumps({"k": 2, "params": {"max_tokens": 100}}))
    kw = dict(adopt=("descriptors",), grow=("params.max_tokens",))
    with pytest.raises(LeapError) as e:
        check_settings(out, {"k": 2, "params": {"max_tokens": 200}, "descriptors": {"x": 1}}, **kw)
    assert "merge them and run again to resume from the merge" in e.value.fix, e.value.fix
    with pytest.raises(LeapError) as e:
        check_settings(out, {"k": 2, "params": {"max_tokens": 50}, "descriptors": {"x": 1}}, **kw)
    assert "with the parts' options (params.max_tokens: 100 -> 50)" in e.value.fix, e.value.fix


# ---- evaluate.inference._same_timing and train.loop._same_training_data: a checkpoint that kept no timing ------------

def test_a_checkpoint_that_kept_no_timing_is_neither_warned_nor_refused_on_segments_shards(caplog, tmp_path):
    """A run whose checkpoint keeps no ``shards_timing`` (a leap before the timing was kept): evaluate says nothing
    and a resume is not refused (nor a traceback from ``timing_text(None)``); a kept timing of another --tau-o
    still is, in both."""
    import logging
    from types import SimpleNamespace

    from leap_cli.errors import LeapError
    from leap_cli.evaluate.inference import _same_timing
    from leap_cli.shards.writer import OBSERVED_END
    from leap_cli.train.loop import _same_training_data

    settings = {**SEG, "context": 1, "span_frames": 256, "observed_end": OBSERVED_END}
    manifest = {"task": "anticipation", "settings": settings}
    timing = {**SEG, "observed_end": OBSERVED_END}
    source = SimpleNamespace(batches_per_epoch=3, timing=timing)
    with caplog.at_level(logging.WARNING):
        _same_timing(None, manifest, tmp_path)
        _same_timing({}, manifest, tmp_path)
        for kept in ({"data_position": {"batches_per_epoch": 3}}, {"shards_timing": None}):
            _same_training_data(kept, source, tmp_path / "last.pt", None)
    assert "otherwise" not in caplog.text, caplog.text
    other = {**timing, "tau_o": 3.0}
    with caplog.at_level(logging.WARNING):
        _same_timing(other, manifest, tmp_path)
    assert "observe otherwise" in caplog.text and "3.0 s observed window" in caplog.text, caplog.text
    with pytest.raises(LeapError, match=r"the run's observed tau_a 1.0 s, previous segments and a 3.0 s"):
        _same_training_data({"shards_timing": other}, source, tmp_path / "last.pt", None)
