"""A user's side of this session's generate-programs changes across an upgrade: a workdir whose program cache an
older leap made (before migration 9, ``token_limits``), carried on by this leap; ``--dry-run``'s estimate against
the requests the run then sends (counted by the scripted server of tests/programs_llm_server.py); the open-files
limit every command raises and the loader's sharing by name under a low one."""

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from leap_cli.common import ShardSpec
from leap_cli.programs.generate import estimate_cost, generate_programs
from tests.procs import leap_main
from tests.program_helpers import server_config as config
from tests.programs_llm_server import Reply, ScriptedServer, narration_id_of
from tests.test_programs_generate import N_SEGMENTS, good_programs, workdir  # noqa: F401 (the fixtures)

REPO = Path(__file__).resolve().parents[1]


def invalid(program: dict) -> dict:
    program = json.loads(json.dumps(program))
    program["steps"][0]["verb"] = "teleport"
    return program


def is_repair(body) -> bool:
    return body["messages"][-1]["role"] == "user" and body["messages"][-2]["role"] == "assistant" and \
        "teleport" in body["messages"][-2]["content"]


def cache_db(workdir) -> Path:
    return workdir / "programs" / "cache.sqlite"


def as_an_older_leap_left_it(workdir) -> None:
    """The program cache as a leap before migration 9 wrote it: no ``token_limits`` table, user_version 8 (every
    other table and row as they are: migrations 1-8 are the same in both)."""
    db = sqlite3.connect(cache_db(workdir))
    with db:
        db.execute("DROP TABLE token_limits")
        db.execute("PRAGMA user_version = 8")
    db.close()


def tree_hash(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --- bugs -----------------------------------------------------------------------------------------------------------

def test_a_reply_the_older_leap_cached_is_not_paid_again_after_two_raises_across_the_upgrade(workdir, good_programs):
    """Was wrong: the older leap's --max-tokens was known from the settings file alone; the new leap's first run
    noted only its own limit in the cache (and only once it made requests) and rewrote the settings file, so a later
    raise no longer found the older leap's cached replies: they were paid again."""
    def script(body, n):  # the first reply fails validation, its repair is valid
        nid = narration_id_of(body)
        return Reply(json.dumps(good_programs[nid] if n else invalid(good_programs[nid])))

    with ScriptedServer(script) as server:
        # the older leap, --max-tokens 2000: the cap holds back the repair turn of the first segment (its first reply
        # is cached, its record not written)
        s = generate_programs(config(workdir, server, concurrency=1, max_cost=0.0014))
        assert len(server.requests) == 1 and s.stopped
        as_an_older_leap_left_it(workdir)
        # the new leap on the same workdir, a raised limit, a run that stops before that segment (--limit 0 here; a
        # --max-cost or a Ctrl-C as well): the settings file now says 3000
        generate_programs(config(workdir, server, concurrency=1, max_tokens=3000, limit=0))
        assert len(server.requests) == 1
        # raised once more: the reply cached at 2000 (not cut) is the one a higher limit gives
        generate_programs(config(workdir, server, concurrency=1, max_tokens=4000))
        assert is_repair(server.requests[1]), "the first round the older leap paid for was asked (and paid) again"
        first = narration_id_of(server.requests[0])
        assert [is_repair(b) for b in server.requests if narration_id_of(b) == first] == [False, True]


# --- verified behaviour -----------------------------------------------------------------------------------------------

def test_an_older_leaps_cache_is_migrated_and_its_replies_answer_a_rerun_unpaid(workdir, good_programs):
    """The cache an older leap wrote (user_version 8) takes migration 9 and keeps every reply: the output lost, a
    rerun of the new leap asks for nothing; the cache an older leap then opens is still version 9, readable by the
    older leap's migrate() (which runs only MIGRATIONS[9:], none)."""
    with ScriptedServer(lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))) as server:
        generate_programs(config(workdir, server))
        assert len(server.requests) == N_SEGMENTS
        as_an_older_leap_left_it(workdir)
        (workdir / "programs" / "val.jsonl").unlink()
        s = generate_programs(config(workdir, server))
        assert len(server.requests) == N_SEGMENTS and s.statuses == {"valid": N_SEGMENTS}
    db = sqlite3.connect(cache_db(workdir))
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 9
        assert db.execute("SELECT max_tokens FROM token_limits").fetchall() == [(2000,)]
        assert db.execute("SELECT requests FROM ledger").fetchall() == [(N_SEGMENTS,)]  # paid once, counted once
    finally:
        db.close()


