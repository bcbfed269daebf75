"""The item frequency table Q that sampled-softmax negatives are drawn from.

Q is estimated once, in SQL (``sql/16_q_table.sql``), from the training targets: the listen+
events of the pretrain window. Additive smoothing gives every catalog item ``q > 0``, so
``log_q`` is finite for items never heard in training. The table is data: the sampler reads it
and returns ``log_q`` for exactly the distribution it sampled from.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from recmodel.core.columns import Columns, Window
from recmodel.core.config import QConfig
from recmodel.core.sql import SqlRunner

log = logging.getLogger(__name__)

Q_FILE = "16_q_table.sql"
TOP_SHARE = 0.01  # the summary reports the q mass of the top 1% of items


def build_q_table(
    con, events_path: Path, items_path: Path, cfg: QConfig, out_path: Path
) -> tuple[Path, dict]:
    """Count pretrain-window targets per item, smooth, and write the Q table.

    Args:
        con: DuckDB connection (settings as configured by the caller).
        events_path: ``events`` Parquet written by :func:`recmodel.ingest.extract.extract`.
        items_path: ``items`` Parquet of the same extraction (the catalog ``1..N``).
        cfg: ``cfg.smoothing`` is the additive count ``s`` in
            ``q = (count + s) / (sum(count) + s * N)``.
        out_path: Parquet file to write (columns item_idx, item_id, count, q, log_q).

    Returns:
        ``out_path`` and a summary: ``n_items``, ``total_count``, ``smoothing``,
        ``entropy`` (nats), ``top1pct_mass``, ``min_q``, ``max_q`` and ``queries`` (the
        executed SQL record of :class:`recmodel.core.sql.SqlRunner`).
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    params = {
        "events_path": str(events_path),
        "items_path": str(items_path),
        "out_path": str(out_path),
        "smoothing": cfg.smoothing,
        "window_pretrain": Window.PRETRAIN,
    }
    runner = SqlRunner(con)
    runner.run(Q_FILE, params)
    table = pq.read_table(out_path, columns=[Columns.COUNT, Columns.Q])
    if table.num_rows == 0:
        raise ValueError(f"Q table is empty: no items in {items_path}")
    summary = q_summary(
        table.column(Columns.Q).to_numpy(), table.column(Columns.COUNT).to_numpy(), cfg.smoothing
    )
    summary["queries"] = runner.records
    log.info(
        "Q table: %d items, entropy %.3f nats, top-1%% mass %.3f",
        summary["n_items"],
        summary["entropy"],
        summary["top1pct_mass"],
    )
    return out_path, summary


def q_summary(q: np.ndarray, counts: np.ndarray, smoothing: float) -> dict[str, Any]:
    """Shape of a Q distribution.

    Args:
        q: float64 ``[N]`` probabilities (sum 1).
        counts: int64 ``[N]`` raw counts behind them.
        smoothing: the additive count used.

    Returns:
        ``n_items``, ``total_count``, ``smoothing``, ``entropy`` (nats; ``log N`` is uniform),
        ``top1pct_mass`` (mass of the ``ceil(1% N)`` most probable items), ``min_q``, ``max_q``.
    """
    n_items = len(q)
    top = max(1, math.ceil(TOP_SHARE * n_items))
    # q > 0 everywhere (smoothing > 0), so the entropy needs no 0 * log 0 guard.
    return {
        "n_items": n_items,
        "total_count": int(counts.sum()),
        "smoothing": smoothing,
        "entropy": float(-(q * np.log(q)).sum()),
        "top1pct_mass": float(np.partition(q, n_items - top)[n_items - top :].sum()),
        "min_q": float(q.min()),
        "max_q": float(q.max()),
    }
