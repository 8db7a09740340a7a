"""A stop as a module is imported. `leap demo-data` SIGHUPed 0.9 s in (scipy's HiGHS starting) printed a traceback
ending "ImportError: initialization failed" and exited 1: the compiled module met the stop's KeyboardInterrupt as it
started and made it its own error (pybind11's, raised from the KeyboardInterrupt). SIGTERM and SIGHUP now wait for
any import under way (torch's only, before: its C++ start-up ended in terminate), 10 s at most; an error raised from a
stop (a Ctrl-C's, which Python's own handler raises) is said as the stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, package: str, script: str, timeout: float = 60) -> subprocess.CompletedProcess:
    fake = tmp_path / "fake" / "fakeext"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(textwrap.dedent(package))
    script = f"import sys\nsys.path.insert(0, {str(tmp_path / 'fake')!r})\n" + textwrap.dedent(script)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "COLUMNS": "200"},
                          timeout=timeout, preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))


IN_PROCESS = """
import os, signal, sys, time
from leap_cli import cli
cli._state["pid"] = os.getpid()
for s in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(s, cli._on_sigterm)
cli.DEFER_STOPS = {defer}
t0 = time.monotonic()
try:
    import fakeext
    time.sleep(1)
    print("not stopped")
except KeyboardInterrupt:
    print("stopped", getattr(sys.modules.get("fakeext"), "LOADED", False), round(time.monotonic() - t0, 1))
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_a_stop_as_any_module_loads_is_taken_once_it_has_loaded(tmp_path, sig):
    r = _run(tmp_path, f"""
        import os, signal, time
        os.kill(os.getpid(), signal.{sig})
        time.sleep(0.3)
        LOADED = True
        """, IN_PROCESS.format(defer=10.0))
    assert r.stdout.split()[:2] == ["stopped", "True"], (r.stdout, r.stderr[-800:])


def test_an_import_that_does_not_end_gets_the_stop_all_the_same(tmp_path):
    r = _run(tmp_path, """
        import os, signal, time
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(20)
        LOADED = True
        """, IN_PROCESS.format(defer=0.5))
    said = r.stdout.split()
    assert said[:2] == ["stopped", "False"] and float(said[2]) < 5, (r.stdout, r.stderr[-800:])


COMMAND = """
import sys
from leap_cli import cli

@cli.app.command("boom")
def boom():
    import fakeext

sys.argv = ["leap", "boom"]
cli.main()
"""


@pytest.mark.parametrize("sig, rc, said", [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "stopped by SIGTERM"),
                                           ("SIGHUP", 129, "stopped by SIGHUP")])
def test_a_stop_a_compiled_module_turned_into_its_import_error_is_said_as_the_stop(tmp_path, sig, rc, said):
    """The stand-in does what pybind11 does with an error in a module's start-up: ImportError("initialization
    failed") raised from it. (A SIGTERM or SIGHUP waits for the import: the stand-in's own KeyboardInterrupt comes
    from a second signal, as the real stop does where the import is not marked.)"""
    r = _run(tmp_path, f"""
        import os, signal, time
        try:
            os.kill(os.getpid(), signal.{sig})
            time.sleep(0.3)
            raise KeyboardInterrupt  # (what the stop raises where the import is not marked)
        except KeyboardInterrupt as e:
            raise ImportError("initialization failed") from e
        """, COMMAND)
    assert r.returncode == rc and "Traceback" not in r.stderr, (r.returncode, r.stderr[-1500:])
    assert r.stderr.strip().startswith(said), r.stderr[-800:]


def test_an_import_error_of_no_stop_is_still_a_fault_with_its_traceback(tmp_path):
    r = _run(tmp_path, """
        raise ImportError("initialization failed")
        """, COMMAND)
    assert r.returncode == 1 and "Traceback" in r.stderr and "ImportError: initialization failed" in r.stderr, \
        (r.returncode, r.stderr[-800:])


def test_with_debug_an_error_from_a_stop_shows_its_traceback_before_the_stops_line(tmp_path):
    """An error raised while a stop unwinds is said as the stop; --debug (tracebacks asked for) shows it first, as
    a fault in a stage's clean-up would otherwise be hidden behind the stop's line."""
    r = _run(tmp_path, """
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("clean-up failed")
        """, COMMAND.replace('["leap", "boom"]', '["leap", "--debug", "boom"]'))
    assert r.returncode == 130, (r.returncode, r.stderr[-1500:])
    assert "RuntimeError: clean-up failed" in r.stderr and r.stderr.strip().splitlines()[-1].startswith("interrupted")
