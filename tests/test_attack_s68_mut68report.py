"""``leap show`` from a user's side (hostile text, damaged records, odd output paths, an ASCII terminal) and the
gaps a mutation run over report/show.py, predicted.py, program_view.py, programs_html.py, html.py and
commands/show.py left: each test here failed on a fault or on a mutant."""

import json
import re

import pytest
from typer.testing import CliRunner

from leap_cli.cli import app
from tests.test_eval_e2e import pipeline  # noqa: F401  (its kitchen, shards and tiny trained run, for --run)

NID = "P01_01_5"
HOSTILE = "</script><script>alert(1)</script><img src=x onerror=alert(2)> \"q' & é [bold]b[/bold]"


def cond(predicate, *args, negated=False):
    return {"predicate": predicate, "args": list(args), "negated": negated}


def sub(verb, a=None, b=None, hand="right", pre=(), post=(), purpose=""):
    return {"type": "sub_action", "verb": verb, "object_a": a, "object_b": b, "hand": hand, "pre": list(pre),
            "post": list(post), "purpose": purpose}


PROGRAM = {"action": {"narration": "wash plate", "verb": "wash", "noun": "plate", "verb_class": 2, "noun_class": 2},
           "pre": [cond("dirty", "plate")], "post": [cond("clean", "plate")],
           "steps": [sub("take", "sponge", hand="left", pre=[cond("visible", "sponge")]),
                     sub("scrub", "plate", "sponge", hand="both", purpose="get it clean")]}


def program_record(program=PROGRAM, status="valid", errors=(), nid=NID):
    return {"narration_id": nid, "status": status, "program": program, "errors": list(errors),
            "provenance": {"backend": "offline", "model": "offline-v5"}}


def descriptor_record(components=None, nid=NID, **over):
    d = {"narration_id": nid, "video_id": "P01_01", "start": 2.0, "stop": 4.5, "text": "clip text",
         "components": components if components is not None else
         {"narration": {"status": "ok", "source": "annotations", "text": "wash plate",
                        "data": {"narration": "wash plate"}}}}
    return {**d, **over}


