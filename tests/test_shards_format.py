"""The shard format itself (leap_cli/shards/format.py), on tiny hand-made samples and manifests: what a mistake in
it would make training read without a word (another sample's frames, a half-read sample, a lost part)."""

import io
import json
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from leap_cli.errors import LeapError
from leap_cli.media.write import encode_jpeg
from leap_cli.shards.format import (check_key, frame_field, group_sample, iter_tar_samples, jpeg_size, load_manifest,
                                    merge_parts, parse_members, read_sample_at, sample_bytes, sample_crc, shard_name,
                                    tar_end, tar_member)


def fields(n: int = 2, ctx: bool = False) -> dict[str, bytes]:
    """A sample's fields: JSON and ``n`` (odd-sized) frame blobs, given in an order that is not the stored one."""
    out = {frame_field(i): bytes([65 + i]) * (300 + i) for i in reversed(range(n))}
    if ctx:
        out.update({frame_field(i, 0): b"c" * 10 for i in range(n)})
    out["json"] = json.dumps({"verb_class": 3, "noun_class": -1}).encode()
    return out


def names(block: bytes) -> list[str]:
    return [n for n, _ in parse_members(block)]


# ---- keys and member names ------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["", "P01/01_3", "P01_01.3"])
def test_a_key_webdataset_would_split_otherwise_is_refused(key):
    """An empty key, a dot (WebDataset splits the name there) or a slash (a folder in the tar: the reader's key is
    only its last part) would be read back as another sample's key."""
    with pytest.raises(LeapError):
        check_key(key)
    assert check_key("P01_01_3") == "P01_01_3"


def test_shard_names_sort_in_build_order():
    """Six digits: ``ls`` and any glob of the folder list the tars in the order they were written."""
    assert shard_name("train", 7) == "leap-train-000007.tar"
    assert shard_name("val", 12, ".shard1of4") == "leap-val.shard1of4-000012.tar"


def test_json_comes_first_then_the_fields_in_name_order():
    """Context clips before the observed frames, the frames in time order: a reader that streams the tar sees the
    JSON (labels) first, and f000 before f001."""
    block = sample_bytes("P01_01_3", fields(3, ctx=True))
    assert names(block) == ["P01_01_3.json", "P01_01_3.c0.f000.jpg", "P01_01_3.c0.f001.jpg", "P01_01_3.c0.f002.jpg",
                            "P01_01_3.f000.jpg", "P01_01_3.f001.jpg", "P01_01_3.f002.jpg"]


def test_members_are_deterministic_plain_tar_records():
    """Every header says mtime 0, mode 0644, uid/gid 0: the same samples give the same bytes (the resume and the
    --workers guarantee); each record is padded to 512 bytes and the archive ends in two zero blocks, which
    tar and WebDataset read."""
    data = b"x" * 700
    rec = tar_member("P01_01_3.f000.jpg", data)
    assert len(rec) % 512 == 0 and rec == tar_member("P01_01_3.f000.jpg", data)
    assert tar_end() == b"\0" * 1024
    tf = tarfile.open(fileobj=io.BytesIO(rec + tar_member("P01_01_3.json", b"{}") + tar_end()))
    (a, b) = tf.getmembers()
    assert (a.name, a.size, a.mtime, a.mode, a.uid, a.gid, a.uname, a.gname) == \
        ("P01_01_3.f000.jpg", 700, 0, 0o644, 0, 0, "", "")
    assert tf.extractfile(a).read() == data and tf.extractfile(b).read() == b"{}"


# ---- reading one sample ----------------------------------------------------------------------------------------

def test_one_sample_reads_back_field_by_field():
    """The bytes of every field come back under their own name (an odd-sized blob's padding not in them)."""
    f = fields(3, ctx=True)
    key, got = group_sample(parse_members(sample_bytes("P01_01_3", f)))
    assert key == "P01_01_3" and got == f


