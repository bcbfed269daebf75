"""Side-by-side with a peer: our retriever against RecTools ``SASRecModel`` on the same data.

Protocol. A synthetic log (about 1M events, 50k tracks) is generated and extracted once with
this project's code (cached under ``--data-dir``), so both sides see the same pretrain/test
split. Both train on exactly the same next-item transitions: every training window of our
batcher (:func:`recmodel.retriever.batches.make_windows` over the pretrain window) is exported as one
RecTools pseudo-user, whose last ``max_len + 1`` items are the whole window. Both are queried
with every test user's history before the test window (last ``max_len`` items), return a
top-100 without filtering heard tracks, and are scored by :func:`recmodel.evaluation.metrics.evaluate`.

Same architecture sizes (blocks, hidden size, heads, ``max_len``, dropout), epochs, batch size
and number of negatives; sampled softmax on both sides; each library keeps its own optimizer
recipe. Remaining differences, by design of each library: RecTools draws ``n`` uniform
negatives per position and has no logQ (uniform Q); we share ``n`` popularity-proposal
negatives across the batch and correct by log Q (``all``) or not (``none``). Our feed-forward
is 4x wider (GELU) and our item tower adds metadata. We validate after each epoch (not counted
in the epoch time) and keep the best epoch; the table says which one it was.

Every model trains in its own subprocess with the same torch thread count, so peak RSS (the
child's ``VmHWM``) is its own; the peer runs in ``.venv-peer`` (``benchmarks/README.md``).

    python benchmarks/bench_peer.py                       # compare, then profile our step
    python benchmarks/bench_peer.py --part compare --variants ours ours_bare
    python benchmarks/bench_peer.py --part profile --profile-steps 20
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path
from unittest import mock

import numpy as np

log = logging.getLogger("bench_peer")

ROOT = Path(__file__).resolve().parents[1]
PEER_PYTHON = ROOT / ".venv-peer" / "bin" / "python"
N_EVENTS, N_TRACKS, N_ARTISTS = 1_000_000, 50_000, 5_000
K = 100  # recommendations per test user
PEER = "rectools"
# Our runs: the default model, and "bare" (no repeat bonus) closest to plain SASRec.
VARIANTS = {
    "ours": {"repeat_aware": True, "logq": "all"},
    "ours_bare": {"repeat_aware": False, "logq": "all"},
    "ours_bare_nologq": {"repeat_aware": False, "logq": "none"},
}
TARGET_SPEEDUP = 2.0


# -- data, written once --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Data:
    """The extracted tables and the peer's exported inputs, under one directory."""

    root: Path

    def table(self, name: str) -> Path:  # events, items, users, test_targets
        return self.root / "extracted" / f"{name}.parquet"

    @property
    def peer_train(self) -> Path:
        return self.root / "peer_train.parquet"

    @property
    def peer_queries(self) -> Path:
        return self.root / "peer_queries.parquet"


def prepare(data_dir: Path, n_events: int, max_len: int) -> Data:
    """Generate, extract and export once; later calls reuse the files."""
    import duckdb

    from recmodel.core.config import ExtractConfig, SyntheticConfig
    from recmodel.ingest.extract import extract
    from recmodel.ingest.readers import SourceSpec
    from recmodel.ingest.sources import register_source
    from recmodel.synthetic.generator import generate

    data = Data(data_dir / f"events_{n_events}_len{max_len}")
    if data.peer_queries.exists():
        return data
    cfg = SyntheticConfig(n_tracks=N_TRACKS, n_artists=N_ARTISTS)
    raw = generate(cfg, data.root / "raw", n_events_hint=n_events)
    con = duckdb.connect()
    register_source(con, SourceSpec(kind="canonical", events=str(raw.events), items=str(raw.items)))
    summary = extract(con, ExtractConfig(), data.root / "extracted").summary
    log.info("extracted %d of %d raw events", summary["n_events"], raw.n_events)
    export_peer_inputs(data, max_len)
    return data


def load(data: Data):
    """``(dataset, test_set)`` exactly as the pipeline builds them."""
    from recmodel.core.config import EvalConfig
    from recmodel.core.dataset_io import load_dataset
    from recmodel.evaluation.testset import build_test_set

    dataset = load_dataset(data.table("events"), data.table("items"), data.table("users"))
    return dataset, build_test_set(dataset, EvalConfig())


