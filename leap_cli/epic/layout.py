"""Where things live in an EPIC-KITCHENS-100 dataset root."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from leap_cli.epic.annotations import Annotations
from leap_cli.epic.timing import frame_filename
from leap_cli.errors import LeapError
from leap_cli.io import shell_word

AUDIO_EXTS = (".wav", ".flac", ".WAV", ".FLAC")
VIDEO_EXTS = (".MP4", ".mp4")


DOWNLOAD_FOLDER = "EPIC-KITCHENS"  # where EPIC's download script (epic_downloader.py) puts P01/, P02/, ...


def _download_root(root: Path) -> Path:
    """``root``, or ``root/EPIC-KITCHENS`` where ``root`` is the folder given to EPIC's download script (which
    writes into that subfolder) and holds no participant folders of its own."""
    inner = root / DOWNLOAD_FOLDER
    if inner.is_dir() and not any(p.is_dir() and _participant_folder(p.name) for p in root.iterdir()):
        return inner
    return root


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
    _annotations: Annotations | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def open(cls, data: str | Path, annotations: str | Path | None = None) -> "DatasetLayout":
        root = Path(data)
        if not root.is_dir():
            raise LeapError("dataset root not found", path=root,
                            fix="--data must be the folder holding P01/, P02/, ... and annotations/")
        given, root = root, _download_root(root)
        ann = Path(annotations) if annotations else next(
            (d for d in (given / "annotations", root / "annotations") if d.is_dir()), root / "annotations")
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
            looked = list(dict.fromkeys([given / "annotations", root / "annotations"]))
            # a clone of EPIC's annotations repository under its own name, in the root or beside it
            clone = next((d for base in dict.fromkeys([given, root, given.resolve().parent])
                          for d in sorted(base.glob("*annotations*"))
                          if d.is_dir() and next(d.glob("EPIC_100_*.csv"), None) is not None), None)
            if empty:
                if clone is None:
                    return cls(root, ann)  # (each stage names the file it lacks there)
                raise LeapError("the annotations folder holds no EPIC_100_*.csv", path=ann,
                                fix=f"pass --annotations {shell_word(clone)} (EPIC's CSVs are there), or move its CSVs "
                                    f"into {ann}")
            raise LeapError("annotations folder not found" + (f" (looked in {' and '.join(map(str, looked))})"
                                                              if len(looked) > 1 else ""), path=ann,
                            fix=f"pass --annotations {shell_word(clone)} (EPIC's CSVs are there), or rename it to "
                                f"{root / 'annotations'}" if clone is not None else
                            "put EPIC's CSVs in ROOT/annotations/ or pass --annotations DIR")
        return cls(root, ann)

    def annotations(self) -> Annotations:
        """The annotations, loaded once per layout (each split's CSV is read when first asked for): ``leap info``
        read every split twice, 7 s for EPIC's 77k rows."""
        if self._annotations is None:
            self._annotations = Annotations(self.annotations_dir)
        return self._annotations

    @staticmethod
    def participant(video_id: str) -> str:
        return video_id.split("_")[0]

    def video_path(self, video_id: str) -> Path | None:
        folder = self.root / self.participant(video_id) / "videos"
        for ext in VIDEO_EXTS:
            p = folder / f"{video_id}{ext}"
            if p.is_file():  # (a folder of that name is not a video; a link is followed)
                return p
        return None

    def frames_dir(self, video_id: str) -> Path | None:
        d = self.root / self.participant(video_id) / "rgb_frames" / video_id
        return d if d.is_dir() else None

    def source_stat(self, video_id: str) -> list[int] | None:
        """``[size, mtime_ns]`` of the MP4 (else the rgb_frames folder) of ``video_id``; None when neither is there.
        What frames were read from: build-shards' skip records and extract's frame cache keep it."""
        path = self.video_path(video_id) or self.frames_dir(video_id)
        if path is None:
            return None
        st = path.stat()
        return [st.st_size, st.st_mtime_ns]

    def broken_links(self, video_id: str) -> list[Path]:
        """The video's MP4 names and rgb_frames folder that are symbolic links to nothing (a dataset linked from
        storage that is not mounted, or moved)."""
        part = self.root / self.participant(video_id)
        return [p for p in [part / "videos" / f"{video_id}{ext}" for ext in VIDEO_EXTS] + [part / "rgb_frames" / video_id]
                if p.is_symlink() and not p.exists()]

    def frames_tar(self, video_id: str) -> Path | None:
        """``ROOT/P01/rgb_frames/P01_01.tar`` as EPIC's download script saves it, when no folder was extracted."""
        tar = self.root / self.participant(video_id) / "rgb_frames" / f"{video_id}.tar"
        return tar if tar.is_file() and self.frames_dir(video_id) is None else None

    def untar_command(self, video_id: str) -> str:
        """The shell command that extracts the frames tar into the frames folder (the tar holds the frame files)."""
        d = self.root / self.participant(video_id) / "rgb_frames" / video_id
        return f"mkdir -p {shell_word(d)} && tar -xf {shell_word(f'{d}.tar')} -C {shell_word(d)}"

    def frame_path(self, video_id: str, frame: int) -> Path:
        return self.root / self.participant(video_id) / "rgb_frames" / video_id / frame_filename(frame)

    def audio_path(self, video_id: str) -> Path | None:
        folder = self.root / self.participant(video_id) / "audio"
        for ext in AUDIO_EXTS:
            p = folder / f"{video_id}{ext}"
            if p.is_file():  # (a folder of that name is not a sound file; a link is followed)
                return p
        return None

    def hand_objects_path(self, video_id: str) -> Path | None:
        """Where EPIC's download script saves it (``ROOT/P01/hand-objects/``), else ``ROOT/hand-objects/P01/``
        (the layout of its download URLs)."""
        part = self.participant(video_id)
        for folder in (self.root / part / "hand-objects", self.root / "hand-objects" / part):
            for ext in (".pkl", ".jsonl"):
                p = folder / f"{video_id}{ext}"
                if p.exists():
                    return p
        return None

    def object_detections_path(self, video_id: str) -> Path | None:
        p = self.root / "object-detections" / self.participant(video_id) / f"{video_id}.jsonl"
        return p if p.exists() else None

    def poses_path(self, video_id: str) -> Path | None:
        """EPIC Fields' per-video JSON where present, else a COLMAP ``images.txt``, else its ``images.bin``, in
        ``poses/VIDEO/`` or in the ``sparse/0/`` folder COLMAP's mapper writes there."""
        folder = self.root / "poses" / video_id
        for p in (self.root / "poses" / f"{video_id}.json", *(d / name for d in (folder, folder / "sparse" / "0")
                                                              for name in ("images.txt", "images.bin"))):
            if p.exists():
                return p
        return None

    def ground_truth_dir(self) -> Path | None:
        d = self.root / "ground-truth"
        return d if d.is_dir() else None
