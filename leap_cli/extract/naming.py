"""Names for object boxes: zero-shot CLIP over the data set's noun classes, with the narration as a prior.

EPIC's hand-object boxes carry no labels. ``ClipNamer`` crops each box (``crop_box``: the box plus a margin, made
square inside the frame) and scores the crop against every noun class of ``EPIC_100_noun_classes.csv``, each
class prompted with its key and first synonyms ("a photo of a wooden spoon."; embeddings averaged per class and
cached on disk per model). The narration's nouns are a prior, not the answer: the CLIP probabilities are
multiplied by ``prior_boost`` for the segment's nouns and renormalised, so a confident crop still wins.

Without weights, ``prior_name`` names a contact from the narration alone: the first narration noun whose EPIC
category fits the contact (stationary contacts: appliances, furniture, storage; portable: the rest), else the
segment's main noun. Such names say ``named_by: narration-prior``.

The model is open_clip's (``pip install open_clip_torch``, or ``leap-cli[naming]``): ``--clip-weights FILE``
(OpenAI's ``ViT-B-16.pt`` TorchScript archive, or an open_clip state dict) or ``--clip-weights openai`` for
open_clip's own download on a connected machine. As in open_clip, QuickGELU is for OpenAI's weights only (the
``openai`` tag, the TorchScript archive, or a ``-quickgelu`` architecture such as ``ViT-B-16-quickgelu``); a state
dict runs with its architecture's activation (GELU for ``ViT-B-16``, as LAION's and DataComp's weights).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from leap_cli.epic.hand_objects import BBox
from leap_cli.errors import LeapError
from leap_cli.io import atomic_path, stable_hash

log = logging.getLogger(__name__)

STATIONARY_CATEGORIES = frozenset({"appliances", "furniture", "storage"})
PROMPT = "a photo of a {}."
FORMS_PER_CLASS = 5  # the key and the first synonyms: EPIC lists the common forms first
# Keys a TorchScript CLIP archive holds besides the weights.
_JIT_EXTRAS = ("input_resolution", "context_length", "vocab_size")


def readable(form: str) -> str:
    """EPIC's 'noun:modifier' forms as words: 'spoon:wooden' -> 'wooden spoon', 'control:remote' -> 'remote control'."""
    return " ".join(reversed(form.split(":"))).replace("-", " ").replace("_", " ").strip()


def class_prompts(vocab) -> tuple[list[int], list[list[str]]]:
    """Class ids in order and, per class, the prompts of its key and first synonyms (deduplicated)."""
    ids, prompts = vocab.ids, []
    for cid in ids:
        forms: list[str] = []
        for f in [vocab.keys[cid], *vocab.instances.get(cid, [])]:
            text = readable(f)
            if text and text not in forms:
                forms.append(text)
            if len(forms) == FORMS_PER_CLASS:
                break
        prompts.append([PROMPT.format(f) for f in forms])
    return ids, prompts


def crop_box(frame: np.ndarray, box: BBox, size: int, margin: float = 0.1) -> np.ndarray:
    """[size, size, 3] crop of ``box`` (fractions of the frame) with ``margin`` of its size on each side, made
    square around the box centre and shifted to stay inside the frame (zero-padded where the frame is smaller)."""
    import cv2

    h, w = frame.shape[:2]
    bw, bh = (box.right - box.left) * w, (box.bottom - box.top) * h
    side = max(bw, bh) * (1 + 2 * margin)
    side = int(round(max(side, 8.0)))
    cx, cy = (box.left + box.right) / 2 * w, (box.top + box.bottom) / 2 * h
    x0 = int(round(min(max(cx - side / 2, 0), max(w - side, 0))))
    y0 = int(round(min(max(cy - side / 2, 0), max(h - side, 0))))
    patch = frame[y0:y0 + side, x0:x0 + side]
    if patch.shape[0] != side or patch.shape[1] != side:  # box larger than the frame: pad
        canvas = np.zeros((side, side, 3), dtype=frame.dtype)
        canvas[:patch.shape[0], :patch.shape[1]] = patch
        patch = canvas
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(np.ascontiguousarray(patch), (size, size), interpolation=interp)


def narration_nouns(segment, vocab) -> list[int]:
    """The segment's noun classes in the narration's order (main noun first), those the vocabulary has."""
    ids = [c for c in (segment.noun_class, *segment.all_noun_classes) if c is not None and c in vocab.keys]
    return list(dict.fromkeys(ids))


