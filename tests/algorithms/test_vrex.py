"""V-REx: DomainBed's variance of per-domain risks (the shared schedule is tested in test_penalized.py)."""

from __future__ import annotations

import pytest
import torch

from fishr_tune.algorithms.vrex import risk_variance
from fishr_tune.hparams import hparam_space

DATASET = "ColoredMNIST-IRM"


def test_hyperparameters_are_domainbeds() -> None:
    space = hparam_space("VREx", DATASET)
    assert space["vrex_lambda"].default == 1e1 and space["vrex_lambda"].dist.bounds == pytest.approx((0.1, 1e5))
    anneal = space["vrex_penalty_anneal_iters"]
    assert anneal.default == 500 and anneal.dist.bounds == pytest.approx((1, 1e4)) and anneal.dist.integer


def test_risk_variance_by_hand() -> None:
    # mean 2; squared deviations 1, 1, 0 -> 2/3 (the biased variance, not torch.var's unbiased 1.0)
    assert risk_variance(torch.tensor([1.0, 3.0, 2.0])).item() == pytest.approx(2 / 3)
    assert risk_variance(torch.tensor([0.7, 0.7])).item() == 0.0


