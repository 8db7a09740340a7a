"""The options and commands that leap's own words tell a user to type must exist: every ``--option`` and every
``leap COMMAND`` named in a string of leap_cli/ (errors, fixes, notes, warnings, --help texts, docstrings), the
``--set KEY=...`` keys they name, the command lines leap builds for the user or for its own stages (``leap demo``'s
plan, evaluate's ``leap submit`` line, the --help examples), the option names a settings refusal says, and the same
in README.md and docs/*.md. Checked against the Typer app's real commands and options and the training config's
real keys, not against a copied list. The one name found wrong (ablate's help) was a strict xfail until fixed."""

from __future__ import annotations

import ast
import dataclasses
import re
import shlex
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "leap_cli"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Options of other programs that leap's messages and docs name on purpose (each where it is named):
EXTERNAL_OPTIONS = {
    # torchrun (leap_cli/train/distributed.py, train/loop.py, README and docs/train.md's multi-GPU launches)
    "--nproc_per_node", "--nnodes", "--standalone", "--master_port", "--rdzv_backend", "--rdzv_endpoint", "--rdzv_id",
    "--node_rank",
    # pip (README's install notes)
    "--no-deps", "--index-url", "--extra-index-url", "--upgrade", "--editable", "--constraint",
    # pytest
    "--maxfail", "--durations", "--dist", "--maxprocesses",  # (and pytest-xdist's: the Makefile, docs/development.md)
    # git, which `leap --version` runs (leap_cli/cli.py)
    "--no-optional-locks", "--format", "--date", "--porcelain",
    # docker run (the CPU quota of common.py / docs/options.md; the shared memory of a DataLoader worker's bus error,
    # shards/dataset.py, docs/troubleshooting.md), Slurm's scancel and srun (signals.py, docs/train.md)
    "--cpus", "--shm-size", "--ipc", "--signal", "--nodes", "--ntasks-per-node",
    # llama.cpp's llama-server (README), tensorboard (docs/train.md)
    "--port", "--logdir",
    # the repository's benchmark scripts (README, docs/model.md): their argparse options, checked below
    "--no-write", "--official",
    # click's own, on every command
    "--help",
}
BENCHMARK_OPTIONS = {"--no-write", "--official"}

OPTION = re.compile(r"(?<![\w/.$-])(--[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*)")


@lru_cache(maxsize=None)
def _cli():
    import typer

    from leap_cli.cli import app

    return typer.main.get_command(app)


def _options(cmd) -> set[str]:
    return {o for p in cmd.params for o in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])]
            if o.startswith("-")}


@lru_cache(maxsize=None)
def _command_options() -> dict[str, frozenset[str]]:
    return {name: frozenset(_options(cmd)) for name, cmd in _cli().commands.items()}


@lru_cache(maxsize=None)
def _leap_options() -> frozenset[str]:
    """Every option of every command, and leap's own (--debug, -v, --version)."""
    return frozenset(set().union(*_command_options().values()) | _options(_cli()))


