"""The ranker: candidates, features, windows, cross-fitting, quality and the score tables."""

import math

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

import recmodel.ranker.features as rf
from recmodel.core.columns import Columns, Window
from recmodel.core.config import RankerConfig
from recmodel.core.dataset import ItemFeatures
from recmodel.core.errors import InputError
from recmodel.core.sql import SqlRunner, connect
from recmodel.ranker.candidates import (
    candidate_labels,
    candidates_from_topk,
    finetune_requests,
    order_within_requests,
    own_tracks,
    padded,
    popular_items,
    relabel_candidates,
)
from recmodel.ranker.crossfit import cross_fit, make_classifier
from recmodel.ranker.features import FEATURES, candidate_features
from recmodel.ranker.model import FOLD, LABEL, build_ranker_scores
from recmodel.ranker.quality import candidate_ndcg
from recmodel.ranker.score_tables import (
    check_ranker_scores_file,
    load_ranker_scores,
    with_original_ids,
)
from recmodel.ranker.splits import WindowLeakError, check_windows, holdout_mask, user_folds
from tests.helpers.ranker_data import FakeRetriever, dataset_from_events, toy_dataset

CFG = RankerConfig(n_candidates=8, n_popular_candidates=4, max_iter=20, max_leaf_nodes=7)
NAN = math.nan


# -- candidates --------------------------------------------------------------------------------


def test_candidates_merge_retrieved_and_popular_without_duplicates():
    topk = np.array([[1, 3], [2, -1]])  # -1: the retriever had no second item for user 9
    scores = np.array([[2.0, 1.0], [0.5, -np.inf]])
    cands = candidates_from_topk(
        np.array([4, 9]), np.array([100, 200]), topk, scores, popular=np.array([4, 2])
    )
    assert cands.indptr.tolist() == [0, 4, 6]
    assert cands.items.tolist() == [1, 3, 4, 2, 2, 4]
    assert cands.retriever_rank.tolist() == [0, 1, 2, 2, 0, 2]
    np.testing.assert_array_equal(cands.retriever_score, [2.0, 1.0, NAN, NAN, 0.5, NAN])
    assert cands.row_users.tolist() == [4, 4, 4, 4, 9, 9]


def test_relabel_takes_retriever_features_from_the_base_candidates():
    base = candidates_from_topk(
        np.array([4, 9]),
        np.array([100, 200]),
        np.array([[1, 3], [2, 5]]),
        np.array([[2.0, 1.0], [0.5, 0.25]]),
        popular=np.array([6]),
    )
    new = relabel_candidates(
        base,
        np.array([9, 4]),
        np.array([200, 100]),
        np.array([[5, 6, 1], [3, 7, 0]]),
        n_items=7,
        n_retrieved=2,
    )
    assert new.items.tolist() == [5, 6, 1, 3, 7]
    # 5 was retrieved for user 9 at rank 1; 6 was only popular; 1 belongs to user 4 only.
    np.testing.assert_array_equal(new.retriever_score, [0.25, NAN, NAN, 1.0, NAN])
    assert new.retriever_rank.tolist() == [1, 2, 2, 1, 2]
    assert new.indptr.tolist() == [0, 3, 5]


def test_popular_items_break_ties_by_lower_id():
    assert popular_items(np.array([99, 3, 5, 5, 0]), 3).tolist() == [2, 3, 1]


def test_padded_and_order_within_requests():
    indptr = np.array([0, 3, 3, 5])
    scores = np.array([0.1, 0.9, NAN, 2.0, 2.0])
    assert order_within_requests(indptr, scores).tolist() == [1, 0, 2, 3, 4]
    np.testing.assert_array_equal(
        padded(indptr, np.arange(5), -1, width=4), [[0, 1, 2, -1], [-1, -1, -1, -1], [3, 4, -1, -1]]
    )


# -- features ----------------------------------------------------------------------------------


