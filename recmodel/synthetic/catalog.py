"""The music world of the synthetic generator: artists, albums, genres, audio, popularity, scenes.

Tracks live in an internal order (artist-major, then album, then track number) so that an album
is a contiguous run of indices and "the next track of the album" is ``index + 1``. Public ids are
random permutations of that order, so nothing downstream can read structure off the ids. See
:mod:`recmodel.synthetic.generator` for the generative process as a whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from recmodel.core.columns import Columns
from recmodel.core.config import SyntheticConfig
from recmodel.synthetic.sampling import GroupSampler, dirichlet_rows, sample_rows, zipf_weights

GENRE_NAMES = (
    "pop", "rock", "hip-hop", "electronic", "indie", "r&b", "jazz", "classical", "metal",
    "country", "folk", "latin", "reggae", "blues", "soul", "punk", "ambient", "k-pop",
    "techno", "house",
)  # fmt: skip
ARTIST_SIZE_EXPONENT = 0.7  # catalog size of the artist at rank r ~ r^-0.7
GENRE_SIZE_EXPONENT = 0.8  # share of artists whose primary genre is the genre at rank r
SECONDARY_GENRE_SHARE = 0.2  # albums released in the artist's second genre
TEMPO_RANGE = (75.0, 165.0)  # genre tempo centres (BPM) are spread over this range
TEMPO_CLIP = (50.0, 220.0)
TEMPO_ALBUM_SD, TEMPO_TRACK_SD = 6.0, 5.0
ACOUSTIC_ARTIST_SD, ACOUSTIC_TRACK_SD = 0.5, 0.35  # around a unit-variance genre centroid
LENGTH_MEDIAN_S, LENGTH_SIGMA, LENGTH_CLIP_S = 210.0, 0.3, (30, 1200)
# Popularity latent: a hit-making artist matters most, then the album, then the track; early
# album tracks (the singles) are played more.
POP_ARTIST_SD, POP_ALBUM_SD, POP_TRACK_SD, POP_TRACK_NUMBER_SLOPE = 1.0, 0.3, 0.5, 0.1
SUCCESSOR_WEIGHTS = np.array([0.55, 0.25, 0.12, 0.08])  # "what plays next" after a track
SUCCESSOR_CANDIDATES = 16  # same-genre candidates drawn per track; the closest become successors
SUCCESSOR_CHUNK = 65_536  # tracks per chunk of the successor search (bounds memory)
# Personal choices (heavy rotation, successor candidates) follow popularity^0.4: listeners' own
# favourites reach deep into the long tail, while taste moves (charts, radio) follow raw
# popularity.
PERSONAL_POPULARITY_POWER = 0.4
SCENE_ARTISTS = 15  # artists in a scene's pool
SCENE_TASTE_CONCENTRATION = 0.2  # Dirichlet concentration per genre of a scene's genre profile
SCENE_SIZE_EXPONENT = 0.8  # share of listeners in the scene at rank r ~ r^-0.8


@dataclass(frozen=True)
class Scenes:
    """Listener communities: members share a genre profile and follow artists from one pool.

    Scenes are what collaborative filtering finds: listeners of a scene share favourites.

    Attributes:
        taste: float64 ``[C, G]`` genre profile of each scene.
        artists: int32 ``[C, K]`` each scene's artist pool, followed with Zipf weights by position.
        share: float64 ``[C]`` share of listeners in each scene.
    """

    taste: np.ndarray
    artists: np.ndarray
    share: np.ndarray


@dataclass(frozen=True)
class Catalog:
    """Every track in internal order, with the structure the listening process draws on.

    Attributes:
        artist, album, genre: int32 ``[N]`` internal codes; albums are contiguous runs.
        tempo: float32 ``[N]`` BPM.  acoustic: float32 ``[N, A]``.  length: int32 ``[N]`` s.
        popularity: float64 ``[N]`` base play weight, Zipf over its rank, sums to 1.
        album_first: int32 ``[n_albums]`` first track of each album.
        successors: int32 ``[N, K]`` the tracks that tend to follow each track.
        by_genre, by_artist: popularity-weighted samplers of tracks within a genre / artist.
        by_genre_personal, by_artist_personal: the same with popularity^0.4 weights.
        genre_mass: float64 ``[G]`` popularity share of each genre (0 for genres with no track).
        scenes: the listener communities of this music world.
    """

    artist: np.ndarray
    album: np.ndarray
    genre: np.ndarray
    tempo: np.ndarray
    acoustic: np.ndarray
    length: np.ndarray
    popularity: np.ndarray
    album_first: np.ndarray
    successors: np.ndarray
    by_genre: GroupSampler
    by_artist: GroupSampler
    by_genre_personal: GroupSampler
    by_artist_personal: GroupSampler
    genre_mass: np.ndarray
    n_artists: int
    scenes: Scenes

    @property
    def n_tracks(self) -> int:
        return len(self.artist)


def genre_names(n_genres: int) -> list[str]:
    """Readable genre names; configs with more genres than names get numbered ones."""
    extra = [f"genre-{i:03d}" for i in range(len(GENRE_NAMES), n_genres)]
    return list(GENRE_NAMES[:n_genres]) + extra


def _artist_of_tracks(cfg: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """int32 ``[N]`` sorted artist codes; every artist owns at least one track."""
    shares = rng.permutation(zipf_weights(cfg.n_artists, ARTIST_SIZE_EXPONENT))
    sizes = 1 + rng.multinomial(cfg.n_tracks - cfg.n_artists, shares)
    return np.repeat(np.arange(cfg.n_artists, dtype=np.int32), sizes)


def _albums(artist: np.ndarray, mean_size: float, rng: np.random.Generator) -> np.ndarray:
    """int32 ``[N]`` album codes: runs of 1 + Poisson tracks, cut again at artist boundaries."""
    n = len(artist)
    ends = np.cumsum(1 + rng.poisson(mean_size - 1.0, size=n))  # n albums always cover n tracks
    cut = np.zeros(n, dtype=bool)
    cut[ends[ends < n]] = True
    cut[1:] |= artist[1:] != artist[:-1]
    cut[0] = True
    return (np.cumsum(cut) - 1).astype(np.int32)


def _genres(cfg: SyntheticConfig, artist: np.ndarray, album: np.ndarray, rng) -> np.ndarray:
    """int32 ``[N]``: each album is in its artist's primary genre or, rarely, its second one."""
    genre_share = rng.permutation(zipf_weights(cfg.n_genres, GENRE_SIZE_EXPONENT))
    primary = rng.choice(cfg.n_genres, size=cfg.n_artists, p=genre_share)
    # A second genre different from the first (the same one when there is only one genre).
    secondary = (primary + rng.integers(1, max(cfg.n_genres, 2), cfg.n_artists)) % cfg.n_genres
    album_artist = artist[np.r_[0, np.flatnonzero(np.diff(album)) + 1]]
    use_second = rng.random(len(album_artist)) < SECONDARY_GENRE_SHARE
    album_genre = np.where(use_second, secondary[album_artist], primary[album_artist])
    return album_genre[album].astype(np.int32)


