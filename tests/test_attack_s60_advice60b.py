"""Every command leap suggests must work when pasted, part two (session 60, helper advice60b).

As tests/test_attack_s60_advice60.py: each test makes a situation in which leap's error, note or end line names a
command or an option, parses the advice out of the output (``shlex.split`` where it is a command), runs it as the
user would, and checks that it does what it says without losing finished work or paid LLM replies. Here: the merge
advice after ``--shard`` parts run with options other than the defaults (extract --components, generate-programs
--k against a local OpenAI-compatible server), build-shards' "--shard i/n of the same command" after a video
changed, check-shards' advice for a damaged shard, train's and demo's advice for too few samples per batch,
generate-programs' --retry-errors / --retry-invalid notes, and validate-programs' "make it first".
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.kitchens import kitchen_copy
from tests.test_attack_s60_advice60 import ENV, _first_words, advice, flat, leap, pasted, run, shell

KEY_VAR = "ADVICE60B_KEY"


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """A synthetic kitchen of 4 videos x 6 segments (train: P01_01 and P02_01, the latter cut short, in two --shard
    parts of 2 by video), the train split extracted, and the offline generator's program of each train segment
    (what the local LLM server answers)."""
    wd = tmp_path_factory.mktemp("kit")
    kitchen_copy(tmp_path_factory, wd / "kitchen", "--videos", 4, "--segments", 6)
    for cmd, *rest in [("extract", "--split", "train", "--workers", 2),
                       ("generate-programs", "--split", "train", "--backend", "offline")]:
        rc, out = run(leap(cmd, "--workdir", wd, *rest))
        assert rc == 0, out
    good = {r["narration_id"]: r["program"]
            for r in map(json.loads, (wd / "programs" / "train.jsonl").read_text().splitlines())}
    assert len(good) == 12
    return wd, good


def workdir_from(ref: Path, dst: Path, *folders: str) -> Path:
    dst.mkdir(parents=True)
    (dst / "kitchen").symlink_to(ref / "kitchen")
    for f in folders:
        shutil.copytree(ref / f, dst / f, symlinks=True)
    return dst


# --- a local OpenAI-compatible server that counts the requests (paid calls) per clip ---------------------------

def _nid(body: dict) -> str | None:
    ids = [re.match(r"Clip (\S+):", m["content"]) for m in body.get("messages", [])
           if m.get("role") == "user" and isinstance(m.get("content"), str)]
    ids = [m.group(1) for m in ids if m]
    return ids[-1] if ids else None


class LLM:
    """Answers each clip with its good program; ``modes`` {narration id: "400" | "schema"} answer otherwise while
    ``bad`` is set (a mended cause: cleared)."""

    def __init__(self, good: dict, modes: dict | None = None):
        self.good, self.modes, self.bad = good, modes or {}, True
        self.calls: Counter = Counter()
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                nid = _nid(body)
                with outer.lock:
                    outer.calls[nid] += 1
                mode = outer.modes.get(nid, "ok") if outer.bad else "ok"
                if mode == "400":
                    status, payload = 400, {"error": {"message": "scripted 400"}}
                else:
                    content = (json.dumps({"action": {"narration": "x"}, "steps": []}) if mode == "schema"
                               else json.dumps(outer.good[nid]))
                    status, payload = 200, {
                        "id": "c", "object": "chat.completion", "created": 1, "model": "local",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                     "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> "LLM":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def gen(wd: Path, server: LLM, *extra) -> list:
    return ["generate-programs", "--workdir", wd, "--split", "train", "--backend", "openai", "--model", "local",
            "--base-url", server.url, "--api-key-env", KEY_VAR, "--concurrency", 2, "--timeout", 5,
            "--max-retries", 0, "--backoff", 0.01, *extra]


LLM_ENV = {**ENV, KEY_VAR: "sk-advice60b"}


# --- extract / generate-programs: parts made with options other than the defaults --------------------------------

def test_extract_merge_advice_names_the_parts_components(kit, tmp_path):
    """Was wrong: io.py check_settings: the unsharded run's 'merge them and run again' advice does not compare the
    parts' settings (--components camera,narration): followed, the rerun is refused after the merge."""
    ref, _ = kit
    wd = workdir_from(ref, tmp_path / "w d'1", "frame-cache")
    for i in (0, 1):
        rc, out = run(leap("extract", "--workdir", wd, "--split", "train", "--components", "camera,narration",
                           "--shard", f"{i}/2"))
        assert rc == 0, out
    cmd = leap("extract", "--workdir", wd, "--split", "train")  # the default components
    rc, first = run(cmd)
    assert rc != 0
    cat = advice(first, r"resume from the merge: (cat .*? > .*?); or run the parts")
    rc, res = shell(cat, cwd=tmp_path)
    assert rc == 0, res
    rc, again = run(cmd)  # "run again"
    # either the run again resumes from the merge, or the advice said what it takes: the parts' --components
    assert rc == 0 or "with the parts' options (--components: ['camera', 'narration'] -> " in flat(first), \
        again[-1500:]


