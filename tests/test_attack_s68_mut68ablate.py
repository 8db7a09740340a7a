"""leap ablate's bookkeeping, checked from a mutation run over leap_cli/train/ablate.py and leap_cli/commands/ablate.py
(session 68): which cells a rerun reuses or trains again, what a stopped ablation keeps, what each run is trained and
scored with, how the table merges seeds, and what the command prints. Training and scoring are stubbed; the claims of
docs/train.md ("The ablation: leap ablate") are checked against the behaviour."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from leap_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]
REC = {"recognition": {"all": {t: {"top1": 0.5, "top5": 0.9} for t in ("verb", "noun", "action")}}}
ANT = {"anticipation": {"overall": {t: {"mt5r": 0.25} for t in ("verb", "noun", "action")}}}


def flat(text: str) -> str:
    return " ".join(text.split())


def train_md_ablation() -> str:
    text = (ROOT / "docs/train.md").read_text()
    start = text.index("## The ablation: `leap ablate`")
    return flat(text[start:text.index("\n## ", start + 5)])


@pytest.fixture
def fake(monkeypatch):
    """leap train, leap evaluate's inference and scoring stubbed: records what each run is trained and scored with;
    ``fake.stop`` names runs whose training a signal stops; ``fake.metrics`` is the metrics a task's runs get."""
    import leap_cli.evaluate.inference as inference
    import leap_cli.evaluate.scoring as scoring
    import leap_cli.train.loop as loop

    rec = SimpleNamespace(trained=[], evaluated=[], scored=[], stop={},
                          metrics={"recognition": REC, "anticipation": ANT})

    def fake_main(cfg, workdir, name):
        run = Path(workdir) / "runs" / name
        run.mkdir(parents=True, exist_ok=True)
        (run / "trained.txt").write_text(name)
        rec.trained.append((name, cfg))
        return SimpleNamespace(interrupted=rec.stop.pop(name, None))

    def fake_evaluate(run_dir, split, **kw):
        rec.evaluated.append((Path(run_dir), split, kw))
        return {"task": kw.get("task")}, None

    def fake_scores(scores, annotations, split, task):
        rec.scored.append((split, task))
        return rec.metrics[task]

    monkeypatch.setattr(loop, "main", fake_main)
    monkeypatch.setattr(inference, "evaluate_run", fake_evaluate)
    monkeypatch.setattr(scoring, "evaluate_scores", fake_scores)
    monkeypatch.setattr("leap_cli.epic.annotations.Annotations", lambda *a, **k: None)
    return rec


@pytest.fixture
def no_data(monkeypatch):
    """run_ablation without the kitchen, the programs and the shards (recorded)."""
    import leap_cli.synth.kitchen as kitchen
    import leap_cli.train.ablate as ablate

    made = SimpleNamespace(kitchen=[], programs=[], shards=[])
    monkeypatch.setattr(kitchen, "build_kitchen", lambda out, cfg, **kw: made.kitchen.append((out, cfg)))
    monkeypatch.setattr(ablate, "prepare_programs", lambda work, k, source: made.programs.append(source))
    monkeypatch.setattr(ablate, "prepare_shards",
                        lambda work, k, source, task, cfg: made.shards.append((source, task)))
    return made


# ---- docs/train.md's claims ---------------------------------------------------------------------------------------

def test_the_defaults_train_md_states_are_the_commands():
    """train.md: "--videos 10 --segments 40 ... 64x48 at 29.97 fps", shards of "4 frames, short side 48", "--epochs
    (24", "--anticipation-epochs (8", "--span-frames ... 256 by default", "--seeds (default 3)", config
    tiny-synthetic-short, anticipation cells of the source truth by default; and the kitchen is built with them."""
    from leap_cli.commands.ablate import ablate
    from leap_cli.train.ablate import AblateConfig

    doc = train_md_ablation()
    for said in ("`--videos 10 --segments 40`", "64x48 at 29.97 fps", "4 frames, short side 48", "(default 3)",
                 "`--epochs` (24", "`--anticipation-epochs` (8", "256 by default", "`tiny-synthetic-short`",
                 "program source `truth` by default"):
        assert said in doc, said
    d = AblateConfig()
    assert (d.videos, d.segments_per_video, d.width, d.height, d.frames, d.short_side) == (10, 40, 64, 48, 4, 48)
    assert round(d.fps[0], 2) == 29.97 and len(d.fps) == 1 and d.config == "tiny-synthetic-short"
    assert (d.epochs, d.anticipation_epochs, d.span_frames, len(d.seeds), d.seeds) == (24, 8, 256, 3, (0, 1, 2))
    assert d.anticipation is True and d.anticipation_sources == ("truth",) and d.kitchen_seed == 0
    options = {p.name: p.default for p in typer_params(ablate)}
    assert (options["seeds"], options["epochs"], options["anticipation_epochs"], options["videos"],
            options["segments"], options["span_frames"], options["config"], options["anticipation_sources"]) == (
        3, 24, 8, 10, 40, 256, "tiny-synthetic-short", "truth")
    k = AblateConfig(kitchen_seed=3, videos=4, segments_per_video=5, width=96, height=64).kitchen()
    assert (k.seed, k.videos, k.segments_per_video, k.width, k.height, k.fps) == (3, 4, 5, 96, 64, d.fps)
    assert k.audio_in_mp4 is False  # (the ablation decodes no audio)