def _audio(cfg: SyntheticConfig, artist, album, genre, rng) -> tuple[np.ndarray, np.ndarray]:
    """Tempo ``[N]`` and acoustic vectors ``[N, A]``: genre centre + artist/album + track noise."""
    n = len(genre)
    tempo_centre = rng.permutation(np.linspace(*TEMPO_RANGE, cfg.n_genres))
    album_shift = rng.normal(0.0, TEMPO_ALBUM_SD, album[-1] + 1)
    tempo = tempo_centre[genre] + album_shift[album] + rng.normal(0.0, TEMPO_TRACK_SD, n)
    centroid = rng.normal(0.0, 1.0, (cfg.n_genres, cfg.acoustic_dim))
    artist_shift = rng.normal(0.0, ACOUSTIC_ARTIST_SD, (cfg.n_artists, cfg.acoustic_dim))
    noise = rng.normal(0.0, ACOUSTIC_TRACK_SD, (n, cfg.acoustic_dim))
    acoustic = centroid[genre] + artist_shift[artist] + noise  # [N, A]
    return np.clip(tempo, *TEMPO_CLIP).astype(np.float32), acoustic.astype(np.float32)


def _popularity(cfg: SyntheticConfig, artist, album, album_first, rng) -> np.ndarray:
    """float64 ``[N]``: an exact Zipf law over a latent that correlates artist and album."""
    n = len(artist)
    track_number = np.arange(n) - album_first[album]
    latent = (
        rng.normal(0.0, POP_ARTIST_SD, cfg.n_artists)[artist]
        + rng.normal(0.0, POP_ALBUM_SD, album[-1] + 1)[album]
        + rng.normal(0.0, POP_TRACK_SD, n)
        - POP_TRACK_NUMBER_SLOPE * track_number
    )
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(-latent, kind="stable")] = np.arange(n)
    return zipf_weights(n, cfg.zipf_exponent)[rank]