def test_extract_merge_advice_with_the_parts_components_resumes(kit, tmp_path):
    """The same parts, and the unsharded command with their --components: cat as advised, run again: nothing to do,
    and generate-programs reads the merge."""
    ref, _ = kit
    wd = workdir_from(ref, tmp_path / "w d'2", "frame-cache")
    opts = ("--components", "camera,narration")
    for i in (0, 1):
        rc, out = run(leap("extract", "--workdir", wd, "--split", "train", *opts, "--shard", f"{i}/2"))
        assert rc == 0, out
    cmd = leap("extract", "--workdir", wd, "--split", "train", *opts)
    rc, out = run(cmd)
    assert rc != 0
    rc, res = shell(advice(out, r"resume from the merge: (cat .*? > .*?); or run the parts"), cwd=tmp_path)
    assert rc == 0, res
    rc, out = run(cmd)
    assert rc == 0, out
    assert "12 done before, 0 written now" in flat(out)
    rc, out = run(leap("generate-programs", "--workdir", wd, "--split", "train", "--backend", "offline"))
    assert rc == 0, out
    assert (wd / "programs" / "train.jsonl").read_bytes().count(b"\n") == 12


def _llm_parts(kit, tmp_path, server: LLM, name: str) -> Path:
    ref, _ = kit
    wd = workdir_from(ref, tmp_path / name, "descriptors")
    for i in (0, 1):
        rc, out = run(leap(*gen(wd, server, "--k", 2, "--shard", f"{i}/2")), env=LLM_ENV)
        assert rc == 0, out
    assert sum(server.calls.values()) == 12
    return wd


def test_programs_merge_advice_after_k2_parts_costs_no_request(kit, tmp_path):
    """generate-programs --k 2 in two parts against an LLM, then the unsharded --k 2 command: the cat it advises,
    then the command again, asks nothing (every reply paid for is in the merge)."""
    _, good = kit
    with LLM(good) as server:
        wd = _llm_parts(kit, tmp_path, server, "w d'3")
        cmd = leap(*gen(wd, server, "--k", 2))
        rc, out = run(cmd, env=LLM_ENV)
        assert rc != 0
        rc, res = shell(advice(out, r"resume from the merge: (cat .*? > .*?); or run the parts"), cwd=tmp_path)
        assert rc == 0, res
        rc, out = run(cmd, env=LLM_ENV)
        assert rc == 0, out
        assert sum(server.calls.values()) == 12, server.calls
    recs = [json.loads(x) for x in (wd / "programs" / "train.jsonl").read_text().splitlines()]
    assert len(recs) == 12 and {r["status"] for r in recs} == {"valid"}


def test_programs_merge_advice_after_k2_parts_names_k(kit, tmp_path):
    """Was wrong: io.py check_settings: 'merge them and run again' after parts of --k 2 says nothing of --k: the
    default-k command, run again after the merge, is refused and its --force would pay for every prompt again."""
    _, good = kit
    with LLM(good) as server:
        wd = _llm_parts(kit, tmp_path, server, "w")
        cmd = leap(*gen(wd, server))  # --k at its default, 4
        rc, first = run(cmd, env=LLM_ENV)
        assert rc != 0
        rc, res = shell(advice(first, r"resume from the merge: (cat .*? > .*?); or run the parts"), cwd=tmp_path)
        assert rc == 0, res
        rc, again = run(cmd, env=LLM_ENV)
        assert sum(server.calls.values()) == 12, server.calls  # (refused or not: nothing asked again)
    assert rc == 0 or "with the parts' options (--k: 2 -> 4)" in flat(first), again[-1500:]


