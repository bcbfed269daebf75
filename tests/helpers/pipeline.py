"""The flow's steps in one process, in the flow's order: for runs on many shapes of log.

Each step's function is called with the artifacts the previous steps produced, exactly as the
flow passes them, with tables under ``root/<step>``; Metaflow itself is left out (its own runs
are in tests/flow/). Returns every artifact by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recmodel.steps.common import RunTables
from recmodel.steps.data import estimate_q, extract_sessions, start
from recmodel.steps.distill import finetune, materialize_ranker_scores
from recmodel.steps.join import join_recommendations, merge_results
from recmodel.steps.models import NO_LOGQ, SASREC, baselines, pretrain
from recmodel.steps.publish import export_serving
from recmodel.steps.report import report


def run_steps(
    root: Path,
    preset: str = "tiny",
    overrides: dict | None = None,
    source: str = "canonical",
    events: str = "",
    items: str = "",
) -> dict[str, Any]:
    """Every step from ``start`` to the serving export of ``end`` (no champion gating)."""

    def tables(step: str) -> RunTables:
        return RunTables(root=str(root / step))

    out: dict[str, Any] = {}
    config, inputs, _ = start(preset, overrides or {}, source, events, items, "")
    refs, out["sql_queries"], summary = extract_sessions(config, inputs, tables("extract"))
    q_ref, _, _ = estimate_q(config, refs, tables("estimate_q"))
    checkpoint, pretrained = pretrain(config, refs, q_ref, tables("pretrain"), model=SASREC)
    _, no_logq = pretrain(config, refs, q_ref, tables("pretrain_no_logq"), model=NO_LOGQ)
    fitted = baselines(config, refs, tables("baselines"))
    scores, quality, ranker, _ = materialize_ranker_scores(
        config, inputs, refs, checkpoint, tables("materialize_ranker_scores")
    )
    final, finetuned, distillation = finetune(
        config, refs, q_ref, checkpoint, scores, ranker, tables("finetune")
    )
    results = merge_results(fitted, no_logq, pretrained, finetuned)
    recommendations = join_recommendations(results, tables("join"))
    out["report"], _ = report(
        config, refs, recommendations, results, summary, distillation, quality, tables("report")
    )
    out["serving"] = export_serving(final, refs, tables("end"))
    out.update(
        config=config,
        tables=refs,
        recommendations=recommendations,
        data_summary=summary,
        model_results=results,
        ranker_quality=quality,
        finetune_checkpoint=final,
    )
    return out
