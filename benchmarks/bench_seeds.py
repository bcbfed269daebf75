"""Seed variance of every row of the report, and the same comparison on real-log shapes.

One report is one seed: its bootstrap intervals measure the test users' sampling noise, not how
much a retrain with another seed moves the numbers. This script runs the whole flow
(``flows/two_stage.py run``, each run in a datastore of its own) once per seed, with the
training seeds set (``train.seed`` for pretraining and finetuning, ``ranker.seed``,
``baselines.seed``) and the data and the bootstrap fixed, and prints for every model the mean
and sample standard deviation over the seeds beside the first seed's 95% bootstrap interval,
and the same on repeat and new targets. The default run stays single-seed.

A *shape* swaps the built-in log for one written by the generator in the shape of a real log
(:mod:`recmodel.synthetic.shapes`), read by the flow as a user's own files, on the same preset
with no other override:

* ``default``: the built-in synthetic data;
* ``scrobbles``: five bursts of five days, fifty silent days apart, artist ids the only
  metadata (Last.fm-like);
* ``ratings``: each track at most once per user and no play signal (MovieLens-like);
* ``no_items``: the default log's events with no items file.

    python benchmarks/bench_seeds.py                           # default shape, seeds 0 1 2
    python benchmarks/bench_seeds.py --shapes scrobbles ratings no_items --seeds 0
    python benchmarks/bench_seeds.py --preset tiny --seeds 0 1 2 --out /tmp/seeds

Results are kept as one JSON per run under ``--out`` (a finished run is not run again), and the
tables are printed as Markdown (docs/quality.md holds the figures).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FLOW = ROOT / "flows" / "two_stage.py"
SHAPES: dict[str, dict | None] = {
    "default": None,
    "scrobbles": {
        "days": 25.0,
        "bursts": 5,
        "burst_gap_days": 50.0,
        "item_fields": ["artist_id"],
    },
    "ratings": {"relisten": False, "play_signal": False},
    "no_items": {},
}
WITHOUT_ITEMS = {"no_items"}
METRICS = ("ndcg@10", "recall@100")

# Runs in a child with the run's datastore: the Client reads it at import.
READER = """
import json, sys
from metaflow import Flow, namespace
namespace(None)
run = Flow("TwoStageFlow").latest_successful_run
data = run["report"].task["report"].data
kinds = data.get("by_target_kind") or {}
json.dump({
    "run": run.pathspec,
    "metrics": data["metrics"],
    "intervals": data["intervals"],
    "kinds": {k: {"n_users": v["n_users"], "metrics": v["metrics"]} for k, v in kinds.items()},
    "failed": data["failed"],
}, sys.stdout)
"""


def seed_overrides(seed: int) -> dict:
    return {"train": {"seed": seed}, "ranker": {"seed": seed}, "baselines": {"seed": seed}}


def write_shape(shape: str, preset: str, out: Path) -> tuple[str, str]:
    """The shape's events (and items) files, written once; ``("", "")`` for built-in data."""
    if SHAPES[shape] is None:
        return "", ""
    from recmodel.core.presets import load_preset, with_overrides
    from recmodel.synthetic.generator import generate

    directory = out / f"log_{preset}_{shape}"
    marker = directory / "paths.json"
    if not marker.exists():
        cfg = with_overrides(load_preset(preset), {"synthetic": SHAPES[shape]}).synthetic
        paths = generate(cfg, directory)
        marker.write_text(json.dumps({"events": str(paths.events), "items": str(paths.items)}))
    paths = json.loads(marker.read_text())
    return paths["events"], "" if shape in WITHOUT_ITEMS else paths["items"]


def run_one(preset: str, shape: str, seed: int, out: Path) -> dict:
    """One flow run (or its saved result): metrics, intervals and kinds of every model."""
    result_path = out / f"{preset}_{shape}_seed{seed}.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    events, items = write_shape(shape, preset, out)
    datastore = out / f"ds_{preset}_{shape}_seed{seed}"
    env = {
        **os.environ,
        "METAFLOW_USER": os.environ.get("METAFLOW_USER", "bench"),
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(datastore),
    }
    command = [
        sys.executable, str(FLOW), "run", "--preset", preset,
        "--overrides", json.dumps(seed_overrides(seed)),
    ]  # fmt: skip
    if events:
        command += ["--events", events]
    if items:
        command += ["--items", items]
    started = time.perf_counter()
    log_path = out / f"{preset}_{shape}_seed{seed}.log"
    with log_path.open("w") as log_file:
        done = subprocess.run(command, env=env, cwd=ROOT, stdout=log_file, stderr=log_file)
    if done.returncode != 0:
        raise SystemExit(f"{shape} seed {seed} failed (exit {done.returncode}); see {log_path}")
    read = subprocess.run(
        [sys.executable, "-c", READER], env=env, cwd=ROOT, capture_output=True, text=True
    )
    if read.returncode != 0:
        raise SystemExit(f"reading {shape} seed {seed} failed:\n{read.stderr}")
    result = {**json.loads(read.stdout), "seconds": time.perf_counter() - started}
    result_path.write_text(json.dumps(result))
    return result


def mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def table(shape: str, runs: list[dict]) -> str:
    """Markdown: per model, mean ± sd over the seeds and the first seed's interval."""
    first = runs[0]
    header = ["model"]
    for metric in METRICS:
        header += [f"{metric} mean ± sd", f"{metric} seed {first['seed']} 95% interval"]
    kinds = list(first["kinds"])
    header += [f"ndcg@10 {kind}" for kind in kinds]
    lines = [
        f"### {shape}: {len(runs)} seed(s) ({', '.join(str(r['seed']) for r in runs)}), "
        f"{first['seconds'] / 60:.1f} min per run",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for model in first["metrics"]:
        cells = [model]
        for metric in METRICS:
            values = [r["metrics"][model][metric] for r in runs if model in r["metrics"]]
            lo, hi = first["intervals"][model][metric]
            cells += [mean_sd(values), f"[{lo:.4f}, {hi:.4f}]"]
        for kind in kinds:
            values = [r["kinds"][kind]["metrics"][model]["ndcg@10"] for r in runs]
            cells.append(mean_sd(values))
        lines.append("| " + " | ".join(cells) + " |")
    failed = {m: e for r in runs for m, e in r["failed"].items()}
    if failed:
        lines += ["", f"Failed: {failed}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--shapes", nargs="+", default=["default"], choices=sorted(SHAPES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("/tmp/recmodel-bench-seeds"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"preset {args.preset}, seeds {args.seeds}, results in {args.out}\n")
    for shape in args.shapes:
        runs = []
        for seed in args.seeds:
            result = run_one(args.preset, shape, seed, args.out)
            runs.append({**result, "seed": seed})
            print(f"{shape} seed {seed}: {result['run']} in {result['seconds'] / 60:.1f} min")
        print("\n" + table(shape, runs) + "\n", flush=True)


if __name__ == "__main__":
    main()
