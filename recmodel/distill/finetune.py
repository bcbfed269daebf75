"""Finetuning: distill the ranker into the retriever with the pairwise logit loss (DESIGN.md §1.5).

For each request (a user at its time in the finetune window, with the ranker's scored
candidates) the query is the user's last ``max_len`` events before the finetune window; the
retriever's logits ``z [R, C]`` of the candidates are pushed towards the ranker's order ``r``::

    L = pairwise_logit_loss(z, r, mask, weighting) + softmax_weight * L_next_item

``L_next_item`` is the pretraining objective (sampled softmax with logQ correction, same
negatives, Q and logQ mode) on one of the request's finetune-window listens, drawn at random
each step; it keeps the full-catalog retrieval geometry that the pairwise term alone, which only
sees candidates, does not constrain.

The run starts from the pretrained weights with the lower finetune learning rates and the
optimizers of pretraining (:func:`recmodel.retriever.optim.build_optimizer`). Epoch 0 is the starting
model's validation score (the same evaluation as pretraining) and the best epoch is kept, so
finetuning never returns a model that validates worse than the one it started from. Requests of
held-out users (:mod:`recmodel.distill.requests`) are not trained on; the pairwise agreement on them
is recorded every epoch. One process (no data parallelism): the request set is small.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from recmodel.core.columns import Window
from recmodel.core.config import EvalConfig, FinetuneConfig, QConfig, TrainConfig
from recmodel.core.dataset import Dataset
from recmodel.distill.requests import (
    Requests,
    heldout_agreement,
    pair_agreement,
    request_logits,
    request_targets,
    requests_from_scores,
    split_requests,
)
from recmodel.ranker.splits import check_windows
from recmodel.retriever.batches import last_items
from recmodel.retriever.checkpoint import load_state, model_config_dict, state_bytes
from recmodel.retriever.distributed import resolve_device
from recmodel.retriever.losses import pairwise_logit_loss, sampled_softmax_loss
from recmodel.retriever.model import Retriever
from recmodel.retriever.negatives import NegativeSampler
from recmodel.retriever.optim import build_optimizer
from recmodel.retriever.train import TrainResult
from recmodel.retriever.validation import (
    VAL_METRIC,
    ValidationSet,
    evaluate_retriever,
    validation_set,
)

logger = logging.getLogger(__name__)

WARMUP_SHARE = 0.1  # warm-up is at most this share of the run: the weights are already trained

ProgressFn = Callable[[dict[str, Any]], None]


def finetune_retriever(
    retriever: Retriever,
    dataset: Dataset,
    ranker_scores: pa.Table,
    cfg: FinetuneConfig,
    train_cfg: TrainConfig,
    item_counts_for_q: np.ndarray,
    cfg_q: QConfig,
    cfg_eval: EvalConfig,
    *,
    device: torch.device | str = "auto",
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Finetune a copy of ``retriever`` on the ranker's scores; ``retriever`` is not modified.

    Args:
        retriever: the pretrained model.
        dataset: the events (histories before the finetune window, validation window).
        ranker_scores: ``user_idx, item_idx, request_ts, score`` (built-in or imported).
        cfg: finetune settings (epochs, batch of requests, learning rates, weighting).
        train_cfg: pretraining settings reused here: seed, weight decay, warm-up, clipping,
            negatives, logQ mode and the validation sample.
        item_counts_for_q: int ``[N + 1]`` counts of the Q table (as in pretraining).
        cfg_q: the negative proposal.
        cfg_eval: validation cut-offs and catalog chunk.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or a torch device.
        progress: called after each epoch with its history record.

    Returns:
        :class:`recmodel.retriever.train.TrainResult`; ``history[0]`` is the starting model.
    """
    requests = requests_from_scores(ranker_scores)
    check_windows(dataset, requests.users, requests.request_ts)
    train, held_out = split_requests(requests)
    if len(train) == 0:
        raise ValueError(
            f"no finetuning requests: {len(requests)} requests in ranker_scores, "
            "all of held-out users"
        )
    if isinstance(device, str):
        device = resolve_device(device)
    sampler = NegativeSampler(
        item_counts_for_q, cfg_q.alpha, cfg_q.uniform_mix, cfg_q.smoothing
    ).to(device)
    valset = validation_set(dataset, train_cfg.eval_users, train_cfg.seed, cfg_eval.filter_seen)
    run = _Finetune(retriever, dataset, (train, held_out), (cfg, train_cfg, cfg_eval), device)
    return run.fit(sampler, valset, progress)