def _handmade():
    """Two users; items 1..4 with hand-picked metadata (0 / NaN = unknown)."""
    items = ItemFeatures(
        artist=np.array([0, 1, 1, 2, 0]),
        album=np.zeros(5, dtype=np.int64),
        genre=np.array([0, 1, 2, 1, 0]),
        tempo_bucket=np.array([0, 2, 4, 0, 3]),
        acoustic=np.array([[0, 0], [1, 0], [0, 1], [1, 1], [0, 0]], dtype=np.float32),
        has_acoustic=np.array([False, True, True, True, False]),
        track_length=np.array([NAN, 100, 200, NAN, 300], dtype=np.float32),
    )
    events = [
        (0, 1, 100, 0),
        (0, 2, 200, 0),
        (0, 1, 300, 0),
        (0, 3, 400, 0),  # user 0's history
        (0, 4, 1000, 1),
        (0, 2, 1100, 1),
        (0, 3, 2000, 2),
        (0, 1, 3000, 3),
        (1, 2, 50, 0),
        (1, 1, 900, 1),
        (1, 4, 2500, 2),
    ]
    return dataset_from_events(np.array(events), 2, items)


def d(tau_days: float, *ages: float) -> float:
    """Plays ``ages`` seconds before a request, each weighing exp(-age / tau)."""
    return sum(np.exp(-a / (tau_days * 86_400.0)) for a in ages)


def test_features_exact_on_a_handmade_history(monkeypatch):
    monkeypatch.setattr(rf, "RECENT_LISTENS", 2)  # user 0's profile: items 1 (t=300), 3 (t=400)
    monkeypatch.setattr(rf, "RECENT_POPULARITY_SECONDS", 150)  # recent = t >= 401 - 150
    ds = _handmade()
    users, request_ts = finetune_requests(ds)
    assert users.tolist() == [0, 1] and request_ts.tolist() == [1000, 900]
    cands = candidates_from_topk(
        users,
        request_ts,
        np.array([[1, 3], [2, 4]]),
        np.array([[2.0, 1.0], [0.5, 0.1]]),
        popular=np.array([4, 2]),
    )
    assert cands.items.tolist() == [1, 3, 4, 2, 2, 4]
    runner = SqlRunner(connect())
    got = candidate_features(cands, ds.history(Window.FINETUNE), ds.items, ds.item_counts, runner)
    queries = runner.records
    cos = lambda a, b: np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b)  # noqa: E731
    expected = {
        "retriever_score": [2.0, 1.0, NAN, NAN, 0.5, 0.1],
        "retriever_rank": [0, 1, 2, 2, 0, 1],
        "item_count": [2, 1, 0, 2, 2, 0],
        "item_count_recent": [1, 1, 0, 0, 0, 0],
        "user_history_len": [4, 4, 4, 4, 1, 1],
        "user_item_count": [2, 1, 0, 1, 1, 0],
        "secs_since_item": [700, 600, NAN, 800, 850, NAN],
        "user_artist_count": [3, 1, NAN, 3, 1, NAN],
        "user_artist_share": [0.75, 0.25, NAN, 0.75, 1.0, NAN],
        "secs_since_artist": [700, 600, NAN, 700, 850, NAN],
        "user_genre_count": [3, 3, NAN, 1, 1, NAN],
        "user_genre_share": [0.75, 0.75, NAN, 0.25, 1.0, NAN],
        "tempo_dist": [0.0, NAN, 1.0, 2.0, 0.0, 1.0],
        "track_length": [100, NAN, 300, 200, 200, 300],
        # plays before each request, decayed by age: user 0 asks at 1000, user 1 at 900
        "user_item_decay_1d": [d(1, 900, 700), d(1, 600), 0, d(1, 800), d(1, 850), 0],
        "user_item_decay_7d": [d(7, 900, 700), d(7, 600), 0, d(7, 800), d(7, 850), 0],
        "user_item_decay_30d": [d(30, 900, 700), d(30, 600), 0, d(30, 800), d(30, 850), 0],
        "user_artist_decay_7d": [
            d(7, 900, 800, 700),  # artist 1: tracks 1, 2, 1
            d(7, 600),
            NAN,
            d(7, 900, 800, 700),
            d(7, 850),
            NAN,
        ],
        "user_item_decay_rank": [1, 2, NAN, 3, 1, NAN],  # by 7-day decay among played candidates
        "acoustic_cos": [
            cos([1, 0], [1, 0.5]),
            cos([1, 1], [1, 0.5]),
            NAN,
            cos([0, 1], [1, 0.5]),
            1.0,
            NAN,
        ],
    }
    assert list(expected) == list(FEATURES)
    for j, name in enumerate(FEATURES):
        np.testing.assert_allclose(got[:, j], expected[name], rtol=1e-6, err_msg=name)
    assert [q["file"] for q in queries] == ["sql/ranker/01_candidate_features.sql"]
    assert queries[0]["params"] == {"recent_listens": 2}
    assert queries[0]["rows"] == 6


