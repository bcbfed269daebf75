"""Training windows cut from listening histories, and the shuffled, rank-sharded batches of them.

Padding. Every sequence is LEFT-padded with item 0: the most recent item sits in the last column,
so the encoder's positions count back from the present and a user's vector is always the hidden
state of the last column.

Windowing. A history ``x_0 .. x_{n-1}`` holds ``n - 1`` next-item transitions
``x_{t-1} -> x_t``. It is cut from the end backwards into windows of at most ``L + 1`` items
(``L = max_len``) with stride ``L``::

    window k = x[max(0, n - 1 - (k + 1) L) : n - k L]        k = 0 (most recent), 1, 2, ...

Consecutive windows share exactly one boundary item (the first item of window ``k`` is the last
of window ``k + 1``), so their *targets* do not overlap: every transition of the history is a
training target exactly once, and none is lost at a window boundary. Only the oldest window can
be shorter than ``L + 1``. A history with fewer than two items gives no window.

A window's inputs are ``window[:-1]`` and its targets ``window[1:]``; a position carries a target
(weight 1) where its input is not padding.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from recmodel.core.dataset import UserItems
from recmodel.retriever.profile import Profiles, build_profiles

PAD = 0  # item index of padding (data.py: items are 1..N)


@dataclass(frozen=True)
class Windows:
    """All training windows of a set of histories, as slices of the flat item array.

    Attributes:
        items: int32 ``[nnz]`` the histories' flat item array (not copied).
        starts: int64 ``[W]`` offset of each window's first item in ``items``.
        lengths: int64 ``[W]`` items per window, in ``2 .. max_len + 1``.
        users: int64 ``[W]`` the user each window comes from.
        max_len: ``L``; windows hold at most ``L + 1`` items.
        ts: int64 ``[nnz]`` the histories' flat play times (not copied).
        row_starts: int64 ``[W]`` offset of the first play of each window's user.
        profile_size: tracks of the long-term profile a batch carries per window (0 = none;
            :mod:`recmodel.retriever.profile`).
        profile_history: the profile reads at most this many plays before the window.
    """

    items: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    users: np.ndarray
    max_len: int
    ts: np.ndarray | None = None
    row_starts: np.ndarray | None = None
    profile_size: int = 0
    profile_history: int = 1_000

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def n_targets(self) -> int:
        """Training positions (next-item transitions) over all windows."""
        return int(self.lengths.sum() - len(self.lengths))


def make_windows(
    histories: UserItems, max_len: int, profile_size: int = 0, profile_history: int = 1_000
) -> Windows:
    """Cut every history into windows of at most ``max_len + 1`` items (module docstring).

    Windows are ordered by user, most recent first within a user; shuffling is the batcher's job.
    With ``profile_size`` > 0 each batch also carries the long-term profile of every window:
    the last ``profile_history`` plays of its user before it.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    per_user = windows_per_user(histories.lengths, max_len)  # [U]
    users = np.repeat(np.arange(histories.n_users, dtype=np.int64), per_user)  # [W]
    first = np.cumsum(per_user) - per_user  # [U] index of each user's first window
    k = np.arange(len(users), dtype=np.int64) - first[users]  # [W] 0 = most recent
    row_start = histories.indptr[users]  # [W]
    ends = histories.indptr[users + 1] - k * max_len  # [W] exclusive
    starts = np.maximum(row_start, ends - max_len - 1)
    return Windows(
        histories.items,
        starts,
        ends - starts,
        users,
        max_len,
        histories.ts,
        row_start,
        profile_size,
        profile_history,
    )


