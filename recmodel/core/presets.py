"""Presets: the TOML files of ``configs/`` (or any path) turned into a :class:`PipelineConfig`.

A preset has one table per stage (``[synthetic]``, ``[extract]``, ...); keys it leaves out keep
the defaults of :mod:`recmodel.core.config`, and an unknown section or key is an error.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from recmodel.core.config import ConfigError, PipelineConfig, build_section

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def from_dict(data: dict[str, Any], name: str = "custom") -> PipelineConfig:
    """Build a PipelineConfig from nested dicts (as parsed from TOML)."""
    sections = {f.name: f for f in dataclasses.fields(PipelineConfig) if f.name != "name"}
    unknown = sorted(set(data) - set(sections) - {"name"})
    if unknown:
        raise ConfigError(
            f"unknown section(s): {', '.join(unknown)}; known: {', '.join(sorted(sections))}"
        )
    built = {}
    for key, fld in sections.items():
        default = fld.default_factory()  # type: ignore[misc]
        built[key] = build_section(type(default), data.get(key, {}), key)
    return PipelineConfig(name=data.get("name", name), **built)


def resolve_preset(preset: str) -> Path:
    """A preset is a name in ``configs/`` (``tiny``) or a path to a TOML file."""
    path = Path(preset)
    candidate = path if path.suffix == ".toml" or path.exists() else CONFIG_DIR / f"{preset}.toml"
    if not candidate.is_file():
        names = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
        raise ConfigError(
            f"preset {preset!r} not found (looked for {candidate}); "
            f"built-in presets: {', '.join(names)}"
        )
    return candidate


def load_preset(preset: str = "default") -> PipelineConfig:
    """Load a TOML preset by name or path."""
    path = resolve_preset(preset)
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    return from_dict(data, name=data.get("name", path.stem))
