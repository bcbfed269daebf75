"""Distillation requests: the ranker's scored candidates per request, and the retriever's view.

A request is one ``(user_idx, request_ts)`` group of the ``ranker_scores`` table (built-in or
imported). Requests of the held-out users (:func:`recmodel.ranker.splits.holdout_mask`, a
fixed :data:`HOLDOUT_SHARE` of users chosen by a hash of ``user_idx``) are never finetuned on,
and the built-in ranker is not trained on their labels: the distillation metrics
(:mod:`recmodel.distill.metrics`) are measured on them. :func:`pair_agreement` compares a
retriever's logits of the candidates (``Retriever.candidate_logits``, what it ranks by) with the
ranker's scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from recmodel.core.columns import Columns, Window
from recmodel.core.dataset import Dataset, UserItems
from recmodel.ranker.candidates import padded
from recmodel.ranker.splits import HOLDOUT_SHARE, holdout_mask
from recmodel.retriever.batches import last_items
from recmodel.retriever.model import Retriever

__all__ = [
    "HOLDOUT_SHARE",
    "Requests",
    "heldout_agreement",
    "holdout_mask",
    "pair_agreement",
    "request_targets",
    "requests_from_scores",
    "split_requests",
]

EVAL_BATCH = 256  # requests scored at once for the held-out agreement


@dataclass(frozen=True)
class Requests:
    """Scored candidates of each request, right-padded to the longest request.

    Attributes:
        users: int64 ``[R]``.
        request_ts: int64 ``[R]``.
        items: int64 ``[R, C]`` candidate ids (0 = padding).
        scores: float32 ``[R, C]`` ranker scores (0 at padding).
        mask: bool ``[R, C]``, True for real candidates.
    """

    users: np.ndarray
    request_ts: np.ndarray
    items: np.ndarray
    scores: np.ndarray
    mask: np.ndarray

    def __len__(self) -> int:
        return len(self.users)

    def take(self, rows: np.ndarray) -> Requests:
        return Requests(
            self.users[rows],
            self.request_ts[rows],
            self.items[rows],
            self.scores[rows],
            self.mask[rows],
        )


def requests_from_scores(table: pa.Table) -> Requests:
    """Group ``user_idx, item_idx, request_ts, score`` rows into requests (any row order)."""
    users = table[Columns.USER_IDX].to_numpy().astype(np.int64)
    ts = table[Columns.REQUEST_TS].to_numpy().astype(np.int64)
    items = table[Columns.ITEM_IDX].to_numpy().astype(np.int64)
    scores = table[Columns.SCORE].to_numpy().astype(np.float32)
    if not np.isfinite(scores).all():
        raise ValueError("ranker_scores holds NaN or infinite scores")
    order = np.lexsort((items, ts, users))
    users, ts, items, scores = users[order], ts[order], items[order], scores[order]
    new = np.r_[True, (users[1:] != users[:-1]) | (ts[1:] != ts[:-1])]  # first row of a request
    starts = np.flatnonzero(new)
    indptr = np.r_[starts, len(users)].astype(np.int64)
    return Requests(
        users=users[starts],
        request_ts=ts[starts],
        items=padded(indptr, items, 0),
        scores=padded(indptr, scores, 0.0),
        mask=padded(indptr, np.ones(len(items), dtype=bool), False),
    )


def split_requests(requests: Requests) -> tuple[Requests, Requests]:
    """``(finetune, held_out)`` requests, split by user (:func:`holdout_mask`)."""
    held = holdout_mask(requests.users)
    return requests.take(np.flatnonzero(~held)), requests.take(np.flatnonzero(held))


def request_targets(dataset: Dataset, requests: Requests) -> UserItems:
    """Row ``r``: the user's finetune-window listens at or after its request time."""
    events = dataset.events_in(Window.FINETUNE).take(requests.users)
    row = np.repeat(np.arange(len(requests)), events.lengths)
    keep = events.ts >= requests.request_ts[row]
    indptr = np.zeros(len(requests) + 1, dtype=np.int64)
    np.cumsum(np.bincount(row[keep], minlength=len(requests)), out=indptr[1:])
    return UserItems(indptr, events.items[keep], events.ts[keep])


def pair_agreement(
    z: torch.Tensor, r: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs the ranker orders (``r_i > r_j``, both valid) that ``z`` orders the same way.

    Args:
        z: ``[R, C]`` retriever logits.
        r: ``[R, C]`` ranker scores.
        mask: bool ``[R, C]`` valid candidates.

    Returns:
        ``(agreeing, pairs)`` as float32 0-dim tensors on the inputs' device: a tie in ``z``
        counts one half; ties in ``r`` make no pair.
    """
    valid = mask[:, :, None] & mask[:, None, :]  # [R, C, C]
    ordered = (r[:, :, None] > r[:, None, :]) & valid  # [R, C, C]: r_i > r_j
    dz = z[:, :, None] - z[:, None, :]  # [R, C, C]: z_i - z_j
    agree = torch.where(dz > 0, 1.0, torch.where(dz == 0, 0.5, 0.0))
    return (agree * ordered).sum(), ordered.sum(dtype=torch.float32)


@torch.no_grad()
def heldout_agreement(
    model: Retriever, histories: UserItems, requests: Requests, device: torch.device
) -> float:
    """Share of the ranker's ordered pairs that ``model`` orders the same way (NaN if none)."""
    was_training = model.training
    model.eval()
    agree, pairs = 0.0, 0
    try:
        for i in range(0, len(requests), EVAL_BATCH):
            batch = requests.take(np.arange(i, min(i + EVAL_BATCH, len(requests))))
            queries = torch.from_numpy(last_items(histories, batch.users, model.cfg.max_len))
            profile = model.profiles(histories, batch.users).to_torch(slice(None), device)
            items = torch.from_numpy(batch.items).to(device)
            _, logits = model.candidate_logits(queries.to(device), items, profile=profile)
            a, p = pair_agreement(
                logits.float(),
                torch.from_numpy(batch.scores).to(device),
                torch.from_numpy(batch.mask).to(device),
            )
            agree, pairs = agree + float(a), pairs + int(p)
    finally:
        model.train(was_training)
    return agree / pairs if pairs else math.nan
