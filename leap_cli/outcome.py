"""How a stage ends: failures counted by cause, and the exit status of the stages that write records (extract,
generate-programs, build-shards; validate-programs and check-shards have their own: docs/options.md, "Exit status").

A stage counts the records it attempted and, for each failed record, its cause (a short, path-free text such
as ``"camera: ZeroDivisionError"``). The exit status follows one rule:

- 0: every record succeeded, or some failed (they are listed, the job went on);
- ``EXIT_ALL_FAILED`` (3): every record attempted in this run failed, or any failed under ``--strict``.

Usage in a stage command::

    outcome = Outcome("extract")
    for record in ...:
        outcome.attempt()                # one per record tried in this run
        if failed: outcome.fail(cause)   # counted by cause
    print_lines(outcome.lines())         # "3 of 10 records failed: camera: ZeroDivisionError (3)"
    outcome.exit(strict)                 # sys.exit(3) when the rule says so, else returns
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field

EXIT_ALL_FAILED = 3


@dataclass
class Outcome:
    stage: str
    attempted: int = 0
    failed: int = 0
    causes: Counter = field(default_factory=Counter)

    def attempt(self, n: int = 1) -> None:
        self.attempted += n

    def fail(self, cause: str) -> None:
        """One failed record (call once per record; a record with several causes counts under its first)."""
        self.failed += 1
        self.causes[cause] += 1

    @property
    def all_failed(self) -> bool:
        return self.attempted > 0 and self.failed == self.attempted

    def exit_code(self, strict: bool = False) -> int:
        if self.all_failed or (strict and self.failed):
            return EXIT_ALL_FAILED
        return 0

    def lines(self, limit: int = 10) -> list[str]:
        """The failure summary (empty when nothing failed): a count line, then the causes, most frequent first."""
        if not self.failed:
            return []
        head = (f"{self.stage}: the only record failed" if self.all_failed and self.attempted == 1
                else f"{self.stage}: all {self.attempted} records failed" if self.all_failed
                else f"{self.stage}: {self.failed} of {self.attempted} records failed")
        out = [head + " (by cause):"]
        for cause, n in self.causes.most_common(limit):
            out.append(f"  {n} x {cause}")
        if len(self.causes) > limit:
            out.append(f"  ... and {len(self.causes) - limit} more causes")
        return out

    def exit(self, strict: bool = False) -> None:
        """``sys.exit`` with the stage's status when it is not 0 (SystemExit passes through click)."""
        code = self.exit_code(strict)
        if code:
            sys.exit(code)
