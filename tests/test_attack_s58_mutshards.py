"""A hand-made mutation run over leap_cli/shards/dataset.py, leap_cli/shards/format.py and leap_cli/io.py (helper
mutshards, session 58): each test kills a mutant that the nearest tests let live (named in its docstring)."""

import io
import json
import tarfile
from pathlib import Path

import pytest

from leap_cli.errors import LeapError
from leap_cli.shards.format import (folders_provenance, group_sample, iter_tar_samples, load_manifest, merge_parts,
                                    parse_members, programs_provenance)
from tests.test_shards_format import part, write_parts


# ---- format.py -------------------------------------------------------------------------------------------------

def test_a_long_name_after_another_pax_record_reads_back():
    """A PAX header whose ``path`` is not its first record (GNU tar writes mtime/atime first): the record lengths
    count the whole record, newline included (mutant: ``pos += length + 1`` lost the path)."""
    name = "P01_01_3." + "x" * 150 + ".jpg"
    info = tarfile.TarInfo(name)
    info.size = 3
    info.pax_headers = {"comment": "before the path"}
    block = info.tobuf(format=tarfile.PAX_FORMAT) + b"abc" + b"\0" * 509
    assert parse_members(block) == [(name, b"abc")]


def test_no_members_is_no_sample():
    """An empty member list is an error, not a sample of key None (mutant: the ``key is None`` check dropped)."""
    with pytest.raises(ValueError, match="no members"):
        group_sample([])


def test_iter_tar_samples_passes_over_folders(tmp_path):
    """A tar made with ``tar cf`` of a folder holds the folder's own member: it is no sample (mutant: isfile check
    dropped, extractfile(None).read())."""
    path = tmp_path / "t.tar"
    with tarfile.open(path, "w") as tf:
        d = tarfile.TarInfo("shards")
        d.type = tarfile.DIRTYPE
        tf.addfile(d)
        for n, data in (("shards/a.json", b"{}"), ("shards/a.f000.jpg", b"j")):
            i = tarfile.TarInfo(n)
            i.size = len(data)
            tf.addfile(i, io.BytesIO(data))
    assert list(iter_tar_samples(path)) == [("a", {"json": b"{}", "f000.jpg": b"j"})]


def test_a_manifest_that_says_nothing_of_programs_has_no_programs_provenance():
    """None where the manifest has no ``programs`` key at all; a build without a program file (programs: null) has 0
    records and no generator (mutant: the ``not in m`` check dropped)."""
    assert programs_provenance({"counts": {}}) is None
    assert programs_provenance({"programs": None, "counts": {"with_program": 0}})["made_by"] == []


def _over(*manifests):
    return {"folders": [{"folder": f"/f{i}", "manifest": m} for i, m in enumerate(manifests)]}


def _m(split, programs=..., sources=None):
    m = {"split": split, "counts": {"with_program": 1}, "sources": sources or {}}
    if programs is not ...:
        m["programs"] = programs
    return m


def test_folders_one_of_which_says_nothing_of_programs_have_no_combined_programs():
    """Train shards with programs and val shards of a leap that kept no ``programs`` in the manifest: nothing can
    be said of the whole (mutant: ``any(programs)`` for ``all``, an AttributeError on the None)."""
    prov = folders_provenance(_over(_m("train", {"records": 3, "valid": 3, "made_by": [], "prompt_version": "v5"}),
                                    _m("val")), Path("/x"))
    assert prov["programs"] is None and prov["split"] == "train+val"


def test_a_folder_built_without_a_program_file_does_not_hide_the_others_prompt_version():
    """A folder built without programs (made_by [], prompt_version None) says nothing of the prompt: the other's
    version stands (mutant: the ``made_by != []`` filter dropped, prompt_version None)."""
    rows = [{"backend": "offline", "model": "m", "records": 3, "valid": 3}]
    prov = folders_provenance(_over(_m("train", {"records": 3, "valid": 3, "made_by": rows, "prompt_version": "v5"}),
                                    _m("val", None)), Path("/x"))
    assert prov["programs"]["prompt_version"] == "v5"
    assert prov["programs"]["records"] == 3 and prov["programs"]["made_by"][0]["records"] == 3


