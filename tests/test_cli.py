import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from leap_cli import __version__
from tests.kitchens import kitchen_copy
from tests.procs import leap_here


def leap(*args, cwd=None):
    env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "leap_cli", *args], capture_output=True, text=True, cwd=cwd, env=env)


def error_lines(stderr: str) -> list[str]:
    """stderr's non-blank lines less the progress lines that share it (build-shards says what it prepares)."""
    return [x for x in stderr.splitlines() if x.strip() and not x.endswith(": reading the annotations, checking the "
                                                                            "programs, planning the samples ...")]


@pytest.mark.parametrize("argv, status", [(["--version"], 0), (["info", "--data", "/nonexistent"], 2)])
@pytest.mark.parametrize("when", ["atexit", "teardown"])
def test_a_sigterm_while_a_finished_command_exits_keeps_its_status(tmp_path, argv, status, when):
    """SIGTERM as the process exits after the command is done: in an atexit callback (a pool's or logging's
    cleanup) it printed a KeyboardInterrupt traceback; in the interpreter's teardown, where Python puts the default
    handler back, it ended a finished build-shards with 143 (QA), whichever way the command had ended."""
    script = tmp_path / "late_term.py"
    late = ("atexit.register(lambda: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(1)))" if when == "atexit" else
            # (a module torn down last: its __del__ runs after the handlers are reset)
            "sys.modules['late_term_probe'] = type(sys)('late_term_probe'); sys.modules['late_term_probe'].x = "
            "type('P', (), {'__del__': lambda self: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(1))})()")
    script.write_text("import atexit, os, signal, sys, time\n"
                      "import leap_cli.cli as cli\n"
                      f"{late}\n"
                      f"sys.argv = ['leap', *{argv!r}]\n"
                      "cli.main()\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert r.returncode == status, r
    assert "Traceback" not in r.stderr and "KeyboardInterrupt" not in r.stderr, r.stderr


def test_a_sigterm_before_the_command_starts_says_nothing_was_written(tmp_path):
    """SIGTERM as the command line was read: "finished records were kept; run the same command to resume" of
    `leap info`, which writes nothing (QA)."""
    script = tmp_path / "early_term.py"
    script.write_text("import os, signal, sys, time\n"
                      "import leap_cli.cli as cli\n"
                      "cli.expand_home = lambda a: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(1), a)[2]\n"
                      "sys.argv = ['leap', 'info', '--data', '/nonexistent']\n"
                      "cli.main()\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "NO_COLOR": "1"})
    assert r.returncode == 143, r
    assert r.stderr.strip() == "stopped by SIGTERM: the command had not started: nothing was written", r.stderr


def test_a_sigterm_in_generated_code_under_python_m_exits_143(tmp_path):
    """A SIGTERM that lands while Python runs code made from a string (a dataclass's generated methods, as a
    module is imported at start-up) marks the interrupt in CPython, caught or not, and `python -m leap_cli` (the
    way torchrun and the demo run leap) then died by SIGINT (130) after saying "stopped by SIGTERM" (QA: ~1 in 3
    SIGTERMs in the first second)."""
    (tmp_path / "sitecustomize.py").write_text(
        "import os, signal, time\n"
        "import leap_cli.cli as cli\n"
        "def _expand(a):\n"
        "    exec('os.kill(os.getpid(), signal.SIGTERM)\\nfor _ in range(10**7): pass', {'os': os, 'signal': signal})\n"
        "    return a\n"
        "cli.expand_home = _expand\n")
    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "leap_cli", "info", "--data", "/nonexistent"], capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{repo}", "NO_COLOR": "1"})
    assert r.returncode == 143, r
    assert r.stderr.strip() == "stopped by SIGTERM: the command had not started: nothing was written", r.stderr


@pytest.mark.parametrize("argv", [["extract", "--split", "val", "--workdir", ""], ["info", "--data="],
                                  ["train", "--config", " "], ["train", "-c", ""],
                                  ["generate-programs", "--split", "val", "--ingest-batch", ""]])
def test_an_empty_path_option_is_refused(tmp_path, argv):
    """`--workdir "$WORK"` with WORK unset: the current folder, where extract wrote descriptors/ without a word (QA);
    a short alias too (`-c ""` passed the check)."""
    r = leap(*argv, cwd=tmp_path)
    name = next(a for a in argv if a.startswith("-") and a != "--split").rstrip("=")
    assert r.returncode == 2 and r.stderr.startswith(f"error: {name} is empty (an unset variable in a job script?)"), r
    assert list(tmp_path.iterdir()) == []
    # what to do, as the option is: required (train's config), with a default (--workdir), or none (--ingest-batch)
    fix = {"--workdir": ", or leave it out for its default", "--data": ", or leave it out)",
           "--config": ": it is required", "-c": ": it is required", "--ingest-batch": ", or leave it out)"}[name]
    assert f"(give {name} a path{fix}" in " ".join(r.stderr.split()), r.stderr


def test_version_and_help_order(tmp_path):
    """--version was 0.1.0 for every leap, while the docs name file format changes by date ("a leap before
    2026-12-03"): a git checkout says its commit and date, and whether its files differ from it."""
    top = Path(__file__).resolve().parent.parent
    r = leap("--version")
    if (top / ".git").exists():
        commit = subprocess.run(["git", "-C", str(top), "log", "-1", "--format=%h"], capture_output=True,
                                text=True, check=True).stdout.strip()
        assert r.returncode == 0 and r.stdout.startswith(f"leap {__version__} (git {commit}, 20"), r.stdout
        assert " UTC" in r.stdout  # (the time of day: formats changed more than once a day)
        # a GIT_DIR of the environment (a git hook's) is not this checkout
        other = subprocess.run([sys.executable, "-m", "leap_cli", "--version"], capture_output=True, text=True,
                               env={**os.environ, "GIT_DIR": str(tmp_path)}, cwd=top)
        assert other.stdout == r.stdout, other.stdout
    # an installed copy (no .git above it): the version alone
    copy = tmp_path / "site"
    shutil.copytree(top / "leap_cli", copy / "leap_cli", ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run([sys.executable, "-m", "leap_cli", "--version"], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(copy)})
    assert r.returncode == 0 and r.stdout.strip() == f"leap {__version__}", r.stdout + r.stderr
    r = leap("--help")
    assert r.returncode == 0
    order = ["demo-data", "info", "extract", "generate-programs", "validate-programs", "build-shards", "train",
             "evaluate", "submit"]
    commands = r.stdout[r.stdout.index("Commands"):]
    present = [c for c in order if f" {c} " in commands]
    assert present[:2] == ["demo-data", "info"]
    assert sorted(present, key=commands.index) == present


def test_h_is_help_and_flags_show_no_value():
    """`leap -h` was "No such option: -h"; a flag was listed as `--strict <bool>`, though `--strict true` is
    refused."""
    top, sub = leap("-h"), leap("validate-programs", "-h")
    assert top.returncode == 0 and "Commands" in top.stdout
    assert sub.returncode == 0 and "Usage:" in sub.stdout
    strict = next(x for x in sub.stdout.splitlines() if "--strict" in x)
    assert "<bool>" not in strict and "Exit with code 1" in strict
    assert "<int" in next(x for x in sub.stdout.splitlines() if "--show" in x)  # options with a value keep it


@pytest.mark.parametrize("args, says", [
    (["extract", "--device", "bogus"], "--device 'bogus' is not a device"),
    (["extract", "--audio-labels", "labels.csv"], "--audio-labels is for --audio-model"),
    (["generate-programs", "--response-format", "bogus"], "--response-format 'bogus' is not a format")])
def test_values_are_checked_where_they_are_given(tmp_path, args, says):
    """These were accepted (exit 0) when the backend or component that would read them was not used; an unused
    --audio-labels also went into the settings, so a later run without it was refused as other settings."""
    r = leap(*args, "--split", "val", "--workdir", str(tmp_path))
    assert r.returncode == 2 and says in r.stderr, r.stderr
    assert not (tmp_path / "descriptors").exists()


def test_demo_data_and_info_take_the_workdir(tmp_path, monkeypatch, capsys):
    """`leap demo-data --workdir W` and `leap info --workdir W` were "No such option" though every other command
    takes it: the kitchen goes where the stages look for it."""
    leap = leap_here(monkeypatch, capsys)
    assert leap("demo-data", "--workdir", str(tmp_path), "--videos", "3", "--segments", "2").returncode == 0
    assert (tmp_path / "kitchen" / "annotations" / "EPIC_100_train.csv").is_file()
    r = leap("info", "--workdir", str(tmp_path), "--no-check-lengths")
    assert r.returncode == 0 and str(tmp_path / "kitchen") in " ".join(r.stdout.split()), r.stdout + r.stderr


def test_every_command_help_ends_with_an_example():
    from leap_cli.cli import app

    names = [info.name for info in app.registered_commands]
    assert len(names) >= 13
    for info in app.registered_commands:
        assert info.epilog and info.epilog.startswith(f"Example: leap {info.name} "), info.name
    r = leap("build-shards", "-h")
    assert "Example: leap build-shards --split train" in r.stdout


def test_user_error_is_one_line_exit_2(tmp_path):
    r = leap("info", "--data", str(tmp_path / "missing"))
    assert r.returncode == 2
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "dataset root not found" in lines[0] and "Traceback" not in r.stderr


def test_extract_with_a_wrong_data_folder_leaves_nothing_behind(tmp_path, monkeypatch, capsys):
    """A mistyped --data is refused before the output's settings file and lock are written (they were left in
    WORKDIR/descriptors/); a --workdir that is a file is still named as the problem."""
    leap = leap_here(monkeypatch, capsys)
    r = leap("extract", "--split", "train", "--data", str(tmp_path / "missing"), "--workdir", str(tmp_path / "w"))
    assert r.returncode == 2 and "dataset root not found" in r.stderr
    assert not (tmp_path / "w").exists()
    (tmp_path / "file").write_text("")
    r = leap("extract", "--split", "train", "--data", str(tmp_path / "missing"), "--workdir", str(tmp_path / "file"))
    assert r.returncode == 2 and f"--workdir {tmp_path / 'file'} is a file, not a folder" in r.stderr, r.stderr
    for command in (["info"], ["generate-programs", "--split", "val"], ["train"], ["evaluate", "--split", "val"],
                    ["show", "X"], ["demo"], ["build-shards", "--split", "val"]):  # ("afile/kitchen: not found")
        r = leap(*command, "--workdir", str(tmp_path / "file"))
        assert r.returncode == 2 and "is a file, not a folder" in r.stderr and len(r.stderr.splitlines()) == 1, (
            command, r.stderr)


def test_info_on_real_excerpt(tmp_path, epic_dir):
    import shutil

    shutil.copytree(epic_dir, tmp_path / "annotations")
    r = leap("info", "--data", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "EPIC_100_train.csv" in r.stdout and "verb classes: 97" in r.stdout and "noun classes: 300" in r.stdout
    assert "with neither MP4 nor rgb_frames" in r.stdout


def test_help_lists_each_command_on_one_line():
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1"}
    out = subprocess.run([sys.executable, "-m", "leap_cli", "--help"], capture_output=True, text=True, env=env).stdout
    box = out[out.index("Commands"):].splitlines()[1:]
    rows = [x.strip("│").rstrip() for x in box if x.startswith("│")]
    assert len(rows) >= 10
    for row in rows:  # a continuation line would start with blanks where the command name stands
        assert not row.startswith("  "), row
        name, text = row.split(None, 1)
        assert len(text) > 15, row


def test_error_keeps_its_record_in_brackets(tmp_path, epic_dir):
    import shutil

    shutil.copytree(epic_dir, tmp_path / "annotations")
    p = tmp_path / "annotations" / "EPIC_100_validation.csv"
    lines = p.read_text().splitlines()
    lines[3] = lines[3].replace("00:00:49.15", "00:00:4x.15", 1)
    p.write_text("\n".join(lines) + "\n")
    r = leap("info", "--data", str(tmp_path))
    assert r.returncode == 2, r.stderr
    assert "EPIC_100_validation.csv [row 4, " in r.stderr and "Traceback" not in r.stderr


def _main(monkeypatch, capsys, *argv):
    from tests.procs import leap_main

    code, _, err = leap_main(monkeypatch, capsys, *argv)
    return code, err


def test_full_disk_is_one_line_naming_the_path_and_keeps_data(tmp_path, epic_dir, monkeypatch, capsys):
    import errno
    import json

    from leap_cli.io import JsonlAppender

    out = tmp_path / "programs" / "val.jsonl"
    with JsonlAppender(out) as w:
        w.write({"narration_id": "P01_11_0", "status": "failed", "errors": []})
    before = out.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    code, err = _main(monkeypatch, capsys, "validate-programs", str(out), "--annotations", str(epic_dir),
                      "--workdir", str(tmp_path))
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "val.report.json: No space left on device" in lines[0] and "Traceback" not in err
    assert out.read_bytes() == before and json.loads(before)["narration_id"] == "P01_11_0"
    assert not (tmp_path / "programs" / "val.report.json").exists()
    assert [p.name for p in (tmp_path / "programs").iterdir() if p.name.endswith(".tmp")] == []


def test_a_file_size_limit_says_so_and_a_tilde_is_the_home_folder(tmp_path, monkeypatch, capsys):
    """EFBIG said "check that path and run the same command again" (which failed alike under the same limit);
    `--workdir=~/x` (the shell leaves a ~ after = as it is) made a folder named ~ in the current one."""
    import errno

    from leap_cli import cli

    line = cli.os_error_line(OSError(errno.EFBIG, os.strerror(errno.EFBIG), "/w/programs/val.jsonl"))
    assert line.startswith("/w/programs/val.jsonl: File too large") and "ulimit -f" in line
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cli.expand_home(["info", "--workdir=~/w", "--data", "~/d", "--x=a~b", "P01~1"]) == [
        "info", f"--workdir={tmp_path}/w", "--data", f"{tmp_path}/d", "--x=a~b", "P01~1"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w").mkdir()
    code, err = _main(monkeypatch, capsys, "validate-programs", "--workdir=~/w", "--split", "val")
    assert not (tmp_path / "~").exists() and str(tmp_path / "w") in err, err


def test_a_full_disk_says_how_to_go_on_in_each_command(monkeypatch):
    """ENOSPC told `leap train` to run the same command again, which is refused beside the run's checkpoint, and
    a --force run to run it again, which starts over."""
    import errno

    from leap_cli import cli

    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/w/runs/r/checkpoints/last.pt")
    for argv, started, says in [
            (["train", "--config", "c"], True, "then run the same command with --resume (the stages"),
            (["train", "--config", "c"], False, "then run the same command again"),  # (config.yaml not written yet:
            (["train", "--config", "c", "--resume"], True, "then run the same command again"),  # the run is removed)
            (["build-shards", "--force"], False, "then run the same command without --force"),
            (["train", "--force"], True, "then run the same command with --resume instead of --force"),
            (["extract"], False, "then run the same command again (the stages")]:
        monkeypatch.setattr(sys, "argv", ["leap", *argv])
        monkeypatch.setitem(cli._state, "command", argv[0])
        monkeypatch.setattr("leap_cli.common.NEXT_RUN", {"train": "resume"} if started else {})
        assert says in cli.os_error_line(full), (argv, cli.os_error_line(full))


def test_read_only_workdir_is_one_line(tmp_path, monkeypatch, capsys):
    import errno
    import tempfile

    real = tempfile.mkstemp

    def read_only(*a, dir=None, **k):  # root ignores chmod 555, so the OS's answer is simulated
        raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), str(dir))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    code, err = _main(monkeypatch, capsys, "demo-data", "--out", str(tmp_path / "k"), "--videos", "1",
                      "--segments", "2")
    monkeypatch.setattr(tempfile, "mkstemp", real)
    assert code == 2 and "Read-only file system" in err and str(tmp_path / "k") in err and "Traceback" not in err


def test_bad_values_are_refused_at_the_option(tmp_path, monkeypatch, capsys):
    leap = leap_here(monkeypatch, capsys)
    for args, name in ((["extract", "--split", "train", "--limit", "-1"], "--limit"),
                       (["extract", "--split", "train", "--workers", "0"], "--workers"),
                       (["extract", "--split", "train", "--hand-threshold", "-0.5"], "--hand-threshold"),
                       (["extract", "--split", "train", "--fov", "0"], "--fov"),
                       (["generate-programs", "--split", "train", "--k", "-1"], "--k"),
                       (["build-shards", "--split", "train", "--workers", "-2"], "--workers"),
                       (["extract", "--split", "train", "--cache-frames", "-1"], "--cache-frames"),  # was a traceback
                       (["demo", "--segments", "1"], "--segments"),
                       (["ablate", "--seeds", "0"], "--seeds")):
        r = leap(*args, "--workdir", str(tmp_path))
        assert r.returncode == 2 and name in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    r = leap("demo-data", "--segments", "1", "--out", str(tmp_path / "k"))  # it named segments_per_video
    assert r.returncode == 2 and "--segments" in r.stderr and not (tmp_path / "k").exists(), r.stderr


def test_show_prints_markup_in_user_text_as_text(tmp_path):
    import json

    (tmp_path / "descriptors").mkdir()
    rec = {"narration_id": "P01_01_0", "video_id": "P01_01", "start": 0.0, "stop": 1.0, "text": "x",
           "components": {"narration": {"status": "ok", "text": "put [red]towel[/] down [/bold]"}}}
    (tmp_path / "descriptors" / "train.jsonl").write_text(json.dumps(rec) + "\n")
    r = leap("show", "P01_01_0", "--workdir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "put [red]towel[/] down [/bold]" in r.stdout


def test_show_checks_the_run_first_and_titles_a_segment_without_narration_by_its_id(tmp_path, monkeypatch, capsys):
    leap = leap_here(monkeypatch, capsys)
    import json

    (tmp_path / "descriptors").mkdir()
    rec = {"narration_id": "P01_03_2", "video_id": "P01_03", "start": 0.0, "stop": 1.0, "text": "x",
           "components": {"camera": {"status": "ok", "text": "still"}}}  # a test segment: no narration
    (tmp_path / "descriptors" / "test.jsonl").write_text(json.dumps(rec) + "\n")
    r = leap("show", "P01_03_2", "--workdir", str(tmp_path), "--run", "nope")
    assert r.returncode == 2 and "nope" in r.stderr and "Descriptors of" not in r.stdout, r.stdout + r.stderr
    r = leap("show", "P01_03_2", "--workdir", str(tmp_path), "--html", str(tmp_path / "p.html"))
    assert r.returncode == 0, r.stderr
    assert "<title>P01_03_2</title>" in (tmp_path / "p.html").read_text()


def test_show_draws_a_malformed_program_as_its_findings(tmp_path):
    """An invalid LLM reply is kept as it came; show (and its page) listed no findings but crashed on it."""
    (tmp_path / "programs").mkdir()
    recs = [{"narration_id": "P01_01_0", "status": "invalid", "program": {"steps": "put it down"}, "errors": []},
            {"narration_id": "P01_01_1", "status": "valid", "program": {"steps": 5}}]
    (tmp_path / "programs" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    for nid, says in (("P01_01_0", "/steps"), ("P01_01_1", "malformed")):
        r = leap("show", nid, "--workdir", str(tmp_path), "--html", str(tmp_path / f"{nid}.html"))
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        assert says in r.stdout and (tmp_path / f"{nid}.html").exists()


def test_descriptor_with_string_components_is_one_line(tmp_path, epic_dir):
    import json

    (tmp_path / "descriptors").mkdir()
    rec = {"narration_id": "P01_11_0", "components": "narration ok"}
    (tmp_path / "descriptors" / "val.jsonl").write_text(json.dumps(rec) + "\n")
    for args in (["show", "P01_11_0"],
                 ["generate-programs", "--split", "val", "--annotations", str(epic_dir)]):
        r = leap(*args, "--workdir", str(tmp_path))
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert r.returncode == 2 and len(lines) == 1, r.stderr
        assert "components is a str" in lines[0] and "Traceback" not in r.stderr


@pytest.fixture(scope="module")
def tiny_kitchen(tmp_path_factory):
    root = tmp_path_factory.mktemp("kitchen")
    return kitchen_copy(tmp_path_factory, root / "kitchen", "--videos", 2, "--segments", 2)


def test_extract_rerun_with_other_settings_is_refused_unless_forced(tiny_kitchen, tmp_path, monkeypatch, capsys):
    leap = leap_here(monkeypatch, capsys)
    import json

    base = ["extract", "--split", "train", "--data", str(tiny_kitchen), "--workdir", str(tmp_path),
            "--components", "narration,hands"]
    assert leap(*base).returncode == 0
    out = tmp_path / "descriptors" / "train.jsonl"
    before = out.read_bytes()
    r = leap(*base, "--hand-threshold", "0.7")
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "--hand-threshold: 0.5 -> 0.7" in lines[0] and "--force" in lines[0]
    assert out.read_bytes() == before
    assert leap(*base).returncode == 0  # same settings: resumes
    r = leap(*base, "--hand-threshold", "0.7", "--force")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "descriptors" / "train.jsonl.settings.json").read_text())["hand_threshold"] == 0.7


def test_one_damaged_detections_file_is_one_error_line_naming_its_segments(tiny_kitchen, tmp_path):
    import shutil

    root = tmp_path / "kitchen"
    shutil.copytree(tiny_kitchen, root)
    (pkl,) = [p for p in (root / "hand-objects").rglob("*.pkl") if p.stem.endswith("_01")][:1]
    pkl.write_bytes(pkl.read_bytes()[:300])  # cut short: every segment of the video fails objects and hands
    r = leap("extract", "--split", "train", "--data", str(root), "--workdir", str(tmp_path), "--components",
             "narration,objects,hands")
    assert r.returncode == 3, r.stdout + r.stderr  # all of them failed
    failed = [json.loads(x)["narration_id"] for x in (tmp_path / "descriptors" / "train.jsonl").read_text().splitlines()
              if json.loads(x)["components"]["objects"]["status"] == "error"]
    assert len(failed) == 2
    # one line for the one message (it named the file 2 x 2 times), with the count and the segments it hit
    assert r.stdout.count(str(pkl)) == 1, r.stdout
    assert "4 component errors (rerun with --retry-errors" in r.stdout
    assert f"objects, hands of 2 segments ({failed[0]}, {failed[1]}): {pkl}: not a hand-object" in r.stdout


def test_shard_with_out_keeps_the_shard_suffix(tiny_kitchen, tmp_path):
    for i in (0, 1):
        r = leap("extract", "--split", "train", "--data", str(tiny_kitchen), "--workdir", str(tmp_path),
                 "--components", "narration", "--shard", f"{i}/2", "--out", str(tmp_path / "d" / "mine.jsonl"))
        assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in (tmp_path / "d").glob("*.jsonl"))
    assert names == ["mine.shard0of2.jsonl", "mine.shard1of2.jsonl"]
    videos = [{json.loads(x)["video_id"] for x in (tmp_path / "d" / n).read_text().splitlines()} for n in names]
    assert (videos[0] or videos[1]) and not videos[0] & videos[1]


