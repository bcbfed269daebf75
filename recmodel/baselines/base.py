"""The fit/recommend interface every model sits behind, and the vectorized ranking it shares.

A recommendation table is a pair ``(items int64 [U, k], scores float32 [U, k])``, best first.
Inside a model, rows may be partly empty (slot value :data:`EMPTY`, score ``-inf``), always
filled from the left; :meth:`Recommender.recommend` completes every row with the most popular
tracks of the training window, so callers only ever see full rows without the padding item 0.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator

import numpy as np
import threadpoolctl

from recmodel.baselines.plays import Plays, training_plays
from recmodel.core.columns import Window
from recmodel.core.dataset import QUERY_CHUNK_EVENTS, Dataset, UserItems, row_runs
from recmodel.evaluation.topk import EMPTY  # the same empty-slot marker as the chunked top-k

log = logging.getLogger(__name__)


@contextlib.contextmanager
def implicit_scope() -> Iterator[None]:
    """Run ``implicit`` code with a single-threaded BLAS and without its CSR-copy warning.

    implicit parallelizes over users/items itself; a multi-threaded OpenBLAS inside each of its
    threads oversubscribes the cores (implicit warns about it and recommends this limit). The
    limit is scoped to implicit's calls so that the rest of the process keeps its BLAS threads.
    """
    from implicit.utils import ParameterWarning

    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
        # Its item-kNN models pass their own COO weighting to a CSR-only routine and warn.
        warnings.filterwarnings("ignore", category=ParameterWarning)
        yield


def pair_keys(rows: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """int64 keys that identify ``(row, item)`` pairs, for set membership with ``np.isin``."""
    return rows.astype(np.int64) * (n_items + 1) + items.astype(np.int64)


def history_pairs(query: UserItems) -> tuple[np.ndarray, np.ndarray]:
    """``(row, item)`` of every event of ``query`` (duplicates kept), both int64 ``[nnz]``."""
    rows = np.repeat(np.arange(query.n_users, dtype=np.int64), query.lengths)
    return rows, query.items.astype(np.int64)


def empty_table(n_rows: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A table with every slot empty: items ``EMPTY``, scores ``-inf``, both ``[n_rows, k]``."""
    return (
        np.full((n_rows, k), EMPTY, dtype=np.int64),
        np.full((n_rows, k), -np.inf, dtype=np.float32),
    )


