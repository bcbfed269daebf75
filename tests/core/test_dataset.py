"""The in-memory data contract's helpers against plain loops."""

import numpy as np
import pytest

from recmodel.core.dataset import row_runs


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