def test_a_long_member_name_reads_back_exactly_and_only_for_its_own_member():
    """A name past tar's 100 bytes is stored in a PAX header: read back without its newline, and not given to the
    members that follow."""
    key = "P" + "1" * 120
    block = sample_bytes(key, fields(2))
    assert names(block) == [f"{key}.json", f"{key}.f000.jpg", f"{key}.f001.jpg"]
    short = tar_member("P01_01_3.json", b"{}")
    assert names(tar_member(f"{key}.json", b"{}") + short) == [f"{key}.json", "P01_01_3.json"]


def test_a_sample_cut_short_is_refused_not_half_read():
    """A block that ends inside a member's data, or inside a header, is an error: not a sample with fewer frames."""
    block = sample_bytes("P01_01_3", fields(2))
    last = len(block) - 512  # the last member's data (301 bytes, then padding)
    for cut in (last + 300, last + 1, last - 100):  # inside the last data, inside its header
        with pytest.raises(ValueError):
            parse_members(block[:cut])
    with pytest.raises(ValueError, match="truncated tar header"):
        parse_members(block + b"\0" * 100)


def test_the_end_of_archive_ends_the_sample():
    """The zero blocks after the last sample are the end: nothing after them is read as more members."""
    block = sample_bytes("P01_01_3", fields(1))
    extra = tar_member("P01_01_9.f000.jpg", b"other")
    assert names(block + tar_end() + extra) == names(block)


def test_a_block_that_spans_two_samples_is_refused():
    """A manifest offset or size that is off by a sample would give one sample another's frames: refused."""
    a, b = sample_bytes("P01_01_3", fields(1)), sample_bytes("P01_01_4", fields(1))
    with pytest.raises(ValueError, match="does not belong"):
        group_sample(parse_members(a + b))
    with pytest.raises(ValueError, match="no extension"):
        group_sample(parse_members(tar_member("P01_01_3", b"x")))


def test_read_sample_at_refuses_a_short_read_and_changed_bytes():
    """A shard cut short by even one byte, or a byte changed in place, is an error naming it."""
    data = sample_bytes("P01_01_3", fields(1))
    f = io.BytesIO(b"\0" * 512 + data)
    assert read_sample_at(f, 512, len(data), zlib.crc32(data)) == data
    with pytest.raises(ValueError, match="1 bytes early"):
        read_sample_at(f, 513, len(data))
    with pytest.raises(ValueError, match="CRC-32"):
        read_sample_at(f, 512, len(data), zlib.crc32(data) ^ 1)


def test_each_sample_is_checked_against_its_own_crc():
    """Sample i's CRC, not its neighbour's (every sample would be refused, or the damaged one passed); a manifest
    without CRCs checks none."""
    info = {"keys": ["a", "b", "c"], "crc32s": [11, 22, 33]}
    assert [sample_crc(info, i) for i in range(3)] == [11, 22, 33]
    assert sample_crc({"keys": ["a"]}, 0) is None


def test_iter_tar_samples_groups_by_key_and_keeps_the_last_sample(tmp_path):
    """The manifest-free reader (tools, tests): each sample whole, the last one too, members in a folder too."""
    p = tmp_path / "s.tar"
    p.write_bytes(sample_bytes("P01_01_3", fields(2)) + tar_member("d/P01_01_4.json", b"{}")
                  + tar_member("d/P01_01_4.f000.jpg", b"y") + tar_end())
    got = list(iter_tar_samples(p))
    assert [k for k, _ in got] == ["P01_01_3", "P01_01_4"]
    assert got[0][1] == fields(2) and got[1][1] == {"json": b"{}", "f000.jpg": b"y"}


def test_jpeg_size_is_width_then_height():
    """``frame_sizes`` is [width, height], as check-shards compares it with the decoded frames."""
    jpg = encode_jpeg(np.zeros((8, 24, 3), np.uint8))
    assert jpeg_size(jpg) == (24, 8)


