"""The paid path of ``leap generate-programs --backend openai``: never pay twice for a reply leap already has, never
lose a paid reply, and say what will be asked again before asking. Every claim is proved by counting the requests a
scripted OpenAI-compatible server (tests/programs_llm_server.py) received."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from leap_cli.common import ShardSpec
from leap_cli.errors import LeapError
from leap_cli.io import read_jsonl, settings_path
from leap_cli.programs.generate import generate_programs
from tests.program_helpers import server_config as config
from tests.programs_llm_server import Reply, ScriptedServer, completion, narration_id_of
from tests.test_programs_generate import N_SEGMENTS, good_programs, workdir  # noqa: F401 (the fixtures)

REPO = Path(__file__).resolve().parents[1]


def out_file(workdir) -> Path:
    return workdir / "programs" / "val.jsonl"


def invalid(program: dict) -> dict:
    """Valid JSON, schema-valid, fails the semantic check (a verb no class has)."""
    program = json.loads(json.dumps(program))
    program["steps"][0]["verb"] = "teleport"
    return program


def good(good_programs):
    return lambda body, n: Reply(json.dumps(good_programs[narration_id_of(body)]))


def is_repair(body) -> bool:
    """A repair turn: the conversation holds an assistant reply of this clip after its clip text."""
    return body["messages"][-1]["role"] == "user" and body["messages"][-2]["role"] == "assistant" and \
        "teleport" in body["messages"][-2]["content"]


def descriptors(workdir, ids, changed=()):
    """A descriptor file of the split (one text per segment; ``changed``: ids whose text differs)."""
    path = workdir / "descriptors" / "val.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"narration_id": i, "video_id": "P01_11", "components": {},
                                        "text": f"Clip text of {i}: the hand reaches the board." +
                                        (" Then it taps it." if i in changed else "")}) + "\n" for i in ids))
    return path


def cli(workdir, base_url, *extra) -> list[str]:
    return [sys.executable, "-m", "leap_cli", "generate-programs", "--workdir", str(workdir), "--split", "val",
            "--backend", "openai", "--model", "test-model", "--base-url", base_url, "--api-key-env", "LEAP_TEST_KEY",
            "--max-retries", "0", *extra]


def cli_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
            "COLUMNS": "200"}


# --- bugs -----------------------------------------------------------------------------------------------------------

def test_a_raised_max_tokens_does_not_pay_again_for_a_held_back_segments_first_reply(workdir, good_programs):
    """Was wrong: a resume with a raised --max-tokens (the one parameter that may change on a resume) paid again for
    the cached first-round reply of a segment whose repair turn was held back: max_tokens is in the cache key, and
    only the key of the new limit was looked up."""
    def script(body, n):  # the first reply fails validation, the repair is valid
        nid = narration_id_of(body)
        return Reply(json.dumps(good_programs[nid] if n else invalid(good_programs[nid])))

    with ScriptedServer(script) as server:
        # one reply costs 0.0014 $: the cap stops the repair turn of the first segment (its first reply cached)
        s = generate_programs(config(workdir, server, concurrency=1, max_cost=0.0014))
        assert len(server.requests) == 1 and not s.statuses and s.stopped
        # raising the cap alone sends only the repair (docs: "the next run sends only the repair"); the same with a
        # higher --max-tokens must not buy the first reply again
        s = generate_programs(config(workdir, server, concurrency=1, max_cost=0.0028, max_tokens=4000))
        assert s.statuses == {"valid": 1}
        assert is_repair(server.requests[1]), "the first round was asked (and paid) again"
        assert len(server.requests) == 2


def test_the_records_a_rerun_asks_again_for_are_said_before_the_first_request(workdir, good_programs, tmp_path):
    """Was wrong: records whose clip changed (descriptors made again) were asked for again, paid, before any line
    said so: their count came only with the summary, after days of requests on EPIC's train split."""
    ids = sorted(good_programs)
    descriptors(workdir, ids)
    log = tmp_path / "leap.log"
    seen_before_first: list[str] = []
    lock = threading.Lock()

    def script(body, n):
        with lock:
            if log.exists() and not seen_before_first:  # (the CLI run's first request)
                seen_before_first.append(log.read_text())
        return Reply(json.dumps(good_programs[narration_id_of(body)]))

    with ScriptedServer(script) as server:
        assert generate_programs(config(workdir, server)).statuses == {"valid": N_SEGMENTS}
        n0 = len(server.requests)
        descriptors(workdir, ids, changed=ids[:2])  # extract made two records again, with new text
        with log.open("w") as f:
            rc = subprocess.run(cli(workdir, server.base_url, "--concurrency", "1"), env=cli_env(), stdout=f,
                                stderr=subprocess.STDOUT, timeout=120).returncode
        said = " ".join(log.read_text().split())
        assert rc == 0, said
        assert len(server.requests) - n0 == 2  # only the two changed clips are asked again (verified OK)
        assert "2 records of earlier runs were made from a clip that has changed" in said  # (said at the end)
    before = " ".join(seen_before_first[0].split())
    assert "changed" in before and "2" in before, f"nothing said before the first paid request: {before!r}"


