"""Conventions shared by every stage: split names, ``--shard i/n``, the work directory."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence, TypeVar

from leap_cli.errors import LeapError

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "validation": "val", "valid": "val",
                  "test": "test"}
SPLIT_NAMES = tuple(_SPLIT_ALIASES)  # every spelling normalize_split accepts
DEFAULT_WORKDIR = Path("leap-work")

T = TypeVar("T")


def counted(n: int, noun: str, plural: str | None = None, *, sep: bool = False) -> str:
    """``n`` and the noun in the number that reads right: "1 record", "2 records", "0 records";
    ``plural`` for irregular nouns ("reply", "replies"), ``sep`` for a thousands separator ("1,234 records")."""
    return (f"{n:,}" if sep else f"{n}") + " " + (noun if n == 1 else plural or noun + "s")


TASKS = ("recognition", "anticipation")


def check_task(task: str) -> str:
    """``task`` when it is one of ``TASKS``, else the one-line refusal every stage gives."""
    if task not in TASKS:
        raise LeapError(f"unknown task {task!r}", fix="use --task recognition or anticipation")
    return task


def normalize_split(name: str) -> str:
    """``train``, ``val`` or ``test``; EPIC's ``validation`` is accepted as an alias of ``val``."""
    try:
        return _SPLIT_ALIASES[name.strip().lower()]
    except KeyError:
        raise LeapError(f"unknown split {name!r}", fix="use train, val (or validation) or test") from None


