"""Benchmark: extraction (+ Q table) of synthetic logs read from Parquet.

Each size is generated once with the built-in synthetic generator (cached under ``--data-dir``)
and then extracted in a fresh subprocess, so the peak RSS measured (the child's own high-water
mark, ``VmHWM``) belongs to that size alone. Reported per size: seconds for extraction and for
the Q table, events per second end to end (raw rows / total seconds), peak RSS; then the cost
ratio of the largest to the smallest size against the event ratio.

Targets: cost linear in events (10M at most 12x 1M), peak RSS < 3 GiB at 10M, and at least
1M events/s end to end on 2 cores.

Out of core: ``--memory-limit`` is DuckDB's; with a limit below the size of the events in
memory (rows x column widths, reported as "data") the run must spill to disk instead of
failing. The spill directory is polled while the child runs and its largest size reported.

    python benchmarks/bench_extract.py                       # 1M and 10M events
    python benchmarks/bench_extract.py --sizes 10000000 50000000 --memory-limit 1GB
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger("bench_extract")

ROOT = Path(__file__).resolve().parents[1]
N_TRACKS = 50_000  # one catalog for every size, so the ratio measures events alone
N_ARTISTS = 5_000
TARGET_RATIO = 12.0  # cost(10M) / cost(1M) at most this
TARGET_RSS_GIB = 3.0
TARGET_EVENTS_PER_S = 1e6


def generate(size: int, data_dir: Path) -> tuple[Path, Path, int]:
    """The synthetic log of about ``size`` events, generated once and cached."""
    from recmodel.core.config import SyntheticConfig
    from recmodel.synthetic.generator import generate as generate_log

    out = data_dir / f"events_{size}"
    marker = out / "n_events.json"
    if marker.exists():
        return out / "events.parquet", out / "items.parquet", json.loads(marker.read_text())
    cfg = SyntheticConfig(n_tracks=N_TRACKS, n_artists=N_ARTISTS)
    paths = generate_log(cfg, out, n_events_hint=size)
    marker.write_text(json.dumps(paths.n_events))
    return paths.events, paths.items, paths.n_events


def peak_rss_bytes() -> int:
    """This process's resident-set high-water mark (Linux ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def data_bytes(events: Path) -> int:
    """Size of the events in memory: rows x the byte widths of the (fixed-width) columns."""
    import pyarrow.parquet as pq

    schema = pq.read_schema(events)
    width = sum(field.type.byte_width for field in schema)
    return pq.ParquetFile(events).metadata.num_rows * width


class SpillProbe:
    """Polls a directory's total file size in a thread; ``peak`` is the largest seen."""

    def __init__(self, path: Path, every_s: float = 0.2):
        self.path, self.every_s, self.peak = path, every_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SpillProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                size = sum(f.stat().st_size for f in self.path.glob("*") if f.is_file())
            except FileNotFoundError:  # a file removed between the listing and the stat
                continue
            self.peak = max(self.peak, size)


