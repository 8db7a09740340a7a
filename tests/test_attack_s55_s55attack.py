"""Session 55's changes, attacked the way a user's run meets them: greedy decoding that keeps its keys and values
(evaluate's scores, batch sizes, bf16 autocast, dropout), paths through missing folders (``x/../w``), the commands
printed for the shell, ``OutputLock._take`` (two runs at one instant, a ``writer_of`` probe hammering the lock),
stages refusing beside a running one (generate-programs beside extract, submit beside evaluate; SIGKILLed holders)
and the progress bars' fork hooks.

Everything runs in this process (``leap_cli.cli.main``, the stages' functions) on the annotations-only EPIC
excerpt of tests/data or a tiny model, except what must be another process: a lock holder to SIGKILL, forks."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from leap_cli.errors import LeapError
from leap_cli.io import OutputLock, settings_path

ROOT = Path(__file__).resolve().parents[1]
EPIC = ROOT / "tests" / "data" / "epic100"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
PID = os.getpid()


def leap(*argv) -> tuple[int | str, str, str]:
    """``leap ARGV`` by ``leap_cli.cli.main`` in this process: (exit status, stdout, stderr); an exception that
    leaves main (a Python traceback for the user) is ("traceback", "", its repr)."""
    from leap_cli import cli

    stops = [s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None)) if s is not None]
    old = {s: signal.getsignal(s) for s in stops}
    argv_was = sys.argv
    sys.argv = ["leap", *map(str, argv)]
    out, err = io.StringIO(), io.StringIO()
    code: int | str = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli.main()
    except SystemExit as e:
        code = e.code if e.code is not None else 0
    except Exception as e:  # (main let it out: the user reads a traceback)
        return "traceback", out.getvalue(), f"{type(e).__name__}: {e}"
    finally:
        sys.argv = argv_was
        for s, handler in old.items():
            signal.signal(s, handler)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def ann_only(tmp_path, monkeypatch) -> Path:
    """The current folder: tmp_path, holding ``d/annotations`` (the EPIC excerpt: no videos)."""
    shutil.copytree(EPIC, tmp_path / "d" / "annotations")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _holder(lock_of: Path) -> subprocess.Popen:
    """Another process holding ``OutputLock(lock_of)`` (a running stage), once it said so."""
    code = ("import sys, time; from leap_cli.io import OutputLock; OutputLock(sys.argv[1]).acquire(); "
            "print('held', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code, str(lock_of)], env=ENV, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def _kill(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)
    p.wait()
    p.stdout.close()


# ------------------------------------------------------------------------------------------- 1. greedy decoding

def _decoder(spec, seed: int = 3, **kw):
    """A program decoder whose rows depend on the rows before (embeddings and heads made large, its layers made to
    differ), as a trained one's do."""
    from leap_cli.model.heads import ProgramDecoder

    torch.manual_seed(seed)
    dec = ProgramDecoder(spec, in_dim=24, dim=32, heads=4, **kw)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in dec.named_parameters():
            if "embed" in name or name == "step_pos":
                p.copy_(torch.randn(p.shape, generator=g))
            elif name.endswith("_out.weight"):
                p.mul_(4)
            else:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return dec


