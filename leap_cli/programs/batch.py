"""The OpenAI Batch API path: write the requests as Batch input JSONL, later validate and merge the output.

Input line (``--batch-file OUT.jsonl``): ``{"custom_id": "NARRATION_ID@CLIP_HASH@KEY", "method": "POST",
"url": "/v1/chat/completions", "body": {"model", "messages", "temperature", "max_completion_tokens", "response_format"}}``: the
clip hash (``generate.clip_hash``) of the clip the request was made from comes back with its result, so a result
asked for before the clip changed is kept as that clip's program (and asked for again), not as the new one's; KEY,
the head of the request's program-cache key, so that its reply is cached only under the key it was asked with.
A segment whose reply is in the program cache gets no request: its record is made from the cache.
Output line (``--ingest-batch RESULTS.jsonl``, as the Batch API returns it): ``{"id", "custom_id",
"response": {"status_code", "body": <chat completion>}, "error"}``. Each reply is validated like a live one
(no repair round: a failing program is recorded ``invalid`` with its findings) and appended to the programs file.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import json
import logging
import os
import re
import stat
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

from leap_cli.common import counted
from leap_cli.errors import LeapError
from leap_cli.io import AtomicFiles, JsonlAppender, OutputLock, json_line, refuse_folder, shell_word
from leap_cli.programs.backends import (Backend, OpenAIBackend, openai_params, reply_cut, reply_problem, reply_text,
                                       reply_usage)
from leap_cli.programs.generate import (GenerateConfig, NoMoreRequests, ProgramGenerator, _setup, asked_token_limit,
                                       batch_pending, check_output, clip_changed, clip_hash, left_out_line,
                                       note_token_limits,
                                       output_records, pending_records, token_limit_finding, update_batch_pending,
                                       warn_batch_pending)
from leap_cli.programs.redact import redact
from leap_cli.programs.reply import repair_futile
from leap_cli.programs.store import ProgramStore
from leap_cli.programs.schema import Finding, strict_schema

log = logging.getLogger(__name__)

BATCH_URL = "/v1/chat/completions"
KEY_CHARS = 16  # the head of a request's program-cache key in its custom_id (NARRATION_ID@CLIP_HASH@KEY)
BATCH_PRICE_FACTOR = 0.5  # the Batch API's discount on the live prices
NOT_RUN = ("batch_expired", "batch_cancelled")  # a result line's error.code for a request the Batch API never ran


def _openai(cfg: GenerateConfig) -> GenerateConfig:
    """The Batch API is OpenAI's: requests and results are the openai backend's, whatever ``cfg.backend`` says
    (GenerateConfig's default is the offline generator), so that the output's settings record that backend and
    model and a later run of another backend is refused (``check_output``)."""
    return cfg if cfg.backend == "openai" else dataclasses.replace(cfg, backend="openai")


# The OpenAI Batch API's limits on one input file (its batches.create reference: "up to 50,000 requests, and can be
# up to 200 MB in size"); MB read as 10^6 bytes, the smaller reading
BATCH_MAX_REQUESTS = 50_000
BATCH_MAX_MB = 200


@dataclasses.dataclass(frozen=True)
class BatchPart:
    """One input file of ``write_batch_file``: its path, request count and size in bytes; ``removed``: an earlier
    --batch-file's file, deleted."""
    path: Path
    requests: int
    bytes: int
    removed: bool = False


def batch_part_paths(path: Path, n: int) -> list[Path]:
    """Where ``n`` input files go: ``path`` itself for one, else ``STEM-1-of-N.SUFFIX`` ... beside it."""
    if n == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i}-of-{n}{path.suffix}") for i in range(1, n + 1)]


def batch_stream(path: Path) -> bool:
    """A --batch-file written as one stream, never split, renamed or swept: a process's own descriptor
    (``/dev/stdout``, ``/dev/stderr``, ``/dev/fd/N``, ``/proc/self/fd/N``), whatever it points to, and an existing
    file that is neither a regular file nor a folder (a FIFO, ``/dev/null``). A regular file under /dev (``/dev/shm``)
    is a file."""
    if re.fullmatch(r"/dev/(stdout|stderr|fd/\d+)|/proc/(self|\d+)/fd/\d+", os.path.abspath(path)):
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def is_batch_input(path: Path) -> bool:
    """Whether a file is one --batch-file may replace or remove: empty (0 bytes), or its first line that is not
    blank a Batch request (``custom_id`` and ``body``); a file of program records, descriptors or anything else is
    not."""
    try:
        with open(path, "rb") as f:
            first = f.readline(1 << 26)
            while first and not first.strip():
                first = f.readline(1 << 26)
            if not first:
                return f.tell() == 0
        line = json.loads(first)
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(line, dict) and "custom_id" in line and "body" in line


def _earlier_parts(path: Path, written: list[Path]) -> list[Path]:
    """The input files an earlier --batch-file to ``path`` left that this one did not write: ``path`` itself and
    its ``STEM-I-of-N.SUFFIX`` parts (their requests are no longer this file set's: submitted, they would be paid
    twice or ask for records done since); only names leap writes, and only files that hold Batch requests."""
    pattern = re.compile(re.escape(path.stem) + r"-([1-9]\d*)-of-([1-9]\d*)" + re.escape(path.suffix))
    try:  # (links are not followed: one that loops made is_file() raise, and the sweep stopped without a word)
        names = [e.name for e in os.scandir(path.parent) if not e.is_symlink() and e.is_file(follow_symlinks=False)
                 and (e.name == path.name or (m := pattern.fullmatch(e.name)) and int(m[1]) <= int(m[2]))]
    except OSError as e:
        log.warning("the files of an earlier --batch-file beside %s could not be looked for (%s): do not submit "
                    "any but those written now", path, e.strerror or e)
        return []
    keep = {p.name for p in written}
    return sorted((path.parent / n for n in names if n not in keep and is_batch_input(path.parent / n)),
                  key=lambda p: p.name)


