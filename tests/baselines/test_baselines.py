"""Baselines: exact orders on handmade logs, fast paths against brute-force references."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pytest
import scipy.sparse as sp

import recmodel.baselines.als as als_module
import recmodel.baselines.base as base_module
from recmodel.baselines.als import ALS, for_gpu
from recmodel.baselines.base import (
    EMPTY,
    Recommender,
    fill_popular,
    implicit_scope,
    top_k_per_row,
)
from recmodel.baselines.knn import ENTRY_BYTES, ItemKNN, fit_bytes, user_chunks
from recmodel.baselines.plays import play_matrix
from recmodel.baselines.registry import (
    BASELINES,
    Baseline,
    BuildOptions,
    build_baselines,
    run_baselines,
)
from recmodel.baselines.simple import Popularity, UserPopular
from recmodel.baselines.tuning import grid_points, validation_requests
from recmodel.core.columns import Window
from recmodel.core.config import BaselinesConfig, ConfigError
from recmodel.core.dataset import Dataset, ItemFeatures, UserItems, row_runs

PRE, FT, VAL, TEST = Window.PRETRAIN, Window.FINETUNE, Window.VAL, Window.TEST


# --------------------------------------------------------------------------- builders


def make_dataset(events: list[tuple[int, int, int, int]], n_users: int, n_items: int) -> Dataset:
    """A Dataset from ``(user, item, ts, window)`` events (sorted here by user, then ts)."""
    user, item, ts, window = (np.array(col, dtype=np.int64) for col in zip(*events, strict=True))
    order = np.lexsort((ts, user))
    zeros = np.zeros(n_items + 1, dtype=np.int64)
    features = ItemFeatures(
        artist=zeros,
        album=zeros,
        genre=zeros,
        tempo_bucket=zeros,
        acoustic=np.zeros((n_items + 1, 0), dtype=np.float32),
        has_acoustic=np.zeros(n_items + 1, dtype=bool),
        track_length=np.full(n_items + 1, np.nan, dtype=np.float32),
    )
    counts = np.bincount(item[window == PRE], minlength=n_items + 1).astype(np.int64)
    return Dataset(
        user_idx=user[order].astype(np.int32),
        item_idx=item[order].astype(np.int32),
        ts=ts[order],
        window=window[order].astype(np.int8),
        n_users=n_users,
        n_items=n_items,
        items=features,
        item_counts=counts,
    )


def make_histories(rows: list[list[int]]) -> UserItems:
    """UserItems with one row per list; timestamps are the positions (strictly increasing)."""
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = np.array([i for r in rows for i in r], dtype=np.int32)
    return UserItems(indptr, items, np.arange(len(items), dtype=np.int64))


def random_dataset(seed: int, n_users: int = 40, n_items: int = 30, n_events: int = 900):
    """Events over all four windows with a skewed item distribution (many repeats)."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n_events)
    weights = 1.0 / np.arange(1, n_items + 1)
    items = rng.choice(np.arange(1, n_items + 1), size=n_events, p=weights / weights.sum())
    ts = rng.integers(0, 1_000, n_events)
    window = np.searchsorted([600, 750, 850], ts, side="right")  # 0..3 in time order
    return make_dataset(list(zip(users, items, ts, window, strict=True)), n_users, n_items)


def two_blocks(n_users_per_block: int = 30, n_items_per_block: int = 6) -> Dataset:
    """Block A users play only items 1..6, block B users only items 7..12, in every window."""
    rng = np.random.default_rng(7)
    blocks = np.arange(1, 2 * n_items_per_block + 1).reshape(2, n_items_per_block)
    events = []
    for user in range(2 * n_users_per_block):
        block = blocks[int(user >= n_users_per_block)]
        for window, (t0, t1) in enumerate([(0, 100), (100, 150), (150, 200), (200, 250)]):
            for item in rng.choice(block, size=3 if window == PRE else 2, replace=False):
                events.append((user, int(item), int(rng.integers(t0, t1)), window))
    return make_dataset(events, 2 * n_users_per_block, 2 * n_items_per_block)


# --------------------------------------------------------------------------- references


