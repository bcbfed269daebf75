"""The test set every model is judged on, and the long recommendations table they all write."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from recmodel.core.columns import Columns, Window
from recmodel.core.config import EvalConfig
from recmodel.core.dataset import Dataset, UserItems

REC_K = 100  # rows kept per test user per model in `recommendations`


@dataclass(frozen=True)
class TestSet:
    """Test users with their queries and targets (DESIGN.md §3).

    Attributes:
        users: int64 ``[U]`` user indices with a target in the test window and history before it.
        histories: the query of every user: all events before the test window (rows: all users).
        targets: the test-window listen+ events of ``users`` (rows aligned with ``users``).

    ``histories`` and ``targets`` are None where the events stay in user shards
    (:mod:`recmodel.core.user_shards`): they are read shard by shard as the users are scored.
    """

    users: np.ndarray
    histories: UserItems | None
    targets: UserItems | None


def build_test_set(dataset: Dataset, cfg: EvalConfig, window: int = Window.TEST) -> TestSet:
    """The same users, queries and targets for every model (a seeded subsample if configured)."""
    users = sample_test_users(dataset.users_with_events(window, min_history=1), cfg)
    return TestSet(users, dataset.history(window), dataset.events_in(window).take(users))


def sample_test_users(users: np.ndarray, cfg: EvalConfig) -> np.ndarray:
    """A seeded subsample of ``users`` (sorted int64) when ``cfg.max_test_users`` is set."""
    users = np.sort(np.asarray(users, dtype=np.int64))
    if cfg.max_test_users and len(users) > cfg.max_test_users:
        rng = np.random.default_rng(cfg.seed)
        users = np.sort(rng.choice(users, size=cfg.max_test_users, replace=False))
    return users


def recommendations_table(
    model: str,
    users: np.ndarray,
    items: np.ndarray,
    scores: np.ndarray,
    user_ids: pa.Array,
    item_ids: pa.Array,
) -> pa.Table:
    """Long table ``(model, user_id, item_id, score, rank)`` in original ids.

    Args:
        model: model name.
        users: int64 ``[U]`` user indices.
        items: int64 ``[U, K]`` item indices, best first (0 = no recommendation, dropped).
        scores: float ``[U, K]``.
        user_ids: original id of each user index (``user_ids[u]``).
        item_ids: original id of each item index (``item_ids[i]``; entry 0 unused).
    """
    assert items.shape == scores.shape and items.shape[0] == len(users), (items.shape, len(users))
    k = items.shape[1]
    ranks = np.tile(np.arange(1, k + 1, dtype=np.int32), len(users))  # [U*K]
    flat_users = np.repeat(users, k)  # [U, K] -> [U*K]
    flat_items, flat_scores = items.reshape(-1), scores.reshape(-1).astype(np.float32)
    keep = flat_items > 0
    return pa.table(
        {
            Columns.MODEL: pa.array([model] * int(keep.sum()), pa.string()),
            Columns.USER: user_ids.take(pa.array(flat_users[keep])),
            Columns.ITEM: item_ids.take(pa.array(flat_items[keep])),
            Columns.SCORE: pa.array(flat_scores[keep]),
            Columns.RANK: pa.array(ranks[keep]),
        }
    )