def write_batch_file(cfg: GenerateConfig, path, stats: Counter | None = None, *, parts: list | None = None,
                     failures: list | None = None, max_requests: int = BATCH_MAX_REQUESTS,
                     max_mb: float = BATCH_MAX_MB) -> int:
    """Write one Batch request per pending segment (those not yet in the programs file, and those
    ``cfg.redo`` names: --retry-errors, --retry-invalid), at most ``cfg.limit``, but none for a segment whose
    replies are in the program cache: its record is made from them (``ProgramGenerator.cache_only``) and written
    to the programs file at once (with --retry-invalid one that would be invalid is asked for instead). Returns
    the count of requests; ``stats`` gets the input's ``segments``, those ``pending`` (before --limit), the
    ``failed`` and ``invalid`` records kept as done, and ``cached_STATUS`` per record made from the cache;
    ``failures`` gets ``(narration_id, first error)`` per record made from the cache that is not valid. The
    programs file's settings are checked and recorded now (``check_output``), so that the ingest, and any live
    run on the same file, must use the settings the requests were written with; the file is locked from then to
    the end.

    Requests beyond one file's limits (``max_requests``, ``max_mb`` in 10^6 bytes: the Batch API's) go into
    several files, ``STEM-1-of-N.SUFFIX`` ...; ``parts`` gets a ``BatchPart`` per file written, then one per file
    of an earlier --batch-file to ``path`` that was removed (``removed``). The files are renamed into place once
    all are written (a crash before leaves none; one during the renames, an instant, some, which the next run
    replaces or removes); a single request over ``max_mb`` is a file of its own, warned of. A symbolic link is
    written through (its target's folder gets the files); a stream (``batch_stream``) gets every request as it
    is made, unsplit. An existing file that holds no Batch requests (the programs output, a file of records), as
    ``path`` or as one of the names the files need, is refused, not replaced."""
    import math

    path = Path(path)
    if max_requests < 1 or not 0 < max_mb < math.inf:
        raise LeapError(f"a Batch input file of at most {counted(max_requests, 'request')} and {max_mb} MB is no limit",
                        fix="give --batch-max-requests a whole number and --batch-max-mb a number of MB, both "
                            "above 0 and finite")
    refuse_folder(path)
    stream = batch_stream(path)
    if not stream:
        if path.is_symlink():  # (the part files and the sweep go where the link points; the link stays)
            try:
                path.stat()  # (a loop says ELOOP; Python 3.13's resolve(strict=False) returns it without a word)
                looped = False
            except OSError as e:
                looped = e.errno == errno.ELOOP  # (a link to nothing yet is written through: its target is made)
            try:
                resolved = path.resolve(strict=False)
            except (RuntimeError, OSError):  # (a loop: RuntimeError before Python 3.13)
                looped = True
            if looped:
                raise LeapError("--batch-file is a symbolic link that points to itself, through a loop of links",
                                path=path, fix="remove the link, or give --batch-file another path")
            path = resolved
        fix = "give --batch-file a path of its own, e.g. WORKDIR/batch.jsonl"
        if path.resolve() == Path(cfg.out_path).resolve():
            raise LeapError("--batch-file names the programs output, where the ingested results go", path=path,
                            fix=fix)
        if path.exists() and not is_batch_input(path):
            raise LeapError("--batch-file names a file whose lines are not Batch requests: it is not replaced",
                            path=path, fix=fix + ", or move that file away")
    # (a record whose repair turn's request failed waits for a live --retry-errors: a Batch request asks no repair
    # turn, and the record made again from the cache would end unrepaired, without its mark)
    cfg = dataclasses.replace(_openai(cfg), retry_repairs=False)
    inputs, _, builder = _setup(cfg)
    earlier_limit = asked_token_limit(cfg.out_path)
    check_output(cfg, builder, inputs)  # (under the output's lock, then taken again at once, as a live run does)
    # the output is locked from here on: a live run or another --batch-file on it meanwhile would ask for the same
    # segments (paid twice), and the records answered from the cache are written to it
    lock = OutputLock(cfg.out_path).acquire()
    out: JsonlAppender | None = None
    store: ProgramStore | None = None
    loop = None
    try:
        # (one made from a clip that changed since: asked again)
        records, done, again = pending_records(cfg, inputs, builder)
        if line := left_out_line(inputs, set(inputs.replaced) - set(done)):  # (no request written for them)
            log.warning("%s", line)
        if stats is not None:
            stats.update(segments=len(inputs.records), pending=len(records))
            stats.update(done[r["narration_id"]] for r in inputs.records
                         if done.get(r["narration_id"]) in ("failed", "invalid", "repair"))
        # the bodies are written from the pieces of the cache key their results are put under at the ingest (the
        # model, prompt, schema and parameters of _BatchBackend: ProgramGenerator.request_key); the key's head is
        # in the custom_id, so that the ingest caches a reply only under the key it was asked with
        backend = _BatchBackend(cfg)
        params = backend.params()
        if backend.supports_schema:
            fmt = {"type": "json_schema", "json_schema": {"name": "action_program", "strict": True,
                                                          "schema": strict_schema()}}
        else:
            fmt = {"type": params["response_format"]}
        # a segment whose replies are in the program cache already (a live run's, an earlier ingest's: the output
        # lost, --force, another --out) is not asked for again: its record is made from them as a live run makes
        # it (with the repair turns that are cached; one that is not ends the record unrepaired, as a Batch result
        # ends) and written at once. With --retry-invalid a segment whose record from the cache would be invalid
        # is asked anew (the output's invalid records among them); one whose cache holds a valid reply now (an
        # ingest of a --retry-invalid batch put it there) is answered from it. --limit counts the requests
        store = ProgramStore(cfg.cache_path, commit_every=0.5) if cfg.cache_path.exists() else None
        if store is not None:
            note_token_limits(store, cfg.out_path, cfg.max_tokens, earlier_limit)
        gen = ProgramGenerator(cfg, inputs, backend, store, builder)
        gen.take_earlier_limits(earlier_limit)
        gen.cache_only = True
        asked_again = 0  # requests for records whose clip changed since
        made = 0  # records made from the cache
        asked: list[str] = []  # the segments of the requests written
        made_ids: set[str] = set()  # and of the records made from the cache

        def request_lines() -> Iterator[bytes]:
            nonlocal out, loop, asked_again, made
            requested = 0
            for r in records:
                if cfg.limit is not None and requested >= cfg.limit:
                    return
                nid = r["narration_id"]
                prompt = builder.prompt(gen.info(r))
                if store is not None and gen.cached(prompt.hash) is not None:
                    loop = loop or asyncio.new_event_loop()
                    try:
                        record = loop.run_until_complete(gen.run_one(r, prompt))
                    except NoMoreRequests:  # (not cached after all: asked)
                        record = None
                    if record is not None and not (cfg.retry_invalid and record["status"] == "invalid"):
                        if out is None:
                            out = JsonlAppender(cfg.out_path, replace_keys={x["narration_id"] for x in records},
                                                sync_every=1.0, lock=lock)  # (as a live run's: not an fsync each)
                        if out.write(record):
                            made += 1
                            made_ids.add(nid)
                            if stats is not None:
                                stats[f"cached_{record['status']}"] += 1
                            if failures is not None and record["status"] != "valid":  # (as a live run lists them)
                                failures.append((nid, record["errors"][0]["message"] if record["errors"]
                                                 else record["status"]))
                        continue
                # max_completion_tokens: what every current OpenAI chat model takes (GPT-5-era ones refuse
                # max_tokens)
                body = {"model": backend.model, "messages": prompt.messages,
                        "temperature": params["temperature"], "max_completion_tokens": params["max_tokens"],
                        **({"response_format": fmt} if fmt["type"] != "none" else {}),
                        **(params.get("extra_body") or {})}
                requested += 1
                asked_again += nid in again
                asked.append(nid)
                head = gen.request_key(prompt.hash, token_limit=False)[:KEY_CHARS]
                yield json_line({"custom_id": f"{nid}@{clip_hash(inputs, r)}@{head}", "method": "POST",
                                 "url": BATCH_URL, "body": body}).encode("utf-8")

        try:
            written, removed = _write_parts(path, request_lines(), stream, max_requests, max_mb)
        except LeapError as e:  # (a stream's reader gone, a name taken): the records made are kept, and said
            if not made:
                raise
            raise LeapError(f"{e.message} ({made} record{'s' if made != 1 else ''} made from the program cache "
                            f"before that {'are' if made != 1 else 'is'} kept in {cfg.out_path})", path=e.path,
                            record=e.record, fix=e.fix) from None
        # the requests' segments are recorded until their results are ingested: a run that asks for them again
        # meanwhile (a live one, another --batch-file) is warned, since a batch submitted would pay for them twice
        if os.path.realpath(path) != os.devnull:  # (requests sent nowhere are out nowhere)
            warn_batch_pending(cfg.out_path, set(asked), f"--batch-file {shell_word(path)}")
            update_batch_pending(cfg.out_path, add=(asked, [str(p.path) for p in written if p.requests])
                                 if asked else None, removed={str(p.path) for p in removed},
                                 drop=made_ids | {nid for nid, status in done.items() if status == "valid"})
        if asked_again:
            log.warning("%d of the requests %s for records already done whose clip has changed since (their "
                        "descriptor record was made again, or their annotation changed): their results replace them",
                        asked_again, "is" if asked_again == 1 else "are")
        if parts is not None:
            parts.extend(written + removed)
        return sum(p.requests for p in written)
    finally:
        try:
            if loop is not None:  # (a task Ctrl-C left between its steps is cancelled, not destroyed pending)
                with contextlib.suppress(BaseException):
                    tasks = asyncio.all_tasks(loop)
                    for t in tasks:
                        t.cancel()
                    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                loop.close()
        finally:
            try:
                if store is not None:
                    store.close()
            finally:
                if out is not None:
                    out.close()  # (and the lock with it)
                else:
                    lock.release()