def _texts(path: Path):
    """(line, text) of every string literal of a module: a plain string as it is, an f-string with each
    replacement field as ``{}`` (its parts joined, so that ``f"--set {key}=..."`` reads as one string)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    inner = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            yield node.lineno, "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in inner:
            yield node.lineno, node.value


@lru_cache(maxsize=None)
def _package_texts() -> tuple[tuple[str, int, str], ...]:
    return tuple((str(f.relative_to(ROOT)), line, text) for f in sorted(PACKAGE.rglob("*.py"))
                 for line, text in _texts(f))


def _where(text: str, start: int, end: int) -> str:
    return " ".join(text[max(0, start - 50):end + 30].split())


# -- 1. every --option leap names exists

def test_every_option_named_in_leap_cli_strings_is_an_option_of_leap_or_of_a_named_tool():
    known = _leap_options() | EXTERNAL_OPTIONS
    found, bad = 0, []
    for path, line, text in _package_texts():
        for m in OPTION.finditer(text):
            found += 1
            if m.group(1) not in known:
                bad.append(f"{path}:{line}: {m.group(1)} in {_where(text, m.start(), m.end())!r}")
    assert found > 500, found  # the collection works: leap's messages name options by the hundred
    assert bad == []


def test_the_external_list_holds_only_names_leap_does_not_have_itself():
    """A leap option in the external list would hide its misspelling elsewhere; the benchmark scripts' options
    named in the docs are theirs."""
    assert EXTERNAL_OPTIONS & _leap_options() == set()
    bench = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "benchmarks").glob("*.py"))
    for option in BENCHMARK_OPTIONS:
        assert f'"{option}"' in bench, option


# -- 2. every `leap COMMAND` leap names is a command, and the options written after it are that command's

LEAP_COMMAND = re.compile(r"(?<![\w./-])(`*)leap ((?:-[-a-z]+ )*)([a-z]+(?:-[a-z]+)*)(?![\w-])")


def _command_mentions(text: str):
    """`leap X` where X is hyphenated, opens a code span (```leap train```), or is followed by an option or a
    placeholder ("leap show NARRATION_ID"); "a leap before 2026-12-03", "another leap process" are prose."""
    for m in LEAP_COMMAND.finditer(text):
        after = text[m.end():]
        if "-" in m.group(3) or m.group(1) or re.match(r" --| [A-Z][A-Z_]+\b", after):
            yield m.group(3), m.start(), m.end()


def test_every_leap_command_named_in_leap_cli_strings_is_a_command():
    commands = _command_options()
    found, bad = 0, []
    for path, line, text in _package_texts():
        for name, start, end in _command_mentions(text):
            found += 1
            if name not in commands:
                bad.append(f"{path}:{line}: leap {name} in {_where(text, start, end)!r}")
    assert found > 60, found
    assert bad == []


def _command_lines(text: str, commands) -> list[tuple[str, list[str], int, int]]:
    """(command, options, start, end) of each command line in ``text``: a command's name (after ``leap `` or on
    its own, as in "then build-shards --force"; not the value of an option, as the ``train`` of ``--split
    train``), an optional positional (``show ID``, ``validate-programs FILES``) or "with" / "again with", then
    options, each with at most one value. An "or"/"and" or any prose word ends the line."""
    names = "|".join(sorted(map(re.escape, commands), key=len, reverse=True))
    line = re.compile(
        rf"(?<![\w./-])({names})(?![\w-])"
        r"(?: (?:again )?with| [A-Z][A-Z_]+\b| P\d\d_\d+_\d+| \{\}| \S+\.jsonl)?"
        r"((?:[ =](?:--[a-z][-a-z0-9_]*(?:=[^\s`'\";,()]+)?)(?: (?!--)[^\s`'\";,()]+)?)+)")
    out = []
    for m in line.finditer(text):
        if re.search(r"--[\w-]+[ =]$", text[:m.start()]):  # an option's value (--split train, --task ...)
            continue
        out.append((m.group(1), re.findall(r"(?<![\w-])--[a-z][-a-z0-9_]*", m.group(2)), m.start(), m.end()))
    return out


def test_an_option_written_after_a_command_in_leap_cli_strings_is_that_commands():
    """``leap build-shards --split %s --vocab``, ``extract with --retry-errors``, ``then build-shards --force``:
    each option belongs to the command it follows."""
    commands = _command_options()
    pairs, bad = 0, []
    for path, line, text in _package_texts():
        for name, opts, start, end in _command_lines(text, commands):
            for option in opts:
                pairs += 1
                if option not in commands[name]:
                    bad.append(f"{path}:{line}: {name} has no {option}: {_where(text, start, end)!r}")
    assert pairs > 80, pairs
    assert bad == []


def test_the_command_line_grammar_reads_a_pair_and_skips_prose_and_values():
    """The pair reader itself: it finds the option after its command, and not after an option's value or "or"."""
    commands = _command_options()
    read = lambda text: [(n, o) for n, o, *_ in _command_lines(text, commands)]  # noqa: E731
    assert read("then run `leap build-shards --split val --force` again") == [("build-shards", ["--split", "--force"])]
    assert read("extract with --retry-errors; then") == [("extract", ["--retry-errors"])]
    assert read("as --split train --out x.jsonl") == []
    assert read("run leap extract or fix --descriptors") == []


