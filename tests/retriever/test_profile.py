"""The long-term profile against plain loops: its tracks and features, lookups, the bonus in the
loss and in exact top-k."""

import numpy as np
import pytest
import torch

from recmodel.core.config import QConfig, TrainConfig
from recmodel.retriever.batches import last_items, make_batch, make_windows
from recmodel.retriever.checkpoint import load_retriever, model_config_dict, state_bytes
from recmodel.retriever.losses import sampled_softmax_loss
from recmodel.retriever.model import Retriever
from recmodel.retriever.objective import CandidateSampler, DeviceBatch, next_item_loss
from recmodel.retriever.profile import (
    N_FEATURES,
    LongTermBias,
    build_profiles,
    query_profiles,
)
from tests.helpers.retriever_data import (  # noqa: F401
    item_features,
    one_thread,
    plain_profile,
    small_model,
    timed_user_items,
)

N_ITEMS, D, MAX_LEN, SIZE = 30, 8, 5, 4


def assert_profile(items_row, features_row, expected):
    assert items_row.tolist() == [j for j, _ in expected] + [0] * (len(items_row) - len(expected))
    want = np.zeros((len(items_row), N_FEATURES))
    for slot, (_, feats) in enumerate(expected):
        want[slot] = feats
    np.testing.assert_allclose(features_row, want, rtol=1e-5, atol=1e-6)


def _histories(seed=0, lengths=(14, 3, 0, 9, 5, 6, 22)):
    rng = np.random.default_rng(seed)
    rows = [list(rng.integers(1, 9, size=n)) for n in lengths]  # few tracks: many replays
    return timed_user_items(rows, seed=seed)


def test_build_profiles_match_a_plain_loop():
    histories = _histories()
    rng = np.random.default_rng(1)
    starts, ends = [], []
    for user in range(histories.n_users):
        lo, hi = histories.indptr[user], histories.indptr[user + 1]
        if hi > lo:  # the reference play at ends[r] must exist
            end = int(rng.integers(lo, hi))
            starts.append(int(rng.integers(lo, end + 1)))
            ends.append(end)
    for size in (1, 3, 20):
        got = build_profiles(histories.items, histories.ts, np.array(starts), np.array(ends), size)
        assert got.items.shape == (len(starts), size)
        for r, (s, e) in enumerate(zip(starts, ends, strict=True)):
            want = plain_profile(histories.items[s:e], histories.ts[s:e], histories.ts[e], size)
            assert_profile(got.items[r], got.features[r], want)


@pytest.mark.parametrize("history", [1_000, 4])  # 4: the look-back cuts long histories
def test_training_windows_carry_the_plays_before_them(history):
    histories = _histories(2)
    windows = make_windows(histories, MAX_LEN, profile_size=SIZE, profile_history=history)
    batch = make_batch(windows, np.arange(len(windows)))
    assert batch.profile.items.shape == (len(windows), SIZE)
    non_empty = 0
    for w in range(len(windows)):
        user, start = windows.users[w], windows.starts[w]
        first = max(histories.indptr[user], start - history)
        want = plain_profile(
            histories.items[first:start], histories.ts[first:start], histories.ts[start], SIZE
        )
        assert_profile(batch.profile.items[w], batch.profile.features[w], want)
        non_empty += bool(want)
    assert non_empty >= 3  # long histories have windows with plays before them
    assert make_batch(make_windows(histories, MAX_LEN), np.arange(3)).profile is None


@pytest.mark.parametrize("history", [1_000, 4])
def test_requests_carry_the_plays_before_their_last_max_len(history):
    histories = _histories(3)
    users = np.array([6, 2, 0, 1, 3])
    got = query_profiles(histories, users, MAX_LEN, SIZE, history)
    for r, user in enumerate(users):
        items, ts = histories.row(user), histories.row_ts(user)
        before = max(len(items) - MAX_LEN, 0)
        first = max(before - history, 0)
        want = []
        if before:  # plays before the window: its first play is the reference time
            want = plain_profile(items[first:before], ts[first:before], ts[before], SIZE)
        assert_profile(got.items[r], got.features[r], want)
    assert got.items[[0, 2, 4]].any(axis=1).all()  # 22, 14 and 9 plays: a profile
    assert not got.items[[1, 3]].any()  # no plays, 3 plays: none