def _write_parts(path: Path, lines: Iterator[bytes], stream: bool, max_requests: int,
                 max_mb: float) -> tuple[list[BatchPart], list[BatchPart]]:
    """Write the request lines to ``path`` (a stream as they come; a file split by the limits, renamed into place
    once all are written), then remove an earlier --batch-file's files that these did not replace: (written,
    removed)."""
    max_bytes = int(max_mb * 1_000_000)
    sizes: list[tuple[int, int]] = [(0, 0)]  # (requests, bytes) per file
    oversize = 0  # requests over max_bytes alone
    if stream:
        names = [path]
        try:
            with _stream(path) as f:
                for line in lines:
                    f.write(line)
                    sizes[0] = (sizes[0][0] + 1, sizes[0][1] + len(line))
        except BrokenPipeError:  # (`--batch-file - | head`: it said nothing, exit 1)
            raise LeapError(f"its reader left after {sizes[0][0]} of the requests: what it got is incomplete",
                            path=path, fix="send the requests to a file (--batch-file FILE), or to a reader that "
                                           "takes them all") from None
    else:
        # each file is written under a temp name, and all are renamed once the last is written: how many files
        # the requests need is known only then, and their names say it
        with AtomicFiles(path) as files:
            f = open(files.new(), "wb")
            try:
                for line in lines:
                    oversize += len(line) > max_bytes
                    n, size = sizes[-1]
                    if n and (n + 1 > max_requests or size + len(line) > max_bytes):
                        f.close()
                        f = open(files.new(), "wb")
                        sizes.append((0, 0))
                        n, size = 0, 0
                    f.write(line)
                    sizes[-1] = (n + 1, size + len(line))
            except OSError as e:  # (a full disk: the user's path, not the temp file's, in the one line)
                e.filename, e.filename2 = str(path), None
                raise
            finally:
                f.close()
            names = batch_part_paths(path, len(sizes))
            if mine := next((p for p in names if p.exists() and not is_batch_input(p)), None):
                raise LeapError("the requests need a file of this name, which holds something else than Batch "
                                "requests: nothing was written", path=mine,
                                fix="move that file away, or give --batch-file a path of its own")
            files.commit(names)
    written = [BatchPart(name, n, size) for name, (n, size) in zip(names, sizes)]
    if stream and (sizes[0][0] > max_requests or sizes[0][1] > max_bytes):
        log.warning("%s is a stream, written unsplit: its %s (%s) are more than one Batch input file takes (%s, "
                    "%g MB): give --batch-file a file's path to have them split", path,
                    counted(sizes[0][0], "request"), size_text(sizes[0][1]), counted(max_requests, "request"), max_mb)
    elif oversize:
        log.warning("%d request%s larger than --batch-max-mb %g alone: each is a file of its own, over that "
                    "limit", oversize, " is" if oversize == 1 else "s are", max_mb)
    removed = []
    for old in [] if stream else _earlier_parts(path, names):
        try:
            old.unlink()
            removed.append(BatchPart(old, 0, 0, removed=True))
        except OSError as e:
            log.warning("%s, an earlier --batch-file's input file, could not be removed (%s): do not submit it",
                        old, e.strerror or e)
    return written, removed


