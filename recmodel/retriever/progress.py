"""Progress of a training run: throughput, ETA, progress reports and non-finite loss checks.

Losses are checked every ``PROGRESS_EVERY`` steps rather than every step, so that a GPU is not
synchronized on each step (the losses stay on the device until then); the error still names the
first bad step and its batch. Under data parallelism the losses are summed over ranks first, so
a non-finite loss on any rank stops every rank at the same step.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from recmodel.retriever.distributed import DistContext, all_reduce_sum

logger = logging.getLogger(__name__)

PROGRESS_EVERY = 50  # steps between progress reports and non-finite loss checks
ProgressFn = Callable[[dict[str, Any]], None]
"""Receives progress records: every few steps and, with the validation metrics, each epoch."""


class TrainingError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the step and the batch."""


def format_record(record: dict[str, Any]) -> str:
    """``key=value`` pairs for a log line, floats to 4 significant digits."""
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
    )


class TrainingMonitor:
    """Deferred non-finite loss checks, throughput and progress reports of one training.

    Args:
        ctx: the data-parallel group (losses are summed over its ranks before a check).
        total_steps: steps of the whole run, for the ETA.
        steps_per_epoch: for the error message.
        callback: receives the progress records on the main rank (None: the log only).
    """

    def __init__(
        self,
        ctx: DistContext,
        total_steps: int,
        steps_per_epoch: int,
        callback: ProgressFn | None,
    ):
        self.ctx, self.total_steps, self.steps_per_epoch = ctx, total_steps, steps_per_epoch
        self.callback = callback
        self.pending: list[tuple[torch.Tensor, int, int, Callable[[], str]]] = []
        self.steps_done = 0
        self.interval_start = self.epoch_start = time.perf_counter()
        self.interval_positions = 0
        self.epoch_losses: list[float] = []
        self.epoch_positions = 0

    def record(
        self,
        loss: torch.Tensor,
        epoch: int,
        batch: int,
        positions: int,
        describe: Callable[[], str],
    ) -> None:
        """Keep a step's loss (on its device) until the next check.

        Args:
            loss: this rank's 0-dim loss share of the step.
            epoch, batch: where the step is (batch index within the epoch).
            positions: training positions of the step over every rank (throughput).
            describe: names this rank's batch in an error (called only on a bad loss).
        """
        self.pending.append((loss, epoch, batch, describe))
        self.steps_done += 1
        self.interval_positions += positions
        self.epoch_positions += positions
        if len(self.pending) >= PROGRESS_EVERY:
            self._flush()

    def start_epoch(self) -> None:
        self.epoch_start = self.interval_start = time.perf_counter()

    def end_epoch(self) -> dict[str, float]:
        """Mean global loss and throughput of the epoch just finished."""
        self._flush()
        seconds = time.perf_counter() - self.epoch_start
        out = {
            "loss": float(np.mean(self.epoch_losses)) if self.epoch_losses else math.nan,
            "seconds": seconds,
            "positions_per_s": self.epoch_positions / max(seconds, 1e-9),
        }
        self.epoch_losses, self.epoch_positions = [], 0
        return out

    def _flush(self) -> None:
        if not self.pending:
            return
        # Summed over ranks: a non-finite loss on any rank stops every rank at the same step.
        losses = all_reduce_sum(torch.stack([p[0] for p in self.pending]), self.ctx).cpu()
        bad = torch.nonzero(~torch.isfinite(losses)).flatten()
        if len(bad):
            raise self._error(losses, int(bad[0]))
        self.epoch_losses.extend(losses.tolist())
        self._report(float(losses.mean()), epoch=self.pending[-1][1])
        self.pending = []

    def _error(self, losses: torch.Tensor, index: int) -> TrainingError:
        _, epoch, batch, describe = self.pending[index]
        step_number = self.steps_done - len(self.pending) + index + 1
        return TrainingError(
            f"training loss is {float(losses[index])} at step {step_number} (epoch {epoch}, "
            f"batch {batch} of {self.steps_per_epoch}); this rank's batch has {describe()}"
        )

    def _report(self, loss: float, epoch: int) -> None:
        now = time.perf_counter()
        seconds = max(now - self.interval_start, 1e-9)
        steps_per_s = len(self.pending) / seconds
        info = {
            "step": self.steps_done,
            "epoch": epoch,
            "loss": loss,
            "steps_per_s": steps_per_s,
            "positions_per_s": self.interval_positions / seconds,
            # An upper bound: it assumes every epoch runs, and early stopping may end sooner.
            "eta_s": (self.total_steps - self.steps_done) / max(steps_per_s, 1e-9),
        }
        self.interval_start, self.interval_positions = now, 0
        if self.ctx.is_main:
            logger.info("step %d/%d: %s", self.steps_done, self.total_steps, format_record(info))
        if self.callback is not None:
            self.callback(info)
