"""IRM: DomainBed's IRMv1 penalty (dummy-scale gradients on two halves); the shared schedule is in test_penalized.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fishr_tune.algorithms.irm import dummy_scale_gradient, irm_penalty
from fishr_tune.hparams import hparam_space

DATASET = "ColoredMNIST-IRM"


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


