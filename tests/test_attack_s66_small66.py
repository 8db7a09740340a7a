"""Session 66 (small66): the scores file's narration ids and values as EPIC's official format allows them, the
unseen-participants and tail-classes CSVs read as the other EPIC CSVs are, and doc and --help claims of this
session's changes (extract's settings keys, build-shards' "this run" column, the manifest's frames_crc32s) checked
against the code."""

from __future__ import annotations

import json
import re
import shutil
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from leap_cli.epic.annotations import UNSEEN, Annotations
from leap_cli.errors import LeapError
from leap_cli.evaluate.scores import load_scores, normalize_scores
from tests.test_attack_s65_moved65 import _replace, files  # noqa: F401 - (a fixture)
from tests.test_attack_s65_update65 import _records, root, vocab  # noqa: F401 - (fixtures)
from tests.test_attack_s66_shards66 import _build_cli, _this_run, leap  # noqa: F401 - (a fixture)
from tests.test_shards import build, write_programs


# --- the scores file --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("nid", ["P01_101_0", np.array("P01_101_0"), np.array(b"P01_101_0")])
def test_a_single_string_narration_id_is_refused_as_such(nid):
    """EPIC's dict format holds narration_id as an array of N ids: one string is not split into its characters
    (which said '9 narration ids but 1 verb rows')."""
    raw = {"narration_id": nid, "verb_output": np.zeros((1, 97)), "noun_output": np.zeros((1, 300))}
    with pytest.raises(LeapError) as e:
        normalize_scores(raw, "results.pkl")
    assert "narration_id is one string" in e.value.message and "P01_101_0" in e.value.message
    assert "\n" not in str(e.value) and "['P01_101_0']" in e.value.fix


@pytest.mark.parametrize("kind", ["numpy", "torch", "entries"])
def test_complex_scores_are_refused_not_cut_to_their_real_part(kind):
    verb = np.zeros((2, 97), dtype=np.complex64)
    verb[0, 3] = 1 + 2j
    noun = np.zeros((2, 300), dtype=np.float32)
    if kind == "entries":
        raw = [{"narration_id": f"P01_101_{i}", "verb_output": verb[i], "noun_output": noun[i]} for i in range(2)]
    else:
        raw = {"narration_id": ["P01_101_0", "P01_101_1"], "noun_output": noun,
               "verb_output": torch.from_numpy(verb) if kind == "torch" else verb}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (no ComplexWarning on the way to the refusal)
        with pytest.raises(LeapError) as e:
            normalize_scores(raw, "results.pkl")
    assert "verb_output holds complex numbers" in e.value.message


def test_complex_scores_in_a_saved_file_are_one_line(tmp_path):
    path = tmp_path / "results.pt"
    torch.save({"narration_id": ["P01_101_0"], "verb_output": torch.zeros(1, 97, dtype=torch.complex64),
                "noun_output": torch.zeros(1, 300)}, path)
    with pytest.raises(LeapError, match="verb_output holds complex numbers"):
        load_scores(path)


def test_real_scores_of_every_float_and_int_dtype_still_read():
    for dtype in (np.float16, np.float32, np.float64, np.int64, np.bool_):
        out = normalize_scores({"narration_id": np.array(["a", "b"]), "verb_output": np.ones((2, 3), dtype=dtype),
                                "noun_output": np.ones((2, 4), dtype=dtype)})
        assert out["verb_output"].dtype == (torch.float64 if dtype == np.float64 else torch.float32)
        assert out["narration_id"] == ["a", "b"]


# --- the unseen participants' CSV -------------------------------------------------------------------------------

def test_unseen_participant_ids_are_stripped_as_other_cells(epic_dir, tmp_path):
    """A cell saved with a space after the id (a spreadsheet's export) names the participant; a blank cell names
    none. read_csv already drops the space before a cell (skipinitialspace)."""
    folder = tmp_path / "epic"
    shutil.copytree(epic_dir, folder)
    (folder / UNSEEN["val"]).write_text("participant_id\nP18 \n  P32\t\n \n")
    assert Annotations(folder).unseen_participants("val") == {"P18", "P32"}


# --- doc claims -------------------------------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_extract_settings_keys_beyond_its_options_are_named_where_the_settings_file_is_described(tmp_path):
    """extract's settings file holds its resolved options and two keys of its own (the folder it ran in, the frame
    cache an earlier run wrote: leap_cli/extracted.py reads both); docs/extract.md's "Running long" names each."""
    from dataclasses import fields

    from leap_cli.extract.runner import ExtractConfig, _settings_file
    from leap_cli.extracted import config_path

    out = tmp_path / "descriptors" / "train.jsonl"
    out.parent.mkdir()
    (tmp_path / "cache").mkdir()
    config_path(out).write_text(json.dumps({"frame_cache": str(tmp_path / "cache"), "cache_frames": 16}))
    held = _settings_file(ExtractConfig(data=tmp_path, split="train", out=out, frame_cache=None))
    own = set(held) - {f.name for f in fields(ExtractConfig)}
    assert own == {"cwd", "earlier_frame_cache"} and held["earlier_frame_cache"] == str(tmp_path / "cache")
    running_long = (DOCS / "extract.md").read_text().split("## Running long")[1].split("\n## ")[0]
    assert all(f"`{key}`" in running_long for key in own), own


