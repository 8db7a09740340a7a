"""Gaps found by mutation testing of the program cache (``programs/store.py``), the semantic checks
(``programs/validate.py``) and the checker process (``programs/checker.py``): a cached reply served for other
settings or lost after a crash, an invalid program accepted or a valid one refused."""

import asyncio
import json
import sqlite3
import threading
import time

import pytest

from leap_cli.programs.store import MIGRATIONS, ProgramStore, cache_key
from leap_cli.programs.validate import Labels, validate_semantics
from tests.program_helpers import cond as C

from tests.test_programs_validate import S, nouns, prog, verbs  # noqa: F401 (the class files' fixtures)


def pointers(program, verbs, nouns, **kw):
    return [f.pointer for f in validate_semantics(program, verbs, nouns, **kw)]


# ---- validate: the vocabulary ---------------------------------------------------------------------------------

def test_an_object_b_that_is_no_epic_noun_is_a_finding(verbs, nouns):
    """'rinse plate with unobtainium' passed: object_b was never looked up."""
    assert pointers(prog([S("rinse", "plate", "unobtainium")]), verbs, nouns) == ["/steps/0/object_b"]
    assert pointers(prog([S("rinse", "plate", "sponge")]), verbs, nouns) == []


def test_the_actions_noun_must_be_an_epic_noun(verbs, nouns):
    """An action noun outside EPIC resolves to no class, so no label check catches it either."""
    got = pointers(prog([S("wash", "plate")], noun="unobtainium"), verbs, nouns, labels=Labels(None, 2))
    assert got == ["/action/noun"]


def test_objects_in_a_sub_actions_post_and_a_loops_until_are_checked(verbs, nouns):
    """A post on(plate, unobtainium) was accepted; an until naming no EPIC noun went unreported there."""
    put = S("put", "plate", "rack:drying", post=[C("on", "plate", "unobtainium")])
    assert pointers(prog([put], verb="put"), verbs, nouns) == ["/steps/0/post/0/args/1"]
    scrub = S("scrub", "plate", post=[C("clean", "unobtainium")])
    loop = {"type": "loop", "until": C("clean", "unobtainium"), "steps": [scrub]}
    got = pointers(prog([loop]), verbs, nouns)
    assert "/steps/0/until/args/0" in got and "/steps/0/steps/0/post/0/args/0" in got


# ---- validate: chaining ---------------------------------------------------------------------------------------

def test_holding_with_either_hand_is_met_by_both_hands(verbs, nouns):
    """A pot lifted with both hands is held by either hand: a valid two-handed carry was refused."""
    lift = S("lift", "pot", post=[C("holding", "both", "pot")], hand="both")
    carry = S("carry", "pot", pre=[C("holding", "either", "pot")], hand="either")
    assert validate_semantics(prog([lift, carry], verb="lift", noun="pot"), verbs, nouns) == []


def test_a_loops_until_holds_after_it_even_where_one_branch_reaches_it(verbs, nouns):
    """loop until full(pot) { if empty(pot) then fill }: the pot is full after the loop, which the program's post
    may say; refused when the loop's end did not assert its condition."""
    fill = S("fill", "pot", post=[C("full", "pot")])
    loop = {"type": "loop", "until": C("full", "pot"),
            "steps": [{"type": "conditional", "if": C("empty", "pot"), "then": [fill], "else": []}]}
    assert validate_semantics(prog([loop], post=[C("full", "pot")], verb="fill", noun="pot"), verbs, nouns) == []


def test_exactly_max_sub_actions_is_allowed(verbs, nouns):
    """The limit is 'at most': a program of exactly that many sub-actions is valid."""
    four = prog([S("wash", "plate")] * 4)
    assert validate_semantics(four, verbs, nouns, max_sub_actions=4) == []
    assert pointers(prog([S("wash", "plate")] * 5), verbs, nouns, max_sub_actions=4) == ["/steps"]


# ---- store: the cache key -------------------------------------------------------------------------------------

def test_the_cache_key_differs_for_every_input_and_not_for_its_hashed_form():
    """A reply cached at temperature 0 was served at temperature 1 (or for another max_tokens, model, backend,
    schema or prompt); a prompt or schema given as its stable_hash must find the same reply."""
    from leap_cli.io import stable_hash

    msgs, schema, params = [{"role": "user", "content": "wash plate"}], {"type": "object"}, {"temperature": 0}
    key = cache_key("openai", "m", msgs, schema, params)
    others = [cache_key("batch", "m", msgs, schema, params), cache_key("openai", "m2", msgs, schema, params),
              cache_key("openai", "m", [{"role": "user", "content": "cut onion"}], schema, params),
              cache_key("openai", "m", msgs, {"type": "array"}, params), cache_key("openai", "m", msgs, None, params),
              cache_key("openai", "m", msgs, schema, {"temperature": 1}),
              cache_key("openai", "m", msgs, schema, {"temperature": 0, "max_tokens": 100})]
    assert key not in others and len(set(others)) == len(others)
    assert cache_key("openai", "m", stable_hash(msgs), stable_hash(schema), params) == key