def test_a_raised_max_tokens_takes_the_uncut_replies_of_the_earlier_limit_and_asks_the_cut_ones_again(
        workdir, good_programs):
    """The output lost (its settings file kept, at --max-tokens 2000), a rerun at 4000 answers the replies that were
    not cut at 2000 from the cache, asks again for the one that was (a higher limit may finish it), and a rerun at
    8000 after a second loss still finds them (the first fallback cached them under 4000's key too)."""
    cut_id = sorted(good_programs)[0]

    def script(body, n):
        nid = narration_id_of(body)
        if nid == cut_id and n == 0:  # the first request of that segment stops at the token limit
            data = completion(json.dumps(good_programs[nid])[:150])
            data["choices"][0]["finish_reason"] = "length"
            return Reply(raw=json.dumps(data))
        return Reply(json.dumps(good_programs[nid]))

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server, concurrency=1))
        assert s.statuses == {"valid": N_SEGMENTS - 1, "invalid": 1} and len(server.requests) == N_SEGMENTS
        out_file(workdir).unlink()  # (its settings file stays: it says 2000)
        s = generate_programs(config(workdir, server, concurrency=1, max_tokens=4000))
        assert s.statuses == {"valid": N_SEGMENTS}
        asked = [narration_id_of(b) for b in server.requests[N_SEGMENTS:]]
        assert asked == [cut_id]  # only the cut reply is bought again
        out_file(workdir).unlink()
        s = generate_programs(config(workdir, server, concurrency=1, max_tokens=8000))
        assert s.statuses == {"valid": N_SEGMENTS} and len(server.requests) == N_SEGMENTS + 1


# --- verified: no reply paid twice, none lost -------------------------------------------------------------------------

