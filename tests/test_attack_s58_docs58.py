"""README's "Running on the real EPIC-KITCHENS-100" (steps 1-5) and docs/troubleshooting.md, claim by claim, against
what leap does: the data layout of step 1 (where each file is looked for, the annotation file names, the weights'
addresses), the presets and options of steps 2-5, what extract does without videos, options.md's table of shared
options against each command's options, and the troubleshooting rows' quoted messages, triggered where cheap.
test_attack_docs_claims.py (option tables, command lines, links) and test_attack_s57_docs57.py are not repeated.
The claims found false were fixed; their tests say "Was wrong"."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from tests.procs import leap_main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SECTION = README[README.index("## Running on the real EPIC-KITCHENS-100"):README.index("## Troubleshooting")]
OPTIONS_MD = (ROOT / "docs" / "options.md").read_text()
TROUBLE = (ROOT / "docs" / "troubleshooting.md").read_text()
EPIC = ROOT / "tests" / "data" / "epic100"
ANNOTATION_FILES = ("EPIC_100_train.csv", "EPIC_100_validation.csv", "EPIC_100_test_timestamps.csv",
                    "EPIC_100_verb_classes.csv", "EPIC_100_noun_classes.csv", "EPIC_100_tail_verbs.csv",
                    "EPIC_100_tail_nouns.csv", "EPIC_100_unseen_participant_ids_validation.csv",
                    "EPIC_100_unseen_participant_ids_test.csv", "EPIC_100_video_info.csv")


def _cli():
    import typer

    from leap_cli.cli import app

    return typer.main.get_command(app)


def _annotations(folder: Path) -> Path:
    """A copy of the EPIC excerpt's annotation CSVs (the ten README lists) in ``folder``."""
    folder.mkdir(parents=True)
    for name in ANNOTATION_FILES:
        shutil.copy(EPIC / name, folder / name)
    return folder


def _trouble_row(words: str) -> str:
    rows = [r for r in TROUBLE.splitlines() if r.startswith("| ") and words in r]
    assert len(rows) == 1, words
    return rows[0]


# -- step 1: the layout ---------------------------------------------------------------------------------------------

def test_readme_lists_the_annotation_files_leap_reads():
    """README's tree names the ten CSVs of EPIC's annotations repository; they are the names leap reads."""
    from leap_cli.epic import annotations as a

    tree = SECTION[SECTION.index("```\nROOT/"):]
    tree = tree[:tree.index("\n```", 4)]
    named = set(re.findall(r"EPIC_100_\w+\.csv", tree))
    leaps = {*a.SPLIT_FILES.values(), a.VERB_CLASSES, a.NOUN_CLASSES, a.TAIL_VERBS, a.TAIL_NOUNS,
             *a.UNSEEN.values(), a.VIDEO_INFO}
    assert named == leaps == set(ANNOTATION_FILES)


def test_readme_tree_paths_are_where_leap_looks(tmp_path):
    """Each path of README's tree (and each "or") is found: MP4 or frames folder (1-based 10-digit frame names),
    audio .wav or .flac, hand-objects as P01/hand-objects/X.pkl, .jsonl or hand-objects/P01/, labelled detections,
    EPIC Fields JSON or COLMAP images.txt / sparse/0/images.bin; ROOT/EPIC-KITCHENS/ is read first unless ROOT
    holds P01/ of its own."""
    from leap_cli.epic.layout import DatasetLayout
    from leap_cli.epic.timing import frame_filename

    assert frame_filename(1) == "frame_0000000001.jpg" and "frame_0000000001.jpg" in SECTION
    root = tmp_path / "ROOT"
    _annotations(root / "annotations")
    inner = root / "EPIC-KITCHENS"
    files = {
        inner / "P01/videos/P01_01.MP4": "video", inner / "P01/rgb_frames/P01_02/frame_0000000001.jpg": None,
        inner / "P01/hand-objects/P01_01.pkl": "hands", inner / "hand-objects/P01/P01_02.jsonl": "hands2",
        root / "P01/audio/P01_01.wav": "audio", root / "P01/audio/P01_02.flac": "audio2",
        root / "object-detections/P01/P01_01.jsonl": "objects",
        root / "poses/P01_01.json": "poses", root / "poses/P01_02/sparse/0/images.bin": "poses2",
    }
    for p in files:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    layout = DatasetLayout.open(root)
    assert layout.roots == (root, inner)  # (ROOT holds P01/ of its own: it first)
    assert layout.video_path("P01_01") == inner / "P01/videos/P01_01.MP4"
    assert layout.frames_dir("P01_02") == inner / "P01/rgb_frames/P01_02"
    assert layout.audio_path("P01_01").name == "P01_01.wav" and layout.audio_path("P01_02").name == "P01_02.flac"
    assert layout.hand_objects_path("P01_01") == inner / "P01/hand-objects/P01_01.pkl"
    assert layout.hand_objects_path("P01_02") == inner / "hand-objects/P01/P01_02.jsonl"
    assert layout.object_detections_path("P01_01") == root / "object-detections/P01/P01_01.jsonl"
    assert layout.poses_path("P01_01") == root / "poses/P01_01.json"
    assert layout.poses_path("P01_02") == root / "poses/P01_02/sparse/0/images.bin"
    shutil.rmtree(root / "P01")  # now ROOT holds no P01/: EPIC-KITCHENS/ first
    assert DatasetLayout.open(root).roots == (inner, root)


