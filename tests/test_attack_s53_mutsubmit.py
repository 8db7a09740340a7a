"""Mutation run of leap_cli/submit.py (`leap submit`, `leap submit --check`) and leap_cli/programs/estimate.py
(`leap generate-programs --dry-run`): tests that kill the mutants the existing tests let live (refusal messages,
float64 verb scores, SLS checks before a zip is written, action-score checks, the estimate's cost lines), and
strict xfails for zips whose test.json `--check` cannot read (another compression method, encryption)."""

from __future__ import annotations

import json
import re
import zipfile

import pytest
import torch

from leap_cli import submit as sub
from leap_cli.epic.annotations import Annotations
from leap_cli.errors import LeapError
from leap_cli.programs.estimate import CostEstimate, exemplar_reply_tokens, text_tokens
from tests.test_eval_submit import NN, NV, TEST_IDS, _test_scores, ann_dir  # noqa: F401 (the fixture)


def _zip(path, text, compression=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compression) as z:
        z.writestr("test.json", text)
    return path


def _good(**kw):
    return sub.make_submission(_test_scores(), "recognition", **{**dict(sls_pt=2, sls_tl=3, sls_td=4), **kw})


# ---- submit: refusals and what is written --------------------------------------------------------------------------

def test_check_without_a_test_timestamps_csv_names_the_file_and_the_fix(tmp_path, ann_dir):  # noqa: F811
    path = _zip(tmp_path / "s.zip", json.dumps(_good()))
    (ann_dir / "EPIC_100_test_timestamps.csv").unlink()
    with pytest.raises(LeapError, match="no test timestamps CSV") as e:
        sub.check_file(path, Annotations(ann_dir))
    assert "EPIC_100_test_timestamps.csv" in e.value.one_line() and "--annotations" in e.value.one_line()


@pytest.mark.parametrize("level", [6, -1, True, 2.0])
def test_submit_refuses_a_supervision_level_before_a_zip_is_written(tmp_path, ann_dir, level):  # noqa: F811
    """The library's submit (not only the CLI) checks the levels first: no invalid zip is left on disk."""
    with pytest.raises(LeapError, match=re.escape(f"--sls-tl is {level!r}; supervision levels are integers")):
        sub.submit(_test_scores(), Annotations(ann_dir), "recognition", tmp_path / "s.zip", sls_pt=1, sls_tl=level,
                   sls_td=3)
    assert not (tmp_path / "s.zip").exists()


def test_verb_scores_are_written_to_the_last_float64_digit():
    """(the existing test covers the nouns only: float32 verbs rounded distinct scores into ties)"""
    scores = _test_scores()
    scores["verb_output"] = scores["verb_output"].double() + 0.1
    doc = sub.make_submission(scores, "recognition", sls_pt=1, sls_tl=1, sls_td=1)
    assert [doc["results"][TEST_IDS[1]]["verb"][str(c)] for c in range(NV)] == scores["verb_output"][1].tolist()


@pytest.mark.parametrize("results", [{}, {"a": {"verb": {"0": 1.5}}}])
def test_a_submission_of_results_alone_is_written_as_json_dumps(tmp_path, results):
    sub.write_submission(tmp_path / "s.zip", {"results": results})
    with zipfile.ZipFile(tmp_path / "s.zip") as z:
        assert z.read("test.json") == json.dumps({"results": results}).encode()


def test_check_of_a_missing_zip_says_so_in_leaps_words(tmp_path, ann_dir):  # noqa: F811
    with pytest.raises(LeapError, match="submission file not found") as e:
        sub.check_file(tmp_path / "nope.zip", Annotations(ann_dir))
    assert "nope.zip" in e.value.one_line() and "leap submit" in e.value.one_line()


@pytest.mark.parametrize("value", [True, "1.0", None, float("nan")])
def test_action_scores_that_are_not_finite_numbers_are_refused(tmp_path, value):
    ids = ["a", "b"]
    doc = sub.make_submission(_test_scores(97, 300, ids), "anticipation", sls_pt=1, sls_tl=1, sls_td=1,
                              with_actions=True)
    acts = doc["results"]["b"]["action"]
    acts[next(iter(acts))] = value
    with pytest.raises(LeapError, match=r"1 segment with action scores that are NaN, infinite or not numbers: b"):
        sub.check_submission(doc, ids, 97, 300)
    # and through the zip, as --check reads it (json.dumps writes NaN as the server would read it)
    path = _zip(tmp_path / "s.zip", json.dumps(doc))
    with pytest.raises(LeapError, match="action scores that are NaN, infinite or not numbers: b"):
        sub._check_streamed(path, ids, 97, 300)