def reference_features(ds, cands, recent_listens, recent_seconds):
    """Every feature of every candidate by plain loops over the events (slow, obvious)."""
    hist = [
        (int(u), int(i), int(t))
        for u, i, t, w in zip(ds.user_idx, ds.item_idx, ds.ts, ds.window, strict=True)
        if w < Window.FINETUNE
    ]
    recent_start = max(t for _, _, t in hist) + 1 - recent_seconds
    it = ds.items
    out = []
    for r in range(cands.n_requests):
        u, req = int(cands.users[r]), int(cands.request_ts[r])
        ev = sorted((t, i) for uu, i, t in hist if uu == u)
        recent = [i for _, i in ev[-recent_listens:]]
        tempos = [it.tempo_bucket[i] for i in recent if it.tempo_bucket[i] > 0]
        vecs = [it.acoustic[i].astype(float) for i in recent if it.has_acoustic[i]]
        profile = np.mean(vecs, axis=0) if vecs else None
        played = {
            int(j): d(7, *(req - t for t, jj in ev if jj == j))
            for j in cands.items[cands.indptr[r] : cands.indptr[r + 1]]
            if any(jj == j for _, jj in ev)
        }
        for row in range(cands.indptr[r], cands.indptr[r + 1]):
            i = int(cands.items[row])
            a, g = it.artist[i], it.genre[i]
            plays = [t for t, j in ev if j == i]
            art = [t for t, j in ev if it.artist[j] == a]
            gen = [t for t, j in ev if it.genre[j] == g]
            cos = NAN
            if profile is not None and it.has_acoustic[i]:
                v = it.acoustic[i].astype(float)
                cos = profile @ v / np.linalg.norm(profile) / np.linalg.norm(v)
            out.append(
                [
                    cands.retriever_score[row],
                    cands.retriever_rank[row],
                    sum(1 for _, j, _ in hist if j == i),
                    sum(1 for _, j, t in hist if j == i and t >= recent_start),
                    len(ev),
                    len(plays),
                    req - max(plays) if plays else NAN,
                    len(art) if a > 0 else NAN,
                    len(art) / len(ev) if a > 0 else NAN,
                    req - max(art) if a > 0 and art else NAN,
                    len(gen) if g > 0 else NAN,
                    len(gen) / len(ev) if g > 0 else NAN,
                    abs(it.tempo_bucket[i] - np.mean(tempos))
                    if it.tempo_bucket[i] > 0 and tempos
                    else NAN,
                    it.track_length[i],
                    *(d(tau, *(req - t for t in plays)) for tau in (1, 7, 30)),
                    d(7, *(req - t for t in art)) if a > 0 else NAN,
                    1 + sum(v > played[i] for v in played.values()) if i in played else NAN,
                    cos,
                ]
            )
    return np.array(out, dtype=np.float64)


