"""Training windows and batches: exact handmade cases and loop references on random histories."""

import threading

import numpy as np
import pytest

from recmodel.retriever.batches import (
    PAD,
    WindowBatcher,
    last_items,
    left_padded,
    make_batch,
    make_windows,
    prefetched,
)
from tests.helpers.retriever_data import user_items


def reference_windows(history: list[int], max_len: int) -> list[list[int]]:
    """The module docstring's formula, one window at a time, most recent first."""
    n, out, k = len(history), [], 0
    while n - k * max_len >= 2:
        end = n - k * max_len
        out.append(history[max(0, end - max_len - 1) : end])
        k += 1
    return out


def windows_as_lists(histories, max_len):
    w = make_windows(histories, max_len)
    return [w.items[s : s + n].tolist() for s, n in zip(w.starts, w.lengths, strict=True)], w


def test_windows_exact_on_handmade_histories():
    histories = user_items([[1, 2, 3, 4, 5, 6, 7, 8], [9], [], [4, 3, 2, 1], [7, 7]])
    windows, w = windows_as_lists(histories, max_len=3)
    assert windows == [[5, 6, 7, 8], [2, 3, 4, 5], [1, 2], [4, 3, 2, 1], [7, 7]]
    assert w.users.tolist() == [0, 0, 0, 3, 4]
    assert w.n_targets == 7 + 3 + 1


def test_windows_match_reference_and_cover_every_transition_once():
    rng = np.random.default_rng(0)
    rows = [rng.integers(1, 30, rng.integers(0, 40)).tolist() for _ in range(200)]
    for max_len in (1, 2, 5, 16):
        windows, w = windows_as_lists(user_items(rows), max_len)
        expected = [win for row in rows for win in reference_windows(row, max_len)]
        assert windows == expected
        assert all(2 <= len(win) <= max_len + 1 for win in windows)
        # Targets (every item but a window's first) are each transition exactly once.
        per_user_targets = {}
        for user, win in zip(w.users, windows, strict=True):
            per_user_targets.setdefault(int(user), []).append(win[1:])
        for user, row in enumerate(rows):
            got = [t for win in reversed(per_user_targets.get(user, [])) for t in win]
            assert got == row[1:]


def test_left_padded_keeps_the_most_recent_items():
    items = np.array([5, 6, 7, 8, 9], dtype=np.int32)
    out = left_padded(items, np.array([0, 3, 1]), np.array([5, 2, 0]), width=3)
    assert out.tolist() == [[7, 8, 9], [0, 8, 9], [0, 0, 0]]
    assert out.dtype == np.int64


def test_left_padded_matches_loop():
    rng = np.random.default_rng(1)
    items = rng.integers(1, 100, 500).astype(np.int32)
    starts = rng.integers(0, 400, 300)
    lengths = rng.integers(0, 60, 300)
    lengths = np.minimum(lengths, 500 - starts)
    for width in (1, 7, 64):
        out = left_padded(items, starts, lengths, width)
        for r in range(len(starts)):
            row = items[starts[r] : starts[r] + lengths[r]][-width:] if lengths[r] else []
            expected = [PAD] * (width - len(row)) + list(row)
            assert out[r].tolist() == expected


def test_last_items_exact():
    histories = user_items([[1, 2, 3, 4], [], [7]])
    assert last_items(histories, np.array([2, 0, 1]), 3).tolist() == [
        [0, 0, 7],
        [2, 3, 4],
        [0, 0, 0],
    ]


def test_make_batch_inputs_targets_positions_exact():
    histories = user_items([[1, 2, 3, 4, 5, 6, 7, 8], [9, 4]])
    w = make_windows(histories, max_len=3)  # [5 6 7 8], [2 3 4 5], [1 2], [9 4]
    batch = make_batch(w, np.array([2, 0, 3]))
    assert batch.inputs.tolist() == [[0, 0, 1], [5, 6, 7], [0, 0, 9]]
    assert batch.targets.tolist() == [[0, 0, 2], [6, 7, 8], [0, 0, 4]]
    assert batch.positions.tolist() == [2, 3, 4, 5, 8]
    assert batch.windows.tolist() == [2, 0, 3]


