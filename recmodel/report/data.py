"""The report's numbers: ids to dense codes, metrics per model, intervals and paired tests.

Every model is judged on the same users, the users of ``test_targets``: a user without any
recommendation row of a model gets an empty list (zero on every ranking metric), never a skip.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recmodel.core.columns import Columns
from recmodel.core.config import EvalConfig
from recmodel.core.dataset import UserItems
from recmodel.evaluation.metrics import evaluate, popularity_percentile
from recmodel.evaluation.stats import bootstrap_ci, paired_bootstrap_diff
from recmodel.evaluation.topk import EMPTY

log = logging.getLogger(__name__)

ABSENT = -1  # dense code of an id that is not in the vocabulary
ALPHA = 0.05  # intervals cover 95%; tests have level 5%
HEARD = "heard_before"  # test_targets: the user played the track before the test window
TARGET_KINDS = ("repeat", "new")  # targets heard before the test window, and the others


@dataclass(frozen=True)
class EvalInputs:
    """Test users, targets and catalog in dense codes, shared by every model.

    Attributes:
        user_ids: ``[U]`` original ids of the test users, sorted; user code = position.
        item_ids: ``[N]`` original ids of the catalog; item code = position + 1 (0 = padding).
        targets: ``U`` rows of target item codes (duplicates kept; metrics collapse them).
        item_counts: int64 ``[N + 1]`` pre-test popularity counts indexed by item code.
        n_target_events: rows of ``test_targets``.
        n_targets: distinct (user, item) target pairs.
        kinds: ``repeat`` / ``new`` -> the targets of that kind only (same rows), when
            ``test_targets`` says which targets were heard before the test window.
    """

    user_ids: pa.Array
    item_ids: pa.Array
    targets: UserItems
    item_counts: np.ndarray
    n_target_events: int
    n_targets: int
    kinds: dict[str, UserItems] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


@dataclass(frozen=True)
class ModelEval:
    """One model's metrics on the test users.

    Attributes:
        summary: means of the per-user metrics, ``coverage@k`` and ``n_users``.
        per_user: metric -> float64 ``[U]`` aligned with :attr:`EvalInputs.user_ids`.
        rec_percentiles: float64 ``[R]`` popularity percentile of every filled top-k slot
            (k = the smallest cut-off) over all users.
        users_without_recs: test users with no recommendation row of this model.
        rows_outside_test: recommendation rows of users that are not test users (ignored).
        by_kind: ``repeat`` / ``new`` -> the same metrics on the users with targets of that
            kind, against those targets only (``summary`` and ``per_user``, as above).
    """

    summary: dict[str, float]
    per_user: dict[str, np.ndarray]
    rec_percentiles: np.ndarray
    users_without_recs: int
    rows_outside_test: int
    by_kind: dict[str, ModelEval] = field(default_factory=dict)


def prepare_inputs(test_targets: pa.Table, items: pa.Table) -> EvalInputs:
    """Dense codes for the test users and the catalog, and the targets in those codes."""
    item_ids = _column(items, Columns.ITEM, "items")
    if len(item_ids) == 0:
        raise ValueError("items is empty: the catalog needs at least one item")
    if len(pc.unique(item_ids)) != len(item_ids):
        raise ValueError("items repeats item_id values: the catalog needs one row per item")
    counts = np.zeros(len(item_ids) + 1, dtype=np.int64)
    counts[1:] = _column(items, Columns.COUNT, "items").fill_null(0).to_numpy(zero_copy_only=False)
    target_users = _column(test_targets, Columns.USER, "test_targets")
    if len(target_users) == 0:
        raise ValueError("test_targets is empty: there is no test user to judge models on")
    user_ids = pc.unique(target_users)
    user_ids = user_ids.take(pc.array_sort_indices(user_ids))  # order-independent bootstrap
    users = dense_codes(target_users, user_ids, "test_targets.user_id")  # [E]
    target_items = dense_codes(
        _column(test_targets, Columns.ITEM, "test_targets"), item_ids, "test_targets.item_id"
    )  # [E]
    _require_known(target_items, "test_targets", "item_id", "the catalog (items)")
    targets = _user_items(users, target_items + 1, len(user_ids))
    n_pairs = len(np.unique(users * (len(item_ids) + 1) + target_items + 1))
    kinds = {}
    if HEARD in test_targets.column_names:
        heard = test_targets.column(HEARD).to_numpy(zero_copy_only=False).astype(bool)
        for kind, rows in zip(TARGET_KINDS, (heard, ~heard), strict=True):
            kinds[kind] = _user_items(users[rows], target_items[rows] + 1, len(user_ids))
    return EvalInputs(user_ids, item_ids, targets, counts, len(users), n_pairs, kinds)


def evaluate_model(
    recommendations: pa.Table, model: str, inputs: EvalInputs, ks: tuple[int, ...]
) -> ModelEval:
    """Recompute one model's metrics from its rows of the long recommendations table."""
    recs, outside = recommendation_matrix(recommendations, model, inputs, max(ks))  # [U, K]
    try:
        result = evaluate(
            recs, inputs.targets, ks=ks, item_counts=inputs.item_counts, n_items=inputs.n_items
        )
    except ValueError as err:
        raise ValueError(f"recommendations of model {model!r}: {err}") from err
    if len(result.users) != inputs.n_users:  # every test user has a target by construction
        raise RuntimeError(f"{model}: {len(result.users)} of {inputs.n_users} users evaluated")
    top = recs[:, : min(ks)]  # [U, k]
    pct = popularity_percentile(inputs.item_counts, inputs.n_items)[top[top > 0]]  # [R]
    missing = int((recs <= 0).all(axis=1).sum())
    if missing:
        log.warning(
            "%s: %d of %d test users have no recommendation (counted as zero)",
            model,
            missing,
            inputs.n_users,
        )
    summary = {name: float(value) for name, value in result.summary.items()}
    by_kind = {kind: _kind_eval(recs, targets, inputs) for kind, targets in inputs.kinds.items()}
    return ModelEval(summary, result.per_user, pct, missing, outside, by_kind)