def write(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def show(tmp_path, program=None, descriptor=None, *args, nid=NID):
    """``leap show NID`` in an empty work directory, of the records given (each alone in its file)."""
    files = []
    if program is not None:
        files += ["--programs", str(write(tmp_path / "val.jsonl", [program]))]
    if descriptor is not None:
        files += ["--descriptors", str(write(tmp_path / "dval.jsonl", [descriptor]))]
    return CliRunner().invoke(app, ["show", nid, "--workdir", str(tmp_path), *files, *map(str, args)],
                              env={"COLUMNS": "250"})


# ---------------------------------------------------------------- damaged records: one line, no traceback

@pytest.mark.parametrize("component, says", [
    ({"status": "ok", "data": "wash plate"}, "components.narration.data is a str, not an object"),
    ({"status": "ok", "data": ["wash plate"]}, "components.narration.data is a list, not an object"),
    ({"status": ["ok"], "text": "x"}, "components.narration.status is a list, not a string"),
    ({"status": {"ok": 1}, "text": "x"}, "components.narration.status is a dict, not a string"),
])
def test_a_component_of_another_shape_is_one_line_naming_file_and_record(tmp_path, component, says):
    """A narration component whose data was a string or list, or whose status was a list or an object, ended
    ``leap show`` in a traceback (AttributeError in narration_of, "unhashable type" in the table's colour)."""
    from leap_cli.errors import LeapError

    failed = program_record(program=None, status="failed")  # (its narration comes from the descriptor)
    r = show(tmp_path, failed, descriptor_record({"narration": component}), "--html", tmp_path / "p.html")
    assert isinstance(r.exception, LeapError), r.output
    message = r.exception.one_line()
    assert f"malformed descriptor record: {says}" in message and "dval.jsonl" in message and NID in message
    assert not (tmp_path / "p.html").exists()


def test_a_record_file_that_is_not_there_is_one_line_naming_it(tmp_path):
    """--programs or --descriptors naming no file: leap's "file not found" with its fix, not the OS's error."""
    from leap_cli.errors import LeapError

    for option in ("--programs", "--descriptors"):
        r = CliRunner().invoke(app, ["show", NID, "--workdir", str(tmp_path), option, str(tmp_path / "gone.jsonl")])
        assert isinstance(r.exception, LeapError), r.output
        gone = tmp_path / "gone.jsonl"
        assert r.exception.one_line() == f"{gone}: file not found (check the path or run the stage that writes it)"


# ---------------------------------------------------------------- hostile text on the pages

def tags_of(page: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """(tag, attributes) of every start tag an HTML parser finds in the page."""
    from html.parser import HTMLParser

    found = []

    class Tags(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.append((tag, attrs))

    Tags().feed(page)
    return found


PAGE_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h4", "p", "span", "div", "b", "table", "tr",
             "th", "td", "pre", "code", "svg", "text", "rect", "figure", "img", "figcaption"}


def assert_inert(page: str) -> None:
    """No tag or attribute the records' text brought in: only the page's own tags, no script, no on* handler."""
    tags = tags_of(page)
    assert {t for t, _ in tags} <= PAGE_TAGS, {t for t, _ in tags} - PAGE_TAGS
    assert not [a for _, attrs in tags for a, _ in attrs if a.startswith("on")]
    assert not [v for t, attrs in tags if t == "img" for a, v in attrs if a == "src" and not v.startswith("data:")]


def test_hostile_record_text_is_text_on_the_segment_page(tmp_path):
    """A narration, purpose, routine name, finding, component status, source and text and a clip text holding
    </script><img onerror=...> and quotes: the page shows them escaped, no tag or handler of theirs."""
    program = json.loads(json.dumps(PROGRAM))
    program["action"]["narration"] = HOSTILE
    program["steps"][1]["purpose"] = HOSTILE
    program["steps"].append({"type": "routine", "name": HOSTILE, "steps": [sub("rinse", "plate")]})
    record = program_record(program, errors=[{"pointer": HOSTILE, "message": HOSTILE}])
    comps = {"narration": {"status": "ok", "source": HOSTILE, "text": HOSTILE, "data": {"narration": HOSTILE}},
             "objects": {"status": HOSTILE, "source": "x", "text": HOSTILE}}
    r = show(tmp_path, record, descriptor_record(comps, text=HOSTILE, video_id=HOSTILE), "--html", tmp_path / "p.html")
    assert r.exit_code == 0, r.output
    page = (tmp_path / "p.html").read_text(encoding="utf-8")
    assert_inert(page)
    shown = HOSTILE.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;") \
        .replace("'", "&#x27;")
    assert page.count(shown) >= 10 and f"<title>{NID}: {shown}</title>" in page


def test_hostile_record_text_is_text_on_the_programs_page():
    """validate-programs --html: file names, ids, statuses, findings, chart labels and malformed lines of hostile
    text stay text."""
    from leap_cli.report.programs_html import programs_report_html

    rep = {"split": HOSTILE, "files": [HOSTILE], "records": 2, "duplicates": 0, "statuses": {"valid": 1, "failed": 1},
           "coverage": {"valid": 1, "segments": 2, "fraction": 0.5, "of": HOSTILE, "not_in_split": 1,
                        "not_in_split_examples": [HOSTILE]},
           "histograms": {"verbs": {HOSTILE: 2}, "objects": {HOSTILE: 1}, "predicates": {HOSTILE: 1},
                          "steps": {HOSTILE: 1, "3": 2}, "control_flow": {"loop": 1}},
           "errors": [{"narration_id": HOSTILE, "status": HOSTILE,
                       "errors": [{"pointer": HOSTILE, "message": HOSTILE}]}],
           "malformed": [{"file": HOSTILE, "line": HOSTILE, "problem": HOSTILE}]}
    page = programs_report_html(rep)
    assert_inert(page)
    assert page.count("&lt;/script&gt;&lt;script&gt;alert(1)") >= 12


# ---------------------------------------------------------------- output paths and the terminal's encoding

def test_a_page_path_under_a_file_is_one_line_and_a_new_folder_is_made(tmp_path):
    """--html FILE/p.html (a file where a folder is needed) is one line, no traceback; --html NEW/DIR/p.html
    makes the folders."""
    from leap_cli.cli import os_error_line

    record = program_record()
    (tmp_path / "afile").write_text("x")
    r = show(tmp_path, record, None, "--html", tmp_path / "afile" / "p.html")
    assert isinstance(r.exception, OSError) and r.exception.errno is not None, r.output  # (main's one line:)
    assert os_error_line(r.exception).startswith(f"{tmp_path / 'afile'}: ") and (tmp_path / "afile").read_text() == "x"
    r = show(tmp_path, record, None, "--html", tmp_path / "new" / "dir" / "p.html")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "new" / "dir" / "p.html").read_text().startswith("<!DOCTYPE html>")


def test_show_on_an_ascii_terminal_writes_what_it_cannot_encode_as_escapes(tmp_path):
    """PYTHONIOENCODING=ascii (a C locale, a pipe to an old tool): a narration, a component text and a page path
    of non-ASCII letters print as \\xe9 / \\u2603, exit 0 and no UnicodeEncodeError."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    program = json.loads(json.dumps(PROGRAM))
    program["action"]["narration"] = "wash platé ☃"
    write(tmp_path / "val.jsonl", [program_record(program)])
    comps = {"narration": {"status": "ok", "source": "annotations", "text": "laver l'assiette ☃"}}
    write(tmp_path / "dval.jsonl", [descriptor_record(comps)])
    page = tmp_path / "pagé☃.html"
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "COLUMNS": "200",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "leap_cli", "show", NID, "--workdir", str(tmp_path), "--programs",
                           str(tmp_path / "val.jsonl"), "--descriptors", str(tmp_path / "dval.jsonl"), "--html",
                           str(page)], capture_output=True, env=env, timeout=60)
    out = done.stdout.decode("ascii") + done.stderr.decode("ascii")  # (all of it ASCII)
    assert done.returncode == 0, out
    assert "wash plat\\xe9 \\u2603" in out and "laver l'assiette \\u2603" in out and "pag\\xe9\\u2603.html" in out
    assert "Traceback" not in out and page.exists()


# ---------------------------------------------------------------- gaps of the mutation run

def test_a_malformed_program_record_names_the_file_given(tmp_path):
    """A malformed record of --programs FILE names FILE (not WORKDIR/programs, which was not read)."""
    from leap_cli.errors import LeapError

    r = show(tmp_path, {**program_record(), "errors": "oops"})
    assert isinstance(r.exception, LeapError), r.output
    assert r.exception.one_line().startswith(f"{tmp_path / 'val.jsonl'} [{NID}]: malformed program record: errors is")


def test_split_given_with_a_record_file_of_any_name_is_the_views_split(tmp_path):
    """--programs mine.jsonl --split val: the view's split is val (the page said "split ?": the file's name says
    none)."""
    from leap_cli.report.show import load_segment

    f = write(tmp_path / "mine.jsonl", [program_record()])
    assert load_segment(tmp_path, NID, split="val", programs=f).split == "val"
    assert load_segment(tmp_path, NID, programs=f).split is None
    d = write(tmp_path / "mine_d.jsonl", [descriptor_record()])
    assert load_segment(tmp_path, NID, split="test", descriptors=d).split == "test"


def test_the_split_a_file_name_says_in_capitals():
    """VAL.jsonl and Train.shard0of2.jsonl say their split as val.jsonl does (normalize_split takes any case)."""
    from pathlib import Path

    from leap_cli.report.show import _split_of_files

    assert _split_of_files(Path("VAL.jsonl"), None) == "val"
    assert _split_of_files(Path("Train.shard0of2.jsonl")) == "train"
    assert _split_of_files(Path("val.jsonl"), Path("Test.jsonl")) is None


def test_annotations_given_without_a_data_root_still_recheck_the_program(tmp_path):
    """--annotations DIR where the data set root is not there (no WORKDIR/kitchen): the program is checked again
    against DIR's class files (it fell back to WORKDIR/kitchen/annotations and said it had none)."""
    from tests.program_helpers import excerpt_annotations

    from leap_cli.report.show import load_segment

    ann = excerpt_annotations(tmp_path / "elsewhere", 2)
    f = write(tmp_path / "val.jsonl", [program_record(nid="P01_11_0")])
    view = load_segment(tmp_path / "work", "P01_11_0", programs=f, annotations=ann, data=tmp_path / "no-root")
    assert view.status_note is None or "class files" not in view.status_note, view.status_note
    view = load_segment(tmp_path / "work", "P01_11_0", programs=f, data=tmp_path / "no-root")
    assert "no EPIC class files in " in view.status_note


