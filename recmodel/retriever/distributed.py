"""Data parallelism across processes (torchrun, or Metaflow's torch integration).

``WORLD_SIZE > 1`` in the environment turns it on: the process group comes from the environment
(``env://``: ``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), with
NCCL on CUDA and gloo on the CPU. A group on one machine (``MASTER_ADDR`` a loopback address,
as the in-step launcher sets it) keeps its rendezvous on loopback.

Gradients are combined here rather than by the ``DistributedDataParallel`` wrapper, because DDP
does not support sparse gradients on NCCL and the embedding tables are where sparse gradients
live. Dense gradients travel as one flat bucket (one all-reduce). Sparse gradients travel as an
all-gather of (row indices, row values), so the traffic follows the rows a step touched, never
the catalog size. The dense part of the model is small (about 0.1 M parameters at the default
size), so the compute/communication overlap that DDP buckets would add is worth little.

Each rank's loss is normalized by the number of positions of the GLOBAL batch, so the collective
is a SUM and the combined gradient equals that of one process on the whole global batch.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the data-parallel group (a group of one without DDP)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # this context created the process group and must destroy it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` picks CUDA when available; ``"cuda"`` without CUDA is an error."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device = 'cuda' but CUDA is not available")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def init_distributed(device_name: str) -> DistContext:
    """Join the process group named by the environment, if ``WORLD_SIZE > 1``."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name, int(os.environ.get("LOCAL_RANK", "0")))
    if world_size <= 1:
        return DistContext(device=device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if os.environ.get("MASTER_ADDR", "") in LOOPBACK:
            _init_on_loopback(backend)
        else:
            dist.init_process_group(backend=backend)
    ctx = DistContext(dist.get_rank(), dist.get_world_size(), device, owns)
    logger.info("data parallel: rank %d of %d on %s", ctx.rank, ctx.world_size, device)
    return ctx


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _init_on_loopback(backend: str) -> None:
    """Join a group of processes on this machine whose rendezvous listens on loopback only.

    Under ``env://`` rank 0's rendezvous store listens on every interface of the machine; a
    group whose ranks all run here (the in-step launcher) has no reason to be reachable from
    outside, so rank 0 binds the store's socket to 127.0.0.1 itself.
    """
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    port = int(os.environ["MASTER_PORT"])
    if rank == 0:
        sock = socket.socket()
        sock.bind(("127.0.0.1", port))
        sock.listen()
        store = dist.TCPStore("127.0.0.1", port, world_size, True, master_listen_fd=sock.detach())
    else:
        store = dist.TCPStore("127.0.0.1", port, world_size, False)
    dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group this context created, once every rank has reached this point.

    Without the barrier a rank that finishes first tears its connections down while another
    rank's transport thread still reads from them, which gloo answers with ``std::terminate``
    (a SIGABRT of that worker).
    """
    if ctx.owns_group and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def broadcast_state(module: torch.nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if not ctx.enabled:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def all_reduce_gradients(
    dense: list[torch.Tensor], sparse: list[torch.Tensor], ctx: DistContext
) -> None:
    """Sum the gradients of ``dense`` and ``sparse`` parameters over all ranks, in place.

    Every rank must pass the same parameter lists; a parameter without a gradient on some rank
    contributes zeros there.
    """
    if not ctx.enabled:
        return
    _all_reduce_dense(dense)
    for param in sparse:
        param.grad = _all_gather_sparse(param, ctx)


def _all_reduce_dense(params: list[torch.Tensor]) -> None:
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])  # [sum of numels]: one collective
    dist.all_reduce(flat)
    for param, chunk in zip(params, flat.split([p.numel() for p in params]), strict=True):
        param.grad = chunk.view_as(param).clone()


def _all_gather_sparse(param: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The sum over ranks of ``param``'s sparse gradient (uncoalesced; duplicates add up)."""
    rows, width = param.shape[0], param.shape[1:]
    if param.grad is None:
        index = torch.zeros(0, dtype=torch.int64, device=param.device)
        values = torch.zeros((0, *width), dtype=param.dtype, device=param.device)
    else:
        grad = param.grad.coalesce()
        index, values = grad.indices()[0], grad.values()  # [n], [n, ...]
    all_index = all_gather_rows(index, ctx)
    all_values = all_gather_rows(values, ctx)
    # The indices come from valid sparse gradients: skip the invariant checks.
    return torch.sparse_coo_tensor(
        all_index[None], all_values, (rows, *width), check_invariants=False
    )


def all_gather_rows(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Every rank's ``tensor`` (``[n_rank, ...]``, ``n_rank`` may differ) stacked in rank order.

    The rows travel padded to the longest rank's count: one collective for the sizes, one for
    the rows.
    """
    if not ctx.enabled:
        return tensor
    sizes = _all_gather(torch.tensor([len(tensor)], device=tensor.device), ctx)
    longest = int(max(int(s) for s in sizes))
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: len(tensor)] = tensor
    gathered = _all_gather(padded, ctx)  # world x [longest, ...]
    return torch.cat([g[: int(s)] for g, s in zip(gathered, sizes, strict=True)])


def _all_gather(tensor: torch.Tensor, ctx: DistContext) -> list[torch.Tensor]:
    out = [torch.empty_like(tensor) for _ in range(ctx.world_size)]
    dist.all_gather(out, tensor)
    return out


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The sum of ``tensor`` over ranks (a new tensor; the input is unchanged)."""
    out = tensor.clone()
    if ctx.enabled:
        dist.all_reduce(out)
    return out


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank (picklable objects: metrics, decisions)."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