def test_the_merge_keeps_the_program_summary_of_the_part_just_built(tmp_path):
    """Both parts say what made their programs: the part just built (``current``) speaks for the merge, not part 0
    (mutant: ``told`` taken from the parts in order)."""
    a, b = part(0, 2, ["a0"], {}, []), part(1, 2, ["b0"], {}, [])
    a["programs"] = {"records": 2, "valid": 1, "made_by": [{"backend": "old"}]}
    b["programs"] = {"records": 2, "valid": 1, "made_by": [{"backend": "new"}]}
    write_parts(tmp_path, [a, b])
    assert merge_parts(tmp_path, current="manifest.shard1of2.json")["programs"]["made_by"] == [{"backend": "new"}]
    assert merge_parts(tmp_path)["programs"]["made_by"] == [{"backend": "old"}]


def test_a_crc_that_is_a_boolean_is_refused(tmp_path):
    """``true`` in crc32s is no CRC (bool is an int to isinstance; mutant: ``isinstance`` for ``type(c) is int``)."""
    m = part(0, 1, ["a0"], {}, [])
    del m["part"]
    m["shards"][0]["crc32s"] = [True]
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(LeapError, match="crc32s is not one integer"):
        load_manifest(tmp_path)


def test_the_command_for_a_folder_outside_a_workdir_names_it_with_out():
    """``/data/train`` is no WORKDIR/shards/train: the command names the folder with --out, not --workdir /
    (mutant: the ``parent.name == "shards"`` condition dropped)."""
    from leap_cli.shards.format import build_command

    assert build_command(Path("/data/train")).startswith("leap build-shards --split SPLIT --out /data/train")
    assert build_command(Path("/w/shards/val-anticipation")) == \
        "leap build-shards --workdir /w --split val --task anticipation"


# ---- io.py -----------------------------------------------------------------------------------------------------

def test_an_error_on_another_temp_file_keeps_its_name():
    """Only our own temp file beside the output (``.NAME.*.tmp``) is said as the output; an error on another file
    that ends in .tmp names that file (mutant: the ``.NAME.`` prefix test dropped)."""
    import errno

    from leap_cli.io import naming_target

    out = Path("/x/out.json")
    e = naming_target(OSError(errno.ENOSPC, "full", "/x/cache.tmp"), out)
    assert e.filename == "/x/cache.tmp"
    e = naming_target(OSError(errno.ENOSPC, "full", "/x/.out.json.h-1.abcdefgh.tmp"), out)
    assert e.filename == str(out)


def test_the_temp_file_of_another_users_live_writer_stays(tmp_path, monkeypatch):
    """kill(pid, 0) answering EPERM: the writer lives (another user's): its temp file is kept (mutant: EPERM taken
    as dead)."""
    import os

    import leap_cli.io as io

    temp = tmp_path / f".out.json.{io._temp_tag().rsplit('-', 1)[0]}-999999991.abcd1234.tmp"
    temp.write_bytes(b"half")

    def kill(pid, sig):
        if pid == 999999991:
            raise PermissionError(1, "Operation not permitted")
        return os.kill(pid, sig)

    monkeypatch.setattr(io.os, "kill", kill)
    io._SWEPT.discard((os.getpid(), str(tmp_path)))
    io.remove_dead_temps(tmp_path)
    assert temp.exists()


def test_several_temp_files_are_renamed_onto_their_own_targets(tmp_path):
    """AtomicFiles renames its temp files onto the targets in the order ``new`` made them (mutant: the index counted
    from the other end put the first file's bytes under the last name)."""
    from leap_cli.io import AtomicFiles

    with AtomicFiles(tmp_path / "batch.jsonl") as files:
        for text in ("first", "second", "third"):
            files.new().write_text(text)
        files.commit([tmp_path / f"batch-{i}-of-3.jsonl" for i in range(3)])
    assert [(tmp_path / f"batch-{i}-of-3.jsonl").read_text() for i in range(3)] == ["first", "second", "third"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"batch-{i}-of-3.jsonl" for i in range(3)]


def test_the_lock_of_a_dot_dot_output_is_beside_the_folder_it_names(tmp_path):
    """``x/..`` names ``x``'s parent: its lock is beside that folder, not a file ``...lock`` in x (mutant: the
    ``..`` case dropped)."""
    from leap_cli.io import lock_beside

    assert lock_beside(tmp_path / "x" / "..") == tmp_path.with_name(tmp_path.name + ".lock")
    assert lock_beside(tmp_path / "out.jsonl") == tmp_path / "out.jsonl.lock"


