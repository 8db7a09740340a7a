import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")



@pytest.fixture(scope="session", autouse=True)
def ctrl_c_is_delivered():
    """The Ctrl-C tests need SIGINT delivered. A shell starts background jobs (`make test &`, nohup) with SIGINT
    ignored, which this process and every stage it starts would inherit: give it Python's own handler back."""
    import signal

    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


@pytest.fixture(autouse=True)
def sigterm_handler_restored():
    """A test that runs ``leap_cli.cli.main`` in this process leaves SIGTERM ignored, as a finished command's
    process does while it exits: the next tests (and a timeout that stops the suite) get the handler back."""
    import signal

    old = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, old)


DATA = Path(__file__).parent / "data"
EPIC_EXCERPT = DATA / "epic100"


@pytest.fixture
def epic_dir() -> Path:
    """An excerpt of the real EPIC-KITCHENS-100 annotations (see tests/data/epic100/ATTRIBUTION.md)."""
    return EPIC_EXCERPT


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """`leap demo` on a small kitchen (4 videos x 10 segments, 1 tiny epoch), run twice (the second reuses what the
    first did): (work directory, first run, second run). One per test session: test_demo's tests and the file
    formats' (test_attack_h3formats) read it; a test that writes, writes elsewhere."""
    import subprocess
    import sys

    work = tmp_path_factory.mktemp("demo") / "work"
    args = ["demo", "--workdir", str(work), "--videos", "4", "--segments", "10", "--set", "train.epochs=1",
            "--frames", "4", "--short-side", "64"]
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}

    def run():
        return subprocess.run([sys.executable, "-m", "leap_cli", *args], capture_output=True, text=True, env=env,
                              timeout=900)

    first = run()
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return work, first, run()

