"""GPU path check and training throughput of the retriever, in one script.

1. Correctness: one model and one batch (with one draw of negatives) on the CPU in float32 and on
   the device under the trainer's bf16 autocast give the same sampled-softmax loss (logQ
   corrected), gradients pointing the same way, and the same full-catalog top-k and NDCG.
2. Throughput: training positions per second of ``recmodel.retriever.train.train_step`` on a 10M-track
   catalog with random metadata, 8192 shared negatives, d = 512, warm-up steps excluded.
3. Model FLOP utilization: analytic model FLOPs per step (:func:`step_flops`) over the measured
   step time, divided by the card's bf16 matmul rate measured in the same run. Below the target,
   a ``torch.profiler`` table shows where the step's time goes.

Synthetic data only (no downloads, no files). Exit code 1 when a correctness check fails.

Usage::

    python benchmarks/gpu.py                       # on a CUDA machine; sized for < 5 minutes
    python benchmarks/gpu.py --quick --device cpu  # tiny sizes: the script's logic, anywhere
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.autograd import DeviceType

from recmodel.core.config import ModelConfig, QConfig, TrainConfig
from recmodel.core.dataset import ItemFeatures, UserItems
from recmodel.evaluation.metrics import evaluate
from recmodel.retriever.batches import Step, WindowBatcher, make_windows
from recmodel.retriever.distributed import DistContext
from recmodel.retriever.model import MLP_RATIO, Retriever
from recmodel.retriever.negatives import NegativeSampler
from recmodel.retriever.objective import CandidateSampler, DeviceBatch, next_item_loss
from recmodel.retriever.optim import build_optimizer
from recmodel.retriever.tower import META_FIELDS
from recmodel.retriever.train import train_step

logger = logging.getLogger("bench_gpu")

TARGET_UTILIZATION = 0.35  # model FLOP/s over measured matmul FLOP/s, on H100/H200
LOSS_RTOL = 1e-2  # bf16 rounds at 2^-9 relative; the loss averages it over every position
GRAD_COSINE_MIN = 0.99
OVERLAP_MIN = 0.95  # top-k sets may swap near-tied items at the cut, little else
NDCG_ATOL = 0.02
METRIC_K = 50  # top-k of the metrics check (NDCG@10 and the overlap at 50)
ACOUSTIC_DIM = 8
REPEAT_SHARE = 0.5  # share of a history drawn from the user's own small pool (re-listens)
POOL = 16  # tracks in that pool
SEED = 0


@dataclass(frozen=True)
class Case:
    """Sizes of one part of the run."""

    n_items: int
    model: ModelConfig
    batch: int
    negatives: int
    n_users: int  # histories of max_len + 1 items (full windows)


@dataclass(frozen=True)
class Sizes:
    check: Case  # the CPU-vs-device comparison
    speed: Case  # the throughput run
    warmup: int
    steps: int
    profile_steps: int
    matmul_n: int


def _model(d: int, blocks: int, heads: int, t: int, id_dim: int, meta_dim: int) -> ModelConfig:
    # No dropout: the two devices must compute the same function.
    return ModelConfig(d, blocks, heads, t, 0.0, id_dim=id_dim, meta_dim=meta_dim)


FULL = Sizes(
    check=Case(5_000, _model(64, 2, 2, 20, 64, 16), batch=32, negatives=512, n_users=256),
    speed=Case(10_000_000, _model(512, 4, 8, 200, 128, 32), 256, 8_192, n_users=1_024),
    warmup=5,
    steps=20,
    profile_steps=3,
    matmul_n=8_192,
)
QUICK = Sizes(
    check=Case(1_000, _model(32, 2, 2, 10, 32, 8), batch=8, negatives=128, n_users=64),
    speed=Case(20_000, _model(32, 1, 2, 16, 32, 8), batch=16, negatives=256, n_users=64),
    warmup=1,
    steps=3,
    profile_steps=1,
    matmul_n=256,
)


@dataclass(frozen=True)
class Row:
    """One line of the summary table; ``status`` is PASS, FAIL or INFO (or BELOW / OK)."""

    name: str
    value: str
    target: str
    status: str


def random_catalog(n_items: int, rng: np.random.Generator) -> ItemFeatures:
    """Random metadata; artist and album cardinalities grow with the catalog."""

    def codes(cardinality: int) -> np.ndarray:
        return rng.integers(0, cardinality, n_items + 1, dtype=np.int32)

    return ItemFeatures(
        artist=codes(max(n_items // 10, 2)),
        album=codes(max(n_items // 5, 2)),
        genre=codes(20),
        tempo_bucket=codes(17),
        acoustic=rng.standard_normal((n_items + 1, ACOUSTIC_DIM), dtype=np.float32),
        has_acoustic=rng.random(n_items + 1) < 0.9,
        track_length=np.full(n_items + 1, 200.0, dtype=np.float32),
    )


def random_histories(n_users: int, length: int, n_items: int, rng) -> UserItems:
    """Histories mixing random tracks with re-listens from a per-user pool (repeat bonus)."""
    pool = rng.integers(1, n_items + 1, (n_users, POOL))  # [U, POOL]
    relisten = np.take_along_axis(pool, rng.integers(0, POOL, (n_users, length)), axis=1)
    fresh = rng.integers(1, n_items + 1, (n_users, length))  # [U, L]
    items = np.where(rng.random((n_users, length)) < REPEAT_SHARE, relisten, fresh)
    indptr = np.arange(n_users + 1, dtype=np.int64) * length
    return UserItems(indptr, items.reshape(-1).astype(np.int32), np.zeros(items.size, np.int64))


def make_candidates(counts: np.ndarray, n_negatives: int) -> CandidateSampler:
    q = QConfig()
    sampler = NegativeSampler(counts, q.alpha, q.uniform_mix, q.smoothing)
    return CandidateSampler("shared", n_negatives, sampler, counts, q.smoothing)


def first_steps(histories: UserItems, case: Case, n: int) -> list[Step]:
    """The first ``n`` global steps over the histories' windows (epochs repeat as needed)."""
    batcher = WindowBatcher(make_windows(histories, case.model.max_len), case.batch, SEED)
    steps: list[Step] = []
    for epoch in range(n):
        steps.extend(batcher.epoch(epoch))
        if len(steps) >= n:
            break
    return steps[:n]


