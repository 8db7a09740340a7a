"""The streaming training/evaluation dataset over ``leap build-shards`` output.

``ShardDataset(folder, train=True, ...)`` is a torch ``IterableDataset``; use it with a plain
``DataLoader(ds, batch_size=B, num_workers=W, collate_fn=collate_clips)``.

Each epoch visits every sample exactly once across DDP ranks and DataLoader workers. The epoch order is
the stored order, in training shuffled per epoch by runs of ``block`` samples across all shards (the same
on every rank: ``seed`` and ``set_epoch``);
rank r takes the contiguous r-th of ``world_size`` slices of it, in training passed through a shuffle buffer
(simulated on positions, before anything is read). Training then hands whole batches of ``batch_size`` (give
the DataLoader's) to the DataLoader workers round-robin, batch k to worker k % W, the order in which the
DataLoader collects them; evaluation deals its stored order the same way. So the batches, their order and in
training their augmentation (drawn per sample from (seed, epoch, rank, position)) do not depend on the number of
workers, and only the rank's last partial batch is partial (training drops it: ``drop_last``). ``set_epoch(e,
skip_batches=k)`` starts the epoch at its batch k (a resumed run): the batches before it are neither read nor
decoded, and the rest are the same batches in the same order. Samples are read
with one seek each (offsets from the manifest), so a consumer reads only its own bytes. The split is by
sample, not by whole shard, so it is exact even when there are fewer shards than consumers.

Padding: with ``pad=True`` (DDP training, where ranks must see the same number of batches) every rank
yields ``ceil(n / world_size)`` samples; the extra ones (at most ``world_size - 1`` per epoch) repeat samples
from the start of the epoch order and carry ``padding: True`` in the batch. ``pad=False`` (the default,
used for evaluation) yields each sample exactly once and ranks may differ by one sample.

Batch (``collate_clips``), the contract consumed by train/evaluate:
``video`` uint8 ``[B,3,T,H,W]`` RGB (4x less to move between processes than float32; the model normalises it
on its device with the mean/std it was built with; evaluation with V = temporal x spatial views > 1:
``[B,V,3,T,H,W]``), ``verb_class``/``noun_class`` long ``[B]`` (-1 unknown), ``has_program`` bool ``[B]``,
``program_steps`` long ``[B,L,5]`` (token rows [verb, obj_a, obj_b, hand, kind] of ``programs.targets`` incl.
the END row, -100 padding; L = manifest max_steps; ``[B,L,3]`` for manifests without ``structure``),
``conditions`` float ``[B,2P]`` (multi-hot, pre then post), ``step_conditions`` float ``[B,L,2P]`` (per row), ``narration_id`` list[str], ``padding`` bool
``[B]``; anticipation: ``context_video`` ``[B,C,3,T,H,W]`` (oldest first, zeros where absent; with views
``[B,V,C,3,T,H,W]``, the same crops as ``video``) and ``context_mask`` bool ``[B,C]``.

Errors: a missing, truncated or corrupt shard raises a ``LeapError`` naming the shard and the sample
(``on_error="raise"``), or is logged and counted in ``stats["errors"]`` (``on_error="skip"``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import sys
import weakref
from pathlib import Path
from typing import Iterator, NoReturn

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from leap_cli.common import counted
from leap_cli.errors import LeapError
from leap_cli.evaluate.metrics import IGNORE_INDEX
from leap_cli.shards.format import (group_sample, load_folders, parse_members, read_sample_at, rebuild_fix,
                                   sample_crc)
from leap_cli.shards.transforms import (color_jitter, crop_resize, decode_jpegs, random_resized_box,
                                        spatial_boxes, temporal_indices, to_tensor)

log = logging.getLogger(__name__)


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class ShardDataset(IterableDataset):
    """Clips from shards; see the module docstring for order, splitting, padding and the batch layout."""

    def __init__(self, source: str | Path | list, *, train: bool = True, num_frames: int = 8, img_size: int = 224,
                 temporal_views: int = 1, spatial_views: int = 1, shuffle_buffer: int = 256, seed: int = 0,
                 scale: tuple[float, float] = (0.25, 1.0), color_jitter: float = 0.0, rank: int | None = None,
                 world_size: int | None = None, pad: bool = False, on_error: str = "raise", epoch: int = 0,
                 block: int = 32, batch_size: int = 1):
        if on_error not in ("raise", "skip"):
            raise LeapError(f"on_error must be raise or skip, not {on_error!r}")
        self.manifest, self.folder = load_folders(source)  # (several folders: shards.format.load_folders)
        self.train, self.num_frames, self.img_size = train, num_frames, img_size
        self.temporal_views, self.spatial_views = (1, 1) if train else (temporal_views, spatial_views)
        self.shuffle_buffer = shuffle_buffer if train else 0
        self.seed, self.scale, self.jitter = seed, scale, color_jitter
        r, w = _dist_rank_world()
        self.rank = r if rank is None else rank
        self.world_size = w if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise LeapError(f"rank {self.rank} is outside world size {self.world_size}")
        self.pad, self.on_error, self.block, self.batch_size = pad, on_error, max(1, block), max(1, batch_size)
        # The epoch lives in shared memory, so persistent DataLoader workers (which keep their copy of the dataset
        # across epochs) read the value set_epoch wrote in the main process.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._epoch.fill_(epoch)
        self._skip = torch.zeros((), dtype=torch.int64).share_memory_()  # training batches to leave out (resume)
        self.shards = self.manifest["shards"]
        self.size = sum(s["count"] for s in self.shards)
        targets = self.manifest.get("targets") or {}
        self.max_steps = int(targets.get("max_steps", 1))
        self.num_conditions = len(targets.get("conditions", []))
        self.step_width = 5 if "structure" in targets else 3  # [verb, obj_a, obj_b(, hand, kind)]: programs.targets
        self.context = int(self.manifest["settings"].get("context", 0)) if self.manifest.get("task") == "anticipation" else 0
        self.stats = {"samples": 0, "padding": 0, "errors": 0}
        stored = int(self.manifest["settings"].get("frames", num_frames))
        if stored < num_frames and self.rank == 0:  # (a model of 8 frames trained on 4 stored ones, without a word)
            log.warning("%s: the shards hold %d frames per clip, the model takes %d: frames are repeated (build-shards "
                        "--frames %d stores as many)", self.folder, stored, num_frames, num_frames)

    # ---- which samples this consumer reads -------------------------------------------------------------
    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Call before each epoch (as with DistributedSampler), before the DataLoader iterator is made. The order
        and the augmentation of an epoch are a pure function of (seed, epoch, rank): how often the
        dataset was iterated before does not matter, so a resumed run replays an epoch exactly. In training,
        ``skip_batches`` leaves out the epoch's first batches without reading them (where a resumed run stopped)."""
        self._epoch.fill_(int(epoch))
        self._skip.fill_(max(0, int(skip_batches)) if self.train else 0)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def epoch_order(self) -> list[tuple[int, int]]:
        """(shard, position) of every sample in this epoch's order (identical on every rank and worker).
        Training shuffles runs of ``block`` consecutive samples across all shards, so each rank's slice is drawn
        from the whole data set while reads stay mostly sequential; evaluation keeps the stored order."""
        entries = [(s, p) for s in range(len(self.shards)) for p in range(self.shards[s]["count"])]
        if not self.train:
            return entries
        blocks = [entries[i:i + self.block] for i in range(0, len(entries), self.block)]
        np.random.default_rng([self.seed, self.epoch]).shuffle(blocks)
        return [e for b in blocks for e in b]

    def rank_slice(self, order: list[tuple[int, int]]) -> list[tuple[tuple[int, int], bool]]:
        n, W, r = len(order), self.world_size, self.rank
        lo, hi = r * n // W, (r + 1) * n // W
        mine = [(e, False) for e in order[lo:hi]]
        if self.pad and n:
            need = math.ceil(n / W) - len(mine)
            mine += [(order[j % n], True) for j in range(need)]
        return mine

    def __len__(self) -> int:
        """Samples this rank yields per epoch (all its DataLoader workers together)."""
        n, W = self.size, self.world_size
        return math.ceil(n / W) if self.pad and n else (self.rank + 1) * n // W - self.rank * n // W

    def consumer_plan(self, worker_id: int = 0, num_workers: int = 1) -> list[tuple[int, tuple[tuple[int, int], bool]]]:
        """(position in the rank's order, (sample, padding)) for one DataLoader worker (see the module docstring)."""
        mine = list(enumerate(self.rank_slice(self.epoch_order())))
        skip = 0
        if self.train:
            mine = list(self._shuffled(iter(mine), np.random.default_rng([self.seed, self.epoch, self.rank])))
            skip = int(self._skip)
        B = self.batch_size
        return [x for k in range(skip + worker_id, math.ceil(len(mine) / B), num_workers)
                for x in mine[k * B:(k + 1) * B]]

    # ---- reading ---------------------------------------------------------------------------------------
    def shard_path(self, info: dict) -> Path:
        """The tar file of a manifest's shard entry (in its own folder where several are read together)."""
        return Path(info.get("folder") or self.folder) / info["name"]

    def _fail(self, path: Path, key: str, why: str) -> None:
        if self.on_error == "raise":
            raise LeapError(f"corrupt shard: {why}", path=path, record=f"sample {key}",
                            fix=f"leap check-shards lists every damaged file and sample; "
                                f"{rebuild_fix(path.name, path.parent)}")
        self.stats["errors"] += 1
        log.warning("%s [sample %s]: skipped (%s); %d skipped so far", path, key, why, self.stats["errors"])

    def _raw(self, plan: list[tuple[int, tuple[tuple[int, int], bool]]]) -> Iterator[tuple[int, dict, bool, str, str]]:
        files: dict[int, object] = {}  # the shuffled order goes back and forth between a few shards: keep them open
        try:
            for i, ((s, p), padding) in plan:
                info = self.shards[s]
                key = info["keys"][p]
                if s not in files:
                    if len(files) >= 16:
                        files.pop(next(iter(files))).close()
                    try:
                        files[s] = open(self.shard_path(info), "rb")
                    except OSError as e:
                        if e.errno in (errno.EMFILE, errno.ENFILE):  # (the process's limit, not the shard: said
                            raise  # as such, with what to do, by the command's error line)
                        self._fail(self.shard_path(info), key, f"cannot open the shard ({e.strerror})")
                        continue
                f = files[s]
                try:
                    block = read_sample_at(f, info["offsets"][p], info["sizes"][p], sample_crc(info, p))
                    got, fields = group_sample(parse_members(block))
                    if got != key:
                        raise ValueError(f"found sample {got!r} where the manifest has {key!r}")
                except ValueError as e:
                    self._fail(self.shard_path(info), key, str(e))
                    continue
                yield i, fields, padding, self.shard_path(info), key
        finally:
            for f in files.values():
                f.close()

    def _shuffled(self, raw: Iterator, rng: np.random.Generator) -> Iterator:
        if self.shuffle_buffer <= 1:
            yield from raw
            return
        buf: list = []
        for item in raw:
            buf.append(item)
            if len(buf) >= self.shuffle_buffer:
                i = int(rng.integers(len(buf)))
                buf[i], buf[-1] = buf[-1], buf[i]
                yield buf.pop()
        while buf:
            i = int(rng.integers(len(buf)))
            buf[i], buf[-1] = buf[-1], buf[i]
            yield buf.pop()

    def __iter__(self) -> Iterator[dict]:
        import cv2

        wi = get_worker_info()
        wid, nw = (wi.id, wi.num_workers) if wi is not None else (0, 1)
        if wi is not None:
            cv2.setNumThreads(1)
        epoch = self.epoch
        plan = self.consumer_plan(wid, nw)
        for i, fields, padding, shard, key in self._raw(plan):
            try:  # (what a damaged sample raises: JSON that is broken or no object, targets of another shape)
                sample = self.make_sample(fields, np.random.default_rng([self.seed, epoch, self.rank, i]))
            except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
                self._fail(shard, key, f"{type(e).__name__}: {e}")
                continue
            sample["padding"] = padding
            self.stats["samples"] += 1
            self.stats["padding"] += int(padding)
            yield sample
        if self.stats["errors"]:
            log.warning("%s: rank %d worker %d skipped %s so far (on_error=skip)", self.folder, self.rank, wid,
                        counted(self.stats["errors"], "damaged sample"))

    # ---- one sample ------------------------------------------------------------------------------------
    def _frames(self, fields: dict, prefix: str) -> list[bytes]:
        names = sorted(k for k in fields if k.startswith(prefix) and k.endswith(".jpg") and
                       k[len(prefix):].count(".") == 1)
        return [fields[k] for k in names]

    def _views(self, blobs: list[bytes], rng: np.random.Generator, state: dict) -> torch.Tensor:
        """Stored JPEGs -> [3,T,S,S] (train) or [V,3,T,S,S] (eval views); only the frames used are decoded."""
        ts, S, T = len(blobs), self.img_size, self.num_frames
        if self.train:
            clip = decode_jpegs([blobs[i] for i in temporal_indices(ts, T, rng)])
            if "box" not in state:  # one crop and one colour change per sample, shared by its context clips
                state["box"] = random_resized_box(clip.shape[1], clip.shape[2], rng, self.scale)
                state["jitter_seed"] = int(rng.integers(1 << 31))
            x = crop_resize(clip, state["box"], S)
            if self.jitter > 0:
                x = color_jitter(x, self.jitter, np.random.default_rng(state["jitter_seed"]))
            return to_tensor(x)
        picks = [temporal_indices(ts, T, None, tv, self.temporal_views) for tv in range(self.temporal_views)]
        used = sorted({i for p in picks for i in p})
        decoded = dict(zip(used, decode_jpegs([blobs[i] for i in used])))
        h, w = decoded[used[0]].shape[:2]
        _, boxes = spatial_boxes(h, w, S, self.spatial_views)
        views = [to_tensor(crop_resize(np.stack([decoded[i] for i in p]), box, S)) for p in picks for box in boxes]
        return views[0] if len(views) == 1 else torch.stack(views)  # [V,3,T,S,S]

    def make_sample(self, fields: dict, rng: np.random.Generator) -> dict:
        meta = json.loads(fields["json"])
        frames = self._frames(fields, "f")
        if not frames:
            raise ValueError("sample has no frames")
        state: dict = {}
        video = self._views(frames, rng, state)
        L, P = self.max_steps, self.num_conditions
        steps = torch.full((L, self.step_width), -100, dtype=torch.long)
        cond = torch.zeros(2 * P)
        step_cond = torch.zeros(L, 2 * P)
        tg = meta.get("targets") if meta.get("has_program") else None
        if tg:
            if tg["steps"]:  # (none: nothing to reshape, every row stays ignored)
                st = torch.tensor(_step_rows(tg["steps"]), dtype=torch.long).view(len(tg["steps"]), -1)[
                    :L, :self.step_width]
                steps[:len(st), :st.shape[1]] = st
            for i in _condition_ids(tg.get("pre", []), P):
                cond[i] = 1.0
            for i in _condition_ids(tg.get("post", []), P):
                cond[P + i] = 1.0
            for half, rows in ((0, tg.get("step_pre") or []), (P, tg.get("step_post") or [])):
                for r, ids in enumerate(rows[:L]):
                    for i in _condition_ids(ids, P):
                        step_cond[r, half + i] = 1.0
        vc, nc = meta.get("verb_class"), meta.get("noun_class")
        out = {"video": video, "verb_class": -1 if vc is None else int(vc), "noun_class": -1 if nc is None else int(nc),
               "has_program": bool(tg), "program_steps": steps, "conditions": cond,
               "step_conditions": step_cond,
               "narration_id": meta["narration_id"]}
        if self.context:
            clips, mask = [], []
            ctx = meta.get("context") or []
            for c in range(self.context):
                blobs = self._frames(fields, f"c{c}.f")
                present = bool(blobs) and c < len(ctx) and ctx[c].get("present", False)
                clips.append(self._views(blobs, rng, state) if present else torch.zeros_like(video))
                mask.append(present)
            out["context_video"] = torch.stack(clips, dim=-5)  # [C,3,T,S,S] or [V,C,3,T,S,S]
            out["context_mask"] = torch.tensor(mask, dtype=torch.bool)
        return out


