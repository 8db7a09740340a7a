"""Verb and noun class vocabularies (``id,key,instances,category``) with a synonym resolver."""

from __future__ import annotations

import ast
import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from leap_cli.errors import LeapError
from leap_cli.io import read_utf8

CLASS_COLUMNS = ("id", "key", "instances", "category")


_INT_LIST = re.compile(r"\[\s*(?:-?\d+\s*(?:,\s*-?\d+\s*)*)?\]")
_STR_LIST = re.compile(r"\[\s*(?:'[^'\\]*'\s*(?:,\s*'[^'\\]*'\s*)*)?\]")
_STR_ITEM = re.compile(r"'([^'\\]*)'")


def parse_list_cell(text: str, *, path: str | Path | None = None, record: str | None = None) -> list:
    """Parse a Python-literal list cell such as ``['plate', 'veg:mixed']`` or ``[2, 10]`` without eval. The two
    shapes EPIC's CSVs hold are read by a pattern (``ast.literal_eval`` compiles each cell: ~40% of reading a
    67k-row CSV); any other literal by ``ast``."""
    text = (text or "").strip()
    if not text:
        return []
    if _INT_LIST.fullmatch(text):
        inner = text[1:-1].strip()
        return [int(x) for x in inner.split(",")] if inner else []
    if _STR_LIST.fullmatch(text):
        return _STR_ITEM.findall(text)
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise LeapError(f"cannot parse list {text[:60]!r}", path=path, record=record,
                        fix="the cell must be a list literal such as ['plate'] or [2]") from None
    if not isinstance(value, (list, tuple)):
        raise LeapError(f"expected a list, got {text[:60]!r}", path=path, record=record)
    return list(value)


def normalize_form(text: str) -> str:
    """Surface forms are compared lower-case with spaces and underscores as hyphens: 'pick up' == 'pick-up'."""
    return text.strip().lower().replace("_", "-").replace(" ", "-")


@dataclass
class ClassVocab:
    """One EPIC class file: ids, keys, categories and every instance (synonym) of each class."""

    kind: str  # "verb" or "noun"
    keys: dict[int, str]
    instances: dict[int, list[str]]
    categories: dict[int, str]
    _forms: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        forms: dict[str, int] = {}
        for cid, insts in self.instances.items():
            for form in [self.keys[cid], *insts]:
                forms.setdefault(normalize_form(form), cid)
        # A noun given as 'mixed veg' or 'veg mixed' finds 'veg:mixed' (a bare head noun, 'veg', does not: it
        # may head several keys; programs.vocab tries a name's last word on its own).
        for form, cid in list(forms.items()):
            if ":" in form:
                parts = form.split(":")
                forms.setdefault("-".join(parts), cid)
                forms.setdefault("-".join(reversed(parts)), cid)
        self._forms = forms

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def ids(self) -> list[int]:
        return sorted(self.keys)

    def key(self, class_id: int) -> str:
        try:
            return self.keys[class_id]
        except KeyError:
            raise LeapError(f"unknown {self.kind} class id {class_id}", fix=f"ids run from 0 to {max(self.keys)}") from None

    def resolve(self, form: str) -> int | None:
        """Class id of any surface form (key or instance), or None."""
        return self._forms.get(normalize_form(form))

    def resolve_or_raise(self, form: str, *, path=None, record=None) -> int:
        cid = self.resolve(form)
        if cid is None:
            raise LeapError(f"{self.kind} {form!r} is not in the {self.kind} classes", path=path, record=record,
                            fix=f"use one of the keys or instances of EPIC_100_{self.kind}_classes.csv")
        return cid

    def forms(self) -> dict[str, int]:
        return dict(self._forms)

    @classmethod
    def from_csv(cls, path: str | Path, kind: str) -> "ClassVocab":
        path = Path(path)
        rows = read_csv(path, CLASS_COLUMNS)
        keys, instances, categories = {}, {}, {}
        for i, row in rows.numbered():
            try:
                cid = int(row["id"])
            except (ValueError, TypeError):
                raise LeapError(f"id {row['id']!r} is not an integer", path=path, record=f"row {i}",
                                fix="the first column holds the class id (0, 1, ...): fix that row or use EPIC's file"
                                ) from None
            keys[cid] = row["key"]
            instances[cid] = [str(x) for x in parse_list_cell(row["instances"], path=path, record=f"row {i}")]
            categories[cid] = row["category"]
        return cls(kind, keys, instances, categories)


