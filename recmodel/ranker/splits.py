"""Where the ranker and the distillation may read data: window checks and user splits.

:func:`check_windows` asserts at run time what DESIGN.md §3 requires of the requests that the
ranker is trained on and that finetuning distills: labels only from the finetune window,
histories strictly before each request, validation and test events strictly after it.

Users are split deterministically by a splitmix64 hash of ``user_idx`` (:func:`hash_unit`),
independent of the order or number of users, in two independent ways:

- :func:`user_folds`: the ranker's cross-fitting folds.
- :func:`holdout_mask`: a fixed :data:`HOLDOUT_SHARE` of users kept out of every fit that the
  finetuned retriever depends on (the ranker's training rows and the finetuning requests); the
  distillation metrics are measured on their requests. The ranker still scores them, each with
  a model that never saw them.
"""

from __future__ import annotations

import numpy as np

from recmodel.core.columns import Window
from recmodel.core.dataset import Dataset

FOLD_SALT = 0x9E37_79B9  # hash salt of the ranker's user folds
HOLDOUT_SHARE = 0.2  # share of users kept out of ranker training and finetuning
HOLDOUT_SALT = 0xD157_111D  # hash salt of the hold-out split (independent of the folds)
_MIX = (0xBF58476D1CE4E5B9, 0x94D049BB133111EB)  # splitmix64 finalizer constants


class WindowLeakError(RuntimeError):
    """Data from a window that a stage must not read reached it (DESIGN.md §3)."""


def check_windows(
    dataset: Dataset,
    users: np.ndarray,
    request_ts: np.ndarray,
    *,
    history_before: int = Window.FINETUNE,
    label_window: int = Window.FINETUNE,
) -> None:
    """Raise :class:`WindowLeakError` unless the requests' windows are disjoint as required.

    Labels (and finetuning targets) come only from the finetune window; histories only from
    windows before ``history_before <= label_window``; every history event is strictly before
    its request, and every validation and test event strictly after it. Label events before a
    request are not a leak (they are simply not labels: :func:`candidate_labels` drops them).

    Args:
        dataset: the events.
        users: int ``[R]`` user of each request.
        request_ts: int ``[R]`` request times.
        history_before: histories are the events of windows ``< history_before``.
        label_window: the window labels (or finetuning targets) are read from.
    """
    if label_window != Window.FINETUNE:
        raise WindowLeakError(
            f"labels must come from the finetune window ({Window.FINETUNE}), "
            f"not window {label_window} ({Window.NAMES.get(label_window)})"
        )
    if history_before > label_window:
        raise WindowLeakError(
            f"histories before window {history_before} include the label "
            f"window {label_window}: labels would leak into features"
        )
    users = np.asarray(users, dtype=np.int64)
    request_ts = np.asarray(request_ts, dtype=np.int64)
    history_end = _user_ts_bound(dataset, dataset.window < history_before, "last")[users]
    heldout_start = _user_ts_bound(dataset, dataset.window >= Window.VAL, "first")[users]
    for bound, bad, what in (
        (
            history_end,
            (history_end >= 0) & (history_end >= request_ts),
            "a history event at or after",
        ),
        (
            heldout_start,
            (heldout_start >= 0) & (heldout_start <= request_ts),
            "a validation/test event at or before",
        ),
    ):
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise WindowLeakError(
                f"{int(bad.sum())} requests have {what} the request time "
                f"(user {users[r]}: event at {bound[r]}, request at "
                f"{request_ts[r]})"
            )


def _user_ts_bound(dataset: Dataset, mask: np.ndarray, which: str) -> np.ndarray:
    """int64 ``[U]``: each user's first or last event time within ``mask`` (-1 where none)."""
    users, ts = dataset.user_idx[mask].astype(np.int64), dataset.ts[mask]
    out = np.full(dataset.n_users, -1, dtype=np.int64)
    if len(users) == 0:
        return out
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])  # runs of one user
    reduce = np.minimum if which == "first" else np.maximum
    values = reduce.reduceat(ts, starts)
    if which == "first":
        out[:] = np.iinfo(np.int64).max
        np.minimum.at(out, users[starts], values)
        return np.where(out == np.iinfo(np.int64).max, -1, out)
    np.maximum.at(out, users[starts], values)
    return out


def hash_unit(users: np.ndarray, salt: int) -> np.ndarray:
    """float64 ``[N]`` in ``[0, 1)``: a deterministic, well-mixed hash of each user index."""
    x = np.asarray(users, dtype=np.uint64) + np.uint64(salt)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps by design
        x = (x ^ (x >> np.uint64(30))) * np.uint64(_MIX[0])
        x = (x ^ (x >> np.uint64(27))) * np.uint64(_MIX[1])
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def user_folds(users: np.ndarray, n_folds: int, seed: int = 0) -> np.ndarray:
    """int64 ``[N]``: the cross-fitting fold of each user (a hash of ``user_idx`` and ``seed``)."""
    if n_folds < 2:
        raise ValueError(f"cross-fitting needs ranker.n_folds >= 2, got {n_folds}")
    return np.floor(hash_unit(users, FOLD_SALT + seed) * n_folds).astype(np.int64)


def holdout_mask(users: np.ndarray) -> np.ndarray:
    """bool ``[N]``: the users held out for the distillation metrics (module docstring)."""
    return hash_unit(users, HOLDOUT_SALT) < HOLDOUT_SHARE
