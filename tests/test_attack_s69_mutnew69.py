"""Session 69's changed code, checked from a mutation run over its hunks (mutnew69): what the existing tests left
unpinned in ``printable``'s encodable step, ``leap ablate``'s note on --anticipation-sources, its config digest and
what its refusal of a changed config says. Training and scoring are stubbed (tests/test_attack_s68_mut68ablate.py's
fixtures)."""

from __future__ import annotations

import io
import json
import sys
from dataclasses import replace

import pytest

from tests.test_attack_s68_mut68ablate import fake, no_data  # noqa: F401  (fixtures)

RUN = "recognition-none-L_CE-seed0"


# ---------------------------------------------------------------- printable on an output of any kind

class _Stream(io.StringIO):
    def __init__(self, encoding):
        super().__init__()
        self._encoding = encoding

    @property
    def encoding(self):
        return self._encoding


@pytest.mark.parametrize("encoding", [None, "no-such-codec"])
def test_printable_leaves_text_alone_where_the_output_names_no_usable_encoding(monkeypatch, encoding):
    """A stdout with no encoding (``io.StringIO``, a redirect_stdout's) or one Python does not know: the text as it
    is, not a TypeError / LookupError from ``encodable``. Mutants: ``or not encoding`` dropped; the LookupError
    branch dropped."""
    from leap_cli.report.terminal import encodable, printable

    monkeypatch.setattr(sys, "stdout", _Stream(encoding))
    assert encodable("café ☃ 洗") == "café ☃ 洗"
    assert printable("café ☃ [b]") == "café ☃ \\[b]"


# ---------------------------------------------------------------- leap ablate's note and config digest

@pytest.mark.parametrize("sources, anticipation, noted", [
    (("offline",), ("truth", "offline"), ()),  # one of them is a source: its cells run, no note
    (("none", "offline"), ("truth",), ("truth",)),
    (("offline",), None, ()),  # 'all'
])
def test_the_note_is_for_anticipation_sources_none_of_which_is_a_source(sources, anticipation, noted):
    """The note is said where no --anticipation-sources is among --sources (then no anticipation program cell runs);
    one of them among them runs its cells. Mutant: ``any`` read as ``all``."""
    from leap_cli.train.ablate import AblateConfig, plan_cells, unplanned_anticipation

    cfg = AblateConfig(sources=sources, anticipation_sources=anticipation)
    assert unplanned_anticipation(cfg) == noted
    programs = [c for c in plan_cells(cfg.sources, cfg.anticipation, cfg.anticipation_sources)
                if c.task == "anticipation" and c.source != "none"]
    assert bool(programs) == (not noted)


def test_the_config_digest_ignores_the_order_of_keys(tmp_path):
    """The same config with its sections and keys in another order is the same digest (a reordered YAML is the
    config a run reads); a changed value is not. Mutant: ``sort_keys`` dropped."""
    from leap_cli.train.ablate import config_digest

    a, b, c = (tmp_path / f"{n}.yaml" for n in "abc")
    # (keys the base config does not set: merged into its sections in the order the file gives them)
    a.write_text("base: tiny-synthetic-short\noptim:\n  eps: 1.0e-07\n  min_lr_ratio: 0.1\nloss:\n  lambda_t: 0.5\n")
    b.write_text("loss:\n  lambda_t: 0.5\noptim:\n  min_lr_ratio: 0.1\n  eps: 1.0e-07\nbase: tiny-synthetic-short\n")
    c.write_text("loss:\n  lambda_t: 0.5\noptim:\n  min_lr_ratio: 0.2\n  eps: 1.0e-07\nbase: tiny-synthetic-short\n")
    assert config_digest(a) == config_digest(b) != config_digest(c)


