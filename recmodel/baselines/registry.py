"""The classic baselines behind one ``fit / recommend`` interface, and a runner that reports them.

Models (names as in the report):

* ``popularity``: the most played tracks of the training window.
* ``user_popular``: each listener's own most replayed tracks, then popularity.
* ``itemknn``: item-to-item collaborative filtering (cosine or BM25, implicit).
* ``als``: implicit ALS on play-count confidence, tuned on the validation window.

Every model is fit on the pretrain window only (``Dataset.train()``) and scores a request from
its query history, so the same code serves validation and test requests.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from recmodel.baselines.als import ALS
from recmodel.baselines.base import Recommender
from recmodel.baselines.knn import ItemKNN
from recmodel.baselines.simple import Popularity, UserPopular
from recmodel.core.config import BaselinesConfig
from recmodel.core.dataset import Dataset, UserItems

__all__ = [
    "ALS",
    "BASELINES",
    "BuildOptions",
    "ItemKNN",
    "Popularity",
    "Recommender",
    "UserPopular",
    "build_baselines",
    "run_baseline",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildOptions:
    """Runtime choices that are not model hyperparameters (made once at the entry point)."""

    num_threads: int = 0  # implicit's threads (0 = every core)
    device: str = "cpu"  # torch device of ALS's full-catalog top-k
    chunk_items: int = 65_536  # catalog chunk of that top-k (EvalConfig.chunk_items)


def _itemknn(cfg: BaselinesConfig, opts: BuildOptions) -> Recommender:
    return ItemKNN(cfg.itemknn_neighbours, cfg.itemknn_weighting, num_threads=opts.num_threads)


def _als(cfg: BaselinesConfig, opts: BuildOptions) -> Recommender:
    return ALS(
        factors=cfg.als_factors,
        regularization=cfg.als_regularization,
        alpha=cfg.als_alpha,
        iterations=cfg.als_iterations,
        seed=cfg.seed,
        num_threads=opts.num_threads,
        device=opts.device,
        chunk_items=opts.chunk_items,
    )


BASELINES: dict[str, Callable[[BaselinesConfig, BuildOptions], Recommender]] = {
    "popularity": lambda cfg, opts: Popularity(),
    "user_popular": lambda cfg, opts: UserPopular(),
    "itemknn": _itemknn,
    "als": _als,
}
"""Model name (as in the report) -> factory from the config."""


def build_baselines(
    cfg: BaselinesConfig,
    names: Sequence[str] | None = None,
    options: BuildOptions | None = None,
) -> list[Recommender]:
    """Instantiate (unfitted) baselines from the config.

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
    return [BASELINES[name](cfg, options) for name in names]


def run_baseline(
    model: Recommender,
    dataset: Dataset,
    test_users: np.ndarray,
    histories: UserItems,
    k: int,
    filter_seen: bool,
) -> dict[str, Any]:
    """Fit a model, recommend for the test users and time both; never raise.

    Args:
        model: an unfitted model.
        dataset: fit on ``dataset.train()`` (and the validation window for tuning).
        test_users: int64 ``[U]`` rows of ``histories`` to recommend for.
        histories: query histories of all users.
        k: items per user.
        filter_seen: drop items of the user's history.

    Returns:
        On success ``{"name", "status": "ok", "items" int64 [U, k], "scores" float32 [U, k],
        "fit_seconds", "recommend_seconds", "model_size", "tuning"}``; on failure
        ``{"name", "status": "failed", "error": "Type: message", "traceback"}`` (also logged),
        so that a failing baseline shows up in the report instead of vanishing.
    """
    name = getattr(model, "name", type(model).__name__)
    try:
        start = time.perf_counter()
        model.fit(dataset)
        fit_seconds = time.perf_counter() - start
        start = time.perf_counter()
        items, scores = model.recommend(histories, test_users, k, filter_seen=filter_seen)
        recommend_seconds = time.perf_counter() - start
    except Exception as exc:  # a failing baseline is reported, not fatal to the others
        log.exception("baseline %s failed", name)
        return {
            "name": name,
            "status": "failed",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }
    log.info(
        "baseline %s: fit %.2fs, recommend %.2fs for %d users",
        name,
        fit_seconds,
        recommend_seconds,
        len(test_users),
    )
    return {
        "name": name,
        "status": "ok",
        "items": items,
        "scores": scores,
        "fit_seconds": fit_seconds,
        "recommend_seconds": recommend_seconds,
        "model_size": int(model.model_size),
        "tuning": list(getattr(model, "tuning", [])),
    }
