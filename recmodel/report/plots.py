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
EPOCH_PANEL_SIZE = (3.6, 3.0)  # inches per panel of a training card (up to four side by side)
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
    """Training losses and validation NDCG@10 per epoch, one line per training run.

    Losses of different objectives never share an axis (:func:`curve_panels`): the next-item
    (sampled-softmax) losses on one panel, finetuning's pairwise logit loss on its own.

    Args:
        histories: run name -> per-epoch rows with keys ``epoch``, ``loss``, ``ndcg@10`` and,
            for finetuning, ``pair_loss`` and ``softmax_loss``; a row may lack any of them (a
            missing ``epoch`` is the row's 1-based position).

    Returns:
        PNG bytes of a two-panel figure, three-panel with a pairwise loss.
    """
    panels = curve_panels(histories)
    fig, axes = _figure(len(panels))
    epochs = _epochs([row for rows in histories.values() for row in rows])
    for ax, (title, ylabel, keys) in zip(axes, panels, strict=True):
        for name, key in keys.items():
            x, values = _series(histories[name], key)
            if len(values):
                ax.plot(x, values, marker="o", markersize=3, label=name)
        _epoch_axis(ax, epochs)
        _style(ax, title, "epoch", ylabel)
    return _png(fig)


def curve_panels(
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
) -> list[tuple[str, str, dict[str, str]]]:
    """The panels of :func:`training_curves`: ``(title, y label, {run: history key})``.

    A finetuning history (one with ``pair_loss``) records its total ``loss`` = pairwise +
    weighted next-item term: its next-item term (``softmax_loss``) joins the pretraining
    losses, its pairwise loss gets a panel of its own, its total is not drawn.
    """
    finetuned = {n for n, rows in histories.items() if any("pair_loss" in r for r in rows)}
    panels = [
        (
            "Next-item loss (sampled softmax)",
            "loss",
            {n: "softmax_loss" if n in finetuned else "loss" for n in histories},
        )
    ]
    if finetuned:
        panels.append(
            ("Pairwise logit loss (finetuning)", "loss", dict.fromkeys(finetuned, "pair_loss"))
        )
    panels.append(("Validation NDCG@10", "NDCG@10", dict.fromkeys(histories, "ndcg@10")))
    return panels


LOSS_TITLES = {
    "loss": "Training loss (sampled softmax)",
    "pair_loss": "Pairwise logit loss",
    "softmax_loss": "Next-item loss (sampled softmax)",
}
TOTAL_LOSS_TITLE = "Total loss (pairwise + next-item)"  # ``loss`` beside ``pair_loss``


def epoch_panels(rows: Sequence[Mapping[str, Any]], title: str) -> bytes:
    """One training run: every loss it records and validation NDCG@10, each on its own axis.

    Args:
        rows: per-epoch history (``loss``, ``pair_loss``, ``softmax_loss``, ``ndcg@10``; a
            starting row without a loss, as finetuning's row 0, shows on the NDCG panel only).
        title: the run's name, above the figure.

    Returns:
        PNG bytes with the panels of :func:`epoch_panel_keys`; every axis starts at 0, and a
        series of a single epoch is a point labelled with its value.
    """
    panels = epoch_panel_keys(rows)
    fig, axes = _figure(len(panels), size=EPOCH_PANEL_SIZE)
    fig.suptitle(title, fontsize=12)
    every_epoch = _epochs(rows)
    for ax, (key, label) in zip(axes, panels, strict=True):
        epochs, values = _series(rows, key)
        ax.plot(epochs, values, marker="o", markersize=4, color=OTHER_COLOR)
        if len(values) == 1:  # one epoch: a labelled point, not a zoomed-in axis around it
            ax.annotate(
                f"{values[0]:.4g}",
                (epochs[0], values[0]),
                textcoords="offset points",
                xytext=(6, -12),
                fontsize=9,
            )
        ax.set_ylim(bottom=0, top=max(values.max(initial=0.0) * 1.15, 1e-3))
        _epoch_axis(ax, every_epoch)
        ylabel = "NDCG@10" if key == "ndcg@10" else "loss"
        _style(ax, label, "epoch", ylabel, legend=False)
    return _png(fig)


def epoch_panel_keys(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """``(history key, title)`` of each panel of :func:`epoch_panels`: the losses present
    in the rows, then validation NDCG@10."""
    keys = [k for k in LOSS_TITLES if _series(rows, k)[1].size]
    titles = {**LOSS_TITLES, "ndcg@10": "Validation NDCG@10"}
    if "pair_loss" in keys:
        titles["loss"] = TOTAL_LOSS_TITLE
    return [(key, titles[key]) for key in [*keys, "ndcg@10"]]


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


def _epochs(rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """float ``[R]``: each row's epoch (its 1-based position where it has none)."""
    return np.array([float(row.get("epoch", i)) for i, row in enumerate(rows, start=1)])


def _epoch_axis(ax, epochs: np.ndarray) -> None:
    """Integer epoch ticks over every epoch of the figure, however few a panel's series has."""
    if len(epochs):
        ax.set_xlim(epochs.min() - 0.5, epochs.max() + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


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
