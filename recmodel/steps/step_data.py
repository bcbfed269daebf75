"""What every model step loads and publishes: the dataset, the test set and a model's results.

Each model step runs in its own process (on its own machine under Kubernetes), so it reloads
the extracted tables here; a model's entry in the results carries its test metrics, as logged,
and the reference of its top-100 table.

The pretraining steps may leave the events on disk: when the run holds more than
``train.shard_events`` events they read them as user shards
(:mod:`recmodel.core.user_shards`), train one shard at a time and score the test users shard by
shard, so their memory follows a shard, not the log.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from recmodel.core.columns import Columns, Window
from recmodel.core.config import PipelineConfig
from recmodel.core.dataset import Dataset, UserItems
from recmodel.core.dataset_io import load_dataset
from recmodel.core.tables import AnyRef, local_path, read_table
from recmodel.core.user_shards import UserShards, concat_rows, open_user_shards
from recmodel.evaluation.metrics import evaluate
from recmodel.evaluation.testset import (
    REC_K,
    TestSet,
    build_test_set,
    recommendations_table,
    sample_test_users,
)
from recmodel.retriever.faults import inject_fault
from recmodel.retriever.train_state import STATE_DIR
from recmodel.steps.common import config_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepData:
    """What every model step loads: config, dataset, the test set and the id maps.

    ``dataset`` is a :class:`UserShards` (and ``test`` holds its users only) where the step
    asked for the events to stay on disk and they are more than one shard.
    """

    cfg: PipelineConfig
    dataset: Dataset | UserShards
    test: TestSet
    user_ids: pa.Array  # original id of each user_idx
    item_ids: pa.Array  # original id of each item_idx (entry 0 is padding)
    refs: dict  # the extracted tables' references


def load_step_data(
    config: dict, refs: dict[str, AnyRef], *, sharded: bool = False, world_size: int = 1
) -> StepData:
    """Load the extracted tables once per step and fix the test set.

    With ``sharded``, a run of more than ``train.shard_events`` events stays on disk: only the
    per-user and per-item counts are read, and the test users (the same as in memory); the
    users are cut into a multiple of ``world_size`` shards.
    """
    cfg = config_of(config)
    torch.manual_seed(cfg.train.seed)
    # Parallel branches share the machine: oversubscribed threads slow small ops many-fold.
    torch.set_num_threads(cfg.train.threads or max(1, (os.cpu_count() or 2) // 2))
    users = read_table(refs["users"], columns=[Columns.USER_IDX, Columns.USER])
    items = read_table(refs["items"], columns=[Columns.ITEM_IDX, Columns.ITEM])
    user_ids = users.sort_by(Columns.USER_IDX).column(Columns.USER).combine_chunks()
    item_col = items.sort_by(Columns.ITEM_IDX).column(Columns.ITEM).combine_chunks()
    item_ids = pa.concat_arrays([pa.nulls(1, item_col.type), item_col])  # index 0 = padding
    shards = training_shards(cfg, refs, world_size) if sharded else None
    if shards is not None:
        test_users = sample_test_users(shards.users_with_events(Window.TEST), cfg.eval)
        test = TestSet(test_users, None, None)
        return StepData(cfg, shards, test, user_ids, item_ids, refs)
    dataset = load_dataset(
        local_path(refs["events"]), local_path(refs["items"]), local_path(refs["users"])
    )
    return StepData(cfg, dataset, build_test_set(dataset, cfg.eval), user_ids, item_ids, refs)


def training_shards(cfg: PipelineConfig, refs: dict, world_size: int = 1) -> UserShards | None:
    """The run's events as user shards (at least one per rank), or None when they are no more
    than ``train.shard_events`` (or that is 0) and fit in memory."""
    events = local_path(refs["events"])
    limit = cfg.train.shard_events
    if limit <= 0 or pq.read_metadata(events).num_rows <= limit:
        return None
    return open_user_shards(
        events, local_path(refs["items"]), local_path(refs["users"]), limit, world_size
    )


def q_counts(q_ref: AnyRef, n_items: int) -> np.ndarray:
    """int64 ``[N + 1]`` counts of the Q table, indexed by item_idx."""
    table = read_table(q_ref, columns=[Columns.ITEM_IDX, Columns.COUNT])
    counts = np.zeros(n_items + 1, dtype=np.int64)
    counts[table.column(Columns.ITEM_IDX).to_numpy()] = table.column(Columns.COUNT).to_numpy()
    return counts


def model_result(
    data: StepData,
    name: str,
    items: np.ndarray,
    scores: np.ndarray,
    tables: Any,
    targets: UserItems | None = None,
    **info: Any,
) -> dict[str, Any]:
    """Publish a model's top-100 rows and summarize its test metrics.

    ``targets`` (rows aligned with the test users) default to the test set's.
    """
    table = recommendations_table(
        name, data.test.users, items, scores, data.user_ids, data.item_ids
    )
    ref = tables.write(table, f"recommendations_{name}")
    metrics = evaluate(
        items,
        data.test.targets if targets is None else targets,
        ks=data.cfg.eval.ks,
        item_counts=data.dataset.item_counts,
        n_items=data.dataset.n_items,
    )
    log.info(
        "%s: test ndcg@10=%.4f recall@100=%.4f",
        name,
        metrics.summary["ndcg@10"],
        metrics.summary.get("recall@100", float("nan")),
    )
    return {
        "status": "ok",
        "error": None,
        "recommendations": ref,
        "metrics": {k: float(v) for k, v in metrics.summary.items()},
        **info,
    }


def trained_result(data: StepData, name: str, result: Any, tables: Any, **info: Any) -> dict:
    """Recommend with a trained retriever (a ``TrainResult``) and publish its entry."""
    if isinstance(data.dataset, UserShards):
        items, scores, targets = _recommend_by_shard(result.model, data)
    else:
        test = data.test
        items, scores = _recommend(result.model, test.histories, test.users, data.cfg)
        targets = test.targets
    return model_result(
        data,
        name,
        items,
        scores,
        tables,
        targets,
        fit_seconds=result.seconds,
        model_size=int(sum(p.numel() for p in result.model.parameters())),
        history=result.history,
        best_epoch=result.best_epoch,
        **info,
    )


def _recommend(model: Any, histories: UserItems, users: np.ndarray, cfg: PipelineConfig):
    exclude = histories.take(users) if cfg.eval.filter_seen else None
    return model.recommend(
        histories, users, REC_K, exclude=exclude, chunk_items=cfg.eval.chunk_items
    )


def _recommend_by_shard(model: Any, data: StepData) -> tuple[np.ndarray, np.ndarray, UserItems]:
    """The test users' top-k and targets, reading one user shard at a time."""
    cfg = data.cfg
    return answer_by_part(
        data, lambda part, mine: _recommend(model, part.history(Window.TEST), mine, cfg)
    )


