"""Challenge submission files for the EPIC-KITCHENS-100 action recognition and anticipation leaderboards.

The file is ``test.json`` at the root of a zip (no folders), in the official format (version 0.2)::

    {"version": "0.2", "challenge": "action_recognition" | "action_anticipation",
     "sls_pt": 0-5, "sls_tl": 0-5, "sls_td": 0-5,
     "results": {"P01_101_0": {"verb": {"0": 1.22, ..., "96": 0.02},      # every verb class, raw logits
                               "noun": {"0": 0.80, ..., "299": 0.02},     # every noun class, raw logits
                               "action": {"12,4": 0.31, ...}},           # anticipation only, optional: 100 pairs
                 ...}}

The server applies the softmax, so verb and noun scores are the model's raw outputs. Optional anticipation
action scores are the 100 best ``"verb,noun"`` pairs of the official combination (``metrics.action_scores``);
they go in for every segment or for none.

Class counts: a submission holds one score per class id from 0 to the largest id of the class files in the
annotations folder (``EPIC_100_verb_classes.csv``, ``EPIC_100_noun_classes.csv``), i.e. max id + 1, not the
number of rows: 97 verbs and 300 nouns on EPIC-KITCHENS-100; on the synthetic kitchen, whose class files hold
a subset of EPIC's classes with their real ids, also max id + 1, so a class id is always its score column and
the ids absent from the class files simply get scores nobody is labelled with.

Refusals (``LeapError``, listing up to five examples): narration ids missing from or extra to
``EPIC_100_test_timestamps.csv``, NaN or infinite scores, a wrong number of verb or noun scores, SLS levels
outside 0-5, an unknown challenge or version, action entries that are malformed, not 100 per segment, or not
on every segment, a narration id given twice, and a zip that does not hold ``test.json`` at its root. A zip is
checked as it is read, one entry of ``results`` at a time (``_check_streamed``): a test split's file parsed whole
is ~250 MB of Python objects.
"""

from __future__ import annotations

import codecs
import itertools
import json
import math
import re
import zipfile
import zlib
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from leap_cli.common import check_task, counted
from leap_cli.epic.annotations import Annotations, SPLIT_FILES
from leap_cli.errors import LeapError
from leap_cli.evaluate.metrics import TOP_N_ACTIONS, action_key_pair, action_scores
from leap_cli.io import atomic_path

VERSION = "0.2"
CHALLENGES = {"recognition": "action_recognition", "anticipation": "action_anticipation"}
SLS_KEYS = ("sls_pt", "sls_tl", "sls_td")
MEMBER = "test.json"
SHOW = 5


def _examples(items: Sequence, n: int = SHOW) -> str:
    items = list(items)
    shown = ", ".join(str(x) for x in items[:n])
    return shown + (f" ... (+{len(items) - n} more)" if len(items) > n else "")


def class_counts(annotations: Annotations) -> tuple[int, int]:
    """(verbs, nouns) a submission must score: max class id + 1 of each class file."""
    return max(annotations.verbs.ids) + 1, max(annotations.nouns.ids) + 1


def expected_narration_ids(annotations: Annotations) -> list[str]:
    """The narration ids of the test timestamps CSV."""
    if not annotations.has_split("test"):
        raise LeapError("no test timestamps CSV", path=annotations.split_path("test"),
                        fix=f"put {SPLIT_FILES['test']} in the annotations folder (or pass --annotations DIR)")
    return [s.narration_id for s in annotations.segments("test")]


def _check_ids(ids: Iterable[str], expected: Sequence[str], source: str) -> None:
    ids = list(ids)
    have, want = set(ids), set(expected)
    missing = [i for i in expected if i not in have]
    extra = [i for i in ids if i not in want]
    if ids and not have & want:
        raise LeapError(f"none of the {len(ids)} narration ids is in {SPLIT_FILES['test']} (e.g. {_examples(ids, 3)}): "
                        f"these are not test-split scores", path=source,
                        fix="run `leap evaluate --split test` and submit its scores.pt")
    if missing:
        raise LeapError(f"{counted(len(missing), 'narration id')} of {SPLIT_FILES['test']} "
                        f"{'has' if len(missing) == 1 else 'have'} no scores: "
                        f"{_examples(missing)}", path=source,
                        fix="score every test segment (leap evaluate --split test) with the same annotations; "
                            "segments build-shards skipped (its manifest's skipped list, e.g. a video cut short) "
                            "need their video fixed and build-shards run again first")
    if extra:
        raise LeapError(f"{counted(len(extra), 'narration id')} {'is' if len(extra) == 1 else 'are'} not in "
                        f"{SPLIT_FILES['test']}: {_examples(extra)}",
                        path=source, fix="submit test-split scores (validation scores cannot be submitted)")


