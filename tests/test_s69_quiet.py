"""``common.quiet_unraisable``: one hook however often a stage calls it (each failed start of workers calls it; a
hook per call made a chain as long as the starts), set again where another hook replaced it."""

from __future__ import annotations

import sys
import types

from leap_cli.common import quiet_unraisable


def _unraisable(exc: BaseException):
    return types.SimpleNamespace(exc_type=type(exc), exc_value=exc, exc_traceback=None, err_msg=None, object=None)


def test_quiet_unraisable_called_again_and_again_keeps_one_hook_and_every_kind(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    quiet_unraisable(KeyError)
    first = sys.unraisablehook
    for _ in range(50):
        quiet_unraisable(AttributeError)
    assert sys.unraisablehook is first  # (not a chain of 51)
    for exc in (KeyError("k"), AttributeError("a"), ValueError("v")):
        sys.unraisablehook(_unraisable(exc))
    assert [type(u.exc_value) for u in seen] == [ValueError]


def test_quiet_unraisable_sets_its_hook_again_where_another_replaced_it(monkeypatch):
    before, other = [], []
    monkeypatch.setattr(sys, "unraisablehook", before.append)
    quiet_unraisable(KeyError)
    sys.unraisablehook = other.append  # (a library's, or pytest's own per test)
    quiet_unraisable(OSError)
    sys.unraisablehook(_unraisable(KeyError("k")))
    sys.unraisablehook(_unraisable(OSError("o")))
    sys.unraisablehook(_unraisable(ValueError("v")))
    assert not before and [type(u.exc_value) for u in other] == [ValueError]
