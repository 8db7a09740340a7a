"""Attack on session 53's changes (helper s53attack): failures inside a 200 (choices[0].error, a broken-off
finish_reason) live and in a Batch output, a repair turn whose request failed (provenance.repair_failed and
--retry-errors), submit's check before the zip takes --out's place and --check's compression methods, the
DataLoader start that kills its own workers, and the anticipation forward's single decode."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import zipfile

import pytest

from leap_cli.errors import LeapError
from leap_cli.io import read_jsonl
from leap_cli.programs.generate import GenerateConfig, generate_programs
from tests.kitchens import kitchen_copy
from tests.program_helpers import excerpt_annotations, excerpt_programs, server_config
from tests.programs_llm_server import Reply, ScriptedServer, completion, narration_id_of
from tests.test_eval_submit import ann_dir  # noqa: F401 (the fixture)

ROWS = 3


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    excerpt_annotations(tmp_path, rows=ROWS)
    monkeypatch.setenv("LEAP_TEST_KEY", "sk-test-s53attack")
    return tmp_path


@pytest.fixture(scope="module")
def good():
    return excerpt_programs(ROWS)


def config(workdir, server, **kw):
    return server_config(workdir, server, **{"concurrency": 1, **kw})


def records(workdir, name="val.jsonl") -> dict:
    return {r["narration_id"]: r for r in read_jsonl(workdir / "programs" / name)}


def good_reply(good, body) -> Reply:
    return Reply(json.dumps(good[narration_id_of(body)]))


def broken_off(good, body, finish="error", error=None, content=None) -> Reply:
    """A 200 whose first choice says the generation failed; its content the whole valid program unless given."""
    text = json.dumps(good[narration_id_of(body)]) if content is None else content
    data = completion(text, body.get("model", "m"))
    data["choices"][0]["finish_reason"] = finish
    if error is not None:
        data["choices"][0]["error"] = error
    return Reply(raw=json.dumps(data))


# ---- a failure inside a 200 --------------------------------------------------------------------------------------

@pytest.mark.parametrize("finish", ["error", "insufficient_system_resource", "abort"])
def test_a_broken_off_reply_is_failed_even_with_a_whole_program_and_retry_errors_redoes_it(workdir, good, finish):
    """finish_reason error/abort with a complete, valid program in content: the record is failed (the content of
    a generation the server broke off is not trusted), not cached (a rerun asks again), and --retry-errors redoes it."""
    target = sorted(good)[0]

    def script(body, n):
        if narration_id_of(body) == target and n == 0:
            return broken_off(good, body, finish)
        return good_reply(good, body)

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server))
        assert len(server.requests) == ROWS  # no repair turn bought for it
    assert s.statuses == {"valid": ROWS - 1, "failed": 1}
    rec = records(workdir)[target]
    assert rec["program"] is None and f"finish_reason {finish!r}" in rec["errors"][-1]["message"]
    with ScriptedServer(lambda body, n: good_reply(good, body)) as server:
        s = generate_programs(config(workdir, server, retry_failed=True))
        assert server.calls_for(target) == 1 and len(server.requests) == 1  # asked again: nothing was cached
    assert records(workdir)[target]["status"] == "valid"


@pytest.mark.parametrize("error,said", [("provider overloaded", "provider overloaded"),
                                        ({"message": "Upstream 502"}, "Upstream 502")])
def test_an_error_string_or_object_in_the_first_choice_is_said(workdir, good, error, said):
    target = sorted(good)[0]

    def script(body, n):
        if narration_id_of(body) == target:
            return broken_off(good, body, "stop", error=error, content="")
        return good_reply(good, body)

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, max_retries=0))
    assert s.statuses == {"valid": ROWS - 1, "failed": 1}
    assert said in records(workdir)[target]["errors"][-1]["message"]


@pytest.mark.parametrize("error", [None, {}, "", []])
def test_an_empty_or_null_error_in_a_finished_choice_is_a_reply(workdir, good, error):
    """Some servers send "error": null (or {}) in every choice: the reply is the program, not a failure."""
    def script(body, n):
        data = completion(json.dumps(good[narration_id_of(body)]), body.get("model", "m"))
        data["choices"][0]["error"] = error
        return Reply(raw=json.dumps(data))

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server))
    assert s.statuses == {"valid": ROWS}


def test_a_200_error_refusing_a_hand_chosen_json_schema_stops_naming_response_format(workdir, good):
    refusal = json.dumps({"error": {"message": "response_format json_schema is not supported by this provider"}})

    def script(body, n):
        return Reply(raw=refusal) if body.get("response_format", {}).get("type") == "json_schema" \
            else good_reply(good, body)

    with ScriptedServer(script) as server:
        with pytest.raises(LeapError) as e:
            generate_programs(config(workdir, server, response_format="json_schema"))
        assert all(b["response_format"]["type"] == "json_schema" for b in server.requests)  # never stepped down
    line = e.value.one_line()
    assert "--response-format json_schema" in line and "json_object" in line and "\n" not in line


def test_a_200_error_refusing_json_mode_steps_down_to_no_response_format(workdir, good):
    """auto: json_schema refused by a 400, then json_object refused inside a 200: the run goes on with none."""
    def script(body, n):
        kind = (body.get("response_format") or {}).get("type")
        if kind == "json_schema":
            return Reply(status=400, raw=json.dumps({"error": {"message": "json_schema not supported",
                                                               "param": "response_format"}}))
        if kind == "json_object":
            return Reply(raw=json.dumps({"error": {"message": "response_format json_object is not supported"}}))
        return good_reply(good, body)

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server))
    assert s.statuses == {"valid": ROWS}


def test_the_usage_a_broken_off_200_reports_goes_into_the_ledger(workdir, good):
    """Was wrong: usage reported in a live 200 whose generation broke off (finish_reason error) is not in the
    ledger/--max-cost, while a Batch result of the same shape is.
    A provider that reports usage in a 200 whose generation broke off billed those tokens (a Batch result of the
    same shape is counted: test_a_failed_result_that_was_billed_is_in_the_ledger); the live run's ledger and
    --max-cost should count them too."""
    target = sorted(good)[0]

    def script(body, n):
        return broken_off(good, body, "error") if narration_id_of(body) == target else good_reply(good, body)

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, max_retries=0))
    assert s.statuses == {"valid": ROWS - 1, "failed": 1}
    assert s.cost == pytest.approx(ROWS * (1000 * 1.0 + 200 * 2.0) / 1e6)
    from leap_cli.programs.store import ProgramStore

    assert s.usage["prompt_tokens"] == ROWS * 1000 and s.usage["completion_tokens"] == ROWS * 200  # (the summary's)
    with contextlib.closing(ProgramStore(workdir / "programs" / "cache.sqlite")) as store:
        ledger = store.spent(workdir / "programs" / "val.jsonl")
        failed = [c for c in store.calls(target) if c["outcome"] == "failed"]
    assert ledger["cost"] == pytest.approx(s.cost) and ledger["prompt_tokens"] == ROWS * 1000
    assert ledger["requests"] == ROWS and ledger["completion_tokens"] == ROWS * 200
    # and in the call log, with its tokens
    assert failed and failed[-1]["prompt_tokens"] == 1000 and failed[-1]["completion_tokens"] == 200


def test_a_batch_result_with_an_error_in_its_choice_is_failed_billed_and_asked_again(workdir, good, tmp_path):
    """--ingest-batch reads the same 200 failures as a live run: failed, its usage in the ledger at half price, and
    a --retry-errors --batch-file asks for it again."""
    from leap_cli.programs.batch import ingest_batch, write_batch_file

    cfg = GenerateConfig(workdir=workdir, split="val", model="gpt-test", price_in=1.0, price_out=2.0)
    batch = tmp_path / "batch.jsonl"
    assert write_batch_file(cfg, batch) == ROWS
    lines = []
    for i, r in enumerate(read_jsonl(batch)):
        nid = r["custom_id"].partition("@")[0]
        body = completion(json.dumps(good[nid]))
        if i == 0:
            body["choices"][0]["error"] = "provider gave up"
        if i == 1:
            body["choices"][0]["finish_reason"] = "abort"
        lines.append({"id": f"batch_req_{i}", "custom_id": r["custom_id"],
                      "response": {"status_code": 200, "body": body}})
    results = tmp_path / "r.jsonl"
    results.write_text("".join(json.dumps(x) + "\n" for x in lines))
    spent = {}
    assert ingest_batch(cfg, results, spent=spent) == {"valid": 1, "failed": 2}
    assert spent["cost"] == pytest.approx(ROWS * (1000 + 400) / 1e6 / 2)
    recs = records(workdir)
    said = [recs[x["custom_id"].partition("@")[0]]["errors"][-1]["message"] for x in lines[:2]]
    assert "provider gave up" in said[0] and "finish_reason 'abort'" in said[1]
    assert write_batch_file(dataclasses.replace(cfg, retry_failed=True), tmp_path / "b2.jsonl") == 2


# ---- a repair turn whose request failed (provenance.repair_failed) ---------------------------------------------

NGINX_502 = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


def second_repair_fails(good):
    """The first segment's first reply and first repair fail the schema; its second repair turn gets a 502."""
    target = sorted(good)[0]

    def script(body, n):
        nid = narration_id_of(body)
        if nid != target:
            return good_reply(good, body)
        if n < 2:
            program = dict(good[nid])
            program.pop("post")
            return Reply(json.dumps(program))
        return Reply(status=502, raw=NGINX_502)
    return target, script


