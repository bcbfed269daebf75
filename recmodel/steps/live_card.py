"""A live Metaflow card for a training step: progress while it runs, the curves when it ends."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

log = logging.getLogger(__name__)

REFRESH_SECONDS = 5.0  # Metaflow rate-limits card refreshes; more often is wasted work
EPOCH_COLUMNS = (  # in this order, those that some row of the history has
    "epoch",
    "loss",
    "pair_loss",
    "softmax_loss",
    "ndcg@10",
    "recall@10",
    "recall@100",
    "agreement",
    "heldout_agreement",
    "seconds",
    "positions_per_s",
)
MISSING = "—"  # a value the row does not have (the starting model has no training loss)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return MISSING
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def trained_epochs(history: list[dict[str, Any]]) -> int:
    """Epochs that trained: rows with a finite training loss.

    Finetuning's row 0 is the starting model's validation (no loss); pretraining's rows are
    all trained epochs (numbered from 0).
    """
    return sum(1 for row in history if _fmt(row.get("loss")) != MISSING)


def epoch_rows(history: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the per-epoch table; a row without a loss is labelled the start."""
    columns = [c for c in EPOCH_COLUMNS if any(c in row for row in history)]
    rows = []
    for row in history:
        cells = [_fmt(row.get(c)) for c in columns]
        if _fmt(row.get("loss")) == MISSING:
            cells[0] = f"{row.get('epoch', '')} (start)"
        rows.append(cells)
    return columns, rows


class TrainingCard:
    """Feeds training progress into a card (or only the log when there is no card).

    Args:
        card: ``current.card[<id>]`` of the step, or None outside Metaflow.
        title: heading of the card.
    """

    def __init__(self, card: Any, title: str):
        self.card, self.title, self._last = card, title, 0.0
        self._status = self._epochs = None
        if card is None:
            return
        from metaflow.cards import Markdown

        self._status = Markdown("_starting..._")
        card.append(Markdown(f"# {title}"))
        card.append(self._status)
        self._epochs = Markdown("")
        card.append(self._epochs)
        card.refresh()

    def update(self, progress: dict[str, Any]) -> None:
        """Called by the trainer every few steps and at each epoch end."""
        line = " · ".join(
            f"**{k}** {_fmt(v)}"
            for k, v in progress.items()
            if k in ("epoch", "step", "loss", "steps_per_s", "positions_per_s", "eta_s", "ndcg@10")
        )
        if self._status is None:
            return
        now = time.monotonic()
        if now - self._last < REFRESH_SECONDS and "ndcg@10" not in progress:
            return
        self._last = now
        self._status.update(line)
        self.card.refresh()

    def finish(self, history: list[dict[str, Any]], best_epoch: int | None = None) -> None:
        """Replace the progress line with the per-epoch table and a panel per loss."""
        if self.card is None:
            return
        from metaflow.cards import Image, Table

        from recmodel.report.plots import epoch_panels

        self._status.update(self.status_line(history, best_epoch))
        headers, rows = epoch_rows(history)
        self.card.append(Table(rows, headers=headers))
        if history:
            png = epoch_panels(history, self.title)
            self.card.append(Image(png, label="each loss and validation NDCG@10 per epoch"))
        self.card.refresh(force=True)

    @staticmethod
    def status_line(history: list[dict[str, Any]], best_epoch: int | None) -> str:
        """``finished: N epochs trained`` with the kept epoch and what a start row is."""
        n = trained_epochs(history)
        line = f"**finished**: {n} epoch{'s' if n != 1 else ''} trained"
        if best_epoch is not None:
            line += f"; weights kept from epoch {best_epoch} (best validation NDCG@10)"
        if len(history) > n:
            line += "; the row marked start is the model before this training"
        return line