def test_annotations_in_the_download_folder_beside_a_root_that_holds_p01(tmp_path):
    """Was wrong: README: annotations, audio, detections and poses "go beside" the download script's
    ROOT/EPIC-KITCHENS/;
    "leap looks for each file in both folders ..., so either may hold any of the paths below" (annotations/ is one
    of them). A root with its own P01/audio/ and the annotations in EPIC-KITCHENS/annotations/ is refused."""
    from leap_cli.epic.layout import DatasetLayout

    root = tmp_path / "ROOT"
    ann = _annotations(root / "EPIC-KITCHENS" / "annotations")
    (root / "EPIC-KITCHENS" / "P01" / "videos").mkdir(parents=True)
    (root / "P01" / "audio").mkdir(parents=True)
    (root / "P01" / "audio" / "P01_01.wav").write_bytes(b"x")
    assert DatasetLayout.open(root).annotations_dir == ann


def test_readme_weights_addresses_are_the_ones_leap_names():
    """README's weights table gives the addresses leap's errors name for a missing file of that name
    (leap_cli/published.py), and the K710 file's name is one leap knows."""
    from leap_cli.published import URLS, source_of

    for name in ("ViT-B-16.pt", "ViT-L-14.pt", "class_labels_indices.csv"):
        assert f"]({URLS[name]})" in SECTION, name
    assert "zenodo.org/record/3987831" in SECTION and "/record/3987831/" in URLS["Cnn14_mAP=0.431.pth"]
    assert source_of("k710_uniformerv2_b16_8x224.pyth").endswith("/k710/k710_uniformerv2_b16_8x224.pyth")


# -- steps 2-5: presets and options --------------------------------------------------------------------------------

def test_the_presets_readme_names_load_with_their_family_and_no_weights_file():
    """README: "Each weights family has its config preset (uniformerv2-{b16,l14}-{clip,k400,k710,ssv2})"; "no config
    names a weights file"; B/16 "~7 h for 30 epochs" on 8 GPUs (uniformerv2-b16-k710 takes the -epic schedule)."""
    from leap_cli.train.config import load_config

    assert "uniformerv2-{b16,l14}-{clip,k400,k710,ssv2}" in SECTION
    for size in ("b16", "l14"):
        for family in ("clip", "k400", "k710", "ssv2"):
            cfg = load_config(f"uniformerv2-{size}-{family}")
            assert (cfg.model.weights, cfg.model.pretrained) == (family, None)
    for name in ("uniformerv2-l14-epic", "uniformerv2-b16-epic-anticipation"):
        assert load_config(name).model.pretrained is None
    k710 = load_config("uniformerv2-b16-k710")
    assert k710.train.epochs == 30 and k710.model.program_heads and k710.train.precision == "auto"


