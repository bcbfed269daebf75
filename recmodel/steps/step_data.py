"""What every model step loads and publishes: the dataset, the test set and a model's results.

Each model step runs in its own process (on its own machine under Kubernetes), so it reloads
the extracted tables here; a model's entry in the results carries its test metrics, as logged,
and the reference of its top-100 table.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from recmodel.core.columns import Columns
from recmodel.core.config import PipelineConfig
from recmodel.core.dataset import Dataset
from recmodel.core.dataset_io import load_dataset
from recmodel.core.tables import AnyRef, local_path, read_table
from recmodel.evaluation.metrics import evaluate
from recmodel.evaluation.testset import REC_K, TestSet, build_test_set, recommendations_table
from recmodel.retriever.faults import inject_fault
from recmodel.retriever.train_state import STATE_DIR
from recmodel.steps.common import config_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepData:
    """What every model step loads: config, dataset, the test set and the id maps."""

    cfg: PipelineConfig
    dataset: Dataset
    test: TestSet
    user_ids: pa.Array  # original id of each user_idx
    item_ids: pa.Array  # original id of each item_idx (entry 0 is padding)
    refs: dict  # the extracted tables' references


def load_step_data(config: dict, refs: dict[str, AnyRef]) -> StepData:
    """Load the extracted tables once per step and fix the test set."""
    cfg = config_of(config)
    torch.manual_seed(cfg.train.seed)
    # Parallel branches share the machine: oversubscribed threads slow small ops many-fold.
    torch.set_num_threads(cfg.train.threads or max(1, (os.cpu_count() or 2) // 2))
    dataset = load_dataset(
        local_path(refs["events"]), local_path(refs["items"]), local_path(refs["users"])
    )
    users = read_table(refs["users"], columns=[Columns.USER_IDX, Columns.USER])
    items = read_table(refs["items"], columns=[Columns.ITEM_IDX, Columns.ITEM])
    user_ids = users.sort_by(Columns.USER_IDX).column(Columns.USER).combine_chunks()
    item_col = items.sort_by(Columns.ITEM_IDX).column(Columns.ITEM).combine_chunks()
    item_ids = pa.concat_arrays([pa.nulls(1, item_col.type), item_col])  # index 0 = padding
    return StepData(cfg, dataset, build_test_set(dataset, cfg.eval), user_ids, item_ids, refs)


def q_counts(q_ref: AnyRef, n_items: int) -> np.ndarray:
    """int64 ``[N + 1]`` counts of the Q table, indexed by item_idx."""
    table = read_table(q_ref, columns=[Columns.ITEM_IDX, Columns.COUNT])
    counts = np.zeros(n_items + 1, dtype=np.int64)
    counts[table.column(Columns.ITEM_IDX).to_numpy()] = table.column(Columns.COUNT).to_numpy()
    return counts


def model_result(
    data: StepData, name: str, items: np.ndarray, scores: np.ndarray, tables: Any, **info: Any
) -> dict[str, Any]:
    """Publish a model's top-100 rows and summarize its test metrics."""
    table = recommendations_table(
        name, data.test.users, items, scores, data.user_ids, data.item_ids
    )
    ref = tables.write(table, f"recommendations_{name}")
    metrics = evaluate(
        items,
        data.test.targets,
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
    exclude = data.test.histories.take(data.test.users) if data.cfg.eval.filter_seen else None
    items, scores = result.model.recommend(
        data.test.histories,
        data.test.users,
        REC_K,
        exclude=exclude,
        chunk_items=data.cfg.eval.chunk_items,
    )
    return model_result(
        data,
        name,
        items,
        scores,
        tables,
        fit_seconds=result.seconds,
        model_size=int(sum(p.numel() for p in result.model.parameters())),
        history=result.history,
        best_epoch=result.best_epoch,
        **info,
    )


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
