"""Training losses: sampled softmax with logQ correction, full softmax, pairwise logit loss.

Pure tensor functions: they work on whatever device and dtype the inputs come in (bf16 included;
every log-sum-exp runs in float32) and never move data. Item index 0 is padding everywhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MASKED_LOGIT: float = -1.0e9
"""Logit given to candidates that must get zero probability (accidental hits, padding).

Finite on purpose: a row whose every negative is masked still has a finite log-sum-exp, so no
``inf - inf`` NaN appears. It sits far below any real corrected logit (``-log Q`` stays under 50
even for ``Q = 1e-20``), so ``exp(MASKED_LOGIT - max)`` is exactly 0 in float32.
"""

LOGQ_MODES = ("all", "none", "negatives_only")

# Upper bound on Q(positive) in log(1 - Q(positive)), so a one-item catalog gives no -inf.
_MAX_POSITIVE_Q = 1.0 - 1.0e-6


def sampled_softmax_loss(
    pos_logits: torch.Tensor,
    neg_logits: torch.Tensor,
    pos_ids: torch.Tensor,
    neg_ids: torch.Tensor,
    pos_log_q: torch.Tensor,
    neg_log_q: torch.Tensor,
    *,
    logq: str = "all",
    weights: torch.Tensor | None = None,
    masked: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sampled softmax over ``[positive | shared negatives]`` with a logQ correction.

    Steps: candidate logits ``[P, 1 + M]`` -> subtract ``log Q`` (per ``logq``) -> mask accidental
    hits (``neg_id == pos_id``) and padding negatives with :data:`MASKED_LOGIT` -> cross-entropy
    against column 0 -> weighted mean over valid positions. In-batch and mixed negatives use the
    same function: the caller concatenates the ids / log Q of every negative column.

    ``logq`` modes (``z`` logits, ``Q`` the probability of drawing the item as a negative):

    - ``"all"`` (Yi et al., RecSys 2019): ``z~_j = z_j - log Q(j)`` for the positive and every
      negative; loss ``-log softmax(z~)[0]``.
    - ``"none"``: no correction (the ``sasrec_no_logq`` baseline).
    - ``"negatives_only"`` (Khrylchenko et al., "Correcting the LogQ Correction", RecSys 2025,
      arXiv:2507.09331):
      the positive is always in the denominator, so it is not Monte-Carlo sampled and is not
      corrected; the negatives estimate the softmax mass of the *other* items. For position i
      with positive p and valid negatives S_i (K_i of them)::

          log Q'(j) = log Q(j) - log(1 - Q(p))           # proposal given "not the positive"
          s_i = logsumexp_{j in S_i} (z_ij - log Q'(j))
          P^_i = sigmoid(z_ip - s_i + log K_i)            # estimated full-softmax P(p)
          L_i = stopgrad(1 - P^_i) * (s_i - z_ip)

      Its gradient is ``(1 - P^)(-grad z_p + sum_j w_j grad z_j)`` with self-normalized
      importance weights ``w_j``: the full-softmax gradient ``(1 - P)(-grad z_p +
      E_{j ~ softmax over items != p} grad z_j)`` with both factors estimated. The weight
      ``1 - P^`` is the model's estimated probability of missing the positive. Only
      ``log(1 - Q(p))`` uses ``pos_log_q``; with mixed negatives from several proposals it is
      exact for the proposal ``pos_log_q`` comes from (each column's ``exp(z_j)/Q(j)`` is still
      an unbiased estimate of the remaining mass, whatever proposal it came from).

    Args:
        pos_logits: ``[P]`` positive logits.
        neg_logits: ``[P, M]`` logits of the ``M`` negatives shared by all positions.
        pos_ids: int ``[P]`` positive item ids; 0 marks a padding position (ignored).
        neg_ids: int ``[M]`` negative item ids; 0 marks a padding column (masked).
        pos_log_q: ``[P]`` log Q of the positives (ignored at padding positions).
        neg_log_q: ``[M]`` log Q of the negatives (ignored at padding columns).
        logq: ``"all"``, ``"none"`` or ``"negatives_only"``.
        weights: ``[P]`` per-position weights (0 for padding) or None for 1.
        masked: bool ``[P, M]`` more negatives to leave out, as accidental hits are (the other
            targets of the same window), or None.

    Returns:
        Scalar float32: ``sum_i w_i L_i / sum_i w_i`` over positions with ``pos_id != 0``;
        0 (attached to the graph) when no position is valid.
    """
    _check_sampled_shapes(pos_logits, neg_logits, pos_ids, neg_ids, pos_log_q, neg_log_q, logq)
    pos_z, neg_z = pos_logits.float(), neg_logits.float()  # bf16-safe: softmax math in fp32
    valid_pos = pos_ids != 0  # [P]
    valid_neg = (neg_ids[None, :] != pos_ids[:, None]) & (neg_ids[None, :] != 0)  # [P, M]
    if masked is not None:
        valid_neg = valid_neg & ~masked
    # Padding carries log Q = -inf; zero it where it is ignored so that no inf reaches a NaN.
    pos_lq = torch.where(valid_pos, pos_log_q.float(), 0.0)  # [P]
    neg_lq = torch.where(neg_ids != 0, neg_log_q.float(), 0.0)  # [M]
    if logq == "negatives_only":
        per_position = _negatives_only_loss(pos_z, neg_z, pos_lq, neg_lq, valid_neg)  # [P]
    else:
        if logq == "all":
            pos_z, neg_z = pos_z - pos_lq, neg_z - neg_lq[None, :]
        per_position = _candidate_cross_entropy(pos_z, neg_z, valid_neg)  # [P]
    return _weighted_mean(per_position, _position_weights(weights, valid_pos))


