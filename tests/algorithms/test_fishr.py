"""Fishr: DomainBed's moving average, penalty, anneal schedule and Adam restart; exact resume; engine choice."""

from __future__ import annotations

import copy
import io
from typing import Any

import pytest
import torch

from fishr_tune.algorithms import get_algorithm_class
from fishr_tune.algorithms.fishr import DomainMovingAverage, Fishr
from fishr_tune.data.base import Environment, MultiDomainDataset
from fishr_tune.errors import ConfigError
from fishr_tune.gradvar import fishr_penalty, get_engine
from fishr_tune.hparams import apply_overrides, default_hparams, hparam_space
from fishr_tune.training import Trainer, make_config

INPUT_SHAPE = (2, 14, 14)
DATASET = "ColoredMNIST-IRM"


def make_fishr(seed: int = 0, dtype: torch.dtype = torch.float32, **overrides: Any) -> Fishr:
    """A small Fishr on the IRM setup's input shape (MLP featurizer narrowed to 16 units, so tests are fast).

    Penalty comparisons run in float64: a penalty is a squared difference of variances, whose float32 rounding
    differs between CPUs by more than a fixed tolerance tuned on one of them could promise."""
    values = {"hidden_dim": 16, "penalty_anneal_iters": 3, "lambda": 100.0, "ema": 0.9, **overrides}
    hparams = apply_overrides("Fishr", DATASET, default_hparams("Fishr", DATASET), values)
    torch.manual_seed(seed)
    return Fishr(INPUT_SHAPE, 2, 2, hparams).to(dtype)


def batches(n_steps: int, sizes: tuple[int, ...] = (12, 8), seed: int = 0,
            dtype: torch.dtype = torch.float32) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        [(torch.rand(n, *INPUT_SHAPE, generator=generator, dtype=dtype), torch.randint(2, (n,), generator=generator))
         for n in sizes]
        for _ in range(n_steps)
    ]


def roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_hyperparameters_are_domainbeds() -> None:
    space = hparam_space("Fishr", DATASET)
    assert space["lambda"].default == 1000.0 and space["lambda"].dist.bounds == pytest.approx((10.0, 1e4))
    assert space["ema"].default == 0.95 and space["ema"].dist.bounds == (0.90, 0.99)
    anneal = space["penalty_anneal_iters"]
    assert anneal.default == 1500 and anneal.dist.bounds == (0, 5000) and anneal.dist.integer
    assert (space["gradvar_engine"].default, space["centered"].default, space["full_covariance"].default) == (
        "closed_form", True, False)


def test_moving_average_by_hand() -> None:
    """First call returns v1; the second ema * v1 + v2; the gradient reaches v_t with coefficient 1 and not v_{t-1}."""
    average = DomainMovingAverage(ema=0.9)
    v1 = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    v2 = torch.tensor([[10.0, 0.0], [-1.0, 2.0]], requires_grad=True)
    first = average.update(v1)
    torch.testing.assert_close(first, v1.detach())
    second = average.update(v2)
    torch.testing.assert_close(second, 0.9 * v1.detach() + v2.detach())
    (grad_v1, grad_v2) = torch.autograd.grad(second.sum(), [v1, v2], allow_unused=True)
    assert grad_v1 is None  # the stored state is detached, as DomainBed's
    torch.testing.assert_close(grad_v2, torch.ones_like(v2))
    torch.testing.assert_close(average.state, 0.1 * (0.9 * v1.detach() + v2.detach()))


def test_first_penalty_is_the_penalty_of_the_batch_variances() -> None:
    """Step 1 reports fishr_penalty of this batch's centred variances (the EMA's first value is v1 itself)."""
    model = make_fishr(dtype=torch.float64)
    (batch,) = batches(1, dtype=torch.float64)
    with torch.no_grad():
        features = model.featurizer(torch.cat([x for x, _ in batch]))
    variances = get_engine("torch_func").per_domain(
        copy.deepcopy(model.classifier), features, torch.cat([y for _, y in batch]), [12, 8])
    expected = fishr_penalty(variances).item()
    result = model.update(batch)
    assert result["penalty"] == pytest.approx(expected, rel=1e-10)
    assert result["loss"] == result["nll"]  # weight 0 before the anneal step


