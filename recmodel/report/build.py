"""The comparison report: every model on the same test users, with intervals and tests.

:func:`build_report` recomputes the metrics from the long ``recommendations`` table (never
trusting numbers a training step logged), bootstraps intervals over users and tests the
reference model against every other model with a paired bootstrap. The result is the
``report`` artifact dict, ``report.md`` text and PNG figures; :func:`report_card_components`
lays the same content out as a Metaflow card and :func:`write_report_files` writes it to disk.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from recmodel.core.columns import MODEL_NAMES, Columns
from recmodel.core.config import EvalConfig
from recmodel.report import plots
from recmodel.report.data import (
    ALPHA,
    EvalInputs,
    ModelEval,
    catalog_percentiles,
    compare,
    evaluate_model,
    intervals,
    prepare_inputs,
    winners,
)
from recmodel.report.kinds import REFERENCES, by_target_kind, kinds_markdown
from recmodel.report.text import (
    failed_markdown,
    legend_markdown,
    notes_markdown,
    pipe_table,
    protocol_markdown,
    ranking_metrics,
    results_table,
    settings_markdown,
    summary_markdown,
)

log = logging.getLogger(__name__)

TITLE = "# Model comparison on the same test users"
FIGURE_CAPTIONS = {
    "metric_bars": "Headline metrics per model with 95% bootstrap intervals",
    "popularity": "Popularity of recommended tracks compared with the catalog",
    "training_curves": "Training loss and validation NDCG@10 per epoch",
}


@dataclass(frozen=True)
class Report:
    """The comparison report in every form it is published in.

    Attributes:
        data: the ``report`` artifact (plain dicts, lists, floats and strings).
        markdown: text of ``report.md``; figures are referenced as ``<name>.png``.
        figures: figure name -> PNG bytes.
        intro: Markdown above the results table (title, protocol).
        table: ``(headers, rows)`` of the results table, plain strings.
        body: Markdown below the table (legend, summary, failures, notes).
    """

    data: dict[str, Any]
    markdown: str
    figures: dict[str, bytes]
    intro: str
    table: tuple[list[str], list[list[str]]]
    body: str


def build_report(
    recommendations: pa.Table,
    test_targets: pa.Table,
    items: pa.Table,
    models: dict[str, dict[str, Any]],
    protocol: dict[str, Any],
    cfg: EvalConfig,
    reference_model: str | None = None,
) -> Report:
    """Judge every model on the users of ``test_targets`` and lay the comparison out.

    Args:
        recommendations: ``(model, user_id, item_id, score, rank)``, top-k per test user per
            model, rank 1 = best.
        test_targets: ``(user_id, item_id, ...)`` listen+ events of the test window; a
            re-listened track counts once.
        items: ``(item_id, count)``: the catalog (one row per item) and pre-test play counts.
        models: name -> ``{"status": "ok" | "failed", "error", "fit_seconds", "model_size",
            "history", ...}``; names only present in ``recommendations`` count as ok.
        protocol: split kind, windows, gap, ``filter_seen``, ...; the measured test users,
            targets, catalog size and ``ks`` are written over it.
        cfg: cut-offs and bootstrap settings.
        reference_model: the model tested against every other one; by default the system as
            served (``two_stage_ranked``), else the retriever alone (``sasrec_two_stage``).
            The retriever alone is tested against every model as well.

    Returns:
        The :class:`Report`.
    """
    start = time.perf_counter()
    inputs = prepare_inputs(test_targets, items)
    ks = tuple(sorted(cfg.ks))
    names = _order(set(models) | set(_recommended_models(recommendations)))
    failed = {m: _error(models[m]) for m in names if models.get(m, {}).get("status", "ok") != "ok"}
    evals = {m: evaluate_model(recommendations, m, inputs, ks) for m in names if m not in failed}
    reference_model = reference_model or next((m for m in REFERENCES if m in evals), REFERENCES[-1])
    data = _report_data(names, evals, failed, models, inputs, protocol, cfg, reference_model)
    figures = _figures(data, evals, inputs, models)
    intro = "\n\n".join([TITLE, protocol_markdown(data["protocol"]), "## Results"])
    body = _body_markdown(data)
    headers, rows = results_table(data)
    markdown = "\n\n".join([intro, pipe_table(headers, rows), body, _figures_markdown(figures)])
    log.info(
        "report: %d models (%d failed) on %d test users in %.1f s",
        len(names),
        len(failed),
        inputs.n_users,
        time.perf_counter() - start,
    )
    return Report(data, markdown + "\n", figures, intro, (headers, rows), body)


def report_card_components(report: Report) -> list:
    """Metaflow card components (Markdown, Table, Image) for a ``@card(type="blank")`` step.

    The results table is split in two (:func:`card_tables`): a dozen columns of intervals do
    not fit the width the Metaflow UI gives a card.
    """
    from metaflow.cards import Image, Markdown, Table

    components = [Markdown(report.intro)]
    for caption, (headers, rows) in card_tables(report.table):
        components += [Markdown(caption), Table(rows, headers=headers)]
    components.append(Markdown(report.body))
    if report.figures:
        components.append(Markdown("## Figures"))
    components += [
        Image(png, label=FIGURE_CAPTIONS.get(name, name)) for name, png in report.figures.items()
    ]
    return components


CARD_TABLES = (
    ("**Recall and NDCG**", ("Recall@", "NDCG@")),
    ("**Hit rate, coverage, popularity and cost**", None),  # every other column
)


def card_tables(
    table: tuple[list[str], list[list[str]]],
) -> list[tuple[str, tuple[list[str], list[list[str]]]]]:
    """The results table as narrower tables, each with the model column first.

    Returns:
        ``[(caption, (headers, rows)), ...]`` as :data:`CARD_TABLES` groups the columns
        (by header prefix); a group without columns is left out.
    """
    headers, rows = table
    taken: set[int] = set()
    out = []
    for caption, prefixes in CARD_TABLES:
        picked = [
            i
            for i in range(1, len(headers))
            if i not in taken and (prefixes is None or headers[i].startswith(prefixes))
        ]
        taken.update(picked)
        if picked:
            cols = [0, *picked]
            out.append(
                (caption, ([headers[i] for i in cols], [[r[i] for i in cols] for r in rows]))
            )
    return out


def write_report_files(report: Report, out_dir: str | Path) -> dict[str, str]:
    """Write ``report.md`` and its PNG figures (referenced by relative name) into ``out_dir``.

    Returns:
        ``{"markdown": path of report.md, <figure name>: path of its PNG, ...}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "report.md"}
    paths["markdown"].write_text(report.markdown, encoding="utf-8")
    for name, png in report.figures.items():
        paths[name] = out / f"{name}.png"
        paths[name].write_bytes(png)
    return {name: str(path) for name, path in paths.items()}


