"""`leap generate-programs --dry-run --narration-id ID` shows one segment's prompt: it parsed every descriptor record
of the split to show it (EPIC's train split: 67k records, 6.5 s and 550 MB). It now parses only the lines that hold
the id; what it shows, and what it says of duplicates, damaged lines and unknown ids, is checked here."""

import json
import logging

import pytest

from leap_cli.common import ShardSpec
from leap_cli.errors import LeapError
from leap_cli.programs.generate import GenerateConfig, _setup, dry_run, dry_run_and_estimate
from tests.program_helpers import excerpt_annotations

N_SEGMENTS = 6  # P01_11_0, _1, _10, _100, _101, _102: ids that are prefixes of one another


def record(nid: str, text: str | None = None, **extra) -> dict:
    return {"narration_id": nid, "video_id": "P01_11", "text": text or f"CLIP-TEXT-{nid}", **extra,
            "components": {"objects": {"status": "ok", "source": "object-detections", "text": "",
                                       "data": {"objects": [{"label": "sponge"}]}}}}


@pytest.fixture()
def kitchen(tmp_path):
    ann = excerpt_annotations(tmp_path, rows=N_SEGMENTS)
    ids = [line.split(",", 1)[0] for line in (ann / "EPIC_100_validation.csv").read_text().splitlines()[1:]]
    desc = tmp_path / "descriptors" / "val.jsonl"
    desc.parent.mkdir()
    return tmp_path, ids, desc


def write(desc, lines) -> None:
    desc.write_text("".join(line if isinstance(line, str) else json.dumps(line) + "\n" for line in lines))


def test_the_prompt_of_one_segment_parses_only_the_lines_that_hold_its_id(kitchen, monkeypatch):
    """The same prompt as from the whole split, and only the lines holding '"P01_11_1"' parsed: not those of
    P01_11_10 and the others it is a prefix of, but the one of another record that names it in a field."""
    workdir, ids, desc = kitchen
    write(desc, [record(nid, same_as="P01_11_1") if nid == "P01_11_10" else record(nid) for nid in ids])
    cfg = GenerateConfig(workdir=workdir, split="val")
    whole = dry_run(cfg, "P01_11_1", setup=_setup(cfg))
    parsed = []
    loads = json.loads

    def spy(s, *a, **kw):
        if isinstance(s, bytes) and s.startswith(b'{"narration_id"'):
            parsed.append(loads(s)["narration_id"])
        return loads(s, *a, **kw)

    monkeypatch.setattr(json, "loads", spy)
    prompt = dry_run(cfg, "P01_11_1")
    assert prompt == whole and "CLIP-TEXT-P01_11_1\n" in prompt and "CLIP-TEXT-P01_11_10" not in prompt
    assert sorted(parsed) == ["P01_11_1", "P01_11_10"]  # (it parsed all six)


def test_the_last_of_its_records_is_shown_and_a_damaged_line_of_it_is_named(kitchen, caplog):
    workdir, ids, desc = kitchen
    cfg = GenerateConfig(workdir=workdir, split="val")
    recs = [record(nid) for nid in ids]
    write(desc, [*recs, record("P01_11_1", text="AGAIN")])
    with caplog.at_level(logging.WARNING):
        assert "AGAIN" in dry_run(cfg, "P01_11_1")
    assert "appear more than once" in caplog.text
    # a crash mid-write of its record: the truncated last line dropped (with a word), the earlier one shown
    write(desc, [*recs, json.dumps(record("P01_11_1", text="CUT"))[:70]])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert "CLIP-TEXT-P01_11_1\n" in dry_run(cfg, "P01_11_1")
    assert "truncated last line" in caplog.text
    # its own line damaged mid-file: said with the line's number, as the whole read says it
    write(desc, [*recs[:2], json.dumps(record("P01_11_1"))[:-1] + "\n", *recs[2:]])
    with pytest.raises(LeapError, match="line 3 is not valid JSON"):
        dry_run(cfg, "P01_11_1")
    # a malformed record of it: the shape checks are the whole read's
    write(desc, [*recs, {"narration_id": "P01_11_1", "components": []}])
    with pytest.raises(LeapError, match="malformed record"):
        dry_run(cfg, "P01_11_1")
    # another segment's damaged line is not parsed (the run says it, line and all)
    write(desc, [json.dumps(record("P01_11_0"))[:-1] + "\n", *recs[1:]])
    assert "CLIP-TEXT-P01_11_1\n" in dry_run(cfg, "P01_11_1")
    with pytest.raises(LeapError, match="line 1 is not valid JSON"):
        dry_run(cfg)