def _step_rows(rows) -> list:
    """A sample's step rows, each id an int, ``IGNORE_INDEX`` or from 0 (a ValueError for another: a damaged shard's
    1e30 was torch's RuntimeError out of the loader, 1.5 was taken as 1)."""
    for row in rows:
        for v in row:
            if isinstance(v, bool) or not isinstance(v, int) or not (v == IGNORE_INDEX or 0 <= v < 2 ** 31):
                raise ValueError(f"step id {v!r} is no vocabulary id")
    return rows


def _condition_ids(ids, count: int) -> list[int]:
    """A sample's condition ids, each an int in 0..count-1; a ValueError for another (a damaged shard: -1 marked
    the last condition, ``true`` the second, without a word)."""
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < count:
            raise ValueError(f"condition id {i!r} is not one of 0..{count - 1}")
    return ids


def loader_worker_init(_worker_id: int) -> None:
    """A DataLoader worker's start (``worker_init_fn``): SIGINT and SIGTERM are the main process's to handle, and
    the worker is SIGKILLed when the main process dies. A process group's SIGTERM (``timeout``, Slurm's scancel)
    killed the workers first, and ``leap evaluate`` then stopped with torch's "DataLoader worker exited
    unexpectedly" traceback and exit 1 instead of its one line and 143."""
    import signal

    from leap_cli.common import die_with_parent, unblock_stops

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if hasattr(signal, "SIGHUP"):  # (a closed terminal hangs up the whole job)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    die_with_parent(signal.SIGKILL, os.getppid())
    unblock_stops()  # (blocked as the loader forked the worker: ``common.stops_held``; ignored from now on)
    import multiprocessing.queues

    # a batch the worker cannot hand over (at the limit of open files: torch passes each tensor as a file; a thread
    # that cannot start) is said in one line, not the queue's traceback, and the worker ends: the main process then
    # says what to do (``Guarded``; evaluate's count of the segments scored and train's "the training data ran out"
    # are the nets under it)
    multiprocessing.queues.Queue._on_queue_feeder_error = staticmethod(_batch_not_handed_over)
    import sys
    import threading

    threading.excepthook = _worker_thread_failed  # (a connection's thread as the main process stops reading)
    sys.excepthook = _worker_error  # (multiprocessing's resource sharer catches its connections' errors and says
    # them there: a traceback on top of the main process's line when another worker had died)


