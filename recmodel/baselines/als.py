"""Implicit-feedback matrix factorization (implicit's ALS)."""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp
import torch

from recmodel.baselines.base import EMPTY, Recommender, implicit_scope
from recmodel.baselines.plays import Plays, play_matrix
from recmodel.core.dataset import UserItems
from recmodel.evaluation.topk import topk_chunked

log = logging.getLogger(__name__)


def confidence(plays: sp.csr_matrix, alpha: float) -> sp.csr_matrix:
    """Hu, Koren & Volinsky confidence ``1 + alpha * plays`` on the observed cells.

    implicit reads the matrix values as the confidence itself (its own ``alpha`` only scales
    them), so the ``1 +`` is added here and implicit's ``alpha`` stays 1.
    """
    conf = plays.astype(np.float32, copy=True)
    conf.data = 1.0 + alpha * conf.data
    return conf


INT32_MAX = 2**31 - 1


def for_gpu(matrix: sp.csr_matrix) -> tuple[sp.csr_matrix | None, str]:
    """``matrix`` as implicit's GPU ALS takes it (int32 ``indptr`` and ``indices``), or None
    and why not: more than 2**31 - 1 entries, rows or columns cannot be indexed in int32.
    scipy gives int64 indices to a matrix built from int64 arrays even when they fit."""
    too_big = matrix.nnz > INT32_MAX or max(matrix.shape) > INT32_MAX
    if too_big:
        return None, (
            f"implicit's GPU ALS indexes the play matrix in int32; this one has "
            f"{matrix.nnz:,} entries and shape {matrix.shape}"
        )
    if matrix.indptr.dtype == np.int32 and matrix.indices.dtype == np.int32:
        return matrix, ""
    narrow = sp.csr_matrix(matrix.shape, dtype=matrix.dtype)
    narrow.data = matrix.data
    narrow.indices = matrix.indices.astype(np.int32)
    narrow.indptr = matrix.indptr.astype(np.int32)
    return narrow, ""


class ALS(Recommender):
    """Weighted matrix factorization of play counts, fit by alternating least squares.

    One setting of ``factors``, ``regularization`` and ``alpha``; the grid over them is searched
    on the validation window by :mod:`recmodel.baselines.tuning`. At recommend time a user's
    factors are solved from the query history against the fixed item factors (implicit's
    ``recalculate_user``), so users and plays after the training window are handled the same
    way as at validation.

    Args:
        factors, regularization, alpha: the setting (confidence = 1 + alpha * plays).
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
        factors: int = 64,
        regularization: float = 0.01,
        alpha: float = 10.0,
        iterations: int = 15,
        seed: int = 0,
        num_threads: int = 0,
        use_gpu: bool | None = None,
        device: str = "cpu",
        chunk_items: int = 65_536,
    ):
        super().__init__()
        if iterations < 1:
            raise ValueError(f"ALS iterations must be >= 1, got {iterations}")
        self.factors, self.regularization, self.alpha = factors, regularization, alpha
        self.iterations = iterations
        self.seed = seed
        self.num_threads = num_threads
        self.use_gpu = use_gpu
        self.device = device
        self.chunk_items = chunk_items
        self._model = None  # implicit CPU model
        self._item_vectors = None  # its item factors on ``device``, copied once per fit

    @property
    def model_size(self) -> int:
        if self._model is None:
            return 0
        return int(self._model.item_factors.size + self._model.user_factors.size)

    def _fit(self, plays: Plays) -> None:
        self._model = self._fit_point(plays.matrix, self.factors, self.regularization, self.alpha)
        self._item_vectors = None

    def _fit_point(self, plays: sp.csr_matrix, factors: int, reg: float, alpha: float):
        """One implicit ALS fit; returns a CPU model (GPU factors are copied back)."""
        from implicit.als import AlternatingLeastSquares
        from implicit.gpu import HAS_CUDA

        use_gpu = HAS_CUDA if self.use_gpu is None else self.use_gpu
        weights = confidence(plays, alpha)
        if use_gpu:
            weights, why_not = for_gpu(weights)
            if weights is None:
                log.warning("ALS fits on the CPU: %s", why_not)
                weights, use_gpu = confidence(plays, alpha), False
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
            model.fit(weights, show_progress=False)
        return model.to_cpu() if use_gpu else model

    def _candidates(
        self, query: UserItems, k: int, filter_seen: bool, now: int
    ) -> tuple[np.ndarray, np.ndarray]:
        conf = confidence(play_matrix(query, self.n_items), self.alpha)  # [U, N + 1]
        with implicit_scope():
            user_vecs = self._model.recalculate_user(np.arange(query.n_users), conf)  # [U, F]
        if self._item_vectors is None:  # requests come in runs: copy the catalogue once
            self._item_vectors = torch.from_numpy(self._model.item_factors).to(self.device)
        items, scores = topk_chunked(
            torch.from_numpy(np.ascontiguousarray(user_vecs)).to(self.device),
            self._item_vectors,  # [N + 1, F]
            k,
            chunk_items=self.chunk_items,
            exclude=query if filter_seen else None,
        )
        # A user without history has zero factors and scores every item 0: leave the whole
        # row to the popularity fill rather than to item order.
        cold = query.lengths == 0
        items[cold], scores[cold] = EMPTY, -np.inf
        return items, scores