# ---- store: what a reply reads back as ------------------------------------------------------------------------

def test_a_reply_reads_back_as_it_was_cached_after_a_reopen(tmp_path):
    """Its token counts (in their places: the cost of a cache hit), the provider's cached tokens and whether it
    stopped at the token limit (a rerun must say so again and ask no repair)."""
    path = tmp_path / "cache.sqlite"
    with ProgramStore(path) as s:
        s.put("cut", "{", {"prompt_tokens": 7, "completion_tokens": 3, "cached_tokens": 5}, "m-2025", cut=True)
        s.put("whole", "{}", {"prompt_tokens": 2, "completion_tokens": 9}, "m")
    with ProgramStore(path) as s:
        assert s.get("cut") == ("{", {"prompt_tokens": 7, "completion_tokens": 3, "cached_tokens": 5}, "m-2025", True)
        assert s.get("whole") == ("{}", {"prompt_tokens": 2, "completion_tokens": 9}, "m", False)
        assert s.get("nothing") is None
        assert s.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)  # none is run again


def test_a_reply_asked_again_replaces_the_cached_one(tmp_path):
    """--retry-invalid pays for a new reply: it must replace the old one, on disk and while still buffered, or a
    plain rerun replays the invalid reply."""
    path = tmp_path / "cache.sqlite"
    with ProgramStore(path) as s:
        s.put("k", "old", {}, "m")
    s = ProgramStore(path, commit_every=3600)
    s.put("k", "new", {}, "m")  # buffered: the old row is still on disk
    assert s.get("k")[0] == "new"
    s.close()
    with ProgramStore(path) as s:
        assert s.get("k")[0] == "new"


# ---- store: what a killed process keeps -----------------------------------------------------------------------

def _on_disk(path, key):
    with sqlite3.connect(path) as db:
        return db.execute("SELECT response FROM cache WHERE key = ?", (key,)).fetchall()


def test_without_a_commit_interval_every_reply_is_on_disk_at_once(tmp_path):
    """commit_every=0: a process killed right after a put loses nothing (no close, no commit)."""
    path = tmp_path / "cache.sqlite"
    s = ProgramStore(path)
    s.put("k", "paid reply", {}, "m")
    assert _on_disk(path, "k") == [("paid reply",)]
    s.close()


def test_a_durable_call_writes_its_reply_before_the_next_request(tmp_path):
    """A paid reply that a repair round follows: committed with its call, whatever the commit interval, or a
    killed run pays for it again."""
    path = tmp_path / "cache.sqlite"
    s = ProgramStore(path, commit_every=3600)
    s.put("k", "paid reply", {"prompt_tokens": 3}, "m", commit=False)
    s.log_call(narration_id="n", backend="openai", model="m", prompt_hash="p", cache_key="k", round=1,
               response="paid reply", usage={"prompt_tokens": 3}, latency=0.1, attempts=1, cached=False,
               outcome="invalid", durable=True)
    assert _on_disk(path, "k") == [("paid reply",)]
    s.close()


def test_tick_writes_buffered_replies_once_due(tmp_path):
    """A slow server sends no new reply: the ones buffered before are written by the stage's timer all the same."""
    path = tmp_path / "cache.sqlite"
    s = ProgramStore(path, commit_every=0.05)
    s.put("k", "paid reply", {}, "m", commit=False)
    time.sleep(0.1)
    s.tick()
    assert _on_disk(path, "k") == [("paid reply",)]
    s.close()


def test_close_writes_what_is_buffered(tmp_path):
    path = tmp_path / "cache.sqlite"
    s = ProgramStore(path, commit_every=3600)
    s.put("k", "paid reply", {}, "m")
    assert _on_disk(path, "k") == []
    s.close()
    assert _on_disk(path, "k") == [("paid reply",)]


def test_a_failed_commit_keeps_its_rows_for_the_next(tmp_path):
    """A full disk at one commit: the replies stay buffered and are written by the next, not dropped."""
    from leap_cli.errors import LeapError

    path = tmp_path / "cache.sqlite"
    s = ProgramStore(path, commit_every=3600)
    s.put("k", "paid reply", {}, "m")
    good, s._wdb = s._wdb, sqlite3.connect(":memory:")
    s._wdb.close()
    with pytest.raises(LeapError, match="cannot write the program cache"):
        s.commit()
    s._wdb = good
    s.close()
    assert _on_disk(path, "k") == [("paid reply",)]


def test_a_commit_waits_for_another_process_holding_the_database(tmp_path):
    """Parallel shards share cache.sqlite: a commit meets another's write transaction and waits for it, rather than
    failing with 'database is locked'."""
    path = tmp_path / "cache.sqlite"
    s = ProgramStore(path, commit_every=3600)
    other = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    release.start()
    s.put("k", "paid reply", {}, "m")
    s.commit()
    release.join()
    other.close()
    s.close()
    assert _on_disk(path, "k") == [("paid reply",)]


