"""A live Metaflow card for a training step: progress while it runs, the curves when it ends."""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)

REFRESH_SECONDS = 5.0  # Metaflow rate-limits card refreshes; more often is wasted work
EPOCH_COLUMNS = (
    "epoch",
    "loss",
    "ndcg@10",
    "recall@10",
    "recall@100",
    "seconds",
    "positions_per_s",
)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


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

    def finish(self, history: list[dict[str, Any]]) -> None:
        """Replace the progress line with the per-epoch table and the loss/NDCG curves."""
        if self.card is None:
            return
        from metaflow.cards import Image, Table

        from recmodel.report.plots import training_curves

        self._status.update(f"finished: {len(history)} epochs")
        rows = [[_fmt(row.get(c, "")) for c in EPOCH_COLUMNS] for row in history]
        self.card.append(Table(rows, headers=list(EPOCH_COLUMNS)))
        if history:
            self.card.append(Image(training_curves({self.title: history}), label="training"))
        self.card.refresh(force=True)
