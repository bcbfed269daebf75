"""Durable training state, so that a long training survives the loss of its process.

A retried task (Metaflow ``@retry``) runs again in the same run, under the same step: the state
is kept at ``<run tables root>/train_state/<model>.pt``, which the retry finds and continues
from. The state is everything the result depends on: model weights, both optimizers and their
schedules, the negative sampler's generator, the global RNG of every rank (dropout), the
epoch and step reached, the early-stopping record with the best weights so far, the per-epoch
history and the loss monitor's running epoch. Window order is a pure function of
``(seed, epoch)`` (:class:`recmodel.retriever.batches.WindowBatcher`), so a resumed training draws the
same batches and ends with the same weights as one that was never interrupted.

The state is saved at the end of every epoch and, within an epoch, every
``$RECMODEL_CHECKPOINT_EVERY`` optimizer steps (default :data:`DEFAULT_CHECKPOINT_EVERY`; 0 = at
epoch ends only). A write never replaces a good state with a partial one: local files are
written beside the target and renamed, object-store keys appear only when their upload
completes.

Faults for tests and game days are injected by :mod:`recmodel.retriever.faults`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import pyarrow.fs as pafs
import torch
import torch.distributed as dist

from recmodel.retriever import progress
from recmodel.retriever.distributed import broadcast_object

log = logging.getLogger(__name__)

CHECKPOINT_EVERY_ENV = "RECMODEL_CHECKPOINT_EVERY"
DEFAULT_CHECKPOINT_EVERY = 1_000  # optimizer steps between in-epoch saves
STATE_DIR = "train_state"  # under a step's table root: <root>/train_state/<model>.pt
STATE_FORMAT = 1  # bumped when the saved layout changes; other formats are not resumed
COPY_BLOCK = 1 << 24  # bytes per read while copying to or from an object store
FLAT_STORES = ("s3", "gcs")  # keys need no parent directories (and markers would clutter)


def checkpoint_every() -> int:
    """Steps between in-epoch saves, from ``$RECMODEL_CHECKPOINT_EVERY`` (0 = epoch ends only)."""
    text = os.environ.get(CHECKPOINT_EVERY_ENV, "").strip()
    if not text:
        return DEFAULT_CHECKPOINT_EVERY
    if not text.isdigit():
        raise ValueError(f"${CHECKPOINT_EVERY_ENV} must be a whole number >= 0, got {text!r}")
    return int(text)


def filesystem_of(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem of a local path or URI, and the path within it."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    return pafs.FileSystem.from_uri(uri)


def make_parent(fs: pafs.FileSystem, path: str) -> None:
    """Create the directory of ``path`` where the filesystem has directories."""
    if fs.type_name not in FLAT_STORES:
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)


class TrainStateStore:
    """Saves and restores the full state of one training at a durable URI.

    The trainer passed to :meth:`resume`, :meth:`maybe_save` and :meth:`save_epoch` is
    :class:`recmodel.retriever.train._Run`: these read and set its ``model``, ``optimizer``,
    ``generator``, ``monitor``, ``history``, ``best``, ``stopped``, ``batcher``, ``cfg``,
    ``model_config`` and ``ctx``. Every rank calls them at the same points (they gather the
    ranks' RNG states); rank 0 reads and writes the file.

    Args:
        uri: a local path or an object-store URI (``s3://...``) of the state file.
        every_steps: in-epoch save interval in optimizer steps (0 = epoch ends only). It is
            rounded up to a multiple of ``recmodel.retriever.progress.PROGRESS_EVERY``, where the loss
            monitor holds no unchecked losses.
        on_epoch_saved: called with the epoch index after each end-of-epoch save.
        filesystem: the filesystem ``uri`` lives on (default: inferred from the URI).
    """

    def __init__(
        self,
        uri: str,
        every_steps: int = 0,
        on_epoch_saved: Callable[[int], None] | None = None,
        filesystem: pafs.FileSystem | None = None,
    ):
        self.uri = uri
        self.fs, self.path = (filesystem, uri) if filesystem is not None else filesystem_of(uri)
        unit = progress.PROGRESS_EVERY
        self.every_steps = math.ceil(every_steps / unit) * unit if every_steps > 0 else 0
        self.on_epoch_saved = on_epoch_saved

    # -- the trainer's hooks -------------------------------------------------------------

    def resume(self, run: Any) -> dict[str, int] | None:
        """Restore ``run`` from a saved state of the same training.

        Returns:
            ``{"epoch": e, "step": s}``: training continues at step ``s`` of epoch ``e``; None
            when there is no usable state (training starts from scratch).
        """
        state = self._load_matching(run) if run.ctx.is_main else None
        state = broadcast_object(state, run.ctx)
        if state is None:
            return None
        _restore(run, state)
        position = {"epoch": state["epoch"], "step": state["step"]}
        log.info("resuming from %s at epoch %d, step %d", self.uri, *position.values())
        return position

    def maybe_save(self, run: Any, epoch: int, steps_done: int) -> None:
        """Save after ``steps_done`` steps of ``epoch`` when an in-epoch save is due."""
        due = self.every_steps and steps_done % self.every_steps == 0
        if due and steps_done < len(run.batcher):  # the epoch's end is saved after validation
            self._save(run, epoch, steps_done)

    def save_epoch(self, run: Any, epoch: int) -> None:
        """Save the state after ``epoch`` (trained, validated, early-stopping updated)."""
        self._save(run, epoch + 1, 0)
        if self.on_epoch_saved is not None:
            self.on_epoch_saved(epoch)

    # -- storage -------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.fs.get_file_info(self.path).type == pafs.FileType.File

    def load(self) -> dict[str, Any] | None:
        """The stored state (tensors on the CPU), or None when there is none."""
        if not self.exists():
            return None
        if isinstance(self.fs, pafs.LocalFileSystem):
            return torch.load(self.path, map_location="cpu", weights_only=True)
        with tempfile.TemporaryDirectory(prefix="recmodel-state-") as tmp:
            local = os.path.join(tmp, "state.pt")
            with self.fs.open_input_stream(self.path) as src, open(local, "wb") as dst:
                shutil.copyfileobj(src, dst, COPY_BLOCK)
            return torch.load(local, map_location="cpu", weights_only=True)

    def write(self, state: dict[str, Any]) -> None:
        """Write ``state`` so that readers see the old state or the new one, never a part."""
        if isinstance(self.fs, pafs.LocalFileSystem):
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            tmp = f"{self.path}.tmp-{os.getpid()}"
            try:
                with open(tmp, "wb") as fh:
                    torch.save(state, fh)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
            return
        with tempfile.TemporaryDirectory(prefix="recmodel-state-") as tmp:
            local = os.path.join(tmp, "state.pt")
            torch.save(state, local)
            make_parent(self.fs, self.path)
            # An object-store key appears only when its upload completes.
            with open(local, "rb") as src, self.fs.open_output_stream(self.path) as dst:
                shutil.copyfileobj(src, dst, COPY_BLOCK)

    def _save(self, run: Any, epoch: int, step: int) -> None:
        state = _capture(run, epoch, step)
        if run.ctx.is_main:
            self.write(state)
            log.info("training state saved at epoch %d, step %d: %s", epoch, step, self.uri)

    def _load_matching(self, run: Any) -> dict[str, Any] | None:
        state = self.load()
        if state is None:
            return None
        expected = {"format": STATE_FORMAT, "fingerprint": fingerprint(run)}
        found = {key: state.get(key) for key in expected}
        if found != expected:
            log.warning(
                "ignoring %s: it belongs to another training (%s, expected %s)",
                self.uri,
                found,
                expected,
            )
            return None
        return state


def fingerprint(run: Any) -> str:
    """A hash of what makes two trainings the same: configs, data shape and world size."""
    parts = {
        "model": run.model_config,
        "train": dataclasses.asdict(run.cfg),
        "windows": int(run.batcher.n_windows),
        "targets": int(run.batcher.n_targets),
        "steps_per_epoch": len(run.batcher),
        "world_size": run.ctx.world_size,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


# -- what a state holds ----------------------------------------------------------------


def _capture(run: Any, epoch: int, step: int) -> dict[str, Any]:
    """The state to continue from step ``step`` of epoch ``epoch`` (complete on rank 0)."""
    # The losses of the epoch so far are part of its history row: none may be unchecked.
    assert not run.monitor.pending, "state saved between loss checks"
    rng = _gather(_rng_state(run.ctx.device), run.ctx)  # one entry per rank
    if not run.ctx.is_main:
        return {}
    return {
        "format": STATE_FORMAT,
        "fingerprint": fingerprint(run),
        "epoch": epoch,
        "step": step,
        "stopped": run.stopped,
        "history": run.history,
        "best": dataclasses.asdict(run.best),
        "model": {k: t.detach().cpu() for k, t in run.model.state_dict().items()},
        "optimizer": _optimizer_state(run.optimizer),
        "generator": run.generator.get_state(),
        "rng": rng,
        "monitor": {
            "steps_done": run.monitor.steps_done,
            "epoch_losses": list(run.monitor.epoch_losses),
            "epoch_positions": run.monitor.epoch_positions,
        },
    }


def _restore(run: Any, state: dict[str, Any]) -> None:
    run.model.load_state_dict(state["model"], strict=True)
    _load_optimizer_state(run.optimizer, state["optimizer"])
    run.generator.set_state(state["generator"])
    _set_rng_state(state["rng"][run.ctx.rank], run.ctx.device)
    run.history = list(state["history"])
    best = dict(state["best"])
    if not run.ctx.is_main:
        best["state"] = b""  # only rank 0 keeps the best weights
    run.best = dataclasses.replace(run.best, **best)
    run.stopped = state["stopped"]
    monitor = state["monitor"]
    run.monitor.steps_done = monitor["steps_done"]
    run.monitor.epoch_losses = list(monitor["epoch_losses"])
    run.monitor.epoch_positions = monitor["epoch_positions"]


def _optimizer_state(optimizer: Any) -> dict[str, Any]:
    """State dicts of a :class:`recmodel.retriever.optim.RetrieverOptimizer`'s parts."""
    return {
        "dense": optimizer.dense.state_dict(),
        "sparse": None if optimizer.sparse is None else optimizer.sparse.state_dict(),
        "schedulers": [s.state_dict() for s in optimizer.schedulers],
    }


def _load_optimizer_state(optimizer: Any, state: dict[str, Any]) -> None:
    optimizer.dense.load_state_dict(state["dense"])
    if (optimizer.sparse is None) != (state["sparse"] is None):
        raise ValueError("saved optimizer state does not match the sparse optimizer setup")
    if optimizer.sparse is not None:
        optimizer.sparse.load_state_dict(state["sparse"])
    for scheduler, saved in zip(optimizer.schedulers, state["schedulers"], strict=True):
        scheduler.load_state_dict(saved)


def _rng_state(device: torch.device) -> dict[str, Any]:
    """This process's global RNG states (dropout draws from them)."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def _gather(obj: Any, ctx: Any) -> list[Any]:
    """``obj`` of every rank, in rank order."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out
