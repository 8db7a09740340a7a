"""README and docs/ read as a newcomer with EPIC-KITCHENS-100 on disk reads them, against `leap CMD --help` and what
the stages do (session 63). Was wrong: `leap extract --frame-cache DIR` (which extract's own disk-full advice names)
wrote a cache that build-shards never read, having no option to find it; options.md's list of the options taken in
any case left out one of them. (README's Documentation table naming every command: test_attack_docs_claims.py.)"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import leap_main

ROOT = Path(__file__).resolve().parents[1]


def _leap(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "COLUMNS": "200", "NO_COLOR": "1"}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run([sys.executable, "-m", "leap_cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """A 3-video kitchen whose train split extract described with its frame cache outside the work directory (as
    extract's advice for a full disk says: `give --frame-cache a folder on another disk`)."""
    root = tmp_path_factory.mktemp("fc")
    for args in (("demo-data", "--workdir", "w", "--videos", "3", "--segments", "4"),
                 ("extract", "--workdir", "w", "--split", "train", "--components", "narration",
                  "--frame-cache", "scratch/fc")):
        r = _leap(root, *args)
        assert r.returncode == 0, (args, r.stdout[-2000:], r.stderr[-2000:])
    assert any((root / "scratch/fc").glob("*/*.jpgs")) and not (root / "w/frame-cache").exists()
    return root


def test_build_shards_copies_the_frames_of_a_frame_cache_extract_wrote_elsewhere(cached):
    """Was wrong: build-shards looked in WORKDIR/frame-cache only (leap_cli/shards/writer.py build_split took a
    frame_cache the command never passed): the cache of `extract --frame-cache DIR` was written and never read, and
    every sample decoded again without a word. Now `build-shards --frame-cache DIR` reads it, to the same bytes."""
    plain = _leap(cached, "build-shards", "--workdir", "w", "--split", "train", "--out", "w/shards/plain")
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert "frame cache" not in plain.stdout  # (nothing under WORKDIR/frame-cache: decoded, said nowhere)
    r = _leap(cached, "build-shards", "--workdir", "w", "--split", "train", "--out", "w/shards/cached",
              "--frame-cache", "scratch/fc")
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    assert "frames read from extract's frame cache scratch/fc" in " ".join(r.stdout.split()), r.stdout
    tars = sorted(p.name for p in (cached / "w/shards/plain").glob("*.tar"))
    assert tars and tars == sorted(p.name for p in (cached / "w/shards/cached").glob("*.tar"))
    for name in tars:
        assert (cached / "w/shards/plain" / name).read_bytes() == (cached / "w/shards/cached" / name).read_bytes()


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
    r = subprocess.run(["make", "-n", "demo", given[1], f"VENV={tmp_path / 'v'}"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"{given[1].split('=')[1]} -m venv {tmp_path / 'v'}", lines
    assert lines[-1].startswith(f"{tmp_path / 'v'}/bin/leap demo"), lines
