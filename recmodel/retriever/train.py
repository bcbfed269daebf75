"""Pretraining of the retriever on next-item prediction (DESIGN.md §1, step 3).

:func:`pretrain` trains a :class:`Retriever` with sampled softmax and logQ correction
(:mod:`recmodel.retriever.objective`), AdamW + lazy sparse Adam (:mod:`recmodel.retriever.optim`), optional data
parallelism (:mod:`recmodel.retriever.distributed`), and early stopping on validation NDCG@10
(:mod:`recmodel.retriever.validation`). One seed fixes the initial weights, the window shuffle, the
negatives and the validation sample.

Progress reports and non-finite loss checks live in :mod:`recmodel.retriever.progress`.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import time
from typing import Any

import numpy as np
import torch

from recmodel.core.config import EvalConfig, ModelConfig, QConfig, TrainConfig
from recmodel.core.dataset import Dataset, ItemFeatures
from recmodel.core.user_shards import UserShards
from recmodel.retriever.batches import Step, WindowBatcher, make_windows, prefetched
from recmodel.retriever.checkpoint import load_state, model_config_dict, state_bytes
from recmodel.retriever.distributed import (
    DistContext,
    all_reduce_gradients,
    broadcast_object,
    broadcast_state,
    init_distributed,
    shutdown,
)
from recmodel.retriever.fitting import EarlyStopping, TrainResult
from recmodel.retriever.model import Retriever
from recmodel.retriever.objective import CandidateSampler, DeviceBatch, next_item_loss
from recmodel.retriever.optim import RetrieverOptimizer, build_optimizer
from recmodel.retriever.progress import ProgressFn, TrainingMonitor, format_record
from recmodel.retriever.shard_batches import ShardBatcher, gather_global_targets
from recmodel.retriever.train_state import TrainStateStore
from recmodel.retriever.validation import (
    VAL_METRIC,
    evaluate_retriever,
    validation_set_of,
)

logger = logging.getLogger(__name__)

USERS_IN_ERROR = 10  # users of a bad batch named in a TrainingError


def pretrain(
    dataset: Dataset | UserShards,
    item_counts_for_q: np.ndarray,
    cfg_model: ModelConfig,
    cfg_train: TrainConfig,
    cfg_q: QConfig,
    cfg_eval: EvalConfig,
    *,
    progress: ProgressFn | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
    state_store: TrainStateStore | None = None,
) -> TrainResult:
    """Train a retriever on the pretrain window with early stopping on the validation window.

    Args:
        dataset: the extracted events; training uses ``dataset.train()``. Given as
            :class:`UserShards`, the events stay on disk: each rank reads its own user shards,
            one at a time (:mod:`recmodel.retriever.shard_batches`), and the validation users'
            rows only.
        item_counts_for_q: int ``[N + 1]`` item counts of the Q table (the negative proposal
            and the log Q of in-batch negatives).
        cfg_model, cfg_train, cfg_q, cfg_eval: the configuration sections.
        progress: called on rank 0 every ``recmodel.retriever.progress.PROGRESS_EVERY`` steps and at the end of each epoch
            with ``step, epoch, loss, steps_per_s, positions_per_s, eta_s``.
        init_state: weights to start from (a ``state_dict``), e.g. a previous checkpoint.
        state_store: where the full training state is saved during training; when it holds
            the state of an interrupted call with the same configuration and data, training
            continues from there (:mod:`recmodel.retriever.train_state`).

    Raises:
        TrainingError: the loss became NaN or infinite.
    """
    if np.shape(item_counts_for_q) != (dataset.n_items + 1,):
        raise ValueError(
            f"item_counts_for_q must have shape [{dataset.n_items + 1}], "
            f"got {np.shape(item_counts_for_q)}"
        )
    ctx = init_distributed(cfg_train.device)
    try:
        run = _Run(
            dataset,
            item_counts_for_q,
            cfg_model,
            cfg_train,
            cfg_q,
            cfg_eval,
            ctx,
            progress,
            init_state,
            state_store,
        )
        return run.fit()
    finally:
        shutdown(ctx)


def build_model(
    items: ItemFeatures,
    cfg: ModelConfig,
    seed: int,
    init_state: dict[str, torch.Tensor] | None,
    ctx: DistContext,
) -> Retriever:
    """The initial model on ``ctx.device``, identical on every rank."""
    torch.manual_seed(seed)  # the initial weights
    model = Retriever(items, cfg)
    if init_state is not None:
        model.load_state_dict(init_state, strict=True)
    model.to(ctx.device)
    broadcast_state(model, ctx)
    torch.manual_seed(seed + ctx.rank)  # dropout: a stream of its own on each rank
    return model


def train_step(
    model: Retriever,
    optimizer: RetrieverOptimizer,
    candidates: CandidateSampler,
    generator: torch.Generator,
    step: Step,
    logq: str,
    ctx: DistContext,
    mask_window_targets: bool = False,
) -> torch.Tensor:
    """One optimizer step on this rank's share of ``step``.

    Returns:
        This rank's loss share (a 0-dim tensor, not synchronized); summed over ranks it is the
        global-batch loss.
    """
    batch = DeviceBatch.from_step(step, ctx.device)
    optimizer.zero_grad()
    loss = next_item_loss(
        model, batch, candidates, generator, logq, mask_window_targets=mask_window_targets
    )
    loss.backward()
    all_reduce_gradients(model.dense_parameters(), model.sparse_parameters(), ctx)
    optimizer.step()
    return loss.detach()


class _Run:
    """State of one pretraining run (the model, its data, optimizer and monitors)."""

    def __init__(
        self,
        dataset: Dataset | UserShards,
        counts: np.ndarray,
        cfg_model: ModelConfig,
        cfg_train: TrainConfig,
        cfg_q: QConfig,
        cfg_eval: EvalConfig,
        ctx: DistContext,
        progress: ProgressFn | None,
        init_state: dict[str, torch.Tensor] | None,
        state_store: TrainStateStore | None = None,
    ):
        self.ctx, self.cfg, self.cfg_eval = ctx, cfg_train, cfg_eval
        self.store = state_store
        self.history: list[dict[str, Any]] = []
        self.best = EarlyStopping(cfg_train.patience)
        self.stopped = False  # early stopping ended the training
        self.start = time.perf_counter()
        self.model = build_model(dataset.items, cfg_model, cfg_train.seed, init_state, ctx)
        self.model_config = model_config_dict(cfg_model, dataset.items)
        profile_size = cfg_model.profile_size if self.model.long_term is not None else 0
        self.batcher = _batcher(dataset, cfg_model, cfg_train, profile_size, ctx)
        self.candidates = CandidateSampler.from_config(counts, cfg_train, cfg_q).to(ctx.device)
        self.generator = torch.Generator(device=ctx.device).manual_seed(cfg_train.seed)
        total_steps = cfg_train.epochs * len(self.batcher)
        self.optimizer = build_optimizer(
            self.model,
            lr=cfg_train.lr,
            sparse_lr=cfg_train.sparse_lr,
            weight_decay=cfg_train.weight_decay,
            warmup_steps=cfg_train.warmup_steps,
            total_steps=total_steps,
            grad_clip=cfg_train.grad_clip,
            fused=ctx.device.type == "cuda",
        )
        read = cfg_model.max_len + cfg_model.profile_history  # the plays a query reads
        self.valset = validation_set_of(dataset, cfg_train, cfg_eval, read) if ctx.is_main else None
        self.progress = progress if ctx.is_main else None
        self.monitor = TrainingMonitor(ctx, total_steps, len(self.batcher), self.progress)
        logger.info(
            "pretraining: %d windows, %d positions, %d steps/epoch, %d parameters, %s",
            self.batcher.n_windows,
            self.batcher.n_targets,
            len(self.batcher),
            sum(p.numel() for p in self.model.parameters()),
            ctx.device,
        )

    def fit(self) -> TrainResult:
        resumed = self.store.resume(self) if self.store is not None else None
        first, skip = (resumed["epoch"], resumed["step"]) if resumed else (0, 0)
        history, best = self.history, self.best  # restored by a resume
        for epoch in range(first, self.cfg.epochs):
            if self.stopped:
                break
            record = self._train_epoch(epoch, skip if epoch == first else 0)
            record.update(self._validate())
            history.append(record)
            logger.info("epoch %d: %s", epoch, format_record(record))
            if self.progress is not None:
                self.progress(record)
            if best.update(epoch, record.get(VAL_METRIC, math.nan)):
                best.state = state_bytes(self.model, self.model_config) if self.ctx.is_main else b""
            else:
                self.stopped = best.stop
            if self.store is not None:
                self.store.save_epoch(self, epoch)
            if self.stopped:
                logger.info("early stop after epoch %d (best epoch %d)", epoch, best.epoch)
        self._restore(best.state, best.epoch != len(history) - 1)
        seconds = time.perf_counter() - self.start
        return TrainResult(
            self.model.eval(), history, best.epoch, seconds, best.state, self.model_config, resumed
        )

    def _train_epoch(self, epoch: int, skip: int = 0) -> dict[str, Any]:
        """Train one epoch from its step ``skip`` on (> 0 when resuming inside it).

        Returns:
            ``epoch``, ``loss``, ``seconds`` (training only) and ``positions_per_s``.
        """
        self.model.train()
        self.monitor.start_epoch()
        # Batches are a pure function of (seed, epoch): skipped ones are built, never trained on.
        # The next batch is built in the background while this one trains.
        for step in prefetched(itertools.islice(self.batcher.epoch(epoch), skip, None)):
            step = gather_global_targets(step, self.ctx)
            loss = train_step(
                self.model,
                self.optimizer,
                self.candidates,
                self.generator,
                step,
                self.cfg.logq,
                self.ctx,
                self.cfg.mask_window_targets,
            )
            describe = functools.partial(describe_step, step)
            self.monitor.record(loss, epoch, step.index, step.n_global, describe)
            if self.store is not None:
                self.store.maybe_save(self, epoch, step.index + 1)
        return {"epoch": epoch, **self.monitor.end_epoch()}

    def _validate(self) -> dict[str, Any]:
        start = time.perf_counter()
        metrics = None
        if self.ctx.is_main:
            metrics = evaluate_retriever(
                self.model, self.valset, self.cfg_eval.ks, self.cfg_eval.chunk_items
            )
        metrics = broadcast_object(metrics, self.ctx)
        return {**metrics, "eval_seconds": time.perf_counter() - start}

    def _restore(self, best_state: bytes, needed: bool) -> None:
        """Load the best weights on rank 0 and share them with every rank."""
        if not needed:
            return
        if self.ctx.is_main:
            self.model.load_state_dict(load_state(best_state))
        broadcast_state(self.model, self.ctx)


def _batcher(
    dataset: Dataset | UserShards,
    cfg_model: ModelConfig,
    cfg: TrainConfig,
    profile_size: int,
    ctx: DistContext,
) -> WindowBatcher | ShardBatcher:
    """The training steps of this rank: from memory, or streamed from its user shards."""
    if isinstance(dataset, UserShards):
        return ShardBatcher(
            dataset,
            cfg_model.max_len,
            cfg.batch_size,
            cfg.seed,
            ctx.rank,
            ctx.world_size,
            profile_size,
            cfg_model.profile_history,
        )
    windows = make_windows(
        dataset.train(), cfg_model.max_len, profile_size, cfg_model.profile_history
    )
    return WindowBatcher(windows, cfg.batch_size, cfg.seed, ctx.rank, ctx.world_size)


def describe_step(step: Step) -> str:
    """This rank's share of a step, for an error message: sizes and the first users."""
    users = step.local.users[:USERS_IN_ERROR].tolist()
    return (
        f"{len(step.local.windows)} windows, {len(step.local.positions)} positions, users {users}"
    )