def test_a_shard_tag_not_followed_by_a_dot_or_dash_is_no_part():
    """``.shard1of4`` must end the tag (mutant: the look-ahead dropped, ``notes.shard1of4b.jsonl`` a part)."""
    from leap_cli.io import part_of

    assert part_of("notes.shard1of4b.jsonl") is None
    assert part_of("train.shard1of4.jsonl") == (1, 4)
    assert part_of("leap-train.shard2of3-000000.tar") == (2, 3)


def test_parts_text_names_the_count_with_most_parts(tmp_path):
    """Two parts of /3 and one of /2: the count said to go on with is 3 (mutant: min for max)."""
    from leap_cli.io import parts_text

    for name in ("train.shard0of3.jsonl", "train.shard1of3.jsonl", "train.shard0of2.jsonl"):
        (tmp_path / name).write_text("{}\n")
    assert parts_text(tmp_path / "train.jsonl") == ("1 of 2, 2 of 3", 3)
    assert parts_text(tmp_path / "val.jsonl") is None


def test_a_relative_path_that_starts_with_a_dash_is_pasted_as_dot_slash():
    """``-out`` would be an option to cat or mkdir (mutant: no ./ prefix)."""
    from leap_cli.io import shell_word

    assert shell_word("-out/x y") == "'./-out/x y'"
    assert shell_word(Path("/a/b")) == "/a/b"


def test_options_settings_are_compared_as_one_value():
    """``options`` (a backend's free-form options) is one value in a refusal, not one line per inner key (mutant:
    the ``options`` exception dropped)."""
    from leap_cli.io import settings_changes

    assert settings_changes({"options": {"a": 1}, "m": {"k": 1}}, {"options": {"a": 2}, "m": {"k": 2}}) == \
        ["m.k: 1 -> 2", "options: {'a': 1} -> {'a': 2}"]


def test_jpeg_size_skips_a_huffman_table_before_the_frame_header():
    """Markers C4 (DHT), C8 and CC are in the SOF range but are no frame header; an encoder may write a DHT before
    the SOF (mutant: the exclusion dropped, the table read as a size)."""
    import numpy as np

    from leap_cli.media.write import encode_jpeg
    from leap_cli.shards.format import jpeg_size

    jpg = encode_jpeg(np.zeros((8, 24, 3), np.uint8))
    dht = b"\xff\xc4\x00\x06" + b"\x10\x01\x02\x03"  # (length 6: itself and 4 bytes)
    assert jpeg_size(jpg[:2] + dht + jpg[2:]) == (24, 8)


def test_a_missing_manifest_file_names_the_build_of_its_folder(tmp_path):
    """``WORKDIR/shards/train/manifest.json`` not there: the command builds the folder, not a folder named
    manifest.json (mutant: the file given to build_command)."""
    with pytest.raises(LeapError) as e:
        load_manifest(tmp_path / "shards" / "train" / "manifest.json")
    assert f"leap build-shards --workdir {tmp_path} --split train" in e.value.fix


def test_one_generator_in_two_folders_adds_its_records_and_valid():
    """The same backend and model in the train and val folders: one row, records and valid summed (mutant: valid
    overwritten by the last folder's)."""
    row = lambda n, v: [{"backend": "offline", "model": "m", "records": n, "valid": v}]  # noqa: E731
    summary = lambda n, v: {"records": n, "valid": v, "made_by": row(n, v), "prompt_version": "v5"}  # noqa: E731
    prov = folders_provenance(_over(_m("train", summary(3, 3)), _m("val", summary(2, 1))), Path("/x"))
    assert prov["programs"]["made_by"] == [{"backend": "offline", "model": "m", "records": 5, "valid": 4}]
    assert prov["programs"]["valid"] == 4 and prov["programs"]["prompt_version"] == "v5"


def test_parts_that_differ_in_more_than_six_settings_say_there_are_more(tmp_path):
    """Seven settings differ: six are said, then " ..." (mutant: the limit changed, the others dropped unsaid)."""
    a, b = part(0, 2, ["a0"], {}, []), part(1, 2, ["b0"], {}, [])
    b["settings"].update({f"s{i}": i for i in range(6)}, frames=8)
    write_parts(tmp_path, [a, b])
    with pytest.raises(LeapError, match=r" \.\.\. differ\)"):
        merge_parts(tmp_path)


