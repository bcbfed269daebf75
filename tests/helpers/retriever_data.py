"""Tiny handmade datasets for the retriever tests (imported by the test modules)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recmodel.core.columns import Window
from recmodel.core.config import ModelConfig
from recmodel.core.dataset import Dataset, ItemFeatures, UserItems


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and the test machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_model(max_len: int, profile_size: int, d_model: int = 16) -> ModelConfig:
    """A one-block, two-head retriever without dropout, small enough for exact comparisons."""
    return ModelConfig(
        d_model=d_model,
        n_blocks=1,
        n_heads=2,
        max_len=max_len,
        dropout=0.0,
        id_dim=8,
        meta_dim=4,
        profile_size=profile_size,
    )


def item_features(n_items: int, acoustic_dim: int = 3, seed: int = 0) -> ItemFeatures:
    """Random metadata for items ``1..n_items`` with some unknown (0) codes and vectors."""
    rng = np.random.default_rng(seed)

    def codes(cardinality: int) -> np.ndarray:
        out = rng.integers(0, cardinality, n_items + 1)  # 0 = unknown, as in extraction
        out[0] = 0
        return out.astype(np.int64)

    has_acoustic = rng.random(n_items + 1) < 0.8
    has_acoustic[0] = False
    acoustic = rng.normal(size=(n_items + 1, acoustic_dim)).astype(np.float32)
    acoustic[~has_acoustic] = 0.0
    return ItemFeatures(
        artist=codes(max(2, n_items // 3)),
        album=codes(max(2, n_items // 2)),
        genre=codes(4),
        tempo_bucket=codes(5),
        acoustic=acoustic,
        has_acoustic=has_acoustic,
        track_length=np.full(n_items + 1, 200.0, dtype=np.float32),
    )


def make_dataset(
    train: list[list[int]], val: list[list[int]] | None = None, n_items: int | None = None
) -> Dataset:
    """A Dataset whose user ``u`` listened to ``train[u]`` (pretrain) then ``val[u]`` (val)."""
    val = val if val is not None else [[] for _ in train]
    n_items = n_items or max(max(s, default=0) for s in [*train, *val])
    users, items, windows = [], [], []
    for u, (before, after) in enumerate(zip(train, val, strict=True)):
        for seq, window in ((before, Window.PRETRAIN), (after, Window.VAL)):
            users += [u] * len(seq)
            items += list(seq)
            windows += [window] * len(seq)
    user_idx = np.asarray(users, dtype=np.int32)
    item_idx = np.asarray(items, dtype=np.int32)
    window = np.asarray(windows, dtype=np.int8)
    counts = np.bincount(item_idx[window == Window.PRETRAIN], minlength=n_items + 1)
    return Dataset(
        user_idx=user_idx,
        item_idx=item_idx,
        ts=np.arange(len(users), dtype=np.int64) * 60,
        window=window,
        n_users=len(train),
        n_items=n_items,
        items=item_features(n_items),
        item_counts=counts.astype(np.int64),
    )


def user_items(rows: list[list[int]]) -> UserItems:
    """UserItems with one row per list."""
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=indptr[1:])
    items = np.asarray([i for r in rows for i in r], dtype=np.int32)
    return UserItems(indptr, items, np.arange(len(items), dtype=np.int64))


def timed_user_items(rows: list[list[int]], seed: int = 0) -> UserItems:
    """UserItems with one row per list, plays minutes to weeks apart (some at the same second)."""
    rng = np.random.default_rng(seed)
    histories = user_items(rows)
    gaps = rng.choice([0, 60, 3_600, 86_400, 7 * 86_400, 40 * 86_400], len(histories.items))
    return UserItems(histories.indptr, histories.items, np.cumsum(gaps).astype(np.int64))


def cycle_dataset(n_items: int = 20, n_users: int = 60, length: int = 30, seed: int = 0):
    """Users walk the cycle 1 -> 2 -> ... -> n_items -> 1 from random starts; val = next item."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for _ in range(n_users):
        start = int(rng.integers(0, n_items))
        walk = [(start + t) % n_items + 1 for t in range(length + 1)]
        train.append(walk[:-1])
        val.append(walk[-1:])
    return make_dataset(train, val, n_items)


def plain_profile(items, ts, reference, size):
    """A long-term profile by a plain loop: ``(track, log1p of [7-day sum, 30-day sum, plays])``
    of the ``size`` tracks of largest 30-day sum (then lower id), ages up to ``reference``."""
    stats = {}
    for item, t in zip(items.tolist(), ts.tolist(), strict=True):
        age = reference - t
        s = stats.setdefault(item, [0.0, 0.0, 0.0])
        s[0] += math.exp(-age / (7 * 86_400))
        s[1] += math.exp(-age / (30 * 86_400))
        s[2] += 1.0
    ranked = sorted(stats, key=lambda j: (-stats[j][1], j))[:size]
    return [(j, [math.log1p(v) for v in stats[j]]) for j in ranked]
