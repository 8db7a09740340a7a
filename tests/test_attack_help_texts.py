"""Does every `leap --help` teach? Each command's help read as a newcomer reads it (rendered at a terminal's
width), its example, the defaults and values its prose states against the code, the options its prose names, and
the paths it says the stages write, checked on a small synthetic kitchen. Faults found were strict xfails (fixed)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.procs import leap_main


OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def _cli():
    import typer

    from leap_cli.cli import app

    return typer.main.get_command(app)


def _commands() -> list[str]:
    return list(_cli().commands)


def _options(cmd) -> set[str]:
    return {o for p in cmd.params for o in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])]
            if o.startswith("-")}


def _param(command: str, name: str):
    return next(p for p in _cli().commands[command].params if p.name == name)


def _help(monkeypatch, capsys, tmp_path, command: str, columns: int = 100) -> str:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", str(columns))
    monkeypatch.setenv("NO_COLOR", "1")
    code, out, err = leap_main(monkeypatch, capsys, command, "--help")
    assert code in (0, None), err
    return out


# -- 1. every command's rendered help (what `leap X --help` prints, not the attribute behind it)

@pytest.mark.parametrize("command", _commands())
def test_the_rendered_help_ends_with_a_runnable_looking_example(monkeypatch, capsys, tmp_path, command):
    """cli.py: each command's --help ends with one example; rendered at 100 columns its last text is that example,
    and the example (its note's options too) parses as the command's own arguments."""
    from leap_cli.cli import EXAMPLES

    out = _help(monkeypatch, capsys, tmp_path, command)
    tail = " ".join(out[out.rindex("╯") + 1:].split())
    assert tail.startswith(f"Example: leap {command}"), tail
    example = " ".join(EXAMPLES[command].split())
    assert tail == f"Example: {example}", (tail, example)
    line, _, note = EXAMPLES[command].partition("    (")
    args = shlex.split(line)[2:]
    cmd = _cli().commands[command]
    ctx = cmd.make_context(command, list(args), resilient_parsing=False)  # raises on an unknown option or bad type
    assert ctx.params
    assert set(OPTION.findall(note)) <= _options(cmd), note


def test_every_option_a_help_text_names_is_an_option_of_its_command_or_of_the_command_it_names():
    """An option named in a help's prose (`--span-frames`, `--anticipation-context`) is the command's own; one of
    another command is named with it (`= build-shards --frames`)."""
    commands = _cli().commands
    bad = []
    for name, cmd in commands.items():
        texts = [cmd.help or ""] + [getattr(p, "help", None) or "" for p in cmd.params]  # (the example: above)
        for text in texts:
            for m in OPTION.finditer(text):
                before = text[:m.start()].split()
                other = before[-1] if before else ""
                if other in commands and other != name:
                    ok = m.group(1) in _options(commands[other])
                else:
                    ok = m.group(1) in _options(cmd)
                if not ok:
                    bad.append((name, m.group(1), text[:80]))
    assert not bad, bad


def test_the_top_help_lists_every_command_and_the_default_workdir(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "100")
    code, out, _ = leap_main(monkeypatch, capsys, "--help")
    assert code in (0, None)
    for name in _commands():
        assert f" {name} " in out, name
    assert "(default ./leap-work)" in " ".join(out.split())
    from leap_cli.common import DEFAULT_WORKDIR

    assert Path(DEFAULT_WORKDIR) == Path("leap-work")


# -- 2. defaults and values the prose states (no `[default: ...]` of typer's: the text is all the user sees)

def test_the_defaults_stated_in_prose_are_the_codes():
    from leap_cli.commands.data import LENGTHS_SHOWN
    from leap_cli.programs.batch import BATCH_MAX_MB, BATCH_MAX_REQUESTS
    from leap_cli.programs.targets import DEFAULT_MAX_CONDITIONS

    assert f"default {BATCH_MAX_REQUESTS}" in _param("generate-programs", "batch_max_requests").help
    assert f"default {BATCH_MAX_MB:g}" in _param("generate-programs", "batch_max_mb").help
    assert f"default {DEFAULT_MAX_CONDITIONS}" in _param("build-shards", "max_conditions").help
    assert f"default the first {LENGTHS_SHOWN}" in _param("info", "show_all").help
    # extract's frame cache is "= build-shards --frames / --short-side": the same defaults, or the cache is unused
    assert _param("extract", "cache_frames").default == _param("build-shards", "frames").default
    assert _param("extract", "cache_short_side").default == _param("build-shards", "short_side").default
    # "--backend offline (the default)"; "--exemplars (default prompts/exemplars)" is the package's folder
    assert _param("generate-programs", "backend").default in (None, "offline")
    from leap_cli.programs.prompt import load_exemplars  # noqa: F401  (the loader the default names)
    from leap_cli.resources import resource_dir

    assert (resource_dir("prompts") / "exemplars").is_dir() and (resource_dir("prompts") / "system.md").is_file()


def test_max_shard_size_takes_the_spellings_its_docs_give():
    from leap_cli.commands.shards import parse_size

    assert parse_size(_param("build-shards", "max_shard_size").default) == 1024 ** 3
    assert parse_size("500MB") == 500 * 1024 ** 2 and parse_size("64k") == 64 * 1024 and parse_size("123") == 123


def test_every_split_help_names_the_splits():
    """Was wrong: --split of check-shards and validate-programs does not say its values (train, val, test): a newcomer
    cannot learn what SPLIT is from that help"""
    for name, cmd in _cli().commands.items():
        for p in cmd.params:
            if p.name == "split":
                text = p.help or ""
                assert all(s in text for s in ("train", "val", "test")), (name, text)


def test_submit_help_says_the_supervision_levels_are_required_to_write():
    """Was wrong: submit --help never says that --sls-pt/--sls-tl/--sls-td are required to write a zip (docs/evaluate-
    submit.md: 'required when writing'; leap_cli/commands/submit.py refuses without them)"""
    cmd = _cli().commands["submit"]
    texts = [cmd.help or ""] + [_param("submit", n).help for n in ("sls_pt", "sls_tl", "sls_td")]
    assert any("required" in t or "must" in t for t in texts), texts


def test_evaluate_run_help_states_its_default():
    """Was wrong: evaluate --run states no default, though without --run the work directory's only run is evaluated
    (commands/evaluate.py only_one; docs say it)"""
    text = _param("evaluate", "run").help
    assert "default" in text and "only run" in text, text


def test_build_shards_max_steps_help_states_its_default():
    """Was wrong: build-shards --max-steps states no default (docs/shards.md: sized from the longest training program,
    at most 48), --max-conditions beside it does"""
    text = _param("build-shards", "max_steps").help
    assert "default" in text, text


@pytest.mark.parametrize("columns", [80, 100])
def test_no_help_is_cut(monkeypatch, capsys, tmp_path, columns):
    """Was wrong: rich cuts long words of a help with '…'; at 80 columns option names (--anticipation-cont…, --allow-
    partial…, --segments-…) and default paths (WORKDIR/descriptors/…) in 8 commands; at 100 still extract's --out
    and --components defaults, generate-programs' --max-retries, build-shards' --vocab, demo's --force"""
    cut = {c: [x.strip(" │") for x in _help(monkeypatch, capsys, tmp_path, c, columns=columns).splitlines()
               if "…" in x] for c in _commands()}
    cut = {c: lines for c, lines in cut.items() if lines}
    assert not cut, cut


def test_no_help_is_cut_at_120_columns(monkeypatch, capsys, tmp_path):
    for c in _commands():
        out = _help(monkeypatch, capsys, tmp_path, c, columns=120)
        assert "…" not in out, (c, [x for x in out.splitlines() if "…" in x])


def test_train_refuses_a_flag_and_a_set_that_contradict_it(monkeypatch, capsys, tmp_path):
    """Was wrong: train --no-program-loss ('same as --set loss.program_loss=false') with --set loss.program_loss=true
    is taken without a word, the flag winning (commands/train.py appends its --set after the user's)"""
    monkeypatch.chdir(tmp_path)
    code, out, err = leap_main(monkeypatch, capsys, "train", "--config", "tiny-synthetic", "--workdir", str(tmp_path / "w"),
                               "--no-program-loss", "--set", "loss.program_loss=true")
    assert code == 2 and "--no-program-loss" in err and "loss.program_loss" in err, err
    assert not (tmp_path / "w" / "runs").exists()


# -- 3. where the help says the stages read and write, on a small kitchen (defaults only: --workdir alone)

@pytest.fixture(scope="module")
def kitchen_work(tmp_path_factory):
    import os
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("helpwork")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    top = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = str(top) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")

    def leap(*args):
        r = subprocess.run([sys.executable, "-m", "leap_cli", *args], cwd=root, env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, (args, r.stdout[-2000:], r.stderr[-2000:])
        return r

    leap("demo-data", "--workdir", "w", "--videos", "3", "--segments", "2")
    leap("extract", "--split", "train", "--components", "narration", "--workdir", "w")
    leap("generate-programs", "--split", "train", "--workdir", "w")
    leap("validate-programs", "--split", "train", "--workdir", "w", "--html", "programs.html")
    leap("build-shards", "--split", "train", "--workdir", "w", "--frames", "2", "--short-side", "32")
    leap("check-shards", "--split", "train", "--workdir", "w")
    return root


def test_the_stages_write_where_their_help_says(kitchen_work):
    w = kitchen_work / "w"
    assert (w / "kitchen" / "annotations" / "EPIC_100_train.csv").is_file()  # demo-data: WORKDIR/kitchen
    assert (w / "descriptors" / "train.jsonl").is_file()  # extract: descriptors/{split}.jsonl
    assert (w / "frame-cache").is_dir()  # extract --frame-cache: default WORKDIR/frame-cache
    assert (w / "programs" / "train.jsonl").is_file()  # generate-programs: WORKDIR/programs/SPLIT.jsonl
    assert (w / "programs" / "train.report.json").is_file()  # validate-programs: WORKDIR/programs/SPLIT.report.json
    assert (kitchen_work / "programs.html").is_file()  # --html: the path given (the current folder's)
    assert (w / "shards" / "train" / "manifest.json").is_file()  # build-shards: WORKDIR/shards/SPLIT, manifest.json
    assert not (kitchen_work / "leap-work").exists()  # nothing under the default work directory


def test_the_example_of_show_runs_on_the_kitchen(kitchen_work, monkeypatch, capsys):
    """`leap show P01_01_0 --html page.html` (its --help's example) on the kitchen its pipeline made."""
    monkeypatch.chdir(kitchen_work)
    code, out, err = leap_main(monkeypatch, capsys, "show", "P01_01_0", "--html", "page.html", "--workdir", "w")
    assert code in (0, None), err
    assert "P01_01_0" in out and (kitchen_work / "page.html").is_file()
