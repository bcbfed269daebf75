import numpy as np

from recmodel.steps.cards import data_card, q_card, ranker_card, results_card


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
