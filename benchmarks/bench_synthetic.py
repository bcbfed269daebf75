"""Throughput and peak memory of the synthetic log generator.

Each size runs in a fresh process so that its peak RSS is its own:

    python benchmarks/bench_synthetic.py --events 1e6 1e7

Prints one line per size: events written, wall time, events/s, peak RSS and output size.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from recmodel.core.config import SyntheticConfig
from recmodel.synthetic.generator import generate, scaled_config


def _run_one(cfg: SyntheticConfig, n_events: int, out_dir: str) -> dict[str, float]:
    """Generate one log (in a child process) and report its own time and peak RSS."""
    start = time.perf_counter()
    paths = generate(cfg, out_dir, n_events_hint=n_events)
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "events": paths.n_events,
        "users": scaled_config(cfg, n_events).n_users,
        "seconds": seconds,
        "peak_rss_mib": peak_kib / 1024,
        "mib_on_disk": (paths.events.stat().st_size + paths.items.stat().st_size) / 2**20,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--events",
        type=float,
        nargs="+",
        default=[1e6, 1e7],
        help="approximate events per run (n_users is scaled to match)",
    )
    parser.add_argument("--tracks", type=int, default=SyntheticConfig.n_tracks)
    parser.add_argument("--artists", type=int, default=SyntheticConfig.n_artists)
    parser.add_argument("--row-group-size", type=int, default=SyntheticConfig.row_group_size)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=None, help="keep the logs here (default: temp dir)")
    args = parser.parse_args(argv)
    cfg = dataclasses.replace(
        SyntheticConfig(),
        seed=args.seed,
        n_tracks=args.tracks,
        n_artists=args.artists,
        row_group_size=args.row_group_size,
    )
    print(
        f"{'events':>12} {'users':>9} {'seconds':>8} {'events/s':>11} {'peak RSS':>10} "
        f"{'on disk':>9}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out_dir or tmp)
        for n in args.events:
            out = root / f"synthetic_{int(n)}"
            # A fresh spawned process per size: ru_maxrss is a high-water mark per process.
            with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
                r = pool.submit(_run_one, cfg, int(n), str(out)).result()
            print(
                f"{r['events']:>12,} {r['users']:>9,} {r['seconds']:>8.1f} "
                f"{r['events'] / r['seconds']:>11,.0f} {r['peak_rss_mib']:>7.0f} MiB "
                f"{r['mib_on_disk']:>5.0f} MiB"
            )
            sys.stdout.flush()


if __name__ == "__main__":
    main()
