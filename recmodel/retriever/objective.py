"""The next-item objective: sampled softmax over ``[positive | negatives]`` with logQ correction.

Negatives (``TrainConfig.negatives``):

- ``"shared"``: ``n_negatives`` ids drawn per step from the :class:`NegativeSampler` proposal and
  shared by every position; ``log Q`` is the proposal's.
- ``"in_batch"``: the targets of every position of the GLOBAL batch, duplicates kept (they are
  draws from the target frequency); ``log Q`` is :func:`frequency_log_q`. Each position's own
  target is among them and is masked as an accidental hit by the loss.
- ``"both"``: the two sets side by side. The candidates then come from the mixture of the two
  proposals weighted by their number of draws, and every candidate (positive included) is
  corrected by the log of that mixture probability (mixed negative sampling).

Every rank computes the same global in-batch and shared negatives (the batcher and the sampler's
generator are seeded identically), and its loss is the sum over its own positions divided by the
global number of positions. Summed over ranks, the gradients are those of the global batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from recmodel.core.config import QConfig, TrainConfig
from recmodel.retriever.batches import Step
from recmodel.retriever.losses import sampled_softmax_loss
from recmodel.retriever.negatives import NegativeSampler, frequency_log_q

NEGATIVE_MODES = ("shared", "in_batch", "both")


@dataclass(frozen=True)
class DeviceBatch:
    """One rank's training step on the device.

    Attributes:
        inputs: int64 ``[B, T]`` left-padded input items.
        positions: int64 ``[P]`` flat indices into ``[B * T]`` of the positions with a target.
        targets: int64 ``[P]`` the target item of each such position.
        global_targets: int64 ``[G]`` targets of the whole global batch (in-batch negatives).
        n_global: ``G``, the loss normalizer.
        profile: the rows' long-term profiles (items ``[B, F]``, features ``[B, F, 3]``), or
            None without them.
    """

    inputs: torch.Tensor
    positions: torch.Tensor
    targets: torch.Tensor
    global_targets: torch.Tensor
    n_global: int
    profile: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_step(cls, step: Step, device: torch.device) -> DeviceBatch:
        local = step.local
        targets = local.targets.reshape(-1)[local.positions]  # [P]

        def put(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a).to(device, non_blocking=True)

        profile = None
        if local.profile is not None:
            profile = (put(local.profile.items), put(local.profile.features))
        return cls(
            put(local.inputs),
            put(local.positions),
            put(targets),
            put(step.global_targets),
            step.n_global,
            profile,
        )

    @classmethod
    def at_last_position(
        cls,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        profile: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> DeviceBatch:
        """One target per row, predicted from the row's last position (a served request).

        Args:
            inputs: int64 ``[B, T]`` left-padded windows (the requests' queries).
            targets: int64 ``[B]`` the item each row should retrieve; 0 = none (row skipped).
            profile: the requests' long-term profiles, or None.
        """
        b, t = inputs.shape
        rows = torch.nonzero(targets > 0).flatten()  # [P]
        kept = targets[rows]
        return cls(inputs, rows * t + (t - 1), kept, kept, len(kept), profile)


class CandidateSampler:
    """Negatives of a step and the log Q of every candidate (see the module docstring).

    :meth:`from_config` builds the one every trainer uses from the Q table's counts.
    """

    def __init__(
        self,
        mode: str,
        n_negatives: int,
        sampler: NegativeSampler,
        counts: np.ndarray,
        smoothing: float,
    ):
        if mode not in NEGATIVE_MODES:
            raise ValueError(f"negatives must be one of {NEGATIVE_MODES}, got {mode!r}")
        self.mode, self.n_negatives, self.sampler = mode, n_negatives, sampler
        self.freq_log_q = frequency_log_q(counts, smoothing)  # [N + 1]

    @classmethod
    def from_config(
        cls, counts: np.ndarray, cfg_train: TrainConfig, cfg_q: QConfig
    ) -> CandidateSampler:
        """The negatives ``cfg_train`` asks for, drawn from the Q table's proposal ``cfg_q``."""
        sampler = NegativeSampler(counts, cfg_q.alpha, cfg_q.uniform_mix, cfg_q.smoothing)
        return cls(cfg_train.negatives, cfg_train.n_negatives, sampler, counts, cfg_q.smoothing)

    def to(self, device: torch.device) -> CandidateSampler:
        self.sampler.to(device)
        self.freq_log_q = self.freq_log_q.to(device)
        return self

    def draw(
        self, global_targets: torch.Tensor, pos_ids: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Negatives for one step.

        Args:
            global_targets: int64 ``[G]`` targets of the global batch.
            pos_ids: int64 ``[P]`` this rank's positives.
            generator: on the sampler's device; seeded identically on every rank.

        Returns:
            ``(neg_ids [M], neg_log_q [M], pos_log_q [P])``.
        """
        if self.mode == "in_batch":
            return global_targets, self.freq_log_q[global_targets], self.freq_log_q[pos_ids]
        shared, shared_log_q = self.sampler.sample(self.n_negatives, generator)  # [S], [S]
        if self.mode == "shared":
            return shared, shared_log_q, self.sampler.log_q[pos_ids]
        neg_ids = torch.cat([global_targets, shared])  # [G + S]
        n_in_batch = len(global_targets)
        return (
            neg_ids,
            self._mixture_log_q(neg_ids, n_in_batch),
            self._mixture_log_q(pos_ids, n_in_batch),
        )

    def _mixture_log_q(self, ids: torch.Tensor, n_in_batch: int) -> torch.Tensor:
        """log of ``(G q_freq(j) + S q_proposal(j)) / (G + S)`` for ids ``[*]``."""
        total = n_in_batch + self.n_negatives
        return torch.logaddexp(
            self.freq_log_q[ids] + math.log(n_in_batch / total),
            self.sampler.log_q[ids] + math.log(self.n_negatives / total),
        )


def repeat_bonus(
    model: torch.nn.Module, batch: DeviceBatch, hidden: torch.Tensor, neg_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Repeat bonus of the positives ``[P]`` and of the shared negatives ``[P, M]``."""
    b, t = batch.inputs.shape
    targets = torch.zeros(b * t, dtype=torch.long, device=hidden.device)
    targets[batch.positions] = batch.targets
    table = model.repeat.window_bias(batch.inputs, hidden)  # [B, T, T], shared by both
    pos = model.repeat.diagonal_bias(batch.inputs, hidden, targets.view(b, t), table)  # [B, T]
    shared = neg_ids[None, :].expand(b, -1)  # [M] -> [B, M]
    neg = model.repeat.bias_at(batch.inputs, hidden, shared, batch.positions, table)  # [P, M]
    return pos.reshape(-1)[batch.positions], neg


def long_term_bonus(
    long_term: torch.nn.Module, batch: DeviceBatch, h: torch.Tensor, neg_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Long-term bonus of the positives ``[P]`` and of the shared negatives ``[P, M]``.

    ``h`` is ``[P, D]``, the hidden state at each target position. A row's profile is the same
    for all its positions, so the negatives are looked up once per row.
    """
    items, features = batch.profile
    t = batch.inputs.shape[1]
    row = torch.div(batch.positions, t, rounding_mode="floor")  # [P] the row of each position
    propensity = long_term.propensity(h.float())  # [P, 1]
    pos_part, pos_found = long_term.static(items, features, batch.targets, rows=row)  # [P]
    pos = pos_part + propensity.squeeze(1) * pos_found  # [P]
    shared = neg_ids[None, :].expand(items.shape[0], -1)  # [M] -> [B, M]
    neg_part, neg_found = long_term.static(items, features, shared)  # [B, M]
    neg = neg_part[row] + propensity * neg_found[row]  # [P, M]
    return pos, neg


def window_targets(batch: DeviceBatch, neg_ids: torch.Tensor) -> torch.Tensor:
    """bool ``[P, M]``: negative ``m`` is a target at some position of position ``p``'s row.

    In music a listener's other next tracks in the same window are likely ones it would play
    here too: as negatives they push away what it likes (``TrainConfig.mask_window_targets``).
    """
    t = batch.inputs.shape[1]
    row = torch.div(batch.positions, t, rounding_mode="floor")  # [P]
    base = int(max(int(batch.targets.max()), int(neg_ids.max()))) + 1
    keys, _ = torch.sort(row * base + batch.targets)  # [P] (row, target) pairs
    n_rows = batch.inputs.shape[0]
    query = torch.arange(n_rows, device=row.device)[:, None] * base + neg_ids[None, :]  # [B, M]
    at = torch.searchsorted(keys, query.reshape(-1)).clamp(max=len(keys) - 1)
    member = (keys[at] == query.reshape(-1)).reshape(n_rows, -1) & (neg_ids[None, :] > 0)
    return member[row]  # [P, M]


def next_item_loss(
    model: torch.nn.Module,
    batch: DeviceBatch,
    candidates: CandidateSampler,
    generator: torch.Generator,
    logq: str,
    hidden: torch.Tensor | None = None,
    mask_window_targets: bool = False,
) -> torch.Tensor:
    """This rank's share of the global-batch sampled-softmax loss (a scalar).

    ``sum over local positions of L_i / n_global``; summed over ranks, the global-batch mean.
    The logits are the served ones: ``<u, v>`` plus the repeat bonus. Runs under bf16 autocast
    on CUDA; the loss itself is computed in float32.

    Args:
        model: the retriever.
        batch: inputs, target positions and targets (:class:`DeviceBatch`).
        candidates: draws the negatives and gives every candidate's log Q.
        generator: the negatives' random stream (on the candidates' device).
        logq: the correction mode (:func:`recmodel.retriever.losses.sampled_softmax_loss`).
        hidden: ``[B, T, D]`` hidden states of ``batch.inputs`` when the caller already has
            them (finetuning scores its candidates from the same pass); None encodes here.
        mask_window_targets: leave the row's other targets out of each position's negatives
            (:func:`window_targets`).
    """
    device = batch.inputs.device
    if batch.n_global == 0:
        return torch.zeros((), device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        neg_ids, neg_log_q, pos_log_q = candidates.draw(
            batch.global_targets, batch.targets, generator
        )
        n_pos = len(batch.targets)
        # vectors: [P + M, D] of the positives, then the negatives
        ids = torch.cat([batch.targets, neg_ids])
        if hidden is None:
            hidden, vectors = model.encode(batch.inputs, ids)
        else:
            vectors = model.item_vectors(ids)
        h = hidden.reshape(-1, hidden.shape[-1])[batch.positions]  # [B*T, D] -> [P, D]
        pos_logits = model.head.pairwise(h, vectors[:n_pos])  # [P]
        neg_logits = model.head(h, vectors[n_pos:])  # [P, M]
        if model.repeat is not None:
            pos_bias, neg_bias = repeat_bonus(model, batch, hidden, neg_ids)
            pos_logits, neg_logits = pos_logits + pos_bias, neg_logits + neg_bias
        if model.long_term is not None and batch.profile is not None:
            pos_bias, neg_bias = long_term_bonus(model.long_term, batch, h, neg_ids)
            pos_logits, neg_logits = pos_logits + pos_bias, neg_logits + neg_bias
    loss = sampled_softmax_loss(
        pos_logits.float(),
        neg_logits.float(),
        batch.targets,
        neg_ids,
        pos_log_q,
        neg_log_q,
        logq=logq,
        masked=window_targets(batch, neg_ids) if mask_window_targets else None,
    )
    return loss * (n_pos / batch.n_global)
