import json
import math

import numpy as np
import pytest

from recmodel.core.plain import plain, to_json


class Version(str):
    """A str subclass, as torch's version string is."""


def test_plain_turns_nested_values_into_builtin_types():
    value = {
        "a": (1, np.int64(2)),
        "b": np.array([0.5, np.nan]),
        3: {"c": np.float32(1.25), "d": np.bool_(True), "e": None, "f": Version("2.13")},
        "g": {1, 2} - {2},
        "h": object,
    }
    out = plain(value)
    assert out == {
        "a": [1, 2],
        "b": [0.5, None],
        "3": {"c": 1.25, "d": True, "e": None, "f": "2.13"},
        "g": [1],
        "h": str(object),
    }
    assert type(out["3"]["f"]) is str and type(out["3"]["d"]) is bool


@pytest.mark.parametrize(
    ("value", "digits", "expected"),
    [(0.123456, 4, 0.1235), (1234567.0, 4, 1235000.0), (0.0, 4, 0.0), (math.inf, None, None)],
)
def test_floats_round_to_significant_digits(value, digits, expected):
    assert plain(value, digits) == expected


def test_to_json_is_strict_and_compact():
    text = to_json({"loss": float("nan"), "ndcg@10": 0.123456789, "k": [10, 100]})
    assert text == '{"loss":null,"ndcg@10":0.1235,"k":[10,100]}'
    assert json.loads(text)["loss"] is None
