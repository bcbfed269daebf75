"""The listener's long-term profile: what it played before the encoder's window, in wall-clock time.

The encoder and its repeat bonus (:mod:`recmodel.retriever.repeat`) see the last ``max_len``
plays only. A track the listener loves but has not played in the last few hours is outside
that window, and in music such tracks are a large share of what is played next. The profile
summarizes the plays *before* the window (the last ``profile_history`` of them, which bounds
the cost for listeners with years of history): its ``profile_size`` tracks of highest 30-day
decayed play count, each with three features,

    f(j) = [log1p(sum exp(-age / 7 d)), log1p(sum exp(-age / 30 d)), log1p(plays)]

where ``age`` is the time from a play to the window's first play. The head adds to the logit of
a candidate ``j`` in the profile

    b_lt(t, j) = <w, f(j)> + c + <h_t, a>

(``h_t`` the hidden state: the listener's current propensity to go back to old favourites), and
recommendation retrieves the profile's tracks as candidates beside the dot-product top-k and the
window. The profile is computed the same way for a training window (plays before it, ages up to
its first play) and for a request (plays before its last ``max_len``, ages up to the first of
them), so training and serving agree. Every weight starts at zero: the plain retriever.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from recmodel.core.dataset import UserItems

N_FEATURES = 3
SECONDS_PER_DAY = 86_400.0
DECAYS_DAYS = (7.0, 30.0)


@dataclass(frozen=True)
class Profiles:
    """Long-term profiles of ``R`` rows (windows or requests).

    Attributes:
        items: int64 ``[R, F]`` profile tracks, strongest first; 0 = no track.
        features: float32 ``[R, F, 3]`` their features (zeros where no track).
    """

    items: np.ndarray
    features: np.ndarray

    def to_torch(
        self, rows: slice | np.ndarray, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Items and features of ``rows`` on ``device``; None for empty profiles."""
        if self.items.shape[1] == 0:
            return None
        items = torch.from_numpy(self.items[rows]).to(device)
        return items, torch.from_numpy(self.features[rows]).to(device)

    @classmethod
    def empty(cls, rows: int, size: int) -> Profiles:
        return cls(
            np.zeros((rows, size), dtype=np.int64),
            np.zeros((rows, size, N_FEATURES), dtype=np.float32),
        )


def build_profiles(
    items: np.ndarray,
    ts: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    size: int,
) -> Profiles:
    """Profiles of the plays ``items[starts[r]:ends[r]]``, aged up to the play at ``ends[r]``.

    Args:
        items, ts: a flat history array (int ``[E]`` tracks and int64 ``[E]`` seconds, time
            order within each slice).
        starts, ends: int64 ``[R]`` each row's plays before its window; ``ends[r]`` is the
            window's first play (its time is the reference; it must exist).
        size: ``F``, tracks per profile.
    """
    rows, out = len(starts), Profiles.empty(len(starts), size)
    lengths = np.asarray(ends, dtype=np.int64) - np.asarray(starts, dtype=np.int64)
    if size == 0 or lengths.sum() == 0:
        return out
    row = np.repeat(np.arange(rows), lengths)  # [E']
    pos = np.arange(len(row)) - np.repeat(np.cumsum(lengths) - lengths, lengths) + starts[row]
    track = np.asarray(items, dtype=np.int64)[pos]
    age = (np.asarray(ts)[np.asarray(ends)[row]] - np.asarray(ts)[pos]).astype(np.float64)
    base = int(track.max()) + 1
    # One (row, track) group per distinct key: sort, then sum each run of equal keys.
    key = row * base + track
    order = np.argsort(key)
    key = key[order]
    first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])  # [K] start of each group
    decays = [
        np.add.reduceat(np.exp(-age[order] / (d * SECONDS_PER_DAY)), first) for d in DECAYS_DAYS
    ]
    plays = np.diff(np.r_[first, len(key)]).astype(np.float64)
    key_row, key_track = key[first] // base, key[first] % base  # by row, then by track
    # Per row, the largest 30-day sum first; a stable sort keeps equal sums in track order.
    # Complex numbers sort by real part, then imaginary part: (row, -sum) in one stable pass.
    by_strength = np.argsort(key_row - 1j * decays[1], kind="stable")
    key_row = key_row[by_strength]
    col = np.arange(len(by_strength)) - np.searchsorted(key_row, key_row)
    keep = col < size
    chosen = by_strength[keep]
    out.items[key_row[keep], col[keep]] = key_track[chosen]
    feats = np.stack([*decays, plays], axis=1)[chosen]  # [K', 3]
    out.features[key_row[keep], col[keep]] = np.log1p(feats).astype(np.float32)
    return out


