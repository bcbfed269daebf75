"""The ranker's boosters fit on a sample of whole users when the candidates exceed
``ranker.max_train_rows``: within the budget, never on the fold they score, every row scored."""

import numpy as np
import pytest

from recmodel.core.config import RankerConfig
from recmodel.ranker.crossfit import cross_fit, make_classifier, sampled_users
from recmodel.ranker.splits import user_folds


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("budget", [0, 1, 37, 150, 10_000])
def test_a_sample_takes_whole_users_within_the_budget_and_no_user_that_would_fit(seed, budget):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 40, size=300)
    rows = rng.random(300) < 0.7
    sample = sampled_users(users, rows, budget, seed)
    assert not (sample & ~rows).any()
    if budget == 0 or rows.sum() <= budget:
        np.testing.assert_array_equal(sample, rows)
        return
    assert sample.sum() <= budget
    taken = set(users[sample].tolist())
    for user in np.unique(users[rows]):
        mine = rows & (users == user)
        assert sample[mine].all() == (user in taken) and sample[mine].any() == (user in taken)
        if user not in taken:  # left out only because it did not fit any more
            assert sample.sum() + mine.sum() > budget
    np.testing.assert_array_equal(sample, sampled_users(users, rows, budget, seed))


class Recording:
    """A classifier that remembers what it was fit on and scores every row 0."""

    fitted: list[np.ndarray] = []

    def fit(self, features, labels):
        Recording.fitted.append(features.copy())
        return self

    def decision_function(self, features):
        return np.zeros(len(features))


def candidates(seed: int, n_users: int = 60):
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), rng.integers(1, 12, size=n_users))
    # Column 0 is the user (to see who each model saw); column 1 a feature that varies.
    features = np.column_stack([users, rng.normal(size=len(users))]).astype(np.float64)
    labels = rng.random(len(users)) < 0.3
    return features, labels, users


@pytest.mark.parametrize("max_rows", [0, 40, 120])
def test_each_fold_model_sees_a_sample_of_the_other_folds_and_scores_every_row(max_rows):
    features, labels, users = candidates(1)
    trainable = np.random.default_rng(2).random(len(users)) < 0.9
    Recording.fitted = []
    fitted, scores = cross_fit(
        features, labels, users, 3, 5, Recording, trainable, max_rows=max_rows
    )
    assert len(scores) == len(users)
    folds = user_folds(users, 3, 5)
    *fold_fits, serving_fit = Recording.fitted
    assert [len(x) for x in Recording.fitted] == fitted.fit_rows
    for k, seen in enumerate(fold_fits):
        seen_users = set(seen[:, 0].astype(int).tolist())
        assert not seen_users & set(users[folds == k].tolist()), k  # never its own fold
        offered = (folds != k) & trainable
        assert len(seen) == sampled_users(users, offered, max_rows, 5 + k).sum()
        assert len(seen) == offered.sum() if max_rows == 0 else 0 < len(seen) <= max_rows
        # Whole users: each seen user's every offered row.
        for user in seen_users:
            assert (seen[:, 0] == user).sum() == (offered & (users == user)).sum()
    everyone = np.ones(len(users), dtype=bool)
    assert len(serving_fit) == sampled_users(users, everyone, max_rows, 5 + 3).sum()
    assert len(serving_fit) == len(users) if max_rows == 0 else 0 < len(serving_fit) <= max_rows


def test_under_the_budget_the_ranker_is_the_one_fit_on_every_row():
    features, labels, users = candidates(3, n_users=120)
    features[:, 0] = np.random.default_rng(4).normal(size=len(users))  # no user column here
    cfg = RankerConfig(max_iter=20, n_folds=2)
    args = (features, labels, users, cfg.n_folds, cfg.seed, lambda: make_classifier(cfg))
    _, every_row = cross_fit(*args, max_rows=0)
    _, under = cross_fit(*args, max_rows=len(users))
    np.testing.assert_array_equal(under, every_row)
    capped, sampled = cross_fit(*args, max_rows=len(users) // 3)
    assert max(capped.fit_rows) <= len(users) // 3
    assert not np.array_equal(sampled, every_row) and np.isfinite(sampled).all()