def test_val_shards_wait_for_the_training_shards_parts(tiny_kitchen, tmp_path):
    """build-shards --split val while the train parts were running (two Slurm arrays at once) took the class files'
    vocabulary, without a word: the run's program figures were left out of its evaluation."""
    train = tmp_path / "shards" / "train"
    train.mkdir(parents=True)
    (train / ".progress.shard1of2.jsonl").write_text("")  # part 1 of 2 begun, none done
    r = leap("build-shards", "--split", "val", "--data", str(tiny_kitchen), "--workdir", str(tmp_path))
    lines = error_lines(r.stderr)
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "the training shards are still in --shard parts (0 of 2 done, no merged manifest.json yet)" in lines[0]
    assert "--vocab" in lines[0] and not (tmp_path / "shards" / "val" / "manifest.json").exists()


def test_a_path_of_the_wrong_kind_says_what_to_do(tiny_kitchen, tmp_path, monkeypatch, capsys):
    leap = leap_here(monkeypatch, capsys)
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-folder").mkdir()
    for args, says in ((["extract", "--split", "train", "--workdir", str(tmp_path / "a-file")],
                        "is a file, not a folder"),
                       (["build-shards", "--split", "train", "--out", str(tmp_path / "a-file"),
                         "--data", str(tiny_kitchen), "--workdir", str(tmp_path)], "a file is in the way"),
                       (["submit", "--check", str(tmp_path / "a-folder"), "--data", str(tiny_kitchen)],
                        "give the path of a file"),
                       (["validate-programs", "--split", "train", str(tmp_path / "a-folder")], "is a folder"),
                       # a run's folder or a weights release's given as the file (it said "not found")
                       (["evaluate", "--split", "val", "--checkpoint", str(tmp_path / "a-folder"), "--workdir",
                         str(tmp_path)], "--checkpoint is a folder, not a checkpoint file"),
                       (["extract", "--split", "train", "--data", str(tiny_kitchen), "--workdir", str(tmp_path),
                         "--components", "audio", "--audio-model", str(tmp_path / "a-folder")],
                        "--audio-model: a folder, not a weights file"),
                       (["generate-programs", "--split", "train", "--data", str(tiny_kitchen), "--workdir",
                         str(tmp_path), "--system-prompt", str(tmp_path / "nosuch.md")], "check the path given")):
        r = leap(*args)
        lines = error_lines(r.stderr)
        assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, (args, r.stderr)
        assert says in lines[0] and "run the same command again" not in lines[0], (args, lines[0])