def test_the_this_run_examples_of_docs_shards_are_the_tables(files, root, vocab, tmp_path, leap):  # noqa: F811
    """docs/shards.md's examples of the summary's "this run" cell, each after what it names (a resume after a crash,
    new programs, a video downloaded again: the shard its samples left empty is filled, and counted `written`)."""
    text = " ".join((DOCS / "shards.md").read_text().split())
    said = dict((after, cell) for cell, after in re.findall(r"`([^`]+)` after (a resume|new programs|a video "
                                                            r"downloaded again)", text))
    assert set(said) == {"a resume", "new programs", "a video downloaded again"}, said

    work = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):  # (its first shard of 3 complete; the CLI's settings: no context)
        build(root, work, progress=_interrupt_after(5), context=0)
    assert _this_run(_build_cli(leap, root, work)) == said["a resume"]

    work = tmp_path / "programs"
    write_programs(work / "programs" / "train.jsonl", _records(False))
    _build_cli(leap, root, work, "--vocab", vocab)
    write_programs(work / "programs" / "train.jsonl", _records(True))
    assert _this_run(_build_cli(leap, root, work, "--vocab", vocab)) == said["new programs"]

    kitchen, work = tmp_path / "k", tmp_path / "replaced"
    shutil.copytree(files[0], kitchen)
    _build_cli(leap, kitchen, work)
    _replace(kitchen, files)  # (P01_02: the last shard holds its samples alone; one more shares a tar with P01_01's)
    assert _this_run(_build_cli(leap, kitchen, work)) == said["a video downloaded again"]
    shards = json.loads((work / "shards" / "train" / "manifest.json").read_text())["shards"]
    assert len(shards) == 3 and all(s["count"] for s in shards)  # (the emptied shard filled, not one more)


def test_each_shard_entry_of_the_manifest_holds_what_docs_shards_lists(root, tmp_path):  # noqa: F811
    """docs/shards.md's manifest section: each shard's name, count, bytes, sha256, keys, byte offsets, sizes,
    CRC-32s (`crc32s`) and those of each sample's frames alone (`frames_crc32s`): its members but the JSON."""
    from leap_cli.shards.format import frames_crc, iter_tar_samples

    text = " ".join((DOCS / "shards.md").read_text().split())
    para = text[text.index("**manifest.json**"):]
    assert "`shards` (name, count, bytes, sha256, keys, byte offsets, sizes and CRC-32s (`crc32s`) of every sample, " \
           "and of its frames alone (`frames_crc32s`" in para
    out = tmp_path / "w" / "shards" / "train"
    manifest = build(root, tmp_path / "w").manifest
    for shard in manifest["shards"]:
        assert set(shard) == {"name", "count", "bytes", "sha256", "keys", "offsets", "sizes", "crc32s",
                              "frames_crc32s"}
        samples = dict(iter_tar_samples(out / shard["name"]))
        assert list(samples) == shard["keys"]
        frames = [zlib.crc32(b"".join(v for k, v in sorted(f.items()) if k != "json")) for f in samples.values()]
        assert shard["frames_crc32s"] == frames == [frames_crc(f) for f in samples.values()]
        assert frames != shard["crc32s"]  # (the samples' own cover their JSON and tar headers too)


def _interrupt_after(samples: int):
    def interrupt(done, total):
        if done >= samples:
            raise KeyboardInterrupt
    return interrupt


# --- --help -----------------------------------------------------------------------------------------------------

def _option_help(command: str, name: str) -> str:
    import typer

    from leap_cli.cli import app

    return " ".join(next(p for p in typer.main.get_command(app).commands[command].params if p.name == name).help.split())


def test_extract_help_says_what_a_replaced_audio_file_and_frame_cache_none_do():
    """A plain extract makes again the records of a replaced audio file too (audio_size), and a run with
    --frame-cache none keeps the folder an earlier run wrote for build-shards (earlier_frame_cache)."""
    assert "MP4 or audio file whose size changed" in _option_help("extract", "retry_errors")
    assert "build-shards still reads the folder an earlier run wrote" in _option_help("extract", "frame_cache")


@pytest.mark.parametrize("kind", ["verb", "noun"])
def test_a_tail_class_cell_that_is_no_integer_is_named_in_one_line(epic_dir, tmp_path, kind):
    """(It was a ValueError's traceback in leap evaluate.) Spaces around a class id and blank cells are read as in
    the unseen-participants file."""
    from leap_cli.epic.annotations import TAIL_NOUNS, TAIL_VERBS

    folder = tmp_path / "epic"
    shutil.copytree(epic_dir, folder)
    name = TAIL_VERBS if kind == "verb" else TAIL_NOUNS
    (folder / name).write_text(f"{kind}\n 12 \n\n 7\n")
    assert getattr(Annotations(folder), f"tail_{kind}s") == {7, 12}
    (folder / name).write_text(f"{kind}\n12\nP01\n")
    with pytest.raises(LeapError) as e:
        getattr(Annotations(folder), f"tail_{kind}s")
    assert e.value.path == str(folder / name) and e.value.record == "row 3" and "'P01', not an integer" in e.value.message