@dataclass(frozen=True)
class ShardSpec:
    """Part ``index`` (0-based) of ``count``: ``--shard 0/4`` takes every fourth item starting at the first."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str | None) -> "ShardSpec":
        if text is None:
            return cls()
        if not text.strip():  # `--shard "$SLURM_ARRAY_TASK_ID/16"` is never empty; `--shard "$PART"` unset is
            raise LeapError("--shard is empty (an unset variable in a job script?): every job would do the whole split",
                            fix="give i/n, e.g. --shard $SLURM_ARRAY_TASK_ID/16, or leave --shard out")
        try:
            i, n = (int(x) for x in text.split("/"))
        except ValueError:
            raise LeapError(f"--shard {text!r} is not of the form i/n", fix="e.g. --shard 0/4 for the first of four") from None
        if n < 1:
            raise LeapError(f"--shard {text!r}: n, the number of parts, is at least 1",
                            fix="e.g. --shard 0/4 for the first of four parts")
        if not 0 <= i < n:
            shown = (", ".join(f"{k}/{n}" for k in range(n - 1)) + f" and {n - 1}/{n}" if 1 < n <= 4 else
                     f"0/{n}, 1/{n}, ..., {n - 1}/{n}" if n > 4 else "0/1")
            raise LeapError(f"--shard {text!r} is out of range: parts are numbered from 0",
                            fix=f"i must satisfy 0 <= i < n (the parts of --shard i/{n} are {shown}; "
                                f"for a job array numbered from 1, pass $((TASK_ID - 1))/{n})")
        return cls(i, n)

    def select(self, items: Sequence[T], key=None, order: Sequence | None = None) -> list[T]:
        """Split deterministically; with ``key`` (e.g. the video id) items sharing a key stay together, the keys
        dealt in turn in the order they first appear, or in ``order`` (the split's videos in annotation order:
        then part i of any subset, such as extract's part i, is the same videos as part i of the whole)."""
        if self.count == 1:
            return list(items)
        if key is None:
            return [x for j, x in enumerate(items) if j % self.count == self.index]
        seen: dict = {}
        for k in [*(order or ()), *(key(x) for x in items)]:
            if k not in seen:
                seen[k] = len(seen)
        return [x for x in items if seen[key(x)] % self.count == self.index]

    @property
    def suffix(self) -> str:
        """Output-file suffix so parallel shards never write the same file."""
        return "" if self.count == 1 else f".shard{self.index}of{self.count}"


def descriptor_problem(record: dict) -> str | tuple[str, str] | None:
    """What is wrong with the shape of a descriptor record (``leap extract``'s output), or None (``(problem, fix)``
    for a program record: the file given is the wrong one). ``video_id``, ``start`` and ``stop`` may be absent
    (the views say "?"), but not of another type."""
    if not isinstance(record.get("narration_id"), str):
        return "no narration_id string"
    if "components" not in record and "text" not in record and "program" in record:
        return ("a program record (generate-programs' output), not a descriptor record",
                "give extract's output, descriptors/SPLIT.jsonl")
    comps = record.get("components", {})
    if not isinstance(comps, dict):
        return f"components is a {type(comps).__name__}, not an object"
    for name, comp in comps.items():
        if not isinstance(comp, dict):
            return f"components.{name} is a {type(comp).__name__}, not an object"
    if not isinstance(record.get("text", ""), str):
        return "text is not a string"
    if not isinstance(record.get("video_id", ""), str):
        return "video_id is not a string"
    for key in ("start", "stop"):
        if key in record and not _seconds(record[key]):
            negative = isinstance(record[key], (int, float)) and not isinstance(record[key], bool) and record[key] < 0
            return (f"{key} is {json.dumps(record[key])[:40]}, "
                    + ("negative (seconds into the video)" if negative else "not a number of seconds"))
    if "start" in record and "stop" in record and record["stop"] < record["start"]:
        return f"the segment stops ({record['stop']}) before it starts ({record['start']})"
    return None


def _seconds(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


PROGRAM_STATUSES = ("valid", "invalid", "failed")


def program_record_problem(record) -> str | None:
    """What is wrong with the shape of a program record (``leap generate-programs``' output), or None. The program
    itself may be anything: an invalid reply is kept as it came, and validation says what is wrong with it."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    if not isinstance(record.get("narration_id"), str):
        return "no narration_id string"
    if record.get("status") not in PROGRAM_STATUSES:
        return f"status is {json.dumps(record.get('status'))[:40]}, not valid, invalid or failed"
    prov = record.get("provenance") or {}
    if not isinstance(prov, dict):
        return f"provenance is a {type(prov).__name__}, not an object"
    for key in ("backend", "model"):
        if not isinstance(prov.get(key) or "", str):
            return f"provenance.{key} is a {type(prov[key]).__name__}, not a string"
    errors = record.get("errors") or []
    if not isinstance(errors, list):
        return f"errors is a {type(errors).__name__}, not a list"
    for i, e in enumerate(errors):
        if not isinstance(e, dict):
            return f"errors[{i}] is a {type(e).__name__}, not an object with pointer and message"
        for key in ("pointer", "message"):
            if not isinstance(e.get(key), str):
                return f"errors[{i}] has no {key} string"
    return None


# leap's record files: who writes them and where
RECORD_FILES = {"program": ("leap generate-programs", "programs/SPLIT.jsonl"),
                "descriptor": ("leap extract", "descriptors/SPLIT.jsonl")}


def record_kind(record) -> str | None:
    """Which of leap's record files a JSON line belongs to (``RECORD_FILES``), or None."""
    if not isinstance(record, dict):
        return None
    if isinstance(record.get("components"), dict) and "text" in record:
        return "descriptor"
    if record.get("status") in PROGRAM_STATUSES and ("program" in record or "provenance" in record):
        return "program"
    return None


def check_record_file(path: str | Path, want: str) -> None:
    """One line for a file given as ``want`` records that holds none: binary data (a checkpoint, an archive) or
    another stage's records (its first lines tell), instead of a line-by-line complaint that ends in "delete
    those lines"."""
    writer, default = RECORD_FILES[want]
    fix = f"give the {want} records {writer} writes (WORKDIR/{default})"
    try:
        with open(path, "rb") as fh:
            head = fh.read(65536)
    except OSError:
        return  # (the reader says what is wrong with the path)
    if b"\0" in head:
        raise LeapError(f"not a JSONL file of {want} records (binary data)", path=path, fix=fix)
    kinds = set()
    for line in head.splitlines()[:8]:
        try:
            kinds.add(record_kind(json.loads(line)))
        except ValueError:
            continue
    kinds.discard(None)
    if kinds and want not in kinds:
        other = kinds.pop()
        raise LeapError(f"holds {other} records ({RECORD_FILES[other][0]} writes them), not {want} records",
                        path=path, fix=fix)


_KINDS = {"html": ("an HTML page", (b"<!doctype html", b"<html")), "json": ("a JSON report", (b"{",))}


def refuse_overwrite(out: str | Path, inputs, option: str, kind: str | None = None) -> None:
    """Refuse to write ``out`` (the path given to ``option``) over one of the command's input files: the same
    file, also through a symlink or a hard link, or the same path where the file does not exist yet; and, with
    ``kind`` (``html``, ``json``), over an existing file that is not of that kind (a typo that names the
    annotations or a video, which the command may not read, must not replace them with a page), or a folder."""
    import os

    for f in inputs:
        if same_file(out, f):
            raise LeapError(f"{option} would write over {f}, which this command reads or writes", path=out,
                            fix=f"give {option} another path")
    if kind is None:
        return
    what, starts = _KINDS[kind]
    if os.path.isdir(out):
        raise LeapError(f"{option} names a folder", path=out, fix=f"give {option} a file path (e.g. page.{kind})")
    try:
        with open(out, "rb") as fh:
            head = fh.read(64).lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    except FileNotFoundError:
        return
    except OSError:
        return  # (the write says what is wrong with the path)
    if head and not head.startswith(starts):
        raise LeapError(f"{option} would write over {out}, which is not {what}: leap replaces only its own",
                        path=out, fix=f"give {option} another path (or remove that file yourself)")


def page_out(value: str | None, default_name: str, option: str = "--html") -> Path | None:
    """The page an ``--html`` option writes: ``value``, or the page ``default_name`` in it where it names a folder,
    one that exists or a new one given with a trailing slash (``--html pages/``; the option is a string, as a Path
    loses the slash: the page was written as a file named ``pages``)."""
    import os

    if value is None:
        return None
    if not value:
        raise LeapError(f"{option} is empty", fix=f"give {option} a path, or leave it out")
    path = missing_parents_out(Path(value))
    if value.endswith(tuple(filter(None, ("/", os.sep, os.altsep)))) or path.is_dir():
        return path / default_name.replace(os.sep, "_")
    return path


def same_file(a: str | Path, b: str | Path) -> bool:
    import os

    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return Path(a).resolve() == Path(b).resolve()


def dataset_root(workdir: str | Path, data: str | Path | None = None) -> Path:
    """``--data``, defaulting to the synthetic kitchen that ``leap demo-data`` writes into the work directory."""
    return Path(data) if data is not None else Path(workdir) / "kitchen"


def shard_out(path: str | Path, shard: ShardSpec) -> Path:
    """The output file of one part: ``--out x.jsonl --shard 1/4`` writes ``x.shard1of4.jsonl``, so parallel
    parts never append to one file (a path that already carries the suffix is kept as it is)."""
    path = Path(path)
    if shard.count == 1 or shard.suffix in path.name:
        return path
    suffix = path.suffix
    return path.with_name(path.name[:len(path.name) - len(suffix)] + shard.suffix + suffix) if suffix \
        else path.with_name(path.name + shard.suffix)


def workers_option(value: int | None) -> int | None:
    """``--workers``' typer callback (extract, build-shards, check-shards, demo): more processes than this job's
    CPUs are warned of (``--workers 64`` on 2 cores ran 10 times slower than 1, output the same)."""
    import logging

    if value is not None and value > 1 and value > (cpus := usable_cpus()):
        logging.getLogger("leap_cli").warning("--workers %d is more than the %d CPU%s this job may use: the processes "
                                              "take turns and run slower than %d would", value, cpus,
                                              "s" if cpus != 1 else "", cpus)
    return value


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity (a Slurm job's share, not the machine's count), fewer where a
    cgroup's CPU quota allows fewer (``docker run --cpus 4``, a Kubernetes CPU limit: all the node's CPUs in the
    affinity, 4 CPUs of time)."""
    import math
    import os

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # (not on Linux)
        return os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cpus, math.ceil(quota))) if quota is not None else cpus


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup"), own: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPUs' worth of time this process's cgroups allow (the smallest quota / period of its cgroup and those
    above it, v2's ``cpu.max`` or v1's ``cpu.cfs_quota_us``), None without a quota or where none can be read."""
    try:
        lines = own.read_text().splitlines()
    except OSError:
        return None
    found = []
    for line in lines:
        _, controllers, rel = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":  # v2: "0::/PATH", the files "max 100000" or "QUOTA PERIOD"
            base, names = root, ("cpu.max",)
        elif "cpu" in controllers.split(","):  # v1: "N:cpu,cpuacct:/PATH"
            base, names = root / controllers, ("cpu.cfs_quota_us", "cpu.cfs_period_us")
            if not base.is_dir():
                base = root / "cpu"
        else:
            continue
        folder = base / rel.strip("/")  # in a container the path may be the host's: its mount's root is read too
        for d in [folder, *folder.parents]:
            try:
                fields = " ".join((d / n).read_text() for n in names).split()
                if fields[0] not in ("max", "-1") and float(fields[1]) > 0:
                    found.append(float(fields[0]) / float(fields[1]))
            except (OSError, ValueError, IndexError):
                pass
            if d == base:
                break
    return min(found) if found else None


WORKDIRS: list[Path] = []  # the --workdir values of this command (``workdir_option``), for ``missing_workdir``


def missing_parents_out(path: Path) -> Path:
    """``path`` with each ``NAME/..`` whose NAME does not exist taken out (``x/../w`` -> ``w`` where there is no
    ``x``): the system cannot reach anything through a missing folder, so every file under such a path looked
    missing (a generate-programs made every program again over the finished ones), and a mkdir made the folder.
    A ``..`` after a folder that exists is left to the system (after a symbolic link it is the link target's
    parent, not the path's)."""
    if ".." not in path.parts:
        return path
    parts: list[str] = []
    for part in path.parts:
        if part == ".." and parts and parts[-1] not in ("..", path.anchor) and not Path(*parts).exists():
            parts.pop()
        else:
            parts.append(part)
    return Path(*parts) if parts else Path(".")


def workdir_option(value: Path | None) -> Path | None:
    """``--workdir``'s typer callback: a path that is a file is said so (it was reported through the first file
    under it: "afile/descriptors: Not a directory", "afile/kitchen: dataset root not found"); ``x/../w`` with no
    folder x is ``w`` (``missing_parents_out``, as every path a command is given: ``cli``)."""
    if value is not None:
        value = missing_parents_out(value)
    if value is not None and value.exists() and not value.is_dir():
        raise LeapError(f"--workdir {value} is a file, not a folder",
                        fix="pass the folder that holds (or will hold) the pipeline's files, e.g. leap-work")
    if value is not None:
        WORKDIRS.append(value)
    return value


def missing_workdir(error: LeapError) -> Path | None:
    """The command's work directory where it does not exist and ``error`` names a path in it (a mistyped
    --workdir, or the default leap-work/ from another folder, was reported through the first file the stage
    looked for: "nowork/kitchen: dataset root not found")."""
    if not error.path:
        return None
    import os

    at = os.path.abspath(error.path)
    for w in WORKDIRS:
        root = os.path.abspath(w)
        if (at == root or at.startswith(root.rstrip(os.sep) + os.sep)) and not os.path.isdir(root):
            return w
    return None


def given_options(ctx, *names: str) -> list[str]:
    """The options among the parameters ``names`` that were given on the command line (not left at their
    defaults), as the command spells them (``--tau-o``)."""
    # (by the enum member's name: newer typer releases carry their own copy of click's ParameterSource)
    return [p.opts[0] for p in ctx.command.params
            if p.name in names and getattr(ctx.get_parameter_source(p.name), "name", None) == "COMMANDLINE"]


def lowercase(value: str | None) -> str | None:
    """A choice option's value as its choices are spelt (``--task Recognition``, ``--backend OFFLINE``: split
    names were taken in any case, these were refused); the typer callback of such options."""
    return value.strip().lower() if isinstance(value, str) else value


def resolve_run(run: str | Path, workdir: str | Path) -> Path:
    """``runs/NAME`` as given, else under the work directory (``{workdir}/runs/NAME``)."""
    run = Path(run)
    for cand in (run, Path(workdir) / run, Path(workdir) / "runs" / run):
        if cand.exists():
            return cand
    # (a name, or runs/NAME, is said as that run in the work directory, so that a mistyped --workdir is named)
    if run.is_absolute() or (len(run.parts) > 1 and run.parts[0] != "runs"):
        said = run
    else:
        said = Path(workdir) / run if run.parts[0] == "runs" else Path(workdir) / "runs" / run
    raise LeapError("run not found", path=said, fix=f"give runs/NAME written by `leap train` (looked under {workdir})")


def only_one(found: list[Path], what: str, where: Path, fix: str) -> Path | None:
    """The one path a stage can take by default from its work directory (``found``: the candidates, e.g. its
    runs); None when there is none; a LeapError naming them when there are several."""
    if len(found) > 1:
        names = ", ".join(str(p) for p in found[:5]) + (", ..." if len(found) > 5 else "")
        raise LeapError(f"{where} holds {len(found)} {what}: {names}", fix=fix)
    return found[0] if found else None


def merged_input(path: str | Path) -> Path:
    """A stage's default input (e.g. ``WORKDIR/descriptors/train.jsonl``) as it is; where it is missing but
    ``--shard`` runs left parts of it (``train.shard0of4.jsonl`` ...), a LeapError naming them and the merge (the
    next stage went on without them: generate-programs from the narrations alone, build-shards without
    programs). Where both are there, the merge is checked against its parts (``check_merge``)."""
    from leap_cli.io import merge_command, parts_text, shard_parts

    path = Path(path)
    if not path.parent.is_dir():
        return path
    if path.exists():
        parts: dict[int, list[tuple[int, Path]]] = {}
        for index, count, p in shard_parts(path):
            parts.setdefault(count, []).append((index, p))
        check_merge(path, parts)
        return path
    found = parts_text(path)
    if found is None:
        return path
    raise LeapError(f"not found, but parts of it from --shard runs are there ({found[0]})", path=path,
                    fix=f"once every part is done, merge them: {merge_command(path, found[1])}")


def _lines(path: Path) -> tuple[int, bool]:
    """(lines, ends with a newline) of a JSONL file, a last line without its newline counted too; at disk speed."""
    n, last = 0, b"\n"
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n"), last == b"\n"


def _last_line_whole(path: Path) -> bool:
    """Whether a file's last line (one without its newline) is a whole JSON value, not a record cut short."""
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        back = min(size, 1 << 20)
        f.seek(size - back)
        tail = f.read()
    try:
        json.loads(tail.rsplit(b"\n", 1)[-1])
    except ValueError:
        return False
    return True


def _ids(path: Path) -> set[str]:
    """The narration ids of a JSONL file's records (lines that are not records are passed over)."""
    out = set()
    with path.open("rb") as f:
        for line in f:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if isinstance(r, dict) and isinstance(r.get("narration_id"), str):
                out.add(r["narration_id"])
    return out


def check_merge(path: Path, parts: dict[int, list[tuple[int, Path]]]) -> None:
    """A file merged from the ``--shard`` parts beside it (``parts``: {count: [(index, path)]}) that lacks records
    the parts hold is refused (merged before a part was done, or from some parts only: the next stage went on
    with the rest, exit 0); a part missing, or written after the merge, is warned of. Line counts first (a file of
    a day's descriptors is read at disk speed); only where the file has fewer lines than its parts together are
    the ids compared (a merge that a later run rid of a record held twice has every id)."""
    import logging

    from leap_cli.io import merge_command, shell_word

    log = logging.getLogger(__name__)
    merged_at = path.stat().st_mtime_ns
    lines = None
    for count, have in sorted(parts.items()):
        if lines is None:
            lines = _lines(path)[0]
        # in the order `cat X.shard*ofN.jsonl` joined them: the shell sorts the names (shard10 before shard2)
        joined = sorted(have, key=lambda ip: ip[1].name)
        tallies = [(p, *_lines(p)) for _, p in joined]
        last_index, last = joined[-1]
        if tallies[-1][1] and not tallies[-1][2] and not _last_line_whole(last) and not _last_line_whole(path):
            # (the part `cat` put last ends in a record cut short, and so does the merge: the line counts agree)
            raise LeapError(f"ends in a record cut short: {last.name}, the part `cat` joined last, was killed while "
                            "writing it", path=path,
                            fix=f"run part {last_index}/{count} again with the command that wrote it (it drops the cut "
                                f"record and does it again), then merge again: {merge_command(path, count)}")
        if lines < sum(n for _, n, _ in tallies):
            lacking = set().union(*(_ids(p) for p, _, _ in tallies)) - _ids(path)
            if lacking:
                glued = [(p, i) for (i, _), (p, n, newline) in zip(joined, tallies[:-1]) if n and not newline]
                cut = [(p, i) for p, i in glued if not _last_line_whole(p)]
                why = (f"{glued[0][0].name} ends without a newline, so `cat` joined its last record to the next "
                       "part's first" if glued else "it was merged before every part was done, or from some of them")
                if cut:  # (a part killed while writing: its last line, a record cut short, is no record to keep)
                    why = (f"{cut[0][0].name} ends in a record cut short (its job was killed while writing it), "
                           "which `cat` joined to the next part's first")
                    first = (f"run part {cut[0][1]}/{count} again with the command that wrote it (it drops the cut "
                             "record and does it again), then ")
                elif glued:
                    first = f"end it with a newline (echo >> {shell_word(glued[0][0])}), then "
                else:
                    first = ""
                raise LeapError(f"lacks {counted(len(lacking), 'record')} that its --shard parts of {count} beside it hold (e.g. "
                                f"{sorted(lacking)[0]}): {why}", path=path,
                                fix=first + f"merge again once every part is done: {merge_command(path, count)} (or "
                                            "move the parts away if this file is as you want it)")
        missing = sorted(set(range(count)) - {i for i, _ in have})
        if missing:
            one = len(missing) == 1
            log.warning("%s: %s %s of --shard i/%d %s not beside it: if %s not done when it was merged, run %s "
                        "and merge again (%s)", path, "part" if one else "parts", ", ".join(map(str, missing)), count,
                        "is" if one else "are", "it was" if one else "they were", "it" if one else "them",
                        merge_command(path, count))
        newer = [p.name for _, p in have if p.stat().st_mtime_ns > merged_at]
        if newer:
            log.warning("%s: %s written after it: if that part was run again since the merge (e.g. with "
                        "--retry-errors), merge again to take it in (%s); if the files were only copied, nothing to "
                        "do", path, ", ".join(newer), merge_command(path, count))


def die_with_parent(sig: int, parent: int) -> None:
    """Ask Linux to send this process ``sig`` when its parent dies, even by SIGKILL (elsewhere a no-op); exit at
    once if the parent ``parent`` (its pid, taken before forking) is gone already."""
    import ctypes
    import os
    import sys

    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            PR_SET_PDEATHSIG = 1
            libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no prctl
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def new_pool(ctx, processes: int, initializer=None, initargs: tuple = ()):
    """``ctx.Pool(processes, initializer, initargs)`` that cannot hang where one of its workers or threads fails to
    start (a process limit, ``ulimit -u``: EAGAIN, "can't start new thread"). multiprocessing's Pool SIGTERMs the
    workers it started and joins them without a bound, and a SIGTERM that reaches a fresh fork before it has run is
    lost (CPython's after-fork step clears the signal the stage's inherited handler caught): `build-shards --workers
    2` waited for ever, holding its output's lock. Here they are SIGKILLed; the error goes on."""
    return _pool_class()(processes, initializer, initargs, context=ctx)


@functools.cache
def _pool_class() -> type:
    import multiprocessing.pool
    import threading

    previous = threading.excepthook

    def handler_failed(args) -> None:
        """A pool's worker-handler thread that could not start the replacement of a dead worker (EAGAIN under ulimit
        -u) ends in a traceback; ``pool_results`` says the death in one line."""
        thread = getattr(args, "thread", None)
        if not (thread is not None and thread.name.endswith("(_handle_workers)") and (
                isinstance(args.exc_value, OSError) or str(args.exc_value) == "can't start new thread")):
            previous(args)

    threading.excepthook = handler_failed

    class Pool(multiprocessing.pool.Pool):
        def __init__(self, *args, **kwargs):
            self._state = multiprocessing.pool.INIT  # (as Pool.__init__ sets first: its __del__ reads it)
            try:
                with stops_held(kwargs.get("context")):
                    super().__init__(*args, **kwargs)
            except BaseException:  # (a thread could not start: its workers run, and no one would stop them; or
                # the stop held while the workers started: a worker it killed may hold the task queue's lock, which
                # the pool's finalizer, run as it is collected, waited for for ever)
                stop_pool(self)
                raise

        def _repopulate_pool(self):  # (Pool.__init__'s start of its workers, which it joins if one fails)
            try:
                return super()._repopulate_pool()
            except BaseException:
                _kill_all(self._pool)
                raise

    return Pool


_STOPS = ("SIGINT", "SIGTERM", "SIGHUP")  # what stops a stage (cli): its workers take them once started
HOLD_STOPS = 2.0  # seconds: how long a start of workers holds a stop at most


@contextlib.contextmanager
def stops_held(context=None, block: bool = True) -> Iterator[None]:
    """Hold the signals that stop a stage while a block that a stop must not cut runs (a pool's or a DataLoader's
    start of its workers; soundfile's reads and writes, whose close a stop's KeyboardInterrupt could leave half
    done: ``media.audio.read_audio``); they take effect as the block ends. A Ctrl-C to the group as `extract
    --workers N` spawned its workers printed each worker's KeyboardInterrupt traceback (one raised as its interpreter imported ``site``: "Fatal Python error"), and a stop
    that reached the stage between a worker's spawn and the write of its start data left the worker to fail with
    "EOFError: Ran out of input". A stop's KeyboardInterrupt raised inside a DataLoader's start, in torch's or the
    threading module's code, left a queue's lock held (raised as a ``with`` block released it: evaluate then hung
    for ever as it stopped the workers), broke a thread's start ("release unlocked lock"), or was replaced by the
    death of a worker that the same process group's SIGTERM killed as it started (exit 2 for a stop). Blocked here,
    they stay blocked in each worker (fork and exec keep the signal mask) until ``start_worker`` or
    ``loader_worker_init`` has set them; the stage's own handlers, which run on whichever thread took the signal,
    are deferred to the block's end (one taken by another thread, which does not block them, too: a start of many
    forks of a large process can take seconds). ``context``: the workers' (a spawn context's resource tracker is
    started first). Without ``block`` (a persistent DataLoader's later epoch, which forks nothing and waits for
    each worker: a stalled one would hold Ctrl-C for its timeout) the signals are not blocked, and their handlers
    are deferred for ``HOLD_STOPS`` at most."""
    import signal
    import threading
    import time

    stops = [getattr(signal, n) for n in _STOPS if hasattr(signal, n)]
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    caught: list[int] = []
    handlers = {s: h for s in stops if callable(h := signal.getsignal(s))}
    end = time.monotonic() + HOLD_STOPS
    lock = threading.Lock()
    timer = None

    def resend() -> None:  # (a start that still waits at HOLD_STOPS: a stop it held was held until its end, a
        with lock:  # stalled worker's LOADER_TIMEOUT; sent again now, its handler runs as it comes, ``hold``)
            held, caught[:] = list(dict.fromkeys(caught)), []
        for s in held:
            os.kill(os.getpid(), s)

    def hold(signum, frame):
        if not block and time.monotonic() > end:  # (a start that forks waits for no worker: held to its end)
            handlers[signum](signum, frame)
        else:
            with lock:
                caught.append(signum)

    mask = None
    try:
        if not block and handlers:
            timer = threading.Timer(HOLD_STOPS + 0.01, resend)
            timer.daemon = True
            timer.start()
        for s in handlers:
            signal.signal(s, hold)
        if context is not None and context.get_start_method() != "fork":
            # (started before the mask is set: its start unblocks SIGINT and SIGTERM in this thread)
            from multiprocessing import resource_tracker

            resource_tracker.ensure_running()
        if block:
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, stops)
        yield
    finally:
        if timer is not None:
            timer.cancel()
        for s, h in handlers.items():
            signal.signal(s, h)
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # (one that came to this thread is delivered now)
        with lock:  # (each once: sent again by the timer, or raised here)
            held, caught[:] = list(dict.fromkeys(caught)), []
        for s in held:
            signal.raise_signal(s)