def cpu_seconds() -> float:
    """User + system CPU time of this process, every thread included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(events: Path, items: Path, threads: int, memory_limit: str) -> dict:
    """Register the source, extract and estimate Q; return timings and peak RSS."""
    import duckdb

    from recmodel.core.config import ExtractConfig, QConfig
    from recmodel.ingest.extract import SPILL_DIRNAME, extract
    from recmodel.ingest.qtable import build_q_table
    from recmodel.ingest.readers import SourceSpec
    from recmodel.ingest.sources import register_source

    cfg = ExtractConfig(threads=threads, memory_limit=memory_limit)
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        out = Path(tmp)
        con = duckdb.connect()
        load = os.getloadavg()[0]
        cpu_start = cpu_seconds()
        start = time.perf_counter()
        register_source(con, SourceSpec(kind="canonical", events=str(events), items=str(items)))
        with SpillProbe(out / SPILL_DIRNAME) as spill:
            result = extract(con, cfg, out)
        extracted = time.perf_counter()
        build_q_table(
            con, result.paths["events"], result.paths["items"], QConfig(), out / "q.parquet"
        )
        done = time.perf_counter()
        cpu = cpu_seconds() - cpu_start
    stages = {q["file"].removeprefix("sql/"): round(q["seconds"], 3) for q in result.queries}
    return {
        "extract_s": extracted - start,
        "q_s": done - extracted,
        "cpu_s": cpu,
        "load_avg": [load, os.getloadavg()[0]],
        "peak_rss": peak_rss_bytes(),
        "spill_peak": spill.peak,
        "memory_limit": memory_limit,
        "raw_events": result.summary["stages"]["raw"]["events"],
        "final_events": result.summary["n_events"],
        "stages_s": stages,
    }


def measure(size: int, args) -> dict:
    events, items, n_events = generate(size, args.data_dir)
    command = [sys.executable, __file__, "--child", str(events), str(items),
               "--threads", str(args.threads), "--memory-limit", args.memory_limit]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["size"] = size
    result["data_bytes"] = data_bytes(events)
    result["total_s"] = result["extract_s"] + result["q_s"]
    result["events_per_s"] = result["raw_events"] / result["total_s"]
    # On a loaded machine wall time includes waiting for a core; CPU time spread over the
    # DuckDB threads is what the same run costs on dedicated cores (a lower bound on wall).
    result["cpu_events_per_s"] = result["raw_events"] / (result["cpu_s"] / args.threads)
    return result


def report(results: list[dict], threads: int) -> None:
    print(f"DuckDB memory limit {results[0]['memory_limit']}, {threads} threads")
    print(f"{'size':>10} {'raw events':>11} {'data':>7} {'extract s':>9} {'Q s':>6} "
          f"{'events/s':>10} {'CPU s':>6} {'ev/s @cpu':>10} {'peak RSS':>9} {'spilled':>8} "
          f"{'load':>10}")  # fmt: skip
    for r in results:
        print(f"{r['size']:>10,} {r['raw_events']:>11,} {r['data_bytes'] / 2**30:>5.2f} G "
              f"{r['extract_s']:>9.2f} {r['q_s']:>6.2f} {r['events_per_s']:>10,.0f} "
              f"{r['cpu_s']:>6.2f} {r['cpu_events_per_s']:>10,.0f} "
              f"{r['peak_rss'] / 2**30:>7.2f} G {r['spill_peak'] / 2**30:>6.2f} G "
              f"{r['load_avg'][0]:>4.1f}-{r['load_avg'][1]:<4.1f}")  # fmt: skip
    slowest = sorted(results[-1]["stages_s"].items(), key=lambda kv: -kv[1])[:3]
    print(
        f"slowest stages at {results[-1]['size']:,}: "
        + ", ".join(f"{name} {seconds:.2f}s" for name, seconds in slowest)
    )
    if len(results) > 1:
        small, large = results[0], results[-1]
        events = large["raw_events"] / small["raw_events"]
        limit = TARGET_RATIO * events / 10
        for key in ("total_s", "cpu_s"):
            print(
                f"{key} ratio {large[key] / small[key]:.2f}x for {events:.2f}x events "
                f"(target <= {limit:.1f}x)"
            )
    rss_ok = results[-1]["peak_rss"] < TARGET_RSS_GIB * 2**30
    print(
        f"peak RSS < {TARGET_RSS_GIB} GiB at the largest size: {rss_ok}; "
        f">= 1M events/s on {threads} cores: wall {min(r['events_per_s'] for r in results) >= TARGET_EVENTS_PER_S}, "
        f"CPU-time bound {min(r['cpu_events_per_s'] for r in results) >= TARGET_EVENTS_PER_S}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--data-dir", type=Path, default=ROOT / "bench_data" / "extract")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-limit", default="4GB")
    parser.add_argument("--child", nargs=2, type=Path, metavar=("EVENTS", "ITEMS"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.threads, args.memory_limit)))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results = []
    for size in sorted(args.sizes):
        results.append(measure(size, args))
        log.info("%s", json.dumps(results[-1]))
    report(results, args.threads)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