class ReplayedCandidates:
    """One draw of the real sampler, replayed on any device: both runs see the same negatives."""

    def __init__(self, drawn: tuple[torch.Tensor, torch.Tensor, torch.Tensor]):
        self.drawn = drawn  # (neg_ids [M], neg_log_q [M], pos_log_q [P]) on the CPU

    def draw(self, global_targets: torch.Tensor, pos_ids: torch.Tensor, generator=None):
        """The saved ``(neg_ids, neg_log_q, pos_log_q)`` on the batch's device."""
        neg_ids, neg_log_q, pos_log_q = (t.to(global_targets.device) for t in self.drawn)
        return neg_ids, neg_log_q, pos_log_q


@dataclass(frozen=True)
class CaseResult:
    """What one device computed: the loss, the flat gradient and the top-k ids."""

    loss: float
    grad: torch.Tensor  # float64 [n_params] on the CPU, sparse gradients densified
    recs: np.ndarray  # int64 [U, METRIC_K]


def run_case(model: Retriever, step: Step, candidates, histories: UserItems) -> CaseResult:
    """Loss and gradient of ``step`` through ``next_item_loss``, then the model's top-k."""
    model.train()
    model.zero_grad(set_to_none=True)
    batch = DeviceBatch.from_step(step, model.device)
    loss = next_item_loss(model, batch, candidates, torch.Generator(), TrainConfig().logq)
    loss.backward()
    grads = [
        torch.zeros(p.numel()) if p.grad is None else p.grad.to_dense().reshape(-1).cpu()
        for p in model.parameters()
    ]
    users = np.arange(histories.n_users)
    recs, _ = model.recommend(histories, users, METRIC_K, chunk_items=1_024)
    return CaseResult(loss.item(), torch.cat(grads).double(), recs)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()).clamp(min=1e-300))


