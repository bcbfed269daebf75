"""The time model: each step's seconds at a data size, on the machine that runs it.

The memory model (:mod:`recmodel.core.footprint`) says what a step must hold; this one says how
long it takes. Both take the preset's settings and the data's :class:`~recmodel.core.footprint.
Sizes`. Every constant is calibrated on this code's benchmarks, at sizes *below* the one each
is checked at (``tests/core/test_timing.py`` holds the held-out measurements; ``docs/scale.md``
lists the sources):

- extraction: core-seconds per raw event on one shard and on several, from
  ``benchmarks/calibrate_time.py`` at 1/10,000 and 1/1,000 of Yambda-5B, divided among DuckDB's
  threads (it parallelises its scans, joins and window functions); checked at 1/100 (47.6M raw
  events) in the same run;
- training: model FLOPs per target position (the encoder, attention and the sampled softmax's
  logits, forward and backward) over the FLOP rate measured for the device: a CPU thread
  (one epoch at 1/1,000) or one H200 (``benchmarks/gpu.py``); checked at 1/100;
- every other step: a fixed part measured on the tiny preset and a part proportional to the
  final events (or the users, for the steps that handle top-100 lists), measured on a whole
  run at 1/1,000 (``benchmarks/bench_memory.py``).

Predictions far above the calibrated sizes assume the code keeps its measured throughput; they
are bounds of the code as it is, not of what the hardware could do.
"""

from __future__ import annotations

from dataclasses import dataclass

from recmodel.core.config import PipelineConfig
from recmodel.core.footprint import Sizes
from recmodel.core.resources import STEPS

# Extraction, benchmarks/calibrate_time.py (2 DuckDB threads; medians of 3 runs, interleaved):
# on one shard 0.9 s for 542,912 raw events and 3.9 s for 4,855,225, so 0.689 us per event on
# 2 threads beyond 0.52 s; on 10 user shards in one process 3.9 s and 9.1 s: 1.202 us per event
# beyond 3.24 s (the partition pass, the shards' Parquet tables, a connection per shard and
# round: 0.27 s per shard).
EXTRACT_CORE_SECONDS_PER_EVENT = 1.38e-6
EXTRACT_FIXED_SECONDS = 0.52
SHARDED_CORE_SECONDS_PER_EVENT = 2.40e-6
SHARD_FIXED_SECONDS = 0.27
# The generator (synthetic runs only, in start; one thread): 4.2 s for 4,855,225 raw events.
GENERATE_SECONDS_PER_EVENT = 0.87e-6
# Training: one epoch at 1/1,000 took 83.2 s for 0.67 x 3,750,023 target positions on one
# thread of the default model (training_flops: 0.765 MFLOP per position): 23.1 GFLOP/s.
CPU_THREAD_FLOPS = 23.1e9
# One H200, benchmarks/gpu.py (docs/gpu.md): 773,341 positions/s of its model, 105.7 MFLOP
# per position by training_flops: 81.7 TFLOP/s.
GPU_FLOPS = 81.7e12

# Whole runs, benchmarks/bench_memory.py: each step's seconds on the tiny preset (38,502 final
# events, 265 users) are its fixed part; what it took beyond that at 1/1,000 (3,750,023 final
# events, 970 users; the run took 469 s) is spread over the final events, or the users for
# the steps that handle top-100 lists.
TINY = {
    "start": 0.5, "extract_sessions": 1.0, "estimate_q": 1.2, "pretrain": 9.5,
    "pretrain_no_logq": 8.3, "baselines": 4.4, "materialize_ranker_scores": 4.0,
    "finetune": 4.9, "join": 0.5, "report": 3.0, "end": 2.9,
}  # fmt: skip
YAMBDA_1000 = {
    "start": 0.5, "extract_sessions": 9.2, "estimate_q": 1.1, "pretrain": 367.7,
    "pretrain_no_logq": 365.6, "baselines": 123.5, "materialize_ranker_scores": 16.8,
    "finetune": 46.0, "join": 0.9, "report": 6.5, "end": 7.1,
}  # fmt: skip
TINY_SIZE, YAMBDA_1000_SIZE = (38_502, 265), (3_750_023, 970)  # final events, users
PER_USER_STEPS = ("join", "report")  # top-100 lists: their work grows with the users


