import os
import subprocess
import sys

from leap_cli import __version__


def leap(*args, cwd=None):
    env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "leap_cli", *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_version_and_help_order():
    r = leap("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"leap {__version__}"
    r = leap("--help")
    assert r.returncode == 0
    order = ["demo-data", "info", "extract", "generate-programs", "validate-programs", "build-shards", "train",
             "evaluate", "submit"]
    commands = r.stdout[r.stdout.index("Commands"):]
    present = [c for c in order if f" {c} " in commands]
    assert present[:2] == ["demo-data", "info"]
    assert sorted(present, key=commands.index) == present


def test_user_error_is_one_line_exit_2(tmp_path):
    r = leap("info", "--data", str(tmp_path / "missing"))
    assert r.returncode == 2
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "dataset root not found" in lines[0] and "Traceback" not in r.stderr


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
