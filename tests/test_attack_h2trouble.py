"""docs/troubleshooting.md and docs/development.md against what leap does (helper h2, session 51).

Each troubleshooting row quotes a message a user searches for: every test here makes that symptom on the synthetic
kitchen (or the smallest input that shows it) and asserts the words the row quotes, so a change of wording fails
here until the row is updated. Rows whose fix does not work as written are strict xfails. The development.md tests
check that what it names (commands, paths, versions, links) is there."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.csv_rows import edit_csv
from tests.kitchens import kitchen_copy
from tests.procs import leap_main
from tests.programs_llm_server import Reply, ScriptedServer, completion, narration_id_of

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
TROUBLE = (DOCS / "troubleshooting.md").read_text()
DEVELOPMENT = (DOCS / "development.md").read_text()


def row(words: str) -> str:
    """The troubleshooting row that quotes ``words`` (it must be there: the message's words a user searches for)."""
    rows = [line for line in TROUBLE.splitlines() if line.startswith("| ") and words in line]
    assert rows, f"no row of docs/troubleshooting.md quotes {words!r}"
    return rows[0]


def flat(text: str) -> str:
    return " ".join(text.split())


# ---- the synthetic kitchen -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kitchen_template(tmp_path_factory) -> Path:
    """4 videos x 4 segments: train P01_01 and P02_01 (cut short on purpose), val P03_01, test P02_02 (~5 s)."""
    out = tmp_path_factory.mktemp("h2trouble") / "kitchen"
    return kitchen_copy(tmp_path_factory, out, "--videos", 4, "--segments", 4)


@pytest.fixture
def kitchen(kitchen_template, tmp_path) -> Path:
    """A private copy of the kitchen, free to break."""
    return Path(shutil.copytree(kitchen_template, tmp_path / "kitchen"))


def leap(monkeypatch, capsys, *argv):
    """``leap ARGV`` in this process (tests.procs.leap_main): (exit status, stdout, stderr), whitespace folded."""
    code, out, err = leap_main(monkeypatch, capsys, *argv)
    return code, flat(out), flat(err)


def extract(monkeypatch, capsys, kitchen: Path, work: Path, *more):
    return leap(monkeypatch, capsys, "extract", "--data", str(kitchen), "--workdir", str(work), "--split", "train",
                *more)


# ---- annotations ------------------------------------------------------------------------------------------------

def test_annotations_folder_not_found_and_the_annotations_option_fixes_it(kitchen, tmp_path, monkeypatch, capsys):
    assert "--annotations DIR" in row("annotations folder not found")
    (tmp_path / "empty").mkdir()
    code, _, err = leap(monkeypatch, capsys, "info", "--data", str(tmp_path / "empty"), "--no-check-lengths")
    assert code == 2 and "annotations folder not found" in err and "--annotations DIR" in err
    code, _, _ = leap(monkeypatch, capsys, "info", "--data", str(tmp_path / "empty"), "--annotations",
                      str(kitchen / "annotations"), "--no-check-lengths")
    assert code == 0


def test_a_missing_class_file_is_file_not_found(kitchen, monkeypatch, capsys):
    row("EPIC_100_verb_classes.csv: file not found")
    (kitchen / "annotations" / "EPIC_100_verb_classes.csv").unlink()
    code, _, err = leap(monkeypatch, capsys, "info", "--data", str(kitchen), "--no-check-lengths")
    assert code == 2 and "EPIC_100_verb_classes.csv: file not found" in err


def test_a_renamed_column_is_missing_columns_with_the_found_name(kitchen, tmp_path, monkeypatch, capsys):
    row("missing column(s): ... (found '...'?)")
    path = kitchen / "annotations" / "EPIC_100_train.csv"
    path.write_text(path.read_text().replace("start_timestamp", "start_time", 1))
    code, _, err = extract(monkeypatch, capsys, kitchen, tmp_path / "w")
    assert code == 2 and "missing column(s): start_timestamp (found 'start_time'?)" in err


def test_a_bad_timestamp_names_row_and_column(kitchen, tmp_path, monkeypatch, capsys):
    assert "HH:MM:SS.ff" in row("column start_timestamp holds")

    def bad(rows):
        rows[1]["start_timestamp"] = "2.5"
    edit_csv(kitchen / "annotations" / "EPIC_100_train.csv", bad)
    code, _, err = extract(monkeypatch, capsys, kitchen, tmp_path / "w")
    assert code == 2 and re.search(r"\[row 3, P\d\d_\d\d_\d+\]: column start_timestamp holds '2.5'", err), err


def test_a_class_id_outside_the_class_file(kitchen, tmp_path, monkeypatch, capsys):
    row("verb_class 999 is not a class of EPIC_100_verb_classes.csv")

    def bad(rows):
        rows[1]["verb_class"] = "999"
    edit_csv(kitchen / "annotations" / "EPIC_100_train.csv", bad)
    code, _, err = extract(monkeypatch, capsys, kitchen, tmp_path / "w")
    assert code == 2 and "verb_class 999 is not a class of EPIC_100_verb_classes.csv" in err


# ---- videos, audio, detections ----------------------------------------------------------------------------------

def test_a_missing_video_is_skipped_by_build_shards_and_comes_back_once_it_is_there(kitchen, tmp_path, monkeypatch,
                                                                                       capsys):
    text = row("no video file or rgb_frames folder")
    assert "segments skipped" in text and "records failed (by cause)" in text and "--strict" in text
    video = kitchen / "P01" / "videos" / "P01_01.MP4"
    aside = tmp_path / "P01_01.MP4"
    video.rename(aside)
    work = tmp_path / "w"
    args = ("build-shards", "--data", str(kitchen), "--workdir", str(work), "--split", "train")
    code, out, err = leap(monkeypatch, capsys, *args)
    said = out + " " + err
    assert code == 0, said
    assert "no video file or rgb_frames folder" in said
    assert f"looked for {kitchen}/P01/videos/P01_01.MP4 and {kitchen}/P01/rgb_frames/P01_01/" in said
    assert re.search(r"\d+ segments? skipped", said) and re.search(r"build-shards: \d+ of 8 records failed "
                                                                       r"\(by cause\)", said)
    code, _, _ = leap(monkeypatch, capsys, *args, "--strict")
    assert code == 3
    aside.rename(video)
    code, out, err = leap(monkeypatch, capsys, *args)
    assert code == 0 and "no video file" not in out + err  # the row's fix: there again, build-shards again


def test_rgb_frames_left_in_their_tar_are_named_by_info(kitchen, tmp_path, monkeypatch, capsys):
    assert "leap info" in row("rgb_frames not extracted from their tar")
    (kitchen / "P01" / "videos" / "P01_01.MP4").unlink()
    frames = kitchen / "P01" / "rgb_frames"
    frames.mkdir()
    one = tmp_path / "frames"
    one.mkdir()
    (one / "frame_0000000001.jpg").write_bytes(b"")
    subprocess.run(["tar", "-cf", str(frames / "P01_01.tar"), "-C", str(one), "."], check=True, capture_output=True)
    code, out, _ = leap(monkeypatch, capsys, "info", "--data", str(kitchen), "--no-check-lengths")
    assert code == 0 and "rgb_frames not extracted from their tar: P01_01" in out and "tar -xf" in out


def test_a_truncated_video_and_one_cut_short_are_named_and_retry_errors_redoes_only_them(kitchen, tmp_path,
                                                                                         monkeypatch, capsys):
    text = row("the video cannot be opened (truncated or not a video file)")
    assert "the file is cut short (download it again)" in text and "--retry-errors" in text
    for v in ("P01_01", "P02_01"):  # (no poses: the camera reads the frames)
        (kitchen / "poses" / f"{v}.json").unlink()
    video = kitchen / "P01" / "videos" / "P01_01.MP4"
    whole = video.read_bytes()
    video.write_bytes(whole[:2000])
    work = tmp_path / "w"
    code, out, err = extract(monkeypatch, capsys, kitchen, work)
    assert code == 0, err
    assert "the video cannot be opened (truncated or not a video file)" in out + err
    assert "the file is cut short (download it again)" in out + err  # P02_01, cut short on purpose
    video.write_bytes(whole)
    code, out, err = extract(monkeypatch, capsys, kitchen, work, "--retry-errors")
    # the segments of both files at fault (cause "video") are redone: P01_01's 4 and P02_01's 3 past its cut
    assert code == 0 and "8 selected, 1 done before, 7 written now" in out + err, out + err
    assert "the video cannot be opened" not in out + err
    records = [json.loads(line) for line in (work / "descriptors" / "train.jsonl").read_text().splitlines()]
    assert {r["components"]["camera"]["status"] for r in records if r["video_id"] == "P01_01"} == {"ok"}


def test_audio_cut_short_is_unavailable_with_its_reason(kitchen, tmp_path, monkeypatch, capsys):
    assert "audio `unavailable`" in row("audio `unavailable` in descriptors")
    wav = kitchen / "P01" / "audio" / "P01_01.wav"
    wav.write_bytes(wav.read_bytes()[: wav.stat().st_size * 3 // 10])
    code, out, err = extract(monkeypatch, capsys, kitchen, tmp_path / "w")
    assert code == 0 and "audio: the audio ends at" in out + err and "the file is cut short" in out + err


def test_a_hand_object_file_that_is_no_pickle(kitchen, tmp_path, monkeypatch, capsys):
    row("not a hand-object detections pickle")
    (kitchen / "hand-objects" / "P01" / "P01_01.pkl").write_text("garbage\n")
    code, out, err = extract(monkeypatch, capsys, kitchen, tmp_path / "w")
    assert "not a hand-object detections pickle" in out + err and "--retry-errors" in out + err


def test_weights_of_another_architecture_list_missing_and_unexpected_keys():
    import torch

    from leap_cli.errors import LeapError
    from leap_cli.extract.weights import load_exact

    row("missing keys ... unexpected keys")
    with pytest.raises(LeapError) as e:
        load_exact(torch.nn.Linear(2, 2), {"foo.weight": torch.zeros(2)}, "x.pt", "detector")
    assert "missing keys: bias, weight" in str(e.value) and "unexpected keys: foo.weight" in str(e.value)


# ---- settings, locks, config ------------------------------------------------------------------------------------

def test_settings_kept_beside_outputs_refuse_a_resume_with_others(kitchen, tmp_path, monkeypatch, capsys):
    row("was started with other settings (--hand-threshold: 0.5 -> 0.7)")
    row("the folder holds shards built from other inputs or settings")
    work = tmp_path / "w"
    assert extract(monkeypatch, capsys, kitchen, work)[0] == 0
    code, _, err = extract(monkeypatch, capsys, kitchen, work, "--hand-threshold", "0.7")
    assert code == 2 and "was started with other settings (--hand-threshold: 0.5 -> 0.7)" in err
    args = ("build-shards", "--data", str(kitchen), "--workdir", str(work), "--split", "train")
    assert leap(monkeypatch, capsys, *args)[0] == 0
    code, _, err = leap(monkeypatch, capsys, *args, "--frames", "8")
    assert code == 2 and "the folder holds shards built from other inputs or settings" in err
    assert "--force" in err


def test_a_second_writer_is_refused_naming_the_process(kitchen, tmp_path, monkeypatch, capsys):
    import os

    from leap_cli.io import OutputLock

    row("another leap process is writing this file")
    out = tmp_path / "w" / "descriptors" / "train.jsonl"
    with OutputLock(out):
        code, _, err = extract(monkeypatch, capsys, kitchen, tmp_path / "w")
    assert code == 2 and f"another leap process is writing this file (process {os.getpid()} on" in err


def test_an_unknown_config_key_names_the_set_and_the_valid_keys(tmp_path, monkeypatch, capsys):
    row("unknown config key 'optim.lrr'")
    code, _, err = leap(monkeypatch, capsys, "train", "--workdir", str(tmp_path), "-c", "tiny-synthetic",
                        "--set", "optim.lrr=1")
    assert code == 2 and "--set optim.lrr=1: unknown config key 'optim.lrr'" in err and "accum_steps" in err


@pytest.mark.parametrize("key", ["data.batch_size", "optim.accum_steps", "model.grad_checkpointing"])
def test_the_out_of_memory_rows_keys_are_config_keys(tmp_path, monkeypatch, capsys, key):
    """The CUDA out-of-memory row (not reproducible without a GPU) names three keys: each is one."""
    assert key in row("CUDA out of memory")
    section, name = key.split(".")
    code, _, err = leap(monkeypatch, capsys, "train", "--workdir", str(tmp_path), "-c", "tiny-synthetic",
                        "--set", f"{section}.zzz=1")
    assert code == 2 and re.search(rf"valid keys in {section}: [^)]*\b{name}\b", err), err


def test_submit_names_test_segments_without_scores(kitchen):
    from leap_cli.epic.annotations import Annotations
    from leap_cli.errors import LeapError
    from leap_cli.submit import _check_ids, expected_narration_ids

    row("narration ids of EPIC_100_test_timestamps.csv have no scores")
    ids = expected_narration_ids(Annotations(kitchen / "annotations"))
    with pytest.raises(LeapError, match=r"1 narration id of EPIC_100_test_timestamps.csv has no scores"):
        _check_ids(ids[1:], ids, "scores.pt")


# ---- generate-programs and the endpoint -------------------------------------------------------------------------

@pytest.fixture
def gen(kitchen, tmp_path, monkeypatch, capsys):
    """``gen(server or URL, *more)``: generate-programs --backend openai on the kitchen's val split (4 segments,
    narration-only), one attempt per request; (exit status, stdout, stderr, the output's records)."""
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    out = tmp_path / "programs" / "val.jsonl"

    def run(server, *more):
        url = server if isinstance(server, str) else server.base_url
        code, o, e = leap(monkeypatch, capsys, "generate-programs", "--data", str(kitchen), "--workdir",
                          str(tmp_path), "--split", "val", "--backend", "openai", "--base-url", url, "--max-retries",
                          "0", "--backoff", "0", *more)
        records = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
        return code, o, e, records
    return run


@pytest.fixture(scope="module")
def programs(kitchen_template, tmp_path_factory) -> dict:
    """Valid programs of the kitchen's val segments (the offline backend's), by narration id."""
    work = tmp_path_factory.mktemp("offline")
    subprocess.run([sys.executable, "-m", "leap_cli", "generate-programs", "--data", str(kitchen_template),
                    "--workdir", str(work), "--split", "val"], check=True, capture_output=True, cwd=REPO)
    lines = (work / "programs" / "val.jsonl").read_text().splitlines()
    return {r["narration_id"]: r["program"] for r in map(json.loads, lines)}


def raw(finish_reason="stop", content="{", **message) -> Reply:
    c = completion(content)
    c["choices"][0]["finish_reason"] = finish_reason
    c["choices"][0]["message"].update(message)
    return Reply(raw=json.dumps(c))


QUOTA = json.dumps({"error": {"message": "You exceeded your current quota", "type": "insufficient_quota",
                              "code": "insufficient_quota"}})


@pytest.mark.parametrize("reply, words", [
    (Reply(status=401), "the endpoint refused the API key (HTTP 401)"),
    (Reply(status=404), "HTTP 404"),
    (Reply(status=429, raw=QUOTA), "the account has no quota left (HTTP 429"),
    (Reply(status=502), "every request so far failed with HTTP 502"),
    (Reply(status=503, raw=json.dumps({"error": {"message": "Model is loading"}})),
     "the server is still loading the model"),
], ids=["401", "404", "quota", "502", "loading"])
def test_an_endpoint_that_refuses_every_request_stops_the_stage(gen, reply, words):
    row(words if words != "HTTP 404" else "an unknown model (HTTP 404)")
    with ScriptedServer(lambda body, n: reply) as server:
        code, _, err, records = gen(server)
    # (a segment already asked may have its record, failed: none of a segment it could not ask, none valid)
    assert code == 2 and words in err and {r["status"] for r in records} <= {"failed"} and len(records) < 4
    if words == "HTTP 404":
        assert "--model" in err and "--base-url" in err


def test_no_server_is_cannot_connect(gen):
    row("cannot connect to HOST:PORT: is the server running?")
    code, _, err, records = gen("http://127.0.0.1:9/v1")
    assert code == 2 and "cannot connect to 127.0.0.1:9" in err and "is the server running?" in err
    assert {r["status"] for r in records} <= {"failed"} and len(records) < 4  # none for segments it could not ask


def test_a_reply_cut_at_the_token_limit_and_the_rows_fix(gen, programs):
    row("the reply stopped at the token limit (--max-tokens 2000; ...)")
    cut = {"on": True}

    def script(body, n):
        return raw("length", '{"steps": [') if cut["on"] else Reply(json.dumps(programs[narration_id_of(body)]))
    with ScriptedServer(script) as server:
        code, _, _, records = gen(server)
        assert code == 3 and {r["status"] for r in records} == {"invalid"}
        assert "the reply stopped at the token limit (--max-tokens 2000;" in records[0]["errors"][0]["message"]
        cut["on"] = False
        code, _, err, records = gen(server, "--max-tokens", "4000", "--retry-invalid")
    assert code == 0 and {r["status"] for r in records} == {"valid"}, err


@pytest.mark.parametrize("reply, words", [
    (raw(content=None, reasoning_content="x" * 500),
     "the reply's content is empty; the server put 500 characters in reasoning_content"),
    (Reply("<think>hmm</think>"), "the reply is only the model's thinking"),
], ids=["reasoning_content", "think"])
def test_a_thinking_model_that_never_answers(gen, reply, words):
    row("the reply is only the model's thinking")
    with ScriptedServer(lambda body, n: reply) as server:
        code, _, _, records = gen(server)
    assert code == 3 and {r["status"] for r in records} == {"invalid"}
    assert words in records[0]["errors"][0]["message"]


def test_turning_thinking_off_is_a_setting_of_the_output_as_the_row_says(gen, programs):
    """Was wrong (the docs): the row said to turn thinking off, then --retry-invalid; --extra-body is a setting of
    the output, and that resume is refused: the row now says --force (or another --out), and raising --max-tokens."""
    said = row("the reply is only the model's thinking")
    assert "--force" in said and "setting of the output" in said and "--max-tokens" in said

    def script(body, n):
        if (body.get("chat_template_kwargs") or {}).get("enable_thinking") is False:
            return Reply(json.dumps(programs[narration_id_of(body)]))
        return Reply("<think>hmm</think>")
    off = ["--extra-body", '{"chat_template_kwargs": {"enable_thinking": false}}']
    with ScriptedServer(script) as server:
        assert gen(server)[0] == 3
        code, _, err, _ = gen(server, *off, "--retry-invalid")
        assert code == 2 and "--extra-body" in " ".join(err.split())
        code, _, err, records = gen(server, *off, "--force")
    assert code == 0 and {r["status"] for r in records} == {"valid"}, err


def test_max_cost_stops_and_a_higher_cap_continues(gen, programs):
    row("`--max-cost 100 reached` in the generate-programs summary")
    with ScriptedServer(lambda body, n: Reply(json.dumps(programs[narration_id_of(body)]))) as server:
        code, out, err, records = gen(server, "--max-cost", "0.0005", "--concurrency", "1")
        assert code == 0 and "--max-cost 0.0005 reached" in out + err and len(records) == 2
        code, out, err, records = gen(server, "--max-cost", "1", "--concurrency", "1")
        assert code == 0 and len(records) == 4 and len(server.requests) == 4  # continued, nothing asked twice


def test_rate_limits_are_answered_with_a_concurrency_suggestion(gen, programs):
    assert "--concurrency" in row("429 / timeouts from the LLM")
    with ScriptedServer(lambda body, n: Reply(status=429, headers={"Retry-After": "0"}) if n == 0
                        else Reply(json.dumps(programs[narration_id_of(body)]))) as server:
        code, out, err, records = gen(server, "--concurrency", "4", "--max-retries", "3")
    assert code == 0 and len(records) == 4
    assert re.search(r"lower --concurrency \(e\.g\. --concurrency \d\)", out + err), out + err


def test_generate_programs_without_class_files(tmp_path, monkeypatch, capsys):
    row("the EPIC class files are needed to resolve verbs and objects")
    code, _, err = leap(monkeypatch, capsys, "generate-programs", "--workdir", str(tmp_path), "--split", "train")
    assert code == 2 and "the EPIC class files are needed to resolve verbs and objects" in err
    assert "--annotations DIR" in err


def test_build_shards_words_for_a_video_cut_short_are_in_a_row(kitchen, tmp_path, monkeypatch, capsys):
    """Was missing: the row quoted only extract's words for a video cut short."""
    code, out, err = leap(monkeypatch, capsys, "build-shards", "--data", str(kitchen), "--workdir",
                          str(tmp_path / "w"), "--split", "train")
    cause = re.search(r"(frames requested past the end of the video): \d+ segments of 1 video \(P02_01\)", out + err)
    assert code == 0 and cause, out + err
    row(cause.group(1))


# ---- the pages themselves ---------------------------------------------------------------------------------------

def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return s.replace(" ", "-")


@pytest.mark.parametrize("page", ["troubleshooting.md", "development.md"])
def test_every_link_of_the_page_reaches_its_file_and_heading(page):
    text = (DOCS / page).read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#([^)\s]+))?\)", text)
    assert links
    for target, anchor in links:
        path = (DOCS / target).resolve()
        assert path.is_file(), f"{page} links {target}, which is not there"
        if anchor:
            headings = [slug(h) for h in re.findall(r"^#+ (.+)$", path.read_text(), re.M)]
            assert anchor in headings, f"{page} links {target}#{anchor}: no such heading"


def test_readme_links_both_pages():
    readme = (REPO / "README.md").read_text()
    assert "(docs/troubleshooting.md)" in readme and "(docs/development.md" in readme


def test_the_commands_and_paths_development_md_names_are_there():
    make = (REPO / "Makefile").read_text()
    assert re.search(r"^test:.*\n\t.*-m pytest", make, re.M) and re.search(r"^bench:.*\n\t.*benchmarks/bench_\*\.py",
                                                                           make, re.M)
    ci = (REPO / ".ci" / "run").read_text()
    assert "chromium" in ci and "make test" in ci
    for bench in ("bench_extract.py", "bench_media.py", "bench_naming.py"):
        assert bench in DEVELOPMENT and "--no-write" in (REPO / "benchmarks" / bench).read_text()
    gpu = (REPO / "benchmarks" / "gpu_check.sh").read_text()
    assert all(w in gpu for w in ("prepare", "check", "DEVICE=cpu"))
    assert (REPO / "tests" / "data" / "epic100" / "ATTRIBUTION.md").is_file()
    assert any((REPO / "leap_cli" / "resources" / "epic100_subset").iterdir())
    assert re.search(r"^VERSIONS\b", (REPO / "leap_cli" / "extract" / "base.py").read_text(), re.M)


def test_the_layout_names_what_the_package_holds():
    block = DEVELOPMENT.split("```")[1]
    named = {name.strip() for line in block.strip().splitlines()
             for name in re.split(r"\s{2,}", line.strip())[0].split(",")}
    for name in named:
        if name.count("/") > 1 or name in ("leap_cli/", "benchmarks/", "tests/"):  # (a path from the root)
            assert (REPO / name).exists(), name
            continue
        hits = list((REPO / "leap_cli").rglob(name.rstrip("/")))
        assert hits, f"development.md's layout names {name}: not in leap_cli/"
    packages = {p.name + "/" for p in (REPO / "leap_cli").iterdir() if (p / "__init__.py").is_file()}
    named |= {name.rstrip("/").rsplit("/", 1)[-1] + "/" for name in named if name.endswith("/")}
    assert packages - named == set(), f"packages the layout leaves out: {packages - named}"


def test_the_lowest_releases_named_are_pyprojects_lower_bounds():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    bounds = {re.split(r"[<>=\[]", d)[0].strip(): re.search(r">=([\d.]+)", d).group(1)
              for d in deps["dependencies"] + deps["optional-dependencies"]["naming"] if ">=" in d}
    said = re.search(r"At the lowest\s+releases `pyproject.toml` admits \(([^)]*)\)", DEVELOPMENT).group(1)
    for name, words in [("torch", "torch"), ("typer", "typer"), ("rich", "rich"), ("numpy", "NumPy"),
                        ("scipy", "SciPy"), ("av", "PyAV"), ("opencv-python-headless", "OpenCV"),
                        ("open_clip_torch", "open_clip")]:
        named = re.search(rf"{words}\s+([\d.]+)", said).group(1)
        assert named.split(".")[:2] == bounds[name].split(".")[:2], (name, named, bounds[name])
    assert re.search(r"torch==2\.14\.1", (REPO / "constraints.txt").read_text()) and "torch 2.14.1" in DEVELOPMENT


def test_constraints_pin_every_dependency_make_installs():
    """Was wrong: constraints.txt pinned torch, torchvision and open_clip only; the rest installed at the newest."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = {line.split("==")[0].strip().lower() for line in (REPO / "constraints.txt").read_text().splitlines()
              if "==" in line}
    names = {re.split(r"[<>=\[;]", d)[0].strip().lower() for d in deps}
    assert names <= pinned, f"not pinned: {sorted(names - pinned)}"