def unblock_stops() -> None:
    """Take the stop signals a pool or a DataLoader held while it started this worker (``stops_held``)."""
    import signal

    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [getattr(signal, n) for n in _STOPS if hasattr(signal, n)])


def _stop_worker_handler(pool, timeout: float = 5.0) -> None:
    """Stop ``pool``'s worker-handler thread (as ``terminate`` would first), so that workers killed next are not
    replaced behind the caller's back."""
    import multiprocessing.pool

    handler = getattr(pool, "_worker_handler", None)
    if handler is not None and handler.is_alive():
        handler._state = multiprocessing.pool.TERMINATE
        pool._change_notifier.put(None)
        handler.join(timeout)


def _kill_all(processes) -> None:
    """SIGKILL ``processes`` (multiprocessing's, started or not)."""
    for p in list(processes):
        try:
            p.kill()
        except Exception:  # noqa: BLE001 - already gone, or never started
            pass


def stop_pool(pool, grace: float = 10.0) -> None:
    """``pool.terminate()`` and ``join()`` of a stage's ``multiprocessing.Pool``, bounded. They can wait for good
    when a worker died inside the pool's pipes or locks: a process group's SIGTERM (``timeout``, Slurm) during
    the workers' start-up hung ``extract --workers 2`` about one run in three until SIGKILL, holding the output's
    lock. The workers are SIGKILLed first (the pool would only SIGTERM them), and the pool's own threads are left
    (daemon threads) if the terminate has not returned after ``grace`` seconds."""
    import threading

    _stop_worker_handler(pool, grace / 2)  # (it would replace the workers killed next: one holds the lock below)
    workers = list(getattr(pool, "_pool", None) or ())  # the pool's worker processes (Pool keeps them there)
    _kill_all(workers)
    _free_task_queue(pool, workers)

    def finish() -> None:
        try:
            pool.terminate()
            pool.join()
        except Exception:  # noqa: BLE001 - the stage has failed already, and says why: no traceback on top of it
            # (terminate drains the task queue, where a worker SIGKILLed mid-read left half a task: EOFError)
            pass

    t = threading.Thread(target=finish, name="leap-pool-stop", daemon=True)
    t.start()
    t.join(grace)