def _write_sequences(path: Path, users: np.ndarray, items: np.ndarray) -> None:
    """Parquet ``user_id, item_id, order``; ``order`` increases along each sequence."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    order = np.arange(len(items), dtype=np.int64)  # rows are already in sequence order
    table = pa.table({"user_id": users.astype(np.int64), "item_id": items.astype(np.int64),
                      "order": order})  # fmt: skip
    pq.write_table(table, path)


def export_peer_inputs(data: Data, max_len: int) -> None:
    """One pseudo-user per training window (ids = item_idx), and every test user's query."""
    from recmodel.retriever.batches import make_windows

    dataset, test = load(data)
    windows = make_windows(dataset.train(), max_len)
    owner = np.repeat(np.arange(len(windows)), windows.lengths)  # [sum L] window of each row
    first = np.cumsum(windows.lengths) - windows.lengths  # [W] first row of each window
    rows = np.arange(len(owner)) - first[owner] + windows.starts[owner]  # index into items
    _write_sequences(data.peer_train, owner, windows.items[rows])
    queries = test.histories.take(test.users)
    _write_sequences(data.peer_queries, np.repeat(test.users, queries.lengths), queries.items)
    log.info("exported %d windows (%d positions), %d test users", len(windows),
             windows.n_targets, len(test.users))  # fmt: skip


# -- one trained model per subprocess -------------------------------------------------------


def peak_rss_bytes() -> int:
    """This process's resident-set high-water mark (Linux ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def model_configs(variant: str, args: argparse.Namespace):
    from recmodel.core.config import ModelConfig, TrainConfig

    spec = VARIANTS[variant]
    model = ModelConfig(max_len=args.max_len, repeat_aware=spec["repeat_aware"])
    # patience = epochs: every epoch runs, as on the peer's side.
    train = TrainConfig(epochs=args.epochs, patience=args.epochs, batch_size=args.batch_size,
                        n_negatives=args.negatives, logq=spec["logq"], device="cpu",
                        threads=args.threads)  # fmt: skip
    return model, train


def train_ours(variant: str, data: Data, out: Path, args: argparse.Namespace) -> dict:
    """Pretrain through ``recmodel.retriever.train.pretrain`` and write the top-K ids (``.npy``)."""
    import torch

    from recmodel.core.config import EvalConfig, QConfig
    from recmodel.retriever.batches import make_windows
    from recmodel.retriever.train import pretrain

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    dataset, test = load(data)
    cfg_model, cfg_train = model_configs(variant, args)
    loaded = time.perf_counter()
    # The Q table's counts are the pretrain-window target counts: dataset.item_counts.
    result = pretrain(dataset, dataset.item_counts, cfg_model, cfg_train, QConfig(), EvalConfig())
    fitted = time.perf_counter()
    rss_fit = peak_rss_bytes()
    ids, _ = result.model.recommend(test.histories, test.users, K)
    np.save(out / f"{variant}.npy", ids)
    return {
        "epoch_seconds": [h["seconds"] for h in result.history],
        "eval_seconds": [h["eval_seconds"] for h in result.history],
        "positions_per_epoch": make_windows(dataset.train(), args.max_len).n_targets,
        "best_epoch": result.best_epoch,
        "load_seconds": loaded - start,
        "fit_seconds": fitted - loaded,
        "recommend_seconds": time.perf_counter() - fitted,
        "peak_rss_fit": rss_fit,
        "peak_rss": peak_rss_bytes(),
        "threads": torch.get_num_threads(),
    }


def child_env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "PYTHONHASHSEED": "0"}  # fmt: skip


def run_ours(variant: str, data: Data, out: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", variant, *_shared_flags(args)]
    subprocess.run(command, check=True, cwd=ROOT, env=child_env(args.threads))
    return json.loads((out / f"{variant}.json").read_text())


def run_peer(data: Data, out: Path, args: argparse.Namespace) -> dict:
    if not PEER_PYTHON.exists():
        raise SystemExit(f"{PEER_PYTHON} not found: create the peer env (benchmarks/README.md)")
    command = [
        str(PEER_PYTHON), str(ROOT / "benchmarks" / "peer_rectools.py"),
        "--train", str(data.peer_train), "--queries", str(data.peer_queries),
        "--out", str(out / f"{PEER}.parquet"), "--report", str(out / f"{PEER}.json"),
        "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
        "--negatives", str(args.negatives), "--max-len", str(args.max_len),
        "--threads", str(args.threads), "--k", str(K),
        *_architecture_flags(),
    ]  # fmt: skip
    subprocess.run(command, check=True, cwd=ROOT, env=child_env(args.threads))
    return json.loads((out / f"{PEER}.json").read_text())


def _architecture_flags() -> list[str]:
    from recmodel.core.config import ModelConfig

    cfg = ModelConfig()
    return ["--blocks", str(cfg.n_blocks), "--heads", str(cfg.n_heads),
            "--hidden", str(cfg.d_model), "--dropout", str(cfg.dropout)]  # fmt: skip


def _shared_flags(args: argparse.Namespace) -> list[str]:
    return ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
            "--negatives", str(args.negatives), "--max-len", str(args.max_len),
            "--threads", str(args.threads), "--n-events", str(args.n_events),
            "--data-dir", str(args.data_dir), "--out-dir", str(args.out_dir)]  # fmt: skip


# -- evaluation with this project's metrics --------------------------------------------------


def peer_top_k(path: Path, users: np.ndarray) -> np.ndarray:
    """int64 ``[U, K]`` from the peer's long table; :data:`EMPTY` where it returned nothing."""
    import pyarrow.parquet as pq

    from recmodel.evaluation.topk import EMPTY

    table = pq.read_table(path)
    rec_users = table.column("user_id").to_numpy()
    row = np.searchsorted(users, rec_users)
    assert np.array_equal(users[row], rec_users), "peer returned users outside the test set"
    out = np.full((len(users), K), EMPTY, dtype=np.int64)
    out[row, table.column("rank").to_numpy() - 1] = table.column("item_id").to_numpy()
    return out