# --- generate-programs: the --retry-errors / --retry-invalid notes ----------------------------------------------

def test_retry_notes_pasted_ask_only_those_records(kit, tmp_path):
    """A run with one clip answered HTTP 400 (failed) and one answered with JSON that fails the schema (invalid):
    its notes name --retry-errors and --retry-invalid; the command with each asks for those clips alone."""
    ref, good = kit
    wd = workdir_from(ref, tmp_path / "w", "descriptors")
    with LLM(good, {"P01_01_1": "400", "P02_01_2": "schema"}) as server:
        cmd = gen(wd, server)
        rc, out = run(leap(*cmd), env=LLM_ENV)
        assert rc == 0, out
        first = Counter(server.calls)
        assert set(first) == set(good)
        server.bad = False  # the cause mended
        rc, out = run(leap(*cmd), env=LLM_ENV)  # a plain rerun: asks nothing, names the options
        assert rc == 0, out
        assert server.calls == first
        errors = advice(out, r"add (--retry-errors) to ask for (?:it|them) again")
        invalid = advice(out, r"add (--retry-invalid) to ask for (?:it|them) again")
        rc, out = run(leap(*cmd, errors), env=LLM_ENV)
        assert rc == 0, out
        assert server.calls - first == Counter({"P01_01_1": 1}), server.calls - first
        rc, out = run(leap(*cmd, invalid), env=LLM_ENV)
        assert rc == 0, out
        assert server.calls - first == Counter({"P01_01_1": 1, "P02_01_2": 1}), server.calls - first
    recs = {r["narration_id"]: r for r in map(json.loads, (wd / "programs" / "train.jsonl").read_text().splitlines())}
    assert len(recs) == 12 and {r["status"] for r in recs.values()} == {"valid"}


# --- build-shards: parts all done, a video changed since ---------------------------------------------------------

def _parts_with_a_changed_video(kit, tmp_path, name: str) -> tuple[Path, dict]:
    """Train shards built in two parts with --max-count 2 (part 1, P02_01, skipped 3 segments past the video's end),
    then P02_01's file touched (downloaded again): the work directory and the tars' bytes."""
    ref, _ = kit
    wd = workdir_from(ref, tmp_path / name, "descriptors", "programs", "frame-cache")
    for i in (0, 1):
        rc, out = run(leap("build-shards", "--workdir", wd, "--split", "train", "--max-count", 2, "--shard", f"{i}/2"))
        assert rc == 0, out
    folder = wd / "shards" / "train"
    assert (folder / "manifest.json").is_file()
    held = {p.name: p.read_bytes() for p in folder.glob("*.tar")}
    video = ref / "kitchen" / "P02" / "videos" / "P02_01.MP4"
    (wd / "kitchen").unlink()  # a kitchen of its own, whose P02_01 is another file now
    shutil.copytree(ref / "kitchen", wd / "kitchen", symlinks=True)
    (wd / "kitchen" / "P02" / "videos" / "P02_01.MP4").unlink()
    shutil.copy(video, wd / "kitchen" / "P02" / "videos" / "P02_01.MP4")
    return wd, held


def test_build_shards_parts_retry_advice_with_the_parts_options_retries_that_part(kit, tmp_path):
    wd, held = _parts_with_a_changed_video(kit, tmp_path, "w d'5")
    cmd = ["build-shards", "--workdir", wd, "--split", "train", "--max-count", 2]
    rc, out = run(leap(*cmd))
    assert rc != 0
    said = advice(out, r"\((leap build-shards [^()]*?) tries them again\)")  # (the part's whole command)
    words = shlex.split(said)
    assert words[-2:] == ["--shard", "1/2"] and "--force" not in words
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    rc, out = run(pasted(words), cwd=cwd)
    assert rc == 0, out
    folder = wd / "shards" / "train"
    assert {n: b for n, b in held.items() if ".shard0of2" in n} == {
        p.name: p.read_bytes() for p in folder.glob("*.shard0of2*.tar")}  # part 0 untouched
    rc, out = run(leap(*cmd))  # the unsharded command now: done
    assert rc == 0, out
    assert "nothing new to write" in flat(out)


