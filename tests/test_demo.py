"""`leap demo` end to end on a small synthetic kitchen, then the pages a person looks at, in a real browser."""

import json
import shutil
import subprocess
import sys
import time
import zipfile

import pytest

from tests.browser import chromium, is_blank, open_page
from tests.procs import leap_here
from leap_cli.io import read_jsonl

pytestmark = pytest.mark.slow


@pytest.fixture
def leap(monkeypatch, capsys):
    """``leap ARGS`` in this process: ``(*args, cwd=None)`` -> CompletedProcess."""
    return leap_here(monkeypatch, capsys)


def test_demo_runs_every_stage_and_summarises(demo, leap):
    work, first, _ = demo
    out = first.stdout
    for stage in ("demo-data", "extract train", "programs train", "shards test", "train", "evaluate val", "submit"):
        assert stage in out, stage
    assert "LEAP demo: every stage" in out and "verb top-1" in out and "coverage 100%" in out
    # the kitchen's truncated video: its segments past the cut are skipped, and the summary says so
    skipped = {split: json.loads((work / "shards" / split / "manifest.json").read_text())["counts"]["skipped"]
               for split in ("train", "val", "test")}
    assert any(skipped.values()) and all(f"{n} segments skipped" in " ".join(out.split())
                                         for n in skipped.values() if n), skipped
    # every output the summary names exists, and the submission is a valid challenge file for the test split
    for f in ("descriptors/train.jsonl", "programs/train.jsonl", "programs/train.report.json",
              "shards/train/manifest.json", "runs/tiny-synthetic/eval/val/metrics.json", "submission.zip"):
        assert (work / f).exists(), f
    with zipfile.ZipFile(work / "submission.zip") as z:
        assert z.namelist() == ["test.json"]
        sub = json.loads(z.read("test.json"))
    test_ids = {r["narration_id"] for r in read_jsonl(work / "descriptors" / "test.jsonl")}
    assert set(sub["results"]) == test_ids and sub["challenge"] == "action_recognition"
    check = leap("submit", "--check", str(work / "submission.zip"), "--workdir", str(work))
    assert check.returncode == 0, check.stderr
    metrics = json.loads((work / "runs/tiny-synthetic/eval/val/metrics.json").read_text())
    assert metrics["segments"] + metrics["not_scored"] == len(read_jsonl(work / "descriptors" / "val.jsonl"))
    if metrics["not_scored"]:  # the split's count, not the scored ones' (it said "3 of 5" for 3 of 8)
        assert (f"{metrics['not_scored']} of the split's {metrics['segments'] + metrics['not_scored']} segments "
                "not scored") in " ".join(out.split())
    # one decode: extract caches the shards' frames at the shards' settings (4 frames, short side 64), and
    # build-shards reads them instead of decoding the videos again
    assert len(list((work / "frame-cache").rglob("*.v3.s64q90.jpgs"))) >= len(test_ids)
    assert "frames read from extract's frame cache" in out


def test_demo_again_reuses_what_is_done(demo):
    work, first, second = demo
    assert second.returncode == 0, second.stderr[-3000:]
    # nothing is redone: no new descriptor or program records, no new training steps
    assert "0 written now: nothing to do" in second.stdout  # (no empty table "of this run" above it)
    assert "(the 0 segments of this run)" not in second.stdout
    assert "shard was built before with these settings and inputs" in second.stdout  # build-shards says it built none
    assert "frames read from extract's frame cache" not in second.stdout
    # the demo's own summary says which stages found their work done (the first run's did all of it)
    times = lambda out: " ".join(out.split("time per stage:", 1)[1].split("submission:", 1)[0].split())  # noqa: E731
    assert "(done before)" not in times(first.stdout)
    again = times(second.stdout)
    for stage in ("demo-data", "extract train", "extract test", "generate-programs val", "build-shards test", "train"):
        assert f", {stage} " in f", {again}" and again.split(f"{stage} ", 1)[1].split(",")[0].endswith("(done before)"), again
    assert not again.split("evaluate val ", 1)[1].split(",")[0].endswith("(done before)"), again  # run again
    assert len(read_jsonl(work / "descriptors" / "train.jsonl")) == len({r["narration_id"] for r in
                                                                         read_jsonl(work / "descriptors" / "train.jsonl")})
    steps = [r["step"] for r in read_jsonl(work / "runs" / "tiny-synthetic" / "metrics.jsonl") if r["split"] == "train"]
    assert steps == sorted(steps) and len(steps) == len(set(steps))