def repair_failed_output(workdir, good):
    target, script = second_repair_fails(good)
    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, max_retries=0, repair_rounds=2))
        sizes = [len(b["messages"]) for b in server.requests if narration_id_of(b) == target]
    assert s.statuses == {"valid": ROWS - 1, "invalid": 1}
    rec = records(workdir)[target]
    assert rec["provenance"]["repair_failed"] is True and rec["provenance"]["rounds"] == 3
    assert "502 Bad Gateway" in rec["errors"][-1]["message"]
    return target, sizes


def test_a_failed_second_repair_is_redone_alone_and_the_flag_goes(workdir, good):
    target, sizes = repair_failed_output(workdir, good)
    with ScriptedServer(lambda body, n: good_reply(good, body)) as server:
        s = generate_programs(config(workdir, server, repair_rounds=2, retry_failed=True))
        # only the second repair turn: the first reply and the first repair's are read from the cache
        assert [len(b["messages"]) for b in server.requests] == [sizes[-1]]
    assert s.cost == pytest.approx((1000 * 1.0 + 200 * 2.0) / 1e6)  # one request paid
    rec = records(workdir)[target]
    assert rec["status"] == "valid" and "repair_failed" not in rec["provenance"] and rec["program"] == good[target]
    with ScriptedServer(lambda body, n: good_reply(good, body)) as server:  # done: a further rerun sends nothing
        generate_programs(config(workdir, server, repair_rounds=2, retry_failed=True))
        assert server.requests == []


