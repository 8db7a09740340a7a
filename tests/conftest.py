import functools
import os
import re
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
# a command's console (rich) takes COLUMNS and LINES as they are when leap_cli is imported, and keeps them: a test
# that gives its command a width (CliRunner's env) gets it only where none was set at the start (pytest-xdist's
# workers start with the 80 x 24 of a terminal)
for _name in ("COLUMNS", "LINES"):
    os.environ.pop(_name, None)



@pytest.fixture(scope="session", autouse=True)
def ctrl_c_is_delivered():
    """The Ctrl-C tests need SIGINT delivered. A shell starts background jobs (`make test &`, nohup) with SIGINT
    ignored, which this process and every stage it starts would inherit: give it Python's own handler back."""
    import signal

    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def _stop_handlers_kept():
    """Yield with SIGTERM, SIGINT and SIGHUP's handlers saved, then put them back."""
    import signal

    stops = [s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None)) if s is not None]
    old = {s: signal.getsignal(s) for s in stops}
    yield
    for s, handler in old.items():
        signal.signal(s, handler)


@pytest.fixture(scope="module", autouse=True)
def stop_handlers_restored_per_module():
    """The same for a module whose fixture of its own scope runs ``leap_cli.cli.main`` in this process (a kitchen
    built and extracted once per module): set up before the tests' autouse fixture below, it left that one to keep
    the ignored handlers as the old ones, and the worker's later files ran with Ctrl-C ignored (an offline
    generate-programs stopped by a SIGINT then never stopped: seen in a CI run)."""
    yield from _stop_handlers_kept()


@pytest.fixture(autouse=True)
def sigterm_handler_restored():
    """A test that runs ``leap_cli.cli.main`` in this process leaves SIGTERM, SIGINT and SIGHUP ignored, as a
    finished command's process does while it exits: the next tests (and a timeout or Ctrl-C that stops the suite)
    get the handlers back."""
    yield from _stop_handlers_kept()


@pytest.fixture(autouse=True)
def secrets_forgotten():
    """leap redacts the API keys and proxy passwords it was given from every later message of the process
    (``programs/redact.py``): a word one test registered ("secret", a proxy's password) would be redacted from the
    text of any later test in the same worker, by the order the files were handed out. Each test's are forgotten
    after it."""
    import sys

    before = set(getattr(sys.modules.get("leap_cli.programs.redact"), "_SECRETS", ()))
    yield
    module = sys.modules.get("leap_cli.programs.redact")
    if module is not None:
        module._SECRETS.intersection_update(before)


DATA = Path(__file__).parent / "data"
EPIC_EXCERPT = DATA / "epic100"


@pytest.fixture
def epic_dir() -> Path:
    """An excerpt of the real EPIC-KITCHENS-100 annotations (see tests/data/epic100/ATTRIBUTION.md)."""
    return EPIC_EXCERPT


DEMO_FILES = ("test_demo.py", "test_attack_h3formats.py")  # the files that read the `demo` fixture below


DURATIONS = Path(__file__).parent / "durations.json"  # a file's seconds in a whole run of the suite (3 workers)
SECONDS_A_TEST = 0.75  # the suite's mean in that run: a file not in DURATIONS (one added since)
SECONDS_A_SLOW_TEST = 30.0  # a test marked ``slow`` in such a file


def _seconds(root: Path, name: str, tests: int) -> float:
    """How long a test file ``name`` (its ``tests`` of this run) takes in the suite: from ``DURATIONS`` (the
    whole file's; to make it again, run the suite with --junitxml and sum each file's times), or estimated from
    its number of tests and ``slow`` marks."""
    known = _durations(root)
    if name in known:
        return known[name]
    try:
        text = (root / name).read_text(encoding="utf-8")
    except OSError:
        text = ""
    slow = (tests if re.search(r"^pytestmark\s*=.*\bmark\.slow\b", text, re.M)
            else min(tests, len(re.findall(r"^\s*@pytest\.mark\.slow\b", text, re.M))))
    return slow * SECONDS_A_SLOW_TEST + (tests - slow) * SECONDS_A_TEST


@functools.cache
def _durations(root: Path) -> dict[str, float]:
    import json

    try:
        known = json.loads((root / "tests" / DURATIONS.name).read_text())
    except (OSError, ValueError):
        return {}
    return {k: float(v) for k, v in known.items() if isinstance(v, (int, float))} if isinstance(known, dict) else {}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`make test` runs with pytest-xdist's --dist loadfile (each file's tests in one worker, in their order).

    - The files that read the session's demo go to one worker together, so that it runs once and no worker waits
      for another's (a scope of pytest-xdist's own making; without it they still share the demo, one waiting).
    - Files are handed out longest first (``_seconds``): pytest-xdist orders them by their number of tests, which
      left a file of one long test (the program heads' learning test, about a minute) or of six (the day-two
      resumes, three minutes under the suite's load) to start last while the other workers had finished.
    """
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class DemoTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return "demo" if scope.rsplit("/", 1)[-1] in DEMO_FILES else scope

        def _assign_work_unit(self, node) -> None:
            if not getattr(self, "_slow_first", False):
                self._slow_first = True
                self.workqueue = type(self.workqueue)(sorted(self.workqueue.items(), key=self._weight))
            super()._assign_work_unit(node)

        def _weight(self, item) -> tuple[float, int]:
            _, tests = item
            files: dict[str, int] = {}
            for nodeid in tests:
                name = nodeid.split("::", 1)[0]
                files[name] = files.get(name, 0) + 1
            return -sum(_seconds(config.rootpath, name, n) for name, n in files.items()), -len(tests)

    return DemoTogether(config, log)


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """`leap demo` on a small kitchen (4 videos x 10 segments, 1 tiny epoch), run twice (the second reuses what the
    first did): (work directory, first run, second run). One per test session, also under pytest-xdist (`make
    test` runs the files on every core): the first worker that needs it runs it, under a lock, in the folder the
    workers share, and the others read what it left. test_demo's tests and the file formats'
    (test_attack_h3formats) read it; a test that writes, writes elsewhere."""
    import fcntl
    import json
    import subprocess
    import sys

    args = ["demo", "--videos", "4", "--segments", "10", "--set", "train.epochs=1", "--frames", "4",
            "--short-side", "64"]
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    shared = os.environ.get("PYTEST_XDIST_WORKER") is not None
    root = tmp_path_factory.getbasetemp().parent / "demo" if shared else tmp_path_factory.mktemp("demo")
    root.mkdir(exist_ok=True)
    work, done = root / "work", root / "runs.json"

    def run():
        return subprocess.run([sys.executable, "-m", "leap_cli", *args, "--workdir", str(work)], capture_output=True,
                              text=True, env=env, timeout=900)

    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # (held by the worker running it: the others wait here)
        if not done.exists():
            first = run()
            assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
            runs = [first, run()]
            done.write_text(json.dumps([[r.args, r.returncode, r.stdout, r.stderr] for r in runs]))
    first, second = (subprocess.CompletedProcess(*r) for r in json.loads(done.read_text()))
    return work, first, second
