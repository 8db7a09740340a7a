"""What ``leap extract`` recorded beside its descriptors: its settings, ``SPLIT.config.json`` beside
``SPLIT.jsonl`` (``config_path``; each ``--shard`` part has its own), the resolved options of its last run.

extract writes them; generate-programs (the data set a replaced video is looked for in, and the extract that makes
its records again) and build-shards (the frame cache it reads by default) read them here, not through extract's
internals. A work directory moved or copied since keeps settings that name the old place: a path recorded inside
the old work directory is read inside the one it is in now (``Recorded.path``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from leap_cli.io import shard_parts

SUFFIX = ".config.json"
# extract's options that change its records or where they go, as its settings hold them: settings key -> (option,
# extract's default as the settings hold it). A command that makes the records again gives those whose value differs
# (``Recorded.options``); --data, --annotations, --out, --shard and --frame-cache are said apart.
OPTIONS = {"components": ("--components", ["narration", "audio", "camera", "objects", "hands"]),
           "hand_threshold": ("--hand-threshold", 0.5), "object_threshold": ("--object-threshold", 0.5),
           "camera_frames": ("--camera-frames", 9), "camera_source": ("--camera-source", "auto"),
           "fov_deg": ("--fov", 90.0), "object_frames": ("--object-frames", 6),
           "detector_weights": ("--detector-weights", None), "detector_labels": ("--detector-labels", None),
           "detector_arch": ("--detector-arch", "fasterrcnn_resnet50_fpn_v2"),
           "clip_weights": ("--clip-weights", None), "clip_arch": ("--clip-arch", "ViT-B-16"),
           "audio_model": ("--audio-model", None), "audio_labels": ("--audio-labels", None),
           "device": ("--device", "cpu"), "workers": ("--workers", 1), "limit": ("--limit", None),
           "cache_frames": ("--cache-frames", 16), "cache_short_side": ("--cache-short-side", 256)}
_FILES = ("detector_weights", "detector_labels", "clip_weights", "audio_model", "audio_labels")  # (or a name: coco)
# the settings' key of the frame cache an earlier run wrote where the last one wrote none (``--frame-cache none``):
# build-shards still reads it (``frame_caches``)
EARLIER_FRAME_CACHE = "earlier_frame_cache"


def config_path(out: str | Path) -> Path:
    """The settings written next to extract's output: ``train.jsonl`` -> ``train.config.json``."""
    return Path(out).with_suffix(SUFFIX)


@dataclass(frozen=True)
class Recorded:
    """One settings file of extract (``file``) and what it holds (``settings``)."""

    file: Path
    settings: dict

    def path(self, key: str) -> Path | None:
        """The path the settings hold under ``key`` (None: none), where it is now. A relative one is of the folder
        extract ran in (``cwd``, recorded since 2026-12-07; else this one, and kept relative). Where the settings were
        written at another place (the work directory moved or copied since: their ``out`` is not beside this file), a
        path inside the old work directory is taken inside this one, unless only the old one is there."""
        value = self.settings.get(key)
        if not isinstance(value, str) or not value:
            return None
        cwd = self.settings.get("cwd")
        base = cwd if isinstance(cwd, str) and os.path.isabs(cwd) else os.getcwd()
        then = Path(os.path.abspath(os.path.join(base, value)))
        out = self.settings.get("out")
        old_top = Path(os.path.abspath(os.path.join(base, out))).parent.parent if isinstance(out, str) and out else None
        new_top = Path(self.file).parent.parent  # (as given: a relative work directory is said relative)
        if old_top is None or len(old_top.parts) < 2 or old_top == Path(os.path.abspath(new_top)) \
                or not then.is_relative_to(old_top):
            return Path(value) if base == os.getcwd() else then
        now = new_top / then.relative_to(old_top)
        return then if then.exists() and not now.exists() else now

    def frame_cache(self) -> Path | None:
        """The frame cache this run wrote into, else the one an earlier run did (``EARLIER_FRAME_CACHE``)."""
        if self.settings.get("cache_frames"):
            return self.path("frame_cache") or self.path(EARLIER_FRAME_CACHE)
        return self.path(EARLIER_FRAME_CACHE)

    def options(self, workdir: Path) -> list[str]:
        """The words of extract's options (``OPTIONS``, and ``--frame-cache``) whose values differ from extract's
        defaults in a run with ``--workdir workdir``: with them, a run makes records of these settings."""
        from leap_cli.io import shell_word

        words = []
        for key, (option, default) in OPTIONS.items():
            value = self.settings.get(key, default)
            if value == default or value is None:
                continue
            if key in _FILES and (where := self.path(key)) is not None and where.is_file():
                value = where
            words += [option, shell_word(",".join(value) if isinstance(value, list) else value)]
        if "frame_cache" not in self.settings:  # (settings of a leap before the frame cache)
            return words
        cache = self.path("frame_cache") if self.settings.get("cache_frames") else None
        if cache is None:
            words += ["--frame-cache", "none"]
        elif os.path.abspath(cache) != os.path.abspath(Path(workdir) / "frame-cache"):
            words += ["--frame-cache", shell_word(cache)]
        return words


def recorded(descriptors: str | Path) -> list[Recorded | None]:
    """extract's settings of ``descriptors`` and of its ``--shard`` parts, those that are there (None for one that
    cannot be read or is no JSON object: extract says what is wrong with its own settings)."""
    descriptors = Path(descriptors)
    files = [config_path(descriptors)] + [p for _, _, p in shard_parts(descriptors.with_suffix(""), SUFFIX)]
    return [read_settings(file) for file in files if file.is_file()]


def read_settings(file: Path) -> Recorded | None:
    """The settings in ``file`` (None: not there, not readable, or no JSON object)."""
    try:
        settings = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return Recorded(file, settings) if isinstance(settings, dict) else None


def agreed(descriptors: str | Path) -> Recorded | None:
    """The settings of ``descriptors`` where its own and its ``--shard`` parts' are all there to read and say the same
    data set and annotations (a file merged from parts beside an earlier whole run's settings, of a work directory
    copied since, named two roots); None where there are none, or they differ. Compared where they are, not as
    written: parts run from two folders (or one by a leap before ``cwd``) say one folder relative and absolute."""
    def where(path: Path | None) -> str | None:
        return os.path.abspath(path) if path is not None else None

    found = recorded(descriptors)
    said = {(where(r.path("data")), where(r.path("annotations"))) if r is not None else None for r in found}
    if len(said) != 1 or None in said or next(iter(said))[0] is None:
        return None
    return found[0]


def inputs(descriptors: str | Path) -> tuple[Path, Path | None] | None:
    """(data, annotations) extract read ``descriptors`` from (``agreed``), where they are now; None: not known."""
    settings = agreed(descriptors)
    return None if settings is None else (settings.path("data"), settings.path("annotations"))


def frame_caches(descriptors: str | Path) -> list[tuple[Path, Path]]:
    """(settings file, folder) of each frame cache the settings of ``descriptors`` and its parts name
    (``Recorded.frame_cache``), whether that folder is there or not."""
    return [(r.file, cache) for r in recorded(descriptors) if r is not None and (cache := r.frame_cache()) is not None]
