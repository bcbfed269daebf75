"""Step logic of the first-stage model steps: pretraining, baselines and the join."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from recmodel.columns import Columns
from recmodel.config import PipelineConfig, from_dict
from recmodel.data import Dataset
from recmodel.dataset_io import load_dataset
from recmodel.evaluation import REC_K, TestSet, build_test_set, recommendations_table
from recmodel.live_card import TrainingCard
from recmodel.metrics import evaluate
from recmodel.tables import TableRef, local_path, read_table

log = logging.getLogger(__name__)

TRANSFORMER_LOGQ = {"sasrec_pretrain": None, "sasrec_no_logq": "none"}  # None = preset's mode


@dataclass(frozen=True)
class StepData:
    """What every model step loads: config, dataset, the test set and the id maps."""

    cfg: PipelineConfig
    dataset: Dataset
    test: TestSet
    user_ids: pa.Array  # original id of each user_idx
    item_ids: pa.Array  # original id of each item_idx (entry 0 is padding)
    refs: dict  # the extracted tables' references


def load_step_data(config: dict, refs: dict[str, TableRef]) -> StepData:
    """Load the extracted tables once per step and fix the test set."""
    cfg = from_dict(config, name=config.get("name", "custom"))
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


def q_counts(q_ref: TableRef, n_items: int) -> np.ndarray:
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
    items, scores = result.model.recommend(
        data.test.histories,
        data.test.users,
        REC_K,
        exclude=_exclude(data),
        chunk_items=data.cfg.eval.chunk_items,
    )
    return model_result(
        data,
        name,
        items,
        scores,
        tables,
        fit_seconds=result.seconds,
        model_size=_n_params(result.model),
        history=result.history,
        best_epoch=result.best_epoch,
        **info,
    )


def checkpoint_of(result: Any) -> dict:
    """The checkpoint artifact of a ``TrainResult``: safetensors bytes and the model config."""
    return {"safetensors": result.checkpoint, "model_config": result.model_config}


def _exclude(data: StepData):
    return data.test.histories.take(data.test.users) if data.cfg.eval.filter_seen else None


def _n_params(model: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


CHECKPOINT_OF = {"sasrec_pretrain": "pretrain_checkpoint", "sasrec_no_logq": "no_logq_checkpoint"}
STEP_OF = {"sasrec_pretrain": "pretrain", "sasrec_no_logq": "pretrain_no_logq"}  # flow steps


def _state_dir(tables: Any) -> str | None:
    """Where a step keeps its training state (None for tables without a run root)."""
    from recmodel.train_state import STATE_DIR

    root = getattr(tables, "root", None)
    return None if root is None else f"{root}/{STATE_DIR}"


def _state_store(tables: Any, name: str):
    """Durable training state of model ``name``: a retry of the step continues from it."""
    from recmodel.train_state import TrainStateStore, checkpoint_every

    state_dir = _state_dir(tables)
    if state_dir is None:
        return None

    # A partial, not a closure: it must pickle into the data-parallel workers.
    after_epoch = functools.partial(_after_epoch, STEP_OF[name], state_dir)
    return TrainStateStore(f"{state_dir}/{name}.pt", checkpoint_every(), after_epoch)


def _after_epoch(stage: str, state_dir: str, epoch: int) -> None:
    """$RECMODEL_FAIL_ONCE=pretrain:epochK fails the step once, after epoch K is saved."""
    from recmodel.fault_injection import inject_fault

    inject_fault(stage, f"epoch{epoch}", state_dir)


def maybe_fail(stage: str, tables: Any) -> None:
    """A fault at the start of ``stage`` when $RECMODEL_FAIL_ONCE asks for one (tests)."""
    from recmodel.fault_injection import inject_fault

    state_dir = _state_dir(tables)
    if state_dir is not None:
        inject_fault(stage, "start", state_dir)


def _warm_state(run_pathspec: str | None, name: str, data: StepData) -> tuple[dict | None, dict]:
    """Initial weights from a past run's checkpoint of the same model, or None."""
    if not run_pathspec:
        return None, {}
    from metaflow import Run

    from recmodel.model import Retriever
    from recmodel.warm_start import warm_start_from_run

    fresh = Retriever(data.dataset.items, data.cfg.model)
    items = read_table(data.refs["items"])
    ws = warm_start_from_run(Run(run_pathspec), fresh, items, artifact=CHECKPOINT_OF[name])
    return ws.state, ws.summary