def test_force_with_a_bad_option_keeps_the_output(tiny_kitchen, tmp_path, monkeypatch, capsys):
    """--force starts an output over; an option that cannot work (a typo, a missing weights file, no API key)
    is refused first, so it costs nothing."""
    leap = leap_here(monkeypatch, capsys)
    common = ["--split", "train", "--data", str(tiny_kitchen), "--workdir", str(tmp_path)]
    base = ["extract", *common, "--components", "narration,camera,objects"]
    assert leap(*base).returncode == 0
    out = tmp_path / "descriptors" / "train.jsonl"
    before = out.read_bytes()
    assert before
    for extra, says in ((["--camera-source", "bogus"], "unknown camera source"),
                        (["--detector-weights", str(tmp_path / "nosuch.pt")], "--detector-weights: file not found"),
                        (["--clip-weights", str(tmp_path / "nosuch.pt")], "--clip-weights: file not found"),
                        # a published file's name: the error says where to download it (README, "Weights")
                        (["--clip-weights", str(tmp_path / "ViT-B-16.pt")], "download ViT-B-16.pt from https://"
                         "openaipublic.azureedge.net/clip/models/5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb"
                         "61988df416f/ViT-B-16.pt)")):
        r = leap(*base, *extra, "--force")
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert r.returncode == 2 and len(lines) == 1 and says in lines[0], (extra, r.stderr)
        assert out.read_bytes() == before, extra
    assert leap("generate-programs", *common).returncode == 0
    programs = tmp_path / "programs" / "train.jsonl"
    before = programs.read_bytes()
    env_key = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    for extra, says in ((["--backend", "bogus"], "unknown backend"), (["--backend", "openai"], "no API key")):
        r = subprocess.run([sys.executable, "-m", "leap_cli", "generate-programs", *common, *extra, "--force"],
                           capture_output=True, text=True, env={**env_key, "COLUMNS": "250", "NO_COLOR": "1"})
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, (extra, r.stderr)
        assert programs.read_bytes() == before, extra


