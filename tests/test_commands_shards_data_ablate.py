"""The command layer of build-shards / check-shards, demo-data / info, demo and ablate, and leap_cli.train.ablate's
planning, bookkeeping and table: what a user reads and what each option is passed on as. The heavy work (decoding,
training, the whole demo) is stubbed where the layer under test only passes things on."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from leap_cli.cli import app
from leap_cli.errors import LeapError
from tests.test_shards import TRAIN, make_root, program_records, write_programs

WIDE = {"COLUMNS": "300", "NO_COLOR": "1"}


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env=WIDE)


def flat(text: str) -> str:
    return " ".join(text.split())


def table_row(output: str, first: str) -> list[str]:
    """The cells of the table row whose first cell is ``first``."""
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("│")]
        cells = [c for c in cells if c]
        if cells and cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in\n{output}")


# ---- build-shards: the summary a user reads ------------------------------------------------------------------

MISSING = [(f"P01_0{n}", 0.5, 1.5, "take", 0, "cup", 13) for n in (4, 5, 6, 7)]  # four videos not downloaded


@pytest.fixture(scope="module")
def shards_run(tmp_path_factory):
    """build-shards on the tiny root (7 segments of 2 videos, 2 with programs) plus 4 segments of 4 videos that are
    not there, then the same command again."""
    tmp = tmp_path_factory.mktemp("shards_cli")
    root = make_root(tmp / "k", train=TRAIN + MISSING)
    for v, *_ in MISSING:
        shutil.rmtree(root / "P01" / "rgb_frames" / v)
    work = tmp / "w"
    write_programs(work / "programs" / "train.jsonl", program_records())
    args = ["build-shards", "--data", root, "--split", "training", "--workdir", work, "--frames", "2",
            "--short-side", "32", "--max-count", "3"]
    first = invoke(*args)
    second = invoke(*args)
    return SimpleNamespace(root=root, work=work, out=work / "shards" / "train", first=first, second=second)


def test_build_shards_summary_table_counts_each_column(shards_run):
    r = shards_run.first
    assert r.exit_code == 0, r.output  # some segments skipped, not all: exit 0 without --strict
    assert "recognition shards of train in" in r.output  # the split alias "training" is read as train
    m = json.loads((shards_run.out / "manifest.json").read_text())
    gb = f"{sum(s['bytes'] for s in m['shards']) / 1e9:.3f}"
    # segments, samples, programs, skipped, shards, GB, this run
    row = next(line for line in r.output.splitlines() if line.count("│") >= 6 and "11" in line)
    cells = [c.strip() for c in row.split("│") if c.strip()]
    assert cells == ["11", "7", "2", "4", "3", gb, "3 written"], cells
    again = shards_run.second
    assert again.exit_code == 0, again.output
    row = next(line for line in again.output.splitlines() if line.count("│") >= 6 and "11" in line)
    assert [c.strip() for c in row.split("│") if c.strip()][6] == "3 kept"  # all three shards resumed


def test_build_shards_lists_skips_by_cause_and_names_the_videos(shards_run):
    out = flat(shards_run.first.output)
    assert "4 segments skipped (listed in the manifest), by cause:" in out
    assert ("no video file or rgb_frames folder: 4 segments of 4 videos (P01_04, P01_05, P01_06 and 1 more); "
            "the first, P01_04_0: ") in out
    # the outcome lines: 4 of 11 records, by cause
    assert "build-shards: 4 of 11 records failed" in out and "4 x no video file or rgb_frames folder" in out
    assert "note:" in out and "have no record in" in out  # the build's notes are printed


def test_build_shards_strict_exits_3_on_a_partial_build(shards_run, tmp_path):
    r = invoke("build-shards", "--data", shards_run.root, "--split", "train", "--workdir", tmp_path, "--frames", "2",
               "--short-side", "32", "--strict")
    assert r.exit_code == 3, r.output


def test_anticipation_blank_samples_are_said_and_a_part_names_itself(shards_run, tmp_path):
    r = invoke("build-shards", "--data", shards_run.root, "--split", "train", "--workdir", tmp_path, "--frames", "2",
               "--short-side", "32", "--task", "anticipation", "--context", "0", "--span-frames", "8",
               "--shard", "0/2")
    assert r.exit_code == 0, r.output
    m = json.loads(next((tmp_path / "shards").glob("train-anticipation*/manifest*.json")).read_text())
    blank = m["counts"]["blank"]
    assert blank >= 1, m["counts"]
    out = flat(r.output)
    assert f"note: {blank} of the {m['counts']['samples']} samples have no frame to observe" in out
    assert "within --tau-a 1 s of the video's start" in out
    # the part names itself in its progress line and its table (parts write into one folder)
    assert "build-shards train.shard0of2: reading the annotations" in out
    assert "anticipation shards of train.shard0of2 in" in out


def test_skipped_lines_group_causes_and_count_in_the_singular():
    from leap_cli.commands.shards import _skip_cause, _skipped_lines

    # a skip of an earlier leap, without "cause": the start of its reason, the video's id left out
    assert _skip_cause({"reason": "video P01_01 cannot be opened: /x/P01_01.MP4: bad"}) == "video cannot be opened"
    assert _skip_cause({"cause": "mine", "reason": "video P01_01 other: x"}) == "mine"
    one = [{"narration_id": "P02_11_3", "cause": "c1", "reason": "r1"}]
    assert _skipped_lines(one) == ["c1: 1 segment of 1 video (P02_11); the first, P02_11_3: r1"]
    many = [{"narration_id": f"P01_0{v}_{i}", "cause": "c1", "reason": f"r{v}{i}"} for v in (1, 2, 3) for i in (0, 1)]
    assert _skipped_lines(many) == ["c1: 6 segments of 3 videos (P01_01, P01_02, P01_03); the first, P01_01_0: r10"]
    causes = [{"narration_id": f"P01_01_{i}", "cause": f"c{i}", "reason": "r"} for i in range(5)]
    lines = _skipped_lines(causes)
    assert [x.split(":")[0] for x in lines[:3]] == ["c0", "c1", "c2"] and lines[3:] == ["... and 2 more causes"]
    assert _skipped_lines(causes[:3])[-1].startswith("c2:")  # three causes: all shown, no "more"


def test_sizes_in_every_spelling():
    from leap_cli.commands.shards import parse_size

    assert parse_size("1GiB") == 1 << 30 and parse_size(" 2 mb ") == 2 << 20 and parse_size("1.5k") == 1536
    assert parse_size("3T") == 3 << 40


def test_refusals_of_options_say_what_to_do(tmp_path):
    r = invoke("build-shards", "--split", "val", "--workdir", tmp_path, "--tau-a", "2")
    assert isinstance(r.exception, LeapError) and r.exception.fix == "add --task anticipation, or drop it"
    r = invoke("build-shards", "--split", "val", "--workdir", tmp_path, "--tau-a", "2", "--tau-o", "3")
    assert "--tau-a, --tau-o set how" in r.exception.message and r.exception.fix.endswith("drop them")
    r = invoke("build-shards", "--split", "val", "--workdir", tmp_path, "--task", "anticipation", "--tau-o", "3")
    assert r.exception.fix == "drop --tau-o, or pass --anticipation-context segments"
    r = invoke("build-shards", "--split", "val", "--workdir", tmp_path, "--task", "anticipation",
               "--anticipation-context", "segments", "--span-frames", "9")
    assert r.exception.fix == "drop --span-frames, or pass --anticipation-context clips"


def test_recognition_settings_store_no_context(shards_run):
    m = json.loads((shards_run.out / "manifest.json").read_text())
    assert m["settings"]["context"] == 0


# ---- check-shards: what is passed on, what is printed -------------------------------------------------------

def test_check_shards_passes_its_options_and_lists_problems(shards_run, monkeypatch):
    import leap_cli.shards.check as check
    from leap_cli.shards.check import CheckReport
    from leap_cli.shards.format import rebuild_fix

    seen = {}
    problems = [{"shard": "leap-train-000000.tar", "sample": None, "problem": "shard sha256 differs"}]
    problems += [{"shard": "leap-train-000001.tar", "sample": f"K{i:02d}", "problem": f"bad{i:02d}"} for i in range(24)]

    def fake(folder, **kw):
        seen.update(kw, folder=folder)
        return CheckReport(folder=Path(folder), shards=2, samples=30, ok=6, problems=problems)

    monkeypatch.setattr(check, "check_shards", fake)
    r = invoke("check-shards", "--split", "training", "--workdir", shards_run.work, "--no-hash", "--on-error", "skip",
               "--workers", "2")
    assert r.exit_code == 1, r.output
    assert seen["verify_hash"] is False and seen["on_error"] == "skip" and seen["workers"] == 2
    assert Path(seen["folder"]) == shards_run.out
    out = r.output
    assert "leap-train-000000.tar shard sha256 differs" in flat(out)  # no "sample" for a whole-shard problem
    assert "sample K00: bad00" in out and "sample K18: bad18" in out and "bad19" not in out  # the first 20
    assert "... and 5 more" in out
    assert flat(out).count("fix: ") == 1 and flat(rebuild_fix("leap-train-000000.tar", shards_run.out)) in flat(out)
    assert "run leap build-shards --workdir " in flat(out)  # (the build's command, not "the same" one)
    assert "4 segments of the split were skipped when the shards were built" in flat(out)
    r = invoke("check-shards", "--split", "train", "--workdir", shards_run.work)
    assert seen["verify_hash"] is True and seen["on_error"] == "raise"


def test_check_shards_without_a_folder_or_split_asks_which(tmp_path):
    r = invoke("check-shards", "--workdir", tmp_path)
    assert isinstance(r.exception, LeapError) and r.exception.message == "which shards?"


def test_a_clean_check_exits_0(shards_run, monkeypatch):
    import leap_cli.shards.check as check
    from leap_cli.shards.check import CheckReport

    monkeypatch.setattr(check, "check_shards", lambda folder, **kw: CheckReport(Path(folder), 3, 7, 7, []))
    r = invoke("check-shards", "--shards", shards_run.out, "--split", "train")
    assert r.exit_code == 0 and "fix:" not in r.output, r.output


# ---- demo-data and info ----------------------------------------------------------------------------------------

def test_demo_data_passes_its_options_on(tmp_path, monkeypatch):
    import leap_cli.synth.kitchen as kitchen

    calls = []

    def fake(out, cfg, force=False, on_video=None):
        calls.append((Path(out), cfg, force))
        return SimpleNamespace(render=lambda: "the kitchen summary", replaced_version=None)

    monkeypatch.setattr(kitchen, "build_kitchen", fake)
    r = invoke("demo-data", "--workdir", tmp_path, "--videos", "3", "--segments", "5", "--seed", "7")
    assert r.exit_code == 0 and "the kitchen summary" in r.output, r.output
    out, cfg, force = calls[-1]
    assert out == tmp_path / "kitchen" and not force
    assert (cfg.videos, cfg.segments_per_video, cfg.seed, cfg.honest) == (3, 5, 7, True)
    r = invoke("demo-data", "--workdir", tmp_path, "--out", tmp_path / "elsewhere", "--force", "--clean")
    assert r.exit_code == 0, r.output
    out, cfg, force = calls[-1]
    assert out == tmp_path / "elsewhere" and force and cfg.honest is False


@pytest.fixture(scope="module")
def info_root(tmp_path_factory):
    """The tiny root with 12 more training videos that are not there: each a folder where its MP4 should be."""
    extra = [(f"P01_{n}", 0.5, 1.5, "take", 0, "cup", 13) for n in range(10, 22)]
    root = make_root(tmp_path_factory.mktemp("info") / "k", train=TRAIN + extra)
    for v, *_ in extra:
        shutil.rmtree(root / "P01" / "rgb_frames" / v)
        (root / "P01" / "videos" / f"{v}.MP4").mkdir(parents=True)
    return root


def test_info_counts_and_names_missing_videos(info_root):
    r = invoke("info", "--data", info_root, "--no-check-lengths")
    assert r.exit_code == 0, r.output
    assert table_row(r.output, "videos missing")[1:] == ["12", "0"]
    assert table_row(r.output, "videos with rgb_frames only in their tar")[1:] == ["0", "0"]
    out = flat(r.output)
    assert "train: 12 videos with neither MP4 nor rgb_frames: P01_10, P01_11, P01_12, P01_13, P01_14 ..." in out
    said = [line for line in r.output.splitlines() if "is a folder, not a video file" in line]
    assert len(said) == 10 and "... and 2 more" in out
    assert "P01_10.MP4 is a folder, not a video file" in said[0]
    assert "splits without their CSV here: test (EPIC_100_test_timestamps.csv)" in out


def test_info_lists_five_missing_videos_without_an_ellipsis(tmp_path):
    extra = [(f"P01_{n}", 0.5, 1.5, "take", 0, "cup", 13) for n in range(10, 15)]
    root = make_root(tmp_path / "k", train=TRAIN + extra)
    for v, *_ in extra:
        shutil.rmtree(root / "P01" / "rgb_frames" / v)
    out = flat(invoke("info", "--data", root, "--no-check-lengths").output)
    assert "with neither MP4 nor rgb_frames: P01_10, P01_11, P01_12, P01_13, P01_14 looked for" in out, out


def test_info_names_broken_links_and_video_id_typos_with_annotations_elsewhere(tmp_path):
    from tests.test_shards import _rows

    root = make_root(tmp_path / "k", train=TRAIN + [("P01_30", 0.5, 1.5, "take", 0, "cup", 13)])
    shutil.rmtree(root / "P01" / "rgb_frames" / "P01_30")
    (root / "P01" / "rgb_frames" / "P01_30").symlink_to(tmp_path / "not-mounted" / "P01_30")
    ann = tmp_path / "ann"
    shutil.move(str(root / "annotations"), str(ann))
    typo = _rows([("P01_31", 1.0, 2.0, "take", 0, "cup", 13)])[0].replace("P01_31_0,", "P01_01_9,", 1)
    with open(ann / "EPIC_100_train.csv", "a") as f:
        f.write(typo + "\n")
    r = invoke("info", "--data", root, "--annotations", ann, "--no-check-lengths")
    assert r.exit_code == 0, r.output
    out = flat(r.output)
    assert f"annotations: {ann} (" in out
    assert f"{root / 'P01' / 'rgb_frames' / 'P01_30'} is a link to {tmp_path / 'not-mounted' / 'P01_30'}, which is " \
           "not there" in out
    assert "P01_31: the narration id P01_01_9 names video P01_01, which is there: a typo in the row's video_id?" in out


def test_info_lists_the_first_lengths_and_all_with_all(info_root, monkeypatch):
    import leap_cli.epic.info as info

    bad = [SimpleNamespace(video_id=f"P01_{n:02d}", source="MP4", expected_s=6.0, decoded_s=5.0, note="cut short")
           for n in range(22)]
    bad[0] = SimpleNamespace(video_id="P01_00", source="MP4", expected_s=None, decoded_s=None, note="not in info")
    bad[1] = SimpleNamespace(video_id="P01_01", source="MP4", expected_s=6.0, decoded_s=None,
                             note="the file runs at 30 fps")
    bad[2] = SimpleNamespace(video_id="P01_02", source="MP4", expected_s=6.0, decoded_s=None, note="unreadable")
    monkeypatch.setattr(info, "check_lengths", lambda layout, videos: bad)
    r = invoke("info", "--data", info_root)
    assert r.exit_code == 0, r.output
    out = r.output
    assert "22 videos whose decodable length disagrees" in flat(out)
    assert "P01_00 (MP4): not in info" in out and "P01_01 (MP4): the file runs at 30 fps" in out
    assert "P01_02 (MP4): video_info 6.00 s, decodes nothing (unreadable)" in out
    assert "P01_19 (MP4): video_info 6.00 s, decodes 5.00 s (cut short)" in out and "P01_20 (MP4)" not in out
    assert "... and 2 more (--all lists every one)" in out
    r = invoke("info", "--data", info_root, "--all")
    assert "P01_21 (MP4)" in r.output and "more (--all" not in r.output
    monkeypatch.setattr(info, "check_lengths", lambda layout, videos: bad[:20])
    assert "more (--all" not in invoke("info", "--data", info_root).output


def test_info_without_the_length_check_decodes_nothing(info_root, monkeypatch):
    import leap_cli.epic.info as info

    monkeypatch.setattr(info, "check_lengths", lambda *a: pytest.fail("the length check ran"))
    r = invoke("info", "--data", info_root, "--no-check-lengths")
    assert r.exit_code == 0 and "video lengths" not in r.output, r.output


# ---- demo ------------------------------------------------------------------------------------------------------

def _fake_demo(monkeypatch, stages):
    import leap_cli.demo as demo

    seen = {}

    def check_demo(cfg):
        seen["checked"] = cfg
        return cfg

    monkeypatch.setattr(demo, "check_demo", check_demo)
    monkeypatch.setattr(demo, "plan", lambda cfg: [SimpleNamespace(**s) for s in stages])
    monkeypatch.setattr(demo, "run_stage", lambda stage: stage)
    monkeypatch.setattr(demo, "collect", lambda cfg: [("train", "runs/x", "verb 1%")])
    return seen


def test_demo_passes_its_options_and_summarises(tmp_path, monkeypatch):
    seen = _fake_demo(monkeypatch, [dict(name="demo-data", seconds=3.0, reused=True),
                                    dict(name="submit", seconds=2.0, reused=False)])
    r = invoke("demo", "--workdir", tmp_path, "--videos", "4", "--workers", "2", "--frames", "4", "--short-side", "64",
               "--set", "train.epochs=1", "--force")
    assert r.exit_code == 0, r.output
    cfg = seen["checked"]
    assert (cfg.videos, cfg.workers, cfg.frames, cfg.short_side, cfg.train_overrides, cfg.force, cfg.ablate) == (
        4, 2, 4, 64, ("train.epochs=1",), True, False)
    out = flat(r.output)
    assert "time per stage: demo-data 3s (done before), submit 2s" in out and "submit 2s (done before)" not in out
    assert f"submission: {tmp_path / 'submission.zip'}" in out and "no submission" not in out


def test_demo_without_a_submit_stage_says_so_and_shows_the_ablation_only_with_ablate(tmp_path, monkeypatch):
    (tmp_path / "ablation").mkdir()
    (tmp_path / "ablation" / "ablation.md").write_text("| the ablation table |\n")
    _fake_demo(monkeypatch, [dict(name="train", seconds=1.0, reused=False)])
    r = invoke("demo", "--workdir", tmp_path)
    assert r.exit_code == 0, r.output
    assert "no submission" in r.output and "submission.zip" not in r.output
    assert "the ablation table" not in r.output  # a table left by an earlier --ablate run
    r = invoke("demo", "--workdir", tmp_path, "--ablate")
    assert "the ablation table" in r.output


# ---- ablate: the command ----------------------------------------------------------------------------------------

def _fake_ablation(monkeypatch, raise_=None):
    import leap_cli.train.ablate as ablate

    seen = []

    def run_ablation(cfg, on_run=None):
        seen.append(cfg)
        if raise_:
            raise raise_
        on_run("recognition none L_CE seed 0", {"cell": {}, "seed": 0, "seconds": 12.0, "verb_top1": 0.5,
                                                "noun_top1": 0.25})
        return {"markdown": "| the table |", "seconds": 33.0}

    monkeypatch.setattr(ablate, "run_ablation", run_ablation)
    return seen


def test_ablate_passes_every_option_on(tmp_path, monkeypatch):
    from leap_cli.train.ablate import AblateConfig

    seen = _fake_ablation(monkeypatch)
    r = invoke("ablate", "--workdir", tmp_path, "--seeds", "2", "--epochs", "3", "--anticipation-epochs", "4",
               "--videos", "5", "--segments", "6", "--sources", "truth, ,none,", "--no-anticipation",
               "--anticipation-sources", "truth,offline", "--span-frames", "64", "--config", "my.yaml",
               "--set", "optim.lr=0.1", "--set", "train.batch_size=2")
    assert r.exit_code == 0, r.output
    cfg = seen[-1]
    assert (cfg.seeds, cfg.epochs, cfg.anticipation_epochs, cfg.videos, cfg.segments_per_video) == ((0, 1), 3, 4, 5, 6)
    assert cfg.sources == ("truth", "none") and cfg.anticipation is False
    assert cfg.anticipation_sources == ("truth", "offline") and cfg.span_frames == 64 and cfg.config == "my.yaml"
    assert cfg.overrides == ("optim.lr=0.1", "train.batch_size=2")
    out = flat(r.output)
    assert "recognition none L_CE seed 0: verb_top1 50.0 noun_top1 25.0 (12 s)" in out and "seconds 1200" not in out
    assert "| the table |" in out and f"wrote {tmp_path / 'ablation.md'} and ablation.json (33 s)" in out
    r = invoke("ablate", "--workdir", tmp_path)
    d = AblateConfig()
    assert (seen[-1].anticipation, seen[-1].overrides, seen[-1].anticipation_sources) == (
        True, d.overrides, d.anticipation_sources)


@pytest.mark.parametrize("name, status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_ablate_stopped_by_a_signal_exits_with_its_status(tmp_path, monkeypatch, name, status):
    from leap_cli.train.ablate import CellInterrupted

    _fake_ablation(monkeypatch, CellInterrupted(name, tmp_path / "runs" / "recognition-none-L_CE-seed0"))
    r = invoke("ablate", "--workdir", tmp_path)
    assert r.exit_code == status, r.output
    assert f"{name}: ablation stopped in recognition-none-L_CE-seed0" in flat(r.output)


# ---- leap_cli.train.ablate ---------------------------------------------------------------------------------------

def test_plan_cells_makes_each_cell_once():
    from leap_cli.train.ablate import plan_cells

    cells = plan_cells(("truth", "offline", "none"), True, ("truth",))  # leap ablate's default
    got = [(c.task, c.source, c.name, c.overrides) for c in cells]
    ant = ("data.task=anticipation", "model.anticipation_context=2")
    assert got == [("recognition", "none", "L_CE", ("loss.program_loss=false",))] + [
        x for src in ("truth", "offline", "none")[:2] for x in (
            ("recognition", src, "+L_T", ("loss.lambda_pc=0.0",)),
            ("recognition", src, "+L_PC", ("loss.lambda_t=0.0",)),
            ("recognition", src, "+L_T+L_PC", ()))] + [
        ("anticipation", "none", "L_CE", ant + ("loss.program_loss=false", "model.anticipation_aggregate=false")),
        ("anticipation", "truth", "+L_T+L_PC", ant + ("model.anticipation_aggregate=false",)),
        ("anticipation", "truth", "+L_T+L_PC+aggregation", ant + ("model.anticipation_aggregate=true",))]
    every = plan_cells()  # every source with programs
    assert [c.source for c in every if c.task == "anticipation"] == ["none", "truth", "truth", "offline", "offline"]
    assert all(c.task == "recognition" for c in plan_cells(anticipation=False))


def test_ablate_config_refuses_nothing_to_run():
    from leap_cli.train.ablate import AblateConfig

    for kw in ({"sources": ()}, {"seeds": ()}, {"epochs": 0}, {"anticipation_epochs": 0}, {"sources": ("tru",)}):
        with pytest.raises(LeapError):
            AblateConfig(**kw)


@pytest.fixture
def kitchen(tmp_path):
    """The tiny root (train: P01_01_*, P01_02_*; val: P01_03_*) with a truth file."""
    root = make_root(tmp_path / "kitchen")
    truth = [{"narration_id": "P01_01_0", "program": {"p": 1}}, {"narration_id": "P01_01_1", "program": None},
             {"narration_id": "P01_03_0", "program": {"p": 3}}, {"narration_id": "P09_09_0", "program": {"p": 9}}]
    (root / "ground-truth").mkdir()
    (root / "ground-truth" / "segments.jsonl").write_text("".join(json.dumps(t) + "\n" for t in truth))
    return root


def test_true_programs_of_a_split_from_either_truth_folder(kitchen, tmp_path):
    from leap_cli.train.ablate import kitchen_truth_file, prepare_programs, true_program_records

    assert kitchen_truth_file(kitchen) == kitchen / "ground-truth" / "segments.jsonl"  # the former folder
    assert true_program_records(kitchen, "train") == [
        {"narration_id": "P01_01_0", "status": "valid", "program": {"p": 1}, "errors": []}]
    assert [r["narration_id"] for r in true_program_records(kitchen, "val")] == ["P01_03_0"]
    work = tmp_path / "abl"
    prepare_programs(work, kitchen, "truth")
    train = work / "sources" / "truth" / "programs" / "train.jsonl"
    assert [json.loads(x)["narration_id"] for x in train.read_text().splitlines()] == ["P01_01_0"]
    train.write_text("kept\n")
    prepare_programs(work, kitchen, "truth")  # made before: kept
    assert train.read_text() == "kept\n"
    prepare_programs(work, kitchen, "none")
    assert not (work / "sources" / "none").exists()
    with pytest.raises(LeapError, match="no truth file"):
        kitchen_truth_file(tmp_path)


def test_prepare_shards_builds_each_split_once_with_the_train_vocabulary(tmp_path, monkeypatch):
    import leap_cli.shards.writer as writer
    from leap_cli.train.ablate import AblateConfig, prepare_shards, shards_dir

    calls = []
    monkeypatch.setattr(writer, "build_split", lambda kitchen, split, **kw: calls.append((split, kw)))
    assert shards_dir(tmp_path, "truth", "val", "anticipation") == tmp_path / "sources/truth/shards/val-anticipation"
    cfg = AblateConfig(span_frames=64)
    prepare_shards(tmp_path, tmp_path / "k", "truth", "anticipation", cfg)
    (train, t), (val, v) = calls
    assert (train, val) == ("train", "val") and t["vocab_manifest"] is None
    assert v["vocab_manifest"] == tmp_path / "sources/truth/shards/train-anticipation/manifest.json"
    assert v["out"] == tmp_path / "sources/truth/shards/val-anticipation"
    assert (t["settings"].context, t["settings"].span_frames, t["settings"].task) == (2, 64, "anticipation")
    calls.clear()
    prepare_shards(tmp_path, tmp_path / "k", "truth", "recognition", cfg)
    assert calls[0][1]["settings"].context == 0
    calls.clear()
    for split in ("train", "val"):
        (tmp_path / "sources/none/shards" / split).mkdir(parents=True)
        (tmp_path / "sources/none/shards" / split / "manifest.json").write_text("{}")
    prepare_shards(tmp_path, tmp_path / "k", "none", "recognition", cfg)
    assert calls == []  # built before


def _fake_training(monkeypatch, metrics):
    import leap_cli.evaluate.inference as inference
    import leap_cli.evaluate.scoring as scoring
    import leap_cli.train.loop as loop

    trained = []

    def fake_main(cfg, workdir, name):
        trained.append(cfg)
        (Path(workdir) / "runs" / name).mkdir(parents=True, exist_ok=True)
        return SimpleNamespace(interrupted=None)

    monkeypatch.setattr(loop, "main", fake_main)
    monkeypatch.setattr(inference, "evaluate_run", lambda *a, **k: ({}, None))
    monkeypatch.setattr(scoring, "evaluate_scores", lambda *a, **k: metrics)
    monkeypatch.setattr("leap_cli.epic.annotations.Annotations", lambda *a, **k: None)
    return trained


def test_run_cell_trains_with_its_seed_epochs_and_overrides_last(tmp_path, monkeypatch):
    from leap_cli.train.ablate import AblateConfig, Cell, run_cell

    trained = _fake_training(monkeypatch, {"anticipation": {"overall": {
        t: {"mt5r": 0.25} for t in ("verb", "noun", "action")}}})
    cell = Cell("+L_T", "anticipation", "truth", ("loss.lambda_t=0.0",))
    cfg = AblateConfig(workdir=tmp_path, epochs=5, anticipation_epochs=2, overrides=("loss.lambda_t=0.7",))
    stale = tmp_path / "runs" / "anticipation-truth-plus_L_T-seed3"
    stale.mkdir(parents=True)
    (stale / "left.txt").write_text("an interrupted run's file")
    r = run_cell(tmp_path, tmp_path / "kitchen", cell, 3, cfg)
    (c,) = trained
    assert (c.train.seed, c.train.epochs, c.loss.lambda_t) == (3, 2, 0.0)  # the cell's own override wins
    assert not (stale / "left.txt").exists()  # an interrupted run is started over
    assert r["seed"] == 3 and r["verb_mt5r"] == 0.25 and r["settings"]["epochs"] == 2


def test_summarize_keeps_zero_figures():
    from leap_cli.train.ablate import summarize

    got = summarize({"recognition": {"all": {t: {"top1": 0.5} for t in ("verb", "noun", "action")}},
                     "programs": {"steps": {"s_verb": 0.0, "obj_a": None, "structure": 0.5},
                                  "step_conditions": {"all": {"micro_f1": 0.0}}}})
    assert got == {"verb_top1": 0.5, "noun_top1": 0.5, "action_top1": 0.5, "s_verb": 0.0, "structure": 0.5,
                   "step_cond_f1": 0.0}


def test_mean_std_and_the_table():
    from leap_cli.train.ablate import mean_std, table

    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0) and mean_std([4.0]) == (4.0, 0.0)
    rs = [{"cell": {"task": "recognition", "source": "truth", "name": "+L_T"}, "seed": s, "seconds": 2.0,
           "verb_top1": v, "s_verb": 0.0} for s, v in ((0, 0.123456), (1, 0.123456))]
    rs.append({"cell": {"task": "recognition", "source": "none", "name": "L_CE"}, "seed": 0, "seconds": 1.5,
               "verb_top1": 0.5})
    rows, md = table(rs)
    assert [(r["source"], r["seeds"], r["seconds"]) for r in rows] == [("truth", [0, 1], 4.0), ("none", [0], 1.5)]
    assert rows[0]["verb_top1"] == {"mean": 12.3456, "std": 0.0} and rows[0]["s_verb"] == {"mean": 0.0, "std": 0.0}
    lines = md.split("\n\n")[0].splitlines()
    assert lines[0] == "| task | programs | losses | seeds | verb top-1 | S-Verb |"
    assert lines[1] == "|---|---|---|---|---|---|"
    assert lines[2] == "| recognition | truth | +L_T | 2 | 12.3 ± 0.0 | 0.0 ± 0.0 |"
    assert lines[3] == "| recognition | none | L_CE | 1 | 50.0 |  |"


def test_run_ablation_runs_every_cell_and_seed_and_writes_the_table(tmp_path, monkeypatch):
    import leap_cli.synth.kitchen as kitchen
    import leap_cli.train.ablate as ablate

    shards, labels = [], []
    monkeypatch.setattr(kitchen, "build_kitchen", lambda out, cfg, **kw: None)
    monkeypatch.setattr(ablate, "prepare_programs", lambda work, k, source: None)
    monkeypatch.setattr(ablate, "prepare_shards", lambda work, k, source, task, cfg: shards.append((source, task)))
    monkeypatch.setattr(ablate, "run_cell", lambda work, k, cell, seed, cfg: {
        "cell": asdict(cell), "seed": seed, "seconds": 1.0, "verb_top1": 0.5})
    cfg = ablate.AblateConfig(workdir=tmp_path, seeds=(0, 1))
    summary = ablate.run_ablation(cfg, on_run=lambda label, r: labels.append(label))
    assert sorted(shards) == [("none", "anticipation"), ("none", "recognition"), ("offline", "recognition"),
                              ("truth", "anticipation"), ("truth", "recognition")]
    n = len(ablate.plan_cells(cfg.sources, cfg.anticipation, cfg.anticipation_sources))
    assert len(summary["runs"]) == len(labels) == 2 * n and labels[:2] == ["recognition none L_CE seed 0",
                                                                          "recognition none L_CE seed 1"]
    assert (tmp_path / "ablation.md").read_text() == summary["markdown"]
    assert json.loads((tmp_path / "ablation.json").read_text())["config"]["workdir"] == str(tmp_path)