def _successors(acoustic, tempo, by_genre: GroupSampler, genre, rng) -> np.ndarray:
    """int32 ``[N, K]``: for each track, the closest (in audio) of a few same-genre draws.

    Drawn per track and not symmetrized, so "B follows A" does not imply "A follows B".
    """
    n, k = len(genre), len(SUCCESSOR_WEIGHTS)
    out = np.empty((n, k), dtype=np.int32)
    for lo in range(0, n, SUCCESSOR_CHUNK):
        rows = np.arange(lo, min(lo + SUCCESSOR_CHUNK, n))
        u = rng.random((len(rows), SUCCESSOR_CANDIDATES))
        cand = by_genre.sample(np.repeat(genre[rows], SUCCESSOR_CANDIDATES), u.ravel())
        cand = cand.reshape(len(rows), SUCCESSOR_CANDIDATES)  # [C, M]
        diff = acoustic[cand] - acoustic[rows, None, :]  # [C, M, A]
        dist = (diff**2).sum(-1) + ((tempo[cand] - tempo[rows, None]) / 10.0) ** 2
        dist[cand == rows[:, None]] = np.inf  # a track never succeeds itself
        nearest = np.argsort(dist, axis=1, kind="stable")[:, :k]
        out[rows] = np.take_along_axis(cand, nearest, axis=1)
    return out


def build_catalog(cfg: SyntheticConfig, rng: np.random.Generator) -> Catalog:
    """Draw the whole catalog from ``rng`` (one stream, so it is the same for every block)."""
    artist = _artist_of_tracks(cfg, rng)
    album = _albums(artist, cfg.mean_album_size, rng)
    album_first = np.r_[0, np.flatnonzero(np.diff(album)) + 1].astype(np.int32)
    genre = _genres(cfg, artist, album, rng)
    tempo, acoustic = _audio(cfg, artist, album, genre, rng)
    length = rng.lognormal(np.log(LENGTH_MEDIAN_S), LENGTH_SIGMA, len(artist))
    popularity = _popularity(cfg, artist, album, album_first, rng)
    genre_mass = np.bincount(genre, weights=popularity, minlength=cfg.n_genres)
    personal = popularity**PERSONAL_POPULARITY_POWER
    by_genre_personal = GroupSampler.build(genre, personal, cfg.n_genres)
    return Catalog(
        artist=artist,
        album=album,
        genre=genre,
        tempo=tempo,
        acoustic=acoustic,
        length=np.clip(np.rint(length), *LENGTH_CLIP_S).astype(np.int32),
        popularity=popularity,
        album_first=album_first,
        successors=_successors(acoustic, tempo, by_genre_personal, genre, rng),
        by_genre=GroupSampler.build(genre, popularity, cfg.n_genres),
        by_artist=GroupSampler.build(artist, popularity, cfg.n_artists),
        by_genre_personal=by_genre_personal,
        by_artist_personal=GroupSampler.build(artist, personal, cfg.n_artists),
        genre_mass=genre_mass,
        n_artists=cfg.n_artists,
        scenes=_scenes(cfg, genre, genre_mass, by_genre_personal, artist, rng),
    )


