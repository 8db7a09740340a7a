"""What README.md and docs/*.md state, checked mechanically against the CLI, the package files and what the stages
write on a small synthetic kitchen: option names and defaults in the docs' option tables, every command line shown
in a code block, links and their anchors, the repository paths the docs name, the record fields the format
sections list, the action-program vocabulary, the exemplar figures. Claims found false are strict xfails."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.kitchens import kitchen_copy
from tests.procs import leap_main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _cli():
    import typer

    from leap_cli.cli import app

    return typer.main.get_command(app)


def _options(cmd) -> dict[str, object]:
    """Every option spelling of a command -> its parameter."""
    return {o: p for p in cmd.params for o in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])]
            if o.startswith("-")}


def _table(doc: str, heading: str) -> list[list[str]]:
    """The rows (cells) of the first table after ``heading`` in docs/``doc``."""
    lines = (ROOT / "docs" / doc).read_text().splitlines()
    i = next(n for n, x in enumerate(lines) if x.startswith("#") and heading in x)
    rows, started = [], False
    for x in lines[i + 1:]:
        if x.startswith("|"):
            started = True
            if not x.startswith("|--") and not x.startswith("| option") and not x.startswith("|---"):
                rows.append([c.strip() for c in x.strip().strip("|").split(" | ")])
        elif started:
            break
    return rows


# (doc, heading the table follows, command)
OPTION_TABLES = [("extract.md", "Before extract: `leap info`", "info"), ("extract.md", "## Options", "extract"),
                 ("programs.md", "Options (generate-programs)", "generate-programs"),
                 ("shards.md", "# Shards", "build-shards"), ("synthetic-kitchen.md", "# The synthetic", "demo-data"),
                 ("train.md", "## Options", "train"), ("evaluate-submit.md", "## `leap evaluate`", "evaluate")]


def _names(cell: str) -> list[str]:
    return list(dict.fromkeys(re.findall(r"(?<![\w-])(--[a-z][-a-z]*|-[a-z])\b", cell)))


@pytest.mark.parametrize("doc,heading,command", OPTION_TABLES, ids=[c for _, _, c in OPTION_TABLES])
def test_every_option_of_a_docs_table_is_an_option_of_its_command(doc, heading, command):
    """Each `--option` in the first column of a stage's option table is one its CLI takes."""
    opts = _options(_cli().commands[command])
    rows = _table(doc, heading)
    named = [n for r in rows for n in _names(r[0])]
    assert len(named) >= 5, (doc, rows[:2])  # the table was found
    assert [n for n in named if n not in opts] == []


def _literal(text: str):
    """A default cell's plain values (`1GB`, 0.5, off, none), or None where it is words (`WORKDIR/...`)."""
    vals = []
    for part in re.sub(r"\s*\(.*?\)", "", text).split(","):
        part = part.strip()
        if re.fullmatch(r"-?\d+(\.\d+)?", part):
            vals.append(float(part))
        elif part in ("off", "none", "on"):
            vals.append({"off": False, "none": None, "on": True}[part])
        elif re.fullmatch(r"`[\w.-]+`", part) and "WORKDIR" not in part:
            vals.append(part.strip("`"))
        else:  # words ("sized", "all five", "(required)") or a path made from others
            return None
    return vals


# options whose CLI default is None and resolved by the stage to what the table says (checked elsewhere: the kitchen
# run's program records say `offline`)
RESOLVED = {("generate-programs", "--backend"), ("generate-programs", "--batch-max-requests"),
            ("generate-programs", "--batch-max-mb")}  # (the last two: test_generate_programs_defaults_...)


@pytest.mark.parametrize("doc,heading,command", [t for t in OPTION_TABLES if t[2] not in ("train", "evaluate")],
                         ids=[c for _, _, c in OPTION_TABLES if c not in ("train", "evaluate")])