def own_std(path: Path):
    """``sys.stdout`` or ``sys.stderr`` where ``path`` is this process's own (``/dev/stdout``, ``-``, the file or
    pipe it is redirected to), else None."""
    for std in (sys.stdout, sys.stderr):
        try:
            if os.path.samestat(os.stat(path), os.fstat(std.fileno())):
                return std
        except (OSError, AttributeError, ValueError):  # (a test's captured stream has no descriptor)
            pass
    return None


@contextlib.contextmanager
def _stream(path: Path) -> Iterator:
    """A binary file object writing to a stream path: this process's own standard output or error through its
    Python object (flushed first: what was printed so far stays before the requests, not over them), any other
    opened for appending."""
    own = own_std(path)
    if own is None:
        with open(path, "ab") as f:
            yield f
        return
    own.flush()
    yield own.buffer
    own.buffer.flush()


def size_text(n: int) -> str:
    """A file's size for a person: MB of 10^6 bytes, kB under 0.1 MB."""
    return f"{n / 1e6:.2f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"  # (199.98 MB, not 200.0 beside "200 MB")


BATCH_OUTPUT_FIX = ("pass the output file the OpenAI Batch API returned: JSONL, one "
                    '{"custom_id", "response", "error"} object per line')


CUT_FIX = "download the batch's output file again (nothing was ingested)"


