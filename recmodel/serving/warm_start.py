"""Warm start: a retrain begins from a previous run's weights, carried over to the new catalog.

Every extraction reassigns ``item_idx`` and the metadata codes (both are ordered by popularity,
``sql/08_item_vocab.sql``), so no row is copied by index:

- **Track ids**: a track in both catalogs (matched by its original ``item_id``) keeps its
  id-embedding row; a new track keeps the fresh row of the new model, so its vector comes from
  its metadata through the carried-over tables and projection; a dropped track is forgotten.
- **Metadata tables** (artist, album, genre, tempo bucket): a new code takes the row of the old
  code that the shared tracks carrying it had (the most common one; code 0, "unknown", keeps
  row 0). Equal cardinalities are not enough: codes are re-ranked by popularity every run. A
  code no shared track carries (a new artist) keeps its fresh row.
- **Everything else** (projection, encoder, repeat head, acoustic projection): copied where the
  shapes match; a tensor whose shape changed (a new model config) keeps its fresh init.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from recmodel.core.columns import Columns
from recmodel.core.dataset_io import CODE_COLUMNS
from recmodel.retriever.checkpoint import load_state
from recmodel.retriever.model import Retriever
from recmodel.retriever.tower import META_FIELDS
from recmodel.serving.catalog import item_mapping

log = logging.getLogger(__name__)

ID_KEY = "tower.id_embedding.weight"
META_KEY = "tower.meta_embeddings.{}.weight"
DEFAULT_ARTIFACT = "pretrain_checkpoint"  # the previous run's pretraining, before distillation
NO_WARM_START = ("", "none")


@dataclass(frozen=True)
class WarmStart:
    """A ``state_dict`` for the new model and what was carried over.

    Attributes:
        state: every tensor of ``new_model.state_dict()``, ready for ``load_state_dict(strict)``.
        summary: counts of known, new and dropped tracks, mapped codes per metadata field, and
            the dense tensors that kept their init (plain values: an artifact).
    """

    state: dict[str, torch.Tensor]
    summary: dict[str, Any]


def code_mapping(new_codes: np.ndarray, old_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int64 ``(new_code [M], old_code [M])``: each new code and the old code it inherits.

    Args:
        new_codes, old_codes: int ``[S]`` codes of the same shared tracks in each catalog.

    Code 0 ("unknown") maps to 0; a known code maps to the old code most of its tracks had
    (ties: the lower old code), never to or from "unknown".
    """
    known = (new_codes > 0) & (old_codes > 0)
    pairs = np.stack([new_codes[known], old_codes[known]], axis=1).astype(np.int64)  # [K, 2]
    uniq, counts = np.unique(pairs, axis=0, return_counts=True)  # [P, 2], [P]
    best = uniq[np.lexsort((uniq[:, 1], -counts, uniq[:, 0]))]  # by new code, most tracks
    first = np.ones(len(best), dtype=bool)
    first[1:] = best[1:, 0] != best[:-1, 0]
    return np.r_[0, best[first, 0]], np.r_[0, best[first, 1]]


def warm_start(
    old_checkpoint: dict[str, Any], old_items: pa.Table, new_model: Retriever, new_items: pa.Table
) -> WarmStart:
    """Carry ``old_checkpoint`` over to ``new_model``'s catalog (see the module docstring).

    Args:
        old_checkpoint: ``{"safetensors": bytes, "model_config": dict}`` of the previous run.
        old_items: the previous run's items: ``item_idx``, ``item_id`` and, for the metadata
            tables, its code columns (``artist_idx``, ...); a field without its column keeps
            the new model's init.
        new_model: the freshly initialized model of the new catalog (it is not modified).
        new_items: ``item_idx``, ``item_id`` of the new catalog.

    Raises:
        ValueError: an items table does not match its model's catalog size.
    """
    old_state = load_state(old_checkpoint["safetensors"])
    state = {name: t.detach().cpu().clone() for name, t in new_model.state_dict().items()}
    _check_catalog(old_items, int(old_checkpoint["model_config"]["n_items"]), "old")
    _check_catalog(new_items, new_model.tower.n_items, "new")
    new_idx, old_idx = item_mapping(old_items, new_items)
    summary: dict[str, Any] = {
        "known_items": len(new_idx),
        "new_items": new_model.tower.n_items - len(new_idx),
        "dropped_items": old_items.num_rows - len(new_idx),
        "ids_copied": _copy_rows(state, old_state, ID_KEY, new_idx, old_idx),
        "meta": {},
    }
    for field in new_model.tower.fields:  # the fields the new catalog has
        summary["meta"][field] = _carry_codes(
            state, old_state, field, new_model, old_items, new_idx, old_idx
        )
    meta_keys = {ID_KEY, *(META_KEY.format(f) for f in META_FIELDS)}
    summary["kept_init"] = _copy_dense(state, old_state, exclude=meta_keys)
    log.info(
        "warm start: %d known tracks, %d new, %d dropped; dense tensors kept at init: %s",
        summary["known_items"],
        summary["new_items"],
        summary["dropped_items"],
        summary["kept_init"] or "none",
    )
    return WarmStart(state, summary)