@pytest.fixture
def head():
    torch.manual_seed(0)
    module = LongTermBias(D, N_ITEMS)
    with torch.no_grad():
        for param in module.parameters():
            param.normal_()
    return module


def _random_profile(rng, b, f):
    items = np.zeros((b, f), dtype=np.int64)
    for r in range(b):
        n = int(rng.integers(0, f + 1))
        items[r, :n] = rng.choice(np.arange(1, N_ITEMS + 1), n, replace=False)
    features = rng.normal(size=(b, f, N_FEATURES)).astype(np.float32) * (items > 0)[..., None]
    return torch.from_numpy(items), torch.from_numpy(features)


@torch.no_grad()
def test_bias_matches_a_plain_loop(head):
    rng = np.random.default_rng(4)
    items, features = _random_profile(rng, 6, SIZE)
    ids = torch.from_numpy(rng.integers(-1, N_ITEMS + 1, size=(6, 9)))  # -1: an empty slot
    ids[:, 0] = items[:, 0]  # at least one member (or padding) per row
    hidden = torch.randn(6, D)
    got = head.bias(items, features, hidden, ids)
    for b in range(6):
        members = {int(j): features[b, s] for s, j in enumerate(items[b]) if j > 0}
        for c in range(9):
            j = int(ids[b, c])
            want = 0.0
            if j in members:
                want = float(head.weights(members[j]) + head.propensity(hidden[b]))
            assert float(got[b, c]) == pytest.approx(want, abs=1e-5)
    # explicit rows address any row's profile
    rows = torch.from_numpy(rng.integers(0, 6, size=11))
    flat = torch.from_numpy(rng.integers(0, N_ITEMS + 1, size=11))
    part, found = head.static(items, features, flat, rows=rows)
    for q in range(11):
        members = {int(j): features[rows[q], s] for s, j in enumerate(items[rows[q]]) if j > 0}
        assert bool(found[q]) == (int(flat[q]) in members)
        want = float(head.weights(members[int(flat[q])])) if found[q] else 0.0
        assert float(part[q]) == pytest.approx(want, abs=1e-5)


def test_zero_initialised_bonus_changes_nothing():
    rng = np.random.default_rng(5)
    items, features = _random_profile(rng, 3, SIZE)
    bias = LongTermBias(D, N_ITEMS).bias(items, features, torch.randn(3, D), items)
    assert not bias.any()


def _model(profile_size=SIZE, seed=0):
    torch.manual_seed(seed)
    cfg = small_model(MAX_LEN, profile_size, d_model=D)
    model = Retriever(item_features(N_ITEMS), cfg).eval()
    with torch.no_grad():  # bonuses big enough to lift profile tracks into the top-k
        for param in model.repeat.parameters():
            param.normal_(std=1.0)
        for param in model.long_term.parameters() if model.long_term is not None else ():
            param.normal_(std=3.0)
    return model