def test_demo_with_other_settings_is_refused_before_any_stage(demo, leap):
    """A rerun with another kitchen size rebuilt the kitchen, kept the old descriptors beside new ones and failed at
    build-shards asking for an option the demo does not have; another --set failed at train the same way."""
    work, _, _ = demo
    before = (work / "descriptors" / "train.jsonl").read_bytes()
    # named as the options that set them (it said "train_overrides", and a path .../demo that does not exist)
    for extra, says in ((["--segments", "12", "--set", "train.epochs=1"], "--segments: 10 -> 12"),
                        (["--segments", "10"], "--set: ['train.epochs=1'] -> []")):
        r = leap("demo", "--workdir", str(work), "--videos", "4", "--frames", "4", "--short-side", "64", *extra)
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert r.returncode == 2 and len(lines) == 1 and says in lines[0], r.stderr
        assert "another --workdir" in lines[0] and "--force" in lines[0] and "--out" not in lines[0], lines[0]
        assert "demo.settings.json" in lines[0], lines[0]
        assert "leap demo-data" not in r.stdout  # refused before the first stage
    assert (work / "descriptors" / "train.jsonl").read_bytes() == before


def test_demo_refuses_a_kitchen_it_cannot_train_on_or_submit_from(tmp_path):
    from leap_cli.demo import DemoConfig, check_demo, plan
    from leap_cli.errors import LeapError

    with pytest.raises(LeapError, match="test split"):
        check_demo(DemoConfig(workdir=tmp_path, videos=2))
    with pytest.raises(LeapError, match=r"--segments 4 give 4 training segments.*--segments 16 or more"):
        check_demo(DemoConfig(workdir=tmp_path, videos=3, segments=4))
    check_demo(DemoConfig(workdir=tmp_path, videos=3, segments=4, train_overrides=("data.batch_size=4",)))
    # the truncated video's last segments are skipped by build-shards: counted out here (--segments 8, as the
    # refusal of --segments 4 advised, ran four stages and failed at train with 13 training samples)
    with pytest.raises(LeapError, match=r"--videos 4 --segments 8 give 13 training segments with frames \(at least 3 more of "
                                        r"the kitchen's truncated video lie past its end\).*--segments 10 or more"):
        check_demo(DemoConfig(workdir=tmp_path, videos=4, segments=8))
    check_demo(DemoConfig(workdir=tmp_path, videos=4, segments=10))
    assert not (tmp_path / "kitchen").exists()  # a check, nothing built
    forced = plan(DemoConfig(workdir=tmp_path, force=True))
    assert all("--force" in s.argv for s in forced if s.name.split()[0] in
               ("demo-data", "extract", "generate-programs", "build-shards", "train"))


def test_a_kitchen_of_another_leap_version_starts_the_stages_after_it_over(tmp_path, leap):
    """After an upgrade that changes the kitchen's bytes (KITCHEN_VERSION), demo-data rebuilt it but extract and
    generate-programs resumed their records of the old one, and build-shards refused the shards run after run
    ("sources.annotations differ", fixed only by --force): the demo now starts them over itself."""
    from leap_cli.demo import DemoConfig, check_demo, plan
    from leap_cli.synth.kitchen import MARKER

    cfg = DemoConfig(workdir=tmp_path, videos=3, segments=16)
    demo_data = next(s for s in plan(cfg) if s.name == "demo-data")
    r = leap(*demo_data.argv)
    assert r.returncode == 0, r.stderr
    (tmp_path / "descriptors").mkdir()
    (tmp_path / "descriptors" / "train.jsonl").write_text("{}\n")
    assert check_demo(cfg).force is False  # the kitchen the demo's demo-data builds: nothing starts over
    assert (tmp_path / "descriptors" / "train.jsonl").exists()
    marker = json.loads((tmp_path / "kitchen" / MARKER).read_text())
    (tmp_path / "kitchen" / MARKER).write_text(json.dumps({**marker, "hash": "an earlier leap's"}))
    again = check_demo(cfg)
    assert again.force is True and not (tmp_path / "descriptors" / "train.jsonl").exists()
    assert all("--force" in s.argv for s in plan(again) if s.name.split()[0] in ("demo-data", "extract", "train"))
    # the run the demo reads is the one its train stage names (with a run's own config.yaml as --config, train's
    # default name and the demo's parted: "runs/config: run not found")
    own = tmp_path / "runs" / "base" / "config.yaml"
    own.parent.mkdir(parents=True)
    own.write_text("base: tiny-synthetic\n")
    train = next(s for s in plan(DemoConfig(workdir=tmp_path, config=own)) if s.name == "train")
    assert train.argv[train.argv.index("--name") + 1] == "config"


