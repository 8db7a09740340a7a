"""The CLI's shared conventions, pinned where a mutation test found them unchecked: split names, ``--shard i/n``
(which items a part takes, its file's name), the work directory, the one-line errors and their exit status, the
signals, progress lines off stdout, and a stage's exit status from its records."""

import errno
import io
import logging
import signal
import sys

import pytest

from leap_cli.errors import LeapError
from tests.procs import leap_main


def _main(monkeypatch, capsys, *argv):
    """``leap ARGV`` in this process: (exit status, stderr)."""
    code, _, err = _run(monkeypatch, capsys, *argv)
    return code, err


_run = leap_main


# -- split names and --shard i/n (leap_cli/common.py)

def test_a_split_name_is_taken_with_spaces_around_it_in_any_case():
    """`--split " Validation"` (a job script's quoting) is EPIC's validation split."""
    from leap_cli.common import normalize_split

    assert [normalize_split(n) for n in (" Validation ", "TRAIN\n", "\tTest")] == ["val", "train", "test"]


def test_a_choice_is_taken_in_any_case_with_spaces_around_it_as_a_split_name_is():
    from leap_cli.common import lowercase

    assert [lowercase(v) for v in (" Recognition ", "OFFLINE", None)] == ["recognition", "offline", None]


def test_part_i_of_n_takes_every_nth_item_from_the_ith():
    """--shard 0/3 is items 0, 3, 6, ...: "every n-th item starting at the i-th", as documented (not merely some
    partition of the items)."""
    from leap_cli.common import ShardSpec

    items = list(range(10))
    assert [ShardSpec.parse(f"{i}/3").select(items) for i in range(3)] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert ShardSpec.parse("0/1").select(items) == items and ShardSpec().suffix == ""



def test_a_segment_may_start_at_zero_and_last_no_time():
    """A segment at the start of a video (start 0) or of no length (start == stop) is a well-formed descriptor;
    one that stops before it starts, or at a negative time, is not."""
    from leap_cli.common import descriptor_problem

    record = {"narration_id": "P01_01_0", "components": {}, "text": "open fridge", "video_id": "P01_01"}
    assert descriptor_problem({**record, "start": 0, "stop": 2.5}) is None
    assert descriptor_problem({**record, "start": 1.5, "stop": 1.5}) is None
    assert "before it starts" in descriptor_problem({**record, "start": 2.0, "stop": 1.0})
    assert "negative" in descriptor_problem({**record, "start": -1.0, "stop": 1.0})
    assert descriptor_problem({**record, "narration_id": 7}) == "no narration_id string"


def test_an_output_may_replace_an_empty_file_or_its_own_kind_but_not_another(tmp_path):
    """--html/--report over an existing file: an empty one (a write that was stopped, a `touch`) or one of its kind
    (a BOM or blank lines before it) is replaced; an input, a folder or a file of another kind is refused."""
    from leap_cli.common import refuse_overwrite

    empty, page, csv = tmp_path / "empty.html", tmp_path / "page.html", tmp_path / "EPIC_100_train.csv"
    empty.write_text("")
    page.write_bytes(b"\xef\xbb\xbf\n  <!DOCTYPE html><html></html>")
    csv.write_text("narration_id,start\n")
    for ok in (empty, page, tmp_path / "new.html"):
        refuse_overwrite(ok, [csv], "--html", "html")
    for bad, says in ((csv, "which this command reads or writes"), (tmp_path, "names a folder")):
        with pytest.raises(LeapError, match=says):
            refuse_overwrite(bad, [csv], "--html", "html")
    with pytest.raises(LeapError, match="which is not an HTML page"):
        refuse_overwrite(csv, [], "--html", "html")


