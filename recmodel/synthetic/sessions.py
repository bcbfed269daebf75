"""What a session plays: the step loop of the synthetic generator, skips and timestamps.

The loop runs over session positions; each step advances every session that is still running
at once (sessions are ordered longest first, so the running ones are a prefix). A step draws a
move per session (:mod:`recmodel.synthetic.moves`), resolves it to a track and decides whether
the listener skips it. See :mod:`recmodel.synthetic.generator`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recmodel.synthetic.catalog import Catalog
from recmodel.synthetic.moves import (
    FAV,
    LATER_MOVES,
    ORGANIC_MOVE,
    START_MOVES,
    Step,
    resolve_moves,
)
from recmodel.synthetic.sampling import sample_rows
from recmodel.synthetic.users import (
    RADIO,
    SECONDS_PER_DAY,
    Sessions,
    Users,
    drift_share,
    place_in_time,
)

# Skip logit = base + user shift - fit * genre fit - ... (see _skip_logit).
SKIP_BASE, SKIP_FIT, SKIP_FAV_ARTIST, SKIP_ROTATION = 1.2, 3.5, 2.0, 3.0
SKIP_RECOMMENDED, SKIP_TEMPO_PER_30BPM = 0.6, 0.8
FIT_SATURATION = 3.0  # genre taste (relative to uniform) at which the fit is full
SKIP_MAX_PCT = 49.0  # skips play less than this, so they are never listen+ at the threshold 50
SKIP_BETA = 3.0  # a skip plays SKIP_MAX_PCT * Beta(1, 3): most skips come early
PARTIAL_SHARE, PARTIAL_MIN_PCT, PARTIAL_MAX_PCT = 0.15, 50.0, 95.0
FULL_TAIL_BETA = 30.0  # full plays stop in the last few percent: 100 * (1 - Beta(1, 30))
MAX_TRACK_GAP_S = 3  # seconds between the end of one track and the start of the next
MIN_SESSION_GAP_S = 45 * 60  # sessions of a user never overlap and stay apart this long


@dataclass(frozen=True)
class BlockEvents:
    """The events of one block in ``(user, timestamp)`` order.

    Attributes (all ``[E]``): user (block-local, int64), track (internal, int32), ts (int64
    seconds since the start of the log), ratio (float32 percent), organic (int8), move (int8, the
    move that chose the track; kept for diagnostics, not written).
    """

    user: np.ndarray
    track: np.ndarray
    ts: np.ndarray
    ratio: np.ndarray
    organic: np.ndarray
    move: np.ndarray


def _skip_logit(step: Step, track, move, organic) -> np.ndarray:
    """Skips concentrate on tracks outside the listener's taste, recommendations, tempo jumps."""
    cat, users, user, prev = step.cat, step.users, step.user, step.prev
    late = drift_share(step.cfg, step.t)
    g = cat.genre[track]
    taste = (1 - late) * users.taste_start[user, g] + late * users.taste_end[user, g]
    fit = np.minimum(taste * np.count_nonzero(cat.genre_mass) / FIT_SATURATION, 1.0)
    followed = (users.fav_artists[user] == cat.artist[track][:, None]).any(axis=1)
    jump = np.where(prev >= 0, np.abs(cat.tempo[track] - cat.tempo[np.maximum(prev, 0)]), 0.0)
    return (
        SKIP_BASE
        + users.skip_shift[user]
        - SKIP_FIT * fit
        - SKIP_FAV_ARTIST * followed
        - SKIP_ROTATION * (move == FAV)
        + SKIP_RECOMMENDED * (organic == 0)
        + SKIP_TEMPO_PER_30BPM * jump / 30.0
    )


def played_ratio(skip_logit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """float32 percent played: skips stop early; the rest mostly play to the end."""
    n = len(skip_logit)
    skipped = rng.random(n) < 1.0 / (1.0 + np.exp(-skip_logit))
    partial = rng.random(n) < PARTIAL_SHARE
    u = rng.random(n)
    # Beta(1, b) by inversion: 1 - (1 - u)^(1 / b), and 1 - u is uniform too.
    ratio = np.where(
        skipped,
        SKIP_MAX_PCT * (1.0 - u ** (1.0 / SKIP_BETA)),
        np.where(
            partial,
            PARTIAL_MIN_PCT + (PARTIAL_MAX_PCT - PARTIAL_MIN_PCT) * u,
            100.0 * u ** (1.0 / FULL_TAIL_BETA),
        ),
    )
    return ratio.astype(np.float32)


def _running(lengths_desc: np.ndarray, step: int) -> int:
    """How many sessions (sorted longest first) are still running at position ``step``."""
    return int(np.searchsorted(-lengths_desc, -step, side="left"))


def simulate_block(cfg, cat: Catalog, users: Users, sess: Sessions, rng) -> BlockEvents:
    """Play every session of a block; events past the end of the log are dropped."""
    first = np.zeros(len(sess.length) + 1, dtype=np.int64)
    np.cumsum(sess.length, out=first[1:])
    order = np.argsort(-sess.length, kind="stable")  # running sessions form a prefix
    lengths, user, kind = sess.length[order], sess.user[order], sess.kind[order]
    t, base = sess.start[order], first[:-1][order]
    n_events = int(first[-1])
    track = np.empty(n_events, dtype=np.int32)
    ratio = np.empty(n_events, dtype=np.float32)
    organic = np.empty(n_events, dtype=np.int8)
    move = np.empty(n_events, dtype=np.int8)
    prev = np.full(len(order), -1, dtype=np.int32)
    tables = np.cumsum(START_MOVES, axis=1), np.cumsum(LATER_MOVES, axis=1)
    for k in range(int(lengths[0]) if len(lengths) else 0):
        n = _running(lengths, k)
        step = Step(cfg, cat, users, rng, user[:n], t[:n], prev[:n].copy())
        kd = kind[:n]
        mv = sample_rows(tables[min(k, 1)][kd], rng.random(n)).astype(np.int8)
        tr = resolve_moves(step, mv)
        org = ORGANIC_MOVE[mv] & ((kd != RADIO) | (k == 0))
        pos = base[:n] + k  # session-major slot of this step
        track[pos], organic[pos], move[pos] = tr, org, mv
        ratio[pos] = played_ratio(_skip_logit(step, tr, mv, org), rng)
        prev[:n] = tr
    play_s = np.rint(cat.length[track] * (ratio / 100.0)).astype(np.int64)
    play_s = np.maximum(play_s + rng.integers(0, MAX_TRACK_GAP_S + 1, n_events), 1)
    ts = place_in_time(sess, play_s, MIN_SESSION_GAP_S)
    keep = ts < int(round(cfg.days * SECONDS_PER_DAY))
    session_user = np.repeat(sess.user, sess.length)
    return BlockEvents(
        session_user[keep], track[keep], ts[keep], ratio[keep], organic[keep], move[keep]
    )
