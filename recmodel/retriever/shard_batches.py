"""Training batches streamed from user shards: a rank holds one shard's windows at a time.

:class:`ShardBatcher` is :class:`recmodel.retriever.batches.WindowBatcher` for data that stays
on disk (:class:`recmodel.core.user_shards.UserShards`). Rank ``r`` of ``R`` reads only the
shards ``r, r + R, r + 2R, ...``; each epoch it visits them in a seeded order, shuffles each
shard's windows (seeded), and cuts the stream into batches of its share of the global batch. A
batch may span two shards: the rest of one shard and the start of the next are built apart and
joined (:func:`recmodel.retriever.batches.concat_batches`), so every batch but the last holds
exactly its share, and every window of the rank is a training target once per epoch.

Ranks agree on the steps per epoch without talking: the shard bounds and each user's events
are known to all, so every rank knows every rank's window count; an epoch has as many steps as
the rank with the fewest batches, and the others leave their epoch's last windows out (a
different few each epoch). In-batch negatives span the global batch: each rank holds only its
own targets, so the trainer gathers them (:func:`gather_global_targets`).

With one shard and one rank the batches are exactly :class:`WindowBatcher`'s: the same
permutation of the same windows (``tests/retriever/test_shard_batches.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import torch

from recmodel.core.user_shards import UserShards
from recmodel.retriever.batches import (
    Batch,
    Step,
    concat_batches,
    make_batch,
    make_windows,
    windows_per_user,
)
from recmodel.retriever.distributed import DistContext, all_gather_rows


class ShardBatcher:
    """This rank's training steps, read from its user shards one shard at a time."""

    def __init__(
        self,
        shards: UserShards,
        max_len: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        profile_size: int = 0,
        profile_history: int = 1_000,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        if batch_size < world_size:
            raise ValueError(f"global batch_size {batch_size} < world_size {world_size}")
        self.shards, self.max_len, self.seed = shards, max_len, seed
        self.rank, self.world_size = rank, world_size
        self.profile_size, self.profile_history = profile_size, profile_history
        self.mine = np.arange(rank, shards.n_shards, world_size)  # this rank's shards
        shares = np.diff(np.arange(world_size + 1) * batch_size // world_size)  # [R] >= 1
        self.local_size = int(shares[rank])
        lengths = shards.train_lengths
        per_user = windows_per_user(lengths, max_len)
        targets_per_user = np.where(lengths >= 2, lengths - 1, 0)
        per_shard = shards.sum_by_shard(per_user)  # [S]
        rank_windows = np.array([per_shard[r::world_size].sum() for r in range(world_size)])
        if (rank_windows == 0).any():
            empty = int(np.flatnonzero(rank_windows == 0)[0])
            raise ValueError(
                f"rank {empty} of {world_size} has no training window in its user shards "
                f"({shards.n_shards} shards of {shards.path}): need at least one per rank"
            )
        self.n_windows = int(rank_windows.sum())
        self.n_targets = int(targets_per_user.sum())
        self.steps = int((-(-rank_windows // shares)).min())  # ceil, the fewest over ranks

    def __len__(self) -> int:
        """Global steps per epoch."""
        return self.steps

    def epoch(self, epoch: int) -> Iterator[Step]:
        """Yield the steps of ``epoch`` for this rank, reading its shards one at a time."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.mine) if len(self.mine) > 1 else self.mine
        parts: list[Batch] = []
        held, index = 0, 0
        for shard in order:
            first = int(self.shards.bounds[shard])
            part = self.shards.shard(int(shard))
            windows = make_windows(
                part.train(), self.max_len, self.profile_size, self.profile_history
            )
            del part
            ids = rng.permutation(len(windows))
            start = 0
            while start < len(ids):
                take = ids[start : start + self.local_size - held]
                start += len(take)
                batch = make_batch(windows, take)
                parts.append(dataclasses.replace(batch, users=batch.users + first))
                held += len(take)
                if held == self.local_size:
                    yield self._step(index, concat_batches(parts))
                    parts, held, index = [], 0, index + 1
                    if index == self.steps:
                        return
        if parts:
            yield self._step(index, concat_batches(parts))

    def _step(self, index: int, local: Batch) -> Step:
        if self.world_size > 1:
            return Step(index, local, None, 0)
        targets = local.targets.reshape(-1)[local.positions]  # [G]: this rank is the batch
        return Step(index, local, targets, len(targets))


def gather_global_targets(step: Step, ctx: DistContext) -> Step:
    """``step`` with the targets of every rank's share, in rank order (a collective)."""
    if step.global_targets is not None:
        return step
    local = step.local.targets.reshape(-1)[step.local.positions]
    mine = torch.from_numpy(local).to(ctx.device)
    every = all_gather_rows(mine, ctx).cpu().numpy()
    return dataclasses.replace(step, global_targets=every, n_global=len(every))
