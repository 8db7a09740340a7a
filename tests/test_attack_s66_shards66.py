"""build-shards updating a folder in place, attacked (helper shards66, session 66).

1. The summary table said ``resumed N`` of every shard after an in-place update, where some were rewritten: its
   "this run" column now tells shards written now, rewritten in place and kept apart, on every path (a fresh build,
   a resume after a crash, new programs, a video downloaded again, a re-run with nothing to do).

The tiny root of test_shards (7 training samples, 3 per shard), built through the CLI in this process.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.procs import leap_here
from tests.test_attack_s65_moved65 import _replace, files  # noqa: F401 - (files: a fixture)
from tests.test_attack_s65_update65 import _records, root, vocab  # noqa: F401 - (root, vocab: fixtures)
from tests.test_shards import build, write_programs


@pytest.fixture
def leap(monkeypatch, capsys):
    return leap_here(monkeypatch, capsys)


def _build_cli(leap, data: Path, work: Path, *extra) -> str:
    r = leap("build-shards", "--data", data, "--workdir", work, "--split", "train", "--frames", 4, "--short-side", 32,
             "--max-count", 3, *extra)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def _this_run(stdout: str) -> str:
    """The summary table's "this run" cell (its last column, joined where rich wrapped it)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("┡"))
    cells = []
    for line in lines[start + 1:]:
        if line.startswith("└"):
            break
        cells.append(line.strip("│ ").rsplit("│", 1)[-1].strip())
    return " ".join(c for c in cells if c)


def test_the_table_tells_written_rewritten_and_kept_shards_apart(root, vocab, tmp_path, leap):  # noqa: F811
    work = tmp_path / "w"
    write_programs(work / "programs" / "train.jsonl", _records(False))
    assert _this_run(_build_cli(leap, root, work, "--vocab", vocab)) == "3 written"
    assert _this_run(_build_cli(leap, root, work, "--vocab", vocab)) == "3 kept"
    write_programs(work / "programs" / "train.jsonl", _records(True))  # (one sample's program, in shard 0)
    assert _this_run(_build_cli(leap, root, work, "--vocab", vocab)) == "1 rewritten, 2 kept"


def test_the_table_of_a_resume_after_a_crash_counts_the_kept_shard_alone(root, tmp_path, leap):  # noqa: F811
    work = tmp_path / "w"

    def interrupt(done, total):
        if done >= 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # (its first shard of 3 complete; the CLI's settings: no context)
        build(root, work, progress=interrupt, context=0)
    assert _this_run(_build_cli(leap, root, work)) == "2 written, 1 kept"


def test_the_table_after_a_video_downloaded_again(files, tmp_path, leap):  # noqa: F811
    root, work = tmp_path / "k", tmp_path / "w"
    shutil.copytree(files[0], root)
    _build_cli(leap, root, work)
    _replace(root, files)
    # shards of 3: P01_01_0-2 | P01_01_3, P01_02_0-1 | P01_02_2: P01_02's samples taken out of shards 1 and 2
    assert _this_run(_build_cli(leap, root, work)) == "1 written, 2 rewritten, 1 kept"