def test_the_option_values_readme_states_are_the_cli_defaults():
    """README step 3: gpt-4o-mini prices $0.15 / $0.075 / $0.60 are --price-in / --price-cached-in / --price-out's
    defaults; the key is read from OPENAI_API_KEY (--api-key-env); the default backend is offline. Step 1: `leap
    info` lists the first 20 videos of its length check, `--all` every one."""
    from leap_cli.commands import data

    gp = {p.name: p for p in _cli().commands["generate-programs"].params}
    assert (gp["price_in"].default, gp["price_cached_in"].default, gp["price_out"].default) == (0.15, 0.075, 0.6)
    assert "$0.15 input, $0.075 cached input, $0.60 output" in SECTION
    assert gp["api_key_env"].default == "OPENAI_API_KEY" and gp["model"].default == "gpt-4o-mini"
    assert gp["backend"].default in (None, "offline")
    assert data.LENGTHS_SHOWN == 20 and "(the first 20; `--all` lists every one)" in SECTION
    assert "--all" in [o for p in _cli().commands["info"].params for o in getattr(p, "opts", [])]


def _where(option: str) -> set[str]:
    """The commands options.md's table names for ``option`` (its row's last cell; the backticked command names)."""
    row = next(r for r in OPTIONS_MD.splitlines() if r.startswith(f"| `{option}"))
    cell = row.rstrip(" |").rsplit(" | ", 1)[1]
    cell = cell.split(" differs")[0]  # (--force: "`demo-data` differs: ...")
    cell = re.sub(r"\([^()]*\)", "", re.sub(r"\([^()]*\)", "", cell))  # (asides, nested once)
    commands = set(_cli().commands)
    return {w for w in re.findall(r"`([a-z-]+)`", cell) if w in commands}


def _having(option: str) -> set[str]:
    return {n for n, c in _cli().commands.items() for p in c.params
            if option in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])] and not getattr(p, "hidden", False)}


@pytest.mark.parametrize("option", ["--out", "--shard", "--workers", "--concurrency", "--retry-errors", "--limit",
                                    "--resume"])
def test_options_md_names_the_commands_that_have_each_shared_option(option):
    """options.md's "where" column: the commands named are those whose --help lists the option."""
    assert _where(option) == _having(option), option


def test_options_md_force_row_names_the_commands_with_force():
    """--force: extract, generate-programs, build-shards, train; demo; demo-data (differs); --overwrite still listed
    beside it in extract, build-shards and train."""
    assert _where("--force") | {"demo-data"} == _having("--force")
    assert _having("--overwrite") == {"extract", "build-shards", "train"}


def test_every_command_with_data_has_annotations():
    """Was wrong (`leap show` had --data only): options.md: `--data ROOT`, `--annotations DIR` are the options of
    "every stage that reads annotations"."""
    assert _having("--data") == _having("--annotations"), sorted(_having("--data") - _having("--annotations"))


def test_readmes_resume_command_restarts_an_unsaved_run_from_its_weights(tmp_path, monkeypatch, capsys):
    """Was wrong: README: "after a crash or preemption: the same command with --resume ... (the weights come from
    last.pt); a run
    stopped before its first checkpoint ... starts again from step 0: a requeue script may always pass --resume",
    shown as `train --config uniformerv2-b16-k710 --workdir work --resume` (no --set model.pretrained). A run that
    started (its config.yaml, naming the K710 file, written) and stopped before last.pt, requeued with that command,
    starts from step 0 without the K710 weights (only a warning says random weights)."""
    from leap_cli.train import loop
    from leap_cli.train.config import dump_config, load_config

    weights = "/weights/k710_uniformerv2_b16_8x224.pyth"
    work = tmp_path / "work"
    run = work / "runs" / "uniformerv2-b16-k710"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(dump_config(load_config("uniformerv2-b16-k710",
                                                             [f"model.pretrained={weights}"])))
    block = SECTION.replace("\\\n", " ")
    line = next(x for x in block.splitlines() if x.startswith("torchrun") and " --resume" in x)
    args = shlex.split(line)
    args = args[args.index("leap_cli") + 1:]
    assert args[:3] == ["train", "--config", "uniformerv2-b16-k710"] and args[args.index("--workdir") + 1] == "work"
    args[args.index("--workdir") + 1] = str(work)
    seen = {}

    class Started(Exception):
        pass

    def started(cfg, workdir):  # (the first thing a start does with the config: find the shards)
        seen["pretrained"] = cfg.model.pretrained
        raise Started

    monkeypatch.setattr(loop, "shard_folders", started)
    with pytest.raises(Started):
        leap_main(monkeypatch, capsys, *args)
    assert seen["pretrained"] == weights


# -- step 2: extract without the videos, and the troubleshooting rows it meets --------------------------------------

