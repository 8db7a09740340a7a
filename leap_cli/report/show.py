"""``leap show``: one segment's program and descriptors, in the terminal or as a self-contained HTML page."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from leap_cli.common import SPLITS, check_record_file, dataset_root, descriptor_problem, program_record_problem
from leap_cli.errors import LeapError
from leap_cli.io import atomic_write_text, shard_parts
from leap_cli.programs.provenance import generator_text, made_by
from leap_cli.report.html import esc, jpeg_data_uri, page
from leap_cli.report.program_view import conds_html, flatten_for_storyboard, steps_html, sub_action_text

log = logging.getLogger(__name__)
COMPONENTS = ("narration", "audio", "camera", "objects", "hands")
_STAGES = {"programs": "leap generate-programs", "descriptors": "leap extract"}  # what writes each folder's records


@dataclass
class SegmentView:
    narration_id: str
    split: str | None
    program: dict | None  # the program record
    descriptor: dict | None  # the descriptor record
    files: list[Path] = field(default_factory=list)  # the record files searched (a page must not replace one)
    status_note: str | None = None  # how the program's status was reached, where it is not the re-checked one


def record_of(path: Path, narration_id: str, stage: str = "the stage that wrote it") -> dict | None:
    """The (last) record of ``narration_id`` in a JSONL file, read as a stream: only the lines that hold the id
    are parsed (a day's file is ~10^5 records: parsing them all cost seconds and a gigabyte). A damaged line whose
    ``narration_id`` is the id (a write cut short, an edit) is a LeapError naming it, unless a good line of the id
    comes after it (a resumed ``stage`` appends the record again): "not found" sent the user to check the id."""
    if not Path(path).exists():
        raise LeapError("file not found", path=path, fix="check the path or run the stage that writes it")
    # as json.dumps writes the id by default, and as leap's JSONL writer does (ensure_ascii=False)
    needles = {json.dumps(narration_id).encode(), json.dumps(narration_id, ensure_ascii=False).encode()}
    its_key = re.compile(rb'"narration_id"\s*:\s*(?:' + b"|".join(map(re.escape, needles)) + rb")")
    found = damaged = None
    with open(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            if any(n in raw for n in needles):
                try:
                    r = json.loads(raw)
                except (ValueError, RecursionError):
                    if its_key.search(raw):  # (another record's damaged line that mentions the id is not its)
                        damaged = (i, raw.endswith(b"\n"))
                    continue
                if isinstance(r, dict) and r.get("narration_id") == narration_id:
                    found, damaged = r, None
    if damaged is not None:
        line, whole = damaged
        raise LeapError(f"line {line}, which holds {narration_id}, is damaged: not valid JSON"
                        + ("" if whole else " (a write cut short)"), path=path, record=narration_id,
                        fix=(f"delete that line and rerun {stage}" if whole else f"rerun {stage}, which cuts that "
                             "line off")
                        + ": it redoes that record")
    return found


def _candidates(folder: Path, split: str | None) -> list[tuple[str, Path]]:
    """(split, file) of the record files of ``split`` (every split when None) in ``folder``, in search order."""
    found = []
    for sp in [split] if split else SPLITS:
        whole = folder / f"{sp}.jsonl"
        found += [(sp, f) for f in ([whole] if whole.exists() else []) + [p for _, _, p in shard_parts(whole)]]
    return found


def _find(folder: Path, narration_id: str, split: str | None) -> tuple[dict | None, str | None]:
    for sp, f in _candidates(folder, split):
        r = record_of(f, narration_id, _STAGES.get(folder.name, "the stage that wrote it"))
        if r is not None:
            return r, sp
    return None, None


def load_segment(workdir: Path, narration_id: str, *, split: str | None = None,
                 programs: Path | None = None, descriptors: Path | None = None,
                 data: Path | None = None, annotations: Path | None = None) -> SegmentView:
    """Find a segment's program and descriptor records under the work directory (or in the given files); the
    program is checked again against DATA's annotations (``--data``, default WORKDIR/kitchen; ``--annotations``)
    where they are."""
    def search(given: Path | None, folder: str) -> tuple[dict | None, str | None]:
        if given:
            return record_of(given, narration_id, _STAGES[folder]), split
        return _find(workdir / folder, narration_id, split)

    for given, kind in ((programs, "program"), (descriptors, "descriptor")):
        if given and Path(given).is_file():
            check_record_file(given, kind)

    prog, sp = search(programs, "programs")
    desc, sp2 = search(descriptors, "descriptors")
    if prog is not None and program_record_problem(prog):
        raise LeapError(f"malformed program record: {program_record_problem(prog)}",
                        path=programs or workdir / "programs", record=narration_id,
                        fix="fix or delete that line (leap generate-programs writes a deleted record again)")
    if desc is not None and (problem := descriptor_problem(desc) or _component_problem(desc)):
        problem, fix = problem if isinstance(problem, tuple) else (f"malformed descriptor record: {problem}",
                                                                   "rerun leap extract for that segment")
        raise LeapError(problem, path=descriptors or workdir / "descriptors", record=narration_id, fix=fix)
    if prog is None and desc is None and split and not (programs or descriptors):
        elsewhere = _find(workdir / "programs", narration_id, None)[1] or _find(workdir / "descriptors", narration_id,
                                                                                None)[1]
        if elsewhere:
            raise LeapError(f"{narration_id} is a segment of the {elsewhere} split, not {split}", path=workdir,
                            record=narration_id, fix=f"pass --split {elsewhere}, or leave --split out")
    if prog is None and desc is None:
        raise LeapError(f"no program or descriptor record for {narration_id}", path=workdir, record=narration_id,
                        fix="check the narration id, --workdir, or run `leap extract` / `leap generate-programs` first")
    files = [Path(f) for f in (programs, descriptors) if f] + [
        f for folder, given in (("programs", programs), ("descriptors", descriptors)) if not given
        for _, f in _candidates(workdir / folder, split)]
    split = sp or sp2 or _split_of_files(programs, descriptors)
    said: list[str] = []
    program, note = _drawable(prog, lambda r: _recheck(r, workdir, data, split, said, annotations))
    note = "; ".join(filter(None, [note, *said])) or None
    return SegmentView(narration_id, split, program, desc, files, note)


def _component_problem(descriptor: dict) -> str | None:
    """What the views cannot draw of a descriptor's components: a status that is no string (its colour is looked
    up by it), data that is no object (the narration is read from it)."""
    for name, comp in descriptor.get("components", {}).items():
        if not isinstance(comp.get("status"), (str, type(None))):
            return f"components.{name}.status is a {type(comp['status']).__name__}, not a string"
        if not isinstance(comp.get("data"), (dict, type(None))):
            return f"components.{name}.data is a {type(comp['data']).__name__}, not an object"
    return None


def _split_of_files(*paths: Path | None) -> str | None:
    """The split a record file's name says (``val.jsonl``, ``train.shard0of2.jsonl``), else None."""
    from leap_cli.common import SPLIT_NAMES, normalize_split

    names = {normalize_split(p.name.split(".")[0]) for p in paths if p and p.name.split(".")[0].lower() in SPLIT_NAMES}
    return names.pop() if len(names) == 1 else None