def test_a_background_commit_returns_once_written(tmp_path):
    """commit() with the writer thread: on disk when it returns (what --max-cost and a crash rely on)."""
    path = tmp_path / "cache.sqlite"
    s = ProgramStore(path, commit_every=3600, background=True)
    for i in range(50):
        s.put(f"k{i}", "paid reply", {}, "m")
    s.commit()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM cache").fetchone()[0] == 50
    s.close()


# ---- checker: the child process -------------------------------------------------------------------------------

def test_the_checker_process_checks_with_the_segments_labels_and_the_sub_action_limit(verbs, nouns):
    """The child must be given each reply's verb and noun class, in that order, and the run's --max-sub-actions:
    else a program of the wrong noun, or longer than the limit, is accepted at high concurrency only."""
    from leap_cli.programs.checker import RemoteChecker
    from leap_cli.programs.reply import verify_reply

    one, three = json.dumps(prog([S("wash", "plate")])), json.dumps(prog([S("wash", "plate")] * 3))
    cases = [(one, Labels(2, 2)), (one, Labels(2, 3)), (one, Labels(3, 2)), (three, Labels(2, 2))]
    want = [verify_reply(t, verbs, nouns, lab, 2) for t, lab in cases]
    assert [[f.pointer for f in w[1]] for w in want] == [[], ["/action/noun"], ["/action/verb"], ["/steps"]]

    async def run():
        checker = RemoteChecker(verbs, nouns, 2)
        await checker.start()
        assert checker.ready
        got = await asyncio.gather(*(checker.check(t, lab) for t, lab in cases))
        await checker.aclose()
        return got, checker

    got, checker = asyncio.run(run())
    assert checker.remote == len(cases) and checker.local == 0
    assert got == want


def test_a_failed_background_write_does_not_bring_back_an_older_reply(tmp_path):
    """A reply replaced (--retry-invalid) while the writer thread was writing the old one, and that write failed:
    the old one came back over the new one when its rows were put back in the buffer."""
    from leap_cli.errors import LeapError

    path, release = tmp_path / "cache.sqlite", threading.Event()

    class Failing(ProgramStore):
        fail = True

        def _write(self, rows):
            release.wait(10)
            if self.fail:
                self.fail = False
                raise self._unwritten(sqlite3.OperationalError("disk is full"), "kept")
            super()._write(rows)

    s = Failing(path, commit_every=0.0, background=True)
    s.put("k", "old", {}, "m")  # handed to the writer thread, which waits
    assert s._flushing is not None
    s.put("k", "new", {}, "m")  # the thread is busy: buffered
    release.set()
    with pytest.raises(LeapError):
        s.commit()
    assert s.get("k")[0] == "new"
    s.close()
    assert _on_disk(path, "k") == [("new",)]


def test_a_knife_let_go_with_either_hand_is_no_longer_held(verbs, nouns):
    """holding(either, knife) means some hand holds it, so 'not holding(either, knife)' means none does: a later
    cut that needs holding(right, knife) must be refused, and a step that needs the right hand free accepted."""
    take = S("take", "knife", post=[C("holding", "right", "knife")])
    put = S("put", "knife", post=[C("holding", "either", "knife", neg=True)])
    cut = S("cut", "onion", "knife", pre=[C("holding", "right", "knife")])
    wash = S("wash", "hand", pre=[C("holding", "right", "knife", neg=True)])
    assert pointers(prog([take, put, cut], verb="cut", noun="onion"), verbs, nouns) == ["/steps/2/pre/0"]
    assert pointers(prog([take, put, wash], verb="wash", noun="hand"), verbs, nouns) == []



def test_a_pot_held_with_each_hand_is_held_with_both_and_letting_go_of_one_keeps_the_other(verbs, nouns):
    """holding(left, pot) then holding(right, pot) is holding(both, pot); letting go of a pot held with both hands
    with the left leaves it in the right (it was refused: the right hand no longer held it)."""
    left = S("take", "pot", post=[C("holding", "left", "pot")])
    right = S("take", "pot", post=[C("holding", "right", "pot")])
    pour = S("pour", "pot", pre=[C("holding", "both", "pot")])
    assert pointers(prog([left, right, pour], verb="pour", noun="pot"), verbs, nouns) == []
    both = S("lift", "pot", post=[C("holding", "both", "pot")])
    free_left = S("release", "pot", post=[C("holding", "left", "pot", neg=True)])
    stir = S("stir", "pot", pre=[C("holding", "right", "pot")])
    assert pointers(prog([both, free_left, stir], verb="stir", noun="pot"), verbs, nouns) == []
    assert pointers(prog([both, free_left, pour], verb="pour", noun="pot"), verbs, nouns) == ["/steps/2/pre/0"]
    # letting go with both hands of a pot held with each: neither holds it, and the program's post says so
    put = S("put", "pot", post=[C("holding", "both", "pot", neg=True)])
    assert pointers(prog([left, right, put], verb="put", noun="pot",
                         post=[C("holding", "both", "pot", neg=True)]), verbs, nouns) == []
    assert pointers(prog([left, right, put, stir], verb="stir", noun="pot"), verbs, nouns) == ["/steps/3/pre/0"]