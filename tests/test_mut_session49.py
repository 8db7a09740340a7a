"""Mutation testing of session 49's code: submit's streamed zip check (``_JsonStream``, ``_check_streamed``,
``_SubmissionCheck``), io.read_utf8 / remove_dead_temps / output_mode / read_jsonl's (problem, fix),
train.checkpoint.copy_checkpoint and the best_step of a resume, the exemplar checks of programs.prompt.load_exemplars
and common.program_record_problem.

Each test here kills a mutant the older tests let live (named in its docstring); a behaviour that is wrong in
leap itself was a strict xfail, fixed since (its test now passes)."""

from __future__ import annotations

import errno
import json
import os

import pytest

from leap_cli import submit as sub
from leap_cli.errors import LeapError
from tests.test_attack_session49 import _cli, shards_wd  # noqa: F401 (shards_wd: a fixture)
from tests.test_attack_session49_late import IDS, NN, NV, _dead_pid, _doc, _entry, _streamed, _whole, _zip


# ---- submit: the streamed check ------------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk", [1 << 20, 1, 5])
def test_a_utf16_file_with_a_stray_last_byte_is_refused_as_the_whole_file_is(tmp_path, monkeypatch, chunk):
    """The decoder's last call is ``final``: an odd byte at the end of UTF-16 text is no character (mutant: the
    incremental decoder never told it is the end, the byte dropped silently and the file accepted)."""
    path = _zip(tmp_path / "s.zip", json.dumps(_doc(), indent=1).encode("utf-16") + b"\x00")
    assert _whole(path)[0] == "err" and "not valid JSON" in _whole(path)[1]
    monkeypatch.setattr(sub._JsonStream, "CHUNK", chunk)
    kind, said = _streamed(path)
    assert kind == "err" and "not valid JSON" in said, said


def test_a_utf16_non_object_with_a_stray_last_byte_is_invalid_json(tmp_path):
    """``rest()`` (the no-object path) decodes the end as final too (mutant: 'must hold a JSON object')."""
    path = _zip(tmp_path / "s.zip", json.dumps([1, 2]).encode("utf-16") + b"\x00")
    kind, said = _streamed(path)
    assert kind == "err" and "not valid JSON" in said and _whole(path)[0] == "err", said


def test_the_streamed_check_holds_a_chunk_not_the_file(tmp_path, monkeypatch):
    """The point of streaming: the buffer stays near a chunk however long the file (mutant: each value read on
    to the end of the stream, the whole file in memory, with the same verdict)."""
    ids = [f"P01_{i}" for i in range(300)]
    raw = json.dumps(_doc(results={nid: _entry(i) for i, nid in enumerate(ids)}))
    path = _zip(tmp_path / "s.zip", raw)
    monkeypatch.setattr(sub._JsonStream, "CHUNK", 64)
    longest = [0]
    more = sub._JsonStream.more

    def watched(self):
        out = more(self)
        longest[0] = max(longest[0], len(self.buf))
        return out

    monkeypatch.setattr(sub._JsonStream, "more", watched)
    assert sub._check_streamed(path, ids, NV, NN)["segments"] == len(ids)
    entry = max(len(json.dumps(_entry(i))) for i in range(len(ids)))
    assert longest[0] <= 4 * 64 + 2 * entry < len(raw) // 10, (longest[0], len(raw))


def test_an_entry_that_is_not_an_object_first_says_no_actions_for_the_rest(tmp_path):
    """The first entry fixes whether actions are expected, even when it is no object (mutant: the second entry
    decides, and an anticipation file whose first entry is broken and the others hold actions loses the
    'not on every segment' half of the refusal)."""
    acts = {f"{v},{n}": 0.5 for v in range(NV) for n in range(NN)}
    path = _zip(tmp_path / "s.zip", json.dumps(_doc(challenge="action_anticipation", results={
        IDS[0]: 7, **{nid: {**_entry(), "action": acts} for nid in IDS[1:]}})))
    kind, said = _streamed(path)
    assert kind == "err" and "action scores on some segments but not all" in said, said


