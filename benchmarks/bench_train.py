"""Training-step benchmarks of the retriever (same code path as ``recmodel.retriever.train.pretrain``).

(a) Throughput at the default model size (``ModelConfig()``), batch 128, 256 shared negatives:
    training positions per second, and model FLOP/s as a share of this machine's measured fp32
    matmul FLOP/s (a large matmul timed in the same run) = utilization.
(b) Catalog scaling: seconds per training step with 10k, 1M and 10M items at the same batch and
    negatives (random metadata). A step must not touch the whole catalog, so the target is
    ``time(10M) / time(10k) <= 1.5``.

Usage::

    python benchmarks/bench_train.py                      # both parts
    python benchmarks/bench_train.py --part throughput --steps 20
    python benchmarks/bench_train.py --part scaling --catalogs 10000 1000000
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import logging
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
from gpu import ACOUSTIC_DIM, make_candidates, random_catalog  # benchmarks/, beside this file

from recmodel.core.config import ModelConfig, TrainConfig
from recmodel.core.dataset import UserItems
from recmodel.retriever.batches import WindowBatcher, make_windows
from recmodel.retriever.distributed import DistContext
from recmodel.retriever.model import MLP_RATIO, Retriever
from recmodel.retriever.optim import build_optimizer
from recmodel.retriever.train import train_step

logger = logging.getLogger("bench_train")

BATCH = 128
NEGATIVES = 256
USERS = 512  # histories of max_len + 1 items: every window is full (B * max_len positions)
MATMUL_N = 2048


def random_histories(n_items: int, length: int, rng: np.random.Generator) -> UserItems:
    items = rng.integers(1, n_items + 1, USERS * length).astype(np.int32)
    indptr = np.arange(USERS + 1, dtype=np.int64) * length
    return UserItems(indptr, items, np.zeros(len(items), dtype=np.int64))


@dataclass
class StepTimes:
    seconds: list[float]
    positions: int  # training positions per step
    tower_rows: int  # mean distinct ids of inputs and targets, plus the negatives (upper bound)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def time_steps(n_items: int, cfg: ModelConfig, steps: int, warmup: int, seed: int = 0) -> StepTimes:
    """Seconds of each of ``steps`` training steps after ``warmup`` untimed ones."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = Retriever(random_catalog(n_items, rng), cfg)
    counts = rng.zipf(1.3, n_items + 1).clip(max=10**6)
    train = TrainConfig(batch_size=BATCH, n_negatives=NEGATIVES)
    assert train.negatives == "shared", train.negatives  # what make_candidates builds
    candidates = make_candidates(counts, NEGATIVES)
    optimizer = build_optimizer(
        model,
        lr=train.lr,
        sparse_lr=train.sparse_lr,
        weight_decay=train.weight_decay,
        warmup_steps=train.warmup_steps,
        total_steps=10**6,
        grad_clip=train.grad_clip,
    )
    windows = make_windows(random_histories(n_items, cfg.max_len + 1, rng), cfg.max_len)
    batcher = WindowBatcher(windows, BATCH, seed)
    batches = (step for epoch in itertools.count() for step in batcher.epoch(epoch))
    generator, ctx = torch.Generator().manual_seed(seed), DistContext()
    model.train()
    seconds, distinct = [], []
    for i in range(warmup + steps):
        step = next(batches)
        start = time.perf_counter()
        train_step(model, optimizer, candidates, generator, step, train.logq, ctx)
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
            ids = np.concatenate([step.local.inputs.ravel(), step.local.targets.ravel()])
            distinct.append(len(np.unique(ids)))
    return StepTimes(seconds, BATCH * cfg.max_len, int(np.mean(distinct)) + NEGATIVES)


def step_flops(
    cfg: ModelConfig, positions: int, tower_rows: int, acoustic_dim: int = ACOUSTIC_DIM
) -> float:
    """Matmul FLOPs of one training step (forward x 3 for forward + backward).

    ``tower_rows``: the distinct ids the item tower runs over (inputs, targets, negatives).
    """
    b_t, d, t = positions, cfg.d_model, cfg.max_len
    tower_in = cfg.id_dim + 5 * cfg.meta_dim  # id + 4 categorical + acoustic projection
    per_item = 2 * tower_in * d + 2 * acoustic_dim * cfg.meta_dim
    tower = per_item * tower_rows  # one pass over the step's distinct ids
    per_token = (2 * 3 * d * d + 2 * d * d + 2 * 2 * d * MLP_RATIO * d) + 2 * 2 * t * d
    encoder = cfg.n_blocks * per_token * b_t
    head = 2 * positions * d * (NEGATIVES + 1)
    return 3.0 * (tower + encoder + head)


def matmul_flops_per_s(n: int = MATMUL_N, repeats: int = 5) -> float:
    """Best-of-``repeats`` fp32 FLOP/s of an ``n x n`` by ``n x n`` matmul."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def throughput(steps: int) -> dict[str, float]:
    cfg = ModelConfig()
    peak = matmul_flops_per_s()
    times = time_steps(50_000, cfg, steps=steps, warmup=3)
    flops = step_flops(cfg, times.positions, times.tower_rows)
    achieved = flops / times.median
    peak_after = matmul_flops_per_s()  # the machine is shared: bracket the run
    return {
        "step_s_median": times.median,
        "positions_per_s": times.positions / times.median,
        "model_gflop_per_step": flops / 1e9,
        "model_gflop_per_s": achieved / 1e9,
        "matmul_gflop_per_s": max(peak, peak_after) / 1e9,
        "utilization": achieved / max(peak, peak_after),
    }


def scaling(catalogs: list[int], steps: int) -> dict[str, float]:
    cfg = ModelConfig()
    out = {}
    for n_items in [*catalogs, catalogs[0]]:  # the first again: the machine's drift
        times = time_steps(n_items, cfg, steps=steps, warmup=3)
        key = f"step_s@{n_items}" + ("_again" if f"step_s@{n_items}" in out else "")
        out[key] = times.median
        logger.info("%d items: %.4f s/step (median of %d)", n_items, times.median, steps)
        gc.collect()
    out["ratio_largest_smallest"] = out[f"step_s@{catalogs[-1]}"] / out[f"step_s@{catalogs[0]}"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("throughput", "scaling", "all"), default="all")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--catalogs", type=int, nargs="+", default=[10_000, 1_000_000, 10_000_000])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logger.info("torch %s, %d threads", torch.__version__, torch.get_num_threads())
    results = {}
    if args.part in ("throughput", "all"):
        results["throughput"] = throughput(args.steps)
    if args.part in ("scaling", "all"):
        results["scaling"] = scaling(sorted(args.catalogs), args.steps)
    print(json.dumps(results, indent=2))  # noqa: T201 - the benchmark's report


if __name__ == "__main__":
    main()