def _worker_error(kind, value, tb) -> None:
    """``sys.excepthook`` of a DataLoader worker: a connection's error (OSError, EOFError) of the resource sharer
    that hands the batches' files over is dropped, as ``_worker_thread_failed`` drops a thread's; any other goes to
    Python's hook."""
    if isinstance(value, (OSError, EOFError)):
        return
    import sys

    sys.__excepthook__(kind, value, tb)


def _worker_thread_failed(args) -> None:
    """A DataLoader worker's thread that failed (multiprocessing's resource sharer, which hands the batches' files
    over): its connection's errors come as the main process stops reading (another worker died, a stop), and the
    main process says what happened; its traceback came on top of that line. Other errors are one line."""
    if isinstance(args.exc_value, (OSError, EOFError)):
        return
    import sys

    print(f"leap: a DataLoader worker's thread failed: {args.exc_type.__name__}: {args.exc_value}", file=sys.stderr)


# A DataLoader worker's exit status after a batch it could not hand over: the main process would wait for the batch
# (LOADER_TIMEOUT, 900 s); the worker's end is seen at once (``_died_error`` names it by this status).
LOST_BATCH_EXIT = 75


def _batch_not_handed_over(e: BaseException, obj: object) -> None:
    """A DataLoader worker's batch that could not be sent (multiprocessing's queue feeder thread): said in one
    line, and the worker ends (``LOST_BATCH_EXIT``). ``loader_worker_init`` installs it in the workers only."""
    import sys

    print(f"leap: a DataLoader worker could not hand a batch over: {type(e).__name__}: {e}", file=sys.stderr)
    sys.stderr.flush()
    os._exit(LOST_BATCH_EXIT)