def _recheck(record: dict, workdir: Path, data: Path | None, split: str | None,
             said: list[str] | None = None, annotations: Path | None = None) -> tuple[str, list[dict]] | None:
    """(status, findings) as validate-programs gives them, with the split's labels where the annotations have the
    split; None without the class files. A record that is no segment of the split is said so in ``said`` (it was
    shown as plainly valid, its labels never checked)."""
    from leap_cli.epic.annotations import NOUN_CLASSES, VERB_CLASSES, Annotations
    from leap_cli.epic.layout import DatasetLayout
    from leap_cli.programs.report import recheck

    try:  # (where the stages find them: ROOT/annotations, or beside EPIC's download folder)
        ann_dir = DatasetLayout.open(dataset_root(workdir, data), annotations).annotations_dir
    except LeapError:
        ann_dir = Path(annotations) if annotations else dataset_root(workdir, data) / "annotations"
    if not ((ann_dir / VERB_CLASSES).exists() and (ann_dir / NOUN_CLASSES).exists()):
        if said is not None:  # (which folder: "(--data)" did not say the default one was not there)
            said.append(f"no EPIC class files in {ann_dir}"
                        + ("" if data or annotations else ": pass --data ROOT or --annotations DIR"))
        return None
    ann = Annotations(ann_dir)
    segments = None
    if split and ann.has_split(split):  # its row alone (the split's other 67k are not needed)
        seg = ann.segment(split, record["narration_id"])
        segments = {seg.narration_id: seg} if seg is not None else {}
    if segments is not None and record["narration_id"] not in segments and said is not None:
        said.append(f"not a segment of the {split} split in the annotations: its labels were not checked")
    return recheck(record, ann.verbs, ann.nouns, segments)


