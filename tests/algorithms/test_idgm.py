"""IDGM: the gradient inner product by hand, the objective of one update by hand, and its second-order gradient
against central finite differences in float64 (the anneal schedule is the shared one of test_penalized.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fishr_tune.algorithms.idgm import IDGM, gradient_inner_product
from fishr_tune.hparams import default_hparams, hparam_space
from fishr_tune.training import seed_everything

DATASET = "ColoredMNIST-IRM"


def make_idgm(gamma: float, hidden_layers: int = 0, anneal: int = 0, n_features: int = 2, num_domains: int = 2) -> IDGM:
    """hidden_layers=0: the MLP featurizer is a flatten and the model is logits = W x + b."""
    hparams = {
        **default_hparams("IDGM", DATASET),
        "hidden_layers": hidden_layers, "hidden_dim": 4, "idgm_gamma": gamma, "idgm_penalty_anneal_iters": anneal,
    }
    seed_everything(0)
    return IDGM((n_features,), 2, num_domains, hparams)


def test_hyperparameters_have_a_search_distribution() -> None:
    space = hparam_space("IDGM", DATASET)
    gamma = space["idgm_gamma"]
    assert gamma.dist.kind == "loguniform" and gamma.dist.bounds == pytest.approx((1e-4, 0.1))
    assert gamma.dist.bounds[0] <= gamma.default <= gamma.dist.bounds[1]
    anneal = space["idgm_penalty_anneal_iters"]
    assert anneal.default == 0 and anneal.dist.integer  # the paper's objective from the first step by default


def test_mean_over_unordered_pairs_by_hand() -> None:
    """L_i = 1/2 sum a_i * theta^2 has gradient a_i * theta. At theta = (1, 2) with a = (1,0), (0,1), (1,1):
    G = (1,0), (0,2), (1,2); pair products 0, 1, 4, mean 5/3 (the paper's 2 / (S (S - 1)) normalization)."""
    theta = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    scales = [torch.tensor(a, dtype=torch.float64) for a in ([1.0, 0.0], [0.0, 1.0], [1.0, 1.0])]
    losses = [0.5 * (a * theta**2).sum() for a in scales]
    assert gradient_inner_product(losses, [theta]).item() == pytest.approx(5 / 3, rel=1e-12)
    assert gradient_inner_product(losses[:2], [theta]).item() == 0.0  # disjoint supports: orthogonal gradients
    assert gradient_inner_product(losses[:1], [theta]).item() == 0.0  # one domain: no pair
    gip = gradient_inner_product(losses, [theta])
    (grad,) = torch.autograd.grad(gip, [theta])
    # G1.G2 = 0, G1.G3 = t1^2, G2.G3 = t2^2  ->  mean (t1^2 + t2^2) / 3, gradient (2 t1, 2 t2) / 3 = (2/3, 4/3)
    torch.testing.assert_close(grad, torch.tensor([2 / 3, 4 / 3], dtype=torch.float64), rtol=1e-12, atol=0)


def test_one_update_reports_the_hand_computed_objective() -> None:
    """W = 0, b = 0: p = (1/2, 1/2). Domain 1 is x = (1, 0), y = 0; domain 2 is x = (0, 1), y = 1. The weight
    gradients have disjoint supports, the bias gradients are (-1/2, 1/2) and (1/2, -1/2): inner product -1/2.
    So nll = ln 2, penalty = +1/2 (minus the inner product) and loss = ln 2 + gamma / 2."""
    gamma = 0.3
    algorithm = make_idgm(gamma)
    with torch.no_grad():
        algorithm.classifier.weight.zero_()
        algorithm.classifier.bias.zero_()
    batches = [(torch.tensor([[1.0, 0.0]]), torch.tensor([0])), (torch.tensor([[0.0, 1.0]]), torch.tensor([1]))]
    out = algorithm.update(batches)
    assert out["nll"] == pytest.approx(math.log(2), rel=1e-6)
    assert out["penalty"] == pytest.approx(0.5, rel=1e-6)
    assert out["loss"] == pytest.approx(math.log(2) + gamma * 0.5, rel=1e-6)


def objective(algorithm: IDGM, batches: list[tuple[torch.Tensor, torch.Tensor]], weight: float) -> torch.Tensor:
    """The loss `update` backpropagates, written independently: mean of the per-domain CEs - weight * GIP."""
    params = list(algorithm.network.parameters())
    losses = [F.cross_entropy(algorithm.network(x), y) for x, y in batches]
    return torch.stack(losses).mean() - weight * gradient_inner_product(losses, params)


def central_differences(algorithm: IDGM, batches, weight: float, h: float = 1e-6) -> list[torch.Tensor]:
    grads = []
    with torch.no_grad():
        for p in algorithm.network.parameters():
            g = torch.zeros_like(p)
            flat, gflat = p.view(-1), g.view(-1)
            for k in range(flat.numel()):
                saved = flat[k].item()
                flat[k] = saved + h
                with torch.enable_grad():
                    up = objective(algorithm, batches, weight).item()
                flat[k] = saved - h
                with torch.enable_grad():
                    down = objective(algorithm, batches, weight).item()
                flat[k] = saved
                gflat[k] = (up - down) / (2 * h)
            grads.append(g)
    return grads


def random_batches(num_domains: int, n_features: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(5, n_features, generator=generator, dtype=torch.float64) + d,
         torch.randint(2, (5,), generator=generator))
        for d in range(num_domains)
    ]


@pytest.mark.parametrize(("num_domains", "update_count", "anneal"), [(2, 0, 0), (3, 0, 0), (3, 0, 5), (2, 5, 5)])
def test_update_gradient_matches_finite_differences(num_domains: int, update_count: int, anneal: int) -> None:
    """The gradient `update` leaves in .grad (nll - weight * GIP, second order through the ReLU MLP) equals
    central differences of the objective in float64; the weight is 1.0 before the anneal step, gamma from it."""
    gamma = 2.0
    algorithm = make_idgm(gamma, hidden_layers=1, anneal=anneal, n_features=3, num_domains=num_domains).double()
    algorithm.update_count = update_count
    batches = random_batches(num_domains, 3, seed=num_domains)
    weight = gamma if update_count >= anneal else 1.0
    expected = central_differences(algorithm, batches, weight)
    penalty_gradient = [e - g for e, g in zip(expected, central_differences(algorithm, batches, 0.0))]
    assert max(g.abs().max().item() for g in penalty_gradient) > 1e-3  # the penalty does move the weights
    algorithm.update(batches)
    for p, e in zip(algorithm.network.parameters(), expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-6, atol=1e-8)


def test_aligning_gradients_lowers_the_penalty() -> None:
    """Trained on two domains whose gradients conflict, a large gamma drives the inner product up faster than ERM."""
    batches = [
        (torch.tensor([[1.0, 1.0], [1.0, 0.0]]), torch.tensor([1, 0])),
        (torch.tensor([[1.0, 1.0], [0.0, 1.0]]), torch.tensor([1, 0])),
    ]
    runs = {}
    for gamma in (0.0, 5.0):
        algorithm = make_idgm(gamma)
        penalties = [algorithm.update(batches)["penalty"] for _ in range(30)]
        runs[gamma] = penalties[-1]
    assert runs[5.0] < runs[0.0]
