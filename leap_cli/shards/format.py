"""The shard format shared by the writer and the reader: member names, deterministic tar records,
a small tar parser for one sample's bytes, and manifest loading.

A shard is a plain (uncompressed, PAX) tar file ``leap-{split}-000000.tar``. The members of one sample
are consecutive and share the sample key, the narration id, which never holds a dot. WebDataset splits a
member name at the FIRST dot into key and field, so the field may itself hold dots and the last
extension names the encoding (WebDataset's own ``.seg.jpg`` convention)::

    P01_01_3.json            labels, program targets, sampling record (UTF-8 JSON)
    P01_01_3.c0.f000.jpg ... anticipation only: context clip 0 (oldest) .. C-1, T frames each
    P01_01_3.f000.jpg ...    the T observed frames, in time order (JPEG, short side S)

Every header has mtime 0, uid/gid 0, empty user/group names and mode 0644, so the same samples give the
same bytes on any machine.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import zlib
from pathlib import Path

from leap_cli.errors import LeapError
from leap_cli.io import part_of, shard_parts, shell_word

FORMAT = "leap-shards/1"
MANIFEST = "manifest.json"
# What to do about a damaged shard. A re-run of build-shards keeps every shard whose size is right (hashing them
# all on each resume would read the whole split again): a shard with the right size and wrong bytes must go first.
def rebuild_fix(shard: str | None = None, folder: str | Path | None = None) -> str:
    """What to do about a damaged or missing shard file (``shard``: its name; a ``--shard i/n`` part's tar is
    rebuilt by that part's command); with the shards' ``folder``, the command itself (``build_command``: the
    options of the build, which a rerun without them is refused for)."""
    m = part_of(shard or "")
    part = ("--shard", f"{m[0]}/{m[1]}") if m else ()
    run = (build_command(Path(folder), *part, part=f".shard{m[0]}of{m[1]}" if m else None) if folder is not None
           else f"the same leap build-shards{' ' if m else ''}" + " ".join(part))
    return (f"delete that shard file if it is still there and run {run} again (it rebuilds a missing or cut shard "
            f"and those after it), or rebuild {'that part' if m else 'all'} with --force")


REBUILD_FIX = rebuild_fix()
_HEADER = 512


def shard_name(split: str, index: int, suffix: str = "") -> str:
    """``leap-train-000000.tar`` (``suffix`` is ShardSpec.suffix for ``--shard i/n`` jobs)."""
    return f"leap-{split}{suffix}-{index:06d}.tar"


def manifest_name(suffix: str = "") -> str:
    return f"manifest{suffix}.json"


def frame_field(i: int, context: int | None = None) -> str:
    """Field name of frame ``i`` (of context clip ``context`` when given)."""
    return f"f{i:03d}.jpg" if context is None else f"c{context}.f{i:03d}.jpg"


def check_key(key: str) -> str:
    if not key or "." in key or "/" in key:
        raise LeapError(f"sample key {key!r} holds a dot or slash", record=key,
                        fix="WebDataset splits names at the first dot: rename that narration id")
    return key


def tar_member(name: str, data: bytes) -> bytes:
    """One deterministic PAX tar record (header(s) + data + padding to 512 bytes)."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    header = info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")
    pad = (-len(data)) % _HEADER
    return header + data + b"\0" * pad


def tar_end() -> bytes:
    """End of archive: two zero blocks."""
    return b"\0" * (2 * _HEADER)


def sample_bytes(key: str, fields: dict[str, bytes]) -> bytes:
    """All records of one sample, json first then the fields in sorted name order."""
    order = sorted(fields, key=lambda f: (f != "json", f))
    return b"".join(tar_member(f"{key}.{f}", fields[f]) for f in order)


def frames_crc(fields: dict[str, bytes]) -> int:
    """CRC-32 of a sample's frames alone (its fields but ``json``, in name order): what tells a sample whose frames
    were read again (a video downloaded again) from one whose targets or labels alone changed
    (``samples_provenance``'s ``frames``)."""
    crc = 0
    for f in sorted(k for k in fields if k != "json"):
        crc = zlib.crc32(fields[f], crc)
    return crc


_PAX_RECORD = re.compile(rb"(\d+) ")


def _pax_path(buf: bytes) -> str | None:
    pos = 0
    while pos < len(buf):
        m = _PAX_RECORD.match(buf, pos)
        if not m:
            raise ValueError("bad PAX header")
        length = int(m.group(1))
        record = buf[m.end():pos + length - 1]
        k, _, v = record.partition(b"=")
        if k == b"path":
            return v.decode("utf-8")
        pos += length
    return None