def test_the_defaults_of_a_docs_option_table_are_the_cli_defaults(doc, heading, command):
    """Where a table's default column holds plain values (`9, 90`, `auto`, off, none), they are the CLI's."""
    opts = _options(_cli().commands[command])
    checked = 0
    for row in _table(doc, heading):
        names, values = _names(row[0]), _literal(row[1])
        names = [n for n in names if not n.startswith("--no-")]
        if values is None or len(values) != len(names):
            continue
        for name, want in zip(names, values):
            if (command, name) in RESOLVED:
                continue
            got = opts[name].default
            if isinstance(want, float):
                assert got is not None and float(got) == want, (command, name, got, want)
            elif want is None:  # "none": no value, or a flag/option left unset
                assert got in (None, False, [], ()), (command, name, got)
            elif want is False:
                assert got in (False, None), (command, name, got)
            elif want is True:
                assert got is True, (command, name, got)
            else:
                assert str(got) == want, (command, name, got, want)
            checked += 1
    assert checked >= 3, (command, checked)


def test_generate_programs_defaults_the_table_states_in_words_are_the_codes():
    """programs.md: `--batch-max-requests`, `--batch-max-mb` default 50000, 200 (the CLI's None resolves to these);
    `--base-url` default $OPENAI_BASE_URL, else OpenAI's."""
    from leap_cli.programs import batch

    consts = {k: getattr(batch, k) for k in ("BATCH_MAX_REQUESTS", "BATCH_MAX_MB") if hasattr(batch, k)}
    if len(consts) < 2:
        from leap_cli.commands import programs as cmd

        consts = {k: getattr(cmd, k) for k in ("BATCH_MAX_REQUESTS", "BATCH_MAX_MB")}
    assert (consts["BATCH_MAX_REQUESTS"], consts["BATCH_MAX_MB"]) == (50000, 200)
    src = (ROOT / "leap_cli" / "programs" / "backends.py").read_text()
    assert 'os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"' in src


def _doc_commands() -> list[tuple[str, str]]:
    """(doc, `leap ...` command) of every command line in a fenced code block (continuations joined)."""
    out = []
    for doc in DOCS:
        fence, buf = False, ""
        for ln in doc.read_text().splitlines():
            if ln.startswith("```"):
                fence = not fence
                continue
            if not fence:
                continue
            s = "" if ln.lstrip().startswith("#") else ln.split(" #")[0].rstrip()
            if buf:
                s, buf = buf + " " + s.strip(), ""
            if s.endswith("\\"):
                buf = s[:-1]
                continue
            # a command line: `leap ...` (after env assignments or a venv's bin/), or `... -m leap_cli ...`
            m = (re.match(r"\s*(?:[A-Z_]+=\S* )*(?:\S*/)?leap ((?:-[-a-z]+ )*[a-z][-a-z]+\b.*)$", s)
                 or re.search(r" -m leap_cli ((?:-[-a-z]+ )*[a-z][-a-z]+\b.*)$", s))
            if m and "→" not in s:
                out.append((doc.name, m.group(1)))
    return out


def test_every_command_line_in_the_docs_parses():
    """Every `leap COMMAND ...` shown in README and docs names a command and only options it has (values aside:
    placeholders such as ROOT are left as they are)."""
    import contextlib
    import io

    root = _cli()
    cmds = _doc_commands()
    assert len(cmds) >= 60, len(cmds)
    bad = []
    for doc, line in cmds:
        args = shlex.split(line)
        while args and args[0].startswith("-"):  # leap's own options (--debug, -v)
            args.pop(0)
        if args[0] not in root.commands:
            bad.append((doc, line, "no such command"))
            continue
        sink = io.StringIO()
        try:
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                root.commands[args[0]].make_context(args[0], [*args[1:], "--help"])
        except SystemExit:
            pass
        except Exception as e:  # noqa: BLE001 - click's Exit (help shown) or a usage error
            if type(e).__name__ != "Exit":
                bad.append((doc, line, f"{type(e).__name__}: {e}"))
    assert bad == []


def _slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    out, fence = set(), False
    for ln in path.read_text().splitlines():
        if ln.startswith("```"):
            fence = not fence
        elif not fence and ln.startswith("#"):
            out.add(_slug(ln.lstrip("#")))
    return out


def test_every_relative_link_and_anchor_resolves():
    links = 0
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if target.startswith("http"):
                continue
            path, _, frag = target.partition("#")
            to = (doc.parent / path) if path else doc
            assert to.exists(), (doc.name, target)
            if frag and to.suffix == ".md":
                assert frag in _anchors(to), (doc.name, target)
            links += 1
    assert links >= 30, links