def typer_params(fn):
    import inspect

    return [SimpleNamespace(name=n, default=p.default.default) for n, p in inspect.signature(fn).parameters.items()]


def test_cells_that_would_repeat_another_are_skipped_as_train_md_says():
    """train.md: "Cells that would repeat another (program losses without programs, L_CE under each source) are
    skipped"; +L_T is `loss.lambda_pc=0`, +L_PC `loss.lambda_t=0`; `--anticipation-sources all` for every source."""
    from leap_cli.train.ablate import plan_cells

    only_none = plan_cells(("none",), True, None)
    assert [(c.task, c.name) for c in only_none] == [("recognition", "L_CE"), ("anticipation", "L_CE")]
    every = plan_cells(("truth", "offline", "none"), True, None)
    assert [c.source for c in every if c.name == "L_CE"] == ["none", "none"]
    assert all(c.source != "none" for c in every if c.name != "L_CE")
    assert len({(c.task, c.source, c.name) for c in every}) == len(every) == 12
    by = {(c.task, c.source, c.name): c.overrides for c in every}
    assert by[("recognition", "offline", "+L_T")] == ("loss.lambda_pc=0.0",)
    assert by[("recognition", "offline", "+L_PC")] == ("loss.lambda_t=0.0",)
    assert "loss.program_loss=false" in by[("anticipation", "none", "L_CE")]
    assert "model.anticipation_context=2" in by[("anticipation", "offline", "+L_T+L_PC+aggregation")]


def test_a_finished_run_is_trained_again_under_each_setting_train_md_names(tmp_path, fake):
    """train.md: a finished run "is reused when the command is run again with the same settings ...; one made with
    another `--epochs`, `--anticipation-epochs`, `--set`, `--config` or kitchen is trained again"."""
    from leap_cli.train.ablate import AblateConfig, Cell, run_cell

    doc = train_md_ablation()
    assert ("one made with another `--epochs`, `--anticipation-epochs`, `--set`, `--config` or kitchen is trained "
            "again") in doc
    ant = Cell("+L_T+L_PC", "anticipation", "truth", ("data.task=anticipation", "model.anticipation_context=2",
                                                       "model.anticipation_aggregate=false"))
    base = dict(workdir=tmp_path, epochs=2, anticipation_epochs=2)
    run_cell(tmp_path, tmp_path / "k", ant, 0, AblateConfig(**base))
    run_cell(tmp_path, tmp_path / "k", ant, 0, AblateConfig(**base, seeds=(0, 1), sources=("truth",)))
    assert len(fake.trained) == 1  # the same settings (the seeds and sources of the matrix do not count)
    changes = [{"anticipation_epochs": 3}, {"config": "tiny-synthetic"}, {"overrides": ("optim.lr=0.01",)},
               {"videos": 6}, {"segments_per_video": 12}, {"kitchen_seed": 1}, {"width": 96}, {"height": 64},
               {"fps": None}, {"frames": 8}, {"short_side": 64}, {"span_frames": 128}]
    for seed, change in enumerate(changes, 1):  # each against a run of the base settings
        run_cell(tmp_path, tmp_path / "k", ant, seed, AblateConfig(**base))
        before = len(fake.trained)
        run_cell(tmp_path, tmp_path / "k", ant, seed, AblateConfig(**{**base, **change}))
        assert len(fake.trained) == before + 1, f"a run made before {change} was reused"
        run_cell(tmp_path, tmp_path / "k", ant, seed, AblateConfig(**{**base, **change}))
        assert len(fake.trained) == before + 1, f"a run made with {change} was not reused"


