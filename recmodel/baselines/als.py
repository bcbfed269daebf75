"""Implicit-feedback matrix factorization (implicit's ALS), tuned on the validation window."""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from recmodel.baselines.base import EMPTY, Recommender, implicit_scope, play_matrix
from recmodel.core.columns import Window
from recmodel.core.dataset import Dataset, UserItems
from recmodel.evaluation.metrics import evaluate
from recmodel.evaluation.topk import topk_chunked

log = logging.getLogger(__name__)

TUNE_K = 10  # the grid is ranked by validation NDCG@TUNE_K
TUNE_METRIC = f"ndcg@{TUNE_K}"


@dataclass(frozen=True)
class _Validation:
    """Validation requests: queries before the validation window, targets inside it."""

    histories: UserItems  # rows: all users
    users: np.ndarray  # int64 [V] users with a target and a history
    targets: UserItems  # rows aligned with ``users``


def confidence(plays: sp.csr_matrix, alpha: float) -> sp.csr_matrix:
    """Hu, Koren & Volinsky confidence ``1 + alpha * plays`` on the observed cells.

    implicit reads the matrix values as the confidence itself (its own ``alpha`` only scales
    them), so the ``1 +`` is added here and implicit's ``alpha`` stays 1.
    """
    conf = plays.astype(np.float32, copy=True)
    conf.data = 1.0 + alpha * conf.data
    return conf


class ALS(Recommender):
    """Weighted matrix factorization of play counts, fit by alternating least squares.

    Each point of the grid ``factors x regularization x alpha`` is fit on the training window
    and scored by NDCG@10 on the validation window; the best one is kept and every point is
    recorded in :attr:`tuning`. At recommend time a user's factors are solved from the query
    history against the fixed item factors (implicit's ``recalculate_user``), so users and
    plays after the training window are handled the same way as at validation.

    Args:
        factors, regularization, alpha: grid values.
        iterations: ALS sweeps per fit.
        seed: implicit's ``random_state`` (initial factors).
        num_threads: implicit's threads (0 = every core).
        use_gpu: fit with implicit's CUDA build; ``None`` = when implicit has CUDA.
        device: torch device of the full-catalog top-k scan.
        chunk_items: catalog chunk of the top-k scan (bounds memory).
    """

    name = "als"

    def __init__(
        self,
        factors: tuple[int, ...] = (64,),
        regularization: tuple[float, ...] = (0.01,),
        alpha: tuple[float, ...] = (10.0,),
        iterations: int = 15,
        seed: int = 0,
        num_threads: int = 0,
        use_gpu: bool | None = None,
        device: str = "cpu",
        chunk_items: int = 65_536,
    ):
        super().__init__()
        self.grid = list(itertools.product(factors, regularization, alpha))
        if not self.grid:
            raise ValueError("ALS grid is empty: factors, regularization and alpha need values")
        if iterations < 1:
            raise ValueError(f"ALS iterations must be >= 1, got {iterations}")
        self.iterations = iterations
        self.seed = seed
        self.num_threads = num_threads
        self.use_gpu = use_gpu
        self.device = device
        self.chunk_items = chunk_items
        self.tuning: list[dict] = []  # one entry per grid point, in grid order
        self.params: dict = {}  # the chosen grid point
        self._model = None  # implicit CPU model of the chosen point
        self._alpha = 0.0

    @property
    def model_size(self) -> int:
        if self._model is None:
            return 0
        return int(self._model.item_factors.size + self._model.user_factors.size)

    def _fit(self, dataset: Dataset, train: UserItems) -> None:
        plays = play_matrix(train, self.n_items)  # [U, N + 1]
        val = _validation(dataset)
        if val is None and len(self.grid) > 1:
            log.warning("ALS: no validation users; keeping the first grid point untuned")
        self.tuning, best = [], None
        for factors, reg, alpha in self.grid:
            start = time.perf_counter()
            self._model, self._alpha = self._fit_point(plays, factors, reg, alpha), alpha
            fit_seconds = time.perf_counter() - start
            score = self._validate(val) if val is not None else math.nan
            point = {"factors": factors, "regularization": reg, "alpha": alpha}
            self.tuning.append({**point, TUNE_METRIC: score, "fit_seconds": fit_seconds})
            log.info("ALS %s: validation %s=%.4f (%.1fs)", point, TUNE_METRIC, score, fit_seconds)
            # Ties keep the earlier point; without validation (all NaN) the first one stays.
            if best is None or score > best[0]:
                best = (score, point, self._model)
        _, self.params, self._model = best
        self._alpha = self.params["alpha"]

    def _fit_point(self, plays: sp.csr_matrix, factors: int, reg: float, alpha: float):
        """One implicit ALS fit; returns a CPU model (GPU factors are copied back)."""
        from implicit.als import AlternatingLeastSquares
        from implicit.gpu import HAS_CUDA

        use_gpu = HAS_CUDA if self.use_gpu is None else self.use_gpu
        with implicit_scope():
            model = AlternatingLeastSquares(
                factors=factors,
                regularization=reg,
                alpha=1.0,  # confidence() already holds 1 + alpha * plays
                iterations=self.iterations,
                random_state=self.seed,
                use_gpu=use_gpu,
                **({} if use_gpu else {"num_threads": self.num_threads}),
            )
            model.fit(confidence(plays, alpha), show_progress=False)
        return model.to_cpu() if use_gpu else model

    def _validate(self, val: _Validation) -> float:
        k = min(TUNE_K, self.n_items)
        items, _ = self.recommend(val.histories, val.users, k)
        # A catalog smaller than TUNE_K leaves empty slots, which evaluate() never counts.
        items = np.pad(items, ((0, 0), (0, TUNE_K - k)), constant_values=EMPTY)
        result = evaluate(
            items, val.targets, ks=(TUNE_K,), item_counts=self.item_counts, n_items=self.n_items
        )
        return float(result.summary[TUNE_METRIC])

    def _candidates(
        self, query: UserItems, k: int, filter_seen: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        conf = confidence(play_matrix(query, self.n_items), self._alpha)  # [U, N + 1]
        with implicit_scope():
            user_vecs = self._model.recalculate_user(np.arange(query.n_users), conf)  # [U, F]
        items, scores = topk_chunked(
            torch.from_numpy(np.ascontiguousarray(user_vecs)).to(self.device),
            torch.from_numpy(self._model.item_factors).to(self.device),  # [N + 1, F]
            k,
            chunk_items=self.chunk_items,
            exclude=query if filter_seen else None,
        )
        # A user without history has zero factors and scores every item 0: leave the whole
        # row to the popularity fill rather than to item order.
        cold = query.lengths == 0
        items[cold], scores[cold] = EMPTY, -np.inf
        return items, scores


def _validation(dataset: Dataset) -> _Validation | None:
    """The validation requests, or None when the validation window has no usable user."""
    users = dataset.users_with_events(Window.VAL, min_history=1)
    if users.size == 0:
        return None
    targets = dataset.events_in(Window.VAL).take(users)
    return _Validation(dataset.history(Window.VAL), users, targets)