def test_one_class_file_alone_is_said_not_a_crash(tmp_path):
    """The verb classes without the noun classes (a half-copied folder): "no EPIC class files", the program shown
    as stored; not a failure to read the missing file."""
    from tests.program_helpers import excerpt_annotations

    ann = excerpt_annotations(tmp_path, 2)
    (ann / "EPIC_100_noun_classes.csv").unlink()
    r = show(tmp_path, program_record(nid="P01_11_0"), None, nid="P01_11_0")
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "as stored, not re-checked" in out and "no EPIC class files in" in out


def test_an_empty_program_object_is_a_malformed_program_not_a_valid_one():
    """A record stored as valid whose program is {} (an LLM's empty reply kept as it came) is drawn as its findings
    and invalid, as any program not of the schema's shape (it was drawn as a valid program of nothing)."""
    from leap_cli.report.show import _drawable

    drawn, note = _drawable(program_record(program={}), lambda r: None)
    assert drawn["status"] == "invalid" and drawn["program"] is None and drawn["errors"]
    assert note == "stored as valid; a malformed program: not of the schema's shape"
    drawn, note = _drawable(program_record(program=None, status="failed"), lambda r: None)
    assert drawn["status"] == "failed" and drawn["errors"] == [] and note == "as stored, not re-checked"