def _check_sampled_shapes(pos_logits, neg_logits, pos_ids, neg_ids, pos_log_q, neg_log_q, logq):
    if logq not in LOGQ_MODES:
        raise ValueError(f"logq must be one of {LOGQ_MODES}, got {logq!r}")
    n_pos, n_neg = pos_logits.shape[0], neg_ids.shape[0]
    expected = {
        "pos_logits": (pos_logits, (n_pos,)),
        "neg_logits": (neg_logits, (n_pos, n_neg)),
        "pos_ids": (pos_ids, (n_pos,)),
        "pos_log_q": (pos_log_q, (n_pos,)),
        "neg_log_q": (neg_log_q, (n_neg,)),
    }
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {list(shape)}, got {list(tensor.shape)}")


def _candidate_cross_entropy(
    pos_z: torch.Tensor, neg_z: torch.Tensor, valid_neg: torch.Tensor
) -> torch.Tensor:
    """float32 ``[P]``: ``-log softmax([pos | negatives])[0]`` with invalid negatives masked."""
    neg_z = torch.where(valid_neg, neg_z, MASKED_LOGIT)  # masked logits get zero gradient
    candidates = torch.cat([pos_z[:, None], neg_z], dim=1)  # [P, 1 + M]
    return torch.logsumexp(candidates, dim=1) - pos_z


def _negatives_only_loss(
    pos_z: torch.Tensor,
    neg_z: torch.Tensor,
    pos_lq: torch.Tensor,
    neg_lq: torch.Tensor,
    valid_neg: torch.Tensor,
) -> torch.Tensor:
    """float32 ``[P]``: the corrected logQ loss of Khrylchenko et al. (see the caller)."""
    log_not_pos = torch.log1p(-pos_lq.exp().clamp(max=_MAX_POSITIVE_Q))  # [P]: log(1 - Q(p))
    corrected = neg_z - neg_lq[None, :] + log_not_pos[:, None]  # [P, M]: z_j - log Q'(j)
    corrected = torch.where(valid_neg, corrected, MASKED_LOGIT)
    log_mass = torch.logsumexp(corrected, dim=1)  # [P]: s_i
    n_valid = valid_neg.sum(dim=1)  # [P]: K_i
    log_k = n_valid.clamp(min=1).float().log()
    miss_prob = torch.sigmoid(log_mass - log_k - pos_z).detach()  # [P]: 1 - P^_i
    # A position whose every negative was an accidental hit has nothing to learn from.
    miss_prob = torch.where(n_valid > 0, miss_prob, 0.0)
    return miss_prob * (log_mass - pos_z)


