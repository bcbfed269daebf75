import math

import numpy as np

from recmodel.steps.cards import (
    champion_card,
    data_card,
    inputs_card,
    q_card,
    ranker_card,
    results_card,
)
from recmodel.steps.live_card import TrainingCard, epoch_rows, trained_epochs


class FakeCard(list):
    """Collects components the way ``current.card`` does."""


def _text(card):
    return " ".join(str(getattr(c, "_text", "")) + str(getattr(c, "_data", "")) for c in card)


def test_cards_do_nothing_without_a_card():
    data_card(None, {})
    q_card(None, {}, np.ones(3))
    results_card(None, "x", {})
    ranker_card(None, {})
    champion_card(None, {}, {}, {})


def test_data_card_lists_every_window():
    summary = {
        "source": "synthetic",
        "n_events": 10,
        "stages": {
            "final": {
                w: {"events": 1, "users": 1, "items": 1}
                for w in ("pretrain", "finetune", "val", "test")
            }
        },
        "split_times": {"t_test": {"iso": "2024-02-01T00:00:00+00:00"}},
        "dropped": {"skips": 3},
    }
    card = FakeCard()
    data_card(card, summary)
    text = _text(card)
    assert all(w in text for w in ("pretrain", "finetune", "val", "test", "skips", "2024-02-01"))


def test_q_card_has_a_png_plot():
    card = FakeCard()
    q_card(card, {"entropy": 1.5, "n_items": 3}, np.array([0.5, 0.3, 0.2]))
    assert any(type(c).__name__ == "Image" for c in card)
    assert "entropy" in _text(card)


def test_results_card_shows_failed_models():
    card = FakeCard()
    results_card(
        card,
        "Baselines",
        {
            "als": {"status": "failed", "error": "ValueError: x"},
            "popularity": {"status": "ok", "metrics": {"ndcg@10": 0.1}},
        },
    )
    text = _text(card)
    assert "ValueError: x" in text and "popularity" in text


def test_ranker_card_orders_importances():
    card = FakeCard()
    ranker_card(card, {"auc": 0.8, "importance": {"a": 0.1, "b": 0.3}})
    table = [c for c in card if type(c).__name__ == "Table"][0]
    assert [row[0] for row in table._data] == ["b", "a"]


COMPARED = {
    "promote": False,
    "reason": "ndcg@10 candidate - champion -0.0561, interval [-0.0768, -0.0368]; "
    "upper end < -0.005: rejected",
    "rule": "promote when ...",
    "metric": "ndcg@10",
    "margin": 0.005,
    "candidate_run": "TwoStageFlow/2",
    "champion_run": "TwoStageFlow/1",
    "compared": True,
    "eligible": True,
    "delta": -0.0561,
    "interval": [-0.0768, -0.0368],
    "p_value": 0.004,
    "candidate": {"recall@10": 0.25, "ndcg@10": 0.2281},
    "champion": {"recall@10": 0.3, "ndcg@10": 0.2842},
    "champion_own_week": 0.1744,
    "reach": {
        "n_users": 173,
        "n_targets": 2659,
        "unknown_tracks": 3,
        "fallback_users": 1,
        "unreachable_targets": 4,
        "champion_source": "serving",
    },
}


def test_champion_card_shows_the_verdict_the_runs_the_interval_and_both_models():
    card = FakeCard()
    champion_card(card, COMPARED, SERVING, {"markdown": "/runs/2/report.md"})
    text = _text(card)
    assert "Champion gate: rejected" in text and COMPARED["reason"] in text
    for fragment in (
        "TwoStageFlow/2",
        "TwoStageFlow/1",
        "[-0.0768, -0.0368]",
        "unreachable for the champion",
        "its own test week**: 0.1744",
        "173 test users",
    ):
        assert fragment in text, fragment
    table = [c for c in card if type(c).__name__ == "Table"][0]  # the comparison, then the files
    assert table._data == [
        ["recall@10", "0.25", "0.3", "-0.0500"],
        ["ndcg@10", "0.2281", "0.2842", "-0.0561"],
    ]


def test_champion_card_without_a_comparison_says_so():
    card = FakeCard()
    champion_card(
        card,
        {
            **COMPARED,
            "promote": False,
            "eligible": False,
            "compared": False,
            "champion_run": None,
            "reason": "not eligible: ...",
        },
        SERVING,
        {},
    )
    text = _text(card)
    assert "Champion gate: not eligible" in text and "champion run**: `none`" in text
    assert "compared**: no" in text and "Both models" not in text


FINETUNE_HISTORY = [
    {"epoch": 0, "ndcg@10": 0.12, "loss": math.nan},  # the starting model, never trained
    {"epoch": 1, "loss": 5.3, "pair_loss": 1.4, "softmax_loss": 7.8, "ndcg@10": 0.15},
]


def test_trained_epochs_leave_out_the_starting_row():
    assert trained_epochs(FINETUNE_HISTORY) == 1
    assert trained_epochs([{"epoch": 0, "loss": 9.0}, {"epoch": 1, "loss": 7.0}]) == 2
    assert trained_epochs([]) == 0


def test_epoch_rows_have_no_nan_and_mark_the_start():
    headers, rows = epoch_rows(FINETUNE_HISTORY)
    assert headers == ["epoch", "loss", "pair_loss", "softmax_loss", "ndcg@10"]
    assert rows[0] == ["0 (start)", "—", "—", "—", "0.12"]
    assert rows[1][:2] == ["1", "5.3"]
    assert not any("nan" in cell for row in rows for cell in row)


def test_training_card_says_how_many_epochs_trained():
    card = FakeCard()
    card.refresh = lambda **_: None
    live = TrainingCard(card, "sasrec_two_stage (pairwise logit loss)")
    live.finish(FINETUNE_HISTORY, best_epoch=1)
    text = _text(card)
    assert "1 epoch trained" in text and "2 epochs" not in text
    assert "weights kept from epoch 1" in text and "start" in text
    assert any(type(c).__name__ == "Image" for c in card)


def test_inputs_card_lists_data_tags_and_every_setting():
    card = FakeCard()
    config = {"name": "tiny", "synthetic": {"seed": 7, "n_users": 300}, "eval": {"ks": (10, 100)}}
    inputs = {"kind": "synthetic", "events": "", "items": "", "ranker_scores": ""}
    inputs_card(card, config, inputs, {"warnings": ["w1"]}, ["preset:tiny", "source:x"], None)
    text = _text(card)
    assert "Configuration and inputs" in text and "preset:tiny" in text and "w1" in text
    settings = [c for c in card if type(c).__name__ == "Table"][-1]._data
    assert settings == [["synthetic", "seed 7 · n_users 300"], ["eval", "ks 10, 100"]]


SERVING = {
    "directory": "/runs/2/serving",
    "n_items": 12,
    "dim": 8,
    "files": {"query_encoder.pt": "/runs/2/serving/query_encoder.pt"},
    "sha256": {"query_encoder.pt": "ab" * 32},
}


def test_champion_card_lists_the_export_and_the_report():
    card = FakeCard()
    champion_card(card, COMPARED, SERVING, {"markdown": "/runs/2/report.md"})
    text = _text(card)
    assert all(w in text for w in ("/runs/2/serving", "n_items 12", "report.md"))
    files = [c for c in card if type(c).__name__ == "Table"][-1]._data
    assert files == [["query_encoder.pt", "/runs/2/serving/query_encoder.pt", "ab" * 8]]
    champion_card(None, COMPARED, SERVING, {})  # no card: nothing to do
