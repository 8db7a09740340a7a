"""A researcher on a Slurm cluster following README.md and docs/options.md literally: generate-programs and
build-shards run as job arrays of `--shard i/3` parts started together on one work directory, the merge commands
pasted as the messages print them, the test split done as the train split (the docs' loop over the splits), and a
part of another count started beside a part of 3 that is still starting."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.kitchens import config_kitchen_copy
from tests.procs import run_together

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
       "NO_COLOR": "1", "COLUMNS": "200"}


def _leap(*args) -> list[str]:
    return [sys.executable, "-m", "leap_cli", *map(str, args)]


def _run(cwd: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run(_leap(*args), cwd=cwd, env=ENV, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def arrays(tmp_path_factory):
    """A 4-video kitchen (train: P01_01, P02_01; val: P03_01; test: P02_02; 2 segments each) in `top/w/kitchen`,
    then the generate-programs array (offline backend, narration-only records: no extract) of 3 parts for the train
    split and for the test split, all six parts started at once: [(exit status, output)] per split."""
    from leap_cli.synth.kitchen import KitchenConfig

    top = tmp_path_factory.mktemp("cluster")
    config_kitchen_copy(tmp_path_factory, top / "w" / "kitchen", KitchenConfig(videos=4, segments_per_video=2, width=64, height=48))
    cmds = [_leap("generate-programs", "--workdir", "w", "--split", split, "--shard", f"{i}/3")
            for split in ("train", "test") for i in range(3)]
    res = run_together(cmds, ENV, top, 120)
    return top, {"train": res[:3], "test": res[3:]}


def test_train_array_then_build_shards_names_the_merge_and_the_pasted_command_makes_the_whole_set(arrays):
    top, res = arrays
    for rc, text in res["train"]:
        assert rc == 0 and "Traceback" not in text, text[-2000:]
    r = _run(top, "build-shards", "--workdir", "w", "--split", "train")
    assert r.returncode == 2, r.stdout + r.stderr
    m = re.search(r"merge them: (cat \S+ > \S+)\)", r.stderr)
    assert m, r.stderr
    assert m.group(1) == "cat w/programs/train.shard*of3.jsonl > w/programs/train.jsonl"
    subprocess.run(["bash", "-c", m.group(1)], cwd=top, check=True)  # pasted as printed
    ids = [json.loads(x)["narration_id"] for x in (top / "w/programs/train.jsonl").read_text().splitlines()]
    assert sorted(ids) == ["P01_01_0", "P01_01_1", "P02_01_0", "P02_01_1"]  # each segment once, none lost
    r = _run(top, "build-shards", "--workdir", "w", "--split", "train")
    assert r.returncode == 0, r.stdout + r.stderr
    counts = json.loads((top / "w/shards/train/manifest.json").read_text())["counts"]
    assert (counts["samples"], counts["with_program"], counts["skipped"]) == (4, 4, 0)


def test_test_split_array_with_the_offline_backend_leaves_build_shards_free_to_go_on_without_programs(arrays):
    """Was wrong: generate-programs (offline) refuses the test split only in a part that holds segments: the empty
    parts write empty part files, which then block build-shards --split test ('once every part is done, merge
    them'), though part 0's refusal says to go on without test programs."""
    top, res = arrays
    (rc0, text0), *empty = res["test"]
    assert rc0 == 2 and "go on without them: build-shards, training and submission need no test programs" in text0
    # parts 1/3 and 2/3 hold no test video: either they are refused as part 0 is, or what they leave is no obstacle
    r = _run(top, "build-shards", "--workdir", "w", "--split", "test")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((top / "w/shards/test/manifest.json").read_text())["counts"]["samples"] == 2


BARRIER = textwrap.dedent("""
    # leap build-shards, the moment after its check of the folder's part counts held until the other job of the
    # array has made the same check (or 4 s): two array tasks that start together on a slow shared file system
    import os, sys, time
    from pathlib import Path
    import leap_cli.shards.writer as writer

    barrier = Path(os.environ["LEAP_TEST_BARRIER"])
    checked = writer.check_part_count

    def check_part_count(folder, count):
        checked(folder, count)
        (barrier / str(os.getpid())).touch()
        deadline = time.time() + 4
        while len(list(barrier.iterdir())) < 2 and time.time() < deadline:
            time.sleep(0.02)

    writer.check_part_count = check_part_count
    from leap_cli.cli import main
    sys.argv = ["leap", *sys.argv[1:]]
    main()
""")


def test_build_shards_part_of_another_count_starting_beside_a_part_of_3_is_refused(arrays, tmp_path):
    """Was wrong: build-shards checks the folder's part counts (check_part_count) before its part makes its .progress
    file, outside any lock: a part of 2 and a part of 3 starting together both pass and both build into one folder."""
    top, _ = arrays
    script = tmp_path / "barrier_leap.py"
    script.write_text(BARRIER)
    (tmp_path / "barrier").mkdir()
    env = {**ENV, "LEAP_TEST_BARRIER": str(tmp_path / "barrier")}
    out = tmp_path / "shards"
    cmds = [[sys.executable, str(script), "build-shards", "--workdir", str(tmp_path / "w"), "--data",
             str(top / "w/kitchen"), "--split", "train", "--out", str(out), "--shard", shard]
            for shard in ("0/3", "1/2")]
    res = run_together(cmds, env, top, 120)
    for _, text in res:
        assert "Traceback" not in text, text[-2000:]
    counts = {m.group(1) for p in out.glob("manifest.shard*.json") if (m := re.search(r"of(\d+)\.json$", p.name))}
    assert len(counts) <= 1, (sorted(p.name for p in out.iterdir()), [t[-600:] for _, t in res])
    assert any(rc == 2 and "parts" in text for rc, text in res), [t[-600:] for _, t in res]


def test_a_part_is_marked_begun_as_its_count_is_checked(arrays, tmp_path, monkeypatch, capsys):
    """The progress file that marks a part begun is made under the folder's lock, with the count's check, not
    later by the appender: a part of another count that checks in between is refused (the two-process test above
    only catches it when the appender is slow)."""
    import leap_cli.shards.writer as writer
    from leap_cli.errors import LeapError
    from leap_cli.shards.format import check_part_count
    from tests.procs import leap_main

    top, _ = arrays
    out, seen = tmp_path / "shards", []
    changed = writer._video_changed

    def right_after_the_lock(*a, **kw):  # (the first call past the lock of a --shard part)
        files = sorted(p.name for p in out.iterdir() if p.name.startswith(".progress"))
        try:
            check_part_count(out, 3)
            seen.append((files, None))
        except LeapError as e:
            seen.append((files, str(e)))
        return changed(*a, **kw)

    programs = tmp_path / "train.jsonl"  # (the parts merged: the test above pastes the merge into the workdir)
    programs.write_text("".join(p.read_text() for p in sorted((top / "w/programs").glob("train.shard*of3.jsonl"))))
    monkeypatch.setattr(writer, "_video_changed", right_after_the_lock)
    code, text, err = leap_main(monkeypatch, capsys, "build-shards", "--workdir", str(top / "w"), "--data",
                                str(top / "w/kitchen"), "--split", "train", "--out", str(out), "--shard", "0/2",
                                "--programs", str(programs))
    assert code == 0, (text + err)[-2000:]
    (files, refused), = seen
    assert files == [".progress.shard0of2.jsonl"] and refused and "--shard i/2 parts" in refused, seen