def test_demo_force_starts_the_records_over_and_keeps_the_reply_cache(tmp_path):
    """--force with another --seed rebuilt the kitchen but kept the old seed's descriptors and programs (their
    stages' --force starts over only for other settings): 31 of 32 programs then failed validation."""
    from leap_cli.demo import DemoConfig, check_demo

    made = []
    for rel in ("descriptors/train.jsonl", "descriptors/train.jsonl.settings.json", "descriptors/test.jsonl",
                "programs/train.jsonl", "programs/train.report.json", "programs/val.jsonl",
                "frame-cache/P01_01/P01_01_0.v3.s80q90.jpgs"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
        made.append(tmp_path / rel)
    (tmp_path / "programs" / "cache.sqlite").write_text("paid replies")
    (tmp_path / "kitchen").mkdir()
    check_demo(DemoConfig(workdir=tmp_path, videos=4, segments=16, force=True))
    assert not any(p.exists() for p in made) and not (tmp_path / "frame-cache").exists()
    assert (tmp_path / "programs" / "cache.sqlite").read_text() == "paid replies"


def test_a_second_demo_in_one_work_directory_is_refused_before_it_touches_anything(tmp_path):
    """Two demos on one work directory ran every stage side by side (a --force one deleted the first's records)
    and the first failed at train, with advice for flags the demo chooses itself. So did two demo-data builds of
    one kitchen: the second's clearing deleted the first's videos under it."""
    from typer.testing import CliRunner

    from leap_cli.cli import app
    from leap_cli.errors import LeapError
    from leap_cli.io import OutputLock
    from leap_cli.synth.kitchen import KitchenConfig, build_kitchen

    record = tmp_path / "descriptors" / "train.jsonl"
    record.parent.mkdir(parents=True)
    record.write_text("x")
    with OutputLock(tmp_path, lock_path=tmp_path / "demo.run.lock"):  # (as the running demo holds it)
        res = CliRunner().invoke(app, ["demo", "--workdir", str(tmp_path), "--videos", "3", "--force"])
    assert isinstance(res.exception, LeapError) and "another leap demo runs in it" in res.exception.fix, res.output
    assert record.read_text() == "x" and not (tmp_path / "kitchen").exists()
    kitchen = tmp_path / "kitchen"
    with OutputLock(kitchen, lock_path=kitchen / ".leap-kitchen.lock"):  # (a demo-data build running)
        with pytest.raises(LeapError, match="another leap process is writing this") as e:
            build_kitchen(kitchen, KitchenConfig(videos=1, segments_per_video=2))
    assert "it builds this kitchen" in e.value.fix and [p.name for p in kitchen.iterdir()] == [".leap-kitchen.lock"]
    built = build_kitchen(kitchen, KitchenConfig(videos=1, segments_per_video=2))  # (the lock file is in the way of
    assert not built.skipped and built.segments() == 2  # nothing: an empty folder otherwise)
    kitchen.chmod(0o555)  # a finished kitchen on read-only storage is read, not locked (root ignores modes: the lock
    try:  # file is taken away)
        (kitchen / ".leap-kitchen.lock").unlink()
        assert build_kitchen(kitchen, KitchenConfig(videos=1, segments_per_video=2)).skipped
        assert not (kitchen / ".leap-kitchen.lock").exists()
    finally:
        kitchen.chmod(0o755)


def test_the_summary_gives_validate_programs_statuses(tmp_path):
    """The summary counted the stored statuses (valid 32, coverage 100%) where validate-programs found 1 valid."""
    from leap_cli.demo import DemoConfig, collect
    from tests.test_shards import make_root

    root = make_root(tmp_path / "kitchen")  # train: 7 segments
    head = "narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,stop_frame"
    (root / "annotations" / "EPIC_100_test_timestamps.csv").write_text(head + "\n")
    progs = tmp_path / "programs"
    progs.mkdir()
    (progs / "train.jsonl").write_text("".join(json.dumps({"narration_id": f"P01_01_{i}", "status": "valid",
                                                           "provenance": {"backend": "offline"}}) + "\n"
                                               for i in range(7)))
    (progs / "train.report.json").write_text(json.dumps({"statuses": {"valid": 1, "invalid": 6, "failed": 0}}))
    rows = {stage: figures for stage, _, figures in collect(DemoConfig(workdir=tmp_path))}
    assert rows["programs train"].startswith("invalid 6, valid 1 as validate-programs checked them; coverage 14%")
    # the demo validates both splits it summarises (val's row gave the stored statuses: no report was made)
    from leap_cli.demo import plan

    runs = {s.name: s.argv for s in plan(DemoConfig(workdir=tmp_path))}
    assert runs["validate-programs val"][:2] == ["validate-programs", f"{tmp_path}/programs/val.jsonl"]
    assert runs["validate-programs train"][:2] == ["validate-programs", f"{tmp_path}/programs/train.jsonl"]


def test_a_stage_the_interrupt_did_not_reach_is_stopped_gracefully(monkeypatch):
    """`kill PID` or `timeout` signal the demo alone: its stage (training) was SIGKILLed 0.25 s later, before
    saving last.pt; now it gets SIGTERM, which a stage handles like Ctrl-C."""
    import signal

    import leap_cli.demo as demo_mod

    monkeypatch.setattr(demo_mod, "STOP_GRACE", 0.2)
    proc = subprocess.Popen([sys.executable, "-c", "import signal, sys, time\n"
                             "signal.signal(signal.SIGTERM, lambda *a: sys.exit(43))\ntime.sleep(60)"])
    time.sleep(0.5)
    demo_mod._stop(proc)
    assert proc.returncode == 43  # it got SIGTERM and stopped its own way


def test_show_prints_the_program_tree_and_descriptors(demo, leap):
    work, _, _ = demo
    nid = read_jsonl(work / "programs" / "train.jsonl")[0]["narration_id"]
    r = leap("show", nid, "--workdir", str(work))
    assert r.returncode == 0, r.stderr
    assert nid in r.stdout and "steps" in r.stdout and "pre" in r.stdout and "post" in r.stdout
    for component in ("narration", "audio", "camera", "objects", "hands"):
        assert component in r.stdout
    bad = leap("show", "P99_99_1", "--workdir", str(work))
    assert bad.returncode == 2 and "no program or descriptor record for P99_99_1" in bad.stderr
    other = leap("show", nid, "--workdir", str(work), "--split", "val")  # said to run extract first
    assert other.returncode == 2 and f"{nid} is a segment of the train split, not val" in " ".join(other.stderr.split())


@pytest.mark.skipif(chromium() is None, reason="needs Debian's chromium (installed by .ci/run)")
def test_show_html_page_in_a_browser(demo, tmp_path, leap):
    work, _, _ = demo
    rec = next(r for r in read_jsonl(work / "programs" / "train.jsonl")
               if any(s["type"] != "sub_action" for s in r["program"]["steps"]))
    page = tmp_path / "show.html"
    r = leap("show", rec["narration_id"], "--workdir", str(work), "--html", str(page))
    assert r.returncode == 0, r.stderr
    text = page.read_text()
    assert "Storyboard" in text and "Keyframes" in text and "Descriptors" in text
    seen, shot = open_page(page, tmp_path)
    assert seen["errors"] == []
    assert seen["images"] >= 6 and seen["broken"] == 0  # keyframes and storyboard frames all decode
    assert not is_blank(shot)


@pytest.mark.skipif(chromium() is None, reason="needs Debian's chromium (installed by .ci/run)")
def test_programs_report_page_in_a_browser(demo, tmp_path):
    work, _, _ = demo
    page = work / "programs" / "train.report.html"
    assert page.exists()
    seen, shot = open_page(page, tmp_path)
    assert seen["errors"] == [] and seen["broken"] == 0
    assert seen["svgs"] >= 5  # status, control flow, steps, verbs, objects, predicates
    assert "Coverage" in page.read_text()
    assert not is_blank(shot)


def test_demo_ablate_option_runs_leap_ablate_and_summarises_its_table(demo):
    """`leap demo --ablate` adds `leap ablate` into WORKDIR/ablation; the summary reads its table back."""
    from leap_cli.demo import DemoConfig, collect, plan
    from leap_cli.train.ablate import table

    work, _, _ = demo
    assert [s.argv for s in plan(DemoConfig(workdir=work, ablate=True)) if s.name == "ablate"] == [
        ["ablate", "--workdir", f"{work}/ablation"]]
    assert "ablate" not in [s.name for s in plan(DemoConfig(workdir=work))]
    assert "ablate" not in [row[0] for row in collect(DemoConfig(workdir=work))]
    runs = [{"cell": {"task": "recognition", "source": src, "name": name}, "seed": seed, "seconds": 1.0,
             "verb_top1": v} for src, name, vs in (("none", "L_CE", (0.40, 0.44)), ("truth", "+L_T+L_PC", (0.50, 0.52)))
            for seed, v in enumerate(vs)]
    rows, md = table(runs)
    (work / "ablation").mkdir(exist_ok=True)
    (work / "ablation" / "ablation.json").write_text(json.dumps({"rows": rows}))
    (work / "ablation" / "ablation.md").write_text(md)
    try:
        # a table left by an earlier --ablate run is not shown by a run without it
        assert "ablate" not in [r[0] for r in collect(DemoConfig(workdir=work))]
        row = next(r for r in collect(DemoConfig(workdir=work, ablate=True)) if r[0] == "ablate")
        assert row[1] == "ablation/ablation.md"
        assert row[2] == "val verb top-1 over 2 seeds: none L_CE 42.0% ± 2.8; truth +L_T+L_PC 51.0% ± 1.4"
        # one seed: no "± 0.0" (no spread was measured); a mean of 2.05 printed 2.0 where the run's log said 2.1
        rows, _ = table([{"cell": {"task": "recognition", "source": "none", "name": "L_CE"}, "seed": 0,
                          "seconds": 1.0, "verb_top1": 0.020536}])
        (work / "ablation" / "ablation.json").write_text(json.dumps({"rows": rows}))
        row = next(r for r in collect(DemoConfig(workdir=work, ablate=True)) if r[0] == "ablate")
        assert row[2] == "val verb top-1 over 1 seed: none L_CE 2.1%"
    finally:  # (the session's demo, which other tests read: left as the demo wrote it)
        shutil.rmtree(work / "ablation")


def test_the_demo_submission_declares_what_the_demo_did(tmp_path):
    """It declared SLS 2-3-4 (video pre-training, train+val) for a tiny model trained from random weights on the
    train split, with program targets from the descriptors' hand-object boxes."""
    from leap_cli.demo import DemoConfig, plan

    def levels(*sets: str) -> dict | None:
        argv = next((s.argv for s in plan(DemoConfig(workdir=tmp_path, train_overrides=sets)) if s.name == "submit"),
                    None)
        return argv and {argv[i]: argv[i + 1] for i, a in enumerate(argv) if a.startswith("--sls-")}

    assert levels() == {"--sls-pt": "0", "--sls-tl": "4", "--sls-td": "3"}
    # it declared 0-4-3 whatever --set said: without the program losses the labels are EPIC's alone (TL 3), and
    # with pretrained weights their level is not the demo's to declare (no submission, the user submits)
    assert levels("loss.program_loss=false") == {"--sls-pt": "0", "--sls-tl": "3", "--sls-td": "3"}
    assert levels(f"model.pretrained={tmp_path / 'w.pt'}") is None


def test_a_stage_gets_sigterm_when_the_demo_is_killed(tmp_path):
    """A SIGKILLed demo left its stage (training) running on its own, holding the run's lock; the stage now gets
    SIGTERM, which it handles like Ctrl-C."""
    import os
    import signal

    stage = ("import signal, sys, time\n"
             f"def term(*a):\n    open({str(tmp_path / 'got')!r}, 'w').write('TERM')\n    sys.exit(43)\n"
             "signal.signal(signal.SIGTERM, term)\nprint(1, flush=True)\ntime.sleep(60)\n")
    code = ("import subprocess, leap_cli.demo as d\n"
            "real = subprocess.Popen\n"
            "class P:  # the stage is a script instead of `python -m leap_cli ...`, started the demo's way\n"
            "    TimeoutExpired = subprocess.TimeoutExpired\n"
            "    @staticmethod\n"
            "    def Popen(args, **kw):\n        return real([args[0], *args[3:]], **kw)\n"
            "d.subprocess = P\n"
            f"d.run_stage(d.StageRun('x', ['-c', {stage!r}]))\n")
    demo = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert demo.stdout.readline().strip() == "1"  # the stage runs
        demo.send_signal(signal.SIGKILL)
        demo.wait()
        deadline = time.time() + 5
        got = tmp_path / "got"
        # (the stage's handler creates the file, then writes it: an empty file was read in between once)
        while not (got.exists() and got.read_text()) and time.time() < deadline:
            time.sleep(0.1)
        assert got.read_text() == "TERM"
    finally:
        if demo.poll() is None:
            demo.kill()