def _scenes(cfg, genre, genre_mass, by_genre_personal, artist, rng) -> Scenes:
    """Scenes with a sparse genre profile and an artist pool drawn from it."""
    taste = dirichlet_rows(SCENE_TASTE_CONCENTRATION * cfg.n_genres * genre_mass, cfg.n_scenes, rng)
    pool_genres = sample_rows(
        np.cumsum(np.repeat(taste, SCENE_ARTISTS, axis=0), axis=1),
        rng.random(cfg.n_scenes * SCENE_ARTISTS),
    )
    tracks = by_genre_personal.sample(pool_genres, rng.random(len(pool_genres)))
    share = rng.permutation(zipf_weights(cfg.n_scenes, SCENE_SIZE_EXPONENT))
    return Scenes(taste, artist[tracks].reshape(cfg.n_scenes, SCENE_ARTISTS), share)


@dataclass(frozen=True)
class PublicIds:
    """Random public ids (1-based) of the internal track, artist and album codes."""

    item: np.ndarray  # int64 [N]
    artist: np.ndarray  # int64 [n_artists]
    album: np.ndarray  # int64 [n_albums]

    @classmethod
    def draw(cls, cat: Catalog, rng: np.random.Generator) -> PublicIds:
        n_albums = len(cat.album_first)
        return cls(
            rng.permutation(cat.n_tracks).astype(np.int64) + 1,
            rng.permutation(cat.n_artists).astype(np.int64) + 1,
            rng.permutation(n_albums).astype(np.int64) + 1,
        )


ITEMS_SCHEMA = pa.schema(
    [
        (Columns.ITEM, pa.int64()),
        (Columns.ARTIST, pa.int64()),
        (Columns.ALBUM, pa.int64()),
        (Columns.GENRE, pa.string()),
        (Columns.TEMPO, pa.float32()),
        (Columns.EMBEDDING, pa.list_(pa.float32())),
    ]
)


def items_tables(cat: Catalog, ids: PublicIds, missing_share: float, rows_per_table: int, rng):
    """Yield the item table in slices sorted by item_id; some metadata is missing at random.

    Genre, tempo and embedding are each missing for about ``missing_share`` of the tracks,
    independently, since real catalogs have holes. Slicing keeps list offsets within int32.
    """
    order = np.argsort(ids.item)  # internal track at each output row
    n, dim = len(order), cat.acoustic.shape[1]
    no_genre, no_tempo, no_vec = rng.random((3, n)) < missing_share
    names = np.array(genre_names(len(cat.genre_mass)), dtype=object)
    for lo in range(0, n, rows_per_table):
        rows = slice(lo, min(lo + rows_per_table, n))
        tracks = order[rows]
        offsets = pa.array(np.arange(len(tracks) + 1, dtype=np.int32) * dim)
        vectors = pa.ListArray.from_arrays(
            offsets, pa.array(cat.acoustic[tracks].ravel()), mask=pa.array(no_vec[rows])
        )
        columns = [
            pa.array(ids.item[tracks]),
            pa.array(ids.artist[cat.artist[tracks]]),
            pa.array(ids.album[cat.album[tracks]]),
            pa.array(names[cat.genre[tracks]], type=pa.string(), mask=no_genre[rows]),
            pa.array(cat.tempo[tracks], mask=no_tempo[rows]),
            vectors,
        ]
        yield pa.Table.from_arrays(columns, schema=ITEMS_SCHEMA)