def parse_members(block: bytes) -> list[tuple[str, bytes]]:
    """Parse the tar records of one sample. Raises ValueError on a truncated or corrupt record."""
    out = []
    pos, n = 0, len(block)
    long_name = None
    while pos < n:
        header = block[pos:pos + _HEADER]
        if len(header) < _HEADER:
            raise ValueError(f"truncated tar header at byte {pos}")
        if header == b"\0" * _HEADER:
            break
        try:
            info = tarfile.TarInfo.frombuf(header, "utf-8", "strict")
        except tarfile.HeaderError as e:
            raise ValueError(f"bad tar header at byte {pos} ({e})") from None
        start = pos + _HEADER
        end = start + info.size
        if end > n:
            raise ValueError(f"member {info.name!r} needs {info.size} bytes, only {n - start} left")
        data = block[start:end]
        pos = end + (-info.size) % _HEADER
        if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE):
            long_name = _pax_path(data)
            continue
        name = long_name or info.name
        long_name = None
        out.append((name, data))
    return out


def group_sample(members: list[tuple[str, bytes]]) -> tuple[str, dict[str, bytes]]:
    """Members of one sample -> (key, {field: bytes}); all must share one key."""
    key = None
    fields: dict[str, bytes] = {}
    for name, data in members:
        base = name.rsplit("/", 1)[-1]
        k, dot, field = base.partition(".")
        if not dot:
            raise ValueError(f"member {name!r} has no extension")
        if key is None:
            key = k
        elif k != key:
            raise ValueError(f"member {name!r} does not belong to sample {key!r}")
        fields[field] = data
    if key is None:
        raise ValueError("no members")
    return key, fields


def iter_tar_samples(path: str | Path):
    """Stream (key, fields) from any WebDataset-style tar, without the manifest (for tools and tests)."""
    with tarfile.open(path, "r|") as tf:
        key, fields = None, {}
        for m in tf:
            if not m.isfile():
                continue
            k, _, field = m.name.rsplit("/", 1)[-1].partition(".")
            if key is not None and k != key:
                yield key, fields
                fields = {}
            key = k
            fields[field] = tf.extractfile(m).read()
        if key is not None:
            yield key, fields


class PartsDiffer(LeapError):
    """``--shard i/n`` parts of one folder built from other inputs or settings: not one split's shards."""


def made_with(m: dict) -> dict:
    """What a manifest's samples were made from, by key (``settings.frames``, ``sources.programs``, ``targets``,
    ``split``, ``task``, ``format``): a resume and a merge of parts compare these."""
    out = {k: m.get(k) for k in ("format", "split", "task", "targets")}
    for group in ("settings", "sources"):
        out.update({f"{group}.{k}": v for k, v in (m.get(group) or {}).items()})
    return out


SOURCE_NAMES = {"annotations": "the split's annotation rows", "programs": "the programs", "verb_classes":
                "EPIC_100_verb_classes.csv", "noun_classes": "EPIC_100_noun_classes.csv"}


# build-shards' options by the ShardSettings field they set (whichever command reads the manifest: a merge of
# parts is also made by evaluate, check-shards and show, whose own --task or --split mean another thing)
SETTINGS_OPTIONS = {"split": "--split", "task": "--task", "frames": "--frames", "short_side": "--short-side",
                    "jpeg_quality": "--jpeg-quality", "max_shard_size": "--max-shard-size", "max_count": "--max-count",
                    "tau_a": "--tau-a", "tau_o": "--tau-o", "context": "--context",
                    "context_mode": "--anticipation-context", "span_frames": "--span-frames"}
# ``made_with`` keys of leap's own rules, not options (``writer.made_settings``): shards made before a rule have
# none, and a key missing there differs
RULES = {"settings.observed_end": "where the observed window ends (the segments context's rule on rgb_frames, "
                                  "changed by leap on 2026-12-06; or a video read from rgb_frames now)"}


def said(key: str) -> str:
    """A ``made_with`` key as a refusal says it: ``settings.frames`` as build-shards' ``--frames``,
    ``sources.programs`` as "the programs", ``targets`` as "the target vocabulary"; the key itself where nothing
    better is known."""
    if key in RULES:
        return RULES[key]
    group, _, name = key.partition(".")
    if group == "settings":
        return SETTINGS_OPTIONS.get(name, key)
    if group == "sources":
        return SOURCE_NAMES.get(name, f"the {name} (an input)")
    return {"targets": "the target vocabulary"}.get(key, key)


def differ_note(names: list[str]) -> str:
    """What a refusal says differs, the first six of ``names``: "(--frames differs)", "(the programs differ)",
    "(--frames, the programs differ)"."""
    shown = ", ".join(names[:6]) + (" ..." if len(names) > 6 else "")
    one = len(names) == 1 and (names[0].startswith("--") or not names[0].endswith("s"))
    return f"({shown} {'differs' if one else 'differ'})"


