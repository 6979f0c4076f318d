"""Fish: one update equals the first-order inner loop computed by hand on a linear softmax model.

The model runs in float64 (`.double()`) against a float64 hand computation, so agreement is to rounding (1e-12),
on any CPU. Domain order: DomainBed's in-order loop by default, the Fish paper's permutation as an option.
"""

from __future__ import annotations

import pytest
import torch

from fishr_tune.algorithms.fish import Fish
from fishr_tune.hparams import default_hparams
from fishr_tune.training import seed_everything

N_FEATURES = 3
N_CLASSES = 2
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults, which DomainBed's Fish uses



def linear_fish(meta_lr: float, lr: float, permute: bool = False) -> Fish:
    """hidden_layers=0 turns the MLP featurizer into a flatten: the model is logits = W x + b (float64)."""
    hparams = {
        **default_hparams("Fish", "ColoredMNIST-IRM"),
        "hidden_layers": 0,
        "meta_lr": meta_lr,
        "lr": lr,
        "fish_permute_domains": permute,
    }
    seed_everything(0)
    return Fish((N_FEATURES,), N_CLASSES, 3, hparams).double()


def softmax_ce_gradient(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """d mean CE / d(W, b) for logits = x W^T + b: (softmax - onehot)^T x / n, mean(softmax - onehot)."""
    probabilities = torch.softmax(x @ w.T + b, dim=1)
    residual = probabilities - torch.eye(N_CLASSES, dtype=w.dtype)[y]
    return residual.T @ x / len(y), residual.mean(dim=0)


class HandAdam:
    """Adam written out, one moment pair per tensor; its state persists across Fish updates (as DomainBed's)."""

    def __init__(self, lr: float):
        self.lr = lr
        self.t = 0
        self.m: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []

    def step(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> list[torch.Tensor]:
        if not self.m:
            self.m = [torch.zeros_like(p) for p in params]
            self.v = [torch.zeros_like(p) for p in params]
        self.t += 1
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            self.m[i] = BETA1 * self.m[i] + (1 - BETA1) * g
            self.v[i] = BETA2 * self.v[i] + (1 - BETA2) * g * g
            m_hat = self.m[i] / (1 - BETA1**self.t)
            v_hat = self.v[i] / (1 - BETA2**self.t)
            out.append(p - self.lr * m_hat / (v_hat.sqrt() + EPS))
        return out


def domains(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(6, N_FEATURES, generator=generator, dtype=torch.float64) + i, torch.randint(N_CLASSES, (6,), generator=generator))
        for i in range(3)
    ]


def fish_reference(w: torch.Tensor, b: torch.Tensor, adam: HandAdam, batches: list, order: list[int], meta_lr: float):
    """One Fish update by hand: Adam steps on a copy in `order`, then theta += meta_lr * (theta_inner - theta)."""
    inner_w, inner_b = w, b
    for index in order:
        x, y = batches[index]
        inner_w, inner_b = adam.step([inner_w, inner_b], list(softmax_ce_gradient(inner_w, inner_b, x, y)))
    return w + meta_lr * (inner_w - w), b + meta_lr * (inner_b - b)


@pytest.mark.parametrize("permute", [False, True], ids=["domainbed_order", "paper_permuted"])
@pytest.mark.parametrize("meta_lr", [0.5, 0.1])
def test_two_updates_match_the_hand_computation(meta_lr: float, permute: bool) -> None:
    lr = 0.05
    algorithm = linear_fish(meta_lr, lr, permute)
    linear = algorithm.classifier
    w = linear.weight.detach().clone()
    b = linear.bias.detach().clone()
    adam = HandAdam(lr)
    for update, seed in enumerate((10, 11)):
        batches = domains(seed)
        torch.manual_seed(100 + update)
        order = torch.randperm(len(batches)).tolist() if permute else [0, 1, 2]
        w, b = fish_reference(w, b, adam, batches, order, meta_lr)
        torch.manual_seed(100 + update)  # with permute, the algorithm draws the same domain order
        algorithm.update(batches)
        torch.testing.assert_close(linear.weight.detach(), w, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(linear.bias.detach(), b, rtol=1e-12, atol=1e-12)


def test_default_is_domainbeds_in_order_loop_whatever_the_global_seed() -> None:
    """DomainBed's order ignores torch's generator; a reversed order gives different weights, so order is tested."""
    assert default_hparams("Fish", "PACS")["fish_permute_domains"] is False
    batches = domains(10)
    weights = []
    for seed in (0, 1, 2):
        algorithm = linear_fish(0.5, 0.05)
        torch.manual_seed(seed)
        algorithm.update(batches)
        weights.append(algorithm.classifier.weight.detach().clone())
    assert all(torch.equal(weights[0], other) for other in weights[1:])
    reversed_order = linear_fish(0.5, 0.05)
    reversed_order.update(batches[::-1])
    assert not torch.equal(weights[0], reversed_order.classifier.weight.detach())


def test_permuted_order_comes_from_torchs_generator() -> None:
    """Different global seeds give different orders and so different weights; the same seed the same weights."""
    batches = domains(10)
    weights = []
    for seed in (0, 0, 1, 2, 3):
        algorithm = linear_fish(0.5, 0.05, permute=True)
        torch.manual_seed(seed)
        algorithm.update(batches)
        weights.append(algorithm.classifier.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])
    assert any(not torch.equal(weights[0], other) for other in weights[2:])


def test_meta_lr_one_keeps_the_inner_weights_and_small_meta_lr_moves_less() -> None:
    batches = domains(10)
    start = linear_fish(1.0, 0.05).classifier.weight.detach().clone()
    moved = {}
    for meta_lr in (1.0, 0.1):
        algorithm = linear_fish(meta_lr, 0.05)
        torch.manual_seed(0)
        algorithm.update(batches)
        moved[meta_lr] = algorithm.classifier.weight.detach() - start
        if meta_lr == 1.0:
            torch.testing.assert_close(algorithm.classifier.weight, algorithm.inner_network[1].weight)
    torch.testing.assert_close(moved[0.1], 0.1 * moved[1.0], rtol=1e-12, atol=1e-14)
