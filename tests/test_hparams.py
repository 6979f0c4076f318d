from __future__ import annotations

import numpy as np
import pytest

from fishr_tune import default_hparams, random_hparams
from fishr_tune.errors import ConfigError
from fishr_tune.hparams import apply_overrides, hparam_space, hparams_for_trial, seed_hash


def test_seed_hash_matches_domainbed() -> None:
    # DomainBed: int(md5(str(args)).hexdigest(), 16) % 2**31
    import hashlib

    assert seed_hash(0, "lr") == int(hashlib.md5(b"(0, 'lr')").hexdigest(), 16) % (2**31)


def test_defaults_for_small_images() -> None:
    hparams = default_hparams("ERM", "ColoredMNIST")
    assert hparams["lr"] == 1e-3 and hparams["batch_size"] == 64 and hparams["weight_decay"] == 0.0
    assert hparams["featurizer"] == "mnist_cnn"
    assert default_hparams("ERM", "ColoredMNIST-IRM")["featurizer"] == "mlp"


def test_random_hparams_are_reproducible_per_name_and_in_range() -> None:
    a = random_hparams("ERM", "ColoredMNIST", 7)
    assert a == random_hparams("ERM", "ColoredMNIST", 7)
    assert a != random_hparams("ERM", "ColoredMNIST", 8)
    # DomainBed draws lr as 10**r.uniform(-4.5, -2.5) from RandomState(seed_hash(seed, 'lr'))
    expected_lr = 10 ** np.random.RandomState(seed_hash(7, "lr")).uniform(-4.5, -2.5)
    assert a["lr"] == expected_lr
    assert 8 <= a["batch_size"] < 512 and isinstance(a["batch_size"], int)


def test_hparams_seed_zero_is_the_default() -> None:
    assert hparams_for_trial("ERM", "RotatedMNIST", 0, 5) == default_hparams("ERM", "RotatedMNIST")
    assert hparams_for_trial("ERM", "RotatedMNIST", 3, 5) == random_hparams("ERM", "RotatedMNIST", seed_hash(3, 5))


def test_every_hparam_has_a_distribution_whose_samples_fit_its_type() -> None:
    for name, spec in hparam_space("ERM", "ColoredMNIST").items():
        value = spec.dist.sample(np.random.RandomState(0), spec.default)
        assert type(value) is type(spec.default), name


def test_overrides_are_checked() -> None:
    base = default_hparams("ERM", "ColoredMNIST")
    assert apply_overrides("ERM", "ColoredMNIST", base, {"lr": 1})["lr"] == 1.0
    with pytest.raises(ConfigError, match="unknown hyperparameter 'lamda'.*valid: amp, batch_size"):
        apply_overrides("ERM", "ColoredMNIST", base, {"lamda": 1})
    with pytest.raises(ConfigError, match="'batch_size' must be an integer"):
        apply_overrides("ERM", "ColoredMNIST", base, {"batch_size": 3.5})
    with pytest.raises(ConfigError, match="featurizer must be one of"):
        apply_overrides("ERM", "ColoredMNIST", base, {"featurizer": "vgg"})


def test_unknown_algorithm_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="unknown algorithm 'Nope'; valid algorithms: .*ERM"):
        default_hparams("Nope", "ColoredMNIST")
