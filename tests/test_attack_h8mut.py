"""Mutation run (helper h8, session 51) over the session's open-files changes (the soft limit raised, tensors shared
by name under a low limit, a lost or stalled DataLoader batch said in one line, EMFILE not a corrupt shard) and the
program cache's record of each --max-tokens an output was asked with. Each test here kills mutants the nearest tests
let live; each was checked to pass on the real code and fail on its mutants."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from leap_cli.programs.generate import generate_programs
from tests.kitchens import kitchen_copy
from tests.program_helpers import server_config as config
from tests.programs_llm_server import Reply, ScriptedServer, narration_id_of
from tests.test_programs_generate import N_SEGMENTS, good_programs, workdir  # noqa: F401 (the fixtures)

REPO = Path(__file__).resolve().parent.parent


def _limits_after_leap(soft: int, hard: int, *argv: str) -> tuple[int, int]:
    """RLIMIT_NOFILE after ``leap ARGV`` ran (cli.main) in a child started under ``ulimit -Sn soft -Hn hard``."""
    code = ("import resource, sys\n"
            f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))\n"
            f"sys.argv = ['leap'] + {list(argv)!r}\n"
            "from leap_cli import cli\n"
            "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
            "print('LIMITS', *resource.getrlimit(resource.RLIMIT_NOFILE))\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("LIMITS")]
    assert line, r.stdout + r.stderr
    return tuple(int(x) for x in line[-1].split()[1:])


def _hard_limit() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


@pytest.mark.skipif(sys.platform == "win32", reason="no RLIMIT_NOFILE")
def test_leap_raises_a_low_soft_limit_of_open_files_to_the_hard_one():
    """A cluster's `ulimit -n 1024` (soft) under a higher hard limit: leap raises its own soft limit to the hard one
    (as `ulimit -n` in the job script would), at most 65536, and never touches the hard limit."""
    hard = _hard_limit()
    if hard != -1 and hard < 4096:
        pytest.skip(f"the hard limit here is {hard}")
    assert _limits_after_leap(64, 4096, "--version") == (4096, 4096)
    if hard == -1 or hard > 65536:
        assert _limits_after_leap(64, min(hard, 1 << 20) if hard != -1 else 1 << 20, "--version")[0] == 65536
    # a soft limit already above what leap would ask for is left as it is (not lowered)
    assert _limits_after_leap(5000, 5000, "--version") == (5000, 5000)


class _FakeResource:
    """``resource`` with a given RLIMIT_NOFILE that records setrlimit's calls."""

    def __init__(self, monkeypatch, soft, hard):
        import resource

        self.now, self.set = (soft, hard), []
        monkeypatch.setattr(resource, "getrlimit", lambda what: self.now)
        monkeypatch.setattr(resource, "setrlimit", lambda what, lim: self.set.append(tuple(lim)))


@pytest.mark.skipif(sys.platform == "win32", reason="no RLIMIT_NOFILE")
def test_raise_open_files_limit_keeps_the_hard_limit_and_leaves_an_unlimited_soft_one(monkeypatch):
    """The soft limit goes up to min(hard, 65536); the hard limit is passed back as it was (a lowered hard limit
    could not be raised again by this process); an unlimited soft limit is not touched; under an unlimited hard one
    (macOS, some containers) the soft limit goes to 65536 (an unlimited soft one is refused there)."""
    import resource

    from leap_cli.cli import raise_open_files_limit

    inf = resource.RLIM_INFINITY
    for (soft, hard), want in (((1024, 1 << 20), [(65536, 1 << 20)]), ((1024, 4096), [(4096, 4096)]),
                               ((1024, inf), [(65536, inf)]), ((inf, inf), []), ((65536, 1 << 20), []),
                               ((70000, 1 << 20), [])):
        fake = _FakeResource(monkeypatch, soft, hard)
        raise_open_files_limit()
        assert fake.set == want, ((soft, hard), fake.set)