def _free_task_queue(pool, workers: list) -> None:
    """Release the read lock of ``pool``'s task queue where a SIGKILLed idle worker held it (it waits for a task
    holding it): ``terminate`` takes that lock, and ``stop_pool`` waited out its whole grace (10 s) before the
    stage's error line came. Only once every worker is gone: then none of them can hold it."""
    lock = getattr(getattr(pool, "_inqueue", None), "_rlock", None)
    for p in workers:
        try:
            p.join(1)
            if p.is_alive():
                return
        except Exception:  # noqa: BLE001 - never started
            continue
    if lock is None:
        return
    if lock.acquire(False):  # (free: give it back)
        lock.release()
    else:
        try:
            lock.release()
        except ValueError:  # (a lock that cannot be released from here: terminate waits its grace, as before)
            pass


_QUIET_KINDS: set[type] = set()  # (what quiet_unraisable drops)


def quiet_unraisable(*kinds: type) -> None:
    """From now on, drop the "Exception ignored in ..." tracebacks of these ``kinds`` (``sys.unraisablehook``): what
    is left half-built or half-stopped after an error the stage has said in one line fails again as it is torn
    down; any other goes to the hook before. One hook however often it is called (each failed start of workers
    calls it: a hook per call made a chain as long as the starts), set again where another replaced it."""
    import sys

    _QUIET_KINDS.update(kinds)
    if getattr(sys.unraisablehook, "_leap_quiet", False):
        return
    default = sys.unraisablehook

    def hook(unraisable) -> None:
        if not isinstance(unraisable.exc_value, tuple(_QUIET_KINDS)):
            default(unraisable)

    hook._leap_quiet = True
    sys.unraisablehook = hook


