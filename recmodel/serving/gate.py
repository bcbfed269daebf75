"""The champion's served retriever, scored on a candidate run's own test week.

A champion's metric on its own test week says nothing about a candidate's week: seasonality,
a holiday, a release or a logging change moves every model's metric. So the champion is
scored here on the candidate's test users, from their histories, and ranked as serving ranks
(:data:`recmodel.serving.export.SERVING_RECIPE`):

- **Its model.** Its serving export, or its checkpoint when the export cannot be read
  (:func:`recmodel.serving.served.load_served`).
- **Its catalog.** Tracks are matched by original ``item_id``
  (:mod:`recmodel.serving.catalog`). A listener's window keeps the last
  ``max_len`` tracks the champion knows, and its long-term profile the known plays before them
  (the others are dropped from its input); it ranks only
  tracks that are in both catalogs: a track of the candidate's catalog that the champion does
  not know gets no score from it, and the targets on such tracks are unreachable for it.
- **Listeners it cannot embed** (no known track in their history) get the most played tracks of
  the training window that it knows, as the baselines fill rows they cannot rank.

The result is a long recommendations table in the candidate's original ids, judged by the same
functions as the report (:mod:`recmodel.report.data`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from recmodel.core.columns import Columns
from recmodel.core.dataset import UserItems
from recmodel.evaluation.testset import recommendations_table
from recmodel.evaluation.topk import EMPTY, topk_chunked
from recmodel.retriever.batches import PAD, last_items
from recmodel.retriever.profile import Profiles
from recmodel.serving.catalog import index_map, remap_histories
from recmodel.serving.served import ModelUnavailable, ServedModel

CHAMPION_MODEL = "champion"  # model name of the champion's rows in its recommendations table
BATCH_USERS = 1_024  # listeners encoded and ranked at once


@dataclass(frozen=True)
class CandidateWeek:
    """What both models are judged on: the candidate run's test users, queries and targets.

    Attributes:
        targets: ``user_id``, ``item_id``: the listen+ events of the test window.
        items: ``item_idx``, ``item_id``, ``count``: the candidate's catalog.
        user_ids: ``[U]`` original ids of the test users.
        histories: ``U`` rows aligned with ``user_ids``: every event before the test window,
            as the candidate's ``item_idx``, in time order.
        popular: int64 ``[N]`` the candidate's tracks by training-window plays, most first.
        filter_seen: never recommend a track of the listener's history.
    """

    targets: pa.Table
    items: pa.Table
    user_ids: pa.Array
    histories: UserItems
    popular: np.ndarray
    filter_seen: bool = False


def served_top_k(
    model: ServedModel,
    histories: UserItems,
    allowed: np.ndarray,
    k: int,
    filter_seen: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of the ``allowed`` tracks for each listener, ranked by the serving recipe.

    Args:
        model: the served retriever.
        histories: ``U`` non-empty rows of its ``item_idx`` in time order: the window is the
            last ``max_len`` of them, the long-term profile the plays before (a track that is
            not allowed informs the query but is never returned).
        allowed: int64 ``[S]`` its ``item_idx`` that may be recommended, sorted and unique.
        k: tracks per listener.
        filter_seen: never return a track of the listener's history; as in
            :meth:`Retriever.recommend`, no bonus can then apply.

    Returns:
        ``(ids int64 [U, k], scores float32 [U, k])``: its ``item_idx``, best first;
        :data:`EMPTY` where fewer than ``k`` tracks are eligible.
    """
    windows = last_items(histories, np.arange(histories.n_users), model.max_len)  # [U, T]
    exclude = histories if filter_seen else None
    profiles = model.profiles(histories)  # [U, F]
    lookup = np.r_[PAD, allowed]  # position in the allowed catalog -> item_idx
    vectors = torch.from_numpy(model.item_vectors[lookup])  # [S + 1, D], row 0 padding
    position = np.zeros(model.n_items + 1, dtype=np.int64)
    position[allowed] = np.arange(1, len(allowed) + 1)
    is_allowed = torch.from_numpy(position > PAD)  # [N + 1]
    rescore = (model.repeat_aware or model.profile_size > 0) and exclude is None
    out_ids, out_scores = [], []
    with torch.no_grad():
        for start in range(0, len(windows), BATCH_USERS):
            rows = np.arange(start, min(start + BATCH_USERS, len(windows)))
            window = torch.from_numpy(windows[rows])  # [b, T]
            queries = model.encoder(window).float()  # [b, D]
            # Excluded tracks as positions in the allowed catalog (others are never ranked).
            excluded = None if exclude is None else remap_histories(exclude.take(rows), position)
            # The bonuses lift window and profile tracks only.
            width = k + windows.shape[1] + model.profile_size if rescore else k
            pos, scores = topk_chunked(queries, vectors, width, exclude=excluded)  # [b, width]
            ids = np.where(pos > PAD, lookup[np.maximum(pos, PAD)], EMPTY)
            if rescore:
                ids, scores = _rescore(model, window, ids, k, is_allowed, profiles, rows)
            out_ids.append(ids)
            out_scores.append(scores)
    empty = np.zeros((0, k))
    return (
        np.concatenate(out_ids or [empty]).astype(np.int64),
        np.concatenate(out_scores or [empty]).astype(np.float32),
    )


