"""Data-parallel pretraining inside one step: one process per visible GPU.

On a machine with several GPUs the ``pretrain`` step starts one worker per device on the
loopback interface (``MASTER_ADDR=127.0.0.1``), each joins the group through the environment as
under ``torchrun`` (:mod:`recmodel.retriever.distributed`), and rank 0's result comes back to the step.
Across machines, Metaflow's multi-node decorators set the same environment and
:func:`recmodel.retriever.train.pretrain` joins their group directly; this launcher then steps aside.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from recmodel.core.dataset import Dataset
from recmodel.retriever.checkpoint import load_retriever
from recmodel.retriever.fitting import TrainResult
from recmodel.retriever.train import pretrain

log = logging.getLogger(__name__)

RESULT_FILE = "rank0.pkl"


def process_count(requested: int, device: str) -> int:
    """Workers to start: ``requested``, or one per visible GPU when it is 0.

    An environment that already names a group (``WORLD_SIZE``) is a launcher's: one process.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return 1
    if requested > 0:
        return requested
    if device != "cpu" and torch.cuda.is_available():
        return max(1, torch.cuda.device_count())
    return 1


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


RANK_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE")


def set_rank_environment(
    rank: int, world_size: int, port: int, address: str = "127.0.0.1", local_rank: int | None = None
) -> None:
    """The variables torchrun gives a rank (on this machine by default); the trainer joins
    their group."""
    os.environ.update(
        MASTER_ADDR=address,
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank if local_rank is None else local_rank),
        WORLD_SIZE=str(world_size),
    )


@dataclass(frozen=True)
class Node:
    """This task's machine in a group of ``count`` (Metaflow's ``current.parallel``)."""

    index: int = 0
    count: int = 1
    main_ip: str = "127.0.0.1"
    port: int = 0  # the group's port where the platform names one (0: the caller picks)


ONE_NODE = Node()


@contextlib.contextmanager
def node_group(node: Node, port: int) -> Iterator[None]:
    """Within: the environment of rank ``node.index`` of a group of ``node.count`` machines,
    one process each, meeting at ``node.main_ip:port``; the previous values after.

    :func:`recmodel.retriever.train.pretrain` joins that group (and the in-step launcher stays
    at one process). A group of one changes nothing.
    """
    if node.count <= 1:
        yield
        return
    saved = {name: os.environ.get(name) for name in RANK_VARIABLES}
    set_rank_environment(node.index, node.count, port, node.main_ip, local_rank=0)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _worker(
    rank: int,
    world_size: int,
    port: int,
    out_dir: str,
    args: tuple,
    kwargs: dict,
    load_dataset: Callable[[], Dataset] | None = None,
):
    set_rank_environment(rank, world_size, port)
    if load_dataset is not None:  # read from the run's tables, not sent through a pipe
        args = (load_dataset(), *args[1:])
    result = pretrain(*args, **kwargs)
    if rank == 0:  # the model is rebuilt from the checkpoint in the parent
        fields = {k: v for k, v in vars(result).items() if k != "model"}
        Path(out_dir, RESULT_FILE).write_bytes(pickle.dumps(fields))
    leave_worker()


def leave_worker() -> None:
    """End a spawned worker whose outputs are written and closed, skipping interpreter teardown.

    In about one run in five a native thread of a finished gloo worker was still joinable when
    the C++ statics were destroyed, and std::terminate aborted it (measured with 2 gloo workers
    on the CPU, tests/retriever/test_launch.py); ``mp.spawn`` then fails the whole training.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def pretrain_data_parallel(
    *args: Any,
    processes: int = 0,
    load_dataset: Callable[[], Dataset] | None = None,
    **kwargs: Any,
) -> TrainResult:
    """:func:`recmodel.retriever.train.pretrain` on ``processes`` workers (see :func:`process_count`).

    Takes the arguments of :func:`recmodel.retriever.train.pretrain`. With one process it simply calls
    it. Otherwise the live ``progress`` callback stays in this process and is not called
    (workers log their progress), and the returned model is rank 0's best checkpoint.
    ``load_dataset`` (a picklable callable) lets each worker load the dataset itself, from the
    run's tables; without it the dataset is pickled into every worker.
    """
    dataset, cfg_model, cfg_train = args[0], args[2], args[3]
    n = process_count(processes, cfg_train.device)
    if n == 1:
        return pretrain(*args, **kwargs)
    kwargs = {**kwargs, "progress": None}
    log.info("data parallel pretraining on %d processes", n)
    with tempfile.TemporaryDirectory(prefix="recmodel-ddp-") as tmp:
        sent = args if load_dataset is None else (None, *args[1:])
        spawn_args = (n, free_port(), tmp, sent, kwargs, load_dataset)
        mp.spawn(_worker, args=spawn_args, nprocs=n, join=True)
        fields = pickle.loads(Path(tmp, RESULT_FILE).read_bytes())
    model = load_retriever(fields["checkpoint"], fields["model_config"], dataset.items)
    del cfg_model  # the checkpoint carries the model config
    return TrainResult(model=model, **fields)
