"""Prompt building: instructions, vocabulary, the k most relevant exemplars (H) and the clip text (H_IC).

Inputs are descriptor records (``descriptors/{split}.jsonl``, format in the module docstring of
``leap_cli.programs.generate``). Until the extract stage has run, ``narration_record`` builds
narration-only records from the annotation CSV rows: the ``narration`` component is ``ok`` and the
other four are ``unavailable``.

Exemplars are ``prompts/exemplars/*.json``: ``{"id", "narration", "text", "program"}``. Retrieval compares
narrations (``select_exemplars``): 4 * (same verb) + 2 * (same noun) + Jaccard similarity of the words of the
clip's narration and the exemplar's (parsed from its clip text); ties by id. The exemplars go in as few-shot
user/assistant turns, those of the clip's verb class first.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from leap_cli.epic.annotations import Segment
from leap_cli.epic.classes import ClassVocab
from leap_cli.errors import LeapError
from leap_cli.io import read_utf8, stable_hash
from leap_cli.resources import resource_dir
from leap_cli.programs.schema import validate_program
from leap_cli.programs.vocab import HANDS, MOTOR_PRIMITIVES, PREDICATES, resolve_object, resolve_verb

COMPONENTS = ("narration", "audio", "camera", "objects", "hands")
DEFAULT_K = 4
# The prompt's format and exemplar choice: raise it when either changes, so that generate-programs refuses to
# add records made with another prompt to an output file (io.check_settings).
PROMPT_VERSION = 2  # 2: exemplars chosen by narration, not by the words of the whole clip text
_WORD = re.compile(r"[a-z]+")
# a local file path: /abs/..., ~/..., ./..., ../..., file://..., C:\\... (at the start of a word, so "on/off" stays),
# through a space where the next word goes on with a folder ("/Volumes/My Passport/EPIC/P01": the part after the
# space was left in the prompt, so the cache key changed where the data set moved)
_PATH = re.compile(r"""(?:(?<=[\s('"=:,\[])|^)(?:file://)?(?:~|\.{1,2})?/[^\s/'"()<>\[\]]+(?:/[^\s/'"()<>\[\]]*)*"""
                   r"""(?: [^\s/'"()<>\[\]]+/[^\s/'"()<>\[\]]*(?:/[^\s/'"()<>\[\]]*)*)*"""
                   r"""|(?:(?<=[\s('"=:,\[])|^)[A-Za-z]:\\[^\s'"()<>]*(?: [^\s\\'"()<>]+\\[^\s'"()<>]*)*""")
PATH_PLACEHOLDER = "<path>"


@dataclass(frozen=True)
class Exemplar:
    id: str
    narration: str
    text: str
    program: dict

    @cached_property
    def verb_class(self) -> int | None:
        return self.program["action"].get("verb_class")

    @cached_property
    def noun_class(self) -> int | None:
        return self.program["action"].get("noun_class")


@dataclass
class ClipInfo:
    """What generation knows about one segment: its text, labels (None when unknown) and objects seen."""

    narration_id: str
    text: str
    narration: str | None = None
    verb: str | None = None
    noun: str | None = None
    verb_class: int | None = None
    noun_class: int | None = None
    all_nouns: list[str] = field(default_factory=list)
    objects: list[str] = field(default_factory=list)
    # (object, hand, seconds in contact), longest first, from the hands component's contact intervals ("object":
    # the hand touches something unnamed)
    contacts: list[tuple[str, str, float]] = field(default_factory=list)
    # (object, hand, share of frames), most seen first: detected objects the objects component puts near a hand
    near_hands: list[tuple[str, str, float]] = field(default_factory=list)


def load_exemplars(folder: str | Path | None = None) -> list[Exemplar]:
    """Every ``*.json`` of the exemplar folder (default ``prompts/exemplars``), in file name order; ids unique."""
    folder = Path(folder) if folder else resource_dir("prompts") / "exemplars"
    out = []
    file_of: dict[str, Path] = {}
    for path in sorted(folder.glob("*.json")):
        try:
            d = json.loads(read_utf8(path, "the exemplar", fix="save it as UTF-8 JSON"))
            if not isinstance(d, dict):
                raise TypeError(f"a JSON {type(d).__name__}, not an object")
            if wrong := [k for k in ("id", "narration", "text") if not isinstance(d.get(k, ""), str)]:
                raise TypeError(f"{', '.join(wrong)} not a string")
            out.append(Exemplar(d["id"], d["narration"], d.get("text") or d["narration"], d["program"]))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise LeapError(f"not an exemplar ({e})", path=path, fix='an exemplar is {"id", "narration", "text", "program"}') from None
        if not str(out[-1].id).strip():  # (the prompt names each exemplar's clip by its id)
            raise LeapError("the exemplar's id is empty", path=path, fix="give it an id, e.g. its file name's stem")
        if (eid := out[-1].id) in file_of:  # (a prompt shows each exemplar's turns by id: one would stand for both)
            raise LeapError(f"exemplar id {eid!r} is also that of {file_of[eid].name}", path=path,
                            fix="give each exemplar its own id")
        file_of[eid] = path
        if findings := validate_program(d["program"]):  # (the LLM would copy its faults)
            raise LeapError(f"the exemplar's program does not fit the schema: {findings[0].pointer or '/'}: "
                            f"{findings[0].message}" + (f" (+{len(findings) - 1} more)" if len(findings) > 1 else ""),
                            path=path, fix="correct it (leap validate-programs checks a program file the same way)")
    if not out:
        raise LeapError("no exemplar programs found", path=folder, fix="point --exemplars at a folder of *.json exemplars")
    return out


def load_system_prompt(path: str | Path | None = None) -> str:
    path = Path(path) if path else resource_dir("prompts") / "system.md"
    return read_utf8(path, "the system prompt").strip()


def narration_record(seg: Segment) -> dict:
    """A narration-only descriptor record built from an annotation row."""
    comps = {name: {"status": "unavailable", "source": "none", "data": {}, "text": ""} for name in COMPONENTS}
    if seg.narration:
        text = f"Narration: {seg.narration}."
        comps["narration"] = {"status": "ok", "source": "annotations", "data": seg.annotation(), "text": text}
    else:
        comps["narration"]["text"] = ""
        text = ""
    return {"narration_id": seg.narration_id, "video_id": seg.video_id, "start": seg.start, "stop": seg.stop,
            "components": comps, "text": text}


def _detected_labels(objects_component: dict) -> list[str]:
    data = objects_component.get("data") or {}
    items = data.get("objects") or data.get("labels") or data.get("detections") or []
    labels = []
    for it in items:
        label = it if isinstance(it, str) else (it.get("label") or it.get("name")) if isinstance(it, dict) else None
        if label and label not in labels:
            labels.append(str(label))
    return labels


def _hand_contacts(hands_component: dict) -> list[tuple[str, str, float]]:
    """(object, hand, total seconds) per named object and hand of the hands component, longest first."""
    data = hands_component.get("data") or {}
    total: dict[tuple[str, str], float] = {}
    first: dict[tuple[str, str], float] = {}
    for h in data.get("hands") or []:
        side = str(h.get("hand") or "").lower() if isinstance(h, dict) else ""
        if side not in ("left", "right"):
            continue
        for c in h.get("contacts") or []:
            obj = c.get("object") if isinstance(c, dict) else None
            if not obj:  # an unnamed contact stays as "object": the hand touches something (offline.py may name it)
                continue
            try:
                start, stop = float(c.get("start", 0.0)), float(c.get("stop", 0.0))
            except (TypeError, ValueError):
                continue
            key = (str(obj), side)
            total[key] = total.get(key, 0.0) + max(0.0, stop - start)
            first[key] = min(first.get(key, start), start)
    return [(o, h, round(t, 3)) for (o, h), t in sorted(total.items(), key=lambda kv: (-kv[1], first[kv[0]], kv[0]))]


def _near_hands(objects_component: dict) -> list[tuple[str, str, float]]:
    """(label, hand, share of frames) of the detected objects seen near a hand, most seen first."""
    out: dict[str, tuple[str, float]] = {}
    for it in (objects_component.get("data") or {}).get("objects") or []:
        if not isinstance(it, dict):
            continue
        label, hand = it.get("label") or it.get("name"), str(it.get("near_hand") or "").lower()
        if not label or label == "object" or hand not in ("left", "right"):
            continue
        try:
            share = float(it.get("share") or 0.0)
        except (TypeError, ValueError):
            share = 0.0
        if label not in out or share > out[label][1]:
            out[str(label)] = (hand, share)
    return [(lab, h, sh) for lab, (h, sh) in sorted(out.items(), key=lambda kv: (-kv[1][1], kv[0]))]


def strip_paths(text: str) -> str:
    """``text`` with every local file path replaced by ``<path>``: prompts go to a third-party API, must not
    tell it the file layout, and must be the same wherever the data lives (they are the cache key)."""
    if not text or ("/" not in text and "\\" not in text):
        return text
    # a sentence's full stop (or comma...) after the path stays
    return _PATH.sub(lambda m: PATH_PLACEHOLDER + m.group()[len(m.group().rstrip(".,;:")):], text)


def clip_info(record: dict, segment: Segment | None = None) -> ClipInfo:
    """Labels come from the annotations when given, else from the record's narration component. The clip
    text loses its file paths (``strip_paths``)."""
    comps = record.get("components") or {}
    narr = comps.get("narration") or {}
    nd = (narr.get("data") or {}) if narr.get("status") == "ok" else {}
    info = ClipInfo(record["narration_id"], strip_paths(record.get("text") or ""), nd.get("narration"), nd.get("verb"), nd.get("noun"),
                    nd.get("verb_class"), nd.get("noun_class"), list(nd.get("all_nouns") or []))
    if segment is not None and segment.has_labels:
        info.narration, info.verb, info.noun = segment.narration, segment.verb, segment.noun
        info.verb_class, info.noun_class, info.all_nouns = segment.verb_class, segment.noun_class, list(segment.all_nouns)
    if (comps.get("objects") or {}).get("status") == "ok":
        info.objects = _detected_labels(comps["objects"])
        info.near_hands = _near_hands(comps["objects"])
    if (comps.get("hands") or {}).get("status") == "ok":
        info.contacts = _hand_contacts(comps["hands"])
    if not info.text and info.narration:
        info.text = f"Narration: {info.narration}."
    return info


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


# The narration part of an extract rendering (extract/narration.py): '"cut carrot" (verb: cut, noun: carrot; also x)'.
_NARRATION = re.compile(r'^"(?P<narration>.*)" \(verb: (?P<verb>[^,]*), noun: (?P<noun>[^;]*?)(?:; also (?P<also>.*))?\)$')


@dataclass(frozen=True)
class Narration:
    """A segment's narration as generation compares it: the words, the verb and noun (keys) and their classes."""

    text: str = ""
    verb: str | None = None
    noun: str | None = None
    verb_class: int | None = None
    noun_class: int | None = None
    also: tuple[str, ...] = ()

    @cached_property
    def words(self) -> set[str]:  # computed once: an exemplar's narration is compared with every request's
        return _words(" ".join([self.text, self.verb or "", self.noun or "", *self.also]))


def narration_of_text(text: str) -> Narration | None:
    """The narration in a clip text rendered by ``leap extract`` (parsed with ``extract.describe.parse_clip_text``);
    None when the text is not such a rendering or has no narration line."""
    from leap_cli.extract.describe import parse_clip_text

    try:
        part = parse_clip_text(text).get("narration")
    except ValueError:
        return None
    m = _NARRATION.match(part or "")
    if not m:
        return None
    none = lambda x: None if x in (None, "", "None") else x  # noqa: E731
    also = tuple(a.strip() for a in (m.group("also") or "").split(",") if a.strip())
    return Narration(m.group("narration"), none(m.group("verb")), none(m.group("noun")), also=also)


_EXEMPLAR_NARRATION: dict[tuple[str, str, str], Narration] = {}


def exemplar_narration(e: Exemplar) -> Narration:
    """The exemplar's narration: from its clip text (an extract rendering), else its ``narration`` field; verb,
    noun and classes from its program's action where the text does not name them."""
    key = (e.id, e.narration, e.text)
    if key not in _EXEMPLAR_NARRATION:
        action = e.program.get("action") or {}
        parsed = narration_of_text(e.text) or Narration(e.narration)
        _EXEMPLAR_NARRATION[key] = Narration(parsed.text or e.narration, parsed.verb or action.get("verb"),
                                             parsed.noun or action.get("noun"), e.verb_class, e.noun_class, parsed.also)
    return _EXEMPLAR_NARRATION[key]


def clip_narration(info: ClipInfo) -> Narration:
    """The clip's narration: its labels (annotations or the narration component), else the narration line of its
    clip text; without any, the objects it names (detections, hand contacts) stand in for the nouns."""
    if info.narration or info.verb or info.noun:
        return Narration(info.narration or "", info.verb, info.noun, info.verb_class, info.noun_class,
                         tuple(n for n in info.all_nouns if n != info.noun))
    parsed = narration_of_text(info.text)
    if parsed is not None:
        return Narration(parsed.text, parsed.verb, parsed.noun, info.verb_class, info.noun_class, parsed.also)
    named = [o for o in info.objects + [c[0] for c in info.contacts] if o and o != "object"]
    return Narration("", None, None, info.verb_class, info.noun_class, tuple(dict.fromkeys(named)))


class _SameLabel:
    """Which exemplars count as having the clip's verb (or noun): the same class when both classes are known,
    else the same key, lower case (``take``, ``board:chopping``). Built once per library."""

    def __init__(self, labels: list[tuple[int | None, str | None]]):
        self.by_class: dict[int, list[int]] = {}
        self.by_key_without_class: dict[str, list[int]] = {}
        self.by_key: dict[str, list[int]] = {}
        for i, (cls, key) in enumerate(labels):
            key = key.lower() if key else None
            if cls is not None:
                self.by_class.setdefault(cls, []).append(i)
            elif key is not None:
                self.by_key_without_class.setdefault(key, []).append(i)
            if key is not None:
                self.by_key.setdefault(key, []).append(i)

    def rows(self, cls: int | None, key: str | None) -> set[int]:
        key = key.lower() if key else None
        if cls is not None:
            return set(self.by_class.get(cls, ())) | set(self.by_key_without_class.get(key, ()) if key else ())
        return set(self.by_key.get(key, ())) if key else set()


class ExemplarIndex:
    """An exemplar library as ``select_exemplars`` compares it, built once: each exemplar's narration words,
    who shares a verb, a noun or a word, and the id order. A clip's score is computed only for the exemplars
    that share something with it; all others score 0 and follow in id order."""

    def __init__(self, exemplars: list[Exemplar]):
        self.exemplars = list(exemplars)
        narrations = [exemplar_narration(e) for e in self.exemplars]
        self.words = [n.words for n in narrations]
        self.verb = _SameLabel([(n.verb_class, n.verb) for n in narrations])
        self.noun = _SameLabel([(n.noun_class, n.noun) for n in narrations])
        self.by_word: dict[str, list[int]] = {}
        for i, words in enumerate(self.words):
            for w in words:
                self.by_word.setdefault(w, []).append(i)
        self.order = sorted(range(len(self.exemplars)), key=lambda i: (self.exemplars[i].id, i))

    def select(self, clip: Narration, k: int) -> list[Exemplar]:
        words, nw = clip.words, len(clip.words)
        same_verb = self.verb.rows(clip.verb_class, clip.verb)
        same_noun = self.noun.rows(clip.noun_class, clip.noun)
        common: dict[int, int] = {}
        for w in words:
            for i in self.by_word.get(w, ()):
                common[i] = common.get(i, 0) + 1
        scored = []
        for i in same_verb | same_noun | common.keys():
            s = 0.0
            if i in same_verb:
                s += 4
            if i in same_noun:
                s += 2
            c = common.get(i, 0)
            if c:
                s += c / (nw + len(self.words[i]) - c)  # Jaccard similarity of the word sets
            scored.append((-s, self.exemplars[i].id, i))
        chosen = [i for _, _, i in sorted(scored)[:k]]
        if len(chosen) < k:  # the rest score 0: in id order
            taken = set(chosen)
            chosen += [i for i in self.order if i not in taken][:k - len(chosen)]
        return [self.exemplars[i] for i in chosen]


def select_exemplars(info: ClipInfo, exemplars: list[Exemplar], k: int = DEFAULT_K,
                     index: ExemplarIndex | None = None) -> list[Exemplar]:
    """The k exemplars whose narration is nearest the clip's: +4 for the same verb (class; the key when a class
    is unknown), +2 for the same noun, plus the Jaccard similarity of the narrations' words (narration, verb,
    noun, other nouns). Not the long clip texts: a word that both texts mention (a sink in view) says nothing of
    the action. Ties by id, so the choice is deterministic. ``index``: ``ExemplarIndex(exemplars)``, when the
    caller keeps it (``PromptBuilder``: every request compares the same library)."""
    return (index or ExemplarIndex(exemplars)).select(clip_narration(info), k)


def vocabulary_text(verbs: ClassVocab, nouns: ClassVocab) -> str:
    preds = ", ".join(f"{p}({', '.join(t)})" for p, t in PREDICATES.items())
    # only primitives whose EPIC verb is in this class list (the synthetic kitchen's is a subset)
    prims = ", ".join(f"{p} (= {v})" for p, v in MOTOR_PRIMITIVES.items() if verbs.resolve(v) is not None and p != v)
    return (f"## Vocabulary\nVerbs (EPIC verb classes): {', '.join(verbs.keys[i] for i in verbs.ids)}\n"
            f"Motor primitives: {prims}\n"
            f"Objects (EPIC noun classes): {', '.join(nouns.keys[i] for i in nouns.ids)}\n"
            f"Predicates: {preds}; hand = {' | '.join(HANDS)}")


def clip_message(info: ClipInfo, verbs: ClassVocab | None = None, nouns: ClassVocab | None = None) -> str:
    lines = [f"Clip {info.narration_id}:", info.text or "(no description available)"]
    if info.verb or info.noun:
        vc = info.verb_class if info.verb_class is not None else (resolve_verb(info.verb, verbs) if verbs and info.verb else None)
        nc = info.noun_class if info.noun_class is not None else (resolve_object(info.noun, nouns) if nouns and info.noun else None)
        lines.append(f"Action: verb {info.verb!r} (verb_class {vc}), noun {info.noun!r} (noun_class {nc}).")
    if info.objects:
        lines.append(f"Objects detected: {', '.join(info.objects)}.")
    lines.append("Write its action program.")
    return "\n".join(lines)


def canonical_json(obj) -> str:
    """The JSON that ``leap_cli.io.stable_hash`` hashes (sorted keys, no spaces, UTF-8)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass
class Prompt:
    """The chat messages of one request and their canonical JSON, assembled from parts serialised once.
    ``hash`` equals ``stable_hash(messages)``, so it is the same key however the prompt was built."""

    messages: list[dict]
    json: str

    @cached_property
    def hash(self) -> str:  # once per prompt: the record's prompt_hash and the cache key both use it
        return hashlib.sha256(self.json.encode()).hexdigest()

    def extend(self, extra: list[dict]) -> "Prompt":
        return Prompt(self.messages + extra, self.json[:-1] + "," + canonical_json(extra)[1:])


@dataclass
class PromptBuilder:
    """Builds the chat messages of one segment; ``k`` exemplars per prompt.

    Order (for providers' automatic prompt caching, which discounts a repeated prefix): the static system
    message (instructions + vocabulary, the same for every request) first; then the chosen exemplars, those of
    the clip's verb class first, each group in id order (clips of one verb class share that prefix too); the
    clip text last. The system message and each exemplar turn are serialised once."""

    verbs: ClassVocab
    nouns: ClassVocab
    exemplars: list[Exemplar]
    system: str
    k: int = DEFAULT_K

    def __post_init__(self) -> None:
        self._system = f"{self.system}\n\n{vocabulary_text(self.verbs, self.nouns)}"
        self._system_msg = {"role": "system", "content": self._system}
        self._system_json = canonical_json(self._system_msg)
        self._turns: dict[str, tuple[list[dict], str]] = {}
        self._index = ExemplarIndex(self.exemplars)

    @property
    def static_prefix(self) -> str:
        """The part of every prompt that never changes (the system message)."""
        return self._system

    def _exemplar_turns(self, e: Exemplar) -> tuple[list[dict], str]:
        if e.id not in self._turns:
            ex_info = ClipInfo(e.id, e.text, e.narration, e.program["action"]["verb"], e.program["action"]["noun"],
                               e.verb_class, e.noun_class)
            turns = [{"role": "user", "content": clip_message(ex_info)},
                     {"role": "assistant", "content": json.dumps(e.program, separators=(",", ":"))}]
            self._turns[e.id] = (turns, canonical_json(turns)[1:-1])
        return self._turns[e.id]

    def ordered_exemplars(self, info: ClipInfo) -> list[Exemplar]:
        chosen = select_exemplars(info, self.exemplars, self.k, self._index)
        same_verb = lambda e: info.verb_class is not None and e.verb_class == info.verb_class  # noqa: E731
        return sorted(chosen, key=lambda e: (not same_verb(e), e.id))

    def prompt(self, info: ClipInfo) -> Prompt:
        msgs = [self._system_msg]
        parts = [self._system_json]
        for e in self.ordered_exemplars(info):
            turns, js = self._exemplar_turns(e)
            msgs.extend(turns)
            parts.append(js)
        clip = {"role": "user", "content": clip_message(info, self.verbs, self.nouns)}
        msgs.append(clip)
        parts.append(canonical_json(clip))
        return Prompt(msgs, "[" + ",".join(parts) + "]")

    def messages(self, info: ClipInfo) -> list[dict]:
        return [dict(m) for m in self.prompt(info).messages]


def render_messages(messages: list[dict]) -> str:
    """Human-readable prompt (``--dry-run``)."""
    return "\n\n".join(f"===== {m['role']} =====\n{m['content']}" for m in messages)


def prompt_hash(messages: list[dict]) -> str:
    return stable_hash(messages)[:16]