def _rescore(
    model: ServedModel,
    window: torch.Tensor,
    ids: np.ndarray,
    k: int,
    is_allowed: torch.Tensor,
    profiles: Profiles,
    rows: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of ``ids [b, C']`` plus the window's and the profile's allowed tracks by
    ``score`` (with the bonuses)."""
    own = [window, torch.from_numpy(profiles.items[rows])]  # [b, T], [b, F]
    cand = torch.cat([torch.from_numpy(ids).clamp(min=PAD), *own], dim=1)  # [b, C]
    logits = model.score(window, cand, profiles, rows).float()  # [b, C]
    ordered, order = torch.sort(cand, dim=1)
    duplicate = torch.zeros_like(cand, dtype=torch.bool)
    duplicate[:, 1:] = ordered[:, 1:] == ordered[:, :-1]  # keep one copy of each track
    masked = torch.zeros_like(duplicate).scatter(1, order, duplicate) | ~is_allowed[cand]
    top, at = torch.topk(logits.masked_fill(masked, float("-inf")), min(k, cand.shape[1]), dim=1)
    top_ids = torch.gather(cand, 1, at).masked_fill(torch.isinf(top), EMPTY)
    return top_ids.numpy(), top.numpy()


def champion_recommendations(
    model: ServedModel, week: CandidateWeek, k: int
) -> tuple[pa.Table, dict[str, int]]:
    """The champion's top-``k`` for every test user, and what it could not reach.

    Returns:
        ``(table, reach)``: the long table ``(model, user_id, item_id, score, rank)`` in the
        candidate's original ids (model :data:`CHAMPION_MODEL`), and the counts
        ``unknown_tracks`` (candidate tracks the champion does not know), ``fallback_users``
        (listeners without a known track, given popular tracks) and ``unreachable_targets``
        (distinct target pairs on unknown tracks).

    Raises:
        ModelUnavailable: the catalogs share no track (or no id type), or the champion's
            encoder cannot rank these listeners.
    """
    try:
        to_champion = index_map(model.item_ids, week.items)  # [N + 1] its item_idx, 0 unknown
    except ValueError as exc:  # track ids of another type: no track can match
        raise ModelUnavailable(str(exc)) from exc
    shared = np.flatnonzero(to_champion > PAD)  # [S] candidate item_idx it knows
    if len(shared) == 0:
        raise ModelUnavailable("the champion knows none of this run's tracks")
    known = remap_histories(week.histories, to_champion)
    embeddable = known.lengths > 0  # [U] rows the champion can encode
    ids = np.empty((len(week.user_ids), k), dtype=np.int64)  # [U, k] candidate item_idx
    scores = np.empty((len(week.user_ids), k), dtype=np.float32)
    ids[embeddable], scores[embeddable] = _ranked_by_champion(
        model, known.take(np.flatnonzero(embeddable)), to_champion, shared, k, week.filter_seen
    )
    ids[~embeddable], scores[~embeddable] = _popular_known(week.popular, to_champion, k)
    users = np.arange(len(week.user_ids), dtype=np.int64)
    table = recommendations_table(
        CHAMPION_MODEL, users, ids, scores, week.user_ids, _ids_by_index(week.items)
    )
    reach = {
        "unknown_tracks": int(len(to_champion) - 1 - len(shared)),
        "fallback_users": int((~embeddable).sum()),
        "unreachable_targets": unreachable_targets(week.targets, model.item_ids),
    }
    return table, reach


def _ranked_by_champion(
    model: ServedModel,
    known: UserItems,
    to_champion: np.ndarray,
    shared: np.ndarray,
    k: int,
    filter_seen: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """``[E, k]`` candidate ``item_idx`` (EMPTY past the shared tracks) and scores.

    Args:
        known: ``E`` non-empty histories in the champion's ``item_idx``.
        to_champion: ``[N + 1]`` the champion's ``item_idx`` of each candidate track.
        shared: ``[S]`` candidate ``item_idx`` the champion knows.
    """
    to_candidate = np.zeros(model.n_items + 1, dtype=np.int64)
    to_candidate[to_champion[shared]] = shared
    try:
        top, scores = served_top_k(model, known, np.sort(to_champion[shared]), k, filter_seen)
    except (RuntimeError, ValueError) as exc:  # a query encoder this torch cannot run, NaN vectors
        raise ModelUnavailable(f"it cannot rank this run's listeners: {exc}") from exc
    return np.where(top > PAD, to_candidate[np.maximum(top, PAD)], EMPTY), scores


def _popular_known(
    popular: np.ndarray, to_champion: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """``[k]`` the most played tracks the champion knows (``EMPTY`` past them), with scores."""
    known = popular[to_champion[popular] > PAD][:k]
    ids = np.full(k, EMPTY, dtype=np.int64)
    ids[: len(known)] = known
    scores = -np.arange(1, k + 1, dtype=np.float32)  # decreasing by popularity rank
    return ids, scores


def _ids_by_index(items: pa.Table) -> pa.Array:
    """Original id of each ``item_idx`` (entry 0, padding, is null)."""
    ordered = items.sort_by(Columns.ITEM_IDX).column(Columns.ITEM).combine_chunks()
    return pa.concat_arrays([pa.nulls(1, ordered.type), ordered])


def unreachable_targets(targets: pa.Table, champion_ids: pa.Table) -> int:
    """Distinct ``(user_id, item_id)`` target pairs on tracks the champion does not know."""
    known = pc.is_in(targets.column(Columns.ITEM), value_set=champion_ids.column(Columns.ITEM))
    unknown = targets.filter(pc.invert(known)).select([Columns.USER, Columns.ITEM])
    return unknown.group_by([Columns.USER, Columns.ITEM]).aggregate([]).num_rows