def test_the_estimate_counts_the_requests_the_run_then_sends(workdir, good_programs):
    """--dry-run's estimate (estimate_cost) against the requests the run then sent: fresh with --limit, resumed,
    --retry-invalid, the output lost with the cache kept, --retry-errors, another --shard's output, a raised
    --max-tokens with every output lost (the lower limit's replies free)."""
    ids = sorted(good_programs)
    bad, failing = ids[1], ids[2]
    fail_once = {failing: 1}

    def script(body, n):
        nid = narration_id_of(body)
        if fail_once.get(nid):
            fail_once[nid] -= 1
            return Reply(status=500)
        return Reply(json.dumps(invalid(good_programs[nid]) if nid == bad and not n else good_programs[nid]))

    def check(**kw):
        cfg = config(workdir, server, repair_rounds=0, max_retries=0, concurrency=1, **kw)
        est = estimate_cost(cfg)
        before = len(server.requests)
        generate_programs(cfg)
        return est.asked, len(server.requests) - before

    with ScriptedServer(script) as server:
        assert check(limit=2) == (2, 2)
        assert check() == (N_SEGMENTS - 2,) * 2  # one of them invalid, one failed
        assert check(retry_invalid=True) == (1, 1)
        (workdir / "programs" / "val.jsonl").unlink()  # the cache kept: only the failed one is asked
        fail_once[failing] = 1
        assert check() == (1, 1)
        assert check(retry_failed=True) == (1, 1)
        assert check(shard=ShardSpec(0, 2)) == (0, 0)  # another output, the same prompts: the cache's
        for f in (workdir / "programs").glob("val*.jsonl*"):
            f.unlink()
        assert check(max_tokens=3000) == (0, 0)


def test_dry_run_estimates_without_the_key_and_writes_nothing(workdir, good_programs, monkeypatch, capsys):
    with ScriptedServer(lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))) as server:
        generate_programs(config(workdir, server, limit=2))
        monkeypatch.delenv("LEAP_TEST_KEY")
        before = tree_hash(workdir)
        code, out, err = leap_main(monkeypatch, capsys, "generate-programs", "--workdir", str(workdir), "--split",
                                   "val", "--backend", "openai", "--model", "test-model", "--base-url",
                                   server.base_url, "--api-key-env", "LEAP_TEST_KEY", "--dry-run")
        assert len(server.requests) == 2
    assert code == 0, err
    said = " ".join(err.split())
    assert f"estimate: {N_SEGMENTS - 2} segments of val pending: {N_SEGMENTS - 2} requests" in said
    assert "the mean of the 2 replies this output has paid for" in said
    assert "Clip " in out and "estimate" not in out  # stdout: the prompt as sent
    assert tree_hash(workdir) == before


LOW_LIMIT = """
import resource, sys
soft, hard = map(int, sys.argv[1:3])
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
from leap_cli.cli import raise_open_files_limit
raise_open_files_limit()
print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
from leap_cli.shards.dataset import loader_workers
import torch.multiprocessing as tmp
before = tmp.get_sharing_strategy()
loader_workers(0, "--workers")
after_none = tmp.get_sharing_strategy()
loader_workers(1, "--workers")
print(before, after_none, tmp.get_sharing_strategy())
"""


@pytest.mark.parametrize("soft,hard,raised,shared", [(1024, 4096, 4096, "file_descriptor"),
                                                     (256, 1024, 1024, "file_system"),
                                                     (1024, None, None, "file_descriptor")])
def test_the_soft_limit_is_raised_and_workers_share_by_name_only_under_4096(soft, hard, raised, shared):
    """A job's ``ulimit -Sn 1024`` under a hard limit of 4096 or more: leap raises it and torch's default
    sharing stays; a hard limit under 4096: file_system, and only where workers are used."""
    import resource

    hard_now = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard is None:  # (None: this machine's own hard limit, at most 65536 of it taken)
        hard, raised = hard_now, 65536 if hard_now == resource.RLIM_INFINITY else min(hard_now, 65536)
        if raised < 4096:
            pytest.skip(f"this machine's hard limit of open files is {hard_now}")
    elif hard_now != resource.RLIM_INFINITY and hard_now < hard:
        pytest.skip(f"this machine's hard limit of open files is {hard_now}")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run([sys.executable, "-c", LOW_LIMIT, str(soft), str(hard)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    limit, strategies = out.stdout.split("\n", 1)
    assert int(limit) == raised
    assert strategies.split() == ["file_descriptor", "file_descriptor", shared]
