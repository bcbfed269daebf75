"""The built-in ranker: cross-fitted gradient boosting over retrieval candidates.

Requests are (user, time) points of the finetune window: each user with events in it and history
before it, at its first event there. Candidates come from the pretrained retriever (trained on
the pretrain window only) plus the most popular tracks; features are described in
:mod:`recmodel.ranker.features`; the label is "the user played the candidate (listen+) in the
finetune window".

Cross-fitting. Users are split into ``n_folds`` folds by a deterministic hash of ``user_idx``;
model ``k`` is fit on the rows of every fold but ``k`` and scores only fold ``k``. So the score
that finetuning distills for a request comes from a model that never saw that user's labels,
and nothing is read from the validation or test windows (:func:`check_windows` enforces it at
run time). Scores of different folds come from different models; they are compared only within
a request, which never spans two folds. The users held out for the distillation metrics
(:func:`recmodel.ranker.splits.holdout_mask`) are scored but never trained on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa

from recmodel.core.columns import Columns, Window
from recmodel.core.config import RankerConfig
from recmodel.core.dataset import Dataset
from recmodel.core.sql import SqlRunner, connect
from recmodel.core.user_shards import UserShards
from recmodel.evaluation.topk import EMPTY
from recmodel.ranker.candidates import (
    Candidates,
    candidate_labels,
    candidates_from_topk,
    concat_candidates,
    finetune_requests,
    order_within_requests,
    own_tracks,
    padded,
    popular_items,
    relabel_candidates,
)
from recmodel.ranker.crossfit import CrossFitted, cross_fit, gbm_threads, make_classifier
from recmodel.ranker.feature_rows import FeatureRows
from recmodel.ranker.features import FEATURES, candidate_features, run_recent_counts
from recmodel.ranker.quality import IMPORTANCE_ROWS, feature_importance, ranker_quality
from recmodel.ranker.splits import check_windows, holdout_mask

logger = logging.getLogger(__name__)

FOLD = "fold"
LABEL = "label"


@dataclass
class Ranker:
    """A fitted cross-fitted ranker that can re-rank any retriever's candidates.

    Attributes:
        model: the fold models.
        base: the candidates it was trained on (their retriever score and rank are the
            pretrained retriever's; see :func:`recmodel.ranker.candidates.relabel_candidates`).
        n_retrieved: the retriever's K in training.
    """

    model: CrossFitted
    base: Candidates
    n_retrieved: int

    def score_topk(
        self,
        dataset: Dataset,
        users: np.ndarray,
        items: np.ndarray,
        first_user: int = 0,
        recent_counts: np.ndarray | None = None,
    ) -> np.ndarray:
        """float64 ``[R, K]`` scores of ``items [R, K]`` for users' requests (NaN at ids <= 0).

        Every user must have a request among the base candidates (its request time is reused).
        ``dataset`` may be a part of the run's users (a user shard): ``users`` are numbered
        within it, user ``u`` being the run's ``first_user + u``, and ``recent_counts`` are
        the run's (:func:`recmodel.ranker.features.run_recent_counts` before the finetune
        window).
        """
        run_users = np.asarray(users, dtype=np.int64) + first_user
        at = np.minimum(np.searchsorted(self.base.users, run_users), self.base.n_requests - 1)
        if self.base.n_requests == 0 or np.any(self.base.users[at] != run_users):
            raise KeyError("score_topk: some users have no request in the ranker's candidates")
        cands = relabel_candidates(
            self.base, run_users, self.base.request_ts[at], items, dataset.n_items, self.n_retrieved
        )
        history = dataset.history(Window.FINETUNE)
        local = replace(cands, users=run_users - first_user)  # the rows of ``history``
        feats = candidate_features(
            local, history, dataset.items, dataset.item_counts, recent_counts=recent_counts
        )
        out = np.full(items.shape, np.nan)
        out[items > 0] = self.model.score(feats, cands.row_users)  # rows: valid ids, row-major
        return out

    def rank(
        self,
        dataset: Dataset,
        retriever: Any,
        users: np.ndarray,
        cfg: RankerConfig,
        window: int,
        k: int,
        recent_counts: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The two-stage system as served: ``retriever``'s candidates re-ranked by the ranker.

        The requests are ``users`` at their first event in ``window``, with every event before
        the window as history (the protocol's query); candidates come from the three sources
        of training (the retriever's top-K, the user's own tracks, popular tracks), their
        retriever features from ``retriever`` itself. ``dataset`` may be one user shard, with
        the run's ``recent_counts`` (:func:`recmodel.ranker.features.run_recent_counts`
        before ``window``).

        Returns:
            ``(items int64 [U, k], scores float64 [U, k])`` best first; rows with fewer than
            ``k`` candidates end in ``EMPTY`` slots (score ``-inf``).
        """
        users = np.asarray(users, dtype=np.int64)
        request_ts = dataset.request_ts(window)[users]
        history = dataset.history(window)
        ids, scores = retriever.recommend(history, users, cfg.n_candidates)
        popular = popular_items(dataset.item_counts, cfg.n_popular_candidates)
        own = own_tracks(history, users, request_ts, cfg.n_own_candidates, cfg.own_tau_days)
        cands = candidates_from_topk(
            users, request_ts, np.asarray(ids), np.asarray(scores), popular, own
        )
        feats = candidate_features(
            cands, history, dataset.items, dataset.item_counts, recent_counts=recent_counts
        )
        score = self.model.score_new(feats)
        order = order_within_requests(cands.indptr, score)  # best first within each request
        items = padded(cands.indptr, cands.items[order].astype(np.int64), EMPTY, width=k)
        ranked = padded(cands.indptr, score[order], -np.inf, width=k)
        return items[:, :k], ranked[:, :k]