def _report_data(
    names: list[str],
    evals: dict[str, ModelEval],
    failed: dict[str, str],
    models: dict[str, dict[str, Any]],
    inputs: EvalInputs,
    protocol: dict[str, Any],
    cfg: EvalConfig,
    reference: str,
) -> dict[str, Any]:
    """The ``report`` artifact: plain Python values only, so any client can unpickle it."""
    tested = ranking_metrics(tuple(sorted(cfg.ks)))
    ref = evals.get(reference)
    if ref is None:
        log.warning("reference model %s has no results: no significance tests", reference)
    return {
        "protocol": _protocol(protocol, inputs, cfg, reference),
        "reference_model": reference,
        "models": names,
        "metrics": {m: e.summary for m, e in evals.items()},
        "intervals": {m: intervals(e, tested, cfg) for m, e in evals.items()},
        "comparisons": {}
        if ref is None
        else {m: compare(ref, e, tested, cfg) for m, e in evals.items() if m != reference},
        "comparisons_by_reference": {
            r: {m: compare(evals[r], e, tested, cfg) for m, e in evals.items() if m != r}
            for r in REFERENCES
            if r in evals
        },
        "by_target_kind": by_target_kind(evals, cfg),
        "failed": failed,
        "winners": winners(evals, tested + [f"coverage@{max(cfg.ks)}"]),
        "training": {m: _training(models.get(m, {})) for m in names},
        "settings": {m: _settings(models.get(m, {})) for m in names},
        "users_without_recommendations": {m: e.users_without_recs for m, e in evals.items()},
        "rows_outside_test": {m: e.rows_outside_test for m, e in evals.items()},
    }


