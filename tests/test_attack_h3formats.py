"""Every file a small `leap demo` writes, checked against the formats docs/*.md and the schemas document.

The session's demo (conftest.py: 4 videos x 10 segments, 1 tiny epoch), plus the failure kinds a user meets: program
records from an LLM server that answers garbage / refuses / returns a broken program, and descriptor records of a
damaged hand-object file. Each test reads the files as a user would (json, tarfile, torch.load(weights_only=True),
zipfile) and asserts what the docs say about their fields, units and ids.
"""

import csv
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import jsonschema
import pytest
import torch
from PIL import Image

from tests.programs_llm_server import Reply, ScriptedServer, narration_id_of

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "leap_cli" / "resources" / "schemas"
DOCS = "\n".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))) + (ROOT / "README.md").read_text()
SPLIT_CSV = {"train": "EPIC_100_train.csv", "val": "EPIC_100_validation.csv", "test": "EPIC_100_test_timestamps.csv"}


def leap(*args, env=None):
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "leap_cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)


def jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def csv_rows(work, split):
    return {r["narration_id"]: r for r in csv.DictReader(open(work / "kitchen" / "annotations" / SPLIT_CSV[split]))}


def max_id(work, kind):
    return max(int(r["id"]) for r in csv.DictReader(open(work / "kitchen" / "annotations" / f"EPIC_100_{kind}_classes.csv")))


def hms(s):
    h, m, sec = s.split(":")
    return int(h) * 3600 + int(m) * 60 + float(sec)


def shard_samples(work, split):
    """{key: {"names": [member names in order], "json": dict, "jpgs": [bytes]}} of the split's shards."""
    out = {}
    for tar in sorted((work / "shards" / split).glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                key, field = m.name.split(".", 1)
                s = out.setdefault(key, {"names": [], "json": None, "jpgs": []})
                s["names"].append(field)
                data = tf.extractfile(m).read()
                if field == "json":
                    s["json"] = json.loads(data)
                else:
                    s["jpgs"].append(data)
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory, demo):
    base = tmp_path_factory.mktemp("h3formats")
    w = demo[0]  # (the session's demo, conftest.py: read here, never written)

    # program records of the failure kinds: an LLM server that answers garbage, refuses, or sends a broken program
    good = jsonl(w / "programs" / "val.jsonl")[0]["program"]

    def script(body, n):
        k = int((narration_id_of(body) or "x_0").rsplit("_", 1)[1])
        if k % 4 == 0:
            return Reply(content="this is not json at all")
        if k % 4 == 1:
            return Reply(status=400)
        if k % 4 == 2:
            return Reply(content=json.dumps({"action": {"narration": "x"},
                                             "steps": [{"type": "sub_action", "verb": "fly", "object_a": "moon"}]}))
        return Reply(content=json.dumps(good))

    with ScriptedServer(script) as srv:
        g = leap("generate-programs", "--workdir", w, "--split", "val", "--backend", "openai", "--base-url",
                 srv.base_url, "--api-key-env", "H3_KEY", "--model", "m", "--max-retries", 0,
                 "--out", base / "llm" / "val.jsonl", env={"H3_KEY": "x"})
    assert (base / "llm" / "val.jsonl").exists(), g.stdout[-2000:] + g.stderr[-2000:]

    # descriptor records of the error kind: a damaged hand-object file
    kitchen = base / "kitchen-broken"
    shutil.copytree(w / "kitchen", kitchen, ignore=shutil.ignore_patterns("*.MP4", "*.wav"))
    for sub in ("videos", "audio"):  # the media unchanged, linked to save the copy
        for f in (w / "kitchen" / "P01" / sub).iterdir():
            os.symlink(f, kitchen / "P01" / sub / f.name)
    (kitchen / "hand-objects" / "P01" / "P01_01.pkl").write_bytes(b"garbage\n")
    e = leap("extract", "--workdir", base / "x", "--data", kitchen, "--split", "train", "--limit", 3,
             "--components", "narration,objects,hands", "--out", base / "broken.jsonl")
    assert (base / "broken.jsonl").exists(), e.stdout[-2000:] + e.stderr[-2000:]
    return w, base


# --------------------------------------------------------------------------------------------- descriptors