def test_a_kill_mid_repair_keeps_the_paid_first_reply(workdir, good_programs):
    """SIGKILL while a repair turn is on the wire: the first reply (paid) was committed before the repair went out,
    so the rerun sends the repair only."""
    first = sorted(good_programs)[0]
    repair_sent = threading.Event()

    def script(body, n):
        nid = narration_id_of(body)
        if n == 0:
            return Reply(json.dumps(invalid(good_programs[nid])))
        repair_sent.set()
        return Reply(json.dumps(good_programs[nid]), delay=20)

    with ScriptedServer(script) as server:
        proc = subprocess.Popen(cli(workdir, server.base_url, "--concurrency", "1", "--limit", "1"), env=cli_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert repair_sent.wait(60)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert len(server.requests) == 2 and server.calls_for(first) == 2
        server.script = good(good_programs)
        s = generate_programs(config(workdir, server, limit=1))
        assert s.statuses == {"valid": 1} and s.cache_hits == 1
        assert len(server.requests) == 3 and is_repair(server.requests[2])


def test_an_invalid_reply_is_kept_and_replayed_and_only_retry_invalid_pays_again(workdir, good_programs):
    bad_ids = sorted(good_programs)[:2]

    def script(body, n):
        nid = narration_id_of(body)
        return Reply(json.dumps(invalid(good_programs[nid]) if nid in bad_ids else good_programs[nid]))

    with ScriptedServer(script) as server:
        s = generate_programs(config(workdir, server))
        assert s.statuses == {"valid": N_SEGMENTS - 2, "invalid": 2}
        paid = len(server.requests)
        assert paid == N_SEGMENTS + 2  # (a repair turn each for the two)
        s = generate_programs(config(workdir, server, concurrency=1))  # plain rerun: nothing asked
        assert len(server.requests) == paid and s.total == 0 and s.resumed_not_valid == {"invalid": 2}
        out_file(workdir).unlink()  # the output lost: every reply (both rounds) from the cache
        s = generate_programs(config(workdir, server))
        assert len(server.requests) == paid and s.statuses == {"valid": N_SEGMENTS - 2, "invalid": 2}
        s = generate_programs(config(workdir, server, retry_invalid=True))  # asked (and paid) again, both rounds
        assert len(server.requests) == paid + 4
        assert sorted(narration_id_of(b) for b in server.requests[paid:]) == sorted(bad_ids * 2)


def test_re_extracted_descriptors_re_ask_only_the_changed_clip(workdir, good_programs):
    ids = sorted(good_programs)
    descriptors(workdir, ids)
    with ScriptedServer(good(good_programs)) as server:
        assert generate_programs(config(workdir, server)).statuses == {"valid": N_SEGMENTS}
        descriptors(workdir, ids)  # extract again, the same text
        s = generate_programs(config(workdir, server))
        assert len(server.requests) == N_SEGMENTS and s.reclipped == 0 and s.total == 0
        descriptors(workdir, ids, changed=[ids[3]])
        s = generate_programs(config(workdir, server))
        assert len(server.requests) == N_SEGMENTS + 1 and server.calls_for(ids[3]) == 2 and s.reclipped == 1
        descriptors(workdir, ids)  # back as it was: that prompt's reply is cached
        s = generate_programs(config(workdir, server))
        assert len(server.requests) == N_SEGMENTS + 1 and s.reclipped == 1 and s.cache_hits == 1


@pytest.fixture()
def two_videos(workdir):
    """The excerpt's six segments dealt over two videos (so that --shard 0/2 and 1/2 each hold some)."""
    csv = workdir / "kitchen" / "annotations" / "EPIC_100_validation.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:4] + [ln.replace(",P01_11,", ",P01_12,") for ln in lines[4:]]) + "\n")
    return workdir


def test_shards_one_after_the_other_then_merged_pay_nothing_again(two_videos, good_programs):
    workdir = two_videos
    progs = workdir / "programs"
    with ScriptedServer(good(good_programs)) as server:
        a = generate_programs(config(workdir, server, shard=ShardSpec(0, 2)))
        b = generate_programs(config(workdir, server, shard=ShardSpec(1, 2)))
        assert sum(a.statuses.values()) and sum(b.statuses.values())
        assert len(server.requests) == N_SEGMENTS
        # an unsharded run beside the parts is refused before it asks anything (it would do the whole split)
        with pytest.raises(LeapError, match="parts of it"):
            generate_programs(config(workdir, server))
        assert len(server.requests) == N_SEGMENTS
        # another --out over the same split is answered from the shared cache
        s = generate_programs(config(workdir, server, out=progs / "other.jsonl"))
        assert s.cache_hits == N_SEGMENTS and len(server.requests) == N_SEGMENTS
        # merged by concatenation (as the refusal says): the rerun resumes them all
        (progs / "val.jsonl").write_text("".join(p.read_text() for p in sorted(progs.glob("val.shard*of2.jsonl"))))
        s = generate_programs(config(workdir, server))
        assert s.resumed == N_SEGMENTS and s.total == 0 and len(server.requests) == N_SEGMENTS


def test_options_that_change_no_record_change_nothing_paid(workdir, good_programs):
    """Endpoint, concurrency, retries, timeout and prices may change freely: a rerun after the output was lost is
    answered from the cache, whatever they are."""
    with ScriptedServer(good(good_programs)) as server:
        generate_programs(config(workdir, server))
        assert len(server.requests) == N_SEGMENTS
    with ScriptedServer(lambda body, n: Reply(status=500)) as other:  # another endpoint (down: it must not be asked)
        out_file(workdir).unlink()
        s = generate_programs(config(workdir, other, concurrency=1, max_retries=0, timeout=9.0, price_in=5.0,
                                     price_out=9.0, check_process=False))
        assert not other.requests and s.cache_hits == N_SEGMENTS and s.statuses == {"valid": N_SEGMENTS}


@pytest.mark.parametrize("change", ["temperature", "k", "model", "response_format", "system_prompt", "exemplars",
                                    "extra_body", "lower_max_tokens"])
def test_options_that_change_the_records_are_refused_before_any_request(workdir, good_programs, tmp_path, change):
    with ScriptedServer(good(good_programs)) as server:
        generate_programs(config(workdir, server, limit=3))
        before = json.loads(settings_path(out_file(workdir)).read_text())
        if change == "system_prompt":
            sp = tmp_path / "system.md"
            sp.write_text((REPO / "leap_cli/resources/prompts/system.md").read_text() + "\nBe brief.\n")
            kw = {"system_prompt": sp}
        elif change == "exemplars":
            ex = tmp_path / "exemplars"
            shutil.copytree(REPO / "leap_cli/resources/prompts/exemplars", ex)
            sorted(ex.glob("*.json"))[-1].unlink()
            kw = {"exemplars": ex}
        else:
            kw = {"temperature": {"temperature": 0.7}, "k": {"k": 2}, "model": {"model": "other-model"},
                  "response_format": {"response_format": "json_object"},
                  "extra_body": {"extra_body": {"seed": 7}}, "lower_max_tokens": {"max_tokens": 1000}}[change]
        with pytest.raises(LeapError, match="other settings"):
            generate_programs(config(workdir, server, **kw))
        assert len(server.requests) == 3  # nothing asked
        assert json.loads(settings_path(out_file(workdir)).read_text()) == before
        assert len(read_jsonl(out_file(workdir))) == 3