# -- 3. --set KEY=... and section.key names are the training config's keys

@lru_cache(maxsize=None)
def _config_keys() -> tuple[frozenset[str], dict[str, str]]:
    from leap_cli.train import config as C

    keys = {f"{section}.{f.name}" for section, cls in C._SECTION_CLASSES.items() for f in dataclasses.fields(cls)}
    return frozenset(keys), dict(C.ALIASES)


FILE_SUFFIXES = {"jsonl", "json", "csv", "pt", "yaml", "yml", "pkl", "html", "md", "zip", "lock", "txt", "progress",
                 "settings", "report", "config", "shard", "mp4", "wav"}
CONFIG_KEY = re.compile(r"(?<![\w./-])(model|data|optim|loss|train)\.([a-z][a-z_]*)(?:\.([a-z][a-z_]*))?(?![\w(/-])")


def test_every_config_key_leap_cli_strings_name_is_a_key_of_the_training_config():
    """``--set model.pretrained=FILE``, ``data.batch_size=N``, ``train.checkpoint_every``: a real key under its
    current name (an old name of ALIASES is still read, but advice should not teach it); a third part only under
    a mapping (model.options.drop_path_rate)."""
    keys, aliases = _config_keys()
    sets, found, bad = 0, 0, []
    for path, line, text in _package_texts():
        for m in re.finditer(r"--set[ =]['\"]?([a-z_]+\.[a-z_.]+)", text):
            sets += 1
            parts = m.group(1).rstrip(".").split(".")
            key = ".".join(parts[:2])
            if key not in keys or (len(parts) == 3 and key != "model.options") or len(parts) > 3:
                bad.append(f"{path}:{line}: --set {m.group(1)}")
        for m in CONFIG_KEY.finditer(text):
            if m.group(2) in FILE_SUFFIXES or text[m.end():m.end() + 1] == "." or m.group(3) in FILE_SUFFIXES:
                continue  # a file name (train.jsonl, train.settings.json)
            found += 1
            key = f"{m.group(1)}.{m.group(2)}"
            if key not in keys and key not in aliases:
                bad.append(f"{path}:{line}: {key} in {_where(text, m.start(), m.end())!r}")
            elif key in aliases and text.strip() != key and "old name" not in text:  # (not ALIASES' own key)
                bad.append(f"{path}:{line}: {key} is the old name of {aliases[key]}")
    assert sets >= 8 and found >= 40, (sets, found)
    assert bad == []


# -- 4. the command lines leap builds at run time

def _parse(name: str, args: list[str]) -> list[str]:
    """Parse ``args`` as ``leap NAME`` would (options and arguments only: no callback, no conversion); the
    arguments left over, or click's NoSuchOption / BadOptionUsage."""
    cmd = _cli().commands[name]
    parser = cmd.make_parser(cmd.context_class(cmd, info_name=name))
    _, rest, _ = parser.parse_args(list(args))
    return rest


def test_the_parser_helper_refuses_an_option_the_command_lacks():
    with pytest.raises(Exception, match="No such option"):  # (typer vendors click: its own UsageError)
        _parse("train", ["--config", "x", "--no-such-option"])
    assert _parse("extract", ["--split", "val", "--force"]) == []


