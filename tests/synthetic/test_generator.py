"""Tests of the synthetic music-streaming generator (recmodel.synthetic.generator*)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recmodel.core.columns import Columns
from recmodel.core.config import ConfigError, SyntheticConfig
from recmodel.synthetic import generator
from recmodel.synthetic.catalog import ITEMS_SCHEMA, build_catalog
from recmodel.synthetic.generator import EVENTS_SCHEMA, LOG_START, generate, scaled_config
from recmodel.synthetic.moves import NOVELTY_SHARE_OF_LIFETIME, Step, _favourite
from recmodel.synthetic.sampling import GroupSampler, sample_rows
from recmodel.synthetic.sessions import SKIP_MAX_PCT, played_ratio
from recmodel.synthetic.users import (
    SECONDS_PER_DAY,
    Sessions,
    Users,
    _without_overlap,
    draw_users,
    expected_events_per_user,
    favourite_weights,
    place_in_time,
)

TINY = SyntheticConfig(
    seed=7,
    n_users=300,
    n_tracks=1_500,
    n_artists=150,
    n_genres=8,
    days=30.0,
    sessions_per_user_per_day=1.0,
    mean_session_length=10.0,
)
LISTEN_PCT = 50.0  # the default listen+ threshold of extraction


@dataclasses.dataclass(frozen=True)
class Log:
    """A generated log as numpy columns, events in file order."""

    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    ratio: np.ndarray
    length: np.ndarray
    organic: np.ndarray
    items: pa.Table
    paths: generator.SyntheticPaths

    def item_attr(self, column: str) -> np.ndarray:
        """The item-table column aligned with the events (item ids are 1..N)."""
        lookup = np.empty(self.items.num_rows + 1, dtype=object)
        lookup[self.items[Columns.ITEM].to_numpy()] = self.items[column].to_pylist()
        return lookup[self.item]


def _load(paths: generator.SyntheticPaths) -> Log:
    ev = pq.read_table(paths.events)
    cols = [ev[c].to_numpy() for c in EVENTS_SCHEMA.names]
    return Log(*cols, items=pq.read_table(paths.items), paths=paths)


@pytest.fixture(scope="module")
def log(tmp_path_factory) -> Log:
    return _load(generate(TINY, tmp_path_factory.mktemp("tiny")))


def _sessions(log: Log, gap_s: int = 30 * 60) -> np.ndarray:
    """bool ``[E - 1]``: event ``e + 1`` continues the session of event ``e``."""
    return (log.user[1:] == log.user[:-1]) & (np.diff(log.ts) < gap_s)


# --- determinism, schema, ranges -------------------------------------------------------------


def test_same_config_gives_identical_bytes(tmp_path, log):
    again = generate(TINY, tmp_path)
    assert again.events.read_bytes() == log.paths.events.read_bytes()
    assert again.items.read_bytes() == log.paths.items.read_bytes()
    assert again.n_events == log.paths.n_events == len(log.user)


def test_other_seed_gives_other_log(tmp_path, log):
    other = _load(generate(dataclasses.replace(TINY, seed=8), tmp_path))
    assert not np.array_equal(other.item[:1000], log.item[:1000])
    assert not other.items.equals(log.items)


def test_schemas_and_dtypes_are_exact(log):
    assert pq.read_schema(log.paths.events).remove_metadata() == EVENTS_SCHEMA
    assert pq.read_schema(log.paths.items).remove_metadata() == ITEMS_SCHEMA
    assert [str(t) for t in EVENTS_SCHEMA.types] == [
        "int64",
        "int64",
        "int64",
        "float",
        "int32",
        "int8",
    ]
    assert str(ITEMS_SCHEMA.field(Columns.EMBEDDING).type) == "list<item: float>"


def test_values_are_in_range(log):
    assert log.user.min() >= 1 and log.user.max() <= TINY.n_users
    assert np.isin(log.item, log.items[Columns.ITEM].to_numpy()).all()
    assert log.ts.min() >= LOG_START
    assert log.ts.max() < LOG_START + TINY.days * SECONDS_PER_DAY
    assert log.ratio.min() >= 0.0 and log.ratio.max() <= 100.0
    assert set(np.unique(log.organic)) == {0, 1}
    assert log.length.min() >= 30 and log.length.max() <= 1200


def test_events_are_grouped_by_user_and_strictly_increasing_in_time(log):
    same = log.user[1:] == log.user[:-1]
    assert (np.diff(log.user) >= 0).all()
    assert (np.diff(log.ts)[same] > 0).all()


def test_every_item_row_is_complete_and_ids_are_a_permutation(log):
    ids = log.items[Columns.ITEM].to_numpy()
    assert np.array_equal(ids, np.arange(1, TINY.n_tracks + 1))
    vectors = log.items[Columns.EMBEDDING].drop_null()
    assert set(pa.compute.list_value_length(vectors).to_pylist()) == {TINY.acoustic_dim}
    assert log.items[Columns.ARTIST].null_count == 0 and log.items[Columns.ALBUM].null_count == 0


@pytest.mark.parametrize("column", [Columns.GENRE, Columns.TEMPO, Columns.EMBEDDING])
def test_some_metadata_is_missing_on_purpose(log, column):
    share = log.items[column].null_count / log.items.num_rows
    assert 0.01 < share < 0.06  # missing_share = 0.03 on 1,500 tracks


# --- structure that models must be able to find -----------------------------------------------


def test_popularity_is_heavy_tailed(log):
    plays = np.sort(np.bincount(log.item))[::-1]
    top1 = plays[: TINY.n_tracks // 100].sum() / plays.sum()
    assert top1 > 0.08  # 8x the uniform share of the top 1 % of tracks
    assert (plays > 0).sum() > 0.9 * TINY.n_tracks  # ... and a long tail that is still played


def test_repeat_share_of_listens_is_in_the_documented_range(log):
    keep = log.ratio >= LISTEN_PCT
    pairs = log.user[keep] * (TINY.n_tracks + 1) + log.item[keep]
    repeats = 1.0 - len(np.unique(pairs)) / len(pairs)
    assert 0.40 <= repeats <= 0.70


def test_album_runs_are_far_above_chance(log):
    album = log.item_attr(Columns.ALBUM).astype(np.int64)
    cont = _sessions(log)
    run_share = (album[1:] == album[:-1])[cont].mean()
    album_share = np.unique(album, return_counts=True)[1] / len(album)
    chance = (album_share**2).sum()  # two independent plays share an album
    # A bag-of-items view of each user: two plays of the same user, order ignored.
    _, per_pair = np.unique(log.user * (album.max() + 1) + album, return_inverse=True)
    n_ua = np.bincount(per_pair)[per_pair]  # the user's plays of this event's album
    own_chance = (n_ua / np.bincount(log.user)[log.user]).mean()
    assert run_share > 0.15 and run_share > 10 * chance and run_share > 2 * own_chance


def test_the_previous_track_predicts_the_next_one(log):
    """A transition table fit on half the users beats popularity on the other half."""
    cont = _sessions(log)
    prev, nxt, user = log.item[:-1][cont], log.item[1:][cont], log.user[:-1][cont]
    fit = (user % 2 == 0) & (prev != nxt)  # plain repeats say nothing about transitions
    n = TINY.n_tracks + 1
    pairs, counts = np.unique(prev[fit] * n + nxt[fit], return_counts=True)
    # For each previous track, the most frequent next one (pairs sorted by (prev, count)).
    order = np.lexsort((counts, pairs // n))
    best = np.zeros(n, dtype=np.int64)
    best[pairs[order] // n] = pairs[order] % n  # the last write per prev is its top count
    markov_hit = (best[prev[~fit]] == nxt[~fit]).mean()
    popular = np.bincount(nxt[fit]).argmax()
    assert markov_hit > 0.15 and markov_hit > 3 * (nxt[~fit] == popular).mean()


def test_skips_concentrate_on_genres_outside_the_users_taste(log):
    genre = log.item_attr(Columns.GENRE)
    known = genre != None  # noqa: E711 (object array of str / None)
    codes = np.unique(genre[known].astype(str), return_inverse=True)[1]
    user, skipped = log.user[known], log.ratio[known] < LISTEN_PCT
    counts = np.zeros((TINY.n_users + 1, codes.max() + 1))
    np.add.at(counts, (user, codes), 1)
    share = (counts / counts.sum(axis=1, keepdims=True).clip(1))[user, codes]
    core, fringe = share >= 0.3, share < 0.05
    assert skipped[fringe].mean() > 2 * skipped[core].mean()
    assert (log.ratio[log.ratio < LISTEN_PCT] <= SKIP_MAX_PCT).all()


def test_recommended_plays_are_skipped_more_than_organic_ones(log):
    skipped = log.ratio < LISTEN_PCT
    assert 0.2 < log.organic.mean() < 0.8
    assert skipped[log.organic == 0].mean() > 1.5 * skipped[log.organic == 1].mean()


def test_tempo_and_acoustic_vectors_follow_genre(log):
    items = log.items.filter(pa.compute.is_valid(log.items[Columns.GENRE]))
    genre = np.unique(items[Columns.GENRE].to_numpy(zero_copy_only=False), return_inverse=True)[1]
    tempo = items[Columns.TEMPO].to_numpy(zero_copy_only=False)  # NaN where missing
    ok = ~np.isnan(tempo)
    means = np.bincount(genre[ok], tempo[ok]) / np.bincount(genre[ok])
    explained = 1 - ((tempo[ok] - means[genre[ok]]) ** 2).sum() / tempo[ok].var() / ok.sum()
    assert explained > 0.7  # genre explains most of the tempo variance
    has_vec = pa.compute.is_valid(items[Columns.EMBEDDING]).to_numpy(zero_copy_only=False)
    vec = np.stack(items[Columns.EMBEDDING].drop_null().to_pylist())  # [n, A]
    g = genre[has_vec]
    centroid = np.stack([vec[g == k].mean(axis=0) for k in range(g.max() + 1)])  # [G, A]
    nearest = ((vec[:, None, :] - centroid[None]) ** 2).sum(-1).argmin(axis=1)
    assert (nearest == g).mean() > 0.8


def _recall_at_10(log: Log, test_days: float, model: str, half_life_days: float = 7.0) -> float:
    """Mean recall@10 of each user's listens in the last ``test_days`` for a simple model.

    ``model``: "popularity" (global listen counts), "all_time" (the user's own listen counts)
    or "recent" (own counts decayed with ``half_life_days``); ties break by popularity.
    """
    keep = log.ratio >= LISTEN_PCT
    user, item, ts = log.user[keep], log.item[keep], log.ts[keep]
    t_split = log.ts.max() + 1 - int(test_days * SECONDS_PER_DAY)
    past, future = ts < t_split, ts >= t_split
    n_items = log.items.num_rows + 1
    popularity = np.bincount(item[past], minlength=n_items).astype(np.float64)
    recalls = []
    for u in np.intersect1d(user[past], user[future]):
        mine = past & (user == u)
        age_days = (t_split - ts[mine]) / SECONDS_PER_DAY
        weight = {"popularity": 0.0, "all_time": 1.0, "recent": 0.5 ** (age_days / half_life_days)}
        own = np.bincount(item[mine], weights=np.broadcast_to(weight[model], age_days.shape),
                          minlength=n_items)  # fmt: skip
        top = np.argsort(-(own + 1e-6 * popularity / popularity.max()), kind="stable")[:10]
        targets = np.unique(item[future & (user == u)])
        recalls.append(np.isin(top, targets).sum() / min(len(targets), 10))
    return float(np.mean(recalls))


def test_own_history_beats_popularity_and_recent_history_beats_all_time_counts(tmp_path):
    """Re-listening makes a user's own plays a strong baseline; rotation turnover and taste
    drift make recent plays more telling than all-time counts (room for sequential models)."""
    cfg = dataclasses.replace(TINY, days=60.0, n_users=400, sessions_per_user_per_day=0.7)
    log = _load(generate(cfg, tmp_path))
    by_popularity = _recall_at_10(log, 7, "popularity")
    all_time = _recall_at_10(log, 7, "all_time")
    assert all_time > 1.3 * by_popularity
    assert _recall_at_10(log, 7, "recent") > 1.05 * all_time


def test_listeners_of_a_scene_follow_the_same_artists():
    cat = build_catalog(TINY, np.random.default_rng(0))
    users = draw_users(TINY, cat, 0, 400, np.random.default_rng(1))
    follows = np.zeros((400, TINY.n_artists))
    follows[np.arange(400)[:, None], users.fav_artists] = 1.0
    shared = follows @ follows.T  # [U, U] followed artists in common
    scene = users.scenes[0]
    same, other = scene[:, None] == scene[None, :], np.eye(400, dtype=bool)
    assert shared[same & ~other].mean() > 4 * shared[~same].mean()


def test_sessions_peak_in_the_evening(log):
    starts = log.ts[np.r_[True, ~_sessions(log)]]
    hour = (starts % SECONDS_PER_DAY) // 3600
    per_hour = np.bincount(hour, minlength=24)
    assert per_hour[18:23].mean() > 3 * per_hour[2:6].mean()


def test_new_users_keep_arriving_and_activity_is_heterogeneous(log):
    first_seen = (log.ts[np.r_[True, np.diff(log.user) > 0]] - LOG_START) / SECONDS_PER_DAY
    assert (first_seen > TINY.days / 3).mean() > 0.1
    per_user = np.bincount(log.user)[1:]
    per_user = per_user[per_user > 0]
    assert np.percentile(per_user, 90) > 4 * np.percentile(per_user, 10)


# --- size, layout, failure -----------------------------------------------------------------


def test_row_group_size_bounds_row_groups_and_changes_only_the_layout(tmp_path, log):
    cfg = dataclasses.replace(TINY, row_group_size=5_000)
    paths = generate(cfg, tmp_path)
    meta = pq.ParquetFile(paths.events).metadata
    sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    assert meta.num_row_groups == -(-paths.n_events // 5_000) > 1
    assert all(n == 5_000 for n in sizes[:-1]) and 0 < sizes[-1] <= 5_000
    assert pq.read_table(paths.events).equals(pq.read_table(log.paths.events))


def test_small_blocks_tile_the_users_and_simulate_the_same_population(monkeypatch, log):
    monkeypatch.setattr(generator, "BLOCK_EVENTS", 5_000)  # many small blocks
    per_block = generator.block_size(TINY)
    assert per_block < TINY.n_users // 10
    cat = build_catalog(TINY, np.random.default_rng(0))
    blocks = list(generator.simulate_blocks(TINY, cat))
    assert [first for first, _ in blocks] == list(range(0, TINY.n_users, per_block))
    assert all(ev.user.max() < per_block and (np.diff(ev.user) >= 0).all() for _, ev in blocks)
    users = np.concatenate([first + ev.user for first, ev in blocks])
    # Other random draws of the same process: about as many users are active.
    assert abs(len(np.unique(users)) / len(np.unique(log.user)) - 1) < 0.05


def test_events_hint_scales_the_number_of_users(tmp_path):
    cfg = scaled_config(TINY, 20_000)
    assert cfg.n_users == round(20_000 / expected_events_per_user(TINY))
    paths = generate(TINY, tmp_path, n_events_hint=20_000)
    assert 14_000 < paths.n_events < 26_000


def test_a_failure_leaves_no_files(tmp_path, monkeypatch):
    def broken(cfg, cat):
        raise RuntimeError("simulated failure")
        yield  # pragma: no cover  (a generator like the real one)

    monkeypatch.setattr(generator, "simulate_blocks", broken)
    with pytest.raises(RuntimeError, match="simulated failure"):
        generate(TINY, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_invalid_config_is_rejected():
    with pytest.raises(ConfigError, match="missing_share"):
        SyntheticConfig(missing_share=1.5)
    with pytest.raises(ConfigError, match="n_artists"):
        SyntheticConfig(n_tracks=10, n_artists=20)


# --- building blocks against brute-force references ----------------------------------------


def test_group_sampler_matches_a_brute_force_inverse_cdf():
    rng = np.random.default_rng(0)
    group = rng.integers(0, 5, 200)
    group[group == 3] = 4  # group 3 is empty
    weight = rng.random(200)
    sampler = GroupSampler.build(group, weight, 5)
    assert sampler.nonempty().tolist() == [True, True, True, False, True]
    groups = rng.choice([0, 1, 2, 4], 500)
    u = rng.random(500)
    got = sampler.sample(groups, u)
    for g, x, member in zip(groups, u, got, strict=True):
        members = np.flatnonzero(group == g)
        cum = np.cumsum(weight[members])
        assert member == members[min(np.searchsorted(cum, x * cum[-1], side="right"), len(cum) - 1)]


def test_sample_rows_matches_a_brute_force_loop():
    rng = np.random.default_rng(1)
    probs = rng.random((300, 6)) * (rng.random((300, 6)) < 0.7)
    probs[:, 2] += 0.01  # every row has mass
    u = rng.random(300)
    got = sample_rows(np.cumsum(probs, axis=1), u)
    for row, x, k in zip(probs, u, got, strict=True):
        target, acc, expected = x * row.sum(), 0.0, len(row) - 1
        for j, p in enumerate(row):
            acc += p
            if acc > target:
                expected = j
                break
        assert k == expected and row[k] > 0


def test_sessions_never_overlap_like_the_sequential_rule():
    rng = np.random.default_rng(2)
    user = np.sort(rng.integers(0, 20, 400))
    planned = np.concatenate([np.sort(rng.integers(0, 10_000, n)) for n in np.bincount(user)])
    span = rng.integers(1, 900, 400)
    got = _without_overlap(user, planned, span)
    expected = planned.copy()
    for s in range(1, len(user)):
        if user[s] == user[s - 1]:
            expected[s] = max(planned[s], expected[s - 1] + span[s - 1])
    assert np.array_equal(got, expected)


def test_place_in_time_on_a_handcrafted_case():
    sess = Sessions(
        user=np.array([0, 0, 1]),
        kind=np.zeros(3, dtype=np.int8),
        length=np.array([2, 1, 2]),
        start=np.array([0.0, 100 / SECONDS_PER_DAY, 0.5]),
    )
    play_s = np.array([10, 20, 5, 7, 8])
    # User 0: session 1 planned at 100 s would overlap (0 + 30 s + 60 s gap = 90 s: it doesn't);
    # with a 100 s gap it is pushed to 130 s.
    assert place_in_time(sess, play_s, 60).tolist() == [0, 10, 100, 43_200, 43_207]
    assert place_in_time(sess, play_s, 100).tolist() == [0, 10, 130, 43_200, 43_207]


def _one_user(cfg: SyntheticConfig, track, birth, death) -> Users:
    """A single user with the given rotation slots (other attributes are placeholders)."""
    row = np.array([track]), np.array([birth], dtype=np.float64), np.array([death], dtype=float)
    genres = np.full((1, cfg.n_genres), 1.0 / cfg.n_genres)
    return Users(
        0,
        np.zeros(1),
        genres,
        genres,
        np.ones((1, 4)),
        np.zeros((1, 1), np.int32),
        *row,
        np.zeros(1, np.float32),
        np.zeros((2, 1), np.int64),
    )


def test_rotation_draws_match_weight_times_appeal():
    """The rejection + exact fast path draws slots like the plain weighted choice."""
    cfg = dataclasses.replace(TINY, n_favourite_tracks=5, favourite_lifetime_days=10.0)
    track = [10, 11, 12, 13, 14]
    users = _one_user(cfg, track, birth=[0.0, 10.0, 5.0, 1.0, 0.0], death=[9.0, 99, 99, 99, 99])
    n, t_now, prev = 40_000, 10.0, 13  # slot 0 is dead at t = 10; slot 3 was just played
    step = Step(
        cfg,
        None,
        users,
        np.random.default_rng(5),
        np.zeros(n, np.int64),
        np.full(n, t_now),
        np.full(n, prev, np.int32),
    )
    got = _favourite(step, np.arange(n))
    novelty = NOVELTY_SHARE_OF_LIFETIME * cfg.favourite_lifetime_days
    expected = np.zeros(5)
    for j in (1, 2, 4):  # the live slots other than the previous track
        expected[j] = favourite_weights(5)[j] * np.exp(-(t_now - users.fav_birth[0, j]) / novelty)
    expected /= expected.sum()
    observed = np.bincount(got - 10, minlength=5) / n
    assert np.abs(observed - expected).max() < 0.01
    nobody = Step(
        cfg,
        None,
        users,
        np.random.default_rng(6),
        np.zeros(3, np.int64),
        np.full(3, 200.0),
        np.full(3, -1, np.int32),
    )
    assert _favourite(nobody, np.arange(3)).tolist() == [-1, -1, -1]  # every slot has died


def test_played_ratio_splits_exactly_at_the_skip_logit_extremes():
    rng = np.random.default_rng(3)
    skips = played_ratio(np.full(1_000, 50.0), rng)
    plays = played_ratio(np.full(1_000, -50.0), rng)
    assert skips.dtype == np.float32 and (skips <= SKIP_MAX_PCT).all() and (skips >= 0).all()
    assert (plays >= LISTEN_PCT).all() and (plays <= 100).all()


def test_albums_are_contiguous_and_never_span_artists():
    cat = build_catalog(TINY, np.random.default_rng(4))
    assert (np.diff(cat.album) >= 0).all() and (np.diff(cat.artist) >= 0).all()
    starts = np.flatnonzero(np.diff(cat.album)) + 1
    assert (np.bincount(cat.album, minlength=0) >= 1).all()
    # One artist per album.
    assert (np.diff(cat.artist)[np.diff(cat.album) == 0] == 0).all()
    assert np.array_equal(cat.album_first[1:], starts)
    assert not (cat.successors == np.arange(cat.n_tracks)[:, None]).any()
    assert np.isclose(cat.popularity.sum(), 1.0)