LOADER_TIMEOUT = 900  # seconds: a DataLoader worker's batch that has not come by then is lost (``Guarded``)
DEATH_SHOWS = 2.0  # seconds: how long a broken connection to a worker waits for the worker's death to show
_LOST_FIX = ("a worker that could not hand its batch over prints why above; torch passes each tensor of a batch as "
             "an open file, so at the process's limit of open files (\"Too many open files\") {open_files}, and "
             "where a thread could not start (\"can't start new thread\") raise your limit of processes and threads "
             "(ulimit -u), or use fewer workers ({option}); then run {again}")


def _lost_fix(option: str) -> str:
    from leap_cli.common import RAISE_OPEN_FILES, rerun

    return _LOST_FIX.format(option=option, again=rerun("the same command again"), open_files=RAISE_OPEN_FILES)


# A DataLoader worker that died (the kernel's out-of-memory killer, a bus error where /dev/shm ran out): torch's
# SIGCHLD handler raised its "DataLoader worker (pid N) is killed by signal" wherever the main process was (in
# save_checkpoint's write: last.pt lost, a traceback, and a process that did not exit). ``watch_workers``' handler
# keeps the error, raised where a batch is awaited (``Guarded``), at once if one is awaited then.
_DIED: dict = {"error": None, "waiting": False}
_LOADER_WORKERS: weakref.WeakSet = weakref.WeakSet()  # the DataLoader workers this process started (``_started``)
_ITERATORS: weakref.WeakSet = weakref.WeakSet()  # the iterators of the loaders with workers (``_started``)


class WorkerDied(RuntimeError):
    """torch's error for a DataLoader worker that died, as ``watch_workers``' handler keeps and raises it."""


def watch_workers() -> None:
    """Install the SIGCHLD handler above in place of torch's (main thread, once; before a loader's iterator, which
    would install torch's)."""
    import signal
    import threading

    from torch.utils.data._utils import signal_handling

    if (getattr(signal_handling, "_SIGCHLD_handler_set", True) or not hasattr(signal, "SIGCHLD")
            or threading.current_thread() is not threading.main_thread()):
        return
    previous = signal.getsignal(signal.SIGCHLD)

    def handler(signum, frame):
        # (a stop on its way out, its KeyboardInterrupt being handled where the signal came: the death is kept, not
        # raised there, where it replaced the stop and broke what that code's clean-up restores; a thread's start
        # failed "release unlocked lock")
        stopping = isinstance(sys.exc_info()[1], KeyboardInterrupt)
        try:
            torch._C._error_if_any_worker_fails()
        except RuntimeError as e:
            if _DIED["error"] is None:  # (the main process's threads that served the dead worker fail as they
                from leap_cli.common import quiet_unraisable  # stop: tracebacks above the line that says it; and

                # this error itself where the signal came in code whose errors Python cannot raise, as an at-fork
                # callback run as a loader forks its workers (logging's): said as it is raised again, in one line)
                quiet_unraisable(KeyError, AttributeError, OSError, EOFError, WorkerDied)
            # (kept without its traceback: that held the frames the signal came in, and so the loaders' iterators,
            # until the process's end, whose exit then waited for ever for their workers, which ignore SIGTERM: a run
            # stopped by a signal at a step boundary as a worker died)
            _DIED["error"] = WorkerDied(*e.args)
            if _DIED["waiting"] and not stopping:
                raise WorkerDied(*e.args) from None  # (another: the raise gives it a traceback)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGCHLD, handler)
    signal_handling._SIGCHLD_handler_set = True


