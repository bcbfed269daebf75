"""The peer side of ``bench_peer.py``: RecTools ``SASRecModel`` trained and queried on exported data.

Runs in its own virtual environment (``.venv-peer``, see ``benchmarks/README.md``), never in the
project's: rectools pins ``numpy < 2``. It imports nothing from ``recmodel``; the files it reads
and writes are the whole contract with ``bench_peer.py``:

- ``--train``: Parquet ``user_id, item_id, order`` (int64): the training sequences, ordered by
  ``order`` within a ``user_id``. ``bench_peer.py`` writes one pseudo-user per training window
  of this project's batcher, so both sides train on exactly the same next-item transitions.
- ``--queries``: Parquet ``user_id, item_id, order``: the history of every test user before the
  test window, in the same layout.
- ``--out``: Parquet ``user_id, item_id, rank`` with the top-``k`` of every test user.
- ``--report``: JSON with per-epoch wall times, training positions, peak RSS and settings.

Usage (from the repository root)::

    .venv-peer/bin/python benchmarks/peer_rectools.py --train T.parquet --queries Q.parquet \\
        --out recs.parquet --report peer.json --epochs 3 --threads 1
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytorch_lightning as pl
import torch
from rectools import Columns
from rectools.dataset import Dataset
from rectools.models import SASRecModel

logger = logging.getLogger("peer_rectools")

ORDER = "order"  # column of the exported files that orders a user's events
ORIGIN = pd.Timestamp("2024-01-01")  # RecTools wants datetimes; only their order matters


def peak_rss_bytes() -> int:
    """This process's resident-set high-water mark (Linux ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def read_interactions(path: Path) -> pd.DataFrame:
    """RecTools interactions (``user_id, item_id, weight, datetime``) of an exported file."""
    table = pq.read_table(path, columns=[Columns.User, Columns.Item, ORDER]).to_pandas()
    return pd.DataFrame(
        {
            Columns.User: table[Columns.User].to_numpy(),
            Columns.Item: table[Columns.Item].to_numpy(),
            Columns.Weight: np.ones(len(table), dtype=np.float32),
            Columns.Datetime: ORIGIN + pd.to_timedelta(table[ORDER].to_numpy(), unit="s"),
        }
    )


def training_positions(interactions: pd.DataFrame, max_len: int) -> int:
    """Next-item targets per epoch: each sequence keeps its last ``max_len + 1`` items."""
    lengths = interactions.groupby(Columns.User).size().to_numpy()
    kept = np.minimum(lengths[lengths >= 2], max_len + 1)
    return int((kept - 1).sum())


class EpochTimer(pl.Callback):
    """Wall time of every training epoch (data loading included, as on our side).

    RecTools fits a deep copy of the trainer: read the copy's timer (:func:`epoch_seconds`).
    """

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds.append(time.perf_counter() - self._start)
        logger.info("epoch %d: %.1f s", len(self.seconds) - 1, self.seconds[-1])


def epoch_seconds(model: SASRecModel) -> list[float]:
    """The epoch times recorded by the fitted trainer's :class:`EpochTimer`."""
    (timer,) = [cb for cb in model.fit_trainer.callbacks if isinstance(cb, EpochTimer)]
    return timer.seconds


def build_model(args: argparse.Namespace) -> SASRecModel:
    """SASRec with sampled softmax over uniform catalog negatives, ids only, on the CPU."""

    def trainer() -> pl.Trainer:
        return pl.Trainer(
            max_epochs=args.epochs,
            min_epochs=args.epochs,
            deterministic=True,
            accelerator="cpu",
            devices=1,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            logger=False,
            callbacks=[EpochTimer()],
        )

    return SASRecModel(
        n_blocks=args.blocks,
        n_heads=args.heads,
        n_factors=args.hidden,
        dropout_rate=args.dropout,
        session_max_len=args.max_len,
        loss="sampled_softmax",
        n_negatives=args.negatives,
        lr=args.lr,
        batch_size=args.batch_size,
        epochs=args.epochs,
        deterministic=True,
        get_trainer_func=trainer,
        recommend_batch_size=args.recommend_batch_size,
        recommend_torch_device="cpu",
    )


def top_k(model: SASRecModel, queries: pd.DataFrame, k: int) -> pd.DataFrame:
    """Top-``k`` over the model's catalog for every query user, seen items kept."""
    users = queries[Columns.User].unique()
    recos = model.recommend(
        users=users, dataset=Dataset.construct(queries), k=k, filter_viewed=False
    )
    return recos[[Columns.User, Columns.Item, Columns.Rank]].astype("int64")


def run(args: argparse.Namespace) -> dict:
    """Fit on ``--train``, write the top-``k`` of ``--queries``; return timings and memory."""
    torch.set_num_threads(args.threads)
    pl.seed_everything(args.seed, workers=True)
    start = time.perf_counter()
    train = read_interactions(args.train)
    positions = training_positions(train, args.max_len)
    dataset = Dataset.construct(train)
    loaded = time.perf_counter()
    model = build_model(args)
    model.fit(dataset)
    fitted = time.perf_counter()
    rss_fit = peak_rss_bytes()
    del dataset, train
    queries = read_interactions(args.queries)
    recos = top_k(model, queries, args.k)
    recos.to_parquet(args.out, index=False)
    done = time.perf_counter()
    return {
        "epoch_seconds": epoch_seconds(model),
        "positions_per_epoch": positions,
        "load_seconds": loaded - start,
        "fit_seconds": fitted - loaded,
        "recommend_seconds": done - fitted,
        "peak_rss_fit": rss_fit,
        "peak_rss": peak_rss_bytes(),
        "threads": torch.get_num_threads(),
        "n_rec_users": int(recos[Columns.User].nunique()),
        "versions": {"torch": torch.__version__, "rectools": version("rectools")},
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--queries", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--negatives", type=int, default=256)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--recommend-batch-size", type=int, default=1_024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args()
    report = {**run(args), "settings": {k: str(v) for k, v in vars(args).items()}}
    args.report.write_text(json.dumps(report, indent=2))
    logger.info("done: %s", json.dumps({k: v for k, v in report.items() if k != "settings"}))


if __name__ == "__main__":
    main()