@dataclass
class RankerResult:
    """What :func:`build_ranker_scores` produced.

    Attributes:
        scores: ``user_idx, item_idx, request_ts, score, fold, label`` per candidate.
        quality: held-out AUC, NDCG@10 of ranker vs retriever order, importances, sizes.
        features: float32 ``[N, F]`` every candidate row's features (:data:`FEATURES`); None
            over user shards, whose rows were read from a file removed once the boosters fit.
        ranker: the fitted ranker (for end-to-end evaluation).
        queries: per executed SQL file ``{"file", "sql", "params", "rows", "seconds"}`` (the
            shape of extraction's records, for the ``sql_queries`` artifact).
    """

    scores: pa.Table
    quality: dict[str, Any]
    features: np.ndarray | None
    ranker: Ranker
    queries: list[dict[str, Any]]

    @property
    def candidates(self) -> pa.Table:
        """Every candidate row with its features, label, fold and score (built on request)."""
        if self.features is None:
            raise ValueError("the features of user shards are not kept: no candidates table")
        return _with_features(self.scores, self.features)


def build_ranker_scores(
    dataset: Dataset | UserShards,
    retriever: Any,
    cfg: RankerConfig,
    *,
    device: Any = None,
    runner: SqlRunner | None = None,
    spill_dir: str | None = None,
) -> RankerResult:
    """Candidates, features, cross-fitted ranker and its out-of-fold scores.

    Over user shards the candidates, their features and labels are built one shard at a time
    (the retriever and the feature SQL see one shard's users; the recent popularity is the
    run's); the feature rows go to a file in ``spill_dir`` (the system's temporary directory
    when None), which the boosters read back by rows. The rows and every figure are those of
    the events in memory.

    Args:
        dataset: the events, in memory or the run's user shards.
        retriever: the pretrained retriever (``recommend(histories, users, k)``); it is moved to
            ``device`` when it has ``.to``.
        cfg: ranker settings.
        device: where the retriever scores the catalog.
        runner: runs and records the feature SQL (a new connection when None).
        spill_dir: where the feature rows of user shards are written.
    """
    runner = SqlRunner(connect()) if runner is None else runner
    recent = run_recent_counts(dataset, Window.FINETUNE)  # the run's, for every shard
    on_disk = isinstance(dataset, UserShards)
    with FeatureRows(len(FEATURES), on_disk=on_disk, directory=spill_dir) as rows:
        parts, part_labels = [], []
        for part, first_user in dataset.parts():
            cands = retrieve_candidates(part, retriever, cfg, device)
            history = part.history(Window.FINETUNE)
            rows.append(
                candidate_features(cands, history, part.items, part.item_counts, runner, recent)
            )
            part_labels.append(
                candidate_labels(cands, part.events_in(Window.FINETUNE), part.n_items)
            )
            parts.append(replace(cands, users=cands.users + first_user))  # the run's users
        cands, labels = concat_candidates(parts), np.concatenate(part_labels)
        result = _fit_ranker(cands, labels, rows.array(), dataset.item_counts, cfg, runner)
    # The file of the shards' rows is gone with the with-block: keep no map of it.
    return replace(result, features=None) if on_disk else result


