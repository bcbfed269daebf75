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

from recmodel.core.columns import Columns

log = logging.getLogger(__name__)

SOURCES = ("serving", "finetune_checkpoint")  # the artifacts tried, in order


class ModelUnavailable(RuntimeError):
    """A run's retriever cannot be loaded: its files are gone, unreadable or do not fit."""


@dataclass(frozen=True)
class ServedModel:
    """A retriever as serving sees it.

    Attributes:
        encoder: ``forward(window int64 [B, T]) -> [B, D]`` query vectors and
            ``score(window [B, T], candidates int64 [B, C]) -> [B, C]`` logits.
        item_vectors: float32 ``[N + 1, D]``, row ``item_idx`` (row 0 padding).
        item_ids: ``item_idx`` (``1..N``), ``item_id`` of its catalog.
        max_len: window length.
        repeat_aware: ``score`` adds a repeat bonus to window tracks (rescore candidates).
        source: where it came from (``serving`` export or ``finetune_checkpoint``).
    """

    encoder: Any
    item_vectors: np.ndarray
    item_ids: pa.Table
    max_len: int
    repeat_aware: bool
    source: str

    @property
    def n_items(self) -> int:
        return self.item_vectors.shape[0] - 1


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
    return ServedModel(encoder, vectors, ids, int(manifest["max_len"]), repeat, "serving")


def _from_checkpoint(artifact: Callable[[str], Any]) -> ServedModel:
    from recmodel.core.dataset_io import item_features
    from recmodel.core.tables import read_table
    from recmodel.retriever.checkpoint import load_retriever
    from recmodel.serving.export import QueryEncoder, item_vectors

    checkpoint, items = artifact("finetune_checkpoint"), read_table(artifact("tables")["items"])
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
    )
