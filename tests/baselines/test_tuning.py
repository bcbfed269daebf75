"""user_recent against a plain loop, and the one tuning rule of every baseline."""

import math

import numpy as np
import pytest

from recmodel.baselines.base import Recommender, empty_table
from recmodel.baselines.simple import SECONDS_PER_DAY, Popularity, UserRecent
from recmodel.baselines.tuning import (
    TUNE_METRIC,
    grid_points,
    search,
    tune_and_refit,
    validation_requests,
    validation_score,
)
from recmodel.core.columns import Window
from recmodel.core.dataset import UserItems
from recmodel.evaluation.metrics import evaluate
from tests.baselines.test_baselines import HANDMADE, make_dataset, random_dataset, two_blocks

DAY = int(SECONDS_PER_DAY)


def histories_of(rows: list[list[tuple[int, int]]]) -> UserItems:
    """Per-user ``(item, ts)`` rows in time order."""
    lengths = [len(r) for r in rows]
    indptr = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    items = np.array([i for r in rows for i, _ in r], dtype=np.int32)
    ts = np.array([t for r in rows for _, t in r], dtype=np.int64)
    return UserItems(indptr, items, ts)


def test_user_recent_exact_scores_and_order():
    data = make_dataset(HANDMADE, n_users=3, n_items=5)
    model = UserRecent(tau_days=1.0).fit(data)
    # track 1 twice long ago, track 2 once a day before the end, track 3 just before it
    query = histories_of([[(1, 0), (1, 1 * DAY), (2, 9 * DAY), (3, 10 * DAY - 1)]])
    items, scores = model.recommend(query, np.array([0]), 4)
    assert items[0, :3].tolist() == [3, 2, 1]
    # now = the end of the histories = 10 days; ages 1 s, 1 day, and 10 and 9 days
    expected = [math.exp(-1 / DAY), math.exp(-1.0), math.exp(-10.0) + math.exp(-9.0)]
    np.testing.assert_allclose(scores[0, :3], expected, rtol=1e-5)
    assert items[0, 3] not in (1, 2, 3) and scores[0, 3] == 0.0  # the recent-popular fill
    # A long decay counts plays: track 1's two plays now beat one recent play.
    items, _ = UserRecent(tau_days=1000.0).fit(data).recommend(query, np.array([0]), 3)
    assert items[0, 0] == 1


@pytest.mark.parametrize("seed", [0, 1])
def test_user_recent_matches_a_per_user_loop(seed):
    data = random_dataset(seed=seed)
    model = UserRecent(tau_days=0.5).fit(data)
    histories = data.history(Window.TEST)
    users = np.arange(data.n_users)
    items, _ = model.recommend(histories, users, 5)
    now = histories.ts.max() + 1
    for u in users:
        score: dict[int, float] = {}
        last: dict[int, int] = {}
        for pos, (i, t) in enumerate(zip(histories.row(u), histories.row_ts(u), strict=True)):
            score[int(i)] = score.get(int(i), 0.0) + math.exp(-(now - t) / (0.5 * DAY))
            last[int(i)] = pos
        ranked = sorted(score, key=lambda i: (-np.float32(score[i]), -last[i]))[:5]
        assert items[u, : len(ranked)].tolist() == ranked


class Scripted(Recommender):
    """A model whose validation score is scripted per setting (it recommends nothing)."""

    name = "scripted"
    fits: list = []

    def __init__(self, quality: float, other: str = "-"):
        super().__init__()
        self.quality, self.other = quality, other

    def _fit(self, plays):
        Scripted.fits.append((self.quality, plays.end - 1))

    def _candidates(self, query, k, filter_seen, now):
        return empty_table(query.n_users, k)