def test_a_verb_action_id_past_the_last_class_is_refused():
    """Action keys are ``verb,noun`` class ids below the class counts (mutants: <= on the verb; verbs and nouns
    swapped)."""
    from leap_cli.evaluate.metrics import TOP_N_ACTIONS

    nv, nn = 10, 12
    pairs = [(v, n) for v in range(nv) for n in range(nn)][:TOP_N_ACTIONS - 1]
    ids = ["a"]
    base = {"version": "0.2", "challenge": "action_anticipation", "sls_pt": 0, "sls_tl": 0, "sls_td": 0}
    entry = {"verb": {str(c): 0.0 for c in range(nv)}, "noun": {str(c): 0.0 for c in range(nn)}}
    good = {**entry, "action": {**{f"{v},{n}": 0.1 for v, n in pairs}, f"{nv - 1},{nn - 1}": 0.1}}
    assert sub.check_submission({**base, "results": {"a": good}}, ids, nv, nn)["actions"] is True
    for key in (f"{nv},0", f"0,{nn}", f"{nv + 1},{nn - 1}", f"{nn - 1},0"):
        bad = {**entry, "action": {**{f"{v},{n}": 0.1 for v, n in pairs}, key: 0.1}}
        if key in bad["action"] and len(bad["action"]) < TOP_N_ACTIONS:
            continue
        with pytest.raises(LeapError, match="not valid \"verb,noun\" ids"):
            sub.check_submission({**base, "results": {"a": bad}}, ids, nv, nn)


def test_each_bad_action_key_counts_its_segment_once():
    """One segment with two bad action keys: '1 segment' (mutant: no break, each bad key listed)."""
    from leap_cli.evaluate.metrics import TOP_N_ACTIONS

    nv, nn = 10, 12
    pairs = [(v, n) for v in range(nv) for n in range(nn)][:TOP_N_ACTIONS - 2]
    entry = {"verb": {str(c): 0.0 for c in range(nv)}, "noun": {str(c): 0.0 for c in range(nn)},
             "action": {**{f"{v},{n}": 0.1 for v, n in pairs}, "x": 0.1, "99,99": 0.1}}
    sub_ = {"version": "0.2", "challenge": "action_anticipation", "sls_pt": 0, "sls_tl": 0, "sls_td": 0,
            "results": {"a": entry}}
    with pytest.raises(LeapError, match=r"1 segment with action keys"):
        sub.check_submission(sub_, ["a"], nv, nn)


def test_more_than_the_top_actions_are_refused():
    """Exactly TOP_N_ACTIONS action scores per segment: 101 are refused as 99 are (mutant: only too few)."""
    from leap_cli.evaluate.metrics import TOP_N_ACTIONS

    nv, nn = 10, 12
    pairs = [(v, n) for v in range(nv) for n in range(nn)]
    entry = {"verb": {str(c): 0.0 for c in range(nv)}, "noun": {str(c): 0.0 for c in range(nn)}}
    base = {"version": "0.2", "challenge": "action_anticipation", "sls_pt": 0, "sls_tl": 0, "sls_td": 0}
    for n in (TOP_N_ACTIONS - 1, TOP_N_ACTIONS + 1):
        e = {**entry, "action": {f"{v},{w}": 0.1 for v, w in pairs[:n]}}
        with pytest.raises(LeapError, match=rf"without exactly {TOP_N_ACTIONS} scores: a \({n}\)"):
            sub.check_submission({**base, "results": {"a": e}}, ["a"], nv, nn)


@pytest.mark.parametrize("value", [True, 10 ** 400, "1.0", None], ids=["bool", "huge-int", "string", "null"])
def test_a_score_that_is_no_finite_number_is_refused(value, tmp_path):
    """A verb score true, an integer past float's range, a string, null (mutants: bool let through the fast
    check; the OverflowError taken as fine)."""
    entry = _entry()
    entry["verb"]["1"] = value
    doc = json.dumps(_doc(results={nid: entry if i == 1 else _entry(i) for i, nid in enumerate(IDS)}))
    kind, said = _streamed(_zip(tmp_path / "s.zip", doc))
    says = "1 segment with verb scores that are NaN, infinite or not numbers: P01_101_1"
    assert kind == "err" and says in said, said


def test_an_action_score_that_is_a_bool_is_refused():
    from leap_cli.evaluate.metrics import TOP_N_ACTIONS

    nv, nn = 10, 12
    pairs = [(v, n) for v in range(nv) for n in range(nn)][:TOP_N_ACTIONS]
    entry = {"verb": {str(c): 0.0 for c in range(nv)}, "noun": {str(c): 0.0 for c in range(nn)},
             "action": {f"{v},{n}": 0.1 for v, n in pairs}}
    entry["action"]["0,0"] = True
    base = {"version": "0.2", "challenge": "action_anticipation", "sls_pt": 0, "sls_tl": 0, "sls_td": 0}
    with pytest.raises(LeapError, match="action scores that are NaN, infinite or not numbers"):
        sub.check_submission({**base, "results": {"a": entry}}, ["a"], nv, nn)


