"""A past run's retriever as serving sees it: its export, or its checkpoint rebuilt.

The ``end`` step of every run exports the finetuned retriever (:mod:`recmodel.serving.export`);
that export is what serving loads, so it is what a later run compares itself with. A run whose
export cannot be read (deleted files, a changed file, an object store that is not reachable)
falls back to its ``finetune_checkpoint`` rebuilt on its own ``items`` table: the same weights
through this package's model code.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from recmodel.core.columns import Columns
from recmodel.core.dataset import UserItems
from recmodel.retriever.profile import Profiles, query_profiles

log = logging.getLogger(__name__)

SOURCES = ("serving", "finetune_checkpoint")  # the artifacts tried, in order


class ModelUnavailable(RuntimeError):
    """A run's retriever cannot be loaded: its files are gone, unreadable or do not fit."""


@dataclass(frozen=True)
class ServedModel:
    """A retriever as serving sees it.

    Attributes:
        encoder: ``forward(window int64 [B, T]) -> [B, D]`` query vectors and
            ``score(window [B, T], candidates int64 [B, C], profile_items [B, F],
            profile_features [B, F, 3]) -> [B, C]`` logits (exports written before the
            long-term profile: ``score(window, candidates)``).
        item_vectors: float32 ``[N + 1, D]``, row ``item_idx`` (row 0 padding).
        item_ids: ``item_idx`` (``1..N``), ``item_id`` of its catalog.
        max_len: window length.
        repeat_aware: ``score`` adds a repeat bonus to window tracks (rescore candidates).
        source: where it came from (``serving`` export or ``finetune_checkpoint``).
        profile: the long-term profile's ``size`` and ``history``
            (:mod:`recmodel.retriever.profile`); None for an export that predates it, whose
            ``score`` takes no profile.
    """

    encoder: Any
    item_vectors: np.ndarray
    item_ids: pa.Table
    max_len: int
    repeat_aware: bool
    source: str
    profile: dict[str, int] | None = None

    @property
    def n_items(self) -> int:
        return self.item_vectors.shape[0] - 1

    @property
    def profile_size(self) -> int:
        return 0 if self.profile is None else int(self.profile["size"])

    def profiles(self, histories: UserItems) -> Profiles:
        """Long-term profiles of every row of ``histories`` (``[U, 0]`` without a profile)."""
        history = 0 if self.profile is None else int(self.profile.get("history", 0))
        users = np.arange(histories.n_users)
        return query_profiles(histories, users, self.max_len, self.profile_size, max(history, 1))

    def score(
        self, window: torch.Tensor, candidates: torch.Tensor, profile: Profiles, rows: np.ndarray
    ) -> torch.Tensor:
        """Logits ``[b, C]`` of ``candidates`` for ``window`` with the ``rows`` of ``profile``."""
        if self.profile is None:
            return self.encoder.score(window, candidates)
        items = torch.from_numpy(profile.items[rows])
        return self.encoder.score(
            window, candidates, items, torch.from_numpy(profile.features[rows])
        )


def load_served(artifact: Callable[[str], Any]) -> ServedModel:
    """A run's served retriever from its artifacts: the export, else the checkpoint.

    Args:
        artifact: artifact name -> its value in the run (a ``TableRef`` as it is).

    Raises:
        ModelUnavailable: neither the export nor the checkpoint can be loaded; the message
            says why for each (the cause is logged with its traceback).
    """
    errors = []
    for source, load in zip(SOURCES, (_from_export, _from_checkpoint), strict=True):
        try:
            return load(artifact)
        except Exception as exc:  # any failure is reported in the decision, none is hidden
            log.warning("%s cannot be loaded: %s", source, exc, exc_info=True)
            errors.append(f"{source}: {type(exc).__name__}: {exc}")
    raise ModelUnavailable("; ".join(errors))


def _from_export(artifact: Callable[[str], Any]) -> ServedModel:
    from recmodel.serving.bundle import MANIFEST
    from recmodel.serving.export import load_export

    files = artifact("serving")["files"]
    if "://" not in files[MANIFEST]:
        exported = load_export(Path(files[MANIFEST]).parent)
    else:  # an object store: the files are fetched and verified like a local export
        import pyarrow.fs as pafs

        with tempfile.TemporaryDirectory(prefix="recmodel-champion-") as tmp:
            for name, uri in files.items():
                pafs.copy_files(uri, str(Path(tmp) / name))
            exported = load_export(tmp)
    vectors, ids, encoder, manifest = exported
    repeat = bool(
        manifest.get("repeat_aware", True)
    )  # absent: rescoring without a bonus changes nothing
    profile = manifest.get("profile")
    if profile is not None:
        profile = {"size": int(profile["size"]), "history": int(profile.get("history", 1))}
    return ServedModel(encoder, vectors, ids, int(manifest["max_len"]), repeat, "serving", profile)


def _from_checkpoint(artifact: Callable[[str], Any]) -> ServedModel:
    from recmodel.core.dataset_io import item_features
    from recmodel.core.files import load_checkpoint
    from recmodel.core.tables import read_table
    from recmodel.retriever.checkpoint import load_retriever
    from recmodel.serving.export import QueryEncoder, item_vectors

    # A reference to the weights' file, or the bytes of a run that stored them in the artifact.
    checkpoint = load_checkpoint(artifact("finetune_checkpoint"))
    items = read_table(artifact("tables")["items"])
    model = load_retriever(
        checkpoint["safetensors"], checkpoint["model_config"], item_features(items)
    )
    ids = items.select([Columns.ITEM_IDX, Columns.ITEM]).sort_by(Columns.ITEM_IDX)
    return ServedModel(
        QueryEncoder(model).eval(),
        item_vectors(model),
        ids,
        model.cfg.max_len,
        model.repeat is not None,
        "finetune_checkpoint",
        {
            "size": model.cfg.profile_size if model.long_term is not None else 0,
            "history": model.cfg.profile_history,
        },
    )
