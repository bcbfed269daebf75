"""Repeat-aware scoring: a learned bonus for tracks the listener played inside the window.

In music most listening is re-listening, so a retriever that scores a track only by
``<u, v_j>`` must squeeze "the user loves this track" into a dot product, and usually loses to
the one-line "user's most played" baseline. The head therefore adds, for a candidate ``j`` that
occurs in the encoder's input window at or before position ``t``,

    b(t, j) = w_count[bucket(c_tj)] + w_recency[bucket(t - s_tj)] + <h_t, a>

where ``c_tj`` is how often ``j`` occurs in the window up to ``t``, ``s_tj`` its latest such
position, ``h_t`` the hidden state (the listener's current propensity to repeat) and ``a`` a
learned vector; ``b = 0`` for a track outside the window. The features are computed from the
same window in training and serving, so there is no train/serve skew, and causally: position
``t`` only sees inputs ``<= t``.

Cost: the window tables are ``[B, T, T]`` and a candidate is matched to the window by one sorted
search, so a step never builds a ``[B, T, M]`` comparison; the bias tensor has the shape of the
logits it is added to. The ``[B, T, T]`` lookup into the 56-entry weight table takes its gradient
through :class:`SmallTableLookup` (a weighted ``bincount``): the generic backward of an index,
an accumulating ``index_put_``, serializes millions of updates onto 56 rows and took 80% of a
training step on a GPU (docs/gpu.md).
"""

from __future__ import annotations

import torch
from torch import nn

from recmodel.retriever.batches import PAD

COUNT_EDGES = (1, 2, 3, 4, 6, 9, 16)  # bucket b holds counts in [edge[b-1], edge[b]); 0 = absent
RECENCY_EDGES = (1, 2, 4, 8, 16, 32)  # positions since the latest play: 0, 1, 2-3, ..., 32+