def test_a_syntax_error_in_a_non_object_file_names_its_place_in_the_file(tmp_path):
    """The no-object path parsed what followed the white space peek() had skipped: a syntax error in a test.json
    holding no object was named at the wrong line, column and character where the file starts with blanks."""
    path = _zip(tmp_path / "s.zip", "\n\n  [1,")
    whole = _whole(path)
    assert whole[0] == "err" and "line 3 column 6 (char 7)" in whole[1]
    kind, said = _streamed(path)
    assert kind == "err" and ("line 3 column 6" in said or "character 7 of test.json" in said), said


# ---- io.remove_dead_temps --------------------------------------------------------------------------------------------

def _host() -> str:
    from leap_cli.io import _temp_tag

    return _temp_tag().rsplit("-", 1)[0]


def test_remove_dead_temps_keeps_what_is_not_a_temp_of_this_host(tmp_path):
    """Kept: another host whose name ends with this one's (mutant: the tag without its leading dot), a name
    without the leading dot (mutant: any ``*.tmp``), a name not ending in .tmp (mutant: any dot-file)."""
    from leap_cli.io import remove_dead_temps

    host, dead = _host(), _dead_pid()
    keep = [tmp_path / f".f.x{host}-{dead}.abcd1234.tmp",
            tmp_path / f"f.{host}-{dead}.abcd1234.tmp",
            tmp_path / f".f.{host}-{dead}.part"]
    gone = tmp_path / f".g.{host}-{dead}.abcd1234.tmp"
    for p in (*keep, gone):
        p.write_bytes(b"x")
    remove_dead_temps(tmp_path)
    assert [p.exists() for p in keep] == [True] * len(keep) and not gone.exists()


def test_remove_dead_temps_reads_the_pid_after_the_last_host_tag(tmp_path):
    """NAME may hold the host's tag (docstring): the pid is the one after its last (mutant: after the first)."""
    from leap_cli.io import remove_dead_temps

    host = _host()
    victim = tmp_path / f".a.{host}-1.b.{host}-{_dead_pid()}.abcd1234.tmp"
    victim.write_bytes(b"x")
    remove_dead_temps(tmp_path)
    assert not victim.exists()


def test_pid_alive_takes_a_zombie_for_dead():
    """A killed child not yet reaped is a zombie: a signal 0 reaches it, yet it writes nothing any more (session 60:
    its temp files were kept for good where nothing reaps it); this process lives, a reaped child's pid does not."""
    import subprocess
    import time

    from leap_cli.io import pid_alive

    child = subprocess.Popen(["sleep", "30"])
    try:
        assert pid_alive(child.pid)
        child.kill()
        deadline = time.monotonic() + 10
        while not open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert not pid_alive(child.pid)  # (a zombie until the wait below)
    finally:
        child.kill()
        child.wait()
    assert not pid_alive(child.pid) and pid_alive(os.getpid())


def test_remove_dead_temps_of_a_file_is_no_error(tmp_path):
    """A path that is no folder: nothing to sweep (mutant: only FileNotFoundError passed, NotADirectoryError raised)."""
    from leap_cli.io import remove_dead_temps

    f = tmp_path / "a_file"
    f.write_bytes(b"x")
    remove_dead_temps(f)


def test_remove_dead_temps_reads_a_folder_once_per_process(tmp_path, monkeypatch):
    """Once per folder and process (a frame cache's folder gets thousands of writes; mutants: no early return, or
    the folder not remembered)."""
    from leap_cli import io

    calls = []
    scandir = os.scandir
    monkeypatch.setattr(io.os, "scandir", lambda p: calls.append(p) or scandir(p))
    for _ in range(3):
        io.remove_dead_temps(tmp_path / "v")
    io.remove_dead_temps(tmp_path / "w")
    assert len(calls) == 2, calls


# ---- io.output_mode ------------------------------------------------------------------------------------------------

def test_output_mode_of_a_new_file_follows_the_umask(tmp_path):
    """0666 less the umask, as open() gives (mutants: a fixed 0644, or 0666 without the umask)."""
    from leap_cli.io import atomic_write_text, output_mode

    old = os.umask(0o077)
    try:
        assert output_mode(tmp_path / "new") == 0o600
        atomic_write_text(tmp_path / "new", "x")
        assert os.stat(tmp_path / "new").st_mode & 0o777 == 0o600
        os.umask(0o002)
        assert output_mode(tmp_path / "other") == 0o664
    finally:
        os.umask(old)