def topk_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over rows of ``|set(a[u]) & set(b[u])| / k`` for id matrices ``[U, k]``."""
    return float(
        np.mean([len(np.intersect1d(x, y)) / a.shape[1] for x, y in zip(a, b, strict=True)])
    )


def random_targets(recs: np.ndarray, n_items: int, rng: np.random.Generator) -> UserItems:
    """Two random tracks and two of the reference top-k (at random ranks) per user."""
    n_users, k = recs.shape
    picked = np.take_along_axis(recs, rng.integers(0, k, (n_users, 2)), axis=1)
    items = np.concatenate([picked, rng.integers(1, n_items + 1, (n_users, 2))], axis=1)
    indptr = np.arange(n_users + 1, dtype=np.int64) * 4
    return UserItems(indptr, items.reshape(-1).astype(np.int32), np.zeros(items.size, np.int64))


def _check(name: str, value: str, target: str, passed: bool) -> Row:
    return Row(name, value, target, "PASS" if passed else "FAIL")


def compare(ref: CaseResult, dev: CaseResult, n_items: int, counts: np.ndarray) -> list[Row]:
    """PASS/FAIL rows of the device result ``dev`` against the CPU reference ``ref``."""
    rel = abs(dev.loss - ref.loss) / max(abs(ref.loss), 1e-12)
    cos = cosine(ref.grad, dev.grad)
    overlap = topk_overlap(ref.recs, dev.recs)
    targets = random_targets(ref.recs, n_items, np.random.default_rng(SEED))
    ndcg = [
        evaluate(r, targets, ks=(10,), item_counts=counts, n_items=n_items).summary["ndcg@10"]
        for r in (ref.recs, dev.recs)
    ]
    return [
        _check(
            "loss", f"{ref.loss:.5f} vs {dev.loss:.5f}", f"rel <= {LOSS_RTOL}", rel <= LOSS_RTOL
        ),
        _check("grad_cosine", f"{cos:.6f}", f"> {GRAD_COSINE_MIN}", cos > GRAD_COSINE_MIN),
        _check(
            f"topk_overlap@{METRIC_K}",
            f"{overlap:.4f}",
            f">= {OVERLAP_MIN}",
            overlap >= OVERLAP_MIN,
        ),
        _check(
            "ndcg@10",
            f"{ndcg[0]:.4f} vs {ndcg[1]:.4f}",
            f"abs <= {NDCG_ATOL}",
            abs(ndcg[0] - ndcg[1]) <= NDCG_ATOL,
        ),
    ]


def correctness(case: Case, device: torch.device) -> list[Row]:
    """The same weights, batch and negatives on the CPU (float32) and on ``device``."""
    rng = np.random.default_rng(SEED)
    torch.manual_seed(SEED)
    model = Retriever(random_catalog(case.n_items, rng), case.model)
    if model.repeat is not None:  # zero-initialized: give the repeat bonus a visible effect
        with torch.no_grad():
            for param in model.repeat.parameters():
                param.normal_(std=0.1)
    histories = random_histories(case.n_users, case.model.max_len + 1, case.n_items, rng)
    counts = rng.zipf(1.3, case.n_items + 1).clip(max=10**6)
    step = first_steps(histories, case, 1)[0]
    pos_ids = torch.from_numpy(step.local.targets.reshape(-1)[step.local.positions])
    drawn = make_candidates(counts, case.negatives).draw(
        torch.from_numpy(step.global_targets), pos_ids, torch.Generator().manual_seed(SEED)
    )
    candidates = ReplayedCandidates(drawn)
    on_device = copy.deepcopy(model).to(device)  # before the reference run touches any grad
    ref = run_case(model, step, candidates, histories)
    dev = run_case(on_device, step, candidates, histories)
    return compare(ref, dev, case.n_items, counts)


def step_flops(case: Case, positions: int, tower_rows: int) -> dict[str, float]:
    """Model FLOPs of one training step, by part (multiply-add = 2 FLOPs).

    Every window of this script is full, so a batch is ``[B, max_len]``. With ``N = B T`` input
    tokens (padding included: the encoder computes them), ``P`` target
    positions, ``M`` shared negatives, ``U`` distinct ids among inputs, targets and negatives,
    ``D = d_model``, ``L`` blocks, ``I = id_dim + 5 meta_dim`` the tower's projection input and
    ``A`` the acoustic width, the forward pass costs

    - tower: ``U (2 I D + 2 A meta_dim)``, one pass over the step's distinct ids;
    - encoder matmuls: ``2 N 12 D^2 L`` (qkv ``3 D^2``, output ``D^2``, MLP ``8 D^2``);
    - attention: ``4 B T^2 D L`` (``Q K^T`` and ``A V`` over the full ``T x T``: the boolean
      mask keeps fused kernels from skipping the upper triangle);
    - logits: ``2 P D (1 + M)`` over ``[P, 1 + M]`` candidates;
    - repeat bonus propensity: ``2 N D`` (a ``D -> 1`` layer, once per step).

    Forward plus backward is 3 x forward, so the encoder is the usual ``6 params tokens`` and
    attention ``12 B T^2 D L``.
    """
    cfg, b, m = case.model, case.batch, case.negatives
    d, t, n_tokens = cfg.d_model, cfg.max_len, case.batch * cfg.max_len
    tower_in = cfg.id_dim + (len(META_FIELDS) + 1) * cfg.meta_dim  # + acoustic projection
    per_item = 2 * tower_in * d + 2 * ACOUSTIC_DIM * cfg.meta_dim
    forward = {
        "tower": per_item * tower_rows,
        "encoder": 2 * n_tokens * (3 + 1 + 2 * MLP_RATIO) * d * d * cfg.n_blocks,
        "attention": 4 * b * t * t * d * cfg.n_blocks,
        "logits": 2 * positions * d * (1 + m),
        "repeat": 2 * n_tokens * d if cfg.repeat_aware else 0,
    }
    return {part: 3.0 * flops for part, flops in forward.items()}


def tower_rows(steps: list, case: Case) -> int:
    """Mean distinct ids per step among inputs and targets, plus the ``M`` negatives.

    The negatives are drawn inside the step; counting them as distinct from each other and
    from the batch is exact but for rare collisions in a large catalog (an upper bound).
    """
    distinct = [
        len(np.unique(np.concatenate([s.local.inputs.ravel(), s.local.targets.ravel()])))
        for s in steps
    ]
    return int(np.mean(distinct)) + case.negatives


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops_per_s(n: int, device: torch.device, repeats: int = 5) -> float:
    """Best-of-``repeats`` FLOP/s of an ``n x n`` matmul in the step's dtype (bf16 on CUDA)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    inner = 10 if device.type == "cuda" else 1  # a single GPU matmul is shorter than a launch
    seconds = []
    for _ in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        for _ in range(inner):
            a @ b
        _sync(device)
        seconds.append((time.perf_counter() - start) / inner)
    return 2 * n**3 / min(seconds[1:])  # the first run only warms up kernels and clocks