def test_descriptor_records_match_schema_and_the_split_csv(work):
    w, _ = work
    schema = json.loads((SCHEMAS / "descriptors.schema.json").read_text())
    for split in ("train", "val", "test"):
        rows = csv_rows(w, split)
        recs = jsonl(w / "descriptors" / f"{split}.jsonl")
        assert {r["narration_id"] for r in recs} == set(rows)
        for r in recs:
            jsonschema.validate(r, schema)
            row = rows[r["narration_id"]]
            assert set(r["components"]) == {"narration", "audio", "camera", "objects", "hands"}
            # seconds, as the CSV's timestamps; frame columns as the CSV's (EPIC's numbering, 1-based)
            assert r["start"] == pytest.approx(hms(row["start_timestamp"]))
            assert r["stop"] == pytest.approx(hms(row["stop_timestamp"]))
            assert (r["start_frame"], r["stop_frame"]) == (int(row["start_frame"]), int(row["stop_frame"]))
            assert r["video_id"] == row["video_id"]
            for c in r["components"].values():
                if c["status"] == "unavailable":
                    assert c["data"]["reason"] and c["text"].startswith("unavailable")
            narr = r["components"]["narration"]
            if split == "test":
                assert narr["status"] == "unavailable"
            else:
                assert narr["status"] == "ok"
                assert (narr["data"]["verb_class"], narr["data"]["noun_class"]) == (int(row["verb_class"]),
                                                                                     int(row["noun_class"]))
    # settings file beside the JSONL (docs/options.md) and extract's config
    settings = json.loads((w / "descriptors" / "train.jsonl.settings.json").read_text())
    assert settings["components"] == ["narration", "audio", "camera", "objects", "hands"]


def test_descriptor_error_records_match_schema(work):
    _, base = work
    schema = json.loads((SCHEMAS / "descriptors.schema.json").read_text())
    recs = jsonl(base / "broken.jsonl")
    assert recs
    for r in recs:
        jsonschema.validate(r, schema)
        for name in ("objects", "hands"):
            c = r["components"][name]
            assert c["status"] == "error"
            assert c["data"]["error"] and "P01_01.pkl" in c["data"]["detail"]  # detail: file and fix
            assert c["text"].startswith("error")


# --------------------------------------------------------------------------------------------- programs

PROVENANCE = {"backend", "model", "prompt_hash", "clip_hash", "attempts", "usage", "seconds", "created", "rounds",
              "cached"}


def check_program_record(r, schema):
    assert set(r) >= {"narration_id", "status", "program", "errors", "provenance"}
    assert r["status"] in ("valid", "invalid", "failed")
    assert PROVENANCE <= set(r["provenance"])
    assert {"prompt_tokens", "completion_tokens"} <= set(r["provenance"]["usage"])
    assert r["provenance"]["rounds"] in (1, 2)
    for e in r["errors"]:
        assert set(e) >= {"pointer", "message"} and (e["pointer"] == "" or e["pointer"].startswith("/"))
    if r["status"] == "valid":
        jsonschema.validate(r["program"], schema)
        assert r["errors"] == []
    else:
        assert r["errors"]
    if r["status"] == "failed":
        assert r["program"] is None


def test_program_records_valid_and_failure_kinds_match_docs(work):
    w, base = work
    schema = json.loads((SCHEMAS / "action_program.schema.json").read_text())
    for split in ("train", "val"):
        recs = jsonl(w / "programs" / f"{split}.jsonl")
        assert recs and all(r["status"] == "valid" for r in recs)
        for r in recs:
            check_program_record(r, schema)
            assert r["provenance"]["backend"] == "offline"
    llm = jsonl(base / "llm" / "val.jsonl")
    statuses = {r["status"] for r in llm}
    assert {"invalid", "failed"} <= statuses, statuses
    for r in llm:
        check_program_record(r, schema)
        assert r["provenance"]["backend"] == "openai" and r["provenance"]["model"] == "m"
    # a refused request is `failed`; a reply that is no JSON, or a program that fails, is `invalid` after the repair
    by_k = {int(r["narration_id"].rsplit("_", 1)[1]) % 4: r for r in llm}
    assert by_k[1]["status"] == "failed"
    assert by_k[0]["status"] == "invalid" and by_k[0]["provenance"]["rounds"] == 2
    assert by_k[2]["status"] == "invalid" and any(e["pointer"].startswith("/action") for e in by_k[2]["errors"])
    # the LLM reply cache is where the docs say (WORKDIR/programs/cache.sqlite)
    assert (w / "programs" / "cache.sqlite").exists()


