"""The scores file: what ``leap evaluate`` writes and ``leap evaluate --scores`` / ``leap submit`` read.

leap's own file (``scores.pt``, ``torch.save``; read with ``torch.load(weights_only=True)``) is a dict::

    {"narration_id": list[str] (N),
     "verb_output": FloatTensor[N, V], "noun_output": FloatTensor[N, Nn],   # raw logits, views averaged
     "program": {                                    # optional: only for models with program heads
        "steps": LongTensor[N, L, 3],                # predicted (S-Verb, Obj(A), Obj(B)) ids, greedy decoding
        "conditions": FloatTensor[N, 2P],            # pre/post-condition probabilities
        "target_steps": LongTensor[N, L, 3],         # truth from the shards (-100 padding, END triple), if known
        "target_conditions": FloatTensor[N, 2P], "has_program": BoolTensor[N], "end_ids": [v, a, b]},
     "meta": {"split", "task", "run", "checkpoint", "views", ..., "provenance" (the run's provenance.json);
              anticipation: "tau_a"}}

The official EPIC results format is accepted too, as ``.pt`` or ``.pkl``: a dict with ``verb_output``
[N, 97], ``noun_output`` [N, 300] and ``narration_id`` [N] (NumPy arrays, of str or bytes, or tensors), or a list of
per-segment dicts with those keys. A challenge file in the official JSON format (``test.json``, or a zip
holding it, e.g. validation results for the C3 anticipation evaluator) is read too; its optional action
scores become ``"action": {"ids": LongTensor[N, K] (verb * 1000 + noun), "scores": FloatTensor[N, K]}``,
which anticipation metrics use instead of the verb x noun combination (as the official evaluator does).
Pickles are read with an unpickler that only admits NumPy arrays, torch tensors (their storage is read
with ``torch.load(weights_only=True)``) and plain Python values, so a scores file cannot run code.
"""

from __future__ import annotations

import collections
import io
import json
import pickle
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from leap_cli.common import counted
from leap_cli.errors import LeapError
from leap_cli.io import atomic_path, is_numpy_pickle_global, load_problem, numpy_safe_globals, weights_only_allowing

REQUIRED = ("narration_id", "verb_output", "noun_output")
SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".json", ".zip")  # torch.save, pickle, challenge JSON or zip
_FIX_FORMAT = ("a scores file holds narration_id [N], verb_output [N, V] and noun_output [N, Nn]; "
               "write it with `leap evaluate` or in EPIC's official results format")

# pickle protocol 2 (torch.save's default, and Python 2 era files) stores bytes as _codecs.encode(text, "latin1"):
# it only turns text into bytes. With the NumPy names (leap_cli.io) nothing else is admitted.
_CODECS_ENCODE = ("_codecs", "encode")


def _storage_from_bytes(data: bytes) -> Any:
    """``torch.storage._load_from_bytes`` (how ``pickle.dump`` stores a tensor's data), without its
    ``weights_only=False``."""
    try:
        with warnings.catch_warnings():  # (torch warns of the pickle protocol of bytes it did not write, before
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # they are refused below)
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, ... for anything but a storage
        raise pickle.UnpicklingError(f"a tensor's storage did not load ({type(e).__name__})") from None