def test_a_first_entry_that_is_no_object_is_the_only_fault_said():
    """The first entry (not an object) does not make the others 'action scores on some segments but not all'."""
    doc = json.loads(json.dumps(_good()))
    doc["results"][TEST_IDS[0]] = 5
    with pytest.raises(LeapError) as e:
        sub.check_submission(doc, TEST_IDS, NV, NN)
    said = e.value.one_line()
    assert "1 segment with entries that are not objects: P03_01_0" in said and "also" not in said, said


@pytest.mark.parametrize("results", [[1, 2], "x", None])
def test_results_that_are_no_object_are_said_so(tmp_path, results):
    doc = dict(_good(), results=results)
    with pytest.raises(LeapError, match="results must map narration ids to scores"):
        sub.check_submission(doc, TEST_IDS, NV, NN)
    with pytest.raises(LeapError, match="results must map narration ids to scores"):
        sub._check_streamed(_zip(tmp_path / "s.zip", json.dumps(doc)), TEST_IDS, NV, NN)


@pytest.mark.parametrize("key", sub.SLS_KEYS)
def test_a_missing_supervision_level_is_a_missing_property(tmp_path, key):
    doc = {k: v for k, v in _good().items() if k != key}
    with pytest.raises(LeapError, match=f"missing property '{key}'"):
        sub._check_streamed(_zip(tmp_path / "s.zip", json.dumps(doc)), TEST_IDS, NV, NN)


@pytest.mark.parametrize("tau_a, ok", [(1.5, False), (0.5, False), (1.0 + 1e-9, True)])
def test_anticipation_scores_of_another_tau_a_are_refused(tmp_path, ann_dir, tau_a, ok):  # noqa: F811
    scores = dict(_test_scores(), meta={"task": "anticipation", "tau_a": tau_a})
    if ok:
        assert sub.check_submittable(scores, Annotations(ann_dir), "anticipation")[1:] == (NV, NN)
    else:
        with pytest.raises(LeapError, match=f"end {tau_a:g} s before each action"):
            sub.check_submittable(scores, Annotations(ann_dir), "anticipation")


@pytest.mark.parametrize("tau_a", ["one second", [1.0], {"s": 1}])
def test_anticipation_scores_whose_tau_a_is_no_number_are_one_line(ann_dir, tau_a):  # noqa: F811
    """Was wrong (s58 mutation run): a scores file whose meta.tau_a is not a number stopped `leap submit` with a
    bare ValueError or TypeError from float()."""
    scores = dict(_test_scores(), meta={"task": "anticipation", "tau_a": tau_a})
    with pytest.raises(LeapError, match=r"meta.tau_a is .*, not a number of seconds") as e:
        sub.check_submittable(scores, Annotations(ann_dir), "anticipation", "s.pt")
    assert e.value.path is not None and "leap evaluate" in e.value.fix


# ---- submit: zips whose test.json cannot be read (bugs) ------------------------------------------------------------

def _patched(path, method: int | None = None, encrypted: bool = False):
    """A stored test.json zip whose headers say another compression method, or encryption."""
    raw = bytearray(_zip(path, json.dumps(_good()), zipfile.ZIP_STORED).read_bytes())
    local, central = raw.find(b"PK\x03\x04"), raw.find(b"PK\x01\x02")
    if method is not None:
        raw[local + 8:local + 10] = method.to_bytes(2, "little")
        raw[central + 10:central + 12] = method.to_bytes(2, "little")
    if encrypted:
        raw[local + 6] |= 1
        raw[central + 8] |= 1
    path.write_bytes(bytes(raw))
    return path