def programs_provenance(m: dict) -> dict | None:
    """What a manifest's program targets were made from, as a run keeps it (``provenance.json``): ``records``
    and ``valid`` of the program file, ``with_program`` (the samples that carry a target), ``made_by`` (per
    generator, ``programs.provenance.MadeBy``; null: shards of a leap before the manifest kept it),
    ``prompt_version`` and ``sha256`` (``sources.programs``). A build without a program file: 0 records, no
    generator. None: the manifest says nothing of programs at all."""
    if "programs" not in m:
        return None
    p = m.get("programs")
    with_program = (m.get("counts") or {}).get("with_program", 0)
    if not isinstance(p, dict):  # built without a program file
        return {"records": 0, "valid": 0, "with_program": with_program, "made_by": [], "prompt_version": None,
                "sha256": None}
    return {"records": p.get("records"), "valid": p.get("valid"), "with_program": with_program,
            "made_by": p.get("made_by"), "prompt_version": p.get("prompt_version"),
            "sha256": (m.get("sources") or {}).get("programs")}


LABEL_SOURCES = ("annotations", "verb_classes", "noun_classes")


def labels_provenance(m: dict) -> dict | None:
    """What a manifest's labels were made from, as a run keeps it (``provenance.json``): the hashes of the split's
    annotation rows and of the class files (``sources``); None where the manifest keeps none."""
    sources = m.get("sources") or {}
    return {k: sources.get(k) for k in LABEL_SOURCES} if any(sources.get(k) for k in LABEL_SOURCES) else None


def samples_provenance(m: dict) -> dict | None:
    """What samples a manifest's shards hold, as a run keeps it (``provenance.json``): ``count`` and ``sha256``, a
    hash of each sample's key and CRC-32 (``crc32s``) in key order, so that a sample whose bytes changed (its frames
    read again from a video downloaded again, its targets or labels made again) changes it, and how the samples are
    packed into tars does not; ``frames``, the same of their frames alone (``frames_crc32s``), so that a resume tells
    frames read again apart where the programs changed too (None: shards of a leap before it kept them). None: a
    manifest of a leap before it kept the CRC-32s (unknown)."""
    pairs, frames = [], []
    for info in m.get("shards") or []:
        keys, crcs = info.get("keys") or [], info.get("crc32s") or []
        if len(crcs) != len(keys) or None in crcs:
            return None
        pairs.extend(zip(keys, crcs))
        held = info.get("frames_crc32s")
        if frames is not None and isinstance(held, list) and len(held) == len(keys) and None not in held:
            frames.extend(zip(keys, held))
        else:
            frames = None
    return {"count": len(pairs), "sha256": _pairs_hash(pairs),
            "frames": _pairs_hash(frames) if frames is not None else None}


def _pairs_hash(pairs: list[tuple[str, int]]) -> str:
    """sha256 of (key, CRC-32) pairs, one line each in key order."""
    import hashlib

    return hashlib.sha256("".join(f"{key} {crc}\n" for key, crc in sorted(pairs)).encode()).hexdigest()


def folders_provenance(m: dict, folder: Path) -> dict:
    """What a run trains on, as ``provenance.json`` keeps it under ``train``: ``shards`` (the absolute folder),
    ``split``, ``programs``, ``labels`` and ``samples`` of a manifest loaded from ``folder``. A manifest over several
    folders (``load_folders``) gives ``shards`` as their list, ``split`` as ``train+val``, ``folders`` (each one's
    own entry), and ``programs``, ``labels`` and ``samples`` over all of them: counts added up, generators' rows
    merged, and each hash a hash of the folders' hashes in their order ("-" for a folder that has none; the samples
    of a folder without CRC-32s leave them all unknown), so that a resume compares them as it compares one."""
    import hashlib
    import os

    def one(manifest: dict, where: str | Path) -> dict:
        return {"shards": os.path.abspath(where), "split": manifest.get("split"),
                "programs": programs_provenance(manifest), "labels": labels_provenance(manifest),
                "samples": samples_provenance(manifest)}

    if not m.get("folders"):
        return one(m, folder)
    parts = [one(f["manifest"], f["folder"]) for f in m["folders"]]

    def joined(values: list) -> str | None:  # (a folder without: "-", so the others' changes still show)
        if all(v is None for v in values):
            return None
        return hashlib.sha256("\n".join(v or "-" for v in values).encode()).hexdigest()

    programs = [p["programs"] for p in parts]
    combined = None
    if all(programs):
        rows: dict = {}
        for p in programs:
            for r in p.get("made_by") or []:
                acc = rows.setdefault((r.get("backend"), r.get("model")), {**r, "records": 0, "valid": 0})
                acc["records"] += r.get("records") or 0
                acc["valid"] += r.get("valid") or 0
        made_by = (None if any(p.get("made_by") is None for p in programs) else
                   sorted(rows.values(), key=lambda r: (-r["records"], r["backend"] or "", r["model"] or "")))
        add = lambda key: (None if any(p.get(key) is None for p in programs)  # noqa: E731
                           else sum(p[key] for p in programs))
        versions = {p.get("prompt_version") for p in programs if p.get("made_by") != []} or {None}  # (none: no file)
        combined = {"records": add("records"), "valid": add("valid"), "with_program": add("with_program"),
                    "made_by": made_by, "prompt_version": versions.pop() if len(versions) == 1 else None,
                    "sha256": joined([p.get("sha256") for p in programs])}
    labels = [p["labels"] for p in parts]
    samples = [p["samples"] for p in parts]
    return {"shards": [p["shards"] for p in parts], "split": "+".join(str(p["split"]) for p in parts),
            "programs": combined,
            "labels": None if not any(labels) else {k: joined([(lab or {}).get(k) for lab in labels])
                                                    for k in LABEL_SOURCES},
            "samples": None if not all(samples) else {"count": sum(s["count"] for s in samples),
                                                      "sha256": joined([s["sha256"] for s in samples]),
                                                      "frames": None if not all(s.get("frames") for s in samples)
                                                      else joined([s["frames"] for s in samples])},
            "folders": parts}


