"""Stages run at once on one work directory, as an impatient researcher does (two terminals, or a job scheduler that
starts the next job before the previous one ends): a reader stage started while the stage before it still writes
its output, two runs of one stage on one output, and a holder of a lock killed by SIGKILL.

The overlap windows are hit on purpose, never by sleep timing: a "running" stage is either a real build-shards
(in a thread of this process, or in a subprocess) stopped by its own progress callback until the test lets it go,
or the lock a stage holds while it writes (``io.OutputLock``, an ``flock``: a second open of the lock file in this
process conflicts with it as another process's would), with the files on disk as that stage leaves them then.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from leap_cli.errors import LeapError
from leap_cli.io import OutputLock, ShardReaders
from tests.procs import leap_main
from tests.program_helpers import excerpt_annotations
from tests.programs_llm_server import Reply, ScriptedServer, narration_id_of

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
PID = os.getpid()


# --- a tiny rgb_frames kitchen (tests/test_shards.py's) ------------------------------------------------------------

@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    from tests.test_shards import make_root

    return make_root(tmp_path_factory.mktemp("overlap-kitchen"))


def _settings(split: str = "train"):
    from leap_cli.shards.writer import ShardSettings

    return ShardSettings(split=split, frames=4, short_side=32, max_count=3)


def _programs(work: Path, records: list[dict] | None = None) -> Path:
    from tests.test_shards import program_records, write_programs

    return write_programs(work / "programs" / "train.jsonl", program_records() if records is None else records)


def _build(root: Path, work: Path, split: str = "train", **kw):
    from leap_cli.shards.writer import build_split

    return build_split(root, split, workdir=work, settings=_settings(split), **kw)


class _BuildInThread:
    """A real ``build_split`` of the training shards in a thread, held after its first sample (its progress
    callback waits) until ``go`` is set: while held it has the shards' progress lock and ``.writers.lock``, a
    ``.progress.jsonl`` and a ``.partial`` tar, and no manifest yet, as a build still running has."""

    def __init__(self, root: Path, work: Path, **kw):
        self.reached, self.go, self.error = threading.Event(), threading.Event(), []

        def progress(done, total):
            if 1 <= done < total:
                self.reached.set()
                self.go.wait(30)

        def run():
            try:
                self.result = _build(root, work, progress=progress, **kw)
            except BaseException as e:  # noqa: BLE001 - said by the test
                self.error.append(e)
                self.reached.set()

        self.thread = threading.Thread(target=run, daemon=True)

    def __enter__(self):
        self.thread.start()
        if not self.reached.wait(30) or self.error:
            raise RuntimeError(f"the training build did not reach its first sample: {self.error}")
        return self

    def __exit__(self, *exc):
        self.go.set()
        self.thread.join(30)


# --- 1. build-shards while generate-programs still appends to the program file ------------------------------------

def test_build_shards_beside_a_live_generate_notes_it_and_the_next_build_sees_the_file_grew(root, tmp_path):
    """docs/shards.md: a program file another leap process is still writing is used as it is, with a note to run
    build-shards again once it is done. The manifest counts the records it took, and a later build after the file
    grew takes the new records (it rewrites the shards of their samples)."""
    from tests.test_shards import program_records

    work = tmp_path / "work"
    records = program_records()
    path = _programs(work, records[:2])  # the records generate-programs has written so far
    with OutputLock(path):  # generate-programs, still running
        r = _build(root, work)
    notes = " ".join(r.notes)
    assert f"{path} is still being written by process {PID} on " in notes and "run build-shards again" in notes, r.notes
    assert r.manifest["programs"]["records"] == 2 and r.manifest["counts"]["with_program"] == 2
    _programs(work, records)  # generate-programs finished: two more records
    # (refused as "the programs differ" until build-shards rewrote the shards of the samples whose programs changed;
    # the two new records are not valid: their samples still have no program)
    r = _build(root, work)
    assert r.manifest["programs"]["records"] == 4 and r.manifest["counts"]["with_program"] == 2, r.notes
    assert any(n.startswith("the programs of 2 samples already written changed") for n in r.notes), r.notes
    r = _build(root, work, overwrite=True)
    assert r.manifest["programs"]["records"] == 4 and not any("still being written" in n for n in r.notes)


def test_build_shards_while_the_programs_wait_in_a_submitted_batch_says_so(root, tmp_path, monkeypatch, capsys):
    """Was wrong: build-shards, --batch-file: a build of a split whose programs wait in a submitted Batch
    (programs/train.jsonl.batch.json lists them, no train.jsonl yet) packs every sample without a program and
    says only 'no program file', not that the programs are on their way (writer.build_split reads the batch
    sidecar nowhere; a live writer of an existing file gets the --force note)."""
    work = tmp_path / "work"
    monkeypatch.setenv("LEAP_TEST_KEY", "sk-test-overlap")
    code, out, err = leap_main(monkeypatch, capsys, "generate-programs", "--data", str(root), "--workdir", str(work),
                               "--split", "train", "--backend", "openai", "--model", "m", "--api-key-env",
                               "LEAP_TEST_KEY", "--batch-file", str(tmp_path / "batch.jsonl"))
    pending = work / "programs" / "train.jsonl.batch.json"
    if code != 0 or not pending.is_file() or (work / "programs" / "train.jsonl").exists():
        raise RuntimeError(f"no pending batch to build beside: {code} {out} {err}")
    r = _build(root, work)
    assert r.manifest["counts"]["with_program"] == 0  # what it built: no sample has a program
    assert any("batch" in n.lower() for n in r.notes), r.notes


# --- 2. generate-programs while extract still writes the descriptors -------------------------------------------------

def _clip_server():
    from tests.program_helpers import excerpt_programs

    programs = excerpt_programs(6)
    return ScriptedServer(lambda body, n: Reply(json.dumps(programs[narration_id_of(body)])))


def test_generate_on_descriptors_an_extract_is_writing_pays_once_for_each_and_a_rerun_adds_the_rest(tmp_path, caplog,
                                                                                                  monkeypatch):
    """An extract mid-write: 3 whole records and half of the 4th line on disk, its lock held. generate-programs
    takes the 3 (the half line is dropped, not a malformed-line error), warns naming the extract, and once extract
    has finished the same command asks only for the 3 it had not (none paid twice, each id once in the output)."""
    from leap_cli.epic.annotations import read_segments
    from leap_cli.io import read_jsonl
    from leap_cli.programs.generate import generate_programs
    from leap_cli.programs.prompt import narration_record
    from tests.program_helpers import server_config

    monkeypatch.setenv("LEAP_TEST_KEY", "sk-test-overlap")
    ann = excerpt_annotations(tmp_path, rows=6)
    segs = read_segments(ann / "EPIC_100_validation.csv")
    lines = [json.dumps(narration_record(s)) + "\n" for s in segs]
    path = tmp_path / "descriptors" / "val.jsonl"
    path.parent.mkdir()
    path.write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    with _clip_server() as server:
        with OutputLock(path), caplog.at_level("WARNING"):  # the extract, still writing
            s = generate_programs(server_config(tmp_path, server, concurrency=1))
        assert s.statuses["valid"] == 3 and len(server.requests) == 3
        assert f"{path} is still being written by process {PID} on " in caplog.text
        path.write_text("".join(lines))  # extract finished
        s = generate_programs(server_config(tmp_path, server, concurrency=1))
        assert s.resumed == 3 and s.statuses["valid"] == 3 and len(server.requests) == 6
        assert sorted(server._per_clip.values()) == [1] * 6
    ids = [r["narration_id"] for r in read_jsonl(tmp_path / "programs" / "val.jsonl")]
    assert sorted(ids) == sorted(s.narration_id for s in segs)


def test_generate_started_before_extract_wrote_its_first_descriptor_names_the_extract(tmp_path, caplog):
    """Was wrong: generate-programs started while extract of the split holds descriptors/SPLIT.jsonl's lock but has
    not made the file yet (extract takes the lock and writes the settings sidecar at its settings check, and
    opens the file only after reading the annotations): it silently makes narration-only programs of every
    segment (paid, for an LLM); once extract is done the same command is refused ('the descriptors' extract
    settings: narration-only -> {...}') and --force pays for them all again. programs.generate.load_inputs asks
    writer_of only when the file exists."""
    from leap_cli.io import settings_path
    from leap_cli.programs.generate import GenerateConfig, generate_programs

    excerpt_annotations(tmp_path, rows=4)
    path = tmp_path / "descriptors" / "val.jsonl"
    path.parent.mkdir()
    said = ""
    with OutputLock(path):  # extract past its settings check: lock and sidecar, no record file yet
        settings_path(path).write_text(json.dumps({"split": "val", "components": ["narration", "audio"]}))
        with caplog.at_level("WARNING"):
            try:
                generate_programs(GenerateConfig(workdir=tmp_path, split="val"))
            except LeapError as e:
                said = e.one_line()
    assert f"process {PID}" in said + caplog.text, (said, caplog.text)


# --- 3. readers started while the stage before them writes ------------------------------------------------------------

def test_a_val_build_while_the_training_shards_are_still_being_built_is_refused(root, tmp_path):
    """Was wrong: build-shards --split val started while build-shards --split train (without --shard) is still
    running: the training shards have no manifest.json yet, so val gets a vocabulary of its own (here the class
    files' alone, no conditions) without a word of the running build, and leap train later refuses the pair
    ('the validation shards use another targets vocabulary'). The same overlap with the training split in
    --shard parts is refused ('the training shards are still in --shard parts'); writer.build_split looks only
    for parts (shard_parts of .progress.jsonl), not for a running whole build's lock."""
    work = tmp_path / "work"
    _programs(work)
    said = ""
    with _BuildInThread(root, work):
        try:
            _build(root, work, "val")
        except LeapError as e:
            said = e.one_line()
    assert "training shards" in said or f"process {PID}" in said, said


def test_two_builds_of_one_folder_one_refused_naming_the_other_and_a_killed_holder_frees_it(root, tmp_path):
    """Two build-shards of the same split and folder at once: the second stops in one line naming the first's
    process; SIGKILL of the first (no handler runs) leaves no lock that blocks anyone:
    the second then builds the whole folder, each segment once, and a training or evaluation takes the folder
    (``.writers.lock`` was freed with its holder)."""
    from leap_cli.shards.format import load_manifest

    work = tmp_path / "work"
    _programs(work)
    out = work / "shards" / "train"
    reached = tmp_path / "reached"
    code = (
        "import sys, time\nfrom pathlib import Path\nfrom leap_cli.shards.writer import ShardSettings, build_split\n"
        "def progress(done, total):\n"
        "    if 1 <= done < total:\n"
        f"        Path({str(reached)!r}).touch()\n"
        "        time.sleep(60)\n"
        f"build_split(Path({str(root)!r}), 'train', workdir=Path({str(work)!r}), progress=progress,\n"
        "            settings=ShardSettings(split='train', frames=4, short_side=32, max_count=3))\n")
    first = subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not reached.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert reached.exists(), first.stdout.read().decode() if first.poll() is not None else "not reached"
        with pytest.raises(LeapError) as e:
            _build(root, work)
        assert e.value.message.startswith(f"another leap process is writing this file (process {first.pid} on ")
        assert "\n" not in e.value.one_line()
        first.kill()  # SIGKILL: no handler, no cleanup
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        first.stdout.close()
    r = _build(root, work)
    manifest, _ = load_manifest(out)
    keys = [k for sh in manifest["shards"] for k in sh["keys"]]
    assert r.manifest["counts"]["samples"] == 7 and sorted(keys) == sorted(set(keys)) and len(keys) == 7
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(sh["name"] for sh in manifest["shards"])
    assert not list(out.glob(".*.partial"))
    ShardReaders(out).read().release()


def _test_annotations(work: Path, ids: list[str]) -> None:
    import shutil

    ann = work / "kitchen" / "annotations"
    ann.mkdir(parents=True)
    for name in ("EPIC_100_verb_classes.csv", "EPIC_100_noun_classes.csv"):
        shutil.copy(ROOT / "tests" / "data" / "epic100" / name, ann / name)
    (ann / "EPIC_100_test_timestamps.csv").write_text(
        "narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,"
        "stop_frame\n" + "".join(f"{t},P03,P03_01,00:00:0{i}.00,00:00:0{i}.00,00:00:0{i}.50,{i * 60 + 1},{i * 60 + 30}\n"
                                 for i, t in enumerate(ids)))


@pytest.fixture()
def scored(tmp_path) -> tuple[Path, Path]:
    """A work directory with one run whose test scores leap evaluate wrote earlier: (workdir, its eval/test)."""
    import torch

    from leap_cli.evaluate.scores import save_scores

    ids = ["P03_01_0", "P03_01_1", "P03_01_2"]
    work = tmp_path / "work"
    _test_annotations(work, ids)
    folder = work / "runs" / "r1" / "eval" / "test"
    g = torch.Generator().manual_seed(0)
    save_scores(folder / "scores.pt", ids, torch.randn(3, 97, generator=g), torch.randn(3, 300, generator=g),
                meta={"split": "test", "task": "recognition", "checkpoint": "best", "step": 10})
    return work, folder


SUBMIT = ("submit", "--sls-pt", "0", "--sls-tl", "4", "--sls-td", "3")


def test_submit_takes_the_only_runs_test_scores(scored, monkeypatch, capsys):
    work, folder = scored
    code, out, err = leap_main(monkeypatch, capsys, *SUBMIT, "--workdir", str(work))
    assert code == 0 and (work / "submission.zip").is_file(), out + err
    assert f"scores: {folder / 'scores.pt'} (the only test scores in" in " ".join(out.split())


def test_submit_while_evaluate_rewrites_the_scores_names_the_evaluation(scored, monkeypatch, capsys):
    """Was wrong: leap submit while leap evaluate --split test of the same run is still scoring (it holds
    runs/NAME/eval/test.lock and will replace scores.pt): submit zips the earlier scores.pt (another
    checkpoint's) and says 'submission written', not that an evaluation is writing them (commands/submit.py
    never asks io.writer_of, as build-shards and generate-programs do of their inputs)."""
    work, folder = scored
    with OutputLock(folder):  # leap evaluate --split test, scoring a newer checkpoint
        code, out, err = leap_main(monkeypatch, capsys, *SUBMIT, "--workdir", str(work))
    if code not in (0, 2):
        raise RuntimeError(out + err)
    assert f"process {PID}" in " ".join((out + err).split()), (code, out + err)


def test_a_refused_evaluation_leaves_the_running_ones_folder_and_lock(tmp_path, monkeypatch, capsys):
    """Was wrong: two leap evaluate of one run and split started at once, the first time (no eval/SPLIT yet): the
    one refused ('another leap process is writing this folder') had listed eval/ and eval/SPLIT as folders it
    made (before the other's check_writable made them), and on its way out removes them, empty while the other
    scores, and the lock file eval/SPLIT.lock the other holds (commands/evaluate.py _remove_if_left_empty,
    called for any refusal): a third evaluation into the folder is then not refused, and two write scores.pt and
    metrics.json."""
    import leap_cli.io as io

    work = tmp_path / "work"
    (work / "runs" / "r1" / "checkpoints").mkdir(parents=True)
    dest = work / "runs" / "r1" / "eval" / "test"
    real = io.check_writable
    held: list[OutputLock] = []

    def other_goes_first(folder, *a, **k):  # this run listed what it would make; the other makes it and locks it
        if Path(folder) == dest and not held:
            real(folder, *a, **k)
            held.append(OutputLock(dest).acquire())
        return real(folder, *a, **k)

    monkeypatch.setattr(io, "check_writable", other_goes_first)
    try:
        code, out, err = leap_main(monkeypatch, capsys, "evaluate", "--split", "test", "--run", "r1", "--workdir",
                                   str(work), "--device", "cpu")
        if not (held and code == 2 and "another leap process is writing this folder" in " ".join(err.split())):
            raise RuntimeError(f"not refused beside the other evaluation: {code} {out} {err}")
        left = {"eval/test.lock": dest.with_name("test.lock").exists(), "eval/test/": dest.is_dir()}
        third = ""
        try:  # a third evaluation into the folder, while the other still scores
            OutputLock(dest).acquire().release()
        except LeapError as e:
            third = e.message
        assert "another leap process is writing this" in third, f"a third evaluation took the lock; left: {left}"
    finally:
        for lock in held:
            lock.release()
