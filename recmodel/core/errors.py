"""The error of bad input, worded the same way everywhere.

Raised before anything expensive runs (in ``start``, or in ``extract_sessions`` for what only
the data can tell).
"""

from __future__ import annotations


class InputError(ValueError):
    """The input data cannot be used; the message names the file, the column and the fix."""


def input_error(where: str, problem: str, fix: str) -> InputError:
    """An InputError worded the same way everywhere: ``<where>: <problem>. Fix: <fix>.``"""
    return InputError(f"{where}: {problem}. Fix: {fix}.")
