"""Presets: the TOML files of ``configs/`` (or any path) turned into a :class:`PipelineConfig`.

A preset has one table per stage (``[synthetic]``, ``[extract]``, ...); keys it leaves out keep
the defaults of :mod:`recmodel.core.config`. Everything a preset or ``--overrides`` says is
checked here, once, before any work: a section must be a table, a name must exist (a typo is
reported with the closest valid name), a value must have its field's type (a number written as
text is an error, not a silent cast); the ranges and choices are then checked by the sections
themselves. Each message names the file or flag, the key and the problem.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import tomllib
from pathlib import Path
from typing import Any

from recmodel.core.config import ConfigError, PipelineConfig
from recmodel.core.resources import preset_resources, read_resources

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
# Settings renamed since runs were first stored: a past run's config (warm start, the champion
# gate, ``python -m recmodel``) still reads, with a warning.
RENAMED = {("eval", "gate_tolerance"): "gate_margin"}
SCALARS = {"int": int, "float": float, "bool": bool, "str": str}
TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def _sections() -> dict[str, type]:
    return {
        f.name: type(f.default_factory())  # type: ignore[misc]
        for f in dataclasses.fields(PipelineConfig)
        if f.name != "name"
    }


def _unknown(kind: str, name: str, known: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return ConfigError(f"{where}: unknown {kind} {name!r}; {hint}known: {', '.join(known)}")


def check_value(value: Any, annotation: str, key: str, where: str) -> Any:
    """``value`` as the field type ``annotation`` wants it, or a :class:`ConfigError`.

    Integers are accepted for floats (TOML writes ``1`` for ``1.0``) and lists for tuples;
    nothing else is converted: ``"3"`` for an integer and ``1`` for a bool are errors.
    """
    if annotation.startswith("tuple["):
        element = annotation[len("tuple[") :].split(",")[0].strip()
        if not isinstance(value, list | tuple):
            raise ConfigError(
                f"{where}: {key} must be a list of {TYPE_WORDS[element]}s, got {value!r}"
            )
        return tuple(check_value(v, element, key, where) for v in value)
    expected = SCALARS[annotation]
    ok = isinstance(value, expected) and not (expected is not bool and isinstance(value, bool))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise ConfigError(
            f"{where}: {key} must be {TYPE_WORDS[annotation]}, "
            f"got {value!r} ({type(value).__name__})"
        )
    return value


def build_section(cls: type, values: Any, section: str, where: str) -> Any:
    """One section from its table: names and types checked, then ranges by the section."""
    if not isinstance(values, dict):
        raise ConfigError(
            f"{where}: [{section}] must be a table of settings, "
            f"got {values!r} ({type(values).__name__})"
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}
    checked = {}
    for old, value in values.items():
        key = RENAMED.get((section, old), old)
        if key != old:  # a past run's config or an old preset: same meaning, new name
            log.warning("%s: [%s] %s is now called %s", where, section, old, key)
        if key not in fields:
            raise _unknown(f"key in [{section}]", key, sorted(fields), where)
        checked[key] = check_value(value, str(fields[key].type), f"{section}.{key}", where)
    try:
        return cls(**checked)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def from_dict(data: Any, name: str = "custom", where: str = "config") -> PipelineConfig:
    """Build a PipelineConfig from nested dicts (as parsed from TOML or JSON).

    Args:
        data: ``{section: {key: value}}`` and optionally ``name``.
        name: the config's name when ``data`` has none.
        where: how messages name the source (a file, ``--overrides``).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table of sections, got {type(data).__name__}")
    sections = _sections()
    for key in data:
        if key not in sections and key not in ("name", "resources"):
            raise _unknown("section", key, sorted(sections), where)
    if "resources" in data:  # the pods: read by the flow's Config, checked here as well
        read_resources(data["resources"], where)
    built = {
        key: build_section(cls, data.get(key, {}), key, where) for key, cls in sections.items()
    }
    return PipelineConfig(name=data.get("name", name), **built)


def with_overrides(
    cfg: PipelineConfig, overrides: Any, where: str = "--overrides"
) -> PipelineConfig:
    """``cfg`` with some keys of some sections replaced (the checks of :func:`from_dict`).

    ``overrides`` is a dict, or its JSON text (as ``metaflow.Runner`` passes a JSON parameter).
    """
    if isinstance(overrides, str):
        try:
            overrides = json.loads(overrides)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: not valid JSON: {exc}") from None
    if not isinstance(overrides, dict):
        raise ConfigError(
            f"{where}: expected a JSON object of sections, got {type(overrides).__name__}"
        )
    merged: dict[str, Any] = {"name": cfg.name}
    sections = _sections()
    for key, values in overrides.items():
        if key == "resources":
            raise ConfigError(
                f"{where}: [resources] is fixed when the flow starts (the steps' pods): give "
                "it with --config-value resources PRESET before 'run'"
            )
        if key not in sections:
            raise _unknown("section", key, sorted(sections), where)
        if not isinstance(values, dict):
            build_section(sections[key], values, key, where)  # raises the table error
        merged[key] = {**dataclasses.asdict(getattr(cfg, key)), **values}
    for key in sections:
        merged.setdefault(key, dataclasses.asdict(getattr(cfg, key)))
    return from_dict(merged, where=where)


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


def read_preset_file(path: Path) -> dict[str, Any]:
    """A preset file's tables, or a :class:`ConfigError` that names the file."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"preset file {str(path)!r} is not valid TOML: {exc}") from None


def load_preset(preset: str = "default") -> PipelineConfig:
    """Load a TOML preset by name or path.

    Raises:
        ConfigError: the file is missing, is not valid TOML, or holds an invalid setting; the
            message names the file.
    """
    path = resolve_preset(preset)
    data = read_preset_file(path)
    return from_dict(data, name=data.get("name", path.stem), where=f"preset file {str(path)!r}")


def parse_resources(text: str) -> dict[str, Any]:
    """Parser of the flow's ``resources`` Config: a preset's name, or a preset file's text.

    ``python flows/two_stage.py --config-value resources large run --preset large`` or
    ``--config resources configs/large.toml`` give the pods of ``large``; a JSON object
    ``{"steps": {...}}`` (as ``--config-value`` takes) is read as the ``[resources]`` table.
    """
    text = text.strip()
    if text.startswith('"'):  # a Config's default value arrives JSON-quoted
        text = json.loads(text)
    if "\n" not in text and "=" not in text and not text.startswith("{"):
        path = resolve_preset(text)
        data = read_preset_file(path)
        name, where = data.get("name", path.stem), f"preset file {str(path)!r}"
    elif text.startswith("{"):
        data = {"resources": json.loads(text)}
        name, where = "custom", "--config-value resources"
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"--config resources: not a valid preset file: {exc}") from None
        name, where = data.get("name", "custom"), "--config resources"
    return preset_resources(data, where).to_config(name)
