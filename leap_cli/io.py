"""Atomic writes, append-only JSONL that resumes, a lock per output file, the settings an output was made
with, and content hashes."""

from __future__ import annotations

import errno
import gc
import hashlib
import json
import logging
import os
import pickle
import re
import socket
import stat
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from leap_cli.common import counted
from leap_cli.errors import LeapError

log = logging.getLogger(__name__)


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux), else set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def with_path(e: OSError, path: Path) -> OSError:
    """An OSError from a write on an open file names no file; name ours so the CLI's one line says where."""
    if e.filename is None and e.errno is not None:
        e.filename = str(path)
    return e


def refuse_folder(path: Path, what: str = "file") -> None:
    """A folder given where a file is expected (``--out some/dir``) is the user's to fix: one line saying so,
    before anything is written beside it."""
    if path.is_dir():
        raise LeapError(f"is a folder, not a {what}", path=path,
                        fix=f"move that folder aside, or give the path of a {what} (e.g. {path / 'NAME'}, inside it)")


def check_writable(folder: str | Path, option: str, files: tuple[str, ...] = ()) -> list[Path]:
    """Fail now, in one line, where a long job would fail only at its end: make ``folder`` and a file in it
    (the real test: a read-only mount, permissions, a full disk's inodes); ``files``: the names the job will
    write there, none of which may be a folder. Returns the folders this call made, deepest first (not those
    another process made meanwhile)."""
    folder = Path(folder)
    for name in files:
        if (folder / name).is_dir():
            raise LeapError(f"is a folder where a {name} file is to be written", path=folder / name,
                            fix=f"move that folder aside, or give {option} another folder")
    made: list[Path] = []
    try:
        for each in reversed([p for p in (folder, *folder.parents) if not p.is_dir()]):
            try:
                each.mkdir()
                made.insert(0, each)
            except FileExistsError:  # (made by another process meanwhile; a file there fails below)
                if not each.is_dir():
                    raise
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".leap-write-check.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise LeapError(f"cannot write in this folder ({e.strerror or e})", path=folder,
                        fix=f"give {option} a folder you can write") from None
    return made


def remove_if_left_empty(made: list[Path]) -> None:
    """The folders in ``made`` (deepest first, as ``check_writable`` returns them) where they hold nothing, and the
    lock file beside each, while no process holds that lock: a folder another run of the same output writes in (it
    made it first, or took its lock meanwhile) stays, and so does its lock file (a lock file removed under its
    holder would let a third run lock a new one)."""
    for folder in made:
        lock = OutputLock(folder)
        has_lock = lock.lock_path.exists()  # (none: nothing to take, and none made by looking)
        try:
            if has_lock:
                lock.acquire()
        except (LeapError, OSError):
            return
        try:
            folder.rmdir()
            if has_lock:
                lock.lock_path.unlink(missing_ok=True)
        except OSError:
            return
        finally:
            lock.release()


LOW_DISK_BYTES = 32 << 20  # below this free, a stage that pays for its work (LLM requests) asks for no more


def short_of_space(folders: Iterable[str | Path], need: int = LOW_DISK_BYTES) -> tuple[Path, int] | None:
    """(folder, free bytes) of the first of ``folders`` whose file system has less than ``need`` free (None: all
    have it, or cannot be asked). A paid reply that cannot be written is paid again by the next run."""
    import shutil

    for folder in folders:
        folder = Path(folder)
        while not folder.exists() and folder != folder.parent:  # (an output folder not made yet: its disk)
            folder = folder.parent
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            continue
        if free < need:
            return folder, free
    return None


def naming_target(e: OSError, path: Path) -> OSError:
    """The user knows the output, not our temp file beside it: an error on the temp file (its creation in a
    read-only folder, a write to it, the rename onto the output) names the output."""
    name = Path(e.filename).name if e.filename is not None else ""
    if name.startswith(f".{path.name}.") and name.endswith(".tmp"):  # mkstemp's name, or os.replace's source
        e.filename, e.filename2 = str(path), None
    return e


def _temp_tag() -> str:
    """Who writes a temp file: ``HOST-PID`` in its name, so that a later write can tell a dead writer's."""
    host = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}"