@pytest.mark.parametrize("seed", [0, 1])
def test_features_match_a_loop_reference_on_random_data(monkeypatch, seed):
    monkeypatch.setattr(rf, "RECENT_LISTENS", 5)
    monkeypatch.setattr(rf, "RECENT_POPULARITY_SECONDS", 3 * 86_400)
    ds = toy_dataset(n_users=12, n_items=25, seed=seed)
    users, request_ts = finetune_requests(ds)
    ids, scores = FakeRetriever(ds.n_users, ds.n_items, seed).recommend(None, users, 6)
    cands = candidates_from_topk(users, request_ts, ids, scores, popular_items(ds.item_counts, 4))
    got = candidate_features(cands, ds.history(Window.FINETUNE), ds.items, ds.item_counts)
    want = reference_features(ds, cands, 5, 3 * 86_400)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_labels_are_the_users_finetune_window_listens_after_the_request():
    ds = _handmade()
    users, request_ts = finetune_requests(ds)
    cands = candidates_from_topk(
        users, request_ts, np.array([[1, 3], [2, 4]]), np.zeros((2, 2)), popular=np.array([4, 2])
    )
    labels = candidate_labels(cands, ds.events_in(Window.FINETUNE), ds.n_items)
    # user 0 plays 4 and 2 in the finetune window (3 and 1 only later); user 1 plays 1.
    assert labels.tolist() == [False, False, True, True, False, False]


# -- windows -----------------------------------------------------------------------------------


def test_check_windows_accepts_the_protocol_and_raises_on_every_overlap():
    ds = _handmade()
    users, request_ts = finetune_requests(ds)
    check_windows(ds, users, request_ts)
    with pytest.raises(WindowLeakError, match="include the label window"):
        check_windows(ds, users, request_ts, history_before=Window.VAL)
    for window in (Window.VAL, Window.TEST, Window.PRETRAIN):
        with pytest.raises(WindowLeakError, match="finetune window"):
            check_windows(ds, users, request_ts, label_window=window)
    with pytest.raises(WindowLeakError, match="history event at or after"):
        check_windows(ds, users, np.array([400, 900]))  # user 0's last history play is at 400
    with pytest.raises(WindowLeakError, match="validation/test event at or before"):
        check_windows(ds, users, np.array([1000, 2500]))  # user 1 has a val play at 2500


def _perturb(ds, windows, seed=1):
    """The same dataset with the items of the events in ``windows`` redrawn."""
    rng = np.random.default_rng(seed)
    items = ds.item_idx.copy()
    mask = np.isin(ds.window, windows)
    items[mask] = rng.integers(1, ds.n_items + 1, int(mask.sum()))
    events = np.stack([ds.user_idx, items, ds.ts, ds.window], axis=1)
    return dataset_from_events(events, ds.n_users, ds.items)


@pytest.fixture(scope="module")
def toy():
    ds = toy_dataset()
    return ds, build_ranker_scores(ds, FakeRetriever(ds.n_users, ds.n_items), CFG)


def test_ranker_scores_never_read_validation_or_test_events(toy):
    ds, result = toy
    other = build_ranker_scores(
        _perturb(ds, [Window.VAL, Window.TEST]), FakeRetriever(ds.n_users, ds.n_items), CFG
    )
    assert other.scores.equals(result.scores)


def _relabel_user(ds, user):
    """``ds`` with the user's finetune-window listens after its request moved to other tracks."""
    first = ds.request_ts(Window.FINETUNE)[user]
    items = ds.item_idx.copy()
    mine = (ds.user_idx == user) & (ds.window == Window.FINETUNE) & (ds.ts > first)
    items[mine] = (items[mine] % ds.n_items) + 1  # other tracks, same times
    events = np.stack([ds.user_idx, items, ds.ts, ds.window], axis=1)
    return dataset_from_events(events, ds.n_users, ds.items)


