"""Atomic writes, append-only JSONL that resumes, and content hashes."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from leap_cli.errors import LeapError

log = logging.getLogger(__name__)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path in the target's folder; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, ensure_ascii=False) + "\n")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def stable_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys, no spaces)."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())


def read_jsonl(path: str | Path, *, repair: bool = False) -> list[dict]:
    """Read a JSONL file. A truncated last line (a crash mid-write) is dropped, and cut off the
    file when ``repair`` is set; a bad line elsewhere is a LeapError naming the line."""
    path = Path(path)
    if not path.exists():
        raise LeapError("file not found", path=path, fix="check the path or run the stage that writes it")
    records: list[dict] = []
    good_end = 0
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    offset = 0
    for i, raw in enumerate(lines):
        end = offset + len(raw) + 1
        is_last = i == len(lines) - 1 or (i == len(lines) - 2 and lines[-1] == b"")
        if raw.strip():
            try:
                records.append(json.loads(raw))
                good_end = min(end, len(data))
            except json.JSONDecodeError as e:
                if is_last and not data.endswith(b"\n"):
                    log.warning("%s: dropping a truncated last line (%d bytes)", path, len(raw))
                    break
                raise LeapError(f"line {i + 1} is not valid JSON ({e.msg})", path=path, record=f"line {i + 1}",
                                fix="delete or fix that line; leap rewrites it on the next run") from None
        else:
            good_end = min(end, len(data))
        offset = end
    if repair and good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return records


class JsonlAppender:
    """Append-only JSONL writer that resumes: records whose key was already written are skipped.

    Each record is one ``write`` + ``flush`` of a whole line, so a crash leaves at most one truncated last
    line, which the next open cuts off. Lines are fsync'ed at once, or at most every ``sync_every`` seconds
    and on close (an fsync per record, ~10 ms, would cap a fast async stage at ~100 records/s; a killed
    process still keeps every flushed line, only a power loss can take the last second). ``replace_keys``
    lets a re-run redo chosen records (e.g. ``--retry-errors``): their old lines are dropped by rewriting
    the file atomically.
    """

    def __init__(self, path: str | Path, key: str | Callable[[dict], str] = "narration_id",
                 *, replace_keys: Iterable[str] = (), sync_every: float = 0.0):
        self.path = Path(path)
        self._key = (lambda r: r[key]) if isinstance(key, str) else key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existing = read_jsonl(self.path, repair=True) if self.path.exists() else []
        replace = set(replace_keys)
        if replace and any(self._key(r) in replace for r in existing):
            existing = [r for r in existing if self._key(r) not in replace]
            atomic_write_text(self.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in existing))
        self.records: dict[str, dict] = {}
        for r in existing:
            self.records[self._key(r)] = r  # last one wins if a file was concatenated twice
        self._f = open(self.path, "a", encoding="utf-8")
        self.sync_every = sync_every
        self._last_sync = time.monotonic()

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def write(self, record: dict) -> bool:
        """Append ``record`` unless its key is done already. Returns whether it was written."""
        k = self._key(record)
        if k in self.records:
            return False
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()
        self.records[k] = record
        if time.monotonic() - self._last_sync >= self.sync_every:
            os.fsync(self._f.fileno())
            self._last_sync = time.monotonic()
        return True

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
