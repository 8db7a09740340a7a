"""SQLite cache and call log of program generation (``{workdir}/programs/cache.sqlite``).

``cache``: reply text + usage by key = hash(backend, model, messages, schema, params); a re-run with the
same inputs reads replies from here and makes no request. ``calls``: one row per LLM call or cache hit
(narration id, prompt hash, response, tokens, latency, attempts, outcome, error). The schema evolves by
numbered migrations tracked in ``PRAGMA user_version``. ``ledger``: the money spent on requests per output
file (what ``--max-cost`` caps, across runs).

Writes are buffered and written in one short transaction at most every ``commit_every`` seconds and on
close (a commit per call costs more CPU than the rest of a cached lookup; no transaction stays open, so
parallel shard processes sharing the database do not wait on each other); a killed process loses at most
that much of the log, and without the journal (below) of the cache and the ledger. A paid reply that a repair round follows is committed when it is
logged (``log_call(durable=True)``), with its cache row and spend, before the next request goes out: its record
is not written yet, so a killed run would otherwise ask for it again. A reply that finishes its record needs no
commit of its own (a commit per reply cost ~0.15 ms of client CPU and ~6 points of the concurrency bound in
``benchmarks/bench_generate.py``): the journal keeps it and its spend until the next batch. The stage calls ``tick()``
every ``commit_every`` seconds, so rows are written on time also while no new write comes (a slow server).
With ``background=True`` (``leap generate-programs``) the periodic transactions are written by a thread of their own
on a second connection, so that their disk work (7-11 ms each, 60-70 ms where SQLite checkpoints its WAL into the
database) does not stop the event loop while replies wait; rows written meanwhile wait for the next transaction
(the journal keeps them), ``commit()`` returns once everything is written, and a failed
background write is raised by the next write or commit, its rows kept for a later one.
With ``journal=True`` (``leap generate-programs``) every reply and spend buffered by ``put`` and ``add_spend`` is also
appended, as it comes, to a file of this process in ``cache.sqlite.unwritten/`` (one unbuffered write, ~10 us; no
fsync: it outlives a killed process, not a crashed machine, as SQLite's WAL at synchronous=NORMAL), and the file goes
once its rows are in the database: a reply received and not yet in its output file's record nor in the database
(being checked, or waiting for the next batch) is not lost with a killed process. The next ``ProgramStore`` opened
on the cache writes the files of processes that ended (each is locked by its process while it runs) into the
database. A process killed in the instant between a batch's transaction and its file's deletion has that batch's
spend counted twice (the replies once).
Response and error texts pass through ``leap_cli.programs.redact.redact`` before they are stored.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from leap_cli.common import counted
from leap_cli.errors import LeapError
from leap_cli.io import stable_hash
from leap_cli.programs.redact import redact, well_formed

log = logging.getLogger(__name__)

MIGRATIONS = [
    # 1
    """CREATE TABLE cache (key TEXT PRIMARY KEY, response TEXT NOT NULL, prompt_tokens INTEGER,
       completion_tokens INTEGER, model TEXT, created REAL)""",
    # 2
    """CREATE TABLE calls (id INTEGER PRIMARY KEY AUTOINCREMENT, narration_id TEXT, backend TEXT, model TEXT,
       prompt_hash TEXT, cache_key TEXT, round INTEGER, response TEXT, prompt_tokens INTEGER,
       completion_tokens INTEGER, latency REAL, attempts INTEGER, cached INTEGER, outcome TEXT, error TEXT,
       created REAL)""",
    # 3
    "CREATE INDEX calls_by_narration ON calls(narration_id)",
    # 4
    """CREATE TABLE ledger (out TEXT PRIMARY KEY, cost REAL NOT NULL DEFAULT 0, prompt_tokens INTEGER NOT NULL DEFAULT 0,
       completion_tokens INTEGER NOT NULL DEFAULT 0, requests INTEGER NOT NULL DEFAULT 0, updated REAL)""",
    # 5: the prompt tokens the provider read from its prompt cache (priced apart: --price-cached-in)
    "ALTER TABLE cache ADD COLUMN cached_tokens INTEGER",
    # 6: the reply stopped at the token limit (finish_reason "length"): a rerun says so again and asks no repair
    "ALTER TABLE cache ADD COLUMN cut INTEGER",
    # 7: a capped run's check of the model's latest paid reply (last_paid_tokens) without a scan of the call log
    "CREATE INDEX IF NOT EXISTS calls_by_model ON calls(backend, model, cached)",
    # 8: the Batch API requests whose cost the ledger holds, per output (add_batch_spend: each counted once)
    "CREATE TABLE IF NOT EXISTS batch_paid (out TEXT NOT NULL, request_id TEXT NOT NULL, PRIMARY KEY (out, request_id))",
    # 9: the --max-tokens each output was asked with (note_token_limit): a raised one looks up each lower one's replies
    """CREATE TABLE IF NOT EXISTS token_limits (out TEXT NOT NULL, max_tokens INTEGER NOT NULL,
       PRIMARY KEY (out, max_tokens))""",
]


def cache_key(backend: str, model: str, messages: list[dict] | str, schema: dict | str | None, params: dict) -> str:
    """hash(backend, model, prompt, schema, params); ``messages`` and ``schema`` may be given as their
    ``stable_hash`` (the same key, without re-serialising them)."""
    if isinstance(schema, dict):
        schema = stable_hash(schema)
    if not isinstance(messages, str):
        messages = stable_hash(messages)
    return stable_hash({"backend": backend, "model": model, "messages": messages, "schema": schema, "params": params})


class ProgramStore:
    _CACHE_SQL = ("INSERT OR REPLACE INTO cache (key, response, prompt_tokens, completion_tokens, model, created, "
                  "cached_tokens, cut) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
    _CALL_SQL = ("INSERT INTO calls (narration_id, backend, model, prompt_hash, cache_key, round, response, prompt_tokens, "
                 "completion_tokens, latency, attempts, cached, outcome, error, created) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
    _LAST_PAID_SQL = ("SELECT prompt_tokens FROM calls WHERE backend = ? AND model = ? AND cached = 0 AND response IS "
                      "NOT NULL ORDER BY id DESC LIMIT 1")
    _LEDGER_SQL = ("INSERT INTO ledger (out, cost, prompt_tokens, completion_tokens, requests, updated) VALUES (?, ?, ?, ?, ?, ?) "
                   "ON CONFLICT(out) DO UPDATE SET cost = cost + excluded.cost, prompt_tokens = prompt_tokens + "
                   "excluded.prompt_tokens, completion_tokens = completion_tokens + excluded.completion_tokens, "
                   "requests = requests + excluded.requests, updated = excluded.updated")

    def __init__(self, path: str | Path, commit_every: float = 0.0, *, background: bool = False,
                 journal: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # created here, 0666 less the umask as every file leap writes (SQLite's own is 0644 whatever the umask;
        # its -wal and -shm files take this file's mode)
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o666))
        try:
            self.db = self._connect()
            # the connection that writes: the same one, or one that only the writer thread uses
            self._wdb = self._connect(check_same_thread=False) if background else self.db
        except sqlite3.DatabaseError as e:  # a damaged or foreign file, a folder in its place
            raise self._damaged("opened", e) from None
        self.commit_every = commit_every
        self._last_commit = time.monotonic()
        self._ledger_keys: dict[str, str] = {}
        # rows not yet written: buffered in memory and written in one short transaction, so that parallel
        # processes (--shard i/n) sharing the database never wait on a transaction held open
        self._cache: dict[str, tuple] = {}
        self._calls: list[tuple] = []
        self._ledger: dict[str, list] = {}
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="leap-store") if background else None
        self._flushing: tuple[dict, list, dict, list] | None = None  # the rows the writer thread is writing
        self._flush: Future | None = None
        # the journal (module docstring): its files of rows not yet written (path, locked descriptor), the last
        # one being appended to while ``_journal_fd`` is set
        self.unwritten_dir = self.path.with_name(self.path.name + ".unwritten")
        self._journal = journal
        self._journal_fd: int | None = None
        self._journal_files: list[tuple[Path, int]] = []
        self._journal_seq = 0
        try:
            self.migrate()
            self.replayed = self._replay()
        except sqlite3.DatabaseError as e:  # (a full disk: a traceback)
            raise self._damaged("opened", e) from None

    def _damaged(self, what: str, e: sqlite3.DatabaseError) -> LeapError:
        said = str(e)
        if "readonly" in said or "unable to open" in said:  # the file or its folder (its -wal, -shm) not writable
            return LeapError(f"the program cache cannot be {what}: {said}", path=self.path,
                             fix=f"make {self.path.parent} and the cache files in it writable (it keeps the paid "
                                 "replies and the spend of --max-cost), or give --out elsewhere and copy it there")
        if "locked" in said:  # (another process held it past the busy timeout: nothing is wrong with the file)
            return LeapError(f"the program cache cannot be {what}: another process kept it locked for over "
                             f"{self.TIMEOUT:.0f} s ({said})", path=self.path,
                             fix="run the same command again; if it stays locked, look for a leap process (or an "
                                 "sqlite3 shell) holding it, and for a file system without working locks (NFS "
                                 "without its lock service)")
        if "disk is full" in said or "disk I/O error" in said:
            return LeapError(f"the program cache cannot be {what}: {said}", path=self.path,
                             fix="free space on its disk, or lift the quota or file-size limit (ulimit -f, a job "
                                 "scheduler's), and run the same command again: nothing written is lost")
        return LeapError(f"the program cache cannot be {what} ({said})", path=self.path,
                         fix="move it aside and run again: a new cache starts; the programs already written are "
                             "kept, but --max-cost no longer counts the spend recorded in the old one")

    def _read(self, sql: str, args: tuple = ()) -> tuple[list[str], list[tuple]]:
        """The column names and rows of a query; a damaged page (database disk image is malformed) is one line."""
        try:
            cur = self.db.execute(sql, args)
            return [d[0] for d in cur.description], cur.fetchall()
        except sqlite3.DatabaseError as e:
            raise self._damaged("read", e) from None

    TIMEOUT = 30.0  # seconds a connection waits for another process's write (SQLite's busy timeout)

    def _connect(self, **kwargs) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self.TIMEOUT, **kwargs)
        # (a new file switched to WAL by several processes at once: the switch answers "database is locked" at
        # once, without the busy wait; the parts of a job array opening a new cache together met it)
        deadline = time.monotonic() + self.TIMEOUT
        while True:
            try:
                db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    db.close()
                    raise
                time.sleep(0.02)
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def _written(self) -> None:
        if time.monotonic() - self._last_commit < self.commit_every:
            return
        if self._writer is None:
            self.commit()
        elif self._flush is None or self._flush.done():  # else the rows wait for the next due write
            self._finish_flush()
            self._flush = self._writer.submit(self._write, self._take())
            self._last_commit = time.monotonic()

    def tick(self) -> None:
        """Write the buffered rows once they are due (``commit_every``): called on a timer by a stage that may
        wait long without a write (replies in flight from a slow server), so that rows buffered before the wait
        are on disk within about ``commit_every``, not only at the next write."""
        if self._cache or self._calls or self._ledger:
            self._written()

    def _take(self) -> tuple[dict, list, dict, list]:
        """The buffered rows, handed over (the buffers start empty), with the journal's files that hold them."""
        rows = self._flushing = (self._cache, self._calls, self._ledger, self._journal_files)
        self._cache, self._calls, self._ledger, self._journal_files = {}, [], {}, []
        self._journal_fd = None  # the next row starts a file of its own
        return rows

    def _write(self, rows: tuple[dict, list, dict, list]) -> None:
        cache, calls, ledger, files = rows
        if cache or calls or ledger:
            try:
                with self._wdb:
                    self._wdb.executemany(self._CACHE_SQL, cache.values())
                    self._wdb.executemany(self._CALL_SQL, calls)
                    self._wdb.executemany(self._LEDGER_SQL, [(k, *v, time.time()) for k, v in ledger.items()])
            except sqlite3.Error as e:  # a full disk, a read-only folder, a lock held past the 30-s timeout
                raise self._unwritten(e, "finished programs are kept in the output file (the replies in flight, "
                                         "and the ledger's last spend, may be lost)") from None
        _drop(files)  # (at once, in the thread that wrote them: a kill after this would count their spend twice)

    def _log(self, row: tuple) -> None:
        """Append a buffered row to the journal (module docstring)."""
        try:
            if self._journal_fd is None:
                self._journal_fd = self._journal_file()
            os.write(self._journal_fd, (dumps(row) + "\n").encode())
        except (OSError, ValueError) as e:  # (a full disk; a file system without flock): the rows are still
            self._journal = False  # buffered, and written with the next batch
            log.warning("cannot keep the replies not yet in the program cache in %s (%s): a killed run may pay "
                        "again for those of its last second", self.unwritten_dir, getattr(e, "strerror", None) or e)

    def _journal_file(self) -> int:
        """A new journal file of this process, locked before anything is written to it."""
        for _ in range(5):
            self._journal_seq += 1
            path = self.unwritten_dir / f"{os.getpid()}-{id(self):x}-{self._journal_seq}.jsonl"
            self.unwritten_dir.mkdir(exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o666)
            except FileNotFoundError:  # (another process's close took the empty folder away meanwhile)
                continue
            try:
                # another process's replay may take the file, empty, before this lock (it waits for that one's)
                fcntl.flock(fd, fcntl.LOCK_EX)
                if os.fstat(fd).st_nlink:
                    self._journal_files.append((path, fd))
                    return fd
            except OSError:  # (no flock on this file system: no journal, and no file of it left behind)
                _drop([(path, fd)])
                raise
            os.close(fd)  # taken away meanwhile: another name
        raise OSError(errno.EAGAIN, "its files were taken by other processes as they were made")

    def _replay(self) -> int:
        """Write the journal files of processes that ended without writing their rows (killed) into the database;
        the number of replies they held."""
        try:
            names = sorted(os.listdir(self.unwritten_dir))
        except OSError:  # (none: the usual case)
            return 0
        if names and not os.access(self.unwritten_dir, os.W_OK | os.X_OK):  # (taken, they could not be deleted,
            log.warning("cannot take the replies of stopped runs in %s into the program cache: the folder is not "
                        "writable", self.unwritten_dir)  # and the next open would count their spend again)
            return 0
        replies = 0
        for name in names:
            path = self.unwritten_dir / name
            try:
                fd = os.open(path, os.O_RDWR)
            except OSError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:  # its process still runs
                    continue
                if os.fstat(fd).st_nlink == 0:  # written and deleted by another process meanwhile
                    continue
                with os.fdopen(os.dup(fd), "rb") as f:
                    data = f.read()
                if not data:  # (a process made it and was stopped before its first row)
                    os.unlink(path)
                    continue
                cache, ledger = {}, {}
                for line in data.split(b"\n"):
                    try:
                        kind, *row = json.loads(line)
                    except (ValueError, TypeError):  # the last line of a process killed while writing it
                        continue
                    if (kind == "c" and len(row) == 8 and isinstance(row[0], str) and isinstance(row[1], str)
                            and all(isinstance(v, (int, float, str, type(None))) for v in row)):
                        cache[row[0]] = row
                    elif (kind == "l" and len(row) == 5 and isinstance(row[0], str)
                          and all(isinstance(v, (int, float)) for v in row[1:])):
                        sums = ledger.setdefault(row[0], [0.0, 0, 0, 0])
                        ledger[row[0]] = [a + b for a, b in zip(sums, row[1:])]
                with self.db:
                    self.db.executemany(self._CACHE_SQL, cache.values())
                    self.db.executemany(self._LEDGER_SQL, [(k, *v, time.time()) for k, v in ledger.items()])
                replies += len(cache)
                try:
                    os.unlink(path)
                except OSError as e:  # (written: kept, the next open would count its spend again)
                    log.warning("%s: its replies are in the program cache now, but it cannot be deleted (%s): "
                                "delete it, or the next run counts its spend again", path, e.strerror or e)
            finally:
                os.close(fd)
        if replies:
            log.info("took %s of a stopped run from %s into the program cache", counted(replies, "reply", "replies"),
                     self.unwritten_dir)
        _rmdir(self.unwritten_dir)
        return replies

    def _unwritten(self, e: sqlite3.Error, kept: str) -> LeapError:
        """The one line of a write to the database that failed; ``kept``: what of the run is kept all the same."""
        if getattr(e, "sqlite_errorname", None) == "SQLITE_CORRUPT" or "locked" in str(e):
            return self._damaged("written", e)  # (locked: another process held it past the timeout, said as such)
        return LeapError(f"cannot write the program cache ({e})", path=self.path,
                         fix="free disk space, lift a quota or file-size limit (ulimit -f, a job scheduler's), or "
                             f"make the folder writable, then run again: {kept}")

    def _finish_flush(self) -> None:
        """Wait for the writer thread's transaction; where it failed, its rows go back into the buffers (a later
        commit tries them again) and its error is raised here."""
        flush, rows, self._flush = self._flush, self._flushing, None
        if flush is None:
            return
        try:
            flush.result()
        except BaseException:
            cache, calls, ledger, files = rows
            self._cache = {**cache, **self._cache}
            self._calls = calls + self._calls
            self._journal_files = files + self._journal_files
            for k, v in ledger.items():
                row = self._ledger.setdefault(k, [0.0, 0, 0, 0])
                self._ledger[k] = [a + b for a, b in zip(row, v)]
            raise
        finally:
            self._flushing = None

    def commit(self) -> None:
        """Write the buffered rows (one transaction); with a writer thread, after its own and by it."""
        if self._writer is None:
            self._write((self._cache, self._calls, self._ledger, self._journal_files))  # kept where it fails
            self._cache, self._calls, self._ledger, self._journal_files = {}, [], {}, []
            self._journal_fd = None
        else:
            self._finish_flush()
            self._flush = self._writer.submit(self._write, self._take())
            self._finish_flush()
        self._last_commit = time.monotonic()

    def migrate(self) -> int:
        """The tables made or brought up to this leap's ``MIGRATIONS``, in one write transaction that reads the
        version again once it holds the lock: the parts of a job array opening a new cache at once each read
        version 0, and all but the first failed on "table cache already exists"."""
        if self.db.execute("PRAGMA user_version").fetchone()[0] >= len(MIGRATIONS):
            return len(MIGRATIONS)
        self.db.execute("BEGIN IMMEDIATE")  # (waits up to the connection's timeout for another process's turn)
        try:
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            for sql in MIGRATIONS[version:]:
                self.db.execute(sql)
            if version < len(MIGRATIONS):
                self.db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
            self.db.commit()
        except BaseException:
            self.db.rollback()
            raise
        return len(MIGRATIONS)

    def get(self, key: str) -> tuple[str, dict, str, bool] | None:
        """A cached reply: its text, usage (``cached_tokens`` where there were any), model, and whether it stopped
        at the token limit; None when there is none."""
        if key in self._cache:
            row = self._cache[key]
        elif self._flushing is not None and key in self._flushing[0]:
            row = self._flushing[0][key]
        else:
            rows = self._read("SELECT key, response, prompt_tokens, completion_tokens, model, created, cached_tokens, "
                              "cut FROM cache WHERE key = ?", (key,))[1]
            row = rows[0] if rows else None
        if row is None:
            return None
        usage = {"prompt_tokens": row[2] or 0, "completion_tokens": row[3] or 0}
        if row[6]:
            usage["cached_tokens"] = row[6]
        return row[1], usage, row[4] or "", bool(row[7])

    def put(self, key: str, response: str, usage: dict, model: str, *, cut: bool = False, commit: bool = True) -> None:
        """Cache a reply (``cut``: it stopped at the token limit). ``commit=False``: not even a due commit now (the
        caller's next write or ``close`` makes it), e.g. while a request slot waits for this call."""
        row = self._cache[key] = (key, redact(response), usage.get("prompt_tokens", 0),
                                  usage.get("completion_tokens", 0), well_formed(model), time.time(),
                                  usage.get("cached_tokens") or None, int(cut))
        if self._journal:
            self._log(("c", *row))
        if commit:
            self._written()

    def add_spend(self, out: str | Path, cost: float, usage: dict, requests: int = 1, *, commit: bool = True) -> None:
        """Add the cost of requests made for the output file ``out`` to the ledger (``commit`` as in ``put``)."""
        key = self.ledger_key(out)
        spend = (cost, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0), requests)
        row = self._ledger.setdefault(key, [0.0, 0, 0, 0])
        self._ledger[key] = [a + b for a, b in zip(row, spend)]
        if self._journal:
            self._log(("l", key, *spend))
        if commit:
            self._written()

    def token_limits(self, out: str | Path) -> list[int]:
        """The ``--max-tokens`` values runs on the output file ``out`` asked with (``note_token_limit``), lowest
        first."""
        _, rows = self._read("SELECT max_tokens FROM token_limits WHERE out = ? ORDER BY max_tokens",
                             (self.ledger_key(out),))
        return [int(r[0]) for r in rows]

    def note_token_limit(self, out: str | Path, limit: int) -> None:
        """Record that a run on ``out`` asks with ``--max-tokens limit`` (before its first request): a later run
        with a higher limit looks up the replies cached at each lower one (``ProgramGenerator.cached``)."""
        self.commit()
        try:
            with self._wdb as db:
                db.execute("INSERT OR IGNORE INTO token_limits (out, max_tokens) VALUES (?, ?)",
                           (self.ledger_key(out), int(limit)))
        except sqlite3.Error as e:
            raise self._unwritten(e, "nothing was asked yet") from None

    def add_batch_spend(self, out: str | Path, spends: list[tuple[str | None, float, dict]],
                        counted: Iterable[str] = (),
                        kept: str = "the records written are kept (their cost is not in the ledger)") -> dict:
        """Add Batch API results' cost, ``(request id, cost, usage)`` each, to the ledger of ``out``: once per
        request id across ingests (a result ingested again, after --force or from a second copy of its file, was
        paid once); a result without an id (a compatible server's) each time. ``counted``: request ids the ledger
        holds already without their record here (those of the records an ingest by a leap before this table wrote:
        it added their cost). One transaction, which records the ids. Returns the ``requests`` and ``cost`` added;
        ``kept``: what the error of a failed write says is kept."""
        self.commit()  # (the buffered rows first: the ledger row below adds to what they hold)
        key = self.ledger_key(out)
        counted = set(counted)
        ids = list(dict.fromkeys(i for i, _, _ in spends if i is not None))
        try:
            with self._wdb as db:
                db.execute("BEGIN IMMEDIATE")  # (the check and the insert in one write transaction: two ingests
                seen = {i for i in ids if i in counted}  # of one output at once count a request once)
                for start in range(0, len(ids), 500):
                    part = ids[start:start + 500]
                    seen.update(r[0] for r in db.execute(
                        f"SELECT request_id FROM batch_paid WHERE out = ? AND request_id IN ({','.join('?' * len(part))})",
                        (key, *part)))
                new = []
                for request, cost, usage in spends:
                    if request is None or request not in seen:
                        new.append((cost, usage))
                        if request is not None:
                            seen.add(request)
                db.executemany("INSERT OR IGNORE INTO batch_paid (out, request_id) VALUES (?, ?)",
                               [(key, i) for i in ids])
                if new:
                    db.execute(self._LEDGER_SQL, (key, sum(c for c, _ in new),
                                                  sum(u.get("prompt_tokens", 0) for _, u in new),
                                                  sum(u.get("completion_tokens", 0) for _, u in new), len(new),
                                                  time.time()))
        except sqlite3.Error as e:
            raise self._unwritten(e, kept) from None
        return {"requests": len(new), "cost": sum(c for c, _ in new)}

    def ledger_key(self, out: str | Path) -> str:
        """The ledger's key of an output file: its path relative to the database's folder when it lies below it
        (so the ledger moves with the work directory), else its absolute path."""
        if str(out) not in self._ledger_keys:
            path, home = Path(out).resolve(), self.path.resolve().parent
            try:
                key = path.relative_to(home).as_posix()
            except ValueError:
                key = str(path)
            # (a name that is not UTF-8, from a Latin-1 file system: its bytes escaped, as SQLite takes UTF-8 only)
            self._ledger_keys[str(out)] = os.fsencode(key).decode("utf-8", "backslashreplace")
        return self._ledger_keys[str(out)]

    def spent(self, out: str | Path) -> dict:
        """What the ledger holds for ``out``: ``cost`` (USD), ``prompt_tokens``, ``completion_tokens``, ``requests``."""
        self.commit()
        cols, rows = self._read("SELECT cost, prompt_tokens, completion_tokens, requests FROM ledger WHERE out = ?",
                                (self.ledger_key(out),))
        return dict(zip(cols, rows[0] if rows else (0.0, 0, 0, 0)))

    def last_paid_tokens(self, backend: str, model: str) -> int | None:
        """The prompt tokens the endpoint reported for the latest reply paid for with ``backend`` and ``model``
        (0: it reported none), None where there is none."""
        self.commit()
        _, rows = self._read(self._LAST_PAID_SQL, (backend, model))
        return int(rows[0][0] or 0) if rows else None

    def paid_turns(self, backend: str, model: str, rounds: int) -> list[tuple]:
        """The replies paid for with ``backend`` and ``model`` (not a cache hit, not a failed request) of the turns
        0 (a segment's first) to ``rounds`` (its repair turns): (narration_id, round, prompt_tokens,
        completion_tokens, characters of the findings logged with it or None: None too for a reply cut at the token
        limit, which gets no repair turn); the cost estimate's repair rate."""
        self.commit()
        return self._read("SELECT c.narration_id, c.round, c.prompt_tokens, c.completion_tokens, "
                          "CASE WHEN k.cut THEN NULL ELSE LENGTH(c.error) END FROM calls c "
                          "LEFT JOIN cache k ON k.key = c.cache_key "
                          "WHERE c.backend = ? AND c.model = ? AND c.cached = 0 AND c.response IS NOT NULL "
                          "AND c.round <= ?", (backend, model, rounds))[1]

    def log_call(self, *, narration_id: str, backend: str, model: str, prompt_hash: str, cache_key: str,
                 round: int, response: str | None, usage: dict, latency: float, attempts: int, cached: bool,
                 outcome: str, error: str | None = None, durable: bool = False) -> None:
        self._calls.append((narration_id, backend, model, prompt_hash, cache_key, round, redact(response),
                            usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0), latency, attempts, int(cached),
                            outcome, redact(error), time.time()))
        if durable:  # a paid reply whose record is not finished: on disk (its cache row and spend too) now
            self.commit()
        else:
            self._written()

    def calls(self, narration_id: str | None = None) -> list[dict]:
        self.commit()
        cols, rows = self._read("SELECT * FROM calls" + (" WHERE narration_id = ?" if narration_id else "") + " ORDER BY id",
                                (narration_id,) if narration_id else ())
        return [dict(zip(cols, r)) for r in rows]

    def close(self) -> None:
        try:
            self.commit()
        finally:
            if self._writer is not None:
                self._writer.shutdown()
                self._wdb.close()
            self.db.close()
            for _, fd in self._journal_files:  # (not written: a failed commit; the next run takes them)
                os.close(fd)
            self._journal_files, self._journal_fd = [], None
            _rmdir(self.unwritten_dir)

    def __enter__(self) -> "ProgramStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _drop(files: list[tuple[Path, int]]) -> None:
    """Delete journal files whose rows are written (module docstring)."""
    for path, fd in files:
        try:
            os.unlink(path)
        except OSError:
            pass
        os.close(fd)


def _rmdir(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:  # (none, or files in it: another process's, or kept for the next run)
        pass


def dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False)
