"""The program-generation stage (``leap generate-programs``): one LLM (or offline) call per segment.

Input: descriptor records ``{workdir}/descriptors/{split}.jsonl`` (or ``--descriptors FILE``):
``{"narration_id", "video_id", "start", "stop", "components": {"narration"|"audio"|"camera"|"objects"|"hands":
{"status": "ok"|"unavailable"|"error", "source", "data", "text"}}, "text"}``. When that file does not exist,
narration-only records are built from the ``--data`` annotations (and the summary says so).

Output: ``{workdir}/programs/{split}.jsonl`` (``.shardIofN`` before ``.jsonl`` with ``--shard``), one line per segment:
``{"narration_id", "status": "valid"|"invalid"|"failed", "program": {...}|null, "errors": [{"pointer", "message"}],
"provenance": {"backend", "model", "prompt_hash", "attempts", "usage": {"prompt_tokens", "completion_tokens"[,
"cached_tokens"]}, "seconds", "created", "rounds", "cached"}}``. The file is appended record by record and resumes; replies are
cached in ``{workdir}/programs/cache.sqlite`` (with the call log), so a re-run makes no request.

A reply that is not JSON or fails validation gets ``repair_rounds`` (default 1) follow-up turns quoting the
findings (none for a reply cut at the token limit or one whose model only thought: another turn would end the
same way); if it still fails the record is ``invalid`` with its findings. ``failed``: no reply (the request
failed for good, a 200 that carried an error or no message, or nothing to describe).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import shutil
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from leap_cli.common import (ShardSpec, counted, dataset_root, descriptor_problem, merged_input, normalize_split,
                             rerun, usable_cpus)
from leap_cli.epic.annotations import Annotations, Segment, made_from_other_annotations, open_annotations
from leap_cli.epic.classes import ClassVocab
from leap_cli.errors import LeapError
from leap_cli.io import (LOW_DISK_BYTES, JsonlAppender, MixedParts, atomic_write_json, check_settings, iter_jsonl,
                         merge_command, part_of, read_jsonl, settings_path, short_of_space, stable_hash,
                         shard_parts, shell_word, stored_settings, writer_of)
from leap_cli.programs.checker import RemoteChecker
from leap_cli.programs.estimate import (CostEstimate, cacheable, chat_tokens, exemplar_reply_tokens,
                                       measured_repairs, repair_bound, text_tokens)
from leap_cli.programs.backends import (Backend, BackendError, Completion, Halted, NoApiKey, OfflineBackend,
                                       OpenAIBackend, Request, RetryPolicy, check_extra_body)
from leap_cli.programs.prompt import (DEFAULT_K, PROMPT_VERSION, ClipInfo, Prompt, PromptBuilder, clip_info,
                                      load_exemplars, load_system_prompt, narration_record)
from leap_cli.programs.provenance import clip_hash_of, descriptor_settings
from leap_cli.programs.reply import FILTERED, repair_futile, verify_reply
from leap_cli.programs.redact import redact, redact_logs
from leap_cli.programs.schema import Finding, strict_schema
from leap_cli.programs.store import ProgramStore, cache_key
from leap_cli.programs.validate import DEFAULT_MAX_SUB_ACTIONS, Labels

log = logging.getLogger(__name__)
redact_logs(log)
CHECK_PROCESS_MIN = 256  # segments to do before a run starts the checker process (GenerateConfig.check_process)
WAITING_EVERY = 1.0  # seconds between looks at what a stage with no reply coming waits for (a held server)
STOP_GRACE = 20.0  # most seconds the requests in flight get after Ctrl-C/SIGTERM (Slurm's KillWait is 30 s)


@dataclass(frozen=True)
class GenerateConfig:
    workdir: Path = Path("leap-work")
    split: str = "train"
    data: Path | None = None
    annotations: Path | None = None
    descriptors: Path | None = None
    out: Path | None = None
    backend: str = "offline"
    model: str = "gpt-4o-mini"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    timeout: float = 60.0
    max_retries: int = 5
    backoff: float = 1.0
    max_backoff: float = 60.0
    response_format: str = "auto"
    temperature: float = 0.0
    max_tokens: int = 2000
    extra_body: dict | None = None  # more request fields, as given (--extra-body), e.g. {"reasoning_effort": "low"}
    k: int = DEFAULT_K
    repair_rounds: int = 1
    limit: int | None = None
    shard: ShardSpec = ShardSpec()
    price_in: float = 0.0  # $ per 1M prompt tokens
    price_out: float = 0.0  # $ per 1M completion tokens
    price_cached_in: float | None = None  # $ per 1M prompt tokens read from the provider's prompt cache (None: price_in)
    max_cost: float | None = None  # USD, for this output file across runs (the ledger in cache.sqlite)
    exemplars: Path | None = None
    system_prompt: Path | None = None
    max_sub_actions: int = DEFAULT_MAX_SUB_ACTIONS
    retry_failed: bool = False  # --retry-errors: redo the records whose status is failed (no reply)
    retry_invalid: bool = False  # --retry-invalid: ask again for the invalid ones (their cached replies unused)
    retry_repairs: bool = True  # with retry_failed: also the invalid records whose repair turn's request failed
    force: bool = False  # start the output over when it was made with other settings (output_settings)
    # a reply's checks in a child process (checker.py); None: where it pays (an HTTP backend, concurrency >= 8,
    # two CPUs or more, at least CHECK_PROCESS_MIN segments to do)
    check_process: bool | None = None

    def __post_init__(self) -> None:
        check_extra_body(self.extra_body)  # one line for a body that is no object or would replace the messages

    def redo(self, record: dict) -> bool:
        """Whether a record already in the output is done again (``--retry-errors``: the failed records, and the
        invalid ones whose repair turn's request failed; ``--retry-invalid``: every invalid one)."""
        kind = not_valid_kind(record)
        return ((self.retry_failed and (kind == "failed" or (kind == "repair" and self.retry_repairs)))
                or (self.retry_invalid and kind in ("invalid", "repair")))

    @property
    def split_name(self) -> str:
        return normalize_split(self.split)

    @property
    def descriptors_path(self) -> Path:
        """``--descriptors``, else WORKDIR/descriptors/SPLIT.jsonl."""
        return self.descriptors or self.workdir / "descriptors" / f"{self.split_name}.jsonl"

    @property
    def out_path(self) -> Path:
        return self.out or self.workdir / "programs" / f"{self.split_name}{self.shard.suffix}.jsonl"

    @property
    def cache_path(self) -> Path:
        return self.workdir / "programs" / "cache.sqlite"

    def cost(self, usage: dict) -> float:
        cached = min(usage.get("cached_tokens", 0), usage.get("prompt_tokens", 0))
        cached_price = self.price_in if self.price_cached_in is None else self.price_cached_in
        return ((usage.get("prompt_tokens", 0) - cached) * self.price_in + cached * cached_price
                + usage.get("completion_tokens", 0) * self.price_out) / 1e6


@dataclass
class GenerateSummary:
    out: Path
    source: str
    total: int = 0
    resumed: int = 0
    resumed_not_valid: Counter = field(default_factory=Counter)  # failed / invalid among the resumed
    reclipped: int = 0  # records of earlier runs made from a clip that has changed since: asked again
    statuses: Counter = field(default_factory=Counter)
    not_valid: Counter = field(default_factory=Counter)  # this run's records by ``not_valid_kind``
    requests: int = 0  # HTTP attempts made in this run (retries included)
    cache_hits: int = 0
    usage: dict = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0})
    cost: float = 0.0
    spent_before: float = 0.0  # USD the ledger held for this output file before this run
    seconds: float = 0.0
    stopped: str | None = None
    left_out: str | None = None  # the segments made from a video replaced since, not asked for (``left_out_line``)
    failures: list[tuple[str, str]] = field(default_factory=list)
    rate_limited: int = 0  # requests the endpoint refused with 429
    concurrency: int = 0  # --concurrency of the run
    lowest_concurrency: int | None = None  # the fewest requests in flight the backend cut to after 429s
    steady_concurrency: int | None = None  # the most in flight that went a window without a 429, below any later 429's
    held_seconds: float = 0.0  # time the server did not answer and was held (asked one request at a time)
    timed_out: int = 0  # requests abandoned at --timeout (the endpoint may bill them)
    interrupted: int | None = None  # the signal that stopped the run (SIGINT, SIGTERM), with reraise=False
    error: LeapError | None = None  # with reraise=False: what stopped the stage (a key refused, a server down)


@dataclass
class Inputs:
    records: list[dict]
    segments: dict[str, Segment]
    verbs: ClassVocab
    nouns: ClassVocab
    source: str
    # the settings the descriptor records were extracted with (their settings file's; None: it has none), or
    # "narration-only" (no descriptor file): part of the output's settings
    extracted: dict | str | None = "narration-only"
    # descriptor records made from other annotations than the split CSV holds now, left out (id -> what differs)
    stale: dict[str, str] = field(default_factory=dict)
    # descriptor records made from an MP4 whose size differs now, left out of the runs that ask for programs
    # (``replaced_videos``): id -> (the MP4, the size the record keeps, the size now)
    replaced: dict[str, tuple[Path, int, int]] = field(default_factory=dict)
    extract_command: str = ""  # the leap extract that makes them again (``left_out_line``)
    extract_merge: str = ""  # then, of a file merged from extract's --shard parts, the merge that takes them up


def clip_hash(inputs: Inputs, record: dict) -> str:
    """What a program was made from besides the output's settings, kept in its provenance (``clip_hash``): the
    descriptor record's text as extract wrote it (not a narration-only record's: leap renders it from the labels)
    and the segment's annotation. Data only, no rendering of leap's: a newer leap that builds its prompts otherwise
    does not see every clip as changed (and ask for every program again)."""
    text = None if inputs.extracted == "narration-only" else record.get("text")
    return clip_hash_of(text, inputs.segments.get(record["narration_id"]))


def clip_changed(inputs: Inputs, builder: PromptBuilder) -> Callable[[dict], bool]:
    """A test of an output record: whether the clip it was made from (``provenance.clip_hash``) is no longer the
    input's (extract made the descriptor record again, from other annotations or with a component fixed, or the
    segment's annotation changed). A record of a leap that kept no clip hash is compared by its prompt's hash, where
    its descriptor record was made again since (a record of that leap has no annotation_hash; the others are as
    they were) or the input is narration-only (made from the CSV as it is now); records of segments not in the input
    are taken as they are."""
    by_id = {r["narration_id"]: r for r in inputs.records}

    def changed(record: dict) -> bool:
        prov = record.get("provenance")
        source = by_id.get(record.get("narration_id"))
        if not isinstance(prov, dict) or source is None:
            return False
        if "clip_hash" in prov:
            return prov["clip_hash"] != clip_hash(inputs, source)
        if "annotation_hash" not in source and inputs.extracted != "narration-only":
            return False  # (a narration-only record is made from the CSV as it is now: its prompt is compared)
        info = clip_info(source, inputs.segments.get(source["narration_id"]))
        return prov.get("prompt_hash") != builder.prompt(info).hash[:16]

    return changed