def test_a_result_of_a_leap_that_kept_no_settings_is_reused_but_for_aggregation(tmp_path, fake):
    """(run_cell's rule) a result.json with no "settings" (an earlier leap) is reused, and is trained again for an
    aggregation cell only (which pooled otherwise then)."""
    from leap_cli.train.ablate import AblateConfig, Cell, run_cell

    cfg = AblateConfig(workdir=tmp_path, epochs=2)
    cell = Cell("+L_T", "recognition", "truth", ("loss.lambda_pc=0.0",))
    old = tmp_path / "runs" / "recognition-truth-plus_L_T-seed0" / "result.json"
    old.parent.mkdir(parents=True)
    old.write_text(json.dumps({"cell": asdict(cell), "seed": 0, "seconds": 1.0, "verb_top1": 0.125}))
    assert run_cell(tmp_path, tmp_path / "k", cell, 0, cfg)["verb_top1"] == 0.125 and fake.trained == []
    # a cell without aggregation keeps no "pool" in its settings: a result of today's leap is reused
    noagg = Cell("+L_T+L_PC", "anticipation", "truth", ("model.anticipation_aggregate=false",))
    run_cell(tmp_path, tmp_path / "k", noagg, 0, cfg)
    assert "pool" not in json.loads(next((tmp_path / "runs").glob("anticipation-*")).joinpath(
        "result.json").read_text())["settings"]


def test_a_stopped_ablation_keeps_its_finished_cells_and_the_rerun_goes_on(tmp_path, fake, no_data):
    """train.md: "an interrupted ablation resumes (Ctrl-C or SIGTERM stops the whole ablation ...; the cell that was
    training has no `result.json` and is trained again from its start)"; finished runs are reused."""
    from leap_cli.train.ablate import AblateConfig, CellInterrupted, run_ablation

    cfg = AblateConfig(workdir=tmp_path, seeds=(0, 1), sources=("none",), anticipation=False, epochs=2)
    fake.stop["recognition-none-L_CE-seed1"] = "SIGINT"
    with pytest.raises(CellInterrupted) as e:
        run_ablation(cfg)
    assert e.value.signal == "SIGINT" and e.value.run_dir == tmp_path / "runs" / "recognition-none-L_CE-seed1"
    assert (tmp_path / "runs/recognition-none-L_CE-seed0/result.json").exists()
    assert not (e.value.run_dir / "result.json").exists() and (e.value.run_dir / "trained.txt").exists()
    assert not (tmp_path / "ablation.md").exists() and not (tmp_path / "ablation.json").exists()
    (e.value.run_dir / "half.pt").write_text("the stopped run's checkpoint")
    fake.trained.clear()
    summary = run_ablation(cfg)
    assert [n for n, _ in fake.trained] == ["recognition-none-L_CE-seed1"]  # seed 0 reused
    assert not (e.value.run_dir / "half.pt").exists()  # trained again from its start
    assert [r["seed"] for r in summary["runs"]] == [0, 1]
    assert (tmp_path / "runs/recognition-none-L_CE-seed1/result.json").exists()
    saved = json.loads((tmp_path / "ablation.json").read_text())
    assert saved["runs"] == json.loads(json.dumps(summary["runs"])) and saved["rows"][0]["seeds"] == [0, 1]
    assert (tmp_path / "ablation.md").read_text() == summary["markdown"]


