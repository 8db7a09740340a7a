"""Newcomer's read of the docs session 53 changed (README, programs, options, troubleshooting, evaluate-submit):
the claims checked against `leap generate-programs` with the scripted OpenAI server and `leap submit --check`.
Attacks: a 200 whose error refuses response_format by its `param` (as a 400 saying so does), and the one-line
refusals of zips `--check` cannot read, run through the CLI."""

from __future__ import annotations

import json
import zipfile

import pytest

from leap_cli.io import read_jsonl
from leap_cli.programs.generate import generate_programs
from tests.program_helpers import excerpt_annotations, excerpt_programs, server_config
from tests.programs_llm_server import Reply, ScriptedServer, narration_id_of
from tests.test_attack_session50 import leap
from tests.test_eval_submit import ann_dir  # noqa: F401 (the fixture)

ROWS = 3


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    excerpt_annotations(tmp_path, rows=ROWS)
    monkeypatch.setenv("LEAP_TEST_KEY", "sk-test-newcomer")
    return tmp_path


@pytest.fixture(scope="module")
def good():
    return excerpt_programs(ROWS)


def good_reply(good, body) -> Reply:
    return Reply(json.dumps(good[narration_id_of(body)]))


# an OpenAI-shaped refusal that names the parameter only in error.param (the message has no format words)
PARAM_ONLY = {"error": {"message": "Invalid value for this model.", "type": "invalid_request_error",
                        "param": "response_format", "code": None}}


def test_a_400_naming_response_format_only_in_param_steps_down(workdir, good):
    """The baseline the docs compare with: such a 400 steps down to JSON mode, every record valid."""
    def script(body, n):
        if (body.get("response_format") or {}).get("type") == "json_schema":
            return Reply(status=400, raw=json.dumps(PARAM_ONLY))
        return good_reply(good, body)

    with ScriptedServer(script) as server:
        s = generate_programs(server_config(workdir, server, concurrency=1))
    assert s.statuses == {"valid": ROWS}


def test_a_200_naming_response_format_only_in_param_steps_down_as_the_400_does(workdir, good):
    """Was wrong: a 200 whose error names response_format only in error.param is not read as a format refusal
    (backends.py passes param=None to _refuses_format): the stage stops pointing at --model.
    docs/programs.md says a 200 error refusing the `response_format` steps down as a 400 does; a proxy that
    forwards OpenAI's error body with status 200 says so in error.param."""
    def script(body, n):
        if (body.get("response_format") or {}).get("type") == "json_schema":
            return Reply(raw=json.dumps(PARAM_ONLY))
        return good_reply(good, body)

    with ScriptedServer(script) as server:
        s = generate_programs(server_config(workdir, server, concurrency=1))
    assert s.statuses == {"valid": ROWS}
    assert all(r["status"] == "valid" for r in read_jsonl(workdir / "programs" / "val.jsonl"))


def _zip_with_method(path, flag_bits=0, method=zipfile.ZIP_STORED):
    """A zip of test.json whose headers claim ``method`` and ``flag_bits`` (7-Zip's Deflate64 is 9; bit 0: a
    password)."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(zipfile.ZipInfo("test.json"), "{}")
    b = bytearray(path.read_bytes())
    i, j = b.find(b"PK\x03\x04"), b.find(b"PK\x01\x02")
    b[i + 6] |= flag_bits
    b[j + 8] |= flag_bits
    b[i + 8:i + 10] = method.to_bytes(2, "little")
    b[j + 10:j + 12] = method.to_bytes(2, "little")
    path.write_bytes(bytes(b))
    return path


@pytest.mark.parametrize("flag_bits,method,said", [(0, 9, "is compressed with method 9"),
                                                   (1, zipfile.ZIP_DEFLATED, "is encrypted (a zip with a password)")])
def test_submit_check_of_an_unreadable_zip_is_one_line_through_the_cli(tmp_path, ann_dir, flag_bits,  # noqa: F811
                                                                       method, said):
    """The evaluate-submit.md table's rows, as the CLI prints them: one line, the file named, what to do."""
    path = _zip_with_method(tmp_path / "sub.zip", flag_bits, method)
    res = leap(tmp_path, "submit", "--check", path, "--annotations", ann_dir, columns=400)
    code, err = res.returncode, res.stderr
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "sub.zip" in lines[0] and said in lines[0] and "leap submit" in lines[0], err
    assert "Traceback" not in err