def _fit_ranker(
    cands: Candidates,
    labels: np.ndarray,
    feats: np.ndarray,
    item_counts: np.ndarray,
    cfg: RankerConfig,
    runner: SqlRunner,
) -> RankerResult:
    """Cross-fit the boosters on the candidates' rows; their scores, quality and ranker."""
    # Held-out users' labels reach no model: the distillation metrics stay clean of them.
    trainable = ~holdout_mask(cands.row_users)
    model, oof = cross_fit(
        feats,
        labels,
        cands.row_users,
        cfg.n_folds,
        cfg.seed,
        lambda: make_classifier(cfg),
        trainable,
        excluded=excluded_features(cfg),
        max_rows=cfg.max_train_rows,
    )
    folds = model.folds(cands.row_users)
    quality = ranker_quality(cands, labels, oof, folds, item_counts)
    with gbm_threads(min(len(labels), IMPORTANCE_ROWS)):  # it predicts on a sample
        quality["importance"] = feature_importance(model, feats, labels, folds, cfg.seed)
    quality["fit_rows"] = {
        "max_train_rows": cfg.max_train_rows,
        "folds": model.fit_rows[:-1],
        "serving": model.fit_rows[-1],
        "candidates": cands.n_rows,
    }
    quality["features_used"] = [FEATURES[j] for j in model.columns]
    quality["features_dropped"] = {FEATURES[j]: why for j, why in model.dropped.items()}
    if model.dropped:
        logger.info("ranker features left out: %s", quality["features_dropped"])
    logger.info(
        "ranker: %d requests, %d candidates, held-out AUC %.4f, NDCG@10 %.4f (retriever %.4f)",
        cands.n_requests,
        cands.n_rows,
        quality["auc"],
        quality["ndcg@10"]["ranker"],
        quality["ndcg@10"]["retriever"],
    )
    table = scores_table(cands, oof, folds, labels)
    ranker = Ranker(model, cands, cfg.n_candidates)
    return RankerResult(table, quality, feats, ranker, runner.records)


def _with_features(table: pa.Table, feats: np.ndarray) -> pa.Table:
    """``table`` plus one column per feature (``float32``; ``retriever_rank`` as ``int32``)."""
    for j, name in enumerate(FEATURES):
        column = feats[:, j].astype(np.int32) if name == "retriever_rank" else feats[:, j]
        table = table.append_column(name, pa.array(column))
    return table


RETRIEVER_FEATURES = ("retriever_score", "retriever_rank")


def excluded_features(cfg: RankerConfig) -> dict[int, str]:
    """The retriever's own score and rank, unless ``cfg.retriever_features`` keeps them."""
    if cfg.retriever_features:
        return {}
    why = "ranker.retriever_features = false: served candidates come from another retriever"
    return {FEATURES.index(name): why for name in RETRIEVER_FEATURES}


def retrieve_candidates(
    dataset: Dataset, retriever: Any, cfg: RankerConfig, device: Any = None
) -> Candidates:
    """The finetune-window requests' candidates, after checking their windows."""
    users, request_ts = finetune_requests(dataset)
    check_windows(dataset, users, request_ts)
    if device is not None and hasattr(retriever, "to"):
        retriever.to(device)
    history = dataset.history(Window.FINETUNE)
    ids, scores = retriever.recommend(history, users, cfg.n_candidates)  # [R, K] each
    popular = popular_items(dataset.item_counts, cfg.n_popular_candidates)
    own = own_tracks(history, users, request_ts, cfg.n_own_candidates, cfg.own_tau_days)
    return candidates_from_topk(
        users, request_ts, np.asarray(ids), np.asarray(scores), popular, own
    )


def scores_table(
    cands: Candidates, scores: np.ndarray, folds: np.ndarray, labels: np.ndarray
) -> pa.Table:
    """The materialized ``ranker_scores`` table in dense ids (the caller maps to original ids)."""
    return pa.table(
        {
            Columns.USER_IDX: pa.array(cands.row_users, pa.int64()),
            Columns.ITEM_IDX: pa.array(cands.items, pa.int32()),
            Columns.REQUEST_TS: pa.array(cands.request_ts[cands.row_request], pa.int64()),
            Columns.SCORE: pa.array(scores, pa.float64()),
            FOLD: pa.array(folds, pa.int8()),
            LABEL: pa.array(labels, pa.bool_()),
        }
    )