def test_validate_report_json_fields(work):
    w, _ = work
    for split in ("train", "val"):
        rep = json.loads((w / "programs" / f"{split}.report.json").read_text())
        n = len(jsonl(w / "programs" / f"{split}.jsonl"))
        assert rep["records"] == n and rep["split"] == split
        assert sum(rep["statuses"].values()) == n
        assert rep["coverage"]["of"] and 0 <= rep["coverage"]["fraction"] <= 1
        assert sum(m["records"] for m in rep["made_by"]) == n
        assert rep["malformed"] == [] and {"verbs", "objects", "predicates", "steps"} <= set(rep["histograms"])


def test_demo_report_page_is_documented(work):
    """Was wrong (the docs): no page said that the demo leaves programs/train.report.html."""
    w, _ = work
    assert (w / "programs" / "train.report.html").exists()
    assert "train.report.html" in DOCS


# --------------------------------------------------------------------------------------------- consistency

def test_verb_and_noun_classes_agree_in_every_file(work):
    w, _ = work
    for split in ("train", "val"):
        rows = csv_rows(w, split)
        desc = {r["narration_id"]: r for r in jsonl(w / "descriptors" / f"{split}.jsonl")}
        progs = {r["narration_id"]: r for r in jsonl(w / "programs" / f"{split}.jsonl")}
        samples = shard_samples(w, split)
        manifest = json.loads((w / "shards" / split / "manifest.json").read_text())
        skipped = {s["narration_id"] for s in manifest["skipped"]}
        assert set(samples) | skipped == set(rows) and not set(samples) & skipped
        for nid, row in rows.items():
            want = (int(row["verb_class"]), int(row["noun_class"]))
            d = desc[nid]["components"]["narration"]["data"]
            a = progs[nid]["program"]["action"]
            assert (d["verb_class"], d["noun_class"]) == want, nid
            assert (a["verb_class"], a["noun_class"]) == want, nid
            if nid in samples:
                j = samples[nid]["json"]
                assert (j["verb_class"], j["noun_class"]) == want, nid
                assert (j["start"], j["stop"]) == (desc[nid]["start"], desc[nid]["stop"])
                assert j["video"] == row["video_id"] and j["participant"] == row["participant_id"]
        hist = manifest["histograms"]["verb_class"]
        assert sum(hist.values()) == len(samples)


# --------------------------------------------------------------------------------------------- shards

def test_shard_samples_match_docs_shards_md(work):
    w, _ = work
    manifest_train = json.loads((w / "shards" / "train" / "manifest.json").read_text())
    for split in ("train", "val", "test"):
        man = json.loads((w / "shards" / split / "manifest.json").read_text())
        assert man["targets"] == manifest_train["targets"]  # val/test reuse the training vocabulary
        t = man["settings"]["frames"]
        voc = man["targets"]
        n_cond = len(voc["conditions"])
        kinds = voc["structure"]
        fps = {r["video_id"]: float(r["fps"]) for r in
               csv.DictReader(open(w / "kitchen" / "annotations" / "EPIC_100_video_info.csv"))}
        samples = shard_samples(w, split)
        assert len(samples) == man["counts"]["samples"]
        for key, s in samples.items():
            # members in the documented order: json, then f000..f(T-1)
            assert s["names"] == ["json"] + [f"f{i:03d}.jpg" for i in range(t)], key
            j = s["json"]
            for f in ("narration_id", "video", "participant", "start", "stop", "fps", "narration", "verb", "noun",
                      "verb_class", "noun_class", "task", "frame_indices", "has_program", "targets"):
                assert f in j, (key, f)
            assert j["narration_id"] == key and j["task"] == "recognition"
            for b in s["jpgs"]:
                im = Image.open(io.BytesIO(b))
                assert im.format == "JPEG" and im.mode == "RGB"
                assert list(im.size) == man["frame_sizes"][j["video"]]
                assert min(im.size) <= man["settings"]["short_side"]
            # 1-based source frames of the segment, in time order: from the frame shown at start to the last one
            # that starts before stop (docs/media.md)
            fi = j["frame_indices"]
            assert len(fi) == t and fi == sorted(fi)
            rate = fps[j["video"]]
            first, last = math.floor(j["start"] * rate) + 1, math.ceil(j["stop"] * rate)
            assert first <= fi[0] and fi[-1] <= last, (key, fi, first, last)
            assert j["fps"] == pytest.approx(rate)
            if split == "test":
                assert j["verb"] is None and j["verb_class"] is None and j["noun_class"] is None
                assert j["has_program"] is False and j["targets"] is None
                continue
            assert j["has_program"] is True
            tg = j["targets"]
            rows = tg["steps"]
            assert 1 <= len(rows) <= voc["max_steps"]
            assert len(tg["step_pre"]) == len(tg["step_post"]) == len(rows)
            assert kinds[rows[-1][4]] == "<end>" and all(kinds[r[4]] != "<end>" for r in rows[:-1])
            end = rows[-1]
            assert voc["step_verbs"][end[0]] == "<end>" and voc["objects"][end[1]] == "<end>"
            for r in rows[:-1]:
                assert len(r) == 5
                if kinds[r[4]] == "<step>":
                    assert 0 <= r[0] < len(voc["step_verbs"]) and 0 <= r[1] < len(voc["objects"])
                    assert 0 <= r[2] < len(voc["objects"]) and 0 <= r[3] < len(voc["hands"])
                else:  # marker rows: -100 in the verb, object and hand columns
                    assert r[:4] == [-100] * 4, (key, r)
            for ids in tg["step_pre"] + tg["step_post"] + [tg["pre"], tg["post"]]:
                assert all(0 <= c < n_cond for c in ids)


