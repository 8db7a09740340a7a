"""Attack on this session's changes (42324ce..HEAD): validate-programs' default report for --shard parts, empty
rgb_frames folders beside their tar, evaluate --scores with --run, submit's action keys, the API key read as a
header value, the notes of a run's own failed/invalid records, the shard reader's on_error catch, demo levels.

Tests whose docstring says "Was wrong" were strict xfails, bugs found and fixed."""

from __future__ import annotations

import json
import re
import shutil
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leap_cli.cli import app
from tests.program_helpers import excerpt_annotations


def _invoke(*args, env=None):
    res = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250", "NO_COLOR": "1", **(env or {})})
    return res.exit_code, " ".join(res.output.split()), res


# ------------------------------------------------------------------------ validate-programs: --shard parts ---

@pytest.fixture(scope="module")
def val_programs(tmp_path_factory):
    """A work directory with 6 validation segments, their offline programs and the whole split's report."""
    from leap_cli.programs.generate import GenerateConfig, generate_programs

    work = tmp_path_factory.mktemp("a59-validate")
    excerpt_annotations(work, rows=6)
    generate_programs(GenerateConfig(workdir=work, split="val"))
    code, said, _ = _invoke("validate-programs", "--workdir", work, "--split", "val")
    assert code == 0, said
    rows = [json.loads(x) for x in (work / "programs" / "val.jsonl").read_text().splitlines()]
    return work, rows


