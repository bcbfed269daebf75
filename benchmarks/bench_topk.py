"""Full-catalog top-k: throughput and peak memory of ``recmodel.evaluation.topk.topk_chunked``.

Cases, each in a fresh interpreter so that its peak RSS (``ru_maxrss``) is its own:

* ``chunked`` on the large catalog (default top-100 of 1M items for 10k users, D=64);
* ``chunked`` and ``plain`` (the whole ``[U, N]`` score matrix, then one ``torch.topk``) on a
  catalog small enough for the plain matrix to fit, for the speed ratio;
* ``ties``: the small catalog with integer-valued vectors, so every row has ties at the cut
  and takes the stable-sort path (the worst case, as for popularity scores).

Peak memory is reported as the growth of ``ru_maxrss`` during the call, after the inputs are
built and the kernels warmed up, next to the analytic size of the largest buffers.

Usage::

    python benchmarks/bench_topk.py [--users 10000] [--items 1000000] [--small-items 100000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from recmodel.evaluation.topk import topk_chunked

MIB = 1 << 20
SEED = 0


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB  # KiB on Linux


def _inputs(args: argparse.Namespace, ties: bool) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(SEED)
    users = torch.randn(args.users, args.dim, generator=gen)  # [U, D]
    items = torch.randn(args.items + 1, args.dim, generator=gen)  # [N + 1, D]
    if ties:  # scores become small integers: every cut splits a tie
        users, items = users.sign(), items.round().clamp(-1, 1)
    return users, items


def _chunked(users: torch.Tensor, items: torch.Tensor, args: argparse.Namespace) -> np.ndarray:
    ids, _ = topk_chunked(
        users, items, args.k, chunk_items=args.chunk_items, chunk_users=args.chunk_users
    )
    return ids


def _plain(users: torch.Tensor, items: torch.Tensor, args: argparse.Namespace) -> np.ndarray:
    with torch.inference_mode():
        scores = users @ items[1:].T  # [U, N]: the memory the chunked scan avoids
        return (scores.topk(args.k, dim=1).indices + 1).numpy()


def _bound_mib(args: argparse.Namespace, case: str) -> float:
    """Analytic size of the largest live buffers of one call."""
    if case == "plain":
        return args.users * args.items * 4 / MIB
    block = min(args.chunk_users, args.users) * min(args.chunk_items, args.items)
    # float32 scores; the ties repair adds a bool mask and int32 keys of the same shape (or a
    # copy of fewer than half the rows with their mask and keys: 4.5 bytes per element).
    return block * (4 + (5 if case == "ties" else 0)) / MIB


def run_case(args: argparse.Namespace) -> dict:
    """One measurement in this process; returns its figures."""
    users, items = _inputs(args, ties=args.case == "ties")
    fn = _plain if args.case == "plain" else _chunked
    fn(users[:4], items[: args.k + 2], args)  # load kernels and thread pools before the baseline
    base = _peak_rss_mib()
    start = time.perf_counter()
    ids = fn(users, items, args)
    seconds = time.perf_counter() - start
    figures = {
        "case": args.case,
        "items": args.items,
        "seconds": seconds,
        "users_per_s": args.users / seconds,
        "rss_growth_mib": _peak_rss_mib() - base,
        "bound_mib": _bound_mib(args, args.case),
    }
    if args.case == "plain":  # after the measurement: same result as the chunked scan?
        head = slice(0, min(args.users, 1000))
        same = _chunked(users[head], items, args) == ids[head]
        figures["same_ids_as_chunked"] = float(same.mean())
    return figures


def _spawn(args: argparse.Namespace, case: str, n_items: int) -> dict:
    cmd = [sys.executable, __file__, "--case", case, "--items", str(n_items)]
    for name in ("users", "dim", "k", "chunk_items", "chunk_users"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _report(rows: list[dict], args: argparse.Namespace) -> None:
    print(
        f"top-{args.k}, D={args.dim}, {args.users} users, chunk {args.chunk_users} users x "
        f"{args.chunk_items} items, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(f"{'case':>8} {'items':>9} {'s':>8} {'users/s':>9} {'RSS+ MiB':>9} {'bound MiB':>9}")
    for r in rows:
        print(
            f"{r['case']:>8} {r['items']:>9} {r['seconds']:8.2f} {r['users_per_s']:9.0f} "
            f"{r['rss_growth_mib']:9.0f} {r['bound_mib']:9.0f}"
        )
    by = {(r["case"], r["items"]): r for r in rows}
    small, large = args.small_items, args.items
    chunked, plain = by[("chunked", small)], by[("plain", small)]
    print(f"plain / chunked time at {small} items: {plain['seconds'] / chunked['seconds']:.2f}")
    print(f"ids equal to chunked (first 1000 users): {plain['same_ids_as_chunked']:.4f}")
    print(
        f"RSS growth {large} vs {small} items: {by[('chunked', large)]['rss_growth_mib']:.0f} vs "
        f"{chunked['rss_growth_mib']:.0f} MiB (a plain matrix would need "
        f"{args.users * large * 4 / MIB:.0f} MiB)"
    )
    print(
        f"ties / chunked time at {small} items: {by[('ties', small)]['seconds'] / chunked['seconds']:.2f}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--small-items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--chunk-items", type=int, default=65_536)
    parser.add_argument("--chunk-users", type=int, default=1_024)
    parser.add_argument("--case", choices=("chunked", "plain", "ties"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:  # a child process: one measurement, one JSON line
        print(json.dumps(run_case(args)))
        return
    plan = [("chunked", args.small_items), ("plain", args.small_items), ("ties", args.small_items)]
    rows = [_spawn(args, case, n) for case, n in [*plan, ("chunked", args.items)]]
    _report(rows, args)


if __name__ == "__main__":
    main()
