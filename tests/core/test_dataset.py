"""The in-memory data contract's helpers against plain loops."""

import numpy as np
import pytest

from recmodel.core.dataset import UserItems, row_runs


@pytest.mark.parametrize("seed", range(6))
def test_row_runs_are_the_longest_consecutive_runs_within_the_budget(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, 30, int(rng.integers(1, 60)))
    sizes[rng.integers(0, len(sizes), 3)] = 0
    budget = int(rng.integers(1, 90))
    runs = row_runs(sizes, budget)
    # A plain greedy loop: add rows while the run stays within the budget.
    expected, lo, total = [], 0, 0
    for row, size in enumerate(sizes):
        if row > lo and total + size > budget:
            expected.append((lo, row))
            lo, total = row, 0
        total += size
    expected.append((lo, len(sizes)))
    assert runs == expected
    for lo, hi in runs:
        assert sizes[lo:hi].sum() <= budget or hi == lo + 1  # a larger row is a run alone


def test_no_rows_is_one_empty_run():
    assert row_runs(np.zeros(0, np.int64), 10) == [(0, 0)]
    assert row_runs(np.array([5, 5]), 0) == [(0, 1), (1, 2)]  # a budget below one row


@pytest.mark.parametrize("seed", range(3))
def test_take_and_tails_are_the_rows_of_a_plain_loop(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 9, 25)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    history = UserItems(
        indptr,
        rng.integers(1, 50, indptr[-1]).astype(np.int32),
        np.sort(rng.integers(0, 10**6, indptr[-1])).astype(np.int64),
    )
    users = rng.integers(0, 25, 40)  # repeats and any order
    taken = history.take(users)
    for r, u in enumerate(users):
        np.testing.assert_array_equal(taken.row(r), history.row(u))
        np.testing.assert_array_equal(taken.row_ts(r), history.row_ts(u))
    n = int(rng.integers(0, 6))
    tails = history.tails(n)
    for u in range(history.n_users):
        keep = min(n, len(history.row(u)))
        np.testing.assert_array_equal(tails.row(u), history.row(u)[len(history.row(u)) - keep :])
        np.testing.assert_array_equal(
            tails.row_ts(u), history.row_ts(u)[len(history.row(u)) - keep :]
        )