def score(data: Data, out: Path, names: list[str]) -> dict[str, dict]:
    """Per-model summary metrics and, against the peer, the paired NDCG@10 difference."""
    from recmodel.evaluation.metrics import evaluate
    from recmodel.evaluation.stats import paired_bootstrap_diff

    dataset, test = load(data)
    results = {}
    for name in names:
        recs = peer_top_k(out / f"{PEER}.parquet", test.users) if name == PEER else np.load(
            out / f"{name}.npy")  # fmt: skip
        results[name] = evaluate(recs, test.targets, ks=(10, 100),
                                 item_counts=dataset.item_counts, n_items=dataset.n_items)  # fmt: skip
    metrics = {name: dict(r.summary) for name, r in results.items()}
    for name, result in results.items():
        if name != PEER and PEER in results:
            a, b = result.per_user["ndcg@10"], results[PEER].per_user["ndcg@10"]
            metrics[name]["ndcg@10_minus_peer"] = paired_bootstrap_diff(a, b)
    return metrics


def compare(args: argparse.Namespace) -> dict:
    data = prepare(args.data_dir, args.n_events, args.max_len)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    runs = {name: run_ours(name, data, args.out_dir, args) for name in args.variants}
    runs[PEER] = run_peer(data, args.out_dir, args)
    metrics = score(data, args.out_dir, list(runs))
    return {name: {**runs[name], "metrics": metrics[name]} for name in runs}


def throughput(run: dict) -> float:
    """Training positions per second over every epoch."""
    return run["positions_per_epoch"] * len(run["epoch_seconds"]) / sum(run["epoch_seconds"])


