"""Step logic of the second stage: materialize the ranker's scores, distil them into the retriever."""

from __future__ import annotations

import time
from typing import Any

import torch

from recmodel.columns import Columns
from recmodel.live_card import TrainingCard
from recmodel.pipeline_models import (
    StepData,
    checkpoint_of,
    load_step_data,
    maybe_fail,
    q_counts,
    trained_result,
)
from recmodel.tables import TableRef, read_table


def _retriever(checkpoint: dict, data: StepData, device: torch.device):
    from recmodel.checkpoint import load_retriever

    model = load_retriever(
        checkpoint["safetensors"], checkpoint["model_config"], data.dataset.items
    )
    return model.to(device).eval()


def materialize_ranker_scores(
    config: dict, inputs: dict, refs: dict, checkpoint: dict, tables: Any
) -> tuple[TableRef, dict, Any]:
    """Score the pretrained retriever's candidates with the cross-fitted ranker.

    With ``--ranker-scores`` a production ranker's table replaces the built-in ranker.

    Returns:
        ``(ranker_scores, ranker_quality, ranker)``; ``ranker`` is the built-in model (None
        for imported scores), kept for the end-to-end distillation metrics.
    """
    from recmodel.distributed import resolve_device
    from recmodel.ranker import build_ranker_scores
    from recmodel.ranker_io import load_ranker_scores, with_original_ids

    data = load_step_data(config, refs)
    users = read_table(refs["users"], columns=[Columns.USER_IDX, Columns.USER])
    items = read_table(refs["items"], columns=[Columns.ITEM_IDX, Columns.ITEM])
    if inputs.get("ranker_scores"):
        scores = load_ranker_scores(inputs["ranker_scores"], users, items)
        quality, ranker = {"source": inputs["ranker_scores"], "rows": scores.num_rows}, None
    else:
        device = resolve_device(data.cfg.train.device)
        started = time.perf_counter()
        result = build_ranker_scores(
            data.dataset, _retriever(checkpoint, data, device), data.cfg.ranker, device=device
        )
        scores, ranker = result.scores, result.ranker
        quality = {
            "source": "built-in",
            **result.quality,
            "sql_queries": result.queries,
            "seconds": round(time.perf_counter() - started, 2),
        }
    ref = tables.write(with_original_ids(scores, users, items), "ranker_scores")
    return ref, quality, ranker


def finetune(
    config: dict,
    refs: dict,
    q_ref: TableRef,
    checkpoint: dict,
    scores_ref: TableRef,
    results: dict,
    ranker: Any,
    tables: Any,
    card: Any = None,
) -> tuple[dict, dict, dict]:
    """Distil the ranker into the retriever; evaluate it as ``sasrec_two_stage``.

    Returns:
        ``(finetune_checkpoint, model_results, distillation)``.
    """
    from recmodel.distill import distillation_metrics
    from recmodel.distributed import resolve_device
    from recmodel.finetune import finetune as distil

    maybe_fail("finetune", tables)
    data = load_step_data(config, refs)
    cfg = data.cfg
    device = resolve_device(cfg.train.device)
    pretrained = _retriever(checkpoint, data, device)
    scores = read_table(scores_ref)
    live = TrainingCard(card, "sasrec_two_stage (pairwise logit loss)")
    result = distil(
        pretrained,
        data.dataset,
        scores,
        cfg.finetune,
        cfg.train,
        q_counts(q_ref, data.dataset.n_items),
        cfg.q,
        cfg.eval,
        device=device,
        progress=live.update,
    )
    live.finish(result.history)
    entry = trained_result(data, "sasrec_two_stage", result, tables)
    distillation = distillation_metrics(
        {"pretrain": pretrained, "finetune": result.model},
        data.dataset,
        scores,
        ranker=ranker,
        n_candidates=cfg.ranker.n_candidates,
        device=device,
    )
    return checkpoint_of(result), {**results, "sasrec_two_stage": entry}, distillation