def check_sls(levels: dict, source: str | None = None) -> None:
    """Refuse supervision levels that are not integers from 0 to 5 (``source``: the file that holds them)."""
    for key in SLS_KEYS:
        v = levels.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 5:
            name = key if source else "--" + key.replace("_", "-")  # the options' name where they gave it
            raise LeapError(f"{name} is {v!r}; supervision levels are integers from 0 to 5", path=source,
                            fix="see https://github.com/epic-kitchens/sls for the levels")


def check_scores(scores: dict, expected_ids: Sequence[str], num_verbs: int, num_nouns: int,
                 source: str = "<scores>") -> None:
    """Refuse a scores dict that cannot become a valid submission."""
    _check_ids(scores["narration_id"], expected_ids, source)
    for name, count in (("verb", num_verbs), ("noun", num_nouns)):
        out = scores[f"{name}_output"]
        if out.shape[1] != count:
            raise LeapError(f"{name}_output has {out.shape[1]} classes, the class file needs {count} "
                            f"(max id + 1)", path=source,
                            fix="score with a model built for these annotations' classes")
        bad = np.flatnonzero(~np.isfinite(out.double().numpy()).all(axis=1)).tolist()  # (float64: as written)
        if bad:
            ids = [scores["narration_id"][i] for i in bad]
            raise LeapError(f"{name}_output holds NaN or infinity for {counted(len(ids), 'segment')}: {_examples(ids)}",
                            path=source, fix="fix the model or checkpoint that produced these scores")


def make_submission(scores: dict, task: str, *, sls_pt: int, sls_tl: int, sls_td: int,
                    with_actions: bool = False, lazy: bool = False) -> dict:
    """The challenge dict for a (checked) scores dict. With ``lazy``, its ``results`` is an iterator of
    (narration id, entry) pairs that ``write_submission`` writes one at a time: a whole test split as one dict
    of Python floats takes ~0.7 GB (13k segments x 397 scores)."""
    check_task(task)
    if with_actions and task != "anticipation":
        raise LeapError("action scores belong to anticipation submissions only",
                        fix="drop --with-actions or use --task anticipation")
    levels = {"sls_pt": sls_pt, "sls_tl": sls_tl, "sls_td": sls_td}
    check_sls(levels)
    results = _entries(scores, with_actions)
    return {"version": VERSION, "challenge": CHALLENGES[task], **levels,
            "results": results if lazy else dict(results)}


def _entries(scores: dict, with_actions: bool) -> Iterator[tuple[str, dict]]:
    """(narration id, {"verb": {...}, "noun": {...}[, "action": {...}]}) per segment, in the scores' order."""
    verb = scores["verb_output"].double().numpy()
    noun = scores["noun_output"].double().numpy()
    actions = action_scores(verb, noun) if with_actions else None
    verb_keys = [str(c) for c in range(verb.shape[1])]  # one key string per class, shared by every segment
    noun_keys = [str(c) for c in range(noun.shape[1])]
    for i, nid in enumerate(scores["narration_id"]):
        entry = {"verb": dict(zip(verb_keys, verb[i].tolist())), "noun": dict(zip(noun_keys, noun[i].tolist()))}
        if actions is not None:
            v, n, p = actions
            entry["action"] = {f"{a},{b}": s for a, b, s in zip(v[i].tolist(), n[i].tolist(), p[i].tolist())}
        yield nid, entry


ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the zip format's first date, for test.json: a rerun's zip is byte-identical