def test_without_the_cache_a_repair_failed_record_is_asked_from_the_start(workdir, good):
    target, sizes = repair_failed_output(workdir, good)
    (workdir / "programs" / "cache.sqlite").unlink()
    with ScriptedServer(lambda body, n: good_reply(good, body)) as server:
        generate_programs(config(workdir, server, repair_rounds=2, retry_failed=True))
        assert [len(b["messages"]) for b in server.requests] == [sizes[0]]
    rec = records(workdir)[target]
    assert rec["status"] == "valid" and "repair_failed" not in rec["provenance"]


def test_a_repair_failed_record_is_kept_without_retry_errors_and_read_by_validate_programs(workdir, good, monkeypatch,
                                                                                          capsys):
    from tests.procs import leap_main

    target, _ = repair_failed_output(workdir, good)
    with ScriptedServer(lambda body, n: good_reply(good, body)) as server:
        generate_programs(config(workdir, server, repair_rounds=2))
        assert server.requests == []
    assert records(workdir)[target]["provenance"]["repair_failed"] is True
    code, out, err = leap_main(monkeypatch, capsys, "validate-programs", str(workdir / "programs" / "val.jsonl"),
                               "--workdir", str(workdir))
    assert code in (0, 1), out + err
    assert "Traceback" not in out + err
    report = json.loads((workdir / "programs" / "val.report.json").read_text())
    assert report


def test_a_batch_file_retry_errors_keeps_a_repair_failed_record_redoable(workdir, good, tmp_path):
    """Was wrong: --batch-file --retry-errors remakes a repair_failed record from the cache without the flag (no
    request written): a later live --retry-errors skips it for good."""
    from collections import Counter

    from leap_cli.programs.batch import write_batch_file

    target, sizes = repair_failed_output(workdir, good)
    with ScriptedServer(lambda body, n: good_reply(good, body)) as server:
        cfg = config(workdir, server, repair_rounds=2, retry_failed=True)
        write_batch_file(cfg, tmp_path / "b.jsonl", Counter())
        generate_programs(cfg)  # the live --retry-errors run after it
        assert [len(b["messages"]) for b in server.requests] == [sizes[-1]]
    assert records(workdir)[target]["status"] == "valid"


def test_the_warning_of_a_retry_errors_run_names_what_it_pays_for(workdir, good, caplog):
    """Was wrong: --retry-errors on a repair_failed record warns '1 invalid (--retry-invalid: not answered from the
    cache)' though only the repair turn is sent, the first reply from the cache."""
    repair_failed_output(workdir, good)
    caplog.clear()
    with ScriptedServer(lambda body, n: good_reply(good, body)) as server:
        generate_programs(config(workdir, server, repair_rounds=2, retry_failed=True))
        assert len(server.requests) == 1
    said = " ".join(r.getMessage() for r in caplog.records if "asked for again" in r.getMessage())
    assert said and "--retry-invalid" not in said and "not answered from the cache" not in said


