"""The ``leap`` command's entry point (and ``python -m leap_cli``'s). Loading the CLI takes a moment (typer, rich,
and what the commands import); a stop then, before ``cli.main`` sets the stage's handlers, printed Python's
KeyboardInterrupt traceback (Ctrl-C) or ended the process without a word (SIGTERM, SIGHUP). It is said in one line,
with the stage's exit codes (130, 143, 129): nothing had started. This module imports nothing heavy, so the
handlers are set first."""

from __future__ import annotations

import os
import signal

NOTHING_STARTED = "the command had not started: nothing was written"


def _stopped_while_loading(signum, frame) -> None:
    said = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    os.write(2, f"{said}: {NOTHING_STARTED}\n".encode())
    os._exit(128 + signum)  # (a module half imported: nothing to tidy, and its clean-up could wait)


def main() -> None:
    before = {}
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)  # (no SIGHUP on Windows)
        if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:  # (nohup's, a background job's: kept)
            before[sig] = signal.signal(sig, _stopped_while_loading)
    from leap_cli import cli

    for sig, handler in before.items():  # (cli sets its own for the stage)
        signal.signal(sig, handler)
    cli.main()