def training_run(case: Case, device: torch.device, n_steps: int) -> tuple[Callable, list[Step]]:
    """``train_step`` bound to a fresh model and optimizer, and the steps to feed it."""
    rng = np.random.default_rng(SEED)
    torch.manual_seed(SEED)
    with device:  # the 10M-row tables are initialized where they live
        model = Retriever(random_catalog(case.n_items, rng), case.model).to(device)
    counts = rng.zipf(1.3, case.n_items + 1).clip(max=10**6)
    train = TrainConfig(batch_size=case.batch, n_negatives=case.negatives, negatives="shared")
    candidates = make_candidates(counts, case.negatives).to(device)
    optimizer = build_optimizer(
        model,
        lr=train.lr,
        sparse_lr=train.sparse_lr,
        weight_decay=train.weight_decay,
        warmup_steps=train.warmup_steps,
        total_steps=10**6,
        grad_clip=train.grad_clip,
        fused=device.type == "cuda",
    )
    generator = torch.Generator(device=device).manual_seed(SEED)
    ctx = DistContext(device=device)
    model.train()

    def run(step: Step) -> torch.Tensor:
        return train_step(model, optimizer, candidates, generator, step, train.logq, ctx)

    histories = random_histories(case.n_users, case.model.max_len + 1, case.n_items, rng)
    return run, first_steps(histories, case, n_steps)