def not_valid_kind(record: dict) -> str | None:
    """"failed", "invalid", or "repair" (invalid with a repair turn still to ask: its request failed,
    ``provenance.repair_failed``, or it was never asked, ``repair_pending``: a Batch result, or a record made from the
    cache for a Batch file; ``--retry-errors`` sends that turn) for a record that is not valid; None for a valid
    one."""
    status = record.get("status")
    prov = record.get("provenance") or {}
    if status == "invalid" and isinstance(prov, dict) and (prov.get("repair_failed") or prov.get("repair_pending")):
        return "repair"
    return status if status in ("failed", "invalid") else None


def output_records(cfg: GenerateConfig, *, programs: bool = True) -> dict[str, dict]:
    """The output's record of each narration id, as a run resumes it: the last line of a key (a file holding one
    twice, from a run killed before its rewrite, is what the next run rewrites to its last lines). ``programs``
    False leaves each record's program out (most of its memory: 1.9 GB for EPIC's train split with them)."""
    if not cfg.out_path.exists():
        return {}
    return {r["narration_id"]: r if programs else {k: v for k, v in r.items() if k != "program"}
            for _, r in iter_jsonl(cfg.out_path) if isinstance(r, dict) and isinstance(r.get("narration_id"), str)}


def disk_short(cfg: GenerateConfig, *, before: bool = True) -> LeapError | None:
    """The refusal to ask for more (paid) programs while the output's or the cache's disk is nearly full
    (``io.LOW_DISK_BYTES``): a reply that cannot be written is paid again by the next run. ``before``: no request
    of this run was sent yet."""
    low = short_of_space(dict.fromkeys([cfg.out_path.parent, cfg.cache_path.parent]))
    if low is None:
        return None
    folder, free = low
    done = "no request was sent" if before else "no more requests were sent (the programs so far are kept)"
    return LeapError(f"only {free / 2**20:.1f} MiB free on the disk holding this folder: {done}", path=folder,
                     fix=f"free disk space there (leap asks for programs only with {LOW_DISK_BYTES >> 20} MiB free), "
                         f"then run {rerun('the same command again')}: it asks only for what is missing")


def batch_pending_path(out: Path) -> Path:
    """``OUT.batch.json`` beside a programs output: the segments of Batch requests written for it (--batch-file)
    whose results are not ingested yet, and when and where they were written. It only feeds a warning (and
    build-shards' note): deleting it is safe."""
    return out.with_name(out.name + ".batch.json")


