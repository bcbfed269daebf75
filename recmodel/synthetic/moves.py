"""Moves of the synthetic generator: how a running session picks its next track.

At each position a session draws a *move* from a table that depends on its kind (mix, album,
radio, discover), then :func:`resolve_moves` turns the moves of every running session into
tracks at once, given the previous track of each. See :mod:`recmodel.synthetic.generator`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recmodel.core.config import SyntheticConfig
from recmodel.synthetic.catalog import SUCCESSOR_WEIGHTS, Catalog
from recmodel.synthetic.sampling import sample_rows, zipf_weights
from recmodel.synthetic.users import (
    SCENE_ARTIST_EXPONENT,
    Users,
    drift_share,
    favourite_weights,
)

# Moves, in the order they are resolved: a move that cannot be played falls back to a later one.
# FAV (no rotation track alive) -> ARTIST, ALBUM_NEXT (album over) -> ALBUM_START, NEXT (first
# position) -> TASTE.
FAV, ALBUM_NEXT, NEXT, ALBUM_START, ARTIST, TASTE = range(6)
ORGANIC_MOVE = np.array([1, 1, 0, 1, 1, 0], dtype=np.int8)  # NEXT and TASTE are recommendations
# Move probabilities [kind, move] at the first position and after it; kinds are MIX, ALBUM,
# RADIO, DISCOVER (recmodel.synthetic.users). Columns: FAV, ALBUM_NEXT, NEXT, ALBUM_START,
# ARTIST, TASTE.
START_MOVES = np.array([
    [1.00, 0.00, 0.00, 0.00, 0.00, 0.00],
    [0.00, 0.00, 0.00, 1.00, 0.00, 0.00],
    [0.60, 0.00, 0.00, 0.00, 0.00, 0.40],
    [0.00, 0.00, 0.00, 0.00, 0.30, 0.70],
])  # fmt: skip
LATER_MOVES = np.array([
    [0.60, 0.05, 0.15, 0.00, 0.10, 0.10],
    [0.10, 0.78, 0.04, 0.00, 0.04, 0.04],
    [0.10, 0.00, 0.60, 0.00, 0.10, 0.20],
    [0.10, 0.10, 0.30, 0.00, 0.20, 0.30],
])  # fmt: skip
NOVELTY_SHARE_OF_LIFETIME = 0.5  # a favourite's appeal decays with this share of its lifetime
FAVOURITE_REJECTION_ROUNDS = 3  # cheap rotation draws before the exact [n, F] draw
ALBUM_OF_FAVOURITE = 0.7  # album sessions that play the album of a current favourite
SCENE_CHART_SHARE = 0.5  # taste moves that play the user's scene chart rather than a genre's
GENRE_STICKINESS = 0.5  # a taste move stays in the previous track's genre (mood continuity)


@dataclass(frozen=True)
class Step:
    """The sessions running at one position, and what their moves draw on.

    Attributes:
        user: int64 ``[n]`` block-local users.  t: float64 ``[n]`` session start (days).
        prev: int32 ``[n]`` previous track of the session (-1 at the first position).
    """

    cfg: SyntheticConfig
    cat: Catalog
    users: Users
    rng: np.random.Generator
    user: np.ndarray
    t: np.ndarray
    prev: np.ndarray

    def prev_artist(self, i: np.ndarray) -> np.ndarray:
        """The previous track's artist, or a followed artist at a session's first position."""
        fav = self.users.fav_artists
        followed = fav[self.user[i], self.rng.integers(0, fav.shape[1], len(i))]
        prev = self.prev[i]
        return np.where(prev >= 0, self.cat.artist[np.maximum(prev, 0)], followed)


def _appeal(users: Users, user, t, prev, slot, novelty_days: float) -> np.ndarray:
    """float in [0, 1]: how much slot ``slot`` of ``user`` is in rotation at time ``t``.

    0 outside its lifetime and for the previous track; inside, novelty fades as
    ``exp(-age / novelty_days)``: a new favourite is played most.
    """
    birth, death = users.fav_birth[user, slot], users.fav_death[user, slot]
    alive = (birth <= t) & (t < death) & (users.fav_track[user, slot] != prev)
    return np.where(alive, np.exp(-np.maximum(t - birth, 0.0) / novelty_days), 0.0)


def _favourite(s: Step, i: np.ndarray) -> np.ndarray:
    """A heavy-rotation track alive at the session's time, other than the previous track.

    Slots are drawn with probability proportional to ``slot weight * appeal``. A few rejection
    rounds (propose by weight, accept with the appeal) settle most draws cheaply and the rest
    draw from the same distribution directly ([n, F] work), so the split changes only the
    cost. -1 where no slot is live.
    """
    users, rng = s.users, s.rng
    user, t, prev = s.user[i], s.t[i], s.prev[i]
    novelty = NOVELTY_SHARE_OF_LIFETIME * s.cfg.favourite_lifetime_days
    track = np.full(len(i), -1, dtype=np.int32)
    weight = favourite_weights(s.cfg.n_favourite_tracks)  # [F]
    weight_cum = np.cumsum(weight)
    pending = np.arange(len(i))
    for _ in range(FAVOURITE_REJECTION_ROUNDS):
        slot = np.searchsorted(weight_cum, rng.random(len(pending)) * weight_cum[-1])
        slot = np.minimum(slot, len(weight) - 1)
        appeal = _appeal(users, user[pending], t[pending], prev[pending], slot, novelty)
        hit = rng.random(len(pending)) < appeal
        track[pending[hit]] = users.fav_track[user[pending[hit]], slot[hit]]
        pending = pending[~hit]
    every = np.arange(len(weight))[None, :]
    appeal = _appeal(
        users, user[pending, None], t[pending, None], prev[pending, None], every, novelty
    )  # [p, F]
    cum = np.cumsum(appeal * weight, axis=1)
    slot = sample_rows(cum, rng.random(len(pending)))
    found = cum[:, -1] > 0
    track[pending[found]] = users.fav_track[user[pending[found]], slot[found]]
    return track


def _album_next(s: Step, i: np.ndarray) -> np.ndarray:
    """The next track of the previous track's album; -1 at an album's end or without one."""
    prev, album = s.prev[i], s.cat.album
    nxt = np.minimum(prev + 1, len(album) - 1)
    ok = (prev >= 0) & (prev + 1 < len(album)) & (album[nxt] == album[np.maximum(prev, 0)])
    return np.where(ok, nxt, -1)


def _successor(s: Step, i: np.ndarray) -> np.ndarray:
    """A track that tends to follow the previous one (by SUCCESSOR_WEIGHTS); -1 without one."""
    prev = s.prev[i]
    rank = np.searchsorted(np.cumsum(SUCCESSOR_WEIGHTS), s.rng.random(len(i)), side="right")
    rank = np.minimum(rank, len(SUCCESSOR_WEIGHTS) - 1)
    return np.where(prev >= 0, s.cat.successors[np.maximum(prev, 0), rank], -1)


def _album_start(s: Step, i: np.ndarray) -> np.ndarray:
    """The first track of an album: mostly the album of a current favourite when a session
    starts, otherwise a popular album of the previous (or a followed) artist."""
    track = s.cat.by_artist.sample(s.prev_artist(i), s.rng.random(len(i)))
    favourite = _favourite(s, i)
    use = (s.prev[i] < 0) & (favourite >= 0) & (s.rng.random(len(i)) < ALBUM_OF_FAVOURITE)
    return s.cat.album_first[s.cat.album[np.where(use, favourite, track)]]


def _artist(s: Step, i: np.ndarray) -> np.ndarray:
    """A popular track of the previous (or a followed) artist."""
    return s.cat.by_artist.sample(s.prev_artist(i), s.rng.random(len(i)))


def _scene_chart(s: Step, i: np.ndarray, late: np.ndarray) -> np.ndarray:
    """A popular track by an artist of the user's current scene (Zipf over the pool)."""
    scene = s.users.scenes[late, s.user[i]]
    pool = s.cat.scenes.artists  # [C, K]
    pool_cum = np.cumsum(zipf_weights(pool.shape[1], SCENE_ARTIST_EXPONENT))
    position = np.searchsorted(pool_cum, s.rng.random(len(i)) * pool_cum[-1])
    artist = pool[scene, np.minimum(position, pool.shape[1] - 1)]
    return s.cat.by_artist.sample(artist, s.rng.random(len(i)))