@pytest.fixture
def bare_root(tmp_path):
    """A data set root of annotations only (the EPIC excerpt)."""
    _annotations(tmp_path / "ROOT" / "annotations")
    return tmp_path / "ROOT"


def test_extract_without_videos_writes_the_narration_and_marks_the_rest_unavailable(bare_root, tmp_path,
                                                                                     monkeypatch, capsys):
    """README: "Without the videos yet (annotations only), extract writes the narration and marks audio, camera,
    objects and hands unavailable"; troubleshooting: `no video file or rgb_frames folder` (with `looked for
    .../P01/videos/P01_01.MP4 and .../P01/rgb_frames/P01_01/`), extract goes on and exits 0; a re-run with another
    --hand-threshold stops with `was started with other settings (--hand-threshold: 0.5 -> 0.7)`."""
    work = tmp_path / "work"
    code, out, err = leap_main(monkeypatch, capsys, "extract", "--data", str(bare_root), "--split", "val",
                               "--workdir", str(work), "--limit", "3", "--frame-cache", "none")
    assert code == 0, out + err
    records = [json.loads(line) for line in (work / "descriptors" / "val.jsonl").read_text().splitlines()]
    assert len(records) == 3
    for r in records:
        status = {k: v["status"] for k, v in r["components"].items()}
        assert status == {"narration": "ok", "audio": "unavailable", "camera": "unavailable",
                          "objects": "unavailable", "hands": "unavailable"}, status
        camera = r["components"]["camera"]["data"]
        vid = r["video_id"]
        part = vid.split("_")[0]
        assert camera["reason"] == "no video file or rgb_frames folder"
        assert f"looked for {bare_root}/{part}/videos/{vid}.MP4 and {bare_root}/{part}/rgb_frames/{vid}/" in \
            camera["detail"]
    assert "no video file or rgb_frames folder" in _trouble_row("no video file or rgb_frames folder")
    code, out, err = leap_main(monkeypatch, capsys, "extract", "--data", str(bare_root), "--split", "val",
                               "--workdir", str(work), "--limit", "3", "--frame-cache", "none",
                               "--hand-threshold", "0.7")
    assert code == 2
    assert "was started with other settings (--hand-threshold: 0.5 -> 0.7)" in " ".join((out + err).split())
    assert "`... was started with other settings (--hand-threshold: 0.5 -> 0.7)`" in TROUBLE


def _said(capsys_out: str) -> str:
    return " ".join(capsys_out.split())


def test_troubleshooting_annotation_messages_are_what_leap_prints(bare_root, tmp_path, monkeypatch, capsys):
    """The rows `annotations folder not found` / `.../EPIC_100_verb_classes.csv: file not found`, `missing column(s):
    ... (found '...'?)` and `[row N, P01_01_7]: column start_timestamp holds ...`: each cause gives that line."""
    ann = bare_root / "annotations"
    code, out, err = leap_main(monkeypatch, capsys, "info", "--data", str(tmp_path), "--no-check-lengths")
    assert code == 2 and "annotations folder not found" in _said(out + err)

    (ann / "EPIC_100_verb_classes.csv").rename(tmp_path / "verbs.csv")
    code, out, err = leap_main(monkeypatch, capsys, "info", "--data", str(bare_root), "--no-check-lengths")
    assert code == 2 and f"{ann}/EPIC_100_verb_classes.csv: file not found" in _said(out + err)
    (tmp_path / "verbs.csv").rename(ann / "EPIC_100_verb_classes.csv")

    csv_path = ann / "EPIC_100_validation.csv"
    good = csv_path.read_text()
    lines = good.splitlines()
    header = lines[0].split(",")
    col = header.index("start_timestamp")
    row = lines[3].split(",")
    row[col] = "00:00:xx"
    csv_path.write_text("\n".join([*lines[:3], ",".join(row), *lines[4:]]) + "\n")
    code, out, err = leap_main(monkeypatch, capsys, "extract", "--data", str(bare_root), "--split", "val",
                               "--workdir", str(tmp_path / "w"))
    assert code == 2
    assert f"[row 4, {row[0]}]: column start_timestamp holds '00:00:xx'" in _said(out + err)

    csv_path.write_text(good.replace("start_timestamp", "start_timestmp", 1))
    code, out, err = leap_main(monkeypatch, capsys, "extract", "--data", str(bare_root), "--split", "val",
                               "--workdir", str(tmp_path / "w"))
    assert code == 2 and "missing column(s): start_timestamp (found 'start_timestmp'?)" in _said(out + err)
    for quoted in ("`annotations folder not found` / `.../EPIC_100_verb_classes.csv: file not found`",
                   "`missing column(s): ... (found '...'?)`", "`[row N, P01_01_7]: column start_timestamp holds ...`"):
        assert quoted in TROUBLE, quoted