def test_numpy_dtype_classes_are_allowed_in_a_pickle_and_nothing_else_of_numpy_dtypes():
    """NumPy 2 pickles a dtype through ``numpy.dtypes.Float32DType``: allowed; another name of that module is not
    (mutant: the DType rule dropped)."""
    from leap_cli.io import is_numpy_pickle_global

    assert is_numpy_pickle_global("numpy.dtypes", "Float32DType")
    assert not is_numpy_pickle_global("numpy.dtypes", "StringDTypeHelper")
    assert not is_numpy_pickle_global("os", "system")


# ---- dataset.py ------------------------------------------------------------------------------------------------

@pytest.fixture
def one_shard_folder(tmp_path):
    m = part(0, 1, ["a0", "a1", "a2", "a3", "a4"], {}, [])
    del m["part"]
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    return tmp_path


def test_a_rank_equal_to_the_world_size_is_refused(one_shard_folder):
    """Ranks run 0 .. W-1 (mutant: ``<=``, rank W took an empty slice and trained on nothing)."""
    from leap_cli.shards.dataset import ShardDataset

    with pytest.raises(LeapError, match="outside world size"):
        ShardDataset(one_shard_folder, rank=2, world_size=2)
    assert len(ShardDataset(one_shard_folder, rank=1, world_size=2)) == 3


def test_a_block_or_batch_of_zero_counts_as_one(one_shard_folder):
    """``block=0`` or ``batch_size=0`` (a config's 0): one sample per block and batch, every sample once (mutant:
    ``max(1, block)`` dropped, range() with a step of 0)."""
    from leap_cli.shards.dataset import ShardDataset

    ds = ShardDataset(one_shard_folder, train=True, block=0, batch_size=0)
    assert sorted(ds.epoch_order()) == [(0, p) for p in range(5)]
    assert sorted(e for _, (e, _) in ds.consumer_plan()) == [(0, p) for p in range(5)]


def _dataset(folder, targets, task="recognition", views=1, **settings):
    """A ShardDataset over a manifest with no tars (make_sample is given the fields)."""
    from leap_cli.shards.dataset import ShardDataset

    m = part(0, 1, ["a0"], {}, [])
    del m["part"]
    m.update(task=task, targets=targets)
    m["settings"].update(settings)
    (folder / "manifest.json").write_text(json.dumps(m))
    return ShardDataset(folder, train=False, num_frames=2, img_size=8, temporal_views=views)


def _fields(meta, context=0):
    import numpy as np

    from leap_cli.media.write import encode_jpeg

    jpg = encode_jpeg(np.full((8, 8, 3), 128, np.uint8))
    out = {"json": json.dumps({"narration_id": "a0", **meta}).encode(), "f000.jpg": jpg, "f001.jpg": jpg}
    out.update({f"c{c}.f{i:03d}.jpg": jpg for c in range(context) for i in range(2)})
    return out


def test_recognition_shards_feed_no_context_whatever_their_settings_hold(tmp_path):
    """ShardSettings keeps context 2 in a recognition build's settings too: only anticipation shards have context
    clips (mutant: any task read them, every recognition batch gained a context_video of zeros)."""
    ds = _dataset(tmp_path, {"max_steps": 2, "conditions": []}, context=2)
    assert ds.context == 0
    assert "context_video" not in ds.make_sample(_fields({}), None)


def test_program_steps_are_three_wide_without_structure_and_rows_past_max_steps_are_cut(tmp_path):
    """A manifest without ``structure``: [L,3] rows (mutant: always 5 wide); step_pre/step_post rows past max_steps
    are cut as the steps are (mutant: ``rows[:L]`` dropped, an IndexError out of the loader)."""
    ds = _dataset(tmp_path, {"max_steps": 2, "conditions": ["a", "b"]})
    meta = {"has_program": True, "targets": {"steps": [[1, 2, 3], [4, 5, 6], [7, 8, 9]], "pre": [0], "post": [1],
                                             "step_pre": [[0], [1], [1]], "step_post": [[], [0], [0]]}}
    s = ds.make_sample(_fields(meta), None)
    assert s["program_steps"].tolist() == [[1, 2, 3], [4, 5, 6]]
    assert s["conditions"].tolist() == [1, 0, 0, 1]
    assert s["step_conditions"].tolist() == [[1, 0, 0, 0], [0, 1, 1, 0]]
    assert s["has_program"] is True