def test_second_penalty_uses_the_moving_average() -> None:
    model = make_fishr(dtype=torch.float64, ema=0.9)
    first, second = batches(2, dtype=torch.float64)
    probe = copy.deepcopy(model)
    model.update(first)
    with torch.no_grad():
        features = model.featurizer(torch.cat([x for x, _ in second]))
        v2 = get_engine("closed_form").per_domain(model.classifier, features, torch.cat([y for _, y in second]), [12, 8])
        v1 = probe.engine.per_domain(
            probe.classifier, probe.featurizer(torch.cat([x for x, _ in first])), torch.cat([y for _, y in first]), [12, 8])
    result = model.update(second)
    assert result["penalty"] == pytest.approx(fishr_penalty(0.9 * v1 + v2).item(), rel=1e-10)


def test_objective_and_gradient_switch_at_the_anneal_step() -> None:
    """Before: the step is ERM's (the penalty moves nothing). From penalty_anneal_iters on: nll + lambda * penalty."""
    model = make_fishr(penalty_anneal_iters=2, **{"lambda": 100.0})
    steps = batches(4)
    for i, batch in enumerate(steps):
        erm_twin = copy.deepcopy(model)
        result = model.update(batch)
        if i < 2:
            assert result["loss"] == result["nll"]
            # the same step with the plain cross-entropy gives the same parameters
            x = torch.cat([b[0] for b in batch])
            y = torch.cat([b[1] for b in batch])
            erm_twin.optimizer.zero_grad()
            torch.nn.functional.cross_entropy(erm_twin.network(x), y).backward()
            erm_twin.optimizer.step()
            for got, want in zip(model.parameters(), erm_twin.parameters()):
                torch.testing.assert_close(got, want, rtol=0, atol=0)
        else:
            assert result["penalty"] > 0
            assert result["loss"] == pytest.approx(result["nll"] + 100.0 * result["penalty"], rel=1e-6)


def test_penalty_gradient_reaches_the_featurizer_after_anneal() -> None:
    """With a huge lambda the featurizer update differs from ERM's: the penalty trains the featurizer."""
    model = make_fishr(penalty_anneal_iters=0, **{"lambda": 1e4})
    erm_twin = copy.deepcopy(model)
    (batch,) = batches(1)
    model.update(batch)
    x = torch.cat([b[0] for b in batch])
    y = torch.cat([b[1] for b in batch])
    erm_twin.optimizer.zero_grad()
    torch.nn.functional.cross_entropy(erm_twin.network(x), y).backward()
    erm_twin.optimizer.step()
    first_layer = next(model.featurizer.parameters())
    assert not torch.equal(first_layer, next(erm_twin.featurizer.parameters()))


@pytest.mark.parametrize("anneal", [3, 0])
def test_adam_is_recreated_at_the_anneal_step_only(anneal: int) -> None:
    model = make_fishr(penalty_anneal_iters=anneal)
    seen = [model.optimizer]
    for batch in batches(6):
        model.update(batch)
        seen.append(model.optimizer)
    changed_at = [i for i in range(1, len(seen)) if seen[i] is not seen[i - 1]]
    # update number `anneal` (0-based) is the one that runs with update_count == anneal
    assert changed_at == ([anneal + 1] if anneal else [])
    if anneal:
        # the fresh Adam has stepped only since the restart
        state = next(iter(model.optimizer.state.values()))
        assert int(state["step"]) == 6 - anneal


@pytest.mark.parametrize("cut", [2, 3, 4])
def test_state_dict_roundtrip_resumes_exactly(cut: int) -> None:
    """Stop after `cut` steps (before, at, after the anneal at 3), reload from bytes: the next steps are identical."""
    steps = batches(6)
    uninterrupted = make_fishr()
    expected = [uninterrupted.update(b) for b in steps]

    first = make_fishr()
    for b in steps[:cut]:
        first.update(b)
    state = roundtrip(first.state_dict())
    resumed = make_fishr(seed=123)  # a different init, which the state must overwrite
    resumed.load_state_dict(state)
    got = [resumed.update(b) for b in steps[cut:]]
    assert got == expected[cut:]
    assert resumed.update_count == 6
    for a, b in zip(resumed.parameters(), uninterrupted.parameters()):
        assert torch.equal(a, b)