def _row_score_key(rows: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """int64 keys that sort like ``(row ascending, float32 score descending)``.

    The float32 bits are mapped to an unsigned integer of the same order (flip all bits of a
    negative, set the sign bit of a positive), then inverted for a descending order, and the
    row fills the upper 32 bits: one integer sort replaces a much slower two-key lexsort.
    """
    bits = np.ascontiguousarray(scores, dtype=np.float32).view(np.uint32)
    ascending = np.where(bits >> 31 == 1, ~bits, bits | np.uint32(1 << 31))
    return (rows.astype(np.int64) << 32) | (~ascending).astype(np.int64)


def _row_positions(sorted_rows: np.ndarray, n_rows: int) -> np.ndarray:
    """Position of each entry inside its row, for entries sorted by row."""
    counts = np.bincount(sorted_rows, minlength=n_rows)
    starts = np.cumsum(counts) - counts  # [n_rows] first flat index of each row
    return np.arange(len(sorted_rows)) - starts[sorted_rows]


def top_k_per_row(
    rows: np.ndarray,
    items: np.ndarray,
    scores: np.ndarray,
    tiebreak: np.ndarray,
    n_rows: int,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` candidates of each row, without a Python loop over rows.

    Candidates are ordered by score (descending), then ``tiebreak`` (descending). A fast
    integer sort on ``(row, score)`` first keeps each row's ``k`` best and everything tied with
    the ``k``-th; only those few are then ordered with the tie-break.

    Args:
        rows, items, scores, tiebreak: ``[C]`` one entry per candidate; ``(row, item)`` unique.
        n_rows: number of rows of the output table (``< 2**31``).
        k: slots per row.

    Returns:
        items int64 ``[n_rows, k]`` and scores float32 ``[n_rows, k]``, left-aligned, with
        ``EMPTY`` / ``-inf`` where a row has fewer than ``k`` candidates.
    """
    scores = scores.astype(np.float32)
    order = np.argsort(_row_score_key(rows, scores), kind="stable")
    sorted_rows, sorted_scores = rows[order], scores[order]
    pos = _row_positions(sorted_rows, n_rows)
    cut = pos == np.minimum(k, np.bincount(rows, minlength=n_rows))[sorted_rows] - 1
    kth_score = np.full(n_rows, -np.inf, dtype=np.float32)
    kth_score[sorted_rows[cut]] = sorted_scores[cut]
    kept = order[(pos < k) | (sorted_scores == kth_score[sorted_rows])]

    final = kept[np.lexsort((-tiebreak[kept], -scores[kept], rows[kept]))]  # primary key last
    final_rows = rows[final]
    pos = _row_positions(final_rows, n_rows)
    keep = pos < k
    out_items, out_scores = empty_table(n_rows, k)
    out_items[final_rows[keep], pos[keep]] = items[final][keep]
    out_scores[final_rows[keep], pos[keep]] = scores[final][keep]
    return out_items, out_scores


def _fill_pass(
    items: np.ndarray,
    scores: np.ndarray,
    popular: np.ndarray,
    excl_rows: np.ndarray,
    excl_items: np.ndarray,
    item_scores: np.ndarray | None,
) -> None:
    """Fill empty slots in place with the most popular items not excluded for the row.

    A row with ``m`` empty slots and ``e`` excluded items only needs the first ``m + e``
    popular items, so the candidates stay linear in the input size. Filled slots score
    ``item_scores[item]``, or when None, decreasing values below the row's own scores.
    """
    n_rows, k = items.shape
    n_items = len(popular)
    missing = (items == EMPTY).sum(axis=1)  # [U]
    filled = items != EMPTY
    row_ids = np.arange(n_rows, dtype=np.int64)
    excl_rows = np.concatenate([np.repeat(row_ids, filled.sum(axis=1)), excl_rows])
    excl_items = np.concatenate([items[filled], excl_items])
    # Distinct pairs: a track replayed 1000 times excludes one candidate, not 1000.
    excl_keys = np.unique(pair_keys(excl_rows, excl_items, n_items))
    n_excl = np.bincount(excl_keys // (n_items + 1), minlength=n_rows)
    budget = np.where(missing > 0, np.minimum(missing + n_excl, n_items), 0)  # [U]

    cand_rows = np.repeat(row_ids, budget)
    starts = np.repeat(np.cumsum(budget) - budget, budget)
    cand_items = popular[np.arange(len(cand_rows)) - starts]
    cand_keys = pair_keys(cand_rows, cand_items, n_items)  # unique: popular is a permutation
    keep = ~np.isin(cand_keys, excl_keys, assume_unique=True)
    cand_rows, cand_items = cand_rows[keep], cand_items[keep]
    pos = _row_positions(cand_rows, n_rows)
    take = pos < missing[cand_rows]
    cand_rows, cand_items, pos = cand_rows[take], cand_items[take], pos[take]

    cols = k - missing[cand_rows] + pos
    items[cand_rows, cols] = cand_items
    if item_scores is not None:
        scores[cand_rows, cols] = item_scores[cand_items]
        return
    # Fill scores sit strictly below the row's own scores and keep decreasing.
    floor = np.min(scores, axis=1, where=filled, initial=np.inf)
    floor = np.where(np.isfinite(floor), floor, 0.0)
    scores[cand_rows, cols] = floor[cand_rows] - 1.0 - pos


def fill_popular(
    items: np.ndarray,
    scores: np.ndarray,
    popular: np.ndarray,
    seen: UserItems | None,
    item_scores: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Complete every row of a left-aligned table with popular items.

    Args:
        items, scores: ``[U, k]`` table with ``EMPTY`` slots on the right of each row.
        popular: int64 ``[N]`` every real item (never 0), most popular first.
        seen: per-row histories to exclude (``filter_seen``), rows aligned with ``items``.
        item_scores: float ``[N + 1]`` score of a filled item, non-increasing along
            ``popular``; None scores fills just below the row's own (and decreasing).

    Returns:
        The completed ``(items, scores)``: no ``EMPTY``, no duplicate within a row. Only when
        ``seen`` leaves fewer than ``k`` items in the catalog does a row receive seen items.
    """
    items, scores = items.copy(), scores.copy()
    no_rows = np.zeros(0, dtype=np.int64)
    seen_rows, seen_items = history_pairs(seen) if seen is not None else (no_rows, no_rows)
    _fill_pass(items, scores, popular, seen_rows, seen_items, item_scores)
    short = int((items == EMPTY).any(axis=1).sum())
    if short:
        log.warning(
            "%d users have fewer than %d unseen items; seen items complete them",
            short,
            items.shape[1],
        )
        _fill_pass(items, scores, popular, no_rows, no_rows, None)
    return items, scores


def popularity_order(counts: np.ndarray) -> np.ndarray:
    """int64 ``[N]``: items ``1..N`` by count descending, ties by lower item index first."""
    item_ids = np.arange(1, len(counts), dtype=np.int64)
    return item_ids[np.lexsort((item_ids, -counts[1:]))]


class Recommender(ABC):
    """A model behind one ``fit / recommend`` interface (the transformer is wrapped to it too).

    Subclasses implement :meth:`_fit` and :meth:`_candidates`; this class owns the popularity
    fallback, argument checks and the completion of partly empty rows.
    """

    name: str = ""

    def __init__(self) -> None:
        self.n_items = 0
        self.item_counts = np.zeros(1, dtype=np.int64)  # [N + 1] training-window plays
        self.popular = np.zeros(0, dtype=np.int64)  # [N] items, most played first

    def fit(self, dataset: Dataset, before: int = Window.FINETUNE) -> Recommender:
        """Fit on the events of the windows before ``before`` (default: the pretrain window).

        Tuning fits before the validation window and scores it
        (:mod:`recmodel.baselines.tuning`); the chosen setting is then refit on every event
        before the test window. No model ever reads the test window.
        """
        if before > Window.TEST:
            raise ValueError(f"a baseline never fits on the test window (before={before})")
        return self.fit_plays(training_plays(dataset, before))

    def fit_plays(self, plays: Plays) -> Recommender:
        """Fit on training events already reduced to their :class:`Plays` (built once for
        every model, and one user shard at a time, by :func:`training_plays`)."""
        self.n_items = plays.n_items
        self.item_counts = plays.item_counts
        self.popular = popularity_order(self.item_counts)
        self._fit(plays)
        return self

    def recommend(
        self,
        histories: UserItems,
        users: np.ndarray,
        k: int,
        *,
        filter_seen: bool = False,
        now: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items for each of ``users``.

        Args:
            histories: query histories (CSR rows; every row of the dataset, or a part's).
            users: int ``[U]`` rows of ``histories`` to recommend for.
            k: items per user; at most the catalog size.
            filter_seen: drop items that appear in the user's history.
            now: the request time, for the models that weigh plays by age; by default one
                second after the last event of ``histories``.

        Returns:
            items int64 ``[U, k]`` (never 0, no duplicates) and scores float32 ``[U, k]``,
            best first.
        """
        users = self._check_request(histories, users, k)
        if now is None:
            now = int(histories.ts.max(initial=-1)) + 1
        # Runs of rows, so that a model's working arrays follow a run, not the request.
        parts = [
            self._recommend_rows(histories.take(users[lo:hi]), k, filter_seen, now)
            for lo, hi in row_runs(histories.lengths[users], QUERY_CHUNK_EVENTS)
        ]
        if len(parts) == 1:
            return parts[0]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _recommend_rows(
        self, query: UserItems, k: int, filter_seen: bool, now: int
    ) -> tuple[np.ndarray, np.ndarray]:
        items, scores = self._candidates(query, k, filter_seen, now)
        seen = query if filter_seen else None
        return fill_popular(items, scores, self.popular, seen, self._fill_scores())

    @property
    def model_size(self) -> int:
        """Number of stored parameters (floats or counts) the model scores with."""
        return int(self.item_counts.size)

    def _fill_scores(self) -> np.ndarray | None:
        """float ``[N + 1]`` scores of popularity-filled items; None = just below the row's."""
        return None

    @abstractmethod
    def _fit(self, plays: Plays) -> None:
        """Model-specific fitting on the training events' ``plays``."""

    @abstractmethod
    def _candidates(
        self, query: UserItems, k: int, filter_seen: bool, now: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """A left-aligned ``[U, k]`` table for the rows of ``query`` at request time ``now``;
        may contain ``EMPTY``.

        Never item 0; with ``filter_seen`` never an item of the row's history.
        """

    def _check_request(self, histories: UserItems, users: np.ndarray, k: int) -> np.ndarray:
        if self.popular.size == 0:
            raise RuntimeError(f"{type(self).__name__}.recommend called before fit")
        users = np.asarray(users, dtype=np.int64)
        if users.ndim != 1:
            raise ValueError(f"users must be 1-D, got shape {users.shape}")
        if users.size and (users.min() < 0 or users.max() >= histories.n_users):
            raise ValueError(f"users must be in [0, {histories.n_users}), the histories' rows")
        if not 1 <= k <= self.n_items:
            raise ValueError(f"k must be in [1, {self.n_items}] (the catalog size), got {k}")
        return users
