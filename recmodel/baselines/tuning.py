"""Fair baselines: settings scored on validation, the best one refit for the test.

The rule, the same for every baseline: fit a setting on the events before the validation
window, recommend for (a seeded sample of) the validation users from their histories before
that window, and score NDCG@10 against their validation listens; then fit the best setting
again on every event before the test window, which is what the test requests are answered from.
A baseline without a grid (one point) is only refit.

Which settings are scored (``BaselinesConfig.search``):

* ``grid``: every point of the product of the axes, in order; ties keep the earlier point.
* ``coordinate``: coordinate ascent. Start at the first value of every axis; for each axis in
  turn try all of its values with the others held, and move to a strictly better score; repeat
  the sweep until one changes nothing (it ends: the score only rises, and each point is scored
  once). It ends at a point that no change of one setting improves; on ALS's 3 x 3 x 4 grid it
  typically costs 8 to 15 fits instead of 36, and where the axes act separately it finds the
  grid's best (tests check both against the full grid).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from recmodel.baselines.base import EMPTY, Recommender
from recmodel.core.columns import Window
from recmodel.core.dataset import Dataset, UserItems
from recmodel.evaluation.metrics import evaluate

log = logging.getLogger(__name__)

TUNE_K = 10  # settings are ranked by validation NDCG@TUNE_K
TUNE_METRIC = f"ndcg@{TUNE_K}"
SEARCHES = ("coordinate", "grid")
REFIT_RULE = (
    "each setting fit on the events before the validation window and scored on it (NDCG@10); "
    "the best refit on every event before the test window"
)

Axes = dict[str, Sequence[Any]]  # setting name -> the values to try, the first the start


@dataclass(frozen=True)
class Validation:
    """Validation requests: queries before the validation window, targets inside it."""

    histories: UserItems  # rows: all users
    users: np.ndarray  # int64 [V] users with a target and a history
    targets: UserItems  # rows aligned with ``users``
    of_users: int = 0  # validation users before sampling (``len(users)`` when none was)

    def describe(self) -> str:
        """How many validation users scored the settings, for the report."""
        if self.of_users > len(self.users):
            return f"{len(self.users):,} validation users (a seeded sample of {self.of_users:,})"
        return f"{len(self.users):,} validation users"


def validation_requests(dataset: Dataset, max_users: int = 0, seed: int = 0) -> Validation | None:
    """The validation requests (a seeded sample of ``max_users`` when > 0), or None if none."""
    users = dataset.users_with_events(Window.VAL, min_history=1)
    if users.size == 0:
        return None
    every = len(users)
    if 0 < max_users < every:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    targets = dataset.events_in(Window.VAL).take(users)
    return Validation(dataset.history(Window.VAL), users, targets, every)


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


def grid_points(axes: Axes) -> list[dict[str, Any]]:
    """Every point of the product of ``axes``, the last axis varying fastest."""
    return [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]


def search(axes: Axes, score: Callable[[dict[str, Any]], float], method: str) -> dict[str, Any]:
    """The best point of ``axes`` by ``score`` with ``method`` (module docstring).

    ``score`` is called once per distinct point; NaN never wins.
    """
    if method not in SEARCHES:
        raise ValueError(f"search must be one of {SEARCHES}, got {method!r}")
    if not grid_points(axes):
        raise ValueError(f"every tuning axis needs a value: {dict(axes)}")
    seen: dict[tuple, float] = {}

    def scored(point: dict[str, Any]) -> float:
        key = tuple(point.values())
        if key not in seen:
            seen[key] = score(point)
        return seen[key]

    if method == "grid":
        best, best_score = None, -math.inf
        for point in grid_points(axes):
            value = scored(point)
            if best is None or value > best_score:  # ties keep the earlier point
                best, best_score = point, value
        return best
    best = {name: values[0] for name, values in axes.items()}
    best_score, moved = scored(best), True
    while moved:  # ends: best_score strictly rises over finitely many points
        moved = False
        for name, values in axes.items():
            for value in values:
                point = {**best, name: value}
                point_score = scored(point)
                if point_score > best_score:
                    best, best_score, moved = point, point_score, True
    return best


def tune_and_refit(
    build: Callable[..., Recommender],
    axes: Axes,
    dataset: Dataset,
    val: Validation | None,
    method: str = "coordinate",
) -> Tuned:
    """Search ``axes`` on ``val`` with models from ``build(**point)``; refit the best.

    Args:
        build: makes an unfitted model from one point.
        axes: the settings to try (one value each: nothing to search).
        dataset: the events.
        val: the validation requests (None: no search, the first point is refit).
        method: ``coordinate`` or ``grid`` (module docstring).
    """
    points = grid_points(axes)
    if not points:
        raise ValueError(f"every tuning axis needs a value: {dict(axes)}")
    rows: list[dict[str, Any]] = []

    def score(point: dict[str, Any]) -> float:
        start = time.perf_counter()
        value = validation_score(build(**point).fit(dataset, before=Window.VAL), val)
        rows.append({**point, TUNE_METRIC: value, "seconds": time.perf_counter() - start})
        log.info("%s: validation %s=%.4f", point, TUNE_METRIC, value)
        return value

    best = points[0]
    if len(points) > 1 and val is None:
        log.warning("no validation users: keeping the first setting %s untuned", best)
    elif len(points) > 1:
        best = search(axes, score, method)
    model = build(**best).fit(dataset, before=Window.TEST)
    return Tuned(model, dict(best), rows)