def prior_name(segment, vocab, state: str | None) -> str | None:
    """A contact's object from the narration alone: the first noun whose category fits a ``stationary`` or
    ``portable`` contact, else the main noun; None when the segment has no narration nouns."""
    if vocab is None:
        return None
    nouns = narration_nouns(segment, vocab)
    if not nouns:
        return None
    if state is not None:
        stationary = state.startswith("stationary")
        for c in nouns:
            if (vocab.categories.get(c) in STATIONARY_CATEGORIES) == stationary:
                return vocab.keys[c]
    return vocab.keys[nouns[0]]


def _import_open_clip():
    try:
        import open_clip
    except ImportError:
        raise LeapError("CLIP naming is unavailable: open_clip is not installed",
                        fix="pip install open_clip_torch (or pip install 'leap-cli[naming]'), "
                            "or leave out --clip-weights") from None
    return open_clip


class ClipNamer:
    """Zero-shot naming of crops with an open_clip model; ``source`` says which model named them."""

    def __init__(self, weights: str | Path, *, arch: str = "ViT-B-16", device: str = "cpu",
                 cache_dir: str | Path | None = None, prior_boost: float = 10.0, top_k: int = 5,
                 batch_size: int = 32):
        import torch

        open_clip = _import_open_clip()
        if arch not in open_clip.list_models():
            raise LeapError(f"unknown open_clip architecture {arch!r}", fix="use ViT-B-16 (OpenAI's CLIP ViT-B/16)")
        self._torch = torch
        if str(weights) == "openai" and not Path(weights).is_file():
            self.model = _openai_clip(open_clip, arch)
            self._identity = f"{arch}:openai"
            self.source = f"clip:{arch}:openai"
        else:
            self.model = load_clip_file(open_clip, arch, weights)
            st = Path(weights).stat()
            self._identity = f"{arch}:{Path(weights).resolve()}:{st.st_size}:{st.st_mtime_ns}"
            self.source = f"clip:{arch}:{Path(weights).name}"
        self.model.eval().to(device)
        self.tokenizer = open_clip.get_tokenizer(arch)
        cfg = getattr(self.model.visual, "preprocess_cfg", {}) or {}
        size = cfg.get("size", getattr(self.model.visual, "image_size", 224))
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.mean = np.array(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN), dtype=np.float32)
        self.std = np.array(cfg.get("std", open_clip.OPENAI_DATASET_STD), dtype=np.float32)
        self.device = device
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.prior_boost = prior_boost
        self.top_k = top_k
        self.batch_size = batch_size
        self._text: dict[tuple, tuple[list[int], object]] = {}

    # --- text side ------------------------------------------------------------------------------------------
    def class_embeddings(self, vocab):
        """Class ids and [C, D] unit text embeddings of the vocabulary, computed once per model and vocabulary
        (in memory, and on disk under ``cache_dir``)."""
        torch = self._torch
        ids, prompts = class_prompts(vocab)
        key = stable_hash([self._identity, PROMPT, prompts])[:16]
        if key in self._text:
            return self._text[key]
        path = self.cache_dir / f"clip-text-{key}.pt" if self.cache_dir is not None else None
        emb = None
        if path is not None and path.is_file():
            try:
                emb = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 - a broken cache file is recomputed
                log.warning("text-embedding cache %s unreadable: recomputing", path)
        if emb is None or emb.shape[0] != len(ids):
            flat = [p for ps in prompts for p in ps]
            with torch.inference_mode():
                out = []
                for i in range(0, len(flat), 256):
                    t = self.model.encode_text(self.tokenizer(flat[i:i + 256]).to(self.device)).float()
                    out.append(torch.nn.functional.normalize(t, dim=-1).cpu())
                per_prompt = torch.cat(out)  # [P, D]
            rows, at = [], 0
            for ps in prompts:
                rows.append(per_prompt[at:at + len(ps)].mean(0))
                at += len(ps)
            emb = torch.nn.functional.normalize(torch.stack(rows), dim=-1)  # [C, D]
            if path is not None:
                with atomic_path(path) as tmp:
                    torch.save(emb, tmp)
        self._text[key] = (ids, emb.to(self.device))
        return self._text[key]

    # --- image side -----------------------------------------------------------------------------------------
    def probabilities(self, crops: list[np.ndarray], vocab) -> tuple[list[int], np.ndarray]:
        """Class ids and [N, C] CLIP probabilities of ``crops`` ([S, S, 3] uint8 RGB at ``image_size``)."""
        torch = self._torch
        ids, text = self.class_embeddings(vocab)
        if not crops:
            return ids, np.zeros((0, len(ids)), dtype=np.float32)
        x = (np.stack(crops).astype(np.float32) / 255.0 - self.mean) / self.std  # [N, S, S, 3]
        scale = float(self.model.logit_scale.detach().exp()) if hasattr(self.model, "logit_scale") else 100.0
        out = []
        with torch.inference_mode():
            for i in range(0, len(x), self.batch_size):
                xb = torch.from_numpy(x[i:i + self.batch_size]).permute(0, 3, 1, 2).to(self.device)  # [B, 3, S, S]
                img = torch.nn.functional.normalize(self.model.encode_image(xb).float(), dim=-1)  # [B, D]
                out.append((scale * img @ text.T).softmax(-1).cpu().numpy())  # [B, C]
        return ids, np.concatenate(out)

    def name_boxes(self, frames: list[np.ndarray], boxes: list[BBox], vocab, prior: list[int] | None = None,
                   ) -> list[list[tuple[str, float]]]:
        """Top-k (noun key, score) of each box, the box cropped from its frame; ``prior``: narration noun ids."""
        return self.name_boxes_both(frames, boxes, vocab, prior)[0]

    def name_boxes_both(self, frames: list[np.ndarray], boxes: list[BBox], vocab, prior: list[int] | None = None):
        """The top-k names of each box with the prior, and CLIP's alone (what is measured against narrations)."""
        crops = [crop_box(f, b, self.image_size) for f, b in zip(frames, boxes)]
        ids, probs = self.probabilities(crops, vocab)
        post = self.apply_prior(ids, probs, prior)
        return [self.top(ids, p, vocab) for p in post], [self.top(ids, p, vocab) for p in probs]

    def apply_prior(self, ids: list[int], probs: np.ndarray, prior: list[int] | None) -> np.ndarray:
        if not prior or not len(probs):
            return probs
        w = np.ones(len(ids), dtype=np.float32)
        where = {c: i for i, c in enumerate(ids)}
        for c in prior:
            if c in where:
                w[where[c]] = self.prior_boost
        post = probs * w
        return post / post.sum(axis=1, keepdims=True)

    def top(self, ids: list[int], p: np.ndarray, vocab) -> list[tuple[str, float]]:
        order = np.argsort(-p)[:self.top_k]
        return [(vocab.keys[ids[i]], round(float(p[i]), 4)) for i in order]