def _drawable(record: dict | None, recheck) -> tuple[dict | None, str | None]:
    """The program record as the views can draw it, and a note on its status. ``recheck(record)`` gives (status,
    findings) as validate-programs does, or None where it cannot (no class files): the stored status is then
    labelled as such. A program that does not have the schema's shape (an LLM's invalid reply is kept as it came)
    is shown as its findings, not as a tree."""
    if record is None:
        return None, None
    from leap_cli.programs.schema import validate_program

    stored = record["status"]
    checked = recheck(record)
    if checked is None:
        status, errors = stored, list(record.get("errors") or [])
        note = "as stored, not re-checked"
    else:
        (status, errors), note = checked, None
    program = record.get("program")
    malformed = program is not None and validate_program(program)
    if malformed:
        errors = [f.to_dict() for f in malformed[:10]] + errors
        program = None
        status = "invalid" if status == "valid" else status
        note = "a malformed program: not of the schema's shape"
    if status != stored:
        note = "; ".join(filter(None, [f"stored as {stored}", note]))
    unique = list({(e["pointer"], e["message"]): e for e in errors}.values())  # a finding stored and found again
    return {**record, "program": program, "status": status, "errors": unique}, note


def narration_of(view: SegmentView) -> str:
    """The segment's narration: its program's action, else its descriptor's narration component ("" if none)."""
    action = ((view.program or {}).get("program") or {}).get("action") or {}
    d = view.descriptor or {}
    return action.get("narration") or (d.get("components", {}).get("narration", {}).get("data", {}) or {}).get(
        "narration", "")


def no_program_text(split: str | None) -> str:
    """Why a segment has no program record, and what makes one (the test split's: an LLM's only, and nothing
    needs them; the offline backend refuses that split, so "run leap generate-programs" could not be followed)."""
    if split == "test":
        return ("no program record: test programs come from an LLM only (leap generate-programs --split test "
                "--backend openai), and nothing needs them: build-shards, training and submission run without")
    return "no program record yet (run `leap generate-programs`)"


def where_when(descriptor: dict | None) -> str:
    """The descriptor's video and times, "?" for what it does not say."""
    d = descriptor or {}
    times = "-".join(f"{d[k]:.2f}" if k in d else "?" for k in ("start", "stop"))
    return f"video {d.get('video_id', '?')}, {times} s"


def keyframes(data: Path, video_id: str, start: float, stop: float, count: int = 6,
              short_side: int = 160, why: list[str] | None = None, annotations: Path | None = None
              ) -> list[tuple[float, "object"]]:
    """(time, RGB frame) pairs evenly spaced over [start, stop] (the timing rule picks the frames), at short side
    ``short_side`` or the source's own size where that is smaller (never upscaled); empty when the video cannot be
    read or the window is not inside it (the reason appended to ``why``)."""
    from leap_cli.epic.layout import DatasetLayout
    from leap_cli.epic.timing import MP4, RGB_FRAMES, FrameClock
    from leap_cli.media.video import open_video, stored_side

    try:
        layout = DatasetLayout.open(data, annotations)
        fps = layout.annotations().fps(video_id)
        with open_video(layout, video_id, fps) as reader:
            kind = MP4 if layout.video_path(video_id) is not None else RGB_FRAMES
            window = FrameClock(kind, fps, reader.num_frames).window(start, stop, count)
            if not window.inside:
                log.warning("no keyframes for %s: %s", video_id, window.reason)
                if why is not None:
                    why.append(window.reason)
                return []
            frames = reader.read_frames(list(window.frames),
                                        short_side=stored_side(reader.width, reader.height, short_side))
        return list(zip(window.times, frames))
    except LeapError as e:
        log.warning("no keyframes for %s: %s", video_id, e.one_line())
        if why is not None:
            why.append(e.message)  # (the page names no local path)
        return []