def test_losing_the_moving_average_would_change_the_penalty() -> None:
    """The check above is not vacuous: without the EMA state (DomainBed's behaviour) the next penalty differs."""
    steps = batches(4)
    reference = make_fishr()
    for b in steps[:3]:
        reference.update(b)
    amnesiac = make_fishr()
    amnesiac.load_state_dict(roundtrip(reference.state_dict()))
    amnesiac.moving_average.state = None
    assert amnesiac.update(steps[3])["penalty"] != reference.update(steps[3])["penalty"]


def tiny_dataset() -> MultiDomainDataset:
    generator = torch.Generator().manual_seed(0)
    envs = [Environment(name, torch.rand(60, *INPUT_SHAPE, generator=generator), torch.randint(2, (60,), generator=generator))
            for name in ("+80%", "+90%", "-90%")]
    return MultiDomainDataset(DATASET, envs, INPUT_SHAPE, 2, "random", n_steps=8, checkpoint_freq=4)


def test_trainer_checkpoint_resumes_exactly_across_the_anneal_step(tmp_path) -> None:
    config = make_config(dict(dataset=DATASET, algorithm="Fishr", test_envs=[2], steps=8, device="cpu",
                              hparams={"hidden_dim": 16, "batch_size": 16, "penalty_anneal_iters": 5}), "test")
    uninterrupted = Trainer(config, dataset=tiny_dataset())
    expected = [uninterrupted.train_step() for _ in range(8)]
    first = Trainer(config, dataset=tiny_dataset())
    for _ in range(4):
        first.train_step()
    first.save_checkpoint(tmp_path / "checkpoint.pt")
    resumed = Trainer(config, dataset=tiny_dataset())
    resumed.load_checkpoint(tmp_path / "checkpoint.pt")
    assert [resumed.train_step() for _ in range(4)] == expected[4:]


def test_closed_form_with_nonlinear_head_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="gradvar_engine 'closed_form' needs a linear head.*nonlinear_classifier"):
        make_fishr(nonlinear_classifier=True)


def test_unknown_engine_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'gradvar_engine' must be one of .*'backpack'.*got 'fast'"):
        make_fishr(gradvar_engine="fast")
    hparams = {**default_hparams("Fishr", DATASET), "gradvar_engine": "fast"}  # unchecked dict, as a port might pass
    with pytest.raises(ConfigError, match="unknown gradient-variance engine 'fast'"):
        Fishr(INPUT_SHAPE, 2, 2, hparams)


def test_full_covariance_refuses_a_large_head() -> None:
    with pytest.raises(ConfigError, match="full_covariance.*this head has"):
        make_fishr(hidden_dim=3000, full_covariance=True)


@pytest.mark.parametrize("engine", ["torch_func", "backpack"])
def test_every_engine_trains_identically_to_the_closed_form(engine: str) -> None:
    """Same init and batches: the other engines reproduce the default's losses and penalties across the anneal."""
    steps = batches(5)
    closed, other = make_fishr(), make_fishr(gradvar_engine=engine)
    for b in steps:
        want, got = closed.update(b), other.update(b)
        for key in ("loss", "nll", "penalty"):
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-9)
    assert want["penalty"] > 0 and want["loss"] > want["nll"]  # the last steps ran with the penalty on


@pytest.mark.parametrize("engine", ["torch_func", "backpack"])
def test_nonlinear_head_trains_with_general_engines(engine: str) -> None:
    model = make_fishr(gradvar_engine=engine, nonlinear_classifier=True, penalty_anneal_iters=1)
    results = [model.update(b) for b in batches(3)]
    assert all(torch.isfinite(torch.tensor(list(r.values()))).all() for r in results)
    assert results[-1]["loss"] > results[-1]["nll"]


def test_table6_variants_report_their_own_penalty() -> None:
    """Uncentred second moments and full covariances: the first step's penalty is that of the batch quantity."""
    (batch,) = batches(1, dtype=torch.float64)
    for centered, full in [(False, False), (True, True)]:
        model = make_fishr(dtype=torch.float64, centered=centered, full_covariance=full)
        with torch.no_grad():
            features = model.featurizer(torch.cat([x for x, _ in batch]))
            expected = fishr_penalty(model.engine.per_domain(
                model.classifier, features, torch.cat([y for _, y in batch]), [12, 8], centered=centered,
                full_covariance=full)).item()
        assert model.update(batch)["penalty"] == pytest.approx(expected, rel=1e-10)


def test_registered_under_its_name() -> None:
    assert get_algorithm_class("Fishr") is Fishr
    assert Fishr.UPDATE_KEYS == ("loss", "nll", "penalty")
