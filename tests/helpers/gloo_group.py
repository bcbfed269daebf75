"""Several CPU ranks in one test: each spawned rank joins a gloo process group."""

from __future__ import annotations

import datetime

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from recmodel.retriever.launch import free_port, leave_worker, set_rank_environment

RANK_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK")

# A mismatched collective becomes an error after this long instead of a hang.
TIMEOUT = datetime.timedelta(seconds=120)


def join_gloo_group(rank: int, world_size: int, port: int) -> None:
    """Join the group as a torchrun rank would, with one torch thread.

    The caller destroys the group (``dist.destroy_process_group()``) when done.
    """
    set_rank_environment(rank, world_size, port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=TIMEOUT)


def spawn_ranks(worker, world_size: int, out_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``worker(rank, world_size, port, out_dir)`` in ``world_size`` processes.

    The rank variables are cleared in this process first, so that the test's own trainings
    stay single-process.
    """
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    args = (worker, world_size, free_port(), out_dir)
    mp.spawn(_run_rank, args=args, nprocs=world_size, join=True)


def _run_rank(rank: int, worker, world_size: int, port: int, out_dir: str) -> None:
    worker(rank, world_size, port, out_dir)
    leave_worker()  # as the package's own workers end