def _write(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_some_parts_from_two_folders_never_replace_the_split_report(val_programs, tmp_path):
    """Was wrong: commands/programs.py _default_report: --shard parts in different folders (copied back from two nodes)
    write WORKDIR/programs/SPLIT.report.json, replacing the whole split's report with the coverage of 2 of 4 parts."""
    work, rows = val_programs
    split_report = work / "programs" / "val.report.json"
    whole = split_report.read_bytes()
    a = _write(tmp_path / "node0" / "val.shard0of4.jsonl", rows[0::4])
    b = _write(tmp_path / "node2" / "val.shard2of4.jsonl", rows[2::4])
    try:
        code, said, _ = _invoke("validate-programs", a, b, "--workdir", work)
        assert code == 0, said
        assert split_report.read_bytes() == whole, "the split's report now describes parts 0/4 and 2/4 only"
    finally:
        split_report.write_bytes(whole)


def test_some_parts_of_one_folder_through_a_linked_path_get_the_report_named_by_them(val_programs, tmp_path):
    """One part named through a symbolic link to the folder: one folder, so the report is named by the parts,
    beside the first file given, and the split's report is left alone."""
    work, rows = val_programs
    folder = tmp_path / "parts"
    a = _write(folder / "val.shard0of4.jsonl", rows[0::4])
    _write(folder / "val.shard2of4.jsonl", rows[2::4])
    (tmp_path / "link").symlink_to(folder)
    whole = (work / "programs" / "val.report.json").read_bytes()
    code, said, _ = _invoke("validate-programs", a, tmp_path / "link" / "val.shard2of4.jsonl",
                            "--workdir", work)
    assert code == 0, said
    report = json.loads((folder / "val.shard0+2of4.report.json").read_text())
    assert report["records"] == len(rows[0::4]) + len(rows[2::4])
    assert (work / "programs" / "val.report.json").read_bytes() == whole


# ------------------------------------------------------------------- rgb_frames: empty folder beside its tar ---

@pytest.fixture(scope="module")
def info_of_tarred_kitchen(tmp_path_factory):
    """make_root's epic kitchen (train P01_01, P01_02; val P01_03): P01_03's frames only in its tar, the untar
    command's mkdir done; P01_02's folder emptied (no tar). `leap info` with its length check."""
    from tests.test_shards import make_root

    root = make_root(tmp_path_factory.mktemp("a59-info") / "k", epic=True)
    folder = root / "P01" / "rgb_frames" / "P01_03"
    with tarfile.open(folder.with_suffix(".tar"), "w") as tar:
        tar.add(folder, arcname=".")
    shutil.rmtree(folder)
    folder.mkdir()
    empty = root / "P01" / "rgb_frames" / "P01_02"
    shutil.rmtree(empty)
    empty.mkdir()
    res = CliRunner().invoke(app, ["info", "--data", str(root)], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert res.exit_code == 0, res.output
    return root, res.output


def test_info_lists_a_video_left_in_its_tar_apart(info_of_tarred_kitchen):
    _, out = info_of_tarred_kitchen
    assert "val: 1 video with rgb_frames not extracted from their tar: P01_03" in out


def test_info_length_check_leaves_out_a_video_still_in_its_tar(info_of_tarred_kitchen):
    """Was wrong: epic/info.py length_report: a video whose frames are still in their tar (empty folder beside it) is
    probed as an rgb_frames folder and listed as 'decodes nothing (the frames folder holds no frame_*.jpg files)'."""
    _, out = info_of_tarred_kitchen
    assert not [line for line in out.splitlines() if line.strip().startswith("P01_03 (rgb_frames)")], out


def test_info_counts_an_empty_frames_folder_as_no_frames(info_of_tarred_kitchen):
    """Was wrong: epic/info.py dataset_info: an empty rgb_frames/VIDEO/ with no tar counts as 'videos with rgb_frames'
    and not missing; README says an empty one counts as none."""
    _, out = info_of_tarred_kitchen
    row = next(line for line in out.splitlines() if "videos with rgb_frames " in line)
    train = [c.strip() for c in row.split("│") if c.strip()][1]
    assert train == "1", row  # P01_01 only: P01_02's folder holds no frame


# ------------------------------------------------------------------------------ evaluate --scores with --run ---

def _annotations(root: Path) -> None:
    d = root / "kitchen" / "annotations"
    d.mkdir(parents=True)
    (d / "EPIC_100_verb_classes.csv").write_text(
        "id,key,instances,category\n0,take,\"['take']\",retrieve\n2,wash,\"['wash']\",clean\n5,cut,\"['cut']\",cut\n")
    (d / "EPIC_100_noun_classes.csv").write_text(
        "id,key,instances,category\n0,tap,\"['tap']\",appliances\n3,plate,\"['plate']\",crockery\n"
        "7,knife,\"['knife']\",cutlery\n")
    head = ("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,"
            "stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes")
    val = [("P01_01_0", "take", 0, "plate", 3), ("P01_01_1", "wash", 2, "plate", 3),
           ("P02_01_0", "cut", 5, "knife", 7), ("P02_01_1", "take", 0, "tap", 0)]
    rows = [head] + [f"{nid},{nid[:3]},{nid[:6]},00:00:0{i}.00,00:00:0{i}.00,00:00:0{i}.50,{i * 60 + 1},{i * 60 + 30},"
                     f"{v} {n},{v},{vc},{n},{nc},['{n}'],[{nc}]" for i, (nid, v, vc, n, nc) in enumerate(val)]
    (d / "EPIC_100_validation.csv").write_text("\n".join(rows) + "\n")


def test_the_runs_own_scores_scored_as_the_other_task_keep_the_runs_metrics(tmp_path):
    """Was wrong: commands/evaluate.py: the run's own (recognition) scores.pt rescored with --run R --task anticipation
    replaces runs/R/eval/val/metrics.json with anticipation metrics (without --run:
    scores.anticipation.metrics.json)."""
    import torch

    from leap_cli.evaluate.scores import save_scores

    _annotations(tmp_path)
    own = tmp_path / "runs" / "R" / "eval" / "val"
    own.mkdir(parents=True)
    verb, noun = torch.full((4, 6), -1.0), torch.full((4, 8), -1.0)
    for i, (v, n) in enumerate([(0, 3), (2, 0), (0, 7), (2, 7)]):
        verb[i, v], noun[i, n] = 3.0, 3.0
    save_scores(own / "scores.pt", ["P01_01_0", "P01_01_1", "P02_01_0", "P02_01_1"], verb, noun,
                meta={"split": "val", "task": "recognition"})
    base = ["evaluate", "--split", "val", "--scores", own / "scores.pt", "--run", "R", "--workdir", tmp_path]
    code, said, _ = _invoke(*base)
    assert code == 0 and json.loads((own / "metrics.json").read_text())["task"] == "recognition", said
    code, said, _ = _invoke(*base, "--task", "anticipation")
    assert code != 0 or json.loads((own / "metrics.json").read_text())["task"] == "recognition", said


# ------------------------------------------------------------------------------------------ action keys ---

def test_evaluate_scores_refuses_the_action_keys_submit_check_refuses(tmp_path):
    """Was wrong: evaluate/scores.py _action_pair: evaluate --scores of a challenge JSON still takes keys through int()
    ('01,5' beside '1,5': one action with two keys), which submit --check now refuses."""
    import torch

    from leap_cli import submit as sub
    from leap_cli.errors import LeapError
    from leap_cli.evaluate.scores import load_scores

    g = torch.Generator().manual_seed(0)
    scores = {"narration_id": ["a", "b"], "verb_output": torch.randn(2, 97, generator=g),
              "noun_output": torch.randn(2, 300, generator=g)}
    doc = sub.make_submission(scores, "anticipation", sls_pt=1, sls_tl=1, sls_td=1, with_actions=True)
    acts = doc["results"]["b"]["action"]
    acts["01,5"] = acts.pop(next(iter(acts)))
    with pytest.raises(LeapError, match="action keys"):
        sub.check_submission(doc, ["a", "b"], 97, 300)
    (tmp_path / "s.json").write_text(json.dumps(doc))
    with pytest.raises(LeapError):
        load_scores(tmp_path / "s.json")


def test_check_takes_the_action_keys_at_the_edges_of_the_class_ids():
    import torch

    from leap_cli import submit as sub

    g = torch.Generator().manual_seed(1)
    scores = {"narration_id": ["a"], "verb_output": torch.randn(1, 97, generator=g),
              "noun_output": torch.randn(1, 300, generator=g)}
    doc = sub.make_submission(scores, "anticipation", sls_pt=1, sls_tl=1, sls_td=1, with_actions=True)
    acts = doc["results"]["a"]["action"]
    it = iter(list(acts))
    acts["0,0"], acts["96,299"] = acts.pop(next(it)), acts.pop(next(it))
    sub.check_submission(doc, ["a"], 97, 300)  # no refusal
    acts["1,5\n"] = acts.pop("0,0")
    with pytest.raises(Exception, match="action keys"):
        sub.check_submission(doc, ["a"], 97, 300)


# ----------------------------------------------------------------------- generate-programs: key, notes ---

KEY = "A59_KEY"


class _Server:
    """An OpenAI-compatible server answering each clip with its offline program; ``bad``: clips whose first reply
    is a program missing required fields and whose later requests (the repair turn) get HTTP 500."""

    def __init__(self, good: dict, bad=()):
        self.good, self.bad, self.calls = good, set(bad), {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                found = [re.match(r"Clip (\S+):", m["content"]) for m in body["messages"]
                         if m.get("role") == "user" and isinstance(m.get("content"), str)]
                nid = [m.group(1) for m in found if m][-1]
                n = outer.calls[nid] = outer.calls.get(nid, 0) + 1
                if nid in outer.bad and n > 1:
                    status, payload = 500, {"error": {"message": "scripted 500"}}
                else:
                    program = {"action": {"narration": "x"}, "steps": []} if nid in outer.bad else outer.good[nid]
                    status, payload = 200, {
                        "id": "c", "object": "chat.completion", "created": 1, "model": "local",
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": json.dumps(program)}}],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


@pytest.fixture(scope="module")
def llm_runs(tmp_path_factory):
    """generate-programs --backend openai on 6 segments, one of them invalid with its repair turn failed (HTTP 500);
    then, nothing pending, reruns without the key, with the key holding a zero-width space, with OPENAI_ORG_ID
    holding one, and with a good key (its notes)."""
    from leap_cli.programs.generate import GenerateConfig, generate_programs

    work = tmp_path_factory.mktemp("a59-llm")
    excerpt_annotations(work, rows=6)
    generate_programs(GenerateConfig(workdir=work, split="val", out=work / "offline.jsonl"))
    good = {r["narration_id"]: r["program"] for r in map(json.loads, (work / "offline.jsonl").read_text().splitlines())}
    bad = sorted(good)[1]
    server = _Server(good, bad=[bad])
    args = ["generate-programs", "--workdir", work, "--split", "val", "--backend", "openai", "--model", "local",
            "--base-url", server.url, "--api-key-env", KEY, "--timeout", "2", "--max-retries", "1",
            "--backoff", "0.01"]
    clean = {"OPENAI_ORG_ID": None, "OPENAI_PROJECT_ID": None, "OPENAI_BASE_URL": None}
    try:
        runs = {"first": _invoke(*args, env={**clean, KEY: "sk-a59"}),
                "no key": _invoke(*args, env={**clean, KEY: None}),
                "zwsp key": _invoke(*args, env={**clean, KEY: "sk-a\u200b59"}),
                "zwsp org": _invoke(*args, env={**clean, KEY: "sk-a59", "OPENAI_ORG_ID": "org-\u200b1"}),
                "again": _invoke(*args, env={**clean, KEY: "sk-a59"})}
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
    recs = {r["narration_id"]: r for r in map(json.loads, (work / "programs" / "val.jsonl").read_text().splitlines())}
    return runs, recs, bad


def test_the_scripted_run_made_one_invalid_record_with_its_repair_turn_failed(llm_runs):
    runs, recs, bad = llm_runs
    code, said, _ = runs["first"]
    assert code == 0, said
    assert recs[bad]["status"] == "invalid" and recs[bad]["provenance"].get("repair_failed"), recs[bad]
    assert sum(r["status"] == "valid" for r in recs.values()) == 5
    # nothing pending and no key: resumed, as docs/programs.md says (a GPU node's job goes on)
    assert runs["no key"][0] == 0, runs["no key"][1]
    # the next plain run names --retry-errors for it: the repair turn only, the first reply from the cache
    assert re.search(r"invalid with a repair turn to ask .*--retry-errors", runs["again"][1]), runs["again"][1]


def test_this_runs_note_for_a_failed_repair_turn_names_retry_errors(llm_runs):
    """Was wrong: commands/programs.py (this run's notes, now not_valid_notes): a record of this run whose repair
    turn failed was told '--retry-invalid' (first reply paid again); the next run's note rightly names
    --retry-errors, which sends the repair turn only."""
    runs, _, _ = llm_runs
    said = runs["first"][1]
    notes = said[said.find("note:"):]
    assert "note:" in said and "--retry-errors" in notes, said[-800:]


@pytest.mark.parametrize("run", ["zwsp key", "zwsp org"])
def test_a_run_with_nothing_pending_needs_no_usable_key(llm_runs, run):
    """Was wrong: programs/backends.py header_value: a key (or OPENAI_ORG_ID) holding a zero-width space stops a run
    that has nothing pending with exit 2, where an unset key lets it resume all (docs: such a run needs no key)."""
    runs, _, _ = llm_runs
    code, said, res = runs[run]
    assert code == 0 and "resumed" in said, (said[-300:], repr(res.exception))


def test_header_value_trims_blanks_and_names_a_byte_order_mark(monkeypatch):
    from leap_cli.errors import LeapError
    from leap_cli.programs.backends import header_value

    monkeypatch.setenv("A59_HV", "\u00a0 sk-a b\r\n")  # (a no-break space before, a Windows line end after)
    assert header_value("A59_HV") == "sk-a b"
    monkeypatch.setenv("A59_HV", "\ufeffsk-ab")  # a file saved by Notepad with its BOM
    with pytest.raises(LeapError, match=r"A59_HV .*U\+FEFF, character 1 of 6"):
        header_value("A59_HV")
    monkeypatch.delenv("A59_HV")
    assert header_value("A59_HV") is None


# ------------------------------------------------------------------------------ shard reader: on_error ---

def test_a_sample_whose_json_is_not_an_object_is_skipped_with_on_error_skip():
    """Was wrong: shards/dataset.py __iter__: a sample whose JSON parses but is not an object (null, a list) raises
    AttributeError from make_sample, which on_error='skip' does not catch: the epoch stops instead of skipping it."""
    import cv2
    import numpy as np

    from leap_cli.shards.dataset import ShardDataset

    jpg = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes()
    good = json.dumps({"narration_id": "ok", "verb_class": 1, "noun_class": 2, "has_program": True,
                       "targets": {"steps": []}}).encode()
    ds = object.__new__(ShardDataset)
    ds.__dict__.update(img_size=16, num_frames=2, train=False, temporal_views=1, spatial_views=1, max_steps=2,
                       num_conditions=2, step_width=3, context=0, seed=0, rank=0, _epoch=0, on_error="skip",
                       folder=Path("shards"), stats={"samples": 0, "padding": 0, "errors": 0})
    items = [(0, {"json": b"null", "f0.jpg": jpg}, False, "s.tar", "k0"),
             (1, {"json": good, "f0.jpg": jpg}, False, "s.tar", "k1")]
    ds.consumer_plan = lambda wid, nw: []
    ds._raw = lambda plan: iter(items)
    got = [s["narration_id"] for s in ds]
    assert got == ["ok"] and ds.stats["errors"] == 1


# --------------------------------------------------------------------------------------- demo levels ---

def test_demo_levels_by_the_folders_data_train_names():
    from leap_cli.demo import default_config, submission_levels
    from leap_cli.train.config import load_config

    def td(*overrides):
        return submission_levels(load_config(default_config(), list(overrides)))

    assert td() == {"--sls-pt": 0, "--sls-tl": 4, "--sls-td": 3}
    assert td("data.train=[w/shards/train, w/shards/validation/]")["--sls-td"] == 4
    assert td("data.train=w/shards/val")["--sls-td"] == 3
    assert td("model.program_heads=false")["--sls-tl"] == 3
