"""Each step's peak memory, measured on a whole run of the flow, beside the memory model.

    python benchmarks/bench_memory.py                       # the default preset
    python benchmarks/bench_memory.py --preset tiny
    python benchmarks/bench_memory.py --yambda 1000         # Yambda-5B's shape at 1/1000

The flow runs in a subprocess with its own datastore; every 0.2 s the script reads the
resident memory (``VmRSS`` in ``/proc``) of every process of each step (the step's task and
its children, such as spawned training workers) and keeps each step's largest sum. It then
prints the peak beside ``recmodel.core.footprint.requirements`` at the run's own size (raw
events, users and tracks from the extraction summary; no GPU), with each step's seconds (its
tasks' start to finish, from the run's metadata). Linux only.

``--yambda S`` sets the generator to Yambda-5B's shape at 1/S: 1,000,000 / S users with its
4,790 raw events each, 9,390,000 / S tracks, over 300 days.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

POLL_SECONDS = 0.2
YAMBDA = {"users": 1_000_000, "tracks": 9_390_000, "events_per_user": 4_790, "days": 300.0}


def yambda_overrides(scale: int, preset: str) -> dict:
    """Generator settings of Yambda-5B's shape at 1/``scale`` (its mean events per user)."""
    from recmodel.core.presets import load_preset

    s = load_preset(preset).synthetic
    active = 1 - s.new_user_share / 2
    per_day = YAMBDA["events_per_user"] / (active * YAMBDA["days"] * s.mean_session_length)
    return {
        "synthetic": {
            "n_users": YAMBDA["users"] // scale,
            "n_tracks": YAMBDA["tracks"] // scale,
            "n_artists": max(YAMBDA["tracks"] // scale // 12, 1),
            "days": YAMBDA["days"],
            "sessions_per_user_per_day": round(per_day, 4),
        }
    }


def processes() -> dict[int, tuple[int, list[str], int]]:
    """pid -> (parent pid, argv, resident kB) of every readable process."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            status = Path(entry.path, "status").read_text()
            argv = Path(entry.path, "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        rss = int(fields.get("VmRSS", "0 kB").split()[0])
        found[int(entry.name)] = (int(fields["PPid"]), argv, rss)
    return found


def step_of(pid: int, table: dict, cache: dict) -> str | None:
    """The flow step a process belongs to: its own ``step NAME`` argument or an ancestor's."""
    if pid in cache:
        return cache[pid]
    ppid, argv, _ = table.get(pid, (0, [], 0))
    step = argv[argv.index("step") + 1] if "step" in argv[:-1] else None
    if step is None and ppid > 1:
        step = step_of(ppid, table, cache)
    cache[pid] = step
    return step


def watch(stop: threading.Event, peaks: dict[str, int]) -> None:
    while not stop.is_set():
        table, cache, now = processes(), {}, {}
        for pid, (_, _, rss) in table.items():
            step = step_of(pid, table, cache)
            if step:
                now[step] = now.get(step, 0) + rss
        for step, kb in now.items():
            peaks[step] = max(peaks.get(step, 0), kb)
        stop.wait(POLL_SECONDS)


def run_flow(preset: str, overrides: dict, root: Path) -> tuple[dict[str, int], float]:
    env = {**os.environ, "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(root)}
    env.setdefault("METAFLOW_USER", "bench")
    cmd = [sys.executable, str(ROOT / "flows" / "two_stage.py"), "run", "--preset", preset]
    if overrides:
        cmd += ["--overrides", json.dumps(overrides)]
    peaks: dict[str, int] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(stop, peaks), daemon=True)
    watcher.start()
    start = time.perf_counter()
    log = root / "flow.log"
    with log.open("w") as out:
        done = subprocess.run(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    stop.set()
    watcher.join()
    if done.returncode:
        sys.exit(f"the flow failed; its log: {log}")
    return peaks, time.perf_counter() - start


def model_of(root: Path) -> tuple[dict, object, dict[str, float]]:
    os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = str(root)
    from metaflow import Flow, namespace

    from recmodel.core.footprint import Sizes, requirements
    from recmodel.core.presets import from_dict

    namespace(None)
    run = Flow("TwoStageFlow").latest_successful_run
    summary = run["extract_sessions"].task["data_summary"].data["stages"]
    final = summary["final"]["all"]
    sizes = Sizes(summary["raw"]["events"], final["users"], final["items"])
    cfg = from_dict(run["start"].task["config"].data)
    steps = sorted(run.steps(), key=lambda step: min(t.created_at for t in step.tasks()))
    seconds = {  # in the order the steps started
        step.id: sum((t.finished_at - t.created_at).total_seconds() for t in step.tasks())
        for step in steps
    }
    return requirements(cfg, sizes, {}), sizes, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--overrides", default="{}", help="JSON, as the flow's --overrides")
    parser.add_argument("--yambda", type=int, help="Yambda-5B's shape at 1/YAMBDA")
    args = parser.parse_args()
    overrides = json.loads(args.overrides)
    if args.yambda:
        overrides = {**yambda_overrides(args.yambda, args.preset), **overrides}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        root = Path(tmp)
        peaks, seconds = run_flow(args.preset, overrides, root)
        needs, sizes, step_seconds = model_of(root)
    print(
        f"preset {args.preset}, overrides {json.dumps(overrides)}: {sizes.raw_events:,} raw "
        f"events, {sizes.users:,} users, {sizes.tracks:,} tracks; the run took {seconds:.0f} s\n"
    )
    print("| step | seconds | peak RSS (MB) | model (MB) | model / measured |")
    print("|---|--:|--:|--:|--:|")
    # The extraction's shard rounds run on extract_sessions's pod: the model's figure is its.
    # The pretraining steps' launches and gathers hold a Python process only.
    from recmodel.core.footprint import PROCESS_MB, Need

    others = [step for step in step_seconds if step not in needs]
    small = {step: Need(PROCESS_MB) for step in others if step.endswith(("_nodes", "_gather"))}
    rounds = [(step, needs["extract_sessions"]) for step in others if step not in small]
    rows = [*needs.items(), *rounds, *small.items()]
    for step, need in rows:
        measured = peaks.get(step, 0) / 1024
        ratio = f"{need.memory / measured:.2f}" if measured else "-"
        took = step_seconds.get(step, 0.0)
        print(f"| {step} | {took:,.1f} | {measured:,.0f} | {need.memory:,} | {ratio} |")


if __name__ == "__main__":
    main()