def write_submission(path: str | Path, submission: dict, batch: int = 256, check=None):
    """Write ``test.json`` into a flat zip, atomically, a few segments at a time: the same bytes as
    ``json.dumps(submission)``, whose ``results`` (its last key) may be a dict or an iterator of (narration id,
    entry) pairs (``make_submission(lazy=True)``). ``check(written, path)``, given, reads the written zip before it
    takes ``path``'s place (a refusal leaves a file already there as it was); what it returns is returned."""
    results = submission["results"]
    items = iter(results.items() if isinstance(results, Mapping) else results)
    head = json.dumps({k: v for k, v in submission.items() if k != "results"}, allow_nan=False)
    opening = head[:-1] + (", " if len(head) > 2 else "") + '"results": {'
    with atomic_path(path) as tmp:
        member = zipfile.ZipInfo(MEMBER, date_time=ZIP_DATE)  # the same scores, the same bytes
        member.external_attr = 0o100644 << 16  # a regular file, rw-r--r-- (ZipInfo's default: unzip made it 0600)
        member.compress_type = zipfile.ZIP_DEFLATED
        # level 1: 65 MB instead of level 5's 60 for EPIC's 13k test segments, in less than half the time (~3 s)
        setattr(member, "compress_level" if hasattr(member, "compress_level") else "_compresslevel", 1)  # 3.13 / 3.11
        with zipfile.ZipFile(tmp, "w") as z, z.open(member, "w") as f:
            f.write(opening.encode())
            first = True
            while chunk := list(itertools.islice(items, batch)):
                text = ", ".join(f"{json.dumps(nid)}: {json.dumps(entry, allow_nan=False)}" for nid, entry in chunk)
                f.write(((", " if not first else "") + text).encode())
                first = False
            f.write(b"}}")
        return None if check is None else check(tmp, Path(path))


# how test.json may be compressed: the methods Python's zipfile reads (a 7-Zip or Windows zip may use Deflate64)
_READABLE = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA})


def _open_member(path: Path, shown: Path | None = None):
    """The zip's ``test.json``, opened for reading (refusing a missing file, folders, extra files, no zip, a
    password and a compression method zipfile cannot read); ``shown``: the path messages name (else ``path``)."""
    shown = shown or path
    if not path.exists():
        raise LeapError("submission file not found", path=shown, fix="check the path or run `leap submit` first")
    try:
        z = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise LeapError("not a zip file", path=shown, fix="write it with `leap submit`") from None
    names = [n for n in z.namelist() if not n.endswith("/")]
    if names != [MEMBER]:
        z.close()
        raise LeapError(f"the zip holds {_examples(names) or 'nothing'}; it must hold only {MEMBER} "
                        f"at its root", path=shown, fix="zip test.json alone, without a folder")
    info = z.getinfo(MEMBER)
    problem = ("is encrypted (a zip with a password), which the challenge's server cannot read" if info.flag_bits & 1
               else f"is compressed with method {info.compress_type}, which Python's zipfile (and so the challenge's "
                    f"server) cannot read" if info.compress_type not in _READABLE else None)
    if problem:
        z.close()
        raise LeapError(f"{MEMBER} {problem}", path=shown,
                        fix="write it with `leap submit`, or zip test.json alone with `zip` (deflate, no password)")
    return z


# what reading a zip's member or parsing its JSON raises for a damaged or malformed file (ValueError: an integer of
# over 4,300 digits; RecursionError: nesting too deep)
_DAMAGED = (zipfile.BadZipFile, zlib.error, EOFError)
_NOT_JSON = (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError)


def _damaged(path: Path, e: Exception) -> LeapError:
    return LeapError(f"damaged zip ({e})", path=path, fix="write it again with `leap submit`")


def _not_json(path: Path, e: Exception) -> LeapError:
    return LeapError(f"{MEMBER} is not valid JSON ({e})", path=path, fix="write it with `leap submit`")


def read_submission(path: str | Path) -> dict:
    """Read ``test.json`` from a submission zip (refusing folders, extra files and bad JSON)."""
    path = Path(path)
    with _open_member(path) as z:
        try:
            raw = z.read(MEMBER)
        except _DAMAGED as e:
            raise _damaged(path, e) from None
    try:
        text = raw.decode(json.detect_encoding(raw), "surrogatepass")  # as json.loads decodes bytes
        del raw  # not held through the parse: a test split's file is ~140 MB
        return json.loads(text)
    except _NOT_JSON as e:
        raise _not_json(path, e) from None


