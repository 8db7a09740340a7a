"""Where things live in an EPIC-KITCHENS-100 dataset root."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from leap_cli.epic.annotations import Annotations, Segment
from leap_cli.epic.timing import frame_filename
from leap_cli.errors import LeapError
from leap_cli.io import shell_word

AUDIO_EXTS = (".wav", ".flac", ".WAV", ".FLAC")
VIDEO_EXTS = (".MP4", ".mp4")


DOWNLOAD_FOLDER = "EPIC-KITCHENS"  # where EPIC's download script (epic_downloader.py) puts P01/, P02/, ...


def _roots(root: Path) -> tuple[Path, ...]:
    """The folders a dataset root's files are looked up in, in turn: ``root`` and ``root/EPIC-KITCHENS``, where
    EPIC's download script (which writes into that subfolder) made it; the script's folder first unless ``root``
    holds participant folders of its own (the one folder leap read before it read both: a video in both is the
    one it read, whose frame cache and shards stay good). ``root`` holds what the script does not download
    (audio files, labelled detections, poses) beside it."""
    inner = root / DOWNLOAD_FOLDER
    if not inner.is_dir():
        return (root,)
    return (root, inner) if any(p.is_dir() and _participant_folder(p.name) for p in root.iterdir()) else (inner, root)


def _first(paths, test=Path.is_file) -> Path | None:
    """The first of ``paths`` for which ``test`` holds (the roots' candidates, in their order)."""
    return next((p for p in paths if test(p)), None)


def _holds_frames(folder: Path) -> bool:
    """Whether an ``rgb_frames/VIDEO`` folder holds a ``frame_*`` file (stops at the first); one that cannot be
    listed is taken to (its reader names the permission)."""
    try:
        with os.scandir(folder) as entries:
            return any(e.name.startswith("frame_") for e in entries)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True


def file_stat(path: str | Path) -> list[int] | None:
    """``[size, mtime_ns, ctime_ns]`` of a file (or folder), None when it is not there (or cannot be stat'ed): what a
    video's records, cache entries and shards were made from (``DatasetLayout.video_stat``)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _size(path: Path | None) -> int | None:
    """``file_stat``'s size of ``path`` (None: no path, or nothing there)."""
    stat = file_stat(path) if path is not None else None
    return stat[0] if stat is not None else None


def replaced_files(files: list[Path]) -> tuple[str, str]:
    """How a note names ``files`` that ``DatasetLayout.replaced_test`` found replaced (its first, and the others):
    ("a video", "other video"), ("an audio file", "other audio file") or, for both kinds, ("a video or audio file",
    "other file"). A replaced audio file changes a record's sound alone: no frame, so no shard, was read from it."""
    audio = sum(Path(f).suffix in AUDIO_EXTS for f in files)
    if not audio:
        return "a video", "other video"
    return ("an audio file", "other audio file") if audio == len(files) else ("a video or audio file", "other file")


def _participant_folder(name: str) -> bool:
    return len(name) == 3 and name[0] == "P" and name[1:].isdigit()


@dataclass
class DatasetLayout:
    """``ROOT/P01/videos/P01_01.MP4``, ``ROOT/P01/rgb_frames/P01_01/frame_0000000001.jpg``,
    ``ROOT/P01/audio/P01_01.wav``, ``ROOT/P01/hand-objects/P01_01.pkl`` or ``ROOT/hand-objects/P01/P01_01.pkl``
    (or ``.jsonl``), ``ROOT/object-detections/P01/P01_01.jsonl``, ``ROOT/poses/P01_01.json`` (EPIC Fields) or
    ``ROOT/poses/P01_01/images.txt`` or ``images.bin`` (COLMAP; also in ``sparse/0/`` there, where COLMAP's
    mapper writes its first model)."""

    root: Path
    annotations_dir: Path
    beside: tuple[Path, ...] = ()  # other roots, looked in after ``root`` (``open``: ``_roots``)
    _annotations: Annotations | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def open(cls, data: str | Path, annotations: str | Path | None = None) -> "DatasetLayout":
        root = Path(data)
        if not root.is_dir():
            raise LeapError("dataset root not found", path=root,
                            fix="--data must be the folder holding P01/, P02/, ... and annotations/")
        given = root
        root, *beside = roots = _roots(given)
        places = list(dict.fromkeys([given / "annotations", *(r / "annotations" for r in roots)]))
        ann = Path(annotations) if annotations else next((d for d in places if d.is_dir()), root / "annotations")
        if annotations and ann.is_file():  # (--annotations .../EPIC_100_train.csv)
            raise LeapError("--annotations names a file, not the folder of EPIC's CSVs", path=ann,
                            fix=f"pass the folder that holds it: --annotations {shell_word(ann.parent)}")
        # an annotations folder made but left empty, with EPIC's CSVs cloned beside it: as if there were none
        empty = not annotations and ann.is_dir() and next(ann.glob("EPIC_100_*.csv"), None) is None
        if not ann.is_dir() or empty:
            if annotations:
                raise LeapError("annotations folder not found", path=ann,
                                fix="check the folder given to --annotations: it holds EPIC's CSVs")
            if next(given.glob("EPIC_100_*.csv"), None) is not None:  # --data ROOT/annotations
                raise LeapError(f"annotations folder not found: {given} holds EPIC's CSVs itself", path=ann,
                                fix=f"pass the data set root (--data {shell_word(given.resolve().parent)}), or --annotations "
                                    f"{shell_word(given)}")
            looked = places
            # a clone of EPIC's annotations repository under its own name, in the root or beside it
            clone = next((d for base in dict.fromkeys([given, *roots, given.resolve().parent])
                          for d in sorted(base.glob("*annotations*"))
                          if d.is_dir() and next(d.glob("EPIC_100_*.csv"), None) is not None), None)
            if empty:
                if clone is None:
                    return cls(root, ann, tuple(beside))  # (each stage names the file it lacks there)
                raise LeapError("the annotations folder holds no EPIC_100_*.csv", path=ann,
                                fix=f"pass --annotations {shell_word(clone)} (EPIC's CSVs are there), or move its CSVs "
                                    f"into {ann}")
            raise LeapError("annotations folder not found" + (f" (looked in {' and '.join(map(str, looked))})"
                                                              if len(looked) > 1 else ""), path=ann,
                            fix=f"pass --annotations {shell_word(clone)} (EPIC's CSVs are there), or rename it to "
                                f"{root / 'annotations'}" if clone is not None else
                            "put EPIC's CSVs in ROOT/annotations/ or pass --annotations DIR")
        return cls(root, ann, tuple(beside))

    def annotations(self) -> Annotations:
        """The annotations, loaded once per layout (each split's CSV is read when first asked for): ``leap info``
        read every split twice, 7 s for EPIC's 77k rows."""
        if self._annotations is None:
            self._annotations = Annotations(self.annotations_dir)
        return self._annotations

    @staticmethod
    def participant(video_id: str) -> str:
        return video_id.split("_")[0]

    @property
    def roots(self) -> tuple[Path, ...]:
        """``root``, then the folders ``beside`` it: each video's files are looked up in them in turn."""
        return (self.root, *self.beside)

    @property
    def given_root(self) -> Path:
        """The folder given (``--data``) rather than EPIC's download folder in it: where the files the download
        script does not fetch go (README's tree), so where leap advises placing them."""
        roots = self.roots  # (the folder given holds the other: ROOT and ROOT/EPIC-KITCHENS, whatever ROOT's name)
        return next((r for r in roots if any(o != r and o.parent == r for o in roots)), self.root)

    def videos_folders(self, video_id: str) -> list[Path]:
        """Where the video's MP4 is looked for (``ROOT/P01/videos`` in each root)."""
        return [r / self.participant(video_id) / "videos" for r in self.roots]

    def video_path(self, video_id: str) -> Path | None:
        # (a folder of that name is not a video; a link is followed)
        return _first(f / f"{video_id}{ext}" for f in self.videos_folders(video_id) for ext in VIDEO_EXTS)

    def _frames_folders(self, video_id: str) -> list[Path]:
        return [r / self.participant(video_id) / "rgb_frames" / video_id for r in self.roots]

    def frames_dir(self, video_id: str) -> Path | None:
        """The first of the roots' ``rgb_frames/VIDEO`` folders that holds frames, else the first that is there (an
        empty one: its reader says so); an empty folder (a tar's extraction not begun) never hides a full one."""
        folders = [d for d in self._frames_folders(video_id) if d.is_dir()]
        return next((d for d in folders if _holds_frames(d)), folders[0] if folders else None)

    def looked_for(self, video_id: str) -> str:
        """``ROOT/P01/videos/P01_01.MP4 and ROOT/P01/rgb_frames/P01_01/``, in each root: where the video was looked
        for (for messages)."""
        return " and ".join(f"{f / f'{video_id}.MP4'} and {d}/"
                            for f, d in zip(self.videos_folders(video_id), self._frames_folders(video_id)))

    def source_stat(self, video_id: str) -> list[int] | None:
        """``[size, mtime_ns]`` of the MP4 (else the rgb_frames folder) of ``video_id``; None when neither is there.
        What frames were read from: build-shards' skip records and extract's frame cache keep it."""
        stat = self.video_stat(video_id)
        return stat[:2] if stat is not None else None

    def video_stat(self, video_id: str) -> list[int] | None:
        """``file_stat`` of the video's source, its MP4 (else its rgb_frames folder); None when neither is there."""
        path = self.video_path(video_id) or self.frames_dir(video_id)
        return file_stat(path) if path is not None else None

    def mp4_size(self, video_id: str) -> int | None:
        """The size (bytes) of the video's MP4, None where it has none (an rgb_frames folder, or nothing)."""
        return _size(self.video_path(video_id))

    def audio_size(self, video_id: str) -> int | None:
        """The size (bytes) of the video's audio file (``audio_path``), None where it has none."""
        return _size(self.audio_path(video_id))

    def replaced_test(self, earlier: Callable[[str, int], int | None] | None = None
                      ) -> Callable[[dict, Segment], tuple[Path, int, int] | None]:
        """A test of a descriptor record: (the file, the size the record keeps, the size now) where it was made from an
        MP4 (``video_size``) or an audio file (``audio_size``) whose size differs now (downloaded again: another
        release, or a damaged or cut file replaced), else None. Its mtime alone is no reason (a copy, rsync without -t:
        the same bytes), nor a file not there now. A record that keeps no MP4 size (made by a leap before 2026-12-07,
        from an rgb_frames folder, or without reading the video) is kept, but where ``earlier(video, size now)``
        (extract's frame cache, read before its run claims any video anew: ``FrameCache.made_from_size``) tells
        another size it was made from. One stat per video and file, no byte read. extract makes such records again;
        generate-programs leaves them out."""
        sizes: dict[tuple[str, str], int | None] = {}
        made_from: dict[str, int | None] = {}  # video -> the MP4 size its records that keep none were made from

        def size(kind: str, video_id: str) -> int | None:
            if (kind, video_id) not in sizes:
                sizes[kind, video_id] = self.mp4_size(video_id) if kind == "video" else self.audio_size(video_id)
            return sizes[kind, video_id]

        def replaced(record: dict, seg: Segment) -> tuple[Path, int, int] | None:
            held = record.get("video_size")
            if isinstance(held, int) or earlier is not None:
                now = size("video", seg.video_id)
                if now is not None and not isinstance(held, int):
                    if seg.video_id not in made_from:
                        made_from[seg.video_id] = earlier(seg.video_id, now)
                    held = made_from[seg.video_id]
                if isinstance(held, int) and now is not None and now != held:
                    return self.video_path(seg.video_id), held, now
            held = record.get("audio_size")
            if isinstance(held, int) and (now := size("audio", seg.video_id)) is not None and now != held:
                return self.audio_path(seg.video_id), held, now
            return None

        return replaced

    def broken_links(self, video_id: str) -> list[Path]:
        """The video's MP4 names and rgb_frames folder that are symbolic links to nothing (a dataset linked from
        storage that is not mounted, or moved)."""
        return [p for f, d in zip(self.videos_folders(video_id), self._frames_folders(video_id))
                for p in [f / f"{video_id}{ext}" for ext in VIDEO_EXTS] + [d] if p.is_symlink() and not p.exists()]

    def has_frames(self, video_id: str) -> bool:
        """Whether an ``rgb_frames/VIDEO`` folder holding frames is there (``frames_dir`` may be an empty one)."""
        return any(_holds_frames(d) for d in self._frames_folders(video_id))

    def frames_tar(self, video_id: str) -> Path | None:
        """``ROOT/P01/rgb_frames/P01_01.tar`` as EPIC's download script saves it, when no folder was extracted."""
        if self.has_frames(video_id):
            return None
        return _first(d.with_name(f"{video_id}.tar") for d in self._frames_folders(video_id))

    def untar_command(self, video_id: str) -> str:
        """The shell command that extracts the frames tar into the frames folder (the tar holds the frame files)."""
        tar = self.frames_tar(video_id)
        d = tar.with_suffix("") if tar is not None else self._frames_folders(video_id)[0]
        return f"mkdir -p {shell_word(d)} && tar -xf {shell_word(f'{d}.tar')} -C {shell_word(d)}"

    def frame_path(self, video_id: str, frame: int) -> Path:
        return (self.frames_dir(video_id) or self._frames_folders(video_id)[0]) / frame_filename(frame)

    def audio_folders(self, video_id: str) -> list[Path]:
        """Where the video's audio file is looked for (``ROOT/P01/audio`` in each root)."""
        return [r / self.participant(video_id) / "audio" for r in self.roots]

    def audio_path(self, video_id: str) -> Path | None:
        # (a folder of that name is not a sound file; a link is followed)
        return _first(f / f"{video_id}{ext}" for f in self.audio_folders(video_id) for ext in AUDIO_EXTS)

    def hand_objects_path(self, video_id: str) -> Path | None:
        """Where EPIC's download script saves it (``ROOT/P01/hand-objects/``), else ``ROOT/hand-objects/P01/``
        (the layout of its download URLs)."""
        part = self.participant(video_id)
        return _first((folder / f"{video_id}{ext}" for r in self.roots
                            for folder in (r / part / "hand-objects", r / "hand-objects" / part)
                            for ext in (".pkl", ".jsonl")), Path.exists)

    def object_detections_path(self, video_id: str) -> Path | None:
        return _first((r / "object-detections" / self.participant(video_id) / f"{video_id}.jsonl"
                            for r in self.roots), Path.exists)

    def poses_path(self, video_id: str) -> Path | None:
        """EPIC Fields' per-video JSON where present, else a COLMAP ``images.txt``, else its ``images.bin``, in
        ``poses/VIDEO/`` or in the ``sparse/0/`` folder COLMAP's mapper writes there."""
        def colmap(r: Path):
            folder = r / "poses" / video_id
            for d in (folder, folder / "sparse" / "0"):
                yield from (d / "images.txt", d / "images.bin")

        return _first([*(r / "poses" / f"{video_id}.json" for r in self.roots),
                            *(p for r in self.roots for p in colmap(r))], Path.exists)
