"""Finetuning: distill the ranker into the retriever with the pairwise logit loss (DESIGN.md §1.5).

For each request (a user at its time in the finetune window, with the ranker's scored
candidates) the query is the user's last ``max_len`` events before the finetune window; the
retriever's logits ``z [R, C]`` of the candidates are pushed towards the ranker's order ``r``::

    L = pairwise_logit_loss(z, r, mask, weighting) + softmax_weight * L_next_item

``L_next_item`` is the pretraining objective itself
(:func:`recmodel.retriever.objective.next_item_loss`: the served logit with its repeat bonus,
the configured negatives, Q and logQ mode) at the request's position, on one of the request's
finetune-window listens drawn at random each step; it keeps the full-catalog retrieval
geometry that the pairwise term alone, which only sees candidates, does not constrain. Both
terms score from one pass of the encoder.

The run starts from the pretrained weights with the finetune learning rates and the optimizers
of pretraining (:func:`recmodel.retriever.optim.build_optimizer`). Epoch 0 is the starting
model's validation score (the same evaluation as pretraining) and early stopping
(:class:`recmodel.retriever.fitting.EarlyStopping`) keeps the best epoch, so finetuning never
returns a model that validates worse than the one it started from. Losses are watched by the
trainer's :class:`~recmodel.retriever.progress.TrainingMonitor`. Requests of held-out users
(:mod:`recmodel.distill.requests`) are not trained on; the pairwise agreement on them is
recorded every epoch. One process (no data parallelism): the request set is small. Each
request's query, profile and targets are read once
(:func:`recmodel.distill.requests.request_inputs`, one user shard at a time when the run's
events stay on disk), so the run holds those, not the histories.
"""

from __future__ import annotations

import copy
import logging
import math
import time

import numpy as np
import pyarrow as pa
import torch

from recmodel.core.config import EvalConfig, FinetuneConfig, QConfig, TrainConfig
from recmodel.core.dataset import Dataset
from recmodel.core.user_shards import UserShards
from recmodel.distill.requests import (
    RequestInputs,
    Requests,
    heldout_agreement,
    holdout_mask,
    pair_agreement,
    request_inputs,
    requests_from_scores,
)
from recmodel.retriever.checkpoint import load_state, model_config_dict, state_bytes
from recmodel.retriever.distributed import DistContext, resolve_device
from recmodel.retriever.fitting import EarlyStopping, TrainResult
from recmodel.retriever.losses import pairwise_logit_loss
from recmodel.retriever.model import Retriever
from recmodel.retriever.objective import CandidateSampler, DeviceBatch, next_item_loss
from recmodel.retriever.optim import build_optimizer
from recmodel.retriever.progress import ProgressFn, TrainingMonitor, format_record
from recmodel.retriever.validation import VAL_METRIC, evaluate_retriever, validation_set_of

logger = logging.getLogger(__name__)

WARMUP_SHARE = 0.1  # warm-up is at most this share of the run: the weights are already trained


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
        progress: receives the monitor's step records and each epoch's history record.

    Returns:
        :class:`recmodel.retriever.fitting.TrainResult`; ``history[0]`` is the starting model.

    Raises:
        recmodel.retriever.progress.TrainingError: the loss became NaN or infinite.
    """
    requests = requests_from_scores(ranker_scores)
    held = holdout_mask(requests.users)
    if held.all():
        raise ValueError(
            f"no finetuning requests: {len(requests)} requests in ranker_scores, "
            "all of held-out users"
        )
    if isinstance(device, str):
        device = resolve_device(device)
    inputs = request_inputs(dataset, requests, retriever)  # checks the requests' windows
    split = [(requests.take(rows), inputs.take(rows)) for rows in _split_rows(held)]
    run = _Finetune(retriever, dataset, split, (cfg, train_cfg, cfg_eval), device)
    run.candidates = CandidateSampler.from_config(item_counts_for_q, train_cfg, cfg_q).to(device)
    run.monitor = TrainingMonitor(DistContext(device=device), run.total, run.steps, progress)
    return run.fit(progress)


def _split_rows(held: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows ``(finetuned on, held out)`` of the requests (:func:`holdout_mask`)."""
    return np.flatnonzero(~held), np.flatnonzero(held)


