"""Figures of the training card and the comparison report; every function returns PNG bytes.

Matplotlib runs on the Agg backend through an explicit ``Figure`` (no pyplot state), so the
functions are safe in Metaflow steps, worker threads and headless machines.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from recmodel.report.text import pretty_metric

DPI = 110  # sharp in the Metaflow UI without multi-megabyte cards
PANEL_SIZE = (5.2, 3.6)  # inches per panel
REFERENCE_COLOR = "#d62728"  # the reference model stands out in every figure
OTHER_COLOR = "#1f77b4"
OTHER_COLORS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)  # matplotlib's tab10 without its red
CATALOG_COLOR = "#444444"
ECDF_POINTS = 201  # grid of the popularity ECDF: every half percentile


def training_curves(histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> bytes:
    """Training loss and validation NDCG@10 per epoch, one line per training run.

    Args:
        histories: run name -> per-epoch rows with keys ``epoch``, ``loss``, ``ndcg@10``;
            a row may lack any of them (a missing ``epoch`` is the row's 1-based position).

    Returns:
        PNG bytes of a two-panel figure.
    """
    fig, (ax_loss, ax_ndcg) = _figure(2)
    for name, rows in histories.items():
        for ax, key in ((ax_loss, "loss"), (ax_ndcg, "ndcg@10")):
            epochs, values = _series(rows, key)
            if len(values):
                ax.plot(epochs, values, marker="o", markersize=3, label=name)
    for ax in (ax_loss, ax_ndcg):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _style(ax_loss, "Training loss", "epoch", "loss")
    _style(ax_ndcg, "Validation NDCG@10", "epoch", "NDCG@10")
    return _png(fig)


def metric_bars(
    report_data: Mapping[str, Any], metrics: Sequence[str] = ("ndcg@10", "recall@100")
) -> bytes:
    """Bars of each model's metric with its 95% interval, one panel per metric.

    Args:
        report_data: the ``report`` artifact (``metrics``, ``intervals``, optional
            ``reference_model``); models appear in the order of ``report_data["metrics"]``.
        metrics: metric names; those absent from the report are left out.

    Returns:
        PNG bytes.
    """
    values = report_data.get("metrics", {})
    shown = [m for m in metrics if any(m in row for row in values.values())] or list(metrics[:1])
    fig, axes = _figure(len(shown))
    reference = report_data.get("reference_model")
    for ax, metric in zip(axes, shown, strict=True):
        _bars(ax, values, report_data.get("intervals", {}), metric, reference)
    return _png(fig)


def popularity_plot(
    rec_percentiles: Mapping[str, np.ndarray],
    catalog_percentiles: np.ndarray,
    k: int = 10,
    reference: str | None = None,
) -> bytes:
    """Cumulative distribution of the popularity percentile of recommended items vs the catalog.

    A curve below the catalog's means the model recommends more popular tracks than a uniform
    draw from the catalog would; the further right the curve rises, the stronger the bias.

    Args:
        rec_percentiles: model -> float ``[R]`` popularity percentile (0..100) of every
            recommended top-k slot, over all test users.
        catalog_percentiles: float ``[N]`` popularity percentile of every catalog item.
        k: the cut-off the recommended slots were taken from (for the labels).
        reference: model drawn in the reference colour, as in :func:`metric_bars`.

    Returns:
        PNG bytes.
    """
    fig, (ax,) = _figure(1, size=(7.5, 4.6))
    grid = np.linspace(0.0, 100.0, ECDF_POINTS)  # [G]
    ax.plot(
        grid,
        _ecdf(catalog_percentiles, grid),
        color=CATALOG_COLOR,
        linestyle="--",
        linewidth=2,
        label="catalog (each track once)",
    )
    colors = _model_colors(list(rec_percentiles), reference)
    for name, values in rec_percentiles.items():
        if len(values):
            ax.plot(
                grid,
                _ecdf(values, grid),
                color=colors[name],
                linewidth=2.4 if name == reference else 1.6,
                label=name,
            )
    _style(
        ax,
        f"Popularity of recommended tracks (top-{k})",
        "popularity percentile (100 = most played before test)",
        "share of tracks ≤ x",
    )
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 1.02)
    return _png(fig)


def _figure(n_panels: int, size: tuple[float, float] = PANEL_SIZE) -> tuple[Figure, list]:
    fig = Figure(figsize=(size[0] * n_panels, size[1]), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    return fig, list(axes)


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Epochs and finite values of ``key`` over the rows that have it."""
    points = []
    for position, row in enumerate(rows, start=1):
        value = row.get(key)
        if value is not None and math.isfinite(float(value)):
            points.append((float(row.get("epoch", position)), float(value)))
    arr = np.asarray(points, dtype=np.float64).reshape(-1, 2)  # [P, 2]
    return arr[:, 0], arr[:, 1]


def _bars(
    ax,
    values: Mapping[str, Mapping[str, float]],
    intervals: Mapping[str, Any],
    metric: str,
    reference: str | None,
) -> None:
    """One panel: a bar per model holding ``metric``, 95% interval as an error bar."""
    models = [m for m, row in values.items() if metric in row]
    means = np.array([values[m][metric] for m in models], dtype=np.float64)  # [M]
    bounds = np.array(
        [intervals.get(m, {}).get(metric, (v, v)) for m, v in zip(models, means, strict=True)],
        dtype=np.float64,
    ).reshape(-1, 2)  # [M, 2]
    err = np.abs(np.stack([means - bounds[:, 0], bounds[:, 1] - means]))  # [2, M]
    colors = [REFERENCE_COLOR if m == reference else OTHER_COLOR for m in models]
    ax.bar(np.arange(len(models)), means, yerr=err, capsize=4, color=colors)
    ax.set_xticks(np.arange(len(models)), models, rotation=30, ha="right")
    title = pretty_metric(metric) + (" (95% interval)" if intervals else "")
    _style(ax, title, None, pretty_metric(metric), legend=False)
    if not models:
        ax.text(0.5, 0.5, "no model has this metric", ha="center", transform=ax.transAxes)


def _model_colors(names: list[str], reference: str | None) -> dict[str, str]:
    """The reference in :data:`REFERENCE_COLOR`; the others cycle through the other colours."""
    rest = [n for n in names if n != reference]
    colors = {name: OTHER_COLORS[i % len(OTHER_COLORS)] for i, name in enumerate(rest)}
    return colors | ({reference: REFERENCE_COLOR} if reference in names else {})


def _ecdf(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """float ``[G]``: share of ``values`` at or below each grid point."""
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    return np.searchsorted(ordered, grid, side="right") / max(len(ordered), 1)


def _style(ax, title: str, xlabel: str | None, ylabel: str, legend: bool = True) -> None:
    ax.set_title(title, fontsize=12)
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=10)
    ax.set_ylabel(ylabel, fontsize=10)
    ax.grid(alpha=0.3)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
