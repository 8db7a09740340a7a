"""The wheel: built from the sources, installed into a fresh venv, it runs a small pipeline outside the checkout.

Nothing is downloaded: the wheel is built without build isolation (setuptools and wheel come from the test
extra) and installed with --no-deps --no-index; the fresh venv reaches torch and the other dependencies through
.pth lines naming this venv's site-packages folders (its editable install of leap is not loaded from there: .pth
files of an added directory are not processed).
"""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _can_build() -> str | None:
    try:
        import setuptools
        import wheel  # noqa: F401
    except ImportError:
        return "setuptools/wheel missing (pip install -e '.[test]')"
    if int(setuptools.__version__.split(".")[0]) < 77:
        return f"setuptools {setuptools.__version__} < 77 (pip install -e '.[test]')"
    return None


def _run(cmd, cwd, env=None):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.mark.slow
@pytest.mark.skipif(_can_build() is not None, reason=str(_can_build()))
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    src = tmp_path / "src"  # build from a copy: the checkout gets no build/ or egg-info
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "leap_cli", src / "leap_cli", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", dist, src], cwd=tmp_path)
    (whl,) = dist.glob("leap_cli-*.whl")
    with zipfile.ZipFile(whl) as zf:  # the MIT text README and pyproject.toml name travels with the wheel
        (licence,) = [n for n in zf.namelist() if n.rsplit("/", 1)[-1] == "LICENSE"]
        assert "Permission is hereby granted" in zf.read(licence).decode()

    venv = tmp_path / "fresh"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    py = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", "--no-index", whl], cwd=tmp_path)
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path).stdout.strip())
    deps = [p for p in sys.path if "-packages" in p and not p.startswith(str(ROOT / "leap_cli"))]
    (site / "zz_deps.pth").write_text("".join(p + "\n" for p in deps))

    run = tmp_path / "run"  # outside the checkout
    run.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["COLUMNS"] = "200"
    where = _run([py, "-c", "import leap_cli, leap_cli.resources as r; print(leap_cli.__file__)"], cwd=run, env=env)
    assert str(site) in where.stdout and str(ROOT) not in where.stdout
    leap = venv / "bin" / "leap"
    _run([leap, "demo-data", "--out", "w/kitchen", "--videos", "1", "--segments", "4"], cwd=run, env=env)
    _run([leap, "extract", "--split", "train", "--workdir", "w", "--components", "narration,objects,hands"],
         cwd=run, env=env)
    _run([leap, "generate-programs", "--split", "train", "--workdir", "w"], cwd=run, env=env)
    r = _run([leap, "validate-programs", "--split", "train", "--workdir", "w"], cwd=run, env=env)
    assert "validate-programs (train)" in r.stdout
    import json

    report = json.loads((run / "w" / "programs" / "train.report.json").read_text())
    assert report["records"] == 4 and report["statuses"]["valid"] >= 1


def test_constraints_pin_versions_inside_the_declared_ranges():
    """constraints.txt (what make and .ci/run install) pins versions that pyproject.toml's ranges accept, and
    the Makefile installs with it."""
    import tomllib

    from packaging.requirements import Requirement

    deps = {Requirement(d).name: Requirement(d) for d in
            tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    pins = [Requirement(x.split("#")[0].strip()) for x in (ROOT / "constraints.txt").read_text().splitlines()
            if x.split("#")[0].strip()]
    assert {"torch", "torchvision"} <= {p.name for p in pins}
    for pin in pins:
        (version,) = [s.version for s in pin.specifier if s.operator == "=="]
        if pin.name in deps:
            assert deps[pin.name].specifier.contains(version, prereleases=True), (pin, deps[pin.name])
    assert not any(s.operator == "==" for d in deps.values() for s in d.specifier), "pin in constraints.txt instead"
    make = (ROOT / "Makefile").read_text()
    assert "-c constraints.txt" in make and "make test" in (ROOT / ".ci" / "run").read_text()