class _Finetune:
    """State of one finetuning run (its negatives and monitor are set by the caller)."""

    candidates: CandidateSampler
    monitor: TrainingMonitor

    def __init__(
        self,
        retriever: Retriever,
        dataset: Dataset | UserShards,
        requests: list[tuple[Requests, RequestInputs]],
        configs: tuple[FinetuneConfig, TrainConfig, EvalConfig],
        device: torch.device,
    ):
        cfg, train_cfg, self.cfg_eval = configs
        read = retriever.cfg.max_len + retriever.cfg.profile_history  # the plays a query reads
        self.valset = validation_set_of(dataset, train_cfg, self.cfg_eval, read)
        self.cfg, self.train_cfg, self.device = cfg, train_cfg, device
        self.start = time.perf_counter()
        torch.manual_seed(train_cfg.seed)  # dropout
        self.model = copy.deepcopy(retriever).to(device)
        self.model_config = model_config_dict(retriever.cfg, dataset.items)
        # (finetuned on, held out for the metrics), each with its queries and targets
        (self.train, self.inputs), (self.held_out, self.held_inputs) = requests
        self.steps = math.ceil(len(self.train) / cfg.batch_size)
        self.total = cfg.epochs * self.steps
        self.optimizer = build_optimizer(
            self.model,
            lr=cfg.lr,
            sparse_lr=cfg.sparse_lr,
            weight_decay=train_cfg.weight_decay,
            warmup_steps=min(train_cfg.warmup_steps, int(WARMUP_SHARE * self.total)),
            total_steps=self.total,
            grad_clip=train_cfg.grad_clip,
            fused=device.type == "cuda",
        )
        self.generator = torch.Generator(device=device).manual_seed(train_cfg.seed)
        logger.info(
            "finetuning on %d requests (%d held out), %d steps/epoch, %s",
            len(self.train),
            len(self.held_out),
            self.steps,
            device,
        )

    def fit(self, progress: ProgressFn | None) -> TrainResult:
        """Epoch 0 (the start), then up to ``cfg.epochs`` epochs; keeps the best validated."""
        history = [{"epoch": 0, **self._evaluate()}]
        best = EarlyStopping(self.cfg.patience)
        best.update(0, history[0].get(VAL_METRIC, math.nan))
        best.state = state_bytes(self.model, self.model_config)
        for epoch in range(1, self.cfg.epochs + 1):
            record = {"epoch": epoch, **self._train_epoch(epoch), **self._evaluate()}
            history.append(record)
            logger.info("finetune epoch %d: %s", epoch, format_record(record))
            if progress is not None:
                progress(record)
            if best.update(epoch, record.get(VAL_METRIC, math.nan)):
                best.state = state_bytes(self.model, self.model_config)
            elif best.stop:
                break
        if best.epoch != history[-1]["epoch"]:
            self.model.load_state_dict(load_state(best.state))
        seconds = time.perf_counter() - self.start
        return TrainResult(
            self.model.eval(), history, best.epoch, seconds, best.state, self.model_config
        )

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        self.monitor.start_epoch()
        rng = np.random.default_rng([self.train_cfg.seed, epoch])
        order = rng.permutation(len(self.train))
        # pairwise loss, next-item loss, agreeing pairs, pairs: summed on the device and read
        # once per epoch (no synchronization per step); the total loss goes to the monitor.
        sums = torch.zeros(4, device=self.device)
        for batch, i in enumerate(range(0, len(order), self.cfg.batch_size)):
            rows = order[i : i + self.cfg.batch_size]
            requests = self.train.take(rows)
            loss, parts = self._step(rows, requests, self._positives(rows, rng))
            sums += parts
            self.monitor.record(loss, epoch, batch, len(rows), _describe(requests))
        pair, softmax, agree, pairs = sums.tolist()
        record = self.monitor.end_epoch()
        return {
            **record,
            "pair_loss": pair / self.steps,
            "softmax_loss": softmax / self.steps,
            "agreement": agree / max(pairs, 1.0),
        }

    def _positives(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """int64 ``[B]``: one random finetune-window listen per request (0 where none)."""
        targets = self.inputs.targets
        starts, counts = targets.indptr[rows], targets.lengths[rows]
        pick = starts + np.floor(rng.random(len(rows)) * counts).astype(np.int64)
        out = np.zeros(len(rows), dtype=np.int64)
        out[counts > 0] = targets.items[pick[counts > 0]]
        return out

    def _step(
        self, rows: np.ndarray, batch: Requests, positives: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on the training requests ``rows`` (``batch``): the loss and
        ``[pair, next-item, agreeing pairs, pairs]``."""
        put = lambda a: torch.from_numpy(a).to(self.device)  # noqa: E731
        queries = put(self.inputs.windows[rows])  # [B, T]
        profile = self.inputs.profiles.to_torch(rows, self.device)
        items, scores, mask = put(batch.items), put(batch.scores), put(batch.mask)
        self.optimizer.zero_grad()
        cuda = self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cuda):
            hidden = self.model(queries)  # [B, T, D]: one encoder pass for both terms
            _, logits = self.model.candidate_logits(queries, items, hidden, profile)  # [B, C]
        pair = pairwise_logit_loss(logits.float(), scores, mask, weighting=self.cfg.pair_weighting)
        softmax = torch.zeros((), device=self.device)
        if self.cfg.softmax_weight > 0:
            request = DeviceBatch.at_last_position(queries, put(positives), profile)
            softmax = next_item_loss(
                self.model, request, self.candidates, self.generator, self.train_cfg.logq, hidden
            )
        loss = pair + self.cfg.softmax_weight * softmax
        loss.backward()
        self.optimizer.step()
        agree, pairs = pair_agreement(logits.detach().float(), scores, mask)
        return loss.detach(), torch.stack([pair.detach(), softmax.detach(), agree, pairs])

    def _evaluate(self) -> dict[str, float]:
        start = time.perf_counter()
        out = {
            "heldout_agreement": heldout_agreement(
                self.model, self.held_inputs, self.held_out, self.device
            )
        }
        out.update(
            evaluate_retriever(self.model, self.valset, self.cfg_eval.ks, self.cfg_eval.chunk_items)
        )
        out["eval_seconds"] = time.perf_counter() - start
        return out


def _describe(requests: Requests):
    """A describer of a finetune batch for the monitor's error message."""
    return lambda: f"{len(requests)} requests of users {requests.users[:10].tolist()}"