def test_a_default_input_left_in_parts_names_them_and_the_merge(tmp_path):
    """WORKDIR/descriptors/train.jsonl missing where `--shard` runs left its parts: the next stage is refused with
    the merge to run (it went on without them: generate-programs from the narrations alone)."""
    from leap_cli.common import merged_input

    folder = tmp_path / "descriptors"
    assert merged_input(folder / "train.jsonl") == folder / "train.jsonl"  # (no folder: the reader says so)
    folder.mkdir()
    assert merged_input(folder / "train.jsonl") == folder / "train.jsonl"
    for i in (0, 1):
        (folder / f"train.shard{i}of2.jsonl").write_text('{"narration_id": "P01_01_%d"}\n' % i)
    with pytest.raises(LeapError, match=r"parts of it from --shard runs are there \(2 of 2\)") as e:
        merged_input(folder / "train.jsonl")
    assert e.value.path == str(folder / "train.jsonl") and "train.shard*of2.jsonl > " in e.value.fix


def test_a_default_taken_from_the_work_directory_must_be_the_only_one(tmp_path):
    """`leap evaluate` without --run takes the work directory's one run; with two it names them, never picks one."""
    from leap_cli.common import only_one

    runs = [tmp_path / "a", tmp_path / "b"]
    assert only_one([], "runs", tmp_path, fix="pass --run") is None
    assert only_one(runs[:1], "runs", tmp_path, fix="pass --run") == runs[0]
    with pytest.raises(LeapError, match=f"holds 2 runs: {runs[0]}, {runs[1]}"):
        only_one(runs, "runs", tmp_path, fix="pass --run")


def test_the_advice_after_a_stop_drops_force_only_where_it_would_start_the_work_over(monkeypatch):
    """After a stop: `extract --force` is run again without --force (it would delete the finished records); a
    `train --force` whose run never started the same (its --force deletes nothing); one that started, with
    --resume instead."""
    import leap_cli.common as common

    monkeypatch.setattr(common, "NEXT_RUN", {})
    monkeypatch.setattr(sys, "argv", ["leap", "extract", "--split", "val", "--overwrite"])
    assert common.rerun(command="extract") == "the same command without --overwrite"
    monkeypatch.setattr(sys, "argv", ["leap", "train", "--config", "tiny-synthetic", "--force"])
    assert common.rerun(command="train") == "the same command"
    common.NEXT_RUN["train"] = "resume"
    assert common.rerun(command="train") == "the same command with --resume instead of --force"
    monkeypatch.setattr(sys, "argv", ["leap", "train", "--config", "tiny-synthetic"])
    assert common.rerun(command="train") == "the same command with --resume"

# -- the one-line errors, exit statuses and signals (leap_cli/cli.py)

def test_a_system_error_on_a_path_with_a_newline_stays_one_line(monkeypatch, capsys, tmp_path):
    """An OSError on a file whose name holds a newline is shown escaped: the error stays one line, exit 2, as
    scripts and the docs expect of every error."""
    def denied(*a, **k):
        raise OSError(errno.EACCES, "Permission denied", str(tmp_path / "a\nb.csv"))

    monkeypatch.setattr("leap_cli.epic.layout.DatasetLayout.open", denied)
    code, err = _main(monkeypatch, capsys, "info", "--data", str(tmp_path))
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"error: {tmp_path}/a\\nb.csv: Permission denied (check the permissions"), err


def test_the_data_set_defaults_to_the_kitchen_in_the_work_directory(monkeypatch, capsys, tmp_path):
    """Without --data a stage reads WORKDIR/kitchen, where `leap demo-data` writes it."""
    seen = []

    def refuse(root, *a, **k):
        seen.append(root)
        raise LeapError("dataset root not found", path=root)

    monkeypatch.setattr("leap_cli.epic.layout.DatasetLayout.open", refuse)
    code, err = _main(monkeypatch, capsys, "info", "--workdir", str(tmp_path))
    assert code == 2 and [str(p) for p in seen] == [str(tmp_path / "kitchen")], (seen, err)
    assert err.startswith(f"error: {tmp_path / 'kitchen'}: dataset root not found") and "no such work" not in err