def test_batch_is_cropped_to_its_longest_window():
    w = make_windows(user_items([[1, 2], [3, 4, 5]]), max_len=10)
    assert make_batch(w, np.array([0, 1])).inputs.tolist() == [[0, 1], [3, 4]]


def random_windows(n_users=50, seed=2):
    rng = np.random.default_rng(seed)
    rows = [rng.integers(1, 50, rng.integers(2, 30)).tolist() for _ in range(n_users)]
    return make_windows(user_items(rows), max_len=4)


def test_batcher_epoch_is_a_seeded_permutation():
    w = random_windows()
    batcher = WindowBatcher(w, batch_size=16, seed=3)
    assert len(batcher) == -(-len(w) // 16)
    seen = np.concatenate([s.local.windows for s in batcher.epoch(0)])
    assert sorted(seen.tolist()) == list(range(len(w)))
    again = np.concatenate([s.local.windows for s in WindowBatcher(w, 16, seed=3).epoch(0)])
    assert np.array_equal(seen, again)
    other_epoch = np.concatenate([s.local.windows for s in batcher.epoch(1)])
    assert not np.array_equal(seen, other_epoch)


def test_batcher_ranks_partition_each_global_batch():
    w = random_windows()
    world = 3
    single = list(WindowBatcher(w, batch_size=16, seed=4).epoch(0))
    ranks = [
        list(WindowBatcher(w, 16, seed=4, rank=r, world_size=world).epoch(0)) for r in range(world)
    ]
    # The last global batch holds len(w) % 16 windows; it is kept when every rank gets one.
    assert all(len(steps) == len(single) - (0 < len(w) % 16 < world) for steps in ranks)
    for index, step in enumerate(ranks[0]):
        parts = [ranks[r][index] for r in range(world)]
        assert all(len(p.local.windows) >= 1 for p in parts)
        joined = np.concatenate([p.local.windows for p in parts])
        assert np.array_equal(joined, single[index].local.windows)
        assert all(np.array_equal(p.global_targets, single[index].global_targets) for p in parts)
        assert step.n_global == sum(len(p.local.positions) for p in parts)


def test_batcher_drops_a_last_batch_smaller_than_the_world():
    w = make_windows(user_items([[1, 2]] * 5), max_len=3)  # 5 windows
    assert len(WindowBatcher(w, batch_size=4, seed=0, rank=0, world_size=2)) == 1
    assert len(WindowBatcher(w, batch_size=4, seed=0)) == 2


def test_batcher_rejects_bad_sharding():
    w = make_windows(user_items([[1, 2]]), max_len=3)
    with pytest.raises(ValueError, match="window per rank"):
        WindowBatcher(w, batch_size=4, seed=0, rank=0, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        WindowBatcher(w, batch_size=4, seed=0, rank=2, world_size=2)


def test_prefetched_yields_every_item_in_order():
    assert list(prefetched(iter(range(50)), depth=3)) == list(range(50))
    assert list(prefetched([])) == []


def test_prefetched_raises_the_producers_error_after_the_items_before_it():
    def items():
        yield 1
        yield 2
        raise ValueError("batch 3 is broken")

    got = []
    with pytest.raises(ValueError, match="batch 3 is broken"):
        for item in prefetched(items()):
            got.append(item)
    assert got == [1, 2]


def test_leaving_early_stops_the_producer():
    built = []

    def items():
        for i in range(1_000):
            built.append(i)
            yield i

    for item in prefetched(items(), depth=2):
        if item == 5:
            break
    assert not any(t.name == "prefetch" and t.is_alive() for t in threading.enumerate())
    assert len(built) <= 5 + 1 + 2 + 1  # what was consumed, the queue, the one being offered