def test_manifest_fields_and_counts(work):
    w, _ = work
    for split in ("train", "val", "test"):
        man = json.loads((w / "shards" / split / "manifest.json").read_text())
        for f in ("format", "split", "task", "settings", "part", "counts", "histograms", "frame_sizes", "targets",
                  "sources", "programs", "shards", "skipped"):
            assert f in man, (split, f)
        c = man["counts"]
        assert c["segments"] == c["samples"] + c["skipped"] == len(csv_rows(w, split))
        assert c["skipped"] == len(man["skipped"]) and c["shards"] == len(man["shards"])
        assert c["with_program"] + c["without_program"] == c["samples"]
        assert sum(s["count"] for s in man["shards"]) == c["samples"]
        for s in man["shards"]:
            assert (w / "shards" / split / s["name"]).stat().st_size == s["bytes"]
            assert len(s["keys"]) == len(s["offsets"]) == len(s["sizes"]) == len(s["crc32s"]) == s["count"]
        for sk in man["skipped"]:
            assert {"narration_id", "reason", "cause", "video_stat"} <= set(sk)
        assert set(man["targets"]) >= {"max_steps", "step_verbs", "objects", "hands", "structure", "conditions"}
        # vocabularies indexed by class id: max id + 1 classes, then the extra tokens
        assert len(man["targets"]["step_verbs"]) == max_id(w, "verb") + 2
        assert len(man["targets"]["objects"]) == max_id(w, "noun") + 3


def test_dataset_batch_padding_and_condition_length(work):
    from torch.utils.data import DataLoader

    from leap_cli.shards.dataset import ShardDataset, collate_clips
    w, _ = work
    man = json.loads((w / "shards" / "val" / "manifest.json").read_text())
    p = len(man["targets"]["conditions"])
    ds = ShardDataset(str(w / "shards" / "val"), train=False, num_frames=4, img_size=32)
    b = next(iter(DataLoader(ds, batch_size=8, collate_fn=collate_clips)))
    n = len(b["narration_id"])
    assert b["conditions"].shape == (n, 2 * p) and b["step_conditions"].shape[-1] == 2 * p
    steps = b["program_steps"]
    assert steps.shape[0] == n and steps.shape[2] == 5 and steps.dtype == torch.long
    samples = shard_samples(w, "val")
    for i, nid in enumerate(b["narration_id"]):
        rows = samples[nid]["json"]["targets"]["steps"]
        assert steps[i, :len(rows)].tolist() == rows
        assert (steps[i, len(rows):] == -100).all()
        pre = samples[nid]["json"]["targets"]["pre"]
        assert sorted(torch.nonzero(b["conditions"][i, :p]).flatten().tolist()) == sorted(pre)


# --------------------------------------------------------------------------------------------- evaluate, submit