def test_a_forked_worker_that_inherited_the_sigterm_handler_dies_as_by_default(monkeypatch):
    """The stage's SIGTERM handler only asks the stage to stop (a KeyboardInterrupt); a forked worker that
    inherited it must die as by default instead (Pool.terminate sends it SIGTERM), or it hangs the stage."""
    import os

    from leap_cli import cli

    calls = []
    monkeypatch.setitem(cli._state, "pid", os.getpid() + 100000)  # the stage's process: not this one
    monkeypatch.setitem(cli._state, "stop_signal", None)
    monkeypatch.setattr(cli.signal, "signal", lambda sig, handler: calls.append(("signal", sig, handler)))
    monkeypatch.setattr(cli.os, "kill", lambda pid, sig: calls.append(("kill", pid, sig)))
    try:
        cli._on_sigterm(signal.SIGTERM, None)
    except KeyboardInterrupt:
        pytest.fail("a worker's SIGTERM was taken as the stage's own (KeyboardInterrupt)")
    assert calls == [("signal", signal.SIGTERM, signal.SIG_DFL), ("kill", os.getpid(), signal.SIGTERM)], calls
    assert cli._state["stop_signal"] is None


def test_the_file_of_a_part_carries_its_suffix_once():
    """`--out x.jsonl --shard 1/4` writes x.shard1of4.jsonl; a path without an extension gets the suffix at its
    end, and a path that already carries it (a script that names each part itself) is kept as it is."""
    from pathlib import Path

    from leap_cli.common import ShardSpec, shard_out

    part = ShardSpec.parse("1/4")
    assert shard_out("d/x.jsonl", part) == Path("d/x.shard1of4.jsonl")
    assert shard_out("d/x", part) == Path("d/x.shard1of4")
    assert shard_out("d/x.shard1of4.jsonl", part) == Path("d/x.shard1of4.jsonl")
    assert shard_out("d/x.jsonl", ShardSpec()) == Path("d/x.jsonl")


def test_a_stage_that_ends_with_a_status_of_its_own_exits_with_it(monkeypatch, capsys, tmp_path):
    """A command that ends with typer.Exit(n) (validate-programs on a file of no record: 3, as a stage whose every
    record failed) exits n from `leap`, not 0: scripts and the docs' "Exit status" rely on it."""
    from pathlib import Path

    (tmp_path / "programs").mkdir()
    (tmp_path / "programs" / "val.jsonl").write_text("")
    epic = Path(__file__).parent / "data" / "epic100"
    code, err = _main(monkeypatch, capsys, "validate-programs", "--split", "val", "--workdir", str(tmp_path),
                      "--annotations", str(epic))
    assert code == 3, (code, err)