class _JsonStream:
    """JSON values read one at a time from a text stream, a chunk in memory: the results of a test split's
    ``test.json`` (~140 MB, ~250 MB as Python objects) are checked an entry at a time."""

    CHUNK = 1 << 20
    _WS = re.compile(r"[ \t\n\r]*")
    _NUMBER_GOES_ON = re.compile(r"[0-9.eE+-]*")  # (what follows a number cut at a chunk's end: "12." of "12.5")
    _DECODER = json.JSONDecoder()

    def __init__(self, f, encoding: str):
        self.f, self.decode = f, codecs.getincrementaldecoder(encoding)("surrogatepass").decode
        self.buf, self.pos, self.eof = "", 0, False
        self.dropped = 0  # characters of the stream before the buffer's first

    def more(self) -> bool:
        """Read the next chunk onto the buffer (what was parsed dropped); False at the end of the stream."""
        if self.eof:
            return False
        data = self.f.read(max(self.CHUNK, len(self.buf) - self.pos))  # (a value longer than a chunk: doubled)
        self.eof = not data
        self.dropped += self.pos
        self.buf, self.pos = self.buf[self.pos:] + self.decode(data, final=self.eof), 0
        return True

    def whole(self) -> str:
        """The stream from its start, whole, where nothing was parsed yet (only white space skipped; beyond a
        chunk of it, what is left)."""
        return self.buf + self.decode(self.f.read(), final=True)

    def where(self, e: json.JSONDecodeError) -> str:
        """``e``'s message with its place counted in the whole stream."""
        return f"{e.msg}: character {self.dropped + e.pos} of {MEMBER}"

    def peek(self) -> str:
        """The next character that is not white space ('' at the end)."""
        while True:
            self.pos = self._WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf) or not self.more():
                return self.buf[self.pos:self.pos + 1]

    def take(self, char: str) -> None:
        if self.peek() != char:  # (json's words: "Expecting ':' delimiter")
            raise json.JSONDecodeError(f"Expecting {char!r}" + (" delimiter" if char in ",:" else ""), self.buf,
                                       self.pos)
        self.pos += 1

    def key(self) -> str:
        """An object's next property name."""
        if self.peek() != '"':
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes", self.buf, self.pos)
        return self.value()

    def value(self):
        self.peek()
        while True:
            try:
                value, end = self._DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError:
                if self.more():  # (the value goes on in the next chunk)
                    continue
                raise
            if not self.eof and self._NUMBER_GOES_ON.fullmatch(self.buf, end) and self.more():
                continue
            self.pos = end
            return value


def _check_streamed(path: Path, expected_ids: Sequence[str], num_verbs: int, num_nouns: int,
                    shown: Path | None = None) -> dict:
    """``check_submission`` of a submission zip, its results read and checked one entry at a time; ``shown``: the
    path messages name (the output a temp file is written for), else ``path``."""
    shown = shown or path
    check = _SubmissionCheck(expected_ids, num_verbs, num_nouns, str(shown))
    header: dict = {}
    with _open_member(path, shown) as z, z.open(MEMBER) as f:
        try:
            stream = _JsonStream(f, json.detect_encoding(f.peek(4)[:4]))
            if stream.peek() != "{":  # (no object: said as a whole parse says it, its place counted from the start)
                return check_submission(json.loads(stream.whole()), expected_ids, num_verbs, num_nouns, str(shown))
            stream.take("{")
            while stream.peek() != "}":
                if header:
                    stream.take(",")
                key = stream.key()
                stream.take(":")
                if key != "results" or stream.peek() != "{":
                    header[key] = stream.value()
                    continue
                if header.get("results") is check:  # (json.loads would keep the second; its entries are gone)
                    raise LeapError("test.json gives results twice", path=shown, fix="write it with `leap submit`")
                header[key] = check  # (the entries go to it)
                stream.take("{")
                while stream.peek() != "}":
                    if check.ids:
                        stream.take(",")
                    nid = stream.key()
                    stream.take(":")
                    check.entry(nid, stream.value())
                stream.take("}")
            stream.take("}")
            if stream.peek():
                raise json.JSONDecodeError("Extra data", stream.buf, stream.pos)
        except json.JSONDecodeError as e:
            raise _not_json(shown, stream.where(e) if e.doc is stream.buf else e) from None
        except _NOT_JSON as e:
            raise _not_json(shown, e) from None
        except _DAMAGED as e:
            raise _damaged(shown, e) from None
    return check.finish(header)


def _bad_score(x) -> bool:
    return isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x)


def _bad_scores(values: Iterable) -> bool:
    """Whether any of ``values`` is NaN, infinite or not a number (a bool is not): ``_bad_score`` on each, at
    C speed for a list of floats (a test split holds 5 million scores)."""
    values = list(values)
    if not {type(x) for x in values} <= {float, int}:  # bool, str, None, ... (type(True) is bool)
        return True
    try:
        return not np.isfinite(np.array(values, dtype=np.float64)).all()
    except OverflowError:  # an integer beyond float's range
        return True


