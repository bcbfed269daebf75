"""The repeat bonus against plain loops, causality, and repeat-aware top-k against a full sort."""

import numpy as np
import pytest
import torch

from recmodel.core.config import ModelConfig
from recmodel.retriever.batches import last_items
from recmodel.retriever.model import Retriever
from recmodel.retriever.repeat import COUNT_EDGES, RECENCY_EDGES, RepeatBias
from tests.helpers.retriever_data import item_features, one_thread, user_items  # noqa: F401

N_ITEMS, D = 30, 8


def _bucket(value: int, edges: tuple[int, ...]) -> int:
    return sum(value >= e for e in edges)


@pytest.fixture
def head():
    torch.manual_seed(0)
    module = RepeatBias(D, N_ITEMS)
    with torch.no_grad():  # non-zero weights, so every term is visible
        for param in module.parameters():
            param.normal_()
    return module


def _windows(seed=0, b=5, t=12):
    rng = np.random.default_rng(seed)
    inputs = rng.integers(1, 8, size=(b, t))  # few distinct items: many repeats
    inputs[0, :4] = 0  # left padding
    inputs[1, :] = 0
    inputs[1, -1] = 3
    return torch.as_tensor(inputs), torch.randn(b, t, D)


def _reference(head, inputs, hidden, b, t, item):
    """Bonus of ``item`` at position ``t`` of row ``b`` by a plain loop."""
    seen = [s for s in range(t + 1) if inputs[b, s] == item and item != 0]
    if not seen:
        return 0.0
    count, since = len(seen), t - max(seen)
    return float(
        head.count.weight[_bucket(count, COUNT_EDGES), 0]
        + head.recency.weight[_bucket(since, RECENCY_EDGES), 0]
        + head.propensity(hidden[b, t]).squeeze()
    )


@torch.no_grad()
def test_bias_matches_a_plain_loop(head):
    inputs, hidden = _windows()
    ids = torch.as_tensor(np.random.default_rng(1).integers(0, 10, size=(5, 6)))
    got = head.bias(inputs, hidden, ids)  # [B, T, C]
    for b in range(5):
        for t in range(12):
            for c in range(6):
                want = _reference(head, inputs, hidden, b, t, int(ids[b, c]))
                assert got[b, t, c].item() == pytest.approx(want, abs=1e-5)