def test_every_stage_of_the_demos_plan_is_a_command_line_its_command_takes(tmp_path):
    """``leap demo`` runs each stage as ``leap ARGV``: in every shape of its plan (--force, --ablate, overrides, a
    pretrained config without submission) each argv names a command and only its options."""
    from leap_cli.demo import DemoConfig, plan

    shapes = [DemoConfig(workdir=tmp_path / "w"),
              DemoConfig(workdir=tmp_path / "w", force=True, ablate=True, train_overrides=("optim.lr=0.01",)),
              DemoConfig(workdir=tmp_path / "w", train_overrides=("model.pretrained=/x.pt",))]
    seen = set()
    for cfg in shapes:
        for stage in plan(cfg):
            assert stage.argv[0] in _cli().commands, stage.argv
            assert _parse(stage.argv[0], stage.argv[1:]) == [] or stage.argv[0] == "validate-programs", stage.argv
            seen.add(stage.argv[0])
    assert {"demo-data", "extract", "generate-programs", "build-shards", "train", "evaluate", "submit",
            "ablate"} <= seen


def test_the_submit_line_evaluate_prints_is_a_line_submit_takes(tmp_path):
    """After `leap evaluate --split test` it prints the `leap submit ...` to run: with --data/--annotations and
    a work directory given, every option of that line is one of submit's."""
    from leap_cli.commands.evaluate import _submit_command

    for data, annotations in ((tmp_path / "k", None), (None, tmp_path / "a"), (tmp_path / "k", tmp_path / "a"),
                              (None, None)):
        line = _submit_command(tmp_path / "scores.pt", "recognition", tmp_path / "w", data, annotations)
        args = shlex.split(line)
        assert args[:2] == ["leap", "submit"], line
        assert _parse("submit", args[2:]) == [], line
        assert {"--sls-pt", "--sls-tl", "--sls-td", "--scores"} <= set(args), line


def test_every_help_example_and_its_note_name_options_of_their_command():
    """`leap X --help` ends with an example and a note in parentheses: "(EPIC on disk: add --data ...)"."""
    from leap_cli.cli import EXAMPLES

    assert set(EXAMPLES) == set(_cli().commands)
    for name, example in EXAMPLES.items():
        line, _, note = example.partition("    (")
        args = shlex.split(line)
        assert args[:2] == ["leap", name], example
        assert _parse(name, args[2:]) == [], example
        assert set(OPTION.findall(note)) <= _command_options()[name], example


def test_the_option_names_settings_refusals_use_are_their_commands():
    """A re-run with other settings is refused naming each setting by the option that sets it: extract's,
    generate-programs', build-shards' tables of those names, and submit's levels refusal."""
    from leap_cli.commands.extract import SETTINGS_NAMES as extract_names
    from leap_cli.errors import LeapError
    from leap_cli.programs.generate import SETTINGS_NAMES as generate_names
    from leap_cli.shards.format import SETTINGS_OPTIONS
    from leap_cli.submit import check_sls

    commands = _command_options()
    for name, table in (("extract", extract_names), ("generate-programs", generate_names),
                        ("build-shards", SETTINGS_OPTIONS)):
        said = {v.split()[0] for v in table.values() if v.startswith("--")}
        assert said and said <= commands[name], (name, said - commands[name])
    for level in ("sls_pt", "sls_tl", "sls_td"):
        with pytest.raises(LeapError) as e:
            check_sls({"sls_pt": 0, "sls_tl": 0, "sls_td": 0, level: 9})
        option = OPTION.match(str(e.value)).group(1)
        assert option in commands["submit"], str(e.value)


def test_the_demos_settings_refusal_names_demo_options(tmp_path):
    """`leap demo` in a work directory of another demo's settings is refused naming the options that differ."""
    from leap_cli.demo import DemoConfig, check_demo
    from leap_cli.errors import LeapError

    work = tmp_path / "w"
    check_demo(DemoConfig(workdir=work, videos=4))
    (work / "kitchen").mkdir()
    with pytest.raises(LeapError) as e:
        check_demo(DemoConfig(workdir=work, videos=5, segments=40, seed=1, config=Path("tiny-synthetic-short"),
                              train_overrides=("optim.lr=0.01",)))
    said = set(OPTION.findall(f"{e.value} {e.value.fix}"))
    assert {"--videos", "--segments", "--seed", "--config", "--set", "--force", "--workdir"} & said, str(e.value)
    assert said <= _command_options()["demo"], said - _command_options()["demo"]


