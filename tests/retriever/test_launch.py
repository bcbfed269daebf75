"""The in-step launcher: N worker processes train what one process trains on the same batch."""

import dataclasses

import pytest
import torch

from recmodel.core.config import EvalConfig, ModelConfig, QConfig, TrainConfig
from recmodel.core.dataset import Dataset
from recmodel.retriever.launch import pretrain_data_parallel, process_count
from recmodel.retriever.train import pretrain
from tests.helpers.retriever_data import cycle_dataset, one_thread

pytestmark = pytest.mark.usefixtures(one_thread.__name__)

MODEL = ModelConfig(
    d_model=16, n_blocks=1, n_heads=2, max_len=10, dropout=0.0, id_dim=8, meta_dim=4
)
TRAIN = TrainConfig(
    epochs=2, batch_size=32, lr=1e-2, sparse_lr=3e-2, warmup_steps=3, n_negatives=16, device="cpu"
)


def test_process_count(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert process_count(0, "cpu") == 1
    assert process_count(3, "cpu") == 3
    monkeypatch.setenv("WORLD_SIZE", "4")  # torchrun / a multi-node decorator owns the group
    assert process_count(3, "cpu") == 1


def single_and_spawned(monkeypatch, **launch):
    """One process's training and two spawned workers' on the same data (outside any group)."""
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    dataset = cycle_dataset()
    args = (dataset, dataset.item_counts, MODEL, TRAIN, QConfig(), EvalConfig(ks=(10,)))
    single = pretrain(*args)
    if launch.get("load_dataset"):
        monkeypatch.setattr(Dataset, "__reduce_ex__", refuse_pickling)
    return single, pretrain_data_parallel(*args, processes=2, **launch)


def refuse_pickling(self, protocol):
    raise AssertionError("the dataset was pickled for a worker")


def assert_same_training(parallel, single):
    assert parallel.best_epoch == single.best_epoch
    assert [round(h["loss"], 4) for h in parallel.history] == [
        round(h["loss"], 4) for h in single.history
    ]
    for name, expected in single.model.state_dict().items():
        got = parallel.model.state_dict()[name]
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5), name


@pytest.mark.slow
def test_two_spawned_workers_match_one_process(monkeypatch):
    single, parallel = single_and_spawned(monkeypatch)
    assert_same_training(parallel, single)


@pytest.mark.slow
def test_workers_load_the_dataset_themselves_when_told_how(monkeypatch):
    """With ``load_dataset`` nothing pickles the dataset: the workers read it on their own."""
    single, parallel = single_and_spawned(monkeypatch, load_dataset=cycle_dataset)
    assert_same_training(parallel, single)


def test_one_process_is_a_plain_call(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    dataset = cycle_dataset()
    train = dataclasses.replace(TRAIN, epochs=1)
    args = (dataset, dataset.item_counts, MODEL, train, QConfig(), EvalConfig(ks=(10,)))
    calls = []
    result = pretrain_data_parallel(*args, processes=1, progress=calls.append)
    assert calls and result.history
