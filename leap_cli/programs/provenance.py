"""Which generator made program records, said one way wherever leap says it: ``leap show``'s tree and page,
validate-programs' report, build-shards' manifest (``programs.made_by``), a run's ``provenance.json`` and
evaluate's ``metrics.json`` (``meta.provenance``).

A generator is the record's ``provenance.backend`` and ``provenance.model``: ``offline offline-v5`` (the offline
generator and its version), ``openai gpt-4o-mini``, ``openai-batch gpt-4o``; ``?`` for what a record does not
say (a record written by hand, or by a leap before provenance was kept).
"""

from __future__ import annotations

import json
from pathlib import Path

RUN_PROVENANCE = "provenance.json"  # in runs/NAME: what the run was trained on (train.loop.record_provenance)


def clip_hash_of(text: str | None, segment) -> str:
    """A program record's ``provenance.clip_hash``: what it was made from besides the output's settings, the
    descriptor record's ``text`` as extract wrote it (None for narration-only programs) and the ``segment``'s
    annotation (an ``epic.annotations.Segment``; None: not in the split). generate-programs keeps it; build-shards
    compares it with the descriptors of now."""
    from leap_cli.io import stable_hash

    return stable_hash([text, None if segment is None else segment.annotation()])[:16]


def descriptor_settings(descriptors: str | Path) -> dict | None:
    """The settings ``descriptors`` (extract's output) was made with, as a program file's settings keep them
    (``descriptors``): without the split and the model files' identities. None: not known. Raises as
    ``io.stored_settings`` does (parts merged from other settings: ``MixedParts``)."""
    from leap_cli.io import stored_settings

    extracted = stored_settings(descriptors)
    if extracted is not None:
        extracted.pop("split", None)
        extracted.pop("files", None)  # (the model files' identities: extract's own check of a copy or an edit)
    return extracted


def made_by(record) -> tuple[str | None, str | None]:
    """(backend, model) of a program record; None for what it does not say (or says as no string)."""
    prov = record.get("provenance") if isinstance(record, dict) else None
    prov = prov if isinstance(prov, dict) else {}
    backend, model = prov.get("backend"), prov.get("model")
    return (backend if isinstance(backend, str) and backend else None,
            model if isinstance(model, str) and model else None)


def generator_text(backend: str | None, model: str | None) -> str:
    """``openai gpt-4o-mini``; ``?`` for an unknown backend, nothing for an unknown model."""
    return f"{backend or '?'} {model or ''}".rstrip()


class MadeBy:
    """Counts of program records per generator: ``add(record, valid)`` each, then ``summary()``."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str | None, str | None], list[int]] = {}

    def add(self, record, valid: bool) -> None:
        c = self._counts.setdefault(made_by(record), [0, 0])
        c[0] += 1
        c[1] += bool(valid)

    def summary(self) -> list[dict]:
        """``[{"backend", "model", "records", "valid"}]``, the most records first (null: not said)."""
        rows = [{"backend": b, "model": m, "records": n, "valid": v} for (b, m), (n, v) in self._counts.items()]
        return sorted(rows, key=lambda r: (-r["records"], r["backend"] or "", r["model"] or ""))

    def backends(self) -> dict[str, int]:
        """Records per backend (``?``: not said), as validate-programs' report has counted them."""
        out: dict[str, int] = {}
        for (b, _), (n, _) in self._counts.items():
            out[b or "?"] = out.get(b or "?", 0) + n
        return out


def made_by_text(rows: list[dict] | None) -> str:
    """``openai gpt-4o-mini: 230 valid of 240; offline offline-v5: 8 valid of 8``; ``unknown`` for None."""
    if rows is None:
        return "unknown"
    if not rows:
        return "none"
    return "; ".join(f"{generator_text(r.get('backend'), r.get('model'))}: {r.get('valid', '?')} valid of "
                     f"{r.get('records', '?')}" for r in rows)


def prompt_version(programs_path: str | Path | None) -> int | None:
    """The prompt format version (``programs.prompt.PROMPT_VERSION``) a program file's LLM records were made with,
    from its settings file (``FILE.settings.json``, or its ``--shard`` parts' where they agree); None for the
    offline generator (it has no prompt) and where no settings file says it."""
    from leap_cli.errors import LeapError
    from leap_cli.io import stored_settings

    if programs_path is None:
        return None
    try:
        settings = stored_settings(programs_path) or {}
    except LeapError:  # (a damaged settings file, parts made otherwise: not this stage's to refuse)
        return None
    version = settings.get("prompt_version")
    return version if isinstance(version, int) and not isinstance(version, bool) else None


def programs_text(summary: dict | None) -> str:
    """One shards folder's programs (``shards.format.programs_provenance``) as a line: who made them, how many
    were valid, the prompt version."""
    if summary is None:
        return "unknown (shards built by a leap before the manifest said it)"
    if summary.get("records") == 0 and summary.get("made_by") == []:
        return "none (the shards were built without a program file)"
    text = made_by_text(summary.get("made_by"))
    if summary.get("made_by") is None:
        text = f"{summary.get('valid', '?')} valid of {summary.get('records', '?')}, made by unknown (shards built " \
               "by a leap before the manifest said it: build-shards again adds it, rebuilding nothing; for shards " \
               "built in --shard parts, one part's command again)"
    if summary.get("prompt_version") is not None:
        text += f", prompt v{summary['prompt_version']}"
    return text


def read_run_provenance(run_dir: str | Path) -> dict | None:
    """A run's ``provenance.json`` (None: a run of an earlier leap, or a file that is not JSON)."""
    try:
        held = json.loads((Path(run_dir) / RUN_PROVENANCE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return held if isinstance(held, dict) else None


def run_programs_text(provenance: dict | None) -> str:
    """A run's ``provenance.json`` as one line: the training programs, and the validation programs where another
    generator or prompt made them."""
    if not isinstance(provenance, dict) or not isinstance(provenance.get("train"), dict):
        return "unknown (a run of a leap before runs kept provenance.json)"
    train = provenance["train"].get("programs")
    text = programs_text(train)
    val = (provenance.get("val") or {}).get("programs") if isinstance(provenance.get("val"), dict) else None
    if val is not None and _generators(val) != _generators(train):
        text += f" (validation: {programs_text(val)})"
    earlier = [e for e in provenance.get("earlier") or [] if isinstance(e, dict) and isinstance(e.get("train"), dict)]
    # (a resume on shards of other programs: the steps before it were trained on these; an entry a resume on other
    # labels or samples left, of the programs that came next too, is not another program set)
    sha = lambda e: ((e.get("train") or {}).get("programs") or {}).get("sha256")  # noqa: E731
    others = [e for e, after in zip(earlier, earlier[1:] + [provenance]) if sha(e) != sha(after)]
    if others:
        text += "; before a resume on other programs: " + "; then ".join(programs_text(e["train"].get("programs"))
                                                                          for e in others)
    unknown = [e["unknown"] for e in provenance.get("earlier") or [] if isinstance(e, dict)
               and isinstance(e.get("unknown"), str)]  # (a resume of a checkpoint of a leap before the file)
    if unknown:
        text += f"; before a resume: unknown ({unknown[0]})"
    return text


def _generators(summary: dict | None) -> object:
    """What made a folder's programs, without the counts: whether train and val were made alike."""
    if summary is None:
        return None
    rows = summary.get("made_by")
    return (None if rows is None else sorted((r.get("backend") or "", r.get("model") or "") for r in rows),
            summary.get("prompt_version"))
