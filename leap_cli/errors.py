"""The one user-facing error type: a message that names the file, the record and the fix."""

from __future__ import annotations

from pathlib import Path

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class LeapError(Exception):
    """An error the user can fix. The CLI prints it as one red line and exits with code 2.

    ``path`` is the file involved, ``record`` the row/key/segment inside it, ``fix`` what to do.
    """

    def __init__(self, message: str, *, path: str | Path | None = None, record: str | None = None,
                 fix: str | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.record = record
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = ""
        if self.path and self.record:
            where = f"{self.path} [{self.record}]: "
        elif self.path:
            where = f"{self.path}: "
        elif self.record:
            where = f"[{self.record}]: "
        text = f"{where}{self.message}"
        if self.fix:
            text += f" ({self.fix})"
        return text.replace("\n", " ")