def test_troubleshooting_cannot_connect_line_is_what_generate_programs_prints(bare_root, tmp_path, monkeypatch,
                                                                              capsys):
    """Row `cannot connect to HOST:PORT: is the server running?`: a local server that is not there (README's
    `LOCAL_KEY=none ... --base-url http://localhost:8000/v1 --api-key-env LOCAL_KEY`) stops the stage with it."""
    monkeypatch.setenv("LOCAL_KEY", "none")
    code, out, err = leap_main(monkeypatch, capsys, "generate-programs", "--data", str(bare_root), "--split", "val",
                               "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1", "--api-key-env",
                               "LOCAL_KEY", "--model", "m", "--max-retries", "0", "--limit", "2",
                               "--workdir", str(tmp_path / "w"))
    said = _said(out + err)
    assert code == 2 and re.search(r"cannot connect to 127\.0\.0\.1:9: .*: is the server running\? \(check "
                                   r"--base-url\)", said), said
    assert "`cannot connect to HOST:PORT: is the server running?`" in TROUBLE


def test_troubleshooting_quotes_are_in_leaps_code():
    """The rows' quoted messages that are not triggered here are worded as the code words them."""
    code = "\n".join(p.read_text() for p in (ROOT / "leap_cli").rglob("*.py"))
    for words in ("rgb_frames not extracted from their tar", "the video cannot be opened (truncated or not a video "
                  "file)", "the file is cut short (download it again)", "frames requested past the end of the video",
                  "not a hand-object detections pickle", "the account has no quota left (HTTP 429",
                  "the folder holds shards built from other inputs or settings", "the endpoint refused the API key "
                  "(HTTP {status})", "the EPIC class files are needed to resolve verbs and objects",
                  "is not a class of", "a worker process died ({how})", "the server is still loading the model",
                  "the reply is only the model's thinking", "skipped[/] (listed in the manifest)", "the server stopped answering: "
                  "no reply for", "the reply stopped at the token limit ({limit}; ", "reached (estimated"):
        assert words in code, words
    assert 'f"--max-tokens {max_tokens}"' in code and 'f"--max-cost {cfg.max_cost:g} reached' in code
    from leap_cli.programs.backends import OpenAIBackend

    assert OpenAIBackend.HOLD_FOR == 600.0  # "no reply for 10 min"


def test_info_lists_every_video_whose_frames_are_still_in_their_tar(tmp_path, monkeypatch, capsys):
    """Was wrong (info named five, also with --all): troubleshooting: `rgb_frames not extracted from their tar` ->
    "extract it with the command the message gives
    (`leap info` lists every such video)". Seven val videos with only P01/rgb_frames/VIDEO.tar: info (also with
    --all) names five of them and "..."."""
    root = tmp_path / "ROOT"
    ann = _annotations(root / "annotations")
    lines = (ann / "EPIC_100_validation.csv").read_text().splitlines()
    first = lines[1].split(",")
    rows, videos = [lines[0]], [f"P01_{30 + i}" for i in range(7)]
    for v in videos:
        (root / "P01" / "rgb_frames").mkdir(parents=True, exist_ok=True)
        (root / "P01" / "rgb_frames" / f"{v}.tar").write_bytes(b"x")
        rows.append(",".join([f"{v}_0", "P01", v, *first[3:]]))
    (ann / "EPIC_100_validation.csv").write_text("\n".join(rows) + "\n")
    assert "(`leap info --all` lists every such video)" in _trouble_row("rgb_frames not extracted from their tar")
    code, out, err = leap_main(monkeypatch, capsys, "info", "--data", str(root), "--no-check-lengths", "--all")
    said = _said(out + err)
    assert code == 0 and "7 videos with rgb_frames not extracted from their tar" in said, said
    assert all(v in said for v in videos), said