def test_camera_source_help_names_the_poses_in_the_order_auto_reads_them(tmp_path):
    """The help said auto reads "COLMAP poses (poses/VIDEO/images.txt)"; it reads EPIC Fields' JSON first."""
    import typer

    from leap_cli.cli import app
    from leap_cli.epic.layout import DatasetLayout

    extract = typer.main.get_command(app).commands["extract"]
    text = next(p.help for p in extract.params if p.name == "camera_source")
    assert "EPIC Fields" in text and text.index("poses/VIDEO.json") < text.index("poses/VIDEO/images.txt")
    (tmp_path / "annotations").mkdir()
    (tmp_path / "poses" / "P01_01").mkdir(parents=True)
    (tmp_path / "poses" / "P01_01" / "images.txt").write_text("# COLMAP\n")
    (tmp_path / "poses" / "P01_01.json").write_text("{}")
    assert DatasetLayout.open(tmp_path).poses_path("P01_01").name == "P01_01.json"  # what auto reads


def test_show_finds_a_record_by_its_id_alone_and_takes_the_last(tmp_path):
    import json

    from leap_cli.report.show import record_of

    p = tmp_path / "train.jsonl"
    rows = [{"narration_id": "P01_01_12", "v": 0}, {"narration_id": "P01_01_2", "note": "after P01_01_1", "v": 1},
            {"narration_id": "P01_01_1", "v": 2}, {"narration_id": "P01_01_1", "v": 3}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    assert record_of(p, "P01_01_1")["v"] == 3  # neither P01_01_12 nor a mention in another record's text
    assert record_of(p, "P01_01_9") is None


@pytest.mark.parametrize("command, says", [
    (["evaluate", "--split", "val", "--scores", "s.pt"], "interrupted: the evaluation starts over when run again"),
    (["extract", "--split", "val"], "interrupted: finished records were kept; run the same command to resume"),
    # with --force, the same command would start over again
    (["extract", "--split", "val", "--force"], "finished records were kept; run the same command without --force to "
                                               "resume"),
    (["validate-programs", "--split", "val", "--data", "."], "interrupted: a report is written whole: one printed above is complete, the others were not written"),
    (["train", "--config", "tiny-synthetic"], "checkpoints/last.pt holds the last checkpoint saved (every train.checkpoint_every steps, else at each epoch's end); continue with the same command and --resume (a run stopped before it started, with no runs/NAME/config.yaml, left nothing: the same command without --resume)")])
def test_an_interrupted_command_says_what_it_kept(monkeypatch, capsys, tmp_path, command, says):
    """Ctrl-C in `leap evaluate` promised "finished records were kept; run the same command to resume", but an
    evaluation keeps nothing and starts over; the stages that do resume keep saying so."""
    import sys

    from leap_cli import cli

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("leap_cli.evaluate.scores.load_scores", stop)
    monkeypatch.setattr("leap_cli.extract.runner.run_extract", stop)
    monkeypatch.setattr("leap_cli.programs.generate.annotations_for", stop)
    monkeypatch.setattr("leap_cli.train.loop.main", stop)
    (tmp_path / "programs").mkdir()
    (tmp_path / "programs" / "val.jsonl").write_text("")
    (tmp_path / "kitchen" / "annotations").mkdir(parents=True)  # extract opens the data set before it starts
    monkeypatch.setattr(sys, "argv", ["leap", *command, "--workdir", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 130
    assert says in " ".join(capsys.readouterr().err.split())


def test_under_torchrun_the_other_ranks_name_themselves_and_leave_the_interruption_to_rank_0(monkeypatch, capsys,
                                                                                             tmp_path):
    """Every rank printed the same error line and the same "interrupted: ..." advice (8 GPUs: 8 copies of each)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, prefix in (("0", "error: "), ("1", "error: [rank 1] ")):
        monkeypatch.setenv("RANK", rank)
        code, err = _main(monkeypatch, capsys, "info", "--data", str(tmp_path / "missing"))
        assert code == 2 and " ".join(err.split()).startswith(prefix + f"{tmp_path / 'missing'}: dataset root"), err

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("leap_cli.train.loop.main", stop)
    for rank, says in (("0", True), ("1", False)):
        monkeypatch.setenv("RANK", rank)
        code, err = _main(monkeypatch, capsys, "train", "--config", "tiny-synthetic", "--workdir", str(tmp_path))
        assert code == 130 and ("interrupted: checkpoints/last.pt holds" in " ".join(err.split())) == says, err


def test_a_settings_refusal_names_the_options(tiny_kitchen, tmp_path):
    """A resume under other settings named the settings' inner keys ("k: None -> 4" for --k): the CLI says the
    option that sets each."""
    common = ["extract", "--split", "val", "--data", str(tiny_kitchen), "--workdir", str(tmp_path)]
    assert leap(*common, "--components", "narration").returncode == 0
    r = leap(*common, "--components", "narration,audio")
    assert r.returncode == 2 and "other settings (--components: ['narration'] -> ['narration', 'audio'])" in r.stderr, \
        r.stderr
    r = leap(*common, "--components", "narration", "--fov", "60")  # (a key not named as its option: fov_deg)
    assert r.returncode == 2 and "other settings (--fov: 90.0 -> 60.0)" in r.stderr, r.stderr


def test_the_command_options_noted_for_refusals_do_not_outlive_the_command(tmp_path):
    """(A library call after a CLI call in the same process would say its keys as that command's options.)"""
    from typer.testing import CliRunner

    from leap_cli import io
    from leap_cli.cli import app

    r = CliRunner().invoke(app, ["info", "--data", str(tmp_path / "nothing-here")])
    assert r.exit_code != 0 and io.COMMAND_OPTIONS == {}


def test_log_records_go_to_stderr_as_it_is_when_written(monkeypatch):
    """A progress bar takes stderr over while it draws (rich's redirect); a warning written to the stream the
    handler held from before was glued onto the bar's line."""
    import io
    import logging

    from leap_cli.cli import _StderrHandler

    handler = _StderrHandler()
    now = io.StringIO()
    monkeypatch.setattr(sys, "stderr", now)  # (the bar's proxy, say)
    handler.emit(logging.LogRecord("leap_cli", logging.WARNING, __file__, 1, "3 segments skipped", None, None))
    assert now.getvalue() == "3 segments skipped\n"


def test_stdout_outlives_its_reader():
    """`leap evaluate | head -1`: the pipe closed at the first line, and the next print stopped the stage half-way
    (exit 1, metrics.json never written): what follows goes to /dev/null and the stage goes on."""
    import io

    from leap_cli.cli import ReaderSafeStdout

    read, write = os.pipe()
    os.close(read)  # the reader is gone
    out = ReaderSafeStdout(io.TextIOWrapper(io.FileIO(write, "w"), line_buffering=True))
    assert out.write("first line\n") == len("first line\n") and out.reader_gone
    out.write("more\n")
    out.flush()
    assert os.readlink(f"/proc/self/fd/{write}") == os.devnull
    out.close()


@pytest.mark.parametrize("code, gone", [(errno.EIO, True), (errno.EPIPE, True), (errno.ENOSPC, False)])
def test_a_stream_whose_terminal_hung_up_is_let_go(code, gone, tmp_path):
    """After SIGHUP (a dropped ssh session) the terminal is gone and a write fails with EIO: the stage's stop line
    (and the rest of its writing) must not end in an OSError of its own. Other errors still are errors."""
    import io

    from leap_cli.cli import ReaderSafeStdout

    class Failing(io.StringIO):
        def write(self, text):
            raise OSError(code, os.strerror(code))

        def fileno(self):
            return fd

    fd = os.open(tmp_path / "terminal", os.O_WRONLY | os.O_CREAT)
    out = ReaderSafeStdout(Failing())
    try:
        if gone:
            assert out.write("stopped by SIGHUP\n") == len("stopped by SIGHUP\n") and out.reader_gone
            assert os.readlink(f"/proc/self/fd/{fd}") == os.devnull
        else:
            with pytest.raises(OSError) as e:
                out.write("x\n")
            assert e.value.errno == code and not out.reader_gone
    finally:
        os.close(fd)


def test_a_stage_whose_stdout_reader_left_finishes_with_its_status(tiny_kitchen):
    env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1"}
    p = subprocess.Popen([sys.executable, "-m", "leap_cli", "info", "--data", str(tiny_kitchen)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    p.stdout.close()  # as `| head -0`: every line the stage prints meets a closed pipe
    err = p.stderr.read().decode()
    assert p.wait() == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_build_shards_says_what_it_does_before_its_first_sample(tiny_kitchen, tmp_path):
    """With EPIC's 67k train segments build-shards checks the programs and plans for ~20 s before its first sample:
    a log (no terminal) said nothing all that time."""
    r = leap("build-shards", "--split", "train", "--data", str(tiny_kitchen), "--workdir", str(tmp_path),
             "--frames", "2", "--short-side", "32")
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.startswith("build-shards train")]  # progress lines: on stderr
    assert lines[0].startswith("build-shards train: reading the annotations, checking the programs"), r.stderr
    # other settings over them: refused, the key said as the option ("settings.frames differ")
    r = leap("build-shards", "--split", "train", "--data", str(tiny_kitchen), "--workdir", str(tmp_path),
             "--frames", "3", "--short-side", "32")
    assert r.returncode == 2 and "(--frames differs)" in r.stderr, r.stderr


def test_usage_errors_are_one_line(monkeypatch, capsys):
    """A bad option value printed click's usage, a hint, a blank line and the error: four lines where every
    other error is one (docs/options.md)."""
    leap = leap_here(monkeypatch, capsys)
    for args, says in ((("extract", "--split", "train", "--workers", "0"), "Invalid value for '--workers'"),
                       (("extract",), "Missing option '--split'"), (("extract", "--bogus"), "No such option: --bogus"),
                       (("nosuch",), "No such command 'nosuch'")):
        r = leap(*args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], r.stderr
        assert "--help" in lines[0]
    # leap's own options after the command: said where they go (it said only "No such option: -v")
    r = leap("info", "-v")
    assert r.returncode == 2 and "-v is leap's own: give it before the command" in r.stderr and " -v info ..." in r.stderr


def test_choice_options_are_taken_in_any_case_as_split_names_are(tmp_path, monkeypatch, capsys):
    """`--task Recognition`, `--backend OFFLINE`, `--on-error SKIP` were refused where `--split VAL` was taken."""
    leap = leap_here(monkeypatch, capsys)
    r = leap("evaluate", "--task", "Recognition", "--split", "val", "--scores", str(tmp_path / "none.pt"))
    assert r.returncode == 2 and "scores file not found" in r.stderr and "unknown task" not in r.stderr, r.stderr
    r = leap("generate-programs", "--backend", "OFFLINE", "--split", "val", "--workdir", str(tmp_path))
    assert r.returncode == 2 and "class files are needed" in r.stderr and "backend" not in r.stderr, r.stderr
    r = leap("extract", "--camera-source", "VO", "--components", "Narration,CAMERA", "--split", "val",
             "--workdir", str(tmp_path))
    assert r.returncode == 2 and "camera" not in r.stderr and "component" not in r.stderr, r.stderr
    r = leap("generate-programs", "--backend", "openai", "--response-format", "JSON_Schema", "--split", "val",
             "--workdir", str(tmp_path))  # (the offline backend refuses it: an option of the LLM's requests)
    assert r.returncode == 2 and "class files are needed" in r.stderr and "format" not in r.stderr, r.stderr
    r = leap("build-shards", "--task", "anticipation", "--anticipation-context", "CLIPS", "--split", "val",
             "--workdir", str(tmp_path))
    assert r.returncode == 2 and "dataset root not found" in r.stderr and "context" not in r.stderr, r.stderr


def test_ablation_sources_are_taken_in_any_case(tmp_path, monkeypatch, capsys):
    """`--sources TRUTH` said "unknown program source(s) ['TRUTH']" where `--backend OFFLINE` was taken."""
    import leap_cli.train.ablate as ablate
    from leap_cli.errors import LeapError

    seen = []

    def run_ablation(cfg, on_run=None):
        seen.append(cfg)
        raise LeapError("stopped here")

    monkeypatch.setattr(ablate, "run_ablation", run_ablation)
    code, err = _main(monkeypatch, capsys, "ablate", "--workdir", str(tmp_path), "--sources", "TRUTH, None",
                      "--anticipation-sources", "Offline")
    assert code == 2 and "stopped here" in err, err
    assert seen[0].sources == ("truth", "none") and seen[0].anticipation_sources == ("offline",)
    code, err = _main(monkeypatch, capsys, "ablate", "--workdir", str(tmp_path), "--anticipation-sources", "ALL")
    assert code == 2 and seen[1].anticipation_sources is None


def test_debug_shows_a_user_errors_traceback_and_keeps_its_status(tmp_path):
    """--debug re-raised a user error: the traceback, and exit 1 (a bug's status) instead of 2."""
    r = leap("--debug", "info", "--data", str(tmp_path / "nothere"))
    assert r.returncode == 2, r.stderr
    assert "Traceback (most recent call last)" in r.stderr and "LeapError" in r.stderr
    assert r.stderr.rstrip().splitlines()[-1].startswith("error: ") and "dataset root not found" in r.stderr
    plain = leap("info", "--data", str(tmp_path / "nothere"))
    assert plain.returncode == 2 and "Traceback" not in plain.stderr


def test_a_work_directory_that_does_not_exist_is_named_as_such(tmp_path, monkeypatch, capsys):
    """A mistyped --workdir (or the default leap-work/ from another folder) was reported through the first file
    the stage looked for ("nowork/kitchen: dataset root not found"), and `leap train` left it made, empty."""
    leap = leap_here(monkeypatch, capsys)
    work = tmp_path / "nowork"
    for args in (["info"], ["extract", "--split", "train"], ["generate-programs", "--split", "train"],
                 ["check-shards", "--split", "train"], ["show", "P01_01_1"], ["train", "--config", "tiny-synthetic"]):
        r = leap(*args, "--workdir", str(work))
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert r.returncode == 2 and len(lines) == 1, (args, r.stderr)
        assert lines[0].startswith(f"error: {work}: no such work directory (check --workdir"), (args, lines[0])
        assert not work.exists(), args
    r = leap("train", "--config", "tiny-synthetic", "--workdir", str(work / "a" / "b"))  # made nothing above it
    assert r.returncode == 2 and not work.exists(), r.stderr
    r = leap("info", cwd=tmp_path)  # the default, from a folder without it
    assert r.returncode == 2 and "error: leap-work: no such work directory" in r.stderr, r.stderr
    (work / "kitchen").mkdir(parents=True)  # there: the stage's own line alone
    r = leap("info", "--workdir", str(work))
    assert r.returncode == 2 and "no such work directory" not in r.stderr and "annotations folder not found" in r.stderr


def test_a_dangling_symlink_says_so(tmp_path, monkeypatch, capsys):
    """A work directory linked to a purged scratch folder said "File exists (a file is in the way where a folder
    is needed)"."""
    (tmp_path / "work").symlink_to(tmp_path / "purged")
    code, err = _main(monkeypatch, capsys, "demo-data", "--out", str(tmp_path / "work" / "kitchen"), "--videos", "1",
                      "--segments", "2")
    assert code == 2 and "Traceback" not in err
    assert f"a symbolic link to {tmp_path / 'purged'}, which does not exist (make that folder" in " ".join(err.split())


def test_a_failure_summary_lists_ten_causes_and_counts_the_rest():
    """The stages' failure summary (leap_cli/outcome.py): the ten most frequent causes, then how many more; a
    partial failure exits 0 (3 under --strict), and a run that attempted nothing has not "all failed"."""
    from leap_cli.outcome import EXIT_ALL_FAILED, Outcome

    o = Outcome("extract")
    o.attempt(30)
    for i in range(12):
        for _ in range(12 - i):  # cause 0 the most frequent
            o.fail(f"camera: Error{i}")
    lines = o.lines()
    assert lines[0] == f"extract: {o.failed} of 30 records failed (by cause):", lines
    assert lines[1:11] == [f"  {12 - i} x camera: Error{i}" for i in range(10)], lines
    assert lines[11:] == ["  ... and 2 more causes"], lines
    assert o.exit_code() == 0 and o.exit_code(strict=True) == EXIT_ALL_FAILED == 3
    nothing = Outcome("extract")
    assert nothing.exit_code() == 0 and nothing.lines() == []


@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_sigterm_under_torchrun_exits_143_on_every_rank(monkeypatch, capsys, tmp_path, rank):
    """The ranks other than 0 leave the words to rank 0, not the status: a SIGTERM is 143 on each (130 is Ctrl-C's,
    and Slurm's requeue scripts tell the two apart)."""
    import signal

    from leap_cli import cli

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setitem(cli._state, "stop_signal", None)  # (set by the handler; not left to the tests after this one)
    monkeypatch.setattr("leap_cli.train.loop.main", lambda *a, **k: os.kill(os.getpid(), signal.SIGTERM))
    code, err = _main(monkeypatch, capsys, "train", "--config", "tiny-synthetic", "--workdir", str(tmp_path))
    assert code == 143, (code, err)
    assert ("stopped by SIGTERM: checkpoints/last.pt holds" in " ".join(err.split())) == (rank == "0"), err


@pytest.mark.parametrize("command", ["extract", "generate-programs", "build-shards"])
@pytest.mark.parametrize("shard, says", [("-1/4", " is out of range: parts are numbered from 0 (i must satisfy 0 <= i < n"),
                                         ("4/4", " is out of range: parts are numbered from 0 (i must satisfy 0 <= i < n"),
                                         ("0/0", ": n, the number of parts, is at least 1 (e.g. --shard 0/4")])
def test_a_shard_out_of_range_is_one_line_exit_2(tmp_path, command, shard, says):
    """--shard i/n takes 0 <= i < n, refused at the option before any work: a part -1 (a job array's index less
    one, once too often) would otherwise go on to fail later with another message, or select nothing."""
    r = leap(command, "--split", "train", f"--shard={shard}", "--workdir", str(tmp_path / "w"))
    lines = error_lines(r.stderr)
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: --shard '{shard}'{says}"), lines[0]  # (the fix in brackets)
    assert not (tmp_path / "w").exists()


def test_a_shard_out_of_range_names_the_parts_of_the_count_given():
    """Was wrong: `--shard 2/2` was told the parts of --shard i/4 (0/4, 1/4, 2/4 and 3/4), whatever n was given."""
    from leap_cli.common import ShardSpec
    from leap_cli.errors import LeapError

    fixes = {}
    for text in ("2/2", "1/1", "9/9"):
        with pytest.raises(LeapError) as e:
            ShardSpec.parse(text)
        fixes[text] = e.value.fix
    assert "are 0/2 and 1/2;" in fixes["2/2"] and "$((TASK_ID - 1))/2)" in fixes["2/2"]
    assert "are 0/1;" in fixes["1/1"] and "are 0/9, 1/9, ..., 8/9;" in fixes["9/9"]


def test_every_stage_takes_split_validation_and_finds_the_last_stages_output_in_the_workdir(tiny_kitchen, tmp_path):
    """EPIC's name of the split, `--split validation`, is `val` in each stage: each writes WORKDIR/.../val* and the
    next one finds it there (a stage that kept the name would write validation.jsonl, and the next find nothing)."""
    work, data = tmp_path / "w", ["--data", str(tiny_kitchen)]
    for args in (["extract", *data, "--components", "narration", "--frame-cache", "none"],
                 ["generate-programs", *data], ["validate-programs", *data],
                 ["build-shards", *data, "--frames", "2", "--short-side", "32"], ["check-shards"]):
        r = leap(*args, "--split", "validation", "--workdir", str(work))
        assert r.returncode == 0, (args, r.stdout + r.stderr)
    assert sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file() and p.suffix != ".lock"
                  and not p.name.startswith(".")) == [
        "descriptors/val.config.json", "descriptors/val.jsonl", "descriptors/val.jsonl.settings.json",
        "programs/val.jsonl", "programs/val.jsonl.settings.json", "programs/val.report.json",
        "shards/val/leap-val-000000.tar", "shards/val/manifest.json"]
    segments = len((tiny_kitchen / "annotations" / "EPIC_100_validation.csv").read_text().splitlines()) - 1
    # generate-programs read the descriptors, build-shards the programs
    settings = json.loads((work / "programs" / "val.jsonl.settings.json").read_text())
    assert settings["split"] == "val" and isinstance(settings["descriptors"], dict), settings
    assert settings["descriptors"]["components"] == ["narration"], settings
    manifest = json.loads((work / "shards" / "val" / "manifest.json").read_text())
    assert manifest["split"] == "val" and manifest["programs"]["matched"] == segments > 0, manifest["programs"]