# A pickled tensor: _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, OrderedDict()); a pickled
# nn.Parameter (scores taken from a model's weights or outputs kept as parameters) wraps one in
# _rebuild_parameter(tensor, requires_grad, OrderedDict()) (all on torch.load(weights_only=True)'s own list, the
# storage loader made safe above).
_TORCH_GLOBALS = {("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
                  ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
                  ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
                  ("collections", "OrderedDict"): collections.OrderedDict}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _TORCH_GLOBALS:
            return _TORCH_GLOBALS[module, name]
        if (module, name) == _CODECS_ENCODE or is_numpy_pickle_global(module, name):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a scores file")


def _numpy_safe_globals() -> list:
    """The same globals for ``torch.load(weights_only=True)``."""
    import codecs

    return [*numpy_safe_globals(), (codecs.encode, ".".join(_CODECS_ENCODE))]


def _class_array(scores: Any, task: str, nid: str, path: Path) -> np.ndarray:
    try:
        table = {int(k): float(v) for k, v in scores.items()}
    except (AttributeError, TypeError, ValueError):
        raise LeapError(f"{task} scores are not a {{\"class id\": score}} object", path=path, record=nid) from None
    if len(table) != len(scores):  # "0" and "00" (or " 0") name one class
        twice = collections.Counter(int(k) for k in scores)
        raise LeapError(f"{task} class id {min(k for k, n in twice.items() if n > 1)} is given more than once",
                        path=path, record=nid, fix="give one score per class id")
    if sorted(table) != list(range(len(table))):
        raise LeapError(f"{task} scores do not cover the class ids 0..{len(table) - 1}", path=path, record=nid,
                        fix="give a score for every class")
    return np.array([table[i] for i in range(len(table))], dtype=np.float64)


def _class_rows(results: dict, task: str, path: Path) -> np.ndarray:
    """One row per segment; a segment with another number of classes than the first is named."""
    rows: list[np.ndarray] = []
    first = next(iter(results))
    for nid, result in results.items():
        row = _class_array(result.get(task), task, nid, path)
        if rows and len(row) != len(rows[0]):
            raise LeapError(f"{len(row)} {task} classes here but {len(rows[0])} in {first}", path=path, record=nid,
                            fix="give every segment a score for every class")
        rows.append(row)
    return np.stack(rows)


def _action_pair(key: str) -> tuple[int, int]:
    from leap_cli.evaluate.metrics import action_key_pair

    pair = action_key_pair(key)
    if pair is None:  # (as submit --check refuses it)
        raise ValueError(key)
    return pair


def _action_rows(results: dict, path: Path, verbs: int, nouns: int) -> dict:
    """The optional action scores ("verb,noun": score): exactly ``TOP_N_ACTIONS`` on every segment, of verb and
    noun ids within the file's own classes, as EPIC's anticipation evaluator (and ``leap submit --check``) takes
    them; figures of a file it refuses would be no figures of the challenge's."""
    from leap_cli.evaluate.metrics import TOP_N_ACTIONS, action_id

    count = min(TOP_N_ACTIONS, min(TOP_N_ACTIONS, verbs) * min(TOP_N_ACTIONS, nouns))  # (action_scores' K: 100 on EPIC)
    rows = []
    for nid, result in results.items():
        actions = result["action"]
        if not isinstance(actions, dict):
            raise LeapError("action scores are not a {\"verb,noun\": score} object", path=path, record=nid,
                            fix=_FIX_FORMAT)
        try:
            rows.append([(*_action_pair(k), float(v)) for k, v in actions.items()])
        except (ValueError, TypeError):
            raise LeapError("action keys must be \"verb,noun\" class ids as written (\"7,12\": no sign, blank or "
                            "leading zero) with numeric scores", path=path, record=nid) from None
        if outside := next((f"{v},{n}" for v, n, _ in rows[-1] if v >= verbs or n >= nouns), None):
            raise LeapError(f"the action {outside} is outside the file's {verbs} verb and {nouns} noun classes",
                            path=path, record=nid, fix=_FIX_FORMAT)
        if len(actions) != count:
            raise LeapError(f"{len(actions)} action scores, where EPIC's anticipation evaluator takes exactly "
                            f"{count}", path=path, record=nid,
                            fix=f"give every segment its {count} best actions (leap submit --with-actions writes "
                                "them), or no action scores")
    return {"ids": torch.tensor([[action_id(v, n) for v, n, _ in row] for row in rows]),
            "scores": torch.tensor([[s for _, _, s in row] for row in rows], dtype=torch.float64)}


def _from_challenge(doc: Any, path: Path) -> dict:
    """Official challenge JSON -> leap's scores layout (raw values kept)."""
    results = doc.get("results") if isinstance(doc, dict) else None
    if not isinstance(results, dict) or not results:
        raise LeapError("a challenge JSON needs a non-empty 'results' object", path=path, fix=_FIX_FORMAT)
    for nid, result in results.items():
        if not isinstance(result, dict):
            raise LeapError(f"the result is a {type(result).__name__}, not an object of verb and noun scores",
                            path=path, record=nid, fix=_FIX_FORMAT)
    out: dict = {"narration_id": list(results), "verb_output": _class_rows(results, "verb", path),
                 "noun_output": _class_rows(results, "noun", path),
                 "meta": {"challenge": doc.get("challenge"),
                          "task": "anticipation" if doc.get("challenge") == "action_anticipation" else "recognition"}}
    with_actions = ["action" in r for r in results.values()]
    if any(with_actions):
        if not all(with_actions):
            raise LeapError("action scores on some segments but not all", path=path,
                            fix="give action scores for every segment or none")
        out["action"] = _action_rows(results, path, out["verb_output"].shape[1], out["noun_output"].shape[1])
    return out


def _read_raw(path: Path) -> Any:
    if not path.exists():
        raise LeapError("scores file not found", path=path, fix="run `leap evaluate` first or check the path")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise LeapError(f"unknown scores file suffix {path.suffix!r}", path=path,
                        fix=f"name it by its format: {', '.join(SUFFIXES)}")
    if suffix in (".zip", ".json"):
        from leap_cli.submit import read_submission

        if suffix == ".zip":
            return _from_challenge(read_submission(path), path)
        try:
            return _from_challenge(json.loads(path.read_text(encoding="utf-8")), path)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise LeapError(f"not valid JSON ({e})", path=path, fix=_FIX_FORMAT) from None
    if suffix in (".pkl", ".pickle"):
        try:
            with open(path, "rb") as f:
                return _SafeUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as e:
            raise LeapError(f"cannot read the pickle ({load_problem(e, path)})", path=path, fix=_FIX_FORMAT) from None
    try:
        with weights_only_allowing(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, ... for foreign or broken files
        raise LeapError(f"cannot read with torch.load(weights_only=True): {load_problem(e, path)}",
                        path=path, fix=_FIX_FORMAT) from None


def _as_tensor(x: Any, name: str, path: Path) -> torch.Tensor:
    """float64 scores stay float64 (rounding them to float32 could tie distinct scores); others become float32.
    A tensor saved with its autograd graph (a model's outputs not detached, an nn.Parameter) is taken as values;
    complex ones are refused (their cast to float drops the imaginary parts, with no more than a warning)."""
    try:
        if isinstance(x, torch.Tensor):
            x = x.detach()
        elif (a := np.asarray(x)).dtype.kind != "c":
            x = torch.as_tensor(a if a.dtype == np.float64 else np.asarray(a, dtype=np.float32))
    except (TypeError, ValueError) as e:
        raise LeapError(f"{name} is not a numeric array ({e})", path=path, fix=_FIX_FORMAT) from None
    if not isinstance(x, torch.Tensor) or x.is_complex():  # (cast to float, the imaginary parts would be dropped)
        raise LeapError(f"{name} holds complex numbers, where scores are real (EPIC's results format: float)",
                        path=path, fix=f"save the real scores ({name}.real, if the imaginary parts are all 0)")
    if x.ndim != 2:
        raise LeapError(f"{name} has shape {tuple(x.shape)}, expected [N, classes]", path=path, fix=_FIX_FORMAT)
    return x if x.dtype == torch.float64 else x.float()


def _from_entries(entries: Sequence[dict], path: Path) -> dict:
    """The official list of per-segment dicts -> one dict of stacked rows; an entry that differs is named."""
    def where(k: int, entry: dict) -> str:
        return f"entry {k} ({entry['narration_id']})" if "narration_id" in entry else f"entry {k}"

    for k, entry in enumerate(entries):
        missing = [key for key in REQUIRED if key not in entry]
        if missing:
            raise LeapError(f"segment entries lack {', '.join(missing)}", path=path, record=where(k, entry),
                            fix=_FIX_FORMAT)
    out: dict = {"narration_id": [e["narration_id"] for e in entries]}
    for name in ("verb_output", "noun_output"):
        rows = [np.asarray(e[name]) for e in entries]
        for k, row in enumerate(rows):
            if row.shape != rows[0].shape:
                raise LeapError(f"{name} of shape {row.shape} here but {rows[0].shape} in entry 0", path=path,
                                record=where(k, entries[k]), fix="give every segment a score for every class")
        out[name] = np.stack(rows)
    return out


def normalize_scores(raw: Any, path: str | Path = "<scores>") -> dict:
    """Turn any accepted layout into leap's dict (tensors, list of str ids), checking shapes and duplicates."""
    path = Path(path)
    if isinstance(raw, (list, tuple)):
        if not raw or not all(isinstance(r, dict) for r in raw):
            raise LeapError("a list of results must hold one dict per segment", path=path, fix=_FIX_FORMAT)
        raw = _from_entries(raw, path)
    if not isinstance(raw, dict):
        raise LeapError(f"holds a {type(raw).__name__}, not a dict of scores", path=path, fix=_FIX_FORMAT)
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise LeapError(f"missing {'key' if len(missing) == 1 else 'keys'} {', '.join(missing)}", path=path, fix=_FIX_FORMAT)
    # (a NumPy bytes array, as Python 2 pickled an array of str, holds each id as its encoded text)
    given = raw["narration_id"].tolist() if hasattr(raw["narration_id"], "tolist") else raw["narration_id"]
    if isinstance(given, (str, bytes)):  # (iterated, its characters would be the ids)
        one = given.decode("utf-8", "replace") if isinstance(given, bytes) else given
        raise LeapError(f"narration_id is one string ({one[:40]!r}), not an array of N ids", path=path,
                        fix=f"give narration_id as a list or array with one id per row, e.g. [{one[:40]!r}] for one "
                            "segment (EPIC's results format: narration_id [N])")
    nested = next((k for k, x in enumerate(given) if isinstance(x, (list, tuple))), None)
    if nested is not None:  # (an array [N, 1]: each id was read as the text of its row, "['P01_01_0']")
        raise LeapError(f"narration_id is not one id per row (row {nested} holds {str(given[nested])[:60]})",
                        path=path, fix="save narration_id as a flat list or array [N] (e.g. numpy's ids.reshape(-1)), "
                                       "EPIC's results format")
    ids = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in given]
    if not ids:  # (EPIC's evaluator needs at least one instance; the metrics would fail on none)
        raise LeapError("holds no segments (0 narration ids)", path=path, fix=_FIX_FORMAT)
    verb, noun = _as_tensor(raw["verb_output"], "verb_output", path), _as_tensor(raw["noun_output"], "noun_output", path)
    if not len(ids) == verb.shape[0] == noun.shape[0]:
        raise LeapError(f"{len(ids)} narration ids but {verb.shape[0]} verb rows and {noun.shape[0]} noun rows",
                        path=path, fix="every row of verb_output/noun_output needs its narration_id")
    seen: set[str] = set()
    dups = [i for i in ids if i in seen or seen.add(i)]
    if dups:
        raise LeapError(f"{counted(len(dups), 'duplicated narration id')}, e.g. {', '.join(dups[:5])}", path=path,
                        fix="keep one row per segment (average the views of a segment before saving)")
    out = {"narration_id": ids, "verb_output": verb, "noun_output": noun}
    for key in ("program", "meta", "action"):
        if isinstance(raw.get(key), dict):
            out[key] = raw[key]
    return out


def scores_task(scores: dict) -> str | None:
    """The task the scores were made for (leap's files say it in ``meta.task``; the official formats do not)."""
    return (scores.get("meta") or {}).get("task")


def load_scores(path: str | Path) -> dict:
    """Read a leap ``scores.pt`` or an official-format ``.pt``/``.pkl`` results file."""
    path = Path(path)
    try:
        return normalize_scores(_read_raw(path), path)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as e:  # a layout the checks above missed
        # (segments of different class counts, a result that is not an object, ...): one line, not a traceback
        raise LeapError(f"not a scores layout leap reads ({type(e).__name__}: {str(e)[:160]})", path=path,
                        fix=_FIX_FORMAT) from None


def save_scores(path: str | Path, narration_ids: Sequence[str], verb_output: torch.Tensor,
                noun_output: torch.Tensor, *, program: dict | None = None, meta: dict | None = None) -> dict:
    """Write a scores file atomically (loadable with ``torch.load(weights_only=True)``) and return its dict."""
    scores = normalize_scores({"narration_id": list(narration_ids), "verb_output": verb_output,
                               "noun_output": noun_output}, path)
    if program:
        scores["program"] = program
    if meta:
        scores["meta"] = meta
    with atomic_path(path) as tmp:
        buf = io.BytesIO()
        torch.save(scores, buf)
        tmp.write_bytes(buf.getvalue())
    return scores
