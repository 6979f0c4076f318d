"""IRM: DomainBed's IRMv1 penalty (dummy-scale gradients on two halves), its weight schedule and Adam restart."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from fishr_tune.algorithms.irm import IRM, dummy_scale_gradient, irm_penalty
from fishr_tune.hparams import apply_overrides, default_hparams, hparam_space

INPUT_SHAPE = (2, 14, 14)
DATASET = "ColoredMNIST-IRM"


def make_irm(**overrides: Any) -> IRM:
    values = {"hidden_dim": 16, "irm_penalty_anneal_iters": 2, "irm_lambda": 50.0, **overrides}
    torch.manual_seed(0)
    return IRM(INPUT_SHAPE, 2, 2, apply_overrides("IRM", DATASET, default_hparams("IRM", DATASET), values))


def batches(n_steps: int, sizes: tuple[int, ...] = (11, 8)) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    generator = torch.Generator().manual_seed(0)
    return [
        [(torch.rand(n, *INPUT_SHAPE, generator=generator), torch.randint(2, (n,), generator=generator)) for n in sizes]
        for _ in range(n_steps)
    ]


def autograd_penalty(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """DomainBed's definition, spelled with a dummy scale and autograd (the test's independent reference)."""
    scale = torch.tensor(1.0, dtype=logits.dtype, requires_grad=True)
    loss_1 = F.cross_entropy(logits[::2] * scale, labels[::2])
    loss_2 = F.cross_entropy(logits[1::2] * scale, labels[1::2])
    grad_1 = torch.autograd.grad(loss_1, [scale], create_graph=True)[0]
    grad_2 = torch.autograd.grad(loss_2, [scale], create_graph=True)[0]
    return (grad_1 * grad_2).sum()


def test_hyperparameters_are_domainbeds() -> None:
    space = hparam_space("IRM", DATASET)
    assert space["irm_lambda"].default == 1e2 and space["irm_lambda"].dist.bounds == pytest.approx((0.1, 1e5))
    anneal = space["irm_penalty_anneal_iters"]
    assert anneal.default == 500 and anneal.dist.bounds == pytest.approx((1, 1e4)) and anneal.dist.integer


def test_penalty_by_hand() -> None:
    """Two samples: [1, 0] labelled 1 and [0, 2] labelled 0; each half's dummy-scale gradient is <p - onehot, l>."""
    logits = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([1, 0])
    first = math.e / (math.e + 1)  # <[p0, p1 - 1], [1, 0]> = p0
    second = math.exp(2) / (1 + math.exp(2)) * 2  # <[p0 - 1, p1], [0, 2]> = 2 p1
    assert irm_penalty(logits, labels).item() == pytest.approx(first * second, rel=1e-6)


def test_penalty_and_its_gradient_match_the_dummy_scale_definition() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(9, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(3, (9,), generator=generator)
    ours, theirs = irm_penalty(logits, labels), autograd_penalty(logits, labels)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(torch.autograd.grad(ours, logits)[0], torch.autograd.grad(theirs, logits)[0])
    assert dummy_scale_gradient(logits, labels).item() != 0


@pytest.mark.parametrize("step", range(4))
def test_update_objective_and_weight_schedule(step: int) -> None:
    """loss = mean per-domain nll + w * mean per-domain penalty, w = 1.0 before the anneal step, irm_lambda from it;
    the parameters move as a hand-written step on that objective moves them."""
    model = make_irm()
    steps = batches(step + 1)
    for b in steps[:step]:
        model.update(b)
    twin = copy.deepcopy(model)
    result = model.update(steps[step])

    weight = 50.0 if step >= 2 else 1.0
    per_domain = [(twin.network(x), y) for x, y in steps[step]]
    nll = sum(F.cross_entropy(lg, y) for lg, y in per_domain) / 2
    penalty = sum(autograd_penalty(lg, y) for lg, y in per_domain) / 2
    assert result["nll"] == pytest.approx(nll.item(), rel=1e-5)
    assert result["penalty"] == pytest.approx(penalty.item(), rel=1e-4, abs=1e-9)
    assert result["loss"] == pytest.approx(result["nll"] + weight * result["penalty"], rel=1e-6)
    if step == 2:
        twin.optimizer = torch.optim.Adam(twin.network.parameters(), lr=twin.hparams["lr"])
    twin.optimizer.zero_grad()
    (nll + weight * penalty).backward()
    twin.optimizer.step()
    for got, want in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("anneal", [2, 0])
def test_adam_is_recreated_at_the_anneal_step_only(anneal: int) -> None:
    model = make_irm(irm_penalty_anneal_iters=anneal)
    seen = [model.optimizer]
    for b in batches(5):
        model.update(b)
        seen.append(model.optimizer)
    changed_at = [i for i in range(1, len(seen)) if seen[i] is not seen[i - 1]]
    assert changed_at == ([anneal + 1] if anneal else [])