def mean_names(named: list[list[tuple[str, float]]], k: int = 5) -> list[tuple[str, float]]:
    """Average the top-k lists of several crops of one object (a name missing from a list counts 0)."""
    if not named:
        return []
    total: dict[str, float] = {}
    for lst in named:
        for noun, s in lst:
            total[noun] = total.get(noun, 0.0) + s
    ranked = sorted(total.items(), key=lambda kv: -kv[1])[:k]
    return [(noun, round(s / len(named), 4)) for noun, s in ranked]


# open_clip's files of a hub release, the safetensors one first (as open_clip asks for them)
_HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_REACH_S = 5.0  # seconds to wait for the Hugging Face hub to answer a connection before calling it unreachable


def _openai_clip(open_clip, arch: str):
    """OpenAI's CLIP ``arch`` (open_clip's ``openai`` tag): from a cache where one holds it (OpenAI's archive
    where open_clip keeps its URL's files, else open_clip's files in the Hugging Face cache), never asking the
    network then (an offline compute node waited ~50 s of the hub client's retries before it read its own
    cache); else open_clip's download, once the hub is seen to answer (else the error at once, with the files
    to place)."""
    pcfg = open_clip.get_pretrained_cfg(arch, "openai")
    url, hub = pcfg.get("url", ""), pcfg.get("hf_hub", "").strip("/")
    cached = Path("~/.cache/clip").expanduser() / url.rsplit("/", 1)[-1]  # where open_clip puts the URL's file
    if url and cached.is_file():
        return load_clip_file(open_clip, arch, cached)
    for name in _HUB_FILES if hub else ():
        found = _hub_cached(hub, name)
        if found is not None:
            log.info("OpenAI's CLIP %s from the Hugging Face cache: %s", arch, found)
            return load_clip_file(open_clip, arch, found, quick_gelu=True)
    unreachable = _hub_unreachable() if hub else None
    if unreachable:
        raise LeapError(f"cannot download OpenAI's CLIP {arch}: {unreachable}",
                        fix=_openai_fix(open_clip, arch, url, cached))
    logging.disable(logging.WARNING)  # the hub client's retry lines and open_clip's own: the error says it all
    try:  # open_clip's own download (into its cache) on a connected machine
        return open_clip.create_model(arch, pretrained="openai", force_quick_gelu=True)
    except Exception as e:  # noqa: BLE001 - say which file to place where
        raise LeapError(f"cannot download OpenAI's CLIP {arch} through open_clip ({type(e).__name__})",
                        fix=_openai_fix(open_clip, arch, url, cached)) from None
    finally:
        logging.disable(logging.NOTSET)


