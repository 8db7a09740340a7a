"""The ``leap`` command line: one thin command per pipeline stage.

Each command parses its options, calls its stage, and prints the summary. Stage commands live in
``leap_cli/commands/`` and are registered here in pipeline order.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import sys
import time
import traceback

import typer

from leap_cli import __version__
from leap_cli.common import RAISE_OPEN_FILES
from leap_cli.entry import NOTHING_STARTED
from leap_cli.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, LeapError
from leap_cli.programs.redact import redact  # (a secret an error quotes: an LLM server's or a URL's; imported here:
from leap_cli.progress import output_console  # out of memory, an import in the error's path failed too)
from leap_cli.report.terminal import printable


def _fold_help_tables() -> None:
    """Help that folds a word too long for its column instead of cutting it with '…': at 80 columns typer's option
    tables cut long option names and default paths (``WORKDIR/descriptors/…``). Its tables (and
    rich's Columns) add their columns by ``add_row``; this makes them fold (where they are not rich's Table: left as
    they are). Called for a help only: the process prints nothing else."""
    import rich.table

    try:
        from typer import rich_utils as utils  # (imported for a help only: ~40 ms)
    except ImportError:
        return
    if getattr(utils, "Table", None) is not rich.table.Table:
        return

    class FoldingTable(rich.table.Table):
        def add_column(self, *args, **kwargs):
            kwargs.setdefault("overflow", "fold")
            super().add_column(*args, **kwargs)

        def add_row(self, *renderables, **kwargs):
            while len(self.columns) < len(renderables):
                self.add_column(overflow="fold")
            super().add_row(*renderables, **kwargs)

    utils.Table = FoldingTable
    import rich.columns  # (an option's help is a Columns of its texts, laid out in a table of its own)

    if getattr(rich.columns, "Table", None) is rich.table.Table:
        rich.columns.Table = FoldingTable


app = typer.Typer(
    name="leap",
    help="LEAP for EPIC-KITCHENS-100: turn kitchen video into action programs, train on them, submit.\n\n"
         "Pipeline: demo-data -> info -> extract -> generate-programs -> validate-programs -> build-shards "
         "-> train -> evaluate -> submit. Every stage reads and writes files under --workdir "
         "(default ./leap-work).",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
err_console = output_console(stderr=True)
_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"leap {__version__}{source_revision()}")
        raise typer.Exit()


def source_revision() -> str:
    """`` (git COMMIT, YYYY-MM-DD HH:MM UTC)`` of the git checkout leap runs from (the docs name the changes of
    file formats by their time: "a leap before 2026-12-04 14:53 UTC"), with ``, changed`` when its ``leap_cli/``
    differs from the commit (an untracked file too); "" for an installed package, or where git cannot say."""
    import subprocess
    from pathlib import Path

    top = Path(__file__).resolve().parent.parent
    if not (top / ".git").exists():
        return ""
    # (this checkout's, not a GIT_DIR's of the environment, as in a git hook; a shared install another user owns
    # is no "dubious ownership" to leap)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")} | {"TZ": "UTC"}
    git = ["git", "--no-optional-locks", "-c", f"safe.directory={top}", "-C", str(top)]  # (no index.lock taken)
    try:
        head = subprocess.run([*git, "log", "-1", "--format=%h %cd", "--date=format-local:%Y-%m-%d %H:%M"],
                              capture_output=True, text=True, timeout=5, env=env)
        dirty = subprocess.run([*git, "status", "--porcelain", "--", "leap_cli"], capture_output=True, text=True,
                               timeout=5, env=env)
    except (OSError, subprocess.SubprocessError):
        return ""
    commit, _, date = head.stdout.strip().partition(" ")
    if head.returncode or not commit or not date:
        return ""
    return f" (git {commit}, {date} UTC{', changed' if dirty.returncode == 0 and dirty.stdout.strip() else ''})"


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks and debug logging."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what each stage does (before the command: leap -v extract ...)."),
) -> None:
    from leap_cli.common import WORKDIRS

    _state["debug"] = debug
    _state["command"] = ctx.invoked_subcommand
    _note_options(ctx)
    WORKDIRS.clear()  # this command's --workdir is recorded as its options are read, after this
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", handlers=[_StderrHandler()])


class _StderrHandler(logging.StreamHandler):
    """A StreamHandler on ``sys.stderr`` as it is when a record is written, not when the handler was made: a stage's
    progress bar takes stderr over while it draws (rich's redirect), and a warning written to the stream from
    before was glued onto the bar's line."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # (StreamHandler sets it; the property always answers sys.stderr)
        pass


def _note_options(ctx: typer.Context) -> None:
    """The command's options by their parameters' names (``io.COMMAND_OPTIONS``: a settings refusal says them)."""
    from leap_cli.io import COMMAND_OPTIONS

    COMMAND_OPTIONS.clear()
    ctx.call_on_close(COMMAND_OPTIONS.clear)  # (not left to a later call in the same process)
    command = ctx.command.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
    for p in getattr(command, "params", ()):
        longs = [o for o in getattr(p, "opts", ()) if o.startswith("--")]
        if p.param_type_name == "option" and p.name and longs:
            COMMAND_OPTIONS[p.name] = longs[0]


def _register() -> None:
    # Pipeline order; each module adds its command(s) to ``app``.
    from leap_cli.commands import ablate, data, demo, evaluate, extract, programs, shards, show, submit, train

    for module in (data, extract, programs, shards, train, evaluate, submit, show, demo, ablate):
        module.register(app)


# One line each in `leap --help` (each command's own --help has the full text).
SHORT_HELP = {
    "demo-data": "Build the synthetic kitchen (EPIC layout, sound, truth).",
    "info": "Summarise a dataset root: splits, classes, videos.",
    "extract": "Describe every segment: five descriptors + clip text.",
    "generate-programs": "One action program per segment (LLM or offline).",
    "validate-programs": "Check programs: errors, coverage, distributions.",
    "build-shards": "Pack frames, labels and program targets into shards.",
    "check-shards": "Verify shards against their manifest.",
    "train": "Train UniFormerV2 with action-program heads.",
    "evaluate": "Score a run or a scores file with EPIC's metrics.",
    "submit": "Write or check the official challenge zip.",
    "show": "A segment's program and descriptors (--html page).",
    "demo": "The whole pipeline on the synthetic kitchen.",
    "ablate": "Program-supervision ablation table on the kitchen.",
}


# One example per command, shown at the end of its --help (README has the whole pipeline).
EXAMPLES = {
    "demo-data": "leap demo-data --workdir leap-work --videos 8",
    "info": "leap info --data /data/epic",
    "extract": "leap extract --split train --workers 2    (EPIC on disk: add --data /data/epic)",
    "generate-programs": "leap generate-programs --split train    (an LLM: --backend openai --model gpt-4o-mini "
                         "--concurrency 32 --max-cost 50)",
    "validate-programs": "leap validate-programs --split train --html programs.html",
    "build-shards": "leap build-shards --split train --workers 2",
    "check-shards": "leap check-shards --split train",
    "train": "leap train --config tiny-synthetic    (after a stop: the same command with --resume)",
    "evaluate": "leap evaluate --split val --run tiny-synthetic",
    "submit": "leap submit --scores leap-work/runs/tiny-synthetic/eval/test/scores.pt --sls-pt 0 --sls-tl 4 "
              "--sls-td 3",
    "show": "leap show P01_01_0 --html page.html",
    "demo": "leap demo --workdir leap-work",
    "ablate": "leap ablate --workdir leap-work/ablation",
}


def _short_help() -> None:
    for info in app.registered_commands:
        if info.name in SHORT_HELP and not info.short_help:
            info.short_help = SHORT_HELP[info.name]
        if info.name in EXAMPLES and not info.epilog:
            info.epilog = f"Example: {EXAMPLES[info.name]}"


def _flags_without_a_type() -> None:
    """typer's help lists a flag as ``--force <bool>``, as if it took a value (``--force true`` is refused)."""
    from typer import core

    shown = getattr(core.TyperOption, "display_type_rich", None)
    if shown is None:  # another typer: its own help
        return

    def display_type_rich(self, ctx):
        return None if self.is_flag else shown(self, ctx)

    core.TyperOption.display_type_rich = display_type_rich


# Options that take a path or a word (typed str): --checkpoint (best, last or a file), --frame-cache (none, or a
# folder), --config (a bundled config's name, or a file)
PATH_WORDS = {"checkpoint", "frame_cache", "config"}


def _paths_through_missing_folders() -> None:
    """Every path a command is given, ``x/../w`` with no folder x taken as ``w`` (``common.missing_parents_out``):
    the system reaches nothing through a missing folder, so a ``--workdir`` or ``--out`` given so looked empty
    (generate-programs made every program again over the finished ones)."""
    import functools
    from pathlib import Path

    from leap_cli.common import missing_parents_out

    def fixed(value, name: str = ""):
        if isinstance(value, Path):
            return missing_parents_out(value)
        if isinstance(value, str) and name in PATH_WORDS:  # (a path or a word: best, last, none, a config's name)
            return str(missing_parents_out(Path(value))) if ".." in Path(value).parts else value
        if isinstance(value, (list, tuple)) and any(isinstance(v, Path) for v in value):
            return type(value)(missing_parents_out(v) if isinstance(v, Path) else v for v in value)
        return value

    for info in app.registered_commands:
        if info.callback is None:
            continue

        def wrapped(*args, _command=info.callback, **kwargs):
            return _command(*map(fixed, args), **{k: fixed(v, k) for k, v in kwargs.items()})

        info.callback = functools.wraps(info.callback)(wrapped)


_register()
_short_help()
_flags_without_a_type()
_paths_through_missing_folders()


# What a stopped command leaves behind: the stages keep their finished records and resume; these keep nothing.
_KEPT = {"evaluate": "the evaluation starts over when run again",
         "submit": "nothing was written", "validate-programs": "a report is written whole: one printed above is complete, the others were not written",
         "check-shards": "nothing was written; the check starts over when run again",
         "show": "nothing was written", "info": "nothing was written",
         "train": "checkpoints/last.pt holds the last checkpoint saved (every train.checkpoint_every steps, else at "
                  "each epoch's end); continue with the same command and --resume (a run stopped before it "
                  "started, with no runs/NAME/config.yaml, left nothing: the same command without --resume)"}


GLOBAL_OPTIONS = ("-v", "--verbose", "--debug")  # leap's own, before the command (the app's callback)


def _other_rank() -> int | None:
    """Under torchrun (``leap train`` on several processes): this process's rank when it is not rank 0."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return None
    return rank if world > 1 and rank > 0 else None


def _again(plain: str = "the same command") -> str:
    from leap_cli.common import rerun

    return rerun(plain, _state.get("command"))


def _interrupted() -> None:
    for again in (signal.SIGTERM, signal.SIGINT, _SIGHUP):  # (the stop is said: another, or one sent again as an
        if again is not None:  # import ended, would raise in the saying; main ignores them from here on anyway)
            signal.signal(again, signal.SIG_IGN)
    kept = _KEPT.get(_state.get("command"), f"finished records were kept; run {_again()} to resume") \
        if _state.get("command") else NOTHING_STARTED
    stop = _state.get("stop_signal")  # SIGTERM or SIGHUP (None: Ctrl-C)
    if _other_rank() is not None:  # rank 0 says it once for the job
        sys.exit(128 + stop if stop else EXIT_INTERRUPTED)
    if stop:
        hung_up = " (the terminal closed: run long jobs under nohup, tmux or screen)" if stop == _SIGHUP else ""
        err_console.print(f"[yellow]stopped by {signal.Signals(stop).name}[/]{hung_up}: {kept}")
        sys.exit(128 + stop)
    err_console.print(f"[yellow]interrupted[/]: {kept}")
    sys.exit(EXIT_INTERRUPTED)


_SIGHUP = getattr(signal, "SIGHUP", None)  # (not on Windows)


def _on_sigterm(signum, frame) -> None:
    """SIGTERM (Slurm's preemption, scancel, kill) and SIGHUP (the terminal of a job not run under nohup, tmux
    or screen closed: a dropped ssh session) stop a stage as Ctrl-C does: what is finished is kept, the output
    closed, the ledger of --max-cost written. (``leap train`` sets its own while it trains: it saves last.pt
    first.) A forked worker that inherited this handler dies as by default (Pool.terminate sends SIGTERM)."""
    if os.getpid() != _state["pid"]:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _state["stop_signal"] = signum
    now = time.monotonic()
    if _module_loading() and now < _state.setdefault("deferred_since", now) + DEFER_STOPS:  # (taken a moment
        import threading  # later, once the module is loaded)

        timer = threading.Timer(0.05, os.kill, (os.getpid(), signum))
        timer.daemon = True
        timer.start()
        return
    _state.pop("deferred_since", None)
    on_int = signal.getsignal(signal.SIGINT)
    if callable(on_int):  # Python's (KeyboardInterrupt), or asyncio's, which cancels the stage's main task
        on_int(signal.SIGINT, frame)
    else:  # SIGINT ignored (a background job of a script): stop all the same
        raise KeyboardInterrupt


# Seconds a stop waits at most for the imports under way (an import that hangs: the stop is taken all the same).
DEFER_STOPS = 10.0


def _module_loading() -> bool:
    """Whether a module is being imported: a compiled module's start-up runs Python code, and a stop's
    KeyboardInterrupt raised there ended the process in C++'s terminate (torch: "terminate called after throwing an
    instance of 'pybind11::error_already_set'", SIGABRT, exit 134 for a SIGTERM: 3 in ~430 SIGTERMs to evaluate as
    it began) or became the module's own error (scipy's HiGHS: "ImportError: initialization failed", a traceback and
    exit 1 for a SIGHUP to `leap demo-data` 0.9 s in). A module being imported is marked as it runs (its
    package's while a compiled module inside it starts)."""
    return any(getattr(getattr(module, "__spec__", None), "_initializing", False)
               for module in list(sys.modules.values()))


def _from_a_stop(e: BaseException) -> bool:
    """Whether ``e`` was raised by, or while handling, a stop's KeyboardInterrupt: a compiled module that met the
    stop as it started turns it into its own error (pybind11's "ImportError: initialization failed", raised from
    the KeyboardInterrupt; also a Ctrl-C's, which Python's own handler raises). It is said as the stop."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def _said_as_the_stop(e: BaseException) -> None:
    """An error ``_from_a_stop`` ends the command as that stop (its line and status); with --debug its traceback
    first (a fault in a stage's clean-up after a stop is otherwise said as the stop alone)."""
    if _from_a_stop(e):
        if _state["debug"]:
            traceback.print_exc()
        _interrupted()


# How many times a dropped stop is sent again at most (each is sent again once; one dropped again sends it again).
_REDELIVER = 20


def _redeliver_dropped_stops() -> None:
    """A stop (Ctrl-C; SIGTERM or SIGHUP, which ``_on_sigterm`` makes a KeyboardInterrupt) whose KeyboardInterrupt
    came where Python cannot raise it (an at-fork callback as a loader forks its DataLoader workers: logging's) was
    dropped ("Exception ignored in ... KeyboardInterrupt"), and the stage went on to its end and exited 0. From now
    on, in this process, such a stop is sent again a moment later, to stop the stage where its main thread is then
    (``sys.unraisablehook``; once per process)."""
    import threading

    before = sys.unraisablehook
    if getattr(before, "leap_redelivers", False):
        return

    def hook(unraisable) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt) or os.getpid() != _state.get("pid") or \
                _state.get("redelivered", 0) >= _REDELIVER:
            before(unraisable)
            return
        _state["redelivered"] = _state.get("redelivered", 0) + 1
        timer = threading.Timer(0.05, os.kill, (os.getpid(), _state.get("stop_signal") or signal.SIGINT))
        timer.daemon = True
        timer.start()

    hook.leap_redelivers = True
    sys.unraisablehook = hook


def _print_error(text: str) -> None:
    # under torchrun every rank meets the same bad input: the other ranks' lines say whose they are
    rank = _other_rank()
    where = f"[rank {rank}] " if rank is not None else ""
    line = printable(redact(where + text), one_line=True)
    try:
        err_console.print(f"[bold red]error:[/] {line}", highlight=False, soft_wrap=True)
    except (MemoryError, ImportError, OSError):  # (out of memory: rich's own lazy imports fail too)
        sys.stderr.write(f"error: {line}\n")


_OS_FIX = {  # ("the output options": --workdir, --out, or validate-programs' --report; {again}: _again())
    errno.ENOSPC: "free space on that file system or point the output options elsewhere, then run {again} "
                  "(the stages that resume keep their finished work)",
    errno.EDQUOT: "free space within your quota or point the output options elsewhere, then run {again} "
                  "(the stages that resume keep their finished work)",
    errno.EFBIG: "the file outgrew a file-size limit (ulimit -f, a job scheduler's) or the file system's: lift it or "
                 "point the output options at another file system, then run {again}",
    errno.EROFS: "the file system is read-only: point the output options (--workdir, --out, --report) at a writable "
                 "folder",
    errno.EACCES: "check the permissions of that path or point the output options at a folder you can write",
    errno.EPERM: "check the permissions of that path or point the output options at a folder you can write",
    errno.ENOENT: "check the path given to the option that names it",
    errno.EISDIR: "that path is a folder: give the path of a file",
    errno.ENOTDIR: "part of that path is a file where a folder is needed: give a folder",
    errno.EEXIST: "a file is in the way where a folder is needed: give another path or move that file",
    errno.EMFILE: "the process reached its limit of open files, which leap had raised to the hard limit (at most "
                  f"65536): {RAISE_OPEN_FILES}, or use fewer --workers / data.num_workers, then run {{again}}",
    errno.ENFILE: "the system's table of open files is full: close other programs or ask the machine's admin, then "
                  "run {again}",
    errno.EAGAIN: "the system refused a new process or thread: your user's limit of processes (ulimit -u counts "
                  "every process and thread) or the system's is reached: use fewer --workers (or data.num_workers), "
                  "or raise the limit (ulimit -u), then run {again}",
    errno.ENAMETOOLONG: "a name in that path is too long (leap writes a temporary file and a .settings.json beside "
                        "an output: keep its name under ~200 bytes)",
}


def _dangling(path: str) -> bool:
    """Whether ``path`` is a symbolic link whose target is missing (mkdir says "File exists" there)."""
    try:
        return os.path.islink(path) and not os.path.exists(path)
    except (OSError, ValueError, TypeError):
        return False


def os_error_line(e: OSError) -> str:
    """One line for an OSError: the path, what the system said, and what to do."""
    where = "" if e.filename is None else f"{e.filename}: "
    if e.filename2 is not None:
        where = f"{e.filename} -> {e.filename2}: "
    reason = e.strerror or os.strerror(e.errno)
    fix = _OS_FIX.get(e.errno, "check that path and run {again}").format(again=_again("the same command again"))
    if e.errno == errno.EEXIST and e.filename is not None and _dangling(e.filename):  # (a purged scratch folder)
        reason = f"a symbolic link to {os.readlink(e.filename)}, which does not exist"
        fix = "make that folder, or remove the link or point it elsewhere"
    return f"{where}{reason} ({fix})"


def expand_home(args: list[str]) -> list[str]:
    """``~`` at the start of an argument or of an option's value after ``=`` (``--workdir=~/x``, which the shell
    leaves as it is) as the user's home: it made a folder named ``~`` in the current one."""
    out = []
    for a in args:
        if a.startswith("~"):
            a = os.path.expanduser(a)
        elif a.startswith("--") and "=~" in a:
            name, value = a.split("=", 1)
            a = f"{name}={os.path.expanduser(value)}" if value.startswith("~") else a
        out.append(a)
    return out


# options typed as text that name a path (or a run) all the same: empty, refused as a Path option is (the frame
# cache went to its default, a run took the config's name, without a word)
STRING_PATHS = {"--frame-cache": "path", "--checkpoint": "path", "--name": "name", "--html": "path"}


def empty_path_option(args: list[str]) -> None:
    """A path option given an empty value (``--workdir "$WORK"`` with ``WORK`` unset) is refused: as a path it is
    the current folder, where a job would have written a work directory of its own without a word."""
    import inspect
    import typing
    from pathlib import Path

    command = next((a for a in args if not a.startswith("-")), None)
    info = next((c for c in app.registered_commands if c.name == command and c.callback is not None), None)
    if info is None:
        return
    try:
        hints = typing.get_type_hints(info.callback)
    except (NameError, TypeError):  # (an annotation that does not resolve here: typer's own parsing decides)
        return
    names = {d: p.default.default for p in inspect.signature(info.callback).parameters.values()
             if isinstance(p.default, typer.models.OptionInfo)
             and (hints.get(p.name) in (Path, Path | None, list[Path], list[Path] | None)
                  or set(p.default.param_decls or ()) & STRING_PATHS.keys())
             for d in (p.default.param_decls or ()) if d.startswith("-")}
    for i, a in enumerate(args):
        if a == "--":  # (what follows is no option)
            break
        name, eq, value = a.partition("=") if a.startswith("--") else (a, "", "")  # (-c takes no "=")
        if name in names and (value.strip() == "" if eq else i + 1 < len(args) and args[i + 1].strip() == ""):
            what = STRING_PATHS.get(name, "path")
            raise LeapError(f"{name} is empty (an unset variable in a job script?)" + (
                                ": as a path it would be the current folder" if what == "path" else ""),
                            fix=f"give {name} a {what}" + (
                                ": it is required" if names[name] is ... else ", or leave it out" if names[name] is None
                                else ", or leave it out for its default"))


def main() -> None:
    try:
        _main()
    finally:
        # The command is done, its status set, whichever way it ended: a SIGTERM while the process exits (its
        # atexit callbacks, then the interpreter's teardown, where Python puts the default handler back) would
        # print a traceback or end it with 143 (a requeue script took a finished job for a stopped one); a second
        # Ctrl-C right after the first, as the stopped command exits, ended it by SIGINT instead of its 130
        for stop in (signal.SIGTERM, signal.SIGINT, _SIGHUP):
            if stop is not None:
                signal.signal(stop, signal.SIG_IGN)
        # A KeyboardInterrupt (a SIGTERM's too) that left code run from a string (exec: a dataclass's generated
        # methods as a module is imported), caught or not, is marked by CPython, and `python -m leap_cli` (torchrun's
        # and the demo's way) then ends by SIGINT whatever the status (a SIGTERM at start-up: 130, not 143). Code
        # run from a string clears the mark as it starts (run_eval_code_obj): the status set above stands.
        exec("pass")


class ReaderSafeStdout:
    """``sys.stdout`` (or ``sys.stderr``) that outlives its reader: `leap evaluate --split val | head -1` closed the
    pipe at the first line, and the next print stopped the stage half-way (exit 1, metrics.json never written);
    `leap extract ... 2>&1 | head -2` stopped at its next progress line. Once the reader is gone, what is written
    there goes to /dev/null (the file descriptor itself, so the other writers to it too) and the stage runs to its
    end; so it does where the terminal went away (a hung-up ssh session: EIO)."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self.reader_gone = False

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as e:
            self._gone(e)
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as e:
            self._gone(e)

    def _gone(self, e: OSError) -> None:
        if e.errno not in (errno.EPIPE, errno.EIO):  # (EIO: the terminal of a hung-up session is gone)
            raise e
        if not self.reader_gone:  # the file descriptor itself to /dev/null: what is buffered goes there too
            self.reader_gone = True
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self._stream.fileno())
            finally:
                os.close(devnull)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _quiet_teardown() -> None:
    """After the line for a limit of open files or processes: objects the limit left half-built (torch's DataLoader
    iterator, whose workers could not start) fail again in their ``__del__`` as the process ends, each an "Exception
    ignored in ..." traceback under the line that said it all. Such AttributeErrors and OSErrors are dropped; any
    other goes to the usual hook."""
    from leap_cli.common import quiet_unraisable

    quiet_unraisable(AttributeError, OSError)


def raise_open_files_limit(most: int = 65536) -> None:
    """The process's soft limit of open files raised to its hard limit (at most ``most``), as a shell's
    ``ulimit -n`` could: DataLoader workers pass each tensor of a batch as an open file, and a cluster's usual soft
    limit of 1024 is within reach of EPIC's settings (8-16 workers, 16 open shards each). Beyond the hard limit
    only the machine's admin can go: what reaching it says is ``os_error_line``'s."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = most if hard == resource.RLIM_INFINITY else min(hard, most)
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ImportError, ValueError, OSError):  # (no resource module, or a limit the system does not let raise)
        pass


