"""Small user-facing defects (helper small65, session 65).

Found and fixed (each test below failed before its fix):
- extract's summary named, on its ``first:`` line, whichever failing segment a worker finished first: under
  ``--workers 2`` two identical runs could print different lines. It names the first failing segment in the split's
  order now (one kept per reason, replaced when an earlier one arrives), whatever the worker count.
"""

from __future__ import annotations

import pytest

from leap_cli.errors import LeapError
from tests.procs import leap_here
from tests.test_attack_s64_redownload64 import CUT, _ok, _workdir, kitchens  # noqa: F401 (a fixture)


# ---------------------------------------------------------------- extract: the summary's first: line, in split order

def _first_lines(said: str) -> list[str]:
    return [x.strip() for x in said.splitlines() if x.strip().startswith(("first: ", "e.g. "))]


def test_extracts_first_line_names_the_first_failing_segment_in_split_order(kitchens, tmp_path, monkeypatch,  # noqa: F811
                                                                            capsys):
    """--workers 2 with the results arriving last first (the order two workers may finish in) says what --workers 1
    says: the first segment past the cut (P01_02_3), not the last to be cut off."""
    import leap_cli.extract.runner as runner

    leap = leap_here(monkeypatch, capsys)
    one = _workdir(kitchens, tmp_path / "one")
    said_one = _ok(leap("extract", "--workdir", one, "--split", "val", "--workers", "1"))
    real = runner.pool_results

    def last_first(pool, results, *a, **kw):  # every result, then handed on in reverse
        return iter(list(real(pool, results, *a, **kw))[::-1])

    monkeypatch.setattr(runner, "pool_results", last_first)
    two = _workdir(kitchens, tmp_path / "two")
    said_two = _ok(leap("extract", "--workdir", two, "--split", "val", "--workers", "2"))
    first = _first_lines(said_one)
    assert len(first) == 1 and f"{CUT}.MP4 [{CUT}_3]: the window ends" in first[0], said_one
    assert [x.replace(str(two), str(one)) for x in _first_lines(said_two)] == first, said_two


def test_extracts_error_examples_are_the_first_in_split_order(tmp_path):
    """The 3 segments named per distinct error are the split's first 3 with it, in any order of arrival; a summary
    told no order (a caller of its own) keeps the arrival order."""
    from leap_cli.extract.runner import ExtractSummary

    ids = [f"P01_01_{i}" for i in range(6)]

    def record(nid):
        return {"narration_id": nid, "components": {
            "audio": {"status": "error", "data": {"error": "damaged", "detail": "P01_01.wav: damaged"}},
            "camera": {"status": "unavailable", "data": {"reason": f"ends {nid[-1]} s early"}}}}

    s = ExtractSummary(out=tmp_path / "x.jsonl", order={k: i for i, k in enumerate(ids)})
    for k in reversed(ids):
        s.add(record(k), {})
    (g,) = s.errors.values()
    assert g["segments"] == ids[:3] and g["n_segments"] == 6
    assert s.unavailable_first == {"camera: ends N s early": "camera: ends 0 s early"}
    s = ExtractSummary(out=tmp_path / "x.jsonl")
    for k in reversed(ids):
        s.add(record(k), {})
    assert next(iter(s.errors.values()))["segments"] == ids[::-1][:3]
    assert s.unavailable_first == {"camera: ends N s early": "camera: ends 5 s early"}


# ---------------------------------------------------------------- submit: action scores on some segments but not all

@pytest.mark.parametrize("lacking, said", [
    (["c"], "(4 segments of 5 have them; this one lacks them): c"),
    (["c", "d"], "(3 segments of 5 have them; these 2 lack them): c, d"),
    (["b", "c", "d", "e"], "(1 segment of 5 has them: this one): a"),
    (["c", "d", "e"], "(2 segments of 5 have them: these): a, b")])
def test_the_mixed_action_refusal_says_which_segments_it_lists(lacking, said):
    """It said "(1 of 5 have them; these have them)" and "(4 of 5 have them; these have none)"."""
    from leap_cli import submit as sub
    from tests.test_eval_submit import _test_scores

    ids = ["a", "b", "c", "d", "e"]
    doc = sub.make_submission(_test_scores(97, 300, ids), "anticipation", sls_pt=1, sls_tl=1, sls_td=1,
                              with_actions=True)
    for nid in lacking:
        del doc["results"][nid]["action"]
    with pytest.raises(LeapError) as e:
        sub.check_submission(doc, ids, 97, 300)
    assert e.value.message.endswith(f"with action scores on some segments but not all {said}"), e.value.message


def test_the_mixed_action_refusal_lists_no_segments_it_does_not_name():
    """Where another problem's segments are the ones listed, the 'also' part says the count alone."""
    from leap_cli import submit as sub
    from tests.test_eval_submit import _test_scores

    ids = ["a", "b", "c"]
    doc = sub.make_submission(_test_scores(97, 300, ids), "anticipation", sls_pt=1, sls_tl=1, sls_td=1,
                              with_actions=True)
    del doc["results"]["c"]["action"]
    doc["results"]["a"]["verb"] = []
    with pytest.raises(LeapError) as e:
        sub.check_submission(doc, ids, 97, 300)
    assert e.value.message.endswith("; also: action scores on some segments but not all (2 segments of 3 have "
                                    "them)"), e.value.message