def test_every_section_a_link_names_in_quotes_is_in_its_page():
    """`[docs/extract.md](docs/extract.md), "Decode once"` and `benchmarks/RESULTS.md, "Prompt tokens and cost"`: the
    quoted name is a heading of that page or the bold start of one of its paragraphs (`**Decode once.**`)."""
    seen, missing = 0, []
    for doc in DOCS:
        text = " ".join(doc.read_text().split())
        for page, name in re.findall(r"\(?([\w./-]+\.md)\)?`?,? \(?(?:section )?\"([^\"]{3,60})\"", text):
            to = (doc.parent / page) if (doc.parent / page).exists() else ROOT / page
            if not to.exists():
                continue  # (a page named by its bare name elsewhere: the link test checks the links)
            target = to.read_text()
            seen += 1
            if not re.search(rf"^#+ .*{re.escape(name)}|\*\*{re.escape(name)}[.:*]", target, re.M):
                missing.append((doc.name, page, name))
    assert seen >= 5 and missing == [], missing


def test_every_command_has_a_page_that_documents_its_options():
    """README's Documentation table names the page of every command of `leap --help` (`leap X` in its row), and every
    option that command's --help lists is on that page or in options.md's table of shared options. Was wrong: no row
    named `leap ablate` (docs/train.md, "The ablation")."""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Documentation"):]
    table = table[:table.index("\n\n", table.index("|"))]
    page_of = {}
    for page, what in re.findall(r"^\| \[docs/([\w-]+\.md)\]\([^)]*\) \| (.*) \|$", table, re.M):
        for command in re.findall(r"`leap ([a-z-]+)`", what):
            page_of.setdefault(command, page)
    commands = _cli().commands
    assert sorted(set(commands) - set(page_of)) == []
    shared = set(re.findall(r"^\| `(--[a-z-]+)", (ROOT / "docs/options.md").read_text(), re.M))
    missing = []
    for name, cmd in commands.items():
        text = (ROOT / "docs" / page_of[name]).read_text()
        for p in cmd.params:
            opts = [o for o in [*p.opts, *p.secondary_opts] if o.startswith("--") and o != "--help"]
            if getattr(p, "hidden", False) or not opts or set(opts) & shared:
                continue
            if not any(re.search(re.escape(o) + r"(?![\w-])", text) for o in opts):
                missing.append((name, opts[0], page_of[name]))
    assert missing == [], missing


def test_the_repository_paths_the_docs_name_exist():
    """`leap_cli/...`, `benchmarks/...`, `tests/...` paths in backticks name files or folders of the checkout."""
    missing, seen = [], 0
    for doc in DOCS:
        for p in re.findall(r"`((?:leap_cli|benchmarks|tests|\.ci)/[\w./-]*[\w/])`", doc.read_text()):
            seen += 1
            if not (ROOT / p).exists():
                missing.append((doc.name, p))
    assert seen >= 20 and missing == []


def test_the_mit_licence_text_is_in_the_checkout():
    assert 'license = "MIT"' in (ROOT / "pyproject.toml").read_text()
    assert "MIT-licensed" in (ROOT / "README.md").read_text()
    assert any((ROOT / n).is_file() for n in ("LICENSE", "LICENSE.md", "LICENSE.txt", "COPYING"))


def test_action_program_vocabulary_is_the_schemas():
    """programs.md's predicates, steps 1-12 and the three nesting levels are the schema file's."""
    schema = json.loads((ROOT / "leap_cli/resources/schemas/action_program.schema.json").read_text())
    text = (ROOT / "docs/programs.md").read_text()
    para = text[text.index("Predicates (closed vocabulary"):]
    para = para[:para.index("\n\n")]
    doc_preds = set(re.findall(r"`(\w+)(?:\(|`)", para))
    schema_preds = {p for alt in schema["$defs"]["condition"]["anyOf"]
                    for p in alt["properties"]["predicate"]["enum"]}
    assert doc_preds == schema_preds
    steps = schema["properties"]["steps"]
    assert "list of steps (1-12)" in text and (steps["minItems"], steps["maxItems"]) == (1, 12)
    assert {"step_1", "step_2", "step_3"} <= set(schema["$defs"]) and "step_4" not in schema["$defs"]
    assert schema["$schema"].endswith("2020-12/schema") and "JSON Schema 2020-12" in text


