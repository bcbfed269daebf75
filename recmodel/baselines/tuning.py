"""Fair baselines: every setting on a grid scored on validation, the best one refit for the test.

The rule, the same for every baseline: fit each point of its grid on the events before the
validation window, recommend for (a seeded sample of) the validation users from their
histories before that window, and score NDCG@10 against their validation listens; then fit the
best point again on every event before the test window, which is what the test requests are
answered from. Ties keep the earlier point of the grid. A baseline without a grid (one point)
is only refit.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from recmodel.baselines.base import EMPTY, Recommender
from recmodel.core.columns import Window
from recmodel.core.dataset import Dataset, UserItems
from recmodel.evaluation.metrics import evaluate

log = logging.getLogger(__name__)

TUNE_K = 10  # the grid is ranked by validation NDCG@TUNE_K
TUNE_METRIC = f"ndcg@{TUNE_K}"
REFIT_RULE = (
    "each setting fit on the events before the validation window and scored on it (NDCG@10); "
    "the best refit on every event before the test window"
)


@dataclass(frozen=True)
class Validation:
    """Validation requests: queries before the validation window, targets inside it."""

    histories: UserItems  # rows: all users
    users: np.ndarray  # int64 [V] users with a target and a history
    targets: UserItems  # rows aligned with ``users``


def validation_requests(dataset: Dataset, max_users: int = 0, seed: int = 0) -> Validation | None:
    """The validation requests (a seeded sample of ``max_users`` when > 0), or None if none."""
    users = dataset.users_with_events(Window.VAL, min_history=1)
    if users.size == 0:
        return None
    if 0 < max_users < len(users):
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    targets = dataset.events_in(Window.VAL).take(users)
    return Validation(dataset.history(Window.VAL), users, targets)


def validation_score(model: Recommender, val: Validation) -> float:
    """NDCG@10 of ``model``'s recommendations for the validation requests."""
    k = min(TUNE_K, model.n_items)
    items, _ = model.recommend(val.histories, val.users, k)
    # A catalog smaller than TUNE_K leaves empty slots, which evaluate() never counts.
    items = np.pad(items, ((0, 0), (0, TUNE_K - k)), constant_values=EMPTY)
    result = evaluate(
        items, val.targets, ks=(TUNE_K,), item_counts=model.item_counts, n_items=model.n_items
    )
    return float(result.summary[TUNE_METRIC])


@dataclass(frozen=True)
class Tuned:
    """The refit model of the best setting, and what the search saw."""

    model: Recommender
    params: dict[str, Any]
    tuning: list[dict[str, Any]]  # one row per grid point: the setting, its score, seconds


def tune_and_refit(
    build: Any, grid: list[dict[str, Any]], dataset: Dataset, val: Validation | None
) -> Tuned:
    """Search ``grid`` on ``val`` with models from ``build(**point)``; refit the best.

    Args:
        build: makes an unfitted model from one point of the grid.
        grid: the settings to try, in order.
        dataset: the events.
        val: the validation requests (None: no search, the first point is refit).
    """
    if not grid:
        raise ValueError("the tuning grid is empty")
    rows = []
    best, best_score = grid[0], -math.inf
    if len(grid) > 1 and val is None:
        log.warning("no validation users: keeping the first setting %s untuned", grid[0])
    for point in grid if len(grid) > 1 and val is not None else ():
        start = time.perf_counter()
        score = validation_score(build(**point).fit(dataset, before=Window.VAL), val)
        rows.append({**point, TUNE_METRIC: score, "seconds": time.perf_counter() - start})
        log.info("%s: validation %s=%.4f", point, TUNE_METRIC, score)
        if score > best_score:  # NaN never wins; ties keep the earlier point
            best, best_score = point, score
    model = build(**best).fit(dataset, before=Window.TEST)
    return Tuned(model, dict(best), rows)