def csv_header(path: str | Path) -> list[str]:
    """A CSV's column names (none for a file that is not there or is empty: ``read_csv`` says what is wrong)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return [h.strip() for h in next(csv.reader(f), [])]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def renamed_copy(path: Path) -> Path | None:
    """The file ``path`` names, beside it under a name a browser or a copy gave it ("EPIC_100_train (1).csv",
    "EPIC_100_train.csv.csv", "EPIC_100_train copy.csv", macOS's "EPIC_100_train 2.csv"); None where there is none."""
    near = re.compile(re.escape(path.stem) + r"(\s*\(\d+\)|\s+\d+|[ _-]*copy[ \d]*)?(\.csv)+(\.txt)?", re.I)
    try:
        return next((p for p in sorted(path.parent.iterdir()) if p.name != path.name
                     and p.is_file() and near.fullmatch(p.name)), None)
    except OSError:  # (no such folder)
        return None


class CsvRows(list):
    """``read_csv``'s rows, each a dict, and ``lines``: the line of each in the file, as an editor counts (blank
    lines, which the reader skips, counted too; a row with a line break in a quoted field: its last line)."""

    def __init__(self, rows=(), lines=()):
        super().__init__(rows)
        self.lines = list(lines)

    def numbered(self):
        """(line, row) of each row."""
        return zip(self.lines, self)


def read_csv(path: str | Path, required: tuple[str, ...] | list[str], *, what: str | None = None) -> CsvRows:
    """Read a CSV as dicts, refusing missing columns by name (and suggesting close spellings)."""
    import difflib

    path = Path(path)
    if not path.exists():
        others = path.parent.is_dir() and next(path.parent.glob("EPIC_100_*.csv"), None) is not None
        renamed = renamed_copy(path)
        raise LeapError(f"{what or 'file'} not found", path=path,
                        fix=f"rename {renamed.name} there to {path.name}" if renamed is not None else
                        f"put {path.name} (EPIC's annotations repository) in that folder beside the others"
                        if others else "point --data at the dataset root or --annotations at the folder holding "
                                       "EPIC's CSVs")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, skipinitialspace=True)  # (", " between fields: the values without the space)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                joined = ",".join(header)  # (one column named "narration_id;participant_id;...")
                sep = next((c for c in (";", "\t", "|") if sum(r in joined for r in required) >= 2
                            and all(c in h for h in header if any(r in h for r in required))), None)
                if sep is not None:
                    raise LeapError(f"the header's columns are separated by {sep!r}, not commas", path=path,
                                    record="header", fix="save it as comma-separated CSV (as a spreadsheet saves "
                                                         "\"CSV UTF-8\"), or take EPIC's file again")
                hints = []
                for m in missing:
                    # a misspelling among the columns that are not required ones (start_timestamp is no
                    # misspelt stop_timestamp)
                    close = difflib.get_close_matches(m, [h for h in header if h not in required], n=1)
                    hints.append(f"{m} (found {close[0]!r}?)" if close else m)
                if "verb_class" in missing and "stop_frame" in header and not {
                        "narration", "verb", "verb_class", "noun", "noun_class"} & set(header):
                    # (the test split's timestamps saved under another split's name)
                    raise LeapError("it holds times but no narrations or classes, as EPIC_100_test_timestamps.csv "
                                    "does", path=path, record="header",
                                    fix=f"put EPIC's {path.name} there; the test split's file is read as --split test")
                raise LeapError(f"missing column(s): {', '.join(hints)}", path=path, record="header",
                                fix=f"expected columns {', '.join(required)}")
            reader.fieldnames = header
            rows = CsvRows()
            for row in reader:
                short = [c for c in required if row.get(c) is None]  # absent, not empty: the line ends early
                if short:
                    n = sum(v is not None for k, v in row.items() if k is not None)
                    first = next(iter(row.values()), "") or ""
                    # (a row saved with ';' or tabs under a comma header: its fields are all in the first, or
                    # in the first few where a field holds commas, "['tap', 'water']")
                    line = ",".join([v for k, v in row.items() if k is not None and isinstance(v, str)]
                                    + list(row.get(None) or []))
                    sep = next((c for c in (";", "\t") if line.count(c) >= len(header) - 1), None)
                    raise LeapError(f"row {reader.line_num} ({first}) has {n} of {len(header)} fields "
                                    f"(no {', '.join(short)})" + (f": its fields are separated by {sep!r}, not commas"
                                                                   if sep else ""),
                                    path=path, record=f"row {reader.line_num}",
                                    fix="save the file as comma-separated CSV throughout, or take EPIC's file again"
                                    if sep else "a cut or damaged line: complete it, or restore the file from EPIC's "
                                                "release")
                extra = [v for v in row.get(None) or [] if isinstance(v, str) and v.strip()]
                if extra:  # (a comma in a cell not quoted: every later field shifted by one, and read as the next
                    # column's: a narration "open door, then close" gave its verb class as "then close")
                    first = next(iter(row.values()), "") or ""
                    raise LeapError(f"row {reader.line_num} ({first}) has {len(header) + len(row[None])} fields, the "
                                    f"header {len(header)} (a comma inside a cell that is not quoted?)", path=path,
                                    record=f"row {reader.line_num}",
                                    fix="put that cell in double quotes (\"open door, then close\"), as EPIC's files "
                                        "do, or take EPIC's file again")
                # (a cell's trailing spaces, as a spreadsheet may leave them: "P01_101_0 " matched no id)
                rows.append({k: (v.strip() if isinstance(v, str) else "" if v is None else v) for k, v in row.items()})
                rows.lines.append(reader.line_num)
            return rows
    except UnicodeDecodeError:
        fix = "save it as UTF-8 (a spreadsheet's \"CSV UTF-8\"), or take EPIC's file again"
        read_utf8(path, "the CSV file", fix=fix, unit="row")  # (raises, naming the row)
        raise LeapError("not a UTF-8 CSV file", path=path, fix=fix) from None