def pool_results(pool, results, poll: float = 2.0) -> Iterator:
    """Iterate a process pool's ``imap`` iterator ``results``; a worker that died (killed by the kernel's
    out-of-memory killer, crashed in a library, or failed as it started) is said in one line. multiprocessing's
    Pool replaces such a worker and waits for its task for ever (a worker that cannot start is replaced again and
    again): the stage hung, its records still to do. Call it as the tasks are given (``pool.imap(...)`` as its
    argument): the pool's workers are known from then on, so a worker that dies before the first result is asked
    for is seen too."""
    known = {p.pid: p for p in pool._pool}  # (the pool's processes; a new pid is a worker that replaced a dead one)
    return _pool_results(pool, results, poll, known)


def _pool_results(pool, results, poll: float, known: dict) -> Iterator:
    import multiprocessing
    import signal

    while True:
        try:
            yield results.next(timeout=poll)
        except StopIteration:
            return
        except multiprocessing.TimeoutError:
            now = {p.pid: p for p in pool._pool}
            # (a worker replaced, or one that ended and is not: its replacement could not start, under ulimit -u)
            dead = [p for pid, p in known.items() if pid not in now or p.exitcode is not None]
            if not dead:
                continue
            code = next((p.exitcode for p in dead if p.exitcode), None)
            how = (f"killed by {signal.Signals(-code).name}" if code is not None and code < 0
                   and -code in signal.Signals._value2member_map_ else f"exit code {code}" if code else "it ended")
            killed = code == -signal.SIGKILL
            raise LeapError(f"a worker process died ({how}), and its segments with it",
                            fix=("SIGKILL is most often the kernel's out-of-memory killer (dmesg says): give the job "
                                 "more memory or use fewer --workers; then " if killed else
                                 "a crash in a library or a signal sent to it; ") +
                                "run the same command again (finished records are kept)" +
                                ("" if killed else "; where it comes back, --workers 1 shows the error in the stage "
                                                   "itself"))