def test_each_run_is_trained_and_scored_as_the_docs_say(tmp_path, fake):
    """Its own run folder and shards, the seed, --epochs / --anticipation-epochs, one validation at the end, no
    periodic checkpoint (also under a config that makes them), scored on the validation split's shards from the
    last checkpoint with the cell's task (train.md: "scores its last checkpoint on the validation split")."""
    from leap_cli.train.ablate import AblateConfig, Cell, run_cell, shards_dir

    agg = Cell("+L_T+L_PC+aggregation", "anticipation", "offline",
               ("data.task=anticipation", "model.anticipation_context=2", "model.anticipation_aggregate=true"))
    cfg = AblateConfig(workdir=tmp_path, epochs=5, anticipation_epochs=3, config="tiny-synthetic")
    r = run_cell(tmp_path, tmp_path / "k", agg, 4, cfg)
    ((name, c),) = fake.trained
    assert name == "anticipation-offline-plus_L_Tplus_L_PCplus_aggregation-seed4"
    assert (c.train.seed, c.train.epochs, c.train.eval_every_epochs, c.train.checkpoint_every) == (4, 3, 3, 0)
    assert Path(c.data.train) == shards_dir(tmp_path, "offline", "train", "anticipation")
    assert Path(c.data.val) == tmp_path / "sources/offline/shards/val-anticipation"
    assert (c.model.num_frames, c.data.task, c.model.anticipation_context, c.model.anticipation_aggregate) == (
        8, "anticipation", 2, True)  # the bundled config by its name
    ((run_dir, split, kw),) = fake.evaluated
    assert run_dir == tmp_path / "runs" / name and split == "val" and kw["checkpoint"] == "last"
    assert kw["task"] == "anticipation" and Path(kw["shards"]) == Path(c.data.val)
    assert fake.scored == [("val", "anticipation")]
    saved = json.loads((run_dir / "result.json").read_text())
    assert saved == json.loads(json.dumps(r)) and r["seed"] == 4 and r["cell"]["name"] == agg.name
    assert r["settings"]["epochs"] == 3
    assert r["verb_mt5r"] == r["action_mt5r"] == 0.25
    # a YAML file as --config
    yaml = tmp_path / "mine.yaml"
    yaml.write_text("base: tiny-synthetic-short\ntrain:\n  checkpoint_every: 7\n")
    rec = Cell("L_CE", "recognition", "none", ("loss.program_loss=false",))
    run_cell(tmp_path, tmp_path / "k", rec, 0, AblateConfig(workdir=tmp_path, epochs=2, config=str(yaml)))
    name, c = fake.trained[-1]
    assert name == "recognition-none-L_CE-seed0" and (c.model.num_frames, c.train.checkpoint_every) == (4, 0)
    assert c.loss.program_loss is False and fake.scored[-1] == ("val", "recognition")


# ---- the figures and the table ----------------------------------------------------------------------------------

def test_summarize_takes_top1_every_class_and_the_program_figures():
    from leap_cli.train.ablate import summarize

    got = summarize({**REC, **ANT, "programs": {"steps": {"s_verb": 0.5, "obj_a": 0.0, "structure": 0.75},
                                                "step_conditions": {"all": {"micro_f1": 0.5, "macro_f1": 0.1}}}})
    assert got == {"verb_top1": 0.5, "noun_top1": 0.5, "action_top1": 0.5, "verb_mt5r": 0.25, "noun_mt5r": 0.25,
                   "action_mt5r": 0.25, "s_verb": 0.5, "obj_a": 0.0, "structure": 0.75, "step_cond_f1": 0.5}
    assert summarize({"programs": {"steps": {"s_verb": None}, "step_conditions": {"all": {"micro_f1": None}}}}) == {}


def test_the_table_merges_seeds_with_their_zeros_sums_their_seconds_and_shows_every_measured_column():
    """A seed at 0 % is a figure (it was dropped from the mean); a column measured in one row only is shown; the
    spread is the sample standard deviation; the anticipation columns come after the recognition ones."""
    from leap_cli.train.ablate import mean_std, table

    assert mean_std([0.0, 10.0]) == (5.0, pytest.approx(7.0710678))
    cell = {"task": "recognition", "source": "truth", "name": "+L_PC"}
    rs = [{"cell": cell, "seed": 0, "seconds": 2.0, "verb_top1": 0.0, "s_verb": 0.25, "structure": 0.5},
          {"cell": cell, "seed": 1, "seconds": 3.5, "verb_top1": 0.5, "s_verb": 0.0},
          {"cell": {"task": "anticipation", "source": "none", "name": "L_CE"}, "seed": 0, "seconds": 4.0,
           "verb_mt5r": 0.123456, "action_mt5r": 0.2}]
    rows, md = table(rs)
    assert rows[0]["seconds"] == 5.5 and rows[0]["seeds"] == [0, 1]
    assert rows[0]["verb_top1"] == {"mean": 25.0, "std": pytest.approx(35.3553)}
    assert rows[0]["s_verb"]["mean"] == 12.5 and rows[1]["verb_mt5r"] == {"mean": 12.3456, "std": 0.0}
    lines = md.split("\n\n")[0].splitlines()
    assert lines[0] == ("| task | programs | losses | seeds | verb top-1 | ant. verb mT5R | ant. action mT5R | "
                        "S-Verb | structure |")
    assert lines[1] == "|" + "---|" * 9
    assert lines[2] == "| recognition | truth | +L_PC | 2 | 25.0 ± 35.4 |  |  | 12.5 ± 17.7 | 50.0 ± 0.0 |"
    assert lines[3] == "| anticipation | none | L_CE | 1 |  | 12.3 | 20.0 |  |  |"
    assert "Validation split" in md.split("\n\n")[1]


