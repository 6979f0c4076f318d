"""Every hyperparameter's default and search distribution, per algorithm and dataset, in one place.

Shared hyperparameters (lr, batch_size, ...) are defined here; an algorithm declares its own in its
class attribute ``HPARAMS`` (so adding an algorithm stays one file). Random configurations follow DomainBed:
each name draws from its own ``RandomState(seed_hash(seed, name))``, so a configuration depends only on
(seed, name) and not on which other hyperparameters exist, and matches DomainBed's values where the
distributions are the same.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from fishr_tune.errors import ConfigError, quote
from fishr_tune.space import (  # noqa: F401  (the registry's types, re-exported: hparams is where callers look)
    BATCH_SIZE,
    DEFAULT_FEATURIZER,
    FEATURIZERS,
    NON_NEGATIVE,
    POSITIVE,
    SMALL_IMAGES,
    STEPS,
    SWITCH,
    TEXT,
    UNIT,
    UNIT_OPEN,
    WIDTH,
    Distribution,
    Domain,
    HParam,
    at_least,
    choice,
    fixed,
    loguniform,
    one_of,
    uniform,
)

MAX_SEED = 2**32 - 1  # numpy's RandomState takes seeds in [0, 2**32)


def seed_hash(*args: Any) -> int:
    """DomainBed's seed_hash: an integer in [0, 2**31) from any hashable arguments."""
    return int(hashlib.md5(str(args).encode("utf-8")).hexdigest(), 16) % (2**31)


AMP_MODES = ("off", "bf16")


def image_hparams() -> dict[str, HParam]:
    """Settings of the image datasets' input pipeline and ResNet (DomainBed's data_augmentation plus ours)."""
    return {
        "data_augmentation": HParam(True, fixed(), "DomainBed's training augmentation (random crop, flip, colour jitter, gray)",
                                    domain=SWITCH),
        "image_size": HParam(224, fixed(), "side of the square network input (DomainBed: 224; smaller for CPU tests)",
                             domain=at_least(32, 4096)),
        "resnet_weights": HParam(
            "auto", fixed(),
            "ImageNet weights: auto (torch hub cache, else random init with a warning), imagenet (cache, required), "
            "none (random init), or a path to a torchvision state_dict file", domain=TEXT,
        ),
        "freeze_bn": HParam(True, fixed(), "BatchNorm in eval mode while training (Fishr's DomainBed; DomainBed now: false)",
                            domain=SWITCH),
    }


def _shared_hparams(dataset: str) -> dict[str, HParam]:
    small = dataset in SMALL_IMAGES
    space = {
        "featurizer": HParam(DEFAULT_FEATURIZER.get(dataset, "resnet50"), fixed(), "network body: " + "/".join(FEATURIZERS),
                             domain=one_of(*FEATURIZERS)),
        "nonlinear_classifier": HParam(False, fixed(), "3-layer MLP head instead of a linear one", domain=SWITCH),
        "amp": HParam(
            "off", fixed(), "mixed precision of the featurizer: off or bf16 (CUDA, or a CPU with native bfloat16)",
            domain=one_of(*AMP_MODES),
        ),
        "class_balanced": HParam(False, fixed(), "DomainBed's class-balanced minibatches (weighted sampling per domain)",
                                 domain=SWITCH),
        "resnet_dropout": HParam(0.0, choice(0.0, 0.1, 0.5), "dropout after the ResNet featurizer", domain=UNIT_OPEN),
        "lr": HParam(1e-3, loguniform(-4.5, -2.5), domain=POSITIVE) if small else HParam(5e-5, loguniform(-5, -3.5), domain=POSITIVE),
        "weight_decay": HParam(0.0, fixed(), domain=NON_NEGATIVE) if small else HParam(0.0, loguniform(-6, -2), domain=NON_NEGATIVE),
    }
    if small:
        space["batch_size"] = HParam(64, loguniform(3, 9, base=2, integer=True), "per training domain", domain=BATCH_SIZE)
    elif dataset == "DomainNet":
        space["batch_size"] = HParam(32, loguniform(3, 5, base=2, integer=True), "per training domain", domain=BATCH_SIZE)
    else:
        space["batch_size"] = HParam(32, loguniform(3, 5.5, base=2, integer=True), "per training domain", domain=BATCH_SIZE)
    if not small:
        space.update(image_hparams())
    if DEFAULT_FEATURIZER.get(dataset) == "mlp":
        space["hidden_dim"] = HParam(390, fixed(), "MLP featurizer width (IRM's 390)", domain=WIDTH)
        space["hidden_layers"] = HParam(2, fixed(), "MLP featurizer depth (0: a linear model, as fish-linear trains)",
                                        domain=at_least(0, 64))
    return space