def test_a_fraction_of_a_cpu_quota_counts_as_a_whole_cpu(monkeypatch):
    """`docker run --cpus 1.5` may run two processes at once: 2 CPUs, not 1 (nor the node's 8)."""
    import leap_cli.common as common

    monkeypatch.setattr(common.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(common, "cgroup_cpu_quota", lambda: 1.5)
    assert common.usable_cpus() == 2
    monkeypatch.setattr(common, "cgroup_cpu_quota", lambda: None)
    assert common.usable_cpus() == 8



def test_nested_cpu_quotas_count_as_the_smallest_and_none_is_read_above_the_cgroup_mount(tmp_path):
    """A job's cgroup of 4 CPUs holding a step's of 2 may use 2; a file above the cgroup file system's root is no
    cgroup's."""
    import leap_cli.common as common

    for rel, text in {"fs/job/cpu.max": "400000 100000\n", "fs/job/step/cpu.max": "200000 100000\n",
                      "cpu.max": "50000 100000\n"}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    (tmp_path / "self").write_text("0::/job/step\n")
    assert common.cgroup_cpu_quota(tmp_path / "fs", tmp_path / "self") == 2.0

# -- the work directory

def test_a_missing_work_directory_is_named_only_for_paths_inside_it(tmp_path, monkeypatch):
    """"W: no such work directory" prefixes an error on a path under a --workdir W that does not exist; not one on a
    path beside it that merely starts with the same letters (W2/...), nor one under a W that exists."""
    import leap_cli.common as common

    work = tmp_path / "work"
    monkeypatch.setattr(common, "WORKDIRS", [work])
    assert common.missing_workdir(LeapError("not found", path=work / "kitchen")) == work
    assert common.missing_workdir(LeapError("not found", path=work)) == work
    assert common.missing_workdir(LeapError("not found", path=tmp_path / "work2" / "kitchen")) is None
    assert common.missing_workdir(LeapError("not found")) is None
    work.mkdir()
    assert common.missing_workdir(LeapError("not found", path=work / "kitchen")) is None



def test_leap_alone_shows_its_help(monkeypatch, capsys):
    code, out, err = _run(monkeypatch, capsys)
    shown = out + err
    assert code == 2 and "Usage:" in shown and "Commands" in shown and "generate-programs" in shown, shown


@pytest.mark.parametrize("flags, level", [([], logging.WARNING), (["-v"], logging.INFO), (["--verbose"], logging.INFO),
                                          (["--debug"], logging.DEBUG)])
def test_verbose_logs_what_each_stage_does_and_debug_more(monkeypatch, capsys, tmp_path, flags, level):
    from leap_cli import cli

    levels = []
    monkeypatch.setattr(cli.logging, "basicConfig", lambda **kw: levels.append(kw["level"]))
    code, err = _main(monkeypatch, capsys, *flags, "info", "--data", str(tmp_path / "none"))
    assert code == 2 and levels == [level], (levels, err)


def test_a_system_error_on_two_paths_names_both():
    """A move or a link that fails names where from and where to (os.replace of a temporary file into place)."""
    from leap_cli.cli import os_error_line

    line = os_error_line(OSError(errno.EXDEV, "Invalid cross-device link", "/w/.tmp-x", None, "/out/x.json"))
    assert line.startswith("/w/.tmp-x -> /out/x.json: Invalid cross-device link ("), line
    line = os_error_line(OSError(errno.ENOSPC, "No space left on device", "/w/x.jsonl"))
    assert line.startswith("/w/x.jsonl: No space left on device (free space"), line


def _eof(*a, **k):
    raise EOFError("Ran out of input")  # (pickle.load of an empty or cut file)


def test_an_end_of_file_error_in_a_stage_is_no_success(monkeypatch, capsys, tmp_path):
    """click turns an EOFError inside a command into its Abort: leap must still exit non-zero."""
    monkeypatch.setattr("leap_cli.epic.layout.DatasetLayout.open", _eof)
    code, err = _main(monkeypatch, capsys, "info", "--data", str(tmp_path))
    assert code == 1, (code, err)


def test_an_end_of_file_error_in_a_stage_is_said(monkeypatch, capsys, tmp_path):
    """click's Abort for it ended the command with a blank line: no error, no traceback."""
    monkeypatch.setattr("leap_cli.epic.layout.DatasetLayout.open", _eof)
    code, err = _main(monkeypatch, capsys, "info", "--data", str(tmp_path))
    assert code != 0 and ("EOFError" in err or "Ran out of input" in err), (code, err)

# -- a stage's exit status from its records (leap_cli/outcome.py)

def test_a_stage_s_status_and_summary_from_its_records():
    """0 when nothing or some failed; 3 when every record attempted failed, or any failed under --strict (a clean
    --strict run is 0). The summary counts each cause, and says "the only record" for a run of one."""
    from leap_cli.outcome import Outcome

    clean = Outcome("extract")
    clean.attempt(4)
    assert clean.exit_code(strict=True) == 0 and clean.lines() == [] and clean.exit(strict=True) is None
    one = Outcome("extract")
    one.attempt()
    one.fail("camera: ZeroDivisionError")
    assert one.exit_code() == 3 and one.lines() == ["extract: the only record failed (by cause):",
                                                    "  1 x camera: ZeroDivisionError"]
    every = Outcome("build-shards")
    every.attempt(2)
    every.fail("decode: EOF")
    every.fail("decode: EOF")
    assert every.lines() == ["build-shards: all 2 records failed (by cause):", "  2 x decode: EOF"]
    with pytest.raises(SystemExit) as e:
        every.exit()
    assert e.value.code == 3
    ten = Outcome("generate-programs")
    ten.attempt(20)
    for i in range(10):
        ten.fail(f"cause {i}")
    assert ten.exit_code() == 0 and len(ten.lines()) == 11 and "more causes" not in ten.lines()[-1]


def test_as_many_workers_as_cpus_are_not_warned_of(monkeypatch, caplog):
    """--workers N is warned of only above the CPUs this job may use: `--workers 2` on 2 CPUs is what they are for."""
    import leap_cli.common as common

    monkeypatch.setattr(common, "usable_cpus", lambda: 2)
    with caplog.at_level(logging.WARNING, logger="leap_cli"):
        assert [common.workers_option(n) for n in (None, 1, 2)] == [None, 1, 2]
        assert caplog.text == ""
        assert common.workers_option(3) == 3
    assert "--workers 3 is more than the 2 CPUs this job may use" in caplog.text



def test_the_version_says_changed_exactly_when_the_checkout_s_files_differ_from_its_commit():
    """`leap --version` in a git checkout: ", changed" where leap_cli/ differs from the commit (an edited or an
    untracked file), not where it is clean: it tells which leap wrote a file."""
    import subprocess
    from pathlib import Path

    from leap_cli.cli import source_revision

    top = Path(__file__).resolve().parent.parent
    if not (top / ".git").exists():
        pytest.skip("not a git checkout")
    status = subprocess.run(["git", "-C", str(top), "status", "--porcelain", "--", "leap_cli"], capture_output=True,
                            text=True)
    if status.returncode:
        pytest.skip("git cannot read this checkout")
    revision = source_revision()
    assert revision.startswith(" (git ") and revision.endswith(" UTC)" if not status.stdout.strip()
                                                               else " UTC, changed)"), (revision, status.stdout)


# -- progress lines outside a terminal (leap_cli/progress.py)

def test_progress_lines_come_every_interval_and_not_at_each_update_after_the_first(monkeypatch):
    """One line per LEAP_PROGRESS_EVERY seconds (10 by default; a value that is no number is the default), counted
    from the start: the interval starts again at each line, not once."""
    import leap_cli.progress as progress
    from rich.console import Console

    monkeypatch.delenv("LEAP_PROGRESS_EVERY", raising=False)
    assert progress.progress_every() == 10.0
    monkeypatch.setenv("LEAP_PROGRESS_EVERY", "often")
    assert progress.progress_every() == 10.0
    monkeypatch.setenv("LEAP_PROGRESS_EVERY", "2.5")
    assert progress.progress_every() == 2.5

    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    out = io.StringIO()
    p = progress.LogProgress("extract train", Console(file=out, width=200), every=10.0)
    t = p.add_task("", total=100)
    now[0] = 108.0  # (inputs loaded: the interval starts with the loop)
    with p:
        for at in (112.0, 118.5, 119.0, 120.0, 125.0, 129.0, 131.0):
            now[0] = at
            p.advance(t)
        lines = out.getvalue().splitlines()
    assert [x.split(":")[1].split()[0] for x in lines] == ["2/100", "6/100"], lines  # at 118.5 and 129


def test_progress_lines_leave_out_empty_fields_and_a_rate_of_nothing_done(monkeypatch):
    """A field left None or "" is not printed ("None"); no rate before a unit more than the first is done (not
    "0.00/s"); the closing line's rate counts this run's units (a resumed run's earlier ones are not)."""
    import leap_cli.progress as progress
    from rich.console import Console

    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    out = io.StringIO()
    p = progress.LogProgress("generate-programs val", Console(file=out, width=200), every=0.0)
    t = p.add_task("programs", total=200, completed=100, video=None, note="")  # 100 done by an earlier run
    now[0] = 101.0
    p.update(t, advance=1)
    now[0] = 104.0
    p.update(t, description="programs", video="P01_01")  # nothing more done 3 s on
    now[0] = 110.0
    p.update(t, advance=9)
    p.stop()
    lines = out.getvalue().splitlines()
    assert lines[0] == "generate-programs val programs: 101/200 (50%)", lines
    assert lines[1] == "generate-programs val programs: 101/200 (50%), P01_01", lines
    assert lines[-1] == "generate-programs val programs: 110/200 (55%) 1.00/s, 0:00:10 elapsed, P01_01", lines
    p.update(t, completed=0)  # (a stage that starts its count over)
    assert p._tasks[t].completed == 0