def trained_segments(provenance: dict | None) -> tuple[set[str], list[str]]:
    """The segments a run trained on (its ``provenance.json``, as a checkpoint holds it, with the training shards of
    the parts of the run before a resume on other shards, ``earlier``) and the training shards folders they were
    read from; folders no longer there, or unreadable, are passed over (nothing known)."""
    if not isinstance(provenance, dict):
        return set(), []
    parts = [provenance, *(e for e in provenance.get("earlier") or [] if isinstance(e, dict))]
    folders: list[str] = []
    for part in parts:
        train = part.get("train")
        shards = train.get("shards") if isinstance(train, dict) else None
        for f in [shards] if isinstance(shards, str) else shards if isinstance(shards, list) else []:
            if isinstance(f, str) and f not in folders:
                folders.append(f)
    keys: set[str] = set()
    read = []
    for folder in folders:
        try:
            m, _ = load_manifest(folder)
        except (LeapError, OSError):
            continue
        keys.update(k for s in m["shards"] for k in s["keys"])
        read.append(folder)
    return keys, read


# How a part packs its samples into tars, not what the samples hold: parts may differ in them.
PACKING = frozenset({"settings.max_shard_size", "settings.max_count"})


def _what_differs(a: dict, b: dict) -> list[str]:
    """The ``made_with`` keys on which two parts' manifests disagree (not their ``PACKING``)."""
    fa, fb = made_with(a), made_with(b)
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k) and k not in PACKING)


def _merge(parts: list[dict], paths: list[Path], reference: int = 0) -> dict:
    """The merged manifest; parts made otherwise than part ``reference`` (the part just built: made from the inputs
    as they are now) are named, all of them (each was compared with part 0: the part built last, from the current
    programs, was called the odd one, and rebuilding it as told changed nothing)."""
    ref = parts[reference]
    odd = [(path, _what_differs(ref, p)) for p, path in zip(parts, paths) if p is not ref]
    odd = [(path, differ) for path, differ in odd if differ]
    if odd:  # (merged, one part's settings and vocabulary would describe samples made otherwise)
        keys = sorted({k for _, differ in odd for k in differ})
        names = ", ".join(path.name for path, _ in odd)
        indices = ", ".join(str((parts[paths.index(path)].get("part") or {}).get("index", "i")) for path, _ in odd)
        mine = (ref.get("part") or {}).get("index", "i")
        other = parts[paths.index(odd[0][0])]
        shown = []  # the values of the first few (hashes of the inputs are only named)
        for k in keys[:6]:
            a, b = made_with(ref).get(k), made_with(other).get(k)
            short = all(isinstance(v, (int, float, str, bool, type(None))) and len(str(v)) <= 20 for v in (a, b))
            shown.append(f"{said(k)}: {a!r} -> {b!r}" if short and k.startswith("settings.") else said(k))
        one = len(odd) == 1
        e = PartsDiffer(f"{'part' if one else 'parts'} {names} {'was' if one else 'were'} built from other inputs or "
                        f"settings than {paths[reference].name} " + differ_note(shown + keys[6:]),
                        path=paths[reference].parent,
                        fix=(f"run build-shards --shard i/{len(parts)} again for {'part' if one else 'parts'} "
                             f"{indices} (a part built from other programs takes these, rewriting only its shards whose samples' "
                             "programs changed; one an earlier leap built from these, hashing the program file, with "
                             "--force)" if keys == ["sources.programs"] else
                             f"rebuild {'part' if one else 'parts'} {indices} with the inputs and options of part "
                             f"{mine} (--force on --shard i/{len(parts)}), or part {mine} with "
                             f"{'its' if one else 'theirs'}, or build into another --out"))
        e.keys = keys  # (build-shards notes the parts to run again where only the programs differ)
        e.parts = [int(i) for i in indices.split(", ") if i.isdigit()]
        raise e
    first = parts[0]
    merged = dict(first)
    # the program file's summary is the same in every part (the parts agree on the file), but a part an older leap
    # built lacks made_by: the reference part's (built now), else any part's that has it (rebuilding one part as
    # told added it to that part only, and the merge kept part 0's)
    told = [p for p in (ref, *parts)
            if isinstance(p.get("programs"), dict) and p["programs"].get("made_by") is not None]
    if told:
        merged["programs"] = told[0]["programs"]
    merged["shards"] = [s for p in parts for s in p["shards"]]
    merged["skipped"] = [s for p in parts for s in p.get("skipped", [])]
    counts: dict = {}
    for p in parts:
        for k, v in p["counts"].items():
            counts[k] = counts.get(k, 0) + v if isinstance(v, int) else v
    merged["counts"] = counts
    hist: dict = {}
    for p in parts:
        for name, h in p.get("histograms", {}).items():
            acc = hist.setdefault(name, {})
            for c, v in h.items():
                acc[c] = acc.get(c, 0) + v
    merged["histograms"] = {k: dict(sorted(v.items(), key=lambda kv: int(kv[0]))) for k, v in hist.items()}
    if any("frame_sizes" in p for p in parts):
        merged["frame_sizes"] = dict(sorted({v: s for p in parts for v, s in p.get("frame_sizes", {}).items()}.items()))
    merged.pop("part", None)
    merged["parts"] = [str(p.name) for p in paths]
    return merged