def test_the_exemplar_library_figures():
    """programs.md: 60 hand-written programs over 54 EPIC verb classes, holding 98.9% of the validation segments
    (counted from tests/data/epic100/EPIC_100_validation_verb_counts.csv, 9668 segments)."""
    ex = [json.loads(p.read_text()) for p in (ROOT / "leap_cli/resources/prompts/exemplars").glob("*.json")]
    assert all(set(e) == {"id", "narration", "text", "program"} for e in ex)
    classes = {e["program"]["action"]["verb_class"] for e in ex}
    rows = list(csv.DictReader((ROOT / "tests/data/epic100/EPIC_100_validation_verb_counts.csv").open()))
    total = sum(int(r["segments"]) for r in rows)
    held = sum(int(r["segments"]) for r in rows if int(r["verb_class"]) in classes)
    text = (ROOT / "docs/programs.md").read_text()
    m = re.search(r"`prompts/exemplars/\*\.json`: (\d+) hand-written programs\s+over (\d+) EPIC verb classes, whose "
                  r"classes hold ([\d.]+)%", text)
    assert m, "the sentence moved"
    assert (len(ex), len(classes)) == (int(m[1]), int(m[2]))
    assert total == 9668 and round(100 * held / total, 1) == float(m[3])


def test_the_cost_estimate_follows_from_its_stated_inputs():
    """README: ~77,000 programs, ~4,100-token prompts of which ~1,500 cached, ~300 output tokens, at $0.15 /
    $0.075 / $0.60 per million: about $52 live with the cached prefix, $61 without, about $30 through the Batch API
    (half price); gpt-4o-class ($2.50 / $1.25 / $10) ~17x."""
    n, prompt, cached, out = 77_000, 4_100, 1_500, 300
    live = n * ((prompt - cached) * 0.15 + cached * 0.075 + out * 0.60) / 1e6
    uncached = n * (prompt * 0.15 + out * 0.60) / 1e6
    assert round(live) in (52, 53) and round(uncached) == 61 and round(uncached / 2) in (30, 31)
    assert round(2.50 / 0.15) == 17 and round(10 / 0.60) == 17
    text = (ROOT / "README.md").read_text()
    for s in ("about $52 live", "$61 without", "about $30 through the Batch API", "~17x"):
        assert s in text


# -- records written by the stages on a small kitchen

@pytest.fixture(scope="module")
def kitchen_run(tmp_path_factory):
    """A 3-video kitchen (train P01_01 with EPIC Fields poses, val P01_02 cut short, test P01_03), and extract ->
    generate-programs (offline) -> build-shards of its train split, each as its own `leap` process."""
    work = tmp_path_factory.mktemp("docs") / "work"
    kitchen_copy(tmp_path_factory, work / "kitchen", "--videos", 3, "--seed", 0, "--segments", 4)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", "NO_COLOR": "1"}
    for args in (["extract", "--split", "train"], ["generate-programs", "--split", "train"],
                 ["build-shards", "--split", "train", "--frames", "4", "--short-side", "64"]):
        r = subprocess.run([sys.executable, "-m", "leap_cli", *args, "--workdir", str(work)], capture_output=True,
                           text=True, env=env, timeout=300)
        assert r.returncode == 0, (args, r.stderr[-2000:])
    return work


def _field_names(cell: str) -> set[str]:
    return set(re.findall(r"`([a-z_]+)`", cell))


