"""What the long-term profile adds to building a training batch, by history length.

A batch of 256 windows (``max_len`` 200) is built with and without the profile
(:mod:`recmodel.retriever.profile`) from random histories whose mean length is given; the
profile reads at most ``profile_history`` plays before each window, which bounds its cost for
listeners with years of history. Printed: milliseconds per batch side by side and their ratio.

    python benchmarks/bench_profile.py
    python benchmarks/bench_profile.py --lengths 130 2000 10000 --history 1000 4000
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from recmodel.core.dataset import UserItems
from recmodel.retriever.batches import make_batch, make_windows

MAX_LEN, BATCH, SIZE, CATALOG = 200, 256, 64, 50_000


def histories(mean_length: int, users: int, seed: int = 0) -> UserItems:
    """Random histories, a Zipf-like catalog so that tracks repeat as in music."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(mean_length // 2, mean_length * 3 // 2 + 1, users)
    indptr = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    items = np.minimum(rng.zipf(1.3, indptr[-1]), CATALOG).astype(np.int32)
    ts = np.cumsum(rng.integers(0, 7_200, indptr[-1])).astype(np.int64)
    return UserItems(indptr, items, ts)


def per_batch_ms(windows, repeats: int, seed: int = 1) -> float:
    rng = np.random.default_rng(seed)
    batches = [rng.permutation(len(windows))[:BATCH] for _ in range(repeats)]
    start = time.perf_counter()
    for ids in batches:
        make_batch(windows, ids)
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", nargs="+", type=int, default=[130, 2_000, 10_000])
    parser.add_argument("--history", nargs="+", type=int, default=[1_000, 10_000])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"batch {BATCH} windows, max_len {MAX_LEN}, profile {SIZE} tracks\n")
    print("| mean history | look-back | no profile ms | profile ms | ratio |")
    print("|--:|--:|--:|--:|--:|")
    for length in args.lengths:
        data = histories(length, users=max(BATCH, 600_000 // length))
        plain = per_batch_ms(make_windows(data, MAX_LEN), args.repeats)
        for history in args.history:
            windows = make_windows(data, MAX_LEN, SIZE, history)
            with_profile = per_batch_ms(windows, args.repeats)
            print(
                f"| {length:,} | {history:,} | {plain:.1f} | {with_profile:.1f} "
                f"| {with_profile / plain:.1f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