def _worker_died(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, RuntimeError) and "DataLoader worker" in text and (
        "killed by signal" in text or "exited unexpectedly" in text)


def _workers_of(loader, it=None) -> list:
    """The worker processes of a DataLoader's iterator ``it``, else of its persistent one."""
    return list(getattr(it, "_workers", None) or getattr(getattr(loader, "_iterator", None), "_workers", None) or [])


def _dead_workers(workers: list) -> list:
    """Those of ``workers`` that ended with an error or a signal (``is_alive`` reaps one that ended)."""
    return [w for w in workers if not w.is_alive() and w.exitcode]


def _kill_workers(workers: list, children: bool = True) -> None:
    """Kill a loader's ``workers`` and (``children``) the process's other multiprocessing children, before its error
    goes on: they ignore SIGTERM, and the process's exit waited for them."""
    import multiprocessing

    for p in workers + (multiprocessing.active_children() if children else []):
        if p.is_alive():
            p.kill()
            p.join(5)


def _died_error(e: BaseException, option: str, workers: list) -> LeapError:
    """The one line for a DataLoader worker that died (``e``: torch's error, or what the main process met as it
    did: a connection reset), naming the signal by the worker's exit code where it is known. The loader's other
    workers, and the process's other children, are killed first (they ignore SIGTERM: its exit waited for them)."""
    import signal

    dead = _dead_workers(workers)
    _kill_workers(workers)
    _DIED["error"] = None
    lost = next((p for p in dead if p.exitcode == LOST_BATCH_EXIT), None)
    if lost is not None:
        return LeapError(f"a DataLoader worker (pid {lost.pid}) could not hand a batch over", fix=_lost_fix(option))
    code = next((p.exitcode for p in dead if p.exitcode and p.exitcode < 0), None)
    sig = signal.Signals(-code).name if code is not None and -code in signal.Signals._value2member_map_ else None
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if sig is not None:
        text = f"a DataLoader worker (pid {dead[0].pid}) was killed by {sig}"
    elif (said := _torch_signal(e)) is not None:  # (one not of the loader awaited, or not yet reaped: in leap's words)
        pid, sig = said
        text = f"a DataLoader worker (pid {pid}) was killed by {sig}"
    if sig == "SIGBUS" or "Bus error" in text:
        why = ("a bus error: the shared memory the workers pass batches through (/dev/shm) ran out; in Docker give "
               "the container more (docker run --shm-size 8g, or --ipc host)")
    elif sig == "SIGKILL" or "Killed" in text:
        why = ("most likely by the kernel's out-of-memory killer (dmesg says): give the job more memory, or use "
               f"fewer workers ({option}) or a smaller batch")
    else:
        why = f"use fewer workers ({option}) to see whether it is the memory"
    from leap_cli.common import rerun

    return LeapError(f"{text} ({why})", fix=f"then run {rerun('the same command again')}")


def _torch_signal(e: BaseException) -> tuple[int, str] | None:
    """The pid and the signal's name in torch's words for a worker killed by a signal ("DataLoader worker (pid N) is
    killed by signal: Terminated."), else None."""
    import re
    import signal

    found = re.search(r"DataLoader worker \(pid (\d+)\) is killed by signal: ([^.\n]+)", str(e))
    names = {signal.strsignal(s): s.name for s in signal.Signals if signal.strsignal(s)}
    return (int(found[1]), names[found[2]]) if found and found[2] in names else None


def _awaited(step, workers: int):
    """``step()`` (a loader's start, or its next batch), with a worker's death raised where it is heard
    (``watch_workers``), and one heard before, while the main process was elsewhere, raised first. (The flag is
    set before that look: a death heard between the two was kept and not raised, and the main process waited
    LOADER_TIMEOUT for a batch from the dead worker.)"""
    _DIED["waiting"] = bool(workers)
    try:
        if workers and _DIED["error"] is not None:
            raise _DIED["error"]
        return step()
    finally:
        _DIED["waiting"] = False


