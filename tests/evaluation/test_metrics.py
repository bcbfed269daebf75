"""Chunked top-k (recmodel.evaluation.topk) against a full sort, metrics (recmodel.evaluation.metrics) against loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recmodel.core.dataset import UserItems
from recmodel.evaluation.metrics import evaluate, popularity_percentile
from recmodel.evaluation.topk import EMPTY, topk_chunked


def _user_items(rows: list[list[int]]) -> UserItems:
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=indptr[1:])
    items = np.array([i for r in rows for i in r], dtype=np.int32)
    return UserItems(indptr, items, np.zeros(len(items), dtype=np.int64))


def _random_rows(rng: np.random.Generator, n_users: int, n_items: int, max_len: int) -> UserItems:
    """Random per-user item lists, some empty, some with repeated items."""
    lengths = rng.integers(0, max_len + 1, size=n_users)
    return _user_items([list(rng.integers(1, n_items + 1, size=n)) for n in lengths])


def _dyadic(gen: torch.Generator, rows: int, dim: int) -> torch.Tensor:
    """Multiples of 1/8 in [-2, 2]: every dot product is exact in float32, whatever the
    summation order, so the expected order (ties included) is unambiguous."""
    return torch.randint(-16, 17, (rows, dim), generator=gen).float() / 8


def _reference_topk(users, items, k, exclude=None):
    """Full score matrix, then per user a plain sort by (score desc, id asc)."""
    scores = (users.double() @ items.double().T).numpy()  # [U, N + 1], exact for dyadic inputs
    ids = np.full((len(users), k), EMPTY, dtype=np.int64)
    top = np.full((len(users), k), -np.inf, dtype=np.float32)
    for u in range(len(users)):
        banned = {0} | (set(exclude.row(u).tolist()) if exclude is not None else set())
        eligible = [i for i in range(len(items)) if i not in banned]
        ranked = sorted(eligible, key=lambda i, u=u: (-scores[u, i], i))[:k]
        ids[u, : len(ranked)] = ranked
        top[u, : len(ranked)] = scores[u, ranked]
    return ids, top


@pytest.mark.parametrize(
    ("k", "chunk_items", "chunk_users"),
    [(1, 1, 1), (10, 7, 5), (10, 64, 64), (10, 1000, 13), (150, 64, 8), (30, 199, 100)],
)
def test_topk_chunked_equals_full_sort(k, chunk_items, chunk_users):
    gen = torch.Generator().manual_seed(k * 1000 + chunk_items)
    users, items = _dyadic(gen, 37, 3), _dyadic(gen, 201, 3)  # 200 items, 3 dims: many ties
    ids, scores = topk_chunked(users, items, k, chunk_items=chunk_items, chunk_users=chunk_users)
    want_ids, want_scores = _reference_topk(users, items, k)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(scores, want_scores)
    assert ids.dtype == np.int64 and scores.dtype == np.float32


@pytest.mark.parametrize(("chunk_items", "chunk_users"), [(16, 4), (33, 50), (500, 1)])
def test_topk_chunked_exclusion_equals_filter(chunk_items, chunk_users):
    gen = torch.Generator().manual_seed(chunk_items)
    users, items = _dyadic(gen, 40, 8), _dyadic(gen, 121, 8)
    exclude = _random_rows(np.random.default_rng(chunk_items), 40, 120, max_len=60)
    ids, scores = topk_chunked(
        users, items, 25, chunk_items=chunk_items, chunk_users=chunk_users, exclude=exclude
    )
    want_ids, want_scores = _reference_topk(users, items, 25, exclude)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(scores, want_scores)


def test_topk_chunked_fills_with_empty_when_too_few_items():
    items = torch.tensor([[0.0], [1.0], [3.0], [2.0]])  # 3 items
    exclude = _user_items([[2], [1, 2, 3]])
    ids, scores = topk_chunked(torch.ones(2, 1), items, 4, chunk_items=2, exclude=exclude)
    np.testing.assert_array_equal(ids, [[3, 1, EMPTY, EMPTY], [EMPTY] * 4])
    np.testing.assert_array_equal(scores[0], [2.0, 1.0, -np.inf, -np.inf])
    assert np.isneginf(scores[1]).all()


def test_topk_chunked_handcrafted_ties_go_to_lower_ids():
    items = torch.tensor([[9.0], [1.0], [3.0], [3.0], [2.0], [3.0]])  # row 0 = padding
    ids, scores = topk_chunked(torch.tensor([[1.0], [-1.0]]), items, 3, chunk_items=2)
    np.testing.assert_array_equal(ids, [[2, 3, 5], [1, 4, 2]])
    np.testing.assert_array_equal(scores, [[3, 3, 3], [-1, -2, -3]])


def test_topk_chunked_constant_scores_rank_by_id():
    """Popularity-like scores: every row has ties across every chunk boundary."""
    counts = torch.tensor([0, 5, 7, 5, 7, 7, 1, 5, 0, 7], dtype=torch.float32)[:, None]
    ids, _ = topk_chunked(torch.ones(3, 1), counts, 6, chunk_items=3, chunk_users=2)
    np.testing.assert_array_equal(ids, [[2, 4, 5, 9, 1, 3]] * 3)


def test_topk_chunked_never_returns_padding():
    gen = torch.Generator().manual_seed(3)
    users, items = _dyadic(gen, 20, 4).abs(), _dyadic(gen, 51, 4)
    items[0] = 100.0  # the padding row would win every user if it were scored
    ids, _ = topk_chunked(users, items, 50, chunk_items=8)
    assert (ids != 0).all() and (ids >= 1).all()
    assert all(len(set(row)) == 50 for row in ids.tolist())


def test_topk_chunked_rejects_bad_inputs():
    users, items = torch.ones(2, 3), torch.ones(5, 3)
    with pytest.raises(ValueError, match="item_vecs"):
        topk_chunked(users, torch.ones(5, 4), 2)
    with pytest.raises(ValueError, match="finite"):
        topk_chunked(users, items.index_fill(0, torch.tensor([2]), float("nan")), 2)
    with pytest.raises(ValueError, match="rows"):
        topk_chunked(users, items, 2, exclude=_user_items([[1]]))
    with pytest.raises(ValueError, match="outside"):
        topk_chunked(users, items, 2, exclude=_user_items([[1], [5]]))


def _reference_metrics(recs, targets, ks, counts, n_items):
    """One user at a time, straight from the definitions (DESIGN.md §3)."""
    pct = {
        i: 100.0 * sum(counts[j] < counts[i] for j in range(1, n_items + 1)) / (n_items - 1)
        for i in range(1, n_items + 1)
    }
    users, per_user, recommended = [], {}, {k: set() for k in ks}
    for u in range(targets.n_users):
        target = set(targets.row(u).tolist())
        if not target:
            continue
        users.append(u)
        for k in ks:
            top = [int(i) for i in recs[u, :k]]
            hits = [i > 0 and i in target for i in top]
            n_rel = min(len(target), k)
            dcg = sum(1 / math.log2(r + 2) for r, hit in enumerate(hits) if hit)
            idcg = sum(1 / math.log2(r + 2) for r in range(n_rel))
            valid = [i for i in top if i > 0]
            row = {
                f"recall@{k}": sum(hits) / n_rel,
                f"ndcg@{k}": dcg / idcg,
                f"hitrate@{k}": float(any(hits)),
                f"pop_pct@{k}": sum(pct[i] for i in valid) / len(valid) if valid else math.nan,
            }
            for name, value in row.items():
                per_user.setdefault(name, []).append(value)
            recommended[k].update(valid)
    coverage = {f"coverage@{k}": len(recommended[k]) / n_items for k in ks}
    return users, per_user, coverage


def test_evaluate_equals_python_loop():
    rng = np.random.default_rng(7)
    n_users, n_items, width, ks = 80, 40, 12, (1, 5, 10)
    recs = np.stack([rng.permutation(n_items)[:width] + 1 for _ in range(n_users)])
    recs[rng.random(recs.shape) < 0.1] = EMPTY  # some empty slots
    recs[5] = EMPTY  # a user with no recommendation at all: pop_pct is NaN
    targets = _random_rows(rng, n_users, n_items, max_len=8)
    counts = np.concatenate([[0], rng.integers(0, 6, size=n_items)])  # many ties
    got = evaluate(recs, targets, ks=ks, item_counts=counts, n_items=n_items)
    users, per_user, coverage = _reference_metrics(recs, targets, ks, counts, n_items)
    np.testing.assert_array_equal(got.users, users)
    assert list(got.per_user) == list(per_user)
    for name, values in per_user.items():
        np.testing.assert_allclose(got.per_user[name], values, rtol=1e-12, err_msg=name)
        assert got.summary[name] == pytest.approx(np.nanmean(values), rel=1e-12)
    for name, value in coverage.items():
        assert got.summary[name] == pytest.approx(value, rel=1e-12)
    assert got.summary["n_users"] == len(users)


def test_evaluate_handcrafted_exact_values():
    # User 0: T = {1, 2} (2 listed twice), recs [2, 5, 1]. User 1: no target, left out.
    # User 2: T = {4}, recs [3, 1, 2].
    targets = _user_items([[2, 1, 2], [], [4]])
    recs = np.array([[2, 5, 1], [1, 2, 3], [3, 1, 2]])
    counts = np.array([0, 10, 5, 5, 0, 1])  # percentiles of items 1..5: 100, 50, 50, 0, 25
    got = evaluate(recs, targets, ks=(2, 3), item_counts=counts, n_items=5)
    np.testing.assert_array_equal(got.users, [0, 2])
    ideal2 = 1 / math.log2(2) + 1 / math.log2(3)
    expected = {
        "recall@2": [1 / 2, 0.0],
        "ndcg@2": [(1 / math.log2(2)) / ideal2, 0.0],
        "hitrate@2": [1.0, 0.0],
        "pop_pct@2": [(50 + 25) / 2, (50 + 100) / 2],
        "recall@3": [1.0, 0.0],
        "ndcg@3": [(1 / math.log2(2) + 1 / math.log2(4)) / ideal2, 0.0],
        "hitrate@3": [1.0, 0.0],
        "pop_pct@3": [(50 + 25 + 100) / 3, (50 + 100 + 50) / 3],
    }
    assert list(got.per_user) == list(expected)
    for name, values in expected.items():
        np.testing.assert_allclose(got.per_user[name], values, rtol=1e-15, err_msg=name)
    assert got.summary["recall@2"] == pytest.approx(0.25, rel=1e-15)
    assert got.summary["coverage@2"] == pytest.approx(4 / 5)  # {2, 5, 3, 1}
    assert got.summary["coverage@3"] == pytest.approx(4 / 5)
    assert got.summary["n_users"] == 2


def test_evaluate_without_any_target_gives_nan_means():
    got = evaluate(
        np.array([[1, 2]]), _user_items([[]]), ks=(2,), item_counts=np.ones(3), n_items=2
    )
    assert len(got.users) == 0 and got.summary["n_users"] == 0
    assert math.isnan(got.summary["recall@2"]) and got.summary["coverage@2"] == 0.0


def test_evaluate_rejects_bad_inputs():
    targets, counts = _user_items([[1]]), np.ones(4)
    with pytest.raises(ValueError, match="repeats item 2"):
        evaluate(np.array([[2, 3, 2]]), targets, ks=(3,), item_counts=counts, n_items=3)
    with pytest.raises(ValueError, match="columns"):
        evaluate(np.array([[2, 3]]), targets, ks=(3,), item_counts=counts, n_items=3)
    with pytest.raises(ValueError, match="above n_items"):
        evaluate(np.array([[2, 4]]), targets, ks=(2,), item_counts=counts, n_items=3)
    with pytest.raises(ValueError, match="item_counts"):
        evaluate(np.array([[2, 3]]), targets, ks=(2,), item_counts=counts[:3], n_items=3)


def test_popularity_percentile_matches_definition():
    counts = np.array([0, 3, 0, 9, 3, 1])
    np.testing.assert_array_equal(
        popularity_percentile(counts, 5), [np.nan, 50.0, 0.0, 100.0, 50.0, 25.0]
    )


def test_topk_chunked_promotes_dtypes():
    gen = torch.Generator().manual_seed(11)
    users, items = _dyadic(gen, 9, 5), _dyadic(gen, 40, 5)
    want = topk_chunked(users, items, 7, chunk_items=6)
    for got in (
        topk_chunked(users.double(), items.double(), 7, chunk_items=6),
        topk_chunked(users.bfloat16(), items, 7, chunk_items=6),  # dyadic values are exact in bf16
    ):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_topk_chunked_on_cuda_equals_cpu():
    gen = torch.Generator().manual_seed(12)
    users, items = _dyadic(gen, 300, 8), _dyadic(gen, 5001, 8)
    exclude = _random_rows(np.random.default_rng(12), 300, 5000, max_len=50)
    want = topk_chunked(users, items, 100, chunk_items=777, chunk_users=64, exclude=exclude)
    got = topk_chunked(
        users.cuda(), items.cuda(), 100, chunk_items=777, chunk_users=64, exclude=exclude
    )
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
