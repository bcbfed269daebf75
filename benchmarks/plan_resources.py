"""Each step's memory, disk, GPU memory and time by the models, beside a preset's pods.

    python benchmarks/plan_resources.py                          # every preset, its own size
    python benchmarks/plan_resources.py --preset large --events 500000000
    python benchmarks/plan_resources.py --preset large --pods default
    python benchmarks/plan_resources.py --preset large --events 4790000000 --overrides '{"train": {"nodes": 8}}'

The size is the preset's planned one (the generator's log for its [synthetic] settings, or
``resources.events``) unless ``--events`` gives raw events, with Yambda's users and tracks per
event. Nothing is run: the figures are recmodel.core.footprint's memory model and
recmodel.core.timing's time model on each step's pod (its CPUs and GPUs), docs/scale.md.
"""

from __future__ import annotations

import argparse
import json

from recmodel.core.footprint import (
    check,
    planned_sizes,
    requirements,
    yambda_shaped,
)
from recmodel.core.presets import (
    CONFIG_DIR,
    load_preset,
    read_preset_file,
    resolve_preset,
    with_overrides,
)
from recmodel.core.resources import (
    preset_resources,
)
from recmodel.core.timing import Machine, step_seconds


def duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{seconds:,.0f} s" if seconds < 600 else f"{minutes // 60}:{minutes % 60:02d} h"


def table(preset: str, pods: str, events: int | None, overrides: dict) -> None:
    cfg = with_overrides(load_preset(preset), overrides)
    resources = preset_resources(read_preset_file(resolve_preset(pods)), pods)
    sizes = planned_sizes(cfg, resources) if events is None else yambda_shaped(events)
    gpus = {name: step.gpu for name, step in resources.steps.items()}
    machines = {
        name: Machine(name, cpus=step.cpu, gpus=step.gpu) for name, step in resources.steps.items()
    }
    seconds = step_seconds(
        cfg, sizes, machines, synthetic=events is None and resources.events is None
    )
    print(
        f"\n### preset {preset!r} on the pods of {pods!r}: {sizes.raw_events:,} raw events, "
        f"{sizes.users:,} users, {sizes.tracks:,} tracks\n"
    )
    print(
        "| step | memory needed / pod (MB) | disk needed / pod (MB) | GPU memory needed / GPU "
        "| time on the pod |"
    )
    print("|---|--:|--:|--:|--:|")
    for name, need in requirements(cfg, sizes, gpus).items():
        pod = resources.steps[name]
        gpu = f"{need.gpu_memory:,} / {pod.gpu_memory:,}" if pod.gpu else "-"
        print(
            f"| {name} | {need.memory:,} / {pod.memory:,} | {need.disk:,} / {pod.disk:,} | {gpu} "
            f"| {duration(seconds[name])} |"
        )
    problems = check(cfg, resources, sizes)
    print("\n" + ("\n".join(f"- {p}" for p in problems) if problems else "every step fits"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", action="append", help="preset(s); default: every one")
    parser.add_argument("--pods", help="the preset whose [resources] to use (default: its own)")
    parser.add_argument("--events", type=int, help="raw events (default: the planned size)")
    parser.add_argument("--overrides", default="{}", help='JSON, e.g. \'{"train": {"nodes": 8}}\'')
    args = parser.parse_args()
    for preset in args.preset or sorted(p.stem for p in CONFIG_DIR.glob("*.toml")):
        table(preset, args.pods or preset, args.events, json.loads(args.overrides))


if __name__ == "__main__":
    main()