_SHARD_KEYS = ("name", "count", "bytes", "sha256", "keys", "offsets", "sizes")  # what the readers use


def _read_manifest(path: Path) -> dict:
    """One manifest file, its shape checked: a hand-edited or foreign file is one error, not a KeyError later."""
    fix = "rerun leap build-shards; it rewrites the manifest"
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LeapError(f"manifest is not valid JSON ({e.msg})", path=path, fix=fix) from None
    except UnicodeDecodeError:
        raise LeapError("manifest is not UTF-8 text", path=path, fix=fix) from None
    if not isinstance(m, dict) or not isinstance(m.get("shards"), list) or not isinstance(m.get("counts", {}), dict):
        raise LeapError("not a leap shards manifest (no 'shards' list)", path=path, fix=fix)
    for i, info in enumerate(m["shards"]):
        missing = [k for k in _SHARD_KEYS if k not in info] if isinstance(info, dict) else ["all"]
        if missing:
            raise LeapError(f"shard entry lacks {', '.join(missing)}", path=path, record=f"shards[{i}]", fix=fix)
        keys = info["keys"]
        lists = [info[k] for k in ("keys", "offsets", "sizes")]  # (all in _SHARD_KEYS, checked above)
        if (not all(isinstance(v, list) for v in lists) or len({len(v) for v in lists}) != 1
                or info["count"] != len(keys)):
            raise LeapError("keys, offsets, sizes (and count) do not describe the same samples", path=path,
                            record=f"shards[{i}]", fix=fix)
        crcs = info.get("crc32s")
        if crcs is not None and not (isinstance(crcs, list) and len(crcs) == len(keys)
                                     and all(c is None or type(c) is int for c in crcs)):
            raise LeapError("crc32s is not one integer (or null) per sample", path=path, record=f"shards[{i}]", fix=fix)
    return m


def load_manifest(source: str | Path) -> tuple[dict, Path]:
    """Read ``manifest.json`` (a folder or the file itself); where only the parts written by ``--shard i/n``
    jobs exist (``manifest.shard0of4.json``...), merge them once all n are there. Returns (manifest, folder)."""
    source = Path(source)
    folder = source if source.is_dir() else source.parent
    path = source / MANIFEST if source.is_dir() else source
    if path.exists():
        return _read_manifest(path), folder
    merged = merge_parts(folder)
    if merged is None:
        named = source if source.suffix != ".json" else folder  # a folder not made yet
        raise LeapError("no shards manifest found", path=path, fix=f"build them first: {build_command(named)}")
    return merged, folder


