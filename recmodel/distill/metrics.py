"""Distillation metrics: how much of the ranker a retriever absorbed (``report["distillation"]``).

Measured on held-out requests: the requests of the users that finetuning never trains on
(a fixed :data:`recmodel.distill.requests.HOLDOUT_SHARE` of users, by a hash of ``user_idx``), so
the pretrained and the finetuned retriever are compared on the same unseen requests. Per
retriever:

- ``pair_agreement``: share of the pairs the ranker orders (``r_i > r_j`` among a request's
  scored candidates) that the retriever's logits order the same way (a tie counts one half).
- ``ranker_top10_in_top100``: share of the ranker's top-10 candidates found in the retriever's
  full-catalog top-100, per request (over ``min(10, candidates)``), averaged.
- ``retriever_ndcg@10`` and ``two_stage_ndcg@10``: NDCG@10 against the request's finetune-window
  listens of the retriever's own top-K order, and of that top-K re-ranked by the ranker (only
  with the built-in ranker, which can score any candidate). ``K`` is ``ranker.n_candidates``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from recmodel.core.columns import Window
from recmodel.core.dataset import Dataset, UserItems
from recmodel.core.user_shards import UserShards
from recmodel.distill.requests import (
    HOLDOUT_SHARE,
    Requests,
    heldout_agreement,
    request_inputs,
    request_parts,
    requests_from_scores,
    split_requests,
)
from recmodel.evaluation.metrics import evaluate
from recmodel.ranker.features import run_recent_counts
from recmodel.ranker.model import Ranker
from recmodel.retriever.model import Retriever

logger = logging.getLogger(__name__)

RANKER_TOP = 10  # the ranker's head whose recall by the retriever is measured
RETRIEVER_TOP = 100  # the retriever's list it is looked for in
NDCG_K = 10


def distillation_metrics(
    retrievers: dict[str, Retriever],
    dataset: Dataset | UserShards,
    ranker_scores: pa.Table,
    *,
    ranker: Ranker | None,
    n_candidates: int,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """The metrics above for each retriever (e.g. ``{"pretrain": m0, "finetune": m1}``).

    Args:
        retrievers: models by name; they are moved to ``device``.
        dataset: the events, in memory or the run's user shards (read one at a time).
        ranker_scores: ``user_idx, item_idx, request_ts, score`` (built-in or imported).
        ranker: the built-in ranker for the two-stage NDCG, or None (imported scores).
        n_candidates: the retriever's K handed to the ranker.
        device: where the retrievers run.

    Returns:
        ``{"holdout_share", "n_requests", "n_users", <name>: {metric: value}}``.
    """
    _, held = split_requests(requests_from_scores(ranker_scores))
    out: dict[str, Any] = {
        "holdout_share": HOLDOUT_SHARE,
        "n_requests": len(held),
        "n_users": len(np.unique(held.users)),
    }
    if len(held) == 0:
        logger.warning("distillation metrics: no held-out request")
        return out
    device = torch.device(device)
    # The ranker's recent popularity counts every user (a shard holds some of them).
    recent = None if ranker is None else run_recent_counts(dataset, Window.FINETUNE)
    inputs, shape = None, None
    for name, model in retrievers.items():
        model.to(device)
        if inputs is None or model.cfg != shape:  # the queries a model of this shape reads
            inputs, shape = request_inputs(dataset, held, model), model.cfg
        out[name] = {
            "pair_agreement": heldout_agreement(model, inputs, held, device),
            **_list_metrics(model, dataset, held, inputs.targets, (ranker, recent), n_candidates),
        }
        logger.info("distillation, %s: %s", name, out[name])
    return out


def _list_metrics(
    model: Retriever,
    dataset: Dataset | UserShards,
    held: Requests,
    targets: UserItems,
    ranking: tuple[Ranker | None, np.ndarray | None],
    n_candidates: int,
) -> dict[str, float]:
    ranker, recent = ranking
    retrieved, reranked = [], []
    for part, first_user, local in request_parts(dataset, held):
        histories = part.history(Window.FINETUNE)
        ids, _ = model.recommend(histories, local.users, max(RETRIEVER_TOP, n_candidates))
        retrieved.append(ids)  # [r, K']
        if ranker is not None:
            topk = ids[:, :n_candidates]  # [r, K]
            scores = ranker.score_topk(part, local.users, topk, first_user, recent)  # [r, K]
            reranked.append(rerank(topk, scores))
    ids = np.concatenate(retrieved)  # [R, K'] in the order of ``held``
    out = {
        f"ranker_top{RANKER_TOP}_in_top{RETRIEVER_TOP}": top_overlap(held, ids[:, :RETRIEVER_TOP]),
        f"retriever_ndcg@{NDCG_K}": _ndcg(ids[:, :n_candidates], targets, dataset),
        f"two_stage_ndcg@{NDCG_K}": math.nan,
    }
    if ranker is not None:
        out[f"two_stage_ndcg@{NDCG_K}"] = _ndcg(np.concatenate(reranked), targets, dataset)
    return out


def ranker_top(held: Requests, k: int = RANKER_TOP) -> np.ndarray:
    """int64 ``[R, k]``: each request's ``k`` best candidates by ranker score (0 = none)."""
    scores = np.where(held.mask, held.scores, -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # ties: candidate order
    top = np.take_along_axis(held.items, order, axis=1)
    return np.where(np.take_along_axis(held.mask, order, axis=1), top, 0)


def top_overlap(held: Requests, retrieved: np.ndarray) -> float:
    """Mean share of each request's ranker top-10 found in ``retrieved [R, K]``."""
    top = ranker_top(held)  # [R, 10]
    found = (top[:, :, None] == retrieved[:, None, :]).any(axis=2) & (top > 0)  # [R, 10]
    size = (top > 0).sum(axis=1)
    valid = size > 0
    return float((found.sum(axis=1)[valid] / size[valid]).mean()) if valid.any() else math.nan


def rerank(items: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``items [R, K]`` sorted per row by descending ``scores`` (NaN last, ties keep order)."""
    key = np.where(np.isnan(scores), np.inf, -scores)
    return np.take_along_axis(items, np.argsort(key, axis=1, kind="stable"), axis=1)


def _ndcg(recs: np.ndarray, targets: UserItems, dataset: Dataset) -> float:
    if recs.shape[1] < NDCG_K:  # a catalog smaller than 10: pad with empty slots
        recs = np.pad(recs, ((0, 0), (0, NDCG_K - recs.shape[1])), constant_values=-1)
    result = evaluate(
        recs, targets, ks=(NDCG_K,), item_counts=dataset.item_counts, n_items=dataset.n_items
    )
    return float(result.summary[f"ndcg@{NDCG_K}"])
