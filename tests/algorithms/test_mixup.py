"""Mixup: random cyclic pairs of domains, mixed inputs, and a loss against the equally mixed one-hot labels."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fishr_tune.algorithms.mixup import Mixup, mixed_cross_entropy, random_domain_pairs
from fishr_tune.hparams import default_hparams

INPUT_SHAPE = (2, 14, 14)



def build(alpha: float = 0.2) -> Mixup:
    hparams = {**default_hparams("Mixup", "ColoredMNIST-IRM"), "hidden_dim": 16, "mixup_alpha": alpha}
    torch.manual_seed(0)
    return Mixup(INPUT_SHAPE, 2, 3, hparams)


def domains(sizes: tuple[int, ...] = (8, 8, 8), seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.rand(n, *INPUT_SHAPE, generator=generator), torch.randint(2, (n,), generator=generator)) for n in sizes]


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.8, 1.0])
def test_mixed_loss_is_cross_entropy_against_mixed_one_hot_targets(lam: float) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(10, 4, generator=generator)
    yi = torch.randint(4, (10,), generator=generator)
    yj = torch.randint(4, (10,), generator=generator)
    soft_targets = lam * F.one_hot(yi, 4).float() + (1 - lam) * F.one_hot(yj, 4).float()
    torch.testing.assert_close(mixed_cross_entropy(logits, yi, yj, lam), F.cross_entropy(logits, soft_targets))


def test_pairs_form_a_random_cycle_cut_to_the_smaller_batch() -> None:
    data = domains((8, 5, 6))
    seen_orders = set()
    for seed in range(20):
        torch.manual_seed(seed)
        pairs = random_domain_pairs(data)
        assert len(pairs) == 3
        firsts = []
        for (xi, yi), (xj, yj) in pairs:
            assert len(xi) == len(yi) == len(xj) == len(yj)
            firsts.append(next(i for i, (x, _) in enumerate(data) if torch.equal(x[: len(xi)], xi)))
        assert sorted(firsts) == [0, 1, 2]  # each domain leads exactly one pair
        for position, ((xi, _), (xj, _)) in enumerate(pairs):
            # the partner of pair k is the leader of pair k+1 (cyclically)
            nxt = firsts[(position + 1) % 3]
            assert torch.equal(data[nxt][0][: len(xj)], xj)
            assert len(xi) == min(len(data[firsts[position]][0]), len(data[nxt][0]))
        seen_orders.add(tuple(firsts))
    assert len(seen_orders) > 1


def test_update_loss_equals_the_hand_computed_mixed_objective() -> None:
    algorithm = build(alpha=0.5)
    data = domains()
    reference = copy.deepcopy(algorithm)

    torch.manual_seed(3)
    np.random.seed(3)
    order = torch.randperm(3).tolist()
    expected = 0.0
    for position, i in enumerate(order):
        j = order[(position + 1) % 3]
        lam = float(np.random.beta(0.5, 0.5))
        (xi, yi), (xj, yj) = data[i], data[j]
        with torch.no_grad():
            logits = reference.predict(lam * xi + (1 - lam) * xj)
            expected += (lam * F.cross_entropy(logits, yi) + (1 - lam) * F.cross_entropy(logits, yj)).item()
    expected /= 3

    torch.manual_seed(3)
    np.random.seed(3)
    assert algorithm.update(data)["loss"] == pytest.approx(expected, rel=1e-5)


def test_mixing_weight_comes_from_numpys_generator() -> None:
    data = domains()
    losses = []
    for numpy_seed in (0, 0, 1):
        algorithm = build()
        torch.manual_seed(0)
        np.random.seed(numpy_seed)
        losses.append(algorithm.update(data)["loss"])
    assert losses[0] == losses[1]
    assert losses[0] != losses[2]