def load_folders(sources) -> tuple[dict, Path]:
    """One manifest over one or several shards folders (``data.train`` naming the train and val shards of a
    challenge run), taken in the order of their first segments whatever the order given: each shard entry of the
    second folder on keeps its ``folder``, the counts add up, and the folder returned is the first's. Refused in one line: folders of another task, target vocabulary or sample
    settings (their split, their inputs and how their tars are packed may differ), and a segment in two of them
    (it would be trained on twice per epoch)."""
    sources = [sources] if isinstance(sources, (str, Path)) else list(sources)
    loaded = [load_manifest(s) for s in sources]
    if len(loaded) == 1:
        return loaded[0]
    # in an order of their own, that of their first segments (no segment is in two): the epoch's order, and the
    # hashes of a run's provenance, do not depend on the order the list names them in, nor on where they are
    loaded.sort(key=lambda mf: (min((k for s in mf[0]["shards"] for k in s["keys"]), default="\uffff"),
                                str(mf[1])))
    first, folder = loaded[0]
    shape = lambda m: {k: v for k, v in made_with(m).items()  # noqa: E731
                       if k not in PACKING and k not in ("split", "settings.split", "settings.sampling")
                       and not k.startswith("sources.")}
    seen: dict[str, Path] = {}
    for m, other in loaded:
        if m.get("task") != first.get("task"):
            raise LeapError(f"these shards are for {m.get('task')}, those in {folder} for {first.get('task')}",
                            path=other, fix="train on folders of one task (leap build-shards --task)")
        differ = sorted(k for k in shape(first).keys() | shape(m).keys() if shape(first).get(k) != shape(m).get(k))
        refusal = (f"these shards were built otherwise than {folder} {differ_note([said(k) for k in differ])}, and "
                   "one run trains on samples of one kind")
        if differ and all(k in RULES for k in differ):  # (no option builds a rule of an earlier leap again)
            older, made = (folder, first) if differ[0] not in shape(first) else (other, m)
            parts = max(part_counts(older), default=0)  # (a part rebuilt beside the others keeps their rule)
            raise LeapError(refusal, path=other,
                            fix=f"build {older} again with this leap (a leap before the rule built it): "
                                + (f"delete it, then {build_command(older, '--shard', f'i/{parts}', manifest=made)}"
                                   " for each part" if parts else build_command(older, "--force", manifest=made)))
        options = [k.removeprefix("settings.") for k in differ]
        if differ and all(k.startswith("settings.") and o in SETTINGS_OPTIONS for k, o in zip(differ, options)):
            # (options only: the command that builds this folder again with the first folder's values of them)
            theirs = {o: (first.get("settings") or {}).get(o) for o in options}
            parts = max(part_counts(other), default=0)
            again = (build_command(other, "--shard", f"i/{parts}", "--force", manifest=m, settings=theirs)
                     + " for each part" if parts else build_command(other, "--force", manifest=m, settings=theirs))
            raise LeapError(refusal, path=other,
                            fix=f"build {other} again with the first folder's options: {again}")
        if differ:
            raise LeapError(refusal, path=other,
                            fix="build them with the same build-shards options as the first folder (val and test "
                                "take the train shards' target vocabulary when those are built first)")
        for s in m["shards"]:
            for key in s["keys"]:
                if key in seen:
                    raise LeapError(f"segment {key} is in two of the training folders ({seen[key]} and {other})",
                                    path=other, record=key, fix="name each shards folder once, and folders of "
                                                                "different splits")
                seen[key] = other
    merged = dict(first)
    merged["shards"] = [s if f == folder else {**s, "folder": str(f)} for m, f in loaded for s in m["shards"]]
    merged["skipped"] = [s for m, _ in loaded for s in m.get("skipped", [])]
    counts: dict = {}
    for m, _ in loaded:
        for k, v in (m.get("counts") or {}).items():
            counts[k] = counts.get(k, 0) + v if isinstance(v, int) and not isinstance(v, bool) else v
    merged["counts"] = counts
    merged["folders"] = [{"folder": str(f), "manifest": m} for m, f in loaded]
    return merged, folder


def _begun(folder: Path, part: str | None = None) -> dict | None:
    """The first progress record in ``folder`` that keeps its build's settings, those of the ``--shard`` part of
    suffix ``part`` first (parts may pack their tars otherwise); None: no build begun there, or records of a leap
    before 2026-12-06, which kept none."""
    files = sorted(Path(folder).glob(".progress*.jsonl"))
    if part is not None:
        files.sort(key=lambda p: p.name != f".progress{part}.jsonl")
    for p in files:
        try:
            with open(p, encoding="utf-8", errors="replace") as f:
                for line in f:  # (the first record that keeps them: a build an earlier leap began has none)
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(rec, dict) and isinstance(rec.get("settings"), dict):
                        return rec
        except OSError:
            continue
    return None


def begun_options(folder: Path, part: str | None = None) -> list[str] | None:
    """The build-shards options of a build begun in ``folder``, as its progress records keep them: its settings
    not at their default (``--max-count 2``: its command without them is refused) and the inputs given to it
    (``--data``, ``--programs``, ...: without them the command reads the work directory's); None where no build
    was begun there, or its records keep no settings (a leap before 2026-12-06)."""
    return _options_of(_begun(folder, part))


