"""The sparse optimizer step on a large embedding table: LazyAdam against torch's SparseAdam.

Both optimizers update the same table from the same sparse gradients (rows of a training step:
a batch's distinct tracks and its shared negatives, duplicates included); the script checks
that they end with equal weights and prints the time per step of each and their ratio, measured
side by side in one run.

Usage::

    python benchmarks/bench_optim.py                          # CPU, 1M x 64 table
    python benchmarks/bench_optim.py --device cuda --rows 10000000 --dim 128
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from recmodel.retriever.optim import LazyAdam


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_optimizer(cls, table: nn.Embedding, batches: list[torch.Tensor], warmup: int) -> list:
    """Seconds of each optimizer step after ``warmup`` untimed ones (backward not timed)."""
    opt = cls(table.parameters(), lr=1e-2, betas=(0.9, 0.98))
    device = table.weight.device
    times = []
    for i, ids in enumerate(batches):
        opt.zero_grad()
        table(ids).sum().backward()
        _sync(device)
        start = time.perf_counter()
        opt.step()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--ids", type=int, default=60_000, help="looked-up rows per step")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    table = nn.Embedding(args.rows, args.dim, sparse=True).to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    # Zipf-like ids: popular rows recur within a step, as targets and negatives do.
    batches = [
        (torch.rand(args.ids, generator=generator, device=device) ** 4 * args.rows).long()
        for _ in range(args.steps + args.warmup)
    ]
    results: dict[str, list[float]] = {"SparseAdam": [], "LazyAdam": []}
    tables = {}
    # Two rounds in alternating order, so neither optimizer always runs on a cold allocator.
    for order in (("SparseAdam", "LazyAdam"), ("LazyAdam", "SparseAdam")):
        for name in order:
            cls = LazyAdam if name == "LazyAdam" else torch.optim.SparseAdam
            tables[name] = copy.deepcopy(table)
            results[name] += time_optimizer(cls, tables[name], batches, args.warmup)
    results = {name: statistics.median(times) for name, times in results.items()}
    equal = torch.equal(tables["SparseAdam"].weight, tables["LazyAdam"].weight)
    print(f"table {args.rows:,} x {args.dim} on {device}, {args.ids:,} looked-up rows per step")
    for name, seconds in results.items():
        print(f"{name:12s} {seconds * 1e3:9.2f} ms/step")
    print(f"ratio SparseAdam / LazyAdam: {results['SparseAdam'] / results['LazyAdam']:.2f}x")
    print(f"equal weights after {len(batches)} steps: {equal}")


if __name__ == "__main__":
    main()