def test_grid_tuning_visits_every_point_in_order_and_refits_the_best(monkeypatch):
    data = two_blocks()
    monkeypatch.setattr(
        "recmodel.baselines.tuning.validation_score", lambda model, val: model.quality
    )
    Scripted.fits = []
    axes = {"quality": (0.1, 0.5, 0.3), "other": ("a", "b")}  # the best neither first nor last
    tuned = tune_and_refit(
        lambda **p: Scripted(**p), axes, data, validation_requests(data), method="grid"
    )
    order = [(0.1, "a"), (0.1, "b"), (0.5, "a"), (0.5, "b"), (0.3, "a"), (0.3, "b")]
    assert [(row["quality"], row["other"]) for row in tuned.tuning] == order
    assert [row[TUNE_METRIC] for row in tuned.tuning] == [q for q, _ in order]
    assert tuned.params == {"quality": 0.5, "other": "a"}  # ties: the earlier point
    assert (tuned.model.quality, tuned.model.other) == (0.5, "a")
    last_val = int(data.ts[data.window < Window.VAL].max())
    last_test = int(data.ts[data.window < Window.TEST].max())
    # every point fit before the validation window; the winner refit before the test window
    assert Scripted.fits == [*((q, last_val) for q, _ in order), (0.5, last_test)]


def _surface(seed: int, separable: bool):
    """Random axes and a score over them: a sum of per-axis parts, or any table."""
    rng = np.random.default_rng(seed)
    axes = {f"x{a}": tuple(range(int(rng.integers(1, 5)))) for a in range(3)}
    parts = [rng.normal(size=len(v)) for v in axes.values()]
    table = {tuple(p.values()): rng.normal() for p in grid_points(axes)}

    def score(point):
        if separable:
            return float(sum(part[v] for part, v in zip(parts, point.values(), strict=True)))
        return table[tuple(point.values())]

    return axes, score


@pytest.mark.parametrize("seed", range(12))
def test_coordinate_ascent_finds_the_grid_best_of_a_separable_score(seed):
    axes, score = _surface(seed, separable=True)
    calls = []
    best = search(axes, lambda p: calls.append(tuple(p.values())) or score(p), "coordinate")
    grid_best = max(grid_points(axes), key=score)
    assert score(best) == pytest.approx(score(grid_best))
    assert len(calls) == len(set(calls))  # every point scored once
    assert len(calls) <= 1 + 2 * sum(len(v) - 1 for v in axes.values())  # two sweeps at most


@pytest.mark.parametrize("seed", range(12))
def test_coordinate_ascent_ends_where_no_single_axis_move_helps(seed):
    axes, score = _surface(seed, separable=False)
    best = search(axes, score, "coordinate")
    start = {name: values[0] for name, values in axes.items()}
    assert score(best) >= score(start)
    for name, values in axes.items():  # a coordinate-wise optimum
        assert all(score({**best, name: v}) <= score(best) for v in values)


def test_search_rejects_an_unknown_method_and_an_empty_axis():
    with pytest.raises(ValueError, match="search must be one of"):
        search({"a": (1, 2)}, lambda p: 0.0, "random")
    with pytest.raises(ValueError, match="needs a value"):
        search({"a": (1, 2), "b": ()}, lambda p: 0.0, "grid")


def test_without_validation_users_the_first_point_is_refit():
    events = [(u, i, 1, Window.PRETRAIN) for u in range(4) for i in (1, 2, 3)]
    data = make_dataset([*events, (0, 1, 9, Window.TEST)], n_users=4, n_items=3)
    assert validation_requests(data) is None
    Scripted.fits = []
    tuned = tune_and_refit(lambda **p: Scripted(**p), {"quality": (1, 2)}, data, None)
    assert tuned.params == {"quality": 1} and tuned.tuning == [] and len(Scripted.fits) == 1


def test_validation_score_is_evaluate_of_the_models_own_recommendations():
    data = two_blocks()
    val = validation_requests(data)
    model = Popularity().fit(data, before=Window.VAL)
    items, _ = model.recommend(data.history(Window.VAL), val.users, 10)
    expected = evaluate(items, val.targets, ks=(10,), item_counts=model.item_counts, n_items=12)
    assert validation_score(model, val) == pytest.approx(expected.summary["ndcg@10"])
    sample = validation_requests(data, max_users=7, seed=3)
    assert len(sample.users) == 7 and set(sample.users) <= set(val.users)
    every = len(val.users)
    assert sample.of_users == every == val.of_users
    assert sample.describe() == f"7 validation users (a seeded sample of {every})"
    assert val.describe() == f"{every} validation users"