def test_scores_file_and_metrics_match_docs(work):
    w, _ = work
    run = w / "runs" / "tiny-synthetic"
    v, nn_ = max_id(w, "verb") + 1, max_id(w, "noun") + 1
    man = json.loads((w / "shards" / "val" / "manifest.json").read_text())
    p = len(man["targets"]["conditions"])
    for split in ("val", "test"):
        s = torch.load(run / "eval" / split / "scores.pt", weights_only=True)
        n = len(s["narration_id"])
        assert isinstance(s["narration_id"], list) and all(isinstance(x, str) for x in s["narration_id"])
        assert s["verb_output"].shape == (n, v) and s["noun_output"].shape == (n, nn_)
        assert s["verb_output"].dtype == torch.float32
        assert s["verb_output"].min() < 0 or s["verb_output"].max() > 1 or n == 0  # logits, not probabilities
        pr = s["program"]
        L = man["targets"]["max_steps"]
        assert pr["steps"].shape == pr["target_steps"].shape == (n, L, 5)
        assert pr["conditions"].shape == pr["target_conditions"].shape == (n, 2 * p)
        assert pr["step_conditions"].shape == (n, L, 2 * p)
        assert 0 <= pr["conditions"].min() and pr["conditions"].max() <= 1  # probabilities
        assert pr["has_program"].dtype == torch.bool and len(pr["end_ids"]) == 3
        assert set(s["meta"]) >= {"split", "task", "run", "checkpoint", "views", "step", "precision", "compile",
                                  "provenance"}
        assert s["meta"]["split"] == split
        assert s["meta"]["provenance"] == json.loads((run / "provenance.json").read_text())
        samples = shard_samples(w, split)
        assert set(s["narration_id"]) == set(samples)
        if split == "test":
            assert set(s["narration_id"]) == set(csv_rows(w, "test"))
    m = json.loads((run / "eval" / "val" / "metrics.json").read_text())
    assert m["meta"] == torch.load(run / "eval" / "val" / "scores.pt", weights_only=True)["meta"]
    assert m["segments"] + m["not_scored"] == len(csv_rows(w, "val"))
    rec = m["recognition"]
    for k in ("verb", "noun", "action"):
        for t in ("top1", "top5"):
            assert 0 <= rec["all"][k][t] <= 1  # fractions
        assert "top1" in rec["tail"][k] and "top1" in rec["unseen"][k]
    assert {"s_verb", "obj_a", "obj_b", "hand", "structure", "markers"} <= set(m["programs"]["steps"])
    assert {"base_rate", "chance_f1"} <= set(m["programs"]["step_conditions"])


def test_submission_zip_is_the_official_challenge_json(work):
    w, _ = work
    z = zipfile.ZipFile(w / "submission.zip")
    assert z.namelist() == ["test.json"] and z.infolist()[0].date_time[:3] == (1980, 1, 1)
    sub = json.loads(z.read("test.json"))
    assert sub["version"] == "0.2" and sub["challenge"] == "action_recognition"
    assert (sub["sls_pt"], sub["sls_tl"], sub["sls_td"]) == (0, 4, 3)  # what the demo declares
    assert set(sub["results"]) == set(csv_rows(w, "test"))
    v, nn_ = max_id(w, "verb") + 1, max_id(w, "noun") + 1
    s = torch.load(w / "runs" / "tiny-synthetic" / "eval" / "test" / "scores.pt", weights_only=True)
    row = {nid: i for i, nid in enumerate(s["narration_id"])}
    for nid, r in sub["results"].items():
        assert set(r["verb"]) == {str(i) for i in range(v)} and set(r["noun"]) == {str(i) for i in range(nn_)}
        # raw logits per class id (the server applies the softmax)
        assert [r["verb"][str(i)] for i in range(v)] == pytest.approx(s["verb_output"][row[nid]].tolist(), abs=1e-4)
        assert [r["noun"][str(i)] for i in range(nn_)] == pytest.approx(s["noun_output"][row[nid]].tolist(), abs=1e-4)


# --------------------------------------------------------------------------------------------- runs/NAME