def test_greedy_ids_hold_across_batch_sizes_bf16_autocast_one_step_and_gradients():
    """The kept keys and values give the rows of the re-decoding (benchmarks/bench_model.py redecoding_greedy),
    in a batch or one clip at a time (evaluate's last, smaller batch), with max_steps 1, and with gradients (the
    anticipation aggregation's embedding in training: its states carry the graph). Under CPU bf16 autocast
    (--precision bf16) a clip's rows do not depend on its batch either, and differ from the re-decoding's only
    where bf16 rounding tips a near tie (measured over 20 decoders: 3 of 600 rows, as many as the re-decoding's
    own rows differ between a batch and one clip at a time)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from bench_model import redecoding_greedy
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from leap_cli.model.heads import ProgramSpec

    for spec in (ProgramSpec(6, 7, 3, 6, 4, 5), ProgramSpec(6, 7, 0, 6), ProgramSpec(6, 7, 3, 1, 4, 5)):
        dec = _decoder(spec).eval()
        memory = dec.memory(torch.randn(5, 6, 24, generator=torch.Generator().manual_seed(7)))
        for autocast in (False, True):
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                ids, h = dec.greedy(memory)
                ref_ids, ref_h = redecoding_greedy(dec, memory)
                one_by_one = torch.cat([dec.greedy(memory[i:i + 1])[0] for i in range(5)])
            assert torch.equal(one_by_one, ids), (spec, autocast)
            if autocast:  # (bf16 rounds the two orders of summing otherwise: a near tie may fall either way)
                assert (ids != ref_ids).any(-1).float().mean() <= 0.2, (spec, ids, ref_ids)
            else:
                assert torch.equal(ids, ref_ids), spec
                torch.testing.assert_close(h, ref_h, atol=1e-4, rtol=1e-4)
        ids_g, h_g = dec.greedy(memory)  # gradients on: one teacher-forced pass over the greedy rows
        assert torch.equal(ids_g, ids) and h_g.requires_grad
        h_g.sum().backward()
        assert dec.step_pos.grad is not None and dec.step_pos.grad.abs().sum() > 0


def test_greedy_states_without_gradients_are_those_of_its_ids_with_dropout_on():
    """In training (dropout on), the context clips of an anticipation model are decoded without gradients
    (context_grad false): the states greedy returns are the ones whose step logits' argmax are its ids, as
    docs/model.md says, not a second pass's under other dropout masks."""
    from leap_cli.model.heads import IGNORE, ProgramSpec

    spec = ProgramSpec(6, 7, 3, 6, 4, 5)
    dec = _decoder(spec, dropout=0.3).train()
    memory = dec.memory(torch.randn(4, 6, 24, generator=torch.Generator().manual_seed(8)))
    with torch.no_grad():
        ids, h = dec.greedy(memory)
        again = dec.ids_from_logits(dec.step_logits(h), pad_after_end=False)
    assert torch.equal(torch.where(ids == IGNORE, again, ids), again)


def _tiny(anticipation):
    from leap_cli.model import build_model

    program = {"step_verbs": 6, "objects": 7, "conditions": 3, "max_steps": 5, "hands": 4, "structure": 5}
    torch.manual_seed(0)
    model = build_model({"backbone": "uniformerv2_tiny", "num_frames": 4, "img_size": 32, "num_verbs": 5,
                         "num_nouns": 4, "program": program, "anticipation": anticipation, "decoder_dim": 32,
                         "decoder_heads": 4})
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.decoder.named_parameters():
            if "embed" in name or name == "step_pos":
                p.copy_(torch.randn(p.shape, generator=g))
            elif name.endswith("_out.weight"):
                p.mul_(4)
    return model


@pytest.mark.parametrize("anticipation", [None, {"context": 2, "aggregate": True}], ids=["recognition",
                                                                                        "anticipation"])
