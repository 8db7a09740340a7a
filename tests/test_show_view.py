"""``leap show``'s search, page, tree and prediction table, on small records built by hand (from a mutation run of
leap_cli/report/show.py, program_view.py, predicted.py and commands/show.py: each test failed on a mutant)."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leap_cli.cli import app
from tests.kitchens import config_kitchen_copy
from tests.test_show import NID, stored, write  # noqa: F401  (stored: the module's fixture, used here)


def cond(predicate, *args, negated=False):
    return {"predicate": predicate, "args": list(args), "negated": negated}


def sub(verb, a=None, b=None, hand="right", pre=(), post=(), purpose=""):
    return {"type": "sub_action", "verb": verb, "object_a": a, "object_b": b, "hand": hand, "pre": list(pre),
            "post": list(post), "purpose": purpose}


# a program with every kind of step: a loop, a conditional with both branches, a routine
STEPS = [
    sub("take", "sponge", hand="left", pre=[cond("visible", "sponge")], post=[cond("holding", "left", "sponge")]),
    {"type": "loop", "until": cond("clean", "plate"), "steps": [sub("scrub", "plate", "sponge", hand="both")]},
    {"type": "conditional", "if": cond("open", "tap"),
     "then": [sub("open", "tap")], "else": [sub("rinse", "plate", post=[cond("dirty", "plate", negated=True)])]},
    {"type": "routine", "name": "dry & stack", "steps": [sub("wipe", "plate", "towel", purpose="dry <the> plate & towel")]},
]
PROGRAM = {"action": {"narration": "wash plate", "verb": "wash", "noun": "plate", "verb_class": 2, "noun_class": 2},
           "pre": [cond("dirty", "plate")], "post": [cond("clean", "plate")], "steps": STEPS}


def run_show(*args, columns="250"):
    return CliRunner().invoke(app, ["show", *map(str, args)], env={"COLUMNS": columns})


# ---------------------------------------------------------------- the search for the records

def test_record_of_takes_the_id_not_a_record_that_mentions_it(tmp_path):
    """A line holding the id as a JSON string of another field (P01_01_12's "after": "P01_01_1") is not its record;
    a damaged line holding the id is said (report69: it was passed over, "not found"), unless a good one follows."""
    from leap_cli.report.show import record_of

    f = write(tmp_path / "val.jsonl", [{"narration_id": "P01_01_12", "after": "P01_01_1"}])
    assert record_of(f, "P01_01_1") is None
    f = write(tmp_path / "val.jsonl", ['{"narration_id": "P01_01_1", "v": ', {"narration_id": "P01_01_1", "v": 1}])
    assert record_of(f, "P01_01_1") == {"narration_id": "P01_01_1", "v": 1}


def test_split_narrows_the_search_and_names_the_split_that_holds_it(tmp_path):
    """--split val searches the val files alone; a segment of another split is said to be one, naming it."""
    from leap_cli.errors import LeapError
    from leap_cli.report.show import load_segment

    (tmp_path / "programs").mkdir()
    (tmp_path / "descriptors").mkdir()
    d = {"narration_id": "P01_01_1", "video_id": "P01_01", "start": 1.0, "stop": 2.0, "text": "t", "components": {}}
    write(tmp_path / "descriptors" / "train.jsonl", [{**d, "text": "of train"}])
    write(tmp_path / "descriptors" / "val.jsonl", [{**d, "text": "of val"}])
    view = load_segment(tmp_path, "P01_01_1", split="val")
    assert view.descriptor["text"] == "of val" and view.split == "val"
    view = load_segment(tmp_path, "P01_01_1")  # every split, train first
    assert view.descriptor["text"] == "of train" and view.split == "train"
    write(tmp_path / "descriptors" / "train.jsonl", [{**d, "narration_id": "P01_01_2"}])
    with pytest.raises(LeapError, match="P01_01_2 is a segment of the train split, not test") as e:
        load_segment(tmp_path, "P01_01_2", split="test")
    assert "--split train" in e.value.fix
    # with the files given, no search of the work directory: it is not there
    with pytest.raises(LeapError, match="no program or descriptor record for P01_01_2"):
        load_segment(tmp_path, "P01_01_2", split="test", descriptors=write(tmp_path / "test.jsonl", [d]))


def test_the_search_reads_the_parts_of_a_sharded_run(tmp_path):
    """`generate-programs --shard I/N` writes val.shardIofN.jsonl: a record there is found, with its split."""
    from leap_cli.report.show import load_segment

    (tmp_path / "descriptors").mkdir()
    d = {"narration_id": "P01_01_3", "video_id": "P01_01", "start": 1.0, "stop": 2.0, "text": "part", "components": {}}
    write(tmp_path / "descriptors" / "val.shard1of2.jsonl", [d])
    view = load_segment(tmp_path, "P01_01_3")
    assert view.descriptor == d and view.split == "val"
    assert tmp_path / "descriptors" / "val.shard1of2.jsonl" in view.files


def test_the_page_never_replaces_an_empty_record_file_of_the_search(stored, tmp_path):  # noqa: F811
    """An empty record file (a shard part that wrote nothing) is no HTML page by its first bytes, as it has none:
    only its being one of the files searched keeps it."""
    root, programs, descriptor = stored
    work = tmp_path / "w"
    (work / "programs").mkdir(parents=True)
    write(work / "programs" / "val.jsonl", [programs[0]])
    empty = work / "programs" / "train.jsonl"
    empty.write_text("")
    r = run_show(NID, "--workdir", work, "--data", root / "kitchen", "--html", empty)
    assert r.exit_code != 0 and "which this command reads or writes" in str(r.exception), r.output
    assert empty.read_text() == ""
    # a given file is said to be one the command reads (not merely "not an HTML page")
    given = write(tmp_path / "d.jsonl", [descriptor])
    r = run_show(NID, "--workdir", work, "--data", root / "kitchen", "--descriptors", given, "--html", given)
    assert r.exit_code != 0 and "which this command reads or writes" in str(r.exception), r.output
    assert json.loads(given.read_text()) == descriptor


def test_the_split_a_file_name_says():
    from leap_cli.report.show import _split_of_files

    assert _split_of_files(Path("a/validation.jsonl")) == "val"
    assert _split_of_files(Path("train.shard0of2.jsonl"), None) == "train"
    assert _split_of_files(Path("val.jsonl"), Path("x/validation.jsonl")) == "val"  # the same split, two spellings
    assert _split_of_files(Path("val.jsonl"), Path("train.jsonl")) is None  # two splits: none said
    assert _split_of_files(Path("programs.jsonl")) is None


def test_the_split_the_annotations_lack_is_not_checked_nor_said_to_miss_the_segment(stored, tmp_path):  # noqa: F811
    """The excerpt's annotations hold the val split alone: a program of a file named train.jsonl is checked without
    the labels of a split they lack, and is not called "not a segment of the train split"."""
    root, programs, _ = stored
    r = run_show(NID, "--workdir", root, "--programs", write(tmp_path / "train.jsonl", [programs[0]]))
    assert r.exit_code == 0, r.output
    first = " ".join(r.output.splitlines()[0].split())
    assert "take plate valid" in first and "not a segment" not in r.output and "(stored as" not in first


def test_annotations_given_apart_from_data_recheck_the_program(stored, tmp_path):  # noqa: F811
    """Was wrong: `leap show` had no --annotations (every other command that reads them has): with --data a root
    whose annotations are elsewhere, the program was shown as stored, not re-checked."""
    root, programs, _ = stored
    bare = tmp_path / "bare"
    bare.mkdir()
    prog = write(tmp_path / "val.jsonl", [programs[0]])
    r = run_show(NID, "--workdir", root, "--programs", prog, "--data", bare)
    assert r.exit_code == 0 and "no EPIC class files in" in " ".join(r.output.split()), r.output
    r = run_show(NID, "--workdir", root, "--programs", prog, "--data", bare,
                 "--annotations", root / "kitchen" / "annotations")
    assert r.exit_code == 0 and "no EPIC class files" not in r.output, r.output
    assert "take plate valid" in " ".join(r.output.splitlines()[0].split()), r.output


# ---------------------------------------------------------------- the record's status

def test_a_malformed_program_keeps_a_failed_status_and_lists_its_findings():
    """A malformed program of a valid record makes it invalid; a failed record stays failed. Each finding of the
    program's shape is listed (up to 10), the stored ones after them."""
    from leap_cli.programs.schema import validate_program
    from leap_cli.report.show import _drawable

    program = {"steps": 5, "pre": "x", "post": 7}
    found = [f.to_dict() for f in validate_program(program)]
    assert 2 <= len(found) <= 10
    stored_error = {"pointer": "", "message": "request failed: timeout"}
    for kept, shown in (("valid", "invalid"), ("invalid", "invalid"), ("failed", "failed")):
        rec, note = _drawable({"narration_id": "x", "status": kept, "program": program, "errors": [stored_error]},
                              lambda r: None)
        assert rec["status"] == shown and rec["program"] is None
        assert rec["errors"] == found + [stored_error]
        assert note == ("stored as valid; " if kept == "valid" else "") + "a malformed program: not of the schema's shape"


def test_where_and_when():
    from leap_cli.report.show import where_when

    assert where_when({"video_id": "P01_01", "start": 1.0, "stop": 3.456}) == "video P01_01, 1.00-3.46 s"
    assert where_when({"stop": 2}) == "video ?, ?-2.00 s"
    assert where_when(None) == "video ?, ?-? s"


# ---------------------------------------------------------------- the page

def view_of(program=PROGRAM, status="valid", errors=(), descriptor=None, split="val", note=None):
    from leap_cli.report.show import SegmentView

    rec = {"narration_id": "P01_01_5", "status": status, "program": program, "errors": list(errors),
           "provenance": {"backend": "offline", "model": "offline-v5"}}
    return SegmentView("P01_01_5", split, rec if status else None, descriptor, [], note)


DESCRIPTOR = {"narration_id": "P01_01_5", "video_id": "P01_01", "start": 2.0, "stop": 4.5, "text": "clip & <text>",
              "components": {"narration": {"status": "ok", "source": "annotations", "text": "take plate",
                                           "data": {"narration": "take plate"}}}}


def test_the_page_title_says_the_programs_narration_before_the_descriptors():
    from leap_cli.report.show import narration_of, segment_html

    view = view_of(descriptor=DESCRIPTOR)
    assert narration_of(view) == "wash plate"
    page = segment_html(view, [])
    assert "<h1>P01_01_5: wash plate</h1>" in page and "video P01_01, 2.00-4.50 s, split val" in page
    assert narration_of(view_of(program=None, status="failed", descriptor=DESCRIPTOR)) == "take plate"


def test_the_storyboard_cards(tmp_path):
    """Each sub-action in execution order, numbered from 1, with the control flow around it (an else branch as
    "if not"), its purpose escaped, and the keyframe of its even share of the segment: card i of n shows frame
    int((i + 0.5) * frames / n)."""
    import numpy as np

    from leap_cli.report.show import segment_html

    frames = [(float(k), np.full((8, 8, 3), 40 * k, np.uint8)) for k in range(6)]  # at 0, 1, ... 5 s
    page = segment_html(view_of(descriptor=DESCRIPTOR), frames)
    board = page[page.index("<h2>Storyboard</h2>"):page.index("<h2>Program</h2>")]
    cards = board.split("<div class='card'>")[1:]
    assert len(cards) == 5
    # 5 cards over 6 frames: the middles of the shares 0.6, 1.8, 3.0, 4.2, 5.4 -> frames 0, 1, 3, 4, 5
    for card, number, text, t, context in zip(cards, range(1, 6), [
            "take(sponge) with the left hand", "scrub(plate, sponge) with both hands", "open(tap) with the right hand",
            "rinse(plate) with the right hand", "wipe(plate, towel) with the right hand"], [0, 1, 3, 4, 5],
            ["", "repeat until clean(plate)", "if open(tap)", "if not open(tap)", "routine dry &amp; stack"]):
        assert f"<h4>{number}. {text}</h4>" in card and f"&asymp; {t:.2f} s" in card
        assert (f"<div class='muted'>{context}</div>" in card) if context else ("<div class='muted'><" not in card)
    assert "<div class='muted'>dry &lt;the&gt; plate &amp; towel</div>" in cards[4]
    assert "pre: <span class='cond'>visible(sponge)</span>" in cards[0]
    assert "post: <span class='cond'>holding(left, sponge)</span>" in cards[0]
    assert "pre: <span class='muted'>-</span>" in cards[3] and "post: <span class='cond'>not dirty(plate)</span>" in cards[3]


def test_the_program_section_of_the_page():
    from leap_cli.report.show import segment_html

    page = segment_html(view_of(descriptor=DESCRIPTOR), [])
    program = page[page.index("<h2>Program</h2>"):page.index("<h2>Descriptors</h2>")]
    assert program.startswith("<h2>Program</h2><div>pre: <span class='cond'>dirty(plate)</span></div>")
    assert program.endswith("<div>post: <span class='cond'>clean(plate)</span></div>")
    assert "<b>loop until</b> <span class='cond'>clean(plate)</span>" in program
    assert "<div><b>else</b><div class='step'><b>rinse(plate) with the right hand</b>" in program
    assert "<b>routine dry &amp; stack</b>" in program
    assert " <span class='muted'>- dry &lt;the&gt; plate &amp; towel</span>" in program


def test_the_page_lists_findings_and_descriptors_escaped():
    from leap_cli.report.show import segment_html

    d = {**DESCRIPTOR, "components": {**DESCRIPTOR["components"],
                                      "camera": {"status": "unavailable", "source": "odometry", "text": "<none>"}}}
    page = segment_html(view_of(status="invalid", errors=[{"pointer": "/steps/0/verb", "message": "verb <zap> & co"}],
                                descriptor=d), [])
    assert "<h2>Validation findings</h2>" in page
    assert "<tr><td>/steps/0/verb</td><td>verb &lt;zap&gt; &amp; co</td></tr>" in page
    assert ("<tr><td>narration</td><td><span class='tag ok'>ok</span></td><td>annotations</td><td>take plate</td></tr>"
            in page)
    assert ("<tr><td>camera</td><td><span class='tag unavailable'>unavailable</span></td><td>odometry</td>"
            "<td>&lt;none&gt;</td></tr>" in page)
    assert "<tr><td>audio</td><td><span class='tag '>missing</span></td><td></td><td></td></tr>" in page
    assert "<pre>clip &amp; &lt;text&gt;</pre>" in page
    page = segment_html(view_of(status="failed", program=None, errors=[{"pointer": "", "message": "timeout"}]), [])
    assert "<h2>Why it failed</h2>" in page and "<b>No descriptor record</b>" in page and "Storyboard" not in page


def test_a_page_of_a_descriptor_without_a_stop_has_no_keyframes(tmp_path):
    from leap_cli.report.show import write_segment_html

    d = {k: v for k, v in DESCRIPTOR.items() if k != "stop"}
    out = write_segment_html(view_of(descriptor=d), tmp_path / "nodata", tmp_path / "p.html")
    page = out.read_text()
    assert "No keyframes: the descriptor record does not say the video and times." in page and "<img" not in page


# ---------------------------------------------------------------- the terminal tree

def tree_text(record, note=None, narration=""):
    import os

    from rich.console import Console

    from leap_cli.report.program_view import program_tree

    console = Console(width=200, record=True, file=open(os.devnull, "w"), color_system=None)  # noqa: SIM115
    console.print(program_tree(record, note, narration))
    return [line.strip("│├└─ ") for line in console.export_text().splitlines()]


def test_the_tree_numbers_every_sub_action_and_shows_both_branches():
    steps = STEPS + [{"type": "jump"}]
    lines = tree_text({"narration_id": "P01_01_5", "status": "valid", "program": {**PROGRAM, "steps": steps},
                       "provenance": {"backend": "offline", "model": "offline-v5"}})
    assert lines[0] == "P01_01_5  wash plate  valid (offline offline-v5)"
    assert lines[1] == "action: verb wash (2), noun plate (2)" and lines[2] == "pre  dirty(plate)"
    assert lines[-1] == "post clean(plate)"
    for said in ("1. take(sponge) with the left hand", "pre  visible(sponge)", "post holding(left, sponge)",
                 "loop until clean(plate)", "2. scrub(plate, sponge) with both hands", "if open(tap)", "then",
                 "3. open(tap) with the right hand", "else", "4. rinse(plate) with the right hand",
                 "post not dirty(plate)", "routine dry & stack",
                 "5. wipe(plate, towel) with the right hand  - dry <the> plate & towel", "unknown step type 'jump'"):
        assert said in lines, (said, lines)
    assert lines.index("else") < lines.index("4. rinse(plate) with the right hand")


def test_sub_action_text_of_empty_objects_and_hands():
    from leap_cli.report.program_view import condition_text, sub_action_text

    assert sub_action_text({"verb": "take", "object_a": "cup", "object_b": "", "hand": "both"}) == "take(cup) with both hands"
    assert sub_action_text({"verb": "stir", "object_a": "pot", "object_b": "spoon"}) == "stir(pot, spoon)"
    assert sub_action_text({"verb": "open", "object_a": "jar", "hand": "either"}) == "open(jar) with either hand"
    assert condition_text(cond("in", "plate", "sink", negated=True)) == "not in(plate, sink)"


# ---------------------------------------------------------------- --run: the prediction beside the target

@pytest.fixture
def prediction(monkeypatch, tmp_path):
    """_show_prediction with a checkpoint and a comparison given by hand; returns (call, what it was asked)."""
    import os

    from rich.console import Console

    import leap_cli.commands.show as show_cmd
    import leap_cli.report.predicted as predicted
    import leap_cli.train.checkpoint as checkpoint

    asked = {}
    ckpt = {"step": 7, "config": {"data": {}}, "provenance": {"train": {"programs": {
        "records": 3, "valid": 3, "with_program": 3, "made_by": [{"backend": "offline", "model": "offline-v5",
                                                                   "records": 3, "valid": 3}]}}}}
    monkeypatch.setattr(checkpoint, "resolve_checkpoint", lambda run, which: Path(run) / "checkpoints" / "best.pt")
    monkeypatch.setattr(checkpoint, "load_checkpoint", lambda source: ckpt)

    def call(cmp, split="val", shards=None):
        def predicted_program(source, nid, shards):
            asked.update(source=source, nid=nid, shards=shards)
            return cmp

        monkeypatch.setattr(predicted, "predicted_program", predicted_program)
        console = Console(width=400, record=True, file=open(os.devnull, "w"), color_system=None)  # noqa: SIM115
        monkeypatch.setattr(show_cmd, "console", console)
        show_cmd._show_prediction(tmp_path / "run", "P01_01_5", tmp_path / "work", shards, split)
        return console.export_text()

    return call, asked, tmp_path


def rows_of(text):
    """The table's rows: (number, target, predicted) of each line that starts with a row number."""
    out = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃").split("│")]
        if len(cells) == 3 and cells[0].isdigit():
            out.append(tuple(cells))
        elif len(cells) == 3 and not cells[0] and out:  # a row's second line: its conditions
            out[-1] += tuple(cells[1:])
    return out


def test_the_prediction_table_lists_every_row_of_both(prediction):
    from leap_cli.report.predicted import ProgramComparison

    call, asked, tmp_path = prediction
    cmp = ProgramComparison("P01_01_5", ["take(plate) [right]", "<end>"],
                            ["take(plate) [right]", "wash(plate) [both]", "<end>"],
                            [["pre visible(plate)", "post holding(right, plate)"], []],
                            [["pre visible(plate)"], ["post clean(plate)"], []], "best.pt, step 7")
    text = call(cmp)
    assert asked["shards"] == tmp_path / "work" / "shards" / "val"  # (recognition: the config names no task)
    assert "trained on programs: offline offline-v5: 3 valid of 3" in text and "unknown" not in text
    assert rows_of(text) == [
        ("0", "take(plate) [right]", "take(plate) [right]", "pre visible(plate); post holding(right, plate)",
         "pre visible(plate)"),
        ("1", "<end>", "wash(plate) [both]", "", "post clean(plate)"),
        ("2", "", "<end>")]
    assert "no valid program in the shards" not in text
    # a longer target than the prediction, and none
    cmp = ProgramComparison("P01_01_5", ["take(plate) [right]", "wash(plate) [both]", "<end>"], ["<end>"],
                            [[], [], []], [[]], "best.pt, step 7")
    assert rows_of(call(cmp)) == [("0", "take(plate) [right]", "<end>"), ("1", "wash(plate) [both]", ""),
                                  ("2", "<end>", "")]
    text = call(ProgramComparison("P01_01_5", None, ["<end>"], None, [[]], "best.pt, step 7"), split="train")
    assert "P01_01_5: no valid program in the shards; prediction only" in text
    assert rows_of(text) == [("0", "", "<end>")] and asked["shards"] == tmp_path / "work" / "shards" / "train"


def test_show_run_predicts_from_the_split_the_segment_was_found_in(stored, tmp_path, monkeypatch):  # noqa: F811
    """Without --split the shards are those of the split whose file held the record."""
    import leap_cli.commands.show as show_cmd
    import leap_cli.common as common

    root, programs, _ = stored
    (tmp_path / "programs").mkdir()
    write(tmp_path / "programs" / "train.jsonl", [programs[0]])
    asked = {}
    monkeypatch.setattr(common, "resolve_run", lambda run, workdir: tmp_path / "run")
    monkeypatch.setattr(show_cmd, "_show_prediction", lambda *a: asked.update(args=a))
    r = run_show(NID, "--workdir", tmp_path, "--data", root / "kitchen", "--run", "runs/x")
    assert r.exit_code == 0, r.output
    assert asked["args"] == (tmp_path / "run", NID, tmp_path, None, "train")


def test_conditions_at_the_threshold_and_of_the_post_half():
    """Probability 0.5 is on (the table says ">= 0.5"); column P is the first post condition."""
    import torch

    from leap_cli.report.predicted import _conditions

    class Vocab:
        conditions = ["cut(potato)", "clean(plate)"]

    probs = torch.tensor([[0.5, 0.49, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    assert _conditions(Vocab, probs, ["cut(potato) [left]", "<if>", "<end>"]) == [
        ["pre cut(potato)", "post cut(potato)"], [], []]


def test_a_run_without_program_heads_says_why(monkeypatch, tmp_path):
    """Heads asked for but left out (no valid program in the training shards) and heads not asked for are told
    apart; both before the shards are read."""
    import leap_cli.report.predicted as predicted
    import leap_cli.shards.format as shards_format
    import leap_cli.train.checkpoint as checkpoint
    from leap_cli.errors import LeapError

    class Model:
        decoder = None

    monkeypatch.setattr(shards_format, "load_manifest", lambda folder: ({"skipped": []}, None))
    monkeypatch.setattr(checkpoint, "resolve_checkpoint", lambda run, which: Path(run) / "best.pt")
    for config, says in (({}, "its training shards held no valid program"),
                         ({"model": {"program_heads": False}}, "train with model.program_heads and loss.program_loss on"),
                         ({"loss": {"program_loss": False}}, "train with model.program_heads and loss.program_loss on")):
        monkeypatch.setattr(checkpoint, "load_model", lambda source, config=config: (Model(), {"config": config}))
        with pytest.raises(LeapError, match="this run's model has no program heads") as e:
            predicted.predicted_program(tmp_path, "P01_01_5", tmp_path / "shards")
        assert says in e.value.message + " " + (e.value.fix or ""), (config, e.value.message)


@pytest.fixture(scope="module")
def kitchen(tmp_path_factory):
    """A synthetic kitchen of one 64x48 video, P01_01."""
    from leap_cli.synth.kitchen import KitchenConfig

    root = tmp_path_factory.mktemp("kitchen")
    return config_kitchen_copy(tmp_path_factory, root, KitchenConfig(videos=1, segments_per_video=2, width=64,
                                                                     height=48))


def test_keyframes_of_a_window_past_the_video_are_none_and_say_why(kitchen):
    """The frames read past the video's end are not shown as if they were the segment's: none, with the reason."""
    from leap_cli.report.show import keyframes

    why = []
    assert keyframes(kitchen, "P01_01", 0.5, 1000.0, count=3, why=why) == []
    assert len(why) == 1 and why[0].startswith("the window ends ") and "after the decodable end of the video" in why[0]
    why = []
    assert len(keyframes(kitchen, "P01_01", 0.5, 1.5, count=3, why=why)) == 3 and why == []


def test_the_page_shows_six_keyframes_of_the_segments_window(kitchen, tmp_path):
    from leap_cli.report.show import write_segment_html

    d = {**DESCRIPTOR, "start": 0.5, "stop": 1.5}
    page = write_segment_html(view_of(descriptor=d), kitchen, tmp_path / "p.html").read_text()
    keyframes = page[page.index("<h2>Keyframes</h2>"):page.index("<h2>Storyboard</h2>")]
    times = [float(x.split(" s<")[0]) for x in keyframes.split("<figcaption>")[1:]]
    # (the first is the frame shown at 0.5 s, which may start a frame before it)
    assert len(times) == 6 and times == sorted(times) and 0.4 < times[0] < times[-1] < 1.5, times
    assert "No keyframes" not in page


def test_the_storyboard_context_of_nested_steps():
    """A sub-action inside a loop inside a routine inside a conditional's else has all three around it."""
    from leap_cli.report.program_view import flatten_for_storyboard

    inner = sub("scrub", "pan")
    steps = [{"type": "conditional", "if": cond("dirty", "pan"), "then": [],
              "else": [{"type": "routine", "name": "tidy", "steps": [
                  {"type": "loop", "until": cond("clean", "pan"), "steps": [inner]}]}]}]
    assert flatten_for_storyboard(steps) == [(inner, "if not dirty(pan) routine tidy repeat until clean(pan)")]


def test_rows_stop_at_the_end_row_and_at_the_padding():
    """A prediction has no padding: the rows after its <end> are no part of the program (a model fills every
    row); a target's rows stop at the first padded (all -100) row, not at a marker's (-100 but its kind)."""
    import torch

    from leap_cli.report.predicted import _rows

    class Vocab:
        @staticmethod
        def decode_row(r):
            return "<end>" if r[0] == 9 else "<loop>" if r[0] == -100 else f"step{r[0]}"

    pred = torch.tensor([[1, 0, 0, 0, 0], [2, 0, 0, 0, 0], [9, 0, 0, 0, 1], [3, 0, 0, 0, 0]])
    assert _rows(Vocab, pred) == ["step1", "step2", "<end>"]
    target = torch.tensor([[1, 0, 0, 0, 0], [-100, -100, -100, -100, 2], [-100] * 5, [4, 0, 0, 0, 0]])
    assert _rows(Vocab, target) == ["step1", "<loop>"]


def test_a_test_segment_without_a_program_says_where_its_programs_come_from(tmp_path):
    """The terminal said "no program record yet (run `leap generate-programs`)" for a test segment, which the
    offline backend refuses."""
    (tmp_path / "descriptors").mkdir()
    write(tmp_path / "descriptors" / "test.jsonl", [{**DESCRIPTOR, "components": {}}])
    r = run_show("P01_01_5", "--workdir", tmp_path)
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())
    assert "P01_01_5: no program record: test programs come from an LLM only" in said
    assert "run `leap generate-programs`" not in said


def test_the_else_branch_of_a_negated_condition_reads_as_the_condition_itself():
    """The else of "if not open(bottle)" runs where the bottle is open: its cards say "if open(bottle)" (they said
    "if not not open(bottle)")."""
    from leap_cli.report.program_view import flatten_for_storyboard

    step = {"type": "sub_action", "verb": "pour", "object_a": "water"}
    cards = flatten_for_storyboard([{"type": "conditional", "if": {"predicate": "open", "args": ["bottle"],
                                                                   "negated": True},
                                     "then": [step], "else": [step]}])
    assert [context for _, context in cards] == ["if not open(bottle)", "if open(bottle)"]