def test_check_of_a_deflate64_zip_is_one_line(tmp_path, ann_dir):  # noqa: F811
    """Was wrong: --check of a zip whose test.json is Deflate64 (7-Zip, Windows) or another method zipfile lacks:
    NotImplementedError traceback, not one line."""
    path = _patched(tmp_path / "s.zip", method=9)
    with pytest.raises(LeapError, match="s.zip"):
        sub.check_file(path, Annotations(ann_dir))


def test_check_of_an_encrypted_zip_is_one_line(tmp_path, ann_dir):  # noqa: F811
    """Was wrong: --check of a password-protected zip (zip -e): RuntimeError traceback, not one line."""
    path = _patched(tmp_path / "s.zip", encrypted=True)
    with pytest.raises(LeapError, match="s.zip"):
        sub.check_file(path, Annotations(ann_dir))


def test_a_refused_action_submission_leaves_the_earlier_zip_as_it_was(tmp_path, ann_dir):  # noqa: F811
    """Was wrong: submit --with-actions where verbs x nouns < 100 is refused only after the zip is written: a valid
    submission.zip at --out is replaced by the invalid one."""
    ann, out = Annotations(ann_dir), tmp_path / "a.zip"
    sub.submit(_test_scores(), ann, "anticipation", out, sls_pt=0, sls_tl=0, sls_td=0)
    before = out.read_bytes()
    with pytest.raises(LeapError, match="exactly 100") as e:  # 6 x 8 = 48 verb-noun pairs
        sub.submit(_test_scores(), ann, "anticipation", out, sls_pt=0, sls_tl=0, sls_td=0, with_actions=True)
    assert out.read_bytes() == before
    assert str(out) in e.value.one_line() and ".tmp" not in e.value.one_line()  # the output named, not its temp file
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "kitchen") == ["a.zip"]  # no temp file left


# ---- estimate ------------------------------------------------------------------------------------------------------

def _estimate(**kw):
    def price(usage):  # USD per token: 1 prompt, 0.25 cached, 2 reply
        cached = usage["cached_tokens"]
        return (usage["prompt_tokens"] - cached) * 1.0 + cached * 0.25 + usage["completion_tokens"] * 2.0

    return CostEstimate(**{**dict(split="val", pending=10, answered=4, prompt_tokens=2000.0, prefix_tokens=1024,
                                  reply_tokens=100.0, reply_from="the exemplar programs' mean", max_tokens=1000,
                                  price=price, prices="test prices"), **kw})


def test_text_tokens_round_to_the_nearest():
    assert [text_tokens("x" * n) for n in (6, 7, 9, 10)] == [2, 2, 2, 2]
    assert text_tokens("x" * 11) == 3


def test_the_cost_counts_the_requests_asked_and_the_cache_only_where_asked():
    est = _estimate()
    assert est.asked == 6
    assert est.cost() == pytest.approx(6 * (2000 + 200))
    assert est.cost(cached_prefix=True) == pytest.approx(6 * (976 + 1024 * 0.25 + 200))
    assert est.cost(reply_tokens=1000) == pytest.approx(6 * (2000 + 2000))


def test_the_cost_lines_say_live_cached_batch_and_the_most():
    text = "\n".join(_estimate().lines())
    assert "10 segments of val pending (4 answered by the program cache, free): 6 requests" in text
    assert "1,024 a static prefix" in text
    assert "~13,200.00 USD live" in text and "~8,592.00 with the prefix cached" in text
    assert "~6,600.00 through --batch-file (half price)" in text
    assert "at most 24,000.00 live if every reply ran to --max-tokens" in text


def test_a_run_the_program_cache_answers_whole_says_no_cost():
    lines = _estimate(pending=5, answered=5).lines()
    assert lines == ["estimate: 5 segments of val pending (5 answered by the program cache, free): 0 requests"]


def test_exemplar_reply_tokens_are_the_mean_of_their_compact_json():
    class E:
        def __init__(self, program):
            self.program = program

    a = {"steps": [{"verb": "take", "noun": "plate"}] * 3}
    b = {"x": 1}
    sizes = [text_tokens(json.dumps(p, separators=(",", ":"))) for p in (a, b)]
    assert sizes[0] < text_tokens(json.dumps(a))  # (the compact form is the smaller)
    assert exemplar_reply_tokens([E(a), E(b)]) == sum(sizes) / 2
    assert exemplar_reply_tokens([]) == 0.0
