from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from monai_shpeft.importance import (
    NonFiniteGradientError,
    combine_importance,
    estimate_importance,
    scoped_parameters,
    task_agnostic_importance,
)


class TwoLayer(nn.Module):
    """y = W2 (W1 x + b1) + b2, with hand-set weights so gradients can be computed on paper."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, 2)
        self.fc2 = nn.Linear(2, 1)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.tensor([[0.5, -1.0], [2.0, 0.25]]))
            self.fc1.bias.copy_(torch.tensor([0.1, -0.2]))
            self.fc2.weight.copy_(torch.tensor([[1.5, -0.5]]))
            self.fc2.bias.copy_(torch.tensor([0.3]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x))


def half_squared_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 0.5 * (pred - target) ** 2


BATCHES = [
    {"image": torch.tensor([[1.0, 2.0]]), "label": torch.tensor([[0.5]])},
    {"image": torch.tensor([[-1.0, 0.5]]), "label": torch.tensor([[-2.0]])},
]


def hand_gradients(model: TwoLayer) -> list[dict[str, np.ndarray]]:
    """Gradients of 0.5 (y - t)^2 for each batch, by the chain rule in numpy."""
    w1 = model.fc1.weight.detach().numpy()
    b1 = model.fc1.bias.detach().numpy()
    w2 = model.fc2.weight.detach().numpy()
    b2 = model.fc2.bias.detach().numpy()
    result = []
    for batch in BATCHES:
        x = batch["image"].numpy()[0]
        t = batch["label"].numpy()[0]
        h = w1 @ x + b1
        y = w2 @ h + b2
        r = y - t  # dL/dy
        dh = w2.T @ r
        result.append({"fc1.weight": np.outer(dh, x), "fc1.bias": dh, "fc2.weight": np.outer(r, h), "fc2.bias": r})
    return result


@pytest.mark.parametrize("strategy", ["l1", "l2"])
def test_task_specific_importance_matches_hand_computation(strategy: str) -> None:
    model = TwoLayer()
    grads = hand_gradients(model)
    importance = estimate_importance(
        model, BATCHES, half_squared_error, strategy=strategy, mode="task_specific", scope=None
    )
    for name, value in importance.items():
        g1, g2 = grads[0][name], grads[1][name]
        expected = np.abs(g1 + g2) if strategy == "l1" else g1**2 + g2**2
        np.testing.assert_allclose(value.numpy(), expected.reshape(value.shape), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("strategy", ["l1", "l2"])
def test_hybrid_importance_balances_the_two_terms(strategy: str) -> None:
    model = TwoLayer()
    grads = hand_gradients(model)
    lambda_ = 0.7
    importance = estimate_importance(model, BATCHES, half_squared_error, strategy=strategy, lambda_=lambda_, scope=None)
    weights = {n: p.detach().numpy() for n, p in model.named_parameters()}
    td = {
        n: (np.abs(grads[0][n] + grads[1][n]) if strategy == "l1" else grads[0][n] ** 2 + grads[1][n] ** 2)
        for n in weights
    }
    ta = {n: (np.abs(w) if strategy == "l1" else w**2) for n, w in weights.items()}
    balance = sum(v.sum() for v in td.values()) / sum(v.sum() for v in ta.values())
    for name, value in importance.items():
        expected = td[name].reshape(value.shape) + lambda_ * balance * ta[name]
        np.testing.assert_allclose(value.numpy(), expected, rtol=1e-5, atol=1e-7)
    # after balancing, the task-agnostic term carries the same total as the task-specific one
    total_td = sum(v.sum() for v in td.values())
    total = sum(float(v.sum()) for v in importance.values())
    assert total == pytest.approx(total_td * (1 + lambda_), rel=1e-5)


def test_task_agnostic_mode_needs_no_data_and_is_the_weight_magnitude() -> None:
    model = TwoLayer()
    importance = estimate_importance(model, [], half_squared_error, strategy="l1", mode="task_agnostic", scope=None)
    for name, param in model.named_parameters():
        assert torch.equal(importance[name], param.detach().abs())


def test_modes_rank_differently() -> None:
    td = {"a": torch.tensor([4.0, 0.0, 0.0]), "b": torch.tensor([0.0, 1.0])}
    ta = {"a": torch.tensor([0.0, 0.0, 3.0]), "b": torch.tensor([5.0, 0.0])}
    specific = combine_importance(td, ta, mode="task_specific")
    agnostic = combine_importance(td, ta, mode="task_agnostic")
    hybrid = combine_importance(td, ta, lambda_=1.0, mode="hybrid")
    assert int(torch.argmax(specific["a"])) == 0 and int(torch.argmax(agnostic["a"])) == 2
    # balance = 5 / 8: hybrid a = [4, 0, 1.875], b = [3.125, 1]
    assert torch.allclose(hybrid["a"], torch.tensor([4.0, 0.0, 1.875]))
    assert torch.allclose(hybrid["b"], torch.tensor([3.125, 1.0]))
    with pytest.raises(ValueError, match="needs the task-specific"):
        combine_importance(None, ta, mode="hybrid")


def test_estimation_leaves_the_model_unchanged() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    model[2].weight.requires_grad_(False)  # a flag the estimation must put back
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = [{"image": torch.randn(5, 4), "label": torch.randint(0, 3, (5,))} for _ in range(3)]
    estimate_importance(model, loader, nn.CrossEntropyLoss(), scope=None)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics included
    assert all(p.grad is None for p in model.parameters())
    assert model[2].weight.requires_grad is False and model[0].weight.requires_grad is True
    assert not model.training


def test_num_iterations_counts_batches_and_wraps_around() -> None:
    model = TwoLayer()
    once = estimate_importance(
        model, BATCHES[:1], half_squared_error, strategy="l2", mode="task_specific", scope=None, num_iterations=1
    )
    thrice = estimate_importance(
        model, BATCHES[:1], half_squared_error, strategy="l2", mode="task_specific", scope=None, num_iterations=3
    )
    for name in once:
        assert torch.allclose(thrice[name], 3 * once[name])


def test_non_finite_gradient_is_reported_with_parameter_and_batch() -> None:
    model = TwoLayer()
    bad = [BATCHES[0], {"image": torch.tensor([[float("nan"), 1.0]]), "label": torch.tensor([[0.0]])}]
    with pytest.raises(NonFiniteGradientError, match=r"'fc\d\.(weight|bias)' is NaN at mini-batch 1"):
        estimate_importance(model, bad, half_squared_error, scope=None)


def test_empty_loader_is_an_error() -> None:
    with pytest.raises(ValueError, match="no mini-batch"):
        estimate_importance(TwoLayer(), [], half_squared_error, scope=None)


def test_scope_selects_the_backbone_and_reports_a_missing_one() -> None:
    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Linear(3, 3)
            self.head = nn.Linear(3, 2)

    names = list(scoped_parameters(Classifier(), "backbone"))
    assert names == ["backbone.weight", "backbone.bias"]
    with pytest.raises(ValueError, match="no submodule 'backbone'"):
        scoped_parameters(TwoLayer(), "backbone")


def test_task_agnostic_importance_strategies() -> None:
    w = {"w": torch.tensor([-2.0, 0.5])}
    assert torch.equal(task_agnostic_importance(w, "l1")["w"], torch.tensor([2.0, 0.5]))
    assert torch.equal(task_agnostic_importance(w, "l2")["w"], torch.tensor([4.0, 0.25]))


def reference_importance(
    model: nn.Module, batches: list[dict[str, torch.Tensor]], strategy: str
) -> dict[str, torch.Tensor]:
    """The task-specific term by ``torch.autograd.grad`` on whole mini-batches, kept apart from the estimator."""
    params = dict(model.named_parameters())
    terms = {n: torch.zeros_like(p) for n, p in params.items()}
    for batch in batches:
        loss = nn.functional.cross_entropy(model(batch["image"]), batch["label"])
        for (name, _), grad in zip(params.items(), torch.autograd.grad(loss, list(params.values()))):
            terms[name] += grad if strategy == "l1" else grad * grad
    return {n: t.abs() if strategy == "l1" else t for n, t in terms.items()}


def classification_batches(count: int = 3, size: int = 8) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        {"image": torch.randn(size, 6, generator=generator), "label": torch.randint(0, 3, (size,), generator=generator)}
        for _ in range(count)
    ]


@pytest.mark.parametrize("strategy", ["l1", "l2"])
@pytest.mark.parametrize("micro_batch_size", [None, 3, 8, 100])
def test_micro_batches_add_up_to_each_mini_batch_gradient(strategy: str, micro_batch_size: int | None) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    batches = classification_batches()
    expected = reference_importance(model, batches, strategy)
    found = estimate_importance(
        model,
        batches,
        nn.CrossEntropyLoss(),
        strategy=strategy,
        mode="task_specific",
        scope=None,
        micro_batch_size=micro_batch_size,
    )
    for name in expected:
        torch.testing.assert_close(found[name], expected[name], rtol=1e-5, atol=1e-9)
    assert all(p.grad is None for p in model.parameters())


def test_each_gradient_is_folded_and_dropped_as_soon_as_backward_produces_it() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 3))
    params = list(model.parameters())
    alive: list[int] = []
    handles: list[object] = []

    def watching_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        for handle in handles:
            handle.remove()  # type: ignore[attr-defined]
        handles.clear()
        for param in params:  # runs after the estimator's own hook on the same tensor
            handles.append(
                param.register_post_accumulate_grad_hook(
                    lambda _: alive.append(sum(q.grad is not None for q in params))
                )
            )
        return nn.functional.cross_entropy(logits, target)

    estimate_importance(model, classification_batches(), watching_loss, mode="task_specific", scope=None)
    assert len(alive) == 3 * len(params)
    assert max(alive) == 0, "a dense gradient outlived its fold into the importance buffer"
    alive.clear()
    estimate_importance(
        model, classification_batches(), watching_loss, mode="task_specific", scope=None, micro_batch_size=4
    )
    # the first half of each mini-batch keeps its gradients for the second half to add to; the second half folds them
    assert max(alive) == len(params) and alive[-1] == 0


@pytest.mark.parametrize("bad", [0, -2, True])
def test_micro_batch_size_must_be_positive(bad: object) -> None:
    with pytest.raises(ValueError, match="micro_batch_size"):
        estimate_importance(
            nn.Linear(6, 3), classification_batches(1), nn.CrossEntropyLoss(), scope=None, micro_batch_size=bad
        )  # type: ignore[arg-type]