def test_sources_are_rows_of_their_own(tmp_path, fake, no_data):
    """The same cell under two program sources is two rows, and each source's run gets its own shards."""
    from leap_cli.train.ablate import AblateConfig, run_ablation

    fake.metrics["recognition"] = {"recognition": {"all": {t: {"top1": 0.5} for t in ("verb", "noun", "action")}},
                                   "programs": {"steps": {"structure": 0.5}}}
    labels = []
    cfg = AblateConfig(workdir=tmp_path, seeds=(0,), sources=("truth", "offline"), anticipation=False, videos=4,
                       kitchen_seed=2)
    summary = run_ablation(cfg, on_run=lambda label, r: labels.append(label))
    assert [(r["source"], r["cell"]) for r in summary["rows"]] == [("none", "L_CE")] + [
        (s, n) for s in ("truth", "offline") for n in ("+L_T", "+L_PC", "+L_T+L_PC")]
    assert labels[1] == "recognition truth +L_T seed 0" and labels[4] == "recognition offline +L_T seed 0"
    assert sorted(no_data.programs) == ["none", "offline", "truth"]
    assert sorted(no_data.shards) == [("none", "recognition"), ("offline", "recognition"), ("truth", "recognition")]
    ((out, kc),) = no_data.kitchen
    assert out == tmp_path / "kitchen" and kc == cfg.kitchen()
    trained = {n: Path(c.data.train) for n, c in fake.trained}
    assert trained["recognition-offline-plus_L_PC-seed0"] == tmp_path / "sources/offline/shards/train"
    assert "structure" in summary["markdown"].splitlines()[0]


# ---- the data of each source ------------------------------------------------------------------------------------

def test_offline_programs_are_generated_in_the_sources_folder_for_both_splits(tmp_path, monkeypatch):
    import leap_cli.programs.generate as generate
    from leap_cli.train.ablate import prepare_programs

    calls = []

    def fake_generate(cfg):
        calls.append((cfg.workdir, cfg.split, cfg.data, cfg.backend))
        out = Path(cfg.workdir) / "programs" / f"{cfg.split}.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("")

    monkeypatch.setattr(generate, "generate_programs", fake_generate)
    prepare_programs(tmp_path, tmp_path / "k", "offline")
    sw = tmp_path / "sources" / "offline"
    assert calls == [(sw, "train", tmp_path / "k", "offline"), (sw, "val", tmp_path / "k", "offline")]


def test_offline_programs_cut_short_by_a_stop_are_completed_by_the_next_ablate(tmp_path, monkeypatch):
    """Was wrong: a generation stopped by Ctrl-C (or a stage error) leaves its output with the programs made so far
    (leap generate-programs resumes from them); the next leap ablate saw the file, kept it, and trained every
    offline cell with the programs of that part of the split only. It now lets the generator resume the file."""
    from leap_cli.train.ablate import prepare_programs
    from tests.test_shards import make_root

    root = make_root(tmp_path / "kitchen")
    prepare_programs(tmp_path / "w", root, "offline")
    programs = tmp_path / "w" / "sources" / "offline" / "programs"
    full = {json.loads(x)["narration_id"]: json.loads(x)["program"] for x in (programs / "train.jsonl").open()}
    assert len(full) == 7 and all(full.values())
    first = (programs / "train.jsonl").read_text().splitlines(True)[0]
    (programs / "train.jsonl").write_text(first)  # what a stop after the first program leaves
    val = (programs / "val.jsonl").read_text()
    prepare_programs(tmp_path / "w", root, "offline")
    again = {json.loads(x)["narration_id"]: json.loads(x)["program"] for x in (programs / "train.jsonl").open()}
    assert again == full
    assert (programs / "val.jsonl").read_text() == val  # a finished split is left as it is
    import leap_cli.programs.generate as generate

    monkeypatch.setattr(generate, "generate_programs", lambda cfg: pytest.fail(f"{cfg.split} generated again"))
    prepare_programs(tmp_path / "w", root, "offline")  # both splits whole: kept
    assert len((programs / "train.jsonl").read_text().splitlines()) == 7


