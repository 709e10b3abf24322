from __future__ import annotations

import pytest
import torch
from torch import nn

from monai_shpeft.sparse_set import CompactSparseUpdate, SparseTrainableSet


def small_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def set_of(model: nn.Module, picks: dict[str, list[int]]) -> SparseTrainableSet:
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    return SparseTrainableSet(indices={n: torch.tensor(i) for n, i in picks.items()}, shapes=shapes, scope=None)


PICKS = {"0.weight": [0, 7, 29], "2.bias": [1]}


def test_gradients_of_several_backward_passes_accumulate_on_the_selected_entries() -> None:
    model, reference = small_model(), small_model()
    update = CompactSparseUpdate(dict(model.named_parameters()), set_of(model, PICKS), optimizer=None)
    inputs = [torch.randn(4, 6), torch.randn(4, 6)]
    for batch in inputs:
        model(batch).square().sum().backward()
        reference(batch).square().sum().backward()
    params = dict(model.named_parameters())
    expected = dict(reference.named_parameters())
    for slot in update.slots:
        assert params[slot.name].grad is None, "the dense gradient must be dropped"
        torch.testing.assert_close(slot.values.grad, expected[slot.name].grad.reshape(-1)[slot.index])
    # tensors outside the set keep their dense gradients as usual
    torch.testing.assert_close(params["2.weight"].grad, expected["2.weight"].grad)


def test_step_changes_only_selected_entries_and_pull_takes_up_outside_changes() -> None:
    model = small_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trained = [p for n, p in model.named_parameters() if n in PICKS]
    optimizer = torch.optim.AdamW(trained, lr=0.1, weight_decay=0.5)
    update = CompactSparseUpdate(dict(model.named_parameters()), set_of(model, PICKS), optimizer)
    assert update.num_values == 4
    assert [p for g in optimizer.param_groups for p in g["params"]] == update.values()
    for _ in range(3):
        update.pull()
        optimizer.zero_grad()
        model(torch.randn(4, 6)).sum().backward()
        optimizer.step()
        update.push()
    for name, param in model.named_parameters():
        changed = (param.detach() != before[name]).reshape(-1).nonzero().flatten().tolist()
        assert changed == PICKS.get(name, []), name
    # a change made to the dense weights between steps (a loaded checkpoint) is what the next step starts from
    with torch.no_grad():
        model[0].weight.view(-1)[7] = 42.0
    update.pull()
    assert update.slots[0].values[1].item() == 42.0


def test_existing_optimizer_state_is_gathered_and_remove_restores_the_dense_tensors() -> None:
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 6)).sum().backward()
    optimizer.step()
    dense_weight = model[0].weight
    momentum = optimizer.state[dense_weight]["momentum_buffer"].clone()
    update = CompactSparseUpdate(dict(model.named_parameters()), set_of(model, PICKS), optimizer)
    values = update.slots[0].values
    assert dense_weight not in optimizer.state
    torch.testing.assert_close(optimizer.state[values]["momentum_buffer"], momentum.reshape(-1)[[0, 7, 29]])
    update.remove()
    assert [p for g in optimizer.param_groups for p in g["params"]] == list(model.parameters())
    model(torch.randn(4, 6)).sum().backward()
    assert dense_weight.grad is not None and dense_weight.grad.shape == dense_weight.shape


def test_non_contiguous_parameter_is_refused() -> None:
    model = small_model()
    model[0].weight = nn.Parameter(model[0].weight.detach().t().contiguous().t())
    with pytest.raises(ValueError, match="contiguous"):
        CompactSparseUpdate(dict(model.named_parameters()), set_of(model, PICKS), optimizer=None)
