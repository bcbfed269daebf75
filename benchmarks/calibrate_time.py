"""The extraction's time constants, fitted on two small logs and checked on a held-out large one.

    python benchmarks/calibrate_time.py                     # fit on 1/10,000 and 1/1,000
    python benchmarks/calibrate_time.py --held-out 100 --shards 10 --work /tmp/calibrate

Logs of Yambda-5B's shape (``bench_scale.py``) at 1/10,000 and 1/1,000 are generated once each
(kept under ``--work``), and the extraction stage of ``bench_scale.py`` runs on each of them and
on the held-out log (1/100 by default, 47.6M raw events), on one shard and on ``--shards``
shards in one process, ``--repeats`` times, interleaved, so that every size sees the same state
of a shared machine. The median seconds of the two small logs give a line (seconds = fixed +
per event x raw events) for each way; the script prints its prediction for the held-out log
beside the median measured there, and the constants of ``recmodel.core.timing`` beside the
fitted ones.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_memory import yambda_overrides  # noqa: E402
from bench_scale import measure, read, write  # noqa: E402

CALIBRATION = (10_000, 1_000)


def prepare(work: Path, scale: int, preset: str, shards: int) -> Path:
    """A work directory with the config and the generated log of Yambda's shape at 1/scale
    (the log is generated once per scale and shared by the shard counts)."""
    from recmodel.core.presets import load_preset, with_overrides

    folder = work / f"yambda-{scale}-shards-{shards}"
    folder.mkdir(parents=True, exist_ok=True)
    overrides = {**yambda_overrides(scale, preset), "extract": {"shards": shards}}
    write(folder, "config", with_overrides(load_preset(preset), overrides).to_dict())
    if shards == 1:
        if not (folder / "generate.json").exists():
            measure("generate", folder)
        return folder
    one = prepare(work, scale, preset, 1)
    write(folder, "generate", read(one, "generate"))
    return folder


def fit(events: dict[int, int], median: dict[int, float]) -> tuple[float, float]:
    """``(fixed seconds, seconds per raw event)`` through the two calibration logs."""
    small, large = CALIBRATION
    slope = (median[large] - median[small]) / (events[large] - events[small])
    return median[small] - slope * events[small], slope


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--held-out", type=int, default=100, help="Yambda's shape at 1/N")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shards", type=int, default=10, help="the sharded way's shards")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--work", type=Path, default=Path("/tmp/calibrate-time"))
    args = parser.parse_args()
    from recmodel.core import timing

    scales = (*CALIBRATION, args.held_out)
    ways = (1, args.shards)
    folders = {(sc, n): prepare(args.work, sc, args.preset, n) for n in ways for sc in scales}
    seconds: dict[tuple[int, int], list[float]] = {key: [] for key in folders}
    for _ in range(args.repeats):
        for key in folders:
            seconds[key].append(measure("extract", folders[key])[0])
    events = {sc: read(folders[sc, 1], "generate")["n_events"] for sc in scales}
    threads = json.loads((folders[scales[0], 1] / "config.json").read_text())["extract"]["threads"]
    print("| log | raw events | shards | extraction seconds (each run) | median |")
    print("|---|--:|--:|---|--:|")
    for (sc, n), runs in seconds.items():
        each = ", ".join(f"{x:.1f}" for x in runs)
        print(f"| 1/{sc:,} | {events[sc]:,} | {n} | {each} | {statistics.median(runs):.1f} |")
    held = args.held_out
    for n in ways:
        median = {sc: statistics.median(seconds[sc, n]) for sc in scales}
        fixed, slope = fit(events, median)
        predicted = fixed + slope * events[held]
        print(
            f"\n{n} shard(s), fitted on 1/{CALIBRATION[0]:,} and 1/{CALIBRATION[1]:,}: "
            f"{fixed:.2f} s + {slope * 1e6:.3f} us per raw event on {threads} threads "
            f"({slope * threads * 1e6:.2f} core-us per event)"
        )
        print(
            f"held out, 1/{held:,}: predicted {predicted:.1f} s, measured {median[held]:.1f} s "
            f"(prediction / measurement {predicted / median[held]:.2f})"
        )
    print(
        f"\nrecmodel.core.timing: {timing.EXTRACT_CORE_SECONDS_PER_EVENT * 1e6:.2f} core-us per "
        f"event on one shard, {timing.SHARDED_CORE_SECONDS_PER_EVENT * 1e6:.2f} on several in "
        "one process"
    )


if __name__ == "__main__":
    main()