def print_comparison(results: dict, threads: int) -> None:
    """The side-by-side table and our-throughput / peer-throughput ratios."""
    print(f"torch threads per process: {threads}; every model in its own subprocess")
    print(f"{'model':<18} {'s/epoch':>8} {'positions/s':>11} {'RSS fit':>8} {'RSS all':>8} "
          f"{'best':>4} {'NDCG@10':>8} {'R@100':>7}  NDCG@10 - peer [95% CI]")  # fmt: skip
    for name, run in results.items():
        m = run["metrics"]
        diff = m.get("ndcg@10_minus_peer")
        ci = f"{diff['mean_diff']:+.4f} [{diff['lo']:+.4f}, {diff['hi']:+.4f}]" if diff else ""
        print(f"{name:<18} {np.mean(run['epoch_seconds']):>8.1f} {throughput(run):>11,.0f} "
              f"{run['peak_rss_fit'] / 2**30:>6.2f} G {run['peak_rss'] / 2**30:>6.2f} G "
              f"{run.get('best_epoch', len(run['epoch_seconds']) - 1):>4} {m['ndcg@10']:>8.4f} {m['recall@100']:>7.4f}  {ci}")  # fmt: skip
    peer = results[PEER]
    for name, run in results.items():
        if name == PEER:
            continue
        ratio = throughput(run) / throughput(peer)
        better = run["metrics"]["ndcg@10"] >= peer["metrics"]["ndcg@10"]
        print(f"{name}: throughput {ratio:.2f}x the peer's (target >= {TARGET_SPEEDUP}x: "
              f"{ratio >= TARGET_SPEEDUP}), NDCG@10 >= peer's: {better}")  # fmt: skip


# -- where the time of our training step goes ------------------------------------------------


class PhaseTimer:
    """Wall time of wrapped callables, per phase name (CPU ops are synchronous)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.active = False

    def wrap(self, fn, name: str):
        """``fn`` timed under ``name``."""

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if self.active:
                    self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

        return timed

    def patch(self, stack: contextlib.ExitStack, owner, attr: str, name: str) -> None:
        """Replace ``owner.attr`` by its timed version until ``stack`` closes."""
        timed = self.wrap(getattr(owner, attr), name)
        stack.enter_context(mock.patch.object(owner, attr, timed))


def profile_setup(dataset, variant: str, args: argparse.Namespace):
    """Model, optimizer, sampler and batch stream built as ``recmodel.retriever.train._Run`` does."""
    import itertools

    import torch

    from recmodel.core.config import QConfig
    from recmodel.retriever.batches import WindowBatcher, make_windows
    from recmodel.retriever.distributed import DistContext
    from recmodel.retriever.negatives import NegativeSampler
    from recmodel.retriever.objective import CandidateSampler
    from recmodel.retriever.optim import build_optimizer
    from recmodel.retriever.train import build_model

    cfg_model, cfg_train = model_configs(variant, args)
    q, counts, ctx = QConfig(), dataset.item_counts, DistContext()
    model = build_model(dataset.items, cfg_model, cfg_train.seed, None, ctx).train()
    batcher = WindowBatcher(make_windows(dataset.train(), cfg_model.max_len),
                            cfg_train.batch_size, cfg_train.seed)  # fmt: skip
    sampler = NegativeSampler(counts, q.alpha, q.uniform_mix, q.smoothing)
    candidates = CandidateSampler(cfg_train.negatives, cfg_train.n_negatives, sampler, counts,
                                  q.smoothing)  # fmt: skip
    optimizer = build_optimizer(model, lr=cfg_train.lr, sparse_lr=cfg_train.sparse_lr,
                                weight_decay=cfg_train.weight_decay, warmup_steps=10,
                                total_steps=10**6, grad_clip=cfg_train.grad_clip)  # fmt: skip
    steps = (s for epoch in itertools.count() for s in batcher.epoch(epoch))
    generator = torch.Generator().manual_seed(cfg_train.seed)
    return model, optimizer, candidates, generator, steps, cfg_train.logq, ctx


@contextlib.contextmanager
def instrument(timer: PhaseTimer, model, optimizer, candidates):
    """Time the phases of ``recmodel.retriever.train.train_step`` without changing what it computes."""
    import torch

    import recmodel.retriever.objective as objective
    import recmodel.retriever.train as train

    with contextlib.ExitStack() as stack:
        batch = timer.wrap(objective.DeviceBatch.from_step, "to tensors")  # bound classmethod
        stack.enter_context(mock.patch.object(objective.DeviceBatch, "from_step",
                                              staticmethod(batch)))  # fmt: skip
        phases = [
            (train, "next_item_loss", "forward + loss"),
            (objective, "repeat_bonus", "  repeat bonus"),
            (objective, "sampled_softmax_loss", "  sampled softmax + logQ"),
            (model.tower, "forward", "  item tower (distinct ids of the step)"),
            (model.encoder, "forward", "  encoder"),
            (candidates, "draw", "  negative sampling"),
            (torch.Tensor, "backward", "backward"),
            (optimizer, "zero_grad", "zero_grad"),
            (optimizer, "step", "optimizer"),
            (torch.nn.utils, "clip_grad_norm_", "  clip dense grads"),
            (optimizer.dense, "step", "  AdamW (dense)"),
            (optimizer.sparse, "step", "  SparseAdam (embedding rows)"),
        ]
        for owner, attr, name in phases:
            timer.patch(stack, owner, attr, name)
        yield


def profile_variant(dataset, variant: str, args: argparse.Namespace) -> dict:
    """Per-step seconds by phase, then the heaviest backward nodes under torch.profiler."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from recmodel.retriever.train import train_step

    model, optimizer, candidates, generator, steps, logq, ctx = profile_setup(
        dataset, variant, args)  # fmt: skip
    # Timing the optimizers' step methods makes the LR scheduler warn that they were replaced.
    warnings.filterwarnings("ignore", message=re.escape("Seems like `optimizer.step()` has been"))
    timer = PhaseTimer()
    next_step = timer.wrap(lambda: next(steps), "batching (numpy windows)")
    step = timer.wrap(train_step, "step total")
    with instrument(timer, model, optimizer, candidates):
        for i in range(args.warmup + args.profile_steps):
            timer.active = i >= args.warmup
            step(model, optimizer, candidates, generator, next_step(), logq, ctx)
    timer.active = False
    per_step = {k: v / args.profile_steps for k, v in timer.seconds.items()}
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.profile_steps):
            train_step(model, optimizer, candidates, generator, next(steps), logq, ctx)
    prefix = "autograd::engine::evaluate_function: "
    nodes = {e.key.removeprefix(prefix): e.cpu_time_total / 1e6 / args.profile_steps
             for e in prof.key_averages() if e.key.startswith(prefix)}  # fmt: skip
    ops = {e.key: e.self_cpu_time_total / 1e6 / args.profile_steps
           for e in prof.key_averages()}  # fmt: skip
    top = lambda d: dict(sorted(d.items(), key=lambda kv: -kv[1])[:12])  # noqa: E731
    return {"phases": per_step, "backward_nodes": top(nodes), "self_cpu_ops": top(ops)}


