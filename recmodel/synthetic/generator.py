"""Built-in synthetic music-streaming log in the canonical (Yambda-compatible) schema.

The log is drawn from a documented generative process with the structure real listening logs
have, so that every model in the comparison has something to find.

**Catalog** (:mod:`recmodel.synthetic.catalog`). Artists own Zipf-sized shares of the catalog;
their tracks are cut into albums of 1 + Poisson tracks. Each artist has a primary and a second
genre; an album is in one of them. Tempo is the genre's centre plus album and track noise; the
acoustic vector is the genre's centroid plus artist and track noise, so both are predictable
from genre. Base popularity is an exact Zipf law (``zipf_exponent``) over the rank of a latent
that adds artist, album and track effects and favours early album tracks, so hits cluster by
artist and sampled-softmax models need the logQ correction. Each track has four directed
*successors* ("what plays next"): the closest in sound and tempo of a handful of same-genre
tracks. *Scenes* (``n_scenes``) are listener communities with a sparse genre profile and a
pool of artists; they are what collaborative filtering finds.

**Listeners** (:mod:`recmodel.synthetic.users`). A user signs up at the start of the log or,
for ``new_user_share`` of them, at a uniform time during it; activity is a log-normal
multiplier (mean 1) of ``sessions_per_user_per_day``. A user belongs to a scene and drifts
towards another: the genre taste mixes the scene's profile with a personal one, and
``taste_drift`` of it moves to the second taste linearly in time. Most of the
``n_favourite_artists`` followed artists come from the scene's pool. A user keeps
``n_favourite_tracks`` heavy-rotation slots, Zipf-weighted by slot; a slot holds a track by a
followed artist or from the taste at its birth (both reaching into the long tail), or continues
the previous slot with one of its successors (favourites come in clusters). A slot lives
from a uniform birth for an exponential time around ``favourite_lifetime_days`` and its appeal
fades with age. Rotation makes re-listening dominate; its turnover makes recent history more
telling than all-time counts.

**Sessions** (:mod:`recmodel.synthetic.sessions`). Sessions start on a uniform day after
sign-up at an hour drawn from a daily rhythm with an evening peak, have geometric length (mean
``mean_session_length``) and one of four kinds drawn from the user's own mix: *mix* (mostly
rotation), *album* (mostly the album of a current favourite, in order, then another album of
the artist), *radio* (successor chains, every track after the seed a recommendation) and
*discover* (taste, artist and successor moves). At each position a move is drawn from the
kind's table: a rotation track (by slot weight and appeal), the next album track, a successor
of the previous track, an album start, another track of the previous artist, or a taste track
(the user's scene chart, or a popular track of a genre from the current taste or, for mood
continuity, the previous track's genre, the closer in tempo of two draws). A move that cannot
be played (album over, no rotation track live) falls back to another one.

**Skips and time**. The skip probability is logistic: it rises for genres outside the current
taste, recommendations and tempo jumps, falls for followed artists and rotation tracks, and
has a per-user shift. Skips play under 49 %, so they are never listen+ at the default
threshold of 50; other plays mostly run to the end. A track starts when the previous one stops
(``length * played share`` + up to 3 s); a user's sessions never overlap and stay at least
45 minutes apart; events after the end of the log are dropped. ``is_organic`` is 1 for
rotation, album and artist moves (and a radio seed) and 0 for successor and taste moves,
which stand for recommendations.

**Shapes of real logs** (:mod:`recmodel.synthetic.shapes`): bursts months apart, no
re-listening, no play signal, short-lived users and partial item metadata, laid over the
simulated events by options whose defaults leave the log as simulated.

**Determinism and scale**. Randomness comes from one seeded stream for the catalog and one per
block of users, and the block size depends on the config only (not on ``row_group_size``), so
a config always yields the same bytes. Blocks of about ``BLOCK_EVENTS`` events are simulated
one at a time (a loop over session positions, vectorized over every running session) and
streamed to Parquet row groups of exactly ``row_group_size`` rows, which bounds memory at any
size. Rows are grouped by user and sorted by time within a user.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recmodel.core.columns import Columns
from recmodel.core.config import SyntheticConfig
from recmodel.synthetic.catalog import (
    ITEMS_SCHEMA,
    Catalog,
    PublicIds,
    build_catalog,
    items_tables,
)
from recmodel.synthetic.sessions import BlockEvents, simulate_block
from recmodel.synthetic.shapes import item_columns, reshape_events
from recmodel.synthetic.users import draw_sessions, draw_users, expected_events_per_user

logger = logging.getLogger(__name__)

LOG_START = 1_704_067_200  # 2024-01-01T00:00:00Z, unix seconds
BLOCK_EVENTS = 1_000_000  # expected events simulated at once; bounds peak memory
CATALOG_STREAM, IDS_STREAM, ITEMS_STREAM, USERS_STREAM = range(4)  # independent RNG streams
MAX_LIST_VALUES = 2**31 - 1  # list<float32> offsets are int32

# Dictionary-encode only the repetitive columns: on timestamps and ratios it costs time for
# nothing (about 2x faster writes at the same size).
EVENTS_DICTIONARY_COLUMNS = [Columns.USER, Columns.ITEM, Columns.TRACK_LENGTH, Columns.IS_ORGANIC]
EVENTS_SCHEMA = pa.schema(
    [
        (Columns.USER, pa.int64()),
        (Columns.ITEM, pa.int64()),
        (Columns.TIMESTAMP, pa.int64()),
        (Columns.PLAYED_RATIO, pa.float32()),
        (Columns.TRACK_LENGTH, pa.int32()),
        (Columns.IS_ORGANIC, pa.int8()),
    ]
)


@dataclass(frozen=True)
class SyntheticPaths:
    """Where :func:`generate` wrote the log.

    Attributes:
        events: ``out_dir/events.parquet`` (the canonical event table).
        items: ``out_dir/items.parquet`` (the item metadata table).
        n_events: rows written to ``events``.
    """

    events: Path
    items: Path
    n_events: int


def scaled_config(cfg: SyntheticConfig, n_events: int) -> SyntheticConfig:
    """``cfg`` with ``n_users`` set so that about ``n_events`` events are generated.

    Only the number of listeners changes: per-user behaviour and the catalog stay as configured.
    """
    n_users = max(1, round(n_events / expected_events_per_user(cfg)))
    return dataclasses.replace(cfg, n_users=n_users)


def block_size(cfg: SyntheticConfig) -> int:
    """Users simulated at once: about BLOCK_EVENTS events, whatever the row-group size."""
    return max(1, min(cfg.n_users, int(BLOCK_EVENTS / expected_events_per_user(cfg))))


def _rng(cfg: SyntheticConfig, *stream: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, *stream])


class _RowGroupWriter:
    """Writes tables to Parquet in row groups of exactly ``rows`` (the last may be smaller)."""

    def __init__(self, path: Path, schema: pa.Schema, rows: int, **options) -> None:
        self._writer = pq.ParquetWriter(path, schema, **options)
        self._rows = rows
        self._pending: list[pa.Table] = []
        self._n_pending = 0
        self.n_written = 0

    def write(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._n_pending += table.num_rows
        if self._n_pending >= self._rows:
            merged = pa.concat_tables(self._pending)
            full = (merged.num_rows // self._rows) * self._rows
            self._flush(merged.slice(0, full))
            self._pending = [merged.slice(full)]
            self._n_pending = merged.num_rows - full

    def _flush(self, table: pa.Table) -> None:
        if table.num_rows:
            self._writer.write_table(table, row_group_size=self._rows)
            self.n_written += table.num_rows

    def close(self) -> None:
        if self._pending:
            self._flush(pa.concat_tables(self._pending))
        self._writer.close()


def _events_table(
    ev: BlockEvents, first_user: int, cat: Catalog, ids: PublicIds, cfg: SyntheticConfig
) -> pa.Table:
    """The canonical event table of one block, with public ids and absolute timestamps."""
    columns = [
        pa.array(ev.user + (first_user + 1)),  # user_id = global user index + 1
        pa.array(ids.item[ev.track]),
        pa.array(ev.ts + LOG_START),
        pa.array(ev.ratio),
        pa.array(cat.length[ev.track]),
        pa.array(ev.organic),
    ]
    return reshape_events(pa.Table.from_arrays(columns, schema=EVENTS_SCHEMA), cfg, LOG_START)


def simulate_blocks(cfg: SyntheticConfig, cat: Catalog) -> Iterator[tuple[int, BlockEvents]]:
    """Yield ``(first_user, events)`` for each block of users, in user order.

    Block ``b`` draws from its own stream ``(seed, USERS_STREAM, b)``, so blocks are
    independent of each other and of how the output is laid out.
    """
    per_block = block_size(cfg)
    for b, first in enumerate(range(0, cfg.n_users, per_block)):
        rng = _rng(cfg, USERS_STREAM, b)
        users = draw_users(cfg, cat, first, min(per_block, cfg.n_users - first), rng)
        yield first, simulate_block(cfg, cat, users, draw_sessions(cfg, users, rng), rng)


def _temporary(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def _write(path: Path, schema: pa.Schema, rows: int, tables, **options) -> int:
    """Write ``tables`` to ``path`` in row groups of ``rows``; returns the rows written."""
    writer = _RowGroupWriter(path, schema, rows, **options)
    try:
        for table in tables:
            writer.write(table)
    finally:
        writer.close()
    return writer.n_written


def generate(
    cfg: SyntheticConfig, out_dir: str | Path, n_events_hint: int | None = None
) -> SyntheticPaths:
    """Generate the synthetic log into ``out_dir`` (created if needed).

    Args:
        cfg: size and shape of the log; the same config always yields the same bytes.
        out_dir: directory for ``events.parquet`` and ``items.parquet`` (overwritten).
        n_events_hint: if given, ``n_users`` is rescaled to produce about this many events.

    Returns:
        The paths written and the number of events.
    """
    if n_events_hint is not None:
        cfg = scaled_config(cfg, n_events_hint)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cat = build_catalog(cfg, _rng(cfg, CATALOG_STREAM))
    ids = PublicIds.draw(cat, _rng(cfg, IDS_STREAM))
    rows = min(cfg.row_group_size, MAX_LIST_VALUES // cfg.acoustic_dim)
    items = items_tables(cat, ids, cfg.missing_share, rows, _rng(cfg, ITEMS_STREAM))
    blocks = (_events_table(ev, first, cat, ids, cfg) for first, ev in simulate_blocks(cfg, cat))
    items = (item_columns(table, cfg.item_fields) for table in items)
    items_schema = pa.schema([f for f in ITEMS_SCHEMA if f.name in ("item_id", *cfg.item_fields)])
    paths = SyntheticPaths(out / "events.parquet", out / "items.parquet", 0)
    # Both files are written under temporary names and renamed only once both are complete,
    # so a failure never leaves a log that looks finished.
    try:
        _write(_temporary(paths.items), items_schema, rows, items)
        n_events = _write(
            _temporary(paths.events),
            EVENTS_SCHEMA,
            cfg.row_group_size,
            blocks,
            use_dictionary=EVENTS_DICTIONARY_COLUMNS,
        )
        os.replace(_temporary(paths.items), paths.items)
        os.replace(_temporary(paths.events), paths.events)
    finally:
        _temporary(paths.items).unlink(missing_ok=True)
        _temporary(paths.events).unlink(missing_ok=True)
    if n_events == 0:
        logger.warning(
            "synthetic log is empty: no session of %d users fits in %.1f days",
            cfg.n_users,
            cfg.days,
        )
    logger.info(
        "synthetic log: %d users, %d tracks, %d events -> %s",
        cfg.n_users,
        cfg.n_tracks,
        n_events,
        out,
    )
    return dataclasses.replace(paths, n_events=n_events)
