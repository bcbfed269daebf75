"""SASRec-style retriever: a metadata-aware item tower, a causal encoder and a scoring head.

One :class:`ItemTower` makes both the encoder's input tokens and the output item vectors that
hidden states are scored against, so a track with few listens but a known artist, album or genre
still gets a meaningful vector. The encoder returns hidden states; scoring is a separate head,
shared by pretraining, finetuning, evaluation and serving.

Sequences are left-padded with item 0 (see :mod:`recmodel.retriever.batches`): the last column is the most
recent item and the user vector is the hidden state there.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recmodel.core.config import ModelConfig
from recmodel.core.dataset import ItemFeatures, UserItems
from recmodel.evaluation.topk import EMPTY, topk_chunked
from recmodel.retriever.batches import PAD, last_items
from recmodel.retriever.profile import LongTermBias, Profiles, query_profiles
from recmodel.retriever.repeat import RepeatBias
from recmodel.retriever.tower import ItemTower

MLP_RATIO = 4  # feed-forward width / d_model
POSITION_INIT_STD = 0.02  # small, so that item identity dominates the first steps


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention`` (fused kernels)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.dropout = cfg.n_heads, cfg.dropout
        # No bias: a key bias has an exactly zero gradient (softmax ignores a per-query constant)
        # and would only drift with rounding noise; the pre-norm LayerNorm already adds biases.
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """``x [B, T, D]``, ``allowed`` bool ``[B, 1, T, T]`` (True = may attend) -> ``[B, T, D]``."""
        b, t, d = x.shape
        # [B, T, 3D] -> 3 x [B, H, T, D/H]
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
        )  # [B, H, T, D/H]
        return self.out(y.transpose(1, 2).reshape(b, t, d))  # [B, H, T, D/H] -> [B, T, D]


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(LN(x))`` then ``x + mlp(LN(x))``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, MLP_RATIO * cfg.d_model),
            nn.GELU(),
            nn.Linear(MLP_RATIO * cfg.d_model, cfg.d_model),
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), allowed))
        return x + self.drop(self.mlp(self.norm2(x)))


class SasRecEncoder(nn.Module):
    """Causal transformer over left-padded token sequences; returns hidden states.

    Positions are right-aligned: the last column always uses position ``max_len - 1``, so a
    sequence cropped of leading padding gives the same hidden states. A query attends to itself
    and to earlier non-padding keys; padding queries see only themselves, which keeps every row
    of the attention softmax non-empty (no NaN, even for an all-padding sequence) while real
    positions never see padding.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.max_len = cfg.max_len
        self.positions = nn.Embedding(cfg.max_len, cfg.d_model)
        nn.init.normal_(self.positions.weight, std=POSITION_INIT_STD)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_blocks))
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``tokens [B, T, D]``, ``valid`` bool ``[B, T]`` (False = padding) -> ``[B, T, D]``."""
        b, t, _ = tokens.shape
        assert valid.shape == (b, t) and t <= self.max_len, (tokens.shape, valid.shape)
        pos = torch.arange(self.max_len - t, self.max_len, device=tokens.device)  # [T]
        x = self.drop(tokens + self.positions(pos))  # [B, T, D]
        allowed = attention_mask(valid)  # [B, 1, T, T]
        for block in self.blocks:
            x = block(x, allowed)
        return self.norm(x)


def attention_mask(valid: torch.Tensor) -> torch.Tensor:
    """bool ``[B, 1, T, T]``: query ``i`` may attend key ``j <= i`` if ``j`` is valid or ``i``."""
    t = valid.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=valid.device).tril()  # [T, T]
    own = torch.eye(t, dtype=torch.bool, device=valid.device)  # [T, T]
    return (causal & (valid[:, None, :] | own))[:, None]  # [B, T, T] -> [B, 1, T, T]


class ScoringHead(nn.Module):
    """Logits ``<u, v> / temperature``, on L2-normalized vectors when ``normalize``."""

    def __init__(self, normalize: bool, temperature: float):
        super().__init__()
        self.normalize, self.temperature = normalize, temperature

    def user_side(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., D]`` query vectors whose plain dot product with :meth:`item_side` is the logit."""
        hidden = F.normalize(hidden, dim=-1) if self.normalize else hidden
        return hidden / self.temperature

    def item_side(self, items: torch.Tensor) -> torch.Tensor:
        return F.normalize(items, dim=-1) if self.normalize else items

    def forward(self, hidden: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``hidden [P, D]`` x ``items [M, D]`` -> logits ``[P, M]``."""
        return self.user_side(hidden) @ self.item_side(items).T

    def pairwise(self, hidden: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``hidden [P, D]``, ``items [P, D]`` -> logits ``[P]`` of matching rows."""
        return (self.user_side(hidden) * self.item_side(items)).sum(-1)


class Retriever(nn.Module):
    """Item tower + causal encoder + scoring head."""

    def __init__(self, item_features: ItemFeatures, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tower = ItemTower(item_features, cfg)
        self.encoder = SasRecEncoder(cfg)
        self.head = ScoringHead(cfg.normalize, cfg.temperature)
        self.repeat = RepeatBias(cfg.d_model, item_features.n_items) if cfg.repeat_aware else None
        self.long_term = (
            LongTermBias(cfg.d_model, item_features.n_items) if cfg.profile_size > 0 else None
        )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Hidden states ``[B, T, D]`` of left-padded item ids ``[B, T]``."""
        assert inputs.dim() == 2, inputs.shape
        return self.encoder(self.tower(inputs), inputs != PAD)

    def encode(self, inputs: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states ``[B, T, D]`` of ``inputs [B, T]`` and item vectors ``[M, D]`` of ``ids [M]``.

        Equal to ``(self(inputs), self.item_vectors(ids))``, from one tower pass over the distinct
        ids of both: in training the targets are the inputs shifted by one and popular negatives
        recur, so most tracks of a step would otherwise go through the tower twice or more.
        """
        assert inputs.dim() == 2 and ids.dim() == 1, (inputs.shape, ids.shape)
        distinct, where = torch.unique(torch.cat([inputs.reshape(-1), ids]), return_inverse=True)
        vectors = self.tower(distinct)[where]  # [B*T + M, D]
        tokens = vectors[: inputs.numel()].view(*inputs.shape, -1)  # [B, T, D]
        return self.encoder(tokens, inputs != PAD), vectors[inputs.numel() :]

    def item_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        return self.tower(ids)

    def sparse_parameters(self) -> list[nn.Parameter]:
        """Weights that receive sparse gradients (the embedding tables of the tower)."""
        return [m.weight for m in self.modules() if isinstance(m, nn.Embedding) and m.sparse]

    def dense_parameters(self) -> list[nn.Parameter]:
        sparse = {id(p) for p in self.sparse_parameters()}
        return [p for p in self.parameters() if id(p) not in sparse]

    @property
    def device(self) -> torch.device:
        return self.tower.id_embedding.weight.device

    @torch.no_grad()
    def user_vectors(
        self,
        histories: UserItems,
        users: np.ndarray,
        device: torch.device | None = None,
        batch_size: int = 1_024,
    ) -> torch.Tensor:
        """``[U, D]`` hidden state after each user's last ``max_len`` items (float32, on device).

        A user with an empty history gets the state of an all-padding sequence (finite).
        """
        device = self.device if device is None else torch.device(device)
        was_training = self.training
        self.eval()
        try:
            out = []
            for i in range(0, len(users), batch_size):
                seq = last_items(histories, users[i : i + batch_size], self.cfg.max_len)
                out.append(self(torch.from_numpy(seq).to(device))[:, -1].float())  # [b, D]
        finally:
            self.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, self.cfg.d_model, device=device)

    @torch.no_grad()
    def recommend(
        self,
        histories: UserItems,
        users: np.ndarray,
        k: int,
        exclude: UserItems | None = None,
        chunk_items: int = 65_536,
        batch_size: int = 1_024,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items of the full catalog for each of ``users``.

        Args:
            histories: per-user history indexed by user (the queries).
            users: int64 ``[U]`` user indices.
            k: items per user.
            exclude: optional items never to return, row ``i`` for ``users[i]``.
            chunk_items: catalog chunk of the top-k scan.
            batch_size: users encoded at once.

        Returns:
            ``(ids int64 [U, k], scores float32 [U, k])``, scores being the head's logits.
        """
        users = np.asarray(users, dtype=np.int64)
        hidden = self.user_vectors(histories, users, batch_size=batch_size)  # [U, D]
        queries = self.head.user_side(hidden)
        items = self.head.item_side(self.tower.all_item_vectors(chunk=chunk_items))  # [N + 1, D]
        if (self.repeat is None and self.long_term is None) or exclude is not None:
            # With the seen-item filter every window and profile track is excluded: no bonus
            # can apply.
            return topk_chunked(queries, items, k, chunk_items=chunk_items, exclude=exclude)
        # Exact top-k of <u, v> + bonuses: a bonus only moves window and profile tracks, so the
        # answer lies in the top-(k + T + F) by dot product together with those tracks.
        extra = self.cfg.max_len + self.cfg.profile_size
        ids, _ = topk_chunked(queries, items, k + extra, chunk_items=chunk_items)
        profiles = self.profiles(histories, users)
        out_ids, out_scores = [], []
        for i in range(0, len(users), batch_size):
            rows = slice(i, i + batch_size)
            window = torch.from_numpy(last_items(histories, users[rows], self.cfg.max_len))
            window = window.to(queries.device)  # [b, T]
            profile = profiles.to_torch(rows, queries.device)
            cand = torch.cat([torch.from_numpy(ids[rows]).to(queries.device), window], dim=1)
            if profile is not None:
                cand = torch.cat([cand, profile[0]], dim=1)  # [b, k + T + T + F]
            top = self._rescore(queries[rows], hidden[rows], items, window, cand, k, profile)
            out_ids.append(top[0])
            out_scores.append(top[1])
        return np.concatenate(out_ids), np.concatenate(out_scores)

    def profiles(self, histories: UserItems, users: np.ndarray) -> Profiles:
        """Long-term profiles of ``users``' requests (empty ``[U, 0]`` without the profile)."""
        size = self.cfg.profile_size if self.long_term is not None else 0
        return query_profiles(histories, users, self.cfg.max_len, size, self.cfg.profile_history)

    def bonus(
        self,
        window: torch.Tensor,
        hidden: torch.Tensor,
        ids: torch.Tensor,
        profile: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``[B, C]`` bonus of candidates ``ids [B, C]`` at the last position of ``window [B, T]``:
        the repeat bonus and (given the request's ``profile``) the long-term one."""
        out = torch.zeros(ids.shape, device=ids.device)
        if self.repeat is not None:
            out = out + self.repeat.last_bias(window, hidden, ids)
        if self.long_term is not None and profile is not None:
            out = out + self.long_term.bias(profile[0], profile[1], hidden, ids)
        return out

    def candidate_logits(
        self,
        inputs: torch.Tensor,
        items: torch.Tensor,
        hidden: torch.Tensor | None = None,
        profile: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Last hidden state ``[B, D]`` and logits ``[B, C]`` of candidates ``items [B, C]``.

        The logits are what :meth:`recommend` ranks by: ``<u, v>`` plus the bonuses (the
        long-term one needs the requests' ``profile``: items ``[B, F]``, features
        ``[B, F, 3]``). ``hidden`` is ``self(inputs)`` (``[B, T, D]``) when the caller has it.
        """
        hidden = (self(inputs) if hidden is None else hidden)[:, -1]  # [B, T, D] -> [B, D]
        vectors = self.head.item_side(self.item_vectors(items))  # [B, C, D]
        logits = torch.einsum("bd,bcd->bc", self.head.user_side(hidden), vectors)
        return hidden, logits + self.bonus(inputs, hidden, items, profile)

    def _rescore(
        self,
        queries: torch.Tensor,
        hidden: torch.Tensor,
        items: torch.Tensor,
        window: torch.Tensor,
        cand: torch.Tensor,
        k: int,
        profile: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of candidates ``cand [b, C]`` by dot product plus the bonuses."""
        cand = cand.clamp(min=PAD)  # EMPTY slots become padding, masked below
        scores = torch.einsum("bd,bcd->bc", queries, items[cand])  # [b, C]
        scores = scores + self.bonus(window, hidden, cand, profile)
        ordered, order = torch.sort(cand, dim=1)
        duplicate = torch.zeros_like(cand, dtype=torch.bool)
        duplicate[:, 1:] = ordered[:, 1:] == ordered[:, :-1]  # keep one copy of each item
        masked = torch.zeros_like(duplicate).scatter(1, order, duplicate) | (cand == PAD)
        scores = scores.masked_fill(masked, float("-inf"))
        top_scores, at = torch.topk(scores, min(k, scores.shape[1]), dim=1)
        top_ids = torch.gather(cand, 1, at).masked_fill(torch.isinf(top_scores), EMPTY)
        return top_ids.cpu().numpy(), top_scores.float().cpu().numpy()
