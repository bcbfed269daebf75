"""Feature rows appended part by part read back the same in memory and from a file."""

import numpy as np
import pytest

from recmodel.ranker.crossfit import CrossFitted, usable_columns
from recmodel.ranker.feature_rows import FeatureRows


@pytest.mark.parametrize("seed", range(3))
def test_rows_on_disk_read_back_as_the_rows_in_memory(seed, tmp_path):
    rng = np.random.default_rng(seed)
    parts = [rng.normal(size=(int(rng.integers(0, 40)), 5)) for _ in range(4)]
    with (
        FeatureRows(5, on_disk=False) as memory,
        FeatureRows(5, on_disk=True, directory=str(tmp_path)) as disk,
    ):
        for part in parts:
            memory.append(part)
            disk.append(part)
        expected = np.concatenate(parts).astype(np.float32)
        np.testing.assert_array_equal(memory.array(), expected)
        np.testing.assert_array_equal(disk.array(), expected)
        assert disk.n_rows == len(expected) and len(list(tmp_path.iterdir())) == 1
        with pytest.raises(ValueError, match=r"must be \[n, 5\]"):
            disk.append(np.zeros((2, 4)))
    assert list(tmp_path.iterdir()) == []  # the file goes with the with-block
    with FeatureRows(3, on_disk=True, directory=str(tmp_path)) as empty:
        assert empty.array().shape == (0, 3)


class Sum:
    """A model whose score is the row's sum (enough to check which rows reach it)."""

    def decision_function(self, x):
        return x.sum(axis=1)


@pytest.mark.parametrize("seed", range(3))
def test_block_reads_score_and_screen_columns_as_a_plain_loop(seed, monkeypatch):
    import recmodel.ranker.crossfit as crossfit

    monkeypatch.setattr(crossfit, "ROW_BLOCK", 7)  # many blocks, and a short last one
    rng = np.random.default_rng(seed)
    n = 50
    x = rng.normal(size=(n, 6)).astype(np.float32)
    x[:, 1] = np.nan  # missing everywhere
    x[:, 2] = 3.0  # constant
    x[rng.random(n) < 0.5, 3] = np.nan
    x[:, 4] = np.where(np.arange(n) < 25, 1.0, 2.0)  # constant on the first rows only
    train = [np.arange(n) < 25, np.arange(n) >= 10]
    kept, dropped = usable_columns(x, train)
    assert kept.tolist() == [0, 3, 5]
    assert dropped == {
        1: "missing for every candidate",
        2: "constant (3) for every candidate",
        4: "constant (1) for the training rows of fold 0",
    }
    users = rng.integers(0, 20, n)
    fitted = CrossFitted([Sum(), Sum()], 2, seed, np.array([0, 5]), dropped)
    expected = np.array([x[i, [0, 5]].sum() for i in range(n)])
    np.testing.assert_allclose(fitted.score(x, users), expected, rtol=1e-6)