def batch_pending(out: Path) -> dict:
    """``batch_pending_path``'s ``ids``, ``files`` and ``written``; empty where there is none, or it cannot be read
    (a hand-edited or damaged file is not worth stopping a stage for)."""
    try:
        data = json.loads(batch_pending_path(out).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None
    data = data if isinstance(data, dict) else {}
    ids, files = data.get("ids"), data.get("files")
    return {"ids": [i for i in ids if isinstance(i, str)] if isinstance(ids, list) else [],
            "files": [f for f in files if isinstance(f, str)] if isinstance(files, list) else [],
            "written": str(data.get("written", "?"))}


def warn_batch_pending(out: Path, asked: set[str], what: str) -> None:
    """Warn where ``asked`` (the segments this run pays for: not answered from the cache) holds segments of Batch
    requests written for ``out`` and not ingested yet: if that batch was submitted, they are paid twice."""
    data = batch_pending(out)
    if not (k := len(asked.intersection(data["ids"]))):
        return
    log.warning("%s asks for %d segment%s whose Batch requests were written for %s (%s, to %s) and are not ingested "
                "yet: if that batch was submitted, %s paid twice; ingest its results first (%s lists them; delete it "
                "if that batch was never submitted)", what, k, "s" if k != 1 else "", out, data["written"],
                (data["files"][0] + (f" and {len(data['files']) - 1} more" if len(data["files"]) > 1 else ""))
                if data["files"] else "?", "it is" if k == 1 else "they are", batch_pending_path(out).name)


def update_batch_pending(out: Path, *, add: tuple[list[str], list[str]] | None = None,
                         drop: set[str] = frozenset(), removed: set[str] = frozenset()) -> None:
    """Record the segments of the requests a --batch-file wrote (``add``: their ids and the files; ``removed``:
    files of an earlier --batch-file it deleted), or take off those answered (``drop``); the file goes once none
    is left. A failure to write it is warned of, not raised (it only feeds a warning)."""
    data = batch_pending(out)
    ids = [i for i in data["ids"] if i not in drop]
    files = [f for f in data["files"] if f not in removed]
    if add is not None:
        ids = list(dict.fromkeys(ids + add[0]))
        files = list(dict.fromkeys(files + add[1]))
        data["written"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path = batch_pending_path(out)
    try:
        if not ids:
            if path.is_file() or path.is_symlink():
                path.unlink()
        elif ids != data["ids"] or add is not None:
            atomic_write_json(path, {"written": data["written"], "files": files, "ids": ids}, indent=None)
    except (OSError, LeapError) as e:
        log.warning("%s could not be written (%s): %s", path, getattr(e, "strerror", None) or e,
                    "a run that asks again for the segments of Batch requests out is not warned" if add is not None
                    else "it still lists segments answered since, which a later run may be warned of (the next "
                         "ingest or run that can write it takes them off)")


def pending_records(cfg: GenerateConfig, inputs: Inputs, builder: PromptBuilder, *, anew: bool = False
                    ) -> tuple[list[dict], dict[str, str], set[str]]:
    """(pending, kept, reclipped): the input's records a run makes (each narration id once, in the input's order;
    before --limit), and ``kept_and_redone``'s two, read from the output without writing anything (``anew``: an
    output the run starts over, whose records count for nothing)."""
    kept, reclipped = ({}, set()) if anew else kept_and_redone(cfg, inputs, builder)
    seen: set[str] = set()  # (an id twice in the input is made once)
    pending = [r for r in inputs.records if r["narration_id"] not in kept
               and not (r["narration_id"] in seen or seen.add(r["narration_id"]))]
    return pending, kept, reclipped


def kept_and_redone(cfg: GenerateConfig, inputs: Inputs, builder: PromptBuilder) -> tuple[dict[str, str], set[str]]:
    """(kept, reclipped): the narration ids whose record in the output a run keeps (with its status), and those it
    makes again
    because their clip changed since (``clip_changed``); the rest of the output's (``cfg.redo``: --retry-errors,
    --retry-invalid) and the input's segments without a record are made too. A live run finds the same as it opens
    the output (``_generate``'s test of each line)."""
    changed = clip_changed(inputs, builder)
    kept: dict[str, str] = {}
    reclipped: set[str] = set()
    for nid, r in output_records(cfg, programs=False).items():
        if changed(r):
            reclipped.add(nid)
        elif not cfg.redo(r):
            kept[nid] = not_valid_kind(r) or r.get("status")
    return kept, reclipped


def load_inputs(cfg: GenerateConfig, narration_id: str | None = None, *, asking: bool = True) -> Inputs:
    """Descriptor records of the split (or narration-only ones from the annotations), labels and classes; with
    ``narration_id``, that segment's record alone (a dry run's one prompt), the descriptor file's other lines and
    the split CSV's other rows not parsed: the checks of the whole files are the run's (a damaged line elsewhere is
    not seen). ``asking``: for a run that asks for programs (a live one, --batch-file, their estimate), which leaves
    out the records made from a video replaced since (``replaced_videos``); an ingest takes the replies paid for."""
    ann = annotations_for(cfg)
    if ann is None:
        raise LeapError("the EPIC class files are needed to resolve verbs and objects",
                        path=dataset_root(cfg.workdir) / "annotations",
                        fix="pass --data ROOT (holding annotations/) or --annotations DIR")
    split = cfg.split_name
    # its row alone (EPIC's 67k rows took a second); a --shard part reads them all: its videos are dealt in the
    # order of the split's
    if ann.has_split(split) and narration_id is not None and cfg.shard.count == 1:
        seg = ann.segment(split, narration_id)
        if seg is None:
            raise LeapError(f"{narration_id} is not a segment of split {split}", path=ann.split_path(split),
                            fix="check --split and the narration id")
        segments = {narration_id: seg}
    else:
        segments = {s.narration_id: s for s in ann.segments(split)} if ann.has_split(split) else {}
    # (a path given is checked as the default is: parts beside it, not merged, or merged too early)
    path = cfg.descriptors_path
    if cfg.descriptors is None and cfg.shard.count > 1 and not path.exists():
        # extract's part of this run's --shard beside no merge: all this part needs (a job array's step i of
        # both stages), as --descriptors would give it
        mine = path.with_name(f"{split}{cfg.shard.suffix}.jsonl")
        if not mine.is_file() and any(n == cfg.shard.count for _, n, _ in shard_parts(path)):
            # (other parts of this count there, not this one: "merge them once every part is done" named none)
            raise LeapError(f"extract's part {cfg.shard.index}/{cfg.shard.count} of the {split} split is not there "
                            "(its other parts are)", path=mine,
                            fix=f"run leap extract --split {split} --shard {cfg.shard.index}/{cfg.shard.count} first "
                                "(with the options of the other parts)")
        path = mine if mine.is_file() else path
    path = merged_input(path)
    part = part_of(path)
    if part is not None and cfg.shard.count > 1 and part != (cfg.shard.index, cfg.shard.count):
        # (an array script's index off by one: an empty part, exit 0, and the merge lacked a part's programs)
        mine = path.with_name(path.name.replace(f".shard{part[0]}of{part[1]}", cfg.shard.suffix))
        raise LeapError(f"is extract's part {part[0]}/{part[1]}, and this run is --shard {cfg.shard.index}/"
                        f"{cfg.shard.count}: it holds other videos than this part's", path=path,
                        fix=f"pass --descriptors {shell_word(mine)} (the part of this run's index), or the merged file"
                        if part[1] == cfg.shard.count else
                        f"run the parts as extract did (--shard i/{part[1]} with its part i), or give the merged file")
    extracted: dict | str | None = "narration-only"
    stale: dict[str, str] = {}
    if path.exists():
        # (the id as JsonlAppender writes it, or ASCII-escaped: a line holding neither is not its record)
        holding = None if narration_id is None else {json.dumps(narration_id, ensure_ascii=a).encode()
                                                     for a in (False, True)}
        records = read_jsonl(path, check=descriptor_problem, keep=_for_generation, holding=holding)
        if narration_id is not None:  # (a line holding it in another field)
            records = [r for r in records if r["narration_id"] == narration_id]
        latest = {r["narration_id"]: r for r in records}  # a later record of an id replaces an earlier one
        if len(latest) < len(records):  # (JsonlAppender keeps the last too: extract --retry-errors appends)
            log.warning("%s: %d narration ids appear more than once (parts merged twice, or a run stopped before "
                        "it rewrote the file): the last record of each is used", path, len(records) - len(latest))
            records = list(latest.values())
        source = f"descriptors {path}"
        try:
            extracted = descriptor_settings(path)
        except MixedParts:  # a merge of parts extracted with other options than each other
            raise
        except LeapError:  # a sidecar that is not a JSON object: the descriptors' settings are not known
            extracted = None
    elif cfg.descriptors is not None:
        raise LeapError("descriptor file not found", path=path, fix="run leap extract or fix --descriptors")
    elif segments:
        # (an extract past its settings check, before its first record, of the file or of a --shard part of it:
        # narration-only programs of every segment, paid, then refused beside its descriptors)
        making = [(p, who) for p in (path, *(lock.with_name(lock.name[: -len(".lock")])
                                            for _, _, lock in shard_parts(path, ".lock")))
                  if (who := writer_of(p)) is not None]
        if making:
            raise LeapError(f"leap extract is making this file ({making[0][1]}) and has written no record yet: this run "
                            "would make narration-only programs of every segment", path=making[0][0],
                            fix="wait for extract to finish, then run this command again")
        records = [narration_record(s) for s in segments.values() if narration_id in (None, s.narration_id)]
        source = f"narration-only records from {ann.split_path(split)} (no {path}; run leap extract for full clip text)"
    else:
        raise LeapError(f"no descriptors and no annotations for split {split}", path=path,
                        fix="run leap extract, or pass --data with the split's annotation CSV")
    if segments:  # another split's descriptors (--descriptors) would get programs without this split's labels
        outside = [r["narration_id"] for r in records if r["narration_id"] not in segments]
        if outside and len(outside) == len(records) and narration_id is None:
            raise LeapError(f"none of the {len(records)} descriptor records is a segment of split {split} (e.g. "
                            f"{outside[0]})", path=path, fix=f"pass split {split}'s descriptors, or the --split they are of")
        if outside:
            log.warning("%s: %d descriptor records are not segments of split %s (e.g. %s): skipped", path,
                        len(outside), split, ", ".join(outside[:3]))
            records = [r for r in records if r["narration_id"] in segments]
        # in the split's order, not the descriptor file's (extract's workers append segments as they finish):
        # --limit N takes the same N segments whatever extract's --workers was
        rank = {k: i for i, k in enumerate(segments)}
        records.sort(key=lambda r: rank.get(r["narration_id"], len(rank)))
        if source.startswith("descriptors"):  # made from another version of the split CSV: their programs would
            # be asked for from the old clip with the new labels, and paid for again once extract made them again
            stale = {r["narration_id"]: why for r in records
                     if (why := made_from_other_annotations(r, segments[r["narration_id"]]))}
            if stale:
                what = (f"descriptor records were made from other annotations than {ann.split_path(split).name} "
                        f"holds now (e.g. {next(iter(stale))}: {next(iter(stale.values()))} differs)")
                fix = f"run leap extract --split {split} (it makes only those again), then this command again"
                if len(stale) == len(records) and narration_id is None:
                    raise LeapError(f"all {len(stale)} {what}", path=path, fix=fix)
                log.warning("%s: %d %s: left out of this run; %s", path, len(stale), what, fix)
                records = [r for r in records if r["narration_id"] not in stale]
    # parts by the split's videos in annotation order, as extract's: part i of extract's part i is all of it
    order = [s.video_id for s in segments.values()]
    records = cfg.shard.select(records, key=lambda r: r.get("video_id", r["narration_id"]), order=order)
    if source.startswith("descriptors") and segments and narration_id is None:  # (a run on what exists so far gets
        # no word of the rest)
        wanted = len(cfg.shard.select(list(segments.values()), key=lambda s: s.video_id, order=order))
        if len(records) < wanted:
            who = writer_of(path)
            log.warning("%s %s %d of the %s of %s%s: the other %d %s no program in this run; %s, then "
                        "this command again: it adds what is new", path, "is still being written by " + who +
                        ", which holds so far" if who else "holds", len(records), counted(wanted, "segment"), split,
                        cfg.shard.suffix, wanted - len(records), "gets" if wanted - len(records) == 1 else "get", "wait for extract to finish" if who else
                        f"it is extract's part {part[0]}/{part[1]}: pass --shard {part[0]}/{part[1]} (this part's "
                        "programs, beside the other parts') or the merged file" if part is not None
                        and cfg.shard.count == 1 else
                        "finish extract (an extract stopped early: run it again)")
    replaced: dict[str, tuple[Path, int, int]] = {}
    if asking and narration_id is None and source.startswith("descriptors"):  # (a dry run's one prompt asks nothing)
        # their programs would be asked for from the old file's clip text, and paid for again once extract made
        # their records again (their clip hash changes)
        replaced = replaced_videos(path, records, segments)
        records = [r for r in records if r["narration_id"] not in replaced]
    held = merged_parts(path, segments, {segments[k].video_id for k in replaced if k in segments})
    return Inputs(records, segments, ann.verbs, ann.nouns, source, extracted, stale, replaced,
                  " and ".join(extract_command(cfg, path, part) for part in held or [None]) if replaced else "",
                  merge_command(path, held[0][1]) if replaced and held else "")


def merged_parts(descriptors: Path, segments: dict[str, Segment], videos: set[str]) -> list[tuple[int, int]]:
    """The extract ``--shard`` parts (i, n) whose videos (extract's ``ShardSpec.select``) are among ``videos``, where
    ``descriptors`` was merged from parts that are there beside it; [] where it is no merge (or a part itself). A
    whole-split extract over the merged file made it again, but not the parts, whose next merge brought the old
    records back."""
    counts = {n for _, n, _ in shard_parts(descriptors)} if videos else set()  # (none replaced: no split read)
    if part_of(descriptors) is not None or len(counts) != 1:
        return []
    n = counts.pop()
    order = list(segments.values())
    return [(i, n) for i in range(n)
            if videos & {s.video_id for s in ShardSpec(i, n).select(order, key=lambda s: s.video_id)}]


def replaced_videos(descriptors: Path, records: list[dict], segments: dict[str, Segment]
                    ) -> dict[str, tuple[Path, int, int]]:
    """The descriptor ``records`` made from an MP4 or audio file whose size differs now (extract's own test,
    ``DatasetLayout.replaced_test``: one stat per file, no byte read): narration id -> (the file, the size the record
    keeps, the size now). The videos are looked for where extract read them: the dataset root and annotations its
    settings (beside ``descriptors``, and its ``--shard`` parts', where they agree: ``extracted.inputs``) record, in
    the work directory where it is now. {} where no record keeps a size (made by a leap before 2026-12-07, from
    rgb_frames, or without reading the video), or that root is not known or not there; a record whose MP4 is not
    there now is not counted."""
    from leap_cli import extracted

    held = [r for r in records if isinstance(r.get("video_size"), int) or isinstance(r.get("audio_size"), int)]
    inputs = extracted.inputs(descriptors) if held else None
    if inputs is None:
        return {}
    from leap_cli.epic.layout import DatasetLayout

    try:
        layout = DatasetLayout.open(*inputs)
    except LeapError:  # (the root moved since: extract says so when it runs)
        return {}
    test, found = layout.replaced_test(), {}
    for r in held:
        seg = segments.get(r["narration_id"])
        if seg is not None and (files := test(r, seg)):
            found[r["narration_id"]] = files
    return found


def extract_command(cfg: GenerateConfig, descriptors: Path, merged: tuple[int, int] | None = None) -> str:
    """The ``leap extract`` that makes ``descriptors`` again (a rerun makes again the records of a video replaced
    since), with the work directory, data, annotations, output and part it was made with otherwise than by default
    (``merged``: the part (i, n) of a file merged from parts, ``merged_parts``), and extract's own options as its
    settings record them (``extracted.Recorded.options``): run as printed, it is not refused for other settings, and
    makes records of the same ones."""
    from leap_cli import extracted
    from leap_cli.common import DEFAULT_WORKDIR

    words = ["leap extract --split", cfg.split_name]
    if os.path.abspath(cfg.workdir) != os.path.abspath(DEFAULT_WORKDIR):
        words += ["--workdir", shell_word(cfg.workdir)]
    settings = extracted.agreed(descriptors)
    data, annotations = (settings.path("data"), settings.path("annotations")) if settings else (None, None)
    if data is not None and os.path.abspath(data) != os.path.abspath(dataset_root(cfg.workdir)):
        words += ["--data", shell_word(data)]
    if annotations is not None:
        words += ["--annotations", shell_word(annotations)]
    part = part_of(descriptors)
    whole = descriptors.with_name(descriptors.name.replace(f".shard{part[0]}of{part[1]}", "")) if part else descriptors
    part = part or merged
    if os.path.abspath(whole) != os.path.abspath(cfg.workdir / "descriptors" / f"{cfg.split_name}.jsonl"):
        words += ["--out", shell_word(whole)]
    if part is not None:
        words += ["--shard", f"{part[0]}/{part[1]}"]
    return " ".join(words + (settings.options(cfg.workdir) if settings else []))


def left_out_line(inputs: Inputs, asked: set[str] | None = None) -> str | None:
    """What a run that asks for programs says of the segments it left out (``Inputs.replaced``; ``asked``: of
    them, those it would have made, not kept in the output); None where there are none."""
    ids = [k for k in inputs.replaced if asked is None or k in asked]
    if not ids:
        return None
    from leap_cli.epic.layout import replaced_files

    videos = {inputs.replaced[k][0]: inputs.replaced[k][1:] for k in ids}
    (file, (held, now)), more = next(iter(videos.items())), len(videos) - 1
    what, others = replaced_files(list(videos))
    return (f"{counted(len(ids), 'segment')} {'was' if len(ids) == 1 else 'were'} left out: "
            f"{'its descriptors were' if len(ids) == 1 else 'their descriptors were'} made from {what} that has "
            f"changed since ({file}: size {held} -> {now} bytes"
            + (f", and {counted(more, others)}" if more else "") + f"): run {inputs.extract_command} (it makes "
            f"{'it' if len(ids) == 1 else 'them'} again), "
            + (f"merge the parts again ({inputs.extract_merge}), " if inputs.extract_merge else "")
            + "then generate-programs again")


# What generation reads of a descriptor record beside its text (prompt.clip_info): the camera's steps and the
# audio events are in the text already, and were half of what a day's records held in memory
_DATA_KEPT = ("narration", "objects", "hands")


def _for_generation(record: dict) -> dict:
    """A descriptor record without the components' data generation does not read."""
    comps = record.get("components")
    if isinstance(comps, dict):
        record["components"] = {k: c if k in _DATA_KEPT or not isinstance(c, dict) else
                                {x: c[x] for x in ("status", "text") if x in c} for k, c in comps.items()}
    return record


def annotations_for(cfg: GenerateConfig) -> Annotations | None:
    """The annotations, or None when neither --data nor --annotations is given and the work directory holds no
    data set; the callers then stop, since the class files are needed to resolve verbs and objects (descriptor
    records alone are not enough)."""
    if cfg.annotations is None and cfg.data is None and not (dataset_root(cfg.workdir) / "annotations").is_dir():
        return None
    return open_annotations(cfg.workdir, cfg.data, cfg.annotations)


def build_backend(cfg: GenerateConfig, exemplars, verbs: ClassVocab, nouns: ClassVocab) -> Backend:
    if cfg.backend == "offline":
        return OfflineBackend(exemplars, verbs, nouns)
    if cfg.backend == "openai":
        return OpenAIBackend(cfg.model, base_url=cfg.base_url, api_key_env=cfg.api_key_env, timeout=cfg.timeout,
                             retry=RetryPolicy(cfg.max_retries, cfg.backoff, cfg.max_backoff),
                             temperature=cfg.temperature, max_tokens=cfg.max_tokens,
                             response_format=cfg.response_format, concurrency=cfg.concurrency,
                             extra_body=cfg.extra_body)
    raise LeapError(f"unknown backend {cfg.backend!r}", fix="use --backend offline or --backend openai")


class _Keyless(Backend):
    """The backend of a run whose API key is not set and that has nothing pending: asked for a reply, it says the
    key is missing."""

    def __init__(self, name: str, model: str, missing: NoApiKey):
        self.name, self.model, self.missing = name, model, missing

    async def complete(self, request: Request) -> Completion:
        raise self.missing


# a finding of the usual kind (an LLM's verb for which no class has a name): the size of the findings a repair turn
# sends, where no reply is paid yet to measure it from (``estimate_cost``)
TYPICAL_FINDING = Finding("/steps/0/verb", "verb 'grasp_firmly' is neither an EPIC verb class (key or synonym) nor a "
                                           "motor primitive")


def repair_message(findings: list[Finding]) -> str:
    lines = "\n".join(f"- {f.pointer or '/'}: {f.message}" for f in findings[:20])
    return ("Your program has these problems (JSON pointer: problem):\n" + lines +
            "\nAnswer with the corrected JSON program only.")


async def _turn() -> None:
    """Let the event loop go round once before CPU work (a prompt, a reply's checks): what is ready to read or
    send goes first."""
    await asyncio.sleep(0)


class NoMoreRequests(Exception):
    """A segment's first request may not go out (``--max-cost`` reached, or another request hit an error that
    stops the stage): the segment stays pending."""


class ProgramGenerator:
    """Turns one descriptor record into one program record (prompt, cache, backend, validation, repair).

    Requests pass an in-flight gate of ``cfg.concurrency`` slots. The stage runs more workers than slots, so
    that a worker whose reply arrives hands its slot at once to one whose prompt is built and waiting, and
    does its own bookkeeping (parse, validation, cache, log, record) while that request is on the wire: a
    reply's processing then delays no request of its own slot. Before prompt building and reply checking a
    worker lets the event loop go round once (``_turn``): the replies already read and the requests whose slot
    came free in that pass go out first, so a burst of replies is read, and their slots' next requests sent,
    before the burst's checks.
    ``over_budget`` (``--max-cost``) is asked again when a request (a first or a repair turn) gets its slot."""

    def __init__(self, cfg: GenerateConfig, inputs: Inputs, backend: Backend, store: ProgramStore | None, builder: PromptBuilder,
                 over_budget: Callable[[], bool] | None = None):
        self.cfg, self.inputs, self.backend, self.store, self.builder = cfg, inputs, backend, store, builder
        self.out_path = cfg.out_path  # (a path built anew at each access: once per paid reply here)
        self.over_budget = over_budget
        self.checker: RemoteChecker | None = None  # set by the stage when the checks run in a child process
        self._slots: asyncio.Semaphore | None = None
        self.all_busy = asyncio.Event()  # every slot has been taken once (the workers that wait start then)
        self._halted = False  # send no more: a request raised an error that stops the stage (a refused key), or Ctrl-C
        self.in_flight = 0  # requests sent and not yet answered
        self.schema = strict_schema()
        self.schema_hash = stable_hash(self.schema)
        # the cache key names the schema where one was asked for, also after the endpoint refused it (JSON mode)
        self._key_schema = self.schema_hash if backend.supports_schema else None
        # the offline generator is deterministic and makes a program in ~2 ms: its replies are not worth a cache
        # row and a call-log row each (~3.4 kB a record, more than the programs file)
        self._cache = backend.name != "offline"
        self.reask: set[str] = set()  # segments whose replies are asked for again, not read from the cache
        # answer from the cache only (--batch-file): a first turn that is not cached raises NoMoreRequests (the
        # segment is a request of the batch); a repair turn that is not cached ends the record unrepaired, as a
        # Batch result ends
        self.cache_only = False
        self.dry = False  # with cache_only: read the cache and write nothing to it (the dry run's estimate)
        self.batch_out: set[str] = set()  # the segments of Batch requests written for the output, not ingested yet
        self._batch_told = False
        self.summary_requests = 0
        self.summary_hits = 0
        self.may_send: Callable[[], bool] | None = None  # asked before each request goes out (_generate's disk check)
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0}  # requests made in this run
        # a reply without a prompt count, and one with text and no completion count, were warned of (once a
        # run each; offline: there are none to report)
        self._no_usage_told = self._no_completions_told = backend.name == "offline"
        self.unpriced = False  # a reply came without its token counts: its cost is not known
        # the --max-tokens the output was asked with below this run's, highest first (``take_earlier_limits``)
        self.earlier_limits: list[int] = []
        self.cost = 0.0

    def info(self, record: dict) -> ClipInfo:
        return clip_info(record, self.inputs.segments.get(record["narration_id"]))

    def request_key(self, prompt_hash: str, *, token_limit: bool | int = True) -> str:
        """The program cache's key of a request of the prompt whose ``Prompt.hash`` this is: the backend, its
        model, the schema asked for and its parameters. What a run looks up and caches a reply under, and what an
        ingested Batch result is cached under (``batch.ingest_batch``), so that a run of the same settings finds it.
        ``token_limit=False``: the same without ``max_tokens`` (a Batch request's custom_id: a resume may raise the
        limit, and a reply not cut at the old one is the one the higher limit gives); an int: with that limit."""
        params = self.backend.params()
        if token_limit is False:
            params = {k: v for k, v in params.items() if k != "max_tokens"}
        elif token_limit is not True and "max_tokens" in params:
            params = {**params, "max_tokens": token_limit}
        return cache_key(self.backend.name, self.backend.model, prompt_hash, self._key_schema, params)

    def take_earlier_limits(self, settings_limit: int | None) -> None:
        """``earlier_limits``: the ``--max-tokens`` below this run's that the output was asked with, from its
        settings file (``settings_limit``, read before ``check_output`` records this run's) and the program cache's
        record of the runs on it (``note_token_limits``: a run stopped at a raised limit rewrote the settings
        file)."""
        limits = set(self.store.token_limits(self.out_path)) if self.store is not None else set()
        if settings_limit is not None:
            limits.add(settings_limit)
        self.earlier_limits = sorted((n for n in limits if n < self.cfg.max_tokens), reverse=True)

    def cached(self, prompt_hash: str, *, keep: bool = True) -> tuple[str, dict, str, bool] | None:
        """The cached reply to the prompt (``ProgramStore.get``), None where there is none. Under a ``--max-tokens``
        raised on a resume, a reply cached at one of the output's lower limits (``earlier_limits``) that was not cut
        there is the one the higher limit gives: it is taken, and (``keep``) cached under this limit's key too; a
        cut one is asked again."""
        key = self.request_key(prompt_hash)
        hit = self.store.get(key)
        for limit in self.earlier_limits if hit is None else ():
            earlier = self.store.get(self.request_key(prompt_hash, token_limit=limit))
            # (not cut there: a row of a cache before it kept "cut" says so by reaching the limit)
            if earlier is not None and not earlier[3] and earlier[1].get("completion_tokens", 0) < limit:
                if keep:
                    self.store.put(key, earlier[0], earlier[1], earlier[2], commit=False)
                return earlier
        return hit

    def verify_here(self, text: str, info: ClipInfo) -> tuple[dict | None, list[Finding]]:
        """A reply's program (None: not a JSON object) and its findings, checked in this process."""
        return verify_reply(text, self.inputs.verbs, self.inputs.nouns, Labels(info.verb_class, info.noun_class),
                            self.cfg.max_sub_actions)

    async def verify(self, text: str, info: ClipInfo) -> tuple[dict | None, list[Finding]]:
        """``verify_here``, in the checker process when there is one."""
        if self.checker is not None:
            return await self.checker.check(text, Labels(info.verb_class, info.noun_class))
        await _turn()
        return self.verify_here(text, info)

    async def run_one(self, record: dict, prompt: Prompt | None = None) -> dict:
        """The segment's program record; ``prompt``: its prompt when the caller built it already. Under
        --retry-invalid a record the cache alone makes ``invalid`` (its clip changed and changed back, the output
        was lost) is asked anew, as the output's invalid records are (``reask``)."""
        hits = self.summary_hits
        result = await self._run_one(record, prompt)
        nid = record["narration_id"]
        if (self.cfg.retry_invalid and result["status"] == "invalid" and result["provenance"]["cached"]
                and not self.cache_only and nid not in self.reask):
            self.reask.add(nid)
            self.summary_hits = hits  # (the cached turns were not this run's answer)
            if nid in self.batch_out and not self._batch_told:  # (said once: the run's first such segment)
                self._batch_told = True
                warn_batch_pending(self.out_path, {nid}, "--retry-invalid (a record the program cache alone makes "
                                                         "invalid)")
            result = await self._run_one(record, prompt)
        return result

    async def _run_one(self, record: dict, prompt: Prompt | None = None) -> dict:
        start = time.perf_counter()
        info = self.info(record)
        nid = record["narration_id"]
        await _turn()
        prompt = prompt or self.builder.prompt(info)
        phash = prompt.hash[:16]  # == prompt_hash(messages)
        prov = {"backend": self.backend.name, "model": self.backend.model, "prompt_hash": phash,
                "clip_hash": clip_hash(self.inputs, record), "attempts": 0,
                "usage": {"prompt_tokens": 0, "completion_tokens": 0}, "seconds": 0.0, "created": None, "rounds": 0,
                "cached": True}

        def done(status: str, program, errors: list[Finding]) -> dict:
            prov["seconds"] = round(time.perf_counter() - start, 4)
            prov["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            return {"narration_id": nid, "status": status, "program": program,
                    "errors": [{"pointer": f.pointer, "message": redact(f.message)} for f in errors], "provenance": prov}

        if not info.text and info.verb is None and not info.objects:
            return done("failed", None, [Finding("", "nothing to describe: the clip has no text, labels or detections")])
        program, findings = None, []
        for rnd in range(self.cfg.repair_rounds + 1):
            schema = self.schema if self.backend.supports_schema else None
            key = self.request_key(prompt.hash)
            hit = self.cached(prompt.hash, keep=not self.dry) if self._cache and nid not in self.reask else None
            prov["rounds"] = rnd + 1
            cut = False
            if hit is not None:
                text, usage, served, cut = hit
                self.summary_hits += 1
                latency, attempts = 0.0, 0
            elif self.cache_only:
                if rnd == 0:
                    raise NoMoreRequests
                prov["rounds"], prov["repair_pending"] = rnd, True  # (a live --retry-errors asks that turn)
                break
            else:
                prov["cached"] = False
                try:
                    comp = await self._complete(Request(nid, prompt.messages, schema, info, prompt.json), key)
                except BackendError as e:
                    prov["attempts"] += e.attempts
                    self.summary_requests += e.attempts
                    if self._cache:
                        self.store.log_call(narration_id=nid, backend=self.backend.name, model=self.backend.model,
                                            prompt_hash=phash, cache_key=key, round=rnd, response=None, usage=e.usage,
                                            latency=e.seconds, attempts=e.attempts, cached=False, outcome="failed",
                                            error=str(e))
                    # a program from an earlier round that failed validation stays, as invalid; its repair turn's
                    # request failed (provenance repair_failed), so --retry-errors sends that turn again, the
                    # earlier rounds' paid replies read from the cache
                    what = getattr(self.backend, "failed", Backend.failed)
                    if program is not None:
                        prov["repair_failed"] = True
                    return done("invalid" if program is not None else "failed", program,
                                findings + [Finding("", f"{what}: {e}")])
                text, usage, latency, attempts = comp.text, comp.usage, comp.seconds, comp.attempts
                prov["attempts"] += attempts
                cut, served = comp.cut, comp.model
            if served and served != self.backend.model:  # the snapshot the server answered with (a Batch record's
                prov["served_model"] = served  # model is the served one)
            for k in ("prompt_tokens", "completion_tokens", "cached_tokens"):
                if usage.get(k):
                    prov["usage"][k] = prov["usage"].get(k, 0) + usage[k]
            parsed, findings = await self.verify(text, info)
            if parsed is not None:
                program = parsed
            if findings and cut:
                findings = [token_limit_finding(self.cfg.max_tokens, self.out_path)] + findings
            # no repair turn where another would end the same way: a reply cut at the token limit (the longer
            # repair prompt gets the same budget), or one that only thought or refused (reply.repair_futile)
            final = cut or repair_futile(text)
            outcome = "valid" if not findings else ("invalid" if parsed is not None else "not_json")
            # a paid reply a repair round follows is committed now (its record is not written yet); one that
            # finishes its record is safe in the output file, and waits for the store's next batch. A reply
            # from the cache is logged without its text (the cache row has it: a rerun grew the log by a copy)
            if self._cache and not self.dry:
                self.store.log_call(narration_id=nid, backend=self.backend.name, model=self.backend.model,
                                    prompt_hash=phash, cache_key=key, round=rnd, response=None if hit else text,
                                    usage=usage, latency=latency, attempts=attempts, cached=hit is not None,
                                    outcome=outcome,
                                    error="; ".join(f"{f.pointer}: {f.message}" for f in findings[:5]) or None,
                                    durable=hit is None and bool(findings) and not final
                                    and rnd < self.cfg.repair_rounds)
            if not findings:
                return done("valid", program, [])
            if final:
                break
            prompt = prompt.extend([{"role": "assistant", "content": text},
                                    {"role": "user", "content": repair_message(findings)}])
        return done("invalid", program, findings)

    def _spend(self, usage: dict, attempts: int) -> None:
        """A request's tokens into the run's usage and cost and the output's ledger (committed with the call log,
        run_one's log_call)."""
        for k in self.usage:
            self.usage[k] += usage.get(k, 0)
        cost = self.cfg.cost(usage)
        self.cost += cost
        if self._cache:
            self.store.add_spend(self.out_path, cost, usage, attempts, commit=False)

    async def _complete(self, request: Request, key: str) -> Completion:
        """The backend's reply, its cost counted and the reply cached before the slot is handed on (so that the
        next segment's budget check sees it)."""
        if self._slots is None:  # made in the running event loop
            self._slots = asyncio.Semaphore(max(1, self.cfg.concurrency))
        async with self._slots:
            # (a repair turn too: segments started before the cap sent theirs after it; one held back stays
            # pending, its first reply cached, so the rerun with a raised cap sends only the repair)
            if self._halted or (self.over_budget is not None and self.over_budget()):
                raise NoMoreRequests
            if self.may_send is not None and not self.may_send():  # (a disk too full to keep the reply)
                self._halted = True
                raise NoMoreRequests
            if self._slots.locked():
                self.all_busy.set()
            self.in_flight += 1
            try:
                comp = await self.backend.complete(request)
            except BackendError as e:
                if any(e.usage.values()):  # a 200 the server broke off, its tokens billed: in the ledger too
                    self._spend(e.usage, e.attempts)
                raise
            except Halted:  # the stage stops (Ctrl-C) before this request's attempt went out: it stays pending
                raise NoMoreRequests from None
            except Exception:
                self._halted = True
                raise
            finally:
                self.in_flight -= 1
            usage = comp.usage
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            # no prompt count: what it cost is not known (with --max-cost: no request more, the cap cannot be
            # kept); a completion of 0 beside one is a count for an empty reply (one the content filter
            # stopped), and for a reply with text it is an endpoint that does not count completions
            if not prompt or (not completion and comp.text not in ("", FILTERED)):
                self.unpriced = self.unpriced or not prompt  # (the offline one: over_budget)
                if prompt and not self._no_completions_told:
                    self._no_completions_told = True
                    log.warning("the endpoint reports no completion tokens for a reply with text: the cost "
                                "estimate %s the prompt tokens only", "and --max-cost count" if
                                self.cfg.max_cost is not None else "counts")
                elif not prompt and not self._no_usage_told:
                    self._no_usage_told = True
                    log.warning("the endpoint reports %s: the cost estimate cannot work for this run%s",
                                "no prompt tokens" if completion else "no token usage",
                                ", nor can --max-cost: no more requests are sent"
                                if self.cfg.max_cost is not None else "")
            self.summary_requests += comp.attempts
            self._spend(usage, comp.attempts)
            if self._cache:  # committed with the call log (run_one's log_call), not while the slot is held
                self.store.put(key, comp.text, usage, comp.model, cut=comp.cut, commit=False)
        # the worker that now has the slot sends its request before this reply's bookkeeping (run_one's _turn)
        return comp


class _Stop:
    """Ctrl-C, SIGTERM or SIGHUP while the stage runs: the first stops new requests and gives those in flight up to
    ``grace`` seconds, so that their replies, paid for anyway, are kept (a resume would pay for them again); a
    second signal, or the end of the grace, abandons them, except the same signal again within
    ``leap_cli.signals``' window, which is the same stop (Slurm, or a wrapper forwarding its own signal, delivers
    two at once: the requests were abandoned and paid again). ``reraise`` sends the signal again once the files
    are closed, to the handlers that were there before (the CLI's: exit 130 or 143). SIGHUP stops as SIGTERM does;
    SIGCONT (the process was stopped and goes on) restarts the requests' clocks (``Backend.continued``)."""

    def __init__(self, gen: ProgramGenerator, grace: float):
        self.gen, self.grace = gen, grace
        self.tasks: list[asyncio.Future] = []
        self.signum: int | None = None
        self._at = 0.0  # when the first signal came
        self._loop = asyncio.get_running_loop()
        self._before: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():
            stops = (signal.SIGINT, signal.SIGTERM) + ((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ())
            for sig in stops:  # (SIGHUP: a closed terminal, a dropped ssh session)
                if signal.getsignal(sig) not in (signal.SIG_IGN, None):  # (a background job ignores Ctrl-C, nohup SIGHUP)
                    self._before[sig] = signal.signal(sig, self._on_signal)
            continued = getattr(gen.backend, "continued", None)
            if continued is not None and hasattr(signal, "SIGCONT"):  # (^Z then fg, a cluster's suspend and resume)
                self._before[signal.SIGCONT] = signal.signal(
                    signal.SIGCONT, lambda signum, frame: self._loop.call_soon_threadsafe(continued))

    def _on_signal(self, signum, frame) -> None:
        # (timed here, as it comes: a loop busy for a while would take two stops seconds apart for one)
        self._loop.call_soon_threadsafe(self._stop, signum, time.monotonic())  # (wakes the loop from its select)

    def _on_wire(self) -> int:
        """Requests sent and not answered: those waiting for a slot, a retry or a held server's turn (the
        backend's ``sending`` leaves them out) were never sent; ``halt`` ends them (they stay pending)."""
        return getattr(self.gen.backend, "sending", self.gen.in_flight)

    def _stop(self, signum: int, at: float) -> None:
        if self.signum is not None:
            if signum != self.signum or at - self._at >= self._window(signum):
                self._abandon()
            elif self._on_wire():  # (a person pressing Ctrl-C again at once heard nothing)
                log.warning("the same stop: still waiting for %s in flight; %s again after %g s abandons "
                            "%s", counted(self._on_wire(), "request"), "Ctrl-C" if signum == signal.SIGINT else
                            signal.Signals(signum).name, self._window(signum),
                            "it" if self._on_wire() == 1 else "them")
            return
        self.signum, self._at = signum, at
        self.gen._halted = True
        halt = getattr(self.gen.backend, "halt", None)
        if halt is not None:
            halt()  # no more attempts: the requests waiting for theirs (a retry, a held server) end pending now
        if self._on_wire():
            again = "Ctrl-C again" if signum == signal.SIGINT else f"{signal.Signals(signum).name} again"
            log.warning("stopping: waiting up to %g s for %s in flight; %s after %g s to abandon %s",
                        self.grace, counted(self._on_wire(), "request"), again, self._window(signum),
                        "it" if self._on_wire() == 1 else "them")
            self._loop.call_later(self.grace, self._abandon)

    @staticmethod
    def _window(signum: int) -> float:
        from leap_cli.signals import same_stop_window

        return same_stop_window(signal.Signals(signum).name)

    def _abandon(self) -> None:
        if self._on_wire():
            them = "it" if self._on_wire() == 1 else "them"
            log.warning("abandoned %s in flight: the provider may bill %s, and neither this run's cost nor "
                        "the ledger of --max-cost counts %s", counted(self._on_wire(), "request"), them, them)
        for t in self.tasks:
            t.cancel()

    def restore(self) -> None:
        for sig, handler in self._before.items():
            signal.signal(sig, handler)
        self._before = {}

    def reraise(self) -> None:
        if self.signum is not None:
            signal.raise_signal(self.signum)


# output_settings' keys as a refusal says them where they are not an option's own name (the others are: --k, ...)
SETTINGS_NAMES = {"params.temperature": "--temperature", "params.max_tokens": "--max-tokens",
                  "params.response_format": "--response-format", "params.extra_body": "--extra-body",
                  "params": "generation parameters", "prompt_version": "leap's prompt format",
                  "descriptors": "the descriptors' extract settings", "descriptors.": "the descriptors' extract ",
                  "exemplars": "--exemplars (the library's hash)", "system_prompt": "--system-prompt (the file's hash)",
                  "max_sub_actions": "leap's limit of sub-actions per program"}


def output_settings(cfg: GenerateConfig, builder: PromptBuilder, inputs: Inputs) -> dict:
    """What changes the records of an output file: the descriptors' extraction settings, the backend and its
    model (the offline generator's version), its generation parameters, the prompt (format version, system
    prompt, exemplar library, k) and validation (repair rounds, sub-action limit). Not the endpoint,
    concurrency, retries, prices or limits."""
    out = {"descriptors": inputs.extracted, "backend": cfg.backend,
           "exemplars": stable_hash([[e.id, e.narration, e.text, e.program] for e in builder.exemplars])[:16],
           "repair_rounds": cfg.repair_rounds, "max_sub_actions": cfg.max_sub_actions}
    if cfg.backend == "offline":  # no prompt: the nearest exemplar, adapted (programs/offline.py)
        return {**out, "model": OfflineBackend.model}
    return {**out, "model": cfg.model, "prompt_version": PROMPT_VERSION, "system_prompt": stable_hash(builder.system)[:16],
            "k": cfg.k, "params": {"temperature": cfg.temperature, "max_tokens": cfg.max_tokens,
                                   "response_format": cfg.response_format,
                                   **({"extra_body": cfg.extra_body} if cfg.extra_body else {})}}


def token_limit_finding(max_tokens: int | None, out: Path, *, batch: bool = False) -> Finding:
    """What a reply cut at the token limit (finish_reason "length") says first, before what its cut JSON breaks,
    with the way to ask again for only such records (a resume may change --max-tokens: ``check_output``).
    ``max_tokens``: the limit it was asked with (None: not known); ``batch``: a Batch API result's."""
    limit = f"--max-tokens {max_tokens}" if max_tokens else "--max-tokens"
    again = f"--max-tokens {2 * max_tokens}" if max_tokens else "a higher --max-tokens"
    how = "write the requests again (--batch-file) with" if batch else "rerun with"
    return Finding("", f"the reply stopped at the token limit ({limit}; a reasoning model's hidden reasoning counts "
                       f"too): {how} {again} --retry-invalid (only the invalid records of {out.name} are asked again)")


def note_token_limits(store: ProgramStore, out: Path, *limits: int | None) -> None:
    """Record in the program cache the ``--max-tokens`` a run on ``out`` asks with and the one its settings file
    held (a leap before the cache kept them recorded it there alone, and ``check_output`` rewrites it): as soon as
    the cache is open, before any request, so that a run that stops at once, or asks for nothing, keeps them too
    (``ProgramGenerator.take_earlier_limits``)."""
    for limit in {n for n in limits if n is not None}:
        store.note_token_limit(out, limit)


def asked_token_limit(out: Path) -> int | None:
    """The ``--max-tokens`` the output's settings file records (None: none, or no settings): read before
    ``check_output`` records a raised one."""
    params = (stored_settings(out) or {}).get("params")
    limit = params.get("max_tokens") if isinstance(params, dict) else None
    return limit if isinstance(limit, int) and not isinstance(limit, bool) else None


def check_output(cfg: GenerateConfig, builder: PromptBuilder, inputs: Inputs, *, dry: bool = False) -> bool:
    """Refuse to add records to an output made with other settings (``io.check_settings``, as the other stages),
    unless ``cfg.force``: then the output starts over. Returns whether it did (``dry``: would; nothing written)."""
    # a settings file kept before the descriptors' settings were adopts those of now; --max-tokens may change on a
    # resume: a reply that was not cut at the old limit is the one a higher limit gives, and the cut ones are
    # invalid records that --retry-invalid asks for again (max_tokens stays in the cache key); lowered, it would cut
    # replies the records were not cut at
    def explain(keys: set[str]) -> str | None:  # the bundled generator or exemplars of a newer leap: what
        # --force costs, where nothing else differs ("use the old settings" was no way back)
        if keys == {"descriptors"}:  # (extract ran again with other settings since: not this command's options)
            if inputs.extracted == "narration-only":  # (the descriptors moved, or another --descriptors before)
                return (f"the descriptors the programs were made from are not there now (no {cfg.descriptors_path}): "
                        "restore them, or pass the --descriptors FILE they were made from; --force would make the "
                        "programs anew from the narrations alone; or give another --out")
            if (stored_settings(cfg.out_path) or {}).get("descriptors") == "narration-only":
                return ("the programs were made from the narrations alone, before the descriptors were extracted: "
                        "--force makes the programs anew from them, or give another --out")
            unpaid = "" if cfg.backend == "offline" else (" (the prompts of clips whose text did not change are "
                                                           "answered from the program cache, unpaid)")
            return ("the descriptors were extracted again with other settings since: --force makes the programs anew "
                    f"from them{unpaid}, or extract again with the settings the output was made from; or give "
                    "another --out")
        bundled = {"exemplars", "model"} if cfg.backend == "offline" else {"exemplars"}
        if not keys or not keys <= bundled:
            return None
        return ("the offline generator or its exemplar library changed (a newer leap, or --exemplars): --force makes "
                "the programs anew, at no cost" if cfg.backend == "offline" else
                "the exemplar library changed (a newer leap, or --exemplars): --force asks again only for the prompts "
                "it changes (the others are answered from the program cache, unpaid); or pass --exemplars with the "
                "library the output was made with") + "; or give another --out"

    def set_aside() -> None:  # --force over paid programs: kept beside it, not deleted (a Batch API's replies
        # ingested by a leap that did not cache them are in no cache: they were paid again)
        out = cfg.out_path
        if not out.exists():  # (only its settings file: written by --batch-file, before an ingest)
            log.warning("--force: %s held no record, only its settings file: Batch requests written with those "
                        "settings may be out, whose results, ingested, are now of other settings (kept, not cached)",
                        out.name)
            return
        try:
            paid = sum(1 for _, r in iter_jsonl(out) if isinstance(r, dict) and isinstance(
                r.get("provenance"), dict) and r["provenance"].get("backend") not in (None, "offline"))
        except LeapError:  # (a damaged line: what it holds cannot be told, so it is kept)
            paid = -1
        if not paid:
            out.unlink(missing_ok=True)
            return
        stamp, n = time.strftime("%Y%m%dT%H%M%S"), 1
        while (aside := out.with_name(f"{out.stem}.before-force-{stamp}{f'-{n}' if n > 1 else ''}{out.suffix}")
               ).exists() or settings_path(aside).exists():  # (two --force runs in one second)
            n += 1
        if settings_path(out).exists():  # (its settings with it: moved back, the file resumes as it was made)
            shutil.copy2(settings_path(out), settings_path(aside))
        os.replace(out, aside)
        log.warning("--force: %s held %s made by an LLM (paid); it is kept as %s with its settings file (nothing "
                    "reads it: move both back, or ingest its Batch results again, to use them)", out.name,
                    "programs" if paid < 0 else f"{paid} program{'' if paid == 1 else 's'}", aside)

    out, held = cfg.out_path, None
    # an output that is only its settings file, as --batch-file leaves it: its batch may be running, and its results
    # are the output's; a run of other settings would make them of other settings
    exists = out.exists() and out.stat().st_size > 0 or settings_path(out).exists()
    if exists and not (out.exists() and out.stat().st_size > 0):
        held = ("it holds no record yet, but Batch requests written with those settings are out, whose "
                "results are ingested into it" if batch_pending(out)["ids"] else "it holds no record yet (a run "
                "stopped before its first program, or Batch requests written with those settings, whose "
                "results would be ingested into it)")
    return check_settings(cfg.out_path, output_settings(cfg, builder, inputs), force=cfg.force, split=cfg.split_name,
                          exists=exists, adopt=("descriptors",), grow=("params.max_tokens",), explain=explain,
                          held=held, remove=set_aside, dry=dry, names={**SETTINGS_NAMES, **(
                              {"model": "the offline generator"} if cfg.backend == "offline" else {})})


def _setup(cfg: GenerateConfig, narration_id: str | None = None, *, asking: bool = True):
    inputs = load_inputs(cfg, narration_id, asking=asking)
    exemplars = load_exemplars(cfg.exemplars)
    builder = PromptBuilder(inputs.verbs, inputs.nouns, exemplars, load_system_prompt(cfg.system_prompt), cfg.k)
    return inputs, exemplars, builder


def dry_run(cfg: GenerateConfig, narration_id: str | None = None, *, setup: tuple | None = None) -> str:
    """The prompt of one segment (the first pending one, or ``narration_id``); makes no call. ``setup``: ``_setup``'s
    inputs, exemplars and prompt builder, read once for the prompt and the estimate (``estimate_cost``)."""
    inputs, _, builder = setup or _setup(cfg, narration_id or None)
    records = inputs.records
    if narration_id:
        records = [r for r in records if r["narration_id"] == narration_id]
        if not records:
            raise LeapError(f"segment {narration_id} is not in the input ({inputs.source})",
                            fix="check --split and the narration id")
    elif records and cfg.out_path.exists() and not starts_over(cfg, builder, inputs):
        done = kept_and_redone(cfg, inputs, builder)[0]  # the first segment a run would send: not one with its record
        records = [r for r in records if r["narration_id"] not in done]
        if not records:
            raise LeapError("every segment of the input has its record in the output", path=cfg.out_path,
                            fix="give --narration-id ID to see the prompt of one of them")
    if not records:
        left_out = left_out_line(inputs)
        raise LeapError("no segment to build a prompt for" + (f": {left_out}" if left_out else ""),
                        fix="give --narration-id ID to see the prompt of one of them" if left_out else None)
    from leap_cli.programs.prompt import render_messages

    return render_messages(builder.messages(clip_info(records[0], inputs.segments.get(records[0]["narration_id"]))))


def starts_over(cfg: GenerateConfig, builder: PromptBuilder, inputs: Inputs) -> str | bool:
    """Whether a run of ``cfg`` makes every segment anew: ``--force`` over an output of other settings (True), or
    the refusal of such an output without it (its one line: the figures of a dry run are then --force's); False
    for a resume. Nothing is written (``check_output(dry=True)``)."""
    try:
        return check_output(cfg, builder, inputs, dry=True)
    except LeapError as e:
        return e.one_line()


def dry_run_and_estimate(cfg: GenerateConfig, narration_id: str | None = None) -> tuple[str, CostEstimate]:
    """``dry_run``'s prompt and ``estimate_cost``'s estimate, the inputs read once (EPIC's train split: seconds)."""
    setup = _setup(cfg)
    return dry_run(cfg, narration_id, setup=setup), estimate_cost(cfg, setup=setup)


def estimate_cost(cfg: GenerateConfig, *, setup: tuple | None = None) -> CostEstimate:
    """What a run of ``cfg`` with an LLM would ask for and cost (``programs.estimate``): read from the input, the
    output and the program cache without writing a record or a reply (a cache of an older leap gets its new tables,
    as any open of it does), and without the API key."""
    from leap_cli.programs.batch import _BatchBackend  # (the request's pieces without a client)

    inputs, exemplars, builder = setup or _setup(cfg)
    anew = starts_over(cfg, builder, inputs)
    refused = anew if isinstance(anew, str) else None
    pending, kept, reclipped = pending_records(cfg, inputs, builder, anew=bool(anew))
    pending = pending[: cfg.limit]
    store = ProgramStore(cfg.cache_path) if cfg.cache_path.exists() else None
    loop = None
    try:
        gen = ProgramGenerator(cfg, inputs, _BatchBackend(cfg), store, builder)
        gen.take_earlier_limits(asked_token_limit(cfg.out_path))
        changed = clip_changed(inputs, builder)  # (a record whose clip changed is made again, not asked again)
        reask = {nid for nid, r in output_records(cfg, programs=False).items()
                 if r.get("status") == "invalid" and not changed(r)} if cfg.retry_invalid and not anew else set()
        gen.cache_only = gen.dry = True

        def made_invalid(r: dict, prompt) -> bool:  # (--retry-invalid asks for such a record anew: run_one)
            nonlocal loop
            loop = loop or asyncio.new_event_loop()
            try:
                return loop.run_until_complete(gen.run_one(r, prompt))["status"] == "invalid"
            except NoMoreRequests:
                return True

        answered, prompts = 0, []
        for r in pending:
            prompt = builder.prompt(gen.info(r))
            if (store is not None and r["narration_id"] not in reask and gen.cached(prompt.hash, keep=False)
                    and not (cfg.retry_invalid and made_invalid(r, prompt))):
                answered += 1
            else:
                prompts.append(chat_tokens(prompt.messages))
        paid = store.spent(cfg.out_path) if store is not None else {"requests": 0}
        turns = store.paid_turns(gen.backend.name, cfg.model, cfg.repair_rounds) if store and cfg.repair_rounds else []
    finally:
        if loop is not None:
            loop.close()
        if store is not None:
            store.close()
    if paid["requests"]:
        reply = paid["completion_tokens"] / paid["requests"]
        reply_from = f"the mean of the {paid['requests']} replies this output has paid for"
    else:
        reply, reply_from = exemplar_reply_tokens(exemplars), "the exemplar programs' mean"
    repairs = None
    if cfg.repair_rounds:  # measured on this output's records' paid turns, else the model's in the cache
        frame, ours = text_tokens(repair_message([])), set(kept) | reclipped
        repairs = (ours and measured_repairs([t for t in turns if t[0] in ours], cfg.repair_rounds, frame,
                                             "this output's records")
                   or measured_repairs(turns, cfg.repair_rounds, frame, f"{cfg.model} in the program cache")
                   or repair_bound(cfg.repair_rounds, reply, text_tokens(repair_message([TYPICAL_FINDING]))))
    return CostEstimate(cfg.split_name, len(pending), answered, sum(prompts) / len(prompts) if prompts else 0.0,
                        cacheable(chat_tokens([{"role": "system", "content": builder.static_prefix}]) - 3), reply,
                        reply_from, cfg.max_tokens, cfg.cost,
                        f"{cfg.price_in:g} / {cfg.price_in if cfg.price_cached_in is None else cfg.price_cached_in:g}"
                        f" / {cfg.price_out:g} USD per 1M tokens (--price-in / --price-cached-in / --price-out)",
                        refused, repairs, left_out_line(inputs, None if anew else set(inputs.replaced) - set(kept)))


def use_check_process(cfg: GenerateConfig, backend: Backend, pending: int) -> bool:
    """Whether a reply's checks run in a child process (``checker.RemoteChecker``): ``cfg.check_process``, or
    by default where the event loop's core is the limit and a second core is free: an HTTP backend (the
    offline one makes its programs on the loop), 8 requests in flight or more, at least ``CHECK_PROCESS_MIN``
    segments."""
    if cfg.check_process is not None:
        return cfg.check_process
    return backend.name != "offline" and cfg.concurrency >= 8 and usable_cpus() >= 2 and pending >= CHECK_PROCESS_MIN


async def _generate(cfg: GenerateConfig, on_record: Callable[[dict], None] | None,
                    on_start: Callable[[int], None] | None, backend: Backend | None,
                    on_waiting: Callable[[str | None], None] | None = None) -> GenerateSummary:
    inputs, exemplars, builder = _setup(cfg)
    # the backend first: an unknown --backend or a missing API key must not cost an output that --force would
    # start over, nor touch a file. Without --force a missing key is said only where a segment is pending (read
    # as a run would find it): an output that is done needs none (a pipeline run again where the key is not set,
    # e.g. on a GPU node, stopped at this stage)
    try:
        backend = backend or build_backend(cfg, exemplars, inputs.verbs, inputs.nouns)
    except NoApiKey as e:
        if cfg.force:
            raise
        if pending_records(cfg, inputs, builder)[0][: cfg.limit]:
            raise
        backend = _Keyless(cfg.backend, cfg.model, e)
    # (and a cache that cannot be opened); the offline generator's programs are neither cached nor paid for, and a
    # run without its key asks nothing. A cache that is not there yet is made once the output's settings are
    # accepted (a refused run left an empty cache.sqlite beside the offline programs)
    cached = not (backend.name == "offline" or isinstance(backend, _Keyless) and not cfg.cache_path.exists())

    def open_store() -> ProgramStore:
        return ProgramStore(cfg.cache_path, commit_every=0.5, background=True, journal=True)

    store = open_store() if cached and cfg.cache_path.exists() else None
    try:
        if (backend.name == "offline" and inputs.segments
                and all(s.narration is None and s.verb_class is None for s in inputs.segments.values())):
            # EPIC's test split: every record would fail ("no verb known"), exit 3 after writing them all; refused
            # in a --shard part without segments too (its empty file, a part of programs that cannot be made, made
            # build-shards ask for the merge)
            raise LeapError(f"the offline backend makes a program from a clip's narration or labels, and the "
                            f"{cfg.split_name} split has neither", record=cfg.split_name,
                            fix="generate its programs with an LLM (--backend openai, from the clip texts), or go "
                                "on without them: build-shards, training and submission need no test programs")
        sidecar = settings_path(cfg.out_path)
        new_output = not sidecar.exists()
        earlier_limit = asked_token_limit(cfg.out_path)
        check_output(cfg, builder, inputs)
        if cached and store is None:
            try:
                store = open_store()
            except BaseException:  # (a full disk): the settings file just written would hold an output that holds
                # nothing, as a --batch-file's is held for its Batch results, refusing a run of other settings
                if new_output and not (cfg.out_path.exists() and cfg.out_path.stat().st_size):
                    sidecar.unlink(missing_ok=True)
                raise
        if store is not None:
            note_token_limits(store, cfg.out_path, cfg.max_tokens, earlier_limit)
    except BaseException:
        if store is not None:
            store.close()
        raise
    summary = GenerateSummary(cfg.out_path, inputs.source)
    start = time.perf_counter()
    # --retry-errors / --retry-invalid: the records to redo, found in the appender's one pass (each keeps its line
    # until written anew); an invalid one's replies are asked for again, not read from the cache
    # the output's failed and invalid records (each key's last line): redone with the flags, else counted among
    # the resumed (a rerun that only resumed said nothing of records all failed)
    not_valid: dict[str, str] = {}
    changed = clip_changed(inputs, builder)
    reclipped: set[str] = set()  # made from a clip that has changed since: made again (a new prompt, unless cached)

    def redo(r: dict) -> bool:
        nid, kind = r.get("narration_id"), not_valid_kind(r)
        if kind is not None:
            not_valid[nid] = kind
        else:
            not_valid.pop(nid, None)
        if changed(r):
            reclipped.add(nid)
            not_valid.pop(nid, None)
            return True
        reclipped.discard(nid)
        return cfg.redo(r)

    appender = JsonlAppender(cfg.out_path, replace_keys=redo, sync_every=1.0)
    reask = {k for k, kind in not_valid.items() if kind in ("invalid", "repair")} if cfg.retry_invalid else set()
    gen: ProgramGenerator | None = None
    checker: RemoteChecker | None = None
    answered: set[str] = set()  # valid records written: no Batch request of theirs is waited for
    stop: _Stop | None = None
    try:
        if cfg.shard.count > 1 and inputs.segments:  # a part file holding other videos than this part's (begun by
            # a leap that dealt them otherwise): resuming it would redo some (paid) and never do others
            mine = {s.narration_id for s in cfg.shard.select(list(inputs.segments.values()), key=lambda s: s.video_id)}
            outside = sorted(k for k in appender.keys if k in inputs.segments and k not in mine)
            if outside:
                whole = cfg.out_path.with_name(cfg.out_path.name.replace(cfg.shard.suffix, ""))
                raise LeapError(f"holds {counted(len(outside), 'record')} of videos outside part {cfg.shard.index}/"
                                f"{cfg.shard.count} (e.g. {outside[0]}): the part was begun by an earlier leap, which "
                                "dealt the videos to parts in another order", path=cfg.out_path,
                                fix="finish the sharded run with the leap that began it; or merge the parts there are "
                                    f"({merge_command(whole, cfg.shard.count)}) and run without --shard: it does "
                                    "only what is missing")
        pending = [r for r in inputs.records if r["narration_id"] not in appender]
        # (those with a record in the output keep it as it is: made again by the clip hash once extract has run)
        summary.left_out = left_out_line(inputs, {k for k in inputs.replaced if k not in appender})
        summary.resumed = len(inputs.records) - len(pending)
        summary.reclipped = len(reclipped)
        summary.resumed_not_valid = Counter(not_valid[r["narration_id"]] for r in inputs.records
                                            if r["narration_id"] in not_valid and r["narration_id"] in appender)
        # the same narration id twice in the input is written once
        seen: set[str] = set()
        pending = [r for r in pending if not (r["narration_id"] in seen or seen.add(r["narration_id"]))]
        if cfg.limit is not None:
            pending = pending[: cfg.limit]
        if backend.name != "offline":  # what is paid for again (of this run's segments, after --limit), said before
            # the first request (the summary's note came after days of a run at EPIC's size)
            mine = {r["narration_id"] for r in pending}
            again = Counter("invalid" if cfg.retry_invalid and not_valid[k] == "repair" else not_valid[k]
                            for k in not_valid if k not in appender and k in mine)
            redone = len(reclipped & mine)
            parts = ([f"{redone} made from a clip that has changed since (its descriptor record was made again, or "
                      "its annotation changed; a prompt the program cache holds is answered unpaid)"]
                     if redone else []) + \
                [f"{again[k]} {said}" for k, said in (
                    ("failed", "failed (--retry-errors)"),
                    ("repair", "invalid with a repair turn to ask (its request failed, or a Batch result: "
                               "--retry-errors sends that turn, the earlier replies read from the cache)"),
                    ("invalid", "invalid (--retry-invalid: not answered from the cache)")) if again[k]]
            if parts:
                log.warning("records of earlier runs asked for again: %s", "; ".join(parts))
        summary.total = len(pending)
        # the inputs live until the end: out of the collector's sight, a full collection does not walk them
        # again and again (~0.1 s per pass with 60k objects, all at once, while 32 replies wait)
        if use_check_process(cfg, backend, len(pending)):  # started (~0.2 s) before the first request
            checker = RemoteChecker(inputs.verbs, inputs.nouns, cfg.max_sub_actions)
            await checker.start()
        gc.freeze()
        if on_start:
            on_start(len(pending))
        summary.spent_before = store.spent(cfg.out_path)["cost"] if store is not None else 0.0
        # the latest reply paid for with this model came with no token counts: so would this run's (each rerun of
        # a capped command paid for its requests in flight again before it stopped)
        unpriced_before = (cfg.max_cost is not None and store is not None and backend.name != "offline"
                           and store.last_paid_tokens(backend.name, backend.model) == 0)

        def over_budget() -> bool:
            if cfg.max_cost is None or backend.name == "offline":  # (the offline generator costs nothing)
                return False
            if gen.unpriced:  # (a user error once the run ends: exit 2, below)
                summary.stopped = (f"--max-cost {cfg.max_cost:g} cannot be kept: the endpoint reports no token usage"
                                   + (" (its last reply, in an earlier run, had none)" if unpriced_before and not
                                      gen.summary_requests else "") + ", so what its replies cost is not known")
                return True
            if summary.spent_before + gen.cost < cfg.max_cost:
                return False
            summary.stopped = _budget_line(cfg, summary.spent_before, gen.cost)  # (said again at the end, below)
            return True

        gen = ProgramGenerator(cfg, inputs, backend, store, builder, over_budget)
        gen.unpriced = unpriced_before
        gen.reask = reask
        gen.take_earlier_limits(earlier_limit)
        gen.checker = checker
        if store is not None and (out_batch := set(batch_pending(cfg.out_path)["ids"])):  # (the cache's answers
            # are not paid again; run_one warns of one it asks anew under --retry-invalid)
            gen.batch_out = out_batch
            warn_batch_pending(cfg.out_path, {r["narration_id"] for r in pending if r["narration_id"] in out_batch and (
                r["narration_id"] in reask or gen.cached(builder.prompt(gen.info(r)).hash) is None)},
                "this run")
        stop = _Stop(gen, min(STOP_GRACE, cfg.timeout))
        queue = iter(pending)

        async def worker(waits: bool) -> None:
            try:
                if waits:  # builds its first prompt once the first requests are out
                    await gen.all_busy.wait()
                await work()
            finally:
                gen.all_busy.set()  # a worker that ends (the input is done) lets the waiting ones see that too

        async def work() -> None:
            for record in queue:
                if stop.signum is not None or gen._halted:
                    return
                try:
                    result = await gen.run_one(record)
                except NoMoreRequests:
                    if stop.signum is not None or gen._halted or not over_budget():
                        return
                    continue  # past --max-cost: a segment the cache answers costs nothing and is still written
                try:
                    appender.write(result)
                except OSError as e:  # (the output's disk full): nothing more is sent; the replies in flight,
                    if unwritten[0] is None or not isinstance(unwritten[0], OSError):  # paid, are cached for the
                        unwritten[0] = e  # rerun; then the error ends the stage (said over the disk's low mark)
                        gen._halted = True
                        halt = getattr(backend, "halt", None)
                        if halt is not None:
                            halt()
                    return
                summary.statuses[result["status"]] += 1
                if result["status"] == "valid":
                    answered.add(result["narration_id"])
                if kind := not_valid_kind(result):
                    summary.not_valid[kind] += 1
                if result["status"] != "valid":
                    summary.failures.append((result["narration_id"],
                                             result["errors"][0]["message"] if result["errors"] else result["status"]))
                if on_record:
                    on_record(result)
                # (a backend that never waits, offline or cache hits, still lets Ctrl-C in: run_one's _turn)

        said: list[str | None] = [None]
        unwritten: list[Exception | None] = [None]  # the first write of the output that failed (or the disk filling)
        disk_checked = [-1.0]

        def may_send() -> bool:
            """No request while the output's or cache's disk is nearly full (a rerun on the disk a run filled paid
            again each time for the replies it could not write, and left them out of the ledger); asked once a
            second at most (a statvfs is ~2 us, a request ~1 ms of CPU); cache hits need no request."""
            if store is None or time.monotonic() < disk_checked[0] + 1.0:
                return True
            disk_checked[0] = time.monotonic()
            low = disk_short(cfg, before=gen.summary_requests == 0 and gen.in_flight == 0)
            if low is not None and unwritten[0] is None:
                unwritten[0] = low
            return low is None

        gen.may_send = may_send

        async def watch() -> None:  # a held server on the progress line: minutes without a record say nothing
            while True:
                await asyncio.sleep(WAITING_EVERY)
                now = waiting()
                if now != said[0]:
                    on_waiting(now)
                    said[0] = now

        async def flush() -> None:  # replies buffered before a long wait are written on time (store.tick)
            while True:
                await asyncio.sleep(store.commit_every)
                store.tick()

        # twice as many workers as requests in flight (ProgramGenerator): half wait with their prompt built; no
        # more than there are records (--concurrency 1000000 with nothing left to do took 60 s and 1.8 GB)
        n = max(1, min(cfg.concurrency, len(pending)))
        tasks = stop.tasks = [asyncio.ensure_future(worker(i >= n)) for i in range(2 * n)]
        waiting = getattr(backend, "waiting", None)  # (a backend of another make may not say)
        watcher = asyncio.ensure_future(watch()) if on_waiting and waiting else None
        flusher = asyncio.ensure_future(flush()) if store is not None else None
        try:
            await asyncio.gather(*tasks)
            if unwritten[0] is not None:
                raise unwritten[0]
        except BaseException as e:
            for t in tasks:  # a fatal error (bad key) stops the others before files are closed
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if isinstance(e, LeapError):  # (also after a Ctrl-C while a fatal error waited for the wire: the
                summary.error = e  # summary, then the signal's exit) raised once the files are closed
            elif stop.signum is None or not isinstance(e, asyncio.CancelledError):  # (not the requests abandoned)
                raise
        finally:
            if flusher is not None:
                flusher.cancel()
            if watcher is not None:
                watcher.cancel()
                if said[0] is not None:  # the closing progress line: no longer waiting
                    on_waiting(None)
    finally:
        if stop is not None:
            stop.restore()
        gc.unfreeze()
        if checker is not None:
            await checker.aclose()
        if gen is not None:  # also when interrupted: the summary says what was spent
            # (the endpoint's own count: also the attempts of requests that stopped the stage, a refused key's)
            summary.requests = getattr(backend, "sent", gen.summary_requests)
            summary.cache_hits = gen.summary_hits
            summary.usage, summary.cost = gen.usage, gen.cost
            if summary.stopped and not gen.unpriced:  # with the replies that were in flight when the cap was reached
                summary.stopped = _budget_line(cfg, summary.spent_before, gen.cost)
            elif summary.stopped and summary.error is None:  # the same command would stop alike: a job array that
                # reran it would never see that nothing is done (exit 0)
                summary.error = LeapError(summary.stopped, path=cfg.out_path, fix="run without --max-cost to go on, "
                                          "and watch the spend at the provider; --max-cost works again once a reply "
                                          "comes with its token counts")
                summary.stopped = None
        summary.rate_limited = getattr(backend, "rate_limited", 0)
        summary.timed_out = getattr(backend, "timed_out", 0)
        if getattr(backend, "lowest_limit", cfg.concurrency) < cfg.concurrency:
            summary.lowest_concurrency = backend.lowest_limit
            summary.steady_concurrency = backend.steady_limit or None
        summary.held_seconds = getattr(backend, "held_seconds", 0.0)
        summary.concurrency = cfg.concurrency
        try:
            if answered:
                update_batch_pending(cfg.out_path, drop=answered)
            appender.close()
        finally:  # (the output's disk full: the paid replies and their spend are still committed to the cache)
            try:
                if store is not None:
                    store.close()
            finally:
                await backend.aclose()
        summary.seconds = time.perf_counter() - start
    summary.interrupted = stop.signum
    return summary


def _budget_line(cfg: GenerateConfig, spent_before: float, cost: float) -> str:
    """Why a run stopped at ``--max-cost``, with what was spent."""
    return (f"--max-cost {cfg.max_cost:g} reached (estimated ${spent_before + cost:.4f} spent on "
            f"{cfg.out_path.name} so far, ${cost:.4f} in this run); raise --max-cost and run the command again to "
            "continue (the cap counts every run on this output file)")


def generate_programs(cfg: GenerateConfig, *, on_record: Callable[[dict], None] | None = None,
                      on_start: Callable[[int], None] | None = None, backend: Backend | None = None,
                      on_waiting: Callable[[str | None], None] | None = None,
                      reraise: bool = True) -> GenerateSummary:
    """Run the stage; finished records are on disk even if interrupted (Ctrl-C). ``on_waiting``: called with
    what the stage waits for while no reply can come (``Backend.waiting``, every ``WAITING_EVERY`` seconds while
    it changes), and with None when requests go their way again. A run stopped by SIGINT/SIGTERM raises that
    signal again once its files are closed, and one stopped by an error (a key refused, a server down) raises it;
    with ``reraise=False`` it returns, ``summary.interrupted`` or ``summary.error`` saying which (so that a
    caller can show what was done and spent first, then raise it)."""
    summary = asyncio.run(_generate(cfg, on_record, on_start, backend, on_waiting))
    if reraise and summary.error is not None:
        raise summary.error
    if reraise and summary.interrupted is not None:
        signal.raise_signal(summary.interrupted)
    return summary