def test_bias_gradients_match_a_plain_loop(head):
    """The one-gather pair table gives the gradients of the per-entry formula."""
    inputs, hidden = _windows(seed=4)
    hidden.requires_grad_(True)
    ids = torch.as_tensor(np.random.default_rng(5).integers(0, 10, size=(5, 6)))
    weights = torch.randn(5, 12, 6, generator=torch.Generator().manual_seed(6))

    def grads(loss):
        params = [*head.parameters(), hidden]
        return torch.autograd.grad(loss, params, allow_unused=True)

    fast = grads((head.bias(inputs, hidden, ids) * weights).sum())
    loop = torch.zeros((), dtype=torch.float32)
    for b in range(5):
        for t in range(12):
            for c in range(6):
                item = int(ids[b, c])
                seen = [s for s in range(t + 1) if inputs[b, s] == item and item != 0]
                if seen:
                    count, since = len(seen), t - max(seen)
                    value = (
                        head.count.weight[_bucket(count, COUNT_EDGES), 0]
                        + head.recency.weight[_bucket(since, RECENCY_EDGES), 0]
                        + head.propensity(hidden[b, t]).squeeze()
                    )
                    loop = loop + weights[b, t, c] * value
    slow = grads(loop)
    assert len(fast) == 5  # count, recency, propensity weight and bias, hidden states
    for got, want in zip(fast, slow, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert slow[0].abs().sum() > 0 and slow[1].abs().sum() > 0  # both tables get gradients


@torch.no_grad()
def test_diagonal_and_last_bias_agree_with_bias(head):
    inputs, hidden = _windows(seed=2)
    targets = torch.as_tensor(np.random.default_rng(3).integers(1, 9, size=(5, 12)))
    diagonal = head.diagonal_bias(inputs, hidden, targets)
    full = head.bias(inputs, hidden, targets)  # [B, T, T]: candidate c at position t
    torch.testing.assert_close(diagonal, torch.diagonal(full, dim1=1, dim2=2))
    last = head.last_bias(inputs, hidden[:, -1], targets)
    expected = [
        [
            _reference(head, inputs, hidden[:, -1:].expand(-1, 12, -1), b, 11, int(j))
            for j in targets[b]
        ]
        for b in range(5)
    ]
    torch.testing.assert_close(last, torch.tensor(expected), atol=1e-5, rtol=0)


@torch.no_grad()
def test_first_positions_exact():
    head = RepeatBias(D, 9)
    inputs = torch.tensor([[0, 0, 5, 3, 5, 9], [2, 2, 2, 2, 2, 2]])
    ids = torch.tensor([[5, 3, 9, 2, 0, -1], [2, 5, 9, 3, 0, 2]])
    assert head.first_positions(inputs, ids).tolist() == [
        [2, 3, 5, -1, -1, -1],
        [0, -1, -1, -1, -1, 0],
    ]


@torch.no_grad()
def test_bias_is_causal(head):
    inputs, hidden = _windows(seed=4)
    ids = torch.arange(1, 9).expand(5, -1)
    before = head.bias(inputs, hidden, ids)
    changed = inputs.clone()
    changed[:, 8:] = 7  # rewrite the future of position 7
    after = head.bias(changed, hidden, ids)
    torch.testing.assert_close(before[:, :8], after[:, :8])


def test_zero_initialised_bonus_changes_nothing():
    inputs, hidden = _windows()
    assert not RepeatBias(D, N_ITEMS).bias(inputs, hidden, inputs).any()


@torch.no_grad()
def test_recommend_equals_a_full_sort_of_dot_plus_bonus(one_thread):  # noqa: F811
    torch.manual_seed(0)
    items = item_features(N_ITEMS)
    model = Retriever(
        items, ModelConfig(d_model=D, n_heads=2, n_blocks=1, max_len=6, id_dim=8, meta_dim=4)
    ).eval()
    for param in model.repeat.parameters():
        param.normal_(std=3.0)  # big enough to lift window items into the top-k
    rng = np.random.default_rng(0)
    histories = user_items([list(rng.integers(1, N_ITEMS + 1, size=n)) for n in (9, 3, 0, 6)])
    users = np.arange(4)
    got_ids, got_scores = model.recommend(histories, users, k=5, chunk_items=7)

    hidden = model.user_vectors(histories, users)
    queries = model.head.user_side(hidden)
    vectors = model.head.item_side(model.tower.all_item_vectors())
    window = torch.from_numpy(last_items(histories, users, 6))
    every = torch.arange(1, N_ITEMS + 1).expand(4, -1)
    full = queries @ vectors[1:].T + model.repeat.last_bias(window, hidden, every)  # [U, N]
    want_scores, want_at = torch.sort(full, dim=1, descending=True)
    np.testing.assert_allclose(got_scores, want_scores[:, :5].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got_ids, (want_at[:, :5] + 1).numpy())


def test_small_table_lookup_equals_indexing():
    """Values and gradient of the bincount path equal those of plain indexing."""
    from recmodel.retriever.repeat import SmallTableLookup

    generator = torch.Generator().manual_seed(3)
    index = torch.randint(0, 56, (4, 9, 9), generator=generator)
    upstream = torch.randn(4, 9, 9, generator=generator, dtype=torch.float64)
    table = torch.randn(56, dtype=torch.float64, requires_grad=True)
    reference = torch.randn(56, dtype=torch.float64)
    reference.copy_(table.detach())
    reference.requires_grad_(True)
    out = SmallTableLookup.apply(table, index)
    expected = reference[index]
    assert torch.equal(out, expected)
    (out * upstream).sum().backward()
    (expected * upstream).sum().backward()
    torch.testing.assert_close(table.grad, reference.grad, rtol=1e-12, atol=1e-12)