def check_submission(submission: dict, expected_ids: Sequence[str], num_verbs: int, num_nouns: int,
                     source: str = "<submission>") -> dict:
    """Check a challenge dict as the official validator does (and for NaN/inf); return a short summary."""
    if not isinstance(submission, dict):
        raise LeapError("test.json must hold a JSON object", path=source)
    check = _SubmissionCheck(expected_ids, num_verbs, num_nouns, source)
    results = submission.get("results")
    if isinstance(results, dict):
        for nid, entry in results.items():
            check.entry(nid, entry)
        submission = {**submission, "results": check}
    return check.finish(submission)


class _SubmissionCheck:
    """The checks of ``check_submission``, fed the results one entry at a time (``entry``) and then the other
    properties (``finish``, which raises the first fault in the order: properties, ids, entries)."""

    def __init__(self, expected_ids: Sequence[str], num_verbs: int, num_nouns: int, source: str):
        self.expected, self.num_verbs, self.num_nouns, self.source = expected_ids, num_verbs, num_nouns, source
        self.want = {"verb": {str(i) for i in range(num_verbs)}, "noun": {str(i) for i in range(num_nouns)}}
        self.ids: list[str] = []
        self.with_action: list[str] = []  # (refused in a recognition submission, whose challenge may come later)
        self.has_actions: bool | None = None  # (as the first entry says)
        self.problems: dict[str, list[str]] = {}

    def entry(self, nid: str, entry) -> None:
        self.ids.append(nid)
        problems = self.problems
        if not isinstance(entry, dict):
            problems.setdefault("entries that are not objects", []).append(nid)
            if self.has_actions is None:
                self.has_actions = False
            return
        if "action" in entry:  # (each: it named the first and counted 1)
            self.with_action.append(nid)
        if self.has_actions is None:
            self.has_actions = "action" in entry
        for task in ("verb", "noun"):
            scores = entry.get(task)
            if not isinstance(scores, dict):
                problems.setdefault(f"entries without {task} scores", []).append(nid)
                continue
            if scores.keys() != self.want[task]:  # JSON keys are unique: the same set is the same sorted list
                problems.setdefault(f"{task} scores not keyed \"0\"..\"{len(self.want[task]) - 1}\" "
                                    f"({len(self.want[task])} classes)", []).append(f"{nid} ({len(scores)} keys)")
            if _bad_scores(scores.values()):
                problems.setdefault(f"{task} scores that are NaN, infinite or not numbers", []).append(nid)
        if ("action" in entry) != self.has_actions:
            problems.setdefault("action scores on some segments but not all", []).append(nid)
        elif self.has_actions:
            acts = entry["action"]
            if not isinstance(acts, dict) or len(acts) != TOP_N_ACTIONS:
                problems.setdefault(f"action entries without exactly {TOP_N_ACTIONS} scores", []).append(
                    f"{nid} ({len(acts) if isinstance(acts, dict) else type(acts).__name__})")
                return
            for key, s in acts.items():
                pair = action_key_pair(key)
                if pair is None or pair[0] >= self.num_verbs or pair[1] >= self.num_nouns:
                    problems.setdefault("action keys that are not valid \"verb,noun\" ids", []).append(f"{nid}: {key}")
                    break
                if _bad_score(s):
                    problems.setdefault("action scores that are NaN, infinite or not numbers", []).append(nid)
                    break

    def finish(self, submission: dict) -> dict:
        """``submission``: the properties, with this check as its ``results`` where they were fed to it."""
        source = self.source
        for key in ("version", "challenge", *SLS_KEYS, "results"):
            if key not in submission:
                raise LeapError(f"missing property {key!r}", path=source, fix="write it with `leap submit`")
        if submission["version"] != VERSION:
            raise LeapError(f"version {submission['version']!r} is not supported", path=source, fix=f"use {VERSION!r}")
        if submission["challenge"] not in CHALLENGES.values():
            raise LeapError(f"challenge {submission['challenge']!r} is not supported", path=source,
                            fix=f"use one of {', '.join(CHALLENGES.values())}")
        check_sls(submission, source)
        if submission["results"] is not self:
            raise LeapError("results must map narration ids to scores", path=source)
        twice = [nid for nid, n in Counter(self.ids).items() if n > 1]
        if twice:  # (json.loads would keep the last of each: which one the server reads is not said)
            raise LeapError(f"{counted(len(twice), 'narration id')} {'holds' if len(twice) == 1 else 'hold'} two entries "
                            f"in results: {_examples(twice)}",
                            path=source, fix="rewrite it with `leap submit` from a scores file")
        _check_ids(self.ids, self.expected, source)
        problems = self.problems
        if submission["challenge"] != CHALLENGES["anticipation"] and self.with_action:
            problems = {"action scores in a recognition submission": self.with_action, **problems}
        mixed = "action scores on some segments but not all"
        if mixed in problems:  # the fewer named, with or without (the first entry's side named the other 9,000)
            have = set(self.with_action)
            without = [nid for nid in self.ids if nid not in have]
            few = without if len(without) <= len(have) else self.with_action
            head = f"{counted(len(have), 'segment')} of {len(self.ids)} {'has' if len(have) == 1 else 'have'} them"
            listed = ("" if next(iter(problems)) != mixed  # (another problem's segments are the ones listed)
                      else ("; this one lacks them" if len(few) == 1 else f"; these {len(few)} lack them")
                      if few is without else ": this one" if len(few) == 1 else ": these")
            problems = {(f"{mixed} ({head}{listed})" if k == mixed else k): (few if k == mixed else v)
                        for k, v in problems.items()}
        if problems:
            what, examples = next(iter(problems.items()))
            more = f"; also: {', '.join(list(problems)[1:])}" if len(problems) > 1 else ""
            raise LeapError(f"{counted(len(examples), 'segment')} with {what}: {_examples(examples)}{more}", path=source,
                            fix="rewrite it with `leap submit` from a scores file")
        return {"challenge": submission["challenge"], "segments": len(self.ids), "verbs": self.num_verbs,
                "nouns": self.num_nouns, "actions": bool(self.has_actions), **{k: submission[k] for k in SLS_KEYS}}