def _position_weights(weights: torch.Tensor | None, valid_pos: torch.Tensor) -> torch.Tensor:
    """float32 ``[P]``: the caller's weights (or 1), zero at padding positions."""
    base = torch.ones_like(valid_pos, dtype=torch.float32) if weights is None else weights.float()
    if base.shape != valid_pos.shape:
        raise ValueError(f"weights must have shape {list(valid_pos.shape)}, got {list(base.shape)}")
    return torch.where(valid_pos, base, 0.0)


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum(w * v) / sum(w)``; 0 with a graph when every weight is 0 (no NaN)."""
    weighted = torch.where(weights != 0, values * weights, 0.0)
    return weighted.sum() / weights.sum().clamp(min=torch.finfo(torch.float32).tiny)


def full_softmax_loss(
    logits: torch.Tensor, pos_ids: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy over the whole catalog (reference path for small catalogs and tests).

    Args:
        logits: ``[P, N + 1]`` logits of every item; column 0 (padding) is masked.
        pos_ids: int ``[P]`` target ids; 0 marks a padding position (ignored).
        weights: ``[P]`` per-position weights or None for 1.

    Returns:
        Scalar float32 weighted mean over valid positions (0 when none is valid).
    """
    if logits.dim() != 2 or logits.shape[0] != pos_ids.shape[0]:
        raise ValueError(
            f"logits must be [P, N + 1] with P = {pos_ids.shape[0]}, got {list(logits.shape)}"
        )
    z = logits.float()
    z = torch.cat([torch.full_like(z[:, :1], MASKED_LOGIT), z[:, 1:]], dim=1)  # [P, N + 1]
    # ignore_index: a padding target would otherwise hit the masked column 0 (loss ~1e9).
    per_position = F.cross_entropy(z, pos_ids.long(), reduction="none", ignore_index=0)  # [P]
    return _weighted_mean(per_position, _position_weights(weights, pos_ids != 0))


def pairwise_logit_loss(
    z: torch.Tensor,
    r: torch.Tensor,
    mask: torch.Tensor | None = None,
    weighting: str = "none",
) -> torch.Tensor:
    """Distill a ranker's order into retriever logits: ``log(1 + exp(-(z_i - z_j)))`` per pair.

    Every ordered pair ``(i, j)`` of valid candidates of one request with ``r_i > r_j`` is
    scored at once through an ``[R, C, C]`` difference matrix; ties (``r_i == r_j``) and
    invalid candidates make no pair.

    Weighting:
        ``"none"``: every pair weighs 1.
        ``"rank_gap"``: a pair weighs ``rank_r(j) - rank_r(i) >= 1``, where ``rank_r(x)`` is the
        number of valid candidates of the request that the ranker scores strictly above ``x``
        (ties share a rank). Pairs the ranker separates widely count more.

    Normalization: the weighted mean over all valid pairs of the batch,
    ``sum w * l / sum w`` (the plain mean over pairs for ``"none"``), so the scale does not
    depend on the number of candidates; requests with more pairs weigh more.

    Args:
        z: ``[R, C]`` retriever logits.
        r: ``[R, C]`` ranker scores.
        mask: bool ``[R, C]``, True for valid candidates; None means all are valid.
        weighting: ``"none"`` or ``"rank_gap"``.

    Returns:
        Scalar float32 loss; 0 (attached to the graph) when no valid pair exists.
    """
    if weighting not in ("none", "rank_gap"):
        raise ValueError(f"weighting must be 'none' or 'rank_gap', got {weighting!r}")
    if z.dim() != 2 or z.shape != r.shape or (mask is not None and mask.shape != z.shape):
        raise ValueError(
            f"z, r and mask must share one [R, C] shape, got {list(z.shape)}, "
            f"{list(r.shape)}, {None if mask is None else list(mask.shape)}"
        )
    valid = torch.ones_like(z, dtype=torch.bool) if mask is None else mask.bool()
    # Invalid candidates may hold -inf or padding scores: neutralize them before differencing.
    z = torch.where(valid, z.float(), 0.0)
    r = torch.where(valid, r.float(), 0.0)
    both_valid = valid[:, :, None] & valid[:, None, :]  # [R, C, C]
    ordered = (r[:, :, None] > r[:, None, :]) & both_valid  # [R, C, C]: r_i > r_j
    pair_loss = F.softplus(z[:, None, :] - z[:, :, None])  # [R, C, C]: log(1 + e^{-(z_i - z_j)})
    pair_weight = ordered.float()
    if weighting == "rank_gap":
        rank = _ranker_ranks(r, valid)  # [R, C]
        pair_weight = pair_weight * (rank[:, None, :] - rank[:, :, None])  # rank_j - rank_i
    return _weighted_mean(pair_loss, pair_weight)


def _ranker_ranks(r: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """float32 ``[R, C]``: how many valid candidates of the request score strictly higher."""
    higher = (r[:, None, :] > r[:, :, None]) & valid[:, None, :]  # [R, C, C]: r_k > r_x
    return higher.sum(dim=2).float()