# ---- submit: the zip checked before it takes --out's place; --check's compression methods ------------------------

def _ann(ann_dir):
    from leap_cli.epic.annotations import Annotations

    return Annotations(ann_dir)


def test_a_refused_submission_with_no_earlier_zip_leaves_nothing_and_names_out(tmp_path, ann_dir):  # noqa: F811
    from leap_cli import submit as sub
    from tests.test_eval_submit import _test_scores

    out = tmp_path / "new" / "a.zip"
    with pytest.raises(LeapError, match="exactly 100") as e:  # 6 x 8 = 48 verb-noun pairs
        sub.submit(_test_scores(), _ann(ann_dir), "anticipation", out, sls_pt=0, sls_tl=0, sls_td=0,
                   with_actions=True)
    assert str(out) in e.value.one_line() and ".tmp" not in e.value.one_line()
    assert not out.exists() and list(out.parent.iterdir()) == []  # no zip, no temp file


def test_a_refused_submission_through_a_symlink_leaves_its_target_and_the_link(tmp_path, ann_dir):  # noqa: F811
    from leap_cli import submit as sub
    from tests.test_eval_submit import _test_scores

    real, link = tmp_path / "real.zip", tmp_path / "link.zip"
    sub.submit(_test_scores(), _ann(ann_dir), "anticipation", real, sls_pt=0, sls_tl=0, sls_td=0)
    before = real.read_bytes()
    link.symlink_to(real)
    with pytest.raises(LeapError, match="exactly 100"):
        sub.submit(_test_scores(), _ann(ann_dir), "anticipation", link, sls_pt=0, sls_tl=0, sls_td=0,
                   with_actions=True)
    assert link.is_symlink() and real.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "kitchen") == ["link.zip", "real.zip"]
    sub.submit(_test_scores(), _ann(ann_dir), "anticipation", link, sls_pt=1, sls_tl=0, sls_td=0)  # accepted
    assert link.is_symlink() and sub.read_submission(real)["sls_pt"] == 1


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_check_accepts_test_json_stored_or_bzip2_or_lzma(tmp_path, ann_dir, method):  # noqa: F811
    from leap_cli import submit as sub
    from tests.test_eval_submit import _test_scores

    doc = sub.make_submission(_test_scores(), "recognition", sls_pt=1, sls_tl=2, sls_td=3)
    path = tmp_path / "s.zip"
    with zipfile.ZipFile(path, "w", method) as z:
        z.writestr("test.json", json.dumps(doc))
    assert sub.check_file(path, _ann(ann_dir))  # no refusal


