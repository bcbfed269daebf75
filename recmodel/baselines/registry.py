"""The classic baselines behind one ``fit / recommend`` interface, and a runner that reports them.

Models (names as in the report):

* ``popularity``: the most played tracks.
* ``user_popular``: each listener's own most replayed tracks, then popularity.
* ``user_recent``: each listener's own tracks by time-decayed plays (decay tuned), then the
  recently popular tracks: in music, the baseline a retriever has to beat.
* ``itemknn``: item-to-item collaborative filtering (cosine, BM25 or TF-IDF, implicit).
* ``als``: implicit ALS on play-count confidence.

Every model is tuned and refit by one rule (:mod:`recmodel.baselines.tuning`): its grid from
the config scored on the validation window, the best setting fit again on every event before
the test window. A model scores a request from its query history, so the same code serves
validation and test requests.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from recmodel.baselines.als import ALS
from recmodel.baselines.base import Recommender
from recmodel.baselines.knn import ItemKNN, fit_bytes
from recmodel.baselines.simple import Popularity, UserPopular, UserRecent
from recmodel.baselines.tuning import (
    REFIT_RULE,
    Axes,
    grid_points,
    tune_and_refit,
    validation_requests,
)
from recmodel.core.config import BaselinesConfig, memory_bytes
from recmodel.core.dataset import Dataset, UserItems

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildOptions:
    """Runtime choices that are not model hyperparameters (made once at the entry point)."""

    num_threads: int = 0  # implicit's threads (0 = every core)
    device: str = "cpu"  # torch device of ALS's full-catalog top-k
    chunk_items: int = 65_536  # catalog chunk of that top-k (EvalConfig.chunk_items)


@dataclass(frozen=True)
class Baseline:
    """A baseline: its tuning axes from the config, and how a setting becomes a model."""

    name: str
    axes: Callable[[BaselinesConfig], Axes]
    build: Callable[[dict[str, Any], BaselinesConfig, BuildOptions], Recommender]
    # Why the model cannot run on this data within the config's limits (None: it can).
    too_large: Callable[[Dataset, BaselinesConfig, BuildOptions], str | None] = (
        lambda dataset, cfg, opts: None
    )


def _itemknn_too_large(dataset: Dataset, cfg: BaselinesConfig, opts: BuildOptions) -> str | None:
    limit = memory_bytes(cfg.itemknn_memory_limit) or 0
    threads = opts.num_threads or os.cpu_count() or 1
    neighbours = max(cfg.itemknn_neighbours)
    pairs = len(dataset.item_idx)  # at most one play-matrix entry per event
    need = fit_bytes(dataset.n_items, pairs, neighbours, threads)
    if need <= limit:
        return None
    return (
        f"skipped: the similarity of {dataset.n_items:,} tracks x {neighbours} neighbours and the "
        f"play matrix of up to {pairs:,} pairs need {need / 2**30:.1f} GiB, over "
        f"baselines.itemknn_memory_limit = {cfg.itemknn_memory_limit!r}; raise it (with the "
        "baselines pod) or lower baselines.itemknn_neighbours"
    )


def _als(point: dict, cfg: BaselinesConfig, opts: BuildOptions) -> Recommender:
    return ALS(
        **point,
        iterations=cfg.als_iterations,
        seed=cfg.seed,
        num_threads=opts.num_threads,
        device=opts.device,
        chunk_items=opts.chunk_items,
    )


BASELINES: dict[str, Baseline] = {
    "popularity": Baseline("popularity", lambda cfg: {}, lambda p, cfg, opts: Popularity()),
    "user_popular": Baseline("user_popular", lambda cfg: {}, lambda p, cfg, opts: UserPopular()),
    "user_recent": Baseline(
        "user_recent",
        lambda cfg: {"tau_days": cfg.user_recent_tau_days},
        lambda p, cfg, opts: UserRecent(**p),
    ),
    "itemknn": Baseline(
        "itemknn",
        lambda cfg: {"neighbours": cfg.itemknn_neighbours, "weighting": cfg.itemknn_weighting},
        lambda p, cfg, opts: ItemKNN(**p, num_threads=opts.num_threads),
        _itemknn_too_large,
    ),
    "als": Baseline(
        "als",
        lambda cfg: {
            "factors": cfg.als_factors,
            "regularization": cfg.als_regularization,
            "alpha": cfg.als_alpha,
        },
        _als,
    ),
}
"""Model name (as in the report) -> its tuning axes and builder."""


def build_baselines(
    cfg: BaselinesConfig,
    names: Sequence[str] | None = None,
    options: BuildOptions | None = None,
) -> list[Recommender]:
    """Unfitted baselines at the first setting of each axis (tests, quick uses).

    Args:
        cfg: the ``[baselines]`` section.
        names: which models, in this order; all of :data:`BASELINES` when None.
        options: threads and device; defaults when None.
    """
    names = list(BASELINES) if names is None else list(names)
    unknown = sorted(set(names) - set(BASELINES))
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; known: {sorted(BASELINES)}")
    options = options or BuildOptions()
    return [BASELINES[n].build(grid_points(BASELINES[n].axes(cfg))[0], cfg, options) for n in names]


def run_baseline(
    baseline: Baseline,
    cfg: BaselinesConfig,
    options: BuildOptions,
    dataset: Dataset,
    test_users: np.ndarray,
    histories: UserItems,
    k: int,
    filter_seen: bool,
) -> dict[str, Any]:
    """Tune, refit, recommend for the test users and time it all; never raise.

    Returns:
        On success ``{"name", "status": "ok", "items" int64 [U, k], "scores" float32 [U, k],
        "fit_seconds", "recommend_seconds", "model_size", "params", "tuning", "refit"}``; on
        failure ``{"name", "status": "failed", "error": "Type: message", "traceback"}`` (also
        logged), so that a failing baseline shows up in the report instead of vanishing; a model
        too large for its limits is ``{"name", "status": "skipped", "error": "skipped: why"}``.
    """
    reason = baseline.too_large(dataset, cfg, options)
    if reason:
        log.warning("baseline %s %s", baseline.name, reason)
        return {"name": baseline.name, "status": "skipped", "error": reason}
    try:
        start = time.perf_counter()
        val = validation_requests(dataset, cfg.tune_users, cfg.seed)
        build = _builder(baseline.build, cfg, options)
        tuned = tune_and_refit(build, baseline.axes(cfg), dataset, val, cfg.search)
        fit_seconds = time.perf_counter() - start
        start = time.perf_counter()
        items, scores = tuned.model.recommend(histories, test_users, k, filter_seen=filter_seen)
        recommend_seconds = time.perf_counter() - start
    except Exception as exc:  # a failing baseline is reported, not fatal to the others
        log.exception("baseline %s failed", baseline.name)
        return {
            "name": baseline.name,
            "status": "failed",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }
    log.info(
        "baseline %s %s: fit %.2fs, recommend %.2fs for %d users",
        baseline.name,
        tuned.params,
        fit_seconds,
        recommend_seconds,
        len(test_users),
    )
    return {
        "name": baseline.name,
        "status": "ok",
        "items": items,
        "scores": scores,
        "fit_seconds": fit_seconds,
        "recommend_seconds": recommend_seconds,
        "model_size": int(tuned.model.model_size),
        "params": tuned.params,
        "tuning": tuned.tuning,
        "tuned_on": val.describe() if val is not None and tuned.tuning else None,
        "refit": REFIT_RULE,
    }


def _builder(build: Callable, cfg: BaselinesConfig, options: BuildOptions) -> Callable:
    """``build(point, cfg, options)`` as a function of the point's settings."""
    return lambda **point: build(point, cfg, options)
