"""Held-out quality of the ranker: AUC, candidate NDCG@10 against simple orders, importances.

Every figure is computed on out-of-fold scores (each row scored by the model that did not see
its user), so it estimates how the ranker does on users it was not fit on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.inspection import permutation_importance
from sklearn.metrics import roc_auc_score

from recmodel.core.dataset import UserItems
from recmodel.evaluation.metrics import evaluate
from recmodel.ranker.candidates import Candidates, order_within_requests, padded
from recmodel.ranker.features import FEATURES

NDCG_K = 10
IMPORTANCE_ROWS = 5_000  # held-out rows sampled for permutation importance (its cost)
IMPORTANCE_REPEATS = 2


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC, NaN when only one class is present."""
    return float(roc_auc_score(labels, scores)) if np.unique(labels).size == 2 else float("nan")


def ranker_quality(
    cands: Candidates,
    labels: np.ndarray,
    oof: np.ndarray,
    folds: np.ndarray,
    item_counts: np.ndarray,
) -> dict[str, Any]:
    """Held-out quality: AUC (all rows, per fold) and NDCG@10 of three candidate orders.

    The orders: the ranker's out-of-fold scores, the retriever's (popular-only candidates last,
    in popularity order) and pretrain popularity.

    NDCG@10 is computed per request against its positive candidates (ideal DCG over
    ``min(#positives, 10)``), averaged over requests with at least one positive candidate.
    """
    per_fold = [
        _auc(labels[folds == k], oof[folds == k]) for k in range(int(folds.max(initial=-1)) + 1)
    ]
    positives_per_request = np.bincount(cands.row_request[labels], minlength=cands.n_requests)
    orders = {
        "ranker": oof,
        "retriever": -cands.retriever_rank.astype(np.float64),
        "popularity": np.asarray(item_counts, dtype=np.float64)[cands.items],
    }
    return {
        "auc": _auc(labels, oof),
        "auc_per_fold": per_fold,
        "n_requests": int(cands.n_requests),
        "n_candidates": int(cands.n_rows),
        "positive_rate": float(labels.mean()) if len(labels) else float("nan"),
        "requests_with_positive": int((positives_per_request > 0).sum()),
        f"ndcg@{NDCG_K}": {name: candidate_ndcg(cands, labels, s) for name, s in orders.items()},
    }


def candidate_ndcg(cands: Candidates, labels: np.ndarray, scores: np.ndarray) -> float:
    """Mean NDCG@10 of each request's candidates sorted by ``scores`` vs its positives."""
    order = order_within_requests(cands.indptr, scores)
    recs = padded(cands.indptr, cands.items[order].astype(np.int64), -1, width=NDCG_K)
    pos = labels[order]
    lengths = np.bincount(cands.row_request[pos], minlength=cands.n_requests)
    indptr = np.zeros(cands.n_requests + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    targets = UserItems(indptr, cands.items[order][pos], np.zeros(int(pos.sum()), np.int64))
    n_items = int(max(cands.items.max(initial=1), 1))
    result = evaluate(
        recs, targets, ks=(NDCG_K,), item_counts=np.zeros(n_items + 1, np.int64), n_items=n_items
    )
    return float(result.summary[f"ndcg@{NDCG_K}"])


def feature_importance(
    model: Any, feats: np.ndarray, labels: np.ndarray, folds: np.ndarray, seed: int
) -> dict[str, float]:
    """Permutation importance (drop in held-out AUC) of fold 0's model on a sample of fold 0.

    Only the features the models use (``model.columns``) have an importance.
    """
    rows = np.flatnonzero(folds == 0)
    if np.unique(labels[rows]).size < 2:
        return {}
    rng = np.random.default_rng(seed)
    rows = rng.choice(rows, size=min(len(rows), IMPORTANCE_ROWS), replace=False)
    if np.unique(labels[rows]).size < 2:
        return {}
    result = permutation_importance(
        model.models[0],
        feats[rows][:, model.columns],
        labels[rows],
        scoring="roc_auc",
        n_repeats=IMPORTANCE_REPEATS,
        random_state=seed,
    )
    names = [FEATURES[j] for j in model.columns]
    return {name: float(v) for name, v in zip(names, result.importances_mean, strict=True)}