def test_build_shards_parts_retry_advice_without_max_count_retries_that_part(kit, tmp_path):
    """Was wrong: shards/writer.py _built_in_parts: '--shard 1/2 of the same command' does not carry the parts' own
    options (--max-count 2, packing the unsharded command need not repeat): pasted, refused, '--max-count differs
    ... pass --force to delete them'."""
    wd, held = _parts_with_a_changed_video(kit, tmp_path, "w")
    cmd = ["build-shards", "--workdir", wd, "--split", "train"]  # (parts' --max-count is packing: not compared)
    rc, out = run(leap(*cmd))
    assert rc != 0
    # "--shard 1/2 of the same command" (the part added to this command), or a whole command
    said = advice(out, r"\(((?:leap build-shards|--shard) [^()]*?)(?: of the same command)? tries them again\)")
    words = shlex.split(said)
    assert "--force" not in words
    rc, res = run(pasted(words) if words[0] == "leap" else leap(*cmd, *words))
    assert rc == 0, res  # refused now: "--max-count differs (pass --force to delete them and rebuild, ...)"
    folder = wd / "shards" / "train"
    assert {n: b for n, b in held.items() if ".shard0of2" in n} == {
        p.name: p.read_bytes() for p in folder.glob("*.shard0of2*.tar")}


# --- check-shards: a damaged shard --------------------------------------------------------------------------------

def test_check_shards_damaged_shard_advice_is_a_command_that_rebuilds_it(kit, tmp_path):
    """Was wrong: shards/format.py rebuild_fix: 'run the same leap build-shards again' names no command: the build's
    --max-count 2 is in its progress records (build_command) but not said; without it the rerun asks for --force."""
    ref, _ = kit
    wd = workdir_from(ref, tmp_path / "w d'6", "descriptors", "programs", "frame-cache")
    rc, out = run(leap("build-shards", "--workdir", wd, "--split", "train", "--max-count", 2))
    assert rc == 0, out
    folder = wd / "shards" / "train"
    tar = folder / "leap-train-000001.tar"
    first = (folder / "leap-train-000000.tar").read_bytes()
    data = bytearray(tar.read_bytes())
    data[1500] ^= 0xFF
    tar.write_bytes(bytes(data))
    rc, out = run(leap("check-shards", "--workdir", wd, "--split", "train"))
    assert rc != 0 and "sha256 differs" in out
    assert "delete that shard file" in flat(out)
    tar.unlink()  # as advised
    said = advice(out, r"(leap build-shards [^()]*?)(?: again)? \(it rebuilds")
    rc, res = run(pasted(shlex.split(said)), cwd=tmp_path)
    assert rc == 0, res
    assert (folder / "leap-train-000000.tar").read_bytes() == first
    rc, out = run(leap("check-shards", "--workdir", wd, "--split", "train"))
    assert rc == 0, out


def test_check_shards_damaged_shard_rebuilt_by_the_build_command_keeps_the_rest(kit, tmp_path):
    """What that advice leads to when the command is the build's own: the damaged tar deleted, the build run
    again rebuilds it (and those after it), keeps the ones before it byte for byte, and check-shards passes."""
    ref, _ = kit
    wd = workdir_from(ref, tmp_path / "w", "descriptors", "programs", "frame-cache")
    cmd = leap("build-shards", "--workdir", wd, "--split", "train", "--max-count", 2)
    rc, out = run(cmd)
    assert rc == 0, out
    folder = wd / "shards" / "train"
    tars = {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}
    tar = folder / "leap-train-000002.tar"
    data = bytearray(tar.read_bytes())
    data[1500] ^= 0xFF
    tar.write_bytes(bytes(data))
    tar.unlink()
    before = {n: (folder / n).stat().st_mtime_ns for n in ("leap-train-000000.tar", "leap-train-000001.tar")}
    rc, out = run(cmd)
    assert rc == 0, out
    assert {n: (folder / n).stat().st_mtime_ns for n in before} == before
    assert {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))} == tars
    rc, out = run(leap("check-shards", "--workdir", wd, "--split", "train"))
    assert rc == 0, out


# --- train / demo: fewer samples than a batch ---------------------------------------------------------------------