def test_evaluate_scores_are_those_of_the_old_redecoding(anticipation, monkeypatch):
    """evaluate's predict(): the verb/noun scores and the programs of a batch of 3 and a last batch of 1 (an
    anticipation model's context clips decoded too), with leap's greedy decoding and with the re-decoding it
    replaced: the same programs, the same scores to float noise."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from bench_model import redecoding_greedy
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from leap_cli.evaluate.inference import predict
    from leap_cli.model.heads import ProgramDecoder

    model = _tiny(anticipation)
    g = torch.Generator().manual_seed(5)
    batches = []
    for n, names in ((3, ["a", "b", "c"]), (1, ["d"])):
        batch = {"video": torch.randn(n, 3, 4, 32, 32, generator=g), "narration_id": names}
        if anticipation:
            batch["context_video"] = torch.randn(n, 2, 3, 4, 32, 32, generator=g)
            batch["context_mask"] = torch.ones(n, 2, dtype=torch.bool)
            batch["context_mask"][0, 0] = False
        batches.append(batch)
    new = predict(model, batches)
    monkeypatch.setattr(ProgramDecoder, "greedy", redecoding_greedy)
    old = predict(model, batches)
    assert new["narration_id"] == old["narration_id"] == ["a", "b", "c", "d"]
    assert torch.equal(new["program"]["steps"], old["program"]["steps"])
    assert len(set(new["program"]["steps"][..., 0].flatten().tolist())) > 2  # (programs that tell them apart)
    for key in ("verb_output", "noun_output"):
        torch.testing.assert_close(new[key], old[key], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(new["program"]["step_conditions"], old["program"]["step_conditions"], atol=1e-4,
                               rtol=1e-4)


# ------------------------------------------------------------------------------ 2. paths through missing folders

def test_evaluate_checkpoint_file_through_a_missing_folder_is_the_file(ann_only):
    """Was wrong: commands/evaluate.py:87 --checkpoint is a str option: cli.py's _paths_through_missing_folders
    fixes Path values only, so x/../ck.pt stays a path the system cannot reach ('checkpoint file not found'),
    against docs/options.md 'so is every path a command is given'. A job script's ``--checkpoint x/../ck.pt`` (x
    not made yet) is ck.pt, as --workdir, --out and --run are:     the checkpoint is read (here: it is no torch
    file, and said so), not reported missing."""
    (ann_only / "ck.pt").write_bytes(b"not a checkpoint")
    same = leap("evaluate", "--split", "val", "--checkpoint", "ck.pt", "--out", "o", "--data", "d", "--device", "cpu")
    assert same[0] == 2 and "cannot read checkpoint" in same[2], same
    code, out, err = leap("evaluate", "--split", "val", "--checkpoint", "x/../ck.pt", "--out", "o", "--data", "d",
                          "--device", "cpu")
    assert code == 2 and "cannot read checkpoint" in err and "not found" not in err, (code, err)
    assert not (ann_only / "x").exists() and not (ann_only / "o").exists()


@pytest.mark.parametrize("out", [".", "x/.."])
def test_evaluate_out_the_current_folder_is_no_traceback(ann_only, out):
    """Was wrong: evaluate/inference.py:307 OutputLock(folder) with folder '.': io.py:401 Path('.').with_name
    raises ValueError (empty name); cli.main lets it out as a traceback. --out x/.. (x missing) is '.' too since
    cli._paths_through_missing_folders. ``leap evaluate --out .`` (scores.pt and metrics.json into the folder
    the user is in): the evaluation goes     on to its checkpoint (here no torch file: said in one line), not a
    Python traceback."""
    (ann_only / "ck.pt").write_bytes(b"not a checkpoint")
    code, _, err = leap("evaluate", "--split", "test", "--checkpoint", "ck.pt", "--out", out, "--workdir", "d",
                        "--device", "cpu")
    assert code == 2 and "cannot read checkpoint" in err, (code, err[-600:])


def test_a_file_named_x_is_no_folder_to_go_through_and_is_said_in_one_line(ann_only):
    """``x/../w`` where x is a file: the system cannot go through it; the refusal is one line naming the path."""
    (ann_only / "x").write_text("a file")
    code, out, err = leap("generate-programs", "--data", "d", "--split", "val", "--workdir", "x/../w")
    assert code == 2 and err.startswith("error: x/../w/") and "Not a directory" in err, (code, err)
    assert len(err.strip().splitlines()) == 1


def test_printed_merge_commands_do_what_they_say_for_odd_folder_names(ann_only):
    """Two --shard parts of extract in a work directory named with a quote, a $, brackets, a backslash, a
    backtick, a semicolon and unicode: generate-programs stops and prints the `cat` that merges them; pasted into
    bash, it merges them into the file the next run reads."""
    for name in ("it's $HOME [red] ø\\b `x`;",):
        for part in ("0/2", "1/2"):
            assert leap("extract", "--data", "d", "--split", "val", "--workdir", name, "--shard", part)[0] == 0
        code, out, err = leap("generate-programs", "--data", "d", "--split", "val", "--workdir", name)
        assert code == 2 and "merge them: " in err, (name, code, err)
        command = err.strip().split("merge them: ", 1)[1].rsplit(")", 1)[0]
        r = subprocess.run(["bash", "-c", command], cwd=ann_only, capture_output=True, text=True, timeout=30)
        merged = ann_only / name / "descriptors" / "val.jsonl"
        assert r.returncode == 0 and merged.is_file(), (name, command, r.stderr)
        assert len(merged.read_text(encoding="utf-8").splitlines()) == 22


# ------------------------------------------------------------------------------- 3. one run at a time (locks)

LOCK_RACE = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    from leap_cli.errors import LeapError
    from leap_cli.io import OutputLock, writer_of

    base, trials, runs, probe = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "probe"
    bad = []
    for t in range(trials):
        path = base / f"out{t}.jsonl"
        prober = None
        if probe:  # a stage looking whether the output is written, as fast as it can, the whole time
            prober = os.fork()
            if prober == 0:
                end = time.time() + 5
                while time.time() < end:
                    writer_of(path)
                os._exit(0)
        r, w = os.pipe()
        kids = []
        for _ in range(runs):
            pid = os.fork()
            if pid == 0:
                os.close(w)
                os.read(r, 1)  # (all released at one instant: the pipe's end closed)
                try:
                    OutputLock(path).acquire()
                    won = 1
                    time.sleep(0.03)
                except LeapError:
                    won = 0
                os._exit(10 + won)
            kids.append(pid)
        os.close(r)
        time.sleep(0.01)
        os.close(w)
        wins = sum(os.WEXITSTATUS(os.waitpid(p, 0)[1]) - 10 for p in kids)
        if prober:
            os.kill(prober, signal.SIGKILL)
            os.waitpid(prober, 0)
        if wins != 1:
            bad.append((t, wins))
    print(bad)
""")