# -- 5. values that the --help texts name

def test_the_program_sources_ablates_help_lists_are_the_ones_it_takes():
    from leap_cli.train.ablate import SOURCES

    help_text = _cli().commands["ablate"].help
    listed = re.search(r"program sources \(([^)]*)\)", help_text)
    assert listed, help_text
    assert [s.strip() for s in listed.group(1).split(",")] == list(SOURCES)


def test_the_choices_an_options_help_lists_are_accepted():
    """The sources ablate's own --sources help lists are the accepted ones (the command's help: the test above);
    the configs train's --config help names are bundled."""
    from leap_cli.resources import bundled_configs
    from leap_cli.train.ablate import SOURCES

    ablate = {p.name: p for p in _cli().commands["ablate"].params}
    words = re.findall(r"(\w+) \(", ablate["sources"].help)
    assert words == list(SOURCES), ablate["sources"].help
    train = {p.name: p for p in _cli().commands["train"].params}
    named = re.findall(r"([a-z0-9]+(?:-[a-z0-9]+)+)", train["config"].help.split("by name", 1)[1])
    names = {Path(str(c)).stem for c in bundled_configs()}
    assert named and set(named) <= names, (named, names)


# -- 6. README.md and docs/*.md, code and prose

def test_every_option_named_in_the_docs_is_an_option_of_leap_or_of_a_named_tool():
    known = _leap_options() | EXTERNAL_OPTIONS
    found, bad = 0, []
    for doc in DOCS:
        for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            for m in OPTION.finditer(line):
                found += 1
                if m.group(1) not in known and not line[m.end():].startswith("-*"):  # (`--retry-*`: a family)
                    bad.append(f"{doc.name}:{n}: {m.group(1)} in {_where(line, m.start(), m.end())!r}")
    assert found > 500, found
    assert bad == []

def test_every_set_key_in_the_docs_is_a_key_of_the_training_config():
    """``--set section.key=...`` in README and docs (their ``data.X`` of descriptor records is another thing, so
    only the keys after --set are read here)."""
    keys, _ = _config_keys()
    found, bad = 0, []
    for doc in DOCS:
        for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            for m in re.finditer(r"--set[ =]['\"]?([a-z_]+\.[a-z_.]*[a-z_])", line):
                if m.group(1) == "section.key":  # (the placeholder of train.md's option table)
                    continue
                found += 1
                parts = m.group(1).split(".")
                if ".".join(parts[:2]) not in keys or (len(parts) > 2 and parts[:2] != ["model", "options"]):
                    bad.append(f"{doc.name}:{n}: --set {m.group(1)}")
    assert found >= 10, found
    assert bad == []


def test_every_leap_command_and_its_options_in_the_docs_inline_code_are_real():
    """`leap CMD ...` in an inline code span (the code blocks are test_attack_docs_claims'): a real command, and
    each option written after it one of that command's; and a command line in prose ("then build-shards
    --force") too."""
    commands = _command_options()
    spans, bad = 0, []
    for doc in DOCS:
        for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            for span in re.findall(r"`([^`\n]+)`", line):
                m = re.match(r"\s*(?:[A-Z_]+=\S* )*(?:\S*/)?leap ((?:-[-a-z]+ )*)([a-z][-a-z]*)\b(.*)", span)
                if not m or m.group(2) in {"before"}:
                    continue
                spans += 1
                if m.group(2) not in commands:
                    bad.append(f"{doc.name}:{n}: no command {m.group(2)!r} in `{span}`")
            for name, opts, start, end in _command_lines(line, commands):
                bad += [f"{doc.name}:{n}: {name} has no {o}: {_where(line, start, end)!r}"
                        for o in opts if o not in commands[name]]
    assert spans > 50, spans
    assert bad == []
