"""README and docs/ read as a newcomer with EPIC-KITCHENS-100 on disk reads them, against `leap CMD --help` and what
the stages do (session 63). Was wrong: `leap extract --frame-cache DIR` (which extract's own disk-full advice names)
wrote a cache that build-shards never read, having no option to find it; options.md's list of the options taken in
any case left out one of them. (README's Documentation table naming every command: test_attack_docs_claims.py.)"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.kitchens import kitchen_copy
from tests.procs import leap_main, run_leap

ROOT = Path(__file__).resolve().parents[1]


def _leap(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return run_leap(cwd, *args, columns=200)


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """A 3-video kitchen whose train split extract described with its frame cache outside the work directory (as
    extract's advice for a full disk says: `give --frame-cache a folder on another disk`)."""
    root = tmp_path_factory.mktemp("fc")
    kitchen_copy(tmp_path_factory, root / "w" / "kitchen", "--videos", 3, "--segments", 4)
    args = ("extract", "--workdir", "w", "--split", "train", "--components", "narration", "--frame-cache", "scratch/fc")
    r = _leap(root, *args)
    assert r.returncode == 0, (args, r.stdout[-2000:], r.stderr[-2000:])
    assert any((root / "scratch/fc").glob("*/*.jpgs")) and not (root / "w/frame-cache").exists()
    return root


def test_build_shards_copies_the_frames_of_a_frame_cache_extract_wrote_elsewhere(cached):
    """Was wrong: build-shards looked in WORKDIR/frame-cache only (leap_cli/shards/writer.py build_split took a
    frame_cache the command never passed): the cache of `extract --frame-cache DIR` was written and never read, and
    every sample decoded again without a word. Now build-shards finds DIR in extract's settings beside its output
    (descriptors/train.config.json), or takes `--frame-cache DIR`: the same bytes as decoding."""
    (cached / "scratch/empty").mkdir(exist_ok=True)
    runs = {"decoded": ("--frame-cache", "scratch/empty"), "found": (), "given": ("--frame-cache", "scratch/fc")}
    for name, extra in runs.items():
        r = _leap(cached, "build-shards", "--workdir", "w", "--split", "train", "--out", f"w/shards/{name}", *extra)
        assert r.returncode == 0, (name, r.stdout[-2000:], r.stderr[-2000:])
        # (found: the absolute path extract recorded; given: the path as given)
        said = re.search(r"frames read from extract's frame cache \S*scratch/fc ", " ".join(r.stdout.split())) is not None
        assert said == (name != "decoded"), (name, r.stdout)
    tars = sorted(p.name for p in (cached / "w/shards/decoded").glob("*.tar"))
    assert tars
    for name in ("found", "given"):
        assert tars == sorted(p.name for p in (cached / "w/shards" / name).glob("*.tar"))
        for tar in tars:
            assert (cached / "w/shards/decoded" / tar).read_bytes() == (cached / "w/shards" / name / tar).read_bytes()


def test_build_shards_default_frame_cache_is_the_one_extract_recorded(tmp_path):
    """build-shards' default: the one folder that extract's settings of this split (and its --shard parts') name,
    where it is there; else WORKDIR/frame-cache (none recorded, a folder gone, two parts naming two folders)."""
    import json

    from leap_cli.commands.shards import extracts_frame_cache

    work, desc = tmp_path / "w", tmp_path / "w/descriptors"
    desc.mkdir(parents=True)
    assert extracts_frame_cache(work, "train")[0] is None
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (desc / "train.shard0of2.config.json").write_text(json.dumps({"frame_cache": str(a), "cache_frames": 16}))
    (desc / "val.config.json").write_text(json.dumps({"frame_cache": str(tmp_path), "cache_frames": 16}))
    assert extracts_frame_cache(work, "train")[0] == a
    (desc / "train.shard1of2.config.json").write_text(json.dumps({"frame_cache": str(b), "cache_frames": 16}))
    assert extracts_frame_cache(work, "train")[0] == a  # (b is not there)
    b.mkdir()
    assert extracts_frame_cache(work, "train")[0] is None  # (two folders: neither is taken for the other's)
    (desc / "train.shard1of2.config.json").write_text(json.dumps({"frame_cache": str(a), "cache_frames": 16}))
    assert extracts_frame_cache(work, "train")[0] == a
    (desc / "train.shard1of2.config.json").write_text("{not json")
    assert extracts_frame_cache(work, "train")[0] == a
    assert extracts_frame_cache(work, "val")[0] == tmp_path
    (desc / "val.config.json").write_text(json.dumps({"frame_cache": str(tmp_path), "cache_frames": 0}))
    assert extracts_frame_cache(work, "val")[0] is None  # (--cache-frames 0: no cache written)


@pytest.mark.parametrize("extra,said", [((), "no such folder"), (("--task", "anticipation"), "recognition frames")])
def test_build_shards_refuses_a_frame_cache_it_would_not_read(cached, monkeypatch, capsys, extra, said):
    """A --frame-cache folder that does not exist (a typo: every sample decoded, as if none were given), or given to
    an anticipation build (which decodes its clips), is one line naming the option, before anything is written."""
    monkeypatch.chdir(cached)
    code, out, err = leap_main(monkeypatch, capsys, "build-shards", "--workdir", "w", "--split", "train", "--out",
                               "w/shards/refused", "--frame-cache", "scratch/typo" if not extra else "scratch/fc",
                               *extra)
    text = " ".join((out + err).split())
    assert code == 2 and "--frame-cache" in text and said in text, text
    assert not (cached / "w/shards/refused").exists()


def _case_blind_options() -> dict[str, set[str]]:
    """command -> the options whose value is lowercased before use (``common.lowercase``: taken in any case)."""
    from leap_cli.cli import app
    from leap_cli.common import lowercase

    found: dict[str, set[str]] = {}
    for info in app.registered_commands:
        for p in inspect.signature(info.callback).parameters.values():
            opt = p.default
            if getattr(opt, "callback", None) is lowercase:
                found.setdefault(info.name, set()).update(d for d in opt.param_decls if d.startswith("--"))
    return found


def test_options_md_names_every_option_taken_in_any_case():
    """Was wrong: options.md's `--split` row lists the choice options and name lists "taken in any case"; it left
    out `ablate --anticipation-sources`, which is lowercased as `--sources` is."""
    text = (ROOT / "docs/options.md").read_text()
    listed = " ".join(text[text.index("the values of choice options"):text.index("are taken in any case")].split())
    found = _case_blind_options()
    assert sum(len(v) for v in found.values()) >= 10  # (the callbacks were found)
    missing = sorted(f"{c} {o}" for c, opts in found.items() for o in opts
                     if not re.search(re.escape(o) + r"(?![\w-])", listed))
    assert missing == [], missing


def test_the_number_of_runs_the_ablation_help_and_train_md_state_is_the_default_matrix():
    """ablate --help (added: it said neither the size nor the time) and train.md's `leap ablate` line state the
    default matrix's runs: its cells (leap_cli.train.ablate.plan_cells) times its seeds."""
    import typer

    from leap_cli.cli import app
    from leap_cli.train.ablate import AblateConfig, plan_cells

    cfg = AblateConfig()
    runs = len(plan_cells(cfg.sources, cfg.anticipation, cfg.anticipation_sources)) * len(cfg.seeds)
    helped = " ".join((typer.main.get_command(app).commands["ablate"].help or "").split())
    said = re.search(r"(\d+) runs at the defaults", helped)
    assert said and int(said[1]) == runs, (helped, runs)
    train_md = (ROOT / "docs/train.md").read_text()
    line = next(x for x in train_md.splitlines() if x.startswith("leap ablate ") and "runs" in x)
    assert re.search(rf"\b{runs} runs\b", line), (line, runs)


def test_the_quickstarts_make_with_another_python_makes_the_venv_with_it(tmp_path):
    """README's Quickstart (added: `python3` older than 3.11, as on Ubuntu 22.04, failed the install with no word on
    what to do): `make demo PY=...` as it writes it makes the `.venv` with that interpreter, then runs `leap demo`
    (`make -n`: nothing is run)."""
    import shutil

    if shutil.which("make") is None:
        pytest.skip("no make")
    readme = " ".join((ROOT / "README.md").read_text().split())
    given = re.search(r"`make demo (PY=[\w.]+)`", readme)
    assert given, "README names no make demo PY=..."
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}  # (under make test)
    r = subprocess.run(["make", "--no-print-directory", "-n", "demo", given[1], f"VENV={tmp_path / 'v'}"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"{given[1].split('=')[1]} -m venv {tmp_path / 'v'}", lines
    assert lines[-1].startswith(f"{tmp_path / 'v'}/bin/leap demo"), lines