def _score_and_label(result, user):
    users = result.scores[Columns.USER_IDX].to_numpy()
    score = result.scores[Columns.SCORE].to_numpy()
    label = result.scores[LABEL].to_numpy(zero_copy_only=False)
    return users == user, score, label


def test_cross_fitting_a_users_score_ignores_its_own_labels(toy):
    """Changing one user's finetune-window listens changes its labels, never its scores."""
    ds, result = toy
    users = np.unique(result.scores[Columns.USER_IDX].to_numpy())
    user = int(users[~holdout_mask(users)][0])
    other = build_ranker_scores(_relabel_user(ds, user), FakeRetriever(ds.n_users, ds.n_items), CFG)
    rows, before, label_before = _score_and_label(result, user)
    _, after, label_after = _score_and_label(other, user)
    np.testing.assert_array_equal(after[rows], before[rows])
    assert not np.array_equal(label_after[rows], label_before[rows])
    assert not np.array_equal(after[~rows], before[~rows])  # the other folds' model learned it


def test_held_out_users_labels_reach_no_model(toy):
    ds, result = toy
    users = np.unique(result.scores[Columns.USER_IDX].to_numpy())
    user = int(users[holdout_mask(users)][0])
    other = build_ranker_scores(_relabel_user(ds, user), FakeRetriever(ds.n_users, ds.n_items), CFG)
    rows, before, label_before = _score_and_label(result, user)
    _, after, label_after = _score_and_label(other, user)
    assert not np.array_equal(label_after[rows], label_before[rows])
    np.testing.assert_array_equal(after, before)  # every score of every user


# -- cross-fitting and the model ---------------------------------------------------------------


class RecordingModel:
    """A classifier that remembers the users (feature column 0) it was fit on and scored."""

    log = []

    def fit(self, x, y):
        self.fit_users = set(x[:, 0].astype(int))
        return self

    def decision_function(self, x):
        RecordingModel.log.append((self.fit_users, set(x[:, 0].astype(int))))
        return x[:, 0] * 0.0 + len(self.fit_users)


def test_cross_fit_never_scores_a_row_with_a_model_that_saw_its_user():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 50, 600)
    x = np.stack([users, rng.normal(size=600)], axis=1)
    trainable = users % 5 != 0  # users 0, 5, 10, ... are only scored
    RecordingModel.log = []
    fitted, oof = cross_fit(x, rng.random(600) < 0.3, users, 3, 7, RecordingModel, trainable)
    folds = user_folds(users, 3, 7)
    assert len(fitted.models) == 3 and len(RecordingModel.log) == 3
    for k, (fit_users, scored_users) in enumerate(RecordingModel.log):
        assert fit_users == set(users[(folds != k) & trainable].tolist())
        assert scored_users == set(users[folds == k].tolist())
        assert not fit_users & scored_users
        np.testing.assert_array_equal(oof[folds == k], len(fit_users))


def test_user_folds_are_a_stable_balanced_hash():
    users = np.arange(30_000)
    folds = user_folds(users, 3, seed=0)
    assert set(folds.tolist()) == {0, 1, 2}
    np.testing.assert_allclose(np.bincount(folds) / len(users), 1 / 3, atol=0.01)
    # A user's fold depends on nothing but its index and the seed.
    np.testing.assert_array_equal(user_folds(users[::-7], 3, seed=0), folds[::-7])
    assert (user_folds(users, 3, seed=1) != folds).mean() > 0.5
    with pytest.raises(ValueError, match="n_folds >= 2"):
        user_folds(users, 1)


def test_gradient_boosting_learns_a_threshold_rule():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2_000, 4))
    x[rng.random(x.shape) < 0.1] = np.nan  # missing values are part of the input contract
    y = np.nan_to_num(x[:, 1]) > 0.3
    users = rng.integers(0, 400, 2_000)
    _, oof = cross_fit(x, y, users, 2, 0, lambda: make_classifier(CFG))
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y, oof) > 0.9