def warm_start_state(
    old_checkpoint: dict[str, Any], old_items: pa.Table, new_model: Retriever, new_items: pa.Table
) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of :func:`warm_start` (e.g. ``train.pretrain(init_state=...)``)."""
    return warm_start(old_checkpoint, old_items, new_model, new_items).state


def _check_catalog(items: pa.Table, n_items: int, which: str) -> None:
    idx = items.column(Columns.ITEM_IDX).to_numpy()
    if items.num_rows != n_items or not np.array_equal(np.sort(idx), np.arange(1, n_items + 1)):
        raise ValueError(
            f"the {which} items table must list item_idx exactly 1..{n_items} (its "
            f"model's catalog); it has {items.num_rows} rows"
        )


def _copy_rows(
    state: dict, old_state: dict, key: str, new_rows: np.ndarray, old_rows: np.ndarray
) -> bool:
    """``state[key][new_rows] = old_state[key][old_rows]`` when the row widths agree."""
    new, old = state[key], old_state.get(key)
    if old is None or old.shape[1:] != new.shape[1:]:
        log.warning("warm start: %s changed shape; every row keeps its init", key)
        return False
    if len(old_rows) and old_rows.max() >= old.shape[0]:
        raise ValueError(
            f"old items refer to row {old_rows.max()} of {key}, which has "
            f"{old.shape[0]} rows: the items table is not the checkpoint's"
        )
    new[torch.from_numpy(new_rows)] = old[torch.from_numpy(old_rows)].to(new.dtype)
    return True


def _carry_codes(
    state: dict,
    old_state: dict,
    field: str,
    new_model: Retriever,
    old_items: pa.Table,
    new_idx: np.ndarray,
    old_idx: np.ndarray,
) -> dict[str, Any]:
    """Copy one metadata table's rows through :func:`code_mapping`; return the counts."""
    column = CODE_COLUMNS[field]
    n_codes = new_model.tower.cardinalities[field] - 1  # known codes; 0 is "unknown"
    if column not in old_items.column_names:
        log.warning(
            "warm start: old items have no %s column; %s rows keep their init", column, field
        )
        return {"mapped_codes": 0, "new_codes": n_codes}
    old_by_idx = np.zeros(old_items.num_rows + 1, dtype=np.int64)  # [N_old + 1]
    old_by_idx[old_items.column(Columns.ITEM_IDX).to_numpy()] = old_items.column(column).to_numpy()
    new_by_idx = getattr(new_model.tower, f"{field}_codes").cpu().numpy()  # [N_new + 1]
    new_codes, old_codes = code_mapping(new_by_idx[new_idx], old_by_idx[old_idx])
    copied = _copy_rows(state, old_state, META_KEY.format(field), new_codes, old_codes)
    mapped = len(new_codes) - 1 if copied else 0
    return {"mapped_codes": mapped, "new_codes": n_codes - mapped}


def _copy_dense(state: dict, old_state: dict, exclude: set[str]) -> list[str]:
    """Copy every other tensor whose shape matches; return the names that kept their init."""
    kept = []
    for name, tensor in state.items():
        if name in exclude:
            continue
        old = old_state.get(name)
        if old is not None and old.shape == tensor.shape:
            tensor.copy_(old)
        else:
            kept.append(name)
    return kept


def find_warm_start_run(spec: str, flow_name: str) -> Any:
    """The run to warm-start from, or None for a cold start.

    Args:
        spec: ``""`` or ``"none"`` (cold start), ``"latest"`` (latest successful run),
            ``"champion"`` (current champion, see :mod:`recmodel.serving.champion`), a run id or a
            pathspec. ``latest`` and ``champion`` fall back to a cold start when no such run
            exists yet (the first production run).
        flow_name: the flow whose runs ``latest``, ``champion`` and bare ids refer to.

    Raises:
        ValueError: the named run did not finish successfully.
    """
    from recmodel.serving.champion import CHAMPION_TAG, resolve_run

    if spec.strip().lower() in NO_WARM_START:
        return None
    try:
        run = resolve_run(spec, flow_name)
    except LookupError:
        if spec not in ("latest", CHAMPION_TAG):
            raise
        log.warning("warm start %r: %s has no such run yet; starting cold", spec, flow_name)
        return None
    if not run.successful:
        raise ValueError(f"cannot warm-start from {run.pathspec}: the run did not succeed")
    return run


def warm_start_from_run(
    run: Any, new_model: Retriever, new_items: pa.Table, artifact: str = DEFAULT_ARTIFACT
) -> WarmStart:
    """:func:`warm_start` from a past run's checkpoint artifact and its ``items`` table."""
    from recmodel.core.tables import TableRef, load_artifact, read_table

    checkpoint = load_artifact(artifact, run)
    items_ref = TableRef.of(load_artifact("tables", run)["items"])
    wanted = [Columns.ITEM_IDX, Columns.ITEM, *CODE_COLUMNS.values()]
    old_items = read_table(items_ref, columns=[c for c in wanted if c in items_ref.columns])
    result = warm_start(checkpoint, old_items, new_model, new_items)
    return WarmStart(
        result.state, {**result.summary, "from_run": run.pathspec, "artifact": artifact}
    )
