"""The search-space types (fishr_tune/space.py)."""

from __future__ import annotations

import numpy as np
import optuna

from fishr_tune.space import Distribution, choice, loguniform, uniform


def test_one_distribution_type_serves_the_registry_and_optuna() -> None:
    """The registry's log distributions keep DomainBed's exponents (exact draws) and hand Optuna their value range."""
    batch = loguniform(3, 9, base=2, integer=True)
    assert batch.kind == "logint" and batch.bounds == (8, 512) and batch.representatives() == [8, 512]
    assert batch.sample(np.random.RandomState(5), 64) == int(2 ** np.random.RandomState(5).uniform(3, 9))
    assert batch.to_optuna() == optuna.distributions.IntDistribution(8, 512, log=True)
    assert loguniform(-4, -2).to_optuna() == optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    assert uniform(0, 500, integer=True).to_optuna() == optuna.distributions.IntDistribution(0, 500)
    assert choice(0.0, 0.5).to_optuna() == optuna.distributions.CategoricalDistribution([0.0, 0.5])
    assert Distribution("loguniform", 1e-4, 1e-2).describe() == "loguniform U(0.0001, 0.01)"
    assert batch.describe() == "int loguniform 2^U(3, 9)"
