"""A usage error (a bad option value, a contradiction between options, an unknown config key) is said before the
stage imports torch, which costs 1.5-2 s of CPU: a user who mistyped gets the line at once."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAY_TORCH = ("import sys\nfrom leap_cli.cli import main\nsys.argv = ['leap', *sys.argv[1:]]\ntry:\n    main()\n"
             "finally:\n    print('torch imported:', 'torch' in sys.modules, file=sys.stderr)\n")


@pytest.mark.parametrize("args, said", [
    (("train", "--config", "tiny-synthetic-short", "--no-program-loss", "--set", "loss.program_loss=true"),
     "--no-program-loss"),
    (("train", "--config", "tiny-synthetic-short", "--set", "loss.nope=1"), "loss.nope"),
    (("evaluate", "--split", "bogus"), "unknown split 'bogus'"),
    (("evaluate", "--split", "val", "--checkpoint", "nope"), "--checkpoint 'nope'"),
    (("evaluate", "--split", "val", "--run", "nope"), "run not found"),
    (("evaluate", "--split", "val"), "nothing to evaluate"),
])
def test_a_usage_error_is_said_before_torch_is_imported(tmp_path, args, said):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "COLUMNS": "200"}
    r = subprocess.run([sys.executable, "-c", SAY_TORCH, *args, "--workdir", str(tmp_path / "w")], cwd=tmp_path,
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and said in errors[0], r.stderr
    assert "torch imported: False" in r.stderr, r.stderr