def answer_by_part(
    data: StepData, answer: Callable[[Dataset, np.ndarray], tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray, UserItems]:
    """``answer(part, rows)`` (a ``[r, k]`` top-k and its scores) for the test users of each part
    of the events in turn (one user shard, or the whole dataset in memory), and the users'
    test-window listens; rows in the order of ``data.test.users``, as in memory."""
    items, scores, targets = [], [], []
    for part, mine in data.dataset.parts_of(data.test.users):
        top, top_scores = answer(part, mine)
        items.append(top)
        scores.append(top_scores)
        targets.append(part.events_in(Window.TEST).take(mine))
    if not items:
        return np.zeros((0, REC_K), np.int64), np.zeros((0, REC_K), np.float32), concat_rows([])
    return np.concatenate(items), np.concatenate(scores), concat_rows(targets)


def checkpoint_of(result: Any, tables: Any, name: str) -> dict:
    """The checkpoint artifact of a ``TrainResult``: its weights stored as a safetensors file
    beside the run's tables, and a reference that carries the model config.

    Weights are megabytes to gigabytes: a file keeps them out of Metaflow's single-threaded
    pickling and out of the UI's artifact view; :func:`recmodel.core.files.load_checkpoint` (and
    ``load_artifact``) turn the reference back into ``{"safetensors": bytes, "model_config"}``.
    """
    return tables.write_checkpoint(result.checkpoint, result.model_config, name)


def state_dir(tables: Any) -> str | None:
    """Where a step keeps its training state (None for tables without a run root)."""
    root = getattr(tables, "root", None)
    return None if root is None else f"{root}/{STATE_DIR}"


def maybe_fail(stage: str, tables: Any) -> None:
    """A fault at the start of ``stage`` when $RECMODEL_FAIL_ONCE asks for one (tests)."""
    directory = state_dir(tables)
    if directory is not None:
        inject_fault(stage, "start", directory)