def test_a_page_without_a_status_note_says_none():
    """The note beside the program's status is there only when there is one (it said "(None)")."""
    from leap_cli.report.show import SegmentView, segment_html

    page = segment_html(SegmentView(NID, "val", program_record(), None, [], None), [])
    assert "None" not in page and "program <span class='tag valid'>valid</span> from offline offline-v5" in page
    page = segment_html(SegmentView(NID, "val", program_record(), None, [], "as stored, not re-checked"), [])
    assert "<span class='muted'>(as stored, not re-checked)</span> from offline" in page


def test_an_id_with_brackets_prints_as_itself_where_no_program_is_found(tmp_path):
    """"[b]...[/b]" in a narration id (ids are user text) printed as markup in the "no program record" line."""
    nid = "P01_01_[b]5[/b]"
    r = show(tmp_path, None, descriptor_record(nid=nid), nid=nid)
    assert r.exit_code == 0, r.output
    assert f"{nid}: no program record yet (run `leap generate-programs`)" in r.output
    r = show(tmp_path, program_record(nid=nid), None, nid=nid)
    assert r.exit_code == 0 and f"{nid}: no descriptor record yet" in r.output, r.output


# ---------------------------------------------------------------- --run: the prediction

def test_a_skipped_segment_without_a_reason_says_so(monkeypatch):
    """A manifest's skipped entry without a reason: "no reason recorded" (it said "None")."""
    import leap_cli.shards.format as shards_format
    from leap_cli.report.predicted import SkippedSegment, _check_not_skipped

    monkeypatch.setattr(shards_format, "load_manifest", lambda folder: ({"skipped": [{"narration_id": NID}]}, None))
    with pytest.raises(SkippedSegment) as e:
        _check_not_skipped("shards", NID)
    assert e.value.reason == "no reason recorded"
    _check_not_skipped("shards", "P01_01_6")  # (another segment: no word)