_SWEPT: set[tuple[int, str]] = set()  # (pid, folder) already swept: once per folder and process


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` on this host runs: a zombie (killed, not yet reaped by its parent, or never, under a
    container's PID 1 that reaps none) does not, though a signal 0 reaches it; another user's does."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # (a pid past the C int range: none has it)
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]  # (the name in parentheses may hold any character)
    except (OSError, IndexError):
        return True  # (no /proc: macOS)
    return state not in (b"Z", b"X")


def remove_dead_temps(folder: str | Path) -> None:
    """Delete the temp files killed writers left in ``folder`` (``.NAME.HOST-PID.XXXXXXXX.tmp`` whose process on
    this host is gone); a running writer's, another host's, and any other file stay. Once per folder and process:
    a folder that one run writes thousands of files into (a video's frame cache) is read once, not once per file.
    ``atomic_path`` sweeps the folder it writes into; a resumed stage sweeps the folders it no longer writes."""
    folder = Path(folder)
    key = (os.getpid(), str(folder))
    if key in _SWEPT:
        return
    _SWEPT.add(key)
    host = _temp_tag().rsplit("-", 1)[0]
    tag = f".{host}-"
    try:
        names = [e.name for e in os.scandir(folder) if e.name.startswith(".") and e.name.endswith(".tmp")
                 and tag in e.name]
    except OSError:
        return
    for name in names:
        # .NAME.HOST-PID.XXXXXXXX.tmp: NAME may hold dots and the host's tag; mkstemp's 8 characters hold none
        pid = name[:-len(".tmp")].rsplit(".", 1)[0].rsplit(tag, 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        if pid_alive(int(pid)):
            continue  # (maybe another process that took the pid: kept, to be safe)
        try:
            (folder / name).unlink()
            log.debug("removed %s, left by a killed writer", folder / name)
        except OSError:
            pass


def _temp_beside(path: Path) -> Path:
    """A new empty temp file in ``path``'s folder, named for ``path`` and this writer (``remove_dead_temps``)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_temp_tag()}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise naming_target(e, path) from None
    os.close(fd)
    return Path(tmp)


def output_mode(path: str | Path) -> int:
    """The mode a file written to ``path`` gets (``atomic_path``): that of the file it replaces, else 0666 less the
    umask."""
    try:
        return Path(path).stat().st_mode & 0o777
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def _sync(path: Path, flags: int = 0, *, strict: bool = True) -> None:
    """fsync ``path``'s data (a file or a folder). A file system that cannot (EINVAL, ENOTSUP) is passed over; a
    failed write-back (a full disk, EIO) is raised where ``strict``: the bytes may not be there."""
    try:
        fd = os.open(path, os.O_RDONLY | flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if strict and e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def sync_folder(folder: Path) -> None:
    """Make the renames into ``folder`` durable: a rename lives in the folder's own data, which a power loss can
    take back (the old file returns) until the folder is fsync'ed. Best effort: the new file is in place."""
    _sync(folder, getattr(os, "O_DIRECTORY", 0), strict=False)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path in the target's folder; rename it onto ``path`` only if the block succeeds: its bytes
    fsync'ed before the rename, the folder after it (a power loss leaves the old file or the new one).

    The file gets the mode a plain ``open`` would give it (0666 minus the umask, or the mode of the file it
    replaces): ``mkstemp`` creates 0600, which hides checkpoints and results from a shared group. The temp
    name holds the writer's host and pid; the temp files of killed writers of ``path`` are removed here.
    As ``open`` does, a symbolic link is written through (its target is replaced, the link stays), and a file
    that is no regular file (``/dev/stdout``, a FIFO, a device) is written in place: no rename may replace it
    (as root, a rename onto ``/dev/null`` would put a regular file there).
    """
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    try:
        kind = path.stat().st_mode
    except OSError:
        kind = None
    if kind is not None and not stat.S_ISREG(kind) and not stat.S_ISDIR(kind):
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    refuse_folder(path)
    remove_dead_temps(path.parent)
    tmp_path = _temp_beside(path)
    try:
        mode = output_mode(path)
        try:
            yield tmp_path
            _sync(tmp_path)
            os.chmod(tmp_path, mode)
            os.replace(tmp_path, path)
        except OSError as e:
            raise naming_target(with_path(e, path), path)
        sync_folder(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


class AtomicFiles:
    """Files written under temp names beside ``base`` and renamed into place together once all are written, under
    names chosen only then (``commit``: the Batch API's input files, whose names say how many there are). A crash
    before the renames leaves none of them (the temp files of a killed writer are removed by the next write beside
    ``base``, as ``atomic_path``'s); the files get the mode ``atomic_path`` gives."""

    def __init__(self, base: str | Path):
        self.base = Path(base)
        self.temps: list[Path] = []

    def __enter__(self) -> "AtomicFiles":
        self.base.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_temps(self.base.parent)
        return self

    def new(self) -> Path:
        """A new temp file beside ``base``, the next one ``commit`` renames."""
        self.temps.append(_temp_beside(self.base))
        return self.temps[-1]

    def commit(self, targets: list[Path]) -> None:
        """Rename the temp files, in the order ``new`` made them, onto ``targets``."""
        assert len(targets) == len(self.temps), (targets, self.temps)
        while self.temps:
            tmp, target = self.temps[0], targets[len(targets) - len(self.temps)]
            try:
                _sync(tmp)
                os.chmod(tmp, output_mode(target))
                os.replace(tmp, target)
            except OSError as e:
                e.filename, e.filename2 = str(target), None
                raise
            self.temps.pop(0)
        for folder in dict.fromkeys(t.parent for t in targets):
            sync_folder(folder)

    def __exit__(self, *exc) -> None:
        for tmp in self.temps:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass


def atomic_write_bytes(path: str | Path, data: bytes, *, if_changed: bool = False) -> bool:
    """``data`` into ``path`` through a temporary file and a rename; ``if_changed``: a file that holds these bytes
    already is left as it is (its time too: a rerun with nothing to do leaves its outputs untouched). Returns
    whether it wrote."""
    if if_changed:
        try:
            if os.path.getsize(path) == len(data) and Path(path).read_bytes() == data:
                return False
        except OSError:
            pass
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return True


def lock_beside(path: str | Path) -> Path:
    """``PATH.lock``, the lock file of an output (a file, or a folder such as ``eval/SPLIT``), beside it; for a path
    with no name of its own (``.``, ``x/..``) beside the folder it is."""
    path = Path(path)
    if not path.name or path.name == "..":
        path = Path(os.path.abspath(path))
    return path.with_name(path.name + ".lock")


def writer_of(path: str | Path) -> str | None:
    """Who is writing ``path`` now (``process PID on HOST``, or ``another leap process``) when a running leap
    holds its ``OutputLock``, else None: a stage reading the output of one that is still running."""
    try:
        import fcntl
    except ImportError:
        return None
    lock_path = lock_beside(path)
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return None  # no lock file: never written by a leap that locks, or removed
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _lock_holder(fd) or "another leap process"
    except OSError:
        return None
    finally:
        os.close(fd)  # (drops the shared lock taken to look)
    return None


def _lock_holder(fd: int) -> str | None:
    """``process PID on HOST``: who holds a lock file, as its holder wrote it when it took the lock (None: not
    said)."""
    try:
        holder = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
    except OSError:
        return None
    if len(holder) < 2:
        return None
    if holder[1] == socket.gethostname() and holder[0].isdigit() and not pid_alive(int(holder[0])):
        return None  # (a lock file taken read-only keeps the words of a holder gone since: not named)
    return f"process {holder[0]} on {holder[1]}"


def refuse_beside_a_live_writer(output: Path) -> None:
    """A ``--shard`` part of ``output`` while a run without --shard writes the whole output, or that run while a part
    is being made (its lock held, its file maybe empty yet): both would do (and pay for) the same segments. Called
    under the output's own lock: of two that start together, one refuses or both do, never neither."""
    part = part_of(output)
    if part is not None:
        whole = output.with_name(output.name.replace(f".shard{part[0]}of{part[1]}", ""))
        if (holder := writer_of(whole)) is not None:
            raise LeapError(f"a run without --shard is writing {whole.name} ({holder}): this part, --shard "
                            f"{part[0]}/{part[1]}, would do segments that run does too", path=output,
                            fix="let that run finish the whole split (then nothing is left for the parts), or stop "
                                "it first and run the parts")
        for index, count, lock_file in shard_parts(whole, ".lock"):  # (a part of another count, its file not
            # made yet: the check of the part files before the lock does not see it)
            if count != part[1] and (holder := writer_of(lock_file.with_name(lock_file.name[: -len(".lock")]))):
                raise LeapError(f"part {index}/{count} of {whole.name} is being made ({holder}), and this run is "
                                f"--shard {part[0]}/{part[1]}: merged, the two sets would hold segments twice",
                                path=output, fix=f"finish the set of --shard i/{count}, or give this set another "
                                                 "--out")
        return
    for index, count, lock_file in shard_parts(output, ".lock"):
        if (holder := writer_of(lock_file.with_name(lock_file.name[: -len(".lock")]))) is not None:
            raise LeapError(f"part {index}/{count} of it is being made by a --shard run ({holder}): this run without "
                            "--shard would do its segments too", path=output,
                            fix=f"let the parts finish and merge them ({merge_command(output, count)}), or stop "
                                "them first")


class OutputLock:
    """An exclusive lock on ``PATH.lock`` beside an output file: a second process writing the same output
    (two identical jobs started at once) is refused with a one-line error instead of writing every record
    twice. ``flock`` locks die with their process, so a killed run never leaves a stale lock behind."""

    def __init__(self, path: str | Path, fix: str | None = None, lock_path: str | Path | None = None):
        self.path = Path(path)  # (what the refusal names; ``lock_path``: the lock file, default PATH.lock beside it)
        self.lock_path = Path(lock_path) if lock_path is not None else lock_beside(self.path)
        self.fix = fix  # what to do, in the words of the command that holds the lock (None: an output's)
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        try:
            import fcntl
        except ImportError:  # not on POSIX: no lock, as before
            return self
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        denied = LeapError("a lock file of another user that this run cannot take", path=self.lock_path,
                           fix=f"delete it (it holds no data) if no leap process writes {self.path}, or ask its owner "
                               "to make it writable")
        read_only = False
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError as first:  # a lock file another user's run left (umask 022): it holds no data,
            try:  # and flock takes a file opened for reading as well (not on NFS: below)
                fd, read_only = os.open(self.lock_path, os.O_RDONLY), True
            except OSError:
                if self.lock_path.exists():
                    raise denied from None
                raise first from None  # (no lock file, in a folder this user cannot write: that, not "not found")
        try:
            self._take(fd)
        except OSError as e:
            if not isinstance(e, BlockingIOError):
                os.close(fd)
                if read_only:  # (NFS locks no file opened for reading: EBADF)
                    raise denied from None
                if e.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP):  # (Lustre without -o flock, an NFS
                    # without its lock service): one line naming the file system's want, not "check that path"
                    raise LeapError(f"the file system of this output takes no file locks ({e.strerror or e})",
                                    path=self.lock_path,
                                    fix="mount it with flock (Lustre: -o flock; NFS: its lock service), or give the "
                                        "work directory (or --out) on a file system that has them: leap locks each "
                                        "output so that two runs never write it at once") from None
                raise
            holder = _lock_holder(fd)  # (an orphaned worker, a job on another node: the refusal names it)
            os.close(fd)
            what = "folder" if self.path.is_dir() else "file"  # a run's checkpoints/ or eval/SPLIT/, or an output
            who = f" ({holder})" if holder else ""
            fix = self.fix or "wait for it to finish, or give this run another --out"
            if self.fix is None and (part := part_of(self.path)) is not None:  # (an array task run twice: a stray
                # part in another --out is no way out)
                fix = (f"part {part[0]}/{part[1]} is being made by that job: run each --shard part once (wait for it, "
                       "or stop it first)")
            raise LeapError(f"another leap process is writing this {what}{who}", path=self.path, fix=fix) from None
        try:  # (an orphaned worker, a job on another node: the refusal names it)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        except OSError:
            pass
        self._fd = fd
        return self

    @staticmethod
    def _take(fd: int) -> None:
        """The exclusive lock, or BlockingIOError while another holds it. ``writer_of`` (a stage looking whether this
        output is being written) holds a shared lock for a moment: while only shared locks are held (this run's own
        shared lock is granted), the exclusive one is tried again for up to 0.5 s instead of refusing this run as
        if another wrote the output; a writer's exclusive lock is refused at once."""
        import fcntl
        for _ in range(50):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise BlockingIOError(errno.EWOULDBLOCK, "locked by a writer") from None
                fcntl.flock(fd, fcntl.LOCK_UN)
                time.sleep(0.01)
        raise BlockingIOError(errno.EWOULDBLOCK, "locked")

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class ShardReaders:
    """Who reads a shards folder and who rewrites it, through two lock files in it. A reader (``leap train``,
    ``leap evaluate``) holds a shared ``flock`` on ``.readers.lock`` for the whole command; a builder (``leap
    build-shards`` about to write or delete shards) holds a shared one on ``.writers.lock`` (the ``--shard`` parts
    of one folder build side by side). Each then probes the other file for a moment (an exclusive lock, let go at
    once): a reader refuses while a builder holds ``.writers.lock``, a builder while a reader holds
    ``.readers.lock``; of two that start together one refuses, never neither. (build-shards --force deleted the
    shards under a running training, which stopped on a "corrupt shard" that check-shards found whole.) A folder
    where no lock file can be opened takes no lock: build-shards makes both files (mode 0666) in every folder it
    builds or finds built, so a reader who may not write there finds them."""

    READERS, WRITERS = ".readers.lock", ".writers.lock"
    PROBES = 10  # tries of a probe, 50 ms apart: another's probe holds a lock file for a moment only

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._fd: int | None = None  # the lock held: shared, on READERS (reading) or WRITERS (writing)

    def _open(self, name: str) -> tuple[int, bool] | None:
        """(descriptor, opened for writing) of a lock file, made where missing (mode 0666: anyone who reads or
        builds the folder takes it, whoever made it); None where it cannot be opened."""
        path = self.folder / name
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            try:  # (another user's lock file: flock takes one opened for reading, except on NFS: _flock)
                return os.open(path, os.O_RDONLY), False
            except OSError:
                return None
        try:
            if os.fstat(fd).st_uid == os.geteuid():
                os.fchmod(fd, 0o666)
        except OSError:
            pass
        return fd, True

    @staticmethod
    def _flock(fd: int, mode: int) -> bool | None:
        """Take ``mode`` without waiting: True, False (held by another), None (this file system refuses: NFS takes no
        exclusive lock on a file opened for reading)."""
        import fcntl

        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError:
            return None
        return True

    def _free(self, name: str) -> bool | None:
        """Whether no other process holds the lock file ``name`` (probed with an exclusive lock, let go at once;
        another's probe is waited out); None: it cannot be told."""
        import fcntl

        opened = self._open(name)
        if opened is None:
            return True  # (no lock file can be made: no one else holds one either)
        fd, writable = opened
        try:
            for _ in range(self.PROBES):
                took = self._flock(fd, fcntl.LOCK_EX)
                if took is None:  # (a file system without locks; or NFS, another user's file opened for reading)
                    return True if writable else None
                if took:
                    return True
                time.sleep(0.05)
            return False
        finally:
            os.close(fd)  # (lets go of the probe's lock)

    def _hold(self, name: str, other: str) -> bool:
        """Hold ``name`` shared, then probe ``other``: False (and nothing held) when ``other`` is held."""
        try:
            import fcntl
        except ImportError:  # not on POSIX: no lock
            return True
        opened = self._open(name)
        if opened is None:
            if name == self.READERS and self.folder.is_dir():  # (built by an earlier leap, not writable here)
                log.warning("%s has no %s and this user cannot make it: a build-shards --force there would not wait "
                            "for this run; if anyone may rebuild these shards, run leap build-shards on them once "
                            "(it makes the lock files)", self.folder, name)
            return True
        fd, _ = opened
        if self._flock(fd, fcntl.LOCK_SH) is False:  # (None: a file system without locks)
            os.close(fd)
            return False
        free = self._free(other)
        if free is None:  # (another user's lock file on NFS)
            os.close(fd)
            raise LeapError(f"cannot tell whether another leap process uses these shards: {self.folder / other} "
                            "belongs to another user and this file system locks no file opened for reading",
                            path=self.folder / other,
                            fix="delete that file (it holds no data) if no leap train, evaluate or build-shards uses "
                                "the folder, or ask its owner to make it writable")
        if not free:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def make_files(self) -> None:
        """Make both lock files where missing (build-shards, even with nothing to write): a reader who may not
        write in the folder still takes one it finds (a folder built by an earlier leap had none, and its owner's
        --force then went unseen)."""
        for name in (self.READERS, self.WRITERS):
            if (opened := self._open(name)) is not None:
                os.close(opened[0])

    def read(self) -> "ShardReaders":
        """Hold the folder for reading (refused while build-shards writes into it)."""
        if self._fd is None and not self._hold(self.READERS, self.WRITERS):
            raise LeapError("leap build-shards is writing these shards", path=self.folder,
                            fix="wait for it to finish, then run this again")
        return self

    def write(self) -> "ShardReaders":
        """Hold the folder for writing or deleting shards (refused while a command reads them)."""
        if self._fd is None and not self._hold(self.WRITERS, self.READERS):
            raise LeapError("a leap train or evaluate is reading these shards: rewriting them now would change its "
                            "data under it", path=self.folder,
                            fix="wait for it to finish (or stop it), or build into another --out")
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "ShardReaders":
        return self.read()

    def __exit__(self, *exc) -> None:
        self.release()


SETTINGS_SUFFIX = ".settings.json"


def shard_parts(output: str | Path, tail: str = "") -> list[tuple[int, int, Path]]:
    """(index, count, path) of the files that ``--shard I/N`` runs write instead of ``output`` (``ShardSpec.suffix``:
    ``train.shard0of4.jsonl`` for ``train.jsonl``), each name followed by ``tail`` (a sidecar's suffix), sorted."""
    output = Path(output)
    stem, suffix = (output.name[: -len(output.suffix)], output.suffix) if output.suffix else (output.name, "")
    pattern = re.compile(rf"{re.escape(stem)}\.shard(\d+)of(\d+){re.escape(suffix + tail)}")
    try:
        names = os.listdir(output.parent)
    except OSError:
        return []
    found = [(int(m.group(1)), int(m.group(2)), output.parent / name) for name in names
             if (m := pattern.fullmatch(name))]
    return sorted(found)


def part_of(name: str | Path) -> tuple[int, int] | None:
    """(i, n) of a file that a ``--shard i/n`` run wrote (``train.shard1of4.jsonl``, ``leap-train.shard1of4-000000.tar``,
    ``manifest.shard1of4.json``: ``ShardSpec.suffix`` in its name); None for any other."""
    m = re.search(r"\.shard(\d+)of(\d+)(?=[.-])", Path(name).name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def parts_text(output: Path) -> tuple[str, int] | None:
    """("2 of 3", 3): how many ``--shard`` parts of ``output`` are there, per count, and the count with most;
    None without parts."""
    counts: dict[int, int] = {}
    for _, count, _ in shard_parts(output):
        counts[count] = counts.get(count, 0) + 1
    if not counts:
        return None
    return ", ".join(f"{k} of {n}" for n, k in sorted(counts.items())), max(counts, key=counts.get)


def shell_word(value: str | Path) -> str:
    """``value`` (a path, mostly) as one word of a command printed for the user to paste: quoted for the shell, and
    a relative path that starts with ``-`` as ``./-...`` (``cat``, ``mkdir`` and ``tar`` would take it as options)."""
    import shlex

    text = str(value)
    return shlex.quote("./" + text if text.startswith("-") else text)


def merge_command(output: Path, count: int) -> str:
    """The shell command that merges the ``--shard i/count`` parts of ``output`` into it."""
    from shlex import quote

    return (f"cat {shell_word(output.parent)}/{quote(output.stem)}.shard*of{count}{quote(output.suffix)} > "
            f"{shell_word(output)}")


def settings_path(output: str | Path) -> Path:
    """Where the settings an output was made with are kept: ``OUT.settings.json`` beside it."""
    output = Path(output)
    return output.with_name(output.name + SETTINGS_SUFFIX)


def settings_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``["optim.lr: 0.001 -> 0.0003", ...]`` for every (dotted) key whose value differs, sorted."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and key != "options":
            out += settings_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {_brief(a, b)} -> {_brief(b, a)}")
    return out


def _brief(value: object, other: object) -> str:
    """``repr(value)``, but a long mapping whose ``other`` is no mapping as the number of its keys (a whole
    settings dict against a word, such as "narration-only", filled the line; two mappings stay whole, to be
    compared)."""
    text = repr(value)
    if isinstance(value, dict) and not isinstance(other, dict) and len(text) > 80:
        return f"{{{len(value)} setting{'' if len(value) == 1 else 's'}}}"
    return text


def check_settings(output: str | Path, settings: dict, *, force: bool = False, exists: bool | None = None,
                   remove: Callable[[], None] | None = None, option: str = "--force", split: str | None = None,
                   elsewhere: str = "--out", adopt: tuple[str, ...] = (), grow: tuple[str, ...] = (),
                   names: dict[str, str] | None = None,
                   explain: Callable[[set[str]], str | None] | None = None, held: str | None = None,
                   lock: "OutputLock | None" = None, dry: bool = False) -> bool:
    """Refuse to resume ``output`` under settings that differ from those it was started with.

    ``settings`` holds only what changes the records (thresholds, model, config), as plain JSON values. On
    the first run it is written to ``OUT.settings.json``; on a re-run the stored settings are compared and a
    difference is a LeapError naming the keys, unless ``force``: then ``remove`` (default: delete the output
    file) starts over. ``exists`` says whether there is output to protect (default: the file exists and is not
empty: a run that failed before its first record leaves nothing its successor would mix with).
    ``split`` (kept in the sidecar beside the settings) refuses another split's records in the same file, such
    as ``--split train --out .../val.jsonl``; a sidecar written before it was kept is not compared on it.
    ``option`` and ``elsewhere`` name the command's options that start over and write somewhere else; ``names``
    the options that set the settings' keys, as the refusal says them (``short_side`` -> ``--short-side``; the
    command's own options are known without it: ``COMMAND_OPTIONS``); a name ending in "." is a prefix for the
    inner keys of a dict (``"descriptors."``).
    ``adopt``: keys a sidecar written before they were kept lacks; it takes this run's values instead of
    refusing. ``grow``: (dotted) keys a resume may raise, not lower, such as a limit that changes no record already
    written (the sidecar then keeps the higher value). ``explain``: given the (top-level) keys that differ, the
    refusal's fix where the caller knows a better one than the generic (None: the generic). ``held``: why the
    settings are held, where not because records would mix (an ``exists`` output that holds none yet). ``lock``:
    the output's ``OutputLock``, taken here and kept for the caller's writer (``JsonlAppender(lock=...)``), so that
    a second run cannot rewrite the settings of an output that holds no record yet between this check and the first
    record (its records would then mix under the other run's settings); the caller releases it. Returns whether the
    output was started over. ``dry``: the same refusals, but nothing is locked, started over or written (a run's
    estimate); returns whether the run would start it over.
    """
    output = Path(output)
    refuse_folder(output)
    if (part := part_of(output)) is not None:  # a --shard part beside parts of another count: merged, they would
        # hold the segments of their overlap twice (build-shards refuses its folder's as well)
        whole = output.with_name(output.name.replace(f".shard{part[0]}of{part[1]}", ""))
        other = sorted({n for _, n, _ in shard_parts(whole) if n != part[1]})
        if other:
            raise LeapError(f"parts of --shard i/{other[0]} are beside it, and this run is --shard "
                            f"{part[0]}/{part[1]}: merged, the two sets would hold segments twice", path=output,
                            fix=(f"the set of i/{other[0]} is merged into {whole.name}: move its part files away, "
                                 "or give this set another --out" if whole.is_file() and whole.stat().st_size else
                                 f"finish the set begun with --shard i/{other[0]}, or give this set another --out (or "
                                 "move the other parts away)"))
    if not force and not (output.is_file() and output.stat().st_size) and (found := parts_text(output)):
        # (extract or generate-programs without --shard beside the parts of a sharded run: the whole split again)
        try:  # the options the parts were run with, where they agree and this run's differ (a rerun is refused)
            theirs = _stored_settings(output, option, warn=False) or {}
        except LeapError:
            theirs = {}
        theirs.pop("split", None)
        now = json.loads(json.dumps(settings, default=str))
        differ = _named_changes(_resume_changes(theirs, now, adopt, grow), names) if theirs else []
        raise LeapError(f"not there, but parts of it from --shard runs are ({found[0]}): this run without --shard "
                        "would do the whole split again", path=output,
                        fix="merge them and run again" + (f" with the parts' options ({', '.join(differ[:6])})"
                                                          if differ else "")
                            + f" to resume from the merge: {merge_command(output, found[1])}; "
                            f"or run the parts left with --shard i/{found[1]}; or pass {option} to do it all again")
    if not force and part is None and output.is_file() and output.stat().st_size and not settings_path(output).exists():
        # a merge beside its parts that lacks some of their records (merged too early): this run would do the
        # parts' segments again, also those of a part still running, as the next stage refuses to read it (a
        # merge has no settings file of its own; an output of unsharded runs, started over with --force, has)
        from leap_cli.common import check_merge

        parts: dict[int, list[tuple[int, Path]]] = {}
        for index, count, p in shard_parts(output):
            parts.setdefault(count, []).append((index, p))
        check_merge(output, parts)
    # under the output's lock: a run still writing it is not started over (--force) under its feet, nor its
    # sidecar rewritten; the caller's writer takes the lock again at once (or keeps ``lock``)
    if dry:
        return _check_settings(output, settings, force=force, exists=exists, remove=None, option=option, split=split,
                               elsewhere=elsewhere, adopt=adopt, grow=grow, names=names or {}, explain=explain,
                               held=held, dry=True)
    taken = (lock or OutputLock(output)).acquire()
    try:
        refuse_beside_a_live_writer(output)
        return _check_settings(output, settings, force=force, exists=exists, remove=remove, option=option,
                               split=split, elsewhere=elsewhere, adopt=adopt, grow=grow, names=names or {},
                               explain=explain, held=held)
    finally:
        if lock is None:
            taken.release()


def _check_settings(output: Path, settings: dict, *, force: bool, exists: bool | None,
                    remove: Callable[[], None] | None, option: str, split: str | None, elsewhere: str,
                    adopt: tuple[str, ...] = (), grow: tuple[str, ...] = (), names: dict | None = None,
                    explain: Callable[[set[str]], str | None] | None = None, held: str | None = None,
                    dry: bool = False) -> bool:
    sidecar = settings_path(output)
    settings = json.loads(json.dumps(settings, default=str))  # the form it takes on disk (tuples -> lists)
    has_output = (output.exists() and output.stat().st_size > 0) if exists is None else exists
    started_over = False
    stored = _stored_settings(output, option, force=force) if has_output else None
    if stored is not None:
        old_split = stored.pop("split", None)
        if split is not None and old_split is not None and old_split != split and not force:
            raise LeapError(f"holds {old_split} records; this run is --split {split}, and would mix the two",
                            path=output, record="split",
                            fix=f"give this split its own {elsewhere}, or {option} to start the file over")
        differ = _resume_changes(stored, settings, adopt, grow)
        if split is not None and old_split is not None and old_split != split:
            differ.append(f"split: {old_split!r} -> {split!r}")
        if differ:
            if not force:
                shown = ", ".join(_named_changes(differ, names)[:6])
                more = f" and {len(differ) - 6} more" if len(differ) > 6 else ""
                keys = {d.partition(": ")[0].split(".")[0] for d in differ}
                raise LeapError(f"was started with other settings ({shown}{more}); "
                                f"{held or 'resuming would mix records'}",
                                path=output if output.exists() else sidecar, record="settings",
                                fix=(explain and explain(keys)) or
                                f"use the old settings, another {elsewhere}, or {option} to start over")
            if dry:
                return True
            (remove or (lambda: output.unlink(missing_ok=True)))()
            started_over = True
    if not dry:
        atomic_write_json(sidecar, settings if split is None else {**settings, "split": split}, if_changed=True)
    return started_over


def _resume_changes(stored: dict, settings: dict, adopt: tuple[str, ...], grow: tuple[str, ...]) -> list[str]:
    """``settings_changes`` from ``stored`` to ``settings`` that a resume refuses: not the ``adopt`` keys ``stored``
    lacks (it takes this run's values, into ``stored``), nor a ``grow`` key raised."""
    stored.update({k: settings.get(k) for k in adopt if k not in stored})
    return [d for d in settings_changes(stored, settings)
            if not (d.split(": ", 1)[0] in grow and _grew(stored, settings, d.split(": ", 1)[0]))]


def _named_changes(differ: list[str], names: dict | None) -> list[str]:
    """``settings_changes``' "key: old -> new", each key said as the option that sets it (``names``, then the
    running command's ``COMMAND_OPTIONS``; ``names["descriptors."]``: a prefix for the inner keys of a dict)."""
    named = []
    names = {**COMMAND_OPTIONS, **(names or {})}
    for d in differ:
        key, sep, change = d.partition(": ")
        head, dot, rest = key.partition(".")
        name = names.get(key) or (names[head + dot] + rest if dot and head + dot in names else key)
        named.append(f"{name}{sep}{change}")
    return named


# The running command's options by the names of their parameters (``short_side`` -> ``--short-side``), set by the
# CLI as it reads the command line: a settings key that is one is said as the option (the refusal said
# ``k: None -> 4`` for ``--k``); empty outside the CLI.
COMMAND_OPTIONS: dict[str, str] = {}


def _grew(old: dict, new: dict, dotted: str) -> bool:
    """Whether the number at ``dotted`` in ``new`` is at least the one in ``old``."""
    for part in dotted.split("."):
        old, new = (old or {}).get(part), (new or {}).get(part)
    return isinstance(old, (int, float)) and isinstance(new, (int, float)) and new >= old


def _read_settings(sidecar: Path, option: str) -> dict:
    try:
        stored = json.loads(sidecar.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        stored = None
    if not isinstance(stored, dict):
        raise LeapError("the stored settings are not a JSON object", path=sidecar,
                        fix=f"delete it to adopt this run's settings, or pass {option} to start over")
    return stored


def stored_settings(output: str | Path) -> dict | None:
    """The settings another stage's ``output`` was made with (see ``_stored_settings``; None: not known)."""
    return _stored_settings(Path(output), "--force", warn=False)


class MixedParts(LeapError):
    """A file merged from ``--shard`` parts made with other settings than each other (``_stored_settings``)."""


def _stored_settings(output: Path, option: str, *, warn: bool = True, force: bool = False) -> dict | None:
    """The settings ``output`` was made with: its sidecar's; for a file merged from ``--shard`` parts (README:
    ``cat X.shard*of16.jsonl > X.jsonl``) without one, those of the parts' sidecars where they agree (where they
    do not, a LeapError naming the parts that differ; with ``force`` {}, which starts it over); else None, with a
    warning (``warn``) when the file holds records that nothing can then be checked against."""
    sidecar = settings_path(output)
    if sidecar.exists():
        return _read_settings(sidecar, option)
    parts = [(p, _read_settings(p, option)) for _, _, p in shard_parts(output, SETTINGS_SUFFIX)]
    found = [s for _, s in parts]
    if found and all(f == found[0] for f in found):
        return found[0]
    if found and force:  # parts made with other settings than each other: none stands for the file; --force
        return {}  # starts it over (no settings are anyone's)
    if found:  # (a merge of parts made with other options: its records are not of one run)
        groups: dict[str, list[tuple[Path, dict]]] = {}
        for p, st in parts:
            groups.setdefault(json.dumps(st, sort_keys=True), []).append((p, st))
        most = max(groups.values(), key=len)  # the parts that agree the most stand for the run; the others differ
        odd = [x for g in groups.values() if g is not most for x in g]
        changes = sorted({c for _, st in odd for c in settings_changes(most[0][1], st)})
        name = lambda p: p.name[: -len(SETTINGS_SUFFIX)]  # noqa: E731
        raise MixedParts(f"was merged from --shard parts made with other settings: {', '.join(name(p) for p, _ in odd)} "
                        f"against {name(most[0][0])}"
                        + (f" and {len(most) - 1} more" if len(most) > 1 else "")
                        + f": {', '.join(changes[:6])}" + (" ..." if len(changes) > 6 else ""),
                        path=output, record="settings",
                        fix=f"run the parts that differ again with the others' options ({option} on that --shard i/n; "
                            "or the others with theirs), then merge again")
    if warn and output.is_file() and output.stat().st_size:
        log.warning("%s: no settings file beside it, so its records cannot be checked against this run's settings; "
                    "this run's are recorded from now on", output)
    return None


def read_utf8(path: str | Path, what: str, *, fix: str = "save it as UTF-8 text", unit: str = "line") -> str:
    """The text of a file a user gives (a prompt, a config, a CSV), as UTF-8 with any BOM dropped; another
    encoding (Notepad's "Unicode" is UTF-16, an old spreadsheet's CSV Latin-1) is a LeapError naming the
    ``unit`` ("line", "row") of the first byte that is not UTF-8."""
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        for bom, name in ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"),
                          (b"\xfe\xff", "UTF-16")):
            if raw.startswith(bom):
                raise LeapError(f"{what} is {name} text, not UTF-8", path=path, fix=fix) from None
        start = e.start + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)  # (the offset is the text's, after a BOM)
        raise LeapError(f"{what} is not UTF-8 text (byte 0x{raw[start]:02x})", path=path,
                        record=f"{unit} {_line_of(raw, start)}", fix=fix) from None
    if "\x00" in text:  # (UTF-16 without its BOM decodes as UTF-8: every other byte a NUL)
        at = _line_of(raw, raw.index(0))
        raise LeapError(f"{what} holds NUL bytes (UTF-16 or UTF-32 text without its BOM?)", path=path,
                        record=f"{unit} {at}", fix=fix)
    return text


def _line_of(raw: bytes, offset: int) -> int:
    """The line, from 1, that byte ``offset`` of ``raw`` is on, with lines ended by LF, CRLF or a lone CR (as
    Python's csv module and text mode read them)."""
    head = raw[:offset]
    return head.count(b"\n") + head.count(b"\r") - head.count(b"\r\n") + 1


def atomic_write_text(path: str | Path, text: str, *, if_changed: bool = False) -> bool:
    return atomic_write_bytes(path, text.encode("utf-8"), if_changed=if_changed)


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 2, if_changed: bool = False) -> bool:
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, ensure_ascii=False) + "\n",
                      if_changed=if_changed)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_identity(path: str | Path, edge: int = 1 << 20) -> str:
    """What a (weights or labels) file is, wherever it lies: its size and the sha256 of its first and last
    ``edge`` bytes (the whole file when smaller), ``"12345:ab12..."``: the same for a copy staged elsewhere,
    another for a file edited in place. Reads at most 2 MiB."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(edge))
        if size > 2 * edge:
            f.seek(size - edge)
        h.update(f.read(edge))
    return f"{size}:{h.hexdigest()[:16]}"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def stable_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys, no spaces)."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())


# What unpickling NumPy arrays and scalars needs (data, no code), under NumPy 2's (numpy._core) and NumPy 1's
# (numpy.core) module names; also every numpy.dtypes.*DType class. One list for both ways leap reads a pickle
# it did not write: a custom Unpickler (``is_numpy_pickle_global``) and torch.load(weights_only=True)
# (``numpy_safe_globals``).
NUMPY_PICKLE_NAMES = frozenset({(f"numpy.{core}.multiarray", name) for core in ("core", "_core")
                                for name in ("_reconstruct", "scalar")} | {("numpy", "ndarray"), ("numpy", "dtype")})


def is_numpy_pickle_global(module: str, name: str) -> bool:
    return (module, name) in NUMPY_PICKLE_NAMES or (module == "numpy.dtypes" and name.endswith("DType"))


def numpy_safe_globals() -> list:
    """``NUMPY_PICKLE_NAMES`` (and the DType classes) as ``torch.serialization.safe_globals`` takes them."""
    import numpy as np

    multiarray = (getattr(np, "_core", None) or np.core).multiarray  # the one this NumPy has, under both names
    found: list = [getattr(np, name) for module, name in NUMPY_PICKLE_NAMES if module == "numpy"]
    found += [(getattr(multiarray, name), f"{module}.{name}") for module, name in NUMPY_PICKLE_NAMES
              if module != "numpy"]
    return found + [t for t in vars(np.dtypes).values() if isinstance(t, type) and issubclass(t, np.dtype)]


def weights_only_allowing(globals_: list):
    """``torch.serialization.safe_globals(globals_)`` as the installed torch takes it, for a
    ``torch.load(weights_only=True)`` inside it: ``(object, name)`` pairs from torch 2.6, the objects alone in 2.5
    (which name them by their own module: a file pickled under NumPy 1's module names is then refused under
    NumPy 2), and nothing before 2.5, which has no ``safe_globals`` (NumPy objects in the file are refused there;
    tensors load)."""
    import contextlib

    import torch

    allow = getattr(torch.serialization, "safe_globals", None)
    if allow is None:
        return contextlib.nullcontext()
    if tuple(map(int, re.findall(r"\d+", torch.__version__)[:2])) < (2, 6):  # (2.6.0a0 builds count as 2.6)
        globals_ = [g[0] if isinstance(g, tuple) else g for g in globals_]
    return allow(globals_)


def load_problem(e: Exception, path: str | Path) -> str:
    """Why ``torch.load`` (or an unpickler) could not read ``path``, in a few words for a one-line error: torch's
    own first line is often a paragraph about ``weights_only``, and an empty file raises an EOFError with no
    text."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        head = None
    if head == b"":
        return "the file is empty"
    if head is not None and len(head) < 4 and (b"PK\x03\x04".startswith(head) or head[:1] == b"\x80"):
        return "the file ends early (a truncated copy?)"  # (the first bytes of a zip archive or a pickle)
    text = str(e).strip()
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().split("\n\n")[0].strip()
        if not detail or detail.startswith("Unsupported operand"):
            return "not a file written by torch.save"
        return f"it holds objects a weights-only load refuses ({detail[:200]})"
    if isinstance(e, EOFError):
        return "the file ends early (a truncated copy?)"
    if "central directory" in text or "PytorchStreamReader" in text:
        return "a damaged or truncated torch file (its zip archive cannot be read)"
    # (an unpickler's own words, but for "invalid load key", name the fault: a class refused in a protocol-0 pickle)
    if head is not None and not (isinstance(e, pickle.UnpicklingError) and "invalid load key" not in text):
        if head[:1] != b"\x80" and head != b"PK\x03\x04":  # neither a zip archive (torch.save since 1.6) nor a
            return "not a file written by torch.save"  # binary pickle (before): text, an image, another format
    first = text.splitlines()[0][:200] if text else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


@contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic collector off while many parsed records are made (JSON holds no cycles): it would walk every
    live object again and again, 4-5x the parse itself at tens of thousands of records."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


_TOLD_TRUNCATED: set[tuple[str, int, int]] = set()  # (file, where, bytes) of the truncated last lines warned of


# the characters that JSON leaves raw and that str.splitlines() (and JavaScript, and some editors) take as line
# breaks: a record holding one (a reply's U+2028) was two lines to such a reader
_LINE_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def json_line(obj) -> str:
    """``obj`` as one JSONL line, newline included: UTF-8 as it is, but the characters any reader takes as a line
    break escaped (``_LINE_BREAKS``)."""
    text = json.dumps(obj, ensure_ascii=False)
    return (text if text.isascii() else text.translate(_LINE_BREAKS)) + "\n"


def iter_jsonl(path: str | Path, *, repair: bool = False,
               holding: Iterable[bytes] | None = None) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of each non-blank line of a JSONL file, read as a stream (one line in memory at a
    time). A truncated last line (a crash mid-write) is dropped, and cut off the file when ``repair`` is set; a bad
    line elsewhere is a LeapError naming the line. ``holding``: only the lines that hold one of these byte strings
    are parsed, the others skipped as blank ones are (unchecked: not with ``repair``), e.g. the lines of one record's
    key as its writer wrote it (one record of EPIC's train split: the parse of the other 67k took seconds)."""
    holding = None if holding is None else tuple(holding)
    path = Path(path)
    if not path.exists():
        raise LeapError("file not found", path=path, fix="check the path or run the stage that writes it")
    refuse_folder(path, "JSONL file")
    good_end = offset = 0
    cut = None
    with open(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            offset += len(raw)
            if raw.strip() and (holding is None or any(b in raw for b in holding)):
                try:
                    value = json.loads(raw[:-1] if raw.endswith(b"\n") else raw)  # (bytes: JSON's encodings are sniffed)
                except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:  # a cut can split a UTF-8 character
                    if not raw.endswith(b"\n"):  # the last line, cut short
                        if (told := (str(path.resolve()), good_end, len(raw))) not in _TOLD_TRUNCATED:
                            _TOLD_TRUNCATED.add(told)  # (once: a stage reads its output more than once)
                            log.warning("%s: dropping a truncated last line (%s)", path, counted(len(raw), "byte"))
                        cut = good_end
                        break
                    what = (f"valid JSON ({e.msg})" if isinstance(e, json.JSONDecodeError) else
                            "readable (JSON nested too deeply)" if isinstance(e, RecursionError) else "UTF-8 text")
                    raise LeapError(f"line {i} is not {what}", path=path, record=f"line {i}",
                                    fix="delete or fix that line; leap rewrites it on the next run") from None
                good_end = offset
                yield i, value
            else:
                good_end = offset
    if repair and cut is not None:
        with open(path, "r+b") as f:
            f.truncate(cut)


def read_jsonl(path: str | Path, *, check: Callable[[dict], str | tuple[str, str] | None] | None = None,
               keep: Callable[[dict], dict] | None = None, holding: Iterable[bytes] | None = None) -> list[dict]:
    """Read a JSONL file (``iter_jsonl``: only the lines ``holding`` one of those bytes where given). ``check``
    returns what is wrong with a record's shape (or None; or ``(problem, fix)`` where the fix is not to rerun the
    stage that wrote it): a record that is not an object, or fails it, is a LeapError naming its line. ``keep``
    (after ``check``): what of each record to keep in memory."""
    records: list[dict] = []
    with gc_paused():
        for i, r in iter_jsonl(path, holding=holding):
            if check is not None:
                problem = "not a JSON object" if not isinstance(r, dict) else check(r)
                if isinstance(problem, tuple):  # (what is wrong, what to do): another stage's file, say
                    raise LeapError(problem[0], path=path, record=f"line {i}", fix=problem[1])
                if problem:
                    raise LeapError(f"malformed record: {problem}", path=path, record=f"line {i}",
                                    fix="rerun the stage that wrote it (delete the line; finished records are kept)")
            records.append(r if keep is None else keep(r))
    return records


class JsonlAppender:
    """Append-only JSONL writer that resumes: records whose key was already written are skipped.

    Each record is one ``write`` + ``flush`` of a whole line, so a crash leaves at most one truncated last
    line, which the next open cuts off. Lines are fsync'ed at once, or at most every ``sync_every`` seconds
    and on close (an fsync per record, ~10 ms, would cap a fast async stage at ~100 records/s; a killed
    process still keeps every flushed line, only a power loss can take the last second). ``replace_keys``
    lets a re-run redo chosen records (e.g. ``--retry-errors``): they count as not done, and the old line of
    each one written again is dropped on close by rewriting the file atomically; the others keep theirs (a
    run cut short, or one with --limit, loses no record). A file holding a key twice (a run killed before
    that rewrite, or two files concatenated) keeps the last, rewritten on open. Only the keys stay in memory
    (a day's descriptor records would not fit), unless ``keep_records``: then ``records`` maps each key to
    its record (else it is None).
    """

    def __init__(self, path: str | Path, key: str | Callable[[dict], str] = "narration_id",
                 *, replace_keys: Iterable[str] | Callable[[dict], bool] = (), sync_every: float = 0.0,
                 keep_records: bool = False, count: Callable[[dict], bool] | None = None,
                 lock: "OutputLock | None" = None):
        """``replace_keys``: the keys to redo, or a test of a record (its key is redone where the key's last record
        passes it: one pass over the file finds them). ``count``: a test whose passing keys (by their last record)
        are only collected, in the attribute ``counted`` (what a rerun could redo, said without redoing it). ``lock``: the
        output's lock, taken already by the caller (released on close, as the appender's own)."""
        self.path = Path(path)
        self._key = (lambda r: r[key]) if isinstance(key, str) else key
        refuse_folder(self.path, "JSONL file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = lock or OutputLock(self.path).acquire()
        last: dict[str, int] = {}  # each key's (last) line
        redo: set[str] = set()
        test = replace_keys if callable(replace_keys) else None
        self.records: dict[str, dict] | None = {} if keep_records else None
        kept_for_count: set[str] = set()
        n = 0
        try:
            with gc_paused():
                for i, r in (iter_jsonl(self.path, repair=True) if self.path.exists() else ()):
                    k = self._record_key(r, i, key)
                    last[k], n = i, n + 1
                    if self.records is not None:
                        self.records[k] = r
                    if test is not None:
                        (redo.add if test(r) else redo.discard)(k)
                    if count is not None:
                        (kept_for_count.add if count(r) else kept_for_count.discard)(k)
            self._end_with_newline()
            if n > len(last):
                twice = n - len(last)
                log.warning("%s: %s %s there twice (a run stopped while redoing %s, or files concatenated): kept "
                            "the last line of each", self.path, counted(twice, "record"),
                            "was" if twice == 1 else "were", "it" if twice == 1 else "them")
                self._rewrite(lambda i, start, k: last[k] == i)
            self._f = open(self.path, "a", encoding="utf-8")
            self._old_end = self._f.tell()  # the lines before it are the earlier runs'; a redone key's is dropped
        except BaseException:
            self._lock.release()
            raise
        self._redo = redo if test is not None else set(replace_keys).intersection(last)  # done, to be done again
        self.counted = kept_for_count
        self._rewritten: set[str] = set()
        self.keys: set[str] = set(last) - self._redo
        self.sync_every = sync_every
        self._last_sync = time.monotonic()

    def _record_key(self, r, line: int, key) -> str:
        try:
            k = self._key(r)
        except (KeyError, TypeError, IndexError, AttributeError):
            what = (f"a JSON {type(r).__name__}, not an object" if not isinstance(r, dict)
                    else f"no {key}" if isinstance(key, str) else "not a record of this file")
            raise LeapError(f"malformed record: {what}", path=self.path, record=f"line {line}",
                            fix="delete that line (the next run redoes its record) or give another --out") from None
        return k

    def _rewrite(self, keep: Callable[[int, int, str], bool]) -> None:
        """Rewrite the file (atomically, as a stream) with the lines for which ``keep(line number, byte offset of
        its start, key)`` holds. Blank lines go."""
        with atomic_path(self.path) as tmp, open(tmp, "wb") as out, open(self.path, "rb") as f, gc_paused():
            start = 0
            for i, raw in enumerate(f, start=1):
                if raw.strip() and keep(i, start, self._key(json.loads(raw))):
                    out.write(raw)
                start += len(raw)

    def _end_with_newline(self) -> None:
        """A complete last record without its newline (an edited or concatenated file) gets one, so the next
        record is not glued onto it."""
        size = self.path.stat().st_size if self.path.exists() else 0
        if not size:
            return
        with open(self.path, "rb+") as f:
            f.seek(size - 1)
            if f.read(1) != b"\n":
                log.warning("%s: the last line lacked its newline; added one", self.path)
                f.write(b"\n")

    def __contains__(self, key: str) -> bool:
        return key in self.keys

    def __len__(self) -> int:
        return len(self.keys)

    def write(self, record: dict) -> bool:
        """Append ``record`` unless its key is done already. Returns whether it was written."""
        k = self._key(record)
        if k in self.keys:
            return False
        try:
            self._f.write(json_line(record))
            self._f.flush()
            self.keys.add(k)
            if k in self._redo:
                self._rewritten.add(k)
            if self.records is not None:
                self.records[k] = record
            if time.monotonic() - self._last_sync >= self.sync_every:
                os.fsync(self._f.fileno())
                self._last_sync = time.monotonic()
        except OSError as e:
            raise with_path(e, self.path)
        return True

    def close(self) -> None:
        try:
            if not self._f.closed:
                try:
                    self._f.flush()
                    os.fsync(self._f.fileno())
                finally:
                    self._f.close()
                if self._rewritten:  # one line per key: a redone record's line of an earlier run goes
                    self._rewrite(lambda i, start, k: start >= self._old_end or k not in self._rewritten)
                    self._rewritten = set()
        except OSError as e:
            raise with_path(e, self.path)
        finally:
            self._lock.release()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