class SmallTableLookup(torch.autograd.Function):
    """``table[index]`` for a small 1-D ``table``, whose gradient is a weighted ``bincount``.

    The values equal plain indexing; the gradient equals its (sum over every position that read
    an entry), computed as a histogram, which stays fast when millions of positions share a few
    entries.
    """

    @staticmethod
    def forward(ctx, table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.size = table.shape[0]
        return table[index]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (index,) = ctx.saved_tensors
        sums = torch.bincount(index.reshape(-1), weights=grad.reshape(-1), minlength=ctx.size)
        return sums.to(grad.dtype), None


def small_table_lookup(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]``, through :class:`SmallTableLookup` where a gradient will be taken.

    A TorchScript trace (the serving export) records plain indexing: it cannot hold a Python
    autograd function, and serving takes no gradient.
    """
    if table.requires_grad and torch.is_grad_enabled() and not torch.jit.is_tracing():
        return SmallTableLookup.apply(table, index)
    return table[index]


class RepeatBias(nn.Module):
    """The bonus ``b(t, j)`` of the module docstring, as a separate, small head.

    Args:
        d_model: width of the hidden states (for the propensity term).
        n_items: catalog size ``N`` (ids are ``0..N``), to build search keys.
    """

    def __init__(self, d_model: int, n_items: int):
        super().__init__()
        self.key_base = n_items + 1
        self.count = nn.Embedding(len(COUNT_EDGES) + 1, 1)  # row 0 (count 0) is never used
        self.recency = nn.Embedding(len(RECENCY_EDGES) + 1, 1)
        self.propensity = nn.Linear(d_model, 1)
        for param in (
            self.count.weight,
            self.recency.weight,
            self.propensity.weight,
            self.propensity.bias,
        ):
            nn.init.zeros_(param)  # start as the plain dot-product retriever
        self.register_buffer("count_edges", torch.tensor(COUNT_EDGES), persistent=False)
        self.register_buffer("recency_edges", torch.tensor(RECENCY_EDGES), persistent=False)

    def window_bias(self, inputs: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """``[B, T, T]``: bonus at position ``t`` of the item whose first occurrence is ``s``.

        Args:
            inputs: int64 ``[B, T]`` left-padded window.
            hidden: ``[B, T, D]`` hidden states (only the propensity term reads them).

        Entry ``[b, t, s]`` is 0 where the item at ``s`` has not occurred by ``t``.
        """
        t = inputs.shape[1]
        valid = inputs != PAD
        same = (inputs[:, :, None] == inputs[:, None, :]) & valid[:, :, None]  # [B, T(s'), T(s)]
        # Cumulating over s' makes both tables causal: position t only sees s' <= t.
        counts = torch.cumsum(same.to(torch.int32), dim=1)  # [B, T(t), T(s)]
        pos = torch.arange(t, device=inputs.device)
        stamped = torch.where(same, pos[None, :, None], -1)  # [B, T, T]
        latest = torch.cummax(stamped, dim=1).values  # [B, T(t), T(s)]
        since = (pos[None, :, None] - latest).clamp(min=0)
        # One gather from the [n_count x n_recency] table of summed weights instead of two
        # embedding lookups over [B, T, T]: same parameters, a fraction of the backward cost.
        pair = (self.count.weight + self.recency.weight.T).reshape(-1)  # [n_count * n_recency]
        count_bucket = torch.bucketize(counts, self.count_edges, right=True)
        recency_bucket = torch.bucketize(since, self.recency_edges, right=True)
        index = count_bucket * self.recency.num_embeddings + recency_bucket  # [B, T, T]
        bonus = small_table_lookup(pair, index) + self.propensity(hidden.float())
        # [B, T, T] + [B, T, 1]
        return torch.where(counts > 0, bonus, torch.zeros((), device=inputs.device))

    def first_positions(self, inputs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """int64 ``[B, C]``: first window position of ``ids[b, c]`` in row ``b``, -1 if absent.

        Args:
            inputs: int64 ``[B, T]`` left-padded window.
            ids: int64 ``[B, C]`` candidates per row (ids < 1 are never found).
        """
        b, t = inputs.shape
        rows = torch.arange(b, device=inputs.device)[:, None]
        # Sort (row, item, position): the first occurrence of an item leads its run.
        keys = (rows * self.key_base + inputs) * t + torch.arange(t, device=inputs.device)
        flat = torch.sort(keys.reshape(-1)).values  # [B*T]
        item_keys = torch.div(flat, t, rounding_mode="floor")
        query = (rows * self.key_base + ids.clamp(min=0)).reshape(-1)  # [B*C]
        at = torch.searchsorted(item_keys, query).clamp(max=b * t - 1)
        found = (item_keys[at] == query) & (ids.reshape(-1) > PAD)
        first = torch.where(found, flat[at] % t, torch.full_like(query, -1))
        return first.reshape(ids.shape)

    def bias(self, inputs: torch.Tensor, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """``[B, T, C]`` bonus of the candidates ``ids [B, C]`` at every position."""
        b, t = inputs.shape
        every = torch.arange(b * t, device=inputs.device)
        return self.bias_at(inputs, hidden, ids, every).reshape(b, t, -1)

    def bias_at(
        self,
        inputs: torch.Tensor,
        hidden: torch.Tensor,
        ids: torch.Tensor,
        positions: torch.Tensor,
        table: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[P, C]`` bonus of the candidates ``ids [B, C]`` at flat ``positions [P]``.

        The positions are picked before the candidates are gathered, so the result never
        exceeds the size of the logits it is added to. ``table`` is :meth:`window_bias` when the
        caller already has it.
        """
        b, t = inputs.shape
        if table is None:
            table = self.window_bias(inputs, hidden)
        table = table.reshape(b * t, t)[positions]  # [B, T, T] -> [P, T]
        first = self.first_positions(inputs, ids)[torch.div(positions, t, rounding_mode="floor")]
        picked = torch.gather(table, 1, first.clamp(min=0))  # [P, C]
        return picked * (first >= 0)

    def diagonal_bias(
        self,
        inputs: torch.Tensor,
        hidden: torch.Tensor,
        ids: torch.Tensor,
        table: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[B, T]`` bonus of one candidate per position, ``ids [B, T]`` (the targets)."""
        if table is None:
            table = self.window_bias(inputs, hidden)  # [B, T, T]
        first = self.first_positions(inputs, ids)  # [B, T]
        picked = torch.gather(table, 2, first.clamp(min=0)[:, :, None]).squeeze(-1)  # [B, T]
        return picked * (first >= 0)

    def last_bias(
        self, inputs: torch.Tensor, hidden_last: torch.Tensor, ids: torch.Tensor
    ) -> torch.Tensor:
        """``[B, C]`` bonus at the last position (serving); ``hidden_last`` is ``[B, D]``."""
        hidden = hidden_last[:, None, :].expand(-1, inputs.shape[1], -1)  # [B, T, D]
        return self.bias(inputs, hidden, ids)[:, -1]