def test_a_skip_reason_with_brackets_prints_as_itself(monkeypatch, tmp_path):
    """The manifest's reason is data (a file name, an exception's text): "[b]" in it printed as markup."""
    import os
    from pathlib import Path

    from rich.console import Console

    import leap_cli.commands.show as show_cmd
    import leap_cli.report.predicted as predicted
    import leap_cli.train.checkpoint as checkpoint

    reason = "frames unreadable: P01_01.MP4 [b]ends[/b] at frame 3"

    def skipped(source, nid, shards):
        raise predicted.SkippedSegment(nid, reason, Path(shards))

    monkeypatch.setattr(checkpoint, "resolve_checkpoint", lambda run, which: Path(run) / "checkpoints" / "best.pt")
    monkeypatch.setattr(checkpoint, "load_checkpoint", lambda source: {"step": 1, "config": {}})
    monkeypatch.setattr(predicted, "predicted_program", skipped)
    console = Console(width=400, record=True, file=open(os.devnull, "w"), color_system=None)  # noqa: SIM115
    monkeypatch.setattr(show_cmd, "console", console)
    show_cmd._show_prediction(tmp_path / "run", NID, tmp_path, tmp_path / "shards", "val")
    text = console.export_text()
    assert f"no prediction: build-shards skipped this segment ({reason}; the manifest of" in text, text


def copy_shards(work, tmp_path, edit=None):
    import shutil

    shards = tmp_path / "val"
    shutil.copytree(work / "shards" / "val", shards)
    if edit:
        manifest = json.loads((shards / "manifest.json").read_text())
        edit(manifest, shards)
        (shards / "manifest.json").write_text(json.dumps(manifest))
    return shards


def test_the_prediction_of_a_segment_without_a_program_has_no_target(pipeline):  # noqa: F811
    """A sample without a valid program: target None (the table says "prediction only"), not an empty target."""
    from leap_cli.report.predicted import predicted_program

    _, work, run, _, _ = pipeline
    cmp = predicted_program(run, "P01_03_1", work / "shards" / "val")
    assert cmp.target is None and cmp.target_conditions is None and cmp.predicted


def test_the_prediction_reads_the_vocabulary_the_checkpoint_keeps(pipeline, tmp_path):  # noqa: F811
    """Shards built since with other condition names (same count): the checkpoint's vocabulary, the one the model
    was trained with, names the prediction's conditions, not the shards'."""
    from leap_cli.report.predicted import predicted_program

    _, work, run, _, _ = pipeline
    want = predicted_program(run, "P01_03_0", work / "shards" / "val")

    def rename(manifest, _):
        manifest["targets"]["conditions"] = [f"other{i}" for i, _ in enumerate(manifest["targets"]["conditions"])]

    got = predicted_program(run, "P01_03_0", copy_shards(work, tmp_path, rename))
    assert got.target_conditions == want.target_conditions and "until clean(plate)" in got.target_conditions[1]
    assert not any("other" in c for row in got.target_conditions + got.predicted_conditions for c in row)


def test_a_damaged_sample_is_one_line_naming_shard_and_sample(pipeline, tmp_path):  # noqa: F811
    """A sample whose bytes differ from the manifest's CRC: leap's one line naming the shard and the sample, and the
    fix (it was a ValueError's traceback)."""
    from leap_cli.errors import LeapError
    from leap_cli.report.predicted import predicted_program

    _, work, run, _, _ = pipeline
    shards = copy_shards(work, tmp_path)
    manifest = json.loads((shards / "manifest.json").read_text())
    info = next(i for i in manifest["shards"] if "P01_03_0" in i["keys"])
    at = info["offsets"][info["keys"].index("P01_03_0")] + 700
    blob = bytearray((shards / info["name"]).read_bytes())
    blob[at] ^= 0xFF
    (shards / info["name"]).write_bytes(bytes(blob))
    with pytest.raises(LeapError) as e:
        predicted_program(run, "P01_03_0", shards)
    assert e.value.record == "sample P01_03_0" and str(e.value.path) == str(shards / info["name"])
    assert "CRC-32" in e.value.message and e.value.fix


