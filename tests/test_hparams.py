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
    with pytest.raises(ConfigError, match="'featurizer' must be one of"):
        apply_overrides("ERM", "ColoredMNIST", base, {"featurizer": "vgg"})


def test_unknown_algorithm_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="unknown algorithm 'Nope'; valid algorithms: .*ERM"):
        default_hparams("Nope", "ColoredMNIST")


# ---- the whole registry: every entry has a domain, and everything the registry can produce lies inside it ----

def registry_entries():
    """(algorithm, dataset, name, spec) for every hyperparameter of every registered algorithm on every dataset."""
    from fishr_tune.algorithms import ALGORITHMS
    from fishr_tune.data import DATASET_ENVIRONMENTS

    for algorithm in sorted(ALGORITHMS):
        for dataset in sorted(DATASET_ENVIRONMENTS):
            for name, spec in hparam_space(algorithm, dataset).items():
                yield algorithm, dataset, name, spec


def test_every_registry_entry_has_a_domain() -> None:
    missing = sorted({name for _, _, name, spec in registry_entries() if spec.domain is None})
    assert missing == []


def test_defaults_samples_and_bounds_of_every_entry_lie_in_its_domain() -> None:
    """300 draws per entry with fixed seeds, plus the distribution's bounds (truncated as an integer draw is)."""
    outside = []
    checked = 0
    for algorithm, dataset, name, spec in registry_entries():
        points = [("default", spec.default)]
        rng = np.random.RandomState(seed_hash(algorithm, dataset, name) % 2**32)
        points += [("sample", spec.dist.sample(rng, spec.default)) for _ in range(300)]
        if spec.dist.kind not in ("fixed", "choice"):
            low, high = spec.dist.bounds
            points += [("bound", int(b) if spec.dist.integer else float(b)) for b in (low, high)]
        points += [("choice", c) for c in spec.dist.choices]
        for what, value in points:
            checked += 1
            if type(value) is not type(spec.default) or value not in spec.domain:
                outside.append((algorithm, dataset, name, what, value, spec.domain.describe()))
    assert outside == []
    assert checked > 300 * 100  # every algorithm x dataset x name was walked, not an empty registry


@pytest.mark.parametrize("value", [0, 0.0, -1, -1e-3, float("nan"), float("inf"), -float("inf"), True, "0.1", None])
def test_a_learning_rate_outside_its_domain_is_refused(value) -> None:
    base = default_hparams("ERM", "ColoredMNIST")
    with pytest.raises(ConfigError, match="hyperparameter 'lr' must be "):
        apply_overrides("ERM", "ColoredMNIST", base, {"lr": value}, where="x.yaml")


@pytest.mark.parametrize(("name", "value"), [
    ("batch_size", 0), ("batch_size", -3), ("batch_size", 10**12), ("hidden_dim", 0), ("hidden_layers", -1),
    ("class_balanced", 1), ("amp", "fp16"), ("amp", 0), ("nonlinear_classifier", "yes"),
])
def test_values_outside_shared_domains_are_refused_naming_the_key(name: str, value) -> None:
    base = default_hparams("ERM", "ColoredMNIST-IRM")
    with pytest.raises(ConfigError, match=f"^x.yaml: hyperparameter '{name}' must be "):
        apply_overrides("ERM", "ColoredMNIST-IRM", base, {name: value}, where="x.yaml")


@pytest.mark.parametrize(("algorithm", "name", "value"), [
    ("IDGM", "idgm_gamma", -0.5), ("IDGM", "idgm_penalty_anneal_iters", -1), ("IDGM", "idgm_penalty_anneal_iters", 10**10),
    ("Fish", "fish_permute_domains", 0), ("Fishr", "ema", 5.0), ("Fishr", "centered", "no"),
    ("Fishr", "gradvar_engine", "fast"),
])
def test_values_outside_algorithm_domains_are_refused_naming_the_key(algorithm: str, name: str, value) -> None:
    base = default_hparams(algorithm, "ColoredMNIST-IRM")
    with pytest.raises(ConfigError, match=f"hyperparameter '{name}' must be "):
        apply_overrides(algorithm, "ColoredMNIST-IRM", base, {name: value})


def test_the_weights_path_domain_is_any_non_empty_line() -> None:
    base = default_hparams("ERM", "PACS")
    assert apply_overrides("ERM", "PACS", base, {"resnet_weights": "/models/r50.pt"})["resnet_weights"] == "/models/r50.pt"
    for bad in ("", "   ", "a\nb", "w" * 256, "/m/" * 2000):
        with pytest.raises(ConfigError, match="'resnet_weights' must be a non-empty line usable as a path"):
            apply_overrides("ERM", "PACS", base, {"resnet_weights": bad})
