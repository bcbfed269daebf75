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
from recmodel.baselines.plays import Plays, PlaySource, training_plays
from recmodel.core.columns import Window
from recmodel.core.dataset import Dataset, UserItems
from recmodel.core.user_shards import take_rows
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

    queries: UserItems  # row i: the events of users[i] before the validation window
    users: np.ndarray  # int64 [V] users with a target and a history
    targets: UserItems  # rows aligned with ``users``
    now: int  # the request time: one second after the last event before the window
    of_users: int = 0  # validation users before sampling (``len(users)`` when none was)

    def describe(self) -> str:
        """How many validation users scored the settings, for the report."""
        if self.of_users > len(self.users):
            return f"{len(self.users):,} validation users (a seeded sample of {self.of_users:,})"
        return f"{len(self.users):,} validation users"


def validation_requests(source: PlaySource, max_users: int = 0, seed: int = 0) -> Validation | None:
    """The validation requests (a seeded sample of ``max_users`` when > 0), or None if none.

    ``source`` is the in-memory :class:`Dataset` or the run's user shards; only the sampled
    users' events are read (one shard at a time).
    """
    users = source.users_with_events(Window.VAL, min_history=1)
    if users.size == 0:
        return None
    every = len(users)
    if 0 < max_users < every:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    queries, targets = take_rows(source, users, Window.VAL, Window.VAL)
    return Validation(queries, users, targets, source.end_before(Window.VAL), every)


def validation_score(model: Recommender, val: Validation) -> float:
    """NDCG@10 of ``model``'s recommendations for the validation requests."""
    k = min(TUNE_K, model.n_items)
    rows = np.arange(len(val.users))
    items, _ = model.recommend(val.queries, rows, k, now=val.now)
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


def tune(
    build: Callable[..., Recommender],
    axes: Axes,
    plays: Plays,
    val: Validation | None,
    method: str = "coordinate",
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The best point of ``axes``: models from ``build(**point)`` fit on ``plays`` (the events
    before the validation window) and scored on ``val``.

    Returns:
        ``(best, rows)``: the point, and one row per point scored (its settings, score and
        seconds); without a search (one point, or no validation users) the first point and
        no rows.
    """
    points = grid_points(axes)
    if not points:
        raise ValueError(f"every tuning axis needs a value: {dict(axes)}")
    rows: list[dict[str, Any]] = []

    def score(point: dict[str, Any]) -> float:
        start = time.perf_counter()
        value = validation_score(build(**point).fit_plays(plays), val)
        rows.append({**point, TUNE_METRIC: value, "seconds": time.perf_counter() - start})
        log.info("%s: validation %s=%.4f", point, TUNE_METRIC, value)
        return value

    if len(points) == 1:
        return points[0], rows
    if val is None:
        log.warning("no validation users: keeping the first setting %s untuned", points[0])
        return points[0], rows
    return search(axes, score, method), rows


def tune_and_refit(
    build: Callable[..., Recommender],
    axes: Axes,
    dataset: Dataset,
    val: Validation | None,
    method: str = "coordinate",
) -> Tuned:
    """:func:`tune` on the events before the validation window, then the best setting refit
    on every event before the test window (the in-memory form of the baselines step)."""
    tuning = training_plays(dataset, Window.VAL) if len(grid_points(axes)) > 1 else None
    best, rows = tune(build, axes, tuning, val, method)
    model = build(**best).fit_plays(training_plays(dataset, Window.TEST))
    return Tuned(model, dict(best), rows)
