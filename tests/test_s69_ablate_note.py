"""`leap ablate --sources offline` with the default `--anticipation-sources truth` planned no anticipation program
cell (only the L_CE one) without a word: a note says so, and how to get them."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from leap_cli.cli import app
from tests.test_attack_s68_mut68ablate import fake, no_data  # noqa: F401 (fixtures)


@pytest.mark.parametrize("args, noted", [
    (["--sources", "offline"], "--anticipation-sources truth is not among --sources offline"),
    (["--sources", "none"], "--anticipation-sources truth is not among --sources none"),
    (["--sources", "truth,offline", "--anticipation-sources", "offline"], None),
    (["--sources", "offline", "--anticipation-sources", "all"], None),
    (["--sources", "offline", "--no-anticipation"], None),
])
def test_anticipation_sources_outside_the_sources_are_noted(fake, no_data, tmp_path, monkeypatch,  # noqa: F811
                                                             args, noted):
    monkeypatch.setenv("COLUMNS", "300")
    res = CliRunner().invoke(app, ["ablate", "--workdir", str(tmp_path / "a"), "--seeds", "1", "--epochs", "1",
                                   "--anticipation-epochs", "1", *args])
    assert res.exit_code == 0, res.output
    notes = [x for x in res.output.splitlines() if x.startswith("note: no anticipation program cell")]
    if noted is None:
        assert not notes, res.output
    else:
        assert len(notes) == 1 and noted in notes[0] and "--anticipation-sources all" in notes[0], res.output
        trained = [name for name, _ in fake.trained]
        assert not [n for n in trained if n.startswith("anticipation-") and "-none-" not in n], trained
