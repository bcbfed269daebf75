"""User shards read from disk hold exactly the events of their users, as the whole file does."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recmodel.core.columns import Window
from recmodel.core.dataset_io import load_dataset
from recmodel.core.user_shards import concat_rows, open_user_shards, shard_bounds
from tests.helpers.shard_tables import random_dataset, write_tables


def plain_bounds(user_events: list[int], n_shards: int) -> list[int]:
    """The cut after the first user whose running total reaches k/S of the events, by a loop."""
    total, n_users = sum(user_events), len(user_events)
    cuts, running, k = {0, n_users}, 0, 1
    for user, events in enumerate(user_events):
        running += events
        while k < n_shards and running >= k * total // n_shards:
            cuts.add(min(user + 1, n_users))
            k += 1
    return sorted(cuts)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n_shards", [1, 2, 3, 8, 200])
def test_shard_bounds_match_a_plain_loop_and_balance_the_events(seed, n_shards):
    rng = np.random.default_rng(seed)
    user_events = rng.integers(0, 50, size=int(rng.integers(1, 60)))
    bounds = shard_bounds(user_events, n_shards)
    assert bounds.tolist() == plain_bounds(user_events.tolist(), min(n_shards, len(user_events)))
    assert bounds[0] == 0 and bounds[-1] == len(user_events)
    assert (np.diff(bounds) >= 1).all() and len(bounds) - 1 <= n_shards
    per_shard = np.add.reduceat(user_events, bounds[:-1])
    assert per_shard.sum() == user_events.sum()
    # A shard overshoots its share by at most one user's events.
    assert per_shard.max() <= -(-user_events.sum() // len(per_shard)) + user_events.max()


@pytest.fixture(scope="module", params=[0, 1, 2])
def written(request, tmp_path_factory):
    dataset = random_dataset(request.param)
    paths = write_tables(dataset, tmp_path_factory.mktemp("tables"), row_group_size=37)
    return dataset, paths


@pytest.mark.parametrize("n_shards", [1, 2, 3, 8])
def test_each_shard_holds_exactly_its_users_events(written, n_shards):
    dataset, paths = written
    whole = load_dataset(paths["events"], paths["items"], paths["users"])
    per_shard = -(-len(dataset.ts) // n_shards)
    shards = open_user_shards(paths["events"], paths["items"], paths["users"], per_shard)
    assert shards.n_shards <= n_shards and shards.n_events == len(dataset.ts)
    np.testing.assert_array_equal(shards.item_counts, whole.item_counts)
    for window in Window.NAMES:
        np.testing.assert_array_equal(
            shards.users_with_events(window), whole.users_with_events(window)
        )
        np.testing.assert_array_equal(shards.lengths_before(window), whole.history(window).lengths)
        assert shards.end_before(window) == whole.end_before(window)
    assert shards.end_before(Window.TEST + 1) == whole.end_before(Window.TEST + 1)
    parts = list(shards.parts())
    assert [part.n_users for part, _ in parts] == np.diff(shards.bounds).tolist()
    assert [first for _, first in parts] == shards.bounds[:-1].tolist()
    np.testing.assert_array_equal(shards.train_lengths, whole.train().lengths)
    for name in ("artist", "album", "genre", "tempo_bucket", "acoustic", "has_acoustic"):
        np.testing.assert_array_equal(getattr(shards.items, name), getattr(whole.items, name))
    seen = 0
    for shard in range(shards.n_shards):
        first, end = shards.users(shard)
        part = shards.shard(shard)
        rows = (whole.user_idx >= first) & (whole.user_idx < end)
        assert part.n_users == end - first
        np.testing.assert_array_equal(part.user_idx + first, whole.user_idx[rows])
        for column in ("item_idx", "ts", "window"):
            np.testing.assert_array_equal(getattr(part, column), getattr(whole, column)[rows])
        seen += len(part.ts)
    assert seen == len(whole.ts)


def test_the_shard_count_is_a_multiple_of_the_ranks(written):
    dataset, paths = written
    shards = open_user_shards(paths["events"], paths["items"], paths["users"], 0, min_shards=3)
    assert shards.n_shards == 3
    shards = open_user_shards(
        paths["events"], paths["items"], paths["users"], len(dataset.ts) // 4, min_shards=3
    )
    assert shards.n_shards == 6


def test_concat_rows_puts_rows_one_after_the_other(written):
    dataset, _ = written
    histories = dataset.train()
    parts = [histories.take(np.arange(0, 7)), histories.take(np.arange(7, dataset.n_users))]
    joined = concat_rows(parts)
    np.testing.assert_array_equal(joined.indptr, histories.indptr)
    np.testing.assert_array_equal(joined.items, histories.items)
    np.testing.assert_array_equal(joined.ts, histories.ts)
    assert concat_rows([]).n_users == 0


def test_bad_events_name_the_file_and_the_column(written, tmp_path):
    _, paths = written
    table = pq.read_table(paths["events"])
    users = table.column("user_idx").to_numpy().copy()
    users[-1] = 10**6
    bad = tmp_path / "events.parquet"
    pq.write_table(table.set_column(0, "user_idx", pa.array(users, pa.int32())), bad)
    with pytest.raises(ValueError, match=r"events\.parquet: user_idx outside"):
        open_user_shards(bad, paths["items"], paths["users"], 100)


def test_unsorted_events_fail_when_their_shard_is_read(written, tmp_path):
    _, paths = written
    table = pq.read_table(paths["events"])
    ts = table.column("ts").to_numpy().copy()
    ts[:2] = ts[:2][::-1] if ts[0] != ts[1] else ts[:2]
    ts[0] = ts.max() + 1  # the first user's first play is now its latest
    bad = tmp_path / "events.parquet"
    pq.write_table(table.set_column(2, "ts", pa.array(ts, pa.int64())), bad)
    shards = open_user_shards(bad, paths["items"], paths["users"], 0)
    with pytest.raises(ValueError, match=r"events\.parquet \(users 0\.\..*not sorted"):
        shards.shard(0)