class Guarded:
    """A DataLoader (``loader``; ``option`` sets its workers) whose lost batch is said in one line: a worker that
    cannot hand its batch over (at the limit of open files) loses it, and the main process then met an EOFError
    (a traceback, exit 1) or waited for it for ever; with workers the loader is made with
    ``timeout=LOADER_TIMEOUT``, which ends that wait. Iterated as the loader is; ``dataset`` is the loader's."""

    def __init__(self, loader, option: str):
        self.loader, self.option = loader, option

    @property
    def dataset(self):
        return self.loader.dataset

    def __iter__(self) -> Iterator[dict]:
        workers = self.loader.num_workers
        try:  # (persistent workers: an epoch's iterator waits for each of them at once, and one may have died)
            it = _awaited(lambda: _start(self.loader) if workers else iter(self.loader), workers)
        except KeyboardInterrupt:  # (a stop as a persistent loader's epoch starts: a stalled worker's, most often)
            if workers:
                _end_on_stop(getattr(self.loader, "_iterator", None))
            raise
        except (EOFError, RuntimeError, OSError) as e:
            if not workers:
                raise
            self._failed(e, _workers_of(self.loader))
        # A worker that died as its loader started, before torch had registered the workers' pids for its SIGCHLD
        # check (it forks them one by one first), was heard by no one: its SIGCHLD found no registered worker dead,
        # and the main process waited LOADER_TIMEOUT for its batch, without a word. One dying after this look is
        # heard (its pid is registered).
        dead = _dead_workers(_workers_of(self.loader, it)) if workers else []
        if dead:
            self._failed(RuntimeError(f"DataLoader worker (pid {dead[0].pid}) exited unexpectedly with exit code "
                                      f"{dead[0].exitcode}"), _workers_of(self.loader, it))
        while True:
            try:
                batch = _awaited(lambda: next(it), workers)
            except StopIteration:
                return
            except KeyboardInterrupt:  # (a stop as a batch was awaited: the stalled worker's, most often)
                if workers:
                    _end_on_stop(it)
                raise
            except (EOFError, RuntimeError, OSError) as e:  # (a worker that died: a connection reset, or torch's
                if not workers:  # error, whichever came first)
                    raise
                self._failed(e, _workers_of(self.loader, it))
            yield batch

    def _failed(self, e: BaseException, mine: list) -> NoReturn:
        """Raise the error for ``e``, met as the loader's workers ``mine`` were awaited (an epoch's start or a
        batch). The stage stops, so the workers are killed first in every case: they ignore SIGTERM, and the
        process's exit waited for them (a run killed at an epoch's start said its line and did not exit)."""
        if not _worker_died(e) and not _dead_workers(mine) and isinstance(e, (EOFError, OSError)):
            import time  # (a worker's death shows a moment after the broken connection it left: the kernel closes

            end = time.monotonic() + DEATH_SHOWS  # its sockets before its parent can reap it)
            while time.monotonic() < end and not _dead_workers(mine):
                time.sleep(0.05)
        if _worker_died(e) or _dead_workers(mine):
            raise _died_error(e, self.option, mine) from e
        lost = isinstance(e, EOFError) or (isinstance(e, RuntimeError) and "timed out" in str(e))
        _kill_workers(mine, children=lost)  # (another error: this loader's workers only, the caller's other
        if isinstance(e, EOFError):  # processes live on)
            raise LeapError("a DataLoader worker's batch was lost on its way to the main process (EOFError)",
                            fix=_lost_fix(self.option)) from e
        if lost:
            raise LeapError(f"no batch came from the DataLoader's workers in {LOADER_TIMEOUT} s",
                            fix="a slow or stalled disk under the shards, or " + _lost_fix(self.option)) from e
        raise e


STOP_JOIN = 0.5  # seconds: how long a stop waits for the loader's killed workers in all


def _end_on_stop(it) -> None:
    """A stop (Ctrl-C, or SIGTERM/SIGHUP, which cli makes a KeyboardInterrupt) ends the stage: the workers of the
    loader's iterator ``it`` still alive are killed now, before torch shuts the iterator down as its last reference
    goes. That shutdown joins each worker for 5 s (MP_STATUS_CHECK_INTERVAL), then sends SIGTERM, which they ignore
    (``loader_worker_init``), and joins again: a stalled worker (SIGSTOP) held the stop's line and exit ~10 s.
    Their deaths are the stop's, not errors: torch's SIGCHLD check forgets them first. A normal end keeps torch's
    clean shutdown."""
    import time

    from torch.utils.data._utils import signal_handling

    workers = list(getattr(it, "_workers", None) or [])
    if getattr(it, "_worker_pids_set", False):
        signal_handling._remove_worker_pids(id(it))
        it._worker_pids_set = False
    for p in workers:
        if p.is_alive():
            p.kill()
    end = time.monotonic() + STOP_JOIN
    for p in workers:
        p.join(max(0.0, end - time.monotonic()))


@contextlib.contextmanager
def workers_end_on_stop() -> Iterator[None]:
    """Where a stage uses its batches (a model's step): a stop met there (a KeyboardInterrupt) kills the workers of
    every loader iterator of this process first (``_end_on_stop``), as ``Guarded`` does for one met as a batch is
    awaited."""
    try:
        yield
    except KeyboardInterrupt:
        end_loader_workers()
        raise


def end_loader_workers() -> None:
    """A stop: the workers of every loader iterator of this process are killed now (``_end_on_stop``)."""
    for it in list(_ITERATORS):
        _end_on_stop(it)


_EXIT_KILLS = False  # whether ``_kill_workers_left`` is registered to run at the exit (once per process)


def _start(loader) -> Iterator[dict]:
    """``iter(loader)`` of a loader with workers. Where it fails part way (the limit of open files reached with a
    worker started and the next not), torch's half-made iterator cannot stop the workers it started, and those
    ignore SIGTERM (``loader_worker_init``): Python's exit then waited for them for ever, after the error line. The
    workers this call started are killed before its error goes on. A stop that comes as the loader starts is
    taken once it has (``stops_held``)."""
    from leap_cli.common import stops_held

    # (a loader that forks its workers blocks the stops: torch's handler in a worker, set before the worker ignores
    # them, ended it by a process group's SIGTERM; a persistent loader's later epoch forks none, and may wait for
    # a stalled worker: its handlers are only deferred, for HOLD_STOPS at most)
    forks = getattr(loader, "_iterator", None) is None
    global _EXIT_KILLS
    if forks and not _EXIT_KILLS:
        import atexit

        atexit.register(_kill_workers_left)  # (after multiprocessing's, so run before it: atexit runs the last first)
        _EXIT_KILLS = True
    with stops_held(getattr(loader, "multiprocessing_context", None), block=forks):
        return _started(loader)