class _Finetune:
    """State of one finetuning run."""

    def __init__(
        self,
        retriever: Retriever,
        dataset: Dataset,
        requests: tuple[Requests, Requests],
        configs: tuple[FinetuneConfig, TrainConfig, EvalConfig],
        device: torch.device,
    ):
        cfg, train_cfg, self.cfg_eval = configs
        self.cfg, self.train_cfg, self.device = cfg, train_cfg, device
        self.start = time.perf_counter()
        torch.manual_seed(train_cfg.seed)  # dropout
        self.model = copy.deepcopy(retriever).to(device)
        self.model_config = model_config_dict(retriever.cfg, dataset.items)
        self.histories = dataset.history(Window.FINETUNE)
        self.train, self.held_out = requests  # (finetuned on, held out for the metrics)
        self.targets = request_targets(dataset, self.train)
        self.steps_per_epoch = math.ceil(len(self.train) / cfg.batch_size)
        total = cfg.epochs * self.steps_per_epoch
        self.optimizer = build_optimizer(
            self.model,
            lr=cfg.lr,
            sparse_lr=cfg.sparse_lr,
            weight_decay=train_cfg.weight_decay,
            warmup_steps=min(train_cfg.warmup_steps, int(WARMUP_SHARE * total)),
            total_steps=total,
            grad_clip=train_cfg.grad_clip,
            fused=device.type == "cuda",
        )
        self.generator = torch.Generator(device=device).manual_seed(train_cfg.seed)
        logger.info(
            "finetuning on %d requests (%d held out), %d steps/epoch, %s",
            len(self.train),
            len(self.held_out),
            self.steps_per_epoch,
            device,
        )

    def fit(
        self, sampler: NegativeSampler, valset: ValidationSet, progress: ProgressFn | None
    ) -> TrainResult:
        """Epoch 0 (the start), then up to ``cfg.epochs`` epochs; keeps the best validated."""
        self.sampler, self.valset = sampler, valset
        history = [{"epoch": 0, "loss": math.nan, **self._evaluate()}]
        best_epoch, best_score = 0, history[0].get(VAL_METRIC, math.nan)
        best_state, stale = state_bytes(self.model, self.model_config), 0
        for epoch in range(1, self.cfg.epochs + 1):
            record = {"epoch": epoch, **self._train_epoch(epoch), **self._evaluate()}
            history.append(record)
            logger.info("finetune epoch %d: %s", epoch, record)
            if progress is not None:
                progress(record)
            score = record.get(VAL_METRIC, math.nan)
            if math.isnan(score) or score > best_score:  # NaN: no validation users, keep last
                best_epoch, best_score, stale = epoch, score, 0
                best_state = state_bytes(self.model, self.model_config)
            else:
                stale += 1
                if stale >= self.cfg.patience:
                    break
        if best_epoch != len(history) - 1:
            self.model.load_state_dict(load_state(best_state))
        return TrainResult(
            self.model.eval(),
            history,
            best_epoch,
            time.perf_counter() - self.start,
            best_state,
            self.model_config,
        )

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        start = time.perf_counter()
        rng = np.random.default_rng([self.train_cfg.seed, epoch])
        order = rng.permutation(len(self.train))
        # loss, pairwise loss, softmax loss, agreeing pairs, pairs: summed on the device, read
        # once per epoch (no synchronization per step).
        sums = torch.zeros(5, device=self.device)
        for i in range(0, len(order), self.cfg.batch_size):
            rows = order[i : i + self.cfg.batch_size]
            sums += self._step(self.train.take(rows), self._positives(rows, rng))
        loss, pair, softmax, agree, pairs = sums.tolist()
        if not math.isfinite(loss):
            raise FloatingPointError(f"finetune loss became {loss} in epoch {epoch}")
        n = self.steps_per_epoch
        return {
            "loss": loss / n,
            "pair_loss": pair / n,
            "softmax_loss": softmax / n,
            "agreement": agree / max(pairs, 1.0),
            "seconds": time.perf_counter() - start,
        }

    def _ranker_side(self, batch: Requests) -> tuple[torch.Tensor, torch.Tensor]:
        put = lambda a: torch.from_numpy(a).to(self.device)  # noqa: E731
        return put(batch.scores), put(batch.mask)

    def _positives(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """int64 ``[B]``: one random finetune-window listen per request (0 where none)."""
        starts, counts = self.targets.indptr[rows], self.targets.lengths[rows]
        pick = starts + np.floor(rng.random(len(rows)) * counts).astype(np.int64)
        out = np.zeros(len(rows), dtype=np.int64)
        out[counts > 0] = self.targets.items[pick[counts > 0]]
        return out

    def _step(self, batch: Requests, positives: np.ndarray) -> torch.Tensor:
        """One optimizer step; returns ``[loss, pair, softmax, agreeing pairs, pairs]``."""
        queries = torch.from_numpy(
            last_items(self.histories, batch.users, self.model.cfg.max_len)
        ).to(self.device)
        items = torch.from_numpy(batch.items).to(self.device)
        scores, mask = self._ranker_side(batch)
        self.optimizer.zero_grad()
        with torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"
        ):
            hidden, logits = request_logits(self.model, queries, items)
        pair = pairwise_logit_loss(logits.float(), scores, mask, weighting=self.cfg.pair_weighting)
        softmax = torch.zeros((), device=self.device)
        if self.cfg.softmax_weight > 0:
            softmax = self._next_item_loss(hidden, torch.from_numpy(positives).to(self.device))
        loss = pair + self.cfg.softmax_weight * softmax
        loss.backward()
        self.optimizer.step()
        agree, pairs = pair_agreement(logits.detach().float(), scores, mask)
        return torch.stack([loss.detach(), pair.detach(), softmax.detach(), agree, pairs])

    def _next_item_loss(self, hidden: torch.Tensor, pos_ids: torch.Tensor) -> torch.Tensor:
        """Sampled softmax with logQ correction on the requests' targets (as in pretraining)."""
        neg_ids, neg_log_q = self.sampler.sample(self.train_cfg.n_negatives, self.generator)
        with torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"
        ):
            vectors = self.model.item_vectors(torch.cat([pos_ids, neg_ids]))  # [B + M, D]
            pos_logits = self.model.head.pairwise(hidden, vectors[: len(pos_ids)])  # [B]
            neg_logits = self.model.head(hidden, vectors[len(pos_ids) :])  # [B, M]
        return sampled_softmax_loss(
            pos_logits.float(),
            neg_logits.float(),
            pos_ids,
            neg_ids,
            self.sampler.log_q[pos_ids],
            neg_log_q,
            logq=self.train_cfg.logq,
        )

    def _evaluate(self) -> dict[str, float]:
        start = time.perf_counter()
        out = {
            "heldout_agreement": heldout_agreement(
                self.model, self.histories, self.held_out, self.device
            )
        }
        out.update(
            evaluate_retriever(self.model, self.valset, self.cfg_eval.ks, self.cfg_eval.chunk_items)
        )
        out["eval_seconds"] = time.perf_counter() - start
        return out