def test_the_conditions_listed_are_those_of_probability_at_least_one_half(pipeline, monkeypatch):  # noqa: F811
    """The heads give logits: a condition of logit 0.2 (probability 0.55) is on; all conditions are listed on
    every row but <end>."""
    import torch

    import leap_cli.train.checkpoint as checkpoint
    from leap_cli.report.predicted import predicted_program

    load = checkpoint.load_model

    def load_model(source):
        model, ckpt = load(source)
        forward = model.forward

        def at_logit(*a, **k):
            out = forward(*a, **k)
            return {**out, "step_conditions": torch.full_like(out["step_conditions"], 0.2)}

        model.forward = at_logit
        return model, ckpt

    monkeypatch.setattr(checkpoint, "load_model", load_model)
    _, work, run, _, vocab = pipeline
    cmp = predicted_program(run, "P01_03_0", work / "shards" / "val")
    P = len(vocab.conditions)
    assert P and [len(c) for c in cmp.predicted_conditions] == [0 if r == "<end>" else 2 * P for r in cmp.predicted]


def test_a_segment_not_in_the_shards_is_one_line_with_the_fix(pipeline):  # noqa: F811
    """An id no shard holds: "not in these shards" with the fix (not a ValueError from list.index)."""
    from leap_cli.errors import LeapError
    from leap_cli.report.predicted import predicted_program

    _, work, run, _, _ = pipeline
    with pytest.raises(LeapError, match="P01_99_9 is not in these shards") as e:
        predicted_program(run, "P01_99_9", work / "shards" / "val")
    assert "--shards" in e.value.fix


