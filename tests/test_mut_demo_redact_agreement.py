"""Tests for the real gaps a mutation run found in demo.py, programs/redact.py, programs/agreement.py,
report/terminal.py and errors.py: each fails on one or more of the run's surviving mutants."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from leap_cli.errors import LeapError
from leap_cli.programs.agreement import aggregate, compare_programs
from leap_cli.programs.redact import REDACTED, redact, redact_logs, register_secret
from leap_cli.report.terminal import printable, visible_controls

# ---- redact ---------------------------------------------------------------------------------------------------


def test_a_six_character_secret_is_redacted_a_five_character_one_is_not():
    register_secret("Q7zx9W")  # 6 characters: the shortest secret
    register_secret("Jk3pV")  # 5: not a secret (it would blank out ordinary words)
    register_secret(None)  # no key configured: nothing to register, no error
    register_secret("")
    assert redact("key=Q7zx9W;") == f"key={REDACTED};"
    assert redact("id Jk3pV") == "id Jk3pV"


def test_every_occurrence_of_a_secret_is_redacted():
    register_secret("my-twice-echoed-key-42")
    assert redact("sent my-twice-echoed-key-42, got my-twice-echoed-key-42 back") == \
        f"sent {REDACTED}, got {REDACTED} back"


@pytest.mark.parametrize("pad", [0, 40, 300], ids=["short", "medium", "long"])
def test_tokens_and_keys_are_redacted_at_every_message_length(pad):
    """Messages of 256 characters and more take another route to the patterns than short ones."""
    x = "x" * pad + " "
    assert redact(x + "401: Bearer tok.en-123 rejected") == x + f"401: Bearer {REDACTED} rejected"
    assert redact(x + "Authorization: tok123secret here") == x + f"Authorization: {REDACTED} here"
    assert redact(x + "authorization=tok123secret") == x + f"authorization={REDACTED}"
    assert redact(x + "key sk-abcdefghijkl end") == x + f"key {REDACTED} end"  # 12 characters after sk-
    assert redact(x + "key sk-abcdefghijk end") == x + "key sk-abcdefghijk end"  # 11: not a key shape


def test_a_mixed_case_bearer_in_a_medium_message_is_redacted():
    assert redact("the server said: bEaReR tok-123456 is wrong") == f"the server said: bEaReR {REDACTED} is wrong"


def test_a_mixed_case_bearer_in_a_long_message_is_redacted():
    """Texts of 256 characters or more were checked for a few spellings only: "bEaReR <token>" was let through."""
    x = "x" * 300 + " "
    assert redact(x + "bEaReR tok-123456") == x + f"bEaReR {REDACTED}"


def test_a_token_inside_json_keeps_the_json_around_it():
    assert redact('{"authorization": "Bearer abc123"}') == '{"authorization": "Bearer ' + REDACTED + '"}'


def test_a_logger_with_redact_logs_never_shows_a_secret(caplog):
    register_secret("log-secret-value-77")
    lg = logging.getLogger("leap_cli.test_mut_redact")
    redact_logs(lg)
    caplog.set_level(logging.INFO, logger="leap_cli.test_mut_redact")
    lg.info("request with %s failed (%d)", "log-secret-value-77", 401)
    assert "log-secret-value-77" not in caplog.text
    assert caplog.records[-1].getMessage() == f"request with {REDACTED} failed (401)"


# ---- agreement ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def classes():
    from leap_cli.epic.classes import ClassVocab

    d = Path(__file__).parent / "data" / "epic100"
    return (ClassVocab.from_csv(d / "EPIC_100_verb_classes.csv", "verb"),
            ClassVocab.from_csv(d / "EPIC_100_noun_classes.csv", "noun"))


def sub(v, a, b=None):
    return {"type": "sub_action", "verb": v, "object_a": a, "object_b": b, "pre": [], "post": []}


def test_exact_means_the_same_sub_actions_in_the_same_order(classes):
    a = {"steps": [sub("take", "knife"), sub("cut", "onion")]}
    b = {"steps": [sub("cut", "onion"), sub("take", "knife")]}
    c = compare_programs(a, b, *classes)
    assert c["triples"] == (2, 2, 2) and not c["exact"]


def test_repeated_verbs_count_each_time(classes):
    pred = {"steps": [sub("take", "knife"), sub("take", "onion"), sub("cut", "onion")]}
    true = {"steps": [sub("take", "knife"), sub("cut", "onion")]}
    assert compare_programs(pred, true, *classes)["verbs"] == (2, 3, 2)


def test_aggregate_against_hand_worked_figures():
    pairs = [{"triples": (1, 3, 2), "verbs": (2, 3, 2), "objects": (3, 4, 3), "exact": False},
             {"triples": (2, 2, 2), "verbs": (2, 2, 2), "objects": (2, 2, 2), "exact": True},
             {"triples": (0, 0, 2), "verbs": (0, 0, 2), "objects": (0, 0, 2), "exact": False}]
    agg = aggregate(pairs)
    assert agg["pairs"] == 3 and agg["exact_sequence"] == round(1 / 3, 4)
    # triples: 3 matched of 5 predicted and 6 true
    assert agg["triples"] == {"precision": 0.6, "recall": 0.5, "f1": round(2 * 0.6 * 0.5 / 1.1, 4)}
    # verbs: 4 of 5 and of 6
    assert agg["verbs"] == {"precision": 0.8, "recall": round(4 / 6, 4), "f1": round(2 * 0.8 * (4 / 6) / (0.8 + 4 / 6), 4)}
    # objects: 5 of 6 and of 7
    assert agg["objects"]["precision"] == round(5 / 6, 4) == 0.8333 and agg["objects"]["recall"] == round(5 / 7, 4)
    # nothing predicted or nothing true: 0, not 1
    none = aggregate([{"triples": (0, 0, 2), "verbs": (0, 0, 0), "objects": (0, 0, 1), "exact": False}])
    assert none["triples"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert none["verbs"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


# ---- terminal -------------------------------------------------------------------------------------------------

def shown(markup: str) -> str:
    console = Console(width=300, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(markup, highlight=False, end="")
    return console.export_text()


@pytest.mark.parametrize("char", ["\u2066", "\u2067", "\u2068", "\u2069", "\ufeff", "\x00"])
def test_isolates_bom_and_nul_are_written_out(char):
    out = printable(f"a{char}b")
    assert char not in out and f"{ord(char):02x}" in out
    assert char not in printable(f"a{char}b", one_line=True)


def test_tabs_and_newlines_kept_carriage_return_written_out():
    assert visible_controls("a\tb\nc\rd") == "a\tb\nc\\rd"
    assert printable("a\tb\nc") == "a\tb\nc"  # the default keeps newlines
    assert printable("a\nb\rc", one_line=True) == "a\\nb\\rc"
    assert printable("a\u202eb", one_line=True) == "a\\u202eb"


def test_rich_tags_in_a_record_print_as_text():
    assert shown(printable("[bold red]take[/bold red] knife")) == "[bold red]take[/bold red] knife"


# ---- errors ---------------------------------------------------------------------------------------------------

def test_one_line_with_a_record_alone_and_with_newlines():
    assert LeapError("bad verb", record="P01_01_3").one_line() == "[P01_01_3]: bad verb"
    e = LeapError("two\nlines", path="a.jsonl", fix="fix\nit")
    assert e.one_line() == "a.jsonl: two lines (fix it)" and str(e) == e.one_line()


# ---- demo -----------------------------------------------------------------------------------------------------

def test_an_unreadable_kitchen_marker_does_not_start_over(tmp_path):
    from leap_cli.demo import DemoConfig, check_demo
    from leap_cli.synth.kitchen import MARKER

    (tmp_path / "kitchen").mkdir()
    (tmp_path / "kitchen" / MARKER).write_text("{}")  # no hash: not known to be another leap's
    (tmp_path / "descriptors").mkdir()
    (tmp_path / "descriptors" / "train.jsonl").write_text("{}\n")
    assert check_demo(DemoConfig(workdir=tmp_path, videos=3, segments=16)).force is False
    assert (tmp_path / "descriptors" / "train.jsonl").exists()


def test_force_removes_the_programs_html_report(tmp_path):
    from leap_cli.demo import start_over

    page = tmp_path / "programs" / "train.report.html"
    page.parent.mkdir()
    page.write_text("<html>")
    start_over(tmp_path)
    assert not page.exists()


def test_a_trained_run_is_resumed_not_started_again(tmp_path):
    from leap_cli.demo import DemoConfig, plan

    def train_argv():
        return next(s.argv for s in plan(DemoConfig(workdir=tmp_path)) if s.name == "train")

    assert "--resume" not in train_argv()
    last = tmp_path / "runs" / "tiny-synthetic" / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"x")
    assert "--resume" in train_argv() and "--force" not in train_argv()


def test_reused_only_when_every_output_was_there_and_untouched(tmp_path, monkeypatch):
    import leap_cli.demo as d

    real = subprocess.Popen

    class P:  # the stage is a script instead of `python -m leap_cli ...`
        TimeoutExpired = subprocess.TimeoutExpired

        @staticmethod
        def Popen(args, **kw):  # noqa: N802
            return real([args[0], *args[3:]], **kw)

    monkeypatch.setattr(d, "subprocess", P)
    out = tmp_path / "out.txt"
    write = ["-c", f"open({str(out)!r}, 'a').write('x')"]
    nothing = ["-c", "pass"]
    assert d.run_stage(d.StageRun("none", nothing)).reused is False  # no outputs: nothing to reuse
    assert d.run_stage(d.StageRun("missing", nothing, (out,))).reused is False  # missing before and after
    assert d.run_stage(d.StageRun("new", write, (out,))).reused is False  # made now
    assert d.run_stage(d.StageRun("again", nothing, (out,))).reused is True  # there, untouched
    assert d.run_stage(d.StageRun("more", write, (out,))).reused is False  # there, changed
    with pytest.raises(LeapError, match="failed with exit code 1") as e:  # any failure stops the demo
        d.run_stage(d.StageRun("fails", ["-c", "raise SystemExit(1)"]))
    assert e.value.record == "fails"


def test_the_stages_get_the_demo_settings(tmp_path):
    from leap_cli.demo import DemoConfig, plan

    cfg = DemoConfig(workdir=tmp_path, frames=4, short_side=64, train_overrides=("train.epochs=1", "data.batch_size=4"))
    argv = {s.name: s.argv for s in plan(cfg)}
    assert {k for k in argv if k.startswith("generate-programs")} == {"generate-programs train", "generate-programs val"}
    for split in ("train", "val", "test"):
        ex, sh = argv[f"extract {split}"], argv[f"build-shards {split}"]
        assert ex[ex.index("--cache-frames") + 1] == "4" and ex[ex.index("--cache-short-side") + 1] == "64"
        assert sh[sh.index("--frames") + 1] == "4" and sh[sh.index("--short-side") + 1] == "64"
    train = argv["train"]
    assert [train[i + 1] for i, a in enumerate(train) if a == "--set"] == ["train.epochs=1", "data.batch_size=4"]
    assert argv["submit"][argv["submit"].index("--task") + 1] == "recognition"


def test_another_short_side_in_one_work_directory_is_refused(tmp_path):
    from leap_cli.demo import DemoConfig, check_demo

    check_demo(DemoConfig(workdir=tmp_path, videos=3, segments=16, short_side=80))
    (tmp_path / "kitchen").mkdir()
    with pytest.raises(LeapError, match="--short-side: 80 -> 64"):
        check_demo(DemoConfig(workdir=tmp_path, videos=3, segments=16, short_side=64))


def test_ablation_text_seeds():
    from leap_cli.demo import ablation_text

    row = {"task": "recognition", "source": "none", "cell": "L_CE", "verb_top1": {"mean": 42.04, "std": 0.0}}
    assert ablation_text({"rows": [{**row, "seeds": [0]}]}) == "val verb top-1 over 1 seed: none L_CE 42.0%"
    assert ablation_text({"rows": [row]}) == "val verb top-1 over 0 seeds: none L_CE 42.0%"


def test_metrics_text_is_in_percent():
    from leap_cli.demo import _metrics_text

    m = {"recognition": {"all": {"verb": {"top1": 0.5}, "noun": {"top1": 0.125}}}}
    assert _metrics_text(m) == "verb top-1 50.0%, noun top-1 12.5%"


def test_the_summary_reads_each_stage_output(tmp_path):
    from leap_cli.demo import DemoConfig, collect
    from tests.test_shards import make_root

    make_root(tmp_path / "kitchen")  # train: 7 segments
    head = "narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,stop_frame"
    (tmp_path / "kitchen" / "annotations" / "EPIC_100_test_timestamps.csv").write_text(head + "\n")
    desc = tmp_path / "descriptors"
    desc.mkdir()
    (desc / "train.jsonl").write_text(json.dumps({"narration_id": "P01_01_0", "components": {
        "narration": {"status": "ok"}, "hands": {"status": "unavailable"}}}) + "\n")
    progs = tmp_path / "programs"
    progs.mkdir()
    (progs / "train.jsonl").write_text("".join(json.dumps({"narration_id": f"P01_01_{i}", "status": "valid",
                                                           "provenance": {"backend": "offline"}}) + "\n"
                                               for i in range(2)))
    (progs / "train.report.json").write_text(json.dumps({"statuses": {"valid": 2, "invalid": 0}}))
    t = (progs / "train.jsonl").stat().st_mtime_ns
    os.utime(progs / "train.report.json", ns=(t, t))  # written within one tick of the records: still current
    shards = tmp_path / "shards" / "train"
    shards.mkdir(parents=True)
    (shards / "manifest.json").write_text(json.dumps({"counts": {"samples": 7}, "shards": ["a"]}))
    run = tmp_path / "runs" / "tiny-synthetic"
    (run / "eval" / "val").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (
        {"split": "train", "step": 5, "loss": 2.0},
        {"split": "val", "verb_top1": 10.0, "noun_top1": 20.0, "action_top1": 5.0},
        {"split": "train", "step": 10, "loss": 1.5},
        {"split": "val", "verb_top1": 30.0, "noun_top1": 40.0, "action_top1": 15.0})))
    (run / "eval" / "val" / "metrics.json").write_text(json.dumps({
        "segments": 2, "not_scored": 0, "meta": {"checkpoint": "best"},
        "recognition": {"all": {"verb": {"top1": 0.5}}}}))
    (tmp_path / "ablation").mkdir()
    (tmp_path / "ablation" / "ablation.json").write_text(json.dumps({"rows": []}))
    rows = {stage: (out, figures) for stage, out, figures in collect(DemoConfig(workdir=tmp_path))}
    assert rows["extract train"] == ("descriptors/train.jsonl", "1 record; ok: narration 1; unavailable: hands 1")
    # coverage: of the split's 7 segments, as validate-programs checked them (same mtime as the records)
    assert rows["programs train"][1] == "valid 2 as validate-programs checked them; coverage 29% (offline backend)"
    assert rows["shards train"] == ("shards/train", "7 samples in 1 shard")
    assert rows["train"][1] == "10 steps, last loss 1.500; val at the end: verb 30.0%, noun 40.0%, action 15.0% top-1"
    assert rows["evaluate val"] == ("runs/tiny-synthetic/eval/val/metrics.json", "verb top-1 50.0%")
    assert "ablate" not in rows  # a table left by an earlier --ablate run