def query_profiles(
    histories: UserItems, users: np.ndarray, max_len: int, size: int, history: int
) -> Profiles:
    """Profiles of requests: each user's last ``history`` plays before its last ``max_len``."""
    users = np.asarray(users, dtype=np.int64)
    row_start, row_end = histories.indptr[users], histories.indptr[users + 1]
    window_start = np.maximum(row_start, row_end - max_len)
    has_window = row_end > row_start  # a user without plays has no window, no profile
    ends = np.where(has_window, window_start, row_start)
    starts = np.maximum(row_start, ends - history)
    return build_profiles(histories.items, histories.ts, starts, ends, size)


class LongTermBias(nn.Module):
    """The bonus ``b_lt`` of the module docstring.

    Args:
        d_model: width of the hidden states (for the propensity term).
        n_items: catalog size ``N`` (ids are ``0..N``), to build search keys.
    """

    def __init__(self, d_model: int, n_items: int):
        super().__init__()
        self.key_base = n_items + 1
        self.weights = nn.Linear(N_FEATURES, 1)
        self.propensity = nn.Linear(d_model, 1)
        for param in (*self.weights.parameters(), *self.propensity.parameters()):
            nn.init.zeros_(param)  # start as the plain retriever

    def lookup(
        self,
        profile_items: torch.Tensor,
        profile_features: torch.Tensor,
        ids: torch.Tensor,
        rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features ``[..., 3]`` of candidates ``ids`` in their row's profile, and bool ``[...]``
        whether they are in it.

        ``ids`` is ``[B, C]`` (row ``b``'s candidates), or any shape with ``rows`` of the same
        shape naming each candidate's row. One sort of the ``B * F`` profile keys serves all.
        """
        b, f = profile_items.shape
        if rows is None:
            rows = torch.arange(b, device=ids.device)[:, None].expand_as(ids)
        own = torch.arange(b, device=ids.device)[:, None]
        keys = (own * self.key_base + profile_items).reshape(-1)  # [B*F]
        sorted_keys, order = torch.sort(keys)
        # A sentinel above every key, so that every search result indexes something.
        sentinel = torch.full((1,), torch.iinfo(torch.int64).max, device=ids.device)
        sorted_keys = torch.cat([sorted_keys, sentinel])
        order = torch.cat([order, torch.zeros_like(order[:1])])
        query = (rows * self.key_base + ids.clamp(min=0)).reshape(-1)  # [Q]
        at = torch.searchsorted(sorted_keys, query)
        found = (sorted_keys[at] == query) & (ids.reshape(-1) > 0)
        feats = profile_features.reshape(b * f, -1)[order[at]]  # [Q, 3]
        return feats.reshape(*ids.shape, -1), found.reshape(ids.shape)

    def static(
        self,
        profile_items: torch.Tensor,
        profile_features: torch.Tensor,
        ids: torch.Tensor,
        rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``<w, f(j)> + c`` of candidates ``ids`` (0 outside the profile) and membership
        (``ids`` and ``rows`` as in :meth:`lookup`)."""
        feats, found = self.lookup(profile_items, profile_features, ids, rows)
        part = self.weights(feats.float()).squeeze(-1)  # [...]
        return torch.where(found, part, torch.zeros((), device=ids.device)), found

    def bias(
        self,
        profile_items: torch.Tensor,
        profile_features: torch.Tensor,
        hidden: torch.Tensor,
        ids: torch.Tensor,
    ) -> torch.Tensor:
        """``[B, C]`` bonus of candidates ``ids [B, C]`` for hidden states ``hidden [B, D]``."""
        part, found = self.static(profile_items, profile_features, ids)
        return part + self.propensity(hidden.float()) * found  # [B, C] + [B, 1] * [B, C]
