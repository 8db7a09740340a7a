"""leap ablate's reuse of finished runs and its --anticipation-sources (session 69, three defects a mutation run found):
a --config YAML edited under the same path was not noticed (its runs were reused); `--anticipation-sources none`
(or ',') ran no anticipation program cell without a word; reused runs printed their first training's seconds as
if they had just been trained. Training and scoring are stubbed (tests/test_attack_s68_mut68ablate.py's fixtures)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leap_cli.cli import app
from tests.test_attack_s68_mut68ablate import fake, no_data  # noqa: F401  (fixtures)

RUN = "recognition-none-L_CE-seed0"


def flat(text: str) -> str:
    return " ".join(text.split())


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "300", "NO_COLOR": "1"})


def small(work: Path, config: str) -> list:
    """The smallest ablation: the L_CE cell, one seed, 2 epochs."""
    return ["ablate", "--workdir", work, "--seeds", "1", "--epochs", "2", "--sources", "none", "--no-anticipation",
            "--config", config]


def test_an_edited_config_file_is_refused_before_anything_is_built_or_trained(tmp_path, fake, no_data):
    """A run is reused only if the config it was trained with is the same: an edit of the YAML (or of its base:) is
    refused with one line naming the file and the run and saying how to start over; the finished run is kept. A
    change of layout or comments, or of a key every run sets itself (train.epochs), is the same config."""
    from leap_cli.errors import LeapError
    from leap_cli.train.ablate import AblateConfig, run_ablation

    base = tmp_path / "mybase.yaml"
    base.write_text("base: tiny-synthetic-short\noptim:\n  lr: 0.001\n")
    mine = tmp_path / "mine.yaml"
    mine.write_text("base: mybase.yaml\nloss:\n  lambda_t: 0.5\n")
    work = tmp_path / "w"
    cfg = AblateConfig(workdir=work, seeds=(0,), sources=("none",), anticipation=False, epochs=2, config=str(mine))
    run_ablation(cfg)
    assert [n for n, _ in fake.trained] == [RUN] and fake.trained[0][1].loss.lambda_t == 0.5
    done = work / "runs" / RUN / "result.json"
    first = done.read_text()
    mine.write_text("# the same config\nbase: mybase.yaml\nloss: {lambda_t: 0.5}\ntrain:\n  epochs: 99\n")
    run_ablation(cfg)
    assert len(fake.trained) == 1  # reused
    for edited, text in ((mine, "base: mybase.yaml\nloss:\n  lambda_t: 0.25\n"),
                         (base, "base: tiny-synthetic-short\noptim:\n  lr: 0.01\n")):
        old = edited.read_text()
        edited.write_text(text)
        built = len(no_data.kitchen)
        with pytest.raises(LeapError) as e:
            run_ablation(cfg)
        assert len(fake.trained) == 1 and len(no_data.kitchen) == built  # refused before the kitchen
        assert e.value.path == str(mine) and RUN in e.value.message and "changed" in e.value.message
        assert str(work / "runs") in e.value.fix and "--workdir" in e.value.fix
        assert "\n" not in e.value.one_line() and done.read_text() == first  # the finished run is kept
        edited.write_text(old)
    edited.write_text(text)
    r = invoke(*small(work, str(mine)))  # (leap's main prints a LeapError as one red line, exit 2)
    assert isinstance(r.exception, LeapError) and str(mine) in r.exception.one_line(), r.output
    assert len(fake.trained) == 1
    # started over as the error says: trained with the new config
    import shutil

    shutil.rmtree(work / "runs")
    run_ablation(cfg)
    assert len(fake.trained) == 2 and fake.trained[1][1].optim.lr == 0.01


def test_a_run_made_before_the_digest_is_reused_and_said_unchecked(tmp_path, fake, no_data):
    """A result.json of a leap that kept no digest of the config is reused, and one line says that its config could
    not be checked (the run's name, and how to train it again)."""
    mine = tmp_path / "mine.yaml"
    mine.write_text("base: tiny-synthetic-short\noptim:\n  lr: 0.001\n")
    work = tmp_path / "w"
    r = invoke(*small(work, str(mine)))
    assert r.exit_code == 0 and "could not be checked" not in r.output, r.output
    done = work / "runs" / RUN / "result.json"
    result = json.loads(done.read_text())
    assert len(result["settings"].pop("config_digest")) == 64
    done.write_text(json.dumps(result))
    mine.write_text("base: tiny-synthetic-short\noptim:\n  lr: 0.5\n")  # (cannot be told from the run)
    r = invoke(*small(work, str(mine)))
    assert r.exit_code == 0 and len(fake.trained) == 1, r.output
    line = next(x for x in r.output.splitlines() if "could not be checked" in x)
    assert "1 reused run " in line and str(mine) in line and RUN in line and str(work / "runs") in line


def test_reused_runs_say_so_with_the_seconds_of_their_training(tmp_path, fake, no_data):
    """A run trained now prints its seconds; a reused one says it was reused and labels its seconds as those of its
    training; the last line counts the reused runs."""
    work = tmp_path / "w"
    r = invoke(*small(work, "tiny-synthetic-short"))
    assert r.exit_code == 0, r.output
    line = next(x for x in r.output.splitlines() if x.startswith("recognition none L_CE seed 0:"))
    assert "(reused" not in line and line.endswith(" s)") and "reused)" not in r.output.splitlines()[-1]
    done = work / "runs" / RUN / "result.json"
    result = json.loads(done.read_text())
    result["seconds"] = 4242.0
    done.write_text(json.dumps(result))
    r = invoke(*small(work, "tiny-synthetic-short"))
    assert r.exit_code == 0 and len(fake.trained) == 1, r.output
    line = next(x for x in r.output.splitlines() if x.startswith("recognition none L_CE seed 0:"))
    assert "(reused: trained in 4242 s by an earlier run)" in line
    assert "1 run of earlier ablates reused" in flat(r.output).split("wrote")[-1]
    saved = json.loads((work / "ablation.json").read_text())
    assert "reused" not in saved["runs"][0] and saved["runs"][0]["seconds"] == 4242.0  # (ablation.json as it was)


@pytest.mark.parametrize("value", ["none", "truth,none", ","])
def test_an_anticipation_source_without_program_cells_is_refused(tmp_path, monkeypatch, value):
    """`--anticipation-sources none` (or ',') ran the anticipation L_CE cell only, as if the option were not given a
    source; it is now one line listing what the option takes, before anything runs. 'all' and truth still run."""
    import leap_cli.train.ablate as ablate

    seen = []
    monkeypatch.setattr(ablate, "run_ablation",
                        lambda cfg, on_run=None: seen.append(cfg) or {"markdown": "", "seconds": 0.0})
    from leap_cli.errors import LeapError

    r = invoke("ablate", "--workdir", tmp_path, "--anticipation-sources", value)
    assert isinstance(r.exception, LeapError) and not seen, r.output  # (leap's main: one red line, exit 2)
    out = r.exception.one_line()
    assert "--anticipation-sources" in out and "use 'all' or some of truth, offline" in out and "\n" not in out
    assert ("no source given" in out) == (value == ",")
    for fine in ("all", "truth", "TRUTH,offline"):
        assert invoke("ablate", "--workdir", tmp_path, "--anticipation-sources", fine).exit_code == 0
    assert [c.anticipation_sources for c in seen] == [None, ("truth",), ("truth", "offline")]
