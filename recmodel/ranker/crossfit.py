"""Cross-fitting: each user's ranker score comes from a model that never saw that user's labels.

Users are split into ``n_folds`` folds by a deterministic hash of ``user_idx``
(:func:`recmodel.ranker.splits.user_folds`); model ``k`` is fit on the rows of every fold but
``k`` and scores only fold ``k``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

from recmodel.core.config import RankerConfig
from recmodel.ranker.splits import user_folds

# Below this many rows a tree fit is dominated by OpenMP synchronization, which on a busy
# machine costs 10x the work itself: fit and predict single-threaded.
SINGLE_THREAD_ROWS = 100_000
# Feature rows read at once: the matrix may be a map of a file (recmodel.ranker.feature_rows),
# so it is read in blocks of rows, never whole or column by column.
ROW_BLOCK = 1 << 20


def gbm_threads(n_rows: int) -> AbstractContextManager:
    """OpenMP thread limit for tree fitting and prediction on ``n_rows`` rows."""
    return threadpool_limits(limits=1 if n_rows < SINGLE_THREAD_ROWS else None, user_api="openmp")


@dataclass
class CrossFitted:
    """Fold models: ``models[k]`` was fit on every fold except ``k`` and scores only fold ``k``.

    Attributes:
        models: the fold models.
        n_folds, seed: the fold hash.
        columns: int ``[F']`` the feature columns the models use (see :func:`usable_columns`).
        dropped: column index -> why it was left out.
        serving: a model fit on every row, for requests outside the training requests (a later
            window, whose labels no fold model saw either): it has all the data.
        fit_rows: rows each fold model was fit on, then the serving model's (fewer than
            offered where ``max_rows`` sampled users).
    """

    models: list[Any]
    n_folds: int
    seed: int
    columns: np.ndarray
    dropped: dict[int, str]
    serving: Any = None
    fit_rows: list[int] | None = None

    def folds(self, users: np.ndarray) -> np.ndarray:
        return user_folds(users, self.n_folds, self.seed)

    def score(self, features: np.ndarray, users: np.ndarray) -> np.ndarray:
        """float64 ``[N]``: log-odds of each row from the model that never saw its user."""
        folds = self.folds(users)
        out = np.empty(len(users), dtype=np.float64)
        with gbm_threads(len(users)):
            for start in range(0, len(users), ROW_BLOCK):
                block = slice(start, start + ROW_BLOCK)
                values, in_fold = np.asarray(features[block])[:, self.columns], folds[block]
                for k, model in enumerate(self.models):
                    rows = in_fold == k
                    if rows.any():
                        out[block][rows] = model.decision_function(values[rows])
        return out

    def score_new(self, features: np.ndarray) -> np.ndarray:
        """float64 ``[N]``: log-odds of rows of new requests, from the all-rows model."""
        if len(features) == 0:
            return np.zeros(0)
        with gbm_threads(len(features)):
            return self.serving.decision_function(features[:, self.columns])


def usable_columns(
    features: np.ndarray, train_rows: list[np.ndarray]
) -> tuple[np.ndarray, dict[int, str]]:
    """The columns every fold model can learn from, and why each other one is left out.

    A column missing (NaN) for every row, or holding one value in every row, carries nothing;
    one that is missing or constant in the training rows of some fold cannot be binned by that
    fold's trees. Real logs make both: no item file means no artist, genre, tempo or acoustic
    feature at all.

    Args:
        features: float ``[N, F]``.
        train_rows: bool ``[N]`` per fold, the rows its model is fit on.

    Returns:
        int ``[F']`` kept column indices, and ``{column: reason}`` of the others.
    """
    masks = [None, *train_rows]  # None: every row
    n_columns = features.shape[1]
    known = np.zeros((len(masks), n_columns), dtype=np.int64)  # non-NaN values
    low = np.full((len(masks), n_columns), np.inf)
    high = np.full((len(masks), n_columns), -np.inf)
    for start in range(0, len(features), ROW_BLOCK):  # one read of the rows, block by block
        block = np.asarray(features[start : start + ROW_BLOCK], dtype=np.float64)
        for k, mask in enumerate(masks):
            values = block if mask is None else block[mask[start : start + ROW_BLOCK]]
            valid = ~np.isnan(values)
            known[k] += valid.sum(axis=0)
            low[k] = np.minimum(low[k], np.where(valid, values, np.inf).min(axis=0, initial=np.inf))
            high[k] = np.maximum(
                high[k], np.where(valid, values, -np.inf).max(axis=0, initial=-np.inf)
            )
    dropped: dict[int, str] = {}
    for j in range(n_columns):
        for k in range(len(masks)):
            where = "every candidate" if k == 0 else f"the training rows of fold {k - 1}"
            if known[k, j] == 0:
                dropped[j] = f"missing for {where}"
            elif low[k, j] == high[k, j]:  # one distinct value
                dropped[j] = f"constant ({low[k, j]:g}) for {where}"
            if j in dropped:
                break
    kept = np.array([j for j in range(features.shape[1]) if j not in dropped], dtype=np.int64)
    return kept, dropped


def sampled_users(users: np.ndarray, rows: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    """bool ``[N]``: ``rows`` of a seeded sample of whole users holding at most ``max_rows`` of
    them (``rows`` itself when they fit, or ``max_rows`` is 0).

    Users are taken in a seeded random order while their rows fit, so a user's requests are
    all in or all out, and a user with more rows than the rest of the budget is passed over.
    """
    if max_rows <= 0 or int(rows.sum()) <= max_rows:
        return rows
    ids, inverse = np.unique(users, return_inverse=True)
    per_user = np.bincount(inverse, weights=rows, minlength=len(ids)).astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(ids))
    keep = np.zeros(len(ids), dtype=bool)
    taken = 0
    for user in order:  # one pass over the users, in a random order
        if taken + per_user[user] <= max_rows:
            keep[user] = True
            taken += per_user[user]
    return rows & keep[inverse]


def cross_fit(
    features: np.ndarray,
    labels: np.ndarray,
    users: np.ndarray,
    n_folds: int,
    seed: int,
    make_model: Callable[[], Any],
    trainable: np.ndarray | None = None,
    excluded: dict[int, str] | None = None,
    max_rows: int = 0,
) -> tuple[CrossFitted, np.ndarray]:
    """Fit one model per fold on the other folds' users; score every row out of fold.

    Args:
        features: float ``[N, F]``.
        labels: bool ``[N]``.
        users: int ``[N]`` user of each row (the unit of the folds).
        n_folds, seed: the fold hash.
        make_model: a new unfitted classifier with ``fit`` and ``decision_function``.
        trainable: bool ``[N]``, rows a model may be fit on (None: all); the others are only
            scored.
        excluded: columns left out on purpose, with the reason.
        max_rows: each model is fit on a seeded sample of whole users holding at most this
            many of its rows (0 = all; :func:`sampled_users`); every row is still scored.

    Returns:
        The fold models and float64 ``[N]`` out-of-fold scores.

    Raises:
        ValueError: a fold's training rows hold one label class only, or no feature column
            varies (nothing to learn from).
    """
    folds = user_folds(users, n_folds, seed)
    trainable = np.ones(len(labels), dtype=bool) if trainable is None else trainable
    train_rows = [
        sampled_users(users, (folds != k) & trainable, max_rows, seed + k) for k in range(n_folds)
    ]
    serving_rows = sampled_users(users, np.ones(len(labels), dtype=bool), max_rows, seed + n_folds)
    columns, dropped = usable_columns(features, train_rows)
    dropped = {**dropped, **(excluded or {})}
    columns = np.array([j for j in columns if j not in dropped], dtype=np.int64)
    if len(columns) == 0:
        raise ValueError(f"no ranker feature varies over the candidates: {dropped}")
    models = []
    for k, train in enumerate(train_rows):
        if np.unique(labels[train]).size < 2:
            raise ValueError(
                f"ranker fold {k}: the training rows of the other folds hold only one label "
                f"class ({int(labels[train].sum())} positives in {int(train.sum())} rows); "
                "the finetune window has too few requests or listens"
            )
        model = make_model()
        with gbm_threads(int(train.sum())):
            model.fit(features[np.ix_(train, columns)], labels[train])
        models.append(model)
    serving = make_model()
    with gbm_threads(int(serving_rows.sum())):
        serving.fit(features[np.ix_(serving_rows, columns)], labels[serving_rows])
    fit_rows = [int(rows.sum()) for rows in [*train_rows, serving_rows]]
    fitted = CrossFitted(models, n_folds, seed, columns, dropped, serving, fit_rows)
    return fitted, fitted.score(features, users)


def make_classifier(cfg: RankerConfig) -> HistGradientBoostingClassifier:
    """The gradient-boosted trees of the ranker (exactly ``max_iter`` trees: no early stop)."""
    return HistGradientBoostingClassifier(
        max_iter=cfg.max_iter,
        learning_rate=cfg.learning_rate,
        max_leaf_nodes=cfg.max_leaf_nodes,
        early_stopping=False,
        random_state=cfg.seed,
    )
