"""docs69: what the docs now say of session 69's changes, checked against the commands. programs.md: validate-programs'
``--html`` given a folder writes the page under the report's name with ``.html`` (a ``--report`` of another name
too, not ``NAME.report.html`` as the page first said); train.md: a bundled config that a newer leap changed is refused
as an edited ``--config`` file is (the page named the file only), ``--anticipation-sources ,`` is refused as
``none`` is, and the note on anticipation sources outside ``--sources`` comes before the runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leap_cli.cli import app
from tests.test_attack_s68_mut68ablate import fake, no_data  # noqa: F401  (fixtures)
from tests.test_programs_validate import kitchen  # noqa: F401  (its small annotations, for validate-programs)

REPO = Path(__file__).resolve().parents[1]
RUN = "recognition-none-L_CE-seed0"


def flat(text: str) -> str:
    return " ".join(text.split())


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "300", "NO_COLOR": "1"})


def test_validate_programs_page_in_a_folder_takes_the_reports_name(kitchen):  # noqa: F811
    """programs.md: "`--html` given a folder ... writes the page in it under the report's name with `.html`": with
    --report mine.json the page is mine.html, whatever the default report's name would be."""
    assert "under the report's name with `.html`" in flat((REPO / "docs" / "programs.md").read_text())
    assert invoke("generate-programs", "--workdir", kitchen, "--split", "val").exit_code == 0
    pages = kitchen / "pages"
    pages.mkdir()
    r = invoke("validate-programs", "--workdir", kitchen, "--split", "val", "--report", kitchen / "mine.json",
               "--html", pages)
    assert r.exit_code == 0, r.output
    assert [p.name for p in pages.iterdir()] == ["mine.html"], r.output
    assert (pages / "mine.html").read_text().startswith("<!DOCTYPE html>") and (kitchen / "mine.json").is_file()


def test_a_bundled_config_changed_since_the_runs_is_refused_before_anything_is_built(tmp_path, fake,  # noqa: F811
                                                                                     no_data):
    """train.md: "So is a bundled config that a newer leap changed (start over)": a run whose digest is not the
    bundled config's now (as after an upgrade of leap) is refused in one line saying so; nothing is built or
    trained, the run is kept."""
    from leap_cli.errors import LeapError

    assert "So is a bundled config that a newer leap changed" in flat((REPO / "docs" / "train.md").read_text())
    work = tmp_path / "w"
    args = ("ablate", "--workdir", work, "--seeds", "1", "--epochs", "2", "--sources", "none", "--no-anticipation")
    assert invoke(*args).exit_code == 0 and len(fake.trained) == 1
    done = work / "runs" / RUN / "result.json"
    result = json.loads(done.read_text())
    result["settings"]["config_digest"] = "0" * 64  # (the bundled tiny-synthetic-short of an earlier leap)
    done.write_text(json.dumps(result))
    built = len(no_data.kitchen)
    r = invoke(*args)
    assert isinstance(r.exception, LeapError), r.output
    line = r.exception.one_line()
    assert "the config changed since run " + RUN in line and "bundled config changed with leap" in line, line
    assert "put the file back" not in line and "\n" not in line
    assert len(no_data.kitchen) == built and len(fake.trained) == 1 and done.is_file()


def test_an_empty_anticipation_sources_is_refused_and_the_note_comes_before_the_runs(tmp_path, fake,  # noqa: F811
                                                                                     no_data):
    """train.md: "`none`, or no source at all (`,`), is refused in one line"; "where none of them is [among
    --sources] ... a note says so before the runs"."""
    from leap_cli.errors import LeapError

    r = invoke("ablate", "--workdir", tmp_path / "a", "--anticipation-sources", ",")
    assert isinstance(r.exception, LeapError) and not fake.trained, r.output
    r = invoke("ablate", "--workdir", tmp_path / "b", "--seeds", "1", "--epochs", "1", "--anticipation-epochs", "1",
               "--sources", "none")
    assert r.exit_code == 0, r.output
    out = r.output.splitlines()
    note = next(i for i, x in enumerate(out) if x.startswith("note: no anticipation program cell"))
    first_run = next(i for i, x in enumerate(out) if " seed 0: " in x)
    assert note < first_run and fake.trained, r.output
