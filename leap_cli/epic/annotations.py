"""EPIC-KITCHENS-100 annotation files: segments of each split, class files, tail/unseen lists, video info."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

from leap_cli.common import counted, dataset_root, normalize_split
from leap_cli.epic.classes import ClassVocab, csv_header, parse_list_cell, read_csv
from leap_cli.epic.timing import parse_timestamp
from leap_cli.errors import LeapError

TEST_COLUMNS = ("narration_id", "participant_id", "video_id", "narration_timestamp", "start_timestamp",
                "stop_timestamp", "start_frame", "stop_frame")
LABELLED_COLUMNS = TEST_COLUMNS + ("narration", "verb", "verb_class", "noun", "noun_class", "all_nouns",
                                   "all_noun_classes")
LABELLED_SPLITS = ("train", "val")
SPLIT_FILES = {"train": "EPIC_100_train.csv", "val": "EPIC_100_validation.csv",
               "test": "EPIC_100_test_timestamps.csv"}
VERB_CLASSES = "EPIC_100_verb_classes.csv"
NOUN_CLASSES = "EPIC_100_noun_classes.csv"
TAIL_VERBS = "EPIC_100_tail_verbs.csv"
TAIL_NOUNS = "EPIC_100_tail_nouns.csv"
UNSEEN = {"val": "EPIC_100_unseen_participant_ids_validation.csv", "test": "EPIC_100_unseen_participant_ids_test.csv"}
VIDEO_INFO = "EPIC_100_video_info.csv"


@dataclass(frozen=True)
class Segment:
    """One annotated action segment. Labels are None on the test split."""

    narration_id: str
    participant_id: str
    video_id: str
    start: float  # seconds
    stop: float  # seconds
    start_frame: int  # 1-based, as in EPIC's files
    stop_frame: int
    narration_timestamp: float | None = None  # empty in some real rows
    narration: str | None = None
    verb: str | None = None
    verb_class: int | None = None
    noun: str | None = None
    noun_class: int | None = None
    all_nouns: tuple[str, ...] = field(default_factory=tuple)
    all_noun_classes: tuple[int, ...] = field(default_factory=tuple)

    @property
    def duration(self) -> float:
        return self.stop - self.start

    @property
    def has_labels(self) -> bool:
        return self.verb_class is not None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["all_nouns"] = list(self.all_nouns)
        d["all_noun_classes"] = list(self.all_noun_classes)
        return d

    def annotation(self) -> dict | None:
        """What a record made from this segment holds of its annotation (extract's narration component's data,
        ``annotation_hash``): narration, verb, nouns and their classes; None on the test split, which has none."""
        if not self.narration and self.verb is None:
            return None
        return {"narration": self.narration, "verb": self.verb, "verb_class": self.verb_class, "noun": self.noun,
                "noun_class": self.noun_class, "all_nouns": list(self.all_nouns),
                "all_noun_classes": list(self.all_noun_classes)}

    @property
    def annotation_hash(self) -> str:
        """A hash of ``annotation()``, kept in each descriptor record: whatever components a record has (the hands
        name what they touch from the narration's nouns), a change of the annotation is seen."""
        from leap_cli.io import stable_hash

        return stable_hash(self.annotation())[:16]


def _same_time(held, seconds: float) -> bool:
    """Whether a record's time is ``seconds`` as extract writes it (rounded to the millisecond)."""
    return isinstance(held, (int, float)) and abs(held - seconds) < 5e-4


def made_from_other_annotations(record: dict, seg: Segment) -> str | None:
    """What differs between a descriptor record and the segment it is for now, None when it is still that segment's:
    its video, start or stop (seconds, to the millisecond extract rounds them to), its frame columns (which an
    ``rgb_frames`` folder is read by), or its annotation (``annotation_hash``; in a record of a leap before
    2026-12-03, which kept neither, its narration component's data). A field the record lacks is not compared. Such
    a record was made from another version of the split CSV (or another data set's with these narration ids): its
    frames or its text are another segment's."""
    if "video_id" in record and record["video_id"] != seg.video_id:
        return "its video"
    if any(k in record and not _same_time(record[k], getattr(seg, k)) for k in ("start", "stop")):
        return "its start or stop"
    if any(k in record and record[k] != int(getattr(seg, k)) for k in ("start_frame", "stop_frame")):
        return "its frame columns"
    if "annotation_hash" in record:
        return None if record["annotation_hash"] == seg.annotation_hash else "its narration or labels"
    narration = (record.get("components") or {}).get("narration")
    if isinstance(narration, dict) and narration.get("status") in ("ok", "unavailable"):
        held = narration.get("data") if narration["status"] == "ok" else None
        return None if held == seg.annotation() else "its narration or labels"
    return None


def _int(row: dict, col: str, path: Path, rec: str) -> int:
    try:
        return int(row[col])
    except (ValueError, TypeError):
        raise LeapError(f"column {col} holds {row[col]!r}, not an integer", path=path, record=rec,
                        fix="fix or remove that row") from None


def _time(row: dict, col: str, path: Path, rec: str) -> float:
    try:
        return parse_timestamp(row[col])
    except ValueError:
        raise LeapError(f"column {col} holds {row[col]!r}, not a HH:MM:SS.ff timestamp", path=path, record=rec,
                        fix="fix or remove that row") from None


def read_segments(path: str | Path, *, labelled: bool | None = None,
                  check: Callable[[Segment, Path, str], LeapError | None] | None = None) -> list[Segment]:
    """Read a train/validation (15 columns) or test-timestamps (8 columns) CSV.

    ``labelled=True`` requires the label columns (a train/validation file without them is an error, not an
    unlabelled split); ``None`` reads them when present. ``check(segment, path, record)``: what else is wrong
    with a row that parses (a class id the class files lack), said with the rows that do not.
    """
    path = Path(path)
    if labelled is None:  # from the header: the file is read once
        labelled = "verb_class" in csv_header(path)
    rows = read_csv(path, LABELLED_COLUMNS if labelled else TEST_COLUMNS, what="annotation file")
    segments = []
    seen: dict[str, int] = {}  # narration id -> its row: every stage keys its records (and resumes) by it
    errors: list[LeapError] = []  # every bad row, said at once: one rerun per row is a long way through 67k rows
    for i, row in rows.numbered():
        rec = f"row {i}, {row.get('narration_id') or '?'}"
        try:
            seg = _segment(row, path, rec, i, seen, labelled)
        except LeapError as e:
            errors.append(e)
            continue
        segments.append(seg)
        if check is not None and (e := check(seg, path, rec)) is not None:
            errors.append(e)
    raise_row_errors(errors)
    return segments


def _segment(row: dict, path: Path, rec: str, i: int, seen: dict[str, int], labelled: bool) -> Segment:
    first = seen.setdefault(row["narration_id"], i)
    if first != i:
        raise LeapError(f"narration id {row['narration_id']} is also on row {first}", path=path, record=rec,
                        fix="keep one row per segment (a CSV merged from two copies, or edited by hand?)")
    start, stop = _time(row, "start_timestamp", path, rec), _time(row, "stop_timestamp", path, rec)
    if stop < start:
        raise LeapError(f"stop {row['stop_timestamp']} is before start {row['start_timestamp']}", path=path,
                        record=rec, fix="swap or fix the timestamps of that row")
    start_frame, stop_frame = _int(row, "start_frame", path, rec), _int(row, "stop_frame", path, rec)
    if start_frame < 1:  # (rgb_frames are read by these: frame 0 is before the video's first JPEG)
        raise LeapError(f"start_frame {start_frame}: EPIC counts frames from 1 (frame_0000000001.jpg is a video's "
                        "first)", path=path, record=rec,
                        fix="number the frames from 1, as EPIC's CSVs do (a CSV counted from 0 is one frame off "
                            "on every row)")
    if stop_frame < start_frame:
        raise LeapError(f"stop_frame {stop_frame} is before start_frame {start_frame}", path=path, record=rec,
                        fix="swap or fix the frame columns of that row")
    nts = row["narration_timestamp"].strip()
    kw: dict = {}
    if labelled:
        kw = dict(narration=row["narration"], verb=row["verb"], verb_class=_int(row, "verb_class", path, rec),
                  noun=row["noun"], noun_class=_int(row, "noun_class", path, rec),
                  all_nouns=tuple(str(x) for x in parse_list_cell(row["all_nouns"], path=path, record=rec)),
                  all_noun_classes=tuple(int(x) for x in parse_list_cell(row["all_noun_classes"], path=path,
                                                                        record=rec)))
    return Segment(
        narration_id=row["narration_id"], participant_id=row["participant_id"], video_id=row["video_id"],
        start=start, stop=stop, start_frame=start_frame, stop_frame=stop_frame,
        narration_timestamp=_time(row, "narration_timestamp", path, rec) if nts else None, **kw)


ROW_ERRORS_SHOWN = 3


def raise_row_errors(errors: list[LeapError]) -> None:
    """Raise the bad rows of one file as one error: the first few with their problems, and how many in all."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        shown = "; ".join(f"{e.record}: {e.message}" for e in errors[:ROW_ERRORS_SHOWN])
        more = f"; and {len(errors) - ROW_ERRORS_SHOWN} more" if len(errors) > ROW_ERRORS_SHOWN else ""
        fixes = {e.fix for e in errors}
        raise LeapError(f"{len(errors)} rows cannot be read: {shown}{more}", path=errors[0].path,
                        fix=fixes.pop().replace("that row", "those rows") if len(fixes) == 1 else "fix or remove those rows")


def _read_id_list(path: Path, column: str) -> list[tuple[int, str]]:
    """(row, id) of each id of a one-column EPIC CSV (tail classes, unseen participants), without the spaces around
    it (a spreadsheet's export: "P18 " names P18, as a number or time cell is read with its spaces); blank cells
    are none."""
    if not path.exists():
        return []
    return [(i, cell) for i, r in read_csv(path, (column,)).numbered() if (cell := r[column].strip())]


def _class_ids(path: Path, column: str) -> set[int]:
    """The class ids of a tail classes CSV; a cell that is no integer is named (``_int``)."""
    return {_int({column: cell}, column, path, f"row {i}") for i, cell in _read_id_list(path, column)}


@dataclass(frozen=True)
class VideoInfo:
    video_id: str
    duration: float
    fps: float
    width: int
    height: int


class Annotations:
    """The annotations folder of EPIC-KITCHENS-100 (or of the synthetic kitchen), loaded lazily."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise LeapError("annotations folder not found", path=self.folder,
                            fix="pass --data ROOT (holding annotations/) or --annotations DIR with EPIC's CSVs")
        self._segments: dict[str, list[Segment]] = {}

    def split_path(self, split: str) -> Path:
        return self.folder / SPLIT_FILES[normalize_split(split)]

    def has_split(self, split: str) -> bool:
        return self.split_path(split).exists()

    def segments(self, split: str) -> list[Segment]:
        """The split's segments; train and validation must carry labels, and every class id must be one of
        the class files' (a bad id would otherwise crash generate-programs or training much later)."""
        split = normalize_split(split)
        if split not in self._segments:
            path = self.split_path(split)
            segments = read_segments(path, labelled=True if split in LABELLED_SPLITS else None,
                                     check=self._class_ids_check())
            self._segments[split] = segments
        return self._segments[split]

    def segment(self, split: str, narration_id: str) -> Segment | None:
        """One segment of the split by its narration id (None when the split has no such row), checked as
        ``segments`` checks every row; where the split was not read yet, only its row is parsed (``leap show``
        on a train segment parsed EPIC's 67k rows: 3.3 s)."""
        split = normalize_split(split)
        if split in self._segments:
            return next((s for s in self._segments[split] if s.narration_id == narration_id), None)
        path = self.split_path(split)
        labelled = split in LABELLED_SPLITS or "verb_class" in csv_header(path)
        for i, row in read_csv(path, LABELLED_COLUMNS if labelled else TEST_COLUMNS, what="annotation file").numbered():
            if row["narration_id"] == narration_id:
                rec = f"row {i}, {narration_id}"
                seg = _segment(row, path, rec, i, {}, labelled)
                if (e := self._class_ids_check()(seg, path, rec)) is not None:
                    raise e
                return seg
        return None

    def row_notes(self, segments: list[Segment]) -> list[str]:
        """One line for each kind of row among ``segments`` that parses but that EPIC's own files never hold (none
        of the validation and test CSVs' rows does), with how many and one of them, for ``leap info`` and extract:
        ids that name different videos (an edited video_id: the segment is read from another video), rows of no
        length, frame columns that disagree with the timestamps (``timing.columns_disagree``; only for videos in
        the video info, whose rate is known)."""
        from leap_cli.epic.timing import columns_disagree

        # (a damaged video info stops extract and info in one line before their row notes)
        info = self.video_info if (self.folder / VIDEO_INFO).exists() else {}
        found: dict[str, list[tuple[Segment, str]]] = {}
        for s in segments:
            if not (s.narration_id.startswith(s.video_id + "_") and s.video_id.startswith(s.participant_id + "_")):
                found.setdefault("ids", []).append((s, f"participant_id {s.participant_id}, video_id {s.video_id}"))
            if s.stop == s.start or s.stop_frame == s.start_frame:
                found.setdefault("empty", []).append((s, f"{s.start:.2f}-{s.stop:.2f} s, frames "
                                                          f"{s.start_frame}-{s.stop_frame}"))
            if s.video_id in info and (why := columns_disagree(s.start, s.stop, s.start_frame, s.stop_frame,
                                                                info[s.video_id].fps)):
                found.setdefault("columns", []).append((s, why))
        what = {"ids": ("whose ids name different videos", "the segment is read from the video of its video_id: fix "
                        "the row (EPIC's video ids are PARTICIPANT_NN or _NNN, e.g. P01_101, its narration ids VIDEO_N, "
                        "e.g. P01_101_0)"),
                "empty": ("of no length (stop equals start, in seconds or in frames)", "its clip is a single moment: give the row its real "
                          "stop"),
                "columns": ("whose frame columns and timestamps disagree", "an MP4 is cut by the timestamps, an "
                            "rgb_frames folder by the frame columns, so the two would show different clips; make "
                            "each row's columns agree (EPIC's own rows differ by at most 1 frame)")}
        return [f"{counted(len(rows), 'row')} {what[k][0]} (e.g. {rows[0][0].narration_id}: {rows[0][1]}): {what[k][1]}"
                for k, rows in found.items()]

    def _class_ids_check(self) -> Callable[[Segment, Path, str], LeapError | None]:
        """A labelled row's class ids against the class files (those present)."""
        checks = []
        if (self.folder / VERB_CLASSES).exists():
            checks.append(("verb_class", self.verbs, VERB_CLASSES, lambda s: [s.verb_class]))
        if (self.folder / NOUN_CLASSES).exists():
            checks.append(("noun_class", self.nouns, NOUN_CLASSES,
                           lambda s: [s.noun_class, *s.all_noun_classes]))

        def check(seg: Segment, path: Path, rec: str) -> LeapError | None:
            if not seg.has_labels:
                return None
            for column, vocab, file, ids in checks:
                bad = next((c for c in ids(seg) if c not in vocab.keys), None)
                if bad is not None:
                    col = column if bad == ids(seg)[0] else "all_noun_classes"
                    return LeapError(f"{col} {bad} is not a class of {file} (ids {min(vocab.keys)}-{max(vocab.keys)})",
                                     path=path, record=rec,
                                     fix=f"fix that row, or use the {file} the annotations were made with")
            return None
        return check

    @cached_property
    def verbs(self) -> ClassVocab:
        return ClassVocab.from_csv(self.folder / VERB_CLASSES, "verb")

    @cached_property
    def nouns(self) -> ClassVocab:
        return ClassVocab.from_csv(self.folder / NOUN_CLASSES, "noun")

    @cached_property
    def tail_verbs(self) -> set[int]:
        return _class_ids(self.folder / TAIL_VERBS, "verb")

    @cached_property
    def tail_nouns(self) -> set[int]:
        return _class_ids(self.folder / TAIL_NOUNS, "noun")

    def unseen_participants(self, split: str = "val") -> set[str]:
        split = normalize_split(split)
        return {p for _, p in _read_id_list(self.folder / UNSEEN[split], "participant_id")} if split in UNSEEN else set()

    @cached_property
    def video_info(self) -> dict[str, VideoInfo]:
        path = self.folder / VIDEO_INFO
        out = {}
        for i, row in read_csv(path, ("video_id", "duration", "fps", "resolution"), what="video info").numbered():
            try:
                w, h = (int(x) for x in row["resolution"].lower().split("x"))
                duration, fps = float(row["duration"]), float(row["fps"])
                if not (0 < duration < math.inf and 0 < fps < math.inf and w > 0 and h > 0):  # (nan, 0, -50)
                    raise ValueError
                out[row["video_id"]] = VideoInfo(row["video_id"], duration, fps, w, h)
            except (ValueError, AttributeError):  # a cut row leaves None in its last columns
                raise LeapError(f"no positive duration/fps/resolution for {row.get('video_id')!r}: "
                                f"{row.get('duration')!r}, {row.get('fps')!r}, {row.get('resolution')!r}", path=path,
                                record=f"row {i}",
                                fix="each row is video_id,duration (s),fps,WIDTHxHEIGHT, e.g. P01_01,1652.152817,"
                                    "59.94,1920x1080: fix or remove that row") from None
        return out

    def fps(self, video_id: str) -> float:
        try:
            return self.video_info[video_id].fps
        except KeyError:
            raise LeapError(f"video {video_id} is not in {VIDEO_INFO}", path=self.folder / VIDEO_INFO,
                            fix="add a row video_id,duration,fps,resolution for it") from None


def open_annotations(workdir: str | Path, data: str | Path | None = None,
                     annotations: str | Path | None = None) -> Annotations:
    """``--annotations DIR``, else ``DATA/annotations`` with DATA defaulting to ``{workdir}/kitchen``."""
    if annotations is not None:
        return Annotations(annotations)
    return Annotations(dataset_root(workdir, data) / "annotations")
