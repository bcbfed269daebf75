"""Values as plain built-in types, and the small JSON texts people read in the Metaflow UI.

The Metaflow UI unpickles artifacts without this package (or torch, or numpy's scalar types
being meaningful to a reader), shows at most a few KB of one, and pretty-prints only strings
that parse as JSON. :func:`plain` turns nested results into dicts, lists, strings, ints, floats,
bools and None; :func:`to_json` writes them as strict JSON (no ``NaN``) with short floats.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

UI_ARTIFACT_LIMIT = 4096  # bytes of an artifact the Metaflow UI shows by default
SUMMARY_DIGITS = 4  # significant digits of the floats in a summary


def plain(value: Any, digits: int | None = None) -> Any:
    """``value`` as built-in types: non-finite floats become None, numpy values Python ones.

    Args:
        value: nested dicts, lists, tuples, numpy arrays and scalars, dataclasses' dicts, ...
            An object of any other type becomes its ``str``.
        digits: round floats to this many significant digits (None: keep them whole).
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)  # a subclass unpickles only where its module is (torch's version)
    if isinstance(value, Mapping):
        return {str(k): plain(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v, digits) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, int | float):  # numpy arrays, scalars
        return plain(value.tolist(), digits)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return _float(float(value), digits)
    return str(value)


def _float(value: float, digits: int | None) -> float | None:
    if not math.isfinite(value):
        return None
    if digits is None or value == 0:
        return value
    return float(f"{value:.{digits}g}")


def to_json(value: Any, digits: int | None = SUMMARY_DIGITS) -> str:
    """Compact strict JSON of :func:`plain` ``(value, digits)``."""
    return json.dumps(plain(value, digits), separators=(",", ":"), allow_nan=False)
