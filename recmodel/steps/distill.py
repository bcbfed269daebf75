"""Step logic of the second stage: materialize the ranker's scores, distil them into the retriever."""

from __future__ import annotations

import time
from typing import Any

import torch

from recmodel.core.columns import Columns, Window
from recmodel.core.files import load_checkpoint, load_object
from recmodel.core.sql import SqlRunner
from recmodel.core.tables import AnyRef, read_table
from recmodel.distill.finetune import finetune_retriever
from recmodel.distill.metrics import distillation_metrics
from recmodel.evaluation.testset import REC_K
from recmodel.ranker.features import run_recent_counts
from recmodel.ranker.model import build_ranker_scores
from recmodel.ranker.score_tables import load_ranker_scores, with_original_ids
from recmodel.retriever.checkpoint import load_retriever
from recmodel.retriever.distributed import resolve_device
from recmodel.steps.common import connect_for
from recmodel.steps.live_card import TrainingCard
from recmodel.steps.step_data import (
    StepData,
    answer_by_part,
    checkpoint_of,
    load_step_data,
    maybe_fail,
    model_result,
    q_counts,
    trained_result,
)

TWO_STAGE = "sasrec_two_stage"  # the finetuned retriever alone, in the report
RANKED = "two_stage_ranked"  # its candidates re-ranked by the ranker: the system as served
FINETUNE_RULE = (
    "the pretrained retriever finetuned on the finetune window's requests (next-item loss plus "
    "the pairwise loss on the ranker's scores); the epoch kept is the best on validation "
    "NDCG@10; test requests read every event before the test window, no refit"
)
RANKED_RULE = (
    "the ranker, fit on the finetune window's requests (cross-fitted), re-ranks the finetuned "
    "retriever's top candidates and the listener's own tracks; served as one list"
)


def _retriever(checkpoint: dict, data: StepData, device: torch.device):
    checkpoint = load_checkpoint(checkpoint)  # a reference, or the bytes of a past run
    model = load_retriever(
        checkpoint["safetensors"], checkpoint["model_config"], data.dataset.items
    )
    return model.to(device).eval()


def materialize_ranker_scores(
    config: dict, inputs: dict, refs: dict, checkpoint: dict, tables: Any
) -> tuple[dict, dict, dict | None, list[dict]]:
    """Score the pretrained retriever's candidates with the cross-fitted ranker.

    With ``--ranker-scores`` a production ranker's table replaces the built-in ranker. A run
    of more than ``train.shard_events`` events stays on disk: the candidates and their features
    are built one user shard at a time (:func:`recmodel.ranker.model.build_ranker_scores`).

    Returns:
        ``(ranker_scores, ranker_quality, ranker, sql_queries)``; ``ranker`` is the reference
        of the built-in model pickled beside the run's tables (None for imported scores), kept
        for the end-to-end distillation metrics, and ``sql_queries`` the records of the SQL
        this step ran.
    """
    data = load_step_data(config, refs, sharded=True)  # user shards when over shard_events
    runner = SqlRunner(connect_for(data.cfg))
    users = read_table(refs["users"], columns=[Columns.USER_IDX, Columns.USER])
    items = read_table(refs["items"], columns=[Columns.ITEM_IDX, Columns.ITEM])
    if inputs.get("ranker_scores"):
        scores = load_ranker_scores(inputs["ranker_scores"], users, items, runner)
        quality, ranker = {"source": inputs["ranker_scores"], "rows": scores.num_rows}, None
    else:
        device = resolve_device(data.cfg.train.device)
        started = time.perf_counter()
        pretrained = _retriever(checkpoint, data, device)
        result = build_ranker_scores(
            data.dataset, pretrained, data.cfg.ranker, device=device, runner=runner
        )
        scores, ranker = result.scores, result.ranker
        quality = {
            "source": "built-in",
            **result.quality,
            "seconds": round(time.perf_counter() - started, 2),
        }
    ref = tables.write(with_original_ids(scores, users, items), "ranker_scores")
    stored = None if ranker is None else tables.write_object(ranker, "ranker")
    return ref, quality, stored, runner.records


def finetune(
    config: dict,
    refs: dict,
    q_ref: AnyRef,
    checkpoint: dict,
    scores_ref: AnyRef,
    ranker: Any,
    tables: Any,
    card: Any = None,
) -> tuple[dict, dict, dict]:
    """Distil the ranker into the retriever; evaluate it as ``sasrec_two_stage``.

    A run of more than ``train.shard_events`` events stays on disk: the requests' queries, the
    validation users, the test users and the held-out requests are read one user shard at a
    time (the ranker's scores are per request, not per event).

    Returns:
        ``(finetune_checkpoint, results, distillation)``: the weights, the entries of
        ``sasrec_two_stage`` and (with the built-in ranker) ``two_stage_ranked`` for
        ``model_results``, and the distillation metrics of both retrievers.
    """
    maybe_fail("finetune", tables)
    data = load_step_data(config, refs, sharded=True)
    cfg = data.cfg
    device = resolve_device(cfg.train.device)
    pretrained = _retriever(checkpoint, data, device)
    scores = read_table(scores_ref)
    ranker = load_object(ranker)  # its reference, or the object of a past run
    live = TrainingCard(card, f"{TWO_STAGE} (pairwise logit loss)")
    result = finetune_retriever(
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
    live.finish(result.history, result.best_epoch)
    entries = {TWO_STAGE: trained_result(data, TWO_STAGE, result, tables, fit_rule=FINETUNE_RULE)}
    if ranker is not None:  # a production ranker's scores come without a model to re-rank
        entries[RANKED] = ranked_result(data, ranker, result.model, tables)
    distillation = distillation_metrics(
        {"pretrain": pretrained, "finetune": result.model},
        data.dataset,
        scores,
        ranker=ranker,
        n_candidates=cfg.ranker.n_candidates,
        device=device,
    )
    return checkpoint_of(result, tables, "finetune_checkpoint"), entries, distillation


def ranked_result(data: StepData, ranker: Any, retriever: Any, tables: Any) -> dict:
    """``two_stage_ranked``: the test users' candidates of ``retriever`` ranked by ``ranker``
    (one user shard at a time when the run's events stay on disk)."""
    started = time.perf_counter()
    recent = run_recent_counts(data.dataset, Window.TEST)  # every user's, shard or not
    items, scores, targets = answer_by_part(
        data,
        lambda part, mine: ranker.rank(
            part, retriever, mine, data.cfg.ranker, Window.TEST, REC_K, recent
        ),
    )
    seconds = time.perf_counter() - started
    return model_result(
        data,
        RANKED,
        items,
        scores,
        tables,
        targets,
        recommend_seconds=seconds,
        params={"n_candidates": data.cfg.ranker.n_candidates},
        fit_rule=RANKED_RULE,
    )