def memory_fix(e: BaseException) -> str | None:
    """What to do where ``e`` says the process's memory ran out (a MemoryError; a library that could not be mapped,
    or ENOMEM, under a cap on the address space as login nodes set: ``ulimit -v``); None for another error."""
    import errno

    text = str(e)
    if not (isinstance(e, MemoryError) or isinstance(e, (ImportError, OSError)) and (
            "failed to map segment" in text or "Cannot allocate memory" in text
            or getattr(e, "errno", None) == errno.ENOMEM)):
        return None
    try:
        import resource

        cap = resource.getrlimit(resource.RLIMIT_AS)[0]
        cap = None if cap == resource.RLIM_INFINITY else cap
    except (ImportError, ValueError, OSError):  # (no resource module: not a cap leap can name)
        cap = None
    if cap is not None:
        return (f"the process's address space is capped at {cap / 2 ** 30:.2g} GiB (ulimit -v {cap // 1024}): raise the "
                "cap (torch alone maps about 4 GiB; ulimit -v unlimited, or a job that asks for more memory), or use "
                "fewer workers")
    return "the machine's or the job's memory ran out: ask for more, or use fewer workers or a smaller batch"


def out_of_memory(e: BaseException) -> LeapError | None:
    """``e`` as one line where it says the memory ran out (``memory_fix``); None for another error."""
    fix = memory_fix(e)
    if fix is None:
        return None
    said = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return LeapError(f"out of memory ({type(e).__name__}{': ' + said if said else ''})", fix=fix)


