"""Several CPU ranks in one test: a free port, and each spawned rank's gloo process group."""

from __future__ import annotations

import datetime
import os
import socket

import torch
import torch.distributed as dist

# A mismatched collective becomes an error after this long instead of a hang.
TIMEOUT = datetime.timedelta(seconds=120)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def join_gloo_group(rank: int, world_size: int, port: int) -> None:
    """Join the group as torchrun would set it up, with one torch thread per rank.

    The caller destroys the group (``dist.destroy_process_group()``) when done.
    """
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=TIMEOUT)