def _slope(step: str) -> float:
    """Seconds per final event (per user for PER_USER_STEPS) beyond the tiny run's."""
    column = 1 if step in PER_USER_STEPS else 0
    grown = YAMBDA_1000_SIZE[column] - TINY_SIZE[column]
    return max(0.0, YAMBDA_1000[step] - TINY[step]) / grown


@dataclass(frozen=True)
class Machine:
    """Where a step runs: its CPU cores and GPUs (H200-class)."""

    name: str
    cpus: int
    gpus: int = 0

    def training_flops(self, threads: int = 0) -> float:
        """FLOP/s of the training loop: the GPUs' (data parallel), else its CPU threads
        (``train.threads``; 0 = half the cores, as two trainings share the machine)."""
        if self.gpus:
            return GPU_FLOPS * self.gpus
        return CPU_THREAD_FLOPS * (threads or max(1, self.cpus // 2))


LAPTOP = Machine("2 cores (the development machine)", cpus=2)


def training_flops(cfg: PipelineConfig, batch_size: int) -> float:
    """Model FLOPs per target position, forward and backward (3 x the forward's)."""
    m, t = cfg.model, cfg.train
    candidates = 1 + (t.n_negatives if t.negatives != "in_batch" else 0)
    if t.negatives in ("in_batch", "both"):
        candidates += batch_size * m.max_len
    encoder = 2 * 12 * m.d_model**2 * m.n_blocks
    attention = 4 * m.max_len * m.d_model * m.n_blocks
    logits = 2 * m.d_model * candidates
    return 3.0 * (encoder + attention + logits)


def pretrain_positions(cfg: PipelineConfig, sizes: Sizes) -> float:
    """Target positions of one pretraining epoch: the pretrain window's final events."""
    e = cfg.extract
    return sizes.events * (1 - e.test_share - e.val_share - e.finetune_share)


def epoch_seconds(cfg: PipelineConfig, sizes: Sizes, machine: Machine) -> float:
    """One pretraining epoch on ``train.nodes`` machines like ``machine``, data parallel (the
    gradients' traffic between them is not priced)."""
    flops = pretrain_positions(cfg, sizes) * training_flops(cfg, cfg.train.batch_size)
    return flops / (machine.training_flops(cfg.train.threads) * cfg.train.nodes)


def extract_seconds(cfg: PipelineConfig, sizes: Sizes, machine: Machine) -> float:
    """The SQL extraction on one machine, over ``extract.threads`` DuckDB threads (at most its
    CPUs): on one shard, or on ``extract.shards`` run one after the other."""
    threads = max(1, min(cfg.extract.threads, machine.cpus))
    shards = cfg.extract.shards
    if shards == 1:
        return EXTRACT_FIXED_SECONDS + EXTRACT_CORE_SECONDS_PER_EVENT * sizes.raw_events / threads
    fixed = EXTRACT_FIXED_SECONDS + SHARD_FIXED_SECONDS * shards
    return fixed + SHARDED_CORE_SECONDS_PER_EVENT * sizes.raw_events / threads


def step_seconds(
    cfg: PipelineConfig, sizes: Sizes, machines: dict[str, Machine], synthetic: bool = False
) -> dict[str, float]:
    """Each step's seconds at ``sizes``; ``machines`` maps a step to where it runs.

    ``extract_sessions`` stands for the whole extraction, its shard rounds included, on one
    node. Pretraining counts ``train.epochs`` epochs, which early stopping may cut short: it is
    an upper bound. ``synthetic`` adds the generator's time to ``start``.
    """
    seconds = {}
    for step in STEPS:
        machine = machines.get(step, LAPTOP)
        if step == "extract_sessions":
            took = extract_seconds(cfg, sizes, machine)
        elif step in ("pretrain", "pretrain_no_logq"):
            took = TINY[step] + cfg.train.epochs * epoch_seconds(cfg, sizes, machine)
        elif step in PER_USER_STEPS:
            took = TINY[step] + _slope(step) * sizes.users
        else:
            took = TINY[step] + _slope(step) * sizes.events
        if step == "start" and synthetic:
            took += GENERATE_SECONDS_PER_EVENT * sizes.raw_events
        seconds[step] = took
    return seconds
