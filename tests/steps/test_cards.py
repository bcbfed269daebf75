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


def test_champion_card_shows_the_decision_as_it_is_and_the_export():
    card = FakeCard()
    decision = {"promote": False, "reason": "worse", "anything": 1.5}
    serving = {
        "directory": "/runs/1/serving",
        "n_items": 12,
        "dim": 8,
        "files": {"query_encoder.pt": "/runs/1/serving/query_encoder.pt"},
        "sha256": {"query_encoder.pt": "ab" * 32},
    }
    champion_card(card, decision, serving, {"markdown": "/runs/1/report.md"})
    text = _text(card)
    assert all(w in text for w in ("reason", "worse", "anything", "/runs/1/serving", "report.md"))
    decision_rows = [c for c in card if type(c).__name__ == "Table"][0]._data
    assert decision_rows[0] == ["promote", "no"]
    champion_card(None, decision, serving, {})
