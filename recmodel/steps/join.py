"""Step logic of ``join``: every branch's results in one dict and one recommendations table."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from recmodel.core.plain import plain
from recmodel.core.tables import read_table


def merge_results(*parts: dict) -> dict:
    """One ``model_results`` dict from the branches' results (each model name once).

    Raises:
        ValueError: two branches report the same model.
    """
    merged: dict[str, Any] = {}
    for part in parts:
        for name, entry in part.items():
            if name in merged:
                raise ValueError(f"model {name!r} is reported by two branches")
            merged[name] = entry
    return merged


def train_history(results: dict) -> dict:
    """``train_history`` artifact: per-epoch rows of every trained model (plain values; a
    value a row cannot have, such as the starting model's loss, is None, never NaN)."""
    return {
        name: plain(entry["history"]) for name, entry in results.items() if entry.get("history")
    }


def join_recommendations(results: dict, tables: Any) -> dict:
    """Concatenate every model's rows into the ``recommendations`` table."""
    with tempfile.TemporaryDirectory(prefix="recmodel-recs-") as tmp:
        path = Path(tmp) / "recommendations.parquet"
        writer = None
        for name in sorted(results):
            ref = results[name].get("recommendations")
            if ref is None:
                continue
            table = read_table(ref)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table.cast(writer.schema))
        if writer is None:
            raise RuntimeError("no model produced recommendations: see model_results for errors")
        writer.close()
        return tables.publish(path, "recommendations")
