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
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import torch

from recmodel.core.columns import Columns, Window
from recmodel.core.dataset import Dataset, UserItems
from recmodel.core.user_shards import UserShards, concat_rows
from recmodel.ranker.candidates import padded
from recmodel.ranker.splits import HOLDOUT_SHARE, check_windows, holdout_mask
from recmodel.retriever.batches import last_items
from recmodel.retriever.model import Retriever
from recmodel.retriever.profile import Profiles

__all__ = [
    "HOLDOUT_SHARE",
    "RequestInputs",
    "Requests",
    "heldout_agreement",
    "holdout_mask",
    "pair_agreement",
    "request_inputs",
    "request_parts",
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


@dataclass(frozen=True)
class RequestInputs:
    """What the retriever reads for each request, computed once (rows aligned with requests).

    Attributes:
        windows: int64 ``[R, T]`` the user's last ``max_len`` plays before the finetune window,
            left-padded: the query.
        profiles: the queries' long-term profiles (``[R, 0]`` without them).
        targets: the user's finetune-window listens at or after the request time.
    """

    windows: np.ndarray
    profiles: Profiles
    targets: UserItems

    def take(self, rows: np.ndarray) -> RequestInputs:
        profiles = Profiles(self.profiles.items[rows], self.profiles.features[rows])
        return RequestInputs(self.windows[rows], profiles, self.targets.take(rows))


def request_parts(
    source: Dataset | UserShards, requests: Requests
) -> Iterator[tuple[Dataset, int, Requests]]:
    """The requests (ordered by user, as :func:`requests_from_scores` orders them) with the part
    of the events that holds their users: one user shard at a time when ``source`` is the run's
    user shards, else the dataset itself.

    Yields:
        ``(part, first_user, local)``: the next requests in order (``local``), with their users
        numbered within ``part``, whose user ``u`` is the run's ``first_user + u``.
    """
    if np.any(np.diff(requests.users) < 0):
        raise ValueError("requests must be ordered by user")
    users = np.unique(requests.users)
    done = 0  # users of ``users`` already read
    for part, local in source.parts_of(users):
        mine = users[done : done + len(local)]  # the run-wide ids of ``local``
        done += len(local)
        lo = np.searchsorted(requests.users, mine[0], side="left")
        hi = np.searchsorted(requests.users, mine[-1], side="right")
        at = requests.take(np.arange(lo, hi))
        first_user = int(mine[0] - local[0])
        yield part, first_user, replace(at, users=at.users - first_user)
    if done != len(users):
        raise ValueError(f"{len(users) - done} request users are not in the events")


def request_inputs(
    source: Dataset | UserShards, requests: Requests, model: Retriever
) -> RequestInputs:
    """The :class:`RequestInputs` of ``requests`` (ordered by user), read part by part
    (:func:`request_parts`); checks every request's windows (:func:`check_windows`).

    Only the requests' users are read, and of them only what ``model`` looks at is kept: the
    step holds the windows and profiles, not the histories.
    """
    windows, items, features, targets = [], [], [], []
    for part, _, local in request_parts(source, requests):
        check_windows(part, local.users, local.request_ts)
        histories = part.history(Window.FINETUNE)
        windows.append(last_items(histories, local.users, model.cfg.max_len))
        profiles = model.profiles(histories, local.users)
        items.append(profiles.items)
        features.append(profiles.features)
        targets.append(request_targets(part, local))
    if not windows:
        size = model.cfg.profile_size if model.long_term is not None else 0
        return RequestInputs(
            np.zeros((0, model.cfg.max_len), np.int64), Profiles.empty(0, size), concat_rows([])
        )
    return RequestInputs(
        np.concatenate(windows),
        Profiles(np.concatenate(items), np.concatenate(features)),
        concat_rows(targets),
    )


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
    model: Retriever, inputs: RequestInputs, requests: Requests, device: torch.device
) -> float:
    """Share of the ranker's ordered pairs that ``model`` orders the same way (NaN if none);
    ``inputs`` are the requests' queries (:func:`request_inputs`)."""
    was_training = model.training
    model.eval()
    agree, pairs = 0.0, 0
    try:
        for i in range(0, len(requests), EVAL_BATCH):
            rows = np.arange(i, min(i + EVAL_BATCH, len(requests)))
            batch = requests.take(rows)
            queries = torch.from_numpy(inputs.windows[rows]).to(device)
            profile = inputs.profiles.to_torch(rows, device)
            items = torch.from_numpy(batch.items).to(device)
            _, logits = model.candidate_logits(queries, items, profile=profile)
            a, p = pair_agreement(
                logits.float(),
                torch.from_numpy(batch.scores).to(device),
                torch.from_numpy(batch.mask).to(device),
            )
            agree, pairs = agree + float(a), pairs + int(p)
    finally:
        model.train(was_training)
    return agree / pairs if pairs else math.nan