def _kind_eval(recs: np.ndarray, targets: UserItems, inputs: EvalInputs) -> ModelEval:
    """Metrics against one kind of target, over the users that have one."""
    result = evaluate(
        recs,
        targets,
        ks=(recs.shape[1],) if recs.shape[1] < 10 else (10, recs.shape[1]),
        item_counts=inputs.item_counts,
        n_items=inputs.n_items,
    )
    summary = {name: float(value) for name, value in result.summary.items()}
    return ModelEval(summary, result.per_user, np.zeros(0), 0, 0)


def recommendation_matrix(
    recommendations: pa.Table, model: str, inputs: EvalInputs, width: int
) -> tuple[np.ndarray, int]:
    """int64 ``[U, width]`` item codes by rank (:data:`EMPTY` where no row), rows outside test.

    Rows deeper than ``width`` are not evaluated and are dropped; rows of users outside the
    test set are counted and dropped.
    """
    rows = recommendations.filter(pc.equal(_model_column(recommendations), model))
    users = dense_codes(rows.column(Columns.USER), inputs.user_ids, "recommendations.user_id")
    items = dense_codes(rows.column(Columns.ITEM), inputs.item_ids, "recommendations.item_id")
    ranks = rows.column(Columns.RANK).to_numpy().astype(np.int64)  # [R]
    if ranks.size and ranks.min() < 1:
        raise ValueError(f"recommendations of {model!r} hold rank {ranks.min()}; rank 1 = best")
    outside = int((users == ABSENT).sum())
    keep = (users != ABSENT) & (ranks <= width)
    users, items, ranks = users[keep], items[keep], ranks[keep]
    _require_known(items, f"recommendations of {model!r}", "item_id", "the catalog (items)")
    slots = users * width + ranks - 1  # [R'] flat position in the matrix
    if len(np.unique(slots)) != len(slots):
        raise ValueError(f"recommendations of {model!r} give two items the same user and rank")
    recs = np.full(inputs.n_users * width, EMPTY, dtype=np.int64)
    recs[slots] = items + 1
    return recs.reshape(inputs.n_users, width), outside


