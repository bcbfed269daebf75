"""What each step of the flow is given: a preset's ``[resources]`` table.

``[resources.<step>]`` takes ``cpu``, ``memory`` (MB), ``gpu``, ``disk`` (MB) and, for a step
with a GPU, ``gpu_memory`` (MB of one GPU); ``events`` states the raw events a preset of real
data is sized for (a preset of the synthetic generator is sized for its own log). Steps it
leaves out get Metaflow's defaults (1 CPU, 4,096 MB, 10,240 MB of disk on Kubernetes). The
flow reads the table through a Metaflow ``Config``
(:func:`recmodel.core.presets.parse_resources`), so that the ``@resources`` of every step come
from the same file as the DuckDB limits and the model sizes they must hold; the memory model
of :mod:`recmodel.core.footprint` checks them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from recmodel.core.config import ConfigError

MB = 2**20
STEPS = (
    "start",
    "extract_sessions",
    "estimate_q",
    "pretrain",
    "pretrain_no_logq",
    "baselines",
    "materialize_ranker_scores",
    "finetune",
    "join",
    "report",
    "end",
)
GPU_MEMORY_MB = 80_000  # one GPU when a step does not say (an 80 GB H100 or A100)


@dataclass(frozen=True)
class StepResources:
    """What one step's pod gets (MB for memory and disk)."""

    cpu: int = 1
    memory: int = 4_096
    gpu: int = 0
    disk: int = 10_240
    gpu_memory: int = 0  # MB of one GPU; GPU_MEMORY_MB when a step with a GPU leaves it out

    def decorator(self) -> dict[str, int]:
        """The arguments of Metaflow's ``@resources`` (a GPU only where there is one)."""
        args = {"cpu": self.cpu, "memory": self.memory, "disk": self.disk}
        return {**args, "gpu": self.gpu} if self.gpu else args


@dataclass(frozen=True)
class Resources:
    """A preset's ``[resources]``: every step's pod and the size it is planned for."""

    steps: dict[str, StepResources]
    events: int | None = None  # raw events; None: from the synthetic generator's settings

    def to_config(self, preset: str) -> dict[str, Any]:
        """The value of the flow's ``resources`` Config: ``@resources`` arguments per step."""
        return {
            "preset": preset,
            "events": self.events,
            "steps": {name: step.decorator() for name, step in self.steps.items()},
            "gpu_memory": {name: step.gpu_memory for name, step in self.steps.items()},
        }

    @classmethod
    def from_config(cls, value: Any) -> Resources:
        """The inverse of :meth:`to_config` (a run's ``pods`` artifact)."""
        steps = {
            name: StepResources(**{"gpu": 0, **args}, gpu_memory=value["gpu_memory"][name])
            for name, args in value["steps"].items()
        }
        return cls(steps=steps, events=value["events"])


def read_resources(table: Any, where: str) -> Resources:
    """A preset's ``[resources]`` table, checked: known steps and keys, positive integers."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [resources] must be a table, got {table!r}")
    events = table.get("events")
    if events is not None and not (isinstance(events, int) and events > 0):
        raise ConfigError(f"{where}: resources.events must be a positive integer, got {events!r}")
    steps = {}
    for name in STEPS:
        values = table.get(name, {})
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: [resources.{name}] must be a table, got {values!r}")
        steps[name] = _step(values, f"{where}: resources.{name}")
    unknown = sorted(set(table) - set(STEPS) - {"events"})
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown} in [resources]; steps: {', '.join(STEPS)}"
        )
    return Resources(steps=steps, events=events)


def _step(values: dict, where: str) -> StepResources:
    fields = [f.name for f in dataclasses.fields(StepResources)]
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"{where}: unknown key {key!r}; known: {', '.join(fields)}")
        low = 0 if key in ("gpu", "gpu_memory") else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"{where}.{key} must be an integer >= {low}, got {value!r}")
    step = StepResources(**values)
    if step.gpu and not step.gpu_memory:
        step = dataclasses.replace(step, gpu_memory=GPU_MEMORY_MB)
    return step


def preset_resources(data: dict[str, Any], where: str) -> Resources:
    """The ``[resources]`` of a parsed preset file (Metaflow's defaults where it has none)."""
    return read_resources(data.get("resources", {}), where)