def reference_complete(ranked: list[list[tuple[int, float]]], popular, seen, k):
    """Slow reference of the popularity fill: one Python loop per row."""
    out_items, out_scores = [], []
    for row, cands in enumerate(ranked):
        items = [i for i, _ in cands][:k]
        scores = [s for _, s in cands][:k]
        floor = min(scores) if scores else 0.0
        blocked = set(items) | (set(seen[row]) if seen is not None else set())
        fill = [i for i in popular if i not in blocked]
        if len(items) + len(fill) < k:  # the catalog is exhausted: seen items complete it
            fill += [i for i in popular if i not in set(items) | set(fill)]
        fill = fill[: k - len(items)]
        out_items.append(items + fill)
        out_scores.append(scores + [floor - 1.0 - j for j in range(len(fill))])
    return np.array(out_items), np.array(out_scores, dtype=np.float32)


def reference_popular_order(counts: np.ndarray) -> list[int]:
    return sorted(range(1, len(counts)), key=lambda i: (-counts[i], i))


def assert_valid_rows(items, scores, histories, users, k, n_items, filter_seen):
    """Full rows, no padding, no duplicate, scores non-increasing, and with ``filter_seen`` no
    seen item unless the unseen catalog is exhausted (then every unseen item comes first)."""
    assert items.shape == scores.shape == (len(users), k)
    assert items.dtype == np.int64 and scores.dtype == np.float32
    assert items.min() >= 1 and items.max() <= n_items
    assert all(len(set(row)) == k for row in items.tolist())
    assert np.all(np.diff(scores, axis=1) <= 0)
    if not filter_seen:
        return
    for row, user in zip(items.tolist(), users, strict=True):
        unseen = set(range(1, n_items + 1)) - set(histories.row(user).tolist())
        assert set(row[: len(unseen)]) <= unseen
        assert set(row) >= unseen or set(row) <= unseen