def test_one_label_class_is_a_clear_error():
    x = np.arange(20, dtype=float)[:, None]
    with pytest.raises(ValueError, match="only one label class"):
        cross_fit(x, np.zeros(20, bool), np.arange(20), 2, 0, lambda: make_classifier(CFG))


def test_missing_and_constant_features_are_left_out_with_the_reason():
    """Without item metadata whole feature columns are NaN: the trees never see them."""
    rng = np.random.default_rng(0)
    n = 400
    users = rng.integers(0, 50, n)
    signal = rng.normal(size=n)
    x = np.stack(
        [
            signal,  # kept
            np.full(n, np.nan),  # missing for every candidate
            np.full(n, 3.0),  # constant
            np.where(user_folds(users, 2, 0) == 0, np.nan, signal),  # missing in fold 1's rows
        ],
        axis=1,
    )
    labels = signal + rng.normal(scale=0.5, size=n) > 0
    model, oof = cross_fit(x, labels, users, 2, 0, lambda: make_classifier(CFG))
    assert model.columns.tolist() == [0]
    assert model.dropped == {
        1: "missing for every candidate",
        2: "constant (3) for every candidate",
        3: "missing for the training rows of fold 1",
    }
    again, _ = cross_fit(x[:, :1], labels, users, 2, 0, lambda: make_classifier(CFG))
    np.testing.assert_array_equal(oof, again.score(x[:, :1], users))  # as if only column 0
    with pytest.raises(ValueError, match="no ranker feature varies"):
        cross_fit(x[:, 1:3], labels, users, 2, 0, lambda: make_classifier(CFG))


# -- the whole stage and its quality -----------------------------------------------------------


def test_build_ranker_scores_materializes_out_of_fold_scores(toy):
    ds, result = toy
    table = result.scores
    assert table.column_names == [
        Columns.USER_IDX,
        Columns.ITEM_IDX,
        Columns.REQUEST_TS,
        Columns.SCORE,
        FOLD,
        LABEL,
    ]
    users = table[Columns.USER_IDX].to_numpy()
    np.testing.assert_array_equal(table[FOLD].to_numpy(), user_folds(users, CFG.n_folds, CFG.seed))
    request_ts = ds.request_ts(Window.FINETUNE)
    np.testing.assert_array_equal(table[Columns.REQUEST_TS].to_numpy(), request_ts[users])
    # Labels: the candidate is among the user's finetune-window listens.
    finetune = ds.events_in(Window.FINETUNE)
    labels = [
        int(i) in set(finetune.row(int(u)).tolist())
        for u, i in zip(users, table[Columns.ITEM_IDX].to_numpy(), strict=True)
    ]
    assert table[LABEL].to_pylist() == labels
    q = result.quality
    assert q["n_candidates"] == table.num_rows and q["n_requests"] == len(np.unique(users))
    assert q["auc"] > 0.6  # the toy label follows the favourite artist, a feature
    assert q["ndcg@10"]["ranker"] > q["ndcg@10"]["retriever"]  # the retriever here is noise
    assert set(q["importance"]) == set(q["features_used"])  # what the models use, no more
    assert set(q["features_used"]) | set(q["features_dropped"]) == set(FEATURES)
    assert q["features_dropped"]["retriever_score"].startswith("ranker.retriever_features")
    assert result.candidates.num_rows == table.num_rows
    assert set(FEATURES) <= set(result.candidates.column_names)


def test_ranker_rescores_its_own_candidates_identically(toy):
    ds, result = toy
    base = result.ranker.base
    r = 3
    rows = slice(base.indptr[r], base.indptr[r + 1])
    items = base.items[rows][None, :].astype(np.int64)
    got = result.ranker.score_topk(ds, base.users[r : r + 1], items)
    np.testing.assert_allclose(got[0], result.scores[Columns.SCORE].to_numpy()[rows])


