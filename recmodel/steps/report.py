"""Step logic of ``report``: the comparison on the same test users, as artifact, card and file."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from recmodel.core.columns import Columns
from recmodel.core.config import PipelineConfig
from recmodel.core.tables import AnyRef, copy_file, read_table
from recmodel.evaluation.testset import sample_test_users
from recmodel.ingest.summary import split_rule, window_table
from recmodel.report.build import build_report, report_card_components, write_report_files
from recmodel.steps.common import config_of
from recmodel.steps.summaries import headline_text

log = logging.getLogger(__name__)

HEARD = "heard_before"  # test_targets: the user played the track before the test window
RANKER_KEYS = ("source", "auc", "ndcg@10", "n_requests", "n_candidates", "positive_rate")


def _ranker_rows(quality: dict) -> dict:
    """The rows the built-in ranker was fit on, for the protocol (none for an imported one)."""
    return {"ranker_fit_rows": quality["fit_rows"]} if quality.get("fit_rows") else {}


def protocol_of(cfg: PipelineConfig, summary: dict) -> dict[str, Any]:
    """What the report states above its table: how the test set was built."""
    times = summary.get("split_times", {})
    iso = {name: value.get("iso") for name, value in times.items() if isinstance(value, dict)}
    windows = {
        "pretrain": [iso.get("t_min"), iso.get("t_finetune")],
        "finetune": [iso.get("t_finetune"), iso.get("t_val")],
        "val": [iso.get("t_val"), iso.get("t_test")],
        "test": [iso.get("t_test"), iso.get("t_max")],
    }
    protocol = {
        "split": cfg.extract.protocol,
        "filter_seen": cfg.eval.filter_seen,
        "listen_threshold_pct": cfg.extract.listen_threshold_pct,
        "max_test_users": cfg.eval.max_test_users or "all",
    }
    if cfg.extract.protocol == "temporal":
        protocol.update(windows=windows, gap_minutes=cfg.extract.gap_minutes)
        protocol["split_by"] = split_rule(cfg.extract)
    protocol["window_table"] = window_table(summary)
    return protocol


def evaluated_targets(targets_ref: AnyRef, cfg: PipelineConfig):
    """Test targets of exactly the users every model was asked to recommend for."""
    targets = read_table(targets_ref)
    users = np.unique(targets.column(Columns.USER_IDX).to_numpy())
    kept = sample_test_users(users, cfg.eval)
    if len(kept) < len(users):
        targets = targets.filter(pc.is_in(targets.column(Columns.USER_IDX), value_set=kept))
    return targets.select(
        [c for c in (Columns.USER, Columns.ITEM, HEARD) if c in targets.column_names]
    )


def publish_files(files: dict[str, str], root: str) -> dict[str, str]:
    """Copy report.md and its figures next to the run's tables; return their URIs."""
    out = {}
    for name, local in files.items():
        uri = f"{root}/{Path(local).name}"
        copy_file(local, uri)
        out[name] = uri
    return out


def report(
    config: dict,
    refs: dict,
    recommendations: AnyRef,
    results: dict,
    summary: dict,
    distillation: dict,
    ranker_quality: dict,
    tables: Any,
    card: Any = None,
) -> tuple[dict, dict]:
    """Build the report from the recommendations table and the test targets alone.

    Returns:
        ``(report, report_files)``: the artifact dict and the URIs of report.md and figures.
    """
    cfg = config_of(config)
    items = read_table(refs["items"], columns=[Columns.ITEM, Columns.COUNT])
    rep = build_report(
        read_table(recommendations),
        evaluated_targets(refs["test_targets"], cfg),
        items,
        results,
        {**protocol_of(cfg, summary), **_ranker_rows(ranker_quality)},
        cfg.eval,
    )
    data = {
        **rep.data,
        "distillation": distillation,
        "ranker": {k: ranker_quality[k] for k in RANKER_KEYS if k in ranker_quality},
    }
    with tempfile.TemporaryDirectory(prefix="recmodel-report-") as tmp:
        files = publish_files(write_report_files(rep, tmp), tables.root)
    if card is not None:
        for component in report_card_components(rep):
            card.append(component)
    return data, files


def log_summary(files: dict, headline: str | None = None) -> None:
    """The results' headline and where the report is, at the end of a run (stdout).

    Args:
        files: the ``report_files`` artifact.
        headline: the report step's ``summary`` (None: only the report's place).
    """
    text = headline_text(headline) if headline else f"report: {files.get('markdown')}"
    log.info("%s\n(the card: python flows/two_stage.py card view report)", text)
