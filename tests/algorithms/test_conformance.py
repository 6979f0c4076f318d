"""One contract, every registered algorithm: a new algorithm file is covered without touching this suite.

Inputs are ColoredMNIST-IRM-shaped (2x14x14, two classes) with a 16-unit MLP so the whole suite stays fast.
Hyperparameters ending in ``anneal_iters`` are set to 2 so penalty warm-ups (and their Adam restarts) happen
inside the few updates each test runs.
"""

from __future__ import annotations

import copy
import io
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch

from fishr_tune.algorithms import ALGORITHMS, Algorithm
from fishr_tune.hparams import SMALL_IMAGES, Distribution, HParam, default_hparams, hparam_space, random_hparams
from fishr_tune.training import rng_state, seed_everything, set_rng_state

DATASET = "ColoredMNIST-IRM"
INPUT_SHAPE = (2, 14, 14)
NUM_CLASSES = 2
BATCH = 8
ANNEAL_AT = 2
N_UPDATES = 5
NAMES = sorted(ALGORITHMS)
# Datasets whose hyperparameter spaces differ (small images vs. the rest); any name works for the latter.
SPACE_DATASETS = (*SMALL_IMAGES, "PACS")

Batches = list[tuple[torch.Tensor, torch.Tensor]]


def tiny_hparams(name: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    hparams = default_hparams(name, DATASET)
    hparams["hidden_dim"] = 16
    for key in hparams:
        if key.endswith("anneal_iters"):
            hparams[key] = ANNEAL_AT
    hparams.update(overrides or {})
    return hparams


def build(name: str, num_domains: int, seed: int = 0, overrides: Mapping[str, Any] | None = None) -> Algorithm:
    seed_everything(seed)
    return ALGORITHMS[name](INPUT_SHAPE, NUM_CLASSES, num_domains, tiny_hparams(name, overrides))


def make_batches(num_domains: int, n_updates: int = N_UPDATES, seed: int = 1) -> list[Batches]:
    """Fixed data from a private generator, so the global RNGs are the algorithm's alone."""
    generator = torch.Generator().manual_seed(seed)
    return [
        [
            (torch.rand((BATCH, *INPUT_SHAPE), generator=generator), torch.randint(NUM_CLASSES, (BATCH,), generator=generator))
            for _ in range(num_domains)
        ]
        for _ in range(n_updates)
    ]


def tensors(algorithm: Algorithm) -> dict[str, torch.Tensor]:
    """Parameters and buffers, cloned."""
    return {k: v.detach().clone() for k, v in [*algorithm.named_parameters(), *algorithm.named_buffers()]}


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


@pytest.fixture(params=NAMES)
def name(request: pytest.FixtureRequest) -> str:
    return request.param



@pytest.mark.parametrize("num_domains", [2, 3])
def test_update_returns_finite_documented_keys_and_trains(name: str, num_domains: int) -> None:
    algorithm = build(name, num_domains)
    assert "loss" in algorithm.UPDATE_KEYS
    for batches in make_batches(num_domains):
        before = tensors(algorithm)
        results = algorithm.update(batches)
        assert set(results) == set(algorithm.UPDATE_KEYS)
        for key, value in results.items():
            assert isinstance(value, float) and math.isfinite(value), f"{key}={value!r}"
        after = tensors(algorithm)
        assert any(not torch.equal(before[k], after[k]) for k in before), "an update changed no parameter"
    assert algorithm.update_count == N_UPDATES


def assert_resumes_exactly(
    name: str, num_domains: int, split: int, seed: int = 0, overrides: Mapping[str, Any] | None = None
) -> None:
    """Train `split` updates, checkpoint (weights_only round trip), and the resumed run must match bit for bit."""
    batches = make_batches(num_domains)
    uninterrupted = build(name, num_domains, seed, overrides)
    for batch in batches[:split]:
        uninterrupted.update(batch)
    buffer = io.BytesIO()
    torch.save({"algorithm": uninterrupted.state_dict(), "rng": rng_state()}, buffer)
    expected = [uninterrupted.update(batch) for batch in batches[split:]]

    # different initial weights: everything must come from the checkpoint
    resumed = build(name, num_domains, seed=123, overrides=overrides)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed.load_state_dict(state["algorithm"])
    set_rng_state(state["rng"])
    assert resumed.update_count == split
    assert [resumed.update(batch) for batch in batches[split:]] == expected
    assert_same_tensors(tensors(resumed), tensors(uninterrupted))


# Checkpoints before, at and after the anneal step (and DANN's alternation in both phases).
@pytest.mark.parametrize(("num_domains", "split"), [(2, 1), (3, ANNEAL_AT), (2, ANNEAL_AT + 1)])
def test_state_dict_round_trip_resumes_exactly(name: str, num_domains: int, split: int) -> None:
    assert_resumes_exactly(name, num_domains, split)


def test_mixup_with_alpha_above_one_resumes_exactly() -> None:
    """Beta(2, 2) draws normals, so numpy's cached Gaussian is part of the state a checkpoint must carry."""
    seed, split = 7, 1  # this seed leaves a Gaussian cached after the first update
    probe = build("Mixup", 2, seed, {"mixup_alpha": 2.0})
    probe.update(make_batches(2)[0])
    assert np.random.get_state(legacy=True)[3] == 1, "the case must checkpoint with a cached Gaussian to test it"
    assert_resumes_exactly("Mixup", 2, split, seed, {"mixup_alpha": 2.0})


def test_same_seed_same_run_and_another_seed_differs(name: str) -> None:
    batches = make_batches(3)

    def run(seed: int) -> tuple[list[dict[str, float]], dict[str, torch.Tensor]]:
        algorithm = build(name, 3, seed)
        return [algorithm.update(b) for b in batches], tensors(algorithm)

    results_a, weights_a = run(0)
    results_b, weights_b = run(0)
    assert results_a == results_b
    assert_same_tensors(weights_a, weights_b)
    _, weights_c = run(1)
    assert any(not torch.equal(weights_a[k], weights_c[k]) for k in weights_a)


@pytest.mark.parametrize("n", [1, 5])
def test_predict_shape(name: str, n: int) -> None:
    algorithm = build(name, 2)
    algorithm.update(make_batches(2, 1)[0])
    algorithm.eval()
    x = torch.rand(n, *INPUT_SHAPE)
    with torch.no_grad():
        logits = algorithm.predict(x)
        again = algorithm.predict(x)
    assert logits.shape == (n, NUM_CLASSES)
    assert torch.isfinite(logits).all()
    assert torch.equal(logits, again), "predict in eval mode must be deterministic"


def test_deep_copy_resumes_from_the_state_dict_without_sharing_state(name: str) -> None:
    """A deep copy (as a sweep keeps a best model) loads the original's state_dict and trains on its own."""
    algorithm = build(name, 2)
    batches = make_batches(2, 2)
    algorithm.update(batches[0])
    clone = copy.deepcopy(algorithm)
    clone.load_state_dict(algorithm.state_dict())
    assert_same_tensors(tensors(clone), tensors(algorithm))
    assert clone.update_count == algorithm.update_count
    original = tensors(algorithm)
    clone.update(batches[1])
    assert_same_tensors(tensors(algorithm), original)
    assert any(not torch.equal(original[k], v) for k, v in tensors(clone).items())


def in_support(value: Any, spec: HParam) -> bool:
    dist: Distribution = spec.dist
    if dist.kind == "fixed":
        return value == spec.default
    if dist.kind == "choice":
        return value in dist.choices
    low, high = dist.bounds
    if dist.integer:
        return isinstance(value, int) and math.floor(low) <= value <= high
    return low <= value <= high


@pytest.mark.parametrize("dataset", SPACE_DATASETS)
def test_every_hparam_has_default_and_distribution(name: str, dataset: str) -> None:
    space = hparam_space(name, dataset)
    own = ALGORITHMS[name].hparam_space(dataset)
    assert set(own) <= set(space)
    for key, spec in space.items():
        assert isinstance(spec, HParam), key
        assert spec.default is not None, key
        assert isinstance(spec.dist, Distribution), key
        assert spec.dist.kind in ("fixed", "uniform", "loguniform", "int", "logint", "choice"), key
        if spec.dist.kind == "choice":
            assert len(spec.dist.choices) > 0, key


@pytest.mark.parametrize("dataset", SPACE_DATASETS)
def test_random_hparams_lie_in_support_with_the_default_type(name: str, dataset: str) -> None:
    space = hparam_space(name, dataset)
    for seed in range(1, 16):
        values = random_hparams(name, dataset, seed)
        assert set(values) == set(space)
        for key, value in values.items():
            spec = space[key]
            assert in_support(value, spec), f"{key}={value!r} outside {spec.dist.describe()}"
            assert type(value) is type(spec.default), f"{key}={value!r} is not a {type(spec.default).__name__}"


def test_default_hparams_build_a_working_algorithm(name: str) -> None:
    """The registry's defaults alone (MLP width 390 as in the IRM setup) are enough to build and update."""
    seed_everything(0)
    algorithm = ALGORITHMS[name](INPUT_SHAPE, NUM_CLASSES, 2, default_hparams(name, DATASET))
    results = algorithm.update(make_batches(2, 1)[0])
    assert math.isfinite(results["loss"])