@pytest.mark.parametrize("bundled", [True, False])
def test_a_changed_config_says_whether_leap_or_the_file_changed(tmp_path, fake, bundled):
    """The refusal of a run whose config changed: for a bundled config, that leap changed it (no file of the user's
    to put back); for the user's file, that putting it back goes on with the finished runs. Mutant: the test of a
    bundled config flipped."""
    from leap_cli.errors import LeapError
    from leap_cli.train.ablate import AblateConfig, plan_cells, run_cell

    config = "tiny-synthetic-short"
    if not bundled:
        config = tmp_path / "mine.yaml"
        config.write_text("base: tiny-synthetic-short\n")
    cfg = AblateConfig(workdir=tmp_path / "w", seeds=(0,), sources=("none",), anticipation=False, epochs=2,
                       config=str(config))
    cell = plan_cells(cfg.sources, cfg.anticipation, cfg.anticipation_sources)[0]
    run_cell(cfg.workdir, tmp_path / "k", cell, 0, cfg)
    done = cfg.workdir / "runs" / RUN / "result.json"
    result = json.loads(done.read_text())
    result["settings"]["config_digest"] = "0" * 64  # (the config as it was when the run was trained)
    done.write_text(json.dumps(result))
    with pytest.raises(LeapError) as e:
        run_cell(cfg.workdir, tmp_path / "k", cell, 0, replace(cfg))
    assert RUN in e.value.message and len(fake.trained) == 1
    assert ("the bundled config changed with leap" in e.value.fix) == bundled
    assert ("put the file back" in e.value.fix) == (not bundled)


def test_a_run_with_its_digest_checked_is_not_said_unchecked(tmp_path, fake, no_data):
    """A run this leap trained (its digest kept) is reused checked: counted reused, not among the runs "made by a
    leap that kept no digest". Mutant: the checked reuse returned as unchecked."""
    from leap_cli.train.ablate import AblateConfig, run_ablation

    cfg = AblateConfig(workdir=tmp_path / "w", seeds=(0, 1), sources=("none",), anticipation=False, epochs=2)
    first = run_ablation(cfg)
    assert (first["reused"], first["unchecked"], len(fake.trained)) == (0, [], 2)
    again = run_ablation(cfg)
    assert (again["reused"], again["unchecked"], len(fake.trained)) == (2, [], 2)


@pytest.mark.parametrize("seeds", [3, 4])
def test_the_unchecked_runs_line_names_three_and_says_there_are_more(tmp_path, fake, no_data, seeds):
    """The line on reused runs made without a digest counts them all and names the first three, with ", ..." only
    where there are more. Mutants: two named; ", ..." after three."""
    from tests.test_attack_s69_ablate69 import invoke

    work = tmp_path / "w"
    args = ["ablate", "--workdir", work, "--seeds", seeds, "--epochs", "2", "--sources", "none", "--no-anticipation"]
    assert invoke(*args).exit_code == 0
    names = [f"recognition-none-L_CE-seed{s}" for s in range(seeds)]
    for name in names:  # (as a leap before the digest wrote them)
        done = work / "runs" / name / "result.json"
        result = json.loads(done.read_text())
        del result["settings"]["config_digest"]
        done.write_text(json.dumps(result))
    r = invoke(*args)
    assert r.exit_code == 0 and len(fake.trained) == seeds, r.output
    line = " ".join(r.output.split()).split("could not be checked")[1].split("wrote")[0]
    assert f"{seeds} reused runs made by a leap that kept no digest" in " ".join(r.output.split())
    assert [n in line for n in names] == [True] * 3 + [False] * (seeds - 3)
    assert line.rstrip().endswith(", ...)" if seeds > 3 else f"{names[2]})"), line


# ---------------------------------------------------------------- --html, a string option, still a path

@pytest.mark.parametrize("command", [["show", "P01_01_0"], ["validate-programs"]])
@pytest.mark.parametrize("given", [["--html", ""], ["--html="], ["--html", "  "]])
def test_an_empty_html_is_the_command_lines_refusal_of_an_empty_path(command, given):
    """``--html`` became a string (a Path loses the trailing slash): empty, it is still refused by the command line
    before anything is read, with the line of an empty path option (an unset variable in a job script); page_out's
    own refusal comes after the files are read (validate-programs). Mutant: --html out of STRING_PATHS."""
    from leap_cli.cli import empty_path_option
    from leap_cli.errors import LeapError

    with pytest.raises(LeapError) as e:
        empty_path_option([*command, *given])
    assert e.value.message.startswith("--html is empty (an unset variable in a job script?)")
    assert "give --html a path, or leave it out" in e.value.fix
    empty_path_option([*command, "--html", "pages/"])  # (a path: no refusal)


