"""The lazy sparse Adam against torch's SparseAdam, the reference it must equal."""

import copy

import pytest
import torch
from torch import nn

from recmodel.retriever.optim import LazyAdam


def _steps(optimizer_cls, table: nn.Embedding, batches: list[torch.Tensor], **kwargs):
    opt = optimizer_cls(table.parameters(), **kwargs)
    for ids in batches:
        opt.zero_grad()
        # Duplicated ids make an uncoalesced gradient, as a batch with repeated tracks does.
        (table(ids) ** 2).sum().backward()
        opt.step()
    return table.weight.detach(), opt.state[table.weight]


@pytest.mark.parametrize("maximize", [False, True])
def test_lazy_adam_equals_sparse_adam(maximize):
    torch.manual_seed(0)
    table = nn.Embedding(500, 8, sparse=True)
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 500, (64,), generator=generator) for _ in range(6)]
    options = {"lr": 0.05, "betas": (0.9, 0.98), "maximize": maximize}
    ref_weight, ref_state = _steps(torch.optim.SparseAdam, copy.deepcopy(table), batches, **options)
    weight, state = _steps(LazyAdam, copy.deepcopy(table), batches, **options)
    assert torch.equal(weight, ref_weight)
    assert state["step"] == ref_state["step"] == len(batches)
    assert torch.equal(state["exp_avg"], ref_state["exp_avg"])
    assert torch.equal(state["exp_avg_sq"], ref_state["exp_avg_sq"])
    untouched = torch.ones(500, dtype=torch.bool)
    untouched[torch.cat(batches)] = False
    assert torch.equal(weight[untouched], table.weight.detach()[untouched])


def test_lazy_adam_state_loads_into_sparse_adam():
    """The state dict keeps SparseAdam's layout, so saved training states stay resumable."""
    table = nn.Embedding(50, 4, sparse=True)
    opt = LazyAdam(table.parameters(), lr=0.1)
    table(torch.tensor([1, 2, 2])).sum().backward()
    opt.step()
    ref = torch.optim.SparseAdam(table.parameters(), lr=0.1)
    ref.load_state_dict(opt.state_dict())
    assert ref.state[table.weight]["step"] == 1


def test_lazy_adam_rejects_dense_gradients():
    weight = nn.Parameter(torch.zeros(3, 2))
    opt = LazyAdam([weight], lr=0.1)
    weight.grad = torch.ones(3, 2)
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()