def segment_html(view: SegmentView, frames: list[tuple[float, object]], no_frames: str | None = None) -> str:
    """The page; ``no_frames``: why it has no keyframes."""
    d, p = view.descriptor or {}, view.program or {}
    program = p.get("program") or {}
    said = narration_of(view)
    title = f"{view.narration_id}: {said}" if said else view.narration_id  # (test segments have no narration)
    body = [f"<h1>{esc(title)}</h1><p class='muted'>{esc(where_when(view.descriptor))}, split {esc(view.split or '?')}"]
    if p:
        body.append(f" &middot; program <span class='tag {esc(p['status'])}'>{esc(p['status'])}</span> "
                    + (f"<span class='muted'>({esc(view.status_note)})</span> " if view.status_note else "")
                    + f"from {esc(generator_text(*made_by(p)))}")
    body.append("</p>")
    if not p:
        body.append(f"<p><b>No program record</b> for this segment ({esc(no_program_text(view.split))}).</p>")
    if not d:
        body.append("<p><b>No descriptor record</b> for this segment (run <code>leap extract</code>).</p>")
    if not frames and no_frames:
        body.append(f"<p class='muted'>No keyframes: {esc(no_frames)}.</p>")
    if frames:
        body.append("<h2>Keyframes</h2><div class='frames'>" + "".join(
            f"<figure><img src='{jpeg_data_uri(f)}' alt='frame at {t:.2f} s'><figcaption>{t:.2f} s</figcaption></figure>"
            for t, f in frames) + "</div>")
    if program:
        subs = flatten_for_storyboard(program.get("steps"))
        body.append("<h2>Storyboard</h2><p class='muted'>Sub-actions in execution order."
                    + (" Programs carry no step times, so each card shows the keyframe of an even share of the segment "
                       "(&asymp;)." if frames else "") + "</p><div class='board'>")
        for i, (s, ctx) in enumerate(subs):
            img = ""
            if frames:
                t, f = frames[min(len(frames) - 1, int((i + 0.5) * len(frames) / max(1, len(subs))))]
                img = f"<img src='{jpeg_data_uri(f)}' alt='step {i + 1}'><div class='muted'>&asymp; {t:.2f} s</div>"
            body.append(f"<div class='card'>{img}<h4>{i + 1}. {esc(sub_action_text(s))}</h4>"
                        + (f"<div class='muted'>{esc(ctx)}</div>" if ctx else "")
                        + f"<div>pre: {conds_html(s.get('pre'))}</div><div>post: {conds_html(s.get('post'))}</div>"
                        + (f"<div class='muted'>{esc(s['purpose'])}</div>" if s.get("purpose") else "") + "</div>")
        body.append("</div><h2>Program</h2>"
                    f"<div>pre: {conds_html(program.get('pre'))}</div>{steps_html(program.get('steps'))}"
                    f"<div>post: {conds_html(program.get('post'))}</div>")
    if p.get("errors"):
        heading = "Why it failed" if p["status"] == "failed" else "Validation findings"
        body.append(f"<h2>{heading}</h2><table><tr><th>where (JSON pointer)</th><th>message</th></tr>" + "".join(
            f"<tr><td>{esc(e['pointer'] or '(the record)')}</td><td>{esc(e['message'])}</td></tr>" for e in p["errors"])
            + "</table>")
    if d:
        body.append("<h2>Descriptors</h2><table><tr><th>component</th><th>status</th><th>source</th><th>text</th></tr>")
        for name in COMPONENTS:
            c = d.get("components", {}).get(name, {})
            body.append(f"<tr><td>{name}</td><td><span class='tag {esc(c.get('status', ''))}'>{esc(c.get('status', 'missing'))}"
                        f"</span></td><td>{esc(c.get('source', ''))}</td><td>{esc(c.get('text', ''))}</td></tr>")
        body.append(f"</table><h2>Clip text (the prompt's H_IC)</h2><pre>{esc(d.get('text', ''))}</pre>")
    return page(title, "".join(body))


def write_segment_html(view: SegmentView, data: Path, out: Path, annotations: Path | None = None) -> Path:
    d = view.descriptor or {}
    why: list[str] = []
    if {"video_id", "start", "stop"} <= d.keys():
        frames = keyframes(data, d["video_id"], d["start"], d["stop"], why=why, annotations=annotations)
    else:
        frames, why = [], ["the descriptor record does not say the video and times" if d else "no descriptor record "
                           "(it says the video and times)"]
    atomic_write_text(out, segment_html(view, frames, why[0] if why else None))
    return out