def test_runs_started_at_one_instant_exactly_one_wins_and_a_probe_loop_never_refuses_a_lone_run(tmp_path):
    """OutputLock._take retries while only shared locks are held: of two (three) runs of one output released at
    the same instant, exactly one takes it, every time; a lone run beside a writer_of probe that hammers the
    lock file is never refused as if another wrote the output."""
    script = tmp_path / "race.py"
    script.write_text(LOCK_RACE)
    for args in (["10", "2", "race"], ["5", "3", "race"], ["4", "1", "probe"], ["3", "2", "probe"]):
        r = subprocess.run([sys.executable, str(script), str(tmp_path / "_".join(args)), *args], env=ENV,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stdout.strip() == "[]", (args, r.stdout, r.stderr[-1500:])


def _annotations(work: Path) -> None:
    from tests.program_helpers import excerpt_annotations

    excerpt_annotations(work, rows=8)


@pytest.mark.parametrize("run_shard", ["0/2", None], ids=["part-beside-its-extract-part", "whole-beside-parts"])
def test_generate_beside_an_extract_part_with_no_record_yet_is_refused(tmp_path, run_shard):
    """Was wrong: programs/generate.py:343-347: with the part file not made yet the run falls back to
    descriptors/SPLIT.jsonl (merged_input, common.py:402, sees no part file either), and line 380 asks writer_of
    of that path only, not of the extract part whose lock is held: narration-only programs of every segment are
    made (paid), then refused beside the part's descriptors. extract --shard 0/2 past its settings check (its
    lock held, its sidecar written, no record file yet: it     reads the annotations), and generate-programs of
    part 0/2 (a job array's step run early) or of the whole     split: as for the unsharded file
    (docs/programs.md --descriptors), the run is refused naming the extract,     not made of the narrations
    alone."""
    from leap_cli.common import ShardSpec
    from leap_cli.programs.generate import GenerateConfig, generate_programs

    _annotations(tmp_path)
    part = tmp_path / "descriptors" / "val.shard0of2.jsonl"
    part.parent.mkdir()
    said = ""
    with OutputLock(part):
        settings_path(part).write_text(json.dumps({"split": "val", "components": ["narration", "audio"]}))
        try:
            summary = generate_programs(GenerateConfig(workdir=tmp_path, split="val",
                                                       shard=ShardSpec.parse(run_shard)))
            said = f"made {dict(summary.statuses)} from {summary.source}"
        except LeapError as e:
            said = e.one_line()
    assert f"process {PID}" in said, said
    assert not (tmp_path / "programs").exists() or not any((tmp_path / "programs").glob("*.jsonl"))


def test_generate_beside_an_extract_killed_before_its_first_record_runs(tmp_path):
    """generate-programs is refused while extract holds descriptors/SPLIT.jsonl's lock with no record yet, naming
    it; once that extract is SIGKILLed (its flock dies with it; the lock file and the sidecar stay), the next run
    is not refused: it makes the narration-only programs."""
    from leap_cli.programs.generate import GenerateConfig, generate_programs

    _annotations(tmp_path)
    path = tmp_path / "descriptors" / "val.jsonl"
    path.parent.mkdir()
    settings_path(path).write_text(json.dumps({"split": "val", "components": ["narration", "audio"]}))
    extract = _holder(path)
    try:
        with pytest.raises(LeapError, match=f"process {extract.pid} on"):
            generate_programs(GenerateConfig(workdir=tmp_path, split="val"))
    finally:
        _kill(extract)
    assert path.with_name("val.jsonl.lock").exists()
    summary = generate_programs(GenerateConfig(workdir=tmp_path, split="val"))
    assert summary.statuses["valid"] == 8 and summary.source.startswith("narration-only"), summary.statuses


def _scores(path: Path, ids: list[str]) -> None:
    from leap_cli.evaluate.scores import save_scores

    g = torch.Generator().manual_seed(0)
    save_scores(path, ids, torch.randn(len(ids), 97, generator=g), torch.randn(len(ids), 300, generator=g),
                meta={"split": "test", "task": "recognition", "checkpoint": "best", "step": 10})


@pytest.fixture
def test_split(tmp_path, monkeypatch) -> Path:
    """The current folder: a work directory ``work`` with a test split's annotations (3 segments)."""
    monkeypatch.chdir(tmp_path)
    ann = tmp_path / "work" / "kitchen" / "annotations"
    ann.mkdir(parents=True)
    for name in ("EPIC_100_verb_classes.csv", "EPIC_100_noun_classes.csv"):
        shutil.copy(EPIC / name, ann / name)
    (ann / "EPIC_100_test_timestamps.csv").write_text(
        "narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,"
        "stop_frame\n" + "".join(f"P03_01_{i},P03,P03_01,00:00:0{i}.00,00:00:0{i}.00,00:00:0{i}.50,{i * 60 + 1},"
                                 f"{i * 60 + 30}\n" for i in range(3)))
    return tmp_path


SUBMIT = ("submit", "--sls-pt", "0", "--sls-tl", "4", "--sls-td", "3", "--workdir", "work")


def test_submit_beside_an_evaluation_then_after_it_was_killed(test_split):
    """submit of scores whose folder a running evaluate holds (eval/test.lock) is refused naming it; once that
    evaluate is SIGKILLed, the same submit writes the zip (no false refusal from the lock file left)."""
    folder = test_split / "work" / "runs" / "r1" / "eval" / "test"
    _scores(folder / "scores.pt", ["P03_01_0", "P03_01_1", "P03_01_2"])
    evaluate = _holder(folder)
    try:
        code, out, err = leap(*SUBMIT, "--scores", folder / "scores.pt")
        assert code == 2 and f"process {evaluate.pid} on" in err, (code, out, err)
    finally:
        _kill(evaluate)
    code, out, err = leap(*SUBMIT, "--scores", folder / "scores.pt")
    assert code == 0 and (test_split / "work" / "submission.zip").is_file(), (code, out, err)


@pytest.mark.parametrize("given", ["scores.pt", "./scores.pt"])
def test_submit_of_scores_in_the_current_folder(test_split, given):
    """Was wrong: commands/submit.py:90 writer_of(Path(scores).parent): for a scores file in the current folder the
    parent is '.', and io.py:331 Path('.').with_name raises ValueError (empty name), which cli.main lets out as
    a Python traceback (exit 1). ``leap submit --scores scores.pt`` in the folder holding the scores (copied off
    a cluster, or cd'd into     runs/NAME/eval/test): the zip is written, as for the same file given by another
    path."""
    _scores(test_split / "scores.pt", ["P03_01_0", "P03_01_1", "P03_01_2"])
    code, out, err = leap(*SUBMIT, "--scores", test_split / "scores.pt", "--out", "by-path.zip")
    assert code == 0 and (test_split / "by-path.zip").is_file(), (code, err)
    code, out, err = leap(*SUBMIT, "--scores", given, "--out", "here.zip")
    assert code == 0 and (test_split / "here.zip").is_file(), (code, err[-600:])


# ------------------------------------------------------------------------------------ 4. bars around forks

FORKS_UNDER_BARS = textwrap.dedent("""
    import os, sys, threading, time
    from rich.console import Console
    from leap_cli.progress import stage_progress

    with stage_progress("old", "{task.description}", console=Console(force_terminal=True, file=sys.stderr)) as old:
        old.add_task("done", total=1)  # (a bar stopped before: still known to the hooks while referenced)
    con = Console(force_terminal=True)
    with stage_progress("x", "{task.description}", console=con) as bar:
        bar.live.refresh_per_second = 100
        task = bar.add_task("t", total=None)
        stop, forked = threading.Event(), []

        def forker():  # (a pool or DataLoader started from a thread other than the main one)
            for i in range(150):
                pid = os.fork()
                if pid == 0:
                    sys.stderr.write(f"child {i}\\n")
                    print(f"child out {i}", flush=True)
                    os._exit(0)
                forked.append(pid)
            stop.set()

        th = threading.Thread(target=forker)
        th.start()
        n = 0
        while not stop.is_set():  # the main thread redraws and prints through the bar meanwhile
            bar.update(task, advance=1, description=f"step {n}", refresh=True)
            con.print(f"line {n}")
            n += 1
        th.join()
        deadline = time.monotonic() + 20
        for pid in forked:
            while not os.waitpid(pid, os.WNOHANG)[0]:
                if time.monotonic() > deadline:
                    print("HUNG", file=sys.__stderr__)
                    os._exit(3)
                time.sleep(0.002)
    print("ok", file=sys.__stderr__)
""")


def test_many_forks_from_a_thread_while_the_bar_redraws_and_prints_neither_hang_nor_crawl(tmp_path):
    """The bars' locks taken around each fork (progress._forks_safe): 150 forks from a thread other than the main
    one, while the main thread updates, refreshes and prints through a bar redrawing 100 times a second, a
    stopped bar beside it: every child writes its line and ends, all within seconds."""
    script = tmp_path / "forks.py"
    script.write_text(FORKS_UNDER_BARS)
    start = time.monotonic()
    r = subprocess.run([sys.executable, str(script)], env=ENV, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr.strip().endswith("ok"), r.stderr[-1500:]
    assert r.stdout.count("child out") == 150
    assert time.monotonic() - start < 30
