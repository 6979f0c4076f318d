"""MMD: DomainBed's mixture-of-Gaussians kernel discrepancy between domains' features."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from fishr_tune.algorithms.mmd import GAUSSIAN_GAMMAS, MMD, gaussian_mmd
from fishr_tune.hparams import default_hparams
from fishr_tune.training import seed_everything


def centred_sample(n: int = 64, d: int = 4, seed: int = 0) -> torch.Tensor:
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return x - x.mean(dim=0)


def test_zero_for_identical_samples() -> None:
    x = centred_sample()
    assert gaussian_mmd(x, x).item() == pytest.approx(0.0, abs=1e-6)
    shuffled = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(1))]
    assert gaussian_mmd(x, shuffled).item() == pytest.approx(0.0, abs=1e-6)


def test_grows_with_the_covariance_gap() -> None:
    x = centred_sample()
    values = [gaussian_mmd(x, scale * x).item() for scale in (1.0, 1.25, 1.5, 2.0, 3.0, 5.0)]
    assert values[0] == pytest.approx(0.0, abs=1e-6)
    assert all(a < b for a, b in zip(values, values[1:]))


def test_hand_computed_value() -> None:
    # one point each, at squared distance 1: k(x,x) = k(y,y) = 7 kernels at distance 0, k(x,y) = sum exp(-gamma)
    x = torch.tensor([[0.0, 0.0]])
    y = torch.tensor([[1.0, 0.0]])
    expected = 2 * len(GAUSSIAN_GAMMAS) - 2 * sum(math.exp(-g) for g in GAUSSIAN_GAMMAS)
    assert gaussian_mmd(x, y).item() == pytest.approx(expected, rel=1e-6)


def test_gradient_is_finite_for_coincident_points() -> None:
    """Distances are clamped away from zero (as DomainBed), so identical features do not give NaN gradients."""
    x = torch.zeros(4, 3, requires_grad=True)
    gaussian_mmd(x, x.detach() + 1).backward()
    assert torch.isfinite(x.grad).all()


def test_update_penalty_is_the_mean_over_domain_pairs() -> None:
    """In float64: through the gamma-1000 kernel a float32 rounding difference (one concatenated forward against
    three) grows to ~1e-5 relative, which depends on the CPU's kernels; float64 leaves ~1e-12 on any of them."""
    hparams = {**default_hparams("MMD", "ColoredMNIST-IRM"), "hidden_dim": 16, "mmd_gamma": 2.0}
    seed_everything(0)
    algorithm = MMD((2, 14, 14), 2, 3, hparams).double()
    generator = torch.Generator().manual_seed(2)
    batches = [(torch.rand(8, 2, 14, 14, generator=generator, dtype=torch.float64) * (i + 1),
                torch.randint(2, (8,), generator=generator)) for i in range(3)]
    before = copy.deepcopy(algorithm)
    with torch.no_grad():
        features = [before.featurizer(x) for x, _ in batches]
        expected = sum(gaussian_mmd(features[i], features[j]) for i, j in [(0, 1), (0, 2), (1, 2)]) / 3
    results = algorithm.update(batches)
    assert results["penalty"] == pytest.approx(expected.item(), rel=1e-9)
    assert results["loss"] == pytest.approx(results["nll"] + 2.0 * results["penalty"], rel=1e-12)


def test_single_domain_has_no_penalty() -> None:
    hparams = {**default_hparams("MMD", "ColoredMNIST-IRM"), "hidden_dim": 16}
    seed_everything(0)
    algorithm = MMD((2, 14, 14), 2, 1, hparams)
    results = algorithm.update([(torch.rand(8, 2, 14, 14), torch.randint(2, (8,)))])
    assert results["penalty"] == 0.0
    assert results["loss"] == results["nll"]