def _taste(s: Step, i: np.ndarray) -> np.ndarray:
    """What the user's taste brings up: a scene chart track, or a popular track of a genre.

    The genre comes from the current taste or, for mood continuity, from the previous track;
    two candidates are drawn and the one closer in tempo to the previous track is kept.
    """
    cat, rng, prev, n = s.cat, s.rng, s.prev[i], len(i)
    late = (rng.random(n) < drift_share(s.cfg, s.t[i])).astype(np.int64)
    genre = sample_rows(s.users.taste_cum[late, s.user[i]], rng.random(n))  # [n, G] rows
    has_prev = prev >= 0
    keep = has_prev & (rng.random(n) < GENRE_STICKINESS)
    genre = np.where(keep, cat.genre[np.maximum(prev, 0)], genre)
    first = cat.by_genre.sample(genre, rng.random(n))
    second = cat.by_genre.sample(genre, rng.random(n))
    prev_tempo = cat.tempo[np.maximum(prev, 0)]
    closer = np.abs(cat.tempo[second] - prev_tempo) < np.abs(cat.tempo[first] - prev_tempo)
    by_genre = np.where(has_prev & closer, second, first)
    chart = rng.random(n) < SCENE_CHART_SHARE
    return np.where(chart, _scene_chart(s, i, late), by_genre)


# (move, how it is played, its fallback) in resolution order; fallbacks come later in the list.
MOVE_RESOLUTION = (
    (FAV, _favourite, ARTIST),
    (ALBUM_NEXT, _album_next, ALBUM_START),
    (NEXT, _successor, TASTE),
    (ALBUM_START, _album_start, None),
    (ARTIST, _artist, None),
    (TASTE, _taste, None),
)


def resolve_moves(step: Step, move: np.ndarray) -> np.ndarray:
    """int32 ``[n]`` tracks for one step; ``move`` is updated in place where a move fell back."""
    track = np.full(len(move), -1, dtype=np.int32)
    for code, play, fallback in MOVE_RESOLUTION:
        i = np.flatnonzero(move == code)
        track[i] = play(step, i)
        if fallback is not None:
            move[i[track[i] < 0]] = fallback
    return track