def test_a_sample_that_says_it_has_a_program_but_holds_no_targets_has_none(tmp_path):
    """``has_program`` true with no targets: no program to learn (mutant: the flag taken as it is, a sample of
    all -100 rows counted as having a program)."""
    ds = _dataset(tmp_path, {"max_steps": 2, "conditions": [], "structure": {}})
    s = ds.make_sample(_fields({"has_program": True}), None)
    assert s["has_program"] is False and s["program_steps"].shape == (2, 5)


def test_a_program_of_no_steps_loads_and_damaged_targets_are_skipped_under_on_error_skip(tmp_path):
    """Was wrong: targets with no steps raised torch's RuntimeError (a view of 0 elements) out of the loader, and
    targets of another shape (a condition id past the list, a string for a row) TypeError or IndexError, which
    ``on_error="skip"`` did not catch: the run stopped on one damaged sample."""
    ds = _dataset(tmp_path, {"max_steps": 2, "conditions": ["a"]})
    s = ds.make_sample(_fields({"has_program": True, "targets": {"steps": [], "pre": [0]}}), None)
    assert s["program_steps"].eq(-100).all() and s["conditions"].tolist() == [1, 0]
    ds.on_error = "skip"
    good = _fields({"verb_class": 3})
    damaged = [_fields({"has_program": True, "targets": {"steps": [[1, 2, 3]], "pre": [7]}}),
               _fields({"has_program": True, "targets": {"steps": 5}})]
    ds._raw = lambda plan: iter([(i, f, False, tmp_path / "x.tar", f"k{i}") for i, f in enumerate([*damaged, good])])
    assert [x["verb_class"] for x in ds] == [3] and ds.stats["errors"] == 2


def test_evaluation_keeps_the_stored_order(one_shard_folder):
    """Evaluation reads the shards in their stored order, whatever the block and seed (mutant: the train-only
    block shuffle applied to evaluation too)."""
    from leap_cli.shards.dataset import ShardDataset

    for seed in range(3):
        ds = ShardDataset(one_shard_folder, train=False, block=1, seed=seed)
        assert ds.epoch_order() == [(0, p) for p in range(5)]


def test_a_context_clip_the_record_says_absent_is_masked_even_with_frames(tmp_path):
    """Blank frames stored for an absent context clip: the record's ``present`` says it is absent (mutant: frames
    alone taken as present); with two temporal views the context is [V,C,3,T,S,S] (mutant: stacked [C,V,...])."""
    ds = _dataset(tmp_path, {"max_steps": 1, "conditions": []}, task="anticipation", views=2, context=2)
    meta = {"context": [{"present": False}, {"present": True}]}
    s = ds.make_sample(_fields(meta, context=2), None)
    assert s["context_mask"].tolist() == [False, True]
    assert s["video"].shape == (2, 3, 2, 8, 8) and s["context_video"].shape == (2, 2, 3, 2, 8, 8)
    assert s["context_video"][:, 0].abs().sum() == 0 and s["context_video"][:, 1].abs().sum() > 0


def _real_shard(folder, n=4, swap=False):
    """A shard of ``n`` samples a0.. written with the format's own records, and its manifest (offsets, sizes and
    CRCs); ``swap``: the first two entries' offsets exchanged (the manifest of another build)."""
    import zlib

    from leap_cli.shards.format import sample_bytes, tar_end

    blobs = [sample_bytes(f"a{i}", _fields({"narration_id": f"a{i}", "verb_class": i})) for i in range(n)]
    offsets = [sum(map(len, blobs[:i])) for i in range(n)]
    (folder / "leap-train-000000.tar").write_bytes(b"".join(blobs) + tar_end())
    m = part(0, 1, [f"a{i}" for i in range(n)], {}, [])
    del m["part"]
    m["targets"] = {"max_steps": 1, "conditions": []}
    entry = m["shards"][0]
    entry.update(name="leap-train-000000.tar", offsets=offsets, sizes=[len(b) for b in blobs],
                 crc32s=[zlib.crc32(b) for b in blobs])
    if swap:
        for k in ("offsets", "sizes", "crc32s"):
            entry[k][0], entry[k][1] = entry[k][1], entry[k][0]
    (folder / "manifest.json").write_text(json.dumps(m))
    return folder


