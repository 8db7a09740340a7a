"""Check a shards folder against its manifest: every file present with its size and sha256, every sample
parsable, its JSON readable and its JPEG frames decodable (at the size the manifest's ``frame_sizes`` says). Used
by ``leap check-shards`` (e.g. after copying shards to a cluster) with the same ``on_error`` policy as the reader."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from leap_cli.errors import LeapError
from leap_cli.io import sha256_file
from leap_cli.shards.format import (REBUILD_FIX, group_sample, load_manifest, parse_members, read_sample_at,
                                   sample_crc)
from leap_cli.shards.transforms import decode_jpegs


@dataclass
class CheckReport:
    folder: Path
    shards: int = 0
    samples: int = 0
    ok: int = 0
    problems: list[dict] = field(default_factory=list)  # {"shard", "sample" (or None), "problem"}


def check_shards(source: str | Path, *, on_error: str = "raise", verify_hash: bool = True, decode: bool = True,
                 progress: Callable[[int, int], None] | None = None) -> CheckReport:
    """Check every shard and sample; ``on_error="raise"`` stops at the first problem with a LeapError naming the
    shard and the sample, ``"skip"`` lists and counts every problem."""
    if on_error not in ("raise", "skip"):
        raise LeapError(f"on-error must be raise or skip, not {on_error!r}", fix="use --on-error raise or skip")
    manifest, folder = load_manifest(source)
    report = CheckReport(folder, shards=len(manifest["shards"]),
                         samples=sum(s["count"] for s in manifest["shards"]))

    def problem(shard: str, sample: str | None, what: str) -> None:
        if on_error == "raise":
            raise LeapError(what, path=folder / shard, record=f"sample {sample}" if sample else None,
                            fix=REBUILD_FIX)
        report.problems.append({"shard": shard, "sample": sample, "problem": what})

    stored = manifest.get("frame_sizes") or {}  # {video: [width, height]}; absent in older manifests
    done = 0
    for info in manifest["shards"]:
        path = folder / info["name"]
        if not path.exists():
            problem(info["name"], None, "shard file is missing")
            done += info["count"]
            continue
        if path.stat().st_size != info["bytes"]:
            problem(info["name"], None, f"shard has {path.stat().st_size} bytes, the manifest says {info['bytes']}")
        elif verify_hash and sha256_file(path) != info["sha256"]:
            problem(info["name"], None, "shard sha256 differs from the manifest")
        with open(path, "rb") as f:
            for i, (key, off, size) in enumerate(zip(info["keys"], info["offsets"], info["sizes"])):
                try:
                    got, fields = group_sample(parse_members(read_sample_at(f, off, size, sample_crc(info, i))))
                    if got != key:
                        raise ValueError(f"found sample {got!r} where the manifest has {key!r}")
                    meta = json.loads(fields["json"])
                    if meta.get("narration_id") != key:
                        raise ValueError("json names another narration id")
                    frames = [v for k, v in sorted(fields.items()) if k.endswith(".jpg")]
                    if not frames:
                        raise ValueError("no frames")
                    if decode:
                        size = list(decode_jpegs(frames).shape[2:0:-1])
                        said = stored.get(meta.get("video"))
                        if said and size != said:
                            raise ValueError(f"frames are {size[0]}x{size[1]}, the manifest's frame_sizes say "
                                             f"{said[0]}x{said[1]} for video {meta.get('video')}")
                    report.ok += 1
                except (ValueError, KeyError, json.JSONDecodeError) as e:
                    problem(info["name"], key, f"{type(e).__name__}: {e}")
                done += 1
                if progress:
                    progress(done, report.samples)
    return report
