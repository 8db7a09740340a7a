"""Attacks on `leap generate-programs --dry-run --backend openai`'s estimate (``generate.estimate_cost``,
``programs/estimate.py``): its "N requests" (and "answered by the program cache") against the requests a scripted
OpenAI-compatible server then receives from the real run with the same options, in each state an output can be in;
and the dry run's exit, its word on a refused output, and the files it leaves as they were."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from leap_cli.common import ShardSpec
from leap_cli.programs.generate import estimate_cost, generate_programs
from tests.program_helpers import server_config as config
from tests.procs import leap_here
from tests.programs_llm_server import Reply, ScriptedServer, narration_id_of
from tests.test_attack_s52_journal import PICK, _workdir
from tests.test_programs_estimate import offline_config
from tests.test_programs_generate import N_SEGMENTS, good_programs, workdir  # noqa: F401 (the fixtures)

REPO = Path(__file__).resolve().parents[1]


def counts(wd, **kw) -> tuple[int, int]:
    """(requests, answered by the program cache) of the estimate."""
    est = estimate_cost(offline_config(wd, **kw))
    return est.asked, est.answered


def real(wd, programs, script=None, **kw) -> int:
    """The requests the real run with these options sends to a scripted server (replies that validate)."""
    script = script or (lambda body, n: Reply(json.dumps(programs[narration_id_of(body)])))
    with ScriptedServer(script) as server:
        generate_programs(config(wd, server, **kw))
    return len(server.requests)


def test_fresh_limited_resumed_and_done_outputs_are_estimated_as_the_run_asks(workdir, good_programs):  # noqa: F811
    """A user reads "N requests" before each run of a pipeline that goes in steps (--limit, then the rest, then
    again): each must be what the endpoint then bills."""
    assert counts(workdir, limit=2) == (2, 0)
    assert real(workdir, good_programs, limit=2) == 2
    assert counts(workdir) == (N_SEGMENTS - 2, 0)
    assert real(workdir, good_programs) == N_SEGMENTS - 2
    est = estimate_cost(offline_config(workdir))
    assert (est.pending, est.asked) == (0, 0) and "nothing pending" in est.lines()[0]
    assert real(workdir, good_programs) == 0


def test_a_lost_output_and_a_raised_max_tokens_count_the_cache_as_the_run_reads_it(workdir, good_programs):  # noqa: F811
    """The output deleted (its cache kept) and --max-tokens raised on the rerun: a reply not cut at the old limit is
    answered from the cache by the run; the estimate must count it free too (not as a paid request), and --limit
    cuts the answered ones as the run does."""
    assert real(workdir, good_programs, limit=3) == 3
    (workdir / "programs" / "val.jsonl").unlink()
    assert counts(workdir, limit=2) == (0, 2)  # --limit 2: both answered by the cache
    assert counts(workdir, max_tokens=4000) == (N_SEGMENTS - 3, 3)
    assert real(workdir, good_programs, max_tokens=4000) == N_SEGMENTS - 3


@pytest.mark.parametrize("change, answered", [(dict(model="another-model"), 0), (dict(k=2), 0),
                                               (dict(temperature=0.5), 0), (dict(repair_rounds=0), 3)])
def test_a_refused_output_is_estimated_as_the_force_run_asks(workdir, good_programs, change, answered):  # noqa: F811
    """Other settings than the output's: the run is refused, and the estimate's figures are said to be --force's.
    They must be what --force then pays: every segment, less the prompts whose cache key the change keeps
    (--repair-rounds is in the output's settings, not in the request: its 3 replies are answered unpaid)."""
    assert real(workdir, good_programs, limit=3) == 3
    refused = estimate_cost(offline_config(workdir, **change))
    assert refused.refused and "was started with other settings" in refused.refused
    forced = estimate_cost(offline_config(workdir, force=True, **change))
    assert forced.refused is None
    assert (refused.asked, refused.answered) == (forced.asked, forced.answered) == (N_SEGMENTS - answered, answered)
    assert real(workdir, good_programs, force=True, **change) == N_SEGMENTS - answered


def test_retry_invalid_and_retry_errors_are_estimated_as_the_run_asks(workdir, good_programs):  # noqa: F811
    """--retry-invalid asks again (not from the cache) for invalid records; --retry-errors for failed ones, also
    where the output is lost and only the cache is left (the valid ones free, the failed one paid)."""
    bad, failed = sorted(good_programs)[:2]

    def script(body, n):
        nid = narration_id_of(body)
        if nid == failed:
            return Reply(status=400)
        program = json.loads(json.dumps(good_programs[nid]))
        if nid == bad:
            program["steps"][0]["verb"] = "teleport"
        return Reply(json.dumps(program))

    assert real(workdir, good_programs, script=script, repair_rounds=0) == N_SEGMENTS
    assert counts(workdir, repair_rounds=0) == (0, 0)
    assert counts(workdir, repair_rounds=0, retry_invalid=True) == (1, 0)
    assert counts(workdir, repair_rounds=0, retry_failed=True) == (1, 0)
    assert counts(workdir, repair_rounds=0, retry_failed=True, retry_invalid=True) == (2, 0)
    assert real(workdir, good_programs, repair_rounds=0, retry_invalid=True) == 1
    (workdir / "programs" / "val.jsonl").unlink()
    assert counts(workdir, repair_rounds=0, retry_failed=True) == (1, N_SEGMENTS - 1)
    assert real(workdir, good_programs, repair_rounds=0, retry_failed=True) == 1


@pytest.fixture()
def two_video_workdir(tmp_path):
    """A workdir of 12 clips of 2 videos (a --shard i/2 part is one video) and a valid program per clip."""
    from leap_cli.epic.annotations import read_segments
    from leap_cli.epic.classes import ClassVocab
    from leap_cli.programs.offline import offline_program
    from leap_cli.programs.prompt import clip_info, load_exemplars, narration_record

    data = REPO / "tests" / "data"
    src = (data / "epic" / "EPIC_100_validation_excerpt.csv").read_text().splitlines()
    csv = "\n".join([src[0]] + [src[i] for i in PICK]) + "\n"
    wd = _workdir(tmp_path / "wd", csv)
    verbs = ClassVocab.from_csv(data / "epic100" / "EPIC_100_verb_classes.csv", "verb")
    nouns = ClassVocab.from_csv(data / "epic100" / "EPIC_100_noun_classes.csv", "noun")
    ex = load_exemplars()
    programs = {s.narration_id: offline_program(clip_info(narration_record(s), s), ex, verbs, nouns)
                for s in read_segments(wd / "kitchen" / "annotations" / "EPIC_100_validation.csv")}
    return wd, programs


def test_shard_parts_and_their_merge_are_estimated_as_the_run_asks(two_video_workdir, monkeypatch):
    """--shard i/n parts: each part's estimate is its own video's requests; beside unmerged parts a run without
    --shard is refused and its --force resumes nothing of theirs but the cache answers them; the merge beside the
    parts is a resume with nothing pending."""
    wd, programs = two_video_workdir
    monkeypatch.setenv("LEAP_TEST_KEY", "sk-test")
    p0, p1 = ShardSpec(0, 2), ShardSpec(1, 2)
    assert counts(wd, shard=p0) == (6, 0) and real(wd, programs, shard=p0) == 6
    assert counts(wd, shard=p1, limit=2) == (2, 0) and real(wd, programs, shard=p1, limit=2) == 2
    whole = estimate_cost(offline_config(wd))  # unsharded beside parts: refused, --force counted
    assert whole.refused and "parts of it from --shard runs" in whole.refused
    assert (whole.asked, whole.answered) == counts(wd, force=True) == (4, 8)
    assert counts(wd, shard=p1) == (4, 0) and real(wd, programs, shard=p1) == 4
    folder = wd / "programs"
    (folder / "val.jsonl").write_bytes((folder / "val.shard0of2.jsonl").read_bytes()
                                       + (folder / "val.shard1of2.jsonl").read_bytes())
    assert counts(wd) == (0, 0) and real(wd, programs) == 0
    # another count of parts beside these: refused with or without --force, as the run is
    other = estimate_cost(offline_config(wd, shard=ShardSpec(0, 3), force=True))
    assert other.refused and "parts of --shard i/2 are beside it" in other.refused


@pytest.fixture
def _leap(monkeypatch, capsys):
    """``leap generate-programs --dry-run ...`` of val through an API key that is not set, in this process."""
    leap = leap_here(monkeypatch, capsys)
    monkeypatch.delenv("LEAP_NO_SUCH_KEY", raising=False)

    def run(wd, *extra, model="test-model"):
        return leap("generate-programs", "--workdir", wd, "--split", "val", "--backend", "openai", "--model", model,
                    "--api-key-env", "LEAP_NO_SUCH_KEY", *extra)

    return run


def _snapshot(wd: Path) -> dict:
    return {str(p.relative_to(wd)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(wd.rglob("*"))
            if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


def test_the_dry_run_says_a_refusal_exits_0_and_changes_no_file_even_under_force(workdir, good_programs, _leap):  # noqa: F811
    """`--dry-run --model other` on a half-made output: exit 0, the refusal said once before the figures of --force;
    with --force the figures without a word. Neither may set the output aside (the real --force does), nor write,
    touch or add any file of the workdir (the cache's -wal/-shm aside)."""
    assert real(workdir, good_programs, limit=3) == 3
    before = _snapshot(workdir)
    r = _leap(workdir, "--dry-run", model="another-model")
    said = " ".join(r.stderr.split())
    assert r.returncode == 0, r.stderr
    assert said.count("a run with these options is refused") == 1 and "model: 'test-model' -> 'another-model'" in said
    assert said.index("is refused") < said.index(f"estimate: {N_SEGMENTS} segments of val pending: {N_SEGMENTS} "
                                                 "requests")
    r = _leap(workdir, "--dry-run", "--force", model="another-model")
    said = " ".join(r.stderr.split())
    assert r.returncode == 0 and "refused" not in said
    assert f"pending: {N_SEGMENTS} requests" in said
    assert _snapshot(workdir) == before
    assert not list((workdir / "programs").glob("*before-force*"))


def test_the_dry_run_of_a_finished_output_with_its_settings_exits_2_and_names_narration_id(workdir, good_programs, _leap):  # noqa: F811
    """Nothing pending under the same settings: the dry run has no prompt to print and says so (exit 2, with the
    way to see one); with --narration-id it prints that prompt and the estimate's "nothing pending" (exit 0)."""
    assert real(workdir, good_programs) == N_SEGMENTS
    r = _leap(workdir, "--dry-run")
    assert r.returncode == 2 and "every segment of the input has its record" in r.stderr
    assert "--narration-id" in r.stderr
    r = _leap(workdir, "--dry-run", "--narration-id", sorted(good_programs)[0])
    assert r.returncode == 0, r.stderr
    assert "nothing pending in val: a run would ask for nothing" in " ".join(r.stderr.split())


def test_the_dry_run_of_a_finished_output_under_force_with_other_settings_estimates_the_run(workdir, good_programs, _leap):  # noqa: F811
    """The whole split done with one model; the user checks what `--force --model other` would cost before paying
    it: the run sets the output aside and asks for every segment, but the dry run said every segment has its
    record (exit 2) and printed no estimate. Without --force it said the same instead of the run's refusal.
    Was wrong: dry_run() chose its segment from the output's records without asking whether the run starts over."""
    assert real(workdir, good_programs) == N_SEGMENTS
    r = _leap(workdir, "--dry-run", "--force", model="another-model")
    assert r.returncode == 0, r.stderr
    assert f"pending: {N_SEGMENTS} requests" in " ".join(r.stderr.split())
    r = _leap(workdir, "--dry-run", model="another-model")
    assert r.returncode == 0 and "a run with these options is refused" in " ".join(r.stderr.split())
    assert real(workdir, good_programs, model="another-model", force=True) == N_SEGMENTS


def test_an_output_that_is_only_its_settings_file_is_estimated_as_the_run_asks(workdir, good_programs, _leap):  # noqa: F811
    """After --batch-file (only the settings file, no record yet): the same settings are every segment, as the run
    then asks; another --model is refused (Batch requests of the old settings may be out), as the run refuses it,
    with --force's figures; the dry runs write nothing."""
    r = _leap(workdir, "--batch-file", str(workdir / "batch.jsonl"), "--limit", "2")
    assert r.returncode == 0, r.stderr
    assert (workdir / "programs" / "val.jsonl.settings.json").exists()
    assert not (workdir / "programs" / "val.jsonl").exists()
    before = _snapshot(workdir)
    assert counts(workdir) == (N_SEGMENTS, 0)
    other = estimate_cost(offline_config(workdir, model="another-model"))
    assert other.refused and "Batch requests written with those settings" in other.refused
    assert (other.asked, other.answered) == counts(workdir, model="another-model", force=True) == (N_SEGMENTS, 0)
    assert _leap(workdir, "--dry-run", "--force", model="another-model").returncode == 0
    assert _snapshot(workdir) == before
    with pytest.raises(Exception, match="Batch requests written with those settings"):
        real(workdir, good_programs, model="another-model")
    assert real(workdir, good_programs) == N_SEGMENTS


def test_descriptors_extracted_again_with_other_settings_are_estimated_as_the_force_run_asks(workdir, good_programs):  # noqa: F811
    """extract ran again with other settings, changing 2 of the 6 clip texts: the run is refused, and says --force
    asks only for the prompts that changed; the estimate's figures (refused, and with --force) must be the 2 the
    forced run then sends, the other 4 answered by the cache."""
    from leap_cli.epic.annotations import read_segments
    from leap_cli.programs.prompt import narration_record

    records = [narration_record(s) for s in read_segments(workdir / "kitchen" / "annotations"
                                                           / "EPIC_100_validation.csv")]
    folder = workdir / "descriptors"
    folder.mkdir()

    def extract(fps: int) -> None:
        (folder / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (folder / "val.jsonl.settings.json").write_text(json.dumps({"settings": {"fps": fps}, "split": "val"}))

    extract(2)
    assert real(workdir, good_programs) == N_SEGMENTS
    for r in records[:2]:
        r["text"] = r["text"] + " The camera moves."
    extract(4)
    refused = estimate_cost(offline_config(workdir))
    assert refused.refused and "descriptors were extracted again" in refused.refused
    assert (refused.asked, refused.answered) == counts(workdir, force=True) == (2, N_SEGMENTS - 2)
    assert real(workdir, good_programs, force=True) == 2