def test_a_sample_found_under_another_key_is_a_corrupt_shard(tmp_path):
    """The manifest's offset leads to a1's records where it lists a0 (its CRC matching those bytes): training must
    not take a1's frames and labels for a0 (mutant: the key check dropped)."""
    from leap_cli.shards.dataset import ShardDataset

    ds = ShardDataset(_real_shard(tmp_path, swap=True), train=False, num_frames=2, img_size=8)
    with pytest.raises(LeapError, match="found sample 'a1' where the manifest has 'a0'"):
        list(ds)


def test_evaluation_batches_deal_every_sample_also_the_last_partial_batch(tmp_path):
    """5 samples in batches of 2 over 1 or 2 workers: every sample once, the last batch of one (mutant: whole
    batches only, a sample never scored)."""
    from leap_cli.shards.dataset import ShardDataset

    ds = ShardDataset(_real_shard(tmp_path, n=5), train=False, batch_size=2)
    assert [e for _, (e, _) in ds.consumer_plan()] == [(0, p) for p in range(5)]
    both = ds.consumer_plan(0, 2) + ds.consumer_plan(1, 2)
    assert sorted(e for _, (e, _) in both) == [(0, p) for p in range(5)]


def test_a_resumed_epoch_leaves_out_its_first_batches_and_keeps_the_rest(tmp_path):
    """``set_epoch(e, skip_batches=k)``: the plan is the epoch's plan without its first k batches, for 1 and for 2
    workers (mutant: the skip ignored, a resumed run trained on those batches twice)."""
    from leap_cli.shards.dataset import ShardDataset

    ds = ShardDataset(_real_shard(tmp_path, n=5), train=True, batch_size=2, block=1, shuffle_buffer=4, epoch=3)
    whole = ds.consumer_plan()
    ds.set_epoch(3, skip_batches=1)
    assert ds.consumer_plan() == whole[2:]
    assert (ds.consumer_plan(0, 2), ds.consumer_plan(1, 2)) == (whole[2:4], whole[4:])  # batches 1 and 2


def test_two_ranks_draw_their_own_augmentation_at_the_same_position(tmp_path, monkeypatch):
    """The augmentation is drawn from (seed, epoch, rank, position): sample k of rank 0 and sample k of rank 1 get
    their own crops (mutant: the rank left out, both ranks' k-th samples cropped alike)."""
    import numpy as np

    import leap_cli.shards.dataset as dataset_mod
    from leap_cli.shards.dataset import ShardDataset

    folder = _real_shard(tmp_path, n=8)
    boxes: dict = {}
    real = dataset_mod.random_resized_box
    for rank in (0, 1):
        got = boxes.setdefault(rank, [])
        monkeypatch.setattr(dataset_mod, "random_resized_box",
                            lambda *a, got=got, **k: got.append(real(*a, **k)) or got[-1])
        list(ShardDataset(folder, train=True, num_frames=2, img_size=8, rank=rank, world_size=2, shuffle_buffer=1))
    assert len(boxes[0]) == len(boxes[1]) == 4
    assert [np.asarray(b).tolist() for b in boxes[0]] != [np.asarray(b).tolist() for b in boxes[1]]


def test_shards_with_as_many_context_clips_as_the_model_takes_are_taken():
    """check_context refuses fewer clips than the model takes, not as many (mutant: ``<=``)."""
    from types import SimpleNamespace

    from leap_cli.shards.dataset import check_context

    ds = SimpleNamespace(manifest={"task": "anticipation"}, context=2)
    check_context(ds, 2, "--context", Path("/x"))
    with pytest.raises(LeapError, match="hold 2 context clip"):
        check_context(ds, 3, "--context", Path("/x"))


def test_workers_are_one_per_batch_counting_the_last_partial_one(monkeypatch):
    """3 samples in batches of 2 are 2 batches: 2 workers (mutant: floor, 1 worker)."""
    import leap_cli.common as common
    import leap_cli.shards.dataset as dataset_mod

    monkeypatch.setattr(common, "usable_cpus", lambda: 8)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(dataset_mod, "share_by_name_under_a_low_limit", lambda w: None)
    monkeypatch.setattr(dataset_mod, "short_temp_dir_for_workers", lambda w: None)
    assert dataset_mod.loader_workers(4, "--workers", samples=3, batch_size=2) == 2
    assert dataset_mod.loader_workers(4, "--workers", samples=9, batch_size=2) == 4
