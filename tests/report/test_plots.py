"""Figures: valid PNGs of the expected size, exact helper outputs, the reference highlighted."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from matplotlib.image import imread

from recmodel.report import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REFERENCE_RGB = np.array([0xD6, 0x27, 0x28]) / 255  # plots.REFERENCE_COLOR


def _pixels(png: bytes) -> np.ndarray:
    """float ``[H, W, 3]`` RGB in [0, 1]."""
    assert png.startswith(PNG_MAGIC)
    return imread(io.BytesIO(png), format="png")[..., :3]


def _has_color(png: bytes, rgb: np.ndarray) -> bool:
    return bool((np.abs(_pixels(png) - rgb).max(axis=-1) < 0.02).any())


REPORT = {
    "reference_model": "sasrec_two_stage",
    "metrics": {
        "popularity": {"ndcg@10": 0.02, "recall@100": 0.2},
        "als": {"ndcg@10": 0.05, "recall@100": 0.3},
        "sasrec_two_stage": {"ndcg@10": 0.07, "recall@100": 0.4},
    },
    "intervals": {
        "popularity": {"ndcg@10": [0.01, 0.03], "recall@100": [0.15, 0.25]},
        "als": {"ndcg@10": [0.04, 0.06]},  # recall@100 interval missing: no bar
        "sasrec_two_stage": {"ndcg@10": [0.06, 0.08], "recall@100": [0.35, 0.45]},
    },
}


def test_training_curves_png_of_expected_size():
    histories = {
        "sasrec_pretrain": [
            {"epoch": 1, "loss": 6.0, "ndcg@10": 0.01},
            {"epoch": 2, "loss": 5.0, "ndcg@10": 0.02},
        ],
        "sasrec_two_stage": [{"epoch": 1, "loss": 0.7}, {"ndcg@10": 0.03}],  # keys missing
        "empty": [],
    }
    png = plots.training_curves(histories)
    height, width, _ = _pixels(png).shape
    assert (width, height) == (
        round(2 * plots.PANEL_SIZE[0] * plots.DPI),
        round(plots.PANEL_SIZE[1] * plots.DPI),
    )
    assert plots.training_curves({}).startswith(PNG_MAGIC)


def test_series_keeps_finite_values_and_positions():
    rows = [
        {"epoch": 1, "loss": 2.0},
        {"loss": 1.5},
        {"epoch": 3, "loss": None},
        {"epoch": 4, "loss": math.nan},
        {"epoch": 5, "loss": 1.0, "ndcg@10": 0.2},
    ]
    epochs, values = plots._series(rows, "loss")
    np.testing.assert_array_equal(epochs, [1.0, 2.0, 5.0])  # row 2 has no epoch: its position
    np.testing.assert_array_equal(values, [2.0, 1.5, 1.0])
    epochs, values = plots._series(rows, "ndcg@10")
    np.testing.assert_array_equal(epochs, [5.0])
    assert plots._series([], "loss")[0].shape == (0,)


def test_metric_bars_highlight_the_reference():
    png = plots.metric_bars(REPORT)
    assert _has_color(png, REFERENCE_RGB)
    without = plots.metric_bars({**REPORT, "reference_model": "missing"})
    assert not _has_color(without, REFERENCE_RGB)


def test_metric_bars_skip_absent_metrics_and_empty_reports():
    one_panel = _pixels(plots.metric_bars(REPORT, metrics=("ndcg@10", "recall@7")))
    two_panels = _pixels(plots.metric_bars(REPORT))
    assert one_panel.shape[1] * 2 == two_panels.shape[1]
    assert plots.metric_bars({"metrics": {}, "intervals": {}}).startswith(PNG_MAGIC)


def test_ecdf_exact():
    grid = np.array([0.0, 25.0, 50.0, 100.0])
    np.testing.assert_array_equal(
        plots._ecdf(np.array([50.0, 0.0, 100.0, 50.0]), grid), [0.25, 0.25, 0.75, 1.0]
    )
    np.testing.assert_array_equal(plots._ecdf(np.array([]), grid), [0.0, 0.0, 0.0, 0.0])


@pytest.mark.parametrize("reference", ["sasrec_two_stage", None])
def test_popularity_plot(reference):
    rng = np.random.default_rng(0)
    recs = {
        "popularity": rng.uniform(90, 100, 500),
        "sasrec_two_stage": rng.uniform(0, 100, 500),
        "no_rows": np.array([]),
    }
    png = plots.popularity_plot(recs, np.linspace(0, 100, 300), k=10, reference=reference)
    assert _has_color(png, REFERENCE_RGB) == (reference is not None)


def test_model_colors_never_reuse_the_reference_color():
    names = [f"m{i}" for i in range(12)] + ["ref"]
    colors = plots._model_colors(names, "ref")
    assert colors["ref"] == plots.REFERENCE_COLOR
    assert plots.REFERENCE_COLOR not in {colors[n] for n in names[:-1]}
    assert set(colors) == set(names)


PRETRAIN = [{"epoch": 0, "loss": 9.0, "ndcg@10": 0.10}, {"epoch": 1, "loss": 7.0, "ndcg@10": 0.12}]
FINETUNE = [  # row 0 is the starting model: validated, not trained
    {"epoch": 0, "ndcg@10": 0.12},
    {"epoch": 1, "loss": 5.3, "pair_loss": 1.4, "softmax_loss": 7.8, "ndcg@10": 0.15},
]


def test_the_pairwise_loss_never_shares_an_axis_with_next_item_losses():
    panels = plots.curve_panels({"sasrec_pretrain": PRETRAIN, "sasrec_two_stage": FINETUNE})
    assert [(title, keys) for title, _, keys in panels] == [
        (
            "Next-item loss (sampled softmax)",
            {"sasrec_pretrain": "loss", "sasrec_two_stage": "softmax_loss"},
        ),
        ("Pairwise logit loss (finetuning)", {"sasrec_two_stage": "pair_loss"}),
        ("Validation NDCG@10", {"sasrec_pretrain": "ndcg@10", "sasrec_two_stage": "ndcg@10"}),
    ]
    png = plots.training_curves({"sasrec_pretrain": PRETRAIN, "sasrec_two_stage": FINETUNE})
    assert _pixels(png).shape[1] == round(3 * plots.PANEL_SIZE[0] * plots.DPI)
    assert [t for t, _, _ in plots.curve_panels({"a": PRETRAIN})] == [
        "Next-item loss (sampled softmax)",
        "Validation NDCG@10",
    ]


def test_a_training_card_draws_each_loss_on_its_own_axis():
    keys = plots.epoch_panel_keys(FINETUNE)
    assert [k for k, _ in keys] == ["loss", "pair_loss", "softmax_loss", "ndcg@10"]
    assert len({title for _, title in keys}) == 4
    assert plots.epoch_panel_keys(PRETRAIN) == [
        ("loss", "Training loss (sampled softmax)"),
        ("ndcg@10", "Validation NDCG@10"),
    ]
    png = plots.epoch_panels(FINETUNE, "sasrec_two_stage")  # one trained epoch: points
    height, width, _ = _pixels(png).shape
    assert width == round(4 * plots.EPOCH_PANEL_SIZE[0] * plots.DPI)
    assert plots.epoch_panels([], "empty").startswith(PNG_MAGIC)