def print_profile(variant: str, prof: dict) -> None:
    total = prof["phases"]["step total"] + prof["phases"]["batching (numpy windows)"]
    print(f"\n{variant}: {total * 1e3:.1f} ms per step (batching included)")
    for section in ("phases", "backward_nodes", "self_cpu_ops"):
        print(f"  {section}:")
        for name, seconds in prof[section].items():
            print(f"    {name:<58} {seconds * 1e3:8.2f} ms {100 * seconds / total:5.1f}%")


def profile(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    dataset, _ = load(prepare(args.data_dir, args.n_events, args.max_len))
    return {variant: profile_variant(dataset, variant, args) for variant in args.variants}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("compare", "profile", "all"), default="all")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--epochs", type=int, default=2, help="2 keeps a run under 15 min")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--negatives", type=int, default=256)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every process")
    parser.add_argument("--n-events", type=int, default=N_EVENTS)
    parser.add_argument("--profile-steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--data-dir", type=Path, default=ROOT / "bench_data" / "peer")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "bench_data" / "peer" / "runs")
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.child:
        data = prepare(args.data_dir, args.n_events, args.max_len)
        run = train_ours(args.child, data, args.out_dir, args)
        (args.out_dir / f"{args.child}.json").write_text(json.dumps(run, indent=2))
        return
    results = {"settings": {k: str(v) for k, v in vars(args).items()}}
    if args.part in ("compare", "all"):
        results["compare"] = compare(args)
        print_comparison(results["compare"], args.threads)
    if args.part in ("profile", "all"):
        results["profile"] = profile(args)
        for variant, prof in results["profile"].items():
            print_profile(variant, prof)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "results.json").write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