# --- the program cache's record of every --max-tokens an output was asked with -------------------------------------

def test_a_resume_after_two_raises_takes_the_replies_of_the_middle_limit(workdir, good_programs):  # noqa: F811
    """--max-tokens 1000 (one reply cut), raised to 2000 (that one asked again, finished), the output lost, raised to
    4000 and stopped after one segment (the settings file now says 4000): its resume at 4000 takes the reply that was
    finished at 2000 from the cache, not only the lowest limit's (cut) one: every limit the output was asked with is
    recorded, not just the first."""
    from tests.programs_llm_server import completion
    from tests.test_attack_h1money import out_file

    cut_id = sorted(good_programs)[-1]

    def script(body, n):
        nid = narration_id_of(body)
        if nid == cut_id and n == 0:  # cut at the first limit
            data = completion(json.dumps(good_programs[nid])[:150])
            data["choices"][0]["finish_reason"] = "length"
            return Reply(raw=json.dumps(data))
        return Reply(json.dumps(good_programs[nid]))

    with ScriptedServer(script) as server:
        generate_programs(config(workdir, server, max_tokens=1000, concurrency=1, repair_rounds=0))
        out_file(workdir).unlink()
        assert generate_programs(config(workdir, server, max_tokens=2000, concurrency=1, repair_rounds=0)).statuses == {
            "valid": N_SEGMENTS}
        assert len(server.requests) == N_SEGMENTS + 1  # (only the cut one asked again: verified OK)
        out_file(workdir).unlink()
        generate_programs(config(workdir, server, max_tokens=4000, concurrency=1, repair_rounds=0, limit=1))
        assert cut_id not in out_file(workdir).read_text()  # (this test's premise: the stopped run did not make it)
        s = generate_programs(config(workdir, server, max_tokens=4000, concurrency=1, repair_rounds=0))
        assert s.statuses == {"valid": N_SEGMENTS - 1}
        assert len(server.requests) == N_SEGMENTS + 1, "the reply finished at --max-tokens 2000 was bought again"


def _good_server(good_programs):
    return ScriptedServer(lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)])))


def test_with_a_cache_of_an_older_leap_a_raised_limit_takes_the_settings_files_limit_twice(workdir,
                                                                                            good_programs):  # noqa: F811
    """A program cache of a leap before the record of limits (its table empty): the output lost, --dry-run and a run
    at a raised --max-tokens take the earlier limit from the settings file (nothing is bought again); raised once
    more after another loss, the replies are found under the middle limit's key (kept there by the first raise)."""
    import sqlite3

    from leap_cli.programs.generate import estimate_cost
    from tests.test_attack_h1money import out_file
    from tests.test_programs_estimate import offline_config

    def an_older_cache():
        with sqlite3.connect(workdir / "programs" / "cache.sqlite") as db:
            db.execute("DELETE FROM token_limits")

    with _good_server(good_programs) as server:
        generate_programs(config(workdir, server, repair_rounds=0))
        an_older_cache()
        out_file(workdir).unlink()  # (its settings file stays: it says 2000)
        est = estimate_cost(offline_config(workdir, max_tokens=4000, repair_rounds=0))
        assert (est.pending, est.answered) == (N_SEGMENTS, N_SEGMENTS)
        assert generate_programs(config(workdir, server, max_tokens=4000, repair_rounds=0)).statuses == {
            "valid": N_SEGMENTS}
        assert len(server.requests) == N_SEGMENTS, "the replies of --max-tokens 2000 were bought again"
        an_older_cache()
        out_file(workdir).unlink()  # (the settings file says 4000 now)
        assert generate_programs(config(workdir, server, max_tokens=8000, repair_rounds=0)).statuses == {
            "valid": N_SEGMENTS}
        assert len(server.requests) == N_SEGMENTS, "the replies taken at --max-tokens 4000 were not kept under its key"