def dense_codes(values: pa.ChunkedArray | pa.Array, vocab: pa.Array, what: str) -> np.ndarray:
    """int64 ``[len(values)]``: position of each value in ``vocab``, :data:`ABSENT` if missing.

    Values are cast to the vocabulary's type first (int32 vs int64, dictionary-encoded
    strings); ids that cannot be compared at all are an error naming the column.
    """
    if values.type != vocab.type:
        try:
            values = pc.cast(values, vocab.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            raise ValueError(
                f"{what} ({values.type}) cannot be matched with the ids of type {vocab.type}: {err}"
            ) from err
    codes = pc.index_in(values, value_set=vocab).fill_null(ABSENT)
    return codes.to_numpy(zero_copy_only=False).astype(np.int64)


def catalog_percentiles(inputs: EvalInputs) -> np.ndarray:
    """float64 ``[N]``: popularity percentile of every catalog item."""
    return popularity_percentile(inputs.item_counts, inputs.n_items)[1:]


def intervals(model: ModelEval, metrics: list[str], cfg: EvalConfig) -> dict[str, list[float]]:
    """Percentile-bootstrap interval ``[lo, hi]`` of each per-user metric's mean."""
    out = {}
    for metric in metrics:
        _, lo, hi = bootstrap_ci(
            model.per_user[metric], n_samples=cfg.bootstrap_samples, alpha=ALPHA, seed=cfg.seed
        )
        out[metric] = [lo, hi]
    return out


def compare(
    ref: ModelEval, other: ModelEval, metrics: list[str], cfg: EvalConfig
) -> dict[str, dict[str, Any]]:
    """Paired bootstrap of ``reference - other`` per metric (same users, same resamples)."""
    out = {}
    for metric in metrics:
        test = paired_bootstrap_diff(
            ref.per_user[metric],
            other.per_user[metric],
            n_samples=cfg.bootstrap_samples,
            alpha=ALPHA,
            seed=cfg.seed,
        )
        out[metric] = {
            "diff": test["mean_diff"],
            "lo": test["lo"],
            "hi": test["hi"],
            "significant": test["significant"],
            "p_value": test["p_value"],
        }
    return out


def winners(evals: dict[str, ModelEval], metrics: list[str]) -> dict[str, str]:
    """Highest value per metric; a tie goes to the model that comes first in ``evals``."""
    best_models = {}
    for metric in metrics:
        best, best_value = None, -math.inf
        for model, result in evals.items():
            value = result.summary.get(metric, math.nan)
            if value > best_value:  # NaN never wins
                best, best_value = model, value
        if best is not None:
            best_models[metric] = best
    return best_models


def _user_items(users: np.ndarray, items: np.ndarray, n_users: int) -> UserItems:
    """CSR rows of ``items`` grouped by ``users`` (input order kept within a user)."""
    order = np.argsort(users, kind="stable")
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=n_users), out=indptr[1:])
    return UserItems(indptr, items[order].astype(np.int32), np.zeros(len(order), np.int64))


def _column(table: pa.Table, name: str, table_name: str) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise ValueError(f"{table_name} has no column {name!r}; columns: {table.column_names}")
    column = table.column(name)
    if name != Columns.COUNT and column.null_count:
        raise ValueError(f"{table_name}.{name} holds {column.null_count} null values")
    return column


def _model_column(recommendations: pa.Table) -> pa.ChunkedArray:
    column = recommendations.column(Columns.MODEL)
    return column if pa.types.is_string(column.type) else pc.cast(column, pa.string())


def _require_known(codes: np.ndarray, table: str, column: str, vocab: str) -> None:
    unknown = int((codes == ABSENT).sum())
    if unknown:
        raise ValueError(f"{table}: {unknown} {column} values are not in {vocab}")