# ---- io.read_jsonl -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("line", ["5", "[1, 2]", "\"x\"", "null"])
def test_read_jsonl_says_not_an_object_before_the_check_sees_it(tmp_path, line):
    """``check`` gets objects only: a line of another JSON value is 'not a JSON object' naming its line (mutant: the
    check called with it, a TypeError/AttributeError from a check written for dicts)."""
    from leap_cli.io import read_jsonl

    f = tmp_path / "r.jsonl"
    f.write_text('{"x": 1}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(LeapError) as e:
        read_jsonl(f, check=lambda r: None if r.get("x") else "no x")
    assert e.value.record == "line 2" and "not a JSON object" in e.value.message, e.value


# ---- train.checkpoint.copy_checkpoint -------------------------------------------------------------------------------

@pytest.mark.parametrize("err", [errno.EXDEV, errno.EPERM, errno.EMLINK])
def test_copy_checkpoint_copies_where_no_link_can_be_made(tmp_path, monkeypatch, err):
    """A file system without hard links (or another device): the bytes are copied, no OSError reaches the user
    (mutant: the link's OSError raised)."""
    pytest.importorskip("torch")
    from leap_cli.io import output_mode
    from leap_cli.train import checkpoint as ck

    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    last.write_bytes(b"step 8")
    os.chmod(last, output_mode(best))

    def no_link(src, dst):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(ck.os, "link", no_link)
    ck.copy_checkpoint(last, best)
    assert best.read_bytes() == b"step 8" and os.stat(best).st_ino != os.stat(last).st_ino
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# ---- exemplars ----------------------------------------------------------------------------------------------------

def _good_exemplar() -> dict:
    from leap_cli.resources import resource_dir

    return json.loads(sorted((resource_dir("prompts") / "exemplars").glob("*.json"))[0].read_text(encoding="utf-8"))


def test_an_exemplar_without_text_uses_its_narration(tmp_path):
    """``text`` is optional (the prompt falls back to the narration; mutants: a missing text refused as 'not a
    string', or read as d["text"])."""
    from leap_cli.programs.prompt import load_exemplars

    d = {k: v for k, v in _good_exemplar().items() if k != "text"}
    (tmp_path / "a.json").write_text(json.dumps(d), encoding="utf-8")
    (e,) = load_exemplars(tmp_path)
    assert e.text == d["narration"] and e.id == d["id"]


def test_an_exemplar_without_a_program_is_one_line(tmp_path):
    from leap_cli.programs.prompt import load_exemplars

    d = {k: v for k, v in _good_exemplar().items() if k != "program"}
    (tmp_path / "a.json").write_text(json.dumps(d), encoding="utf-8")
    with pytest.raises(LeapError, match="not an exemplar"):
        load_exemplars(tmp_path)


def test_an_exemplar_program_fault_names_its_place_and_counts_the_rest(tmp_path):
    """The first finding with its pointer ('/' for the program itself) and '(+N more)' (mutants: an empty place
    before the colon, no count)."""
    from leap_cli.programs.prompt import load_exemplars
    from leap_cli.programs.schema import validate_program

    d = _good_exemplar()
    (tmp_path / "a.json").write_text(json.dumps({**d, "program": "stir"}), encoding="utf-8")
    with pytest.raises(LeapError, match=r"does not fit the schema: /: "):
        load_exemplars(tmp_path)
    broken = {**d["program"], "steps": 5, "pre": 7}
    n = len(validate_program(broken))
    assert n >= 2
    (tmp_path / "a.json").write_text(json.dumps({**d, "program": broken}), encoding="utf-8")
    with pytest.raises(LeapError, match=rf"\(\+{n - 1} more\)"):
        load_exemplars(tmp_path)


@pytest.mark.parametrize("raw", [b"[1, 2]", b"\"an exemplar\"", b"null"])
def test_an_exemplar_that_is_no_object_is_one_line(tmp_path, raw):
    """(mutant: the object check dropped, an AttributeError traceback)"""
    from leap_cli.programs.prompt import load_exemplars

    (tmp_path / "a.json").write_bytes(raw)
    with pytest.raises(LeapError, match="not an exemplar .a JSON (list|str|NoneType), not an object"):
        load_exemplars(tmp_path)


def test_exemplars_are_read_as_utf8_with_or_without_bom(tmp_path):
    """Read with read_utf8: a BOM is dropped, a Latin-1 byte is one line naming its line (mutant: read_text, the
    BOM 'not an exemplar', the Latin-1 byte a UnicodeDecodeError or mojibake)."""
    from leap_cli.programs.prompt import load_exemplars

    d = _good_exemplar()
    (tmp_path / "a.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(d).encode())
    (e,) = load_exemplars(tmp_path)
    assert e.id == d["id"]
    (tmp_path / "a.json").write_bytes(json.dumps({**d, "narration": "caf\u00e9"}, indent=1,
                                                 ensure_ascii=False).encode("latin-1"))
    with pytest.raises(LeapError, match="not UTF-8 text") as err:
        load_exemplars(tmp_path)
    assert err.value.record and err.value.record.startswith("line ")


def test_exemplars_come_sorted_whatever_the_folder_order(tmp_path):
    from leap_cli.programs.prompt import load_exemplars

    d = _good_exemplar()
    names = ["m", "c", "x", "a", "q", "b", "z", "k"]
    for n in names:
        (tmp_path / f"{n}.json").write_text(json.dumps({**d, "id": n}), encoding="utf-8")
    assert [e.id for e in load_exemplars(tmp_path)] == sorted(names)


def test_an_empty_exemplar_folder_is_refused(tmp_path):
    from leap_cli.programs.prompt import load_exemplars

    with pytest.raises(LeapError, match="no exemplar programs found"):
        load_exemplars(tmp_path)


# ---- common.program_record_problem ---------------------------------------------------------------------------------

@pytest.mark.parametrize("change, says", [
    ({"narration_id": None}, "no narration_id string"),
    ({"narration_id": 7}, "no narration_id string"),
    ({"status": "done"}, "status is"),
    ({"provenance": ["offline"]}, "provenance is a list"),
    ({"errors": 5}, "errors is a int"),
    ({"errors": ["bad"]}, "errors[0] is a str"),
    ({"errors": [{"pointer": "/steps"}]}, "errors[0] has no message string"),
    ({"errors": [{"message": "m"}]}, "errors[0] has no pointer string"),
    ({"provenance": {"backend": 3}}, "provenance.backend is a int"),
])
def test_program_record_problem_names_each_wrong_field(change, says):
    from leap_cli.common import program_record_problem

    rec = {"narration_id": "P01_01_0", "status": "valid", "program": {}, "provenance": {"backend": "offline"},
           "errors": []}
    assert program_record_problem(rec) is None
    assert says in (program_record_problem({**rec, **change}) or ""), program_record_problem({**rec, **change})


def test_program_record_problem_takes_null_provenance_as_none():
    """provenance null, as errors null: no provenance (mutant: get(key, {}) refused it as 'a NoneType')."""
    from leap_cli.common import program_record_problem

    assert program_record_problem({"narration_id": "a", "status": "failed", "provenance": None,
                                   "errors": None}) is None


# ---- train: best_step at a resume ----------------------------------------------------------------------------------

def test_a_resume_after_a_stop_before_the_best_pt_copy_replaces_an_older_best_pt(shards_wd):
    """A stop between last.pt (best_step == its step) and its best.pt copy, at a later best than best.pt holds:
    --resume makes best.pt the copy of last.pt (mutant: only where best.pt is missing, and the older best.pt stays
    while last.pt says the best is its own step)."""
    import torch

    args = ("--config", "tiny-synthetic-short", "--name", "r49", "--set", "data.batch_size=4",
            "--set", "train.epochs=3", "--set", "train.eval_every_epochs=1")
    ck = shards_wd / "runs" / "r49" / "checkpoints"
    env = {"OMP_NUM_THREADS": "1"}
    r = _cli("train", "--workdir", shards_wd, *args, "--stop-after", 2, env_extra=env, cwd=shards_wd)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    last = torch.load(ck / "last.pt", map_location="cpu", weights_only=True)
    old_best = torch.load(ck / "best.pt", map_location="cpu", weights_only=True)
    assert old_best["step"] < last["step"], (old_best["step"], last["step"])
    # (unbeatable: no later validation makes best.pt again)
    torch.save({**last, "best_step": last["step"], "best_metric": 2.0}, ck / "last.pt")
    r = _cli("train", "--workdir", shards_wd, *args, "--resume", env_extra=env, cwd=shards_wd)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    best = torch.load(ck / "best.pt", map_location="cpu", weights_only=True)
    final = torch.load(ck / "last.pt", map_location="cpu", weights_only=True)
    assert final["best_step"] == best["step"] == last["step"] and final["step"] > last["step"]