def test_check_refuses_deflate64_in_one_line_naming_the_zip(tmp_path, ann_dir):  # noqa: F811
    """A zip whose test.json says compression method 9 (7-Zip's Deflate64): one line, the file named."""
    from leap_cli import submit as sub
    from tests.test_eval_submit import _test_scores

    doc = sub.make_submission(_test_scores(), "recognition", sls_pt=1, sls_tl=2, sls_td=3)
    path = tmp_path / "s.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("test.json", json.dumps(doc))
    data = bytearray(path.read_bytes())
    for sig, off in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):  # the method field of both headers
        i = data.find(sig)
        data[i + off:i + off + 2] = (9).to_bytes(2, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(LeapError, match="compressed with method 9") as e:
        sub.check_file(path, _ann(ann_dir))
    assert str(path) in e.value.one_line() and "\n" not in e.value.one_line()


# ---- a DataLoader whose start fails part way --------------------------------------------------------------------

class _Items:
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return i


def _sleeper():
    import time

    time.sleep(60)


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # (a zombie is dead)
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # (torch's half-made iterator's __del__)
def test_a_loader_start_that_fails_kills_its_workers_and_no_other_child(monkeypatch):
    """Workers started, then the iterator's start fails (as the limit of open files does): those workers are gone,
    a process the caller had started before (another loader's worker, a pool) lives on, and the error goes on."""
    import errno
    import multiprocessing

    import torch.utils.data.dataloader as dl
    from torch.utils.data import DataLoader

    from leap_cli.shards.dataset import Guarded

    other = multiprocessing.get_context("fork").Process(target=_sleeper, daemon=True)
    other.start()
    try:
        started = []

        def after_start(key, pids):  # (torch's step once every worker is started: made to fail there)
            started.extend(pids)
            raise OSError(errno.EMFILE, "Too many open files")

        monkeypatch.setattr(dl._utils.signal_handling, "_set_worker_pids", after_start)
        loader = Guarded(DataLoader(_Items(), batch_size=2, num_workers=2), "--workers")
        with pytest.raises(OSError, match="Too many open files"):
            next(iter(loader))
        assert len(started) == 2 and not any(_alive(pid) for pid in started)
        assert other.is_alive()
    finally:
        other.kill()
        other.join(5)


def test_a_loader_that_starts_yields_every_batch_with_workers():
    from torch.utils.data import DataLoader

    from leap_cli.shards.dataset import Guarded

    loader = Guarded(DataLoader(_Items(), batch_size=3, num_workers=2, persistent_workers=True), "--workers")
    for _ in range(2):  # persistent workers: the second epoch starts no new workers
        assert [b.tolist() for b in loader] == [[0, 1, 2], [3, 4, 5], [6, 7]]


# ---- the anticipation forward's single decode: outputs as before ------------------------------------------------

def _old_leap_module():
    """leap_cli/model/leap.py as it was at 03456cc (the forward that decoded the current clip twice)."""
    import subprocess
    import types
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(["git", "show", "03456cc:leap_cli/model/leap.py"], cwd=root, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("commit 03456cc is not in this checkout")
    mod = types.ModuleType("leap_cli.model._leap_03456cc")
    exec(compile(r.stdout, "leap_03456cc.py", "exec"), mod.__dict__)
    return mod


@pytest.mark.parametrize("pool", ["program", "all"])
@pytest.mark.parametrize("context", ["present", "some", "absent"])
def test_the_anticipation_forward_gives_the_outputs_the_double_decode_gave(pool, context):
    import torch

    from leap_cli.model import build_model
    from tests.test_attack_s53_paper import clips, tiny_args

    old = _old_leap_module()
    torch.manual_seed(0)
    new = build_model(tiny_args(anticipation={"context": 2, "aggregate": True, "pool": pool})).eval()
    with torch.no_grad():  # zero-initialised gates and residual branches opened: every input counts
        for p in new.parameters():
            if p.dtype.is_floating_point and p.abs().max() == 0:
                p.normal_(0, 0.05)
    former = old.LeapModel(new.model_args).eval()
    former.load_state_dict(new.state_dict())
    data = clips()
    kw = {} if context == "absent" else {"context_video": data["context_video"],
                                         "context_mask": data["context_mask"] if context == "some"
                                         else torch.ones(3, 2, dtype=torch.bool)}
    with torch.no_grad():
        a = new(data["video"], **kw)
        b = former(data["video"], **kw)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---- evaluate with loader workers under a small limit of open files ----------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-video kitchen, its shards and a run trained one step (~15 s)."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("s53attack_eval")
    run = [sys.executable, "-m", "leap_cli"]

    def leap(*argv):
        subprocess.run(run + list(argv), check=True, capture_output=True, cwd=root)

    kitchen_copy(tmp_path_factory, root / "kitchen", "--videos", 2, "--segments", 2)
    for split in ("train", "val"):
        leap("build-shards", "--data", "kitchen", "--workdir", "work", "--split", split, "--frames", "4",
             "--short-side", "32")
    leap("train", "--config", "tiny-synthetic-short", "--workdir", "work", "--name", "r", "--set", "train.max_steps=1",
         "--set", "data.batch_size=2")
    return root


def test_evaluate_with_workers_under_a_small_ulimit_scores_every_segment_or_says_one_line(trained):
    """Was wrong: evaluate --workers 2 under `ulimit -n 20`: a worker's batch is lost (torch's file_system sharing
    hits EMFILE, a traceback), exit 0 with 1 of 2 segments scored."""
    from tests.test_attack_h5leaks import leap_limited

    # (where a batch is lost varies a little from run to run; measured with the fix: 18 and below cannot start the
    # workers (the one-line error), 19 loses a batch (said in one line), 20 and above score every segment; the bug
    # was seen at 20)
    for limit in range(18, 22):
        r = leap_limited(limit, "evaluate", "--split", "val", "--run", "work/runs/r", "--workdir", "work", "--data",
                         "kitchen", "--workers", "2", "--batch-size", "1", "--out", f"ev{limit}", cwd=trained)
        said = f"ulimit -n {limit}: " + r.stderr[-3000:]
        assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, said
        if r.returncode == 0:
            assert "not in" not in r.stderr and "shards manifest lists" not in r.stderr, said  # every segment scored
        else:
            errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
            assert r.returncode == 2 and len(errors) == 1 and "ulimit -Hn" in errors[0], said
