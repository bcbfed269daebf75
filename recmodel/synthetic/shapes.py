"""Shapes of real logs, laid over the simulated one.

The simulator writes a steady daily log with complete metadata. Real logs are not like that,
and the pipeline must run on them as they come, so these options reshape its output (each
default leaves the log as simulated):

* ``bursts`` / ``burst_gap_days``: the log's days are cut into equal bursts with silent gaps
  between them, as a scrobble log sampled a few days at a time months apart.
* ``relisten = False``: each user plays a track once at most (its first play), as ratings of
  movies; with ``play_signal = False`` there is no ``played_ratio_pct`` either, so every event
  is a positive.
* ``user_span_days``: a user is active only this many days from its first play, so most users
  appear in one window only.
* ``item_fields``: the metadata columns of the items file (empty: ``item_id`` alone, as a log
  whose only metadata is the track id; pass the events without the items file for "no items
  file at all").

A short log (``days = 1``) and a long tail (``n_tracks`` near the number of events) are plain
settings of the simulator. Every transform is a pure function of the events of one block of
users, so the output stays deterministic for a config.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from recmodel.core.columns import Columns
from recmodel.core.config import SyntheticConfig

SECONDS_PER_DAY = 86_400


def reshape_events(table: pa.Table, cfg: SyntheticConfig, log_start: int) -> pa.Table:
    """Apply the shape options of ``cfg`` to one block's events (grouped by user, in time order)."""
    if not cfg.relisten:
        table = table.filter(first_plays(table))
    if cfg.user_span_days > 0:
        table = table.filter(within_span(table, cfg.user_span_days * SECONDS_PER_DAY))
    if cfg.bursts > 1:
        ts = bursty_times(table[Columns.TIMESTAMP].to_numpy() - log_start, cfg) + log_start
        table = table.set_column(
            table.schema.get_field_index(Columns.TIMESTAMP), Columns.TIMESTAMP, pa.array(ts)
        )
    if not cfg.play_signal:
        index = table.schema.get_field_index(Columns.PLAYED_RATIO)
        nulls = pa.nulls(table.num_rows, table.schema.field(index).type)
        table = table.set_column(index, Columns.PLAYED_RATIO, nulls)
    return table


def first_plays(table: pa.Table) -> np.ndarray:
    """bool ``[E]``: the first play of each (user, track) pair."""
    users = table[Columns.USER].to_numpy()
    items = table[Columns.ITEM].to_numpy()
    keys = np.stack([users, items], axis=1)
    _, first = np.unique(keys, axis=0, return_index=True)
    keep = np.zeros(table.num_rows, dtype=bool)
    keep[first] = True
    return keep


def within_span(table: pa.Table, span_seconds: float) -> np.ndarray:
    """bool ``[E]``: events at most ``span_seconds`` after their user's first event."""
    users = table[Columns.USER].to_numpy()
    ts = table[Columns.TIMESTAMP].to_numpy()
    order = np.argsort(users, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(users[order])) + 1]
    first = np.minimum.reduceat(ts[order], starts) if len(ts) else np.zeros(0, np.int64)
    user_first = np.empty(len(ts), dtype=np.int64)
    user_first[order] = np.repeat(first, np.diff(np.r_[starts, len(ts)]))
    return ts - user_first <= span_seconds


def bursty_times(seconds: np.ndarray, cfg: SyntheticConfig) -> np.ndarray:
    """Seconds since the log start with a silent gap of ``burst_gap_days`` after each burst."""
    burst = cfg.days * SECONDS_PER_DAY / cfg.bursts
    index = np.minimum(seconds // burst, cfg.bursts - 1).astype(np.int64)
    return seconds + index * int(round(cfg.burst_gap_days * SECONDS_PER_DAY))


def item_columns(table: pa.Table, fields: tuple[str, ...]) -> pa.Table:
    """The items table with ``item_id`` and the metadata ``fields`` only."""
    return table.select([Columns.ITEM, *[c for c in table.column_names if c in fields]])