def test_descriptor_records_hold_the_fields_extract_md_lists(kitchen_run):
    rows = _table("extract.md", "## Record")
    recs = [json.loads(x) for x in (kitchen_run / "descriptors/train.jsonl").read_text().splitlines()]
    assert len(recs) == 4
    top = {f for r in rows if not r[0].startswith("`components") for f in _field_names(r[0])}
    assert top == {"narration_id", "video_id", "start", "stop", "start_frame", "stop_frame", "annotation_hash",
                   "video_size", "audio_size", "text", "versions"}  # (audio_size: session 66)
    assert all("video_size" in r for r in recs)  # (only where an MP4 was read: here every record's)
    types = {"string": str, "number": (int, float), "integer": int, "object": dict}
    for rec in recs:
        for r in rows:
            for f in _field_names(r[0]) & top & set(rec):
                assert isinstance(rec[f], types[r[1]]) and not isinstance(rec[f], bool), (f, rec[f])
        assert set(rec["components"]) == {"narration", "audio", "camera", "objects", "hands"}
        for name, c in rec["components"].items():
            assert {"status", "source", "data", "text"} <= set(c) and c["status"] in ("ok", "unavailable", "error")
            assert isinstance(c["source"], str) and isinstance(c["text"], str) and isinstance(c["data"], dict)
        comps = rec["components"]
        assert {"loudness_db", "onsets", "events", "dominant", "abstains_below", "timeline"} <= set(comps["audio"]["data"])
        assert comps["audio"]["source"] == "dsp-rules" and comps["narration"]["source"] == "annotations"
        assert comps["camera"]["source"] == "epic-fields:P01_01.json"  # the kitchen's odd-numbered videos have poses
        assert {"method", "steps", "phases", "total", "where"} <= set(comps["camera"]["data"])
        assert comps["hands"]["source"] == comps["objects"]["source"] == "hand-objects:P01_01.pkl"
        assert "objects" in comps["objects"]["data"]
        assert all("contacts" in h for h in comps["hands"]["data"]["hands"])
        assert rec["text"].startswith("Clip ") and "\nNarration: " in rec["text"]


def test_program_records_hold_the_fields_programs_md_lists(kitchen_run):
    rows = _table("programs.md", "## Program record")
    recs = [json.loads(x) for x in (kitchen_run / "programs/train.jsonl").read_text().splitlines()]
    assert len(recs) == 4
    doc_prov = {f for r in rows if r[0] == "`provenance`"
                for f in re.findall(r"`([a-z_]+)`", r[1]) if f not in ("offline", "openai")}
    doc_prov -= {"served_model", "cached_tokens", "prompt_tokens", "completion_tokens", "openai", "repair_failed",
                  "repair_pending"}
    for rec in recs:
        assert set(rec) == {f for r in rows for f in _field_names(r[0])}
        assert rec["status"] == "valid" and isinstance(rec["program"], dict) and rec["errors"] == []
        assert doc_prov == set(rec["provenance"]), sorted(set(rec["provenance"]) ^ doc_prov)
        assert rec["provenance"]["backend"] == "offline" and rec["provenance"]["rounds"] == 1
        assert {"prompt_tokens", "completion_tokens"} <= set(rec["provenance"]["usage"])
    # "the offline generator ... caches nothing and makes no cache.sqlite"
    assert not (kitchen_run / "programs/cache.sqlite").exists()
    assert (kitchen_run / "programs/train.jsonl.settings.json").exists()


def test_the_work_directory_layout_the_docs_give(kitchen_run):
    """options.md, extract.md, shards.md: settings and config beside the output, its lock, the frame cache, the
    shards folder's tar, manifest, progress file and its two lock files."""
    w = kitchen_run
    for p in ("descriptors/train.jsonl.settings.json", "descriptors/train.config.json", "descriptors/train.jsonl.lock",
              "programs/train.jsonl.lock", "shards/train/manifest.json", "shards/train/.progress.jsonl",
              "shards/train/.readers.lock", "shards/train/.writers.lock", "shards/train/leap-train-000000.tar"):
        assert (w / p).exists(), p
    assert (w / "frame-cache/P01_01").is_dir()
    assert oct((w / "shards/train/.readers.lock").stat().st_mode & 0o777) == oct(0o666)