def _kill_workers_left(grace: float = 1.0) -> None:
    """At the process's exit, the DataLoader workers still alive are killed after ``grace`` s: Python's exit
    terminates its daemonic children with SIGTERM, which a DataLoader worker ignores (``loader_worker_init``), then
    waits for them; a worker stalled as a stop ended the stage (stopped by SIGSTOP, or one that no longer runs) was
    waited for for ever after the stop's line, and a second Ctrl-C was ignored (cli: the command was done)."""
    import time

    left = [p for p in list(_LOADER_WORKERS) if p.is_alive()]
    end = time.monotonic() + grace
    for p in left:
        p.join(max(0.0, end - time.monotonic()))
    for p in left:
        if p.is_alive():
            p.kill()
            p.join(5)


def _started(loader) -> Iterator[dict]:
    import multiprocessing

    from leap_cli.common import quiet_unraisable

    before = {p.pid for p in multiprocessing.active_children()}
    try:
        it = iter(loader)
        _LOADER_WORKERS.update(p for p in multiprocessing.active_children() if p.pid not in before)
        with contextlib.suppress(TypeError):  # (one that takes no weak reference, a stand-in's: its start is not
            _ITERATORS.add(it)  # failed for it, only no stop ends its workers early)
        return it
    except BaseException:
        # (the deaths of these kills, and of a worker a process group's stop killed as it started, are not raised in
        # the joins below: that replaced the error that goes on, the stop's KeyboardInterrupt too, by a worker's death)
        _DIED["waiting"] = False
        quiet_unraisable(AttributeError)  # (the half-made iterator's __del__ fails on what its start had not made)
        for p in multiprocessing.active_children():
            if p.pid not in before:
                p.kill()
                p.join(5)
        raise


# torch passes each tensor of a worker's batch as an open file ("file_descriptor" sharing), and at the process's
# limit of open files a batch is lost on its way, silently where the dataset streams (fewer batches, fewer samples
# scored). Under this limit (after ``cli.raise_open_files_limit``) the loader's processes share tensors by name
# ("file_system", torch's advice for low limits: no file stays open per tensor).
LOW_OPEN_FILES = 4096


def share_by_name_under_a_low_limit(workers: int) -> None:
    """With DataLoader ``workers``, "file_system" sharing where the soft limit of open files is under
    ``LOW_OPEN_FILES`` (before the workers start: they take the strategy with them)."""
    if not workers:
        return
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, ValueError, OSError):
        return
    if soft != resource.RLIM_INFINITY and soft < LOW_OPEN_FILES:
        import torch.multiprocessing as tmp

        if tmp.get_sharing_strategy() != "file_system" and "file_system" in tmp.get_all_sharing_strategies():
            log.info("open files limited to %d: DataLoader workers share tensors by name (file_system)", soft)
            tmp.set_sharing_strategy("file_system")


# A worker passes its batch's file descriptors through a Unix socket it makes in TMPDIR (multiprocessing's
# pymp-XXXXXXXX/listener-XXXXXXXX; torch's shared-memory manager, for "file_system", makes one there too), and such a
# path holds at most 107 bytes: under a deep TMPDIR (a cluster's per-job folder) every batch was lost, each said in a
# line, and the main process waited LOADER_TIMEOUT for them, then told to raise ulimit -n.
SOCKET_PATH_BYTES = 107
SHORT_TEMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")


def socket_path_bytes() -> int:
    """The length of the path of the socket a DataLoader worker makes to pass file descriptors (in TMPDIR)."""
    import tempfile

    return len(os.fsencode(os.path.join(tempfile.gettempdir(), "pymp-12345678", "listener-12345678")))


def short_temp_dir_for_workers(workers: int) -> None:
    """With DataLoader ``workers`` under a TMPDIR too deep for their sockets (``SOCKET_PATH_BYTES``), this process
    and those it starts make their temporary files in the first writable of ``SHORT_TEMP_DIRS`` (said in a warning);
    with none, one line says to set a shorter TMPDIR."""
    import tempfile

    if not workers or socket_path_bytes() <= SOCKET_PATH_BYTES:
        return
    deep = tempfile.gettempdir()
    short = next((d for d in SHORT_TEMP_DIRS if os.path.isdir(d) and os.access(d, os.W_OK | os.X_OK)), None)
    if short is None:
        raise LeapError(f"TMPDIR {deep} is too deep for the sockets DataLoader workers pass batches through (a path "
                        f"of {socket_path_bytes()} bytes, at most {SOCKET_PATH_BYTES})",
                        fix="set TMPDIR to a shorter folder for leap, or use no workers (0)")
    log.warning("TMPDIR %s is too deep for the sockets DataLoader workers pass batches through (%d bytes, at most "
                "%d): this process's temporary files go to %s", deep, socket_path_bytes(), SOCKET_PATH_BYTES, short)
    os.environ["TMPDIR"] = short  # (torch's shared-memory manager reads it; Python's tempfile its own setting)
    tempfile.tempdir = short
    import multiprocessing.process

    config = multiprocessing.process.current_process()._config  # (a folder multiprocessing made under the deep one)
    if len(os.fsencode(str(config.get("tempdir", "")))) + 18 > SOCKET_PATH_BYTES:
        config.pop("tempdir", None)


