"""Serving exports of a trained retriever, and batch top-k for every active listener.

:func:`export_retriever` writes what an online service needs, loadable with ``torch`` and
``numpy`` alone (no code of this package):

- ``item_vectors.npy``: float32 ``[N + 1, D]``, the head's item side of every ``item_idx``
  (row 0 is padding and is never a candidate);
- ``item_ids.parquet``: ``item_idx``, ``item_id`` of the ``N`` tracks (original ids);
- ``query_encoder.pt``: TorchScript (``torch.jit.load``) with two methods,
  ``forward(window int64 [B, T]) -> float32 [B, D]`` query vectors and
  ``score(window [B, T], candidates int64 [B, C], profile_items int64 [B, F],
  profile_features float32 [B, F, 3]) -> float32 [B, C]`` logits: ``<q, v>`` plus the repeat
  bonus of the candidates in the window and the long-term bonus of those in the profile;
- ``manifest.json``: file names with their sha256, shapes, ``max_len``, the padding id and the
  recipe below. The directory is written whole or not at all (:mod:`recmodel.serving.bundle`),
  and :func:`load_export` checks every hash before use.

A request is served exactly as :meth:`Retriever.recommend` ranks: take the listener's last
``T <= max_len`` tracks as ``item_idx``, left-padded with 0, and its long-term profile (the
``manifest["profile"]`` recipe, :mod:`recmodel.retriever.profile`: the plays before the window,
up to ``F`` tracks with three features); ``q = forward(window)``; retrieve the top
``k + T + F`` items by ``q @ item_vectors.T`` (an ANN index in production) and add the
window's and the profile's tracks; ``score(window, candidates, profile_items,
profile_features)``; drop duplicates and padding; keep the top ``k``. A track outside the window
and the profile scores exactly its dot product and at most ``T + F`` tracks can move, so this
candidate set always holds the exact top ``k``.
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch import nn

from recmodel.core.columns import Columns
from recmodel.retriever.batches import PAD
from recmodel.retriever.model import Retriever
from recmodel.retriever.profile import DECAYS_DAYS, N_FEATURES
from recmodel.serving.bundle import MANIFEST, load_bundle, write_bundle

log = logging.getLogger(__name__)

ITEM_VECTORS = "item_vectors.npy"
ITEM_IDS = "item_ids.parquet"
QUERY_ENCODER = "query_encoder.pt"
EXAMPLE_CANDIDATES = 4  # candidates per row of the tracing example (any C works afterwards)
SERVING_RECIPE = (
    "window = last <= max_len item_idx, left-padded with 0; profile = the plays before it as "
    "manifest['profile'] says (F tracks, 0-padded); q = forward(window); candidates = top "
    "(k + T + F) of q @ item_vectors.T, plus the window's and the profile's items; logits = "
    "score(window, candidates, profile_items, profile_features); drop padding and "
    "duplicates; keep the top k"
)


class QueryEncoder(nn.Module):
    """The serving surface of a :class:`Retriever`: query vectors and candidate logits."""

    def __init__(self, model: Retriever):
        super().__init__()
        self.model = model

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        """int64 ``[B, T]`` left-padded window -> ``[B, D]`` query vectors (head's user side)."""
        return self.model.head.user_side(self.model(window)[:, -1])  # [B, T, D] -> [B, D]

    def score(
        self,
        window: torch.Tensor,
        candidates: torch.Tensor,
        profile_items: torch.Tensor,
        profile_features: torch.Tensor,
    ) -> torch.Tensor:
        """``window [B, T]``, ``candidates [B, C]``, the profile ``[B, F]`` and ``[B, F, 3]``
        -> logits ``[B, C]`` with the bonuses (a model without the profile ignores it)."""
        profile = (profile_items, profile_features)
        return self.model.candidate_logits(window, candidates, profile=profile)[1]


def trace_query_encoder(model: Retriever) -> torch.jit.ScriptModule:
    """A CPU TorchScript trace of :class:`QueryEncoder` (dropout off).

    Batch size, window length (up to ``max_len``) and candidate count stay dynamic: the model
    has no data-dependent Python branches, only shape asserts, which is what the tracer's
    warnings are about (the export test checks other shapes against the eager model).
    """
    cpu = model if model.device.type == "cpu" else copy.deepcopy(model).cpu()
    was_training = cpu.training
    cpu.eval()
    window, candidates, profile = _example_inputs(cpu)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            return torch.jit.trace_module(
                QueryEncoder(cpu),
                {"forward": (window,), "score": (window, candidates, *profile)},
                check_trace=False,
            )
    finally:
        cpu.train(was_training)


def _example_inputs(model: Retriever) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """A padded window with a repeated track, candidates in and out of it, and a profile."""
    t, n = model.cfg.max_len, model.tower.n_items
    ids = torch.arange(t, dtype=torch.int64) % n + 1  # [T], valid ids 1..N
    window = torch.stack(
        [ids, torch.cat([torch.zeros(t // 2, dtype=torch.int64), ids[: t - t // 2]])]
    )
    window[0, -1] = window[0, 0]  # a repeat, so the bonus path sees a count above 1
    candidates = torch.arange(EXAMPLE_CANDIDATES, dtype=torch.int64) % n + 1  # [C]
    f = max(model.cfg.profile_size, 1)
    profile_items = (torch.arange(f, dtype=torch.int64) % n + 1).expand(2, -1).contiguous()
    profile_features = torch.ones(2, f, N_FEATURES)
    # [2, T], [2, C], ([2, F], [2, F, 3])
    return window, candidates.expand(2, -1).contiguous(), (profile_items, profile_features)


def item_vectors(model: Retriever, chunk: int = 65_536) -> np.ndarray:
    """float32 ``[N + 1, D]``: the head's item side of every item (row 0 = padding)."""
    with torch.no_grad():
        vectors = model.head.item_side(model.tower.all_item_vectors(chunk=chunk))
    return vectors.float().cpu().numpy()


def export_retriever(model: Retriever, items: pa.Table, out_dir: str | Path) -> dict[str, Any]:
    """Write the serving files of the module docstring as one directory at ``out_dir``.

    The files are written and hashed beside ``out_dir`` and swapped in whole
    (:func:`recmodel.serving.bundle.write_bundle`); :func:`load_export` verifies them.

    Args:
        model: a trained retriever (any device; traced on a CPU copy).
        items: ``item_idx``, ``item_id`` of the model's catalog, ``item_idx`` exactly ``1..N``.
        out_dir: a new or empty directory, or an earlier export (replaced whole).

    Returns:
        The manifest (``files`` relative to ``out_dir``, so the directory can be copied
        anywhere; ``sha256`` of each; ``n_items``, ``dim``, ``max_len``, ``pad_id``, the recipe)
        with ``paths``: file name -> local path of every file, the manifest included.

    Raises:
        ValueError: ``items`` does not describe exactly the model's ``N`` tracks.
        recmodel.serving.bundle.BundleError: ``out_dir`` holds files that are not an export.
    """
    ids = _catalog_ids(items, model.tower.n_items)

    def write(staging: Path) -> dict[str, Any]:
        vectors = item_vectors(model)
        np.save(staging / ITEM_VECTORS, vectors)
        pq.write_table(ids, staging / ITEM_IDS)
        torch.jit.save(trace_query_encoder(model), str(staging / QUERY_ENCODER))
        return {
            "files": {"item_vectors": ITEM_VECTORS, "item_ids": ITEM_IDS, "encoder": QUERY_ENCODER},
            "n_items": model.tower.n_items,
            "dim": int(vectors.shape[1]),
            "max_len": model.cfg.max_len,
            "pad_id": PAD,
            "repeat_aware": model.repeat is not None,
            "profile": {
                "size": model.cfg.profile_size if model.long_term is not None else 0,
                "features": [f"log1p(sum exp(-age / {d:g} days))" for d in DECAYS_DAYS]
                + ["log1p(plays)"],
                "age": "seconds from a play to the window's first play",
                "history": model.cfg.profile_history,
                "plays": "the listener's last `history` plays before its last max_len, by track",
                "order": "largest 30-day sum first, then lower item_idx",
            },
            "torch_version": torch.__version__,
            "recipe": SERVING_RECIPE,
        }

    out = Path(out_dir)
    manifest = write_bundle(out, write)
    log.info(
        "exported %d item vectors of width %d and the query encoder to %s",
        manifest["n_items"],
        manifest["dim"],
        out,
    )
    names = (ITEM_VECTORS, ITEM_IDS, QUERY_ENCODER, MANIFEST)
    return {**manifest, "paths": {name: str(out / name) for name in names}}


def load_export(directory: str | Path) -> tuple[np.ndarray, pa.Table, Any, dict[str, Any]]:
    """``(item_vectors, item_ids, query_encoder, manifest)`` of an export, its hashes verified.

    Raises:
        recmodel.serving.bundle.BundleError: the export is incomplete or was changed.
    """
    manifest, paths = load_bundle(directory)
    vectors = np.load(paths["item_vectors"])
    encoder = torch.jit.load(str(paths["encoder"]))
    return vectors, pq.read_table(paths["item_ids"]), encoder, manifest


def export_checkpoint(
    checkpoint: dict[str, Any], items: pa.Table, out_dir: str | Path
) -> dict[str, Any]:
    """Rebuild a run's checkpoint artifact on its item table and export it.

    Args:
        checkpoint: ``{"safetensors": bytes, "model_config": dict}``, e.g. ``finetune_checkpoint``.
        items: the run's full ``items`` table (codes, acoustic vectors and original ids).
        out_dir: see :func:`export_retriever`.
    """
    from recmodel.core.dataset_io import item_features
    from recmodel.retriever.checkpoint import load_retriever

    model = load_retriever(
        checkpoint["safetensors"], checkpoint["model_config"], item_features(items)
    )
    return export_retriever(model, items, out_dir)


def _catalog_ids(items: pa.Table, n_items: int) -> pa.Table:
    """``item_idx`` (int32), ``item_id`` sorted by index, checked to be exactly ``1..N``."""
    table = items.select([Columns.ITEM_IDX, Columns.ITEM]).sort_by(Columns.ITEM_IDX)
    idx = table.column(Columns.ITEM_IDX).to_numpy()
    if not np.array_equal(idx, np.arange(1, n_items + 1)):
        raise ValueError(
            f"items must list item_idx exactly 1..{n_items} (the model's catalog); "
            f"got {table.num_rows} rows"
        )
    return table.set_column(0, Columns.ITEM_IDX, pc.cast(table.column(0), pa.int32()))