def test_an_id_without_a_record_names_the_descriptor_file(kitchen):
    workdir, ids, desc = kitchen
    write(desc, [record(nid) for nid in ids if nid != "P01_11_10"])
    cfg = GenerateConfig(workdir=workdir, split="val")
    with pytest.raises(LeapError, match="segment P01_11_10 is not in the input") as e:  # of the split, no record
        dry_run(cfg, "P01_11_10")
    assert str(desc) in e.value.message and "--split" in e.value.fix
    # of no segment of the split, with a record or not: said with the split's CSV
    for lines in ([record(nid) for nid in ids], [record(nid) for nid in ids] + [record("P01_11_999")]):
        write(desc, lines)
        with pytest.raises(LeapError, match="P01_11_999 is not a segment of split val") as e:
            dry_run(cfg, "P01_11_999")
        assert e.value.path.endswith("EPIC_100_validation.csv") and "--split" in e.value.fix


def test_without_descriptors_the_narration_only_prompt_is_the_whole_reads(kitchen):
    workdir, ids, _ = kitchen
    cfg = GenerateConfig(workdir=workdir, split="val")
    assert dry_run(cfg, ids[3]) == dry_run(cfg, ids[3], setup=_setup(cfg))
    # only its row of the split's CSV is parsed: another row's damage is the run's to say
    csv = workdir / "kitchen" / "annotations" / "EPIC_100_validation.csv"
    lines = csv.read_text().splitlines()
    cells = lines[-1].split(",")
    cells[4] = "NOT-A-TIME"  # (its start_timestamp)
    csv.write_text("\n".join([*lines[:-1], ",".join(cells)]) + "\n")
    assert f"{ids[3]}" in dry_run(cfg, ids[3])
    with pytest.raises(LeapError, match="start_timestamp holds 'NOT-A-TIME'"):
        dry_run(cfg)
    with pytest.raises(LeapError, match="P01_11_999 is not a segment of split val"):
        dry_run(cfg, "P01_11_999")


def test_the_estimate_beside_one_segments_prompt_still_counts_the_whole_split(kitchen):
    """With --backend openai the dry run also estimates the run: every pending segment, not the one shown."""
    workdir, ids, desc = kitchen
    write(desc, [record(nid) for nid in ids])
    cfg = GenerateConfig(workdir=workdir, split="val", backend="openai", model="gpt-4o-mini")
    prompt, estimate = dry_run_and_estimate(cfg, "P01_11_10")
    assert "CLIP-TEXT-P01_11_10\n" in prompt and estimate.pending == N_SEGMENTS


@pytest.mark.parametrize("ensure_ascii", [False, True])
def test_a_non_ascii_id_is_found_as_leap_writes_it_and_ascii_escaped(kitchen, ensure_ascii):
    workdir, ids, desc = kitchen
    csv = workdir / "kitchen" / "annotations" / "EPIC_100_validation.csv"
    csv.write_text(csv.read_text(encoding="utf-8").replace("P01_11_101,", "P01_11_ü,"), encoding="utf-8")
    ids = ["P01_11_ü" if nid == "P01_11_101" else nid for nid in ids]
    desc.write_text("".join(json.dumps(record(nid), ensure_ascii=ensure_ascii) + "\n" for nid in ids),
                    encoding="utf-8")
    assert "CLIP-TEXT-P01_11_ü\n" in dry_run(GenerateConfig(workdir=workdir, split="val"), "P01_11_ü")


def test_a_part_of_a_sharded_run_shows_a_segment_of_its_videos_only(kitchen):
    """--shard i/n: the part's videos are dealt in the order of the split's (every row is read): the one video of
    the excerpt is part 0's, none is part 1's."""
    workdir, ids, desc = kitchen
    write(desc, [record(nid) for nid in ids])
    assert "CLIP-TEXT-P01_11_1\n" in dry_run(GenerateConfig(workdir=workdir, split="val", shard=ShardSpec(0, 2)),
                                              "P01_11_1")
    with pytest.raises(LeapError, match="segment P01_11_1 is not in the input"):
        dry_run(GenerateConfig(workdir=workdir, split="val", shard=ShardSpec(1, 2)), "P01_11_1")