def test_a_third_limit_looks_past_a_middle_one_that_answered_only_some_segments(workdir, good_programs):  # noqa: F811
    """2000 for every segment; the output lost, 4000 stopped after one segment; lost again, 8000: each segment's
    reply is looked up at every lower limit (4000 holds one, 2000 the rest), none is bought again."""
    from tests.test_attack_h1money import out_file

    with _good_server(good_programs) as server:
        generate_programs(config(workdir, server, repair_rounds=0))
        out_file(workdir).unlink()
        generate_programs(config(workdir, server, max_tokens=4000, repair_rounds=0, limit=1))
        out_file(workdir).unlink()
        assert generate_programs(config(workdir, server, max_tokens=8000, repair_rounds=0)).statuses == {
            "valid": N_SEGMENTS}
        assert len(server.requests) == N_SEGMENTS, f"{len(server.requests) - N_SEGMENTS} replies bought again"


def test_os_error_line_for_enfile_names_the_systems_table_not_the_path():
    """ENFILE (the machine's table of open files full) is not the file's fault: the line says so, not 'check that
    path'."""
    import errno

    from leap_cli.cli import os_error_line

    line = os_error_line(OSError(errno.ENFILE, os.strerror(errno.ENFILE), "/data/shards/leap-train-000001.tar"))
    assert "open files" in line and "check that path" not in line, line


def test_the_limit_of_an_ingested_batch_is_recorded_for_a_later_raise(workdir, good_programs, tmp_path):  # noqa: F811
    """An output begun by --batch-file on a fresh cache (nothing to note yet), its results ingested at 2000; the
    output lost, a run at 4000 stopped after one segment (the settings file now says 4000): its resume takes the
    ingested replies from the cache (the ingest recorded its limit), none is bought again."""
    from leap_cli.programs.batch import ingest_batch, write_batch_file
    from tests.programs_llm_server import completion
    from tests.test_attack_h1money import out_file
    from tests.test_programs_estimate import offline_config
    from tests.test_programs_generate import batch_results, results_file

    cfg = offline_config(workdir, repair_rounds=0)
    batch = tmp_path / "batch.jsonl"
    assert write_batch_file(cfg, batch) == N_SEGMENTS
    lines = batch_results(batch, lambda i, nid: {"response": {
        "status_code": 200, "body": completion(json.dumps(good_programs[nid]))}})
    assert ingest_batch(cfg, results_file(tmp_path / "r.jsonl", lines)) == {"valid": N_SEGMENTS}
    out_file(workdir).unlink()
    with _good_server(good_programs) as server:
        generate_programs(config(workdir, server, max_tokens=4000, repair_rounds=0, limit=1))
        assert len(server.requests) == 0  # (from the ingested replies: verified OK)
        assert generate_programs(config(workdir, server, max_tokens=4000, repair_rounds=0)).statuses == {
            "valid": N_SEGMENTS - 1}
        assert len(server.requests) == 0, f"{len(server.requests)} ingested replies bought again"


def test_a_batch_file_at_a_raised_limit_on_a_cache_of_an_older_leap_asks_for_nothing(workdir, good_programs,
                                                                                      tmp_path):  # noqa: F811
    """--batch-file at a raised --max-tokens, the output lost, the program cache of a leap before the record of
    limits: the earlier limit comes from the settings file, every segment is answered from the cache (no request
    written, none paid twice)."""
    import sqlite3

    from leap_cli.programs.batch import write_batch_file
    from tests.test_attack_h1money import out_file
    from tests.test_programs_estimate import offline_config

    with _good_server(good_programs) as server:
        generate_programs(config(workdir, server, repair_rounds=0))
    with sqlite3.connect(workdir / "programs" / "cache.sqlite") as db:
        db.execute("DELETE FROM token_limits")
    out_file(workdir).unlink()
    path = tmp_path / "b.jsonl"
    write_batch_file(offline_config(workdir, max_tokens=4000, repair_rounds=0), path)
    assert not path.exists() or path.read_text() == ""
    assert len(out_file(workdir).read_text().splitlines()) == N_SEGMENTS


