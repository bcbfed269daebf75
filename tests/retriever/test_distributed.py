"""Data parallelism: two gloo processes train the same weights as one process on the same batch."""

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from recmodel.core.config import EvalConfig, ModelConfig, QConfig, TrainConfig
from recmodel.retriever.distributed import (
    DistContext,
    all_reduce_gradients,
    broadcast_object,
    init_distributed,
    resolve_device,
    shutdown,
)
from recmodel.retriever.launch import set_rank_environment
from recmodel.retriever.train import pretrain
from tests.helpers.gloo_group import join_gloo_group, spawn_ranks
from tests.helpers.retriever_data import cycle_dataset, one_thread

pytestmark = pytest.mark.usefixtures(one_thread.__name__)

MODEL = ModelConfig(
    d_model=16, n_blocks=1, n_heads=2, max_len=10, dropout=0.0, id_dim=8, meta_dim=4
)
TRAIN = TrainConfig(
    epochs=2, batch_size=32, lr=1e-2, sparse_lr=3e-2, warmup_steps=3, n_negatives=16, device="cpu"
)
MODES = ("shared", "both")  # "both" also checks that in-batch negatives span the global batch


def train_state(negatives: str) -> dict[str, torch.Tensor]:
    dataset = cycle_dataset()
    train = dataclasses.replace(TRAIN, negatives=negatives)
    result = pretrain(dataset, dataset.item_counts, MODEL, train, QConfig(), EvalConfig(ks=(10,)))
    return {k: v.detach().clone() for k, v in result.model.state_dict().items()}


def worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    # One group for both runs, as under torchrun: pretrain joins it and leaves it open.
    join_gloo_group(rank, world_size, port)
    try:
        for negatives in MODES:
            state = train_state(negatives)
            save_file(state, os.path.join(out_dir, f"{negatives}-{rank}.safetensors"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path, monkeypatch):
    spawn_ranks(worker, 2, str(tmp_path), monkeypatch)
    for negatives in MODES:
        single = train_state(negatives)
        ranks = [load_file(tmp_path / f"{negatives}-{r}.safetensors") for r in range(2)]
        assert set(ranks[0]) == set(single)
        for name, expected in single.items():
            assert torch.equal(ranks[0][name], ranks[1][name]), (negatives, name)
            assert torch.allclose(ranks[0][name], expected, rtol=1e-4, atol=1e-5), (negatives, name)


def test_single_process_helpers_are_identities():
    ctx = DistContext()
    param = torch.nn.Parameter(torch.ones(3, 2))
    param.grad = torch.full((3, 2), 2.0)
    all_reduce_gradients([param], [], ctx)
    assert torch.equal(param.grad, torch.full((3, 2), 2.0))
    assert broadcast_object({"a": 1}, ctx) == {"a": 1}
    assert not ctx.enabled and ctx.is_main


def test_init_without_world_size_is_a_group_of_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.device, ctx.owns_group) == (
        0,
        1,
        torch.device("cpu"),
        False,
    )


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(RuntimeError, match="CUDA"):
            resolve_device("cuda")


def listening_addresses() -> list[str]:
    """Local addresses of this process's listening TCP sockets (from /proc, no tools)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A = LISTEN
                    found.append(fields[1].split(":")[0])
    return found


def loopback_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    set_rank_environment(rank, world_size, port)
    ctx = init_distributed("cpu")
    if rank == 0:
        addresses = listening_addresses()
        Path(out_dir, "addresses.json").write_text(json.dumps(addresses))
    shutdown(ctx)


@pytest.mark.slow
def test_the_local_group_listens_on_loopback_only(tmp_path, monkeypatch):
    spawn_ranks(loopback_worker, 2, str(tmp_path), monkeypatch)
    addresses = json.loads((tmp_path / "addresses.json").read_text())
    assert addresses, "rank 0 listens for the other ranks"
    # /proc writes 127.0.0.1 as 0100007F; every interface is 00000000 (IPv4) or all zeros (IPv6)
    assert all(a in ("0100007F", "00000000000000000000000001000000") for a in addresses), addresses