def windows_per_user(lengths: np.ndarray, max_len: int) -> np.ndarray:
    """int64 ``[U]``: the windows :func:`make_windows` cuts from histories of ``lengths``:
    ``ceil((n - 1) / L)``, none below two items."""
    return np.where(lengths >= 2, (lengths - 2) // max_len + 1, 0)


def left_padded(
    items: np.ndarray, starts: np.ndarray, lengths: np.ndarray, width: int
) -> np.ndarray:
    """Gather slices of ``items`` into a left-padded matrix.

    Args:
        items: ``[nnz]`` flat item array.
        starts, lengths: int64 ``[R]`` slice ``r`` is ``items[starts[r] : starts[r] + lengths[r]]``;
            a slice longer than ``width`` keeps its last ``width`` items.
        width: columns of the output.

    Returns:
        int64 ``[R, width]``; row ``r`` ends with its slice and starts with ``PAD``.
    """
    kept = np.minimum(lengths, width)
    starts = starts + (lengths - kept)  # a long slice keeps its most recent `width` items
    lengths = kept
    cols = np.arange(width, dtype=np.int64)  # [width]
    offset = width - lengths  # [R] first real column
    real = cols[None, :] >= offset[:, None]  # [R, width]
    pos = starts[:, None] + cols[None, :] - offset[:, None]  # [R, width] index into items
    out = np.full((len(starts), width), PAD, dtype=np.int64)
    out[real] = items[pos[real]]
    return out


def last_items(histories: UserItems, users: np.ndarray, length: int) -> np.ndarray:
    """int64 ``[U, length]``: each user's most recent ``length`` items, left-padded."""
    users = np.asarray(users, dtype=np.int64)
    ends = histories.indptr[users + 1]
    lengths = np.minimum(ends - histories.indptr[users], length)
    return left_padded(histories.items, ends - lengths, lengths, length)


@dataclass(frozen=True)
class Batch:
    """One rank's share of a training step, cropped to its longest window.

    Attributes:
        inputs: int64 ``[B, T]`` left-padded input items.
        targets: int64 ``[B, T]`` next items (``PAD`` where ``inputs`` is ``PAD``).
        positions: int64 ``[P]`` flat indices into ``[B * T]`` of the positions with a target.
        windows: int64 ``[B]`` window ids (for error messages).
        profile: the windows' long-term profiles, or None without them.
        users: int64 ``[B]`` the user of each window (for error messages), or None.
    """

    inputs: np.ndarray
    targets: np.ndarray
    positions: np.ndarray
    windows: np.ndarray
    profile: Profiles | None = None
    users: np.ndarray | None = None


@dataclass(frozen=True)
class Step:
    """What every rank knows about one global step.

    Attributes:
        index: batch index within the epoch.
        local: this rank's :class:`Batch`.
        global_targets: int64 ``[G]`` targets of every position of the GLOBAL batch, in order
            (the in-batch negatives; identical on every rank), or None where each rank holds
            only its own windows: the trainer then gathers them from the ranks
            (:func:`recmodel.retriever.shard_batches.gather_global_targets`).
        n_global: ``G``, the loss normalizer of the global batch (0 until gathered).
    """

    index: int
    local: Batch
    global_targets: np.ndarray | None
    n_global: int


def make_batch(windows: Windows, ids: np.ndarray, with_profile: bool = True) -> Batch:
    """Inputs, targets and target positions (and profiles) of the windows ``ids``."""
    width = int(windows.lengths[ids].max())
    seq = left_padded(windows.items, windows.starts[ids], windows.lengths[ids], width)  # [B, T+1]
    inputs, targets = seq[:, :-1], seq[:, 1:]  # [B, T] each
    targets = np.where(inputs != PAD, targets, PAD)
    positions = np.flatnonzero(inputs.reshape(-1) != PAD)  # [P]
    profile = None
    if with_profile and windows.profile_size > 0:
        ends = windows.starts[ids]  # the window's first play: the profile's reference time
        starts = np.maximum(windows.row_starts[ids], ends - windows.profile_history)
        profile = build_profiles(windows.items, windows.ts, starts, ends, windows.profile_size)
    inputs, targets = np.ascontiguousarray(inputs), np.ascontiguousarray(targets)
    return Batch(inputs, targets, positions, ids, profile, windows.users[ids])


def concat_batches(parts: list[Batch]) -> Batch:
    """One batch of the rows of ``parts``, left-padded to the longest: the batch that
    :func:`make_batch` builds from all their windows at once."""
    if len(parts) == 1:
        return parts[0]
    width = max(p.inputs.shape[1] for p in parts)

    def padded(name: str) -> np.ndarray:
        rows = [getattr(p, name) for p in parts]
        return np.concatenate([np.pad(r, ((0, 0), (width - r.shape[1], 0))) for r in rows])

    inputs, targets = padded("inputs"), padded("targets")  # PAD is 0
    profile = None
    if parts[0].profile is not None:
        profile = Profiles(
            np.concatenate([p.profile.items for p in parts]),
            np.concatenate([p.profile.features for p in parts]),
        )
    return Batch(
        inputs,
        targets,
        np.flatnonzero(inputs.reshape(-1) != PAD),
        np.concatenate([p.windows for p in parts]),
        profile,
        np.concatenate([p.users for p in parts]),
    )


class WindowBatcher:
    """Shuffles windows each epoch (seeded) and splits every global batch across ranks.

    Every rank draws the same permutation from ``(seed, epoch)``, so all ranks agree on the
    global batches without communicating; rank ``r`` takes the ``r``-th of ``world_size``
    near-equal contiguous parts. A last global batch with fewer windows than ranks is dropped
    (at most ``world_size - 1`` windows per epoch, different ones each epoch).
    """

    def __init__(
        self, windows: Windows, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        if batch_size < world_size:
            raise ValueError(f"global batch_size {batch_size} < world_size {world_size}")
        if len(windows) < world_size:
            raise ValueError(
                f"{len(windows)} training windows for {world_size} ranks: "
                "need at least one window per rank (is the train window empty?)"
            )
        self.windows, self.batch_size, self.seed = windows, batch_size, seed
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        """Global steps per epoch."""
        full, rest = divmod(len(self.windows), self.batch_size)
        return full + int(rest >= self.world_size)

    @property
    def n_windows(self) -> int:
        """Training windows of every rank."""
        return len(self.windows)

    @property
    def n_targets(self) -> int:
        """Training positions of every rank."""
        return self.windows.n_targets

    def order(self, epoch: int) -> np.ndarray:
        """int64 ``[W]``: the window order of ``epoch``."""
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.windows))

    def epoch(self, epoch: int) -> Iterator[Step]:
        """Yield the steps of ``epoch`` for this rank."""
        order = self.order(epoch)
        for index in range(len(self)):
            ids = order[index * self.batch_size : (index + 1) * self.batch_size]  # [B_global]
            yield self._step(index, ids)

    def _step(self, index: int, ids: np.ndarray) -> Step:
        full = make_batch(self.windows, ids, with_profile=False)  # only its targets are used
        global_targets = full.targets.reshape(-1)[full.positions]  # [G]
        bounds = np.arange(self.world_size + 1) * len(ids) // self.world_size  # parts >= 1
        local = make_batch(self.windows, ids[bounds[self.rank] : bounds[self.rank + 1]])
        return Step(index, local, global_targets, len(global_targets))


T = TypeVar("T")
_DONE = object()


@dataclass(frozen=True)
class _Failure:
    error: BaseException


def prefetched(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """``items`` in order, built up to ``depth`` ahead in a background thread.

    Batches (with their long-term profiles) are built with NumPy, which releases the GIL in its
    sorts and reductions, so the next batch is made while the device trains on this one. An
    error in the producer is raised here; leaving the loop early stops the producer.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(value: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(value, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer(item):
                    return
            offer(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            offer(_Failure(exc))

    worker = threading.Thread(target=produce, name="prefetch", daemon=True)
    worker.start()
    try:
        while True:
            value = ready.get()
            if value is _DONE:
                return
            if isinstance(value, _Failure):
                raise value.error
            yield value
    finally:
        stop.set()
        worker.join()