def test_candidate_ndcg_matches_a_loop():
    rng = np.random.default_rng(3)
    users = np.arange(30)
    ids = np.stack([rng.permutation(np.arange(1, 41))[:12] for _ in users])
    cands = candidates_from_topk(users, np.zeros(30), ids, np.zeros((30, 12)), np.array([], int))
    labels = rng.random(cands.n_rows) < 0.2
    scores = rng.normal(size=cands.n_rows)
    total, n = 0.0, 0
    for r in range(30):
        s, lab = (
            scores[cands.indptr[r] : cands.indptr[r + 1]],
            labels[cands.indptr[r] : cands.indptr[r + 1]],
        )
        if not lab.any():
            continue
        ranked = lab[np.argsort(-s, kind="stable")][:10]
        dcg = sum(1 / math.log2(k + 2) for k, hit in enumerate(ranked) if hit)
        idcg = sum(1 / math.log2(k + 2) for k in range(min(lab.sum(), 10)))
        total, n = total + dcg / idcg, n + 1
    assert candidate_ndcg(cands, labels, scores) == pytest.approx(total / n)


# -- score tables in and out -------------------------------------------------------------------


USERS = pa.table({Columns.USER_IDX: [0, 1, 2], Columns.USER: ["u0", "u1", "u2"]})
ITEMS = pa.table({Columns.ITEM_IDX: [1, 2, 3], Columns.ITEM: [10, 20, 30]})


def _scores_file(tmp_path, fmt="parquet", **columns):
    data = {
        Columns.USER: ["u1", "u0", "u1"],
        Columns.ITEM: [20, 10, 30],
        Columns.REQUEST_TS: [500, 400, 500],
        Columns.SCORE: [0.5, 1.5, -2.0],
    }
    data.update(columns)
    table = pa.table({k: v for k, v in data.items() if v is not None})
    path = tmp_path / f"scores.{fmt}"
    if fmt == "parquet":
        pq.write_table(table, path)
    else:
        pacsv.write_csv(table, path)
    return path


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_load_ranker_scores_maps_ids(tmp_path, fmt):
    path = _scores_file(tmp_path, fmt)
    assert check_ranker_scores_file(path)["rows"] == 3
    table = load_ranker_scores(path, USERS, ITEMS)
    assert table.to_pydict() == {
        Columns.USER_IDX: [0, 1, 1],
        Columns.ITEM_IDX: [1, 2, 3],
        Columns.REQUEST_TS: [400, 500, 500],
        Columns.SCORE: [1.5, 0.5, -2.0],
    }
    back = with_original_ids(table, USERS, ITEMS)
    assert back[Columns.USER].to_pylist() == ["u0", "u1", "u1"]
    assert back[Columns.ITEM].to_pylist() == [10, 20, 30]


def test_load_ranker_scores_accepts_timestamps(tmp_path):
    stamps = pa.array([500, 400, 500], pa.int64()).cast(pa.timestamp("s"))
    table = load_ranker_scores(_scores_file(tmp_path, request_ts=stamps), USERS, ITEMS)
    assert table[Columns.REQUEST_TS].to_pylist() == [400, 500, 500]


@pytest.mark.parametrize(
    ("columns", "column", "problem"),
    [
        ({Columns.SCORE: None}, Columns.SCORE, "missing"),
        ({Columns.ITEM: None}, Columns.ITEM, "missing"),
        ({Columns.SCORE: ["a", "b", "c"]}, Columns.SCORE, "not allowed"),
        ({Columns.REQUEST_TS: [1.5, 2.5, 3.5]}, Columns.REQUEST_TS, "not allowed"),
        ({Columns.SCORE: [1.0, NAN, 2.0]}, Columns.SCORE, "NaN"),
        ({Columns.USER: ["u1", None, "u2"]}, Columns.USER, "NULL"),
        ({Columns.USER: ["u1", "nobody", "u2"]}, Columns.USER, "not in the extracted data"),
        ({Columns.ITEM: [20, 99, 30]}, Columns.ITEM, "not in the extracted data"),
        (
            {Columns.ITEM: [20, 10, 20], Columns.REQUEST_TS: [500, 500, 500]},
            "request_ts",
            "duplicate",
        ),
    ],
)
def test_bad_ranker_scores_name_the_file_and_the_column(tmp_path, columns, column, problem):
    path = _scores_file(tmp_path, **columns)
    with pytest.raises(InputError) as err:
        load_ranker_scores(path, USERS, ITEMS)
    message = str(err.value)
    assert str(path) in message and repr(column) in message and problem in message