# What a stage's worker process maps as it loads its libraries (OpenCV, SciPy, NumPy's BLAS; measured with
# ulimit -v: under 0.5 GiB extract's workers hung inside OpenBLAS's start, native code with no error to catch)
WORKER_ADDRESS_SPACE = 1 << 30


def warn_small_address_space(workers: int) -> None:
    """Warn, before worker processes start, where the address space is capped (``ulimit -v``, as login nodes set)
    under what each needs (``WORKER_ADDRESS_SPACE``): they may crash, fail or hang as they load their libraries."""
    if workers < 2:
        return
    try:
        import resource

        cap = resource.getrlimit(resource.RLIMIT_AS)[0]
        if cap == resource.RLIM_INFINITY or cap >= WORKER_ADDRESS_SPACE:
            return
    except (ImportError, ValueError, OSError):
        return
    import logging

    logging.getLogger("leap_cli").warning(
        "the address space is capped at %.2g GiB (ulimit -v %d): a worker process needs about %d GiB as it loads "
        "its libraries, and may crash or hang under the cap; raise it (ulimit -v unlimited, or a job with more "
        "memory) or use --workers 1", cap / 2 ** 30, cap // 1024, WORKER_ADDRESS_SPACE >> 30)


_STARTED: dict = {}  # a pool worker's start that failed (``start_pool_worker``)


def start_pool_worker(init, *args) -> None:
    """A process pool's initializer, ``init(*args)``, that does not fail: multiprocessing's Pool replaces a worker
    whose initializer raised, and the new one failed the same way, for ever (`extract --workers 2` under a memory
    cap hung, its workers loading a library again and again). The error is kept, and the worker's first task raises
    it (``pool_worker_ready``): the stage stops in one line."""
    try:
        init(*args)
    except BaseException as e:  # noqa: BLE001 - said by the first task, in the stage's process
        _STARTED["error"] = out_of_memory(e) or LeapError(
            f"a worker process could not start ({type(e).__name__}: {e})",
            fix="run with --workers 1 to meet the error in the stage's own process")


def pool_worker_ready() -> None:
    """Raise the error of this pool worker's start, if it failed (``start_pool_worker``)."""
    if "error" in _STARTED:
        raise _STARTED["error"]


def start_worker(parent: int) -> None:
    """Set up a forked worker process of a stage (its pool's initializer): Ctrl-C is the parent's (it keeps what
    is written and stops the pool), SIGTERM kills at once (the stage's own handler, inherited by the fork, only
    sets a flag: a worker blocked on the pool's queue when the pool terminated it never saw the signal and hung
    the stage), and the worker is SIGKILLed when the parent dies (no orphan holding the output's lock)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGHUP"):  # (a closed terminal hangs up the whole job: the parent stops the pool)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent(signal.SIGKILL, parent)
    unblock_stops()  # (a SIGTERM the group got as the pool started it ends the worker now)


# What to do at the process's limit of open files: leap raises its soft limit to the hard one first (cli), so only
# a higher hard limit helps (a shell's `ulimit -n N` sets the hard limit too, and would lower it).
RAISE_OPEN_FILES = "have the hard limit of open files (ulimit -Hn says it) raised by root or the machine's admin"

# A stage's word on what its next run is (``rerun``): ``leap train`` says "resume" once its run has started (its
# config.yaml is written: the same command is refused beside it, --resume continues it)
NEXT_RUN: dict[str, str] = {}


def rerun(plain: str = "the same command", command: str | None = None, args=None, started: bool | None = None) -> str:
    """How to go on after a stop, for the advice of an error: the same command (``plain``), but without --force or
    --overwrite (they would start the finished work over; --force wins over --resume), and ``leap train`` with
    --resume once its run has started. ``command``: the leap command running (the CLI's; else the first word of
    ``sys.argv`` that is no option); ``args``: the options given (default: ``sys.argv``'s); ``started``: whether
    the training run has started (default: as ``NEXT_RUN`` says)."""
    import sys

    if command is None:  # (leap ablate trains in its process: its advice must not be train's --resume)
        command = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
    args = set(sys.argv[1:] if args is None else args)
    forced = {"--force", "--overwrite"} & args
    resumes = command == "train" and (NEXT_RUN.get("train") == "resume" if started is None else started)
    if forced and resumes:
        return (f"the same command without {min(forced)}" if "--resume" in args
                else f"the same command with --resume instead of {min(forced)}")
    if forced and command != "train":  # (a run that never started: its --force deletes nothing)
        return f"the same command without {min(forced)}"
    if resumes and "--resume" not in args:
        return "the same command with --resume"
    return plain