# --- evaluate's loader: a stalled worker ends in a line, not a wait for ever ----------------------------------------

@pytest.fixture(scope="module")
def eval_shards(tmp_path_factory) -> Path:
    """2 videos x 2 segments of the validation split in shards (~5 s)."""
    root = tmp_path_factory.mktemp("h8mut")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    kitchen_copy(tmp_path_factory, root / "kitchen", "--videos", 2, "--segments", 2)
    subprocess.run([sys.executable, "-m", "leap_cli", "build-shards", "--data", str(root / "kitchen"), "--workdir",
                    str(root / "work"), "--split", "val", "--frames", "4", "--short-side", "32"],
                   check=True, capture_output=True, cwd=root, env=env)
    return root / "work" / "shards" / "val"


def test_evaluate_loader_with_workers_waits_at_most_loader_timeout_and_says_a_lost_batch(eval_shards):
    """evaluate --workers N: the loader is made with a finite timeout (torch's default 0 waits for ever for a batch a
    worker lost) and is wrapped so that the loss is one line naming --workers; without workers there is no timeout
    (torch refuses none, but nothing is waited for)."""
    from leap_cli.evaluate.inference import ViewConfig, shard_batches
    from leap_cli.shards.dataset import LOADER_TIMEOUT, Guarded

    assert 60 <= LOADER_TIMEOUT <= 3600
    args = {"num_frames": 4, "img_size": 32}
    batches, n = shard_batches(eval_shards, args, ViewConfig(), batch_size=1, workers=2)
    assert isinstance(batches, Guarded) and batches.option == "--workers" and n > 0
    assert batches.loader.num_workers > 0 and batches.loader.timeout == LOADER_TIMEOUT
    assert sum(len(b["narration_id"]) if "narration_id" in b else 1 for b in batches) >= 1  # (it iterates)
    batches, _ = shard_batches(eval_shards, args, ViewConfig(), batch_size=1, workers=0)
    assert batches.loader.num_workers == 0 and batches.loader.timeout == 0


def test_train_loaders_with_workers_wait_at_most_loader_timeout_and_say_a_lost_batch(eval_shards):
    """train's loaders (data.num_workers 2): made with the finite timeout, the training and validation batches both
    through ``Guarded`` naming data.num_workers (a batch lost on its way is one line, not EOFError's traceback);
    data.num_workers 0: no timeout."""
    from leap_cli.errors import LeapError
    from leap_cli.shards.dataset import LOADER_TIMEOUT, Guarded
    from leap_cli.train.config import load_config
    from leap_cli.train.data import ShardSource
    from leap_cli.train.distributed import DistInfo

    sets = ["model.num_frames=4", "model.img_size=32", "data.batch_size=1", "data.eval_batch_size=1"]
    src = ShardSource(eval_shards, eval_shards, load_config("tiny-synthetic", sets + ["data.num_workers=2"]),
                      DistInfo())
    val = src.val_batches()
    assert isinstance(val, Guarded) and val.option == "data.num_workers"
    assert val.loader.num_workers > 0 and val.loader.timeout == LOADER_TIMEOUT
    assert len(list(val)) >= 1
    assert src._loader("train", src.train, 1, True).timeout == LOADER_TIMEOUT

    class Lost:  # (a loader whose worker lost the first batch: no worker started here)
        num_workers = 2

        def __iter__(self):
            raise EOFError
            yield

    src._loader = lambda *a: Lost()
    with pytest.raises(LeapError, match="lost on its way") as e:
        next(iter(src.train_batches(0)))
    assert "data.num_workers" in e.value.one_line()
    src = ShardSource(eval_shards, eval_shards, load_config("tiny-synthetic", sets + ["data.num_workers=0"]),
                      DistInfo())
    assert src.val_batches().loader.timeout == 0
