"""``leap show`` from a user's side (hostile text, damaged records, odd output paths, an ASCII terminal) and the
gaps a mutation run over report/show.py, predicted.py, program_view.py, programs_html.py, html.py and
commands/show.py left: each test here failed on a fault or on a mutant."""

import json
import re

import pytest
from typer.testing import CliRunner

from leap_cli.cli import app

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