def _hub_cached(repo: str, name: str) -> Path | None:
    """The file ``name`` of hub repository ``repo`` where the Hugging Face cache holds it, else None."""
    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo, name, cache_dir=constants.HF_HUB_CACHE)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


_PROXIES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def _hub_unreachable() -> str | None:
    """Why the Hugging Face hub (``HF_ENDPOINT``, huggingface.co by default) cannot be downloaded from: offline
    mode, no such name, no connection; else None. Behind a proxy the hub client goes through it, so no direct
    connection is tried then (nor where HF_ENDPOINT has no scheme to read its host from)."""
    import os
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set and the Hugging Face cache does not hold it"
    if any(os.environ.get(k) for k in _PROXIES):
        return None
    try:
        from huggingface_hub import constants

        endpoint = urlparse(constants.ENDPOINT)
    except ImportError:
        endpoint = urlparse("https://huggingface.co")
    if endpoint.hostname is None:  # (an endpoint without a scheme: the hub client's to read, not ours to guess)
        return None
    host = endpoint.hostname
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=_REACH_S).close()
    except OSError as e:
        return f"{host} cannot be reached ({e.strerror or type(e).__name__}: no network here?)"
    return None


def _openai_fix(open_clip, arch: str, url: str, cached: Path) -> str:
    hub = open_clip.get_pretrained_cfg(arch, "openai").get("hf_hub", "").strip("/")
    places = [f"place {cached.name} (from {url}) at {cached}"] if url else []
    if hub:
        from huggingface_hub.constants import HF_HUB_CACHE

        folder = Path(HF_HUB_CACHE) / f"models--{hub.replace('/', '--')}"
        places.append(f"fill the Hugging Face cache {folder} with open_clip_pytorch_model.bin "
                      f"(huggingface-cli download {hub} open_clip_pytorch_model.bin)")
    return ", or ".join(places + ["pass --clip-weights FILE"])


def load_clip_file(open_clip, arch: str, path: str | Path, *, quick_gelu: bool = False):
    """An open_clip model of ``arch`` built without weights, then the local file loaded exactly (OpenAI's
    TorchScript archive or a state dict in open_clip's / OpenAI's key layout, which are the same). QuickGELU
    for OpenAI's archive (its ``input_resolution`` ... entries say so) or with ``quick_gelu`` (OpenAI's weights
    as a state dict: open_clip's ``openai`` tag on the Hugging Face hub), else the activation of ``arch``."""
    from leap_cli.extract.weights import load_exact, unwrap_state_dict
    from leap_cli.model.uniformerv2 import read_checkpoint

    state = unwrap_state_dict(read_checkpoint(path), path, "CLIP")
    openai = quick_gelu or any(k in state for k in _JIT_EXTRAS)
    for k in _JIT_EXTRAS:
        state.pop(k, None)
    quiet = _NoRandomInitWarning()  # open_clip warns "initialized randomly": the file is loaded next
    logging.getLogger().addFilter(quiet)
    try:
        model = open_clip.create_model(arch, pretrained=None, force_quick_gelu=openai)
    finally:
        logging.getLogger().removeFilter(quiet)
    if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    load_exact(model, state, path, "CLIP")
    return model


class _NoRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()
