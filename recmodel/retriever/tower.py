"""The item tower: one vector per track from its id and whatever metadata it has.

The same tower makes the encoder's input tokens and the output vectors that hidden states are
scored against (:mod:`recmodel.retriever.model`), so a track with few listens but a known artist,
album or genre still gets a meaningful vector.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from recmodel.core.config import ModelConfig
from recmodel.core.dataset import ItemFeatures
from recmodel.retriever.batches import PAD

META_FIELDS = ("artist", "album", "genre", "tempo_bucket")  # categorical item metadata


def present_fields(item_features: ItemFeatures) -> list[str]:
    """The metadata fields with at least one known code (code 0 is "unknown")."""
    return [name for name in META_FIELDS if item_features.cardinalities[name] > 1]


class ItemTower(nn.Module):
    """Item vectors from the id and the metadata of each track.

    ``v_i = LayerNorm(W [e_id(i) | e_artist | e_album | e_genre | e_tempo | (A x_i + c) h_i] + b)``
    where ``x_i`` is the acoustic vector and ``h_i`` is 1 when it is known. Code 0 of every
    metadata table is "unknown" and has its own learned row; id row 0 (padding) is fixed at 0.

    Only the metadata the catalog has takes part: a field whose every code is "unknown" (a log
    without an items file, an items file with artist ids only) gets no table, and the acoustic
    projection exists only when some track has a vector. Without any metadata the tower is the
    id embedding alone.

    Every embedding table is sparse (``sparse=True``): the id, artist and album tables grow with
    the catalog and a step must only touch the rows it looked up. Metadata codes are
    non-persistent buffers: they move with ``.to(device)`` and are not part of a checkpoint.
    """

    def __init__(self, item_features: ItemFeatures, cfg: ModelConfig):
        super().__init__()
        self.n_items = item_features.n_items
        self.cardinalities = item_features.cardinalities
        self.id_embedding = nn.Embedding(self.n_items + 1, cfg.id_dim, padding_idx=PAD, sparse=True)
        self.fields = present_fields(item_features)
        self.meta_embeddings = nn.ModuleDict(
            {
                name: nn.Embedding(self.cardinalities[name], cfg.meta_dim, sparse=True)
                for name in self.fields
            }
        )
        for name in self.fields:
            codes = torch.as_tensor(np.asarray(getattr(item_features, name)), dtype=torch.int32)
            self.register_buffer(f"{name}_codes", codes, persistent=False)  # [N + 1]
        self.acoustic_dim = int(item_features.acoustic.shape[1])
        has_vectors = self.acoustic_dim > 0 and bool(np.any(item_features.has_acoustic))
        self.acoustic = nn.Linear(self.acoustic_dim, cfg.meta_dim) if has_vectors else None
        if self.acoustic is not None:
            known = np.asarray(item_features.has_acoustic, dtype=np.float32)[:, None]
            self.register_buffer(
                "acoustic_values",
                torch.as_tensor(np.asarray(item_features.acoustic, dtype=np.float32)),
                persistent=False,
            )
            self.register_buffer("acoustic_known", torch.as_tensor(known), persistent=False)
        n_parts = len(self.fields) + (self.acoustic is not None)
        self.proj = nn.Linear(cfg.id_dim + n_parts * cfg.meta_dim, cfg.d_model)
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Item vectors ``[..., D]`` of item ids ``[...]`` (0 = padding)."""
        parts = [self.id_embedding(ids)]  # [..., id_dim]
        for name in self.fields:
            codes = getattr(self, f"{name}_codes")[ids]  # [...]
            parts.append(self.meta_embeddings[name](codes))  # [..., meta_dim]
        if self.acoustic is not None:
            known = self.acoustic_known[ids]  # [..., 1]
            parts.append(self.acoustic(self.acoustic_values[ids]) * known)  # [..., meta_dim]
        return self.norm(self.proj(torch.cat(parts, dim=-1)))  # [..., D]

    def item_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """Alias of the forward pass: ``[...]`` ids -> ``[..., D]`` vectors."""
        return self(ids)

    @torch.no_grad()
    def all_item_vectors(self, chunk: int = 65_536) -> torch.Tensor:
        """``[N + 1, D]`` vectors of every item (row 0 = padding), computed ``chunk`` at a time."""
        device = self.id_embedding.weight.device
        out = [
            self(torch.arange(i, min(i + chunk, self.n_items + 1), device=device))
            for i in range(0, self.n_items + 1, chunk)
        ]
        return torch.cat(out).float()