@torch.no_grad()
def test_recommend_equals_a_full_sort_of_dot_plus_both_bonuses(one_thread):  # noqa: F811
    model = _model()
    histories = _histories(6, lengths=(14, 3, 0, 9, 22, 40))
    users = np.arange(histories.n_users)
    got_ids, got_scores = model.recommend(histories, users, k=5, chunk_items=7)

    hidden = model.user_vectors(histories, users)
    queries = model.head.user_side(hidden)
    vectors = model.head.item_side(model.tower.all_item_vectors())
    window = torch.from_numpy(last_items(histories, users, MAX_LEN))
    every = torch.arange(1, N_ITEMS + 1).expand(len(users), -1)
    full = queries @ vectors[1:].T + model.repeat.last_bias(window, hidden, every)  # [U, N]
    lifted = 0
    for r, user in enumerate(users):
        items, ts = histories.row(user), histories.row_ts(user)
        before = max(len(items) - MAX_LEN, 0)
        for j, feats in (
            plain_profile(items[:before], ts[:before], ts[before], SIZE) if before else []
        ):
            bonus = model.long_term.weights(torch.tensor(feats)) + model.long_term.propensity(
                hidden[r]
            )
            full[r, j - 1] += bonus.squeeze()
            lifted += 1
    assert lifted >= 8
    want_scores, want_at = torch.sort(full, dim=1, descending=True)
    active = histories.lengths[users] > 0  # a user without plays gets padding scores only
    np.testing.assert_allclose(
        got_scores[active], want_scores[active, :5].numpy(), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(got_ids[active], (want_at[active, :5] + 1).numpy())


@torch.no_grad()
def test_a_zero_bonus_recommends_as_the_plain_retriever(one_thread):  # noqa: F811
    histories = _histories(7, lengths=(14, 9, 22))
    with_profile = _model()
    plain = _model(profile_size=0)
    plain.load_state_dict(with_profile.state_dict(), strict=False)
    for param in with_profile.long_term.parameters():
        param.zero_()
    users = np.arange(3)
    ids, scores = with_profile.recommend(histories, users, k=6)
    plain_ids, plain_scores = plain.recommend(histories, users, k=6)
    np.testing.assert_array_equal(ids, plain_ids)
    np.testing.assert_allclose(scores, plain_scores, rtol=1e-6, atol=1e-6)


def test_training_loss_adds_the_bonus_at_every_position(one_thread):  # noqa: F811
    """Values and gradients of the loss equal those of logits built position by position."""
    histories = _histories(8, lengths=(30, 12, 19))
    windows = make_windows(histories, MAX_LEN, profile_size=SIZE)
    host = make_batch(windows, np.arange(len(windows)))
    assert host.profile.items.any()
    inputs, targets = torch.from_numpy(host.inputs), torch.from_numpy(host.targets)
    positions = torch.from_numpy(host.positions)
    kept = targets.reshape(-1)[positions]
    profile = (torch.from_numpy(host.profile.items), torch.from_numpy(host.profile.features))
    batch = DeviceBatch(inputs, positions, kept, kept, len(kept), profile)
    counts = np.r_[0, np.arange(N_ITEMS, 0, -1)].astype(np.int64)
    train = TrainConfig(negatives="shared", n_negatives=6)
    candidates = CandidateSampler.from_config(counts, train, QConfig())

    model = _model()
    loss = next_item_loss(model, batch, candidates, torch.Generator().manual_seed(3), "all")
    got = torch.autograd.grad(loss, list(model.long_term.parameters()))

    neg_ids, neg_log_q, pos_log_q = candidates.draw(kept, kept, torch.Generator().manual_seed(3))
    hidden = model(inputs)  # [B, T, D]
    t = inputs.shape[1]
    served = []
    for p in positions.tolist():
        b, s = divmod(p, t)
        ids = torch.cat([kept[len(served)][None], neg_ids])  # [1 + M]
        h = hidden[b, s]
        row = model.head.pairwise(h.expand(len(ids), -1), model.item_vectors(ids))
        row = row + model.repeat.bias(inputs[b : b + 1], hidden[b : b + 1], ids[None])[0, s]
        members = {int(j): profile[1][b, slot] for slot, j in enumerate(profile[0][b]) if j > 0}
        bonus = [
            model.long_term.weights(members[int(j)]) + model.long_term.propensity(h)
            if int(j) in members
            else torch.zeros(1)
            for j in ids
        ]
        served.append(row + torch.cat(bonus))
    served = torch.stack(served)  # [P, 1 + M]
    expected = sampled_softmax_loss(
        served[:, 0], served[:, 1:], kept, neg_ids, pos_log_q, neg_log_q, logq="all"
    )
    want = torch.autograd.grad(expected, list(model.long_term.parameters()))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    assert any(float(g.abs().sum()) > 0 for g in got)


def test_checkpoints_without_a_profile_size_load_without_a_profile():
    """A checkpoint written before the profile existed rebuilds the model it was."""
    old = _model(profile_size=0)
    features = item_features(N_ITEMS)
    config = model_config_dict(old.cfg, features)
    del config["profile_size"]
    loaded = load_retriever(state_bytes(old, config), config, features)
    assert loaded.cfg.profile_size == 0 and loaded.long_term is None