CHALLENGE_TAU_A = 1.0  # s: EPIC-KITCHENS-100's anticipation time (the observed video ends this long before the action)


def check_submittable(scores: dict, annotations: Annotations, task: str, source: str = "<scores>"
                      ) -> tuple[list[str], int, int]:
    """Refuse scores that `leap submit` cannot turn into a valid ``task`` submission (their task, the
    anticipation time of their shards, the test split's narration ids, the class counts, finite values); return
    (the test split's narration ids, verbs, nouns)."""
    from leap_cli.evaluate.scores import scores_task  # (torch: not imported by `leap submit --check`)

    made_for = scores_task(scores)
    if made_for is not None and task in CHALLENGES and made_for != task:
        raise LeapError(f"these are {made_for} scores (meta.task), not {task} scores", path=source,
                        fix=f"pass --task {made_for}, or submit the scores of a model trained for {task}")
    tau_a = (scores.get("meta") or {}).get("tau_a")
    if task == "anticipation" and tau_a is not None:
        try:
            tau_a = float(tau_a)
        except (TypeError, ValueError):
            raise LeapError(f"meta.tau_a is {tau_a!r}, not a number of seconds", path=source,
                            fix="submit the scores leap evaluate wrote, or give meta.tau_a the seconds the observed "
                                "clips end before each action") from None
    if task == "anticipation" and tau_a is not None and abs(tau_a - CHALLENGE_TAU_A) > 1e-6:
        raise LeapError(f"these scores were made on shards whose observed clips end {tau_a:g} s before each "
                        f"action; EPIC's anticipation challenge observes up to {CHALLENGE_TAU_A:g} s before it",
                        path=source, fix=f"build the test shards with --tau-a {CHALLENGE_TAU_A:g} (the default), "
                                         "evaluate them and submit those scores")
    expected = expected_narration_ids(annotations)
    nv, nn = class_counts(annotations)
    check_scores(scores, expected, nv, nn, source)
    return expected, nv, nn


def submit(scores: dict, annotations: Annotations, task: str, out: str | Path, *, sls_pt: int, sls_tl: int,
           sls_td: int, with_actions: bool = False, source: str = "<scores>") -> dict:
    """Check ``scores`` against the test split, write the zip, re-check what was written; return the summary."""
    expected, nv, nn = check_submittable(scores, annotations, task, source)
    # what was written is checked an entry at a time before it takes the place of a file at ``out``
    return write_submission(out, make_submission(scores, task, sls_pt=sls_pt, sls_tl=sls_tl, sls_td=sls_td,
                                                 with_actions=with_actions, lazy=True),
                            check=lambda written, shown: _check_streamed(written, expected, nv, nn, shown))


def check_file(path: str | Path, annotations: Annotations) -> dict:
    """``leap submit --check``: read and check an existing submission zip."""
    nv, nn = class_counts(annotations)
    return _check_streamed(Path(path), expected_narration_ids(annotations), nv, nn)

