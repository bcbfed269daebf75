"""The next-item objective that pretraining and finetuning share, against a plain computation."""

import numpy as np
import pytest
import torch

from recmodel.core.config import ModelConfig, QConfig, TrainConfig
from recmodel.retriever.fitting import EarlyStopping
from recmodel.retriever.losses import sampled_softmax_loss
from recmodel.retriever.model import Retriever
from recmodel.retriever.objective import (
    CandidateSampler,
    DeviceBatch,
    next_item_loss,
    window_targets,
)
from tests.helpers.retriever_data import item_features, one_thread  # noqa: F401

N_ITEMS = 40
MODEL = ModelConfig(d_model=16, n_blocks=1, n_heads=2, max_len=8, dropout=0.0, id_dim=8, meta_dim=4)


def _model() -> Retriever:
    torch.manual_seed(0)
    model = Retriever(item_features(N_ITEMS), MODEL).eval()
    with torch.no_grad():  # a bonus that matters: repeats score far from their dot product
        model.repeat.count.weight.copy_(
            torch.linspace(0.0, 3.0, model.repeat.count.num_embeddings)[:, None]
        )
        model.repeat.recency.weight.uniform_(-1.0, 1.0)
        model.repeat.propensity.weight.normal_(std=0.3)
    return model


@pytest.mark.parametrize("negatives", ["shared", "in_batch", "both"])
def test_request_loss_is_sampled_softmax_over_the_served_logits(one_thread, negatives):  # noqa: F811
    """At the last position, the trained logit of every candidate is the one serving ranks by."""
    model = _model()
    queries = torch.tensor(
        [[0, 0, 3, 5, 3, 7, 3, 9], [1, 2, 4, 6, 8, 10, 12, 14], [0, 0, 0, 0, 0, 5, 6, 5]]
    )
    targets = torch.tensor([3, 0, 11])  # a re-listened track, no target, an unheard track
    counts = np.r_[0, np.arange(N_ITEMS, 0, -1)].astype(np.int64)
    train = TrainConfig(negatives=negatives, n_negatives=6, logq="negatives_only")
    candidates = CandidateSampler.from_config(counts, train, QConfig())
    batch = DeviceBatch.at_last_position(queries, targets)
    assert batch.positions.tolist() == [7, 23] and batch.n_global == 2

    gen = torch.Generator().manual_seed(5)
    loss = next_item_loss(model, batch, candidates, gen, train.logq)

    gen = torch.Generator().manual_seed(5)  # the same negatives, drawn again
    neg_ids, neg_log_q, pos_log_q = candidates.draw(batch.global_targets, batch.targets, gen)
    rows = torch.tensor([0, 2])
    ids = torch.cat([batch.targets[:, None], neg_ids.expand(2, -1)], dim=1)  # [2, 1 + M]
    _, served = model.candidate_logits(queries[rows], ids)  # what recommend() ranks by
    expected = sampled_softmax_loss(
        served[:, 0],
        served[:, 1:],
        batch.targets,
        neg_ids,
        pos_log_q,
        neg_log_q,
        logq=train.logq,
    )
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    # The repeat bonus is in it: without the bonus the re-listened track scores otherwise.
    plain = model.head.pairwise(model(queries[:1])[:, -1], model.item_vectors(targets[:1]))
    assert abs(float(served[0, 0] - plain[0])) > 0.1


def test_shared_hidden_states_give_the_same_loss(one_thread):  # noqa: F811
    model = _model()
    queries = torch.tensor([[0, 4, 5, 4, 6, 7, 8, 4], [9, 9, 1, 2, 3, 4, 5, 6]])
    batch = DeviceBatch.at_last_position(queries, torch.tensor([4, 2]))
    counts = np.r_[0, np.ones(N_ITEMS)].astype(np.int64)
    candidates = CandidateSampler.from_config(counts, TrainConfig(n_negatives=5), QConfig())
    own = next_item_loss(model, batch, candidates, torch.Generator().manual_seed(1), "all")
    given = next_item_loss(
        model, batch, candidates, torch.Generator().manual_seed(1), "all", hidden=model(queries)
    )
    torch.testing.assert_close(own, given)


def test_no_target_gives_a_zero_loss():
    model = _model()
    batch = DeviceBatch.at_last_position(
        torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]]), torch.tensor([0])
    )
    counts = np.r_[0, np.ones(N_ITEMS)].astype(np.int64)
    candidates = CandidateSampler.from_config(counts, TrainConfig(), QConfig())
    assert float(next_item_loss(model, batch, candidates, torch.Generator(), "all")) == 0.0


def test_early_stopping_keeps_the_best_and_counts_stale_epochs():
    stopping = EarlyStopping(patience=2)
    assert [stopping.update(e, s) for e, s in enumerate([0.1, 0.3, 0.2, 0.3, 0.5])] == [
        True, True, False, False, True,
    ]  # fmt: skip
    assert (stopping.epoch, stopping.score, stopping.stale, stopping.stop) == (4, 0.5, 0, False)
    stopping.update(5, 0.4)
    stopping.update(6, 0.4)
    assert stopping.stop and stopping.epoch == 4
    assert EarlyStopping(patience=1).update(0, float("nan"))  # no validation: keep the last


def test_window_targets_match_a_plain_loop():
    rng = np.random.default_rng(2)
    inputs = torch.from_numpy(rng.integers(1, 12, size=(4, 7)))
    inputs[1, :3] = 0  # left padding: no targets there
    positions = torch.nonzero(inputs.reshape(-1) > 0).flatten()
    targets = torch.from_numpy(rng.integers(1, 12, size=len(positions)))
    batch = DeviceBatch(inputs, positions, targets, targets, len(targets))
    neg_ids = torch.tensor([0, 1, 3, 5, 7, 11, 13])  # 0: a padding column; 13: no target
    got = window_targets(batch, neg_ids)
    rows = (positions // 7).tolist()
    for p, row in enumerate(rows):
        own = {int(targets[q]) for q in range(len(rows)) if rows[q] == row}
        want = [int(j) in own and int(j) > 0 for j in neg_ids]
        assert got[p].tolist() == want


def test_masked_negatives_leave_the_softmax():
    """A masked negative changes nothing, as if it had not been drawn."""
    rng = np.random.default_rng(4)
    pos, neg = torch.randn(5), torch.randn(5, 6)
    pos_ids, neg_ids = torch.tensor([1, 2, 3, 4, 5]), torch.tensor([6, 7, 8, 9, 10, 11])
    pos_lq, neg_lq = -torch.rand(5) * 3, -torch.rand(6) * 3
    masked = torch.from_numpy(rng.random((5, 6)) < 0.4)
    for logq in ("all", "none", "negatives_only"):
        got = sampled_softmax_loss(
            pos, neg, pos_ids, neg_ids, pos_lq, neg_lq, logq=logq, masked=masked
        )
        per_row = []
        for p in range(5):
            keep = ~masked[p]
            per_row.append(
                sampled_softmax_loss(
                    pos[p : p + 1],
                    neg[p : p + 1, keep],
                    pos_ids[p : p + 1],
                    neg_ids[keep],
                    pos_lq[p : p + 1],
                    neg_lq[keep],
                    logq=logq,
                )
            )
        torch.testing.assert_close(got, torch.stack(per_row).mean(), rtol=1e-5, atol=1e-6)