def begun_packing(folder: Path, part: str = "") -> dict:
    """How the build begun in ``folder`` packs its tars (``PACKING`` by ``ShardSettings`` name: {"max_count": 2,
    "max_shard_size": 1073741824}), as its progress records keep it (``_begun``: the ``--shard`` part of suffix
    ``part`` first, else another part's), else its manifest (a leap before 2026-12-06 kept no settings in its
    records); {} where neither is there: a re-run that gives neither option packs as the folder was begun."""
    rec = _begun(folder, part)
    settings = rec["settings"] if rec is not None else None
    for path in () if settings is not None else (Path(folder) / manifest_name(part), Path(folder) / MANIFEST):
        try:
            settings = json.loads(path.read_text(encoding="utf-8")).get("settings")
        except (OSError, ValueError, AttributeError):  # (a damaged manifest: the run says so itself)
            continue
        if isinstance(settings, dict):
            break
    names = sorted(k.removeprefix("settings.") for k in PACKING)
    return {k: v for k in names if isinstance(settings, dict) and type(v := settings.get(k)) is int}


def _inputs(rec: dict) -> dict:
    """The inputs a progress record keeps (``--data``, ...; none in a record of a leap before 2026-12-06)."""
    return rec["inputs"] if isinstance(rec.get("inputs"), dict) else {}


def _options_of(rec: dict | None) -> list[str] | None:
    """``begun_options`` of a progress record (``_begun``)."""
    from dataclasses import asdict

    from leap_cli.shards.writer import ShardSettings

    if rec is None:
        return None
    settings = rec["settings"]
    default = asdict(ShardSettings(split="train"))
    unused = {"split", "task"}  # (the command names them) and what this build does not read (refused if given)
    if settings.get("task") != "anticipation":
        unused |= {"tau_a", "tau_o", "context", "context_mode", "span_frames"}
    else:
        unused.add("tau_o" if settings.get("context_mode", "clips") == "clips" else "span_frames")
    words = []
    for name, option in SETTINGS_OPTIONS.items():
        if name not in unused and name in settings and settings[name] != default.get(name):
            words += [option, shell_word(str(settings[name]))]
    for option, value in _inputs(rec).items():
        if option != "--workdir":  # (build_command names it)
            words += [option, shell_word(str(value))]
    return words


# What a split's build shares with another split's in the same work directory: the dataset and its annotations,
# and the settings that make its samples (not their packing, nor the split's own programs and targets)
SHARED_INPUTS = ("--data", "--annotations")
SHARED_SETTINGS = ("frames", "short_side", "jpeg_quality")
SHARED_ANTICIPATION = ("tau_a", "tau_o", "context", "context_mode", "span_frames")


def _sibling_options(folder: Path, anticipation: bool) -> list[str] | None:
    """For a split's default folder where no build began, the options another split's build of the same task began
    with in the same ``shards/`` folder (the training split's first) that the split's build should share
    (``SHARED_INPUTS``, ``SHARED_SETTINGS``): `leap build-shards --split val` without the training build's
    ``--data`` read the work directory's dataset, and without its ``--frames`` made samples the run's are not."""
    suffix = "-anticipation" if anticipation else ""
    for split in ("train", "val", "test"):
        sibling = folder.parent / f"{split}{suffix}"
        if sibling == folder or (rec := _begun(sibling)) is None:
            continue
        settings = {k: v for k, v in rec["settings"].items()
                    if k in SHARED_SETTINGS + (SHARED_ANTICIPATION if anticipation else ())}
        return _options_of({"settings": {**settings, "task": rec["settings"].get("task")},
                            "inputs": {k: v for k, v in _inputs(rec).items() if k in SHARED_INPUTS}})
    return None


def build_command(folder: Path, *extra: str, part: str | None = None, manifest: dict | None = None,
                  settings: dict | None = None, inputs: dict | None = None) -> str:
    """The ``leap build-shards`` command that writes ``folder`` (WORKDIR/shards/SPLIT[-anticipation] by default),
    with the options of a build begun there (``begun_options``; ``part``: the suffix of the ``--shard`` part it is
    for), else of the folder's ``manifest`` where given (an earlier leap's records keep none; its inputs are not
    known), those of ``settings`` (``ShardSettings`` names) in their place, ``inputs`` (``--programs``: path, as a
    progress record keeps them) in place of the inputs it began with, and ``extra`` words."""
    folder = Path(folder)
    rec = _begun(folder, part)  # (read once)
    if rec is None and isinstance((manifest or {}).get("settings"), dict):
        rec = {"settings": manifest["settings"]}
    if rec is not None and settings:
        rec = {**rec, "settings": {**rec["settings"], **settings}}
    if rec is not None and inputs is not None:
        rec = {**rec, "inputs": inputs}
    begun = _options_of(rec)
    m = re.fullmatch(r"(train|val|test)(-anticipation)?", folder.name)
    if rec is None and m and folder.parent.name == "shards" and not any(folder.glob(".progress*.jsonl")):
        begun = _sibling_options(folder, bool(m.group(2)))
    more = "".join(f" {w}" for w in [*(begun or []), *extra])
    if begun is None and any(folder.glob(".progress*.jsonl")):
        more += " (with the options of the build begun there)"
    if m and folder.parent.name == "shards":
        return (f"leap build-shards --workdir {shell_word(folder.parent.parent)} --split {m.group(1)}"
                + (" --task anticipation" if m.group(2) else "") + more)
    if rec is not None:  # (another --out: its split, task and work directory as the build kept them)
        made, inputs = rec["settings"], _inputs(rec)
        return ("leap build-shards" + (f" --workdir {shell_word(str(inputs['--workdir']))}" if "--workdir" in inputs
                                       else "")
                + f" --split {shell_word(str(made.get('split')))}"
                + (" --task anticipation" if made.get("task") == "anticipation" else "")
                + f" --out {shell_word(folder)}{more}")
    return f"leap build-shards --split SPLIT --out {shell_word(folder)}{more} (or give the folder that holds them)"