def loader_workers(asked: int, option: str, samples: int | None = None, batch_size: int = 1) -> int:
    """``asked`` DataLoader processes (``option`` names the setting), at most one per CPU this process may use
    (its share where torchrun starts several on the machine: LOCAL_WORLD_SIZE) and, given ``samples``, one per
    batch. Each worker holds ~0.3 GB: `leap evaluate --workers 1000000` started over a thousand of them and used
    up the machine's memory; a config's data.num_workers 8 on a 2-core machine started 8. Called right before
    the loader is made: with workers it also sets how they share tensors (``share_by_name_under_a_low_limit``) and
    where their sockets go (``short_temp_dir_for_workers``)."""
    from leap_cli.common import usable_cpus

    cpus = max(1, usable_cpus() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1)))
    batches = -(-samples // max(batch_size, 1)) if samples is not None else asked
    workers = max(0, min(asked, cpus, batches))
    if workers < asked:
        log.info("%s %d: %s (%s for this process%s)", option, asked, counted(workers, "DataLoader worker"),
                 counted(cpus, "CPU"), f", {counted(batches, 'batch', 'batches')}" if samples is not None else "")
    share_by_name_under_a_low_limit(workers)
    short_temp_dir_for_workers(workers)
    return workers


def anticipation_timing(manifest: dict) -> dict | None:
    """When anticipation shards observe (the build settings that set it: tau_a, the context mode, and the clips'
    span or the observed window's length), or None for recognition shards."""
    if manifest.get("task") != "anticipation":
        return None
    settings = manifest.get("settings") or {}
    mode = settings.get("context_mode", "clips")
    keys = ("tau_a", "context_mode", "span_frames" if mode == "clips" else "tau_o")
    timing = {k: settings.get(k) for k in keys}
    if mode == "segments":  # the window-end rule (None: shards of the earlier rule, which kept none)
        timing["observed_end"] = settings.get("observed_end")
    return timing


def same_timing(kept: dict | None, timing: dict | None) -> bool:
    """Whether a run's training shards, as its checkpoint keeps their timing (``kept``), observed as shards of
    ``timing`` do. A checkpoint of a leap before 2026-12-07 kept no ``observed_end`` even where its shards had one:
    the rule is then not known, and not compared."""
    if kept and timing and "observed_end" not in kept:
        timing = {k: v for k, v in timing.items() if k != "observed_end"}
    return kept == timing


def timing_text(timing: dict) -> str:
    """``tau_a 1 s, clips of 256 source frames`` (for messages)."""
    text = f"tau_a {timing.get('tau_a')} s"
    if timing.get("context_mode") == "segments":
        return text + f", previous segments and a {timing.get('tau_o')} s observed window" + (
            " ending tau_a before the timestamp (leap before 2026-12-06: on rgb_frames 1-2 frames later than now, "
            "on MP4s the same)" if "observed_end" in timing and timing["observed_end"] is None else "")
    return text + f", clips of {timing.get('span_frames')} source frames"


def timing_change(timing: dict | None, other: dict | None) -> str:
    """What two anticipation timings' figures differ in, for messages: ``another anticipation time`` where tau_a
    differs (or is not known), ``another end of the observed window`` where only the segments context's rule
    differs (``observed_end``: the same frames on MP4s), else ``another observation before the same anticipation
    time`` (the clips' span, the context mode)."""
    if not timing or not other or timing.get("tau_a") != other.get("tau_a"):
        return "another anticipation time"
    if {k: v for k, v in timing.items() if k != "observed_end"} == {k: v for k, v in other.items()
                                                                  if k != "observed_end"}:
        return "another end of the observed window (on rgb_frames videos; on MP4s the same frames)"
    return "another observation before the same anticipation time"


def check_context(ds: "ShardDataset", context: int, option: str | None, folder: Path) -> None:
    """Refuse, before any work, shards that hold fewer context clips than the model takes (``option`` names where
    the model's count is set); more are fine (the model takes the latest). It failed at the first batch: for
    validation shards, after a whole epoch of training and before any checkpoint."""
    if context and ds.manifest.get("task") == "anticipation" and ds.context < context:  # (recognition: none fed)
        raise LeapError(f"the shards hold {counted(ds.context, 'context clip')} before each action, the model takes "
                        f"{context}",
                        path=folder, fix=f"rebuild them with --context {context}"
                                         + (f", or set {option} {ds.context}" if option else " (as the run was trained)"))


def shard_loader(ds: "ShardDataset", *, batch_size: int, workers: int, **options) -> "torch.utils.data.DataLoader":
    """A DataLoader over a shards dataset with ``workers`` processes (``loader_workers``' count): leap's batches
    (``collate_clips``), its workers' start (``loader_worker_init``) and the wait for a batch (``LOADER_TIMEOUT``;
    torch takes no timeout without workers). Iterate it through ``Guarded``. The workers are forked where the
    system can (Python 3.14 starts them from a fork server by default): they are then this process's children,
    whose deaths ``watch_workers`` hears (SIGCHLD), that die with it (``loader_worker_init``) and share tensors as
    it set (``share_by_name_under_a_low_limit``)."""
    import multiprocessing

    from torch.utils.data import DataLoader

    if workers:
        watch_workers()
        if "fork" in multiprocessing.get_all_start_methods():
            options.setdefault("multiprocessing_context", "fork")
        # A forked worker makes its socket's folder (pymp-XXXXXXXX) in the one this process holds, if it holds one;
        # else its own, which stays in TMPDIR when the worker is killed (its exit removes it).
        # This process's is removed at its exit, the dead workers' sockets with it.
        import multiprocessing.util

        multiprocessing.util.get_temp_dir()
    return DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate_clips,
                      worker_init_fn=loader_worker_init, timeout=LOADER_TIMEOUT if workers else 0, **options)


def collate_clips(samples: list[dict]) -> dict:
    """Stack samples into the batch described in the module docstring."""
    batch = {
        "video": torch.stack([s["video"] for s in samples]),
        "verb_class": torch.tensor([s["verb_class"] for s in samples], dtype=torch.long),
        "noun_class": torch.tensor([s["noun_class"] for s in samples], dtype=torch.long),
        "has_program": torch.tensor([s["has_program"] for s in samples], dtype=torch.bool),
        "program_steps": torch.stack([s["program_steps"] for s in samples]),
        "conditions": torch.stack([s["conditions"] for s in samples]),
        "step_conditions": torch.stack([s["step_conditions"] for s in samples]),
        "narration_id": [s["narration_id"] for s in samples],
        "padding": torch.tensor([s.get("padding", False) for s in samples], dtype=torch.bool),
    }
    if "context_video" in samples[0]:
        batch["context_video"] = torch.stack([s["context_video"] for s in samples])
        batch["context_mask"] = torch.stack([s["context_mask"] for s in samples])
    return batch