# ---- manifests -------------------------------------------------------------------------------------------------

def shard_entry(name: str, keys: list[str]) -> dict:
    return {"name": name, "count": len(keys), "bytes": 0, "sha256": "0" * 64, "keys": keys,
            "offsets": [0] * len(keys), "sizes": [0] * len(keys), "crc32s": [0] * len(keys)}


def part(i: int, n: int, keys: list[str], hist: dict, skipped: list) -> dict:
    return {"format": "leap-shards/1", "split": "train", "task": "recognition", "targets": None,
            "settings": {"frames": 4, "max_count": 3}, "sources": {"programs": "abc"}, "part": {"index": i, "count": n},
            "shards": [shard_entry(f"leap-train.shard{i}of{n}-000000.tar", keys)],
            "counts": {"segments": len(keys) + len(skipped), "samples": len(keys), "skipped": len(skipped), "shards": 1},
            "histograms": {"verb_class": hist}, "skipped": skipped}


def write_parts(folder: Path, parts: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for p in parts:
        (folder / f"manifest.shard{p['part']['index']}of{p['part']['count']}.json").write_text(json.dumps(p))


def test_merged_parts_add_up_and_list_the_samples_part_by_part(tmp_path):
    """Counts, histograms and skips of every part summed, shards in part order, no ``part`` left in it (the merged
    manifest is the whole split)."""
    write_parts(tmp_path, [
        part(0, 3, ["a0", "a1"], {"2": 1, "10": 1}, []),
        part(1, 3, ["b0"], {"2": 1}, [{"narration_id": "b1", "reason": "x", "cause": "x"}]),
        part(2, 3, ["c0", "c1", "c2"], {"1": 3}, [{"narration_id": "c3", "reason": "y", "cause": "y"}]),
    ])
    m, folder = load_manifest(tmp_path)
    assert folder == tmp_path
    assert [k for s in m["shards"] for k in s["keys"]] == ["a0", "a1", "b0", "c0", "c1", "c2"]
    assert m["counts"] == {"segments": 8, "samples": 6, "skipped": 2, "shards": 3}
    assert m["histograms"]["verb_class"] == {"1": 3, "2": 2, "10": 1}
    assert list(m["histograms"]["verb_class"]) == ["1", "2", "10"]  # by class id, not as text
    assert [s["narration_id"] for s in m["skipped"]] == ["b1", "c3"]
    assert "part" not in m and m["parts"] == [f"manifest.shard{i}of3.json" for i in range(3)]


def test_a_missing_part_is_named_not_merged_without_it(tmp_path):
    """Parts 0 and 2 of 3: training on them would silently lack a third of the split."""
    write_parts(tmp_path, [part(0, 3, ["a0"], {}, []), part(2, 3, ["c0"], {}, [])])
    with pytest.raises(LeapError, match=r"parts \[1\] of 3 are missing"):
        merge_parts(tmp_path)


def test_parts_made_with_other_frames_are_not_merged_but_other_packing_is(tmp_path):
    """--frames differs: refused; --max-count only packs the samples into tars: merged."""
    a, b = part(0, 2, ["a0"], {}, []), part(1, 2, ["b0"], {}, [])
    b["settings"]["max_count"] = 7
    write_parts(tmp_path, [a, b])
    assert merge_parts(tmp_path)["counts"]["samples"] == 2
    b["settings"]["frames"] = 8
    write_parts(tmp_path, [a, b])
    with pytest.raises(LeapError, match="--frames"):
        merge_parts(tmp_path)


@pytest.mark.parametrize("edit, says", [
    (lambda s: s.pop("offsets"), "lacks offsets"),
    (lambda s: s.pop("sizes"), "lacks sizes"),
    (lambda s: s.update(crc32s=s["crc32s"][:-1]), "crc32s is not one integer"),
])
def test_a_shard_entry_the_reader_cannot_index_is_refused(tmp_path, edit, says):
    """Without offsets or sizes, or with a CRC list shorter than the keys, samples would be read at the wrong place
    or checked against another sample's CRC."""
    m = part(0, 1, ["a0", "a1"], {}, [])
    del m["part"]
    edit(m["shards"][0])
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(LeapError, match=says):
        load_manifest(tmp_path)


def test_parts_of_two_counts_are_refused_not_merged(tmp_path):
    """Parts of --shard i/2 beside a complete i/1 set: merged, their overlap would be trained on twice."""
    write_parts(tmp_path, [part(0, 1, ["a0", "b0"], {}, []), part(0, 2, ["a0"], {}, []), part(1, 2, ["b0"], {}, [])])
    with pytest.raises(LeapError, match="i/1"):
        merge_parts(tmp_path)


def test_eleven_parts_merge_in_part_order_not_name_order(tmp_path):
    """``shard10of11`` sorts before ``shard2of11`` as text: the samples are listed part by part, 0 to 10."""
    write_parts(tmp_path, [part(i, 11, [f"k{i:02d}"], {}, []) for i in range(11)])
    m = merge_parts(tmp_path)
    assert [k for s in m["shards"] for k in s["keys"]] == [f"k{i:02d}" for i in range(11)]
    assert m["parts"] == [f"manifest.shard{i}of11.json" for i in range(11)]


@pytest.mark.parametrize("edit", [
    lambda p: p.update(targets={"max_steps": 9}),  # another target vocabulary: ids mean other things
    lambda p: p["sources"].update(programs="def"),  # other programs
    lambda p: p["settings"].update(tau_a=2.0),  # a setting the other part does not have
])
def test_parts_made_from_other_inputs_are_refused(tmp_path, edit):
    """A part whose targets, programs or settings differ from the others' is not merged into one split."""
    a, b = part(0, 2, ["a0"], {}, []), part(1, 2, ["b0"], {}, [])
    edit(b)
    write_parts(tmp_path, [a, b])
    with pytest.raises(LeapError, match="other inputs or settings"):
        merge_parts(tmp_path)


def test_merged_parts_keep_every_videos_frame_size_and_the_program_summary(tmp_path):
    """check-shards compares each video's frames with ``frame_sizes``: every part's videos are in the merge; the
    program summary (``made_by``) is kept from the part that has it."""
    a, b = part(0, 2, ["a0"], {}, []), part(1, 2, ["b0"], {}, [])
    a["frame_sizes"], b["frame_sizes"] = {"P01_01": [48, 32]}, {"P01_02": [32, 48]}
    a["programs"], b["programs"] = {"records": 2, "valid": 1}, {"records": 2, "valid": 1, "made_by": [{"backend": "offline"}]}
    write_parts(tmp_path, [a, b])
    m = merge_parts(tmp_path)
    assert m["frame_sizes"] == {"P01_01": [48, 32], "P01_02": [32, 48]}
    assert m["programs"]["made_by"] == [{"backend": "offline"}]


def test_a_shard_entry_with_fewer_offsets_than_keys_is_refused(tmp_path):
    """One offset and size for two keys: check-shards checked only the first sample and the reader failed later
    with an IndexError, not the one-line manifest error."""
    m = part(0, 1, ["a0", "a1"], {}, [])
    del m["part"]
    m["shards"][0].update(offsets=[0], sizes=[512])
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(LeapError, match=r"keys, offsets, sizes \(and count\) do not describe the same samples"):
        load_manifest(tmp_path)
    m["shards"][0].update(offsets=[0, 512], sizes=[512, 512], count=3)  # a count of another number of samples
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(LeapError, match="do not describe the same samples"):
        load_manifest(tmp_path)
    m["shards"][0]["count"] = 2
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    assert load_manifest(tmp_path)[0]["shards"][0]["keys"] == ["a0", "a1"]
