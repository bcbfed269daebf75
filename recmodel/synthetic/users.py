"""Listeners of the synthetic generator: tastes, heavy rotation and when they listen.

One :class:`Users` holds a block of consecutive users; one :class:`Sessions` holds every session
of that block in ``(user, start)`` order. See :mod:`recmodel.synthetic.generator` for the process.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from recmodel.core.config import SyntheticConfig
from recmodel.synthetic.catalog import SUCCESSOR_WEIGHTS, Catalog
from recmodel.synthetic.sampling import dirichlet_rows, sample_rows, zipf_weights

SECONDS_PER_DAY = 86_400
# Session kinds; what each kind plays is the move table in recmodel.synthetic.moves.
MIX, ALBUM, RADIO, DISCOVER = 0, 1, 2, 3
KIND_SHARE = np.array([0.40, 0.20, 0.25, 0.15])  # population mean share of each session kind
KIND_CONCENTRATION = 8.0  # Dirichlet concentration of a user's own mix around KIND_SHARE
TASTE_CONCENTRATION = 0.3  # Dirichlet concentration per genre: small = a few favourite genres
SCENE_TASTE_WEIGHT = 0.7  # share of a user's genre taste that is their scene's profile
SCENE_LOYALTY = 0.8  # share of followed artists drawn from the scene's pool
SCENE_ARTIST_EXPONENT = 1.0  # the artist at position j of a scene pool is followed ~ (j + 1)^-1
FAVOURITE_SLOT_EXPONENT = 1.0  # slot j of the heavy rotation is played ~ (j + 1)^-1
FAVOURITE_FROM_ARTIST = 0.5  # share of heavy-rotation tracks by a favourite artist
ROTATION_CHAIN_SHARE = 0.4  # rotation slots that continue the previous slot (see _chain)
ROTATION_CHAIN_LAG_DAYS = 2.0  # mean delay between a slot and the one continuing it
FAVOURITE_BIRTH_LEAD = 0.5  # rotation slots start up to this many log lengths before the log
SKIP_PROPENSITY_SD = 0.5  # per-user shift of the skip logit
MAX_LENGTH_FACTOR = 8  # sessions are capped at this many mean lengths (geometric tail)
# Relative session-start rate per hour of the day (UTC): quiet nights, a commute bump and an
# evening peak.
HOUR_WEIGHTS = np.array([
    1.2, 0.7, 0.4, 0.3, 0.3, 0.4, 0.8, 1.5, 2.2, 2.0, 1.6, 1.5,
    1.7, 1.6, 1.5, 1.6, 1.9, 2.4, 3.0, 3.4, 3.5, 3.2, 2.6, 1.8,
])  # fmt: skip


@dataclass(frozen=True)
class Users:
    """A block of users. Times are in days since the start of the log.

    Attributes:
        first: global index of the block's first user (user_id = global index + 1).
        join: float64 ``[U]`` sign-up time.
        taste_start, taste_end: float64 ``[U, G]`` genre distributions at the start and at the
            end of the log; the taste at time t mixes them (see :func:`drift_share`).
        kind_cum: float64 ``[U, 4]`` cumulative distribution over session kinds.
        fav_artists: int32 ``[U, FA]`` followed artists.
        fav_track, fav_birth, fav_death: ``[U, F]`` heavy-rotation slots: a track and the time
            interval in which it is in rotation.
        skip_shift: float32 ``[U]`` the user's skip propensity.
        scenes: int64 ``[2, U]`` the user's scene at the start and at the end of the log.
    """

    first: int
    join: np.ndarray
    taste_start: np.ndarray
    taste_end: np.ndarray
    kind_cum: np.ndarray
    fav_artists: np.ndarray
    fav_track: np.ndarray
    fav_birth: np.ndarray
    fav_death: np.ndarray
    skip_shift: np.ndarray
    scenes: np.ndarray

    @property
    def n_users(self) -> int:
        return len(self.join)

    @functools.cached_property
    def taste_cum(self) -> np.ndarray:
        """float64 ``[2, U, G]`` cumulative genre tastes: start of the log, end of the log."""
        return np.cumsum(np.stack([self.taste_start, self.taste_end]), axis=2)


@dataclass(frozen=True)
class Sessions:
    """Every session of a block, sorted by ``(user, start)``.

    Attributes:
        user: int64 ``[S]`` block-local user.  kind: int8 ``[S]``.  length: int64 ``[S]`` tracks.
        start: float64 ``[S]`` planned start in days (moved later if the previous one overruns).
    """

    user: np.ndarray
    kind: np.ndarray
    length: np.ndarray
    start: np.ndarray


def drift_share(cfg: SyntheticConfig, t: np.ndarray) -> np.ndarray:
    """Weight of the end-of-log taste at time ``t`` (days): 0 at the start, taste_drift at the end."""
    return cfg.taste_drift * np.clip(t / cfg.days, 0.0, 1.0)


def expected_events_per_user(cfg: SyntheticConfig) -> float:
    """Mean events per user before truncation at the end of the log (new users join midway)."""
    active_days = cfg.days * (1.0 - cfg.new_user_share / 2.0)
    return active_days * cfg.sessions_per_user_per_day * cfg.mean_session_length


def _taste_tracks(cat: Catalog, taste: np.ndarray, sampler, rng) -> np.ndarray:
    """int32 ``[n]``: a genre drawn from each taste row ``[n, G]``, then a track of it."""
    genre = sample_rows(np.cumsum(taste, axis=1), rng.random(len(taste)))
    return sampler.sample(genre, rng.random(len(taste)))


def _chain(cat: Catalog, track: np.ndarray, birth: np.ndarray, rng) -> None:
    """Let some slots follow the previous slot: a successor of its track, born soon after.

    Favourites come in clusters (a track, then what tends to play after it), so what a
    session plays next is often another favourite. ``track`` and ``birth`` ``[U, F]`` are
    updated in place; a loop over slots, vectorized over users.
    """
    n, f = track.shape
    chained = rng.random((n, f)) < ROTATION_CHAIN_SHARE
    # The successor rank is drawn like a session's NEXT move, so sessions replay the chains.
    rank = np.searchsorted(np.cumsum(SUCCESSOR_WEIGHTS), rng.random((n, f)), side="right")
    rank = np.minimum(rank, len(SUCCESSOR_WEIGHTS) - 1)
    lag = rng.exponential(ROTATION_CHAIN_LAG_DAYS, (n, f))
    for j in range(1, f):
        c = chained[:, j]
        track[c, j] = cat.successors[track[c, j - 1], rank[c, j]]
        birth[c, j] = birth[c, j - 1] + lag[c, j]


def _scene_tastes(cfg: SyntheticConfig, cat: Catalog, n: int, rng):
    """Genre tastes at the start and end of the log ``[U, G]``, followed artists ``[U, FA]``
    and scenes ``[2, U]``.

    A user belongs to a scene and drifts towards another one: each taste mixes the scene's
    profile with a personal one. Most followed artists come from the first scene's pool.
    """
    scenes = cat.scenes
    scene, later_scene = rng.choice(len(scenes.share), (2, n), p=scenes.share)
    prior = TASTE_CONCENTRATION * cfg.n_genres * cat.genre_mass  # empty genres get no weight
    own_a, own_b = dirichlet_rows(prior, n, rng), dirichlet_rows(prior, n, rng)
    taste_a = SCENE_TASTE_WEIGHT * scenes.taste[scene] + (1 - SCENE_TASTE_WEIGHT) * own_a
    taste_b = SCENE_TASTE_WEIGHT * scenes.taste[later_scene] + (1 - SCENE_TASTE_WEIGHT) * own_b
    k = cfg.n_favourite_artists
    pool_cum = np.cumsum(zipf_weights(scenes.artists.shape[1], SCENE_ARTIST_EXPONENT))
    position = np.minimum(np.searchsorted(pool_cum, rng.random((n, k))), len(pool_cum) - 1)
    from_scene = scenes.artists[scene[:, None], position]  # [U, FA]
    own = cat.artist[
        _taste_tracks(cat, np.repeat(taste_a, k, axis=0), cat.by_genre_personal, rng)
    ].reshape(n, k)
    followed = np.where(rng.random((n, k)) < SCENE_LOYALTY, from_scene, own)
    return taste_a, taste_b, followed, np.stack([scene, later_scene])


def _heavy_rotation(cfg, cat, join, taste_a, taste_b, fav_artists, rng):
    """Heavy-rotation slots ``[U, F]``: track, birth and death (days).

    A slot is born at a uniform time (starting before the log, so some users arrive with a
    rotation) and lives an exponential time. Its track is by a followed artist or comes from
    the taste of its birth time, so later favourites follow the taste drift; some slots
    instead continue the previous one (see :func:`_chain`).
    """
    n, f = len(join), cfg.n_favourite_tracks
    earliest = join[:, None] - FAVOURITE_BIRTH_LEAD * cfg.days  # [U, 1]
    birth = earliest + rng.random((n, f)) * (cfg.days - earliest)
    late = rng.random((n, f)) < drift_share(cfg, birth)
    rows = np.repeat(np.arange(n), f)
    taste = np.where(late.ravel()[:, None], taste_b[rows], taste_a[rows])
    by_taste = _taste_tracks(cat, taste, cat.by_genre_personal, rng)
    artist = fav_artists[rows, rng.integers(0, fav_artists.shape[1], n * f)]
    by_artist = cat.by_artist_personal.sample(artist, rng.random(n * f))
    track = np.where(rng.random(n * f) < FAVOURITE_FROM_ARTIST, by_artist, by_taste)
    track = track.reshape(n, f).astype(np.int32)
    _chain(cat, track, birth, rng)
    death = birth + rng.exponential(cfg.favourite_lifetime_days, (n, f))
    return track, birth, death


def draw_users(cfg: SyntheticConfig, cat: Catalog, first: int, n: int, rng) -> Users:
    """Draw ``n`` users starting at global index ``first``."""
    is_new = rng.random(n) < cfg.new_user_share
    join = np.where(is_new, rng.random(n) * cfg.days, 0.0)
    taste_a, taste_b, fav_artists, scenes = _scene_tastes(cfg, cat, n, rng)
    fav_track, fav_birth, fav_death = _heavy_rotation(
        cfg, cat, join, taste_a, taste_b, fav_artists, rng
    )
    return Users(
        first=first,
        join=join,
        taste_start=taste_a,
        taste_end=taste_b,
        kind_cum=np.cumsum(dirichlet_rows(KIND_CONCENTRATION * KIND_SHARE, n, rng), axis=1),
        fav_artists=fav_artists,
        fav_track=fav_track,
        fav_birth=fav_birth,
        fav_death=fav_death,
        skip_shift=rng.normal(0.0, SKIP_PROPENSITY_SD, n).astype(np.float32),
        scenes=scenes,
    )


def _start_times(cfg: SyntheticConfig, join: np.ndarray, rng) -> np.ndarray:
    """float64 ``[S]``: a uniform day after sign-up and an hour from the daily rhythm."""
    t = join + rng.random(len(join)) * (cfg.days - join)
    hour_cum = np.cumsum(HOUR_WEIGHTS) / HOUR_WEIGHTS.sum()
    hour = np.searchsorted(hour_cum, rng.random(len(join)), side="right")
    t = np.floor(t) + (hour + rng.random(len(join))) / 24.0
    return np.clip(t, join, cfg.days)


def draw_sessions(cfg: SyntheticConfig, users: Users, rng: np.random.Generator) -> Sessions:
    """Poisson session counts from log-normal activity, geometric lengths, sorted starts."""
    sigma = cfg.activity_sigma
    activity = rng.lognormal(-0.5 * sigma**2, sigma, users.n_users)  # mean 1
    rate = activity * cfg.sessions_per_user_per_day * (cfg.days - users.join)
    user = np.repeat(np.arange(users.n_users), rng.poisson(rate))
    start = _start_times(cfg, users.join[user], rng)
    order = np.lexsort((start, user))
    user, start = user[order], start[order]
    length = rng.geometric(1.0 / cfg.mean_session_length, len(user))
    kind = sample_rows(users.kind_cum[user], rng.random(len(user))).astype(np.int8)
    max_len = max(1, int(MAX_LENGTH_FACTOR * cfg.mean_session_length))
    return Sessions(user, kind, np.minimum(length, max_len), start)


def favourite_weights(n_slots: int) -> np.ndarray:
    """float64 ``[F]`` play weights of the heavy-rotation slots (Zipf over the slot index)."""
    return zipf_weights(n_slots, FAVOURITE_SLOT_EXPONENT)


def _without_overlap(user: np.ndarray, planned: np.ndarray, span: np.ndarray) -> np.ndarray:
    """int64 ``[S]`` starts: each session starts no earlier than the user's previous one + span.

    The recurrence ``s'_i = max(s_i, s'_{i-1} + span_{i-1})`` (within a user) becomes a running
    maximum of ``s_i - c_i`` with ``c_i`` the user's spans before ``i``; per-user offsets keep
    one global running maximum from crossing users. ``user`` must be sorted.
    """
    before = np.cumsum(span) - span
    c = before - before[np.searchsorted(user, user)]  # spans of the user's earlier sessions
    key = planned - c
    stride = int(key.max() - key.min()) + 1 if len(key) else 1
    shift = user.astype(np.int64) * stride
    return c + np.maximum.accumulate(key + shift) - shift


def place_in_time(sess: Sessions, play_s: np.ndarray, min_gap_s: int) -> np.ndarray:
    """int64 ``[E]`` seconds since the log start of session-major events lasting ``play_s``.

    Within a session a track starts when the previous one stops; a session that would overlap
    its predecessor is pushed back so sessions of a user stay ``min_gap_s`` apart.
    """
    first = np.zeros(len(sess.length) + 1, dtype=np.int64)
    np.cumsum(sess.length, out=first[1:])
    session = np.repeat(np.arange(len(sess.length)), sess.length)
    elapsed = np.cumsum(play_s) - play_s  # [E] exclusive, across sessions
    within = elapsed - elapsed[first[:-1]][session]
    duration = np.add.reduceat(play_s, first[:-1]) if len(play_s) else play_s
    planned = np.rint(sess.start * SECONDS_PER_DAY).astype(np.int64)
    start = _without_overlap(sess.user, planned, duration + min_gap_s)
    return start[session] + within