# --------------------------------------------------------------------------- ranking helpers


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_top_k_per_row_matches_sort_per_row(seed):
    rng = np.random.default_rng(seed)
    n_rows, k = 30, 4
    counts = rng.integers(0, 12, n_rows)
    counts[0] = 0  # a row without candidates
    rows = np.repeat(np.arange(n_rows), counts)
    items = np.concatenate([rng.permutation(np.arange(1, 20))[:n] for n in counts])
    # Few distinct values, negatives and both zeros: ties at the cut are the common case.
    scores = rng.choice(np.array([-2.5, -1.0, -0.0, 0.0, 0.5, 3.0], np.float32), len(rows))
    tiebreak = rng.permutation(len(rows)).astype(np.float64)
    shuffle = rng.permutation(len(rows))  # input order must not matter
    rows, items, scores, tiebreak = (
        rows[shuffle],
        items[shuffle],
        scores[shuffle],
        tiebreak[shuffle],
    )
    got_items, got_scores = top_k_per_row(rows, items, scores, tiebreak, n_rows, k)
    for row in range(n_rows):
        mask = rows == row
        ranked = sorted(zip(-scores[mask], -tiebreak[mask], items[mask], strict=True))[:k]
        assert got_items[row].tolist() == [int(i) for *_, i in ranked] + [EMPTY] * (k - len(ranked))
        assert got_scores[row, : len(ranked)].tolist() == [-s for s, *_ in ranked]
        assert np.all(np.isneginf(got_scores[row, len(ranked) :]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fill_popular_matches_loop(seed):
    rng = np.random.default_rng(seed)
    n_items, k, n_rows = 12, 5, 20
    popular = rng.permutation(np.arange(1, n_items + 1)).astype(np.int64)
    ranked, seen = [], []
    for _ in range(n_rows):
        n = int(rng.integers(0, k + 1))
        items = rng.choice(np.arange(1, n_items + 1), size=n, replace=False)
        ranked.append(list(zip(items.tolist(), np.sort(rng.random(n))[::-1].tolist(), strict=True)))
        seen.append(rng.choice(np.arange(1, n_items + 1), size=int(rng.integers(0, 11))).tolist())
    table = np.full((n_rows, k), EMPTY, dtype=np.int64), np.full((n_rows, k), -np.inf, np.float32)
    for row, cands in enumerate(ranked):
        table[0][row, : len(cands)] = [i for i, _ in cands]
        table[1][row, : len(cands)] = [s for _, s in cands]
    got = fill_popular(*table, popular, make_histories(seen))
    expected = reference_complete(ranked, popular.tolist(), seen, k)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-6)


# --------------------------------------------------------------------------- popularity

HANDMADE = [
    # user, item, ts, window: pretrain counts 3:4, 1:2, 2:2, 4:1, 5:0
    (0, 3, 1, PRE), (0, 3, 2, PRE), (0, 1, 3, PRE), (1, 3, 1, PRE), (1, 2, 2, PRE),
    (1, 1, 3, PRE), (2, 3, 1, PRE), (2, 2, 2, PRE), (2, 4, 3, PRE),
    # later windows must not count: item 5 is the most played after the training window
    (0, 5, 10, FT), (1, 5, 11, FT), (2, 5, 12, VAL), (0, 5, 20, TEST), (1, 5, 21, TEST),
]  # fmt: skip


def test_popularity_exact_order_from_training_window_only():
    data = make_dataset(HANDMADE, n_users=3, n_items=5)
    model = Popularity().fit(data)
    items, scores = model.recommend(data.history(TEST), np.array([0, 2]), 5)
    assert items.tolist() == [[3, 1, 2, 4, 5]] * 2  # ties 1/2 by lower index
    assert scores.tolist() == [[4, 2, 2, 1, 0]] * 2


def test_popularity_filter_seen():
    data = make_dataset(HANDMADE, n_users=3, n_items=5)
    histories = make_histories([[3, 2], [], [5, 5, 1]])
    items, scores = (
        Popularity().fit(data).recommend(histories, np.array([0, 1, 2]), 3, filter_seen=True)
    )
    assert items.tolist() == [[1, 4, 5], [3, 1, 2], [3, 2, 4]]
    assert scores.tolist() == [[2, 1, 0], [4, 2, 2], [4, 2, 1]]


# --------------------------------------------------------------------------- user popular


def test_user_popular_exact_order_tie_rule_and_fill():
    data = make_dataset(HANDMADE, n_users=3, n_items=5)  # popularity: 3, 1, 2, 4, 5
    # Counts 2:2, 5:2, 4:1, 1:1; 5 was replayed after 2, 1 after 4 -> 5, 2, 1, 4; fill 3.
    histories = make_histories([[2, 5, 2, 4, 5, 1], []])
    items, scores = UserPopular().fit(data).recommend(histories, np.array([0, 1]), 5)
    assert items.tolist() == [[5, 2, 1, 4, 3], [3, 1, 2, 4, 5]]
    assert scores.tolist() == [[2, 2, 1, 1, 0], [-1, -2, -3, -4, -5]]


def test_user_popular_equal_timestamps_break_by_history_order():
    data = make_dataset(HANDMADE, n_users=3, n_items=5)
    histories = UserItems(np.array([0, 3]), np.array([4, 2, 1], np.int32), np.array([7, 7, 7]))
    items, _ = UserPopular().fit(data).recommend(histories, np.array([0]), 3)
    assert items.tolist() == [[1, 2, 4]]  # same time: the later position counts as more recent


def test_user_popular_filter_seen_is_popularity_over_unheard():
    data = make_dataset(HANDMADE, n_users=3, n_items=5)
    histories = make_histories([[2, 5, 2, 4, 5, 1]])
    model = UserPopular().fit(data)
    items, _ = model.recommend(histories, np.array([0]), 1, filter_seen=True)
    assert items.tolist() == [[3]]
    # Only one unheard track is left: the row is completed with popular heard ones.
    items, _ = model.recommend(histories, np.array([0]), 3, filter_seen=True)
    assert items.tolist() == [[3, 1, 2]]


@pytest.mark.parametrize("filter_seen", [False, True])
def test_user_popular_matches_per_user_loop(filter_seen):
    data = random_dataset(seed=3)
    histories, users, k = data.history(TEST), np.arange(data.n_users), 8
    model = UserPopular().fit(data)
    items, scores = model.recommend(histories, users, k, filter_seen=filter_seen)
    ranked, seen = [], []
    for user in users:
        row = histories.row(user).tolist()
        last = {item: pos for pos, item in enumerate(row)}
        counts = Counter(row)
        order = sorted(counts, key=lambda i: (-counts[i], -last[i]))
        ranked.append([] if filter_seen else [(i, float(counts[i])) for i in order])
        seen.append(row)
    popular = reference_popular_order(model.item_counts)
    expected = reference_complete(ranked, popular, seen if filter_seen else None, k)
    np.testing.assert_array_equal(items, expected[0])
    np.testing.assert_array_equal(scores, expected[1])


# --------------------------------------------------------------------------- item kNN


def test_itemknn_recommends_the_co_listened_item_first():
    # Item 2 is co-listened with item 1 by three users, item 3 by one; item 4 never with 1.
    events = [(u, 1, 1, PRE) for u in range(4)] + [(u, 2, 2, PRE) for u in range(3)]
    events += [(3, 3, 3, PRE)] + [(u, 4, 1, PRE) for u in range(4, 9)]
    data = make_dataset(events, n_users=10, n_items=5)
    model = ItemKNN(neighbours=10, weighting="cosine", num_threads=1).fit(data)
    histories = make_histories([[1]] + [[]] * 9)
    items, _ = model.recommend(histories, np.array([0]), 4, filter_seen=True)
    assert items.tolist() == [[2, 3, 4, 5]]  # votes 2 > 3, then popularity fills: 4, 5


@pytest.mark.parametrize("filter_seen", [False, True])
def test_itemknn_cosine_equals_brute_force(filter_seen):
    data = random_dataset(seed=5)
    n = data.n_items
    model = ItemKNN(neighbours=n + 1, weighting="cosine", num_threads=1).fit(data)
    histories, users, k = data.history(TEST), np.arange(data.n_users), 10
    items, scores = model.recommend(histories, users, k, filter_seen=filter_seen)

    plays = np.zeros((data.n_users, n + 1))
    np.add.at(plays, (data.user_idx[data.window == PRE], data.item_idx[data.window == PRE]), 1.0)
    norms = np.linalg.norm(plays, axis=0)
    unit = np.divide(plays, norms, out=np.zeros_like(plays), where=norms > 0)
    sim = unit.T @ unit  # [N + 1, N + 1] cosine between item columns
    ranked, seen = [], []
    for user in users:
        row = histories.row(user).tolist()
        query = np.bincount(row, minlength=n + 1).astype(float)
        dense = query @ sim
        voted = [i for i in range(1, n + 1) if (sim[row, i] > 0).any()]
        voted = [i for i in voted if not (filter_seen and i in row)]
        order = sorted(voted, key=lambda i: (-round(dense[i], 5), i))
        ranked.append([(i, dense[i]) for i in order])
        seen.append(row)
    popular = reference_popular_order(model.item_counts)
    expected = reference_complete(ranked, popular, seen if filter_seen else None, k)
    np.testing.assert_array_equal(items, expected[0])
    np.testing.assert_allclose(scores, expected[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_user_chunks_cover_every_user_within_the_budget(seed):
    rng = np.random.default_rng(seed)
    n_users, n_items, neighbours = int(rng.integers(1, 60)), 40, int(rng.integers(1, 8))
    histories = make_histories(
        [rng.integers(1, n_items + 1, rng.integers(0, 12)).tolist() for _ in range(n_users)]
    )
    plays = play_matrix(histories, n_items)
    budget = int(rng.integers(1, 200)) * ENTRY_BYTES
    chunks = user_chunks(plays, neighbours, budget)
    assert [lo for lo, _ in chunks] == [0] + [hi for _, hi in chunks[:-1]]
    assert chunks[-1][1] == n_users and all(hi > lo for lo, hi in chunks)
    for lo, hi in chunks:
        bound = sum(
            min(n_items + 1, len(set(histories.row(u).tolist())) * neighbours)
            for u in range(lo, hi)
        )
        assert bound * ENTRY_BYTES <= budget or hi == lo + 1  # a user above it is alone
        if hi < n_users:  # the next user would not have fitted (chunks are as long as they can)
            extra = min(n_items + 1, len(set(histories.row(hi).tolist())) * neighbours)
            assert (bound + extra) * ENTRY_BYTES > budget


@pytest.mark.parametrize("filter_seen", [False, True])
def test_itemknn_in_small_chunks_equals_one_chunk(filter_seen):
    data = random_dataset(seed=9, n_users=60)
    histories, users = data.history(TEST), np.arange(data.n_users)
    whole = ItemKNN(neighbours=5, weighting="bm25", num_threads=1).fit(data)
    small = ItemKNN(neighbours=5, weighting="bm25", num_threads=1, chunk_bytes=64 * ENTRY_BYTES)
    small.fit(data)
    assert len(user_chunks(play_matrix(histories, data.n_items), 5, small.chunk_bytes)) > 10
    expected = whole.recommend(histories, users, 10, filter_seen=filter_seen)
    got = small.recommend(histories, users, 10, filter_seen=filter_seen)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


def test_itemknn_bm25_equals_implicit_per_user_recommend():
    data = random_dataset(seed=6)
    model = ItemKNN(neighbours=5, weighting="bm25", num_threads=1).fit(data)
    histories, users = data.history(TEST), np.arange(data.n_users)
    items, scores = model.recommend(histories, users, 6, filter_seen=True)

    from implicit.nearest_neighbours import BM25Recommender

    reference = BM25Recommender(K=5, num_threads=1)
    with implicit_scope():
        reference.fit(play_matrix(data.train(), data.n_items), show_progress=False)
    plays = play_matrix(histories, data.n_items)[users]
    ref_items, ref_scores = reference.recommend(
        users, plays, N=6, filter_already_liked_items=True, recalculate_user=True
    )
    # implicit completes a row that has fewer votes with arbitrary items scored 0 (or -1 ids).
    voted = (ref_items >= 0) & (ref_scores > 0)
    assert voted.sum() > voted.size // 2  # the comparison covers most slots
    np.testing.assert_allclose(scores[voted], ref_scores[voted], rtol=1e-5)
    # implicit orders equal scores arbitrarily: check each of our items has the slot's score
    # in implicit's full ranking instead of comparing ids.
    full_items, full_scores = reference.recommend(
        users, plays, N=data.n_items + 1, filter_already_liked_items=True, recalculate_user=True
    )
    for row in range(len(users)):
        score_of = dict(zip(full_items[row].tolist(), full_scores[row].tolist(), strict=True))
        for item, score in zip(items[row][voted[row]], scores[row][voted[row]], strict=True):
            assert score_of[int(item)] == pytest.approx(score, rel=1e-5)


def test_itemknn_ignores_items_seen_only_after_training():
    data = make_dataset(HANDMADE, n_users=3, n_items=5)
    model = ItemKNN(neighbours=10, weighting="cosine", num_threads=1).fit(data)
    assert model.similarity[5].nnz == 0 and model.similarity[:, 5].nnz == 0


# --------------------------------------------------------------------------- ALS


def small_als(**setting) -> ALS:
    # Two factors: the rank of the two-block structure (more of them overfit 60 users).
    params = {"factors": 2, "regularization": 0.01, "alpha": 5.0, **setting}
    return ALS(**params, iterations=10, seed=0, num_threads=1)


def test_als_learns_two_blocks():
    data = two_blocks()
    model = small_als().fit(data)
    block_a, block_b = set(range(1, 7)), set(range(7, 13))
    # New queries (not training rows): the block of the history decides the recommendations.
    histories = make_histories([[1, 2], [7, 9], [3, 3, 4, 5], [11, 12]])
    items, _ = model.recommend(histories, np.arange(4), 6)
    assert [set(row) for row in items.tolist()] == [block_a, block_b, block_a, block_b]
    items, _ = model.recommend(histories, np.arange(4), 4, filter_seen=True)
    assert set(items[0].tolist()) == block_a - {1, 2}
    assert set(items[1].tolist()) == block_b - {7, 9}
    assert set(items[2, :3].tolist()) == block_a - {3, 4, 5}  # then the best of block B
    assert set(items[3].tolist()) == block_b - {11, 12}


def test_als_is_deterministic_and_blind_to_later_windows():
    data = make_dataset(HANDMADE, n_users=3, n_items=5)
    first, second = small_als().fit(data), small_als().fit(data)
    np.testing.assert_array_equal(first._model.item_factors, second._model.item_factors)
    np.testing.assert_array_equal(first._model.item_factors[5], 0.0)  # played after training


def test_als_refit_scores_with_its_new_factors():
    """The item factors copied to the scan's device once per fit are the last fit's."""
    first, second = random_dataset(seed=21), random_dataset(seed=22)
    users = np.arange(first.n_users)
    model = small_als().fit(first)
    model.recommend(first.history(TEST), users, 5)
    refit = model.fit(second).recommend(second.history(TEST), users, 5)
    fresh = small_als().fit(second).recommend(second.history(TEST), users, 5)
    np.testing.assert_array_equal(refit[0], fresh[0])
    np.testing.assert_allclose(refit[1], fresh[1], rtol=1e-6)


def test_for_gpu_narrows_int64_indices_and_keeps_the_matrix():
    rng = np.random.default_rng(3)
    dense = (rng.random((7, 9)) < 0.3) * rng.random((7, 9)).astype(np.float32)
    wide = sp.csr_matrix(dense)
    wide.indices, wide.indptr = wide.indices.astype(np.int64), wide.indptr.astype(np.int64)
    narrow, why = for_gpu(wide)
    assert why == "" and narrow.indices.dtype == np.int32 and narrow.indptr.dtype == np.int32
    np.testing.assert_array_equal(narrow.toarray(), dense)
    assert for_gpu(narrow)[0] is narrow  # already int32: the same matrix


class Shape:
    """The attributes ``for_gpu`` reads, of a matrix too large to allocate here."""

    def __init__(self, nnz: int, shape: tuple[int, int]):
        self.nnz, self.shape = nnz, shape


@pytest.mark.parametrize(
    "matrix", [Shape(2**31, (10, 10)), Shape(5, (2**31, 3)), Shape(5, (3, 2**31 + 7))]
)
def test_for_gpu_refuses_what_int32_cannot_index(matrix):
    narrow, why = for_gpu(matrix)
    assert narrow is None and "int32" in why and f"{matrix.nnz:,} entries" in why


def test_als_falls_back_to_the_cpu_when_the_gpu_cannot_take_the_matrix(monkeypatch, caplog):
    data = two_blocks()
    monkeypatch.setattr(als_module, "for_gpu", lambda m: (None, "too many entries"))
    with caplog.at_level(logging.WARNING, logger="recmodel.baselines.als"):
        forced = small_als(use_gpu=True).fit(data)
    assert "ALS fits on the CPU: too many entries" in caplog.text
    cpu = small_als(use_gpu=False).fit(data)
    np.testing.assert_array_equal(forced._model.item_factors, cpu._model.item_factors)


def test_fit_before_reads_exactly_the_earlier_windows():
    data = make_dataset(HANDMADE, n_users=3, n_items=5)
    for before in (FT, VAL, TEST):
        model = Popularity().fit(data, before=before)
        expected = np.bincount(data.item_idx[data.window < before], minlength=6)
        np.testing.assert_array_equal(model.item_counts[1:], expected[1:])
    with pytest.raises(ValueError, match="never fits on the test window"):
        Popularity().fit(data, before=TEST + 1)


# --------------------------------------------------------------------------- every model


@pytest.mark.parametrize("name", list(BASELINES))
@pytest.mark.parametrize("filter_seen", [False, True])
def test_every_baseline_returns_full_valid_rows(name, filter_seen):
    data = random_dataset(seed=11)
    cfg = BaselinesConfig(itemknn_neighbours=(5,), als_factors=(4,), als_iterations=5)
    (model,) = build_baselines(cfg, [name], BuildOptions(num_threads=1))
    model.fit(data)
    histories = data.history(TEST)
    users = np.arange(data.n_users)  # includes users without any history
    for k in (7, data.n_items):  # k = catalog: every row is a permutation of the catalog
        items, scores = model.recommend(histories, users, k, filter_seen=filter_seen)
        assert_valid_rows(items, scores, histories, users, k, data.n_items, filter_seen)


@pytest.mark.parametrize("name", list(BASELINES))
def test_recommend_leaves_the_histories_untouched(name):
    data = random_dataset(seed=12)
    (model,) = build_baselines(BaselinesConfig(als_factors=(2,)), [name], BuildOptions(1))
    histories = data.history(TEST)
    before = (histories.indptr.copy(), histories.items.copy(), histories.ts.copy())
    model.fit(data).recommend(histories, np.arange(data.n_users), 5, filter_seen=True)
    for array, copy in zip((histories.indptr, histories.items, histories.ts), before, strict=True):
        np.testing.assert_array_equal(array, copy)


@pytest.mark.parametrize("name", list(BASELINES))
@pytest.mark.parametrize("filter_seen", [False, True])
def test_recommend_in_small_query_chunks_equals_one_call(name, filter_seen, monkeypatch):
    data = random_dataset(seed=13, n_users=60, n_events=1_500)
    cfg = BaselinesConfig(itemknn_neighbours=(5,), als_factors=(4,), als_iterations=5)
    (model,) = build_baselines(cfg, [name], BuildOptions(num_threads=1))
    model.fit(data)
    histories = data.history(TEST)
    users = np.random.default_rng(0).permutation(data.n_users)
    whole = model.recommend(histories, users, 8, filter_seen=filter_seen)
    monkeypatch.setattr(base_module, "QUERY_CHUNK_EVENTS", 37)
    assert len(row_runs(histories.lengths[users], 37)) > 10
    chunked = model.recommend(histories, users, 8, filter_seen=filter_seen)
    np.testing.assert_array_equal(chunked[0], whole[0])
    np.testing.assert_allclose(chunked[1], whole[1], rtol=1e-6)


def test_play_matrix_counts_plays_without_reordering_its_input():
    histories = make_histories([[3, 1, 3], [], [2]])
    plays = play_matrix(histories, n_items=3)
    assert plays.toarray().tolist() == [[0, 1, 0, 2], [0, 0, 0, 0], [0, 0, 1, 0]]
    assert histories.items.tolist() == [3, 1, 3, 2]


def test_build_baselines_takes_the_first_setting_of_each_grid():
    cfg = BaselinesConfig(
        itemknn_neighbours=(7, 9), itemknn_weighting=("cosine",), als_factors=(3, 5), seed=4
    )
    models = build_baselines(cfg)
    assert [m.name for m in models] == [
        "popularity", "user_popular", "user_recent", "itemknn", "als",
    ]  # fmt: skip
    knn, als = models[3], models[4]
    assert (knn.neighbours, knn.weighting) == (7, "cosine")
    assert (als.factors, als.regularization, als.alpha, als.seed) == (3, 0.01, 1.0, 4)
    grid = grid_points(BASELINES["als"].axes(cfg))
    assert grid[:2] == [
        {"factors": 3, "regularization": 0.01, "alpha": 1.0},
        {"factors": 3, "regularization": 0.01, "alpha": 10.0},
    ]
    assert len(grid) == 2 * 3 * 4
    with pytest.raises(ValueError, match="unknown baseline"):
        build_baselines(cfg, ["popularity", "svd"])


def test_recommend_checks_its_arguments():
    data = make_dataset(HANDMADE, n_users=3, n_items=5)
    histories = data.history(TEST)
    with pytest.raises(RuntimeError, match="before fit"):
        Popularity().recommend(histories, np.array([0]), 2)
    model = Popularity().fit(data)
    with pytest.raises(ValueError, match="k must be"):
        model.recommend(histories, np.array([0]), 6)
    with pytest.raises(ValueError, match="users must be"):
        model.recommend(histories, np.array([3]), 2)


# --------------------------------------------------------------------------- run_baselines


class Exploding(Recommender):
    name = "exploding"

    def _fit(self, plays):
        raise RuntimeError("boom")

    def _candidates(self, query, k, filter_seen, now):  # pragma: no cover - never reached
        raise AssertionError


def run(name_or_baseline, data, users, k, cfg=None):
    baseline = (
        BASELINES[name_or_baseline] if isinstance(name_or_baseline, str) else name_or_baseline
    )
    cfg = cfg or BaselinesConfig()
    outputs, targets = run_baselines([baseline], cfg, BuildOptions(1), data, users, k, False)
    expected = data.events_in(TEST).take(users)
    assert np.array_equal(targets.indptr, expected.indptr)
    assert np.array_equal(targets.items, expected.items)
    return outputs[baseline.name]


def test_run_baseline_reports_a_failure(caplog):
    data = make_dataset(HANDMADE, n_users=3, n_items=5)
    exploding = Baseline("exploding", lambda cfg: {}, lambda p, cfg, opts: Exploding())
    with caplog.at_level(logging.ERROR, logger="recmodel.baselines.registry"):
        out = run(exploding, data, np.array([0]), 2)
    assert out["status"] == "failed" and out["name"] == "exploding"
    assert out["error"] == "RuntimeError: boom"
    assert "raise RuntimeError" in out["traceback"]
    assert "baseline exploding failed" in caplog.text


def test_run_baseline_returns_recommendations_and_timings():
    data = make_dataset(HANDMADE, n_users=3, n_items=5)
    out = run("user_popular", data, np.array([2, 0]), 4)
    assert out["status"] == "ok" and out["name"] == "user_popular"
    assert out["items"].shape == out["scores"].shape == (2, 4)
    # User 0 heard 3 twice, then 1 and 5 once (5 later, in the finetune window); fill: 2.
    assert out["items"][1].tolist() == [3, 5, 1, 2]
    assert out["fit_seconds"] >= 0 and out["recommend_seconds"] >= 0
    assert out["model_size"] == 6 and out["tuning"] == [] and out["params"] == {}
    assert "refit on every event before the test window" in out["refit"]
    assert out["tuned_on"] is None  # nothing was searched


def test_run_baseline_says_how_many_validation_users_scored_its_settings():
    data = two_blocks()
    every = len(validation_requests(data).users)
    cfg = BaselinesConfig(user_recent_tau_days=(1.0, 7.0), tune_users=5)
    out = run("user_recent", data, np.arange(4), 4, cfg)
    assert len(out["tuning"]) == 2
    assert out["tuned_on"] == f"5 validation users (a seeded sample of {every})"


def test_model_sizes():
    data = two_blocks()
    assert 0 < ItemKNN(neighbours=3, num_threads=1).fit(data).model_size <= 13 * 3
    assert small_als().fit(data).model_size == (13 + data.n_users) * 2


@pytest.mark.parametrize("name", list(BASELINES))
def test_users_without_history_get_popularity(name):
    data = make_dataset(HANDMADE, n_users=3, n_items=5)
    (model,) = build_baselines(BaselinesConfig(als_factors=(2,)), [name], BuildOptions(1))
    empty = UserItems(np.zeros(4, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64))
    items, _ = model.fit(data).recommend(empty, np.array([0, 1, 2]), 2)
    assert items.tolist() == [[3, 1]] * 3


def test_itemknn_too_large_for_its_limit_is_skipped_with_the_reason():
    data = random_dataset(0)
    cfg = BaselinesConfig(itemknn_memory_limit="1KB")
    out = run("itemknn", data, np.arange(5), 3, cfg)
    assert out["status"] == "skipped" and out["name"] == "itemknn"
    assert out["error"].startswith("skipped: the similarity of 30 tracks x 200 neighbours")
    assert "baselines.itemknn_memory_limit = '1KB'" in out["error"]
    assert run("itemknn", data, np.arange(5), 3)["status"] == "ok"  # the default 16 GB


@pytest.mark.parametrize("seed", range(3))
def test_itemknn_fit_bytes_bound_the_fitted_similarity(seed):
    data = random_dataset(seed, n_users=60, n_items=80, n_events=3_000)
    model = ItemKNN(neighbours=10, weighting="cosine", num_threads=1)
    model.fit(data)
    similarity = model.similarity
    held = similarity.data.nbytes + similarity.indices.nbytes + similarity.indptr.nbytes
    assert held <= fit_bytes(data.n_items, len(data.item_idx), 10, 1)


def test_a_bad_itemknn_memory_limit_is_a_config_error():
    with pytest.raises(ConfigError, match="itemknn_memory_limit 'lots' is not a size"):
        BaselinesConfig(itemknn_memory_limit="lots")
