"""V-REx: DomainBed's variance of per-domain risks, its weight schedule and Adam restart."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from fishr_tune.algorithms.vrex import VREx, risk_variance
from fishr_tune.hparams import apply_overrides, default_hparams, hparam_space

INPUT_SHAPE = (2, 14, 14)
DATASET = "ColoredMNIST-IRM"


def make_vrex(**overrides: Any) -> VREx:
    values = {"hidden_dim": 16, "vrex_penalty_anneal_iters": 2, "vrex_lambda": 30.0, **overrides}
    torch.manual_seed(0)
    return VREx(INPUT_SHAPE, 2, 3, apply_overrides("VREx", DATASET, default_hparams("VREx", DATASET), values))


def batches(n_steps: int, sizes: tuple[int, ...] = (10, 7, 12)) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    generator = torch.Generator().manual_seed(0)
    return [
        [(torch.rand(n, *INPUT_SHAPE, generator=generator), torch.randint(2, (n,), generator=generator)) for n in sizes]
        for _ in range(n_steps)
    ]


def test_hyperparameters_are_domainbeds() -> None:
    space = hparam_space("VREx", DATASET)
    assert space["vrex_lambda"].default == 1e1 and space["vrex_lambda"].dist.bounds == pytest.approx((0.1, 1e5))
    anneal = space["vrex_penalty_anneal_iters"]
    assert anneal.default == 500 and anneal.dist.bounds == pytest.approx((1, 1e4)) and anneal.dist.integer


def test_risk_variance_by_hand() -> None:
    # mean 2; squared deviations 1, 1, 0 -> 2/3 (the biased variance, not torch.var's unbiased 1.0)
    assert risk_variance(torch.tensor([1.0, 3.0, 2.0])).item() == pytest.approx(2 / 3)
    assert risk_variance(torch.tensor([0.7, 0.7])).item() == 0.0


@pytest.mark.parametrize("step", range(4))
def test_update_objective_and_weight_schedule(step: int) -> None:
    """loss = mean risk + w * variance of risks, w = 1.0 before the anneal step and vrex_lambda from it;
    the parameters move as a hand-written step on that objective moves them."""
    model = make_vrex()
    steps = batches(step + 1)
    for b in steps[:step]:
        model.update(b)
    twin = copy.deepcopy(model)
    result = model.update(steps[step])

    risks = [F.cross_entropy(twin.network(x), y) for x, y in steps[step]]
    mean = sum(risks) / 3
    variance = sum((r - mean) ** 2 for r in risks) / 3
    weight = 30.0 if step >= 2 else 1.0
    assert result["nll"] == pytest.approx(mean.item(), rel=1e-5)
    assert result["penalty"] == pytest.approx(variance.item(), rel=1e-4, abs=1e-10)
    assert result["loss"] == pytest.approx(result["nll"] + weight * result["penalty"], rel=1e-6)
    if step == 2:
        twin.optimizer = torch.optim.Adam(twin.network.parameters(), lr=twin.hparams["lr"])
    twin.optimizer.zero_grad()
    (mean + weight * variance).backward()
    twin.optimizer.step()
    for got, want in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("anneal", [2, 0])
def test_adam_is_recreated_at_the_anneal_step_only(anneal: int) -> None:
    model = make_vrex(vrex_penalty_anneal_iters=anneal)
    seen = [model.optimizer]
    for b in batches(5):
        model.update(b)
        seen.append(model.optimizer)
    changed_at = [i for i in range(1, len(seen)) if seen[i] is not seen[i - 1]]
    assert changed_at == ([anneal + 1] if anneal else [])