def test_train_fewer_samples_than_batch_advice_is_a_set_that_trains(kit, tmp_path):
    """Was wrong: train/data.py: 'lower data.batch_size' names no option to paste (demo says '--set
    data.batch_size=N'); the user must know --set and the most it may be."""
    ref, _ = kit
    wd = workdir_from(ref, tmp_path / "w", "descriptors", "programs", "frame-cache")
    rc, out = run(leap("build-shards", "--workdir", wd, "--split", "train"))
    assert rc == 0, out
    samples = json.loads((wd / "shards" / "train" / "manifest.json").read_text())["counts"]["samples"]
    assert samples == 9
    cmd = ["train", "--workdir", wd, "--config", "tiny-synthetic-short", "--set", "train.epochs=1", "--name", "b"]
    rc, out = run(leap(*cmd))  # batch 16
    assert rc != 0 and "fewer than data.batch_size=16" in flat(out)
    said = advice(out, r"(--set data\.batch_size=\d+)")
    assert int(said.rsplit("=", 1)[1]) <= samples
    rc, out = run(leap(*cmd, *shlex.split(said)))
    assert rc == 0, out


def test_demo_too_small_kitchen_advice_either_way_gets_past_the_check(tmp_path):
    """demo --videos 3 --segments 3: 'pass --segments N or more, or --set data.batch_size=K'. Each, added to the
    command as said, is taken: the demo starts building its kitchen (stopped there; by hand, the whole demo --videos 3
    --segments 2 --set data.batch_size=2 ran to its submission). K is the training segments the kitchen has."""
    base = ["demo", "--workdir", tmp_path / "d", "--videos", 3, "--segments", 3]
    rc, out = run(leap(*base), cwd=tmp_path)
    assert rc != 0
    have = int(advice(out, r"give (\d+) training segments with frames"))
    more = advice(out, r"\(pass (--segments \d+) or more, or --set")
    batch = advice(out, r"or --set (data\.batch_size=\d+)\)")
    assert int(batch.split("=")[1]) == have
    for extra in (shlex.split(more), ["--set", batch]):
        words = [w for w in map(str, base)]
        if extra[0] == "--segments":
            words[words.index("--segments") + 1] = extra[1]  # (the option given again: its new value)
        else:
            words += extra
        shutil.rmtree(tmp_path / "d", ignore_errors=True)
        out = _first_words(leap(*words), ("leap demo-data", "error"), tmp_path)
        assert "leap demo-data" in out and "error" not in out.lower(), out[-1500:]


# --- validate-programs: no program file ---------------------------------------------------------------------------

def test_validate_programs_make_it_first_advice_pasted_makes_the_file(kit, tmp_path):
    ref, _ = kit
    wd = workdir_from(ref, tmp_path / "w d'7", "descriptors")
    rc, out = run(leap("validate-programs", "--workdir", wd, "--split", "train"))
    assert rc != 0
    said = advice(out, r"make it first: (leap generate-programs .*?)\)")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    rc, res = run(pasted(shlex.split(said)), cwd=cwd)
    assert rc == 0, res
    rc, out = run(leap("validate-programs", "--workdir", wd, "--split", "train"))
    assert rc == 0, out
    assert (wd / "programs" / "train.jsonl").read_bytes().count(b"\n") == 12


def test_validate_programs_malformed_line_advice_delete_then_resume_writes_it_again(kit, tmp_path):
    """A program file with one line broken: validate-programs says 'delete or fix those lines (generate-programs
    writes a deleted record again when it resumes)'; deleted, generate-programs (the offline backend) writes that
    record again, and validate-programs passes."""
    ref, _ = kit
    wd = workdir_from(ref, tmp_path / "w", "descriptors", "programs")
    path = wd / "programs" / "train.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    nid = json.loads(lines[4])["narration_id"]
    lines[4] = lines[4][: len(lines[4]) // 2] + "\n"
    path.write_text("".join(lines))
    rc, out = run(leap("validate-programs", "--workdir", wd, "--split", "train"))
    assert "generate-programs writes a deleted record again when it resumes" in flat(out), out[-1500:]
    del lines[4]
    path.write_text("".join(lines))
    rc, out = run(leap("generate-programs", "--workdir", wd, "--split", "train", "--backend", "offline"))
    assert rc == 0, out
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(recs) == 12 and nid in {r["narration_id"] for r in recs}
    rc, out = run(leap("validate-programs", "--workdir", wd, "--split", "train"))
    assert rc == 0, out