def test_shards_manifest_and_sample_json_hold_what_shards_md_lists(kitchen_run):
    text = (ROOT / "docs/shards.md").read_text()
    m = json.loads((kitchen_run / "shards/train/manifest.json").read_text())
    para = text[text.index("**manifest.json**"):]
    para = para[:para.index("\n\n")]
    listed = {"format", "split", "task", "settings", "part", "counts", "histograms", "frame_sizes", "targets",
              "sources", "programs", "shards", "skipped"}
    assert all(f"`{k}`" in para for k in listed)
    assert set(m) == listed
    assert m["part"] == {"index": 0, "count": 1}  # "in an unsharded build"
    assert {"segments", "samples", "skipped", "shards"} <= set(m["counts"])
    assert set(m["targets"]) == {"max_steps", "step_verbs", "objects", "hands", "structure", "conditions"}
    assert {"records", "matched", "unknown_ids", "unknown_examples", "valid", "made_by", "prompt_version",
            "failed_validation"} <= set(m["programs"])
    assert m["programs"]["made_by"][0]["backend"] == "offline" and m["programs"]["prompt_version"] is None
    with tarfile.open(kitchen_run / "shards/train/leap-train-000000.tar") as t:
        members = t.getmembers()
        first = json.loads(t.extractfile(members[0]).read())
    assert members[0].name == "P01_01_0.json" and members[1].name == "P01_01_0.f000.jpg"
    assert all(x.mtime == 0 and x.uid == 0 and x.gid == 0 and not x.uname and not x.gname for x in members)
    sample = ("narration_id, video, participant, start, stop, fps, narration, verb, noun, verb_class, noun_class")
    assert sample in text
    assert set(first) == {*sample.split(", "), "task", "frame_indices", "has_program", "targets"}
    assert len(first["frame_indices"]) == 4 and first["has_program"] is True
    assert set(first["targets"]) == {"steps", "step_pre", "step_post", "pre", "post"}


def test_the_kitchens_truth_and_published_files_are_as_synthetic_kitchen_md_says(kitchen_run):
    k = kitchen_run / "kitchen"
    truth = [json.loads(x) for x in (k / "ground-truth/segments.jsonl").read_text().splitlines()]
    listed = {"narration_id", "video_id", "split", "start", "stop", "verb", "noun", "verb_class", "noun_class",
              "objects", "sound", "camera", "contacts", "background", "program"}
    assert all(set(t) - {"past_end_of_video"} == listed for t in truth)
    cut = [t for t in truth if "past_end_of_video" in t]
    assert cut and all(t["past_end_of_video"] is True and t["video_id"] == "P01_02" for t in cut)
    info = list(csv.DictReader((k / "annotations/EPIC_100_video_info.csv").open()))
    assert list(info[0]) == ["video_id", "duration", "fps", "resolution"]
    assert [round(float(r["fps"]), 2) for r in info] == [59.94, 50.0, 59.94]  # "59.94, 50, 59.94, ..."
    header = next(csv.reader((k / "annotations/EPIC_100_train.csv").open()))
    assert len(header) == 15 and len(next(csv.reader((k / "annotations/EPIC_100_test_timestamps.csv").open()))) == 8
    assert sorted(p.name for p in (k / "poses").iterdir()) == ["P01_01.json", "P01_03.json"]  # odd numbers only
    cam = json.loads((k / "poses/P01_01.json").read_text())["camera"]
    assert cam["model"] == "OPENCV" and len(cam["params"]) == 8
    assert cam["params"][0] == pytest.approx(cam["width"] / 2)  # fx of a 90 deg horizontal field of view
    verbs = list(csv.DictReader((k / "annotations/EPIC_100_verb_classes.csv").open()))
    assert len(verbs) == 14 and max(int(r["id"]) for r in verbs) == 25  # evaluate-submit.md: 14 rows, max id 25


@pytest.mark.parametrize("args", [
    ["validate-programs", "--split", "train"], ["build-shards", "--split", "train"],
    ["submit", "--sls-pt", "0", "--sls-tl", "4", "--sls-td", "3"],
    ["evaluate", "--split", "val", "--run", "tiny-synthetic"], ["evaluate", "--split", "val"],
], ids=["validate-programs", "build-shards", "submit", "evaluate-run", "evaluate-only-run"])
def test_a_missing_work_directory_is_named_by_the_stages_test_cli_does_not_pin(args, tmp_path, monkeypatch, capsys):
    """options.md, `--workdir`: "where it does not exist, the error of a stage that looked for its input there starts
    with `DIR: no such work directory`" (tests/test_cli.py pins info, extract, generate-programs, check-shards,
    show and train)."""
    work = tmp_path / "nowork"
    code, _, err = leap_main(monkeypatch, capsys, *args, "--workdir", str(work))
    lines = [x for x in err.splitlines() if x.strip() and not x.endswith("planning the samples ...")]
    assert code == 2 and lines, err
    assert lines[0].startswith(f"error: {work}: no such work directory"), lines[0]