def test_the_tree_says_a_dash_for_no_conditions():
    """A program or a step without pre or post conditions shows "-" (it showed nothing after "pre")."""
    from rich.console import Console

    from leap_cli.report.program_view import conditions_text, program_tree

    program = {**PROGRAM, "pre": [], "steps": [sub("take", "sponge", post=[cond("holding", "right", "sponge")])]}
    console = Console(width=200, record=True, color_system=None, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(program_tree(program_record(program)))
    lines = [line.strip("│├└─ ") for line in console.export_text().splitlines()]
    assert "pre  -" in lines and "post clean(plate)" in lines and conditions_text(None) == "-"


def test_the_pages_program_leaves_out_an_empty_purpose_and_a_missing_else():
    """A sub-action without a purpose has no "- " line, a conditional without an else no "else" heading."""
    from leap_cli.report.program_view import steps_html

    html = steps_html([sub("take", "plate"), {"type": "conditional", "if": cond("open", "tap"),
                                              "then": [sub("close", "tap", purpose="stop <the> water")]}])
    assert html.count("<span class='muted'>- ") == 1 and "- stop &lt;the&gt; water" in html
    assert "<b>then</b>" in html and "<b>else</b>" not in html


def test_the_pages_program_draws_the_steps_inside_a_loop():
    from leap_cli.report.program_view import steps_html

    html = steps_html([{"type": "loop", "until": cond("clean", "plate"), "steps": [sub("scrub", "plate", "sponge")]}])
    assert re.search(r"<div class='step loop'><b>loop until</b> <span class='cond'>clean\(plate\)</span>"
                     r"<div class='step'><b>scrub\(plate, sponge\) with the right hand</b>", html), html


def test_programs_page_says_no_lines_in_the_plural():
    """0 damaged lines: "0 lines that are not records" (as at 2; it said "0 lines that is not a record")."""
    from leap_cli.report.programs_html import programs_report_html

    page = programs_report_html({"split": "val", "records": 0, "duplicates": 0, "malformed": []})
    assert "0 records, 0 duplicates &middot; 0 lines that are not records" in page


def test_the_vocabulary_held_by_neither_is_one_line(pipeline, tmp_path, monkeypatch):  # noqa: F811
    """A checkpoint without the target vocabulary, and shards whose manifest lost it: leap's line, not a crash in
    TargetVocab."""
    import leap_cli.shards.dataset as dataset
    import leap_cli.train.checkpoint as checkpoint
    from leap_cli.errors import LeapError
    from leap_cli.report.predicted import predicted_program

    load = checkpoint.load_model
    monkeypatch.setattr(checkpoint, "load_model", lambda source: (lambda m, c: (m, {**c, "targets": None}))(
        *load(source)))
    init = dataset.ShardDataset.__init__

    def without_targets(self, *a, **k):
        init(self, *a, **k)
        self.manifest = {**self.manifest, "targets": None}

    monkeypatch.setattr(dataset.ShardDataset, "__init__", without_targets)
    _, work, run, _, _ = pipeline
    with pytest.raises(LeapError, match="neither the checkpoint nor the shards hold the target vocabulary"):
        predicted_program(run, "P01_03_0", work / "shards" / "val")


def test_a_condition_without_a_predicate_reads_as_a_question_mark():
    from leap_cli.report.program_view import condition_text

    assert condition_text({"args": ["plate"]}) == "?(plate)"
    assert condition_text({"predicate": "on", "args": ["plate", "top"], "negated": True}) == "not on(plate, top)"


def test_the_descriptor_table_says_missing_and_keeps_its_title_on_one_line(tmp_path):
    """A component the record lacks shows "missing"; a video id with a newline is written \\n in the table's title
    (it broke the title in two)."""
    r = show(tmp_path, program_record(), descriptor_record(video_id="P01\n01"))
    assert r.exit_code == 0, r.output
    assert f"Descriptors of {NID} (video P01\\n01, 2.00-4.50 s)" in r.output
    rows = {cells[0]: cells[1] for line in r.output.splitlines()
            if len(cells := [c.strip() for c in line.strip().strip("│").split("│")]) == 3}
    assert rows["narration"] == "ok" and rows["audio"] == rows["camera"] == rows["hands"] == "missing"


def test_the_trained_on_line_prints_a_run_path_with_brackets_as_itself(monkeypatch, tmp_path):
    import os
    from pathlib import Path

    from rich.console import Console

    import leap_cli.commands.show as show_cmd
    import leap_cli.report.predicted as predicted
    import leap_cli.train.checkpoint as checkpoint

    def skipped(source, nid, shards):
        raise predicted.SkippedSegment(nid, "x", Path(shards))

    monkeypatch.setattr(checkpoint, "resolve_checkpoint", lambda run, which: Path(run) / "checkpoints" / "best.pt")
    monkeypatch.setattr(checkpoint, "load_checkpoint", lambda source: {"step": 1, "config": {}})
    monkeypatch.setattr(predicted, "predicted_program", skipped)
    console = Console(width=400, record=True, file=open(os.devnull, "w"), color_system=None)  # noqa: SIM115
    monkeypatch.setattr(show_cmd, "console", console)
    run = tmp_path / "runs" / "r[b]1[/b]"
    show_cmd._show_prediction(run, NID, tmp_path, tmp_path / "shards", "val")
    assert f"{run}: trained on programs: " in console.export_text()


def test_a_bars_label_sits_on_its_bar_beside_its_value():
    """Each row's label and value share one baseline, inside the row's bar (a label a row lower read as the next
    bar's)."""
    from leap_cli.report.html import bar_chart

    svg = bar_chart("t", [("plate", 3.0), ("knife", 1.0)], bar_height=20)
    labels = [float(y) for y in re.findall(r"<text x='164' y='([\d.]+)' text-anchor='end'", svg)]
    values = [float(y) for y in re.findall(r"<text x='[\d.]+' y='([\d.]+)' font-size='12'>\d", svg)]
    bars = [(float(y), float(h)) for y, h in re.findall(r"<rect x='170' y='([\d.]+)' width='[\d.]+' height='([\d.]+)'",
                                                        svg)]
    assert len(labels) == len(values) == len(bars) == 2 and labels == values
    assert all(y < label < y + h for label, (y, h) in zip(labels, bars)), (labels, bars)
