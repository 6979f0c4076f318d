"""The annealed-penalty schedule that IRM and V-REx share: objective = mean per-domain risk + w * penalty with
w = 1.0 before the anneal step and lambda from it, the parameters moving as a hand-written Adam step on that
objective moves them, and Adam re-created at the anneal step only. Each algorithm's penalty is checked against
an independent reference (the dummy-scale autograd definition for IRM, the biased risk variance for V-REx)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from fishr_tune.algorithms.base import get_algorithm_class
from fishr_tune.algorithms.penalized import AnnealedPenaltyERM
from fishr_tune.hparams import apply_overrides, default_hparams

INPUT_SHAPE = (2, 14, 14)
DATASET = "ColoredMNIST-IRM"


def irm_reference(logits: list[torch.Tensor], labels: list[torch.Tensor]) -> torch.Tensor:
    """DomainBed's IRMv1, spelled with a dummy scale and autograd, averaged over domains."""
    penalties = []
    for lg, y in zip(logits, labels):
        scale = torch.tensor(1.0, dtype=lg.dtype, requires_grad=True)
        grad_1 = torch.autograd.grad(F.cross_entropy(lg[::2] * scale, y[::2]), [scale], create_graph=True)[0]
        grad_2 = torch.autograd.grad(F.cross_entropy(lg[1::2] * scale, y[1::2]), [scale], create_graph=True)[0]
        penalties.append(grad_1 * grad_2)
    return sum(penalties) / len(penalties)


def vrex_reference(logits: list[torch.Tensor], labels: list[torch.Tensor]) -> torch.Tensor:
    risks = [F.cross_entropy(lg, y) for lg, y in zip(logits, labels)]
    mean = sum(risks) / len(risks)
    return sum((r - mean) ** 2 for r in risks) / len(risks)


@dataclass(frozen=True)
class Case:
    name: str
    weight: float
    sizes: tuple[int, ...]
    reference: Callable[[list[torch.Tensor], list[torch.Tensor]], torch.Tensor]

    def build(self, **overrides: Any) -> AnnealedPenaltyERM:
        cls = get_algorithm_class(self.name)
        values = {"hidden_dim": 16, cls.ANNEAL_ITERS: 2, cls.LAMBDA: self.weight, **overrides}
        torch.manual_seed(0)
        hparams = apply_overrides(self.name, DATASET, default_hparams(self.name, DATASET), values)
        return cls(INPUT_SHAPE, 2, len(self.sizes), hparams).double()  # float64: comparisons hold on any CPU

    def batches(self, n_steps: int) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        generator = torch.Generator().manual_seed(0)
        return [
            [(torch.rand(n, *INPUT_SHAPE, generator=generator, dtype=torch.float64),
              torch.randint(2, (n,), generator=generator)) for n in self.sizes]
            for _ in range(n_steps)
        ]


CASES = [Case("IRM", 50.0, (11, 8), irm_reference), Case("VREx", 30.0, (10, 7, 12), vrex_reference)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("step", range(4))
def test_update_objective_and_weight_schedule(case: Case, step: int) -> None:
    model = case.build()
    steps = case.batches(step + 1)
    for b in steps[:step]:
        model.update(b)
    twin = copy.deepcopy(model)
    result = model.update(steps[step])

    logits = [twin.network(x) for x, _ in steps[step]]
    labels = [y for _, y in steps[step]]
    nll = sum(F.cross_entropy(lg, y) for lg, y in zip(logits, labels)) / len(logits)
    penalty = case.reference(logits, labels)
    weight = case.weight if step >= 2 else 1.0
    assert result["nll"] == pytest.approx(nll.item(), rel=1e-12)
    assert result["penalty"] == pytest.approx(penalty.item(), rel=1e-9, abs=1e-15)
    assert result["loss"] == pytest.approx(result["nll"] + weight * result["penalty"], rel=1e-12)
    if step == 2:
        twin.optimizer = torch.optim.Adam(twin.network.parameters(), lr=twin.hparams["lr"])
    twin.optimizer.zero_grad()
    (nll + weight * penalty).backward()
    twin.optimizer.step()
    for got, want in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("anneal", [2, 0])
def test_adam_is_recreated_at_the_anneal_step_only(case: Case, anneal: int) -> None:
    cls = get_algorithm_class(case.name)
    model = case.build(**{cls.ANNEAL_ITERS: anneal})
    seen = [model.optimizer]
    for b in case.batches(5):
        model.update(b)
        seen.append(model.optimizer)
    changed_at = [i for i in range(1, len(seen)) if seen[i] is not seen[i - 1]]
    assert changed_at == ([anneal + 1] if anneal else [])
