"""What the baselines fit on: the play counts of the events before a window, not the events.

Every baseline reads its training events through :class:`Plays`: the user x track matrix of
play counts (ALS and item-kNN), the tracks' play counts (popularity) and their plays decayed to
the end of the training events (the fill of ``user_recent``). Those add up over users, so
:func:`training_plays` builds them one part of the users at a time (one user shard of
:class:`recmodel.core.user_shards.UserShards`, or the whole in-memory :class:`Dataset`) and
stacks the parts: a step holds the matrix, whose entries are the distinct ``(user, track)``
pairs, and one part's events, never every event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import scipy.sparse as sp

from recmodel.core.dataset import UserItems

SECONDS_PER_DAY = 86_400.0
POPULARITY_HALF_LIFE_DAYS = 7.0  # the decay of the recent plays of a track


class PlaySource(Protocol):
    """The events of every user, readable in parts: :class:`Dataset` or ``UserShards``."""

    n_users: int
    n_items: int

    def parts(self): ...  # (part, first user) holding users 0..n_users - 1, in order

    def parts_of(self, users: np.ndarray): ...  # (part, rows within it) holding ``users``

    def end_before(self, window: int) -> int: ...

    def users_with_events(self, window: int, min_history: int = 1) -> np.ndarray: ...


@dataclass(frozen=True)
class Plays:
    """The training events of a baseline, reduced to what the models read.

    Attributes:
        matrix: float32 CSR ``[U, N + 1]`` play counts (column 0, padding, stays empty).
        item_counts: int64 ``[N + 1]`` plays of each track.
        recent: float64 ``[N + 1]`` plays of each track weighted ``2 ** (-age / half-life)``,
            ``age`` from the play to :attr:`end` (:data:`POPULARITY_HALF_LIFE_DAYS`).
        end: one second after the last play (0 without plays): the queries' request time.
    """

    matrix: sp.csr_matrix
    item_counts: np.ndarray
    recent: np.ndarray
    end: int

    @property
    def n_items(self) -> int:
        return self.matrix.shape[1] - 1

    @property
    def n_pairs(self) -> int:
        """Distinct ``(user, track)`` pairs: the matrix's entries."""
        return int(self.matrix.nnz)


def play_matrix(user_items: UserItems, n_items: int) -> sp.csr_matrix:
    """float32 CSR ``[U, n_items + 1]`` of play counts, leaving ``user_items`` untouched.

    ``UserItems.to_csr`` hands its arrays to scipy, which keeps int32 indices without a copy and
    then sorts them in place; a copy keeps the caller's histories in time order.
    """
    private = UserItems(user_items.indptr.copy(), user_items.items.copy(), user_items.ts)
    return private.to_csr(n_items)


def plays_of(history: UserItems, n_items: int) -> Plays:
    """The :class:`Plays` of the events ``history`` (its rows are the matrix's rows)."""
    matrix = play_matrix(history, n_items)
    counts = np.bincount(history.items, minlength=n_items + 1).astype(np.int64)
    counts[0] = 0  # padding is never a track
    end = int(history.ts.max(initial=-1)) + 1
    recent = np.bincount(history.items, _decay(end - history.ts), minlength=n_items + 1)
    recent[0] = 0.0
    return Plays(matrix, counts, recent, end)


def stack_plays(parts: list[Plays]) -> Plays:
    """The plays of consecutive parts of the users as one: rows stacked, counts summed, and
    each part's decayed plays carried from its own end to the latest."""
    if not parts:
        raise ValueError("stack_plays needs at least one part")
    end = max(p.end for p in parts)
    matrix = parts[0].matrix if len(parts) == 1 else sp.vstack([p.matrix for p in parts], "csr")
    return Plays(
        matrix.astype(np.float32, copy=False),
        np.sum([p.item_counts for p in parts], axis=0),
        np.sum([p.recent * _decay(np.float64(end - p.end)) for p in parts], axis=0),
        end,
    )


def training_plays(source: PlaySource, before: int) -> Plays:
    """The plays of every event in windows ``< before``, read one part at a time."""
    parts = source.parts()
    return stack_plays([plays_of(part.history(before), source.n_items) for part, _ in parts])


def _decay(age_seconds: np.ndarray) -> np.ndarray:
    return np.exp2(-age_seconds / (POPULARITY_HALF_LIFE_DAYS * SECONDS_PER_DAY))