def pretrain(
    config: dict,
    refs: dict,
    q_ref: TableRef,
    name: str,
    tables: Any,
    card: Any = None,
    warm_start_run: str | None = None,
) -> tuple[dict, dict]:
    """Pretrain the retriever (``sasrec_pretrain``) or its no-logQ twin (``sasrec_no_logq``).

    Returns:
        ``(checkpoint, model_results)``: safetensors bytes with the model config, and the
        model's entry for ``model_results``.
    """
    from recmodel.launch import pretrain_data_parallel

    maybe_fail(STEP_OF[name], tables)
    data = load_step_data(config, refs)
    cfg = data.cfg
    logq = TRANSFORMER_LOGQ[name] or cfg.train.logq
    train_cfg = dataclasses.replace(cfg.train, logq=logq)
    live = TrainingCard(card, f"{name} (logQ: {logq})")
    counts = q_counts(q_ref, data.dataset.n_items)
    init_state, warm = _warm_state(warm_start_run, name, data)
    result = pretrain_data_parallel(
        data.dataset,
        counts,
        cfg.model,
        train_cfg,
        cfg.q,
        cfg.eval,
        progress=live.update,
        init_state=init_state,
        state_store=_state_store(tables, name),
        processes=cfg.train.processes,
    )
    live.finish(result.history)
    entry = trained_result(
        data, name, result, tables, logq=logq, warm_start=warm, resumed_from=result.resumed_from
    )
    return checkpoint_of(result), {name: entry}


def baselines(config: dict, refs: dict, tables: Any) -> dict:
    """Fit every classic baseline on the pretrain window and recommend for the test users."""
    from recmodel.baselines import BuildOptions, build_baselines, run_baseline

    data = load_step_data(config, refs)
    cfg = data.cfg
    options = BuildOptions(chunk_items=cfg.eval.chunk_items)
    results = {}
    for model in build_baselines(cfg.baselines, options=options):
        out = run_baseline(
            model, data.dataset, data.test.users, data.test.histories, REC_K, cfg.eval.filter_seen
        )
        if out["status"] != "ok":
            results[out["name"]] = {k: out[k] for k in ("status", "error", "traceback")}
            continue
        results[out["name"]] = model_result(
            data,
            out["name"],
            out["items"],
            out["scores"],
            tables,
            fit_seconds=out["fit_seconds"],
            model_size=out["model_size"],
            tuning=out.get("tuning"),
            history=[],
        )
    return results


def merge_results(parts: list[dict]) -> dict:
    """One ``model_results`` dict from the branches (every model name once)."""
    merged: dict[str, Any] = {}
    for part in parts:
        for name, entry in part.items():
            if name in merged and merged[name] is not entry:
                # finetune's branch carries sasrec_pretrain along: keep one copy
                merged[name] = merged[name] if merged[name].get("recommendations") else entry
            else:
                merged[name] = entry
    return merged


def train_history(results: dict) -> dict:
    """``train_history`` artifact: per-epoch rows of every trained model."""
    return {
        name: entry.get("history", []) for name, entry in results.items() if entry.get("history")
    }


def join_recommendations(results: dict, tables: Any) -> TableRef:
    """Concatenate every model's rows into the ``recommendations`` table."""
    with tempfile.TemporaryDirectory(prefix="recmodel-recs-") as tmp:
        path = Path(tmp) / "recommendations.parquet"
        writer = None
        for name in sorted(results):
            ref = results[name].get("recommendations")
            if ref is None:
                continue
            table = read_table(ref)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table.cast(writer.schema))
        if writer is None:
            raise RuntimeError("no model produced recommendations: see model_results for errors")
        writer.close()
        return tables.publish(path, "recommendations")