def test_run_folder_matches_train_md(work):
    w, _ = work
    run = w / "runs" / "tiny-synthetic"
    assert (run / "config.yaml").read_text().startswith("model:")
    log = jsonl(run / "metrics.jsonl")
    train = [r for r in log if r["split"] == "train"]
    val = [r for r in log if r["split"] == "val"]
    assert train and val
    for r in train:
        assert {"step", "epoch", "loss", "ce_verb", "ce_noun", "l_t", "l_pc", "grad_norm", "lr", "clips_per_s",
                "clipped_steps"} <= set(r)
    for r in val:
        assert {"step", "epoch", "n", "seen", "loss", "verb_top1", "noun_top1", "action_top1", "verb_top5",
                "noun_top5"} <= set(r)
        # percent here; a 1-of-n hit in percent is 100/n, never a fraction below 1 other than 0
        for k in ("verb_top1", "noun_top1", "action_top1", "verb_top5", "noun_top5"):
            assert 0 <= r[k] <= 100 and (r[k] == 0 or r[k] >= 100 / r["n"] - 1e-6)
    prov = json.loads((run / "provenance.json").read_text())
    assert set(prov) >= {"train", "val"}
    assert set(prov["train"]["programs"]) >= {"records", "valid", "with_program", "made_by", "prompt_version",
                                              "sha256"}
    man = json.loads((w / "shards" / "train" / "manifest.json").read_text())
    assert prov["train"]["programs"]["sha256"] == man["sources"]["programs"]
    for which in ("best", "last"):
        ck = torch.load(run / "checkpoints" / f"{which}.pt", weights_only=True)
        assert set(ck) >= {"model", "model_args", "config", "optimizer", "scheduler", "scaler", "step", "epoch",
                           "best_metric", "best_key", "best_step", "targets", "rng", "data_position", "numerics",
                           "shards_timing", "provenance"}
        assert ck["provenance"] == prov and ck["targets"] == man["targets"]
        assert ck["best_key"] == "action_top1"


def test_checkpoint_epoch_agrees_with_metrics_log(work):
    """Was wrong (the docs): docs/train.md said "epoch" counts from 0 in metrics.jsonl and in checkpoints alike; a
    checkpoint written at an epoch's end holds the next epoch (where a resume starts), the log the epoch that ran."""
    w, _ = work
    run = w / "runs" / "tiny-synthetic"
    val = {r["step"]: r for r in jsonl(run / "metrics.jsonl") if r["split"] == "val"}
    ck = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert ck["step"] in val
    assert ck["epoch"] == val[ck["step"]]["epoch"] + 1
    assert ck["data_position"]["epoch"] == ck["epoch"] and ck["data_position"]["batches"] == 0
    assert "a checkpoint's \"epoch\" is where the run stands" in " ".join((ROOT / "docs" / "train.md").read_text().split())


# --------------------------------------------------------------------------------------------- the rest

def test_every_file_kind_is_documented(work):
    """Each kind of file the demo leaves (but the kitchen's own inputs) is named in docs/ or README."""
    w, _ = work
    documented = {
        r"demo\.(run\.)?lock|demo\.settings\.json": ["demo.lock", "demo.run.lock", "demo.settings.json"],
        r"descriptors/\w+\.jsonl": ["descriptors/"], r"descriptors/\w+\.config\.json": ["config.json"],
        r".*\.jsonl\.settings\.json": [".settings.json"], r".*\.jsonl\.lock": ["OUT.lock"],
        r"frame-cache/\w+/\w+\.v3\.s\d+q\d+\.jpgs": ["frame-cache", ".jpgs"], r"frame-cache/\w+/source\.json": ["source.json"],
        r"programs/\w+\.jsonl": ["programs/SPLIT.jsonl"], r"programs/\w+\.report\.json": ["report.json"],
        r"programs/cache\.sqlite": ["cache.sqlite"], r"programs/\w+\.report\.html": ["report.html"],
        r"shards/\w+/leap-\w+-\d+\.tar": ["leap-SPLIT"], r"shards/\w+/manifest\.json": ["manifest.json"],
        r"shards/\w+/\.progress\.jsonl(\.lock)?": [".progress.jsonl"],
        r"shards/\w+/\.(readers|writers)\.lock": [".readers.lock", ".writers.lock"],
        r"runs/[\w-]+/config\.yaml": ["config.yaml"], r"runs/[\w-]+/metrics\.jsonl": ["metrics.jsonl"],
        r"runs/[\w-]+/provenance\.json": ["provenance.json"], r"runs/[\w-]+/checkpoints\.lock": ["checkpoints.lock"],
        r"runs/[\w-]+/checkpoints/(best|last)\.pt": ["checkpoints/best.pt", "checkpoints/last.pt"],
        r"runs/[\w-]+/eval/\w+\.lock": ["eval/SPLIT.lock"], r"runs/[\w-]+/eval/\w+/scores\.pt": ["scores.pt"],
        r"runs/[\w-]+/eval/\w+/metrics\.json": ["metrics.json"], r"submission\.zip": ["submission.zip"],
    }
    for words in documented.values():
        for word in words:
            assert word in DOCS, word
    for f in w.rglob("*"):
        rel = f.relative_to(w).as_posix()
        if not f.is_file() or rel.startswith("kitchen/"):
            continue
        assert any(re.fullmatch(p, rel) for p in documented), f"a file no documented kind covers: {rel}"
