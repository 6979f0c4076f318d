"""CORAL: the penalty is the gap between domains' feature means and covariances, and the update minimizes it."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from fishr_tune.algorithms.coral import CORAL, coral_distance
from fishr_tune.hparams import default_hparams
from fishr_tune.training import seed_everything


def centred_sample(n: int = 64, d: int = 4, seed: int = 0) -> torch.Tensor:
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return x - x.mean(dim=0)


def test_zero_for_identical_statistics() -> None:
    x = centred_sample()
    assert coral_distance(x, x).item() == 0.0
    # same rows in another order: same mean and covariance
    shuffled = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(1))]
    assert coral_distance(x, shuffled).item() == pytest.approx(0.0, abs=1e-10)


def test_grows_with_the_covariance_gap() -> None:
    x = centred_sample()
    distances = [coral_distance(x, scale * x).item() for scale in (1.0, 1.25, 1.5, 2.0, 3.0)]
    assert distances[0] == 0.0
    assert all(a < b for a, b in zip(distances, distances[1:]))


def test_hand_computed_value() -> None:
    # 1-D: x has mean 1 and unbiased variance 2, y has mean 2 and variance 8 -> (1-2)^2 + (2-8)^2 = 37
    x = torch.tensor([[0.0], [2.0]])
    y = torch.tensor([[0.0], [4.0]])
    assert coral_distance(x, y).item() == pytest.approx(37.0)


def test_mean_shift_alone_is_penalized() -> None:
    x = centred_sample()
    assert coral_distance(x, x + 0.5).item() == pytest.approx(0.25)  # covariances equal, each mean differs by 0.5


def test_update_penalty_is_the_mean_over_domain_pairs() -> None:
    hparams = {**default_hparams("CORAL", "ColoredMNIST-IRM"), "hidden_dim": 16, "mmd_gamma": 3.0}
    seed_everything(0)
    algorithm = CORAL((2, 14, 14), 2, 3, hparams).double()  # float64: covariance differences cancel digits
    generator = torch.Generator().manual_seed(2)
    batches = [(torch.rand(8, 2, 14, 14, generator=generator, dtype=torch.float64) * (i + 1),
                torch.randint(2, (8,), generator=generator)) for i in range(3)]
    before = copy.deepcopy(algorithm)
    with torch.no_grad():
        features = [before.featurizer(x) for x, _ in batches]
        expected_penalty = sum(coral_distance(features[i], features[j]) for i, j in [(0, 1), (0, 2), (1, 2)]) / 3
        expected_nll = sum(F.cross_entropy(before.classifier(f), y) for f, (_, y) in zip(features, batches)) / 3
    results = algorithm.update(batches)
    assert results["penalty"] == pytest.approx(expected_penalty.item(), rel=1e-10)
    assert results["nll"] == pytest.approx(expected_nll.item(), rel=1e-12)
    assert results["loss"] == pytest.approx(results["nll"] + 3.0 * results["penalty"], rel=1e-12)


def test_training_with_a_large_weight_shrinks_the_penalty() -> None:
    hparams = {**default_hparams("CORAL", "ColoredMNIST-IRM"), "hidden_dim": 16, "mmd_gamma": 100.0}
    seed_everything(0)
    algorithm = CORAL((2, 14, 14), 2, 2, hparams)
    generator = torch.Generator().manual_seed(3)
    batches = [(torch.rand(32, 2, 14, 14, generator=generator) * scale, torch.randint(2, (32,), generator=generator))
               for scale in (1.0, 3.0)]
    penalties = [algorithm.update(batches)["penalty"] for _ in range(30)]
    assert penalties[-1] < 0.1 * penalties[0]
