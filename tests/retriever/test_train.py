"""Pretraining: the objective against a full softmax, sparse updates, learning, checkpoints."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

import recmodel.retriever.objective
import recmodel.retriever.train
from recmodel.core.config import EvalConfig, ModelConfig, QConfig, TrainConfig
from recmodel.retriever.batches import WindowBatcher, make_windows
from recmodel.retriever.checkpoint import CheckpointError, load_retriever, load_state
from recmodel.retriever.losses import full_softmax_loss
from recmodel.retriever.model import Retriever
from recmodel.retriever.negatives import NegativeSampler
from recmodel.retriever.objective import CandidateSampler, DeviceBatch, next_item_loss
from recmodel.retriever.optim import build_optimizer, lr_factor
from recmodel.retriever.progress import TrainingError
from recmodel.retriever.train import pretrain
from tests.helpers.retriever_data import cycle_dataset, item_features, one_thread

pytestmark = pytest.mark.usefixtures(one_thread.__name__)
CPU = torch.device("cpu")
MODEL = ModelConfig(
    d_model=32, n_blocks=1, n_heads=2, max_len=10, dropout=0.0, id_dim=16, meta_dim=4
)
TRAIN = TrainConfig(
    epochs=2,
    batch_size=32,
    lr=1e-2,
    sparse_lr=3e-2,
    warmup_steps=5,
    n_negatives=16,
    patience=10,
    device="cpu",
)
EVAL = EvalConfig(ks=(10,))


@pytest.fixture(scope="module")
def cycle():
    return cycle_dataset()


def run(dataset, train=TRAIN, model=MODEL, **kwargs):
    return pretrain(dataset, dataset.item_counts, model, train, QConfig(), EVAL, **kwargs)


class AllItems:
    """A stand-in sampler whose 'negatives' are the whole catalog with uniform Q."""

    def __init__(self, n_items):
        self.ids = torch.arange(1, n_items + 1)
        self.log_q = torch.full((n_items + 1,), -math.log(n_items))

    def to(self, device):
        return self

    def sample(self, n, generator):
        return self.ids, self.log_q[self.ids]


def first_step(dataset, max_len=MODEL.max_len, batch_size=16):
    batcher = WindowBatcher(make_windows(dataset.train(), max_len), batch_size, seed=0)
    return next(batcher.epoch(0))


def test_sampled_softmax_over_the_whole_catalog_equals_full_softmax(cycle):
    torch.manual_seed(0)
    model = Retriever(cycle.items, MODEL)
    candidates = CandidateSampler(
        "shared", cycle.n_items, AllItems(cycle.n_items), cycle.item_counts, 1.0
    )
    batch = DeviceBatch.from_step(first_step(cycle), CPU)
    loss = next_item_loss(model, batch, candidates, torch.Generator(), logq="all")
    hidden = model(batch.inputs).reshape(-1, MODEL.d_model)[batch.positions]  # [P, D]
    logits = model.head(hidden, model.tower.all_item_vectors())  # [P, N + 1]
    assert torch.allclose(loss, full_softmax_loss(logits, batch.targets), atol=1e-5)


def test_mixed_negatives_carry_the_mixture_log_q(cycle):
    counts = cycle.item_counts
    sampler = NegativeSampler(counts, alpha=0.5, uniform_mix=0.1, smoothing=1.0)
    candidates = CandidateSampler("both", 8, sampler, counts, 1.0)
    targets = torch.tensor([3, 3, 5, 1])
    neg_ids, neg_log_q, pos_log_q = candidates.draw(
        targets, torch.tensor([2, 3]), torch.Generator().manual_seed(0)
    )
    assert neg_ids[:4].tolist() == [3, 3, 5, 1] and len(neg_ids) == 12
    freq = (counts[1:] + 1.0) / (counts[1:] + 1.0).sum()
    proposal = np.exp(sampler.log_q.double().numpy()[1:])
    mixture = (4 * freq + 8 * proposal) / 12
    assert np.allclose(neg_log_q.numpy(), np.log(mixture[neg_ids.numpy() - 1]), atol=1e-5)
    assert np.allclose(pos_log_q.numpy(), np.log(mixture[[1, 2]]), atol=1e-5)


def test_in_batch_negatives_are_the_global_targets(cycle):
    candidates = CandidateSampler(
        "in_batch", 8, NegativeSampler(cycle.item_counts, 1, 0, 1), cycle.item_counts, 1.0
    )
    targets = torch.tensor([4, 2, 4])
    neg_ids, neg_log_q, _ = candidates.draw(targets, targets[:1], torch.Generator())
    assert neg_ids.tolist() == [4, 2, 4]
    assert torch.equal(neg_log_q, candidates.freq_log_q[targets])


def test_a_step_updates_only_the_rows_it_touched():
    dataset = cycle_dataset(n_items=200, n_users=4, length=12)
    torch.manual_seed(0)
    model = Retriever(dataset.items, MODEL)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = build_optimizer(
        model,
        lr=1e-2,
        sparse_lr=1e-2,
        weight_decay=0.1,
        warmup_steps=1,
        total_steps=10,
        grad_clip=1.0,
    )
    candidates = CandidateSampler(
        "in_batch", 1, NegativeSampler(dataset.item_counts, 1, 0, 1), dataset.item_counts, 1.0
    )
    step = first_step(dataset, batch_size=2)
    next_item_loss(
        model, DeviceBatch.from_step(step, CPU), candidates, torch.Generator(), "all"
    ).backward()
    optimizer.step()
    touched = np.setdiff1d(np.union1d(step.local.inputs, step.local.targets), [0])
    items = dataset.items
    rows = {"tower.id_embedding.weight": touched}
    for name in ("artist", "album", "genre", "tempo_bucket"):
        rows[f"tower.meta_embeddings.{name}.weight"] = np.unique(getattr(items, name)[touched])
    for name, param in model.named_parameters():
        if name not in rows:
            continue
        changed = (param.detach() != before[name]).any(dim=1).numpy()
        assert np.array_equal(np.flatnonzero(changed), rows[name]), name


def test_lr_schedule_exact():
    values = [lr_factor(s, warmup_steps=4, total_steps=12) for s in (0, 3, 4, 8, 12, 50)]
    assert np.allclose(values, [0.25, 1.0, 1.0, 0.55, 0.1, 0.1])


def test_learns_a_deterministic_cycle(cycle):
    result = run(cycle, dataclasses.replace(TRAIN, epochs=8))
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert max(h["ndcg@10"] for h in result.history) > 0.95
    assert result.history[result.best_epoch]["ndcg@10"] == max(h["ndcg@10"] for h in result.history)


def test_history_progress_and_checkpoint_round_trip(cycle):
    reports = []
    result = run(cycle, dataclasses.replace(TRAIN, epochs=2), progress=reports.append)
    assert [h["epoch"] for h in result.history] == [0, 1]
    assert {"loss", "ndcg@10", "recall@10", "seconds", "positions_per_s"} <= set(result.history[0])
    steps = [r for r in reports if "step" in r]  # the monitor's step records
    assert steps and steps[-1]["step"] == 2 * 6  # 180 windows / 32 = 6 steps per epoch
    assert {"step", "epoch", "loss", "steps_per_s", "positions_per_s", "eta_s"} <= set(steps[0])
    assert [r for r in reports if "step" not in r] == result.history  # then each epoch's row
    config = json.loads(json.dumps(result.model_config))
    loaded = load_retriever(result.checkpoint, config, cycle.items)
    users = np.arange(cycle.n_users)
    history = cycle.train()
    assert torch.equal(
        loaded.user_vectors(history, users), result.model.user_vectors(history, users)
    )
    assert np.array_equal(
        loaded.recommend(history, users, 5)[0], result.model.recommend(history, users, 5)[0]
    )


def test_checkpoint_rejects_other_metadata(cycle):
    result = run(cycle, dataclasses.replace(TRAIN, epochs=1))
    with pytest.raises(CheckpointError, match="n_items"):
        load_retriever(result.checkpoint, result.model_config, item_features(cycle.n_items + 1))


def test_early_stopping_keeps_the_best_epoch(cycle, monkeypatch):
    scripted, snapshots = iter([0.1, 0.3, 0.2, 0.25, 0.9]), []

    def evaluate(model, *args):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"ndcg@10": next(scripted)}

    monkeypatch.setattr(recmodel.retriever.train, "evaluate_retriever", evaluate)
    result = run(cycle, dataclasses.replace(TRAIN, epochs=5, patience=2))
    assert [h["ndcg@10"] for h in result.history] == [0.1, 0.3, 0.2, 0.25]
    assert result.best_epoch == 1
    final = result.model.state_dict()
    assert all(torch.equal(final[k], snapshots[1][k]) for k in final)
    assert not all(torch.equal(final[k], snapshots[3][k]) for k in final)
    checkpoint = load_state(result.checkpoint)
    assert all(torch.equal(checkpoint[k], snapshots[1][k]) for k in final)


def test_frozen_embedding_tables_do_not_move(cycle):
    result = run(cycle, dataclasses.replace(TRAIN, epochs=1, sparse_lr=0.0))
    torch.manual_seed(TRAIN.seed)
    initial = Retriever(cycle.items, MODEL).state_dict()
    final = result.model.state_dict()
    assert torch.equal(final["tower.id_embedding.weight"], initial["tower.id_embedding.weight"])
    assert not torch.equal(final["tower.proj.weight"], initial["tower.proj.weight"])


def test_same_seed_same_weights_other_seed_other_weights(cycle):
    noisy = dataclasses.replace(MODEL, dropout=0.2)
    train = dataclasses.replace(TRAIN, epochs=1)
    first, second = (load_state(run(cycle, train, noisy).checkpoint) for _ in range(2))
    assert all(torch.equal(first[k], second[k]) for k in first)
    third = load_state(run(cycle, dataclasses.replace(train, seed=1), noisy).checkpoint)
    assert not all(torch.equal(first[k], third[k]) for k in first)


def test_non_finite_loss_names_step_and_batch(cycle, monkeypatch):
    real, calls = recmodel.retriever.objective.sampled_softmax_loss, []

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * math.nan if len(calls) == 8 else loss

    monkeypatch.setattr(recmodel.retriever.objective, "sampled_softmax_loss", poisoned)
    with pytest.raises(TrainingError, match=r"nan at step 8 \(epoch 1, batch 1 of 6\)"):
        run(cycle, dataclasses.replace(TRAIN, epochs=3))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_learns_a_cycle_on_cuda_with_bf16_autocast(cycle):
    result = run(cycle, dataclasses.replace(TRAIN, epochs=8, device="cuda"))
    assert result.model.device.type == "cuda"
    assert max(h["ndcg@10"] for h in result.history) > 0.95