def test_the_current_truth_folder_wins_over_the_former_one(tmp_path):
    from leap_cli.errors import LeapError
    from leap_cli.train.ablate import kitchen_truth_file

    for folder in ("ground-truth", "_truth"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "segments.jsonl").write_text("")
    assert kitchen_truth_file(tmp_path) == tmp_path / "_truth" / "segments.jsonl"
    (tmp_path / "nothing").mkdir()
    with pytest.raises(LeapError) as e:
        kitchen_truth_file(tmp_path / "nothing")
    assert e.value.path == str(tmp_path / "nothing" / "_truth" / "segments.jsonl")  # the folder of today's kitchens


def test_shards_are_built_with_the_ablations_frames_and_short_side_in_the_sources_folder(tmp_path, monkeypatch):
    import leap_cli.shards.writer as writer
    from leap_cli.train.ablate import AblateConfig, prepare_shards

    calls = []
    monkeypatch.setattr(writer, "build_split", lambda kitchen, split, **kw: calls.append(kw))
    prepare_shards(tmp_path, tmp_path / "k", "offline", "recognition", AblateConfig(frames=6, short_side=40))
    s = calls[0]["settings"]
    assert (s.frames, s.short_side) == (6, 40) and calls[0]["workdir"] == tmp_path / "sources" / "offline"
    assert calls[0]["out"] == tmp_path / "sources/offline/shards/train"
    calls.clear()
    (tmp_path / "sources/offline/shards/val").mkdir(parents=True)  # a folder without its manifest: a build that stopped
    prepare_shards(tmp_path, tmp_path / "k", "offline", "recognition", AblateConfig())
    assert [c["out"].name for c in calls] == ["train", "val"]


# ---- the command ---------------------------------------------------------------------------------------------------

def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "300", "NO_COLOR": "1"})


def test_the_command_prints_a_markup_like_workdir_as_it_is(tmp_path, monkeypatch):
    """A --workdir whose name holds rich markup ("[red]") is printed as typed, in the header and the last line."""
    import leap_cli.train.ablate as ablate

    monkeypatch.setattr(ablate, "run_ablation", lambda cfg, on_run=None: {"markdown": "| t |", "seconds": 1.0})
    work = tmp_path / "abl[red]x"
    r = invoke("ablate", "--workdir", work, "--seeds", "1", "--sources", "none", "--no-anticipation")
    assert r.exit_code == 0, r.output
    out = flat(r.output)
    assert f"ablation in {work}: 1 run" in out and f"wrote {work / 'ablation.md'} and ablation.json (1 s)" in out


def test_the_command_passes_span_frames_and_each_epoch_count_and_refuses_a_span_of_zero(tmp_path, monkeypatch):
    import leap_cli.train.ablate as ablate

    seen = []
    monkeypatch.setattr(ablate, "run_ablation",
                        lambda cfg, on_run=None: seen.append(cfg) or {"markdown": "", "seconds": 0.0})
    r = invoke("ablate", "--workdir", tmp_path, "--span-frames", "32", "--epochs", "2", "--anticipation-epochs", "5",
               "--seeds", "2", "--anticipation-sources", "truth, offline,")
    assert r.exit_code == 0, r.output
    assert (seen[0].span_frames, seen[0].epochs, seen[0].anticipation_epochs, seen[0].seeds) == (32, 2, 5, (0, 1))
    assert seen[0].anticipation_sources == ("truth", "offline")
    for option, value in (("--span-frames", "0"), ("--videos", "1"), ("--seeds", "0")):
        r = invoke("ablate", "--workdir", tmp_path, option, value)
        assert r.exit_code == 2 and option in r.output and len(seen) == 1, r.output


def test_a_misspelt_anticipation_source_is_told_the_sources_with_programs():
    """The fix names what --anticipation-sources takes to some effect: 'all' or a source with programs (none has no
    program cells)."""
    from leap_cli.errors import LeapError
    from leap_cli.train.ablate import AblateConfig

    with pytest.raises(LeapError) as e:
        AblateConfig(anticipation_sources=("truth", "ofline"))
    assert e.value.message == "unknown --anticipation-sources ofline"
    assert e.value.fix == "use 'all' or some of truth, offline"
