"""Several CPU ranks in one test: each spawned rank joins a gloo process group."""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist

from recmodel.launch import set_rank_environment

# A mismatched collective becomes an error after this long instead of a hang.
TIMEOUT = datetime.timedelta(seconds=120)


def join_gloo_group(rank: int, world_size: int, port: int) -> None:
    """Join the group as a torchrun rank would, with one torch thread.

    The caller destroys the group (``dist.destroy_process_group()``) when done.
    """
    set_rank_environment(rank, world_size, port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=TIMEOUT)