def read_batch_output(path, numbers: list | None = None) -> list[dict]:
    """The result lines of a Batch output file (``numbers`` gets each one's line number in the file); anything
    else (another format, the Batch *input* file, a truncated download) is a one-line LeapError naming the line."""
    stdin = str(path) == "-"  # (a pipe, as --batch-file - writes one)
    path = Path("<stdin>" if stdin else path)
    if not stdin and path.is_dir():
        raise LeapError("is a folder, not a Batch output file", path=path, fix=BATCH_OUTPUT_FIX)
    if not stdin and not path.exists():
        raise LeapError("Batch output file not found", path=path, fix=BATCH_OUTPUT_FIX)
    data = sys.stdin.buffer.read() if stdin else path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.reason == "unexpected end of data" and e.end == len(data):  # a character cut at the end: a download
            raise LeapError("its last line is cut short, inside a character: a download that stopped part way?",
                            path=path, fix=CUT_FIX) from None
        raise LeapError("not a Batch output file (not UTF-8 text)", path=path, fix=BATCH_OUTPUT_FIX) from None
    lines = []
    rows = text.split("\n")  # (not splitlines: U+2028 inside a JSON string is no end)
    for i, raw in enumerate(rows, start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except json.JSONDecodeError as e:
            if i == len(rows) and raw.lstrip().startswith("{"):  # the last line, without its newline
                raise LeapError(f"its last line (line {i}) is cut short: a download that stopped part way?",
                                path=path, record=f"line {i}", fix=CUT_FIX) from None
            raise LeapError(f"not a Batch output file: line {i} is not JSON ({e.msg})", path=path, record=f"line {i}",
                            fix=BATCH_OUTPUT_FIX) from None
        except RecursionError:
            raise LeapError(f"not a Batch output file: line {i} nests JSON too deeply to read", path=path,
                            record=f"line {i}", fix=BATCH_OUTPUT_FIX) from None
        if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
            raise LeapError(f"not a Batch output file: line {i} is not an object with a custom_id", path=path,
                            record=f"line {i}", fix=BATCH_OUTPUT_FIX)
        if "response" not in line and "error" not in line:
            what = "a Batch request (the --batch-file input), not a result" if "body" in line else "not a Batch result"
            raise LeapError(f"line {i} is {what}", path=path, record=f"line {i}", fix=BATCH_OUTPUT_FIX)
        lines.append(line)
        if numbers is not None:
            numbers.append(i)
    if not lines:
        raise LeapError("the Batch output file holds no result", path=path, fix=BATCH_OUTPUT_FIX)
    return lines


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def ingest_batch(cfg: GenerateConfig, results_path, failures: list | None = None,
                 spent: dict | None = None) -> Counter:
    """Validate the Batch output and append its records to the programs file; a result that did not fail
    replaces a ``failed`` record (e.g. of an expired batch), and with ``cfg.retry_invalid`` an ``invalid`` one.
    ``results_path``: one output file, or a list of them (the outputs of a --batch-file split into several files,
    read as one: the input is read once). Returns counts per status, and ``repeated``: lines of a request already
    read (same ``custom_id`` and ``id``, or the same line where it has no ``id``: a file given twice), left out;
    ``other_settings``: records written from results asked for with other settings than ``cfg``'s (also counted by
    status); ``failures`` gets ``(narration_id, first error)`` of each invalid or failed record written (as a live run's
    summary); ``spent`` the ``requests`` and ``cost`` (USD, at the Batch price) this ingest added to the ledger,
    and the ledger's ``total`` for the output."""
    cfg = _openai(cfg)
    paths = [results_path] if isinstance(results_path, (str, Path)) else list(results_path)
    lines, where = [], []  # the result lines of every file, and (file, line number) of each
    seen, repeated = set(), 0
    for path in paths:
        numbers: list[int] = []
        for line, i in zip(read_batch_output(path, numbers), numbers):
            # one request's result twice (a file given twice, files cat'ed: paid once): the same request id, or
            # for lines without one (a compatible server's) the same line
            key = (line["custom_id"], str(line["id"]) if line.get("id") is not None
                   else json.dumps(line, sort_keys=True))
            if key in seen:
                repeated += 1
                continue
            seen.add(key)
            lines.append(line)
            where.append((path, i))
    ids_in = {}  # the narration ids of each file's results
    for line, (path, _) in zip(lines, where):
        ids_in.setdefault(path, set()).add(line["custom_id"].partition("@")[0])
    inputs, _, builder = _setup(cfg, asking=False)  # (results paid for: a video replaced since is extract's next)
    # the token limit the requests were written with (as recorded then; this ingest may raise it), which a cut
    # reply's finding says
    asked_limit = asked_token_limit(cfg.out_path)
    # compared with the settings --batch-file recorded, also before the programs file exists
    check_output(cfg, builder, inputs)
    by_id = {r["narration_id"]: r for r in inputs.records}
    for line, (path, i) in zip(lines, where):  # all checked before a record is written
        # NARRATION_ID@CLIP_HASH@KEY (an older leap's batch file: NARRATION_ID@CLIP_HASH; before
        # 2026-12-03: the narration id alone)
        nid, _, rest = line["custom_id"].partition("@")
        line["clip_hash"], _, line["request_key"] = rest.partition("@")
        if "@" in line["request_key"]:
            raise LeapError(f"custom_id {line['custom_id']!r} is not one leap wrote (NARRATION_ID@CLIP_HASH@KEY; "
                            "nothing was ingested)", path=path, record=f"line {i}",
                            fix="ingest the output of a batch written by leap generate-programs --batch-file")
        if nid in inputs.stale:  # (the CSV changed while the batch ran: extract first, then these are read)
            raise LeapError(f"custom_id {line['custom_id']!r}: its descriptor record was made from other annotations "
                            f"than the split CSV holds now ({inputs.stale[nid]} differs; nothing was ingested)",
                            path=path, record=f"line {i}",
                            fix="run leap extract for this split first (it makes only those records again), then "
                                "ingest this file again: its results are kept as the old clips' programs")
        if nid not in by_id and inputs.segments and nid not in inputs.segments and by_id.keys() & ids_in[path]:
            # (the file's others are this split's: a row removed since)
            raise LeapError(f"custom_id {line['custom_id']!r} is not a segment of the {cfg.split} split's CSV now "
                            "(nothing was ingested)", path=path, record=f"line {i}",
                            fix="ingest with the --split and the CSV the batch file was written from, or delete that "
                                "result's line (its row was removed since)")
        if nid not in by_id:
            raise LeapError(f"custom_id {line['custom_id']!r} is not a segment of the input (nothing was ingested)",
                            path=path, record=f"line {i}",
                            fix="ingest with the same --split, --descriptors and --shard as the batch file")
        line["custom_id"] = nid
    gen = ProgramGenerator(cfg, inputs, _BatchBackend(cfg), None, builder)
    counts: Counter = Counter(repeated=repeated) if repeated else Counter()
    # replaced by a result: a failed record, and with --retry-invalid an invalid one
    old = output_records(cfg, programs=False)  # (what decides: status, provenance, errors)
    invalid = {nid for nid, r in old.items() if r.get("status") == "invalid"}
    changed = clip_changed(inputs, builder)
    replaced = ({nid for nid, r in old.items() if r.get("status") == "failed" or changed(r)}
                | (invalid if cfg.retry_invalid else set()))
    # records of results asked for with other settings than the output's (the custom_id's key head said so): a
    # valid result of these settings replaces them
    other = {nid for nid, r in old.items() if _dict(r.get("provenance")).get("other_settings")}
    stays = old.keys() - replaced - invalid - other  # valid records no result replaces: their results are not validated

    prompt_hashes: dict[str, str] = {}  # (each segment's prompt built once: for its records, then its cache key)
    current = {nid: clip_hash(inputs, by_id[nid]) for nid in {line["custom_id"] for line in lines}}  # (once each)

    def result(line: dict) -> dict:
        """The program record of one result line (validated, no repair round); for a record that stays, only
        what picks among a segment's results (an ingest run again over 67k results took 34 s and 1.9 GB)."""
        nid = line["custom_id"]
        clip = current_clip = current[nid]
        if line["clip_hash"] and line["clip_hash"] != clip:  # asked for before the clip changed: kept as that clip's
            clip = line["clip_hash"]  # program, which the next --batch-file or run asks for again
        resp = _dict(line.get("response"))
        body = _dict(resp.get("body"))
        usage = reply_usage(body)  # (cached tokens left out: the Batch price is half the live one as it is)
        usage = {"prompt_tokens": usage["prompt_tokens"], "completion_tokens": usage["completion_tokens"]}
        if nid in stays:  # (its request is paid all the same: in the ledger once, by its id)
            return {"narration_id": nid, "status": "valid", "stays": True,
                    "provenance": {"clip_hash": clip, "usage": usage, "batch_request_id": line.get("id")}}
        info = gen.info(by_id[nid])
        phash = prompt_hashes.get(nid) or prompt_hashes.setdefault(nid, builder.prompt(info).hash)
        prov = {"backend": "openai-batch", "model": cfg.model,
                "prompt_hash": phash[:16], "clip_hash": clip, "attempts": 1,
                "usage": usage,
                "seconds": 0.0, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rounds": 1,
                "cached": False, "batch_request_id": line.get("id")}
        if body.get("model") and body["model"] != cfg.model:  # (as a live record: the name asked for, and this)
            prov["served_model"] = str(body["model"])
        if (line["request_key"] and clip == current_clip
                and line["request_key"] != gen.request_key(phash, token_limit=False)[:KEY_CHARS]):
            prov["other_settings"] = True  # (asked with other settings or another prompt than this ingest's; one
            # asked before its clip changed has another prompt, and is said as such)
        program, findings = None, []
        code = _status_code(resp)
        problem = reply_problem(body) if code == 200 and not line.get("error") else None
        if problem:  # a 200 without a completion (an error object, no choices): failed, as a live request is
            status = "failed"
            findings = [Finding("", redact(f"batch request failed: {problem}"))]
        elif line.get("error") or code != 200:
            status = "failed"
            said = _dict(body.get("error")).get("message")  # (OpenAI's per-request error, e.g. a 400's reason)
            err = line.get("error") or {"message": (f"HTTP {code}" + (f": {said}" if said else "")) if code is not None
                                        else "the result line has no response.status_code"}
            findings = [Finding("", redact(f"batch request failed: {err.get('message', err) if isinstance(err, dict) else err}"))]
        else:
            text = redact(reply_text(body))
            program, findings = gen.verify_here(text, info)
            if findings and reply_cut(body):
                findings = [token_limit_finding(asked_limit, cfg.out_path, batch=True)] + findings
            elif findings and cfg.repair_rounds and not repair_futile(text):
                prov["repair_pending"] = True  # (a live run would have asked a repair turn: --retry-errors asks it)
            status = "valid" if not findings else "invalid"
        return {"narration_id": nid, "status": status, "program": program,
                "errors": [f.to_dict() for f in findings], "provenance": prov}

    spends: list[tuple[str | None, float, dict]] = []  # (request id, cost, usage): the ledger's, once per request

    def spend(record: dict) -> None:
        if record["provenance"]["usage"]["prompt_tokens"]:  # the ledger of --max-cost: the Batch API bills half
            usage = record["provenance"]["usage"]
            spends.append((_attempt(record)[0], cfg.cost(usage) * BATCH_PRICE_FACTOR, usage))

    # a segment with several results in the file (an expired batch's error lines, then the retry's output; the
    # output of a batch and of its --retry-invalid batch, in one file): the best is the one written, valid before
    # invalid before failed, the first of equals (an invalid result before a valid one kept the invalid) but the
    # last of failures (the retry's newer error, not the expired one's); a result of the clip as it is now before
    # one asked for before it changed (two batches' outputs in one file, or in several files given at once); of
    # equals, one asked with these settings before one of other settings (an earlier --batch-file's, given with
    # this one's); of failures, a request that ran before one the Batch API never ran (expired, cancelled: the
    # outputs of an expired batch and of its retry, given in either order)
    results = [result(line) for line in lines]
    # an invalid record of a Batch request is replaced also, without --retry-invalid, by a valid reply of another
    # request (a --batch-file --retry-invalid batch's, paid to replace it: it was left out, and out of the ledger,
    # until the ingest was run again with --retry-invalid)
    replaced |= {r["narration_id"] for r in results if r["narration_id"] in other and r["status"] == "valid"
                 and not r["provenance"].get("other_settings")
                 and r["provenance"]["clip_hash"] == current[r["narration_id"]]}
    replaced |= {r["narration_id"] for r in results if r["narration_id"] in invalid and r["status"] == "valid"
                 and _attempt(r)[0] is not None and _attempt(old[r["narration_id"]])[0] not in (None, _attempt(r)[0])}
    order = {"valid": 0, "invalid": 1, "failed": 2}

    def rank(i: int) -> tuple[bool, int, bool, bool]:
        r, error = results[i], lines[i].get("error")
        return (r["provenance"]["clip_hash"] != current[r["narration_id"]], order[r["status"]],
                bool(r["provenance"].get("other_settings")), isinstance(error, dict) and error.get("code") in NOT_RUN)

    chosen: dict[str, int] = {}
    for i, r in enumerate(results):
        j = chosen.get(r["narration_id"])
        if j is None or rank(i) < rank(j) or rank(i) == rank(j) and r["status"] == "failed":
            chosen[r["narration_id"]] = i
    of_segment: dict[str, list[int]] = {}
    for i, r in enumerate(results):
        of_segment.setdefault(r["narration_id"], []).append(i)

    def to_cache(nid: str, head: str) -> tuple[int, bool] | None:
        """The result of a segment whose reply goes into the program cache, and whether it is known valid: the one
        its record is made from (``chosen``; of a record that stays, which is not validated again, the result of
        its own request), else the first other reply. Only a result that holds a reply (not a failure, nor an
        expired or cancelled request: a live run caches none), asked for from the clip as it is now (its prompt is
        the one built here; a custom_id without the clip hash does not say) and with these settings (``head``,
        the custom_id's key head; one without it does not say). Not a reply cut at the token limit: the limit it
        was asked with is not known here (--max-tokens may have been raised since the requests were written;
        cached under the higher limit's key, a live run said to raise it again)."""
        def fits(i: int) -> bool:
            return (lines[i]["clip_hash"] == current[nid] and lines[i]["request_key"] in ("", head)
                    and (body := _reply(lines[i])) is not None and not reply_cut(body))

        replies = [i for i in of_segment[nid] if fits(i)]
        if nid not in stays:
            i = chosen[nid]
            return (i, results[i]["status"] == "valid") if i in replies else (replies[0], False) if replies else None
        own = _attempt(old[nid])[0]
        mine = [i for i in replies if own is not None and lines[i].get("id") is not None and str(lines[i]["id"]) == own]
        return (mine[0], True) if mine else (replies[0], False) if replies else None

    # (fsync'ed once a second, not each line: 67k fsyncs were 14 s of a 76 s ingest at EPIC's train size, minutes on
    # a network file system; a line a crash loses is read again from the results file, its cost counted already)
    with JsonlAppender(cfg.out_path, replace_keys=replaced, sync_every=1.0) as out, \
            ProgramStore(cfg.cache_path) as store:
        note_token_limits(store, cfg.out_path, cfg.max_tokens, asked_limit)  # (its results: under this one's keys)
        written_ids = set()
        finished = False
        # Every result with its request id was paid, whether or not a record is made from it (left out for a
        # better one, already present): in the ledger, once per id across ingests, before any record is written.
        # A stop part way (Ctrl-C, SIGTERM, a full disk, a kill) then leaves no written record whose cost is not
        # counted (they were added at the end: a stopped ingest counted none, and its rerun found them present), and
        # the id of a record present that the ledger lacks is one an ingest by a leap before the ledger kept ids
        # wrote (it added the cost): counted. The results without an id are added as their records are written.
        for record in results:
            if _attempt(record)[0] is not None:
                spend(record)
        added = store.add_batch_spend(cfg.out_path, spends, counted={
            i for r in old.values() if (i := _attempt(r)[0]) is not None}, kept="no record was written")
        spends.clear()
        try:
            # each segment's paid reply goes into the program cache as a live run's does, under the key a live run
            # of these settings looks up (ProgramGenerator.request_key, from the pieces the request bodies are
            # written from): a later run over the same segments (the output lost, --force, another --out) asks
            # nothing again. A valid reply replaces what the key holds (as a live --retry-invalid's does); one
            # not known valid goes only where the key holds nothing (an earlier run's reply may be valid). The same
            # results again put nothing more.
            put = 0
            for nid in of_segment:
                phash = prompt_hashes.get(nid) or builder.prompt(gen.info(by_id[nid])).hash
                if (pick := to_cache(nid, gen.request_key(phash, token_limit=False)[:KEY_CHARS])) is None:
                    continue
                i, valid = pick
                key = gen.request_key(phash)
                body = _reply(lines[i])
                text = redact(reply_text(body))
                have = store.get(key)
                if have is None or (valid and have[0] != text):
                    store.put(key, text, reply_usage(body), str(body.get("model") or cfg.model), commit=False)
                    put += 1
                    if put % 1000 == 0:  # (a day's 67k replies are not all held in memory)
                        store.commit()
            for i, record in enumerate(results):
                nid, status = record["narration_id"], record["status"]
                if chosen[nid] != i:
                    continue
                if record.get("stays"):
                    counts["already_present"] += 1
                    continue
                if (prior := _attempt(old.get(nid)))[0] is not None and prior == _attempt(record):
                    counts["already_present"] += 1  # (the request its record came from: written and paid before)
                    continue
                # A failure leaves an invalid record, or one of a clip changed since, as it was; over a failed record
                # it is written where it is another request's (resubmitted, it failed once more: the newer error),
                # and the same result ingested again is already present
                again = (status == "failed" and nid in replaced and _attempt(old.get(nid)) != _attempt(record))
                written = (not (status == "failed" and nid in replaced)
                           or again and (old.get(nid) or {}).get("status") == "failed") and out.write(record)
                counts[status if written or again else "already_present"] += 1
                if again and not written and failures is not None:
                    failures.append((nid, record["errors"][0]["message"] + " (its record stays as it was)"))
                if not written and status == "valid" and nid in invalid:  # a better result left out
                    counts["invalid_kept"] += 1
                if written:
                    written_ids.add(nid)
                    if _attempt(record)[0] is None:  # (one with its request id is counted already)
                        spend(record)
                    if record["provenance"].get("other_settings"):
                        counts["other_settings"] += 1
                    if status != "valid" and failures is not None:
                        failures.append((nid, record["errors"][0]["message"] if record["errors"] else status))
                    if record["provenance"]["clip_hash"] != current[nid]:
                        counts["asked_before_the_clip_changed"] += 1
            for i, record in enumerate(results):  # the other results of a segment written now: paid, and said
                if chosen[record["narration_id"]] != i:
                    counts["superseded"] += 1
                    if record["narration_id"] in written_ids and _attempt(record)[0] is None:
                        spend(record)
            finished = True
        finally:  # (an error part way: the records written are kept, and so is what they cost)
            try:
                if spends:  # (results without a request id: a compatible server's)
                    more = store.add_batch_spend(cfg.out_path, spends, kept="the records written are kept (the "
                                                 "cost of results without a request id is not in the ledger)")
                    added = {k: added[k] + more[k] for k in ("requests", "cost")}
            finally:
                # a segment waits for no request of its own where a record was written for it now, its record is
                # valid, an ingest made its record since the last --batch-file wrote its requests (a stopped
                # ingest's rerun finds them present), or (an ingest to its end) a result of another request than
                # its record's came in (a --retry-* batch's failure that left the record as it was: that batch is
                # back; the same results ingested again are not, while a --retry-* batch of theirs is out). Under
                # the output's lock: a --batch-file --retry-* meanwhile records its own
                since = batch_pending(cfg.out_path)["written"]
                back = {nid for nid, rows in of_segment.items()
                        if any(_attempt(results[i]) != _attempt(old.get(nid)) for i in rows)} if finished else set()
                update_batch_pending(cfg.out_path, drop=written_ids | back | {
                    nid for nid, r in old.items() if r.get("status") == "valid"
                    or _dict(r.get("provenance")).get("backend") == "openai-batch"
                    and str(_dict(r.get("provenance")).get("created") or "") > since})
        if spent is not None:
            spent.update(added, total=store.spent(cfg.out_path)["cost"])
    return counts


def _status_code(resp: dict):
    """A result's ``response.status_code`` (``"200"`` of some servers read as 200)."""
    code = resp.get("status_code")
    return int(code) if isinstance(code, str) and code.strip().isdecimal() else code


def _reply(line: dict) -> dict | None:
    """The chat completion of a result line that holds one (HTTP 200, no error, a message: what a live request
    returns and caches), else None (a failed record's line)."""
    resp = _dict(line.get("response"))
    body = _dict(resp.get("body"))
    if line.get("error") or _status_code(resp) != 200 or reply_problem(body):
        return None
    return body


def _attempt(record: dict | None) -> tuple:
    """Which request a record of an ingest came from: its Batch API request id, or where it has none (a result
    line of a compatible server) its first error; (None, None) for others."""
    record = record or {}
    request = (record.get("provenance") or {}).get("batch_request_id")
    if request is not None:
        return str(request), None  # (an id written as a number by one server, as a string by another)
    errors = record.get("errors") or [{}]
    return None, errors[0].get("message") if isinstance(errors[0], dict) else None


class _BatchBackend(Backend):
    """The openai backend as the Batch requests are made for it (no client, no key): its name, model, schema and
    parameters are the pieces of ``ProgramGenerator.request_key``, so that an ingested result is cached under the
    key a live run of the same settings looks up; and the request bodies are written from them."""
    name = OpenAIBackend.name

    def __init__(self, cfg: GenerateConfig):
        self.model = cfg.model
        self._params = openai_params(cfg.temperature, cfg.max_tokens, cfg.response_format, cfg.extra_body)
        self.supports_schema = self._params["response_format"] == "json_schema"

    def params(self) -> dict:
        return self._params
