"""Validation of a retriever during training: full-catalog top-k on a fixed sample of users.

The queries are each user's history before the validation window and the targets its events
inside it (DESIGN.md §3); the users are those with at least one validation target, at most
``max_users`` of them drawn once with a fixed seed, so every epoch is scored on the same users.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from recmodel.core.columns import Window
from recmodel.core.config import EvalConfig, TrainConfig
from recmodel.core.dataset import Dataset, UserItems
from recmodel.core.user_shards import UserShards, take_rows
from recmodel.evaluation.metrics import evaluate
from recmodel.retriever.model import Retriever

logger = logging.getLogger(__name__)

VAL_METRIC = "ndcg@10"  # early stopping and best-checkpoint selection
VAL_K = 10


@dataclass(frozen=True)
class ValidationSet:
    """Fixed validation queries.

    Attributes:
        users: int64 ``[U]`` user indices, ascending.
        histories: queries indexed by user (every user of the dataset).
        targets: row ``i`` holds the validation targets of ``users[i]``.
        exclude: row ``i`` holds the items never to recommend to ``users[i]`` (or None).
        item_counts: int64 ``[N + 1]`` popularity for the popularity metrics.
        n_items: catalog size.
    """

    users: np.ndarray
    histories: UserItems
    targets: UserItems
    exclude: UserItems | None
    item_counts: np.ndarray
    n_items: int


def validation_set(
    dataset: Dataset, max_users: int, seed: int, filter_seen: bool = False
) -> ValidationSet:
    """Users with validation targets (at most ``max_users``; 0 = all) and their queries."""
    targets = dataset.events_in(Window.VAL)
    users = validation_users(targets.lengths, max_users, seed)
    histories = dataset.history(Window.VAL)
    exclude = histories.take(users) if filter_seen else None
    logger.info("validation on %d users", len(users))
    return ValidationSet(
        users, histories, targets.take(users), exclude, dataset.item_counts, dataset.n_items
    )


def validation_users(val_lengths: np.ndarray, max_users: int, seed: int) -> np.ndarray:
    """int64 ascending: the users with validation targets, at most ``max_users`` (0 = all)."""
    users = np.flatnonzero(val_lengths > 0).astype(np.int64)
    if 0 < max_users < len(users):
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    return users


def shard_validation_set(
    shards: UserShards,
    max_users: int,
    seed: int,
    filter_seen: bool = False,
    keep_last: int = 0,
) -> ValidationSet:
    """:func:`validation_set` read from user shards, holding only the sampled users' rows.

    The same users as :func:`validation_set` on the whole dataset; their queries are renumbered
    ``0 .. U - 1`` (``users`` is ``arange(U)``), which leaves every recommendation unchanged.
    With ``keep_last`` > 0 (and no seen-item filter, which needs every played track) only each
    query's last ``keep_last`` plays are kept: a retriever reads its window and, before it, its
    profile's plays (``max_len + profile_history``), so its scores are the same.
    """
    users = validation_users(shards.lengths_in(Window.VAL), max_users, seed)
    histories, targets = take_rows(shards, users, before=Window.VAL, within=Window.VAL)
    if keep_last > 0 and not filter_seen:
        histories = histories.tails(keep_last)
    logger.info("validation on %d users (read from %d shards)", len(users), shards.n_shards)
    rows = np.arange(len(users), dtype=np.int64)
    exclude = histories if filter_seen else None
    return ValidationSet(rows, histories, targets, exclude, shards.item_counts, shards.n_items)


def validation_set_of(
    source: Dataset | UserShards, cfg: TrainConfig, cfg_eval: EvalConfig, keep_last: int = 0
) -> ValidationSet:
    """The validation set of training (``train.eval_users``), from the events in memory or
    read from user shards (each query's last ``keep_last`` plays: :func:`shard_validation_set`)."""
    if isinstance(source, UserShards):
        return shard_validation_set(
            source, cfg.eval_users, cfg.seed, cfg_eval.filter_seen, keep_last
        )
    return validation_set(source, cfg.eval_users, cfg.seed, cfg_eval.filter_seen)


def evaluate_retriever(
    model: Retriever, valset: ValidationSet, ks: tuple[int, ...], chunk_items: int
) -> dict[str, float]:
    """Summary metrics (``"ndcg@10"``, ``"recall@10"``, ...) of ``model`` on ``valset``.

    ``k = 10`` is always included (it drives early stopping). Empty when there is no user.
    """
    if len(valset.users) == 0:
        return {}
    ks = tuple(sorted({*ks, VAL_K}))
    # A catalog smaller than k leaves empty slots (id -1), which the metrics skip.
    recs, _ = model.recommend(
        valset.histories, valset.users, max(ks), exclude=valset.exclude, chunk_items=chunk_items
    )
    result = evaluate(
        recs, valset.targets, ks=ks, item_counts=valset.item_counts, n_items=valset.n_items
    )
    return dict(result.summary)
