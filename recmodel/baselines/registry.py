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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recmodel.baselines.als import ALS
from recmodel.baselines.base import Recommender
from recmodel.baselines.knn import ItemKNN, fit_bytes
from recmodel.baselines.plays import Plays, PlaySource, training_plays
from recmodel.baselines.simple import Popularity, UserPopular, UserRecent
from recmodel.baselines.tuning import REFIT_RULE, Axes, grid_points, tune, validation_requests
from recmodel.core.columns import Window
from recmodel.core.config import BaselinesConfig, memory_bytes
from recmodel.core.dataset import UserItems
from recmodel.core.user_shards import concat_rows

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
    # Why the model cannot fit these plays within the config's limits (None: it can).
    too_large: Callable[[Plays, BaselinesConfig, BuildOptions], str | None] = (
        lambda plays, cfg, opts: None
    )


def _itemknn_too_large(plays: Plays, cfg: BaselinesConfig, opts: BuildOptions) -> str | None:
    limit = memory_bytes(cfg.itemknn_memory_limit) or 0
    threads = opts.num_threads or os.cpu_count() or 1
    neighbours = max(cfg.itemknn_neighbours)
    pairs = plays.n_pairs
    need = fit_bytes(plays.n_items, pairs, neighbours, threads)
    if need <= limit:
        return None
    return (
        f"skipped: the similarity of {plays.n_items:,} tracks x {neighbours} neighbours and the "
        f"play matrix of {pairs:,} pairs need {need / 2**30:.1f} GiB, over "
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


def run_baselines(
    baselines: Sequence[Baseline],
    cfg: BaselinesConfig,
    options: BuildOptions,
    source: PlaySource,
    test_users: np.ndarray,
    k: int,
    filter_seen: bool,
) -> tuple[dict[str, dict[str, Any]], UserItems]:
    """Tune, refit and recommend every baseline for ``test_users``, timing each; never raise.

    ``source`` is the in-memory :class:`Dataset` or the run's user shards; it is read in parts
    three times, and the step holds at most one :class:`Plays` (the training events as play
    counts) beside one part's events: the plays before the validation window, on which every
    model's settings are scored (:func:`tune`); the plays before the test window, on which the
    best settings are refit; then the test users' histories and targets, one part at a time,
    which every fitted model answers before the next part is read.

    Returns:
        ``(outputs, targets)``. ``outputs[name]`` on success is ``{"name", "status": "ok",
        "items" int64 [U, k], "scores" float32 [U, k], "fit_seconds", "recommend_seconds",
        "model_size", "params", "tuning", "tuned_on", "refit"}`` (rows aligned with
        ``test_users``); on failure ``{"name", "status": "failed", "error": "Type: message",
        "traceback"}`` (also logged), so that a failing baseline shows up in the report instead
        of vanishing; a model too large for its limits is ``{"name", "status": "skipped",
        "error": "skipped: why"}``. ``targets``: the test users' test-window listens, rows
        aligned with ``test_users``.
    """
    outputs: dict[str, dict[str, Any]] = {}
    runs = [_Run(b, b.axes(cfg), _builder(b.build, cfg, options)) for b in baselines]
    val = validation_requests(source, cfg.tune_users, cfg.seed)
    for stage in ("tune", "refit"):
        plays = training_plays(source, Window.VAL if stage == "tune" else Window.TEST)
        for run in runs:
            if run.name in outputs:
                continue  # skipped or failed at the stage before
            reason = run.baseline.too_large(plays, cfg, options)
            if reason:
                log.warning("baseline %s %s", run.name, reason)
                outputs[run.name] = {"name": run.name, "status": "skipped", "error": reason}
                continue
            start = time.perf_counter()
            try:
                if stage == "tune":
                    run.params, run.tuning = tune(run.build, run.axes, plays, val, cfg.search)
                else:
                    run.model = run.build(**run.params).fit_plays(plays)
            except Exception as exc:  # a failing baseline is reported, not fatal to the others
                outputs[run.name] = _failure(run.name, exc)
            run.fit_seconds += time.perf_counter() - start
        del plays
    fitted = [run for run in runs if run.name not in outputs]
    targets = _recommend_by_part(fitted, outputs, source, test_users, k, filter_seen)
    for run in fitted:
        if run.name in outputs:
            continue
        log.info(
            "baseline %s %s: fit %.2fs, recommend %.2fs for %d users",
            run.name,
            run.params,
            run.fit_seconds,
            run.recommend_seconds,
            len(test_users),
        )
        outputs[run.name] = {
            "name": run.name,
            "status": "ok",
            "items": run.items,
            "scores": run.scores,
            "fit_seconds": run.fit_seconds,
            "recommend_seconds": run.recommend_seconds,
            "model_size": int(run.model.model_size),
            "params": run.params,
            "tuning": run.tuning,
            "tuned_on": val.describe() if val is not None and run.tuning else None,
            "refit": REFIT_RULE,
        }
    return {run.name: outputs[run.name] for run in runs}, targets


@dataclass
class _Run:
    """One baseline through the stages of :func:`run_baselines`."""

    baseline: Baseline
    axes: Axes
    build: Callable[..., Recommender]
    params: dict[str, Any] = field(default_factory=dict)
    tuning: list[dict[str, Any]] = field(default_factory=list)
    model: Any = None  # the refit Recommender
    fit_seconds: float = 0.0
    recommend_seconds: float = 0.0
    items: Any = field(default_factory=list)  # [U, k] once every part is answered
    scores: Any = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.baseline.name


def _failure(name: str, exc: Exception) -> dict[str, Any]:
    log.error("baseline %s failed", name, exc_info=exc)
    return {
        "name": name,
        "status": "failed",
        "error": f"{type(exc).__name__}: {exc}",
        "traceback": "".join(traceback.format_exception(exc)),
    }


def _recommend_by_part(
    runs: list[_Run],
    outputs: dict[str, dict[str, Any]],
    source: PlaySource,
    users: np.ndarray,
    k: int,
    filter_seen: bool,
) -> UserItems:
    """Each fitted run's top-``k`` for ``users``, one part of the users at a time (a failure
    goes to ``outputs``); returns the users' test-window listens. Rows follow ``users``."""
    users = np.asarray(users, dtype=np.int64)
    order = np.argsort(users, kind="stable")  # parts hold ascending users
    now = source.end_before(Window.TEST)  # every test request's time, whatever part it is in
    targets = []
    for part, rows in source.parts_of(users[order]):
        histories = part.history(Window.TEST)
        targets.append(part.events_in(Window.TEST).take(rows))
        for run in runs:
            if run.name in outputs:
                continue
            start = time.perf_counter()
            try:
                items, scores = run.model.recommend(
                    histories, rows, k, filter_seen=filter_seen, now=now
                )
            except Exception as exc:  # as in fitting: reported, not fatal to the others
                outputs[run.name] = _failure(run.name, exc)
                continue
            run.items.append(items)
            run.scores.append(scores)
            run.recommend_seconds += time.perf_counter() - start
    back = np.argsort(order)  # row i of the parts' order belongs to users[order[i]]
    for run in runs:
        if run.name not in outputs:
            run.items = _rows(run.items, (0, k), np.int64)[back]
            run.scores = _rows(run.scores, (0, k), np.float32)[back]
    return concat_rows(targets).take(back)


def _rows(parts: list[np.ndarray], empty: tuple[int, int], dtype: type) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(empty, dtype=dtype)


def _builder(build: Callable, cfg: BaselinesConfig, options: BuildOptions) -> Callable:
    """``build(point, cfg, options)`` as a function of the point's settings."""
    return lambda **point: build(point, cfg, options)