def _main() -> None:
    _state["pid"] = os.getpid()
    _state.pop("command", None)  # (set once the command line is read)
    _state.pop("stop_signal", None)
    _state.pop("redelivered", None)
    _state.pop("deferred_since", None)
    signal.signal(signal.SIGTERM, _on_sigterm)
    _redeliver_dropped_stops()
    if _SIGHUP is not None and signal.getsignal(_SIGHUP) is not signal.SIG_IGN:  # (nohup's: left as it is)
        signal.signal(_SIGHUP, _on_sigterm)
    raise_open_files_limit()
    if not isinstance(sys.stdout, ReaderSafeStdout) and hasattr(sys.stdout, "fileno"):
        with contextlib.suppress(AttributeError, ValueError):  # an ASCII stdout (PYTHONIOENCODING=ascii, a job's
            sys.stdout.reconfigure(errors="backslashreplace")  # environment) writes a path's é as \xe9, as stderr does
        sys.stdout = ReaderSafeStdout(sys.stdout)
    if not isinstance(sys.stderr, ReaderSafeStdout) and hasattr(sys.stderr, "fileno"):
        sys.stderr = ReaderSafeStdout(sys.stderr)  # (logging, rich's consoles and the progress write to it then)
    try:
        sys.argv[1:] = expand_home(sys.argv[1:])
        empty_path_option(sys.argv[1:])
        if len(sys.argv) == 1 or {"-h", "--help"} & set(sys.argv[1:]):
            _fold_help_tables()
        # Without standalone mode typer returns what click would have exited with: typer.Exit's code, or 130
        # after Ctrl-C (it catches the KeyboardInterrupt itself).
        code = app(standalone_mode=False)
        if code == EXIT_INTERRUPTED:
            _interrupted()
        if isinstance(code, int) and code:
            sys.exit(code)
    except LeapError as e:
        if _state["debug"]:  # the traceback, and still a user error's status (scripts test it)
            traceback.print_exc()
        from leap_cli.common import missing_workdir

        workdir = missing_workdir(e)
        _print_error((f"{workdir}: no such work directory (check --workdir, or run from the folder that holds it); "
                      if workdir is not None else "") + e.one_line())
        sys.exit(EXIT_USER_ERROR)
    except OSError as e:
        # A read-only work dir, a full disk, a quota: the user's to fix, so one line naming the path.
        if e.errno is None:
            raise
        if e.errno == errno.EPIPE:  # `leap ... | head` closed the pipe: nothing to report
            sys.exit(1)
        if _state["debug"]:
            traceback.print_exc()
        from leap_cli.common import out_of_memory

        memory = out_of_memory(e)
        _print_error(memory.one_line() if memory is not None else os_error_line(e))
        if e.errno in (errno.EMFILE, errno.ENFILE, errno.EAGAIN):
            _quiet_teardown()
        sys.exit(EXIT_USER_ERROR)
    except (MemoryError, ImportError) as e:  # (under a cap on the address space: ulimit -v, as login nodes set)
        from leap_cli.common import out_of_memory

        said = out_of_memory(e)
        if said is None:
            _said_as_the_stop(e)
            raise
        if _state["debug"]:
            traceback.print_exc()
        _print_error(said.one_line())
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        _interrupted()
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort as e:
        if isinstance(e.__cause__, EOFError):  # click's Abort for an EOFError in the command (pickle.load of a
            # cut file), not a prompt's: a fault as any other, its traceback said (it ended with a blank line)
            traceback.print_exception(e.__cause__)
        sys.exit(1)
    except Exception as e:
        if isinstance(e, RuntimeError) and str(e) == "can't start new thread":  # (threading's EAGAIN, as a pool's)
            if _state["debug"]:
                traceback.print_exc()
            _print_error(f"cannot start a thread ({_OS_FIX[errno.EAGAIN].format(again=_again('the same command again'))})")
            _quiet_teardown()
            sys.exit(EXIT_USER_ERROR)
        # click's usage errors (typer ships its own copy of click, so match them by shape, not by class)
        if type(e).__name__ == "NoArgsIsHelpError":  # `leap` alone: the help was printed, and nothing was done:
            sys.exit(e.exit_code)  # click's usage status, without the empty error line it added
        if hasattr(e, "show") and isinstance(getattr(e, "exit_code", None), int):
            # one line, as every other error (click prints the usage, a hint and the error on four lines)
            ctx = getattr(e, "ctx", None)
            where = f" (see `{ctx.command_path} --help`)" if getattr(ctx, "command_path", None) else ""
            option = getattr(e, "option_name", None)
            if option in GLOBAL_OPTIONS and getattr(ctx, "parent", None) is not None:  # `leap info -v`
                where = (f" ({option} is leap's own: give it before the command, "
                         f"`{ctx.parent.command_path} {option} {ctx.info_name} ...`)")
            _print_error(f"{e.format_message()}{where}")
            sys.exit(e.exit_code)
        _said_as_the_stop(e)
        raise
