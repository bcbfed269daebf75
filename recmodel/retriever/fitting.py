"""What pretraining and finetuning share: the result of a training and its early stopping.

Both trainers validate after every epoch on the same fixed sample of validation users
(:mod:`recmodel.retriever.validation`), keep the weights of the best epoch by validation
NDCG@10, stop after ``patience`` epochs without improvement, and return a :class:`TrainResult`.
Losses are watched by one :class:`recmodel.retriever.progress.TrainingMonitor`, whose
:class:`~recmodel.retriever.progress.TrainingError` names the step and batch of a non-finite loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from recmodel.retriever.model import Retriever


@dataclass
class TrainResult:
    """Outcome of a training (pretraining or finetuning).

    Attributes:
        model: the best model (by validation NDCG@10), on the training device, in eval mode.
        history: one dict per epoch: ``epoch``, ``loss``, the validation summary metrics
            (``ndcg@10``, ``recall@10``, ...), ``seconds``, ``eval_seconds`` and the trainer's
            own figures (throughput, the pairwise and next-item parts of the finetune loss).
        best_epoch: the ``epoch`` of the history row whose weights are kept.
        seconds: wall time of the whole call.
        checkpoint: safetensors bytes of the best weights (empty on ranks other than 0).
        model_config: :func:`recmodel.retriever.checkpoint.model_config_dict` of the model.
        resumed_from: ``{"epoch", "step"}`` where this call continued a saved training state,
            None when it started from scratch.
    """

    model: Retriever
    history: list[dict[str, Any]]
    best_epoch: int
    seconds: float
    checkpoint: bytes
    model_config: dict[str, Any] = field(default_factory=dict)
    resumed_from: dict[str, int] | None = None


@dataclass
class EarlyStopping:
    """The best epoch so far, its weights, and how long ago it was.

    Attributes:
        patience: epochs without improvement before :attr:`stop` turns True.
        epoch: the best epoch (-1 before the first update).
        score: its validation score.
        state: safetensors bytes of its weights (set by the caller, rank 0 only).
        stale: epochs since the last improvement.
    """

    patience: int
    epoch: int = -1
    score: float = -math.inf
    state: bytes = b""
    stale: int = 0

    def update(self, epoch: int, score: float) -> bool:
        """Record ``epoch``'s validation score; True when it is the new best.

        Without validation users the score is NaN and every epoch counts as an improvement,
        so the last one is kept.
        """
        if math.isnan(score) or score > self.score:
            self.epoch, self.score, self.stale = epoch, score, 0
            return True
        self.stale += 1
        return False

    @property
    def stop(self) -> bool:
        return self.stale >= self.patience