# ---------------------------------------------------------------- a stop ends a loader's workers

def _sleep() -> None:
    import time

    time.sleep(60)


@pytest.mark.skipif(sys.platform != "linux", reason="fork, as leap's loaders use")
def test_a_stop_leaves_the_killed_workers_reaped_and_forgotten_by_torchs_check():
    """``_end_on_stop``: a live worker is killed and reaped before it returns (its exit code is there, no zombie left
    for torch's shutdown to collect), one that ended by itself is left as it was, and torch's SIGCHLD check no
    longer counts the kills as failures. Mutant: the join of the killed workers dropped."""
    import multiprocessing
    import signal
    from types import SimpleNamespace

    from torch.utils.data._utils import signal_handling

    from leap_cli.shards.dataset import _end_on_stop

    ctx = multiprocessing.get_context("fork")
    done, live = ctx.Process(target=int), ctx.Process(target=_sleep)
    done.start()
    done.join(10)
    live.start()
    it = SimpleNamespace(_workers=[done, live], _worker_pids_set=True)
    signal_handling._set_worker_pids(id(it), (done.pid, live.pid))
    try:
        _end_on_stop(it)
        assert (done.exitcode, live.exitcode) == (0, -signal.SIGKILL)
        assert it._worker_pids_set is False
        signal_handling._error_if_any_worker_fails()  # (raised "killed by signal" for a worker still registered)
    finally:
        if live.is_alive():
            live.kill()
            live.join(5)
        if it._worker_pids_set:
            signal_handling._remove_worker_pids(id(it))


def test_a_stop_in_train_ends_the_loaders_workers_before_it_goes_on(tmp_path, monkeypatch):
    """``leap train``'s main: a stop (a KeyboardInterrupt) met anywhere in the run kills every loader's workers at
    once (``end_loader_workers``: torch's shutdown of a stalled worker's loader took ~10 s), then goes on as a stop.
    Mutant: that call dropped."""
    import leap_cli.model as model
    import leap_cli.shards.dataset as dataset
    from tests.test_train import MemorySource, main, tiny_config

    ended = []
    monkeypatch.setattr(dataset, "end_loader_workers", lambda: ended.append(True))

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(model, "build_model", stop)
    with pytest.raises(KeyboardInterrupt):
        main(tiny_config("train.max_steps=1"), workdir=tmp_path, name="r", source=MemorySource(val=False))
    assert ended == [True]


def test_a_loaders_start_is_not_failed_by_an_iterator_without_weak_references():
    """``_started`` notes each loader iterator (``_ITERATORS``, a WeakSet, for ``end_loader_workers``): an iterator
    that takes no weak reference (a stand-in loader's ``iter(list)``) failed its start with a TypeError, and three
    tests of tests/test_attack_s68_mutnew68.py with it. Found and fixed: it is only not noted."""
    from leap_cli.shards.dataset import _started

    class Loader:
        def __iter__(self):
            return iter([{"n": 1}, {"n": 2}])

    assert list(_started(Loader())) == [{"n": 1}, {"n": 2}]


@pytest.mark.parametrize("leave_early", [False, True])
def test_stops_held_past_hold_stops_are_one_stop_taken_once(monkeypatch, leave_early):
    """A persistent loader's later epoch (``stops_held`` without ``block``): two Ctrl-C held there are one stop, sent
    again at HOLD_STOPS while the start still waits, and not raised again as the block ends; a block left before
    HOLD_STOPS raises it there, once. Mutants: the resend without its dedup, or without clearing what it sent."""
    import signal
    import time

    import leap_cli.common as common

    monkeypatch.setattr(common, "HOLD_STOPS", 0.2)
    taken = []
    old = signal.signal(signal.SIGINT, lambda s, f: taken.append(time.monotonic()))
    try:
        with common.stops_held(block=False):
            for _ in range(2):
                signal.raise_signal(signal.SIGINT)
            assert taken == []  # (held)
            time.sleep(0.05 if leave_early else 0.8)
            assert len(taken) == (0 if leave_early else 1)
        time.sleep(0.4 if leave_early else 0.05)  # (past the timer's time)
        assert len(taken) == 1
    finally:
        signal.signal(signal.SIGINT, old)