@pytest.mark.parametrize(
    ("columns", "example"),
    [
        ({Columns.USER: ["u1", "nobody", "u2"]}, "'nobody'"),
        ({Columns.ITEM: ["20", "track-9", "30"]}, "'track-9'"),  # text ids, integer vocabulary
    ],
)
def test_an_unknown_id_is_quoted_as_written(tmp_path, columns, example):
    with pytest.raises(InputError, match=f"e.g. {example}"):
        load_ranker_scores(_scores_file(tmp_path, **columns), USERS, ITEMS)


def test_unknown_ranker_scores_file_type(tmp_path):
    path = tmp_path / "scores.json"
    path.write_text("{}")
    with pytest.raises(InputError, match="scores.json.*Parquet"):
        check_ranker_scores_file(path)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("max_events", [1 << 20, 7, 1])  # one run; runs of rows; a row each
def test_own_tracks_match_a_per_request_loop(seed, max_events):
    ds = toy_dataset(n_users=15, n_items=20, seed=seed)
    history = ds.history(Window.FINETUNE)
    users, request_ts = finetune_requests(ds)
    order = np.random.default_rng(seed).permutation(len(users))  # rows follow the requests
    users, request_ts = users[order], request_ts[order]
    got = own_tracks(history, users, request_ts, 4, tau_days=2.0, max_events=max_events)
    for r, (u, req) in enumerate(zip(users, request_ts, strict=True)):
        score, last = {}, {}
        for pos, (i, t) in enumerate(zip(history.row(u), history.row_ts(u), strict=True)):
            score[int(i)] = score.get(int(i), 0.0) + math.exp(-(req - t) / (2.0 * 86_400))
            last[int(i)] = pos
        ranked = sorted(score, key=lambda i: (-score[i], -last[i]))[:4]
        assert got[r].tolist() == ranked + [0] * (4 - len(ranked))


def test_rank_orders_each_requests_candidates_by_the_serving_model(toy):
    """two_stage_ranked: the three candidate sources, ordered by the all-rows model's score."""
    ds, result = toy
    retriever = FakeRetriever(ds.n_users, ds.n_items, seed=3)
    users = ds.users_with_events(Window.TEST, min_history=1)
    items, scores = result.ranker.rank(ds, retriever, users, CFG, Window.TEST, 8)
    assert items.shape == scores.shape == (len(users), 8)
    assert np.all(np.diff(scores, axis=1) <= 0)  # best first
    history = ds.history(Window.TEST)
    request_ts = ds.request_ts(Window.TEST)[users]
    ids, logits = retriever.recommend(history, users, CFG.n_candidates)
    own = own_tracks(history, users, request_ts, CFG.n_own_candidates, CFG.own_tau_days)
    popular = popular_items(ds.item_counts, CFG.n_popular_candidates)
    cands = candidates_from_topk(users, request_ts, ids, logits, popular, own)
    feats = candidate_features(cands, history, ds.items, ds.item_counts)
    model = result.ranker.model
    plain = model.serving.decision_function(feats[:, model.columns])
    for r in range(len(users)):
        rows = range(cands.indptr[r], cands.indptr[r + 1])
        best = sorted(rows, key=lambda j: (-plain[j], j))[:8]
        assert items[r].tolist() == [int(cands.items[j]) for j in best]
        np.testing.assert_allclose(scores[r], plain[best], rtol=1e-12)