def _protocol(
    protocol: dict[str, Any], inputs: EvalInputs, cfg: EvalConfig, reference: str
) -> dict[str, Any]:
    """The given protocol with the measured counts written over it (they are what was judged)."""
    measured = {
        "n_test_users": inputs.n_users,
        "n_targets": inputs.n_targets,
        "n_target_events": inputs.n_target_events,
        "catalog_size": inputs.n_items,
        "ks": sorted(int(k) for k in cfg.ks),
        "bootstrap_samples": cfg.bootstrap_samples,
        "bootstrap_seed": cfg.seed,
        "confidence": 1 - ALPHA,
        "reference_model": reference,
    }
    for key in ("n_test_users", "catalog_size"):
        if key in protocol and protocol[key] != measured[key]:
            log.warning(
                "protocol says %s=%s but the inputs hold %s; reporting the latter",
                key,
                protocol[key],
                measured[key],
            )
    return {"filter_seen": cfg.filter_seen, **protocol, **measured}


def _training(entry: dict[str, Any]) -> dict[str, Any]:
    seconds, size = entry.get("fit_seconds"), entry.get("model_size")
    return {
        "fit_seconds": None if seconds is None else float(seconds),
        "model_size": None if size is None else int(size),
    }


def _settings(entry: dict[str, Any]) -> dict[str, Any]:
    """What a model ran with and how that was chosen: its settings, the validation search
    (points scored, best validation NDCG@10), the kept epoch, and its fit/refit rule."""
    out: dict[str, Any] = {
        "params": {k: _plain_value(v) for k, v in (entry.get("params") or {}).items()}
    }
    tuning = entry.get("tuning") or []
    if tuning:
        scores = [
            float(row["ndcg@10"]) for row in tuning if row.get("ndcg@10") == row.get("ndcg@10")
        ]
        out["searched"] = len(tuning)
        out["best_validation_ndcg@10"] = max(scores) if scores else None
        if entry.get("tuned_on"):
            out["tuned_on"] = str(entry["tuned_on"])
    if entry.get("best_epoch") is not None:
        out["best_epoch"] = int(entry["best_epoch"])
    rule = entry.get("refit") or entry.get("fit_rule")
    if rule:
        out["rule"] = str(rule)
    return out


def _plain_value(value: Any) -> Any:
    """Numbers and words as plain Python values (numpy scalars become floats or ints)."""
    return value.item() if hasattr(value, "item") else value


def _error(entry: dict[str, Any]) -> str:
    return str(entry.get("error") or f"status {entry.get('status')!r} without an error message")


def _order(names: set[str]) -> list[str]:
    """Canonical order of MODEL_NAMES, then unknown names alphabetically."""
    return [m for m in MODEL_NAMES if m in names] + sorted(names - set(MODEL_NAMES))


def _recommended_models(recommendations: pa.Table) -> list[str]:
    column = recommendations.column(Columns.MODEL)
    return [str(m) for m in pc.unique(column).to_pylist() if m is not None]


def _figures(
    data: dict[str, Any],
    evals: dict[str, ModelEval],
    inputs: EvalInputs,
    models: dict[str, dict[str, Any]],
) -> dict[str, bytes]:
    """Only figures with something to show: no bars when every model failed, and so on."""
    ks = data["protocol"]["ks"]
    figures = {}
    if evals:
        figures["metric_bars"] = plots.metric_bars(data, (f"ndcg@{min(ks)}", f"recall@{max(ks)}"))
        figures["popularity"] = plots.popularity_plot(
            {m: e.rec_percentiles for m, e in evals.items()},
            catalog_percentiles(inputs),
            k=min(ks),
            reference=data["reference_model"],
        )
    histories = {
        m: models[m]["history"] for m in data["models"] if models.get(m, {}).get("history")
    }
    if histories:
        figures["training_curves"] = plots.training_curves(histories)
    return figures


def _body_markdown(data: dict[str, Any]) -> str:
    """Everything below the table: legend, summary, failures, notes (empty parts left out)."""
    parts = (
        legend_markdown(data),
        summary_markdown(data),
        kinds_markdown(data),
        settings_markdown(data),
        failed_markdown(data),
        notes_markdown(data),
    )
    return "\n\n".join(part for part in parts if part)


def _figures_markdown(figures: dict[str, bytes]) -> str:
    if not figures:
        return ""
    parts = ["## Figures"]
    for name in figures:
        caption = FIGURE_CAPTIONS.get(name, name)
        parts.append(f"**{caption}**\n\n![{caption}]({name}.png)")
    return "\n\n".join(parts)