def profile_table(run: Callable, steps: list[Step], device: torch.device) -> str:
    """Top-10 operators by self device time (CUDA) or self CPU time, per step."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for step in steps:
            run(step)
        _sync(device)
    events = [e for e in prof.key_averages() if e.device_type == DeviceType.CPU]  # operators
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    total = sum(getattr(e, key) for e in events) or 1.0
    top = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:10]
    lines = [f"{'operator':<48} {'ms/step':>9} {'share':>7} {'calls/step':>10}"]
    for e in top:
        ms = getattr(e, key) / 1e3 / len(steps)
        share = getattr(e, key) / total
        lines.append(f"{e.key[:48]:<48} {ms:9.2f} {share:7.1%} {e.count / len(steps):10.1f}")
    kind = "device" if device.type == "cuda" else "CPU"
    lines.append(f"total self {kind} time per step: {total / 1e3 / len(steps):.2f} ms")
    return "\n".join(lines)


def _si(value: float, unit: str) -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def throughput(sizes: Sizes, device: torch.device, profile: str) -> tuple[list[Row], str]:
    """Throughput and utilization rows, and the profiler table ('' when not wanted)."""
    peak = matmul_flops_per_s(sizes.matmul_n, device)
    n_steps = sizes.warmup + sizes.steps + sizes.profile_steps
    run, steps = training_run(sizes.speed, device, n_steps)
    timed = steps[sizes.warmup : sizes.warmup + sizes.steps]
    for step in steps[: sizes.warmup]:  # kernels, allocator, the sparse Adam state
        run(step)
    _sync(device)
    start = time.perf_counter()
    losses = [run(step) for step in timed]
    _sync(device)
    seconds = (time.perf_counter() - start) / len(timed)
    peak = max(peak, matmul_flops_per_s(sizes.matmul_n, device))  # bracket the run
    positions = float(np.mean([s.n_global for s in timed]))
    flops = sum(step_flops(sizes.speed, int(positions), tower_rows(timed, sizes.speed)).values())
    util = flops / seconds / peak
    finite = bool(torch.isfinite(torch.stack(losses)).all())
    below = util < TARGET_UTILIZATION
    dtype = "bf16" if device.type == "cuda" else "fp32"  # what matmul_flops_per_s measured
    rows = [
        _check("train_loss_finite", f"{float(losses[-1]):.4f}", "finite", finite),
        Row("positions_per_s", f"{positions / seconds:,.0f}", "", "INFO"),
        Row("step_time", f"{seconds * 1e3:.1f} ms", "", "INFO"),
        Row("model_flop_per_step", _si(flops, "FLOP"), "", "INFO"),
        Row("model_flop_per_s", _si(flops / seconds, "FLOP/s"), "", "INFO"),
        Row(
            "matmul_flop_per_s", f"{_si(peak, 'FLOP/s')} ({sizes.matmul_n}^2, {dtype})", "", "INFO"
        ),
        Row(
            "utilization", f"{util:.1%}", f">= {TARGET_UTILIZATION:.0%}", "BELOW" if below else "OK"
        ),
    ]
    table = ""
    if profile == "always" or (profile == "auto" and below):
        table = profile_table(run, steps[sizes.warmup + sizes.steps :], device)
    return rows, table


def format_table(rows: list[Row]) -> str:
    """Left-aligned columns, a header first, the status last."""
    table = [Row("check", "value", "target", "status"), *rows]
    widths = [max(len(getattr(r, f)) for r in table) for f in ("name", "value", "target")]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip((r.name, r.value, r.target), widths, strict=True))
        + "  "
        + r.status
        for r in table
    )


def exit_code(rows: list[Row]) -> int:
    return int(any(r.status == "FAIL" for r in rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds, any device)")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument(
        "--profile",
        choices=("auto", "always", "never"),
        default="auto",
        help="profile the step: below the utilization target (auto), or not",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("CUDA is not available; use --device cpu (with --quick) to check the logic")
    sizes = QUICK if args.quick else FULL
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    logger.info("torch %s on %s; correctness case", torch.__version__, name)
    rows = correctness(sizes.check, device)
    logger.info("throughput case: %s", sizes.speed)
    speed_rows, table = throughput(sizes, device, args.profile)
    if table:
        print(f"\n== where the step's time goes (torch.profiler) ==\n{table}")
    s, m = sizes.speed, sizes.speed.model
    print(f"\n== summary: {name}, torch {torch.__version__} ==")
    print(
        f"throughput case: {s.n_items:,} items, d={m.d_model}, {m.n_blocks} blocks, "
        f"{m.n_heads} heads, T={m.max_len}, batch {s.batch}, {s.negatives} shared negatives"
    )
    print(format_table(rows + speed_rows))
    return exit_code(rows + speed_rows)


if __name__ == "__main__":
    sys.exit(main())