def part_counts(folder: str | Path) -> dict[int, dict[int, Path]]:
    """``--shard i/n`` part manifests in ``folder``: {n: {i: path}}."""
    out: dict[int, dict[int, Path]] = {}
    for index, count, p in shard_parts(Path(folder) / "manifest.json"):
        out.setdefault(count, {})[index] = p
    return out


def check_part_count(folder: str | Path, count: int) -> None:
    """Refuse a folder that holds ``--shard`` parts of another count than ``count`` (1: no parts): merged, the
    parts of /2 and /3 hold every sample of their overlap twice."""
    # parts done (their manifests) and parts begun or still running (their progress files, made when they start:
    # an unsharded build beside a part that had written no tar yet left the folder holding both)
    begun = {count for _, count, _ in shard_parts(Path(folder) / ".progress.jsonl")}
    other = sorted(n for n in set(part_counts(folder)) | begun if n != count)
    if count > 1 and (Path(folder) / ".progress.jsonl").exists():  # an unsharded build: its tars would stay beside
        raise LeapError(f"the folder holds a build without --shard, not of i/{count} parts", path=folder,
                        fix="build the parts into another --out (or delete the folder to start over)")
    if other:
        raise LeapError(f"the folder holds shards of --shard i/{other[0]} parts"
                        + (f" (and i/{', i/'.join(map(str, other[1:]))})" if other[1:] else "")
                        + (f", not of i/{count}" if count > 1 else ""), path=folder,
                        fix=f"finish the split with --shard i/{other[0]} as begun, or build into another --out "
                            "(or delete the folder to start over)")


def merge_parts(folder: str | Path, current: str | None = None) -> dict | None:
    """The manifest of all ``--shard i/n`` parts in ``folder`` (None when there are none). A missing part is
    an error naming it, and so are parts of two counts, and parts made otherwise than ``current`` (the name of
    the part manifest just written; else the first)."""
    folder = Path(folder)
    counts = part_counts(folder)
    if not counts:
        return None
    total = max(counts)
    check_part_count(folder, total)
    found = counts[total]
    missing = [i for i in range(total) if i not in found]
    if missing:
        raise LeapError(f"parts {missing} of {total} are missing", path=folder,
                        fix=f"run {build_command(folder, '--shard', f'i/{total}')} for the missing parts")
    ordered = [found[i] for i in range(total)]
    names = [p.name for p in ordered]
    return _merge([_read_manifest(p) for p in ordered], ordered, names.index(current) if current in names else 0)


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a baseline or progressive JPEG, from its SOF header (nothing decoded)."""
    at = 2
    while at + 9 <= len(data):
        if data[at] != 0xFF:
            break
        marker = data[at + 1]
        if marker in (0xFF, 0x01) or 0xD0 <= marker <= 0xD7:
            at += 1 if marker == 0xFF else 2
            continue
        length = int.from_bytes(data[at + 2:at + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return int.from_bytes(data[at + 7:at + 9], "big"), int.from_bytes(data[at + 5:at + 7], "big")
        at += 2 + length
    raise ValueError("not a JPEG with a frame header")


def read_sample_at(f: io.BufferedReader, offset: int, size: int, crc32: int | None = None) -> bytes:
    """One sample's bytes; ``crc32`` (the manifest's, when it has one) catches bytes changed in place, which a
    JPEG decoder would mostly decode without a word (~0.1 ms for a 200 kB sample; decoding its JPEGs costs far more)."""
    f.seek(offset)
    data = f.read(size)
    if len(data) < size:
        raise ValueError(f"shard ends {size - len(data)} bytes early (truncated)")
    if crc32 is not None and zlib.crc32(data) != crc32:
        raise ValueError("the sample's bytes differ from the manifest's CRC-32 (changed on disk or in a copy)")
    return data


def sample_crc(info: dict, i: int) -> int | None:
    """The manifest's CRC-32 of sample ``i`` of shard ``info`` (None in manifests written before leap stored them)."""
    crcs = info.get("crc32s")
    return crcs[i] if crcs and i < len(crcs) else None