def hparam_space(algorithm: str, dataset: str) -> dict[str, HParam]:
    """All hyperparameters of (algorithm, dataset) with defaults and distributions."""
    from fishr_tune.algorithms import get_algorithm_class

    space = _shared_hparams(dataset)
    for name, spec in get_algorithm_class(algorithm).hparam_space(dataset).items():
        if name in space:
            raise RuntimeError(f"algorithm {algorithm} redefines shared hyperparameter {name!r}")
        space[name] = spec
    return space


def default_hparams(algorithm: str, dataset: str) -> dict[str, Any]:
    return {name: spec.default for name, spec in hparam_space(algorithm, dataset).items()}


def random_hparams(algorithm: str, dataset: str, seed: int) -> dict[str, Any]:
    return {
        name: spec.dist.sample(np.random.RandomState(seed_hash(seed, name)), spec.default)
        for name, spec in hparam_space(algorithm, dataset).items()
    }


def hparams_for_trial(algorithm: str, dataset: str, hparams_seed: int, trial_seed: int) -> dict[str, Any]:
    """DomainBed's rule: hparams_seed 0 is the default configuration, others are random draws."""
    if hparams_seed == 0:
        return default_hparams(algorithm, dataset)
    return random_hparams(algorithm, dataset, seed_hash(hparams_seed, trial_seed))


def _coerce(name: str, value: Any, spec: HParam, where: str) -> Any:
    default = spec.default
    expected = type(default)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: hyperparameter {quote(name)} must be true or false, got {quote(value)}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{where}: hyperparameter {quote(name)} must be an integer, got {quote(value)}")
        return int(value)
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where}: hyperparameter {quote(name)} must be a finite number, got {quote(value)}")
        return float(value)
    if spec.domain is not None and spec.domain.values:
        spec.check_domain(name, value, where)
    if spec.dist.kind == "choice" and value not in spec.dist.choices:
        raise ConfigError(f"{where}: hyperparameter {quote(name)} must be one of {list(spec.dist.choices)}, got {quote(value)}")
    if not isinstance(value, expected):
        raise ConfigError(f"{where}: hyperparameter {quote(name)} must be a {expected.__name__}, got {quote(value)}")
    return value


def apply_overrides(
    algorithm: str, dataset: str, base: Mapping[str, Any], overrides: Mapping[str, Any], where: str = "--hparams"
) -> dict[str, Any]:
    """Overlay user-given values, rejecting unknown names and wrong types with a message that lists the valid ones.

    DomainBed's names become ours first, or are refused with the reason (fishr_tune.domainbed_names)."""
    from fishr_tune.domainbed_names import to_our_names

    space = hparam_space(algorithm, dataset)
    overrides, _ = to_our_names(overrides, dataset, where)
    result = dict(base)
    for name, value in overrides.items():
        if name not in space:
            raise ConfigError(
                f"{where}: unknown hyperparameter {quote(name)} for {algorithm} on {dataset}; valid: {', '.join(sorted(space))}"
            )
        result[name] = _coerce(name, value, space[name], where)
        space[name].check_domain(name, result[name], where)
    if result.get("featurizer") not in FEATURIZERS:
        raise ConfigError(f"{where}: featurizer must be one of {list(FEATURIZERS)}, got {quote(result.get('featurizer'))}")
    return result


def parse_hparams_json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"--hparams: not valid JSON ({error.msg} at column {error.colno})") from error
    if not isinstance(value, dict):
        raise ConfigError(f"--hparams: expected a JSON object like '{{\"lr\": 0.001}}', got {quote(text)}")
    return value
